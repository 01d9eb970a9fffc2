#!/usr/bin/env bash
# ops-pg-failover.sh BIN SRC: a PostgreSQL failover under a running server,
# as docs/scale-out.md ("High availability of PostgreSQL") describes it: a
# primary and a streaming standby (pg_basebackup -R; both private, unix
# sockets only), the server given both in one multi-host URI with
# target_session_attrs=read-write, the standby listed FIRST:
#   - the server starts and serves on the primary: the standby, read-only,
#     is refused at connect and never written;
#   - the primary stopped: 503 db_unavailable with Retry-After, no hang;
#   - the standby promoted: the same server follows it by itself (no
#     restart): /healthz 200, unwraps and member changes served, the
#     change on the new primary; audit verify passes there;
#   - the standby asynchronous and stopped first, so that the failover loses
#     the primary's last commits (members added, audit records): a member
#     removed on the new primary by another server (here the CLI) is refused
#     at this server's very next request, though the change counter came
#     back to the value the server last read on the old primary; and the
#     server's audit chain continues from the last record the new primary
#     has (no gap: audit verify passes).
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/lib/pg.sh"
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/ops-pg-failover.XXXXXX")
srv_pid=
SB=
sb_ctl() { _pg_as_owner "$PG_BIN/pg_ctl" -D "$SB/data" -l "$SB/server.log" -w -t 60 "$@" >/dev/null; }
cleanup() {
  if [ -n "$srv_pid" ]; then kill -TERM "$srv_pid" 2>/dev/null || true; wait "$srv_pid" 2>/dev/null || true; fi
  if [ -n "$SB" ]; then sb_ctl -m immediate stop 2>/dev/null || true; rm -rf "$SB"; fi
  pg_cleanup
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$work/serve.log" ] && tail -n 20 "$work/serve.log" >&2; exit 1; }
ok() { echo "ok: $*"; }
. "$SRC/tests/integration/pg-server-lib.sh"

pg_start || fail "PostgreSQL did not start"
PRIMARY_SOCK=$PG_SOCK
printf 'local replication all trust\n' >> "$PG_ROOT/data/pg_hba.conf"
_pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_ROOT/data" reload >/dev/null
pg_psql postgres -c "CREATE DATABASE groupsrv" >/dev/null

# The standby: a base backup of the primary, its own socket directory.
SB=$(mktemp -d "${GS_PG_TMP:-/tmp}/gs-pg-standby.XXXXXX")
mkdir -m 700 "$SB/sock" "$SB/data"
[ "$(id -u)" = 0 ] && chown postgres: "$SB" "$SB/sock" "$SB/data"
_pg_as_owner "$PG_BIN/pg_basebackup" -D "$SB/data" -h "$PRIMARY_SOCK" -U "$PG_USER" -R -X stream -c fast \
  > "$work/basebackup.log" 2>&1 || fail "pg_basebackup: $(cat "$work/basebackup.log")"
printf "unix_socket_directories = '%s'\n" "$SB/sock" >> "$SB/data/postgresql.conf"
sb_ctl start || fail "the standby did not start: $(tail -n 5 "$SB/server.log")"
sbq() { psql -X -q -At "postgresql:///$1?host=$SB/sock&user=$PG_USER" -c "$2"; }
[ "$(sbq postgres 'SELECT pg_is_in_recovery()')" = t ] || fail "the standby is not in recovery"
ok "a primary and a streaming standby"

# docs/scale-out.md's form: several hosts, target_session_attrs=read-write;
# the standby first, so that libpq has to pass it over.
pgsrv_setup "postgresql:///groupsrv?host=$SB/sock,$PRIMARY_SOCK&user=$PG_USER&target_session_attrs=read-write" alice bob
# One token worker: the member record bob's unwrap keeps is the one his
# request after the failover meets.
sed -i "/^pin_source/a workers = 1" "$work/gs.conf"
pgsrv_start
unwrap 200 "unwrap, standby listed first" -- alice
expect 201 "member PUT, standby listed first" -- admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/m1@example.org"
n=$(sbq postgres "SELECT count(*) FROM pg_stat_activity WHERE datname = 'groupsrv' AND backend_type = 'client backend'")
[ "$n" = 0 ] || fail "the server kept $n sessions on the standby"
for i in $(seq 1 50); do [ "$(sbq groupsrv "SELECT count(*) FROM members WHERE email = 'm1@example.org'")" = 1 ] && break; sleep 0.1; done
ok "every session on the primary, none on the standby; m1 replicated to it"

# ---- commits the standby never gets ----------------------------------------------
# The standby stopped (asynchronous: the primary goes on without it):
# members added, and unwraps by bob, whose member record the server keeps
# at the change counter it read last.
sb_ctl -m fast stop
for d in 1 2 3 4 5 6; do
  [ "$(call admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/lost$d@example.org")" = 201 ] ||
    fail "member PUT lost$d, the standby stopped"
done
unwrap 200 "bob's unwrap, the standby stopped" -- bob
unwrap 200 "bob's unwrap again (his record kept)" -- bob
lost_n=$(pg_psql groupsrv -At -c "SELECT n FROM changes")

# ---- the primary goes, the standby is promoted ----------------------------------
pg_stop
sb_ctl start || fail "the standby did not start again: $(tail -n 5 "$SB/server.log")"
unwrap 503 db_unavailable "unwrap, primary stopped, standby not promoted" -- alice
expect 503 db_unavailable "healthz, primary stopped" -- alice "$base/healthz"
sb_ctl promote || fail "pg_ctl promote"
for i in $(seq 1 100); do [ "$(sbq postgres 'SELECT pg_is_in_recovery()')" = f ] && break; sleep 0.1; done
[ "$(sbq groupsrv "SELECT count(*) FROM members WHERE email LIKE 'lost%'")" = 0 ] || fail "setup: the standby had the lost commits"
# Another server (the CLI here) removes bob on the new primary before this
# server is asked anything, and other changes bring the change counter to
# the value this server read last on the old primary.
gs member remove eng bob@example.org >/dev/null || fail "member remove bob on the new primary"
n=$(sbq groupsrv 'SELECT n FROM changes')
while [ "$n" -lt "$lost_n" ]; do
  gs member add eng "pad$n@example.org" --issue-cert --out "$work" >/dev/null || fail "member add pad$n"
  n=$(sbq groupsrv 'SELECT n FROM changes')
done
[ "$n" = "$lost_n" ] || fail "setup: the change counter is $n on the new primary, $lost_n was read on the old"
got=$(call bob --data-binary @"$work/unwrap.json" "$base/v1/groups/eng/unwrap")
[ "$got" = 403 ] && grep -q '"code":"not_a_member"' "$work/body" ||
  fail "bob removed on the new primary: his next unwrap is HTTP $got, not 403 not_a_member: $(head -c 300 "$work/body")"
ok "bob removed on the new primary: his very next unwrap is 403 not_a_member (the change counter back at $lost_n)"
for i in $(seq 1 100); do [ "$(call alice "$base/healthz")" = 200 ] && break; sleep 0.1; done
expect 200 "healthz once the standby is promoted (the server followed it, no restart)" -- alice "$base/healthz"
unwrap 200 "unwrap on the new primary" -- alice
expect 201 "member PUT on the new primary" -- admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/m2@example.org"
[ "$(sbq groupsrv "SELECT count(*) FROM members WHERE email = 'm2@example.org'")" = 1 ] || fail "m2 is not on the new primary"
kill -0 "$srv_pid" || fail "serve exited"
gs audit verify > "$work/verify.txt" 2>&1 || fail "audit verify on the new primary: $(cat "$work/verify.txt")"
grep -q 'instance gs-a: ok' "$work/verify.txt" || fail "gs-a's chain on the new primary: $(cat "$work/verify.txt")"
grep -q 'audit chain: its last records are not in the database' "$work/serve.log" ||
  fail "the lost audit records are not logged"
ok "gs-a's chain goes on after the last record the new primary has (no gap), the loss logged"
ok "audit verify on the new primary: $(grep -m1 'instance gs-a:' "$work/verify.txt")"
