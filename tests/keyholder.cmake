# The key holder and the frames between the server's processes: unit tests
# of the IPC codec and the fair token queue.
# metrics.c: the token counters the key holder packs into IPC_STATS;
# holder.c: the network process's end of a link (answers paired to calls).
add_executable(test_ipc ${GS_TEST_DIR}/unit/test_ipc.c ${PROJECT_SOURCE_DIR}/groupsrv/server/metrics.c
  ${PROJECT_SOURCE_DIR}/groupsrv/server/holder.c)
target_include_directories(test_ipc PRIVATE ${PROJECT_SOURCE_DIR}/groupsrv/server)
target_link_libraries(test_ipc PRIVATE gs_groupsrv_base PkgConfig::CMOCKA Threads::Threads)
gs_target_warnings(test_ipc)
add_test(NAME unit_ipc COMMAND test_ipc)
set_tests_properties(unit_ipc PROPERTIES LABELS "unit")

add_executable(test_tokenq ${GS_TEST_DIR}/unit/test_tokenq.c ${PROJECT_SOURCE_DIR}/groupsrv/keyholder/tokenq.c)
target_include_directories(test_tokenq PRIVATE ${PROJECT_SOURCE_DIR}/groupsrv/keyholder)
target_link_libraries(test_tokenq PRIVATE gs_common PkgConfig::CMOCKA Threads::Threads)
gs_target_warnings(test_tokenq)
add_test(NAME unit_tokenq COMMAND test_tokenq)
set_tests_properties(unit_tokenq PROPERTIES LABELS "unit")

# Which groups may search the token again for a key version not shown.
add_executable(test_searchq ${GS_TEST_DIR}/unit/test_searchq.c ${PROJECT_SOURCE_DIR}/groupsrv/keyholder/searchq.c)
target_include_directories(test_searchq PRIVATE ${PROJECT_SOURCE_DIR}/groupsrv/keyholder)
target_link_libraries(test_searchq PRIVATE PkgConfig::CMOCKA Threads::Threads)
gs_target_warnings(test_searchq)
add_test(NAME unit_searchq COMMAND test_searchq)
set_tests_properties(unit_searchq PROPERTIES LABELS "unit")

# The rate limiter and the suspension after failed unwraps, by the keys a
# request makes once.
add_executable(test_ratelimit ${GS_TEST_DIR}/unit/test_ratelimit.c ${PROJECT_SOURCE_DIR}/groupsrv/server/ratelimit.c)
target_include_directories(test_ratelimit PRIVATE ${PROJECT_SOURCE_DIR}/groupsrv/server)
target_link_libraries(test_ratelimit PRIVATE gs_common PkgConfig::CMOCKA Threads::Threads)
gs_target_warnings(test_ratelimit)
add_test(NAME unit_ratelimit COMMAND test_ratelimit)
set_tests_properties(unit_ratelimit PROPERTIES LABELS "unit")

# The network process's seccomp filter, call by call, in forked children
# (milliseconds).
add_executable(test_sandbox ${GS_TEST_DIR}/unit/test_sandbox.c ${PROJECT_SOURCE_DIR}/groupsrv/server/sandbox.c)
target_include_directories(test_sandbox PRIVATE ${PROJECT_SOURCE_DIR}/groupsrv/server)
target_link_libraries(test_sandbox PRIVATE PkgConfig::CMOCKA PkgConfig::SECCOMP)
if(SANITIZE)
  target_compile_definitions(test_sandbox PRIVATE GS_SANITIZER_BUILD) # the filter the build's groupsrv-net has
endif()
gs_target_warnings(test_sandbox)
add_test(NAME unit_sandbox COMMAND test_sandbox)
set_tests_properties(unit_sandbox PROPERTIES LABELS "unit")

# The key holder driven directly over its link (tests/tools/khdrive.c).
add_executable(khdrive ${GS_TEST_DIR}/tools/khdrive.c)
target_link_libraries(khdrive PRIVATE gs_keyholder gs_net) # gs_net: holder.c, the network process's side of a link
gs_target_warnings(khdrive)
target_compile_options(khdrive PRIVATE -Wno-comment)

# The process split on a running server: the sandbox seen from /proc, the
# key holder's refusals over IPC, kill -9 of either process under load.
# Both this and server_fairness run in both passes: under ASan/UBSan they
# are what exercises the supervisor's restarts, the link rebuilding and
# the drain for memory errors and leaks (about 30 s each per pass).
add_test(NAME server_keyholder
  COMMAND bash ${GS_TEST_DIR}/integration/server-keyholder.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
set_tests_properties(server_keyholder PROPERTIES LABELS "integration" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# server_keyholder's gdb-hold.py ends when it should: the held thread
# released at the go file or HOLD_TIMEOUT, and gdb gone with the process
# it held (it polled for ever after a failed run's clean-up). About 3 s;
# skipped without gdb or ptrace.
add_test(NAME gdb_hold
  COMMAND bash ${GS_TEST_DIR}/integration/gdb-hold-check.sh ${PROJECT_SOURCE_DIR})
set_tests_properties(gdb_hold PROPERTIES LABELS "integration" TIMEOUT 120 SKIP_RETURN_CODE 77
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}")

# A key holder stopped (SIGSTOP) under a burst: what the network process
# holds for it stays under [server] keyholder_queue_max, requests beyond
# it and on a stalled link are answered 503 at once, and after SIGCONT the
# token does no work for requests already answered (audit records only
# for 200s). About 10 s.
add_test(NAME server_kh_stalled
  COMMAND bash ${GS_TEST_DIR}/integration/server-kh-stalled.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
set_tests_properties(server_kh_stalled PROPERTIES LABELS "integration" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# One slow request (a 7 s batch at a slow token, [server] timeout = 2) on an
# otherwise idle link makes it "stalled"; the next client's request goes
# on as the probe at once and is served, not refused for a whole timeout
# (server-kh-slowcall.sh; about 10 s).
add_test(NAME server_kh_slowcall
  COMMAND bash ${GS_TEST_DIR}/integration/server-kh-slowcall.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR} $<TARGET_FILE:p11fault>)
set_tests_properties(server_kh_slowcall PROPERTIES LABELS "integration" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# What a (compromised) network process can have the key holder hold for
# one link: [server] keyholder_queue_max, beyond it 503 overloaded at once
# (khdrive --budget on a slow token, tests/p11fault; about 5 s).
add_test(NAME server_kh_budget
  COMMAND bash ${GS_TEST_DIR}/integration/server-kh-budget.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR} $<TARGET_FILE:p11fault>)
set_tests_properties(server_kh_budget PROPERTIES LABELS "integration" TIMEOUT 120
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# khdrive again with PostgreSQL as the key holder's store, in a database
# whose collation is UTF-8 (lower() folds more than ASCII there), and a
# client certificate for such a spelling over HTTPS: no member either way
# (a private PostgreSQL, tests/lib/pg.sh; about 10 s). Release only: server_keyholder runs the same
# key holder code under the sanitizers, and khdrive's floods take 20 s there.
add_test(NAME server_keyholder_pg
  COMMAND bash ${GS_TEST_DIR}/integration/server-keyholder-pg.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
set_tests_properties(server_keyholder_pg PROPERTIES LABELS "integration;release-only" TIMEOUT 180
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# The fair queue, load shedding and the SIGTERM drain, with tests/p11fault's
# token model making the token the slow part.
add_test(NAME server_fairness
  COMMAND bash ${GS_TEST_DIR}/integration/server-fairness.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR} $<TARGET_FILE:p11fault>)
set_tests_properties(server_fairness PROPERTIES LABELS "integration" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# The network process's request handling, for fuzz_http (tests/fuzz.cmake):
# the real core.c, api.c and certsrv.c, built with GS_FUZZING (plain HTTP
# on a Unix socket, the peer named by the input), the key holder faked by
# the target.
set(GS_NET_DIR ${PROJECT_SOURCE_DIR}/groupsrv/server)
add_library(gs_net_fuzzing STATIC ${GS_NET_DIR}/core.c ${GS_NET_DIR}/api.c ${GS_NET_DIR}/certsrv.c
  ${GS_NET_DIR}/gview.c ${GS_NET_DIR}/holder.c ${GS_NET_DIR}/jsonin.c ${GS_NET_DIR}/metrics.c ${GS_NET_DIR}/tls.c)
target_include_directories(gs_net_fuzzing PUBLIC ${GS_NET_DIR})
target_compile_definitions(gs_net_fuzzing PUBLIC GS_FUZZING GS_FUZZ_HTTP_DIR="${GS_TEST_DIR}/fuzz/http")
target_link_libraries(gs_net_fuzzing PUBLIC gs_reqscan gs_groupsrv_base gs_envelope gs_common PkgConfig::LIBEVENT
  PkgConfig::JANSSON PkgConfig::OPENSSL Threads::Threads)
gs_target_warnings(gs_net_fuzzing)

# [tls] key on the token must not be the local CA's key (the network
# process can have any digest signed with the TLS key). A few seconds.
add_test(NAME server_tlskey_ca
  COMMAND bash ${GS_TEST_DIR}/integration/server-tlskey-ca.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
set_tests_properties(server_tlskey_ca PROPERTIES LABELS "integration" TIMEOUT 120
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# The network process against a key holder that answers with a frame that
# does not decode (a fake supervisor and key holder in the test drive the
# real groupsrv-net): 503 for the request, then the process ends with
# status 1 for the supervisor to restart it with new links. About a
# second; in both passes (the shutdown path under ASan is the point).
add_test(NAME net_broken_holder
  COMMAND /usr/bin/python3 ${GS_TEST_DIR}/integration/net-broken-holder.py ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
set_tests_properties(net_broken_holder PROPERTIES LABELS "integration" TIMEOUT 120
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}")
