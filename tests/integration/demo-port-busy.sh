#!/usr/bin/env bash
# demo-port-busy.sh BIN SRC: ./scripts/demo when the group server cannot
# listen, because another program took its port between the demo's pick
# and the server's start (a program that accepts connections and never
# answers, the worst case for a health probe). The demo must fail at once,
# say why (the server's log: "Address already in use"), and leave nothing
# behind: no work directory, no process. It used to wait forever: its
# probe (curl) hung on the silent listener, and the server's exit went
# unnoticed.
set -euo pipefail
bin=$1 src=$2
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/demo-port-busy.XXXXXX")
squat_pid=
cleanup() {
  [ -n "$squat_pid" ] && kill "$squat_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# The demo's programs, but groupsrv's `serve` finds its [server] listen
# port held by a listener that never accepts (the kernel completes the
# connection, so a TLS handshake waits for an answer that never comes).
mkdir -p "$work/bin" "$work/tmp"
ln -s "$bin/exploder" "$work/bin/exploder"
ln -s "$bin/groupmail" "$work/bin/groupmail"
cat >"$work/bin/groupsrv" <<EOF
#!/usr/bin/env bash
if [ "\${!#}" = serve ]; then
  port=\$(sed -n 's/^listen = 127\.0\.0\.1://p' "\$2" | head -n 1)
  /usr/bin/python3 -c '
import os, socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
open(sys.argv[2] + ".tmp", "w").write(str(os.getpid()))
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
time.sleep(300)
' "\$port" "$work/squatter.pid" </dev/null >/dev/null 2>&1 &
  for _ in \$(seq 1 100); do [ -s "$work/squatter.pid" ] && break; sleep 0.1; done
fi
exec "$bin/groupsrv" "\$@"
EOF
chmod 755 "$work/bin/groupsrv"

# Bounded here: a demo that hangs fails this test instead of its timeout.
rc=0
out=$(GS_BIN=$work/bin TMPDIR=$work/tmp timeout 90 "$src/scripts/demo" --no-build 2>&1) || rc=$?
[ -s "$work/squatter.pid" ] && squat_pid=$(cat "$work/squatter.pid")
printf '%s\n' "$out"
[ -n "$squat_pid" ] || fail "the test's listener did not start"
[ "$rc" != 124 ] || fail "the demo hung on a port another program holds"
[ "$rc" != 0 ] || fail "the demo succeeded without its group server"
grep -q 'the group server exited before it was ready' <<<"$out" || fail "the demo did not say the group server exited"
grep -q 'Address already in use' <<<"$out" || fail "the demo did not show why (the server's log)"
[ -z "$(ls -A "$work/tmp")" ] || fail "the demo left files behind: $(ls -A "$work/tmp")"
# No process of the demo is left (each ran with its work directory, under
# $work/tmp, on its command line).
left=$(ps -eo pid=,args= | grep -F "$work/tmp/" | grep -v grep || true)
[ -z "$left" ] || fail "the demo left processes: $left"
echo "PASS: the demo fails at once, names the busy port, and leaves nothing behind"
