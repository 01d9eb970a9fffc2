# gs_fuzz_target(NAME LIB...): the fuzz target tests/fuzz/fuzz_NAME.c,
# linked with LIB..., its seed corpus in tests/fuzz/corpus/NAME/ and an
# optional libFuzzer dictionary tests/fuzz/corpus/NAME.dict. Adding a target is
# one such line in tests/fuzz.cmake (or in an area's own fragment) plus the
# source and the seeds; tests/fuzz/README.md says how.
#
#  - normal builds (gcc, release and sanitizer passes): fuzz_NAME replays
#    every seed (tests/fuzz/replay.c), test fuzz_NAME_replay, label "unit";
#  - -DFUZZ=ON (clang): a libFuzzer binary, and test fuzz_NAME_run (label
#    "fuzz-run") that fuzzes it for GS_FUZZ_SECONDS starting from the seeds
#    (tests/fuzz/run.sh). The target "fuzz" builds every fuzzer and only
#    what they need; ./scripts/test builds the whole tree there, so that
#    clang's warnings are seen in all of it.
set(GS_FUZZ_SECONDS 30 CACHE STRING "Seconds each fuzz_NAME_run test fuzzes (FUZZ=ON)")
if(FUZZ)
  add_custom_target(fuzz)
endif()

function(gs_fuzz_target name)
  set(tgt fuzz_${name})
  set(corpus ${GS_TEST_DIR}/fuzz/corpus/${name})
  if(NOT IS_DIRECTORY ${corpus})
    message(FATAL_ERROR "gs_fuzz_target(${name}): no seed corpus ${corpus}")
  endif()
  if(FUZZ)
    add_executable(${tgt} ${GS_TEST_DIR}/fuzz/${tgt}.c)
    target_link_options(${tgt} PRIVATE -fsanitize=fuzzer)
    add_dependencies(fuzz ${tgt})
  else()
    add_executable(${tgt} ${GS_TEST_DIR}/fuzz/${tgt}.c ${GS_TEST_DIR}/fuzz/replay.c)
  endif()
  target_include_directories(${tgt} PRIVATE ${GS_TEST_DIR}/fuzz)
  target_link_libraries(${tgt} PRIVATE ${ARGN} gs_common)
  set_target_properties(${tgt} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${GS_TEST_BIN})
  gs_target_warnings(${tgt})
  if(FUZZ)
    add_test(NAME ${tgt}_run COMMAND bash ${GS_TEST_DIR}/fuzz/run.sh $<TARGET_FILE:${tgt}> ${corpus}
      ${GS_TEST_WORK}/fuzz/${name} ${GS_FUZZ_SECONDS})
    math(EXPR limit "${GS_FUZZ_SECONDS} * 3 + 120")
    set_tests_properties(${tgt}_run PROPERTIES LABELS "fuzz-run" TIMEOUT ${limit})
  else()
    add_test(NAME ${tgt}_replay COMMAND ${tgt} ${corpus})
    set_tests_properties(${tgt}_replay PROPERTIES LABELS "unit;fuzz" ENVIRONMENT "TMPDIR=${GS_TEST_WORK}")
  endif()
endfunction()
