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
# OpenSSL 3.0's own defaults, what `openssl cms -encrypt -recip group.pem`
# (DESIGN.md's stock sender) and `openssl smime -encrypt` send without a
# cipher option, and what old Outlook sends: PKCS#1 v1.5 with 3DES-CBC.
# Read (never written), reported as des-ede3-cbc with a 24-byte key.
openssl cms -encrypt -recip "$W/group.pem" -in "$body" -out "$W/default-cms.smime"
openssl smime -encrypt -in "$body" -out "$W/default-smime.smime" "$W/group.pem"
for f in default-cms default-smime; do
  $T info --in "$W/$f.smime" | grep -q '^cipher=des-ede3-cbc$' || fail "$f: $($T info --in "$W/$f.smime")"
  $T decrypt --cert "$W/group.pem" --key "$W/group.key" --in "$W/$f.smime" --out "$W/$f.out" || fail "$f not read"
  tr -d '\r' <"$W/$f.out" | cmp - "$body" || fail "$f content"
done
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
# (e) The libraries stock mail clients are built on, both ways (issue 14):
# NSS 3.87 cmsutil (Thunderbird) and gpgsm 2.2.40 encrypt with PKCS#1 v1.5
# and AES-CBC; we parse what they send and decrypt it with the group key.
# A member KTRI wrapped with v1.5 (as the group server does for member-certs
# copies) is read by their decrypt commands. Run in both test passes, so
# their encodings go through our parser under the sanitizers too.
nss=$W/nss
mkdir -p "$nss"
certutil -N -d "sql:$nss" --empty-password
certutil -A -d "sql:$nss" -n group -t ",," -i "$W/group.pem"
cmsutil -E -d "sql:$nss" -r group -i "$body" -o "$W/nss.der"
$T extract-ri --cert "$W/group.pem" --in "$W/nss.der" --out "$W/nss.ri"
$T ri-info --ri "$W/nss.ri" | grep -q '^alg=rsa-pkcs1v15$' || fail "NSS sends v1.5: $($T ri-info --ri "$W/nss.ri")"
$T info --in "$W/nss.der" | grep -q '^cipher=aes-128-cbc$' || fail "NSS cipher: $($T info --in "$W/nss.der")"
$T decrypt --cert "$W/group.pem" --key "$W/group.key" --in "$W/nss.der" --out "$W/nss.out"
cmp "$W/nss.out" "$body" || fail "NSS message content"
# gpgsm needs a CA above the group certificate and a private GNUPGHOME
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/ca.key" -out "$W/ca.pem" -days 2 -subj "/CN=interop CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -new -newkey rsa:2048 -nodes -keyout "$W/g2.key" -out "$W/g2.csr" -subj "/CN=group2" 2>/dev/null
printf 'subjectAltName=email:list2@example.org\nkeyUsage=critical,keyEncipherment\nextendedKeyUsage=emailProtection\n' \
  >"$W/g2.ext"
openssl x509 -req -in "$W/g2.csr" -CA "$W/ca.pem" -CAkey "$W/ca.key" -CAcreateserial -days 2 -extfile "$W/g2.ext" \
  -out "$W/g2.pem" 2>/dev/null
export GNUPGHOME=$W/gnupg
mkdir -m 700 "$GNUPGHOME"
printf 'disable-crl-checks\n' >"$GNUPGHOME/gpgsm.conf"
printf '%s S\n' "$(openssl x509 -in "$W/ca.pem" -noout -fingerprint -sha1 | cut -d= -f2)" >"$GNUPGHOME/trustlist.txt"
trap 'gpgconf --kill gpg-agent 2>/dev/null || true; rm -rf "$W"' EXIT
gpgsm --batch --import "$W/ca.pem" "$W/g2.pem" 2>/dev/null
for c in default AES192 AES256; do
  opt=(); [ $c != default ] && opt=(--cipher-algo $c)
  gpgsm --batch "${opt[@]}" --encrypt -r list2@example.org -o "$W/gpgsm-$c.der" "$body" 2>/dev/null ||
    fail "gpgsm --encrypt $c"
  $T extract-ri --cert "$W/g2.pem" --in "$W/gpgsm-$c.der" --out "$W/gpgsm.ri"
  $T ri-info --ri "$W/gpgsm.ri" | grep -q '^alg=rsa-pkcs1v15$' || fail "gpgsm sends v1.5"
  want=aes-128-cbc; [ $c = AES192 ] && want=aes-192-cbc; [ $c = AES256 ] && want=aes-256-cbc
  $T info --in "$W/gpgsm-$c.der" | grep -q "^cipher=$want\$" || fail "gpgsm $c: $($T info --in "$W/gpgsm-$c.der")"
  $T decrypt --cert "$W/g2.pem" --key "$W/g2.key" --in "$W/gpgsm-$c.der" --out "$W/gpgsm.out"
  cmp "$W/gpgsm.out" "$body" || fail "gpgsm $c content"
done
# gpgsm --armor (what KMail and `gpgsm -a` users save): PEM labelled
# "ENCRYPTED MESSAGE" by libksba, read as PEM like OpenSSL's CMS and PKCS7
gpgsm --batch --armor --encrypt -r list2@example.org -o "$W/gpgsm.asc" "$body" 2>/dev/null || fail "gpgsm --armor"
head -1 "$W/gpgsm.asc" | grep -q '^-----BEGIN ENCRYPTED MESSAGE-----' || fail "gpgsm armor: $(head -1 "$W/gpgsm.asc")"
$T decrypt --cert "$W/g2.pem" --key "$W/g2.key" --in "$W/gpgsm.asc" --out "$W/gpgsm-asc.out" ||
  fail "gpgsm --armor output not read"
cmp "$W/gpgsm-asc.out" "$body" || fail "gpgsm --armor content"
# S/MIME headers as mail clients fold them (RFC 5322): the media type and
# the transfer encoding on continuation lines, quoted parameters, CRLF
{ printf 'MIME-Version: 1.0\r\nContent-Type:\r\n application/pkcs7-mime; name="smime.p7m";\r\n'
  printf '\tsmime-type="enveloped-data"\r\nContent-Transfer-Encoding:\r\n  Base64 \r\n\r\n'
  base64 -w 72 "$W/nss.der" | sed 's/$/\r/'; } >"$W/folded.eml"
$T decrypt --cert "$W/group.pem" --key "$W/group.key" --in "$W/folded.eml" --out "$W/folded.out" ||
  fail "folded Content-Type / Content-Transfer-Encoding not read"
cmp "$W/folded.out" "$body" || fail "folded S/MIME content"
# RFC 8551 3.8: application/octet-stream named *.p7m (by Content-Type name
# or Content-Disposition filename) is S/MIME too, as older clients and
# gateways label it; an octet-stream with another name is not CMS
for h in 'Content-Type: application/octet-stream; name="SMIME.P7M"' \
  'Content-Type: application/octet-stream\nContent-Disposition: attachment; filename=smime.p7m'; do
  { printf "$h"'\nContent-Transfer-Encoding: base64\n\n'; base64 -w 76 "$W/nss.der"; } >"$W/octet.eml"
  $T decrypt --cert "$W/group.pem" --key "$W/group.key" --in "$W/octet.eml" --out "$W/octet.out" ||
    fail "octet-stream S/MIME not read: $h"
  cmp "$W/octet.out" "$body" || fail "octet-stream S/MIME content"
done
{ printf 'Content-Type: application/octet-stream; name="data.bin"\nContent-Transfer-Encoding: base64\n\n'
  base64 -w 76 "$W/nss.der"; } >"$W/octet.eml"
rc=0
$T info --in "$W/octet.eml" >/dev/null 2>&1 || rc=$?
[ "$rc" = 15 ] || fail "an octet-stream not named .p7m: exit $rc, want 15 (ENV_ERR_NOT_CMS)"
# a member copy: the group's RI replaced by a v1.5 KTRI to the member, read
# by cmsutil -D and gpgsm --decrypt with the member's key imported
openssl pkeyutl -encrypt -pubin -inkey "$W/member.pub" -pkeyopt rsa_padding_mode:pkcs1 -in "$W/g.cek" -out "$W/v.ek"
$T ktri --cert "$W/member.pem" --kt pkcs1v15 --enc-key "$W/v.ek" --out "$W/v.ri"
$T encrypt --cert "$W/group.pem" --cipher cbc128 --kt oaep --format der --in "$body" --out "$W/c.der"
$T extract-ri --cert "$W/group.pem" --in "$W/c.der" --out "$W/c.ri"
$T ri-decrypt --ri "$W/c.ri" --cert "$W/group.pem" --key "$W/group.key" --out "$W/c.cek"
openssl pkeyutl -encrypt -pubin -inkey "$W/member.pub" -pkeyopt rsa_padding_mode:pkcs1 -in "$W/c.cek" -out "$W/v.ek"
$T ktri --cert "$W/member.pem" --kt pkcs1v15 --enc-key "$W/v.ek" --out "$W/v.ri"
$T replace-ri --ri "$W/v.ri" --format der --in "$W/c.der" --out "$W/v.der"
openssl pkcs12 -export -in "$W/member.pem" -inkey "$W/member.key" -out "$W/member.p12" -passout pass:x \
  -certpbe NONE -keypbe PBE-SHA1-3DES -macalg sha1
pk12util -i "$W/member.p12" -d "sql:$nss" -W x >/dev/null
cmsutil -D -d "sql:$nss" -i "$W/v.der" -o "$W/v.nss" || fail "cmsutil -D of a v1.5 member copy"
cmp "$W/v.nss" "$body" || fail "cmsutil -D content"
# Getting the key into gpgsm is set-up, not what is tested. gpgsm 2.2.40
# failed once in CI to decrypt an OpenSSL PKCS#12 ("data error at
# shrouded_key_bag.decrypted-text", then retrying the passphrase in other
# charsets) that 350 fresh exports here all imported: the export is made
# again (new salt and IV) and imported again, at most 3 times.
imported=0
for attempt in 1 2 3; do
  if echo x | gpgsm --batch --pinentry-mode loopback --passphrase-fd 0 --import "$W/member.p12" 2>"$W/gpgsm.err"; then
    imported=1
    break
  fi
  echo "gpgsm --import of the member key failed (attempt $attempt): $(head -3 "$W/gpgsm.err")" >&2
  openssl pkcs12 -export -in "$W/member.pem" -inkey "$W/member.key" -out "$W/member.p12" -passout pass:x \
    -certpbe NONE -keypbe PBE-SHA1-3DES -macalg sha1
done
[ "$imported" = 1 ] || fail "gpgsm --import of the member key: $(cat "$W/gpgsm.err")"
echo x | gpgsm --batch --pinentry-mode loopback --passphrase-fd 0 --decrypt -o "$W/v.gpgsm" "$W/v.der" 2>"$W/gpgsm.err" ||
  fail "gpgsm --decrypt of a v1.5 member copy: $(cat "$W/gpgsm.err")"
cmp "$W/v.gpgsm" "$body" || fail "gpgsm --decrypt content"
echo "envelope interop: ok"
