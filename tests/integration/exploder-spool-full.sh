#!/usr/bin/env bash
# `exploder run` when its spool's disk fills up under it (a 1 MiB tmpfs;
# CI runs as root, as this test must to mount it):
#  1. the relay took a batch, but the spool cannot record it: nothing is
#     sent again while the disk stays full (before: one more copy to every
#     recipient of the batch at each pass, about once a second), and once
#     there is room the answer is recorded and the message finished;
#  2. a message the runner cannot prepare, nor record why: the runner waits
#     poll_interval between passes instead of trying again at once.
# A process keeps the database open meanwhile, as a long-running runner
# would, so its WAL and shared-memory files exist: reads work, every
# write fails with SQLITE_FULL.
set -euo pipefail
. "$(dirname "$0")/exploder-lib.sh"
xp_setup spool-full
fs=$W/fs
mkdir -p "$fs"
mount -t tmpfs -o size=1m,mode=0700 tmpfs "$fs" || fail "cannot mount a tmpfs (this test runs as root, as CI does)"
HOLDER= RUN=
spool_full_cleanup() {
  local p
  for p in $RUN $HOLDER; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  umount "$fs" 2>/dev/null || true
  xp_cleanup
}
trap spool_full_cleanup EXIT

xp_cert group eng@lists.example.org
xp_smtpd_start "$W/smtp"
xp_smtpd_stop # its port, with nothing behind it for now
# retry_max 3600: the second message is held by a next_attempt within it
# (one beyond now + retry_max is made due at once: a clock stepped back)
xp_conf "smtp://127.0.0.1:$SMTPD_PORT" "starttls = no" "poll_interval = 5" "retry_max = 3600"
sed -i "s#^path = .*#path = $fs/spool#" "$XPC"
L=eng@lists.example.org
xp list create $L --group-server https://127.0.0.1:1 --group eng --mode forward --group-cert "$W/group.pem" >/dev/null
xp list add $L m1@example.net m2@example.net >/dev/null
xp_encrypt "$W/group.pem" "$W/in1.eml" "full one"
xp_encrypt "$W/group.pem" "$W/in2.eml" "full two"
xp deliver --list $L <"$W/in1.eml" 2>>"$W/deliver.log" || fail "deliver 1"
# prepared, its recipients deferred (no relay yet)
rc=0
xp run --once 2>>"$W/run.log" || rc=$?
[ "$rc" = 75 ] || fail "first run: exit $rc, want 75"
# the second message waits unprepared until part 2
xp deliver --list $L <"$W/in2.eml" 2>>"$W/deliver.log" || fail "deliver 2"
db() { sqlite3 "$W/fs/spool/exploder.db" "$@"; }
# due since long ago (1, not 0: a due time of 0 reads as "nothing due")
db "UPDATE recipients SET next_attempt = 1; UPDATE messages SET next_attempt = strftime('%s', 'now') + 1800 WHERE state = 0"

/usr/bin/python3 -c 'import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1])
c.execute("SELECT count(*) FROM sqlite_master").fetchall()
time.sleep(3600)' "$fs/spool/exploder.db" &
HOLDER=$!
for _ in $(seq 1 100); do [ -e "$fs/spool/exploder.db-shm" ] && break; sleep 0.1; done
fill() { dd if=/dev/zero of="$fs/fill" bs=4k 2>/dev/null || true; }
fill
xp_smtpd_start "$W/smtp"
copies() { xp_accepted "$W/smtp" | grep -c . || true; }

# 1. the relay takes the batch, the spool cannot say so
"$EXPLODER" -c "$XPC" run 2>>"$W/run.log" & # not through xp(): $! must be the runner
RUN=$!
for _ in $(seq 1 100); do [ "$(copies)" -ge 2 ] && break; sleep 0.1; done
[ "$(copies)" = 2 ] || fail "want one copy of the first message per member, the relay has $(copies)"
sleep 4
[ "$(copies)" = 2 ] || fail "sent again while the spool could not record the first send: $(copies) copies"
grep -q "cannot record the relay's answer" "$W/run.log" || fail "no log line for the unrecorded answer"
rm -f "$fs/fill"
for _ in $(seq 1 600); do
  [ "$(db "SELECT count(*) FROM recipients r JOIN messages m ON m.id = r.message_id WHERE m.state = 1")" = 0 ] &&
    break
  sleep 0.1
done
[ "$(db "SELECT count(*) FROM messages WHERE state = 1")" = 0 ] || fail "the first message was not finished once there was room"
[ "$(copies)" = 2 ] || fail "sent again after the spool recovered: $(copies) copies"
kill "$RUN"
wait "$RUN" || fail "the runner should stop cleanly at SIGTERM"
RUN=

# 2. the second message cannot be prepared (its copy does not fit) nor its
# deferral recorded: one attempt per poll_interval (5 s), not several a second
db "UPDATE messages SET next_attempt = 1"
fill
"$EXPLODER" -c "$XPC" run 2>>"$W/run2.log" &
RUN=$!
tries() { grep -c "cannot prepare message" "$W/run2.log" || true; }
for _ in $(seq 1 100); do [ "$(tries)" -ge 1 ] && break; sleep 0.1; done
[ "$(tries)" -ge 1 ] || fail "the runner did not try to prepare the second message"
sleep 3 # the next try is due poll_interval (5 s) after the first
[ "$(tries)" = 1 ] || fail "$(tries) attempts to prepare within 3 s with poll_interval 5"
kill "$RUN"
wait "$RUN" || fail "the runner should stop cleanly at SIGTERM"
RUN=
rm -f "$fs/fill"
xp run --once 2>>"$W/run.log" || fail "last run: $(tail -3 "$W/run.log")"
[ "$(xp_accepted "$W/smtp" | sort | uniq -c | awk '{print $1}' | sort -u)" = 2 ] ||
  fail "each member wants exactly two copies: $(xp_accepted "$W/smtp" | sort | uniq -c)"
# 3. a retry held beyond retry_max (the clock went back) with the disk full:
# its reschedule cannot be written, and the pass goes on regardless (it
# used to fail every pass, sending nothing); once there is room it is due.
xp_encrypt "$W/group.pem" "$W/in3.eml" "full three"
xp deliver --list $L <"$W/in3.eml" 2>>"$W/deliver.log" || fail "deliver 3"
db "UPDATE messages SET next_attempt = 4000000000 WHERE state = 0"
fill
rc=0; xp run --once 2>>"$W/run3.log" || rc=$?
[ "$rc" = 75 ] || fail "a pass with the held message pending: exit $rc, want 75: $(tail -3 "$W/run3.log")"
! grep -q "queue pass failed" "$W/run3.log" || fail "the pass failed on the reschedule: $(grep "pass failed" "$W/run3.log")"
grep -q "stay where they are for now" "$W/run3.log" || fail "no log line for the reschedule not written"
rm -f "$fs/fill"
xp run --once 2>>"$W/run3.log" || fail "run after room: $(tail -3 "$W/run3.log")"
[ "$(copies)" = 6 ] || fail "the held message once there was room: $(copies) copies, want 6"
# a full disk's spool database errors are records too (op= once unquoted)
for f in "$W/run.log" "$W/run2.log" "$W/run3.log" "$W/deliver.log"; do
  /usr/bin/python3 "$(dirname "$0")/../lib/logcheck.py" "$f" || fail "$f is not one record per line"
done
echo "exploder with a full spool: nothing sent twice, no busy loop, everything out once there was room"
