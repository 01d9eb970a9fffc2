# bench/lib-groupsrv.sh: sets up and runs a groupsrv server for the bench
# tools. Sourced by bench/run and bench/smoke.sh, which define BIN (the
# build's bin/), SOFTHSM (module path), NCPU, pids (array of our child pids),
# die() and log(), and have exported SOFTHSM2_CONF for a throw-away token
# whose user PIN is in $PIN_FILE.
#
# gs_setup WORK        CA, server certificate, config; sets CONF, CA_CERT,
#                      CLIENT_CERT, CLIENT_KEY, URL_BASE, SERVER_PORT, AUDIT_LOG
# gs_group_create NAME KEYSPEC
#                      group NAME (address NAME@bench.example) with every
#                      deliver method; member alice (same certificate for
#                      every group) and the exploder identity; writes
#                      $WORK/group-${NAME#bench-}.pem
# gs_server_start / gs_server_stop
#                      `groupsrv serve`, [server] threads = GS_SERVER_THREADS
#                      (bench/run: --threads, default 4) or else NCPU; SERVER_PID
#                      (the supervisor; GS_SERVE_BIN = another build's
#                      groupsrv to start instead)

gs() { "$BIN/groupsrv" -c "$CONF" "$@"; }

gs_setup() {
  GS_WORK=$1
  local certs=$GS_WORK/certs
  mkdir -p "$certs"
  SERVER_PORT=$(free_port)
  URL_BASE=https://127.0.0.1:$SERVER_PORT
  CONF=$GS_WORK/groupsrv.conf
  AUDIT_LOG=$GS_WORK/audit.jsonl
  # Server certificate from a file-based CA, as an operator would bring one.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench server CA" -keyout "$certs/tca.key" -out "$certs/tca.pem" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$certs/server.key" -out "$certs/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$certs/server.ext"
  openssl x509 -req -in "$certs/server.csr" -CA "$certs/tca.pem" -CAkey "$certs/tca.key" \
    -CAcreateserial -days 2 -extfile "$certs/server.ext" -out "$certs/server.pem" 2>/dev/null
  CA_CERT=$certs/tca.pem
  # GS_DB_URL (bench/kh-compare --pg): a PostgreSQL database, not SQLite
  local db_line="path = $GS_WORK/groupsrv.db"
  [ -z "${GS_DB_URL:-}" ] || db_line="url = $GS_DB_URL"
  cat > "$CONF" <<CONF
[server]
listen = 127.0.0.1:$SERVER_PORT
threads = ${GS_SERVER_THREADS:-$NCPU}
max_body = 65536
rate_limit = 0
timeout = 30
max_connections = 1024
metrics = any
log_level = warn
[tls]
cert = $certs/server.pem
key = $certs/server.key
[hsm]
module = $SOFTHSM
token = pkcs11:token=groupsrv
pin_source = $PIN_FILE
max_sessions = $((NCPU * 2))
[db]
$db_line
[audit]
path = $AUDIT_LOG
CONF
  gs ca init --key rsa:2048 >/dev/null || die "groupsrv ca init"
  CLIENT_CERT=$certs/alice@bench.example.pem
  CLIENT_KEY=$certs/alice@bench.example.key
  EXPLODER_CERT=$certs/dle@bench.example.pem
  EXPLODER_KEY=$certs/dle@bench.example.key
  GS_CERTS=$certs
}

gs_group_create() { # NAME KEYSPEC
  local name=$1 spec=$2 short=${1#bench-} methods=tls,recipient-key,group-secret
  # an EC group key does deliver=tls only (group create refuses more)
  case "$spec" in ec:*) methods=tls ;; esac
  gs group create "$name" --address "$name@bench.example" --key "$spec" --methods "$methods" \
    >/dev/null || die "groupsrv group create $name"
  gs group show "$name" --cert > "$GS_WORK/group-$short.pem"
  local who
  for who in alice dle; do
    local role=member
    [ "$who" = dle ] && role=exploder
    if [ -f "$GS_CERTS/$who@bench.example.pem" ]; then
      gs member add "$name" "$who@bench.example" --cert "$GS_CERTS/$who@bench.example.pem" \
        --role "$role" >/dev/null || die "member add $who"
    else
      gs member add "$name" "$who@bench.example" --issue-cert --out "$GS_CERTS" \
        --role "$role" >/dev/null || die "member add $who"
    fi
  done
}

gs_server_start() {
  "${GS_SERVE_BIN:-$BIN/groupsrv}" -c "$CONF" serve >>"$GS_WORK/server.log" 2>&1 &
  SERVER_PID=$!
  pids+=("$SERVER_PID")
  local i
  for i in $(seq 1 100); do
    if curl -s -o /dev/null --cacert "$CA_CERT" "$URL_BASE/healthz" 2>/dev/null; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || die "groupsrv serve exited: $(tail -5 "$GS_WORK/server.log")"
    sleep 0.1
  done
  die "groupsrv serve did not become healthy"
}

gs_server_stop() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

# Requests the server has answered, from its Prometheus metrics; with an
# endpoint name, only that endpoint's ("unwrap", "rewrap", ...).
gs_requests_served() {
  curl -s --cacert "$CA_CERT" "$URL_BASE/metrics" 2>/dev/null |
    awk -v ep="${1:-}" '/^groupsrv_requests_total\{/ && (ep == "" || index($0, "endpoint=\"" ep "\"")) {s += $NF}
      END {printf "%d\n", s}'
}
