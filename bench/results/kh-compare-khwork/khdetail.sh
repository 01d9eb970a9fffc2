#!/usr/bin/env bash
# khdetail.sh OUT BIN...: where a lone request's time goes inside the key holder, at one
# connection on the token model: uprobes on the key holder's own functions (each hit costs
# about 5-10 us on this VM: compare builds side by side, never read the absolute figures);
# prints the median offset of each event from kh_job_run (khdetail-report.py). Root and perf.
set -euo pipefail
top=$(cd "$(dirname "$0")/../../.." && pwd)
out=$1; shift
dirs=("$@")
duration=${DURATION:-5}
rounds=${ROUNDS:-2}
bdir=$top/build-bench-run
BIN=$bdir/bin
P11FAULT=$bdir/lib/libp11fault.so
SOFTHSM=$(sed -n 's/^SOFTHSM2_MODULE:FILEPATH=//p' "$bdir/CMakeCache.txt")
mkdir -p "$out"; NCPU=$(nproc)
work=$(mktemp -d /tmp/groupsrv-khdet.XXXXXX)
cleanup() { gs_server_stop 2>/dev/null || true; perf probe -q -d 'khdet:*' >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
source "$top/bench/lib-groupsrv.sh"
(cd "$top" && ./scripts/provision-softhsm "$work/token" groupsrv >/dev/null)
export SOFTHSM2_CONF=$work/token/softhsm2.conf
PIN_FILE=$work/token/user-pin
gs_setup "$work"
gs_group_create bench-rsa2048 rsa:2048
"$BIN/mkri" --kt oaep-sha1 --cert "$work/group-rsa2048.pem" --out "$work/ri-rsa2048.der"
sed -e "s|^module = .*|module = $P11FAULT|" -e "s|^max_sessions = .*|max_sessions = 7\nworkers = 5|" "$CONF" > "$work/model.conf"
uload() { local c=$1; shift
  timeout $((duration * 3 + 120)) "$BIN/unwrap-load" --url "$URL_BASE/v1/groups/bench-rsa2048/unwrap" \
    --cert "$CLIENT_CERT" --key "$CLIENT_KEY" --cacert "$CA_CERT" --ri "$work/ri-rsa2048.der" \
    -c "$c" --name rsa2048 "$@" 2>>"$work/unwrap-load.log" | grep -v '^tool,' || true; }
child() { { ps --ppid "$SERVER_PID" -o pid=,comm= || true; } | awk -v c="$1" '$2 == c {print $1; exit}'; }
export GS_P11FAULT_TARGET=$SOFTHSM GS_P11FAULT_SERVICE_US=5000 GS_P11FAULT_ENGINES=4
perf probe -q -d 'khdet:*' >/dev/null 2>&1 || true
perf probe -q -x "$P11FAULT" -a khdet:di=fw_C_DecryptInit -a 'khdet:dr=fw_C_Decrypt%return'
echo "who,round,event,tid,time" > "$out/detail.csv"
for i in "${!dirs[@]}"; do
  mkdir -p "$work/bin-$i"; cp -a "${dirs[$i]}/." "$work/bin-$i/"
  b=$work/bin-$i/groupsrv
  for spec in kj=kh_job_run rb=sq_read_begin rbr="sq_read_begin%return" cse=sq_change_stamp cs='gs_store_change_stamp%return' gg='gcache_group%return' mg=gs_store_member_get \
      mr='gs_store_member_get%return' rt='ratelimit_take%return' re='gs_store_read_end%return' hd=hsm_decrypt_content_key \
      hr='hsm_decrypt_content_key%return' aw=audit_write ar='audit_write%return' ie=ipc_end ier="ipc_end%return" jr="kh_job_run%return" \
      wd=audit_wait_durable lc='lock_current_locked%return' wb=write_batch_flocked wbr='write_batch_flocked%return' kw=ipc_ev_write; do
    perf probe -q -x "$b" -a "khdet:b${i}_${spec}" || echo "probe $spec failed" >&2
  done
done
for r in $(seq 1 "$rounds"); do
  for i in "${!dirs[@]}"; do
    echo "round $r build $i" >&2
    CONF=$work/model.conf GS_SERVE_BIN=$work/bin-$i/groupsrv gs_server_start
    uload 1 --duration 1 --variant warmup >/dev/null
    kh=$(child groupsrv-kh)
    uload 1 --duration $((duration + 2)) >/dev/null &
    p=$!
    sleep 1
    perf record -q -e 'khdet:*' -e syscalls:sys_enter_fdatasync -e syscalls:sys_exit_fdatasync \
      -p "$kh" -o "$work/d.data" -- sleep "$duration" >/dev/null 2>&1 || true
    wait "$p" || true
    perf script -i "$work/d.data" -F tid,time,event 2>/dev/null |
      awk -v w="$i" -v r="$r" '{e = $3; sub(/:$/, "", e); sub(/^.*:/, "", e); sub(/^b[0-9]+_/, "", e)
        t = $2; sub(/:$/, "", t); print w "," r "," e "," $1 "," t}' >> "$out/detail.csv"
    gs_server_stop
  done
done
python3 "$(dirname "$0")/khdetail-report.py" "$out/detail.csv" | tee "$out/detail.txt"
