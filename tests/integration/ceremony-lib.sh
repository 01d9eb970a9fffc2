# ceremony-lib.sh: shared set-up for tests/integration/ceremony-*.sh
# (sourced, with BIN and SRC set). Throw-away SoftHSM tokens, each with
# its own SOFTHSM2_CONF that only the commands run against it see, a
# groupsrv config per server, and helpers that check exit codes, one-line
# errors and that a refusal left the token exactly as it was.

. "$SRC/tests/lib/ports.sh"
. "$SRC/tests/lib/has-line.sh"
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/ceremony.XXXXXX")
srv_pid=
cleanup() {
  if [ -n "$srv_pid" ] && kill -0 "$srv_pid" 2>/dev/null; then
    kill -TERM "$srv_pid" 2>/dev/null || true
    wait "$srv_pid" 2>/dev/null || true
  fi
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work dir kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
module=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
unset GROUPSRV_CONF SOFTHSM2_CONF || true

# mktoken NAME [LABEL]: a token labelled LABEL (default NAME) in $work/tok-NAME
mktoken() {
  "$SRC/scripts/provision-softhsm" "$work/tok-$1" "${2:-$1}" >/dev/null
  printf '%s\n' "${2:-$1}" > "$work/tok-$1/label"
}

# mkserver NAME: a token and a groupsrv config for server NAME; gs_NAME runs groupsrv on it.
mkserver() {
  local n=$1
  mktoken "$n"
  mkdir -p "$work/$n"
  cat > "$work/$n.conf" <<CONF
[hsm]
module = $module
token = pkcs11:token=$n
pin_source = $work/tok-$n/user-pin
so_pin_source = $work/tok-$n/so-pin
[db]
path = $work/$n/groupsrv.db
[audit]
path = $work/$n/audit.jsonl
CONF
  eval "gs_$n() { SOFTHSM2_CONF=$work/tok-$n/softhsm2.conf \"\$BIN/groupsrv\" -c \"\${GS_CONF_$n:-$work/$n.conf}\" \"\$@\"; }"
}

# objects NAME: every object on token NAME (label, id, class, attributes), sorted
objects() {
  GS_PIN=$(cat "$work/tok-$1/user-pin") SOFTHSM2_CONF=$work/tok-$1/softhsm2.conf pkcs11-tool --module "$module" \
    --token-label "$(cat "$work/tok-$1/label")" --login --pin env:GS_PIN --list-objects 2>/dev/null
}
snapshot() { objects "$1" | sha256sum | cut -c1-64; }
# delete_key NAME TYPE LABEL: deletes the TYPE (privkey, pubkey, secrkey)
# object LABEL on token NAME with pkcs11-tool, as an operator would by hand
delete_key() {
  GS_PIN=$(cat "$work/tok-$1/user-pin") SOFTHSM2_CONF=$work/tok-$1/softhsm2.conf pkcs11-tool --module "$module" \
    --token-label "$(cat "$work/tok-$1/label")" --login --pin env:GS_PIN --delete-object --type "$2" --label "$3" \
    >/dev/null 2>&1
}

# expect WANT DESC -- command...: exit status WANT; a failure is one line on stderr
expect() {
  local want=$1 desc=$2 got=0
  shift 3
  "$@" >"$work/out" 2>"$work/err" || got=$?
  [ "$got" = "$want" ] || fail "$desc: exit $got, wanted $want: $(head -c 600 "$work/err") $(head -c 300 "$work/out")"
  if [ "$want" != 0 ]; then
    [ "$(wc -l < "$work/err")" = 1 ] || fail "$desc: the error is not one line: $(cat "$work/err")"
  fi
  ok "$desc (exit $want)"
}
expect_msg() { grep -Eq -- "$1" "$work/err" || fail "message lacks '$1': $(cat "$work/err")"; }

# refused NAME WANT DESC -- command...: refused with WANT, token NAME unchanged
refused() {
  local tok=$1 want=$2 desc=$3 before
  shift 4
  before=$(snapshot "$tok")
  expect "$want" "$desc" -- "$@"
  [ "$(snapshot "$tok")" = "$before" ] || fail "$desc: the objects on token $tok changed"
}

# audit_has FILE ACTION OUTCOME-REGEX GREP...: a record of ACTION whose outcome matches
audit_has() {
  local file=$1 action=$2 outcome=$3 line
  shift 3
  # || true: under pipefail a grep that finds nothing would end the test
  # here without saying why
  line=$(grep "\"action\":\"$action\"" "$file" | grep -E "\"outcome\":\"$outcome" | tail -n 1) || true
  [ -n "$line" ] || fail "no $action record with outcome $outcome in $file"
  for g in "$@"; do
    printf '%s' "$line" | grep -q -- "$g" || fail "$action record lacks $g: $line"
  done
}

# fingerprint FILE: SHA-256 of the DER public key in a transport key file (stock openssl)
fingerprint() { openssl pkey -pubin -in "$1" -outform DER | sha256sum | cut -c1-64; }

# field OBJS-FILE LABEL FIELD: a field ("Access", "ID", "Usage") of the
# private (or secret) key object labelled LABEL in a pkcs11-tool listing
field() {
  awk -v L="$2" -v F="$3:" '/^[A-Z]/ { key = /^(Private|Secret) Key Object/; hit = 0 }
    key && $1 == "label:" && $2 == L { hit = 1 }
    hit && $1 == F { sub(/^ *[A-Za-z]+: */, ""); print; exit }' "$1"
}

# serve_start NAME CLIENT_CA: NAME's `groupsrv serve` on a free loopback
# port, with a throw-away TLS certificate ($work/tls.pem, the clients'
# --cacert) and CLIENT_CA as its client CAs (appended to NAME's config;
# a second start uses what the first appended); sets srv_pid and srv_url. Not through gs_NAME: a backgrounded shell
# function is a subshell, and killing it would leave groupsrv running.
serve_start() {
  local n=$1 port
  if grep -q '^\[server\]' "$work/$n.conf"; then # started before: the same port and files
    port=$(sed -n 's/^listen = 127.0.0.1://p' "$work/$n.conf")
  else
    take_port port
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=127.0.0.1" \
      -addext "subjectAltName=IP:127.0.0.1" -keyout "$work/tls.key" -out "$work/tls.pem" 2>/dev/null
    cat >> "$work/$n.conf" <<CONF
[server]
listen = 127.0.0.1:$port
[tls]
cert = $work/tls.pem
key = $work/tls.key
client_ca = $2
CONF
  fi
  SOFTHSM2_CONF=$work/tok-$n/softhsm2.conf "$BIN/groupsrv" -c "$work/$n.conf" serve >> "$work/$n-serve.log" 2>&1 &
  srv_pid=$!
  srv_url=https://127.0.0.1:$port
  for _ in $(seq 1 100); do
    curl -s --cacert "$work/tls.pem" -o /dev/null "$srv_url/healthz" && return 0
    kill -0 "$srv_pid" 2>/dev/null || fail "$n's serve refused to start: $(tail -3 "$work/$n-serve.log")"
    sleep 0.1
  done
  fail "$n's serve did not answer /healthz"
}
serve_stop() { kill -TERM "$srv_pid"; wait "$srv_pid" 2>/dev/null || true; srv_pid=; }

# unwrap_reads MSG.der PLAIN MEMBER WHAT: the server at srv_url unwraps the
# content key of MSG.der (AES-256-CBC, openssl cms) for MEMBER
# ($work/MEMBER.pem and .key) with deliver=tls, and it decrypts MSG.der to PLAIN.
unwrap_reads() {
  local key iv
  python3 "$SRC/tests/integration/server-cms.py" ri "$1" "$work/ri.der"
  curl -sS --cacert "$work/tls.pem" --cert "$work/$3.pem" --key "$work/$3.key" \
    -H 'Content-Type: application/json' -o "$work/unwrap.json" \
    --data "{\"recipient_info\":\"$(base64 -w0 "$work/ri.der")\",\"deliver\":\"tls\"}" \
    "$srv_url/v1/groups/eng/unwrap"
  key=$(python3 -c 'import json,sys,base64; print(base64.b64decode(json.load(open(sys.argv[1]))["key"]).hex())' \
    "$work/unwrap.json") || fail "$4: not unwrapped: $(cat "$work/unwrap.json")"
  iv=$(python3 "$SRC/tests/integration/server-cms.py" content "$1" "$work/ct.bin")
  openssl enc -d -aes-256-cbc -K "$key" -iv "$iv" -in "$work/ct.bin" -out "$work/dec.txt" 2>/dev/null ||
    fail "$4: the unwrapped key does not decrypt the message"
  cmp -s "$work/dec.txt" "$2" || fail "$4: decrypted text differs"
}
