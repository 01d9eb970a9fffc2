#!/usr/bin/env bash
# groupmail-send-auth.sh BIN SRC: `groupmail send` to a submission server
# that wants STARTTLS and AUTH (tests/lib/smtpd.py: aiosmtpd, a real SMTP
# implementation), the way a member sends from their own machine through
# their provider. What groupmail(1) promises:
#   - STARTTLS required (--smtp-starttls, [smtp] starttls = required) never
#     falls back to clear text: a server without it is exit 4, nothing sent;
#     its certificate is checked against --smtp-cacert;
#   - the AUTH password comes from a 0600 file or env:VAR, never a flag's
#     value; it is sent only over TLS nobody can strip (smtps://, or
#     STARTTLS required): anything else is a usage error (2) before any
#     connection; a refused login is exit 3 and says so;
#   - with AUTH configured, the message never goes out without a login
#     (libcurl skips AUTH silently when the server offers none);
#   - the password is in no output.
set -euo pipefail
BIN=$1 SRC=$2
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/gm-send-auth.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
export HOME=$work XDG_CONFIG_HOME= GROUPMAIL_CONFIG=
PW='s3cret-Pa55-zq7'

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=smtpd.test -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$work/s.key" -out "$work/s.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=eng -keyout "$work/g.key" -out "$work/g.pem" 2>/dev/null
printf 'Content-Type: text/plain\n\nhello\n' |
  openssl cms -encrypt -aes-128-cbc -recip "$work/g.pem" -subject hi -out "$work/m.eml"
printf 'alice %s\n' "$PW" >"$work/auth"
(umask 077 && printf '%s\n' "$PW" >"$work/pw")

# smtpd NAME ARGS...: starts smtpd.py with its store in $work/NAME; sets PORT
smtpd() {
  local d=$work/$1
  shift
  mkdir -p "$d"
  /usr/bin/python3 "$SRC/tests/lib/smtpd.py" --dir "$d" --port-file "$d/port" "$@" 2>"$d/log" &
  pids+=($!)
  for _ in $(seq 1 100); do [ -s "$d/port" ] && break; sleep 0.1; done
  [ -s "$d/port" ] || fail "smtpd.py did not start: $(cat "$d/log")"
  PORT=$(cat "$d/port")
}
stored() { ls "$work/$1/new" 2>/dev/null | wc -l; }

# run WANT-EXIT WANT-TEXT ARGS...: groupmail send with ARGS
run() {
  local want=$1 text=$2 rc=0
  shift 2
  "$BIN/groupmail" send --to eng@example.org --from alice@example.org --in "$work/m.eml" --timeout 10 "$@" \
    2>"$work/err" || rc=$?
  [ "$rc" = "$want" ] || fail "$*: exit $rc, want $want: $(cat -v "$work/err")"
  if [ -n "$text" ]; then
    [ "$(wc -l <"$work/err")" = 1 ] || fail "$*: not one line: $(cat -v "$work/err")"
    grep -qF -- "$text" "$work/err" || fail "$*: want '$text' in: $(cat -v "$work/err")"
  fi
  ! grep -qF -- "$PW" "$work/err" || fail "$*: the password is in the output"
  echo "ok: exit $rc ${text:+($text)}"
}

# A submission server: STARTTLS, then AUTH, before MAIL.
smtpd sub --tls-cert "$work/s.pem" --tls-key "$work/s.key" --require-starttls --auth-file "$work/auth" --require-auth
SUB=smtp://127.0.0.1:$PORT
run 0 "" --smtp "$SUB" --smtp-starttls --smtp-cacert "$work/s.pem" --smtp-user alice --smtp-password-file "$work/pw"
[ "$(stored sub)" = 1 ] || fail "the message was not stored"
grep -q ' ok alice$' "$work/sub/auth.log" || fail "no successful login: $(cat "$work/sub/auth.log")"

# the password from the environment, the rest from the configuration file
cat >"$work/gm.conf" <<CONF
[smtp]
relay = $SUB
starttls = required
cacert = $work/s.pem
user = alice
password_file = env:GM_TEST_SMTP_PW
CONF
GM_TEST_SMTP_PW=$PW run 0 "" -c "$work/gm.conf"
[ "$(stored sub)" = 2 ] || fail "the message sent with the configuration file was not stored"

# a wrong password: refused (3), and the message says it was the login
(umask 077 && echo wrong >"$work/pw-bad")
run 3 "refused the login" --smtp "$SUB" --smtp-starttls --smtp-cacert "$work/s.pem" --smtp-user alice \
  --smtp-password-file "$work/pw-bad"
grep -q ' refused alice$' "$work/sub/auth.log" || fail "the wrong password did not reach the server"

# never in clear: AUTH without TLS that cannot be stripped is refused before
# connecting (starttls = yes would let a man in the middle hide STARTTLS)
n=$(wc -l <"$work/sub/auth.log")
run 2 "in clear" --smtp "$SUB" --smtp-user alice --smtp-password-file "$work/pw"
printf '[smtp]\nstarttls = yes\n' >"$work/yes.conf"
run 2 "in clear" -c "$work/yes.conf" --smtp "$SUB" --smtp-user alice --smtp-password-file "$work/pw"
[ "$(wc -l <"$work/sub/auth.log")" = "$n" ] || fail "a login was tried without TLS"
run 2 "needs both" --smtp "$SUB" --smtp-starttls --smtp-user alice
run 2 "needs both" --smtp "$SUB" --smtp-starttls --smtp-password-file "$work/pw"

# the password file must be the user's alone; a missing one is named
chmod 0644 "$work/pw"
run 1 "chmod 600" --smtp "$SUB" --smtp-starttls --smtp-cacert "$work/s.pem" --smtp-user alice --smtp-password-file "$work/pw"
chmod 0600 "$work/pw"
run 1 "not found" --smtp "$SUB" --smtp-starttls --smtp-cacert "$work/s.pem" --smtp-user alice \
  --smtp-password-file env:GM_TEST_NO_SUCH_VARIABLE
# any other refusal says why (a link that loops, an empty file, a
# device), not only "cannot read"
ln -s "$work/pw-loop" "$work/pw-loop"
: >"$work/pw-empty"; chmod 0600 "$work/pw-empty"
for c in "pw-loop|Too many levels of symbolic links" "pw-empty|: empty" "/dev/null|not a regular file or named pipe"; do
  f=${c%%|*}; case $f in /*) ;; *) f=$work/$f;; esac
  run 1 "${c#*|}" --smtp "$SUB" --smtp-starttls --smtp-cacert "$work/s.pem" --smtp-user alice --smtp-password-file "$f"
done
printf '[smtp]\nstarttls = maybe\n' >"$work/bad.conf"
run 1 "starttls must be no, yes or required" -c "$work/bad.conf" --smtp "$SUB"

# the server's certificate is checked: without its CA nothing is sent (4)
run 4 "" --smtp "$SUB" --smtp-starttls --smtp-user alice --smtp-password-file "$work/pw"
# no login where the server wants one: its 530 is a refusal (3)
run 3 "530" --smtp "$SUB" --smtp-starttls --smtp-cacert "$work/s.pem"
[ "$(stored sub)" = 2 ] || fail "a refused message was stored"

# a server that offers no STARTTLS: required never falls back to clear text
smtpd plain
run 4 "does not offer STARTTLS" --smtp "smtp://127.0.0.1:$PORT" --smtp-starttls
[ "$(stored plain)" = 0 ] || fail "sent in clear although STARTTLS was required"
# and without it, plain SMTP to a local relay works as before
run 0 "" --smtp "smtp://127.0.0.1:$PORT"

# a server that offers no AUTH at all (it takes mail from anyone): libcurl
# would skip the login without a word; groupmail sends nothing instead
smtpd open --tls-cert "$work/s.pem" --tls-key "$work/s.key"
run 3 "offers no AUTH" --smtp "smtp://127.0.0.1:$PORT" --smtp-starttls --smtp-cacert "$work/s.pem" \
  --smtp-user alice --smtp-password-file "$work/pw"
[ "$(stored open)" = 0 ] || fail "sent without the login that was asked for"

# AUTH in clear only by the user's explicit choice ([smtp] auth_in_clear):
# "loopback" to a server on this host (as written: 127.0.0.0/8, [::1],
# localhost), refused before connecting for any other (192.0.2.1, TEST-NET)
smtpd clear --auth-file "$work/auth" --auth-in-clear --require-auth
printf '[smtp]\nauth_in_clear = loopback\n' >"$work/lo.conf"
run 2 "auth_in_clear = loopback allows only a server on this host" -c "$work/lo.conf" --smtp smtp://192.0.2.1:25 \
  --smtp-user alice --smtp-password-file "$work/pw"
run 0 "" -c "$work/lo.conf" --smtp "smtp://127.0.0.1:$PORT" --smtp-user alice --smtp-password-file "$work/pw"
[ "$(stored clear)" = 1 ] && grep -q ' ok alice$' "$work/clear/auth.log" || fail "no login in clear on this host"
# and reached directly: libcurl would take it through a proxy named in the
# environment (all_proxy), which sends the password in clear to the proxy
# and on to a relay on the proxy's host, not this one
all_proxy=socks5://127.0.0.1:1 ALL_PROXY=socks5://127.0.0.1:1 run 0 "" -c "$work/lo.conf" \
  --smtp "smtp://127.0.0.1:$PORT" --smtp-user alice --smtp-password-file "$work/pw"
[ "$(stored clear)" = 2 ] || fail "not sent directly to the server on this host with all_proxy set"
# a login written into the URL (libcurl logs in with its user:password,
# and --smtp-user's checks never see it): a usage error, nothing sent
n=$(wc -l <"$work/clear/auth.log")
run 2 "--smtp: a user or password in the URL" --smtp "smtp://alice:$PW@127.0.0.1:$PORT"
run 2 "--smtp: a user or password in the URL" -c "$work/lo.conf" --smtp "smtp://alice:$PW@127.0.0.1:$PORT"
[ "$(wc -l <"$work/clear/auth.log")" = "$n" ] || fail "the URL's password was sent"
printf '[smtp]\nauth_in_clear = always\n' >"$work/bad2.conf"
run 1 "bad value 'always' for [smtp] auth_in_clear" -c "$work/bad2.conf" --smtp "smtp://127.0.0.1:$PORT"

# a flag that asks for TLS where there is none (or where it is not
# STARTTLS) is a usage error, never silently ignored: nothing is sent
run 2 "--smtp-cacert applies only to TLS" --smtp "smtp://127.0.0.1:$PORT" --smtp-cacert "$work/s.pem"
run 2 "--smtp-starttls does not apply to smtps://" --smtp "smtps://127.0.0.1:$PORT" --smtp-starttls
[ "$(stored clear)" = 2 ] || fail "a refused command line sent something"

# smtps:// (TLS from the first byte) with AUTH
smtpd imp --tls-cert "$work/s.pem" --tls-key "$work/s.key" --implicit-tls --auth-file "$work/auth" --require-auth
run 0 "" --smtp "smtps://127.0.0.1:$PORT" --smtp-cacert "$work/s.pem" --smtp-user alice --smtp-password-file "$work/pw"
[ "$(stored imp)" = 1 ] || fail "the message sent over smtps:// was not stored"
echo "groupmail send (STARTTLS, AUTH): ok"
