#!/usr/bin/env bash
# kill -9 of the queue runner in the middle of a 1,000-recipient fan-out,
# then a restart: every one of the 1,000 members gets the message
# (duplicates from the batch in flight are allowed, losses are not).
set -euo pipefail
. "$(dirname "$0")/exploder-lib.sh"
xp_setup crash

xp_cert group eng@lists.example.org
# each DATA answer is slowed so the fan-out (10 batches of 100) takes a while
xp_smtpd_start "$W/smtp" --data-delay 0.4
xp_conf "smtp://127.0.0.1:$SMTPD_PORT" "starttls = no" "batch_size = 100"
L=eng@lists.example.org
xp list create $L --group-server https://127.0.0.1:1 --group eng --mode forward --group-cert "$W/group.pem" >/dev/null
seq -f 'member%04g@example.net' 1 1000 >"$W/members"
xp list add $L - <"$W/members" >/dev/null
xp_encrypt "$W/group.pem" "$W/in.eml" "fan-out"
xp deliver --list $L <"$W/in.eml" || fail "deliver refused"

"$EXPLODER" -c "$XPC" run 2>>"$W/run.log" &
RUNNER=$!
XP_PIDS+=("$RUNNER")
# wait until at least one batch is through, then kill -9 mid-way
for _ in $(seq 1 300); do
  n=$(xp_accepted "$W/smtp" | grep -c . || true)
  [ "$n" -ge 100 ] && break
  kill -0 $RUNNER 2>/dev/null || fail "runner died on its own: $(tail -5 "$W/run.log")"
  sleep 0.1
done
kill -9 $RUNNER
wait $RUNNER 2>/dev/null || true
n=$(xp_accepted "$W/smtp" | grep -c . || true)
echo "killed the runner with $n of 1000 delivered"
[ "$n" -ge 100 ] || fail "no batch went through before the kill"
[ "$n" -lt 1000 ] || fail "the fan-out finished before the kill: the test proved nothing"
pending=$(sqlite3 "$W/spool/exploder.db" 'select count(*) from recipients where state=0')
[ "$pending" -gt 0 ] || fail "the spool lost its pending recipients"

xp_drain
sort -u <(xp_accepted "$W/smtp") >"$W/got"
cmp -s "$W/members" "$W/got" || fail "after restart, missing: $(comm -23 "$W/members" "$W/got" | head -5)"
echo "delivered copies: $(xp_accepted "$W/smtp" | grep -c .) for 1000 members"
xp_spool_empty
echo "exploder crash: ok"
