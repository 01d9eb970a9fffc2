# tests/tokens/lib.sh: the tokens of the token matrix, one script each in
# this folder (softhsm, nss, opencryptoki, rpc, smartcard), for any test
# that needs one. Sourced, with SRC (the source tree) set; SOFTHSM2_MODULE
# may name the SoftHSM module found by the build.
#
#   tok_load NAME        sources tests/tokens/NAME.sh, which defines:
#   tok_enter ARGS...    first thing in the test: re-executes the calling
#                        script (with ARGS) where the token needs it to
#                        run: in a private mount namespace (opencryptoki),
#                        as a non-root user (NSS through p11-kit's user
#                        module files; from a copy of tests/, scripts/
#                        and BIN it owns); returns at once when already there
#   tok_start DIR        makes and starts a throw-away token under DIR and
#                        sets TOK_MODULE (a path or a p11-kit module name),
#                        TOK_URI, TOK_PIN_FILE, TOK_LABEL, and where they
#                        apply TOK_INIT_ARGS, TOK_CA_KEY and TOK_GROUP_KEY
#                        (pkcs11: URIs of keys made beforehand with the
#                        token's own tool, to adopt with --use-key);
#                        exports what the module needs
#   tok_stop DIR         stops what tok_start started (an EXIT trap)
#
# Nothing here is skipped when a piece is missing: a token that cannot be
# set up fails the test (scripts/setup installs every package).

tok_fail() { echo "FAIL: token: $*" >&2; exit 1; }

tok_softhsm_module() {
  local m
  if [ -n "${SOFTHSM2_MODULE:-}" ] && [ -f "$SOFTHSM2_MODULE" ]; then echo "$SOFTHSM2_MODULE"; return; fi
  for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so; do
    [ -f "$m" ] && { echo "$m"; return; }
  done
  tok_fail "libsofthsm2.so not found (run scripts/setup)"
}

# The directory of p11-kit's modules (p11-kit-client.so lives there).
tok_p11kit_module_dir() {
  local d
  d=$(pkg-config --variable=p11_module_path p11-kit-1 2>/dev/null || true)
  [ -n "$d" ] && [ -d "$d" ] || d=/usr/lib/x86_64-linux-gnu/pkcs11
  echo "$d"
}

tok_random_pin() { openssl rand -hex 8; }

# tok_write_pin FILE PIN: a pin-source file, 0600.
tok_write_pin() {
  ( umask 077; printf '%s\n' "$2" > "$1.tmp" && mv "$1.tmp" "$1" )
}

tok_load() {
  local name=$1
  [ -f "$SRC/tests/tokens/$name.sh" ] || tok_fail "no token script tests/tokens/$name.sh"
  # shellcheck disable=SC1090
  . "$SRC/tests/tokens/$name.sh"
  TOK_NAME=$name
}
