#!/usr/bin/env bash
# ops-pg-bad-day.sh BIN SRC: a PostgreSQL operator's bad day, with a
# private PostgreSQL 15 (tests/lib/pg.sh) and the stock tools:
#   - the postmaster killed while `group create`'s COMMIT waits for a
#     synchronous standby (the answer lost, the database down for the
#     lookup): the group is in the table after the restart, so its keys
#     must still be on the token, and the command says the outcome is not
#     known (before: the keys were destroyed, the group left keyless);
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/lib/pg.sh"
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/ops-pg-bad-day.XXXXXX")
srv_pid= ender=
cleanup() {
  if [ -n "$ender" ]; then kill "$ender" 2>/dev/null || true; fi
  if [ -n "$srv_pid" ]; then kill -TERM "$srv_pid" 2>/dev/null || true; wait "$srv_pid" 2>/dev/null || true; fi
  pg_cleanup
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$work/serve.log" ] && tail -n 20 "$work/serve.log" >&2; exit 1; }
ok() { echo "ok: $*"; }
. "$SRC/tests/integration/pg-server-lib.sh"

pg_start || fail "PostgreSQL did not start"
pg_psql postgres -c "CREATE DATABASE groupsrv" >/dev/null
pgsrv_setup "postgresql:///groupsrv?host=$PG_SOCK&user=$PG_USER" alice bob
sql() { pg_psql groupsrv -At -c "$1"; }

# ---- group create: its COMMIT's answer lost, the database down -------------------
# The admin audit chain's records commit without the standby (a trigger
# sets synchronous_commit = local in their transactions): the group's own
# COMMIT is the one that waits.
sql "CREATE FUNCTION audit_local() RETURNS trigger LANGUAGE plpgsql AS \$\$ BEGIN
       PERFORM set_config('synchronous_commit', 'local', true); RETURN NULL; END \$\$;
     CREATE TRIGGER audit_local BEFORE INSERT ON audit FOR EACH STATEMENT EXECUTE FUNCTION audit_local()" >/dev/null
sync_standby gs_ghost_standby
kill_postmaster_at_syncrep &
ender=$!
if gs group create lost --address lost@example.org --key rsa:2048 > "$work/create.out" 2>&1; then
  fail "group create whose COMMIT was lost: exit 0"
fi
wait "$ender" || fail "group create: its COMMIT did not wait for the synchronous standby"
ender=
pg_restart_killed || fail "PostgreSQL did not start again"
sync_standby ''
sql "DROP TRIGGER audit_local ON audit; DROP FUNCTION audit_local()" >/dev/null
[ "$(sql "SELECT count(*) FROM groups WHERE name = 'lost'")" = 1 ] ||
  fail "the lost COMMIT was not kept by crash recovery (the case tests nothing): $(cat "$work/create.out")"
gs check > "$work/check.out" 2>&1 || true
! grep -E 'missing .*lost' "$work/check.out" ||
  fail "the group the lost COMMIT made has lost its keys: $(cat "$work/create.out")"
grep -q 'whether .* not known' "$work/create.out" && grep -q 'kept on the token' "$work/create.out" ||
  fail "group create with its COMMIT lost does not say its outcome is not known and the keys kept: $(cat "$work/create.out")"
gs group show lost --cert > /dev/null || fail "group show lost"
ok "group create with its COMMIT's answer lost: the group made, its keys kept, the outcome said to be unknown"

