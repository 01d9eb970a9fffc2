#!/usr/bin/env bash
# ceremony-servers.sh BIN SRC: the key ceremony between two group servers,
# each with its own SoftHSM token (alpha sends, beta receives). beta makes
# a transport key; alpha exports the replicable group eng with the user PIN
# and the SO PIN; beta imports it. The copies read back sensitive and not
# extractable, `groupsrv check` passes on both, and beta's own `serve`
# starts (its start-up key audit passes) and unwraps a message sent to the
# group with a stock tool. Every refusal is one line with its exit code
# and leaves the token's objects as they were: wrong SO PIN, wrong user
# PIN, a group that is not replicable, a file for another transport key,
# changed bytes (a structure-aware sample; test_gsk changes every byte),
# a file signed by another CA, a key version already present. Both audit
# logs name the ceremony, the key versions and the transport key, and
# verify. The SO PIN typed on a terminal (script(1) gives the command a
# pty) is not echoed. Then a rotation travels as a one-version file; the
# clone, with its own database, refuses to make versions (or group
# certificates, which its CA cannot give) of its own. Last,
# a cluster: gamma shares alpha's database and gets the CA key and the
# group's keys on its own token (ca export/import, group import that only
# fills the token), and `check` passes there.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/ceremony-lib.sh"

mkserver alpha
mkserver beta

# ---- alpha: the origin of group eng ----
gs_alpha ca init --key rsa:2048 --replicable >/dev/null
gs_alpha ca show > "$work/alpha-ca.pem"
gs_alpha group create eng --address eng@example.org --key rsa:2048 --replicable --allow-pkcs1v15 \
  --methods tls,recipient-key,group-secret,membership-cert > "$work/out"
grep -q "replicable" "$work/out" || fail "group create does not say the group is replicable"
gs_alpha group rotate eng >/dev/null
gs_alpha group create plain --address plain@example.org --key rsa:2048 >/dev/null
gs_alpha member add eng alice@example.org --issue-cert --out "$work" >/dev/null
gs_alpha group show eng --cert > "$work/eng-v2.pem"
objects alpha > "$work/alpha.objs"
field "$work/alpha.objs" gs:group:eng:v2 Access | grep -q "always sensitive, extractable" ||
  fail "the replicable group key is not sensitive and extractable: $(cat "$work/alpha.objs")"
expect 0 "check on alpha accepts the replicable keys (trusted wrap only)" -- gs_alpha check
grep -q "gs:group:eng:v1 .*OK (replicable" "$work/out" || fail "check does not say the key is replicable"

# ---- beta: a transport key ----
gs_beta ca init --key rsa:2048 >/dev/null
expect 0 "token transport-key on beta" -- gs_beta token transport-key --out "$work/beta-transport.pem"
fp=$(fingerprint "$work/beta-transport.pem")
spoken=$(echo "$fp" | sed 's/..../& /g; s/ $//')
grep -q "sha256 $spoken" "$work/out" || fail "transport-key does not print the fingerprint $spoken: $(cat "$work/out")"
objects beta > "$work/beta.objs"
tl=$(grep -o 'gs:transport:[0-9a-f]*' "$work/beta-transport.pem" | head -1)
field "$work/beta.objs" "$tl" Access | grep -q "never extractable" || fail "transport key extractable"
[ "$(field "$work/beta.objs" "$tl" Usage)" = unwrap ] || fail "transport key is not unwrap only"
ok "the fingerprint printed is the SHA-256 of the public key (openssl pkey)"
# Which RSA-OAEP hashes the new key unwraps with (trials on the token),
# in the file: the sender wraps the one-time key with one of them. It
# chose SHA-256 wherever its token could, whatever the receiving token
# unwraps with, and such a file was refused only at the import, after the
# whole ceremony, with nothing the operators could change.
grep -qx "unwraps: RSA-OAEP-SHA1" "$work/beta-transport.pem" ||
  fail "the transport key file does not say what the key unwraps with: $(head -8 "$work/beta-transport.pem")"
# a receiving token that unwraps with SHA-256 only (its file says so),
# and alpha's SoftHSM, which wraps with SHA-1 only: refused at the
# export, before any file (the export wrote one with SHA-1)
sed 's/^unwraps: .*/unwraps: RSA-OAEP-SHA256/' "$work/beta-transport.pem" > "$work/sha256-only.pem"
refused alpha 1 "export to a transport key whose token unwraps with RSA-OAEP-SHA256 only" -- \
  gs_alpha group export eng --all --to "$work/sha256-only.pem" --out "$work/x.gsk"
expect_msg "the receiving token unwraps the one-time key with RSA-OAEP-SHA256 only \(its transport key file says so\), which this token does not wrap with \(C_WrapKey: CKR_"
[ ! -e "$work/x.gsk" ] || fail "a refused export wrote a file"
# a token whose RSA-OAEP unwraps under neither hash (tests/p11fault:
# CKR_MECHANISM_PARAM_INVALID): no transport key made, none left
sed "s#^module = .*#module = $GS_P11FAULT_MODULE#" "$work/beta.conf" > "$work/beta-oaep.conf"
printf 'C_UnwrapKey 0x71\n' > "$work/p11fault-oaep.ctl"
GS_P11FAULT_CONTROL=$work/p11fault-oaep.ctl GS_P11FAULT_TARGET=$module GS_CONF_beta=$work/beta-oaep.conf \
  refused beta 1 "token transport-key where RSA-OAEP unwraps under no hash" -- \
  gs_beta token transport-key --out "$work/x.pem"
expect_msg "^groupsrv: this token cannot receive keys: its transport key unwrapped with RSA-OAEP under neither SHA-1 nor SHA-256 \(tried on the new key\)$"
[ ! -e "$work/x.pem" ] || fail "a refused transport-key wrote its file"
# a token with no room for the trials' session key (CKR_DEVICE_MEMORY):
# the token's failure, named, not "this token cannot receive keys" (a
# full token told it can never receive keys), the pair deleted
printf 'C_UnwrapKey CKR_DEVICE_MEMORY\n' > "$work/p11fault-oaep.ctl"
GS_P11FAULT_CONTROL=$work/p11fault-oaep.ctl GS_P11FAULT_TARGET=$module GS_CONF_beta=$work/beta-oaep.conf \
  refused beta 1 "token transport-key where the token has no room during the RSA-OAEP trials" -- \
  gs_beta token transport-key --out "$work/x.pem"
expect_msg "^groupsrv: trying the transport key's RSA-OAEP unwrap: .*CKR_DEVICE_MEMORY"
grep -q "cannot receive keys" "$work/err" && fail "a full token told it cannot receive keys: $(cat "$work/err")"
[ ! -e "$work/x.pem" ] || fail "a refused transport-key wrote its file"

# ---- refusals on the sending side ----
printf 'not-the-so-pin\n' > "$work/bad-so-pin"; chmod 600 "$work/bad-so-pin"
sed "s#^so_pin_source = .*#so_pin_source = $work/bad-so-pin#" "$work/alpha.conf" > "$work/alpha-badso.conf"
GS_CONF_alpha=$work/alpha-badso.conf refused alpha 4 "export with a wrong SO PIN" -- \
  gs_alpha group export eng --all --to "$work/beta-transport.pem" --out "$work/x.gsk"
expect_msg "SO PIN"
# A token whose SO PIN is at its last try, or locked (tests/p11fault
# reports the flags a counting token would): the SO PIN is not sent
sed "s#^module = .*#module = $GS_P11FAULT_MODULE#" "$work/alpha.conf" > "$work/alpha-soflags.conf"
for flag in CKF_SO_PIN_FINAL_TRY CKF_SO_PIN_LOCKED; do
  printf 'tokenflags %s\n' "$flag" > "$work/p11fault-so.ctl"
  GS_P11FAULT_CONTROL=$work/p11fault-so.ctl GS_P11FAULT_TARGET=$module GS_P11FAULT_COUNTS=$work/p11fault-so.counts \
    GS_CONF_alpha=$work/alpha-soflags.conf refused alpha 4 "export with the SO PIN at $flag" -- \
    gs_alpha group export eng --all --to "$work/beta-transport.pem" --out "$work/x.gsk"
  expect_msg "security officer login: the token (allows one more SO PIN try|reports the SO PIN locked) \\($flag\\)"
  # the user's logins (at open, and again after the SO's step) are all:
  # no C_Login for the SO
  grep -qx "C_Login 2" "$work/p11fault-so.counts" || fail "$flag: C_Login calls: $(grep '^C_Login ' "$work/p11fault-so.counts")"
done
printf 'not-the-user-pin\n' > "$work/bad-pin"; chmod 600 "$work/bad-pin"
sed "s#^pin_source = .*#pin_source = $work/bad-pin#" "$work/alpha.conf" > "$work/alpha-badpin.conf"
GS_CONF_alpha=$work/alpha-badpin.conf refused alpha 4 "export with a wrong user PIN" -- \
  gs_alpha group export eng --all --to "$work/beta-transport.pem" --out "$work/x.gsk"
expect_msg "PIN incorrect"
refused alpha 1 "export of a group that is not replicable" -- \
  gs_alpha group export plain --to "$work/beta-transport.pem" --out "$work/x.gsk"
expect_msg "not replicable"
# a token that will not let the SO's trusted one-time key wrap a key
# made replicable (CKR_KEY_NOT_WRAPPABLE, tests/p11fault): said as the
# token's, not as "it was not made replicable", which sent the operator
# to make again a group that was
printf 'C_WrapKey 0x69\n' > "$work/p11fault-nowrap.ctl"
GS_P11FAULT_CONTROL=$work/p11fault-nowrap.ctl GS_P11FAULT_TARGET=$module GS_CONF_alpha=$work/alpha-soflags.conf \
  refused alpha 1 "export where the token will not wrap under the trusted key" -- \
  gs_alpha group export eng --version 1 --to "$work/beta-transport.pem" --out "$work/x.gsk"
expect_msg "the token would not wrap key gs:group:eng:v1 \(CKR_KEY_NOT_WRAPPABLE\) under the one-time key the security officer made trusted, though the key is extractable under trusted wrap"
refused alpha 3 "export of a version that does not exist" -- \
  gs_alpha group export eng --version 9 --to "$work/beta-transport.pem" --out "$work/x.gsk"
[ ! -e "$work/x.gsk" ] || fail "a refused export wrote a file"
audit_has "$work/alpha/audit.jsonl" group-export "the token refused the SO PIN" "$fp"
audit_has "$work/alpha/audit.jsonl" group-export "opening token"
audit_has "$work/alpha/audit.jsonl" group-export "group plain is not replicable"

# ---- the export ----
# The group's own settings travel with its keys: a member wrap other than
# the default, and the key policy, must come out the same on beta.
gs_alpha group set eng --wrap oaep >/dev/null
gs_alpha group show eng | grep -E '^(member wrap|key policy):' > "$work/alpha-settings"
grep -q "member wrap: *oaep" "$work/alpha-settings" || fail "group set --wrap oaep not shown: $(cat "$work/alpha-settings")"
expect 0 "group export eng --all (user PIN and SO PIN)" -- \
  gs_alpha group export eng --all --to "$work/beta-transport.pem" --out "$work/eng.gsk"
grep -q "key versions: 1 (gs:group:eng:v1), 2 (gs:group:eng:v2)" "$work/out" || fail "export output: $(cat "$work/out")"
[ "$(stat -c %a "$work/eng.gsk")" = 600 ] || fail "the shipment is not mode 0600"
ceremony=$(sed -n 's/.*(ceremony \([0-9a-f]*\)).*/\1/p' "$work/out")
[ -n "$ceremony" ] || fail "no ceremony id printed"
audit_has "$work/alpha/audit.jsonl" group-export ok "$ceremony" "$fp" '"key_versions":\[1,2\]' gs:reject:eng
# The file by stock tools: DER, the manifest, the CA's signature over it.
openssl asn1parse -inform DER -in "$work/eng.gsk" > "$work/asn1" || fail "the .gsk is not DER"
grep -q "UTF8STRING *:groupsrv-key-shipment-1" "$work/asn1" || fail "format string missing: $(head -5 "$work/asn1")"
# The two OCTET STRINGs: the manifest and the signature, cut out with dd.
sed -n 's/^ *\([0-9]*\):d=1 *hl=\([0-9]*\) *l= *\([0-9]*\) prim: OCTET STRING.*/\1 \2 \3/p' "$work/asn1" > "$work/parts"
[ "$(wc -l < "$work/parts")" = 2 ] || fail "the .gsk is not SEQUENCE { UTF8String, OCTET STRING, OCTET STRING }"
read -r o h l < <(sed -n 1p "$work/parts")
dd if="$work/eng.gsk" of="$work/manifest.json" bs=1 skip=$((o + h)) count="$l" status=none
read -r o h l < <(sed -n 2p "$work/parts")
dd if="$work/eng.gsk" of="$work/sig.bin" bs=1 skip=$((o + h)) count="$l" status=none
openssl x509 -in "$work/alpha-ca.pem" -pubkey -noout > "$work/alpha-ca.pub"
openssl dgst -sha256 -verify "$work/alpha-ca.pub" -signature "$work/sig.bin" "$work/manifest.json" >/dev/null ||
  fail "openssl dgst does not verify the CA's signature over the manifest"
python3 - "$work/manifest.json" "$fp" <<'PY' || fail "the manifest does not say what it must"
import json, sys
m = json.load(open(sys.argv[1]))
assert m["group"]["name"] == "eng" and m["group"]["replicable"] and m["complete"]
assert m["transport_key"]["sha256"] == sys.argv[2]
kinds = sorted((k["kind"], k.get("version", 0)) for k in m["keys"])
assert kinds == [("group", 1), ("group", 2), ("reject", 0), ("secret", 1)], kinds
for k in m["keys"]:
    assert k["label"] and len(k["id"]) == 32 and k["wrapped"]
    if k["kind"] == "group":
        assert k["certificate"].startswith("-----BEGIN CERTIFICATE-----")
PY
ok "the manifest names group, versions, labels, CKA_IDs, certificates; openssl verifies the signature"

# ---- refusals on the receiving side ----
refused beta 1 "import checked against another CA (beta's own)" -- gs_beta group import --in "$work/eng.gsk"
expect_msg "signed by the CA"
gs_alpha token transport-key --out "$work/alpha-transport.pem" >/dev/null
gs_alpha group export eng --all --to "$work/alpha-transport.pem" --out "$work/for-alpha.gsk" >/dev/null
refused beta 3 "import of a file made for another transport key" -- \
  gs_beta group import --in "$work/for-alpha.gsk" --ca "$work/alpha-ca.pem"
expect_msg "transport key"
# Changed bytes: the frame, the manifest's fields, the wrapped keys, the
# signature, the last byte (unit_gsk changes every byte of a file).
size=$(stat -c %s "$work/eng.gsk")
positions="0 1 3 8 $((size / 2)) $((size - 300)) $((size - 1))"
for pat in '"name": "eng"' '"label": "gs:group:eng:v1"' '"id": "' '"wrapped": "' '"replicable": true' \
  'BEGIN CERTIFICATE' '"ca_sha256": "' '"kek_id": "'; do
  at=$(grep -boa -- "$pat" "$work/eng.gsk" | head -n 1 | cut -d: -f1)
  [ -n "$at" ] || fail "no '$pat' in the file"
  positions="$positions $((at + ${#pat} + 1))"
done
# One snapshot around the loop: an import that left anything would show.
before=$(snapshot beta)
n=0
for pos in $positions; do
  cp "$work/eng.gsk" "$work/bad.gsk"
  python3 -c 'import sys; p=sys.argv[1]; i=int(sys.argv[2]); b=bytearray(open(p,"rb").read()); b[i]^=0x04; open(p,"wb").write(b)' \
    "$work/bad.gsk" "$pos"
  expect 1 "import of the file with byte $pos changed" -- \
    gs_beta group import --in "$work/bad.gsk" --ca "$work/alpha-ca.pem" >/dev/null
  n=$((n + 1))
done
[ "$(snapshot beta)" = "$before" ] || fail "a changed file left objects on beta's token"
ok "$n files with one byte changed each refused (exit 1, one line), beta's token unchanged"
head -c $((size - 10)) "$work/eng.gsk" > "$work/bad.gsk"
refused beta 1 "import of a truncated file" -- gs_beta group import --in "$work/bad.gsk" --ca "$work/alpha-ca.pem"

# ---- the token goes away during the import (tests/p11fault in front of
# beta's SoftHSM): exit 4, not a refusal of the file; what could not be
# taken off the token again is named, with how to delete it ----
sed "s#^module = .*#module = $GS_P11FAULT_MODULE#" "$work/beta.conf" > "$work/beta-gone.conf"
before=$(snapshot beta)
export GS_P11FAULT_CONTROL=$work/p11fault-gone.ctl GS_P11FAULT_TARGET=$module
printf 'C_Decrypt CKR_DEVICE_REMOVED\n' > "$GS_P11FAULT_CONTROL"
GS_CONF_beta=$work/beta-gone.conf expect 4 "import while the token goes away" -- \
  gs_beta group import --in "$work/eng.gsk" --ca "$work/alpha-ca.pem"
[ "$(cat "$work/err")" = "groupsrv: the decryption test of key gs:group:eng:v1 could not run: token removed or not present (C_Decrypt: CKR_DEVICE_REMOVED)" ] ||
  fail "import while the token goes away: $(cat "$work/err")"
[ "$(snapshot beta)" = "$before" ] || fail "an import the token's removal stopped left objects on beta's token"
printf 'C_Decrypt CKR_DEVICE_REMOVED\nC_DestroyObject CKR_DEVICE_REMOVED\n' > "$GS_P11FAULT_CONTROL"
GS_CONF_beta=$work/beta-gone.conf expect 4 "import while the token goes away for good" -- \
  gs_beta group import --in "$work/eng.gsk" --ca "$work/alpha-ca.pem"
grep -qF "could not run: token removed or not present (C_Decrypt: CKR_DEVICE_REMOVED); left on the token: gs:group:eng:v1, gs:group:eng:v2, gs:secret:eng:v1, gs:reject:eng (delete them: pkcs11-tool --login --delete-object --label LABEL --type privkey, pubkey or secrkey)" "$work/err" ||
  fail "import while the token goes away for good: $(cat "$work/err")"
unset GS_P11FAULT_CONTROL GS_P11FAULT_TARGET
for l in gs:group:eng:v1 gs:group:eng:v2 gs:secret:eng:v1 gs:reject:eng; do
  for type in privkey pubkey secrkey; do
    GS_PIN=$(cat "$work/tok-beta/user-pin") SOFTHSM2_CONF=$work/tok-beta/softhsm2.conf pkcs11-tool --module "$module" \
      --token-label beta --login --pin env:GS_PIN --delete-object --label "$l" --type "$type" >/dev/null 2>&1 || true
  done
done
[ "$(snapshot beta)" = "$before" ] || fail "the objects the message named were not all there was"
ok "the token gone mid-import: exit 4, what is left named; deleted as the message says, beta is as before"
# a token with no room (CKR_DEVICE_MEMORY) at the second key's unwrap:
# the token's failure, exit 4 as when the decryption test cannot run, not
# a refusal of the file (it said "refused: importing the keys: ...", exit
# 1, and its audit record too); what the run made is taken off again
printf 'C_UnwrapKey CKR_DEVICE_MEMORY 1 2\n' > "$work/p11fault-full.ctl"
GS_P11FAULT_CONTROL=$work/p11fault-full.ctl GS_P11FAULT_TARGET=$module GS_CONF_beta=$work/beta-gone.conf \
  refused beta 4 "import onto a token with no room" -- gs_beta group import --in "$work/eng.gsk" --ca "$work/alpha-ca.pem"
expect_msg "^groupsrv: importing the keys: token device error \(unwrapping gs:group:eng:v2: C_UnwrapKey: CKR_DEVICE_MEMORY \(the token is out of memory"
! grep -q "refused" "$work/err" || fail "a full token is said as a refusal of the file: $(cat "$work/err")"
audit_has "$work/beta/audit.jsonl" group-import "importing the keys: token device error"

# ---- the import (more files follow for this transport key here: kept) ----
expect 0 "group import on beta (checked against alpha's CA)" -- \
  gs_beta group import --in "$work/eng.gsk" --ca "$work/alpha-ca.pem" --keep-transport-key
grep -q "decryption test" "$work/out" || fail "import does not say the keys passed the decryption test"
grep -q "^transport key $tl kept (--keep-transport-key)" "$work/out" || fail "import does not say it kept $tl: $(cat "$work/out")"
audit_has "$work/beta/audit.jsonl" group-import ok '"keep_transport_key":true'
objects beta > "$work/beta.objs"
for v in 1 2; do
  acc=$(field "$work/beta.objs" "gs:group:eng:v$v" Access)
  [ "$acc" = "sensitive" ] || fail "copy v$v: Access: $acc (wanted sensitive, not extractable)"
  [ "$(field "$work/beta.objs" "gs:group:eng:v$v" ID)" = "$(field "$work/alpha.objs" "gs:group:eng:v$v" ID)" ] ||
    fail "copy v$v has another CKA_ID"
done
[ "$(field "$work/beta.objs" gs:reject:eng Access)" = "sensitive" ] || fail "the rejection key copy is extractable"
ok "the copies read back sensitive and not extractable, with the same labels and CKA_IDs"
# beta passes on no copy of a key version (docs/groupsrv.1.md); a group
# secret key copy it can, as every server wraps those to members
refused beta 1 "export of a copy from the clone" -- \
  gs_beta group export eng --version 1 --to "$work/alpha-transport.pem" --out "$work/x.gsk"
expect_msg "gs:group:eng:v1 on this token cannot be wrapped \(an imported copy\)"
expect 0 "export of a group secret key copy from the clone" -- \
  gs_beta group export eng --secret-version 1 --to "$work/alpha-transport.pem" --out "$work/x.gsk"
rm -f "$work/x.gsk"
gs_beta group show eng | grep -E '^(member wrap|key policy):' > "$work/beta-settings"
cmp -s "$work/alpha-settings" "$work/beta-settings" ||
  fail "the imported group's member wrap or key policy differs: alpha: $(cat "$work/alpha-settings"); beta: $(cat "$work/beta-settings")"
ok "the imported group keeps its member wrap (oaep) and key policy"
refused beta 3 "import of key versions already present" -- \
  gs_beta group import --in "$work/eng.gsk" --ca "$work/alpha-ca.pem"
expect_msg "already"
expect 0 "check on beta accepts the imported copies" -- gs_beta check
# the transport key left on beta: with beta's user PIN, eng.gsk would give
# its keys in the clear to any PKCS#11 program (SECURITY.md); a warning
grep -q "^transport WARNING: $tl is still on the token: with this token's user PIN, a .gsk file made for it gives the keys in it in the clear" "$work/out" ||
  fail "check on beta does not warn of the transport key left there: $(cat "$work/out")"
grep -q "gs:group:eng:v2 .*OK (imported copy)" "$work/out" || fail "check does not show the copy: $(cat "$work/out")"
# alpha's own transport key (for the refusal above), deleted as step 7
# of docs/operations.md says: check no longer names it
atl=$(grep -o 'gs:transport:[0-9a-f]*' "$work/alpha-transport.pem" | head -1)
for t in privkey pubkey; do
  GS_PIN=$(cat "$work/tok-alpha/user-pin") SOFTHSM2_CONF=$work/tok-alpha/softhsm2.conf pkcs11-tool --module "$module" \
    --token-label alpha --login --pin env:GS_PIN --delete-object --type $t --label "$atl" >/dev/null 2>&1 ||
    fail "cannot delete alpha's transport key ($t)"
done
expect 0 "check on alpha still passes" -- gs_alpha check
! grep -q "^transport" "$work/out" || fail "check on alpha names a transport key deleted: $(cat "$work/out")"
# ...and every other extractable key is still a problem (tests/p11fault in
# front of SoftHSM makes the token report attributes it does not have).
sed "s#^module = .*#module = $GS_P11FAULT_MODULE#" "$work/alpha.conf" > "$work/alpha-fault.conf"
sed "s#^module = .*#module = $GS_P11FAULT_MODULE#" "$work/beta.conf" > "$work/beta-fault.conf"
export GS_P11FAULT_CONTROL=$work/p11fault.ctl GS_P11FAULT_TARGET=$module
printf 'bool 0x210 0\n' > "$GS_P11FAULT_CONTROL" # CKA_WRAP_WITH_TRUSTED false
! GS_CONF_alpha=$work/alpha-fault.conf gs_alpha check > "$work/out" 2>&1 || fail "check passes a freely extractable key"
grep -q "gs:group:eng:v1 .*PROBLEM: CKA_EXTRACTABLE is true without CKA_WRAP_WITH_TRUSTED" "$work/out" ||
  fail "check on alpha: $(cat "$work/out")"
printf 'bool CKA_EXTRACTABLE 1\n' > "$GS_P11FAULT_CONTROL"
! GS_CONF_beta=$work/beta-fault.conf gs_beta check > "$work/out" 2>&1 || fail "check passes an extractable copy"
grep -q "gs:group:eng:v1 .*PROBLEM: CKA_EXTRACTABLE is true without CKA_WRAP_WITH_TRUSTED" "$work/out" ||
  fail "check on beta: $(cat "$work/out")"
grep -q "^ca .*gs:ca .*PROBLEM: CKA_EXTRACTABLE is true$" "$work/out" || fail "beta's own CA: $(cat "$work/out")"
unset GS_P11FAULT_CONTROL GS_P11FAULT_TARGET
ok "check still refuses an extractable key without trusted wrap, on the original and on a copy"
audit_has "$work/beta/audit.jsonl" group-import ok "$ceremony" "$fp" '"key_versions":\[1,2\]'
audit_has "$work/beta/audit.jsonl" group-import "refused: this token already has" "$fp"
grep '"action":"group-import"' "$work/beta/audit.jsonl" | grep '"outcome":"refused: signed by the CA' |
  has_line 'eng.gsk"' || fail "no record of the import refused for its signer"
audit_has "$work/beta/audit.jsonl" group-import "refused: the signature does not verify" bad.gsk
audit_has "$work/beta/audit.jsonl" transport-key ok "$fp"
gs_alpha audit verify >/dev/null || fail "alpha's audit chain"
gs_beta audit verify >/dev/null || fail "beta's audit chain"
ok "both audit logs record the ceremony ($ceremony) and verify"

# ---- the clone serves: start-up key audit, then an unwrap ----
gs_beta member add eng alice@example.org --cert "$work/alice@example.org.pem" --role admin >/dev/null
gs_beta member add eng dave@example.org --issue-cert --out "$work" >/dev/null
serve_start beta "$work/alpha-ca.pem"
printf 'Subject: clone\n\nsent to the group, read through the clone\n' > "$work/msg.txt"
openssl cms -encrypt -binary -aes-256-cbc -in "$work/msg.txt" -outform DER -out "$work/msg.der" \
  -recip "$work/eng-v2.pem" -keyopt rsa_padding_mode:oaep 2>/dev/null
unwrap_reads "$work/msg.der" "$work/msg.txt" alice@example.org "beta's copy"
ok "beta's serve started (its key audit passed) and its copy decrypts what was sent to the group"
# A REST removal on the clone rotates nothing either, and its answer says so.
curl -sS --cacert "$work/tls.pem" --cert "$work/alice@example.org.pem" --key "$work/alice@example.org.key" \
  -X DELETE -o "$work/delete.json" "$srv_url/v1/groups/eng/members/dave@example.org"
[ "$(cat "$work/delete.json")" = '{"removed":"dave@example.org","rotate_elsewhere":true}' ] ||
  fail "DELETE of a member on the clone: $(cat "$work/delete.json")"
audit_has "$work/beta/audit.jsonl" member-remove ok '"member":"dave@example.org"' '"rotate_elsewhere":true'
ok "DELETE of a member on the clone: removed, and the answer and the audit record say nothing rotated here"
serve_stop

# ---- the SO PIN typed on a terminal (no so_pin_source): not echoed ----
sed '/^so_pin_source/d' "$work/alpha.conf" > "$work/alpha-tty.conf"
mkfifo "$work/tty.in"
SOFTHSM2_CONF=$work/tok-alpha/softhsm2.conf script -qec "'$BIN/groupsrv' -c '$work/alpha-tty.conf' group export eng \
  --version 1 --to '$work/beta-transport.pem' --out '$work/tty.gsk'" /dev/null < "$work/tty.in" > "$work/tty.out" 2>&1 &
tty_pid=$!
exec 7> "$work/tty.in"
for _ in $(seq 1 600); do grep -q "PIN of token alpha" "$work/tty.out" && break; sleep 0.1; done
grep -q "PIN of token alpha" "$work/tty.out" || fail "no SO PIN prompt: $(cat "$work/tty.out")"
printf '%s\n' "$(cat "$work/tok-alpha/so-pin")" >&7
exec 7>&-
wait "$tty_pid" || fail "export with the SO PIN typed on the terminal failed: $(cat "$work/tty.out")"
[ -s "$work/tty.gsk" ] || fail "no file from the terminal export"
! grep -qF "$(cat "$work/tok-alpha/so-pin")" "$work/tty.out" || fail "the SO PIN was echoed"
ok "the SO PIN asked on the terminal, not echoed"

# ---- a rotation travels as a one-version file ----
gs_alpha group rotate eng >/dev/null
# a file made before alpha's wrap changes (secret key version 2, under
# alpha's oaep), imported on beta after the newer one below
gs_alpha secret rotate eng >/dev/null
gs_alpha group export eng --secret-version 2 --to "$work/beta-transport.pem" --out "$work/eng-s2.gsk" >/dev/null
# alpha's member wrap changed after beta got the group: the file says
# so, beta keeps its own (an older file could undo it) and names the change
gs_alpha group set eng --wrap pkcs1v15 >/dev/null
expect 0 "export of the new version only" -- \
  gs_alpha group export eng --version 3 --to "$work/beta-transport.pem" --out "$work/eng-v3.gsk"
gs_alpha group set eng --wrap oaep >/dev/null
expect 0 "import of the new version on beta" -- \
  gs_beta group import --in "$work/eng-v3.gsk" --ca "$work/alpha-ca.pem" --keep-transport-key
grep -q "^note: group eng here wraps member-certs copies with oaep; the file (made .* on alpha (serial [0-9a-f]*)) says pkcs1v15: if that is the origin's setting now (a file made before a change there says the old one), .groupsrv group set eng --wrap pkcs1v15. here follows it\$" "$work/out" ||
  fail "import of a file whose member wrap differs from beta's: no note naming it: $(cat "$work/out")"
gs_beta group show eng > "$work/show"
grep -q "member wrap: *oaep" "$work/show" || fail "the import changed beta's member wrap"
# group show reads the database: it must not call the clone's copies
# extractable, nor its secret key copies unable to leave (beta gave one
# on above, and any key the user PIN makes wraps them)
grep -q "^replicable: *yes (group and rejection keys: the origin's leave only under trusted wrap, group export there; imported copies never leave; secret key versions leave wrapped, as members get them)$" \
  "$work/show" || fail "group show on the clone: $(grep '^replicable' "$work/show")"
ok "a member wrap changed on alpha after the replication is named on beta, which keeps its own"
gs_beta group show eng > "$work/show"
grep -Eq "v3 +current" "$work/show" && grep -Eq "v2 +old" "$work/show" || fail "beta's versions: $(cat "$work/show")"
expect 0 "check on beta after the rotation" -- gs_beta check

# ---- beta, a clone with its own database, makes no version of its own:
# one would be certified by beta's CA and take the number of alpha's next
# version (two keys under one number, alpha's export of its own refused).
# Removal, which must reach every clone, removes without rotating ----
refused beta 1 "group rotate on a clone with its own database" -- gs_beta group rotate eng
expect_msg "came to this server by .group import."
refused beta 1 "secret rotate on a clone with its own database" -- gs_beta secret rotate eng
expect_msg "make it there and import it here \\(.group export eng --secret-version N.\\)"
refused beta 1 "group renew-cert on the clone (its CA is not the group's)" -- gs_beta group renew-cert eng
expect_msg "renew it there and give the certificate to this server"
gs_alpha group renew-cert eng >/dev/null
gs_alpha group show eng --cert > "$work/eng-v3-renewed.pem"
expect 0 "the origin's renewed certificate recorded on the clone" -- \
  gs_beta group import-cert eng --cert "$work/eng-v3-renewed.pem" --version 3
gs_beta group show eng --cert | cmp -s - "$work/eng-v3-renewed.pem" || fail "beta's v3 certificate is not alpha's renewed one"
refused beta 0 "member remove on the clone: removed, nothing rotated" -- gs_beta member remove eng alice@example.org
grep -q "^no key rotated here: group eng came to this server by .group import." "$work/out" ||
  fail "member remove on the clone: $(cat "$work/out")"
audit_has "$work/beta/audit.jsonl" member-remove ok '"member":"alice@example.org"' '"rotate_elsewhere":true'
# beta followed the v3 file; the older secret key file still says oaep:
# its note gives the command only for the origin's setting now, not as
# "to follow it" (which sent beta back to the wrap alpha had left)
gs_beta group set eng --wrap pkcs1v15 >/dev/null
expect 0 "import of alpha's secret key version 2 on the clone" -- \
  gs_beta group import --in "$work/eng-s2.gsk" --ca "$work/alpha-ca.pem" --keep-transport-key
grep -q "^note: group eng here wraps member-certs copies with pkcs1v15; the file (made .* on alpha (serial [0-9a-f]*)) says oaep: if that is the origin's setting now (a file made before a change there says the old one), .groupsrv group set eng --wrap oaep. here follows it\$" "$work/out" ||
  fail "import of a file older than beta's member wrap change: $(cat "$work/out")"
gs_beta group show eng | grep -q "member wrap: *pkcs1v15" || fail "the older file's import changed beta's member wrap"
gs_beta group show eng > "$work/show"
grep -Eq "v2 +current +gs:secret:eng:v2" "$work/show" && grep -Eq "v3 +current +gs:group:eng:v3" "$work/show" ||
  fail "beta's versions: $(cat "$work/show")"
# The clone's token does not answer while member remove looks for
# originals there: exit 4 and the member kept, never a removal taken for
# a clone's (on an origin that would rotate nothing)
gs_beta member add eng bob@example.org --issue-cert --out "$work" >/dev/null
export GS_P11FAULT_CONTROL=$work/p11fault-find.ctl GS_P11FAULT_TARGET=$module
printf 'C_FindObjectsInit CKR_DEVICE_REMOVED\n' > "$GS_P11FAULT_CONTROL"
GS_CONF_beta=$work/beta-gone.conf expect 4 "member remove on the clone while its token is away" -- \
  gs_beta member remove eng bob@example.org
unset GS_P11FAULT_CONTROL GS_P11FAULT_TARGET
gs_beta member list eng | grep -q "bob@example.org" || fail "bob removed although the token was away"
expect 0 "member remove on the clone, its token back" -- gs_beta member remove eng bob@example.org

# ---- a cluster: gamma shares alpha's database, needs the CA key too ----
mkserver gamma
sed -i "s#^path = $work/gamma/groupsrv.db#path = $work/alpha/groupsrv.db#" "$work/gamma.conf"
! gs_gamma check > "$work/out" 2>&1 || fail "check on gamma passes without the keys"
grep -q "gs:ca .*missing from the token" "$work/out" || fail "gamma's check: $(cat "$work/out")"
gs_gamma token transport-key --out "$work/gamma-transport.pem" >/dev/null
expect 0 "ca export (a replicable CA)" -- gs_alpha ca export --to "$work/gamma-transport.pem" --out "$work/ca.gsk"
gs_alpha ca export --to "$work/beta-transport.pem" --out "$work/ca-beta.gsk" >/dev/null
refused beta 1 "ca import on a server with another CA" -- \
  gs_beta ca import --in "$work/ca-beta.gsk" --ca "$work/alpha-ca.pem"
expect_msg "another CA"
expect 0 "ca import on gamma (the shared database's CA)" -- gs_gamma ca import --in "$work/ca.gsk" --keep-transport-key
gtl=$(grep -o 'gs:transport:[0-9a-f]*' "$work/gamma-transport.pem" | head -1)
grep -q "^transport key $gtl kept" "$work/out" || fail "ca import does not say it kept $gtl: $(cat "$work/out")"
grep -q "signature test" "$work/out" || fail "ca import does not say the key passed its signature test"
# the group's address as an older version may have stored it (a '_' in
# the domain, which today's rule refuses for a new group) travels as is
sqlite3 "$work/alpha/groupsrv.db" "UPDATE groups SET address = 'eng@mail_host.example' WHERE name = 'eng'"
# made under a member wrap the shared database changes afterwards: the
# database's is the group's own (newer), and gamma's import names nothing
gs_alpha group set eng --wrap pkcs1v15 >/dev/null
gs_alpha group export eng --all --to "$work/gamma-transport.pem" --out "$work/eng-gamma.gsk" >/dev/null
gs_alpha group set eng --wrap oaep >/dev/null
# another public key object given the transport key's label (any program
# with the user PIN may write one): the import deletes the pair it came
# through, by the key, and leaves that object alone (it was in the way:
# the label alone named two public keys, exit 7)
openssl x509 -in "$work/alpha-ca.pem" -noout -pubkey | openssl pkey -pubin -outform DER -out "$work/other-pub.der"
GS_PIN=$(cat "$work/tok-gamma/user-pin") SOFTHSM2_CONF=$work/tok-gamma/softhsm2.conf pkcs11-tool --module "$module" \
  --token-label gamma --login --pin env:GS_PIN --write-object "$work/other-pub.der" --type pubkey --label "$gtl" \
  --id 0102 >/dev/null 2>&1 || fail "cannot write a public key labelled $gtl on gamma"
expect 0 "group import on gamma (rows already recorded, keys to the token)" -- \
  gs_gamma group import --in "$work/eng-gamma.gsk"
! grep -q "^note: " "$work/out" || fail "gamma's import (its database's CA signed the file) names a member wrap: $(cat "$work/out")"
# the ceremony's last file: the import deleted the transport key, both
# halves (SECURITY.md, "The receiving token's user PIN and the file")
objects gamma > "$work/gamma.objs"
[ "$(grep -c "label: *$gtl" "$work/gamma.objs")" = 1 ] && grep -A1 "label: *$gtl" "$work/gamma.objs" | grep -q "ID: *0102$" ||
  fail "gamma's objects labelled $gtl are not the other public key alone: $(cat "$work/gamma.objs")"
GS_PIN=$(cat "$work/tok-gamma/user-pin") SOFTHSM2_CONF=$work/tok-gamma/softhsm2.conf pkcs11-tool --module "$module" \
  --token-label gamma --login --pin env:GS_PIN --delete-object --type pubkey --id 0102 >/dev/null 2>&1 ||
  fail "cannot delete the other public key on gamma"
objects gamma > "$work/gamma.objs"
! grep -q "gs:transport:" "$work/gamma.objs" || fail "the transport key is still on gamma's token: $(cat "$work/gamma.objs")"
grep -q "^transport key $gtl deleted (both halves)" "$work/out" || fail "import does not say it deleted $gtl: $(cat "$work/out")"
audit_has "$work/gamma/audit.jsonl" transport-key-destroy ok "$gtl" '"group":"eng"'
ok "the last import of the ceremony deletes the transport key (pkcs11-tool lists neither half)"
# a later file made for it (the ceremony of a script written before the
# imports deleted it: ca import, then group import, without
# --keep-transport-key) is refused, saying why the key is gone and what to do
refused gamma 3 "import of a file made for the transport key an import deleted" -- \
  gs_gamma group import --in "$work/eng-gamma.gsk"
expect_msg "which is not on this token \(an import deletes the transport key it came through unless given --keep-transport-key: for a file made for one deleted, make a new transport key and export to it again\)"
# ...and when it is the file that import brought (run again: a dropped
# ssh, an operator unsure it worked), the line says its keys are here
# already, not only to make a new transport key and export again
expect_msg "; every key in the file is on this token already: if the file was imported here \(.groupsrv check. shows its keys\), nothing is left to do$"
sqlite3 "$work/alpha/groupsrv.db" "UPDATE groups SET address = 'eng@example.org' WHERE name = 'eng'"
# The group plain is not replicable: in a cluster it exists on alpha's
# token only, and gamma's check says so (docs/operations.md).
! gs_gamma check > "$work/out" 2>&1 || fail "gamma's check passes with the group plain missing"
grep PROBLEM "$work/out" | grep -v "gs:group:plain:v1\|gs:secret:plain:v1\|gs:reject:plain" | grep . &&
  fail "gamma's check: problems beyond the non-replicable group: $(cat "$work/out")"
[ "$(grep -c "OK (imported copy)" "$work/out")" = 7 ] || fail "gamma's copies: $(cat "$work/out")"
ok "check on gamma: the CA, three key versions, two secret key versions and the rejection key are imported copies"
expect 0 "gamma issues with the copied CA key" -- gs_gamma member add eng carol@example.org --issue-cert --out "$work"
openssl verify -CAfile "$work/alpha-ca.pem" "$work/carol@example.org.pem" >/dev/null || fail "carol's certificate"
# An organisation's own CA certifies the current version (group
# import-cert on alpha, which holds its key): the database still records
# the certificate alpha's CA gave it, so gamma, with copies only, is a
# server of the cluster, not a clone: its removal rotates, as its rotate.
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/org.key" -out "$work/org.pem" -days 2 -subj "/CN=Org CA" \
  2>/dev/null
gs_alpha group show eng --pubkey > "$work/engpub.pem"
printf 'subjectAltName=email:eng@example.org\nkeyUsage=critical,keyEncipherment\nextendedKeyUsage=emailProtection\n' \
  > "$work/org.ext"
openssl x509 -new -force_pubkey "$work/engpub.pem" -subj "/CN=eng" -CA "$work/org.pem" -CAkey "$work/org.key" \
  -days 2 -extfile "$work/org.ext" -out "$work/eng-org.pem" 2>/dev/null
expect 0 "an organisation's certificate for the current version" -- \
  gs_alpha group import-cert eng --cert "$work/eng-org.pem"
expect 0 "member remove on gamma (the current certificate an organisation's)" -- \
  gs_gamma member remove eng carol@example.org
grep -q "no key rotated here" "$work/out" && fail "gamma took itself for a clone: $(cat "$work/out")"
grep -q "new secret key" "$work/out" || fail "member remove on gamma rotated nothing: $(cat "$work/out")"
# A server of the cluster rotates for all of it (one database, one CA).
expect 0 "group rotate on gamma (copies only, the shared database's CA)" -- gs_gamma group rotate eng
# --take-over there takes nothing over: an ordinary rotation, which the
# output and the audit record say (not a take-over that never happened)
expect 0 "group rotate --take-over on gamma (no clone)" -- gs_gamma group rotate eng --take-over
grep -q "nothing taken over" "$work/out" || fail "take-over on a server of the cluster: $(cat "$work/out")"
audit_has "$work/gamma/audit.jsonl" group-rotate ok '"take_over":false'

# ---- a server added to the cluster after gamma made versions: no token
# has every key now (alpha holds copies of gamma's versions, gamma copies
# of alpha's), yet the new server needs them all, the rejection key too,
# which only --all ships. alpha's --all gives what alpha's token can and
# names the rest; gamma gives its own versions ----
mkserver eps
sed -i "s#^path = $work/eps/groupsrv.db#path = $work/alpha/groupsrv.db#" "$work/eps.conf"
gs_eps token transport-key --out "$work/eps-transport.pem" >/dev/null
gs_alpha ca export --to "$work/eps-transport.pem" --out "$work/ca-eps.gsk" >/dev/null
gs_eps ca import --in "$work/ca-eps.gsk" --keep-transport-key >/dev/null
# the key versions come first, then the secret key versions
gv=$(gs_alpha group show eng | sed -n 's/^  v\([0-9]*\) .*current.*/\1/p' | head -n 1)
[ -n "$gv" ] || fail "no current version of eng: $(gs_alpha group show eng)"
expect 0 "group export --all on alpha, which holds copies of gamma's versions" -- \
  gs_alpha group export eng --all --to "$work/eps-transport.pem" --out "$work/eng-eps.gsk"
grep -q "^rejection key: gs:reject:eng$" "$work/out" || fail "alpha's --all ships no rejection key: $(cat "$work/out")"
grep -q "^left out: key version $gv (gs:group:eng:v$gv): not on this token; give it from the server whose token made it (.group export eng --version $gv.)" \
  "$work/out" || fail "alpha's --all does not name gamma's version $gv: $(cat "$work/out")"
grep -q "^not complete" "$work/out" || fail "alpha's --all does not say the file is not complete: $(cat "$work/out")"
audit_has "$work/alpha/audit.jsonl" group-export ok '"left_out":\['
# out of memory naming a key left out: said as that, not as the reason the
# key was left out (the detail add_key had set), and nothing written
if [ -n "${GS_JSONFAULT_MODULE:-}" ]; then
  rm -f "$work/eng-eps-oom.gsk"
  oom_export() {
    LD_PRELOAD=$GS_JSONFAULT_MODULE GS_JSONFAULT_MATCH="whose token made it" \
      ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
      gs_alpha group export eng --all --to "$work/eps-transport.pem" --out "$work/eng-eps-oom.gsk"
  }
  expect 1 "group export --all, out of memory naming a key left out" -- oom_export
  expect_msg "out of memory listing the keys left out"
  [ ! -e "$work/eng-eps-oom.gsk" ] || fail "an export that ran out of memory wrote $work/eng-eps-oom.gsk"
fi
expect 0 "group import on eps of what alpha's token gave" -- \
  gs_eps group import --in "$work/eng-eps.gsk" --keep-transport-key
# the operator at eps may not see alpha's output: the import itself says
# what this token still lacks, and where to get it
grep -q "^missing: key version $gv (gs:group:eng:v$gv): not on this token; give it from the server whose token made it (.group export eng --version $gv.)" \
  "$work/out" || fail "the import on eps does not name version $gv as missing: $(cat "$work/out")"
grep -q "^not complete: this token lacks [0-9]* of group eng's keys" "$work/out" ||
  fail "the import on eps does not say the token lacks keys: $(cat "$work/out")"
gs_gamma group export eng --version "$gv" --to "$work/eps-transport.pem" --out "$work/eng-eps-v$gv.gsk" >/dev/null
# the token refuses to delete the transport key (a token whose objects
# are not destroyable, CKR_ACTION_PROHIBITED): the import is made, and
# the command says loudly, exit 7, what is left and how to delete it
etl=$(grep -o 'gs:transport:[0-9a-f]*' "$work/eps-transport.pem" | head -1)
sed "s#^module = .*#module = $GS_P11FAULT_MODULE#" "$work/eps.conf" > "$work/eps-fault.conf"
printf 'C_DestroyObject 0x1b\n' > "$work/p11fault-destroy.ctl"
GS_P11FAULT_CONTROL=$work/p11fault-destroy.ctl GS_P11FAULT_TARGET=$module GS_CONF_eps=$work/eps-fault.conf \
  expect 7 "group import on eps of gamma's version $gv, the transport key not deletable" -- \
  gs_eps group import --in "$work/eng-eps-v$gv.gsk"
expect_msg "^groupsrv: the import is made, but transport key $etl could not be deleted; delete it now \(pkcs11-tool --login --delete-object --type privkey --label $etl, and --type pubkey: .*\): deleting the transport private key"
[ "$(objects eps | grep -c "label: *$etl")" = 2 ] || fail "eps's transport key: $(objects eps)"
audit_has "$work/eps/audit.jsonl" group-import ok '"keep_transport_key":false'
audit_has "$work/eps/audit.jsonl" transport-key-destroy "failed: " "$etl"
! grep -q "^missing: key version $gv " "$work/out" || fail "version $gv still named missing: $(cat "$work/out")"
gs_eps check > "$work/out" 2>&1 || true
grep -q "gs:reject:eng .*OK (imported copy)" "$work/out" || fail "eps lacks the rejection key: $(cat "$work/out")"
grep -q "gs:group:eng:v$gv .*OK (imported copy)" "$work/out" || fail "eps lacks version $gv: $(cat "$work/out")"
# gamma's --all: its own versions; a clone's copies only is still refused
# (beta, below: every group key version there is a copy)
refused beta 1 "group export --all on the clone (copies only)" -- \
  gs_beta group export eng --all --to "$work/alpha-transport.pem" --out "$work/x.gsk"
expect_msg "on this token cannot be wrapped \(an imported copy\)"
[ ! -e "$work/x.gsk" ] || fail "the refused --all left a file"
ok "a server added after another made versions gets every key: alpha's --all and gamma's version $gv"

# ---- a replay: delta gets group rep by --all after alpha retired its
# version 1 and secret key version 1; files made before the retirement
# must not bring them back (members would get back what was taken away) ----
gs_alpha group create rep --address rep@example.org --key rsa:2048 --replicable --oaep-only >/dev/null
gs_alpha group rotate rep >/dev/null
gs_alpha secret rotate rep >/dev/null
mkserver delta
gs_delta ca init --key rsa:2048 >/dev/null
gs_delta token transport-key --out "$work/delta-transport.pem" >/dev/null
gs_alpha group export rep --version 1 --to "$work/delta-transport.pem" --out "$work/rep-v1-old.gsk" >/dev/null
gs_alpha group export rep --secret-version 1 --to "$work/delta-transport.pem" --out "$work/rep-s1-old.gsk" >/dev/null
gs_alpha group retire rep --before 2 >/dev/null
gs_alpha secret retire rep --before 2 >/dev/null
gs_alpha group export rep --all --to "$work/delta-transport.pem" --out "$work/rep-delta.gsk" >/dev/null
# a clone with its own database needs every key: alpha's --all of eng
# (gamma's versions left out) is refused there, saying why
gs_alpha group export eng --all --to "$work/delta-transport.pem" --out "$work/eng-delta.gsk" >/dev/null
refused delta 1 "a new clone given an --all that left keys out" -- \
  gs_delta group import --in "$work/eng-delta.gsk" --ca "$work/alpha-ca.pem"
expect_msg "this file is not complete"
# one group per list address, as group create holds to: a group here
# with rep's address (without ASCII case) refuses rep, nothing put on
# the token
gs_delta group create squat --address REP@example.org --key rsa:2048 >/dev/null
refused delta 3 "a new group by import with the list address another group here has" -- \
  gs_delta group import --in "$work/rep-delta.gsk" --ca "$work/alpha-ca.pem" --keep-transport-key
expect_msg "the list address rep@example.org is already group squat's"
gs_delta group show rep >/dev/null 2>&1 && fail "the group of a shared address was recorded"
sqlite3 "$work/delta/groupsrv.db" "UPDATE groups SET address = 'squat@example.org' WHERE name = 'squat'"
expect 0 "group import on delta (what alpha has not retired)" -- \
  gs_delta group import --in "$work/rep-delta.gsk" --ca "$work/alpha-ca.pem" --keep-transport-key
refused delta 1 "replay of a key version file made before the origin retired it" -- \
  gs_delta group import --in "$work/rep-v1-old.gsk" --ca "$work/alpha-ca.pem"
expect_msg "^groupsrv: key version 1 is older than every one recorded here \(the oldest is 2\)"
refused delta 1 "replay of a secret key version file made before the origin retired it" -- \
  gs_delta group import --in "$work/rep-s1-old.gsk" --ca "$work/alpha-ca.pem"
expect_msg "^groupsrv: secret key version 1 is older than every one recorded here \(the oldest is 2\)"
gs_delta group show rep > "$work/show"
grep -Eq "^  v1 " "$work/show" && fail "delta records a version alpha retired: $(cat "$work/show")"
audit_has "$work/delta/audit.jsonl" group-import "secret key version 1 is older than every one" rep-s1-old.gsk
# the token deletes the transport key's private half but refuses its
# public half: exit 7 still, and the line says the public half alone is
# left, with the command for it, not to delete a private key already
# gone. tests/p11fault fails the import's C_DestroyObject calls after
# those an import makes before it deletes the transport key (session
# objects: counted on a like import, --keep-transport-key) and the one
# of the private half
gs_alpha secret rotate rep >/dev/null
gs_alpha group export rep --secret-version 3 --to "$work/delta-transport.pem" --out "$work/rep-s3.gsk" >/dev/null
gs_alpha secret rotate rep >/dev/null
gs_alpha group export rep --secret-version 4 --to "$work/delta-transport.pem" --out "$work/rep-s4.gsk" >/dev/null
dtl=$(grep -o 'gs:transport:[0-9a-f]*' "$work/delta-transport.pem" | head -1)
sed "s#^module = .*#module = $GS_P11FAULT_MODULE#" "$work/delta.conf" > "$work/delta-fault.conf"
GS_P11FAULT_COUNTS=$work/delta-counts GS_P11FAULT_TARGET=$module GS_CONF_delta=$work/delta-fault.conf \
  expect 0 "group import on delta, its token calls counted" -- \
  gs_delta group import --in "$work/rep-s3.gsk" --ca "$work/alpha-ca.pem" --keep-transport-key
before=$(sed -n 's/^C_DestroyObject \([0-9]*\)$/\1/p' "$work/delta-counts")
[ -n "$before" ] || before=0
printf 'C_DestroyObject 0x1b 1 %s\n' "$((before + 1))" > "$work/p11fault-pub.ctl"
GS_P11FAULT_CONTROL=$work/p11fault-pub.ctl GS_P11FAULT_TARGET=$module GS_CONF_delta=$work/delta-fault.conf \
  expect 7 "group import on delta, the token refusing the transport key's public half alone" -- \
  gs_delta group import --in "$work/rep-s4.gsk" --ca "$work/alpha-ca.pem"
expect_msg "^groupsrv: the import is made and transport key $dtl's private half deleted, but its public half could not be deleted; delete it now \(pkcs11-tool --login --delete-object --type pubkey --label $dtl: it unwraps nothing, but is left over\): deleting the transport public key"
! grep -q -- "--type privkey" "$work/err" || fail "the line says to delete the private half, already gone: $(cat "$work/err")"
objects delta | grep -B1 "label: *$dtl\$" > "$work/dtl.objs" || true
[ "$(grep -c '^Private Key Object' "$work/dtl.objs")" = 0 ] && [ "$(grep -c '^Public Key Object' "$work/dtl.objs")" = 1 ] ||
  fail "delta's transport key after the public half was refused: $(cat "$work/dtl.objs")"
ok "the public half alone refused: exit 7 names the public half and the command for it"

# ---- alpha lost for good: the clone beta becomes the group's origin ----
refused beta 1 "group rotate on the clone without --take-over" -- gs_beta group rotate eng
expect_msg "group rotate eng --take-over"
expect 0 "group rotate --take-over on the clone" -- gs_beta group rotate eng --take-over
grep -q "^group eng: new key version 4$" "$work/out" || fail "take-over: $(cat "$work/out")"
grep -q "now the group's origin" "$work/out" || fail "take-over: $(cat "$work/out")"
gs_beta ca show > "$work/beta-ca.pem"
gs_beta group show eng --cert > "$work/eng-beta-v4.pem"
openssl verify -CAfile "$work/beta-ca.pem" "$work/eng-beta-v4.pem" >/dev/null || fail "the new version is not beta's CA's"
gs_beta member add eng erin@example.org --issue-cert --out "$work" >/dev/null
expect 0 "member remove on the clone that took over" -- gs_beta member remove eng erin@example.org
grep -q "no key rotated here" "$work/out" && fail "the clone that took over rotates nothing: $(cat "$work/out")"
grep -q "new secret key" "$work/out" || fail "member remove after the take-over: $(cat "$work/out")"
expect 0 "secret rotate on the clone that took over" -- gs_beta secret rotate eng
audit_has "$work/beta/audit.jsonl" group-rotate ok '"take_over":true'
# The old origin comes back and makes a version: beta, now the origin,
# refuses it (it would become current there and take beta's next number)
gs_alpha group rotate eng > "$work/out"
av=$(sed -n 's/^group eng: new key version \([0-9]*\)$/\1/p' "$work/out")
gs_alpha group export eng --version "$av" --to "$work/beta-transport.pem" --out "$work/eng-old-origin.gsk" >/dev/null
refused beta 1 "import of a newer version from the origin that was taken over" -- \
  gs_beta group import --in "$work/eng-old-origin.gsk" --ca "$work/alpha-ca.pem"
expect_msg "^groupsrv: key version $av is newer than this server's: group eng's versions are made here"
# a refused import leaves the transport key (refused: the snapshot above)
# ---- a version its own token lost (deleted by hand with pkcs11-tool, or
# the token put back from an older copy): the origin's --all leaves it out
# and says it may be this token's loss, which no server can give back (it
# said only "give it from the server whose token made it", and the
# operator of a lone origin went looking for another server) ----
# lose_export V DESC: group lost's version V deleted from alpha's token by
# hand, then alpha's --all ($work/lost.gsk)
lose_export() {
  delete_key alpha privkey "gs:group:lost:v$1" || fail "pkcs11-tool could not delete gs:group:lost:v$1 on alpha"
  expect 0 "$2" -- gs_alpha group export lost --all --to "$work/beta-transport.pem" --out "$work/lost.gsk"
}
gs_alpha group create lost --address lost@example.org --key rsa:2048 --replicable >/dev/null
gs_alpha group rotate lost >/dev/null
lose_export 1 "group export --all on the origin, a version deleted from its token by hand"
grep -q "^left out: key version 1 (gs:group:lost:v1): not on this token; give it from the server whose token made it (.group export lost --version 1.), if that is another server; if it was this one, the key was deleted from this token (or the token put back from an older copy) and no server can give it again" \
  "$work/out" || fail "the origin's --all does not say its own version may be lost: $(cat "$work/out")"
grep -q "^key versions: 2 (gs:group:lost:v2)$" "$work/out" || fail "the --all without v1: $(cat "$work/out")"
# The way out, said where the operator is stuck: without it a new clone
# with its own database refused every --all (not complete) and said only
# to bring one that names no key left out, which the origin can never
# make. Retiring the lost version (with those before it) can.
grep -q "^if lost: if no server can give key version 1 (this token's own key, deleted from it or not extractable now), no --all of group lost is complete until it is retired, with the versions before it (mail to them can then no longer be read): .groupsrv group retire lost --before 2. here$" \
  "$work/out" || fail "the origin's --all does not say how to get out: $(cat "$work/out")"
refused beta 1 "a new clone given the --all a lost version keeps from being complete" -- \
  gs_beta group import --in "$work/lost.gsk" --ca "$work/alpha-ca.pem" --keep-transport-key
expect_msg "this file is not complete .*a key the origin lost, which no server can give, it retires first: its export's .if lost:. line gives the command"
expect 0 "group retire on the origin, as its --all said" -- gs_alpha group retire lost --before 2
expect 0 "group export --all on the origin after the lost version is retired" -- \
  gs_alpha group export lost --all --to "$work/beta-transport.pem" --out "$work/lost.gsk"
! grep -q "^\(left out\|not complete\|if lost\)" "$work/out" || fail "still not complete: $(cat "$work/out")"
expect 0 "the new clone imports it" -- \
  gs_beta group import --in "$work/lost.gsk" --ca "$work/alpha-ca.pem" --keep-transport-key
# the current version lost: a rotation first (retire leaves the current one)
gs_alpha group rotate lost >/dev/null
lose_export 3 "group export --all on the origin, its current version deleted from its token"
grep -q "^if lost: if no server can give key version 3 .*: .groupsrv group rotate lost., then .groupsrv group retire lost --before 4. here$" \
  "$work/out" || fail "the --all does not say to rotate before retiring the current version: $(cat "$work/out")"
# An original the token marks not extractable (CKA_EXTRACTABLE set false
# after it was made: PKCS#11 lets it go false, never back; tests/p11fault
# reports it so) with CKA_WRAP_WITH_TRUSTED: no copy, though the export
# called it "an imported copy" and sent the operator of the very token
# that made it to "export from the token that generated it"
printf 'bool CKA_EXTRACTABLE 0\n' > "$work/p11fault-noext.ctl"
GS_P11FAULT_CONTROL=$work/p11fault-noext.ctl GS_P11FAULT_TARGET=$module GS_CONF_alpha=$work/alpha-fault.conf \
  refused alpha 1 "export of an original the token marks not extractable" -- \
  gs_alpha group export lost --version 2 --to "$work/beta-transport.pem" --out "$work/x.gsk"
expect_msg "^groupsrv: key gs:group:lost:v2 was made on this token but is not extractable now \(CKA_EXTRACTABLE false, set so after it was made\): no token can give it, as copies are never given on$"
[ ! -e "$work/x.gsk" ] || fail "a refused export wrote a file"
GS_P11FAULT_CONTROL=$work/p11fault-noext.ctl GS_P11FAULT_TARGET=$module GS_CONF_alpha=$work/alpha-fault.conf \
  gs_alpha check > "$work/out" 2>&1 || true
grep -q "gs:group:lost:v2 .*OK (made here, not extractable now: no token can give it)" "$work/out" ||
  fail "check calls the original that is not extractable now: $(grep gs:group:lost:v2 "$work/out")"

# ---- the token put back from an older copy, after 19 rotations of a
# group with a 64-character name: --all leaves 19 versions out, and its
# audit record (one line, at most 8 KiB) names each key and why, not the
# whole line (some 450 bytes each here: the export failed, "audit log
# cannot be written", and took its file back) ----
long=lost-keys-of-a-group-whose-name-is-as-long-as-names-may-be-0123
gs_alpha group create $long --address long@example.org --key rsa:2048 --replicable >/dev/null
cp -a "$work/tok-alpha/tokens" "$work/tok-alpha-before"
for i in $(seq 19); do gs_alpha group rotate $long >/dev/null; done
rm -rf "$work/tok-alpha/tokens" && mv "$work/tok-alpha-before" "$work/tok-alpha/tokens"
expect 0 "group export --all of a group 19 of whose versions the token lost" -- \
  gs_alpha group export $long --all --to "$work/beta-transport.pem" --out "$work/long.gsk"
[ "$(grep -c "^left out: key version [0-9]* (gs:group:$long:v[0-9]*): not on this token; give it from" "$work/out")" = 19 ] ||
  fail "want 19 versions left out: $(cat "$work/out")"
audit_has "$work/alpha/audit.jsonl" group-export ok '"left_out":\["key version 2: not on this token",' \
  '"key version 20: not on this token"]'

echo "all ceremony-servers checks passed"
