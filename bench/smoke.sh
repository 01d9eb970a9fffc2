#!/usr/bin/env bash
# bench/smoke.sh BIN-DIR: keeps the bench tools compiling and working (ctest
# label "bench-smoke"). Runs each tool for 20 operations against a
# throw-away token and server and asserts only that every operation
# completed without errors. Never asserts a rate or a latency.
set -euo pipefail

BIN=$1
top=$(cd "$(dirname "$0")/.." && pwd)
SOFTHSM=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
P11KIT_CLIENT=${P11KIT_CLIENT:-/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so}
NCPU=2
N=20
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/bench-smoke.XXXXXX")
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "bench-smoke: $*" >&2; }
die() {
  echo "FAIL: $*" >&2
  [ -f "$work/server.log" ] && tail -n 20 "$work/server.log" >&2
  exit 1
}
# lib-groupsrv.sh's server port: from take_port, as the tests' (one port
# each time, so that take_port's memory, lost in $(...), is not needed)
. "$top/tests/lib/ports.sh"
free_port() { local p; take_port p && echo "$p"; }
# check_row CSV-LINE WANT-OPS DESC: ops == WANT-OPS (or > 0 if WANT-OPS is "any") and errors == 0
check_row() {
  local ops errs
  ops=$(echo "$1" | cut -d, -f5)
  errs=$(echo "$1" | cut -d, -f6)
  [ "$errs" = 0 ] || die "$3: $errs errors ($1)"
  if [ "$2" = any ]; then
    [ "$ops" -gt 0 ] || die "$3: no operations ($1)"
  else
    [ "$ops" = "$2" ] || die "$3: $ops operations, wanted $2 ($1)"
  fi
  echo "ok: $3 ($ops ops)"
}

"$top/scripts/provision-softhsm" "$work/token" groupsrv >/dev/null
export SOFTHSM2_CONF=$work/token/softhsm2.conf
PIN_FILE=$work/token/user-pin
[ -f "$SOFTHSM" ] || die "SoftHSM module $SOFTHSM missing"

source "$top/bench/lib-groupsrv.sh"
gs_setup "$work"
gs_group_create bench-rsa2048 rsa:2048
"$BIN/mkri" --kt oaep-sha1 --cert "$work/group-rsa2048.pem" --out "$work/ri.der" --ek-out "$work/ek.bin" ||
  die "mkri"
[ -s "$work/ri.der" ] && [ -s "$work/ek.bin" ] || die "mkri wrote nothing"
key=gs:group:bench-rsa2048:v1

# p11rate: the group key, the benchmark RecipientInfo, 2 threads.
row=$("$BIN/p11rate" --module "$SOFTHSM" --token pkcs11:token=groupsrv --pin-source "$PIN_FILE" \
  --key "$key" --ri "$work/ri.der" --cert "$work/group-rsa2048.pem" --threads 2 --count $N) ||
  die "p11rate exited $?"
check_row "$row" $N "p11rate softhsm"
# ... and with its own OAEP ciphertext (no --ri).
row=$("$BIN/p11rate" --module "$SOFTHSM" --token pkcs11:token=groupsrv --pin-source "$PIN_FILE" \
  --key "$key" --alg oaep-sha1 --threads 1 --count $N) || die "p11rate (own ciphertext) exited $?"
check_row "$row" $N "p11rate own ciphertext"

# p11rate through tests/p11fault's hardware-token model (bench/run's model
# series): every operation is still done by SoftHSM, and one engine of
# 20 ms means 10 operations cannot take less than 200 ms (a lower bound
# the model guarantees, not a performance figure).
P11FAULT=$(dirname "$BIN")/lib/libp11fault.so
[ -f "$P11FAULT" ] || die "p11fault module missing: $P11FAULT"
row=$(GS_P11FAULT_TARGET=$SOFTHSM GS_P11FAULT_SERVICE_US=20000 GS_P11FAULT_ENGINES=1 "$BIN/p11rate" \
  --module "$P11FAULT" --token pkcs11:token=groupsrv --pin-source "$PIN_FILE" --key "$key" \
  --ri "$work/ri.der" --threads 2 --count 10 --variant model) || die "p11rate via the token model exited $?"
check_row "$row" 10 "p11rate via the token model"
awk -F, '{exit !($7 >= 0.2)}' <<<"$row" || die "token model: 10 operations on one 20 ms engine in $(cut -d, -f7 <<<"$row") s"
echo "ok: the token model holds each operation for its service time"
# ... and its zero-cost token (bench/run's CPU per unwrap): C_Decrypt
# answers a fixed key, so the unwraps succeed without SoftHSM's RSA.
row=$(GS_P11FAULT_TARGET=$SOFTHSM GS_P11FAULT_ZERO_COST=1 "$BIN/p11rate" --module "$P11FAULT" \
  --token pkcs11:token=groupsrv --pin-source "$PIN_FILE" --key "$key" --ri "$work/ri.der" --threads 1 \
  --count $N --variant zero-cost) || die "p11rate via the zero-cost token exited $?"
check_row "$row" $N "p11rate via the zero-cost token"

# p11rate through p11-kit server.
sock=$work/p11kit.sock
p11-kit server -f --provider "$SOFTHSM" -n "$sock" "pkcs11:token=groupsrv" >"$work/p11kit.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || die "p11-kit server did not start: $(cat "$work/p11kit.log")"
row=$(P11_KIT_SERVER_ADDRESS="unix:path=$sock" "$BIN/p11rate" --module "$P11KIT_CLIENT" \
  --token pkcs11:token=groupsrv --pin-source "$PIN_FILE" --key "$key" --ri "$work/ri.der" \
  --threads 2 --count $N --variant p11-kit-server) ||
  die "p11rate via p11-kit exited $? (p11-kit server: $(tail -3 "$work/p11kit.log" | tr '\n' ' '))"
check_row "$row" $N "p11rate via p11-kit server"

# unwrap-load against a real groupsrv serve.
gs_server_start
L=("$BIN/unwrap-load" --url "$URL_BASE/v1/groups/bench-rsa2048/unwrap" --cert "$CLIENT_CERT"
  --key "$CLIENT_KEY" --cacert "$CA_CERT" --ri "$work/ri.der")
for mode in keepalive new-conn new-conn-resume; do
  row=$("${L[@]}" -c 2 --mode $mode --count $N) || die "unwrap-load $mode exited $?"
  check_row "$row" $N "unwrap-load $mode"
done
row=$("${L[@]}" -c 4 --rate 50 --duration 0.5 --lat-out "$work/lat.csv") || die "unwrap-load --rate exited $?"
check_row "$row" any "unwrap-load open loop"
[ "$(wc -l < "$work/lat.csv")" -gt 100 ] || die "latency distribution file too short"
for d in recipient-key group-secret; do
  row=$("${L[@]}" -c 2 --deliver $d --expect '"recipient_info"' --count $N) || die "unwrap-load deliver=$d exited $?"
  check_row "$row" $N "unwrap-load deliver=$d"
done
# The IPC hop alone (groupsrv/ipc.c between two processes).
row=$("$BIN/ipchop" --count 200 2>/dev/null) || die "ipchop exited $?"
check_row "$row" 200 "ipchop"
ipc_row=$row
# What one durable record costs the disk, appended and overwritten in place.
row=$("$BIN/synccost" --dir "$work" --records 20 --rounds 1 | sed -n 's/^overwrite\/append,//p') ||
  die "synccost exited $?"
[ -n "$row" ] || die "synccost printed no ratio"
echo "ok: synccost"
# bench/lib-keyholder.sh's view of serve: three processes, CPU and memory.
source "$top/bench/lib-keyholder.sh"
[ "$(serve_cpu | awk '{print $2}' | sort | paste -sd' ')" = "groupsrv groupsrv-kh groupsrv-net" ] ||
  die "serve_cpu: $(serve_cpu)"
[ "$(serve_rss_kb)" -gt 0 ] || die "serve_rss_kb: nothing"
# the network process's memory by kind (bench/run --part overload)
net_mem | awk -F, 'NF == 5 && $1 > 0 && $2 + $3 > 0 && $5 > 0 {ok = 1} END {exit !ok}' || die "net_mem: $(net_mem)"
echo "ok: serve's processes, CPU, RSS and the network process's memory read"

# A wrong answer must count as an error, not as an operation.
if row=$("${L[@]}" --expect '"no-such-field"' --warmup 0 --count 3 2>/dev/null); then
  die "unwrap-load accepted answers without the expected field"
fi
[ "$(echo "$row" | cut -d, -f6)" = 3 ] || die "unwrap-load did not count 3 errors: $row"
echo "ok: unwrap-load counts bad answers as errors"

# The report generator on the rows of this run.
mkdir -p "$work/res" "$work/docs"
{
  echo "date_utc=smoke"
  echo "cores=$NCPU"
} > "$work/res/machine.txt"
printf '# t\n\n<!-- bench:begin -->\n<!-- bench:end -->\n' > "$work/docs/performance.md"
echo "tool,variant,key,conc,ops,errors,seconds,ops_per_s,p50_ms,p90_ms,p99_ms,cpu_s" > "$work/res/results.csv"
"$BIN/p11rate" --module "$SOFTHSM" --token pkcs11:token=groupsrv --pin-source "$PIN_FILE" --key "$key" \
  --ri "$work/ri.der" --threads 1 --count $N --name rsa2048 >> "$work/res/results.csv"
"${L[@]}" -c 1 --count $N --name rsa2048 >> "$work/res/results.csv"
echo "$ipc_row" >> "$work/res/results.csv"
/usr/bin/python3 "$top/bench/report.py" "$work/res" "$work/docs" || die "report.py"
grep -q "groupsrv / p11rate" "$work/docs/performance.md" || die "report.py wrote no table"
[ -s "$work/docs/perf-throughput-rsa2048.png" ] || die "no throughput plot"
grep -q "The IPC hop" "$work/docs/performance.md" || die "report.py wrote no IPC hop"
echo "ok: report.py and gnuplot"
# Part 2 tooling: a 10-member list in group-secret, forward and member-certs mode.
if [ -x "$BIN/exploder" ]; then
  LISTS=(10)
  PGP_N=(3)
  source "$top/bench/lib-exploder.sh"
  mkdir -p "$work/x"
  exploder_bench "$work/x"
  awk -F, 'NR > 1 && ($6 != 10 || ($1 != "forward" && $7 != 1) || ($1 == "forward" && $7 != 0)) {bad = 1}
    END {exit bad || NR != 4}' "$work/x/exploder.csv" || die "exploder bench: $(cat "$work/x/exploder.csv")"
  [ "$(wc -l < "$work/x/sizes.csv")" = 2 ] || die "sizes.csv: $(cat "$work/x/sizes.csv")"
  echo "ok: exploder bench (10 delivered per mode, 1 rewrap call in the group-secret and member-certs modes)"
else
  die "exploder binary missing: $BIN/exploder"
fi
gs_server_stop
# bench/kh-compare: this build against itself (the first with one
# event-loop thread), one short round of the token model at one
# connection, of the zero-cost token's CPU and of a new TLS connection per
# request (model64 is 1conn's code at 64 connections: left out for time).
"$top/bench/kh-compare" --rounds 1 --duration 1 --parts 1conn,cpu,newconn --build "$(dirname "$BIN")" \
  --out "$work/khcmp" "$BIN,threads=1" "$BIN" >/dev/null 2>"$work/khcmp.log" || die "kh-compare: $(tail -3 "$work/khcmp.log")"
awk -F, 'NR > 1 {rows++; if ($4 + 0 <= 0 || $NF != 0) bad = 1} END {exit bad || rows != 7}' "$work/khcmp/compare.csv" ||
  die "kh-compare: $(cat "$work/khcmp/compare.csv")"
echo "ok: kh-compare (p11rate and both builds at one connection, both builds' CPU per unwrap and with a handshake per request, no errors)"
echo "bench smoke: all passed"
