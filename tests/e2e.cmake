# The whole flow of ./scripts/demo as an integration test (issue 8): free
# ports, temp dirs under the build tree, the binaries of this build.
add_test(NAME e2e_demo COMMAND ${CMAKE_SOURCE_DIR}/scripts/demo --no-build)
set_tests_properties(e2e_demo PROPERTIES
  LABELS "integration;e2e"
  TIMEOUT 300
  ENVIRONMENT "GS_BIN=${GS_TEST_BIN};TMPDIR=${GS_TEST_WORK}")
