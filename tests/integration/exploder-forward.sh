#!/usr/bin/env bash
# exploder forward mode (option A) end to end: a stock S/MIME message
# (openssl cms) encrypted to the list's group certificate goes in through
# `exploder deliver`, out through a real SMTP server on loopback in batches,
# with List-* headers added and the encrypted body byte-identical; the
# copy still decrypts with the group key. Then the same with a maildir: target,
# sent to the list as eng+tag@ (Postfix's recipient_delimiter).
set -euo pipefail
. "$(dirname "$0")/exploder-lib.sh"
xp_setup forward

xp_cert group eng@lists.example.org
xp_smtpd_start "$W/smtp"
xp_conf "smtp://127.0.0.1:$SMTPD_PORT" "batch_size = 2" "starttls = no"
L=eng@lists.example.org
xp list create $L --group-server https://127.0.0.1:1 --group eng --mode forward --group-cert "$W/group.pem" >/dev/null
members="m1@example.net m2@example.net m3@example.net m4@example.net m5@example.net"
xp list add $L $members >/dev/null
xp list show $L | grep -q '^members: 5$' || fail "list show: 5 members expected"

xp_encrypt "$W/group.pem" "$W/in.eml" "forward test"
xp deliver --list $L --sender alice@example.org <"$W/in.eml" 2>>"$W/deliver.log" || fail "deliver refused: $(cat "$W/deliver.log")"
xp_drain

# every member exactly once, in ceil(5/2) = 3 SMTP transactions
got=$(xp_accepted "$W/smtp" | sort | tr '\n' ' ')
[ "$got" = "$members " ] || fail "accepted recipients: '$got'"
tx=$(cut -d' ' -f1 "$W/smtp/envelope.log" | sort -u | wc -l)
[ "$tx" = 3 ] || fail "expected 3 SMTP transactions for 5 recipients in batches of 2, got $tx"
grep -q ' eng-owner@lists.example.org ' "$W/smtp/envelope.log" || fail "MAIL FROM should be eng-owner@"

body() { sed -n '/^$/,$p' "$1"; }
for f in $($PY "$SMTPD_PY" --dir "$W/smtp" --list-messages); do
  grep -q '^List-Id: <eng.lists.example.org>$' "$f" || fail "no List-Id in $f"
  grep -q '^List-Post: <mailto:eng@lists.example.org>$' "$f" || fail "no List-Post"
  grep -q '^List-Unsubscribe: <mailto:eng-request@lists.example.org?subject=unsubscribe>$' "$f" || fail "no List-Unsubscribe"
  grep -q '^Subject: forward test$' "$f" || fail "original headers lost"
  cmp -s <(body "$W/in.eml") <(body "$f") || fail "encrypted body changed in $f"
  openssl cms -decrypt -recip "$W/group.pem" -inkey "$W/group.key" -in "$f" | grep -q 'secret body for forward test' \
    || fail "forwarded copy does not decrypt with the group key"
done
xp_spool_empty

# maildir: target (local demo delivery); the list's address with a +tag,
# as Postfix passes it (${recipient}) once its recipient_delimiter "+"
# (Debian's default) has taken eng+tag@ for eng@, is mail to the list
xp_conf "maildir:$W/md"
xp_encrypt "$W/group.pem" "$W/in2.eml" "maildir test"
xp deliver --list eng+tag@lists.example.org <"$W/in2.eml" 2>>"$W/deliver.log" ||
  fail "deliver (maildir, eng+tag@) refused: $(tail -1 "$W/deliver.log")"
xp_drain
for m in $members; do
  f=$(find "$W/md/$m/new" -type f)
  [ "$(echo "$f" | wc -l)" = 1 ] || fail "maildir of $m: want one message"
  grep -q '^List-Id: <eng.lists.example.org>$' "$f" || fail "maildir copy lacks List-Id"
  cmp -s <(body "$W/in2.eml") <(body "$f") || fail "maildir body changed"
done
[ -z "$(find "$W/md" -path "$W/md/*/tmp/*" -type f)" ] || fail "maildir tmp/ not empty"
xp_spool_empty
# a header line longer than 16 KiB (a To: of 800 addresses a client did not
# fold; Postfix hands it on whole): taken, and the copies carry it folded
# within SMTP's 1000-octet lines (smtpd.py, like some relays, refuses
# longer ones with 500), the same field once unfolded
xp_conf "smtp://127.0.0.1:$SMTPD_PORT" "starttls = no"
to=$(for i in $(seq 1 800); do printf 'user%d@example.net, ' "$i"; done)last@example.net
{ printf 'To: %s\n' "$to"; cat "$W/in2.eml"; } >"$W/long.eml"
xp deliver --list $L <"$W/long.eml" 2>>"$W/deliver.log" ||
  fail "deliver refused a message with a long header line: $(tail -1 "$W/deliver.log")"
xp_drain
grep -q 'recipient refused' "$W/run.log" && fail "the relay refused a copy: $(grep 'recipient refused' "$W/run.log" | tail -1)"
n=0
for f in $(grep -l '^To: user1@' $($PY "$SMTPD_PY" --dir "$W/smtp" --list-messages)); do
  awk 'length($0) > 998 { exit 1 }' "$f" || fail "a line over 998 octets in $f"
  $PY -c 'import re, sys
h = open(sys.argv[1], newline="").read().split("\n\n", 1)[0]
print([l for l in re.sub(r"\r?\n(?=[ \t])", "", h).split("\n") if l.startswith("To: ")][0].rstrip("\r"))' "$f" \
    >"$W/to.got"
  [ "$(cat "$W/to.got")" = "To: $to" ] || fail "the long To: field did not reach $f whole"
  n=$((n + $(grep -c "^$(basename "$f") " "$W/smtp/envelope.log")))
done
[ "$n" = 5 ] || fail "the long-header post reached $n members, want 5"
xp_spool_empty
echo "exploder forward: ok"
