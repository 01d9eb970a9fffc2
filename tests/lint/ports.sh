#!/usr/bin/env bash
# ports.sh SRC: take_port (tests/lib/ports.sh) hands out distinct ports, in
# one call and across calls, so that the servers of one test can all
# listen. In a network namespace of its own (unshare -rn: no other
# process's ports, nothing shared with the machine) whose ephemeral range
# is four ports, where a picker that lets a port go before its server
# binds it hands out the same one again at once.
#
# And neither the tests nor scripts/ (demo, cluster: several servers each)
# pick a port themselves: a picker that binds port 0, reads the number and
# closes the socket has that fault, and two of them in one run may hand out
# one port twice (the demo's server and certificate server on one port:
# 'cannot listen'). A server that binds port 0 and keeps listening
# (tests/lib/loopback.py) picks nothing for anyone else.
set -euo pipefail
SRC=$1
fail() { echo "FAIL: $*" >&2; exit 1; }
own=$(cd "$SRC" && grep -l 'getsockname' scripts/* 2>/dev/null || true)
[ -z "$own" ] || fail "ports picked without take_port (tests/lib/ports.sh) in: $own"
echo "ok: scripts/ take their ports from take_port"
pickers=$(cd "$SRC" && grep -rnE --include='*.sh' --include='*.py' --include='*.cmake' \
  'bind\(\([^)]*, *0\)\).*getsockname\(\)\[1\]' tests | grep -v 'listen(' | grep -v '^tests/lib/ports.sh:' || true)
[ -z "$pickers" ] || fail "tests that pick a free port themselves (use take_port of tests/lib/ports.sh):
$pickers"
echo "ok: no test picks a free port itself"
unshare -rn true 2>/dev/null || fail "unshare -rn (a network namespace of its own) is not allowed here"
exec unshare -rn bash -c '
set -euo pipefail
fail() { echo "FAIL: $*" >&2; exit 1; }
echo "40000 40003" > /proc/sys/net/ipv4/ip_local_port_range
. "$1/tests/lib/ports.sh"
take_port a b
take_port c
take_port d
all="$a $b $c $d"
[ "$(tr " " "\n" <<<"$all" | sort -u | wc -l)" = 4 ] || fail "ports handed out twice: $all"
for p in $all; do [ "$p" -ge 40000 ] && [ "$p" -le 40003 ] || fail "port $p outside the range"; done
echo "ok: four calls, four distinct ports: $all"
# the four ports can all be listened on at once (what the servers do)
/usr/bin/python3 - $all <<PY || fail "could not listen on all of $all"
import socket, sys
held = []
for p in sys.argv[1:]:
    s = socket.socket(); s.bind(("127.0.0.1", int(p))); s.listen(1); held.append(s)
PY
echo "ok: all four listened on at once"
if take_port e 2>/dev/null; then fail "a fifth port from a range of four: $e (among $all)"; fi
echo "ok: no fifth port from a range of four: an error, not a port handed out twice"
' ports-check "$SRC"
