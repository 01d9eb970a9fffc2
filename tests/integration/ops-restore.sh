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
refused alpha 1 "import-cert of v2's certificate as version 3" -- \
  gs_alpha group import-cert eng --cert "$work/eng-v2.pem" --version 3
expect_msg "certificate public key does not match token key gs:group:eng:v3"
refused alpha 3 "import-cert of a version neither recorded nor on the token" -- \
  gs_alpha group import-cert eng --cert "$work/eng-v3.pem" --version 9
expect_msg "no key version 9: the database does not record it and the token has no gs:group:eng:v9"
refused alpha 3 "import-cert of a retired version" -- gs_alpha group import-cert eng --cert "$work/eng-v2.pem" --version 1
for v in 3 2; do
  expect 0 "import-cert --version $v records the version made after the backup" -- \
    gs_alpha group import-cert eng --cert "$work/eng-v$v.pem" --version $v
done
gs_alpha group show eng | grep -Eq "^  v3 +old +gs:group:eng:v3 " || fail "v3 not recorded as old: $(gs_alpha group show eng)"
expect 0 "check after re-recording" -- gs_alpha check
grep -q "^unrecorded gs:group:" "$work/out" && fail "check still names a recorded group key: $(cat "$work/out")"
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

# ---- mail sent to v3 before the restore decrypts through the server ----
gs_alpha ca show > "$work/ca.pem"
serve_start alpha "$work/ca.pem"
unwrap_reads "$work/msg3.der" "$work/msg.txt" alice@example.org "the mail to v3"
serve_stop
ok "mail sent to a key version made after the backup decrypts through the server once re-recorded"
echo "all ops-restore checks passed"
