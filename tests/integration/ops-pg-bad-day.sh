#!/usr/bin/env bash
# ops-pg-bad-day.sh BIN SRC: a PostgreSQL operator's bad day, with a
# private PostgreSQL 15 (tests/lib/pg.sh) and the stock tools:
#   - the postmaster killed while `group create`'s COMMIT waits for a
#     synchronous standby (the answer lost, the database down for the
#     lookup): the group is in the table after the restart, so its keys
#     must still be on the token, and the command says the outcome is not
#     known (before: the keys were destroyed, the group left keyless);
#   - the same for `ca init` (before: the CA's key destroyed, its row kept)
#     and `group import` (before: the imported keys destroyed), and
#     `member remove`, which must not say the member stays;
#   - [db] url with sslmode=verify-full over loopback TCP: served with
#     sslrootcert; with the file it names missing, the error names [db]
#     url's sslrootcert and the file, and is no exit 3 (before: exit 3, as
#     for a database not created yet, from libpq's "does not exist");
#   - a server whose clock is 3 minutes ahead of the database server's
#     (libfaketime): its membership certificates are refused by the others
#     as not valid yet, so check warns (before: nothing said);
#   - [db] url naming a database that takes no writes (a standby, here
#     default_transaction_read_only): serve refuses to start there, so
#     check, its pre-flight, warns (before: all OK, as it opened it
#     read-only; a warning, as check may be run on a standby);
#   - a role without CREATE on the schema (PostgreSQL 15's default for
#     all but the database's owner) on a database nobody set up: `ca init`
#     and `serve` name the role and who makes the tables (before: a bare
#     "permission denied for schema public LINE 1: CREATE TABLE ...");
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/lib/pg.sh"
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/ops-pg-bad-day.XXXXXX")
ender=
cleanup() {
  if [ -n "$ender" ]; then kill "$ender" 2>/dev/null || true; fi
  pg_cleanup
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
. "$SRC/tests/integration/pg-server-lib.sh"

pg_start || fail "PostgreSQL did not start"
pg_psql postgres -c "CREATE DATABASE groupsrv" >/dev/null
pgsrv_setup "postgresql:///groupsrv?host=$PG_SOCK&user=$PG_USER" alice bob
sql() { pg_psql groupsrv -At -c "$1"; }
# local_audit DB on|off: the admin audit chain's records on DB commit
# without the standby (a trigger sets synchronous_commit = local in their
# transactions), so the command's own COMMIT is the one that waits
local_audit() {
  if [ "$2" = on ]; then
    pg_psql "$1" -c "CREATE FUNCTION audit_local() RETURNS trigger LANGUAGE plpgsql AS \$\$ BEGIN
       PERFORM set_config('synchronous_commit', 'local', true); RETURN NULL; END \$\$" \
      -c "CREATE TRIGGER audit_local BEFORE INSERT ON audit FOR EACH STATEMENT EXECUTE FUNCTION audit_local()" >/dev/null
  else
    pg_psql "$1" -c "DROP TRIGGER audit_local ON audit" -c "DROP FUNCTION audit_local()" >/dev/null
  fi
}
# lost_commit DB OUT CMD...: CMD (its output in OUT) with the postmaster
# killed once a COMMIT on DB waits for a synchronous standby (the answer
# lost, the database down for the lookup); PostgreSQL started again after.
# Fails if CMD exits 0 or no COMMIT waited.
lost_commit() {
  local db=$1 out=$2
  shift 2
  sync_standby gs_ghost_standby
  kill_postmaster_at_syncrep "$db" &
  ender=$!
  "$@" > "$out" 2>&1 && fail "$* whose COMMIT was lost: exit 0"
  wait "$ender" || fail "$*: its COMMIT did not wait for the synchronous standby: $(cat "$out")"
  ender=
  pg_restart_killed || fail "PostgreSQL did not start again"
  sync_standby ''
}

# ---- group create: its COMMIT's answer lost, the database down -------------------
local_audit groupsrv on # until the last lost COMMIT below (gs_ca2, a copy, has it too)
lost_commit groupsrv "$work/create.out" gs group create lost --address lost@example.org --key rsa:2048
[ "$(sql "SELECT count(*) FROM groups WHERE name = 'lost'")" = 1 ] ||
  fail "the lost COMMIT was not kept by crash recovery (the case tests nothing): $(cat "$work/create.out")"
gs check > "$work/check.out" 2>&1 || true
! grep -E 'missing .*lost' "$work/check.out" ||
  fail "the group the lost COMMIT made has lost its keys: $(cat "$work/create.out")"
grep -q 'whether .* not known' "$work/create.out" && grep -q 'kept on the token' "$work/create.out" ||
  fail "group create with its COMMIT lost does not say its outcome is not known and the keys kept: $(cat "$work/create.out")"
gs group show lost --cert > /dev/null || fail "group show lost"
ok "group create with its COMMIT's answer lost: the group made, its keys kept, the outcome said to be unknown"

# ---- ca init: its COMMIT's answer lost, the database down ------------------------
# A database with the schema and no CA (a copy of groupsrv's, its CA row
# deleted), a CA label of its own on the token. The CA's row went in as a
# lone INSERT, whose answer lost left ca init destroying the key: after
# the restart the row named a key no token had, every command needing the
# CA failed and ca init refused ("a CA is already initialised").
pg_psql postgres -c "CREATE DATABASE gs_ca2 TEMPLATE groupsrv" >/dev/null
pg_psql gs_ca2 -c "DELETE FROM ca" >/dev/null
pgsrv_conf "$work/ca2.conf" "postgresql:///gs_ca2?host=$PG_SOCK&user=$PG_USER"
printf '[ca]\nkey_label = gs:ca2\n' >> "$work/ca2.conf"
lost_commit gs_ca2 "$work/ca2.out" "$BIN/groupsrv" -c "$work/ca2.conf" ca init --key rsa:2048
[ "$(pg_psql gs_ca2 -At -c "SELECT count(*) FROM ca")" = 1 ] ||
  fail "the lost COMMIT was not kept by crash recovery (the case tests nothing): $(cat "$work/ca2.out")"
"$BIN/groupsrv" -c "$work/ca2.conf" group create ca2grp --address ca2grp@example.org --key rsa:2048 \
  > "$work/ca2grp.out" 2>&1 || fail "the CA the lost COMMIT recorded cannot sign (its key destroyed): $(cat "$work/ca2grp.out")"
grep -q 'whether the CA was recorded is not known.*kept on the token (gs:ca2)' "$work/ca2.out" ||
  fail "ca init with its COMMIT lost does not say its outcome is not known and the key kept: $(cat "$work/ca2.out")"
ok "ca init with its COMMIT's answer lost: the CA recorded, its key kept and signing, the outcome said to be unknown"

# ---- group import: its COMMIT's answer lost, the database down -------------------
# An origin (alpha: a token and SQLite of its own) exports a replicable
# group to this server's transport key; the import's rows wait for the
# standby when the postmaster goes. The rows were kept by crash recovery
# while the import destroyed the keys it had put on the token: a group
# recorded here whose keys no token had, and its import refused again
# (the labels recorded).
"$SRC/scripts/provision-softhsm" "$work/tok-alpha" alpha >/dev/null
mkdir -p "$work/alpha"
cat > "$work/alpha.conf" <<CONF
[hsm]
module = ${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
token = pkcs11:token=alpha
pin_source = $work/tok-alpha/user-pin
so_pin_source = $work/tok-alpha/so-pin
[db]
path = $work/alpha/groupsrv.db
[audit]
path = $work/alpha/audit.jsonl
CONF
gs_alpha() { SOFTHSM2_CONF=$work/tok-alpha/softhsm2.conf "$BIN/groupsrv" -c "$work/alpha.conf" "$@"; }
gs_alpha ca init --key rsa:2048 --replicable >/dev/null || fail "alpha: ca init"
gs_alpha ca show > "$work/alpha-ca.pem"
gs_alpha group create rep --address rep@example.org --key rsa:2048 --replicable >/dev/null || fail "alpha: group create"
gs token transport-key --out "$work/transport.pem" >/dev/null || fail "token transport-key"
gs_alpha group export rep --all --to "$work/transport.pem" --out "$work/rep.gsk" >/dev/null || fail "alpha: group export"
lost_commit groupsrv "$work/import.out" gs group import --in "$work/rep.gsk" --ca "$work/alpha-ca.pem"
[ "$(sql "SELECT count(*) FROM groups WHERE name = 'rep'")" = 1 ] ||
  fail "the lost COMMIT was not kept by crash recovery (the case tests nothing): $(cat "$work/import.out")"
gs check > "$work/check.out" 2>&1 || true
! grep -E 'missing .*rep' "$work/check.out" ||
  fail "the group the lost COMMIT imported has lost its keys: $(grep -E 'missing .*rep' "$work/check.out")"
grep -q 'whether the import of group rep was recorded is not known.*kept on the token' "$work/import.out" ||
  fail "group import with its COMMIT lost does not say its outcome is not known and the keys kept: $(cat "$work/import.out")"
ok "group import with its COMMIT's answer lost: the group recorded, its keys kept, the outcome said to be unknown"

# ---- member remove (rotating the secret key): its COMMIT's answer lost -----------
# The removal is made (crash recovery keeps it), so its new secret key
# version must be on the token, and the error must not say the member
# stays (what a failed rotation before the COMMIT says).
lost_commit groupsrv "$work/remove.out" gs member remove eng bob@example.org
local_audit groupsrv off
[ "$(sql "SELECT count(*) FROM members WHERE email = 'bob@example.org'")" = 0 ] ||
  fail "the lost COMMIT was not kept by crash recovery (the case tests nothing): $(cat "$work/remove.out")"
gs check > "$work/check.out" 2>&1 || true
! grep -E 'missing .*eng' "$work/check.out" || fail "the removal's new secret key was lost: $(grep -E 'missing .*eng' "$work/check.out")"
grep -q 'whether the removal of .*bob@example.org.* from eng was made is not known.*kept on the token' "$work/remove.out" ||
  fail "member remove with its COMMIT lost does not say its outcome is not known: $(cat "$work/remove.out")"
! grep -q 'stays a member' "$work/remove.out" ||
  fail "member remove with its COMMIT lost (the removal made) says the member stays: $(cat "$work/remove.out")"
ok "member remove with its COMMIT's answer lost: removed, its new secret key kept, not said to stay a member"

# ---- member set --issue-cert (a renewal): its COMMIT's answer lost ----------------
# Crash recovery keeps it, so alice's record names the new certificate
# and her old one is refused: the files must stay, and the error say how
# to tell. Before, they were deleted as for a change not made: alice
# locked out, no one with the key of the certificate on record.
mkdir "$work/renew"
local_audit groupsrv on
lost_commit groupsrv "$work/renew.out" gs member set eng alice@example.org --issue-cert --out "$work/renew"
local_audit groupsrv off
[ -f "$work/renew/alice@example.org.key" ] && [ -f "$work/renew/alice@example.org.pem" ] ||
  fail "member set --issue-cert with its COMMIT lost deleted the files: $(ls "$work/renew"); $(cat "$work/renew.out")"
fp=$(openssl x509 -in "$work/renew/alice@example.org.pem" -outform DER | sha256sum | cut -c1-64)
gs member list eng | grep -q "^alice@example.org .*$fp" ||
  fail "the lost COMMIT was not kept by crash recovery (the case tests nothing): $(cat "$work/renew.out")"
grep -q "alice@example.org.key kept: whether the change was made is not known.*$fp" "$work/renew.out" ||
  fail "member set with its COMMIT lost does not say the files are kept and how to tell: $(cat "$work/renew.out")"
ok "member set --issue-cert with its COMMIT's answer lost: renewed, its files kept, the outcome said to be unknown"

# ---- TLS to PostgreSQL: sslmode=verify-full, the CA file missing -------------------
# The private PostgreSQL listens on loopback TCP too, with TLS (a
# certificate for 127.0.0.1 made here): docs/scale-out.md's
# sslmode=verify-full with sslrootcert works; with the file sslrootcert
# names missing, libpq says 'root certificate file "..." does not exist',
# which was taken for the database missing (exit 3, "not created yet"),
# naming neither [db] url nor sslrootcert.
take_port pg_port
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=127.0.0.1" \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$PG_ROOT/data/server.key" -out "$PG_ROOT/data/server.crt" 2>/dev/null
chmod 600 "$PG_ROOT/data/server.key"
cp "$PG_ROOT/data/server.crt" "$work/pg-ca.pem"
if [ "$(id -u)" = 0 ]; then chown postgres: "$PG_ROOT/data/server.key" "$PG_ROOT/data/server.crt"; fi
printf "listen_addresses = '127.0.0.1'\nport = %s\nssl = on\n" "$pg_port" >> "$PG_ROOT/data/postgresql.conf"
printf 'hostssl all all 127.0.0.1/32 trust\n' >> "$PG_ROOT/data/pg_hba.conf"
pg_stop && pg_restart || fail "PostgreSQL with TLS did not start"
export PGPORT=$pg_port # its unix socket is named by the port too: for psql, libpq and pg.sh from here on
tls_url="postgresql://$PG_USER@127.0.0.1:$pg_port/groupsrv?sslmode=verify-full"
pgsrv_conf "$work/tls.conf" "$tls_url&sslrootcert=$work/pg-ca.pem"
"$BIN/groupsrv" -c "$work/tls.conf" group list | grep -q '^eng' || fail "group list over verify-full TLS"
pgsrv_conf "$work/tls.conf" "$tls_url&sslrootcert=$work/pg-ca-gone.pem"
st=0
"$BIN/groupsrv" -c "$work/tls.conf" group list > "$work/tls.out" 2>&1 || st=$?
[ "$st" != 0 ] && [ "$st" != 3 ] || fail "sslrootcert missing: exit $st (3: 'not found or duplicate'): $(cat "$work/tls.out")"
grep -q "\[db\] url's sslrootcert names, $work/pg-ca-gone.pem" "$work/tls.out" ||
  fail "sslrootcert missing: the error does not name [db] url's sslrootcert and the file: $(cat "$work/tls.out")"
"$BIN/groupsrv" -c "$work/tls.conf" check > "$work/tls.out" 2>&1 && fail "check with sslrootcert missing passed"
grep -q "^database  PROBLEM: .*sslrootcert names, $work/pg-ca-gone.pem" "$work/tls.out" ||
  fail "check with sslrootcert missing: $(grep '^database' "$work/tls.out")"
ok "sslmode=verify-full: served with the CA file; without it exit $st, naming [db] url's sslrootcert and the file"

# ---- a role without CREATE on a database nobody set up ------------------------------
pg_psql postgres -c "CREATE ROLE gs_nocreate LOGIN" -c "CREATE DATABASE gs_empty" >/dev/null
pgsrv_conf "$work/nc.conf" "postgresql:///gs_empty?host=$PG_SOCK&user=gs_nocreate"
for cmd in "ca init --key rsa:2048" serve; do
  timeout 60 "$BIN/groupsrv" -c "$work/nc.conf" $cmd > "$work/nc.out" 2>&1 && fail "$cmd as a role without CREATE: exit 0"
  grep -q 'the database role "\{0,1\}gs_nocreate"\{0,1\} may not create groupsrv.s tables.*`groupsrv ca init`.* as the schema.s owner' \
    "$work/nc.out" || fail "$cmd as a role without CREATE does not say whose right lacks and who makes the tables: $(cat "$work/nc.out")"
done
[ "$(pg_psql gs_empty -At -c "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")" = 0 ] || fail "tables made"
ok "ca init and serve as a role without CREATE: they name the role and the schema owner's ca init"

# ---- a server's clock ahead of the database server's -------------------------------
# libfaketime ahead of a sanitizer build's ASan runtime: its link-order
# check off, as in ops-pg-roles.sh; CLOCK_MONOTONIC left alone.
gs check > "$work/check.out" 2>&1 || true
! grep -q '^clock' "$work/check.out" || fail "check with the clock right: $(grep '^clock' "$work/check.out")"
env ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 FAKETIME_DONT_FAKE_MONOTONIC=1 \
  faketime -f +180s "$BIN/groupsrv" -c "$work/gs.conf" check > "$work/check.out" 2>&1 || true
grep -Eq "^clock     WARNING: the system clock is 1[78][0-9] s ahead of the database server's" "$work/check.out" ||
  fail "check with the clock 3 minutes ahead of PostgreSQL's: $(grep -E '^(clock|database)' "$work/check.out")"
ok "check: a clock 3 minutes ahead of the database server's is a warning"

# ---- check on a database serve cannot write -----------------------------------------
pg_psql postgres -c "ALTER DATABASE groupsrv SET default_transaction_read_only = on" >/dev/null
gs check > "$work/check.out" 2>&1 || fail "check on a read-only database: $(grep -E 'PROBLEM' "$work/check.out")"
grep -q "^database  WARNING: .*cannot be opened for writing.*serve does not start.*read-only" "$work/check.out" ||
  fail "check on a read-only database: $(grep -E '^database' "$work/check.out")"
gs group list | grep -q '^eng' || fail "group list on a read-only database"
pg_psql postgres -c "ALTER DATABASE groupsrv SET default_transaction_read_only = off" >/dev/null
ok "check on a read-only database: a warning, as serve would not start there; group list reads it"
