# Stock S/MIME clients at both ends (issue 14): NSS cmsutil, gpgsm and
# openssl cms as senders and readers, every groupmail method and every
# exploder mode, against one group server on one SoftHSM token.
#
# Label interop-matrix: run in the release pass only (scripts/test leaves it
# out of the sanitizer pass, as bench-smoke). The matrix exercises the
# peers' behaviour (what NSS and gpgsm send and can read); every code path
# of ours that it drives is also run under ASan/UBSan by smaller tests that
# stay in both passes: envelope_interop parses cmsutil and gpgsm output,
# server_refusals, groupmail_e2e and exploder_member_certs cover v1.5 with
# content_algorithm, own-key decryption and per-member copies. Running the
# 12 x 4 x 3 matrix a second time under the sanitizers would add about a
# minute and no coverage.
add_test(NAME interop_clients COMMAND bash ${GS_TEST_DIR}/integration/interop-clients.sh ${GS_TEST_BIN}
  ${CMAKE_SOURCE_DIR})
set_tests_properties(interop_clients PROPERTIES LABELS "integration;interop;interop-matrix" TIMEOUT 600
  ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE}")
