/*
 * gsk_file.c: the key shipment file (DER frame, JSON manifest, signature)
 * and the transport key file. See gsk.h for the format. Nothing here
 * touches a token.
 *
 * The reader is strict on purpose: the manifest is parsed only after its
 * signature verified, every field is required and typed, unknown fields
 * are refused, and the DER frame must re-encode to the very same bytes.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "gsk_internal.h"
#include "log.h"
#include "util.h"

#define CERT_PEM_MAX (64u * 1024u)
#define WRAPPED_MAX (16u * 1024u)
#define WRAPPED_KEK_MAX 2048u

ASN1_SEQUENCE(GSK_FILE) = {
    ASN1_SIMPLE(GSK_FILE, format, ASN1_UTF8STRING),
    ASN1_SIMPLE(GSK_FILE, manifest, ASN1_OCTET_STRING),
    ASN1_SIMPLE(GSK_FILE, signature, ASN1_OCTET_STRING),
} ASN1_SEQUENCE_END(GSK_FILE)
IMPLEMENT_ASN1_FUNCTIONS(GSK_FILE)

/* ---- errors --------------------------------------------------------------- */

static _Thread_local char detail[1024];

const char *gsk_err_detail(void)
{
    return detail;
}

gsk_err gsk_fail(gsk_err err, const char *fmt, ...)
{
    char tmp[sizeof(detail)];
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    memcpy(detail, tmp, sizeof(detail));
    return err;
}

gsk_err gsk_hsm_fail(hsm_err he, const char *what)
{
    const char *d = hsm_last_error_detail();
    gsk_err err = GSK_ERR_HSM;

    switch (he) {
    case HSM_ERR_PIN_INCORRECT:
    case HSM_ERR_PIN_LOCKED:
    case HSM_ERR_PIN_SOURCE:
    case HSM_ERR_TOKEN_ABSENT:
    case HSM_ERR_TOKEN_NOT_FOUND:
    case HSM_ERR_NOT_LOGGED_IN:
    case HSM_ERR_MODULE:
        err = GSK_ERR_TOKEN;
        break;
    case HSM_ERR_KEY_EXISTS:
        err = GSK_ERR_EXISTS;
        break;
    case HSM_ERR_KEY_POLICY:
        err = GSK_ERR_POLICY;
        break;
    case HSM_ERR_NOMEM:
        err = GSK_ERR_NOMEM;
        break;
    default:
        break;
    }
    return gsk_fail(err, "%s: %s%s%s%s", what, hsm_strerror(he), d[0] ? " (" : "", d, d[0] ? ")" : "");
}

const char *gsk_strerror(gsk_err err)
{
    switch (err) {
    case GSK_OK: return "ok";
    case GSK_ERR_NOMEM: return "out of memory";
    case GSK_ERR_ARGS: return "invalid argument";
    case GSK_ERR_FORMAT: return "not a key shipment or malformed";
    case GSK_ERR_SIGNATURE: return "signature does not verify";
    case GSK_ERR_SIGNER: return "signed by another CA";
    case GSK_ERR_TRANSPORT: return "made for another transport key";
    case GSK_ERR_EXISTS: return "key already on the token";
    case GSK_ERR_TOKEN: return "token unavailable or PIN refused";
    case GSK_ERR_POLICY: return "key policy forbids it";
    case GSK_ERR_PROOF: return "imported key failed its decryption test";
    case GSK_ERR_HSM: return "token operation failed";
    }
    return "unknown error";
}

const char *gsk_kind_name(gsk_kind k)
{
    switch (k) {
    case GSK_KIND_GROUP: return "group";
    case GSK_KIND_SECRET: return "secret";
    case GSK_KIND_REJECT: return "reject";
    case GSK_KIND_CA: return "ca";
    }
    return "?";
}

/* ---- manifests -------------------------------------------------------------- */

gsk_err gsk_manifest_new(size_t n_entries, gsk_manifest **out)
{
    gsk_manifest *m;

    *out = NULL;
    if (n_entries == 0 || n_entries > GSK_KEYS_MAX)
        return gsk_fail(GSK_ERR_ARGS, "a shipment holds 1 to %u keys", GSK_KEYS_MAX);
    if ((m = calloc(1, sizeof(*m))) == NULL || (m->entries = calloc(n_entries, sizeof(*m->entries))) == NULL) {
        free(m);
        return GSK_ERR_NOMEM;
    }
    m->n_entries = n_entries;
    *out = m;
    return GSK_OK;
}

void gsk_manifest_free(gsk_manifest *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; m->entries != NULL && i < m->n_entries; i++) {
        free(m->entries[i].cert_pem);
        free(m->entries[i].wrapped);
    }
    free(m->entries);
    free(m->wrapped_kek);
    free(m);
}

long gsk_manifest_find(const gsk_manifest *m, gsk_kind k, unsigned v)
{
    for (size_t i = 0; i < m->n_entries; i++)
        if (m->entries[i].kind == k && (k == GSK_KIND_REJECT || k == GSK_KIND_CA || m->entries[i].version == v))
            return (long)i;
    return -1;
}

void gsk_fingerprint(const unsigned char *spki, size_t len, char hex[65])
{
    unsigned char md[SHA256_DIGEST_LENGTH];

    SHA256(spki, len, md);
    util_hex(md, sizeof(md), hex);
}

void gsk_fingerprint_spoken(const char hex[65], char out[80])
{
    size_t o = 0;

    for (size_t i = 0; i < 64 && hex[i] != '\0'; i++) {
        if (i > 0 && i % 4 == 0)
            out[o++] = ' ';
        out[o++] = hex[i];
    }
    out[o] = '\0';
}

static int cert_fingerprint(X509 *cert, char hex[65])
{
    unsigned char *der = NULL;
    int len = i2d_X509(cert, &der);

    if (len <= 0)
        return -1;
    gsk_fingerprint(der, (size_t)len, hex);
    OPENSSL_free(der);
    return 0;
}

/* ---- manifest to JSON ----------------------------------------------------------- */

static json_t *b64_value(const unsigned char *p, size_t len)
{
    char *s = NULL;
    json_t *j;

    if (util_b64_encode(p, len, &s) != UTIL_OK)
        return NULL;
    j = json_string(s);
    free(s);
    return j;
}

static json_t *hex_value(const unsigned char *p, size_t len)
{
    char buf[2 * 64 + 1];

    if (len > 64)
        return NULL;
    util_hex(p, len, buf);
    return json_string(buf);
}

/* "a,b,c" -> ["a","b","c"] */
static json_t *methods_value(const char *list)
{
    json_t *a = json_array();
    const char *p = list;

    while (a != NULL && *p != '\0') {
        size_t n = strcspn(p, ",");
        if (n > 0 && json_array_append_new(a, json_stringn(p, n)) != 0) {
            json_decref(a);
            return NULL;
        }
        p += n;
        if (*p == ',')
            p++;
    }
    return a;
}

static const char *hash_name(hsm_oaep_hash h)
{
    return h == HSM_OAEP_SHA256 ? "RSA-OAEP-SHA256" : "RSA-OAEP-SHA1";
}

static json_t *key_json(const gsk_key *k)
{
    json_t *o = json_object();

    if (o == NULL)
        return NULL;
    if (json_object_set_new(o, "kind", json_string(gsk_kind_name(k->kind))) != 0)
        goto bad;
    if (k->kind != GSK_KIND_REJECT && k->kind != GSK_KIND_CA &&
        (json_object_set_new(o, "version", json_integer(k->version)) != 0 ||
         json_object_set_new(o, "state", json_string(k->current ? "current" : "old")) != 0))
        goto bad;
    if (json_object_set_new(o, "label", json_string(k->label)) != 0 ||
        json_object_set_new(o, "id", hex_value(k->id, k->id_len)) != 0)
        goto bad;
    if ((k->kind == GSK_KIND_GROUP || k->kind == GSK_KIND_CA) &&
        json_object_set_new(o, "certificate", json_string(k->cert_pem)) != 0)
        goto bad;
    if (k->kind == GSK_KIND_SECRET && json_object_set_new(o, "kek_id", hex_value(k->kek_id, sizeof(k->kek_id))) != 0)
        goto bad;
    if (json_object_set_new(o, "wrapping", json_string("AES-KEY-WRAP-PAD")) != 0 ||
        json_object_set_new(o, "wrapped", b64_value(k->wrapped, k->wrapped_len)) != 0)
        goto bad;
    return o;
bad:
    json_decref(o);
    return NULL;
}

static gsk_err manifest_json(const gsk_manifest *m, char **text)
{
    json_t *root = NULL, *keys = NULL;
    gsk_err err = GSK_ERR_NOMEM;

    *text = NULL;
    keys = json_array();
    for (size_t i = 0; keys != NULL && i < m->n_entries; i++) {
        if (m->entries[i].wrapped == NULL ||
            ((m->entries[i].kind == GSK_KIND_GROUP || m->entries[i].kind == GSK_KIND_CA) &&
             m->entries[i].cert_pem == NULL)) {
            err = gsk_fail(GSK_ERR_ARGS, "key %s has no wrapped value or certificate", m->entries[i].label);
            goto out;
        }
        if (json_array_append_new(keys, key_json(&m->entries[i])) != 0)
            goto out;
    }
    if (keys == NULL)
        goto out;
    root = json_pack("{s:s, s:s, s:s, s:s, s:s, s:{s:s, s:s}, s:{s:s}, s:{s:s, s:s, s:o}, "
                     "s:{s:s, s:s, s:o, s:s, s:b, s:b}, s:b, s:O}",
                     "format", GSK_FORMAT, "ceremony", m->ceremony, "created", m->created, "exported_by",
                     m->exported_by, "source_token", m->source_token, "signer", "ca_sha256", m->signer_ca_sha256,
                     "algorithm", m->signer_algorithm, "transport_key", "sha256", m->transport_sha256,
                     "one_time_key", "algorithm", "AES-256", "wrapping", hash_name(m->kek_hash), "wrapped",
                     b64_value(m->wrapped_kek, m->wrapped_kek_len), "group", "name", m->group.name, "address",
                     m->group.address, "methods", methods_value(m->group.methods), "key", m->group.keyspec,
                     "allow_pkcs1v15", (int)m->group.allow_pkcs1v15, "replicable", (int)m->group.replicable,
                     "complete", (int)m->complete, "keys", keys);
    if (root == NULL)
        goto out;
    /* A CA shipment belongs to no group. */
    if (m->group.name[0] == '\0' && json_object_del(root, "group") != 0)
        goto out;
    /* What the receiving server records for the group beside its keys. */
    if (m->group.name[0] != '\0') {
        json_t *g = json_object_get(root, "group");
        if (m->group.member_wrap[0] != '\0' &&
            json_object_set_new(g, "member_wrap", json_string(m->group.member_wrap)) != 0)
            goto out;
        if (json_object_set_new(g, "policy", json_string(m->group.policy)) != 0)
            goto out;
    }
    /* Indented: readable once cut out of the file (docs/operations.md). */
    if ((*text = json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII)) == NULL)
        goto out;
    err = GSK_OK;
out:
    json_decref(keys);
    json_decref(root);
    return err;
}

/* ---- JSON to manifest (strict) --------------------------------------------------- */

/* Fails unless o has exactly the keys in `allowed` (NULL-terminated). */
static gsk_err only_keys(json_t *o, const char *where, const char *const *allowed)
{
    const char *k;
    json_t *v;

    json_object_foreach(o, k, v) {
        size_t i;
        (void)v;
        for (i = 0; allowed[i] != NULL; i++)
            if (strcmp(k, allowed[i]) == 0)
                break;
        if (allowed[i] == NULL) {
            char q[48]; /* the name is the file's: shown escaped, cut short */
            return gsk_fail(GSK_ERR_FORMAT, "manifest: unknown field \"%s\" in %s", log_quote(q, sizeof(q), k),
                            where);
        }
    }
    return GSK_OK;
}

static bool printable(const char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

/* A printable ASCII string field of 1..cap-1 bytes, copied into buf. */
static gsk_err get_str(json_t *o, const char *k, char *buf, size_t cap)
{
    const char *s = json_string_value(json_object_get(o, k));

    if (s == NULL || s[0] == '\0' || strlen(s) >= cap || !printable(s))
        return gsk_fail(GSK_ERR_FORMAT, "manifest: field %s missing, not a string, or malformed", k);
    memcpy(buf, s, strlen(s) + 1);
    return GSK_OK;
}

/* A lowercase hex digit's value, or -1: the manifest's hex is lowercase
 * only, so one file has one spelling. */
static int lower_hex_digit(int c) { return c >= 'A' && c <= 'F' ? -1 : util_hex_digit(c); }

/* Lowercase hex of 1..cap bytes (exact when exact is set). */
static gsk_err get_hex(json_t *o, const char *k, unsigned char *buf, size_t cap, size_t *len, bool exact)
{
    const char *s = json_string_value(json_object_get(o, k));
    size_t n = s != NULL ? strlen(s) : 0;

    if (n == 0 || n % 2 != 0 || n / 2 > cap || (exact && n / 2 != cap))
        return gsk_fail(GSK_ERR_FORMAT, "manifest: field %s is not hex of the right length", k);
    for (size_t i = 0; i < n / 2; i++) {
        int hi = lower_hex_digit((unsigned char)s[2 * i]);
        int lo = lower_hex_digit((unsigned char)s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return gsk_fail(GSK_ERR_FORMAT, "manifest: field %s is not lowercase hex", k);
        buf[i] = (unsigned char)(hi << 4 | lo);
    }
    if (len != NULL)
        *len = n / 2;
    return GSK_OK;
}

static gsk_err get_b64(json_t *o, const char *k, size_t max, unsigned char **out, size_t *len)
{
    const char *s = json_string_value(json_object_get(o, k));

    *out = NULL;
    *len = 0;
    if (s == NULL || util_b64_decode(s, strlen(s), 4 * max / 3 + 4, out, len) != UTIL_OK || *len == 0 ||
        *len > max) {
        free(*out);
        *out = NULL;
        return gsk_fail(GSK_ERR_FORMAT, "manifest: field %s is not base64 of the right size", k);
    }
    return GSK_OK;
}

static gsk_err parse_key(json_t *o, gsk_key *k)
{
    static const char *const allowed[] = {"kind", "version", "state", "label", "id", "certificate",
                                          "kek_id", "wrapping", "wrapped", NULL};
    const char *kind = json_string_value(json_object_get(o, "kind"));
    const char *state, *wrapping;
    json_t *ver;
    gsk_err err;

    if (!json_is_object(o))
        return gsk_fail(GSK_ERR_FORMAT, "manifest: a key is not an object");
    if ((err = only_keys(o, "a key", allowed)) != GSK_OK)
        return err;
    if (kind != NULL && strcmp(kind, "ca") == 0)
        k->kind = GSK_KIND_CA;
    else if (kind != NULL && strcmp(kind, "group") == 0)
        k->kind = GSK_KIND_GROUP;
    else if (kind != NULL && strcmp(kind, "secret") == 0)
        k->kind = GSK_KIND_SECRET;
    else if (kind != NULL && strcmp(kind, "reject") == 0)
        k->kind = GSK_KIND_REJECT;
    else
        return gsk_fail(GSK_ERR_FORMAT, "manifest: key kind must be group, secret, reject or ca");
    ver = json_object_get(o, "version");
    state = json_string_value(json_object_get(o, "state"));
    if (k->kind == GSK_KIND_REJECT || k->kind == GSK_KIND_CA) {
        if (ver != NULL || state != NULL)
            return gsk_fail(GSK_ERR_FORMAT, "manifest: the %s key has no version", kind);
    } else {
        if (!json_is_integer(ver) || json_integer_value(ver) < 1 || json_integer_value(ver) > 1000000)
            return gsk_fail(GSK_ERR_FORMAT, "manifest: key version missing or out of range");
        k->version = (unsigned)json_integer_value(ver);
        if (state == NULL || (strcmp(state, "current") != 0 && strcmp(state, "old") != 0))
            return gsk_fail(GSK_ERR_FORMAT, "manifest: key state must be current or old");
        k->current = strcmp(state, "current") == 0;
    }
    if ((err = get_str(o, "label", k->label, sizeof(k->label))) != GSK_OK ||
        (err = get_hex(o, "id", k->id, sizeof(k->id), &k->id_len, false)) != GSK_OK)
        return err;
    if ((json_object_get(o, "certificate") != NULL) != (k->kind == GSK_KIND_GROUP || k->kind == GSK_KIND_CA) ||
        (json_object_get(o, "kek_id") != NULL) != (k->kind == GSK_KIND_SECRET))
        return gsk_fail(GSK_ERR_FORMAT, "manifest: key %s has the wrong fields for its kind", k->label);
    if (k->kind == GSK_KIND_GROUP || k->kind == GSK_KIND_CA) {
        const char *pem = json_string_value(json_object_get(o, "certificate"));
        BIO *b = NULL;
        X509 *c = NULL;
        size_t n = pem != NULL ? strlen(pem) : 0;
        if (n == 0 || n > CERT_PEM_MAX || (b = BIO_new_mem_buf(pem, (int)n)) == NULL ||
            (c = PEM_read_bio_X509(b, NULL, util_pem_no_passphrase, NULL)) == NULL || (k->cert_pem = strdup(pem)) == NULL) {
            BIO_free(b);
            return gsk_fail(GSK_ERR_FORMAT, "manifest: key %s: certificate is not PEM X.509", k->label);
        }
        X509_free(c);
        BIO_free(b);
    }
    if (k->kind == GSK_KIND_SECRET &&
        (err = get_hex(o, "kek_id", k->kek_id, sizeof(k->kek_id), NULL, true)) != GSK_OK)
        return err;
    wrapping = json_string_value(json_object_get(o, "wrapping"));
    if (wrapping == NULL || strcmp(wrapping, "AES-KEY-WRAP-PAD") != 0)
        return gsk_fail(GSK_ERR_FORMAT, "manifest: key wrapping must be AES-KEY-WRAP-PAD");
    return get_b64(o, "wrapped", WRAPPED_MAX, &k->wrapped, &k->wrapped_len);
}

static gsk_err parse_group(json_t *g, gsk_manifest *m)
{
    static const char *const allowed[] = {"name",       "address",     "methods", "key", "allow_pkcs1v15",
                                          "replicable", "member_wrap", "policy",  NULL};
    json_t *meth = json_object_get(g, "methods"), *v15 = json_object_get(g, "allow_pkcs1v15"),
           *rep = json_object_get(g, "replicable"), *wrap = json_object_get(g, "member_wrap"),
           *pol = json_object_get(g, "policy");
    size_t used = 0;
    gsk_err err;

    if (!json_is_object(g))
        return gsk_fail(GSK_ERR_FORMAT, "manifest: group missing");
    if ((err = only_keys(g, "group", allowed)) != GSK_OK || (err = get_str(g, "name", m->group.name, sizeof(m->group.name))) ||
        (err = get_str(g, "address", m->group.address, sizeof(m->group.address))) ||
        (err = get_str(g, "key", m->group.keyspec, sizeof(m->group.keyspec))))
        return err;
    if (!json_is_boolean(v15) || !json_is_boolean(rep) || !json_is_array(meth) || json_array_size(meth) == 0 ||
        json_array_size(meth) > 8)
        return gsk_fail(GSK_ERR_FORMAT, "manifest: group methods, allow_pkcs1v15 or replicable malformed");
    m->group.allow_pkcs1v15 = json_is_true(v15);
    m->group.replicable = json_is_true(rep);
    /* Both optional: files from before they were shipped lack them. */
    if (wrap != NULL && ((err = get_str(g, "member_wrap", m->group.member_wrap, sizeof(m->group.member_wrap))) ||
                         (strcmp(m->group.member_wrap, "oaep") != 0 && strcmp(m->group.member_wrap, "pkcs1v15") != 0)))
        return gsk_fail(GSK_ERR_FORMAT, "manifest: group member_wrap must be \"oaep\" or \"pkcs1v15\"");
    if (pol != NULL) {
        const char *s = json_string_value(pol);
        if (s == NULL || strlen(s) >= sizeof(m->group.policy) || !printable(s))
            return gsk_fail(GSK_ERR_FORMAT, "manifest: group policy malformed");
        memcpy(m->group.policy, s, strlen(s) + 1);
    }
    for (size_t i = 0; i < json_array_size(meth); i++) {
        const char *s = json_string_value(json_array_get(meth, i));
        size_t n = s != NULL ? strlen(s) : 0;
        if (n == 0 || n > 32 || strchr(s, ',') != NULL || !printable(s) || used + n + 2 > sizeof(m->group.methods))
            return gsk_fail(GSK_ERR_FORMAT, "manifest: group methods malformed");
        if (used > 0)
            m->group.methods[used++] = ',';
        memcpy(m->group.methods + used, s, n + 1);
        used += n;
    }
    return GSK_OK;
}

static gsk_err parse_manifest(const unsigned char *text, size_t len, gsk_manifest **out)
{
    static const char *const allowed[] = {"format", "ceremony", "created", "exported_by", "source_token", "signer",
                                          "transport_key", "one_time_key", "group", "complete", "keys", NULL};
    static const char *const signer_keys[] = {"ca_sha256", "algorithm", NULL};
    static const char *const transport_keys[] = {"sha256", NULL};
    static const char *const otk_keys[] = {"algorithm", "wrapping", "wrapped", NULL};
    json_error_t jerr;
    json_t *root = json_loadb((const char *)text, len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *keys, *signer, *transport, *otk;
    gsk_manifest *m = NULL;
    unsigned char fp[32];
    char fmt[40];
    const char *s;
    gsk_err err;

    *out = NULL;
    if (!json_is_object(root)) {
        char q[88];
        err = gsk_fail(GSK_ERR_FORMAT, "manifest is not a JSON object (line %d: %s)", jerr.line,
                       log_quote(q, sizeof(q), root == NULL ? jerr.text : "not an object"));
        goto out;
    }
    keys = json_object_get(root, "keys");
    signer = json_object_get(root, "signer");
    transport = json_object_get(root, "transport_key");
    otk = json_object_get(root, "one_time_key");
    if (!json_is_array(keys) || !json_is_object(signer) || !json_is_object(transport) || !json_is_object(otk)) {
        err = gsk_fail(GSK_ERR_FORMAT, "manifest: keys, signer, transport_key or one_time_key missing");
        goto out;
    }
    if ((err = only_keys(root, "the manifest", allowed)) != GSK_OK ||
        (err = only_keys(signer, "signer", signer_keys)) != GSK_OK ||
        (err = only_keys(transport, "transport_key", transport_keys)) != GSK_OK ||
        (err = only_keys(otk, "one_time_key", otk_keys)) != GSK_OK)
        goto out;
    if ((err = gsk_manifest_new(json_array_size(keys), &m)) != GSK_OK) {
        err = gsk_fail(GSK_ERR_FORMAT, "manifest: %s", gsk_err_detail());
        goto out;
    }
    if ((err = get_str(root, "format", fmt, sizeof(fmt))) != GSK_OK)
        goto out;
    if (strcmp(fmt, GSK_FORMAT) != 0) {
        err = gsk_fail(GSK_ERR_FORMAT, "manifest: format %s, expected " GSK_FORMAT, fmt);
        goto out;
    }
    if ((err = get_str(root, "ceremony", m->ceremony, sizeof(m->ceremony))) ||
        (err = get_str(root, "created", m->created, sizeof(m->created))) ||
        (err = get_str(root, "exported_by", m->exported_by, sizeof(m->exported_by))) ||
        (err = get_str(root, "source_token", m->source_token, sizeof(m->source_token))) ||
        (err = get_str(signer, "algorithm", m->signer_algorithm, sizeof(m->signer_algorithm))) ||
        (err = get_hex(signer, "ca_sha256", fp, sizeof(fp), NULL, true)) ||
        (err = get_hex(transport, "sha256", fp, sizeof(fp), NULL, true)))
        goto out;
    memcpy(m->signer_ca_sha256, json_string_value(json_object_get(signer, "ca_sha256")), 65);
    memcpy(m->transport_sha256, json_string_value(json_object_get(transport, "sha256")), 65);
    s = json_string_value(json_object_get(otk, "wrapping"));
    if (s != NULL && strcmp(s, "RSA-OAEP-SHA1") == 0)
        m->kek_hash = HSM_OAEP_SHA1;
    else if (s != NULL && strcmp(s, "RSA-OAEP-SHA256") == 0)
        m->kek_hash = HSM_OAEP_SHA256;
    s = json_string_value(json_object_get(otk, "algorithm"));
    if (m->kek_hash == 0 || s == NULL || strcmp(s, "AES-256") != 0) {
        err = gsk_fail(GSK_ERR_FORMAT, "manifest: one_time_key must be AES-256 under RSA-OAEP-SHA1 or -SHA256");
        goto out;
    }
    if (!json_is_boolean(json_object_get(root, "complete"))) {
        err = gsk_fail(GSK_ERR_FORMAT, "manifest: complete must be true or false");
        goto out;
    }
    m->complete = json_is_true(json_object_get(root, "complete"));
    if ((err = get_b64(otk, "wrapped", WRAPPED_KEK_MAX, &m->wrapped_kek, &m->wrapped_kek_len)) != GSK_OK)
        goto out;
    for (size_t i = 0; i < m->n_entries; i++)
        if ((err = parse_key(json_array_get(keys, i), &m->entries[i])) != GSK_OK)
            goto out;
    /* A CA key travels alone, without a group; group keys with one. */
    if (gsk_manifest_find(m, GSK_KIND_CA, 0) >= 0) {
        if (m->n_entries != 1 || json_object_get(root, "group") != NULL || m->complete) {
            err = gsk_fail(GSK_ERR_FORMAT, "manifest: a CA key travels alone, without a group");
            goto out;
        }
    } else if ((err = parse_group(json_object_get(root, "group"), m)) != GSK_OK) {
        goto out;
    }
    /* Each key once: a duplicate would be imported twice or shadow another. */
    for (size_t i = 0; i < m->n_entries; i++)
        for (size_t j = i + 1; j < m->n_entries; j++)
            if (strcmp(m->entries[i].label, m->entries[j].label) == 0 ||
                (m->entries[i].kind == m->entries[j].kind && m->entries[i].version == m->entries[j].version)) {
                err = gsk_fail(GSK_ERR_FORMAT, "manifest: key %s appears twice", m->entries[i].label);
                goto out;
            }
    *out = m;
    m = NULL;
    err = GSK_OK;
out:
    gsk_manifest_free(m);
    json_decref(root);
    return err;
}

/* ---- the DER frame ---------------------------------------------------------------- */

static gsk_err frame_encode(const char *manifest, size_t mlen, const unsigned char *sig, size_t siglen,
                            unsigned char **der, size_t *der_len)
{
    GSK_FILE *f = GSK_FILE_new();
    unsigned char *p = NULL;
    int len;
    gsk_err err = GSK_ERR_NOMEM;

    *der = NULL;
    *der_len = 0;
    if (f == NULL || ASN1_STRING_set(f->format, GSK_FORMAT, -1) != 1 ||
        ASN1_OCTET_STRING_set(f->manifest, (const unsigned char *)manifest, (int)mlen) != 1 ||
        ASN1_OCTET_STRING_set(f->signature, sig, (int)siglen) != 1 || (len = i2d_GSK_FILE(f, &p)) <= 0)
        goto out;
    if ((*der = malloc((size_t)len)) == NULL)
        goto out;
    memcpy(*der, p, (size_t)len);
    *der_len = (size_t)len;
    err = GSK_OK;
out:
    OPENSSL_free(p);
    GSK_FILE_free(f);
    return err;
}

/* The refusal of a frame whose format is not ours. A later groupsrv that
 * changes the file names it "groupsrv-key-shipment-N" with N above 1:
 * such a file is a key shipment, not damage, and "not a key shipment"
 * sent its operator looking for a broken copy when the way out is a
 * groupsrv as new as the sender's. Only the digits are shown (the format
 * is not yet signed-checked). */
#define GSK_FORMAT_PREFIX "groupsrv-key-shipment-"
#define GSK_FORMAT_NUMBER 1ul
_Static_assert(sizeof(GSK_FORMAT) == sizeof(GSK_FORMAT_PREFIX "1"), "GSK_FORMAT is the prefix and number 1");
static gsk_err format_refused(const ASN1_STRING *fmt)
{
    const unsigned char *s = ASN1_STRING_get0_data(fmt);
    size_t n = (size_t)ASN1_STRING_length(fmt), pre = strlen(GSK_FORMAT_PREFIX), i = pre;
    unsigned long v = 0;

    /* at most 6 digits, no leading 0: v stays far below ULONG_MAX */
    if (n > pre && n <= pre + 6 && memcmp(s, GSK_FORMAT_PREFIX, pre) == 0 && s[pre] != '0')
        for (; i < n && s[i] >= '0' && s[i] <= '9'; i++)
            v = v * 10 + (unsigned long)(s[i] - '0');
    if (i == n && v > GSK_FORMAT_NUMBER)
        return gsk_fail(GSK_ERR_FORMAT,
                        "a key shipment of format " GSK_FORMAT_PREFIX "%lu, made by a newer groupsrv: this one "
                        "reads " GSK_FORMAT " only; import it with a groupsrv as new as the sender's",
                        v);
    return gsk_fail(GSK_ERR_FORMAT, "not a key shipment: format is not " GSK_FORMAT);
}

/* Decodes strictly; *f stays owned by the caller (GSK_FILE_free). */
static gsk_err frame_decode(const unsigned char *der, size_t len, GSK_FILE **f)
{
    const unsigned char *p = der;
    unsigned char *again = NULL;
    int relen;
    gsk_err err = GSK_ERR_FORMAT;

    *f = NULL;
    if (der == NULL || len == 0 || len > GSK_FILE_MAX)
        return gsk_fail(GSK_ERR_FORMAT, "not a key shipment: empty or larger than %u bytes", GSK_FILE_MAX);
    *f = d2i_GSK_FILE(NULL, &p, (long)len);
    if (*f == NULL || p != der + len) {
        gsk_fail(GSK_ERR_FORMAT, "not a key shipment: not one DER KeyShipment structure");
        goto out;
    }
    /* DER has one encoding: anything else (long lengths, BER) was not made by us. */
    relen = i2d_GSK_FILE(*f, &again);
    if (relen <= 0 || (size_t)relen != len || memcmp(again, der, len) != 0) {
        gsk_fail(GSK_ERR_FORMAT, "not a key shipment: not in canonical DER");
        goto out;
    }
    if ((size_t)ASN1_STRING_length((*f)->format) != strlen(GSK_FORMAT) ||
        memcmp(ASN1_STRING_get0_data((*f)->format), GSK_FORMAT, strlen(GSK_FORMAT)) != 0) {
        format_refused((*f)->format);
        goto out;
    }
    if (ASN1_STRING_length((*f)->manifest) <= 0 || ASN1_STRING_length((*f)->signature) <= 0) {
        gsk_fail(GSK_ERR_FORMAT, "not a key shipment: empty manifest or signature");
        goto out;
    }
    err = GSK_OK;
out:
    OPENSSL_free(again);
    if (err != GSK_OK) {
        GSK_FILE_free(*f);
        *f = NULL;
    }
    ERR_clear_error();
    return err;
}

/* ---- signatures --------------------------------------------------------------------- */

static const char *sig_algorithm(X509 *ca)
{
    EVP_PKEY *pk = X509_get0_pubkey(ca);
    int id = pk != NULL ? EVP_PKEY_get_base_id(pk) : 0;

    return id == EVP_PKEY_RSA ? "sha256WithRSAEncryption" : id == EVP_PKEY_EC ? "ecdsa-with-SHA256" : NULL;
}

/* 0 when sig is the CA key's signature over data (PKCS#1 v1.5 or ECDSA, SHA-256). */
static int sig_verify(X509 *ca, const unsigned char *data, size_t len, const unsigned char *sig, size_t siglen)
{
    EVP_PKEY *pk = X509_get0_pubkey(ca);
    EVP_MD_CTX *mc = EVP_MD_CTX_new();
    int ok = pk != NULL && mc != NULL && EVP_DigestVerifyInit(mc, NULL, EVP_sha256(), NULL, pk) == 1 &&
             EVP_DigestVerify(mc, sig, siglen, data, len) == 1;

    EVP_MD_CTX_free(mc);
    ERR_clear_error();
    return ok ? 0 : -1;
}

gsk_err gsk_shipment_write(gsk_manifest *m, X509 *ca_cert, gsk_sign_fn sign, void *arg, unsigned char **der,
                           size_t *der_len)
{
    const char *alg = ca_cert != NULL ? sig_algorithm(ca_cert) : NULL;
    unsigned char *sig = NULL;
    size_t siglen = 0;
    char *text = NULL;
    gsk_err err;

    if (der != NULL)
        *der = NULL;
    if (der_len != NULL)
        *der_len = 0;
    if (m == NULL || ca_cert == NULL || sign == NULL || der == NULL || der_len == NULL)
        return GSK_ERR_ARGS;
    if (alg == NULL)
        return gsk_fail(GSK_ERR_ARGS, "the CA key is neither RSA nor EC");
    if (cert_fingerprint(ca_cert, m->signer_ca_sha256) != 0)
        return GSK_ERR_NOMEM;
    util_strlcpy(m->signer_algorithm, alg, sizeof(m->signer_algorithm));
    if ((err = manifest_json(m, &text)) != GSK_OK)
        goto out;
    if (sign(arg, (const unsigned char *)text, strlen(text), &sig, &siglen) != 0 || sig == NULL) {
        err = gsk_fail(GSK_ERR_HSM, "signing the manifest with the CA key failed");
        goto out;
    }
    if (sig_verify(ca_cert, (const unsigned char *)text, strlen(text), sig, siglen) != 0) {
        err = gsk_fail(GSK_ERR_SIGNATURE, "the token's signature does not verify with the CA certificate");
        goto out;
    }
    err = frame_encode(text, strlen(text), sig, siglen, der, der_len);
out:
    free(sig);
    free(text);
    return err;
}

/* For the message only: which CA does an unverified manifest name? */
static bool names_other_ca(const unsigned char *text, size_t len, const char *trusted_fp, char other[65])
{
    json_t *root = json_loadb((const char *)text, len, 0, NULL);
    const char *fp = json_string_value(json_object_get(json_object_get(root, "signer"), "ca_sha256"));
    bool other_ca = fp != NULL && strlen(fp) == 64 && strspn(fp, "0123456789abcdef") == 64 && strcmp(fp, trusted_fp) != 0;

    if (other_ca)
        memcpy(other, fp, 65);
    json_decref(root);
    return other_ca;
}

gsk_err gsk_shipment_read(const unsigned char *der, size_t len, X509 *trusted_ca, gsk_manifest **out)
{
    GSK_FILE *f = NULL;
    gsk_manifest *m = NULL;
    const unsigned char *text, *sig;
    size_t tlen, siglen;
    char trusted_fp[65], other[65];
    const char *alg;
    gsk_err err;

    if (out != NULL)
        *out = NULL;
    if (trusted_ca == NULL || out == NULL || (alg = sig_algorithm(trusted_ca)) == NULL ||
        cert_fingerprint(trusted_ca, trusted_fp) != 0)
        return gsk_fail(GSK_ERR_ARGS, "no usable trusted CA certificate");
    if ((err = frame_decode(der, len, &f)) != GSK_OK)
        return err;
    text = ASN1_STRING_get0_data(f->manifest);
    tlen = (size_t)ASN1_STRING_length(f->manifest);
    sig = ASN1_STRING_get0_data(f->signature);
    siglen = (size_t)ASN1_STRING_length(f->signature);
    if (sig_verify(trusted_ca, text, tlen, sig, siglen) != 0) {
        if (names_other_ca(text, tlen, trusted_fp, other))
            err = gsk_fail(GSK_ERR_SIGNER, "signed by the CA with certificate sha256 %.16s..., not the trusted CA %.16s...",
                           other, trusted_fp);
        else
            err = gsk_fail(GSK_ERR_SIGNATURE, "the signature does not verify with the trusted CA: the file was "
                                              "changed or damaged");
        goto out;
    }
    if ((err = parse_manifest(text, tlen, &m)) != GSK_OK)
        goto out;
    /* The trusted CA's key signed it under another certificate of that
     * key: one `ca renew-cert` replaced (or made) since. The file stays
     * bound to the certificate it names, whose holder checked it. */
    if (strcmp(m->signer_ca_sha256, trusted_fp) != 0 && strcmp(m->signer_algorithm, alg) == 0) {
        err = gsk_fail(GSK_ERR_SIGNER, "signed by the trusted CA's key under its certificate sha256 %.16s..., "
                                       "not the trusted certificate %.16s... (renewed by `ca renew-cert`?): check "
                                       "it against the CA certificate it names",
                       m->signer_ca_sha256, trusted_fp);
        goto out;
    }
    if (strcmp(m->signer_ca_sha256, trusted_fp) != 0 || strcmp(m->signer_algorithm, alg) != 0) {
        err = gsk_fail(GSK_ERR_SIGNER, "the manifest names another signer than the trusted CA");
        goto out;
    }
    *out = m;
    m = NULL;
out:
    gsk_manifest_free(m);
    GSK_FILE_free(f);
    return err;
}

/* ---- transport key files -------------------------------------------------------------- */

gsk_err gsk_transport_read(const unsigned char *text, size_t len, unsigned char **spki, size_t *spki_len, char fp[65])
{
    BIO *b = NULL;
    EVP_PKEY *pk = NULL;
    unsigned char *der = NULL;
    int dlen, bits;
    gsk_err err = GSK_ERR_FORMAT;

    *spki = NULL;
    *spki_len = 0;
    if (text == NULL || len == 0 || len > 64u * 1024u || (b = BIO_new_mem_buf(text, (int)len)) == NULL ||
        (pk = PEM_read_bio_PUBKEY(b, NULL, util_pem_no_passphrase, NULL)) == NULL) {
        gsk_fail(err, "not a transport key file (no PEM public key in it)");
        goto out;
    }
    bits = EVP_PKEY_get_bits(pk);
    if (EVP_PKEY_get_base_id(pk) != EVP_PKEY_RSA || bits < (int)GSK_TRANSPORT_BITS || bits > 16384) {
        gsk_fail(err, "the transport key must be RSA of %u to 16384 bits (this one: %s, %d bits)", GSK_TRANSPORT_BITS,
                 EVP_PKEY_get_base_id(pk) == EVP_PKEY_RSA ? "RSA" : "not RSA", bits);
        goto out;
    }
    if ((dlen = i2d_PUBKEY(pk, &der)) <= 0 || (*spki = malloc((size_t)dlen)) == NULL) {
        err = GSK_ERR_NOMEM;
        goto out;
    }
    memcpy(*spki, der, (size_t)dlen);
    *spki_len = (size_t)dlen;
    gsk_fingerprint(*spki, *spki_len, fp);
    err = GSK_OK;
out:
    OPENSSL_free(der);
    EVP_PKEY_free(pk);
    BIO_free(b);
    ERR_clear_error();
    return err;
}

gsk_err gsk_transport_hashes(const unsigned char *text, size_t len, unsigned *mask)
{
    static const char key[] = "unwraps:";
    const unsigned char *p = text, *end = text + len;

    if (mask == NULL)
        return GSK_ERR_ARGS;
    *mask = 0;
    if (text == NULL || len > 64u * 1024u)
        return gsk_fail(GSK_ERR_FORMAT, "not a transport key file");
    /* The text lines before the PEM block, one at a time. */
    while (p < end) {
        const unsigned char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
        if (n >= 5 && memcmp(p, "-----", 5) == 0)
            break;
        if (n >= sizeof(key) - 1 && memcmp(p, key, sizeof(key) - 1) == 0) {
            char line[128];
            size_t l = n - (sizeof(key) - 1);
            if (l >= sizeof(line))
                return gsk_fail(GSK_ERR_FORMAT, "the transport key file's unwraps: line is too long");
            memcpy(line, p + sizeof(key) - 1, l);
            line[l] = '\0';
            /* Names as the manifest's one_time_key.wrapping gives them;
             * "RSA-OAEP-SHA1" is not a prefix of "RSA-OAEP-SHA256" once
             * followed by a separator or the end. */
            for (size_t i = 0; i < l;) {
                size_t w = strcspn(line + i, " ,\t\r");
                if (w == sizeof("RSA-OAEP-SHA1") - 1 && memcmp(line + i, "RSA-OAEP-SHA1", w) == 0)
                    *mask |= 1u << HSM_OAEP_SHA1;
                else if (w == sizeof("RSA-OAEP-SHA256") - 1 && memcmp(line + i, "RSA-OAEP-SHA256", w) == 0)
                    *mask |= 1u << HSM_OAEP_SHA256;
                i += w + (i + w < l ? 1 : 0);
            }
            if (*mask == 0)
                return gsk_fail(GSK_ERR_FORMAT, "the transport key file's unwraps: line names no RSA-OAEP hash "
                                                "this groupsrv knows (RSA-OAEP-SHA1, RSA-OAEP-SHA256)");
            return GSK_OK;
        }
        if (nl == NULL)
            break;
        p = nl + 1;
    }
    return GSK_OK;
}
