#!/usr/bin/env bash
# SMTP AUTH to the relay (relay_user, relay_password_file), against a
# real SMTP server (tests/lib/smtpd.py, aiosmtpd) that wants STARTTLS and
# a login before MAIL: the copies go out logged in; a wrong password
# defers them (never a bounce: the list's mail is fine, the exploder's
# configuration is not) and they go out once it is mended; the password
# never goes in clear: with relay_user, starttls = yes (the default) means
# required, so a relay, or anyone on the path, that hides STARTTLS gets
# neither the password nor the copies; a password file others can read is
# refused.
set -euo pipefail
. "$(dirname "$0")/exploder-lib.sh"
xp_setup relay-auth

xp_cert group eng@lists.example.org
xp_cert relay localhost
L=eng@lists.example.org
PW='rel4y-Pa55-qx9'
xp_encrypt "$W/group.pem" "$W/in.eml" "auth"
printf 'exploder %s\n' "$PW" >"$W/auth"
(umask 077 && printf '%s\n' "$PW" >"$W/pw" && echo wrong >"$W/pw-bad")
auth_conf() { xp_conf "smtp://127.0.0.1:$SMTPD_PORT" "relay_cacert = $W/relay.pem" "relay_user = exploder" "$@"; }

xp_smtpd_start "$W/smtp" --tls-cert "$W/relay.pem" --tls-key "$W/relay.key" --require-starttls \
  --auth-file "$W/auth" --require-auth
auth_conf "relay_password_file = $W/pw-bad"
xp list create $L --group-server https://127.0.0.1:1 --group eng --mode forward --group-cert "$W/group.pem" >/dev/null
xp list add $L m1@example.net >/dev/null
xp deliver --list $L <"$W/in.eml" || fail "deliver refused"

# a wrong password: deferred (75), not bounced, nothing accepted
rc=0
xp run --once 2>>"$W/run.log" || rc=$?
[ "$rc" = 75 ] || fail "a refused login should defer the copies, exit $rc"
[ -z "$(xp_accepted "$W/smtp")" ] || fail "accepted without a login"
grep -q ' refused exploder$' "$W/smtp/auth.log" || fail "the login did not reach the relay"
[ "$(sqlite3 "$W/spool/exploder.db" "SELECT count(*) FROM recipients")" = 1 ] || fail "the copy was dropped"

# mended: delivered, logged in
auth_conf "relay_password_file = $W/pw"
sleep 1.2
xp_drain
[ "$(xp_accepted "$W/smtp")" = "m1@example.net" ] || fail "not delivered once the password is right"
grep -q ' ok exploder$' "$W/smtp/auth.log" || fail "no successful login"
xp_spool_empty

# a relay that offers AUTH in clear and no STARTTLS: with relay_user,
# starttls = yes (the default) is required: nothing goes, not the password
xp_smtpd_stop
SMTPD_PORT=
xp_smtpd_start "$W/smtp2" --auth-file "$W/auth" --auth-in-clear --require-auth
auth_conf "relay_password_file = $W/pw"
xp deliver --list $L <"$W/in.eml" || fail "deliver refused"
rc=0
xp run --once 2>>"$W/run.log" || rc=$?
[ "$rc" = 75 ] || fail "relay_user towards a relay without STARTTLS should defer, exit $rc"
[ ! -s "$W/smtp2/auth.log" ] || fail "the password went in clear: $(cat "$W/smtp2/auth.log")"
[ -z "$(xp_accepted "$W/smtp2")" ] || fail "delivered in clear"

# the password file must be the exploder's alone
chmod 0644 "$W/pw"
rc=0
xp run --once 2>>"$W/run.log" || rc=$?
[ "$rc" != 0 ] || fail "a password file others can read was used"
tail -3 "$W/run.log" | grep -q "relay_password_file" || fail "the log does not name relay_password_file: $(tail -3 "$W/run.log")"
# and says why (here: the mode), not only "missing or unreadable"
tail -3 "$W/run.log" | grep -q "relay_password_file.*err=\"file permissions too open for a secret" ||
  fail "the log does not say why relay_password_file was refused: $(tail -3 "$W/run.log")"
chmod 0600 "$W/pw"
# starttls = no with a login: the password goes in clear only where
# relay_auth_in_clear allows it: by default to a relay on this host (as
# written in relay: 127.0.0.0/8, [::1], localhost), never elsewhere
# (192.0.2.1, TEST-NET: refused before any connection), nowhere with "no"
for c in "smtp://192.0.2.1:25|" "smtp://127.0.0.1:$SMTPD_PORT|relay_auth_in_clear = no"; do
  xp_conf "${c%%|*}" "relay_user = exploder" "relay_password_file = $W/pw" "starttls = no" "${c#*|}"
  rc=0
  xp run --once 2>>"$W/run.log" || rc=$?
  [ "$rc" = 78 ] || fail "AUTH in clear to ${c%%|*} (${c#*|}): run exit $rc, want 78"
  tail -3 "$W/run.log" | grep -q "refusing to send relay_user's password in clear" ||
    fail "the refusal is not named: $(tail -3 "$W/run.log")"
  [ ! -s "$W/smtp2/auth.log" ] || fail "the password went in clear: $(cat "$W/smtp2/auth.log")"
done
# a login written into relay itself (libcurl logs in with a URL's
# user:password, and relay_user's checks never see it): a bad value of
# relay (78), nothing sent, the password not echoed
for u in "exploder:$PW@" ";AUTH=PLAIN@"; do
  xp_conf "smtp://${u}127.0.0.1:$SMTPD_PORT" "starttls = no" "relay_auth_in_clear = no"
  rc=0
  xp run --once 2>>"$W/run.log" || rc=$?
  [ "$rc" = 78 ] || fail "a login in the relay URL: run exit $rc, want 78"
  tail -3 "$W/run.log" | grep -q "bad value for 'relay'" || fail "the refusal is not named: $(tail -3 "$W/run.log")"
  [ ! -s "$W/smtp2/auth.log" ] || fail "the URL's password went in clear: $(cat "$W/smtp2/auth.log")"
done
auth_conf "relay_password_file = $W/pw" "starttls = no"
# reached directly: libcurl would take it through a proxy named in the
# environment (all_proxy), the password in clear to the proxy's host
all_proxy=socks5://127.0.0.1:1 ALL_PROXY=socks5://127.0.0.1:1 xp_drain 3
[ "$(xp_accepted "$W/smtp2")" = "m1@example.net" ] || fail "not delivered to the relay on this host"
grep -q ' ok exploder$' "$W/smtp2/auth.log" || fail "no login to the relay on this host"
xp_spool_empty
! grep -qF "$PW" "$W/run.log" "$W/smtpd.log" || fail "the password is in a log"
echo "exploder relay auth: ok"
