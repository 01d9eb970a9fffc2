# Several group servers on one PostgreSQL behind HAProxy (issue 18).
#
# gs_pgtest: throw-away PostgreSQL databases for unit tests that run under
# tests/lib/pg.sh (test_store, test_audit: both backends, both passes).
add_library(gs_pgtest STATIC ${GS_TEST_DIR}/support/pgtest.c)
target_include_directories(gs_pgtest PUBLIC ${GS_TEST_DIR}/support)
target_link_libraries(gs_pgtest PUBLIC PkgConfig::LIBPQ)
gs_target_warnings(gs_pgtest)

# scripts/cluster (the demo's flow through HAProxy to three instances) and
# the failure test (removal visibility, kill -9 and a database outage under
# load, audit rows against answers). Labelled release-only: scripts/test
# leaves them out of the sanitizer pass. They are load- and process-level
# tests (about 70 s together on this 2-core machine, a few seconds of it the
# key ceremony that gives the other servers' tokens the keys); the code they drive that the sanitizer could
# judge (store_pg.c, the database audit) runs under it in unit_store and
# unit_audit, and a sanitized server would only make their load thinner.
if(TARGET groupsrv)
  add_test(NAME cluster_demo COMMAND ${PROJECT_SOURCE_DIR}/scripts/cluster --no-build)
  set_tests_properties(cluster_demo PROPERTIES LABELS "integration;release-only" TIMEOUT 300
    ENVIRONMENT "GS_BIN=${GS_TEST_BIN};TMPDIR=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")
  add_test(NAME cluster_failover
    COMMAND bash ${GS_TEST_DIR}/integration/cluster.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
  set_tests_properties(cluster_failover PROPERTIES LABELS "integration;release-only" TIMEOUT 300
    ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")
endif()
