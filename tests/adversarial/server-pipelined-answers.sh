#!/usr/bin/env bash
# server-pipelined-answers.sh BIN SRC: a client that pipelines requests and
# reads nothing for a while, so the server's TLS writes block part-way.
# The network process writes a small answer as one TLS record at once and
# leaves a write the socket does not take whole to libevent's retry of the
# same SSL_write (core.c reply_send): every answer must still arrive whole
# and in order, and the server must serve the next request.
set -euo pipefail
BIN=$1 SRC=$2
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
ok done
