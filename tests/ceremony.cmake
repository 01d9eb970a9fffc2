# The key ceremony (issue 17): hsm/replicate.c on a throw-away token, the
# .gsk file format (gsk/), and the ceremony end to end with two tokens and
# with a member's own token (tests/integration/ceremony-*.sh).
add_executable(test_replicate ${GS_TEST_DIR}/unit/test_replicate.c)
target_link_libraries(test_replicate PRIVATE gs_hsm gs_testsupport PkgConfig::CMOCKA)
gs_target_warnings(test_replicate)
add_test(NAME unit_replicate COMMAND test_replicate)
set_tests_properties(unit_replicate PROPERTIES LABELS "unit;ceremony" TIMEOUT 120)
