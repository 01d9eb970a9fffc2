#!/usr/bin/env bash
# token-matrix.sh TOKEN BIN SRC: the whole flow of groupsrv on one token of
# the matrix (tests/tokens/TOKEN.sh: softhsm, nss, opencryptoki, rpc,
# smartcard): ca init (or adopt the CA key), group create (or adopt the
# group key), member add, check (capability table printed, weakenings
# named), serve, unwrap with deliver tls, recipient-key and group-secret,
# groupmail decrypt by every method, the exploder's rewrap in group-secret
# and member-certs modes. Per token: OAEP SHA-256 senders and [hsm]
# init_args by path (nss), the p11-kit server killed under load and
# started again (rpc), a login per operation and two sessions (smartcard).
set -euo pipefail
TOKEN=$1 BIN=$2 SRC=$3
export GS_TOKEN=$TOKEN
. "$SRC/tests/tokens/lib.sh"
tok_load "$TOKEN"
tok_enter "$@"

# What the token can do decides each group's policy; what it cannot is a
# named weakening (groupsrv/policy.h). Expected per token:
case "$TOKEN" in
softhsm)   want_policy=rewrap=token,secrets=token,reject=token;         want_weak="none" ;;
nss)       want_policy=rewrap=token,secrets=token,reject=token;         want_weak="no-allowed-mechanisms" ;;
opencryptoki) want_policy=rewrap=token,secrets=token-aes-ecb,reject=token
           want_weak="secret-aes-ecb, no-allowed-mechanisms, no-unwrap-template" ;;
rpc)       want_policy=rewrap=token,secrets=token-aes-ecb,reject=token; want_weak="secret-aes-ecb, no-unwrap-template" ;;
smartcard) want_policy=rewrap=software,secrets=sealed,reject=sealed    # no HMAC keys: v1.5's rejection key sealed
           want_weak="software-rewrap, secret-sealed, reject-sealed, no-allowed-mechanisms"
           SRV_WORKERS=4 ;; # more token workers than the card's 2 sessions: the key holder lowers them
*) echo "FAIL: unknown token $TOKEN" >&2; exit 1 ;;
esac

SRV_MEMBERS="alice bob"
. "$SRC/tests/integration/server-lib.sh"
EXPLODER=$BIN/exploder GS_SRC=$SRC
. "$SRC/tests/integration/exploder-lib.sh"
grep -q "created: key version 1" "$work/group-create.out" || fail "group create: $(cat "$work/group-create.out")"
grep -q "^weakenings: *$want_weak\$" "$work/group-create.out" ||
  fail "group create does not name the weakenings '$want_weak': $(cat "$work/group-create.out")"
ok "$TOKEN: group created; weakenings named: $want_weak"

# ---- check: the capability table, the policy, every key sound ----
gs check > "$work/check.out" 2>&1 || fail "check: $(cat "$work/check.out")"
for row in "^cap sessions" "^cap mechanism CKM_RSA_PKCS_OAEP  *yes: .*decrypt" "^cap attribute CKA_ALLOWED_MECHANISMS" \
  "^cap attribute CKA_UNWRAP_TEMPLATE" "^cap wrap/unwrap" "^cap secret keys" "^cap signatures (CA)" \
  "^policy eng  *$want_policy; weakenings: $want_weak\$" "^policy eng  *v1 OAEP hashes: decrypt SHA-1" "all keys OK"; do
  grep -q "$row" "$work/check.out" || { cat "$work/check.out" >&2; fail "check output lacks '$row'"; }
done
if [ "$want_weak" != none ]; then
  grep -q "^group  *eng  *v1 .*OK.*accepted weakening" "$work/check.out" ||
    { cat "$work/check.out" >&2; fail "check does not name the group key's accepted weakening"; }
fi
# The key table stays in line whatever a label's length (an adopted key
# is named by its whole pkcs11: URI): each row's SENS column starts where
# the header's does.
/usr/bin/python3 - "$work/check.out" <<'PY' || { cat "$work/check.out" >&2; fail "check's key table is out of line"; }
import sys
lines = open(sys.argv[1]).read().splitlines()
head = next(i for i, l in enumerate(lines) if l.startswith("KIND "))
col = lines[head].index(" SENS ") + 1
rows = [l for l in lines[head + 1:] if l.split(" ", 1)[0] in ("ca", "group", "secret", "reject", "seal")]
bad = [l for l in rows if l[col - 1] != " " or l[col:].split(" ", 1)[0] not in ("yes", "no", "-")]
sys.exit(1 if bad or not rows else 0)
PY
ok "$TOKEN: check prints the capability table and the policy"

# ---- trusted wrap: --replicable where the token has it, a clear refusal where not ----
grep -q "^cap trusted wrap  *\(yes: \|no: --replicable is refused; missing: .\)" "$work/check.out" ||
  { cat "$work/check.out" >&2; fail "check output lacks the trusted wrap capability"; }
if grep -q "^cap trusted wrap  *yes" "$work/check.out"; then
  gs group create rep --address rep@example.org --key rsa:2048 --replicable > "$work/rep.out" 2>&1 ||
    fail "group create --replicable where check says trusted wrap: $(cat "$work/rep.out")"
  gs check > "$work/check-rep.out" 2>&1 || fail "check after --replicable: $(cat "$work/check-rep.out")"
  grep -q "^group  *rep  *v1 .*OK (replicable: leaves only under trusted wrap)" "$work/check-rep.out" ||
    { cat "$work/check-rep.out" >&2; fail "check does not show the replicable key"; }
  ok "$TOKEN: trusted wrap; a replicable group is made and passes check"
else
  rc=0; gs group create rep --address rep@example.org --key rsa:2048 --replicable > "$work/rep.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] || fail "group create --replicable without trusted wrap: exit $rc, want 1: $(cat "$work/rep.out")"
  [ "$(wc -l < "$work/rep.out")" = 1 ] && grep -q "^groupsrv: --replicable: this token lacks trusted wrap (missing: " "$work/rep.out" ||
    fail "group create --replicable: not one clear line naming what is missing: $(cat "$work/rep.out")"
  gs group show rep > /dev/null 2>&1 && fail "a refused replicable group was recorded"
  ok "$TOKEN: no trusted wrap; --replicable refused: $(cat "$work/rep.out")"
fi

# ---- receiving keys (the ceremony's other side): a transport key where
# the token can, one clear line where not ----
grep -q "^cap receive keys  *\(yes, as far as session keys show: .*(NSS softokn) refuses at token transport-key\$\|no: token transport-key is refused; missing: .*)\$\)" "$work/check.out" ||
  { cat "$work/check.out" >&2; fail "check output lacks the receive keys capability, or cuts it short"; }
rc=0; gs token transport-key --out "$work/transport.pem" > "$work/tk.out" 2>&1 || rc=$?
if [ "$TOKEN" = nss ]; then
  # NSS takes CKA_ALLOWED_MECHANISMS on session keys only: the session-key
  # trial says yes, the token key is refused (the transport key needs it).
  # check says its yes is the session keys' (a plain "yes:" was followed
  # by this refusal).
  grep -q "^cap receive keys  *yes, as far as session keys show: " "$work/check.out" ||
    fail "check on NSS: a receive keys line that does not say it judged session keys: $(grep '^cap receive keys' "$work/check.out")"
  # NSS answers the token key with CKR_GENERAL_ERROR, its word for an
  # attribute it does not keep there: said as a refusal of the
  # protections, not as a broken device.
  [ "$rc" = 1 ] && [ "$(wc -l < "$work/tk.out")" = 1 ] &&
    grep -q "^groupsrv: generating the transport key (.*as a receiving token must keep them): mechanism or parameters not supported by the token (C_GenerateKeyPair refused a token key with CKA_ALLOWED_MECHANISMS and CKA_UNWRAP_TEMPLATE (.*CKR_GENERAL_ERROR.*): this token does not keep them on token keys" "$work/tk.out" ||
    fail "token transport-key on NSS: exit $rc: $(cat "$work/tk.out")"
elif grep -q "^cap receive keys  *yes" "$work/check.out"; then
  [ "$rc" = 0 ] && [ -s "$work/transport.pem" ] || fail "token transport-key where check says yes: exit $rc: $(cat "$work/tk.out")"
else
  [ "$rc" = 1 ] && [ "$(wc -l < "$work/tk.out")" = 1 ] &&
    grep -q "^groupsrv: this token cannot receive keys (missing: .*))\$" "$work/tk.out" ||
    fail "token transport-key where check says no: exit $rc: $(cat "$work/tk.out")"
fi
[ "$rc" = 0 ] || [ ! -e "$work/transport.pem" ] || fail "a refused token transport-key wrote its file"
ok "$TOKEN: token transport-key: $(tail -n 1 "$work/tk.out")"

# NSS does ECDH with the X9.63 KDF: an EC group (RFC 5753 senders), made
# before serve starts, is tried below.
if [ "$TOKEN" = nss ]; then
  # by a trial derive: the KDF is not among what a token lists
  grep -q "^cap group keys (EC)  *yes: ECDH with the X9.63 KDF (SHA-1, SHA-256) and AES key wrap\$" "$work/check.out" || fail "check on NSS: $(grep '^cap group keys' "$work/check.out")"
  gs group create ecg --address ecg@example.org --key ec:p256 > "$work/ecg.out" 2>&1 ||
    fail "group create ec:p256 on NSS: $(cat "$work/ecg.out")"
  gs member add ecg alice@example.org --cert "$certs/alice@example.org.pem" >/dev/null
  gs member add ecg dle@example.org --cert "$certs/dle@example.org.pem" --role exploder >/dev/null
  gs group show ecg --cert > "$certs/ecg.pem"
  # A group whose key unwraps but never decrypts (--oaep-only, no tls):
  # what discovery says it takes must come from C_UnwrapKey, not C_DecryptInit.
  gs group create unw --address unw@example.org --key rsa:2048 --oaep-only --methods recipient-key \
    > "$work/unw.out" 2>&1 || fail "group create --oaep-only --methods recipient-key on NSS: $(cat "$work/unw.out")"
  gs member add unw alice@example.org --cert "$certs/alice@example.org.pem" >/dev/null
  gs group show unw --cert > "$certs/unw.pem"
fi

# ---- serve, and what GET /v1/groups/eng says about the path ----
start_server
expect_status 200 "" "discovery" -- anon "$base/v1/groups/eng"
rewrap=$(json_get "$work/body" key_policy rewrap)
[ "rewrap=$rewrap" = "${want_policy%%,*}" ] || fail "GET /v1/groups/eng key_policy.rewrap is $rewrap"
# the same three words as check's policy line (want_policy, checked above)
said="rewrap=$rewrap,secrets=$(json_get "$work/body" key_policy secret_keys),reject=$(json_get "$work/body" key_policy rejection_key)"
[ "$said" = "$want_policy" ] || fail "GET /v1/groups/eng key_policy says $said, check said $want_policy"
/usr/bin/python3 - "$work/body" "$want_weak" <<'PY' || fail "GET /v1/groups/eng weakenings: $(cat "$work/body")"
import json, sys
got = json.load(open(sys.argv[1]))["key_policy"]["weakenings"]
want = [] if sys.argv[2] == "none" else sys.argv[2].split(", ")
sys.exit(0 if got == want else 1)
PY
ok "$TOKEN: GET /v1/groups/eng says rewrap=$rewrap"

# ---- unwrap: deliver tls, recipient-key, group-secret ----
url=$base/v1/groups/eng/unwrap
unwrap_as alice tls
check_cek "$(b64d "$(json_get "$work/body" key)" | od -An -tx1 | tr -d ' \n')"
unwrap_as alice recipient-key
b64d "$(json_get "$work/body" recipient_info)" > "$work/ri-alice.der"
check_ktri "$work/ri-alice.der" "$certs/alice@example.org.pem" "$certs/alice@example.org.key"
unwrap_as alice group-secret
b64d "$(json_get "$work/body" recipient_info)" > "$work/kekri.der"
member_secret_key alice "$work"
cms swap "$work/msg.der" "$work/kekri.der" "$work/kek-msg.der"
openssl cms -decrypt -inform DER -in "$work/kek-msg.der" -secretkey "$sk" -secretkeyid "$kekid" \
  -out "$work/dec.txt" 2>"$work/cms.err" || fail "openssl cms -secretkey: $(cat "$work/cms.err")"
cmp -s "$work/dec.txt" "$work/msg.txt" || fail "group-secret: decrypted text differs"
ok "$TOKEN: tls, recipient-key and group-secret answers decrypt with stock openssl"

# ---- groupmail decrypt by every method ----
export GROUPMAIL_CONFIG=$work/groupmail.conf
# groupmail's default store is $XDG_DATA_HOME (else ~/.local/share)/
# groupmail: pointed into the work directory, where the end of the test
# finds it unused; HOME itself stays (NSS's p11-kit module file is there).
export XDG_DATA_HOME=$work/xdg-data
cat > "$GROUPMAIL_CONFIG" <<CONF
[server]
url = $base
group = eng
cacert = $certs/tca.pem
group_ca = $certs/localca.pem
timeout = 20
[hsm]
module = $module
[store]
dir = $work/gmstore
CONF
group_key_uri=${TOK_GROUP_KEY:-"$token_uri;object=gs:group:eng:v1;type=private"}
printf 'Subject: matrix\n\nthe body of the matrix message on %s\n' "$TOKEN" > "$work/m.txt"
openssl cms -encrypt -binary -aes-256-gcm -recip "$certs/group.pem" -keyopt rsa_padding_mode:oaep \
  -in "$work/m.txt" -out "$work/m.smime" 2>/dev/null
gm_as() { local who=$1; shift; "$BIN/groupmail" "$@" --cert "$certs/$who@example.org.pem" --key "$certs/$who@example.org.key"; }
for via in tls recipient-key membership-cert group-secret local-key; do
  rm -f "$work/out.txt"
  if [ "$via" = local-key ]; then
    "$BIN/groupmail" decrypt --via local-key --group-key "$group_key_uri" --pin-source "$pin_file" \
      --in "$work/m.smime" --out "$work/out.txt" 2>"$work/gm.err" || fail "groupmail --via local-key: $(cat "$work/gm.err")"
  else
    gm_as bob decrypt --via "$via" --store "$work/gmstore" --in "$work/m.smime" --out "$work/out.txt" \
      2>"$work/gm.err" || fail "groupmail --via $via: $(cat "$work/gm.err")"
  fi
  cmp -s "$work/out.txt" "$work/m.txt" || fail "groupmail --via $via: plaintext differs"
done
ok "$TOKEN: groupmail decrypt --via tls, recipient-key, membership-cert, group-secret, local-key"

# A member's token that cannot receive keys: groupmail's side of the
# ceremony refuses it as groupsrv does, the whole reason on one line.
if ! grep -q "^cap receive keys  *yes" "$work/check.out"; then
  rc=0; "$BIN/groupmail" keys transport-key --token "$token_uri" --pin-source "$pin_file" \
    --out "$work/gm-transport.pem" > "$work/gmtk.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] && [ "$(wc -l < "$work/gmtk.out")" = 1 ] &&
    grep -q "^groupmail: transport key: this token cannot receive keys (missing: .*))\$" "$work/gmtk.out" ||
    fail "groupmail keys transport-key where check says no: exit $rc: $(cat "$work/gmtk.out")"
  [ ! -e "$work/gm-transport.pem" ] || fail "a refused groupmail keys transport-key wrote its file"
  ok "$TOKEN: groupmail keys transport-key refused: $(cat "$work/gmtk.out")"
fi

# ---- the exploder: rewrap in group-secret and member-certs modes ----
xp_setup "matrix-$TOKEN"
xp_smtpd_start "$W/smtp"
xp_conf "smtp://127.0.0.1:$SMTPD_PORT" "starttls = no" \
  "[tls]" "cert = $certs/dle@example.org.pem" "key = $certs/dle@example.org.key" "ca = $certs/tca.pem"
L=eng@example.org
xp list create $L --group-server "$base" --group eng --mode group-secret >"$W/create.out" 2>&1 ||
  fail "list create: $(cat "$W/create.out")"
xp list add $L alice@example.org bob@example.org >/dev/null
# send_list SUBJECT: one message to the list through the exploder, drained.
send_list() {
  xp_encrypt "$certs/group.pem" "$W/in.eml" "$1"
  xp deliver --list $L --sender alice@example.org <"$W/in.eml" || fail "deliver ($1) refused"
  xp_drain
}
# copies SUBJECT: the delivered copies with that subject.
copies() {
  for f in $($PY "$SMTPD_PY" --dir "$W/smtp" --list-messages); do
    grep -q "^Subject: $1\$" "$f" && echo "$f"
  done
  return 0
}
send_list "matrix group secret"
n=0
for f in $(copies "matrix group secret"); do
  openssl cms -decrypt -in "$f" -secretkey "$sk" -secretkeyid "$kekid" -out "$W/dec.txt" 2>"$W/cms.err" ||
    fail "exploder group-secret copy: $(cat "$W/cms.err")"
  grep -q 'secret body for matrix group secret' "$W/dec.txt" || fail "exploder group-secret: wrong plaintext"
  n=$((n + 1))
done
[ "$n" -ge 1 ] || fail "exploder group-secret: no copy arrived"
[ "$(xp_accepted "$W/smtp" | sort -u | tr '\n' ' ')" = "alice@example.org bob@example.org " ] ||
  fail "exploder group-secret: recipients $(xp_accepted "$W/smtp" | tr '\n' ' ')"
xp list set $L --mode member-certs >/dev/null
send_list "matrix member certs"
n=0
for f in $(copies "matrix member certs"); do
  for m in alice bob; do
    openssl cms -decrypt -in "$f" -recip "$certs/$m@example.org.pem" -inkey "$certs/$m@example.org.key" \
      -out "$W/dec.txt" 2>/dev/null || continue
    grep -q 'secret body for matrix member certs' "$W/dec.txt" && n=$((n + 1))
  done
done
[ "$n" = 2 ] || fail "exploder member-certs: $n copies decrypted by their member, want 2"
xp_spool_empty
ok "$TOKEN: exploder rewrap in group-secret and member-certs modes"

# ---- per token ----
case "$TOKEN" in
nss)
  # NSS decrypts, unwraps and wraps RSA-OAEP with SHA-256: senders may use it.
  "$BIN/groupmail" encrypt --group-cert "$certs/group.pem" --oaep sha256 --mime --in "$work/m.txt" \
    --out "$work/m256.smime" || fail "groupmail encrypt --oaep sha256"
  openssl cms -cmsout -print -in "$work/m256.smime" | grep -q 'sha256' || fail "the message does not use OAEP SHA-256"
  for via in tls recipient-key; do
    gm_as alice decrypt --via "$via" --store "$work/gmstore" --in "$work/m256.smime" --out "$work/out.txt" \
      2>"$work/gm.err" || fail "OAEP SHA-256 --via $via: $(cat "$work/gm.err")"
    cmp -s <(tr -d '\r' < "$work/out.txt") <(tr -d '\r' < "$work/m.txt") || fail "OAEP SHA-256 --via $via: text differs"
  done
  grep -q "^policy eng  *v1 OAEP hashes: decrypt SHA-1, SHA-256; unwrap SHA-1, SHA-256" "$work/check.out" ||
    fail "check does not show OAEP SHA-256 on NSS: $(grep '^policy' "$work/check.out")"
  # ...and from a stock sender, openssl cms with OAEP SHA-256.
  openssl cms -encrypt -binary -aes-256-cbc -in "$work/msg.txt" -outform DER -out "$work/msg256.der" \
    -recip "$certs/group.pem" -keyopt rsa_padding_mode:oaep -keyopt rsa_oaep_md:sha256 2>/dev/null
  cms ri "$work/msg256.der" "$work/ri256.der"
  printf '{"recipient_info":"%s","deliver":"recipient-key"}' "$(b64 "$work/ri256.der")" > "$work/req-256.json"
  expect_status 200 "" "openssl cms OAEP SHA-256, deliver=recipient-key" -- c alice --data-binary @"$work/req-256.json" "$url"
  b64d "$(json_get "$work/body" recipient_info)" > "$work/ri256-alice.der"
  cms swap "$work/msg256.der" "$work/ri256-alice.der" "$work/swapped256.der"
  openssl cms -decrypt -inform DER -in "$work/swapped256.der" -recip "$certs/alice@example.org.pem" \
    -inkey "$certs/alice@example.org.key" -out "$work/dec256.txt" 2>/dev/null && cmp -s "$work/dec256.txt" "$work/msg.txt" ||
    fail "OAEP SHA-256 (openssl cms sender): alice cannot decrypt the re-wrapped key"
  ok "nss: a message with RSA-OAEP SHA-256 decrypts by tls and recipient-key (groupmail and openssl cms senders)"
  openssl cms -encrypt -binary -aes-256-cbc -in "$work/msg.txt" -outform DER -out "$work/unw256.der" \
    -recip "$certs/unw.pem" -keyopt rsa_padding_mode:oaep -keyopt rsa_oaep_md:sha256 2>/dev/null
  cms ri "$work/unw256.der" "$work/unw256-ri.der"
  printf '{"recipient_info":"%s","content_algorithm":"aes-256-cbc","deliver":"recipient-key"}' \
    "$(b64 "$work/unw256-ri.der")" > "$work/unw256.json"
  expect_status 200 "" "OAEP SHA-256 to a group that only unwraps" -- \
    c alice --data-binary @"$work/unw256.json" "$base/v1/groups/unw/unwrap"
  expect_status 200 "" "discovery of a group that only unwraps" -- anon "$base/v1/groups/unw"
  [ "$(json_get "$work/body" key_transports)" = "['RSA-OAEP', 'RSA-OAEP-256']" ] ||
    fail "discovery of a group that unwraps OAEP SHA-256 but never decrypts: $(cat "$work/body")"
  ok "nss: a group that only unwraps lists RSA-OAEP-256, which it unwraps"
  # The same database by path, with [hsm] init_args: no registry needed.
  sed -e "s|^module = .*|module = $TOK_NSS_MODULE_PATH|" -e "s|^\[hsm\]\$|[hsm]\ninit_args = $TOK_INIT_ARGS|" \
    "$conf" > "$work/bypath.conf"
  "$BIN/groupsrv" -c "$work/bypath.conf" check > "$work/check-path.out" 2>&1 ||
    fail "check with the module by path and init_args: $(tail -5 "$work/check-path.out")"
  sed -e "/^init_args/d" "$work/bypath.conf" > "$work/noargs.conf"
  rc=0; "$BIN/groupsrv" -c "$work/noargs.conf" check > "$work/check-noargs.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] || fail "check without init_args: exit $rc"
  grep -q "CKR_ARGUMENTS_BAD: the module needs initialisation arguments.*init_args" "$work/check-noargs.out" ||
    fail "no clear message without init_args: $(cat "$work/check-noargs.out")"
  ok "nss: [hsm] init_args by path works; without it the error says what to do"
  # A database its user cannot write: NSS refuses C_Initialize itself, so
  # nothing is served (not a token that "can only serve"); the message says
  # what to do, and flags=readOnly then serves (and refuses new keys).
  chmod a-w "$work/nssdb"/*.db
  rc=0; "$BIN/groupsrv" -c "$work/bypath.conf" check > "$work/check-ro.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] && grep -q "^token  *PROBLEM: .*C_Initialize: CKR_TOKEN_WRITE_PROTECTED: the module cannot open its token store for writing (NSS softokn: .*flags=readOnly" \
    "$work/check-ro.out" || { chmod u+w "$work/nssdb"/*.db; fail "check on a read-only NSS database: exit $rc: $(cat "$work/check-ro.out")"; }
  sed -e "s|^init_args = .*|init_args = ${TOK_INIT_ARGS}readOnly|" "$work/bypath.conf" > "$work/ro.conf"
  rc=0; "$BIN/groupsrv" -c "$work/ro.conf" check > "$work/check-ro.out" 2>&1 || rc=$?
  rc2=0; "$BIN/groupsrv" -c "$work/ro.conf" secret rotate eng > "$work/rotate-ro.out" 2>&1 || rc2=$?
  # Removing a member makes a new secret key version, which this token
  # cannot keep: the member stays, and the one line says so first.
  rc3=0; "$BIN/groupsrv" -c "$work/ro.conf" member remove eng bob@example.org > "$work/remove-ro.out" 2>&1 || rc3=$?
  chmod u+w "$work/nssdb"/*.db
  [ "$rc" = 0 ] || fail "check on a read-only NSS database with flags=readOnly: exit $rc: $(tail -5 "$work/check-ro.out")"
  [ "$rc2" = 1 ] && grep -q "write-protected" "$work/rotate-ro.out" ||
    fail "secret rotate on a read-only NSS database: exit $rc2: $(cat "$work/rotate-ro.out")"
  [ "$rc3" = 1 ] && grep -q "^groupsrv: bob@example.org stays a member of eng: .*the token is write-protected" "$work/remove-ro.out" ||
    fail "member remove on a read-only NSS database: exit $rc3: $(cat "$work/remove-ro.out")"
  gs member list eng | grep -q "^bob@example.org " || fail "member remove on a read-only NSS database removed bob"
  ok "nss: a database this user cannot write: C_Initialize's refusal says what to do; flags=readOnly serves"
  # A database without a password (certutil -N --empty-password) wants no
  # login, and its empty PIN cannot be a pin source's: the refusal (exit
  # 4, one line) says so and what to do, instead of a bare "PIN
  # incorrect"; given a password with certutil -W, the same PIN file works.
  mkdir "$work/nssdb-empty"
  certutil -N -d "sql:$work/nssdb-empty" --empty-password >/dev/null || fail "certutil -N --empty-password"
  sed -e "s|configdir='sql:[^']*'|configdir='sql:$work/nssdb-empty'|" -e "s|^path = $work/groupsrv.db\$|path = $work/empty.db|" \
    -e "s|^path = $work/audit.jsonl\$|path = $work/empty-audit.jsonl|" "$work/bypath.conf" > "$work/empty.conf"
  rc=0; "$BIN/groupsrv" -c "$work/empty.conf" ca init --key rsa:2048 > "$work/empty.out" 2>&1 || rc=$?
  [ "$rc" = 4 ] && [ "$(wc -l < "$work/empty.out")" = 1 ] &&
    grep -q "^groupsrv: opening token .*PIN incorrect (not retried) (C_Login: CKR_PIN_INCORRECT; this token requires no login (CKF_LOGIN_REQUIRED clear) .*an empty PIN, which no pin source holds), set a user PIN on the token and put it in the pin source)\$" \
      "$work/empty.out" || fail "ca init on a database without a password: exit $rc: $(cat "$work/empty.out")"
  echo > "$work/nopw"
  certutil -W -d "sql:$work/nssdb-empty" -f "$work/nopw" -@ "$pin_file" </dev/null >/dev/null 2>&1 || fail "certutil -W"
  "$BIN/groupsrv" -c "$work/empty.conf" ca init --key rsa:2048 > "$work/empty.out" 2>&1 ||
    fail "ca init once the database has a password: $(cat "$work/empty.out")"
  ok "nss: a database without a password is refused saying it wants no login; with one (certutil -W) it works"
  # NSS keeps CKA_WRAP_WITH_TRUSTED but lets any key the user makes wrap
  # such a key out: no trusted wrap, so no replicable group (its key
  # could leave in the clear with the user PIN alone).
  grep -q "^cap trusted wrap  *no: --replicable is refused; missing: CKA_WRAP_WITH_TRUSTED (kept but not enforced" \
    "$work/check.out" || fail "check does not say NSS does not enforce trusted wrap: $(grep '^cap trusted' "$work/check.out")"
  grep -q "^groupsrv: --replicable: this token lacks trusted wrap (missing: CKA_WRAP_WITH_TRUSTED (kept but not enforced" \
    "$work/rep.out" || fail "group create --replicable on NSS: $(cat "$work/rep.out")"
  ok "nss: trusted wrap is not enforced: --replicable refused"
  # The EC group: a KeyAgreeRecipientInfo from openssl cms (X9.63 KDF with
  # SHA-1, its default, and SHA-256) unwraps with deliver=tls; the other
  # delivers and the exploder's rewrap are refused as unsupported, saying
  # why (not as a malformed RecipientInfo).
  for md in sha1 sha256; do
    openssl cms -encrypt -binary -aes-256-cbc -in "$work/msg.txt" -outform DER -out "$work/ec-$md.der" \
      -recip "$certs/ecg.pem" -keyopt ecdh_kdf_md:$md 2>/dev/null || fail "openssl cms -encrypt to the EC group ($md)"
    cms ri "$work/ec-$md.der" "$work/ec-ri.der"
    printf '{"recipient_info":"%s","deliver":"tls"}' "$(b64 "$work/ec-ri.der")" > "$work/ec-req.json"
    expect_status 200 "" "EC group, KDF $md, deliver=tls" -- c alice --data-binary @"$work/ec-req.json" \
      "$base/v1/groups/ecg/unwrap"
    iv=$(cms content "$work/ec-$md.der" "$work/ec-ct.bin")
    openssl enc -d -aes-256-cbc -K "$(b64d "$(json_get "$work/body" key)" | od -An -tx1 | tr -d ' \n')" -iv "$iv" \
      -in "$work/ec-ct.bin" -out "$work/ec-dec.txt" 2>/dev/null && cmp -s "$work/ec-dec.txt" "$work/msg.txt" ||
      fail "EC group ($md): the content key does not decrypt the message"
  done
  # An EC group has deliver=tls alone (server_refusals: one recorded with
  # more before that was checked says unsupported).
  for d in recipient-key group-secret; do
    printf '{"recipient_info":"%s","deliver":"%s"}' "$(b64 "$work/ec-ri.der")" "$d" > "$work/ec-req.json"
    expect_status 403 method_not_allowed "EC group, deliver=$d" -- c alice --data-binary @"$work/ec-req.json" \
      "$base/v1/groups/ecg/unwrap"
  done
  printf '{"recipient_info":"%s","to":"members"}' "$(b64 "$work/ec-ri.der")" > "$work/ec-req.json"
  expect_status 400 unsupported "EC group, rewrap to members" -- c dle --data-binary @"$work/ec-req.json" \
    "$base/v1/groups/ecg/rewrap"
  grep -q "EC group keys cannot be re-wrapped" "$work/body" || fail "rewrap to members: $(cat "$work/body")"
  expect_status 200 "" "discovery of the EC group" -- anon "$base/v1/groups/ecg"
  [ "$(json_get "$work/body" methods)" = "['tls']" ] || fail "EC group methods: $(cat "$work/body")"
  ok "nss: an EC group unwraps RFC 5753 messages (KDF SHA-1 and SHA-256) with deliver=tls, the only method it has"
  # The originator's key moved off the curve (the last byte of y
  # changed): refused by the key holder before the token derives with the
  # group key, whatever the token would check (an invalid-curve attack).
  /usr/bin/python3 - "$work/ec-ri.der" "$work/ec-bad-ri.der" <<'PY' || fail "no P-256 point in the KARI"
import sys
der = bytearray(open(sys.argv[1], "rb").read())
at = der.find(b"\x03\x42\x00\x04")  # BIT STRING of an uncompressed P-256 point
if at < 0:
    sys.exit(1)
der[at + 3 + 64] ^= 0x01
open(sys.argv[2], "wb").write(der)
PY
  printf '{"recipient_info":"%s","deliver":"tls"}' "$(b64 "$work/ec-bad-ri.der")" > "$work/ec-req.json"
  expect_status 400 bad_recipient_info "EC group, originator key off the curve" -- c alice \
    --data-binary @"$work/ec-req.json" "$base/v1/groups/ecg/unwrap"
  grep -q "not a point of the group key's curve" "$work/body" || fail "off-curve point: $(cat "$work/body")"
  ok "nss: an originator key off the group key's curve is refused before the token uses the key"
  # The EC group's key made again under the running server, as another
  # installation's group create makes it on a token initialised anew: the
  # same label and the CKA_ID groupsrv gives it (the first 16 bytes of
  # SHA-256 of the label). The key holder finds its stale handle's object
  # again by label and CKA_ID; it must not derive with the other key
  # (400 unwrap_failed for good mail until the group was loaded again) but
  # answer 503 and load the group again, where the certificate's key is
  # missing: 503 key_unavailable. pkcs11-tool reaches NSS through
  # p11-kit's proxy, which loads the same module file.
  p11nss() { GS_PIN=$(cat "$pin_file") pkcs11-tool --module "$(tok_p11kit_module_dir)/../p11-kit-proxy.so" \
    --token-label "$TOK_LABEL" --login --pin env:GS_PIN "$@"; }
  p11nss --delete-object --type privkey --label gs:group:ecg:v1 > "$work/p11.out" 2>&1 &&
    p11nss --delete-object --type pubkey --label gs:group:ecg:v1 >> "$work/p11.out" 2>&1 &&
    p11nss --keypairgen --key-type EC:prime256v1 --label gs:group:ecg:v1 --usage-derive \
      --id "$(printf %s gs:group:ecg:v1 | sha256sum | cut -c1-32)" >> "$work/p11.out" 2>&1 ||
    fail "pkcs11-tool could not make the EC group's key again: $(cat "$work/p11.out")"
  printf '{"recipient_info":"%s","deliver":"tls"}' "$(b64 "$work/ec-ri.der")" > "$work/ec-req.json"
  got=
  for i in 1 2 3 4 5 6; do
    expect_status 503 "" "EC mail to a version whose label and CKA_ID now hold another key ($i)" -- \
      c alice --data-binary @"$work/ec-req.json" "$base/v1/groups/ecg/unwrap"
    grep -q '"code":"key_unavailable"' "$work/body" && { got=yes; break; }
  done
  [ -n "$got" ] || fail "EC mail to a remade key: never 503 key_unavailable: $(cat "$work/body")"
  grep -q 'detail="key gs:group:ecg:v1 on the token is now another key' "$work/server.log" ||
    fail "no log line naming the EC key found again that is another: $(grep 'ecg:v1' "$work/server.log" | head -3)"
  ok "nss: an EC key found again by label and CKA_ID that is another key is not used (503, then key_unavailable)"
  ;;
rpc)
  # A token URI that names the module behind the p11-kit server (as it
  # is written where the server runs): p11-kit-client.so forwards a
  # module not seen from here, so it is not compared, and check passes
  sed "s|^token = .*|token = pkcs11:token=groupsrv?module-name=softhsm2\\&module-path=$(tok_softhsm_module)|" \
    "$conf" > "$work/under.conf"
  "$BIN/groupsrv" -c "$work/under.conf" check > "$work/check-under.out" 2>&1 ||
    fail "check with the server's module named in the token URI: $(grep -v ' OK ' "$work/check-under.out")"
  ok "rpc: a token URI naming the module behind the p11-kit server is taken"
  # Kill the p11-kit server under load: 503 meanwhile; start it again:
  # the same groupsrv serves again (the module is initialised anew).
  loader() { # loader N: requests until $work/stop exists (120 s at most); statuses to $work/load.N
    local end=$((SECONDS + 120))
    while [ ! -e "$work/stop" ] && [ -d "$work" ] && [ "$SECONDS" -lt "$end" ]; do
      c alice --max-time 20 --data-binary @"$work/req-tls.json" -o /dev/null -w '%{http_code}\n' "$url" \
        >> "$work/load.$1" 2>/dev/null || echo fail >> "$work/load.$1"
    done
  }
  rm -f "$work/stop" "$work"/load.*
  loader 1 & lp1=$!
  loader 2 & lp2=$!
  bg_pids="$lp1 $lp2"
  sleep 1
  tok_rpc_kill
  ok "rpc: p11-kit server killed under load"
  got503=0 seen=
  for _ in $(seq 1 100); do
    st=$(status anon "$base/healthz")
    if [ "$st" = 503 ]; then got503=1; break; fi
    seen="$seen $st"
    sleep 0.1
  done
  [ "$got503" = 1 ] || fail "healthz not 503 with the p11-kit server gone (saw:$(echo "$seen" | tr ' ' '\n' | sort | uniq -c | tr -s ' \n' ' '); last body: $(cat "$work/body"); server log: $(tail -5 "$work/server.log"))"
  sleep 1
  expect_status 503 token_unavailable "unwrap while the p11-kit server is down" -- c alice --data-binary @"$work/req-tls.json" "$url"
  grep -qi '^retry-after' <(c alice -D - -o /dev/null --data-binary @"$work/req-tls.json" "$url") ||
    fail "503 without Retry-After"
  tok_rpc_start
  up=0
  for _ in $(seq 1 100); do
    if [ "$(status anon "$base/healthz")" = 200 ]; then up=1; break; fi
    sleep 0.1
  done
  [ "$up" = 1 ] || fail "healthz not 200 within 10 s of the p11-kit server coming back: $(cat "$work/body"); p11-kit server log: $(tail -3 "$TOK_RPC_DIR/p11kit-server.log")"
  sleep 1
  touch "$work/stop"
  wait "$lp1" "$lp2" || true
  bg_pids=
  cat "$work"/load.* > "$work/load.all"
  grep -qv '^\(200\|503\)$' "$work/load.all" && fail "answers other than 200/503 under load: $(sort "$work/load.all" | uniq -c)"
  grep -q '^503$' "$work/load.all" || fail "no 503 under load while the server was down: $(sort "$work/load.all" | uniq -c)"
  [ "$(tail -n 1 "$work/load.1")" = 200 ] || fail "load not served again after the restart: $(tail -3 "$work/load.1")"
  expect_status 200 "" "unwrap after the p11-kit server came back" -- c alice --data-binary @"$work/req-tls.json" "$url"
  check_cek "$(b64d "$(json_get "$work/body" key)" | od -An -tx1 | tr -d ' \n')"
  expect_status 200 "" "recipient-key after the p11-kit server came back" -- c alice --data-binary @"$work/req-recipient-key.json" "$url"
  kill -0 "$srv_pid" || fail "groupsrv died"
  grep -q "re-initialised\|token is back" "$work/server.log" || fail "no re-initialisation in the server log"
  ok "rpc: 503 while away ($(grep -c '^503$' "$work/load.all") under load), served again by the same process"
  # A group made directly on SoftHSM (its key has an unwrap template),
  # then served over RPC: asking p11-kit 0.24.1's RPC for a stored
  # template crashes its server, so it is not asked (the probe showed the
  # RPC cannot carry one): check and serve go on, saying what they could
  # not verify.
  kill -TERM "$srv_pid"; wait "$srv_pid" || true; srv_pid=
  sed -e "s|^module = .*|module = $(tok_softhsm_module)|" "$conf" > "$work/direct.conf"
  "$BIN/groupsrv" -c "$work/direct.conf" group create direct --address direct@example.org --key rsa:2048 \
    > "$work/direct-create.out" 2>&1 || fail "group create on SoftHSM directly: $(cat "$work/direct-create.out")"
  grep -q "^weakenings: *none\$" "$work/direct-create.out" || fail "direct group: $(cat "$work/direct-create.out")"
  gs check > "$work/check2.out" 2>&1 || fail "check over RPC of a key made directly: $(cat "$work/check2.out")"
  grep -q "^group  *direct  *v1 .*OK.*CKA_UNWRAP_TEMPLATE cannot be read through this module (not verified)" \
    "$work/check2.out" || fail "check does not say what it could not verify: $(grep '^group' "$work/check2.out")"
  grep -q "died with sigsegv" "$TOK_RPC_DIR/p11kit-server.log" && fail "the p11-kit server crashed: $(cat "$TOK_RPC_DIR/p11kit-server.log")"
  # Its secret key wraps with CKM_AES_KEY_WRAP, which the RPC does not
  # carry: said by check (not a problem: the rest is served), and
  # group-secret is refused as unsupported, not a token that is down.
  grep -q "^secret  *direct  *v1 .*OK; CKM_AES_KEY_WRAP is not offered through this module: deliver=group-secret is refused" \
    "$work/check2.out" || fail "check does not say the direct group's secret key cannot wrap here: $(grep '^secret' "$work/check2.out")"
  start_server
  printf '{"encrypted_key":"%s","algorithm":"RSA-OAEP"}' \
    "$(openssl rand 32 | openssl pkeyutl -encrypt -pubin -inkey <(gs group show direct --pubkey) \
       -pkeyopt rsa_padding_mode:oaep | base64 -w0)" > "$work/req-direct.json"
  gs member add direct alice@example.org --cert "$certs/alice@example.org.pem" >/dev/null
  expect_status 200 "" "unwrap for a key made directly, served over RPC" -- \
    c alice --data-binary @"$work/req-direct.json" "$base/v1/groups/direct/unwrap"
  printf '{"encrypted_key":"%s","algorithm":"RSA-OAEP","deliver":"group-secret"}' \
    "$(openssl rand 32 | openssl pkeyutl -encrypt -pubin -inkey <(gs group show direct --pubkey) \
       -pkeyopt rsa_padding_mode:oaep | base64 -w0)" > "$work/req-direct-gs.json"
  expect_status 400 unsupported_algorithm "group-secret for a key made directly, served over RPC" -- \
    c alice --data-binary @"$work/req-direct-gs.json" "$base/v1/groups/direct/unwrap"
  # ...and discovery does not offer it (clients and exploders pick their
  # method from that list); the group made over the RPC still has it.
  expect_status 200 "" "discovery of the group made directly" -- anon "$base/v1/groups/direct"
  [ "$(json_get "$work/body" methods)" = "['tls', 'recipient-key', 'membership-cert']" ] ||
    fail "discovery offers what this module cannot do: $(cat "$work/body")"
  expect_status 200 "" "discovery of the group made over RPC" -- anon "$base/v1/groups/eng"
  json_get "$work/body" methods | grep -q "'group-secret'" || fail "discovery of eng lost group-secret: $(cat "$work/body")"
  ok "rpc: keys made directly are served over the RPC; what it cannot carry is noted, not a crash"
  ;;
smartcard)
  grep -q "^cap sessions  *at most 2" "$work/check.out" || fail "check does not show the 2-session limit"
  grep -q "login per operation: yes" "$work/check.out" || fail "check does not show the login per operation"
  grep -q "^cap signatures (CA)  *CKM_RSA_PKCS over a DigestInfo" "$work/check.out" || fail "check: CA signature fallback"
  grep -q "^seal " "$work/check.out" || fail "check does not audit the seal key"
  ok "smartcard: 2 sessions, a login per operation, CA signatures over a DigestInfo, sealed secrets audited"
  grep -q "msg=\"key holder ready\" workers=2 " "$work/server.log" ||
    fail "the key holder did not lower [hsm] workers = 4 to the card's 2 sessions: $(grep -i worker "$work/server.log")"
  ok "smartcard: the key holder runs 2 token workers, not the 4 configured (the card has 2 sessions)"
  # A context-specific login before each private-key operation, under
  # concurrent unwraps of every deliver method on the card's 2 sessions:
  # each login belongs to its own operation, none is lost to another's.
  : > "$work/aa.codes"; pids=
  for _ in 1 2 3 4 5 6; do
    for req in req-tls req-recipient-key req-group-secret; do
      c alice -o /dev/null -w "$req %{http_code}\n" --data-binary @"$work/$req.json" "$url" >> "$work/aa.codes" 2>/dev/null &
      pids="$pids $!"
    done
  done
  # shellcheck disable=SC2086
  wait $pids || true
  [ "$(grep -c ' 200$' "$work/aa.codes")" = 18 ] ||
    fail "concurrent unwraps with CKA_ALWAYS_AUTHENTICATE: $(sort "$work/aa.codes" | uniq -c | tr -s ' \n' ' ')"
  ok "smartcard: 18 concurrent unwraps (tls, recipient-key, group-secret), a login per operation: all 200"
  # Sealed secret key versions retire too: the blob goes with the row.
  sv=$(gs secret rotate eng | sed -n 's/^group eng: new secret key version \([0-9]*\)$/\1/p')
  [ -n "$sv" ] && [ "$sv" -ge 2 ] || fail "secret rotate on the card"
  gs secret retire eng --before "$sv" > "$work/out" || fail "secret retire of sealed versions: $(cat "$work/out")"
  grep -q "^group eng: $((sv - 1)) secret key version(s) retired$" "$work/out" || fail "secret retire said: $(cat "$work/out")"
  gs group show eng | grep -Eq "^  v1 +retired +gs:secret:eng:v1 +kek-id [0-9a-f]{32}$" ||
    fail "the retired sealed version still has its blob, or is not retired: $(gs group show eng)"
  expect_status 200 "" "secret keys after retiring a sealed version" -- c alice "$base/v1/groups/eng/secret-keys"
  /usr/bin/python3 -c 'import json,sys; assert [k["version"] for k in json.load(open(sys.argv[1]))["keys"]] == [int(sys.argv[2])]' \
    "$work/body" "$sv" || fail "the retired sealed version is still served: $(cat "$work/body")"
  gs check > "$work/check-retired.out" 2>&1 || fail "check after retiring a sealed version: $(cat "$work/check-retired.out")"
  rc=0; gs secret record eng --version 1 --kek-id 00000000000000000000000000000000 2>"$work/err" || rc=$?
  [ "$rc" = 1 ] && grep -q "sealed in the database" "$work/err" || fail "secret record of a sealed group: exit $rc: $(cat "$work/err")"
  ok "smartcard: a sealed secret key version retired (its blob dropped), no longer served; secret record refused"
  # PKCS#1 v1.5 senders (stock clients): implicit rejection needs an HMAC
  # key, which the card cannot keep: sealed too.
  gs group create v15 --address v15@example.org --key rsa:2048 --allow-pkcs1v15 --methods tls,recipient-key \
    > "$work/v15-create.out" 2>&1 || fail "group create --allow-pkcs1v15: $(cat "$work/v15-create.out")"
  grep -q "^weakenings: .*reject-sealed" "$work/v15-create.out" || fail "v15 group: $(cat "$work/v15-create.out")"
  gs member add v15 alice@example.org --cert "$certs/alice@example.org.pem" >/dev/null
  gs group show v15 --cert > "$work/v15.pem"
  openssl cms -encrypt -binary -aes-256-cbc -in "$work/msg.txt" -outform DER -out "$work/v15.der" \
    -recip "$work/v15.pem" 2>/dev/null
  cms ri "$work/v15.der" "$work/v15-ri.der"
  printf '{"recipient_info":"%s","deliver":"tls","key_length":32}' "$(b64 "$work/v15-ri.der")" > "$work/req-v15.json"
  expect_status 200 "" "PKCS#1 v1.5 unwrap on the card" -- c alice --data-binary @"$work/req-v15.json" "$base/v1/groups/v15/unwrap"
  iv=$(cms content "$work/v15.der" "$work/v15-ct.bin")
  openssl enc -d -aes-256-cbc -K "$(b64d "$(json_get "$work/body" key)" | od -An -tx1 | tr -d ' \n')" -iv "$iv" \
    -in "$work/v15-ct.bin" -out "$work/v15-dec.txt" 2>/dev/null && cmp -s "$work/v15-dec.txt" "$work/msg.txt" ||
    fail "the v1.5 content key does not decrypt the message"
  # A ciphertext with bad padding: the same deterministic substitute, twice.
  printf '{"encrypted_key":"%s","algorithm":"RSA-PKCS1-v1_5","key_length":32}' "$(head -c 256 /dev/urandom | base64 -w0)" \
    > "$work/req-bad15.json"
  expect_status 200 "" "v1.5 with bad padding (implicit rejection)" -- c alice --data-binary @"$work/req-bad15.json" "$base/v1/groups/v15/unwrap"
  k1=$(json_get "$work/body" key)
  expect_status 200 "" "v1.5 with bad padding again" -- c alice --data-binary @"$work/req-bad15.json" "$base/v1/groups/v15/unwrap"
  [ "$k1" = "$(json_get "$work/body" key)" ] || fail "implicit rejection is not deterministic"
  ok "smartcard: PKCS#1 v1.5 with implicit rejection under a sealed HMAC key"
  ;;
opencryptoki)
  grep -q "^cap signatures (CA)  *CKM_RSA_PKCS over a DigestInfo" "$work/check.out" || fail "check: CA signature fallback"
  grep -q "^policy eng  *v1 OAEP hashes: decrypt SHA-1, SHA-256; unwrap SHA-1, SHA-256" "$work/check.out" ||
    fail "check: OAEP hashes on opencryptoki: $(grep '^policy' "$work/check.out")"
  ok "opencryptoki: CA signatures over a DigestInfo, secret keys on CKM_AES_ECB"
  # No ECDH and no AES key wrap: no EC group key could ever be unwrapped
  # with. check says so and group create refuses at once, naming what is
  # missing (not a key generation failure that sends to --use-key).
  grep -q "^cap group keys (EC)  *no: this token cannot hold EC group keys (missing: CKM_ECDH1_DERIVE with CKF_DERIVE .*; CKM_AES_KEY_WRAP with CKF_UNWRAP .*): use an RSA key (--key rsa:3072); group create refuses\$" \
    "$work/check.out" || fail "check on EC group keys: $(grep '^cap group keys' "$work/check.out")"
  for how in "--key ec:p256" "--key ec:p384"; do
    # shellcheck disable=SC2086
    rc=0; gs group create ecg --address ecg@example.org $how > "$work/ecg.out" 2>&1 || rc=$?
    [ "$rc" = 1 ] && [ "$(wc -l < "$work/ecg.out")" = 1 ] &&
      grep -q "^groupsrv: .*this token cannot hold EC group keys (missing: CKM_ECDH1_DERIVE" "$work/ecg.out" ||
      fail "group create $how on opencryptoki: exit $rc: $(cat "$work/ecg.out")"
  done
  gs group show ecg > /dev/null 2>&1 && fail "a refused EC group was recorded"
  ok "opencryptoki: EC group keys refused by capability: $(cat "$work/ecg.out")"
  # A key made with the stock tool, as pkcs11-config/README.md shows for a
  # card: opencryptoki makes it extractable (pkcs11-tool cannot ask
  # otherwise), so it is refused, and the one line says what works.
  GS_USER_PIN=$(cat "$pin_file") pkcs11-tool --module "$module" --token-label groupsrv --login --pin env:GS_USER_PIN \
    --keypairgen --key-type rsa:2048 --label tool-key --id 0c --usage-decrypt --sensitive >/dev/null 2>&1 ||
    fail "pkcs11-tool --keypairgen on opencryptoki"
  rc=0; gs group create tool --address tool@example.org --use-key "pkcs11:object=tool-key;type=private" \
    > "$work/tool.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] && [ "$(wc -l < "$work/tool.out")" = 1 ] &&
    grep -q "CKA_EXTRACTABLE is true: .*pkcs11-tool cannot ask for CKA_EXTRACTABLE false .*generate the key on the token instead (--key)\$" \
      "$work/tool.out" || fail "group create --use-key of pkcs11-tool's key: exit $rc: $(cat "$work/tool.out")"
  ok "opencryptoki: pkcs11-tool's (extractable) key refused, saying to use --key: $(cat "$work/tool.out")"
  # The slot daemon dies (in the private namespace only: never the
  # machine's): the serving process keeps its token (in-process), a new
  # command cannot start the module, and says which service to start;
  # once pkcsslotd runs again, commands work.
  if [ "$GS_TOK_OCK_MODE" = private ]; then
    slotd=$(cat /run/pkcsslotd.pid)
    kill -KILL "$slotd"
    for _ in $(seq 1 50); do
      { [ -e "/proc/$slotd" ] && ! grep -q ') Z ' "/proc/$slotd/stat"; } 2>/dev/null || break
      sleep 0.1
    done
    expect_status 200 "" "unwrap with pkcsslotd gone (the soft token is in-process)" -- \
      c alice --data-binary @"$work/req-tls.json" "$url"
    rc=0; gs check > "$work/check-slotd.out" 2>&1 || rc=$?
    [ "$rc" = 1 ] && grep -q "^token  *PROBLEM: .*(C_Initialize: CKR_[A-Z_]*: the module could not start; a service it needs may be down (opencryptoki: its slot daemon pkcsslotd" \
      "$work/check-slotd.out" || fail "check with pkcsslotd gone: exit $rc: $(grep -i token "$work/check-slotd.out")"
    pkcsslotd 2>>"$work/pkcsslotd.err" || fail "pkcsslotd did not start again: $(cat "$work/pkcsslotd.err")"
    gs check > "$work/check-slotd.out" 2>&1 || fail "check once pkcsslotd is back: $(grep -i token "$work/check-slotd.out")"
    ok "opencryptoki: pkcsslotd gone: serve goes on, check names the daemon; back: check passes"
  fi
  ;;
esac
kill -TERM "$srv_pid"; wait "$srv_pid" || fail "SIGTERM exit status"; srv_pid=
[ ! -e "$XDG_DATA_HOME" ] || fail "groupmail wrote to its default store (root's ~/.local/share/groupmail under CI): $(find "$XDG_DATA_HOME" | head -5)"
echo "token-matrix $TOKEN: all passed"
