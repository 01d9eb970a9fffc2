#!/usr/bin/env bash
# server-time.sh BIN SRC: groupsrv as time passes, against a real `groupsrv
# serve` on a SoftHSM token, with curl, openssl and python's ssl module as
# peers. Certificates with chosen validity windows (tests/integration/
# time-cert.py) stand in for the passing of time; the longest wait is a
# few seconds.
#   - client certificates not yet valid, and one expiring on a kept-alive
#     connection: 401 certificate_expired (SECURITY.md);
#   - member-certs copies are not wrapped to an expired member certificate;
#   - member add and member PUT refuse a certificate that is not valid now;
#   - group import-cert (renewing the group certificate for the same key)
#     refuses an expired certificate and keeps mail sent to the certificate
#     it replaced readable, across a restart; so does group renew-cert (the
#     local CA renews it for the same key); groupmail encrypt refuses an
#     expired group certificate, pinned or given;
#   - SIGHUP keeps the TLS certificate when the new one is not valid now,
#     and takes up a renewed one; serve starts with an expired one, warning;
#     /metrics says when the served one expires; a CRL past its nextUpdate
#     makes its CA's certificates untrusted;
#   - the membership certificate's window: lifetime, backdated 60 s; one
#     out of its window is refused (401 certificate_expired); groupmail
#     reuses its cached one until a minute before its end, and never
#     tries an expired one; the
#     local CA's certificates end no later than the CA's own; `check`
#     names the CA's end (and that it is near); ca renew-cert renews the
#     CA certificate for the same key: certificates issued before verify
#     against it (openssl verify, and a TLS client certificate), group
#     renew-cert then lasts its full lifetime, /metrics names the CA
#     certificate's end (groupsrv_ca_certificate_not_after_seconds), and
#     SIGHUP takes the renewed CA certificate up;
#   - audit verify accepts records whose times go backwards (a clock step).
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
t0=$(date +%s)
expect_status 201 "" "kai added without a certificate" -- \
  c admin -X PUT --data-binary '{"role":"member"}' "$base/v1/groups/eng/members/kai@example.org"
added=$(json_get "$work/body" added)
[ "$added" -ge $((t0 - 1)) ] && [ "$added" -le $(($(date +%s) + 1)) ] || fail "\"added\" is not the Unix time of the PUT: $added"
tcert client "$work/brief" -60 5 kai@example.org
# lee: recorded with a certificate that expires meanwhile (member-certs below).
tcert client "$work/lee" -60 5 lee@example.org
gs member add eng lee@example.org --cert "$work/lee.pem" >/dev/null
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

# ---- member-certs: no copy wrapped to an expired certificate ----
printf '{"recipient_info":"%s","to":"members"}' "$(b64 "$work/ri.der")" > "$work/rw.json"
expect_status 200 "" "rewrap to members" -- c dle --data-binary @"$work/rw.json" "$base/v1/groups/eng/rewrap"
json_get "$work/body" members > "$work/rw-members"
grep -q "alice@example.org" "$work/rw-members" || fail "alice got no member-certs copy: $(cat "$work/rw-members")"
grep -q "lee@example.org" "$work/rw-members" && fail "a copy was wrapped to lee's expired certificate"
grep -q 'no copy for a member whose certificate is not valid now.*member=lee@example.org' "$work/server.log" ||
  fail "the skipped member is not logged"
ok "member-certs: a member whose recorded certificate expired gets no copy"

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
grep '"action":"member-add"' "$work/audit.jsonl" | tail -n 1 |
  grep -q '"identity":"admin@example.org","group":"eng","outcome":"invalid certificate","member":"zed@example.org"' ||
  fail "the refused PUT is not audited: $(tail -n 1 "$work/audit.jsonl")"
expect_status 404 not_found "the refused PUT recorded nothing" -- c admin "$base/v1/groups/eng/members/zed@example.org"

# ---- the group certificate: renewal for the same key ----
gs group show eng --pubkey > "$work/gpub.pem"
tcert group "$work/gexp" -86400 -3600 eng@example.org "$work/gpub.pem"
if gs group import-cert eng --cert "$work/gexp.pem" 2>"$work/err"; then fail "import-cert took an expired certificate"; fi
grep -q "certificate expired on" "$work/err" || fail "import-cert, expired: $(cat "$work/err")"
ok "group import-cert refuses an expired certificate"
renew() { # renew N: a renewed group certificate for the same key, imported; mail N encrypted to it
  tcert group "$work/gnew$1" -60 86400 eng@example.org "$work/gpub.pem"
  gs group import-cert eng --cert "$work/gnew$1.pem" >/dev/null
  openssl cms -encrypt -binary -aes-256-cbc -in "$work/msg.txt" -outform DER -out "$work/msg$1.der" \
    -recip "$work/gnew$1.pem" -keyopt rsa_padding_mode:oaep 2>/dev/null
  cms ri "$work/msg$1.der" "$work/ri$1.der"
  printf '{"recipient_info":"%s"}' "$(b64 "$work/ri$1.der")" > "$work/req$1.json"
}
unwrap_all() { # unwrap_all WHEN N...: mail 0 (to the first certificate) and mail N... unwrap
  local when=$1 n want key
  shift
  want=$(status c alice --data-binary @"$work/req-tls.json" "$url")
  [ "$want" = 200 ] || fail "$when: mail to the certificate first issued: HTTP $want $(head -c 300 "$work/body")"
  key=$(json_get "$work/body" key)
  for n in "$@"; do
    want=$(status c alice --data-binary @"$work/req$n.json" "$url")
    [ "$want" = 200 ] || fail "$when: mail to renewed certificate $n: HTTP $want $(head -c 300 "$work/body")"
  done
  check_cek "$(b64d "$key" | od -An -tx1 | tr -d ' \n')"
  ok "$when: mail to every certificate of the key unwraps"
}
renew 1
# The server takes up the new record at its next look at the database.
for _ in $(seq 1 50); do
  anon "$base/v1/groups/eng/certificate" > "$work/served.pem"
  cmp -s <(openssl x509 -in "$work/served.pem" -outform DER) <(openssl x509 -in "$work/gnew1.pem" -outform DER) && break
  sleep 0.1
done
cmp -s <(openssl x509 -in "$work/served.pem" -outform DER) <(openssl x509 -in "$work/gnew1.pem" -outform DER) ||
  fail "the server does not serve the renewed group certificate"
unwrap_all "after a renewal" 1
renew 2
sleep 1
unwrap_all "after a second renewal" 1 2
gs group show eng --cert | cmp -s - "$work/gnew2.pem" || fail "group show --cert is not the renewed certificate"
stop_server
start_server
unwrap_all "after a restart" 1 2
# The local CA renews the certificate for the same key.
rc=0
gs group renew-cert eng --version 9 2>"$work/err" || rc=$?
[ "$rc" = 3 ] || fail "renew-cert of a version that does not exist: exit $rc: $(cat "$work/err")"
gs group renew-cert eng > "$work/out" || fail "group renew-cert"
gs group show eng --cert > "$work/gnew3.pem"
cmp -s "$work/gnew3.pem" "$work/gnew2.pem" && fail "group renew-cert left the certificate as it was"
cmp -s <(openssl x509 -in "$work/gnew3.pem" -noout -pubkey) "$work/gpub.pem" || fail "renew-cert changed the key"
openssl verify -CAfile "$certs/localca.pem" "$work/gnew3.pem" >/dev/null || fail "the renewed certificate is not the local CA's"
end=$(date -d "$(openssl x509 -in "$work/gnew3.pem" -noout -enddate | cut -d= -f2)" +%s)
[ $((end - $(date +%s))) -gt $((824 * 86400)) ] || fail "the renewed certificate does not last [ca] group_cert_days"
openssl cms -encrypt -binary -aes-256-cbc -in "$work/msg.txt" -outform DER -out "$work/msg3.der" \
  -recip "$work/gnew3.pem" -keyopt rsa_padding_mode:oaep 2>/dev/null
cms ri "$work/msg3.der" "$work/ri3.der"
printf '{"recipient_info":"%s"}' "$(b64 "$work/ri3.der")" > "$work/req3.json"
sleep 1
unwrap_all "after a renewal by the local CA (renew-cert)" 1 2 3

# ---- groupmail encrypt: never to an expired group certificate ----
gm_home_init
cat "$certs/localca.pem" "$certs/tca.pem" > "$work/groupca.pem"
sed -i "s|^group_ca = .*|group_ca = $work/groupca.pem|" "$gm_home/.config/groupmail/config"
printf 'Subject: t\n\nhello\n' > "$work/m.txt"
gm_encrypt_refused() { # gm_encrypt_refused DESC WHY-REGEX ARGS...: exit 4, the reason, nothing written
  local desc=$1 why=$2 rc=0
  shift 2
  "$BIN/groupmail" encrypt --in "$work/m.txt" --out "$work/m.p7m" "$@" 2>"$work/err" || rc=$?
  [ "$rc" = 4 ] || fail "$desc: exit $rc, wanted 4: $(cat "$work/err")"
  grep -Eq "$why" "$work/err" || fail "$desc: $(cat "$work/err")"
  [ ! -e "$work/m.p7m" ] || fail "$desc: output written"
  ok "$desc (exit 4)"
}
gm_encrypt_refused "groupmail encrypt --group-cert with an expired certificate" \
  "group certificate in .*gexp.pem expired on 20" --group-cert "$work/gexp.pem"
tcert group "$work/gbrief" -60 4 eng@example.org "$work/gpub.pem"
gs group import-cert eng --cert "$work/gbrief.pem" >/dev/null
for _ in $(seq 1 50); do
  "$BIN/groupmail" fetch-cert --repin >/dev/null 2>&1 && break
  sleep 0.1
done
"$BIN/groupmail" encrypt --in "$work/m.txt" --out "$work/m.p7m" || fail "encrypt to the pinned certificate while valid"
rm -f "$work/m.p7m"
sleep 5
gm_encrypt_refused "groupmail encrypt to a pinned group certificate that expired" \
  "group certificate pinned for eng expired on 20.*fetch-cert --repin"

# ---- the server's TLS certificate ----
# expect_not_after PEM DESC [METRIC]: /metrics' METRIC (default
# groupsrv_tls_certificate_not_after_seconds) is PEM's notAfter
expect_not_after() {
  local want got metric=${3:-groupsrv_tls_certificate_not_after_seconds}
  want=$(date -d "$(openssl x509 -in "$1" -noout -enddate | cut -d= -f2)" +%s)
  got=$(c admin "$base/metrics" | awk -v m="$metric" '$1 == m {print $2}')
  [ -n "$got" ] && [ $((got - want)) -ge -1 ] && [ $((got - want)) -le 1 ] ||
    fail "$2: $metric $got, the certificate's notAfter $want"
  ok "$2: /metrics $metric names the certificate's notAfter"
}
expect_not_after "$certs/server.pem" "at start"
cp "$certs/server.pem" "$work/server-orig.pem"
cp "$certs/server.key" "$work/server-orig.key"
before=$(served_serial)
tcert server "$work/sexp" -86400 -3600
cp "$work/sexp.pem" "$certs/server.pem"
cp "$work/sexp.key" "$certs/server.key"
kill -HUP "$srv_pid"
for _ in $(seq 1 50); do grep -q "the new TLS certificate is not taken up" "$work/server.log" && break; sleep 0.1; done
grep -q 'the new TLS certificate is not taken up.*expired on' "$work/server.log" || fail "SIGHUP with an expired certificate: not refused"
expect_status 200 "" "SIGHUP with an expired certificate keeps the previous one" -- anon "$base/healthz"
[ "$(served_serial)" = "$before" ] || fail "the served certificate changed"
expect_not_after "$work/server-orig.pem" "after a refused reload"
# The same certificate as a TRUSTED CERTIFICATE block (openssl x509
# -trustout) before a valid CA certificate: the network process serves that
# first block, but the validity check read past it and took the CA's dates.
n0=$(grep -c "the new TLS certificate is not taken up" "$work/server.log")
{ openssl x509 -in "$work/sexp.pem" -trustout; cat "$certs/tca.pem"; } > "$certs/server.pem"
kill -HUP "$srv_pid"
for _ in $(seq 1 50); do [ "$(grep -c "the new TLS certificate is not taken up" "$work/server.log")" -gt "$n0" ] && break; sleep 0.1; done
[ "$(grep -c 'the new TLS certificate is not taken up.*expired on' "$work/server.log")" -gt "$n0" ] &&
  [ "$(served_serial)" = "$before" ] || fail "SIGHUP with an expired certificate as a TRUSTED CERTIFICATE block: not refused"
tcert server "$work/srenew" -60 86400
cp "$work/srenew.pem" "$certs/server.pem"
cp "$work/srenew.key" "$certs/server.key"
want=$(openssl x509 -in "$work/srenew.pem" -noout -serial)
kill -HUP "$srv_pid"
for _ in $(seq 1 50); do [ "$(served_serial)" = "$want" ] && break; sleep 0.1; done
[ "$(served_serial)" = "$want" ] || fail "SIGHUP did not take up the renewed certificate"
expect_status 200 "" "SIGHUP takes up a renewed certificate" -- anon "$base/healthz"
expect_not_after "$work/srenew.pem" "after a renewal"
stop_server
cp "$work/sexp.pem" "$certs/server.pem"
cp "$work/sexp.key" "$certs/server.key"
: > "$work/server.log"
"$BIN/groupsrv" -c "$conf" serve >>"$work/server.log" 2>&1 &
srv_pid=$!
for _ in $(seq 1 100); do
  [ "$(curl -sk -o /dev/null -w '%{http_code}' "$base/healthz" || true)" = 200 ] && break
  kill -0 "$srv_pid" || fail "serve did not start with an expired certificate"
  sleep 0.1
done
grep -q 'level=warn .*serving a TLS certificate that clients refuse.*expired on' "$work/server.log" ||
  fail "serve started with an expired certificate without a warning"
ok "serve starts with an expired TLS certificate and warns"
stop_server
cp "$work/server-orig.pem" "$certs/server.pem"
cp "$work/server-orig.key" "$certs/server.key"
start_server

# ---- a CRL past its nextUpdate while serving ----
# kai (no recorded certificate) with a certificate of the file test CA,
# whose CRL in the client CA file runs out 4 s from now; with a CRL in
# the file the local CA's certificates need one too, so only kai asks.
tcert client "$work/kai" -60 86400 kai@example.org
tcert crl "$work/tca-crl" -60 4
cp "$certs/clients.pem" "$work/clients-nocrl.pem"
cat "$work/clients-nocrl.pem" "$work/tca-crl.pem" > "$certs/clients.pem"
hup_reload() {
  local n
  n=$(grep -c "reloaded TLS" "$work/server.log" || true)
  kill -HUP "$srv_pid"
  for _ in $(seq 1 50); do [ "$(grep -c "reloaded TLS" "$work/server.log" || true)" -gt "$n" ] && break; sleep 0.1; done
}
hup_reload
kai() { curl -sS --cacert "$certs/tca.pem" --cert "$work/kai.pem" --key "$work/kai.key" "$@"; }
expect_status 200 "" "a certificate whose CA's CRL is current" -- kai --data-binary @"$work/req-tls.json" "$url"
sleep 5
expect_status 401 untrusted_certificate "the same certificate once that CRL is past its nextUpdate" -- \
  kai --data-binary @"$work/req-tls.json" "$url"
cp "$work/clients-nocrl.pem" "$certs/clients.pem"
hup_reload

# ---- the membership certificate's window ----
openssl req -new -newkey rsa:2048 -nodes -subj /CN=x -keyout "$work/m.key" -out "$work/m.csr" 2>/dev/null
t0=$(date +%s)
c alice -f --data-binary @"$work/m.csr" -H 'Content-Type: application/pkcs10' \
  "$cbase/v1/groups/eng/membership-certificates" > "$work/m.pem" || fail "certify"
t1=$(date +%s)
nb=$(date -d "$(openssl x509 -in "$work/m.pem" -noout -startdate | cut -d= -f2)" +%s)
na=$(date -d "$(openssl x509 -in "$work/m.pem" -noout -enddate | cut -d= -f2)" +%s)
[ "$nb" -ge $((t0 - 61)) ] && [ "$nb" -le $((t1 - 59)) ] || fail "membership notBefore $nb is not 60 s before the request ($t0..$t1)"
[ "$na" -ge $((t0 + 3599)) ] && [ "$na" -le $((t1 + 3601)) ] || fail "membership notAfter $na is not [certsrv] lifetime after the request"
ok "membership certificate: notBefore 60 s back, notAfter lifetime ahead"
# groupmail's cache: a membership certificate is used until a minute before
# its end, then replaced; one past its end is never used. groupmail runs
# with its clock moved ahead (libfaketime); the server's stays.
# (The message goes to the group certificate groupmail pinned last.)
gm_home_init
certifies() { grep -c '"action":"certify"' "$work/audit.jsonl" || true; }
openssl cms -encrypt -binary -aes-256-cbc -in "$work/msg.txt" -out "$work/g.p7m" -recip "$work/gbrief.pem" \
  -keyopt rsa_padding_mode:oaep 2>/dev/null
gm_g() { # gm_g [FAKETIME-OFFSET]: decrypt --via membership-cert as alice, must succeed
  # (libfaketime is preloaded ahead of a sanitizer build's ASan runtime:
  # ASan's link-order check would refuse to start.)
  ${1:+env ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 faketime -f "$1"} "$BIN/groupmail" decrypt --via membership-cert --cert "$certs/alice@example.org.pem" \
    --key "$certs/alice@example.org.key" --in "$work/g.p7m" > "$work/g.out" 2>"$work/g.err" ||
    fail "decrypt --via membership-cert ${1:-now}: $(cat "$work/g.err")"
  cmp -s "$work/g.out" "$work/msg.txt" || fail "decrypt --via membership-cert ${1:-now}: wrong text"
}
n0=$(certifies)
gm_g
gm_g
[ "$(certifies)" = $((n0 + 1)) ] || fail "the cached membership certificate was not reused ($(certifies) certify records)"
gm_g +3000s
[ "$(certifies)" = $((n0 + 1)) ] || fail "a membership certificate with 10 minutes left was replaced"
gm_g +3545s
[ "$(certifies)" = $((n0 + 2)) ] || fail "a membership certificate with under a minute left was not replaced"
ok "groupmail: the membership certificate is reused, and replaced a minute before its end"

# on the token (pkcs11-tool), as the certificate server signs them.
# (pkcs11-tool --sign picks its key by --id only: the CA key's is looked up.)
ca_id=$(GS_PIN=$(cat "$pin_file") pkcs11-tool --module "$module" --token-label groupsrv --login --pin env:GS_PIN \
  --list-objects --type privkey 2>/dev/null | awk '$1 == "label:" {l = $2} $1 == "ID:" && l == "gs:ca" {print $2; exit}')
[ -n "$ca_id" ] || fail "no CA key on the token"
mcert() { # mcert NAME NOT_BEFORE NOT_AFTER: $work/NAME.pem and .key
  /usr/bin/python3 "$SRC/tests/integration/time-cert.py" membership "$certs/localca.pem" "$work/$1" "$2" "$3" eng
  GS_PIN=$(cat "$pin_file") pkcs11-tool --module "$module" --token-label groupsrv --login --pin env:GS_PIN \
    --sign --mechanism SHA256-RSA-PKCS --id "$ca_id" --input-file "$work/$1.tbs" --output-file "$work/$1.sig" \
    >"$work/p11.err" 2>&1 || fail "pkcs11-tool could not sign with the CA key: $(cat "$work/p11.err")"
  /usr/bin/python3 "$SRC/tests/integration/time-cert.py" assemble "$work/$1.tbs" "$work/$1.sig" "$work/$1.pem"
}
printf '{"recipient_info":"%s","deliver":"recipient-key"}' "$(b64 "$work/ri.der")" > "$work/req-g.json"
mc() { curl -sS --cacert "$certs/tca.pem" --cert "$work/$1.pem" --key "$work/$1.key" "${@:2}"; }
mcert mnow -60 600
expect_status 200 "" "a membership certificate signed on the token here is accepted" -- \
  mc mnow --data-binary @"$work/req-g.json" "$url"
mcert mold -7200 -3600
expect_status 401 certificate_expired "an expired membership certificate" -- mc mold --data-binary @"$work/req-g.json" "$url"
mcert mlater 3600 7200
expect_status 401 certificate_expired "a membership certificate not yet valid" -- \
  mc mlater --data-binary @"$work/req-g.json" "$url"
# An expired membership certificate in groupmail's cache is not even tried:
# no 401 from the server, a new certificate instead.
mc_cached=$(find "$gm_home/.local/share/groupmail/membership" -name '*.pem' | head -n 1)
[ -n "$mc_cached" ] || fail "no cached membership certificate"
cp "$work/mold.pem" "$mc_cached"
cp "$work/mold.key" "${mc_cached%.pem}.key"
unwrap_401s() { c admin "$base/metrics" | awk '$1 == "groupsrv_requests_total{endpoint=\"unwrap\",status=\"401\"}" {print $2}'; }
r0=$(unwrap_401s)
n0=$(certifies)
gm_g
[ "$(certifies)" = $((n0 + 1)) ] || fail "an expired cached membership certificate was not replaced"
[ "$(unwrap_401s)" = "$r0" ] || fail "groupmail tried an expired cached membership certificate (401s $r0 -> $(unwrap_401s))"
ok "groupmail: an expired cached membership certificate is replaced without being tried"

# ---- the local CA's certificates end no later than the CA's own ----
# A second state on the same token: its own database and CA key label.
conf2=$work/groupsrv2.conf
sed -e "s|^path = $work/groupsrv.db|path = $work/groupsrv2.db|" -e "s|^path = $work/audit.jsonl|path = $work/audit2.jsonl|" \
  "$conf" > "$conf2"
printf '[ca]\nkey_label = gs:ca-short\n' >> "$conf2"
gs2() { "$BIN/groupsrv" -c "$conf2" "$@"; }
gs2 ca init --key rsa:2048 --days 1 > /dev/null
gs2 group create short --address short@example.org --key rsa:2048 --methods tls > /dev/null
mkdir -p "$work/short"
gs2 member add short sam@example.org --issue-cert --out "$work/short" > /dev/null
ca_end=$(gs2 ca show | openssl x509 -noout -enddate)
[ "$(gs2 group show short --cert | openssl x509 -noout -enddate)" = "$ca_end" ] ||
  fail "the group certificate outlives the CA: $(gs2 group show short --cert | openssl x509 -noout -enddate), CA $ca_end"
[ "$(openssl x509 -in "$work/short/sam@example.org.pem" -noout -enddate)" = "$ca_end" ] ||
  fail "the member certificate outlives the CA"
ok "certificates of a CA with a day left end with it ($ca_end)"
# check names the CA's end, near it a note; ca renew-cert renews the CA
# for the same key, and then group renew-cert lasts its full lifetime.
gs2 check > "$work/check2.out" 2>&1 || true
# 1 day when check runs in the second of ca init (whole days left, of 86400 s)
grep -Eq "^ca cert   OK   valid until .* \([01] days\); renew it soon: groupsrv ca renew-cert$" "$work/check2.out" ||
  fail "check does not say the CA ends soon: $(grep -i '^ca' "$work/check2.out")"
# A CA record that cannot be read is a problem, not "no local CA yet": a
# copy of the database whose ca table reads fail (a view that overflows).
cp "$work/groupsrv2.db" "$work/groupsrv3.db"
sqlite3 "$work/groupsrv3.db" "ALTER TABLE ca RENAME TO ca0; CREATE VIEW ca AS SELECT id, key_label, cert_pem,
  created + abs(-9223372036854775807 - 1) AS created, weakenings, replicable FROM ca0"
sed "s|^path = $work/groupsrv2.db|path = $work/groupsrv3.db|" "$conf2" > "$work/conf3"
set +e; "$BIN/groupsrv" -c "$work/conf3" check > "$work/check3.out" 2>&1; rc=$?; set -e
[ $rc = 1 ] && grep -q "^ca cert   PROBLEM: the CA's record cannot be read: " "$work/check3.out" ||
  fail "check with an unreadable CA record (exit $rc): $(grep -i '^ca' "$work/check3.out")"
gs2 ca show > "$work/short-ca-old.pem"
rc=0; gs2 ca renew-cert --days 0 2>"$work/err" || rc=$?
[ "$rc" = 2 ] || fail "ca renew-cert --days 0: exit $rc"
rc=0; gs2 ca renew-cert --subject X 2>"$work/err" || rc=$?
[ "$rc" = 2 ] || fail "ca renew-cert --subject: exit $rc"
gs2 ca renew-cert > "$work/out" || fail "ca renew-cert: $(cat "$work/out")"
grep -q "^CA certificate renewed for the same key: certificate sha256 [0-9a-f]\{64\}, valid until " "$work/out" ||
  fail "ca renew-cert said: $(cat "$work/out")"
gs2 ca show > "$work/short-ca-new.pem"
for f in subject pubkey; do
  [ "$(openssl x509 -in "$work/short-ca-old.pem" -noout -$f)" = "$(openssl x509 -in "$work/short-ca-new.pem" -noout -$f)" ] ||
    fail "the renewed CA certificate has another $f"
done
[ $(($(date -d "$(openssl x509 -in "$work/short-ca-new.pem" -noout -enddate | cut -d= -f2)" +%s) - $(date +%s))) -gt $((3649 * 86400)) ] ||
  fail "the renewed CA certificate does not last [ca] ca_days"
openssl verify -CAfile "$work/short-ca-new.pem" "$work/short/sam@example.org.pem" >/dev/null ||
  fail "a member certificate issued before the renewal does not verify against the renewed CA"
gs2 group renew-cert short > /dev/null
end=$(date -d "$(gs2 group show short --cert | openssl x509 -noout -enddate | cut -d= -f2)" +%s)
[ $((end - $(date +%s))) -gt $((824 * 86400)) ] || fail "group renew-cert after the CA renewal is still cut short"
gs2 group show short --cert | openssl verify -CAfile "$work/short-ca-new.pem" >/dev/null ||
  fail "the group certificate renewed after the CA renewal does not verify"
ok "ca renew-cert: the same subject and key; certificates issued before verify against it; renewals last again"
# A CA renewed for less than the group certificate it issued lasts: said,
# as that certificate stops verifying at the CA's end; renewed as asked.
gs2 ca renew-cert --days 30 > "$work/out" 2>"$work/err" || fail "ca renew-cert --days 30: $(cat "$work/err")"
grep -q "^groupsrv: warning: group short's certificate (version 1) is valid until .*, after the CA certificate's new end, .*: from then on it no longer verifies" "$work/err" ||
  fail "ca renew-cert --days 30 before the group certificate's end said: $(cat "$work/out" "$work/err")"
warned=$(cut -c1-100 "$work/err")
gs2 ca renew-cert > "$work/out" 2>"$work/err" || fail "ca renew-cert: $(cat "$work/err")"
[ ! -s "$work/err" ] || fail "ca renew-cert past every certificate's end warns: $(cat "$work/err")"
ok "ca renew-cert shorter than the group certificate: warned ($warned...); longer: nothing"

# ---- the running server's local CA, renewed ----
expect_not_after "$certs/localca.pem" "the local CA at start" groupsrv_ca_certificate_not_after_seconds
gs ca renew-cert --days 1000 > /dev/null
gs ca show > "$work/localca-new.pem"
# The client CA file with the renewed certificate alone (and the file test
# CA): alice's certificate, issued before the renewal, is still accepted.
cat "$work/localca-new.pem" "$certs/tca.pem" > "$certs/clients.pem"
# SIGHUP takes the renewed CA certificate up (and the new client CA file).
want=$(date -d "$(openssl x509 -in "$work/localca-new.pem" -noout -enddate | cut -d= -f2)" +%s)
kill -HUP "$srv_pid"
for _ in $(seq 1 50); do
  [ "$(c admin "$base/metrics" | awk '$1 == "groupsrv_ca_certificate_not_after_seconds" {print $2}')" = "$want" ] && break
  sleep 0.1
done
expect_not_after "$work/localca-new.pem" "the renewed local CA after SIGHUP" groupsrv_ca_certificate_not_after_seconds
grep -q 'local CA certificate taken up' "$work/server.log" || fail "the key holder does not say it took the CA up"
expect_status 200 "" "a member certificate issued before the CA renewal, against the renewed CA" -- \
  c alice --data-binary @"$work/req-tls.json" "$url"

# ---- the audit log: times that go backwards ----
gs audit verify > /dev/null || fail "audit verify"
/usr/bin/python3 - "$work/audit.jsonl" "$work/back.jsonl" <<'PY'
import hashlib, json, re, sys
lines = open(sys.argv[1], "rb").read().split(b"\n")[:-1]
assert len(lines) >= 3
for l in lines:  # the documented format: UTC, milliseconds
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", json.loads(l)["time"]), l
out, prev = [], "0" * 64
for i, l in enumerate(lines):
    o = json.loads(l)
    if i == len(lines) // 2:
        o["time"] = "2000-01-01T00:00:00.000Z"  # a clock stepped back, by years
    o["prev"] = prev
    s = json.dumps(o, separators=(",", ":")).encode()
    out.append(s)
    prev = hashlib.sha256(s).hexdigest()
open(sys.argv[2], "wb").write(b"\n".join(out) + b"\n")
PY
gs audit verify --file "$work/back.jsonl" > "$work/verify.out" || fail "audit verify refused a record older than the one before it"
ok "audit verify: a record older than the previous one keeps the chain"
