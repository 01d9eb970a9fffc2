# Upgrades: state written by older builds (tests/upgrade/, made by its
# make-fixtures.sh from the commits named in each file) opened by this one:
# groupsrv databases of every older schema and their audit logs, exploder
# spools of every older schema with mail queued.
if(TARGET groupsrv AND TARGET exploder)
  add_test(NAME upgrade_fixtures COMMAND bash ${GS_TEST_DIR}/integration/upgrade-fixtures.sh ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR})
  set_tests_properties(upgrade_fixtures PROPERTIES LABELS "integration" TIMEOUT 120
    ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")
endif()
