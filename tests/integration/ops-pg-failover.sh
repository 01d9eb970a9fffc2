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
#     change on the new primary; audit verify passes there.
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
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

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

"$SRC/scripts/provision-softhsm" "$work/token" groupsrv >/dev/null
export SOFTHSM2_CONF=$work/token/softhsm2.conf
port=$(free_port)
certs=$work/certs
mkdir -p "$certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=127.0.0.1" \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$certs/server.key" -out "$certs/server.pem" 2>/dev/null
# docs/scale-out.md's form: several hosts, target_session_attrs=read-write;
# the standby first, so that libpq has to pass it over.
cat > "$work/gs.conf" <<CONF
[server]
listen = 127.0.0.1:$port
instance = gs-a
[tls]
cert = $certs/server.pem
key = $certs/server.key
[hsm]
module = ${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
pin_source = $work/token/user-pin
[db]
url = postgresql:///groupsrv?host=$SB/sock,$PRIMARY_SOCK&user=$PG_USER&target_session_attrs=read-write
[audit]
store = db
CONF
gs() { "$BIN/groupsrv" -c "$work/gs.conf" "$@"; }
gs ca init --key rsa:2048 >/dev/null || fail "ca init through the multi-host URI"
gs group create eng --address eng@example.org --key rsa:2048 >/dev/null || fail "group create"
gs member add eng alice@example.org --issue-cert --out "$certs" >/dev/null
gs member add eng admin@example.org --issue-cert --out "$certs" --role admin >/dev/null
gs group show eng --cert > "$certs/group.pem"
"$BIN/mkri" --cert "$certs/group.pem" --kt oaep-sha1 --out "$work/ri.der" >/dev/null || fail "mkri"
printf '{"recipient_info":"%s","content_algorithm":"aes-256-cbc"}' "$(base64 -w0 "$work/ri.der")" > "$work/unwrap.json"
base=https://127.0.0.1:$port
c() { local who=$1; shift; curl -sS -m 15 --cacert "$certs/server.pem" --cert "$certs/$who@example.org.pem" --key "$certs/$who@example.org.key" "$@"; }
call() { c "$@" -D "$work/hdr" -o "$work/body" -w '%{http_code}' 2>/dev/null || true; }
expect() { # WANT [CODE] DESC -- WHO CURL-ARGS...
  local want=$1 code= desc got
  shift
  if [ "$2" != -- ]; then code=$1; shift; fi
  desc=$1
  shift 2
  got=$(call "$@")
  [ "$got" = "$want" ] || fail "$desc: HTTP $got, wanted $want: $(head -c 300 "$work/body")"
  if [ -n "$code" ]; then
    grep -q "\"code\":\"$code\"" "$work/body" || fail "$desc: not $code: $(head -c 300 "$work/body")"
    grep -qi '^retry-after: [0-9]' "$work/hdr" || fail "$desc: 503 without Retry-After"
  fi
  ok "$desc ($want${code:+ $code})"
}
unwrap() { expect "$@" --data-binary @"$work/unwrap.json" "$base/v1/groups/eng/unwrap"; }

"$BIN/groupsrv" -c "$work/gs.conf" serve > "$work/serve.log" 2>&1 &
srv_pid=$!
for i in $(seq 1 100); do
  curl -s -o /dev/null --cacert "$certs/server.pem" "$base/healthz" && break
  kill -0 "$srv_pid" 2>/dev/null || fail "serve exited"
  sleep 0.1
done
unwrap 200 "unwrap, standby listed first" -- alice
expect 201 "member PUT, standby listed first" -- admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/m1@example.org"
n=$(sbq postgres "SELECT count(*) FROM pg_stat_activity WHERE datname = 'groupsrv' AND backend_type = 'client backend'")
[ "$n" = 0 ] || fail "the server kept $n sessions on the standby"
for i in $(seq 1 50); do [ "$(sbq groupsrv "SELECT count(*) FROM members WHERE email = 'm1@example.org'")" = 1 ] && break; sleep 0.1; done
ok "every session on the primary, none on the standby; m1 replicated to it"

# ---- the primary goes, the standby is promoted ----------------------------------
pg_stop
unwrap 503 db_unavailable "unwrap, primary stopped, standby not promoted" -- alice
expect 503 db_unavailable "healthz, primary stopped" -- alice "$base/healthz"
sb_ctl promote || fail "pg_ctl promote"
for i in $(seq 1 100); do [ "$(call alice "$base/healthz")" = 200 ] && break; sleep 0.1; done
expect 200 "healthz once the standby is promoted (the server followed it, no restart)" -- alice "$base/healthz"
unwrap 200 "unwrap on the new primary" -- alice
expect 201 "member PUT on the new primary" -- admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/m2@example.org"
[ "$(sbq groupsrv "SELECT count(*) FROM members WHERE email = 'm2@example.org'")" = 1 ] || fail "m2 is not on the new primary"
kill -0 "$srv_pid" || fail "serve exited"
gs audit verify > "$work/verify.txt" 2>&1 || fail "audit verify on the new primary: $(cat "$work/verify.txt")"
ok "audit verify on the new primary: $(grep -m1 'instance gs-a:' "$work/verify.txt")"
