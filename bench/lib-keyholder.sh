# bench/lib-keyholder.sh: the figures of the key-holder split (issue 16),
# sourced by bench/run after lib-groupsrv.sh. Uses what bench/run defines:
# BIN, CONF, SOFTHSM, P11FAULT, NCPU, KEYS, out, results, duration, rounds,
# model_us, model_engines, baseline, load(), log(), die(), pids.
#
# kh_cpu_series     the server's own CPU per unwrap with a token that costs
#                   nothing (tests/p11fault GS_P11FAULT_ZERO_COST=1), per
#                   process, rounds interleaved with --baseline's server if
#                   given; then where that CPU goes (perf, strace -c)
# kh_ipc_series     bench/ipchop: the IPC hop alone
# kh_overload_series   the token model offered twice its capacity
#
# `groupsrv serve` is three processes (SECURITY.md, "Processes"): CPU and
# memory are summed over the supervisor and its children, and CPU is read
# from /proc/PID/stat (user + system of every thread, ended ones included).

serve_pids() {
  echo "$SERVER_PID"
  ps --ppid "$SERVER_PID" -o pid= 2>/dev/null | tr -d ' ' || true
}
# serve_cpu: one line per process: "pid comm cpu_seconds".
serve_cpu() {
  local p hz
  hz=$(getconf CLK_TCK)
  for p in $(serve_pids); do
    awk -v hz="$hz" -v pid="$p" '{c = $0; sub(/^[^(]*\(/, "", c); comm = c; sub(/\).*$/, "", comm)
      sub(/^.*\) /, ""); printf "%s %s %.2f\n", pid, comm, ($12 + $13) / hz}' "/proc/$p/stat" 2>/dev/null || true
  done
}
# serve_rss: "supervisor_kb keyholder_kb network_kb" (VmRSS).
serve_rss() {
  local sup kh net
  sup=$(awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status")
  kh=$(awk '/^VmRSS/ {print $2}' "/proc/$(pid_by_comm groupsrv-kh)/status")
  net=$(awk '/^VmRSS/ {print $2}' "/proc/$(pid_by_comm groupsrv-net)/status")
  echo "$sup,$kh,$net"
}
# net_mem: where the network process's memory is (/proc/PID/smaps), to
# tell a leak from malloc keeping what it freed: its VmRSS; the resident
# anonymous memory of the main malloc arena ([heap]) and of other
# anonymous mappings (the other threads' arenas, large mmapped blocks,
# TLS and thread stacks); how many glibc thread arenas there are (their
# heaps are mappings on a 64 MiB boundary); and its open descriptors.
net_mem_header() { echo "net_rss_kb,net_heap_kb,net_anon_kb,net_arenas,net_fds"; }
net_mem() {
  local p heap anon arenas
  p=$(pid_by_comm groupsrv-net)
  IFS=, read -r heap anon arenas < <(awk '
    /^[0-9a-f]+-[0-9a-f]+ / {kind = $6 == "[heap]" ? "heap" : (NF == 5 ? "anon" : "")
      # a glibc heap_info starts on a 64 MiB (HEAP_MAX_SIZE) boundary
      split($1, a, "-")
      if (kind == "anon" && $2 ~ /^rw/ && a[1] ~ /[048c]000000$/) arenas++
      next}
    /^Rss:/ {if (kind != "") r[kind] += $2}
    END {printf "%d,%d,%d\n", r["heap"], r["anon"], arenas}' "/proc/$p/smaps")
  echo "$(awk '/^VmRSS/ {print $2}' "/proc/$p/status"),$heap,$anon,$arenas,$(ls "/proc/$p/fd" | wc -l)"
}
# BENCH_MALLOC_STATS=1: glibc's malloc_stats() of the network process
# after each round (gdb calls it in the process; it prints to the
# server's log), into $out/overload-malloc-stats.txt: "in use bytes"
# against "system bytes" tells memory still allocated from memory malloc
# freed and kept.
net_malloc_stats() {
  [ "${BENCH_MALLOC_STATS:-0}" = 1 ] || return 0
  echo "== $1" >> "$GS_WORK/server.log"
  gdb -p "$(pid_by_comm groupsrv-net)" -batch -ex 'call (void) malloc_stats()' >/dev/null 2>&1 || true
  tac "$GS_WORK/server.log" | sed '/^== /q' | tac >> "$out/overload-malloc-stats.txt"
}
serve_rss_kb() {
  local p t=0 v
  for p in $(serve_pids); do
    v=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
pid_by_comm() { ps --ppid "$SERVER_PID" -o pid=,comm= | awk -v c="$1" '$2 == c {print $1; exit}'; }

# A config for the zero-cost token: the SoftHSM config with p11fault as the
# module; no key that an older server (--baseline) would not know.
kh_zero_conf() {
  sed -e "s|^module = .*|module = $P11FAULT|" "$CONF" > "$1"
}

# One measured point: CONTENDER ROUND. The server is running; CPU and the
# server's own unwrap count are read before and after 8 connections for
# $duration seconds.
kh_cpu_point() {
  local who=$1 r=$2 k0=${KEYS[0]} before after n0 n1
  before=$(serve_cpu)
  n0=$(gs_requests_served unwrap)
  load "$k0" 8 keepalive --duration "$duration" --variant "zero-cost-$who"
  n1=$(gs_requests_served unwrap)
  after=$(serve_cpu)
  # Per process: the supervisor is `groupsrv`, the children groupsrv-kh and
  # groupsrv-net; a one-process server has only the first.
  awk -v who="$who" -v r="$r" -v n=$((n1 - n0)) -v client="$(tail -1 "$results" | cut -d, -f12)" '
    NR == FNR {b[$1] = $3; next}
    {d = $3 - b[$1]; tot += d
     if ($2 == "groupsrv-kh") kh += d; else if ($2 == "groupsrv-net") net += d; else sup += d}
    END {if (n > 0) printf "%s,%d,%d,%.2f,%.1f,%.1f,%.1f,%.1f,%.1f\n", who, r, n, tot, tot * 1e6 / n,
         sup * 1e6 / n, kh * 1e6 / n, net * 1e6 / n, client * 1e6 / n}' \
    <(echo "$before") <(echo "$after") >> "$out/cpu.csv"
}

kh_cpu_series() {
  local r who bindir conf=$work/groupsrv-zero.conf saved=$CONF
  kh_zero_conf "$conf"
  CONF=$conf
  export GS_P11FAULT_TARGET=$SOFTHSM GS_P11FAULT_ZERO_COST=1
  echo "contender,round,unwraps,server_cpu_s,us_per_unwrap,supervisor_us,keyholder_us,network_us,client_us" \
    > "$out/cpu.csv"
  local contenders=("split:$BIN")
  [ -n "$baseline" ] && contenders+=("baseline:$baseline")
  for r in $(seq 1 "$rounds"); do
    for who in "${contenders[@]}"; do
      bindir=${who#*:}
      who=${who%%:*}
      log "zero-cost token: server CPU per unwrap, $who, round $r/$rounds"
      GS_SERVE_BIN=$bindir/groupsrv gs_server_start
      load "${KEYS[0]}" 8 keepalive --duration 1 --variant warmup
      kh_cpu_point "$who" "$r"
      gs_server_stop
    done
  done
  # Where the CPU goes, this server only: a flat profile (self time by
  # library and function) of each child, then their system calls per unwrap.
  GS_SERVE_BIN=$BIN/groupsrv gs_server_start
  local kh net n0 n1 p
  kh=$(pid_by_comm groupsrv-kh)
  net=$(pid_by_comm groupsrv-net)
  if command -v perf >/dev/null && perf record -F 99 -o "$work/perf-probe" -- true >/dev/null 2>&1; then
    log "zero-cost token: perf profile of the key holder ($kh) and the network process ($net)"
    load "${KEYS[0]}" 8 keepalive --duration "$((duration + 3))" --variant profiled >/dev/null &
    p=$!
    sleep 1
    perf record -F 999 -p "$kh" -o "$work/perf-kh.data" -- sleep "$duration" >/dev/null 2>&1 &
    perf record -F 999 -p "$net" -o "$work/perf-net.data" -- sleep "$duration" >/dev/null 2>&1
    wait "$p" || true
    sleep 0.5
    local f
    for f in kh net; do
      { perf report -i "$work/perf-$f.data" --no-children --sort dso 2>/dev/null | grep -E '^ +[0-9]' | head -12
        echo "--"
        perf report -i "$work/perf-$f.data" --no-children --sort dso,sym 2>/dev/null | grep -E '^ +[0-9]' | head -40
      } > "$out/profile-$f.txt" || true
    done
  else
    echo "no perf profile: perf is missing or may not record here" >> "$out/notes.txt"
  fi
  if command -v strace >/dev/null; then
    log "zero-cost token: system calls per unwrap (strace -c)"
    timeout 120 strace -c -f -p "$kh" -o "$out/syscalls-kh.txt" 2>/dev/null &
    local s1=$!
    timeout 120 strace -c -f -p "$net" -o "$out/syscalls-net.txt" 2>/dev/null &
    local s2=$!
    sleep 1
    n0=$(gs_requests_served unwrap)
    "$BIN/unwrap-load" --url "$URL_BASE/v1/groups/bench-${KEYS[0]}/unwrap" --cert "$CLIENT_CERT" \
      --key "$CLIENT_KEY" --cacert "$CA_CERT" --ri "$work/ri-${KEYS[0]}.der" -c 8 --count 2000 --warmup 0 \
      --name traced >/dev/null 2>>"$out/unwrap-load.log" || true
    n1=$(gs_requests_served unwrap)
    kill -INT "$s1" "$s2" 2>/dev/null || true
    wait "$s1" "$s2" 2>/dev/null || true
    echo "unwraps=$((n1 - n0))" > "$out/syscalls-unwraps.txt"
  fi
  gs_server_stop
  unset GS_P11FAULT_TARGET GS_P11FAULT_ZERO_COST
  CONF=$saved
}

kh_ipc_series() {
  local k
  for k in 1 8; do
    log "ipchop: the IPC hop alone, $k outstanding"
    timeout 300 "$BIN/ipchop" --count 50000 --outstanding "$k" 2>>"$out/unwrap-load.log" | hdr_strip >> "$results" ||
      tolerate3 "ipchop $k"
  done
}

# The token model offered twice what it can do, open loop on 256
# connections, with [server] max_queue_ms = 100: what is admitted keeps a
# bounded latency, the rest is refused at once with 503 and Retry-After,
# and the processes' memory stays where it was.
kh_overload_series() {
  local k0=${KEYS[0]} cap offered conf=$work/groupsrv-overload.conf saved=$CONF i
  cap=$((model_engines * 1000000 / model_us))
  offered=$((cap * 2))
  sed -e "s/^\[server\]$/[server]\nmax_queue_ms = 100/" "$CONF" > "$conf"
  CONF=$conf
  gs_server_start
  echo "phase,supervisor_kb,keyholder_kb,network_kb" > "$out/overload-rss.csv"
  echo "phase,$(net_mem_header)" > "$out/overload-net-mem.csv"
  load "$k0" 8 keepalive --duration 1 --variant warmup
  echo "before,$(serve_rss)" >> "$out/overload-rss.csv"
  echo "before,$(net_mem)" >> "$out/overload-net-mem.csv"
  net_malloc_stats before
  for i in $(seq 1 "${overload_rounds:-3}"); do
    log "overload: $offered/s offered to a token that does $cap/s (round $i of ${overload_rounds:-3})"
    load "$k0" 256 keepalive --duration "$((duration * 2))" --rate "$offered" --variant "overload-$i" \
      --shed-out "$out/shed-$i.txt"
    echo "after-$i,$(serve_rss)" >> "$out/overload-rss.csv"
    echo "after-$i,$(net_mem)" >> "$out/overload-net-mem.csv"
    net_malloc_stats "after-$i"
  done
  gs_server_stop
  CONF=$saved
}
