# envelope: unit tests, the envtool driver, interop with `openssl cms`, fuzz replay.
add_executable(envtool ${GS_TEST_DIR}/tools/envtool.c)
target_link_libraries(envtool PRIVATE gs_envelope gs_common)
set_target_properties(envtool PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${GS_TEST_BIN})
gs_target_warnings(envtool)
