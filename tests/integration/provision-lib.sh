# Shared set-up for tests/integration/provision-*.sh (sourced, not run).
# Needs: GS_BIN (build/bin), GS_SRC (source tree), GS_WORK (test work dir),
# SOFTHSM2_MODULE. Makes a throw-away token and a config in a fresh temp dir.
set -euo pipefail

: "${GS_BIN:?}" "${GS_SRC:?}" "${GS_WORK:?}" "${SOFTHSM2_MODULE:?}"
mkdir -p "$GS_WORK"
T=$(mktemp -d "$GS_WORK/provision.XXXXXX")
trap 'rm -rf "$T"' EXIT
G="$GS_BIN/groupsrv"
[ -x "$G" ] || { echo "FAIL: $G not built" >&2; exit 1; }

"$GS_SRC/scripts/provision-softhsm" "$T/tok" groupsrv > "$T/prov.out"
export SOFTHSM2_CONF="$T/tok/softhsm2.conf"
unset GROUPSRV_CONF
CONF="$T/groupsrv.conf"
cat > "$CONF" <<CONF
[hsm]
module = $SOFTHSM2_MODULE
token = pkcs11:token=groupsrv
pin_source = $T/tok/user-pin
[db]
path = $T/db/groupsrv.db
[ca]
group_cert_days = 30
[audit]
path = $T/audit.jsonl
CONF

fail() { echo "FAIL: $*" >&2; exit 1; }
# expect_rc CODE CMD...: runs CMD, requires exit status CODE; stderr kept in $T/err.
expect_rc() {
  local want=$1; shift
  local got=0
  "$@" > "$T/out" 2> "$T/err" || got=$?
  if [ "$got" -ne "$want" ]; then
    echo "--- stdout"; cat "$T/out"; echo "--- stderr"; cat "$T/err"
    fail "expected exit $want, got $got: $*"
  fi
}
# The error message must be exactly one line naming what is wrong.
one_line() {
  [ "$(wc -l < "$T/err")" -eq 1 ] || { cat "$T/err"; fail "error is not exactly one line"; }
}
expect_err() {
  grep -q -- "$1" "$T/err" || { cat "$T/err"; fail "stderr lacks '$1'"; }
  one_line
}
p11() { GS_PIN=$(cat "$T/tok/user-pin") pkcs11-tool --module "$SOFTHSM2_MODULE" --token-label groupsrv --login --pin env:GS_PIN "$@"; }
db_sum() { sqlite3 "$T/db/groupsrv.db" '.dump' | sha256sum; }
