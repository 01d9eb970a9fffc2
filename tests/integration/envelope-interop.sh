#!/usr/bin/env bash
# Interop with `openssl cms` as the independent peer, both directions, for
# every algorithm combination, plus re-wrapped messages (KEKRI, member KTRI).
source "$(dirname "$0")/envelope-lib.sh" "$@"

make_rsa group list@example.org
make_rsa member bob@example.org
make_ec ecgroup eclist@example.org
T=$ENVTOOL
body="$W/mail.txt"

# (a) openssl encrypts (S/MIME, DER, streamed BER, PEM), we parse, extract the
# RecipientInfo, decrypt it with the software key, then the content.
for c in -aes-256-gcm -aes-256-cbc; do
  for md in sha1 sha256; do
    for form in SMIME DER; do
      for stream in "" -stream; do
        f="$W/a$c$md$form$stream"
        openssl cms -encrypt -recip "$W/group.pem" -keyopt rsa_padding_mode:oaep -keyopt rsa_oaep_md:$md \
          -keyopt rsa_mgf1_md:$md $c $stream -binary -outform $form -in "$body" -out "$f"
        $T extract-ri --cert "$W/group.pem" --in "$f" --out "$f.ri"
        $T ri-info --ri "$f.ri" --cert "$W/group.pem" >"$f.info"
        grep -q '^matches=1$' "$f.info" || fail "RI does not match ($c $md $form)"
        want=rsa-oaep; [ $md = sha256 ] && want=rsa-oaep-256
        grep -q "^alg=$want\$" "$f.info" || fail "alg ($c $md): $(cat "$f.info")"
        $T ri-decrypt --ri "$f.ri" --cert "$W/group.pem" --key "$W/group.key" --out "$f.cek"
        $T decrypt --cek-file "$f.cek" --in "$f" --out "$f.out"
        cmp "$f.out" "$body" || fail "content differs ($c $md $form $stream)"
      done
    done
  done
done
# subjectKeyIdentifier recipients (-keyid), and S/MIME with CRLF line ends.
openssl cms -encrypt -recip "$W/group.pem" -keyid -keyopt rsa_padding_mode:oaep -aes-256-gcm -in "$body" -out "$W/ski.smime"
$T extract-ri --cert "$W/group.pem" --in "$W/ski.smime" --out "$W/ski.ri"
$T decrypt --cert "$W/group.pem" --key "$W/group.key" --in "$W/ski.smime" --out "$W/ski.out"
tr -d '\r' <"$W/ski.out" | cmp - "$body" || fail "keyid recipient"
sed 's/$/\r/' "$W/ski.smime" >"$W/crlf.smime"
$T decrypt --cert "$W/group.pem" --key "$W/group.key" --in "$W/crlf.smime" --out "$W/crlf.out"
cmp "$W/crlf.out" "$W/ski.out" || fail "CRLF S/MIME"
# PEM and a PKCS#1 v1.5 sender (what old clients send): parsed, alg reported.
openssl cms -encrypt -recip "$W/group.pem" -aes-256-cbc -outform PEM -in "$body" -out "$W/v15.pem"
$T extract-ri --cert "$W/group.pem" --in "$W/v15.pem" --out "$W/v15.ri"
$T ri-info --ri "$W/v15.ri" | grep -q '^alg=rsa-pkcs1v15$' || fail "v1.5 not recognised"
$T decrypt --cert "$W/group.pem" --key "$W/group.key" --in "$W/v15.pem" --out "$W/v15.out"
# ECDH from openssl (its default KDF, sha1) into us.
openssl cms -encrypt -recip "$W/ecgroup.pem" -aes-256-gcm -in "$body" -out "$W/ec-a.smime"
$T extract-ri --cert "$W/ecgroup.pem" --in "$W/ec-a.smime" --out "$W/ec-a.ri"
$T ri-info --ri "$W/ec-a.ri" --cert "$W/ecgroup.pem" | grep -q '^kari.kek_len=32$' || fail "kari params"
$T decrypt --cert "$W/ecgroup.pem" --key "$W/ecgroup.key" --in "$W/ec-a.smime" --out "$W/ec-a.out"
# openssl canonicalises S/MIME text to CRLF; compare without CRs.
tr -d '\r' <"$W/ec-a.out" | cmp - "$body" || fail "ECDH content from openssl"

# (b) we encrypt, openssl decrypts.
for c in gcm cbc; do
  for kt in oaep oaep256; do
    for fmt in smime der pem; do
      f="$W/b-$c-$kt-$fmt"
      $T encrypt --cert "$W/group.pem" --cipher $c --kt $kt --format $fmt --in "$body" --out "$f"
      inform=SMIME; [ $fmt = der ] && inform=DER; [ $fmt = pem ] && inform=PEM
      openssl cms -decrypt -recip "$W/group.pem" -inkey "$W/group.key" -binary -inform $inform -in "$f" -out "$f.out"
      cmp "$f.out" "$body" || fail "openssl decrypt ($c $kt $fmt)"
      $T decrypt --cert "$W/group.pem" --key "$W/group.key" --in "$f" --out "$f.out2"
      cmp "$f.out2" "$body" || fail "own decrypt ($c $kt $fmt)"
    done
  done
done
for c in gcm cbc; do
  $T encrypt --cert "$W/ecgroup.pem" --cipher $c --in "$body" --out "$W/ec-b-$c"
  openssl cms -decrypt -recip "$W/ecgroup.pem" -inkey "$W/ecgroup.key" -binary -in "$W/ec-b-$c" -out "$W/ec-b-$c.out"
  cmp "$W/ec-b-$c.out" "$body" || fail "openssl ECDH decrypt ($c)"
done
# --mime: routing headers outside, the whole message inside (CRLF canonical).
$T encrypt --cert "$W/group.pem" --mime --in "$body" --out "$W/mime.smime"
grep -q '^Subject: interop$' "$W/mime.smime" || fail "Subject not outside"
grep -q 'X-Inner' "$W/mime.smime" && fail "X-Inner leaked outside"
openssl cms -decrypt -recip "$W/group.pem" -inkey "$W/group.key" -in "$W/mime.smime" -out "$W/mime.out"
tr -d '\r' <"$W/mime.out" | cmp - "$body" || fail "MIME inner message"

# Content key of a group message, for the re-wrap cases.
$T encrypt --cert "$W/group.pem" --mime --in "$body" --out "$W/g.smime"
$T extract-ri --cert "$W/group.pem" --in "$W/g.smime" --out "$W/g.ri"
$T ri-decrypt --ri "$W/g.ri" --cert "$W/group.pem" --key "$W/group.key" --out "$W/g.cek"

# (c) RIs replaced by a KEKRI (RFC 3394 and RFC 5649 wraps made with EVP);
# openssl decrypts with -secretkey/-secretkeyid. OpenSSL 3.0's CMS only
# knows id-aes*-wrap for KEKRI, so the RFC 5649 one is checked by us only.
openssl rand 32 >"$W/kek"
kekhex=$(od -An -tx1 -v "$W/kek" | tr -d ' \n')
for pad in "" --pad; do
  $T aes-wrap --kek-file "$W/kek" $pad --in "$W/g.cek" --out "$W/g.wrapped"
  $T kekri --kek-id 00000007 --bits 256 $pad --wrapped "$W/g.wrapped" --out "$W/kek.ri"
  $T replace-ri --ri "$W/kek.ri" --in "$W/g.smime" --out "$W/kek.smime"
  grep -q '^Subject: interop$' "$W/kek.smime" || fail "outer headers lost on replace"
  if [ -z "$pad" ]; then
    openssl cms -decrypt -secretkey "$kekhex" -secretkeyid 00000007 -in "$W/kek.smime" -out "$W/kek.out"
    tr -d '\r' <"$W/kek.out" | cmp - "$body" || fail "KEKRI decrypt by openssl"
  fi
  $T decrypt --kek-file "$W/kek" --kek-id 00000007 --in "$W/kek.smime" --out "$W/kek.out2"
  tr -d '\r' <"$W/kek.out2" | cmp - "$body" || fail "KEKRI own decrypt ($pad)"
done

# (d) RIs replaced by KTRIs to a member certificate, the key OAEP-encrypted
# by us with EVP (openssl pkeyutl), built with env_ktri_build.
openssl x509 -in "$W/member.pem" -pubkey -noout >"$W/member.pub"
for md in sha1 sha256; do
  kt=oaep; [ $md = sha256 ] && kt=oaep256
  openssl pkeyutl -encrypt -pubin -inkey "$W/member.pub" -pkeyopt rsa_padding_mode:oaep \
    -pkeyopt rsa_oaep_md:$md -pkeyopt rsa_mgf1_md:$md -in "$W/g.cek" -out "$W/m.ek"
  $T ktri --cert "$W/member.pem" --kt $kt --enc-key "$W/m.ek" --out "$W/m.ri"
  for fmt in smime der pem; do
    $T replace-ri --ri "$W/m.ri" --add --format $fmt --in "$W/g.smime" --out "$W/m.$fmt"
    inform=SMIME; [ $fmt = der ] && inform=DER; [ $fmt = pem ] && inform=PEM
    openssl cms -decrypt -recip "$W/member.pem" -inkey "$W/member.key" -inform $inform -in "$W/m.$fmt" -out "$W/m.out"
    tr -d '\r' <"$W/m.out" | cmp - "$body" || fail "member KTRI decrypt by openssl ($md $fmt)"
    # the group's own RI is still there (--add)
    openssl cms -decrypt -recip "$W/group.pem" -inkey "$W/group.key" -inform $inform -in "$W/m.$fmt" -out "$W/m.out"
  done
done
# Re-wrapping an openssl-made streamed (indefinite BER) message keeps it valid.
openssl cms -encrypt -recip "$W/group.pem" -keyopt rsa_padding_mode:oaep -aes-256-gcm -stream -binary \
  -outform DER -in "$body" -out "$W/s.der"
$T extract-ri --cert "$W/group.pem" --in "$W/s.der" --out "$W/s.ri"
$T ri-decrypt --ri "$W/s.ri" --cert "$W/group.pem" --key "$W/group.key" --out "$W/s.cek"
openssl pkeyutl -encrypt -pubin -inkey "$W/member.pub" -pkeyopt rsa_padding_mode:oaep -in "$W/s.cek" -out "$W/s.ek"
$T ktri --cert "$W/member.pem" --kt oaep --enc-key "$W/s.ek" --out "$W/sm.ri"
$T replace-ri --ri "$W/sm.ri" --format der --in "$W/s.der" --out "$W/sm.der"
openssl cms -decrypt -recip "$W/member.pem" -inkey "$W/member.key" -binary -inform DER -in "$W/sm.der" -out "$W/sm.out"
cmp "$W/sm.out" "$body" || fail "re-wrapped streamed BER"
echo "envelope interop: ok"
