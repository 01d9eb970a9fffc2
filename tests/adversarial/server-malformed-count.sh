#!/usr/bin/env bash
# server-malformed-count.sh BIN SRC P11FAULT: the malformed-input corpus
# (tests/integration/server-malformed.py) and requests from non-members
# against a real server whose token is tests/p11fault in front of SoftHSM,
# counting every PKCS#11 call (GS_P11FAULT_COUNTS): none of these requests
# may make a single token call. A good unwrap afterwards must (the counter
# counts), and a flood of /healthz probes makes at most one token check a
# second. One event-loop thread and one token worker: each token worker of
# the key holder loads a group's keys from the token once (its cache),
# whoever asks first (a refusal too: the key holder loads the group to
# check membership); with one worker the warm-up request is that first
# one, so every call counted below is the request's.
set -euo pipefail
BIN=$1 SRC=$2 SRV_MODULE=$3 SRV_THREADS=1 SRV_WORKERS=1
[ -f "$SRV_MODULE" ] || { echo "FAIL: no p11fault module at $SRV_MODULE" >&2; exit 1; }
. "$SRC/tests/integration/server-lib.sh"
counts=$work/p11.counts
export GS_P11FAULT_COUNTS=$counts
calls() { awk '{n += $2} END {print n+0}' "$counts"; }
start_server
url=$base/v1/groups/eng/unwrap
printf '{"recipient_info":"%s"}' "$(b64 "$work/ri.der")" > "$work/req-tls.json"
expect_status 200 "" "unwrap (loads the group into the thread's cache)" -- c alice --data-binary @"$work/req-tls.json" "$url"
n0=$(calls)

/usr/bin/python3 "$SRC/tests/integration/server-malformed.py" 127.0.0.1 "$port" "$certs/tca.pem" \
  "$certs/fuzz@example.org.pem" "$certs/fuzz@example.org.key" eng "${MALFORMED_N:-300}" || fail "malformed requests"
n1=$(calls)
[ "$n1" = "$n0" ] || fail "malformed requests made $((n1 - n0)) token calls: $(awk '$2 > 0' "$counts" | tr '\n' ' ')"
ok "${MALFORMED_N:-300} malformed requests: 0 token calls"

# The CMS-level refusals of issue 15 finding 6, from a member.
/usr/bin/python3 - "$work/ri.der" "$work/ri-v7f.der" <<'PY'
import sys
der = bytearray(open(sys.argv[1], 'rb').read())
hl = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7f)
der[hl + 2] = 0x7f
open(sys.argv[2], 'wb').write(der)
PY
for body in '{"encrypted_key":"AAAA","algorithm":"RSA-OAEP"}' \
            "{\"recipient_info\":\"$(b64 "$work/ri-v7f.der")\"}" \
            "{\"recipient_info\":\"$(b64 "$work/ri.der")\",\"key_version\":-1}" \
            "{\"recipient_info\":\"$(b64 "$work/ri.der")\",\"key_version\":1.5}"; do
  got=$(status c erin --data-binary "$body" "$url")
  [ "$got" = 400 ] || fail "malformed CMS input: HTTP $got: $(head -c 200 "$work/body")"
done
# Non-members: a removed member, no certificate, an untrusted certificate,
# the wrong group, and an exploder asking for a key.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=alice@example.org" \
  -addext "subjectAltName=email:alice@example.org" -keyout "$work/self.key" -out "$work/self.pem" 2>/dev/null
for i in $(seq 1 10); do
  [ "$(status c carol --data-binary @"$work/req-tls.json" "$url")" = 403 ] || fail "removed member: $(cat "$work/body")"
  [ "$(status anon --data-binary @"$work/req-tls.json" "$url")" = 401 ] || fail "no certificate: $(cat "$work/body")"
  [ "$(status curl -sS --cacert "$certs/tca.pem" --cert "$work/self.pem" --key "$work/self.key" \
      --data-binary @"$work/req-tls.json" "$url")" = 401 ] || fail "self-signed: $(cat "$work/body")"
  [ "$(status c alice --data-binary @"$work/req-tls.json" "$base/v1/groups/nosuch/unwrap")" = 404 ] ||
    fail "unknown group: $(cat "$work/body")"
  [ "$(status c dle --data-binary @"$work/req-tls.json" "$url")" = 403 ] || fail "exploder unwrap: $(cat "$work/body")"
done
n2=$(calls)
[ "$n2" = "$n1" ] || fail "refused requests made $((n2 - n1)) token calls: $(awk '$2 > 0' "$counts" | tr '\n' ' ')"
ok "malformed CMS input and 50 non-member requests: 0 token calls"

expect_status 200 "" "a good unwrap" -- c alice --data-binary @"$work/req-tls.json" "$url"
[ "$(calls)" -gt "$n2" ] || fail "the counter did not count the good unwrap's token calls"
ok "the good unwrap made $(($(calls) - n2)) token calls"

# /healthz needs no certificate, and one check costs a CA key lookup on the
# token: one check serves every probe for a second, so a flood of probes
# cannot load the token. A probe once the last result is a second old
# measures one check; then 50 probes from one curl process may make at most
# one check for every second they took, and two more.
sleep 1.2
h0=$(calls)
expect_status 200 "" "healthz (one check)" -- anon "$base/healthz"
per=$(($(calls) - h0))
[ "$per" -gt 0 ] || fail "a /healthz check made no token call"
probes=()
for i in $(seq 1 50); do
  probes+=(--cacert "$certs/tca.pem" -o /dev/null -w '%{http_code}\n' "$base/healthz" --next)
done
h1=$(calls) t0=$(date +%s%N)
codes=$(curl -sS "${probes[@]:0:${#probes[@]}-1}" | sort | uniq -c | tr '\n' ' ')
t1=$(date +%s%N)
made=$(($(calls) - h1)) secs=$(((t1 - t0 + 999999999) / 1000000000))
[ "$codes" = "     50 200 " ] || fail "50 healthz probes: $codes"
[ "$made" -le $(((secs + 2) * per)) ] ||
  fail "50 healthz probes in ${secs} s made $made token calls (one check is $per)"
ok "50 healthz probes in ${secs} s: $made token calls (one check is $per)"
stop_server
