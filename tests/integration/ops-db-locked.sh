#!/usr/bin/env bash
# ops-db-locked.sh BIN SRC: the SQLite database held locked by another
# process (the stock sqlite3 holding BEGIN EXCLUSIVE open, as a long admin
# command or an operator's session would), as docs/operations.md says:
#   - a running server goes on serving what only reads (unwraps,
#     discovery, /healthz 200) while the lock is held;
#   - a REST membership change waits the 5 s busy timeout, then answers
#     503 store_unavailable with Retry-After; an admin command that writes
#     exits 1 "database is locked" and leaves nothing behind (no
#     certificate files, no token objects, no secret key rotation);
#   - once the lock is gone both work again, no restart, and the database
#     passes PRAGMA integrity_check;
#   - the database, its -wal or its -shm moved, replaced or deleted under
#     the running server: /healthz 503 and a log line to restart;
#   - the database truncated in place under it: /healthz 503 "damaged" and
#     a log line to restore it, and changes refused 503, until the restart.
set -euo pipefail
BIN=$1 SRC=$2
SRV_MEMBERS="alice bob"
. "$SRC/tests/integration/server-lib.sh"
holder=
release() {
  if [ -n "$holder" ]; then echo "COMMIT;" >&3; exec 3>&-; wait "$holder" || true; holder=; fi
}
trap 'release; cleanup' EXIT
start_server
"$BIN/mkri" --cert "$certs/group.pem" --kt oaep-sha1 --out "$work/ri.der" >/dev/null || fail "mkri"
printf '{"recipient_info":"%s","content_algorithm":"aes-256-cbc"}' "$(b64 "$work/ri.der")" > "$work/unwrap.json"
url=$base/v1/groups/eng/unwrap
nobj=$(token_labels | wc -l)
mkdir -p "$work/out"

mkfifo "$work/sql"
sqlite3 "$work/groupsrv.db" < "$work/sql" > "$work/holder.out" 2>&1 &
holder=$!
exec 3> "$work/sql"
echo "BEGIN EXCLUSIVE; SELECT 'held';" >&3
for i in $(seq 1 300); do grep -q held "$work/holder.out" && break; sleep 0.1; done
grep -q held "$work/holder.out" || fail "sqlite3 did not take the lock: $(cat "$work/holder.out")"

# No bound on how long these take: the lock is held throughout, so a read
# that waited for it would end in the busy timeout's 503, not a 200.
expect_status 200 "" "unwrap, database locked" -- c alice --data-binary @"$work/unwrap.json" "$url"
expect_status 200 "" "discovery, database locked" -- anon "$base/v1/groups/eng"
expect_status 200 "" "healthz, database locked" -- anon "$base/healthz"
t0=$SECONDS
expect_status 503 store_unavailable "member PUT over REST, database locked" -- \
  c admin -D "$work/hdr" -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/new@example.org"
grep -qi '^retry-after: [0-9]' "$work/hdr" || fail "503 without Retry-After"
[ $((SECONDS - t0)) -ge 4 ] || fail "member PUT did not wait for the busy timeout"
rc=0
gs member add eng locked@example.org --issue-cert --out "$work/out" > /dev/null 2> "$work/err" || rc=$?
[ "$rc" = 1 ] && grep -q "database is locked" "$work/err" || fail "member add, database locked: exit $rc: $(cat "$work/err")"
[ -z "$(ls "$work/out")" ] || fail "member add, database locked, left files: $(ls "$work/out")"
rc=0
gs member remove eng bob@example.org > /dev/null 2> "$work/err" || rc=$?
[ "$rc" = 1 ] && grep -q "database is locked" "$work/err" || fail "member remove, database locked: exit $rc: $(cat "$work/err")"
nafter=$(token_labels | wc -l)
[ "$nafter" = "$nobj" ] || fail "a refused command left token objects: $nobj before, $nafter after"
ok "database locked: member add and remove exit 1 (database is locked), nothing left on disk or token"
kill -0 "$srv_pid" || fail "serve exited"

release
expect_status 201 "" "member PUT once the lock is gone" -- \
  c admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/new@example.org"
gs member remove eng bob@example.org > /dev/null || fail "member remove once the lock is gone"
expect_status 403 "" "bob refused once removed" -- c bob --data-binary @"$work/unwrap.json" "$url"
expect_status 200 "" "unwrap once the lock is gone" -- c alice --data-binary @"$work/unwrap.json" "$url"
[ "$(sqlite3 "$work/groupsrv.db" 'PRAGMA integrity_check')" = ok ] || fail "integrity_check"
ok "database intact (PRAGMA integrity_check)"

# The database file moved away under the running server (a restore with
# mv, without stopping it): its connection goes on with the old file,
# which the admin commands no longer see, so /healthz fails (api.md) and
# the log says to restart; moved back, it is 200 again.
mkdir "$work/moved"
mv "$work/groupsrv.db" "$work/groupsrv.db-wal" "$work/groupsrv.db-shm" "$work/moved/"
expect_healthz 503 store_unavailable "healthz, database moved away"
[ "$(json_get "$work/body" database)" = "not the file at its path (moved or replaced)" ] ||
  fail "healthz, database moved away: $(cat "$work/body")"
grep -q 'the database is not at its path any more: restart the server' "$work/server.log" ||
  fail "no log line for the moved database"
mv "$work/moved/"* "$work/"
expect_healthz 200 "" "healthz, database back at its path"

# Its -wal deleted under the running server (`rm groupsrv.db-*`): SQLite
# goes on committing into the deleted file, which no other process reads
# and a crash loses, so /healthz fails the same way and the log says to
# restart; a stop (SIGTERM) checkpoints the deleted file's changes into
# the database: the member added before and the one added after are there.
expect_status 201 "" "member PUT before the -wal is deleted" -- \
  c admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/prewal@example.org"
[ -f "$work/groupsrv.db-wal" ] || fail "no -wal beside the database"
lines0=$(wc -l < "$work/server.log")
rm "$work/groupsrv.db-wal"
expect_healthz 503 store_unavailable "healthz, -wal deleted"
[ "$(json_get "$work/body" database)" = "not the file at its path (moved or replaced)" ] ||
  fail "healthz, -wal deleted: $(cat "$work/body")"
tail -n +"$((lines0 + 1))" "$work/server.log" | grep 'the database is not at its path any more: restart the server' |
  has_line "write-ahead log" || fail "no log line for the deleted -wal"
expect_status 201 "" "member PUT after the -wal is deleted" -- \
  c admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/postwal@example.org"
stop_server
gs member list eng > "$work/members" || fail "member list after the restart"
grep -q prewal@ "$work/members" && grep -q postwal@ "$work/members" ||
  fail "changes committed into the deleted -wal were lost: $(cat "$work/members")"
[ "$(sqlite3 "$work/groupsrv.db" 'PRAGMA integrity_check')" = ok ] || fail "integrity_check after the -wal"
start_server
expect_healthz 200 "" "healthz once restarted"
ok "a deleted -wal: healthz 503 and a log line until the restart, which keeps its changes"

# The same with another process holding the database open across the
# stop (an operator's sqlite3 shell, a monitoring script, opened before
# the rm): SQLite checkpoints at a close only with the database to
# itself, so the key holder's close left the changes in the deleted -wal,
# seen then only by that other process, which took them with it when it
# ended without closing (killed, its ssh session dropped): members added
# with 201 were gone. The key holder writes them into the database first.
mkfifo "$work/sql2"
sqlite3 "$work/groupsrv.db" < "$work/sql2" > "$work/reader.out" 2>&1 &
reader=$!
bg_pids="$bg_pids $reader"
exec 4> "$work/sql2"
echo "SELECT 'opened', count(*) FROM members;" >&4
for i in $(seq 1 300); do grep -q opened "$work/reader.out" && break; sleep 0.1; done
grep -q opened "$work/reader.out" || fail "sqlite3 did not read the database: $(cat "$work/reader.out")"
expect_status 201 "" "member PUT before the -wal is deleted, sqlite3 open beside" -- \
  c admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/heldpre@example.org"
rm "$work/groupsrv.db-wal"
expect_status 201 "" "member PUT after the -wal is deleted, sqlite3 open beside" -- \
  c admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/heldpost@example.org"
stop_server
kill -KILL "$reader"
wait "$reader" 2>/dev/null || true
exec 4>&-
gs member list eng > "$work/members" || fail "member list after the stop, sqlite3 open beside"
grep -q heldpre@ "$work/members" && grep -q heldpost@ "$work/members" ||
  fail "changes committed into the deleted -wal were lost, another process having the database open: $(cat "$work/members")"
[ "$(sqlite3 "$work/groupsrv.db" 'PRAGMA integrity_check')" = ok ] || fail "integrity_check after the -wal, sqlite3 open beside"
grep -q "the deleted write-ahead log's changes were written into the database at close" "$work/server.log" ||
  fail "no log line for the deleted -wal written into the database"
start_server
expect_healthz 200 "" "healthz once restarted, sqlite3 open beside before"
ok "a deleted -wal with another process holding the database across the stop: its changes kept"

# Its -shm alone deleted (a clean-up of "shared memory" files): the next
# admin command makes a new one, writes the -wal as if no server were
# there, and the server's next commit overwrites it (a member added with
# exit 0 was gone). /healthz fails the same way, and the log names it.
[ -f "$work/groupsrv.db-shm" ] || fail "no -shm beside the database"
lines0=$(wc -l < "$work/server.log")
rm "$work/groupsrv.db-shm"
expect_healthz 503 store_unavailable "healthz, -shm deleted"
[ "$(json_get "$work/body" database)" = "not the file at its path (moved or replaced)" ] ||
  fail "healthz, -shm deleted: $(cat "$work/body")"
tail -n +"$((lines0 + 1))" "$work/server.log" | grep 'the database is not at its path any more: restart the server' |
  has_line "shared-memory index" || fail "no log line for the deleted -shm"
# An admin command then made a new -shm and wrote as if alone (exit 0,
# its change lost at the server's next): refused, naming the process.
rc=0
gs member remove eng heldpre@example.org > /dev/null 2> "$work/err" || rc=$?
[ "$rc" = 1 ] && grep -q "shared-memory index that is no longer at its path" "$work/err" ||
  fail "member remove with the server's -shm deleted: rc=$rc $(cat "$work/err")"
ok "a deleted -shm: healthz 503 and a log line"
stop_server

# The file truncated in place under the running server (a restore by cp
# or truncate onto the open file, a disk that lost writes): still the file
# at its path, and PRAGMA data_version reads no page, so /healthz said ok
# while every request that read a lost page was 503 store_unavailable
# ("database disk image is malformed") and a load balancer kept sending
# them. /healthz reads what a key request reads: 503 store_unavailable,
# "damaged", and a log line to restore it; until the restart.
cp "$work/groupsrv.db" "$work/db.bak" # the server stopped: checkpointed, one file
start_server
expect_healthz 200 "" "healthz before the truncation"
# A change first: the -wal holds frames (page 1 among them), as it does on
# a server in use; without any, SQLite finds the short file at once.
expect_status 201 "" "member PUT before the truncation" -- \
  c admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/pretrunc@example.org"
truncate -s 4096 "$work/groupsrv.db"
expect_healthz 503 store_unavailable "healthz, database truncated under the server"
[ "$(json_get "$work/body" database)" = "damaged (malformed): restore it and restart the server" ] ||
  fail "healthz, database truncated: $(cat "$work/body")"
expect_status 503 store_unavailable "discovery, database truncated" -- anon "$base/v1/groups/eng"
# Changes refused while the file is known damaged: a commit whose pages
# read from the -wal was answered 201, written into a file the log says to
# restore from a backup, so lost at the restore.
expect_status 503 store_unavailable "member PUT, database known damaged" -- \
  c admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/posttrunc@example.org"
expect_status 503 store_unavailable "member DELETE, database known damaged" -- \
  c admin -X DELETE "$base/v1/groups/eng/members/bob@example.org"
has_line "change refused: the database file is damaged" < "$work/server.log" ||
  fail "no log line for a change refused on the damaged database"
has_line "the database file is damaged: stop the server" < "$work/server.log" ||
  fail "no log line for the damaged database"
kill -TERM "$srv_pid"; wait "$srv_pid" || true; srv_pid=
rm -f "$work/groupsrv.db-wal" "$work/groupsrv.db-shm"
cp "$work/db.bak" "$work/groupsrv.db"
start_server
expect_healthz 200 "" "healthz once restored and restarted"
expect_status 200 "" "discovery once restored and restarted" -- anon "$base/v1/groups/eng"
ok "a database truncated under the server: healthz 503 damaged and a log line until the restart"

# The admin's member record not readable (here its table renamed away by
# an operator's sqlite3; as a brief I/O or lock error would): group create
# and /metrics answered 403 forbidden, which a script takes as final, as if
# the record were not there; 503 store_unavailable with Retry-After, as a
# request of one group answers, and served again once it reads.
sqlite3 "$work/groupsrv.db" "ALTER TABLE members RENAME TO members_away;" || fail "could not rename members"
expect_status 503 store_unavailable "metrics, member records unreadable" -- c admin -D "$work/hdr" "$base/metrics"
grep -qi '^retry-after: [0-9]' "$work/hdr" || fail "metrics 503 without Retry-After"
expect_status 503 store_unavailable "group create, member records unreadable" -- \
  c admin -X POST --data '{"name":"unread","address":"unread@example.org","keyspec":"rsa:2048"}' "$base/v1/groups"
# /healthz's read of the tables fails the same way: the file is the one
# at its path, yet it said "not the file at its path (moved or replaced)"
# and the log said to restart the server.
lines0=$(wc -l < "$work/server.log")
expect_healthz 503 store_unavailable "healthz, member records unreadable"
[ "$(json_get "$work/body" database)" = "not readable (see the log)" ] ||
  fail "healthz, member records unreadable: $(cat "$work/body")"
tail -n +"$((lines0 + 1))" "$work/server.log" > "$work/log.unread"
! grep -q 'restart the server' "$work/log.unread" || fail "a read error logged as a moved database: $(cat "$work/log.unread")"
grep -q 'the database could not be read for the health check' "$work/log.unread" ||
  fail "no log line for the failed read check"
sqlite3 "$work/groupsrv.db" "ALTER TABLE members_away RENAME TO members;" || fail "could not rename members back"
expect_status 200 "" "metrics, member records readable again" -- c admin "$base/metrics"
expect_healthz 200 "" "healthz, member records readable again"
ok "an admin's record not readable: group create and /metrics 503 store_unavailable, not 403; healthz says not readable, not moved"
stop_server

# Two groups of one list address (compared without ASCII case), as a
# database made before group create refused such a pair may hold: check
# said nothing. It warns, naming both, and is no PROBLEM on that account.
sqlite3 "$work/groupsrv.db" "INSERT INTO groups (name, address, methods, key_spec, allow_pkcs1v15, created)
  SELECT 'eng-old', upper(address), methods, key_spec, allow_pkcs1v15, created FROM groups WHERE name = 'eng';" ||
  fail "could not add a second group of eng's address"
gs check > "$work/check.out" 2>&1 || true
grep -q "^groups    WARNING: the list address [^ ]* belongs to 2 groups: eng eng-old; " "$work/check.out" ||
  fail "check with two groups of one list address: $(cat "$work/check.out")"
ok "check warns of two groups of one list address: $(grep '^groups ' "$work/check.out")"

# An admin command's write into a damaged file (a page written over in
# place: a disk that lost writes, a restore onto the wrong offset) where
# the write itself reads no lost page: SQLite committed it (exit 0), into
# a file the operator restores from a backup, so the change was lost, and
# a write into a malformed b-tree may damage it further. The store checks
# the file before a connection's first write and refuses: exit 1, a line
# naming the damage, the file unchanged, no certificate files, no token
# objects.
sqlite3 "$work/groupsrv.db" "DELETE FROM groups WHERE name = 'eng-old'" || fail "could not drop eng-old"
cp "$work/groupsrv.db" "$work/db.good"
sealroot=$(sqlite3 "$work/groupsrv.db" "SELECT rootpage FROM sqlite_master WHERE name = 'seal_keys'")
[ "$sealroot" -gt 1 ] || fail "no seal_keys root page: '$sealroot'"
# A b-tree page header whose type byte is none SQLite knows.
printf '\x07' | dd of="$work/groupsrv.db" bs=1 seek=$(( (sealroot - 1) * 4096 )) conv=notrunc status=none
[ "$(sqlite3 "$work/groupsrv.db" 'PRAGMA integrity_check' 2>&1 | head -1)" != ok ] ||
  fail "the written-over page was not found malformed by sqlite3"
cp "$work/groupsrv.db" "$work/db.damaged"
# check, the operator's first look, said "database  OK" of it.
rc=0
gs check > "$work/check.out" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q "^database  PROBLEM: .* is damaged (PRAGMA quick_check: " "$work/check.out" ||
  fail "check of a damaged database: exit $rc: $(grep '^database' "$work/check.out")"
nobj=$(token_labels | wc -l)
rm -rf "$work/out"; mkdir -p "$work/out"
rc=0
gs member add eng dmg@example.org --issue-cert --out "$work/out" > /dev/null 2> "$work/err" || rc=$?
[ "$rc" = 1 ] && grep -q "is damaged.*changes are refused until it is restored" "$work/err" ||
  fail "member add into a damaged database: exit $rc: $(cat "$work/err")"
rc=0
gs group rotate eng > /dev/null 2> "$work/err" || rc=$?
[ "$rc" = 1 ] && grep -q "is damaged.*changes are refused until it is restored" "$work/err" ||
  fail "group rotate of a damaged database: exit $rc: $(cat "$work/err")"
cmp -s "$work/groupsrv.db" "$work/db.damaged" || fail "a refused command changed the damaged database"
[ ! -s "$work/groupsrv.db-wal" ] || fail "a refused command wrote the -wal"
[ -z "$(ls "$work/out")" ] || fail "a refused member add left files: $(ls "$work/out")"
[ "$(token_labels | wc -l)" = "$nobj" ] || fail "a refused command left token objects"
# A server's worker checks the file before its first write as well.
start_server
expect_status 503 store_unavailable "member PUT into a damaged database" -- \
  c admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/dmg@example.org"
grep -q "change refused: the database file is damaged.*quick_check" "$work/server.log" ||
  fail "no log line for the change refused by the check"
stop_server
cp "$work/db.good" "$work/groupsrv.db"
rm -f "$work/groupsrv.db-wal" "$work/groupsrv.db-shm"
gs member add eng dmg@example.org --issue-cert --out "$work/out" > /dev/null 2> "$work/err" ||
  fail "member add once restored: $(cat "$work/err")"
ok "check and admin commands find a damaged database: exit 1, nothing written"
