# tests/tokens/opencryptoki.sh: opencryptoki's soft token (slot 3 of the
# stock /etc/opencryptoki/opencryptoki.conf) behind its slot daemon
# pkcsslotd. opencryptoki keeps its socket, locks and token files at fixed
# system paths, so the test runs in a private mount and IPC namespace
# with its own empty /run, /var/lib/opencryptoki, /dev/shm and SysV shared memory,
# starts its own pkcsslotd there and stops it afterwards: nothing of the
# machine's (or another test's) opencryptoki is touched. The token is
# initialised with pkcs11-tool, SO PIN 87654321 (opencryptoki's default
# for a fresh soft token), a random user PIN. See lib.sh.
#
# Without namespaces (a container without CAP_SYS_ADMIN) the machine's
# own directories are used instead, one test at a time (a lock), with a
# pkcsslotd started (and stopped) by the test when none runs.
TOK_OCK_SO_PIN=87654321
TOK_OCK_SLOT=3

tok_ock_module() {
  local m
  for m in /usr/lib/x86_64-linux-gnu/opencryptoki/libopencryptoki.so.0 /usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so \
           /usr/lib/aarch64-linux-gnu/opencryptoki/libopencryptoki.so.0 /usr/lib/opencryptoki/libopencryptoki.so; do
    [ -f "$m" ] && { echo "$m"; return; }
  done
  tok_fail "libopencryptoki.so not found (opencryptoki; run scripts/setup)"
}

tok_enter() {
  [ -n "${GS_TOK_OCK_MODE:-}" ] && return 0
  [ "$(id -u)" = 0 ] || tok_fail "opencryptoki's slot daemon needs root here"
  if unshare -m -i --propagation private true 2>/dev/null; then
    GS_TOK_OCK_MODE=private exec unshare -m -i --propagation private -- bash "$0" "$@"
  fi
  echo "note: no private namespace here; using the machine's opencryptoki directories under a lock" >&2
  export GS_TOK_OCK_MODE=shared
}

# The directories the package's tmpfiles.d entry declares (no systemd runs
# here to make them): with systemd-tmpfiles where it is installed, else by
# reading its "d PATH MODE USER GROUP" lines.
tok_ock_dirs() {
  local conf=/usr/lib/tmpfiles.d/opencryptoki.conf type path mode user group _
  [ -f "$conf" ] || tok_fail "$conf missing (opencryptoki; run scripts/setup)"
  if command -v systemd-tmpfiles >/dev/null; then
    systemd-tmpfiles --create "$conf" >/dev/null 2>&1 || tok_fail "systemd-tmpfiles --create $conf"
    return
  fi
  while read -r type path mode user group _; do
    [ "$type" = d ] || continue
    mkdir -p "$path" && chmod "$mode" "$path" && chown "$user:$group" "$path" || tok_fail "mkdir $path"
  done < "$conf"
}

TOK_OCK_STARTED=0
tok_start() {
  local dir=$1 pin
  command -v pkcsslotd >/dev/null || tok_fail "pkcsslotd missing (opencryptoki; run scripts/setup)"
  TOK_MODULE=$(tok_ock_module)
  if [ "$GS_TOK_OCK_MODE" = private ]; then
    mount -t tmpfs -o mode=0755 tmpfs /run || tok_fail "mount /run"
    mkdir -p -m 1777 /run/lock
    mkdir -p /var/lib/opencryptoki 2>/dev/null || true
    mount -t tmpfs -o mode=0770 tmpfs /var/lib/opencryptoki || tok_fail "mount /var/lib/opencryptoki"
    # The token's shared memory is a POSIX object (/dev/shm/var.lib.
    # opencryptoki.swtok), which the IPC namespace does not separate:
    # another test's token would answer for ours (a wrong PIN, a key not
    # found). A private /dev/shm keeps it ours.
    mount -t tmpfs -o mode=1777 tmpfs /dev/shm || tok_fail "mount /dev/shm"
  else
    exec 8>/tmp/groupsrv-opencryptoki.lock
    flock 8
  fi
  tok_ock_dirs
  if [ ! -S /run/pkcsslotd.socket ]; then
    pkcsslotd || tok_fail "pkcsslotd did not start"
    TOK_OCK_STARTED=1
  fi
  for _ in $(seq 1 50); do [ -S /run/pkcsslotd.socket ] && break; sleep 0.1; done
  [ -S /run/pkcsslotd.socket ] || tok_fail "pkcsslotd has no socket"
  # The soft token takes PINs of at most 8 characters.
  pin=$(openssl rand -hex 4)
  tok_write_pin "$dir/ock-pin" "$pin"
  GS_SO_PIN=$TOK_OCK_SO_PIN GS_USER_PIN=$pin pkcs11-tool --module "$TOK_MODULE" --slot "$TOK_OCK_SLOT" \
    --init-token --label groupsrv --so-pin env:GS_SO_PIN >/dev/null 2>&1 || tok_fail "pkcs11-tool --init-token"
  GS_SO_PIN=$TOK_OCK_SO_PIN GS_USER_PIN=$pin pkcs11-tool --module "$TOK_MODULE" --slot "$TOK_OCK_SLOT" --login \
    --login-type so --so-pin env:GS_SO_PIN --init-pin --new-pin env:GS_USER_PIN >/dev/null 2>&1 ||
    tok_fail "pkcs11-tool --init-pin"
  TOK_LABEL=groupsrv
  TOK_URI=pkcs11:token=groupsrv
  TOK_PIN_FILE=$dir/ock-pin
}

tok_stop() {
  local pid
  if [ "$TOK_OCK_STARTED" = 1 ] && [ -f /run/pkcsslotd.pid ]; then
    pid=$(cat /run/pkcsslotd.pid)
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  TOK_OCK_STARTED=0
}
