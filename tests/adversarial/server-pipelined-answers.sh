#!/usr/bin/env bash
# server-pipelined-answers.sh BIN SRC P11FAULT: clients that send more
# while their answers are under way. One set-up (the token, CA and members
# take most of the time) for both parts:
# 1. A client that pipelines requests and reads nothing for a while, so
#    the server's TLS writes block part-way. The network process writes a
#    small answer as one TLS record at once and leaves a write the socket
#    does not take whole to libevent's retry of the same SSL_write (core.c
#    reply_send): every answer must still arrive whole and in order, and
#    the server must serve the next request.
# 2. The network process keeps a kept-alive connection's socket in its
#    epoll set while a request is being answered (core.c conn_watch_cb: no
#    epoll_ctl pair per request). Checked with strace on the network
#    process (scripts/setup installs it; skipped only where ptrace is
#    forbidden):
#    - 20 unwraps on one kept-alive connection (zero-cost token) make fewer
#      epoll_ctl calls than requests (evhttp's read off/on made two each),
#      and one write(2) per answer (core.c reply_send: evhttp's head and
#      body as one TLS record; libevent's TLS bufferevent wrote each chain
#      as a record and a write of its own, two per answer);
#    - a client that sends its next request, or shuts its sending side,
#      while its request is at the token (500 ms token model): the answers
#      still come, and the network process does not spin on the readable
#      socket meanwhile (a few dozen epoll_wait, the idle loop's; a watch
#      that never takes itself out made thousands).
#    Counts, never timings.
# The server loads tests/p11fault in front of SoftHSM: pass-through in
# part 1, its token models in part 2.
set -euo pipefail
BIN=$1 SRC=$2 SRV_MODULE=$3
[ -f "$SRV_MODULE" ] || { echo "FAIL: no p11fault module at $SRV_MODULE" >&2; exit 1; }
. "$SRC/tests/integration/server-lib.sh"
start_server
printf '{"recipient_info":"%s"}' "$(b64 "$work/ri.der")" > "$work/req-tls.json"
for n in 30 150 400; do
  /usr/bin/python3 "$SRC/tests/adversarial/pipelined-answers.py" "$port" "$certs/tca.pem" \
    "$certs/alice@example.org.pem" "$certs/alice@example.org.key" "$work/req-tls.json" "$n" 3 ||
    fail "$n pipelined requests: an answer was lost, cut or out of order"
done
ok "pipelined answers arrive whole after blocked writes"
expect_status 200 "" "an unwrap afterwards" -- c alice --data-binary @"$work/req-tls.json" "$base/v1/groups/eng/unwrap"

stop_server

# ---- 2. the socket stays in epoll over a request ----
command -v strace >/dev/null || fail "no strace (scripts/setup installs it)"
trace() { # trace OUT: strace -c of the network process in the background
  strace -f -c -e trace=epoll_ctl,epoll_wait,write -p "$(srv_net_pid)" -o "$1" 2>"$1.err" &
  st=$!
  for _ in $(seq 1 50); do grep -q "attached" "$1.err" 2>/dev/null && return 0; sleep 0.1; done
  kill "$st" 2>/dev/null || true
  echo "SKIP (part 2): strace cannot attach to the network process: $(head -n 2 "$1.err")"
  stop_server
  exit 0
}
untrace() { kill -INT "$st"; wait "$st" || true; }
calls() { awk -v s="$2" '$NF == s {print $4; found=1} END {if (!found) print 0}' "$1"; }

export GS_P11FAULT_ZERO_COST=1
start_server
expect_status 200 "" "a first unwrap" -- c alice --data-binary @"$work/req-tls.json" "$base/v1/groups/eng/unwrap"
urls=()
for _ in $(seq 1 20); do urls+=("$base/v1/groups/eng/unwrap"); done
trace "$work/st-keepalive.txt"
c alice --data-binary @"$work/req-tls.json" -o /dev/null -w '%{http_code}\n' "${urls[@]}" > "$work/codes"
untrace
[ "$(grep -c '^200$' "$work/codes")" = 20 ] || fail "20 unwraps on one connection: $(sort "$work/codes" | uniq -c)"
# The network process writes with write(2) only to TLS connections (its
# frames to the key holder go out with writev, its log lines are off at
# this level): 20 answers and a few for the handshake and the close
# (23 in all when written); two per answer made more than 40.
n=$(calls "$work/st-keepalive.txt" write)
[ "$n" -lt 30 ] || fail "20 unwraps on one kept-alive connection made $n write calls (want one per answer)"
ok "20 unwraps on one kept-alive connection: $n write calls"
n=$(calls "$work/st-keepalive.txt" epoll_ctl)
[ "$n" -lt 20 ] || fail "20 unwraps on one kept-alive connection made $n epoll_ctl calls (want fewer than 20)"
ok "20 unwraps on one kept-alive connection: $n epoll_ctl calls"
stop_server

unset GS_P11FAULT_ZERO_COST
export GS_P11FAULT_SERVICE_US=500000 GS_P11FAULT_ENGINES=1
start_server
for mode in more close; do
  trace "$work/st-$mode.txt"
  /usr/bin/python3 "$SRC/tests/adversarial/inservice-input.py" "$port" "$certs/tca.pem" \
    "$certs/alice@example.org.pem" "$certs/alice@example.org.key" "$work/req-tls.json" "$mode" ||
    fail "$mode while the request is at the token: answers lost or cut"
  untrace
  n=$(calls "$work/st-$mode.txt" epoll_wait)
  [ "$n" -lt 200 ] || fail "$mode while the request is at the token: $n epoll_wait calls (the loop spun)"
  ok "$mode while the request is at the token: answered, $n epoll_wait calls"
done
expect_status 200 "" "an unwrap afterwards" -- c alice --data-binary @"$work/req-tls.json" "$base/v1/groups/eng/unwrap"
"$BIN/groupsrv" -c "$conf" audit verify >/dev/null || fail "audit chain"
ok done
