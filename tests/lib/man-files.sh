# Sourced by tests: man_files_unnamed SRC PAGE DIR prints each file in DIR
# (by name, one a line) that the FILES section of docs/PAGE.md (groupsrv.1,
# exploder.1) does not name: no code span there with a path component
# (`SPOOL/msg/*.in` has SPOOL, msg and *.in) that, taken as a shell
# pattern (`audit.jsonl.*`), matches it. A test that made a program write its files
# into DIR calls it, so that a file the program makes and its man page
# does not name fails the test (groupsrv's pin-refused.lock did).
man_files_unnamed() {
  local src=$1 page=$2 dir=$3 f name pat hit
  local -a pats=()
  while IFS= read -r pat; do
    [ -n "$pat" ] && pats+=("$pat")
  done < <(awk '/^## /{on = (tolower($0) == "## files")} on' "$src/docs/$page.md" | tr '\n' ' ' |
           grep -o '`[^`]*`' | tr -d '`' | tr '/ ' '\n\n')
  for f in "$dir"/* "$dir"/.[!.]*; do
    [ -e "$f" ] || continue
    name=${f##*/}
    hit=0
    for pat in "${pats[@]}"; do
      # shellcheck disable=SC2053 # the man page's names are patterns
      if [[ $name == $pat ]]; then hit=1; break; fi
    done
    [ "$hit" = 1 ] || printf '%s\n' "$name"
  done
}
