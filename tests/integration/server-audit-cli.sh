#!/usr/bin/env bash
# server-audit-cli.sh BIN SRC: membership changes made with the admin
# commands (`member add`, `member set`, `member remove`) are in the audit
# chain like the same changes over REST, also while `serve` writes its own
# records to the same file: each record names the action, the operator,
# the group, the member and the outcome (refusals too), and `audit verify`
# passes afterwards. So are the other commands that change keys,
# certificates or policy (`ca init`, `group create|set|rotate|retire|
# import-cert|renew-cert`, `secret rotate`, `tls init`): each has its
# record (action, operator and uid, group, key version, outcome), a
# refusal too, and refuses up front, changing nothing, when the audit log
# cannot be opened.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/server-lib.sh"
log=$work/audit.jsonl
who=$(id -un)

# record ACTION MEMBER OUTCOME-REGEX: the log has such a record by the operator.
record() {
  grep "\"action\":\"$1\"" "$log" | grep "\"identity\":\"$who\"" | grep "\"group\":\"eng\"" |
    grep "\"member\":\"$2\"" | has_line -E "\"outcome\":\"$3\"" ||
    fail "no $1 record of $2 with outcome $3 by $who: $(grep "\"action\":\"$1\"" "$log" | tail -3)"
}

# The set-up's own changes (server-lib.sh, before serve started).
uid=$(id -u)
# arecord ACTION GROUP-OR-EMPTY GREP...: the last record of ACTION (by the
# operator, their uid, of GROUP) matches every GREP pattern.
arecord() {
  local action=$1 group=$2 line; shift 2
  line=$(grep "\"action\":\"$action\"" "$log" | grep "\"identity\":\"$who\"" | grep "\"uid\":$uid" |
    { if [ -n "$group" ]; then grep "\"group\":\"$group\""; else cat; fi; } | tail -1) || true
  [ -n "$line" ] || fail "no $action record of ${group:-no group} by $who (uid $uid)"
  for pat in "$@"; do grep -Eq -- "$pat" <<< "$line" || fail "$action record lacks /$pat/: $line"; done
}
arecord ca-init "" '"outcome":"ok"' '"label":"gs:ca"' '"certificate_sha256":"[0-9a-f]{64}"'
arecord group-create eng '"outcome":"ok"' '"key_version":1' '"address":"eng@example.org"'
record member-add alice@example.org ok
record member-add carol@example.org ok
record member-remove carol@example.org ok
grep "\"member\":\"dle@example.org\"" "$log" | has_line '"role":"exploder"' || fail "member-add record lacks the role"
ok "the set-up's member add and remove are recorded"

# A command killed between its change and the record of its outcome
# (kill -9, the OOM killer, a power loss) leaves the change with a record:
# before the change it writes one with outcome "started", durable, as the
# server does for the same change over REST. gdb stops the command as the
# change's function returns (committed, no outcome recorded yet) and kills
# it. Before, the only record came after the change: there was none.
# killed_after FUNCTION ARGS...: groupsrv ARGS, killed as FUNCTION returns.
killed_after() {
  local fn=$1; shift
  gdb -batch -nx -q -ex 'set startup-with-shell off' -ex "break $fn" -ex run -ex finish -ex 'signal SIGKILL' \
    --args "$BIN/groupsrv" -c "$conf" "$@" > "$work/gdb.out" 2>&1 || true
  grep -q 'terminated with signal SIGKILL' "$work/gdb.out" || fail "gdb did not kill groupsrv $*: $(tail -5 "$work/gdb.out")"
}
if command -v gdb > /dev/null; then
  killed_after gs_member_add_wrap member add eng killed@example.org --issue-cert --out "$certs"
  gs member list eng | grep >/dev/null '^killed@example.org ' || fail "the member add killed after its change: not made"
  [ "$(grep '"action":"member-add"' "$log" | grep '"member":"killed@example.org"' | grep '"uid":' |
       grep -o '"outcome":"[a-z]*"' | paste -sd,)" = '"outcome":"started"' ] ||
    fail "the member add killed after its change: $(grep killed@ "$log" || echo no record)"
  killed_after gs_group_create group create killed --address killed@example.org
  gs group list | grep >/dev/null '^killed ' || fail "the group create killed after its change: not made"
  [ "$(grep '"action":"group-create"' "$log" | grep '"group":"killed"' | grep '"address":"killed@example.org"' |
       grep -o '"outcome":"[a-z]*"' | paste -sd,)" = '"outcome":"started"' ] ||
    fail "the group create killed after its change: $(grep '"group":"killed"' "$log" || echo no record)"
  # killed_started ACTION GROUP WHAT: ACTION of GROUP has its started record, no other.
  killed_started() {
    [ "$(grep "\"action\":\"$1\"" "$log" | grep "\"group\":\"$2\"" | grep '"uid":' |
         grep -o '"outcome":"[a-z]*"' | paste -sd,)" = '"outcome":"started"' ] ||
      fail "the $1 killed after its change ($3): $(grep "\"action\":\"$1\"" "$log" || echo no record)"
  }
  # kversion SECTION VERSION STATE: group killed's SECTION ("key" or
  # "secret key") lists VERSION in STATE.
  kversion() {
    gs group show killed | awk -v s="$1 versions:" -v v="$2" -v st="$3" \
      '/^[a-z]/ { in_s = ($0 == s) } in_s && $1 == v && $2 == st { f = 1 } END { exit !f }'
  }
  # The changes that make or destroy keys on the token, the same way.
  killed_after gs_group_rotate_ex group rotate killed
  kversion key v2 current || fail "the group rotate killed after its change: not made: $(gs group show killed)"
  killed_started group-rotate killed "key version 2"
  killed_after gs_secret_rotate secret rotate killed
  kversion "secret key" v2 current || fail "the secret rotate killed after its change: not made: $(gs group show killed)"
  killed_started secret-rotate killed "secret key version 2"
  killed_after gs_group_retire group retire killed --before 2
  kversion key v1 retired || fail "the group retire killed after its change: not made: $(gs group show killed)"
  killed_started group-retire killed "key version 1 retired"
  gs ca show > "$work/ca-before.pem"
  killed_after gs_ca_renew ca renew-cert
  gs ca show | cmp -s - "$work/ca-before.pem" && fail "the ca renew-cert killed after its change: not made"
  [ "$(grep '"action":"ca-renew-cert"' "$log" | grep '"uid":' | grep -o '"outcome":"[a-z]*"' | paste -sd,)" = \
    '"outcome":"started"' ] || fail "the ca-renew-cert killed after its change: $(grep ca-renew "$log" || echo no record)"
  gs audit verify > /dev/null || fail "audit verify after the killed commands"
  ok "member add, group create, group rotate, secret rotate, group retire, ca renew-cert killed after their change: recorded as started"
else
  echo "note: no gdb: the command killed after its change is not tried"
fi

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
grep '"action":"member-set"' "$log" | has_line '"wrap":"oaep"' || fail "member-set record lacks the wrap"
[ "$(grep -c '"action":"unwrap"' "$log")" -ge 30 ] || fail "the server's unwrap records are missing"
v=$(gs audit verify) || fail "audit verify after CLI changes while serving: $v"
ok "5 x member add/set/remove with the server writing 30 unwraps: one chain ($v)"

# A refused change is recorded with its error as the outcome, like REST's.
set +e; err=$(gs member remove eng nobody@example.org 2>&1); rc=$?; set -e
[ "$rc" = 3 ] || fail "remove of a non-member: exit $rc: $err"
record member-remove nobody@example.org '[^"os][^"]*' # the refusal, after its started
set +e; err=$(gs member add eng alice@example.org --cert "$certs/alice@example.org.pem" 2>&1); rc=$?; set -e
[ "$rc" = 3 ] || fail "add of a member twice: exit $rc: $err"
[ "$(grep '"action":"member-add"' "$log" | grep '"member":"alice@example.org"' | grep -Evc '"outcome":"(ok|started)"')" = 1 ] ||
  fail "the refused member add is not recorded"
ok "refusals recorded: $err"

# Keys, certificates and policy changed from the command line, beside the server.
gs group set eng --wrap oaep > /dev/null || fail "group set"
arecord group-set eng '"outcome":"ok"' '"wrap":"oaep"'
gs secret rotate eng > "$work/sr.out" || fail "secret rotate"
sv=$(sed -n 's/.*new secret key version \([0-9]*\).*/\1/p' "$work/sr.out")
arecord secret-rotate eng '"outcome":"ok"' "\"secret_version\":$sv"
gs group rotate eng > /dev/null || fail "group rotate"
arecord group-rotate eng '"outcome":"ok"' '"key_version":2'
gs group renew-cert eng --version 2 > /dev/null || fail "group renew-cert"
arecord group-renew-cert eng '"outcome":"ok"' '"key_version":2'
gs group show eng --cert > "$work/eng-v2.pem"
gs group import-cert eng --cert "$work/eng-v2.pem" --version 2 > /dev/null || fail "group import-cert"
arecord group-import-cert eng '"outcome":"ok"' '"key_version":2' "\"certificate_sha256\":\"$(openssl x509 -in "$work/eng-v2.pem" -outform DER | sha256sum | cut -c1-64)\""
gs tls init --dns localhost --out "$work/tls.pem" > /dev/null || fail "tls init"
arecord tls-init "" '"outcome":"ok"' '"label":"tls"' '"dns":"localhost"' '"certificate_sha256":"[0-9a-f]{64}"'
set +e; err=$(gs group create eng --address eng@example.org 2>&1); rc=$?; set -e
[ "$rc" = 3 ] || fail "group create of an existing group: exit $rc: $err"
arecord group-create eng '"outcome":"group eng already exists"'
set +e; err=$(gs tls init --dns localhost --out "$work/tls2.pem" 2>&1); rc=$?; set -e
[ "$rc" = 3 ] || fail "tls init over an existing label: exit $rc: $err"
arecord tls-init "" '"outcome":"a key labelled tls is already on the token"'
set +e; err=$(gs ca init --key rsa:2048 2>&1); rc=$?; set -e
[ "$rc" = 3 ] || fail "a second ca init: exit $rc: $err"
arecord ca-init "" '"outcome":"a CA is already initialised in this database"'
# Arguments that are not UTF-8 (JSON holds nothing else): shown as '?', the
# record kept (before, a refusal naming such a group had no record, and a
# tls init to such a path a record without its fields).
set +e; err=$(gs group rotate "$(printf 'x\xff')" 2>&1); rc=$?; set -e
[ "$rc" = 3 ] || fail "group rotate of a non-UTF-8 name: exit $rc: $err"
arecord group-rotate 'x?' '"outcome":"unknown group x'
gs tls init --dns localhost --label tls4 --out "$work/$(printf '\xff').pem" > /dev/null || fail "tls init to a non-UTF-8 path"
arecord tls-init "" '"outcome":"ok"' '"label":"tls4"' "\"out\":\"$work/\?.pem\""
v=$(gs audit verify) || fail "audit verify after the key and policy commands while serving: $v"
ok "ca init, group create/set/rotate/renew-cert/import-cert, secret rotate, tls init recorded, refusals too ($v)"

# The same change over REST is recorded by the server with the caller's identity.
expect_status 201 "" "REST member add" -- c admin -X PUT --data-binary '{"role":"member"}' \
  "$base/v1/groups/eng/members/rest@example.org"
grep '"action":"member-add"' "$log" | grep '"member":"rest@example.org"' | has_line '"identity":"admin@example.org"' ||
  fail "no REST member-add record"
gs audit verify > /dev/null || fail "audit verify at the end"

# `member set` beside the running server, as the REST PUT: bob's renewed
# certificate is the one taken from his next request on, the old one
# refused (certificate_mismatch); a role change holds from the next
# request too; no secret key version is made; recorded as the PUT's.
unwrap_as() { curl -sS --cacert "$certs/tca.pem" --cert "$1.pem" --key "$1.key" -o "$work/body" -w '%{http_code}' \
  --data-binary @"$work/req.json" "$base/v1/groups/eng/unwrap" || true; }
[ "$(unwrap_as "$certs/bob@example.org")" = 200 ] || fail "bob before his renewal: $(cat "$work/body")"
secrets_before=$(gs group show eng | grep 'gs:secret:')
mkdir "$work/renew"
gs member set eng bob@example.org --issue-cert --out "$work/renew" > /dev/null || fail "member set --issue-cert"
[ "$(unwrap_as "$certs/bob@example.org")" = 403 ] && grep -q '"code":"certificate_mismatch"' "$work/body" ||
  fail "bob's old certificate after his renewal: $(cat "$work/body")"
[ "$(unwrap_as "$work/renew/bob@example.org")" = 200 ] || fail "bob's renewed certificate: $(cat "$work/body")"
[ "$(gs group show eng | grep 'gs:secret:')" = "$secrets_before" ] || fail "the renewal made a secret key version"
record member-add bob@example.org started
record member-add bob@example.org ok
ok "member set --issue-cert while serving: the old certificate refused at once, the new one taken"
expect_status 403 forbidden "bob lists the members as a member" -- \
  curl -sS --cacert "$certs/tca.pem" --cert "$work/renew/bob@example.org.pem" --key "$work/renew/bob@example.org.key" \
  "$base/v1/groups/eng/members"
gs member set eng bob@example.org --role admin > /dev/null || fail "member set --role admin"
expect_status 200 "" "bob lists the members once made admin" -- \
  curl -sS --cacert "$certs/tca.pem" --cert "$work/renew/bob@example.org.pem" --key "$work/renew/bob@example.org.key" \
  "$base/v1/groups/eng/members"
grep '"action":"member-add"' "$log" | grep '"member":"bob@example.org"' | grep '"outcome":"ok"' |
  has_line '"role":"admin"' || fail "no member-add record of bob's role"
gs audit verify > /dev/null || fail "audit verify after member set"

# No change without its record: an audit log that cannot be opened refuses it.
stop_server
mv "$log" "$work/audit.saved"
mkdir "$log"
set +e; err=$(gs member add eng late@example.org --issue-cert --out "$certs" 2>&1); rc=$?; set -e
[ "$rc" != 0 ] && [[ "$err" == *"audit log"*": Is a directory"*"not done without its record"* ]] ||
  fail "no audit log: exit $rc: $err"
[ ! -e "$certs/late@example.org.pem" ] || fail "a refused member add wrote a certificate"
gs member list eng | grep >/dev/null late@example.org && fail "member added without its audit record"
token_labels > "$work/labels.before"
for cmd in "group create late --address late@example.org --key rsa:2048" "group rotate eng" "secret rotate eng" \
  "group set eng --wrap pkcs1v15" "group retire eng --before 2" "group renew-cert eng" \
  "tls init --dns localhost --out $work/tls3.pem --label tls3" "group import-cert eng --cert $work/eng-v2.pem"; do
  set +e; err=$(gs $cmd 2>&1); rc=$?; set -e
  [ "$rc" = 1 ] && [[ "$err" == *"audit log"*"not done without its record"* ]] || fail "$cmd without an audit log: exit $rc: $err"
done
token_labels | cmp -s - "$work/labels.before" || fail "a refused command changed the token: $(token_labels | diff "$work/labels.before" - | tr '\n' ' ')"
sed -e "s|^path = $work/groupsrv.db|path = $work/db2/groupsrv.db|" "$conf" > "$work/db2.conf"
set +e; err=$("$BIN/groupsrv" -c "$work/db2.conf" ca init --key rsa:2048 2>&1); rc=$?; set -e
[ "$rc" = 1 ] && [[ "$err" == *"not done without its record"* ]] || fail "ca init without an audit log: exit $rc: $err"
[ ! -e "$work/db2" ] || fail "ca init without an audit log left a database behind: $(ls -R "$work/db2")"
gs group list | grep >/dev/null '^late ' && fail "group created without its audit record"
gs group show eng | grep >/dev/null 'member wrap: *oaep' || fail "group set without its audit record: $(gs group show eng | grep wrap)"
[ ! -e "$work/tls3.pem" ] || fail "tls init without its audit record wrote a certificate"
rmdir "$log"
mv "$work/audit.saved" "$log"
ok "no audit log, no change: $err"

# Why is said, and whose the file is when permission is what refused: a
# log left behind by root refuses a command run as the server's user, and
# CI saw only "audit log cannot be written". As root, the log is given to
# nobody and the command runs without root's override of file modes.
if [ "$(id -u)" = 0 ]; then
  chown nobody "$log"; owner="nobody (uid $(id -u nobody)), mode 0600"
  as_limited=(setpriv --bounding-set=-dac_override,-dac_read_search --)
else
  chmod 000 "$log"; owner="$who (uid $uid), mode 0000"; as_limited=()
fi
set +e; err=$("${as_limited[@]}" "$BIN/groupsrv" -c "$conf" member add eng late@example.org --issue-cert \
  --out "$certs" 2>&1); rc=$?; set -e
chown "$uid" "$log"; chmod 600 "$log"
[ "$rc" = 1 ] && [[ "$err" == *"audit log $log: audit log cannot be written: Permission denied: the file is owned by $owner,"* ]] &&
  [[ "$err" == *"not done without its record"* ]] || fail "audit log of another user: exit $rc: $err"
gs member list eng | grep >/dev/null late@example.org && fail "member added without its audit record"
ok "an audit log this user cannot open says why and whose it is: $err"

# The key versions before 2 retired: recorded; the chain is whole at the end.
gs group retire eng --before 2 > /dev/null || fail "group retire"
arecord group-retire eng '"outcome":"ok"' '"before":2' '"retired":1'
gs audit verify > /dev/null || fail "audit verify at the very end"
ok "group retire recorded; the chain verifies"
