#!/usr/bin/env bash
# deliver and the group certificate refresh (docs/exploder.1.md, list):
# a run of messages to a certificate that is not the group's asks the
# group server once, not once each (the first is refused, 77 5.7.1; the
# next ones within the minute, here group_info_ttl = 3 s, are deferred, 75
# 4.3.0, never refused on an answer that may be stale); a rotation inside
# that window: the mail to the new certificate, another of the group's CA,
# is deferred by a forward list, which no group server reads for, and
# taken by a member-certs list for the group server to decide (as one to
# a version before the list's oldest); after the window the new
# certificate is fetched and added. A forward list refuses mail to a
# member's own certificate of the group's CA alone (77 5.7.1): taken, it
# would reach every member unreadable, its sender never told. Several
# delivers adding the new certificate at once keep every version. A
# sender who encrypts to their own certificate too (issued by the group's
# CA, as `groupsrv member add --issue-cert` does; Thunderbird and Outlook
# add the sender) does not make each message log "not refreshed".
# The group server is tests/lib/hostile_groupsrv.py in mode ok, serving
# the certificate in $W/current.pem and logging every request.
set -euo pipefail
. "$(dirname "$0")/exploder-lib.sh"
xp_setup cert-refresh

bash "$GS_SRC/tests/integration/groupmail-mkcerts.sh" "$W/pki"
# group certificates as groupsrv issues them: end-entity, from a CA (a
# self-signed CA certificate after the first is taken for a chain's issuer)
printf 'subjectAltName=email:eng@lists.example.org\nkeyUsage=critical,keyEncipherment\nbasicConstraints=CA:FALSE\n' \
  >"$W/group.ext"
for v in 1 2 3; do
  openssl req -newkey rsa:2048 -nodes -keyout "$W/v$v.key" -out "$W/v$v.csr" -subj /CN=eng@lists.example.org 2>/dev/null
  openssl x509 -req -in "$W/v$v.csr" -CA "$W/pki/ca.pem" -CAkey "$W/pki/ca.key" -CAcreateserial -days 2 \
    -extfile "$W/group.ext" -out "$W/v$v.pem" 2>/dev/null
done
xp_cert other other@example.org
cp "$W/v1.pem" "$W/current.pem"
echo ok >"$W/gs.mode"
$PY "$GS_SRC/tests/lib/hostile_groupsrv.py" --cert "$W/pki/server.pem" --key "$W/pki/server.key" \
  --client-ca "$W/pki/ca.pem" --port-file "$W/gs.port" --mode-file "$W/gs.mode" --log "$W/requests.log" \
  --group-cert "$W/current.pem" --key-transports "$W/kts.json" 2>>"$W/gs.err" &
XP_PIDS+=("$!")
for _ in $(seq 1 100); do [ -s "$W/gs.port" ] && break; sleep 0.1; done
[ -s "$W/gs.port" ] || fail "group server stub did not start: $(cat "$W/gs.err")"
xp_conf "smtp://127.0.0.1:1" "starttls = no" "group_info_ttl = 3" "[tls]" "cert = $W/pki/alice.pem" \
  "key = $W/pki/alice.key" "ca = $W/pki/ca.pem" "timeout = 5" "[log]" "file = $W/xp.log"
L=eng@lists.example.org
xp list create $L --group-server "https://127.0.0.1:$(cat "$W/gs.port")" --group eng --mode forward \
  --group-cert "$W/v1.pem" >/dev/null
xp list add $L m1@example.net >/dev/null
L2=eng-mc@lists.example.org
xp list create $L2 --group-server "https://127.0.0.1:$(cat "$W/gs.port")" --group eng --mode member-certs \
  --group-cert "$W/v1.pem" >/dev/null
gets() { grep -c '^GET /v1/groups/eng/certificate ' "$W/requests.log" || true; }
expect() { # expect RC STATUS MESSAGE [LIST]
  local rc=0
  xp deliver --list "${4:-$L}" --sender alice@example.org <"$3" 2>"$W/deliver.err" || rc=$?
  [ "$rc" = "$1" ] && grep -q "^$2 " "$W/deliver.err" ||
    fail "$3: exit $rc, want $1 $2: $(cat "$W/deliver.err")"
}

xp_encrypt "$W/other.pem" "$W/other.eml" "not to the group"
sleep 3.2 # past the discovery list create fetched
expect 77 5.7.1 "$W/other.eml"
[ "$(gets)" = 1 ] || fail "want one certificate fetch, got $(gets)"
expect 77 5.7.1 "$W/other.eml" $L2
[ "$(gets)" = 2 ] || fail "want one certificate fetch for the second list, got $(gets)"
for _ in 1 2 3; do expect 75 4.3.0 "$W/other.eml"; done
grep -q 'the group server said [0-9]*s ago that its current certificate is one the list knows' "$W/deliver.err" ||
  fail "deferral reason: $(cat "$W/deliver.err")"
[ "$(gets)" = 2 ] || fail "a run of foreign-key messages asked the group server $(($(gets) - 1)) times, want once"
echo "ok: 4 messages to a foreign certificate, one certificate fetch"

# a rotation inside the window: the forward list defers it (75), the
# member-certs list takes it (the group server decides at rewrap); after
# the window the new certificate is learnt
cp "$W/v2.pem" "$W/current.pem"
xp_encrypt "$W/v2.pem" "$W/v2.eml" "to version 2"
expect 75 4.3.0 "$W/v2.eml"
xp deliver --list $L2 --sender alice@example.org <"$W/v2.eml" 2>"$W/deliver.err" ||
  fail "member-certs: mail to the rotated certificate inside the window: $(cat "$W/deliver.err")"
[ "$(gets)" = 2 ] || fail "mail to another certificate of the CA inside the window asked again: $(gets) fetches"
sleep 3.2
xp deliver --list $L --sender alice@example.org <"$W/v2.eml" 2>"$W/deliver.err" ||
  fail "mail to the rotated certificate after the window: $(cat "$W/deliver.err")"
[ "$(gets)" = 3 ] || fail "want another fetch after the window, got $(gets)"
echo "ok: a rotation inside the window is deferred (forward) or taken (member-certs), then learnt"

# three delivers at once after the next rotation: each finds v3 new, all
# are taken, and the list keeps v1, v2 and v3
cp "$W/v3.pem" "$W/current.pem"
xp_encrypt "$W/v3.pem" "$W/v3.eml" "to version 3"
sleep 3.2
pids=()
for i in 1 2 3; do
  xp deliver --list $L --sender alice@example.org <"$W/v3.eml" 2>"$W/deliver.$i.err" & pids+=("$!")
done
for i in 1 2 3; do wait "${pids[$((i - 1))]}" || fail "concurrent deliver $i: $(cat "$W/deliver.$i.err")"; done
certs=$(sqlite3 "$W/spool/exploder.db" "SELECT group_cert FROM lists WHERE address='$L'")
for v in 1 2 3; do
  fp=$(openssl x509 -in "$W/v$v.pem" -noout -fingerprint -sha256)
  grep -q -- "$(openssl x509 -in "$W/v$v.pem" | sed -n 2p)" <<<"$certs" || fail "the list lost version $v ($fp)"
done
echo "ok: concurrent delivers keep every certificate"

# Mail to the current version and to the sender's own certificate, which
# the group's CA issued too: the list knows the version, and the group
# server has just said its current one is known (the delivers above), so
# nothing is asked and nothing logged; each message taken. Not a timing
# assertion: delivers further apart than the window ask once, silently.
printf 'Content-Type: text/plain\n\nto the group and to myself\n' >"$W/self.txt"
openssl cms -encrypt -aes-256-cbc -recip "$W/v3.pem" -keyopt rsa_padding_mode:oaep \
  -recip "$W/pki/alice.pem" -keyopt rsa_padding_mode:oaep -subject self -in "$W/self.txt" -out "$W/self.eml"
logged=$(stat -c %s "$W/xp.log")
for i in 1 2 3; do
  xp deliver --list $L --sender alice@example.org <"$W/self.eml" 2>"$W/deliver.err" ||
    fail "mail to the group and the sender's own certificate: $(cat "$W/deliver.err")"
done
tail -c +$((logged + 1)) "$W/xp.log" >"$W/self.log"
grep -q 'not refreshed' "$W/self.log" &&
  fail "mail also to the sender's own certificate logs a refresh failure: $(grep -m1 'not refreshed' "$W/self.log")"
echo "ok: mail also to the sender's own certificate is taken without a refresh failure logged"

# A message for version 3 that also names another certificate of the
# group's CA (the sender's own, from the same local CA; another list's
# group certificate when cross-posted) makes deliver ask for the current
# certificate, at most once a minute (here 3 s) however many such
# messages come. That ask does not make the next message to a certificate
# that is not the group's wait for the window to pass: it is refused at
# once (77, 5.7.1), as without the other message, not deferred (75), which
# on a busy list would be every time the MTA retries.
printf 'Content-Type: text/plain\n\nsecret body for two versions\n' >"$W/p23.txt"
openssl cms -encrypt -aes-256-cbc -recip "$W/v3.pem" -keyopt rsa_padding_mode:oaep -recip "$W/pki/alice.pem" \
  -keyopt rsa_padding_mode:oaep -from alice@example.org -to $L -subject "to v3 and herself" \
  -in "$W/p23.txt" -out "$W/v3self.eml"
sleep 3.2
n0=$(gets)
for _ in 1 2 3; do
  xp deliver --list $L --sender alice@example.org <"$W/v3self.eml" 2>"$W/deliver.err" ||
    fail "mail to version 3 and the sender's own certificate refused: $(cat "$W/deliver.err")"
done
[ "$(gets)" = $((n0 + 1)) ] || fail "3 messages also to the sender's certificate: $(($(gets) - n0)) fetches, want 1"
expect 77 5.7.1 "$W/other.eml"
echo "ok: a message also to another certificate of the CA asks once, and leaves a foreign one refused"

# A message to versions 2 and 3 whose RecipientInfo for 3 is PKCS#1 v1.5
# and for 2 RSA-OAEP, to a group that takes RSA-OAEP only, when the list's
# cached discovery answer does not say so yet (made while the server named
# no key transports; here the stub's answer gains them only now): deliver
# fetches the answer, and the version is chosen with that answer, not the
# one cached before it (version 2, taken), and not refused (5.7.6) for 3's.
echo '["RSA-OAEP"]' >"$W/kts.json"
openssl cms -encrypt -aes-256-cbc -recip "$W/v2.pem" -keyopt rsa_padding_mode:oaep -recip "$W/v3.pem" \
  -from alice@example.org -to $L -subject "v1.5 newest" -in "$W/p23.txt" -out "$W/v23.eml"
sleep 3.2 # past the cached discovery answer
xp deliver --list $L --sender alice@example.org <"$W/v23.eml" 2>"$W/deliver.err" ||
  fail "mail to version 2 (RSA-OAEP) and 3 (PKCS#1 v1.5) refused once discovery said RSA-OAEP: $(cat "$W/deliver.err")"
echo "ok: the version is chosen with the discovery answer deliver fetched"

# Mail encrypted to one member's certificate alone, which the group's CA
# issued (`member add --issue-cert`), sent to the forward list (past the
# window of the refusal above: the group server says its current
# certificate is known): refused, 77 5.7.1, saying why. Forwarded, every
# member but that one would get mail they cannot read, and the sender
# would never hear (it was taken).
openssl cms -encrypt -aes-256-cbc -recip "$W/pki/alice.pem" -keyopt rsa_padding_mode:oaep -from alice@example.org \
  -to $L -subject "to one member" -in "$W/p23.txt" -out "$W/member.eml"
expect 77 5.7.1 "$W/member.eml"
grep -q "not encrypted to a group certificate the list knows: .*forwards mail as it came" "$W/deliver.err" ||
  fail "forward list, mail to a member's certificate alone: $(cat "$W/deliver.err")"
# a forward list made after a re-key takes the version before when
# list create --group-cert is given both certificates, oldest first
cat "$W/v2.pem" "$W/v3.pem" >"$W/v23.pem"
xp list create eng-late@lists.example.org --group-server "https://127.0.0.1:$(cat "$W/gs.port")" --group eng \
  --mode forward --group-cert "$W/v23.pem" >/dev/null
xp deliver --list eng-late@lists.example.org --sender alice@example.org <"$W/v2.eml" 2>"$W/deliver.err" ||
  fail "forward list given both versions, mail to the earlier: $(cat "$W/deliver.err")"
echo "ok: a forward list refuses mail to a member's certificate of the CA alone"
echo "exploder cert refresh: ok"
