#!/usr/bin/env bash
# server-tlskey-ca.sh BIN SRC: `serve` refuses a `[tls] key` on the token
# that is the local CA's key (SECURITY.md, "What a compromised network
# process can and cannot do"). The network process may have any digest of
# 20 to 64 bytes signed with the TLS key; were that the CA's key, it could
# issue itself membership certificates for any group. An EC CA (`ca init
# --key ec:p256`) passes every other check of a TLS key on the token, and
# its own certificate matches it, so only this check stops it.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/lib/ports.sh"
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/tlskey-ca.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

"$SRC/scripts/provision-softhsm" "$work/token" groupsrv >/dev/null
export SOFTHSM2_CONF=$work/token/softhsm2.conf
take_port port
cat > "$work/groupsrv.conf" <<CONF
[server]
listen = 127.0.0.1:$port
[tls]
cert = $work/ca.pem
key = pkcs11:token=groupsrv;object=gs:ca;type=private
client_ca = $work/ca.pem
[hsm]
module = ${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
token = pkcs11:token=groupsrv
pin_source = $work/token/user-pin
[db]
path = $work/groupsrv.db
[audit]
path = $work/audit.jsonl
CONF
gs() { "$BIN/groupsrv" -c "$work/groupsrv.conf" "$@"; }
gs ca init --key ec:p256 >/dev/null || fail "ca init --key ec:p256"
gs ca show > "$work/ca.pem"
set +e
timeout 60 "$BIN/groupsrv" -c "$work/groupsrv.conf" serve >"$work/serve.log" 2>&1
rc=$?
set -e
[ "$rc" = 1 ] || fail "serve with the CA's key as [tls] key: exit $rc, wanted 1: $(tail -n 5 "$work/serve.log")"
grep -q "is the local CA's key" "$work/serve.log" || fail "no reason given: $(tail -n 5 "$work/serve.log")"
ok "serve refuses the local CA's key as [tls] key (exit 1, says why)"
# A key of its own on the same token is accepted (the check is not
# refusing every token key).
gs tls init --dns groupsrv.test --out "$work/tls.pem" >/dev/null || fail "tls init"
sed -i -e "s|^cert = .*|cert = $work/tls.pem|" -e "s|object=gs:ca|object=tls|" "$work/groupsrv.conf"
"$BIN/groupsrv" -c "$work/groupsrv.conf" serve >"$work/serve2.log" 2>&1 &
srv=$!
for _ in $(seq 1 100); do
  grep -q 'msg="listening"' "$work/serve2.log" && break
  kill -0 "$srv" 2>/dev/null || break
  sleep 0.1
done
grep -q 'msg="listening"' "$work/serve2.log" || { kill "$srv" 2>/dev/null; fail "serve with its own TLS key: $(tail -n 5 "$work/serve2.log")"; }
kill -TERM "$srv"
wait "$srv" || fail "serve exit status at SIGTERM"
ok "a TLS key of its own on the same token is accepted"
