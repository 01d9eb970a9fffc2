# hsm/: the fault-injecting PKCS#11 module, the shared test-support library
# (throw-away SoftHSM tokens; other areas link gs_testsupport too) and the
# unit tests of gs_hsm.

# tests/p11fault: forwards to SoftHSM (or $GS_P11FAULT_TARGET), injects CK_RVs.
add_library(p11fault SHARED ${GS_TEST_DIR}/p11fault/p11fault.c ${GS_TEST_DIR}/p11fault/profile.c)
target_include_directories(p11fault PRIVATE ${P11KIT_INCLUDE_DIRS})
target_link_libraries(p11fault PRIVATE ${CMAKE_DL_LIBS} Threads::Threads PkgConfig::OPENSSL)
target_compile_definitions(p11fault PRIVATE GS_P11FAULT_DEFAULT_TARGET="${SOFTHSM2_MODULE}")
set_target_properties(p11fault PROPERTIES
  LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/lib
  C_VISIBILITY_PRESET hidden)
gs_target_warnings(p11fault)
# Not instrumented in the sanitizer build: stock tools load it too
# (pkcs11-tool makes the smartcard profile's keys through it, and an
# ASan-built module cannot be loaded into an uninstrumented program). It
# is a stand-in for a token, not product code.
foreach(prop COMPILE_OPTIONS LINK_OPTIONS)
  get_target_property(_p11f_opts p11fault ${prop})
  if(_p11f_opts)
    list(FILTER _p11f_opts EXCLUDE REGEX "sanitize")
    set_target_properties(p11fault PROPERTIES ${prop} "${_p11f_opts}")
  endif()
endforeach()

# tests/support: gs_testsupport (see tests/support/testsupport.h).
get_filename_component(GS_HSM_SRC_ROOT ${GS_TEST_DIR} DIRECTORY)
add_library(gs_testsupport STATIC ${GS_TEST_DIR}/support/testsupport.c)
target_include_directories(gs_testsupport PUBLIC ${GS_TEST_DIR}/support)
target_link_libraries(gs_testsupport PUBLIC PkgConfig::OPENSSL ${CMAKE_DL_LIBS})
# p11-kit for the PKCS#11 header only (testtoken_copy_secret calls SoftHSM itself).
target_include_directories(gs_testsupport PRIVATE ${P11KIT_INCLUDE_DIRS})
target_compile_definitions(gs_testsupport PRIVATE
  GS_SOURCE_DIR="${GS_HSM_SRC_ROOT}"
  GS_TEST_WORK_DIR="${GS_TEST_WORK}"
  GS_SOFTHSM2_MODULE="${SOFTHSM2_MODULE}"
  GS_P11FAULT_MODULE="$<TARGET_FILE:p11fault>")
add_dependencies(gs_testsupport p11fault)
gs_target_warnings(gs_testsupport)

add_executable(test_hsm ${GS_TEST_DIR}/unit/test_hsm.c)
target_link_libraries(test_hsm PRIVATE gs_hsm gs_testsupport PkgConfig::CMOCKA Threads::Threads)
gs_target_warnings(test_hsm)
add_test(NAME unit_hsm COMMAND test_hsm)
set_tests_properties(unit_hsm PROPERTIES LABELS "unit" TIMEOUT 300)

# hsm/refusal.c without a token (the PIN refusal record's matching).
add_executable(test_refusal ${GS_TEST_DIR}/unit/test_refusal.c)
target_include_directories(test_refusal PRIVATE ${GS_HSM_SRC_ROOT}/hsm)
target_link_libraries(test_refusal PRIVATE gs_hsm PkgConfig::CMOCKA Threads::Threads)
gs_target_warnings(test_refusal)
add_test(NAME unit_refusal COMMAND test_refusal)
set_tests_properties(unit_refusal PROPERTIES LABELS "unit" TIMEOUT 60)

# gs_hsm again with hsm_key_list's handle array small (keys.c LIST_FIRST /
# LIST_MAX): forty keys make a listing grow its array and fifty pass its
# bound, where the real values need thousands of objects (minutes on SoftHSM).
set(_hsm_dir ${GS_HSM_SRC_ROOT}/hsm)
add_library(gs_hsm_listcap STATIC
  ${_hsm_dir}/p11.c ${_hsm_dir}/hsm.c ${_hsm_dir}/keys.c ${_hsm_dir}/ops.c ${_hsm_dir}/caps.c
  ${_hsm_dir}/soft.c ${_hsm_dir}/replicate.c ${_hsm_dir}/refusal.c ${_hsm_dir}/hsm_evp.c)
target_include_directories(gs_hsm_listcap PUBLIC ${_hsm_dir})
target_link_libraries(gs_hsm_listcap PUBLIC gs_common PkgConfig::P11KIT PkgConfig::OPENSSL Threads::Threads)
target_compile_definitions(gs_hsm_listcap PRIVATE LIST_FIRST=8 LIST_MAX=48)
gs_target_warnings(gs_hsm_listcap)
set_source_files_properties(${_hsm_dir}/hsm_evp.c PROPERTIES COMPILE_OPTIONS -Wno-deprecated-declarations)

add_executable(test_hsm_list ${GS_TEST_DIR}/unit/test_hsm_list.c)
target_link_libraries(test_hsm_list PRIVATE gs_hsm_listcap gs_testsupport PkgConfig::CMOCKA Threads::Threads)
gs_target_warnings(test_hsm_list)
add_test(NAME unit_hsm_list COMMAND test_hsm_list)
set_tests_properties(unit_hsm_list PROPERTIES LABELS "unit" TIMEOUT 120)
