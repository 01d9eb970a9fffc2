#!/usr/bin/env bash
# server-slowloris.sh BIN SRC: slowloris on each listener of a real server
# while a member connects anew for every request: at least 99 % of the
# member's requests answered, none hanging; and a listener full of members
# answers the next connection 503 too_many_connections. The limits are small so the
# attack that exceeds them is small too (the attack is scaled to them):
# 64 connections per listener, 16 kept for members, 8 per address without
# a client certificate, 3 s for a handshake, 4 s for a request.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/server-lib.sh"
sed -i 's/^\[server\]$/[server]\nmax_connections = 64\nreserved_connections = 16\nmax_connections_per_address = 8\nhandshake_timeout = 3\nrequest_timeout = 4/' "$conf"
sed -i 's/^\[certsrv\]$/[certsrv]\nmax_connections = 64/' "$conf"
start_server
printf '{"recipient_info":"%s"}' "$(b64 "$work/ri.der")" > "$work/req-tls.json"
expect_status 200 "" "unwrap before the attack" -- c alice --data-binary @"$work/req-tls.json" "$base/v1/groups/eng/unwrap"
loris() { # loris ATTACK_PORT MEMBER_PORT PATH BODY
  /usr/bin/python3 "$SRC/tests/adversarial/slowloris.py" "$1" "$2" "$3" "$4" \
    "$certs/alice@example.org.pem" "$certs/alice@example.org.key" "$certs/tca.pem" "${LORIS_SECONDS:-12}" 96
}
rss() { awk '/^VmRSS/ {print $2}' "/proc/$(srv_net_pid)/status"; }
rss0=$(rss)
out=$(loris "$port" "$port" /v1/groups/eng/unwrap "$work/req-tls.json") || fail "API listener under slowloris: $out"
ok "$out"
out=$(loris "$cport" "$port" /v1/groups/eng/unwrap "$work/req-tls.json") ||
  fail "API while the certificate server is under slowloris: $out"
ok "$out"
out=$(loris "$cport" "$cport" /healthz -) || fail "certificate server under slowloris: $out"
ok "$out"
kill -0 "$srv_pid" || fail "server died under the attack"
# A listener full of members (never closed to make room): the next
# connection is told so, 503 too_many_connections, instead of hanging.
out=$(/usr/bin/python3 "$SRC/tests/adversarial/fill-members.py" "$port" "$certs/alice@example.org.pem" \
  "$certs/alice@example.org.key" "$certs/tca.pem" 64) || fail "listener full of members: $out"
ok "$out"
ok "RSS ${rss0} kB before, $(rss) kB after three attacks"
expect_status 200 "" "unwrap after the attack" -- c alice --data-binary @"$work/req-tls.json" "$base/v1/groups/eng/unwrap"
stop_server
