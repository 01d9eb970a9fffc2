#!/usr/bin/env bash
# exploder deliver refuses what the list must not take, with the sysexits
# code the MTA needs, and leaves nothing half-written in the spool:
#   malformed mail -> 65, unencrypted -> 77, encrypted to another key -> 77,
#   unknown list -> 67, non-member on a members-only list -> 77,
#   too large -> 65, mail loop (our own List-Id, any of them, or our
#   X-BeenThere) -> 65,
#   spool not writable (a read-only file system as root) -> 75 (the MTA
#   keeps the mail).
# Each refusal is exactly one line on stderr (what the MTA puts into its
# bounce), starting with the RFC 3463 status of docs/exploder.1.md, never a
# log line. The log file of [log] file is never opened through a symbolic
# link.
set -euo pipefail
. "$(dirname "$0")/exploder-lib.sh"
xp_setup refuse

xp_cert group eng@lists.example.org
xp_cert other someone-else
xp_conf "maildir:$W/md" "[spool]" "max_message_size = 20000"
L=eng@lists.example.org
xp list create $L --group-server https://127.0.0.1:1 --group eng --mode forward --group-cert "$W/group.pem" >/dev/null
xp list create closed@lists.example.org --group-server https://127.0.0.1:1 --group eng --mode forward \
  --group-cert "$W/group.pem" --members-only >/dev/null
xp list add $L m1@example.net >/dev/null
xp list add closed@lists.example.org m1@example.net >/dev/null

expect() { # expect CODE DSN LIST FILE [deliver args]
  local want=$1 dsn=$2 list=$3 file=$4 rc=0
  shift 4
  xp deliver --list "$list" "$@" <"$file" 2>"$W/deliver.err" || rc=$?
  cat "$W/deliver.err" >>"$W/deliver.log"
  [ "$rc" = "$want" ] || fail "$(basename "$file") to $list: exit $rc, want $want"
  [ "$(wc -l < "$W/deliver.err")" = 1 ] || fail "$(basename "$file"): stderr is not one line: $(cat "$W/deliver.err")"
  grep -q "^${dsn//./\\.} [^ ]" "$W/deliver.err" || fail "$(basename "$file"): want DSN $dsn: $(cat "$W/deliver.err")"
  grep -q 'level=\|fn=\|msg="' "$W/deliver.err" && fail "$(basename "$file"): a log line on stderr: $(cat "$W/deliver.err")"
  xp_spool_empty
}

# the reason says what is wrong (it was "malformed message: malformed message")
reason() { grep -qF "$L: malformed message: $1" "$W/deliver.err" || fail "5.6.0 reason: $(cat "$W/deliver.err")"; }
printf 'this is not a mail message, no header, no blank line' >"$W/garbage"
expect 65 5.6.0 $L "$W/garbage"
reason "not an RFC 5322 message (a bad header line, a NUL byte, or no blank line before the body)"
printf 'From: a@example.org\nSubject: x\nno blank line ever' >"$W/noblank"
expect 65 5.6.0 $L "$W/noblank"
printf 'From: a@example.org\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\n\nbm90IENNUw==\n' >"$W/badcms"
expect 65 5.6.0 $L "$W/badcms"
reason "bad S/MIME framing (the pkcs7-mime part must be base64)"
# DER, but a SEQUENCE of one INTEGER, not a ContentInfo
printf 'From: a@example.org\nContent-Type: application/pkcs7-mime\nContent-Transfer-Encoding: base64\n\nMAMCAQU=\n' \
  >"$W/notcms"
expect 65 5.6.0 $L "$W/notcms"
reason "its application/pkcs7-mime part is not CMS"
printf 'From: a@example.org\nTo: %s\nSubject: plain\n\nhello in the clear\n' $L >"$W/plain"
expect 77 5.7.1 $L "$W/plain"
# To a certificate the list does not know, while the group server (here
# unreachable) cannot say whether it is the group's new one after a
# rotation: deferred, never bounced (exploder_member_certs shows the 77
# once the server has answered that it is not)
xp_encrypt "$W/other.pem" "$W/wrong.eml" wrong
expect 75 4.3.0 $L "$W/wrong.eml"
xp_encrypt "$W/group.pem" "$W/good.eml" good
head -c 700 "$W/good.eml" >"$W/cut.eml"
expect 65 5.6.0 $L "$W/cut.eml"
reason "its S/MIME part is cut short (truncated CMS or base64)"
# a footer a gateway appended inside the base64 (letters only: it was "cut
# short"; with a full stop: "must be base64"), and the CMS as it is under
# Content-Transfer-Encoding: binary: each said as it is
for f in 'Footer text here' 'This message was scanned by Example Corp.'; do
  { cat "$W/good.eml"; printf '\n%s\n' "$f"; } >"$W/footer.eml"
  expect 65 5.6.0 $L "$W/footer.eml"
  reason "its S/MIME part holds text that is not base64 (a footer or disclaimer added inside the encrypted part"
done
{ sed '/^$/q' "$W/good.eml" | sed 's/^Content-Transfer-Encoding: base64$/Content-Transfer-Encoding: binary/'
  sed '1,/^$/d' "$W/good.eml" | base64 -d; } >"$W/binary.eml"
grep -q '^Content-Transfer-Encoding: binary$' "$W/binary.eml" || fail "binary.eml: no binary encoding"
expect 65 5.6.0 $L "$W/binary.eml"
reason "bad S/MIME framing (the pkcs7-mime part must be base64)"
# taken as encrypted by the S/MIME reader, shown in the clear by members'
# mail programs (Python's email package, Mozilla's libmime) reading the copy's
# header fields as they came: a text/html Content-Type put first (they
# take the first of a field given twice, the reader the last), or one
# hidden in another field behind a CR that ends no line (a line end to
# them), the field after it their plain body
sed '0,/^Content-Type: /s//Content-Type: text\/html\nContent-Type: /' "$W/good.eml" >"$W/two-ct.eml"
[ "$(grep -c '^Content-Type: ' "$W/two-ct.eml")" = 2 ] || fail "two Content-Type fields not written"
expect 65 5.6.0 $L "$W/two-ct.eml"
reason "its header block gives Content-Type, Content-Transfer-Encoding or Content-Disposition more than once"
sed 's|^Subject: .*|&\nX-Note: x\rContent-Type: text/plain\r\r\nX-Wire: wire 50000 EUR today|' "$W/good.eml" >"$W/cr-ct.eml"
grep -q "^X-Note: x"$'\r'"Content-Type: text/plain"$'\r\r'"$" "$W/cr-ct.eml" || fail "a CR that ends no line not written"
expect 65 5.6.0 $L "$W/cr-ct.eml"
reason "its header block holds a CR that ends no line"
# what no member can read, or that is not S/MIME as a whole: a content
# cipher the members cannot decrypt (Camellia) is 5.7.6, not "malformed";
# encrypted then signed, as multipart/signed or opaque signed-data, and a
# list footer outside the encryption are refused with what to change, not
# as "not encrypted"
openssl cms -encrypt -camellia256 -recip "$W/group.pem" -subject camellia -in "$W/good.eml" -out "$W/camellia.eml"
expect 77 5.7.6 $L "$W/camellia.eml"
grep -qF "$L: its members cannot decrypt it: its content cipher is not AES-CBC, AES-GCM or 3DES-CBC" \
  "$W/deliver.err" || fail "Camellia reason: $(cat "$W/deliver.err")"
# a key algorithm the group server never unwraps is refused now with the
# server's own list of what it takes (docs/api.md, unsupported_algorithm),
# not spooled to bounce or to reach members who cannot read it: RSA-OAEP
# with SHA-384, and to an EC group a KARI with the SHA-384 X9.63 KDF or
# (openssl cms -des3) a 3DES key wrap
openssl cms -encrypt -aes128 -recip "$W/group.pem" -keyopt rsa_padding_mode:oaep -keyopt rsa_oaep_md:sha384 \
  -subject oaep384 -in "$W/good.eml" -out "$W/oaep384.eml"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$W/ecg.key" -out "$W/ecg.pem" \
  -subj /CN=ecg -days 2 2>/dev/null
xp list create ec@lists.example.org --group-server https://127.0.0.1:1 --group ecg --mode forward \
  --group-cert "$W/ecg.pem" >/dev/null
openssl cms -encrypt -aes128 -recip "$W/ecg.pem" -keyopt ecdh_kdf_md:sha384 -subject kdf384 -in "$W/good.eml" \
  -out "$W/kdf384.eml"
openssl cms -encrypt -des3 -recip "$W/ecg.pem" -subject des3wrap -in "$W/good.eml" -out "$W/des3wrap.eml"
# RSA-OAEP with SHA-256 and MGF1 with SHA-1 (Java's
# OAEPWithSHA-256AndMGF1Padding) is refused too, and the reason says the
# MGF1 hash must be the same (it said "it takes RSA-OAEP with SHA-256" to
# a sender who had sent just that, they thought)
openssl cms -encrypt -aes128 -recip "$W/group.pem" -keyopt rsa_padding_mode:oaep -keyopt rsa_oaep_md:sha256 \
  -keyopt rsa_mgf1_md:sha1 -subject oaep256mgf1 -in "$W/good.eml" -out "$W/oaep256mgf1.eml"
for m in "$L oaep384" "$L oaep256mgf1" "ec@lists.example.org kdf384" "ec@lists.example.org des3wrap"; do
  set -- $m
  expect 77 5.7.6 "$1" "$W/$2.eml"
  grep -qF "$1: the group server will not decrypt this message: its key algorithm is not one the group server unwraps (it takes RSA-OAEP with SHA-1 or SHA-256 (MGF1 with the same hash, no label), RSA PKCS#1 v1.5, or ECDH (dhSinglePass-stdDH with the SHA-1 or SHA-256 X9.63 KDF) with an AES key wrap)" \
    "$W/deliver.err" || fail "$2 reason: $(cat "$W/deliver.err")"
done
openssl cms -encrypt -aes128 -recip "$W/ecg.pem" -subject kdf1 -in "$W/good.eml" -out "$W/kdf1.eml"
xp deliver --list ec@lists.example.org <"$W/kdf1.eml" 2>"$W/deliver.err" || fail "a SHA-1 KDF KARI refused: $(cat "$W/deliver.err")"
xp_drain
xp_spool_empty
# ... and what the group server would refuse to unwrap for good is refused
# at once too, with the reason, not accepted and bounced later: a
# compressed originator point (a form the server does not take: 5.7.6), a
# point off the group key's curve or a cut key wrap (malformed: 5.6.0)
for m in compressed offcurve badwrap bigukm; do
  $PY "$(dirname "$0")/kari-mangle.py" $m "$W/kdf1.eml" "$W/kari-$m.eml" || fail "cannot make the $m message"
done
expect 77 5.7.6 ec@lists.example.org "$W/kari-compressed.eml"
grep -qF "the ECDH originator key of its RecipientInfo for the group is a compressed point" "$W/deliver.err" ||
  fail "compressed point: $(cat "$W/deliver.err")"
for m in offcurve badwrap bigukm; do
  expect 65 5.6.0 ec@lists.example.org "$W/kari-$m.eml"
  grep -qF "ec@lists.example.org: malformed message: its RecipientInfo for the group is malformed" "$W/deliver.err" ||
    fail "$m: $(cat "$W/deliver.err")"
done
# an RSA-encrypted key shorter than the group key's modulus (the key
# holder refuses it before the token: 400 unwrap_failed)
$PY "$(dirname "$0")/kari-mangle.py" cutek "$W/good.eml" "$W/ktri-cutek.eml" || fail "cannot make the cutek message"
expect 65 5.6.0 $L "$W/ktri-cutek.eml"
reason "its RecipientInfo for the group is malformed"
sed -n '/^MIME-Version/,$p' "$W/good.eml" >"$W/part.eml"
openssl cms -sign -signer "$W/other.pem" -inkey "$W/other.key" -in "$W/part.eml" -out "$W/ets.eml"
expect 77 5.7.1 $L "$W/ets.eml"
grep -qF "$L: message is signed after it was encrypted (multipart/signed around its S/MIME part)" "$W/deliver.err" ||
  fail "encrypted-then-signed reason: $(cat "$W/deliver.err")"
openssl cms -sign -nodetach -signer "$W/other.pem" -inkey "$W/other.key" -in "$W/part.eml" -out "$W/ets2.eml"
expect 77 5.7.1 $L "$W/ets2.eml"
grep -qF "$L: message is not encrypted: its S/MIME part is CMS, but not EnvelopedData" "$W/deliver.err" ||
  fail "opaque signed-data reason: $(cat "$W/deliver.err")"
{ printf 'From: a@example.org\nSubject: [other] good\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b1\n\n'
  printf -- '--b1\n'; cat "$W/part.eml"; printf -- '--b1\nContent-Type: text/plain\n\nfooter\n--b1--\n'; } >"$W/footer.eml"
expect 77 5.7.1 $L "$W/footer.eml"
grep -qF "$L: message has parts outside its encryption (multipart/mixed around its S/MIME part)" "$W/deliver.err" ||
  fail "footer reason: $(cat "$W/deliver.err")"
expect 67 5.1.1 nosuchlist@lists.example.org "$W/good.eml"
# a +tag (Postfix's recipient_delimiter) does not make an unknown list known
expect 67 5.1.1 nosuchlist+tag@lists.example.org "$W/good.eml"
grep -qF 'no such list: nosuchlist+tag@lists.example.org' "$W/deliver.err" || fail "67 reason: $(cat "$W/deliver.err")"
expect 77 5.7.1 closed@lists.example.org "$W/good.eml" --sender stranger@example.org
# a member's <address> in a From: comment or quoted display name is not
# who sent it (a DMARC checker and every mail reader see evil.example)
for f in 'mallory@evil.example (<m1@example.net>)' '"<m1@example.net>" <mallory@evil.example>' \
  'mallory@evil.example ((nested) <m1@example.net>)' 'x <mallory@evil.example> <m1@example.net>'; do
  sed "s|^From: .*|From: $f|" "$W/good.eml" >"$W/from-comment.eml"
  grep -qF "From: $f" "$W/from-comment.eml" || fail "From: not rewritten"
  expect 77 5.7.1 closed@lists.example.org "$W/from-comment.eml" --sender stranger@example.org
done
# a CR that ends no line: Python's email package (DMARC tools) reads From
# mallory@evil.example and the rest as another line
sed "s|^From: .*|From: mallory@evil.example\r<m1@example.net>|" "$W/good.eml" >"$W/from-cr.eml"
grep -q "^From: mallory@evil.example"$'\r'"<m1@example.net>" "$W/from-cr.eml" || fail "From: with a CR not written"
expect 77 5.7.1 closed@lists.example.org "$W/from-cr.eml" --sender stranger@example.org
# two From: fields (RFC 5322 allows one): neither is taken
sed "s|^From: .*|From: m1@example.net\nFrom: mallory@evil.example|" "$W/good.eml" >"$W/two-from.eml"
[ "$(grep -c '^From: ' "$W/two-from.eml")" = 2 ] || fail "two From: not written"
expect 77 5.7.1 closed@lists.example.org "$W/two-from.eml" --sender stranger@example.org
head -c 30000 /dev/zero | tr '\0' 'a' | fold -w 70 | sed '1s/^/From: a@example.org\n\n/' >"$W/big"
expect 65 5.3.4 $L "$W/big"
# list members and list addresses by the group server's rule (docs/api.md
# "Addresses"): exit 1 (64 for list create's address) and a line saying why
long_local=$(printf 'l%.0s' $(seq 1 65))
for a in "$long_local@example.org|longer than 64" "m@[192.0.2.1]|address literal" "jürgen@example.org|SMTPUTF8" \
  '"a b"@example.org|quoted local part' "../../m@example.org|dot first"; do
  rc=0
  xp list add $L "${a%%|*}" 2>"$W/add.err" || rc=$?
  [ "$rc" = 1 ] && grep -q "^exploder: not an address: .*: .*${a#*|}" "$W/add.err" ||
    fail "list add ${a%%|*}: exit $rc: $(cat "$W/add.err")"
done
rc=0
xp list create "m@[192.0.2.1]" --group-server https://127.0.0.1:1 --group eng --mode forward 2>"$W/add.err" || rc=$?
[ "$rc" = 64 ] && grep -q "not a list address: .*address literal" "$W/add.err" || fail "list create: $rc $(cat "$W/add.err")"
# a list speaks as LOCAL-request@ and LOCAL-owner@: those must be addresses too
rc=0
xp list create "$(printf 'l%.0s' $(seq 1 57))@lists.example.org" --group-server https://127.0.0.1:1 --group eng \
  --mode forward --group-cert "$W/group.pem" 2>"$W/add.err" || rc=$?
[ "$rc" = 64 ] && grep -q -- "-request@lists.example.org (List-Unsubscribe) would not be an address: a local part longer than 64" \
  "$W/add.err" || fail "a list address without room for -request: $rc $(cat "$W/add.err")"
# Stock clients (Thunderbird, Outlook, gpgsm) encrypt to the certificate
# that names the address they send to: a group certificate for another
# address (or none) is said at list create, which still makes the list
rc=0
xp list create noname@lists.example.org --group-server https://127.0.0.1:1 --group eng --mode forward \
  --group-cert "$W/group.pem" >/dev/null 2>"$W/create.err" || rc=$?
[ "$rc" = 0 ] && grep -q "^exploder: warning: the group certificate names no address, not the list's address noname@lists.example.org: .*Thunderbird" \
  "$W/create.err" || fail "list create, a group certificate naming no address: $rc $(cat "$W/create.err")"
for n in "other|eng@example.org" "named|Named@Lists.Example.org"; do
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/${n%%|*}.key" -out "$W/${n%%|*}.pem" -subj "/CN=${n%%|*}" \
    -days 2 -addext "subjectAltName=email:${n#*|}" 2>/dev/null
done
xp list create other@lists.example.org --group-server https://127.0.0.1:1 --group eng --mode forward \
  --group-cert "$W/other.pem" >/dev/null 2>"$W/create.err" || fail "list create other@"
grep -q "^exploder: warning: the group certificate names eng@example.org, not the list's address other@lists.example.org: .*--address other@lists.example.org)$" \
  "$W/create.err" || fail "list create, a group certificate for another address: $(cat "$W/create.err")"
xp list create named@lists.example.org --group-server https://127.0.0.1:1 --group eng --mode forward \
  --group-cert "$W/named.pem" >/dev/null 2>"$W/create.err" || fail "list create named@"
grep -q "certificate names" "$W/create.err" &&
  fail "list create warned about a certificate naming the list (in another case): $(cat "$W/create.err")"
# list set: a list that lets plain mail through cannot move to a rewrap
# mode; the error names the setting in the way, not an option not given
xp list create plain@lists.example.org --group-server https://127.0.0.1:1 --group eng --mode forward \
  --group-cert "$W/group.pem" --allow-unencrypted >/dev/null 2>&1
rc=0
xp list set plain@lists.example.org --mode member-certs 2>"$W/set.err" || rc=$?
[ "$rc" = 64 ] && grep -q "lets unencrypted mail through (--allow-unencrypted), which only --mode forward can: add --require-encrypted" \
  "$W/set.err" || fail "list set --mode on an open list: $rc $(cat "$W/set.err")"
xp list set plain@lists.example.org --mode member-certs --require-encrypted >/dev/null || fail "list set with both"
# the same limit for every mode: an encrypted message over it, to a
# group-secret and a member-certs list, is refused before anything else
for mode in group-secret member-certs; do
  xp list create $mode@lists.example.org --group-server https://127.0.0.1:1 --group eng --mode $mode \
    --group-cert "$W/group.pem" >/dev/null
  head -c 20000 /dev/urandom | base64 > "$W/big.txt"
  openssl cms -encrypt -aes-256-cbc -recip "$W/group.pem" -keyopt rsa_padding_mode:oaep -subject big \
    -in "$W/big.txt" -out "$W/big.eml"
  expect 65 5.3.4 $mode@lists.example.org "$W/big.eml"
  grep -q 'message too large for the list (limit 20000 bytes)' "$W/deliver.err" || fail "5.3.4 reason: $(cat "$W/deliver.err")"
done
# The limit is deliver's, where mail comes in: a message accepted under it
# goes out even when it is lowered before the runner sends the message
# (neither held back as unreadable nor bounced)
head -c 6000 /dev/urandom | base64 > "$W/mid.txt"
openssl cms -encrypt -aes-256-cbc -recip "$W/group.pem" -keyopt rsa_padding_mode:oaep -subject mid \
  -in "$W/mid.txt" -out "$W/mid.eml"
xp deliver --list $L <"$W/mid.eml" || fail "mid.eml refused"
xp_conf "maildir:$W/md" "[spool]" "max_message_size = 4096"
copies() { { find "$W/md" -path '*/m1@example.net/new/*' -type f 2>/dev/null || true; } | wc -l; }
before=$(copies)
rc=0
xp run --once 2>>"$W/run.log" || rc=$?
[ "$rc" = 0 ] || fail "a message accepted under the limit, after it was lowered: run exit $rc: $(tail -2 "$W/run.log")"
[ "$(copies)" = $((before + 1)) ] || fail "the message did not go out"
xp_spool_empty
xp_conf "maildir:$W/md" "[spool]" "max_message_size = 20000"
# `list set --members-only` after deliver took a post from someone not on
# the list (an open list flooded): the runner checks it again for the
# list as it is now, as it does the mode (exploder(1), list set), so it
# reaches no member and bounces with deliver's reason; a member's post
# taken with it goes out
xp list create open@lists.example.org --group-server https://127.0.0.1:1 --group eng --mode forward \
  --group-cert "$W/group.pem" >/dev/null 2>&1
xp list add open@lists.example.org m1@example.net >/dev/null
sed 's/^Subject: .*/Subject: from outside/' "$W/good.eml" >"$W/outside.eml"
xp deliver --list open@lists.example.org --sender stranger@example.com <"$W/outside.eml" ||
  fail "the open list refused a post from outside"
xp deliver --list open@lists.example.org --sender m1@example.net <"$W/good.eml" || fail "the open list refused a member"
xp list set open@lists.example.org --members-only >/dev/null
before=$(copies)
xp_drain
[ "$(copies)" = $((before + 1)) ] || fail "after list set --members-only: $(($(copies) - before)) copies, want the member's post alone"
! grep -rlq '^Subject: from outside' "$W/md/m1@example.net/new" ||
  fail "after list set --members-only, a post from outside taken before reached a member"
grep -rq 'Reason: open@lists.example.org accepts mail from its members only\.' "$W/md/stranger@example.com/new" ||
  fail "no bounce with deliver's reason for the post from outside: $(tail -2 "$W/run.log")"
xp_spool_empty
{ echo "List-Id: Eng <eng.lists.example.org>"; cat "$W/good.eml"; } >"$W/loop.eml"
expect 65 5.4.6 $L "$W/loop.eml"
# our copy back through another list that replaced our List-Id with its own
{ printf 'List-Id: <other.lists.example.org>\nX-BeenThere: other@lists.example.org\nX-BeenThere: %s\n' $L
  cat "$W/good.eml"; } >"$W/loop2.eml"
expect 65 5.4.6 $L "$W/loop2.eml"
# ... or through one that kept our List-Id and X-BeenThere out, its own
# List-Id put before ours
{ printf 'List-Id: Other <other.lists.example.org>\nList-Id: Eng <%s>\n' "${L/@/.}"
  cat "$W/good.eml"; } >"$W/loop3.eml"
expect 65 5.4.6 $L "$W/loop3.eml"
# an unreadable configuration: temporary, and still one line (4.3.5)
rc=0
"$EXPLODER" -c "$W/no-such.conf" deliver --list $L <"$W/good.eml" 2>"$W/deliver.err" || rc=$?
[ "$rc" = 75 ] && [ "$(wc -l < "$W/deliver.err")" = 1 ] && grep -q '^4\.3\.5 ' "$W/deliver.err" ||
  fail "unreadable configuration: exit $rc: $(cat "$W/deliver.err")"

# the list's own addresses follow the address rule: a bad one is a bad
# value of the file (78), never a MAIL FROM the relay refuses later
for k in "envelope_from = list owner" "bounce_from = <MAILER-DAEMON@lists.example.org>"; do
  printf '[spool]\npath = %s\n[delivery]\nrelay = maildir:%s\n%s\n' "$W/spool" "$W/md" "$k" >"$W/badaddr.conf"
  rc=0
  "$EXPLODER" -c "$W/badaddr.conf" list show $L >/dev/null 2>"$W/conf.err" || rc=$?
  [ "$rc" = 78 ] && grep -q "badaddr.conf:5: bad value for '${k%% *}' in \[delivery\]" "$W/conf.err" ||
    fail "$k: exit $rc: $(cat "$W/conf.err")"
done
# ... while a value an older version took, under the looser rule the
# operator's own MTA follows (a '_' in a domain), keeps working
for k in "envelope_from = list-owner@mail_host.example.org" "bounce_from = MAILER-DAEMON@mail_host.example.org"; do
  printf '[spool]\npath = %s\n[delivery]\nrelay = maildir:%s\n%s\n' "$W/spool" "$W/md" "$k" >"$W/oldaddr.conf"
  "$EXPLODER" -c "$W/oldaddr.conf" list show $L >/dev/null 2>"$W/conf.err" || fail "$k refused: $(cat "$W/conf.err")"
done

# a spool that cannot be written: temporary failure, never "accepted"
chmod 0500 "$W/spool/msg"
if [ "$(id -u)" != 0 ]; then
  rc=0
  xp deliver --list $L <"$W/good.eml" 2>>"$W/deliver.log" || rc=$?
  [ "$rc" = 75 ] || fail "unwritable spool: exit $rc, want 75"
fi
chmod 0700 "$W/spool/msg"
# ... also to root (CI): the spool on a read-only file system (a read-only
# bind mount of it). deliver: 75 and its one 4.3.0 line; run: 75, and its
# log names the cause (SQLite alone says "unable to open database file").
if [ "$(id -u)" = 0 ]; then
  mount --bind "$W/spool" "$W/spool" && mount -o remount,ro,bind "$W/spool" || fail "cannot bind-mount the spool read-only"
  trap 'umount "$W/spool" 2>/dev/null || true; xp_cleanup' EXIT
  rc=0
  xp deliver --list $L <"$W/good.eml" 2>"$W/deliver.err" || rc=$?
  [ "$rc" = 75 ] && grep -q '^4\.3\.0 ' "$W/deliver.err" || fail "read-only spool: deliver exit $rc: $(cat "$W/deliver.err")"
  rc=0
  xp run --once 2>"$W/run.err" || rc=$?
  [ "$rc" = 75 ] && grep -qF "(the spool directory cannot be written: Read-only file system)" "$W/run.err" ||
    fail "read-only spool: run exit $rc: $(cat "$W/run.err")"
  umount "$W/spool" || fail "cannot unmount the read-only spool"
fi
xp_spool_empty

# and what is acceptable is accepted (members-only with a member sender too)
xp deliver --list $L <"$W/good.eml" || fail "good mail refused"
xp deliver --list closed@lists.example.org --sender m1@example.net <"$W/good.eml" || fail "member refused"
[ "$(sqlite3 "$W/spool/exploder.db" 'select count(*) from messages')" = 2 ] || fail "want 2 spooled messages"
# S/MIME labelled application/octet-stream, named smime.p7m (RFC 8551 3.8)
# (openssl's Content-Disposition filename="smime.p7m" taken out: the name
# alone must do)
sed -e 's|^Content-Type: .*|Content-Type: application/octet-stream; name="smime.p7m"|' -e '/^Content-Disposition:/d' \
  "$W/good.eml" >"$W/octet.eml"
grep -q '^Content-Type: application/octet-stream' "$W/octet.eml" && ! grep -q '^Content-Disposition' "$W/octet.eml" ||
  fail "octet.eml not made"
xp deliver --list $L <"$W/octet.eml" || fail "S/MIME as application/octet-stream; name=smime.p7m refused"
[ "$(sqlite3 "$W/spool/exploder.db" 'select count(*) from messages')" = 3 ] || fail "want 3 spooled messages"
# the same name as RFC 2231 writes it (a client that encodes every file
# name), on a folded line, in Content-Type alone or in Content-Disposition
# alone (openssl's filename="smime.p7m" taken out)
sed -e "s|^Content-Type: .*|Content-Type: application/octet-stream;\n name*=utf-8''smime.p7m|" \
  -e '/^Content-Disposition:/d' "$W/good.eml" >"$W/octet2231.eml"
sed -e 's|^Content-Type: .*|Content-Type: application/octet-stream|' \
  -e "s|^Content-Disposition: .*|Content-Disposition: attachment;\n filename*0*=utf-8''smime; filename*1=.p7m|" \
  "$W/good.eml" >"$W/octet2231cd.eml"
grep -q "^ name\*=utf-8''smime.p7m" "$W/octet2231.eml" && ! grep -q "^Content-Disposition" "$W/octet2231.eml" &&
  grep -q "^ filename\*0\*=utf-8''smime; filename\*1=.p7m" "$W/octet2231cd.eml" || fail "octet2231*.eml not made"
for m in octet2231 octet2231cd; do
  xp deliver --list $L <"$W/$m.eml" 2>"$W/deliver.err" || fail "$m.eml (RFC 2231 smime.p7m) refused: $(cat "$W/deliver.err")"
done
[ "$(sqlite3 "$W/spool/exploder.db" 'select count(*) from messages')" = 5 ] || fail "want 5 spooled messages"
# OpenSSL 3.0's default content cipher (`openssl cms -encrypt` without one), and old Outlook's: 3DES-CBC
openssl cms -encrypt -recip "$W/group.pem" -subject des3 -in "$W/good.eml" -out "$W/des3.eml"
xp deliver --list $L --sender alice@example.org <"$W/des3.eml" 2>"$W/deliver.err" || fail "3DES refused: $(cat "$W/deliver.err")"
[ "$(sqlite3 "$W/spool/exploder.db" 'select count(*) from messages')" = 6 ] || fail "want 6 spooled messages"
# members are US-ASCII (exploder(1)): a UTF-8 member is refused; a UTF-8
# envelope sender (SMTPUTF8) is a sender like any, kept as written
xp list add $L 'jürgen@example.net' 2>/dev/null && fail "a UTF-8 member address was added"
sed 's/^Subject: good$/Subject: Grüße – ½/' "$W/good.eml" >"$W/utf8.eml"
xp deliver --list $L --sender 'jürgen@example.net' <"$W/utf8.eml" || fail "UTF-8 envelope sender refused"
[ "$(sqlite3 "$W/spool/exploder.db" "select count(*) from messages where sender = 'jürgen@example.net'")" = 1 ] ||
  fail "a UTF-8 envelope sender is not kept as the sender"
xp_drain
xp_spool_empty
grep -qx 'Subject: Grüße – ½' "$W"/md/m1@example.net/new/* || fail "a raw UTF-8 Subject did not pass unchanged"
# [log] file: the diagnostic log goes there (0600), standard error keeps
# only the one-line reason (the MTA's bounce text); a symbolic link at that
# path is not followed (an admin may run list commands as root).
xp_conf "maildir:$W/md" "[spool]" "max_message_size = 20000" "[log]" "file = $W/exploder.log"
rc=0
xp deliver --list $L <"$W/plain" 2>"$W/stderr1" || rc=$?
[ "$rc" = 77 ] || fail "plain mail with [log] file: exit $rc"
[ "$(wc -l <"$W/stderr1")" = 1 ] && grep -q "^5\.7\.1 $L: message is not encrypted" "$W/stderr1" ||
  fail "stderr with [log] file: $(cat "$W/stderr1")"
grep -q "msg=\"refused\" list=$L" "$W/exploder.log" || fail "the refusal is not in [log] file"
[ "$(stat -c %a "$W/exploder.log")" = 600 ] || fail "log file mode $(stat -c %a "$W/exploder.log")"
# What a poster controls (the Message-ID, an envelope sender that is no
# address) cannot add a field or a record to the log: each line parses as
# one record of key=value fields with one level= and no field of theirs.
sed 's/^Subject: good$/Message-ID: <a@b> level=error fake="1" x\\"y\nSubject: good/' "$W/good.eml" >"$W/hostile.eml"
grep -q '^Message-ID: <a@b> level=error fake=' "$W/hostile.eml" || fail "no hostile Message-ID in the message"
xp deliver --list $L --sender 'x level=error fake=2@example.net' <"$W/hostile.eml" 2>/dev/null ||
  fail "a message with a hostile Message-ID and sender refused"
xp_drain
/usr/bin/python3 "$(dirname "$0")/../lib/logcheck.py" "$W/exploder.log" fake ||
  fail "hostile values made fields in the log"
grep -q 'message_id=' "$W/exploder.log" || fail "no accepted line with the message id"
# Standard error closed by whoever ran deliver (`2>&-`, a careless cron
# or wrapper): the log file took its number, and the bounce line went into
# the log. Now the line is lost, the log stays records only.
rc=0
xp deliver --list $L <"$W/plain" 2>&- || rc=$?
[ "$rc" = 77 ] || fail "plain mail with standard error closed: exit $rc"
grep -q "msg=\"refused\" list=$L" "$W/exploder.log" || fail "the refusal with stderr closed is not logged"
! grep -n '^5\.7\.1 ' "$W/exploder.log" || fail "deliver 2>&-: the bounce line went into [log] file"
/usr/bin/python3 "$(dirname "$0")/../lib/logcheck.py" "$W/exploder.log" fake ||
  fail "deliver 2>&-: [log] file holds a line that is not a record"
# standard input closed: no message to read, 75 as before (not an empty
# message taken in and bounced as malformed)
rc=0
xp deliver --list $L <&- 2>"$W/stderr4" || rc=$?
[ "$rc" = 75 ] || fail "deliver <&-: exit $rc, want 75: $(cat "$W/stderr4")"
# list show's output that cannot be written (a full disk, standard
# output closed) is exit 1 with a line, not a silent success.
for out in /dev/full closed; do
  rc=0
  if [ "$out" = closed ]; then xp list show $L >&- 2>"$W/show.err" || rc=$?
  else xp list show $L >"$out" 2>"$W/show.err" || rc=$?; fi
  [ "$rc" = 1 ] || fail "list show with standard output $out: exit $rc, want 1"
  grep -q '^exploder: .*standard output' "$W/show.err" || fail "list show to $out: $(cat "$W/show.err")"
done
rm "$W/exploder.log"
echo "not a log" >"$W/target"
ln -s "$W/target" "$W/exploder.log"
rc=0
xp deliver --list $L <"$W/plain" 2>"$W/stderr2" || rc=$?
[ "$rc" = 77 ] || fail "plain mail with a link at [log] file: exit $rc"
[ "$(cat "$W/target")" = "not a log" ] || fail "the log was written through a symbolic link"
# deliver then logs to syslog (mail), the warning too: its standard error
# stays the one line of the bounce
[ "$(wc -l <"$W/stderr2")" = 1 ] && grep -q "^5\.7\.1 $L: message is not encrypted" "$W/stderr2" ||
  fail "stderr with a link at [log] file: $(cat "$W/stderr2")"
# a list command (no MTA reading its standard error) warns there
xp list show $L >/dev/null 2>"$W/stderr3"
[ "$(cat "$W/target")" = "not a log" ] || fail "list show wrote the log through a symbolic link"
grep -q 'cannot open the log file' "$W/stderr3" || fail "no warning about the log file: $(cat "$W/stderr3")"
xp_spool_empty

echo "exploder refuse: ok"
