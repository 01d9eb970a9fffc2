# The key ceremony (issue 17): hsm/replicate.c on a throw-away token, the
# .gsk file format (gsk/), and the ceremony end to end with two tokens and
# with a member's own token (tests/integration/ceremony-*.sh).
add_executable(test_replicate ${GS_TEST_DIR}/unit/test_replicate.c)
target_link_libraries(test_replicate PRIVATE gs_hsm gs_testsupport PkgConfig::CMOCKA)
gs_target_warnings(test_replicate)
add_test(NAME unit_replicate COMMAND test_replicate)
set_tests_properties(unit_replicate PROPERTIES LABELS "unit;ceremony" TIMEOUT 120)

add_executable(test_gsk ${GS_TEST_DIR}/unit/test_gsk.c)
target_include_directories(test_gsk PRIVATE ${PROJECT_SOURCE_DIR}/gsk)
target_link_libraries(test_gsk PRIVATE gs_gsk PkgConfig::CMOCKA)
gs_target_warnings(test_gsk)
add_test(NAME unit_gsk COMMAND test_gsk)
set_tests_properties(unit_gsk PROPERTIES LABELS "unit;ceremony" TIMEOUT 120)

# tests/jsonfault: jansson's json_array_append_new failing for one string
# (LD_PRELOAD), for an out-of-memory path of group export.
add_library(jsonfault SHARED ${GS_TEST_DIR}/jsonfault/jsonfault.c)
target_link_libraries(jsonfault PRIVATE PkgConfig::JANSSON ${CMAKE_DL_LIBS})
set_target_properties(jsonfault PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/lib C_VISIBILITY_PRESET hidden)

# Two group servers, two SoftHSM tokens: the whole ceremony and every refusal.
if(TARGET groupsrv)
  add_test(NAME ceremony_servers COMMAND bash ${GS_TEST_DIR}/integration/ceremony-servers.sh ${GS_TEST_BIN}
    ${PROJECT_SOURCE_DIR})
  set_tests_properties(ceremony_servers PROPERTIES LABELS "integration;ceremony" TIMEOUT 300
    ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE};GS_P11FAULT_MODULE=$<TARGET_FILE:p11fault>;GS_JSONFAULT_MODULE=$<TARGET_FILE:jsonfault>")
endif()

# Option C: a member's own token gets the group key; removal rotates it.
if(TARGET groupsrv AND TARGET groupmail)
  add_test(NAME ceremony_member COMMAND bash ${GS_TEST_DIR}/integration/ceremony-member.sh ${GS_TEST_BIN}
    ${PROJECT_SOURCE_DIR})
  set_tests_properties(ceremony_member PROPERTIES LABELS "integration;ceremony" TIMEOUT 300
    ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE};GS_P11FAULT_MODULE=$<TARGET_FILE:p11fault>")
endif()

# The .gsk and transport key readers under libFuzzer (tests/fuzz/README.md).
gs_fuzz_target(gsk gs_gsk)

# Getting out of what a key's life cycle across tokens can leave: an import
# killed half-way, a version retired on one server of a shared database.
if(TARGET groupsrv)
  add_test(NAME ceremony_recovery COMMAND bash ${GS_TEST_DIR}/integration/ceremony-recovery.sh ${GS_TEST_BIN}
    ${PROJECT_SOURCE_DIR})
  set_tests_properties(ceremony_recovery PROPERTIES LABELS "integration;ceremony" TIMEOUT 300
    ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE};GS_P11FAULT_MODULE=$<TARGET_FILE:p11fault>")
endif()

# --out of token transport-key, group|ca export and tls init: standard
# output, a named pipe or a device is written to, never renamed over.
if(TARGET groupsrv)
  add_test(NAME ceremony_out COMMAND bash ${GS_TEST_DIR}/integration/ceremony-out.sh ${GS_TEST_BIN}
    ${PROJECT_SOURCE_DIR})
  set_tests_properties(ceremony_out PROPERTIES LABELS "integration;ceremony" TIMEOUT 120
    ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")
endif()
