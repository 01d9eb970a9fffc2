#!/usr/bin/env bash
# server-keyholder.sh BIN SRC: the process split of `groupsrv serve` on a
# running server (SECURITY.md, "Processes"):
#  - /proc: the network process maps no PKCS#11 module (nor p11-kit, nor
#    SQLite, nor libpq), runs under seccomp (Seccomp: 2) as the unprivileged user with
#    no new privileges, is not dumpable and has no core limit; the PIN's
#    bytes are nowhere in its memory (and are in the key holder's, which
#    shows the scan works) nor in the supervisor's, which maps no PKCS#11
#    module; the key holder has no listening socket; none of the three is
#    dumpable or makes core files;
#  - the key holder driven directly over its link with malformed and
#    hostile frames (tests/tools/khdrive.c): each refused, the non-member
#    audited, the key holder serving on; and as a compromised network
#    process: admin operations, rewrap and group creation for a plain
#    member, secret keys and membership certificates for a non-member,
#    the rate limit and the suspension (also with the identity in upper
#    case) all refused by the key holder; a link flooded with requests
#    whose answers are not read stops being read (bounded memory), and
#    serves again once they are;
#  - a key holder that hangs (SIGSTOP): 503 with Retry-After after
#    [server] timeout, not a request that waits for ever;
#  - kill -9 of the network process and of the key holder, each under
#    load: recovery without an operator, errors only for requests in flight
#    (connection reset) or during the key holder's gap (503
#    token_unavailable with Retry-After), the audit chain verifies, every
#    200 answer has its audit record, no zombies; a suspended member is
#    still suspended by the restarted key holder.
set -euo pipefail
BIN=$1 SRC=$2
# /metrics for anyone: the network process answers it without the key holder
SRV_METRICS=any
. "$SRC/tests/integration/server-lib.sh"
start_server
url=$base/v1/groups/eng/unwrap
printf '{"recipient_info":"%s"}' "$(b64 "$work/ri.der")" > "$work/req-tls.json"
expect_status 200 "" "unwrap through both processes" -- c alice --data-binary @"$work/req-tls.json" "$url"
expect_status 200 "" "discovery" -- anon "$base/v1/groups/eng"
# A member's record replaced by PUT with a certificate for another
# address: refused, and the old record stays (the key holder swaps the
# records in one transaction, after checking the new one).
/usr/bin/python3 -c 'import json,sys; print(json.dumps({"role":"member","certificate":open(sys.argv[1]).read()}))' \
  "$certs/bob@example.org.pem" > "$work/put-wrong-cert.json"
expect_status 400 bad_request "PUT alice with bob's certificate" -- c admin -X PUT -H 'Content-Type: application/json' \
  --data-binary @"$work/put-wrong-cert.json" "$base/v1/groups/eng/members/alice@example.org"
expect_status 200 "" "alice is still a member after the refused PUT" -- c admin "$base/v1/groups/eng/members/alice@example.org"
grep -q '"has_certificate":true' "$work/body" || fail "alice's certificate record changed: $(head -c 300 "$work/body")"
expect_status 200 "" "alice still unwraps after the refused PUT" -- c alice --data-binary @"$work/req-tls.json" "$url"

child() { ps --ppid "$srv_pid" -o pid=,comm= | awk -v c="$1" '$2 == c {print $1}'; }
net=$(child groupsrv-net)
kh=$(child groupsrv-kh)
[ -n "$net" ] && [ -n "$kh" ] || fail "children of the supervisor: $(ps --ppid "$srv_pid" -o pid=,comm=)"

# ---- the sandbox, from /proc ----
mods='softhsm|p11-kit|p11fault|pkcs11|opensc|sqlite|libpq'
grep -Eq "$mods" "/proc/$kh/maps" || fail "the key holder maps no token module (is $kh the key holder?)"
if grep -E "$mods" "/proc/$net/maps"; then fail "the network process maps a PKCS#11 module or the database"; fi
ok "network process: no PKCS#11 module, no p11-kit, no SQLite, no libpq in /proc/$net/maps"
grep -Eq '^Seccomp:[[:space:]]+2$' "/proc/$net/status" || fail "network process: $(grep Seccomp "/proc/$net/status")"
grep -Eq '^NoNewPrivs:[[:space:]]+1$' "/proc/$net/status" || fail "network process: no NoNewPrivs"
ok "network process: Seccomp: 2 (filter), NoNewPrivs: 1"
if [ "$(id -u)" = 0 ]; then
  [ "$(awk '/^Uid:/ {print $2 $3 $4 $5}' "/proc/$net/status")" = "$(id -u nobody)$(id -u nobody)$(id -u nobody)$(id -u nobody)" ] ||
    fail "network process uid: $(grep Uid "/proc/$net/status")"
  [ "$(awk '/^CapEff:/ {print $2}' "/proc/$net/status")" = 0000000000000000 ] || fail "network process keeps capabilities"
  # A process that is not dumpable has its /proc files owned by root.
  [ "$(stat -c %u "/proc/$net/status")" = 0 ] || fail "network process is dumpable"
  ok "network process: runs as nobody, no capabilities, not dumpable"
fi
for p in "$net" "$kh" "$srv_pid"; do
  grep -Eq '^Max core file size +0 +0 ' "/proc/$p/limits" || fail "core files allowed for $p: $(grep core "/proc/$p/limits")"
done
ok "all three: RLIMIT_CORE 0"
# The supervisor never loads a PKCS#11 module (it links p11-kit, as the
# groupsrv program does, but every key holder is forked from it before
# C_Initialize and must find no module there).
if grep -E 'softhsm|p11fault|pkcs11|opensc' "/proc/$srv_pid/maps"; then fail "the supervisor maps a PKCS#11 module"; fi
ok "supervisor: no PKCS#11 module in /proc/$srv_pid/maps"
# The PIN: in the key holder (it logs in again after token loss), nowhere
# in the network process, after it served requests.
scan() { /usr/bin/python3 "$SRC/tests/lib/memscan.py" "$1" --file "$work/token/user-pin"; }
[ "$(scan "$kh")" -gt 0 ] || fail "control: the PIN should be in the key holder's memory"
[ "$(scan "$net")" = 0 ] || fail "the PIN's bytes are in the network process's memory"
[ "$(scan "$srv_pid")" = 0 ] || fail "the PIN's bytes are in the supervisor's memory (it never reads the PIN)"
ok "the PIN is in the key holder's memory and nowhere in the network process's or the supervisor's"
# Listening sockets: every TCP socket in LISTEN state, by inode.
listening=$(awk '$4 == "0A" {print $10}' /proc/net/tcp /proc/net/tcp6 | sort -u)
socks() { ls -l "/proc/$1/fd" 2>/dev/null | sed -n 's/.*socket:\[\([0-9]*\)\]/\1/p' | sort -u; }
[ -n "$(comm -12 <(socks "$net") <(echo "$listening"))" ] || fail "control: the network process should hold the listening sockets"
[ -z "$(comm -12 <(socks "$kh") <(echo "$listening"))" ] || fail "the key holder holds a listening socket"
ok "the key holder has no listening socket (the network process has them)"

# ---- the key holder over its link, directly ----
# Its own audit log: one appender per file (the running server's key
# holder keeps its own chain).
# A rate limit and a failed-unwrap cap for its attacks on them.
sed -e "s|^path = $work/audit.jsonl|path = $work/audit-kh.jsonl|" \
  -e 's|^rate_limit = .*|rate_limit = 1\nrate_burst = 5\nmax_failed_unwraps = 3|' "$conf" > "$work/kh.conf"
"$BIN/khdrive" "$work/kh.conf" "$work/ri.der" alice@example.org "$certs/alice@example.org.pem" carol@example.org \
  mallory@example.org "$certs/mallory@example.org.pem" > "$work/khdrive.out" 2>&1 || { cat "$work/khdrive.out"; fail "khdrive"; }
cat "$work/khdrive.out"
grep '"identity":"carol@example.org"' "$work/audit-kh.jsonl" | has_line '"outcome":"not_a_member"' ||
  fail "the key holder did not audit the non-member it was told about"
"$BIN/groupsrv" -c "$conf" audit verify --file "$work/audit-kh.jsonl" >/dev/null || fail "the driven key holder's audit chain"
grep '"identity":"mallory@example.org"' "$work/audit-kh.jsonl" | has_line '"outcome":"too_many_failed_unwraps"' ||
  fail "the key holder did not audit the suspension"
# An identity that is not UTF-8 (khdrive: "mall\xf6ry@example.org"):
# its refusal recorded with the byte escaped, in a chain that verifies.
grep -F '"identity":"mall\\xf6ry@example.org"' "$work/audit-kh.jsonl" | has_line '"outcome":"not_a_member"' ||
  fail "the key holder did not audit the identity that is not UTF-8"
ok "the refusal for a non-member claimed over IPC is audited (an identity not UTF-8 too), and so is the suspension"

# ---- a key holder that hangs (SIGSTOP): 503 after [server] timeout ----
# Not restarted (it did not end), but the network process does not wait
# for it for ever: each request gets 503 token_unavailable with
# Retry-After once the timeout (10 s in this config) is over, and the
# same key holder serves again once it runs.
# /metrics meanwhile (in the same wait): the key holder's counters are left
# out, not 0, which Prometheus would take for a counter reset.
anon "$base/metrics" > "$work/m-up.txt"
promcheck() { /usr/bin/python3 "$SRC/tests/lib/promcheck.py" "$@"; }
promcheck "$work/m-up.txt" --documented "$SRC/docs/api.md" || fail "/metrics: $(cat "$work/m-up.txt")"
kill -STOP "$kh"
anon -m 60 "$base/metrics" > "$work/m-down.txt" &
m_pid=$!
hdrs=$(c alice -m 60 -D - -o "$work/body" -w 'status=%{http_code}\n' --data-binary @"$work/req-tls.json" "$url" || true)
wait "$m_pid" || { kill -CONT "$kh"; fail "/metrics while the key holder is stopped"; }
kill -CONT "$kh"
promcheck "$work/m-down.txt" || fail "/metrics while the key holder is stopped: $(cat "$work/m-down.txt")"
grep -qx 'groupsrv_token_up 0' "$work/m-down.txt" || fail "token_up while the key holder is stopped: $(cat "$work/m-down.txt")"
if grep -E '^groupsrv_(token_errors_total|unwrap_duration_seconds)' "$work/m-down.txt"; then
  fail "the key holder's counters shown while it does not answer (a drop to 0 is a counter reset)"
fi
anon "$base/metrics" > "$work/m-back.txt"
promcheck "$work/m-back.txt" --before "$work/m-up.txt" || fail "/metrics once the key holder runs: $(cat "$work/m-back.txt")"
ok "/metrics while the key holder is stopped: its counters left out, not 0; back with their values after"
echo "$hdrs" | grep -q '^status=503$' || fail "unwrap from a stopped key holder: $(echo "$hdrs" | tail -n 1) $(head -c 200 "$work/body")"
grep -q '"code":"token_unavailable"' "$work/body" || fail "stopped key holder: code $(head -c 200 "$work/body")"
echo "$hdrs" | grep -qi '^retry-after: [0-9]' || fail "stopped key holder: no Retry-After"
[ "$(ps -o pid= -p "$kh" | tr -d ' ')" = "$kh" ] || fail "the stopped key holder was replaced"
expect_status 200 "" "unwrap once the stopped key holder runs again" -- c alice --data-binary @"$work/req-tls.json" "$url"
ok "a stopped key holder: 503 token_unavailable with Retry-After after the timeout, then serving again"

# ---- a suspension outlives the key holder ----
# mallory is suspended after max_failed_unwraps (20) failed unwraps; the
# key holder killed below keeps its counters in memory the supervisor
# shares with the next one, so mallory is still suspended after it.
head -c 256 /dev/urandom > "$work/garbage.bin"
printf '{"encrypted_key":"%s","algorithm":"RSA-OAEP"}' "$(b64 "$work/garbage.bin")" > "$work/bad.json"
for i in $(seq 1 20); do
  got=$(status c mallory --data-binary @"$work/bad.json" "$url")
  [ "$got" = 400 ] || fail "mallory's failed unwrap $i: $got"
done
expect_status 429 suspended "mallory suspended after 20 failed unwraps" -- c mallory --data-binary @"$work/req-tls.json" "$url"

# ---- kill -9 under load ----
waitfor() { wait_until 30 "$@"; } # waitfor DESC CMD...: up to 30 s
healthy() { [ "$(status anon "$base/healthz")" = 200 ]; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
UC_CERT="$certs/alice@example.org.pem" UC_KEY="$certs/alice@example.org.key" UC_CACERT="$certs/tca.pem" \
  "$BIN/unwrapclient" soak "$url" "$work/req-tls.json" 4 16 "$work/soak.log" &
soak=$!
t0=$(now_ms)
sleep 3
t_net_kill=$(( $(now_ms) - t0 ))
# The file edited meanwhile (more threads) must not reach the restarted
# network process: it gets the configuration serve started with, whose
# links the supervisor made (it failed to start for good before).
sed -i 's/^threads = .*/threads = 6/' "$conf"
kill -9 "$net"
waitfor "no new network process" bash -c "n=\$(ps --ppid $srv_pid -o pid=,comm= | awk '\$2==\"groupsrv-net\"{print \$1}'); [ -n \"\$n\" ] && [ \"\$n\" != $net ]"
waitfor "no service after the network process was killed" healthy
t_net_back=$(( $(now_ms) - t0 ))
net2=$(child groupsrv-net)
ok "network process killed (pid $net): restarted as $net2, serving again after $(( t_net_back - t_net_kill )) ms"
sleep 2
t_kh_kill=$(( $(now_ms) - t0 ))
kill -9 "$kh"
waitfor "no new key holder" bash -c "k=\$(ps --ppid $srv_pid -o pid=,comm= | awk '\$2==\"groupsrv-kh\"{print \$1}'); [ -n \"\$k\" ] && [ \"\$k\" != $kh ]"
waitfor "no service after the key holder was killed" healthy
t_kh_back=$(( $(now_ms) - t0 ))
kh2=$(child groupsrv-kh)
ok "key holder killed (pid $kh): restarted as $kh2, serving again after $(( t_kh_back - t_kh_kill )) ms"
expect_status 429 suspended "mallory still suspended by the restarted key holder" -- c mallory --data-binary @"$work/req-tls.json" "$url"
# forked again from inside the supervisor's event loop, not at start: no
# listening socket either
[ -z "$(comm -12 <(socks "$kh2") <(echo "$listening"))" ] || fail "the restarted key holder holds a listening socket"
grep -Eq '^Max core file size +0 +0 ' "/proc/$kh2/limits" || fail "the restarted key holder may dump core"
ok "the restarted key holder has no listening socket and no core files"
wait "$soak" || fail "the load client"
/usr/bin/python3 - "$work/soak.log" "$work/audit.jsonl" "$t_net_kill" "$t_net_back" "$t_kh_kill" "$t_kh_back" <<'PY' ||
import json, sys
log, audit = sys.argv[1], sys.argv[2]
nk, nb, kk, kb = (int(x) for x in sys.argv[3:7])
slack = 1500  # ms: the test's clock and the client's are read at slightly different moments
rows = [l.split() for l in open(log)]
oks = [r for r in rows if r[1] == "200"]
bad = []
for end, status, code, rid, retry in rows:
    end = int(end)
    if status == "200":
        continue
    if status == "0" and nk - slack <= end <= nb + slack:
        continue  # in flight when the network process died: the connection broke
    if status == "503" and code == "token_unavailable" and retry != "-" and kk - slack <= end <= kb + slack:
        continue  # the key holder's gap
    bad.append((end, status, code, retry))
after_net = [r for r in oks if int(r[0]) > nb]
after_kh = [r for r in oks if int(r[0]) > kb]
ids = set()
for line in open(audit):
    rec = json.loads(line)
    if rec.get("action") == "unwrap" and rec.get("outcome") == "ok" and "request_id" in rec:
        ids.add(rec["request_id"])
missing = [r[3] for r in oks if r[3] not in ids]
print("requests %d, 200 %d, other %d outside the gaps, 200 after each restart %d/%d, 200 without audit record %d"
      % (len(rows), len(oks), len(bad), len(after_net), len(after_kh), len(missing)))
if bad[:5]:
    print("unexpected answers:", bad[:5])
sys.exit(0 if not bad and after_net and after_kh and not missing and len(oks) > 20 else 1)
PY
  fail "answers under kill -9 (see above)"
ok "kill -9 under load: errors only in flight or in the key holder's gap; every 200 audited"
"$BIN/groupsrv" -c "$conf" audit verify >/dev/null || fail "audit chain after kill -9"
ok "the audit chain verifies after both kills"
[ "$(ps --ppid "$srv_pid" -o stat= | grep -c Z || true)" = 0 ] || fail "zombies: $(ps --ppid "$srv_pid" -o pid=,stat=,comm=)"
[ "$(ps --ppid "$srv_pid" -o pid= | wc -l)" = 2 ] || fail "children: $(ps --ppid "$srv_pid" -o pid=,comm=)"
ok "no zombies: exactly the two children"
# The log as a log shipper reads it, the restarted key holder's lines
# too (libevent wrote "[warn] Added a signal to event base ..." there: the
# key holder forked from inside the supervisor's event loop).
if grep 'Added a signal' "$work/server.log"; then fail "libevent's signal warning after the key holder's restart"; fi
/usr/bin/python3 "$SRC/tests/lib/logcheck.py" "$work/server.log" || fail "the server log is not one record per line"
ok "server log after both restarts: one key=value record per line, no libevent warning"
grep -Eq '^Seccomp:[[:space:]]+2$' "/proc/$net2/status" || fail "the restarted network process is not sandboxed"
ok "the restarted network process is sandboxed too"

# ---- a key holder killed in the middle of a member change ----
# Its change is committed before its outcome can be recorded, so it
# first writes a record of the change with outcome "started", durable
# before anything is changed: killed anywhere, a change made has a
# record. Killed (gdb, at its first audit_write) where the record was
# written after the commit, the member stayed added without any record.
gdb_kill_at_audit() { # METHOD EMAIL: 0 when the key holder was killed so
  local kh g
  kh=$(child groupsrv-kh)
  rm -f "$work/gdb.out"
  (ulimit -c 0; exec gdb -p "$kh" -batch -nx -q -ex 'break *audit_write' -ex 'echo ATTACHED\n' -ex continue \
    -ex 'signal SIGKILL') >"$work/gdb.out" 2>&1 & # no core file if gdb itself falls over
  g=$!
  for _ in $(seq 1 300); do grep -q ATTACHED "$work/gdb.out" 2>/dev/null && break; kill -0 "$g" 2>/dev/null || break; sleep 0.1; done
  grep -q ATTACHED "$work/gdb.out" 2>/dev/null || { kill "$g" 2>/dev/null; wait "$g"; return 1; }
  c admin -X "$1" -H 'Content-Type: application/json' --data-binary '{"role":"member"}' -o /dev/null \
    "$base/v1/groups/eng/members/$2" 2>/dev/null &
  wait "$g" || true
  kill -9 "$kh" 2>/dev/null || true # gdb lost it (it detaches at times): killed here, later in the change
  waitfor "no new key holder after the kill in a member change" \
    bash -c "k=\$(ps --ppid $srv_pid -o pid=,comm= | awk '\$2==\"groupsrv-kh\"{print \$1}'); [ -n \"\$k\" ] && [ \"\$k\" != $kh ]"
  waitfor "no service after the kill in a member change" healthy
}
# scripts/setup installs gdb: missing is a failure; a machine that forbids
# ptrace (a container without CAP_SYS_PTRACE) is told, not failed.
command -v gdb >/dev/null || fail "gdb missing (scripts/setup installs it)"
if gdb_kill_at_audit PUT zed@example.org; then
  if "$BIN/groupsrv" -c "$conf" member list eng | has_line '^zed@example.org '; then
    grep '"action":"member-add"' "$work/audit.jsonl" | has_line '"member":"zed@example.org"' ||
      fail "a member added by a key holder killed in the change has no audit record"
  fi
  ok "key holder killed at a member change's first audit record: no change without a record"
else
  echo "note: gdb cannot attach here (ptrace refused): the kill inside a member change is not tried"
fi
# In order: "started" durable before the change, then the outcome.
expect_status 201 "" "PUT yve" -- c admin -X PUT -H 'Content-Type: application/json' --data-binary '{"role":"member"}' \
  "$base/v1/groups/eng/members/yve@example.org"
[ "$(grep '"member":"yve@example.org"' "$work/audit.jsonl" | grep -o '"outcome":"[a-z]*"' | paste -sd,)" = \
  '"outcome":"started","outcome":"ok"' ] || fail "yve's records: $(grep yve "$work/audit.jsonl")"
"$BIN/groupsrv" -c "$conf" audit verify >/dev/null || fail "audit chain after the kill in a member change"
ok "a member change: a record with outcome started, then its outcome; the chain verifies"

# ---- an answer made for a network process that has been replaced ----
# A worker takes its job's link, then sends on it. Should the network
# process be killed and its successor's link opened in the same slot in
# between (a worker descheduled there; here gdb holds it while the other
# threads run), the answer went to the new process, under a cookie of
# the old one's numbering, which the new one uses too: seen at log_level
# debug as 'late answer from the key holder dropped cookie=2', or taken
# as the answer to its own call of that cookie. The key holder now sends
# an answer only on the link as it was when its frame came. Both ways an
# answer leaves: link_send (no audit record: a worker sends it) and
# finish_batch (answers held for their audit records, sent by the
# syncer or a worker once durable). The thread is held until the new
# network process serves (a file tells it), not for a fixed time that a
# slow restart would outlast.
hold_answer() { # DESC LOCATION CONDITION CMD...: 0 tried, 1 gdb cannot attach
  local desc=$1 bp=$2 cond=$3 g
  shift 3
  kh=$(child groupsrv-kh)
  net=$(child groupsrv-net)
  # A fresh gdb.out: the last call's holds ATTACHED and HIT, and the
  # background gdb's redirection may truncate it only after the waits below
  # have read the old one (the request then ran before the breakpoint).
  rm -f "$work/gdb-go" "$work/gdb.out"
  (ulimit -c 0; HOLD_PID=$kh HOLD_BP=$bp HOLD_COND=$cond HOLD_GO=$work/gdb-go \
    exec gdb -batch -nx -q -x "$SRC/tests/integration/gdb-hold.py") > "$work/gdb.out" 2>&1 &
  g=$!
  bg_pids="$bg_pids $g" # a failure below: cleanup ends gdb (it detaches) before it stops the server
  for _ in $(seq 1 300); do grep -q ATTACHED "$work/gdb.out" 2>/dev/null && break; kill -0 "$g" 2>/dev/null || break; sleep 0.1; done
  if ! grep -q ATTACHED "$work/gdb.out" 2>/dev/null; then
    kill "$g" 2>/dev/null || true
    wait "$g" 2>/dev/null || true
    return 1
  fi
  mark=$(wc -c < "$work/server.log")
  "$@" >/dev/null 2>&1 & # its answer is held by gdb
  for _ in $(seq 1 100); do grep -q HIT "$work/gdb.out" && break; sleep 0.1; done
  grep -q HIT "$work/gdb.out" || { kill "$g" 2>/dev/null; wait "$g" 2>/dev/null; cat "$work/gdb.out"; fail "gdb: $desc: the answer never reached $bp"; }
  kill -9 "$net"
  waitfor "$desc: no new network process" bash -c "n=\$(ps --ppid $srv_pid -o pid=,comm= | awk '\$2==\"groupsrv-net\"{print \$1}'); [ -n \"\$n\" ] && [ \"\$n\" != $net ]"
  waitfor "$desc: no service from the new network process" healthy
  touch "$work/gdb-go"
  wait "$g" || true
  waitfor "$desc: the answer for the killed network process was not withheld from its successor" \
    bash -c "tail -c +$((mark + 1)) '$work/server.log' | grep -q 'answer dropped: the network process it was for has been replaced'"
  waitfor "$desc: no service after the network process was replaced" healthy
  return 0
}
if command -v gdb >/dev/null; then
  if hold_answer "an answer sent by its worker" link_send '$_thread != 1' anon -m 20 -o /dev/null "$base/v1/groups/nosuchgroup" &&
    hold_answer "an answer held for its audit record" finish_batch 'list != 0' \
      c alice -m 20 -o /dev/null --data-binary @"$work/req-tls.json" "$url"; then
    ok "an answer for a network process replaced meanwhile is dropped, not sent to its successor (sent by its worker, or held for its audit record)"
  else
    echo "note: gdb cannot attach here (ptrace refused): the answer for a replaced network process is not tried"
  fi
  net2=$(child groupsrv-net)
fi

# ---- a network process that stops reading its control channel ----
# (stopped here; compromised, it would just not read.) A SIGHUP's TLS
# files, more than the channel holds (a client CA file of 4 MB), cannot
# all be sent: the supervisor waited for ever in sendmsg, frozen (no
# restarts, no SIGTERM). Now it gives up after 10 s, and since part of a
# frame may be in the channel, kills that process and starts a new one,
# which reads the files at its start; the key holder had its SIGHUP first.
cp "$certs/clients.pem" "$work/clients.pem.orig"
{ cat "$work/clients.pem.orig"
  awk 'BEGIN { for (i = 0; i < 50000; i++) print "# padding: text between PEM blocks is skipped ........................" }'
} > "$certs/clients.pem"
hups=$(grep -c 'PIN source read again' "$work/server.log" || true)
kill -STOP "$net2"
kill -HUP "$srv_pid"
waitfor "the supervisor did not replace a network process that stopped reading its control channel" \
  bash -c "n=\$(ps --ppid $srv_pid -o pid=,comm= | awk '\$2==\"groupsrv-net\"{print \$1}'); [ -n \"\$n\" ] && [ \"\$n\" != $net2 ]"
kill -CONT "$net2" 2>/dev/null || true
waitfor "no service from the network process started instead" healthy
[ "$(grep -c 'PIN source read again' "$work/server.log")" -gt "$hups" ] || fail "the key holder did not get the SIGHUP"
grep -q 'does not take its control frames' "$work/server.log" || fail "no log line for the network process replaced"
# that line too is one record (what= once had "TLS reload" unquoted)
grep 'does not take its control frames' "$work/server.log" > "$work/ctl.log"
/usr/bin/python3 "$SRC/tests/lib/logcheck.py" "$work/ctl.log" || fail "the network process replaced: not one record"
net2=$(child groupsrv-net)
expect_status 200 "" "unwrap from the network process started instead" -- c alice --data-binary @"$work/req-tls.json" "$url"
cp "$work/clients.pem.orig" "$certs/clients.pem"
ok "a network process that does not read its control channel at a SIGHUP: replaced after 10 s, serving"
# It came after a SIGHUP reload, a restart of each process and member
# changes: still no PIN, no module, sandboxed.
[ "$(scan "$net2")" = 0 ] || fail "the PIN's bytes are in the memory of a network process started again"
if grep -E "$mods" "/proc/$net2/maps"; then fail "a network process started again maps a PKCS#11 module"; fi
grep -Eq '^Seccomp:[[:space:]]+2$' "/proc/$net2/status" || fail "a network process started again is not sandboxed"
ok "the network process started at the reload: no PIN in its memory, no module, Seccomp: 2"

# ---- a SIGHUP while the key holder is being started again ----
# The network process reloads its TLS configuration with the key
# holder's help (the local CA, the [tls] key); a SIGHUP while the key
# holder is away (killed, its start failing: here its audit log is a
# symbolic link, which it refuses) found the link down, logged "reload
# failed" and the renewed certificate was not served until the next
# SIGHUP. Now the reload is done when the key holder's new links come.
old_serial=$(served_serial)
[ -n "$old_serial" ] || fail "no certificate served before the key holder restart"
mark=$(wc -c < "$work/server.log")
mv "$work/audit.jsonl" "$work/audit.jsonl.away"
ln -s "$work/audit.jsonl.away" "$work/audit.jsonl"
kill -9 "$(child groupsrv-kh)"
waitfor "the key holder started with its audit log a symbolic link" logged_after "$mark" 'the key holder did not start'
mkserver renewed-away
cp "$certs/renewed-away.pem" "$certs/server.pem"
cp "$certs/renewed-away.key" "$certs/server.key"
kill -HUP "$srv_pid"
waitfor "the network process did not try the reload" logged_after "$mark" 'msg="reload failed'
rm "$work/audit.jsonl"
mv "$work/audit.jsonl.away" "$work/audit.jsonl"
waitfor "the key holder did not come back" logged_after "$mark" 'key holder running again'
waitfor "no service once the key holder is back" healthy
waitfor "the renewed certificate is not served after a SIGHUP while the key holder was away" served_other_than "$old_serial"
kh2=$(child groupsrv-kh)
"$BIN/groupsrv" -c "$conf" audit verify >/dev/null || fail "audit chain after the key holder's failed starts"
ok "a SIGHUP while the key holder is being started again: the renewed certificate is served once it is back"

# ---- a SIGHUP while the network process is being started again ----
# (its start failing: the [tls] certificate cannot be read.) Nothing to
# reload: the process started next reads the files at its start. The
# supervisor said "reload failed; keeping the previous TLS
# configuration", which there was none of.
mark=$(wc -c < "$work/server.log")
mv "$certs/server.pem" "$certs/server.pem.away"
kill -9 "$(child groupsrv-net)"
waitfor "the network process started without its certificate" \
  bash -c "tail -c +$((mark + 1)) '$work/server.log' | grep -q 'the network process did not start'"
kill -HUP "$srv_pid"
waitfor "the supervisor said nothing of the SIGHUP while the network process was away" \
  bash -c "tail -c +$((mark + 1)) '$work/server.log' | grep -q 'network process is being started again: it reads the TLS files'"
if tail -c +$((mark + 1)) "$work/server.log" | grep 'reload failed'; then
  fail "a SIGHUP while the network process is away is logged as a failed reload"
fi
mv "$certs/server.pem.away" "$certs/server.pem"
waitfor "no service once the network process is back" healthy
net2=$(child groupsrv-net)
ok "a SIGHUP while the network process is being started again: said so, not as a failed reload"

# ---- SIGTERM: everything stops, nothing left ----
kill -TERM "$srv_pid"
wait "$srv_pid" || fail "SIGTERM exit status"
srv_pid=
for p in "$net2" "$kh2"; do kill -0 "$p" 2>/dev/null && fail "child $p still runs after SIGTERM"; done
ok "SIGTERM: the supervisor exits 0 and both children are gone"

# ---- not dumpable, seen as the service user ----
# Started by a user other than root (systemd's User=), all three keep
# that uid; a process that is not dumpable has its /proc files owned by
# root all the same, which a plain process of that user (the control)
# has not. The supervisor too: it holds [db] url's password, and the key
# holder it forks is not dumpable from its first instruction.
if [ "$(id -u)" = 0 ]; then
  # The service user needs its own copy of the programs and of the work
  # files under /tmp: the checkout and $work may lie below a directory only
  # root can enter (a clone in a mktemp -d, as CI's check does). The
  # config's and SoftHSM's paths are moved there; the stopped server's
  # token, database and audit log come along.
  nb=$(mktemp -d /tmp/gs-kh-nobody.XXXXXX)
  nb_cleanup() { rm -rf "$nb"; cleanup; }
  trap nb_cleanup EXIT
  chmod 0755 "$nb"
  cp -a "$BIN" "$nb/bin" && cp -a "$work" "$nb/work" || fail "copy the programs and work files for nobody"
  sed -i "s|$work|$nb/work|g" "$nb/work/groupsrv.conf" "$nb/work/token/softhsm2.conf"
  chown -R nobody: "$nb/work"
  SOFTHSM2_CONF=$nb/work/token/softhsm2.conf setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups \
    "$nb/bin/groupsrv" -c "$nb/work/groupsrv.conf" serve >>"$work/server.log" 2>&1 &
  srv_pid=$!
  waitfor "the server as nobody" healthy
  net=$(child groupsrv-net)
  kh=$(child groupsrv-kh)
  nobody=$(id -u nobody)
  setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups sleep 30 &
  control=$!
  waitfor "the control process as nobody" grep -qx sleep "/proc/$control/comm" # it has executed sleep
  [ "$(stat -c %u "/proc/$control/status")" = "$nobody" ] || fail "control: a plain process of nobody should be dumpable"
  kill "$control"
  wait "$control" 2>/dev/null || true
  for p in "$net" "$kh" "$srv_pid"; do
    [ "$(awk '/^Uid:/ {print $2}' "/proc/$p/status")" = "$nobody" ] || fail "$p does not run as nobody"
    [ "$(stat -c %u "/proc/$p/status")" = 0 ] || fail "process $p is dumpable"
  done
  grep -Eq '^Seccomp:[[:space:]]+2$' "/proc/$net/status" || fail "the network process of a non-root server is not sandboxed"
  expect_status 200 "" "unwrap from a server started as nobody" -- c alice --data-binary @"$work/req-tls.json" "$url"
  ok "started as nobody: supervisor, key holder and network process not dumpable, sandbox on"
  kill -TERM "$srv_pid"
  wait "$srv_pid" || fail "SIGTERM exit status (nobody)"
  srv_pid=
fi
