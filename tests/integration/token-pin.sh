#!/usr/bin/env bash
# token-pin.sh BIN SRC: a wrong PIN on a token that counts failed logins
# (opencryptoki's soft token: the third wrong PIN locks it). A wrong PIN
# is sent once (exit 4, one line) and then not again, by any command or
# start of serve, until the PIN file changes (the refusal is recorded
# beside the database); once the token reports its last try (CKF_USER_PIN_FINAL_TRY)
# groupsrv does not spend it, not even with the right PIN, so that a loop
# of commands or a service manager restarting serve never locks the
# token. A person logs in once by hand (pkcs11-tool), which resets the
# count, and groupsrv works again. A locked PIN is not sent at all, nor
# one shorter or longer than the token's ulMinPinLen..ulMaxPinLen.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/tokens/lib.sh"
. "$SRC/tests/lib/ports.sh"
tok_load opencryptoki
tok_enter "$@"

work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/token-pin.XXXXXX")
cleanup() {
  tok_stop
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work dir kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

tok_start "$work"
cat > "$work/good.conf" <<CONF
[hsm]
module = $TOK_MODULE
token = $TOK_URI
pin_source = $TOK_PIN_FILE
[db]
path = $work/db/groupsrv.db
[audit]
path = $work/audit.jsonl
CONF
tok_write_pin "$work/bad-pin" 0000
sed "s|^pin_source = .*|pin_source = $work/bad-pin|" "$work/good.conf" > "$work/bad.conf"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/srv.key" -out "$work/srv.pem" \
  -days 2 -subj /CN=localhost 2>/dev/null
take_port port
cat >> "$work/bad.conf" <<CONF
[server]
listen = 127.0.0.1:$port
[tls]
cert = $work/srv.pem
key = $work/srv.key
CONF

# flags: the token's flags as pkcs11-tool shows them (no login)
flags() { pkcs11-tool --module "$TOK_MODULE" --list-token-slots 2>/dev/null | sed -n 's/^ *token flags *: *//p'; }
# expect WANT PATTERN CMD...: exit WANT, one stderr line matching PATTERN
expect() {
  local want=$1 pat=$2 got=0
  shift 2
  "$@" >"$work/out" 2>"$work/err" || got=$?
  [ "$got" = "$want" ] || fail "$*: exit $got, wanted $want: $(cat "$work/err")"
  if [ "$want" != 0 ]; then
    [ "$(wc -l < "$work/err")" = 1 ] || fail "$*: the error is not one line: $(cat "$work/err")"
    grep -q -- "$pat" "$work/err" || fail "$*: stderr lacks '$pat': $(cat "$work/err")"
  fi
}

expect 0 "" "$BIN/groupsrv" -c "$work/good.conf" ca init --key rsa:2048
case "$(flags)" in *"count low"*|*"final user PIN try"*|*"PIN locked"*) fail "fresh token flags: $(flags)" ;; esac

# A PIN of a length the token never takes (opencryptoki's soft token: 4
# to 8) is not sent: the soft token counts a 9-byte one as a wrong try.
# The right PIN with a space typed after it is the case in practice.
printf '%s \n' "$(cat "$TOK_PIN_FILE")" > "$work/long-pin"; chmod 600 "$work/long-pin"
tok_write_pin "$work/short-pin" 123
for f in long short; do
  sed "s|^pin_source = .*|pin_source = $work/$f-pin|" "$work/good.conf" > "$work/$f.conf"
  for i in 1 2 3; do
    expect 4 "PIN incorrect (not retried) (C_Login: not attempted: the user PIN is ${f}er than the token's" \
      "$BIN/groupsrv" -c "$work/$f.conf" group create eng --address eng@example.org --key rsa:2048
  done
  case "$(flags)" in *"count low"*|*"final user PIN try"*|*"PIN locked"*)
    fail "a $f PIN was sent: token flags $(flags)" ;; esac
done
grep -q "(ulMinPinLen 4, C_GetTokenInfo)" "$work/err" || fail "the short PIN's message: $(cat "$work/err")"
"$BIN/groupsrv" -c "$work/long.conf" group create eng --address eng@example.org --key rsa:2048 2>"$work/err" || true
grep -q "(ulMaxPinLen 8, C_GetTokenInfo).*the PIN read ends with white space" "$work/err" ||
  fail "the long PIN's message: $(cat "$work/err")"
! grep -qF -- "$(cat "$TOK_PIN_FILE")" "$work/err" || fail "the message shows the PIN"
ok "a PIN outside the token's ulMinPinLen..ulMaxPinLen is not sent: $(cat "$work/err")"

# Two wrong PINs: one try each, refused with exit 4
expect 4 "PIN incorrect (not retried) (C_Login: CKR_PIN_INCORRECT)" \
  "$BIN/groupsrv" -c "$work/bad.conf" group create eng --address eng@example.org --key rsa:2048
case "$(flags)" in *"count low"*) ;; *) fail "one wrong PIN: token flags $(flags)" ;; esac
# the same file again: not sent (the token's count stays)
expect 4 "PIN incorrect (not retried) (C_Login: not attempted: the token refused the PIN from $work/bad-pin" \
  "$BIN/groupsrv" -c "$work/bad.conf" tls init --dns gs.example.org --out "$work/tls.pem"
case "$(flags)" in *"final user PIN try"*) fail "a refused PIN was sent again: token flags $(flags)" ;; esac
# the file written anew (a person changed it): tried once
tok_write_pin "$work/bad-pin" 0000
expect 4 "PIN incorrect (not retried) (C_Login: CKR_PIN_INCORRECT)" \
  "$BIN/groupsrv" -c "$work/bad.conf" tls init --dns gs.example.org --out "$work/tls.pem"
case "$(flags)" in *"final user PIN try"*) ;; *) fail "two wrong PINs: token flags $(flags)" ;; esac
ok "a wrong PIN costs one try per change of the PIN file"

# The last try is not spent: by a command, by serve (a service manager
# would start it again and again), nor with the right PIN
last="PIN locked or expired (the token allows one more user PIN try (CKF_USER_PIN_FINAL_TRY); not spent automatically"
for i in 1 2 3; do
  expect 4 "the token refused the PIN from $work/bad-pin" \
    "$BIN/groupsrv" -c "$work/bad.conf" group create eng --address eng@example.org --key rsa:2048
done
tok_write_pin "$work/bad-pin" 0000
expect 4 "$last" "$BIN/groupsrv" -c "$work/bad.conf" group create eng --address eng@example.org --key rsa:2048
rc=0
timeout 60 "$BIN/groupsrv" -c "$work/bad.conf" serve > "$work/serve.out" 2>&1 || rc=$?
[ "$rc" = 4 ] || fail "serve with the token at its last PIN try: exit $rc, want 4: $(cat "$work/serve.out")"
grep -q "CKF_USER_PIN_FINAL_TRY" "$work/serve.out" || fail "serve does not say why: $(cat "$work/serve.out")"
expect 4 "$last" "$BIN/groupsrv" -c "$work/good.conf" group create eng --address eng@example.org --key rsa:2048
case "$(flags)" in *"PIN locked"*) fail "groupsrv locked the token: $(flags)" ;; *"final user PIN try"*) ;;
  *) fail "the last try was spent: token flags $(flags)" ;; esac
[ -z "$("$BIN/groupsrv" -c "$work/good.conf" group list)" ] || fail "a group was recorded"
ok "the last PIN try is left to a person: $(cat "$work/err")"

# A person logs in once with the right PIN: the count is reset
GS_PIN=$(cat "$TOK_PIN_FILE") pkcs11-tool --module "$TOK_MODULE" --token-label groupsrv --login --pin env:GS_PIN \
  --list-objects >/dev/null 2>&1 || fail "pkcs11-tool --login with the right PIN"
case "$(flags)" in *"final user PIN try"*|*"count low"*) fail "the count was not reset: $(flags)" ;; esac
expect 0 "" "$BIN/groupsrv" -c "$work/good.conf" group create eng --address eng@example.org --key rsa:2048
ok "after a login by hand groupsrv works again"

# A locked PIN (three wrong tries by another program) is not sent
for i in 1 2 3; do
  GS_PIN=0000 pkcs11-tool --module "$TOK_MODULE" --token-label groupsrv --login --pin env:GS_PIN \
    --list-objects >/dev/null 2>&1 || true
done
case "$(flags)" in *"PIN locked"*) ;; *) fail "three wrong PINs by hand did not lock the token: $(flags)" ;; esac
expect 4 "PIN locked or expired (the token reports the user PIN locked (CKF_USER_PIN_LOCKED); not tried" \
  "$BIN/groupsrv" -c "$work/good.conf" group rotate eng
ok "a locked PIN is not sent: $(cat "$work/err")"
echo "token-pin: OK"
