#!/usr/bin/env bash
# ceremony-member.sh BIN SRC: option C end to end. Group eng allows
# local-key; alice makes a transport key on her OWN SoftHSM token with
# groupmail, the group's administrator exports the group key to it (user
# PIN and SO PIN), alice imports it (checked against the group CA) and
# decrypts a message sent to the group with no server running at all.
# Refusals on her side (another CA, a changed file, another transport
# key, a group that does not allow local-key) leave her token as it was.
# Then alice is removed: `member remove` rotates the group key and says so, and the next message
# (to the new version) does not decrypt with her old copy. Both sides
# record the ceremony, refusals included: the server's audit log, alice's
# ceremony.jsonl.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/ceremony-lib.sh"

mkserver groups
mktoken alice "alice's card"   # a label with a space and a quote, as cards have

# ---- the group server (never started: option C needs none) ----
gs_groups ca init --key rsa:2048 >/dev/null
expect 1 "local-key without --replicable is refused" -- gs_groups group create bad --address bad@example.org \
  --key rsa:2048 --methods tls,local-key
expect_msg "needs --replicable"
gs_groups ca show > "$work/ca.pem"
gs_groups group create eng --address eng@example.org --key rsa:2048 --replicable \
  --methods tls,recipient-key,local-key >/dev/null
for m in alice bob; do gs_groups member add eng "$m@example.org" --issue-cert --out "$work" >/dev/null; done
gs_groups group show eng --cert > "$work/eng-v1.pem"

# A member's certificate PEM marked encrypted (Proc-Type: 4,ENCRYPTED),
# really encrypted under "secret" (OpenSSL's legacy PEM encryption: the
# AES-128 key is MD5 of the pass phrase and the IV's first 8 bytes), given
# to `member add --cert` with no terminal and "secret" on standard input:
# OpenSSL's default callback would read it there and add the member. It
# is refused without asking.
iv=00112233445566778899AABBCCDDEEFF
pkey=$({ printf secret; printf '%s' "${iv:0:16}" | xxd -r -p; } | openssl dgst -md5 -r | cut -c1-32)
{ printf -- '-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,%s\n\n' "$iv"
  openssl x509 -in "$work/bob@example.org.pem" -outform DER | openssl enc -aes-128-cbc -K "$pkey" -iv "$iv" | base64 -w 64
  printf -- '-----END CERTIFICATE-----\n'; } > "$work/bob-enc.pem"
rc=0
printf 'secret\n' | SOFTHSM2_CONF=$work/tok-groups/softhsm2.conf timeout 20 setsid -w "$BIN/groupsrv" -c "$work/groups.conf" \
  member add eng carol@example.org --cert "$work/bob-enc.pem" > "$work/out" 2>&1 || rc=$?
[ "$rc" != 0 ] && ! grep -qi 'pass phrase' "$work/out" && ! gs_groups member list eng | grep -q carol@ ||
  fail "member add --cert, a certificate PEM marked encrypted, no terminal: exit $rc: $(head -c 300 "$work/out")"
ok "member add --cert with a certificate PEM marked encrypted asks no pass phrase"
gs_groups group show eng | grep -q "methods: *tls,recipient-key,local-key" || fail "group show lacks local-key"

# ---- alice's groupmail, her own token ----
export HOME=$work/home XDG_CONFIG_HOME= XDG_DATA_HOME=
unset GROUPMAIL_CONFIG GROUPMAIL_SERVER GROUPMAIL_GROUP GROUPMAIL_CERT GROUPMAIL_KEY GROUPMAIL_CACERT || true
mkdir -p "$HOME/.config/groupmail"
cat > "$HOME/.config/groupmail/config" <<CONF
[server]
group_ca = $work/ca.pem
[hsm]
module = $module
pin_source = $work/tok-alice/user-pin
CONF
gm() { SOFTHSM2_CONF=$work/tok-alice/softhsm2.conf "$BIN/groupmail" "$@"; }
tok="pkcs11:token=alice%27s%20card"

expect 0 "keys transport-key on alice's token" -- gm keys transport-key --token "$tok" --out "$work/alice-t.pem"
fp=$(fingerprint "$work/alice-t.pem")
grep -q "still on the token" "$work/err" && fail "a first transport key warned of one left: $(cat "$work/err")"
first=$(sed -n 's/^transport key \(gs:transport:[0-9a-f]*\) made on token.*/\1/p' "$work/out" "$work/err" | head -1)
[ -n "$first" ] || fail "keys transport-key named no label: $(cat "$work/out" "$work/err")"
grep -q "sha256 $(echo "$fp" | sed 's/..../& /g; s/ $//')" "$work/out" || fail "no spoken fingerprint: $(cat "$work/out")"
# --out /dev/stdout (here a link to /proc/self/fd/1, standard output a
# file) is written as every command's --out is (groupmail(1)): the link
# used to be renamed over, a regular file in its place (as root, in place
# of /dev/stdout itself) and nothing on standard output.
ln -s /proc/self/fd/1 "$work/stdout"
expect 0 "keys transport-key --out /dev/stdout" -- gm keys transport-key --token "$tok" --out "$work/stdout"
[ -L "$work/stdout" ] || fail "keys transport-key --out /dev/stdout replaced the link"
grep -q "BEGIN PUBLIC KEY" "$work/out" || fail "keys transport-key --out /dev/stdout: no key on standard output"
# alice's first transport key is still there (its import not made yet,
# as after a ceremony that stopped half-way): a member has no `check`, so
# the next transport-key says so, with how to delete it
expect_msg "warning: transport key $first from an earlier ceremony is still on the token"
expect_msg "pkcs11-tool --login --delete-object --type privkey --label $first, and --type pubkey"
ok "a second keys transport-key names the first, still on the token, and how to delete it"
# ... and only the key: its lines go to standard error, as groupsrv's
fingerprint "$work/out" > /dev/null && ! grep -q '^sha256 ' "$work/out" && grep -q '^sha256 ' "$work/err" ||
  fail "keys transport-key --out /dev/stdout: more than the key on standard output: $(cat "$work/out")"
# --out a named pipe nobody reads, the command stopped (kill, or Ctrl-C) while it
# waits for the reader: no new key on alice's token. The key used to be
# made first, then the open waited.
mkfifo "$work/tkpipe"
before=$(snapshot alice)
env "SOFTHSM2_CONF=$work/tok-alice/softhsm2.conf" "$BIN/groupmail" keys transport-key --token "$tok" \
  --out "$work/tkpipe" > /dev/null 2>&1 &
tk_pid=$! waiting=
for _ in $(seq 300); do # until groupmail sleeps in the pipe's open
  case "$(cat "/proc/$tk_pid/wchan" 2>/dev/null)" in wait_for_partner | fifo_open) waiting=1; break ;; esac
  sleep 0.1
done
[ -n "$waiting" ] || fail "keys transport-key --out a named pipe: never waited in its open"
kill -TERM "$tk_pid"
wait "$tk_pid" && fail "keys transport-key --out a named pipe: not stopped by SIGTERM"
[ "$(snapshot alice)" = "$before" ] || fail "keys transport-key stopped as it waited for its pipe's reader: a key left on the token"
ok "keys transport-key --out a named pipe: stopped as it waits for the reader, nothing made"
expect 0 "group export eng to alice's transport key" -- \
  gs_groups group export eng --to "$work/alice-t.pem" --out "$work/eng-alice.gsk"
audit_has "$work/groups/audit.jsonl" group-export ok "$fp" '"key_versions":\[1\]'

# ---- refusals on alice's side: her token unchanged ----
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=other CA" -keyout "$work/o.key" \
  -out "$work/other-ca.pem" 2>/dev/null
refused alice 5 "import checked against another CA" -- \
  gm keys import-group-key --in "$work/eng-alice.gsk" --token "$tok" --group-ca "$work/other-ca.pem"
cp "$work/eng-alice.gsk" "$work/bad.gsk"
printf 'X' | dd of="$work/bad.gsk" bs=1 seek=$(($(stat -c %s "$work/bad.gsk") / 2)) conv=notrunc status=none
refused alice 5 "import of a changed file" -- \
  gm keys import-group-key --in "$work/bad.gsk" --token "$tok" --keep-transport-key
gs_groups token transport-key --out "$work/server-t.pem" >/dev/null
gs_groups group export eng --to "$work/server-t.pem" --out "$work/not-alice.gsk" >/dev/null
refused alice 1 "import of a file made for another transport key" -- \
  gm keys import-group-key --in "$work/not-alice.gsk" --token "$tok"
expect_msg "transport key"
# A replicable group without local-key (a clone's, say) does not rotate
# its key on removal: a member's copy of it would outlive the removal.
gs_groups group create ops --address ops@example.org --key rsa:2048 --replicable --methods tls >/dev/null
gs_groups group export ops --to "$work/alice-t.pem" --out "$work/ops-alice.gsk" >/dev/null
refused alice 1 "import of a key of a group that does not allow local-key" -- \
  gm keys import-group-key --in "$work/ops-alice.gsk" --token "$tok"
expect_msg "group ops does not allow local-key"

# alice's token goes away at the decryption test (tests/p11fault in front
# of her SoftHSM): not a refusal of the file; her token unchanged
sed "s#^module = .*#module = $GS_P11FAULT_MODULE#" "$HOME/.config/groupmail/config" > "$work/gm-fault.conf"
printf 'C_Decrypt CKR_DEVICE_REMOVED\n' > "$work/p11fault.ctl"
GROUPMAIL_CONFIG=$work/gm-fault.conf GS_P11FAULT_CONTROL=$work/p11fault.ctl GS_P11FAULT_TARGET=$module \
  refused alice 1 "import while alice's token goes away" -- gm keys import-group-key --in "$work/eng-alice.gsk" --token "$tok"
expect_msg "^groupmail: .*eng-alice.gsk: the decryption test of key gs:group:eng:v1 could not run: token removed or not present"
grep -q "refused" "$work/err" && fail "a token gone is not a refusal of the file: $(cat "$work/err")"

# ---- a key label that a URI must encode (the file names it; the sending
# side's CA signed it, here by pkcs11-tool with the CA key on its token):
# the --group-key line import prints names that key, and pastes as it is
# into the shell's single quotes ----
read -r o h l < <(openssl asn1parse -inform DER -in "$work/eng-alice.gsk" |
  sed -n 's/^ *\([0-9]*\):d=1 *hl= *\([0-9]*\) *l= *\([0-9]*\) *prim: OCTET STRING.*/\1 \2 \3/p' | head -n 1)
dd if="$work/eng-alice.gsk" of="$work/manifest.json" bs=1 skip=$((o + h)) count="$l" status=none
odd="gs:group:eng:v1;type=secret-key x'y%41"
python3 - "$work/manifest.json" "$odd" <<'PY'
import sys
p, odd = sys.argv[1], sys.argv[2]
t = open(p).read()
assert t.count('"label": "gs:group:eng:v1"') == 1, t
open(p, "w").write(t.replace('"label": "gs:group:eng:v1"', '"label": "%s"' % odd))
PY
# by CKA_ID: pkcs11-tool --sign takes the first private key whatever --label says
objects groups > "$work/groups.objs"
GS_PIN=$(cat "$work/tok-groups/user-pin") SOFTHSM2_CONF=$work/tok-groups/softhsm2.conf pkcs11-tool --module "$module" \
  --token-label groups --login --pin env:GS_PIN --sign -m SHA256-RSA-PKCS --id "$(field "$work/groups.objs" gs:ca ID)" \
  -i "$work/manifest.json" -o "$work/odd.sig" >"$work/p11.out" 2>&1 || fail "pkcs11-tool cannot sign with the CA key: $(cat "$work/p11.out")"
python3 - "$work/manifest.json" "$work/odd.sig" "$work/odd.gsk" <<'PY'
import sys
def tlv(tag, b):
    n = len(b)
    ln = bytes([n]) if n < 128 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + ln + b
body = tlv(0x0C, b"groupsrv-key-shipment-1") + tlv(0x04, open(sys.argv[1], "rb").read()) + tlv(0x04, open(sys.argv[2], "rb").read())
open(sys.argv[3], "wb").write(tlv(0x30, body))
PY
# ...imported while alice's token refuses to delete the transport key
# (CKR_ACTION_PROHIBITED, tests/p11fault): the key is imported, and the
# command says loudly, exit 6, what is left and how to delete it
atl=$(grep -o 'gs:transport:[0-9a-f]*' "$work/alice-t.pem" | head -1)
printf 'C_DestroyObject 0x1b\n' > "$work/p11fault-destroy.ctl"
GROUPMAIL_CONFIG=$work/gm-fault.conf GS_P11FAULT_CONTROL=$work/p11fault-destroy.ctl GS_P11FAULT_TARGET=$module \
  expect 6 "import of a key whose label a URI must encode, the transport key not deletable" -- \
  gm keys import-group-key --in "$work/odd.gsk" --token "$tok"
expect_msg "^groupmail: the group key is imported, but its transport key $atl could not be deleted; delete it now \(pkcs11-tool --login --delete-object --type privkey --label $atl, and --type pubkey: .*\): deleting the transport private key"
[ "$(objects alice | grep -c "label: *$atl")" = 2 ] || fail "alice's transport key: $(objects alice)"
gk=$(sed -n "s/^  v1  --group-key '\(.*\)'\$/\1/p" "$work/out")
[ "$gk" = "pkcs11:token=alice%27s%20card;object=gs:group:eng:v1%3Btype%3Dsecret-key%20x%27y%2541;type=private" ] ||
  fail "import-group-key printed --group-key '$gk' for the label $odd: $(cat "$work/out")"
printf 'Subject: odd\n\nan odd label\n' > "$work/m0.txt"
openssl cms -encrypt -binary -aes-256-gcm -recip "$work/eng-v1.pem" -keyopt rsa_padding_mode:oaep \
  -in "$work/m0.txt" -out "$work/m0.smime" 2>/dev/null
expect 0 "decrypt with the --group-key line as printed" -- \
  gm decrypt --via local-key --group-key "$gk" --group eng --in "$work/m0.smime" --out "$work/m0.out"
cmp -s "$work/m0.out" "$work/m0.txt" || fail "the odd label's key: plaintext differs"
for type in privkey pubkey; do
  GS_PIN=$(cat "$work/tok-alice/user-pin") SOFTHSM2_CONF=$work/tok-alice/softhsm2.conf pkcs11-tool --module "$module" \
    --token-label "alice's card" --login --pin env:GS_PIN --delete-object --label "$odd" --type "$type" >/dev/null 2>&1 || true
done
ok "a label with ';', a quote, a space and a '%' printed percent-encoded, and the line decrypts"

# ---- the copy on alice's token ----
expect 0 "keys import-group-key on alice's token" -- \
  gm keys import-group-key --in "$work/eng-alice.gsk" --token "$tok"
grep -q "object=gs:group:eng:v1" "$work/out" || fail "import does not name the key URI: $(cat "$work/out")"
cp "$work/out" "$work/import.out"
objects alice > "$work/alice.objs"
[ "$(field "$work/alice.objs" gs:group:eng:v1 Access)" = sensitive ] || fail "alice's copy is extractable"
[ "$(field "$work/alice.objs" gs:group:eng:v1 Usage)" = decrypt ] || fail "alice's copy is not decrypt only"
# the ceremony's last step: the transport key is gone, both halves, so
# her PIN and the file no longer give the key in the clear (SECURITY.md)
! grep -q "label: *$atl\$" "$work/alice.objs" || fail "the transport key is still on alice's token: $(cat "$work/alice.objs")"
grep -q "label: *gs:transport:" "$work/alice.objs" || fail "the import deleted another transport key (from --out /dev/stdout)"
grep -q "^transport key $atl deleted (both halves)" "$work/out" || fail "import does not say it deleted $atl: $(cat "$work/out")"
ok "the import deletes the transport key (pkcs11-tool lists neither half)"
refused alice 1 "the same file again (its transport key is gone)" -- \
  gm keys import-group-key --in "$work/eng-alice.gsk" --token "$tok"
expect_msg "transport key"

# ---- decrypt with no server running ----
printf 'Subject: option C\n\nread on my own token, no server asked\n' > "$work/m1.txt"
openssl cms -encrypt -binary -aes-256-gcm -recip "$work/eng-v1.pem" -keyopt rsa_padding_mode:oaep \
  -in "$work/m1.txt" -out "$work/m1.smime" 2>/dev/null
# the --group-key URI import printed, pasted as it is (the label encoded)
gk=$(sed -n "s/^  v1  --group-key '\(.*\)'\$/\1/p" "$work/import.out")
[ "$gk" = "pkcs11:token=alice%27s%20card;object=gs:group:eng:v1;type=private" ] ||
  fail "import-group-key printed --group-key '$gk', not the token's label percent-encoded"
# A server URL that answers nothing: local-key never asks it.
take_port dead
expect 0 "decrypt --via local-key, no server running" -- gm decrypt --via local-key --group-key "$gk" \
  --server "https://127.0.0.1:$dead" --group eng --in "$work/m1.smime" --out "$work/m1.out"
cmp -s "$work/m1.out" "$work/m1.txt" || fail "local-key: plaintext differs"
# Nor one configured that groupmail would refuse (http://): a URL the
# command never uses is no reason to refuse mail it can read (7447bfa
# checks --server first for the commands that ask the server).
printf '[server]\nurl = http://groups.example.org\ngroup = eng\ngroup_ca = %s\n[hsm]\nmodule = %s\npin_source = %s\ngroup_key = %s\n[decrypt]\nvia = local-key\n' \
  "$work/ca.pem" "$module" "$work/tok-alice/user-pin" "$gk" > "$work/gm-http.conf"
expect 0 "decrypt --via local-key, [server] url http:// never used" -- gm -c "$work/gm-http.conf" decrypt \
  --in "$work/m1.smime" --out "$work/m1c.out"
cmp -s "$work/m1c.out" "$work/m1.txt" || fail "local-key with an http:// [server] url: plaintext differs"

# ---- removal rotates the group key ----
expect 0 "member remove alice" -- gs_groups member remove eng alice@example.org
grep -q "group key rotated to version 2" "$work/out" || fail "member remove does not say it rotated: $(cat "$work/out")"
gs_groups group show eng --cert > "$work/eng-v2.pem"
cmp -s "$work/eng-v1.pem" "$work/eng-v2.pem" && fail "the current group certificate did not change"
printf 'Subject: after\n\nalice must not read this\n' > "$work/m2.txt"
openssl cms -encrypt -binary -aes-256-gcm -recip "$work/eng-v2.pem" -keyopt rsa_padding_mode:oaep \
  -in "$work/m2.txt" -out "$work/m2.smime" 2>/dev/null
expect 5 "the next message does not decrypt with alice's old copy" -- \
  gm decrypt --via local-key --group-key "$gk" --in "$work/m2.smime" --out "$work/m2.out"
[ ! -e "$work/m2.out" ] || fail "a plaintext file was left"
expect 0 "what alice could read before, she still can (SECURITY.md says so)" -- \
  gm decrypt --via local-key --group-key "$gk" --in "$work/m1.smime" --out "$work/m1b.out"
expect 0 "check after the rotation" -- gs_groups check

# ---- alice's own record of the ceremony ----
log=$HOME/.local/share/groupmail/ceremony.jsonl
[ "$(stat -c %a "$log")" = 600 ] || fail "ceremony.jsonl is not 0600"
grep '"action":"import-group-key"' "$log" | grep "$fp" | grep '"outcome":"ok"' | has_line '"key_versions":\[1\]' ||
  fail "alice's record lacks the import: $(cat "$log")"
# ...and her refusals, as the server records its own (SECURITY.md)
grep '"action":"import-group-key"' "$log" | grep 'bad.gsk' | has_line '"outcome":"refused: ' ||
  fail "alice's record lacks the changed file's refusal: $(cat "$log")"
grep '"action":"import-group-key"' "$log" | grep 'not-alice.gsk' | grep '"ceremony":"' |
  has_line '"outcome":"refused: this file was made for transport key' ||
  fail "alice's record lacks the refusal for another transport key: $(cat "$log")"
grep '"action":"import-group-key"' "$log" | grep '"group":"ops"' | has_line '"outcome":"refused: the group does not allow local-key"' ||
  fail "alice's record lacks the refusal of group ops's key: $(cat "$log")"
grep '"action":"import-group-key"' "$log" | has_line '"outcome":"failed: the decryption test of key gs:group:eng:v1 could not run' ||
  fail "alice's record lacks the import her token's going away stopped: $(cat "$log")"
grep '"action":"transport-key-destroy"' "$log" | grep "$atl" | has_line '"outcome":"failed: ' ||
  fail "alice's record lacks the transport key her token would not delete: $(cat "$log")"
grep '"action":"transport-key-destroy"' "$log" | grep "$atl" | grep "$fp" | has_line '"outcome":"ok"' ||
  fail "alice's record lacks the transport key's deletion: $(cat "$log")"
python3 - "$log" <<'PY' || fail "alice's ceremony.jsonl chain is broken"
import hashlib, json, sys
prev = "0" * 64
for line in open(sys.argv[1], "rb").read().split(b"\n")[:-1]:
    assert json.loads(line)["prev"] == prev
    prev = hashlib.sha256(line).hexdigest()
PY
ok "alice's ceremony.jsonl records both steps and her refusals, and its hash chain holds"
echo "all ceremony-member checks passed"
