# exploder: unit tests (mail parsing, spool state machine, config) and
# integration tests with real processes: the exploder binary, a real SMTP
# server on loopback (tests/lib/smtpd.py on Debian's python3-aiosmtpd, run by
# /usr/bin/python3) and, for the rewrap modes, a real `groupsrv serve` on a
# throw-away SoftHSM token.
add_executable(test_exploder ${GS_TEST_DIR}/unit/test_exploder.c)
target_link_libraries(test_exploder PRIVATE gs_exploder_core PkgConfig::CMOCKA)
gs_target_warnings(test_exploder)
add_test(NAME unit_exploder COMMAND test_exploder)
set_tests_properties(unit_exploder PROPERTIES LABELS "unit")

set(GS_EXPLODER_ENV
  "EXPLODER=${GS_TEST_BIN}/exploder"
  "GROUPSRV=${GS_TEST_BIN}/groupsrv"
  "GS_SRC=${CMAKE_SOURCE_DIR}"
  "GS_TEST_WORK=${GS_TEST_WORK}"
  "SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")
foreach(t forward refuse relay-down bounce crash starttls relay-auth group-secret member-certs hostile-groupsrv
    hostile-relay spool-full concurrent damaged cert-refresh message-form smtputf8)
  string(REPLACE "-" "_" tn "exploder_${t}")
  add_test(NAME ${tn} COMMAND bash ${GS_TEST_DIR}/integration/exploder-${t}.sh)
  set_tests_properties(${tn} PROPERTIES LABELS "integration" TIMEOUT 180
    ENVIRONMENT "${GS_EXPLODER_ENV}")
endforeach()
