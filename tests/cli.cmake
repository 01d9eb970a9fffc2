# The command-line contract of the three programs (groupsrv(1),
# groupmail(1), exploder(1)): usage errors, option forms, configuration
# values, without a server; and scripts/provision-softhsm run twice.
if(TARGET groupsrv AND TARGET groupmail AND TARGET exploder)
  add_test(NAME cli_contract COMMAND bash ${GS_TEST_DIR}/integration/cli-contract.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
  set_tests_properties(cli_contract PROPERTIES LABELS "integration" TIMEOUT 60
    ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")
endif()

# The pages and the programs name the same commands, options,
# configuration keys and environment variables (tests/lint/cli-docs.sh).
if(TARGET groupsrv AND TARGET groupmail AND TARGET exploder)
  add_test(NAME lint_cli_docs COMMAND bash ${GS_TEST_DIR}/lint/cli-docs.sh ${CMAKE_SOURCE_DIR} ${GS_TEST_BIN})
  set_tests_properties(lint_cli_docs PROPERTIES LABELS "unit;lint" TIMEOUT 60
    ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}")
endif()
