/* restparse.c: see restparse.h. Every cap on what a server may send is
 * here, next to the parser it bounds. */
#include "restparse.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "util.h"

#define MAX_RI_LEN (64u * 1024)  /* one RecipientInfo, DER */
#define MAX_KEY_LEN 64           /* content key or secret key */
#define MAX_LIST_ITEMS 100000    /* RIs in a rewrap answer (one per member) */
#define MAX_INFO_ITEMS 1024      /* methods, key versions, secret key versions */
#define MAX_STRING 4096          /* name, address, certificate_server */
#define MAX_ADDRESS 320          /* a member's address in a rewrap answer */
#define MAX_METHOD 64
#define MAX_KEK_ID 256
#define MAX_WRAPPED_KEY 2048

void gs_rest_sanitise(char *dst, size_t size, const char *src)
{
    size_t o = 0;
    if (size == 0)
        return;
    for (const unsigned char *p = (const unsigned char *)src; src != NULL && *p && o + 1 < size; p++)
        dst[o++] = (*p >= 0x20 && *p <= 0x7e) ? (char)*p : '?';
    dst[o] = '\0';
}

static gs_rest_err bad(char *why, size_t why_size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static gs_rest_err bad(char *why, size_t why_size, const char *fmt, ...)
{
    char line[256];
    va_list ap;
    if (why == NULL || why_size == 0)
        return GS_REST_ERR_BAD_ANSWER;
    va_start(ap, fmt);
    (void)vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    gs_rest_sanitise(why, why_size, line);
    return GS_REST_ERR_BAD_ANSWER;
}

gs_rest_err gs_rest_parse_status(long status)
{
    if (status >= 200 && status < 300)
        return GS_REST_OK;
    switch (status) {
    case 401: return GS_REST_ERR_UNAUTHORIZED;
    case 403: return GS_REST_ERR_FORBIDDEN;
    case 404: return GS_REST_ERR_NOT_FOUND;
    /* the server (or a proxy in front, HAProxy's "timeout http-request")
     * gave up waiting for our request: nothing was refused, asking again
     * may work (RFC 9110 15.5.9), unlike the other 4xx */
    case 408: return GS_REST_ERR_TIMEOUT;
    case 429: return GS_REST_ERR_RATE_LIMITED;
    case 503: return GS_REST_ERR_UNAVAILABLE;
    default: break;
    }
    if (status >= 400 && status < 500)
        return GS_REST_ERR_REJECTED;
    if (status >= 500 && status < 600)
        return GS_REST_ERR_SERVER;
    return GS_REST_ERR_BAD_ANSWER;
}

bool gs_rest_parse_is_json(const char *content_type)
{
    static const char json[] = "application/json";
    const char *p;
    if (content_type == NULL)
        return false;
    for (p = content_type; *p == ' ' || *p == '\t'; p++)
        ;
    if (strncasecmp(p, json, sizeof(json) - 1) != 0)
        return false;
    p += sizeof(json) - 1;
    while (*p == ' ' || *p == '\t')
        p++;
    return *p == '\0' || *p == ';';
}

/* The body as a JSON object (duplicate names refused). */
static gs_rest_err parse_object(const unsigned char *body, size_t len, json_t **root, char *why, size_t why_size)
{
    json_error_t jerr;
    *root = NULL;
    if (body == NULL || len == 0)
        return bad(why, why_size, "empty answer");
    *root = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (*root == NULL)
        return bad(why, why_size, "answer is not JSON: %s", jerr.text);
    if (!json_is_object(*root)) {
        json_decref(*root);
        *root = NULL;
        return bad(why, why_size, "JSON answer is not an object");
    }
    return GS_REST_OK;
}

void gs_rest_parse_error(const unsigned char *body, size_t len, char *code, size_t code_size, char *message,
                         size_t message_size)
{
    json_t *root = NULL, *e, *c, *m;

    if (code_size > 0)
        code[0] = '\0';
    if (message_size > 0)
        message[0] = '\0';
    if (parse_object(body, len, &root, NULL, 0) != GS_REST_OK)
        return;
    e = json_object_get(root, "error");
    if (json_is_object(e)) {
        c = json_object_get(e, "code");
        m = json_object_get(e, "message");
        if (json_is_string(c))
            gs_rest_sanitise(code, code_size, json_string_value(c));
        if (json_is_string(m))
            gs_rest_sanitise(message, message_size, json_string_value(m));
    }
    json_decref(root);
}

/* Decodes a base64 string member; max is the decoded size cap. */
static gs_rest_err get_b64(json_t *obj, const char *name, size_t max, unsigned char **out, size_t *len, char *why,
                           size_t why_size)
{
    json_t *v = json_object_get(obj, name);
    size_t maxin = (max / 3 + 1) * 4;

    *out = NULL;
    *len = 0;
    if (!json_is_string(v))
        return bad(why, why_size, "'%s' %s", name, v == NULL ? "missing" : "is not a string");
    if (util_b64_decode(json_string_value(v), json_string_length(v), maxin, out, len) != UTIL_OK || *len == 0 ||
        *len > max) {
        if (*out != NULL)
            OPENSSL_clear_free(*out, *len);
        *out = NULL;
        *len = 0;
        return bad(why, why_size, "'%s' is not base64 of 1 to %zu bytes", name, max);
    }
    return GS_REST_OK;
}

/* jansson frees without wiping: clear a string that held a secret first.
 * The buffer is jansson's own heap copy, so writing to it is safe. */
static void wipe_json_string(json_t *obj, const char *name)
{
    json_t *v = json_object_get(obj, name);
    if (json_is_string(v) && json_string_length(v) > 0)
        OPENSSL_cleanse((void *)json_string_value(v), json_string_length(v));
}

static int64_t get_version(json_t *obj, const char *name)
{
    json_t *v = json_object_get(obj, name);
    if (json_is_integer(v) && json_integer_value(v) >= 0)
        return (int64_t)json_integer_value(v);
    return -1;
}

/* ---- group info ------------------------------------------------------- */

void gs_group_info_clear(gs_group_info *gi)
{
    if (gi == NULL)
        return;
    free(gi->name);
    free(gi->address);
    free(gi->certificate_server);
    for (size_t i = 0; i < gi->n_methods; i++)
        free(gi->methods[i]);
    free(gi->methods);
    OPENSSL_free(gi->key_versions); /* version numbers, nothing secret */
    for (size_t i = 0; i < gi->n_kt_algs; i++)
        free(gi->kt_algs[i]);
    free(gi->kt_algs);
    memset(gi, 0, sizeof(*gi));
}

/* A string of at most max printable ASCII bytes. What group info holds is
 * printable on the server (group names, addresses, URLs, method names)
 * and groupmail prints it in its error lines and progress: anything else
 * (a NUL, an escape sequence, a newline) is a malformed answer. */
static bool printable_string(json_t *v, size_t max)
{
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);

    if (s == NULL || n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e)
            return false;
    return true;
}

/* A JSON array of short printable strings into a string vector; *n
 * counts what was copied so far, so the caller's clear frees a partial
 * one. Returns OK, NOMEM, or BAD_ANSWER (why says which member). */
static gs_rest_err string_array(json_t *a, const char *name, size_t max_items, size_t max_len, char ***out,
                                size_t *n, char *why, size_t why_size)
{
    size_t i;
    json_t *v;

    if (!json_is_array(a) || json_array_size(a) > max_items)
        return bad(why, why_size, "'%s' is not an array of at most %zu", name, max_items);
    if (json_array_size(a) > 0 && (*out = calloc(json_array_size(a), sizeof(char *))) == NULL)
        return GS_REST_ERR_NOMEM;
    json_array_foreach(a, i, v)
    {
        if (!printable_string(v, max_len))
            return bad(why, why_size, "'%s' item %zu is not printable text of at most %zu characters", name, i,
                       max_len);
        if (((*out)[i] = strdup(json_string_value(v))) == NULL)
            return GS_REST_ERR_NOMEM;
        *n = i + 1;
    }
    return GS_REST_OK;
}

/* A string member (printable, bounded); absent and optional = "". */
static char *dup_string_member(json_t *obj, const char *name, bool required, bool *bad_field)
{
    json_t *v = json_object_get(obj, name);
    if (v == NULL && !required)
        return strdup("");
    if (!printable_string(v, MAX_STRING)) {
        *bad_field = true;
        return NULL;
    }
    return strdup(json_string_value(v));
}

gs_rest_err gs_rest_parse_group_info(const unsigned char *body, size_t len, gs_group_info *out, char *why,
                                     size_t why_size)
{
    gs_rest_err err;
    json_t *root = NULL, *a, *v;
    bool bad_field = false;
    size_t i;
    gs_group_info gi = {0};

    if (out == NULL)
        return GS_REST_ERR_ARGS;
    memset(out, 0, sizeof(*out));
    if ((err = parse_object(body, len, &root, why, why_size)) != GS_REST_OK)
        goto out;
    err = GS_REST_ERR_NOMEM;
    gi.name = dup_string_member(root, "name", true, &bad_field);
    gi.address = dup_string_member(root, "address", false, &bad_field);
    gi.certificate_server = dup_string_member(root, "certificate_server", false, &bad_field);
    if (bad_field) {
        err = bad(why, why_size, "'name', 'address' or 'certificate_server' missing or not printable text");
        goto out;
    }
    if (gi.name == NULL || gi.address == NULL || gi.certificate_server == NULL)
        goto out;
    a = json_object_get(root, "methods");
    if (a != NULL) {
        if (!json_is_array(a) || json_array_size(a) > MAX_INFO_ITEMS) {
            err = bad(why, why_size, "'methods' is not an array of at most %d", MAX_INFO_ITEMS);
            goto out;
        }
        if (json_array_size(a) > 0 && (gi.methods = calloc(json_array_size(a), sizeof(char *))) == NULL)
            goto out;
        json_array_foreach(a, i, v)
        {
            if (!printable_string(v, MAX_METHOD)) {
                err = bad(why, why_size, "'methods' holds something other than a method name");
                goto out;
            }
            if ((gi.methods[i] = strdup(json_string_value(v))) == NULL)
                goto out;
            gi.n_methods = i + 1;
        }
    }
    a = json_object_get(root, "key_transports");
    if (a != NULL) {
        if ((err = string_array(a, "key_transports", MAX_INFO_ITEMS, MAX_METHOD, &gi.kt_algs,
                                &gi.n_kt_algs, why, why_size)) != GS_REST_OK)
            goto out;
        gi.kt_algs_known = true;
        err = GS_REST_ERR_NOMEM;
    }
    a = json_object_get(root, "key_versions");
    if (a != NULL) {
        if (!json_is_array(a) || json_array_size(a) > MAX_INFO_ITEMS) {
            err = bad(why, why_size, "'key_versions' is not an array of at most %d", MAX_INFO_ITEMS);
            goto out;
        }
        if (json_array_size(a) > 0 && (gi.key_versions = OPENSSL_zalloc(json_array_size(a) * sizeof(uint64_t))) == NULL)
            goto out;
        json_array_foreach(a, i, v)
        {
            /* a bare number, or an object with "version" */
            json_t *n = json_is_object(v) ? json_object_get(v, "version") : v;
            if (!json_is_integer(n) || json_integer_value(n) < 0) {
                err = bad(why, why_size, "'key_versions' holds something other than a version number");
                goto out;
            }
            gi.key_versions[i] = (uint64_t)json_integer_value(n);
            gi.n_key_versions = i + 1;
        }
    }
    *out = gi;
    memset(&gi, 0, sizeof(gi));
    err = GS_REST_OK;
out:
    gs_group_info_clear(&gi);
    json_decref(root);
    return err;
}

/* ---- PEM ---------------------------------------------------------------- */

gs_rest_err gs_rest_parse_pem(const unsigned char *body, size_t len, char **pem, size_t *pem_len, char *why,
                              size_t why_size)
{
    static const char marker[] = "-----BEGIN CERTIFICATE-----";
    char *copy;

    if (pem == NULL)
        return GS_REST_ERR_ARGS;
    *pem = NULL;
    if (pem_len != NULL)
        *pem_len = 0;
    if (body == NULL || len == 0 || memchr(body, '\0', len) != NULL)
        return bad(why, why_size, "answer is not PEM text");
    if ((copy = malloc(len + 1)) == NULL)
        return GS_REST_ERR_NOMEM;
    memcpy(copy, body, len);
    copy[len] = '\0';
    if (strstr(copy, marker) == NULL) {
        free(copy);
        return bad(why, why_size, "answer holds no PEM certificate");
    }
    *pem = copy;
    if (pem_len != NULL)
        *pem_len = len;
    return GS_REST_OK;
}

/* ---- unwrap ------------------------------------------------------------ */

void gs_unwrap_result_clear(gs_unwrap_result *res)
{
    if (res == NULL)
        return;
    if (res->key != NULL)
        OPENSSL_clear_free(res->key, res->key_len);
    free(res->recipient_info);
    memset(res, 0, sizeof(*res));
    res->key_version = res->secret_version = -1;
}

/* One unwrap answer object for the requested delivery. */
static gs_rest_err unwrap_object(json_t *obj, gs_deliver deliver, gs_unwrap_result *res, char *why, size_t why_size)
{
    gs_rest_err err;

    gs_unwrap_result_clear(res);
    res->key_version = get_version(obj, "key_version");
    res->secret_version = get_version(obj, "secret_version");
    if (deliver == GS_DELIVER_TLS) {
        err = get_b64(obj, "key", MAX_KEY_LEN, &res->key, &res->key_len, why, why_size);
        wipe_json_string(obj, "key");
        if (err == GS_REST_OK && res->key_len != 16 && res->key_len != 24 && res->key_len != 32)
            err = bad(why, why_size, "'key' is %zu bytes, not 16, 24 or 32", res->key_len);
    } else {
        err = get_b64(obj, "recipient_info", MAX_RI_LEN, &res->recipient_info, &res->recipient_info_len, why,
                      why_size);
    }
    if (err != GS_REST_OK)
        gs_unwrap_result_clear(res);
    return err;
}

gs_rest_err gs_rest_parse_unwrap(const unsigned char *body, size_t len, gs_deliver deliver, gs_unwrap_result *out,
                                 char *why, size_t why_size)
{
    json_t *root = NULL;
    gs_rest_err err;

    if (out == NULL)
        return GS_REST_ERR_ARGS;
    memset(out, 0, sizeof(*out));
    out->key_version = out->secret_version = -1;
    if ((err = parse_object(body, len, &root, why, why_size)) == GS_REST_OK)
        err = unwrap_object(root, deliver, out, why, why_size);
    json_decref(root);
    return err;
}

/* Error of a batch item -> our enum (same meaning as the HTTP status). */
static gs_rest_err item_error(json_t *item)
{
    json_t *e = json_object_get(item, "error");
    json_t *st = json_object_get(item, "status");
    const char *code = NULL;

    if (json_is_integer(st) && json_integer_value(st) >= 400)
        return gs_rest_parse_status((long)json_integer_value(st));
    if (json_is_object(e) && json_is_string(json_object_get(e, "code")))
        code = json_string_value(json_object_get(e, "code"));
    if (code == NULL)
        return GS_REST_ERR_BAD_ANSWER;
    /* method_not_allowed without a status: the 403 of a deliver method
     * the group does not offer (a 405 always has its status) */
    if (strcmp(code, "not_a_member") == 0 || strcmp(code, "forbidden") == 0 || strcmp(code, "refused") == 0 ||
        strcmp(code, "method_not_allowed") == 0)
        return GS_REST_ERR_FORBIDDEN;
    if (strcmp(code, "rate_limited") == 0)
        return GS_REST_ERR_RATE_LIMITED;
    if (strcmp(code, "unavailable") == 0 || strcmp(code, "token_unavailable") == 0)
        return GS_REST_ERR_UNAVAILABLE;
    if (strcmp(code, "not_found") == 0)
        return GS_REST_ERR_NOT_FOUND;
    return GS_REST_ERR_REJECTED;
}

gs_rest_err gs_rest_parse_unwrap_batch(const unsigned char *body, size_t len, const gs_deliver *delivers, size_t n,
                                       gs_unwrap_result *outs, gs_rest_err *item_errs, char *why, size_t why_size)
{
    json_t *root = NULL, *res;
    gs_rest_err err;
    size_t i;

    if (delivers == NULL || outs == NULL || item_errs == NULL || n == 0)
        return GS_REST_ERR_ARGS;
    for (i = 0; i < n; i++) {
        memset(&outs[i], 0, sizeof(outs[i]));
        outs[i].key_version = outs[i].secret_version = -1;
        item_errs[i] = GS_REST_ERR_ARGS;
    }
    if ((err = parse_object(body, len, &root, why, why_size)) != GS_REST_OK)
        goto out;
    res = json_object_get(root, "results");
    if (res == NULL)
        res = json_object_get(root, "items");
    if (!json_is_array(res) || json_array_size(res) != n) {
        err = bad(why, why_size, "'results' is not an array of the %zu items asked", n);
        goto out;
    }
    for (i = 0; i < n; i++) {
        json_t *it = json_array_get(res, i), *st;
        if (!json_is_object(it)) {
            err = bad(why, why_size, "result %zu is not an object", i);
            goto out;
        }
        st = json_object_get(it, "status");
        if (json_object_get(it, "error") != NULL || (json_is_integer(st) && json_integer_value(st) >= 400))
            item_errs[i] = item_error(it);
        else
            item_errs[i] = unwrap_object(it, delivers[i], &outs[i], NULL, 0);
    }
    err = GS_REST_OK;
out:
    if (err != GS_REST_OK)
        for (i = 0; i < n; i++)
            gs_unwrap_result_clear(&outs[i]);
    json_decref(root);
    return err;
}

/* ---- rewrap ------------------------------------------------------------ */

void gs_ri_list_clear(gs_ri_list *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n; i++) {
        free(l->der[i]);
        if (l->member != NULL)
            free(l->member[i]);
    }
    free(l->der);
    free(l->len);
    free(l->member);
    memset(l, 0, sizeof(*l));
}

gs_rest_err gs_rest_parse_rewrap(const unsigned char *body, size_t len, gs_rewrap_to to, gs_ri_list *out, char *why,
                                 size_t why_size)
{
    gs_rest_err err;
    json_t *root = NULL, *arr, *v;
    size_t i, n;
    gs_ri_list l = {0};

    if (out == NULL)
        return GS_REST_ERR_ARGS;
    memset(out, 0, sizeof(*out));
    if ((err = parse_object(body, len, &root, why, why_size)) != GS_REST_OK)
        goto out;
    if (to == GS_REWRAP_GROUP_SECRET && json_object_get(root, "recipient_info") != NULL) {
        n = 1;
        arr = NULL;
    } else {
        arr = json_object_get(root, "recipient_infos");
        if (!json_is_array(arr) || json_array_size(arr) > MAX_LIST_ITEMS) {
            err = bad(why, why_size, "'recipient_infos' missing or not an array of at most %d", MAX_LIST_ITEMS);
            goto out;
        }
        n = json_array_size(arr);
        if (n == 0 && to == GS_REWRAP_GROUP_SECRET) {
            err = bad(why, why_size, "no RecipientInfo in the answer");
            goto out;
        }
    }
    err = GS_REST_ERR_NOMEM;
    if (n > 0 && ((l.der = calloc(n, sizeof(*l.der))) == NULL || (l.len = calloc(n, sizeof(*l.len))) == NULL))
        goto out;
    if (arr == NULL) {
        if ((err = get_b64(root, "recipient_info", MAX_RI_LEN, &l.der[0], &l.len[0], why, why_size)) != GS_REST_OK)
            goto out;
        l.n = 1;
    } else {
        json_array_foreach(arr, i, v)
        {
            size_t maxin = (MAX_RI_LEN / 3 + 1) * 4;
            if (!json_is_string(v) ||
                util_b64_decode(json_string_value(v), json_string_length(v), maxin, &l.der[i], &l.len[i]) !=
                    UTIL_OK ||
                l.len[i] == 0 || l.len[i] > MAX_RI_LEN) {
                free(l.der[i]);
                l.der[i] = NULL;
                err = bad(why, why_size, "'recipient_infos' item %zu is not base64 of 1 to %u bytes", i, MAX_RI_LEN);
                goto out;
            }
            l.n = i + 1;
        }
        /* "members": the member address of each RecipientInfo, in order */
        json_t *who = json_object_get(root, "members");
        if (who != NULL && l.n > 0) {
            size_t nw = 0;
            char **names = NULL;
            err = string_array(who, "members", MAX_LIST_ITEMS, MAX_ADDRESS, &names, &nw, why, why_size);
            if (err == GS_REST_OK && nw != l.n)
                err = bad(why, why_size, "'members' names %zu members for %zu RecipientInfos", nw, l.n);
            if (err != GS_REST_OK) {
                for (size_t k = 0; k < nw; k++)
                    free(names[k]);
                free(names);
                goto out;
            }
            l.member = names;
        }
    }
    *out = l;
    memset(&l, 0, sizeof(l));
    err = GS_REST_OK;
out:
    gs_ri_list_clear(&l);
    json_decref(root);
    return err;
}

/* ---- secret keys ------------------------------------------------------- */

void gs_secret_keys_clear(gs_secret_keys *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n; i++) {
        OPENSSL_clear_free(s->keys[i].kek_id, s->keys[i].kek_id_len);
        OPENSSL_clear_free(s->keys[i].wrapped_key, s->keys[i].wrapped_key_len);
    }
    OPENSSL_free(s->keys);
    memset(s, 0, sizeof(*s));
}

gs_rest_err gs_rest_parse_secret_keys(const unsigned char *body, size_t len, gs_secret_keys *out, char *why,
                                      size_t why_size)
{
    gs_rest_err err;
    json_t *root = NULL, *arr, *v;
    size_t i, n;
    gs_secret_keys s = {0};

    if (out == NULL)
        return GS_REST_ERR_ARGS;
    memset(out, 0, sizeof(*out));
    if ((err = parse_object(body, len, &root, why, why_size)) != GS_REST_OK)
        goto out;
    arr = json_object_get(root, "keys");
    if (!json_is_array(arr) || json_array_size(arr) > MAX_INFO_ITEMS) {
        err = bad(why, why_size, "'keys' missing or not an array of at most %d", MAX_INFO_ITEMS);
        goto out;
    }
    n = json_array_size(arr);
    err = GS_REST_ERR_NOMEM;
    if (n > 0 && (s.keys = OPENSSL_zalloc(n * sizeof(*s.keys))) == NULL)
        goto out;
    json_array_foreach(arr, i, v)
    {
        gs_secret_key *k = &s.keys[i];
        json_t *alg, *ver;
        if (!json_is_object(v)) {
            err = bad(why, why_size, "'keys' item %zu is not an object", i);
            goto out;
        }
        s.n = i + 1;
        ver = json_object_get(v, "version");
        if (!json_is_integer(ver) || json_integer_value(ver) < 0) {
            err = bad(why, why_size, "'keys' item %zu has no version number", i);
            goto out;
        }
        k->version = (uint64_t)json_integer_value(ver);
        if ((err = get_b64(v, "kek_id", MAX_KEK_ID, &k->kek_id, &k->kek_id_len, why, why_size)) != GS_REST_OK ||
            (err = get_b64(v, "wrapped_key", MAX_WRAPPED_KEY, &k->wrapped_key, &k->wrapped_key_len, why,
                           why_size)) != GS_REST_OK)
            goto out;
        alg = json_object_get(v, "algorithm");
        if (alg == NULL)
            util_strlcpy(k->algorithm, "RSA-OAEP", sizeof(k->algorithm));
        else if (!json_is_string(alg) ||
                 util_strlcpy(k->algorithm, json_string_value(alg), sizeof(k->algorithm)) != UTIL_OK) {
            err = bad(why, why_size, "'keys' item %zu has a malformed algorithm", i);
            goto out;
        }
    }
    *out = s;
    memset(&s, 0, sizeof(s));
    err = GS_REST_OK;
out:
    gs_secret_keys_clear(&s);
    json_decref(root);
    return err;
}
