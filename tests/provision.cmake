# Tests of groupsrv's core (config, store) and its admin commands on a
# throw-away SoftHSM token (tests/integration/provision-*.sh).
if(TARGET gs_groupsrv_core)
  add_executable(test_config ${GS_TEST_DIR}/unit/test_config.c)
  target_link_libraries(test_config PRIVATE gs_groupsrv_core PkgConfig::CMOCKA)
  gs_target_warnings(test_config)
  target_compile_options(test_config PRIVATE -Wno-comment)
  # test_url_password_wiped looks at every block config.c frees
  target_link_options(test_config PRIVATE -Wl,--wrap=free)
  add_test(NAME unit_config COMMAND test_config)
  set_tests_properties(unit_config PROPERTIES LABELS "unit")

  # Each group's key policy from a token's capabilities (issue 13).
  add_executable(test_policy ${GS_TEST_DIR}/unit/test_policy.c)
  target_link_libraries(test_policy PRIVATE gs_groupsrv_core PkgConfig::CMOCKA)
  gs_target_warnings(test_policy)
  target_compile_options(test_policy PRIVATE -Wno-comment)
  add_test(NAME unit_policy COMMAND test_policy)
  set_tests_properties(unit_policy PROPERTIES LABELS "unit")

  # member list's fingerprints: those of a full parse, at a bounded cost
  add_executable(test_certfp ${GS_TEST_DIR}/unit/test_certfp.c)
  target_link_libraries(test_certfp PRIVATE gs_groupsrv_core PkgConfig::CMOCKA)
  gs_target_warnings(test_certfp)
  add_test(NAME unit_certfp COMMAND test_certfp)
  set_tests_properties(unit_certfp PROPERTIES LABELS "unit")

  add_executable(test_store ${GS_TEST_DIR}/unit/test_store.c)
  target_link_libraries(test_store PRIVATE gs_pgtest gs_groupsrv_core PkgConfig::CMOCKA Threads::Threads)
  gs_target_warnings(test_store)
  target_compile_options(test_store PRIVATE -Wno-comment)
  # The same cases on SQLite and on a private PostgreSQL started for the run.
  add_test(NAME unit_store COMMAND bash ${GS_TEST_DIR}/lib/pg.sh run $<TARGET_FILE:test_store>)
  set_tests_properties(unit_store PROPERTIES LABELS "unit" ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}")
endif()

if(TARGET groupsrv)
  add_executable(provision-decrypt ${GS_TEST_DIR}/integration/provision-decrypt.c)
  target_link_libraries(provision-decrypt PRIVATE gs_groupsrv_core)
  gs_target_warnings(provision-decrypt)
  target_compile_options(provision-decrypt PRIVATE -Wno-comment)

  set(GS_PROVISION_ENV
    "GS_BIN=${GS_TEST_BIN}" "GS_SRC=${PROJECT_SOURCE_DIR}" "GS_WORK=${GS_TEST_WORK}"
    "SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")
  foreach(t cli rotate)
    add_test(NAME provision_${t} COMMAND bash ${GS_TEST_DIR}/integration/provision-${t}.sh)
    set_tests_properties(provision_${t} PROPERTIES LABELS "integration" TIMEOUT 180
      ENVIRONMENT "${GS_PROVISION_ENV};GS_P11FAULT_MODULE=$<TARGET_FILE:p11fault>")
  endforeach()
  # Bad input for every admin command (tests/p11fault shows an extractable key).
  if(TARGET p11fault)
    add_test(NAME provision_refuse COMMAND bash ${GS_TEST_DIR}/integration/provision-refuse.sh)
    set_tests_properties(provision_refuse PROPERTIES LABELS "integration" TIMEOUT 180
      ENVIRONMENT "${GS_PROVISION_ENV};GS_P11FAULT_MODULE=$<TARGET_FILE:p11fault>")
    # A PIN the token refused is not sent again by the next start (C_Login counted).
    add_test(NAME pin_refusal COMMAND bash ${GS_TEST_DIR}/integration/pin-refusal.sh)
    set_tests_properties(pin_refusal PROPERTIES LABELS "integration" TIMEOUT 180
      ENVIRONMENT "${GS_PROVISION_ENV};GS_P11FAULT_MODULE=$<TARGET_FILE:p11fault>")
    # A token URI that matches two tokens; a token failing mid-command.
    add_test(NAME provision_select COMMAND bash ${GS_TEST_DIR}/integration/provision-select.sh)
    set_tests_properties(provision_select PROPERTIES LABELS "integration" TIMEOUT 180
      ENVIRONMENT "${GS_PROVISION_ENV};GS_P11FAULT_MODULE=$<TARGET_FILE:p11fault>")
  endif()
endif()
