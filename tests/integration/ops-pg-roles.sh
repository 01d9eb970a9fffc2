#!/usr/bin/env bash
# ops-pg-roles.sh BIN SRC: docs/scale-out.md's "Database roles", as
# written there: its SQL block (taken from the document, so the two cannot
# drift) run on a private PostgreSQL 15; `ca init` and the groups as the
# schema owner; `check`, `serve` and `audit verify` as the server role,
# which then has to manage with exactly the documented grants:
#   - an upgrade: the database at an older schema cannot be migrated by
#     the server role nor on a read-only database (each says why), `check`
#     as the owner migrates it (docs/scale-out.md, "Upgrading a cluster");
#     behind a transaction open on its tables it waits 1 s at a time and
#     tries again (not as long as the transaction, every server's
#     requests queued behind it);
#   - a role short of a documented grant (INSERT on audit): check names
#     it, serve refuses to start (not a healthy-looking server that
#     fails every key request); one with less than the document but all
#     the server's statements use (no DELETE but on members, a column
#     grant, UPDATE on the sequence, pg_write_all_data) passes;
#   - serve starts, and every kind of request it writes for works: an
#     unwrap (audit insert), a member removed over REST (members, the
#     secret key rotation it brings, the change stamp), a member added, a
#     group created over REST (groups and its sequence, group_keys);
#   - the removed member is refused at the next request;
#   - the server role cannot UPDATE or DELETE an audit row (the document's
#     reason for the split: a compromised server cannot rewrite its chain);
#   - a database that turns read-only (a standby, a demoted primary) fails
#     /healthz as it fails every key request, and both come back with it;
#   - `audit verify` as the server role passes, and serve stops cleanly;
#   - check with the clock an hour behind the audit table's latest record
#     warns.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/lib/pg.sh"
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/ops-pg-roles.XXXXXX")
srv_pid= pooler_pid=
cleanup() {
  if [ -n "$srv_pid" ]; then kill -TERM "$srv_pid" 2>/dev/null || true; wait "$srv_pid" 2>/dev/null || true; fi
  if [ -n "$pooler_pid" ]; then kill "$pooler_pid" 2>/dev/null || true; wait "$pooler_pid" 2>/dev/null || true; fi
  pg_cleanup
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$work/serve.log" ] && tail -n 20 "$work/serve.log" >&2; exit 1; }
ok() { echo "ok: $*"; }
. "$SRC/tests/integration/pg-server-lib.sh"

pg_start || fail "PostgreSQL did not start"
# The document's SQL: what comes before "-- after `groupsrv ca init`" on
# the maintenance database, the grants after it on groupsrv's.
sed -n '/^### Database roles/,/^## /p' "$SRC/docs/scale-out.md" | sed -n '/^```sql$/,/^```$/p' | sed '1d;$d' > "$work/roles.sql"
sed -n '1,/^-- after `groupsrv ca init`/p' "$work/roles.sql" > "$work/roles-before.sql"
sed -n '/^-- after `groupsrv ca init`/,$p' "$work/roles.sql" > "$work/roles-after.sql"
grep -q '^GRANT' "$work/roles-after.sql" || fail "no GRANT in docs/scale-out.md's Database roles: $(cat "$work/roles.sql")"
pg_psql postgres -f "$work/roles-before.sql" >/dev/null || fail "the document's CREATE ROLE / DATABASE"

# The token, the CA, group eng and its members as the schema owner
# ($work/gs.conf); the server runs as the server role.
pgsrv_setup "postgresql:///groupsrv?host=$PG_SOCK&user=groupsrv_owner" alice bob
pgsrv_conf "$work/server.conf" "postgresql:///groupsrv?host=$PG_SOCK&user=groupsrv_server"
own() { gs "$@"; }
srv() { "$BIN/groupsrv" -c "$work/server.conf" "$@"; }
pg_psql groupsrv -f "$work/roles-after.sql" >/dev/null || fail "the document's GRANTs"
ok "docs/scale-out.md's roles and grants applied ($(grep -c '^GRANT' "$work/roles-after.sql") GRANT lines)"

# An upgrade ("Upgrading a cluster"): the database as schema 3 left it
# (step 4's columns dropped). The server role cannot migrate it, nor can
# anyone on a read-only database: one line each naming the versions and
# why, nothing changed; `check` as the owner migrates it.
pg_psql groupsrv -c "ALTER TABLE groups DROP COLUMN member_wrap, DROP COLUMN reject_weakenings;
  ALTER TABLE members DROP COLUMN wrap; UPDATE schema_version SET version = 3" >/dev/null
srv check > "$work/check.out" 2>&1 && fail "check as the server role passed on an older schema"
grep -q "^database  PROBLEM: database (PostgreSQL) has schema version 3, older than this program's 4, and migrating it failed (nothing was changed): .*permission denied" \
  "$work/check.out" || fail "check as the server role on schema 3: $(grep database "$work/check.out")"
pg_psql postgres -c "ALTER DATABASE groupsrv SET default_transaction_read_only = on" >/dev/null
own check > "$work/check.out" 2>&1 && fail "check on a read-only database passed on an older schema"
grep -q "^database  PROBLEM: database (PostgreSQL) has schema version 3, this program needs 4 (.*); it cannot be opened for writing here: .*read-only" \
  "$work/check.out" || fail "check on a read-only database of schema 3: $(grep database "$work/check.out")"
pg_psql postgres -c "ALTER DATABASE groupsrv SET default_transaction_read_only = off" >/dev/null
[ "$(pg_psql groupsrv -Atc 'SELECT version FROM schema_version')" = 3 ] || fail "a failed migration changed the version"
ok "an older schema: the server role and a read-only database say why they cannot migrate"
# `check` as the owner migrates it, behind a transaction open on a table
# the migration alters (a running server of the older version in one, an
# operator's psql): it waits for that at most 1 s at a time, rolls back
# and tries again (so that every other session's statements, each
# server's requests, do not queue behind it for long), and migrates once
# the transaction has ended. Before, it waited as long as the transaction
# stayed open, and every server's requests with it. (Three tries in vain
# fail it, nothing changed, saying so.)
pg_hold "$work" "postgresql:///groupsrv?host=$PG_SOCK&user=groupsrv_server" \
  "BEGIN; SELECT 'held', count(*) FROM members;" held ||
  fail "psql did not open its transaction: $(cat "$work/pg_hold.out")"
timeout 60 "$BIN/groupsrv" -v -c "$work/gs.conf" check > "$work/check.out" 2>&1 &
checker=$!
for i in $(seq 1 150); do grep -q 'trying again" attempt=1' "$work/check.out" && break; sleep 0.1; done
pg_release "COMMIT;"
grep -q 'msg="database migration waited 1s for a table lock another session holds; rolled back, trying again" attempt=1' \
  "$work/check.out" || fail "the migration behind an open transaction did not try again: $(cat "$work/check.out")"
wait "$checker" || true
grep -q "^database  OK   .*(postgresql, schema 4, migrated from an older schema)$" "$work/check.out" ||
  fail "check as the owner did not migrate once the transaction ended: $(grep database "$work/check.out")"
# A try given up at the lock timeout starts again on a new connection: no
# connection was lost, so none is said to be restored.
grep 'connection restored' "$work/check.out" &&
  fail "the migration's retry said a database connection was restored, none was lost"
ok "check as the owner migrates it, behind an open transaction: tries again, migrates once it ended"

srv check > "$work/check.out" 2>&1 || fail "check as groupsrv_server: $(grep -v '^cap ' "$work/check.out")"
ok "groupsrv check as the server role"
# A role short of a documented grant (here INSERT on audit): check says
# which, and serve refuses to start naming it. Before, serve started,
# /healthz said ok (HAProxy kept it in), and every key request got 503
# audit_unavailable.
pg_psql groupsrv -c "REVOKE INSERT ON audit FROM groupsrv_server" >/dev/null
srv check > "$work/check.out" 2>&1 && fail "check passed as a role that may not INSERT into audit"
grep -q '^database  PROBLEM: the database role "groupsrv_server" lacks privileges the server needs (docs/scale-out.md, "Database roles"): INSERT ON audit$' \
  "$work/check.out" || fail "check as a role without INSERT on audit: $(grep '^database' "$work/check.out")"
rc=0
timeout 60 "$BIN/groupsrv" -c "$work/server.conf" serve > "$work/nogrant.log" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q 'msg="not started: the database role lacks privileges the server needs" detail=".*: INSERT ON audit"' \
  "$work/nogrant.log" || fail "serve as a role without INSERT on audit: exit $rc: $(grep level=error "$work/nogrant.log")"
pg_psql groupsrv -c "GRANT INSERT ON audit TO groupsrv_server" >/dev/null
ok "a role without INSERT on audit: check names it, serve refuses to start"
# A role kept to what the server's statements use, tighter than the
# document (DELETE on members only, no INSERT or UPDATE on ca, so that a
# compromised server can neither delete a key's record nor replace the
# CA certificate; seal_keys' SELECT granted column by
# column; UPDATE on the sequence, which lets nextval() run as USAGE
# does): it served before the check came, and neither check nor serve
# may refuse it now (an upgrade would have taken every server down).
pg_psql groupsrv -c "REVOKE DELETE ON ca, groups, group_keys, secret_keys, seal_keys, changes FROM groupsrv_server;
  REVOKE INSERT, UPDATE ON ca FROM groupsrv_server; REVOKE UPDATE ON groups, seal_keys FROM groupsrv_server; REVOKE SELECT ON seal_keys FROM groupsrv_server;
  GRANT SELECT (label, weakenings, created) ON seal_keys TO groupsrv_server;
  REVOKE USAGE ON SEQUENCE groups_id_seq FROM groupsrv_server; GRANT UPDATE ON SEQUENCE groups_id_seq TO groupsrv_server" >/dev/null
srv check > "$work/check.out" 2>&1 || fail "check as a role kept to what the server uses: $(grep '^database' "$work/check.out")"
pg_psql groupsrv -c "GRANT DELETE ON ca, groups, group_keys, secret_keys, seal_keys, changes TO groupsrv_server;
  GRANT INSERT, UPDATE ON ca TO groupsrv_server; GRANT UPDATE ON groups TO groupsrv_server;
  REVOKE SELECT (label, weakenings, created) ON seal_keys FROM groupsrv_server;
  GRANT SELECT, UPDATE ON seal_keys TO groupsrv_server;
  REVOKE UPDATE ON SEQUENCE groups_id_seq FROM groupsrv_server; GRANT USAGE ON SEQUENCE groups_id_seq TO groupsrv_server" >/dev/null
ok "a role with only the grants the server's statements use (a column grant, UPDATE on the sequence): check passes"
# A role given PostgreSQL's predefined pg_read_all_data and
# pg_write_all_data instead of GRANTs (UPDATE, not USAGE, on sequences):
# it serves, and is not refused.
pg_psql groupsrv -c "CREATE ROLE groupsrv_rw LOGIN IN ROLE pg_read_all_data, pg_write_all_data" >/dev/null
pgsrv_conf "$work/rw.conf" "postgresql:///groupsrv?host=$PG_SOCK&user=groupsrv_rw"
"$BIN/groupsrv" -c "$work/rw.conf" check > "$work/check.out" 2>&1 ||
  fail "check as a role with pg_read_all_data and pg_write_all_data: $(grep '^database' "$work/check.out")"
ok "a role with pg_read_all_data and pg_write_all_data: check passes"
# A multi-host URI whose first hosts refuse and whose last (the primary)
# refuses the role: libpq's reasons for every host, the last one too. Its
# hint under each refused host ("Is the server running on that host ...")
# took the room of the later hosts' reasons, and the one that mattered was cut.
pgsrv_conf "$work/multi.conf" "postgresql:///groupsrv?host=127.0.0.1,127.0.0.2,127.0.0.3,$PG_SOCK&port=1,1,1,5432&user=no_such_role"
"$BIN/groupsrv" -c "$work/multi.conf" check > "$work/check.out" 2>&1 && fail "check with a role that does not exist passed"
grep '^database  PROBLEM: ' "$work/check.out" | grep '"127.0.0.3", port 1 failed: Connection refused' |
  grep -q 'role "no_such_role" does not exist' ||
  fail "check with a multi-host URI lost a host's reason: $(grep '^database' "$work/check.out")"
ok "a multi-host URI: check names every host's reason, the last one's too"
# A newer server's migration (schema 99) that this older check waits for
# under the migration lock: the version read under the lock decides, it is
# refused in one line, and nothing is changed (docs/scale-out.md,
# "Upgrading a cluster": an old server refuses the newer database).
pg_psql groupsrv -c "UPDATE schema_version SET version = 3" >/dev/null
pg_hold "$work" "postgresql:///groupsrv?host=$PG_SOCK&user=groupsrv_owner" \
  "BEGIN; SELECT pg_advisory_xact_lock(1735611254); SELECT 'held';" held ||
  fail "psql did not take the migration lock: $(cat "$work/pg_hold.out")"
own check > "$work/check.out" 2>&1 &
checker=$!
for i in $(seq 1 100); do
  [ "$(pg_psql groupsrv -Atc "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")" = 1 ] && break
  sleep 0.1
done
pg_release "UPDATE schema_version SET version = 99; COMMIT;"
rc=0
wait "$checker" || rc=$?
[ "$rc" = 1 ] && grep -q "^database  PROBLEM: database (PostgreSQL) was written by a newer groupsrv (schema version 99, this program knows up to 4)" \
  "$work/check.out" || fail "check on a database a newer server wrote while it waited: exit $rc: $(grep database "$work/check.out")"
[ "$(pg_psql groupsrv -Atc 'SELECT version FROM schema_version')" = 99 ] || fail "an older check changed a newer database"
pg_psql groupsrv -c "UPDATE schema_version SET version = 4" >/dev/null
ok "a database a newer server writes while check waits for the migration lock: refused in one line, unchanged"
pgsrv_start "$work/server.conf"
expect 200 "healthz as the server role" -- alice "$base/healthz"
# A DBA tells the servers' sessions apart in pg_stat_activity
# (docs/scale-out.md, "Configuration"): every session of the key holder
# names the instance; the admin command's is gone with it.
names=$(pg_psql groupsrv -At -c "SELECT DISTINCT application_name FROM pg_stat_activity
  WHERE datname = 'groupsrv' AND usename = 'groupsrv_server'")
[ "$names" = "groupsrv gs-a" ] || fail "the server's sessions in pg_stat_activity: application_name $names"
ok "the server's sessions are named in pg_stat_activity (application_name groupsrv gs-a)"
expect 200 "unwrap (an audit row inserted)" -- alice --data-binary @"$work/unwrap.json" "$base/v1/groups/eng/unwrap"
expect 200 "unwrap by bob" -- bob --data-binary @"$work/unwrap.json" "$base/v1/groups/eng/unwrap"
expect 200 "bob removed over REST (secret key rotated)" -- admin -X DELETE "$base/v1/groups/eng/members/bob@example.org"
grep -q '"secret_version":2' "$work/body" || fail "removal without the secret key rotation: $(cat "$work/body")"
expect 403 "bob at the next request" -- bob --data-binary @"$work/unwrap.json" "$base/v1/groups/eng/unwrap"
expect 201 "a member added over REST" -- admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/carol@example.org"
expect 201 "a group created over REST" -- admin --data '{"name":"ops","address":"ops@example.org","keyspec":"rsa:2048"}' "$base/v1/groups"
# Another server sharing the database holds the keys lock (a command
# making keys there; its advisory lock, store_pg.c KEYS_LOCK): REST changes
# wait for it at most [server] max_queue_ms (2 s) on their token worker,
# then 503 store_unavailable, nothing changed (docs/api.md).
pg_psql groupsrv -c "SET application_name = 'keys-holder'" -c "SELECT pg_advisory_lock(1735617388)" \
  -c "SELECT pg_sleep(60)" >/dev/null 2>&1 &
holder=$!
held() { pg_psql groupsrv -At -c "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
  WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = 'keys-holder'"; }
for i in $(seq 1 50); do [ "$(held)" = 1 ] && break; sleep 0.1; done
[ "$(held)" = 1 ] || fail "the keys lock was not taken by the holder session"
expect 503 store_unavailable "a member PUT while another session holds the keys lock" -- \
  admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/dave@example.org"
grep -q 'the change was not made' "$work/body" || fail "the PUT under the held keys lock: $(cat "$work/body")"
expect 503 store_unavailable "a group creation while another session holds the keys lock" -- \
  admin --data '{"name":"held","address":"held@example.org","keyspec":"rsa:2048"}' "$base/v1/groups"
# It names the keys lock, which another server's session holds here: not
# "another process" (SQLite's words for its write lock, held by a stray
# sqlite3), which sent the operator looking on this host.
grep -q 'the keys lock' "$work/body" && ! grep -q 'another process' "$work/body" ||
  fail "the group creation under the held keys lock: $(cat "$work/body")"
grep -q 'msg="store busy" op=group .*cause="another command or request is making token keys (the keys lock)"' "$work/serve.log" ||
  fail "the log of the group creation under the held keys lock: $(grep 'store busy' "$work/serve.log")"
pg_psql groupsrv -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'keys-holder'" >/dev/null
wait "$holder" || true
own member list eng | grep -q '^dave@' && fail "the PUT answered 503 was made"
own group show held >/dev/null 2>&1 && fail "the group creation answered 503 was made"
expect 201 "the member PUT once the keys lock is free" -- \
  admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/dave@example.org"

for sql in "UPDATE audit SET line = line" "DELETE FROM audit"; do
  if psql -X -q -v ON_ERROR_STOP=1 "postgresql:///groupsrv?host=$PG_SOCK&user=groupsrv_server" -c "$sql" >/dev/null 2>"$work/psql.err"; then
    fail "the server role may $sql"
  fi
  grep -q 'permission denied' "$work/psql.err" || fail "$sql as the server role: $(cat "$work/psql.err")"
done
ok "the server role can neither UPDATE nor DELETE audit rows"

# A database that turns read-only under the server (a standby, or a
# primary a failover demoted; here the database's default, and its
# sessions ended so that the server reconnects): /healthz must fail as
# every key request does, so that HAProxy takes the server out, and both
# come back once the database is writable again (docs/scale-out.md).
pg_down() { # on|off
  pg_psql postgres -c "ALTER DATABASE groupsrv SET default_transaction_read_only = $1" \
    -c "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = 'groupsrv'" >/dev/null
}
pg_down on
expect 503 "unwrap with the database read-only" -- alice --data-binary @"$work/unwrap.json" "$base/v1/groups/eng/unwrap"
grep -q '"code":"db_unavailable"' "$work/body" || fail "read-only database: $(cat "$work/body")"
expect 503 "healthz with the database read-only" -- alice "$base/healthz"
grep -q '"database":"unavailable"' "$work/body" || fail "healthz with the database read-only: $(cat "$work/body")"
pg_down off
for i in $(seq 1 50); do
  [ "$(c alice -o "$work/body" -w '%{http_code}' "$base/healthz")" = 200 ] && break
  sleep 0.2
done
expect 200 "healthz once the database is writable again" -- alice "$base/healthz"
# The audit table's connection, ended with the others, is found dead at its
# next insert: that request may get 503 (as after any database restart,
# docs/scale-out.md), the next one is served.
for i in 1 2 3; do
  got=$(c alice -o "$work/body" -w '%{http_code}' --data-binary @"$work/unwrap.json" "$base/v1/groups/eng/unwrap") || true
  [ "$got" = 200 ] && break
  grep -q '"code":"\(audit\|db\)_unavailable"' "$work/body" || fail "unwrap after the database came back: $got $(cat "$work/body")"
done
[ "$got" = 200 ] || fail "no unwrap served once the database was writable again: $(cat "$work/body")"
ok "unwrap once the database is writable again (attempt $i)"

kill -TERM "$srv_pid"
wait "$srv_pid" || { srv_pid=; fail "serve exited non-zero at SIGTERM"; }
srv_pid=
grep -E 'level=(error|warn)' "$work/serve.log" | grep -v 'read-only\|terminating connection\|connection lost\|database unavailable\|not durable\|audit insert failed\|msg="store busy" op=group ' &&
  fail "serve logged errors or warnings as the server role"
# ---- behind a pooler, synchronous standbys down ---------------------------
# docs/scale-out.md allows a pooler in session mode (PgBouncer, pgpool-II).
# Such a pooler tells its clients a process id of its own making (it
# answers cancel requests itself), so libpq's PQbackendPID is no backend.
# With every synchronous standby down an audit insert's COMMIT waits past
# [db] timeout, and the server ends its own backend (as the server role:
# pg_terminate_backend of the role's own session) before the lookup. The
# backend was looked for under the pooler's pid: never found, so never
# ended; the lookup missed the row, the unwrap got 503, and its record
# committed once a standby was back. Here the stand-in pooler
# (tests/lib/pgpooler.py) replaces the backend's pid as PgBouncer does.
mkdir -m 700 "$work/pooler"
python3 "$SRC/tests/lib/pgpooler.py" "$work/pooler" 6432 "$PG_SOCK" 5432 & pooler_pid=$!
for i in $(seq 1 100); do [ -S "$work/pooler/.s.PGSQL.6432" ] && break; sleep 0.05; done
[ -S "$work/pooler/.s.PGSQL.6432" ] || fail "the stand-in pooler did not start"
pgsrv_conf "$work/pooler.conf" "postgresql:///groupsrv?host=$work/pooler&port=6432&user=groupsrv_server"
sed -i 's/^\[audit\]$/timeout = 1\n&/' "$work/pooler.conf" # [db] timeout: each stall 2 s
mark=$(wc -l < "$work/serve.log")
pgsrv_start "$work/pooler.conf"
expect 200 "unwrap through the stand-in pooler" -- alice --data-binary @"$work/unwrap.json" "$base/v1/groups/eng/unwrap"
standby() { # NAME|RESET
  if [ "$1" = RESET ]; then
    pg_psql postgres -c "ALTER SYSTEM RESET synchronous_standby_names" >/dev/null
  else
    pg_psql postgres -c "ALTER SYSTEM SET synchronous_standby_names = '$1'" >/dev/null
  fi
  pg_psql postgres -At -c "SELECT pg_reload_conf()" >/dev/null
}
standby gs_ghost_standby
for i in $(seq 1 100); do
  [ "$(pg_psql groupsrv -At -c "SHOW synchronous_standby_names")" = gs_ghost_standby ] && break
  sleep 0.05
done
s=$(call alice --data-binary @"$work/unwrap.json" "$base/v1/groups/eng/unwrap")
rid=$(sed -n 's/^[Xx]-[Rr]equest-[Ii]d: *\([0-9a-f]*\).*/\1/p' "$work/hdr")
cp "$work/body" "$work/sync.body"
standby RESET
for i in $(seq 1 100); do # the waits the reset releases have ended
  [ "$(pg_psql groupsrv -At -c "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")" = 0 ] && break
  sleep 0.05
done
[ -n "$rid" ] || fail "behind the pooler: no X-Request-Id: $(cat "$work/hdr")"
n=$(pg_psql groupsrv -At -c "SELECT count(*) FROM audit WHERE line::json->>'request_id' = '$rid'")
[ "$s" = 200 ] && [ "$n" = 1 ] ||
  fail "behind the pooler, synchronous standby down: unwrap $rid answered $s ($(cat "$work/sync.body")), $n records in the table"
logged_since "$mark" 'session left waiting for a synchronous standby ended' ||
  fail "behind the pooler: the server did not end its backend waiting for the standby"
ok "behind a pooler, synchronous standby down: the server role ended its own waiting backend, unwrap 200 with its record"
kill -TERM "$srv_pid"
wait "$srv_pid" || { srv_pid=; fail "serve behind the pooler exited non-zero at SIGTERM"; }
srv_pid=
kill "$pooler_pid" 2>/dev/null || true
wait "$pooler_pid" 2>/dev/null || true
pooler_pid=

# ---- a backend the server's role may see but not end ----------------------
# Logged in as one role, the session set to the server role (the URI's
# options -c role=...), which may read every backend (pg_read_all_stats)
# but has no privileges of the login role: PostgreSQL refuses to end the
# backend left waiting for the standby. Before, the log said it "did not
# end in time", as of a stopped host; now it says it was refused and the
# privilege that would let it.
pg_psql groupsrv -c "CREATE ROLE groupsrv_login LOGIN IN ROLE groupsrv_server; GRANT pg_read_all_stats TO groupsrv_server" >/dev/null
pgsrv_conf "$work/login.conf" "postgresql:///groupsrv?host=$PG_SOCK&user=groupsrv_login&options=-c%20role%3Dgroupsrv_server"
sed -i 's/^\[audit\]$/timeout = 1\n&/' "$work/login.conf"
mark=$(wc -l < "$work/serve.log")
pgsrv_start "$work/login.conf"
expect 200 "unwrap as a login role set to the server role" -- alice --data-binary @"$work/unwrap.json" "$base/v1/groups/eng/unwrap"
standby gs_ghost_standby
for i in $(seq 1 100); do
  [ "$(pg_psql groupsrv -At -c "SHOW synchronous_standby_names")" = gs_ghost_standby ] && break
  sleep 0.05
done
s=$(call alice --data-binary @"$work/unwrap.json" "$base/v1/groups/eng/unwrap")
standby RESET
for i in $(seq 1 100); do
  [ "$(pg_psql groupsrv -At -c "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")" = 0 ] && break
  sleep 0.05
done
logged_since "$mark" 'was not ended: PostgreSQL refused to terminate it (the server.s role needs the privileges of the session.s login role, or of pg_signal_backend)' ||
  fail "a backend PostgreSQL refused to end: the log does not say so: $(tail -n +"$((mark + 1))" "$work/serve.log" | grep 'database session')"
kill -TERM "$srv_pid"
wait "$srv_pid" || { srv_pid=; fail "serve as groupsrv_login exited non-zero at SIGTERM"; }
srv_pid=
pg_psql groupsrv -c "REVOKE pg_read_all_stats FROM groupsrv_server; DROP ROLE groupsrv_login" >/dev/null
ok "a backend the server role may not end: unwrap answered $s, the log says PostgreSQL refused and what would let it"

# ---- pg_stat_activity not readable (a hardened database) -------------------
# The server reads its backend's pid and start from pg_stat_activity at
# connect (to end that backend if a write is left in flight). That read
# was the session setup's last statement: where the view is revoked from
# PUBLIC, every connection failed its setup and every request got 503.
# Now it goes on without, and says once what it cannot do.
pg_psql groupsrv -c "REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC" >/dev/null
mark=$(wc -l < "$work/serve.log")
pgsrv_start "$work/server.conf"
expect 200 "unwrap with pg_stat_activity revoked from PUBLIC" -- alice --data-binary @"$work/unwrap.json" \
  "$base/v1/groups/eng/unwrap"
pg_psql groupsrv -c "GRANT SELECT ON pg_catalog.pg_stat_activity TO PUBLIC" >/dev/null
logged_since "$mark" 'database backend not identified: pg_stat_activity could not be read' ||
  fail "pg_stat_activity revoked: the log does not say the backend is not identified"
kill -TERM "$srv_pid"
wait "$srv_pid" || { srv_pid=; fail "serve with pg_stat_activity revoked exited non-zero at SIGTERM"; }
srv_pid=
ok "pg_stat_activity revoked from PUBLIC: the server serves, and says it cannot end a backend left with a write"

out=$(srv audit verify 2>&1) || fail "audit verify as the server role: $out"
grep -q '^instance gs-a: ok: ' <<<"$out" || fail "audit verify: $out"
ok "audit verify as the server role: $(tail -n 1 <<<"$out")"

# check's clock row with [audit] store = db: a clock an hour behind the
# latest record of this server's chains in the audit table is a warning
# (check looked at a file log only, and said nothing with the table).
# libfaketime ahead of a sanitizer build's ASan runtime: its link-order
# check off, as in ops-cli.sh.
srv check > "$work/check.out" 2>&1 || fail "check as the server role after serving: $(grep -v '^cap ' "$work/check.out")"
! grep -q '^clock' "$work/check.out" || fail "check with the clock right: $(grep '^clock' "$work/check.out")"
env ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 faketime -f -1h \
  "$BIN/groupsrv" -c "$work/server.conf" check > "$work/check.out" 2>&1 || true
grep -Eq "^clock     WARNING: the system clock \([0-9T:-]+Z\) is [0-9]+ s behind the audit log's latest record \([0-9T:-]+Z\): it was set back" "$work/check.out" ||
  fail "check with the clock an hour back, [audit] store = db: $(grep -E '^(clock|audit|database)' "$work/check.out")"
# A clock that ran two hours ahead while an admin command wrote its record,
# and was set right before the next: the warning stays (the latest record
# among the chains' last rows, as the file's last 64 KiB; not the head).
env ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 faketime -f +2h \
  "$BIN/groupsrv" -c "$work/gs.conf" member add eng clock@example.org --issue-cert --out "$work" > "$work/add.out" 2>&1 || fail "member add with the clock ahead: $(cat "$work/add.out")"
own member remove eng clock@example.org >/dev/null || fail "member remove"
srv check > "$work/check.out" 2>&1 || true
grep -Eq "^clock     WARNING: the system clock \([0-9T:-]+Z\) is [0-9]+ s behind the audit log's latest record" "$work/check.out" ||
  fail "check after a record written two hours ahead, and one since: $(grep -E '^(clock|audit|database)' "$work/check.out")"
ok "check: a clock an hour behind the audit table's latest record is a warning; a record two hours ahead followed by one now too"

# ---- a restore from pg_dump with [audit] store = db (operations.md, step 8) --
# The audit rows go back to the backup with the database: the records made
# since are gone and audit verify passes on the shorter chain; the rows
# kept first with the document's pg_dump --table=audit still hold them.
pgdump=$(tr '\n' ' ' < "$SRC/docs/operations.md" | sed 's/  */ /g' |
  grep -o 'keep those rows: `[^`]*pg_dump --data-only --table=audit DBNAME > audit-rows.sql[^`]*`' | sed 's/^[^`]*`//; s/`$//') ||
  fail "operations.md step 8 does not say how to keep the audit rows before a restore with [audit] store = db"
pg_dump "$(pg_url groupsrv)" > "$work/dump.sql" 2> "$work/dump.err" || fail "pg_dump: $(cat "$work/dump.err")"
own audit verify > "$work/verify-backup" 2>&1 || fail "audit verify at the backup: $(cat "$work/verify-backup")"
own member add eng restored@example.org --issue-cert --out "$work" >/dev/null || fail "member add after the backup"
own audit verify > "$work/verify-last" 2>&1 || fail "audit verify after the backup: $(cat "$work/verify-last")"
(cd "$work" && umask 022 && eval "${pgdump/DBNAME/\"\$(pg_url groupsrv)\"}") || fail "$pgdump failed"
[ "$(stat -c %a "$work/audit-rows.sql")" = 600 ] || fail "$pgdump leaves the audit rows readable by others: $(ls -l "$work/audit-rows.sql")"
grep -q 'restored@example.org' "$work/audit-rows.sql" || fail "$pgdump keeps no record of the change after the backup"
pg_createdb restored >/dev/null || fail "createdb restored"
pg_psql restored -f "$work/dump.sql" > "$work/restore.out" 2>&1 || fail "psql restore: $(tail -n 5 "$work/restore.out")"
pgsrv_conf "$work/restored.conf" "postgresql:///restored?host=$PG_SOCK&user=groupsrv_owner"
"$BIN/groupsrv" -c "$work/restored.conf" audit verify > "$work/verify-restored" 2>&1 ||
  fail "audit verify after the restore: $(cat "$work/verify-restored")"
cmp -s "$work/verify-restored" "$work/verify-backup" && ! cmp -s "$work/verify-restored" "$work/verify-last" ||
  fail "the restored audit chain is not the backup's: $(cat "$work/verify-restored") / $(cat "$work/verify-backup")"
ok "pg_dump restore, [audit] store = db: the chain is the backup's (verify passes, an earlier head); the rows kept first hold the later records"

# ---- the DBA's idle_session_timeout on the role ------------------------------
# Set on the role (ALTER ROLE ... SET idle_session_timeout, PostgreSQL 14
# and later), shorter than a key takes to make: group create and rotate
# hold the keys lock (a session-level advisory lock) while the token makes
# the key, with the session idle. Before, PostgreSQL ended it there, the
# lock with it, and such commands failed at every try ("the database
# connection was lost while this command held the keys lock"). Now the
# session holding the lock has none, and gets the role's value back after.
pg_psql groupsrv -c "ALTER ROLE groupsrv_owner SET idle_session_timeout = '100ms'" >/dev/null
own group create idle --address idle@example.org --key rsa:4096 > "$work/idle.out" 2>&1 ||
  fail "group create (RSA-4096) with idle_session_timeout = 100ms on the role: $(cat "$work/idle.out")"
pg_psql groupsrv -c "ALTER ROLE groupsrv_owner RESET idle_session_timeout" >/dev/null
ok "group create with a role's idle_session_timeout shorter than the key generation"

# ---- pg_settings not readable (a hardened database) ----------------------------
# The keys lock turned idle_session_timeout off through pg_settings: where
# that view is revoked from PUBLIC, every group create, rotate and member
# remove failed ("the keys lock: permission denied for view pg_settings").
pg_psql groupsrv -c "REVOKE SELECT ON pg_catalog.pg_settings FROM PUBLIC" >/dev/null
own group create hardened --address hardened@example.org --key rsa:2048 > "$work/hardened.out" 2>&1 ||
  fail "group create with pg_settings revoked from PUBLIC: $(cat "$work/hardened.out")"
pg_psql groupsrv -c "GRANT SELECT ON pg_catalog.pg_settings TO PUBLIC" >/dev/null
ok "group create with pg_settings revoked from PUBLIC"
