#!/usr/bin/env bash
# Which token the [hsm] token URI names, and what an admin command says
# when it names none, or more than one. Two SoftHSM tokens with the same
# label (two identical cards, pkcs11-config/README.md): a URI matching
# both is refused (exit 4, one line naming both serials) before anything
# is made, `check` shows it, and `serial=` picks one; a URI matching the
# one initialised token and SoftHSM's free slot takes the initialised one.
# Then a token that fails mid-command (tests/p11fault in front of
# SoftHSM): the error is one complete line and nothing is recorded; a
# new key the failure could not destroy is named, and so is the way to
# delete it when the next try finds its label taken.
set -euo pipefail
. "$(dirname "$0")/provision-lib.sh"
: "${GS_P11FAULT_MODULE:?}"
[ -f "$GS_P11FAULT_MODULE" ] || fail "no p11fault module at $GS_P11FAULT_MODULE"

serials() { pkcs11-tool --module "$SOFTHSM2_MODULE" -L 2>/dev/null | sed -n 's/^ *serial num *: *\([^ ]*\) *$/\1/p'; }

# --- SoftHSM without its configuration (a service user without
# SOFTHSM2_CONF): C_Initialize's CKR_GENERAL_ERROR names SoftHSM's
# configuration and token directory, not a daemon it does not have
SOFTHSM2_CONF="$T/none/softhsm2.conf" expect_rc 1 "$G" -c "$CONF" check
grep -q "^token  *PROBLEM: .*(C_Initialize: CKR_GENERAL_ERROR: SoftHSM could not read its configuration or open its token directory: SOFTHSM2_CONF ($T/none/softhsm2.conf) must name a softhsm2.conf this user can read" \
  "$T/out" || { cat "$T/out"; fail "check: SoftHSM without its configuration"; }
grep -q pkcsslotd "$T/out" && fail "SoftHSM's C_Initialize failure names opencryptoki's daemon: $(grep '^token' "$T/out")"

# --- a token provisioned with pkcs11-tool as operations.md step 2 says,
# but only its first command run (--init-token sets the SO PIN only; the
# user PIN is --init-pin's): the login's CKR_USER_PIN_NOT_INITIALIZED
# says that the token has no user PIN yet and who sets it, not a bare
# "not logged in"; no refusal is recorded (no PIN was checked)
mkdir -p "$T/nopin/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\n' "$T/nopin/tokens" > "$T/nopin/softhsm2.conf"
GS_SO_PIN=12345678 SOFTHSM2_CONF=$T/nopin/softhsm2.conf pkcs11-tool --module "$SOFTHSM2_MODULE" --init-token \
  --slot-index 0 --label groupsrv --so-pin env:GS_SO_PIN > "$T/nopin/init.out" 2>&1 ||
  fail "pkcs11-tool --init-token: $(cat "$T/nopin/init.out")"
for cmd in "ca init --key rsa:2048" "check"; do
  # shellcheck disable=SC2086
  SOFTHSM2_CONF=$T/nopin/softhsm2.conf expect_rc "$([ "$cmd" = check ] && echo 1 || echo 4)" "$G" -c "$CONF" $cmd
  want="opening token pkcs11:token=groupsrv: not logged in to the token (C_Login: CKR_USER_PIN_NOT_INITIALIZED: the token has no user PIN yet .*: the security officer sets it (pkcs11-tool --login --login-type so --init-pin"
  if [ "$cmd" = check ]; then
    grep -q "^token  *PROBLEM: $want" "$T/out" || { cat "$T/out"; fail "check on a token without a user PIN"; }
  else
    expect_err "^groupsrv: $want"
  fi
done
[ ! -e "$T/db" ] || fail "a token without a user PIN left a database"

# --- a token URI that cannot name a token, or carries a PIN, or names
# another module than [hsm] module (RFC 7512's module-path=, module-name=:
# its token would be looked for on the wrong module): a configuration
# error (5), one line, before anything is made
P11DIR=$(pkg-config --variable=p11_module_path p11-kit-1 2>/dev/null || echo /usr/lib/x86_64-linux-gnu/pkcs11)
[ -f "$P11DIR/p11-kit-client.so" ] || fail "no p11-kit-client.so in $P11DIR (p11-kit-modules; run scripts/setup)"
for bad in 'pkcs11:token=%zz|URI encoding invalid' \
           'pkcs11:token=groupsrv?pin-value=1234|it carries a PIN (pin-value): the PIN comes from \[hsm\] pin_source only' \
           "pkcs11:token=groupsrv?pin-source=$T/tok/user-pin|it carries a PIN (pin-source)" \
           'pkcs11:token=groupsrv;object=gs%3Aca;type=private|it has attributes that do not name a token: object, type (' \
           'pkcs11:token=groupsrv;slot-id=1|it has attributes that do not name a token: slot-id (.*a slot.s id can change: `pkcs11-tool -L` lists each token.s label and serial)$' \
           'pkcs11:tokn=groupsrv|it has attributes that do not name a token: tokn (' \
           "pkcs11:token=groupsrv?module-path=$P11DIR/p11-kit-client.so|the token URI's module-path=$P11DIR/p11-kit-client.so names another module than the one loaded ($SOFTHSM2_MODULE, the configured module): drop module-path from the URI, or configure that module\$" \
           "pkcs11:token=groupsrv?module-name=opensc-pkcs11|the token URI's module-name=opensc-pkcs11 names another module than the one loaded ($SOFTHSM2_MODULE, named softhsm2, the configured module)" \
           'pkcs11:token=group srv|it has a space or control byte, which a PKCS#11 URI must percent-encode (p11-kit would drop it and look for another token): pkcs11:token=group%20srv$'; do
  sed "s|^token = .*|token = ${bad%%|*}|" "$CONF" > "$T/uri.conf"
  for cmd in "ca init --key rsa:2048" "check"; do
    # shellcheck disable=SC2086
    expect_rc "$([ "$cmd" = check ] && echo 1 || echo 5)" "$G" -c "$T/uri.conf" $cmd
    if [ "$cmd" = check ]; then
      grep -q "^token  *PROBLEM: .*uri.conf: 'token' in \[hsm\]: ${bad#*|}" "$T/out" || { cat "$T/out"; fail "check: ${bad%%|*}"; }
    else
      expect_err "^groupsrv: .*uri.conf: 'token' in \[hsm\]: ${bad#*|}"
    fi
  done
done
[ ! -e "$T/db" ] || fail "a refused token URI left a database"

# (p11-kit drops the space of "group srv": it named the token groupsrv)
# A PIN in a URI that also has a space: refused for the PIN, never shown
sed "s|^token = .*|token = pkcs11:token=group srv?pin-value=918273|" "$CONF" > "$T/uri.conf"
expect_rc 1 "$G" -c "$T/uri.conf" check
grep -q "^token  *PROBLEM: .*it carries a PIN (pin-value)" "$T/out" || { cat "$T/out"; fail "check: a PIN and a space"; }
! grep -q 918273 "$T/out" "$T/err" || fail "the token URI's PIN was shown: $(cat "$T/out")"
# ... and one after a mistyped separator, which p11-kit reads as part of
# the label (no token "groupsrv:pin-value=918273"): refused, never shown
for t in 'pkcs11:token=groupsrv:pin-value=918273' 'pkcs11:token=groupsrv\&pin-value=918273' \
         'pkcs11:token=groupsrv?x=1:pin-value=918273'; do
  sed "s|^token = .*|token = $t|" "$CONF" > "$T/uri.conf"
  expect_rc 1 "$G" -c "$T/uri.conf" check
  grep -q "^token  *PROBLEM: .*it carries a PIN (pin-value)" "$T/out" || { cat "$T/out"; fail "check: $t"; }
  ! grep -q 918273 "$T/out" "$T/err" || fail "the token URI's PIN was shown ($t): $(cat "$T/out" "$T/err")"
done

# --- a PIN source that cannot be used: exit 4, one line naming it (never
# the PIN), nothing made
cp "$T/tok/user-pin" "$T/pin-0640"; chmod 0640 "$T/pin-0640"
: > "$T/pin-empty"; chmod 0600 "$T/pin-empty"
# a link that loops (or any open the system refuses) says the system's
# reason, not "I/O error"; a device is none of a PIN's files
ln -s "$T/pin-loop" "$T/pin-loop"
for src in "$T/pin-0640|file permissions too open for a secret" "$T/pin-missing|not found" \
           "$T/pin-empty|empty)" "env:GS_NO_SUCH_PIN|not found" \
           "$T/pin-loop|Too many levels of symbolic links" "/dev/null|not a regular file or named pipe"; do
  sed "s|^pin_source = .*|pin_source = ${src%%|*}|" "$CONF" > "$T/pin.conf"
  expect_rc 4 "$G" -c "$T/pin.conf" ca init --key rsa:2048
  expect_err "PIN source unreadable, empty or too open (pin source ${src%%|*}: ${src#*|}"
done
# the PIN itself where its source belongs (a relative name without '/'):
# refused without echoing it
sed "s|^pin_source = .*|pin_source = 918273645|" "$CONF" > "$T/pin.conf"
expect_rc 4 "$G" -c "$T/pin.conf" ca init --key rsa:2048
expect_err "PIN source unreadable, empty or too open (pin source (not shown"
! grep -q 918273645 "$T/err" || fail "the PIN written as pin_source was echoed: $(cat "$T/err")"
[ ! -e "$T/db" ] || fail "a refused PIN source left a database"

# --- one initialised token and SoftHSM's free slot: a URI matching both
# (by manufacturer) names the initialised one
sed "s|^token = .*|token = pkcs11:manufacturer=SoftHSM%20project;model=SoftHSM%20v2|" "$CONF" > "$T/model.conf"
expect_rc 0 "$G" -c "$T/model.conf" ca init --key rsa:2048
one=$(serials)
# module-path= and module-name= that name the loaded module are taken:
# by a link to it in a directory with a space (%20), by the directory it
# is in, and by RFC 7512's name for it
mkdir -p "$T/My HSM"
ln -s "$SOFTHSM2_MODULE" "$T/My HSM/x.so"
for q in "module-path=$T/My%20HSM/x.so" "module-path=$(dirname "$(readlink -f "$SOFTHSM2_MODULE")")" module-name=softhsm2; do
  sed "s|^token = .*|token = pkcs11:manufacturer=SoftHSM%20project;model=SoftHSM%20v2?$q|" "$CONF" > "$T/mpath.conf"
  expect_rc 0 "$G" -c "$T/mpath.conf" check
done
# ...and as URIs are written for other consumers (go-pkcs11uri looks a
# name up without regard to case, with or without lib and .so): with
# [hsm] module a link, as Debian's /usr/lib/softhsm/libsofthsm2.so, the
# link's own directory names it too, as does p11-kit's module: line
# form (a file name without a directory); an empty value names none
mkdir -p "$T/lib"
ln -s "$(readlink -f "$SOFTHSM2_MODULE")" "$T/lib/libsofthsm2.so"
for q in module-name=libsofthsm2 module-name=libsofthsm2.so module-name=SoftHSM2 module-name=softhsm2.so \
         "module-path=$T/lib" "module-path=$T/lib/" "module-path=$T/lib\&module-name=softhsm2" \
         module-path=libsofthsm2.so module-name= ; do
  sed -e "s|^token = .*|token = pkcs11:manufacturer=SoftHSM%20project;model=SoftHSM%20v2?$q|" \
      -e "s|^module = .*|module = $T/lib/libsofthsm2.so|" "$CONF" > "$T/mpath.conf"
  expect_rc 0 "$G" -c "$T/mpath.conf" check
done
# a URI written for p11-kit-proxy.so (tools that default to it) names
# the same token when the proxy loads the configured module (p11-kit
# configures SoftHSM's: its package's softhsm2.module); the proxy does
# not load one p11-kit does not configure (p11fault): refused
PROXY=$(pkg-config --variable=proxy_module p11-kit-1 2>/dev/null || echo /usr/lib/x86_64-linux-gnu/p11-kit-proxy.so)
if p11-kit list-modules 2>/dev/null | grep -q "^softhsm2: "; then
  for q in "module-path=$PROXY" module-name=p11-kit-proxy; do
    sed -e "s|^token = .*|token = pkcs11:manufacturer=SoftHSM%20project;model=SoftHSM%20v2?$q|" \
        -e "s|^module = .*|module = $T/lib/libsofthsm2.so|" "$CONF" > "$T/mpath.conf"
    expect_rc 0 "$G" -c "$T/mpath.conf" check
  done
else
  echo "SKIP: p11-kit configures no softhsm2 module: the proxy case is not tried"
fi
sed -e "s|^token = .*|token = pkcs11:token=groupsrv?module-path=$PROXY|" \
    -e "s|^module = .*|module = $GS_P11FAULT_MODULE|" "$CONF" > "$T/mpath.conf"
expect_rc 1 "$G" -c "$T/mpath.conf" check
grep -q "^token  *PROBLEM: .*the token URI's module-path=$PROXY names p11-kit-proxy.so, which does not reach the configured module ($GS_P11FAULT_MODULE: not configured in p11-kit, or disabled in the proxy)" \
  "$T/out" || { cat "$T/out"; fail "check: p11-kit-proxy.so named for a module p11-kit does not configure"; }
# a name or directory of another module is still refused
for q in module-name=softhsm module-name=opensc-pkcs11 module-name=softhsm2x "module-path=$T" module-path=opensc-pkcs11.so; do
  sed -e "s|^token = .*|token = pkcs11:manufacturer=SoftHSM%20project;model=SoftHSM%20v2?$q|" \
      -e "s|^module = .*|module = $T/lib/libsofthsm2.so|" "$CONF" > "$T/mpath.conf"
  expect_rc 1 "$G" -c "$T/mpath.conf" check
  grep -q "^token  *PROBLEM: .*names another module than the one loaded" "$T/out" ||
    { cat "$T/out"; fail "check: $q was not refused"; }
done
# a raw space there is dropped by p11-kit, as anywhere in a URI: that
# path names no file, and the refusal says how to write the space
sed "s|^token = .*|token = pkcs11:manufacturer=SoftHSM%20project;model=SoftHSM%20v2?module-path=$T/My HSM/x.so|" \
  "$CONF" > "$T/mpath.conf"
expect_rc 1 "$G" -c "$T/mpath.conf" check
grep -q "^token  *PROBLEM: .*module-path=$T/MyHSM/x.so names another module .*(no such file; a space in the path is written %20)\$" \
  "$T/out" || { cat "$T/out"; fail "check: a raw space in module-path"; }
# ...and a key URI naming another module is refused, nothing recorded
expect_rc 1 "$G" -c "$CONF" group create eng --address eng@example.org \
  --use-key "pkcs11:object=gs%3Aca;type=private?module-path=$P11DIR/p11-kit-client.so"
expect_err "the key URI's module-path=$P11DIR/p11-kit-client.so names another module than the one loaded"
[ -z "$("$G" -c "$CONF" group list)" ] || fail "a group was recorded from a key URI of another module"
# a [ca] key_label with a space and a quote: the log record's label= is
# one quoted field (it was written bare, the record's fields unparseable)
sed -e "/^\[db\]/,/^\[/s|^path = .*|path = $T/dbl/groupsrv.db|" -e 's|^group_cert_days = 30$|&\nkey_label = ca key "q"|' \
  "$CONF" > "$T/label.conf"
expect_rc 0 "$G" -c "$T/label.conf" -v ca init --key rsa:2048
grep -q 'msg="CA initialised" label="ca key \\"q\\"" adopted=no ' "$T/err" || { cat "$T/err"; fail "the CA's label is not one quoted log field"; }
[ "$(printf '%s\n' "$one" | grep -c .)" = 1 ] || fail "expected one initialised token, got: $one"

# --- a second token with the same label, in the free slot
GS_SO_PIN=$(cat "$T/tok/so-pin") pkcs11-tool --module "$SOFTHSM2_MODULE" --init-token --slot-index 1 \
  --label groupsrv --so-pin env:GS_SO_PIN >/dev/null 2>&1 || fail "pkcs11-tool --init-token (second token)"
both=$(serials)
other=$(printf '%s\n' "$both" | grep -v -x -F "$one")
[ -n "$other" ] && [ "$other" != "$one" ] || fail "no second token: $both"
# the slot id of token $one (pkcs11-tool picks tokens by slot, not serial)
slot=$(pkcs11-tool --module "$SOFTHSM2_MODULE" -L 2>/dev/null |
  awk -v s="$one" '/^Slot /{id=$3; gsub(/[():]/, "", id)} $1=="serial" && $4==s {print id}')
[ -n "$slot" ] || fail "no slot for token $one"
p11() { GS_PIN=$(cat "$T/tok/user-pin") pkcs11-tool --module "$SOFTHSM2_MODULE" --slot "$slot" \
  --login --pin env:GS_PIN "$@"; }
tok0=$(p11 --list-objects 2>/dev/null | sha256sum)
db0=$(db_sum)

# token=groupsrv now matches both: refused, whatever the command, with
# both serials named; nothing made on either token, nothing recorded
for cmd in "group create eng --address eng@example.org --key rsa:2048" "tls init --dns gs.example.org --out $T/tls.pem"; do
  # shellcheck disable=SC2086
  expect_rc 4 "$G" -c "$CONF" $cmd
  expect_err "opening token pkcs11:token=groupsrv: no single token matches the URI (it matches 2 tokens"
  grep -q "serial=$one" "$T/err" && grep -q "serial=$other" "$T/err" || fail "the serials are not named: $(cat "$T/err")"
  grep -q "add serial= to name one)\$" "$T/err" || fail "no advice: $(cat "$T/err")"
done
expect_rc 4 "$G" -c "$T/model.conf" group create eng --address eng@example.org --key rsa:2048
expect_err "it matches 2 tokens"
sed "/^\[db\]/,/^\[/s|^path = .*|path = $T/db2/groupsrv.db|" "$CONF" > "$T/new.conf"
expect_rc 4 "$G" -c "$T/new.conf" ca init --key rsa:2048
expect_err "it matches 2 tokens"
[ ! -e "$T/db2" ] || fail "ca init on an ambiguous token URI created $T/db2"
[ "$(db_sum)" = "$db0" ] || fail "the database changed"
[ "$(p11 --list-objects 2>/dev/null | sha256sum)" = "$tok0" ] || fail "the token changed"
expect_rc 1 "$G" -c "$CONF" check
grep -q "^token  *PROBLEM: .*it matches 2 tokens" "$T/out" || { cat "$T/out"; fail "check does not show the ambiguous URI"; }

# serial= names one: the CA made above is there
sed "s|^token = .*|token = pkcs11:token=groupsrv;serial=$one|" "$CONF" > "$T/serial.conf"
expect_rc 0 "$G" -c "$T/serial.conf" group create eng --address eng@example.org --key rsa:2048
expect_rc 0 "$G" -c "$T/serial.conf" check
p11 --list-objects 2>/dev/null | grep -q "label: *gs:group:eng:v1" || fail "the group key is not on token $one"
db1=$(db_sum)
for cmd in "group rotate eng" "secret rotate eng" "member add eng a@example.org --issue-cert --out $T"; do
  # shellcheck disable=SC2086
  expect_rc 4 "$G" -c "$CONF" $cmd
  expect_err "it matches 2 tokens"
done
[ "$(db_sum)" = "$db1" ] || fail "the database changed"
[ ! -e "$T/a@example.org.pem" ] || fail "member add on an ambiguous token URI wrote a certificate"

# the token URI as GnuTLS's p11tool prints it (pkcs11-config/README.md,
# "Finding the URI": ready to paste) names the same token
url=$(p11tool --provider "$SOFTHSM2_MODULE" --list-tokens 2>/dev/null | sed -n "s/^[[:space:]]*URL: \(pkcs11:.*serial=$one;.*\)\$/\1/p")
case "$url" in pkcs11:*token=groupsrv*) ;; *) fail "p11tool --list-tokens shows no URI for token $one: '$url'" ;; esac
sed "s|^token = .*|token = $url|" "$CONF" > "$T/p11tool.conf"
expect_rc 0 "$G" -c "$T/p11tool.conf" check
grep -q "^token  *OK  *pkcs11:.*serial $one)" "$T/out" || { cat "$T/out"; fail "check on p11tool's URI"; }

# --- the token fails while a command runs: the CA's signature for the
# group certificate (p11fault answers C_Sign). One complete line; no
# group recorded; the new keys destroyed again.
sed -e "s|^module = .*|module = $GS_P11FAULT_MODULE|" "$T/serial.conf" > "$T/fault.conf"
export GS_P11FAULT_CONTROL="$T/p11fault.ctl"
db1=$(db_sum)
tok1=$(p11 --list-objects 2>/dev/null | sha256sum)
for rv in CKR_DEVICE_ERROR CKR_DEVICE_REMOVED; do
  printf 'C_Sign %s\n' "$rv" > "$T/p11fault.ctl.tmp" && mv -f "$T/p11fault.ctl.tmp" "$GS_P11FAULT_CONTROL"
  case $rv in CKR_DEVICE_ERROR) want=1 ;; *) want=4 ;; esac
  expect_rc "$want" "$G" -c "$T/fault.conf" group create ops --address ops@example.org --key rsa:2048
  expect_err "^groupsrv: signing with the CA key: .* (C_Sign: $rv)\$"
  [ "$(db_sum)" = "$db1" ] || fail "the database changed ($rv)"
  [ "$(p11 --list-objects 2>/dev/null | sha256sum)" = "$tok1" ] || fail "keys left on the token ($rv)"
done
# The token goes away before the new key could be destroyed again: the
# error names what is left; the next try says the label is taken, by an
# object the database does not record, and how to delete it; deleted so,
# the group is made.
printf 'C_Sign CKR_DEVICE_REMOVED\nC_DestroyObject CKR_DEVICE_REMOVED\n' > "$T/p11fault.ctl.tmp" &&
  mv -f "$T/p11fault.ctl.tmp" "$GS_P11FAULT_CONTROL"
expect_rc 4 "$G" -c "$T/fault.conf" group create ops --address ops@example.org --key rsa:2048
expect_err "(C_Sign: CKR_DEVICE_REMOVED); left on the token, as the database does not record them: gs:group:ops:v1 (delete"
: > "$GS_P11FAULT_CONTROL"
[ "$(db_sum)" = "$db1" ] || fail "the database changed (key left on the token)"
expect_rc 3 "$G" -c "$T/serial.conf" group create ops --address ops@example.org --key rsa:2048
expect_err "token already has an object labelled gs:group:ops:v1, which the database does not record (left by a failed run? delete it: pkcs11-tool --login --delete-object --label gs:group:ops:v1 --type privkey, and pubkey or secrkey)"
for type in privkey pubkey; do
  p11 --delete-object --label gs:group:ops:v1 --type "$type" >/dev/null 2>&1 || fail "pkcs11-tool --delete-object --type $type"
done
# a token that reports its user PIN at the last try, or locked (what
# token_pin_opencryptoki shows on a real counter): no login is tried
for flag in CKF_USER_PIN_FINAL_TRY CKF_USER_PIN_LOCKED; do
  printf 'tokenflags %s\n' "$flag" > "$T/p11fault.ctl.tmp" && mv -f "$T/p11fault.ctl.tmp" "$GS_P11FAULT_CONTROL"
  GS_P11FAULT_COUNTS=$T/counts expect_rc 4 "$G" -c "$T/fault.conf" group rotate eng
  expect_err "PIN locked or expired (the token \(allows one more user PIN try\|reports the user PIN locked\) ($flag)"
  grep -qx "C_Login 0" "$T/counts" || fail "$flag: $(grep '^C_Login ' "$T/counts")"
done
# no token at all (every slot empty): exit 4, saying so
printf '* CKR_DEVICE_REMOVED\n' > "$T/p11fault.ctl.tmp" && mv -f "$T/p11fault.ctl.tmp" "$GS_P11FAULT_CONTROL"
expect_rc 4 "$G" -c "$T/fault.conf" group rotate eng
expect_err "^groupsrv: opening token pkcs11:token=groupsrv;serial=$one: no single token matches the URI (no token present in any slot)\$"
unset GS_P11FAULT_CONTROL
expect_rc 0 "$G" -c "$T/serial.conf" group create ops --address ops@example.org --key rsa:2048
echo "provision-select: OK"
