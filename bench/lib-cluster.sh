# shellcheck shell=bash
# bench/lib-cluster.sh: `bench/run --part cluster` (issue 18). Sourced by
# bench/run, which defines BIN, P11FAULT, SOFTHSM, duration, rounds, log(),
# die() and tolerate3, and has written machine.txt to the output directory.
#
# cluster_bench OUT [MODEL_US] [MODEL_ENGINES]
#   Unwraps/s through HAProxy with 1, 2 and 3 instances (tests/lib/cluster.sh:
#   one PostgreSQL, instances on tokens given the keys by the key ceremony),
#   each instance loading tests/p11fault in front of its SoftHSM token, so
#   that each has its own
#   token model (MODEL_ENGINES engines, MODEL_US per private-key operation:
#   the token is the limit, as with one HSM per server), against one
#   instance alone (no HAProxy); the ratio is rate(N) / (N x rate(alone)).
#   Then the cost of the shared store: one instance on plain SoftHSM (the
#   CPU is the limit), SQLite + audit file against PostgreSQL + audit table,
#   at 1 and 8 connections. Then the removal's visibility: a member removed
#   through gs-a's admin API, the time until the next unwrap is refused at
#   gs-b, gs-c and through HAProxy.
# Writes OUT/cluster.csv (unwrap-load rows) and OUT/removal.csv; bench/run
# then makes OUT/cluster.md (the tables for docs/performance.md) with
# bench/cluster-report.py.

cluster_bench() {
  local out=$1 model_us=${2:-20000} engines=${3:-2}
  local conc=$((engines * 3)) r n k
  CL_SRC=$top
  . "$top/tests/lib/cluster.sh"
  local cw
  cw=$(mktemp -d /tmp/groupsrv-bench-cluster.XXXXXX)
  # the token model for every instance (p11fault reads it at C_Initialize)
  export GS_P11FAULT_SERVICE_US=$model_us GS_P11FAULT_ENGINES=$engines
  CL_THREADS=$((engines * 2)) CL_LOG_LEVEL=warn
  export CL_THREADS CL_LOG_LEVEL
  cl_init "$cw" || die "cluster: PostgreSQL"
  cl_provision 3 "$P11FAULT" || die "cluster: provisioning"
  local c=$CL_CERTS
  gsa 0 group create bench --address bench@bench.example --key rsa:2048 --methods tls,recipient-key,group-secret \
    --replicable >/dev/null || die "cluster: group create"
  gsa 0 group show bench --cert > "$cw/group.pem"
  gsa 0 member add bench alice@bench.example --issue-cert --out "$c" >/dev/null || die "member add"
  gsa 0 member add bench admin@bench.example --role admin --issue-cert --out "$c" >/dev/null
  for n in $(seq 1 $((rounds * 2 + 2))); do
    gsa 0 member add bench "leaver$n@bench.example" --issue-cert --out "$c" >/dev/null
  done
  "$BIN/mkri" --kt oaep-sha1 --cert "$cw/group.pem" --out "$cw/ri.der" || die "mkri"
  cl_copy_keys bench || die "cluster: the key ceremony"
  for n in 0 1 2; do cl_start "$n" || die "cluster: ${CL_NAME[$n]}"; done

  local csv=$out/cluster.csv
  echo "tool,variant,key,conc,ops,errors,seconds,ops_per_s,p50_ms,p90_ms,p99_ms,cpu_s" > "$csv"
  cpoint() { # URL VARIANT CONC
    echo "# $2 c=$3" >> "$out/unwrap-load.log"
    timeout $((duration * 3 + 120)) "$BIN/unwrap-load" --url "$1/v1/groups/bench/unwrap" \
      --cert "$c/alice@bench.example.pem" --key "$c/alice@bench.example.key" --cacert "$c/tca.pem" \
      --ri "$cw/ri.der" -c "$3" --mode keepalive --duration "$duration" --name rsa2048 --variant "$2" \
      2>> "$out/unwrap-load.log" | grep -v '^tool,' >> "$csv" || tolerate3 "unwrap-load $2"
  }
  # Throughput, interleaved rounds: one alone, then 1, 2, 3 behind HAProxy
  # (the instances behind it change; the others stay up, idle).
  for r in $(seq 1 "$rounds"); do
    log "cluster round $r/$rounds: one instance alone (model $engines x ${model_us} us)"
    cpoint "https://localhost:${CL_PORTS[0]}" alone "$conc"
    for n in 1 2 3; do
      log "cluster round $r/$rounds: $n instance(s) behind HAProxy"
      cl_haproxy_stop
      cl_haproxy_start $(seq 0 $((n - 1))) || die "HAProxy with $n"
      cpoint "$CL_URL" "haproxy-$n" $((conc * n))
    done
  done
  cl_haproxy_stop
  cl_haproxy_start || die "HAProxy"

  # Removal visibility: a member unwraps at gs-b, gs-c and through HAProxy,
  # is removed through gs-a, and unwraps there again.
  printf '{"recipient_info":"%s","deliver":"tls"}' "$(base64 -w0 "$cw/ri.der")" > "$cw/req.json"
  echo "round,url,ms_after_removal,first_status" > "$out/removal.csv"
  for n in $(seq 1 $((rounds * 2 + 2))); do
    /usr/bin/python3 "$top/tests/lib/cluster-load.py" removal --admin-url "https://localhost:${CL_PORTS[0]}" \
      --admin-cert "$c/admin@bench.example.pem" --admin-key "$c/admin@bench.example.key" --cacert "$c/tca.pem" \
      --member "leaver$n@bench.example" --member-cert "$c/leaver$n@bench.example.pem" \
      --member-key "$c/leaver$n@bench.example.key" --body "$cw/req.json" --group bench \
      --at "https://localhost:${CL_PORTS[1]}" --at "https://localhost:${CL_PORTS[2]}" --at "$CL_URL" \
      > "$cw/removal.json" || die "removal $n"
    /usr/bin/python3 - "$cw/removal.json" "$n" "${CL_PORTS[1]}" "${CL_PORTS[2]}" >> "$out/removal.csv" <<'EOF'
import json, sys
r, rnd, pb, pc = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], sys.argv[4]
for url, v in r.items():
    name = "gs-b" if url.endswith(":" + pb) else "gs-c" if url.endswith(":" + pc) else "haproxy"
    print("%s,%s,%s,%s" % (rnd, name, v["ms_after_removal"], v["statuses"][0]))
EOF
  done

  # The shared store's cost: one instance, plain SoftHSM (CPU-bound), SQLite
  # and the audit file against PostgreSQL and the audit table. The SQLite
  # server gets its own token and database (same client certificates).
  cl_stop 0
  local sq=$cw/sqlite
  mkdir -p "$sq"
  "$top/scripts/provision-softhsm" "$sq/token" groupsrv >/dev/null
  local sport
  take_port sport
  sed -e "s|^listen = 127.0.0.1:${CL_PORTS[0]}|listen = 127.0.0.1:$sport|" \
      -e "s|^module = .*|module = $SOFTHSM|" -e "s|^pin_source = .*|pin_source = $sq/token/user-pin|" \
      -e "s|^url = .*|path = $sq/groupsrv.db|" -e "s|^store = db|path = $sq/audit.jsonl|" \
      -e "/^\[certsrv\]/,\$d" "${CL_CONF[0]}" > "$sq/groupsrv.conf"
  local pgconf=$cw/pg-plain.conf
  sed -e "s|^module = .*|module = $SOFTHSM|" -e "/^\[certsrv\]/,\$d" "${CL_CONF[0]}" > "$pgconf"
  sqgs() { SOFTHSM2_CONF=$sq/token/softhsm2.conf "$BIN/groupsrv" -c "$sq/groupsrv.conf" "$@"; }
  sqgs ca init --key rsa:2048 >/dev/null || die "sqlite ca init"
  sqgs group create bench --address bench@bench.example --key rsa:2048 --methods tls >/dev/null
  sqgs group show bench --cert > "$sq/group.pem"
  sqgs member add bench alice@bench.example --cert "$c/alice@bench.example.pem" >/dev/null
  "$BIN/mkri" --kt oaep-sha1 --cert "$sq/group.pem" --out "$sq/ri.der" || die "mkri"
  unset GS_P11FAULT_SERVICE_US GS_P11FAULT_ENGINES
  spoint() { # CONF TOKEN_CONF PORT RI VARIANT CONC
    SOFTHSM2_CONF=$2 "$BIN/groupsrv" -c "$1" serve >> "$cw/log/store-$5.log" 2>&1 &
    local pid=$!
    local t
    for t in $(seq 1 100); do
      curl -sf --cacert "$c/tca.pem" "https://localhost:$3/healthz" >/dev/null 2>&1 && break
      sleep 0.1
    done
    echo "# $5 c=$6" >> "$out/unwrap-load.log"
    timeout $((duration * 3 + 120)) "$BIN/unwrap-load" --url "https://localhost:$3/v1/groups/bench/unwrap" \
      --cert "$c/alice@bench.example.pem" --key "$c/alice@bench.example.key" --cacert "$c/tca.pem" \
      --ri "$4" -c "$6" --mode keepalive --duration "$duration" --name rsa2048 --variant "$5" \
      2>> "$out/unwrap-load.log" | grep -v '^tool,' >> "$csv" || tolerate3 "unwrap-load $5"
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  }
  for r in $(seq 1 "$rounds"); do
    for k in 1 8; do
      log "store cost round $r/$rounds: c=$k SQLite, then PostgreSQL"
      spoint "$sq/groupsrv.conf" "$sq/token/softhsm2.conf" "$sport" "$sq/ri.der" store-sqlite "$k"
      spoint "$pgconf" "${CL_TOKEN[0]}/softhsm2.conf" "${CL_PORTS[0]}" "$cw/ri.der" store-postgresql "$k"
    done
  done
  cl_cleanup
}
