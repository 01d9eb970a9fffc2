#!/usr/bin/env bash
# package-unit-execstack.sh SRC BIN: a PKCS#11 module that needs an
# executable stack does not load under the unit's MemoryDenyWriteExecute=yes,
# and what `groupsrv check` says then is what docs/operations.md ("The
# token under systemd") quotes, where it gives the drop-in that lets it
# load. systemd is not needed: what systemd does for that setting stands in
# for the unit, both ways it does it: systemd 252 (Debian 12) installs a
# seccomp filter whose refusal is EPERM ("Operation not permitted"), 254
# and later on Linux 6.3 and later set the kernel's own prctl PR_SET_MDWE,
# whose refusal is EACCES ("Permission denied").
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
#include <errno.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>
#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#endif
#ifndef PR_MDWE_REFUSE_EXEC_GAIN
#define PR_MDWE_REFUSE_EXEC_GAIN 1
#endif
/* mdwe seccomp|prctl PROGRAM ARGS...: PROGRAM under MemoryDenyWriteExecute=yes
 * as systemd 252 (src/shared/seccomp-util.c: mmap W|X, mprotect and
 * pkey_mprotect +X refused with EPERM) or as 254 and later set it. */
int main(int argc, char **argv) {
  if (argc < 3) return 2;
  if (strcmp(argv[1], "prctl") == 0) {
    if (prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0L, 0L, 0L) != 0) { perror("prctl"); return 77; }
  } else {
    scmp_filter_ctx c = seccomp_init(SCMP_ACT_ALLOW);
    if (c == NULL ||
        seccomp_rule_add_exact(c, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(mmap), 1,
                               SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC | PROT_WRITE, PROT_EXEC | PROT_WRITE)) != 0 ||
        seccomp_rule_add_exact(c, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(mprotect), 1,
                               SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)) != 0 ||
        seccomp_rule_add_exact(c, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(pkey_mprotect), 1,
                               SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)) != 0 ||
        seccomp_load(c) != 0) { fprintf(stderr, "seccomp filter not loaded\n"); return 77; }
  }
  execv(argv[2], argv + 2);
  perror("execv");
  return 1;
}
C
cc -o "$W/mdwe" "$W/mdwe.c" -lseccomp
printf '[hsm]\nmodule = %s\npin_source = env:GS_TEST_PIN\n[db]\npath = %s\n[audit]\npath = %s\n' "$W/execstack.so" "$W/gs.db" \
  "$W/audit.jsonl" >"$W/gs.conf"
# operations.md quotes it in a paragraph whose lines break anywhere.
doc=$(sed -n '/^### The token under systemd$/,/^### /p' "$SRC/docs/operations.md" | tr '\n' ' ' | tr -s ' ')
grep -qF 'MemoryDenyWriteExecute=no' <<<"$doc" || fail "operations.md 'The token under systemd' gives no MemoryDenyWriteExecute=no drop-in"
ran=
for how in seccomp prctl; do
  rc=0
  "$W/mdwe" "$how" /bin/true 2>"$W/mdwe.err" || rc=$?
  if [ "$rc" = 77 ]; then echo "not checked: $how ($(cat "$W/mdwe.err"))"; continue; fi
  [ "$rc" = 0 ] || fail "mdwe $how: exit $rc: $(cat "$W/mdwe.err")"
  rc=0
  GS_TEST_PIN=1234 "$W/mdwe" "$how" "$BIN/groupsrv" -c "$W/gs.conf" check >"$W/check.out" 2>&1 || rc=$?
  [ "$rc" != 0 ] || fail "$how: check passed with a module that cannot load: $(cat "$W/check.out")"
  said=$(grep -o 'PKCS#11 module could not be loaded.*' "$W/check.out" | sed "s|$W/execstack.so|MODULE.so|g") ||
    fail "$how: check does not say the module could not be loaded: $(cat "$W/check.out")"
  grep -q 'cannot enable executable stack' <<<"$said" || fail "$how: check does not give the loader's reason: $said"
  # Quoted once whole, and the other way's errno by its words.
  reason=${said##*: } reason=${reason%)}
  grep -qF -- "${said%: *}: " <<<"$doc" && grep -qF -- "$reason)" <<<"$doc" ||
    fail "operations.md 'The token under systemd' does not quote what check says under $how: $said"
  ran+="$how "
done
[ -n "$ran" ] || { echo "skip: neither a seccomp filter nor PR_SET_MDWE here"; exit 77; }
echo "ok: an executable-stack module under MemoryDenyWriteExecute ($ran): check says so, as operations.md quotes, with its drop-in"
