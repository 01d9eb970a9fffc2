# Unit tests of common/ (log, util, jsonw; jsonw against jansson).
add_executable(test_common ${GS_TEST_DIR}/unit/test_common.c)
target_link_libraries(test_common PRIVATE gs_common PkgConfig::CMOCKA PkgConfig::JANSSON)
gs_target_warnings(test_common)
add_test(NAME unit_common COMMAND test_common)
set_tests_properties(unit_common PROPERTIES LABELS "unit")
