# tests/tokens/rpc.sh: SoftHSM behind p11-kit's RPC: `p11-kit server`
# serves the token on a unix socket, groupsrv loads p11-kit-client.so
# (P11_KIT_SERVER_ADDRESS), the shape of a network HSM's client library:
# every call crosses a connection that can break. tok_rpc_kill and
# tok_rpc_start stop and start the server (the kill test). See lib.sh.
TOK_RPC_PID=

tok_enter() { :; }

tok_rpc_start() {
  local dir=$TOK_RPC_DIR
  command -v p11-kit >/dev/null || tok_fail "p11-kit missing (run scripts/setup)"
  rm -f "$dir/p11kit.sock"
  # Its own session and process group: killing it takes its per-connection
  # children (p11-kit-remote) along.
  setsid p11-kit server -f -n "$dir/p11kit.sock" --provider "$(tok_softhsm_module)" "pkcs11:token=groupsrv" \
    >>"$dir/p11kit-server.log" 2>&1 &
  TOK_RPC_PID=
  # Its own PID, from what it prints: setsid forks when it was started as a
  # process group leader (a shell with job control), and then $! is only
  # the setsid that already left, and a kill of it would miss the server.
  for _ in $(seq 1 200); do
    if [ -S "$dir/p11kit.sock" ]; then
      TOK_RPC_PID=$(sed -n 's/^P11_KIT_SERVER_PID=\([0-9][0-9]*\);.*/\1/p' "$dir/p11kit-server.log" | tail -n 1)
      [ -n "$TOK_RPC_PID" ] && kill -0 "$TOK_RPC_PID" 2>/dev/null && return 0
    fi
    sleep 0.05
  done
  tok_fail "p11-kit server did not start: $(tail -3 "$dir/p11kit-server.log")"
}

# tok_rpc_session_procs SID: the stat lines of the live (not zombie)
# processes of session SID, read from /proc with shell builtins only (no
# procps, no fork per process: the scan runs in a loop under load).
tok_rpc_session_procs() {
  local sid=$1 f line
  local -a fields
  for f in /proc/[0-9]*/stat; do
    { read -r line < "$f"; } 2>/dev/null || continue
    read -r -a fields <<< "${line##*) }"
    [ "${fields[0]:-}" != Z ] && [ "${fields[3]:-}" = "$sid" ] && printf '%s\n' "$line"
  done
  return 0
}

tok_rpc_kill() {
  [ -n "$TOK_RPC_PID" ] || return 0
  # The whole session: the server and its per-connection p11-kit-remote
  # children, so connections already open break as a network HSM's would.
  # SIGKILL follows, again and again: a server that got SIGTERM may still
  # accept one more connection (groupsrv reconnecting) and fork a child
  # that never saw the signal.
  kill -TERM -- "-$TOK_RPC_PID" 2>/dev/null || kill -TERM "$TOK_RPC_PID" 2>/dev/null || true
  local i left=
  for i in $(seq 1 300); do
    left=$(tok_rpc_session_procs "$TOK_RPC_PID")
    [ -z "$left" ] && break
    [ "$i" -ge 20 ] && kill -KILL -- "-$TOK_RPC_PID" 2>/dev/null
    sleep 0.05
  done
  [ -z "$left" ] || echo "WARN: token: p11-kit server session $TOK_RPC_PID still has processes: $left" >&2
  wait "$TOK_RPC_PID" 2>/dev/null || true
  TOK_RPC_PID=
}

tok_start() {
  local dir=$1
  "$SRC/scripts/provision-softhsm" "$dir/token" groupsrv >/dev/null || tok_fail "provision-softhsm"
  export SOFTHSM2_CONF=$dir/token/softhsm2.conf
  TOK_RPC_DIR=$dir
  tok_rpc_start
  export P11_KIT_SERVER_ADDRESS="unix:path=$dir/p11kit.sock"
  TOK_MODULE=$(tok_p11kit_module_dir)/p11-kit-client.so
  [ -f "$TOK_MODULE" ] || tok_fail "p11-kit-client.so missing (p11-kit-modules; run scripts/setup)"
  TOK_LABEL=groupsrv
  TOK_URI=pkcs11:token=groupsrv
  TOK_PIN_FILE=$dir/token/user-pin
}

tok_stop() { tok_rpc_kill; }
