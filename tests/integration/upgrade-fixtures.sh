#!/usr/bin/env bash
# upgrade-fixtures.sh BIN SRC: state written by older builds, opened by this
# one. The fixtures in tests/upgrade/ were made by make-fixtures.sh with
# the binaries of the commit named on their first line:
#   - groupsrv databases of schema 1, 2 and 3 (groups with rotated and
#     retired key versions, secret key versions, members of every role, a
#     removed one): a read-only command refuses the old schema with one
#     line that says what migrates it and changes nothing; `check` migrates
#     it (docs/scale-out.md: "deploy upgrades by running ... `groupsrv
#     check`"); every value an old column held is still there, unchanged;
#     the new columns have the documented defaults (groupsrv(1): an old
#     group stays RSA-OAEP only, its member wrap pkcs1v15); group show and
#     member list read as before;
#   - a migration that fails half-way leaves the database as it was, and
#     check says which versions and why;
#   - their audit logs: `audit verify` passes, and a record this build
#     appends continues the old chain;
#   - exploder spools of schema 1, 2 and 3 with a message queued: list
#     show reads them, `run --once` delivers the queued copies.
set -euo pipefail
BIN=$1 SRC=$2
FX=$SRC/tests/upgrade
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/upgrade-fixtures.XXXXXX")
trap '[ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
# hold_lock DB: a coprocess HOLD takes DB's write lock (BEGIN IMMEDIATE)
# and keeps it until release_lock; opens of DB then see its committed
# state, and a process that wants the lock waits in SQLite's busy handler.
hold_lock() {
  coproc HOLD { python3 -c '
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sql = sys.stdin.readline().strip()
db.execute(sql if sql else "ROLLBACK")
if sql:
    db.execute("COMMIT")
' "$1"; }
  local line
  read -r line <&"${HOLD[0]}" && [ "$line" = held ] || fail "hold_lock $1"
}
# release_lock [SQL]: runs SQL in the held transaction and commits it (no
# SQL: rolls back), then waits for the holder to end.
release_lock() {
  local pid=$HOLD_PID
  echo "${1:-}" >&"${HOLD[1]}"
  wait "$pid" || fail "the lock holder failed"
}
# wait_for_lock PID...: until each process sleeps in SQLite's busy handler
# (waiting for the held lock), for at most 3 s: a process not there by then
# finds the holder's outcome already committed, which only makes the case
# weaker, never wrong (groupsrv's busy timeout is 5 s).
wait_for_lock() {
  local p i
  for p in "$@"; do
    for i in $(seq 60); do
      [ "$(cat "/proc/$p/wchan" 2>/dev/null)" = hrtimer_nanosleep ] && break
      sleep 0.05
    done
  done
}
module=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
unset GROUPSRV_CONF EXPLODER_CONF || true
"$SRC/scripts/provision-softhsm" "$work/tok" groupsrv >/dev/null
export SOFTHSM2_CONF=$work/tok/softhsm2.conf

# every table's columns as the old schema had them, all rows
old_rows() { # old_rows DB COLUMNS-FILE
  local t cols
  while read -r t cols; do
    echo "== $t"
    sqlite3 "$1" "SELECT $cols FROM \"$t\" ORDER BY rowid"
  done < "$2"
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=zed@example.org" \
  -addext "subjectAltName=email:zed@example.org" -keyout "$work/zed.key" -out "$work/zed.pem" 2>/dev/null

for n in 1 2 3; do
  d=$work/gs$n
  mkdir "$d"
  sqlite3 "$d/groupsrv.db" < "$FX/groupsrv-schema$n.sql"
  cp "$FX/groupsrv-schema$n.audit.jsonl" "$d/audit.jsonl"
  cat > "$d/gs.conf" <<CONF
[hsm]
module = $module
token = pkcs11:token=groupsrv
pin_source = $work/tok/user-pin
[db]
path = $d/groupsrv.db
[audit]
path = $d/audit.jsonl
CONF
  gs() { "$BIN/groupsrv" -c "$d/gs.conf" "$@"; }
  [ "$(sqlite3 "$d/groupsrv.db" 'PRAGMA user_version')" = "$n" ] || fail "fixture $n: user_version"
  sqlite3 "$d/groupsrv.db" "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name" |
    while read -r t; do
      echo "$t $(sqlite3 "$d/groupsrv.db" "SELECT group_concat('quote(\"' || name || '\")', ',') FROM pragma_table_info('$t')")"
    done > "$d/cols"
  old_rows "$d/groupsrv.db" "$d/cols" > "$d/before"
  grep -q '^== members' "$d/before" && grep -q 'alice@example.org' "$d/before" || fail "fixture $n: no members read"
  sum=$(sqlite3 "$d/groupsrv.db" .dump | sha256sum)

  # a read-only command: refused in one line that says how to migrate; nothing changed
  rc=0
  gs group list > "$d/out" 2> "$d/err" || rc=$?
  [ "$rc" = 1 ] || fail "schema $n: group list exit $rc, wanted 1: $(cat "$d/err")"
  [ "$(wc -l < "$d/err")" = 1 ] || fail "schema $n: group list error not one line: $(cat "$d/err")"
  grep -q "schema version $n, this program needs 4 (from an older version: \`groupsrv check\`, \`serve\` or a command that writes migrates it)" \
    "$d/err" || fail "schema $n: group list does not say what migrates: $(cat "$d/err")"
  [ "$(sqlite3 "$d/groupsrv.db" .dump | sha256sum)" = "$sum" ] || fail "schema $n: a read-only command changed the database"

  # check migrates (its keys are not on this token: that is its exit 1)
  gs check > "$d/check" 2>&1 || true
  grep -q "^database  OK   $d/groupsrv.db (sqlite, schema 4, migrated from an older schema)$" "$d/check" ||
    fail "schema $n: check did not migrate: $(grep database "$d/check")"
  [ "$(sqlite3 "$d/groupsrv.db" 'PRAGMA user_version')" = 4 ] || fail "schema $n: not at version 4 after check"
  if [ "$n" = 3 ]; then # once is enough: a current schema is not migrated again
    gs check > "$d/check" 2>&1 || true
    grep -q "^database  OK   $d/groupsrv.db (sqlite, schema 4)$" "$d/check" || fail "schema $n: second check: $(grep database "$d/check")"
  fi

  # check's policy line says what group show (and discovery's key_policy)
  # say: these old groups refuse PKCS#1 v1.5, so they have no rejection
  # key (the record's default read "reject=token"), and ops (tls and
  # recipient-key) has no group secret keys
  grep -q '^policy eng  *rewrap=token,secrets=token,reject=none; weakenings: none$' "$d/check" &&
    grep -q '^policy ops  *rewrap=token,secrets=none,reject=none; weakenings: none$' "$d/check" ||
    fail "schema $n: check's policy lines: $(grep '^policy' "$d/check")"
  gs group show eng | grep -q '^key policy: .*; rejection key none$' || fail "schema $n: group show eng's rejection key"
  gs group show ops | grep -q '^key policy: .*; secret keys none; rejection key none$' ||
    fail "schema $n: group show ops's key policy"

  # nothing lost or changed, the new columns at their documented defaults
  old_rows "$d/groupsrv.db" "$d/cols" > "$d/after"
  cmp -s "$d/before" "$d/after" || { diff "$d/before" "$d/after" | head -20; fail "schema $n: old rows changed"; }
  [ "$(sqlite3 "$d/groupsrv.db" "SELECT DISTINCT member_wrap || '/' || replicable || '/' || reject_weakenings FROM groups")" = "pkcs1v15/0/" ] ||
    fail "schema $n: groups' new columns"
  [ "$(sqlite3 "$d/groupsrv.db" "SELECT count(*) FROM members WHERE wrap IS NOT NULL")" = 0 ] || fail "schema $n: members.wrap"
  gs group show eng > "$d/show"
  grep -Eq '^  v3 +current +gs:group:eng:v3' "$d/show" && grep -Eq '^  v2 +old ' "$d/show" &&
    grep -Eq '^  v1 +retired ' "$d/show" && grep -q '^member wrap: *pkcs1v15$' "$d/show" &&
    grep -q '^pkcs1v15: *refused (RSA-OAEP only)$' "$d/show" ||
    fail "schema $n: group show: $(cat "$d/show")"
  gs member list eng | awk '{print $1, $2}' > "$d/members"
  printf 'admin@example.org admin\nalice@example.org member\nbob@example.org member\ndle@example.org exploder\n' |
    cmp -s - "$d/members" || fail "schema $n: member list: $(cat "$d/members")"

  # the old audit log verifies, and this build's record continues its chain
  gs audit verify > "$d/av" || fail "schema $n: audit verify of the old log: $(cat "$d/av")"
  grep -q '^ok: 3 lines' "$d/av" || fail "schema $n: audit verify: $(cat "$d/av")"
  gs member add eng zed@example.org --cert "$work/zed.pem" > /dev/null
  gs audit verify > "$d/av" || fail "schema $n: audit verify across the upgrade: $(cat "$d/av")"
  # (two records: the add's "started", then its outcome)
  grep -q '^ok: 5 lines' "$d/av" || fail "schema $n: audit verify after: $(cat "$d/av")"
  [ "$(tail -n 1 "$d/audit.jsonl" | grep -o '"action":"[a-z-]*"')" = '"action":"member-add"' ] || fail "schema $n: new record"
  if [ "$n" = 3 ]; then
    # members an older build stored under its looser address rule (a '_'
    # in the domain, a dot twice in a row, a 65-octet local part): the
    # rule refuses them as new records, yet they stay reachable
    for old in 'bob..b@mail_host.example' "$(printf 'l%.0s' $(seq 65))@example.org"; do
      sqlite3 "$d/groupsrv.db" "INSERT INTO members (group_id, email, role, cert_pem, added)
        SELECT group_id, '$old', role, cert_pem, added FROM members
        WHERE email = 'bob@example.org' AND group_id = (SELECT id FROM groups WHERE name = 'eng')"
      gs member add eng "$old" --cert "$work/zed.pem" > /dev/null 2> "$d/err" &&
        fail "schema $n: member add took $old"
      grep -q 'invalid member email address: ' "$d/err" || fail "schema $n: member add $old said: $(cat "$d/err")"
      gs member set eng "$old" --wrap oaep > /dev/null 2> "$d/err" || fail "schema $n: member set $old: $(cat "$d/err")"
      gs member remove eng "$old" > /dev/null 2> "$d/err" || fail "schema $n: member remove $old: $(cat "$d/err")"
      [ "$(sqlite3 "$d/groupsrv.db" "SELECT count(*) FROM members WHERE email = '$old'")" = 0 ] ||
        fail "schema $n: $old not removed"
    done
    gs member remove eng 'no@space@example.org' > /dev/null 2> "$d/err" && fail "member remove took two @"
    grep -q 'invalid member email address: not printable US-ASCII' "$d/err" || fail "member remove two @: $(cat "$d/err")"
    ok "groupsrv: members stored under an older, looser address rule can be changed and removed"
  fi
  ok "groupsrv database schema $n: refused read-only with a hint, migrated by check, nothing lost; audit chain continued"
done

# a migration that fails half-way (a column the step adds is there already)
# rolls back whole, and says which versions and why
d=$work/clash
mkdir "$d"
{ cat "$FX/groupsrv-schema3.sql"; echo "ALTER TABLE groups ADD COLUMN reject_weakenings TEXT;"; } | sqlite3 "$d/groupsrv.db"
sed "s|$work/gs3/|$d/|" "$work/gs3/gs.conf" > "$d/gs.conf"
sum=$(sqlite3 "$d/groupsrv.db" .dump | sha256sum)
"$BIN/groupsrv" -c "$d/gs.conf" check > "$d/check" 2>&1 || true
grep -q "^database  PROBLEM: database $d/groupsrv.db has schema version 3, older than this program's 4, and migrating it failed (nothing was changed): .*duplicate column name: reject_weakenings" \
  "$d/check" || fail "a failed migration: $(grep database "$d/check")"
[ "$(sqlite3 "$d/groupsrv.db" .dump | sha256sum)" = "$sum" ] || fail "a failed migration changed the database"
ok "a migration that fails: one line naming the versions and the reason, nothing changed"

# wal_schema3_copy DIR: a schema-3 database in WAL mode (as a server leaves
# it) in a new DIR, with gs3's configuration pointed at it
wal_schema3_copy() {
  mkdir "$1"
  sqlite3 "$1/groupsrv.db" < "$FX/groupsrv-schema3.sql"
  sqlite3 "$1/groupsrv.db" 'PRAGMA journal_mode = WAL' > /dev/null
  sed "s|$work/gs3/|$1/|" "$work/gs3/gs.conf" > "$1/gs.conf"
}

# two checks at once on an old database: both wait for the lock, one
# migrates, the other then finds it current; only the first says migrated
d=$work/twochecks
wal_schema3_copy "$d"
hold_lock "$d/groupsrv.db"
"$BIN/groupsrv" -c "$d/gs.conf" check > "$d/check1" 2>&1 & c1=$!
"$BIN/groupsrv" -c "$d/gs.conf" check > "$d/check2" 2>&1 & c2=$!
wait_for_lock "$c1" "$c2"
release_lock
wait "$c1" || true
wait "$c2" || true
[ "$(grep -c "^database  OK   $d/groupsrv.db (sqlite, schema 4" "$d/check1" "$d/check2" | grep -c ':1$')" = 2 ] ||
  fail "two checks at once: $(grep -h database "$d/check1" "$d/check2")"
[ "$(cat "$d/check1" "$d/check2" | grep -c '^database  OK .*, migrated from an older schema)$')" = 1 ] ||
  fail "two checks at once: not exactly one says migrated: $(grep -h database "$d/check1" "$d/check2")"
ok "two checks at once on an old database: one migrates and says so, the other finds it current"

# an older groupsrv waits to migrate an old database while a newer one
# writes it: the version read under the lock decides, refused, unchanged
d=$work/newerrace
wal_schema3_copy "$d"
sum=$(sqlite3 "$d/groupsrv.db" .dump | sha256sum)
hold_lock "$d/groupsrv.db"
"$BIN/groupsrv" -c "$d/gs.conf" check > "$d/check" 2>&1 & c1=$!
wait_for_lock "$c1"
release_lock 'PRAGMA user_version = 99'
rc=0
wait "$c1" || rc=$?
[ "$rc" = 1 ] && grep -q "^database  PROBLEM: database $d/groupsrv.db was written by a newer groupsrv (schema version 99, this program knows up to 4)" "$d/check" ||
  fail "check on a database a newer groupsrv wrote while it waited: exit $rc: $(grep -h database "$d/check")"
[ "$(sqlite3 "$d/groupsrv.db" .dump | sha256sum)" = "$sum" ] &&
  [ "$(sqlite3 "$d/groupsrv.db" 'PRAGMA user_version')" = 99 ] || fail "a database written by a newer groupsrv was changed"
ok "a database a newer groupsrv writes while check waits to migrate it: refused, unchanged"

for n in 1 2 3; do
  d=$work/xp$n
  mkdir -p "$d/spool"
  sqlite3 "$d/spool/exploder.db" < "$FX/spool-schema$n/exploder.sql"
  cp -r "$FX/spool-schema$n/msg" "$d/spool/msg"
  chmod 0700 "$d/spool" "$d/spool/msg"
  printf '[spool]\npath = %s/spool\n[delivery]\nrelay = maildir:%s/md\n' "$d" "$d" > "$d/x.conf"
  x() { "$BIN/exploder" -c "$d/x.conf" "$@"; }
  x list show fwd@lists.example.org > "$d/show" || fail "spool schema $n: list show"
  grep -q '^queued-messages: 1$' "$d/show" && grep -q '^pending-recipients: 2$' "$d/show" ||
    fail "spool schema $n: list show: $(cat "$d/show")"
  [ "$(sqlite3 "$d/spool/exploder.db" 'PRAGMA user_version')" = 4 ] || fail "spool schema $n: not migrated"
  x run --once 2> "$d/run.log" || fail "spool schema $n: run --once: $(tail -3 "$d/run.log")"
  for m in alice bob; do
    f=$(ls "$d/md/$m@example.org/new/" 2>/dev/null | head -1)
    [ -n "$f" ] && grep -q 'the body queued by the old exploder' "$d/md/$m@example.org/new/$f" ||
      fail "spool schema $n: $m got no copy of the queued message"
  done
  [ "$(sqlite3 "$d/spool/exploder.db" 'SELECT count(*) FROM messages')" = 0 ] || fail "spool schema $n: message left"
  if [ "$n" = 3 ]; then
    # a member an older exploder stored under its looser rule ('/' in the
    # local part, '_' in the domain) stays removable
    sqlite3 "$d/spool/exploder.db" "INSERT INTO members (list_id, address, added)
      SELECT id, 'dept/ops@mail_host.example', 1 FROM lists WHERE address = 'fwd@lists.example.org'"
    x list add fwd@lists.example.org 'dept/x@example.org' > /dev/null 2>&1 && fail "list add took a '/'"
    x list remove fwd@lists.example.org 'dept/ops@mail_host.example' > /dev/null 2> "$d/err" ||
      fail "spool schema $n: list remove of an old member: $(cat "$d/err")"
    [ "$(sqlite3 "$d/spool/exploder.db" "SELECT count(*) FROM members WHERE address LIKE 'dept/%'")" = 0 ] ||
      fail "spool schema $n: old member not removed"
    ok "exploder: a member stored under an older, looser address rule can be removed"
    # a list an older exploder made under that rule still sends its mail
    sqlite3 "$d/spool/exploder.db" "UPDATE lists SET address = 'fwd_x@lists_host.example'"
    printf 'From: carol@example.org\r\nSubject: y\r\nMessage-ID: <old-rule@example.org>\r\n\r\nthe old-rule list\r\n' |
      x deliver --list fwd_x@lists_host.example > /dev/null 2> "$d/err" || fail "deliver to an old-rule list: $(cat "$d/err")"
    x run --once 2> "$d/run.log" || fail "run --once for an old-rule list: $(tail -3 "$d/run.log")"
    grep -l 'the old-rule list' "$d/md/alice@example.org/new/"* 2>/dev/null | xargs -r grep -qi '^List-Id: <fwd_x.lists_host.example>' ||
      fail "a list made under the older rule sent no copy: $(grep -i 'level=error' "$d/run.log" | head -2)"
    sqlite3 "$d/spool/exploder.db" "UPDATE lists SET address = 'fwd@lists.example.org'"
    ok "exploder: a list made under an older, looser address rule still sends"
    # a member of that rule posting to a --members-only list is a member
    sqlite3 "$d/spool/exploder.db" "INSERT INTO members (list_id, address, added)
      SELECT id, 'old..m@mail_host.example', 1 FROM lists WHERE address = 'fwd@lists.example.org'"
    x list set fwd@lists.example.org --members-only > /dev/null || fail "list set --members-only"
    rc=0
    printf 'From: Old M <old..m@mail_host.example>\r\nSubject: z\r\nMessage-ID: <old-m@example.org>\r\n\r\nfrom an old-rule member\r\n' |
      x deliver --list fwd@lists.example.org > "$d/out" 2> "$d/err" || rc=$?
    [ "$rc" = 0 ] || fail "a member of the older rule posting to a members-only list: exit $rc: $(cat "$d/out" "$d/err")"
    x run --once 2> "$d/run.log" || fail "run --once after the old-rule member's post: $(tail -3 "$d/run.log")"
    sqlite3 "$d/spool/exploder.db" "UPDATE lists SET members_only = 0; DELETE FROM members WHERE address = 'old..m@mail_host.example'"
    ok "exploder: a member stored under an older, looser address rule may post to a members-only list"
  fi
  ok "exploder spool schema $n: migrated, the queued message delivered"
done

# a downgrade: an exploder older than its spool refuses it, changes nothing,
# and deliver's 75 leaves the mail with the MTA
sqlite3 "$d/spool/exploder.db" 'PRAGMA user_version = 99'
sum=$(sqlite3 "$d/spool/exploder.db" .dump | sha256sum)
rc=0
printf 'From: carol@example.org\r\nSubject: x\r\n\r\nbody\r\n' | x deliver --list fwd@lists.example.org > /dev/null 2> "$d/err" || rc=$?
[ "$rc" = 75 ] || fail "deliver on a newer spool: exit $rc, wanted 75: $(cat "$d/err")"
[ "$(grep -cv '^[0-9T:.-]*Z level=' "$d/err")" = 1 ] &&
  grep -q '^4\.3\.5 spool database written by a newer exploder' "$d/err" || fail "deliver on a newer spool said: $(cat "$d/err")"
rc=0
x list show fwd@lists.example.org > /dev/null 2> "$d/err" || rc=$?
[ "$rc" = 1 ] && grep -q 'cannot open spool: spool database written by a newer exploder' "$d/err" ||
  fail "list show on a newer spool: exit $rc: $(cat "$d/err")"
[ "$(sqlite3 "$d/spool/exploder.db" .dump | sha256sum)" = "$sum" ] || fail "a newer spool was changed"
ok "a spool newer than the exploder: refused in one line (deliver 75, 4.3.5), unchanged"

# a newer exploder writes the spool while this one waits for the lock to
# migrate it: the version read under the lock decides, refused, unchanged
d=$work/xprace
mkdir -p "$d/spool"
sqlite3 "$d/spool/exploder.db" < "$FX/spool-schema3/exploder.sql"
sqlite3 "$d/spool/exploder.db" 'PRAGMA journal_mode = WAL' > /dev/null
cp -r "$FX/spool-schema3/msg" "$d/spool/msg"
chmod 0700 "$d/spool" "$d/spool/msg"
printf '[spool]\npath = %s/spool\n[delivery]\nrelay = maildir:%s/md\n' "$d" "$d" > "$d/x.conf"
sum=$(sqlite3 "$d/spool/exploder.db" .dump | sha256sum)
hold_lock "$d/spool/exploder.db"
"$BIN/exploder" -c "$d/x.conf" list show fwd@lists.example.org > /dev/null 2> "$d/err" & xpid=$!
wait_for_lock "$xpid"
release_lock 'PRAGMA user_version = 99'
rc=0
wait "$xpid" || rc=$?
[ "$rc" = 1 ] && grep -q 'cannot open spool: spool database written by a newer exploder' "$d/err" ||
  fail "list show on a spool a newer exploder wrote while it waited: exit $rc: $(cat "$d/err")"
[ "$(sqlite3 "$d/spool/exploder.db" .dump | sha256sum)" = "$sum" ] &&
  [ "$(sqlite3 "$d/spool/exploder.db" 'PRAGMA user_version')" = 99 ] || fail "a spool written by a newer exploder was changed"
ok "a spool a newer exploder writes while this one waits to migrate it: refused, unchanged"
