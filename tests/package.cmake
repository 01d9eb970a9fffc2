# Packaging: what `cmake --install` installs (compared with the checked-in
# tests/package/install-tree.txt), and the Debian packages built from this
# tree, installed on this machine, checked and purged again.
add_test(NAME package_install_tree
  COMMAND bash ${GS_TEST_DIR}/integration/package-install-tree.sh ${CMAKE_BINARY_DIR} ${PROJECT_SOURCE_DIR}
          ${CMAKE_INSTALL_PREFIX})
set_tests_properties(package_install_tree PROPERTIES LABELS "integration" TIMEOUT 120
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK}")
