# The boring rules, enforced on every run: banned functions, secrets freed
# without wiping, PKCS#11 outside hsm/, CMS internals outside envelope/.
add_test(NAME lint_banned COMMAND bash ${GS_TEST_DIR}/lint/banned.sh ${CMAKE_SOURCE_DIR})
set_tests_properties(lint_banned PROPERTIES LABELS "unit;lint")
# Every error code the server answers is in docs/api.md's table of errors.
add_test(NAME lint_error_codes COMMAND bash ${GS_TEST_DIR}/lint/error-codes.sh ${CMAKE_SOURCE_DIR})
set_tests_properties(lint_error_codes PROPERTIES LABELS "unit;lint")
# The test port picker (tests/lib/ports.sh) never hands out one port twice
# (two servers of one test on the same port failed cluster_demo), and
# neither the tests nor the scripts under scripts/ (demo, cluster) pick a
# port themselves instead.
add_test(NAME lint_ports COMMAND bash ${GS_TEST_DIR}/lint/ports.sh ${CMAKE_SOURCE_DIR})
set_tests_properties(lint_ports PROPERTIES LABELS "unit;lint")
# has_line, and no growing log searched with tail | grep -q under pipefail
add_test(NAME lint_has_line COMMAND bash ${GS_TEST_DIR}/lint/has-line.sh ${CMAKE_SOURCE_DIR})
set_tests_properties(lint_has_line PROPERTIES LABELS "unit;lint")
# Every diagnostic log call writes one record of key=value fields, as
# docs/operations.md promises log shippers: no text after the fields, no
# unquoted value that may hold a space or a quote.
add_test(NAME lint_log_fields COMMAND /usr/bin/python3 ${GS_TEST_DIR}/lint/log-fields.py ${CMAKE_SOURCE_DIR})
set_tests_properties(lint_log_fields PROPERTIES LABELS "unit;lint")
# What a build in the tree writes (CMake's build directories, and
# dpkg-buildpackage's obj-TRIPLET and debian/ files) is in .gitignore.
add_test(NAME lint_gitignore COMMAND bash ${GS_TEST_DIR}/lint/gitignore.sh ${CMAKE_SOURCE_DIR})
set_tests_properties(lint_gitignore PROPERTIES LABELS "unit;lint" SKIP_RETURN_CODE 77)
# docs/man-codespans.awk (the man pages' code spans joined across lines)
# changes nothing pandoc reads of a page but the spaces in code spans.
add_test(NAME lint_man_codespans COMMAND /usr/bin/python3 ${GS_TEST_DIR}/lint/man-codespans.py ${CMAKE_SOURCE_DIR})
set_tests_properties(lint_man_codespans PROPERTIES LABELS "unit;lint" SKIP_RETURN_CODE 77)
# A Release build (-O3, what the benchmarks run) keeps compiling: GCC
# warns about more at -O3 than at CI's -O2, and a -Wstringop-overread in
# p11fault broke every Release build while CI passed. The sources that
# broke, again at -O3 with this build's flags (tests/lint/release-compile.py).
add_test(NAME lint_release_compile COMMAND /usr/bin/python3 ${GS_TEST_DIR}/lint/release-compile.py
  ${CMAKE_BINARY_DIR} ${GS_TEST_DIR}/p11fault/p11fault.c ${GS_TEST_DIR}/p11fault/profile.c)
set_tests_properties(lint_release_compile PROPERTIES LABELS "unit;lint")
# The key holder charges a request's rate-limit token once however often
# it runs it (a request the I/O loop gives back to a worker):
# ratelimit_take_once(&j->rl_taken) in khops.c's rate_limit, no plain take
# (a source check: whether the loop runs a request at all is timing).
add_test(NAME lint_ratelimit_once COMMAND bash ${GS_TEST_DIR}/lint/ratelimit-once.sh ${CMAKE_SOURCE_DIR})
set_tests_properties(lint_ratelimit_once PROPERTIES LABELS "unit;lint")
