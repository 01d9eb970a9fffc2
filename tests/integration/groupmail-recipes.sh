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

# Three times: on the message of server-lib.sh (RSA-OAEP, AES-256-CBC), on
# one as most mail clients send it (PKCS#1 v1.5, AES-128-CBC), whose key
# length only the content algorithm the recipes send tells the server, and
# on one with a 200 KB attachment, streamed (BER, AES-256-GCM): under
# pipefail, a reader that stops early (awk's exit, head -c) kills its
# writer with SIGPIPE once the writer has more than a pipe's worth.
openssl cms -encrypt -binary -aes128 -in "$work/msg.txt" -outform DER -out "$work/v15.der" -recip "$certs/group.pem"
head -c 150000 /dev/urandom | base64 > "$work/big.txt"
openssl cms -encrypt -binary -stream -aes-256-gcm -in "$work/big.txt" -outform DER -out "$work/big.der" \
  -recip "$certs/group.pem" -keyopt rsa_padding_mode:oaep
for m in msg v15 big; do
  mkdir -p "$work/recipes-$m"
  out=$(cd "$work/recipes-$m" && env SERVER="$base" CERTSRV="$cbase" GROUP=eng CACERT="$certs/tca.pem" \
    CERT="$certs/alice@example.org.pem" KEY="$certs/alice@example.org.key" MSG="$work/$m.der" \
    P11_MODULE="$module" GROUP_KEY_LABEL="gs:group:eng:v1" GROUP_TOKEN_PIN="$(cat "$work/token/user-pin")" \
    bash "$script" 2>&1) || fail "recipes failed on $m: $(tail -n 20 <<<"$out")"
  grep -q RECIPES-DONE <<<"$out" || fail "recipes did not finish on $m"
  # Option C runs on the server's own token (SOFTHSM2_CONF from server-lib.sh).
  for f in cek-e.bin cek-g.bin cek-s.bin cek-c.bin; do
    cmp -s "$work/recipes-$m/cek.bin" "$work/recipes-$m/$f" || fail "recipe result $f differs from the F key ($m)"
  done
done
[ "$(stat -c %s "$work/recipes-v15/cek.bin")" = 16 ] || fail "v1.5 AES-128 message: not a 16-byte key"
iv=$(cms content "$work/v15.der" "$work/v15.ct")
openssl enc -d -aes-128-cbc -K "$(od -An -tx1 "$work/recipes-v15/cek.bin" | tr -d ' \n')" -iv "$iv" \
  -in "$work/v15.ct" -out "$work/v15.txt" && cmp -s "$work/v15.txt" "$work/msg.txt" ||
  fail "the v1.5 recipes' key does not decrypt the message"
ok "all $n recipe blocks of docs/curl-recipes.md ran as written, on an OAEP, a v1.5 and a large streamed message"
