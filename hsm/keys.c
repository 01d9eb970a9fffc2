/*
 * keys.c: key references (find by URI or label, handle cache with
 * re-find after recovery), key generation with an exact usage policy,
 * attribute read-back, public key export as DER SPKI.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>

#include "log.h"
#include "util.h"
#include "hsm_internal.h"

#define FIND_MAX 16
#define ATTR_MAX (64u * 1024u)
/* hsm_key_list's handle array: LIST_FIRST at first, doubled as the token
 * hands out more, up to LIST_MAX objects. Past LIST_MAX the listing fails
 * (HSM_ERR_TOO_MANY_OBJECTS) rather than answering with part of the token:
 * its callers (the transport key search, the transport public-half
 * deletion, check's unrecorded keys) take "not listed" for "not there".
 * The bound is there because a listing reads every object (several
 * C_GetAttributeValue calls each) and a module that never answers "none"
 * must not grow the array until memory runs out: a million objects is 8 MB
 * of handles and far more than a group token holds (a group rotating its
 * secret at every removal keeps thousands of versions, not millions).
 * Tests build a copy of gs_hsm with small values (tests/hsm.cmake). */
#ifndef LIST_FIRST
#define LIST_FIRST 4096
#endif
#ifndef LIST_MAX
#define LIST_MAX 1000000
#endif

static CK_BBOOL ck_true = CK_TRUE, ck_false = CK_FALSE;

/* DER OIDs for CKA_EC_PARAMS (namedCurve). */
static const unsigned char oid_p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
static const unsigned char oid_p384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};

static hsm_key_class class_to_hsm(CK_OBJECT_CLASS c)
{
    switch (c) {
    case CKO_PRIVATE_KEY:
        return HSM_CLASS_PRIVATE;
    case CKO_PUBLIC_KEY:
        return HSM_CLASS_PUBLIC;
    case CKO_SECRET_KEY:
        return HSM_CLASS_SECRET;
    default:
        return 0;
    }
}

static CK_OBJECT_CLASS hsm_to_class(hsm_key_class c)
{
    switch (c) {
    case HSM_CLASS_PRIVATE:
        return CKO_PRIVATE_KEY;
    case HSM_CLASS_PUBLIC:
        return CKO_PUBLIC_KEY;
    case HSM_CLASS_SECRET:
        return CKO_SECRET_KEY;
    }
    return (CK_OBJECT_CLASS)-1;
}

static bool is_key_class(CK_OBJECT_CLASS c)
{
    return c == CKO_PRIVATE_KEY || c == CKO_PUBLIC_KEY || c == CKO_SECRET_KEY;
}

/* ---- attribute helpers ---------------------------------------------------- */

hsm_err hsm_get_attr(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type,
                     unsigned char **val, size_t *len)
{
    CK_ATTRIBUTE a = {type, NULL, 0};
    unsigned char *buf = NULL;
    hsm_err err;

    *val = NULL;
    *len = 0;
    err = P11(ctx, C_GetAttributeValue, s, h, &a, 1);
    if (err != HSM_OK)
        return err;
    if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen > ATTR_MAX)
        return HSM_ERR_PKCS11;
    /* One spare byte so that strings can be NUL-terminated by callers. */
    if ((buf = calloc(1, a.ulValueLen + 1)) == NULL)
        return HSM_ERR_NOMEM;
    a.pValue = buf;
    err = P11(ctx, C_GetAttributeValue, s, h, &a, 1);
    if (err != HSM_OK) {
        OPENSSL_clear_free(buf, a.ulValueLen + 1);
        return err;
    }
    *val = buf;
    *len = a.ulValueLen;
    return HSM_OK;
}

hsm_err hsm_get_ulong(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type,
                      CK_ULONG *out)
{
    CK_ATTRIBUTE a = {type, out, sizeof(*out)};

    *out = 0;
    return P11(ctx, C_GetAttributeValue, s, h, &a, 1);
}

/* A boolean attribute; absent or unreadable counts as false, without
 * leaving an error detail behind. */
hsm_err hsm_read_bool(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type, bool *out)
{
    CK_BBOOL b = CK_FALSE;
    CK_ATTRIBUTE a = {type, &b, sizeof(b)};
    hsm_errsave sv;
    hsm_err err;

    hsm_err_save(&sv);
    err = P11(ctx, C_GetAttributeValue, s, h, &a, 1);
    hsm_err_restore(&sv);
    *out = err == HSM_OK && a.ulValueLen == sizeof(b) && b == CK_TRUE;
    return err;
}

static bool get_bool(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type)
{
    bool b;

    (void)hsm_read_bool(ctx, s, h, type, &b);
    return b;
}

#define READ_BOOLS_MAX 24
#define NOT_A_BBOOL 0xA5

/* Reads n boolean attributes of h, as get_bool each, in one
 * C_GetAttributeValue where the token allows (each call is a round trip
 * on a network HSM or behind p11-kit's RPC). A template naming an
 * attribute the object lacks is answered CKR_ATTRIBUTE_TYPE_INVALID (or
 * _SENSITIVE) with the others filled, as PKCS#11 asks: one the token
 * says the object lacks (CK_UNAVAILABLE_INFORMATION) is false, as
 * get_bool would find it; one left untouched (by a token that fills
 * nothing then) is read by itself. */
static void read_bools(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, const CK_ATTRIBUTE_TYPE *types,
                       bool *const *outs, size_t n)
{
    CK_BBOOL v[READ_BOOLS_MAX];
    CK_ATTRIBUTE t[READ_BOOLS_MAX];
    hsm_errsave sv;
    CK_RV rv;
    bool filled;
    size_t i;

    if (n > READ_BOOLS_MAX)
        n = READ_BOOLS_MAX;
    for (i = 0; i < n; i++) {
        v[i] = NOT_A_BBOOL;
        t[i] = (CK_ATTRIBUTE){types[i], &v[i], sizeof(v[i])};
    }
    hsm_err_save(&sv);
    (void)P11(ctx, C_GetAttributeValue, s, h, t, (CK_ULONG)n);
    rv = hsm_last_rv();
    hsm_err_restore(&sv);
    filled = rv == CKR_OK || rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE;
    for (i = 0; i < n; i++) {
        if (filled && t[i].ulValueLen == sizeof(CK_BBOOL) && (v[i] == CK_TRUE || v[i] == CK_FALSE))
            *outs[i] = v[i] == CK_TRUE;
        else if (filled && t[i].ulValueLen == CK_UNAVAILABLE_INFORMATION)
            *outs[i] = false; /* the token said the object lacks it: asking again says so again */
        else
            *outs[i] = get_bool(ctx, s, h, types[i]);
    }
}

bool hsm_get_bool(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type)
{
    return get_bool(ctx, s, h, type);
}

hsm_err hsm_get_mechs(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_MECHANISM_TYPE *m, size_t cap,
                      size_t *n, bool *present)
{
    CK_MECHANISM_TYPE buf[64];
    CK_ATTRIBUTE a = {CKA_ALLOWED_MECHANISMS, buf, sizeof(buf)};
    size_t i, cnt;
    hsm_err err;

    *n = 0;
    *present = false;
    err = P11(ctx, C_GetAttributeValue, s, h, &a, 1);
    if (err != HSM_OK) {
        /* Not stored (or unknown to the token): no limit on this key. */
        if (hsm_last_rv() == CKR_ATTRIBUTE_TYPE_INVALID)
            return HSM_OK;
        /* Stored, longer than buf: more than cap, said so (below). */
        if (err == HSM_ERR_BUFFER)
            *present = true;
        return err;
    }
    if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen % sizeof(CK_MECHANISM_TYPE) != 0)
        return HSM_ERR_PKCS11;
    cnt = a.ulValueLen / sizeof(CK_MECHANISM_TYPE);
    *present = true;
    /* All or none: the first cap of a longer list would pass a key whose
     * mechanisms past them are outside a policy. */
    if (cnt > cap) {
        hsm_set_detail("CKA_ALLOWED_MECHANISMS lists %zu mechanisms, more than the %zu read", cnt, cap);
        return HSM_ERR_BUFFER;
    }
    for (i = 0; i < cnt; i++)
        m[i] = buf[i];
    *n = cnt;
    return HSM_OK;
}

void hsm_destroy_session_obj(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *h)
{
    hsm_errsave sv;

    if (*h == CK_INVALID_HANDLE)
        return;
    hsm_err_save(&sv);
    (void)P11(ctx, C_DestroyObject, s, *h);
    hsm_err_restore(&sv);
    *h = CK_INVALID_HANDLE;
}

/* The handles of up to cap objects matching tmpl, in *total: C_FindObjects
 * (at most per_call handles a call, 0: as many as fit) until it answers
 * none, for a token may hand out fewer than asked while more match
 * (PKCS#11 allows it; tokens that page their answers do): one call would
 * miss a second key of a label, and an ambiguous label would pass for
 * one key. C_FindObjectsFinal ends every search begun. */
static hsm_err find_handles(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n,
                            CK_OBJECT_HANDLE *hs, CK_ULONG cap, CK_ULONG per_call, CK_ULONG *total)
{
    CK_ULONG got = 0, ask;
    hsm_err err, err2;

    *total = 0;
    if ((err = P11(ctx, C_FindObjectsInit, s, tmpl, n)) != HSM_OK)
        return err;
    do {
        ask = per_call != 0 && cap - *total > per_call ? per_call : cap - *total;
        err = P11(ctx, C_FindObjects, s, hs + *total, ask, &got);
        if (err == HSM_OK)
            *total += got < ask ? got : ask;
    } while (err == HSM_OK && got > 0 && *total < cap);
    err2 = P11(ctx, C_FindObjectsFinal, s);
    return err != HSM_OK ? err : err2;
}

static hsm_err find_all_handles(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_ATTRIBUTE *match, CK_ULONG n,
                                CK_ULONG per_call, CK_OBJECT_HANDLE **out, CK_ULONG *total);

/* Finds up to cap key objects matching tmpl (non-key objects skipped).
 * A template without a class (a label or id alone) also matches the
 * certificates and data objects of that label: when FIND_MAX objects
 * match, the search is made again reading every match (find_all_handles),
 * so that a key behind FIND_MAX of them is found, and a second key seen,
 * rather than "no key" (and a second key made with that label) or one key
 * taken for the only one. */
static hsm_err find_keys(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_ATTRIBUTE *tmpl, CK_ULONG n,
                         CK_OBJECT_HANDLE *found, CK_ULONG cap, CK_ULONG *nfound)
{
    CK_OBJECT_HANDLE first[FIND_MAX], *hs = first, *all = NULL;
    CK_ULONG got = 0, i;
    hsm_err err;

    *nfound = 0;
    if ((err = find_handles(ctx, s, tmpl, n, first, FIND_MAX, 0, &got)) != HSM_OK)
        return err;
    if (got == FIND_MAX) {
        if ((err = find_all_handles(ctx, s, tmpl, n, 0, &all, &got)) != HSM_OK)
            return err;
        hs = all;
    }
    for (i = 0; i < got && *nfound < cap; i++) {
        CK_ULONG cls = 0;
        if (hsm_get_ulong(ctx, s, hs[i], CKA_CLASS, &cls) != HSM_OK)
            continue;
        if (is_key_class(cls))
            found[(*nfound)++] = hs[i];
    }
    free(all);
    return HSM_OK;
}

/* Template naming key: class, label, id (whatever is known). */
static CK_ULONG key_template(hsm_key *key, CK_ATTRIBUTE *t)
{
    CK_ULONG n = 0;

    if (key->cls != (CK_OBJECT_CLASS)-1) {
        t[n].type = CKA_CLASS;
        t[n].pValue = &key->cls;
        t[n++].ulValueLen = sizeof(key->cls);
    }
    if (key->label[0] != '\0') {
        t[n].type = CKA_LABEL;
        t[n].pValue = key->label;
        t[n++].ulValueLen = strlen(key->label);
    }
    if (key->id_len > 0) {
        t[n].type = CKA_ID;
        t[n].pValue = key->id;
        t[n++].ulValueLen = key->id_len;
    }
    return n;
}

/* key_fill in one C_GetAttributeValue (a round trip on a remote token):
 * whether the token answered every attribute at once. A label or id
 * longer than the key keeps (CKR_BUFFER_TOO_SMALL), or an answer missing
 * one, leaves it to the reads one by one. */
static bool key_fill_at_once(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, hsm_key *key)
{
    CK_ULONG cls = 0, kt = 0;
    char label[sizeof(key->label)];
    unsigned char id[sizeof(key->id)];
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_LABEL, label, sizeof(label) - 1},
        {CKA_ID, id, sizeof(id)},
    };
    hsm_errsave sv;
    hsm_err err;

    hsm_err_save(&sv);
    err = P11(ctx, C_GetAttributeValue, s, h, t, GS_ARRAY_LEN(t));
    hsm_err_restore(&sv);
    if (err != HSM_OK || t[0].ulValueLen != sizeof(cls) || t[1].ulValueLen != sizeof(kt) ||
        t[2].ulValueLen >= sizeof(label) || t[3].ulValueLen > sizeof(id))
        return false;
    key->cls = cls;
    key->ktype = kt;
    memcpy(key->label, label, t[2].ulValueLen);
    key->label[t[2].ulValueLen] = '\0';
    memcpy(key->id, id, t[3].ulValueLen);
    key->id_len = t[3].ulValueLen;
    return true;
}

/* The label (cut to fit, NUL-ended) and the id (only if it fits) of h,
 * each read by itself; one the token does not give leaves its field as it
 * is. For key_fill_each and hsm_key_get_info's reference without them. */
static void read_label_and_id(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, char *label, size_t label_cap,
                              unsigned char *id, size_t id_cap, size_t *id_len)
{
    unsigned char *v = NULL;
    size_t n = 0;

    if (hsm_get_attr(ctx, s, h, CKA_LABEL, &v, &n) == HSM_OK) {
        if (n >= label_cap)
            n = label_cap - 1;
        memcpy(label, v, n);
        label[n] = '\0';
    }
    free(v);
    v = NULL;
    if (hsm_get_attr(ctx, s, h, CKA_ID, &v, &n) == HSM_OK && n <= id_cap) {
        memcpy(id, v, n);
        *id_len = n;
    }
    free(v);
}

/* key_fill one attribute at a time. */
static hsm_err key_fill_each(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, hsm_key *key)
{
    CK_ULONG ul = 0;
    hsm_err err;

    if ((err = hsm_get_ulong(ctx, s, h, CKA_CLASS, &ul)) != HSM_OK)
        return err;
    key->cls = ul;
    if ((err = hsm_get_ulong(ctx, s, h, CKA_KEY_TYPE, &ul)) != HSM_OK)
        return err;
    key->ktype = ul;
    read_label_and_id(ctx, s, h, key->label, sizeof(key->label), key->id, sizeof(key->id), &key->id_len);
    return HSM_OK;
}

/* Fills key's identity (class, type, label, id) from the object. */
static hsm_err key_fill(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, hsm_key *key)
{
    hsm_err err;

    if (!key_fill_at_once(ctx, s, h, key) && (err = key_fill_each(ctx, s, h, key)) != HSM_OK)
        return err;
    /* Smartcards mark decryption keys "a PIN per use"; absent = false. */
    key->always_auth = key->cls == CKO_PRIVATE_KEY && get_bool(ctx, s, h, CKA_ALWAYS_AUTHENTICATE);
    return HSM_OK;
}

static int ec_point_unwrap(const unsigned char *buf, size_t len, const unsigned char **pt, size_t *ptlen);
static int curve_nid(const unsigned char *params, size_t len);

/* An uncompressed point of the largest curve named here (P-521: 133). */
#define EC_POINT_MAX 160

/* CKA_EC_POINT value v on curve nid as its uncompressed point in out (at
 * most EC_POINT_MAX bytes): tokens give it DER-wrapped (SoftHSM,
 * opencryptoki, NSS by default) or raw (NSS with
 * NSS_USE_DECODED_CKA_EC_POINT, some HSMs), compressed where it was
 * imported so; the reading that is a point on the curve is it. False if
 * none is, or the curve is not known. */
static bool ec_point_normal(int nid, const unsigned char *v, size_t n, unsigned char out[EC_POINT_MAX],
                            size_t *outlen)
{
    EC_GROUP *g = NULL;
    EC_POINT *p = NULL;
    ASN1_OCTET_STRING *os = NULL;
    const unsigned char *q = v, *c[2] = {NULL, v};
    size_t cl[2] = {0, n};
    bool ok = false;

    if (nid == NID_undef || n == 0 || n > 4096 || (g = EC_GROUP_new_by_curve_name(nid)) == NULL ||
        (p = EC_POINT_new(g)) == NULL)
        goto out;
    if ((os = d2i_ASN1_OCTET_STRING(NULL, &q, (long)n)) != NULL && q == v + n && os->length > 0) {
        c[0] = v + (n - (size_t)os->length);
        cl[0] = (size_t)os->length;
    }
    for (size_t i = 0; i < 2 && !ok; i++) {
        if (c[i] != NULL && EC_POINT_oct2point(g, p, c[i], cl[i], NULL) == 1) {
            *outlen = EC_POINT_point2oct(g, p, POINT_CONVERSION_UNCOMPRESSED, out, EC_POINT_MAX, NULL);
            ok = *outlen > 0;
        }
    }
out:
    ASN1_OCTET_STRING_free(os);
    EC_POINT_free(p);
    EC_GROUP_free(g);
    ERR_clear_error();
    return ok;
}

/* The SHA-256 that names a public key (struct hsm_key pub_sha256), one
 * definition for what the token gives and what a certificate holds: of an
 * RSA modulus without leading zero bytes, of an uncompressed EC point. */
static bool pub_digest(bool rsa, const unsigned char *v, size_t n, unsigned char md[32])
{
    while (rsa && n > 0 && v[0] == 0) {
        v++;
        n--;
    }
    if (n == 0 || (!rsa && (n < 3 || v[0] != 0x04 || n % 2 == 0)))
        return false;
    return EVP_Digest(v, n, md, NULL, EVP_sha256(), NULL) == 1;
}

/* The public key object of private key `key`'s CKA_ID (of its key type),
 * if exactly one. */
static bool pair_public_object(hsm_ctx *ctx, CK_SESSION_HANDLE s, const hsm_key *key, CK_OBJECT_HANDLE *ph)
{
    CK_OBJECT_CLASS pc = CKO_PUBLIC_KEY;
    CK_KEY_TYPE kt = key->ktype;
    CK_ATTRIBUTE t[3] = {{CKA_CLASS, &pc, sizeof(pc)},
                         {CKA_KEY_TYPE, &kt, sizeof(kt)},
                         {CKA_ID, (void *)key->id, key->id_len}};
    CK_OBJECT_HANDLE found[2];
    CK_ULONG n = 0;

    if (key->cls != CKO_PRIVATE_KEY || key->id_len == 0 || find_keys(ctx, s, t, 3, found, 2, &n) != HSM_OK ||
        n != 1)
        return false;
    *ph = found[0];
    return true;
}

/* Attribute `type` of object h in buf (one call where it fits), or in
 * *heap (caller frees); NULL if the token does not give it. */
static const unsigned char *read_public_attr(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h,
                                             CK_ATTRIBUTE_TYPE type, unsigned char buf[1024],
                                             unsigned char **heap, size_t *n)
{
    CK_ATTRIBUTE a = {type, buf, 1024};

    /* On a remote token each call is a round trip; two where it does not fit. */
    if (P11(ctx, C_GetAttributeValue, s, h, &a, 1) == HSM_OK && a.ulValueLen != CK_UNAVAILABLE_INFORMATION &&
        a.ulValueLen <= 1024) {
        *n = a.ulValueLen;
        return buf;
    }
    if (hsm_last_rv() == CKR_BUFFER_TOO_SMALL && hsm_get_attr(ctx, s, h, type, heap, n) == HSM_OK)
        return *heap;
    return NULL;
}

/* SHA-256 (pub_digest) of the public half of key object h, which has
 * key's class and type: an RSA key's CKA_MODULUS, or that of the public
 * key object of its CKA_ID where the private key does not give it; for an
 * EC key the CKA_EC_POINT of the public key object of its CKA_ID (a
 * private EC key has no public attribute on every token), or its own
 * where the token gives one. False if the token does not give it (then nothing is
 * compared); no error detail is left behind. */
static bool public_sha256(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, const hsm_key *key,
                          unsigned char md[32])
{
    unsigned char buf[1024], *heap = NULL;
    const unsigned char *v = NULL, *pt;
    size_t n = 0, ptlen;
    CK_OBJECT_HANDLE ph = h;
    hsm_errsave sv;
    bool ok = false;

    if ((key->cls != CKO_PRIVATE_KEY && key->cls != CKO_PUBLIC_KEY) ||
        (key->ktype != CKK_RSA && key->ktype != CKK_EC))
        return false;
    hsm_err_save(&sv);
    if (key->ktype == CKK_RSA) {
        /* A token that keeps the modulus on the public object only. */
        if ((v = read_public_attr(ctx, s, h, CKA_MODULUS, buf, &heap, &n)) == NULL &&
            pair_public_object(ctx, s, key, &ph))
            v = read_public_attr(ctx, s, ph, CKA_MODULUS, buf, &heap, &n);
        ok = v != NULL && pub_digest(true, v, n, md);
    } else {
        /* The curve with the point, in the same call: a token's point may
         * be raw or DER-wrapped, compressed or not, and only the curve
         * tells which reading is the point (a raw P-256 point beginning
         * 04 3f 04 also reads as a wrapped 63-byte one). */
        unsigned char params[128], unc[EC_POINT_MAX];
        CK_ATTRIBUTE a[2] = {{CKA_EC_PARAMS, params, sizeof(params)}, {CKA_EC_POINT, buf, sizeof(buf)}};

        if (!pair_public_object(ctx, s, key, &ph))
            ph = h;
        if (P11(ctx, C_GetAttributeValue, s, ph, a, 2) == HSM_OK && a[0].ulValueLen <= sizeof(params) &&
            a[1].ulValueLen <= sizeof(buf)) {
            int nid = curve_nid(params, a[0].ulValueLen);
            if (nid != NID_undef)
                ok = ec_point_normal(nid, buf, a[1].ulValueLen, unc, &ptlen) &&
                     pub_digest(false, unc, ptlen, md);
            else /* a curve this build does not name: as the token gives it */
                ok = ec_point_unwrap(buf, a[1].ulValueLen, &pt, &ptlen) == 0 &&
                     pub_digest(false, pt, ptlen, md);
        } else {
            /* a point past 1024 bytes (no named curve's) */
            v = read_public_attr(ctx, s, ph, CKA_EC_POINT, buf, &heap, &n);
            ok = v != NULL && ec_point_unwrap(v, n, &pt, &ptlen) == 0 && pub_digest(false, pt, ptlen, md);
        }
    }
    hsm_err_restore(&sv);
    free(heap);
    return ok;
}

/* Notes the public half of a key pair found by label (struct hsm_key): one
 * attribute read per RSA key found, a search and a read per EC key; a key
 * whose public half the token does not give is found again as before. */
static void key_note_public(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, hsm_key *key)
{
    key->have_pub = public_sha256(ctx, s, h, key, key->pub_sha256);
}

int hsm_key_matches_public(const hsm_key *key, EVP_PKEY *pub, unsigned char found_sha256[32])
{
    unsigned char md[32], *v = NULL;
    size_t n = 0;
    BIGNUM *bn = NULL;
    int same = -1;

    if (key == NULL || pub == NULL || !key->have_pub)
        return -1;
    if (key->ktype == CKK_RSA && EVP_PKEY_is_a(pub, "RSA")) {
        if (EVP_PKEY_get_bn_param(pub, OSSL_PKEY_PARAM_RSA_N, &bn) != 1 || BN_num_bytes(bn) <= 0 ||
            (v = malloc((size_t)BN_num_bytes(bn))) == NULL)
            goto out;
        n = (size_t)BN_bn2bin(bn, v);
    } else if (key->ktype == CKK_EC && EVP_PKEY_is_a(pub, "EC")) {
        /* the point as the token gives it: uncompressed */
        if (EVP_PKEY_get_octet_string_param(pub, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, NULL, 0, &n) != 1 ||
            n == 0 || (v = malloc(n)) == NULL ||
            EVP_PKEY_get_octet_string_param(pub, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, v, n, &n) != 1)
            goto out;
        if (n > 0 && v[0] != 0x04) {
            /* a compressed point in the certificate: not judged here */
            goto out;
        }
    } else {
        /* another kind of key than the token's: surely not it */
        same = 0;
        if (found_sha256 != NULL)
            memcpy(found_sha256, key->pub_sha256, 32);
        goto out;
    }
    if (!pub_digest(key->ktype == CKK_RSA, v, n, md))
        goto out;
    same = CRYPTO_memcmp(md, key->pub_sha256, sizeof(md)) == 0;
    if (found_sha256 != NULL)
        memcpy(found_sha256, key->pub_sha256, 32);
out:
    ERR_clear_error();
    BN_free(bn);
    free(v);
    return same;
}

/* How a message names a key: its label, quoted as log_quote does, with
 * its CKA_ID as a URI's id= where it has one and the label is empty (a
 * key adopted by pkcs11:id=...;type=private names no label). */
static const char *key_name(const hsm_key *key, char *buf, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o;

    if (key->label[0] != '\0' || key->id_len == 0)
        return log_quote(buf, cap, key->label);
    o = (size_t)snprintf(buf, cap, "id=");
    for (size_t i = 0; i < key->id_len && o + 4 <= cap; i++) {
        buf[o++] = '%';
        buf[o++] = hex[key->id[i] >> 4];
        buf[o++] = hex[key->id[i] & 15];
    }
    buf[o < cap ? o : cap - 1] = '\0';
    return buf;
}

hsm_err hsm_key_handle(hsm_ctx *ctx, CK_SESSION_HANDLE s, hsm_key *key, CK_OBJECT_HANDLE *h)
{
    CK_ATTRIBUTE t[3];
    CK_OBJECT_HANDLE found[2];
    CK_ULONG n = 0;
    unsigned gen;
    hsm_err err;

    *h = CK_INVALID_HANDLE;
    if (key == NULL)
        return HSM_ERR_ARGS;
    if (key->sealed != NULL) {
        hsm_set_detail("a sealed secret key is not a token object");
        return HSM_ERR_ARGS;
    }
    pthread_mutex_lock(&ctx->key_mu);
    gen = ctx->key_gen;
    if (key->gen == gen && key->handle != CK_INVALID_HANDLE)
        *h = key->handle;
    pthread_mutex_unlock(&ctx->key_mu);
    if (*h != CK_INVALID_HANDLE)
        return HSM_OK;

    /* Handles are per token insertion: find the object again by identity. */
    err = find_keys(ctx, s, t, key_template(key, t), found, 2, &n);
    if (err != HSM_OK)
        return err;
    if (n != 1) {
        char q[80];
        hsm_set_detail("key %s %s", key_name(key, q, sizeof(q)),
                       n == 0 ? "not on the token" : "is no longer unique");
        return n == 0 ? HSM_ERR_KEY_NOT_FOUND : HSM_ERR_KEY_AMBIGUOUS;
    }
    /* The object under the key's label and CKA_ID now may be another key
     * (the token initialised anew and the label made again elsewhere: the
     * same CKA_ID where groupsrv made it): not used, as one not on the
     * token (a group load then compares what the label holds with the
     * certificate). Used, a PKCS#1 v1.5 unwrap answered implicit
     * rejection's substitute key as if it were the content key, and an EC
     * key's ECDH a KEK that unwraps nothing (400 for good mail). */
    if (key->have_pub) {
        unsigned char md[32];
        if (public_sha256(ctx, s, found[0], key, md) && CRYPTO_memcmp(md, key->pub_sha256, sizeof(md)) != 0) {
            char q[80];
            hsm_set_detail("key %s on the token is now another key (its %s differs from the one found "
                           "before): not used",
                           key_name(key, q, sizeof(q)), key->ktype == CKK_RSA ? "modulus" : "public point");
            return HSM_ERR_KEY_NOT_FOUND;
        }
    }
    pthread_mutex_lock(&ctx->key_mu);
    key->handle = found[0];
    key->gen = gen;
    pthread_mutex_unlock(&ctx->key_mu);
    *h = found[0];
    return HSM_OK;
}

static hsm_key *key_new(void)
{
    hsm_key *k = calloc(1, sizeof(*k));
    if (k != NULL)
        k->cls = (CK_OBJECT_CLASS)-1;
    return k;
}

void hsm_key_free(hsm_key *key)
{
    if (key == NULL)
        return;
    if (key->sealed != NULL) {
        hsm_key_free(key->sealed->seal);
        OPENSSL_clear_free(key->sealed, sizeof(*key->sealed));
    }
    /* A reference (label, id, cached handle), not key material; cleared anyway. */
    OPENSSL_clear_free(key, sizeof(*key));
}

const char *hsm_key_label(const hsm_key *key)
{
    return key != NULL ? key->label : "";
}

/* ---- find ------------------------------------------------------------------ */

struct find_arg {
    hsm_key *key;   /* identity to search for; filled on success */
    P11KitUri *uri; /* the key URI it came from, or NULL (a label) */
};

/* Whether the key URI's slot and module attributes (RFC 7512 slot-id,
 * slot-description, slot-manufacturer, library-description,
 * library-manufacturer, library-version: p11tool, p11-kit and pkcs11-tool
 * users write them) name the slot the token is in and the module loaded.
 * Asked of the token only when the URI has them. */
static hsm_err uri_names_our_slot(hsm_ctx *ctx, P11KitUri *uri)
{
    CK_SLOT_ID want = p11_kit_uri_get_slot_id(uri), have = hsm_slot_now(ctx);
    const CK_SLOT_INFO *usi = p11_kit_uri_get_slot_info(uri);
    const CK_INFO *umi = p11_kit_uri_get_module_info(uri);
    hsm_err err;

    if (want != (CK_SLOT_ID)-1 && want != have) {
        hsm_set_detail("key URI names another slot (slot-id=%lu; the token is in slot-id=%lu)", (unsigned long)want,
                       (unsigned long)have);
        hsm_detail_uri_elsewhere();
        return HSM_ERR_KEY_NOT_FOUND;
    }
    if (usi->slotDescription[0] != 0 || usi->manufacturerID[0] != 0) {
        CK_SLOT_INFO si;
        memset(&si, 0, sizeof(si));
        if ((err = P11(ctx, C_GetSlotInfo, have, &si)) != HSM_OK)
            return err;
        if (p11_kit_uri_match_slot_info(uri, &si) != 1) {
            hsm_set_detail("key URI names another slot (slot-description or slot-manufacturer differ from the "
                           "token's slot)");
            hsm_detail_uri_elsewhere();
            return HSM_ERR_KEY_NOT_FOUND;
        }
    }
    if (umi->libraryDescription[0] != 0 || umi->manufacturerID[0] != 0 || umi->libraryVersion.major != (CK_BYTE)-1) {
        CK_INFO mi;
        memset(&mi, 0, sizeof(mi));
        if ((err = P11(ctx, C_GetInfo, &mi)) != HSM_OK)
            return err;
        if (p11_kit_uri_match_module_info(uri, &mi) != 1) {
            hsm_set_detail("key URI names another module (library-description, library-manufacturer or "
                           "library-version differ from the loaded module's)");
            hsm_detail_uri_elsewhere();
            return HSM_ERR_KEY_NOT_FOUND;
        }
    }
    return HSM_OK;
}

/* Whether every slot-id= in the key URI's path is a slot id: p11-kit
 * reads the digits unchecked, so one past CK_SLOT_ID's range wrapped
 * (18446744073709551617 was slot 1, and matched the token there), the
 * largest is its mark for "no slot-id" (the slot went unchecked), and an
 * empty value was slot 0. Its own syntax check refuses anything but
 * digits. */
static bool uri_slot_ids_ok(const char *ref)
{
    /* Looked at as p11-kit reads it: without the white space it drops
     * anywhere in the URI (RFC 7512), so that "pkcs11: slot-id=" and
     * "slot -id=" are the slot-id they are to it. ref is at most 1024
     * bytes (hsm_key_find). */
    char buf[1025];
    size_t n = 0;

    for (const char *c = ref + 7; *c != '\0' && n < sizeof(buf) - 1; c++)
        if (strchr(" \t\n\r\v\f", *c) == NULL)
            buf[n++] = *c;
    buf[n] = '\0';
    const char *p = buf, *end = p + strcspn(p, "?");

    while (p < end) {
        size_t len = strcspn(p, ";?");
        if (len > 8 && strncmp(p, "slot-id=", 8) == 0) {
            CK_SLOT_ID v = 0;
            for (size_t i = 8; i < len; i++) {
                unsigned d = (unsigned)(p[i] - '0');
                if (d > 9 || v > ((CK_SLOT_ID)-1 - d) / 10)
                    return false;
                v = v * 10 + d;
            }
            if (v == (CK_SLOT_ID)-1)
                return false;
        } else if (len == 8 && strncmp(p, "slot-id=", 8) == 0) {
            return false;
        }
        p += len;
        if (p < end && *p == ';')
            p++;
    }
    return true;
}

static hsm_err op_find(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    struct find_arg *fa = arg;
    CK_ATTRIBUTE t[3];
    CK_OBJECT_HANDLE found[2];
    CK_ULONG n = 0;
    unsigned gen;
    hsm_err err;
    char q[80];

    pthread_mutex_lock(&ctx->key_mu);
    gen = ctx->key_gen;
    pthread_mutex_unlock(&ctx->key_mu);
    if (fa->uri != NULL && (err = uri_names_our_slot(ctx, fa->uri)) != HSM_OK)
        return err;
    err = find_keys(ctx, s, t, key_template(fa->key, t), found, 2, &n);
    if (err != HSM_OK)
        return err;
    if (n == 0) {
        hsm_set_detail("no key %s on the token", key_name(fa->key, q, sizeof(q)));
        return HSM_ERR_KEY_NOT_FOUND;
    }
    if (n > 1) {
        hsm_set_detail("more than one key matches %s", key_name(fa->key, q, sizeof(q)));
        return HSM_ERR_KEY_AMBIGUOUS;
    }
    if ((err = key_fill(ctx, s, found[0], fa->key)) != HSM_OK)
        return err;
    key_note_public(ctx, s, found[0], fa->key);
    fa->key->handle = found[0];
    fa->key->gen = gen;
    return HSM_OK;
}

/* ---- find many by label ------------------------------------------------------ */

/* Handles one class search reads at most. */
#define FIND_LABELS_MAX 65536
/* Finding n labels costs one search of the class plus one label read per
 * object of the class, or one search (C_FindObjectsInit, C_FindObjects,
 * C_FindObjectsFinal) per label. On a token that holds a few groups the
 * class is small and the first wins; on one that holds many groups'
 * versions (a network HSM, a token behind p11-kit's RPC: each call a round
 * trip) the class dwarfs the labels asked for, and reading every label
 * would be thousands of calls. The class search reads at most
 * FIND_LABELS_PER_LABEL handles per label wanted before it gives way to
 * the searches by label. */
#define FIND_LABELS_PER_LABEL 3

/* Searches that read every object they find (by class, or all of them) ask
 * for token objects only (CKA_TOKEN true), and not just because our keys are
 * token objects. SoftHSM 2.6's file store makes a token object in steps that
 * other processes see: the new file first, then every attribute's default
 * written one at a time outside any transaction (P11Object::init: CKA_TOKEN
 * false, CKA_LABEL empty, CKA_ENCRYPT true ...), and only then the template in
 * one transaction. Another process that reads an attribute of the object
 * between those steps runs the same defaults code on its half-loaded copy
 * and writes that copy back (ObjectFile::setAttribute outside a transaction
 * stores the whole file), over the template: the maker's next refresh reads
 * a key with the defaults (CKA_ENCRYPT true, no label), which verify_policy
 * refuses, or C_GenerateKey fails (CKR_FUNCTION_FAILED); a copy that lands
 * after the maker's checks leaves such a key behind unnoticed. A half-made
 * object has CKA_TOKEN false or absent until the template lands, so a search
 * for CKA_TOKEN true never hands it to us and we never write to it. Searches
 * by label or CKA_ID are safe already: the default label and id are empty. */
static CK_ATTRIBUTE token_objects = {CKA_TOKEN, &ck_true, sizeof(ck_true)};

struct wanted_label {
    const char *label;
    size_t index; /* in the caller's labels[] and out[] */
};

struct find_labels_arg {
    CK_OBJECT_CLASS cls;
    struct wanted_label *want; /* sorted by label */
    size_t n;
    hsm_key **out;
    unsigned char *seen; /* per want[]: objects found with that label */
    unsigned gen;
};

static int wanted_cmp(const void *a, const void *b)
{
    return strcmp(((const struct wanted_label *)a)->label, ((const struct wanted_label *)b)->label);
}

/* Takes handle h as the key want[at] names: the first object seen with
 * that label is the key, a second makes it ambiguous (NULL: hsm_key_find
 * names it). */
static hsm_err take_wanted(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, size_t at,
                           struct find_labels_arg *fa)
{
    size_t index = fa->want[at].index;
    hsm_key *k;
    hsm_err err;

    if (fa->seen[at] < 2)
        fa->seen[at]++;
    if (fa->seen[at] > 1) {
        hsm_key_free(fa->out[index]);
        fa->out[index] = NULL;
        return HSM_OK;
    }
    if ((k = key_new()) == NULL)
        return HSM_ERR_NOMEM;
    if ((err = key_fill(ctx, s, h, k)) != HSM_OK) {
        hsm_key_free(k);
        return err;
    }
    key_note_public(ctx, s, h, k);
    k->handle = h;
    k->gen = fa->gen;
    fa->out[index] = k;
    return HSM_OK;
}

/* Takes handle h if its label is one wanted. The label is read in one call
 * into a buffer of the longest label a key may have: a longer one
 * (CKR_BUFFER_TOO_SMALL) or none is no label we asked for. */
static hsm_err take_labelled(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, struct find_labels_arg *fa)
{
    struct wanted_label probe, *w;
    char label[sizeof(((hsm_key *)0)->label)];
    CK_ATTRIBUTE a = {CKA_LABEL, label, sizeof(label) - 1};
    hsm_errsave sv;
    hsm_err err;

    hsm_err_save(&sv);
    err = P11(ctx, C_GetAttributeValue, s, h, &a, 1);
    hsm_err_restore(&sv);
    if (err != HSM_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen >= sizeof(label))
        return HSM_OK;
    label[a.ulValueLen] = '\0';
    probe.label = label;
    if ((w = bsearch(&probe, fa->want, fa->n, sizeof(*fa->want), wanted_cmp)) == NULL)
        return HSM_OK;
    return take_wanted(ctx, s, h, (size_t)(w - fa->want), fa);
}

/* One search per label wanted: class and label in the template. */
static hsm_err find_each_label(hsm_ctx *ctx, CK_SESSION_HANDLE s, struct find_labels_arg *fa)
{
    CK_ATTRIBUTE t[2];
    CK_OBJECT_HANDLE hs[2];
    CK_ULONG got, i;
    hsm_err err = HSM_OK;

    for (size_t at = 0; err == HSM_OK && at < fa->n; at++) {
        t[0] = (CK_ATTRIBUTE){CKA_CLASS, &fa->cls, sizeof(fa->cls)};
        t[1] = (CK_ATTRIBUTE){CKA_LABEL, (void *)fa->want[at].label, strlen(fa->want[at].label)};
        err = find_handles(ctx, s, t, 2, hs, 2, 0, &got);
        for (i = 0; err == HSM_OK && i < got; i++)
            err = take_wanted(ctx, s, hs[i], at, fa);
    }
    return err;
}

static hsm_err op_find_labels(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    struct find_labels_arg *fa = arg;
    CK_ATTRIBUTE t[2] = {{CKA_CLASS, &fa->cls, sizeof(fa->cls)}, token_objects};
    CK_OBJECT_HANDLE *hs = NULL;
    CK_ULONG total = 0, cap, i;
    hsm_err err = HSM_OK;

    pthread_mutex_lock(&ctx->key_mu);
    fa->gen = ctx->key_gen;
    pthread_mutex_unlock(&ctx->key_mu);
    for (i = 0; i < fa->n; i++) {
        hsm_key_free(fa->out[fa->want[i].index]);
        fa->out[fa->want[i].index] = NULL;
        fa->seen[i] = 0;
    }
    /* One handle more than the scan may read tells that it should not. */
    cap = fa->n < FIND_LABELS_MAX / FIND_LABELS_PER_LABEL ? (CK_ULONG)fa->n * FIND_LABELS_PER_LABEL + 1
                                                         : FIND_LABELS_MAX + 1;
    if ((hs = calloc(cap, sizeof(*hs))) == NULL)
        return HSM_ERR_NOMEM;
    /* The handles first, the labels after C_FindObjectsFinal, as op_list:
     * not every token answers other calls in a session while it searches. */
    err = find_handles(ctx, s, t, 2, hs, cap, 0, &total);
    if (err == HSM_OK && total == cap) {
        err = find_each_label(ctx, s, fa);
        goto out;
    }
    for (i = 0; err == HSM_OK && i < total; i++)
        err = take_labelled(ctx, s, hs[i], fa);
out:
    free(hs);
    hsm_clear_detail();
    return err;
}

hsm_err hsm_key_find_labels(hsm_ctx *ctx, hsm_key_class cls, const char *const *labels, size_t n, hsm_key **out)
{
    struct find_labels_arg fa;
    hsm_err err = HSM_ERR_NOMEM;
    size_t i;

    if (out != NULL)
        memset(out, 0, n * sizeof(*out));
    if (ctx == NULL || labels == NULL || out == NULL || (cls != HSM_CLASS_PRIVATE && cls != HSM_CLASS_PUBLIC &&
                                                         cls != HSM_CLASS_SECRET))
        return HSM_ERR_ARGS;
    if (n == 0)
        return HSM_OK;
    memset(&fa, 0, sizeof(fa));
    fa.cls = hsm_to_class(cls);
    fa.out = out;
    if (n > SIZE_MAX / sizeof(*fa.want) || (fa.want = calloc(n, sizeof(*fa.want))) == NULL ||
        (fa.seen = calloc(n, 1)) == NULL)
        goto out;
    for (i = 0; i < n; i++) {
        if (labels[i] == NULL || labels[i][0] == '\0')
            continue;
        fa.want[fa.n].label = labels[i];
        fa.want[fa.n++].index = i;
    }
    if (fa.n == 0) {
        err = HSM_OK;
        goto out;
    }
    qsort(fa.want, fa.n, sizeof(*fa.want), wanted_cmp);
    err = hsm_run(ctx, op_find_labels, &fa);
out:
    if (err != HSM_OK) {
        for (i = 0; i < n; i++) {
            hsm_key_free(out[i]);
            out[i] = NULL;
        }
    }
    free(fa.want);
    free(fa.seen);
    return err;
}

hsm_err hsm_key_find(hsm_ctx *ctx, const char *ref, hsm_key_class cls, hsm_key **out)
{
    hsm_key *key = NULL;
    P11KitUri *uri = NULL;
    struct find_arg fa;
    hsm_err err;

    if (out != NULL)
        *out = NULL;
    hsm_clear_detail();
    if (ctx == NULL || ref == NULL || out == NULL || *ref == '\0' || strlen(ref) > 1024)
        return HSM_ERR_ARGS;
    if ((key = key_new()) == NULL)
        return HSM_ERR_NOMEM;
    if (cls != 0)
        key->cls = hsm_to_class(cls);

    if (strncmp(ref, "pkcs11:", 7) == 0) {
        CK_ATTRIBUTE *a;
        int rc;

        if ((uri = p11_kit_uri_new()) == NULL) {
            err = HSM_ERR_NOMEM;
            goto out;
        }
        /* Every attribute RFC 7512 has, the slot's and the module's too
         * (parsed for an object on a token alone they were unrecognised,
         * and the key, on the very slot named, was "on another token"). */
        rc = p11_kit_uri_parse(ref, P11_KIT_URI_FOR_ANY, uri);
        if (rc != P11_KIT_URI_OK) {
            hsm_set_detail("key URI: %s", p11_kit_uri_message(rc));
            err = HSM_ERR_URI;
            goto out;
        }
        if (p11_kit_uri_any_unrecognized(uri)) {
            hsm_set_detail("key URI has an attribute that names no token, slot, module or object (RFC 7512)");
            err = HSM_ERR_URI;
            goto out;
        }
        if (!uri_slot_ids_ok(ref)) {
            hsm_set_detail("key URI's slot-id= is no slot id (empty, or past the largest, %lu)",
                           (unsigned long)((CK_SLOT_ID)-1 - 1));
            err = HSM_ERR_URI;
            goto out;
        }
        if ((err = hsm_uri_module_check(ctx, uri, "the key URI")) != HSM_OK)
            goto out;
        /* token=/serial=/... in the key URI must name our token. */
        CK_TOKEN_INFO ti;
        hsm_token_info_copy(ctx, &ti);
        if (p11_kit_uri_match_token_info(uri, &ti) != 1) {
            hsm_set_detail("key URI names another token");
            hsm_detail_uri_elsewhere();
            err = HSM_ERR_KEY_NOT_FOUND;
            goto out;
        }
        if ((a = p11_kit_uri_get_attribute(uri, CKA_LABEL)) != NULL && a->pValue != NULL) {
            if (a->ulValueLen >= sizeof(key->label)) {
                /* Said, not "invalid arguments": the token may well
                 * hold such a label (pkcs11-tool takes any length). */
                hsm_set_detail("key URI's object= is %lu bytes, longer than the %zu groupsrv takes: name the key "
                               "by id= instead",
                               (unsigned long)a->ulValueLen, sizeof(key->label) - 1);
                err = HSM_ERR_ARGS;
                goto out;
            }
            /* %00 in it: the label searched for would end there, and
             * "object=eng%00x" find the key labelled "eng". */
            if (memchr(a->pValue, '\0', a->ulValueLen) != NULL) {
                hsm_set_detail("key URI's object= has a NUL byte (%%00), which no label groupsrv takes has");
                err = HSM_ERR_URI;
                goto out;
            }
            memcpy(key->label, a->pValue, a->ulValueLen);
            key->label[a->ulValueLen] = '\0';
        }
        if ((a = p11_kit_uri_get_attribute(uri, CKA_ID)) != NULL && a->pValue != NULL) {
            if (a->ulValueLen > sizeof(key->id)) {
                hsm_set_detail("key URI's id= is %lu bytes, longer than the %zu groupsrv takes: name the key by "
                               "object= instead",
                               (unsigned long)a->ulValueLen, sizeof(key->id));
                err = HSM_ERR_ARGS;
                goto out;
            }
            memcpy(key->id, a->pValue, a->ulValueLen);
            key->id_len = a->ulValueLen;
        }
        if ((a = p11_kit_uri_get_attribute(uri, CKA_CLASS)) != NULL &&
            a->ulValueLen == sizeof(CK_OBJECT_CLASS)) {
            CK_OBJECT_CLASS c;
            memcpy(&c, a->pValue, sizeof(c));
            if (cls != 0 && c != key->cls) {
                hsm_set_detail("key URI type= contradicts the requested key class");
                err = HSM_ERR_KEY_NOT_FOUND;
                goto out;
            }
            key->cls = c;
        }
        if (key->label[0] == '\0' && key->id_len == 0) {
            hsm_set_detail("key URI needs object= or id=");
            err = HSM_ERR_URI;
            goto out;
        }
    } else {
        if (util_strlcpy(key->label, ref, sizeof(key->label)) != UTIL_OK) {
            hsm_set_detail("key label of %zu bytes, longer than the %zu groupsrv takes", strlen(ref),
                           sizeof(key->label) - 1);
            err = HSM_ERR_ARGS;
            goto out;
        }
    }

    fa.key = key;
    fa.uri = uri;
    err = hsm_run(ctx, op_find, &fa);
    if (err != HSM_OK)
        goto out;
    *out = key;
    key = NULL;
out:
    if (uri != NULL)
        p11_kit_uri_free(uri);
    hsm_key_free(key);
    return err;
}

/* ---- destroy ------------------------------------------------------------------ */

static hsm_err op_destroy(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    hsm_key *key = arg;
    CK_OBJECT_HANDLE h;
    hsm_err err;

    if ((err = hsm_key_handle(ctx, s, key, &h)) != HSM_OK)
        return err;
    err = P11(ctx, C_DestroyObject, s, h);
    if (err == HSM_OK) {
        pthread_mutex_lock(&ctx->key_mu);
        key->handle = CK_INVALID_HANDLE;
        key->gen = 0;
        pthread_mutex_unlock(&ctx->key_mu);
    }
    return err;
}

hsm_err hsm_key_destroy(hsm_ctx *ctx, hsm_key *key)
{
    if (ctx == NULL || key == NULL || key->sealed != NULL)
        return HSM_ERR_ARGS;
    return hsm_run(ctx, op_destroy, key);
}

/* ---- generation ----------------------------------------------------------- */

#define TMPL_MAX 32

typedef struct tmpl {
    CK_ATTRIBUTE a[TMPL_MAX];
    CK_ULONG n;
} tmpl;

static void t_add(tmpl *t, CK_ATTRIBUTE_TYPE type, void *v, CK_ULONG len)
{
    /* TMPL_MAX is sized for the largest template below; never exceeded. */
    if (t->n < TMPL_MAX) {
        t->a[t->n].type = type;
        t->a[t->n].pValue = v;
        t->a[t->n].ulValueLen = len;
        t->n++;
    }
}

static void t_bool(tmpl *t, CK_ATTRIBUTE_TYPE type, bool v)
{
    t_add(t, type, v ? &ck_true : &ck_false, sizeof(CK_BBOOL));
}

struct gen_arg {
    const hsm_keygen_spec *spec;
    unsigned char id[64];
    size_t id_len;
    unsigned prot;        /* enum hsm_protection to put on the key */
    unsigned stored;      /* ...and what was read back */
    hsm_caps caps;        /* loaded before the op (never inside one) */
    hsm_key *pub, *priv, *secret;
};

/* Fails with HSM_ERR_KEY_EXISTS when a key with this label or id exists. */
static hsm_err check_unique(hsm_ctx *ctx, CK_SESSION_HANDLE s, const char *label, const unsigned char *id,
                            size_t id_len)
{
    CK_ATTRIBUTE t;
    CK_OBJECT_HANDLE found[1];
    CK_ULONG n = 0;
    hsm_err err;
    char q[80];

    t.type = CKA_LABEL;
    t.pValue = (void *)label;
    t.ulValueLen = strlen(label);
    if ((err = find_keys(ctx, s, &t, 1, found, 1, &n)) != HSM_OK)
        return err;
    if (n == 0) {
        t.type = CKA_ID;
        t.pValue = (void *)id;
        t.ulValueLen = id_len;
        if ((err = find_keys(ctx, s, &t, 1, found, 1, &n)) != HSM_OK)
            return err;
    }
    if (n != 0) {
        hsm_set_detail("a key labelled %s (or with its id) exists", log_quote(q, sizeof(q), label));
        return HSM_ERR_KEY_EXISTS;
    }
    return HSM_OK;
}

/* CKA_ALLOWED_MECHANISMS for a private key with this usage: only what the
 * usage needs, so a stolen session cannot e.g. raw-RSA decrypt. A CA key
 * signs with CKM_SHA256_RSA_PKCS, or where the token lacks it with
 * CKM_RSA_PKCS over a DigestInfo made in software (hsm_sign). */
static CK_ULONG pair_mechs(const hsm_keygen_spec *spec, const hsm_caps *caps, CK_MECHANISM_TYPE *m)
{
    CK_ULONG n = 0;

    if (spec->type == HSM_KEYTYPE_RSA) {
        if (spec->usage & (HSM_USE_DECRYPT | HSM_USE_UNWRAP)) {
            m[n++] = CKM_RSA_PKCS_OAEP;
            if (spec->usage & HSM_USE_PKCS1V15)
                m[n++] = CKM_RSA_PKCS;
        }
        if (spec->usage & HSM_USE_SIGN) {
            if (hsm_caps_has(caps, HSM_MECH_SHA256_RSA_PKCS, HSM_MF_SIGN) ||
                !hsm_caps_has(caps, HSM_MECH_RSA_PKCS, HSM_MF_SIGN))
                m[n++] = CKM_SHA256_RSA_PKCS;
            else if (!(spec->usage & HSM_USE_PKCS1V15))
                m[n++] = CKM_RSA_PKCS;
        }
    } else {
        if (spec->usage & HSM_USE_SIGN) {
            m[n++] = CKM_ECDSA;
            m[n++] = CKM_ECDSA_SHA256;
        }
        if (spec->usage & HSM_USE_DERIVE)
            m[n++] = CKM_ECDH1_DERIVE;
    }
    return n;
}

static CK_ULONG secret_mechs(const hsm_keygen_spec *spec, CK_MECHANISM_TYPE *m)
{
    CK_ULONG n = 0;

    if (spec->type == HSM_KEYTYPE_AES) {
        if (spec->usage & (HSM_USE_WRAP | HSM_USE_UNWRAP)) {
            m[n++] = CKM_AES_KEY_WRAP;
            m[n++] = CKM_AES_KEY_WRAP_PAD;
        }
        if (spec->usage & HSM_USE_WRAP_ECB)
            m[n++] = CKM_AES_ECB;
        if (spec->usage & (HSM_USE_ENCRYPT | HSM_USE_DECRYPT)) {
            m[n++] = CKM_AES_GCM;
            m[n++] = CKM_AES_CBC_PAD;
        }
    } else if (spec->usage & HSM_USE_SIGN) {
        m[n++] = CKM_SHA256_HMAC;
    }
    return n;
}

static const char *attr_name(CK_ATTRIBUTE_TYPE t)
{
    switch (t) {
    case CKA_DECRYPT: return "CKA_DECRYPT";
    case CKA_UNWRAP: return "CKA_UNWRAP";
    case CKA_SIGN: return "CKA_SIGN";
    case CKA_SIGN_RECOVER: return "CKA_SIGN_RECOVER";
    case CKA_DERIVE: return "CKA_DERIVE";
    case CKA_SENSITIVE: return "CKA_SENSITIVE";
    case CKA_EXTRACTABLE: return "CKA_EXTRACTABLE";
    case CKA_ENCRYPT: return "CKA_ENCRYPT";
    case CKA_WRAP: return "CKA_WRAP";
    case CKA_VERIFY: return "CKA_VERIFY";
    case CKA_VERIFY_RECOVER: return "CKA_VERIFY_RECOVER";
    case CKA_WRAP_WITH_TRUSTED: return "CKA_WRAP_WITH_TRUSTED";
    default: return "an attribute";
    }
}

/* Reads the usage attributes back: the token must not have added any. */
static hsm_err verify_policy(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_OBJECT_CLASS cls,
                             unsigned usage, bool extractable, bool replicable)
{
    struct {
        CK_ATTRIBUTE_TYPE type;
        bool want;
    } chk[12];
    size_t n = 0, i;

    if (cls == CKO_PRIVATE_KEY) {
        chk[n].type = CKA_DECRYPT, chk[n++].want = (usage & HSM_USE_DECRYPT) != 0;
        chk[n].type = CKA_UNWRAP, chk[n++].want = (usage & HSM_USE_UNWRAP) != 0;
        chk[n].type = CKA_SIGN, chk[n++].want = (usage & HSM_USE_SIGN) != 0;
        chk[n].type = CKA_SIGN_RECOVER, chk[n++].want = false;
        chk[n].type = CKA_DERIVE, chk[n++].want = (usage & HSM_USE_DERIVE) != 0;
        chk[n].type = CKA_SENSITIVE, chk[n++].want = true;
        chk[n].type = CKA_EXTRACTABLE, chk[n++].want = replicable;
    } else if (cls == CKO_PUBLIC_KEY) {
        chk[n].type = CKA_ENCRYPT, chk[n++].want = (usage & HSM_USE_DECRYPT) != 0;
        chk[n].type = CKA_WRAP, chk[n++].want = (usage & HSM_USE_UNWRAP) != 0;
        chk[n].type = CKA_VERIFY, chk[n++].want = (usage & HSM_USE_SIGN) != 0;
        chk[n].type = CKA_VERIFY_RECOVER, chk[n++].want = false;
        chk[n].type = CKA_DERIVE, chk[n++].want = false;
    } else {
        chk[n].type = CKA_ENCRYPT, chk[n++].want = (usage & (HSM_USE_ENCRYPT | HSM_USE_WRAP_ECB)) != 0;
        chk[n].type = CKA_DECRYPT, chk[n++].want = (usage & HSM_USE_DECRYPT) != 0;
        chk[n].type = CKA_WRAP, chk[n++].want = (usage & HSM_USE_WRAP) != 0;
        chk[n].type = CKA_UNWRAP, chk[n++].want = (usage & HSM_USE_UNWRAP) != 0;
        chk[n].type = CKA_SIGN, chk[n++].want = (usage & HSM_USE_SIGN) != 0;
        chk[n].type = CKA_VERIFY, chk[n++].want = false;
        chk[n].type = CKA_DERIVE, chk[n++].want = (usage & HSM_USE_DERIVE) != 0;
        chk[n].type = CKA_SENSITIVE, chk[n++].want = true;
        chk[n].type = CKA_EXTRACTABLE, chk[n++].want = extractable || replicable;
    }
    /* A token that ignored CKA_WRAP_WITH_TRUSTED would have made a key any
     * wrapping key can take out: never keep such a key. */
    if (replicable && cls != CKO_PUBLIC_KEY)
        chk[n].type = CKA_WRAP_WITH_TRUSTED, chk[n++].want = true;
    for (i = 0; i < n; i++) {
        if (get_bool(ctx, s, h, chk[i].type) != chk[i].want) {
            hsm_set_detail("token changed key attribute %s (want %s)", attr_name(chk[i].type),
                           chk[i].want ? "true" : "false");
            return HSM_ERR_KEY_POLICY;
        }
    }
    return HSM_OK;
}

/* Which of the protections asked for the token kept (read back). */
static unsigned read_back_prot(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, unsigned asked)
{
    unsigned got = 0;
    hsm_errsave sv;

    hsm_err_save(&sv);
    if (asked & HSM_PROT_ALLOWED_MECHANISMS) {
        CK_MECHANISM_TYPE m[16];
        size_t n = 0;
        bool present = false;
        if (hsm_get_mechs(ctx, s, h, m, GS_ARRAY_LEN(m), &n, &present) == HSM_OK && present && n > 0)
            got |= HSM_PROT_ALLOWED_MECHANISMS;
    }
    if (asked & HSM_PROT_UNWRAP_TEMPLATE) {
        CK_ATTRIBUTE q = {CKA_UNWRAP_TEMPLATE, NULL, 0};
        if (P11(ctx, C_GetAttributeValue, s, h, &q, 1) == HSM_OK && q.ulValueLen != CK_UNAVAILABLE_INFORMATION &&
            q.ulValueLen >= sizeof(CK_ATTRIBUTE))
            got |= HSM_PROT_UNWRAP_TEMPLATE;
    }
    hsm_err_restore(&sv);
    return got;
}

static hsm_err make_key_ref(const struct gen_arg *ga, CK_OBJECT_CLASS cls, CK_KEY_TYPE kt, CK_OBJECT_HANDLE h,
                            unsigned gen, bool always_auth, hsm_key **out)
{
    hsm_key *k = key_new();

    *out = NULL;
    if (k == NULL)
        return HSM_ERR_NOMEM;
    k->cls = cls;
    k->ktype = kt;
    util_strlcpy(k->label, ga->spec->label, sizeof(k->label));
    memcpy(k->id, ga->id, ga->id_len);
    k->id_len = ga->id_len;
    k->handle = h;
    k->gen = gen;
    k->always_auth = always_auth;
    *out = k;
    return HSM_OK;
}

/* What a generation asked for, for messages: "RSA-3072, CKA_UNWRAP_TEMPLATE". */
static void describe_request(const struct gen_arg *ga, char *buf, size_t cap)
{
    const hsm_keygen_spec *spec = ga->spec;
    const char *kind = spec->type == HSM_KEYTYPE_RSA ? "RSA" : spec->type == HSM_KEYTYPE_EC ? "EC"
                       : spec->type == HSM_KEYTYPE_AES ? "AES" : "generic secret";

    snprintf(buf, cap, "%s-%u%s%s", kind, spec->bits,
             (ga->prot & HSM_PROT_ALLOWED_MECHANISMS) ? ", CKA_ALLOWED_MECHANISMS" : "",
             (ga->prot & HSM_PROT_UNWRAP_TEMPLATE) ? ", CKA_UNWRAP_TEMPLATE" : "");
}

/* After a refused generation: name what was asked and what to do. */
static void explain_gen_failure(const struct gen_arg *ga, const char *fn)
{
    char what[96], prev[192];
    CK_RV rv = hsm_last_rv();
    const char *hint = "";

    describe_request(ga, what, sizeof(what));
    util_strlcpy(prev, hsm_last_error_detail(), sizeof(prev));
    switch (rv) {
    case CKR_ATTRIBUTE_TYPE_INVALID:
    case CKR_ATTRIBUTE_VALUE_INVALID:
    case CKR_TEMPLATE_INCONSISTENT:
        hint = ": the token refuses an attribute of this key; `groupsrv check` shows which it supports";
        break;
    case CKR_MECHANISM_INVALID:
        hint = ": the token cannot generate this kind of key; make it with the token's own tool and "
               "adopt it (--use-key)";
        break;
    case CKR_KEY_SIZE_RANGE:
        hint = ": the token does not offer this key size (try another --key)";
        break;
    case CKR_SESSION_READ_ONLY:
    case CKR_TOKEN_WRITE_PROTECTED:
        hint = ": the token is write-protected (CKF_WRITE_PROTECTED): no key can be made on it, it can only serve";
        break;
    default:
        break;
    }
    hsm_set_detail("%s(%s): %s%s", fn, what, hsm_ckr_name(rv), hint);
    (void)prev;
}

static bool attr_refusal_rv(CK_RV rv)
{
    /* NSS softokn says CKR_GENERAL_ERROR for an attribute it cannot store
     * on a token object; p11-kit's RPC CKR_DEVICE_ERROR for one it cannot
     * carry. */
    return rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_VALUE_INVALID ||
           rv == CKR_TEMPLATE_INCONSISTENT || rv == CKR_GENERAL_ERROR || rv == CKR_DEVICE_ERROR ||
           rv == CKR_FUNCTION_FAILED;
}

static hsm_err op_gen_pair(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    struct gen_arg *ga = arg;
    const hsm_keygen_spec *spec = ga->spec;
    CK_OBJECT_CLASS pubc = CKO_PUBLIC_KEY, privc = CKO_PRIVATE_KEY;
    CK_KEY_TYPE kt = spec->type == HSM_KEYTYPE_RSA ? CKK_RSA : CKK_EC;
    CK_ULONG modbits = spec->bits;
    unsigned char e65537[] = {0x01, 0x00, 0x01};
    CK_MECHANISM mech = {spec->type == HSM_KEYTYPE_RSA ? CKM_RSA_PKCS_KEY_PAIR_GEN : CKM_EC_KEY_PAIR_GEN,
                         NULL, 0};
    CK_MECHANISM_TYPE mechs[8];
    CK_ULONG nmechs = pair_mechs(spec, &ga->caps, mechs);
    /* Keys unwrapped with this key are born sensitive, whatever the caller asks. */
    CK_ATTRIBUTE unwrap_tmpl[] = {{CKA_SENSITIVE, &ck_true, sizeof(ck_true)}};
    CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
    tmpl pt = {.n = 0}, kt_ = {.n = 0};
    unsigned gen;
    unsigned u = spec->usage;
    hsm_err err;

    ga->stored = 0;
    if ((err = check_unique(ctx, s, spec->label, ga->id, ga->id_len)) != HSM_OK)
        return err;

    t_add(&pt, CKA_CLASS, &pubc, sizeof(pubc));
    t_add(&pt, CKA_KEY_TYPE, &kt, sizeof(kt));
    t_bool(&pt, CKA_TOKEN, true);
    t_bool(&pt, CKA_PRIVATE, false);
    t_add(&pt, CKA_LABEL, (void *)spec->label, strlen(spec->label));
    t_add(&pt, CKA_ID, ga->id, ga->id_len);
    t_bool(&pt, CKA_ENCRYPT, kt == CKK_RSA && (u & HSM_USE_DECRYPT));
    t_bool(&pt, CKA_WRAP, kt == CKK_RSA && (u & HSM_USE_UNWRAP));
    t_bool(&pt, CKA_VERIFY, (u & HSM_USE_SIGN) != 0);
    t_bool(&pt, CKA_VERIFY_RECOVER, false);
    t_bool(&pt, CKA_DERIVE, false);
    if (kt == CKK_RSA) {
        t_add(&pt, CKA_MODULUS_BITS, &modbits, sizeof(modbits));
        t_add(&pt, CKA_PUBLIC_EXPONENT, e65537, sizeof(e65537));
    } else if (spec->bits == 256) {
        t_add(&pt, CKA_EC_PARAMS, (void *)oid_p256, sizeof(oid_p256));
    } else {
        t_add(&pt, CKA_EC_PARAMS, (void *)oid_p384, sizeof(oid_p384));
    }

    t_add(&kt_, CKA_CLASS, &privc, sizeof(privc));
    t_add(&kt_, CKA_KEY_TYPE, &kt, sizeof(kt));
    t_bool(&kt_, CKA_TOKEN, true);
    t_bool(&kt_, CKA_PRIVATE, true);
    t_bool(&kt_, CKA_SENSITIVE, true);
    t_bool(&kt_, CKA_EXTRACTABLE, spec->replicable);
    if (spec->replicable)
        t_bool(&kt_, CKA_WRAP_WITH_TRUSTED, true);
    t_add(&kt_, CKA_LABEL, (void *)spec->label, strlen(spec->label));
    t_add(&kt_, CKA_ID, ga->id, ga->id_len);
    t_bool(&kt_, CKA_DECRYPT, kt == CKK_RSA && (u & HSM_USE_DECRYPT));
    t_bool(&kt_, CKA_UNWRAP, kt == CKK_RSA && (u & HSM_USE_UNWRAP));
    t_bool(&kt_, CKA_SIGN, (u & HSM_USE_SIGN) != 0);
    t_bool(&kt_, CKA_SIGN_RECOVER, false);
    t_bool(&kt_, CKA_DERIVE, kt == CKK_EC && (u & HSM_USE_DERIVE));
    if ((u & HSM_USE_UNWRAP) && (ga->prot & HSM_PROT_UNWRAP_TEMPLATE))
        t_add(&kt_, CKA_UNWRAP_TEMPLATE, unwrap_tmpl, sizeof(unwrap_tmpl));
    if (nmechs > 0 && (ga->prot & HSM_PROT_ALLOWED_MECHANISMS))
        t_add(&kt_, CKA_ALLOWED_MECHANISMS, mechs, nmechs * sizeof(mechs[0]));

    pthread_mutex_lock(&ctx->key_mu);
    gen = ctx->key_gen;
    pthread_mutex_unlock(&ctx->key_mu);
    err = P11(ctx, C_GenerateKeyPair, s, &mech, pt.a, pt.n, kt_.a, kt_.n, &hpub, &hpriv);
    if (err != HSM_OK) {
        explain_gen_failure(ga, "C_GenerateKeyPair");
        goto out;
    }
    if ((err = verify_policy(ctx, s, hpriv, CKO_PRIVATE_KEY, u, false, spec->replicable)) != HSM_OK ||
        (err = verify_policy(ctx, s, hpub, CKO_PUBLIC_KEY, u, false, false)) != HSM_OK)
        goto out;
    ga->stored = read_back_prot(ctx, s, hpriv, ga->prot & ((u & HSM_USE_UNWRAP) ? HSM_PROT_ALL
                                                            : HSM_PROT_ALLOWED_MECHANISMS));
    if ((err = make_key_ref(ga, CKO_PUBLIC_KEY, kt, hpub, gen, false, &ga->pub)) != HSM_OK ||
        (err = make_key_ref(ga, CKO_PRIVATE_KEY, kt, hpriv, gen, get_bool(ctx, s, hpriv, CKA_ALWAYS_AUTHENTICATE),
                            &ga->priv)) != HSM_OK)
        goto out;
    hpub = hpriv = CK_INVALID_HANDLE;
out:
    if (err != HSM_OK) {
        /* Never leave a half-made or over-permissive pair on the token. */
        hsm_destroy_session_obj(ctx, s, &hpub);
        hsm_destroy_session_obj(ctx, s, &hpriv);
        hsm_key_free(ga->pub);
        hsm_key_free(ga->priv);
        ga->pub = ga->priv = NULL;
    }
    return err;
}

static hsm_err check_spec(const hsm_keygen_spec *spec, struct gen_arg *ga)
{
    memset(ga, 0, sizeof(*ga));
    ga->spec = spec;
    if (spec == NULL || spec->label == NULL || spec->label[0] == '\0' || strlen(spec->label) >= 128)
        return HSM_ERR_ARGS;
    if (spec->id != NULL) {
        if (spec->id_len == 0 || spec->id_len > sizeof(ga->id))
            return HSM_ERR_ARGS;
        memcpy(ga->id, spec->id, spec->id_len);
        ga->id_len = spec->id_len;
    } else {
        /* id = first 16 bytes of SHA-256(label): stable, so tools that pair
         * keys and certificates by CKA_ID find them. */
        unsigned char md[32];
        if (EVP_Digest(spec->label, strlen(spec->label), md, NULL, EVP_sha256(), NULL) != 1)
            return HSM_ERR_NOMEM;
        memcpy(ga->id, md, 16);
        ga->id_len = 16;
    }
    return HSM_OK;
}

/* The protections a key of this usage can carry at all. */
static unsigned prot_applicable(const hsm_keygen_spec *spec)
{
    unsigned p = HSM_PROT_ALLOWED_MECHANISMS;

    if (spec->usage & HSM_USE_UNWRAP)
        p |= HSM_PROT_UNWRAP_TEMPLATE;
    return p;
}

/* The protections the capability set says the token stores. */
static unsigned prot_supported(const hsm_caps *caps)
{
    unsigned p = 0;

    if (caps->allowed_mechanisms == HSM_ATTR_YES)
        p |= HSM_PROT_ALLOWED_MECHANISMS;
    if (caps->unwrap_template == HSM_ATTR_YES)
        p |= HSM_PROT_UNWRAP_TEMPLATE;
    return p;
}

static const char *prot_name(unsigned p)
{
    return p == HSM_PROT_ALLOWED_MECHANISMS ? "CKA_ALLOWED_MECHANISMS"
           : p == HSM_PROT_UNWRAP_TEMPLATE ? "CKA_UNWRAP_TEMPLATE"
                                           : "CKA_ALLOWED_MECHANISMS and CKA_UNWRAP_TEMPLATE";
}

/* Is the key pair's size within what the token says its generation
 * mechanism makes (C_GetMechanismInfo ulMinKeySize..ulMaxKeySize)? A
 * token that says so (a PIV card: RSA up to 2048) may answer a larger
 * size with anything from CKR_KEY_SIZE_RANGE to CKR_TEMPLATE_INCONSISTENT:
 * the range it reports is named up front instead. Sizes reported below
 * 256 (some modules give bytes, or nothing) are not trusted. False with
 * the detail set. */
static bool size_offered(const hsm_caps *caps, const hsm_keygen_spec *spec)
{
    hsm_mech m = spec->type == HSM_KEYTYPE_EC ? HSM_MECH_EC_KEYGEN : HSM_MECH_RSA_KEYGEN;
    unsigned long lo = caps->mech[m].min_bits, hi = caps->mech[m].max_bits;

    if (!caps->mech[m].present || hi < 256 || lo > hi)
        return true;
    if (spec->bits >= lo && spec->bits <= hi)
        return true;
    hsm_set_detail("%s %u: the token makes %s keys of %lu to %lu bits only (%s ulMinKeySize/ulMaxKeySize; "
                   "`groupsrv check` shows them): choose a size within them (--key)",
                   spec->type == HSM_KEYTYPE_EC ? "EC" : "RSA", spec->bits,
                   spec->type == HSM_KEYTYPE_EC ? "EC" : "RSA", lo, hi, hsm_mech_name(m));
    return false;
}

/* Runs a generation op. best: with what the token supports, and again
 * without a protection it refuses at generation; else with all of them
 * (strict). res may be NULL (strict). */
static hsm_err generate(hsm_ctx *ctx, hsm_op_fn op, struct gen_arg *ga, bool best, hsm_keygen_result *res,
                        const char *fn)
{
    unsigned want = prot_applicable(ga->spec), drops[3];
    CK_MECHANISM_TYPE m[8];
    size_t ndrops = 0, i;
    hsm_err err;

    if (best)
        hsm_caps_load_complete(ctx, &ga->caps);
    else
        hsm_caps_load(ctx, &ga->caps);
    if (op == op_gen_pair && !size_offered(&ga->caps, ga->spec))
        return HSM_ERR_MECHANISM;
    if (best && ga->caps.incomplete) {
        /* What the probe could not try reads as unsupported: a key made on
         * it would lack protections the token keeps, recorded for good. */
        hsm_set_detail("the token's capabilities could not be probed (%.180s): no key made with fewer protections "
                       "than it may keep; try again",
                       ga->caps.incomplete_why);
        return HSM_ERR_DEVICE;
    }
    /* A key whose usage needs no mechanism gets no mechanism list. */
    if ((op == op_gen_pair ? pair_mechs(ga->spec, &ga->caps, m) : secret_mechs(ga->spec, m)) == 0)
        want &= ~(unsigned)HSM_PROT_ALLOWED_MECHANISMS;
    ga->prot = best ? want & prot_supported(&ga->caps) : want;
    err = hsm_run(ctx, op, ga);
    if (err != HSM_OK && best && ga->prot != 0 && attr_refusal_rv(hsm_last_rv())) {
        /* The session-object probe said yes, the token object said no:
         * find which protection it refuses, most likely first. */
        char first[192];
        util_strlcpy(first, hsm_last_error_detail(), sizeof(first));
        if (ga->prot & HSM_PROT_ALLOWED_MECHANISMS)
            drops[ndrops++] = HSM_PROT_ALLOWED_MECHANISMS;
        if (ga->prot & HSM_PROT_UNWRAP_TEMPLATE)
            drops[ndrops++] = HSM_PROT_UNWRAP_TEMPLATE;
        if (ndrops == 2)
            drops[ndrops++] = HSM_PROT_ALL;
        unsigned asked = ga->prot;
        for (i = 0; i < ndrops && err != HSM_OK; i++) {
            ga->prot = asked & ~drops[i];
            err = hsm_run(ctx, op, ga);
            if (err == HSM_OK) {
                char why[192];
                /* Name the token's own answer, kept from the first try. */
                snprintf(why, sizeof(why), "%s refused %s on a token key: %.100s", fn, prot_name(drops[i]), first);
                hsm_caps_note_refused(ctx, drops[i], why);
                if (res != NULL)
                    util_strlcpy(res->why, why, sizeof(res->why));
                log_warn("%s; the key is made without it (a recorded weakening)", why);
            }
        }
        if (err != HSM_OK)
            hsm_set_detail("%s", first);
    } else if (err != HSM_OK && !best && ga->prot != 0 && hsm_last_rv() == CKR_GENERAL_ERROR) {
        /* Strict (every protection, as a receiving token's transport key
         * needs): a token that keeps them on session keys only refuses the
         * token key, NSS softokn with CKR_GENERAL_ERROR, which read as
         * "token device error" (a broken token) instead of what it is. */
        char first[192];
        util_strlcpy(first, hsm_last_error_detail(), sizeof(first));
        hsm_set_detail("%s refused a token key with %s (%.140s): this token does not keep them on token keys "
                       "(`groupsrv check` shows what it keeps)",
                       fn, prot_name(ga->prot), first);
        err = HSM_ERR_MECHANISM;
    }
    if (err == HSM_OK && res != NULL) {
        res->protections = ga->stored;
        res->missing = want & ~ga->stored;
        if (res->missing != 0 && res->why[0] == '\0') {
            const char *w = (res->missing & HSM_PROT_ALLOWED_MECHANISMS) ? ga->caps.allowed_mechanisms_why
                                                                          : ga->caps.unwrap_template_why;
            snprintf(res->why, sizeof(res->why), "%s", w[0] ? w : "the token did not keep it");
        }
    }
    if (err == HSM_OK && !best && ga->stored != want) {
        /* Strict: a token that silently dropped a protection fails too. */
        hsm_set_detail("%s: the token did not keep %s (accepted, not stored); `groupsrv check` shows what it "
                       "supports", fn, prot_name(want & ~ga->stored));
        err = HSM_ERR_KEY_POLICY;
    }
    return err;
}

static hsm_err gen_pair_common(hsm_ctx *ctx, const hsm_keygen_spec *spec, bool best, hsm_keygen_result *res,
                               hsm_key **pub, hsm_key **priv)
{
    struct gen_arg ga;
    hsm_err err;
    const unsigned known =
        HSM_USE_DECRYPT | HSM_USE_UNWRAP | HSM_USE_SIGN | HSM_USE_DERIVE | HSM_USE_PKCS1V15;

    if (pub != NULL)
        *pub = NULL;
    if (priv != NULL)
        *priv = NULL;
    if (res != NULL)
        memset(res, 0, sizeof(*res));
    hsm_clear_detail();
    if (ctx == NULL || (err = check_spec(spec, &ga)) != HSM_OK)
        return HSM_ERR_ARGS;
    if ((spec->usage & ~known) != 0 || spec->extractable)
        return HSM_ERR_ARGS;
    if (spec->type == HSM_KEYTYPE_RSA) {
        if (spec->bits != 2048 && spec->bits != 3072 && spec->bits != 4096)
            return HSM_ERR_ARGS;
        if (spec->usage & HSM_USE_DERIVE)
            return HSM_ERR_ARGS;
    } else if (spec->type == HSM_KEYTYPE_EC) {
        if (spec->bits != 256 && spec->bits != 384)
            return HSM_ERR_ARGS;
        if (spec->usage & (HSM_USE_DECRYPT | HSM_USE_UNWRAP | HSM_USE_PKCS1V15))
            return HSM_ERR_ARGS;
    } else {
        return HSM_ERR_ARGS;
    }
    err = generate(ctx, op_gen_pair, &ga, best, res, "C_GenerateKeyPair");
    if (err != HSM_OK) {
        hsm_key_free(ga.pub);
        hsm_key_free(ga.priv);
        return err;
    }
    if (pub != NULL)
        *pub = ga.pub;
    else
        hsm_key_free(ga.pub);
    if (priv != NULL)
        *priv = ga.priv;
    else
        hsm_key_free(ga.priv);
    return HSM_OK;
}

hsm_err hsm_generate_keypair(hsm_ctx *ctx, const hsm_keygen_spec *spec, hsm_key **pub, hsm_key **priv)
{
    return gen_pair_common(ctx, spec, false, NULL, pub, priv);
}

hsm_err hsm_generate_keypair_best(hsm_ctx *ctx, const hsm_keygen_spec *spec, hsm_keygen_result *res,
                                  hsm_key **pub, hsm_key **priv)
{
    if (res == NULL) {
        if (pub != NULL)
            *pub = NULL;
        if (priv != NULL)
            *priv = NULL;
        return HSM_ERR_ARGS;
    }
    return gen_pair_common(ctx, spec, true, res, pub, priv);
}

static hsm_err op_gen_secret(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    struct gen_arg *ga = arg;
    const hsm_keygen_spec *spec = ga->spec;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = spec->type == HSM_KEYTYPE_AES ? CKK_AES : CKK_GENERIC_SECRET;
    CK_ULONG vlen = spec->bits / 8;
    CK_MECHANISM mech = {kt == CKK_AES ? CKM_AES_KEY_GEN : CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK_MECHANISM_TYPE mechs[8];
    CK_ULONG nmechs = secret_mechs(spec, mechs);
    CK_ATTRIBUTE unwrap_tmpl[] = {{CKA_SENSITIVE, &ck_true, sizeof(ck_true)}};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    tmpl t = {.n = 0};
    unsigned u = spec->usage, gen;
    hsm_err err;

    ga->stored = 0;
    if ((err = check_unique(ctx, s, spec->label, ga->id, ga->id_len)) != HSM_OK)
        return err;
    t_add(&t, CKA_CLASS, &cls, sizeof(cls));
    t_add(&t, CKA_KEY_TYPE, &kt, sizeof(kt));
    t_add(&t, CKA_VALUE_LEN, &vlen, sizeof(vlen));
    t_bool(&t, CKA_TOKEN, true);
    t_bool(&t, CKA_PRIVATE, true);
    t_bool(&t, CKA_SENSITIVE, true);
    /* Sensitive + extractable = can leave the token only wrapped. */
    t_bool(&t, CKA_EXTRACTABLE, spec->extractable || spec->replicable);
    if (spec->replicable)
        t_bool(&t, CKA_WRAP_WITH_TRUSTED, true);
    t_add(&t, CKA_LABEL, (void *)spec->label, strlen(spec->label));
    t_add(&t, CKA_ID, ga->id, ga->id_len);
    t_bool(&t, CKA_ENCRYPT, (u & (HSM_USE_ENCRYPT | HSM_USE_WRAP_ECB)) != 0);
    t_bool(&t, CKA_DECRYPT, (u & HSM_USE_DECRYPT) != 0);
    t_bool(&t, CKA_WRAP, (u & HSM_USE_WRAP) != 0);
    t_bool(&t, CKA_UNWRAP, (u & HSM_USE_UNWRAP) != 0);
    t_bool(&t, CKA_SIGN, (u & HSM_USE_SIGN) != 0);
    t_bool(&t, CKA_VERIFY, false);
    t_bool(&t, CKA_DERIVE, (u & HSM_USE_DERIVE) != 0);
    if ((u & HSM_USE_UNWRAP) && (ga->prot & HSM_PROT_UNWRAP_TEMPLATE))
        t_add(&t, CKA_UNWRAP_TEMPLATE, unwrap_tmpl, sizeof(unwrap_tmpl));
    if (nmechs > 0 && (ga->prot & HSM_PROT_ALLOWED_MECHANISMS))
        t_add(&t, CKA_ALLOWED_MECHANISMS, mechs, nmechs * sizeof(mechs[0]));

    pthread_mutex_lock(&ctx->key_mu);
    gen = ctx->key_gen;
    pthread_mutex_unlock(&ctx->key_mu);
    err = P11(ctx, C_GenerateKey, s, &mech, t.a, t.n, &h);
    if (err != HSM_OK) {
        explain_gen_failure(ga, "C_GenerateKey");
        goto out;
    }
    if ((err = verify_policy(ctx, s, h, CKO_SECRET_KEY, u, spec->extractable, spec->replicable)) != HSM_OK)
        goto out;
    ga->stored = read_back_prot(ctx, s, h, ga->prot & ((u & HSM_USE_UNWRAP) ? HSM_PROT_ALL
                                                        : HSM_PROT_ALLOWED_MECHANISMS));
    hsm_key_free(ga->secret);
    ga->secret = NULL;
    if ((err = make_key_ref(ga, CKO_SECRET_KEY, kt, h, gen, false, &ga->secret)) != HSM_OK)
        goto out;
    h = CK_INVALID_HANDLE;
out:
    if (err != HSM_OK)
        hsm_destroy_session_obj(ctx, s, &h);
    return err;
}

static hsm_err gen_secret_common(hsm_ctx *ctx, const hsm_keygen_spec *spec, bool best, hsm_keygen_result *res,
                                 hsm_key **out)
{
    struct gen_arg ga;
    hsm_err err;
    const unsigned known =
        HSM_USE_DECRYPT | HSM_USE_UNWRAP | HSM_USE_SIGN | HSM_USE_WRAP | HSM_USE_ENCRYPT | HSM_USE_WRAP_ECB;

    if (out != NULL)
        *out = NULL;
    if (res != NULL)
        memset(res, 0, sizeof(*res));
    hsm_clear_detail();
    if (ctx == NULL || out == NULL || check_spec(spec, &ga) != HSM_OK)
        return HSM_ERR_ARGS;
    if ((spec->usage & ~known) != 0)
        return HSM_ERR_ARGS;
    if (spec->type == HSM_KEYTYPE_AES) {
        if (spec->bits != 128 && spec->bits != 192 && spec->bits != 256)
            return HSM_ERR_ARGS;
        if (spec->usage & HSM_USE_SIGN)
            return HSM_ERR_ARGS;
    } else if (spec->type == HSM_KEYTYPE_GENERIC_SECRET) {
        if (spec->bits < 128 || spec->bits > 512 || spec->bits % 8 != 0)
            return HSM_ERR_ARGS;
        if (spec->usage & ~(unsigned)HSM_USE_SIGN)
            return HSM_ERR_ARGS;
    } else {
        return HSM_ERR_ARGS;
    }
    err = generate(ctx, op_gen_secret, &ga, best, res, "C_GenerateKey");
    if (err != HSM_OK) {
        hsm_key_free(ga.secret);
        return err;
    }
    *out = ga.secret;
    return HSM_OK;
}

hsm_err hsm_generate_secret_key(hsm_ctx *ctx, const hsm_keygen_spec *spec, hsm_key **out)
{
    return gen_secret_common(ctx, spec, false, NULL, out);
}

hsm_err hsm_generate_secret_key_best(hsm_ctx *ctx, const hsm_keygen_spec *spec, hsm_keygen_result *res,
                                     hsm_key **out)
{
    if (res == NULL) {
        if (out != NULL)
            *out = NULL;
        return HSM_ERR_ARGS;
    }
    return gen_secret_common(ctx, spec, true, res, out);
}

/* ---- info --------------------------------------------------------------------- */

static int curve_nid(const unsigned char *params, size_t len)
{
    const unsigned char *p = params;
    ASN1_OBJECT *obj = d2i_ASN1_OBJECT(NULL, &p, (long)len);
    int nid = NID_undef;

    if (obj != NULL && p == params + len)
        nid = OBJ_obj2nid(obj);
    ASN1_OBJECT_free(obj);
    return nid;
}

static unsigned curve_bits(int nid)
{
    EC_GROUP *g = nid != NID_undef ? EC_GROUP_new_by_curve_name(nid) : NULL;
    unsigned bits = g != NULL ? (unsigned)EC_GROUP_get_degree(g) : 0;
    EC_GROUP_free(g);
    return bits;
}

/* Reads CKA_UNWRAP_TEMPLATE: present? does it force CKA_SENSITIVE true? */
static void read_unwrap_template(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, hsm_key_info *out)
{
    CK_ATTRIBUTE a = {CKA_UNWRAP_TEMPLATE, NULL, 0};
    CK_ATTRIBUTE *arr = NULL;
    CK_BBOOL vals[32];
    CK_ULONG n, i;
    hsm_errsave sv;

    hsm_err_save(&sv);
    if (P11(ctx, C_GetAttributeValue, s, h, &a, 1) != HSM_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION ||
        a.ulValueLen == 0 || a.ulValueLen % sizeof(CK_ATTRIBUTE) != 0)
        goto out;
    n = a.ulValueLen / sizeof(CK_ATTRIBUTE);
    if (n > 32 || (arr = calloc(n, sizeof(*arr))) == NULL)
        goto out;
    /* Second call: the attribute types and value lengths. */
    a.pValue = arr;
    if (P11(ctx, C_GetAttributeValue, s, h, &a, 1) != HSM_OK)
        goto out;
    out->has_unwrap_template = true;
    for (i = 0; i < n; i++) {
        if (arr[i].ulValueLen != sizeof(CK_BBOOL))
            arr[i].ulValueLen = 0; /* only booleans interest us */
        arr[i].pValue = arr[i].ulValueLen != 0 ? &vals[i] : NULL;
    }
    memset(vals, 0, sizeof(vals));
    if (P11(ctx, C_GetAttributeValue, s, h, &a, 1) != HSM_OK)
        goto out;
    for (i = 0; i < n; i++) {
        if (arr[i].type != CKA_SENSITIVE || arr[i].pValue == NULL || arr[i].ulValueLen != sizeof(CK_BBOOL))
            continue;
        /* NSS softokn does not fill our buffers: it overwrites pValue with
         * pointers of its own (not always valid afterwards). Present, then,
         * but its contents cannot be verified from here. */
        if (arr[i].pValue != &vals[i]) {
            out->unwrap_template_unknown = true;
            continue;
        }
        if (vals[i] == CK_TRUE)
            out->unwrap_template_sensitive = true;
    }
out:
    free(arr);
    hsm_err_restore(&sv);
}

struct info_arg {
    hsm_key *key;
    hsm_key_info *info;
    hsm_caps caps;
};

/* An entry of a batched read the token left as it was (lengths only). */
#define UNANSWERED ((CK_ULONG)-2)

/* What op_info reads besides the booleans: class, type, sizes and whether
 * the value can be read (lengths only, never a value). */
struct info_sizes {
    CK_ULONG cls, ktype, value_len;
    CK_ULONG modulus_len, value_attr_len, priv_exp_len; /* UNANSWERED, or what the token said */
};

/* info_sizes in one C_GetAttributeValue (each call is a round trip on a
 * network HSM or behind p11-kit's RPC). Attributes the key type lacks are
 * answered CKR_ATTRIBUTE_TYPE_INVALID or _SENSITIVE with the others
 * filled, as PKCS#11 asks; what a token leaves unanswered stays at its
 * marker and op_info reads it by itself, as before. Any other failure (the
 * object gone) leaves everything to those reads, which report it. */
static void read_sizes(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, struct info_sizes *z)
{
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &z->cls, sizeof(z->cls)},
        {CKA_KEY_TYPE, &z->ktype, sizeof(z->ktype)},
        {CKA_VALUE_LEN, &z->value_len, sizeof(z->value_len)},
        {CKA_MODULUS, NULL, UNANSWERED},
        {CKA_VALUE, NULL, UNANSWERED},
        {CKA_PRIVATE_EXPONENT, NULL, UNANSWERED},
    };
    hsm_errsave sv;
    CK_RV rv;

    z->cls = z->ktype = z->value_len = UNANSWERED;
    z->modulus_len = z->value_attr_len = z->priv_exp_len = UNANSWERED;
    hsm_err_save(&sv);
    (void)P11(ctx, C_GetAttributeValue, s, h, t, GS_ARRAY_LEN(t));
    rv = hsm_last_rv();
    hsm_err_restore(&sv);
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE) {
        z->cls = z->ktype = z->value_len = UNANSWERED;
        return;
    }
    if (t[0].ulValueLen != sizeof(CK_ULONG))
        z->cls = UNANSWERED;
    if (t[1].ulValueLen != sizeof(CK_ULONG))
        z->ktype = UNANSWERED;
    if (t[2].ulValueLen != sizeof(CK_ULONG))
        z->value_len = UNANSWERED;
    /* A token that filled nothing (some do once an attribute fails) has
     * not answered the lengths either. */
    if (z->cls == UNANSWERED)
        return;
    z->modulus_len = t[3].ulValueLen;
    z->value_attr_len = t[4].ulValueLen;
    z->priv_exp_len = t[5].ulValueLen;
}

/* Is an attribute of this length (from read_sizes, or asked alone)
 * readable? Asked alone only when the batch left it unanswered. */
static bool attr_readable(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type, CK_ULONG len)
{
    CK_ATTRIBUTE a = {type, NULL, 0};
    hsm_errsave sv;
    bool readable;

    if (len != UNANSWERED)
        return len != CK_UNAVAILABLE_INFORMATION;
    hsm_err_save(&sv);
    readable = P11(ctx, C_GetAttributeValue, s, h, &a, 1) == HSM_OK && a.ulValueLen != CK_UNAVAILABLE_INFORMATION;
    hsm_err_restore(&sv);
    return readable;
}

static hsm_err op_info(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    struct info_arg *ia = arg;
    hsm_key_info *out = ia->info;
    struct info_sizes z;
    CK_OBJECT_HANDLE h;
    unsigned char *v = NULL;
    size_t n = 0;
    hsm_errsave sv;
    hsm_err err;

    memset(out, 0, sizeof(*out));
    if ((err = hsm_key_handle(ctx, s, ia->key, &h)) != HSM_OK)
        return err;
    read_sizes(ctx, s, h, &z);
    if (z.cls == UNANSWERED && (err = hsm_get_ulong(ctx, s, h, CKA_CLASS, &z.cls)) != HSM_OK)
        return err;
    out->cls = class_to_hsm(z.cls);
    if (z.ktype == UNANSWERED && (err = hsm_get_ulong(ctx, s, h, CKA_KEY_TYPE, &z.ktype)) != HSM_OK)
        return err;
    switch (z.ktype) {
    case CKK_RSA:
        out->type = HSM_KEYTYPE_RSA;
        if (z.modulus_len != UNANSWERED && z.modulus_len != CK_UNAVAILABLE_INFORMATION)
            out->bits = (unsigned)(z.modulus_len * 8);
        else if (hsm_get_attr(ctx, s, h, CKA_MODULUS, &v, &n) == HSM_OK)
            out->bits = (unsigned)(n * 8);
        break;
    case CKK_EC:
        out->type = HSM_KEYTYPE_EC;
        if (hsm_get_attr(ctx, s, h, CKA_EC_PARAMS, &v, &n) == HSM_OK)
            out->bits = curve_bits(curve_nid(v, n));
        break;
    case CKK_AES:
        out->type = HSM_KEYTYPE_AES;
        break;
    default:
        out->type = HSM_KEYTYPE_GENERIC_SECRET;
        break;
    }
    free(v);
    v = NULL;
    if (out->cls == HSM_CLASS_SECRET) {
        if (z.value_len == UNANSWERED && hsm_get_ulong(ctx, s, h, CKA_VALUE_LEN, &z.value_len) != HSM_OK)
            z.value_len = 0;
        out->bits = (unsigned)(z.value_len * 8);
    }
    /* The key's label and id as found on the token (key_fill): read again
     * only for a reference that does not hold them. */
    if (ia->key->cls != (CK_OBJECT_CLASS)-1 && (ia->key->label[0] != '\0' || ia->key->id_len > 0)) {
        _Static_assert(sizeof(out->label) >= sizeof(ia->key->label), "a key's label fits its info");
        _Static_assert(sizeof(out->id) >= sizeof(ia->key->id), "a key's id fits its info");
        memcpy(out->label, ia->key->label, sizeof(ia->key->label));
        out->label[sizeof(out->label) - 1] = '\0';
        memcpy(out->id, ia->key->id, ia->key->id_len);
        out->id_len = ia->key->id_len;
    } else {
        read_label_and_id(ctx, s, h, out->label, sizeof(out->label), out->id, sizeof(out->id), &out->id_len);
    }
    {
        const CK_ATTRIBUTE_TYPE types[] = {
            CKA_TOKEN,  CKA_PRIVATE, CKA_SENSITIVE,   CKA_ALWAYS_SENSITIVE,    CKA_EXTRACTABLE, CKA_NEVER_EXTRACTABLE,
            CKA_DECRYPT, CKA_UNWRAP, CKA_SIGN,        CKA_DERIVE,              CKA_WRAP,        CKA_ENCRYPT,
            CKA_VERIFY, CKA_SIGN_RECOVER, CKA_ALWAYS_AUTHENTICATE, CKA_WRAP_WITH_TRUSTED, CKA_TRUSTED,
            CKA_LOCAL,
        };
        bool *const outs[] = {
            &out->token,   &out->private_, &out->sensitive, &out->always_sensitive, &out->extractable,
            &out->never_extractable, &out->decrypt, &out->unwrap, &out->sign, &out->derive, &out->wrap,
            &out->encrypt, &out->verify, &out->sign_recover, &out->always_authenticate, &out->wrap_with_trusted,
            &out->trusted, &out->local,
        };
        _Static_assert(GS_ARRAY_LEN(types) == GS_ARRAY_LEN(outs), "one output per attribute");
        read_bools(ctx, s, h, types, outs, GS_ARRAY_LEN(types));
    }

    /* The value itself must not be readable (only its length is asked). */
    if (out->cls != HSM_CLASS_PUBLIC)
        out->value_readable = attr_readable(ctx, s, h, CKA_VALUE, z.value_attr_len) ||
                              (out->type == HSM_KEYTYPE_RSA &&
                               attr_readable(ctx, s, h, CKA_PRIVATE_EXPONENT, z.priv_exp_len));
    /* Asking p11-kit 0.24.1's RPC for a stored unwrap template crashes
     * its server: only where the probe showed the token keeps one. */
    if (ia->caps.unwrap_template != HSM_ATTR_NO)
        read_unwrap_template(ctx, s, h, out);
    else
        out->unwrap_template_unknown = true;

    hsm_err_save(&sv);
    {
        CK_MECHANISM_TYPE m[GS_ARRAY_LEN(out->allowed_mechanisms)];
        size_t i, cnt = 0;
        bool present = false;
        hsm_err merr = hsm_get_mechs(ctx, s, h, m, GS_ARRAY_LEN(m), &cnt, &present);
        if (merr == HSM_OK) {
            for (i = 0; i < cnt; i++)
                out->allowed_mechanisms[i] = m[i];
            out->n_allowed_mechanisms = cnt;
        } else if (merr == HSM_ERR_BUFFER && present) {
            out->allowed_mechanisms_too_many = true; /* read, not unknown: a policy refuses it */
        } else {
            out->allowed_mechanisms_unknown = true;
        }
        if (!present && ia->caps.allowed_mechanisms == HSM_ATTR_NO)
            out->allowed_mechanisms_unknown = true;
    }
    hsm_err_restore(&sv);
    return HSM_OK;
}

hsm_err hsm_key_get_info(hsm_ctx *ctx, hsm_key *key, hsm_key_info *out)
{
    struct info_arg ia;
    hsm_err err;

    if (out != NULL)
        memset(out, 0, sizeof(*out));
    if (ctx == NULL || key == NULL || out == NULL)
        return HSM_ERR_ARGS;
    memset(&ia, 0, sizeof(ia));
    /* A sealed secret is described by its seal key (what protects it). */
    ia.key = key->sealed != NULL ? key->sealed->seal : key;
    ia.info = out;
    hsm_caps_load(ctx, &ia.caps);
    err = hsm_run(ctx, op_info, &ia);
    if (err == HSM_OK && key->sealed != NULL) {
        out->sealed = true;
        out->cls = HSM_CLASS_SECRET;
        out->type = key->sealed->type;
        out->bits = key->sealed->bits;
    }
    return err;
}

/* ---- list ------------------------------------------------------------------------ */

struct list_arg {
    const char *prefix;
    hsm_key **refs;
    size_t n;
};

static void list_clear(struct list_arg *la)
{
    size_t i;

    for (i = 0; i < la->n; i++)
        hsm_key_free(la->refs[i]);
    free(la->refs);
    la->refs = NULL;
    la->n = 0;
}

/* The handles of every object matching match, in *out (caller frees; NULL
 * on error) and *total: as find_handles, with an array grown (doubled,
 * overflow-checked) until C_FindObjects answers none. More than LIST_MAX
 * objects: HSM_ERR_TOO_MANY_OBJECTS, never a part of them. */
static hsm_err find_all_handles(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_ATTRIBUTE *match, CK_ULONG n,
                                CK_ULONG per_call, CK_OBJECT_HANDLE **out, CK_ULONG *total)
{
    /* One slot past LIST_MAX: filling it tells that there are more. */
    const CK_ULONG limit = (CK_ULONG)LIST_MAX + 1;
    CK_OBJECT_HANDLE *hs = NULL, *grown;
    CK_ULONG cap = LIST_FIRST < limit ? LIST_FIRST : limit, got = 0, ask;
    hsm_err err, err2;

    *out = NULL;
    *total = 0;
    if ((hs = calloc(cap, sizeof(*hs))) == NULL)
        return HSM_ERR_NOMEM;
    if ((err = P11(ctx, C_FindObjectsInit, s, match, n)) != HSM_OK)
        goto out;
    for (;;) {
        if (*total == cap) {
            CK_ULONG next;
            if (cap == limit) {
                err = HSM_ERR_TOO_MANY_OBJECTS;
                break;
            }
            next = cap > limit / 2 ? limit : cap * 2;
            if (next > SIZE_MAX / sizeof(*hs) || (grown = realloc(hs, next * sizeof(*hs))) == NULL) {
                err = HSM_ERR_NOMEM;
                break;
            }
            hs = grown;
            cap = next;
        }
        ask = per_call != 0 && cap - *total > per_call ? per_call : cap - *total;
        got = 0;
        if ((err = P11(ctx, C_FindObjects, s, hs + *total, ask, &got)) != HSM_OK || got == 0)
            break;
        *total += got < ask ? got : ask;
    }
    err2 = P11(ctx, C_FindObjectsFinal, s);
    if (err == HSM_OK)
        err = err2;
    if (err == HSM_ERR_TOO_MANY_OBJECTS)
        hsm_set_detail("more than %lu objects on the token match the search (a key listing or a lookup by "
                       "label); one search reads at most that many",
                       (unsigned long)LIST_MAX);
out:
    if (err != HSM_OK) {
        free(hs);
        hs = NULL;
        *total = 0;
    }
    *out = hs;
    return err;
}

static hsm_err op_list(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    struct list_arg *la = arg;
    CK_OBJECT_HANDLE *hs = NULL;
    CK_ULONG total = 0, i;
    size_t plen = strlen(la->prefix);
    unsigned gen;
    hsm_err err;

    list_clear(la);
    pthread_mutex_lock(&ctx->key_mu);
    gen = ctx->key_gen;
    pthread_mutex_unlock(&ctx->key_mu);
    /* Token objects only: see token_objects. All of them: a listing that
     * stopped early would leave keys out while answering HSM_OK. */
    if ((err = find_all_handles(ctx, s, &token_objects, 1, 64, &hs, &total)) != HSM_OK)
        goto out;
    if ((la->refs = calloc(total + 1, sizeof(*la->refs))) == NULL) {
        err = HSM_ERR_NOMEM;
        goto out;
    }
    for (i = 0; i < total; i++) {
        hsm_key *k = key_new();
        if (k == NULL) {
            err = HSM_ERR_NOMEM;
            goto out;
        }
        if (key_fill(ctx, s, hs[i], k) != HSM_OK || !is_key_class(k->cls) ||
            strncmp(k->label, la->prefix, plen) != 0) {
            hsm_key_free(k);
            continue;
        }
        k->handle = hs[i];
        k->gen = gen;
        la->refs[la->n++] = k;
    }
    hsm_clear_detail();
out:
    free(hs);
    if (err != HSM_OK)
        list_clear(la);
    return err;
}

hsm_err hsm_key_list(hsm_ctx *ctx, const char *label_prefix, int (*cb)(void *arg, hsm_ctx *ctx, hsm_key *key),
                     void *arg)
{
    struct list_arg la = {label_prefix != NULL ? label_prefix : "", NULL, 0};
    hsm_err err;
    size_t i;

    if (ctx == NULL || cb == NULL)
        return HSM_ERR_ARGS;
    err = hsm_run(ctx, op_list, &la);
    if (err != HSM_OK)
        return err;
    /* Callbacks run with no session held: they may call back into hsm_*. */
    for (i = 0; i < la.n; i++) {
        if (cb(arg, ctx, la.refs[i]) != 0) {
            err = HSM_ERR_ARGS;
            break;
        }
    }
    list_clear(&la);
    return err;
}

/* ---- public key export -------------------------------------------------------------- */

/* CKA_EC_POINT is DER OCTET STRING per the standard; some tokens return the
 * raw point. Accept both; *pt points into buf. */
static int ec_point_unwrap(const unsigned char *buf, size_t len, const unsigned char **pt, size_t *ptlen)
{
    const unsigned char *p = buf;
    ASN1_OCTET_STRING *os = d2i_ASN1_OCTET_STRING(NULL, &p, (long)len);

    if (os != NULL && p == buf + len && os->length > 0 && os->data[0] == 0x04) {
        size_t off = len - (size_t)os->length;
        ASN1_OCTET_STRING_free(os);
        *pt = buf + off;
        *ptlen = len - off;
        return 0;
    }
    ASN1_OCTET_STRING_free(os);
    if (len > 0 && buf[0] == 0x04) {
        *pt = buf;
        *ptlen = len;
        return 0;
    }
    return -1;
}

struct export_arg {
    hsm_key *key;
    unsigned char *der;
    size_t len;
};

static hsm_err build_spki(EVP_PKEY_CTX *pctx, OSSL_PARAM_BLD *bld, struct export_arg *ea)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY *pkey = NULL;
    unsigned char *der = NULL;
    int len;
    hsm_err err = HSM_ERR_PUBLIC_KEY;

    if (params == NULL || EVP_PKEY_fromdata_init(pctx) != 1 ||
        EVP_PKEY_fromdata(pctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        goto out;
    if ((len = i2d_PUBKEY(pkey, &der)) <= 0)
        goto out;
    /* i2d allocated with OPENSSL_malloc: hand out a malloc'd copy. */
    if ((ea->der = malloc((size_t)len)) == NULL) {
        err = HSM_ERR_NOMEM;
        goto out;
    }
    memcpy(ea->der, der, (size_t)len);
    ea->len = (size_t)len;
    err = HSM_OK;
out:
    if (err == HSM_ERR_PUBLIC_KEY)
        hsm_set_detail("could not encode the token's public key");
    OPENSSL_free(der);
    EVP_PKEY_free(pkey);
    OSSL_PARAM_free(params);
    return err;
}

static hsm_err op_export(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    struct export_arg *ea = arg;
    CK_OBJECT_HANDLE h;
    CK_ULONG cls = 0, kt = 0;
    unsigned char *a1 = NULL, *a2 = NULL, unc[EC_POINT_MAX]; /* unc: read by build_spki */
    size_t l1 = 0, l2 = 0;
    BIGNUM *n = NULL, *e = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    EVP_PKEY_CTX *pctx = NULL;
    hsm_err err;

    free(ea->der);
    ea->der = NULL;
    ea->len = 0;
    if ((err = hsm_key_handle(ctx, s, ea->key, &h)) != HSM_OK)
        goto out;
    if ((err = hsm_get_ulong(ctx, s, h, CKA_CLASS, &cls)) != HSM_OK ||
        (err = hsm_get_ulong(ctx, s, h, CKA_KEY_TYPE, &kt)) != HSM_OK)
        goto out;
    if ((cls != CKO_PUBLIC_KEY && cls != CKO_PRIVATE_KEY) || (kt != CKK_RSA && kt != CKK_EC)) {
        hsm_set_detail("not an RSA or EC key pair object");
        err = HSM_ERR_ARGS;
        goto out;
    }
    if ((bld = OSSL_PARAM_BLD_new()) == NULL) {
        err = HSM_ERR_NOMEM;
        goto out;
    }
    if (kt == CKK_RSA) {
        if ((err = hsm_get_attr(ctx, s, h, CKA_MODULUS, &a1, &l1)) != HSM_OK ||
            (err = hsm_get_attr(ctx, s, h, CKA_PUBLIC_EXPONENT, &a2, &l2)) != HSM_OK)
            goto out;
        n = BN_bin2bn(a1, (int)l1, NULL);
        e = BN_bin2bn(a2, (int)l2, NULL);
        if (n == NULL || e == NULL || OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) != 1 ||
            OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) != 1 ||
            (pctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL)) == NULL) {
            err = HSM_ERR_NOMEM;
            goto out;
        }
    } else {
        CK_OBJECT_HANDLE ph = h;
        size_t ptlen;
        int nid;

        if ((err = hsm_get_attr(ctx, s, h, CKA_EC_PARAMS, &a1, &l1)) != HSM_OK)
            goto out;
        if (cls == CKO_PRIVATE_KEY) {
            /* The point lives on the public object of the pair (same CKA_ID). */
            CK_OBJECT_CLASS pc = CKO_PUBLIC_KEY;
            CK_ATTRIBUTE t[2] = {{CKA_CLASS, &pc, sizeof(pc)}, {CKA_ID, ea->key->id, ea->key->id_len}};
            CK_OBJECT_HANDLE found[2];
            CK_ULONG nf = 0;
            if ((err = find_keys(ctx, s, t, 2, found, 2, &nf)) != HSM_OK)
                goto out;
            if (nf != 1) {
                hsm_set_detail("no unique public key object for this EC private key");
                err = HSM_ERR_KEY_NOT_FOUND;
                goto out;
            }
            ph = found[0];
        }
        if ((err = hsm_get_attr(ctx, s, ph, CKA_EC_POINT, &a2, &l2)) != HSM_OK)
            goto out;
        nid = curve_nid(a1, l1);
        if (!ec_point_normal(nid, a2, l2, unc, &ptlen)) {
            hsm_set_detail("unsupported EC parameters or point on the token");
            err = HSM_ERR_PUBLIC_KEY;
            goto out;
        }
        if (OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, OBJ_nid2sn(nid), 0) != 1 ||
            OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, unc, ptlen) != 1 ||
            (pctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL)) == NULL) {
            err = HSM_ERR_NOMEM;
            goto out;
        }
    }
    err = build_spki(pctx, bld, ea);
out:
    free(a1);
    free(a2);
    BN_free(n);
    BN_free(e);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(pctx);
    return err;
}

hsm_err hsm_key_export_public(hsm_ctx *ctx, hsm_key *key, unsigned char **spki_der, size_t *len)
{
    struct export_arg ea = {key, NULL, 0};
    hsm_err err;

    if (spki_der != NULL)
        *spki_der = NULL;
    if (len != NULL)
        *len = 0;
    if (ctx == NULL || key == NULL || spki_der == NULL || len == NULL)
        return HSM_ERR_ARGS;
    err = hsm_run(ctx, op_export, &ea);
    if (err != HSM_OK) {
        free(ea.der);
        return err;
    }
    *spki_der = ea.der;
    *len = ea.len;
    return HSM_OK;
}

/* ---- recipient public keys as session objects ------------------------------------- */

hsm_err hsm_import_wrap_pubkey(hsm_ctx *ctx, CK_SESSION_HANDLE s, const unsigned char *spki, size_t spki_len,
                               CK_OBJECT_HANDLE *h)
{
    static const hsm_pub_import wrap_only = {.wrap = true};

    return hsm_import_rsa_pubkey(ctx, s, spki, spki_len, &wrap_only, h);
}

hsm_err hsm_import_rsa_pubkey(hsm_ctx *ctx, CK_SESSION_HANDLE s, const unsigned char *spki, size_t spki_len,
                              const hsm_pub_import *opt, CK_OBJECT_HANDLE *h)
{
    EVP_PKEY *pkey = NULL;
    BIGNUM *n = NULL, *e = NULL;
    unsigned char *nb = NULL, *eb = NULL;
    int nl, el;
    CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
    CK_KEY_TYPE kt = CKK_RSA;
    tmpl t = {.n = 0};
    hsm_err err = HSM_ERR_PUBLIC_KEY;

    *h = CK_INVALID_HANDLE;
    if ((err = hsm_recipient_rsa_pubkey(spki, spki_len, &pkey)) != HSM_OK)
        return err;
    err = HSM_ERR_PUBLIC_KEY;
    if (EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &n) != 1 ||
        EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &e) != 1)
        goto out;
    nl = BN_num_bytes(n);
    el = BN_num_bytes(e);
    if ((nb = malloc((size_t)nl)) == NULL || (eb = malloc((size_t)el)) == NULL) {
        err = HSM_ERR_NOMEM;
        goto out;
    }
    BN_bn2bin(n, nb);
    BN_bn2bin(e, eb);
    t_add(&t, CKA_CLASS, &cls, sizeof(cls));
    t_add(&t, CKA_KEY_TYPE, &kt, sizeof(kt));
    t_bool(&t, CKA_TOKEN, opt->token);
    t_bool(&t, CKA_PRIVATE, false);
    t_bool(&t, CKA_WRAP, opt->wrap);
    t_bool(&t, CKA_ENCRYPT, opt->encrypt);
    t_bool(&t, CKA_VERIFY, opt->verify);
    /* Only a security officer session may create it trusted. */
    if (opt->trusted)
        t_bool(&t, CKA_TRUSTED, true);
    if (opt->label != NULL)
        t_add(&t, CKA_LABEL, (void *)opt->label, strlen(opt->label));
    if (opt->id_len > 0)
        t_add(&t, CKA_ID, (void *)opt->id, opt->id_len);
    t_add(&t, CKA_MODULUS, nb, (CK_ULONG)nl);
    t_add(&t, CKA_PUBLIC_EXPONENT, eb, (CK_ULONG)el);
    err = P11(ctx, C_CreateObject, s, t.a, t.n, h);
out:
    EVP_PKEY_free(pkey);
    BN_free(n);
    BN_free(e);
    free(nb);
    free(eb);
    return err;
}

/* ---- shared with replicate.c ------------------------------------------------------- */

CK_ULONG hsm_spec_mechanisms(const hsm_keygen_spec *spec, const hsm_caps *caps, CK_MECHANISM_TYPE m[8])
{
    if (spec->type == HSM_KEYTYPE_RSA || spec->type == HSM_KEYTYPE_EC)
        return pair_mechs(spec, caps, m);
    return secret_mechs(spec, m);
}

hsm_err hsm_verify_key_policy(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, const hsm_keygen_spec *spec)
{
    CK_OBJECT_CLASS cls =
        spec->type == HSM_KEYTYPE_RSA || spec->type == HSM_KEYTYPE_EC ? CKO_PRIVATE_KEY : CKO_SECRET_KEY;

    return verify_policy(ctx, s, h, cls, spec->usage, spec->extractable, spec->replicable);
}
