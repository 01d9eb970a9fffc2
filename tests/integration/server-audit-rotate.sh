#!/usr/bin/env bash
# server-audit-rotate.sh BIN SRC: `groupsrv audit rotate` while `groupsrv
# serve` answers requests. The archive ends with the seal, the new file
# starts with the record chained to it, the server writes on in the new
# file without a failed request, and `audit verify` follows the chain back
# across every file (and names a missing one).
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/server-lib.sh"
start_server
log=$work/audit.jsonl
printf '{"recipient_info":"%s","deliver":"tls"}' "$(b64 "$work/ri.der")" > "$work/req.json"
unwrap() { c alice -o /dev/null -w '%{http_code}\n' --data-binary @"$work/req.json" "$base/v1/groups/eng/unwrap"; }

for _ in 1 2 3; do [ "$(unwrap)" = 200 ] || fail "unwrap before rotation"; done
before=$(wc -l < "$log")
out=$(gs audit rotate) || fail "audit rotate: $out"
archive=$(sed -n 's/^sealed .* as \(.*\); .* continues the chain$/\1/p' <<<"$out")
[ -f "$archive" ] || fail "no archive named in: $out"
ok "rotated: $out"
[ "$(wc -l < "$archive")" = $((before + 1)) ] || fail "archive has $(wc -l < "$archive") lines, want $((before + 1))"
tail -1 "$archive" | grep -q "\"action\":\"audit-rotate\",\"archive\":\"$(basename "$archive")\"" ||
  fail "archive does not end with the seal: $(tail -1 "$archive")"
head -1 "$log" | grep -q "\"action\":\"audit-continue\",\"previous\":\"$(basename "$archive")\"" ||
  fail "new file does not start with the continuation: $(head -1 "$log")"
[ "$(stat -c %a "$log")" = 600 ] || fail "new file mode $(stat -c %a "$log")"

expect_status 200 "" "healthz after rotation" -- anon "$base/healthz"
[ "$(unwrap)" = 200 ] || fail "unwrap after rotation"
[ "$(wc -l < "$log")" = 2 ] || fail "the server did not write on in the new file: $(wc -l < "$log") lines"
grep -q 'continuing in the new file' "$work/server.log" || fail "no log line about following the rotation"
v=$(gs audit verify) || fail "verify across two files"
[[ "$v" == "ok: $((before + 3)) lines in 2 files, chain head "* ]] || fail "verify said: $v"
ok "the server follows the rotation: $v"

# Rotations while requests keep coming: every request answered, one chain.
codes=$work/codes
( for _ in $(seq 1 40); do unwrap; done > "$codes" ) &
load=$!
for _ in 1 2 3; do gs audit rotate > /dev/null || fail "rotate under load"; sleep 0.2; done
wait "$load"
[ "$(grep -c '^200$' "$codes")" = 40 ] || fail "requests during rotations: $(sort "$codes" | uniq -c | tr '\n' ' ')"
v=$(gs audit verify) || fail "verify after rotations under load"
[[ "$v" == "ok: "*" lines in 5 files, chain head "* ]] || fail "verify said: $v"
ok "40 requests during 3 rotations, one chain: $v"

# Checking one file alone, and a chain with a file missing.
gs audit verify --file "$archive" > /dev/null || fail "verify of the first archive alone"
gs audit verify --no-follow > /dev/null || fail "verify --no-follow of the current file"
mv "$archive" "$work/elsewhere"
set +e; err=$(gs audit verify 2>&1); rc=$?; set -e
[ "$rc" = 1 ] && [[ "$err" == *"$archive: an earlier audit log file named by the chain is missing ("[1-9]*" good lines after it)" ]] ||
  fail "missing archive: rc $rc: $err"
ok "verify names the missing archive"
