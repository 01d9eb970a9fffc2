#!/usr/bin/env bash
# A PIN the token refused is not sent again by the next start: a service
# manager restarting `groupsrv serve` (the packaged unit: every 5 s), the
# key holder the supervisor starts again, a cron job's command. Tokens
# that count wrong PINs without reporting CKF_USER_PIN_FINAL_TRY would
# otherwise be locked after a few restarts. SoftHSM has no counter, so
# the test counts C_Login calls (tests/p11fault's GS_P11FAULT_COUNTS): the
# first start sends the wrong PIN once; the second sends nothing, exits 4
# and says what to fix; a PIN file written anew is tried (once); a right
# PIN removes the record. For env: sources the same, with a record that
# holds neither the PIN nor a plain hash of it.
set -euo pipefail
. "$(dirname "$0")/provision-lib.sh"
. "$GS_SRC/tests/lib/ports.sh"
: "${GS_P11FAULT_MODULE:?}"
[ -f "$GS_P11FAULT_MODULE" ] || fail "no p11fault module at $GS_P11FAULT_MODULE"

expect_rc 0 "$G" -c "$CONF" ca init --key rsa:2048
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/srv.key" -out "$T/srv.pem" \
  -days 2 -subj /CN=localhost 2>/dev/null
take_port port
wrong=wrong-PIN-4711
printf '%s\n' "$wrong" > "$T/pin"; chmod 600 "$T/pin"
sed -e "s|^module = .*|module = $GS_P11FAULT_MODULE|" -e "s|^pin_source = .*|pin_source = $T/pin|" "$CONF" \
  > "$T/fault.conf"
cat >> "$T/fault.conf" <<CONF
[server]
listen = 127.0.0.1:$port
[tls]
cert = $T/srv.pem
key = $T/srv.key
CONF
record=$T/db/pin-refused

# logins FILE: the C_Login calls the process that wrote FILE made
logins() { sed -n 's/^C_Login //p' "$1"; }
# serve_once N: serve with the wrong PIN, its C_Login count in $T/count.N
serve_once() {
  local rc=0
  GS_P11FAULT_COUNTS="$T/count.$1" timeout 60 "$G" -c "$T/fault.conf" serve > "$T/serve.$1" 2>&1 || rc=$?
  [ "$rc" = 4 ] || fail "serve $1 with a wrong PIN: exit $rc, want 4: $(cat "$T/serve.$1")"
}

serve_once 1
[ "$(logins "$T/count.1")" = 1 ] || fail "first start: C_Login $(logins "$T/count.1") times, want 1"
# The service manager starts it again: the PIN is not sent, and the log
# says what to fix and how to clear it
serve_once 2
[ "$(logins "$T/count.2")" = 0 ] || fail "second start sent the refused PIN: C_Login $(logins "$T/count.2") times"
[ -f "$record" ] || fail "the refusal is not recorded at $record: $(cat "$T/serve.1")"
[ "$(stat -c %a "$record")" = 600 ] || fail "record mode $(stat -c %a "$record")"
! grep -q -- "$wrong" "$record" || fail "the record holds the PIN"
grep -q "the token refused the PIN from $T/pin at .*; not sent again until that file changes (correct the PIN there)" \
  "$T/serve.2" ||
  fail "serve does not say what to fix: $(cat "$T/serve.2")"
grep -q "or $record is removed" "$T/serve.2" || fail "serve does not say how to clear it: $(cat "$T/serve.2")"
echo "ok: a restarted serve does not send the refused PIN"
# Every file the server made beside the database is in groupsrv(1)'s
# FILES (pin-refused.lock was not)
. "$GS_SRC/tests/lib/man-files.sh"
unnamed=$(man_files_unnamed "$GS_SRC" groupsrv.1 "$T/db")
[ -z "$unnamed" ] || fail "files in the database's directory groupsrv(1) FILES does not name: $unnamed ($(ls -a "$T/db"))"
echo "ok: groupsrv(1) FILES names each file beside the database: $(ls "$T/db" | tr '\n' ' ')"

# check says so too, and sends nothing either
rc=0
GS_P11FAULT_COUNTS="$T/count.check" "$G" -c "$T/fault.conf" check > "$T/check.out" 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "check: exit $rc, want 1: $(cat "$T/check.out")"
grep -q "the token refused the PIN from $T/pin" "$T/check.out" || fail "check does not say so: $(cat "$T/check.out")"
[ "$(logins "$T/count.check")" = 0 ] || fail "check sent the refused PIN"
# and an admin command (a cron job's)
GS_P11FAULT_COUNTS="$T/count.cmd" expect_rc 4 "$G" -c "$T/fault.conf" group create eng --address eng@example.org
expect_err "PIN incorrect (not retried) (C_Login: not attempted: the token refused the PIN from $T/pin at "
[ "$(logins "$T/count.cmd")" = 0 ] || fail "an admin command sent the refused PIN"
echo "ok: check and admin commands say so without sending it"

# The file written anew (even with the same wrong PIN): tried once more
printf '%s\n' "$wrong" > "$T/pin.new"; chmod 600 "$T/pin.new"; mv -f "$T/pin.new" "$T/pin"
serve_once 3
[ "$(logins "$T/count.3")" = 1 ] || fail "a new PIN file was not tried: C_Login $(logins "$T/count.3") times"
serve_once 4
[ "$(logins "$T/count.4")" = 0 ] || fail "the new file's refused PIN was sent again"
# the right PIN written to it: taken, and the record goes
cp "$T/tok/user-pin" "$T/pin.new"; chmod 600 "$T/pin.new"; mv -f "$T/pin.new" "$T/pin"
GS_P11FAULT_COUNTS="$T/count.5" expect_rc 0 "$G" -c "$T/fault.conf" group create eng --address eng@example.org \
  --key rsa:2048
[ "$(logins "$T/count.5")" = 1 ] || fail "the corrected PIN: C_Login $(logins "$T/count.5") times"
[ ! -e "$record" ] || fail "a login with the right PIN left the record"
echo "ok: a PIN file written anew is tried; the right PIN clears the record"

# SIGHUP reads the PIN file again: a PIN another process saw refused (an
# admin command, after the file was changed under a running serve) is not
# taken up, so the key holder never sends it at its next login
"$G" -c "$T/fault.conf" serve > "$T/serve.hup" 2>&1 &
srv_pid=$!
trap 'kill "$srv_pid" 2>/dev/null || true; rm -rf "$T"' EXIT
for _ in $(seq 1 100); do
  curl -sk -o /dev/null "https://127.0.0.1:$port/healthz" && break
  kill -0 "$srv_pid" 2>/dev/null || fail "serve did not start: $(cat "$T/serve.hup")"
  sleep 0.1
done
printf '%s\n' "$wrong" > "$T/pin.new"; chmod 600 "$T/pin.new"; mv -f "$T/pin.new" "$T/pin"
expect_rc 4 "$G" -c "$T/fault.conf" group rotate eng
kill -HUP "$srv_pid"
for _ in $(seq 1 50); do grep -q 'PIN source was not taken up\|PIN source read again' "$T/serve.hup" && break; sleep 0.1; done
grep -q 'the PIN source was not taken up.*the token refused the PIN from' "$T/serve.hup" ||
  fail "SIGHUP took up a PIN the token refused: $(grep -i pin "$T/serve.hup")"
kill -TERM "$srv_pid"; wait "$srv_pid" || fail "serve's exit status after SIGTERM"
rm "$record"
echo "ok: SIGHUP does not take up a PIN another process saw refused"

# A card in a reader whose driver answers a wrong PIN with
# CKR_GENERAL_ERROR (tests/p11fault's card profile): the login may have
# cost a try, so the next command does not send that PIN either
for n in 1 2; do
  GS_P11FAULT_PIN_TRIES=3 GS_P11FAULT_PIN_ERROR=0x5 GS_P11FAULT_COUNTS="$T/count.card$n" \
    expect_rc 4 "$G" -c "$T/fault.conf" group rotate eng
  # the first says how to have it sent again: a restart alone does not
  [ "$n" = 2 ] || expect_err "check it by hand (pkcs11-tool --login), then correct the PIN source, or if it was right remove $record)"
done
[ "$(logins "$T/count.card1")" = 1 ] || fail "card: first command: C_Login $(logins "$T/count.card1") times"
[ "$(logins "$T/count.card2")" = 0 ] || fail "card: a login that may have cost a try was sent again"
expect_err "the login with the PIN from $T/pin failed at .* with CKR_GENERAL_ERROR, which may have cost a try"
rm "$record"
echo "ok: a login a card may have counted is not sent again by the next command"

# env: a keyed hash, the key in another file: a different value is tried
sed -e "s|^pin_source = .*|pin_source = env:GS_TEST_PIN|" "$T/fault.conf" > "$T/env.conf"
for n in 1 2; do
  GS_TEST_PIN=$wrong GS_P11FAULT_COUNTS="$T/count.env$n" expect_rc 4 "$G" -c "$T/env.conf" group rotate eng
  expect_err "PIN incorrect"
done
[ "$(logins "$T/count.env1")" = 1 ] || fail "env: first command: C_Login $(logins "$T/count.env1") times"
[ "$(logins "$T/count.env2")" = 0 ] || fail "env: the refused PIN was sent again"
[ -f "$record.key" ] && [ "$(stat -c %a "$record.key")" = 600 ] || fail "env: no 0600 key beside the record"
! grep -q -- "$wrong" "$record" || fail "env: the record holds the PIN"
! grep -q "$(printf '%s' "$wrong" | sha256sum | cut -c1-64)" "$record" || fail "env: the record holds SHA-256(PIN)"
GS_TEST_PIN=other-wrong GS_P11FAULT_COUNTS="$T/count.env3" expect_rc 4 "$G" -c "$T/env.conf" group rotate eng
[ "$(logins "$T/count.env3")" = 1 ] || fail "env: another value was not tried"
GS_TEST_PIN=$(cat "$T/tok/user-pin") expect_rc 0 "$G" -c "$T/env.conf" group rotate eng
[ ! -e "$record" ] || fail "env: the right PIN left the record"
echo "ok: env: sources are remembered by a keyed hash"
# Standard input as the PIN source (a cron job's `echo PIN | groupsrv`):
# its pipe is a new inode at each run, so the pipe is known by its PIN's
# keyed hash alone, and the refused PIN is not sent by the next run
sed -e "s|^pin_source = .*|pin_source = /dev/stdin|" "$T/fault.conf" > "$T/stdin.conf"
for n in 1 2; do
  printf '%s\n' "$wrong" | GS_P11FAULT_COUNTS="$T/count.stdin$n" expect_rc 4 "$G" -c "$T/stdin.conf" group rotate eng
done
[ "$(logins "$T/count.stdin1")" = 1 ] || fail "stdin: first run: C_Login $(logins "$T/count.stdin1") times"
[ "$(logins "$T/count.stdin2")" = 0 ] || fail "stdin: the refused PIN was sent again by the next run"
expect_err "the token refused the PIN from /dev/stdin at .*; not sent again until that pipe's PIN changes"
[ "$(grep -c '^groupsrv-pin-refused ' "$record")" = 1 ] || fail "stdin: one entry per run: $(cat "$record")"
cat "$T/tok/user-pin" | GS_P11FAULT_COUNTS="$T/count.stdin3" expect_rc 0 "$G" -c "$T/stdin.conf" group rotate eng
[ ! -e "$record" ] || fail "stdin: the right PIN left the record"
echo "ok: standard input's pipe is known by its PIN's keyed hash"
# The right PIN with a stray byte (a space typed after it, a second line,
# an editor's byte-order mark): the token says only "incorrect"; the
# message says what about the PIN read looks stray, never the PIN
right=$(cat "$T/tok/user-pin")
for c in "trailing|$right \n|ends with white space" "two lines|$right\nsecond\n|holds more than one line" \
         "bom|\xef\xbb\xbf$right\n|begins with a byte-order mark"; do
  name=${c%%|*}; c=${c#*|}; bytes=${c%%|*}; want=${c#*|}
  printf "$bytes" > "$T/pin.new"; chmod 600 "$T/pin.new"; mv -f "$T/pin.new" "$T/pin"
  expect_rc 4 "$G" -c "$T/fault.conf" group rotate eng
  expect_err "PIN incorrect.*the PIN read $want"
  ! grep -q -- "$right" "$T/err" || fail "$name: the message shows the PIN"
  rm -f "$record"
done
# a card whose longest PIN the stray byte passes answers
# CKR_PIN_LEN_RANGE: the message names that answer, not another
printf '%s \n' "$right" > "$T/pin.new"; chmod 600 "$T/pin.new"; mv -f "$T/pin.new" "$T/pin"
GS_P11FAULT_PIN_ERROR=0xa2 expect_rc 4 "$G" -c "$T/fault.conf" group rotate eng
expect_err "(C_Login: CKR_PIN_LEN_RANGE; the PIN read ends with white space"
rm -f "$record"
echo "ok: a PIN with a stray space, line or byte-order mark is named as such"

# A PIN the token's policy says has expired (CKR_PIN_EXPIRED at C_Login):
# exit 4 saying it must be changed on the token and in the pin source,
# not as a refused PIN (nothing recorded: it is the right PIN)
printf '%s\n' "$right" > "$T/pin.new"; chmod 600 "$T/pin.new"; mv -f "$T/pin.new" "$T/pin"
printf 'C_Login 0xa3\n' > "$T/expired.ctl"
GS_P11FAULT_CONTROL=$T/expired.ctl expect_rc 4 "$G" -c "$T/fault.conf" group rotate eng
expect_err "PIN locked or expired (C_Login: CKR_PIN_EXPIRED: the token wants the user PIN changed before it is used: change it (pkcs11-tool --login --change-pin) and put the new one in the pin source)\$"
[ ! -e "$record" ] || fail "an expired PIN was recorded as refused"
echo "ok: an expired PIN is said to be changed, not refused"
echo "pin-refusal: OK"
