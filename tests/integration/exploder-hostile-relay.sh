#!/usr/bin/env bash
# `exploder run` against a hostile SMTP relay (tests/lib/hostile_smtpd.py):
# 4xx/5xx per recipient, to MAIL FROM, to DATA and to its end; connections
# dropped in the middle of DATA, before the last reply, or after the relay
# took the message; replies slower than relay_timeout; garbage, endless and
# binary replies. One list per misbehaviour, one queue run each.
#
# What must hold (docs/exploder.1.md, "run" and "SMTP relay answers"):
#  - every run ends (relay_timeout = 1 bounds each transaction and the
#    QUIT), with bounded memory (peak RSS against the well-behaved run);
#  - a 5xx fails the recipient (RCPT) or the message (DATA, end of DATA)
#    for good: never retried, never delivered, one bounce attempt;
#  - everything else defers (a 5xx to MAIL FROM too: it refuses the list's
#    own envelope sender, a configuration to fix, not the message),
#    retried at retry_min and then twice that
#    (checked on the clock), with a printable reason;
#  - once the relay behaves, every deferred recipient gets exactly one
#    copy, except in SMTP's duplicate window: a relay that took the
#    message and never said so (dropped, or answered after the timeout)
#    gets it exactly twice; nothing is lost, the spool ends empty.
set -euo pipefail
. "$(dirname "$0")/exploder-lib.sh"
# The memory bound compares what the exploder allocates; in the sanitizer
# build ASan's quarantine of freed blocks (256 MiB by default) would count too.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=16"
xp_setup hostile-relay

xp_cert group eng@lists.example.org
echo ok >"$W/mode"
$PY "$GS_SRC/tests/lib/hostile_smtpd.py" --dir "$W/smtp" --port-file "$W/relay.port" --mode-file "$W/mode" \
  2>>"$W/relay.err" &
XP_PIDS+=("$!")
for _ in $(seq 1 100); do [ -s "$W/relay.port" ] && break; sleep 0.1; done
[ -s "$W/relay.port" ] || fail "hostile relay did not start: $(cat "$W/relay.err")"
# retries an hour away: nothing deferred is retried by a later scenario's
# run; the recovery below moves the clock instead of waiting
xp_conf "smtp://127.0.0.1:$(cat "$W/relay.port")" "starttls = no" "relay_timeout = 1" "retry_min = 3600" \
  "retry_max = 7200"
xp_encrypt "$W/group.pem" "$W/small.eml" "hostile relay"
# a message larger than the socket buffers, so a drop in the middle of DATA
# happens while the exploder is still sending
head -c 3000000 /dev/urandom | base64 >"$W/big.txt"
openssl cms -encrypt -aes-256-cbc -recip "$W/group.pem" -keyopt rsa_padding_mode:oaep -subject big \
  -in "$W/big.txt" -out "$W/big.eml"

db() { sqlite3 "$W/spool/exploder.db" "$@"; }
state() { db "SELECT r.state FROM recipients r WHERE r.address = '$1'"; }
snap() { $PY "$SMTPD_PY" --dir "$W/smtp" --list-accepted >"$W/accepted"; }
copies() { grep -c "^$1\$" "$W/accepted" || true; } # in the last snap

DEFER="mail-4xx mail-5xx data-4xx end-4xx drop-mid-data drop-before-reply slow-greeting slow-rcpt garbage-greeting
  garbage-rcpt garbage-end endless-ehlo long-line"
WINDOW="drop-after-accept slow-end-reply"
FAIL="data-5xx end-5xx"
hostile_rss=0
scenario() { # scenario MODE: a list of three members, one message, one run
  local m=$1 msg=$W/small.eml t0 t1 rc=0 rss
  [ "$m" = drop-mid-data ] && msg=$W/big.eml
  xp list create "$m@lists.example.org" --group-server https://127.0.0.1:1 --group eng --mode forward \
    --group-cert "$W/group.pem" >/dev/null
  xp list add "$m@lists.example.org" "ok-$m@example.net" "t4-$m@example.net" "p5-$m@example.net" >/dev/null
  xp deliver --list "$m@lists.example.org" --sender "s-$m@example.org" <"$msg" || fail "deliver $m"
  echo "$m" >"$W/mode"
  t0=$(date +%s)
  # the relay stalls for 120 s where it stalls; a run takes seconds, 60 s
  # is a hang (libcurl's own default wait for a reply is 120 s)
  timeout 60 $PY "$GS_SRC/tests/lib/maxrss.py" "$W/rss" "$EXPLODER" -c "$XPC" run --once 2>>"$W/run.log" || rc=$?
  t1=$(date +%s)
  [ "$rc" != 124 ] || fail "$m: run --once did not end within 60 s (relay_timeout is 1 s)"
  [ "$rc" = 0 ] || [ "$rc" = 75 ] || fail "$m: run --once exited $rc: $(tail -3 "$W/run.log")"
  rss=$(cat "$W/rss")
  [ "$rss" -gt "$hostile_rss" ] && hostile_rss=$rss
  echo "$t0 $t1" >"$W/times.$m"
}
# deferred once: attempts 1, due retry_min (3600 s) after the run
deferred_once() { # deferred_once MODE ADDR
  local t0 t1 row
  read -r t0 t1 <"$W/times.$1"
  row=$(db "SELECT state, attempts, next_attempt BETWEEN $t0 + 3600 AND $t1 + 3600, length(last_error) > 0
            FROM recipients WHERE address = '$2'")
  [ "$row" = "0|1|1|1" ] || fail "$1: $2 should be deferred once, due in retry_min; got $row"
}

for m in per-rcpt $DEFER $WINDOW $FAIL binary; do
  scenario "$m"
done
# a reply that comes after the timeout, while the exploder is already on
# the next message: that connection must not be used again (its replies
# would answer the wrong commands); the second message goes out on a new one
xp list create late@lists.example.org --group-server https://127.0.0.1:1 --group eng --mode forward \
  --group-cert "$W/group.pem" >/dev/null
xp list add late@lists.example.org ok-late@example.net >/dev/null
for n in 1 2; do
  sed "s/^Subject: .*/Subject: late $n/" "$W/small.eml" | xp deliver --list late@lists.example.org || fail "late $n"
done
sleep 1 # the marker of late-once must be newer than the mode file's change
echo late-once >"$W/mode"
xp run --once 2>>"$W/run.log" || true

snap
# per recipient: 250 delivered, 450 deferred, 550 failed for good
[ "$(state ok-per-rcpt@example.net)" = 1 ] && [ "$(copies ok-per-rcpt@example.net)" = 1 ] ||
  fail "per-rcpt: ok- not delivered once"
deferred_once per-rcpt t4-per-rcpt@example.net
[ "$(state p5-per-rcpt@example.net)" = 2 ] || fail "per-rcpt: p5- (550) not failed"
for m in $DEFER $WINDOW; do
  for who in ok t4 p5; do deferred_once "$m" "$who-$m@example.net"; done
done
for m in $FAIL; do
  for who in ok t4 p5; do
    [ "$(state "$who-$m@example.net")" = "" ] || fail "$m: $who- not finished (a 5xx to the message is final)"
    [ "$(copies "$who-$m@example.net")" = 0 ] || fail "$m: $who- got a copy"
  done
  grep -q "recipient refused.*rcpt=\"ok-$m@example.net" "$W/run.log" || fail "$m: no refusal logged"
  grep -q "message done.*failed=3 bounce=\"s-$m@example.org" "$W/run.log" || fail "$m: no bounce queued"
done
[ "$(copies ok-binary@example.net)" = 1 ] || fail "binary: a 250 with junk in it is still a 250"
[ "$(copies ok-late@example.net)" = 2 ] || fail "late-once: the relay should hold both messages"
[ "$(db "SELECT count(*) FROM recipients WHERE address = 'ok-late@example.net' AND state = 0")" = 1 ] ||
  fail "late-once: only the first message (late reply) may be deferred; the second went out on a new connection"
# the relay took these, but the exploder cannot know
for m in $WINDOW; do
  [ "$(copies "ok-$m@example.net")" = 1 ] || fail "$m: the relay should hold one copy"
done
grep -q 'reason="no reply to the end of DATA: .*may duplicate' "$W/run.log" || fail "no duplicate-window reason"
grep -q 'deferred=3 reason=".*(while sending DATA)"' "$W/run.log" || fail "drop-mid-data: no 'while sending DATA'"
grep -q 'deferred=3 reason=".*(waiting for the reply to RCPT TO)"' "$W/run.log" || fail "slow-rcpt: no reason"
grep -a -q $'\e' "$W/run.log" && fail "an escape sequence from the relay reached the log"
db "SELECT last_error FROM recipients" | grep -a -q $'\e' && fail "an escape sequence reached the spool"

# a second failure doubles the delay (retry_max 7200)
db "UPDATE recipients SET next_attempt = 0 WHERE address = 'ok-mail-4xx@example.net'"
echo mail-4xx >"$W/mode"
t0=$(date +%s)
xp run --once 2>>"$W/run.log" || true
t1=$(date +%s)
row=$(db "SELECT attempts, next_attempt BETWEEN $t0 + 7200 AND $t1 + 7200 FROM recipients
          WHERE address = 'ok-mail-4xx@example.net'")
[ "$row" = "2|1" ] || fail "second deferral should be due 2 x retry_min later; got $row"

# recovery: the relay behaves; everything deferred is due now (the clock
# moved on, as far as the spool knows). relay_timeout back to a real
# relay's: one second is too short to hand over the 4 MB message on a busy
# machine (the timeout covers the whole transaction)
echo ok >"$W/mode"
db "UPDATE recipients SET next_attempt = 0 WHERE state = 0"
sed 's/^relay_timeout = 1$/relay_timeout = 60/' "$XPC" >"$W/recover.conf"
rc=0
timeout 300 $PY "$GS_SRC/tests/lib/maxrss.py" "$W/rss.ok" "$EXPLODER" -c "$W/recover.conf" run --once \
  2>>"$W/run.log" || rc=$?
[ "$rc" = 0 ] || fail "recovery run: exit $rc: $(tail -3 "$W/run.log")"
snap
for m in per-rcpt $DEFER $WINDOW binary; do
  for who in ok t4 p5; do
    want=1
    case "$m/$who" in
    per-rcpt/p5) want=0 ;;           # refused for good
    drop-after-accept/* | slow-end-reply/*) want=2 ;; # the duplicate window, and only there
    esac
    [ "$(copies "$who-$m@example.net")" = "$want" ] ||
      fail "$m: $who- has $(copies "$who-$m@example.net") copies, want $want"
  done
done
# the sender of per-rcpt gets one bounce (p5 failed) once t4 is through
[ "$(copies s-per-rcpt@example.org)" = 1 ] || fail "per-rcpt: want one bounce"
for m in $DEFER $WINDOW binary; do
  [ "$(copies "s-$m@example.org")" = 0 ] || fail "$m: bounced although delivered"
done
# the late message: taken once before, once in the window's retry
[ "$(copies ok-late@example.net)" = 3 ] || fail "late-once: want 3 copies (2 messages, one in the window)"
xp_spool_empty

ok=$(cat "$W/rss.ok")
[ "$hostile_rss" -le $((ok + 48 * 1024)) ] || fail "peak RSS $hostile_rss KiB against the hostile relay, $ok KiB otherwise"
echo "exploder against a hostile relay: nothing lost, duplicates only in the window; peak RSS $hostile_rss KiB" \
  "(well-behaved: $ok KiB)"
