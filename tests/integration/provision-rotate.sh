#!/usr/bin/env bash
# A rotated group key still decrypts old messages; a retired one does not.
# Messages are made by a stock S/MIME sender (openssl cms, RSA-OAEP) to the
# group certificate of each version; the encrypted key is taken out of the
# DER with asn1parse and decrypted on the token by provision-decrypt
# (hsm_decrypt_content_key); the content key is then checked by decrypting
# the content with openssl enc.
set -euo pipefail
. "$(dirname "$0")/provision-lib.sh"
D="$GS_BIN/provision-decrypt"
[ -x "$D" ] || fail "$D not built"

expect_rc 0 "$G" -c "$CONF" ca init --key rsa:2048
expect_rc 0 "$G" -c "$CONF" group create eng --address eng@example.org --key rsa:2048

# encrypt VERSION: message to the current group certificate, saved as msg-vN
encrypt() {
  local v=$1
  "$G" -c "$CONF" group show eng --cert > "$T/eng-v$v.pem"
  printf 'secret message for key version %s\n' "$v" > "$T/msg-v$v.txt"
  openssl cms -encrypt -binary -aes256 -recip "$T/eng-v$v.pem" -keyopt rsa_padding_mode:oaep \
    -in "$T/msg-v$v.txt" -outform DER -out "$T/msg-v$v.der"
  openssl asn1parse -inform DER -in "$T/msg-v$v.der" > "$T/asn-v$v"
  # RSA-2048: the only 256-byte OCTET STRING is the encrypted content key.
  sed -n 's/.*l= *256 prim: OCTET STRING *\[HEX DUMP\]://p' "$T/asn-v$v" > "$T/ek-v$v.hex"
  [ -s "$T/ek-v$v.hex" ] || { cat "$T/asn-v$v"; fail "no encrypted key in message v$v"; }
}

# check_decrypts VERSION: the token recovers the content key, and that key
# decrypts the message content (AES-256-CBC: IV and [0] content from asn1parse).
check_decrypts() {
  local v=$1 cek iv off hl len
  cek=$("$D" "$CONF" "gs:group:eng:v$v" "$T/ek-v$v.hex") || fail "version $v no longer decrypts"
  [ ${#cek} -eq 64 ] || fail "content key length ${#cek}"
  iv=$(sed -n 's/.*l= *16 prim: OCTET STRING *\[HEX DUMP\]://p' "$T/asn-v$v" | head -1)
  read -r off hl len < <(sed -n 's/^ *\([0-9]*\):d=[0-9]* *hl=\([0-9]*\) *l= *\([0-9]*\) prim: cont \[ 0 \].*/\1 \2 \3/p' "$T/asn-v$v" | tail -1)
  [ -n "$iv" ] && [ -n "$len" ] || { cat "$T/asn-v$v"; fail "cannot locate IV/content"; }
  dd if="$T/msg-v$v.der" of="$T/ct-v$v" bs=1 skip=$((off + hl)) count="$len" status=none
  openssl enc -d -aes-256-cbc -K "$cek" -iv "$iv" -in "$T/ct-v$v" -out "$T/pt-v$v"
  cmp -s "$T/pt-v$v" "$T/msg-v$v.txt" || fail "content key of version $v does not decrypt the message"
}

encrypt 1
check_decrypts 1
expect_rc 0 "$G" -c "$CONF" group rotate eng
grep -q "new key version 2" "$T/out" || fail "rotate"
encrypt 2
cmp -s "$T/eng-v1.pem" "$T/eng-v2.pem" && fail "rotation did not change the certificate"
check_decrypts 2
check_decrypts 1          # old version still usable
expect_rc 0 "$G" -c "$CONF" group rotate eng
encrypt 3
expect_rc 1 "$G" -c "$CONF" group retire eng --before 4
expect_err "current version 3"
expect_rc 0 "$G" -c "$CONF" group retire eng --before 3
grep -q "2 key version(s) retired" "$T/out" || fail "retire count"
check_decrypts 3
for v in 1 2; do
  rc=0; "$D" "$CONF" "gs:group:eng:v$v" "$T/ek-v$v.hex" > /dev/null 2>&1 || rc=$?
  [ "$rc" -eq 3 ] || fail "retired version $v still decrypts (rc=$rc)"
done
p11 --list-objects > "$T/objs" 2>/dev/null
grep -q "gs:group:eng:v1" "$T/objs" && fail "retired key still on the token"
"$G" -c "$CONF" group show eng | grep -q "v1 *retired" || fail "v1 not shown retired"
expect_rc 0 "$G" -c "$CONF" check
# a retired key that reappears on the token is flagged
p11 --keypairgen --key-type rsa:2048 --label gs:group:eng:v1 --usage-decrypt > /dev/null 2>&1
expect_rc 1 "$G" -c "$CONF" check
grep -q "retired but still on the token" "$T/out" || fail "check missed a retired key"
# a damaged database with two current versions: show prints the newest
# (it used to print the older one and leak the newer's certificate)
sqlite3 "$T/db/groupsrv.db" "UPDATE group_keys SET state = 1 WHERE version = 2"
"$G" -c "$CONF" group show eng --cert > "$T/shown.pem" || fail "group show with two current versions"
cmp -s "$T/shown.pem" "$T/eng-v3.pem" || fail "group show --cert did not print the newest current version"
echo "provision-rotate: OK"
