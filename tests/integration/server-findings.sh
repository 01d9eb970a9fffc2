#!/usr/bin/env bash
# server-findings.sh BIN SRC P11FAULT: issue 15's findings 6-11 against a
# real server, each as the reproduction that showed it: the token is
# tests/p11fault in front of SoftHSM, counting calls (GS_P11FAULT_COUNTS),
# so "refused before any token call" is measured, not assumed.
#   - a ciphertext of the wrong length, a KTRI of a wrong version and a
#     bad key_version beside recipient_info are refused without a token call
#   - a 254-byte identity is rate limited and suspended like any other
#   - an unwrap-batch stops at the item whose failure suspends its caller
#   - rate limit and membership agree on case (NOCERT@ is nocert@)
#   - an env: PIN is gone from the server's environment once read
#   - a SAN e-mail that cannot be used never falls back to the CN
#   - a CRL revoking an intermediate CA revokes the certificates under it
#   - a key version the database names but the token's search does not
#     show yet (another process has just made it) is found by the
#     request's search again: 200, not 503 key_unavailable (secret key,
#     group key); one truly absent is still 503 key_unavailable, searched
#     again once for a run of requests, not once each; its pause is no
#     sample of the token queue's service time (no shedding behind it),
#     nor is a database failure's; one search again at a time per version
#     under concurrent load (absent and lagging), never past the request's
#     deadline, and not counted as token time in /metrics
set -euo pipefail
BIN=$1 SRC=$2 SRV_MODULE=$3
[ -f "$SRV_MODULE" ] || { echo "FAIL: no p11fault module at $SRV_MODULE" >&2; exit 1; }
. "$SRC/tests/integration/server-lib.sh"
counts=$work/p11.counts
export GS_P11FAULT_COUNTS=$counts
ctl=$work/p11fault.ctl # absent until a section writes it: pass-through
export GS_P11FAULT_CONTROL=$ctl
# token_ops: private-key operations the server has asked of the token so far
token_ops() { awk '$1 ~ /^C_(Decrypt|DecryptInit|UnwrapKey|DeriveKey|WrapKey|Sign|SignInit)$/ {n += $2} END {print n+0}' "$counts"; }
all_calls() { awk '{n += $2} END {print n+0}' "$counts"; }

# A 254-byte identity (the longest an address may be), issued by the local CA.
long_id=$(/usr/bin/python3 -c 'l="x"*63; d=".".join([l,l,l]); a="u@"+d+"."; a+= "y"*(254-len(a)-4)+".org"; print(a)')
[ "${#long_id}" = 254 ] || fail "test set-up: identity is ${#long_id} bytes"
mkmail() { # mkmail NAME ADDRESS: a client certificate from the test CA
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=test $1" \
    -keyout "$certs/$1.key" -out "$work/$1.csr" 2>/dev/null
  printf 'subjectAltName=email:%s\nextendedKeyUsage=clientAuth\n' "$2" > "$work/$1.ext"
  openssl x509 -req -in "$work/$1.csr" -CA "$certs/tca.pem" -CAkey "$certs/tca.key" -CAcreateserial -days 1 \
    -extfile "$work/$1.ext" -out "$certs/$1.pem" 2>/dev/null
}
mkmail long "$long_id"
sed -i 's/^\[server\]$/[server]\nmax_failed_unwraps = 3\nsuspend_seconds = 30/' "$conf"
start_server
url=$base/v1/groups/eng/unwrap
# Members with no recorded certificate (the API allows it): the 254-byte
# identity and nocert@.
for m in "$long_id" nocert@example.org; do
  expect_status 201 "" "add ${m:0:12}... without a certificate" -- \
    c admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/$m"
done
lc() { curl -sS --cacert "$certs/tca.pem" --cert "$certs/long.pem" --key "$certs/long.key" "$@"; }

ri_b64=$(b64 "$work/ri.der")
printf '{"recipient_info":"%s"}' "$ri_b64" > "$work/req-tls.json"
expect_status 200 "" "unwrap (warms the group cache)" -- c alice --data-binary @"$work/req-tls.json" "$url"

# ---- finding 6: refused by their form, before any token call ----
ops0=$(token_ops)
expect_status 400 unwrap_failed "encrypted_key of 3 bytes" -- \
  c bob --data-binary '{"encrypted_key":"AAAA","algorithm":"RSA-OAEP"}' "$url"
/usr/bin/python3 - "$work/ri.der" "$work/ri-v7f.der" <<'PY'
import sys
der = bytearray(open(sys.argv[1], 'rb').read())
# KTRI ::= SEQUENCE { version INTEGER (0), rid, ... }: the first INTEGER.
hl = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7f)
assert der[hl:hl + 3] == b'\x02\x01\x00', der[:8].hex()
der[hl + 2] = 0x7f
open(sys.argv[2], 'wb').write(der)
PY
expect_status 400 bad_recipient_info "KTRI version 0x7f" -- \
  c bob --data-binary "{\"recipient_info\":\"$(b64 "$work/ri-v7f.der")\"}" "$url"
for kv in 1.5 '"1"'; do
  expect_status 400 bad_request "recipient_info with key_version $kv" -- \
    c bob --data-binary "{\"recipient_info\":\"$ri_b64\",\"key_version\":$kv}" "$url"
done
for kv in -1 2147483648 2; do
  expect_status 400 unknown_key_version "recipient_info with key_version $kv" -- \
    c bob --data-binary "{\"recipient_info\":\"$ri_b64\",\"key_version\":$kv}" "$url"
done
ops1=$(token_ops)
[ "$ops1" = "$ops0" ] || fail "malformed unwraps reached the token: $((ops1 - ops0)) private-key operations"
ok "no token operation for any of them"
expect_status 200 "" "recipient_info with its own key_version 1" -- \
  c bob --data-binary "{\"recipient_info\":\"$ri_b64\",\"key_version\":1}" "$url"
[ "$(token_ops)" -gt "$ops1" ] || fail "the token-call counter does not count (a good unwrap made none)"
ok "the counter counts a good unwrap"

# ---- rate limits: restart with a tight bucket ----
stop_server
sed -i 's/^rate_limit = .*/rate_limit = 1\nrate_burst = 3/' "$conf"
start_server

# ---- finding 11: case between membership and the rate limit ----
# nocert@ (no recorded certificate) and NOCERT@ are one member (membership
# ignores ASCII case), so they must share one bucket (burst 3, 1 a second):
# three requests as nocert@ and one as NOCERT@ from one curl process, so
# well under a second passes and the bucket cannot refill in between.
mkmail lower nocert@example.org
mkmail upper NOCERT@EXAMPLE.ORG
sleep 3 # refill every bucket
one() { # one NAME: curl options for one request as NAME
  printf -- '--cacert %s --cert %s --key %s --data-binary @%s -o /dev/null -w %%{http_code}\\n %s' \
    "$certs/tca.pem" "$certs/$1.pem" "$certs/$1.key" "$work/req-tls.json" "$url"
}
# shellcheck disable=SC2046
codes=$(curl -sS $(one lower) --next $(one lower) --next $(one lower) --next $(one upper) | tr '\n' ' ')
[ "$codes" = "200 200 200 429 " ] || fail "nocert@ x3, then NOCERT@: $codes (wanted 200 200 200 429)"
ok "NOCERT@ right after nocert@ used the burst: 429 (one bucket)"

# ---- finding 9: a 254-byte identity is rate limited ----
# Eight requests from one curl process, as above: eight processes may take
# longer than the five seconds the bucket needs to refill on a loaded machine.
sleep 3
# shellcheck disable=SC2046
codes=$(curl -sS $(one long) --next $(one long) --next $(one long) --next $(one long) --next $(one long) \
  --next $(one long) --next $(one long) --next $(one long) | sort | uniq -c | tr '\n' ' ')
echo "$codes" | grep -q ' 429' || fail "a 254-byte identity is never rate limited: $codes"
echo "$codes" | grep -q ' 200' || fail "a 254-byte identity is refused throughout: $codes"
ok "a 254-byte identity is rate limited ($codes)"

# ---- findings 9 and 10: suspension, also inside one batch ----
bad=$(head -c 256 /dev/urandom | base64 -w0)
item="{\"encrypted_key\":\"$bad\",\"algorithm\":\"RSA-OAEP\"}"
batch="{\"items\":[$item,$item,$item,$item,$item,$item,$item,$item]}"
sed -i -e 's/^rate_limit = .*/rate_limit = 0/' -e '/^rate_burst/d' "$conf"
stop_server
start_server
expect_status 200 "" "unwrap after the restart (warms the cache)" -- c alice --data-binary @"$work/req-tls.json" "$url"
d0=$(token_ops)
expect_status 200 "" "a batch of 8 undecryptable items" -- c bob --data-binary "$batch" "$base/v1/groups/eng/unwrap-batch"
st=$(/usr/bin/python3 -c 'import json,sys; print(" ".join(str(r["status"]) for r in json.load(open(sys.argv[1]))["results"]))' "$work/body")
[ "$st" = "400 400 400 429 429 429 429 429" ] || fail "batch past the suspension threshold: statuses $st"
grep -q '"code":"suspended"' "$work/body" || fail "batch: no suspended item: $(head -c 300 "$work/body")"
d1=$(token_ops)
[ "$((d1 - d0))" -le 6 ] || fail "the batch ran $((d1 - d0)) token operations after 3 failures suspended its caller"
ok "the batch stopped at the third failure ($st; $((d1 - d0)) token operations)"
expect_status 429 suspended "bob suspended after the batch" -- c bob --data-binary @"$work/req-tls.json" "$url"
for i in 1 2 3; do status lc --data-binary "$item" "$url" >/dev/null; done
expect_status 429 suspended "a 254-byte identity is suspended after 3 failures" -- \
  lc --data-binary @"$work/req-tls.json" "$url"
# A membership certificate's caller is "anonymous member": its suspension
# (an ALERT an operator's log watcher matches) keeps the identity in one
# quoted field, as every line of the log is one key=value record.
openssl req -new -newkey rsa:2048 -nodes -subj "/CN=whoever" -keyout "$work/g.key" -out "$work/g.csr" 2>/dev/null
expect_status 200 "" "a membership certificate" -- c alice -H 'Content-Type: application/pkcs10' \
  --data-binary @"$work/g.csr" "$cbase/v1/groups/eng/membership-certificates"
cp "$work/body" "$work/g.pem"
gcurl() { curl -sS --cacert "$certs/tca.pem" --cert "$work/g.pem" --key "$work/g.key" "$@"; }
gitem="{\"encrypted_key\":\"$bad\",\"algorithm\":\"RSA-OAEP\",\"deliver\":\"recipient-key\"}"
for i in 1 2 3; do status gcurl --data-binary "$gitem" "$url" >/dev/null; done
expect_status 429 suspended "a membership certificate is suspended after 3 failures" -- gcurl --data-binary "$gitem" "$url"
grep -q 'msg="ALERT identity suspended after repeated failed unwraps" identity="anonymous member" group=eng' "$work/server.log" ||
  fail "no ALERT line with the quoted identity: $(grep ALERT "$work/server.log")"
/usr/bin/python3 "$SRC/tests/lib/logcheck.py" "$work/server.log" || fail "the server log is not one record per line"
ok "a suspended membership certificate: ALERT identity=\"anonymous member\", the log one record per line"

# ---- finding 11: the env: PIN is not left in the environment ----
stop_server
pin=$(cat "$work/token/user-pin")
sed -i "s|^pin_source = .*|pin_source = env:GS_TEST_PIN|" "$conf"
GS_TEST_PIN=$pin start_server
expect_status 200 "" "unwrap with an env: PIN" -- c alice --data-binary @"$work/req-tls.json" "$url"
# /proc/PID/environ shows the environment the process started with (the
# name stays there, its value wiped); children see the current one.
tr '\0' '\n' < "/proc/$srv_pid/environ" | grep -q "^GS_TEST_PIN=." && fail "GS_TEST_PIN keeps its value"
grep -qaF "$pin" "/proc/$srv_pid/environ" && fail "the PIN is still readable in /proc/PID/environ"
# nor anywhere else in the supervisor's memory (a copy getenv's caller
# made). Not in a sanitizer build: its runtime keeps the environment it
# started with (read from /proc/self/environ before main) for its options.
if grep -q libasan "/proc/$srv_pid/maps"; then
  ok "the env: PIN is wiped and unset once read (its memory not scanned: the sanitizer's runtime keeps a copy)"
else
  [ "$(/usr/bin/python3 "$SRC/tests/lib/memscan.py" "$srv_pid" "$pin")" = 0 ] || fail "the env: PIN is in the supervisor's memory"
  ok "the env: PIN is wiped and unset once read, nowhere in the supervisor's memory"
fi
# serve's processes (SECURITY.md, "Processes"): the key holder read the
# PIN; the network process gets nothing of serve's environment but TZ and
# sanitizer options; and as the PIN is gone, a key holder that dies cannot
# log in again: serve stops (exit 1) for the service manager to restart it.
net=$(ps --ppid "$srv_pid" -o pid=,comm= | awk '$2 == "groupsrv-net" {print $1}')
kh=$(ps --ppid "$srv_pid" -o pid=,comm= | awk '$2 == "groupsrv-kh" {print $1}')
[ -n "$net" ] && [ -n "$kh" ] || fail "serve's processes not found"
tr '\0' '\n' < "/proc/$net/environ" | grep -q '^GS_TEST_PIN=' && fail "the network process has GS_TEST_PIN"
ok "the network process's environment has no GS_TEST_PIN"
kill -9 "$kh"
rc=0
timeout 30 tail --pid="$srv_pid" -f /dev/null || fail "serve did not stop after its key holder died"
wait "$srv_pid" || rc=$?
srv_pid=
[ "$rc" = 1 ] || fail "serve exited $rc after its key holder died with an env: PIN (want 1)"
ok "a key holder with an env: PIN is not restarted: serve stops with exit 1"
sed -i "s|^pin_source = .*|pin_source = $work/token/user-pin|" "$conf"
start_server

# ---- a key version the database names but the token's search does not show yet ----
# Another process (`secret rotate`, `group rotate`, `member remove`) makes
# the key on the token, then commits its version; SoftHSM 2.6 writes the
# new object's file after releasing its lock, so the server's search at
# that moment may miss it (server_race's one 503 key_unavailable in an
# ASan pass), and a network HSM cluster shows it on another member only
# after it synchronised. p11fault's "hide LABEL MS" makes the lag
# certain: the server's searches in quick succession (the group's loads)
# miss the object, one after a pause of MS ms with no search (the
# request's search again after its 100 ms pause) finds it. The admin
# commands see the token as it is: only the server's searches lag.
adm() { GS_P11FAULT_CONTROL= gs "$@"; }
control() { printf '%s\n' "$@" > "$ctl.tmp" && mv -f "$ctl.tmp" "$ctl"; }
# hidden_from_load KIND VERSION: the request's load missed the version
# and its search again found it (the log says which). A load that
# waited 80 ms between two searches (a very slow run) found it and shows
# nothing: then the caller tries with another version.
hidden_from_load() { grep -q "key version found at a search again\" kind=\"$1\" version=$2 " "$work/server.log"; }

# ---- a secret key version the load did not see ----
for try in 1 2 3 4; do
  adm secret rotate eng > "$work/s2.out" 2>&1 || fail "secret rotate: $(cat "$work/s2.out")"
  v=$(grep -o 'version [0-9]*' "$work/s2.out" | head -1 | cut -d' ' -f2)
  [ -n "$v" ] || fail "secret rotate said: $(cat "$work/s2.out")"
  control "hide gs:secret:eng:v$v 80"
  unwrap_as alice group-secret
  [ "$(json_get "$work/body" secret_version)" = "$v" ] ||
    fail "group-secret answer names another secret version than $v: $(head -c 300 "$work/body")"
  control ""
  if hidden_from_load "secret key" "$v"; then break; fi
  [ "$try" = 4 ] && fail "secret key version $v was never hidden from the group's load (the test shows nothing)"
  echo "note: the load came after the lag; again with a new version"
done
ok "secret key version $v hidden from the group's load: found by the request's search again"

# ---- a group key version (the current one) the load did not see ----
for try in 1 2 3; do
  adm group rotate eng > "$work/g2.out" 2>&1 || fail "group rotate: $(cat "$work/g2.out")"
  gv=$(grep -o 'version [0-9]*' "$work/g2.out" | head -1 | cut -d' ' -f2)
  [ -n "$gv" ] || fail "group rotate said: $(cat "$work/g2.out")"
  adm group show eng --cert > "$work/cur.pem"
  openssl rand 32 > "$work/cek.bin"
  openssl pkeyutl -encrypt -certin -inkey "$work/cur.pem" -pkeyopt rsa_padding_mode:oaep \
    -in "$work/cek.bin" -out "$work/cek.enc"
  printf '{"encrypted_key":"%s","algorithm":"RSA-OAEP","deliver":"tls"}' "$(b64 "$work/cek.enc")" > "$work/req-cur.json"
  control "hide gs:group:eng:v$gv 80"
  expect_status 200 "" "unwrap to group key version $gv hidden from the load" -- \
    c alice --data-binary @"$work/req-cur.json" "$base/v1/groups/eng/unwrap"
  control ""
  if hidden_from_load "group key" "$gv"; then break; fi
  [ "$try" = 3 ] && fail "group key version $gv was never hidden from the group's load (the test shows nothing)"
  echo "note: the load came after the lag; again with a new version"
done
ok "group key version $gv hidden from the group's load: found by the request's search again"

# ---- a version truly absent: 503 at once, searched again once ----
adm secret rotate eng > "$work/s3.out" 2>&1 || fail "secret rotate: $(cat "$work/s3.out")"
v3=$(grep -o 'version [0-9]*' "$work/s3.out" | head -1 | cut -d' ' -f2)
control "hide gs:secret:eng:v$v3"
n0=$(grep -c "not found at a search again" "$work/server.log" || true)
printf '{"recipient_info":"%s","deliver":"group-secret"}' "$(b64 "$work/ri.der")" > "$work/req-gs.json"
# six requests back to back on one connection: one search again (two if
# the requests took longer than its 2 s gap), not six
c alice --data-binary @"$work/req-gs.json" -w '\n%{http_code}\n' \
  "$base/v1/groups/eng/unwrap" "$base/v1/groups/eng/unwrap" "$base/v1/groups/eng/unwrap" \
  "$base/v1/groups/eng/unwrap" "$base/v1/groups/eng/unwrap" "$base/v1/groups/eng/unwrap" > "$work/absent.out"
[ "$(grep -c '^503$' "$work/absent.out")" = 6 ] || fail "absent secret key version: $(cat "$work/absent.out")"
[ "$(grep -c '"code":"key_unavailable"' "$work/absent.out")" = 6 ] ||
  fail "absent secret key version, not key_unavailable: $(cat "$work/absent.out")"
n1=$(grep -c "not found at a search again" "$work/server.log" || true)
[ $((n1 - n0)) -ge 1 ] && [ $((n1 - n0)) -le 2 ] ||
  fail "six requests for an absent version searched again $((n1 - n0)) times (wanted once, twice at most)"
ok "absent secret key version $v3: 503 key_unavailable, searched again $((n1 - n0)) time(s) for 6 requests"
control ""

# ---- a search again is no sample of the token queue's service time ----
# The key holder sheds a request whose expected wait (the work queued
# ahead of it from other clients, times the measured time a turn)
# exceeds [server] max_queue_ms: 503 overloaded. A search again pauses
# 120 ms; taken as a sample (here the first since the start, taken
# whole) the queue expected 120 ms and more a turn for every unwrap and
# shed those queued behind another. One token worker; three unwraps
# (each first a light view, then its unwrap) arrive while a request for
# the absent version searches again, and queue behind it and each other.
# (Without the fix this shed one when they came during the pause; when
# they come later there is nothing to see, never a failure.)
stop_server
sed -i -e 's/^\[server\]$/[server]\nmax_queue_ms = 110/' -e 's/^\[hsm\]$/[hsm]\nworkers = 1/' "$conf"
start_server
# queue_behind_search: alice's group-secret unwrap for the hidden current
# secret (a search again: 503 key_unavailable, in q-first.*), and 0.1 s
# later bob's, dave's and erin's tls unwraps (q-NAME.*), all at once.
queue_behind_search() {
  local q pids
  control "hide gs:secret:eng:v$v3"
  c alice --data-binary @"$work/req-gs.json" -o "$work/q-first.out" -w '%{http_code}\n' \
    "$base/v1/groups/eng/unwrap" > "$work/q-first.code" &
  pids=($!)
  sleep 0.1
  for q in bob dave erin; do
    c "$q" --data-binary @"$work/req-tls.json" -o "$work/q-$q.out" -w '%{http_code}\n' \
      "$base/v1/groups/eng/unwrap" > "$work/q-$q.code" &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  control ""
}
queue_behind_search
[ "$(cat "$work/q-first.code")" = 503 ] && grep -q '"code":"key_unavailable"' "$work/q-first.out" ||
  fail "absent secret key version: $(cat "$work/q-first.code") $(head -c 300 "$work/q-first.out")"
for q in bob dave erin; do
  [ "$(cat "$work/q-$q.code")" = 200 ] ||
    fail "unwrap as $q beside a search again: $(cat "$work/q-$q.code") $(head -c 300 "$work/q-$q.out")"
done
ok "three unwraps beside a search again with one token worker: 200 (its pause is no service-time sample)"
# A database failure's time is no sample either. Another process holds
# SQLite's write lock: a member change waits the 5 s busy timeout and is
# answered 503 store_unavailable. Its 5 s, weighed into the token queue's
# average (well under a millisecond a turn), made the queue expect about
# 300 ms a turn, and unwraps of other clients queued together were shed
# 503 overloaded behind a healthy token (as in a PostgreSQL outage, each
# request waiting up to [db] timeout). (Shedding is judged when a request
# is queued: the three queue together behind a search again's pause.)
/usr/bin/python3 -c 'import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
open(sys.argv[2], "w").close()
time.sleep(7)
db.execute("ROLLBACK")' "$work/groupsrv.db" "$work/locked" & holder=$!
for _ in $(seq 1 50); do [ -f "$work/locked" ] && break; sleep 0.1; done
[ -f "$work/locked" ] || fail "the lock holder did not start"
expect_status 503 store_unavailable "a member change while another process holds the write lock" -- \
  c admin -X PUT --data-binary '{"role":"member"}' "$base/v1/groups/eng/members/late@example.org"
kill "$holder" 2>/dev/null || true
wait "$holder" 2>/dev/null || true
# the three queue together behind a search again's pause, as above
queue_behind_search
for q in bob dave erin; do
  [ "$(cat "$work/q-$q.code")" = 200 ] ||
    fail "unwrap as $q after a database failure: $(cat "$work/q-$q.code") $(head -c 300 "$work/q-$q.out")"
done
ok "three unwraps at once after a 5 s database failure with one token worker: 200 (no service-time sample)"
stop_server
sed -i -e '/^max_queue_ms = 110$/d' -e '/^workers = 1$/d' "$conf"
start_server

# ---- one search again at a time per version, under concurrent load ----
# Four token workers. A version truly absent: eight requests at once
# search the token again once, not once per worker (each worker paused
# 120 ms at every gap, a stall of the whole key holder); every one is 503
# key_unavailable. A version only lagging (p11fault's "lag LABEL MS": hidden
# for 60 ms from the first search, whatever searches come between, as
# SoftHSM's write after its unlock, or a cluster's synchronisation, is
# seen by concurrent requests): four group-secret
# requests at once (every group-secret request wants the secret just
# made) all get 200, one of them searching, the others waiting for its
# outcome; the pause is not in the token time of
# groupsrv_unwrap_duration_seconds (docs/api.md).
stop_server
sed -i -e 's/^\[hsm\]$/[hsm]\nworkers = 4/' "$conf"
start_server
burst() { # burst N DELIVER PREFIX: N unwraps as alice at once
  local i pids=()
  printf '{"recipient_info":"%s","deliver":"%s"}' "$(b64 "$work/ri.der")" "$2" > "$work/req-burst.json"
  for i in $(seq 1 "$1"); do
    c alice --data-binary @"$work/req-burst.json" -o "$work/$3-$i.out" -w '%{http_code}\n' \
      "$base/v1/groups/eng/unwrap" > "$work/$3-$i.code" &
    pids+=($!)
  done
  wait "${pids[@]}" || true
}
control "hide gs:secret:eng:v$v3"
n0=$(grep -c "not found at a search again" "$work/server.log" || true)
t0=$(date +%s%N)
burst 8 group-secret absent
t1=$(date +%s%N)
control ""
for i in $(seq 1 8); do
  [ "$(cat "$work/absent-$i.code")" = 503 ] && grep -q '"code":"key_unavailable"' "$work/absent-$i.out" ||
    fail "absent version under load, request $i: $(cat "$work/absent-$i.code") $(head -c 300 "$work/absent-$i.out")"
done
n1=$(grep -c "not found at a search again" "$work/server.log" || true)
# within one 2 s gap exactly one search again; a slower burst may need two
if [ $(((t1 - t0) / 1000000)) -lt 1900 ]; then
  [ $((n1 - n0)) = 1 ] || fail "8 requests at once for an absent version: $((n1 - n0)) searches again (want 1)"
else
  [ $((n1 - n0)) -le 2 ] || fail "8 requests for an absent version: $((n1 - n0)) searches again (want at most 2)"
fi
ok "8 requests at once for an absent version on 4 workers: 503 key_unavailable, $((n1 - n0)) search(es) again"

lat_sum() { c admin "$base/metrics" | awk '$1 == "groupsrv_unwrap_duration_seconds_sum" {print $2}'; }
l0=$(lat_sum) # before the rotation: a request after it loads the group, seeing the new version
adm secret rotate eng > "$work/s4.out" 2>&1 || fail "secret rotate: $(cat "$work/s4.out")"
v4=$(grep -o 'version [0-9]*' "$work/s4.out" | head -1 | cut -d' ' -f2)
[ -n "$v4" ] || fail "secret rotate said: $(cat "$work/s4.out")"
control "lag gs:secret:eng:v$v4 60"
burst 4 group-secret lag
control ""
for i in $(seq 1 4); do
  [ "$(cat "$work/lag-$i.code")" = 200 ] && [ "$(json_get "$work/lag-$i.out" secret_version)" = "$v4" ] ||
    fail "lagging version under load, request $i: $(cat "$work/lag-$i.code") $(head -c 300 "$work/lag-$i.out")"
done
n=$(grep -c "key version found at a search again\" kind=\"secret key\" version=$v4 " "$work/server.log" || true)
[ "$n" -le 1 ] || fail "4 requests at once for a lagging version searched again $n times (want at most 1)"
l1=$(lat_sum)
# The search again paused 120 ms (searches=2): not token time.
if grep -q "key version found at a search again\" kind=\"secret key\" version=$v4 searches=2" "$work/server.log"; then
  /usr/bin/python3 -c 'import sys; sys.exit(0 if float(sys.argv[2]) - float(sys.argv[1]) < 0.12 else 1)' "$l0" "$l1" ||
    fail "groupsrv_unwrap_duration_seconds_sum grew by $l0 -> $l1 for 4 unwraps: a search again's pause counted as token time"
fi
ok "4 requests at once for a version the token shows late: 200 each, $n search(es) again, its pause not token time"

# ---- a search again never pauses past the request's deadline ----
# [server] timeout = 1: a request's deadline is 1 s after the network
# process passes it on; at the deadline its client is answered 503
# token_unavailable. One token worker, the current secret hidden, and
# every search of the token made slower (1.1 s) than the request's whole
# time: the group's load searches first (a group lacking a key is loaded
# afresh at each request), so the search again begins with less than its
# first pause left (past the deadline, in fact). The window is wide by construction: the
# request need only start before its deadline, no timing to hit (a
# SIGSTOP of the key holder timed to leave it less than 120 ms was
# tried before: it missed on a loaded machine). The search is cut short
# (the log says so) instead of pausing on past the deadline for a client
# already answered, which the search again did before.
stop_server
cp "$conf" "$work/conf.saved"
# the first timeout line is [server]'s; one network thread, whose view of
# the group the first unwrap warms (each thread keeps its own: another
# would ask the key holder for one, a load with slow searches, first)
sed -i -e 's/^workers = 4$/workers = 1/' -e '0,/^timeout = .*/s//timeout = 1/' -e 's/^threads = .*/threads = 1/' "$conf"
start_server
printf '{"recipient_info":"%s","deliver":"group-secret"}' "$(b64 "$work/ri.der")" > "$work/req-gs.json"
control "hide gs:secret:eng:v$v4" # before the group's load: the token worker's cache keeps what it found
unwrap_as alice tls # warms the network process's view of the group: the unwrap below is passed on at once
control "hide gs:secret:eng:v$v4" "delay C_FindObjectsInit 1100"
log0=$(wc -l < "$work/server.log")
# newlog PATTERN: the server's log since the request says it (a file, not
# a pipe: grep -q ends the pipe's writer early, a failure under pipefail)
newlog() { tail -n +$((log0 + 1)) "$work/server.log" > "$work/newlog.txt" && grep -q "$1" "$work/newlog.txt"; }
c alice --data-binary @"$work/req-gs.json" -o "$work/dl.out" -w '%{http_code}' "$base/v1/groups/eng/unwrap" \
  > "$work/dl.code" || fail "curl: the unwrap with a slow token search"
# the key holder goes on after its client's answer: its log, within 30 s
for i in $(seq 1 300); do
  newlog "at a search again\" kind=\"secret key\" version=$v4 \|search again cut short by the request's deadline\" kind=\"secret key\" version=$v4 " &&
    break
  sleep 0.1
done
control ""
newlog "search again cut short by the request's deadline\" kind=\"secret key\" version=$v4 " ||
  fail "a search again with less than its pause left before the request's deadline was not cut short: $(grep -a "search again.*version=$v4 " "$work/newlog.txt" | tail -2)"
[ "$(cat "$work/dl.code")" = 503 ] ||
  fail "a search again cut short by its deadline: $(cat "$work/dl.code") $(head -c 300 "$work/dl.out")"
ok "a search again with less than its pauses left before the request's deadline: cut short, 503 $(json_get "$work/dl.out" error code)"
stop_server

# ---- a SIGTERM while the server starts ----
# serve added its signal events once both children were ready: a SIGTERM
# before then (a service manager's stop right after its start; this
# test's start_server and stop_server met it under load, "the server
# exited non-zero at SIGTERM") killed it by signal 15, its children left
# to find it gone. The key holder's login made slow (1.5 s), the SIGTERM
# comes while it starts, for certain, once serve has forked it: serve
# starts, stops, exit 0.
control "delay C_Login 1500"
mark=$(wc -c < "$work/server.log")
"$BIN/groupsrv" -c "$conf" serve >>"$work/server.log" 2>&1 &
early_pid=$!
for i in $(seq 1 200); do
  pgrep -P "$early_pid" >/dev/null && break
  sleep 0.05
done
kill -TERM "$early_pid"
rc=0
wait "$early_pid" || rc=$?
control ""
if [ "$rc" != 0 ] && tail -c +"$((mark + 1))" "$work/server.log" | has_line "Address already in use"; then
  echo "note: the port was taken meanwhile (start_server chooses another): a SIGTERM while starting not checked"
else
  [ "$rc" = 0 ] || fail "serve exited $rc at a SIGTERM while it started (want 0): $(tail -n 3 "$work/server.log")"
  ok "a SIGTERM while serve starts: it stops once started, exit 0"
fi
cp "$work/conf.saved" "$conf"
sed -i -e '/^workers = 4$/d' "$conf"
start_server

# ---- finding 8: a SAN e-mail that cannot be used, and a CN naming a member ----
longmail=$(printf 'a%.0s' $(seq 1 250))@example.org
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=nocert@example.org" \
  -keyout "$certs/san.key" -out "$work/san.csr" 2>/dev/null
printf 'subjectAltName=email:%s\nextendedKeyUsage=clientAuth\n' "$longmail" > "$work/san.ext"
openssl x509 -req -in "$work/san.csr" -CA "$certs/tca.pem" -CAkey "$certs/tca.key" -CAcreateserial -days 1 \
  -extfile "$work/san.ext" -out "$certs/san.pem" 2>/dev/null
alines=$(wc -l < "$work/audit.jsonl")
expect_status 401 no_identity "a 262-byte SAN e-mail with CN=nocert@example.org" -- \
  curl -sS --cacert "$certs/tca.pem" --cert "$certs/san.pem" --key "$certs/san.key" --data-binary @"$work/req-tls.json" "$url"
tail -n +"$((alines + 1))" "$work/audit.jsonl" | has_line '"identity":"nocert@example.org"' && fail "the CN was audited as the identity"
ok "no fallback to the CN when the SAN has an e-mail address"
# A name whose bytes are not UTF-8, as stock openssl makes it: a CN of
# Latin-1 bytes as a T61String (string_mask = default), a SAN e-mail with
# such a byte. No identity (401), not a 503 audit_unavailable for a record
# that jansson cannot take; the server goes on serving.
printf '[req]\ndistinguished_name = dn\nstring_mask = default\n[dn]\n' > "$work/t61.cnf"
openssl req -new -config "$work/t61.cnf" -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=$(printf 'al\344ce@example.org')" -keyout "$certs/t61.key" -out "$work/t61.csr" 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' > "$work/t61.ext"
openssl x509 -req -in "$work/t61.csr" -CA "$certs/tca.pem" -CAkey "$certs/tca.key" -CAcreateserial -days 1 \
  -extfile "$work/t61.ext" -out "$certs/t61.pem" 2>/dev/null
openssl asn1parse -in "$certs/t61.pem" | grep -q T61STRING || fail "openssl made no T61String CN"
printf 'subjectAltName=email:%s\nextendedKeyUsage=clientAuth\n' "$(printf 'al\344ce@example.org')" > "$work/san8.ext"
openssl x509 -req -in "$work/san.csr" -CA "$certs/tca.pem" -CAkey "$certs/tca.key" -CAcreateserial -days 1 \
  -extfile "$work/san8.ext" -out "$certs/san8.pem" 2>/dev/null
expect_status 401 no_identity "a T61String CN of Latin-1 bytes" -- \
  curl -sS --cacert "$certs/tca.pem" --cert "$certs/t61.pem" --key "$certs/t61.key" --data-binary @"$work/req-tls.json" "$url"
expect_status 401 no_identity "a SAN e-mail with a byte that is no UTF-8" -- \
  curl -sS --cacert "$certs/tca.pem" --cert "$certs/san8.pem" --key "$certs/san.key" --data-binary @"$work/req-tls.json" "$url"
expect_status 200 "" "healthz after names that are not UTF-8" -- anon "$base/healthz"

# ---- finding 7: a CRL of the root revoking an intermediate CA ----
mkdir -p "$work/pki"
mini_ca() { # mini_ca DIR: an openssl ca directory
  mkdir -p "$1/new"; : > "$1/index.txt"; echo 1000 > "$1/serial"; echo 1000 > "$1/crlnumber"
  cat > "$1/ca.cnf" <<CNF
[ca]
default_ca = t
[t]
dir = $1
database = \$dir/index.txt
new_certs_dir = \$dir/new
serial = \$dir/serial
crlnumber = \$dir/crlnumber
default_md = sha256
default_crl_days = 1
policy = p
copy_extensions = copy
[p]
commonName = supplied
[v3_ca]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
CNF
}
mini_ca "$work/pki/root"; mini_ca "$work/pki/int"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=findings root" \
  -keyout "$work/pki/root.key" -out "$work/pki/root.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=findings intermediate" \
  -keyout "$work/pki/int.key" -out "$work/pki/int.csr" 2>/dev/null
openssl ca -batch -config "$work/pki/root/ca.cnf" -cert "$work/pki/root.pem" -keyfile "$work/pki/root.key" \
  -extensions v3_ca -days 1 -in "$work/pki/int.csr" -out "$work/pki/int.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=ivan@example.org" \
  -addext "subjectAltName=email:ivan@example.org" -addext "extendedKeyUsage=clientAuth" \
  -keyout "$certs/ivan.key" -out "$work/pki/ivan.csr" 2>/dev/null
openssl ca -batch -config "$work/pki/int/ca.cnf" -cert "$work/pki/int.pem" -keyfile "$work/pki/int.key" \
  -days 1 -in "$work/pki/ivan.csr" -out "$certs/ivan.pem" 2>/dev/null
cat "$certs/ivan.pem" "$work/pki/int.pem" > "$certs/ivan-chain.pem"
gs member add eng ivan@example.org --cert "$certs/ivan.pem" >/dev/null
crls() { # crls: fresh CRLs of both CAs
  openssl ca -config "$work/pki/root/ca.cnf" -cert "$work/pki/root.pem" -keyfile "$work/pki/root.key" \
    -gencrl -out "$work/pki/root.crl" 2>/dev/null
  openssl ca -config "$work/pki/int/ca.cnf" -cert "$work/pki/int.pem" -keyfile "$work/pki/int.key" \
    -gencrl -out "$work/pki/int.crl" 2>/dev/null
  cat "$work/pki/root.pem" "$work/pki/int.pem" "$work/pki/root.crl" "$work/pki/int.crl" > "$certs/clients.pem"
}
reload() {
  local n
  n=$(grep -c "reloaded TLS" "$work/server.log" || true)
  kill -HUP "$srv_pid"
  for _ in $(seq 1 50); do [ "$(grep -c "reloaded TLS" "$work/server.log" || true)" -gt "$n" ] && return 0; sleep 0.1; done
  fail "SIGHUP did not reload"
}
ivan() { curl -sS --cacert "$certs/tca.pem" --cert "$certs/ivan-chain.pem" --key "$certs/ivan.key" "$@"; }
crls
reload
expect_status 200 "" "ivan through an intermediate, CRLs of both CAs current" -- ivan --data-binary @"$work/req-tls.json" "$url"
# The intermediate not in the file, only sent by curl: each new connection
# of one curl offers its session again, and over TLS 1.3 it is resumed
# from a ticket, which carries no chain of OpenSSL's own; it is trusted as
# the first was (tls.c keeps the intermediates in the ticket: without
# that, 200 401 401). Over TLS 1.2 too (unit_tls resumes both in memory).
cat "$work/pki/root.pem" "$work/pki/root.crl" "$work/pki/int.crl" > "$certs/clients.pem"
reload
for max in 1.2 1.3; do
  codes=$(ivan -v --tls-max "$max" -H 'Connection: close' --data-binary @"$work/req-tls.json" -w '%{http_code} ' \
    -o /dev/null "$url" -o /dev/null "$url" -o /dev/null "$url" 2>"$work/curl-resume.err") || true
  reused=$(grep -ci 're-\?using session' "$work/curl-resume.err" || true)
  [ "$codes" = "200 200 200 " ] && [ "$reused" -ge 2 ] ||
    fail "ivan's sessions resumed over TLS $max (intermediate sent, not in the file): codes '$codes', resumed $reused"
done
ok "ivan's resumed sessions trusted through the intermediate he sent, TLS 1.2 and 1.3"
openssl ca -config "$work/pki/root/ca.cnf" -cert "$work/pki/root.pem" -keyfile "$work/pki/root.key" \
  -revoke "$work/pki/int.pem" 2>/dev/null
crls
openssl verify -crl_check_all -CAfile "$certs/clients.pem" -untrusted "$work/pki/int.pem" "$certs/ivan.pem" >/dev/null 2>&1 &&
  fail "test set-up: openssl verify -crl_check_all accepts the chain"
reload
expect_status 401 untrusted_certificate "ivan after the root's CRL revoked his intermediate CA" -- \
  ivan --data-binary @"$work/req-tls.json" "$url"
ok "all findings hold"
stop_server
