#!/usr/bin/env bash
# A 100 MB message encrypted, re-wrapped and decrypted in bounded memory:
# the driver reports its peak RSS (VmHWM), which must stay under 32 MB.
source "$(dirname "$0")/envelope-lib.sh" "$@"

make_rsa group list@example.org
make_rsa member bob@example.org
T=$ENVTOOL
SIZE=$((100 * 1024 * 1024))
LIMIT_KB=$((32 * 1024))
export ENVTOOL_RSS=1

rss_ok() { # rss_ok STEP: checks the vmhwm_kb line of the last run
  local kb
  kb=$(sed -n 's/^vmhwm_kb=//p' "$W/rss")
  [ -n "$kb" ] || fail "$1: no RSS reported"
  echo "$1: peak RSS ${kb} kB"
  [ "$kb" -lt $LIMIT_KB ] || fail "$1: peak RSS ${kb} kB over ${LIMIT_KB} kB"
}

want=$(head -c $SIZE /dev/zero | tr '\0' 'x' | sha256sum | cut -d' ' -f1)
head -c $SIZE /dev/zero | tr '\0' 'x' | $T encrypt --cert "$W/group.pem" --out "$W/big.smime" 2>"$W/rss"
rss_ok encrypt
got=$($T decrypt --cert "$W/group.pem" --key "$W/group.key" --in "$W/big.smime" --out - 2>"$W/rss" | sha256sum | cut -d' ' -f1)
rss_ok decrypt
[ "$got" = "$want" ] || fail "decrypted content differs"

# Re-wrap to a member (RIs replaced, 100 MB content copied verbatim), DER out.
$T extract-ri --cert "$W/group.pem" --in "$W/big.smime" --out "$W/g.ri" 2>/dev/null
$T ri-decrypt --ri "$W/g.ri" --cert "$W/group.pem" --key "$W/group.key" --out "$W/g.cek" 2>/dev/null
openssl x509 -in "$W/member.pem" -pubkey -noout >"$W/member.pub"
openssl pkeyutl -encrypt -pubin -inkey "$W/member.pub" -pkeyopt rsa_padding_mode:oaep -in "$W/g.cek" -out "$W/m.ek"
$T ktri --cert "$W/member.pem" --kt oaep --enc-key "$W/m.ek" --out "$W/m.ri" 2>/dev/null
rm -f "$W/g.cek"
$T replace-ri --ri "$W/m.ri" --format der --in "$W/big.smime" --out "$W/big.der" 2>"$W/rss"
rss_ok replace-ri
rm -f "$W/big.smime"
got=$($T decrypt --cert "$W/member.pem" --key "$W/member.key" --in "$W/big.der" --out - 2>"$W/rss" | sha256sum | cut -d' ' -f1)
rss_ok "decrypt re-wrapped"
[ "$got" = "$want" ] || fail "re-wrapped content differs"
echo "envelope stream: ok"
