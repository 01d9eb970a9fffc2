#!/usr/bin/env bash
# What the copies look like on the wire, through a real SMTP server on
# loopback (tests/lib/smtpd.py):
#  - a post without a Message-ID (a script's openssl cms and sendmail)
#    gets one of the exploder's, in the list's domain, the same in every
#    copy and every batch; each such post its own; a post's own is kept.
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
for f in a b own; do
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
n=$({ grep -l '^Message-ID: <own.1@example.org>$' $(copies) || true; } | wc -l)
[ "$n" = 2 ] || fail "a post's own Message-ID is kept in $n of 2 transactions"
xp_spool_empty

echo "exploder message form: ok"
