# ceremony-lib.sh: shared set-up for tests/integration/ceremony-*.sh
# (sourced, with BIN and SRC set). Throw-away SoftHSM tokens, each with
# its own SOFTHSM2_CONF that only the commands run against it see, a
# groupsrv config per server, and helpers that check exit codes, one-line
# errors and that a refusal left the token exactly as it was.

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

# mktoken NAME: a token labelled NAME in $work/tok-NAME
mktoken() { "$SRC/scripts/provision-softhsm" "$work/tok-$1" "$1" >/dev/null; }

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
    --token-label "$1" --login --pin env:GS_PIN --list-objects 2>/dev/null
}
snapshot() { objects "$1" | sha256sum | cut -c1-64; }

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
  line=$(grep "\"action\":\"$action\"" "$file" | grep -E "\"outcome\":\"$outcome" | tail -n 1)
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
