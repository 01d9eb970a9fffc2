#!/usr/bin/env bash
# Bad input for every admin command that can meet it: unknown group,
# duplicate member, invalid certificate, certificate without email, wrong
# PIN, an extractable CA key, a database schema from the future. Each gets
# a one-line error and its documented exit code (docs/groupsrv.1.md), and
# changes nothing: database dump and token object list are compared.
# The extractable key is shown by tests/p11fault in front of SoftHSM
# ("bool CKA_EXTRACTABLE 1" in its control file).
set -euo pipefail
. "$(dirname "$0")/provision-lib.sh"
: "${GS_P11FAULT_MODULE:?}"
[ -f "$GS_P11FAULT_MODULE" ] || fail "no p11fault module at $GS_P11FAULT_MODULE"

expect_rc 0 "$G" -c "$CONF" ca init --key rsa:2048
expect_rc 0 "$G" -c "$CONF" group create eng --address eng@example.org --key rsa:2048
expect_rc 0 "$G" -c "$CONF" group create nosecret --address ns@example.org --key rsa:2048 --methods recipient-key
mkdir "$T/m" "$T/m2"
expect_rc 0 "$G" -c "$CONF" member add eng alice@example.org --issue-cert --out "$T/m"
"$G" -c "$CONF" group show eng --cert > "$T/eng.pem"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/bob.key" -out "$T/bob.pem" -days 2 \
  -subj "/CN=Bob" -addext "subjectAltName=email:bob@example.org" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/anon.key" -out "$T/anon.pem" -days 2 -subj "/CN=anon" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/odd.key" -out "$T/odd.pem" -days 2 \
  -subj "/CN=odd" -addext "subjectAltName=email:eng..x@example.org" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/lt.key" -out "$T/lt.pem" -days 2 \
  -subj "/CN=lt" -addext "subjectAltName=email:eng<x@example.org" 2>/dev/null
printf 'not a certificate\n' > "$T/garbage.pem"

# Keys made by another tool, to adopt with --use-key (SoftHSM adds the
# usages pkcs11-tool does not turn off: CKA_SIGN with --usage-decrypt).
p11 --keypairgen --key-type rsa:2048 --label tool-key --id 7001 --usage-decrypt >/dev/null 2>&1
tool_key="pkcs11:token=groupsrv;object=tool-key;type=private"
# A signing key whose CKA_ALLOWED_MECHANISMS lists every mechanism the
# token has (pkcs11-tool --allowed-mechanisms): more than groupsrv reads.
many_mechs=$(pkcs11-tool --module "$SOFTHSM2_MODULE" -M 2>/dev/null | sed -n 's/^  \([A-Z0-9][A-Za-z0-9-]*\),.*/\1/p' | paste -sd, -)
p11 --keypairgen --key-type rsa:2048 --label many-mech --id 7002 --usage-sign --sensitive \
  --allowed-mechanisms "$many_mechs" >/dev/null 2>&1 || fail "pkcs11-tool --allowed-mechanisms"
# A CA key on a card, adopted by a URI naming its slot (as p11tool writes it).
p11 --keypairgen --key-type rsa:2048 --label card-ca --id 7003 --usage-sign --sensitive \
  --allowed-mechanisms SHA256-RSA-PKCS,RSA-PKCS >/dev/null 2>&1 || fail "pkcs11-tool --keypairgen card-ca"

tok_sum() { p11 --list-objects 2>/dev/null | sha256sum; }
db0=$(db_sum)
tok0=$(tok_sum)
# refuse CODE PATTERN CMD...: exit CODE, one stderr line containing
# PATTERN, database and token unchanged, no member files written.
refuse() {
  local code=$1 pat=$2; shift 2
  expect_rc "$code" "$@"
  expect_err "$pat"
  [ "$(db_sum)" = "$db0" ] || fail "database changed by: $*"
  [ "$(tok_sum)" = "$tok0" ] || fail "token changed by: $*"
  [ -z "$(ls -A "$T/m2")" ] || fail "files left in --out by: $*"
}

# --- unknown group: 3, with every command that takes a group
for cmd in "group show nosuch" "group rotate nosuch" "group retire nosuch --before 1" \
           "group import-cert nosuch --cert $T/eng.pem" "secret rotate nosuch" \
           "member add nosuch bob@example.org --cert $T/bob.pem" \
           "member add nosuch bob@example.org --issue-cert --out $T/m2" \
           "member remove nosuch alice@example.org" "member list nosuch"; do
  # shellcheck disable=SC2086
  refuse 3 "unknown group nosuch" "$G" -c "$CONF" $cmd
done

# --- duplicate member: 3, also case-insensitively, before any file is made
refuse 3 "already a member" "$G" -c "$CONF" member add eng alice@example.org --issue-cert --out "$T/m2"
refuse 3 "already a member" "$G" -c "$CONF" member add eng Alice@Example.org --cert "$T/m/alice@example.org.pem"
refuse 3 "is not a member" "$G" -c "$CONF" member remove eng nobody@example.org

# --- invalid certificate, certificate without email: 1
refuse 1 "not a valid X.509" "$G" -c "$CONF" member add eng bob@example.org --cert "$T/garbage.pem"
refuse 1 "not a valid X.509" "$G" -c "$CONF" group import-cert eng --cert "$T/garbage.pem"
# A certificate whose PEM says it is encrypted (Proc-Type: 4,ENCRYPTED):
# OpenSSL's default asked "Enter PEM pass phrase:" on the terminal and
# waited there. Refused as any unreadable certificate, on a terminal
# (script(1)) with none to type, nothing asked.
sed '1a Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n' "$T/bob.pem" > "$T/bob-enc.pem"
for cmd in "member add eng bob@example.org --cert $T/bob-enc.pem" "group import-cert eng --cert $T/bob-enc.pem"; do
  rc=0; timeout 20 script -qec "'$G' -c '$CONF' $cmd" /dev/null < /dev/null > "$T/tty.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] && ! grep -aqi 'pass phrase' "$T/tty.out" && grep -aq "not a valid X.509" "$T/tty.out" ||
    fail "$cmd, a certificate marked encrypted, on a terminal: exit $rc: $(tr -d '\r' < "$T/tty.out")"
  [ "$(db_sum)" = "$db0" ] || fail "database changed by: $cmd"
done
refuse 3 "cannot read" "$G" -c "$CONF" member add eng bob@example.org --cert "$T/missing.pem"
refuse 1 "no email" "$G" -c "$CONF" member add eng anon@example.org --cert "$T/anon.pem"
refuse 1 "no email" "$G" -c "$CONF" group import-cert eng --cert "$T/anon.pem"
refuse 1 "certificate is for bob@example.org" "$G" -c "$CONF" group import-cert eng --cert "$T/bob.pem"
# the certificate's address is compared with the group's as stored (which
# an older version may have taken under a looser rule), and a refusal says why
refuse 1 "certificate is for eng..x@example.org, not the list address" "$G" -c "$CONF" group import-cert eng --cert "$T/odd.pem"
refuse 1 "certificate email address is malformed: not printable US-ASCII" "$G" -c "$CONF" group import-cert eng --cert "$T/lt.pem"
# a certificate with the list address but another key
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/fake.key" -out "$T/fake.pem" -days 2 \
  -subj "/CN=eng" -addext "subjectAltName=email:eng@example.org" 2>/dev/null
refuse 1 "does not match token key" "$G" -c "$CONF" group import-cert eng --cert "$T/fake.pem"
refuse 1 "does not use group-secret" "$G" -c "$CONF" secret rotate nosecret
refuse 1 "must be between 1 and the current version 1" "$G" -c "$CONF" group retire eng --before 2

# --- wrong PIN: 4 for every command that needs the token
printf '0000\n' > "$T/wrong-pin"; chmod 600 "$T/wrong-pin"
sed "s|^pin_source = .*|pin_source = $T/wrong-pin|" "$CONF" > "$T/wrongpin.conf"
for cmd in "group create new --address new@example.org --key rsa:2048" "group rotate eng" \
           "group retire eng --before 1" "group import-cert eng --cert $T/eng.pem" "secret rotate eng" \
           "member remove eng alice@example.org" "member add eng carol@example.org --issue-cert --out $T/m2"; do
  # shellcheck disable=SC2086
  refuse 4 "PIN incorrect" "$G" -c "$T/wrongpin.conf" $cmd
done
# ca init with a wrong PIN leaves no database behind
sed "/^\[db\]/,/^\[/s|^path = .*|path = $T/db2/new.db|" "$T/wrongpin.conf" > "$T/wrongpin-new.conf"
refuse 4 "PIN incorrect" "$G" -c "$T/wrongpin-new.conf" ca init --key rsa:2048
[ ! -e "$T/db2" ] || fail "ca init with a wrong PIN created $T/db2"
# the right PIN still works (nothing locked)
expect_rc 0 "$G" -c "$CONF" group show eng

# --- an extractable CA key is never used to sign; check flags it
sed "s|^module = .*|module = $GS_P11FAULT_MODULE|" "$CONF" > "$T/fault.conf"
export GS_P11FAULT_CONTROL="$T/p11fault.ctl"
printf 'bool CKA_EXTRACTABLE 1\n' > "$T/p11fault.ctl.tmp" && mv -f "$T/p11fault.ctl.tmp" "$GS_P11FAULT_CONTROL"
for cmd in "group create new --address new@example.org --key rsa:2048" "group rotate eng" \
           "member add eng carol@example.org --issue-cert --out $T/m2"; do
  # shellcheck disable=SC2086
  refuse 1 "CA key gs:ca is extractable or not sensitive (CKA_EXTRACTABLE is true)" "$G" -c "$T/fault.conf" $cmd
done
expect_rc 1 "$G" -c "$T/fault.conf" check
grep -q "^ca .*PROBLEM: CKA_EXTRACTABLE is true" "$T/out" || { cat "$T/out"; fail "check: extractable CA key"; }
grep -q "^group  *eng  *v1 .*PROBLEM: CKA_EXTRACTABLE is true" "$T/out" || { cat "$T/out"; fail "check: extractable group key"; }
# the same module without the override: usable again
: > "$GS_P11FAULT_CONTROL"
expect_rc 0 "$G" -c "$T/fault.conf" check
unset GS_P11FAULT_CONTROL

# --- an HSM held to RSA-OAEP (no CKM_RSA_PKCS decryption): check shows
# it; a group taking PKCS#1 v1.5 senders (the default) is refused naming
# --oaep-only, as every v1.5 message would be; --oaep-only is made.
GS_P11FAULT_PROFILE=oaep-only "$G" -c "$T/fault.conf" check > "$T/out" 2>&1 || true
grep -q "^cap mechanism CKM_RSA_PKCS  *yes: sign\$" "$T/out" || { cat "$T/out"; fail "check: CKM_RSA_PKCS without decryption"; }
# group create's default is refused there: not a bare "yes"
grep -q "^cap group keys (RSA)  *yes, --oaep-only groups only: the token offers no CKM_RSA_PKCS decryption, which PKCS#1 v1.5 senders need: create the group with --oaep-only (RSA-OAEP senders only); group create refuses one taking PKCS#1 v1.5 (the default)\$" \
  "$T/out" || { cat "$T/out"; fail "check: group keys on a token without CKM_RSA_PKCS decryption"; }
# eng, made where v1.5 decrypted, takes v1.5 senders: its keys are sound,
# but check says every such message is refused now.
grep -q "^policy eng  *WARNING: takes PKCS#1 v1.5 senders (made without --oaep-only), but the token offers no CKM_RSA_PKCS decryption: their messages are refused (400 unsupported_algorithm)\$" \
  "$T/out" || { cat "$T/out"; fail "check: a v1.5 group on a token without CKM_RSA_PKCS decryption"; }
refuse 1 "the token offers no CKM_RSA_PKCS decryption, which PKCS#1 v1.5 senders need: create the group with --oaep-only" \
  env GS_P11FAULT_PROFILE=oaep-only "$G" -c "$T/fault.conf" group create v15 --address v15@example.org --key rsa:2048
one_line
expect_rc 0 env GS_P11FAULT_PROFILE=oaep-only "$G" -c "$T/fault.conf" group create oaep --address oaep@example.org \
  --key rsa:2048 --oaep-only
db0=$(db_sum) tok0=$(tok_sum)

# --- an EC group on a token whose ECDH takes no X9.63 KDF (SoftHSM 2.6.1
# lists CKM_ECDH1_DERIVE and takes CKD_NULL only): no RFC 5753 message to
# it could ever be read (400 unsupported_algorithm at every unwrap), so
# check says so by a trial derive and group create refuses, made or
# adopted, nothing recorded or left on the token. Where the derive takes
# the KDF (p11fault's ecdh-kdf profile, as NSS softokn does) the group is
# made; check then names its KDFs there, and warns on the plain token.
ecdh_no_kdf="the token's CKM_ECDH1_DERIVE takes no X9.63 KDF (CKD_SHA1_KDF and CKD_SHA256_KDF refused: C_DeriveKey: CKR_MECHANISM_PARAM_INVALID (the token refuses these mechanism parameters))"
"$G" -c "$CONF" check > "$T/out" 2>&1 || true
grep -qF "cap group keys (EC)        no: $ecdh_no_kdf, which every RFC 5753 sender's message needs; group create refuses" \
  "$T/out" || { grep '^cap group keys' "$T/out"; fail "check: EC group keys on a token without the X9.63 KDF"; }
for k in ec:p256 ec:p384; do
  refuse 1 "this token cannot hold EC group keys: $ecdh_no_kdf, which every RFC 5753 sender's message needs, so none could be read: use an RSA key (--key rsa:3072)" \
    "$G" -c "$CONF" group create ecg --address ecg@example.org --key "$k"
done
# A token that refuses the trial derive for good in other words (the AES
# KEK's template, the function by its policy) is answered the same: its
# lasting answer ("cannot hold"; 400 over REST, as token_caps posts),
# not a token failure to try again (503 over REST) for ever. A device
# error is still that.
for rv in "0xd1 CKR_TEMPLATE_INCONSISTENT" "0x54 CKR_FUNCTION_NOT_SUPPORTED"; do
  printf 'C_DeriveKey %s\n' "${rv%% *}" > "$T/derive.ctl"
  refuse 1 "this token cannot hold EC group keys: the token's CKM_ECDH1_DERIVE takes no X9.63 KDF (CKD_SHA1_KDF and CKD_SHA256_KDF refused: C_DeriveKey: ${rv#* }" \
    env GS_P11FAULT_CONTROL="$T/derive.ctl" "$G" -c "$T/fault.conf" group create ecg --address ecg@example.org --key ec:p256
done
printf 'C_DeriveKey 0x30\n' > "$T/derive.ctl"
refuse 1 "trying ECDH with the X9.63 KDF (session key): token device error (C_DeriveKey: CKR_DEVICE_ERROR)" \
  env GS_P11FAULT_CONTROL="$T/derive.ctl" "$G" -c "$T/fault.conf" group create ecg --address ecg@example.org --key ec:p256
# an adopted key, sound but for the usages SoftHSM adds to pkcs11-tool's
# keys (cleared by p11fault, as a token that takes them would)
p11 --keypairgen --key-type EC:prime256v1 --label tool-ec --id 7004 --usage-derive --sensitive \
  --allowed-mechanisms ECDH1-DERIVE >/dev/null 2>&1 || fail "pkcs11-tool --keypairgen EC"
db0=$(db_sum) tok0=$(tok_sum)
printf 'bool CKA_SIGN 0\nbool 0x109 0\nbool CKA_DECRYPT 0\nbool CKA_UNWRAP 0\n' > "$T/ec.ctl"
refuse 1 "this token cannot hold EC group keys: $ecdh_no_kdf" env GS_P11FAULT_CONTROL="$T/ec.ctl" \
  "$G" -c "$T/fault.conf" group create ecg --address ecg@example.org \
  --use-key "pkcs11:token=groupsrv;object=tool-ec;type=private"
expect_rc 0 env GS_P11FAULT_PROFILE=ecdh-kdf "$G" -c "$T/fault.conf" group create ecg --address ecg@example.org \
  --key ec:p256
GS_P11FAULT_PROFILE=ecdh-kdf "$G" -c "$T/fault.conf" check > "$T/out" 2>&1 || true
grep -q "^cap group keys (EC)  *yes: ECDH with the X9.63 KDF (SHA-1, SHA-256) and AES key wrap\$" "$T/out" &&
  grep -q "^policy ecg  *v1 ECDH X9.63 KDF: SHA-1, SHA-256\$" "$T/out" ||
  { grep '^cap group keys\|^policy' "$T/out"; fail "check: EC group keys where ECDH takes the X9.63 KDF"; }
"$G" -c "$CONF" check > "$T/out" 2>&1 || true
grep -qF "policy ecg              WARNING: v1 is an EC key, but $ecdh_no_kdf: every RFC 5753 sender's message is refused (400 unsupported_algorithm)" \
  "$T/out" || { grep '^policy' "$T/out"; fail "check: an EC group on a token without the X9.63 KDF"; }
# --- the same by the key: one allowing RSA-OAEP alone (as the hint for
# CKA_ALLOWED_MECHANISMS once said to make it) cannot decrypt v1.5; for
# a group taking v1.5 it is refused, naming both ways out; an --oaep-only
# group takes it. One adopted before that refusal (the database saying
# v1.5) gets check's WARNING row. (p11fault reports the usages pkcs11-tool
# cannot turn off on SoftHSM as off.)
p11 --keypairgen --key-type rsa:2048 --label oaep-key --id 7005 --usage-decrypt --sensitive \
  --allowed-mechanisms RSA-PKCS-OAEP >/dev/null 2>&1 || fail "pkcs11-tool --keypairgen oaep-key"
oaep_key="pkcs11:token=groupsrv;object=oaep-key;type=private"
db0=$(db_sum) tok0=$(tok_sum)
export GS_P11FAULT_CONTROL="$T/p11fault.ctl"
printf 'bool CKA_SIGN 0\nbool 0x109 0\nbool CKA_UNWRAP 0\n' > "$GS_P11FAULT_CONTROL.tmp" && mv -f "$GS_P11FAULT_CONTROL.tmp" "$GS_P11FAULT_CONTROL"
refuse 1 "--use-key $oaep_key: CKA_ALLOWED_MECHANISMS lacks RSA-PKCS, which the group's PKCS#1 v1.5 senders need: make the key with both (pkcs11-tool --allowed-mechanisms RSA-PKCS-OAEP,RSA-PKCS), or create the group with --oaep-only" \
  "$G" -c "$T/fault.conf" group create adopted --address adopted@example.org --methods tls --use-key "$oaep_key"
expect_rc 0 "$G" -c "$T/fault.conf" group create adopted --address adopted@example.org --methods tls --oaep-only \
  --use-key "$oaep_key"
sqlite3 "$T/db/groupsrv.db" "UPDATE groups SET allow_pkcs1v15 = 1 WHERE name = 'adopted'"
"$G" -c "$T/fault.conf" check > "$T/out" 2>&1 || true
grep -q "^policy adopted  *WARNING: takes PKCS#1 v1.5 senders (made without --oaep-only), but key version 1's CKA_ALLOWED_MECHANISMS leaves out CKM_RSA_PKCS: their messages are refused (400 unsupported_algorithm)\$" \
  "$T/out" || { cat "$T/out"; fail "check: a v1.5 group whose key allows RSA-OAEP alone"; }
grep -q "^policy eng .*WARNING" "$T/out" && { cat "$T/out"; fail "check warns of eng, whose key allows RSA-PKCS"; }
: > "$GS_P11FAULT_CONTROL"
unset GS_P11FAULT_CONTROL
db0=$(db_sum) tok0=$(tok_sum)

# --- adopting a key (--use-key): checked against what the token allows,
# refused with what to do; nothing recorded, the key itself left alone
refuse 1 "--use-key $tool_key: CKA_SIGN allowed (policy: no signing): make the key with exactly the usage" \
  "$G" -c "$CONF" group create adopt --address adopt@example.org --use-key "$tool_key"
refuse 1 "needs a pkcs11: URI" "$G" -c "$CONF" group create adopt --address adopt@example.org --use-key tool-key
refuse 1 "key not found" "$G" -c "$CONF" group create adopt --address adopt@example.org \
  --use-key "pkcs11:token=groupsrv;object=nosuch;type=private"
refuse 2 "exclude each other" "$G" -c "$CONF" group create adopt --address adopt@example.org --key rsa:2048 \
  --use-key "$tool_key"
sed "/^\[db\]/,/^\[/s|^path = .*|path = $T/db2/groupsrv.db|" "$CONF" > "$T/db2.conf"
refuse 1 "--use-key $tool_key: usage beyond signing set (CKA_DECRYPT): a CA key must be made on the token" \
  "$G" -c "$T/db2.conf" ca init --use-key "$tool_key"
# ... and one allowing more mechanisms than groupsrv reads (16; SoftHSM
# gives back up to 64, then CKR_BUFFER_TOO_SMALL) is refused, not taken
# as "cannot be read through this module (not verified)" nor judged by
# its first 16. The usages a stock tool cannot clear on SoftHSM are
# cleared by p11fault, as a token that takes them would.
sed "s|^module = .*|module = $GS_P11FAULT_MODULE|" "$T/db2.conf" > "$T/db2-fault.conf"
export GS_P11FAULT_CONTROL="$T/p11fault.ctl"
printf 'bool CKA_DECRYPT 0\nbool CKA_UNWRAP 0\nbool 0x109 0\n' > "$T/p11fault.ctl.tmp" &&
  mv -f "$T/p11fault.ctl.tmp" "$GS_P11FAULT_CONTROL"
refuse 1 "CKA_ALLOWED_MECHANISMS lists more mechanisms than the 16 groupsrv reads" \
  "$G" -c "$T/db2-fault.conf" ca init --use-key "pkcs11:token=groupsrv;object=many-mech;type=private"
# A key recorded by a URI whose slot-id no longer matches (the reader
# plugged in elsewhere): check says so, with both slot ids, and that the
# key may well be there; not "missing from the token" (it is not).
slot=$(pkcs11-tool --module "$SOFTHSM2_MODULE" -L 2>/dev/null | sed -n 's/^Slot [0-9]* (0x\([0-9a-f]*\)).*/\1/p' | head -1)
[ -n "$slot" ] || fail "no slot id from pkcs11-tool -L"
expect_rc 0 "$G" -c "$T/db2-fault.conf" ca init \
  --use-key "pkcs11:token=groupsrv;slot-id=$((16#$slot));object=card-ca;type=private"
sqlite3 "$T/db2/groupsrv.db" "UPDATE ca SET key_label = replace(key_label, 'slot-id=$((16#$slot))', 'slot-id=7')"
expect_rc 1 "$G" -c "$T/db2-fault.conf" check
grep -q "^ca .*PROBLEM: not found by its recorded URI: key URI names another slot (slot-id=7; the token is in slot-id=$((16#$slot)))" "$T/out" ||
  { cat "$T/out"; fail "check: a key URI whose slot-id no longer matches"; }
# A PIN source in a key URI recorded before --use-key refused it (p11tool
# and OpenSSL's pkcs11 provider write one): serve takes the key and never
# reads the file; check names it on the key's row, which stays OK.
sqlite3 "$T/db2/groupsrv.db" "UPDATE ca SET key_label = replace(key_label, ';slot-id=7', '') || '?pin-source=file:$T/card.pin'"
expect_rc 0 "$G" -c "$T/db2-fault.conf" check
grep -q "^ca .*OK; WARNING: its recorded URI names a PIN source (pin-source), which is not read: the token's PIN is \[hsm\] pin_source's" "$T/out" ||
  { cat "$T/out"; fail "check: a recorded key URI with a pin-source"; }
unset GS_P11FAULT_CONTROL

# --- a database from a newer program: refused, untouched
cp "$T/db/groupsrv.db" "$T/newer.db"
sqlite3 "$T/newer.db" "PRAGMA user_version = 99"
sed "/^\[db\]/,/^\[/s|^path = .*|path = $T/newer.db|" "$CONF" > "$T/newer.conf"
newer0=$(sqlite3 "$T/newer.db" .dump | sha256sum)
for cmd in "group list" "group rotate eng" "member list eng" "member add eng bob@example.org --cert $T/bob.pem"; do
  # shellcheck disable=SC2086
  refuse 1 "newer.db was written by a newer groupsrv (schema version 99, this program knows up to 4): run that newer version, or restore the backup taken before the upgrade" \
    "$G" -c "$T/newer.conf" $cmd
done
expect_rc 1 "$G" -c "$T/newer.conf" check
grep -q "^database  PROBLEM: .*written by a newer groupsrv (schema version 99" "$T/out" || { cat "$T/out"; fail "check: newer schema"; }
[ "$(sqlite3 "$T/newer.db" .dump | sha256sum)" = "$newer0" ] || fail "the newer database was changed"
[ "$(sqlite3 "$T/newer.db" 'PRAGMA user_version')" = 99 ] || fail "the newer database's version was changed"
echo "provision-refuse: OK"
