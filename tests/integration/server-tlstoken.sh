#!/usr/bin/env bash
# server-tlstoken.sh BIN SRC: `groupsrv serve` with its TLS server key on the
# token ([tls] key = pkcs11:...): `groupsrv tls init` makes the EC key and the
# certificate; curl and openssl s_client (TLS 1.3 and 1.2) handshake, see the
# expected certificate and unwrap; pkcs11-tool shows the key sensitive and
# never extractable; SIGHUP reloads it; RSA, extractable, missing and
# mismatched token keys are refused at start with a clear message. A
# reload the key holder answers 503 (the key not found on the token for
# a moment) is tried again; one it refuses (the key fails its checks) is
# not. The server loads tests/p11fault (P11FAULT) in front of SoftHSM,
# steered through its control file.
set -euo pipefail
BIN=$1 SRC=$2 SRV_MODULE=$3
[ -f "$SRV_MODULE" ] || { echo "FAIL: no p11fault module at $SRV_MODULE" >&2; exit 1; }
. "$SRC/tests/integration/server-lib.sh"
ctl=$work/p11fault.ctl
export GS_P11FAULT_CONTROL=$ctl
control() { printf '%s\n' "$@" > "$ctl.tmp" && mv -f "$ctl.tmp" "$ctl"; }

name=groupsrv.test
tlsuri="pkcs11:token=groupsrv;object=tls;type=private"
export GS_PIN
GS_PIN=$(cat "$work/token/user-pin")
p11() { pkcs11-tool --module "${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}" --token-label groupsrv \
  --login --pin env:GS_PIN "$@"; }

# ---- provisioning ----
set +e
gs tls init --dns "$name" --key rsa:2048 --out "$certs/rsa.pem" >"$work/out" 2>&1
rc=$?
set -e
[ "$rc" = 2 ] || fail "tls init --key rsa:2048: exit $rc, wanted 2: $(cat "$work/out")"
grep -q "must be EC" "$work/out" || fail "tls init rsa: no reason given: $(cat "$work/out")"
[ ! -e "$certs/rsa.pem" ] || fail "tls init rsa wrote a certificate"
ok "tls init refuses an RSA key (exit 2, says why)"

gs tls init --dns "$name" --out "$certs/tls.pem" >"$work/out" || fail "tls init: $(cat "$work/out")"
grep -qF "key = $tlsuri" "$work/out" || fail "tls init does not print the key URI: $(cat "$work/out")"
openssl verify -CAfile "$certs/localca.pem" -purpose sslserver "$certs/tls.pem" >/dev/null ||
  fail "TLS certificate does not verify against the local CA as a server certificate"
openssl x509 -in "$certs/tls.pem" -noout -ext subjectAltName | grep -q "DNS:$name" || fail "TLS certificate SAN"
openssl x509 -in "$certs/tls.pem" -noout -text | grep -q "ASN1 OID: prime256v1" || fail "TLS key is not P-256"
[ "$(grep -c 'BEGIN' "$certs/tls.pem")" = 1 ] || fail "tls init wrote more than one PEM block (a key?)"
set +e
gs tls init --dns "$name" --out "$certs/again.pem" >"$work/out" 2>&1
rc=$?
set -e
[ "$rc" = 3 ] || fail "tls init with a taken label: exit $rc, wanted 3: $(cat "$work/out")"
ok "tls init: EC P-256 key on the token, serverAuth certificate from the local CA; label taken -> 3"

# The key on the token: sign only, sensitive, never extractable.
p11 --list-objects --type privkey >"$work/objs" 2>&1 || fail "pkcs11-tool --list-objects: $(cat "$work/objs")"
awk '/^Private Key Object/{k=$0} /label: +tls$/{found=1} found&&/Access:/{print; exit}' "$work/objs" >"$work/access"
grep -q "never extractable" "$work/access" || fail "TLS key access: $(cat "$work/objs")"
grep -q "always sensitive" "$work/access" || fail "TLS key not always sensitive: $(cat "$work/objs")"
awk '/label: +tls$/{found=1} found&&/Usage:/{print; exit}' "$work/objs" | grep -qx ' *Usage: *sign' ||
  fail "TLS key usage is not sign only: $(cat "$work/objs")"
ok "pkcs11-tool: TLS key sensitive, always sensitive, never extractable, sign only"

# ---- serve with the key on the token ----
sed -i -e "s|^cert = .*|cert = $certs/tls.pem|" -e "s|^key = .*|key = $tlsuri|" "$conf"
grep -qF "key = $tlsuri" "$conf" || fail "config rewrite"
cacert=$certs/localca.pem
anon() { curl -sS --cacert "$cacert" --resolve "$name:$port:127.0.0.1" "$@"; }
c() {
  local who=$1; shift
  anon --cert "$certs/$who@example.org.pem" --key "$certs/$who@example.org.key" "$@"
}
base=https://$name:$port
start_server
grep -q 'msg="TLS key on the token"' "$work/server.log" || fail "server log does not name the token key"

expect_status 200 "" "healthz over TLS with the token key (curl verifies chain and name)" -- anon "$base/healthz"
printf '{"recipient_info":"%s","deliver":"tls"}' "$(b64 "$work/ri.der")" >"$work/req-tls.json"
expect_status 200 "" "unwrap (F) over TLS with the token key" -- \
  c alice --data-binary @"$work/req-tls.json" "$base/v1/groups/eng/unwrap"
check_cek "$(b64d "$(json_get "$work/body" key)" | od -An -tx1 | tr -d ' \n')"
ok "unwrapped content key decrypts the message"

want_fp=$(openssl x509 -in "$certs/tls.pem" -noout -fingerprint -sha256)
# handshake VERSION [s_client args...]: full verification, the served
# certificate must be tls.pem, the protocol the one asked for.
handshake() {
  local v=$1; shift
  openssl s_client -connect "127.0.0.1:$port" -servername "$name" -verify_hostname "$name" -CAfile "$cacert" \
    -verify_return_error "-$v" "$@" </dev/null >"$work/sclient.out" 2>&1 ||
    fail "s_client -$v $*: $(tail -n 20 "$work/sclient.out")"
  grep -q "Verification: OK" "$work/sclient.out" || fail "s_client -$v: not verified"
  grep -q "Peer signature type: ECDSA" "$work/sclient.out" || fail "s_client -$v: no ECDSA signature"
  case $v in
    tls1_3) grep -q "^New, TLSv1.3" "$work/sclient.out" || fail "s_client: not TLS 1.3" ;;
    tls1_2) grep -q "^New, TLSv1.2" "$work/sclient.out" || fail "s_client: not TLS 1.2" ;;
  esac
  local got
  got=$(openssl x509 -noout -fingerprint -sha256 <"$work/sclient.out")
  [ "$got" = "$want_fp" ] || fail "s_client -$v: served certificate $got, wanted $want_fp"
}
handshake tls1_3
ok "openssl s_client -tls1_3: verified, ECDSA by the token, certificate is tls.pem"
handshake tls1_2
ok "openssl s_client -tls1_2: verified, ECDSA by the token, certificate is tls.pem"
# Other digest lengths through HSM_SIG_ECDSA_DIGEST (TLS 1.2 lets the client choose).
handshake tls1_2 -sigalgs ECDSA+SHA384
grep -q "Peer signing digest: SHA384" "$work/sclient.out" || fail "no SHA-384 signature"
handshake tls1_2 -sigalgs ECDSA+SHA512
grep -q "Peer signing digest: SHA512" "$work/sclient.out" || fail "no SHA-512 signature"
ok "TLS 1.2 ECDSA with SHA-384 and SHA-512 digests"
# Many handshakes at once: signatures on the event-loop threads share the session pool.
for i in 1 2 3 4 5 6 7 8; do anon -o /dev/null "$base/healthz" & done
wait_fail=0
for j in $(jobs -p); do [ "$j" = "$srv_pid" ] && continue; wait "$j" || wait_fail=1; done
[ "$wait_fail" = 0 ] || fail "concurrent handshakes failed"
ok "8 concurrent handshakes"

# ---- SIGHUP reloads the token key ----
n0=$(grep -c 'msg="TLS key on the token"' "$work/server.log")
kill -HUP "$srv_pid"
for _ in $(seq 1 50); do grep -q "reloaded TLS" "$work/server.log" && break; sleep 0.1; done
grep -q "reloaded TLS" "$work/server.log" || fail "SIGHUP: no reload"
[ "$(grep -c 'msg="TLS key on the token"' "$work/server.log")" -gt "$n0" ] || fail "SIGHUP did not reload the token key"
handshake tls1_3
expect_status 200 "" "healthz after SIGHUP" -- anon "$base/healthz"
kill -0 "$srv_pid" || fail "server died on SIGHUP"
ok "SIGHUP reloads the token key; handshakes still work"

# ---- renewal: a new certificate for the same token key, taken up at SIGHUP ----
rc=0
gs tls init --dns "$name" --out "$certs/none.pem" --renew --label nosuch >"$work/out" 2>&1 || rc=$?
[ "$rc" = 3 ] && grep -q "no key labelled nosuch" "$work/out" || fail "tls init --renew, no key: exit $rc: $(cat "$work/out")"
rc=0
gs tls init --dns "$name" --out "$certs/none.pem" --renew --key ec:p256 >"$work/out" 2>&1 || rc=$?
[ "$rc" = 2 ] || fail "tls init --renew --key: exit $rc, wanted 2: $(cat "$work/out")"
[ ! -e "$certs/none.pem" ] || fail "a refused renewal wrote a certificate"
cp "$certs/tls.pem" "$work/tls-before.pem"
gs tls init --dns "$name" --out "$certs/tls.pem" --renew --days 30 >"$work/out" || fail "tls init --renew: $(cat "$work/out")"
cmp -s <(openssl x509 -in "$work/tls-before.pem" -noout -pubkey) <(openssl x509 -in "$certs/tls.pem" -noout -pubkey) ||
  fail "the renewed certificate is for another key"
cmp -s "$work/tls-before.pem" "$certs/tls.pem" && fail "tls init --renew wrote the same certificate"
end=$(date -d "$(openssl x509 -in "$certs/tls.pem" -noout -enddate | cut -d= -f2)" +%s)
[ $((end - $(date +%s))) -gt $((29 * 86400)) ] && [ $((end - $(date +%s))) -le $((30 * 86400)) ] ||
  fail "the renewed certificate does not end in 30 days"
want_fp=$(openssl x509 -in "$certs/tls.pem" -noout -fingerprint -sha256)
n0=$(grep -c "reloaded TLS" "$work/server.log")
kill -HUP "$srv_pid"
for _ in $(seq 1 50); do [ "$(grep -c "reloaded TLS" "$work/server.log")" -gt "$n0" ] && break; sleep 0.1; done
handshake tls1_3
ok "tls init --renew: a new certificate for the same token key, served after SIGHUP"

# ---- a reload the key holder answers 503: tried again, not dropped ----
# The [tls] key not found on the token at the SIGHUP (p11fault hides it,
# as a network HSM's member that has not synchronised yet, or a token
# away for a moment would): the key holder answers the network
# process's reload 503 with Retry-After. The reload was dropped until the
# next SIGHUP; now it is tried again after the Retry-After, the previous
# certificate served meanwhile.
old_serial=$(served_serial)
[ -n "$old_serial" ] || fail "no certificate served before the reload"
gs tls init --dns "$name" --out "$certs/tls.pem" --renew --days 20 >"$work/out" || fail "tls init --renew: $(cat "$work/out")"
want_fp=$(openssl x509 -in "$certs/tls.pem" -noout -fingerprint -sha256)
mark=$(wc -c < "$work/server.log")
control "hide tls"
kill -HUP "$srv_pid"
wait_until 30 "the key holder did not refuse the reload with the TLS key hidden" \
  logged_after "$mark" 'msg="TLS key reload failed"'
[ "$(served_serial)" = "$old_serial" ] || fail "a certificate other than the old one served while the reload was put off"
control ""
wait_until 30 "the renewed certificate is not served once the TLS key is found again (the reload was dropped)" \
  served_other_than "$old_serial"
handshake tls1_3
logged_after "$mark" 'msg="reloaded TLS certificate' || fail "no log line for the reload done at last"
logged_after "$mark" 'msg="reload put off; keeping the previous TLS configuration' || fail "no log line for the reload put off"
[ "$(tail -c +"$((mark + 1))" "$work/server.log" | grep -c 'msg="reload put off')" = 1 ] ||
  fail "the put-off reload is logged more than once"
ok "a reload answered 503 (the TLS key not found for a moment): tried again, the renewed certificate served"
# A key the key holder refuses (it became extractable: p11fault reports
# CKA_EXTRACTABLE true) is no reason to try again: refused, the previous
# configuration kept, said once.
mark=$(wc -c < "$work/server.log")
control "bool CKA_EXTRACTABLE 1"
kill -HUP "$srv_pid"
wait_until 30 "the network process did not refuse the reload of an extractable TLS key" \
  logged_after "$mark" 'msg="reload failed; keeping the previous TLS configuration" reason=".*not sensitive'
logged_after "$mark" 'msg="reload put off' && fail "a refused TLS key is tried again"
control ""
handshake tls1_3
ok "a reload with a TLS key the key holder refuses: not tried again, the previous configuration kept"
kill -TERM "$srv_pid"
wait "$srv_pid" || true
srv_pid=

# ---- refusals at start ----
# refuse KEYURI GREP DESC: serve exits non-zero before listening, saying GREP.
refuse() {
  local uri=$1 want=$2 desc=$3 rc
  sed -i -e "s|^key = .*|key = $uri|" "$conf"
  set +e
  timeout 60 "$BIN/groupsrv" -c "$conf" serve >"$work/refuse.log" 2>&1
  rc=$?
  set -e
  [ "$rc" != 0 ] && [ "$rc" != 124 ] || fail "$desc: serve exit $rc: $(cat "$work/refuse.log")"
  grep -q -- "$want" "$work/refuse.log" || fail "$desc: message lacks '$want': $(cat "$work/refuse.log")"
  ok "$desc (exit $rc)"
}
p11 --keypairgen --key-type rsa:2048 --label tlsrsa --usage-sign --sensitive >/dev/null 2>&1 ||
  fail "pkcs11-tool: RSA key generation"
refuse "pkcs11:token=groupsrv;object=tlsrsa;type=private" "RSA-PSS.*raw RSA.*EC key" \
  "an RSA key on the token is refused (RSA-PSS needs raw RSA; use an EC key)"
grep -q "P-256 or P-384" "$work/refuse.log" || fail "RSA refusal does not say what to use"
p11 --keypairgen --key-type EC:prime256v1 --label tlsx --usage-sign --extractable >/dev/null 2>&1 ||
  fail "pkcs11-tool: extractable EC key generation"
refuse "pkcs11:token=groupsrv;object=tlsx;type=private" "not sensitive and non-extractable" \
  "an extractable EC key is refused"
refuse "pkcs11:token=groupsrv;object=nosuchkey;type=private" "key not found" "a missing key is refused"
gs tls init --dns other.test --key ec:p384 --label tls384 --out "$certs/tls384.pem" >/dev/null ||
  fail "tls init P-384"
refuse "pkcs11:token=groupsrv;object=tls384;type=private" "does not match" \
  "a token key that is not the certificate's is refused"

# ---- P-384 ----
sed -i -e "s|^cert = .*|cert = $certs/tls384.pem|" -e "s|^key = .*|key = pkcs11:token=groupsrv;object=tls384;type=private|" "$conf"
name=other.test
base=https://$name:$port
start_server
want_fp=$(openssl x509 -in "$certs/tls384.pem" -noout -fingerprint -sha256)
handshake tls1_3
handshake tls1_2
ok "P-384 token key: TLS 1.3 and 1.2"
echo "server-tlstoken: all passed"
