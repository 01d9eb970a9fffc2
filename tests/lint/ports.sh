#!/usr/bin/env bash
# ports.sh SRC: take_port (tests/lib/ports.sh) hands out distinct ports, in
# one call and across calls, so that the servers of one test can all
# listen; scripts/ pick no ports of their own. In a network namespace of its own (unshare -rn: no other
# process's ports, nothing shared with the machine) whose ephemeral range
# is four ports, where a picker that lets a port go before its server
# binds it hands out the same one again at once.
set -euo pipefail
SRC=$1
fail() { echo "FAIL: $*" >&2; exit 1; }
# The scripts that start several servers (scripts/demo, scripts/cluster)
# take their ports from take_port too: a picker of their own that binds
# port 0 and closes the socket may hand one port out twice (the demo's
# server and certificate server on one port: 'cannot listen').
own=$(grep -l 'getsockname' "$SRC"/scripts/* 2>/dev/null || true)
[ -z "$own" ] || fail "ports picked without take_port (tests/lib/ports.sh) in: $own"
echo "ok: scripts/ take their ports from take_port"
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
