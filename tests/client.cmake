# Tests of client/: the REST client library and groupmail.
set(GM_STUB ${GS_TEST_DIR}/integration/groupmail-stub.py)
set(GM_MKCERTS ${GS_TEST_DIR}/integration/groupmail-mkcerts.sh)

add_executable(test_restclient ${GS_TEST_DIR}/unit/test_restclient.c)
target_link_libraries(test_restclient PRIVATE gs_restclient gs_common PkgConfig::CMOCKA)
gs_target_warnings(test_restclient)
add_test(NAME unit_restclient COMMAND test_restclient)
set_tests_properties(unit_restclient PROPERTIES LABELS "unit;client" TIMEOUT 120
  ENVIRONMENT "GM_STUB=${GM_STUB};GM_MKCERTS=${GM_MKCERTS};GM_WORK=${GS_TEST_WORK}")
