#!/usr/bin/env bash
# Every groupsrv admin subcommand on a throw-away SoftHSM token, with the
# bad-input cases: each fails with a one-line error and an exit code and
# changes nothing.
set -euo pipefail
. "$(dirname "$0")/provision-lib.sh"

# --- usage and config errors: one line each, hint included
expect_rc 2 "$G"
expect_err "no command given (see groupsrv --help)"
expect_rc 2 "$G" -c "$CONF" frobnicate
expect_err "unknown command frobnicate"
expect_rc 2 "$G" -c "$CONF" group create eng --address eng@example.org --bogus
expect_err "unknown option --bogus (see groupsrv --help)"
expect_rc 2 "$G" -c "$CONF" group show
one_line
expect_rc 2 "$G" -c
one_line
# a newline inside an argument does not start a second line
expect_rc 2 "$G" -c "$CONF" "$(printf 'frob\nnicate')"
expect_err "unknown command frob?nicate"
printf '[server]\nlisten = 127.0.0.1:8443\nlisen = x\n' > "$T/bad.conf"
expect_rc 5 "$G" -c "$T/bad.conf" group list
expect_err "bad.conf:3: unknown key 'lisen' in \[server\]"
expect_rc 1 "$G" -c "$T/bad.conf" check

# --- nothing exists yet; check still shows what the token can do
expect_rc 3 "$G" -c "$CONF" group list
expect_rc 1 "$G" -c "$CONF" check
grep -q "^database  PROBLEM: .*does not exist" "$T/out" || { cat "$T/out"; fail "check: no database row"; }
grep -q "^cap mechanism CKM_RSA_PKCS_OAEP  *yes" "$T/out" || { cat "$T/out"; fail "check: no capability table before ca init"; }

# --- CA
expect_rc 0 "$G" -c "$CONF" ca init --key rsa:2048 --subject "Test CA"
expect_rc 3 "$G" -c "$CONF" ca init --key rsa:2048
expect_err "already initialised"
"$G" -c "$CONF" ca show > "$T/ca.pem"
openssl x509 -in "$T/ca.pem" -noout -subject | grep >/dev/null "Test CA" || fail "CA subject"
[ "$(stat -c %a "$T/db/groupsrv.db")" = 600 ] || fail "database not 0600"

# --- group create, with GROUPSRV_CONF instead of -c
GROUPSRV_CONF="$CONF" expect_rc 0 "$G" group create eng --address eng@example.org --key rsa:2048
"$G" -c "$CONF" group show eng --cert > "$T/eng.pem"
openssl x509 -in "$T/eng.pem" -noout -text > "$T/eng.txt" || fail "group cert does not parse"
grep -q "Subject: CN *= *eng" "$T/eng.txt" || fail "group cert subject"
grep -q "email:eng@example.org" "$T/eng.txt" || fail "group cert SAN"
grep -q "Key Encipherment" "$T/eng.txt" || fail "group cert keyUsage"
grep -q "E-mail Protection" "$T/eng.txt" || fail "group cert EKU"
openssl verify -CAfile "$T/ca.pem" -purpose smimeencrypt "$T/eng.pem" > /dev/null || fail "group cert does not verify"
# its public key is the token's
p11 --read-object --type pubkey --label gs:group:eng:v1 -o "$T/tokpub.der" > /dev/null 2>&1
openssl pkey -pubin -inform DER -in "$T/tokpub.der" -outform PEM > "$T/tokpub.pem"
openssl x509 -in "$T/eng.pem" -noout -pubkey > "$T/certpub.pem"
cmp -s "$T/tokpub.pem" "$T/certpub.pem" || fail "certificate key differs from the token key"
"$G" -c "$CONF" group show eng --pubkey | cmp -s - "$T/certpub.pem" || fail "group show --pubkey"
# the private key: sensitive, always sensitive, never extractable; OAEP and
# (by default, for stock S/MIME senders) PKCS#1 v1.5 with a rejection key; no sign
p11 --list-objects --type privkey > "$T/objs" 2>/dev/null
awk '/label: *gs:group:eng:v1/{f=1} f&&/Access:/{print; exit}' "$T/objs" > "$T/access"
grep -q "sensitive, always sensitive, never extractable" "$T/access" || { cat "$T/objs"; fail "group key access flags"; }
awk '/label: *gs:group:eng:v1/{f=1} f&&/Usage:/{print; exit}' "$T/objs" | grep >/dev/null "decrypt, unwrap$" || fail "group key usage"
awk '/label: *gs:group:eng:v1/{f=1} f&&/Allowed mechanisms:/{print; exit}' "$T/objs" |
  grep >/dev/null ": *RSA-PKCS,RSA-PKCS-OAEP$" || fail "group key mechanisms (default: v1.5 and OAEP)"
p11 --list-objects > "$T/objs" 2>/dev/null
grep -q "gs:reject:eng" "$T/objs" || fail "a default group has no rejection key"
"$G" -c "$CONF" group show eng | grep >/dev/null "^pkcs1v15: *accepted" || fail "group show: v1.5 not shown as accepted"
"$G" -c "$CONF" group show eng | grep >/dev/null "^member wrap: *pkcs1v15$" || fail "group show: member wrap"
# --oaep-only keeps the strict policy: OAEP only, no rejection key
expect_rc 2 "$G" -c "$CONF" group create both --address both@example.org --allow-pkcs1v15 --oaep-only
expect_err "contradict"
expect_rc 2 "$G" -c "$CONF" group create badwrap --address bw@example.org --wrap rsa
expect_rc 0 "$G" -c "$CONF" group create strict --address strict@example.org --key rsa:2048 --methods tls --oaep-only \
  --wrap oaep
p11 --list-objects --type privkey > "$T/objs" 2>/dev/null
awk '/label: *gs:group:strict:v1/{f=1} f&&/Allowed mechanisms:/{print; exit}' "$T/objs" |
  grep >/dev/null ": *RSA-PKCS-OAEP$" || fail "--oaep-only group key mechanisms"
p11 --list-objects > "$T/objs" 2>/dev/null
grep -q "gs:reject:strict" "$T/objs" && fail "an --oaep-only group has a rejection key"
"$G" -c "$CONF" group show strict | grep >/dev/null "^pkcs1v15: *refused" || fail "group show: --oaep-only"
"$G" -c "$CONF" group show strict | grep >/dev/null "^member wrap: *oaep$" || fail "group show: --wrap oaep"
expect_rc 0 "$G" -c "$CONF" group set strict --wrap pkcs1v15
"$G" -c "$CONF" group show strict | grep >/dev/null "^member wrap: *pkcs1v15$" || fail "group set --wrap"
expect_rc 2 "$G" -c "$CONF" group set strict --wrap sometimes
expect_rc 3 "$G" -c "$CONF" group set nosuch --wrap oaep
# method set without tls, v1.5 accepted: CKA_DECRYPT all the same (implicit
# rejection decrypts), RSA-PKCS too, a rejection key
expect_rc 0 "$G" -c "$CONF" group create v15 --address v15@example.org --key rsa:2048 --methods recipient-key --allow-pkcs1v15
p11 --list-objects --type privkey > "$T/objs" 2>/dev/null
awk '/label: *gs:group:v15:v1/{f=1} f&&/Usage:/{print; exit}' "$T/objs" | grep >/dev/null "decrypt, unwrap$" || fail "v15 key usage"
# --oaep-only and no tls: the only kind without CKA_DECRYPT
expect_rc 0 "$G" -c "$CONF" group create nodec --address nodec@example.org --key rsa:2048 --methods recipient-key --oaep-only
p11 --list-objects --type privkey > "$T/objs" 2>/dev/null
awk '/label: *gs:group:nodec:v1/{f=1} f&&/Usage:/{print; exit}' "$T/objs" | grep >/dev/null "unwrap$" || fail "nodec key usage"
awk '/label: *gs:group:nodec:v1/{f=1} f&&/Usage:/{print; exit}' "$T/objs" | grep >/dev/null decrypt && fail "nodec key has decrypt"
awk '/label: *gs:group:v15:v1/{f=1} f&&/Allowed mechanisms:/{print; exit}' "$T/objs" | grep >/dev/null "RSA-PKCS,RSA-PKCS-OAEP$" || fail "v15 mechanisms"
p11 --list-objects > "$T/objs" 2>/dev/null
grep -q "gs:reject:v15" "$T/objs" || fail "no rejection key"
grep -q "gs:secret:v15" "$T/objs" && fail "secret key for a group without group-secret"

# an EC group: derive only, keyAgreement certificate; deliver=tls is all
# an EC key does, so another method is refused before the token is asked
expect_rc 1 "$G" -c "$CONF" group create ecg --address ecg@example.org --key ec:p256 --methods recipient-key
expect_err "an EC group key can only be unwrapped with deliver=tls"
# (SoftHSM's ECDH takes no X9.63 KDF, so group create refuses an EC group
# on it, provision_refuse: made through p11fault's ecdh-kdf profile, the
# KDF as NSS softokn has it, on the same token)
: "${GS_P11FAULT_MODULE:?}"
sed "s|^module = .*|module = $GS_P11FAULT_MODULE|" "$CONF" > "$T/fault.conf"
expect_rc 0 env GS_P11FAULT_PROFILE=ecdh-kdf "$G" -c "$T/fault.conf" group create ecg --address ecg@example.org \
  --key ec:p256
"$G" -c "$CONF" group show ecg | grep >/dev/null '^methods: *tls$' || fail "EC group default methods"
"$G" -c "$CONF" group show ecg --cert | openssl x509 -noout -text | grep >/dev/null "Key Agreement" || fail "EC group keyUsage"
p11 --list-objects --type privkey > "$T/objs" 2>/dev/null
awk '/label: *gs:group:ecg:v1/{f=1} f&&/Usage:/{print; exit}' "$T/objs" | grep >/dev/null "derive$" || fail "EC key usage"
p11 --list-objects > "$T/objs" 2>/dev/null

# --- bad group input changes nothing
before=$(db_sum)
expect_rc 3 "$G" -c "$CONF" group create eng --address eng@example.org --key rsa:2048
expect_err "group eng already exists"
expect_rc 1 "$G" -c "$CONF" group create Bad/Name --address x@example.org
expect_rc 1 "$G" -c "$CONF" group create ok2 --address not-an-address
expect_err "invalid list address"
expect_rc 2 "$G" -c "$CONF" group create ok3 --address a@example.org --methods tls,carrier-pigeon
expect_rc 1 "$G" -c "$CONF" group create ok4 --address a@example.org --key dsa:1024
expect_rc 3 "$G" -c "$CONF" group show nosuch
expect_err "unknown group nosuch"
expect_rc 3 "$G" -c "$CONF" group rotate nosuch
[ "$(db_sum)" = "$before" ] || fail "a failed command changed the database"
p11 --list-objects > "$T/objs2" 2>/dev/null
cmp -s "$T/objs" "$T/objs2" || fail "a failed command changed the token"

# --- list / show
"$G" -c "$CONF" group list > "$T/list"
grep -q "^eng .*eng@example.org" "$T/list" && grep -q "^v15 " "$T/list" || fail "group list"
"$G" -c "$CONF" group show eng > "$T/show"
grep -q "gs:group:eng:v1" "$T/show" && grep -q "gs:secret:eng:v1" "$T/show" || fail "group show"

# --- members
mkdir "$T/m"
expect_rc 0 "$G" -c "$CONF" member add eng alice@example.org --issue-cert --out "$T/m"
[ "$(stat -c %a "$T/m/alice@example.org.key")" = 600 ] || fail "member key not 0600"
openssl verify -CAfile "$T/ca.pem" -purpose sslclient "$T/m/alice@example.org.pem" > /dev/null || fail "member cert"
openssl x509 -in "$T/m/alice@example.org.pem" -noout -text | grep >/dev/null "TLS Web Client Authentication" || fail "member EKU"
[ "$(openssl x509 -in "$T/m/alice@example.org.pem" -noout -pubkey)" = \
  "$(openssl pkey -in "$T/m/alice@example.org.key" -pubout)" ] || fail "member key/cert mismatch"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/bob.key" -out "$T/bob.pem" -days 2 \
  -subj "/CN=Bob" -addext "subjectAltName=email:bob@example.org" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/anon.key" -out "$T/anon.pem" -days 2 -subj "/CN=anon" 2>/dev/null
before=$(db_sum)
expect_rc 3 "$G" -c "$CONF" member add eng alice@example.org --issue-cert --out "$T/m"
expect_err "already a member"
expect_rc 3 "$G" -c "$CONF" member add eng ALICE@example.org --cert "$T/m/alice@example.org.pem"
expect_rc 1 "$G" -c "$CONF" member add eng carol@example.org --cert "$T/anon.pem"
expect_err "no email"
expect_rc 1 "$G" -c "$CONF" member add eng carol@example.org --cert "$CONF"
expect_err "not a valid X.509"
expect_rc 1 "$G" -c "$CONF" member add eng carol@example.org --cert "$T/bob.pem"
expect_err "certificate is for bob@example.org"
# a key too weak to re-wrap message keys to (recipient-key, member-certs)
openssl req -x509 -newkey rsa:1024 -nodes -keyout "$T/carol.key" -out "$T/carol.pem" -days 2 \
  -subj "/CN=Carol" -addext "subjectAltName=email:carol@example.org" 2>/dev/null
expect_rc 1 "$G" -c "$CONF" member add eng carol@example.org --cert "$T/carol.pem"
expect_err "RSA below 2048 bits"
# a certificate whose DER fits the file limit but whose PEM record would not:
# it was recorded, then never read back (certificate_mismatch on every
# request, a GET's "certificate" null beside has_certificate true)
printf 'subjectAltName=email:carol@example.org\n1.2.3.4.5=ASN1:FORMAT:HEX,OCTETSTRING:%s\n' \
  "$(head -c 50000 /dev/zero | od -An -v -tx1 | tr -d ' \n')" > "$T/big.ext"
openssl req -new -newkey rsa:2048 -nodes -keyout "$T/big.key" -subj /CN=Carol -out "$T/big.csr" 2>/dev/null
openssl x509 -req -in "$T/big.csr" -signkey "$T/big.key" -days 2 -extfile "$T/big.ext" -outform DER \
  -out "$T/carol-big.der" 2>/dev/null
expect_rc 1 "$G" -c "$CONF" member add eng carol@example.org --cert "$T/carol-big.der"
expect_err "too large"
expect_rc 3 "$G" -c "$CONF" member add nosuch bob@example.org --cert "$T/bob.pem"
expect_rc 2 "$G" -c "$CONF" member add eng bob@example.org --cert "$T/bob.pem" --role king
expect_rc 2 "$G" -c "$CONF" member add eng bob@example.org
expect_rc 3 "$G" -c "$CONF" member remove eng nobody@example.org
[ "$(db_sum)" = "$before" ] || fail "a failed member command changed the database"
expect_rc 0 "$G" -c "$CONF" member add eng bob@example.org --cert "$T/bob.pem"
expect_rc 0 "$G" -c "$CONF" member add eng list@example.org --issue-cert --out "$T/m" --role exploder
expect_rc 2 "$G" -c "$CONF" member add eng dora@example.org --issue-cert --out "$T/m" --wrap rsa
expect_rc 0 "$G" -c "$CONF" member add eng dora@example.org --issue-cert --out "$T/m" --wrap oaep
"$G" -c "$CONF" member list eng > "$T/members"
grep -q "^alice@example.org  *member  *default " "$T/members" && grep -q "^bob@example.org  *member" "$T/members" &&
  grep -q "^list@example.org  *exploder" "$T/members" && grep -q "^dora@example.org  *member  *oaep " "$T/members" ||
  { cat "$T/members"; fail "member list"; }
expect_rc 0 "$G" -c "$CONF" member set eng alice@example.org --wrap oaep
"$G" -c "$CONF" member list eng | grep >/dev/null "^alice@example.org  *member  *oaep " || fail "member set --wrap oaep"
expect_rc 0 "$G" -c "$CONF" member set eng alice@example.org --wrap default
"$G" -c "$CONF" member list eng | grep >/dev/null "^alice@example.org  *member  *default " || fail "member set --wrap default"
expect_rc 3 "$G" -c "$CONF" member set eng nobody@example.org --wrap oaep
expect_rc 2 "$G" -c "$CONF" member set eng alice@example.org

# --- member set renews a certificate and changes a role (as the REST PUT
# does): the record keeps what is not named, no secret key version is made
fpr() { "$G" -c "$CONF" member list eng | awk -v m="$1" '$1 == m { print $4 }'; }
secrets() { "$G" -c "$CONF" group show eng | grep 'gs:secret:'; }
audit_last() { grep "\"action\":\"$1\"" "$T/audit.jsonl" | grep "\"member\":\"$2\"" | tail -1; }
expect_rc 0 "$G" -c "$CONF" member set eng alice@example.org --wrap oaep
old=$(fpr alice@example.org) sec=$(secrets)
before=$(db_sum)
expect_rc 2 "$G" -c "$CONF" member set eng alice@example.org --cert "$T/m/alice@example.org.pem" --issue-cert --out "$T/m"
expect_rc 2 "$G" -c "$CONF" member set eng alice@example.org --issue-cert
expect_rc 2 "$G" -c "$CONF" member set eng alice@example.org --out "$T/m"
expect_rc 2 "$G" -c "$CONF" member set eng alice@example.org --role king
expect_rc 3 "$G" -c "$CONF" member set eng nobody@example.org --role admin
expect_err "nobody@example.org is not a member of group eng"
expect_rc 3 "$G" -c "$CONF" member set nosuch alice@example.org --role admin
expect_rc 1 "$G" -c "$CONF" member set eng alice@example.org --cert "$T/bob.pem"
expect_err "certificate is for bob@example.org"
expect_rc 1 "$G" -c "$CONF" member set eng alice@example.org --cert "$T/ca.pem"
openssl req -x509 -newkey rsa:1024 -nodes -keyout "$T/weak.key" -out "$T/weak.pem" -days 2 \
  -subj "/CN=Alice" -addext "subjectAltName=email:alice@example.org" 2>/dev/null
expect_rc 1 "$G" -c "$CONF" member set eng alice@example.org --cert "$T/weak.pem"
expect_err "RSA below 2048 bits"
expect_rc 3 "$G" -c "$CONF" member set eng alice@example.org --cert "$T/none.pem"
expect_rc 1 "$G" -c "$CONF" member set eng alice@example.org --cert "$T/m"
expect_rc 3 "$G" -c "$CONF" member set eng alice@example.org --issue-cert --out "$T/m"
expect_err "already exists"
expect_rc 1 "$G" -c "$CONF" member set eng alice@example.org --issue-cert --out "$T/nodir"
mkdir "$T/ro"; chmod 555 "$T/ro"; ro=$T/ro
[ "$(id -u)" = 0 ] && ro=/proc # root writes a 0555 directory; nobody writes /proc
expect_rc 1 "$G" -c "$CONF" member set eng alice@example.org --issue-cert --out "$ro"
expect_err "cannot write $ro/alice@example.org.key"
[ "$(db_sum)" = "$before" ] || fail "a refused member set changed the database"
[ "$(fpr alice@example.org)" = "$old" ] || fail "a refused member set changed the certificate"
grep '"action":"member-add"' "$T/audit.jsonl" | grep '"member":"alice@example.org"' |
  grep >/dev/null '"outcome":"certificate is for bob@example.org, not alice@example.org"' || fail "the refused cert is not recorded"
# the renewal: new files as member add --issue-cert makes them, role and wrap kept
mkdir "$T/m2"
expect_rc 0 "$G" -c "$CONF" member set eng ALICE@example.org --issue-cert --out "$T/m2"
grep -q "wrote $T/m2/ALICE@example.org.pem and $T/m2/ALICE@example.org.key" "$T/out" || { cat "$T/out"; fail "member set --issue-cert output"; }
[ "$(stat -c %a "$T/m2/ALICE@example.org.key")" = 600 ] || fail "renewed key not 0600"
openssl verify -CAfile "$T/ca.pem" -purpose sslclient "$T/m2/ALICE@example.org.pem" > /dev/null || fail "renewed cert does not verify"
new=$(openssl x509 -in "$T/m2/ALICE@example.org.pem" -outform DER | sha256sum | cut -c1-64)
[ "$(fpr alice@example.org)" = "$new" ] && [ "$new" != "$old" ] || fail "member set --issue-cert: $(fpr alice@example.org), wanted $new"
"$G" -c "$CONF" member list eng | grep >/dev/null "^alice@example.org  *member  *oaep " || fail "renewal lost role or wrap"
[ "$(secrets)" = "$sec" ] || fail "a renewal made a secret key version: $(secrets)"
audit_last member-add alice@example.org | grep '"outcome":"ok"' | grep '"role":"member"' |
  grep >/dev/null "\"certificate_sha256\":\"$new\"" || fail "renewal record: $(audit_last member-add alice@example.org)"
expect_rc 0 "$G" -c "$CONF" member set eng alice@example.org --cert "$T/m/alice@example.org.pem"
[ "$(fpr alice@example.org)" = "$old" ] || fail "member set --cert"
# the role; the last admin is not demoted (409 last_admin over REST)
expect_rc 0 "$G" -c "$CONF" member set eng alice@example.org --role admin
"$G" -c "$CONF" member list eng | grep >/dev/null "^alice@example.org  *admin  *oaep  *$old" || fail "member set --role admin"
before=$(db_sum)
expect_rc 1 "$G" -c "$CONF" member set eng alice@example.org --role member
expect_err "alice@example.org is the last admin of group eng: make another member admin first; the change was not made"
[ "$(db_sum)" = "$before" ] || fail "the last admin was demoted"
audit_last member-add alice@example.org | grep >/dev/null '"outcome":"last_admin"' || fail "no last_admin record"
expect_rc 0 "$G" -c "$CONF" member set eng dora@example.org --role admin --wrap default
"$G" -c "$CONF" member list eng | grep >/dev/null "^dora@example.org  *admin  *default " || fail "member set --role --wrap"
expect_rc 0 "$G" -c "$CONF" member set eng alice@example.org --role member --wrap default
"$G" -c "$CONF" member list eng | grep >/dev/null "^alice@example.org  *member  *default  *$old" || fail "demotion"
[ "$(secrets)" = "$sec" ] || fail "a role change made a secret key version"

# --- removing a member rotates the secret key
expect_rc 0 "$G" -c "$CONF" member remove eng bob@example.org
grep -q "new secret key version 2" "$T/out" || fail "no secret rotation on remove"
"$G" -c "$CONF" member list eng | grep >/dev/null bob && fail "bob still listed"
"$G" -c "$CONF" group show eng | grep >/dev/null "v2 *current *gs:secret:eng:v2" || fail "secret v2 not current"
expect_rc 0 "$G" -c "$CONF" secret rotate eng
grep -q "version 3" "$T/out" || fail "secret rotate"
p11 --list-objects --type secrkey > "$T/sk" 2>/dev/null
grep -q "gs:secret:eng:v3" "$T/sk" || fail "secret v3 not on token"
expect_rc 1 "$G" -c "$CONF" secret rotate v15
expect_err "does not use group-secret"
# auto rotation can be turned off
cp "$CONF" "$T/norot.conf"; printf '[server]\nauto_rotate_secret_on_remove = no\n' >> "$T/norot.conf"
expect_rc 0 "$G" -c "$T/norot.conf" member remove eng alice@example.org
grep -q "new secret key" "$T/out" && fail "rotated although disabled"

# --- import a certificate signed elsewhere
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/org.key" -out "$T/org.pem" -days 2 -subj "/CN=Org CA" 2>/dev/null
"$G" -c "$CONF" group show eng --pubkey > "$T/engpub.pem"
printf 'subjectAltName=email:eng@example.org\nkeyUsage=critical,keyEncipherment\nextendedKeyUsage=emailProtection\n' > "$T/ext"
openssl x509 -new -force_pubkey "$T/engpub.pem" -subj "/CN=eng" -CA "$T/org.pem" -CAkey "$T/org.key" \
  -days 2 -extfile "$T/ext" -out "$T/eng-org.pem" 2>/dev/null ||
openssl x509 -req -in <(openssl req -new -key "$T/org.key" -subj "/CN=eng") -force_pubkey "$T/engpub.pem" \
  -CA "$T/org.pem" -CAkey "$T/org.key" -days 2 -extfile "$T/ext" -out "$T/eng-org.pem" 2>/dev/null
expect_rc 1 "$G" -c "$CONF" group import-cert eng --cert "$T/bob.pem"
expect_rc 0 "$G" -c "$CONF" group import-cert eng --cert "$T/eng-org.pem"
"$G" -c "$CONF" group show eng --cert | openssl x509 -noout -issuer | grep >/dev/null "Org CA" || fail "import-cert"

# --- check: all good, then a key that allows more than its policy
expect_rc 0 "$G" -c "$CONF" check
grep -q "all keys OK" "$T/out" || fail "check output"
grep -q "^group  *eng  *v1 .*OK" "$T/out" || { cat "$T/out"; fail "check table"; }
# --- check: the [tls] files and the audit log directory
grep -q "^tls  *- *\[tls\] cert and key not set" "$T/out" || { cat "$T/out"; fail "check: unset [tls] not reported"; }
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/srv.key" -out "$T/srv.pem" \
  -days 2 -subj /CN=localhost 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/other.key" -out "$T/other.pem" \
  -days 2 -subj /CN=other 2>/dev/null
# tlsconf NAME CERT KEY CLIENT_CA AUDIT: $CONF plus [tls] and [audit] (in place of its own), as $T/NAME.conf
tlsconf() {
  { sed '/^\[audit\]/,$d' "$CONF"; printf '[tls]\ncert = %s\nkey = %s\nclient_ca = %s\n[audit]\npath = %s\n' "$2" "$3" "$4" "$5"; } > "$T/$1.conf"
}
tlsconf tlsok "$T/srv.pem" "$T/srv.key" "$T/ca.pem" "$T/logs/sub/audit.jsonl"
expect_rc 0 "$G" -c "$T/tlsok.conf" check
for row in "tls cert  OK" "tls key   OK" "client_ca OK" "audit log OK .*will be created"; do
  grep -q "^$row" "$T/out" || { cat "$T/out"; fail "check: no '$row' row"; }
done
# [certsrv] url: members verify the certificate server by the [tls] cert, so
# a host that is not among its names is a warning (not counted), named
tlsconf certsrvip "$T/srv.pem" "$T/srv.key" "$T/ca.pem" "$T/audit.jsonl"
printf '[certsrv]\nlisten = 127.0.0.1:8444\n' >> "$T/certsrvip.conf"
expect_rc 0 "$G" -c "$T/certsrvip.conf" check
grep -q "^certsrv   WARNING: \[certsrv\] url https://127.0.0.1:8444: 127.0.0.1 is not among the \[tls\] cert's names (no SAN DNS or IP name).*defaults to the listen address" "$T/out" ||
  { cat "$T/out"; fail "check: no warning for a [certsrv] url the [tls] cert is not for"; }
printf 'url = https://localhost:8444\n' >> "$T/certsrvip.conf"
expect_rc 0 "$G" -c "$T/certsrvip.conf" check
grep -q "^certsrv   OK   \[certsrv\] url https://localhost:8444: a name of the \[tls\] cert" "$T/out" ||
  { cat "$T/out"; fail "check: [certsrv] url of the certificate's CN not taken"; }
# ... as libcurl (groupmail's fetch) matches names, not as OpenSSL's own
# X509_check_host: a trailing dot is the same name; a CN that is the
# address counts without a SAN; a SAN IP alone rules the CN out; a partial
# wildcard (g*.example.org) is no match. certsrv_url CERT KEY URL OK|WARNING
certsrv_url() {
  tlsconf certsrvurl "$1" "$2" "$T/ca.pem" "$T/audit.jsonl"
  printf '[certsrv]\nlisten = 127.0.0.1:8444\nurl = %s\n' "$3" >> "$T/certsrvurl.conf"
  expect_rc 0 "$G" -c "$T/certsrvurl.conf" check
  grep -q "^certsrv   $4:\{0,1\} *\[certsrv\] url $3:" "$T/out" || { grep '^certsrv' "$T/out"; fail "check: $3 with $1: not $4"; }
}
certsrv_url "$T/srv.pem" "$T/srv.key" https://localhost.:8444 OK
mkcert() { # NAME SUBJECT [SAN]
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/$1.key" -out "$T/$1.pem" \
    -days 2 -subj "$2" ${3:+-addext "subjectAltName=$3"} 2>/dev/null
}
mkcert cnip /CN=127.0.0.1
certsrv_url "$T/cnip.pem" "$T/cnip.key" https://127.0.0.1:8444 OK
mkcert sanip /CN=localhost IP:127.0.0.1
certsrv_url "$T/sanip.pem" "$T/sanip.key" https://localhost:8444 WARNING
certsrv_url "$T/sanip.pem" "$T/sanip.key" https://127.0.0.1:8444 OK
mkcert partial /CN=x DNS:g*.example.org,DNS:*.example.net
certsrv_url "$T/partial.pem" "$T/partial.key" https://gs.example.org:8444 WARNING
certsrv_url "$T/partial.pem" "$T/partial.key" https://gs.example.net:8444 OK
# expect_check_problem NAME PATTERN: check on $T/NAME.conf exits 1 with a PROBLEM row matching PATTERN
expect_check_problem() {
  expect_rc 1 "$G" -c "$T/$1.conf" check
  grep -q "$2" "$T/out" || { cat "$T/out"; fail "check ($1) did not report '$2'"; }
  grep -q "problem(s) found" "$T/out" || { cat "$T/out"; fail "check ($1): no problem count"; }
}
tlsconf nocert "$T/missing.pem" "$T/srv.key" "$T/ca.pem" "$T/audit.jsonl"
expect_check_problem nocert "^tls cert  PROBLEM: .*missing.pem: unreadable"
tlsconf nokey "$T/srv.pem" "$T/missing.key" "$T/ca.pem" "$T/audit.jsonl"
expect_check_problem nokey "^tls key   PROBLEM: .*missing.key: unreadable"
tlsconf mismatch "$T/srv.pem" "$T/other.key" "$T/ca.pem" "$T/audit.jsonl"
expect_check_problem mismatch "^tls key   PROBLEM: .*does not match the \[tls\] cert"
tlsconf certnotkey "$T/srv.pem" "$T/srv.pem" "$T/ca.pem" "$T/audit.jsonl"
expect_check_problem certnotkey "^tls key   PROBLEM: .*no unencrypted PEM private key"
tlsconf noca "$T/srv.pem" "$T/srv.key" "$T/missing-ca.pem" "$T/audit.jsonl"
expect_check_problem noca "^client_ca PROBLEM: .*unreadable"
tlsconf emptyca "$T/srv.pem" "$T/srv.key" "$T/srv.key" "$T/audit.jsonl"
expect_check_problem emptyca "^client_ca PROBLEM: .*srv.key: "
touch "$T/afile"
tlsconf auditfile "$T/srv.pem" "$T/srv.key" "$T/ca.pem" "$T/afile/audit.jsonl"
expect_check_problem auditfile "^audit log PROBLEM: .*not a directory"
mkdir "$T/adir"
tlsconf auditdir "$T/srv.pem" "$T/srv.key" "$T/ca.pem" "$T/adir"
expect_check_problem auditdir "^audit log PROBLEM: .*adir: not a regular file"
# serve refuses a link at the audit log's path (groupsrv.1): so does check
touch "$T/alink-target"
ln -s "$T/alink-target" "$T/alink"
tlsconf auditlink "$T/srv.pem" "$T/srv.key" "$T/ca.pem" "$T/alink"
expect_check_problem auditlink "^audit log PROBLEM: .*alink: a symbolic link"
if [ "$(id -u)" -ne 0 ]; then   # root writes anywhere
  mkdir "$T/ro"; chmod 500 "$T/ro"
  tlsconf auditro "$T/srv.pem" "$T/srv.key" "$T/ca.pem" "$T/ro/audit.jsonl"
  expect_check_problem auditro "^audit log PROBLEM: .*directory not writable"
fi
# The log's own directory missing (/var/log/groupsrv removed, or never made
# by tmpfiles.d) where it cannot be made: check names the missing directory
# and where it cannot be made, not "directory not writable" of a directory
# the admin then finds absent. Root writes anywhere but on a read-only file
# system (as the unit's ProtectSystem=strict shows it outside
# ReadWritePaths=): a read-only bind mount in a mount namespace of its own.
mkdir -p "$T/rofs"
tlsconf auditgone "$T/srv.pem" "$T/srv.key" "$T/ca.pem" "$T/rofs/groupsrv/audit.jsonl"
gone_row="^audit log PROBLEM: $T/rofs/groupsrv/audit.jsonl: its directory $T/rofs/groupsrv does not exist, and this user (uid [0-9]*) cannot create it in $T/rofs: "
if [ "$(id -u)" -ne 0 ]; then
  chmod 500 "$T/rofs"
  expect_check_problem auditgone "${gone_row}Permission denied"
  chmod 700 "$T/rofs"
elif unshare -m --propagation private mount --bind -o ro "$T/rofs" "$T/rofs" 2>/dev/null; then
  expect_rc 1 unshare -m --propagation private sh -c 'mount --bind -o ro "$1" "$1" && exec "$2" -c "$3" check' sh \
    "$T/rofs" "$G" "$T/auditgone.conf"
  grep -q "${gone_row}Read-only file system" "$T/out" || { cat "$T/out"; fail "check (auditgone) did not name the missing directory"; }
else
  echo "skip: auditgone (no mount namespace for a read-only directory)"
fi
# a key on the token: only the certificate file is checked here
tlsconf tokkey "$T/srv.pem" "pkcs11:token=groupsrv;object=tls;type=private" "$T/ca.pem" "$T/audit.jsonl"
expect_rc 0 "$G" -c "$T/tokkey.conf" check
grep -q "^tls key   OK .*on the token" "$T/out" || { cat "$T/out"; fail "check: pkcs11 key row"; }
tlsconf tokkeynocert "$T/missing.pem" "pkcs11:token=groupsrv;object=tls;type=private" "$T/ca.pem" "$T/audit.jsonl"
expect_check_problem tokkeynocert "^tls cert  PROBLEM: .*unreadable"
# replace eng's key with one made by hand (no unwrap template, no mechanism limit)
p11 --delete-object --type privkey --label gs:group:eng:v1 > /dev/null 2>&1
p11 --keypairgen --key-type rsa:2048 --label gs:group:eng:v1 --usage-decrypt --usage-sign > /dev/null 2>&1
expect_rc 1 "$G" -c "$CONF" check
grep -q "^group  *eng  *v1 .*PROBLEM" "$T/out" || { cat "$T/out"; fail "check did not flag the bad key"; }
# a secret key made readable
p11 --delete-object --type secrkey --label gs:secret:eng:v3 > /dev/null 2>&1
p11 --keygen --key-type AES:32 --label gs:secret:eng:v3 --usage-wrap > /dev/null 2>&1
expect_rc 1 "$G" -c "$CONF" check
grep -q "^secret  *eng  *v3 .*PROBLEM" "$T/out" || { cat "$T/out"; fail "check did not flag the secret key"; }

# --- wrong PIN
printf '0000\n' > "$T/wrong-pin"; chmod 600 "$T/wrong-pin"
sed "s|^pin_source = .*|pin_source = $T/wrong-pin|" "$CONF" > "$T/wrongpin.conf"
expect_rc 4 "$G" -c "$T/wrongpin.conf" group rotate eng
expect_err "PIN"
expect_rc 1 "$G" -c "$T/wrongpin.conf" check
echo "provision-cli: OK"
