#!/usr/bin/env bash
# Relay trouble loses nothing: with the relay down (nothing listening), the
# runner defers every recipient and exits 75; with the relay answering 421
# (down-file) likewise; a recipient answered 450 is retried while the others
# are delivered; once the relay is back everything is delivered exactly to
# the members.
set -euo pipefail
. "$(dirname "$0")/exploder-lib.sh"
xp_setup relay-down

xp_cert group eng@lists.example.org
# learn a free port, then take the relay down
xp_smtpd_start "$W/smtp"
xp_smtpd_stop
xp_conf "smtp://127.0.0.1:$SMTPD_PORT" "batch_size = 3" "starttls = no"
L=eng@lists.example.org
xp list create $L --group-server https://127.0.0.1:1 --group eng --mode forward --group-cert "$W/group.pem" >/dev/null
members=$(for i in $(seq 1 7); do echo "m$i@example.net"; done)
echo "$members" | xp list add $L - >/dev/null
for i in 1 2 3; do
  xp_encrypt "$W/group.pem" "$W/in$i.eml" "down $i"
  xp deliver --list $L <"$W/in$i.eml" 2>>"$W/deliver.log" || fail "deliver $i refused"
done

# 1. nothing listening
rc=0
xp run --once 2>>"$W/run.log" || rc=$?
[ "$rc" = 75 ] || fail "run --once with the relay down: exit $rc, want 75"
pending=$(sqlite3 "$W/spool/exploder.db" 'select count(*) from recipients where state=0')
[ "$pending" = 21 ] || fail "want 21 pending recipients, got $pending"

# 2. relay up but answering 421 to MAIL, and 450 for one recipient
touch "$W/down"
xp_smtpd_start "$W/smtp" --down-file "$W/down" --defer-rcpt '^m4@'
sleep 1.2 # let the backoff (retry_min = 1) expire
rc=0
xp run --once 2>>"$W/run.log" || rc=$?
[ "$rc" = 75 ] || fail "run --once with 421: exit $rc, want 75"
[ -z "$(xp_accepted "$W/smtp")" ] || fail "nothing may be accepted while the relay says 421"
grep -q 'reason="421 ' "$W/run.log" || fail "the 421 answer was not seen: $(tail -3 "$W/run.log")"
rm -f "$W/down"
# backoff (retry_min 1, retry_max 2): run until the six good members of each message are through
for _ in $(seq 1 10); do
  rc=0
  xp run --once 2>>"$W/run.log" || rc=$?
  [ "$rc" = 75 ] || fail "m4 is deferred: run --once should exit 75, got $rc"
  [ "$(xp_accepted "$W/smtp" | grep -c .)" -ge 18 ] && break
  sleep 1
done
[ "$(xp_accepted "$W/smtp" | grep -c .)" = 18 ] || fail "want 18 delivered (3 messages x 6), got $(xp_accepted "$W/smtp" | grep -c .)"
xp_accepted "$W/smtp" | grep -q '^m4@' && fail "m4 was deferred, must not be delivered"
[ "$(sqlite3 "$W/spool/exploder.db" 'select count(*) from recipients where state=0')" = 3 ] || fail "m4 x 3 should be pending"

# 3. relay fully back
xp_smtpd_stop
xp_smtpd_start "$W/smtp"
xp_drain
got=$(xp_accepted "$W/smtp" | sort | uniq -c | awk '{print $1}' | sort -u | tr '\n' ' ')
[ "$got" = "3 " ] || fail "every member must have exactly 3 copies, counts: $got"
[ "$(xp_accepted "$W/smtp" | sort -u | grep -c .)" = 7 ] || fail "want 7 distinct members"
xp_spool_empty

# 4. The clock stepped back (NTP, a wrong RTC at boot) after a deferral:
# the retry, scheduled by the clock that was a day ahead, is due at once,
# not a day later. (The deferral's next_attempt moved a day ahead stands
# in for the step: the same rows a runner with the clock ahead writes.)
xp_smtpd_stop
xp_encrypt "$W/group.pem" "$W/in4.eml" "clock step"
xp deliver --list $L <"$W/in4.eml" 2>>"$W/deliver.log" || fail "deliver 4 refused"
rc=0
xp run --once 2>>"$W/run.log" || rc=$?
[ "$rc" = 75 ] || fail "run --once with the relay down: exit $rc, want 75"
sqlite3 "$W/spool/exploder.db" 'update recipients set next_attempt=next_attempt+86400 where state=0;
  update messages set next_attempt=next_attempt+86400 where state=0'
xp_smtpd_start "$W/smtp4"
rc=0
xp run --once 2>>"$W/run.log" || rc=$?
[ "$rc" = 0 ] || fail "run --once after a clock step back: exit $rc, want 0 (the retries waited for the step)"
grep -q 'msg="the clock went back: retries scheduled beyond retry_max from now are due now" count=7' "$W/run.log" ||
  fail "no log line about the clock step: $(tail -3 "$W/run.log")"
[ "$(xp_accepted "$W/smtp4" | grep -c .)" = 7 ] || fail "after the clock step: $(xp_accepted "$W/smtp4" | grep -c .) delivered, want 7"
xp_spool_empty
# the runner's lines (relay refusals, retries, the clock step) are records
/usr/bin/python3 "$(dirname "$0")/../lib/logcheck.py" "$W/run.log" || fail "run.log is not one record per line"
echo "exploder relay-down: ok"
