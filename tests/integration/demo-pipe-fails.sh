#!/usr/bin/env bash
# demo-pipe-fails.sh BIN SRC: ./scripts/demo when `exploder deliver`, run
# by the SMTP server for the list's mail, refuses it. The demo stops at
# "groupmail send failed"; what the exploder said is only in the SMTP
# server's pipe log (mail/pipe.log), which the demo must show with its
# other logs, or a newcomer is left with the symptom and not its cause.
set -euo pipefail
bin=$1 src=$2
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/demo-pipe-fails.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# The demo's programs, but `exploder deliver` refuses every message.
mkdir -p "$work/bin" "$work/tmp"
ln -s "$bin/groupsrv" "$work/bin/groupsrv"
ln -s "$bin/groupmail" "$work/bin/groupmail"
cat >"$work/bin/exploder" <<EOF
#!/usr/bin/env bash
for a in "\$@"; do
  [ "\$a" = deliver ] && { echo "exploder: test refusal: deliver made to fail" >&2; exit 65; }
done
exec "$bin/exploder" "\$@"
EOF
chmod 755 "$work/bin/exploder"

rc=0
out=$(GS_BIN=$work/bin TMPDIR=$work/tmp timeout 120 "$src/scripts/demo" --no-build 2>&1) || rc=$?
printf '%s\n' "$out"
[ "$rc" != 124 ] || fail "the demo hung"
[ "$rc" != 0 ] || fail "the demo succeeded although the exploder refused the mail"
grep -q 'groupmail send failed' <<<"$out" || fail "the demo did not stop at sending"
grep -q 'test refusal: deliver made to fail' <<<"$out" || fail "the demo did not show what the exploder said (mail/pipe.log)"
[ -z "$(ls -A "$work/tmp")" ] || fail "the demo left files behind: $(ls -A "$work/tmp")"
echo "PASS: the demo shows why the list's mail was refused"
