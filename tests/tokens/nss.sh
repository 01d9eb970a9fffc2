# tests/tokens/nss.sh: NSS softokn (libsoftokn3.so of libnss3), loaded by
# name through a p11-kit module file whose x-init-reserved carries the
# initialisation string NSS needs ("configdir='sql:DIR' ..."): p11-kit
# applies it only when the caller passes NULL init arguments. p11-kit
# reads module files of ~/.config/pkcs11/modules for users other than
# root only, so the test runs as a throw-away system user (gs-tokentest)
# with its own HOME. The same database can also be opened by path with
# [hsm] init_args (TOK_NSS_MODULE_PATH, TOK_INIT_ARGS). See lib.sh.
TOK_NSS_USER=gs-tokentest

tok_nss_softokn() {
  local m
  for m in /usr/lib/x86_64-linux-gnu/libsoftokn3.so /usr/lib/aarch64-linux-gnu/libsoftokn3.so \
           /usr/lib/libsoftokn3.so /usr/lib64/libsoftokn3.so; do
    [ -f "$m" ] && { echo "$m"; return; }
  done
  tok_fail "libsoftokn3.so not found (libnss3; run scripts/setup)"
}

tok_enter() {
  local base rc
  [ "$(id -u)" != 0 ] && return 0
  # As root: make the user (once per machine, under a lock: tests run in
  # parallel), a work base it owns, and run the test again as that user.
  command -v runuser >/dev/null || tok_fail "runuser missing (util-linux)"
  (
    flock 9
    id -u "$TOK_NSS_USER" >/dev/null 2>&1 ||
      useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$TOK_NSS_USER" ||
      tok_fail "useradd $TOK_NSS_USER"
  ) 9>/tmp/groupsrv-tokentest-user.lock || exit 1
  # The test user runs its own copy of the test scripts and programs, in a
  # work base below /tmp: the checkout and GS_TEST_WORK (inside the build
  # tree) may lie below a directory only root can enter (a clone in a
  # mktemp -d, or under /root), which that user cannot reach.
  base=$(mktemp -d /tmp/gs-nss-user.XXXXXX)
  mkdir -p "$base/home" "$base/src" "$base/bin"
  cp -a "$SRC/tests" "$SRC/scripts" "$base/src/" || tok_fail "copy the test scripts for $TOK_NSS_USER"
  cp -a "$BIN/." "$base/bin/" || tok_fail "copy the programs for $TOK_NSS_USER"
  chown -R "$TOK_NSS_USER:" "$base"
  chmod 0700 "$base"
  rc=0
  runuser -u "$TOK_NSS_USER" -- env HOME="$base/home" GS_TEST_WORK="$base" XDG_CONFIG_HOME= \
    bash "$base/src/tests/integration/token-matrix.sh" "$1" "$base/bin" "$base/src" || rc=$?
  if [ "${KEEP_WORK:-0}" != 1 ]; then rm -rf "$base"; fi
  exit "$rc"
}

tok_start() {
  local dir=$1 pin softokn
  softokn=$(tok_nss_softokn)
  [ "$(id -u)" != 0 ] || tok_fail "the NSS token runs as a non-root user (tok_enter first)"
  command -v certutil >/dev/null || tok_fail "certutil missing (libnss3-tools; run scripts/setup)"
  mkdir -p "$dir/nssdb"
  pin=$(tok_random_pin)
  tok_write_pin "$dir/nss-pin" "$pin"
  # certutil -f reads the new database password from a file (never argv).
  certutil -N -d "sql:$dir/nssdb" -f "$dir/nss-pin" >/dev/null || tok_fail "certutil -N"
  TOK_INIT_ARGS="configdir='sql:$dir/nssdb' certPrefix='' keyPrefix='' secmod='secmod.db' flags="
  mkdir -p "$HOME/.config/pkcs11/modules"
  cat > "$HOME/.config/pkcs11/modules/gs-nss.module" <<MOD
# NSS softokn for groupsrv's token matrix (tests/tokens/nss.sh)
module: $softokn
x-init-reserved: $TOK_INIT_ARGS
MOD
  TOK_NSS_MODULE_PATH=$softokn
  TOK_MODULE=gs-nss
  TOK_LABEL="NSS Certificate DB"
  TOK_URI="pkcs11:token=NSS%20Certificate%20DB"
  TOK_PIN_FILE=$dir/nss-pin
}

tok_stop() { :; }
