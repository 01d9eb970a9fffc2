#!/usr/bin/env bash
# Bad input: each case a distinct error, never a crash, and no partial
# output file left behind by the decrypting driver.
source "$(dirname "$0")/envelope-lib.sh" "$@"

make_rsa group list@example.org
make_rsa other other@example.org
T=$ENVTOOL
body="$W/mail.txt"
dec() { $T decrypt --cert "$W/group.pem" --key "$W/group.key" --in "$1" --out "$W/out"; }
no_output() { [ ! -e "$W/out" ] || fail "partial output left behind ($1)"; ls "$W" | grep -q '^out\.' && fail "temp output left ($1)"; true; }

# Truncated at several offsets: definite-length DER (ours), indefinite BER (openssl -stream), S/MIME.
$T encrypt --cert "$W/group.pem" --format der --in "$body" --out "$W/ok.der"
openssl cms -encrypt -recip "$W/group.pem" -keyopt rsa_padding_mode:oaep -aes-256-gcm -stream -binary \
  -outform DER -in "$body" -out "$W/ok.ber"
for f in ok.der ok.ber; do
  size=$(stat -c %s "$W/$f")
  for cut in 1 2 5 20 60 200 300 $((size / 2)) $((size - 20)) $((size - 3)) $((size - 1)); do
    head -c $cut "$W/$f" >"$W/cut"
    expect_rc $E_TRUNCATED dec "$W/cut"
    no_output "$f cut $cut"
  done
done
$T encrypt --cert "$W/group.pem" --in "$body" --out "$W/ok.smime"
head -c $(($(stat -c %s "$W/ok.smime") - 30)) "$W/ok.smime" >"$W/cut.smime"
expect_rc $E_TRUNCATED dec "$W/cut.smime"
no_output "smime cut"

# Random bytes (not starting like DER, PEM or a header line), and garbage text.
{ printf '\001'; head -c 4096 /dev/urandom; } >"$W/random"
expect_rc $E_NOT_CMS dec "$W/random"
printf 'just some text\nwithout headers\n' >"$W/text"
expect_rc $E_NOT_CMS dec "$W/text"
no_output random

# A SignedData, as DER and as S/MIME (opaque and multipart/signed).
openssl cms -sign -signer "$W/group.pem" -inkey "$W/group.key" -outform DER -in "$body" -out "$W/signed.der"
expect_rc $E_CONTENT_TYPE dec "$W/signed.der"
openssl cms -sign -signer "$W/group.pem" -inkey "$W/group.key" -nodetach -in "$body" -out "$W/signed.smime"
expect_rc $E_CONTENT_TYPE dec "$W/signed.smime"
openssl cms -sign -signer "$W/group.pem" -inkey "$W/group.key" -in "$body" -out "$W/signed-ms.smime"
expect_rc $E_CONTENT_TYPE dec "$W/signed-ms.smime"
no_output signed

# A message for another certificate.
openssl cms -encrypt -recip "$W/other.pem" -keyopt rsa_padding_mode:oaep -aes-256-gcm -in "$body" -out "$W/other.smime"
expect_rc $E_NO_RECIPIENT dec "$W/other.smime"
expect_rc $E_NO_RECIPIENT $T extract-ri --cert "$W/group.pem" --in "$W/other.smime" --out "$W/ri"
no_output other

# A flipped byte in the GCM ciphertext and in the tag (ours: DER ends with
# content EOC x2, tag 04 10 <16>, EOC x3).
size=$(stat -c %s "$W/ok.der")
flip() { # flip FILE OFFSET OUT
  cp "$1" "$3"
  local b
  b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
  printf "$(printf '\\%03o' $((b ^ 1)))" | dd of="$3" bs=1 seek="$2" conv=notrunc status=none
}
flip "$W/ok.der" $((size - 6 - 18 - 4 - 10)) "$W/flip-ct.der"
expect_rc $E_AUTH dec "$W/flip-ct.der"
no_output "flipped ciphertext"
flip "$W/ok.der" $((size - 6 - 5)) "$W/flip-tag.der"
expect_rc $E_AUTH dec "$W/flip-tag.der"
no_output "flipped tag"
# Same in an openssl-made stream, and through S/MIME.
openssl cms -encrypt -recip "$W/group.pem" -keyopt rsa_padding_mode:oaep -aes-256-gcm -stream -binary \
  -outform DER -in "$body" -out "$W/s.ber"
sb=$(stat -c %s "$W/s.ber")
flip "$W/s.ber" $((sb - 6 - 18 - 4 - 3)) "$W/flip-s.ber"
expect_rc $E_AUTH dec "$W/flip-s.ber"
$T extract-ri --cert "$W/group.pem" --in "$W/flip-s.ber" --out "$W/s.ri"
$T replace-ri --ri "$W/s.ri" --in "$W/flip-s.ber" --out "$W/flip-s.smime"
expect_rc $E_AUTH dec "$W/flip-s.smime"
no_output "flipped stream"

# Unsupported content encryption (Camellia; RC2 where openssl still has it).
openssl cms -encrypt -recip "$W/group.pem" -camellia256 -outform DER -in "$body" -out "$W/camellia.der"
expect_rc $E_UNSUPPORTED dec "$W/camellia.der"
if openssl cms -encrypt -recip "$W/group.pem" -rc2 -outform DER -in "$body" -out "$W/rc2.der" 2>/dev/null; then
  expect_rc $E_UNSUPPORTED dec "$W/rc2.der"
fi
# Key transport with an OAEP hash we do not do (SHA-384).
openssl cms -encrypt -recip "$W/group.pem" -keyopt rsa_padding_mode:oaep -keyopt rsa_oaep_md:sha384 \
  -aes-256-gcm -in "$body" -out "$W/oaep384.smime"
$T extract-ri --cert "$W/group.pem" --in "$W/oaep384.smime" --out "$W/oaep384.ri"
$T ri-info --ri "$W/oaep384.ri" | grep -q '^alg=unsupported' || fail "OAEP-SHA384 not reported unsupported"
expect_rc $E_UNSUPPORTED dec "$W/oaep384.smime"
no_output unsupported

# Not base64 inside (was "malformed S/MIME framing", as a footer added in
# the base64 was, or "input truncated" for a footer of letters only), and
# not base64 at all (Content-Transfer-Encoding: binary, the DER as it is).
printf 'Subject: x\nContent-Type: application/pkcs7-mime\nContent-Transfer-Encoding: base64\n\nMII*!\n' >"$W/badb64"
expect_rc $E_BASE64 dec "$W/badb64"
no_output base64
{ cat "$W/ok.smime"; printf '\nFooter text here\n'; } >"$W/footer.smime"
expect_rc $E_BASE64 dec "$W/footer.smime"
grep -q "ENV_ERR_BASE64" "$W/stderr" || fail "a footer of letters in the base64: $(cat "$W/stderr")"
no_output footer
{ sed '/^$/q' "$W/ok.smime" | sed 's/^Content-Transfer-Encoding: base64$/Content-Transfer-Encoding: binary/'
  cat "$W/ok.der"; } >"$W/binary.smime"
expect_rc $E_ENCODING dec "$W/binary.smime"
no_output binary
echo "envelope bad input: ok"
