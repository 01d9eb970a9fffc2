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
  TOK_RPC_PID=$!
  for _ in $(seq 1 100); do [ -S "$dir/p11kit.sock" ] && return 0; sleep 0.05; done
  tok_fail "p11-kit server did not start: $(tail -3 "$dir/p11kit-server.log")"
}

tok_rpc_kill() {
  [ -n "$TOK_RPC_PID" ] || return 0
  kill -TERM -- "-$TOK_RPC_PID" 2>/dev/null || kill -TERM "$TOK_RPC_PID" 2>/dev/null || true
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
