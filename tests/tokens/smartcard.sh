# tests/tokens/smartcard.sh: a decrypt-only smartcard, as OpenSC presents
# one, modelled by tests/p11fault's smartcard profile in front of SoftHSM
# (tests/p11fault/profile.h: RSA PKCS#1 v1.5 and OAEP SHA-1 decryption,
# CKM_RSA_PKCS signing, no C_UnwrapKey/C_WrapKey, no
# CKA_ALLOWED_MECHANISMS/CKA_UNWRAP_TEMPLATE, CKA_ALWAYS_AUTHENTICATE,
# two sessions). No virtual card runs here; this is what stands in for
# one. The group and CA keys are made beforehand with the card's own
# tool (pkcs11-tool through the card's module), to be adopted with
# --use-key (TOK_GROUP_KEY, TOK_CA_KEY). Needs GS_P11FAULT_MODULE (the
# built module). See lib.sh.
tok_enter() { :; }

tok_start() {
  local dir=$1
  [ -f "${GS_P11FAULT_MODULE:-}" ] || tok_fail "GS_P11FAULT_MODULE (build/lib/libp11fault.so) not set"
  "$SRC/scripts/provision-softhsm" "$dir/token" groupsrv >/dev/null || tok_fail "provision-softhsm"
  export SOFTHSM2_CONF=$dir/token/softhsm2.conf
  export GS_P11FAULT_TARGET; GS_P11FAULT_TARGET=$(tok_softhsm_module)
  export GS_P11FAULT_PROFILE=smartcard
  TOK_MODULE=$GS_P11FAULT_MODULE
  TOK_LABEL=groupsrv
  TOK_URI=pkcs11:token=groupsrv
  TOK_PIN_FILE=$dir/token/user-pin
  GS_USER_PIN=$(cat "$TOK_PIN_FILE") pkcs11-tool --module "$TOK_MODULE" --token-label groupsrv --login \
    --pin env:GS_USER_PIN --keypairgen --key-type rsa:2048 --label eng-card --id 01 --usage-decrypt \
    >/dev/null 2>&1 || tok_fail "pkcs11-tool --keypairgen (group key)"
  GS_USER_PIN=$(cat "$TOK_PIN_FILE") pkcs11-tool --module "$TOK_MODULE" --token-label groupsrv --login \
    --pin env:GS_USER_PIN --keypairgen --key-type rsa:2048 --label ca-card --id 02 --usage-sign \
    >/dev/null 2>&1 || tok_fail "pkcs11-tool --keypairgen (CA key)"
  TOK_GROUP_KEY="pkcs11:token=groupsrv;object=eng-card;type=private"
  TOK_CA_KEY="pkcs11:token=groupsrv;object=ca-card;type=private"
}

tok_stop() { :; }
