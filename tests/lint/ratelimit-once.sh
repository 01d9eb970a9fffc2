#!/bin/bash
# ratelimit-once.sh SRC: the key holder charges a request's rate-limit
# token once however often it runs it (the I/O loop gives a request it
# may not finish back to a token worker, which runs it from the start):
# every take in groupsrv/keyholder goes through ratelimit_take_once with
# the job's own flag (&j->rl_taken, kh.h), in khops.c's rate_limit. The
# helper itself is unit_ratelimit's (test_take_once_per_request); this is
# its call site, which no run can check deterministically: whether the
# loop runs a request at all depends on the measured time per unwrap
# (TQ_INLINE_US, 100 us), so an end-to-end give-back is a matter of luck
# under ASan with CI beside it. A source check, in milliseconds.
set -euo pipefail
src=$1
fail() { echo "FAIL: $*" >&2; exit 1; }
cd "$src/groupsrv/keyholder"
# A plain take (any spelling of the call, also through a pointer or macro
# named so) charges a given-back request twice.
plain=$(grep -nE '\bratelimit_take[[:space:]]*\(' ./*.c ./*.h || true)
[ -z "$plain" ] || fail "a plain ratelimit_take in the key holder (a given-back request is charged twice; use \
ratelimit_take_once with &j->rl_taken):
$plain"
# rate_limit's body: from its definition to the closing brace at column 0.
body=$(awk '/^static int rate_limit\(struct kh_job \*j,/ {on = 1} on {print} on && /^}/ {exit}' khops.c)
[ -n "$body" ] || fail "khops.c: no rate_limit(struct kh_job *j, ...) (renamed? update this check)"
tr -d '\n' <<<"$body" | grep -qE 'ratelimit_take_once\([^;]*&j->rl_taken[^;]*\)' ||
  fail "khops.c's rate_limit does not charge through ratelimit_take_once(..., &j->rl_taken, ...)"
n=$(grep -cE '\bratelimit_take_once[[:space:]]*\(' khops.c)
[ "$n" = 1 ] || fail "khops.c takes rate-limit tokens in $n places, not once in rate_limit"
# rl_taken is the job's alone: only the helper sets it (nothing clears it
# between the loop's pass and the worker's run).
set_elsewhere=$(grep -nE 'rl_taken[[:space:]]*=[^=]' ./*.c || true)
[ -z "$set_elsewhere" ] || fail "rl_taken written outside ratelimit_take_once (a given-back job must keep it):
$set_elsewhere"
echo "ok: the key holder's rate-limit charge is ratelimit_take_once(&j->rl_taken), in rate_limit alone"
