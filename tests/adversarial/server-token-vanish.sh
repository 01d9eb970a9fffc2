#!/usr/bin/env bash
# server-token-vanish.sh BIN SRC: the SoftHSM token directory moved away
# under load and back, against a real server (SoftHSM itself, no fault
# injection: the token's objects really vanish from under the module):
#   - while it is away every key request is refused (503
#     token_unavailable, no key) and /healthz fails: the next key request
#     would fail, so a load balancer must stop sending traffic;
#   - once it is back the same process serves again by itself, without a
#     restart and without anyone probing /healthz: unwraps are answered
#     200 again within RECOVER_SECONDS (20), then /healthz is 200 too.
#     (SoftHSM keeps a token whose directory vanished empty until the module
#     is initialised again: the server does so while the objects it knows
#     of stay missing, core.c token_health.)
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/server-lib.sh"
start_server
url=$base/v1/groups/eng/unwrap
printf '{"recipient_info":"%s"}' "$(b64 "$work/ri.der")" > "$work/req-tls.json"
printf '{"recipient_info":"%s","deliver":"recipient-key"}' "$(b64 "$work/ri.der")" > "$work/req-rk.json"
expect_status 200 "" "healthz with the token" -- anon "$base/healthz"
expect_status 200 "" "unwrap with the token" -- c alice --data-binary @"$work/req-tls.json" "$url"
pid0=$srv_pid

# Load from a member while the directory goes away and comes back.
load() {
  local end=$((SECONDS + $1))
  while [ $SECONDS -lt $end ]; do
    c bob -o /dev/null -w '%{http_code}\n' --data-binary @"$work/req-tls.json" "$url" 2>/dev/null || echo 000
  done > "$work/load.codes"
}
load 6 &
load_pid=$!
sleep 1
mv "$work/token/tokens" "$work/token/tokens.away"
sleep 0.5
expect_status 503 token_unavailable "unwrap (tls) with the token directory away" -- \
  c alice --data-binary @"$work/req-tls.json" "$url"
grep -q '"key"' "$work/body" && fail "a key was answered with the token directory away"
expect_status 503 token_unavailable "unwrap (recipient-key) with the token directory away" -- \
  c alice --data-binary @"$work/req-rk.json" "$url"
expect_healthz 503 "" "healthz with the token directory away"
grep -q '"token":"ok"' "$work/body" && fail "healthz says the token is ok: $(cat "$work/body")"
sleep 1
mv "$work/token/tokens.away" "$work/token/tokens"
# Only key requests from here on: recovery must not wait for a probe.
deadline=$((SECONDS + ${RECOVER_SECONDS:-20}))
until [ "$(status c alice --data-binary @"$work/req-tls.json" "$url")" = 200 ]; do
  [ $SECONDS -lt $deadline ] ||
    fail "unwraps still refused ${RECOVER_SECONDS:-20} s after the token directory came back: $(head -c 300 "$work/body")"
  sleep 0.2
done
ok "unwrap (tls) 200 again after the token directory came back"
check_cek "$(/usr/bin/python3 -c 'import json,sys,base64; print(base64.b64decode(json.load(open(sys.argv[1]))["key"]).hex())' "$work/body")"
expect_status 200 "" "unwrap (recipient-key) after the token directory came back" -- \
  c alice --data-binary @"$work/req-rk.json" "$url"
expect_healthz 200 "" "healthz after the token directory came back"
grep -q '"token":"ok"' "$work/body" || fail "healthz 200 without token ok: $(cat "$work/body")"
grep -q 'initialising the module again' "$work/server.log" || fail "no re-initialisation in the server log"
wait "$load_pid" || true
[ "$srv_pid" = "$pid0" ] && kill -0 "$srv_pid" || fail "the server restarted or died"
codes=$(sort "$work/load.codes" | uniq -c | tr '\n' ' ')
grep -qvE '^(200|503)$' "$work/load.codes" && fail "answers under load other than 200/503: $codes"
ok "same process throughout; answers under load: $codes"
stop_server
