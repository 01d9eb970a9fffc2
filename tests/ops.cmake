# Operating groupsrv: what an operator's script sees from the command line
# (exit statuses and one-line errors of groupsrv(1)) without a token.
if(TARGET groupsrv)
  add_test(NAME ops_cli COMMAND bash ${GS_TEST_DIR}/integration/ops-cli.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
  set_tests_properties(ops_cli PROPERTIES LABELS "integration" TIMEOUT 60
    ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}")
endif()
