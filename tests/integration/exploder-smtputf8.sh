#!/usr/bin/env bash
# SMTPUTF8 posters (RFC 6531) through a real Postfix on loopback, its pipe
# transport set up as docs/postfix.md says (flags=Rq, null_sender=,
# ${recipient} and ${sender}):
#  - alice, a member stored as alice@xn--bcher-kva.example (list add takes
#    the A-label form only), posts as alice@bücher.example to a
#    --members-only list: she is a member (the domain is compared in its
#    A-label form), not "members only";
#  - her UTF-8 envelope sender is a real sender: a member the relay
#    refuses makes a bounce to her, with SMTPUTF8 when the relay offers it
#    and to the A-label form when it does not (said in the log);
#  - jürgen@bücher.example (a UTF-8 local part) gets his bounce only
#    through a relay that offers SMTPUTF8; through one that does not it is
#    not sent, and the log says why;
#  - look-alikes (a Cyrillic letter) are not members; a domain IDNA 2008
#    refuses is no address (treated as the null sender, the reason logged).
set -euo pipefail
. "$(dirname "$0")/exploder-lib.sh"
. "$GS_SRC/tests/lib/ports.sh"
. "$GS_SRC/tests/lib/postfix.sh"
# The pipe transport runs `exploder deliver` as nobody, who must reach the
# binary, its configuration, the spool and the log: a checkout under /root
# or in a mktemp directory (0700, as CI's clone may be) is out of its
# reach. So the binary is copied, and the work done, under a directory of
# this test's own that anyone may enter.
R=$(mktemp -d /tmp/gs-smtputf8.XXXXXX)
chmod 755 "$R"
install -m 0755 "$EXPLODER" "$R/exploder"
EXPLODER=$R/exploder
GS_TEST_WORK=$R
xp_setup smtputf8
trap 'xp_cleanup; rm -rf "$R"' EXIT

[ "$(id -u)" = 0 ] || fail "needs root (a private Postfix instance, a pipe transport run as nobody)"
command -v postfix >/dev/null || fail "postfix missing (scripts/setup installs it)"
# the pipe transport runs `exploder deliver` as nobody: it reads the
# binary and the configuration, and writes the spool and the log
chmod 755 "$W"
d=$(dirname "$EXPLODER")
while [ "$d" != / ]; do
  case "$(stat -c %A "$d" | cut -c10)" in x | t) ;; *) fail "nobody cannot reach $EXPLODER ($d)" ;; esac
  d=$(dirname "$d")
done

xp_cert group eng@lists.example.org
take_port PF_SMTP
xp_smtpd_start "$W/smtp" --refuse-rcpt '^gone@'
L=eng@lists.example.org
xp_conf "smtp://127.0.0.1:$SMTPD_PORT" "starttls = no" "[log]" "file = $W/exploder.log"
xp list create $L --group-server https://127.0.0.1:1 --group eng --mode forward --group-cert "$W/group.pem" \
  --members-only >/dev/null
xp list add $L alice@xn--bcher-kva.example gone@example.net >/dev/null
# a member is stored in the A-label form, and list add spells it out
rc=0
xp list add $L 'bob@bücher.example' 2>"$W/add.err" || rc=$?
[ "$rc" = 1 ] || fail "list add of a U-label domain: want 1, got $rc"
grep -q 'write it bob@xn--bcher-kva.example$' "$W/add.err" || fail "list add names no A-label form: $(cat "$W/add.err")"
# typed with an upper-case U-label (UTS #46 maps it, as a browser does):
# still refused, and the hint is the same A-label form
rc=0
xp list add $L 'bob@BÜCHER.example' 2>"$W/add.err" || rc=$?
[ "$rc" = 1 ] || fail "list add of an upper-case U-label domain: want 1, got $rc"
grep -q 'write it bob@xn--bcher-kva.example$' "$W/add.err" || fail "list add BÜCHER names no A-label form: $(cat "$W/add.err")"
: >"$W/exploder.log"
chown -R nobody "$W/spool" "$W/exploder.log"

pf_init "$W/postfix" "$PF_SMTP"
trap 'pf_stop; xp_cleanup; rm -rf "$R"' EXIT
cat >>"$PFX/etc/main.cf" <<EOF
smtputf8_enable = yes
relay_domains = lists.example.org
transport_maps = inline:{ lists.example.org=exploder: }
exploder_destination_recipient_limit = 1
default_transport = error
EOF
{
  # docs/postfix.md step 3, with this build's exploder and configuration
  echo "exploder unix - n n - - pipe"
  echo "  flags=Rq user=nobody null_sender="
  echo "  argv=$EXPLODER -c $XPC deliver --list \${recipient} --sender \${sender}"
} >>"$PFX/etc/master.cf"
chmod 644 "$XPC"
pf_start "$W/postfix-start.log"

# Posts the encrypted message ($3, else $W/in.eml) as an SMTPUTF8 client
# does, with the envelope sender $1 and the From $2; prints Postfix's
# queue id.
post() {
  $PY - "$PF_SMTP" "$1" "$2" "${3:-$W/in.eml}" <<'EOF'
import smtplib, sys
port, sender, frm, path = sys.argv[1:]
body = open(path, "rb").read()
msg = b"From: <" + frm.encode() + b">\r\n" + body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
with smtplib.SMTP("127.0.0.1", int(port), timeout=30) as s:
    s.ehlo("client.example")
    s.sendmail(sender, ["eng@lists.example.org"], msg, mail_options=["SMTPUTF8"])
EOF
}
# Waits until Postfix has handed the n-th message to the pipe (delivered
# or bounced); prints that maillog line.
pipe_result() {
  local n=$1
  for _ in $(seq 1 150); do
    if [ "$(grep -c 'relay=exploder' "$PFX/maillog" 2>/dev/null || true)" -ge "$n" ]; then
      grep 'relay=exploder' "$PFX/maillog" | sed -n "${n}p"
      return 0
    fi
    sleep 0.2
  done
  fail "Postfix did not run the pipe: $(tail -5 "$PFX/maillog" 2>/dev/null)"
}

xp_encrypt "$W/group.pem" "$W/in.eml" "utf8 poster"
# openssl writes a From: of its own: the post's is the sender's
sed -i '/^From:/d' "$W/in.eml"

# 1. alice@bücher.example, stored as alice@xn--bcher-kva.example: a member
post 'alice@bücher.example' 'alice@bücher.example'
r=$(pipe_result 1)
case $r in *status=sent*) ;; *) fail "alice@bücher.example refused by the members-only list: $r" ;; esac
grep -q 'msg="accepted" list=eng@lists.example.org' "$W/exploder.log" || fail "not accepted: $(tail -3 "$W/exploder.log")"
# Postfix's pipe passed her UTF-8 address whole (not quoted, not the null sender)
[ "$(sqlite3 "$W/spool/exploder.db" 'SELECT sender FROM messages')" = 'alice@bücher.example' ] ||
  fail "sender stored: $(sqlite3 "$W/spool/exploder.db" 'SELECT sender FROM messages')"

# 2. a look-alike (Cyrillic с for c) is not her
post 'alice@büсher.example' 'alice@büсher.example'
r=$(pipe_result 2)
case $r in *status=bounced*"members only"*) ;; *) fail "a look-alike domain taken as a member: $r" ;; esac

# 3. her bounce (gone@ refused by the relay) goes to her UTF-8 address,
#    through a relay that offers SMTPUTF8: the envelope with SMTPUTF8
xp_drain
grep -q '^[^ ]* <> alice@bücher.example$' "$W/smtp/envelope.log" ||
  fail "no bounce to alice: $(cat "$W/smtp/envelope.log")"
id=$(grep '^[^ ]* <> alice@' "$W/smtp/envelope.log" | cut -d' ' -f1)
grep -q "^$id SMTPUTF8$" "$W/smtp/options.log" || fail "bounce without SMTPUTF8: $(cat "$W/smtp/options.log")"
grep -q '^To: <alice@xn--bcher-kva.example>$' "$W/smtp/new/$id" || fail "bounce To: $(grep ^To: "$W/smtp/new/$id")"
xp_spool_empty

# 4. a UTF-8 local part: jürgen's bounce needs SMTPUTF8 (list not members-only)
xp list set $L --open >/dev/null
post 'jürgen@bücher.example' 'jürgen@bücher.example'
r=$(pipe_result 3)
case $r in *status=sent*) ;; *) fail "jürgen's post: $r" ;; esac
xp_drain
grep -q '^[^ ]* <> jürgen@bücher.example$' "$W/smtp/envelope.log" ||
  fail "no bounce to jürgen: $(cat "$W/smtp/envelope.log")"
id=$(grep '^[^ ]* <> jürgen@' "$W/smtp/envelope.log" | cut -d' ' -f1)
grep -q "^$id SMTPUTF8$" "$W/smtp/options.log" || fail "jürgen's bounce without SMTPUTF8"
xp_spool_empty

# 5. a relay without SMTPUTF8: alice's bounce goes to the A-label form
#    (RFC 6531 3.2), jürgen's is not sent; the log says both
xp_smtpd_stop
xp_smtpd_start "$W/smtp2" --refuse-rcpt '^gone@' --no-smtputf8
post 'alice@bücher.example' 'alice@bücher.example'
post 'jürgen@bücher.example' 'jürgen@bücher.example'
pipe_result 5 >/dev/null
xp_drain
grep -q '^[^ ]* <> alice@xn--bcher-kva.example$' "$W/smtp2/envelope.log" ||
  fail "no A-label bounce to alice: $(cat "$W/smtp2/envelope.log" 2>/dev/null)"
grep -q ' SMTPUTF8' "$W/smtp2/options.log" && fail "SMTPUTF8 to a relay that does not offer it"
grep -q 'jürgen' "$W/smtp2/envelope.log" && fail "a UTF-8 local part sent without SMTPUTF8"
grep -q 'does not offer SMTPUTF8: an internationalized domain goes in its A-label form' "$W/exploder.log" ||
  fail "the A-label fallback not logged"
grep -q 'does not offer SMTPUTF8, which an address with a UTF-8 local part needs' "$W/exploder.log" ||
  fail "the unsent bounce not logged"
xp_spool_empty

# 6. the relay down when the bounce is due (max_age passed): asking it
#    for SMTPUTF8 fails, the bounce waits, and goes once it is back
xp_smtpd_stop
sed -i 's/^\[delivery\]$/[delivery]\nmax_age = 2/' "$XPC"
post 'alice@bücher.example' 'alice@bücher.example'
pipe_result 6 >/dev/null
rc=0
xp run --once 2>>"$W/run.log" || rc=$?
[ "$rc" = 75 ] || fail "relay down: want 75, got $rc"
sleep 3 # past max_age: the post fails, its bounce is queued and cannot go
rc=0
xp run --once 2>>"$W/run.log" || rc=$?
[ "$rc" = 75 ] || fail "relay down, bounce due: want 75, got $rc"
grep -q 'kind=list delivered=0 failed=2 bounce="alice@b' "$W/exploder.log" || fail "the post not given up"
xp_smtpd_start "$W/smtp3"
xp_drain
grep -q '^[^ ]* <> alice@bücher.example$' "$W/smtp3/envelope.log" ||
  fail "the bounce did not go once the relay was back: $(cat "$W/smtp3/envelope.log" 2>/dev/null)"
xp_spool_empty

# 7. a domain IDNA 2008 refuses (a snowman): no address, the null sender,
#    the reason in the log; the message is taken
xp deliver --list $L --sender 'x@b☃cher.example' <"$W/in.eml" || fail "deliver refused over a bad sender"
grep -q 'treated as null.*reason="a domain with a character IDNA 2008 does not allow' "$W/exploder.log" ||
  fail "no reason for the refused U-label: $(tail -2 "$W/exploder.log")"
# 8. a domain written in a form UTS #46 maps (an invisible soft hyphen in
#    bücher, a fullwidth b) is not the member's: the sender checks in
#    front of the list saw another domain; no address, members only
xp list set $L --members-only >/dev/null
for a in 'alice@bü­cher.example' 'alice@ｂücher.example'; do
  rc=0
  xp deliver --list $L --sender "$a" <"$W/in.eml" 2>/dev/null || rc=$?
  [ "$rc" = 77 ] || fail "a mapped spelling of a member's domain ($a): want 77, got $rc"
done
grep -q 'treated as null.*reason="a domain not written in its U-label form' "$W/exploder.log" ||
  fail "no reason for the mapped domain: $(tail -2 "$W/exploder.log")"

# 9. What Postfix passes to the pipe of a header field with white space
#    before its colon (RFC 5322's obsolete syntax) and a CR that ends no
#    line (docs/postfix.md, step 7): it writes the field as "Name:" and the
#    CR as a space (cleanup_replace_stray_cr_lf), so the list, which takes
#    only encrypted mail here and refuses such a CR as it came (65), takes
#    the post, and the copy has neither
sed 's/^Subject: .*/&\nX-Obs-Poster\t : obsolete syntax\nX-Cr: one\rtwo/' "$W/in.eml" >"$W/obs.eml"
grep -q $'^X-Obs-Poster\t : obsolete syntax$' "$W/obs.eml" || fail "obs.eml: no 'X-Obs-Poster :'"
grep -q $'^X-Cr: one\rtwo$' "$W/obs.eml" || fail "obs.eml: no CR that ends no line"
rc=0
xp deliver --list $L --sender alice@xn--bcher-kva.example <"$W/obs.eml" 2>"$W/obs.err" || rc=$?
[ "$rc" = 65 ] && grep -q 'ends no line' "$W/obs.err" || fail "the CR as it came: want 65, got $rc $(cat "$W/obs.err")"
post 'alice@bücher.example' 'alice@bücher.example' "$W/obs.eml"
r=$(pipe_result 7)
case $r in *status=sent*) ;; *) fail "through Postfix, the post with 'Name :' and a CR: $r" ;; esac
xp_drain
f=$(grep -l '^X-Obs-Poster: obsolete syntax' "$W/smtp3/new/"* | tail -1)
[ -n "$f" ] || fail "no copy with 'X-Obs-Poster: obsolete syntax': $(grep -h X-Obs "$W/smtp3/new/"*)"
grep -q '^X-Cr: one two' "$f" || fail "the copy's X-Cr: $(grep -a '^X-Cr' "$f")"
grep -qE $'^[!-9;-~]+[ \t]+:' "$f" && fail "the copy has a field with white space before its colon"
echo "PASS exploder_smtputf8"
