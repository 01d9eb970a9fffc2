/*
 * tls.c: server SSL_CTX, reload, and per-request client verification.
 */
#include "tls.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "certname.h"
#include "tlschain.h"
#include "log.h"
#include "names.h"
#include "util.h"

struct tls_state {
    atomic_int refs;
    unsigned long generation; /* unique per state: a reload makes a new one */
    SSL_CTX *ctx;
    X509_STORE *clients;     /* client CAs (+ CRLs) for identity certificates */
    X509_STORE *membership;  /* the local CA only, for membership certificates */
};

static const char tls12_ciphers[] =
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256";

/* The longest Certificate message a client may send (tls_state_new). */
#define CLIENT_CHAIN_MAX 32768

static pthread_mutex_t cur_mu = PTHREAD_MUTEX_INITIALIZER;
static tls_state *cur_state;

static pthread_once_t idx_once = PTHREAD_ONCE_INIT;
static int conn_idx = -1, verified_idx = -1;
static void (*conn_free_cb)(void *arg);
static atomic_ulong next_generation = 1;

/* The last successful verification of a connection's client certificate.
 * Verifying the chain cost about 4% of an unwrap's CPU, on every request
 * of a kept-alive connection, to learn the same answer again. It is reused
 * only for the same certificate object, under the same tls_state (a SIGHUP
 * reload of the CAs or CRLs makes a new one, so a new revocation applies
 * at the next request), and only until the earliest notAfter in the chain,
 * and at most VERIFIED_TTL seconds (bounding how long an expired CRL goes
 * unnoticed). An untrusted chain's refusal is remembered the same way
 * (tls_peer_check). Membership is never cached: that is the store's job. */
#define VERIFIED_TTL 60
struct verified {
    unsigned long generation;
    X509 *cert;       /* a reference, so the pointer cannot be reused */
    time_t not_after; /* the chain's earliest notAfter (wall clock) */
    time_t ttl_end;   /* VERIFIED_TTL from the verification (monotonic: a
                         clock set back must not stretch it) */
    peer_info info;
};

static time_t monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

static void verified_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    struct verified *v = ptr;
    (void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
    if (v != NULL) {
        X509_free(v->cert);
        free(v);
    }
}

static void conn_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
    /* Called for every SSL freed; only ours carry a non-NULL marker. */
    if (ptr != NULL && conn_free_cb != NULL)
        conn_free_cb(ptr);
}

static void make_idx(void)
{
    conn_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, conn_ex_free);
    verified_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, verified_ex_free);
}

int tls_conn_index(void)
{
    pthread_once(&idx_once, make_idx);
    return conn_idx;
}

void tls_set_conn_free_cb(void (*cb)(void *arg))
{
    conn_free_cb = cb;
}

static void ssl_err_text(char *buf, size_t len, const char *what)
{
    unsigned long e = ERR_get_error();
    char tmp[256] = "";

    if (e != 0)
        ERR_error_string_n(e, tmp, sizeof(tmp));
    snprintf(buf, len, "%s%s%s", what, *tmp ? ": " : "", tmp);
    ERR_clear_error();
}

/* The handshake takes any certificate and checks nothing of its chain:
 * each request is authorised on its own (tls_peer_check, against the
 * server's CA stores), so a refusal is a JSON answer, not an alert. This
 * replaces OpenSSL's whole chain check rather than accepting each of its
 * errors: that check, against an empty store with every error taken, went
 * on to verify every signature of whatever chain the client sent, anchored
 * or not (up to the 100 KB a Certificate message may hold: 43 certificates
 * under one 8192-bit RSA key cost the server 18 ms of CPU per handshake,
 * the client nothing but replaying them). tls_peer_check verifies
 * signatures only of a chain that reaches a trusted CA. */
static int handshake_chain_unchecked(X509_STORE_CTX *x, void *arg)
{
    (void)x; (void)arg;
    return 1;
}

/* The certificates a client sent above its own (the intermediates it
 * names), kept in its session ticket: a session resumed from a ticket
 * comes back with the peer certificate alone (OpenSSL's ticket holds no
 * chain), so a member whose intermediate CA is not in the client CA file
 * but sent by the client was trusted on its first connection and 401
 * untrusted_certificate on every resumed one (curl, browsers and libcurl
 * programs resume by default). Whole certificates, in the order sent, up
 * to TICKET_CHAIN_MAX bytes: a real client's intermediates are one to
 * three certificates of 1-2 KB, and each ticket (two at a TLS 1.3
 * handshake) goes back and forth with the client. They are only candidates
 * for building the chain, as the ones sent are: the client CA file alone
 * decides trust. */
#define TICKET_CHAIN_MAX 8192
static int ticket_keep_chain(SSL *ssl, void *arg)
{
    STACK_OF(X509) *sent = SSL_get_peer_cert_chain(ssl); /* server side: without the leaf */
    SSL_SESSION *sess = SSL_get_session(ssl);
    unsigned char *buf = NULL, *p;
    size_t total = 0;
    int n = 0;

    (void)arg;
    /* A resumed session renewing its ticket has no chain of its own: the
     * copy it came with stays. */
    if (sent == NULL || sess == NULL)
        return 1;
    for (; n < sk_X509_num(sent); n++) {
        int len = i2d_X509(sk_X509_value(sent, n), NULL);
        if (len <= 0 || (size_t)len > TICKET_CHAIN_MAX - total)
            break;
        total += (size_t)len;
    }
    if (total == 0 || (buf = OPENSSL_malloc(total)) == NULL)
        return 1; /* nothing kept: a resumption verifies the leaf alone */
    p = buf;
    for (int i = 0; i < n; i++)
        (void)i2d_X509(sk_X509_value(sent, i), &p);
    /* On failure the ticket carries no chain, as before: not worth
     * failing the handshake for. */
    (void)SSL_SESSION_set1_ticket_appdata(sess, buf, total);
    OPENSSL_free(buf);
    ERR_clear_error();
    return 1;
}

/* The chain kept by ticket_keep_chain in a resumed session's ticket, or
 * NULL. */
static STACK_OF(X509) *ticket_chain(SSL *ssl)
{
    SSL_SESSION *sess = SSL_get0_session(ssl);
    void *data = NULL;
    size_t len = 0;
    STACK_OF(X509) *chain = NULL;

    if (sess == NULL || !SSL_SESSION_get0_ticket_appdata(sess, &data, &len) || data == NULL || len == 0 ||
        len > TICKET_CHAIN_MAX || (chain = sk_X509_new_null()) == NULL)
        return NULL;
    const unsigned char *p = data, *end = p + len;
    while (p < end) {
        X509 *x = d2i_X509(NULL, &p, (long)(end - p));
        if (x == NULL || !sk_X509_push(chain, x)) {
            X509_free(x);
            break; /* what was read is still of use */
        }
    }
    ERR_clear_error();
    return chain;
}

/* 1 on success; 0 with the OpenSSL error queued, or -1 for a key
 * encrypted with a pass phrase (none is asked: OpenSSL's default asks
 * on the terminal, which the sandbox forbids). */
static int use_key_pem(SSL_CTX *ctx, const char *pem, size_t len)
{
    BIO *bio = len <= INT_MAX ? BIO_new_mem_buf(pem, (int)len) : NULL;
    EVP_PKEY *pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, util_pem_no_passphrase, NULL) : NULL;
    int ok = pk != NULL && SSL_CTX_use_PrivateKey(ctx, pk) == 1;
    unsigned long e = ERR_peek_last_error();

    if (pk == NULL && ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_BAD_PASSWORD_READ)
        ok = -1;
    EVP_PKEY_free(pk);
    BIO_free(bio);
    return ok;
}

int tls_state_new(const tls_opts *opts, tls_state **out, char *errbuf, size_t errlen)
{
    struct tls_state *st = NULL;
    STACK_OF(X509_NAME) *names = NULL;
    int rc = -1, ncerts = 0, krc = 1, failed = 0;

    *out = NULL;
    errbuf[0] = '\0';
    if ((st = calloc(1, sizeof(*st))) == NULL) {
        snprintf(errbuf, errlen, "out of memory");
        goto out;
    }
    atomic_init(&st->refs, 1);
    st->generation = atomic_fetch_add(&next_generation, 1);
    if ((st->ctx = SSL_CTX_new(TLS_server_method())) == NULL || (st->clients = X509_STORE_new()) == NULL ||
        (st->membership = X509_STORE_new()) == NULL || (names = sk_X509_NAME_new_null()) == NULL) {
        ssl_err_text(errbuf, errlen, "TLS context");
        goto out;
    }
    SSL_CTX_set_min_proto_version(st->ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(st->ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (!SSL_CTX_set_cipher_list(st->ctx, tls12_ciphers)) {
        ssl_err_text(errbuf, errlen, "cipher list");
        goto out;
    }
    if (opts->cert_pem == NULL || gs_tls_use_chain_pem(st->ctx, opts->cert_pem, opts->cert_len, &failed) != 1) {
        char what[64] = "server certificate";
        if (failed > 1) /* which one, for a long chain file */
            (void)snprintf(what, sizeof(what), "server certificate (certificate %d of the file)", failed);
        ssl_err_text(errbuf, errlen, what);
        goto out;
    }
    if (opts->token_key != NULL) {
        /* The key stays on the token; each handshake signs there. */
        if (SSL_CTX_use_PrivateKey(st->ctx, opts->token_key) != 1 || SSL_CTX_check_private_key(st->ctx) != 1) {
            ssl_err_text(errbuf, errlen, "the key on the token does not match the [tls] cert");
            goto out;
        }
    } else if (opts->key_pem == NULL) {
        snprintf(errbuf, errlen, "[tls] key is required");
        goto out;
    } else if ((krc = use_key_pem(st->ctx, opts->key_pem, opts->key_len)) != 1 ||
               SSL_CTX_check_private_key(st->ctx) != 1) {
        if (krc < 0) {
            ERR_clear_error();
            snprintf(errbuf, errlen, "server key: encrypted with a pass phrase, which serve cannot give: "
                                     "store the [tls] key unencrypted (mode 0600) or on the token");
        } else {
            ssl_err_text(errbuf, errlen, "server key");
        }
        goto out;
    }
    /* Resumption needs a context id when client certificates are asked for. */
    SSL_CTX_set_session_id_context(st->ctx, (const unsigned char *)"groupsrv", 8);
    SSL_CTX_set_session_cache_mode(st->ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_set_verify(st->ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_cert_verify_callback(st->ctx, handshake_chain_unchecked, NULL);
    /* A client's Certificate message is held to CLIENT_CHAIN_MAX bytes
     * (OpenSSL's default is 100 KB): the handshake parses every certificate
     * in it before anything can refuse it, about 0.1 ms of CPU each for
     * small EC certificates, so 100 KB of them (some 250) cost the server
     * 25-45 ms per handshake and the client only replaying them. Real
     * client chains are a leaf and one to three intermediates, a few KB;
     * Java's TLS stack refuses more than 10 certificates in a chain and
     * any handshake message over 32 KB by default. A longer chain fails
     * the handshake (alert: excessive message size). */
    SSL_CTX_set_max_cert_list(st->ctx, CLIENT_CHAIN_MAX);
    if (!SSL_CTX_set_session_ticket_cb(st->ctx, ticket_keep_chain, NULL, NULL)) {
        ssl_err_text(errbuf, errlen, "session tickets");
        goto out;
    }

    if (opts->client_ca_pem != NULL) {
        int ncrl = gs_tls_client_store(opts->client_ca_pem, opts->client_ca_len, st->clients, names, &ncerts);
        if (ncrl < 0 || ncerts == 0) {
            ssl_err_text(errbuf, errlen, "client CA file unreadable or without certificates");
            goto out;
        }
    }
    if (opts->local_ca != NULL) {
        /* Without [tls] client_ca the local CA also vouches for identities. */
        if (!X509_STORE_add_cert(st->membership, opts->local_ca) ||
            (opts->client_ca_pem == NULL && !X509_STORE_add_cert(st->clients, opts->local_ca))) {
            ssl_err_text(errbuf, errlen, "local CA");
            goto out;
        }
        X509_NAME *n = X509_NAME_dup(X509_get_subject_name(opts->local_ca));
        if (n == NULL || !sk_X509_NAME_push(names, n)) {
            X509_NAME_free(n);
            snprintf(errbuf, errlen, "out of memory");
            goto out;
        }
    }
    SSL_CTX_set_client_CA_list(st->ctx, names);
    names = NULL;
    *out = st;
    st = NULL;
    rc = 0;
out:
    sk_X509_NAME_pop_free(names, X509_NAME_free);
    tls_state_unref(st);
    return rc;
}

void tls_state_ref(tls_state *st)
{
    if (st != NULL)
        atomic_fetch_add(&st->refs, 1);
}

void tls_state_unref(tls_state *st)
{
    if (st == NULL || atomic_fetch_sub(&st->refs, 1) != 1)
        return;
    SSL_CTX_free(st->ctx);
    X509_STORE_free(st->clients);
    X509_STORE_free(st->membership);
    free(st);
}

SSL_CTX *tls_state_ctx(tls_state *st) { return st->ctx; }

tls_state *tls_current_get(void)
{
    pthread_mutex_lock(&cur_mu);
    tls_state *st = cur_state;
    tls_state_ref(st);
    pthread_mutex_unlock(&cur_mu);
    return st;
}

void tls_current_set(tls_state *st)
{
    tls_state_ref(st);
    pthread_mutex_lock(&cur_mu);
    tls_state *old = cur_state;
    cur_state = st;
    pthread_mutex_unlock(&cur_mu);
    tls_state_unref(old);
}

/* The group of a membership certificate (SAN URI urn:groupsrv:group:G),
 * copied into buf; 0 if the certificate has none. */
static int membership_group(X509 *cert, char *buf, size_t len)
{
    GENERAL_NAMES *gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    int found = 0;
    size_t plen = strlen(GS_MEMBERSHIP_URI_PREFIX);

    for (int i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens) && !found; i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type != GEN_URI)
            continue;
        const unsigned char *p = ASN1_STRING_get0_data(g->d.uniformResourceIdentifier);
        int n = ASN1_STRING_length(g->d.uniformResourceIdentifier);
        if (n > (int)plen && (size_t)n - plen < len && memcmp(p, GS_MEMBERSHIP_URI_PREFIX, plen) == 0 &&
            memchr(p, '\0', (size_t)n) == NULL) {
            memcpy(buf, p + plen, (size_t)n - plen);
            buf[(size_t)n - plen] = '\0';
            found = 1;
        }
    }
    GENERAL_NAMES_free(gens);
    return found;
}

/* The earliest notAfter of a verified chain, as a time_t (0 if unreadable). */
static time_t chain_not_after(STACK_OF(X509) *chain, time_t now)
{
    time_t min = 0;

    for (int i = 0; chain != NULL && i < sk_X509_num(chain); i++) {
        int days = 0, secs = 0;
        if (!ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(sk_X509_value(chain, i))))
            return 0;
        if (days < 0 || secs < 0)
            return 0; /* expired meanwhile: do not remember */
        time_t t = now + (time_t)days * 86400 + secs;
        if (min == 0 || t < min)
            min = t;
    }
    return min;
}

/* Remembers the outcome of a verification for the connection, until
 * not_after (wall clock) and VERIFIED_TTL at most. */
static void remember_verified(tls_state *st, SSL *ssl, const peer_info *info, time_t not_after)
{
    struct verified *v = SSL_get_ex_data(ssl, verified_idx);

    if (not_after == 0)
        return;
    if (v == NULL) {
        if ((v = calloc(1, sizeof(*v))) == NULL)
            return;
        if (!SSL_set_ex_data(ssl, verified_idx, v)) {
            free(v);
            return;
        }
    }
    X509_free(v->cert);
    X509_up_ref(info->cert);
    v->cert = info->cert;
    v->generation = st->generation;
    v->not_after = not_after;
    v->ttl_end = monotonic_now() + VERIFIED_TTL;
    v->info = *info;
}

void tls_peer_check(tls_state *st, SSL *ssl, peer_info *out)
{
    X509_STORE_CTX *xc = NULL;
    STACK_OF(X509) *kept = NULL;
    char group[sizeof(out->group)];

    memset(out, 0, sizeof(*out));
    out->status = PEER_NONE;
    if (ssl == NULL || (out->cert = SSL_get0_peer_certificate(ssl)) == NULL)
        return;
    pthread_once(&idx_once, make_idx);
    const struct verified *v = SSL_get_ex_data(ssl, verified_idx);
    if (v != NULL && v->cert == out->cert && v->generation == st->generation && monotonic_now() < v->ttl_end &&
        time(NULL) < v->not_after) {
        *out = v->info;
        return;
    }
    out->status = PEER_UNTRUSTED;
    int is_membership = membership_group(out->cert, group, sizeof(group));
    /* Membership certificates are trusted only from the local CA, so a
     * client CA cannot mint "members" of a group. */
    X509_STORE *store = is_membership ? st->membership : st->clients;
    if ((xc = X509_STORE_CTX_new()) == NULL)
        goto out;
    STACK_OF(X509) *sent = SSL_get_peer_cert_chain(ssl);
    if (sent == NULL && SSL_session_reused(ssl))
        sent = kept = ticket_chain(ssl);
    if (!X509_STORE_CTX_init(xc, store, out->cert, sent))
        goto out;
    X509_STORE_CTX_set_purpose(xc, X509_PURPOSE_SSL_CLIENT);
    int vrc = X509_verify_cert(xc);
    if (vrc != 1) {
        int e = X509_STORE_CTX_get_error(xc);
        if (e == X509_V_ERR_CERT_HAS_EXPIRED || e == X509_V_ERR_CERT_NOT_YET_VALID)
            out->status = PEER_EXPIRED;
        else if (vrc == 0 && e != X509_V_ERR_CRL_NOT_YET_VALID && e != X509_V_ERR_OUT_OF_MEM &&
                 e != X509_V_ERR_UNSPECIFIED)
            /* Untrusted stays untrusted under this configuration (a reload
             * makes a new one), and is remembered as a success is: a chain
             * from an unknown CA was built again for every request of a
             * kept-alive connection (0.6 ms for 200 certificates, against
             * a few µs for a member remembered), an unauthenticated
             * client's cheap way to spend the server's CPU. Answers that
             * time may change are not remembered, nor a verification
             * that failed rather than refused (-1, out of memory): that
             * held a member refused for 60 s. */
            remember_verified(st, ssl, out, time(NULL) + VERIFIED_TTL);
        goto out;
    }
    if (is_membership) {
        if (!gs_valid_group_name(group))
            goto out;
        util_strlcpy(out->group, group, sizeof(out->group));
        out->status = PEER_MEMBERSHIP;
    } else {
        out->status = gs_cert_identity(out->cert, out->identity, sizeof(out->identity)) ? PEER_MEMBER_CERT
                                                                                       : PEER_NO_IDENTITY;
    }
    remember_verified(st, ssl, out, chain_not_after(X509_STORE_CTX_get0_chain(xc), time(NULL)));
out:
    X509_STORE_CTX_free(xc);
    sk_X509_pop_free(kept, X509_free);
    ERR_clear_error();
}
