# exploder-rewrap-lib.sh: a real `groupsrv serve` on a throw-away SoftHSM
# token (tests/integration/server-lib.sh: group "eng" <eng@example.org>,
# members alice bob dave erin fuzz mallory rl, exploder identity dle with
# role exploder), an smtpd.py relay, and an exploder list eng@example.org in
# mode $1 created WITHOUT --group-cert (so the certificate is fetched from
# GET /v1/groups/eng/certificate). Sourced by exploder-group-secret.sh and
# exploder-member-certs.sh.
mode=$1
BIN=$(dirname "$EXPLODER")
SRC=$GS_SRC
[ -x "$BIN/groupsrv" ] || { echo "FAIL: $BIN/groupsrv not built" >&2; exit 1; }
. "$SRC/tests/integration/server-lib.sh"
. "$SRC/tests/integration/exploder-lib.sh"
start_server
xp_setup "$mode"

xp_smtpd_start "$W/smtp"
xp_conf "smtp://127.0.0.1:$SMTPD_PORT" "starttls = no" "batch_size = 2" \
  "[tls]" "cert = $certs/dle@example.org.pem" "key = $certs/dle@example.org.key" "ca = $certs/tca.pem"
L=eng@example.org
xp list create $L --group-server "$base" --group eng --mode "$mode" >"$W/create.out" 2>&1 ||
  fail "list create (fetching the group certificate): $(cat "$W/create.out")"
xp list show $L | grep -q "^group-cert: .*" || fail "no group certificate stored"
xp list add $L alice@example.org bob@example.org erin@example.org >/dev/null

# the DER form of a mail file, and its encrypted content (IV + ciphertext)
to_der() { openssl cms -cmsout -in "$1" -outform DER -out "$2"; }
content_of() { to_der "$1" "$W/c.der" && cms content "$W/c.der" "$2"; }
# recipientInfo kinds of a mail file, e.g. "kekri" or "ktri ktri ktri"
ri_kinds() { openssl cms -cmsout -print -in "$1" | sed -n 's/^ *d\.\(ktri\|kekri\|kari\):.*/\1/p' | tr '\n' ' '; }
