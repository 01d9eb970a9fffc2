#!/usr/bin/env bash
# error-codes.sh SRC: every error code the group server can answer (a
# status and a code string in groupsrv/, as its reply helpers take them)
# is in docs/api.md's table of errors, in the row of its status: clients
# and scripts are written against that table.
set -euo pipefail
src=$1
cd "$src"
table=$(awk '/^## Errors/ {on=1} on && /^## Endpoints/ {exit} on && /^\| [0-9][0-9][0-9] \|/' docs/api.md)
[ -n "$table" ] || { echo "no error table in docs/api.md"; exit 1; }
# "400, \"code\"" or "503, 5, \"code\"" (status, optional Retry-After, code)
found=$(git ls-files 'groupsrv/*.c' | xargs grep -hoE '\b[45][0-9]{2},( *[0-9A-Za-z_>.-]+,)? *"[a-z_]+"' |
  sed -E 's/^([0-9]{3}).*"([a-z_]+)"$/\1 \2/' | sort -u)
[ "$(wc -l <<<"$found")" -ge 30 ] || { echo "found only $(wc -l <<<"$found") error codes: the pattern is stale"; exit 1; }
fail=0
while read -r status code; do
  grep -E "^\| $status \|" <<<"$table" | grep -qF "\`$code\`" ||
    { echo "docs/api.md: $status $code is not in the table of errors"; fail=1; }
done <<<"$found"
[ "$fail" = 0 ] && echo "$(wc -l <<<"$found") error codes, all documented"
