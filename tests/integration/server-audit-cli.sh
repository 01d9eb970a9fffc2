#!/usr/bin/env bash
# server-audit-cli.sh BIN SRC: membership changes made with the admin
# commands (`member add`, `member set`, `member remove`) are in the audit
# chain like the same changes over REST, also while `serve` writes its own
# records to the same file: each record names the action, the operator,
# the group, the member and the outcome (refusals too), and `audit verify`
# passes afterwards.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/server-lib.sh"
log=$work/audit.jsonl
who=$(id -un)

# record ACTION MEMBER OUTCOME-REGEX: the log has such a record by the operator.
record() {
  grep "\"action\":\"$1\"" "$log" | grep "\"identity\":\"$who\"" | grep "\"group\":\"eng\"" |
    grep "\"member\":\"$2\"" | grep -Eq "\"outcome\":\"$3\"" ||
    fail "no $1 record of $2 with outcome $3 by $who: $(grep "\"action\":\"$1\"" "$log" | tail -3)"
}

# The set-up's own changes (server-lib.sh, before serve started).
record member-add alice@example.org ok
record member-add carol@example.org ok
record member-remove carol@example.org ok
grep "\"member\":\"dle@example.org\"" "$log" | grep -q '"role":"exploder"' || fail "member-add record lacks the role"
ok "the set-up's member add and remove are recorded"

start_server
printf '{"recipient_info":"%s","deliver":"tls"}' "$(b64 "$work/ri.der")" > "$work/req.json"
unwrap() { c alice -o /dev/null -w '%{http_code}\n' --data-binary @"$work/req.json" "$base/v1/groups/eng/unwrap"; }

# The server records unwraps while the CLI changes members: one chain.
codes=$work/codes
( for _ in $(seq 1 30); do unwrap; done > "$codes" ) &
load=$!
for i in 1 2 3 4 5; do
  gs member add eng "cli$i@example.org" --issue-cert --out "$certs" > /dev/null || fail "member add cli$i"
  gs member set eng "cli$i@example.org" --wrap oaep > /dev/null || fail "member set cli$i"
  gs member remove eng "cli$i@example.org" > /dev/null || fail "member remove cli$i"
done
wait "$load"
[ "$(grep -c '^200$' "$codes")" = 30 ] || fail "unwraps during CLI changes: $(sort "$codes" | uniq -c | tr '\n' ' ')"
for i in 1 2 3 4 5; do
  record member-add "cli$i@example.org" ok
  record member-set "cli$i@example.org" ok
  record member-remove "cli$i@example.org" ok
done
grep '"action":"member-set"' "$log" | grep -q '"wrap":"oaep"' || fail "member-set record lacks the wrap"
[ "$(grep -c '"action":"unwrap"' "$log")" -ge 30 ] || fail "the server's unwrap records are missing"
v=$(gs audit verify) || fail "audit verify after CLI changes while serving: $v"
ok "5 x member add/set/remove with the server writing 30 unwraps: one chain ($v)"

# A refused change is recorded with its error as the outcome, like REST's.
set +e; err=$(gs member remove eng nobody@example.org 2>&1); rc=$?; set -e
[ "$rc" = 3 ] || fail "remove of a non-member: exit $rc: $err"
record member-remove nobody@example.org '[^"o][^"]*'
set +e; err=$(gs member add eng alice@example.org --cert "$certs/alice@example.org.pem" 2>&1); rc=$?; set -e
[ "$rc" = 3 ] || fail "add of a member twice: exit $rc: $err"
[ "$(grep '"action":"member-add"' "$log" | grep '"member":"alice@example.org"' | grep -vc '"outcome":"ok"')" = 1 ] ||
  fail "the refused member add is not recorded"
ok "refusals recorded: $err"

# The same change over REST is recorded by the server with the caller's identity.
expect_status 201 "" "REST member add" -- c admin -X PUT --data-binary '{"role":"member"}' \
  "$base/v1/groups/eng/members/rest@example.org"
grep '"action":"member-add"' "$log" | grep '"member":"rest@example.org"' | grep -q '"identity":"admin@example.org"' ||
  fail "no REST member-add record"
gs audit verify > /dev/null || fail "audit verify at the end"

# No change without its record: an audit log that cannot be opened refuses it.
stop_server
mv "$log" "$work/audit.saved"
mkdir "$log"
set +e; err=$(gs member add eng late@example.org --issue-cert --out "$certs" 2>&1); rc=$?; set -e
[ "$rc" != 0 ] && [[ "$err" == *"audit log"*"not done without its record"* ]] || fail "no audit log: exit $rc: $err"
[ ! -e "$certs/late@example.org.pem" ] || fail "a refused member add wrote a certificate"
gs member list eng | grep -q late@example.org && fail "member added without its audit record"
rmdir "$log"
mv "$work/audit.saved" "$log"
ok "no audit log, no change: $err"
