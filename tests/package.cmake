# Packaging: what `cmake --install` installs (compared with the checked-in
# tests/package/install-tree.txt), and the Debian packages built from this
# tree, installed on this machine, checked and purged again.
add_test(NAME package_install_tree
  COMMAND bash ${GS_TEST_DIR}/integration/package-install-tree.sh ${CMAKE_BINARY_DIR} ${PROJECT_SOURCE_DIR}
          ${CMAKE_INSTALL_PREFIX})
set_tests_properties(package_install_tree PROPERTIES LABELS "integration" TIMEOUT 120
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}" RESOURCE_LOCK gs_system_packages)

# One version: CMakeLists.txt, debian/changelog, scripts/version, the
# programs' --version and the man pages; and versions that dpkg orders
# as commits and release tags come (a few seconds: every pass).
add_test(NAME package_version
  COMMAND bash ${GS_TEST_DIR}/integration/package-version.sh ${PROJECT_SOURCE_DIR} ${CMAKE_BINARY_DIR})
set_tests_properties(package_version PROPERTIES LABELS "integration" TIMEOUT 60
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}")

# The Debian packages: built from this tree with dpkg-buildpackage and
# checked by lintian (package_deb_build), then installed on this machine,
# used (the group server as docs/operations.md sets it up, docs/postfix.md
# step by step with a private Postfix) and purged (package_deb_system; it
# needs root, as CI has, and holds a lock so two runs on one machine take
# turns). Release pass only (label "package", excluded by scripts/test
# from the sanitizer pass): the package build makes its own optimised
# build of the programs, so an ASan/UBSan build adds nothing here.
set(GS_DEB_DIR ${GS_TEST_WORK}/debs)
add_test(NAME package_deb_build
  COMMAND bash ${GS_TEST_DIR}/integration/package-deb-build.sh ${PROJECT_SOURCE_DIR} ${GS_DEB_DIR})
set_tests_properties(package_deb_build PROPERTIES LABELS "integration;package" TIMEOUT 600
  FIXTURES_SETUP gs_debs)
# What purge deletes, in a scratch system of overlays (no package is
# installed on this machine): the group keys only when the admin said so.
# Not beside package_deb_system: this machine's /etc, /usr and /var are
# the overlays' lower layers, which must not change under them, and that
# test installs the packages there for minutes.
add_test(NAME package_deb_purge
  COMMAND bash ${GS_TEST_DIR}/integration/package-deb-purge.sh ${PROJECT_SOURCE_DIR} ${GS_DEB_DIR})
set_tests_properties(package_deb_purge PROPERTIES LABELS "integration;package" TIMEOUT 300
  FIXTURES_REQUIRED gs_debs SKIP_RETURN_CODE 77 ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}"
  RESOURCE_LOCK gs_system_packages)
add_test(NAME package_deb_system
  COMMAND bash ${GS_TEST_DIR}/integration/package-deb-system.sh ${PROJECT_SOURCE_DIR} ${GS_DEB_DIR})
set_tests_properties(package_deb_system PROPERTIES LABELS "integration;package" TIMEOUT 600
  FIXTURES_REQUIRED gs_debs RESOURCE_LOCK gs_system_packages
  ENVIRONMENT "SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")

# The unit's MemoryDenyWriteExecute=yes against a PKCS#11 module that needs
# an executable stack: what check says is what operations.md quotes, with
# the drop-in that lets such a module load (systemd 252's seccomp filter,
# and the kernel's PR_SET_MDWE where it has it, stand in for the unit; a
# second; release pass only, label "package": no code of
# ours is under test that a sanitizer build would look at differently).
add_test(NAME package_unit_execstack
  COMMAND bash ${GS_TEST_DIR}/integration/package-unit-execstack.sh ${PROJECT_SOURCE_DIR} ${GS_TEST_BIN})
set_tests_properties(package_unit_execstack PROPERTIES LABELS "integration;package" TIMEOUT 60
  SKIP_RETURN_CODE 77 ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}")
