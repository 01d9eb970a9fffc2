#!/usr/bin/env bash
# server-inline.sh BIN SRC P11FAULT: the key holder's I/O loop runs short
# unwraps itself (tokenq_run_here, keyholder.c) when every token worker
# sleeps: with the zero-cost token (tests/p11fault, GS_P11FAULT_ZERO_COST)
# an unwrap measures a few microseconds, so after a warm-up every unwrap
# of a lone client runs there. A request that must search the token again
# (a key version the group's load did not see: p11fault's "hide LABEL MS")
# would pause the loop up to 120 ms; it is given back to a token worker
# before anything of it is audited or answered, and that worker runs it
# from the start. Checked: the answer (200 once found; 503 key_unavailable
# for a version truly absent), exactly one audit record per request (a
# record made by the loop's pass too would be a second), and the debug
# line that says it was given back. Counts, never timings. An unwrap the
# token failed on the loop is given back too (the token's health check
# that follows is no short work): a worker runs it again.
# Each phase fails unless one of its requests was given back: a run in
# which the loop never took the request would pass without the give-back.
# Rate limits are off: the queue's measured time per unwrap comes from
# unwraps that reach the token alone (a 429, like any refusal, is no
# sample of it: 5fd9ffd), so bob's warm-up must be answered 200, which a
# limit of one request a second would not allow. That a given-back
# request is charged once (kh_job.rl_taken) is therefore not checked here.
set -euo pipefail
BIN=$1 SRC=$2 SRV_MODULE=$3
[ -f "$SRV_MODULE" ] || { echo "FAIL: no p11fault module at $SRV_MODULE" >&2; exit 1; }
export SRV_LOG_LEVEL=debug SRV_WORKERS=2 SRV_MEMBERS="alice"
. "$SRC/tests/integration/server-lib.sh"
ctl=$work/p11fault.ctl # absent until written: pass-through
export GS_P11FAULT_CONTROL=$ctl GS_P11FAULT_ZERO_COST=1
adm() { GS_P11FAULT_CONTROL= GS_P11FAULT_ZERO_COST= gs "$@"; }
control() { printf '%s\n' "$@" > "$ctl.tmp" && mv -f "$ctl.tmp" "$ctl"; }
# Group "ops" for the warm-up: its unwraps keep the measured time short
# while eng lacks a key version (a group lacking one is loaded afresh,
# with a token search, at each of its requests). bob's certificate for
# ops is issued to its own directory.
gs group create ops --address ops@example.org --key rsa:2048 --methods tls > "$work/ops-create.out"
gs group show ops --cert > "$work/ops.pem"
mkdir -p "$certs/ops"
gs member add ops bob@example.org --issue-cert --out "$certs/ops" >/dev/null
openssl rand 32 > "$work/ops-cek.bin"
openssl pkeyutl -encrypt -certin -inkey "$work/ops.pem" -pkeyopt rsa_padding_mode:oaep \
  -in "$work/ops-cek.bin" -out "$work/ops-cek.enc"
printf '{"encrypted_key":"%s","algorithm":"RSA-OAEP","deliver":"tls"}' "$(b64 "$work/ops-cek.enc")" > "$work/req-ops.json"
start_server
url=$base/v1/groups/eng/unwrap
printf '{"recipient_info":"%s"}' "$(b64 "$work/ri.der")" > "$work/req-tls.json"
# warm_up: 150 unwraps to ops on one kept-alive connection, one at a
# time, so that the token queue's measured time per unwrap is short (200,
# each answered 200)
warm_up() {
  local urls=() i
  for i in $(seq 1 150); do urls+=("$base/v1/groups/ops/unwrap"); done
  curl -sS --cacert "$certs/tca.pem" --cert "$certs/ops/bob@example.org.pem" --key "$certs/ops/bob@example.org.key" \
    --data-binary @"$work/req-ops.json" -o /dev/null -w '%{http_code}\n' "${urls[@]}" > "$work/warm.codes"
  [ "$(grep -cE '^200$' "$work/warm.codes")" = 150 ] || fail "warm-up: $(sort "$work/warm.codes" | uniq -c)"
}
# records VERSION OUTCOME: alice's unwrap records for group key VERSION
# with OUTCOME (*: any)
records() {
  /usr/bin/python3 -c 'import json, sys
n = 0
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("action") == "unwrap" and r.get("identity") == "alice@example.org" and \
       str(r.get("key_version")) == sys.argv[2] and sys.argv[3] in ("*", r.get("outcome")):
        n += 1
print(n)' "$work/audit.jsonl" "$1" "$2"
}
given_back() { grep -c "request given back to a token worker" "$work/server.log" || true; }
# new_version: a group rotate made by another process, and a request to
# the new (current) key version in req-cur.json; prints the version
new_version() {
  adm group rotate eng > "$work/g.out" 2>&1 || fail "group rotate: $(cat "$work/g.out")"
  local gv
  gv=$(grep -o 'version [0-9]*' "$work/g.out" | head -1 | cut -d' ' -f2)
  [ -n "$gv" ] || fail "group rotate said: $(cat "$work/g.out")"
  adm group show eng --cert > "$work/cur.pem"
  openssl rand 32 > "$work/cek.bin"
  openssl pkeyutl -encrypt -certin -inkey "$work/cur.pem" -pkeyopt rsa_padding_mode:oaep \
    -in "$work/cek.bin" -out "$work/cek.enc"
  printf '{"encrypted_key":"%s","algorithm":"RSA-OAEP","deliver":"tls"}' "$(b64 "$work/cek.enc")" > "$work/req-cur.json"
  echo "$gv"
}

# ---- a version the load did not see: found by a worker's search again ----
for try in 1 2 3 4 5; do
  gv=$(new_version)
  b0=$(given_back)
  control "hide gs:group:eng:v$gv 80"
  warm_up
  expect_status 200 "" "unwrap to group key version $gv hidden from the load" -- c alice --data-binary @"$work/req-cur.json" "$url"
  control ""
  grep -q "key version found at a search again\" kind=\"group key\" version=$gv " "$work/server.log" ||
    { echo "note: the load came after the lag; again with a new version"; continue; }
  [ "$(records "$gv" '*')" = 1 ] && [ "$(records "$gv" ok)" = 1 ] ||
    fail "version $gv: $(records "$gv" '*') audit records of alice's one unwrap, $(records "$gv" ok) ok (want 1 ok)"
  [ "$(given_back)" -gt "$b0" ] && break
  echo "note: the unwrap was not run by the I/O loop (its measured time was long: a loaded machine); again"
done
[ "$(given_back)" -gt 0 ] ||
  fail "no request ran on the I/O loop in 5 tries (unwraps measured over TQ_INLINE_US, 100 us): the give-back was not exercised"
ok "a key version hidden from the load: 200, one audit record, searched again by a token worker ($(given_back) given back)"

# ---- a version truly absent: 503 key_unavailable, one audit record ----
# The same version at each try: the loop gives it back before the quiet
# after a search in vain (searchq.h) is looked at, a worker answers it.
gv=$(new_version)
g0=$(given_back) n=0
control "hide gs:group:eng:v$gv"
for try in 1 2 3 4 5; do
  warm_up
  expect_status 503 key_unavailable "unwrap to group key version $gv absent from the token" -- \
    c alice --data-binary @"$work/req-cur.json" "$url"
  n=$((n + 1))
  [ "$(records "$gv" '*')" = "$n" ] && [ "$(records "$gv" key_unavailable)" = "$n" ] ||
    fail "version $gv absent: $(records "$gv" '*') audit records of alice's $n unwraps (want $n, key_unavailable)"
  [ "$(given_back)" -gt "$g0" ] && break
  echo "note: the unwrap was not run by the I/O loop; again"
done
control ""
[ "$(given_back)" -gt "$g0" ] ||
  fail "no request for an absent version ran on the I/O loop in $n tries: the give-back was not exercised"
ok "a key version absent: 503 key_unavailable, one audit record per request ($(given_back) given back in all)"

# ---- a token failure met on the I/O loop: given back, not checked there ----
# The token health check that follows a failed call (some 26 token calls
# on a token that just failed, the audit log's room, perhaps a module
# re-initialisation) must not hold the I/O loop: the request is given
# back before anything of it is audited or answered, and the worker that
# runs it again calls the token afresh. One failed C_Decrypt: the loop's
# (200 from the worker, one audit record), or, not run by the loop, the
# worker's (503 token_unavailable, one record; again).
g0=$(given_back) n=0
for try in 1 2 3 4 5; do
  warm_up
  r0=$(records 1 '*')
  control "C_Decrypt CKR_DEVICE_ERROR 1"
  got=$(status c alice --data-binary @"$work/req-tls.json" "$url")
  control ""
  [ "$(records 1 '*')" = $((r0 + 1)) ] || fail "token failure: $(( $(records 1 '*') - r0 )) audit records of one unwrap (want 1)"
  if [ "$(given_back)" -gt "$g0" ]; then
    [ "$got" = 200 ] || fail "token failure given back: HTTP $got, wanted 200 (the worker calls the token again): $(head -c 300 "$work/body")"
    [ "$(records 1 ok)" -gt 0 ] || fail "token failure given back: no ok record"
    break
  fi
  [ "$got" = 503 ] && grep -q '"code":"token_unavailable"' "$work/body" ||
    fail "token failure on a worker: HTTP $got, wanted 503 token_unavailable: $(head -c 300 "$work/body")"
  echo "note: the unwrap was not run by the I/O loop; again"
done
[ "$(given_back)" -gt "$g0" ] ||
  fail "no unwrap that met a failed token on the I/O loop was given back in 5 tries"
ok "a token failure on the I/O loop: given back, 200 from a token worker, one audit record"

# ---- a token failure met by the I/O loop's group load: given back too ----
# The loop's own group cache is dropped after a failed call it gave back
# (hsm_item_fail marks it stale), so after a C_Decrypt failure the loop
# took, its next unwrap to eng loads eng afresh (token searches) on the
# loop; there C_FindObjectsInit fails (the hsm layer's retries take all
# three). The token health check must not run on the loop, nor the
# request be answered 503 though a worker holds eng: given back, 200
# from the worker, one audit record (nothing is audited before the
# load). A database change would not do: the network process's view of
# eng is refetched first, and a worker's load of it meets the failure.
done_=0
for try in 1 2 3 4 5; do
  warm_up
  control "C_Decrypt CKR_DEVICE_ERROR 1"
  b0=$(given_back)
  got=$(status c alice --data-binary @"$work/req-tls.json" "$url")
  control ""
  if [ "$(given_back)" -le "$b0" ]; then
    echo "note: the failed C_Decrypt was not the loop's; again"
    continue
  fi
  [ "$got" = 200 ] || fail "C_Decrypt given back: HTTP $got: $(head -c 300 "$work/body")"
  warm_up
  r0=$(records 1 '*') b0=$(given_back)
  control "C_FindObjectsInit CKR_DEVICE_ERROR 3"
  got=$(status c alice --data-binary @"$work/req-tls.json" "$url")
  control ""
  if [ "$(given_back)" -gt "$b0" ]; then
    [ "$got" = 200 ] || fail "group load failure given back: HTTP $got, wanted 200 (a worker holds the group): $(head -c 300 "$work/body")"
    [ "$(records 1 '*')" = $((r0 + 1)) ] || fail "group load failure: $(( $(records 1 '*') - r0 )) audit records of one unwrap (want 1)"
    done_=1
    break
  fi
  # not given back: the loop answered it (503 token_unavailable after its
  # own health check: the defect), or a worker ran it (200 from its cache,
  # or its load met the failure)
  [ "$got" = 200 ] || { [ "$got" = 503 ] && grep -q '"code":"token_unavailable"' "$work/body"; } ||
    fail "group load failure not given back: HTTP $got: $(head -c 300 "$work/body")"
  echo "note: the group load that failed was not given back (a worker's, or none by the loop); again"
done
[ "$done_" = 1 ] || fail "no unwrap whose group load failed on the I/O loop was given back in 5 tries"
ok "a token failure in the I/O loop's group load: given back, 200 from a token worker, one audit record"

# the I/O loop goes on serving: a plain unwrap afterwards
expect_status 200 "" "an unwrap afterwards" -- c alice --data-binary @"$work/req-tls.json" "$url"
audit_ok=$(GS_P11FAULT_CONTROL= GS_P11FAULT_ZERO_COST= "$BIN/groupsrv" -c "$conf" audit verify 2>&1) ||
  fail "audit verify: $audit_ok"
ok "the audit chain verifies"
stop_server
