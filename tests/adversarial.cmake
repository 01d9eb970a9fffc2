# The adversarial suite (issue 15): hostile clients and a failing disk
# against a real `groupsrv serve` on a throw-away SoftHSM token. Loopback
# only; every attack is bounded in time and scaled to the small limits the
# tests configure.

# Slowloris on each listener while a member connects anew per request
# (>= 99 % answered, none hanging). Both passes: the connection bookkeeping
# it drives (deadlines, eviction, frees) is what the sanitizers should see.
add_test(NAME adversarial_slowloris
  COMMAND bash ${GS_TEST_DIR}/adversarial/server-slowloris.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
set_tests_properties(adversarial_slowloris PROPERTIES LABELS "integration;adversarial" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE};LORIS_SECONDS=6")

# The audit log on a full 64 KiB tmpfs (CI runs as root), then deleted and
# made anew with SIGHUP: refusals, honest /healthz, recovery, audit verify.
add_test(NAME adversarial_audit_disk
  COMMAND bash ${GS_TEST_DIR}/adversarial/server-audit-disk.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
set_tests_properties(adversarial_audit_disk PROPERTIES LABELS "integration;adversarial" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# The SoftHSM token directory moved away under load and back: refusals and
# a /healthz that tells the truth (it checks the token's objects).
add_test(NAME adversarial_token_vanish
  COMMAND bash ${GS_TEST_DIR}/adversarial/server-token-vanish.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
set_tests_properties(adversarial_token_vanish PROPERTIES LABELS "integration;adversarial" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# The malformed-input corpus and non-member requests make no token call at
# all (tests/p11fault counts every PKCS#11 call).
add_test(NAME adversarial_malformed_count
  COMMAND bash ${GS_TEST_DIR}/adversarial/server-malformed-count.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR}
    $<TARGET_FILE:p11fault>)
set_tests_properties(adversarial_malformed_count PROPERTIES LABELS "integration;adversarial" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# Strict HTTP framing: two Content-Length headers refused and closed; a body
# far over the cap always gets its 413, never a reset (lingering close).
add_test(NAME adversarial_strict_http
  COMMAND bash ${GS_TEST_DIR}/adversarial/server-strict-http.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
set_tests_properties(adversarial_strict_http PROPERTIES LABELS "integration;adversarial" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")
