#!/usr/bin/env bash
# server-time.sh BIN SRC: groupsrv as time passes, against a real `groupsrv
# serve` on a SoftHSM token, with curl, openssl and python's ssl module as
# peers. Certificates with chosen validity windows (tests/integration/
# time-cert.py) stand in for the passing of time; the longest wait is a
# few seconds.
#   - client certificates not yet valid, and one expiring on a kept-alive
#     connection: 401 certificate_expired (SECURITY.md);
#   - member add and member PUT refuse a certificate that is not valid now.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/server-lib.sh"
start_server
url=$base/v1/groups/eng/unwrap
printf '{"recipient_info":"%s"}' "$(b64 "$work/ri.der")" > "$work/req-tls.json"
tcert() { /usr/bin/python3 "$SRC/tests/integration/time-cert.py" "$1" "$certs/tca.key" "$certs/tca.pem" "${@:2}"; }

# ---- client certificates ----
tcert client "$work/early" 3600 86400 alice@example.org
# (alice's recorded certificate is another: certificate_mismatch would come
# after the validity check; the check comes first)
expect_status 401 certificate_expired "client certificate not yet valid" -- \
  curl -sS --cacert "$certs/tca.pem" --cert "$work/early.pem" --key "$work/early.key" --data-binary @"$work/req-tls.json" "$url"
# One that expires while its connection is kept alive: the verification a
# connection remembers lasts only until the chain's earliest notAfter.
# kai: a member without a recorded certificate, so any certificate of a
# client CA naming kai is theirs.
expect_status 201 "" "kai added without a certificate" -- \
  c admin -X PUT --data-binary '{"role":"member"}' "$base/v1/groups/eng/members/kai@example.org"
tcert client "$work/brief" -60 5 kai@example.org
/usr/bin/python3 - "$certs/tca.pem" "$work/brief.pem" "$work/brief.key" "$port" "$work/req-tls.json" > "$work/ka.out" <<'PY'
import http.client, json, socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[1])
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
h = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[4]), context=ctx, timeout=20)
body = open(sys.argv[5], "rb").read()
h.request("POST", "/v1/groups/eng/unwrap", body)
r = h.getresponse(); first = (r.status, r.read())
sock = h.sock
time.sleep(7)  # past the certificate's notAfter (5 s)
h.request("POST", "/v1/groups/eng/unwrap", body)
r = h.getresponse(); second = (r.status, json.loads(r.read())["error"]["code"] if r.status != 200 else "")
print(first[0], second[0], second[1], "same-connection" if h.sock is sock else "new-connection")
PY
[ "$(cat "$work/ka.out")" = "200 401 certificate_expired same-connection" ] ||
  fail "certificate expiring on a kept-alive connection: $(cat "$work/ka.out")"
ok "a certificate expiring on a kept-alive connection is refused at its next request (401 certificate_expired)"

# ---- member add / PUT ----
tcert client "$work/old" -86400 -3600 zed@example.org
tcert client "$work/later" 3600 86400 zed@example.org
if gs member add eng zed@example.org --cert "$work/old.pem" 2>"$work/err"; then fail "member add took an expired certificate"; fi
grep -q "certificate expired on 20[0-9-]* [0-9:]* UTC" "$work/err" || fail "member add, expired: $(cat "$work/err")"
if gs member add eng zed@example.org --cert "$work/later.pem" 2>"$work/err"; then
  fail "member add took a certificate not yet valid"
fi
grep -q "certificate is not valid before 20[0-9-]* [0-9:]* UTC" "$work/err" || fail "member add, not yet valid: $(cat "$work/err")"
gs member list eng | grep -q zed@ && fail "a refused member add recorded the member"
ok "member add refuses a certificate that is not valid now (exit 1, the date named)"
/usr/bin/python3 -c 'import json,sys; print(json.dumps({"certificate": open(sys.argv[1]).read()}))' "$work/old.pem" > "$work/put.json"
expect_status 400 bad_certificate "member PUT with an expired certificate" -- \
  c admin -X PUT --data-binary @"$work/put.json" "$base/v1/groups/eng/members/zed@example.org"
grep -q "expired on" "$work/body" || fail "the PUT refusal does not say why: $(cat "$work/body")"
expect_status 404 not_found "the refused PUT recorded nothing" -- c admin "$base/v1/groups/eng/members/zed@example.org"

