# Sourced by tests: man_files_unnamed SRC DIR prints each file in DIR (by
# name, one a line) that the FILES section of docs/groupsrv.1.md does not
# name: no code span there whose last path component, taken as a shell
# pattern (`audit.jsonl.*`), matches it. A test that made the server write
# its files into DIR calls it, so that a file the server makes and the
# man page does not name fails the test (pin-refused.lock did).
man_files_unnamed() {
  local src=$1 dir=$2 f name pat hit
  local -a pats=()
  while IFS= read -r pat; do
    [ -n "$pat" ] && pats+=("${pat##*/}")
  done < <(awk '/^## /{on = ($0 == "## FILES")} on' "$src/docs/groupsrv.1.md" | tr '\n' ' ' |
           grep -o '`[^`]*`' | tr -d '`')
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
