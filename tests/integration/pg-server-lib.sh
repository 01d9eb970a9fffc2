# pg-server-lib.sh: the set-up ops-pg-outage.sh, ops-pg-failover.sh,
# ops-pg-roles.sh and ops-pg-bad-day.sh share, sourced with BIN, SRC and
# work set and fail defined:
#   pgsrv_setup URL MEMBERS...   a throw-away SoftHSM token, a server
#       certificate for 127.0.0.1, $work/gs.conf on a free port with
#       [db] url = URL and [audit] store = db, the CA, group eng, the
#       members (and admin@example.org, an admin) with certificates in
#       $certs, and $work/unwrap.json (an unwrap request for eng)
#   pgsrv_conf FILE URL          another configuration as $work/gs.conf,
#                                with [db] url = URL (after pgsrv_setup)
#   pgsrv_start [CONF]           serve (with CONF, default $work/gs.conf)
#                                in the background (srv_pid), its log in
#                                $work/serve.log, until it answers
#   gs ARGS / c WHO CURL-ARGS / call WHO CURL-ARGS (prints the status;
#   headers in $work/hdr, body in $work/body)
#   expect WANT [CODE] DESC -- WHO CURL-ARGS: the status WANT, and for a
#       CODE the error code and a Retry-After header
#   unwrap WANT [CODE] DESC -- WHO: an unwrap of $work/unwrap.json
#   logged_since MARK GREP-ARGS...   serve.log has a match after its line
#       MARK (has_line: not `tail | grep -q`, whose early exit under
#       pipefail can end tail with SIGPIPE, status 141, the line there)
#   sync_standby NAME   synchronous_standby_names = NAME ('' resets it)
#   kill_postmaster_at_syncrep [DB] / pg_restart_killed   kill -9 of the
#       postmaster once a COMMIT on DB (groupsrv) waits for a synchronous standby; the
#       database started again after that

. "$SRC/tests/lib/ports.sh"
. "$SRC/tests/lib/has-line.sh"
gs() { "$BIN/groupsrv" -c "$work/gs.conf" "$@"; }

pgsrv_conf() {
  cat > "$1" <<CONF
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
url = $2
[audit]
store = db
CONF
}

pgsrv_setup() {
  local url=$1 m
  shift
  "$SRC/scripts/provision-softhsm" "$work/token" groupsrv >/dev/null
  export SOFTHSM2_CONF=$work/token/softhsm2.conf
  take_port port
  certs=$work/certs
  base=https://127.0.0.1:$port
  mkdir -p "$certs"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=127.0.0.1" \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$certs/server.key" -out "$certs/server.pem" 2>/dev/null
  pgsrv_conf "$work/gs.conf" "$url"
  gs ca init --key rsa:2048 >/dev/null || fail "ca init"
  gs group create eng --address eng@example.org --key rsa:2048 >/dev/null || fail "group create"
  for m in "$@"; do gs member add eng "$m@example.org" --issue-cert --out "$certs" >/dev/null || fail "member add $m"; done
  gs member add eng admin@example.org --issue-cert --out "$certs" --role admin >/dev/null || fail "member add admin"
  gs group show eng --cert > "$certs/group.pem"
  "$BIN/mkri" --cert "$certs/group.pem" --kt oaep-sha1 --out "$work/ri.der" >/dev/null || fail "mkri"
  printf '{"recipient_info":"%s","content_algorithm":"aes-256-cbc"}' "$(base64 -w0 "$work/ri.der")" > "$work/unwrap.json"
}

pgsrv_start() {
  local i
  # the program itself in the background (not gs: $! must be serve)
  "$BIN/groupsrv" -c "${1:-$work/gs.conf}" serve >> "$work/serve.log" 2>&1 &
  srv_pid=$!
  for i in $(seq 1 100); do
    curl -s -o /dev/null --cacert "$certs/server.pem" "$base/healthz" && return 0
    kill -0 "$srv_pid" 2>/dev/null || fail "serve exited"
    sleep 0.1
  done
  fail "serve did not answer"
}

c() { local who=$1; shift; curl -sS -m 15 --cacert "$certs/server.pem" --cert "$certs/$who@example.org.pem" --key "$certs/$who@example.org.key" "$@"; }
call() { c "$@" -D "$work/hdr" -o "$work/body" -w '%{http_code}' 2>/dev/null || true; }
expect() {
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

logged_since() {
  local m=$1
  shift
  tail -n +"$((m + 1))" "$work/serve.log" | has_line "$@"
}

# sync_standby NAME: synchronous_standby_names set to NAME (empty: reset)
# and the configuration reloaded; returns once a new session sees NAME,
# or after a reset once the waits it released have ended
sync_standby() {
  local i
  if [ -n "$1" ]; then
    pg_psql postgres -c "ALTER SYSTEM SET synchronous_standby_names = '$1'" >/dev/null
  else
    pg_psql postgres -c "ALTER SYSTEM RESET synchronous_standby_names" >/dev/null
  fi
  pg_psql postgres -At -c "SELECT pg_reload_conf()" >/dev/null
  for i in $(seq 1 100); do
    if [ -n "$1" ]; then
      [ "$(pg_psql groupsrv -At -c "SHOW synchronous_standby_names")" = "$1" ] && return 0
    else
      [ "$(pg_psql groupsrv -At -c "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")" = 0 ] && return 0
    fi
    sleep 0.05
  done
}

# kill_postmaster_at_syncrep [DB]: kill -9 of the postmaster as soon as a
# session on database DB (default groupsrv) waits for a synchronous
# standby (the waiting backend leaves without a word, the COMMIT's outcome
# unknown to its client); 1 if none waited within 10 s (run it in the
# background). pg_restart_killed starts it again once the old backends
# have left.
kill_postmaster_at_syncrep() {
  local i db=${1:-groupsrv}
  for i in $(seq 1 200); do
    [ -n "$(pg_psql postgres -At -c "SELECT pid FROM pg_stat_activity WHERE datname = '$db'
        AND wait_event = 'SyncRep'")" ] && { kill -KILL "$(head -n 1 "$PG_ROOT/data/postmaster.pid")"; return 0; }
    sleep 0.05
  done
  return 1
}
pg_restart_killed() {
  local i
  for i in $(seq 1 150); do # the old backends leave once they see the postmaster gone
    pg_restart 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}
