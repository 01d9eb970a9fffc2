/*
 * test_tls.c: the network process's TLS context (groupsrv/server/tls.c)
 * against a client in memory (a BIO pair, no socket): what a client's
 * certificate chain costs the server at the handshake, and what each
 * request's own check (tls_peer_check) then finds of it.
 *   - the handshake verifies no signature of the chain a client sends:
 *     an unanchored chain (a client's own CA, up to the 100 KB a
 *     Certificate message holds) had every signature checked there, all
 *     its errors then accepted, at the server's CPU and the client's none;
 *   - the request's check still tells a member's certificate (identity
 *     from the SAN), an unknown CA's chain (untrusted) and a member's
 *     expired certificate apart;
 *   - an untrusted chain is verified once per connection and
 *     configuration, as a trusted one is: it was built again for every
 *     request of a kept-alive connection; an expired certificate, which
 *     time may change, is verified at every request.
 * The signatures OpenSSL checks of a chain at the handshake are counted
 * through the context's store's verify step (X509_STORE_set_verify), which
 * is where OpenSSL checks them after building the chain; the request's
 * verifications through X509_verify_cert, wrapped (-Wl,--wrap).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls.h"
#include "util.h"

static int chain_checks; /* calls of the store's signature step */
static int verifications; /* calls of X509_verify_cert from our code */

int __real_X509_verify_cert(X509_STORE_CTX *xc);
int __wrap_X509_verify_cert(X509_STORE_CTX *xc);
static int fail_next; /* the next verification fails as OpenSSL's do for want of memory */

int __wrap_X509_verify_cert(X509_STORE_CTX *xc)
{
    verifications++;
    if (fail_next) {
        fail_next = 0;
        X509_STORE_CTX_set_error(xc, X509_V_ERR_OUT_OF_MEM);
        return -1;
    }
    return __real_X509_verify_cert(xc);
}

static int count_chain_check(X509_STORE_CTX *xc)
{
    (void)xc;
    chain_checks++;
    return 1;
}

static EVP_PKEY *ec_key(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    assert_non_null(k);
    return k;
}

static const char *pad_comment; /* when set, mkcert adds it as an nsComment */
static const char *san_uri;     /* when set, mkcert's leaf names this URI, not email */

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    assert_non_null(e);
    assert_int_equal(X509_add_ext(x, e, -1), 1);
    X509_EXTENSION_free(e);
}

/* A certificate for key named cn, signed by issuer_key as issuer (itself
 * when issuer is NULL); valid from `from` to `to` seconds from now. */
static X509 *mkcert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key, int ca, const char *email,
                    long from, long to)
{
    X509 *x = X509_new();
    X509_NAME *n = X509_NAME_new();
    static long serial = 1;

    assert_non_null(x);
    assert_non_null(n);
    assert_int_equal(X509_set_version(x, 2), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), serial++), 1);
    assert_int_equal(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0), 1);
    assert_int_equal(X509_set_subject_name(x, n), 1);
    assert_int_equal(X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), from));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), to));
    assert_int_equal(X509_set_pubkey(x, key), 1);
    add_ext(x, issuer ? issuer : x, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    add_ext(x, issuer ? issuer : x, NID_subject_key_identifier, "hash");
    if (ca) {
        add_ext(x, issuer ? issuer : x, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else if (email != NULL || san_uri != NULL) {
        char san[128];
        if (san_uri != NULL)
            snprintf(san, sizeof(san), "URI:%s", san_uri);
        else
            snprintf(san, sizeof(san), "email:%s", email);
        add_ext(x, issuer ? issuer : x, NID_subject_alt_name, san);
        add_ext(x, issuer ? issuer : x, NID_ext_key_usage, "clientAuth");
    } else {
        add_ext(x, issuer ? issuer : x, NID_subject_alt_name, "IP:127.0.0.1");
        add_ext(x, issuer ? issuer : x, NID_ext_key_usage, "serverAuth");
    }
    if (pad_comment != NULL)
        add_ext(x, issuer ? issuer : x, NID_netscape_comment, pad_comment);
    assert_true(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0);
    X509_NAME_free(n);
    return x;
}

static char *pem_of(X509 *x, EVP_PKEY *k, size_t *len)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data = NULL, *out;

    assert_non_null(b);
    if (x != NULL)
        assert_int_equal(PEM_write_bio_X509(b, x), 1);
    if (k != NULL)
        assert_int_equal(PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL), 1);
    long n = BIO_get_mem_data(b, &data);
    assert_true(n > 0);
    out = malloc((size_t)n);
    assert_non_null(out);
    memcpy(out, data, (size_t)n);
    *len = (size_t)n;
    BIO_free(b);
    return out;
}

struct fixture {
    EVP_PKEY *ca_key, *srv_key;
    X509 *ca, *srv;
    tls_state *st;
};

static tls_state *state_new(struct fixture *f)
{
    tls_opts o;
    char err[256];
    tls_state *st = NULL;

    memset(&o, 0, sizeof(o));
    char *cert = pem_of(f->srv, NULL, &o.cert_len), *key = pem_of(NULL, f->srv_key, &o.key_len);
    char *ca = pem_of(f->ca, NULL, &o.client_ca_len);
    o.cert_pem = cert;
    o.key_pem = key;
    o.client_ca_pem = ca;
    assert_int_equal(tls_state_new(&o, &st, err, sizeof(err)), 0);
    free(cert);
    util_secret_free(key, o.key_len);
    free(ca);
    return st;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    f->ca_key = ec_key();
    f->srv_key = ec_key();
    f->ca = mkcert("client CA", f->ca_key, NULL, NULL, 1, NULL, -3600, 86400);
    f->srv = mkcert("127.0.0.1", f->srv_key, f->ca, f->ca_key, 0, NULL, -3600, 86400);
    f->st = state_new(f);
    /* The signatures OpenSSL checks of a client's chain at the handshake,
     * counted (the handshake uses the context's store). */
    X509_STORE_set_verify(SSL_CTX_get_cert_store(tls_state_ctx(f->st)), count_chain_check);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    tls_state_unref(f->st);
    X509_free(f->ca);
    X509_free(f->srv);
    EVP_PKEY_free(f->ca_key);
    EVP_PKEY_free(f->srv_key);
    free(f);
    return 0;
}

/* A server SSL on f's context and a client presenting leaf and extra
 * (its chain), resuming resume when not NULL, joined by a BIO pair in
 * memory, no handshake done yet: the server's SSL is returned, the
 * client's and its context in *cli and *cctx. */
static SSL *connect_pair(struct fixture *f, int max_version, X509 *leaf, EVP_PKEY *leaf_key, X509 **extra, int nextra,
                         SSL_SESSION *resume, SSL_CTX **cctx_out, SSL **cli_out)
{
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    SSL *srv = SSL_new(tls_state_ctx(f->st)), *cli = NULL;
    BIO *sb = NULL, *cb = NULL;

    assert_non_null(cctx);
    assert_non_null(srv);
    assert_int_equal(SSL_CTX_set_max_proto_version(cctx, max_version), 1);
    SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);
    assert_int_equal(SSL_CTX_use_certificate(cctx, leaf), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(cctx, leaf_key), 1);
    for (int i = 0; i < nextra; i++) {
        X509_up_ref(extra[i]);
        assert_int_equal(SSL_CTX_add_extra_chain_cert(cctx, extra[i]), 1);
    }
    assert_non_null(cli = SSL_new(cctx));
    if (resume != NULL)
        assert_int_equal(SSL_set_session(cli, resume), 1);
    assert_int_equal(BIO_new_bio_pair(&sb, 0, &cb, 0), 1);
    SSL_set_bio(srv, sb, sb);
    SSL_set_bio(cli, cb, cb);
    SSL_set_accept_state(srv);
    SSL_set_connect_state(cli);
    *cctx_out = cctx;
    *cli_out = cli;
    return srv;
}

/* A handshake in memory with a client presenting leaf and extra (its
 * chain); the server's SSL is returned, the handshake done. */
static SSL *handshake_resuming(struct fixture *f, int max_version, X509 *leaf, EVP_PKEY *leaf_key, X509 **extra,
                               int nextra, SSL_SESSION *resume, SSL_SESSION **session);

static SSL *handshake(struct fixture *f, int max_version, X509 *leaf, EVP_PKEY *leaf_key, X509 **extra, int nextra)
{
    return handshake_resuming(f, max_version, leaf, leaf_key, extra, nextra, NULL, NULL);
}

/* As handshake, resuming resume (a session ticket) when not NULL, and
 * handing back the client's session in *session when session is not
 * NULL. (The server's session cache resumes nothing: the server never
 * sends close_notify, so OpenSSL drops a session from the cache when its
 * connection is freed.) */
static SSL *handshake_resuming(struct fixture *f, int max_version, X509 *leaf, EVP_PKEY *leaf_key, X509 **extra,
                               int nextra, SSL_SESSION *resume, SSL_SESSION **session)
{
    SSL_CTX *cctx = NULL;
    SSL *cli = NULL, *srv = connect_pair(f, max_version, leaf, leaf_key, extra, nextra, resume, &cctx, &cli);
    int sdone = 0, cdone = 0;

    for (int round = 0; round < 200 && !(sdone && cdone); round++) {
        int rc;
        if (!cdone) {
            rc = SSL_do_handshake(cli);
            cdone = rc == 1;
            assert_true(rc == 1 || SSL_get_error(cli, rc) == SSL_ERROR_WANT_READ ||
                        SSL_get_error(cli, rc) == SSL_ERROR_WANT_WRITE);
        } else if (!sdone) {
            char byte;
            /* TLS 1.3: the server's tickets, read to make room for more */
            assert_true(SSL_read(cli, &byte, 1) <= 0);
        }
        if (!sdone) {
            rc = SSL_do_handshake(srv);
            sdone = rc == 1;
            assert_true(rc == 1 || SSL_get_error(srv, rc) == SSL_ERROR_WANT_READ ||
                        SSL_get_error(srv, rc) == SSL_ERROR_WANT_WRITE);
        }
    }
    assert_true(sdone && cdone);
    assert_non_null(SSL_get0_peer_certificate(srv));
    if (session != NULL) {
        char byte;
        /* TLS 1.3 tickets come after the handshake: read them. */
        assert_true(SSL_read(cli, &byte, 1) <= 0);
        assert_non_null(*session = SSL_get1_session(cli));
        assert_int_equal(SSL_SESSION_is_resumable(*session), 1);
    }
    (void)SSL_shutdown(cli); /* a session ended cleanly stays resumable */
    if (resume != NULL)
        assert_int_equal(SSL_session_reused(srv), 1);
    SSL_free(cli);
    SSL_CTX_free(cctx);
    return srv;
}

static const int versions[] = {TLS1_2_VERSION, TLS1_3_VERSION};
#define NVERSIONS (sizeof(versions) / sizeof(versions[0]))

/* A request's check of srv's client under st finds status; and, when not
 * NULL, the identity (a member's certificate) or group (a membership
 * certificate) it names. */
static void expect_peer(tls_state *st, SSL *srv, peer_status status, const char *name)
{
    peer_info info;

    tls_peer_check(st, srv, &info);
    assert_int_equal(info.status, status);
    if (name != NULL)
        assert_string_equal(status == PEER_MEMBERSHIP ? info.group : info.identity, name);
}

/* As expect_peer, on a first connection of leaf's client and on
 * `resumptions` sessions resumed from its ticket; more than one, and each
 * resumes the ticket of the one before (a resumed session's own ticket). */
static void expect_peer_resumed(struct fixture *f, int version, X509 *leaf, EVP_PKEY *key, X509 **extra, int nextra,
                                int resumptions, peer_status status, const char *name)
{
    SSL_SESSION *sess = NULL;
    SSL *srv = handshake_resuming(f, version, leaf, key, extra, nextra, NULL, &sess);

    expect_peer(f->st, srv, status, name);
    SSL_free(srv);
    for (int again = 0; again < resumptions; again++) {
        SSL_SESSION *next = NULL;
        srv = handshake_resuming(f, version, leaf, key, extra, nextra, sess, resumptions > 1 ? &next : NULL);
        expect_peer(f->st, srv, status, name);
        SSL_free(srv);
        SSL_SESSION_free(sess);
        sess = next;
    }
    SSL_SESSION_free(sess);
}

/* A client's own CA chain of n: chain[0] self-signed by own_key, each
 * next one issued by the one before under the same key (OpenSSL links
 * them by name). */
static void own_chain(EVP_PKEY *own_key, X509 **chain, int n)
{
    chain[0] = mkcert("own CA 0", own_key, NULL, NULL, 1, NULL, -3600, 86400);
    for (int i = 1; i < n; i++) {
        char cn[32];
        snprintf(cn, sizeof(cn), "own CA %d", i);
        chain[i] = mkcert(cn, own_key, chain[i - 1], own_key, 1, NULL, -3600, 86400);
    }
}

/* A client's own CA and a long chain under it: the handshake checks none
 * of its signatures; the request's check finds it untrusted. */
static void test_handshake_checks_no_chain(void **state)
{
    struct fixture *f = *state;
    EVP_PKEY *own_key = ec_key(), *leaf_key = ec_key();
    enum { NCHAIN = 8 };
    X509 *chain[NCHAIN];

    own_chain(own_key, chain, NCHAIN);
    X509 *leaf = mkcert("mallory", leaf_key, chain[NCHAIN - 1], own_key, 0, "mallory@example.org", -3600, 86400);
    X509 *extra[NCHAIN];
    for (int i = 0; i < NCHAIN; i++)
        extra[i] = chain[NCHAIN - 1 - i];
    for (size_t v = 0; v < NVERSIONS; v++) {
        chain_checks = 0;
        SSL *srv = handshake(f, versions[v], leaf, leaf_key, extra, NCHAIN);
        assert_int_equal(chain_checks, 0);
        verifications = 0;
        for (int req = 0; req < 3; req++)
            expect_peer(f->st, srv, PEER_UNTRUSTED, NULL);
        assert_int_equal(chain_checks, 0); /* the request's check uses its own store */
        assert_int_equal(verifications, 1); /* once for the connection */
        /* A reload (a new configuration) verifies again. */
        tls_state *reloaded = state_new(f);
        expect_peer(reloaded, srv, PEER_UNTRUSTED, NULL);
        assert_int_equal(verifications, 2);
        tls_state_unref(reloaded);
        SSL_free(srv);
    }
    for (int i = 0; i < NCHAIN; i++)
        X509_free(chain[i]);
    X509_free(leaf);
    EVP_PKEY_free(own_key);
    EVP_PKEY_free(leaf_key);
}

/* A member's certificate from the client CA is still told at the request,
 * and so is its being expired. */
static void test_request_check_tells(void **state)
{
    struct fixture *f = *state;
    EVP_PKEY *k = ec_key();
    X509 *good = mkcert("alice", k, f->ca, f->ca_key, 0, "alice@example.org", -3600, 86400);
    X509 *old = mkcert("alice", k, f->ca, f->ca_key, 0, "alice@example.org", -7200, -3600);

    for (size_t v = 0; v < NVERSIONS; v++) {
        SSL *srv = handshake(f, versions[v], good, k, NULL, 0);
        expect_peer(f->st, srv, PEER_MEMBER_CERT, "alice@example.org");
        SSL_free(srv);
        srv = handshake(f, versions[v], old, k, NULL, 0);
        verifications = 0;
        for (int req = 0; req < 2; req++)
            expect_peer(f->st, srv, PEER_EXPIRED, NULL);
        assert_int_equal(verifications, 2); /* time may change it: never remembered */
        SSL_free(srv);
    }
    X509_free(good);
    X509_free(old);
    EVP_PKEY_free(k);
}

/* A certificate naming the client CA as its issuer but signed by another
 * key (the handshake checks no signature now): refused at the request,
 * on the first connection and on one resumed from its ticket, TLS 1.2
 * and 1.3. */
static void test_forged_signature_refused(void **state)
{
    struct fixture *f = *state;
    EVP_PKEY *k = ec_key(), *forger = ec_key();
    X509 *forged = mkcert("alice", k, f->ca, forger, 0, "alice@example.org", -3600, 86400);

    for (size_t v = 0; v < NVERSIONS; v++)
        expect_peer_resumed(f, versions[v], forged, k, NULL, 0, 1, PEER_UNTRUSTED, NULL);
    X509_free(forged);
    EVP_PKEY_free(k);
    EVP_PKEY_free(forger);
}

/* A membership certificate (SAN URI urn:groupsrv:group:G) is trusted
 * from the local CA alone, also on a session resumed from its ticket with
 * the chain kept there: one the client CA issued is refused, one the
 * local CA issued names its group. */
static void test_membership_from_local_ca_only(void **state)
{
    struct fixture *f = *state;
    EVP_PKEY *lk = ec_key(), *k = ec_key();
    X509 *local = mkcert("local CA", lk, NULL, NULL, 1, NULL, -3600, 86400);
    tls_opts o;
    char err[256];
    tls_state *st = NULL;

    memset(&o, 0, sizeof(o));
    char *cert = pem_of(f->srv, NULL, &o.cert_len), *key = pem_of(NULL, f->srv_key, &o.key_len);
    char *ca = pem_of(f->ca, NULL, &o.client_ca_len);
    o.cert_pem = cert;
    o.key_pem = key;
    o.client_ca_pem = ca;
    o.local_ca = local;
    assert_int_equal(tls_state_new(&o, &st, err, sizeof(err)), 0);
    tls_state *saved = f->st; /* handshake() uses f->st's context */
    f->st = st;
    san_uri = "urn:groupsrv:group:eng";
    X509 *by_client_ca = mkcert("anon", k, f->ca, f->ca_key, 0, NULL, -3600, 86400);
    X509 *by_local = mkcert("anon", k, local, lk, 0, NULL, -3600, 86400);
    san_uri = NULL;
    for (size_t v = 0; v < NVERSIONS; v++) {
        expect_peer_resumed(f, versions[v], by_client_ca, k, NULL, 0, 1, PEER_UNTRUSTED, NULL);
        expect_peer_resumed(f, versions[v], by_local, k, NULL, 0, 1, PEER_MEMBERSHIP, "eng");
    }
    f->st = saved;
    tls_state_unref(st);
    free(cert);
    util_secret_free(key, o.key_len);
    free(ca);
    X509_free(by_client_ca);
    X509_free(by_local);
    X509_free(local);
    EVP_PKEY_free(lk);
    EVP_PKEY_free(k);
}

/* A verification that failed for want of memory (X509_verify_cert -1) is
 * not remembered as a refusal: the member's next request verifies again
 * and is served, where the connection was refused for 60 s. */
static void test_failed_verification_not_remembered(void **state)
{
    struct fixture *f = *state;
    EVP_PKEY *k = ec_key();
    X509 *good = mkcert("alice", k, f->ca, f->ca_key, 0, "alice@example.org", -3600, 86400);

    for (size_t v = 0; v < NVERSIONS; v++) {
        SSL *srv = handshake(f, versions[v], good, k, NULL, 0);
        fail_next = 1;
        expect_peer(f->st, srv, PEER_UNTRUSTED, NULL);
        expect_peer(f->st, srv, PEER_MEMBER_CERT, "alice@example.org");
        SSL_free(srv);
    }
    X509_free(good);
    EVP_PKEY_free(k);
}

/* A member's certificate issued by an intermediate CA the client sends
 * (the client CA file holds the root only) is told on a session resumed
 * from its ticket as on the first, TLS 1.2 and 1.3: OpenSSL's ticket
 * holds no chain, so it was untrusted there (tls.c keeps the chain in the
 * ticket). */
static void test_resumed_session_with_intermediate(void **state)
{
    struct fixture *f = *state;
    EVP_PKEY *ik = ec_key(), *k = ec_key();
    X509 *inter = mkcert("member intermediate", ik, f->ca, f->ca_key, 1, NULL, -3600, 86400);
    X509 *leaf = mkcert("bob", k, inter, ik, 0, "bob@example.org", -3600, 86400);

    for (size_t v = 0; v < NVERSIONS; v++) /* twice: a resumed session's own ticket too */
        expect_peer_resumed(f, versions[v], leaf, k, &inter, 1, 2, PEER_MEMBER_CERT, "bob@example.org");
    X509_free(inter);
    X509_free(leaf);
    EVP_PKEY_free(ik);
    EVP_PKEY_free(k);
}

/* A handshake in memory that the server refuses, for a Certificate
 * message over its limit (a fatal alert, nothing parsed). */
static void handshake_too_long(struct fixture *f, int max_version, X509 *leaf, EVP_PKEY *leaf_key, X509 **extra,
                               int nextra)
{
    SSL_CTX *cctx = NULL;
    SSL *cli = NULL, *srv = connect_pair(f, max_version, leaf, leaf_key, extra, nextra, NULL, &cctx, &cli);
    int refused = 0;

    ERR_clear_error();
    for (int round = 0; round < 200 && !refused; round++) {
        (void)SSL_do_handshake(cli);
        int rc = SSL_do_handshake(srv);
        assert_int_not_equal(rc, 1);
        if (SSL_get_error(srv, rc) == SSL_ERROR_SSL) {
            assert_int_equal(ERR_GET_REASON(ERR_peek_last_error()), SSL_R_EXCESSIVE_MESSAGE_SIZE);
            refused = 1;
        }
    }
    assert_true(refused);
    ERR_clear_error();
    SSL_free(srv);
    SSL_free(cli);
    SSL_CTX_free(cctx);
}

/* A client's chain is held to 32 KB (OpenSSL's default, 100 KB of small
 * certificates, cost the server 25-45 ms of parsing per handshake): some
 * 120 small EC certificates (over 36 KB) are refused at the handshake; a chain
 * of large certificates under 32 KB (7 of 3 KB, more than any real
 * client's) is taken. */
static void test_client_chain_size(void **state)
{
    struct fixture *f = *state;
    EVP_PKEY *own_key = ec_key(), *leaf_key = ec_key();
    enum { NSMALL = 120, NBIG = 7 };
    X509 *chain[NSMALL], *extra[NSMALL];
    char comment[3001];
    long bytes = 0;

    own_chain(own_key, chain, NSMALL);
    X509 *leaf = mkcert("mallory", leaf_key, chain[NSMALL - 1], own_key, 0, "mallory@example.org", -3600, 86400);
    for (int i = 0; i < NSMALL; i++) {
        extra[i] = chain[NSMALL - 1 - i];
        bytes += i2d_X509(extra[i], NULL);
    }
    assert_true(bytes > 36 * 1024 && bytes < 100 * 1024);
    for (size_t v = 0; v < NVERSIONS; v++)
        handshake_too_long(f, versions[v], leaf, leaf_key, extra, NSMALL);
    for (int i = 0; i < NSMALL; i++)
        X509_free(chain[i]);
    X509_free(leaf);

    /* Member bob under NBIG - 1 intermediates and the client CA, each
     * certificate about 3 KB: taken, and trusted at the request. */
    memset(comment, 'x', sizeof(comment) - 1);
    comment[sizeof(comment) - 1] = '\0';
    pad_comment = comment;
    bytes = 0;
    for (int i = 0; i < NBIG - 1; i++) {
        char cn[32];
        snprintf(cn, sizeof(cn), "big intermediate %d", i);
        chain[i] = mkcert(cn, own_key, i == 0 ? f->ca : chain[i - 1], i == 0 ? f->ca_key : own_key, 1, NULL, -3600,
                          86400);
    }
    leaf = mkcert("bob", leaf_key, chain[NBIG - 2], own_key, 0, "bob@example.org", -3600, 86400);
    pad_comment = NULL;
    bytes = i2d_X509(leaf, NULL);
    for (int i = 0; i < NBIG - 1; i++) {
        extra[i] = chain[NBIG - 2 - i];
        bytes += i2d_X509(extra[i], NULL);
    }
    assert_true(bytes > 20 * 1024 && bytes < 30 * 1024);
    for (size_t v = 0; v < NVERSIONS; v++) {
        SSL *srv = handshake(f, versions[v], leaf, leaf_key, extra, NBIG - 1);
        expect_peer(f->st, srv, PEER_MEMBER_CERT, NULL);
        SSL_free(srv);
    }
    for (int i = 0; i < NBIG - 1; i++)
        X509_free(chain[i]);
    X509_free(leaf);
    EVP_PKEY_free(own_key);
    EVP_PKEY_free(leaf_key);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_handshake_checks_no_chain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_check_tells, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resumed_session_with_intermediate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_verification_not_remembered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forged_signature_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_membership_from_local_ca_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_chain_size, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
