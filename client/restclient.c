/* restclient.c: see restclient.h. libcurl for HTTPS, jansson for the
 * requests; the answers are parsed by restparse.c. */
#include "restclient.h"
#include "gs_version.h"

#include <ctype.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "log.h"
#include "restparse.h"
#include "util.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 10000L
#define DEFAULT_TIMEOUT_MS 30000L
#define DEFAULT_MAX_RESPONSE (4u * 1024 * 1024)
#define MEMBER_ANSWER_BYTES 2048u   /* one member's share of a rewrap answer, at most */
#define MEMBER_ANSWER_MAX 65536u    /* members the server re-wraps to in one call */
#define MAX_GROUP_LEN 255
#define MAX_RI_LEN (64u * 1024)       /* one RecipientInfo we send, DER */
#define MAX_CSR_LEN (64u * 1024)
#define MAX_BASE_URL 2048             /* a group or certificate server URL */
#define MAX_CHAIN 16                  /* certificates in a client cert_file */

struct gs_rest {
    CURL *curl;
    char *base;                 /* without trailing '/' */
    unsigned char *cert_pem;    /* copies for CURLOPT_SSLCERT_BLOB / SSLKEY_BLOB */
    size_t cert_pem_len;
    unsigned char *key_pem;     /* secret: wiped on free */
    size_t key_pem_len;
    /* client_pkey: installed by ssl_ctx_cb into every new connection */
    X509 *tls_cert;
    STACK_OF(X509) *tls_chain;
    EVP_PKEY *tls_pkey;
    size_t max_response;
    /* response being received */
    unsigned char *buf;
    size_t len, cap;
    bool overflow;
    /* details of the last call */
    long status;
    long retry_after;
    char code[64];
    char message[256];
    char detail[CURL_ERROR_SIZE];
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static void curl_init_once(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

const char *gs_rest_strerror(gs_rest_err err)
{
    switch (err) {
    case GS_REST_OK: return "success";
    case GS_REST_ERR_NOMEM: return "out of memory";
    case GS_REST_ERR_ARGS: return "invalid arguments";
    case GS_REST_ERR_CLIENT_CERT: return "client certificate or key unusable";
    case GS_REST_ERR_UNREACHABLE: return "server unreachable or connection lost";
    case GS_REST_ERR_TIMEOUT: return "server timed out";
    case GS_REST_ERR_TLS: return "TLS handshake or server certificate verification failed";
    case GS_REST_ERR_PIN: return "server public key does not match the pin";
    case GS_REST_ERR_UNAUTHORIZED: return "not authenticated (401)";
    case GS_REST_ERR_FORBIDDEN: return "refused: not a member or not allowed (403)";
    case GS_REST_ERR_NOT_FOUND: return "not found (404)";
    case GS_REST_ERR_RATE_LIMITED: return "rate limited (429)";
    case GS_REST_ERR_UNAVAILABLE: return "service unavailable (503)";
    case GS_REST_ERR_REJECTED: return "request rejected";
    case GS_REST_ERR_SERVER: return "server error";
    case GS_REST_ERR_BAD_ANSWER: return "malformed server answer";
    case GS_REST_ERR_TOO_LARGE: return "server answer too large";
    case GS_REST_ERR_CA_FILE: return "CA file unusable";
    case GS_REST_ERR_PIN_FORMAT:
        return "pin unusable (give sha256//BASE64 of a 32-byte hash, ;-separated, or a PEM or DER public key file)";
    }
    return "unknown error";
}

const char *gs_deliver_name(gs_deliver d)
{
    switch (d) {
    case GS_DELIVER_TLS: return "tls";
    case GS_DELIVER_RECIPIENT_KEY: return "recipient-key";
    case GS_DELIVER_GROUP_SECRET: return "group-secret";
    }
    return "tls";
}

long gs_rest_last_status(const gs_rest *r) { return r != NULL ? r->status : 0; }
const char *gs_rest_last_code(const gs_rest *r) { return r != NULL ? r->code : ""; }
const char *gs_rest_last_message(const gs_rest *r) { return r != NULL ? r->message : ""; }
const char *gs_rest_last_detail(const gs_rest *r) { return r != NULL ? r->detail : ""; }
long gs_rest_last_retry_after(const gs_rest *r) { return r != NULL ? r->retry_after : -1; }

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    gs_rest *r = userdata;
    size_t n = size * nmemb, need;

    if (util_size_add(r->len, n, &need) != 0 || need > r->max_response) {
        r->overflow = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (need + 1 > r->cap) {
        size_t ncap = r->cap ? r->cap : 4096;
        while (ncap < need + 1)
            ncap *= 2;
        if (ncap > r->max_response + 1)
            ncap = r->max_response + 1;
        unsigned char *nb = malloc(ncap);
        if (nb == NULL)
            return 0;
        if (r->buf != NULL) {
            memcpy(nb, r->buf, r->len);
            OPENSSL_clear_free(r->buf, r->cap); /* may hold a content key */
        }
        r->buf = nb;
        r->cap = ncap;
    }
    memcpy(r->buf + r->len, ptr, n);
    r->len += n;
    r->buf[r->len] = '\0';
    return n;
}

static void response_reset(gs_rest *r)
{
    if (r->buf != NULL)
        OPENSSL_clear_free(r->buf, r->cap);
    r->buf = NULL;
    r->len = r->cap = 0;
    r->overflow = false;
}

void gs_rest_free(gs_rest *r)
{
    if (r == NULL)
        return;
    if (r->curl != NULL)
        curl_easy_cleanup(r->curl);
    response_reset(r);
    free(r->base);
    free(r->cert_pem);
    if (r->key_pem != NULL)
        OPENSSL_clear_free(r->key_pem, r->key_pem_len);
    X509_free(r->tls_cert);
    sk_X509_pop_free(r->tls_chain, X509_free);
    EVP_PKEY_free(r->tls_pkey);
    free(r);
}

static unsigned char *memdup(const unsigned char *p, size_t n)
{
    unsigned char *d = malloc(n + 1);
    if (d != NULL) {
        memcpy(d, p, n);
        d[n] = '\0';
    }
    return d;
}

bool gs_rest_pkey_supported(const char **backend)
{
    const curl_version_info_data *vi = curl_version_info(CURLVERSION_NOW);
    const char *ssl = vi != NULL && vi->ssl_version != NULL ? vi->ssl_version : "none";

    if (backend != NULL)
        *backend = ssl;
    /* A multi-SSL libcurl names the inactive backends in parentheses. */
    return strncmp(ssl, "OpenSSL/", 8) == 0;
}

/* CURLOPT_SSL_CTX_FUNCTION: our certificate and EVP_PKEY in the new
 * connection's SSL_CTX, as CURLOPT_SSLCERT/SSLKEY would have put them. */
static CURLcode ssl_ctx_cb(CURL *curl, void *sslctx, void *arg)
{
    gs_rest *r = arg;
    SSL_CTX *ctx = sslctx;

    (void)curl;
    if (SSL_CTX_use_certificate(ctx, r->tls_cert) != 1 || SSL_CTX_use_PrivateKey(ctx, r->tls_pkey) != 1)
        goto fail;
    for (int i = 0; i < sk_X509_num(r->tls_chain); i++)
        if (SSL_CTX_add1_chain_cert(ctx, sk_X509_value(r->tls_chain, i)) != 1)
            goto fail;
    return CURLE_OK;
fail:
    ERR_clear_error();
    return CURLE_SSL_CERTPROBLEM;
}

/* The certificate (and any chain after it) from a PEM file, for client_pkey. */
static gs_rest_err load_pkey_identity(gs_rest *r, const char *cert_file, EVP_PKEY *pkey)
{
    gs_rest_err err = GS_REST_ERR_CLIENT_CERT;
    const char *backend = NULL;
    char q[256];
    BIO *b = NULL;
    X509 *x = NULL;

    if (!gs_rest_pkey_supported(&backend)) {
        log_error("a client key on a token needs libcurl built with OpenSSL backend=\"%s\"", log_quote(q, sizeof(q), backend));
        goto out;
    }
    if ((b = BIO_new_file(cert_file, "r")) == NULL || (r->tls_cert = PEM_read_bio_X509(b, NULL, util_pem_no_passphrase, NULL)) == NULL) {
        log_error("client certificate unreadable path=\"%s\"", log_quote(q, sizeof(q), cert_file));
        goto out;
    }
    if ((r->tls_chain = sk_X509_new_null()) == NULL) {
        err = GS_REST_ERR_NOMEM;
        goto out;
    }
    while ((x = PEM_read_bio_X509(b, NULL, util_pem_no_passphrase, NULL)) != NULL) {
        if (sk_X509_num(r->tls_chain) >= MAX_CHAIN || sk_X509_push(r->tls_chain, x) <= 0) {
            log_error("client certificate file holds too many certificates path=\"%s\"",
                      log_quote(q, sizeof(q), cert_file));
            X509_free(x);
            goto out;
        }
    }
    if (X509_check_private_key(r->tls_cert, pkey) != 1) {
        log_error("client key does not match the certificate path=\"%s\"",
                  log_quote(q, sizeof(q), cert_file));
        goto out;
    }
    if (EVP_PKEY_up_ref(pkey) != 1)
        goto out;
    r->tls_pkey = pkey;
    err = GS_REST_OK;
out:
    ERR_clear_error();
    BIO_free(b);
    return err;
}

#define SETOPT(opt, val)                                                     \
    do {                                                                     \
        if (curl_easy_setopt(r->curl, opt, val) != CURLE_OK) {               \
            log_error("curl_easy_setopt failed opt=%s", #opt);               \
            goto out;                                                        \
        }                                                                    \
    } while (0)

/* libcurl's pin syntax, checked before it is used: curl reports a pin it
 * cannot read (a file not there, a certificate in place of a public key,
 * "sha256//" followed by anything) as a server key that does not match
 * it, which sent the user looking at the server for a local mistake. */
#define PIN_FILE_MAX (1024 * 1024) /* libcurl's own bound on a pin file */
#define PIN_SHA256 "sha256//"

static int pin_hashes_ok(const char *pin)
{
    const char *p = pin;

    for (;;) {
        const char *end = strchr(p, ';');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        unsigned char *raw = NULL;
        size_t raw_len = 0;
        size_t pl = strlen(PIN_SHA256);
        int ok = n > pl && strncmp(p, PIN_SHA256, pl) == 0 &&
                 util_b64_decode(p + pl, n - pl, 64, &raw, &raw_len) == UTIL_OK && raw_len == 32;
        free(raw);
        if (!ok)
            return 0;
        if (end == NULL)
            return 1;
        p = end + 1;
    }
}

static int pin_file_ok(const char *path)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    BIO *bio = NULL;
    EVP_PKEY *pk = NULL;
    int ok = 0;

    if (util_read_regular_file(path, PIN_FILE_MAX, &buf, &len) != UTIL_OK || len == 0)
        goto out;
    /* What libcurl takes: a PEM "PUBLIC KEY" block whose BEGIN line is the
     * first in the file or follows a newline (whatever text comes before,
     * as `openssl x509 -text -pubkey` writes, a comment or a blank line),
     * else DER SubjectPublicKeyInfo. The first such marker is the one
     * libcurl reads. len is at most PIN_FILE_MAX: the casts to int fit. */
    static const char begin[] = "-----BEGIN PUBLIC KEY-----";
    size_t at = 0, bl = sizeof(begin) - 1;
    while (at + bl <= len && memcmp(buf + at, begin, bl) != 0)
        at++;
    int pem = at + bl <= len && (at == 0 || buf[at - 1] == '\n');
    if ((bio = pem ? BIO_new_mem_buf(buf + at, (int)(len - at)) : BIO_new_mem_buf(buf, (int)len)) == NULL)
        goto out;
    if (pem)
        pk = PEM_read_bio_PUBKEY(bio, NULL, util_pem_no_passphrase, NULL);
    else
        pk = d2i_PUBKEY_bio(bio, NULL);
    ok = pk != NULL;
out:
    ERR_clear_error();
    EVP_PKEY_free(pk);
    BIO_free(bio);
    free(buf);
    return ok;
}

static int pin_ok(const char *pin)
{
    return strncmp(pin, PIN_SHA256, strlen(PIN_SHA256)) == 0 ? pin_hashes_ok(pin) : pin_file_ok(pin);
}

const char *gs_rest_url_why(const char *url)
{
    size_t n;

    if (url == NULL || strncasecmp(url, "https://", 8) != 0)
        return "it must be https://";
    n = strlen(url);
    if (n == 8)
        return "no host after https://";
    return n > MAX_BASE_URL ? "longer than 2048 bytes" : NULL;
}

bool gs_rest_url_ok(const char *url) { return gs_rest_url_why(url) == NULL; }

gs_rest_err gs_rest_new(const gs_rest_opts *opts, gs_rest **out)
{
    gs_rest_err err = GS_REST_ERR_ARGS;
    gs_rest *r = NULL;
    size_t blen;

    if (out == NULL)
        return GS_REST_ERR_ARGS;
    *out = NULL;
    if (opts == NULL || !gs_rest_url_ok(opts->base_url)) {
        log_error("group server URL must be https://");
        return GS_REST_ERR_ARGS;
    }
    blen = strlen(opts->base_url);
    if (opts->connect_timeout_ms < 0 || opts->timeout_ms < 0)
        return GS_REST_ERR_ARGS;
    if ((opts->key_pem != NULL && opts->key_pem_len == 0) || (opts->cert_pem != NULL && opts->cert_pem_len == 0))
        return GS_REST_ERR_ARGS;
    if (opts->pinned_pubkey != NULL && !pin_ok(opts->pinned_pubkey))
        return GS_REST_ERR_PIN_FORMAT;
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK)
        return GS_REST_ERR_NOMEM;

    err = GS_REST_ERR_NOMEM;
    if ((r = calloc(1, sizeof(*r))) == NULL)
        goto out;
    r->retry_after = -1;
    r->max_response = opts->max_response ? opts->max_response : DEFAULT_MAX_RESPONSE;
    if (r->max_response > (size_t)INT_MAX) {
        err = GS_REST_ERR_ARGS;
        goto out;
    }
    if ((r->base = strdup(opts->base_url)) == NULL)
        goto out;
    while (blen > 8 && r->base[blen - 1] == '/')
        r->base[--blen] = '\0';
    if ((r->curl = curl_easy_init()) == NULL)
        goto out;

    err = GS_REST_ERR_ARGS; /* a failing setopt means an option curl does not take */
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_ERRORBUFFER, r->detail);
    SETOPT(CURLOPT_PROTOCOLS_STR, "https");
    SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "https");
    SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
    SETOPT(CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    SETOPT(CURLOPT_SSL_VERIFYPEER, 1L);
    SETOPT(CURLOPT_SSL_VERIFYHOST, 2L);
    SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
    SETOPT(CURLOPT_CONNECTTIMEOUT_MS, opts->connect_timeout_ms ? opts->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS);
    SETOPT(CURLOPT_TIMEOUT_MS, opts->timeout_ms ? opts->timeout_ms : DEFAULT_TIMEOUT_MS);
    SETOPT(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->max_response);
    SETOPT(CURLOPT_WRITEFUNCTION, write_cb);
    SETOPT(CURLOPT_WRITEDATA, r);
    SETOPT(CURLOPT_USERAGENT, opts->user_agent ? opts->user_agent : "groupsrv-restclient/" GS_VERSION);
    if (opts->ca_file != NULL)
        SETOPT(CURLOPT_CAINFO, opts->ca_file);
    if (opts->pinned_pubkey != NULL)
        SETOPT(CURLOPT_PINNEDPUBLICKEY, opts->pinned_pubkey);
    if (opts->client_pkey != NULL) {
        if (opts->cert_file == NULL)
            goto out;
        if ((err = load_pkey_identity(r, opts->cert_file, opts->client_pkey)) != GS_REST_OK)
            goto out;
        err = GS_REST_ERR_CLIENT_CERT; /* "not built in": a libcurl without SSL_CTX access */
        SETOPT(CURLOPT_SSL_CTX_FUNCTION, ssl_ctx_cb);
        SETOPT(CURLOPT_SSL_CTX_DATA, r);
        err = GS_REST_ERR_ARGS;
    } else if (opts->cert_file != NULL) {
        SETOPT(CURLOPT_SSLCERT, opts->cert_file);
        SETOPT(CURLOPT_SSLCERTTYPE, "PEM");
        SETOPT(CURLOPT_SSLKEY, opts->key_file ? opts->key_file : opts->cert_file);
        SETOPT(CURLOPT_SSLKEYTYPE, "PEM");
        /* An empty passphrase: an encrypted key file fails to load, one
         * line, rather than OpenSSL prompting on the terminal (or reading
         * standard input, the message a mail tool pipes, without one). */
        SETOPT(CURLOPT_KEYPASSWD, "");
    } else if (opts->cert_pem != NULL) {
        struct curl_blob cb, kb;
        if (opts->key_pem == NULL)
            goto out;
        err = GS_REST_ERR_NOMEM;
        if ((r->cert_pem = memdup(opts->cert_pem, opts->cert_pem_len)) == NULL ||
            (r->key_pem = memdup(opts->key_pem, opts->key_pem_len)) == NULL)
            goto out;
        r->cert_pem_len = opts->cert_pem_len;
        r->key_pem_len = opts->key_pem_len + 1; /* the copy has a NUL: wipe it too */
        err = GS_REST_ERR_ARGS;
        /* NOCOPY: curl keeps pointing at our copies, which we wipe. */
        cb = (struct curl_blob){.data = r->cert_pem, .len = r->cert_pem_len, .flags = CURL_BLOB_NOCOPY};
        kb = (struct curl_blob){.data = r->key_pem, .len = opts->key_pem_len, .flags = CURL_BLOB_NOCOPY};
        SETOPT(CURLOPT_SSLCERT_BLOB, &cb);
        SETOPT(CURLOPT_SSLCERTTYPE, "PEM");
        SETOPT(CURLOPT_SSLKEY_BLOB, &kb);
        SETOPT(CURLOPT_SSLKEYTYPE, "PEM");
    }
    *out = r;
    r = NULL;
    err = GS_REST_OK;
out:
    gs_rest_free(r);
    return err;
}

static gs_rest_err map_curl(gs_rest *r, CURLcode cc)
{
    long status = 0;

    switch (cc) {
    case CURLE_OK: return GS_REST_OK;
    case CURLE_OUT_OF_MEMORY:
        /* libcurl 7.88 reports a header line over its 100 KiB cap as out
         * of memory: once an answer has started, that is what it was */
        if (curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK && status > 0) {
            snprintf(r->detail, sizeof(r->detail), "answer headers too large");
            return GS_REST_ERR_TOO_LARGE;
        }
        return GS_REST_ERR_NOMEM;
    case CURLE_URL_MALFORMAT: return GS_REST_ERR_ARGS;
    /* our URLs are https:// (checked) and redirects are not followed:
     * libcurl says this only of an answer ("Unsupported HTTP version") */
    case CURLE_UNSUPPORTED_PROTOCOL: return GS_REST_ERR_BAD_ANSWER;
    case CURLE_OPERATION_TIMEDOUT: return GS_REST_ERR_TIMEOUT;
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH: return GS_REST_ERR_PIN;
    case CURLE_SSL_CERTPROBLEM: return GS_REST_ERR_CLIENT_CERT;
    /* our own file, missing or not PEM: nothing the server did */
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CRL_BADFILE: return GS_REST_ERR_CA_FILE;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_SHUTDOWN_FAILED: return GS_REST_ERR_TLS;
    case CURLE_FILESIZE_EXCEEDED:
    case CURLE_WRITE_ERROR:
        if (cc == CURLE_WRITE_ERROR && !r->overflow)
            return GS_REST_ERR_NOMEM;
        snprintf(r->detail, sizeof(r->detail), "answer over the %zu-byte limit", r->max_response);
        return GS_REST_ERR_TOO_LARGE;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_BAD_CONTENT_ENCODING: return GS_REST_ERR_BAD_ANSWER;
    case CURLE_RECV_ERROR:
        /* TLS 1.3: a server that refuses our client certificate says so
         * with an alert after the handshake, seen here as a read error. */
        if (strstr(r->detail, "alert") != NULL)
            return GS_REST_ERR_TLS;
        return GS_REST_ERR_UNREACHABLE;
    default: return GS_REST_ERR_UNREACHABLE;
    }
}

/* Builds base + "/v1/groups/" + escaped group + suffix. */
static gs_rest_err group_url(gs_rest *r, const char *base, const char *group, const char *suffix, char **url)
{
    char *esc = NULL;
    size_t n;
    gs_rest_err err = GS_REST_ERR_ARGS;

    *url = NULL;
    if (group == NULL || *group == '\0' || strlen(group) > MAX_GROUP_LEN)
        return GS_REST_ERR_ARGS;
    if ((esc = curl_easy_escape(r->curl, group, 0)) == NULL)
        return GS_REST_ERR_NOMEM;
    n = strlen(base) + strlen("/v1/groups/") + strlen(esc) + strlen(suffix) + 1;
    err = GS_REST_ERR_NOMEM;
    if ((*url = malloc(n)) == NULL)
        goto out;
    snprintf(*url, n, "%s/v1/groups/%s%s", base, esc, suffix);
    err = GS_REST_OK;
out:
    curl_free(esc);
    return err;
}

/* One HTTP exchange. On GS_REST_OK the body is in r->buf/r->len (wiped by
 * the next call or gs_rest_free); the status was 2xx and, when we asked
 * for JSON, the answer says it is JSON (a proxy's HTML page is not). */
static gs_rest_err do_request(gs_rest *r, const char *url, const char *ctype, const void *body, size_t body_len,
                              const char *accept)
{
    gs_rest_err err = GS_REST_ERR_NOMEM;
    struct curl_slist *hdrs = NULL, *t;
    char hbuf[128];
    CURLcode cc;
    curl_off_t ra = -1;
    char *ct = NULL;

    response_reset(r);
    r->status = 0;
    r->retry_after = -1;
    r->code[0] = r->message[0] = r->detail[0] = '\0';

    snprintf(hbuf, sizeof(hbuf), "Accept: %s", accept);
    if ((t = curl_slist_append(hdrs, hbuf)) == NULL)
        goto out;
    hdrs = t;
    if (body != NULL) {
        snprintf(hbuf, sizeof(hbuf), "Content-Type: %s", ctype);
        if ((t = curl_slist_append(hdrs, hbuf)) == NULL)
            goto out;
        hdrs = t;
        if ((t = curl_slist_append(hdrs, "Expect:")) == NULL)
            goto out;
        hdrs = t;
    }
    err = GS_REST_ERR_ARGS;
    SETOPT(CURLOPT_URL, url);
    SETOPT(CURLOPT_HTTPHEADER, hdrs);
    if (body != NULL) {
        SETOPT(CURLOPT_POST, 1L);
        SETOPT(CURLOPT_POSTFIELDS, body);
        SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    } else {
        SETOPT(CURLOPT_HTTPGET, 1L);
    }
    cc = curl_easy_perform(r->curl);
    if (cc != CURLE_OK) {
        err = map_curl(r, cc);
        /* libcurl's text may quote the server: printable ASCII only */
        gs_rest_sanitise(r->detail, sizeof(r->detail), r->detail[0] ? r->detail : curl_easy_strerror(cc));
        log_debug("request failed url=%s curl=%d", url, (int)cc);
        goto out;
    }
    if (curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &r->status) != CURLE_OK) {
        err = GS_REST_ERR_BAD_ANSWER;
        goto out;
    }
    if (curl_easy_getinfo(r->curl, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK && ra >= 0 && ra < LONG_MAX)
        r->retry_after = (long)ra;
    err = gs_rest_parse_status(r->status);
    if (err != GS_REST_OK) {
        if (err == GS_REST_ERR_BAD_ANSWER) /* 1xx, 3xx, 6xx...: no refusal to read */
            snprintf(r->detail, sizeof(r->detail), "unexpected HTTP status %ld%s", r->status,
                     r->status >= 300 && r->status < 400 ? "; redirects are not followed" : "");
        else
            gs_rest_parse_error(r->buf, r->len, r->code, sizeof(r->code), r->message, sizeof(r->message));
        response_reset(r);
        goto out;
    }
    r->retry_after = -1;
    if (strcmp(accept, "application/json") == 0 &&
        (curl_easy_getinfo(r->curl, CURLINFO_CONTENT_TYPE, &ct) != CURLE_OK || !gs_rest_parse_is_json(ct))) {
        char shown[64];
        gs_rest_sanitise(shown, sizeof(shown), ct != NULL ? ct : "(none)");
        snprintf(r->detail, sizeof(r->detail), "answer is not JSON: Content-Type %s", shown);
        response_reset(r);
        err = GS_REST_ERR_BAD_ANSWER;
        goto out;
    }
    err = GS_REST_OK;
out:
    /* The slist dies here: detach it from the handle first. */
    curl_easy_setopt(r->curl, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(r->curl, CURLOPT_POSTFIELDS, NULL);
    curl_slist_free_all(hdrs);
    return err;
}

/* ---- request bodies ----------------------------------------------------- */

static gs_rest_err dump_json(json_t *obj, char **body, size_t *len)
{
    *body = json_dumps(obj, JSON_COMPACT);
    if (*body == NULL)
        return GS_REST_ERR_NOMEM;
    *len = strlen(*body);
    return GS_REST_OK;
}

static gs_rest_err set_b64(json_t *obj, const char *name, const unsigned char *p, size_t n)
{
    char *b = NULL;
    gs_rest_err err = GS_REST_ERR_NOMEM;
    if (util_b64_encode(p, n, &b) != UTIL_OK)
        return GS_REST_ERR_NOMEM;
    if (json_object_set_new(obj, name, json_string(b)) == 0)
        err = GS_REST_OK;
    free(b);
    return err;
}

/* ---- group info ------------------------------------------------------- */

gs_rest_err gs_rest_group_info(gs_rest *r, const char *group, gs_group_info *out)
{
    gs_rest_err err;
    char *url = NULL;

    if (out != NULL)
        memset(out, 0, sizeof(*out));
    if (r == NULL || out == NULL)
        return GS_REST_ERR_ARGS;
    if ((err = group_url(r, r->base, group, "", &url)) != GS_REST_OK)
        goto out;
    if ((err = do_request(r, url, NULL, NULL, 0, "application/json")) != GS_REST_OK)
        goto out;
    err = gs_rest_parse_group_info(r->buf, r->len, out, r->detail, sizeof(r->detail));
out:
    free(url);
    response_reset(r);
    return err;
}

/* ---- PEM answers ------------------------------------------------------ */

gs_rest_err gs_rest_group_certificate(gs_rest *r, const char *group, char **pem, size_t *len)
{
    gs_rest_err err;
    char *url = NULL;

    if (pem != NULL)
        *pem = NULL;
    if (len != NULL)
        *len = 0;
    if (r == NULL || pem == NULL)
        return GS_REST_ERR_ARGS;
    if ((err = group_url(r, r->base, group, "/certificate", &url)) != GS_REST_OK)
        goto out;
    if ((err = do_request(r, url, NULL, NULL, 0, "application/pem-certificate-chain, application/x-pem-file, */*")) !=
        GS_REST_OK)
        goto out;
    err = gs_rest_parse_pem(r->buf, r->len, pem, len, r->detail, sizeof(r->detail));
out:
    free(url);
    response_reset(r);
    return err;
}

gs_rest_err gs_rest_membership_certificate(gs_rest *r, const char *certsrv_url, const char *group,
                                           const char *csr_pem, size_t csr_len, char **cert_pem, size_t *cert_len)
{
    gs_rest_err err;
    char *url = NULL, *base = NULL;
    size_t n;

    if (cert_pem != NULL)
        *cert_pem = NULL;
    if (cert_len != NULL)
        *cert_len = 0;
    if (r == NULL || cert_pem == NULL || csr_pem == NULL || csr_len == 0 || csr_len > MAX_CSR_LEN)
        return GS_REST_ERR_ARGS;
    if (certsrv_url == NULL || *certsrv_url == '\0')
        certsrv_url = r->base;
    if (!gs_rest_url_ok(certsrv_url))
        return GS_REST_ERR_ARGS;
    if ((base = strdup(certsrv_url)) == NULL)
        return GS_REST_ERR_NOMEM;
    n = strlen(base);
    while (n > 8 && base[n - 1] == '/')
        base[--n] = '\0';
    if ((err = group_url(r, base, group, "/membership-certificates", &url)) != GS_REST_OK)
        goto out;
    if ((err = do_request(r, url, "application/pkcs10", csr_pem, csr_len,
                          "application/pem-certificate-chain, application/x-pem-file, */*")) != GS_REST_OK)
        goto out;
    err = gs_rest_parse_pem(r->buf, r->len, cert_pem, cert_len, r->detail, sizeof(r->detail));
out:
    free(base);
    free(url);
    response_reset(r);
    return err;
}

/* ---- unwrap ------------------------------------------------------------ */

static gs_rest_err unwrap_req_json(const gs_unwrap_req *req, json_t **out)
{
    json_t *o = NULL;
    gs_rest_err err = GS_REST_ERR_ARGS;

    *out = NULL;
    if (req == NULL)
        return GS_REST_ERR_ARGS;
    if (req->deliver != GS_DELIVER_TLS && req->deliver != GS_DELIVER_RECIPIENT_KEY &&
        req->deliver != GS_DELIVER_GROUP_SECRET)
        return GS_REST_ERR_ARGS;
    if ((req->recipient_info != NULL) == (req->encrypted_key != NULL))
        return GS_REST_ERR_ARGS; /* exactly one of the two forms */
    if ((o = json_object()) == NULL)
        return GS_REST_ERR_NOMEM;
    if (req->recipient_info != NULL) {
        if (req->recipient_info_len == 0 || req->recipient_info_len > MAX_RI_LEN)
            goto out;
        if ((err = set_b64(o, "recipient_info", req->recipient_info, req->recipient_info_len)) != GS_REST_OK)
            goto out;
    } else {
        err = GS_REST_ERR_ARGS;
        if (req->encrypted_key_len == 0 || req->encrypted_key_len > 2048 || req->algorithm == NULL ||
            (strcmp(req->algorithm, "RSA-OAEP") != 0 && strcmp(req->algorithm, "RSA-OAEP-256") != 0))
            goto out;
        if ((err = set_b64(o, "encrypted_key", req->encrypted_key, req->encrypted_key_len)) != GS_REST_OK)
            goto out;
        err = GS_REST_ERR_NOMEM;
        if (json_object_set_new(o, "algorithm", json_string(req->algorithm)) != 0)
            goto out;
    }
    err = GS_REST_ERR_NOMEM;
    if (json_object_set_new(o, "deliver", json_string(gs_deliver_name(req->deliver))) != 0)
        goto out;
    if (req->content_algorithm != NULL) {
        err = GS_REST_ERR_ARGS;
        if (*req->content_algorithm == '\0' || strlen(req->content_algorithm) > 64)
            goto out;
        err = GS_REST_ERR_NOMEM;
        if (json_object_set_new(o, "content_algorithm", json_string(req->content_algorithm)) != 0)
            goto out;
    }
    *out = o;
    o = NULL;
    err = GS_REST_OK;
out:
    json_decref(o);
    return err;
}

gs_rest_err gs_rest_unwrap(gs_rest *r, const char *group, const gs_unwrap_req *req, gs_unwrap_result *out)
{
    gs_rest_err err;
    char *url = NULL, *body = NULL;
    size_t blen = 0;
    json_t *jreq = NULL;

    if (out != NULL) {
        memset(out, 0, sizeof(*out));
        out->key_version = out->secret_version = -1;
    }
    if (r == NULL || out == NULL || req == NULL)
        return GS_REST_ERR_ARGS;
    if ((err = group_url(r, r->base, group, "/unwrap", &url)) != GS_REST_OK)
        goto out;
    if ((err = unwrap_req_json(req, &jreq)) != GS_REST_OK || (err = dump_json(jreq, &body, &blen)) != GS_REST_OK)
        goto out;
    if ((err = do_request(r, url, "application/json", body, blen, "application/json")) != GS_REST_OK)
        goto out;
    err = gs_rest_parse_unwrap(r->buf, r->len, req->deliver, out, r->detail, sizeof(r->detail));
out:
    json_decref(jreq);
    free(body);
    free(url);
    response_reset(r);
    return err;
}

gs_rest_err gs_rest_unwrap_batch(gs_rest *r, const char *group, const gs_unwrap_req *reqs, size_t n,
                                 gs_unwrap_result *outs, gs_rest_err *item_errs)
{
    gs_rest_err err = GS_REST_ERR_NOMEM;
    char *url = NULL, *body = NULL;
    size_t blen = 0, i;
    json_t *jreq = NULL, *items = NULL;
    gs_deliver delivers[GS_REST_BATCH_MAX];

    if (r == NULL || reqs == NULL || outs == NULL || item_errs == NULL || n == 0 || n > GS_REST_BATCH_MAX)
        return GS_REST_ERR_ARGS;
    for (i = 0; i < n; i++) {
        memset(&outs[i], 0, sizeof(outs[i]));
        outs[i].key_version = outs[i].secret_version = -1;
        item_errs[i] = GS_REST_ERR_ARGS;
    }
    if ((err = group_url(r, r->base, group, "/unwrap-batch", &url)) != GS_REST_OK)
        goto out;
    err = GS_REST_ERR_NOMEM;
    if ((jreq = json_object()) == NULL || (items = json_array()) == NULL)
        goto out;
    for (i = 0; i < n; i++) {
        json_t *it = NULL;
        if ((err = unwrap_req_json(&reqs[i], &it)) != GS_REST_OK)
            goto out;
        if (json_array_append_new(items, it) != 0) {
            err = GS_REST_ERR_NOMEM;
            goto out;
        }
    }
    err = GS_REST_ERR_NOMEM;
    if (json_object_set_new(jreq, "items", items) != 0) {
        items = NULL;
        goto out;
    }
    items = NULL;
    if ((err = dump_json(jreq, &body, &blen)) != GS_REST_OK)
        goto out;
    if ((err = do_request(r, url, "application/json", body, blen, "application/json")) != GS_REST_OK)
        goto out;
    for (i = 0; i < n; i++)
        delivers[i] = reqs[i].deliver;
    err = gs_rest_parse_unwrap_batch(r->buf, r->len, delivers, n, outs, item_errs, r->detail, sizeof(r->detail));
out:
    if (err != GS_REST_OK)
        for (i = 0; i < n; i++)
            gs_unwrap_result_clear(&outs[i]);
    json_decref(items);
    json_decref(jreq);
    free(body);
    free(url);
    response_reset(r);
    return err;
}

/* ---- rewrap ------------------------------------------------------------ */

gs_rest_err gs_rest_rewrap(gs_rest *r, const char *group, const unsigned char *ri, size_t ri_len, gs_rewrap_to to,
                           gs_ri_list *out)
{
    return gs_rest_rewrap_alg(r, group, ri, ri_len, to, NULL, out);
}

gs_rest_err gs_rest_rewrap_alg(gs_rest *r, const char *group, const unsigned char *ri, size_t ri_len,
                               gs_rewrap_to to, const char *content_algorithm, gs_ri_list *out)
{
    gs_rest_err err = GS_REST_ERR_NOMEM;
    char *url = NULL, *body = NULL;
    size_t blen = 0;
    json_t *jreq = NULL;

    if (out != NULL)
        memset(out, 0, sizeof(*out));
    if (r == NULL || out == NULL || ri == NULL || ri_len == 0 || ri_len > MAX_RI_LEN ||
        (to != GS_REWRAP_GROUP_SECRET && to != GS_REWRAP_MEMBERS) ||
        (content_algorithm != NULL && (*content_algorithm == '\0' || strlen(content_algorithm) > 64)))
        return GS_REST_ERR_ARGS;
    if ((err = group_url(r, r->base, group, "/rewrap", &url)) != GS_REST_OK)
        goto out;
    err = GS_REST_ERR_NOMEM;
    if ((jreq = json_object()) == NULL)
        goto out;
    if ((err = set_b64(jreq, "recipient_info", ri, ri_len)) != GS_REST_OK)
        goto out;
    err = GS_REST_ERR_NOMEM;
    if (json_object_set_new(jreq, "to", json_string(to == GS_REWRAP_MEMBERS ? "members" : "group-secret")) != 0)
        goto out;
    if (content_algorithm != NULL && json_object_set_new(jreq, "content_algorithm", json_string(content_algorithm)) != 0)
        goto out;
    if ((err = dump_json(jreq, &body, &blen)) != GS_REST_OK)
        goto out;
    if ((err = do_request(r, url, "application/json", body, blen, "application/json")) != GS_REST_OK)
        goto out;
    err = gs_rest_parse_rewrap(r->buf, r->len, to, out, r->detail, sizeof(r->detail));
out:
    json_decref(jreq);
    free(body);
    free(url);
    response_reset(r);
    return err;
}

/* ---- secret keys ------------------------------------------------------- */

gs_rest_err gs_rest_secret_keys(gs_rest *r, const char *group, gs_secret_keys *out)
{
    gs_rest_err err;
    char *url = NULL;

    if (out != NULL)
        memset(out, 0, sizeof(*out));
    if (r == NULL || out == NULL)
        return GS_REST_ERR_ARGS;
    if ((err = group_url(r, r->base, group, "/secret-keys", &url)) != GS_REST_OK)
        goto out;
    if ((err = do_request(r, url, NULL, NULL, 0, "application/json")) != GS_REST_OK)
        goto out;
    err = gs_rest_parse_secret_keys(r->buf, r->len, out, r->detail, sizeof(r->detail));
out:
    free(url);
    response_reset(r);
    return err;
}

size_t gs_rest_members_answer_cap(size_t members)
{
    return DEFAULT_MAX_RESPONSE + (members < MEMBER_ANSWER_MAX ? members : MEMBER_ANSWER_MAX) * MEMBER_ANSWER_BYTES;
}
