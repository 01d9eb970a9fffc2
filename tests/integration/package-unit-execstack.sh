#!/usr/bin/env bash
# package-unit-execstack.sh SRC BIN: a PKCS#11 module that needs an
# executable stack does not load under the unit's MemoryDenyWriteExecute=yes,
# and what `groupsrv check` says then is what docs/operations.md ("The
# token under systemd") quotes, where it gives the drop-in that lets it
# load. systemd is not needed: the kernel's own refusal of the same thing
# (prctl PR_SET_MDWE, Linux 6.3 and later) stands in for the unit's filter.
set -euo pipefail
SRC=$1 BIN=$2
fail() { echo "FAIL: $*" >&2; exit 1; }
W=$(mktemp -d "${GS_TEST_WORK:-/tmp}/execstack.XXXXXX")
trap 'rm -rf "$W"' EXIT
unit=$(sed -n 's/^MemoryDenyWriteExecute=//p' "$SRC/dist/systemd/groupsrv.service.in")
[ "$unit" = yes ] || fail "groupsrv.service: MemoryDenyWriteExecute=$unit (this test is about =yes)"
printf 'int C_GetFunctionList(void **p) { (void)p; return 5; }\n' >"$W/mod.c"
cc -shared -fPIC -Wl,-z,execstack -o "$W/execstack.so" "$W/mod.c"
readelf -lW "$W/execstack.so" | grep -q 'GNU_STACK.*RWE' || fail "the test module has no executable stack"
cat >"$W/mdwe.c" <<'C'
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>
#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#endif
#ifndef PR_MDWE_REFUSE_EXEC_GAIN
#define PR_MDWE_REFUSE_EXEC_GAIN 1
#endif
int main(int argc, char **argv) {
  if (argc < 2) return 2;
  if (prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0L, 0L, 0L) != 0) { perror("prctl"); return 77; }
  execv(argv[1], argv + 1);
  perror("execv");
  return 1;
}
C
cc -o "$W/mdwe" "$W/mdwe.c"
rc=0
"$W/mdwe" /bin/true || rc=$?
[ "$rc" = 77 ] && { echo "skip: this kernel has no PR_SET_MDWE (Linux 6.3 and later)"; exit 77; }
[ "$rc" = 0 ] || fail "mdwe wrapper: exit $rc"
printf '[hsm]\nmodule = %s\npin_source = env:GS_TEST_PIN\n[db]\npath = %s\n' "$W/execstack.so" "$W/gs.db" >"$W/gs.conf"
rc=0
GS_TEST_PIN=1234 "$W/mdwe" "$BIN/groupsrv" -c "$W/gs.conf" check >"$W/check.out" 2>&1 || rc=$?
[ "$rc" != 0 ] || fail "check passed with a module that cannot load: $(cat "$W/check.out")"
said=$(grep -o 'PKCS#11 module could not be loaded.*' "$W/check.out" | sed "s|$W/execstack.so|MODULE.so|g") ||
  fail "check does not say the module could not be loaded: $(cat "$W/check.out")"
grep -q 'cannot enable executable stack' <<<"$said" || fail "check does not give the loader's reason: $said"
# operations.md quotes it in a paragraph whose lines break anywhere.
doc=$(sed -n '/^### The token under systemd$/,/^### /p' "$SRC/docs/operations.md" | tr '\n' ' ' | tr -s ' ')
grep -qF -- "$said" <<<"$doc" || fail "operations.md 'The token under systemd' does not quote what check says: $said"
grep -qF 'MemoryDenyWriteExecute=no' <<<"$doc" || fail "operations.md 'The token under systemd' gives no MemoryDenyWriteExecute=no drop-in"
echo "ok: an executable-stack module under MemoryDenyWriteExecute: check says so, as operations.md quotes, with its drop-in"
