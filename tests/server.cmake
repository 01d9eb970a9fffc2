# groupsrv/server: integration tests against a real `groupsrv serve` on a
# throw-away SoftHSM token, with curl, openssl cms and the libcurl client.
add_executable(unwrapclient ${GS_TEST_DIR}/tools/unwrapclient.c)
target_link_libraries(unwrapclient PRIVATE PkgConfig::CURL PkgConfig::OPENSSL Threads::Threads)
gs_target_warnings(unwrapclient)

foreach(t e2e refusals cache api_examples)
  add_test(NAME server_${t}
    COMMAND bash ${GS_TEST_DIR}/integration/server-${t}.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
  set_tests_properties(server_${t} PROPERTIES LABELS "integration" TIMEOUT 300
    ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE};GS_P11FAULT_MODULE=$<TARGET_FILE:p11fault>")
endforeach()

# Token removal and return, device errors and the startup key audit, with
# tests/p11fault (steered through its control file) in front of SoftHSM.
add_test(NAME server_token
  COMMAND bash ${GS_TEST_DIR}/integration/server-token.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR} $<TARGET_FILE:p11fault>)
set_tests_properties(server_token PROPERTIES LABELS "integration" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# The network process's TLS context against a client in memory: the
# handshake checks no signature of a client's chain (each request's check
# does, of a chain that reaches a trusted CA); an untrusted chain is
# verified once per connection (X509_verify_cert wrapped, counted).
add_executable(test_tls ${GS_TEST_DIR}/unit/test_tls.c)
target_link_libraries(test_tls PRIVATE gs_net PkgConfig::OPENSSL PkgConfig::CMOCKA)
target_link_options(test_tls PRIVATE -Wl,--wrap=X509_verify_cert)
gs_target_warnings(test_tls)
add_test(NAME unit_tls COMMAND test_tls)
set_tests_properties(unit_tls PROPERTIES LABELS "unit")

# The audit log, compiled on its own with fdatasync, write and pread wrapped so a
# test can fail or slow a sync round, or stop a write short (a full disk);
# its database form against a private PostgreSQL (tests/lib/pg.sh).
add_executable(test_audit ${GS_TEST_DIR}/unit/test_audit.c ${PROJECT_SOURCE_DIR}/groupsrv/server/audit.c)
target_include_directories(test_audit PRIVATE ${PROJECT_SOURCE_DIR}/groupsrv/server)
target_link_libraries(test_audit PRIVATE gs_pgtest gs_groupsrv_core gs_common PkgConfig::JANSSON PkgConfig::OPENSSL
  PkgConfig::CMOCKA Threads::Threads)
target_link_options(test_audit PRIVATE -Wl,--wrap=fdatasync -Wl,--wrap=write -Wl,--wrap=pread
  -Wl,--wrap=clock_gettime)
gs_target_warnings(test_audit)
add_test(NAME unit_audit COMMAND bash ${GS_TEST_DIR}/lib/pg.sh run $<TARGET_FILE:test_audit>)
set_tests_properties(unit_audit PROPERTIES LABELS "unit")

# The one-pass reader of flat JSON bodies against jansson (jsonin.c).
add_executable(test_jsonin ${GS_TEST_DIR}/unit/test_jsonin.c ${PROJECT_SOURCE_DIR}/groupsrv/server/jsonin.c)
target_include_directories(test_jsonin PRIVATE ${PROJECT_SOURCE_DIR}/groupsrv/server)
target_link_libraries(test_jsonin PRIVATE PkgConfig::JANSSON PkgConfig::CMOCKA)
gs_target_warnings(test_jsonin)
add_test(NAME unit_jsonin COMMAND test_jsonin)
set_tests_properties(unit_jsonin PROPERTIES LABELS "unit")

# `groupsrv audit rotate` while the server answers requests, and `audit
# verify` across the rotated files.
add_test(NAME server_audit_rotate
  COMMAND bash ${GS_TEST_DIR}/integration/server-audit-rotate.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
set_tests_properties(server_audit_rotate PROPERTIES LABELS "integration" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# Issue 15's findings, each as its reproduction against a real server;
# tests/p11fault counts the token calls (GS_P11FAULT_COUNTS).
add_test(NAME server_findings
  COMMAND bash ${GS_TEST_DIR}/integration/server-findings.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR} $<TARGET_FILE:p11fault>)
set_tests_properties(server_findings PROPERTIES LABELS "integration" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# Short unwraps run on the key holder's I/O loop; one that must search the
# token again is given back to a worker (zero-cost token, tests/p11fault),
# its rate-limit token charged once (rate_limit = 1, rate_burst = 1).
# Release only: the I/O loop runs an unwrap itself only when the token
# queue measured unwraps under TQ_INLINE_US (100 us); under ASan/UBSan on
# the CI machine kind (AMX CPUs, 2 cores) none are, so the give-back this
# test is about is never reached there and the test cannot tell anything.
add_test(NAME server_inline
  COMMAND bash ${GS_TEST_DIR}/integration/server-inline.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR} $<TARGET_FILE:p11fault>)
set_tests_properties(server_inline PROPERTIES LABELS "integration;release-only" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# No PIN, content key, group secret key or private key in any log or the
# audit trail, with the server at log_level = debug and the clients at -v.
add_test(NAME server_secrets
  COMMAND bash ${GS_TEST_DIR}/integration/server-secrets.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
set_tests_properties(server_secrets PROPERTIES LABELS "integration" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# What real tokens lack or limit that SoftHSM hides (an unreported session
# limit, ...), modelled by tests/p11fault, through the real server.
add_test(NAME token_caps
  COMMAND bash ${GS_TEST_DIR}/integration/token-caps.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR} $<TARGET_FILE:p11fault>)
set_tests_properties(token_caps PROPERTIES LABELS "integration" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# What grows with a group's history: token searches to load a group with
# many secret key versions (tests/p11fault counts them).
add_test(NAME server_scale
  COMMAND bash ${GS_TEST_DIR}/integration/server-scale.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR} $<TARGET_FILE:p11fault>)
set_tests_properties(server_scale PROPERTIES LABELS "integration" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# Odd but valid names: the address a client certificate names, the same for
# member add and the TLS layer; plus addressing and case; group names at
# their limit.
add_test(NAME server_names
  COMMAND bash ${GS_TEST_DIR}/integration/server-names.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
set_tests_properties(server_names PROPERTIES LABELS "integration" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# Admin commands beside a live server under load, and two at once on one
# token and database (the keys lock: store.h), with tests/p11fault's
# "delay" rule making two key generations overlap for certain; a member
# removed under load, audit rotate and SIGHUP under load, SQLite held by
# another writer, a token open that fails once. About 60 s.
add_test(NAME server_race
  COMMAND bash ${GS_TEST_DIR}/integration/server-race.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR} $<TARGET_FILE:p11fault>)
set_tests_properties(server_race PROPERTIES LABELS "integration" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# The same races on a shared PostgreSQL database (the keys lock as an
# advisory lock), against a private cluster. About 20 s.
add_test(NAME server_race_pg
  COMMAND bash ${GS_TEST_DIR}/integration/server-race-pg.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR} $<TARGET_FILE:p11fault>)
set_tests_properties(server_race_pg PROPERTIES LABELS "integration" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# Standard input, output or error closed by the caller: /dev/null, never
# the audit log, a link between serve's processes or a listening socket.
add_test(NAME server_stdfd
  COMMAND bash ${GS_TEST_DIR}/integration/server-stdfd.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
set_tests_properties(server_stdfd PROPERTIES LABELS "integration" TIMEOUT 120
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# Membership changes by the admin commands are audited like REST's, into
# the chain the server writes at the same time.
add_test(NAME server_audit_cli
  COMMAND bash ${GS_TEST_DIR}/integration/server-audit-cli.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
set_tests_properties(server_audit_cli PROPERTIES LABELS "integration" TIMEOUT 300
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# New connections spread over the event-loop threads, also in a burst
# faster than a thread's tick (one thread took 248 of an overload round's
# 256 connections).
add_test(NAME server_spread
  COMMAND bash ${GS_TEST_DIR}/integration/server-spread.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
set_tests_properties(server_spread PROPERTIES LABELS "integration" TIMEOUT 120
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")
