#!/usr/bin/env bash
# ops-db-disk.sh BIN SRC: the SQLite database on a full disk (a tmpfs, as
# CI runs as root), as docs/operations.md says:
#   - a running server goes on serving key requests (it only reads) and
#     /healthz stays 200; REST writes get 503 store_unavailable; admin
#     commands that write exit 1 ("database or disk is full") and leave
#     nothing behind (no certificate files, no token objects);
#   - a process that opens the database anew on the full disk (no room for
#     SQLite's -shm file) says so: "(No space left on device)", serve exit 1;
#   - on a read-only file system both say so: "(... Read-only file system)";
#   - with room again everything works, and the database is intact.
set -euo pipefail
BIN=$1 SRC=$2
SRV_MEMBERS=alice
. "$SRC/tests/integration/server-lib.sh"
fs=$work/dbfs
mkdir -p "$fs"
mount -t tmpfs -o size=1m,mode=0700 tmpfs "$fs" || fail "cannot mount a tmpfs (this test runs as root, as CI does)"
umount_fs() {
  if [ -n "$srv_pid" ]; then kill -TERM "$srv_pid" 2>/dev/null || true; wait "$srv_pid" 2>/dev/null || true; srv_pid=; fi
  umount "$fs" 2>/dev/null || true
}
trap 'umount_fs; cleanup' EXIT
gs member list eng > "$work/members-before" # checkpointed: the whole database in one file
cp "$work/groupsrv.db" "$fs/groupsrv.db"
sed -i "s|^path = $work/groupsrv.db\$|path = $fs/groupsrv.db|" "$conf"
grep -q "^path = $fs/groupsrv.db\$" "$conf" || fail "database path not moved"
fill() { dd if=/dev/zero of="$fs/fill" bs=4k 2>/dev/null || true; dd if=/dev/zero of="$fs/fill2" bs=64 2>/dev/null || true; }

start_server
"$BIN/mkri" --cert "$certs/group.pem" --kt oaep-sha1 --out "$work/ri.der" >/dev/null || fail "mkri"
printf '{"recipient_info":"%s","content_algorithm":"aes-256-cbc"}' "$(b64 "$work/ri.der")" > "$work/unwrap.json"
url=$base/v1/groups/eng/unwrap
nobj=$(token_labels | wc -l)
mkdir -p "$work/out"
fill
expect_status 200 "" "unwrap with the database's disk full" -- c alice --data-binary @"$work/unwrap.json" "$url"
expect_status 200 "" "healthz with the database's disk full" -- anon "$base/healthz"
expect_status 503 store_unavailable "member added over REST, disk full" -- \
  c admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/new@example.org"
rc=0
gs member add eng full@example.org --issue-cert --out "$work/out" > /dev/null 2> "$work/err" || rc=$?
[ "$rc" = 1 ] && grep -q "database or disk is full" "$work/err" || fail "member add, disk full: exit $rc: $(cat "$work/err")"
[ ! -e "$work/out/full@example.org.pem" ] && [ ! -e "$work/out/full@example.org.key" ] ||
  fail "member add, disk full, left its certificate files: $(ls "$work/out")"
rc=0
gs group rotate eng > /dev/null 2> "$work/err" || rc=$?
[ "$rc" = 1 ] || fail "group rotate, disk full: exit $rc: $(cat "$work/err")"
nafter=$(token_labels | wc -l)
[ "$nafter" = "$nobj" ] || fail "a refused command left token objects: $nobj before, $nafter after"
ok "disk full: member add and group rotate exit 1, nothing left on disk or token"
# POST /v1/groups with ever more room left: the group and its creator's
# admin record land together or not at all (one transaction), so a 503
# leaves no group and nothing on the token, and a 201 a group its creator
# manages. They were two commits: with room for the first alone the group
# stood with its keys and no admin (503, and its retry 400 exists).
made=
for kib in 16 24 32 40 48 64 96 128; do
  fill
  truncate -s "-$((kib * 1024))" "$fs/fill"
  n=ng$kib
  got=$(status c admin -X POST --data "{\"name\":\"$n\",\"address\":\"$n@example.org\",\"keyspec\":\"rsa:2048\"}" \
    "$base/v1/groups")
  cp "$work/body" "$work/create.body"
  rm -f "$fs/fill" "$fs/fill2"
  case $got in
  201)
    expect_status 200 "" "group made with $kib KiB left, its creator its admin" -- \
      c admin "$base/v1/groups/$n/members/admin@example.org"
    made=$n
    break
    ;;
  503)
    grep -q '"code":"store_unavailable"' "$work/create.body" || fail "group create, $kib KiB left: $(cat "$work/create.body")"
    expect_status 404 not_found "group refused with $kib KiB left: not made" -- anon "$base/v1/groups/$n"
    [ "$(token_labels | wc -l)" = "$nobj" ] || fail "group refused with $kib KiB left: its keys left on the token"
    ;;
  *) fail "group create, $kib KiB left: HTTP $got: $(cat "$work/create.body")" ;;
  esac
done
[ -n "$made" ] || fail "no group made with 128 KiB left"
ok "group create on a filling disk: all or nothing"
stop_server

# A new process needs room for the -shm file even to read: said so. The
# last connection's close usually removes -wal and -shm (here the full
# disk kept them, the WAL checkpointed and empty): as after a reboot.
rm -f "$fs/fill" "$fs/fill2"
[ ! -s "$fs/groupsrv.db-wal" ] || fail "the WAL holds records after the server stopped"
rm -f "$fs/groupsrv.db-wal" "$fs/groupsrv.db-shm"
fill
rc=0
gs member list eng > /dev/null 2> "$work/err" || rc=$?
[ "$rc" = 1 ] && grep -q "disk I/O error (No space left on device)" "$work/err" ||
  fail "member list on a full disk: exit $rc: $(cat "$work/err")"
ok "member list on a full disk: $(cat "$work/err")"
rc=0
timeout 60 "$BIN/groupsrv" -c "$conf" serve > /dev/null 2> "$work/err" || rc=$?
[ "$rc" = 1 ] && grep -q "disk I/O error (No space left on device)" "$work/err" ||
  fail "serve on a full disk: exit $rc: $(cat "$work/err")"
ok "serve on a full disk stops and says why: $(grep -m1 "No space left" "$work/err")"
# The same on a read-only file system (a [db] path outside the unit's
# writable paths, ProtectSystem=strict): SQLite says only "unable to open
# database file" (its errno that of its last try, ENOENT for the -shm file
# it then looked for): the cause is named.
rm -f "$fs/fill" "$fs/fill2" "$fs/groupsrv.db-wal" "$fs/groupsrv.db-shm"
mount -o remount,ro "$fs" || fail "cannot remount the database's file system read-only"
why="unable to open database file (the database's directory cannot be written: Read-only file system)"
rc=0
gs member list eng > /dev/null 2> "$work/err" || rc=$?
[ "$rc" = 1 ] && grep -qF "$why" "$work/err" || fail "member list on a read-only file system: exit $rc: $(cat "$work/err")"
rc=0
timeout 60 "$BIN/groupsrv" -c "$conf" serve > /dev/null 2> "$work/err" || rc=$?
[ "$rc" = 1 ] && grep -qF "$why" "$work/err" || fail "serve on a read-only file system: exit $rc: $(cat "$work/err")"
mount -o remount,rw "$fs" || fail "cannot remount the database's file system read-write"
ok "member list and serve on a read-only file system: exit 1, $why"

rm -f "$fs/fill" "$fs/fill2"
gs member list eng > "$work/members-after" || fail "member list with room again"
diff -u "$work/members-before" "$work/members-after" || fail "membership changed by the full disk"
[ "$(sqlite3 "$fs/groupsrv.db" 'PRAGMA integrity_check')" = ok ] || fail "integrity_check"
start_server
expect_status 200 "" "unwrap with room again" -- c alice --data-binary @"$work/unwrap.json" "$url"
expect_status 201 "" "member added over REST with room again" -- \
  c admin -X PUT --data '{"role":"member"}' "$base/v1/groups/eng/members/new@example.org"
stop_server
ok "room again: the same membership, integrity_check ok, serving and writing"
