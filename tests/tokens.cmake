# The token matrix (issue 13): groupsrv's whole flow on every PKCS#11
# token Debian 12 offers, each set up by its script in tests/tokens/:
# SoftHSM direct, NSS softokn through a p11-kit module file, opencryptoki's
# soft token behind its own pkcsslotd, SoftHSM behind p11-kit's RPC (the
# shape of a network HSM), and a decrypt-only smartcard profile of
# tests/p11fault in front of SoftHSM. No token is skipped: one that cannot
# be set up fails its test.
#
# In the sanitizer pass the NSS and opencryptoki rows run with
# LeakSanitizer off (AddressSanitizer and UBSan stay on): libsoftokn3 and
# libopencryptoki leak at C_Finalize, and since p11-kit unloads them
# afterwards their frames are anonymous and cannot be suppressed by
# library. groupsrv's own code on these paths runs leak-checked in
# unit_hsm (test_nss_init_args, test_ecb_wrap) and in the other rows.
set(GS_TOKEN_MATRIX softhsm nss opencryptoki rpc smartcard)
foreach(tok ${GS_TOKEN_MATRIX})
  set(_env "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE};GS_P11FAULT_MODULE=$<TARGET_FILE:p11fault>")
  if(tok STREQUAL "nss" OR tok STREQUAL "opencryptoki")
    list(APPEND _env "ASAN_OPTIONS=detect_leaks=0")
  endif()
  add_test(NAME token_matrix_${tok}
    COMMAND bash ${GS_TEST_DIR}/integration/token-matrix.sh ${tok} ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
  set_tests_properties(token_matrix_${tok} PROPERTIES LABELS "integration;token-matrix" TIMEOUT 300
    ENVIRONMENT "${_env}")
endforeach()

# A token that counts wrong PINs (opencryptoki's soft token locks after
# three): groupsrv spends at most one try per run and never the last one.
# LeakSanitizer off in the sanitizer pass, as for the opencryptoki row above.
add_test(NAME token_pin_opencryptoki
  COMMAND bash ${GS_TEST_DIR}/integration/token-pin.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
set_tests_properties(token_pin_opencryptoki PROPERTIES LABELS "integration;token-matrix" TIMEOUT 180
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};ASAN_OPTIONS=detect_leaks=0")
