#!/usr/bin/env bash
# ops-restore.sh BIN SRC: docs/operations.md's backup and restore of the
# SQLite database, step by step with the stock sqlite3, and what the
# operator must do afterwards. The backup is older than a group key
# rotation, a member's removal (which rotated the group secret key) and a
# retire. After the restore the removed member is a member again (the
# document warns): removing them again must work, and so must the next
# rotations, keeping the key versions made after the backup on the token
# (mail was sent to them, members hold them) and numbering the new
# versions past them, so that no version number names two keys. Then
# `group import-cert --version N` records such a version again with the
# certificate senders had (as old, or as current when above the current
# one), and mail sent to it before the restore decrypts through `serve`.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/ceremony-lib.sh"

mkserver alpha
db=$work/alpha/groupsrv.db
gs_alpha ca init --key rsa:2048 >/dev/null
gs_alpha group create eng --address eng@example.org --key rsa:2048 --methods tls,group-secret >/dev/null
gs_alpha member add eng alice@example.org --issue-cert --out "$work" >/dev/null
gs_alpha member add eng bob@example.org --issue-cert --out "$work" >/dev/null

# ---- the backup, as operations.md says ----
(umask 077; sqlite3 "$db" ".backup $work/backup.db")
[ "$(stat -c %a "$work/backup.db")" = 600 ] || fail "the backup is not 0600"

gs_alpha group rotate eng >/dev/null
gs_alpha group show eng --cert > "$work/eng-v2.pem"
gs_alpha member remove eng bob@example.org > "$work/out"
grep -q "new secret key version 2" "$work/out" || fail "member remove did not rotate the secret: $(cat "$work/out")"
gs_alpha group rotate eng >/dev/null
# The certificate senders got for v3 (members and exploders hold it), and a mail sent to it.
gs_alpha group show eng --cert > "$work/eng-v3.pem"
printf 'Subject: after the backup\n\nsent to key version 3\n' > "$work/msg.txt"
openssl cms -encrypt -binary -aes-256-cbc -in "$work/msg.txt" -outform DER -out "$work/msg3.der" \
  -recip "$work/eng-v3.pem" -keyopt rsa_padding_mode:oaep 2>/dev/null
# A member's group-secret copy of that mail: the content key under secret
# key version 2 (made after the backup), as the server hands it out.
gs_alpha ca show > "$work/ca.pem"
serve_start alpha "$work/ca.pem"
python3 "$SRC/tests/integration/server-cms.py" ri "$work/msg3.der" "$work/ri.der"
curl -sS --cacert "$work/tls.pem" --cert "$work/alice@example.org.pem" --key "$work/alice@example.org.key" \
  -H 'Content-Type: application/json' -o "$work/gs.json" \
  --data "{\"recipient_info\":\"$(base64 -w0 "$work/ri.der")\",\"deliver\":\"group-secret\"}" \
  "$srv_url/v1/groups/eng/unwrap"
grep -q '"secret_version":2' "$work/gs.json" || fail "the group-secret copy: $(cat "$work/gs.json")"
# The audit log's backup while the server runs, as operations.md says:
# the file first, then the archives. A rotation between the two steps
# (cron's) leaves its archive for the second; the other way round the
# copied file continued from an archive the backup lacked (verify exit 1).
mkdir "$work/audit-bak"
cp -p "$work/alpha/audit.jsonl" "$work/audit-bak/"
gs_alpha audit rotate > /dev/null
cp -p "$work/alpha/audit.jsonl".2* "$work/audit-bak/"
serve_stop
kek2=$(gs_alpha group show eng | awk '$1 == "v2" && $3 == "gs:secret:eng:v2" {print $5}')
[ ${#kek2} = 32 ] || fail "no KEK identifier of secret key version 2 in group show: $(gs_alpha group show eng)"
gs_alpha group retire eng --before 2 >/dev/null
objects alpha > "$work/before-restore.objs"

# ---- the restore ----
cp "$work/backup.db" "$db"
chmod 600 "$db"
rm -f "$db-wal" "$db-shm"
rc=0; gs_alpha check > "$work/out" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q "gs:group:eng:v1 .*PROBLEM: missing from the token" "$work/out" ||
  fail "check after the restore: exit $rc: $(cat "$work/out")"
for l in gs:group:eng:v2 gs:group:eng:v3 gs:secret:eng:v2; do
  grep -q "^unrecorded $l: on the token, not in the database (a version made after the backup" "$work/out" ||
    fail "check does not name $l, made after the backup: $(cat "$work/out")"
done
gs_alpha member list eng | grep -q '^bob@example.org ' || fail "bob is not back: the test's premise is wrong"
ok "restored: check names the version retired since and the versions made since; bob is a member again"
# The audit log put back on another layout (another directory): the chain
# verifies from the backup's files alone, and goes on there (a rotation
# on the new layout, whose records chain to the restored ones).
mkdir -m 0700 "$work/newlog"
cp -p "$work/audit-bak/"* "$work/newlog/"
sed "s#^path = $work/alpha/audit.jsonl\$#path = $work/newlog/audit.jsonl#" "$work/alpha.conf" > "$work/alpha-newlog.conf"
grep -q "^path = $work/newlog/audit.jsonl\$" "$work/alpha-newlog.conf" || fail "no [audit] path line to move"
out=$(GS_CONF_alpha=$work/alpha-newlog.conf gs_alpha audit verify) || fail "audit verify of the restored audit log: $out"
GS_CONF_alpha=$work/alpha-newlog.conf gs_alpha audit rotate > /dev/null || fail "audit rotate on the restored audit log"
out2=$(GS_CONF_alpha=$work/alpha-newlog.conf gs_alpha audit verify) || fail "audit verify after a rotation there: $out2"
[ "${out2%%,*}" != "${out%%,*}" ] || fail "the rotation added no record to the restored audit log: $out2"
ok "the audit log backed up while serving (the file, then the archives, a rotation between) verifies restored elsewhere: $out"

# A token's labels are anyone's with the user PIN: one with an escape
# sequence and a tab (an object another program made) is named by check
# escaped, never sent to the operator's terminal as it is (it would clear
# the screen here; another could retitle it or hide lines).
p11() {
  GS_PIN=$(cat "$work/tok-alpha/user-pin") SOFTHSM2_CONF=$work/tok-alpha/softhsm2.conf pkcs11-tool --module "$module" \
    --token-label alpha --login --pin env:GS_PIN "$@" >/dev/null 2>&1
}
p11 --keygen --key-type AES:16 --id 77 --label "$(printf 'gs:\033[2Jx\ty')" || fail "pkcs11-tool could not make the object"
rc=0; gs_alpha check > "$work/out" 2>&1 || rc=$?
! grep -q "$(printf '\033')" "$work/out" || fail "check sent a token's escape sequence to the terminal: $(grep -a unrecorded "$work/out" | od -c | head)"
grep -qF 'unrecorded gs:\x1b[2Jx\x09y: on the token' "$work/out" || fail "check does not name the label escaped: $(grep -a unrecorded "$work/out")"
p11 --delete-object --type secrkey --id 77 || fail "pkcs11-tool could not delete the object"
ok "check names a token label with an escape sequence and a tab escaped"
# The token's own label too (any token's: a network HSM's, an RPC peer's):
# a second token in alpha's token directory, named with an escape sequence.
SOFTHSM2_CONF=$work/tok-alpha/softhsm2.conf softhsm2-util --init-token --free --label "$(printf 'esc\033[2Jt')" \
  --pin "$(cat "$work/tok-alpha/user-pin")" --so-pin "$(cat "$work/tok-alpha/so-pin")" >/dev/null ||
  fail "softhsm2-util could not make the second token"
sed 's|^token = .*|token = pkcs11:token=esc%1B%5B2Jt|' "$work/alpha.conf" > "$work/esc.conf"
rc=0; GS_CONF_alpha=$work/esc.conf gs_alpha check > "$work/out" 2>&1 || rc=$?
! grep -q "$(printf '\033')" "$work/out" || fail "check sent the token label's escape sequence: $(grep -a '^token' "$work/out" | od -c | head)"
grep -qF 'label "esc\x1b[2Jt"' "$work/out" || fail "check does not name the token's label escaped: $(grep -a '^token' "$work/out")"
ok "check names a token whose own label has an escape sequence escaped"

# ---- what the operator does next ----
expect 0 "member remove bob again" -- gs_alpha member remove eng bob@example.org
grep -q "^member bob@example.org removed from eng; new secret key version 3$" "$work/out" ||
  fail "member remove after the restore: $(cat "$work/out")"
grep -q "^kept on the token, though the database does not record them: gs:secret:eng:v2 " "$work/out" ||
  fail "member remove does not name the secret key version kept: $(cat "$work/out")"
gs_alpha member list eng | grep -q '^bob@example.org ' && fail "bob is still a member"
expect 0 "group rotate after the restore" -- gs_alpha group rotate eng
grep -q "^group eng: new key version 4$" "$work/out" || fail "group rotate after the restore: $(cat "$work/out")"
grep -q "^kept on the token, though the database does not record them: gs:group:eng:v2, gs:group:eng:v3 " "$work/out" ||
  fail "group rotate does not name the versions kept: $(cat "$work/out")"
objects alpha > "$work/after.objs"
for l in gs:group:eng:v2 gs:group:eng:v3 gs:secret:eng:v2; do
  grep -q "label: *$l\$" "$work/after.objs" || fail "$l was not kept on the token"
done
expect 0 "group retire again (the version retired since the backup)" -- gs_alpha group retire eng --before 4
expect 0 "check after removal, rotation and retire" -- gs_alpha check
ok "after the restore: the removal done again, new versions numbered past the unrecorded ones, which stay"

# ---- re-recording a key version made after the backup (operations.md step 8) ----
expect 1 "import-cert of v2's certificate as version 3" -- \
  gs_alpha group import-cert eng --cert "$work/eng-v2.pem" --version 3
expect_msg "certificate public key does not match token key gs:group:eng:v3"
expect 3 "import-cert of a version neither recorded nor on the token" -- \
  gs_alpha group import-cert eng --cert "$work/eng-v3.pem" --version 9
expect_msg "no key version 9: the database does not record it and the token has no gs:group:eng:v9"
expect 3 "import-cert of a retired version" -- gs_alpha group import-cert eng --cert "$work/eng-v2.pem" --version 1
for v in 3 2; do
  expect 0 "import-cert --version $v records the version made after the backup" -- \
    gs_alpha group import-cert eng --cert "$work/eng-v$v.pem" --version $v
done
gs_alpha group show eng | grep -Eq "^  v3 +old +gs:group:eng:v3 " || fail "v3 not recorded as old: $(gs_alpha group show eng)"
# A version above the current one (the current one when the database was
# lost) is current again: senders get its certificate.
(umask 077; sqlite3 "$db" ".backup $work/backup2.db")
gs_alpha group rotate eng >/dev/null
gs_alpha group show eng --cert > "$work/eng-v5.pem"
cp "$work/backup2.db" "$db"; rm -f "$db-wal" "$db-shm"
expect 0 "import-cert --version 5 above the current version 4" -- \
  gs_alpha group import-cert eng --cert "$work/eng-v5.pem" --version 5
gs_alpha group show eng --cert | cmp -s - "$work/eng-v5.pem" || fail "v5 is not current again: $(gs_alpha group show eng)"
ok "group import-cert --version N records a key version the restored database lacked"

# ---- the secret key version made after the backup, recorded again ----
# Its KEK identifier: from the mail (the KEKRecipientInfo's kekid), a
# member's `groupmail keys list`, or an earlier `group show`.
rc=0; gs_alpha secret record eng --version 2 --kek-id 00 2>"$work/err" || rc=$?
[ "$rc" = 2 ] || fail "secret record --kek-id 00: exit $rc: $(cat "$work/err")"
expect 3 "secret record of a version neither recorded nor on the token" -- \
  gs_alpha secret record eng --version 9 --kek-id "$kek2"
expect_msg "no secret key version 9: the database does not record it and the token has no gs:secret:eng:v9"
expect 3 "secret record of a recorded version" -- gs_alpha secret record eng --version 3 --kek-id "$kek2"
expect 0 "secret record of version 2 with its KEK identifier" -- gs_alpha secret record eng --version 2 --kek-id "$kek2"
grep -q "^group eng: secret key version 2 recorded$" "$work/out" || fail "secret record said: $(cat "$work/out")"
audit_has "$work/alpha/audit.jsonl" secret-record ok '"group":"eng"' '"secret_version":2' "\"kek_id\":\"$kek2\""
audit_has "$work/alpha/audit.jsonl" secret-record "group eng: secret key version 3 is recorded"
expect 0 "check after recording the key and secret key versions" -- gs_alpha check
grep -q "^unrecorded " "$work/out" && fail "check still names an unrecorded key: $(cat "$work/out")"
ok "secret record: the secret key version made after the backup is recorded again"

# ---- mail sent to v3 before the restore decrypts through the server,
# and its group-secret copy (secret key version 2) with the key served ----
serve_start alpha "$work/ca.pem"
unwrap_reads "$work/msg3.der" "$work/msg.txt" alice@example.org "the mail to v3"
curl -sS --cacert "$work/tls.pem" --cert "$work/alice@example.org.pem" --key "$work/alice@example.org.key" \
  -o "$work/keys.json" "$srv_url/v1/groups/eng/secret-keys"
cek=$(python3 - "$work/keys.json" "$work/gs.json" "$work/alice@example.org.key" <<'PY'
import base64, json, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
keys = json.load(open(sys.argv[1]))["keys"]
copy = json.load(open(sys.argv[2]))
k = [k for k in keys if k["version"] == 2]
assert k and k[0]["kek_id"] == copy["kek_id"], (keys, copy)
alice = serialization.load_pem_private_key(open(sys.argv[3], "rb").read(), None)
kek = alice.decrypt(base64.b64decode(k[0]["wrapped_key"]),
                    padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
def tlv(d, i):  # (tag, content start, end) of the DER element at i
    t, n = d[i], d[i + 1]
    if n < 0x80:
        return t, i + 2, i + 2 + n
    w = n & 0x7f
    n = int.from_bytes(d[i + 2:i + 2 + w], "big")
    return t, i + 2 + w, i + 2 + w + n
ri = base64.b64decode(copy["recipient_info"])
_, i, end = tlv(ri, 0)
enc = None
while i < end:  # the KEKRecipientInfo's last OCTET STRING is its encryptedKey
    t, s, e = tlv(ri, i)
    if t == 0x04:
        enc = ri[s:e]
    i = e
print(aes_key_unwrap(kek, enc).hex())
PY
) || fail "the group-secret copy does not open with secret key version 2 as served"
iv=$(python3 "$SRC/tests/integration/server-cms.py" content "$work/msg3.der" "$work/ct.bin")
openssl enc -d -aes-256-cbc -K "$cek" -iv "$iv" -in "$work/ct.bin" -out "$work/dec-gs.txt" 2>/dev/null ||
  fail "the content key from the group-secret copy does not decrypt the mail"
cmp -s "$work/dec-gs.txt" "$work/msg.txt" || fail "the group-secret copy decrypts to other text"
serve_stop
ok "mail sent to key and secret key versions made after the backup is read through the server once they are re-recorded"
echo "all ops-restore checks passed"
