#!/usr/bin/env bash
# groupmail-send-smtp.sh BIN SRC: `groupmail send` against an SMTP server
# that misbehaves (tests/lib/hostile_smtpd.py). Each outcome has the exit
# code groupmail(1) documents, so a script knows whether to send again:
#   0  the server took it (250 to the end of DATA);
#   3  a 5xx reply: refused (MAIL, RCPT, DATA or the end of DATA);
#   4  temporary: a 4xx reply, a connection refused or lost (mid-DATA, or
#      before the reply to the end of DATA), a greeting that is not SMTP.
# (Before, everything but a refused connection and a timeout was 3, and the
# end of DATA's 5xx read "Weird server reply".) The error is one line of
# printable ASCII that quotes the failing reply, whatever the server sent
# (its texts carry terminal escape sequences).
set -euo pipefail
BIN=$1 SRC=$2
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/gm-send-smtp.XXXXXX")
srv=
cleanup() {
  [ -n "$srv" ] && { kill "$srv" 2>/dev/null || true; wait "$srv" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# a private HOME: no groupmail configuration of the user running the tests
export HOME=$work XDG_CONFIG_HOME= GROUPMAIL_CONFIG=

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=eng -keyout "$work/g.key" -out "$work/g.pem" 2>/dev/null
printf 'Content-Type: text/plain\n\nhello\n' |
  openssl cms -encrypt -aes-128-cbc -recip "$work/g.pem" -subject hi -out "$work/m.eml"
mkdir -p "$work/smtp"
echo ok >"$work/mode"
/usr/bin/python3 "$SRC/tests/lib/hostile_smtpd.py" --dir "$work/smtp" --port-file "$work/port" \
  --mode-file "$work/mode" 2>"$work/smtpd.log" &
srv=$!
for _ in $(seq 1 100); do [ -s "$work/port" ] && break; sleep 0.1; done
[ -s "$work/port" ] || fail "hostile_smtpd.py did not start: $(cat "$work/smtpd.log")"
url=smtp://127.0.0.1:$(cat "$work/port")

# send MODE RCPT WANT-EXIT WANT-TEXT
send() {
  local rc=0
  echo "$1" >"$work/mode"
  "$BIN/groupmail" send --smtp "$url" --to "$2" --from alice@example.org --in "$work/m.eml" --timeout 10 \
    2>"$work/err" || rc=$?
  [ "$rc" = "$3" ] || fail "$1: exit $rc, want $3: $(cat -v "$work/err")"
  [ "$rc" = 0 ] && return 0
  [ "$(wc -l <"$work/err")" = 1 ] || fail "$1: not one line: $(cat -v "$work/err")"
  LC_ALL=C grep -q '[^ -~]' "$work/err" && fail "$1: not printable ASCII: $(cat -v "$work/err")"
  grep -qF -- "$4" "$work/err" || fail "$1: want '$4' in: $(cat -v "$work/err")"
  echo "ok: $1 -> $rc"
}
send ok eng@example.org 0
[ "$(ls "$work/smtp/new" | wc -l)" = 1 ] || fail "the accepted message was not stored"
# --to as a list with spaces around its addresses: the RCPT TOs are the
# addresses the check took, without the spaces
send ok " eng@example.org , ops@example.org " 0
for a in eng@example.org ops@example.org; do
  { grep -q "RCPT TO:<$a>" "$work/smtp/transcript.log" && ! grep -q "RCPT TO:<$a " "$work/smtp/transcript.log"; } ||
    fail "RCPT TO of $a: $(grep RCPT "$work/smtp/transcript.log" | cat -v)"
done
rm "$work/smtp/new/$(ls -t "$work/smtp/new" | head -n 1)"
# --to and --from name addresses that exist (a list, a member), read by the
# exploder's rule for those (exploder(1)): one an older rule stored, a '_'
# in the domain or a dot twice, is sent to and from (it was exit 2, by the
# rule for new records)
"$BIN/groupmail" send --smtp "$url" --to old@lists_x.example.org --from al..ice@mail_x.example.org \
  --in "$work/m.eml" --timeout 10 2>"$work/err" || fail "send to a list stored under an older rule: $(cat -v "$work/err")"
grep -q "RCPT TO:<old@lists_x.example.org>" "$work/smtp/transcript.log" &&
  grep -q "MAIL FROM:<al..ice@mail_x.example.org>" "$work/smtp/transcript.log" ||
  fail "older-rule addresses: $(grep -E 'RCPT|MAIL' "$work/smtp/transcript.log" | cat -v)"
rm "$work/smtp/new/$(ls -t "$work/smtp/new" | head -n 1)"
# A To and From of the input's header written in RFC 5322's obsolete
# syntax ('To :', white space before the colon), which readers take: they
# are the message's To and From, not added again (a second To: was).
openssl cms -encrypt -aes-128-cbc -recip "$work/g.pem" -to eng@example.org -from alice@example.org -subject hi \
  -in <(printf 'Content-Type: text/plain\n\nhello\n') | sed -e 's/^To:/To :/' -e 's/^From:/From\t:/' >"$work/obs.eml"
grep -q '^To :' "$work/obs.eml" || fail "no 'To :' in the test message: $(head -5 "$work/obs.eml")"
echo ok >"$work/mode"
ls "$work/smtp/new" >"$work/new.before"
"$BIN/groupmail" send --smtp "$url" --to eng@example.org --from alice@example.org --in "$work/obs.eml" --timeout 10 \
  2>"$work/err" || fail "send of a message with 'To :': $(cat -v "$work/err")"
got=$work/smtp/new/$(ls "$work/smtp/new" | grep -vxFf "$work/new.before")
hdr=$(tr -d '\r' <"$got" | sed -e '/^$/q')
[ "$(grep -ciE '^to[[:blank:]]*:' <<<"$hdr")" = 1 ] && [ "$(grep -ciE '^from[[:blank:]]*:' <<<"$hdr")" = 1 ] ||
  fail "'To :' and 'From :' in the input: the header sent is: $(cat -v <<<"$hdr")"
rm "$got"
echo "ok: an input 'To :' and 'From :' are its To and From"
send mail-5xx eng@example.org 3 "refused the message: 550 5.7.1 sender refused for good"
send per-rcpt p5@example.org 3 "refused the message: 550 5.1.1 no such user"
send data-5xx eng@example.org 3 "refused the message: 554 5.3.0 no DATA for you"
send end-5xx eng@example.org 3 'refused the message: 554 5.6.0 message ?[31mrefused?[0m "quoted"'
send mail-4xx eng@example.org 4 "deferred the message (temporary, send it again later): 451 4.3.0"
send per-rcpt t4@example.org 4 "deferred the message (temporary, send it again later): 450 4.2.1"
send data-4xx eng@example.org 4 "deferred the message (temporary, send it again later): 451 4.3.0 not now"
send end-4xx eng@example.org 4 "deferred the message (temporary, send it again later): 451 4.3.0 could not store"
send drop-mid-data eng@example.org 4 "SMTP delivery failed (connection refused, lost or timed out"
send drop-before-reply eng@example.org 4 "last reply: 354"
send garbage-greeting eng@example.org 4 "last reply: hello there"
[ "$(ls "$work/smtp/new" | wc -l)" = 1 ] || fail "a refused or failed message was stored"
kill "$srv"; wait "$srv" 2>/dev/null || true; srv=
send ok eng@example.org 4 "connection refused, lost or timed out"

# smtps://: the mail server's certificate is checked against [smtp] cacert
# (--smtp-cacert) or the system's CAs, never against --cacert / [server]
# cacert, the CA of the group servers (before, that one replaced the
# system's CAs, so a public smtps server failed for anyone with a private
# group server CA)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=mail-ca \
  -keyout "$work/mca.key" -out "$work/mca.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
  -keyout "$work/mail.key" -out "$work/mail.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$work/mail.ext"
openssl x509 -req -in "$work/mail.csr" -CA "$work/mca.pem" -CAkey "$work/mca.key" -CAcreateserial -days 2 \
  -extfile "$work/mail.ext" -out "$work/mail.pem" 2>/dev/null
mkdir -p "$work/smtps"
rm -f "$work/port"
/usr/bin/python3 "$SRC/tests/lib/smtpd.py" --dir "$work/smtps" --port-file "$work/port" --implicit-tls \
  --tls-cert "$work/mail.pem" --tls-key "$work/mail.key" 2>"$work/smtps.log" &
srv=$!
for _ in $(seq 1 100); do [ -s "$work/port" ] && break; sleep 0.1; done
[ -s "$work/port" ] || fail "smtpd.py --implicit-tls did not start: $(cat "$work/smtps.log")"
url=smtps://127.0.0.1:$(cat "$work/port")
rc=0
"$BIN/groupmail" send --smtp "$url" --cacert "$work/mca.pem" --to eng@example.org --from alice@example.org \
  --in "$work/m.eml" --timeout 10 2>"$work/err" || rc=$?
[ "$rc" = 4 ] && grep -q 'certificate' "$work/err" ||
  fail "smtps verified with --cacert (the group servers' CA): exit $rc: $(cat "$work/err")"
"$BIN/groupmail" send --smtp "$url" --smtp-cacert "$work/mca.pem" --cacert "$work/g.pem" --to eng@example.org \
  --from alice@example.org --in "$work/m.eml" --timeout 10 2>"$work/err" ||
  fail "smtps with --smtp-cacert: $(cat "$work/err")"
# an --smtp-cacert that cannot be read is a local error (1), not "send it
# again later" (4): a script retrying on 4 would retry forever
rc=0
"$BIN/groupmail" send --smtp "$url" --smtp-cacert "$work/no-such-ca.pem" --to eng@example.org \
  --from alice@example.org --in "$work/m.eml" --timeout 10 2>"$work/err" || rc=$?
[ "$rc" = 1 ] && [ "$(wc -l < "$work/err")" = 1 ] ||
  fail "an unreadable --smtp-cacert: exit $rc, wanted 1: $(cat "$work/err")"
printf '[smtp]\nrelay = %s\ncacert = %s\nfrom = alice@example.org\n' "$url" "$work/mca.pem" >"$work/gm.conf"
"$BIN/groupmail" send -c "$work/gm.conf" --to eng@example.org --in "$work/m.eml" --timeout 10 2>"$work/err" ||
  fail "smtps with [smtp] cacert: $(cat "$work/err")"
[ "$(ls "$work/smtps/new" | wc -l)" = 2 ] || fail "want the two smtps messages stored"
echo "ok: smtps:// verified with --smtp-cacert / [smtp] cacert, not --cacert"
echo "groupmail send over SMTP: ok"
