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

# A damaged log as the operator sees it: each case its exit code and one
# line, `groupsrv: audit verify: FILE: ...` as every command's error
# (groupsrv.1.md), naming the record; an edited record shows at the next
# line, whose prev no longer matches, so both lines are named.
first=$work/elsewhere
verify_err() { # verify_err RC GLOB DESC FILE
  set +e; err=$(gs audit verify --file "$4" --no-follow 2>&1 >/dev/null); rc=$?; set -e
  [ "$rc" = "$1" ] && [ "$(printf '%s\n' "$err" | wc -l)" = 1 ] && [[ "$err" == $2 ]] ||
    fail "$3: rc $rc: $err"
  ok "$3: exit $1: $err"
}
sed '3s/"time":"2/"time":"1/' "$first" > "$work/edited.jsonl"
verify_err 3 "groupsrv: audit verify: $work/edited.jsonl: line 4: audit log hash chain broken (3 good lines before it): its prev is not the hash of line 3 (line 3 or 4 changed, or records between them removed or moved)" \
  "an edited record" "$work/edited.jsonl"
sed '3d' "$first" > "$work/deleted.jsonl"
verify_err 3 "groupsrv: audit verify: $work/deleted.jsonl: line 3: audit log hash chain broken (2 good lines before it): its prev is not the hash of line 2 *" \
  "a deleted record" "$work/deleted.jsonl"
awk 'NR == 3 {held = $0; next} {print} NR == 4 {print held}' "$first" > "$work/swapped.jsonl"
verify_err 3 "groupsrv: audit verify: $work/swapped.jsonl: line 3: *" "two records swapped" "$work/swapped.jsonl"
head -c -20 "$first" > "$work/torn.jsonl"
verify_err 6 "groupsrv: audit verify: $work/torn.jsonl: torn tail: line $(wc -l < "$first") is an incomplete record *" \
  "a torn last record" "$work/torn.jsonl"
{ cat "$first"; echo 'not a record'; } > "$work/junk.jsonl"
verify_err 3 "groupsrv: audit verify: $work/junk.jsonl: line $(($(wc -l < "$first") + 1)): audit log line malformed *" \
  "a line that is no record" "$work/junk.jsonl"
verify_err 1 "groupsrv: audit verify: $work/absent.jsonl: No such file or directory" "a missing file" "$work/absent.jsonl"
# a named pipe (or ssh ... | audit verify --file /dev/stdin): refused at
# once, not waited on for a writer, nor "Illegal seek"
mkfifo "$work/fifo"
set +e; err=$(timeout 10 "$BIN/groupsrv" -c "$conf" audit verify --file "$work/fifo" 2>&1); rc=$?; set -e
[ "$rc" = 1 ] && [ "$err" = "groupsrv: audit verify: $work/fifo: not a regular file (save the log to a file and verify that)" ] ||
  fail "audit verify of a named pipe: rc $rc: $err"
ok "audit verify of a named pipe: exit 1: $err"
set +e; err=$(gs audit rotate --file "$work/absent.jsonl" 2>&1); rc=$?; set -e
[ "$rc" = 1 ] && [ "$err" = "groupsrv: audit rotate: $work/absent.jsonl: No such file or directory" ] ||
  fail "audit rotate of a missing file: rc $rc: $err"
ok "audit rotate of a missing file: exit 1: $err"
# An append-only log (chattr +a, a common hardening): the server appends as
# before, but rotating links the file to its archive name and replaces it,
# which the attribute forbids. One line naming the attribute and what to
# do, not "audit log cannot be written" of a file being written; nothing
# sealed. Where the file system has no such attribute (or not as root),
# skipped.
if [ "$(id -u)" = 0 ] && chattr +a "$log" 2>/dev/null; then
  lines=$(wc -l < "$log")
  set +e; err=$(gs audit rotate 2>&1); rc=$?; set -e
  [ "$(unwrap)" = 200 ] || { chattr -a "$log"; fail "unwrap with the log append-only"; }
  chattr -a "$log"
  [ "$rc" = 1 ] && [ "$err" = "groupsrv: audit rotate: $log: the file is append-only (chattr +a), which forbids giving it its archive name and putting the next file at its path: remove the attribute for the rotation (chattr -a) and set it on the new file afterwards" ] ||
    fail "audit rotate of an append-only log: rc $rc: $err"
  [ "$(wc -l < "$log")" = $((lines + 1)) ] || fail "the append-only log got $(($(wc -l < "$log") - lines)) records, want the unwrap's 1"
  v=$(gs audit verify --no-follow 2>&1) || fail "verify after a refused rotation of an append-only log: $v"
  out=$(gs audit rotate) || fail "audit rotate once the attribute is gone: $out"
  ok "audit rotate of an append-only log: exit 1, the attribute named; served on; rotated once it is gone"
  # The log's directory append-only (chattr -R +a over the log directory)
  # or immutable: rotating could make the archive's name and seal the log,
  # then not put the next file at its path; the seal stayed in the file
  # the server writes on, the archive's name a second link to it and the
  # .rotating file, which no later rotation could remove ("cannot be
  # written" each time). Refused first, naming the directory; nothing
  # changed. A copy of the log in a directory of its own, so that the
  # server's files stay out of it.
  mkdir "$work/adir"
  cp "$log" "$work/adir/audit.jsonl"
  cp "$log" "$work/adir.before"
  for a in a i; do
    chattr "+$a" "$work/adir"
    set +e; err=$(gs audit rotate --file "$work/adir/audit.jsonl" 2>&1); rc=$?; set -e
    chattr "-$a" "$work/adir"
    case $a in a) what="append-only (chattr +a)" ;; i) what="immutable (chattr +i)" ;; esac
    [ "$rc" = 1 ] && [ "$err" = "groupsrv: audit rotate: $work/adir/audit.jsonl: its directory $work/adir is $what, which forbids putting the next file at the log's path: remove the attribute for the rotation (chattr -$a $work/adir)" ] ||
      fail "audit rotate in a directory chattr +$a: rc $rc: $err"
    [ "$(ls "$work/adir")" = audit.jsonl ] || fail "audit rotate in a directory chattr +$a left: $(ls "$work/adir" | tr '\n' ' ')"
    cmp -s "$work/adir/audit.jsonl" "$work/adir.before" || fail "audit rotate in a directory chattr +$a changed the log"
  done
  out=$(gs audit rotate --file "$work/adir/audit.jsonl") || fail "audit rotate once the directory's attribute is gone: $out"
  ok "audit rotate in an append-only or immutable directory: exit 1, the directory named, nothing changed"
  # An append-only log whose last record a crash tore: serve cuts the
  # fragment off at start, which the attribute forbids, so it does not
  # start; the line says so and what to do, not only "cannot be written:
  # Operation not permitted" of a file the server's user may write.
  stop_server
  printf '{"time":"2026-12-06T' >> "$log"
  chattr +a "$log"
  set +e; timeout 60 "$BIN/groupsrv" -c "$conf" serve > "$work/torn-serve.log" 2>&1; rc=$?; set -e
  chattr -a "$log"
  [ "$rc" != 0 ] && [ "$rc" != 124 ] || fail "serve with a torn append-only log: rc $rc"
  grep -qF "msg=\"not started: the audit log cannot be opened\" path=\"$log\" err=\"audit log cannot be written\" detail=\"append-only (chattr +a), and its last record is torn (an interrupted write): serve cuts that off at start, which the attribute forbids: chattr -a the file, start serve, then chattr +a it again\"" "$work/torn-serve.log" ||
    fail "serve with a torn append-only log: $(cat "$work/torn-serve.log")"
  chattr +i "$log"
  set +e; timeout 60 "$BIN/groupsrv" -c "$conf" serve > "$work/immutable-serve.log" 2>&1; rc=$?; set -e
  chattr -i "$log"
  [ "$rc" != 0 ] && [ "$rc" != 124 ] || fail "serve with an immutable log: rc $rc"
  grep -qF "detail=\"immutable (chattr +i): the server cannot append to it; chattr -i the file\"" "$work/immutable-serve.log" ||
    fail "serve with an immutable log: $(cat "$work/immutable-serve.log")"
  start_server
  ok "serve with a torn append-only log, or an immutable one: not started, the attribute named; started once it is gone"
else
  ok "SKIPPED: no append-only attribute here (chattr +a refused, or not root)"
fi
