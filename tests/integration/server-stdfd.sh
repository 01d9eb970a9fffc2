#!/usr/bin/env bash
# server-stdfd.sh BIN SRC: groupsrv started with standard input, output or
# error closed (`2>&-`, a careless cron job or supervisor) treats each as
# /dev/null. Before, the next file opened took the number, and what was
# meant for standard error went into it:
#  - an admin command's error line into the audit log (opened for append),
#    which `audit verify` then refused as malformed;
#  - `serve`'s key holder wrote its log lines into its link to the network
#    process, which stopped on "unusable frame from the key holder"; the
#    supervisor's listening sockets were its descriptors 0 and 1.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/server-lib.sh"
log=$work/audit.jsonl

# An admin command's error with standard error closed: the same exit code
# (3, docs/groupsrv.1.md), its audit record, and nothing else in the log.
# (outcome records only: a member change also writes a "started" record first)
outcomes() { grep -vc '"outcome":"started"' "$log"; }
lines=$(outcomes)
rc=0; gs group export eng --to "$work/missing.pem" --out "$work/x.gsk" 2>&- || rc=$?
[ "$rc" = 3 ] || fail "group export of a missing transport key with stderr closed: exit $rc, want 3"
rc=0; gs member remove eng nobody@example.org <&- >&- 2>&- || rc=$?
[ "$rc" = 3 ] || fail "member remove of a non-member with 0-2 closed: exit $rc, want 3"
[ "$(outcomes)" = $((lines + 2)) ] || fail "audit log: want 2 more outcome records: $(tail -n 3 "$log")"
! grep -n '^groupsrv: ' "$log" || fail "an error line meant for stderr is in the audit log"
grep -v '"outcome":"started"' "$log" | tail -n 2 | head -n 1 | grep -q '"action":"group-export"' ||
  fail "no group-export record: $(tail -n 3 "$log")"
grep -v '"outcome":"started"' "$log" | tail -n 1 | grep -q '"action":"member-remove"' ||
  fail "no member-remove record: $(tail -n 2 "$log")"
v=$(gs audit verify 2>&1) || fail "audit verify after commands with stderr closed: $v"
ok "admin commands with standard error closed: exit 3, audit log intact ($v)"

# serve with all three closed: each process has /dev/null there, not a
# socket or file of its own, and answers.
"$BIN/groupsrv" -c "$conf" serve <&- >&- 2>&- &
srv_pid=$!
wait_healthz || fail "serve with 0-2 closed did not become healthy"
kh=$(ps --ppid "$srv_pid" -o pid=,comm= | awk '$2 == "groupsrv-kh" {print $1; exit}')
net=$(srv_net_pid)
[ -n "$kh" ] && [ -n "$net" ] || fail "serve's processes not found (key holder '$kh', network '$net')"
for p in "$srv_pid" "$kh" "$net"; do
  for fd in 0 1 2; do
    t=$(readlink "/proc/$p/fd/$fd") || fail "process $p ($(cat "/proc/$p/comm")) has no descriptor $fd"
    [ "$t" = /dev/null ] || fail "process $p ($(cat "/proc/$p/comm")) descriptor $fd is $t, not /dev/null"
  done
done
printf '{"recipient_info":"%s","deliver":"tls"}' "$(b64 "$work/ri.der")" > "$work/req.json"
code=$(c alice -o "$work/unwrap.json" -w '%{http_code}' --data-binary @"$work/req.json" "$base/v1/groups/eng/unwrap")
[ "$code" = 200 ] || fail "unwrap with serve's 0-2 closed: HTTP $code"
[ "$(srv_net_pid)" = "$net" ] || fail "the network process was started again"
stop_server
v=$(gs audit verify 2>&1) || fail "audit verify after serve with 0-2 closed: $v"
ok "serve with standard input, output and error closed: /dev/null in all three processes, unwrap 200"

# Output that cannot be written (standard output closed, or a full disk)
# is an error, exit 1 with one line, not a silent success: a script's
# `groupsrv ca show > ca.pem` on a full disk must not leave it truncated.
for out in /dev/full closed; do
  rc=0
  if [ "$out" = closed ]; then gs ca show >&- 2> "$work/out.err" || rc=$?
  else gs ca show > "$out" 2> "$work/out.err" || rc=$?; fi
  [ "$rc" = 1 ] || fail "ca show with standard output $out: exit $rc, want 1"
  grep -q '^groupsrv: .*standard output' "$work/out.err" || fail "ca show with standard output $out: $(cat "$work/out.err")"
done
ok "ca show with standard output closed or on a full disk: exit 1, with its reason"
