#!/usr/bin/env bash
# server-audit-disk.sh BIN SRC: the audit log on a full disk (a 64 KiB
# tmpfs, as CI runs as root; the unit test test_audit injects short writes
# where no file system can be mounted) and the audit log deleted and made
# anew, against a real server:
#   - while the disk is full every key request is refused (503
#     audit_unavailable) and /healthz says so (fdatasync succeeds on a full
#     disk: the server checks for room);
#   - `audit rotate` on the full disk fails before it seals the log;
#   - member changes over REST (PUT, DELETE) find no room for their
#     record and are not made: their 503 says so;
#   - once there is room again both recover without a restart, and
#     `groupsrv audit verify` passes: no torn record, no merged line;
#   - a log deleted and made anew at its path is written again after SIGHUP;
#   - a FIFO at the path is refused at SIGHUP (no record written into it);
#   - the database's file system read-only under a running server: an
#     admin change says so (not a deleted -wal), the server serves on.
set -euo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/integration/server-lib.sh"
fs=$work/auditfs
mkdir -p "$fs"
mount -t tmpfs -o size=64k,mode=0700 tmpfs "$fs" || fail "cannot mount a tmpfs (this test runs as root, as CI does)"
umount_fs() { # the server first: it holds the log open
  if [ -n "$srv_pid" ]; then kill -TERM "$srv_pid" 2>/dev/null || true; wait "$srv_pid" 2>/dev/null || true; srv_pid=; fi
  umount "$fs" 2>/dev/null || true
}
trap 'umount_fs; cleanup' EXIT
sed -i "s|^path = $work/audit.jsonl|path = $fs/audit.jsonl|" "$conf"
audit=$fs/audit.jsonl
start_server
url=$base/v1/groups/eng/unwrap
printf '{"recipient_info":"%s"}' "$(b64 "$work/ri.der")" > "$work/req-tls.json"
expect_status 200 "" "unwrap with room" -- c alice --data-binary @"$work/req-tls.json" "$url"
expect_status 200 "" "healthz with room" -- anon "$base/healthz"

# Fill the file system, leaving less than one record of room.
dd if=/dev/zero of="$fs/filler" bs=1k count=200 2>/dev/null || true
dd if=/dev/zero of="$fs/filler2" bs=64 count=100 2>/dev/null || true
# `audit rotate` on the full disk fails before its seal: the log does not
# end in an audit-rotate record naming an archive that was never made
# (the seal fits in the room kept past the end of the log; the new file's
# first record would not).
set +e
"$BIN/groupsrv" -c "$conf" audit rotate > "$work/rotate.out" 2>&1
rc=$?
set -e
[ "$rc" = 1 ] || fail "audit rotate on a full disk: exit $rc: $(cat "$work/rotate.out")"
tail -n 1 "$audit" | grep -q '"action":"audit-rotate"' && fail "a seal was written by a rotation that failed: $(tail -n 1 "$audit")"
[ -z "$(find "$fs" -name 'audit.jsonl.*')" ] || fail "files left by a rotation that failed: $(ls "$fs")"
ok "audit rotate on a full disk: exit 1, no seal, no archive"
# The room kept past the end of the log is used up first.
codes=""
for i in $(seq 1 150); do
  got=$(status c alice --data-binary @"$work/req-tls.json" "$url")
  codes="$codes $got"
  [ "$got" = 503 ] && break
done
[ "$got" = 503 ] || fail "no 503 with the audit disk full after 150 unwraps"
expect_status 503 audit_unavailable "unwrap with the audit disk full" -- c alice --data-binary @"$work/req-tls.json" "$url"
grep -q '"key"' "$work/body" && fail "a key was answered without its audit record"
expect_healthz 503 audit_unavailable "healthz with the audit disk full"
grep -q '"audit":"ok"' "$work/body" && fail "healthz says the audit log is ok: $(cat "$work/body")"
ok "full disk: key requests and healthz refuse (after $(echo "$codes" | wc -w) unwraps)"

# Member changes over REST reserve room for their record first, as POST
# /v1/groups does: with none they are not made, and the 503 says so
# (before, each was made, then undone when its record failed; a change of
# the same member meanwhile could be lost to the undo). A new member, a
# replaced record (a role raised) and a removal.
gs() { "$BIN/groupsrv" -c "$conf" "$@"; }
expect_status 503 audit_unavailable "member PUT with the audit disk full" -- c admin -X PUT \
  --data-binary '{"role":"member"}' "$base/v1/groups/eng/members/new@example.org"
grep -q "the change was not made" "$work/body" || fail "PUT 503 does not say the change was not made: $(cat "$work/body")"
expect_status 503 audit_unavailable "member PUT raising bob to admin with the audit disk full" -- c admin -X PUT \
  --data-binary '{"role":"admin"}' "$base/v1/groups/eng/members/bob@example.org"
grep -q "the change was not made" "$work/body" || fail "PUT 503 does not say the change was not made: $(cat "$work/body")"
expect_status 503 audit_unavailable "member DELETE of dave with the audit disk full" -- c admin -X DELETE \
  "$base/v1/groups/eng/members/dave@example.org"
grep -q "the change was not made" "$work/body" || fail "DELETE 503 does not say the change was not made: $(cat "$work/body")"
gs member list eng > "$work/members.full"
grep -q '^new@example.org ' "$work/members.full" && fail "a member added without its audit record: $(cat "$work/members.full")"
grep -Eq '^bob@example.org +member ' "$work/members.full" || fail "bob's role changed without its audit record: $(grep bob "$work/members.full")"
grep -Eq '^dave@example.org +member +default +[0-9a-f]{64}$' "$work/members.full" ||
  fail "dave removed (or his certificate lost) without its audit record: $(cat "$work/members.full")"
grep -q 'member change undone' "$work/server.log" && fail "a member change was made, then undone: $(grep 'member change undone' "$work/server.log")"
ok "member PUT, PUT replacing and DELETE with the audit disk full: 503, none made"
# The admin commands refuse before they change anything: the log opens on
# a full disk, so each reserves room for its record first (before, `group
# rotate` made the new key version, then could not record it).
gs group show eng > "$work/show.full"
for cmd in "group rotate eng" "secret rotate eng" "member add eng cli@example.org --issue-cert --out $certs" \
  "member remove eng erin@example.org"; do
  set +e; err=$(gs $cmd 2>&1); rc=$?; set -e
  [ "$rc" = 1 ] && [[ "$err" == *"no room for a record"*"not done without its record"* ]] ||
    fail "$cmd with the audit disk full: exit $rc: $err"
done
gs group show eng | diff "$work/show.full" - > /dev/null || fail "the group changed without its audit record: $(gs group show eng | diff "$work/show.full" -)"
[ ! -e "$certs/cli@example.org.pem" ] || fail "member add wrote a certificate without its audit record"
gs member list eng | grep -q '^erin@' || fail "erin removed without her audit record"
ok "admin commands with the audit disk full: exit 1 before any change ($err)"
expect_status 503 audit_unavailable "POST /v1/groups with the audit disk full" -- c admin \
  --data-binary '{"name":"full","address":"full@example.org","keyspec":"rsa:2048","methods":["tls"]}' "$base/v1/groups"
grep -q "the group was not created" "$work/body" || fail "POST /v1/groups 503: $(cat "$work/body")"
gs group list | grep -q '^full ' && fail "a group was created without its audit record"
ok "POST /v1/groups with the audit disk full: 503 before anything is made"

rm -f "$fs/filler" "$fs/filler2"
wait_healthz || fail "healthz not 200 once there is room again: $(cat "$work/body")"
ok "healthz 200 again once there is room"
for i in $(seq 1 20); do
  expect_status 200 "" "unwrap $i after the disk had room again" -- c alice --data-binary @"$work/req-tls.json" "$url" >/dev/null
done
ok "20 unwraps after the disk had room again"
out=$("$BIN/groupsrv" -c "$conf" audit verify) || fail "audit verify after the full disk: $out"
ok "audit verify: $out"

# ---- deleted and made anew: SIGHUP ----
rm -f "$audit"
expect_status 503 audit_unavailable "unwrap with the audit log deleted" -- c alice -D "$work/hdr" \
  --data-binary @"$work/req-tls.json" "$url"
# the key holder's line about the answer it dropped names the request, as
# its X-Request-Id does (operations.md: req= on a request's lines)
rid=$(sed -n 's/^x-request-id: *\([0-9a-f]*\).*/\1/ip' "$work/hdr")
[ -n "$rid" ] || fail "503 audit_unavailable without X-Request-Id: $(cat "$work/hdr")"
grep -q "req=$rid msg=\"answer dropped: its audit record is not durable\"" "$work/server.log" ||
  fail "no log line of the dropped answer with req=$rid: $(grep 'answer dropped' "$work/server.log" | tail -2)"
expect_healthz 503 audit_unavailable "healthz with the audit log deleted"
# SIGHUP alone: the server makes the file anew (operations.md)
kill -HUP "$srv_pid"
wait_healthz || fail "healthz not 200 after the audit log was made anew and SIGHUP: $(cat "$work/body")"
[ "$(stat -c %a "$audit")" = 600 ] || fail "the audit log made anew has mode $(stat -c %a "$audit")"
expect_status 200 "" "unwrap after the audit log was made anew and SIGHUP" -- c alice --data-binary @"$work/req-tls.json" "$url"
grep -q '"action":"unwrap"' "$audit" || fail "the new audit log has no record of the unwrap"
out=$("$BIN/groupsrv" -c "$conf" audit verify) || fail "audit verify of the new log: $out"
ok "new audit log written after SIGHUP; $out"
# A FIFO put at the path (to ship the log on) is refused at SIGHUP: it
# took the records until its 64 KiB buffer filled, then blocked the key
# holder's next write for good (every key request timed out, /healthz said
# "key holder unavailable"). Refused: 503 audit_unavailable, nothing
# written into it; a regular file there again and SIGHUP: served.
mv "$audit" "$fs/audit.kept"
mkfifo -m 0600 "$audit"
# Not even opened: an open is itself an act on a FIFO (a writer waiting
# for a reader goes on) or a device (a tty can become the server's
# controlling terminal). Counted while SIGHUP's reopen is refused.
refused=$(grep -c 'cannot reopen the audit log' "$work/server.log" || true)
hup_refused() {
  kill -HUP "$srv_pid"
  for _ in $(seq 1 100); do
    [ "$(grep -c 'cannot reopen the audit log' "$work/server.log" || true)" -gt "$refused" ] && return 0
    sleep 0.1
  done
  return 1
}
export -f hup_refused
opens=$(srv_pid=$srv_pid work=$work refused=$refused /usr/bin/python3 "$SRC/tests/adversarial/opens-of.py" "$audit" \
  -- bash -c hup_refused) || fail "no log line of the refused reopen of a FIFO at the audit log's path"
[ "$opens" = 0 ] || fail "the server opened the FIFO at the audit log's path $opens times (its type is checked first)"
expect_healthz 503 audit_unavailable "healthz with a FIFO at the audit log's path"
expect_status 503 audit_unavailable "unwrap with a FIFO at the audit log's path" -- c alice --data-binary @"$work/req-tls.json" "$url"
piped=$(/usr/bin/python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK)
try:
    print(len(os.read(fd, 1 << 20)))
except BlockingIOError:
    print(0)' "$audit")
[ "$piped" = 0 ] || fail "the server wrote $piped bytes of records into a FIFO at the audit log's path"
grep -q 'cannot reopen the audit log".*detail="not a regular file (a FIFO or device: refused)"' "$work/server.log" ||
  fail "no log line saying the audit log is not a regular file"
rm -f "$audit"
mv "$fs/audit.kept" "$audit"
kill -HUP "$srv_pid"
wait_healthz || fail "healthz not 200 once the audit log was back: $(cat "$work/body")"
expect_status 200 "" "unwrap once the audit log was back" -- c alice --data-binary @"$work/req-tls.json" "$url"
ok "a FIFO at the audit log's path: refused at SIGHUP, not opened, nothing written into it, served again after"
# The descriptor kept on the log is blocking: O_NONBLOCK was only for the
# open (a file system honouring it must not answer EAGAIN to a record).
held=0
for p in "$srv_pid" $(ps --ppid "$srv_pid" -o pid=); do
  for f in /proc/$p/fd/*; do
    [ "$(readlink "$f" 2>/dev/null)" = "$audit" ] || continue
    held=$((held + 1))
    flags=$(sed -n 's/^flags:[[:space:]]*//p' "/proc/$p/fdinfo/${f##*/}")
    (( (8#$flags & 8#4000) == 0 )) || fail "the audit log is held with O_NONBLOCK (pid $p fd ${f##*/} flags $flags)"
  done
done
[ "$held" -gt 0 ] || fail "no process of the server holds the audit log $audit"
ok "the audit log's descriptor ($held) is blocking"

# ---- a file-size limit (ulimit -f, systemd's LimitFSIZE=) ----
# A write past it raised SIGXFSZ, which killed the key holder in the middle
# of a record; ignored, the write fails (EFBIG) as on a full disk: 503
# audit_unavailable, and /healthz says so (fallocate does not check the
# limit on ext4 or XFS, only tmpfs does: the room check compares it with
# the log's size). Raised again on the running processes, service
# resumes; the log verifies. The log moves off the tmpfs for this.
stop_server
cp -p "$audit" "$work/audit.moved"
umount "$fs"
cp -p "$work/audit.moved" "$audit"
start_server
fsize_all() { # fsize_all LIMIT: the soft limit of serve and the key holder (the
  # network process runs as another user and writes no file)
  local p
  for p in "$srv_pid" $(ps --ppid "$srv_pid" -o pid=); do
    [ "$(stat -c %u "/proc/$p")" = "$(id -u)" ] || continue
    prlimit --pid "$p" --fsize="$1:unlimited"
  done
}
fsize_all $(( $(stat -c %s "$audit") + 2000 ))
expect_healthz 503 audit_unavailable "healthz with the audit log at the file-size limit"
for i in $(seq 1 40); do
  got=$(status c alice --data-binary @"$work/req-tls.json" "$url")
  [ "$got" = 200 ] || break
done
[ "$got" = 503 ] && grep -q '"code":"audit_unavailable"' "$work/body" ||
  fail "unwrap $i at the file-size limit: HTTP $got: $(head -c 300 "$work/body")"
grep -q '"key"' "$work/body" && fail "a key was answered without its audit record"
for p in "$srv_pid" $(ps --ppid "$srv_pid" -o pid=); do kill -0 "$p" || fail "a server process died at the file-size limit"; done
grep -q 'File size limit\|signal 25\|SIGXFSZ' "$work/server.log" && fail "killed by SIGXFSZ: $(grep -i 'signal\|size limit' "$work/server.log" | tail -3)"
fsize_all unlimited
wait_healthz || fail "healthz not 200 once the file-size limit was raised: $(cat "$work/body")"
expect_status 200 "" "unwrap once the file-size limit was raised" -- c alice --data-binary @"$work/req-tls.json" "$url"
out=$("$BIN/groupsrv" -c "$conf" audit verify) || fail "audit verify after the file-size limit: $out"
ok "audit log at the file-size limit: 503 audit_unavailable after $i unwraps, healthz 503, served once raised; $out"
# ---- the log's directory deleted under the running server ----
# Refused until it is back; SIGHUP's log line names the directory (before:
# only "audit log cannot be written", then "No such file or directory",
# read as the file missing, which the reopen makes); made again and SIGHUP:
# served, a new chain that verifies.
rm -rf "$fs"
expect_status 503 audit_unavailable "unwrap with the audit log's directory deleted" -- c alice \
  --data-binary @"$work/req-tls.json" "$url"
kill -HUP "$srv_pid"
for _ in $(seq 1 50); do
  grep -q "cannot reopen the audit log\".*detail=\"its directory $fs does not exist (deleted under the server" "$work/server.log" && break
  sleep 0.1
done
grep -q "cannot reopen the audit log\".*detail=\"its directory $fs does not exist (deleted under the server" "$work/server.log" ||
  fail "no log line saying why the audit log cannot be reopened: $(grep 'cannot reopen' "$work/server.log" | tail -1)"
expect_healthz 503 audit_unavailable "healthz with the audit log's directory deleted"
mkdir -m 0700 "$fs"
kill -HUP "$srv_pid"
wait_healthz || fail "healthz not 200 once the directory was back and SIGHUP: $(cat "$work/body")"
expect_status 200 "" "unwrap once the directory was back" -- c alice --data-binary @"$work/req-tls.json" "$url"
out=$("$BIN/groupsrv" -c "$conf" audit verify) || fail "audit verify of the log made anew: $out"
ok "the audit log's directory deleted: 503, SIGHUP says why; made again and SIGHUP: served; $out"
# groupmail (every program alike) at the limit: exit 1 as on a full disk,
# not 153 (killed by SIGXFSZ), nothing at --out, and the line says the
# output could not be written (before: "encryption failed: I/O error").
head -c 30000 /dev/zero | tr '\0' a > "$work/big.txt"
set +e
prlimit --fsize=8192 "$BIN/groupmail" encrypt --group-cert "$certs/group.pem" --in "$work/big.txt" \
  --out "$work/big.p7m" 2> "$work/gm.err"
rc=$?
set -e
[ "$rc" = 1 ] && [ ! -e "$work/big.p7m" ] && grep -qx "groupmail: cannot write $work/big.p7m: File too large" "$work/gm.err" ||
  fail "groupmail encrypt --out at the file-size limit: exit $rc: $(cat "$work/gm.err")"
ok "groupmail encrypt --out at the file-size limit: exit 1, nothing written ($(cat "$work/gm.err"))"
# An output a little over the limit fails in OpenSSL's final write of the
# S/MIME, which the envelope layer reports as a library failure: the line
# must still say the output could not be written, and why.
head -c 3000 /dev/zero | tr '\0' a > "$work/small.txt"
set +e
prlimit --fsize=4096 "$BIN/groupmail" encrypt --group-cert "$certs/group.pem" --in "$work/small.txt" \
  --out "$work/small.p7m" 2> "$work/gm.err"
rc=$?
set -e
[ "$rc" = 1 ] && [ ! -e "$work/small.p7m" ] && grep -qx "groupmail: cannot write $work/small.p7m: File too large" "$work/gm.err" ||
  fail "groupmail encrypt --out just over the file-size limit: exit $rc: $(cat "$work/gm.err")"
ok "groupmail encrypt --out just over the file-size limit: $(cat "$work/gm.err")"
# A full disk met where the staged output is copied out (standard output,
# or an --out that is a device), after the envelope was made: the line
# names the output and says why, as for a file.
for out in stdout /dev/full; do
  rc=0
  if [ "$out" = stdout ]; then
    "$BIN/groupmail" encrypt --group-cert "$certs/group.pem" --in "$work/small.txt" > /dev/full 2> "$work/gm.err" || rc=$?
    want="groupmail: cannot write the output: No space left on device"
  else
    "$BIN/groupmail" encrypt --group-cert "$certs/group.pem" --in "$work/small.txt" --out "$out" 2> "$work/gm.err" || rc=$?
    want="groupmail: cannot write $out: No space left on device"
  fi
  [ "$rc" = 1 ] && grep -qx "$want" "$work/gm.err" || fail "groupmail encrypt to a full $out: exit $rc: $(cat "$work/gm.err")"
done
ok "groupmail encrypt to a full standard output or --out device: $(cat "$work/gm.err")"
# The database's file system read-only under a running server (a failing
# disk that ext4 turned read-only; here a read-only bind mount of its
# directory): SQLite opens the file read-only without a word, and an admin
# change was refused as if the -wal had been deleted ("stop the server
# with SIGTERM ..."). It says the database cannot be written and why; the
# server goes on serving.
ro=$work/ro-view
mkdir -p "$ro"
mount --bind "$work" "$ro" || fail "cannot bind-mount $work"
if ! mount -o remount,bind,ro "$ro"; then umount "$ro"; fail "cannot make the bind mount read-only"; fi
sed "s|^path = $work/groupsrv.db\$|path = $ro/groupsrv.db|" "$conf" > "$work/ro.conf"
rc=0
"$BIN/groupsrv" -c "$work/ro.conf" member remove eng bob@example.org 2> "$work/ro.err" || rc=$?
umount "$ro"
[ "$rc" = 1 ] && grep -qx "groupsrv: database $ro/groupsrv.db cannot be written: Read-only file system" "$work/ro.err" ||
  fail "member remove on a read-only database file system: exit $rc: $(cat "$work/ro.err")"
expect_status 200 "" "unwrap beside a read-only view of the database" -- c alice --data-binary @"$work/req-tls.json" "$url"
gs member list eng | grep -q '^bob@example.org ' || fail "bob was removed through a read-only file system"
ok "an admin change on a read-only database file system: $(cat "$work/ro.err")"
stop_server
