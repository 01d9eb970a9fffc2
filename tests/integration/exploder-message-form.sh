#!/usr/bin/env bash
# What the copies look like on the wire, through a real SMTP server on
# loopback (tests/lib/smtpd.py: aiosmtpd, which holds SMTP to its
# 1000-octet lines, 500 "Line too long", as strict relays do):
#  - a post without a Message-ID (a script's openssl cms and sendmail)
#    gets one of the exploder's, in the list's domain, the same in every
#    copy and every batch; each such post its own; a post's own is kept,
#    an empty one replaced;
#  - forward mode: an S/MIME body of base64 without line breaks goes out
#    in lines of 76 (the same CMS), so the relay takes every copy, with
#    a signature after it ("-- ") as it came; a footer inside it is
#    refused for the footer, as groupmail names it; a plain
#    post with a body line over 998 octets is refused at deliver (65,
#    5.6.0, saying why), nothing spooled; on a list that takes only
#    encrypted mail it is refused for that (77), not for its long line.
set -euo pipefail
. "$(dirname "$0")/exploder-lib.sh"
xp_setup message-form

xp_cert group eng@lists.example.org
xp_smtpd_start "$W/smtp"
xp_conf "smtp://127.0.0.1:$SMTPD_PORT" "batch_size = 2" "starttls = no"
L=eng@lists.example.org
xp list create $L --group-server https://127.0.0.1:1 --group eng --mode forward --group-cert "$W/group.pem" \
  --allow-unencrypted >/dev/null
members="m1@example.net m2@example.net m3@example.net"
xp list add $L $members >/dev/null
copies() { $PY "$SMTPD_PY" --dir "$W/smtp" --list-messages; }

# 1. no Message-ID: one of the list's, in every copy: 3 members in
# batches of 2 are two SMTP transactions, which smtpd.py stores as two
# messages (through Postfix, each would have got its own Message-ID)
xp_encrypt "$W/group.pem" "$W/a.eml" "no id a"
grep -qi '^Message-ID:' "$W/a.eml" && fail "openssl cms wrote a Message-ID: the test needs a post without"
xp_encrypt "$W/group.pem" "$W/b.eml" "no id b"
{ printf 'Message-ID: <own.1@example.org>\n'; sed 's/^Subject: no id a$/Subject: own id/' "$W/a.eml"; } >"$W/own.eml"
# an empty Message-ID names nothing (and a relay adds none when the field
# is there): the list's takes its place, not a second one beside it
{ printf 'Message-Id: \n'; sed 's/^Subject: no id a$/Subject: empty id/' "$W/a.eml"; } >"$W/empty.eml"
for f in a b own empty; do
  xp deliver --list $L --sender alice@example.org <"$W/$f.eml" 2>>"$W/deliver.log" ||
    fail "deliver refused $f: $(tail -1 "$W/deliver.log")"
done
xp_drain
ids() { # the Message-ID lines of the copies whose Subject is $1
  for c in $(copies); do
    grep -q "^Subject: $1\$" "$c" || continue
    [ "$(grep -ci '^Message-ID:' "$c")" = 1 ] || fail "copy of '$1' has $(grep -ci '^Message-ID:' "$c") Message-IDs"
    grep -i '^Message-ID:' "$c"
  done | sort | uniq -c
}
ida=$(ids "no id a")
[ "$(echo "$ida" | wc -l)" = 1 ] || fail "the copies of one post carry different Message-IDs: $ida"
echo "$ida" | grep -Eq '^ +2 Message-ID: <[A-Za-z0-9._-]{20,}@lists\.example\.org>$' ||
  fail "want one Message-ID of the list's domain in both transactions: $ida"
idb=$(ids "no id b")
echo "$idb" | grep -Eq '^ +2 Message-ID: <[A-Za-z0-9._-]{20,}@lists\.example\.org>$' || fail "post b: $idb"
[ "${ida#* 2 }" != "${idb#* 2 }" ] || fail "two posts got the same Message-ID: $ida"
ide=$(ids "empty id")
echo "$ide" | grep -Eq '^ +2 Message-ID: <[A-Za-z0-9._-]{20,}@lists\.example\.org>$' ||
  fail "a post with an empty Message-ID: $ide"
n=$({ grep -l '^Message-ID: <own.1@example.org>$' $(copies) || true; } | wc -l)
[ "$n" = 2 ] || fail "a post's own Message-ID is kept in $n of 2 transactions"
xp_spool_empty

# 2. forward mode and lines over 998 octets
rm -rf "$W/smtp/new" && mkdir -p "$W/smtp/new"
{ printf 'Content-Type: text/plain\n\nsecret body for one long line\n'; seq 1 400; } >"$W/p.txt"
openssl cms -encrypt -aes-256-cbc -recip "$W/group.pem" -keyopt rsa_padding_mode:oaep -outform DER \
  -in "$W/p.txt" -out "$W/p.der"
{ printf 'From: alice@example.org\nTo: %s\nSubject: one line\nMIME-Version: 1.0\n' $L
  printf 'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\n'
  printf 'Content-Transfer-Encoding: base64\n\n'; base64 -w0 "$W/p.der"; printf '\n'; } >"$W/oneline.eml"
[ "$(awk '{ if (length($0) > m) m = length($0) } END { print m }' "$W/oneline.eml")" -gt 998 ] ||
  fail "the test's base64 line is not over 998 octets"
xp deliver --list $L --sender alice@example.org <"$W/oneline.eml" 2>>"$W/deliver.log" ||
  fail "deliver refused a base64 body without line breaks: $(tail -1 "$W/deliver.log")"
xp_drain
got=$({ grep -l '^Subject: one line$' $(copies) || true; } | wc -l)
[ "$got" = 2 ] || fail "the relay took $got of 2 transactions of a base64 body without line breaks: $(tail -3 "$W/run.log")"
for c in $(copies); do
  [ "$(awk '{ if (length($0) > m) m = length($0) } END { print m }' "$c")" -le 998 ] || fail "a line over 998 in $c"
  openssl cms -decrypt -recip "$W/group.pem" -inkey "$W/group.key" -in "$c" | grep -q 'secret body for one long line' ||
    fail "the re-wrapped copy does not decrypt with the group key"
done
xp_spool_empty
# the encoding named as RFC 2045 lets it be, with a comment after it: base64
# all the same (as the S/MIME reader takes it), re-wrapped, not refused as
# a body with a long line that should be sent in base64
sed 's/^Content-Transfer-Encoding: base64$/Content-Transfer-Encoding: BASE64 (no line breaks)/' "$W/oneline.eml" \
  >"$W/oneline-comment.eml"
xp deliver --list $L --sender alice@example.org <"$W/oneline-comment.eml" 2>"$W/deliver.err" ||
  fail "deliver refused a base64 body without line breaks whose encoding has a comment: $(cat "$W/deliver.err")"
xp_drain
xp_spool_empty
# a signature after it ("-- ", where S/MIME readers stop): re-wrapped, the
# signature kept as it came, not refused as a long line
rm -rf "$W/smtp/new" && mkdir -p "$W/smtp/new"
{ sed 's/^Subject: one line$/Subject: one line signed/' "$W/oneline.eml"; printf -- '-- \nAlice, by cron\n'; } >"$W/oneline-sig.eml"
xp deliver --list $L --sender alice@example.org <"$W/oneline-sig.eml" 2>"$W/deliver.err" ||
  fail "deliver refused a base64 body without line breaks and a signature: $(cat "$W/deliver.err")"
xp_drain
for c in $({ grep -l '^Subject: one line signed$' $(copies) || true; }); do
  [ "$(awk '{ if (length($0) > m) m = length($0) } END { print m }' "$c")" -le 998 ] || fail "a line over 998 in $c"
  tail -2 "$c" | tr -d '\r' | diff -q - <(printf -- '-- \nAlice, by cron\n') >/dev/null || fail "the signature did not reach $c as it came"
  openssl cms -decrypt -recip "$W/group.pem" -inkey "$W/group.key" -in "$c" | grep -q 'secret body for one long line' ||
    fail "the re-wrapped copy with a signature does not decrypt with the group key"
  signed=$((${signed:-0} + 1))
done
[ "${signed:-0}" = 2 ] || fail "the relay took ${signed:-0} of 2 transactions of a base64 body without line breaks and a signature"
xp_spool_empty
# a footer added inside the base64: refused for the footer, as groupmail
# says it, not "send it in base64"
{ cat "$W/oneline.eml"; printf '\nThis email was scanned.\n'; } >"$W/oneline-footer.eml"
rc=0
xp deliver --list $L --sender alice@example.org <"$W/oneline-footer.eml" 2>"$W/deliver.err" || rc=$?
[ "$rc" = 65 ] && grep -q "^5\.6\.0 $L: .*its S/MIME part holds text that is not base64" "$W/deliver.err" ||
  fail "a footer inside a base64 body without line breaks: exit $rc, $(cat "$W/deliver.err")"
long=$(head -c 1500 /dev/zero | tr '\0' x)
printf 'From: alice@example.org\nTo: %s\nSubject: plain long\n\nshort\n%s\n' $L "$long" >"$W/plainlong.eml"
rc=0
xp deliver --list $L --sender alice@example.org <"$W/plainlong.eml" 2>"$W/deliver.err" || rc=$?
[ "$rc" = 65 ] || fail "a plain post with a 1500-octet body line: exit $rc, want 65 ($(cat "$W/deliver.err"))"
grep -q "^5\.6\.0 $L: malformed message: its body has a line longer than 998 octets" "$W/deliver.err" ||
  fail "long body line reason: $(cat "$W/deliver.err")"
[ "$(wc -l <"$W/deliver.err")" = 1 ] || fail "stderr is not one line"
xp_spool_empty
# the same post to a forward list that takes only encrypted mail: told
# that (77), not sent to re-encode its long line only to be refused again
E=enc@lists.example.org
xp list create $E --group-server https://127.0.0.1:1 --group eng --mode forward --group-cert "$W/group.pem" >/dev/null
xp list add $E m1@example.net >/dev/null
sed "s/^To: .*/To: $E/" "$W/plainlong.eml" >"$W/plainlong-enc.eml"
rc=0
xp deliver --list $E --sender alice@example.org <"$W/plainlong-enc.eml" 2>"$W/deliver.err" || rc=$?
[ "$rc" = 77 ] || fail "a plain post with a long line to an encrypted-only list: exit $rc, want 77 ($(cat "$W/deliver.err"))"
grep -q "longer than 998" "$W/deliver.err" && fail "encrypted-only list gave the long-line reason: $(cat "$W/deliver.err")"
xp_spool_empty
echo "exploder message form: ok"
