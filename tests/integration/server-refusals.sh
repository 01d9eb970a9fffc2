#!/usr/bin/env bash
# server-refusals.sh BIN SRC: the security rules of SECURITY.md, against a
# real `groupsrv serve` on a SoftHSM token: authentication and membership
# per request (also on kept-alive connections and resumed TLS sessions),
# uniform unwrap failures, input limits, malformed input, fail-closed audit,
# audit chain verification, failed-unwrap suspension, rate limiting,
# concurrency, reload and shutdown.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/server-lib.sh"
start_server
url=$base/v1/groups/eng/unwrap
printf '{"recipient_info":"%s"}' "$(b64 "$work/ri.der")" > "$work/req-tls.json"

# ---- authentication ----
expect_status 401 no_client_certificate "no client certificate" -- anon --data-binary @"$work/req-tls.json" "$url"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=alice@example.org" \
  -addext "subjectAltName=email:alice@example.org" -keyout "$work/self.key" -out "$work/self.pem" 2>/dev/null
expect_status 401 untrusted_certificate "self-signed client certificate" -- \
  curl -sS --cacert "$certs/tca.pem" --cert "$work/self.pem" --key "$work/self.key" --data-binary @"$work/req-tls.json" "$url"
# An expired certificate from a trusted CA (openssl ca can backdate).
mkdir -p "$work/ca/newcerts" && : > "$work/ca/index.txt" && echo 01 > "$work/ca/serial"
cat > "$work/ca/ca.cnf" <<CNF
[ca]
default_ca = t
[t]
dir = $work/ca
database = \$dir/index.txt
new_certs_dir = \$dir/newcerts
serial = \$dir/serial
default_md = sha256
policy = p
copy_extensions = copy
[p]
commonName = supplied
CNF
openssl req -new -newkey rsa:2048 -nodes -subj "/CN=alice@example.org" -addext "subjectAltName=email:alice@example.org" \
  -keyout "$work/old.key" -out "$work/old.csr" 2>/dev/null
openssl ca -batch -config "$work/ca/ca.cnf" -cert "$certs/tca.pem" -keyfile "$certs/tca.key" -in "$work/old.csr" \
  -out "$work/old.pem" -startdate 20200101000000Z -enddate 20200102000000Z 2>/dev/null
expect_status 401 certificate_expired "expired client certificate" -- \
  curl -sS --cacert "$certs/tca.pem" --cert "$work/old.pem" --key "$work/old.key" --data-binary @"$work/req-tls.json" "$url"
expect_status 403 not_a_member "removed member (carol)" -- c carol --data-binary @"$work/req-tls.json" "$url"
expect_status 200 "" "current member (alice)" -- c alice --data-binary @"$work/req-tls.json" "$url"

# ---- revocation on the very next request: kept-alive connection ----
revoke_during() { # revoke_during MODE WHO STEPS
  local mode=$1 who=$2 steps=$3 fifo=$work/uc.fifo out=$work/uc.out pid
  # Emptied here, not only by the client's own redirection: that one runs
  # in the child after the fifo opens, so the wait below could read the
  # previous client's WAITING from the file and go on before it is cut.
  rm -f "$fifo"; mkfifo "$fifo"; : > "$out"
  UC_CERT="$certs/$who@example.org.pem" UC_KEY="$certs/$who@example.org.key" UC_CACERT="$certs/tca.pem" \
    "$BIN/unwrapclient" steps "$mode" "$url" "$work/req-tls.json" "$steps" <"$fifo" >"$out" 2>&1 &
  pid=$!
  exec 7>"$fifo"
  for _ in $(seq 1 300); do grep -q '^WAITING' "$out" && break; sleep 0.1; done
  grep -q '^WAITING' "$out" || fail "$mode client did not get to the revocation: $(cat "$out")"
  "$BIN/groupsrv" -c "$conf" member remove eng "$who@example.org" >/dev/null
  echo go >&7
  exec 7>&-
  wait "$pid" || fail "$mode revocation: $(cat "$out")"
  grep -q '"code":"not_a_member"' "$out" || fail "$mode revocation answer: $(cat "$out")"
  ok "member removed mid-$mode is refused on the next request"
}
revoke_during keepalive bob 200,200,wait,403
revoke_during resume dave 200,200,wait,403

# ---- uniform unwrap failures ----
head -c 256 /dev/urandom > "$work/g1.bin"
head -c 100 /dev/urandom > "$work/g2.bin"
printf '{"encrypted_key":"%s","algorithm":"RSA-OAEP"}' "$(b64 "$work/g1.bin")" > "$work/bad1.json"
printf '{"encrypted_key":"%s","algorithm":"RSA-OAEP"}' "$(b64 "$work/g2.bin")" > "$work/bad2.json"
expect_status 400 unwrap_failed "garbage ciphertext" -- c erin --data-binary @"$work/bad1.json" "$url"
cp "$work/body" "$work/b1"
expect_status 400 unwrap_failed "short ciphertext" -- c erin --data-binary @"$work/bad2.json" "$url"
cmp -s "$work/body" "$work/b1" || fail "unwrap failures differ: $(cat "$work/b1") vs $(cat "$work/body")"
ok "every decryption failure is the same answer"
# PKCS#1 v1.5: accepted by default (implicit rejection), never with a
# guessed key length; refused by an --oaep-only group with the one reason
# that `exploder deliver` gives too (tests/integration/interop-clients.sh).
printf '{"encrypted_key":"%s","algorithm":"RSA-PKCS1-v1_5"}' "$(b64 "$work/g1.bin")" > "$work/v15.json"
expect_status 400 content_algorithm_required "PKCS#1 v1.5 without content_algorithm" -- \
  c erin --data-binary @"$work/v15.json" "$url"
printf '{"encrypted_key":"%s","algorithm":"RSA-PKCS1-v1_5","content_algorithm":"aes-128-cbc"}' \
  "$(b64 "$work/g1.bin")" > "$work/v15a.json"
expect_status 200 "" "PKCS#1 v1.5 garbage gets a substitute key" -- c erin --data-binary @"$work/v15a.json" "$url"
[ "$(json_get "$work/body" key | base64 -d | wc -c)" = 16 ] || fail "v1.5 substitute: not the aes-128 length"
printf '{"encrypted_key":"%s","algorithm":"RSA-PKCS1-v1_5","content_algorithm":"rc2-cbc"}' \
  "$(b64 "$work/g1.bin")" > "$work/v15b.json"
expect_status 400 unsupported_algorithm "unknown content_algorithm" -- c erin --data-binary @"$work/v15b.json" "$url"
printf '{"encrypted_key":"%s","algorithm":"RSA-PKCS1-v1_5","content_algorithm":"2.16.840.1.101.3.4.1.2","key_length":32}' \
  "$(b64 "$work/g1.bin")" > "$work/v15c.json"
expect_status 400 bad_request "key_length contradicting content_algorithm" -- c erin --data-binary @"$work/v15c.json" "$url"
# an "algorithm" that is given but no string is said to be so, not missing
for a in 1 null '["RSA-OAEP"]'; do
  printf '{"encrypted_key":"%s","algorithm":%s}' "$(b64 "$work/g1.bin")" "$a" > "$work/algtype.json"
  expect_status 400 bad_request "algorithm $a" -- c erin --data-binary @"$work/algtype.json" "$url"
  grep -q '"algorithm\\" must be a string' "$work/body" || fail "algorithm $a: $(cat "$work/body")"
done
gs group create strict --address strict@example.org --key rsa:2048 --methods tls --oaep-only >/dev/null
gs member add strict erin@example.org --cert "$certs/erin@example.org.pem" >/dev/null
expect_status 400 algorithm_not_allowed "PKCS#1 v1.5 refused by an --oaep-only group" -- \
  c erin --data-binary @"$work/v15a.json" "$base/v1/groups/strict/unwrap"
grep -q '"message":"PKCS#1 v1.5 key transport is not allowed for this group"' "$work/body" ||
  fail "v1.5 refusal message: $(cat "$work/body")"
anon "$base/v1/groups/strict" > "$work/strict.json"
[ "$(json_get "$work/strict.json" key_transports)" = "['RSA-OAEP']" ] ||
  fail "discovery of an --oaep-only group: $(cat "$work/strict.json")"
# a default group without the tls method takes v1.5 too (its key can decrypt
# for implicit rejection), and still never hands out a plain key
gs group create notls --address notls@example.org --key rsa:2048 --methods recipient-key >/dev/null
gs member add notls erin@example.org --cert "$certs/erin@example.org.pem" >/dev/null
gs group show notls --cert > "$certs/notls.pem"
openssl cms -encrypt -binary -aes128 -in "$work/msg.txt" -outform DER -out "$work/notls.der" -recip "$certs/notls.pem"
cms ri "$work/notls.der" "$work/notls.ri"
printf '{"recipient_info":"%s","content_algorithm":"aes-128-cbc","deliver":"recipient-key"}' "$(b64 "$work/notls.ri")" \
  > "$work/notls.json"
expect_status 200 "" "PKCS#1 v1.5 on a group without tls (recipient-key)" -- \
  c erin --data-binary @"$work/notls.json" "$base/v1/groups/notls/unwrap"
json_get "$work/body" recipient_info | base64 -d > "$work/notls-ktri.der"
cms swap "$work/notls.der" "$work/notls-ktri.der" "$work/notls-swapped.der"
openssl cms -decrypt -inform DER -in "$work/notls-swapped.der" -recip "$certs/erin@example.org.pem" \
  -inkey "$certs/erin@example.org.key" -out "$work/notls.txt" 2>/dev/null && cmp -s "$work/notls.txt" "$work/msg.txt" ||
  fail "the v1.5 key re-wrapped to erin does not decrypt the message"
sed 's/recipient-key/tls/' "$work/notls.json" > "$work/notls-tls.json"
expect_status 403 method_not_allowed "no plain key from a group without tls" -- \
  c erin --data-binary @"$work/notls-tls.json" "$base/v1/groups/notls/unwrap"
# An EC group: a KeyAgreeRecipientInfo from openssl is unwrapped with
# deliver=tls only (api.md). group create gives it tls alone and refuses
# more; discovery offers tls alone even for a group recorded with more
# before that was checked (as below, written into the database), whose
# other methods are refused as unsupported, not as a malformed
# RecipientInfo (the message is sound), also in a batch and for the
# exploder's rewrap to group-secret.
rc=0; gs group create ecg --address ecg@example.org --key ec:p256 --methods tls,recipient-key > "$work/ecg.out" 2>&1 || rc=$?
[ "$rc" != 0 ] && grep -q "an EC group key can only be unwrapped with deliver=tls: use --methods tls" "$work/ecg.out" ||
  fail "group create of an EC group with recipient-key: exit $rc: $(cat "$work/ecg.out")"
# SoftHSM's ECDH takes no X9.63 KDF, so group create refuses an EC group
# on it: made through p11fault's ecdh-kdf profile (the KDF, as NSS softokn
# has it) on the same token. The server, on SoftHSM itself, refuses these
# before any derive.
: "${GS_P11FAULT_MODULE:?}"
sed "s|^module = .*|module = $GS_P11FAULT_MODULE|" "$conf" > "$work/fault.conf"
GS_P11FAULT_PROFILE=ecdh-kdf "$BIN/groupsrv" -c "$work/fault.conf" group create ecg --address ecg@example.org \
  --key ec:p256 >/dev/null
gs group show ecg | grep -q '^methods: *tls$' || fail "an EC group's default methods: $(gs group show ecg | grep methods)"
sqlite3 "$work/groupsrv.db" "UPDATE groups SET methods = 7 WHERE name = 'ecg'"
gs member add ecg erin@example.org --cert "$certs/erin@example.org.pem" >/dev/null
gs member add ecg dle@example.org --cert "$certs/dle@example.org.pem" --role exploder >/dev/null
gs group show ecg --cert > "$certs/ecg.pem"
openssl cms -encrypt -binary -aes-256-gcm -in "$work/msg.txt" -outform DER -out "$work/ecg.der" -recip "$certs/ecg.pem"
cms ri "$work/ecg.der" "$work/ecg.ri"
for d in recipient-key group-secret; do
  printf '{"recipient_info":"%s","content_algorithm":"aes-256-gcm","deliver":"%s"}' "$(b64 "$work/ecg.ri")" "$d" \
    > "$work/ecg-$d.json"
  expect_status 400 unsupported "EC group, deliver=$d" -- c erin --data-binary @"$work/ecg-$d.json" "$base/v1/groups/ecg/unwrap"
done
printf '{"items":[%s]}' "$(cat "$work/ecg-recipient-key.json")" > "$work/ecg-batch.json"
expect_status 200 "" "EC group, deliver=recipient-key in a batch" -- \
  c erin --data-binary @"$work/ecg-batch.json" "$base/v1/groups/ecg/unwrap-batch"
grep -q '"code":"unsupported"' "$work/body" || fail "EC batch item: $(cat "$work/body")"
sed 's/"deliver":"group-secret"/"to":"group-secret"/' "$work/ecg-group-secret.json" > "$work/ecg-rewrap.json"
expect_status 400 unsupported "EC group, rewrap to group-secret" -- \
  c dle --data-binary @"$work/ecg-rewrap.json" "$base/v1/groups/ecg/rewrap"
# A well-formed RecipientInfo whose algorithm the server does not unwrap
# is one answer, 400 unsupported_algorithm naming what it takes, whatever
# part is unknown and on every path (api.md, "Errors"): a KARI with the
# SHA-384 X9.63 KDF (it was `unsupported`) or a 3DES key wrap (`openssl
# cms -des3` to an EC certificate; it was bad_recipient_info, "malformed"),
# and RSA-OAEP with SHA-384 to the RSA group
openssl cms -encrypt -binary -aes128 -recip "$certs/ecg.pem" -keyopt ecdh_kdf_md:sha384 -in "$work/msg.txt" \
  -outform DER -out "$work/kdf384.der"
openssl cms -encrypt -binary -des3 -in "$work/msg.txt" -outform DER -out "$work/des3wrap.der" -recip "$certs/ecg.pem"
openssl cms -encrypt -binary -aes128 -recip "$certs/group.pem" -keyopt rsa_padding_mode:oaep \
  -keyopt rsa_oaep_md:sha384 -in "$work/msg.txt" -outform DER -out "$work/oaep384.der"
for m in "ecg kdf384" "ecg des3wrap" "eng oaep384"; do
  set -- $m
  cms ri "$work/$2.der" "$work/$2.ri"
  printf '{"recipient_info":"%s","content_algorithm":"aes-128-cbc"}' "$(b64 "$work/$2.ri")" > "$work/$2.json"
  expect_status 400 unsupported_algorithm "$2 to $1" -- c erin --data-binary @"$work/$2.json" "$base/v1/groups/$1/unwrap"
  grep -q "key algorithm is not one this server unwraps (it takes RSA-OAEP with SHA-1 or SHA-256" "$work/body" ||
    fail "$2 refusal: $(cat "$work/body")"
  [ "$1" = ecg ] || continue
  # groupmail: exit 5, a message no one will unwrap, as a malformed one was
  printf 'Content-Type: application/pkcs7-mime; smime-type=enveloped-data\nContent-Transfer-Encoding: base64\n\n' \
    > "$work/$2.eml"
  base64 "$work/$2.der" >> "$work/$2.eml"
  rc=0
  "$BIN/groupmail" decrypt --server "$base" --group ecg --cacert "$certs/tca.pem" --group-cert "$certs/ecg.pem" \
    --cert "$certs/erin@example.org.pem" --key "$certs/erin@example.org.key" --via tls --in "$work/$2.eml" \
    --out "$work/$2.out" 2>"$work/$2.err" || rc=$?
  [ "$rc" = 5 ] && grep -q 'unsupported_algorithm' "$work/$2.err" || fail "groupmail decrypt $2: exit $rc: $(cat "$work/$2.err")"
  sed 's/}$/,"to":"members"}/' "$work/$2.json" > "$work/$2-rewrap.json"
  expect_status 400 unsupported_algorithm "$2 to $1, rewrap" -- c dle --data-binary @"$work/$2-rewrap.json" \
    "$base/v1/groups/$1/rewrap"
done
# a RecipientInfo that is not well-formed stays bad_recipient_info: RSA-OAEP
# parameters that do not decode (an OCTET STRING where hashFunc [0] is)
/usr/bin/python3 - "$work/oaep384.ri" "$work/oaepbad.ri" <<'PY'
import sys
d = bytearray(open(sys.argv[1], "rb").read())
oid = bytes.fromhex("06092a864886f70d010107")
i = d.index(oid) + len(oid)
assert d[i] == 0x30 and d[i + 2] == 0xA0
d[i + 2] = 0x04
open(sys.argv[2], "wb").write(d)
PY
printf '{"recipient_info":"%s","content_algorithm":"aes-128-cbc"}' "$(b64 "$work/oaepbad.ri")" > "$work/oaepbad.json"
expect_status 400 bad_recipient_info "garbled RSA-OAEP parameters" -- c erin --data-binary @"$work/oaepbad.json" \
  "$base/v1/groups/eng/unwrap"
anon "$base/v1/groups/ecg" > "$work/ecg.json"
[ "$(json_get "$work/ecg.json" methods)" = "['tls']" ] ||
  fail "discovery of an EC group recorded with recipient-key and group-secret: $(cat "$work/ecg.json")"
anon "$base/v1/groups/eng" > "$work/eng.json"
[ "$(json_get "$work/eng.json" key_transports)" = "['RSA-OAEP', 'RSA-PKCS1-v1_5']" ] ||
  fail "discovery of a default group (SoftHSM: no OAEP-256): $(cat "$work/eng.json")"
printf '{"encrypted_key":"%s","algorithm":"RSA"}' "$(b64 "$work/g1.bin")" > "$work/raw.json"
expect_status 400 unsupported_algorithm "no raw RSA" -- c erin --data-binary @"$work/raw.json" "$url"
# the refusal names every algorithm the endpoint takes (api.md), v1.5 too
grep -q 'RSA-PKCS1-v1_5' "$work/body" || fail "the algorithm refusal does not name RSA-PKCS1-v1_5: $(cat "$work/body")"

# ---- input errors ----
expect_status 400 bad_json "bad JSON" -- c erin --data-binary '{"recipient_info":' "$url"
expect_status 400 bad_request "wrong type" -- c erin --data-binary '{"recipient_info":42}' "$url"
expect_status 400 bad_base64 "bad base64" -- c erin --data-binary '{"recipient_info":"@@@@"}' "$url"
# the same three refusals for "encrypted_key", and each field's own bound
expect_status 400 bad_request "encrypted_key of the wrong type" -- c erin --data-binary '{"encrypted_key":42,"algorithm":"RSA-OAEP"}' "$url"
grep -q '"encrypted_key\\" must be a base64 string' "$work/body" || fail "encrypted_key type: $(cat "$work/body")"
expect_status 400 bad_base64 "encrypted_key not base64" -- c erin --data-binary '{"encrypted_key":"@@@@","algorithm":"RSA-OAEP"}' "$url"
grep -q '"encrypted_key\\" is not valid standard base64' "$work/body" || fail "encrypted_key base64: $(cat "$work/body")"
/usr/bin/python3 -c 'import base64; print("{\"encrypted_key\":\"%s\",\"algorithm\":\"RSA-OAEP\"}" % base64.b64encode(b"k" * 1027).decode())' > "$work/big-ek.json"
expect_status 413 too_large "encrypted_key over 1024 bytes" -- c erin --data-binary @"$work/big-ek.json" "$url"
grep -q '"encrypted_key\\" exceeds 1024 bytes' "$work/body" || fail "encrypted_key bound: $(cat "$work/body")"
/usr/bin/python3 -c 'import base64; print("{\"recipient_info\":\"%s\"}" % base64.b64encode(b"r" * 16387).decode())' > "$work/big-ri.json"
expect_status 413 too_large "recipient_info over 16384 bytes" -- c erin --data-binary @"$work/big-ri.json" "$url"
grep -q '"recipient_info\\" exceeds 16384 bytes' "$work/body" || fail "recipient_info bound: $(cat "$work/body")"
# one byte over each bound, whose base64 is no longer than the bound's own:
# 413 too, not 503 token_unavailable (encrypted_key) or a parse error
for f in "encrypted_key 1025" "recipient_info 16385"; do
  /usr/bin/python3 -c 'import base64,sys; print("{\"%s\":\"%s\",\"algorithm\":\"RSA-OAEP\"}" % (sys.argv[1], base64.b64encode(b"x" * int(sys.argv[2])).decode()))' \
    $f > "$work/over.json"
  expect_status 413 too_large "${f% *} of ${f#* } bytes" -- c erin --data-binary @"$work/over.json" "$url"
done
expect_status 400 bad_recipient_info "not a RecipientInfo" -- c erin --data-binary '{"recipient_info":"MAA="}' "$url"
/usr/bin/python3 -c 'print("{\"recipient_info\":\"" + "A"*70000 + "\"}")' > "$work/big.json"
expect_status 413 too_large "body over max_body" -- c erin --data-binary @"$work/big.json" "$url"
expect_status 404 not_found "unknown path" -- c erin "$base/v2/whatever"

# ---- 1,000 malformed requests, then a good one ----
/usr/bin/python3 "$SRC/tests/integration/server-malformed.py" 127.0.0.1 "$port" "$certs/tca.pem" \
  "$certs/fuzz@example.org.pem" "$certs/fuzz@example.org.key" eng 1000 || fail "malformed requests"
kill -0 "$srv_pid" || fail "server died under malformed input"
expect_status 200 "" "good request after 1,000 malformed ones" -- c alice --data-binary @"$work/req-tls.json" "$url"

# ---- a PEM block marked encrypted in a member PUT ----
# (Proc-Type: 4,ENCRYPTED.) OpenSSL's default asks for its pass phrase on
# the terminal, a call the network process's seccomp filter forbids: any
# client with a trusted certificate ended the process, and every
# connection in flight with it. Refused now, by a member and an admin.
net0=$(srv_net_pid)
printf -- '-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\nAAAAAAAAAAAAAAAAAAAAAA==\n-----END CERTIFICATE-----\n' |
  /usr/bin/python3 -c 'import json,sys; print(json.dumps({"role":"member","certificate":sys.stdin.read()}))' > "$work/enc-pem.json"
for who in erin admin; do
  got=$(status c "$who" -X PUT -H 'Content-Type: application/json' --data-binary @"$work/enc-pem.json" \
    "$base/v1/groups/eng/members/zed@example.org")
  case $got in 4??) ;; *) fail "member PUT with an encrypted PEM as $who: HTTP $got" ;; esac
done
[ "$(srv_net_pid)" = "$net0" ] || fail "a member PUT with an encrypted PEM ended the network process: $(grep -m1 'forbidden' "$work/server.log")"
ok "a certificate PEM marked encrypted is refused ($got), the network process serving on"
# A DER certificate may hold such a block in its bytes (here in an
# extension's value): the network process sends the key holder DER, which
# read it as PEM first, and OpenSSL's default asked for the pass phrase on
# the key holder's terminal or standard input ("Enter PEM pass phrase:").
hex=$(printf '\n-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\nAAAAAAAAAAAAAAAAAAAAAA==\n-----END CERTIFICATE-----\n' |
  od -An -tx1 | tr -d ' \n')
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=zed@example.org" \
  -addext "subjectAltName=email:zed@example.org" -addext "1.3.6.1.4.1.99999.1=DER:$hex" \
  -keyout "$work/zed-der.key" -out "$work/zed-der.pem" 2>/dev/null
/usr/bin/python3 -c 'import json,sys; print(json.dumps({"role":"member","certificate":open(sys.argv[1]).read()}))' \
  "$work/zed-der.pem" > "$work/der-pem.json"
mark=$(wc -c < "$work/server.log")
expect_status 201 "" "a certificate whose DER holds a PEM block marked encrypted" -- \
  c admin -X PUT -H 'Content-Type: application/json' --data-binary @"$work/der-pem.json" \
  "$base/v1/groups/eng/members/zed@example.org"
tail -c +"$((mark + 1))" "$work/server.log" | has_line 'pass phrase' &&
  fail "the key holder asked for a pass phrase: $(tail -c +"$((mark + 1))" "$work/server.log" | grep -m1 'pass phrase')"
expect_status 200 "" "that member removed again" -- c admin -X DELETE "$base/v1/groups/eng/members/zed@example.org"
[ "$(srv_net_pid)" = "$net0" ] || fail "a member PUT of that certificate ended the network process"
ok "a PEM block marked encrypted inside a DER certificate asks for no pass phrase"

# ---- concurrent clients ----
UC_CERT="$certs/alice@example.org.pem" UC_KEY="$certs/alice@example.org.key" UC_CACERT="$certs/tca.pem" \
  "$BIN/unwrapclient" load "$url" "$work/req-tls.json" 8 25 200 || fail "concurrent clients"
ok "8 concurrent clients x 25 unwraps"

# ---- clients that leave before their answer ----
# The answer waits for its audit record's fdatasync; a client that closes
# its connection meanwhile must cost nothing but that answer (the server
# drops the held request; under ASan any use after free shows here).
/usr/bin/python3 - "$port" "$certs/tca.pem" "$certs/alice@example.org.pem" "$certs/alice@example.org.key" \
  "$work/req-tls.json" <<'PY' || fail "abandoning clients"
import socket, ssl, sys
port, ca, cert, key, body = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], open(sys.argv[5], 'rb').read()
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
req = (b"POST /v1/groups/eng/unwrap HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
       b"Content-Length: %d\r\n\r\n" % len(body)) + body
for i in range(100):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port))), server_hostname="127.0.0.1")
    s.sendall(req)
    if i % 2:
        s.sendall(req)  # a pipelined second request, also abandoned
    s.close()
PY
expect_status 200 "" "service after 100 clients left before their answer" -- c alice --data-binary @"$work/req-tls.json" "$url"

# ---- failed-unwrap cap: suspension ----
for i in $(seq 1 19); do
  got=$(status c mallory --data-binary @"$work/bad1.json" "$url")
  [ "$got" = 400 ] || fail "failed unwrap $i: $got"
done
expect_status 400 unwrap_failed "20th failed unwrap" -- c mallory --data-binary @"$work/bad1.json" "$url"
expect_status 429 suspended "suspended after too many failed unwraps" -- c mallory --data-binary @"$work/req-tls.json" "$url"
grep '"action":"suspend"' "$work/audit.jsonl" | has_line mallory || fail "suspension not audited"
grep -q 'ALERT' "$work/server.log" || fail "suspension alert not logged"
# A renewal is no way out of a suspension: it is the address's, and
# `member set --issue-cert` (as a member PUT) leaves it as it is.
mkdir "$work/renew"
gs member set eng mallory@example.org --issue-cert --out "$work/renew" > /dev/null || fail "member set of mallory"
expect_status 429 suspended "suspended still with a renewed certificate" -- curl -sS --cacert "$certs/tca.pem" \
  --cert "$work/renew/mallory@example.org.pem" --key "$work/renew/mallory@example.org.key" \
  --data-binary @"$work/req-tls.json" "$url"

# ---- audit: fail closed, recover ----
mv "$work/audit.jsonl" "$work/audit.moved"
expect_status 503 audit_unavailable "audit log gone: unwrap refused" -- c alice --data-binary @"$work/req-tls.json" "$url"
grep -qi '^retry-after' <(c alice -D - -o /dev/null --data-binary @"$work/req-tls.json" "$url") || fail "503 without Retry-After"
expect_healthz 503 "" "healthz reports the audit log"
grep -q '"audit":"audit log cannot be written"' "$work/body" || fail "healthz body: $(cat "$work/body")"
mv "$work/audit.moved" "$work/audit.jsonl"
expect_healthz 200 "" "audit log back: healthz"
expect_status 200 "" "audit log back: unwrap" -- c alice --data-binary @"$work/req-tls.json" "$url"

# ---- audit chain ----
"$BIN/groupsrv" -c "$conf" audit verify >/dev/null || fail "audit verify"
n=$(wc -l < "$work/audit.jsonl")
sed '5d' "$work/audit.jsonl" > "$work/audit-del.jsonl"
set +e; "$BIN/groupsrv" -c "$conf" audit verify --file "$work/audit-del.jsonl" 2>/dev/null; rc=$?; set -e
[ "$rc" = 3 ] || fail "deleted line not detected (rc $rc)"
sed '7s/"outcome":"[a-z_]*"/"outcome":"ok"/; 7s/"identity":"[^"]*"/"identity":"nobody@example.org"/' "$work/audit.jsonl" > "$work/audit-edit.jsonl"
cmp -s "$work/audit.jsonl" "$work/audit-edit.jsonl" && fail "edit did not change line 7"
set +e; "$BIN/groupsrv" -c "$conf" audit verify --file "$work/audit-edit.jsonl" 2>/dev/null; rc=$?; set -e
[ "$rc" = 3 ] || fail "edited line not detected (rc $rc)"
ok "audit verify detects a deleted and an edited line ($n lines)"

# ---- SIGHUP: certificate reload ----
old_serial=$(openssl s_client -connect "127.0.0.1:$port" -CAfile "$certs/tca.pem" </dev/null 2>/dev/null | openssl x509 -noout -serial)
mkserver server2
cp "$certs/server2.pem" "$certs/server.pem"
cp "$certs/server2.key" "$certs/server.key"
kill -HUP "$srv_pid"
sleep 0.5
new_serial=$(openssl s_client -connect "127.0.0.1:$port" -CAfile "$certs/tca.pem" </dev/null 2>/dev/null | openssl x509 -noout -serial)
[ -n "$new_serial" ] && [ "$new_serial" != "$old_serial" ] || fail "SIGHUP did not reload the certificate ($old_serial / $new_serial)"
expect_status 200 "" "service after reload" -- c alice --data-binary @"$work/req-tls.json" "$url"

# ---- SIGHUP: a [tls] key encrypted with a pass phrase ----
# OpenSSL's default asked for the pass phrase on the terminal, a call the
# sandbox forbids: the reload ended the network process, and every new one
# asked again ("Enter PEM pass phrase:" in the log) and failed to start.
# Now the reload fails and the previous key and certificate stay in use.
cp "$certs/server.key" "$work/plain.key"
net0=$(srv_net_pid)
for enc in "pkey -aes256" "pkcs8 -topk8 -v2 aes256"; do
  # shellcheck disable=SC2086 # the openssl command and its options
  openssl $enc -in "$work/plain.key" -passout pass:secret -out "$certs/server.key"
  mark=$(wc -c < "$work/server.log")
  kill -HUP "$srv_pid"
  reload=
  for _ in $(seq 1 100); do
    reload=$(tail -c +"$((mark + 1))" "$work/server.log" | grep -E -m1 'msg="reload(ed TLS| failed)|forbidden' || true)
    [ -n "$reload" ] && break
    sleep 0.05
  done
  case $reload in
  *'msg="reload failed'*encrypted*) ;;
  *) fail "SIGHUP with a key encrypted by openssl $enc: ${reload:-no reload line}" ;;
  esac
done
[ "$(srv_net_pid)" = "$net0" ] || fail "an encrypted [tls] key at SIGHUP ended the network process"
grep -q 'pass phrase:' "$work/server.log" && fail "a pass phrase was asked: $(grep -m1 'pass phrase:' "$work/server.log")"
expect_status 200 "" "an encrypted [tls] key at SIGHUP: the previous one serves on" -- \
  c alice --data-binary @"$work/req-tls.json" "$url"
cp "$work/plain.key" "$certs/server.key"

# ---- SIGHUP: a new CRL applies on the next request of a kept-alive connection ----
# frank's certificate comes from the file test CA (openssl ca, so it can be
# revoked); the connection verified it before, and must not keep trusting
# it after the reload.
openssl req -new -newkey rsa:2048 -nodes -subj "/CN=frank@example.org" \
  -addext "subjectAltName=email:frank@example.org" -keyout "$certs/frank@example.org.key" \
  -out "$work/frank.csr" 2>/dev/null
openssl ca -batch -config "$work/ca/ca.cnf" -cert "$certs/tca.pem" -keyfile "$certs/tca.key" -in "$work/frank.csr" \
  -out "$certs/frank@example.org.pem" -days 1 2>/dev/null
"$BIN/groupsrv" -c "$conf" member add eng frank@example.org --cert "$certs/frank@example.org.pem" >/dev/null
cp "$certs/clients.pem" "$work/clients-nocrl.pem"
rm -f "$work/uc.fifo"; mkfifo "$work/uc.fifo"; : > "$work/uc.out"
UC_CERT="$certs/frank@example.org.pem" UC_KEY="$certs/frank@example.org.key" UC_CACERT="$certs/tca.pem" \
  "$BIN/unwrapclient" steps keepalive "$url" "$work/req-tls.json" 200,200,wait,401 <"$work/uc.fifo" >"$work/uc.out" 2>&1 &
uc_pid=$!
exec 7>"$work/uc.fifo"
for _ in $(seq 1 300); do grep -q '^WAITING' "$work/uc.out" && break; sleep 0.1; done
grep -q '^WAITING' "$work/uc.out" || fail "client did not get to the revocation: $(cat "$work/uc.out")"
openssl ca -config "$work/ca/ca.cnf" -cert "$certs/tca.pem" -keyfile "$certs/tca.key" \
  -revoke "$certs/frank@example.org.pem" 2>/dev/null
openssl ca -config "$work/ca/ca.cnf" -cert "$certs/tca.pem" -keyfile "$certs/tca.key" -gencrl -crldays 1 \
  -out "$work/tca.crl" 2>/dev/null
cat "$work/clients-nocrl.pem" "$work/tca.crl" > "$certs/clients.pem"
reloads=$(grep -c "reloaded TLS" "$work/server.log" || true)
kill -HUP "$srv_pid"
for _ in $(seq 1 50); do [ "$(grep -c "reloaded TLS" "$work/server.log" || true)" -gt "$reloads" ] && break; sleep 0.1; done
echo go >&7
exec 7>&-
wait "$uc_pid" || fail "CRL on a kept-alive connection: $(cat "$work/uc.out")"
grep -q '"code":"untrusted_certificate"' "$work/uc.out" || fail "CRL answer: $(cat "$work/uc.out")"
ok "a certificate revoked by a reloaded CRL is refused on the kept-alive connection's next request"
# With a CRL in the file every CA in it needs one (as nginx's ssl_crl):
# the local CA has none here, so back to the file without it.
cp "$work/clients-nocrl.pem" "$certs/clients.pem"
reloads=$(grep -c "reloaded TLS" "$work/server.log" || true)
kill -HUP "$srv_pid"
for _ in $(seq 1 50); do [ "$(grep -c "reloaded TLS" "$work/server.log" || true)" -gt "$reloads" ] && break; sleep 0.1; done
expect_status 200 "" "service after the CRL is gone" -- c alice --data-binary @"$work/req-tls.json" "$url"

# ---- rate limit: restart with a tight bucket ----
kill -TERM "$srv_pid"; wait "$srv_pid" || fail "SIGTERM exit status"; srv_pid=
sed -i 's/^rate_limit = .*/rate_limit = 2\nrate_burst = 3/' "$conf"
start_server
codes=$(for i in $(seq 1 8); do printf '%s\n' "$url"; done | sed 's/^/url = /' |
  c rl -K - -s -o /dev/null -w '%{http_code}\n' --data-binary '{}' | sort | uniq -c)
echo "$codes" | grep -q ' 429$' || fail "no 429 from the rate limit: $codes"
echo "$codes" | grep -q ' 400$' || fail "rate limit refused everything: $codes"
ok "rate limit answers 429"
kill -TERM "$srv_pid"; wait "$srv_pid" || fail "SIGTERM exit status"; srv_pid=
ok "SIGTERM: clean exit"
