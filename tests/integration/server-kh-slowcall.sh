#!/usr/bin/env bash
# server-kh-slowcall.sh BIN SRC P11FAULT: one slow request does not make
# the link to the key holder "stalled" for everyone else.
# A slow token (tests/p11fault's model: 700 ms per private-key operation,
# two engines, as a smartcard reader pair) and [server] timeout = 2: alice's
# 10-item unwrap-batch takes about 7 s at one token worker and is answered
# 503 after 2 s, with nothing else asked meanwhile, so nothing was read from
# the key holder since it was made: the link counts as stalled. The key
# holder is not stuck, though (its other workers and the second engine are
# free). Bob's single unwrap right after must be served (it goes as the
# stall's probe at once), not refused 503 for up to a whole [server]
# timeout because of alice's one request.
# States only, no timing assertions (the margins: bob asks within the 5 s
# the batch still runs, his unwrap takes 0.7 s of his 2 s).
set -euo pipefail
BIN=$1 SRC=$2 SRV_MODULE=$3
[ -f "$SRV_MODULE" ] || { echo "FAIL: no p11fault module at $SRV_MODULE" >&2; exit 1; }
export GS_P11FAULT_SERVICE_US=700000 GS_P11FAULT_ENGINES=2
SRV_METRICS=any
SRV_THREADS=1 # one link
. "$SRC/tests/integration/server-lib.sh"
sed -i -e 's/^timeout = 10$/timeout = 2/' -e 's/^\[server\]$/[server]\nmax_queue_ms = 0/' "$conf"
start_server
ri=$(b64 "$work/ri.der")
printf '{"recipient_info":"%s"}' "$ri" > "$work/one.json"
/usr/bin/python3 -c 'import json,sys; print(json.dumps({"deliver":"tls","items":[{"recipient_info":sys.argv[1]}]*10}))' \
  "$ri" > "$work/batch.json"
metric() { anon -m 60 "$base/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
expect_status 200 "" "bob's unwrap before" -- c bob --data-binary @"$work/one.json" "$base/v1/groups/eng/unwrap"

st0=$(metric 'groupsrv_keyholder_refused_total{reason="stalled"}')
[ -n "$st0" ] || fail "no groupsrv_keyholder_refused_total in /metrics"
code=$(c alice -o /dev/null -w '%{http_code}' -m 60 --data-binary @"$work/batch.json" "$base/v1/groups/eng/unwrap-batch" || true)
[ "$code" = 503 ] || fail "alice's 7 s batch with [server] timeout = 2: $code, not 503"
grep -q 'the key holder answered nothing in \[server\] timeout' "$work/server.log" ||
  fail "the slow batch did not make the link stalled (the test's premise)"
code=$(c bob -o /dev/null -w '%{http_code}' -m 60 --data-binary @"$work/one.json" "$base/v1/groups/eng/unwrap" || true)
st1=$(metric 'groupsrv_keyholder_refused_total{reason="stalled"}')
[ "$code" = 200 ] ||
  fail "bob's unwrap while alice's slow batch runs: $code ($((st1 - st0)) refused as stalled), not 200"
grep -q 'the key holder answers again' "$work/server.log" || fail "no log line for the link taking work again"
ok "one slow request stalls the link only until the next request's answer: bob served (200)"
