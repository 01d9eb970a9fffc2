# Sourced by the envelope-*.sh tests: a temp dir cleaned on exit, and
# throw-away certificates made with the openssl command line.
# Usage: source envelope-lib.sh ENVTOOL WORKBASE
set -euo pipefail
ENVTOOL=$1
WORKBASE=${2:-${TMPDIR:-/tmp}}
mkdir -p "$WORKBASE"
W=$(mktemp -d "$WORKBASE/envelope.XXXXXX")
trap 'rm -rf "$W"' EXIT
export TMPDIR=$W

fail() { echo "FAIL: $*" >&2; exit 1; }

# make_rsa NAME EMAIL: NAME.pem / NAME.key, a group-style certificate with SAN
# email, keyUsage keyEncipherment and EKU emailProtection.
make_rsa() {
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/$1.key" -out "$W/$1.pem" -days 2 \
    -subj "/CN=$1" -addext "subjectAltName=email:$2" -addext "keyUsage=critical,keyEncipherment" \
    -addext "extendedKeyUsage=emailProtection" 2>/dev/null
}
make_ec() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$W/$1.key" -out "$W/$1.pem" \
    -days 2 -subj "/CN=$1" -addext "subjectAltName=email:$2" -addext "keyUsage=critical,keyAgreement" \
    -addext "extendedKeyUsage=emailProtection" 2>/dev/null
}

# expect_rc WANT CMD...: runs CMD, fails unless its exit status is WANT.
expect_rc() {
  local want=$1; shift
  local rc=0
  "$@" 2>"$W/stderr" || rc=$?
  [ "$rc" -eq "$want" ] || { cat "$W/stderr" >&2; fail "expected exit $want, got $rc: $*"; }
}

# envtool exits 10 + env_err on library errors (envelope.h order).
E_IO=13 E_TRUNCATED=14 E_NOT_CMS=15 E_MIME=16 E_CONTENT_TYPE=17 E_NO_RECIPIENT=18 E_UNSUPPORTED=19 E_AUTH=20
E_ENCODING=25 E_BASE64=26

printf 'From: alice@example.org\nTo: list@example.org\nSubject: interop\nX-Inner: only inside\n\nHello group,\nthis is the body.\n' >"$W/mail.txt"
