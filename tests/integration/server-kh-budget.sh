#!/usr/bin/env bash
# server-kh-budget.sh BIN SRC P11FAULT: what a (compromised) network
# process can have the key holder hold for one link is bounded by
# [server] keyholder_queue_max. khdrive --budget (tests/tools/khdrive.c)
# forks the key holder with one token worker on a slow token (p11fault's
# model: 1 s per private-key operation) and shedding off (max_queue_ms =
# 0): a member's unwrap holds the worker, and a non-member's batches sent
# meanwhile are queued up to the budget and refused 503 overloaded at
# once beyond it; every frame answered exactly once, the budget given
# back as the queue drains. And the answers a link holds when they are
# not read: khdrive --answers asks for large ones (member lists of a
# group of 3000, none shed) and reads none; past 64 MiB unread the large ones are
# dropped, not held without bound. And khdrive --ratelimit: one bucket
# per member across the message types. States only, no timing
# assertions. About 12 s.
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

# Large answers, none read: group eng gets 3000 members (sqlite3: the
# admin commands would take minutes), the admin's member lists asked 700
# times on one link.
gid=$(sqlite3 "$work/groupsrv.db" "SELECT id FROM groups WHERE name = 'eng'")
sqlite3 "$work/groupsrv.db" "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
  INSERT INTO members (group_id, email, role, added) SELECT $gid, 'bulk' || i || '@example.org', 1, 0 FROM n" ||
  fail "sqlite3: the members"
sed -e 's/^\[server\]$/[server]\nmax_queue_ms = 0/' "$conf" > "$work/kh-answers.conf" # none shed
"$BIN/khdrive" --answers "$work/kh-answers.conf" admin@example.org "$certs/admin@example.org.pem" 700 > "$work/khdrive.out" 2>&1 ||
  { cat "$work/khdrive.out"; fail "khdrive --answers"; }
cat "$work/khdrive.out"
grep -q '^FAIL' "$work/khdrive.out" && fail "khdrive --answers"
ok "a link that reads no answers: the key holder holds a bounded amount of them"

# One rate-limit bucket per member, whatever the message type (khdrive
# --ratelimit: a bucket that does not refill during the test).
"$BIN/khdrive" --ratelimit "$conf" "$work/ri.der" alice@example.org "$certs/alice@example.org.pem" \
  > "$work/khdrive.out" 2>&1 || { cat "$work/khdrive.out"; fail "khdrive --ratelimit"; }
cat "$work/khdrive.out"
grep -q '^FAIL' "$work/khdrive.out" && fail "khdrive --ratelimit"
ok "a member's rate limit is not escaped by spreading requests over message types"
