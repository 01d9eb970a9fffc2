#!/usr/bin/env bash
# groupmail-token.sh BIN SRC: a member whose EC P-256 key exists only on
# their OWN throw-away SoftHSM token (a second SOFTHSM2_CONF, set only in
# groupmail's environment: the server process keeps the group's token).
# groupmail csr signs the member's CSR on that token, the file test CA
# (one of the server's client CAs) issues the certificate, and groupmail
# decrypts with --via tls and --via membership-cert authenticating TLS with
# the token key. recipient-key, group-secret and keys sync need an RSA
# certificate: a clear one-line error (exit 2). An RSA key on the member's
# token cannot authenticate TLS: a clear one-line error (exit 1).
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/server-lib.sh"

# ---- the member's own token and key ----
mtok=$work/tinatoken
"$SRC/scripts/provision-softhsm" "$mtok" tina >/dev/null
export TINA_PIN
TINA_PIN=$(cat "$mtok/user-pin")
mp11() { SOFTHSM2_CONF=$mtok/softhsm2.conf pkcs11-tool --module "$module" --token-label tina \
  --login --pin env:TINA_PIN "$@"; }
mp11 --keypairgen --key-type EC:prime256v1 --label tina --id 01 --usage-sign --sensitive >/dev/null 2>&1 ||
  fail "pkcs11-tool: EC key generation on the member token"
mp11 --keypairgen --key-type rsa:2048 --label tinarsa --id 02 --usage-sign --sensitive >/dev/null 2>&1 ||
  fail "pkcs11-tool: RSA key generation on the member token"
key="pkcs11:token=tina;object=tina;type=private"

gm_home_init "[hsm]" "module = $module" "pin_source = $mtok/user-pin"
# groupmail sees only the member's token.
gm() { SOFTHSM2_CONF=$mtok/softhsm2.conf "$BIN/groupmail" "$@"; }
tina() { gm "$@" --cert "$certs/tina.pem" --key "$key"; }
expect_rc() { # expect_rc WANT DESC -- command...
  local want=$1 desc=$2; shift 3
  local got=0
  "$@" >"$work/gm.out" 2>"$work/gm.err" || got=$?
  [ "$got" = "$want" ] || fail "$desc: exit $got, wanted $want: $(head -c 400 "$work/gm.err")"
  if [ "$want" != 0 ]; then
    [ "$(wc -l < "$work/gm.err")" -eq 1 ] || fail "$desc: error is not one line: $(cat "$work/gm.err")"
  fi
  ok "$desc (exit $want)"
}
expect_msg() { grep -Eq -- "$1" "$work/gm.err" || fail "message lacks '$1': $(cat "$work/gm.err")"; }

# ---- a CSR signed on the token, a certificate from a client CA ----
expect_rc 0 "csr signed by the key on the member's token" -- gm csr --key "$key" --from tina@example.org \
  --out "$certs/tina.csr"
openssl req -in "$certs/tina.csr" -verify -noout 2>/dev/null || fail "the CSR signature does not verify"
openssl req -in "$certs/tina.csr" -noout -text | grep -q "email:tina@example.org" || fail "CSR lacks the address"
openssl req -in "$certs/tina.csr" -noout -text | grep -q "prime256v1" || fail "CSR key is not P-256"
printf 'subjectAltName=email:tina@example.org\nextendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n' \
  > "$certs/tina.ext"
openssl x509 -req -in "$certs/tina.csr" -CA "$certs/tca.pem" -CAkey "$certs/tca.key" -CAcreateserial \
  -days 2 -extfile "$certs/tina.ext" -out "$certs/tina.pem" 2>/dev/null || fail "issuing tina's certificate"
gs member add eng tina@example.org --cert "$certs/tina.pem" >/dev/null
# The PIN from the key URI's ?pin-source=, its path with a space: as
# written (it always worked, and names no token or key: no refusal) and
# percent-encoded as RFC 7512 writes it (decoded, as p11-kit does).
mkdir -p "$work/my pins" && cp "$mtok/user-pin" "$work/my pins/pin"
printf '[hsm]\nmodule = %s\n' "$module" > "$work/nopin.conf"
for ps in "file:$work/my pins/pin" "file:${work// /%20}/my%20pins/pin"; do
  expect_rc 0 "csr with the PIN from ?pin-source=$ps" -- gm csr --config "$work/nopin.conf" \
    --key "$key?pin-source=$ps" --from tina@example.org --out "$work/ps.csr"
done
# ... read where and as p11-kit reads it (util_uri_pin_source, one reading
# with groupsrv's refusal): white space around the name, which p11-kit
# drops, was not read (no login, "key not found"); a name in upper case,
# which p11-kit refuses, was taken for no PIN source: now said so.
expect_rc 0 "csr with the PIN from '? pin-source = '" -- gm csr --config "$work/nopin.conf" \
  --key "$key? pin-source = file:${work// /%20}/my%20pins/pin" --from tina@example.org --out "$work/ps.csr"
expect_rc 1 "csr with a PIN-SOURCE= p11-kit refuses" -- gm csr --config "$work/nopin.conf" \
  --key "$key?PIN-SOURCE=file:$work/my pins/pin" --from tina@example.org --out "$work/ps.csr"
grep -q "pin-source (or pinfile) is one p11-kit refuses" "$work/gm.err" ||
  fail "csr with a PIN-SOURCE=: not said why: $(cat "$work/gm.err")"
expect_rc 2 "csr refuses a key file (openssl req does that)" -- gm csr --key "$certs/alice@example.org.key" \
  --from alice@example.org

start_server

printf 'Subject: token\n\nread with a key that never leaves the smartcard\n' > "$work/m.txt"
openssl cms -encrypt -binary -aes-256-gcm -recip "$certs/group.pem" -keyopt rsa_padding_mode:oaep \
  -in "$work/m.txt" -out "$work/m.smime" 2>/dev/null

# ---- tls (method F): mutual TLS signed on the member's token ----
expect_rc 0 "fetch-cert" -- gm fetch-cert
expect_rc 0 "decrypt --via tls, TLS client key on the member's token" -- \
  tina decrypt --via tls --in "$work/m.smime" --out "$work/out.txt"
cmp -s "$work/out.txt" "$work/m.txt" || fail "--via tls: plaintext differs"
expect_rc 0 "unwrap --via tls (content key over mTLS with the token key)" -- tina unwrap --via tls --in "$work/m.smime"
grep -Eq '^[0-9a-f]{64}$' "$work/gm.out" || fail "unwrap output: $(cat "$work/gm.out")"
grep '"action":"unwrap"' "$work/audit.jsonl" | grep '"identity":"tina@example.org"' | has_line '"method":"tls"' ||
  fail "no audited tls unwrap by tina"
ok "the server saw tina's token-signed client certificate"

# ---- membership-cert (method G): the certificate server with the token key ----
expect_rc 0 "decrypt --via membership-cert (certsrv authenticated by the token key)" -- \
  tina decrypt --via membership-cert --in "$work/m.smime" --out "$work/out2.txt"
cmp -s "$work/out2.txt" "$work/m.txt" || fail "--via membership-cert: plaintext differs"
grep '"action":"certify"' "$work/audit.jsonl" | has_line '"identity":"tina@example.org"' || fail "no certify by tina"

# ---- what an EC member key cannot do: clear errors ----
for via in recipient-key group-secret; do
  expect_rc 2 "decrypt --via $via with an EC certificate is refused" -- tina decrypt --via "$via" --in "$work/m.smime"
  expect_msg "needs an RSA member certificate.*EC key.*--via tls or --via membership-cert"
done
expect_rc 2 "keys sync with an EC certificate is refused" -- tina keys sync
expect_msg "needs an RSA member certificate"

# ---- the key must match, and an RSA token key cannot do TLS ----
expect_rc 1 "a certificate that is not the token key's" -- gm decrypt --via tls --in "$work/m.smime" \
  --cert "$certs/alice@example.org.pem" --key "$key"
expect_msg "with the key on the token"
expect_rc 1 "an RSA key on the member's token cannot authenticate TLS" -- gm decrypt --via tls --in "$work/m.smime" \
  --cert "$certs/tina.pem" --key "pkcs11:token=tina;object=tinarsa;type=private"
expect_msg "RSA.*key file.*EC"

# ---- the key never left the token: no key file for tina anywhere ----
found=$(find "$work" "$gm_home" -name '*tina*' \( -name '*.key' -o -name '*.p8' -o -name '*.der' \) -print)
[ -z "$found" ] || fail "key files for tina exist: $found"
for f in "$certs"/tina*; do
  ! grep -q "PRIVATE KEY" "$f" || fail "$f holds a private key"
done
mp11 --list-objects --type privkey > "$work/objs" 2>&1
grep -A12 "label: *tina$" "$work/objs" | grep -qi "sensitive" || fail "tina's key is not sensitive: $(cat "$work/objs")"
ok "no key file for tina: the private key exists only on her token"
