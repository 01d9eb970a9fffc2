# Tests of client/: the REST client library and groupmail.
set(GM_STUB ${GS_TEST_DIR}/integration/groupmail-stub.py)
set(GM_MKCERTS ${GS_TEST_DIR}/integration/groupmail-mkcerts.sh)

add_executable(test_restclient ${GS_TEST_DIR}/unit/test_restclient.c)
target_link_libraries(test_restclient PRIVATE gs_restclient gs_common PkgConfig::CMOCKA)
gs_target_warnings(test_restclient)
add_test(NAME unit_restclient COMMAND test_restclient)
set_tests_properties(unit_restclient PROPERTIES LABELS "unit;client" TIMEOUT 120
  ENVIRONMENT "GM_STUB=${GM_STUB};GM_MKCERTS=${GM_MKCERTS};GM_WORK=${GS_TEST_WORK}")

# groupmail against a real group server on SoftHSM (tests/integration/server-lib.sh).
add_test(NAME groupmail_e2e COMMAND bash ${GS_TEST_DIR}/integration/groupmail-e2e.sh ${GS_TEST_BIN} ${CMAKE_SOURCE_DIR})
set_tests_properties(groupmail_e2e PROPERTIES LABELS "integration;client" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# docs/curl-recipes.md run as written against a real group server.
add_test(NAME groupmail_recipes COMMAND bash ${GS_TEST_DIR}/integration/groupmail-recipes.sh ${GS_TEST_BIN} ${CMAKE_SOURCE_DIR})
set_tests_properties(groupmail_recipes PROPERTIES LABELS "integration;client" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# groupmail encrypt output decrypted by openssl cms given the group key (standard output).
add_test(NAME groupmail_interop COMMAND bash ${GS_TEST_DIR}/integration/groupmail-interop.sh ${GS_TEST_BIN})
set_tests_properties(groupmail_interop PROPERTIES LABELS "interop;client" TIMEOUT 120
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}")

# A member whose EC key lives only on their own SoftHSM token: groupmail csr,
# --via tls and membership-cert with TLS signed on the token, clear errors.
add_test(NAME groupmail_token COMMAND bash ${GS_TEST_DIR}/integration/groupmail-token.sh ${GS_TEST_BIN} ${CMAKE_SOURCE_DIR})
set_tests_properties(groupmail_token PROPERTIES LABELS "integration;client" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# groupmail against a hostile group server (tests/lib/hostile_groupsrv.py):
# every misbehaviour a clean, documented failure; nothing written; bounded.
add_test(NAME groupmail_hostile COMMAND /usr/bin/python3 ${GS_TEST_DIR}/integration/hostile-groupmail.py ${GS_TEST_BIN} ${CMAKE_SOURCE_DIR})
set_tests_properties(groupmail_hostile PROPERTIES LABELS "integration;client;hostile" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}")

# groupmail send against a misbehaving SMTP server (tests/lib/hostile_smtpd.py):
# 5xx is a refusal (exit 3), 4xx and lost connections are temporary (4).
add_test(NAME groupmail_send_smtp COMMAND bash ${GS_TEST_DIR}/integration/groupmail-send-smtp.sh ${GS_TEST_BIN}
  ${CMAKE_SOURCE_DIR})
set_tests_properties(groupmail_send_smtp PROPERTIES LABELS "integration;client" TIMEOUT 120
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}")

# groupmail send to a submission server (tests/lib/smtpd.py, aiosmtpd):
# STARTTLS required never falls back to clear text, the AUTH password
# comes from a 0600 file or env:VAR and only goes over TLS, a refused
# login is exit 3.
add_test(NAME groupmail_send_auth COMMAND bash ${GS_TEST_DIR}/integration/groupmail-send-auth.sh ${GS_TEST_BIN}
  ${CMAKE_SOURCE_DIR})
set_tests_properties(groupmail_send_auth PROPERTIES LABELS "integration;client" TIMEOUT 120
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}")

# Plaintext is staged in memory, never in a disk file: decrypt to standard
# output and send's input are caught mid-run and every file they hold is read.
add_test(NAME groupmail_plaintext_memory COMMAND /usr/bin/python3
  ${GS_TEST_DIR}/integration/groupmail-plaintext-memory.py ${GS_TEST_BIN})
set_tests_properties(groupmail_plaintext_memory PROPERTIES LABELS "integration;client" TIMEOUT 120
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}")

# `--in -` is the standard input stream itself: a socket there, a file read
# from where it stands.
add_test(NAME groupmail_stdin_stream COMMAND /usr/bin/python3
  ${GS_TEST_DIR}/integration/groupmail-stdin-stream.py ${GS_TEST_BIN})
set_tests_properties(groupmail_stdin_stream PROPERTIES LABELS "integration;client" TIMEOUT 60
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}")

# Certificates read from a group server's answer never ask a pass phrase
# (groupmail's gm_pem_certs, the exploder's group certificate reads).
add_executable(test_pempass ${GS_TEST_DIR}/unit/test_pempass.c)
target_link_libraries(test_pempass PRIVATE gs_groupmail_core gs_exploder_core gs_gsk PkgConfig::CMOCKA PkgConfig::OPENSSL)
gs_target_warnings(test_pempass)
add_test(NAME unit_pempass COMMAND test_pempass)
set_tests_properties(unit_pempass PROPERTIES LABELS "unit;client" TIMEOUT 60)
