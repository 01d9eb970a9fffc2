#!/bin/bash
# server-kh-stalled.sh: a key holder that takes no work (SIGSTOP) costs the
# network process bounded memory, and once it runs again it does no token
# work for requests whose clients were answered 503 long before.
#  - with the key holder stopped, a burst of unwrap-batch requests (more
#    than the link and [server] keyholder_queue_max hold): what the network
#    process holds for the key holder stays under the bound
#    (groupsrv_keyholder_queue_bytes), the rest is answered 503
#    token_unavailable with Retry-After at once (refused, queue_full);
#  - once a call timed out with nothing answered since, new requests are
#    answered 503 at once (refused, stalled), one probe at a time let through;
#  - after SIGCONT: the key holder serves again, and the token was used only
#    for requests answered 200: every audit record of an unwrap belongs to a
#    request answered 200 and every 200 has its record (the frames queued
#    while it was stopped carry a deadline it drops them at, unrun).
#  - a SIGHUP while the key holder is stopped: the renewed certificate is
#    served once it runs again (the reload was kept for new links that a
#    stopped key holder never gets);
#  - a named pipe as a [tls] file at SIGHUP is refused at once (it held the
#    supervisor in open() for good).
# No timing assertions: the test waits for states, not durations.
set -euo pipefail
BIN=$1 SRC=$2
SRV_METRICS=any
SRV_THREADS=1 # one link: the bound is per thread
. "$SRC/tests/integration/server-lib.sh"
sed -i -e 's/^timeout = 10$/timeout = 3/' \
  -e 's/^\[server\]$/[server]\nkeyholder_queue_max = 4096\nmax_connections_per_address = 1000/' "$conf"
start_server
url=$base/v1/groups/eng/unwrap-batch
ri=$(b64 "$work/ri.der")
/usr/bin/python3 -c 'import json,sys; print(json.dumps({"deliver":"tls","items":[{"recipient_info":sys.argv[1]}]*10}))' \
  "$ri" > "$work/batch.json"
# answers.txt: one line per answer: status request-id retry-after
ask() { # ask N: N requests in parallel, as alice; each answer's line appended
  local n=$1 i
  for i in $(seq 1 "$n"); do printf 'url = "%s"\noutput = "/dev/null"\n' "$url"; done > "$work/urls.cfg"
  c alice --parallel --parallel-max 200 -m 60 --data-binary @"$work/batch.json" \
    -w '%{http_code} %header{x-request-id} %header{retry-after}\n' -K "$work/urls.cfg" >> "$work/answers.txt" || true
}
metric() { anon -m 60 "$base/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
: > "$work/answers.txt"
ask 1
grep -q '^200 ' "$work/answers.txt" || fail "unwrap-batch before the stop: $(cat "$work/answers.txt")"

kh=$(ps --ppid "$srv_pid" -o pid=,comm= | awk '$2 == "groupsrv-kh" {print $1}')
[ -n "$kh" ] || fail "no key holder"
kill -STOP "$kh"
trap 'kill -CONT "$kh" 2>/dev/null || true; cleanup' EXIT
# ---- the bound ----
ask 120 &
ask_pid=$!
# Read while the burst waits for its answers (the refusals show it is on).
for _ in $(seq 1 300); do
  full=$(metric 'groupsrv_keyholder_refused_total{reason="queue_full"}')
  [ -n "$full" ] || fail "no groupsrv_keyholder_refused_total in /metrics"
  [ "$full" -gt 0 ] && break
  sleep 0.1
done
anon -m 60 "$base/metrics" > "$work/m-burst.txt"; held=$(awk '$1 == "groupsrv_keyholder_queue_bytes" {print $2}' "$work/m-burst.txt")
[ -n "$held" ] || fail "no groupsrv_keyholder_queue_bytes in /metrics"
wait "$ask_pid"
full=$(metric 'groupsrv_keyholder_refused_total{reason="queue_full"}')
[ "$full" -gt 0 ] || fail "120 requests for a stopped key holder: none refused for the bound ($(sort "$work/answers.txt" | awk '{print $1}' | uniq -c | tr '\n' ' '))"
# The bound (4096) may be passed by one frame alone, never more.
[ "$held" -le $((4096 + 65536)) ] || fail "the network process holds $held bytes for a stopped key holder (bound 4096)"
awk '$1 != 200 && $1 != 503 {bad++} $1 == 503 && $3 == "" {bad++} END {exit bad > 0}' "$work/answers.txt" ||
  fail "answers other than 503 with Retry-After: $(awk '$1 != 200' "$work/answers.txt" | sort | uniq -c | head)"
ok "a stopped key holder: $full of 120 requests refused at the bound at once, $held bytes held (bound 4096)"

kill -CONT "$kh"
running_again() { # until an unwrap is answered 200 (the backlog is behind it)
  local n0 _
  for _ in $(seq 1 100); do
    n0=$(grep -c '^200 ' "$work/answers.txt" || true)
    ask 1
    [ "$(grep -c '^200 ' "$work/answers.txt" || true)" -gt "$n0" ] && return 0
  done
  fail "no 200 once the key holder runs again"
}
running_again

# ---- stalled: 503 at once, one probe ----
# A few requests, all taken by the link (no bound reached), time out
# unanswered: the link is stalled, and new requests are answered at once.
kill -STOP "$kh"
ask 3
grep -q 'the key holder answered nothing in \[server\] timeout' "$work/server.log" || fail "no log line for a stalled link"
st0=$(metric 'groupsrv_keyholder_refused_total{reason="stalled"}')
full0=$(metric 'groupsrv_keyholder_refused_total{reason="queue_full"}')
ask 20
st1=$(metric 'groupsrv_keyholder_refused_total{reason="stalled"}')
full1=$(metric 'groupsrv_keyholder_refused_total{reason="queue_full"}')
[ "$full1" = "$full0" ] || fail "the stall test reached the bound: $((full1 - full0)) refused for it"
[ $((st1 - st0)) -ge 19 ] || fail "stalled link: only $((st1 - st0)) of 20 requests refused at once"
ok "a stalled link: 20 requests (and /metrics' own calls) with $((st1 - st0)) answered 503 at once"

# ---- running again: no token work for clients long answered ----
kill -CONT "$kh"
running_again
# The request answered 200 just now came after the backlog (one identity:
# first come, first served), so every record the backlog could cause is written.
/usr/bin/python3 - "$work/answers.txt" "$work/audit.jsonl" <<'PY' || fail "token work for requests not answered 200 (above)"
import json, sys
ok = {l.split()[1] for l in open(sys.argv[1]) if l.startswith("200 ")}
done = {}
for line in open(sys.argv[2]):
    r = json.loads(line)
    if r.get("action") == "unwrap" and r.get("outcome") == "ok":
        done[r.get("request_id")] = done.get(r.get("request_id"), 0) + 1
extra = sorted(set(done) - ok)
missing = sorted(ok - set(done))
print("answered 200: %d requests; audited unwraps: %d requests, %d items; for requests not answered 200: %d; "
      "200 without records: %d" % (len(ok), len(done), sum(done.values()), len(extra), len(missing)))
sys.exit(1 if extra or missing else 0)
PY
"$BIN/groupsrv" -c "$conf" audit verify >/dev/null || fail "the audit chain"
grep -q 'the key holder answers again' "$work/server.log" || fail "no log line for the link taking work again"
ok "after SIGCONT: the token used only for requests answered 200, each audited"

# ---- a SIGHUP while the key holder is stopped ----
# The network process reloads its TLS configuration with the key
# holder's help (the local CA, the [tls] key). A stopped key holder is
# not restarted (the supervisor restarts only a process that ended), so
# no new links come: the reload, kept for them, waited for the next
# SIGHUP, and the renewed certificate was not served after SIGCONT. Now
# it is tried again once the key holder answers anything again.
old_serial=$(served_serial)
[ -n "$old_serial" ] || fail "no certificate served before the reload"
mark=$(wc -c < "$work/server.log")
kill -STOP "$kh"
mkserver renewed
cp "$certs/renewed.pem" "$certs/server.pem"
cp "$certs/renewed.key" "$certs/server.key"
kill -HUP "$srv_pid"
# a reload waits [server] timeout (3 s here); before, 60 s
wait_until 90 "the network process did not give up the reload with the key holder stopped" logged_after "$mark" 'msg="reload failed'
[ "$(served_serial)" = "$old_serial" ] || fail "a certificate other than the old one served while the reload was put off"
kill -CONT "$kh"
wait_until 30 "the renewed certificate is not served once the stopped key holder runs again" \
  served_other_than "$old_serial"
logged_after "$mark" 'reloaded TLS certificate' || fail "no log line for the reload done once the key holder answered"
ok "a SIGHUP while the key holder is stopped: the renewed certificate is served once it runs again"

# ---- a named pipe as a [tls] file at SIGHUP ----
# The supervisor reads the TLS files again at SIGHUP; a named pipe there
# (no writer) held its loop in open() for good: no reload, no restart of a
# child, no SIGTERM served. Now refused at once as no regular file, and the
# previous TLS configuration kept.
mv "$certs/clients.pem" "$certs/clients.pem.file"
mkfifo "$certs/clients.pem"
kill -HUP "$srv_pid"
for _ in $(seq 1 300); do
  grep -q 'cannot read the client CA file.* reason="not a regular file' "$work/server.log" && break
  sleep 0.1
done
grep -q 'cannot read the client CA file.* reason="not a regular file' "$work/server.log" ||
  fail "a named pipe as [tls] client_ca at SIGHUP: not refused (the supervisor waits in open?)"
rm "$certs/clients.pem"
mv "$certs/clients.pem.file" "$certs/clients.pem"
expect_status 200 "" "an unwrap after the refused reload" -- c alice --data-binary @"$work/batch.json" "$url"
kill -TERM "$srv_pid"
wait "$srv_pid" || true
srv_pid=
ok "a named pipe as [tls] client_ca at SIGHUP: refused at once, the server serves on and stops on SIGTERM"
