# docblocks.sh: the code blocks of a document's section, for tests that run
# a document's examples as written. Sourced.
#
# doc_block FILE HEADING N [LANG]: prints the Nth (from 1) ```LANG block
# (default sh) under the heading whose text is exactly HEADING (any level,
# "## " or "### " ...), up to the next heading of the same or a higher
# level. A block indented under a list item ("   ```sh") loses that
# indentation. Fails (status 1, a line on stderr) when there is no such
# block, so that a document edited under the test fails it loudly.
doc_block() {
  local file=$1 heading=$2 n=$3 lang=${4:-sh} out
  out=$(awk -v heading="$heading" -v want="$n" -v lang="$lang" '
    function level(line) { match(line, /^#+ /); return RLENGTH - 1 }
    /^#+ / && !inb {
      if (sec && level($0) <= seclevel) sec = 0
      if (substr($0, level($0) + 2) == heading) { sec = 1; seclevel = level($0) }
      next
    }
    sec && !inb && $0 ~ "^ *```" lang "$" { inb = 1; k++; match($0, /^ */); ind = RLENGTH; next }
    inb && $0 ~ /^ *```$/ { inb = 0; if (k == want) exit; next }
    inb && k == want { print substr($0, 1, ind) ~ /^ *$/ ? substr($0, ind + 1) : $0 }
  ' "$file")
  [ -n "$out" ] || { echo "doc_block: no block $n ($lang) under '$heading' in $file" >&2; return 1; }
  printf '%s\n' "$out"
}

# doc_block_count FILE HEADING [LANG]: how many ```LANG blocks the section has.
doc_block_count() {
  local file=$1 heading=$2 lang=${3:-sh}
  awk -v heading="$heading" -v lang="$lang" '
    function level(line) { match(line, /^#+ /); return RLENGTH - 1 }
    /^#+ / && !inb {
      if (sec && level($0) <= seclevel) sec = 0
      if (substr($0, level($0) + 2) == heading) { sec = 1; seclevel = level($0) }
      next
    }
    sec && !inb && $0 ~ "^ *```" lang "$" { inb = 1; k++; next }
    inb && $0 ~ /^ *```$/ { inb = 0 }
    END { print k + 0 }
  ' "$file"
}
