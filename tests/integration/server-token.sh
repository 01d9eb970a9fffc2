#!/usr/bin/env bash
# server-token.sh BIN SRC P11FAULT: fail closed when the token goes away,
# and service again without a restart when it comes back. The server loads
# tests/p11fault in front of SoftHSM and is steered through its control
# file (GS_P11FAULT_CONTROL): "* CKR_DEVICE_REMOVED" is a removed token (no
# token in the slot, every session call fails, every session closed).
# Also: a transient device error is a 503 for that request only, and
# `groupsrv serve` refuses to start on a group key that fails the key audit;
# the token's PIN changed under the server is taken up from the PIN file at
# SIGHUP, and a PIN the token rejected is never sent again.
set -euo pipefail
BIN=$1 SRC=$2 SRV_MODULE=$3
[ -f "$SRV_MODULE" ] || { echo "FAIL: no p11fault module at $SRV_MODULE" >&2; exit 1; }
. "$SRC/tests/integration/server-lib.sh"
ctl=$work/p11fault.ctl
export GS_P11FAULT_CONTROL=$ctl
# control FILE-TEXT: replaces the control file atomically
control() { printf '%s\n' "$@" > "$ctl.tmp" && mv -f "$ctl.tmp" "$ctl"; }

# A small failed-unwrap cap, to test that [server] keys set it.
sed -i 's/^\[server\]$/[server]\nmax_failed_unwraps = 3\nsuspend_seconds = 2/' "$conf"
start_server
url=$base/v1/groups/eng/unwrap
printf '{"recipient_info":"%s"}' "$(b64 "$work/ri.der")" > "$work/req-tls.json"
printf '{"recipient_info":"%s","deliver":"recipient-key"}' "$(b64 "$work/ri.der")" > "$work/req-rk.json"
printf '{"items":[{"recipient_info":"%s"}]}' "$(b64 "$work/ri.der")" > "$work/req-batch.json"
pid0=$srv_pid

retry_after() { # retry_after DESC -- command...: the answer carries Retry-After
  local desc=$1; shift 2
  "$@" -D "$work/hdr" -o /dev/null || true
  grep -qi '^retry-after: *[0-9]' "$work/hdr" || fail "$desc: no Retry-After: $(cat "$work/hdr")"
  ok "$desc has Retry-After"
}

# ---- token present ----
expect_status 200 "" "healthz with the token" -- anon "$base/healthz"
expect_status 200 "" "unwrap with the token" -- c alice --data-binary @"$work/req-tls.json" "$url"
check_cek "$(/usr/bin/python3 -c 'import json,sys,base64; print(base64.b64decode(json.load(open(sys.argv[1]))["key"]).hex())' "$work/body")"

# ---- a transient device error: 503 for that request, the next one works ----
control "C_Decrypt CKR_DEVICE_ERROR 1"
retry_after "device error on C_Decrypt" -- c alice --data-binary @"$work/req-tls.json" "$url"
control "C_Decrypt CKR_DEVICE_ERROR 1 # again"
expect_status 503 token_unavailable "device error on C_Decrypt" -- c alice --data-binary @"$work/req-tls.json" "$url"
expect_status 200 "" "the request after a device error" -- c alice --data-binary @"$work/req-tls.json" "$url"
control ""

# ---- token removed: fail closed ----
audit_lines=$(wc -l < "$work/audit.jsonl")
control "* CKR_DEVICE_REMOVED"
expect_healthz 503 token_unavailable "healthz without the token"
grep -q '"token":"ok"' "$work/body" && fail "healthz says the token is ok: $(cat "$work/body")"
retry_after "healthz 503" -- anon "$base/healthz"
# Anyone may probe /healthz: one check serves every probe for a second
# (api.md), and only a check that ran is a token error, not each probe
# answered from it (a load balancer's, or a flood of anonymous ones).
token_errors() { c admin "$base/metrics" | awk '$1 == "groupsrv_token_errors_total" {print $2}'; }
te0=$(token_errors) t0=$(date +%s)
anon -o /dev/null $(for _ in $(seq 1 30); do echo "$base/healthz"; done) || true
te1=$(token_errors) t1=$(date +%s)
[ $((te1 - te0)) -le $((t1 - t0 + 2)) ] ||
  fail "30 /healthz probes in $((t1 - t0)) s counted $((te1 - te0)) token errors"
ok "30 /healthz probes during the outage: $((te1 - te0)) token error(s) counted"
expect_status 503 token_unavailable "unwrap (tls) without the token" -- c alice --data-binary @"$work/req-tls.json" "$url"
grep -q '"key"' "$work/body" && fail "a key was answered without the token"
retry_after "unwrap 503" -- c alice --data-binary @"$work/req-tls.json" "$url"
expect_status 503 token_unavailable "unwrap (recipient-key) without the token" -- \
  c alice --data-binary @"$work/req-rk.json" "$url"
expect_status 503 token_unavailable "unwrap-batch without the token" -- \
  c alice --data-binary @"$work/req-batch.json" "$base/v1/groups/eng/unwrap-batch"
expect_status 503 token_unavailable "rewrap without the token" -- \
  c dle --data-binary "{\"recipient_info\":\"$(b64 "$work/ri.der")\",\"to\":\"group-secret\"}" "$base/v1/groups/eng/rewrap"
expect_status 503 token_unavailable "certificate server without the token" -- anon "$cbase/healthz"
# the same answer as the API's /healthz (api.md): what is down, by name
[ "$(json_get "$work/body" status)" = unavailable ] && [ "$(json_get "$work/body" audit)" = ok ] &&
  [ "$(json_get "$work/body" token)" != ok ] || fail "certificate server's /healthz: $(cat "$work/body")"
# Still refused several seconds later (no fallback once the pool is empty).
sleep 2
expect_status 503 token_unavailable "unwrap still refused while the token is away" -- \
  c alice --data-binary @"$work/req-tls.json" "$url"
kill -0 "$srv_pid" || fail "server died without its token"
grep -q '"outcome":"ok"' <(sed -n "$((audit_lines + 1)),\$p" "$work/audit.jsonl") && fail "an unwrap succeeded without the token"
ok "no software fallback: every key request refused"

# ---- token back: service within seconds, same process ----
control ""
up=0
for _ in $(seq 1 50); do
  got=$(status anon "$base/healthz")
  if [ "$got" = 200 ]; then up=1; break; fi
  sleep 0.1
done
[ "$up" = 1 ] || fail "healthz not 200 within 5 s of the token coming back: $(cat "$work/body")"
ok "healthz 200 again after the token came back"
expect_status 200 "" "unwrap after the token came back" -- c alice --data-binary @"$work/req-tls.json" "$url"
check_cek "$(/usr/bin/python3 -c 'import json,sys,base64; print(base64.b64decode(json.load(open(sys.argv[1]))["key"]).hex())' "$work/body")"
expect_status 200 "" "recipient-key after the token came back" -- c alice --data-binary @"$work/req-rk.json" "$url"
[ "$srv_pid" = "$pid0" ] && kill -0 "$srv_pid" || fail "not the same server process"
grep -q 'token is back' "$work/server.log" || fail "no 'token is back' in the server log"
ok "same server process serves again"

# ---- removed twice in a row, under concurrent load, then back ----
control "* CKR_DEVICE_REMOVED"
UC_CERT="$certs/alice@example.org.pem" UC_KEY="$certs/alice@example.org.key" UC_CACERT="$certs/tca.pem" \
  "$BIN/unwrapclient" load "$url" "$work/req-tls.json" 4 5 503 >/dev/null 2>&1 || fail "concurrent clients while the token is away did not all get 503"
control ""
for _ in $(seq 1 50); do [ "$(status anon "$base/healthz")" = 200 ] && break; sleep 0.1; done
UC_CERT="$certs/alice@example.org.pem" UC_KEY="$certs/alice@example.org.key" UC_CACERT="$certs/tca.pem" \
  "$BIN/unwrapclient" load "$url" "$work/req-tls.json" 4 10 200 || fail "concurrent clients after the token came back"
ok "4 concurrent clients: 503 while away, 200 after"

# ---- logged out under us (sessions kept, login gone): recovers ----
control "C_FindObjectsInit CKR_USER_NOT_LOGGED_IN 1"
expect_status 200 "" "unwrap after a lost login (CKR_USER_NOT_LOGGED_IN)" -- c alice --data-binary @"$work/req-tls.json" "$url"
# A real logout: pooled sessions stay open but private keys are invisible
# (C_FindObjects finds nothing, no error code says why).
control "logout"
expect_status 200 "" "discovery after a silent logout" -- c alice "$base/v1/groups/eng"
expect_status 200 "" "unwrap after a silent logout" -- c alice --data-binary @"$work/req-tls.json" "$url"
control "logout # twice"
expect_status 200 "" "healthz after a silent logout" -- anon "$base/healthz"
expect_status 200 "" "unwrap after a second silent logout" -- c alice --data-binary @"$work/req-tls.json" "$url"
control ""

# ---- the token's PIN changed under the server: refused (the rejected PIN
# never sent again), then the PIN file corrected and SIGHUP: served by the
# same process, no restart ----
newpin=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' | head -c 12)
GS_OLD=$(cat "$pin_file") GS_NEW=$newpin pkcs11-tool --module "$GS_P11FAULT_TARGET" --token-label groupsrv \
  --login --pin env:GS_OLD --change-pin --new-pin env:GS_NEW >/dev/null 2>&1 || fail "pkcs11-tool --change-pin"
# SoftHSM reads the new PIN only when initialised again: a lost connection
# makes the key holder finalize and initialise the module, then log in.
control "disconnect"
for _ in $(seq 1 100); do
  status c alice --data-binary @"$work/req-tls.json" "$url" >/dev/null
  grep -q '"key"' "$work/body" && fail "a key was answered with the token's PIN changed"
  [ "$(status anon "$base/healthz")" = 503 ] && grep -q 'PIN incorrect' "$work/body" && break
  sleep 0.1
done
grep -q 'PIN incorrect' "$work/body" || fail "healthz does not name the PIN: $(cat "$work/body")"
control ""
expect_status 503 token_unavailable "unwrap after the token's PIN changed" -- c alice --data-binary @"$work/req-tls.json" "$url"
kill -HUP "$srv_pid" # the file still holds the rejected PIN: not taken up, not sent
for _ in $(seq 1 50); do grep -q 'PIN source was not taken up' "$work/server.log" && break; sleep 0.1; done
grep -q 'PIN source was not taken up.*rejected before' "$work/server.log" || fail "SIGHUP with the rejected PIN: $(tail -n 3 "$work/server.log")"
expect_status 503 token_unavailable "unwrap after SIGHUP with the rejected PIN" -- c alice --data-binary @"$work/req-tls.json" "$url"
printf '%s\n' "$newpin" > "$pin_file"
kill -HUP "$srv_pid"
wait_healthz || fail "healthz not 200 after the PIN file was corrected and SIGHUP: $(cat "$work/body")"
expect_status 200 "" "unwrap after the PIN file was corrected and SIGHUP" -- c alice --data-binary @"$work/req-tls.json" "$url"
[ "$srv_pid" = "$pid0" ] && kill -0 "$srv_pid" || fail "not the same server process"
[ "$(grep -c 'token rejected the PIN' "$work/server.log")" = 1 ] || fail "the rejected PIN was sent more than once"
ok "the token's PIN changed: 503, then the PIN file corrected and SIGHUP: served without a restart"
control ""

# ---- the recorded certificate, on both listeners ----
# alice@example.org, but signed by the other trusted client CA: not the
# certificate recorded for alice.
openssl req -new -newkey rsa:2048 -nodes -subj "/CN=alice@example.org" -keyout "$work/alice2.key" \
  -out "$work/alice2.csr" 2>/dev/null
printf 'subjectAltName=email:alice@example.org\nextendedKeyUsage=clientAuth\n' > "$work/alice2.ext"
openssl x509 -req -in "$work/alice2.csr" -CA "$certs/tca.pem" -CAkey "$certs/tca.key" -CAcreateserial -days 1 \
  -extfile "$work/alice2.ext" -out "$work/alice2.pem" 2>/dev/null
a2() { curl -sS --cacert "$certs/tca.pem" --cert "$work/alice2.pem" --key "$work/alice2.key" "$@"; }
expect_status 403 certificate_mismatch "unwrap with another certificate for alice" -- a2 --data-binary @"$work/req-tls.json" "$url"
openssl req -new -newkey rsa:2048 -nodes -subj "/CN=member" -keyout "$work/g.key" -out "$work/g.csr" 2>/dev/null
expect_status 403 certificate_mismatch "membership certificate for another certificate of alice" -- \
  a2 -H 'Content-Type: application/pkcs10' --data-binary @"$work/g.csr" "$cbase/v1/groups/eng/membership-certificates"
expect_status 200 "" "membership certificate for alice's own certificate" -- \
  c alice -H 'Content-Type: application/pkcs10' --data-binary @"$work/g.csr" "$cbase/v1/groups/eng/membership-certificates"

# ---- failed-unwrap cap from [server] max_failed_unwraps / suspend_seconds ----
head -c 256 /dev/urandom > "$work/g1.bin"
printf '{"encrypted_key":"%s","algorithm":"RSA-OAEP"}' "$(b64 "$work/g1.bin")" > "$work/bad1.json"
for i in 1 2 3; do
  expect_status 400 unwrap_failed "failed unwrap $i of 3" -- c mallory --data-binary @"$work/bad1.json" "$url"
done
expect_status 429 suspended "suspended after max_failed_unwraps = 3" -- c mallory --data-binary @"$work/req-tls.json" "$url"
retry_after "suspension 429" -- c mallory --data-binary @"$work/req-tls.json" "$url"
sleep 3
expect_status 200 "" "served again after suspend_seconds = 2" -- c mallory --data-binary @"$work/req-tls.json" "$url"
kill -TERM "$srv_pid"; wait "$srv_pid" || fail "SIGTERM exit status"; srv_pid=

# ---- startup key audit: a bad group key means no start ----
# The token reports every key as extractable (a token that adds usages or
# a key imported carelessly): serve must refuse, with a clear message.
control "bool CKA_EXTRACTABLE 1"
set +e
timeout 60 "$BIN/groupsrv" -c "$conf" serve >"$work/serve-bad.log" 2>&1
rc=$?
set -e
[ "$rc" != 0 ] && [ "$rc" != 124 ] || fail "serve with an extractable group key: exit $rc: $(cat "$work/serve-bad.log")"
grep -q 'violate their policy' "$work/serve-bad.log" || fail "no clear refusal: $(cat "$work/serve-bad.log")"
grep -q 'CKA_EXTRACTABLE is true' "$work/serve-bad.log" || fail "the bad attribute is not named: $(cat "$work/serve-bad.log")"
ok "serve refuses to start on an extractable group key (exit $rc)"
# No token, or a PIN the token refuses, at start: exit 4, as every other
# command that cannot open the token (groupsrv(1) EXIT STATUS).
for rule in "* CKR_DEVICE_REMOVED" "C_Login CKR_PIN_INCORRECT"; do
  control "$rule"
  set +e
  timeout 60 "$BIN/groupsrv" -c "$conf" serve >"$work/serve-bad.log" 2>&1
  rc=$?
  set -e
  [ "$rc" = 4 ] || fail "serve with $rule at start: exit $rc, wanted 4: $(cat "$work/serve-bad.log")"
  grep -q 'msg="not started: the token cannot be opened" err=' "$work/serve-bad.log" || fail "serve with $rule: no reason: $(cat "$work/serve-bad.log")"
done
ok "serve without its token or with a refused PIN at start: exit 4"
control ""
# The refusal is remembered beside the database: the next start (a
# service manager's) does not send that PIN file's PIN again, even with
# the token answering, and says how to clear it; here the token's PIN is
# right after all, so the record is removed, as the message says.
set +e
timeout 60 "$BIN/groupsrv" -c "$conf" serve >"$work/serve-bad.log" 2>&1
rc=$?
set -e
[ "$rc" = 4 ] || fail "serve after a refused PIN: exit $rc, wanted 4: $(cat "$work/serve-bad.log")"
grep -q "the token refused the PIN from .* or $work/pin-refused is removed" "$work/serve-bad.log" ||
  fail "serve after a refused PIN: no reason: $(cat "$work/serve-bad.log")"
rm "$work/pin-refused"
# A [tls] cert file that cannot be read (the supervisor reads it for the
# network process): not started, said at once with exit 1, not after the
# network process's 2-minute wait for the rest of its start-up.
sed "s#^cert = .*#cert = $work/no-such-cert.pem#" "$conf" > "$work/nocert.conf"
set +e
timeout 60 "$BIN/groupsrv" -c "$work/nocert.conf" serve >"$work/serve-bad.log" 2>&1
rc=$?
set -e
[ "$rc" = 1 ] || fail "serve with its [tls] cert file missing: exit $rc, wanted 1: $(cat "$work/serve-bad.log")"
grep -q "level=error .*msg=\"not started: cannot read the TLS certificate\" path=\"$work/no-such-cert.pem\" reason=\"[^\"]*\"\$" "$work/serve-bad.log" ||
  fail "serve with its [tls] cert file missing: no reason: $(cat "$work/serve-bad.log")"
/usr/bin/python3 "$SRC/tests/lib/logcheck.py" "$work/serve-bad.log" || fail "serve's lines are not key=value records"
ok "serve with its [tls] cert file missing: not started, exit 1 at once"
start_server
expect_status 200 "" "serve starts again with sound keys" -- c alice --data-binary @"$work/req-tls.json" "$url"
# The cert file gone while serve runs, and the network process started
# again (it died): the supervisor says it cannot read the file and tries
# again, but not 'not started' (docs/groupsrv.1.md: serve's reason not to
# start), which serve is not; once the file is back, serving again.
mark=$(wc -c < "$work/server.log")
mv "$certs/server.pem" "$work/server.pem.away"
net_pid=$(srv_net_pid)
[ -n "$net_pid" ] || fail "no network process"
kill -KILL "$net_pid"
await 5 logged_after "$mark" 'msg="the network process did not start; trying again"' || true
tail -c +"$((mark + 1))" "$work/server.log" > "$work/restart.log"
grep -q "prog=groupsrv fn=send_tls msg=\"cannot read the TLS certificate\" path=\"$certs/server.pem\" reason=\"[^\"]*\"\$" "$work/restart.log" ||
  fail "a restart without the cert file: no reason: $(cat "$work/restart.log")"
if grep 'prog=groupsrv ' "$work/restart.log" | grep -q 'msg="not started'; then
  fail "serve, running, says 'not started': $(grep 'not started' "$work/restart.log")"
fi
mv "$work/server.pem.away" "$certs/server.pem"
wait_healthz 100 || fail "the network process did not start again with the cert file back: $(cat "$work/body")"
ok "the cert file gone at a restart of the network process: said without 'not started', serving again once back"
# The key holder started again without its PIN file: the supervisor's
# line says when it tries next ("trying again" alone did not say whether,
# nor when), and the key holder runs again once the file is back.
mark=$(wc -c < "$work/server.log")
mv "$pin_file" "$work/pin.away"
kh_pid=$(ps --ppid "$srv_pid" -o pid=,comm= | awk '$2 == "groupsrv-kh" {print $1; exit}')
[ -n "$kh_pid" ] || fail "no key holder: $(ps --ppid "$srv_pid" -o pid=,comm=)"
kill -KILL "$kh_pid"
await 10 logged_after "$mark" 'msg="the key holder did not start; trying again"' || true
tail -c +"$((mark + 1))" "$work/server.log" > "$work/restart.log"
grep -q 'msg="the key holder exited unexpectedly (signal 9); restarting it" in=[0-9]*\.[0-9]s$' "$work/restart.log" ||
  fail "the key holder killed: no time of its restart: $(cat "$work/restart.log")"
grep -q 'msg="the key holder did not start; trying again" in=[0-9]*\.[0-9]s$' "$work/restart.log" ||
  fail "the key holder not started: no time of the next try: $(cat "$work/restart.log")"
mv "$work/pin.away" "$pin_file"
wait_healthz 150 || fail "the key holder did not start again with its PIN file back: $(cat "$work/body")"
ok "the key holder not started: $(grep -m1 'did not start' "$work/restart.log" | sed 's/.*msg=//')"
kill -TERM "$srv_pid"; wait "$srv_pid" || fail "SIGTERM exit status"; srv_pid=
ok "token absent: fail closed; token back: service without a restart"
