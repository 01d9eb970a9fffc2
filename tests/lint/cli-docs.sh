#!/usr/bin/env bash
# cli-docs.sh SRC BIN: the command pages (docs/*.1.md) and the programs
# agree on the names a script or an acceptance test uses: every command
# and option of a page's synopsis is in the program's --help and the other
# way round; every option a page names is one the program accepts; every
# configuration key a page documents is one the program reads and every
# key it reads is documented; the page's own example configuration, and
# the one the package installs (dist/examples), loads; the ranges given are
# the ones taken; the options of the documents' examples exist;
# groupmail's environment variables are the ones it reads. A name added on
# one side only fails here.
set -euo pipefail
src=$1 bin=$2
work=$(mktemp -d "${GS_TEST_WORK:-/tmp}/cli-docs.XXXXXX")
trap 'rm -rf "$work"' EXIT
export HOME=$work/home XDG_CONFIG_HOME= XDG_DATA_HOME=
unset GROUPSRV_CONF EXPLODER_CONF GROUPMAIL_CONFIG
mkdir -p "$HOME"
nfail=0
fail() { echo "FAIL: $*" >&2; nfail=$((nfail + 1)); }
# same WHAT A B: the sorted word lists A and B are equal, else names each difference.
same() {
  local what=$1 a=$2 b=$3 d
  [ -n "$a" ] && [ -n "$b" ] || { fail "$what: nothing found (a pattern is stale)"; return 0; }
  d=$(comm -3 <(tr ' ' '\n' <<<"$a" | sed '/^$/d' | sort -u) <(tr ' ' '\n' <<<"$b" | sed '/^$/d' | sort -u) |
    sed -E 's/^\t(.*)/only in the second: \1/; s/^([^o].*)/only in the first: \1/')
  if [ -n "$d" ]; then fail "$what: $(tr '\n' ';' <<<"$d")"; else echo "ok: $what ($(wc -w <<<"$a") names)"; fi
}
flags() { { grep -oE -- '--[a-z][a-z0-9-]*' || true; } | sort -u | tr '\n' ' '; }
section() { sed -n "/^## $2\$/,/^## /p" "$src/docs/$1"; }

# ---- groupsrv ----
syn=$(section groupsrv.1.md SYNOPSIS)
same "groupsrv(1) SYNOPSIS options = groupsrv --help options" "$(flags <<<"$syn")" "$("$bin/groupsrv" --help | flags)"
cmds() { grep -oE "$1" | sed -E "s/$2//; s/ /:/" | sort -u | tr '\n' ' '; }
same "groupsrv(1) SYNOPSIS commands = groupsrv --help commands" \
  "$(cmds '^groupsrv \[-c FILE\]( \[-v\])? [a-z-]+( [a-z-]+)?' '^groupsrv \[-c FILE\]( \[-v\])? ' <<<"$syn")" \
  "$("$bin/groupsrv" --help | cmds '^  [a-z-]+( [a-z-]+)?' '^  ')"
# the CONFIGURATION table's rows against config.c's key table
doc_keys=$(section groupsrv.1.md CONFIGURATION | grep -E '^\| [a-z]+ \| [a-z_]+ \|' |
  sed -E 's/^\| ([a-z]+) \| ([a-z_]+) \|.*/\1.\2/' | grep -vx 'section\.key' | sort -u | tr '\n' ' ')
code_keys=$(grep -oE '\{"[a-z]+", "[a-z_]+", K_' "$src/groupsrv/config.c" | sed -E 's/\{"([a-z]+)", "([a-z_]+)".*/\1.\2/' |
  sort -u | tr '\n' ' ')
same "groupsrv(1) CONFIGURATION keys = groupsrv/config.c keys" "$doc_keys" "$code_keys"
# the page's example configuration loads (a missing database is exit 3, a bad file 5)
section groupsrv.1.md CONFIGURATION | sed -n '/^```ini$/,/^```$/p' | sed '1d;$d' |
  sed "s|^path = .*|path = $work/gs.db|" > "$work/groupsrv.conf"
rc=0; "$bin/groupsrv" -c "$work/groupsrv.conf" group list >/dev/null 2>"$work/err" || rc=$?
[ "$rc" = 3 ] && echo "ok: groupsrv(1)'s example configuration loads" ||
  fail "groupsrv(1)'s example configuration: exit $rc: $(cat "$work/err")"

# every range the table gives, "(MIN-MAX)", is the one groupsrv takes:
# MIN and MAX load, MIN-1 and MAX+1 are refused (exit 5, "bad value")
ranges=$(section groupsrv.1.md CONFIGURATION | grep -E '^\| [a-z]+ \| [a-z_]+ \|.*\([0-9]+-[0-9]+\)' |
  sed -E 's/^\| ([a-z]+) \| ([a-z_]+) \|.*\(([0-9]+)-([0-9]+)\).*/\1 \2 \3 \4/')
[ "$(wc -l <<<"$ranges")" -ge 8 ] || fail "groupsrv(1): found only $(wc -l <<<"$ranges") ranges (a pattern is stale)"
base=$(sed -n '/^\[hsm\]/,/^pin_source/p' "$work/groupsrv.conf")
bad_ranges=
while read -r sec key min max; do
  for v in "$min" "$max" "$((min - 1))" "$((max + 1))"; do
    [ "$v" -ge 0 ] || continue
    want=3
    { [ "$v" -lt "$min" ] || [ "$v" -gt "$max" ]; } && want=5
    printf '%s\n[db]\npath = %s/gs.db\n[%s]\n%s = %s\n' "$base" "$work" "$sec" "$key" "$v" > "$work/range.conf"
    rc=0; "$bin/groupsrv" -c "$work/range.conf" group list >/dev/null 2>"$work/err" || rc=$?
    [ "$rc" = "$want" ] || bad_ranges+="[$sec] $key = $v: exit $rc, wanted $want ($(cat "$work/err")); "
  done
done <<<"$ranges"
[ -z "$bad_ranges" ] && echo "ok: groupsrv takes exactly the $(wc -l <<<"$ranges") ranges groupsrv(1) gives" ||
  fail "groupsrv(1)'s ranges: $bad_ranges"

# ---- groupmail ----
# the synopsis block, and the first column of the Options table
page_flags=$( (section groupmail.1.md Synopsis | sed -n '/^```$/,/^```$/p'
  section groupmail.1.md Options | { grep '^| `' || true; } | cut -d'|' -f2) | flags)
same "groupmail(1) Synopsis and Options = groupmail --help options" "$page_flags" "$("$bin/groupmail" --help | flags)"
for f in $page_flags; do # each accepted: anything but "unknown option"
  "$bin/groupmail" csr "$f" >/dev/null 2>"$work/err" </dev/null || true
  ! grep -q "unknown option" "$work/err" || fail "groupmail(1) names $f, groupmail does not take it: $(cat "$work/err")"
done
echo "ok: groupmail takes every option groupmail(1) names"
gm_block=$(section groupmail.1.md Configuration | sed -n '/^```ini$/,/^```$/p' | sed '1d;$d')
ini_keys() { awk '/^\[[a-z]+\]/ {s=substr($1, 2, length($1) - 2); next} /^[a-z_]+ *=/ {print s "." $1}' | sort -u | tr '\n' ' '; }
code_keys=$( (grep -oE 'K\("[a-z]+", "[a-z_]+"' "$src/client/gm_common.c" | sed -E 's/K\("([a-z]+)", "([a-z_]+)"/\1.\2/'
  grep -oE '\{"[a-z]+", "[a-z_]+"\}' "$src/client/gm_common.c" | sed -E 's/\{"([a-z]+)", "([a-z_]+)"\}/\1.\2/') |
  sort -u | tr '\n' ' ')
same "groupmail(1) Configuration keys = client/gm_common.c keys" "$(ini_keys <<<"$gm_block")" "$code_keys"
printf '%s\n' "$gm_block" > "$work/groupmail.conf"
# (a bad file is exit 1 before --via is looked at; a bad --via is 2)
rc=0; "$bin/groupmail" -c "$work/groupmail.conf" decrypt --via bogus >/dev/null 2>"$work/err" || rc=$?
[ "$rc" = 2 ] && grep -q -- '--via must be' "$work/err" && echo "ok: groupmail(1)'s example configuration loads" ||
  fail "groupmail(1)'s example configuration: exit $rc: $(cat "$work/err")"
doc_env=$(section groupmail.1.md Configuration | grep -oE 'GROUPMAIL_[A-Z_]+' | sort -u | tr '\n' ' ')
code_env=$(grep -ohE '"GROUPMAIL_[A-Z_]+"' "$src"/client/*.c | tr -d '"' | sort -u | tr '\n' ' ')
same "groupmail(1) environment variables = client/*.c getenv names" "$doc_env" "$code_env"
# the XDG base directories groupmail reads (its configuration and its store)
doc_xdg=$( { grep -oE 'XDG_[A-Z_]+' "$src/docs/groupmail.1.md" || true; } | sort -u | tr '\n' ' ')
code_xdg=$( { grep -ohE '"XDG_[A-Z_]+"' "$src"/client/*.c || true; } | tr -d '"' | sort -u | tr '\n' ' ')
same "groupmail(1) XDG variables = client/*.c XDG variables" "$doc_xdg" "$code_xdg"

# ---- exploder ----
same "exploder(1) Synopsis options = exploder --help options" "$(section exploder.1.md Synopsis | flags)" \
  "$("$bin/exploder" --help | flags)"
xp_block=$(section exploder.1.md 'Configuration (INI)' | sed -n '/^```ini$/,/^```$/p' | sed '1d;$d')
code_keys=$(awk '/strcmp\(section, "[a-z]+"\)/ {match($0, /section, "[a-z]+"/); s=substr($0, RSTART + 10, RLENGTH - 11)}
  /strcmp\(name, "[a-z_]+"\)/ {match($0, /name, "[a-z_]+"/); print s "." substr($0, RSTART + 7, RLENGTH - 8)}' \
  "$src/exploder/conf.c" | sort -u | tr '\n' ' ')
same "exploder(1) Configuration keys = exploder/conf.c keys" "$(ini_keys <<<"$xp_block")" "$code_keys"
printf '%s\n' "$xp_block" | sed "s|^path = .*|path = $work/spool|; s|^file = .*|file = $work/xp.log|" > "$work/exploder.conf"
rc=0; "$bin/exploder" -c "$work/exploder.conf" list show nolist@example.org >/dev/null 2>"$work/err" || rc=$?
[ "$rc" = 1 ] && grep -q 'not found' "$work/err" && echo "ok: exploder(1)'s example configuration loads" ||
  fail "exploder(1)'s example configuration: exit $rc: $(cat "$work/err")"

# ---- the example configurations the packages install ----
sed -E "s|^path = .*|path = $work/ex.db|" "$src/dist/examples/groupsrv.conf" > "$work/ex-groupsrv.conf"
rc=0; "$bin/groupsrv" -c "$work/ex-groupsrv.conf" group list >/dev/null 2>"$work/err" || rc=$?
[ "$rc" = 3 ] && echo "ok: dist/examples/groupsrv.conf loads" || fail "dist/examples/groupsrv.conf: exit $rc: $(cat "$work/err")"
# a certificate server on every address advertises https://0.0.0.0:PORT unless [certsrv] url says
# otherwise, and membership-cert fails on that name
awk '/^\[/ { sec = $0 } sec == "[certsrv]" && /^listen = (0\.0\.0\.0|\[::\]):/ { any = 1 }
     sec == "[certsrv]" && /^url = https:\/\/[a-z]/ { url = 1 } END { exit !(!any || url) }' "$src/dist/examples/groupsrv.conf" &&
  echo "ok: dist/examples/groupsrv.conf names its certificate server" ||
  fail "dist/examples/groupsrv.conf: [certsrv] listens on every address and sets no url (members are sent to https://0.0.0.0)"
sed -E "s|^path = .*|path = $work/ex-spool|; s|^file = .*|file = $work/ex.log|" "$src/dist/examples/exploder.conf" \
  > "$work/ex-exploder.conf"
rc=0; "$bin/exploder" -c "$work/ex-exploder.conf" list show nolist@example.org >/dev/null 2>"$work/err" || rc=$?
[ "$rc" = 1 ] && grep -q 'not found' "$work/err" && echo "ok: dist/examples/exploder.conf loads" ||
  fail "dist/examples/exploder.conf: exit $rc: $(cat "$work/err")"

# ---- exit statuses ----
# every exit status a page names in its text ("exit 6", "exits 3", "; 6
# when ...") is a row of its exit status table, where a script author
# looks first (groupsrv's `audit verify` 6, a torn tail, was only in the
# text)
for pg in "groupsrv.1.md:EXIT STATUS" "groupmail.1.md:Exit status" "exploder.1.md:Exit status"; do
  page=${pg%%:*} head=${pg#*:}
  table=$(section "$page" "$head" | { grep -oE '^\| [0-9]+ \|' || true; } | grep -oE '[0-9]+' | sort -un | tr '\n' ' ' | sed 's/ $//')
  named=$({ grep -ohE '([Ee]xits?|[Ee]xit (status|code)) [0-9]+|[;,] [0-9]+ when' "$src/docs/$page" || true; } |
    grep -oE '[0-9]+' | sort -un | tr '\n' ' ' | sed 's/ $//')
  [ -n "$table" ] && [ -n "$named" ] || { fail "$page: no exit status table or none named (a pattern is stale)"; continue; }
  extra=$(comm -23 <(tr ' ' '\n' <<<"$named" | sed '/^$/d' | sort) <(tr ' ' '\n' <<<"$table" | sed '/^$/d' | sort) | tr '\n' ' ' | sed 's/ $//')
  [ -z "$extra" ] && echo "ok: every exit status $page names is in its $head table ($table)" ||
    fail "$page names exit status(es) $extra that its $head table ($table) does not list"
done

# ---- see also ----
# every document a page's see-also section names is in the tree: a man
# page read on an installed system must not send the reader to a file
# nobody has (docs/man.lua writes each as its installed path, and
# package-install-tree.sh checks that path is installed)
for pg in "groupsrv.1.md:SEE ALSO" "groupmail.1.md:See also" "exploder.1.md:See also"; do
  page=${pg%%:*} head=${pg#*:}
  docs=$(section "$page" "$head" | sed '1d;/^## /d' | { grep -oE '[A-Za-z0-9_./-]+\.md' || true; } | sort -u | tr '\n' ' ' | sed 's/ $//')
  [ -n "$docs" ] || { fail "$page: its $head section names no document (a pattern is stale)"; continue; }
  gone=
  for d in $docs; do [ -f "$src/$d" ] || gone+="$d "; done
  [ -z "$gone" ] && echo "ok: every document $page's $head names is in the tree ($docs)" ||
    fail "$page's $head names $gone, not in the tree"
done

# ---- short options and exit codes ----
# the short options (-c, -v, -q) a page's synopsis or options table gives are
# the ones its program's --help gives (flags above sees long ones only), and
# the exit codes groupmail --help lists are its page's Exit status table
shorts() { { grep -oE -- '(^|[] `[(|/,])-[a-zA-Z]([] `,|)/]|$)' || true; } | grep -oE -- '-[a-zA-Z]' | sort -u | tr '\n' ' '; }
same "groupsrv(1) SYNOPSIS short options = groupsrv --help short options" "$(section groupsrv.1.md SYNOPSIS | shorts)" \
  "$("$bin/groupsrv" --help | shorts)"
same "groupmail(1) Synopsis and Options short options = groupmail --help short options" \
  "$( (section groupmail.1.md Synopsis; section groupmail.1.md Options | { grep '^| `' || true; } | cut -d'|' -f2) | shorts)" \
  "$("$bin/groupmail" --help | shorts)"
same "exploder(1) Synopsis short options = exploder --help short options" "$(section exploder.1.md Synopsis | shorts)" \
  "$("$bin/exploder" --help | shorts)"
same "groupmail(1) Exit status codes = groupmail --help exit codes" \
  "$(section groupmail.1.md 'Exit status' | { grep -oE '^\| [0-9]+ \|' || true; } | tr -dc '0-9\n' | tr '\n' ' ')" \
  "$("$bin/groupmail" --help | sed -n '/^exit:/,$p' | { grep -oE '(^|[ ,:])[0-9]+ [a-z]' || true; } | tr -dc '0-9\n' | tr '\n' ' ')"

# ---- examples in the documents ----
# every option a code block of README.md or docs/ gives one of the three
# programs (a line starting with its name, also as another user with sudo -u
# or runuser -u, as operations.md and postfix.md run them; a command's
# continuation lines joined; comments cut) is in its --help
for p in groupsrv groupmail exploder; do
  used=$(awk '/^ *```/ {inb = !inb; next} inb {if (sub(/\\$/, "")) {acc = acc $0; next} print acc $0; acc = ""}' \
      "$src/README.md" "$src"/docs/*.md "$src/pkcs11-config/README.md" |
    sed -E 's/^[[:space:]]*(\$ )?(sudo -u [a-z_-]+ |runuser -u [a-z_-]+ -- )?//' | { grep -E "^([A-Z_]+=[^ ]+ )*$p " || true; } |
    sed -E 's/ #.*//' | { grep -oE -- ' --[a-z][a-z0-9-]*' || true; } | tr -d ' ' | sort -u)
  unknown=$(comm -23 <(printf '%s\n' $used) <("$bin/$p" --help | flags | tr ' ' '\n' | sed '/^$/d' | sort -u) | tr '\n' ' ')
  if [ -z "$used" ]; then fail "no $p example found in the documents' code blocks (a pattern is stale)"
  elif [ -n "$unknown" ]; then fail "the documents' $p examples use options $p --help does not have: $unknown"
  else echo "ok: every option of the documents' $p examples is in its --help ($(wc -w <<<"$used") options)"; fi
done

# ... and each is one that command takes (its own --help line), also in
# the text's code spans that start with a program's name
/usr/bin/python3 "$src/tests/lint/cli-doc-subflags.py" "$src" "$bin" ||
  fail "the documents' examples give a command an option it does not take (above)"

[ "$nfail" = 0 ] || { echo "cli-docs: $nfail check(s) failed" >&2; exit 1; }
echo "cli-docs: the pages and the programs agree"
