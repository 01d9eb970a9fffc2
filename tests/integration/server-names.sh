#!/usr/bin/env bash
# server-names.sh BIN SRC: odd but valid names, through the documented
# interfaces (docs/api.md "Admin: members and groups", groupsrv(1)
# `member add`):
#   - a certificate `member add --cert` records authenticates as that
#     member, and one it refuses would not: the address is taken by one
#     rule for both (SAN e-mail, else a CN that is an address, else the
#     subject emailAddress of older S/MIME CAs); before, a certificate with
#     its address only in emailAddress was recorded and then refused as
#     not_a_member, one with its address as CN was refused by member add,
#     and one with CN=frank and emailAddress=grace was recorded as grace's
#     and authenticated as frank
#   - plus addressing and case: a member PUT as Mixed+Tag@Example.ORG is
#     the certificate's mixed+tag@example.org
#   - group names at their documented limit: 64 characters yes, 65 no
#   - valid JSON the parser cannot hold (huge numbers, deep nesting) is
#     bad_json saying so, not "malformed JSON"
set -euo pipefail
BIN=$1 SRC=$2
SRV_MEMBERS="alice"
. "$SRC/tests/integration/server-lib.sh"
mkcert() { # mkcert NAME SUBJECT [SAN]: an RSA client certificate from the test CA
  openssl req -new -newkey rsa:2048 -nodes -subj "$2" -keyout "$certs/$1.key" -out "$work/$1.csr" 2>/dev/null
  { echo "extendedKeyUsage=clientAuth,emailProtection"; [ -z "${3:-}" ] || echo "subjectAltName=$3"; } > "$work/$1.ext"
  openssl x509 -req -in "$work/$1.csr" -CA "$certs/tca.pem" -CAkey "$certs/tca.key" -CAcreateserial -days 1 \
    -extfile "$work/$1.ext" -out "$certs/$1.pem" 2>/dev/null
}
as() { local who=$1; shift; curl -sS --cacert "$certs/tca.pem" --cert "$certs/$who.pem" --key "$certs/$who.key" "$@"; }
mkcert legacy "/CN=Dave Legacy/emailAddress=dave@example.org"
mkcert cnonly "/CN=erin@example.org"
mkcert both "/CN=frank@example.org/emailAddress=grace@example.org"
mkcert plus "/CN=Mixed Tag" "email:mixed+tag@example.org"

gs member add eng dave@example.org --cert "$certs/legacy.pem" > "$work/out" 2>&1 ||
  fail "member add with the address in emailAddress: $(cat "$work/out")"
gs member add eng erin@example.org --cert "$certs/cnonly.pem" > "$work/out" 2>&1 ||
  fail "member add with the address as CN: $(cat "$work/out")"
rc=0
gs member add eng grace@example.org --cert "$certs/both.pem" > "$work/out" 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "member add grace with a certificate the server knows as frank: exit $rc"
grep -q "certificate is for frank@example.org, not grace@example.org" "$work/out" ||
  fail "member add grace: $(cat "$work/out")"
gs member add eng frank@example.org --cert "$certs/both.pem" > "$work/out" 2>&1 ||
  fail "member add frank: $(cat "$work/out")"
ok "member add takes the address the server authenticates by"
start_server
for who in legacy cnonly both; do
  expect_status 200 "" "secret-keys with the $who certificate" -- as "$who" "$base/v1/groups/eng/secret-keys"
done

expect_status 201 "" "PUT Mixed+Tag@Example.ORG" -- \
  c admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/Mixed+Tag@Example.ORG"
expect_status 200 "" "secret-keys as mixed+tag@example.org" -- as plus "$base/v1/groups/eng/secret-keys"
expect_status 200 "" "GET members/MIXED%2BTAG%40EXAMPLE.ORG" -- \
  c admin "$base/v1/groups/eng/members/MIXED%2BTAG%40EXAMPLE.ORG"
grep -q '"email":"Mixed+Tag@Example.ORG"' "$work/body" || fail "member record: $(cat "$work/body")"

# an address at the RFC 5321 limits (a 64-octet local part, 254 octets in
# all) with characters a URL path must percent-encode: its path segment is
# longer than 256 octets as sent, yet names the address (before: 404)
long=$(/usr/bin/python3 -c 'l="a%b#c?d{e}f^g|h`i"; print(l + "x" * (64 - len(l)) + "@" + "y" * 63 + "." + "z" * 63 + "." + "w" * 61)')
enc=$(/usr/bin/python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe="@"))' "$long")
[ "${#long}" = 254 ] && [ "${#enc}" -gt 256 ] || fail "the long address: ${#long} octets, ${#enc} encoded"
expect_status 201 "" "PUT an address of 254 octets, percent-encoded" -- \
  c admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/$enc"
expect_status 200 "" "GET the address of 254 octets" -- c admin "$base/v1/groups/eng/members/$enc"
expect_status 200 "" "DELETE the address of 254 octets" -- c admin -X DELETE "$base/v1/groups/eng/members/$enc"
expect_status 400 bad_request "PUT an address of 255 octets" -- \
  c admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/w$enc"

n64=$(printf 'g%.0s' $(seq 1 64))
expect_status 201 "" "a group name of 64 characters" -- c admin --data \
  "{\"name\":\"$n64\",\"address\":\"long@example.org\",\"keyspec\":\"rsa:2048\",\"methods\":[\"tls\"]}" "$base/v1/groups"
expect_status 400 bad_request "a group name of 65 characters" -- c admin --data \
  "{\"name\":\"${n64}g\",\"address\":\"longer@example.org\",\"keyspec\":\"rsa:2048\",\"methods\":[\"tls\"]}" "$base/v1/groups"
expect_status 200 "" "discovery of the 64-character group" -- anon "$base/v1/groups/$n64"
# valid JSON the parser cannot hold is bad_json saying what, not "malformed
# JSON" (which sent script authors looking for a typo)
bj() { # bj BODY WORDS DESC
  expect_status 400 bad_json "$3" -- c admin --data-binary "$1" "$base/v1/groups"
  grep -qF "\"message\":\"$2" "$work/body" && grep -q " at line 1 column [0-9]*\"" "$work/body" ||
    fail "$3: $(cat "$work/body")"
}
bj '{"name":"n","key_version":123456789012345678901234567890}' "a number out of range" "a 30-digit integer"
bj '{"name":"n","x":1e999}' "a number out of range" "1e999"
bj "{\"x\":$(printf '[%.0s' $(seq 1 2100))$(printf ']%.0s' $(seq 1 2100))}" "JSON nested too deeply" "2100 nested arrays"
bj '{"name":"n\u0000x"}' 'a \\u0000 in a JSON string' "a \\u0000 in a string"
bj '{"name":"n","a\u0000b":1}' 'a \\u0000 in a JSON string' "a \\u0000 in an object's key (jansson's own code for it)"
bj $'{"name":"\xff"}' "JSON that is not UTF-8" "a byte that is not UTF-8"
bj '{"name":"n"' "malformed JSON" "an object not closed"
# JSON that parses but is no object is said so, a scalar as an array (the
# certificate server: JSON without a string csr, bad_request): a script
# that sent a JSON string or number was told "malformed JSON"
for v in '5' '"eng"' 'null' '[1]'; do
  expect_status 400 bad_json "a body of JSON $v" -- c admin --data-binary "$v" "$base/v1/groups"
  grep -qF '"message":"the body must be a JSON object"' "$work/body" || fail "a body of JSON $v: $(cat "$work/body")"
  expect_status 400 bad_request "a CSR body of JSON $v" -- c alice -H 'Content-Type: application/json' \
    --data-binary "$v" "$cbase/v1/groups/eng/membership-certificates"
  grep -qF '"message":"JSON body must be {\"csr\": PEM}"' "$work/body" || fail "a CSR body of JSON $v: $(cat "$work/body")"
done
# A '%' in a path not followed by two hex digits is no percent-encoding
# (RFC 3986 2.1): refused 400, never taken as a literal '%'. Before, PUT
# members/a%ZZ@example.org made a member "a%ZZ@example.org" while
# members/a%41@example.org named "aA@example.org": which one a script
# that forgot to send '%' as %25 reached depended on the bytes after it.
for t in 'members/a%ZZ@example.org' 'members/a%4@example.org' 'members/a%@example.org' 'members/a%g1@example.org'; do
  expect_status 400 bad_request "PUT $t" -- c admin -X PUT --data '{}' "$base/v1/groups/eng/$t"
  grep -qF 'a % not followed by two hex digits' "$work/body" || fail "PUT $t: $(cat "$work/body")"
done
expect_status 400 bad_request "GET a group named with a bad percent-encoding" -- anon "$base/v1/groups/e%ZZ"
expect_status 404 not_found "GET members/a%ZZ@example.org (nothing was made)" -- \
  c admin "$base/v1/groups/eng/members/a%25ZZ@example.org"
expect_status 400 bad_request "POST membership-certificates of a group named with a bad percent-encoding" -- \
  c alice --data '{}' "$cbase/v1/groups/e%2/membership-certificates"
ok "a '%' not followed by two hex digits in a path is 400 bad_request on both listeners, no member made"
# before any route and for every method: HEAD (no body), OPTIONS, a path
# no route has, and the target in absolute form
expect_status 400 "" "HEAD a group named with a bad percent-encoding" -- anon -I "$base/v1/groups/e%ZZ"
expect_status 400 bad_request "OPTIONS members/a%ZZ@example.org" -- c admin -X OPTIONS "$base/v1/groups/eng/members/a%ZZ@example.org"
grep -qF 'a % not followed by two hex digits' "$work/body" || fail "OPTIONS: $(cat "$work/body")"
expect_status 400 "" "HEAD on the certificate server's listener, a path no route has" -- anon -I "$cbase/v1/no%such"
expect_status 400 bad_request "absolute-form target with a bad percent-encoding" -- \
  c admin --request-target "https://127.0.0.1:$port/v1/groups/e%ZZ" "$base/"
grep -qF 'a % not followed by two hex digits' "$work/body" || fail "absolute form: $(cat "$work/body")"
# and what is a percent-encoding still is: lower-case hex digits, UTF-8
# (a group name refuses it, 400 saying why, not "malformed percent-encoding")
expect_status 200 "" "GET members/mixed%2btag%40example.org (lower-case hex)" -- \
  c admin "$base/v1/groups/eng/members/mixed%2btag%40example.org"
status anon "$base/v1/groups/caf%C3%A9" > /dev/null
grep -q "malformed percent-encoding" "$work/body" && fail "UTF-8 %C3%A9 taken as malformed: $(cat "$work/body")"
ok "lower-case hex and UTF-8 percent-encodings are decoded, not refused"
stop_server
