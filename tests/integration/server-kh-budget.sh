#!/usr/bin/env bash
# server-kh-budget.sh BIN SRC P11FAULT: what a (compromised) network
# process can have the key holder hold for one link is bounded by
# [server] keyholder_queue_max. khdrive --budget (tests/tools/khdrive.c)
# forks the key holder with one token worker on a slow token (p11fault's
# model: 1 s per private-key operation) and shedding off (max_queue_ms =
# 0): a member's unwrap holds the worker, and a non-member's batches sent
# meanwhile are queued up to the budget and refused 503 overloaded at
# once beyond it; every frame answered exactly once, the budget given
# back as the queue drains. States only, no timing assertions. About 5 s.
set -euo pipefail
BIN=$1 SRC=$2 SRV_MODULE=$3
[ -f "$SRV_MODULE" ] || { echo "FAIL: no p11fault module at $SRV_MODULE" >&2; exit 1; }
export SRV_MEMBERS="alice" SRV_WORKERS=1
. "$SRC/tests/integration/server-lib.sh"
sed -e 's/^\[server\]$/[server]\nkeyholder_queue_max = 8192\nmax_queue_ms = 0/' "$conf" > "$work/kh.conf"
GS_P11FAULT_SERVICE_US=1000000 "$BIN/khdrive" --budget "$work/kh.conf" "$work/ri.der" alice@example.org \
  "$certs/alice@example.org.pem" nobody@example.org > "$work/khdrive.out" 2>&1 ||
  { cat "$work/khdrive.out"; fail "khdrive --budget"; }
cat "$work/khdrive.out"
grep -q '^FAIL' "$work/khdrive.out" && fail "khdrive --budget"
"$BIN/groupsrv" -c "$conf" audit verify >/dev/null || fail "the driven key holder's audit chain"
ok "a link's requests held to [server] keyholder_queue_max in the key holder"
