# The whole flow of ./scripts/demo as an integration test (issue 8): free
# ports, temp dirs under the build tree, the binaries of this build.
# It must also end by saying what it showed, as README.md's "What the demo shows" does.
# Its binaries and work directory are in paths with a space, as a clone in
# "~/My Projects" has them: the demo must quote them wherever a command line
# is split again (smtpd.py's --pipe command). Both are made when the test
# runs, so an emptied testwork/ does not fail it.
add_test(NAME e2e_demo COMMAND bash -c
  "mkdir -p \"$TMPDIR\" && ln -sfn \"$1\" \"$GS_BIN\" || exit 1; out=$(\"$0\" --no-build) || { printf '%s\\n' \"$out\"; exit 1; }; printf '%s\\n' \"$out\"; grep -q '==> What the demo showed' <<< \"$out\""
  ${CMAKE_SOURCE_DIR}/scripts/demo ${GS_TEST_BIN})
set_tests_properties(e2e_demo PROPERTIES
  LABELS "integration;e2e"
  TIMEOUT 300
  ENVIRONMENT "GS_BIN=${GS_TEST_WORK}/demo bin;TMPDIR=${GS_TEST_WORK}/demo tmp")

# The demo when another program holds the group server's port: it fails at
# once, shows the server's log, and leaves no work directory or process.
add_test(NAME e2e_demo_port_busy COMMAND bash ${GS_TEST_DIR}/integration/demo-port-busy.sh
  ${GS_TEST_BIN} ${CMAKE_SOURCE_DIR})
set_tests_properties(e2e_demo_port_busy PROPERTIES
  LABELS "integration;e2e;release-only"
  TIMEOUT 120
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}")

# The demo stopped by Ctrl-C or a TERM: it says it was interrupted (not
# failed), exits 130 and leaves no work directory or process.
add_test(NAME e2e_demo_interrupted COMMAND bash ${GS_TEST_DIR}/integration/demo-interrupted.sh
  ${GS_TEST_BIN} ${CMAKE_SOURCE_DIR})
set_tests_properties(e2e_demo_interrupted PROPERTIES
  LABELS "integration;e2e;release-only"
  TIMEOUT 120
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}")

# The demo when the SMTP server's pipe to `exploder deliver` fails: it shows
# what the exploder said (the SMTP server's pipe log).
add_test(NAME e2e_demo_pipe_fails COMMAND bash ${GS_TEST_DIR}/integration/demo-pipe-fails.sh
  ${GS_TEST_BIN} ${CMAKE_SOURCE_DIR})
set_tests_properties(e2e_demo_pipe_fails PROPERTIES
  LABELS "integration;e2e;release-only"
  TIMEOUT 150
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}")
