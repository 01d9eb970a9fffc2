# The adversarial suite (issue 15): hostile clients, a failing disk and a
# token that goes away, against a real `groupsrv serve` on a throw-away
# SoftHSM token. Loopback only; every attack is bounded in time and scaled
# to the small limits the tests configure. All run in both passes: the
# connection bookkeeping they drive (deadlines, eviction, frees) and the
# audit log's error paths are what the sanitizers should see.
function(gs_adversarial_test name script)
  add_test(NAME adversarial_${name}
    COMMAND bash ${GS_TEST_DIR}/adversarial/${script} ${GS_TEST_BIN} ${PROJECT_SOURCE_DIR} ${ARGN})
  set_tests_properties(adversarial_${name} PROPERTIES LABELS "integration;adversarial" TIMEOUT 300
    ENVIRONMENT "GS_TEST_WORK=${GS_TEST_WORK};SOFTHSM2_MODULE=${SOFTHSM2_MODULE};LORIS_SECONDS=6")
endfunction()

# Slowloris on each listener while a member connects anew per request
# (>= 99 % answered, none hanging); a kept-alive connection outlives both
# deadlines; a listener full of members answers 503 too_many_connections.
gs_adversarial_test(slowloris server-slowloris.sh)
# The audit log on a full 64 KiB tmpfs (CI runs as root), then deleted and
# made anew with SIGHUP, at a file-size limit (prlimit on the running
# server; groupmail too), its directory deleted: refusals, honest /healthz,
# recovery, audit verify.
gs_adversarial_test(audit_disk server-audit-disk.sh)
# The SoftHSM token directory moved away under load and back: refusals and
# a /healthz that tells the truth (it checks the token's objects), then
# service again from the same process, driven by key requests alone.
gs_adversarial_test(token_vanish server-token-vanish.sh)
# The malformed-input corpus and non-member requests make no token call at
# all (tests/p11fault counts every PKCS#11 call).
gs_adversarial_test(malformed_count server-malformed-count.sh $<TARGET_FILE:p11fault>)
# Strict HTTP framing: two Content-Length headers, or Transfer-Encoding beside
# Content-Length, twice or not "chunked", a HEAD with a body, obs-fold,
# a chunked body framed by what libevent reads leniently (0x1a, +1a, 1a
# junk), an HTTP version other than 1.0/1.1, refused and closed; a body
# far over the cap always gets its 413, never a reset (lingering close);
# HEAD answers carry no body.
gs_adversarial_test(strict_http server-strict-http.sh)
# A client that pipelines requests and never reads the answers is closed
# once it is a whole request ahead (memory per connection stays bounded);
# the descriptor limit is raised at start, and running out of descriptors
# rests the listeners instead of a busy accept loop.
gs_adversarial_test(exhaustion server-exhaustion.sh)
# Pipelined requests read late: the one-write answers whose TLS write
# blocks part-way are finished by libevent's retry of the same SSL_write,
# whole and in order. Then (one set-up for both) a kept-alive connection
# stays in the network process's epoll set over a request (no epoll_ctl
# pair per request), and a client that sends more or shuts its side while
# its request is at the token is still answered, without the loop
# spinning on the readable socket (strace counts).
gs_adversarial_test(pipelined_answers server-pipelined-answers.sh $<TARGET_FILE:p11fault>)
