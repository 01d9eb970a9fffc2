#!/usr/bin/env bash
# ops-audit-since.sh BIN SRC: keeping fewer audit archives, as
# docs/operations.md says: the oldest moved away, `audit verify` (strict)
# exits 1 from then on and names the missing one (an attacker deleting
# archives is noticed), while `audit verify --since ARCHIVE` checks the
# chain from the oldest archive kept, prints the hash it starts from (the
# chain head the moved-away archive verified alone ends in) and exits 0;
# a kept archive that was changed still fails, and so does a file between
# it and the log that is missing, or a --since file the chain never passes.
set -euo pipefail
BIN=$1 SRC=$2
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/ops-audit-since.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
mkdir -m 0700 "$work/log" "$work/away"
conf=$work/groupsrv.conf
cat > "$conf" <<CONF
[hsm]
module = /usr/lib/softhsm/libsofthsm2.so
pin_source = $work/pin
[db]
path = $work/groupsrv.db
[audit]
path = $work/log/audit.jsonl
CONF
gs() { "$BIN/groupsrv" -c "$conf" "$@"; }
# run RC DESC -- command...: exit status RC; stdout in $work/out, stderr in $work/err.
run() {
  local want=$1 desc=$2 rc=0
  shift 3
  "$@" >"$work/out" 2>"$work/err" || rc=$?
  [ "$rc" = "$want" ] || fail "$desc: exit $rc, wanted $want: $(cat "$work/out" "$work/err")"
}
hex64='[0-9a-f]{64}'

# Four rotations: archives a1 (the chain's start) .. a4, then the log.
install -m 0600 /dev/null "$work/log/audit.jsonl"
arch=()
for _ in 1 2 3 4; do
  out=$(gs audit rotate) || fail "audit rotate: $out"
  arch+=("$(sed -n 's/^sealed .* as \(.*\); .* continues the chain$/\1/p' <<<"$out")")
done
for a in "${arch[@]}"; do [ -f "$a" ] || fail "no archive $a"; done
a1=${arch[0]} a2=${arch[1]} a3=${arch[2]} a4=${arch[3]}

run 0 "strict verify, every archive there" -- gs audit verify
grep -Eq "^ok: [0-9]+ lines in 5 files, chain head $hex64\$" "$work/out" || fail "strict verify said: $(cat "$work/out")"
# Before moving a1 and a2 away: the hash a3 starts from, recorded, is the
# chain head of a2 verified alone (the seal's hash).
run 0 "verify --since a3, every archive there" -- gs audit verify --since "$a3"
grep -Eq "^ok: [0-9]+ lines in 3 files from $a3, start $hex64, chain head $hex64\$" "$work/out" ||
  fail "verify --since said: $(cat "$work/out")"
start=$(sed -E 's/.*, start ([0-9a-f]{64}),.*/\1/' "$work/out")
run 0 "a2 alone" -- gs audit verify --file "$a2" --no-follow
grep -q "chain head $start\$" "$work/out" || fail "a2's head is not the start a3 prints ($start): $(cat "$work/out")"
ok "verify --since a3 starts from $start, a2's chain head"

# A copy is not the archive (the walk back reaches the chain's start
# without passing it): exit 1, not a check of the whole chain passed off
# as one from the copy.
cp "$a2" "$work/a2.copy"
run 1 "verify --since a copy of a2" -- gs audit verify --since "$work/a2.copy"
grep -q "audit verify: --since $work/a2.copy: not an earlier file of this audit log's chain" "$work/err" ||
  fail "$(cat "$work/err")"

mv "$a1" "$a2" "$work/away/"
run 1 "strict verify with a1, a2 moved away" -- gs audit verify
grep -q "audit verify: $a2: an earlier audit log file named by the chain is missing" "$work/err" ||
  fail "strict verify does not name a2: $(cat "$work/err")"
ok "strict verify still exit 1 with the oldest archives moved away: $(cat "$work/err")"
run 0 "verify --since a3 with a1, a2 moved away" -- gs audit verify --since "$a3"
grep -Eq "^ok: [0-9]+ lines in 3 files from $a3, start $start, chain head $hex64\$" "$work/out" ||
  fail "verify --since a3 said: $(cat "$work/out")"
run 0 "verify --since a3 by a relative name" -- sh -c 'cd "$1" && shift && "$@"' sh "$work/log" \
  "$BIN/groupsrv" -c "$conf" audit verify --since "./$(basename "$a3")"
grep -q "start $start" "$work/out" || fail "verify --since ./a3 said: $(cat "$work/out")"
# A bare name, as `ls` of the log's directory shows it, typed from
# elsewhere (an admin's home): the archive of that name in the log's
# directory, as the chain's own "previous" names are read.
run 0 "verify --since a3 by its bare name from another directory" -- sh -c 'cd "$1" && shift && "$@"' sh "$work/away" \
  "$BIN/groupsrv" -c "$conf" audit verify --since "$(basename "$a3")"
grep -q "start $start" "$work/out" || fail "verify --since a3's bare name said: $(cat "$work/out")"
run 0 "verify --since the log itself" -- gs audit verify --since "$work/log/audit.jsonl"
grep -Eq "^ok: 1 lines in 1 files from .*, start $hex64, chain head $hex64\$" "$work/out" ||
  fail "verify --since the log said: $(cat "$work/out")"
ok "verify --since a3: exit 0, the same start"

# The moved-away archive, checked alone, and one that is not on the chain.
run 1 "verify --since a moved-away archive at its old name" -- gs audit verify --since "$a2"
grep -q "audit verify: $a2: No such file or directory" "$work/err" || fail "$(cat "$work/err")"
# a2 moved keeps its inode, but the chain's walk back from the log meets
# the gap at a2's name first: still exit 1, naming it
run 1 "verify --since a2 at its new place" -- gs audit verify --since "$work/away/$(basename "$a2")"
grep -q "audit verify: $a2: an earlier audit log file named by the chain is missing" "$work/err" || fail "$(cat "$work/err")"
run 2 "--since with --no-follow" -- gs audit verify --since "$a3" --no-follow
run 2 "audit rotate --since" -- gs audit rotate --since "$a3"
sed -e 's/^path = .*audit.jsonl$/store = db/' -e "s|^path = .*groupsrv.db\$|url = postgresql:///groupsrv?host=$work/no-such-socket-dir|" \
  "$conf" > "$work/db.conf"
run 2 "verify --since with [audit] store = db" -- "$BIN/groupsrv" -c "$work/db.conf" audit verify --since "$a3"
grep -q "audit verify: --since is for a file log" "$work/err" || fail "$(cat "$work/err")"
ok "--since a missing file, one behind the gap: exit 1; with --no-follow or rotate: exit 2"

# A file between a3 and the log missing is still exit 1.
mv "$a4" "$work/away/"
run 1 "verify --since a3 with a4 missing" -- gs audit verify --since "$a3"
grep -q "audit verify: $a4: an earlier audit log file named by the chain is missing" "$work/err" ||
  fail "verify --since a3 does not name a4: $(cat "$work/err")"
mv "$work/away/$(basename "$a4")" "$a4"
ok "verify --since a3 with a4 missing: exit 1"

# A kept archive changed: exit 3, its first line too (its prev is the start).
cp -p "$a3" "$work/a3.orig"
sed -i '2s/"audit-rotate"/"audit-rotatE"/' "$a3"
run 3 "verify --since a3, a3's seal changed" -- gs audit verify --since "$a3"
grep -q "hash chain broken" "$work/err" || fail "$(cat "$work/err")"
cp -p "$work/a3.orig" "$a3"
sed -i -E "1s/\"prev\":\"$start\"/\"prev\":\"$(printf '%064d' 1)\"/" "$a3"
cmp -s "$a3" "$work/a3.orig" && fail "a3's first prev not changed"
run 3 "verify --since a3, a3's start changed" -- gs audit verify --since "$a3"
cp -p "$work/a3.orig" "$a3"
# A start that is no hash (64 bytes of anything, an escape sequence
# among them), with the chain after it made again to match (a rewritten
# archive), is refused, not printed for the operator to compare.
for f in "$a3" "$a4" "$work/log/audit.jsonl"; do cp -p "$f" "$f.orig"; done
python3 - "$a3" "$a4" "$work/log/audit.jsonl" <<'PY'
import hashlib, re, sys
prev = None
for i, path in enumerate(sys.argv[1:]):
    lines = open(path, 'rb').read().split(b'\n')[:-1]
    for j, line in enumerate(lines):
        want = b'\\u001b[2J' + b'z' * 60 if prev is None else hashlib.sha256(prev).hexdigest().encode()
        line = re.sub(rb'"prev":"[^"]*"', lambda m: b'"prev":"' + want + b'"', line, count=1)
        lines[j] = prev = line
    open(path, 'wb').write(b'\n'.join(lines) + b'\n')
PY
run 3 "verify --since a3, a3's start not a hash" -- gs audit verify --since "$a3"
grep -q zzzz "$work/out" && fail "the non-hash start was printed: $(cat "$work/out")"
for f in "$a3" "$a4" "$work/log/audit.jsonl"; do mv "$f.orig" "$f"; done
run 0 "verify --since a3 restored" -- gs audit verify --since "$a3"
ok "a changed kept archive: exit 3"
