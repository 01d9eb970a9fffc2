#!/usr/bin/env bash
# token-caps.sh BIN SRC P11FAULT: capability edges of real tokens that
# SoftHSM hides, each modelled by tests/p11fault in front of SoftHSM (its
# header says what real token behaviour each mode stands for), through the
# real `groupsrv serve`:
#  - a session limit the token does not report (GS_P11FAULT_SESSION_QUOTA:
#    ulMaxSessionCount 0, CKR_SESSION_COUNT beyond it): serve starts with
#    as many token workers as it got sessions, and concurrent unwraps all
#    succeed (they used to fail at random with 503).
#  - functions the token lists mechanisms for but refuses (a network HSM's
#    policy: CKR_FUNCTION_NOT_SUPPORTED from C_UnwrapKey, C_Decrypt,
#    C_WrapKey): 400 unsupported_algorithm for that request, not 503
#    token_unavailable (which clients retry for ever); the next request
#    and /healthz are fine.
#  - a token out of memory (CKR_DEVICE_MEMORY from C_CreateObject) during
#    the capability probe: group create refuses, saying why, instead of
#    making a key without the protections the probe could not try (it
#    recorded weakenings no-allowed-mechanisms, no-unwrap-template);
#    `check` says the probe was incomplete.
#  - a token that makes RSA keys up to 2048 bits only
#    (GS_P11FAULT_RSA_MAX_BITS: ulMaxKeySize, CKR_KEY_SIZE_RANGE): `check`
#    shows the range, group create rsa:3072/rsa:4096 is refused naming it.
#  - a token with a PIN pad (GS_P11FAULT_PINPAD: CKF_PROTECTED_AUTHENTICATION_PATH,
#    C_Login with no PIN takes what is typed on the pad): [hsm] pin_source
#    = pinpad logs in with no PIN, serve unwraps; refused clearly on a token
#    without a pad, and when nobody types.
#  - a write-protected token (GS_P11FAULT_WRITE_PROTECTED: CKF_WRITE_PROTECTED,
#    read/write sessions refused): serve runs on read-only sessions and
#    unwraps by every deliver method (it could not open the token at
#    all); group create says the token is write-protected, and so does
#    member remove (CLI exit 1, REST 400), which keeps the member;
#    group export, which needs the SO's login, names it as the likely cause;
#    group retire and secret retire name it before the database changes
#    (and retire a version whose objects are not on it); one retired
#    already by another server sharing the database: the refusal says how
#    to get rid of this token's copy.
#  - a token that wants a new user PIN (CKF_USER_PIN_TO_BE_CHANGED) and
#    counted wrong PINs (CKF_USER_PIN_COUNT_LOW): check and serve's log
#    say so.
#  - a card whose driver answers a wrong PIN with CKR_GENERAL_ERROR
#    (GS_P11FAULT_PIN_TRIES, GS_P11FAULT_PIN_ERROR): the PIN is sent once.
#  - a listed mechanism whose C_GetMechanismInfo fails for good
#    (GS_P11FAULT_MECH_INFO_FAIL): check names it absent, the probe completes.
#  - a card without RSA-OAEP (GS_P11FAULT_RSA_DECRYPT=v15 or raw): check
#    says it cannot hold group keys, as group create does.
set -euo pipefail
BIN=$1 SRC=$2 SRV_MODULE=$3
[ -f "$SRV_MODULE" ] || { echo "FAIL: no p11fault module at $SRV_MODULE" >&2; exit 1; }
SRV_MEMBERS="alice bob" SRV_WORKERS=4
. "$SRC/tests/integration/server-lib.sh"
ctl=$work/p11fault.ctl
export GS_P11FAULT_CONTROL=$ctl
# control FILE-TEXT: replaces the control file atomically
control() { printf '%s\n' "$@" > "$ctl.tmp" && mv -f "$ctl.tmp" "$ctl"; }
url=$base/v1/groups/eng/unwrap
# An OAEP (SHA-1) encrypted content key for the group, as a bare request.
openssl rand 32 > "$work/cek"
gs group show eng --pubkey > "$work/eng.pub"
openssl pkeyutl -encrypt -pubin -inkey "$work/eng.pub" -pkeyopt rsa_padding_mode:oaep -in "$work/cek" \
  -out "$work/cek.oaep"
printf '{"encrypted_key":"%s","algorithm":"RSA-OAEP","key_length":32}' "$(base64 -w0 "$work/cek.oaep")" \
  > "$work/req-oaep.json"
# burst N REQ-FILE: N unwraps at once; their statuses, counted, to $work/codes
burst() {
  local n=$1 req=$2 pids= i
  : > "$work/codes"
  for i in $(seq 1 "$n"); do
    c alice -o /dev/null -w '%{http_code}\n' --data-binary @"$req" "$url" >> "$work/codes" 2>/dev/null &
    pids="$pids $!"
  done
  # shellcheck disable=SC2086
  wait $pids || true
  sort "$work/codes" | uniq -c | tr -s ' \n' ' '
}

# ---- a token out of memory while its capabilities are probed ----
control "C_CreateObject CKR_DEVICE_MEMORY"
rc=0; gs group create full --address full@example.org --key rsa:2048 > "$work/full.out" 2>&1 || rc=$?
[ "$rc" = 1 ] && [ "$(wc -l < "$work/full.out")" = 1 ] &&
  grep -q "^groupsrv: .*the token's capabilities could not be probed (.*CKR_DEVICE_MEMORY (the token is out of memory.*try again" \
    "$work/full.out" || fail "group create with the probe failing: exit $rc: $(cat "$work/full.out")"
gs group show full > /dev/null 2>&1 && fail "a group was recorded although its key was not made"
gs check > "$work/check-full.out" 2>&1 || true
grep -q '^cap probe  *incomplete: CKA_ALLOWED_MECHANISMS: C_CreateObject: CKR_DEVICE_MEMORY' "$work/check-full.out" ||
  fail "check does not say the probe was incomplete: $(grep '^cap' "$work/check-full.out" | head -3)"
# One failure only: the probe is tried again and the group gets every protection.
control "C_CreateObject CKR_DEVICE_MEMORY 1"
gs group create full --address full@example.org --key rsa:2048 > "$work/full.out" 2>&1 ||
  fail "group create after one transient failure: $(cat "$work/full.out")"
grep -q "^weakenings: *none\$" "$work/full.out" || fail "a transient failure became a weakening: $(cat "$work/full.out")"
control ""
ok "a token out of memory during the probe: group create refused, then made with every protection"

# ---- a mechanism list that cannot be read for a moment ----
# What the probe could not read is no "the token cannot": group create
# chooses no policy from it, and names neither another token ("use a
# token with RSA-OAEP"), --oaep-only nor "use an RSA key" (an EC group),
# nor for a key adopted with --use-key; it says to try again.
control "C_GetMechanismList CKR_DEVICE_ERROR"
for k in "--key rsa:2048" "--key rsa:2048 --oaep-only" "--key ec:p256" \
         "--use-key pkcs11:object=gs:group:eng:v1;type=private"; do
  rc=0
  # shellcheck disable=SC2086
  gs group create unread --address unread@example.org $k > "$work/unread.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] && [ "$(wc -l < "$work/unread.out")" = 1 ] &&
    grep -q "^groupsrv: the token's capabilities could not be probed (the mechanism list: .*CKR_DEVICE_ERROR.*: no group is made from a partial probe .*try again" \
      "$work/unread.out" || fail "group create $k, the mechanism list unreadable: exit $rc: $(cat "$work/unread.out")"
  gs group show unread > /dev/null 2>&1 && fail "group create $k was recorded from a partial probe"
done
control ""
ok "a mechanism list unreadable for a moment: group create says to try again, not what the token lacks"

# ---- an HSM held to RSA-OAEP, over REST ----
# POST /v1/groups for a group taking PKCS#1 v1.5 (the default) is the
# token's lasting refusal, 400 naming it: not 503 token_unavailable "try
# again later" (a script retrying for ever, a token error counted).
openssl pkeyutl -encrypt -pubin -inkey "$work/eng.pub" -pkeyopt rsa_padding_mode:pkcs1 -in "$work/cek" \
  -out "$work/cek.v15"
printf '{"encrypted_key":"%s","algorithm":"RSA-PKCS1-v1_5","content_algorithm":"aes-256-cbc"}' \
  "$(base64 -w0 "$work/cek.v15")" > "$work/req-v15.json"
GS_P11FAULT_PROFILE=oaep-only start_server
# eng takes v1.5 senders, made where v1.5 decrypted: what check's policy
# WARNING row says of it here, 400 unsupported_algorithm (OAEP still read)
expect_status 400 unsupported_algorithm "a v1.5 unwrap where the token has no CKM_RSA_PKCS decryption" -- \
  c alice --data-binary @"$work/req-v15.json" "$url"
expect_status 200 "" "an RSA-OAEP unwrap on that token" -- c alice --data-binary @"$work/req-oaep.json" "$url"
# discovery says so to senders and exploders: key_transports leaves v1.5
# out (probed on the token), though the group's record still takes it
expect_status 200 "" "discovery of eng on that token" -- anon "$base/v1/groups/eng"
grep -Eq '"key_transports": ?\["RSA-OAEP"\]' "$work/body" ||
  fail "discovery of a v1.5 group where the token has no CKM_RSA_PKCS decryption: $(cat "$work/body")"
expect_status 400 bad_request "POST /v1/groups of a v1.5 group where the token has no CKM_RSA_PKCS decryption" -- \
  c admin --data-binary '{"name":"v15","address":"v15@example.org","keyspec":"rsa:2048"}' "$base/v1/groups"
grep -q "the token offers no CKM_RSA_PKCS decryption, which PKCS#1 v1.5 senders need" "$work/body" ||
  fail "the 400 does not say why: $(cat "$work/body")"
# An EC group where the token's ECDH takes no X9.63 KDF (SoftHSM 2.6.1,
# this profile included): the same lasting refusal, 400 saying why.
expect_status 400 bad_request "POST /v1/groups of an EC group where ECDH takes no X9.63 KDF" -- \
  c admin --data-binary '{"name":"ecg","address":"ecg@example.org","keyspec":"ec:p256"}' "$base/v1/groups"
grep -q "takes no X9.63 KDF" "$work/body" || fail "the EC 400 does not say why: $(cat "$work/body")"
expect_status 201 "" "POST /v1/groups of an RSA-OAEP-only group on that token" -- \
  c admin --data-binary '{"name":"oaep","address":"oaep@example.org","keyspec":"rsa:2048","allow_pkcs1v15":false}' \
  "$base/v1/groups"
stop_server
ok "an HSM held to RSA-OAEP: a v1.5 group over REST is 400 saying why, an OAEP-only one is made"

# ---- a token that makes RSA keys of 2048 bits at most ----
export GS_P11FAULT_RSA_MAX_BITS=2048
gs check > "$work/check-2048.out" 2>&1 || true
grep -q '^cap mechanism CKM_RSA_PKCS_KEY_PAIR_GEN  *yes: generate (512-2048 bits)$' "$work/check-2048.out" ||
  fail "check does not show the RSA key sizes: $(grep KEY_PAIR_GEN "$work/check-2048.out")"
for k in rsa:3072 rsa:4096; do
  rc=0; gs group create big --address big@example.org --key "$k" > "$work/big.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] && [ "$(wc -l < "$work/big.out")" = 1 ] &&
    grep -q "RSA ${k#rsa:}: the token makes RSA keys of 512 to 2048 bits only (CKM_RSA_PKCS_KEY_PAIR_GEN" "$work/big.out" ||
    fail "group create --key $k beyond the token's sizes: exit $rc: $(cat "$work/big.out")"
  gs group show big > /dev/null 2>&1 && fail "group create --key $k was recorded"
done
gs group create small --address small@example.org --key rsa:2048 > "$work/small.out" 2>&1 ||
  fail "group create rsa:2048 within the token's sizes: $(cat "$work/small.out")"
unset GS_P11FAULT_RSA_MAX_BITS
ok "a token of RSA-2048 at most: check shows it, rsa:3072 and rsa:4096 refused naming the range"

# ---- a token with a PIN pad ----
sed -e "s|^pin_source = .*|pin_source = pinpad|" "$conf" > "$work/pad.conf"
rc=0; "$BIN/groupsrv" -c "$work/pad.conf" check > "$work/pad.out" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q "^token  *PROBLEM: .*pin source pinpad: this token has no PIN pad (no CKF_PROTECTED_AUTHENTICATION_PATH)" \
  "$work/pad.out" || fail "pin_source = pinpad without a pad: exit $rc: $(cat "$work/pad.out")"
export GS_P11FAULT_PINPAD=1
rc=0; "$BIN/groupsrv" -c "$work/pad.conf" check > "$work/pad.out" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q "^token  *PROBLEM: .*C_Login: CKR_FUNCTION_CANCELED (on a token with a PIN pad: nobody entered the PIN" \
  "$work/pad.out" || fail "pin_source = pinpad with nobody at the pad: exit $rc: $(cat "$work/pad.out")"
export GS_P11FAULT_PINPAD_PIN; GS_P11FAULT_PINPAD_PIN=$(cat "$pin_file")
"$BIN/groupsrv" -c "$work/pad.conf" check > "$work/pad-check.out" 2>&1 || fail "check with the PIN pad: $(cat "$work/pad-check.out")"
grep -q "^cap login  *required; PIN pad (protected authentication path)" "$work/pad-check.out" ||
  fail "check does not show the PIN pad: $(grep '^cap login' "$work/pad-check.out")"
conf_saved=$conf; conf=$work/pad.conf
start_server
expect_status 200 "" "unwrap with the token logged in through its PIN pad" -- \
  c alice --data-binary @"$work/req-oaep.json" "$url"
stop_server
conf=$conf_saved
unset GS_P11FAULT_PINPAD GS_P11FAULT_PINPAD_PIN
ok "pin_source = pinpad: logged in through the PIN pad, served; refused clearly without a pad or a person"

# ---- a listed mechanism whose C_GetMechanismInfo fails for good ----
# (GS_P11FAULT_MECH_INFO_FAIL): counted as absent after 3 probes, not a
# probe incomplete for ever (no key could ever be made).
GS_P11FAULT_MECH_INFO_FAIL=0x1040 gs check > "$work/mi.out" 2>&1 || fail "check, EC key generation info failing: $(cat "$work/mi.out")"
grep -q "^cap mechanism CKM_EC_KEY_PAIR_GEN  *no: listed, but C_GetMechanismInfo fails (CKR_GENERAL_ERROR) in 3 probes in a row: counted as absent" \
  "$work/mi.out" && ! grep -q "^cap probe" "$work/mi.out" ||
  fail "a mechanism whose info fails for good: $(grep -E '^cap (probe|mechanism CKM_EC_KEY)' "$work/mi.out")"
ok "a listed mechanism whose info fails for good: absent, named by check"

# ---- a card without RSA-OAEP: PKCS#1 v1.5 and raw RSA, or raw RSA only ----
# (the smartcard profile with GS_P11FAULT_RSA_DECRYPT; many PIV and OpenPGP
# cards): check says before anyone tries that it cannot hold group keys,
# as group create then says; the default token can.
grep -q '^cap group keys (RSA)  *yes$' "$work/mi.out" || fail "check on SoftHSM: $(grep '^cap group' "$work/mi.out")"
for rsa in v15 raw; do
  GS_P11FAULT_PROFILE=smartcard GS_P11FAULT_RSA_DECRYPT=$rsa gs check > "$work/norsa.out" 2>&1 || true
  grep -q "^cap group keys (RSA)  *no: the token offers CKM_RSA_PKCS_OAEP neither for decryption nor for unwrapping: it cannot hold group keys (use a token with RSA-OAEP); group create refuses\$" \
    "$work/norsa.out" || fail "check on a card with $rsa RSA only: $(grep '^cap group' "$work/norsa.out")"
  rc=0; GS_P11FAULT_PROFILE=smartcard GS_P11FAULT_RSA_DECRYPT=$rsa \
    gs group create v15card --address v15card@example.org --key rsa:2048 --methods tls > "$work/norsa.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] && grep -q "^groupsrv: the token offers CKM_RSA_PKCS_OAEP neither for decryption nor for unwrapping" \
    "$work/norsa.out" || fail "group create on a card with $rsa RSA only: exit $rc: $(cat "$work/norsa.out")"
done
ok "a card without RSA-OAEP (v1.5 and raw, or raw only): check and group create say it cannot hold group keys"

# ---- a card whose driver reports a wrong PIN as CKR_GENERAL_ERROR ----
# (GS_P11FAULT_PIN_TRIES: a hardware slot with a retry counter; the wrong
# PIN answered 0x5): the PIN is sent once, not once per retry of the open,
# and check names the counted try; then the right PIN's check names the
# wrong PIN tried before it (SoftHSM's CKF_USER_PIN_COUNT_LOW).
printf '0000cardwrong\n' > "$work/card-wrong-pin"; chmod 600 "$work/card-wrong-pin"
sed -e "s|^pin_source = .*|pin_source = $work/card-wrong-pin|" "$conf" > "$work/card.conf"
rc=0; GS_P11FAULT_PIN_TRIES=3 GS_P11FAULT_PIN_ERROR=0x5 GS_P11FAULT_COUNTS=$work/card.counts \
  "$BIN/groupsrv" -c "$work/card.conf" check > "$work/card.out" 2>&1 || rc=$?
logins=$(awk '$1 == "C_Login" {print $2}' "$work/card.counts")
[ "$rc" = 1 ] && [ "$logins" = 1 ] &&
  grep -q "^token  *PROBLEM: .*C_Login: CKR_GENERAL_ERROR, and the token now reports CKF_USER_PIN_COUNT_LOW: it counted a wrong PIN" \
  "$work/card.out" || fail "a wrong PIN answered CKR_GENERAL_ERROR: exit $rc, $logins logins: $(cat "$work/card.out")"
GS_P11FAULT_PIN_TRIES=3 gs check > "$work/card-good.out" 2>&1 || fail "check with the right PIN: $(cat "$work/card-good.out")"
grep -q "^cap user PIN  *wrong PINs were tried (CKF_USER_PIN_COUNT_LOW)" "$work/card-good.out" ||
  fail "check does not name the wrong PIN tried: $(grep '^cap user' "$work/card-good.out")"
ok "a wrong PIN a card's driver answers with CKR_GENERAL_ERROR: sent once, named; check names the count"

# ---- a session limit the token does not report ----
# Three sessions for this process, each operation slow enough (20 ms, 4
# engines) that the key holder's workers overlap.
GS_P11FAULT_SESSION_QUOTA=3 GS_P11FAULT_SERVICE_US=20000 GS_P11FAULT_ENGINES=4 start_server
grep -q 'msg="token workers lowered: the token refused more sessions (CKR_SESSION_COUNT) than it reports" workers=4 sessions=3' \
  "$work/server.log" || fail "serve did not lower its workers to the 3 sessions it got: $(grep -i 'worker\|session' "$work/server.log")"
grep -q 'msg="key holder ready" workers=3 ' "$work/server.log" || fail "the key holder does not run 3 workers"
got=$(burst 24 "$work/req-oaep.json")
[ "$got" = " 24 200 " ] || fail "24 unwraps at once with an unreported limit of 3 sessions: $got"
grep -q "token session lost" "$work/server.log" && fail "sessions were lost: $(grep 'session lost' "$work/server.log" | head -3)"
ok "a session limit the token does not report: 3 workers, 24 concurrent unwraps all 200"
stop_server

# ---- a write-protected token, used only to serve ----
# A replicable group and a transport key, made while the token still
# takes keys: copying the keys out needs the security officer's login,
# which a token opens on read/write sessions only.
sed "/^\[hsm\]/a so_pin_source = $work/token/so-pin" "$conf" > "$work/so.conf"
"$BIN/groupsrv" -c "$work/so.conf" group create rep --address rep@example.org --key rsa:2048 --replicable \
  --methods tls,recipient-key > "$work/rep.out" 2>&1 || fail "replicable group: $(cat "$work/rep.out")"
"$BIN/groupsrv" -c "$work/so.conf" token transport-key --out "$work/t.pem" > "$work/t.out" 2>&1 ||
  fail "transport key: $(cat "$work/t.out")"
"$BIN/groupsrv" -c "$work/so.conf" group rotate rep > "$work/rot.out" 2>&1 || fail "group rotate: $(cat "$work/rot.out")"
"$BIN/groupsrv" -c "$work/so.conf" secret rotate eng > "$work/rot.out" 2>&1 || fail "secret rotate: $(cat "$work/rot.out")"
# A group whose version 1 this token does not hold (as on a server that
# imported only later versions): its retire destroys nothing here.
gs group create wpold --address wpold@example.org --key rsa:2048 --methods tls --oaep-only > "$work/wpold.out" 2>&1 &&
  gs group rotate wpold > "$work/rot.out" 2>&1 || fail "group wpold: $(cat "$work/wpold.out" "$work/rot.out")"
for type in privkey pubkey; do
  GS_PIN=$(cat "$pin_file") pkcs11-tool --module "$GS_P11FAULT_TARGET" --token-label groupsrv --login \
    --pin env:GS_PIN --delete-object --label gs:group:wpold:v1 --type $type > /dev/null 2>&1 ||
    fail "deleting gs:group:wpold:v1 ($type) with pkcs11-tool"
done
export GS_P11FAULT_WRITE_PROTECTED=1
# A retire cannot destroy the old versions on this token: refused before
# the database marks them retired (else this server's check and serve
# would find "retired but still on the token" it could never clear).
for kind in group secret; do
  g=rep; [ $kind = secret ] && g=eng
  gs group show $g > "$work/before.show"
  rc=0; gs $kind retire $g --before 2 > "$work/wp-retire.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] && grep -q "write-protected (CKF_WRITE_PROTECTED)" "$work/wp-retire.out" ||
    fail "$kind retire on a write-protected token: exit $rc: $(cat "$work/wp-retire.out")"
  gs group show $g | cmp -s - "$work/before.show" || fail "$kind retire on a write-protected token changed the database: $(gs group show $g)"
done
# A version another server sharing the database retired (the row marked
# retired, as that server's retire leaves it): this token's copy cannot
# be destroyed, and the refusal says how to get rid of it (before, it
# said to retire where the token takes changes: done already).
sqlite3 "$work/groupsrv.db" "UPDATE group_keys SET state = 3 WHERE version = 1 AND group_id =
  (SELECT id FROM groups WHERE name = 'rep')"
rc=0; gs group retire rep --before 2 > "$work/wp-retire.out" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q "version 1, retired already (by another server sharing the database?), is still on it and cannot be destroyed; nothing retired: lift the write protection, run this again" "$work/wp-retire.out" ||
  fail "group retire on a write-protected token of a version retired elsewhere: exit $rc: $(cat "$work/wp-retire.out")"
sqlite3 "$work/groupsrv.db" "UPDATE group_keys SET state = 2 WHERE version = 1 AND group_id =
  (SELECT id FROM groups WHERE name = 'rep')"
gs group retire wpold --before 2 > "$work/wp-retire.out" 2>&1 ||
  fail "group retire of a version not on the write-protected token: $(cat "$work/wp-retire.out")"
grep -q "^group wpold: 1 key version(s) retired" "$work/wp-retire.out" || fail "group retire wpold: $(cat "$work/wp-retire.out")"
rc=0; "$BIN/groupsrv" -c "$work/so.conf" group export rep --to "$work/t.pem" --out "$work/rep.gsk" > "$work/exp.out" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q "CKR_SESSION_READ_ONLY_EXISTS (the SO logs in on read/write sessions only: is the token write-protected?)" "$work/exp.out" ||
  fail "group export on a write-protected token: exit $rc: $(cat "$work/exp.out")"
gs check > "$work/wp-check.out" 2>&1 || fail "check on a write-protected token: $(tail -3 "$work/wp-check.out")"
grep -q "^cap write-protected  *yes (CKF_WRITE_PROTECTED)" "$work/wp-check.out" ||
  fail "check does not say the token is write-protected: $(grep '^cap' "$work/wp-check.out" | head -3)"
rc=0; gs group create wp --address wp@example.org --key rsa:2048 > "$work/wp.out" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q "the token is write-protected (CKF_WRITE_PROTECTED): no key can be made on it" "$work/wp.out" ||
  fail "group create on a write-protected token: exit $rc: $(cat "$work/wp.out")"
start_server
for d in tls recipient-key group-secret; do
  printf '{"encrypted_key":"%s","algorithm":"RSA-OAEP","key_length":32,"deliver":"%s"}' \
    "$(base64 -w0 "$work/cek.oaep")" "$d" > "$work/req-$d.json"
  expect_status 200 "" "deliver=$d on a write-protected token" -- c alice --data-binary @"$work/req-$d.json" "$url"
done
# Removing a member of a group-secret group makes a new secret key version
# on the token (auto_rotate_secret_on_remove, the default), which this one
# cannot hold: refused for what it is, the member kept. Over REST that is
# a definite 400, not 503 token_unavailable, whose Retry-After a script
# would follow forever.
expect_status 400 bad_request "member removal over REST on a write-protected token" -- \
  c admin -X DELETE "$base/v1/groups/eng/members/bob@example.org"
grep -q "write-protected" "$work/body" || fail "the REST refusal does not name the write protection: $(cat "$work/body")"
stop_server
rc=0; gs member remove eng bob@example.org > "$work/wp-rm.out" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q "bob@example.org stays a member of eng: .*write-protected (CKF_WRITE_PROTECTED)" "$work/wp-rm.out" ||
  fail "member remove on a write-protected token: exit $rc: $(cat "$work/wp-rm.out")"
gs member list eng | grep -q "^bob@example.org " || fail "bob is gone after a refused removal"
unset GS_P11FAULT_WRITE_PROTECTED
ok "a write-protected token serves every deliver method; group create and member remove name the write protection"

# ---- the user PIN's state at start ----
control "tokenflags CKF_USER_PIN_TO_BE_CHANGED CKF_USER_PIN_COUNT_LOW"
gs check > "$work/pinflags.out" 2>&1 || true
grep -q "^cap user PIN  *to be changed (CKF_USER_PIN_TO_BE_CHANGED): .*; wrong PINs were tried (CKF_USER_PIN_COUNT_LOW)" \
  "$work/pinflags.out" || fail "check does not show the PIN's state: $(grep '^cap' "$work/pinflags.out" | head -3)"
start_server
grep -q "the token wants a new user PIN (CKF_USER_PIN_TO_BE_CHANGED)" "$work/server.log" ||
  fail "serve does not warn of a PIN to be changed"
stop_server
control ""
ok "a PIN to be changed and wrong PINs tried: check and serve say so"

# ---- functions the token refuses by policy ----
start_server
for d in tls recipient-key group-secret; do
  printf '{"encrypted_key":"%s","algorithm":"RSA-OAEP","key_length":32,"deliver":"%s"}' \
    "$(base64 -w0 "$work/cek.oaep")" "$d" > "$work/req-$d.json"
done
for rule in "C_Decrypt tls" "C_UnwrapKey recipient-key" "C_WrapKey group-secret"; do
  set -- $rule
  control "$1 CKR_FUNCTION_NOT_SUPPORTED"
  expect_status 400 unsupported_algorithm "$1 refused by the token's policy, deliver=$2" -- \
    c alice --data-binary @"$work/req-$2.json" "$url"
  expect_status 200 "" "healthz after $1 was refused" -- anon "$base/healthz"
  control ""
  expect_status 200 "" "deliver=$2 once the token does $1 again" -- c alice --data-binary @"$work/req-$2.json" "$url"
done
grep -q "could not be loaded or initialised" "$work/server.log" &&
  fail "a refused function is logged as a module that could not be loaded: $(grep 'could not be loaded' "$work/server.log" | head -1)"
ok "functions the token refuses: 400 unsupported_algorithm, the token stays available"
stop_server

echo "token-caps: all passed"
