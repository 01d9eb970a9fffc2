#!/usr/bin/env bash
# exploder member-certs mode end to end with a real group server on
# SoftHSM: the group server re-wraps the group RecipientInfo to every
# current member certificate (one call per message), and each member's copy
# is standard multi-recipient S/MIME that `openssl cms -decrypt -recip
# member.pem -inkey member.key` decrypts; the group's own KTRI is gone and
# the encrypted content is unchanged.
set -euo pipefail
. "$(dirname "$0")/exploder-rewrap-lib.sh" member-certs

xp_encrypt "$certs/group.pem" "$W/in.eml" "member certs test"
content_of "$W/in.eml" "$W/ct.in" >"$W/iv.in"
xp deliver --list $L --sender alice@example.org <"$W/in.eml" || fail "deliver refused"
rewraps_before=$(grep -c '"action":"rewrap"' "$work/audit.jsonl" || true)
xp_drain
rewraps=$(( $(grep -c '"action":"rewrap"' "$work/audit.jsonl" || true) - rewraps_before ))
[ "$rewraps" = 1 ] || fail "want exactly 1 rewrap call, audit shows $rewraps"
[ "$(xp_accepted "$W/smtp" | sort | tr '\n' ' ')" = "alice@example.org bob@example.org erin@example.org " ] ||
  fail "recipients: $(xp_accepted "$W/smtp" | tr '\n' ' ')"

for f in $($PY "$SMTPD_PY" --dir "$W/smtp" --list-messages); do
  grep -q '^List-Id: <eng.example.org>$' "$f" || fail "no List-Id"
  kinds=$(ri_kinds "$f")
  case "$kinds" in *kekri*|*kari*|"") fail "want only KTRIs, got: $kinds" ;; esac
  # none of them is the group's own: only the members' keys can open the copy
  gserial=$($PY -c 'import sys; print(int(sys.argv[1], 16))' \
    "$(openssl x509 -in "$certs/group.pem" -noout -serial | cut -d= -f2)")
  openssl cms -cmsout -print -in "$f" | grep -q "serialNumber: $gserial\$" && fail "the group's KTRI is still in the copy"
  openssl cms -cmsout -print -in "$W/in.eml" | grep -q "serialNumber: $gserial\$" || fail "serial check is vacuous"
  for m in alice bob erin; do
    openssl cms -decrypt -in "$f" -recip "$certs/$m@example.org.pem" -inkey "$certs/$m@example.org.key" \
      -out "$W/dec.txt" 2>"$W/cms.err" || fail "$m cannot decrypt with a stock openssl: $(cat "$W/cms.err")"
    grep -q 'secret body for member certs test' "$W/dec.txt" || fail "wrong plaintext for $m"
  done
  content_of "$f" "$W/ct.out" >"$W/iv.out"
  cmp -s "$W/ct.in" "$W/ct.out" && cmp -s "$W/iv.in" "$W/iv.out" || fail "encrypted content changed"
done
# a removed member cannot read the next message
gs member remove eng erin@example.org >/dev/null
xp_encrypt "$certs/group.pem" "$W/in2.eml" "after removal"
xp deliver --list $L <"$W/in2.eml" || fail "deliver refused"
xp_drain
f=$(grep -l '^Subject: after removal' "$W"/smtp/new/* | head -1)
[ -n "$f" ] || fail "second message not delivered"
openssl cms -decrypt -in "$f" -recip "$certs/erin@example.org.pem" -inkey "$certs/erin@example.org.key" \
  -out "$W/dec.txt" 2>/dev/null && fail "a removed member can still decrypt"
openssl cms -decrypt -in "$f" -recip "$certs/bob@example.org.pem" -inkey "$certs/bob@example.org.key" \
  -out "$W/dec.txt" 2>/dev/null || fail "bob cannot decrypt the second message"
xp_spool_empty
echo "exploder member-certs: ok"
