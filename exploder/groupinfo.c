/* groupinfo.c: the group server's discovery answer, cached per list. See
 * groupinfo.h. */
#include "groupinfo.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "log.h"
#include "prepare.h"
#include "restclient.h"
#include "util.h"

/* The group server's words for the same refusals (groupsrv/server/api.c),
 * so a sender reads one reason whoever refuses. */
#define MSG_V15_REFUSED "PKCS#1 v1.5 key transport is not allowed for this group"
#define MSG_EC_REWRAP "EC group keys cannot be re-wrapped (only a forward list can carry them)"
#define MSG_NO_SECRET "the group does not use a group secret key"

#define LIST_CAP 512 /* the comma lists we store */
#define GROUP_CERTS_CAP (256u * 1024u) /* a list's group certificates, PEM: over a hundred key versions */

/* "a,b,c" from a string vector; NULL when it does not fit. */
static char *join(char *const *v, size_t n)
{
    char *out = calloc(1, LIST_CAP);
    size_t used = 0;

    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        int w = snprintf(out + used, LIST_CAP - used, "%s%s", i ? "," : "", v[i]);
        if (w < 0 || (size_t)w >= LIST_CAP - used) {
            free(out);
            return NULL;
        }
        used += (size_t)w;
    }
    return out;
}

/* Is word one of the comma-separated items of list? */
static bool in_list(const char *list, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = list; p != NULL && *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && strncmp(p, word, n) == 0)
            return true;
        p = e ? e + 1 : NULL;
    }
    return false;
}

/* Whether `at` (unix seconds, 0 = never) is less than ttl seconds ago. */
static bool within(int64_t at, int64_t now, int64_t ttl)
{
    return at > 0 && now >= at && now - at < ttl;
}

/* The group server client for deliver, which runs while the MTA waits: a
 * slow group server must not hold it longer than [tls] timeout, and never
 * over 10 s. */
static gs_rest_err deliver_rest(const xp_conf *c, const xp_list *l, gs_rest **r)
{
    gs_rest_opts o;

    xp_rest_opts(c, l, &o);
    if (o.timeout_ms <= 0 || o.timeout_ms > 10000)
        o.timeout_ms = 10000;
    o.connect_timeout_ms = o.timeout_ms < 5000 ? o.timeout_ms : 5000;
    return gs_rest_new(&o, r);
}

/* Whether the group server failed within the last minute (at most the
 * ttl): during an outage every deliver would otherwise wait out the
 * timeout. */
static bool failed_lately(const xp_conf *c, const xp_list *l, int64_t now, char *why, size_t whysz)
{
    int64_t ttl = (int64_t)c->group_info_ttl;
    if (!within(l->group_info_tried, now, ttl < 60 ? ttl : 60))
        return false;
    snprintf(why, whysz, "the group server failed %llds ago", (long long)(now - l->group_info_tried));
    return true;
}

/* The one-line reason of a failed request, its HTTP status added. */
static void rest_fail_why(gs_rest *r, gs_rest_err e, const char *what, char *why, size_t whysz)
{
    const char *err = gs_rest_strerror(e);
    long st = gs_rest_last_status(r);
    if (st > 0 && strchr(err, '(') == NULL)
        snprintf(why, whysz, "%s: %s (HTTP %ld)", what, err, st);
    else
        snprintf(why, whysz, "%s: %s", what, err);
}

/* Whether the group server said within the last minute (at most the ttl)
 * that its current certificate is one the list knows: a run of messages
 * to a certificate that is not the group's would otherwise ask it once
 * each. Such a message is deferred meanwhile, never refused on an old
 * answer: the group key may have been rotated since. */
static bool checked_lately(const xp_conf *c, const xp_list *l, int64_t now)
{
    int64_t ttl = (int64_t)c->group_info_ttl;
    return within(l->group_cert_at, now, ttl < 60 ? ttl : 60);
}

static bool asked_lately(const xp_conf *c, const xp_list *l, int64_t now, char *why, size_t whysz)
{
    if (!checked_lately(c, l, now))
        return false;
    snprintf(why, whysz, "the group server said %llds ago that its current certificate is one the list knows",
             (long long)(now - l->group_cert_at));
    return true;
}

/* have (the list's PEM certificates, may be NULL) with leaf appended, as
 * one NUL-terminated string into *all (caller frees). */
static xp_err append_cert(const char *have, X509 *leaf, char **all, char *why, size_t whysz)
{
    size_t n = have != NULL ? strlen(have) : 0;
    BIO *b = BIO_new(BIO_s_mem());
    char *data = NULL;
    long len;
    xp_err rc = XP_ERR_NOMEM;

    *all = NULL;
    if (b == NULL || BIO_write(b, have != NULL ? have : "", (int)n) < (int)n ||
        (n > 0 && have[n - 1] != '\n' && BIO_write(b, "\n", 1) != 1) || !PEM_write_bio_X509(b, leaf) ||
        BIO_write(b, "", 1) != 1) /* the NUL */
        goto out;
    len = BIO_get_mem_data(b, &data);
    if (len <= 0 || (size_t)len > GROUP_CERTS_CAP) {
        snprintf(why, whysz, "the list's group certificates would exceed %u bytes", GROUP_CERTS_CAP);
        rc = XP_ERR_TOO_LARGE;
        goto out;
    }
    if ((*all = strdup(data)) == NULL)
        goto out;
    rc = XP_OK;
out:
    BIO_free(b);
    return rc;
}

/* Adds to a list's certificates another deliver may be adding to at the
 * same time: each try replaces them only if they are still the ones it
 * read (spool_list_set_group_cert), else reads them again. */
#define CERT_ADD_TRIES 4

/* Fetches the current certificate and adds it when new (see
 * xp_group_cert_refresh). mark_known: an answer that it is known is
 * recorded (group_cert_at), which defers mail to a certificate the list
 * does not know for a minute (asked_lately). */
static xp_err cert_refresh(const xp_conf *c, spool *s, xp_list *l, int64_t now, bool mark_known, char *why,
                           size_t whysz)
{
    gs_rest *r = NULL;
    gs_rest_err e;
    char *pem = NULL, *all = NULL;
    size_t len = 0;
    BIO *b = NULL;
    X509 *leaf = NULL;
    xp_list *fresh = NULL;
    xp_err rc;

    if ((e = deliver_rest(c, l, &r)) != GS_REST_OK) {
        snprintf(why, whysz, "group server client: %s", gs_rest_strerror(e));
        rc = XP_ERR_CONFIG;
        goto out;
    }
    if ((e = gs_rest_group_certificate(r, l->group, &pem, &len)) != GS_REST_OK) {
        rest_fail_why(r, e, "group certificate", why, whysz);
        if (spool_list_group_info_tried(s, l->id, now) == XP_OK)
            l->group_info_tried = now;
        rc = XP_ERR_TEMP;
        goto out;
    }
    /* the answer is the current version's certificate, then its issuer */
    if ((b = BIO_new_mem_buf(pem, (int)len)) == NULL ||
        (leaf = PEM_read_bio_X509(b, NULL, util_pem_no_passphrase, NULL)) == NULL) { /* never asks */
        snprintf(why, whysz, "group certificate: the group server answered no parsable certificate");
        rc = XP_ERR_FORMAT;
        goto out;
    }
    for (int tries = 1;; tries++) {
        if (xp_group_cert_known(l->group_cert, leaf)) {
            /* known: the server's answer is no news (or another deliver
             * added it meanwhile, and the message is to be checked again) */
            if (mark_known && spool_list_group_cert_checked(s, l->id, now) == XP_OK)
                l->group_cert_at = now;
            rc = tries == 1 ? XP_ERR_NOTFOUND : XP_OK;
            goto out;
        }
        free(all);
        if ((rc = append_cert(l->group_cert, leaf, &all, why, whysz)) != XP_OK)
            goto out;
        rc = spool_list_set_group_cert(s, l->id, l->group_cert, all, now);
        if (rc == XP_OK)
            break;
        if (rc != XP_ERR_EXISTS || tries == CERT_ADD_TRIES ||
            (rc = spool_list_get_by_id(s, l->id, &fresh)) != XP_OK) {
            snprintf(why, whysz, "cannot store the group certificate: %s", xp_strerror(rc));
            goto out;
        }
        free(l->group_cert);
        l->group_cert = fresh->group_cert;
        fresh->group_cert = NULL;
        xp_list_free(fresh);
        fresh = NULL;
    }
    free(l->group_cert);
    l->group_cert = all;
    l->group_cert_at = now;
    all = NULL;
    rc = XP_OK;
out:
    xp_list_free(fresh);
    free(all);
    X509_free(leaf);
    BIO_free(b);
    free(pem);
    gs_rest_free(r);
    ERR_clear_error();
    return rc;
}

xp_err xp_group_cert_refresh(const xp_conf *c, spool *s, xp_list *l, char *why, size_t whysz)
{
    int64_t now = (int64_t)time(NULL);

    why[0] = '\0';
    if (failed_lately(c, l, now, why, whysz) || asked_lately(c, l, now, why, whysz))
        return XP_ERR_TEMP;
    return cert_refresh(c, s, l, now, true, why, whysz);
}

bool xp_group_cert_known_lately(const xp_conf *c, const xp_list *l)
{
    return checked_lately(c, l, (int64_t)time(NULL));
}

xp_err xp_group_cert_refresh_unmet(const xp_conf *c, spool *s, xp_list *l, char *why, size_t whysz)
{
    int64_t now = (int64_t)time(NULL), ttl = (int64_t)c->group_info_ttl;
    char dwhy[256];
    xp_err rc;

    why[0] = '\0';
    /* Asked within the minute, for the certificate or the discovery
     * answer: nothing new to learn, and nothing for deliver to log (the
     * certificate the list has not met is most often the sender's own,
     * named in every message). */
    if (checked_lately(c, l, now) || within(l->group_info_at, now, ttl < 60 ? ttl : 60))
        return XP_ERR_NOTFOUND;
    if (failed_lately(c, l, now, why, whysz))
        return XP_ERR_TEMP;
    rc = cert_refresh(c, s, l, now, false, why, whysz);
    /* This ask is recorded as a discovery fetch (group_info_at), not as
     * an answer that the current certificate is known: such a message
     * (the sender's own certificate from the same CA, another list's
     * group certificate) would otherwise defer every message to a
     * certificate the list does not know, on a busy list at each retry. */
    if (rc != XP_ERR_TEMP && xp_group_info_refresh(c, s, l, true, dwhy, sizeof(dwhy)) != XP_OK)
        log_warn("group server discovery not refreshed list=%s reason=\"%s\"", l->address, dwhy);
    return rc;
}

xp_err xp_group_info_refresh(const xp_conf *c, spool *s, xp_list *l, bool force, char *why, size_t whysz)
{
    gs_rest *r = NULL;
    gs_group_info gi;
    gs_rest_err e;
    char *kts = NULL, *methods = NULL;
    int64_t now = (int64_t)time(NULL), ttl = (int64_t)c->group_info_ttl;
    xp_err rc;

    memset(&gi, 0, sizeof(gi));
    why[0] = '\0';
    if (!force && within(l->group_info_at, now, ttl))
        return XP_OK;
    if (!force && failed_lately(c, l, now, why, whysz))
        return XP_ERR_TEMP;
    if ((e = deliver_rest(c, l, &r)) != GS_REST_OK) {
        snprintf(why, whysz, "group server client: %s", gs_rest_strerror(e));
        rc = XP_ERR_CONFIG;
        goto out;
    }
    if ((e = gs_rest_group_info(r, l->group, &gi)) != GS_REST_OK) {
        rest_fail_why(r, e, "group server discovery", why, whysz);
        if (spool_list_group_info_tried(s, l->id, now) == XP_OK)
            l->group_info_tried = now;
        rc = XP_ERR_TEMP;
        goto out;
    }
    rc = XP_ERR_NOMEM;
    /* an answer without methods (or key transports) says nothing about
     * them: the runner's rewrap call decides, as before discovery */
    if ((gi.kt_algs_known && (kts = join(gi.kt_algs, gi.n_kt_algs)) == NULL) ||
        (gi.n_methods > 0 && (methods = join(gi.methods, gi.n_methods)) == NULL))
        goto out;
    if ((rc = spool_list_set_group_info(s, l->id, kts, methods, now)) != XP_OK) {
        snprintf(why, whysz, "cannot store the group's discovery answer: %s", xp_strerror(rc));
        goto out;
    }
    free(l->kt_algs);
    free(l->group_methods);
    l->kt_algs = kts;
    l->group_methods = methods;
    l->group_info_at = now;
    kts = methods = NULL;
    rc = XP_OK;
out:
    free(kts);
    free(methods);
    gs_group_info_clear(&gi);
    gs_rest_free(r);
    return rc;
}

xp_err xp_group_accepts(const xp_list *l, const char *kt, char *why, size_t whysz)
{
    why[0] = '\0';
    if (kt == NULL)
        return XP_OK;
    if (l->mode != XP_MODE_FORWARD && strcmp(kt, "ECDH") == 0) {
        snprintf(why, whysz, "%s", MSG_EC_REWRAP);
        return XP_ERR_REFUSED;
    }
    if (l->mode == XP_MODE_GROUP_SECRET && l->group_methods != NULL && !in_list(l->group_methods, "group-secret")) {
        snprintf(why, whysz, "%s", MSG_NO_SECRET);
        return XP_ERR_REFUSED;
    }
    if (l->kt_algs == NULL || in_list(l->kt_algs, kt))
        return XP_OK;
    if (strcmp(kt, "RSA-PKCS1-v1_5") == 0)
        snprintf(why, whysz, "%s (it accepts %s)", MSG_V15_REFUSED, l->kt_algs);
    else
        snprintf(why, whysz, "key transport %s is not accepted by this group (it accepts %s)", kt, l->kt_algs);
    return XP_ERR_REFUSED;
}
