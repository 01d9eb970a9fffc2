#!/usr/bin/env bash
# Giving up: a recipient the relay refuses for good (550) is not retried;
# one it keeps deferring (450) is given up after [delivery] max_age; the
# sender then gets one bounce (null reverse-path) that names no member,
# and whose reason line tells a refusal from a give-up.
set -euo pipefail
. "$(dirname "$0")/exploder-lib.sh"
xp_setup bounce

xp_cert group eng@lists.example.org
# (the long reply is cut after 159 bytes, in the middle of the address)
long="554 5.7.1 the message was refused by the content filter of this site; our policy is at https://filter.example.net/policy/2026-12; see it; the copy for"
xp_smtpd_start "$W/smtp" --refuse-rcpt '^gone@' --defer-rcpt '^slow@' --pipe pipe1@example.net=/bin/false \
  --pipe pipe2@example.net=/bin/false \
  --data-reply 'john.smith@example.net=552 5.2.2 mailbox {local} is full; see https://mx.example.net/q?to=john.smith%40example.net' \
  --data-reply "mary.jones@example.net=$long {recipient} was refused"
xp_conf "smtp://127.0.0.1:$SMTPD_PORT" "starttls = no" "max_age = 2" "bounce_from = lists-daemon@lists.example.org"
L=eng@lists.example.org
xp list create $L --group-server https://127.0.0.1:1 --group eng --mode forward --group-cert "$W/group.pem" >/dev/null
xp list add $L ok@example.net gone@example.net slow@example.net >/dev/null
xp_encrypt "$W/group.pem" "$W/in.eml" "bounce me"
xp deliver --list $L --sender alice@example.org <"$W/in.eml" || fail "deliver refused"

rc=0
xp run --once 2>>"$W/run.log" || rc=$?
[ "$rc" = 75 ] || fail "slow@ deferred: want 75, got $rc"
[ "$(xp_accepted "$W/smtp" | tr '\n' ' ')" = "ok@example.net " ] || fail "only ok@ should be delivered"
[ "$(grep -c ' 550 gone@' "$W/smtp/rcpt.log")" = 1 ] || fail "gone@ tried once"
sleep 3 # past max_age
xp_drain
[ "$(grep -c ' 550 gone@' "$W/smtp/rcpt.log")" = 1 ] || fail "a 550 must not be retried"
grep -q '^[^ ]* <> alice@example.org$' "$W/smtp/envelope.log" || fail "no bounce to alice with null sender"
b=$(grep -l '^Subject: Undelivered mail to list eng@lists.example.org' "$W"/smtp/new/*) || fail "bounce not found"
[ "$(echo "$b" | wc -l)" = 1 ] || fail "want exactly one bounce"
grep -q '^From: Mail Delivery System <lists-daemon@lists.example.org>' $b || fail "bounce_from not used"
grep -q 'could not be delivered to 2 of 3 list members' $b || fail "bounce text: $(cat $b)"
grep -q -e 'gone@' -e 'slow@' $b && fail "bounce must not reveal member addresses"
# the reason names both causes: one refused at once, one given up after max_age
grep -qx 'Reason: the mail system of 1 of them refused it; the mail system of 1 of them did not accept it in time.' $b ||
  fail "reason with a refusal and an expiry: $(grep Reason $b)"
xp_spool_empty

# a refusal alone (550 to RCPT) is not "did not accept it in time"
L2=only@lists.example.org
xp list create $L2 --group-server https://127.0.0.1:1 --group eng --mode forward --group-cert "$W/group.pem" >/dev/null
xp list add $L2 ok@example.net gone@example.net gone@example.com >/dev/null
xp deliver --list $L2 --sender alice@example.org <"$W/in.eml" || fail "deliver to $L2 refused"
xp_drain
b=$(grep -l "^Subject: Undelivered mail to list $L2" "$W"/smtp/new/*) || fail "no bounce from $L2"
# two of them: the plural, and the count
grep -q 'could not be delivered to 2 of 3 list members' $b || fail "bounce count: $(cat $b)"
grep -qx 'Reason: the mail systems of 2 of them refused it.' $b || fail "reason for a refusal: $(grep Reason $b)"
xp_spool_empty

# the message refused as a whole at the end of DATA, so every copy: the
# bounce gives the relay's own reply (what the sender can act on: too
# large, a content filter), the member address in it masked
L3=piped@lists.example.org
xp list create $L3 --group-server https://127.0.0.1:1 --group eng --mode forward --group-cert "$W/group.pem" >/dev/null
xp list add $L3 pipe1@example.net pipe2@example.net >/dev/null
xp deliver --list $L3 --sender alice@example.org <"$W/in.eml" || fail "deliver to $L3 refused"
xp_drain
b=$(grep -l "^Subject: Undelivered mail to list $L3" "$W"/smtp/new/*) || fail "no bounce from $L3"
grep -q 'could not be delivered to 2 of 2 list members' $b || fail "bounce count: $(cat $b)"
grep -qx 'Reason: the mail systems of 2 of them refused it (the relay answered "554 5.3.0 pipe to <address>: refused (exit 1)").' $b ||
  fail "reason for a refusal at DATA: $(grep Reason $b)"
grep -q 'pipe[12]@' $b && fail "bounce must not reveal member addresses"
xp_spool_empty

# a reply naming the member without an '@' (its local part, the URL form
# %40), or whose address the relay's reply cut short (at 159 bytes,
# before the '@'): masked all the same
for m in john.smith mary.jones; do
  L4=filtered-${m:0:1}@lists.example.org
  xp list create $L4 --group-server https://127.0.0.1:1 --group eng --mode forward --group-cert "$W/group.pem" >/dev/null
  xp list add $L4 $m@example.net >/dev/null
  xp deliver --list $L4 --sender alice@example.org <"$W/in.eml" || fail "deliver to $L4 refused"
  xp_drain
  b=$(grep -l "^Subject: Undelivered mail to list $L4" "$W"/smtp/new/*) || fail "no bounce from $L4"
  grep -q "^Reason: the mail system of 1 of them refused it (the relay answered \"55" $b ||
    fail "no relay reply in the bounce from $L4: $(grep Reason $b)"
  grep -q "${m:0:6}" $b && fail "bounce from $L4 reveals the member: $(grep Reason $b)"
  xp_spool_empty
done
grep -qx 'Reason: the mail system of 1 of them refused it (the relay answered "552 5.2.2 mailbox <address> is full; see <address>").' \
  $(grep -l "^Subject: Undelivered mail to list filtered-j@" "$W"/smtp/new/*) || fail "john.smith's reason"
echo "exploder bounce: ok"
