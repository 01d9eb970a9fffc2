/*
 * test_restclient.c: gs_restclient against a local HTTPS stub
 * (tests/integration/groupmail-stub.py) with a throw-away PKI
 * (groupmail-mkcerts.sh): answers, errors, garbage, timeouts, caps, pins,
 * mutual TLS from files and from memory, connection reuse; and the
 * answer parsers of restparse.c on hostile bytes, without a server.
 * Environment (set by tests/client.cmake): GM_STUB, GM_MKCERTS, GM_WORK.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "restclient.h"
#include "restparse.h"
#include "util.h"

static char dir[512];
static char base[128];
static pid_t stub_pid = -1;

static void path(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/%s", dir, name);
}

static int setup(void **state)
{
    const char *stub = getenv("GM_STUB"), *mk = getenv("GM_MKCERTS"), *work = getenv("GM_WORK");
    char cmd[1200], pf[600], cert[600], key[600], ca[600];
    unsigned char *port = NULL;
    size_t plen = 0;

    (void)state;
    if (stub == NULL || mk == NULL)
        return -1;
    snprintf(dir, sizeof(dir), "%s/restclient.XXXXXX", work ? work : "/tmp");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(cmd, sizeof(cmd), "'%s' '%s'", mk, dir);
    if (system(cmd) != 0)
        return -1;
    path(pf, sizeof(pf), "port");
    path(cert, sizeof(cert), "server.pem");
    path(key, sizeof(key), "server.key");
    path(ca, sizeof(ca), "ca.pem");
    stub_pid = fork();
    if (stub_pid < 0)
        return -1;
    if (stub_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive a crashed test */
        execl("/usr/bin/python3", "python3", stub, cert, key, ca, pf, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 100; i++) {
        if (util_read_file(pf, 16, &port, &plen) == UTIL_OK)
            break;
        usleep(100000);
    }
    if (port == NULL)
        return -1;
    snprintf(base, sizeof(base), "https://127.0.0.1:%s/", (char *)port);
    free(port);
    return 0;
}

static int teardown(void **state)
{
    char cmd[700];
    (void)state;
    if (stub_pid > 0) {
        kill(stub_pid, SIGTERM);
        waitpid(stub_pid, NULL, 0);
    }
    if (dir[0] != '\0') {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            return -1;
    }
    return 0;
}

/* A handle trusting the test CA; with alice's certificate if mtls; an
 * answer cap of max_response (0: the client's default). */
static gs_rest *mk_cap(bool mtls, long timeout_ms, size_t max_response)
{
    static char ca[600], cert[600], key[600];
    gs_rest_opts o = {0};
    gs_rest *r = NULL;
    path(ca, sizeof(ca), "ca.pem");
    path(cert, sizeof(cert), "alice.pem");
    path(key, sizeof(key), "alice.key");
    o.base_url = base;
    o.ca_file = ca;
    o.timeout_ms = timeout_ms;
    o.max_response = max_response;
    if (mtls) {
        o.cert_file = cert;
        o.key_file = key;
    }
    assert_int_equal(gs_rest_new(&o, &r), GS_REST_OK);
    return r;
}

static gs_rest *mk(bool mtls, long timeout_ms)
{
    return mk_cap(mtls, timeout_ms, 1024 * 1024);
}

static void test_new_rejects_http(void **state)
{
    gs_rest_opts o = {.base_url = "http://127.0.0.1:1"};
    gs_rest *r = (gs_rest *)1;
    (void)state;
    assert_int_equal(gs_rest_new(&o, &r), GS_REST_ERR_ARGS);
    assert_null(r);
    assert_int_equal(gs_rest_new(NULL, &r), GS_REST_ERR_ARGS);
    gs_rest_free(NULL);
}

static void test_group_info(void **state)
{
    gs_rest *r = mk(false, 0);
    gs_group_info gi;
    (void)state;
    assert_int_equal(gs_rest_group_info(r, "ok", &gi), GS_REST_OK);
    assert_string_equal(gi.name, "ok");
    assert_string_equal(gi.address, "ok@example.org");
    assert_string_equal(gi.certificate_server, "https://127.0.0.1:1");
    assert_int_equal(gi.n_methods, 3);
    assert_string_equal(gi.methods[1], "recipient-key");
    assert_int_equal(gi.n_key_versions, 2);
    assert_int_equal(gi.key_versions[1], 2);
    gs_group_info_clear(&gi);
    assert_int_equal(gs_rest_last_status(r), 200);
    assert_false(gi.kt_algs_known); /* a server that does not say */
    gs_group_info_clear(&gi);
    assert_int_equal(gs_rest_group_info(r, "kts", &gi), GS_REST_OK);
    assert_true(gi.kt_algs_known);
    assert_int_equal(gi.n_kt_algs, 2);
    assert_string_equal(gi.kt_algs[1], "RSA-PKCS1-v1_5");
    gs_group_info_clear(&gi);
    assert_null(gi.kt_algs);
    /* a field of the wrong type */
    assert_int_equal(gs_rest_group_info(r, "badb64", &gi), GS_REST_ERR_BAD_ANSWER);
    assert_null(gi.name);
    gs_rest_free(r);
}

static void test_mtls_identity(void **state)
{
    gs_rest *r = mk(false, 0);
    gs_group_info gi;
    (void)state;
    assert_int_equal(gs_rest_group_info(r, "whoami", &gi), GS_REST_OK);
    assert_string_equal(gi.name, "anonymous");
    gs_group_info_clear(&gi);
    gs_rest_free(r);

    r = mk(true, 0);
    assert_int_equal(gs_rest_group_info(r, "whoami", &gi), GS_REST_OK);
    assert_string_equal(gi.name, "alice@example.org");
    gs_group_info_clear(&gi);
    gs_rest_free(r);
}

static void test_mtls_from_memory(void **state)
{
    char ca[600], cert[600], key[600];
    unsigned char *c = NULL, *k = NULL;
    size_t clen = 0, klen = 0;
    gs_rest_opts o = {0};
    gs_rest *r = NULL;
    gs_group_info gi;
    (void)state;
    path(ca, sizeof(ca), "ca.pem");
    path(cert, sizeof(cert), "alice.pem");
    path(key, sizeof(key), "alice.key");
    assert_int_equal(util_read_file(cert, 65536, &c, &clen), UTIL_OK);
    assert_int_equal(util_read_file(key, 65536, &k, &klen), UTIL_OK);
    o.base_url = base;
    o.ca_file = ca;
    o.cert_pem = c;
    o.cert_pem_len = clen;
    o.key_pem = k;
    o.key_pem_len = klen;
    assert_int_equal(gs_rest_new(&o, &r), GS_REST_OK);
    util_secret_free(k, klen); /* the handle keeps its own copy */
    free(c);
    assert_int_equal(gs_rest_group_info(r, "whoami", &gi), GS_REST_OK);
    assert_string_equal(gi.name, "alice@example.org");
    gs_group_info_clear(&gi);
    gs_rest_free(r);
}

static void test_client_cert_missing_file(void **state)
{
    char ca[600];
    gs_rest_opts o = {0};
    gs_rest *r = NULL;
    gs_group_info gi;
    (void)state;
    path(ca, sizeof(ca), "ca.pem");
    o.base_url = base;
    o.ca_file = ca;
    o.cert_file = "/nonexistent/cert.pem";
    assert_int_equal(gs_rest_new(&o, &r), GS_REST_OK);
    assert_int_equal(gs_rest_group_info(r, "ok", &gi), GS_REST_ERR_CLIENT_CERT);
    gs_rest_free(r);
}

static void test_keepalive(void **state)
{
    gs_rest *r = mk(true, 0);
    gs_group_info a, b;
    (void)state;
    assert_int_equal(gs_rest_group_info(r, "conn", &a), GS_REST_OK);
    assert_int_equal(gs_rest_group_info(r, "conn", &b), GS_REST_OK);
    /* the same TLS connection served both requests */
    assert_string_equal(a.name, b.name);
    gs_group_info_clear(&a);
    gs_group_info_clear(&b);
    gs_rest_free(r);
}

static void test_certificate(void **state)
{
    gs_rest *r = mk(false, 0);
    char *pem = NULL;
    size_t len = 0;
    (void)state;
    assert_int_equal(gs_rest_group_certificate(r, "ok", &pem, &len), GS_REST_OK);
    assert_non_null(strstr(pem, "BEGIN CERTIFICATE"));
    assert_int_equal(strlen(pem), len);
    free(pem);
    assert_int_equal(gs_rest_group_certificate(r, "garbage", &pem, &len), GS_REST_ERR_BAD_ANSWER);
    assert_null(pem);
    gs_rest_free(r);
}

static void test_unwrap(void **state)
{
    gs_rest *r = mk(true, 0);
    const unsigned char ri[] = {0x30, 0x03, 0x02, 0x01, 0x00};
    gs_unwrap_req req = {.recipient_info = ri, .recipient_info_len = sizeof(ri)};
    gs_unwrap_result res;
    (void)state;

    req.deliver = GS_DELIVER_TLS;
    assert_int_equal(gs_rest_unwrap(r, "ok", &req, &res), GS_REST_OK);
    assert_int_equal(res.key_len, 32);
    assert_int_equal(res.key[31], 31);
    assert_int_equal(res.key_version, 1);
    gs_unwrap_result_clear(&res);
    assert_null(res.key);

    req.deliver = GS_DELIVER_RECIPIENT_KEY;
    assert_int_equal(gs_rest_unwrap(r, "ok", &req, &res), GS_REST_OK);
    assert_int_equal(res.recipient_info_len, 3 + sizeof(ri));
    assert_memory_equal(res.recipient_info, "RI:", 3);
    assert_memory_equal(res.recipient_info + 3, ri, sizeof(ri));
    assert_int_equal(res.secret_version, -1);
    gs_unwrap_result_clear(&res);

    req.deliver = GS_DELIVER_GROUP_SECRET;
    assert_int_equal(gs_rest_unwrap(r, "ok", &req, &res), GS_REST_OK);
    assert_int_equal(res.secret_version, 3);
    gs_unwrap_result_clear(&res);

    /* bare encrypted key form */
    gs_unwrap_req req2 = {.encrypted_key = ri,
                          .encrypted_key_len = sizeof(ri),
                          .algorithm = "RSA-OAEP-256",
                          .deliver = GS_DELIVER_RECIPIENT_KEY};
    assert_int_equal(gs_rest_unwrap(r, "ok", &req2, &res), GS_REST_OK);
    gs_unwrap_result_clear(&res);
    req2.algorithm = "RSA";
    assert_int_equal(gs_rest_unwrap(r, "ok", &req2, &res), GS_REST_ERR_ARGS);
    /* both forms at once */
    req2.algorithm = "RSA-OAEP";
    req2.recipient_info = ri;
    req2.recipient_info_len = sizeof(ri);
    assert_int_equal(gs_rest_unwrap(r, "ok", &req2, &res), GS_REST_ERR_ARGS);

    /* the content algorithm goes along (the stub answers its key length) */
    req.deliver = GS_DELIVER_TLS;
    req.content_algorithm = "aes-128-cbc";
    assert_int_equal(gs_rest_unwrap(r, "ok", &req, &res), GS_REST_OK);
    assert_int_equal(res.key_len, 16);
    gs_unwrap_result_clear(&res);
    req.content_algorithm = "";
    assert_int_equal(gs_rest_unwrap(r, "ok", &req, &res), GS_REST_ERR_ARGS);
    req.content_algorithm = NULL;

    /* the server's uniform failure carries its code */
    gs_unwrap_req bad = {.recipient_info = (const unsigned char *)"refuse", .recipient_info_len = 6};
    assert_int_equal(gs_rest_unwrap(r, "ok", &bad, &res), GS_REST_ERR_REJECTED);
    assert_int_equal(gs_rest_last_status(r), 400);
    assert_string_equal(gs_rest_last_code(r), "unwrap_failed");

    /* garbage base64 */
    assert_int_equal(gs_rest_unwrap(r, "badb64", &req, &res), GS_REST_ERR_BAD_ANSWER);
    req.deliver = GS_DELIVER_TLS;
    assert_int_equal(gs_rest_unwrap(r, "badb64", &req, &res), GS_REST_ERR_BAD_ANSWER);
    assert_null(res.key);
    gs_rest_free(r);
}

static void test_unwrap_batch(void **state)
{
    gs_rest *r = mk(true, 0);
    const unsigned char ri[] = {0x30, 0x00};
    gs_unwrap_req reqs[3] = {
        {.recipient_info = ri, .recipient_info_len = sizeof(ri), .deliver = GS_DELIVER_TLS},
        {.recipient_info = (const unsigned char *)"refuse", .recipient_info_len = 6},
        {.recipient_info = ri, .recipient_info_len = sizeof(ri), .deliver = GS_DELIVER_RECIPIENT_KEY},
    };
    gs_unwrap_result outs[3];
    gs_rest_err errs[3];
    (void)state;
    assert_int_equal(gs_rest_unwrap_batch(r, "ok", reqs, 3, outs, errs), GS_REST_OK);
    assert_int_equal(errs[0], GS_REST_OK);
    assert_int_equal(outs[0].key_len, 32);
    assert_int_equal(errs[1], GS_REST_ERR_REJECTED);
    assert_int_equal(errs[2], GS_REST_OK);
    assert_memory_equal(outs[2].recipient_info, "RI:", 3);
    for (int i = 0; i < 3; i++)
        gs_unwrap_result_clear(&outs[i]);
    assert_int_equal(gs_rest_unwrap_batch(r, "ok", reqs, GS_REST_BATCH_MAX + 1, outs, errs),
                     GS_REST_ERR_ARGS);
    gs_rest_free(r);
}

static void test_rewrap(void **state)
{
    gs_rest *r = mk(true, 0);
    const unsigned char ri[] = {0x30, 0x01, 0x05};
    gs_ri_list l;
    (void)state;
    assert_int_equal(gs_rest_rewrap(r, "ok", ri, sizeof(ri), GS_REWRAP_GROUP_SECRET, &l), GS_REST_OK);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.len[0], 4 + sizeof(ri));
    assert_memory_equal(l.der[0], "KEK:", 4);
    gs_ri_list_clear(&l);
    assert_int_equal(gs_rest_rewrap(r, "ok", ri, sizeof(ri), GS_REWRAP_MEMBERS, &l), GS_REST_OK);
    assert_int_equal(l.n, 2);
    assert_memory_equal(l.der[1], "M2:", 3);
    gs_ri_list_clear(&l);
    assert_int_equal(gs_rest_rewrap(r, "badb64", ri, sizeof(ri), GS_REWRAP_MEMBERS, &l),
                     GS_REST_ERR_BAD_ANSWER);
    assert_int_equal(l.n, 0);
    assert_int_equal(gs_rest_rewrap(r, "forbidden", ri, sizeof(ri), GS_REWRAP_MEMBERS, &l),
                     GS_REST_ERR_FORBIDDEN);
    /* member copies: each RecipientInfo's member, with the content algorithm sent */
    assert_null(l.member);
    assert_int_equal(gs_rest_rewrap_alg(r, "named", ri, sizeof(ri), GS_REWRAP_MEMBERS, "aes-192-cbc", &l), GS_REST_OK);
    assert_int_equal(l.n, 2);
    assert_non_null(l.member);
    assert_string_equal(l.member[0], "a@example.org");
    assert_string_equal(l.member[1], "b@example.org");
    assert_memory_equal(l.der[1], "M2:", 3);
    gs_ri_list_clear(&l);
    assert_null(l.member);
    assert_int_equal(gs_rest_rewrap(r, "named", ri, sizeof(ri), GS_REWRAP_MEMBERS, &l), GS_REST_ERR_REJECTED);
    assert_string_equal(gs_rest_last_code(r), "content_algorithm_required");
    /* a members list that does not match the RecipientInfos one for one */
    assert_int_equal(gs_rest_rewrap_alg(r, "misnamed", ri, sizeof(ri), GS_REWRAP_MEMBERS, "aes-192-cbc", &l),
                     GS_REST_ERR_BAD_ANSWER);
    assert_int_equal(l.n, 0);
    assert_null(l.member);
    gs_rest_free(r);
}

/* A member-certs answer for 10,000 members (RSA-4096 sized RecipientInfos,
 * about 9.7 MB) is over the 4 MiB default and within the cap the exploder
 * gives a 10,000-member list (gs_rest_members_answer_cap). */
static void test_rewrap_big_list(void **state)
{
    gs_rest *r = mk_cap(true, 0, 0); /* the default cap */
    const unsigned char ri[] = {0x30, 0x01, 0x05};
    gs_ri_list l;
    (void)state;
    assert_int_equal(gs_rest_rewrap_alg(r, "members-10000", ri, sizeof(ri), GS_REWRAP_MEMBERS, "aes-128-cbc", &l),
                     GS_REST_ERR_TOO_LARGE);
    assert_int_equal(l.n, 0);
    gs_rest_free(r);
    assert_true(gs_rest_members_answer_cap(10000) > (size_t)10000 * 970);
    assert_int_equal(gs_rest_members_answer_cap(1000000), gs_rest_members_answer_cap(65536));
    r = mk_cap(true, 0, gs_rest_members_answer_cap(10000));
    assert_int_equal(gs_rest_rewrap_alg(r, "members-10000", ri, sizeof(ri), GS_REWRAP_MEMBERS, "aes-128-cbc", &l),
                     GS_REST_OK);
    assert_int_equal(l.n, 10000);
    assert_non_null(l.member);
    assert_int_equal(l.len[9999], 700);
    assert_string_equal(l.member[0], "member0@members.example.org");
    assert_string_equal(l.member[9999], "member9999@members.example.org");
    gs_ri_list_clear(&l);
    gs_rest_free(r);
}

static void test_secret_keys(void **state)
{
    gs_rest *r = mk(true, 0);
    gs_secret_keys s;
    (void)state;
    assert_int_equal(gs_rest_secret_keys(r, "ok", &s), GS_REST_OK);
    assert_int_equal(s.n, 2);
    assert_int_equal(s.keys[1].version, 2);
    assert_int_equal(s.keys[1].kek_id_len, 6);
    assert_memory_equal(s.keys[1].kek_id, "kek-v2", 6);
    assert_int_equal(s.keys[1].wrapped_key_len, 256);
    assert_string_equal(s.keys[1].algorithm, "RSA-OAEP-256");
    gs_secret_keys_clear(&s);
    assert_int_equal(gs_rest_secret_keys(r, "badb64", &s), GS_REST_ERR_BAD_ANSWER);
    assert_int_equal(s.n, 0);
    gs_rest_free(r);
}

static void test_membership_certificate(void **state)
{
    gs_rest *r = mk(true, 0);
    const char csr[] = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";
    char *pem = NULL;
    size_t len = 0;
    (void)state;
    assert_int_equal(gs_rest_membership_certificate(r, NULL, "ok", csr, strlen(csr), &pem, &len), GS_REST_OK);
    assert_non_null(strstr(pem, "BEGIN CERTIFICATE"));
    free(pem);
    assert_int_equal(gs_rest_membership_certificate(r, base, "ok", "junk", 4, &pem, &len),
                     GS_REST_ERR_REJECTED);
    assert_string_equal(gs_rest_last_code(r), "bad_request");
    assert_int_equal(gs_rest_membership_certificate(r, "http://x", "ok", csr, strlen(csr), &pem, &len),
                     GS_REST_ERR_ARGS);
    gs_rest_free(r);
}

static void test_http_errors(void **state)
{
    gs_rest *r = mk(true, 0);
    gs_group_info gi;
    (void)state;
    assert_int_equal(gs_rest_group_info(r, "forbidden", &gi), GS_REST_ERR_FORBIDDEN);
    assert_int_equal(gs_rest_last_status(r), 403);
    assert_string_equal(gs_rest_last_code(r), "not_a_member");
    /* the control character in the server's message is neutralised */
    assert_null(strchr(gs_rest_last_message(r), '\x07'));
    assert_non_null(strstr(gs_rest_last_message(r), "not a member"));
    assert_int_equal(gs_rest_group_info(r, "gone", &gi), GS_REST_ERR_NOT_FOUND);
    assert_int_equal(gs_rest_group_info(r, "busy", &gi), GS_REST_ERR_RATE_LIMITED);
    assert_int_equal(gs_rest_last_retry_after(r), 7);
    assert_int_equal(gs_rest_group_info(r, "down", &gi), GS_REST_ERR_UNAVAILABLE);
    assert_string_equal(gs_rest_last_code(r), "token_unavailable");
    assert_int_equal(gs_rest_group_info(r, "boom", &gi), GS_REST_ERR_SERVER);
    assert_string_equal(gs_rest_last_code(r), "");
    /* a group name that needs escaping stays one path segment */
    assert_int_equal(gs_rest_group_info(r, "a/../b c", &gi), GS_REST_OK);
    assert_string_equal(gi.name, "a%2F..%2Fb%20c");
    gs_group_info_clear(&gi);
    assert_int_equal(gs_rest_group_info(r, "", &gi), GS_REST_ERR_ARGS);
    gs_rest_free(r);
}

static void test_garbage_and_oversize(void **state)
{
    gs_rest *r = mk(true, 0);
    gs_group_info gi;
    (void)state;
    assert_int_equal(gs_rest_group_info(r, "garbage", &gi), GS_REST_ERR_BAD_ANSWER);
    assert_int_equal(gs_rest_group_info(r, "big", &gi), GS_REST_ERR_TOO_LARGE);
    /* the handle is still usable afterwards */
    assert_int_equal(gs_rest_group_info(r, "ok", &gi), GS_REST_OK);
    gs_group_info_clear(&gi);
    gs_rest_free(r);
}

static void test_timeout(void **state)
{
    gs_rest *r = mk(true, 500);
    gs_group_info gi;
    (void)state;
    assert_int_equal(gs_rest_group_info(r, "slow", &gi), GS_REST_ERR_TIMEOUT);
    gs_rest_free(r);
}

static void test_unreachable(void **state)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t sl = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    char url[64];
    gs_rest_opts o = {0};
    gs_rest *r = NULL;
    gs_group_info gi;
    (void)state;
    /* a port that was free a moment ago and has no listener */
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    close(fd);
    snprintf(url, sizeof(url), "https://127.0.0.1:%u", ntohs(sa.sin_port));
    o.base_url = url;
    assert_int_equal(gs_rest_new(&o, &r), GS_REST_OK);
    assert_int_equal(gs_rest_group_info(r, "ok", &gi), GS_REST_ERR_UNREACHABLE);
    assert_string_not_equal(gs_rest_last_detail(r), "");
    gs_rest_free(r);
}

/* group_info against our server with CA file NAME as the only trust. */
static gs_rest_err info_with_ca(const char *name)
{
    char ca[600];
    gs_rest_opts o = {0};
    gs_rest *r = NULL;
    gs_group_info gi;
    gs_rest_err err;
    path(ca, sizeof(ca), name);
    o.base_url = base;
    o.ca_file = ca;
    assert_int_equal(gs_rest_new(&o, &r), GS_REST_OK);
    err = gs_rest_group_info(r, "ok", &gi);
    gs_rest_free(r);
    return err;
}

static void test_tls_untrusted(void **state)
{
    (void)state;
    assert_int_equal(info_with_ca("other-ca.pem"), GS_REST_ERR_TLS);
}

/* A CA file that cannot be read is our own error, not the server's TLS
 * (groupmail exits 1 for it, 4 for a server that fails verification). */
static void test_ca_file_missing(void **state)
{
    (void)state;
    assert_int_equal(info_with_ca("no-such-ca.pem"), GS_REST_ERR_CA_FILE);
}

static void test_pin(void **state)
{
    char ca[600], pub[600];
    gs_rest_opts o = {0};
    gs_rest *r = NULL;
    gs_group_info gi;
    (void)state;
    path(ca, sizeof(ca), "ca.pem");
    path(pub, sizeof(pub), "server-pub.pem");
    o.base_url = base;
    o.ca_file = ca;
    o.pinned_pubkey = pub;
    assert_int_equal(gs_rest_new(&o, &r), GS_REST_OK);
    assert_int_equal(gs_rest_group_info(r, "ok", &gi), GS_REST_OK);
    gs_group_info_clear(&gi);
    gs_rest_free(r);
    o.pinned_pubkey = "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert_int_equal(gs_rest_new(&o, &r), GS_REST_OK);
    assert_int_equal(gs_rest_group_info(r, "ok", &gi), GS_REST_ERR_PIN);
    gs_rest_free(r);
    /* Several hashes, the server's among them: libcurl's ;-separated list. */
    char two[200];
    snprintf(two, sizeof(two), "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=;%s", "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    o.pinned_pubkey = two;
    assert_int_equal(gs_rest_new(&o, &r), GS_REST_OK);
    gs_rest_free(r);
    /* A PEM file libcurl reads: its BEGIN PUBLIC KEY line anywhere at the
     * start of a line (after `openssl x509 -text -pubkey`'s text, a
     * comment, a blank line). They were refused as not a public key. */
    unsigned char *pem = NULL;
    size_t pem_len = 0;
    assert_int_equal(util_read_file(pub, 1 << 20, &pem, &pem_len), UTIL_OK);
    const char *lead[] = {"Certificate:\n    Data:\n        Version: 3 (0x2)\n", "# groups.example.org\n",
                          "\n", "\r\n"};
    for (size_t i = 0; i < sizeof(lead) / sizeof(lead[0]); i++) {
        char lp[600];
        path(lp, sizeof(lp), "pin-lead.pem");
        FILE *f = fopen(lp, "wb");
        assert_non_null(f);
        assert_int_equal(fputs(lead[i], f) >= 0, 1);
        assert_int_equal(fwrite(pem, 1, pem_len, f), pem_len);
        assert_int_equal(fclose(f), 0);
        o.pinned_pubkey = lp;
        r = NULL;
        assert_int_equal(gs_rest_new(&o, &r), GS_REST_OK);
        assert_int_equal(gs_rest_group_info(r, "ok", &gi), GS_REST_OK);
        gs_group_info_clear(&gi);
        gs_rest_free(r);
    }
    free(pem);
    /* A pin libcurl cannot read was "does not match the pin", a server's
     * fault by its words and exit 4 in groupmail: it is the caller's own. */
    const char *bad[] = {"sha256//garbage", "sha256//", "sha256//AAAA", "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                         "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=;", "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=;x",
                         "/nonexistent/pin.pem", ca /* a certificate, not a public key */, "/dev/null", "/"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        o.pinned_pubkey = bad[i];
        r = NULL;
        assert_int_equal(gs_rest_new(&o, &r), GS_REST_ERR_PIN_FORMAT);
        assert_null(r);
    }
}

/* ---- restparse.c: answers parsed from bytes, no server needed ---------- */

#define B(s) (const unsigned char *)(s), strlen(s)

static void test_parse_status_and_type(void **state)
{
    (void)state;
    assert_int_equal(gs_rest_parse_status(200), GS_REST_OK);
    assert_int_equal(gs_rest_parse_status(204), GS_REST_OK);
    assert_int_equal(gs_rest_parse_status(302), GS_REST_ERR_BAD_ANSWER); /* never followed */
    assert_int_equal(gs_rest_parse_status(101), GS_REST_ERR_BAD_ANSWER);
    assert_int_equal(gs_rest_parse_status(400), GS_REST_ERR_REJECTED);
    assert_int_equal(gs_rest_parse_status(401), GS_REST_ERR_UNAUTHORIZED);
    assert_int_equal(gs_rest_parse_status(403), GS_REST_ERR_FORBIDDEN);
    assert_int_equal(gs_rest_parse_status(404), GS_REST_ERR_NOT_FOUND);
    assert_int_equal(gs_rest_parse_status(408), GS_REST_ERR_TIMEOUT); /* ask again, not refused */
    assert_int_equal(gs_rest_parse_status(409), GS_REST_ERR_REJECTED);
    assert_int_equal(gs_rest_parse_status(429), GS_REST_ERR_RATE_LIMITED);
    assert_int_equal(gs_rest_parse_status(503), GS_REST_ERR_UNAVAILABLE);
    assert_int_equal(gs_rest_parse_status(504), GS_REST_ERR_SERVER);
    assert_int_equal(gs_rest_parse_status(600), GS_REST_ERR_BAD_ANSWER);
    assert_true(gs_rest_parse_is_json("application/json"));
    assert_true(gs_rest_parse_is_json("Application/JSON; charset=utf-8"));
    assert_true(gs_rest_parse_is_json(" application/json "));
    assert_false(gs_rest_parse_is_json("application/jsonp"));
    assert_false(gs_rest_parse_is_json("text/html"));
    assert_false(gs_rest_parse_is_json(""));
    assert_false(gs_rest_parse_is_json(NULL));
}

static void test_parse_hostile_answers(void **state)
{
    char code[16], msg[32], why[128];
    gs_unwrap_result u;
    gs_ri_list l;
    gs_group_info gi;
    char *pem = (char *)1;
    size_t plen = 1;

    (void)state;
    /* a refusal's code and message: cut, control characters replaced */
    gs_rest_parse_error(B("{\"error\":{\"code\":\"evil\\u001b[31m\",\"message\":\"line\\r\\nbreak "
                          "and a very long tail\"}}"),
                        code, sizeof(code), msg, sizeof(msg));
    assert_string_equal(code, "evil?[31m");
    assert_string_equal(msg, "line??break and a very long tai");
    gs_rest_parse_error(B("<html>502</html>"), code, sizeof(code), msg, sizeof(msg));
    assert_string_equal(code, "");
    assert_string_equal(msg, "");
    /* each malformed answer says what was wrong, and leaves nothing */
    assert_int_equal(
        gs_rest_parse_unwrap(B("{\"key\":\"AAAAAAAAAAAAAAAAAAAA\"}"), GS_DELIVER_TLS, &u, why, sizeof(why)),
        GS_REST_ERR_BAD_ANSWER);
    assert_string_equal(why, "'key' is 15 bytes, not 16, 24 or 32");
    assert_null(u.key);
    assert_int_equal(gs_rest_parse_unwrap(B("{\"key\":[1]}"), GS_DELIVER_TLS, &u, why, sizeof(why)),
                     GS_REST_ERR_BAD_ANSWER);
    assert_string_equal(why, "'key' is not a string");
    assert_int_equal(gs_rest_parse_unwrap(B("{}"), GS_DELIVER_RECIPIENT_KEY, &u, why, sizeof(why)),
                     GS_REST_ERR_BAD_ANSWER);
    assert_string_equal(why, "'recipient_info' missing");
    assert_int_equal(
        gs_rest_parse_unwrap(B("{\"key\":\"a\",\"key\":\"b\"}"), GS_DELIVER_TLS, &u, why, sizeof(why)),
        GS_REST_ERR_BAD_ANSWER); /* duplicate names refused */
    assert_non_null(strstr(why, "not JSON"));
    assert_int_equal(gs_rest_parse_unwrap((const unsigned char *)"", 0, GS_DELIVER_TLS, &u, why, sizeof(why)),
                     GS_REST_ERR_BAD_ANSWER);
    assert_string_equal(why, "empty answer");
    assert_int_equal(gs_rest_parse_rewrap(B("{\"recipient_infos\":[\"AAAA\",\"@@\"]}"), GS_REWRAP_MEMBERS, &l,
                                          why, sizeof(why)),
                     GS_REST_ERR_BAD_ANSWER);
    assert_string_equal(why, "'recipient_infos' item 1 is not base64 of 1 to 65536 bytes");
    assert_int_equal(l.n, 0);
    assert_int_equal(
        gs_rest_parse_rewrap(B("{\"recipient_infos\":[]}"), GS_REWRAP_GROUP_SECRET, &l, why, sizeof(why)),
        GS_REST_ERR_BAD_ANSWER);
    assert_int_equal(gs_rest_parse_rewrap(B("{\"recipient_infos\":[]}"), GS_REWRAP_MEMBERS, &l, NULL, 0),
                     GS_REST_OK);
    assert_int_equal(l.n, 0);
    /* group info: what groupmail prints is printable text, or the answer is malformed */
    assert_int_equal(
        gs_rest_parse_group_info(B("{\"name\":\"eng\",\"address\":\"eng@example.org\",\"methods\":[\"tls\"],"
                                   "\"certificate_server\":\"\"}"),
                                 &gi, why, sizeof(why)),
        GS_REST_OK);
    assert_string_equal(gi.address, "eng@example.org");
    gs_group_info_clear(&gi);
    assert_int_equal(
        gs_rest_parse_group_info(B("{\"name\":\"eng\",\"address\":\"\\u001b]0;owned\\u0007x@y\"}"), &gi, why,
                                 sizeof(why)),
        GS_REST_ERR_BAD_ANSWER);
    assert_null(gi.name);
    assert_int_equal(gs_rest_parse_group_info(B("{\"name\":\"eng\",\"certificate_server\":\"https://x\\n\"}"),
                                              &gi, why, sizeof(why)),
                     GS_REST_ERR_BAD_ANSWER);
    assert_int_equal(gs_rest_parse_group_info(B("{\"name\":\"eng\",\"methods\":[\"tls\\u0000x\"]}"), &gi, why,
                                              sizeof(why)),
                     GS_REST_ERR_BAD_ANSWER);
    assert_null(gi.methods);
    /* PEM: text holding a certificate block, nothing else */
    assert_int_equal(gs_rest_parse_pem((const unsigned char *)"-----BEGIN CERTIFICATE-----\0x", 29, &pem,
                                       &plen, why, sizeof(why)),
                     GS_REST_ERR_BAD_ANSWER);
    assert_null(pem);
    assert_int_equal(plen, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_rejects_http),
        cmocka_unit_test(test_group_info),
        cmocka_unit_test(test_mtls_identity),
        cmocka_unit_test(test_mtls_from_memory),
        cmocka_unit_test(test_client_cert_missing_file),
        cmocka_unit_test(test_keepalive),
        cmocka_unit_test(test_certificate),
        cmocka_unit_test(test_unwrap),
        cmocka_unit_test(test_unwrap_batch),
        cmocka_unit_test(test_rewrap),
        cmocka_unit_test(test_rewrap_big_list),
        cmocka_unit_test(test_secret_keys),
        cmocka_unit_test(test_membership_certificate),
        cmocka_unit_test(test_http_errors),
        cmocka_unit_test(test_garbage_and_oversize),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_unreachable),
        cmocka_unit_test(test_tls_untrusted),
        cmocka_unit_test(test_ca_file_missing),
        cmocka_unit_test(test_pin),
        cmocka_unit_test(test_parse_status_and_type),
        cmocka_unit_test(test_parse_hostile_answers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
