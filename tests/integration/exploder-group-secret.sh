#!/usr/bin/env bash
# exploder group-secret mode (option B) end to end with a real group server
# on SoftHSM: one rewrap call per message (not per recipient); every member
# gets the message with exactly one KEKRecipientInfo and no RecipientInfo
# naming the group or anyone else; it decrypts with
# `openssl cms -decrypt -secretkey`; the encrypted content is unchanged.
# A group-server outage at send time defers, and loses nothing.
set -euo pipefail
. "$(dirname "$0")/exploder-rewrap-lib.sh" group-secret

xp_encrypt "$certs/group.pem" "$W/in.eml" "group secret test"
content_of "$W/in.eml" "$W/ct.in" >"$W/iv.in"

# group server down at the runner's time: accepted anyway, deferred, not lost
kill -TERM "$srv_pid"; wait "$srv_pid" 2>/dev/null || true; srv_pid=
xp deliver --list $L --sender alice@example.org <"$W/in.eml" || fail "deliver refused while the group server is down"
rc=0
xp run --once 2>>"$W/run.log" || rc=$?
[ "$rc" = 75 ] || fail "run with the group server down: exit $rc, want 75"
[ -z "$(xp_accepted "$W/smtp")" ] || fail "nothing can be sent before the rewrap"
grep -q 'cannot prepare message, will retry' "$W/run.log" || fail "no retry logged"
start_server
sleep 1.2
rewraps_before=$(grep -c '"action":"rewrap"' "$work/audit.jsonl" || true)
xp_drain
rewraps=$(( $(grep -c '"action":"rewrap"' "$work/audit.jsonl" || true) - rewraps_before ))
[ "$rewraps" = 1 ] || fail "want exactly 1 rewrap call for 3 recipients, audit shows $rewraps"

[ "$(xp_accepted "$W/smtp" | sort | tr '\n' ' ')" = "alice@example.org bob@example.org erin@example.org " ] ||
  fail "recipients: $(xp_accepted "$W/smtp" | tr '\n' ' ')"

# alice's copy of the group secret key, as a member fetches it
member_secret_key alice "$W"

for f in $($PY "$SMTPD_PY" --dir "$W/smtp" --list-messages); do
  grep -q '^List-Id: <eng.example.org>$' "$f" || fail "no List-Id"
  grep -q '^List-Post: <mailto:eng@example.org>$' "$f" || fail "no List-Post"
  grep -q '^Subject: group secret test$' "$f" || fail "outer headers lost"
  [ "$(ri_kinds "$f")" = "kekri " ] || fail "want one KEKRI and nothing else, got: $(ri_kinds "$f")"
  openssl cms -decrypt -in "$f" -secretkey "$sk" -secretkeyid "$kekid" -out "$W/dec.txt" 2>"$W/cms.err" ||
    fail "openssl cms -decrypt -secretkey: $(cat "$W/cms.err")"
  grep -q 'secret body for group secret test' "$W/dec.txt" || fail "wrong plaintext"
  content_of "$f" "$W/ct.out" >"$W/iv.out"
  cmp -s "$W/ct.in" "$W/ct.out" && cmp -s "$W/iv.in" "$W/iv.out" || fail "encrypted content changed"
done
xp_spool_empty
echo "exploder group-secret: ok"
