#!/usr/bin/env bash
# server-api-examples.sh BIN SRC: extracts the ```sh blocks of the section
# "Every endpoint with curl" of docs/api.md and runs them, in order, as
# written, against a real group server on SoftHSM (server-lib.sh).
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/server-lib.sh"
start_server

script=$work/api-examples.sh
{
  echo 'set -euo pipefail'
  awk '/^## Every endpoint with curl/ {sec=1; next} /^## / {sec=0} sec && /^```sh$/ {on=1; next}
       on && /^```$/ {on=0; next} on {print}' "$SRC/docs/api.md"
  echo 'echo EXAMPLES-DONE'
} > "$script"
n=$(awk '/^## Every endpoint with curl/ {sec=1; next} /^## / {sec=0} sec && /^```sh$/' "$SRC/docs/api.md" | wc -l)
[ "$n" -ge 7 ] || fail "expected at least 7 example blocks, found $n"
# Every path of the REST table appears in an example.
for path in /healthz /metrics '/v1/groups/$GROUP"' /certificate /unwrap\" /unwrap-batch /rewrap /secret-keys \
  /membership-certificates /members\" '/members/new.member' '/v1/groups"'; do
  grep -qF -- "$path" "$script" || fail "no curl example for $path"
done

mkdir -p "$work/examples"
out=$(cd "$work/examples" && env SERVER="$base" CERTSRV="$cbase" GROUP=eng CACERT="$certs/tca.pem" \
  CERT="$certs/alice@example.org.pem" KEY="$certs/alice@example.org.key" \
  ADMIN_CERT="$certs/admin@example.org.pem" ADMIN_KEY="$certs/admin@example.org.key" \
  DLE_CERT="$certs/dle@example.org.pem" DLE_KEY="$certs/dle@example.org.key" RI="$work/ri.der" CALG=aes-256-cbc \
  PATH="/usr/bin:$PATH" bash "$script" 2>&1) || fail "examples failed: $(tail -n 20 <<<"$out")"
grep -q EXAMPLES-DONE <<<"$out" || fail "examples did not finish"
# What they produced is right: the F key decrypts the openssl cms message,
# the E KTRI opens it with openssl cms, the membership certificate has no identity.
check_cek "$(od -An -tx1 "$work/examples/cek.bin" | tr -d ' \n')"
check_ktri "$work/examples/ktri-for-me.der" "$certs/alice@example.org.pem" "$certs/alice@example.org.key"
openssl x509 -in "$work/examples/anon.pem" -noout -ext subjectAltName 2>/dev/null | grep -q 'email:' &&
  fail "membership certificate carries an email address"
# The groups the examples made: POST /v1/groups accepts PKCS#1 v1.5 unless
# "allow_pkcs1v15": false; the member wrap the PUT asked for was kept.
[ "$(anon "$base/v1/groups/ops" | json_get /dev/stdin key_transports)" = "['RSA-OAEP', 'RSA-PKCS1-v1_5']" ] ||
  fail "a group made by POST /v1/groups does not accept v1.5 by default"
[ "$(anon "$base/v1/groups/strict" | json_get /dev/stdin key_transports)" = "['RSA-OAEP']" ] ||
  fail "allow_pkcs1v15 false did not make an RSA-OAEP-only group"
ok "all $n example blocks of docs/api.md ran as written ($(grep -c . "$script") lines)"

# The answers api.md shows as JSON are the server's: the discovery example
# has every member the server sends and no other (nested ones too), and
# the error example is the one a removed member gets, word for word, and
# /healthz's 200 is the one shown.
. "$SRC/tests/lib/docblocks.sh"
doc_block "$SRC/docs/api.md" 'GET /v1/groups/{g} (anyone)' 1 json > "$work/doc-group.json" || fail "no discovery example"
anon "$base/v1/groups/eng" > "$work/live-group.json"
doc_block "$SRC/docs/api.md" 'Errors' 1 json > "$work/doc-error.json" || fail "no error example"
c carol --data-binary "{\"recipient_info\":\"$(b64 "$work/ri.der")\",\"content_algorithm\":\"aes-256-cbc\"}" \
  "$base/v1/groups/eng/unwrap" > "$work/live-error.json"
sed -n 's/^`200 \({"status".*}\)`.*/\1/p' "$SRC/docs/api.md" > "$work/doc-healthz.json"
[ -s "$work/doc-healthz.json" ] || fail "no /healthz answer in docs/api.md"
anon "$base/healthz" > "$work/live-healthz.json"
/usr/bin/python3 - "$work" <<'PY' || fail "docs/api.md's JSON examples differ from the server's answers"
import json, sys
w = sys.argv[1]
def shape(v):  # the members of every object, nested; list items by their first
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    if isinstance(v, list) and v and isinstance(v[0], dict):
        return [shape(v[0])]
    return None
for doc, live, exact in (("doc-group.json", "live-group.json", False), ("doc-error.json", "live-error.json", True),
                         ("doc-healthz.json", "live-healthz.json", True)):
    d, l = json.load(open(f"{w}/{doc}")), json.load(open(f"{w}/{live}"))
    if (d != l) if exact else (shape(d) != shape(l)):
        sys.exit(f"{doc}: {json.dumps(d)}\n the server: {json.dumps(l)}")
PY
ok "docs/api.md's discovery, error and /healthz examples have the server's fields and words"

# What api.md says of caching: discovery and the group certificate are
# never kept by a cache, and conditional or partial requests get the whole
# current answer.
for p in /v1/groups/eng /v1/groups/eng/certificate; do
  code=$(anon -o "$work/cache.body" -D "$work/cache.head" -w '%{http_code}' -H 'If-None-Match: *' \
    -H 'If-Modified-Since: Tue, 01 Jan 2036 00:00:00 GMT' -H 'Range: bytes=0-9' "$base$p")
  [ "$code" = 200 ] && [ "$(stat -c %s "$work/cache.body")" -gt 10 ] || fail "$p: conditional or range request: HTTP $code"
  tr -d '\r' < "$work/cache.head" | grep -qx 'Cache-Control: no-store' || fail "$p: no Cache-Control: no-store"
  tr -d '\r' < "$work/cache.head" | grep -qiE '^(ETag|Last-Modified):' && fail "$p: a validator api.md does not name"
done
ok "discovery and the group certificate: no-store, no validators, conditional and range requests answered whole"
# Methods as api.md lists them: OPTIONS and PATCH a wrong method (405 with
# Allow), TRACE and CONNECT libevent's 501 like an unknown one.
for m in OPTIONS PATCH TRACE CONNECT BREW; do
  code=$(anon -X "$m" -o /dev/null -D "$work/m.head" -w '%{http_code}' "$base/v1/groups/eng")
  case $m in OPTIONS | PATCH) want=405 ;; *) want=501 ;; esac
  [ "$code" = "$want" ] || fail "$m: HTTP $code, api.md says $want"
  if [ "$want" = 405 ]; then grep -qi '^Allow: GET, HEAD' "$work/m.head" || fail "$m: no Allow"; fi
done
ok "OPTIONS and PATCH 405 with Allow; TRACE, CONNECT and an unknown method 501"
