/* groups.c: see groups.h. Token objects are created first and the rows
 * recorded after, in one transaction; any failure destroys the new token
 * objects, so an admin command either completes or changes nothing. */
#include "groups.h"

#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <p11-kit/pkcs11.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "util.h"

#ifndef CKM_AES_KEY_WRAP_KWP
#define CKM_AES_KEY_WRAP_KWP 0x210bUL
#endif

struct gs_group {
    gs_store_group *info;
    gs_group_key_ref *versions;         /* group key pair versions, newest first */
    size_t n_versions;
    gs_group_secret_ref *kek_versions;  /* group secret key (KEK) versions, newest first */
    size_t n_kek_versions;
    hsm_key *reject;
};

/* ---- small helpers -------------------------------------------------------- */

static gs_err hsm_fail(hsm_err he, const char *what, const char *label)
{
    gs_err err = GS_ERR_HSM;
    const char *d = hsm_last_error_detail();
    if (he == HSM_ERR_PIN_INCORRECT || he == HSM_ERR_PIN_LOCKED || he == HSM_ERR_TOKEN_ABSENT ||
        he == HSM_ERR_TOKEN_NOT_FOUND || he == HSM_ERR_NOT_LOGGED_IN || he == HSM_ERR_PIN_SOURCE ||
        he == HSM_ERR_MODULE)
        err = GS_ERR_TOKEN;
    if (he == HSM_ERR_KEY_POLICY)
        err = GS_ERR_POLICY;
    return gs_err_set(err, "%s%s%s: %s%s%s%s", what, label ? " " : "", label ? label : "", hsm_strerror(he),
                      d && d[0] ? " (" : "", d && d[0] ? d : "", d && d[0] ? ")" : "");
}

static void label_group(char *buf, size_t n, const char *g, unsigned v) { (void)snprintf(buf, n, "gs:group:%s:v%u", g, v); }
static void label_secret(char *buf, size_t n, const char *g, unsigned v) { (void)snprintf(buf, n, "gs:secret:%s:v%u", g, v); }
static void label_reject(char *buf, size_t n, const char *g) { (void)snprintf(buf, n, "gs:reject:%s", g); }

/* Is any object with this label on the token? EXISTS if so. */
static gs_err label_free(hsm_ctx *hsm, const char *label)
{
    hsm_key *k = NULL;
    hsm_err he = hsm_key_find(hsm, label, 0, &k);
    hsm_key_free(k);
    if (he == HSM_ERR_KEY_NOT_FOUND)
        return GS_OK;
    if (he == HSM_OK || he == HSM_ERR_KEY_AMBIGUOUS)
        return gs_err_set(GS_ERR_EXISTS, "token already has an object labelled %s", label);
    return hsm_fail(he, "looking up", label);
}

/* Destroys both halves of a pair (or a secret key) by label; best effort,
 * used on failure paths and by retire. Returns the first error. */
static hsm_err destroy_label(hsm_ctx *hsm, const char *label, hsm_key_class cls)
{
    hsm_key *k = NULL;
    hsm_err he = hsm_key_find(hsm, label, cls, &k);
    if (he == HSM_OK) {
        he = hsm_key_destroy(hsm, k);
        hsm_key_free(k);
    } else if (he == HSM_ERR_KEY_NOT_FOUND) {
        he = HSM_OK;
    }
    return he;
}

static void destroy_pair(hsm_ctx *hsm, const char *label)
{
    hsm_err a = destroy_label(hsm, label, HSM_CLASS_PRIVATE);
    hsm_err b = destroy_label(hsm, label, HSM_CLASS_PUBLIC);
    if (a != HSM_OK || b != HSM_OK)
        log_warn("could not destroy token key label=%s err=%s", label, hsm_strerror(a != HSM_OK ? a : b));
}

static bool mech_in(unsigned long m, const unsigned long *set, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (set[i] == m)
            return true;
    return false;
}

/* Every allowed mechanism must be in `allowed`; with require_list an
 * absent CKA_ALLOWED_MECHANISMS (= any mechanism) is a problem too. */
static const char *check_mechs(const hsm_key_info *i, const unsigned long *allowed, size_t n, bool require_list)
{
    if (i->n_allowed_mechanisms == 0)
        return require_list ? "CKA_ALLOWED_MECHANISMS absent (any mechanism allowed)" : NULL;
    for (size_t k = 0; k < i->n_allowed_mechanisms; k++)
        if (!mech_in(i->allowed_mechanisms[k], allowed, n))
            return "CKA_ALLOWED_MECHANISMS allows a mechanism outside the policy";
    return NULL;
}

/* Common to every private or never-leaving key. */
static const char *check_locked(const hsm_key_info *i)
{
    if (!i->token)
        return "not a token object";
    if (!i->private_)
        return "CKA_PRIVATE is false";
    if (!i->sensitive)
        return "CKA_SENSITIVE is false";
    if (!i->always_sensitive)
        return "CKA_ALWAYS_SENSITIVE is false";
    if (i->value_readable)
        return "key value is readable";
    return NULL;
}

static const char *check_group_key(const hsm_key_info *i, hsm_key_type type, unsigned bits, unsigned methods,
                                   bool allow_pkcs1v15)
{
    const char *p;
    bool want_decrypt = type == HSM_KEYTYPE_RSA && (methods & GS_METHOD_TLS);
    if (i->cls != HSM_CLASS_PRIVATE || i->type != type)
        return "wrong key class or type";
    if (i->bits != 0 && i->bits != bits)
        return "wrong key size";
    if ((p = check_locked(i)) != NULL)
        return p;
    if (i->extractable)
        return "CKA_EXTRACTABLE is true";
    if (!i->never_extractable)
        return "CKA_NEVER_EXTRACTABLE is false";
    if (i->sign || i->sign_recover)
        return "CKA_SIGN allowed (policy: no signing)";
    if (i->wrap || i->encrypt || i->verify)
        return "wrap/encrypt/verify usage set";
    if (i->decrypt != want_decrypt)
        return want_decrypt ? "CKA_DECRYPT missing (group allows tls)" : "CKA_DECRYPT set but the group does not allow tls";
    if (type == HSM_KEYTYPE_RSA) {
        static const unsigned long oaep[] = {CKM_RSA_PKCS_OAEP};
        static const unsigned long oaep_v15[] = {CKM_RSA_PKCS_OAEP, CKM_RSA_PKCS};
        if (!i->unwrap)
            return "CKA_UNWRAP missing";
        if (i->derive)
            return "CKA_DERIVE set on an RSA key";
        if (!i->has_unwrap_template || !i->unwrap_template_sensitive)
            return "CKA_UNWRAP_TEMPLATE missing or does not force CKA_SENSITIVE";
        p = allow_pkcs1v15 ? check_mechs(i, oaep_v15, 2, true) : check_mechs(i, oaep, 1, true);
        if (p)
            return p;
        if (!mech_in(CKM_RSA_PKCS_OAEP, i->allowed_mechanisms, i->n_allowed_mechanisms))
            return "CKA_ALLOWED_MECHANISMS lacks RSA-OAEP";
    } else {
        static const unsigned long ecdh[] = {CKM_ECDH1_DERIVE, CKM_ECDH1_COFACTOR_DERIVE};
        if (!i->derive)
            return "CKA_DERIVE missing";
        if (i->unwrap)
            return "CKA_UNWRAP set on an EC key";
        if ((p = check_mechs(i, ecdh, 2, true)) != NULL)
            return p;
    }
    return NULL;
}

static const char *check_ca_key(const hsm_key_info *i)
{
    static const unsigned long sig[] = {CKM_SHA256_RSA_PKCS, CKM_RSA_PKCS, CKM_ECDSA, CKM_ECDSA_SHA256};
    const char *p;
    if (i->cls != HSM_CLASS_PRIVATE)
        return "not a private key";
    if ((p = check_locked(i)) != NULL)
        return p;
    if (i->extractable)
        return "CKA_EXTRACTABLE is true";
    if (!i->never_extractable)
        return "CKA_NEVER_EXTRACTABLE is false";
    if (!i->sign)
        return "CKA_SIGN missing";
    if (i->decrypt || i->unwrap || i->derive || i->wrap || i->encrypt || i->sign_recover)
        return "usage beyond signing set";
    return check_mechs(i, sig, GS_ARRAY_LEN(sig), false);
}

static const char *check_secret_key(const hsm_key_info *i)
{
    static const unsigned long kw[] = {CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD, CKM_AES_KEY_WRAP_KWP};
    const char *p;
    if (i->cls != HSM_CLASS_SECRET || i->type != HSM_KEYTYPE_AES)
        return "not an AES secret key";
    if (i->bits != 0 && i->bits != 256)
        return "not 256 bits";
    if ((p = check_locked(i)) != NULL)
        return p;
    /* Extractable by design (delivered wrapped to members); sensitive and
     * an unreadable value keep it from leaving in the clear. */
    if (!i->wrap)
        return "CKA_WRAP missing";
    if (i->decrypt || i->encrypt || i->sign || i->verify || i->derive || i->unwrap || i->sign_recover)
        return "usage beyond key wrapping set";
    return check_mechs(i, kw, GS_ARRAY_LEN(kw), false);
}

static const char *check_reject_key(const hsm_key_info *i)
{
    static const unsigned long hmac[] = {CKM_SHA256_HMAC, CKM_SHA256_HMAC_GENERAL};
    const char *p;
    if (i->cls != HSM_CLASS_SECRET)
        return "not a secret key";
    if ((p = check_locked(i)) != NULL)
        return p;
    if (i->extractable)
        return "CKA_EXTRACTABLE is true";
    if (!i->never_extractable)
        return "CKA_NEVER_EXTRACTABLE is false";
    if (!i->sign)
        return "CKA_SIGN (HMAC) missing";
    if (i->decrypt || i->encrypt || i->wrap || i->unwrap || i->derive)
        return "usage beyond HMAC set";
    return check_mechs(i, hmac, GS_ARRAY_LEN(hmac), false);
}

unsigned gs_group_key_usage(hsm_key_type type, unsigned methods, bool allow_pkcs1v15)
{
    if (type == HSM_KEYTYPE_EC)
        return HSM_USE_DERIVE;
    return HSM_USE_UNWRAP | ((methods & GS_METHOD_TLS) ? HSM_USE_DECRYPT : 0u) |
           (allow_pkcs1v15 ? HSM_USE_PKCS1V15 : 0u);
}

gs_err gs_hsm_open(const struct gs_config *cfg, hsm_ctx **out)
{
    hsm_config hc;
    hsm_err he;
    *out = NULL;
    memset(&hc, 0, sizeof(hc));
    hc.module = cfg->hsm.module;
    hc.token_uri = cfg->hsm.token;
    hc.pin_source = cfg->hsm.pin_source;
    hc.max_sessions = cfg->hsm.max_sessions;
    he = hsm_open(&hc, out);
    if (he != HSM_OK) {
        gs_err err = hsm_fail(he, "opening token", cfg->hsm.token);
        return err == GS_ERR_HSM ? gs_err_set(GS_ERR_TOKEN, "%s", gs_err_detail()) : err;
    }
    return GS_OK;
}

/* ---- loading --------------------------------------------------------------- */

void gs_group_free(gs_group *g)
{
    if (g == NULL)
        return;
    for (size_t i = 0; i < g->n_versions; i++) {
        X509_free(g->versions[i].cert);
        hsm_key_free(g->versions[i].key);
    }
    free(g->versions);
    for (size_t i = 0; i < g->n_kek_versions; i++)
        hsm_key_free(g->kek_versions[i].key);
    free(g->kek_versions);
    hsm_key_free(g->reject);
    gs_store_group_free(g->info);
    free(g);
}

gs_err gs_group_load(gs_store *st, hsm_ctx *hsm, const char *name, gs_group **out)
{
    gs_group *g = NULL;
    gs_store_group_key *keys = NULL;
    gs_store_secret *secrets = NULL;
    size_t nk = 0, ns = 0;
    hsm_key_type type;
    unsigned bits;
    gs_err err;
    hsm_err he;

    *out = NULL;
    g = calloc(1, sizeof(*g));
    if (g == NULL)
        return GS_ERR_NOMEM;
    err = gs_store_group_get(st, name, &g->info);
    if (err)
        goto out;
    err = gs_keyspec_parse(g->info->algorithm, &type, &bits);
    if (err)
        goto out;
    err = gs_store_group_keys(st, g->info->id, &keys, &nk);
    if (!err)
        err = gs_store_secrets(st, g->info->id, &secrets, &ns);
    if (err)
        goto out;
    err = GS_ERR_NOMEM;
    g->versions = calloc(nk ? nk : 1, sizeof(*g->versions));
    g->kek_versions = calloc(ns ? ns : 1, sizeof(*g->kek_versions));
    if (g->versions == NULL || g->kek_versions == NULL)
        goto out;
    for (size_t i = 0; i < nk; i++) {
        gs_group_key_ref *r;
        if (keys[i].state == GS_KEY_RETIRED)
            continue;
        r = &g->versions[g->n_versions++];
        r->version = keys[i].version;
        r->current = keys[i].state == GS_KEY_CURRENT;
        r->type = type;
        err = gs_cert_parse((const unsigned char *)keys[i].cert_pem, strlen(keys[i].cert_pem), &r->cert);
        if (err)
            goto out;
        he = hsm_key_find(hsm, keys[i].token_label, HSM_CLASS_PRIVATE, &r->key);
        if (he != HSM_OK) {
            err = hsm_fail(he, "group key", keys[i].token_label);
            goto out;
        }
    }
    for (size_t i = 0; i < ns; i++) {
        gs_group_secret_ref *r;
        if (secrets[i].state == GS_KEY_RETIRED)
            continue;
        r = &g->kek_versions[g->n_kek_versions++];
        r->version = secrets[i].version;
        r->current = secrets[i].state == GS_KEY_CURRENT;
        memcpy(r->kek_id, secrets[i].kek_id, GS_KEK_ID_LEN);
        he = hsm_key_find(hsm, secrets[i].token_label, HSM_CLASS_SECRET, &r->key);
        if (he != HSM_OK) {
            err = hsm_fail(he, "secret key", secrets[i].token_label);
            goto out;
        }
    }
    if (g->info->reject_label != NULL) {
        he = hsm_key_find(hsm, g->info->reject_label, HSM_CLASS_SECRET, &g->reject);
        if (he != HSM_OK) {
            err = hsm_fail(he, "rejection key", g->info->reject_label);
            goto out;
        }
    }
    if (g->n_versions == 0 || !g->versions[0].current) {
        err = gs_err_set(GS_ERR_STATE, "group %s has no current key version", name);
        goto out;
    }
    *out = g;
    g = NULL;
    err = GS_OK;
out:
    gs_store_group_keys_free(keys, nk);
    gs_store_secrets_free(secrets, ns);
    gs_group_free(g);
    return err;
}

const gs_store_group *gs_group_info(const gs_group *g) { return g->info; }
int64_t gs_group_id(const gs_group *g) { return g->info->id; }
size_t gs_group_key_count(const gs_group *g) { return g->n_versions; }
const gs_group_key_ref *gs_group_key_at(const gs_group *g, size_t i) { return i < g->n_versions ? &g->versions[i] : NULL; }
const gs_group_key_ref *gs_group_current_key(const gs_group *g) { return g->n_versions ? &g->versions[0] : NULL; }
size_t gs_group_secret_count(const gs_group *g) { return g->n_kek_versions; }
const gs_group_secret_ref *gs_group_secret_at(const gs_group *g, size_t i)
{
    return i < g->n_kek_versions ? &g->kek_versions[i] : NULL;
}
const gs_group_secret_ref *gs_group_current_secret(const gs_group *g)
{
    return g->n_kek_versions && g->kek_versions[0].current ? &g->kek_versions[0] : NULL;
}
const gs_group_secret_ref *gs_group_secret_by_kek_id(const gs_group *g, const unsigned char *id, size_t len)
{
    if (id == NULL || len != GS_KEK_ID_LEN)
        return NULL;
    for (size_t i = 0; i < g->n_kek_versions; i++)
        if (memcmp(g->kek_versions[i].kek_id, id, GS_KEK_ID_LEN) == 0)
            return &g->kek_versions[i];
    return NULL;
}
hsm_key *gs_group_reject_key(const gs_group *g) { return g->reject; }

gs_err gs_group_cert_chain_pem(const gs_group *g, const gs_ca *ca, char **pem)
{
    char *a = NULL, *b = NULL;
    X509 *cacert = ca ? gs_ca_cert(ca) : NULL;
    const gs_group_key_ref *cur = gs_group_current_key(g);
    gs_err err;
    size_t la, lb = 0;

    *pem = NULL;
    if (cur == NULL)
        return gs_err_set(GS_ERR_STATE, "group has no current key");
    err = gs_cert_to_pem(cur->cert, &a);
    if (err)
        return err;
    if (cacert && X509_check_issued(cacert, cur->cert) == X509_V_OK) {
        err = gs_cert_to_pem(cacert, &b);
        if (err)
            goto out;
        lb = strlen(b);
    }
    la = strlen(a);
    *pem = malloc(la + lb + 1);
    if (*pem == NULL) {
        err = GS_ERR_NOMEM;
        goto out;
    }
    memcpy(*pem, a, la);
    if (b)
        memcpy(*pem + la, b, lb);
    (*pem)[la + lb] = '\0';
out:
    free(a);
    free(b);
    return err;
}

/* ---- creating keys ------------------------------------------------------------ */

/* Generates one group key version on the token, reads every attribute back
 * and checks it against the policy, and returns its public key. */
static gs_err make_group_key(hsm_ctx *hsm, const char *label, hsm_key_type type, unsigned bits, unsigned methods,
                             bool allow_pkcs1v15, EVP_PKEY **pub_out)
{
    hsm_keygen_spec ks;
    hsm_key *pub = NULL, *priv = NULL;
    hsm_key_info info;
    unsigned char *spki = NULL;
    size_t spki_len = 0;
    const unsigned char *p;
    const char *problem;
    gs_err err;
    hsm_err he;

    *pub_out = NULL;
    err = label_free(hsm, label);
    if (err)
        return err;
    memset(&ks, 0, sizeof(ks));
    ks.label = label;
    ks.type = type;
    ks.bits = bits;
    ks.usage = gs_group_key_usage(type, methods, allow_pkcs1v15);
    he = hsm_generate_keypair(hsm, &ks, &pub, &priv);
    if (he != HSM_OK)
        return hsm_fail(he, "generating group key", label);
    he = hsm_key_get_info(hsm, priv, &info);
    if (he != HSM_OK) {
        err = hsm_fail(he, "reading attributes of", label);
        goto out;
    }
    problem = check_group_key(&info, type, bits, methods, allow_pkcs1v15);
    if (problem) {
        err = gs_err_set(GS_ERR_POLICY, "new key %s: %s", label, problem);
        goto out;
    }
    he = hsm_key_export_public(hsm, priv, &spki, &spki_len);
    if (he != HSM_OK) {
        err = hsm_fail(he, "reading public key of", label);
        goto out;
    }
    p = spki;
    *pub_out = d2i_PUBKEY(NULL, &p, (long)spki_len);
    if (*pub_out == NULL) {
        err = gs_err_set(GS_ERR_CRYPTO, "token public key of %s unreadable", label);
        goto out;
    }
    err = GS_OK;
out:
    free(spki);
    hsm_key_free(pub);
    hsm_key_free(priv);
    if (err)
        destroy_pair(hsm, label);
    return err;
}

/* Generates a symmetric key on the token with exactly the given use, reads
 * its attributes back and destroys it again if `check` finds a problem
 * (tokens may add usages). `what` names it in errors. */
static gs_err make_sym_key(hsm_ctx *hsm, const char *label, hsm_key_type type, unsigned usage, bool extractable,
                           const char *(*check)(const hsm_key_info *), const char *what)
{
    hsm_keygen_spec ks;
    hsm_key *k = NULL;
    hsm_key_info info;
    const char *problem;
    char doing[64];
    gs_err err;
    hsm_err he;

    err = label_free(hsm, label);
    if (err)
        return err;
    memset(&ks, 0, sizeof(ks));
    ks.label = label;
    ks.type = type;
    ks.bits = 256;
    ks.usage = usage;
    ks.extractable = extractable;
    he = hsm_generate_secret_key(hsm, &ks, &k);
    if (he != HSM_OK) {
        (void)snprintf(doing, sizeof(doing), "generating %s", what);
        return hsm_fail(he, doing, label);
    }
    he = hsm_key_get_info(hsm, k, &info);
    if (he != HSM_OK) {
        err = hsm_fail(he, "reading attributes of", label);
    } else if ((problem = check(&info)) != NULL) {
        err = gs_err_set(GS_ERR_POLICY, "new key %s: %s", label, problem);
    }
    if (err)
        (void)hsm_key_destroy(hsm, k);
    hsm_key_free(k);
    return err;
}

/* AES-256 group secret key: only ever leaves wrapped (GET secret-keys). */
static gs_err make_secret_key(hsm_ctx *hsm, const char *label)
{
    return make_sym_key(hsm, label, HSM_KEYTYPE_AES, HSM_USE_WRAP, true, check_secret_key, "secret key");
}

/* HMAC key for PKCS#1 v1.5 implicit rejection: never leaves. */
static gs_err make_reject_key(hsm_ctx *hsm, const char *label)
{
    return make_sym_key(hsm, label, HSM_KEYTYPE_GENERIC_SECRET, HSM_USE_SIGN, false, check_reject_key,
                        "rejection key");
}

static gs_err issue_group_cert(const gs_ca *ca, hsm_ctx *hsm, const struct gs_config *cfg, const char *name,
                               const char *address, EVP_PKEY *pk, char **pem)
{
    gs_cert_spec spec;
    X509 *cert = NULL;
    gs_err err;
    *pem = NULL;
    memset(&spec, 0, sizeof(spec));
    spec.pubkey = pk;
    spec.subject_cn = name;
    spec.san_email = address;
    /* What stock S/MIME clients look for in a recipient certificate. */
    spec.key_usage = EVP_PKEY_get_base_id(pk) == EVP_PKEY_EC ? GS_KU_KEY_AGREEMENT : GS_KU_KEY_ENCIPHERMENT;
    spec.ext_key_usage = GS_EKU_EMAIL_PROTECTION;
    spec.lifetime = (long)cfg->ca.group_cert_days * 86400L;
    spec.backdate = 300;
    err = gs_ca_issue(ca, hsm, &spec, &cert);
    if (err == GS_OK)
        err = gs_cert_to_pem(cert, pem);
    X509_free(cert);
    return err;
}

static gs_err new_kek_id(unsigned char id[GS_KEK_ID_LEN])
{
    if (RAND_bytes(id, GS_KEK_ID_LEN) != 1)
        return gs_err_set(GS_ERR_CRYPTO, "RAND_bytes failed");
    return GS_OK;
}

gs_err gs_group_create(gs_store *st, hsm_ctx *hsm, const gs_ca *ca, const struct gs_config *cfg,
                       const gs_group_spec *spec, unsigned *version_out)
{
    gs_store_group row, *existing = NULL;
    char klabel[GS_LABEL_MAX + 1], slabel[GS_LABEL_MAX + 1], rlabel[GS_LABEL_MAX + 1];
    unsigned char kek_id[GS_KEK_ID_LEN];
    bool made_key = false, made_secret = false, made_reject = false;
    EVP_PKEY *pk = NULL;
    char *pem = NULL;
    hsm_key_type type;
    unsigned bits, methods;
    int64_t id = 0;
    gs_err err;

    if (version_out)
        *version_out = 0;
    if (spec == NULL || !gs_valid_group_name(spec->name))
        return gs_err_set(GS_ERR_ARGS, "invalid group name (1-64 of a-z 0-9 . _ -, starting with a letter or digit)");
    if (!gs_valid_email(spec->address))
        return gs_err_set(GS_ERR_ARGS, "invalid list address (expected LIST@DOMAIN)");
    err = gs_keyspec_parse(spec->keyspec ? spec->keyspec : "rsa:3072", &type, &bits);
    if (err)
        return err;
    methods = spec->methods ? spec->methods : GS_METHODS_DEFAULT;
    if (spec->allow_pkcs1v15 && type != HSM_KEYTYPE_RSA)
        return gs_err_set(GS_ERR_ARGS, "--allow-pkcs1v15 needs an RSA group key");
    err = gs_store_group_get(st, spec->name, &existing);
    gs_store_group_free(existing);
    if (err == GS_OK)
        return gs_err_set(GS_ERR_EXISTS, "group %s already exists", spec->name);
    if (err != GS_ERR_NOT_FOUND)
        return err;

    label_group(klabel, sizeof(klabel), spec->name, 1);
    label_secret(slabel, sizeof(slabel), spec->name, 1);
    label_reject(rlabel, sizeof(rlabel), spec->name);
    err = make_group_key(hsm, klabel, type, bits, methods, spec->allow_pkcs1v15, &pk);
    if (err)
        goto out;
    made_key = true;
    err = issue_group_cert(ca, hsm, cfg, spec->name, spec->address, pk, &pem);
    if (err)
        goto out;
    if (methods & GS_METHOD_GROUP_SECRET) {
        err = new_kek_id(kek_id);
        if (!err)
            err = make_secret_key(hsm, slabel);
        if (err)
            goto out;
        made_secret = true;
    }
    if (spec->allow_pkcs1v15) {
        err = make_reject_key(hsm, rlabel);
        if (err)
            goto out;
        made_reject = true;
    }
    memset(&row, 0, sizeof(row));
    row.name = (char *)spec->name;
    row.address = (char *)spec->address;
    row.methods = methods;
    row.algorithm = (char *)(spec->keyspec ? spec->keyspec : "rsa:3072");
    row.allow_pkcs1v15 = spec->allow_pkcs1v15;
    row.reject_label = spec->allow_pkcs1v15 ? rlabel : NULL;
    err = gs_store_begin(st);
    if (err)
        goto out;
    err = gs_store_group_add(st, &row, &id);
    if (!err)
        err = gs_store_group_key_add(st, id, 1, klabel, pem);
    if (!err && made_secret)
        err = gs_store_secret_add(st, id, 1, slabel, kek_id);
    if (err) {
        gs_store_rollback(st);
        goto out;
    }
    err = gs_store_commit(st);
    if (err)
        goto out;
    log_info("group created group=%s label=%s", spec->name, klabel);
    if (version_out)
        *version_out = 1;
out:
    if (err) {
        gs_err saved = err;
        char detail[512];
        (void)util_strlcpy(detail, gs_err_detail(), sizeof(detail));
        if (made_key)
            destroy_pair(hsm, klabel);
        if (made_secret)
            (void)destroy_label(hsm, slabel, HSM_CLASS_SECRET);
        if (made_reject)
            (void)destroy_label(hsm, rlabel, HSM_CLASS_SECRET);
        err = gs_err_set(saved, "%s", detail);
    }
    EVP_PKEY_free(pk);
    free(pem);
    return err;
}

static unsigned max_key_version(const gs_store_group_key *keys, size_t n)
{
    unsigned v = 0;
    for (size_t i = 0; i < n; i++)
        if (keys[i].version > v)
            v = keys[i].version;
    return v;
}

gs_err gs_group_rotate(gs_store *st, hsm_ctx *hsm, const gs_ca *ca, const struct gs_config *cfg,
                       const char *name, unsigned *version_out)
{
    gs_store_group *g = NULL;
    gs_store_group_key *keys = NULL;
    size_t nk = 0;
    char label[GS_LABEL_MAX + 1];
    bool made = false;
    EVP_PKEY *pk = NULL;
    char *pem = NULL;
    hsm_key_type type;
    unsigned bits, v;
    gs_err err;

    if (version_out)
        *version_out = 0;
    err = gs_store_group_get(st, name, &g);
    if (err)
        return err;
    err = gs_keyspec_parse(g->algorithm, &type, &bits);
    if (!err)
        err = gs_store_group_keys(st, g->id, &keys, &nk);
    if (err)
        goto out;
    v = max_key_version(keys, nk) + 1;
    label_group(label, sizeof(label), name, v);
    err = make_group_key(hsm, label, type, bits, g->methods, g->allow_pkcs1v15, &pk);
    if (err)
        goto out;
    made = true;
    err = issue_group_cert(ca, hsm, cfg, g->name, g->address, pk, &pem);
    if (!err)
        err = gs_store_group_key_add(st, g->id, v, label, pem);
    if (err)
        goto out;
    log_info("group key rotated group=%s version=%u", name, v);
    if (version_out)
        *version_out = v;
out:
    if (err && made) {
        char detail[512];
        (void)util_strlcpy(detail, gs_err_detail(), sizeof(detail));
        destroy_pair(hsm, label);
        err = gs_err_set(err, "%s", detail);
    }
    EVP_PKEY_free(pk);
    free(pem);
    gs_store_group_keys_free(keys, nk);
    gs_store_group_free(g);
    return err;
}

gs_err gs_group_retire(gs_store *st, hsm_ctx *hsm, const char *name, unsigned before, size_t *n_retired)
{
    gs_store_group *g = NULL;
    gs_store_group_key *keys = NULL;
    size_t nk = 0, count = 0;
    unsigned current = 0;
    gs_err err;

    if (n_retired)
        *n_retired = 0;
    err = gs_store_group_get(st, name, &g);
    if (err)
        return err;
    err = gs_store_group_keys(st, g->id, &keys, &nk);
    if (err)
        goto out;
    for (size_t i = 0; i < nk; i++)
        if (keys[i].state == GS_KEY_CURRENT)
            current = keys[i].version;
    if (before == 0 || before > current) {
        err = gs_err_set(GS_ERR_STATE, "--before %u: must be between 1 and the current version %u", before, current);
        goto out;
    }
    /* Rows first: once committed the server no longer offers these
     * versions; only then are the token objects destroyed. */
    err = gs_store_begin(st);
    if (err)
        goto out;
    for (size_t i = 0; i < nk && !err; i++) {
        if (keys[i].state == GS_KEY_OLD && keys[i].version < before) {
            err = gs_store_group_key_retire(st, g->id, keys[i].version);
            count++;
        }
    }
    if (err) {
        gs_store_rollback(st);
        goto out;
    }
    err = gs_store_commit(st);
    if (err)
        goto out;
    for (size_t i = 0; i < nk; i++) {
        if (keys[i].state == GS_KEY_OLD && keys[i].version < before) {
            hsm_err a = destroy_label(hsm, keys[i].token_label, HSM_CLASS_PRIVATE);
            hsm_err b = destroy_label(hsm, keys[i].token_label, HSM_CLASS_PUBLIC);
            if ((a != HSM_OK || b != HSM_OK) && !err)
                err = hsm_fail(a != HSM_OK ? a : b, "destroying retired key (recorded as retired; `check` flags it)",
                               keys[i].token_label);
            else
                log_info("group key retired group=%s version=%u", name, keys[i].version);
        }
    }
    if (n_retired)
        *n_retired = count;
out:
    gs_store_group_keys_free(keys, nk);
    gs_store_group_free(g);
    return err;
}

gs_err gs_group_import_cert(gs_store *st, hsm_ctx *hsm, const char *name, unsigned version, X509 *cert)
{
    gs_store_group *g = NULL;
    gs_store_group_key *keys = NULL;
    const gs_store_group_key *k = NULL;
    size_t nk = 0;
    hsm_key *priv = NULL;
    unsigned char *spki = NULL;
    size_t spki_len = 0;
    char email[GS_EMAIL_MAX + 1];
    char *pem = NULL;
    gs_err err;
    hsm_err he;

    if (cert == NULL)
        return gs_err_set(GS_ERR_ARGS, "no certificate");
    err = gs_store_group_get(st, name, &g);
    if (err)
        return err;
    err = gs_store_group_keys(st, g->id, &keys, &nk);
    if (err)
        goto out;
    for (size_t i = 0; i < nk; i++)
        if ((version == 0 && keys[i].state == GS_KEY_CURRENT) || (version != 0 && keys[i].version == version))
            k = &keys[i];
    if (k == NULL || k->state == GS_KEY_RETIRED) {
        err = gs_err_set(GS_ERR_NOT_FOUND, "group %s has no usable key version %u", name, version);
        goto out;
    }
    err = gs_cert_email(cert, email, sizeof(email));
    if (err)
        goto out;
    if (strcasecmp(email, g->address) != 0) {
        err = gs_err_set(GS_ERR_CERT, "certificate is for %s, not the list address %s", email, g->address);
        goto out;
    }
    he = hsm_key_find(hsm, k->token_label, HSM_CLASS_PRIVATE, &priv);
    if (he == HSM_OK)
        he = hsm_key_export_public(hsm, priv, &spki, &spki_len);
    if (he != HSM_OK) {
        err = hsm_fail(he, "group key", k->token_label);
        goto out;
    }
    if (!gs_cert_matches_spki(cert, spki, spki_len)) {
        err = gs_err_set(GS_ERR_CERT, "certificate public key does not match token key %s", k->token_label);
        goto out;
    }
    err = gs_cert_to_pem(cert, &pem);
    if (!err)
        err = gs_store_group_key_set_cert(st, g->id, k->version, pem);
    if (!err)
        log_info("group certificate imported group=%s version=%u", name, k->version);
out:
    free(pem);
    free(spki);
    hsm_key_free(priv);
    gs_store_group_keys_free(keys, nk);
    gs_store_group_free(g);
    return err;
}

/* Makes the next secret key version on the token; the caller records it. */
static gs_err next_secret(gs_store *st, hsm_ctx *hsm, const gs_store_group *g, unsigned *version, char *label,
                          size_t label_size, unsigned char kek_id[GS_KEK_ID_LEN])
{
    gs_store_secret *s = NULL;
    size_t ns = 0;
    unsigned v = 0;
    gs_err err;

    if (!(g->methods & GS_METHOD_GROUP_SECRET))
        return gs_err_set(GS_ERR_STATE, "group %s does not use group-secret", g->name);
    err = gs_store_secrets(st, g->id, &s, &ns);
    if (err)
        return err;
    for (size_t i = 0; i < ns; i++)
        if (s[i].version > v)
            v = s[i].version;
    gs_store_secrets_free(s, ns);
    *version = v + 1;
    label_secret(label, label_size, g->name, *version);
    err = new_kek_id(kek_id);
    if (!err)
        err = make_secret_key(hsm, label);
    return err;
}

gs_err gs_secret_rotate(gs_store *st, hsm_ctx *hsm, const char *name, unsigned *version_out)
{
    gs_store_group *g = NULL;
    char label[GS_LABEL_MAX + 1];
    unsigned char kek_id[GS_KEK_ID_LEN];
    unsigned v = 0;
    gs_err err;

    if (version_out)
        *version_out = 0;
    err = gs_store_group_get(st, name, &g);
    if (err)
        return err;
    err = next_secret(st, hsm, g, &v, label, sizeof(label), kek_id);
    if (err)
        goto out;
    err = gs_store_secret_add(st, g->id, v, label, kek_id);
    if (err) {
        char detail[512];
        (void)util_strlcpy(detail, gs_err_detail(), sizeof(detail));
        (void)destroy_label(hsm, label, HSM_CLASS_SECRET);
        err = gs_err_set(err, "%s", detail);
        goto out;
    }
    log_info("secret key rotated group=%s version=%u", name, v);
    if (version_out)
        *version_out = v;
out:
    gs_store_group_free(g);
    return err;
}

/* ---- membership --------------------------------------------------------------- */

gs_err gs_member_add(gs_store *st, const char *group, const char *email, gs_role role, X509 *cert)
{
    gs_store_group *g = NULL;
    char cemail[GS_EMAIL_MAX + 1];
    char *pem = NULL;
    gs_err err;

    if (!gs_valid_email(email))
        return gs_err_set(GS_ERR_ARGS, "invalid member email address");
    err = gs_store_group_get(st, group, &g);
    if (err)
        return err;
    if (cert != NULL) {
        err = gs_cert_email(cert, cemail, sizeof(cemail));
        if (err)
            goto out;
        if (strcasecmp(cemail, email) != 0) {
            err = gs_err_set(GS_ERR_CERT, "certificate is for %s, not %s", cemail, email);
            goto out;
        }
        err = gs_cert_to_pem(cert, &pem);
        if (err)
            goto out;
    }
    err = gs_store_member_add(st, g->id, email, role, pem);
    if (!err)
        log_info("member added group=%s member=%s role=%s", group, email, gs_role_name(role));
out:
    free(pem);
    gs_store_group_free(g);
    return err;
}

gs_err gs_member_remove(gs_store *st, hsm_ctx *hsm, const struct gs_config *cfg, const char *group,
                        const char *email, unsigned *rotated_version)
{
    gs_store_group *g = NULL;
    gs_store_member *m = NULL;
    char label[GS_LABEL_MAX + 1];
    unsigned char kek_id[GS_KEK_ID_LEN];
    unsigned v = 0;
    bool rotate, made = false;
    gs_err err;

    if (rotated_version)
        *rotated_version = 0;
    err = gs_store_group_get(st, group, &g);
    if (err)
        return err;
    err = gs_store_member_get(st, g->id, email, &m);
    if (err) {
        char q[GS_EMAIL_MAX + 8];
        if (err == GS_ERR_NOT_FOUND)
            err = gs_err_set(err, "%s is not a member of %s", log_quote(q, sizeof(q), email), group);
        goto out;
    }
    rotate = cfg->server.auto_rotate_secret_on_remove && (g->methods & GS_METHOD_GROUP_SECRET);
    if (rotate) {
        if (hsm == NULL) {
            err = gs_err_set(GS_ERR_ARGS, "removing a member rotates the secret key: token needed");
            goto out;
        }
        err = next_secret(st, hsm, g, &v, label, sizeof(label), kek_id);
        if (err)
            goto out;
        made = true;
    }
    /* Removal and the new secret version land together, or neither. */
    err = gs_store_begin(st);
    if (err)
        goto out;
    err = gs_store_member_remove(st, g->id, email);
    if (!err && rotate)
        err = gs_store_secret_add(st, g->id, v, label, kek_id);
    if (err) {
        gs_store_rollback(st);
        goto out;
    }
    err = gs_store_commit(st);
    if (err)
        goto out;
    log_info("member removed group=%s member=%s secret_version=%u", group, email, v);
    if (rotated_version)
        *rotated_version = v;
out:
    if (err && made) {
        char detail[512];
        (void)util_strlcpy(detail, gs_err_detail(), sizeof(detail));
        (void)destroy_label(hsm, label, HSM_CLASS_SECRET);
        err = gs_err_set(err, "%s", detail);
    }
    gs_store_member_free(m);
    gs_store_group_free(g);
    return err;
}

/* ---- audit ----------------------------------------------------------------------- */

struct audit {
    hsm_ctx *hsm;
    void (*cb)(void *arg, const gs_key_audit_row *row);
    void *arg;
    unsigned problems;
};

static void report(struct audit *a, gs_key_audit_row *row)
{
    row->ok = row->problem == NULL || row->problem[0] == '\0';
    if (row->problem == NULL)
        row->problem = "";
    if (!row->ok)
        a->problems++;
    if (a->cb)
        a->cb(a->arg, row);
}

/* Finds label of class cls and fills info; returns a problem or NULL. */
static const char *fetch(struct audit *a, const char *label, hsm_key_class cls, hsm_key_info *info, hsm_key **key)
{
    hsm_err he = hsm_key_find(a->hsm, label, cls, key);
    if (he == HSM_ERR_KEY_NOT_FOUND)
        return "missing from the token";
    if (he == HSM_ERR_KEY_AMBIGUOUS)
        return "more than one object with this label";
    if (he != HSM_OK)
        return "token lookup failed";
    he = hsm_key_get_info(a->hsm, *key, info);
    if (he != HSM_OK)
        return "attributes unreadable";
    return NULL;
}

static void audit_group(struct audit *a, gs_store *st, const gs_store_group *g)
{
    gs_store_group_key *keys = NULL;
    gs_store_secret *secrets = NULL;
    size_t nk = 0, ns = 0;
    hsm_key_type type = HSM_KEYTYPE_RSA;
    unsigned bits = 0;
    gs_key_audit_row row;
    hsm_key_info info;

    if (gs_keyspec_parse(g->algorithm, &type, &bits) != GS_OK || gs_store_group_keys(st, g->id, &keys, &nk) != GS_OK ||
        gs_store_secrets(st, g->id, &secrets, &ns) != GS_OK) {
        memset(&row, 0, sizeof(row));
        row.label = "";
        row.kind = "group";
        row.group = g->name;
        row.problem = "database records unreadable";
        report(a, &row);
        goto out;
    }
    for (size_t i = 0; i < nk; i++) {
        hsm_key *k = NULL;
        memset(&row, 0, sizeof(row));
        row.label = keys[i].token_label;
        row.kind = "group";
        row.group = g->name;
        row.version = keys[i].version;
        if (keys[i].state == GS_KEY_RETIRED) {
            /* A retired version must really be gone. */
            hsm_err he = hsm_key_find(a->hsm, keys[i].token_label, 0, &k);
            hsm_key_free(k);
            if (he == HSM_ERR_KEY_NOT_FOUND)
                continue;
            row.present = true;
            row.problem = "retired but still on the token";
            report(a, &row);
            continue;
        }
        row.problem = fetch(a, keys[i].token_label, HSM_CLASS_PRIVATE, &info, &k);
        row.present = row.problem == NULL || strcmp(row.problem, "missing from the token") != 0;
        if (row.problem == NULL) {
            row.info = &info;
            row.problem = check_group_key(&info, type, bits, g->methods, g->allow_pkcs1v15);
        }
        if (row.problem == NULL) {
            unsigned char *spki = NULL;
            size_t spki_len = 0;
            X509 *cert = NULL;
            if (hsm_key_export_public(a->hsm, k, &spki, &spki_len) != HSM_OK)
                row.problem = "public key unreadable";
            else if (gs_cert_parse((const unsigned char *)keys[i].cert_pem, strlen(keys[i].cert_pem), &cert) != GS_OK)
                row.problem = "recorded certificate invalid";
            else if (!gs_cert_matches_spki(cert, spki, spki_len))
                row.problem = "certificate key differs from the token key";
            X509_free(cert);
            free(spki);
        }
        hsm_key_free(k);
        report(a, &row);
    }
    for (size_t i = 0; i < ns; i++) {
        hsm_key *k = NULL;
        memset(&row, 0, sizeof(row));
        row.label = secrets[i].token_label;
        row.kind = "secret";
        row.group = g->name;
        row.version = secrets[i].version;
        row.problem = fetch(a, secrets[i].token_label, HSM_CLASS_SECRET, &info, &k);
        row.present = row.problem == NULL || strcmp(row.problem, "missing from the token") != 0;
        if (row.problem == NULL) {
            row.info = &info;
            row.problem = check_secret_key(&info);
        }
        hsm_key_free(k);
        report(a, &row);
    }
    if (g->reject_label) {
        hsm_key *k = NULL;
        memset(&row, 0, sizeof(row));
        row.label = g->reject_label;
        row.kind = "reject";
        row.group = g->name;
        row.problem = fetch(a, g->reject_label, HSM_CLASS_SECRET, &info, &k);
        row.present = row.problem == NULL || strcmp(row.problem, "missing from the token") != 0;
        if (row.problem == NULL) {
            row.info = &info;
            row.problem = check_reject_key(&info);
        }
        hsm_key_free(k);
        report(a, &row);
    }
out:
    gs_store_group_keys_free(keys, nk);
    gs_store_secrets_free(secrets, ns);
}

gs_err gs_keys_audit(gs_store *st, hsm_ctx *hsm, void (*cb)(void *arg, const gs_key_audit_row *row), void *arg,
                     unsigned *problems)
{
    struct audit a = {hsm, cb, arg, 0};
    gs_store_ca *ca = NULL;
    gs_store_group **groups = NULL;
    size_t ng = 0;
    gs_key_audit_row row;
    hsm_key_info info;
    gs_err err;

    *problems = 0;
    memset(&row, 0, sizeof(row));
    row.kind = "ca";
    row.group = "";
    err = gs_store_ca_get(st, &ca);
    if (err == GS_ERR_NOT_FOUND) {
        row.label = "";
        row.problem = "CA not initialised (groupsrv ca init)";
        report(&a, &row);
    } else if (err) {
        return err;
    } else {
        hsm_key *k = NULL;
        row.label = ca->label;
        row.problem = fetch(&a, ca->label, HSM_CLASS_PRIVATE, &info, &k);
        row.present = row.problem == NULL || strcmp(row.problem, "missing from the token") != 0;
        if (row.problem == NULL) {
            row.info = &info;
            row.problem = check_ca_key(&info);
        }
        hsm_key_free(k);
        report(&a, &row);
    }
    gs_store_ca_free(ca);
    err = gs_store_group_list(st, &groups, &ng);
    if (err)
        return err;
    for (size_t i = 0; i < ng; i++)
        audit_group(&a, st, groups[i]);
    gs_store_group_list_free(groups, ng);
    *problems = a.problems;
    return GS_OK;
}
