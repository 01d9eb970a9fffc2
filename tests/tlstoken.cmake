# The TLS server key on the token ([tls] key = pkcs11:URI, groupsrv tls init):
# handshakes (curl, openssl s_client TLS 1.3/1.2), unwrap, SIGHUP reload,
# pkcs11-tool attribute check, refusals (RSA, extractable, missing, mismatch);
# a reload answered 503 tried again (tests/p11fault hides the key).
add_test(NAME server_tlstoken
  COMMAND bash ${GS_TEST_DIR}/integration/server-tlstoken.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR} $<TARGET_FILE:p11fault>)
set_tests_properties(server_tlstoken PROPERTIES LABELS "integration" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")
