# The frames between the server's processes: unit tests of the IPC codec
# (groupsrv/ipc.c) and its fuzz target.
add_executable(test_ipc ${GS_TEST_DIR}/unit/test_ipc.c)
target_link_libraries(test_ipc PRIVATE gs_groupsrv_base PkgConfig::CMOCKA)
gs_target_warnings(test_ipc)
add_test(NAME unit_ipc COMMAND test_ipc)
set_tests_properties(unit_ipc PROPERTIES LABELS "unit")

# The key holder's IPC parser: libFuzzer with -DFUZZ=ON, else a replay of the seeds.
add_executable(fuzz_ipc ${GS_TEST_DIR}/fuzz/fuzz_ipc.c)
target_link_libraries(fuzz_ipc PRIVATE gs_groupsrv_base gs_common)
set_target_properties(fuzz_ipc PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${GS_TEST_BIN})
gs_target_warnings(fuzz_ipc)
if(FUZZ)
  target_compile_definitions(fuzz_ipc PRIVATE GS_LIBFUZZER)
  target_link_options(fuzz_ipc PRIVATE -fsanitize=fuzzer)
else()
  add_test(NAME fuzz_ipc_replay COMMAND fuzz_ipc ${GS_TEST_DIR}/fuzz/corpus/ipc)
  set_tests_properties(fuzz_ipc_replay PROPERTIES LABELS "unit")
endif()
