#!/usr/bin/env bash
# server-secrets.sh BIN SRC: no secret in any log, at the most talkative
# log level. The server runs with log_level = debug and answers every kind
# of request that handles a secret (unwrap with each deliver method, the
# group secret keys, a membership certificate, unwrap-batch), some of them
# refused, then reloads its PIN (SIGHUP) and stops. The admin commands and
# groupmail run with -v (their most talkative). Then every log and the audit trail are searched
# for the secrets in each form a careless line could print them: the user
# and SO PINs, each content key and the group secret key in hex (either
# case) and in base64, and the members' private keys. SECURITY.md:
# "PINs and key material are never logged".
set -euo pipefail
BIN=$1 SRC=$2
export SRV_LOG_LEVEL=debug
. "$SRC/tests/integration/server-lib.sh"
start_server

hex() { od -An -tx1 "$1" | tr -d ' \n'; }
secrets=$work/secrets.txt # one secret per line, each form on its own line
: >"$secrets"
add_secret() { # add_secret FILE: its bytes in hex, HEX, base64 (and unpadded)
  local h
  h=$(hex "$1")
  [ "${#h}" -ge 16 ] || fail "secret $1 too short to search for: $h"
  printf '%s\n%s\n%s\n' "$h" "${h^^}" "$(base64 -w0 "$1" | tr -d '=')" >>"$secrets"
}

# ---- the PINs ----
printf '%s\n' "$(cat "$work/token/user-pin")" >>"$secrets"
[ -f "$work/token/so-pin" ] && printf '%s\n' "$(cat "$work/token/so-pin")" >>"$secrets"

# ---- F: the content key itself ----
unwrap_as alice tls
b64d "$(json_get "$work/body" key)" >"$work/cek.bin"
check_cek "$(hex "$work/cek.bin")"
add_secret "$work/cek.bin"

# ---- E and group-secret, and the group secret key ----
unwrap_as alice recipient-key
unwrap_as bob group-secret
member_secret_key bob "$work"
add_secret "$work/sk.bin"

# ---- unwrap-batch, and refusals that carry a real RecipientInfo ----
printf '{"items":[{"recipient_info":"%s","deliver":"tls"},{"recipient_info":"AAAA","deliver":"tls"}]}' \
  "$(b64 "$work/ri.der")" >"$work/batch.json"
expect_status 200 "" "unwrap-batch" -- c alice --data-binary @"$work/batch.json" "$base/v1/groups/eng/unwrap-batch"
expect_status 403 not_a_member "a removed member's unwrap" -- c carol --data-binary @"$work/req-tls.json" \
  "$base/v1/groups/eng/unwrap"
# A second message, its content key learned only by alice's own key (E):
# the server saw it only inside the token and in the re-wrap.
openssl cms -encrypt -binary -aes-128-cbc -in "$work/msg.txt" -outform DER -out "$work/msg2.der" \
  -recip "$certs/group.pem" 2>/dev/null
cms ri "$work/msg2.der" "$work/ri2.der"
printf '{"recipient_info":"%s","content_algorithm":"aes-128-cbc","deliver":"recipient-key"}' "$(b64 "$work/ri2.der")" >"$work/req2.json"
expect_status 200 "" "unwrap recipient-key, PKCS#1 v1.5 message" -- c alice --data-binary @"$work/req2.json" \
  "$base/v1/groups/eng/unwrap"
b64d "$(json_get "$work/body" recipient_info)" >"$work/ri2-alice.der"
cms ek "$work/ri2-alice.der" "$work/ek2.bin"
openssl pkeyutl -decrypt -inkey "$certs/alice@example.org.key" -pkeyopt rsa_padding_mode:oaep \
  -in "$work/ek2.bin" -out "$work/cek2.bin" 2>/dev/null ||
  openssl pkeyutl -decrypt -inkey "$certs/alice@example.org.key" -in "$work/ek2.bin" -out "$work/cek2.bin" ||
  fail "alice cannot open her re-wrapped key"
add_secret "$work/cek2.bin"

# ---- G: a membership certificate, then an unwrap with it ----
openssl req -new -newkey rsa:2048 -nodes -subj "/CN=whoever" -keyout "$work/g.key" -out "$work/g.csr" 2>/dev/null
expect_status 200 "" "membership certificate" -- c bob -H 'Content-Type: application/pkcs10' \
  --data-binary @"$work/g.csr" "$cbase/v1/groups/eng/membership-certificates"
cp "$work/body" "$work/g.pem"
expect_status 200 "" "unwrap with a membership certificate" -- \
  curl -sS --cacert "$certs/tca.pem" --cert "$work/g.pem" --key "$work/g.key" \
  --data-binary @"$work/req-recipient-key.json" "$base/v1/groups/eng/unwrap"

# ---- groupmail -v decrypts the message with alice's identity ----
# [store] dir in the work directory: the default is $HOME's
# (~/.local/share/groupmail), where group-secret's member secret key and
# the group certificate's pin of each run's port were left behind, root's
# under CI, for every later run and test on the machine to meet.
cat >"$work/gm.conf" <<EOF
[store]
dir = $work/gmstore
[server]
url = $base
group = eng
cacert = $certs/tca.pem
group_ca = $certs/localca.pem
[identity]
cert = $certs/alice@example.org.pem
key = $certs/alice@example.org.key
EOF
openssl cms -encrypt -binary -aes-256-cbc -in "$work/msg.txt" -out "$work/msg.eml" \
  -recip "$certs/group.pem" -keyopt rsa_padding_mode:oaep 2>/dev/null
for via in tls recipient-key group-secret; do
  HOME=$work/home XDG_DATA_HOME= "$BIN/groupmail" -c "$work/gm.conf" -v decrypt --via "$via" --in "$work/msg.eml" \
    --out "$work/gm-$via.txt" \
    2>"$work/gm-$via.err" || fail "groupmail -v decrypt --via $via: $(cat "$work/gm-$via.err")"
  grep -q "secret body" "$work/gm-$via.txt" || fail "groupmail decrypt --via $via: wrong text"
done
[ ! -e "$work/home" ] || fail "groupmail with a [store] dir wrote to \$HOME: $(find "$work/home" | head -5)"
ok "groupmail -v decrypt with each method, nothing written to \$HOME"

# ---- the admin commands, talkative ----
gs -v member list eng >"$work/admin.out" 2>&1 || fail "member list: $(cat "$work/admin.out")"
gs -v audit verify >>"$work/admin.out" 2>&1 || fail "audit verify: $(cat "$work/admin.out")"

# ---- SIGHUP re-reads the PIN file; then a clean stop ----
kill -HUP "$srv_pid"
sleep 0.5
expect_status 200 "" "unwrap after SIGHUP" -- c alice --data-binary @"$work/req-tls.json" "$base/v1/groups/eng/unwrap"
stop_server

# ---- the search ----
for m in alice bob; do
  openssl pkey -in "$certs/$m@example.org.key" -outform DER -out "$work/$m.pk.der"
  # a run of the private key's DER, long enough to be unique, in base64
  base64 -w0 "$work/$m.pk.der" | cut -c 40-90 >>"$secrets"
done
sed -n '2p' "$work/g.key" | cut -c 1-60 >>"$secrets" # the membership certificate's key
logs=("$work/server.log" "$work/audit.jsonl" "$work/admin.out" "$work"/gm-*.err)
grep -q 'level=debug\|"level":"debug"\|debug' "$work/server.log" ||
  fail "the server wrote no debug line: is log_level = debug in effect?"
n=$(wc -l <"$secrets")
while IFS= read -r s; do
  [ -n "$s" ] || continue
  for f in "${logs[@]}"; do
    if grep -qF -- "$s" "$f"; then
      fail "a secret ($(printf '%s' "$s" | cut -c 1-6)...) is in $(basename "$f"): $(grep -nF -- "$s" "$f" | head -c 300)"
    fi
  done
done <"$secrets"
ok "$n secret forms searched in ${#logs[@]} logs: none found"
