#!/usr/bin/env bash
# STARTTLS to the relay: starttls = required with the relay's CA delivers
# over TLS; against a relay that offers no STARTTLS, "required" defers
# (never falls back to plain text); "no" towards a relay that demands TLS
# defers too; "yes" (the default) to a relay whose certificate does not
# verify defers rather than sending in clear.
set -euo pipefail
. "$(dirname "$0")/exploder-lib.sh"
xp_setup starttls

xp_cert group eng@lists.example.org
xp_cert relay localhost
L=eng@lists.example.org
xp_encrypt "$W/group.pem" "$W/in.eml" "tls"

# relay with STARTTLS required
xp_smtpd_start "$W/smtp" --tls-cert "$W/relay.pem" --tls-key "$W/relay.key" --require-starttls
xp_conf "smtp://127.0.0.1:$SMTPD_PORT" "starttls = no"
xp list create $L --group-server https://127.0.0.1:1 --group eng --mode forward --group-cert "$W/group.pem" >/dev/null
xp list add $L m1@example.net >/dev/null
xp deliver --list $L <"$W/in.eml" || fail "deliver refused"
rc=0
xp run --once 2>>"$W/run.log" || rc=$?
[ "$rc" = 75 ] || fail "plain text to a TLS-only relay should be deferred, exit $rc"
[ -z "$(xp_accepted "$W/smtp")" ] || fail "delivered without TLS"

xp_conf "smtp://127.0.0.1:$SMTPD_PORT" "starttls = required" "relay_cacert = $W/relay.pem"
sleep 1.2
xp_drain
[ "$(xp_accepted "$W/smtp")" = "m1@example.net" ] || fail "not delivered over STARTTLS"

# starttls = yes (the default) to a relay whose certificate does not verify
# (a stock Postfix's snakeoil one): deferred, never sent in clear instead
xp_conf "smtp://127.0.0.1:$SMTPD_PORT"
xp deliver --list $L <"$W/in.eml" || fail "deliver refused"
rc=0
xp run --once 2>>"$W/run.log" || rc=$?
[ "$rc" = 75 ] || fail "starttls = yes with an unverifiable relay certificate should defer, exit $rc"
[ "$(xp_accepted "$W/smtp")" = "m1@example.net" ] || fail "sent without a verified certificate"
xp_conf "smtp://127.0.0.1:$SMTPD_PORT" "relay_cacert = $W/relay.pem"
sleep 1.2
xp_drain
[ "$(xp_accepted "$W/smtp" | wc -l)" = 2 ] || fail "not delivered once the relay's CA is configured"

# relay without STARTTLS: required must not fall back
xp_smtpd_stop
SMTPD_PORT=
xp_smtpd_start "$W/smtp2"
xp_conf "smtp://127.0.0.1:$SMTPD_PORT" "starttls = required" "relay_cacert = $W/relay.pem"
xp deliver --list $L <"$W/in.eml" || fail "deliver refused"
rc=0
xp run --once 2>>"$W/run.log" || rc=$?
[ "$rc" = 75 ] || fail "required STARTTLS against a plain relay should defer, exit $rc"
[ -z "$(xp_accepted "$W/smtp2")" ] || fail "fell back to plain text"
echo "exploder starttls: ok"
