#!/usr/bin/env bash
# The exploder against a hostile group server (tests/lib/hostile_groupsrv.py):
# every way a rewrap answer can go wrong, one list each, all in one queue
# run. The classification contract (docs/exploder.1.md, "Group server
# answers"): a 4xx other than 429 is permanent: the message bounces once
# to its sender, is never retried and never reaches a member; 429, 5xx,
# transport and TLS failures and malformed answers are temporary: the
# message waits (backoff) and, once the server behaves, reaches every member
# exactly once, with no bounce. One rewrap call per message and attempt.
# Time and memory stay bounded: [tls] timeout = 2, and the peak RSS of the
# hostile run is compared with the well-behaved run's.
set -euo pipefail
. "$(dirname "$0")/exploder-lib.sh"
# The memory bound compares what the exploder allocates; in the sanitizer
# build ASan's quarantine of freed blocks (256 MiB by default) would count too.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=16"
xp_setup hostile-groupsrv

bash "$GS_SRC/tests/integration/groupmail-mkcerts.sh" "$W/pki"
xp_cert group eng@lists.example.org

# one server misbehaving per list (by group name), two more for TLS itself
start_hostile() { # start_hostile NAME MODE: sets port in $W/NAME.port
  echo "$2" >"$W/$1.mode"
  $PY "$GS_SRC/tests/lib/hostile_groupsrv.py" --cert "$W/pki/server.pem" --key "$W/pki/server.key" \
    --client-ca "$W/pki/ca.pem" --port-file "$W/$1.port" --mode-file "$W/$1.mode" --log "$W/requests.log" \
    2>>"$W/hostile.err" &
  XP_PIDS+=("$!")
}
start_hostile http by-group
start_hostile stall tls-stall
start_hostile clear not-tls
for n in http stall clear; do
  for _ in $(seq 1 100); do [ -s "$W/$n.port" ] && break; sleep 0.1; done
  [ -s "$W/$n.port" ] || fail "hostile server $n did not start: $(cat "$W/hostile.err")"
done
xp_smtpd_start "$W/smtp"
xp_conf "smtp://127.0.0.1:$SMTPD_PORT" "starttls = no" "[tls]" "cert = $W/pki/alice.pem" \
  "key = $W/pki/alice.key" "ca = $W/pki/ca.pem" "timeout = 2"

# one of each kind (groupmail_hostile tries every misbehaviour on the
# REST client itself; here what matters is how each class is handled)
PERM="status-400 status-401 status-403 status-404 status-413 control-chars"
TEMP="status-408 status-429 status-500 status-503 html-502 status-302 garbage bad-base64 bad-ri json-as-text
  huge-chunked truncated reset slow-body bad-status tls-stall not-tls"
xp_encrypt "$W/group.pem" "$W/in.eml" "hostile"
i=0
for m in $PERM $TEMP; do
  case $m in
  tls-stall) url=https://127.0.0.1:$(cat "$W/stall.port") g=ok ;;
  not-tls) url=https://127.0.0.1:$(cat "$W/clear.port") g=ok ;;
  *) url=https://127.0.0.1:$(cat "$W/http.port") g=$m ;;
  esac
  # both rewrap modes, alternately
  mode=group-secret
  [ $((i % 2)) = 1 ] && mode=member-certs
  i=$((i + 1))
  xp list create "$m@lists.example.org" --group-server "$url" --group "$g" --mode $mode \
    --group-cert "$W/group.pem" >/dev/null
  xp list add "$m@lists.example.org" "a-$m@example.net" "b-$m@example.net" >/dev/null
  xp deliver --list "$m@lists.example.org" --sender "s-$m@example.org" <"$W/in.eml" || fail "deliver $m"
done
nperm=$(echo $PERM | wc -w)
ntemp=$(echo $TEMP | wc -w)
db() { sqlite3 "$W/spool/exploder.db" "$@"; }
rewraps() { grep -c "^POST /v1/groups/$1/rewrap " "$W/requests.log" || true; }
# run_once NAME WANT: one queue run, its peak RSS in $W/rss.NAME, its exit
# code checked, what the relay accepted in $W/accepted
run_once() {
  local rc=0
  timeout 300 $PY "$GS_SRC/tests/lib/maxrss.py" "$W/rss.$1" "$EXPLODER" -c "$XPC" run --once \
    2>>"$W/run.log" || rc=$?
  [ "$rc" = "$2" ] || fail "$1 run: exit $rc, want $2: $(tail -3 "$W/run.log")"
  xp_accepted "$W/smtp" >"$W/accepted"
}

# 1. the hostile run: bounded in time (a hang fails here) and memory; 75:
# temporary failures pending
run_once hostile 75
for m in $PERM; do
  [ "$(grep -c "^[ab]-$m@" "$W/accepted")" = 0 ] || fail "$m: a member got a copy"
  [ "$(grep -c "^s-$m@example.org$" "$W/accepted")" = 1 ] || fail "$m: want one bounce to the sender"
  grep -q "giving up.*list=$m@.*reason=\"group server: " "$W/run.log" || fail "$m: no 'giving up' line"
done
for m in $TEMP; do
  [ "$(grep -c -e "^[ab]-$m@" -e "^s-$m@" "$W/accepted")" = 0 ] || fail "$m: delivered or bounced"
  # retried when due within the run (backoff 1-2 s), so attempts >= 1
  row=$(db "SELECT m.state, m.attempts >= 1, m.next_attempt > m.received, length(m.last_error) > 0
            FROM messages m JOIN lists l ON l.id = m.list_id WHERE l.address = '$m@lists.example.org'")
  [ "$row" = "0|1|1|1" ] || fail "$m: want state new, attempts, a retry scheduled, a reason; got $row"
  grep -q "will retry.*list=$m@" "$W/run.log" || fail "$m: no 'will retry' line"
  case $m in tls-stall | not-tls) continue ;; esac
  attempts=$(db "SELECT m.attempts FROM messages m JOIN lists l ON l.id = m.list_id
                 WHERE l.address = '$m@lists.example.org'")
  [ "$(rewraps "$m")" = "$attempts" ] || fail "$m: $(rewraps "$m") rewrap calls for $attempts attempts"
  echo "$attempts" >"$W/attempts.$m"
done
for m in $PERM; do
  [ "$(rewraps "$m")" = 1 ] || fail "$m: $(rewraps "$m") rewrap calls, want 1"
done
# every reason is one printable line; a hostile server's text is cut and neutralised
db "SELECT last_error FROM messages WHERE last_error IS NOT NULL" | grep -q $'\e' && fail "escape in last_error"
grep -q 'reason="group server: refused: not a member or not allowed (403' "$W/run.log" ||
  fail "the 403's reason is missing from the log"
grep -a -q $'\e' "$W/run.log" && fail "an escape sequence reached the log"
grep -q 'forged="yes' "$W/run.log" && fail "a quote in the server's error code ended a field of the log"

# 2. the server behaves again: every waiting message reaches every member once
for n in http stall clear; do echo ok >"$W/$n.mode"; done
sleep 2.2 # past the backoff (retry_max = 2)
run_once ok 0
for m in $TEMP; do
  for who in a b; do
    [ "$(grep -c "^$who-$m@example.net$" "$W/accepted")" = 1 ] || fail "$m: $who- wants exactly 1 copy"
  done
  [ "$(grep -c "^s-$m@" "$W/accepted")" = 0 ] || fail "$m: bounced although delivered"
  [ -f "$W/attempts.$m" ] || continue
  [ "$(rewraps "$m")" = $(($(cat "$W/attempts.$m") + 1)) ] || fail "$m: more than one rewrap call after recovery"
done
for m in $PERM; do
  [ "$(grep -c "^[ab]-$m@" "$W/accepted")" = 0 ] || fail "$m: a member got a copy after all"
  [ "$(grep -c "^s-$m@example.org$" "$W/accepted")" = 1 ] || fail "$m: more than one bounce"
  [ "$(rewraps "$m")" = 1 ] || fail "$m: retried a permanent refusal"
done
total=$(wc -l <"$W/accepted")
[ "$total" = $((2 * ntemp + nperm)) ] || fail "want $((2 * ntemp + nperm)) accepted recipients, got $total"
xp_spool_empty

hostile=$(cat "$W/rss.hostile") ok=$(cat "$W/rss.ok")
[ "$hostile" -le $((ok + 48 * 1024)) ] || fail "peak RSS $hostile KiB against the hostile server, $ok KiB otherwise"
echo "exploder against a hostile group server: $nperm permanent refusals bounced once, $ntemp temporary" \
  "failures delivered once after recovery; peak RSS $hostile KiB (well-behaved run: $ok KiB)"
