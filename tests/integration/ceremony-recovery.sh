#!/usr/bin/env bash
# ceremony-recovery.sh BIN SRC: getting out of the states a key's life
# cycle across tokens can leave behind, with the commands and the stock
# tools the documents name.
#   - an import killed outright (kill -9 while the token works: tests/
#     p11fault makes each unwrap take seconds) leaves a key on the token
#     that the database does not record; importing the file again is
#     refused with exit 3 and one line saying how to delete it (and
#     `check` names it), and after the pkcs11-tool command it names the
#     import succeeds;
#   - servers sharing one database (gamma shares alpha's, its keys by the
#     ceremony): `group retire` on alpha destroys the retired version on
#     alpha's token only; gamma's `check` names it and says what to run,
#     and `group retire` run on gamma takes it off gamma's token; the
#     same for a secret key version and `secret retire`, whose retired
#     version cannot be exported any more; group retire run on both at
#     once (a parallel ssh): one retires, the other destroys its copy;
#   - the CA certificate renewed (ca renew-cert) after a ca export: the
#     file names the old certificate and is refused against the renewed
#     one; a new export is imported and the renewed certificate recorded;
#     the copy on gamma (the shared database) signs under it, and what it
#     issues verifies against the old and the new certificate;
#   - alpha's token lost (docs/operations.md): a new empty token cannot
#     stand in under the database (no CA key, and no new CA under it);
#     gamma's token, a spare with the copies, does: check passes, it
#     rotates and issues; its CA copy cannot be passed on.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/ceremony-lib.sh"

mkserver alpha
mkserver beta
mkserver gamma
sed -i "s#^path = $work/gamma/groupsrv.db#path = $work/alpha/groupsrv.db#" "$work/gamma.conf"

gs_alpha ca init --key rsa:2048 --replicable >/dev/null
gs_alpha ca show > "$work/alpha-ca.pem"
gs_alpha group create eng --address eng@example.org --key rsa:2048 --replicable --methods tls,group-secret >/dev/null
gs_alpha group rotate eng >/dev/null

# ---- an import killed half-way ----
gs_beta token transport-key --out "$work/beta-transport.pem" >/dev/null
gs_alpha group export eng --all --to "$work/beta-transport.pem" --out "$work/eng-beta.gsk" >/dev/null
sed "s#^module = .*#module = $GS_P11FAULT_MODULE#" "$work/beta.conf" > "$work/beta-slow.conf"
before=$(snapshot beta)
# exec: $! is the import itself, not a subshell that kill -9 would end
# while the import went on (holding the keys lock the next import waits on).
( export GS_P11FAULT_TARGET=$module GS_P11FAULT_SERVICE_US=10000000 GS_P11FAULT_COUNTS=$work/counts \
    SOFTHSM2_CONF=$work/tok-beta/softhsm2.conf
  exec "$BIN/groupsrv" -c "$work/beta-slow.conf" group import --in "$work/eng-beta.gsk" --ca "$work/alpha-ca.pem" \
    >/dev/null 2>&1 ) &
pid=$!
# The second C_UnwrapKey (the one-time key comes first) puts the first
# group key on the token at once, then waits out the modelled 10 s: kill
# the import 2 s into that wait (p11fault counts each call as it starts).
for _ in $(seq 1 600); do
  grep -q '^C_UnwrapKey [2-9]' "$work/counts" 2>/dev/null && break
  sleep 0.1
done
sleep 2
kill -9 "$pid" 2>/dev/null || fail "the import ended before it could be killed"
wait "$pid" 2>/dev/null || true
objects beta | has_line 'label: *gs:group:eng:v1' || fail "the killed import left no key: nothing to test"
# imports(LOG): the outcomes of LOG's group-import records, in order
imports() { grep '"action":"group-import"' "$1" | grep -o '"outcome":"[a-z]*' | paste -sd, || true; }
# The key it left has a record: "started", made durable before the token
# was touched (before, the first record came after the rows: none).
[ "$(imports "$work/beta/audit.jsonl")" = '"outcome":"started' ] ||
  fail "the killed import left its key with no started record: $(imports "$work/beta/audit.jsonl")"
audit_has "$work/beta/audit.jsonl" group-import started eng-beta.gsk '"key_versions":\[1,2\]'
gs_beta check > "$work/out" 2>&1 || true
grep -q "^unrecorded gs:group:eng:v1: on the token, not in the database " "$work/out" ||
  fail "check does not name the key the killed import left: $(cat "$work/out")"
refused beta 3 "import again after an import killed half-way" -- \
  gs_beta group import --in "$work/eng-beta.gsk" --ca "$work/alpha-ca.pem"
expect_msg "^groupsrv: refused: this token already has an object labelled gs:group:eng:v1, which the database does not record \(left by an interrupted import\? delete it: pkcs11-tool --login --delete-object --label gs:group:eng:v1 --type privkey"
# refused before the token is touched: its refusal, no started record
[ "$(imports "$work/beta/audit.jsonl")" = '"outcome":"started,"outcome":"refused' ] ||
  fail "the refused import's records: $(imports "$work/beta/audit.jsonl")"
# exactly what the line says, with the stock tool
GS_PIN=$(cat "$work/tok-beta/user-pin") SOFTHSM2_CONF=$work/tok-beta/softhsm2.conf pkcs11-tool --module "$module" \
  --token-label beta --login --pin env:GS_PIN --delete-object --label gs:group:eng:v1 --type privkey >/dev/null 2>&1
[ "$(snapshot beta)" = "$before" ] || fail "more was left on beta's token than the line named: $(objects beta)"
expect 0 "the import, after deleting what the line named" -- \
  gs_beta group import --in "$work/eng-beta.gsk" --ca "$work/alpha-ca.pem" --keep-transport-key
objects beta > "$work/beta.objs"
for v in 1 2; do
  [ "$(field "$work/beta.objs" "gs:group:eng:v$v" Access)" = sensitive ] || fail "beta's copy v$v: $(cat "$work/beta.objs")"
done
[ "$(imports "$work/beta/audit.jsonl")" = '"outcome":"started,"outcome":"refused,"outcome":"started,"outcome":"ok' ] ||
  fail "the import's records: $(imports "$work/beta/audit.jsonl")"
for a in transport-key:beta group-export:alpha; do
  [ "$(grep "\"action\":\"${a%%:*}\"" "$work/${a#*:}/audit.jsonl" | grep -o '"outcome":"[a-z]*' | paste -sd,)" = \
    '"outcome":"started,"outcome":"ok' ] || fail "${a%%:*}: not recorded as started, then ok: $(cat "$work/${a#*:}/audit.jsonl")"
done
ok "an import killed half-way: the next one names the key left and how to delete it; then it succeeds"
# beta, a clone whose database the import made (no CA of its own), makes
# no version either: its secret version 2 would be another key than
# alpha's next one. Its removal removes, rotating nothing.
refused beta 1 "secret rotate on a clone without a CA" -- gs_beta secret rotate eng
expect_msg "came to this server by .group import."
gs_alpha member add eng erin@example.org --issue-cert --out "$work" >/dev/null
gs_beta member add eng erin@example.org --cert "$work/erin@example.org.pem" >/dev/null
refused beta 0 "member remove on a clone without a CA: removed, nothing rotated" -- \
  gs_beta member remove eng erin@example.org
grep -q "^no key rotated here: group eng came to this server by .group import." "$work/out" ||
  fail "member remove on a clone without a CA: $(cat "$work/out")"

# ---- retire on servers sharing one database ----
gs_gamma token transport-key --out "$work/gamma-transport.pem" >/dev/null
gs_alpha ca export --to "$work/gamma-transport.pem" --out "$work/ca-gamma.gsk" >/dev/null
gs_alpha group export eng --all --to "$work/gamma-transport.pem" --out "$work/eng-gamma.gsk" >/dev/null
gs_gamma ca import --in "$work/ca-gamma.gsk" --keep-transport-key >/dev/null
gs_gamma group import --in "$work/eng-gamma.gsk" --keep-transport-key >/dev/null
expect 0 "check on gamma with the copies" -- gs_gamma check
expect 0 "group retire on alpha" -- gs_alpha group retire eng --before 2
objects alpha | has_line 'label: *gs:group:eng:v1' && fail "alpha's retired key is still on its token"
rc=0; gs_gamma check > "$work/out" 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "check on gamma with the version alpha retired on its token: exit $rc, wanted 1"
grep -q "^group  *eng  *v1  *gs:group:eng:v1 .*PROBLEM: retired but still on the token (run \`group retire\` on this server)" \
  "$work/out" || fail "gamma's check does not say what to do: $(cat "$work/out")"
expect 0 "group retire on gamma" -- gs_gamma group retire eng --before 2
grep -q "^group eng: 1 version(s) retired earlier destroyed on this token" "$work/out" ||
  fail "retire on gamma does not say it destroyed the copy: $(cat "$work/out")"
objects gamma | has_line 'label: *gs:group:eng:v1' && fail "gamma's copy of the retired version is still on its token"
expect 0 "check on gamma after its retire" -- gs_gamma check
expect 0 "group retire once more: nothing left to do" -- gs_gamma group retire eng --before 2
grep -q "retired earlier" "$work/out" && fail "a second retire claims to destroy something: $(cat "$work/out")"
ok "group retire run on each server sharing the database takes the retired version off its token"
# The same for a secret key version (`secret retire`), which gamma got
# by a one-version file after alpha's `secret rotate`.
gs_alpha secret rotate eng >/dev/null
gs_alpha group export eng --secret-version 2 --to "$work/gamma-transport.pem" --out "$work/eng-s2.gsk" >/dev/null
gs_gamma group import --in "$work/eng-s2.gsk" --keep-transport-key >/dev/null
expect 0 "secret retire on alpha" -- gs_alpha secret retire eng --before 2
grep -q "^group eng: 1 secret key version(s) retired$" "$work/out" || fail "secret retire on alpha: $(cat "$work/out")"
audit_has "$work/alpha/audit.jsonl" secret-retire ok '"group":"eng"' '"before":2' '"retired":1' '"destroyed_earlier":0'
objects alpha | has_line 'label: *gs:secret:eng:v1$' && fail "alpha's retired secret key is still on its token"
expect 3 "export of a retired secret key version" -- \
  gs_alpha group export eng --secret-version 1 --to "$work/gamma-transport.pem" --out "$work/eng-s1.gsk"
expect_msg "no secret key version 1 \(or it is retired\)"
rc=0; gs_gamma check > "$work/out" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q "^secret  *eng  *v1  *gs:secret:eng:v1 .*PROBLEM: retired but still on the token (run \`secret retire\` on this server)" \
  "$work/out" || fail "gamma's check with the secret version alpha retired: exit $rc: $(cat "$work/out")"
expect 0 "secret retire on gamma" -- gs_gamma secret retire eng --before 2
grep -q "^group eng: 1 secret key version(s) retired earlier destroyed on this token" "$work/out" ||
  fail "secret retire on gamma does not say it destroyed the copy: $(cat "$work/out")"
objects gamma | has_line 'label: *gs:secret:eng:v1$' && fail "gamma's copy of the retired secret is still on its token"
ok "secret retire run on each server sharing the database takes the retired secret version off its token"
# The same group retire run on both servers at once (a parallel ssh to
# every server, as the man page says to run it on each): whichever
# commits second finds the version retired and only destroys its copy,
# as a run after the other would. A third process holds the database's
# write lock for 2 s so that both have read the versions before either
# may write (without the keys lock around retire, the second failed with
# "key version 2 is not an old (retirable) version", its copy left).
gs_alpha group rotate eng >/dev/null
gs_alpha group export eng --version 3 --to "$work/gamma-transport.pem" --out "$work/eng-v3.gsk" >/dev/null
gs_gamma group import --in "$work/eng-v3.gsk" >/dev/null
/usr/bin/python3 - "$work/alpha/groupsrv.db" "$work/db-locked" <<'PY' &
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
open(sys.argv[2], "w").close()
time.sleep(2)
db.execute("ROLLBACK")
PY
locker=$!
for _ in $(seq 1 100); do [ -e "$work/db-locked" ] && break; sleep 0.05; done
rc_a=0 rc_g=0
gs_alpha group retire eng --before 3 >"$work/out-a" 2>&1 & pid_a=$!
gs_gamma group retire eng --before 3 >"$work/out-g" 2>&1 & pid_g=$!
wait "$pid_a" || rc_a=$?
wait "$pid_g" || rc_g=$?
wait "$locker"
[ "$rc_a" = 0 ] && [ "$rc_g" = 0 ] ||
  fail "group retire on both servers at once: exit $rc_a ($(cat "$work/out-a")) and $rc_g ($(cat "$work/out-g"))"
[ "$(cat "$work/out-a" "$work/out-g" | grep -c '^group eng: 1 key version(s) retired$')" = 1 ] &&
  [ "$(cat "$work/out-a" "$work/out-g" | grep -c '^group eng: 1 version(s) retired earlier destroyed on this token$')" = 1 ] ||
  fail "group retire on both servers at once said: $(cat "$work/out-a" "$work/out-g")"
for s in alpha gamma; do
  objects $s | has_line 'label: *gs:group:eng:v2$' && fail "$s's copy of v2 is still on its token after the parallel retire"
done
ok "group retire run on two servers sharing the database at once: one retires, the other destroys its copy"
# ---- the CA certificate renewed (ca renew-cert) between a ca export and its import ----
gs_alpha ca export --to "$work/beta-transport.pem" --out "$work/ca-beta.gsk" >/dev/null
expect 0 "ca renew-cert on alpha" -- gs_alpha ca renew-cert
gs_alpha ca show > "$work/alpha-ca-new.pem"
audit_has "$work/alpha/audit.jsonl" ca-renew-cert ok '"days":3650' \
  "\"certificate_sha256\":\"$(openssl x509 -in "$work/alpha-ca-new.pem" -outform DER | sha256sum | cut -c1-64)\""
cmp -s "$work/alpha-ca-new.pem" "$work/alpha-ca.pem" && fail "ca renew-cert left the certificate as it was"
# A file names the CA certificate that signed it: one made before the
# renewal is refused against the renewed certificate; export it again.
refused beta 1 "ca import of a file made before the renewal, against the renewed certificate" -- \
  gs_beta ca import --in "$work/ca-beta.gsk" --ca "$work/alpha-ca-new.pem"
expect_msg "refused: signed by the trusted CA.s key under its certificate sha256 [0-9a-f]{16}\.\.\., not the trusted certificate [0-9a-f]{16}\.\.\. \(renewed by .ca renew-cert.\?\)"
gs_alpha ca export --to "$work/beta-transport.pem" --out "$work/ca-beta.gsk" >/dev/null
expect 0 "ca import of a file made after the renewal" -- \
  gs_beta ca import --in "$work/ca-beta.gsk" --ca "$work/alpha-ca-new.pem"
gs_beta ca show | cmp -s - "$work/alpha-ca-new.pem" || fail "beta does not record the renewed CA certificate: $(gs_beta ca show)"
# With the origin's CA key beta is a clone no more (docs/operations.md,
# "A token lost or broken"): it rotates, under the origin's CA.
expect 0 "group rotate on the clone that imported the origin's CA" -- gs_beta group rotate eng
gs_beta group show eng --cert | openssl verify -CAfile "$work/alpha-ca.pem" >/dev/null ||
  fail "beta's new version is not the origin's CA's"
expect 0 "check on gamma (alpha's database: the renewed certificate for gamma's CA copy)" -- gs_gamma check
expect 0 "member add --issue-cert on gamma after the renewal" -- \
  gs_gamma member add eng dan@example.org --issue-cert --out "$work"
for ca in alpha-ca alpha-ca-new; do
  openssl verify -CAfile "$work/$ca.pem" "$work/dan@example.org.pem" >/dev/null || fail "dan's certificate against $ca"
done
ok "a renewed CA certificate: copies and files made before it stay the CA's"
# ---- the token lost: docs/operations.md, "A token lost or broken" ----
# gamma's token is the spare (copies of the CA and the group, on the same
# database); alpha's token is lost. A new empty token cannot take its
# place: no CA key for the database's CA, and no new one under it.
rm -rf "$work/tok-alpha"
mktoken alpha
rc=0; gs_alpha group rotate eng > "$work/out" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q "CA key: key not found" "$work/out" || fail "group rotate on a new token: exit $rc: $(cat "$work/out")"
rc=0; gs_alpha ca init --key rsa:2048 > "$work/out" 2>&1 || rc=$?
[ "$rc" = 3 ] || fail "ca init on a new token under the old database: exit $rc: $(cat "$work/out")"
# The spare takes its place.
expect 0 "check on the spare" -- gs_gamma check
[ "$(grep -c "OK (imported copy)" "$work/out")" -ge 3 ] || fail "the spare's keys are not the copies: $(cat "$work/out")"
expect 0 "group rotate on the spare" -- gs_gamma group rotate eng
expect 0 "member add --issue-cert on the spare (the CA copy signs)" -- \
  gs_gamma member add eng carol@example.org --issue-cert --out "$work"
openssl verify -CAfile "$work/alpha-ca.pem" "$work/carol@example.org.pem" >/dev/null || fail "carol's certificate"
expect 0 "check on the spare after the rotation" -- gs_gamma check
grep -q "gs:group:eng:v4 .*OK (replicable: leaves only under trusted wrap)" "$work/out" ||
  fail "the spare's new version is no exportable original: $(cat "$work/out")"
refused gamma 1 "the spare's CA copy cannot be passed on" -- \
  gs_gamma ca export --to "$work/beta-transport.pem" --out "$work/ca-again.gsk"
expect_msg "imported copy"
ok "a lost token: a new one cannot stand in; the spare with the copies does, and makes new versions"
echo "all ceremony-recovery checks passed"
