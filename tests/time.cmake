# Time: certificate validity windows (client, member, group, the server's
# own, membership certificates), renewal of the group certificate, and the
# audit chain across a clock step, against a real `groupsrv serve`.
# Certificates with chosen validity stand in for the passing of time
# (tests/integration/time-cert.py); the test waits at most a few seconds.
add_test(NAME server_time
  COMMAND bash ${GS_TEST_DIR}/integration/server-time.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
set_tests_properties(server_time PROPERTIES LABELS "integration" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")
