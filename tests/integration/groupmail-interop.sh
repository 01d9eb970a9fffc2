#!/usr/bin/env bash
# groupmail-interop.sh BIN: `groupmail encrypt` writes standard CMS/S-MIME.
# The independent peer is the openssl cms command line, given the group key
# (a software key here: the server's group key never leaves its token).
# Every output form and algorithm choice must decrypt to the input.
set -euo pipefail
BIN=$1
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/gm-interop.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

cd "$work"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=eng" \
  -addext "subjectAltName=email:eng@lists.example.org" -addext "keyUsage=keyEncipherment" \
  -addext "extendedKeyUsage=emailProtection" -keyout g.key -out g.pem 2>/dev/null
printf 'From: a@example.org\nTo: eng@lists.example.org\nSubject: interop\n\nbody line one\nline two\n' > m.txt
head -c 200000 /dev/urandom | base64 > big.txt

n=0
for cipher in gcm cbc; do
  for oaep in sha1 sha256; do
    for fmt in smime pem der; do
      for input in m.txt big.txt; do
        args=(--group-cert g.pem --oaep "$oaep" --format "$fmt" --in "$input" --out "out.$fmt")
        [ "$cipher" = cbc ] && args+=(--cbc)
        "$BIN/groupmail" encrypt "${args[@]}" || fail "encrypt $cipher $oaep $fmt $input"
        inform=SMIME; [ "$fmt" = pem ] && inform=PEM; [ "$fmt" = der ] && inform=DER
        openssl cms -decrypt -inform "$inform" -in "out.$fmt" -recip g.pem -inkey g.key -binary -out dec.txt \
          2>err.txt || fail "openssl cms cannot decrypt $cipher/$oaep/$fmt/$input: $(cat err.txt)"
        cmp -s dec.txt "$input" || fail "plaintext differs for $cipher/$oaep/$fmt/$input"
        # the content type says what it is
        ct=$(openssl cms -cmsout -inform "$inform" -in "out.$fmt" -print 2>/dev/null | grep -m1 -oE 'contentType: [-a-zA-Z0-9]+')
        want=id-smime-ct-authEnvelopedData; [ "$cipher" = cbc ] && want=pkcs7-envelopedData
        case "$ct" in *authEnvelopedData*) got=id-smime-ct-authEnvelopedData ;; *envelopedData*) got=pkcs7-envelopedData ;; *) got=$ct ;; esac
        [ "$got" = "$want" ] || fail "$cipher/$fmt: content type '$ct', wanted $want"
        n=$((n + 1))
      done
    done
  done
done

# --mime: routing headers outside, the whole message (headers and body) inside.
"$BIN/groupmail" encrypt --group-cert g.pem --mime --in m.txt --out mime.eml || fail "encrypt --mime"
grep -q '^Subject: interop' mime.eml || fail "--mime: Subject not kept outside"
grep -q '^Content-Type: application/pkcs7-mime' mime.eml || fail "--mime: not S/MIME"
grep -q 'body line one' mime.eml && fail "--mime: plaintext visible outside"
openssl cms -decrypt -in mime.eml -recip g.pem -inkey g.key -out inner.eml 2>/dev/null || fail "openssl cms -decrypt --mime output"
tr -d '\r' < inner.eml > inner.lf
cmp -s inner.lf m.txt || fail "--mime: inner entity is not the original message"
n=$((n + 1))
echo "$n passed, 0 failed"
