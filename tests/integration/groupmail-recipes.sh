#!/usr/bin/env bash
# groupmail-recipes.sh BIN SRC: extracts every ```sh block of
# docs/curl-recipes.md and runs them, in order, as written, against a real
# group server on SoftHSM (server-lib.sh), on a message made by openssl cms.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/server-lib.sh"
start_server

script=$work/recipes.sh
{
  echo 'set -euo pipefail'
  awk '/^```sh$/ {on=1; next} /^```$/ {on=0; next} on {print}' "$SRC/docs/curl-recipes.md"
  echo 'echo RECIPES-DONE'
} > "$script"
n=$(grep -c '^```sh$' "$SRC/docs/curl-recipes.md")
[ "$n" -ge 6 ] || fail "expected at least 6 recipe blocks, found $n"

mkdir -p "$work/recipes"
out=$(cd "$work/recipes" && env SERVER="$base" CERTSRV="$cbase" GROUP=eng CACERT="$certs/tca.pem" \
  CERT="$certs/alice@example.org.pem" KEY="$certs/alice@example.org.key" MSG="$work/msg.der" \
  P11_MODULE="$module" \
  bash "$script" 2>&1) || fail "recipes failed: $(tail -n 20 <<<"$out")"
grep -q RECIPES-DONE <<<"$out" || fail "recipes did not finish"
# The option C block is not run here: pkcs11-tool 0.23 gets
# CKR_KEY_FUNCTION_NOT_PERMITTED from SoftHSM on the server's group key
# (CKA_ALLOWED_MECHANISMS = RSA-PKCS-OAEP); groupmail-e2e covers local-key.
for f in cek-e.bin cek-g.bin cek-s.bin; do
  cmp -s "$work/recipes/cek.bin" "$work/recipes/$f" || fail "recipe result $f differs from the F key"
done
ok "all $n recipe blocks of docs/curl-recipes.md ran as written"
