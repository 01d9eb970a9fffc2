# envelope: unit tests, the envtool driver, interop with `openssl cms` (its fuzz target: tests/fuzz.cmake).
add_executable(envtool ${GS_TEST_DIR}/tools/envtool.c)
target_link_libraries(envtool PRIVATE gs_envelope gs_common)
set_target_properties(envtool PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${GS_TEST_BIN})
gs_target_warnings(envtool)

add_executable(test_envelope ${GS_TEST_DIR}/unit/test_envelope.c)
target_link_libraries(test_envelope PRIVATE gs_envelope gs_common PkgConfig::CMOCKA)
set_target_properties(test_envelope PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${GS_TEST_BIN})
gs_target_warnings(test_envelope)
add_test(NAME unit_envelope COMMAND test_envelope)
set_tests_properties(unit_envelope PROPERTIES LABELS "unit" ENVIRONMENT "TMPDIR=${GS_TEST_WORK}")

foreach(t interop badinput stream)
  add_test(NAME envelope_${t}
    COMMAND bash ${GS_TEST_DIR}/integration/envelope-${t}.sh $<TARGET_FILE:envtool> ${GS_TEST_WORK})
endforeach()
set_tests_properties(envelope_interop envelope_badinput PROPERTIES LABELS "interop")
set_tests_properties(envelope_stream PROPERTIES LABELS "interop" TIMEOUT 120)
