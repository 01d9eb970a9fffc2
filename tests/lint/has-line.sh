#!/bin/bash
# has-line.sh SRC: has_line (tests/lib/has-line.sh) answers as grep -q with
# a writer still writing after the match, where `| grep -q` fails under
# pipefail with the writer's SIGPIPE; and no test searches a growing log
# (tail of a file) with `| grep -q`.
set -euo pipefail
src=$1
. "$src/tests/lib/has-line.sh"
fail() { echo "FAIL: $*" >&2; exit 1; }
# a writer that writes again after the line grep stops at
slow() { echo "early line"; sleep 0.2; echo "late line"; }
rc=0
slow | grep -q early || rc=$?
[ "$rc" = 141 ] || echo "note: | grep -q gave $rc, not SIGPIPE's 141, on this machine" >&2
slow | has_line early || fail "has_line: the writer's SIGPIPE failed a match"
slow | has_line -E '^late' || fail "has_line: no match of the last line"
if slow | has_line nothing; then fail "has_line: a match of nothing"; fi
rc=0
slow | has_line -z -e '[' 2>/dev/null || rc=$?
[ "$rc" = 2 ] || fail "has_line: grep's error gave $rc, not 2"
rc=0
{ slow; exit 3; } | has_line early || rc=$?
[ "$rc" = 3 ] || fail "has_line: the writer's own failure gave $rc, not 3"
head -c 100000 /dev/zero | tr '\0' 'x' | { echo match; cat; echo; } | has_line -x match ||
  fail "has_line: 100 KB after the match"
# tail -c/-n +MARK of a file is a growing log: its output is searched with has_line
# or the slice is written to a file and grep'd there
cd "$src"
bad=$(grep -rnE 'tail +-[cn] +"?\+[^|]*\| *grep +(-[A-Za-z]+ +)*-[A-Za-z]*q' tests --include='*.sh' |
  grep -v '^tests/lint/has-line.sh:' | grep -v 'bash -c' || true)
[ -z "$bad" ] || fail "a log searched with tail | grep -q (under pipefail, a SIGPIPE fails it; use has_line):
$bad"
echo "ok: has_line"
