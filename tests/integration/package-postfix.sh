# package-postfix.sh: docs/postfix.md run step by step against the
# installed exploder package and a private Postfix instance (sourced by
# package-deb-system.sh, which has installed the packages and started the
# group server: W, SRC, GSPORT, MEMBERS, fail, ok, take_port are its).
#
# The instance (tests/lib/postfix.sh) has its own configuration, queue and
# data directories under $W/postfix, listens on free loopback ports only,
# is started and stopped here as root, and delivers example.org to
# maildirs (virtual(8)); nothing else leaves it (other domains bounce, as
# an unknown user would). Every `sh` block of the guide is run in order,
# as written, with these substitutions only:
#   /etc/postfix              -> the instance's configuration directory
#   postconf, postmap, postfix -> the same with -c that directory
#   127.0.0.1:25, :10025      -> the instance's two free ports
#   groupsrv.example.org:8443 -> localhost and the test server's port
# The `console` block (systemctl enable exploder) is the unit's job; here
# its ExecStart runs with --once as the exploder user.

. "$SRC/tests/lib/postfix.sh"
take_port PF_SMTP PF_RELAY
pf_init "$W/postfix" "$PF_SMTP"
MAIL=$PFX/mail
mkdir -p "$MAIL" "$W/admin"
chown nobody:nogroup "$MAIL"
postfix_cleanup() { pf_stop; }

cat >>"$PFX/etc/main.cf" <<EOF
smtputf8_enable = no
virtual_mailbox_domains = example.org
virtual_mailbox_base = $MAIL
virtual_mailbox_maps = inline:{ alice@example.org=alice/, bob@example.org=bob/, listmaster@example.org=listmaster/ }
virtual_uid_maps = static:$(id -u nobody)
virtual_gid_maps = static:$(getent group nogroup | cut -d: -f3)
default_transport = nouser
EOF
# The services the guide's relay and delivery need beside those
# tests/lib/postfix.sh sets up.
{
  for s in "tlsmgr unix - - n 1000? 1 tlsmgr" "proxywrite unix - - n - 1 proxymap" "smtp unix - - n - - smtp" \
    "relay unix - - n - - smtp" "local unix - n n - - local" "virtual unix - n n - - virtual" \
    "lmtp unix - - n - - lmtp"; do
    echo "$s"
  done
  # Nothing leaves the instance: other domains are accepted and then
  # bounced as "user unknown" (exit 67), as a remote server would.
  echo "nouser unix - n n - - pipe flags=q user=nobody argv=/usr/bin/python3 -c { raise SystemExit(67) }"
} >>"$PFX/etc/master.cf"
pf_start "$W/postfix-start.log"
ok "private Postfix on 127.0.0.1:$PF_SMTP (config $PFX/etc)"

# ---- the guide ----
{
  cat <<EOF
set -euo pipefail
postconf() { command postconf -c "$PFX/etc" "\$@"; }
postmap() { command postmap -c "$PFX/etc" "\$@"; }
postfix() { command postfix -c "$PFX/etc" "\$@"; }
EOF
  awk '/^```sh$/ { run = 1; print "# ---- block " ++n; next } /^```/ { run = 0; next } run' "$SRC/docs/postfix.md" |
    sed -e "s|/etc/postfix|$PFX/etc|g" -e "s|127\.0\.0\.1:10025|127.0.0.1:$PF_RELAY|g" \
      -e "s|smtp://127\.0\.0\.1:25 |smtp://127.0.0.1:$PF_SMTP |g" -e "s|groupsrv\.example\.org:8443|localhost:$GSPORT|g"
} >"$W/guide.sh"
blocks=$(grep -c '^# ---- block' "$W/guide.sh")
[ "$blocks" -ge 8 ] || fail "only $blocks sh blocks found in docs/postfix.md"
esc='127\.0\.0\.1:(25|10025)\b|:8443|/etc/postfix'
grep -Eq "$esc" "$W/guide.sh" && fail "a guide line escaped the substitutions: $(grep -En "$esc" "$W/guide.sh")"
(cd "$W/admin" && bash "$W/guide.sh") >"$W/guide.log" 2>&1 ||
  fail "docs/postfix.md, run as written: $(tail -20 "$W/guide.log")"
ok "docs/postfix.md: $blocks sh blocks ran"

# Files the guide installed: owners and modes as it says.
for f in "exploder.conf root:exploder 640" "exploder.key root:exploder 640" "exploder.pem root:root 644" \
  "server-ca.pem root:root 644"; do
  set -- $f
  [ "$(stat -c '%U:%G %a' "/etc/groupsrv/$1")" = "$2 $3" ] || fail "/etc/groupsrv/$1: $(stat -c '%U:%G %a' "/etc/groupsrv/$1")"
done
grep -q "^message_size_limit = 33554432$" "$PFX/etc/main.cf" || fail "message_size_limit line: $(grep message_size "$PFX/etc/main.cf")"

# Waits until Postfix has logged a line matching the pattern.
pf_wait_log() {
  for _ in $(seq 1 300); do
    grep -q "$1" "$PFX/maillog" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "Postfix never logged '$1': $(tail -15 "$PFX/maillog")"
}
# Runs the queue runner (the unit's ExecStart, with --once) until the spool is empty.
pf_drain() {
  local rc
  for _ in $(seq 1 30); do
    rc=0
    runuser -u exploder -- /usr/bin/exploder -c /etc/groupsrv/exploder.conf run --once 2>>"$W/runner.err" || rc=$?
    [ "$rc" = 0 ] && return 0
    [ "$rc" = 75 ] || fail "exploder run --once: exit $rc: $(tail -5 "$W/runner.err")"
    sleep 1
  done
  fail "the exploder's queue did not drain: $(tail -5 /var/log/exploder/exploder.log)"
}
# pf_wait_mail BOX SUBJECT: waits for a message with that subject in the maildir, prints its path.
pf_wait_mail() {
  local f
  for _ in $(seq 1 300); do
    f=$(grep -l "^Subject: $2\$" "$MAIL/$1/new/"* 2>/dev/null | head -1 || true)
    [ -n "$f" ] && { echo "$f"; return 0; }
    sleep 0.1
  done
  fail "no '$2' in $1's mailbox: $(ls "$MAIL/$1/new" 2>&1); $(tail -10 "$PFX/maillog")"
}
# Messages Postfix has piped to the exploder so far.
pf_piped() { grep -c 'relay=exploder, .*status=sent (delivered via exploder service)' "$PFX/maillog" || true; }
# pf_send_encrypted SUBJECT FILE: a stock S/MIME message to the list over
# SMTP; once Postfix has piped it to the exploder, the runner sends it on.
pf_send_encrypted() {
  local before
  before=$(pf_piped)
  printf 'Content-Type: text/plain\n\nsecret words: %s\n' "$1" |
    openssl cms -encrypt -aes-256-cbc -recip "$W/admin/eng.pem" -keyopt rsa_padding_mode:oaep \
      -from alice@example.org -to eng@lists.example.org -subject "$1" >"$2"
  curl -v -sS "smtp://127.0.0.1:$PF_SMTP" --mail-from alice@example.org --mail-rcpt eng@lists.example.org -T "$2" ||
    fail "SMTP to the list"
  for _ in $(seq 1 300); do
    [ "$(pf_piped)" -gt "$before" ] && break
    sleep 0.1
  done
  [ "$(pf_piped)" -gt "$before" ] || fail "Postfix did not pipe '$1' to the exploder: $(tail -10 "$PFX/maillog")"
  pf_drain
}

# The encrypted message: piped to exploder deliver, out through the runner.
pf_wait_log 'to=<eng@lists.example.org>, relay=exploder, .*status=sent (delivered via exploder service)'
pf_drain
for m in alice bob; do
  f=$(pf_wait_mail "$m" "first post")
  grep -q '^Return-Path: <eng-owner@lists.example.org>$' "$f" || fail "$m's copy: envelope sender $(grep Return-Path "$f")"
  grep -q '^List-Unsubscribe: <mailto:eng-request@lists.example.org?subject=unsubscribe>$' "$f" ||
    fail "$m's copy: no List-Unsubscribe"
  openssl cms -decrypt -in "$f" -recip "$MEMBERS/$m@example.org.pem" -inkey "$MEMBERS/$m@example.org.key" \
    -out "$W/$m.txt" 2>"$W/cms.err" || fail "$m cannot decrypt her copy: $(cat "$W/cms.err")"
  grep -q 'hello list, this is encrypted' "$W/$m.txt" || fail "$m's plaintext: $(cat "$W/$m.txt")"
done
ok "S/MIME over SMTP -> pipe -> exploder deliver -> runner -> Postfix -> maildirs: alice and bob decrypt"

# The plain message: bounced once, with the documented status and the plain reason.
pf_wait_log 'to=<eng@lists.example.org>, relay=exploder, .*status=bounced'
b=$(pf_wait_mail alice "Undelivered Mail Returned to Sender")
sleep 1 # a second bounce, if any, would be in the same queue run
[ "$(grep -l '^Subject: Undelivered Mail Returned to Sender$' "$MAIL/alice/new/"* | wc -l)" = 1 ] ||
  fail "want exactly one bounce to alice"
grep -q '^From: Mail Delivery System <MAILER-DAEMON@mail.example.org>$' "$b" || fail "bounce sender: $(grep '^From:' "$b")"
dsn=$(/usr/bin/python3 - "$b" <<'EOF'
import email, sys
msg = email.message_from_file(open(sys.argv[1]))
for part in msg.walk():
    if part.get_content_type() == "message/delivery-status":
        for fields in part.get_payload():
            if fields.get("Diagnostic-Code"):
                print(fields["Status"], "|", " ".join(fields["Diagnostic-Code"].split()))
EOF
)
[ "$dsn" = "5.7.1 | x-unix; eng@lists.example.org: message is not encrypted (CMS EnvelopedData)" ] ||
  fail "bounce status and reason: '$dsn'"
grep -q 'level=' "$b" && fail "the diagnostic log leaked into the bounce: $(grep 'level=' "$b")"
grep -q 'msg="refused" list=eng@lists.example.org reason="message is not encrypted' /var/log/exploder/exploder.log ||
  fail "the refusal is not in the exploder's log"
grep -l '^Subject: plain$' "$MAIL"/bob/new/* >/dev/null 2>&1 && fail "the plain message reached a member"
ok "plain mail bounced once: Status 5.7.1, 'eng@lists.example.org: message is not encrypted (CMS EnvelopedData)'"

# The owner and request addresses reach the list master; other addresses
# in the list domain are refused at RCPT.
for a in eng-owner eng-request; do
  printf 'From: bob@example.org\nSubject: to %s\n\nhello\n' "$a" >"$W/$a.eml"
  curl -v -sS "smtp://127.0.0.1:$PF_SMTP" --mail-from bob@example.org --mail-rcpt "$a@lists.example.org" -T "$W/$a.eml" ||
    fail "SMTP to $a@"
  pf_wait_mail listmaster "to $a" >/dev/null
done
curl -v -sS "smtp://127.0.0.1:$PF_SMTP" --mail-from bob@example.org --mail-rcpt nosuch@lists.example.org \
  -T "$W/eng-owner.eml" 2>"$W/nosuch.err" && fail "nosuch@lists.example.org accepted"
grep -q 'Recipient address rejected: User unknown in relay recipient table' "$PFX/maillog" ||
  fail "nosuch@ not refused by relay_recipient_maps: $(cat "$W/nosuch.err"; grep nosuch "$PFX/maillog")"
# A member whose server refuses the copy: its bounce goes to eng-owner@, i.e. the list master.
# In member-certs mode only members with a certificate at the group server
# get a copy (one of their own), so gone@ gets one there too.
install -d -m 0700 -o groupsrv -g groupsrv /var/lib/groupsrv/gone
gs member add eng gone@example.net --issue-cert --out /var/lib/groupsrv/gone >/dev/null || fail "member add gone"
rm -rf /var/lib/groupsrv/gone
runuser -u exploder -- exploder list add eng@lists.example.org gone@example.net >/dev/null
pf_send_encrypted "second post" "$W/second.eml"
pf_wait_mail bob "second post" >/dev/null
b=$(pf_wait_mail listmaster "Undelivered Mail Returned to Sender")
grep -q 'gone@example.net' "$b" || fail "the list master's bounce is not about gone@example.net"
ok "eng-owner@ and eng-request@ reach the list master (also a member's bounce); nosuch@ refused with 550"

# A post over message_size_limit is refused while the sender waits (552
# 5.3.4); a copy that much larger still passes the copies' listener
# (postfix.md, step 3: a copy is larger than the post it came from).
# Lines of 77 bytes, which Postfix's queue file holds in 78: the message
# counts about 20 KB over the limit there, well within the listener's 64 KiB.
limit=$(postconf -c "$PFX/etc" -h message_size_limit)
{
  printf 'From: eng-owner@lists.example.org\nTo: alice@example.org\nSubject: just over the limit\n\n'
  # 57 bytes make one 76-character line; head ends the pipe, not base64
  # (a SIGPIPE would fail it under pipefail)
  head -c $(((limit + 20000) / 78 * 57)) /dev/zero | base64 -w 76
} >"$W/big.eml"
curl -v -sS "smtp://127.0.0.1:$PF_SMTP" --mail-from eng-owner@lists.example.org --mail-rcpt alice@example.org \
  -T "$W/big.eml" 2>"$W/big.err" && fail "a post over message_size_limit was accepted on the SMTP port"
# -v: curl's own message for a refused MAIL FROM is "Weird server reply";
# the trace has the reply line itself.
grep -q '^< 552 ' "$W/big.err" || fail "over message_size_limit: $(cat "$W/big.err")"
curl -sS "smtp://127.0.0.1:$PF_RELAY" --mail-from eng-owner@lists.example.org --mail-rcpt alice@example.org \
  -T "$W/big.eml" 2>"$W/big.err" || fail "the copies' listener refused a copy just over message_size_limit: $(cat "$W/big.err")"
rm -f "$(pf_wait_mail alice "just over the limit")" "$W/big.eml"
ok "over message_size_limit: 552 on the SMTP port; the copies' listener takes it (64 KiB more)"
