/* prepare.c: message checks and rewriting, CMS via envelope/, the group
 * server via client/restclient. See prepare.h. */
#include "prepare.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "envelope.h"
#include "log.h"
#include "mail.h"
#include "restclient.h"
#include "util.h"

static X509 *first_cert(const char *pem)
{
    BIO *b;
    X509 *x;
    if (pem == NULL)
        return NULL;
    if ((b = BIO_new_mem_buf(pem, -1)) == NULL)
        return NULL;
    x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    return x;
}

xp_err xp_cert_check(const char *pem, char **subject)
{
    X509 *x = first_cert(pem);
    *subject = NULL;
    if (x == NULL)
        return XP_ERR_FORMAT;
    *subject = X509_NAME_oneline(X509_get_subject_name(x), NULL, 0);
    X509_free(x);
    return *subject != NULL ? XP_OK : XP_ERR_NOMEM;
}

/* Is the top-level Content-Type an S/MIME pkcs7-mime one? */
static bool is_pkcs7_mime(const char *hdrs, size_t len)
{
    char *ct = mail_header_get(hdrs, len, "Content-Type");
    bool yes = false;
    if (ct != NULL) {
        yes = strncasecmp(ct, "application/pkcs7-mime", 22) == 0 ||
              strncasecmp(ct, "application/x-pkcs7-mime", 24) == 0;
        free(ct);
    }
    return yes;
}

static xp_err env_to_xp(env_err e)
{
    switch (e) {
    case ENV_OK: return XP_OK;
    case ENV_ERR_NOMEM: return XP_ERR_NOMEM;
    case ENV_ERR_IO: return XP_ERR_IO;
    case ENV_ERR_CONTENT_TYPE: return XP_ERR_NOT_ENCRYPTED;
    case ENV_ERR_NO_RECIPIENT: return XP_ERR_WRONG_RECIPIENT;
    case ENV_ERR_TOO_LARGE: return XP_ERR_TOO_LARGE;
    case ENV_ERR_TRUNCATED:
    case ENV_ERR_NOT_CMS:
    case ENV_ERR_MIME:
    case ENV_ERR_UNSUPPORTED: return XP_ERR_FORMAT;
    default: return XP_ERR_CRYPTO;
    }
}

xp_err xp_check_message(const xp_conf *c, const xp_list *l, const void *data, size_t len)
{
    size_t hdr_end, body_start, idx;
    bool crlf;
    xp_err rc;
    BIO *in = NULL;
    env_message *msg = NULL;
    X509 *gc = NULL;
    env_err e;

    if ((rc = mail_split(data, len, &hdr_end, &body_start, &crlf)) != XP_OK)
        return rc == XP_ERR_TOO_LARGE ? XP_ERR_FORMAT : rc;
    if (!is_pkcs7_mime(data, hdr_end)) {
        /* plain mail: only a forward list that explicitly allows it */
        if (l->mode == XP_MODE_FORWARD && !l->require_encrypted)
            return XP_OK;
        return XP_ERR_NOT_ENCRYPTED;
    }
    if (l->mode == XP_MODE_FORWARD && !l->require_encrypted && l->group_cert == NULL)
        return XP_OK;
    if ((gc = first_cert(l->group_cert)) == NULL) {
        log_error("list has no usable group certificate list=%s", l->address);
        return XP_ERR_CONFIG;
    }
    if ((in = BIO_new_mem_buf(data, (int)len)) == NULL) {
        rc = XP_ERR_NOMEM;
        goto out;
    }
    e = env_message_read(in, ENV_FORMAT_SMIME, c->max_message_size, &msg);
    if (e != ENV_OK) {
        log_info("message is not a readable CMS message err=\"%s\"", env_strerror(e));
        rc = env_to_xp(e);
        goto out;
    }
    e = env_message_find_recipient(msg, gc, &idx);
    if (e != ENV_OK) {
        rc = env_to_xp(e);
        if (!l->require_encrypted && l->mode == XP_MODE_FORWARD)
            rc = XP_OK; /* forward list that accepts anything */
        goto out;
    }
    rc = XP_OK;
out:
    env_message_free(msg);
    BIO_free(in);
    X509_free(gc);
    return rc;
}

static void rest_opts(const xp_conf *c, const xp_list *l, gs_rest_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->base_url = l->server;
    o->cert_file = l->cert != NULL ? l->cert : c->tls_cert;
    o->key_file = l->priv_path != NULL ? l->priv_path : c->tls_priv_path;
    o->ca_file = l->cacert != NULL ? l->cacert : c->tls_ca;
    o->user_agent = "groupsrv-exploder/0.1";
    o->timeout_ms = (long)c->tls_timeout * 1000;
}

/* Whether to ask again (docs/exploder.1.md, "Group server answers"): a 4xx
 * other than 408 and 429 says the request itself is refused (not the
 * list's exploder, no such group, a RecipientInfo the group cannot
 * unwrap), and asking again gets the same answer: the message fails now
 * and bounces once. 408 (GS_REST_ERR_TIMEOUT), 429, 5xx, connection,
 * timeout and TLS trouble, and malformed answers are the server's or the
 * network's: retried with backoff until max_age. */
static xp_err rest_class(gs_rest_err e)
{
    switch (e) {
    case GS_REST_ERR_UNAUTHORIZED:
    case GS_REST_ERR_FORBIDDEN:
    case GS_REST_ERR_NOT_FOUND:
    case GS_REST_ERR_REJECTED: return XP_ERR_PERM;
    default: return XP_ERR_TEMP;
    }
}

static void rest_why(gs_rest *r, gs_rest_err e, char *why, size_t whysz)
{
    const char *code = gs_rest_last_code(r), *detail = gs_rest_last_detail(r);
    char status[32] = "";

    if (gs_rest_last_status(r) > 0)
        snprintf(status, sizeof(status), "HTTP %ld", gs_rest_last_status(r));
    snprintf(why, whysz, "group server: %s (%s%s%s%s%s)", gs_rest_strerror(e), status,
             status[0] && code[0] ? ", " : "", code, (status[0] || code[0]) && detail[0] ? ", " : "", detail);
}

xp_err xp_fetch_group_cert(const xp_conf *c, const xp_list *l, char **pem, char *why, size_t whysz)
{
    gs_rest_opts o;
    gs_rest *r = NULL;
    gs_rest_err e;
    size_t len = 0;
    char *subject = NULL;
    xp_err rc;

    *pem = NULL;
    why[0] = '\0';
    rest_opts(c, l, &o);
    if ((e = gs_rest_new(&o, &r)) != GS_REST_OK) {
        snprintf(why, whysz, "group server client: %s", gs_rest_strerror(e));
        return XP_ERR_CONFIG;
    }
    if ((e = gs_rest_group_certificate(r, l->group, pem, &len)) != GS_REST_OK) {
        rest_why(r, e, why, whysz);
        rc = XP_ERR_TEMP;
        goto out;
    }
    if ((rc = xp_cert_check(*pem, &subject)) != XP_OK) {
        snprintf(why, whysz, "group server answered no parsable certificate");
        free(*pem);
        *pem = NULL;
        goto out;
    }
    rc = XP_OK;
out:
    OPENSSL_free(subject);
    gs_rest_free(r);
    return rc;
}

static xp_err prepare_forward(const xp_conf *c, const xp_list *l, const char *in_path, FILE *out, char *why,
                              size_t whysz)
{
    unsigned char *data = NULL;
    char *hdrs = NULL;
    size_t len = 0, hdr_end, body_start, hlen = 0;
    bool crlf;
    xp_err rc;

    if (util_read_file(in_path, c->max_message_size + 1, &data, &len) != UTIL_OK) {
        snprintf(why, whysz, "cannot read spooled message");
        return XP_ERR_IO;
    }
    if ((rc = mail_split((const char *)data, len, &hdr_end, &body_start, &crlf)) != XP_OK ||
        (rc = mail_list_headers((const char *)data, hdr_end, l->address, crlf, &hdrs, &hlen)) != XP_OK) {
        snprintf(why, whysz, "cannot parse spooled message: %s", xp_strerror(rc));
        goto out;
    }
    /* headers, the blank line as it was, the body byte for byte */
    if (fwrite(hdrs, 1, hlen, out) != hlen || fwrite(data + hdr_end, 1, len - hdr_end, out) != len - hdr_end) {
        snprintf(why, whysz, "cannot write prepared message");
        rc = XP_ERR_IO;
        goto out;
    }
    rc = XP_OK;
out:
    free(hdrs);
    free(data);
    return rc;
}

static xp_err prepare_rewrap(const xp_conf *c, const xp_list *l, const char *in_path, FILE *out, char *why,
                             size_t whysz)
{
    BIO *in = NULL, *bout = NULL;
    env_message *msg = NULL;
    X509 *gc = NULL;
    unsigned char *der = NULL;
    size_t derlen = 0, idx = 0, hlen = 0;
    gs_rest_opts o;
    gs_rest *r = NULL;
    gs_ri_list ris;
    gs_rest_err ge;
    env_err e;
    char *hdrs = NULL;
    const char *outer;
    xp_err rc = XP_ERR_CRYPTO;

    memset(&ris, 0, sizeof(ris));
    if ((gc = first_cert(l->group_cert)) == NULL) {
        snprintf(why, whysz, "list has no group certificate");
        rc = XP_ERR_TEMP; /* the admin can still add it */
        goto out;
    }
    if ((in = BIO_new_file(in_path, "rb")) == NULL) {
        snprintf(why, whysz, "cannot open spooled message");
        rc = XP_ERR_IO;
        goto out;
    }
    if ((e = env_message_read(in, ENV_FORMAT_SMIME, c->max_message_size, &msg)) != ENV_OK ||
        (e = env_message_find_recipient(msg, gc, &idx)) != ENV_OK ||
        (e = env_message_recipient_der(msg, idx, &der, &derlen)) != ENV_OK) {
        snprintf(why, whysz, "spooled message: %s", env_strerror(e));
        rc = env_to_xp(e);
        goto out;
    }
    /* one call per message, whatever the number of recipients */
    rest_opts(c, l, &o);
    if ((ge = gs_rest_new(&o, &r)) != GS_REST_OK) {
        snprintf(why, whysz, "group server client: %s", gs_rest_strerror(ge));
        rc = XP_ERR_TEMP;
        goto out;
    }
    ge = gs_rest_rewrap(r, l->group, der, derlen,
                        l->mode == XP_MODE_GROUP_SECRET ? GS_REWRAP_GROUP_SECRET : GS_REWRAP_MEMBERS, &ris);
    if (ge != GS_REST_OK) {
        rest_why(r, ge, why, whysz);
        rc = rest_class(ge);
        goto out;
    }
    if (ris.n == 0) {
        snprintf(why, whysz, "group server returned no RecipientInfo");
        rc = XP_ERR_TEMP;
        goto out;
    }
    /* only the returned RecipientInfos: the group's KTRI and any other
     * recipient of the original do not travel on to the members */
    if ((e = env_message_set_recipients(msg, (const unsigned char *const *)ris.der, ris.len, ris.n)) != ENV_OK) {
        /* a malformed answer, like a 5xx: the server's fault, not the message's */
        snprintf(why, whysz, "group server answered an unusable RecipientInfo: %s", env_strerror(e));
        rc = e == ENV_ERR_NOMEM ? XP_ERR_NOMEM : XP_ERR_TEMP;
        goto out;
    }
    outer = env_message_outer_headers(msg);
    if ((rc = mail_list_headers(outer, strlen(outer), l->address, strstr(outer, "\r\n") != NULL, &hdrs, &hlen)) !=
        XP_OK) {
        snprintf(why, whysz, "headers: %s", xp_strerror(rc));
        goto out;
    }
    if ((bout = BIO_new_fp(out, BIO_NOCLOSE)) == NULL) {
        rc = XP_ERR_NOMEM;
        goto out;
    }
    if ((e = env_message_write(msg, ENV_FORMAT_SMIME, hdrs, bout)) != ENV_OK || BIO_flush(bout) != 1) {
        snprintf(why, whysz, "writing message: %s", env_strerror(e));
        rc = XP_ERR_IO;
        goto out;
    }
    log_info("rewrapped list=%s mode=%s recipient_infos=%zu", l->address, xp_mode_name(l->mode), ris.n);
    rc = XP_OK;
out:
    gs_ri_list_clear(&ris);
    gs_rest_free(r);
    free(hdrs);
    free(der);
    env_message_free(msg);
    BIO_free(bout);
    BIO_free(in);
    X509_free(gc);
    return rc;
}

xp_err xp_prepare(const xp_conf *c, const xp_list *l, const char *in_path, FILE *out, char *why, size_t whysz)
{
    why[0] = '\0';
    if (l->mode == XP_MODE_FORWARD)
        return prepare_forward(c, l, in_path, out, why, whysz);
    return prepare_rewrap(c, l, in_path, out, why, whysz);
}
