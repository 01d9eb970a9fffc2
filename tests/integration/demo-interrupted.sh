#!/usr/bin/env bash
# demo-interrupted.sh BIN SRC: ./scripts/demo stopped by a TERM (or
# Ctrl-C) while its servers run. It must say it was interrupted, not that
# it failed (it said "demo failed; last lines of the logs:", and a
# newcomer who pressed Ctrl-C went looking for an error), exit 130, and
# leave no work directory and no process behind.
set -euo pipefail
bin=$1 src=$2
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/demo-interrupted.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# The demo's programs; groupsrv's `serve` first sends the demo (its
# parent: the demo starts it in the background) a TERM, as a Ctrl-C would,
# and when the demo stops it, a second one, as a Ctrl-C pressed again
# while the demo stops what it started would (bash then left the cleanup
# at once: the work directory stayed).
mkdir -p "$work/bin" "$work/tmp"
ln -s "$bin/exploder" "$work/bin/exploder"
ln -s "$bin/groupmail" "$work/bin/groupmail"
cat >"$work/bin/groupsrv" <<EOF
#!/usr/bin/env bash
[ "\${!#}" = serve ] || exec "$bin/groupsrv" "\$@"
"$bin/groupsrv" "\$@" &
s=\$!
trap 'kill -TERM "\$PPID"; kill -TERM "\$s"; wait "\$s"; exit 0' TERM
kill -TERM "\$PPID"
wait "\$s"
EOF
chmod 755 "$work/bin/groupsrv"

rc=0
out=$(GS_BIN=$work/bin TMPDIR=$work/tmp timeout 90 "$src/scripts/demo" --no-build 2>&1) || rc=$?
printf '%s\n' "$out"
[ "$rc" = 130 ] || fail "the interrupted demo exited $rc, wanted 130"
grep -q '^demo interrupted' <<<"$out" || fail "the demo did not say it was interrupted"
! grep -q 'demo failed' <<<"$out" || fail "the interrupted demo said it failed"
[ -z "$(ls -A "$work/tmp")" ] || fail "the demo left files behind: $(ls -A "$work/tmp")"
left=$(ps -eo pid=,args= | grep -F "$work/tmp/" | grep -v grep || true)
[ -z "$left" ] || fail "the demo left processes: $left"
echo "PASS: the interrupted demo says so, exits 130 and leaves nothing behind"
