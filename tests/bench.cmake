# bench smoke test (issue 9): runs each bench tool for 20 operations against
# a throw-away token and server; asserts only that they completed without
# errors. Never a timing assertion (figures come from ./bench/run).
add_test(NAME bench_smoke COMMAND ${PROJECT_SOURCE_DIR}/bench/smoke.sh ${GS_TEST_BIN})
set_tests_properties(bench_smoke PROPERTIES LABELS "bench-smoke" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")
