#!/usr/bin/env bash
# interop-clients.sh BIN SRC: stock S/MIME clients at both ends, with the
# libraries they are built on as independent peers (issue 14), against one
# real `groupsrv serve` on one SoftHSM token (server-lib.sh: group "eng",
# created with the defaults).
#
# Senders, each to the group certificate, as a user of that client would:
#   NSS 3.87 `cmsutil -E` (Thunderbird's library: PKCS#1 v1.5, AES-128-CBC),
#   gpgsm 2.2.40 `--encrypt` (v1.5; its default AES-128-CBC, and AES192/256),
#   `openssl cms -encrypt` without OAEP (v1.5, as Outlook and most clients)
#   and with OAEP, each with AES-128/192/256-CBC and AES-256-GCM, and
#   without any option (OpenSSL 3.0's default: v1.5 with 3DES-CBC).
# Every message decrypts with `groupmail decrypt --via tls, recipient-key,
# group-secret, membership-cert`, and goes through the exploder in forward,
# group-secret and member-certs mode, where the copies decrypt with
# groupmail (forward: tls; group-secret: the group secret key; member-certs:
# the member's own key) and, for member-certs, with the readers' own tools:
# `openssl cms -decrypt`, NSS `cmsutil -D` and `gpgsm --decrypt` with the
# member's key imported into an NSS database / gpgsm (CBC: neither reads
# AuthEnvelopedData (GCM) nor RSA-OAEP, which is why member copies are
# PKCS#1 v1.5 by default; bob chose OAEP and reads with openssl only).
# Refusals: a group made with --oaep-only refuses v1.5 at `exploder
# deliver` (exit 77, one line, DSN 5.7.6) and at the unwrap endpoint (400)
# with the same reason. python3-cryptography 38 (Debian 12) has no
# PKCS7EnvelopeBuilder: that sender is not tried (docs/clients.md).
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/server-lib.sh"
start_server
PY=/usr/bin/python3
SMTPD_PY=$SRC/tests/lib/smtpd.py

gs member set eng bob@example.org --wrap oaep >/dev/null

# ---- groupmail as alice, and as bob --------------------------------------
gm_home_init
as() { local who=$1; shift; "$BIN/groupmail" "$@" --cert "$certs/$who@example.org.pem" --key "$certs/$who@example.org.key"; }
"$BIN/groupmail" fetch-cert >/dev/null || fail "groupmail fetch-cert"

# ---- senders --------------------------------------------------------------
msgs=$work/msgs
mkdir -p "$msgs"
body() { printf 'Content-Type: text/plain; charset=us-ascii\n\nsecret body of %s\n' "$1"; }
# smime_wrap DER OUT NAME: a mail around a DER CMS message, as a client sends it
smime_wrap() {
  { printf 'From: sender@example.net\nTo: eng@example.org\nSubject: %s\nMIME-Version: 1.0\n' "$3"
    printf 'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\n'
    printf 'Content-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=smime.p7m\n\n'
    base64 -w 76 "$1"; } > "$2"
}
names=()

# NSS: the group certificate in a fresh database, cmsutil -E as Thunderbird encrypts
nss_send=$work/nss-send
mkdir -p "$nss_send"
certutil -N -d "sql:$nss_send" --empty-password
certutil -A -d "sql:$nss_send" -n eng -t ",," -i "$certs/group.pem"
body nss-cmsutil > "$work/p.txt"
cmsutil -E -d "sql:$nss_send" -r eng -i "$work/p.txt" -o "$msgs/nss-cmsutil.der" || fail "cmsutil -E"
smime_wrap "$msgs/nss-cmsutil.der" "$msgs/nss-cmsutil.eml" nss-cmsutil
names+=(nss-cmsutil)

# gpgsm: a private GNUPGHOME, the local CA trusted, no CRLs (none exist)
gpg_send=$work/gnupg-send
mkdir -m 700 "$gpg_send"
printf 'disable-crl-checks\n' > "$gpg_send/gpgsm.conf"
printf '%s S\n' "$(openssl x509 -in "$certs/localca.pem" -noout -fingerprint -sha1 | cut -d= -f2)" \
  > "$gpg_send/trustlist.txt"
GNUPGHOME=$gpg_send gpgsm --batch --import "$certs/localca.pem" "$certs/group.pem" 2>/dev/null ||
  fail "gpgsm --import of the group certificate"
for c in default AES192 AES256; do
  n=gpgsm-$c
  [ "$c" = default ] && n=gpgsm
  body "$n" > "$work/p.txt"
  opt=()
  [ "$c" != default ] && opt=(--cipher-algo "$c")
  GNUPGHOME=$gpg_send gpgsm --batch "${opt[@]}" --encrypt -r eng@example.org -o "$msgs/$n.der" "$work/p.txt" \
    2>"$work/gpgsm.err" || fail "gpgsm --encrypt $c: $(cat "$work/gpgsm.err")"
  smime_wrap "$msgs/$n.der" "$msgs/$n.eml" "$n"
  names+=("$n")
done
GNUPGHOME=$gpg_send gpgconf --kill gpg-agent 2>/dev/null || true

# openssl cms, with and without OAEP, every content cipher
for kt in v15 oaep; do
  for c in aes128 aes192 aes256 aes-256-gcm; do
    n=openssl-$kt-$c
    opt=()
    [ "$kt" = oaep ] && opt=(-keyopt rsa_padding_mode:oaep)
    body "$n" > "$work/p.txt"
    openssl cms -encrypt "-$c" -recip "$certs/group.pem" "${opt[@]}" -from sender@example.net \
      -to eng@example.org -subject "$n" -in "$work/p.txt" -out "$msgs/$n.eml" || fail "openssl cms $n"
    names+=("$n")
  done
done
# OpenSSL 3.0 without a cipher option, DESIGN.md's `openssl cms -encrypt
# -recip group.pem`: PKCS#1 v1.5 with 3DES-CBC, as old Outlook sends too
n=openssl-default
body "$n" > "$work/p.txt"
openssl cms -encrypt -recip "$certs/group.pem" -from sender@example.net -to eng@example.org -subject "$n" \
  -in "$work/p.txt" -out "$msgs/$n.eml" || fail "openssl cms $n"
names+=("$n")
# what each sender really sent: key transport and content cipher
alg_of() { openssl cms -cmsout -print -in "$1" | sed -n 's/^ *algorithm: \([^ ]*\) .*/\1/p' | tr '\n' ' '; }
for n in nss-cmsutil gpgsm; do
  a=$(alg_of "$msgs/$n.eml")
  case "$a" in *rsaEncryption*aes-128-cbc*) ;; *) fail "$n sent $a, not PKCS#1 v1.5 with AES-128-CBC" ;; esac
done
case "$(alg_of "$msgs/gpgsm-AES192.eml")" in *rsaEncryption*aes-192-cbc*) ;; *) fail "gpgsm AES192" ;; esac
case "$(alg_of "$msgs/openssl-oaep-aes-256-gcm.eml")" in *rsaesOaep*aes-256-gcm*) ;; *) fail "openssl oaep gcm" ;; esac
case "$(alg_of "$msgs/openssl-default.eml")" in *rsaEncryption*des-ede3-cbc*) ;; *) fail "openssl default" ;; esac
ok "${#names[@]} messages from NSS, gpgsm and openssl"

expect_plain() { # expect_plain FILE NAME WHAT
  tr -d '\r' < "$1" | grep -q "^secret body of $2\$" || fail "$3: wrong plaintext: $(head -c 200 "$1")"
}

# ---- every message, every groupmail method, on the default group ---------
for n in "${names[@]}"; do
  for via in tls recipient-key group-secret membership-cert; do
    as alice decrypt --via "$via" --in "$msgs/$n.eml" --out "$work/out.txt" 2>"$work/gm.err" ||
      fail "groupmail --via $via on $n: $(cat "$work/gm.err")"
    expect_plain "$work/out.txt" "$n" "groupmail --via $via on $n"
  done
done
ok "every sender x tls, recipient-key, group-secret, membership-cert"

# ---- the exploder, three lists on the group, alice (v1.5 copies) and bob (OAEP)
xw=$work/exploder
mkdir -p "$xw"
$PY "$SMTPD_PY" --dir "$xw/smtp" --port 0 --port-file "$xw/smtpd.port" 2>>"$xw/smtpd.log" &
smtpd_pid=$!
trap 'kill $smtpd_pid 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 1 100); do [ -s "$xw/smtpd.port" ] && break; sleep 0.1; done
[ -s "$xw/smtpd.port" ] || fail "smtpd.py did not start"
cat > "$xw/exploder.conf" <<CONF
[spool]
path = $xw/spool
[delivery]
relay = smtp://127.0.0.1:$(cat "$xw/smtpd.port")
starttls = no
retry_min = 1
retry_max = 2
[tls]
cert = $certs/dle@example.org.pem
key = $certs/dle@example.org.key
ca = $certs/tca.pem
[log]
file = $xw/exploder.log
CONF
xp() { "$BIN/exploder" -c "$xw/exploder.conf" "$@"; }
for mode in forward group-secret member-certs; do
  xp list create "$mode@lists.example.org" --group-server "$base" --group eng --mode "$mode" >/dev/null ||
    fail "exploder list create $mode"
  xp list add "$mode@lists.example.org" alice@example.org bob@example.org >/dev/null
  xp list show "$mode@lists.example.org" | grep -q '^key-transports: RSA-OAEP,RSA-PKCS1-v1_5 ' ||
    fail "list $mode: discovery not cached: $(xp list show "$mode@lists.example.org")"
done
for n in "${names[@]}"; do
  for mode in forward group-secret member-certs; do
    xp deliver --list "$mode@lists.example.org" --sender sender@example.net < "$msgs/$n.eml" 2>"$work/xp.err" ||
      fail "exploder deliver $n to $mode: $(cat "$work/xp.err")"
  done
done
for _ in $(seq 1 10); do
  rc=0
  xp run --once 2>>"$xw/run.err" || rc=$?
  [ "$rc" = 0 ] && break
  [ "$rc" = 75 ] || fail "exploder run --once: exit $rc: $(tail -3 "$xw/exploder.log")"
  sleep 1
done
[ "$rc" = 0 ] || fail "exploder queue not drained: $(tail -3 "$xw/exploder.log")"
# index: LIST-OWNER RCPT SUBJECT PATH per stored copy
$PY - "$xw/smtp" > "$xw/index" <<'PY'
import os, sys
d = sys.argv[1]
for line in open(os.path.join(d, "envelope.log")):
    mid, frm, rcpt = line.split()
    path = os.path.join(d, "new", mid)
    subj = next((l[9:].strip() for l in open(path) if l.startswith("Subject: ")), "-")
    print(frm.split("@")[0].replace("-owner", ""), rcpt, subj, path)
PY
copy() { awk -v l="$1" -v r="$2" -v s="$3" '$1 == l && $2 == r && $3 == s {print $4}' "$xw/index" | tail -1; }
[ "$(wc -l < "$xw/index")" = $(( ${#names[@]} * 6 )) ] || fail "want 6 copies per message, got $(wc -l < "$xw/index")"

# readers' own tools for member copies: docs/clients.md's block, as written,
# on alice's copy of the NSS-sent message; the NSS database and the gpgsm
# home it leaves read every other CBC copy below
reader=$work/reader
mkdir -p "$reader"
cp "$certs/alice@example.org.pem" "$certs/alice@example.org.key" "$reader/"
cp "$(copy member-certs alice@example.org nss-cmsutil)" "$reader/copy.eml"
. "$SRC/tests/lib/docblocks.sh"
doc_block "$SRC/docs/clients.md" 'Reading a member-certs copy with a stock tool' 1 > "$work/reader.sh" ||
  fail "docs/clients.md lost its block for stock readers"
(cd "$reader" && bash -e "$work/reader.sh") > "$work/reader.out" 2>&1 ||
  fail "docs/clients.md's stock readers, as written, failed: $(grep -v 'charset' "$work/reader.out" | tail -n 15)"
for t in openssl nss gpgsm; do expect_plain "$reader/$t.txt" nss-cmsutil "docs/clients.md's $t reader"; done
nss_read=$reader/nss gpg_read=$reader/gnupg
to_der() { openssl cms -cmsout -in "$1" -outform DER -out "$2"; }

for n in "${names[@]}"; do
  f=$(copy forward alice@example.org "$n")
  as alice decrypt --via tls --in "$f" --out "$work/out.txt" 2>"$work/gm.err" || fail "forward $n: $(cat "$work/gm.err")"
  expect_plain "$work/out.txt" "$n" "forward copy of $n"
  f=$(copy group-secret alice@example.org "$n")
  as alice decrypt --via group-secret --in "$f" --out "$work/out.txt" 2>"$work/gm.err" ||
    fail "group-secret $n: $(cat "$work/gm.err")"
  expect_plain "$work/out.txt" "$n" "group-secret copy of $n"
  for m in alice bob; do
    f=$(copy member-certs "$m@example.org" "$n")
    [ -n "$f" ] || fail "no member-certs copy of $n for $m"
    as "$m" decrypt --in "$f" --out "$work/out.txt" 2>"$work/gm.err" || fail "member copy $n, groupmail ($m): $(cat "$work/gm.err")"
    expect_plain "$work/out.txt" "$n" "member copy of $n, groupmail ($m)"
    openssl cms -decrypt -in "$f" -recip "$certs/$m@example.org.pem" -inkey "$certs/$m@example.org.key" \
      -out "$work/out.txt" 2>"$work/cms.err" || fail "member copy $n, openssl cms ($m): $(cat "$work/cms.err")"
    expect_plain "$work/out.txt" "$n" "member copy of $n, openssl cms ($m)"
  done
  case "$n" in *gcm*) continue ;; esac # neither NSS 3.87 nor gpgsm 2.2.40 reads AuthEnvelopedData
  to_der "$(copy member-certs alice@example.org "$n")" "$work/copy.der"
  cmsutil -D -d "sql:$nss_read" -i "$work/copy.der" -o "$work/out.txt" 2>"$work/nss.err" ||
    fail "member copy $n, NSS cmsutil -D: $(cat "$work/nss.err")"
  expect_plain "$work/out.txt" "$n" "member copy of $n, cmsutil -D"
  GNUPGHOME=$gpg_read gpgsm --batch --pinentry-mode loopback --passphrase-fd 0 \
    --decrypt -o "$work/out.txt" "$work/copy.der" < "$reader/p12-pass" 2>"$work/gpgsm.err" ||
    fail "member copy $n, gpgsm --decrypt: $(cat "$work/gpgsm.err")"
  expect_plain "$work/out.txt" "$n" "member copy of $n, gpgsm --decrypt"
done
# why v1.5 is the default for member copies: the same readers cannot open OAEP
to_der "$(copy member-certs bob@example.org nss-cmsutil)" "$work/bob.der"
cmsutil -D -d "sql:$nss_read" -i "$work/bob.der" -o "$work/out.txt" 2>/dev/null &&
  fail "cmsutil read an OAEP copy: the docs' client table is wrong"
GNUPGHOME=$gpg_read gpgconf --kill all 2>/dev/null || true
ok "exploder forward, group-secret, member-certs: every copy read by groupmail, openssl, cmsutil, gpgsm"

# ---- refusals: a group made with --oaep-only -------------------------------
gs group create strict --address strict@example.org --key rsa:2048 --oaep-only >/dev/null
gs group show strict --cert > "$certs/strict.pem"
gs member add strict dle@example.org --cert "$certs/dle@example.org.pem" --role exploder >/dev/null
gs member add strict alice@example.org --cert "$certs/alice@example.org.pem" >/dev/null
xp list create strict@lists.example.org --group-server "$base" --group strict --mode member-certs >/dev/null
xp list add strict@lists.example.org alice@example.org >/dev/null
body v15-to-strict > "$work/p.txt"
openssl cms -encrypt -aes128 -recip "$certs/strict.pem" -subject v15 -in "$work/p.txt" -out "$work/v15.eml"
rc=0
xp deliver --list strict@lists.example.org --sender sender@example.net < "$work/v15.eml" 2>"$work/xp.err" || rc=$?
[ "$rc" = 77 ] || fail "v1.5 to an --oaep-only group: deliver exit $rc, want 77 ($(cat "$work/xp.err"))"
[ "$(wc -l < "$work/xp.err")" = 1 ] || fail "deliver refusal is not one line: $(cat "$work/xp.err")"
grep -q '^5\.7\.6 strict@lists.example.org: .*PKCS#1 v1.5 key transport is not allowed for this group' "$work/xp.err" ||
  fail "deliver refusal line: $(cat "$work/xp.err")"
grep -q 'level=\|fn=\|[0-9]T[0-9]' "$work/xp.err" && fail "a log line in the DSN text: $(cat "$work/xp.err")"
to_der "$work/v15.eml" "$work/v15.der"
cms ri "$work/v15.der" "$work/v15-ri.der"
printf '{"recipient_info":"%s","content_algorithm":"aes-128-cbc"}' "$(b64 "$work/v15-ri.der")" > "$work/req.json"
expect_status 400 algorithm_not_allowed "the unwrap endpoint refuses the same message" -- \
  c alice --data-binary @"$work/req.json" "$base/v1/groups/strict/unwrap"
reason=$(json_get "$work/body" error message)
grep -qF "$reason" "$work/xp.err" || fail "different reasons: server '$reason', exploder '$(cat "$work/xp.err")'"
openssl cms -encrypt -aes128 -recip "$certs/strict.pem" -keyopt rsa_padding_mode:oaep -subject oaep \
  -in "$work/p.txt" -out "$work/oaep.eml"
xp deliver --list strict@lists.example.org < "$work/oaep.eml" 2>"$work/xp.err" ||
  fail "OAEP to an --oaep-only group refused: $(cat "$work/xp.err")"
ok "an --oaep-only group refuses v1.5 at deliver (77, 5.7.6) and at unwrap (400), with one reason"
echo "interop-clients: ok"
