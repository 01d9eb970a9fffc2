#!/usr/bin/env bash
# server-e2e.sh BIN SRC: every endpoint and delivery method of `groupsrv serve`
# against a SoftHSM token, with curl; content keys checked against a message
# made by `openssl cms`.
set -euo pipefail
BIN=$1 SRC=$2
SRV_ACCESS_LOG=yes # one line per request, checked at the end
. "$SRC/tests/integration/server-lib.sh"
# a PIN file in a directory with a space: SIGHUP's "PIN source read again"
# line must keep the path in one field (the log is read by logcheck.py)
mkdir "$work/pin dir"
install -m 0600 "$pin_file" "$work/pin dir/user-pin"
sed -i "s|^pin_source = .*|pin_source = $work/pin dir/user-pin|" "$conf"
start_server

# ---- discovery, certificate, health ----
expect_status 200 "" "healthz" -- anon "$base/healthz"
expect_status 200 "" "discovery without a client certificate" -- anon "$base/v1/groups/eng"
[ "$(json_get "$work/body" name)" = eng ] || fail "discovery name"
[ "$(json_get "$work/body" address)" = eng@example.org ] || fail "discovery address"
[ "$(json_get "$work/body" certificate_server)" = "https://127.0.0.1:$cport" ] || fail "discovery certificate_server"
grep -q '"key_versions":\[1\]' "$work/body" || fail "discovery key_versions: $(cat "$work/body")"
grep -q '"recipient-key"' "$work/body" || fail "discovery methods"
expect_status 404 not_found "unknown group" -- anon "$base/v1/groups/nope"
expect_status 200 "" "group certificate" -- anon "$base/v1/groups/eng/certificate"
openssl x509 -in "$work/body" -noout -ext subjectAltName | grep -q eng@example.org || fail "certificate chain PEM"
expect_status 405 method_not_allowed "wrong method" -- anon -X DELETE "$base/v1/groups/eng"
# The certificate server's path on the API listener is no resource here
# for every method: OPTIONS and PATCH were 405 with an Allow naming
# GET, HEAD, POST, PUT and DELETE, each of which is this 404.
for m in GET POST OPTIONS PATCH; do
  expect_status 404 not_found "$m membership-certificates on the API listener" -- \
    anon -X "$m" "$base/v1/groups/eng/membership-certificates"
done

# ---- method F: deliver=tls ----
printf '{"recipient_info":"%s","deliver":"tls"}' "$(b64 "$work/ri.der")" > "$work/req-tls.json"
expect_status 200 "" "unwrap tls (F)" -- c alice -H 'Content-Type: application/json' --data-binary @"$work/req-tls.json" "$base/v1/groups/eng/unwrap"
[ "$(json_get "$work/body" key_version)" = 1 ] || fail "key_version"
check_cek "$(b64d "$(json_get "$work/body" key)" | od -An -tx1 | tr -d ' \n')"
ok "F key decrypts the openssl cms message"
# A missing group is one answer whether or not its name could be one: a
# script compares messages too, and two wordings ("group not found", "no
# such group") read as two conditions.
for g in nope NOPE; do
  for req in "anon $base/v1/groups/$g" "anon $base/v1/groups/$g/certificate" \
    "c alice -H Content-Type:application/json --data-binary @$work/req-tls.json $base/v1/groups/$g/unwrap" \
    "c admin $base/v1/groups/$g/members"; do
    # shellcheck disable=SC2086 # the words of $req are the command's
    expect_status 404 not_found "group $g: ${req##* }" -- $req
    grep -q '"message":"no such group"' "$work/body" || fail "group $g: ${req##* }: $(head -c 300 "$work/body")"
  done
done
# A compressed body is refused as such (415 and the coding it takes), not
# read as malformed JSON; "identity" is no coding.
gzip -c "$work/req-tls.json" > "$work/req-tls.json.gz"
expect_status 415 unsupported_encoding "a gzip body" -- c alice -D "$work/gz.hdr" -H 'Content-Encoding: gzip' \
  -H 'Content-Type: application/json' --data-binary @"$work/req-tls.json.gz" "$base/v1/groups/eng/unwrap"
grep -qi '^accept-encoding: identity' "$work/gz.hdr" || fail "415 without Accept-Encoding: identity: $(cat "$work/gz.hdr")"
# its status line names the status (a script or log shows the reason phrase)
head -n 1 "$work/gz.hdr" | grep -q '^HTTP/1\.1 415 Unsupported Media Type' || fail "415 status line: $(head -n 1 "$work/gz.hdr")"
expect_status 200 "" "Content-Encoding: identity" -- c alice -H 'Content-Encoding: identity' \
  --data-binary @"$work/req-tls.json" "$base/v1/groups/eng/unwrap"
# a list of codings (RFC 9110 8.4): identity only is none, any other one is 415
expect_status 200 "" "Content-Encoding: Identity, identity" -- c alice -H 'Content-Encoding: Identity, identity' \
  --data-binary @"$work/req-tls.json" "$base/v1/groups/eng/unwrap"
expect_status 415 unsupported_encoding "Content-Encoding: identity,gzip" -- c alice \
  -H 'Content-Encoding: identity,gzip' --data-binary @"$work/req-tls.json.gz" "$base/v1/groups/eng/unwrap"

# The path as docs/api.md gives it: one trailing slash is the same
# endpoint, a query string is ignored, an empty segment is no resource.
expect_status 200 "" "unwrap/ (a trailing slash)" -- c alice --data-binary @"$work/req-tls.json" "$base/v1/groups/eng/unwrap/"
expect_status 200 "" "unwrap?x=1 (a query string)" -- c alice --data-binary @"$work/req-tls.json" "$base/v1/groups/eng/unwrap?x=1"
expect_status 404 not_found "unwrap// (an empty segment)" -- c alice --data-binary @"$work/req-tls.json" "$base/v1/groups/eng/unwrap//"
# The request target as sent (RFC 9112 3.2): libevent reads "//host/path"
# as a host and a path, so these were served as /v1/groups/eng/unwrap
# where a proxy in front that rules by path sees another path. Absolute
# form with http or https is served (3.2.2), another scheme names nothing.
# An http(s) URI with an empty host is invalid (RFC 9110 4.2.1): a WHATWG
# URL parser (a proxy on Node.js) reads http:///v1/groups/eng as host v1
# and path /groups/eng, so it names nothing here either.
for t in //evil.example/v1/groups/eng/unwrap ///v1/groups/eng/unwrap foo:/v1/groups/eng/unwrap \
  https://evil.example//v1/groups/eng/unwrap http:///v1/groups/eng/unwrap https://@/v1/groups/eng/unwrap \
  http://:443/v1/groups/eng/unwrap; do
  expect_status 404 not_found "request target $t" -- c alice --data-binary @"$work/req-tls.json" \
    --request-target "$t" "$base"
done
for t in https://evil.example/v1/groups/eng/unwrap HTTP://127.0.0.1/v1/groups/eng/unwrap?x=1; do
  expect_status 200 "" "absolute-form request target $t" -- c alice --data-binary @"$work/req-tls.json" \
    --request-target "$t" "$base"
done

# bare encrypted key + algorithm, default deliver
cms ek "$work/ri.der" "$work/ek.bin"
printf '{"encrypted_key":"%s","algorithm":"RSA-OAEP"}' "$(b64 "$work/ek.bin")" > "$work/req-bare.json"
expect_status 200 "" "unwrap bare encrypted_key" -- c alice --data-binary @"$work/req-bare.json" "$base/v1/groups/eng/unwrap"
check_cek "$(b64d "$(json_get "$work/body" key)" | od -An -tx1 | tr -d ' \n')"

# ---- method E: deliver=recipient-key ----
printf '{"recipient_info":"%s","deliver":"recipient-key"}' "$(b64 "$work/ri.der")" > "$work/req-rk.json"
expect_status 200 "" "unwrap recipient-key (E)" -- c alice --data-binary @"$work/req-rk.json" "$base/v1/groups/eng/unwrap"
b64d "$(json_get "$work/body" recipient_info)" > "$work/ri-alice.der"
check_ktri "$work/ri-alice.der" "$certs/alice@example.org.pem" "$certs/alice@example.org.key"
ok "E KTRI decrypts with openssl cms -decrypt"

# ---- group-secret ----
printf '{"recipient_info":"%s","deliver":"group-secret"}' "$(b64 "$work/ri.der")" > "$work/req-gs.json"
expect_status 200 "" "unwrap group-secret" -- c alice --data-binary @"$work/req-gs.json" "$base/v1/groups/eng/unwrap"
b64d "$(json_get "$work/body" recipient_info)" > "$work/ri-kek.der"
kekid=$(b64d "$(json_get "$work/body" kek_id)" | od -An -tx1 | tr -d ' \n')
sv=$(json_get "$work/body" secret_version)
expect_status 200 "" "secret-keys" -- c alice "$base/v1/groups/eng/secret-keys"
[ "$(json_get "$work/body" keys 0 version)" = "$sv" ] || fail "secret version"
[ "$(b64d "$(json_get "$work/body" keys 0 kek_id)" | od -An -tx1 | tr -d ' \n')" = "$kekid" ] || fail "kek_id"
b64d "$(json_get "$work/body" keys 0 wrapped_key)" > "$work/wsk.bin"
openssl pkeyutl -decrypt -inkey "$certs/alice@example.org.key" -pkeyopt rsa_padding_mode:oaep -in "$work/wsk.bin" \
  -out "$work/sk.bin" || fail "secret key unwrap with alice's key"
sk=$(od -An -tx1 "$work/sk.bin" | tr -d ' \n')
cms swap "$work/msg.der" "$work/ri-kek.der" "$work/kek.der"
openssl cms -decrypt -inform DER -in "$work/kek.der" -secretkey "$sk" -secretkeyid "$kekid" -out "$work/dec.txt" 2>"$work/cms.err" ||
  fail "openssl cms -secretkey: $(cat "$work/cms.err")"
cmp -s "$work/dec.txt" "$work/msg.txt" || fail "group-secret text differs"
ok "group-secret KEKRI decrypts with openssl cms -secretkey"

# ---- content keys of other lengths are re-wrapped at their own length ----
for ciph in aes-128-cbc aes-192-cbc; do
  openssl cms -encrypt -binary -$ciph -in "$work/msg.txt" -outform DER -out "$work/m-$ciph.der" \
    -recip "$certs/group.pem" -keyopt rsa_padding_mode:oaep 2>/dev/null
  cms ri "$work/m-$ciph.der" "$work/ri-$ciph.der"
  printf '{"recipient_info":"%s","deliver":"recipient-key"}' "$(b64 "$work/ri-$ciph.der")" > "$work/req-$ciph.json"
  expect_status 200 "" "unwrap recipient-key, $ciph content key" -- c alice --data-binary @"$work/req-$ciph.json" \
    "$base/v1/groups/eng/unwrap"
  b64d "$(json_get "$work/body" recipient_info)" > "$work/rk-$ciph.der"
  cms swap "$work/m-$ciph.der" "$work/rk-$ciph.der" "$work/sw-$ciph.der"
  openssl cms -decrypt -inform DER -in "$work/sw-$ciph.der" -recip "$certs/alice@example.org.pem" \
    -inkey "$certs/alice@example.org.key" -out "$work/dec.txt" 2>"$work/cms.err" ||
    fail "$ciph: openssl cms cannot decrypt with the returned KTRI: $(cat "$work/cms.err")"
  cmp -s "$work/dec.txt" "$work/msg.txt" || fail "$ciph: decrypted text differs"
  ok "E KTRI for a $ciph content key decrypts with openssl cms"
done

# ---- method G: membership certificate ----
openssl req -new -newkey rsa:2048 -nodes -subj "/CN=whoever" -keyout "$work/g.key" -out "$work/g.csr" 2>/dev/null
expect_status 200 "" "certsrv issues a membership certificate" -- c bob -H 'Content-Type: application/pkcs10' \
  --data-binary @"$work/g.csr" "$cbase/v1/groups/eng/membership-certificates"
cp "$work/body" "$work/g.pem"
openssl x509 -in "$work/g.pem" -noout -subject -ext subjectAltName > "$work/g.txt"
grep -q 'urn:groupsrv:group:eng' "$work/g.txt" || fail "membership cert names the group"
grep -qi 'bob\|email' "$work/g.txt" && fail "membership cert carries an identity"
printf '{"csr":%s}' "$(/usr/bin/python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$work/g.csr")" > "$work/csr.json"
expect_status 200 "" "certsrv accepts a JSON CSR" -- c bob -H 'Content-Type: application/json' \
  --data-binary @"$work/csr.json" "$cbase/v1/groups/eng/membership-certificates"
expect_status 200 "" "certsrv takes a JSON CSR sent as plain curl --data sends it (a form)" -- c bob \
  --data @"$work/csr.json" "$cbase/v1/groups/eng/membership-certificates"
gzip -c "$work/g.csr" > "$work/g.csr.gz"
expect_status 415 unsupported_encoding "certsrv refuses a gzip CSR" -- c bob -H 'Content-Type: application/pkcs10' \
  -H 'Content-Encoding: gzip' --data-binary @"$work/g.csr.gz" "$cbase/v1/groups/eng/membership-certificates"
expect_status 403 not_a_member "certsrv refuses a non-member" -- c carol -H 'Content-Type: application/pkcs10' \
  --data-binary @"$work/g.csr" "$cbase/v1/groups/eng/membership-certificates"
# the list's exploder is a member record: refused by its role, as on the
# API listener, and audited so (it was not_a_member, a stranger's outcome)
expect_status 403 forbidden "certsrv refuses the list's exploder by its role" -- c dle \
  -H 'Content-Type: application/pkcs10' --data-binary @"$work/g.csr" "$cbase/v1/groups/eng/membership-certificates"
grep -q "the role 'exploder' may not do this" "$work/body" || fail "exploder's refusal: $(cat "$work/body")"
grep '"action":"certify"' "$work/audit.jsonl" | grep '"identity":"dle@example.org"' |
  has_line '"outcome":"forbidden_role"' || fail "the exploder's refused certify is not audited as forbidden_role"
expect_status 401 no_client_certificate "certsrv refuses without a certificate" -- anon --data-binary @"$work/g.csr" \
  "$cbase/v1/groups/eng/membership-certificates"
gcurl() { curl -sS --cacert "$certs/tca.pem" --cert "$work/g.pem" --key "$work/g.key" "$@"; }
expect_status 200 "" "unwrap with a membership certificate (G)" -- gcurl --data-binary @"$work/req-rk.json" "$base/v1/groups/eng/unwrap"
b64d "$(json_get "$work/body" recipient_info)" > "$work/ri-g.der"
check_ktri "$work/ri-g.der" "$work/g.pem" "$work/g.key"
ok "G KTRI decrypts with openssl cms -decrypt"
expect_status 403 not_a_member "membership certificate refused for deliver=tls" -- gcurl --data-binary @"$work/req-tls.json" "$base/v1/groups/eng/unwrap"
expect_status 403 not_a_member "membership certificate refused for secret-keys" -- gcurl "$base/v1/groups/eng/secret-keys"
# what api.md asks of a CSR: a signature that verifies, an RSA >= 2048 or
# EC >= P-256 key; an EC membership certificate cannot take a recipient-key
openssl req -new -newkey rsa:1024 -nodes -subj / -keyout "$work/g1024.key" -out "$work/g1024.csr" 2>/dev/null
openssl req -new -newkey ed25519 -nodes -subj / -keyout "$work/ged.key" -out "$work/ged.csr" 2>/dev/null
# P-256 written out as explicit parameters, not named (RFC 5480 2.1.1: a
# certificate names its curve): a curve no one checked, certified.
openssl ecparam -name prime256v1 -param_enc explicit -genkey -noout -out "$work/gecx.key"
openssl req -new -key "$work/gecx.key" -subj / -out "$work/gecx.csr"
openssl req -in "$work/g.csr" -outform DER -out "$work/g.csr.der"
/usr/bin/python3 -c 'import sys; d=bytearray(open(sys.argv[1],"rb").read()); d[-3]^=0xff; open(sys.argv[2],"wb").write(d)' \
  "$work/g.csr.der" "$work/gbadsig.der"
# a DER CSR followed by bytes that are not part of it (its signature holds)
{ cat "$work/g.csr.der"; printf '\0trailing'; } > "$work/gtrail.der"
for f in g1024.csr ged.csr gecx.csr gbadsig.der gtrail.der; do
  expect_status 400 bad_csr "certsrv refuses $f" -- c bob -H 'Content-Type: application/pkcs10' \
    --data-binary @"$work/$f" "$cbase/v1/groups/eng/membership-certificates"
done
grep -q 'bytes after the DER certificate request' "$work/body" || fail "trailing bytes not named: $(cat "$work/body")"
# exactly one request per body: a second one (or a certificate before it)
# is refused, never the first of several certified
cat "$work/g.csr" "$work/g1024.csr" > "$work/gtwo.csr"
{ cat "$certs/tca.pem" "$work/g.csr"; } > "$work/gcertfirst.csr"
{ cat "$work/g.csr"; echo 'trailing words'; } > "$work/gtext.csr"
for f in gtwo.csr gcertfirst.csr gtext.csr; do
  expect_status 400 bad_csr "certsrv refuses $f" -- c bob -H 'Content-Type: application/pkcs10' \
    --data-binary @"$work/$f" "$cbase/v1/groups/eng/membership-certificates"
  case $f in
    gtwo.csr) grep -q 'more than one PEM block' "$work/body" || fail "two CSRs not named: $(cat "$work/body")" ;;
    gcertfirst.csr) grep -q 'not a CERTIFICATE REQUEST' "$work/body" || fail "certificate not named: $(cat "$work/body")" ;;
  esac
done
# `curl --data @file` (not --data-binary) strips the file's line breaks:
# the PEM arrives on one line, and the answer says so (it said "not a PEM
# or DER certificate request", which sent the user looking at the file)
for ct in 'application/pkcs10' 'application/x-www-form-urlencoded'; do
  expect_status 400 bad_csr "certsrv refuses a PEM CSR sent with curl --data ($ct)" -- c bob -H "Content-Type: $ct" \
    --data @"$work/g.csr" "$cbase/v1/groups/eng/membership-certificates"
  grep -qF 'a PEM block without line breaks: curl --data strips them, send the file with --data-binary' "$work/body" ||
    fail "a PEM CSR without line breaks not named: $(cat "$work/body")"
done
# {"csr": ...} JSON: malformed (cut short, a key twice) is bad_json, as on
# the API listener (it was bad_request "JSON body must be ..."); well-formed
# without a string csr is bad_request
for j in '{"csr":' '{"csr":"a","csr":"b"}'; do
  expect_status 400 bad_json "certsrv refuses malformed JSON $j" -- c bob -H 'Content-Type: application/json' \
    --data-binary "$j" "$cbase/v1/groups/eng/membership-certificates"
done
# A key given twice is well-formed JSON (RFC 8259 only says names should
# be unique): the message says what is wrong, not "malformed", on both
# listeners.
grep -q '"message":"a key is given twice in a JSON object' "$work/body" ||
  fail "certsrv: a key twice not named: $(cat "$work/body")"
expect_status 400 bad_json "unwrap refuses a key given twice" -- c alice \
  --data-binary '{"deliver":"tls","deliver":"tls"}' "$base/v1/groups/eng/unwrap"
grep -q '"message":"a key is given twice in a JSON object at line 1 column' "$work/body" ||
  fail "unwrap: a key twice not named: $(cat "$work/body")"
expect_status 400 bad_request "certsrv refuses JSON without a string csr" -- c bob --data-binary '{"csr":5}' \
  "$cbase/v1/groups/eng/membership-certificates"
# explanatory text before the block (RFC 7468), as `openssl req -text` writes it
openssl req -in "$work/g.csr" -text > "$work/gtext-first.csr"
grep -q '^Certificate Request:' "$work/gtext-first.csr" || fail "openssl req -text wrote no text"
expect_status 200 "" "certsrv takes a CSR with openssl's text before it" -- c bob -H 'Content-Type: application/pkcs10' \
  --data-binary @"$work/gtext-first.csr" "$cbase/v1/groups/eng/membership-certificates"
expect_status 200 "" "certsrv issues for the same DER CSR without them" -- c bob -H 'Content-Type: application/pkcs10' \
  --data-binary @"$work/g.csr.der" "$cbase/v1/groups/eng/membership-certificates"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj / -keyout "$work/gec.key" -out "$work/gec.csr" 2>/dev/null
expect_status 200 "" "certsrv issues for an EC key" -- c bob -H 'Content-Type: application/pkcs10' \
  --data-binary @"$work/gec.csr" "$cbase/v1/groups/eng/membership-certificates"
cp "$work/body" "$work/gec.pem"
expect_status 400 unsupported_certificate_key "an EC membership certificate and recipient-key" -- \
  curl -sS --cacert "$certs/tca.pem" --cert "$work/gec.pem" --key "$work/gec.key" --data-binary @"$work/req-rk.json" \
  "$base/v1/groups/eng/unwrap"
tail -n 20 "$work/audit.jsonl" | grep '"action":"certify"' | has_line 'bob@example.org' || fail "certsrv audit names the member"
grep '"action":"certify"' "$work/audit.jsonl" | has_line -i 'serial\|fingerprint' && fail "certsrv audit links the certificate"
grep '"identity":"anonymous member"' "$work/audit.jsonl" | has_line '"action":"unwrap"' || fail "anonymous unwrap audited"
ok "audit: who got a certificate, not which; unwrap as anonymous member"

# ---- unwrap-batch ----
garbage=$(head -c 256 /dev/urandom | base64 -w0)
printf '{"items":[{"recipient_info":"%s"},{"encrypted_key":"%s","algorithm":"RSA-OAEP"},{"recipient_info":"%s","deliver":"recipient-key"}]}' \
  "$(b64 "$work/ri.der")" "$garbage" "$(b64 "$work/ri.der")" > "$work/batch.json"
expect_status 200 "" "unwrap-batch" -- c alice --data-binary @"$work/batch.json" "$base/v1/groups/eng/unwrap-batch"
check_cek "$(b64d "$(json_get "$work/body" results 0 key)" | od -An -tx1 | tr -d ' \n')"
[ "$(json_get "$work/body" results 1 error code)" = unwrap_failed ] || fail "batch item 1 should fail uniformly"
b64d "$(json_get "$work/body" results 2 recipient_info)" > "$work/ri-b.der"
check_ktri "$work/ri-b.der" "$certs/alice@example.org.pem" "$certs/alice@example.org.key"
/usr/bin/python3 -c 'import json,sys; print(json.dumps({"items":[{"encrypted_key":"AAAA","algorithm":"RSA-OAEP"}]*11}))' > "$work/batch11.json"
expect_status 413 too_many_items "unwrap-batch over the item cap" -- c alice --data-binary @"$work/batch11.json" "$base/v1/groups/eng/unwrap-batch"

# ---- rewrap (exploder) ----
printf '{"recipient_info":"%s","to":"group-secret"}' "$(b64 "$work/ri.der")" > "$work/rw-gs.json"
expect_status 200 "" "rewrap to group-secret" -- c dle --data-binary @"$work/rw-gs.json" "$base/v1/groups/eng/rewrap"
b64d "$(json_get "$work/body" recipient_info)" > "$work/rw-kek.der"
cms swap "$work/msg.der" "$work/rw-kek.der" "$work/kek2.der"
openssl cms -decrypt -inform DER -in "$work/kek2.der" -secretkey "$sk" -secretkeyid "$kekid" -out "$work/dec.txt" 2>/dev/null ||
  fail "rewrap KEKRI does not decrypt"
cmp -s "$work/dec.txt" "$work/msg.txt" || fail "rewrap text differs"
# The answer names the group key version the message was to, as api.md
# shows it (it said 0, a version no group has).
[ "$(json_get "$work/body" key_version)" = 1 ] || fail "rewrap to group-secret: key_version $(json_get "$work/body" key_version), wanted 1"
printf '{"recipient_info":"%s","to":"members"}' "$(b64 "$work/ri.der")" > "$work/rw-m.json"
expect_status 200 "" "rewrap to members" -- c dle --data-binary @"$work/rw-m.json" "$base/v1/groups/eng/rewrap"
n=$(/usr/bin/python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["recipient_infos"]))' "$work/body")
# readers with certificates: alice bob dave erin fuzz mallory rl admin (not dle, not carol)
[ "$n" = 8 ] || fail "rewrap to members: $n RecipientInfos, wanted 8"
[ "$(json_get "$work/body" key_version)" = 1 ] || fail "rewrap to members: key_version $(json_get "$work/body" key_version), wanted 1"
found=0
for i in $(seq 0 $((n - 1))); do
  b64d "$(json_get "$work/body" recipient_infos "$i")" > "$work/rm.der"
  cms swap "$work/msg.der" "$work/rm.der" "$work/rm-msg.der"
  if openssl cms -decrypt -inform DER -in "$work/rm-msg.der" -recip "$certs/erin@example.org.pem" \
       -inkey "$certs/erin@example.org.key" -out "$work/dec.txt" 2>/dev/null && cmp -s "$work/dec.txt" "$work/msg.txt"; then
    found=1
  fi
done
[ "$found" = 1 ] || fail "no member KTRI decrypts for erin"
ok "rewrap to members: erin's KTRI decrypts with openssl cms"
expect_status 403 forbidden "rewrap refused for a plain member" -- c alice --data-binary @"$work/rw-m.json" "$base/v1/groups/eng/rewrap"
expect_status 403 forbidden "exploder may not unwrap" -- c dle --data-binary @"$work/req-tls.json" "$base/v1/groups/eng/unwrap"

# ---- admin ----
expect_status 200 "" "admin lists members" -- c admin "$base/v1/groups/eng/members"
grep -q '"email":"alice@example.org"' "$work/body" || fail "member list"
expect_status 403 forbidden "member list refused for a member" -- c alice "$base/v1/groups/eng/members"
expect_status 201 "" "admin adds a member" -- c admin -X PUT --data-binary '{"role":"member"}' "$base/v1/groups/eng/members/frank@example.org"
expect_status 200 "" "admin reads a member" -- c admin "$base/v1/groups/eng/members/frank@example.org"
# What a GET says, PUT back with one field changed, is taken: frank has no
# certificate, so the GET says "certificate": null, which is none.
/usr/bin/python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); assert m["certificate"] is None, m
m["wrap"] = "oaep"; print(json.dumps(m))' "$work/body" > "$work/put-back.json" || fail "GET member: $(cat "$work/body")"
expect_status 200 "" "a member's GET answer PUT back with its wrap changed" -- c admin -X PUT \
  --data-binary @"$work/put-back.json" "$base/v1/groups/eng/members/frank@example.org"
grep -q '"wrap":"oaep"' "$work/body" && grep -q '"has_certificate":false' "$work/body" ||
  fail "PUT of a GET answer: $(cat "$work/body")"
# api.md: a PUT needs a body, {} for the defaults (curl -X PUT alone sends none)
expect_status 400 bad_request "a member PUT without a body" -- c admin -X PUT "$base/v1/groups/eng/members/frank@example.org"
grep -q 'a JSON object body is required' "$work/body" || fail "PUT without a body: $(cat "$work/body")"
# a member's recorded certificate comes back as PEM, the same certificate
expect_status 200 "" "admin reads a member with a certificate" -- c admin "$base/v1/groups/eng/members/alice@example.org"
[ "$(json_get "$work/body" certificate | openssl x509 -noout -fingerprint -sha256)" = \
  "$(openssl x509 -in "$certs/alice@example.org.pem" -noout -fingerprint -sha256)" ] ||
  fail "GET member: the certificate is not alice's: $(head -c 300 "$work/body")"
# A member certificate with a key too weak to re-wrap message keys to is
# refused, and the member stays as they were.
# put_cert FILE: a PUT body with FILE as frank's certificate
put_cert() { /usr/bin/python3 -c 'import json,sys; print(json.dumps({"role":"admin","certificate":open(sys.argv[1]).read()}))' "$1"; }
openssl req -x509 -newkey rsa:1024 -nodes -days 2 -subj /CN=frank -addext subjectAltName=email:frank@example.org \
  -keyout "$work/frank1024.key" -out "$work/frank1024.pem" 2>/dev/null
put_cert "$work/frank1024.pem" > "$work/put-weak.json"
expect_status 400 bad_certificate "PUT with an RSA-1024 certificate" -- c admin -X PUT --data-binary @"$work/put-weak.json" \
  "$base/v1/groups/eng/members/frank@example.org"
grep -q 'RSA below 2048' "$work/body" || fail "PUT with an RSA-1024 certificate: $(cat "$work/body")"
expect_status 200 "" "a refused PUT left the member as they were" -- c admin "$base/v1/groups/eng/members/frank@example.org"
grep -q '"role":"member"' "$work/body" && grep -q '"has_certificate":false' "$work/body" ||
  fail "a refused PUT changed the member: $(cat "$work/body")"
# addresses by docs/api.md "Addresses": each refusal a 400 that says why
long_local=$(printf 'l%.0s' $(seq 1 65))
for a in "$long_local@example.org|longer than 64" "a@%5B192.0.2.1%5D|address literal" \
  "j%C3%BCrgen@example.org|SMTPUTF8" "%22a%20b%22@example.org|quoted local part" "a..b@example.org|twice in a row"; do
  expect_status 400 bad_request "PUT refuses ${a%%|*}" -- c admin -g -X PUT --data-binary '{"role":"member"}' \
    "$base/v1/groups/eng/members/${a%%|*}"
  grep -q "must be an email address: .*${a#*|}" "$work/body" || fail "PUT ${a%%|*}: $(cat "$work/body")"
done
# the member is named as stored, whatever the case of the request
expect_status 200 "" "admin removes a member" -- c admin -X DELETE "$base/v1/groups/eng/members/Frank@Example.ORG"
grep -q '"removed":"frank@example.org"' "$work/body" || fail "DELETE answers the requested spelling: $(cat "$work/body")"
tail -n 3 "$work/audit.jsonl" | grep '"action":"member-remove"' | grep -q '"member":"frank@example.org"' ||
  fail "the removal's audit record does not name the stored member"
expect_status 404 not_found "removed member is gone" -- c admin "$base/v1/groups/eng/members/frank@example.org"
# a member stored by an older build under its looser address rule (a '_'
# in the domain): a PUT of that address is refused, GET and DELETE reach it
sqlite3 "$work/groupsrv.db" "INSERT INTO members (group_id, email, role, added)
  SELECT id, 'old..rule@mail_host.example', 1, 0 FROM groups WHERE name = 'eng'"
expect_status 400 bad_request "PUT refuses an address of the older rule" -- c admin -g -X PUT \
  --data-binary '{"role":"member"}' "$base/v1/groups/eng/members/old..rule@mail_host.example"
expect_status 200 "" "GET reaches a member of the older rule" -- c admin "$base/v1/groups/eng/members/old..rule@mail_host.example"
expect_status 200 "" "DELETE removes a member of the older rule" -- c admin -X DELETE \
  "$base/v1/groups/eng/members/old..rule@mail_host.example"
grep -q '"removed":"old..rule@mail_host.example"' "$work/body" || fail "DELETE of the older rule: $(cat "$work/body")"
expect_status 400 bad_request "DELETE refuses what names no record" -- c admin -g -X DELETE \
  "$base/v1/groups/eng/members/a%20b@example.org"
expect_status 201 "" "admin creates a group" -- c admin --data-binary '{"name":"ops","address":"ops@example.org","keyspec":"rsa:2048","methods":["tls"]}' "$base/v1/groups"
expect_status 200 "" "new group discoverable" -- anon "$base/v1/groups/ops"
# Its creator is its admin bound to the key their admin record binds (in
# eng, by --issue-cert): another certificate for admin@example.org from a
# trusted client CA (the test CA) manages neither group.
expect_status 200 "" "the creator's record in the new group" -- c admin "$base/v1/groups/ops/members/admin@example.org"
[ "$(json_get "$work/body" certificate | openssl x509 -noout -fingerprint -sha256)" = \
  "$(openssl x509 -in "$certs/admin@example.org.pem" -noout -fingerprint -sha256)" ] ||
  fail "the creator is not bound to their certificate in the group they made: $(head -c 300 "$work/body")"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=admin@example.org \
  -keyout "$work/admin2.key" -out "$work/admin2.csr" 2>/dev/null
printf 'subjectAltName=email:admin@example.org\n' > "$work/admin2.ext"
openssl x509 -req -in "$work/admin2.csr" -CA "$certs/tca.pem" -CAkey "$certs/tca.key" -CAcreateserial -days 1 \
  -extfile "$work/admin2.ext" -out "$work/admin2.pem" 2>/dev/null
for g in eng ops; do
  expect_status 403 certificate_mismatch "another certificate of the admin's address, group $g" -- \
    curl -sS --cacert "$certs/tca.pem" --cert "$work/admin2.pem" --key "$work/admin2.key" "$base/v1/groups/$g/members"
done
# the admin endpoints of no group answer the code their record gives
# (they answered forbidden, "only administrators", to an admin's address)
expect_status 403 certificate_mismatch "group creation with another certificate of the admin's address" -- \
  curl -sS --cacert "$certs/tca.pem" --cert "$work/admin2.pem" --key "$work/admin2.key" \
  --data-binary '{"name":"ops5","address":"ops5@example.org"}' "$base/v1/groups"
expect_status 403 certificate_mismatch "/metrics with another certificate of the admin's address" -- \
  curl -sS --cacert "$certs/tca.pem" --cert "$work/admin2.pem" --key "$work/admin2.key" "$base/metrics"
grep '"action":"metrics"' "$work/audit.jsonl" | grep '"identity":"admin@example.org"' |
  has_line '"outcome":"certificate_mismatch"' || fail "the refused /metrics's record"

# ---- the last admin of a group (409 last_admin) ----
# admin is ops's one admin (its creator): neither a DELETE nor a PUT that
# demotes them (a PUT without "role" is a member) leaves a group nobody
# can manage; refused, audited, the record as it was
expect_status 409 last_admin "the last admin removing themselves" -- \
  c admin -X DELETE "$base/v1/groups/ops/members/admin@example.org"
grep -q 'admin@example.org is the last admin of group ops' "$work/body" || fail "last admin DELETE: $(cat "$work/body")"
expect_status 409 last_admin "a PUT demoting the last admin" -- \
  c admin -X PUT --data-binary '{}' "$base/v1/groups/ops/members/ADMIN@example.org"
expect_status 200 "" "the last admin is still admin" -- c admin "$base/v1/groups/ops/members/admin@example.org"
[ "$(json_get "$work/body" role)" = admin ] || fail "the refused demotion was made: $(cat "$work/body")"
[ "$(grep '"group":"ops"' "$work/audit.jsonl" | grep '"outcome":"last_admin"' | grep -c '"member":"admin@example.org"')" = 2 ] ||
  fail "the last-admin refusals' records: $(grep '"group":"ops"' "$work/audit.jsonl" | tail -n 3)"
expect_status 200 "" "an admin PUT back as admin" -- \
  c admin -X PUT --data-binary '{"role":"admin"}' "$base/v1/groups/ops/members/admin@example.org"
# with a second admin, either may go
expect_status 201 "" "a second admin of ops" -- \
  c admin -X PUT --data-binary '{"role":"admin"}' "$base/v1/groups/ops/members/alice@example.org"
expect_status 200 "" "one of two admins demoted" -- \
  c admin -X PUT --data-binary '{"role":"member"}' "$base/v1/groups/ops/members/alice@example.org"
expect_status 200 "" "the demoted member removed" -- c admin -X DELETE "$base/v1/groups/ops/members/alice@example.org"
# A change waiting for the keys lock is made only by a caller who is
# still admin when it gets it: the caller is read before the lock, and an
# admin removed or demoted by the change ahead (its commit emulated here
# under a lock this test holds: flock(2) on the database's directory)
# still named a new admin after it.
expect_status 201 "" "alice admin of ops again" -- \
  c admin -X PUT --data-binary '{"role":"admin"}' "$base/v1/groups/ops/members/alice@example.org"
# demoted_while_waiting WHAT CMD...: holds the keys lock, runs CMD (its
# HTTP status to late.code) until the server logs that CMD waits for the
# lock, demotes alice in ops as the change ahead would, then lets go.
demoted_while_waiting() {
  local what=$1 holder late nwait n=0
  shift
  rm -f "$work/held" "$work/release"
  flock -x "$work" sh -c 'touch "$1/held"; until [ -e "$1/release" ]; do sleep 0.05; done' sh "$work" & holder=$!
  until [ -e "$work/held" ]; do sleep 0.05; done
  nwait=$(grep -c 'waiting for another command that is making token keys' "$work/server.log" || true)
  "$@" > "$work/late.code" & late=$!
  until [ "$(grep -c 'waiting for another command that is making token keys' "$work/server.log")" -gt "$nwait" ]; do
    n=$((n + 1)); [ "$n" -lt 1200 ] || { touch "$work/release"; fail "the $what never waited for the keys lock"; }
    sleep 0.05
  done
  sqlite3 "$work/groupsrv.db" "UPDATE members SET role = 1 WHERE email = 'alice@example.org'
    AND group_id = (SELECT id FROM groups WHERE name = 'ops')"
  touch "$work/release"
  wait "$holder"
  wait "$late"
}
refused() { grep '"group":"ops"' "$work/audit.jsonl" | grep '"identity":"alice@example.org"' | grep -c '"outcome":"forbidden_role"' || true; }
nref=$(refused)
demoted_while_waiting PUT status c alice -X PUT --data-binary '{"role":"admin"}' "$base/v1/groups/ops/members/carol@example.org"
[ "$(cat "$work/late.code")" = 403 ] && grep -q '"code":"forbidden"' "$work/body" ||
  fail "a change by an admin demoted while it waited: HTTP $(cat "$work/late.code"): $(cat "$work/body")"
expect_status 404 not_found "no admin made by a demoted admin" -- c admin "$base/v1/groups/ops/members/carol@example.org"
[ "$(refused)" = $((nref + 1)) ] || fail "the refused late change's record: $(grep alice "$work/audit.jsonl" | tail -n 2)"
expect_status 200 "" "alice removed from ops" -- c admin -X DELETE "$base/v1/groups/ops/members/alice@example.org"
ok "a member change waiting for the keys lock: its caller checked again once it holds it"
# The same for a group creation: its caller is read before the lock too,
# and an admin demoted meanwhile still made a group and became its admin.
expect_status 201 "" "alice admin of ops for a creation" -- \
  c admin -X PUT --data-binary '{"role":"admin"}' "$base/v1/groups/ops/members/alice@example.org"
crefused() { grep '"action":"group-create"' "$work/audit.jsonl" | grep '"group":"ops8"' |
  grep '"identity":"alice@example.org"' | grep -c '"outcome":"forbidden_role"' || true; }
nref=$(crefused)
demoted_while_waiting "group create" status c alice \
  --data-binary '{"name":"ops8","address":"ops8@example.org","keyspec":"rsa:2048","methods":["tls"]}' "$base/v1/groups"
[ "$(cat "$work/late.code")" = 403 ] && grep -q '"code":"forbidden"' "$work/body" ||
  fail "a group created by an admin demoted while it waited: HTTP $(cat "$work/late.code"): $(cat "$work/body")"
expect_status 404 not_found "no group made by a demoted admin" -- anon "$base/v1/groups/ops8"
token_labels | has_line ops8 && fail "the keys of a group a demoted admin asked for are on the token: $(token_labels)"
[ "$(crefused)" = $((nref + 1)) ] || fail "the refused late creation's record: $(grep ops8 "$work/audit.jsonl" | tail -n 2)"
expect_status 200 "" "alice removed from ops again" -- c admin -X DELETE "$base/v1/groups/ops/members/alice@example.org"
ok "a group creation waiting for the keys lock: its caller checked again once it holds it"

# ---- one group per list address ----
expect_status 400 exists "a group of another group's list address" -- \
  c admin --data-binary '{"name":"ops6","address":"OPS@example.org","keyspec":"rsa:2048","methods":["tls"]}' "$base/v1/groups"
grep -q 'the list address OPS@example.org is already group ops' "$work/body" || fail "shared address: $(cat "$work/body")"
expect_status 404 not_found "the group of a shared address was not made" -- anon "$base/v1/groups/ops6"
rc=0; gs group create eng2 --address eng@example.org --key rsa:2048 > "$work/eng2.out" 2>&1 || rc=$?
[ "$rc" = 3 ] && grep -q 'already group eng' "$work/eng2.out" || fail "group create of eng's address: exit $rc: $(cat "$work/eng2.out")"
token_labels | has_line -e ops6 -e eng2 && fail "a refused group's keys are on the token: $(token_labels)"
ok "group create of a list address another group has: refused before any key is made"

# ---- group create and its admin record: one transaction ----
# the creator's admin record refused (a trigger standing for a failing
# database): no group is left that nobody administers, its keys gone
sqlite3 "$work/groupsrv.db" "CREATE TRIGGER no_admin BEFORE INSERT ON members
  WHEN NEW.group_id = (SELECT id FROM groups WHERE name = 'ops7') BEGIN SELECT RAISE(ABORT, 'test refuses'); END"
code=$(status c admin --data-binary '{"name":"ops7","address":"ops7@example.org","keyspec":"rsa:2048","methods":["tls"]}' "$base/v1/groups")
[ "$code" != 201 ] || fail "group create with its admin record refused: 201"
expect_status 404 not_found "a group whose admin record failed is not made" -- anon "$base/v1/groups/ops7"
token_labels | has_line ops7 && fail "the keys of a group not made are on the token: $(token_labels)"
sqlite3 "$work/groupsrv.db" "DROP TRIGGER no_admin"
expect_status 201 "" "the same group made once the database takes it" -- \
  c admin --data-binary '{"name":"ops7","address":"ops7@example.org","keyspec":"rsa:2048","methods":["tls"]}' "$base/v1/groups"
expect_status 200 "" "its creator is its admin" -- c admin "$base/v1/groups/ops7/members/admin@example.org"

# ---- HTTP/1.0 and encoded slashes ----
curl -sS --http1.0 -D "$work/h10.head" -o /dev/null --cacert "$certs/tca.pem" "$base/healthz"
grep -qi '^Date: [A-Z][a-z][a-z], [0-9][0-9] [A-Z][a-z][a-z] 20[0-9][0-9] [0-9:]* GMT' "$work/h10.head" ||
  fail "an HTTP/1.0 answer without Date: $(cat "$work/h10.head")"
curl -sS -D "$work/h11.head" -o /dev/null --cacert "$certs/tca.pem" "$base/healthz"
[ "$(grep -ci '^Date:' "$work/h11.head")" = 1 ] || fail "an HTTP/1.1 answer's Date: $(cat "$work/h11.head")"
ok "Date on HTTP/1.0 and HTTP/1.1 answers (one)"
expect_status 404 not_found "an encoded slash in a member address" -- \
  c admin "$base/v1/groups/eng/members/a%2Fb@example.org"
grep -q 'encoded / (%2F)' "$work/body" || fail "%2F: $(cat "$work/body")"
# recorded as started (durable before the keys are made), then its outcome:
# a key holder killed in between leaves no group without a record
[ "$(grep '"action":"group-create"' "$work/audit.jsonl" | grep '"group":"ops"' | grep -o '"outcome":"[a-z]*"' | paste -sd,)" = \
  '"outcome":"started","outcome":"ok"' ] || fail "the group's records: $(grep '"group":"ops"' "$work/audit.jsonl")"
# a bad name or address is told apart from a missing one
expect_status 400 bad_request "group name in capitals" -- c admin --data-binary '{"name":"Ops3","address":"ops3@example.org"}' "$base/v1/groups"
grep -q '"name\\" must be' "$work/body" || fail "bad group name: $(cat "$work/body")"
expect_status 400 bad_request "list address not an email" -- c admin --data-binary '{"name":"ops3","address":"ops3"}' "$base/v1/groups"
grep -q '"address\\" must be an email' "$work/body" || fail "bad list address: $(cat "$work/body")"
expect_status 403 forbidden "group creation refused for a member" -- c alice --data-binary '{"name":"ops2","address":"ops2@example.org"}' "$base/v1/groups"
# Every refusal of an admin endpoint is audited (SECURITY.md), group
# creation's too: a member (forbidden_role), and a non-member whose body
# is refused after the authorisation alone (not_a_member).
expect_status 403 forbidden "group creation with a bad body refused for a non-member" -- c carol \
  --data-binary '{"name":' "$base/v1/groups"
grep '"action":"group-create"' "$work/audit.jsonl" | grep '"identity":"alice@example.org"' | grep '"group":"ops2"' |
  has_line '"outcome":"forbidden_role"' || fail "a member's refused group creation is not audited"
grep '"action":"group-create"' "$work/audit.jsonl" | grep '"identity":"carol@example.org"' |
  has_line '"outcome":"not_a_member"' || fail "a non-member's refused group creation is not audited"
ok "refused group creations audited (forbidden_role, not_a_member)"

# ---- metrics ----
expect_status 200 "" "metrics for an admin" -- c admin "$base/metrics"
grep -q 'groupsrv_requests_total{endpoint="unwrap",status="200"}' "$work/body" || fail "metrics requests"
grep -q 'groupsrv_unwrap_duration_seconds_bucket{le="+Inf"}' "$work/body" || fail "metrics histogram"
# what callers choose is no token error (a member could inflate it at will):
# the EC membership certificate above, and RSA-OAEP-256, which SoftHSM lacks
openssl cms -encrypt -binary -aes-256-cbc -in "$work/msg.txt" -outform DER -out "$work/o256.der" \
  -recip "$certs/group.pem" -keyopt rsa_padding_mode:oaep -keyopt rsa_oaep_md:sha256 -keyopt rsa_mgf1_md:sha256
cms ri "$work/o256.der" "$work/o256.ri"
cp "$work/body" "$work/metrics-before.txt"
printf '{"recipient_info":"%s","content_algorithm":"aes-256-cbc"}' "$(b64 "$work/o256.ri")" > "$work/o256.json"
expect_status 400 unsupported_algorithm "RSA-OAEP-256 on SoftHSM" -- c alice --data-binary @"$work/o256.json" \
  "$base/v1/groups/eng/unwrap"
expect_status 200 "" "metrics again" -- c admin "$base/metrics"
grep -qx 'groupsrv_token_errors_total 0' "$work/body" ||
  fail "caller-chosen refusals counted as token errors: $(grep token_errors "$work/body")"
grep -q 'groupsrv_token_sessions_in_use' "$work/body" || fail "metrics sessions"
expect_status 403 forbidden "metrics refused for a member" -- c alice "$base/metrics"
grep '"action":"metrics"' "$work/audit.jsonl" | grep '"identity":"alice@example.org"' |
  has_line '"outcome":"forbidden_role"' || fail "a member's refused /metrics is not audited"
ok "refused /metrics audited"
# As a scraper reads it: strict text format 0.0.4 (tests/lib/promcheck.py),
# exactly the families api.md names; known traffic moves the counters by
# as much, and SIGHUP (a reload, no restart) never sets a counter back.
promcheck() { /usr/bin/python3 "$SRC/tests/lib/promcheck.py" "$@"; }
mseries() { promcheck "$1" --get 'groupsrv_requests_total{endpoint="unwrap",status="200"}' \
  'groupsrv_requests_total{endpoint="unwrap",status="403"}' groupsrv_unwrap_duration_seconds_count; }
c admin "$base/metrics" > "$work/m0.txt"
promcheck "$work/m0.txt" --documented "$SRC/docs/api.md" || fail "/metrics: $(cat "$work/m0.txt")"
read -r -d '' ok0 refused0 lat0 < <(mseries "$work/m0.txt") || true
printf '{"recipient_info":"%s"}' "$(b64 "$work/ri.der")" > "$work/m-req.json"
for _ in 1 2 3; do
  expect_status 200 "" "unwrap counted" -- c alice --data-binary @"$work/m-req.json" "$base/v1/groups/eng/unwrap"
done
expect_status 403 not_a_member "refusal counted" -- c carol --data-binary @"$work/m-req.json" "$base/v1/groups/eng/unwrap"
c admin "$base/metrics" > "$work/m1.txt"
promcheck "$work/m1.txt" --before "$work/m0.txt" || fail "/metrics after traffic: $(cat "$work/m1.txt")"
read -r -d '' ok1 refused1 lat1 < <(mseries "$work/m1.txt") || true
[ "$((ok1 - ok0)) $((refused1 - refused0)) $((lat1 - lat0))" = "3 1 3" ] ||
  fail "3 unwraps and a refusal moved unwrap 200/403 and the histogram by $((ok1 - ok0)) $((refused1 - refused0)) $((lat1 - lat0))"
kill -HUP "$srv_pid"
for _ in $(seq 1 50); do grep -q 'reloaded TLS certificate' "$work/server.log" && break; sleep 0.1; done
grep -q 'reloaded TLS certificate' "$work/server.log" || fail "no reload after SIGHUP"
for _ in $(seq 1 50); do grep -q 'PIN source read again' "$work/server.log" && break; sleep 0.1; done
grep -q "msg=\"PIN source read again\" pin_source=\"$work/pin dir/user-pin\"\$" "$work/server.log" ||
  fail "SIGHUP: no PIN source line with the quoted path: $(grep 'PIN source' "$work/server.log")"
expect_status 200 "" "healthz after SIGHUP" -- anon "$base/healthz"
grep -q 'configuration file changed' "$work/server.log" && fail "SIGHUP with the configuration unchanged warns of a change"
# The configuration file itself is not read again (groupsrv.1): an edit
# followed by a reload is said to need a restart, not taken silently.
cp "$conf" "$work/conf.orig"
sed -i 's/^log_level = .*/log_level = debug/' "$conf"
mark=$(grep -c 'reloaded TLS certificate' "$work/server.log")
kill -HUP "$srv_pid"
for _ in $(seq 1 50); do [ "$(grep -c 'reloaded TLS certificate' "$work/server.log")" -gt "$mark" ] && break; sleep 0.1; done
grep -q "level=warn prog=groupsrv fn=[a-z_]* msg=\"the configuration file changed since serve started; SIGHUP reads the TLS files, .*restart groupsrv to take the change up\" path=\"$conf\"" \
  "$work/server.log" || fail "SIGHUP after an edit of the configuration: no warning that it takes a restart"
cp "$work/conf.orig" "$conf"
ok "SIGHUP after an edit of the configuration file says a restart takes it up"
# An edit that broke the file is said at SIGHUP, with the line, while the
# server still runs: not "restart to take it up", which would not start.
printf '[server\n' >> "$conf"
mark=$(grep -c 'reloaded TLS certificate' "$work/server.log")
kill -HUP "$srv_pid"
for _ in $(seq 1 50); do [ "$(grep -c 'reloaded TLS certificate' "$work/server.log")" -gt "$mark" ] && break; sleep 0.1; done
cp "$work/conf.orig" "$conf"
tail -n 5 "$work/server.log" | grep -q "level=warn prog=groupsrv fn=[a-z_]* msg=\"the configuration file changed since serve started and is not valid; a restart would not start\" path=\"$conf\" err=\"$conf:[0-9]*: " ||
  fail "SIGHUP after an edit that broke the configuration: no warning that a restart would not start"
expect_status 200 "" "healthz after SIGHUP with a broken configuration" -- anon "$base/healthz"
ok "SIGHUP after an edit that broke the configuration file says a restart would not start, and names the line"
# The compare runs in the supervisor's event loop: a configuration path
# that became a FIFO (or a device) must not block it in open() waiting
# for a writer, which stopped every later reload, restart and stop.
mv "$conf" "$work/conf.real"
mkfifo "$conf"
mark=$(grep -c 'reloaded TLS certificate' "$work/server.log")
kill -HUP "$srv_pid"
for _ in $(seq 1 50); do [ "$(grep -c 'reloaded TLS certificate' "$work/server.log")" -gt "$mark" ] && break; sleep 0.1; done
hup_done=$(grep -c 'reloaded TLS certificate' "$work/server.log")
[ "$hup_done" -gt "$mark" ] || timeout 5 sh -c ': > "$1"' sh "$conf" || true # unblock a stuck one
rm -f "$conf"
mv "$work/conf.real" "$conf"
[ "$hup_done" -gt "$mark" ] || fail "SIGHUP with a FIFO at the configuration path: the supervisor blocked, no reload"
grep -q "level=warn prog=groupsrv fn=[a-z_]* msg=\"the configuration file cannot be read again; .*\" path=\"$conf\" err=\"not a regular file\"" \
  "$work/server.log" || fail "SIGHUP with a FIFO at the configuration path: no warning naming it"
ok "SIGHUP with a FIFO at the configuration path neither blocks nor reads it"
c admin "$base/metrics" > "$work/m2.txt"
promcheck "$work/m2.txt" --before "$work/m1.txt" --documented "$SRC/docs/api.md" ||
  fail "/metrics after SIGHUP: $(cat "$work/m2.txt")"
ok "/metrics: strict 0.0.4, as documented, +3 unwraps and +1 refusal, no counter set back by SIGHUP"

# ---- audit chain ----
"$BIN/groupsrv" -c "$conf" audit verify >/dev/null || fail "audit verify on a good log"
lines=$(wc -l < "$work/audit.jsonl")
[ "$lines" -gt 10 ] || fail "audit has $lines lines"
ok "audit verify passes ($lines lines)"

# ---- the diagnostic log, as a log shipper reads it ----
# Every line one record of key=value fields (operations.md), also the
# token's refusal above (RSA-OAEP-256), whose detail has spaces.
grep -q 'detail="token does not support RSA-OAEP with SHA-256' "$work/server.log" ||
  fail "no quoted detail of the RSA-OAEP-256 refusal in the log"
/usr/bin/python3 "$SRC/tests/lib/logcheck.py" "$work/server.log" || fail "the server log is not one record per line"
ok "server log: one key=value record per line"
# [server] access_log: a line per request with who asked what, tied to
# the answer's X-Request-Id; the body (a wrapped key) is never in the log.
rid=$(c alice -D - -o /dev/null --data-binary @"$work/m-req.json" "$base/v1/groups/eng/unwrap" |
  tr -d '\r' | awk 'tolower($1) == "x-request-id:" {print $2}')
c carol -o /dev/null --data-binary @"$work/m-req.json" "$base/v1/groups/eng/unwrap" || true
anon -o /dev/null "$base/healthz?x=%22%20a%3Db"
for _ in $(seq 1 20); do grep -q 'path="/healthz?x=' "$work/server.log" && break; sleep 0.1; done
grep -Eq " req=$rid msg=\"request\" method=POST path=\"/v1/groups/eng/unwrap\" status=200 ms=[0-9.]+ identity=\"alice@example.org\" client=127\.0\.0\.1 listener=api\$" \
  "$work/server.log" || fail "no access line for alice's unwrap $rid: $(grep 'msg="request"' "$work/server.log" | tail -n 3)"
grep -Eq ' msg="request" method=POST path="/v1/groups/eng/unwrap" status=403 .* identity="carol@example.org" ' "$work/server.log" ||
  fail "no access line for carol's refused unwrap"
grep -Eq ' msg="request" method=GET path="/healthz\?x=%22%20a%3Db" status=200 .* identity="-" client=127\.0\.0\.1 ' "$work/server.log" ||
  fail "no access line for an anonymous /healthz: $(grep 'healthz' "$work/server.log" | tail -n 2)"
if grep -qF "$(b64 "$work/ri.der" | head -c 40)" "$work/server.log"; then fail "a request body is in the log"; fi
/usr/bin/python3 "$SRC/tests/lib/logcheck.py" "$work/server.log" || fail "the access lines are not key=value records"
ok "access_log: one line per request (method, path, status, ms, identity, client), req= the X-Request-Id, no body"

# ---- removal: what docs/api.md (Authentication) says a removed member keeps ----
gs member remove eng bob@example.org >/dev/null
expect_status 403 not_a_member "bob removed: refused on the next request" -- c bob --data-binary @"$work/req-rk.json" \
  "$base/v1/groups/eng/unwrap"
expect_status 200 "" "bob's membership certificate got before the removal still unwraps (it names no one)" -- \
  gcurl --data-binary @"$work/req-rk.json" "$base/v1/groups/eng/unwrap"
# ... and operations.md's "Remove a member", the operator's procedure, says so
awk '/^- Remove a member: /{on=1} on && /^- / && !/^- Remove a member: /{exit} on' "$SRC/docs/operations.md" | tr '\n' ' ' |
  grep -q 'membership certificate.*unwraps until.*`\[certsrv\] lifetime`' ||
  fail "operations.md's 'Remove a member' does not say a membership certificate got before unwraps until [certsrv] lifetime"

# ---- graceful stop ----
kill -TERM "$srv_pid"
wait "$srv_pid" || fail "server exit status after SIGTERM"
srv_pid=
ok "SIGTERM: clean exit"
