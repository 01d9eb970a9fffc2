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
  P11_MODULE="$module" GROUP_KEY_LABEL="gs:group:eng:v1" GROUP_TOKEN_PIN="$(cat "$work/token/user-pin")" \
  bash "$script" 2>&1) || fail "recipes failed: $(tail -n 20 <<<"$out")"
grep -q RECIPES-DONE <<<"$out" || fail "recipes did not finish"
# Option C runs on the server's own token (SOFTHSM2_CONF from server-lib.sh).
for f in cek-e.bin cek-g.bin cek-s.bin cek-c.bin; do
  cmp -s "$work/recipes/cek.bin" "$work/recipes/$f" || fail "recipe result $f differs from the F key"
done
ok "all $n recipe blocks of docs/curl-recipes.md ran as written"
