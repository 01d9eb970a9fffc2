#!/usr/bin/env bash
# banned.sh SRC: the boring rules, enforced. Fails on
#  - unsafe string/number functions (bounded or checked alternatives exist);
#  - secrets released with plain free() (wipe first: OPENSSL_clear_free,
#    util_secret_free, OPENSSL_cleanse);
#  - PKCS#11 C_* calls or CMS internals outside hsm/ and envelope/.
set -euo pipefail
src=$1
cd "$src"
fail=0
files=$(git ls-files '*.c' '*.h' 2>/dev/null || find . -name '*.c' -o -name '*.h')

hits=$(grep -nE '\b(strcpy|strcat|sprintf|vsprintf|gets|atoi|atol|atoll|strtok|tmpnam|mktemp)\s*\(' $files \
  | grep -vE '^\S+:[0-9]+:\s*(/?\*|//)' || true)
if [ -n "$hits" ]; then echo "banned functions:"; echo "$hits"; fail=1; fi

hits=$(grep -nE '\bfree\s*\(\s*[a-z_>.-]*(pin|key|secret|cek)[a-z_]*\s*\)' $files | grep -v '^tests/' || true)
if [ -n "$hits" ]; then echo "secrets freed without wiping:"; echo "$hits"; fail=1; fi

# Programs reach PKCS#11 only through hsm/ (tests/p11fault is a module, not a caller).
hits=$(grep -nE '\b(C_GetFunctionList|C_Initialize|p11_kit_module_load)\s*\(|->C_[A-Z][A-Za-z]+\s*\(' $files \
  | grep -vE '^(hsm/|tests/p11fault/|tests/support/)' || true)
if [ -n "$hits" ]; then echo "PKCS#11 called outside hsm/:"; echo "$hits"; fail=1; fi

# ... and CMS only through envelope/.
hits=$(grep -nE '\b(CMS_[A-Za-z0-9_]+|d2i_CMS_[a-z_]+|SMIME_read_CMS)\s*\(' $files \
  | grep -vE '^(envelope/|tests/)' || true)
if [ -n "$hits" ]; then echo "CMS API used outside envelope/:"; echo "$hits"; fail=1; fi

[ "$fail" = 0 ] && echo "1 passed, 0 failed"
exit "$fail"
