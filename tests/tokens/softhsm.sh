# tests/tokens/softhsm.sh: SoftHSM 2 loaded directly by path (the token of
# every other test). See tests/tokens/lib.sh.
tok_enter() { :; }

tok_start() {
  local dir=$1
  "$SRC/scripts/provision-softhsm" "$dir/token" groupsrv >/dev/null || tok_fail "provision-softhsm"
  export SOFTHSM2_CONF=$dir/token/softhsm2.conf
  TOK_MODULE=$(tok_softhsm_module)
  TOK_LABEL=groupsrv
  TOK_URI=pkcs11:token=groupsrv
  TOK_PIN_FILE=$dir/token/user-pin
}

tok_stop() { :; }
