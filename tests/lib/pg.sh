#!/usr/bin/env bash
# tests/lib/pg.sh: a private, throw-away PostgreSQL for tests, benchmarks and
# scripts/cluster. Never touches a system cluster: initdb into a fresh temp
# directory, the server listens on a unix socket in that directory only
# (listen_addresses is empty: no TCP at all), trust authentication for that
# socket only. initdb refuses to run as root, so as root (CI) the server runs
# as the `postgres` system user (runuser); as anyone else it runs as them.
#
# Sourced:
#   . tests/lib/pg.sh
#   pg_start                 start one; sets PG_ROOT, PG_SOCK, PG_USER, PG_URL
#                            (the maintenance database) and arranges nothing
#                            else: call pg_cleanup (e.g. from your EXIT trap)
#   pg_createdb NAME         a new database; prints its libpq URI
#   pg_url NAME              the URI of database NAME
#   pg_psql NAME ARGS...     psql on database NAME (quiet, stops on errors)
#   pg_stop / pg_restart     stop (fast) or start again the same cluster
#   pg_hold DIR URL SQL MARK a psql session on URL runs SQL (which prints MARK
#                            once it holds what it takes) and keeps its
#                            transaction open; returns once MARK shows (1 if it
#                            does not within 5 s); its output in DIR/pg_hold.out
#   pg_release SQL           ends that session with SQL ("COMMIT;", ...)
#   pg_cleanup               stop and remove everything
# As a command:
#   tests/lib/pg.sh run CMD ARGS...   start one, export GS_TEST_PG_URL (the
#                                     maintenance database's URI), run CMD,
#                                     stop and remove it; CMD's exit status
# PG_BIN may point at the server binaries (default: Debian's PostgreSQL 15).
# PG_LANGUAGE (e.g. de), when set, is the server's LANGUAGE: its messages are
# in that language once lc_messages is not C (C.UTF-8 will do; the initdb
# here is --locale=C, so English until then).

PG_BIN=${PG_BIN:-}
if [ -z "$PG_BIN" ]; then
  for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ]; then PG_BIN=$d; break; fi
  done
fi

# Runs a server-side command as the cluster's owner.
_pg_as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_start() {
  if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
    echo "pg.sh: PostgreSQL server binaries not found (apt-get install postgresql-15; or set PG_BIN)" >&2
    return 1
  fi
  PG_ROOT=$(mktemp -d "${GS_PG_TMP:-/tmp}/gs-pg.XXXXXX") || return 1
  PG_SOCK=$PG_ROOT/sock
  mkdir -m 700 "$PG_SOCK" "$PG_ROOT/data" || return 1
  if [ "$(id -u)" = 0 ]; then
    PG_USER=postgres
    chown postgres: "$PG_ROOT" "$PG_SOCK" "$PG_ROOT/data" || return 1
  else
    PG_USER=$(id -un)
  fi
  # --no-sync: a throw-away cluster; the server itself keeps fsync and
  # synchronous_commit on, so commits are as durable as in production.
  if ! _pg_as_owner "$PG_BIN/initdb" -D "$PG_ROOT/data" -U "$PG_USER" -A trust -E UTF8 --locale=C \
        --no-sync >"$PG_ROOT/initdb.log" 2>&1; then
    echo "pg.sh: initdb failed:" >&2
    cat "$PG_ROOT/initdb.log" >&2
    return 1
  fi
  # Only the private socket: no TCP listener, and pg_hba trusts local only.
  printf 'local all all trust\n' >"$PG_ROOT/data/pg_hba.conf"
  cat >>"$PG_ROOT/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$PG_SOCK'
unix_socket_permissions = 0777
max_connections = 200
shared_buffers = 32MB
EOF
  pg_restart || return 1
  PG_URL=$(pg_url postgres)
  export PG_ROOT PG_SOCK PG_USER PG_URL
}

pg_restart() {
  if ! _pg_as_owner env ${PG_LANGUAGE:+LANGUAGE=$PG_LANGUAGE} "$PG_BIN/pg_ctl" -D "$PG_ROOT/data" -l "$PG_ROOT/server.log" -w -t 60 start >/dev/null; then
    echo "pg.sh: the server did not start:" >&2
    tail -n 20 "$PG_ROOT/server.log" >&2
    return 1
  fi
}

pg_stop() {
  [ -n "${PG_ROOT:-}" ] && [ -f "$PG_ROOT/data/postmaster.pid" ] || return 0
  _pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_ROOT/data" -m fast -w -t 60 stop >/dev/null 2>&1
}

pg_url() { # NAME
  printf 'postgresql:///%s?host=%s&user=%s\n' "$1" "$PG_SOCK" "$PG_USER"
}

pg_psql() { # NAME ARGS...
  local db=$1
  shift
  psql -X -q -v ON_ERROR_STOP=1 "$(pg_url "$db")" "$@"
}

# The session reads its SQL from a FIFO held open on fd 3, so that the
# transaction stays open between the two calls (a lock a test needs held).
pg_hold() { # DIR URL SQL MARK
  local dir=$1 url=$2 sql=$3 mark=$4 i
  rm -f "$dir/pg_hold.sql"
  mkfifo "$dir/pg_hold.sql" || return 1
  # Emptied here, not only by psql's redirection below: that one is made
  # in the child once the fifo opens, which is when this shell goes on to
  # look for MARK, so a second hold (ops-pg-outage's loop over lock modes)
  # could read the first one's MARK and go on before its lock was taken.
  : >"$dir/pg_hold.out"
  psql -X -q -At "$url" <"$dir/pg_hold.sql" >"$dir/pg_hold.out" 2>&1 &
  PG_HOLDER=$!
  exec 3>"$dir/pg_hold.sql"
  echo "$sql" >&3
  for i in $(seq 1 300); do # up to 30 s: a loaded host; no cost when it comes at once
    grep -q "$mark" "$dir/pg_hold.out" && return 0
    sleep 0.1
  done
  return 1
}

pg_release() { # SQL
  echo "$1" >&3
  exec 3>&-
  wait "$PG_HOLDER" || true
}

pg_createdb() { # NAME
  pg_psql postgres -c "CREATE DATABASE \"$1\"" >/dev/null || return 1
  pg_url "$1"
}

pg_cleanup() {
  [ -n "${PG_ROOT:-}" ] || return 0
  pg_stop
  rm -rf "$PG_ROOT"
  PG_ROOT=
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -u
  if [ "${1:-}" != run ] || [ $# -lt 2 ]; then
    echo "usage: $0 run CMD ARGS..." >&2
    exit 2
  fi
  shift
  trap pg_cleanup EXIT
  pg_start || exit 1
  GS_TEST_PG_URL=$PG_URL
  export GS_TEST_PG_URL
  "$@"
  exit $?
fi
