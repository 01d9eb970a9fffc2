#!/usr/bin/env bash
# tests/lib/cluster.sh: several `groupsrv serve` instances sharing one private
# PostgreSQL (tests/lib/pg.sh), each on its own SoftHSM token holding copies
# of the first one's keys (made by the key ceremony), behind HAProxy (TCP mode, TLS passed through, leastconn, /healthz checks
# over TLS). Sourced by scripts/cluster, tests/integration/cluster.sh and
# bench/run --part cluster. Loopback only, free ports (tests/lib/ports.sh),
# one work directory.
#
#   cl_init WORK            sets CL_WORK; starts PostgreSQL (cl_cleanup stops it)
#   cl_provision N [MODULE] a token per instance, a replicable CA on A's, TLS
#                           certificates, N instance configs (A, B, C, ...);
#                           MODULE (default SoftHSM) is what groupsrv loads,
#                           e.g. tests/p11fault in front of SoftHSM
#   cl_copy_keys GROUP...   the key ceremony (docs/operations.md) from A to every
#                           other instance: A's CA key and every key of each
#                           GROUP (made with --replicable); run after creating them
#   cl_copy_version I GROUP OPTION N   one later version to instance I, OPTION
#                           --version or --secret-version (after a rotation)
#   gsa I ARGS...           `groupsrv` admin command as instance I (0 = A)
#   cl_start I / cl_stop I / cl_kill I     one instance (SIGTERM / SIGKILL)
#   cl_haproxy_start [I...] HAProxy in front of instances I... (default all);
#                           sets CL_PORT, CL_URL
#   cl_wait_up COUNT        until HAProxy sees COUNT servers up
#   cl_cleanup              stop everything started here, remove CL_WORK
#                           (unless CL_KEEP=1)
# Variables after cl_provision: CL_N, CL_PORTS[i], CL_CPORTS[i], CL_CONF[i],
# CL_TOKEN[i], CL_NAME[i] (the [server] instance), CL_CERTS (tca.pem, ...),
# CL_DB_URL, CL_MODULE.

CL_SRC=${CL_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
. "$CL_SRC/tests/lib/pg.sh"
. "$CL_SRC/tests/lib/ports.sh"

CL_PIDS=()
CL_HAPROXY_PID=
CL_NAMES=(a b c d e f g h)

cl_init() {
  CL_WORK=$1
  mkdir -p "$CL_WORK/log"
  chmod 700 "$CL_WORK"
  pg_start || return 1
  CL_DB_URL=$(pg_createdb groupsrv) || return 1
}

cl_provision() { # N [MODULE]
  CL_N=$1
  local module=${2:-}
  local softhsm=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
  CL_MODULE=${module:-$softhsm}
  CL_CERTS=$CL_WORK/certs
  mkdir -p "$CL_CERTS"
  local c=$CL_CERTS
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=cluster TLS CA" \
    -keyout "$c/tca.key" -out "$c/tca.pem" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$c/server.key" -out "$c/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$c/server.ext"
  openssl x509 -req -in "$c/server.csr" -CA "$c/tca.pem" -CAkey "$c/tca.key" -CAcreateserial -days 2 \
    -extfile "$c/server.ext" -out "$c/server.pem" 2>/dev/null
  chmod 600 "$c"/*.key
  local i
  for ((i = 0; i < CL_N; i++)); do
    local n=${CL_NAMES[$i]}
    CL_NAME[$i]=gs-$n
    CL_TOKEN[$i]=$CL_WORK/token-$n
    take_port "CL_PORTS[$i]" "CL_CPORTS[$i]" || return 1
    CL_CONF[$i]=$CL_WORK/groupsrv-$n.conf
    "$CL_SRC/scripts/provision-softhsm" "${CL_TOKEN[$i]}" groupsrv >/dev/null || return 1
    cat > "${CL_CONF[$i]}" <<EOF
[server]
listen = 127.0.0.1:${CL_PORTS[$i]}
instance = ${CL_NAME[$i]}
threads = ${CL_THREADS:-2}
timeout = 10
metrics = any
log_level = ${CL_LOG_LEVEL:-info}
[tls]
cert = $c/server.pem
key = $c/server.key
client_ca = $c/clients-ca.pem
[hsm]
module = $CL_MODULE
token = pkcs11:token=groupsrv
pin_source = ${CL_TOKEN[$i]}/user-pin
so_pin_source = ${CL_TOKEN[$i]}/so-pin
[db]
url = $CL_DB_URL
[audit]
store = db
[certsrv]
listen = 127.0.0.1:${CL_CPORTS[$i]}
lifetime = 3600
EOF
  done
  gsa 0 ca init --key rsa:2048 --replicable >/dev/null || return 1
  gsa 0 ca show > "$c/clients-ca.pem" || return 1
}

# The token configuration an instance's processes load (SoftHSM, or SoftHSM
# behind tests/p11fault when CL_MODULE is p11fault).
_cl_env() { # I CMD...
  local i=$1
  shift
  SOFTHSM2_CONF=${CL_TOKEN[$i]}/softhsm2.conf GS_P11FAULT_TARGET=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so} \
    "$@"
}

gsa() { # I ARGS...
  local i=$1
  shift
  _cl_env "$i" "$BIN/groupsrv" -c "${CL_CONF[$i]}" "$@"
}

# Instance I's transport key (made on its token the first time), its path.
_cl_transport() { # I
  local t=$CL_WORK/transport-${CL_NAMES[$1]}.pem
  if [ ! -s "$t" ]; then
    gsa "$1" token transport-key --out "$t" >/dev/null || return 1
  fi
  echo "$t"
}

# A's keys onto the other tokens: export on A (user and SO PIN), import on
# the instance (the shared database's CA is the trusted one, so no --ca;
# the rows exist, only the token changes). Each instance keeps one
# transport key for every file of the test (--keep-transport-key; a real
# ceremony lets its last import delete it, docs/operations.md).
cl_copy_keys() { # GROUP...
  local i g t n
  for ((i = 1; i < CL_N; i++)); do
    n=${CL_NAMES[$i]}
    t=$(_cl_transport "$i") || return 1
    gsa 0 ca export --to "$t" --out "$CL_WORK/ca-$n.gsk" >/dev/null || return 1
    gsa "$i" ca import --in "$CL_WORK/ca-$n.gsk" --keep-transport-key >/dev/null || return 1
    for g in "$@"; do
      gsa 0 group export "$g" --all --to "$t" --out "$CL_WORK/$g-$n.gsk" >/dev/null || return 1
      gsa "$i" group import --in "$CL_WORK/$g-$n.gsk" --keep-transport-key >/dev/null || return 1
    done
  done
}

cl_copy_version() { # I GROUP --version|--secret-version N
  local t f=$CL_WORK/$2-${CL_NAMES[$1]}$3-$4.gsk
  t=$(_cl_transport "$1") || return 1
  gsa 0 group export "$2" "$3" "$4" --to "$t" --out "$f" >/dev/null || return 1
  gsa "$1" group import --in "$f" --keep-transport-key >/dev/null
}

cl_start() { # I
  local i=$1
  # env(1) execs groupsrv: $! is the server itself (a shell function run
  # in the background would be a subshell, and kill -9 would miss it).
  env SOFTHSM2_CONF="${CL_TOKEN[$i]}/softhsm2.conf" \
    GS_P11FAULT_TARGET="${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}" \
    "$BIN/groupsrv" -c "${CL_CONF[$i]}" serve >> "$CL_WORK/log/${CL_NAME[$i]}.log" 2>&1 &
  CL_PID[$i]=$!
  CL_PIDS+=("${CL_PID[$i]}")
  local t
  for t in $(seq 1 200); do
    curl -sf --max-time 5 --cacert "$CL_CERTS/tca.pem" "https://localhost:${CL_PORTS[$i]}/healthz" >/dev/null 2>&1 && return 0
    kill -0 "${CL_PID[$i]}" 2>/dev/null || { tail -n 20 "$CL_WORK/log/${CL_NAME[$i]}.log" >&2; return 1; }
    sleep 0.1
  done
  echo "cluster: ${CL_NAME[$i]} did not become healthy" >&2
  return 1
}

cl_stop() { # I
  local p=${CL_PID[$1]:-}
  [ -n "$p" ] || return 0
  kill -TERM "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  CL_PID[$1]=
}

cl_kill() { # I
  local p=${CL_PID[$1]:-}
  [ -n "$p" ] || return 0
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  CL_PID[$1]=
}

# The tested configuration (docs/scale-out.md shows the same): TCP mode so
# the client certificate reaches groupsrv; leastconn; /healthz over TLS.
cl_haproxy_cfg() { # PORT INSTANCES...
  local port=$1 i
  shift
  cat <<EOF
global
    maxconn 4096
    stats socket $CL_WORK/haproxy.sock mode 600 level admin

defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # a refused connection (instance just died, not yet marked down) is
    # retried, the last time on another server
    retries 3
    option redispatch

frontend groupsrv
    bind 127.0.0.1:$port
    default_backend groupsrv

backend groupsrv
    balance leastconn
    option httpchk GET /healthz
    http-check expect status 200
    default-server check check-ssl verify required ca-file $CL_CERTS/tca.pem verifyhost localhost inter 1s fall 2 rise 2
EOF
  for i in "$@"; do
    printf '    server %s 127.0.0.1:%s\n' "${CL_NAME[$i]}" "${CL_PORTS[$i]}"
  done
}

cl_haproxy_start() { # [INSTANCES...]
  local list=("$@") i
  if [ ${#list[@]} -eq 0 ]; then for ((i = 0; i < CL_N; i++)); do list+=("$i"); done; fi
  take_port CL_PORT || return 1
  CL_URL=https://localhost:$CL_PORT
  cl_haproxy_cfg "$CL_PORT" "${list[@]}" > "$CL_WORK/haproxy.cfg"
  haproxy -c -q -f "$CL_WORK/haproxy.cfg" || return 1
  haproxy -db -f "$CL_WORK/haproxy.cfg" >> "$CL_WORK/log/haproxy.log" 2>&1 &
  CL_HAPROXY_PID=$!
  CL_PIDS+=("$CL_HAPROXY_PID")
  cl_wait_up "${#list[@]}"
}

cl_haproxy_stop() {
  [ -n "$CL_HAPROXY_PID" ] || return 0
  kill -TERM "$CL_HAPROXY_PID" 2>/dev/null || true
  wait "$CL_HAPROXY_PID" 2>/dev/null || true
  CL_HAPROXY_PID=
}

# Servers HAProxy currently considers up.
cl_servers_up() {
  /usr/bin/python3 - "$CL_WORK/haproxy.sock" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"show stat\n")
data = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    data += b
up = 0
for line in data.decode().splitlines():
    f = line.split(",")
    if len(f) > 17 and f[0] == "groupsrv" and f[1] not in ("BACKEND", "FRONTEND") and f[17].startswith("UP"):
        up += 1
print(up)
EOF
}

cl_wait_up() { # COUNT [SECONDS]
  local want=$1 t
  for t in $(seq 1 $((${2:-30} * 10))); do
    [ "$(cl_servers_up 2>/dev/null)" = "$want" ] && return 0
    sleep 0.1
  done
  echo "cluster: HAProxy does not see $want servers up (sees $(cl_servers_up 2>/dev/null))" >&2
  return 1
}

cl_cleanup() {
  local p
  for p in "${CL_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${CL_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  CL_PIDS=()
  if [ "${CL_KEEP:-0}" = 1 ]; then
    return 0
  fi
  pg_cleanup
  [ -n "${CL_WORK:-}" ] && rm -rf "$CL_WORK"
}
