#!/usr/bin/env bash
# server-exhaustion.sh BIN SRC: what one connection may hold, and running
# out of descriptors, against a real server:
#   - started with systemd's soft limit of 1024 descriptors, the server
#     raises it (within the hard limit) to what its budgets may take;
#   - a client without a certificate that pipelines requests and never reads
#     the answers (slow-reader.py) is closed once it is more than one whole
#     request ahead: memory per connection stays bounded;
#   - with its descriptors used up (started with a limit of 100, 300
#     connections held open) the server rests its listeners instead of
#     retrying accept(2) in a busy loop that logs each failure, and serves
#     again once connections close;
#   - with too few descriptors to start at all (10, 16, 20) serve exits 1
#     saying so;
#   - idle TLS connections without a certificate holding every descriptor
#     (idle-tls.py) are closed to make room for /healthz and members.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/server-lib.sh"
ulimit -Sn 1024
start_server
# The connections, and so the descriptor budget, are the network process's.
net=$(srv_net_pid)
[ -n "$net" ] || fail "no network process under serve"
soft=$(awk '/^Max open files/ {print $4}' "/proc/$net/limits")
if [ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -gt 1024 ]; then
  [ "$soft" -gt 1024 ] || fail "the server kept a soft descriptor limit of $soft"
  ok "started with a soft descriptor limit of 1024, the server raised it to $soft"
else
  grep -q "descriptor limit is below" "$work/server.log" || fail "a hard limit of 1024 was not reported"
  ok "a hard descriptor limit of 1024 is reported"
fi
printf '{"recipient_info":"%s"}' "$(b64 "$work/ri.der")" > "$work/req-tls.json"

out=$(/usr/bin/python3 "$SRC/tests/adversarial/slow-reader.py" "$port" "$certs/tca.pem" "$net" 128) ||
  fail "a client that never reads its answers: $out"
ok "$out"
kill -0 "$net" || fail "the network process died"
expect_status 200 "" "unwrap afterwards" -- c alice --data-binary @"$work/req-tls.json" "$base/v1/groups/eng/unwrap"

# The network process runs as [server] user, whose limits root may not be
# allowed to change from outside (prlimit --pid: EPERM in some containers):
# serve starts again with 100 descriptors instead.
stop_server

# Too few descriptors to start at all: exit 1, and the log says why. With
# 10 the supervisor cannot link its processes, with 16 it cannot start the
# key holder, with 20 the network process cannot set up its threads; each
# said only "not started: ... (its line above says why)" with no line
# above, or "could not set up the event-loop threads", and never that
# descriptors were short.
for n in 10 16 20; do
  rc=0
  timeout 60 prlimit --nofile=$n:$n -- "$BIN/groupsrv" -c "$conf" serve > "$work/few-fds.log" 2>&1 || rc=$?
  [ "$rc" = 1 ] || fail "serve with $n descriptors: exit $rc, wanted 1: $(tail -n 3 "$work/few-fds.log")"
  grep -q 'Too many open files' "$work/few-fds.log" ||
    fail "serve with $n descriptors did not say why it did not start: $(tail -n 3 "$work/few-fds.log")"
done
ok "with 10, 16 or 20 descriptors serve does not start, exit 1, and says descriptors are short"
# Idle connections stay for a minute (below), longer than this test waits.
sed -i -e 's/^timeout = .*/timeout = 60/' -e 's/^\[server\]$/[server]\nrequest_timeout = 60/' "$conf"
SRV_LAUNCH="prlimit --nofile=100:100 --" start_server
lines0=$(wc -l < "$work/server.log")
/usr/bin/python3 - "$port" <<'PY' || fail "holding connections"
import socket, sys, time
held = [socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) for _ in range(300)]
time.sleep(3)
for s in held:
    s.close()
PY
logged=$(($(wc -l < "$work/server.log") - lines0))
[ "$logged" -le 10 ] || fail "out of descriptors for 3 s, the server logged $logged lines: $(tail -n 2 "$work/server.log")"
grep -q "cannot accept connections" "$work/server.log" || fail "running out of descriptors was not logged"
ok "out of descriptors for 3 s: $logged lines logged, no busy loop"
wait_healthz || fail "healthz after the connections closed: $(cat "$work/body")"
ok "serving again once the connections closed"

# Idle TLS connections without a certificate, more than the descriptors
# (the budgets never fill, so nothing made room before): they make room
# for /healthz and a member while they are held, well within the minute
# after which they would have gone anyway.
coproc IDLE { /usr/bin/python3 "$SRC/tests/adversarial/idle-tls.py" "$port" "$certs/tca.pem" 130; }
read -r -t 60 held_line <&"${IDLE[0]}" || fail "idle TLS connections: no summary"
ok "idle TLS connections without a certificate: $held_line"
got=
for _ in 1 2 3 4 5; do
  got=$(status anon -m 2 "$base/healthz")
  [ "$got" = 200 ] && break
done
[ "$got" = 200 ] || fail "healthz with idle TLS connections holding every descriptor: HTTP $got"
expect_status 200 "" "unwrap with idle TLS connections holding every descriptor" -- \
  c alice -m 5 --data-binary @"$work/req-tls.json" "$base/v1/groups/eng/unwrap"
kill -0 "${IDLE_PID:?}" 2>/dev/null || fail "the idle connections' holder ended early"
eval "exec ${IDLE[1]}>&-"
wait "$IDLE_PID" || true
ok "out of descriptors to idle connections without a certificate: they make room"
stop_server
