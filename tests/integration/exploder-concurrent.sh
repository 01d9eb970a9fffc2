#!/usr/bin/env bash
# exploder-concurrent.sh: the exploder's processes at once on one spool.
# The MTA runs `exploder deliver` once per message, as many at once as
# mail arrives, while cron's `exploder run --once` and the daemon's `run`
# drain the same spool: 12 deliveries at once all succeed (exit 0, each
# message spooled once), two queue runners at once send every member each
# message exactly once, and the spool ends empty.
set -euo pipefail
. "$(dirname "$0")/exploder-lib.sh"
xp_setup concurrent

xp_cert group eng@lists.example.org
xp_smtpd_start "$W/smtp"
xp_conf "smtp://127.0.0.1:$SMTPD_PORT" "batch_size = 2" "starttls = no"
L=eng@lists.example.org
xp list create $L --group-server https://127.0.0.1:1 --group eng --mode forward --group-cert "$W/group.pem" >/dev/null
members="m1@example.net m2@example.net m3@example.net m4@example.net m5@example.net"
xp list add $L $members >/dev/null
n=12
for i in $(seq 1 $n); do xp_encrypt "$W/group.pem" "$W/in$i.eml" "message $i"; done

pids=()
for i in $(seq 1 $n); do
  xp deliver --list $L --sender alice@example.org <"$W/in$i.eml" 2>"$W/deliver$i.log" & pids+=($!)
done
for i in $(seq 1 $n); do
  wait "${pids[$((i - 1))]}" || fail "deliver $i of $n at once exited $?: $(cat "$W/deliver$i.log")"
done
[ "$(sqlite3 "$W/spool/exploder.db" "SELECT count(*) FROM messages")" = $n ] || fail "spooled messages: $(sqlite3 "$W/spool/exploder.db" "SELECT count(*) FROM messages")"
echo "ok: $n deliveries at once, each spooled once"

# two queue runners at once, each until the spool is empty
( xp_drain 40 ) & r1=$!
( xp_drain 40 ) & r2=$!
wait "$r1" || fail "runner 1"
wait "$r2" || fail "runner 2"
xp_spool_empty
got=$(xp_accepted "$W/smtp" | sort | uniq -c | awk '{print $1}' | sort -u | tr '\n' ' ')
[ "$got" = "$n " ] || fail "copies per member (want $n each): $(xp_accepted "$W/smtp" | sort | uniq -c | tr '\n' ' ')"
echo "ok: two runners at once: every member got each of the $n messages exactly once"
