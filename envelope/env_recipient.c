/*
 * env_recipient.c: one RecipientInfo on its own: parse it (as the group
 * server receives it), read its algorithm, identifier and encrypted key,
 * compute the ECDH (KARI) inputs for a token, recover a content key with a
 * software key, and build KTRI / KEKRI for re-wrapped keys.
 */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/objects.h>
#include <openssl/params.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "env_internal.h"
#include "util.h"

struct env_recipient {
    ENV_RI *ri;
};

const char *env_strerror(env_err err)
{
    switch (err) {
    case ENV_OK: return "success";
    case ENV_ERR_NOMEM: return "out of memory";
    case ENV_ERR_ARGS: return "invalid arguments";
    case ENV_ERR_IO: return "I/O error";
    case ENV_ERR_TRUNCATED: return "input truncated";
    case ENV_ERR_NOT_CMS: return "not a CMS message";
    case ENV_ERR_MIME: return "malformed S/MIME framing";
    case ENV_ERR_CONTENT_TYPE: return "CMS content type is not (Auth)EnvelopedData";
    case ENV_ERR_NO_RECIPIENT: return "no RecipientInfo for this key";
    case ENV_ERR_UNSUPPORTED: return "unsupported algorithm or recipient type";
    case ENV_ERR_AUTH: return "content authentication failed (tampered or wrong key)";
    case ENV_ERR_KEY: return "key of the wrong length or key unwrap failed";
    case ENV_ERR_CERT: return "certificate unusable";
    case ENV_ERR_TOO_LARGE: return "input too large";
    case ENV_ERR_CRYPTO: return "cryptographic library failure";
    case ENV_ERR_ENCODING:
        return "the S/MIME part is not in base64 (its Content-Transfer-Encoding is another, such as binary, or "
               "missing)";
    case ENV_ERR_BASE64:
        return "text in the base64 that is not base64 (a footer or disclaimer added inside the encrypted "
               "part?)";
    }
    return "unknown error";
}

env_err env_recipient_parse_known(const unsigned char *der, size_t len, X509 *const *certs, size_t ncerts,
                                  env_recipient **out)
{
    env_err rv = ENV_ERR_NOMEM;
    env_recipient *r = NULL;
    const unsigned char *p = der;

    if (out)
        *out = NULL;
    if (!der || !out || len == 0 || (ncerts > 0 && !certs))
        return ENV_ERR_ARGS;
    if (len > ENV_RI_CAP)
        return ENV_ERR_TOO_LARGE;
    if (!(r = calloc(1, sizeof(*r))))
        goto out;
    r->ri = d2i_ENV_RI(NULL, &p, (long)len);
    if (!r->ri) {
        rv = ENV_ERR_NOT_CMS;
        goto out;
    }
    if ((size_t)(p - der) != len) { /* trailing bytes: not one RecipientInfo */
        rv = ENV_ERR_NOT_CMS;
        goto out;
    }
    if (!env_ri_names_valid(r->ri, certs, ncerts)) {
        rv = ENV_ERR_NOT_CMS;
        goto out;
    }
    *out = r;
    r = NULL;
    rv = ENV_OK;
out:
    env_recipient_free(r);
    ERR_clear_error();
    return rv;
}

env_err env_recipient_parse(const unsigned char *der, size_t len, env_recipient **out)
{
    return env_recipient_parse_known(der, len, NULL, 0, out);
}

void env_recipient_free(env_recipient *ri)
{
    if (!ri)
        return;
    ENV_RI_free(ri->ri);
    free(ri);
}

env_ri_type env_recipient_type(const env_recipient *ri)
{
    if (!ri || !ri->ri)
        return ENV_RI_OTHER;
    switch (ri->ri->type) {
    case ENV_RI_T_KTRI: return ENV_RI_KTRI;
    case ENV_RI_T_KARI: return ENV_RI_KARI;
    case ENV_RI_T_KEKRI: return ENV_RI_KEKRI;
    default: return ENV_RI_OTHER;
    }
}

long env_recipient_version(const env_recipient *ri)
{
    switch (ri->ri->type) {
    case ENV_RI_T_KTRI: return ASN1_INTEGER_get(ri->ri->d.ktri->version);
    case ENV_RI_T_KARI: return ASN1_INTEGER_get(ri->ri->d.kari->version);
    case ENV_RI_T_KEKRI: return ASN1_INTEGER_get(ri->ri->d.kekri->version);
    default: return -1;
    }
}

bool env_recipient_version_valid(const env_recipient *ri)
{
    if (ri == NULL)
        return false;
    long v = env_recipient_version(ri);
    switch (ri->ri->type) {
    case ENV_RI_T_KTRI: return v == (ri->ri->d.ktri->rid->type == 0 ? 0 : 2);
    case ENV_RI_T_KARI: return v == 3;
    case ENV_RI_T_KEKRI: return v == 4;
    default: return false;
    }
}

/* Hash NID inside an AlgorithmIdentifier carried as a SEQUENCE parameter
 * (the MGF1 hash), or NID_undef. */
static int inner_algor_nid(const ASN1_TYPE *param)
{
    const unsigned char *p;
    X509_ALGOR *a;
    int nid;

    if (!param || param->type != V_ASN1_SEQUENCE)
        return NID_undef;
    p = param->value.sequence->data;
    a = d2i_X509_ALGOR(NULL, &p, param->value.sequence->length);
    if (!a)
        return NID_undef;
    nid = OBJ_obj2nid(a->algorithm);
    X509_ALGOR_free(a);
    return nid;
}

static env_err oaep_alg(const X509_ALGOR *alg, env_kt_alg *kt)
{
    env_err rv = ENV_ERR_UNSUPPORTED;
    RSA_OAEP_PARAMS *op = NULL;
    const ASN1_TYPE *param = alg->parameter;
    int hash = NID_sha1, mgf = NID_sha1;

    if (param && param->type == V_ASN1_SEQUENCE) {
        const unsigned char *p = param->value.sequence->data;
        op = d2i_RSA_OAEP_PARAMS(NULL, &p, param->value.sequence->length);
        if (!op) {
            rv = ENV_ERR_NOT_CMS; /* malformed, not merely unknown */
            goto out;
        }
        if (op->hashFunc)
            hash = OBJ_obj2nid(op->hashFunc->algorithm);
        if (op->maskGenFunc) {
            if (OBJ_obj2nid(op->maskGenFunc->algorithm) != NID_mgf1)
                goto out;
            mgf = inner_algor_nid(op->maskGenFunc->parameter);
        }
        /* Only the empty label (pSpecifiedEmpty) is in use anywhere. */
        if (op->pSourceFunc) {
            const ASN1_TYPE *lp = op->pSourceFunc->parameter;
            if (OBJ_obj2nid(op->pSourceFunc->algorithm) != NID_pSpecified)
                goto out;
            if (lp && !(lp->type == V_ASN1_OCTET_STRING && lp->value.octet_string->length == 0))
                goto out;
        }
    } else if (param && param->type != V_ASN1_NULL) {
        goto out;
    }
    if (hash == NID_sha1 && mgf == NID_sha1)
        *kt = ENV_KT_RSA_OAEP_SHA1;
    else if (hash == NID_sha256 && mgf == NID_sha256)
        *kt = ENV_KT_RSA_OAEP_SHA256;
    else
        goto out;
    rv = ENV_OK;
out:
    RSA_OAEP_PARAMS_free(op);
    return rv;
}

static size_t wrap_kek_len(int nid, bool allow_pad);

/* A KARI's keyEncryptionAlgorithm: ENV_OK for dhSinglePass-stdDH with the
 * SHA-1 or SHA-256 X9.63 KDF and an AES key wrap (RFC 5753), giving the
 * KDF hash, the wrap algorithm (decoded, the caller's to free) and its
 * KEK length when asked; ENV_ERR_UNSUPPORTED for a well-formed one we do
 * not unwrap (another KDF hash or scheme, a 3DES or padded wrap);
 * ENV_ERR_NOT_CMS when its KeyWrapAlgorithm parameter is missing or not
 * an AlgorithmIdentifier. */
static env_err kari_alg(const ENV_KARI *kari, int *kdf_sha256, X509_ALGOR **wrap_out, size_t *kek_len)
{
    env_err rv = ENV_ERR_UNSUPPORTED;
    X509_ALGOR *wrap = NULL;
    const unsigned char *p;
    size_t kl;
    int nid = OBJ_obj2nid(kari->alg->algorithm), sha256;

    if (wrap_out)
        *wrap_out = NULL;
    if (nid == NID_dhSinglePass_stdDH_sha1kdf_scheme)
        sha256 = 0;
    else if (nid == NID_dhSinglePass_stdDH_sha256kdf_scheme)
        sha256 = 1;
    else
        goto out;
    rv = ENV_ERR_NOT_CMS;
    if (!kari->alg->parameter || kari->alg->parameter->type != V_ASN1_SEQUENCE)
        goto out;
    p = kari->alg->parameter->value.sequence->data;
    if (!(wrap = d2i_X509_ALGOR(NULL, &p, kari->alg->parameter->value.sequence->length)) ||
        p != kari->alg->parameter->value.sequence->data + kari->alg->parameter->value.sequence->length)
        goto out;
    rv = ENV_ERR_UNSUPPORTED;
    if (!(kl = wrap_kek_len(OBJ_obj2nid(wrap->algorithm), false)))
        goto out;
    if (kdf_sha256)
        *kdf_sha256 = sha256;
    if (kek_len)
        *kek_len = kl;
    if (wrap_out) {
        *wrap_out = wrap;
        wrap = NULL;
    }
    rv = ENV_OK;
out:
    X509_ALGOR_free(wrap);
    ERR_clear_error();
    return rv;
}

env_err env_recipient_kt_alg(const env_recipient *ri, env_kt_alg *alg)
{
    int nid;

    if (alg)
        *alg = 0;
    if (!ri || !alg)
        return ENV_ERR_ARGS;
    if (ri->ri->type == ENV_RI_T_KARI) {
        /* The whole algorithm, the KDF's hash and the key wrap too, so that
         * every reader of a KARI it cannot unwrap (SHA-384 KDF, 3DES wrap)
         * says ENV_ERR_UNSUPPORTED here, before any key is touched. */
        env_err e = kari_alg(ri->ri->d.kari, NULL, NULL, NULL);
        if (e != ENV_OK)
            return e;
        *alg = ENV_KT_ECDH;
        return ENV_OK;
    }
    if (ri->ri->type != ENV_RI_T_KTRI)
        return ENV_ERR_UNSUPPORTED;
    nid = OBJ_obj2nid(ri->ri->d.ktri->alg->algorithm);
    if (nid == NID_rsaEncryption) {
        *alg = ENV_KT_RSA_PKCS1V15;
        return ENV_OK;
    }
    if (nid != NID_rsaesOaep)
        return ENV_ERR_UNSUPPORTED;
    return oaep_alg(ri->ri->d.ktri->alg, alg);
}

/* Is the issuer name of ias byte for byte the issuer of cert? */
static bool ias_issuer_is(const ENV_IAS *ias, X509 *cert)
{
    const unsigned char *der = NULL;
    size_t len = 0;

    return X509_NAME_get0_der(X509_get_issuer_name(cert), &der, &len) == 1 &&
           len == (size_t)ASN1_STRING_length(ias->issuer) && memcmp(der, ASN1_STRING_get0_data(ias->issuer), len) == 0;
}

/* The issuer name of ias decoded, or NULL when it is not an X.509 Name. */
static X509_NAME *ias_issuer_decode(const ENV_IAS *ias)
{
    const unsigned char *p = ASN1_STRING_get0_data(ias->issuer);
    long len = ASN1_STRING_length(ias->issuer);
    X509_NAME *name = d2i_X509_NAME(NULL, &p, len);

    if (name != NULL && p != ASN1_STRING_get0_data(ias->issuer) + len) {
        X509_NAME_free(name);
        name = NULL;
    }
    ERR_clear_error();
    return name;
}

static bool ias_name_valid(const ENV_IAS *ias, X509 *const *certs, size_t ncerts)
{
    X509_NAME *name;

    for (size_t i = 0; i < ncerts; i++)
        if (certs[i] != NULL && ias_issuer_is(ias, certs[i]))
            return true;
    if ((name = ias_issuer_decode(ias)) == NULL)
        return false;
    X509_NAME_free(name);
    return true;
}

bool env_ri_names_valid(const ENV_RI *ri, X509 *const *certs, size_t ncerts)
{
    switch (ri->type) {
    case ENV_RI_T_KTRI:
        return ri->d.ktri->rid->type != 0 || ias_name_valid(ri->d.ktri->rid->d.ias, certs, ncerts);
    case ENV_RI_T_KARI: {
        const ENV_KARI *kari = ri->d.kari;
        if (kari->originator->type == 0 && !ias_name_valid(kari->originator->d.ias, certs, ncerts))
            return false;
        for (int i = 0; i < sk_ENV_REK_num(kari->reks); i++) {
            const ENV_REK *rek = sk_ENV_REK_value(kari->reks, i);
            if (rek->rid->type == 0 && !ias_name_valid(rek->rid->d.ias, certs, ncerts))
                return false;
        }
        return true;
    }
    default:
        return true;
    }
}

/* The issuer is compared byte for byte first: the same bytes are the
 * same name. Other encodings are compared as X509_NAME_cmp compares
 * names (their canonical forms). */
/* Is ias's issuer cert's issuer (whatever the serial)? */
static bool ias_same_issuer(const ENV_IAS *ias, X509 *cert)
{
    bool same = false;

    if (ias_issuer_is(ias, cert))
        return true;
    X509_NAME *name = ias_issuer_decode(ias);
    same = name != NULL && X509_NAME_cmp(name, X509_get_issuer_name(cert)) == 0;
    X509_NAME_free(name);
    return same;
}

bool env_ias_matches(const ENV_IAS *ias, X509 *cert)
{
    if (!ias || ASN1_INTEGER_cmp(ias->serial, X509_get0_serialNumber(cert)) != 0)
        return false;
    return ias_same_issuer(ias, cert);
}

static bool ski_matches(const ASN1_OCTET_STRING *ski, X509 *cert)
{
    const ASN1_OCTET_STRING *cski = X509_get0_subject_key_id(cert);
    return ski && cski && ASN1_OCTET_STRING_cmp(ski, cski) == 0;
}

static bool rek_matches(const ENV_REK *rek, X509 *cert)
{
    if (rek->rid->type == 0)
        return env_ias_matches(rek->rid->d.ias, cert);
    return ski_matches(rek->rid->d.rkeyid->id, cert);
}

bool env_recipient_matches_cert(const env_recipient *ri, X509 *cert)
{
    if (!ri || !cert)
        return false;
    if (ri->ri->type == ENV_RI_T_KTRI) {
        const ENV_RID *rid = ri->ri->d.ktri->rid;
        return rid->type == 0 ? env_ias_matches(rid->d.ias, cert) : ski_matches(rid->d.ski, cert);
    }
    if (ri->ri->type == ENV_RI_T_KARI) {
        const STACK_OF(ENV_REK) *reks = ri->ri->d.kari->reks;
        for (int i = 0; i < sk_ENV_REK_num(reks); i++)
            if (rek_matches(sk_ENV_REK_value(reks, i), cert))
                return true;
    }
    return false;
}

bool env_recipient_names_issuer_of(const env_recipient *ri, X509 *cert)
{
    if (!ri || !cert)
        return false;
    if (ri->ri->type == ENV_RI_T_KTRI) {
        const ENV_RID *rid = ri->ri->d.ktri->rid;
        return rid->type == 0 && rid->d.ias != NULL && ias_same_issuer(rid->d.ias, cert);
    }
    if (ri->ri->type == ENV_RI_T_KARI) {
        const STACK_OF(ENV_REK) *reks = ri->ri->d.kari->reks;
        for (int i = 0; i < sk_ENV_REK_num(reks); i++) {
            const ENV_REK *rek = sk_ENV_REK_value(reks, i);
            if (rek->rid->type == 0 && rek->rid->d.ias != NULL && ias_same_issuer(rek->rid->d.ias, cert))
                return true;
        }
    }
    return false;
}

bool env_recipient_names_key_id(const env_recipient *ri)
{
    if (!ri)
        return false;
    if (ri->ri->type == ENV_RI_T_KTRI)
        return ri->ri->d.ktri->rid->type != 0;
    if (ri->ri->type == ENV_RI_T_KARI) {
        const STACK_OF(ENV_REK) *reks = ri->ri->d.kari->reks;
        for (int i = 0; i < sk_ENV_REK_num(reks); i++)
            if (sk_ENV_REK_value(reks, i)->rid->type != 0)
                return true;
    }
    return false;
}

static const ENV_REK *kari_rek(const ENV_KARI *kari, X509 *cert)
{
    for (int i = 0; i < sk_ENV_REK_num(kari->reks); i++) {
        const ENV_REK *rek = sk_ENV_REK_value(kari->reks, i);
        if (!cert || rek_matches(rek, cert))
            return rek;
    }
    return NULL;
}

env_err env_recipient_encrypted_key(const env_recipient *ri, X509 *cert, const unsigned char **key, size_t *len)
{
    const ASN1_OCTET_STRING *ek = NULL;

    if (key)
        *key = NULL;
    if (len)
        *len = 0;
    if (!ri || !key || !len)
        return ENV_ERR_ARGS;
    switch (ri->ri->type) {
    case ENV_RI_T_KTRI: ek = ri->ri->d.ktri->ek; break;
    case ENV_RI_T_KEKRI: ek = ri->ri->d.kekri->ek; break;
    case ENV_RI_T_KARI: {
        const ENV_REK *rek = kari_rek(ri->ri->d.kari, cert);
        if (!rek)
            return ENV_ERR_NO_RECIPIENT;
        ek = rek->ek;
        break;
    }
    default: return ENV_ERR_UNSUPPORTED;
    }
    *key = ASN1_STRING_get0_data(ek);
    *len = (size_t)ASN1_STRING_length(ek);
    return ENV_OK;
}

env_err env_recipient_kek_id(const env_recipient *ri, const unsigned char **id, size_t *len)
{
    if (id)
        *id = NULL;
    if (len)
        *len = 0;
    if (!ri || !id || !len)
        return ENV_ERR_ARGS;
    if (ri->ri->type != ENV_RI_T_KEKRI)
        return ENV_ERR_UNSUPPORTED;
    *id = ASN1_STRING_get0_data(ri->ri->d.kekri->kekid->id);
    *len = (size_t)ASN1_STRING_length(ri->ri->d.kekri->kekid->id);
    return ENV_OK;
}

/* AES key wrap NID -> KEK length, 0 if not an AES key wrap (RFC 3394). */
static size_t wrap_kek_len(int nid, bool allow_pad)
{
    switch (nid) {
    case NID_id_aes128_wrap: return 16;
    case NID_id_aes192_wrap: return 24;
    case NID_id_aes256_wrap: return 32;
    case NID_id_aes128_wrap_pad: return allow_pad ? 16 : 0;
    case NID_id_aes192_wrap_pad: return allow_pad ? 24 : 0;
    case NID_id_aes256_wrap_pad: return allow_pad ? 32 : 0;
    default: return 0;
    }
}

static void *dup_bytes(const void *p, size_t n)
{
    void *d = malloc(n ? n : 1);
    if (d && n)
        memcpy(d, p, n);
    return d;
}

bool env_ec_point_on_cert_curve(X509 *cert, const unsigned char *point, size_t len)
{
    EVP_PKEY *pub = cert != NULL ? X509_get0_pubkey(cert) : NULL, *peer = NULL;
    EVP_PKEY_CTX *make = NULL, *check = NULL;
    char curve[80];
    size_t curve_len = 0;
    bool ok = false;

    if (pub == NULL || point == NULL || len == 0 || EVP_PKEY_get_base_id(pub) != EVP_PKEY_EC ||
        EVP_PKEY_get_utf8_string_param(pub, OSSL_PKEY_PARAM_GROUP_NAME, curve, sizeof(curve), &curve_len) != 1)
        goto out;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, curve, 0),
        OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)point, len),
        OSSL_PARAM_construct_end(),
    };
    if ((make = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL)) == NULL || EVP_PKEY_fromdata_init(make) != 1 ||
        EVP_PKEY_fromdata(make, &peer, EVP_PKEY_PUBLIC_KEY, params) != 1)
        goto out;
    /* On the curve and not the point at infinity; the group keys' curves
     * (P-256, P-384) have cofactor 1, so that is the whole group. */
    if ((check = EVP_PKEY_CTX_new_from_pkey(NULL, peer, NULL)) == NULL)
        goto out;
    ok = EVP_PKEY_public_check_quick(check) == 1;
out:
    ERR_clear_error();
    EVP_PKEY_CTX_free(check);
    EVP_PKEY_free(peer);
    EVP_PKEY_CTX_free(make);
    return ok;
}

env_err env_recipient_check_unwrap(const env_recipient *ri, X509 *cert)
{
    env_kari_params kp;
    env_kt_alg alg;
    env_err rv;
    EVP_PKEY *pub;

    if (!ri || !cert)
        return ENV_ERR_ARGS;
    if (ri->ri->type != ENV_RI_T_KTRI && ri->ri->type != ENV_RI_T_KARI)
        return ENV_ERR_UNSUPPORTED;
    if (!env_recipient_version_valid(ri))
        return ENV_ERR_NOT_CMS;
    if ((rv = env_recipient_kt_alg(ri, &alg)) != ENV_OK)
        return rv;
    if ((pub = X509_get0_pubkey(cert)) == NULL)
        return ENV_ERR_CERT;
    if (alg != ENV_KT_ECDH) {
        const ASN1_OCTET_STRING *ek = ri->ri->d.ktri->ek;
        if (EVP_PKEY_get_base_id(pub) != EVP_PKEY_RSA)
            return ENV_ERR_UNSUPPORTED; /* an RSA key transport to an EC key */
        /* an RSA ciphertext is exactly as long as the modulus (RFC 8017
         * I2OSP): the key holder refuses any other length before the token */
        int len = ASN1_STRING_length(ek);
        return len > 0 && len <= 1024 && len == EVP_PKEY_get_size(pub) ? ENV_OK : ENV_ERR_NOT_CMS;
    }
    if ((rv = env_recipient_kari_params(ri, cert, &kp)) != ENV_OK)
        return rv;
    /* the token's bounds (hsm_ecdh_decrypt_content_key): an RFC 3394 wrap
     * of a content key is 24 to 72 bytes, whole 8-byte blocks; the X9.63
     * shared info (with the sender's ukm in it) at most 1024 bytes */
    rv = ENV_ERR_NOT_CMS;
    if (kp.wrapped_key_len >= 24 && kp.wrapped_key_len <= 72 && kp.wrapped_key_len % 8 == 0 &&
        kp.shared_info_len <= 1024 && kp.peer_point_len <= 133 &&
        env_ec_point_on_cert_curve(cert, kp.peer_point, kp.peer_point_len))
        rv = ENV_OK;
    env_kari_params_clear(&kp);
    return rv;
}

void env_kari_params_clear(env_kari_params *p)
{
    if (!p)
        return;
    free(p->peer_point);
    free(p->shared_info);
    util_secret_free(p->wrapped_key, p->wrapped_key_len);
    memset(p, 0, sizeof(*p));
}

env_err env_recipient_kari_params(const env_recipient *ri, X509 *cert, env_kari_params *out)
{
    env_err rv = ENV_ERR_UNSUPPORTED;
    const ENV_KARI *kari;
    const ENV_REK *rek;
    X509_ALGOR *wrap = NULL;
    ENV_SHAREDINFO *si = NULL;
    unsigned char bits[4];
    unsigned char *der = NULL;
    int derlen;

    if (out)
        memset(out, 0, sizeof(*out));
    if (!ri || !out)
        return ENV_ERR_ARGS;
    if (ri->ri->type != ENV_RI_T_KARI)
        return ENV_ERR_UNSUPPORTED;
    kari = ri->ri->d.kari;
    if (!(rek = kari_rek(kari, cert)))
        return ENV_ERR_NO_RECIPIENT;
    if ((rv = kari_alg(kari, &out->kdf_sha256, &wrap, &out->kek_len)) != ENV_OK)
        goto out;
    /* The originator must be an ephemeral EC public key (RFC 5753 sec
     * 3.1.1): anything else is not an ECDH KARI at all. A compressed point
     * is one, in a form we do not take. */
    rv = ENV_ERR_NOT_CMS;
    if (kari->originator->type != 2 || OBJ_obj2nid(kari->originator->d.key->alg->algorithm) != NID_X9_62_id_ecPublicKey)
        goto out;
    {
        const ASN1_BIT_STRING *pub = kari->originator->d.key->pub;
        if (pub->length < 3)
            goto out;
        rv = ENV_ERR_UNSUPPORTED;
        if (pub->data[0] != 0x04)
            goto out;
        rv = ENV_ERR_NOT_CMS;
        if ((pub->length & 1) == 0)
            goto out;
        rv = ENV_ERR_NOMEM;
        if (!(out->peer_point = dup_bytes(pub->data, (size_t)pub->length)))
            goto out;
        out->peer_point_len = (size_t)pub->length;
    }
    rv = ENV_ERR_NOMEM;
    if (!(si = ENV_SHAREDINFO_new()))
        goto out;
    X509_ALGOR_free(si->wrap_alg);
    si->wrap_alg = wrap; /* keyInfo is the wrap algorithm exactly as sent */
    wrap = NULL;
    if (kari->ukm && !(si->entityuinfo = ASN1_OCTET_STRING_dup(kari->ukm)))
        goto out;
    bits[0] = (unsigned char)((out->kek_len * 8) >> 24);
    bits[1] = (unsigned char)((out->kek_len * 8) >> 16);
    bits[2] = (unsigned char)((out->kek_len * 8) >> 8);
    bits[3] = (unsigned char)(out->kek_len * 8);
    if (!ASN1_OCTET_STRING_set(si->supppubinfo, bits, 4))
        goto out;
    if ((derlen = i2d_ENV_SHAREDINFO(si, &der)) <= 0)
        goto out;
    if (!(out->shared_info = dup_bytes(der, (size_t)derlen)))
        goto out;
    out->shared_info_len = (size_t)derlen;
    if (!(out->wrapped_key = dup_bytes(rek->ek->data, (size_t)rek->ek->length)))
        goto out;
    out->wrapped_key_len = (size_t)rek->ek->length;
    rv = ENV_OK;
out:
    if (rv != ENV_OK)
        env_kari_params_clear(out);
    OPENSSL_free(der);
    X509_ALGOR_free(wrap);
    ENV_SHAREDINFO_free(si);
    ERR_clear_error();
    return rv;
}

env_err env_aes_unwrap(int wrap_nid, const unsigned char *kek, size_t keklen, const unsigned char *in,
                       size_t inlen, unsigned char *out, size_t outcap, size_t *outlen)
{
    env_err rv = ENV_ERR_KEY;
    EVP_CIPHER_CTX *ctx = NULL;
    const EVP_CIPHER *c = EVP_get_cipherbynid(wrap_nid);
    unsigned char buf[1024];
    int n = 0;

    *outlen = 0;
    if (!c || wrap_kek_len(wrap_nid, true) == 0)
        return ENV_ERR_UNSUPPORTED;
    if (keklen != (size_t)EVP_CIPHER_get_key_length(c) || inlen < 16 || inlen > sizeof(buf))
        return ENV_ERR_KEY;
    if (!(ctx = EVP_CIPHER_CTX_new()))
        return ENV_ERR_NOMEM;
    EVP_CIPHER_CTX_set_flags(ctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
    if (!EVP_DecryptInit_ex(ctx, c, NULL, kek, NULL))
        goto out;
    if (EVP_DecryptUpdate(ctx, buf, &n, in, (int)inlen) <= 0 || n <= 0)
        goto out;
    if ((size_t)n > outcap)
        goto out;
    memcpy(out, buf, (size_t)n);
    *outlen = (size_t)n;
    rv = ENV_OK;
out:
    OPENSSL_cleanse(buf, sizeof(buf));
    EVP_CIPHER_CTX_free(ctx);
    ERR_clear_error();
    return rv;
}

env_err env_recipient_decrypt_kekri(const env_recipient *ri, const unsigned char *kek, size_t keklen,
                                    unsigned char *cek, size_t cekcap, size_t *ceklen)
{
    if (ceklen)
        *ceklen = 0;
    if (!ri || !kek || !cek || !ceklen)
        return ENV_ERR_ARGS;
    if (ri->ri->type != ENV_RI_T_KEKRI)
        return ENV_ERR_UNSUPPORTED;
    return env_aes_unwrap(OBJ_obj2nid(ri->ri->d.kekri->alg->algorithm), kek, keklen,
                          ri->ri->d.kekri->ek->data, (size_t)ri->ri->d.kekri->ek->length, cek, cekcap, ceklen);
}

static env_err ktri_decrypt(const ENV_KTRI *k, env_kt_alg alg, EVP_PKEY *pkey, unsigned char *cek,
                            size_t cekcap, size_t *ceklen)
{
    env_err rv = ENV_ERR_CRYPTO;
    EVP_PKEY_CTX *ctx = NULL;
    unsigned char *buf = NULL;
    size_t n = 0, cap;

    if (!EVP_PKEY_is_a(pkey, "RSA"))
        return ENV_ERR_KEY;
    cap = (size_t)EVP_PKEY_get_size(pkey);
    if (!(buf = malloc(cap)))
        return ENV_ERR_NOMEM;
    if (!(ctx = EVP_PKEY_CTX_new(pkey, NULL)) || EVP_PKEY_decrypt_init(ctx) <= 0)
        goto out;
    if (alg == ENV_KT_RSA_PKCS1V15) {
        if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0)
            goto out;
    } else {
        const EVP_MD *md = alg == ENV_KT_RSA_OAEP_SHA256 ? EVP_sha256() : EVP_sha1();
        if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
            EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) <= 0 || EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) <= 0)
            goto out;
    }
    n = cap;
    if (EVP_PKEY_decrypt(ctx, buf, &n, k->ek->data, (size_t)k->ek->length) <= 0) {
        rv = ENV_ERR_KEY;
        goto out;
    }
    if (n > cekcap) {
        rv = ENV_ERR_KEY;
        goto out;
    }
    memcpy(cek, buf, n);
    *ceklen = n;
    rv = ENV_OK;
out:
    OPENSSL_clear_free(buf, cap);
    EVP_PKEY_CTX_free(ctx);
    ERR_clear_error();
    return rv;
}

/* Software ECDH + X9.63 KDF + AES unwrap for a KARI (RFC 5753). */
static env_err kari_decrypt(const env_recipient *ri, X509 *cert, EVP_PKEY *pkey, unsigned char *cek,
                            size_t cekcap, size_t *ceklen)
{
    env_err rv;
    env_kari_params kp;
    char group[80];
    size_t glen = 0, zlen = 0;
    EVP_PKEY_CTX *fctx = NULL, *dctx = NULL;
    EVP_PKEY *peer = NULL;
    EVP_KDF *kdf = NULL;
    EVP_KDF_CTX *kctx = NULL;
    unsigned char z[133], kek[32];
    OSSL_PARAM params[4];
    const unsigned char *p;
    X509_ALGOR *wrap = NULL;
    const ENV_KARI *kari = ri->ri->d.kari;

    if ((rv = env_recipient_kari_params(ri, cert, &kp)) != ENV_OK)
        return rv;
    rv = ENV_ERR_KEY;
    if (!EVP_PKEY_is_a(pkey, "EC") ||
        !EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), &glen))
        goto out;
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, kp.peer_point, kp.peer_point_len);
    params[2] = OSSL_PARAM_construct_end();
    if (!(fctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL)) || EVP_PKEY_fromdata_init(fctx) <= 0 ||
        EVP_PKEY_fromdata(fctx, &peer, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        goto out;
    zlen = sizeof(z);
    if (!(dctx = EVP_PKEY_CTX_new(pkey, NULL)) || EVP_PKEY_derive_init(dctx) <= 0 ||
        EVP_PKEY_derive_set_peer(dctx, peer) <= 0 || EVP_PKEY_derive(dctx, z, &zlen) <= 0)
        goto out;
    rv = ENV_ERR_CRYPTO;
    if (!(kdf = EVP_KDF_fetch(NULL, "X963KDF", NULL)) || !(kctx = EVP_KDF_CTX_new(kdf)))
        goto out;
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, kp.kdf_sha256 ? "SHA256" : "SHA1", 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, z, zlen);
    params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, kp.shared_info, kp.shared_info_len);
    params[3] = OSSL_PARAM_construct_end();
    if (EVP_KDF_derive(kctx, kek, kp.kek_len, params) <= 0)
        goto out;
    p = kari->alg->parameter->value.sequence->data;
    if (!(wrap = d2i_X509_ALGOR(NULL, &p, kari->alg->parameter->value.sequence->length)))
        goto out;
    rv = env_aes_unwrap(OBJ_obj2nid(wrap->algorithm), kek, kp.kek_len, kp.wrapped_key, kp.wrapped_key_len, cek,
                        cekcap, ceklen);
out:
    OPENSSL_cleanse(z, sizeof(z));
    OPENSSL_cleanse(kek, sizeof(kek));
    X509_ALGOR_free(wrap);
    EVP_KDF_CTX_free(kctx);
    EVP_KDF_free(kdf);
    EVP_PKEY_free(peer);
    EVP_PKEY_CTX_free(fctx);
    EVP_PKEY_CTX_free(dctx);
    env_kari_params_clear(&kp);
    ERR_clear_error();
    return rv;
}

env_err env_recipient_decrypt_with_pkey(const env_recipient *ri, X509 *cert, EVP_PKEY *pkey,
                                        unsigned char *cek, size_t cekcap, size_t *ceklen)
{
    env_err rv;
    env_kt_alg alg;

    if (ceklen)
        *ceklen = 0;
    if (!ri || !pkey || !cek || !ceklen)
        return ENV_ERR_ARGS;
    if (cert && !env_recipient_matches_cert(ri, cert))
        return ENV_ERR_NO_RECIPIENT;
    if ((rv = env_recipient_kt_alg(ri, &alg)) != ENV_OK)
        return rv;
    if (alg == ENV_KT_ECDH)
        return kari_decrypt(ri, cert, pkey, cek, cekcap, ceklen);
    return ktri_decrypt(ri->ri->d.ktri, alg, pkey, cek, cekcap, ceklen);
}

/* i2d into a malloc'd buffer the caller frees with free(). */
static env_err ri_to_der(const ENV_RI *ri, unsigned char **der, size_t *len)
{
    int n = i2d_ENV_RI(ri, NULL);
    unsigned char *buf, *p;

    if (n <= 0)
        return ENV_ERR_CRYPTO;
    if (!(buf = malloc((size_t)n)))
        return ENV_ERR_NOMEM;
    p = buf;
    if (i2d_ENV_RI(ri, &p) != n) {
        free(buf);
        return ENV_ERR_CRYPTO;
    }
    *der = buf;
    *len = (size_t)n;
    return ENV_OK;
}

/* RSAES-OAEP AlgorithmIdentifier (RFC 4055 / 8017) */
static env_err oaep_algor(X509_ALGOR *alg, bool sha256)
{
    env_err rv = ENV_ERR_NOMEM;
    RSA_OAEP_PARAMS *op = NULL;
    X509_ALGOR *mgfhash = NULL;
    ASN1_STRING *mgfparam = NULL, *packed = NULL;

    if (!(op = RSA_OAEP_PARAMS_new()))
        goto out;
    if (sha256) {
        if (!(op->hashFunc = X509_ALGOR_new()) || !(mgfhash = X509_ALGOR_new()) ||
            !(op->maskGenFunc = X509_ALGOR_new()))
            goto out;
        X509_ALGOR_set_md(op->hashFunc, EVP_sha256());
        X509_ALGOR_set_md(mgfhash, EVP_sha256());
        if (!(mgfparam = ASN1_item_pack(mgfhash, ASN1_ITEM_rptr(X509_ALGOR), NULL)))
            goto out;
        if (!X509_ALGOR_set0(op->maskGenFunc, OBJ_nid2obj(NID_mgf1), V_ASN1_SEQUENCE, mgfparam))
            goto out;
        mgfparam = NULL;
    }
    if (!(packed = ASN1_item_pack(op, ASN1_ITEM_rptr(RSA_OAEP_PARAMS), NULL)))
        goto out;
    if (!X509_ALGOR_set0(alg, OBJ_nid2obj(NID_rsaesOaep), V_ASN1_SEQUENCE, packed))
        goto out;
    packed = NULL;
    rv = ENV_OK;
out:
    ASN1_STRING_free(mgfparam);
    ASN1_STRING_free(packed);
    X509_ALGOR_free(mgfhash);
    RSA_OAEP_PARAMS_free(op);
    return rv;
}

env_err env_ktri_build(X509 *recipient, env_kt_alg alg, const unsigned char *enc_key, size_t enc_len,
                       unsigned char **der, size_t *len)
{
    env_err rv = ENV_ERR_NOMEM;
    ENV_RI *ri = NULL;
    ENV_KTRI *k;
    ENV_IAS *ias;
    EVP_PKEY *pub;

    if (der)
        *der = NULL;
    if (len)
        *len = 0;
    if (!recipient || !enc_key || enc_len == 0 || enc_len > 2048 || !der || !len)
        return ENV_ERR_ARGS;
    if (alg != ENV_KT_RSA_OAEP_SHA1 && alg != ENV_KT_RSA_OAEP_SHA256 && alg != ENV_KT_RSA_PKCS1V15)
        return ENV_ERR_ARGS;
    pub = X509_get0_pubkey(recipient);
    if (!pub || !EVP_PKEY_is_a(pub, "RSA"))
        return ENV_ERR_CERT;
    if (!(ri = ENV_RI_new()) || !(ri->d.ktri = ENV_KTRI_new()))
        goto out;
    ri->type = ENV_RI_T_KTRI;
    k = ri->d.ktri;
    if (!ASN1_INTEGER_set(k->version, 0)) /* issuerAndSerialNumber: v0 */
        goto out;
    if (!(ias = ENV_IAS_new()))
        goto out;
    k->rid->type = 0;
    k->rid->d.ias = ias;
    const unsigned char *issuer = NULL;
    size_t issuer_len = 0;
    if (X509_NAME_get0_der(X509_get_issuer_name(recipient), &issuer, &issuer_len) != 1 || issuer_len > INT_MAX ||
        !ASN1_STRING_set(ias->issuer, issuer, (int)issuer_len))
        goto out;
    ASN1_INTEGER_free(ias->serial);
    if (!(ias->serial = ASN1_INTEGER_dup(X509_get0_serialNumber(recipient))))
        goto out;
    if (alg == ENV_KT_RSA_PKCS1V15) {
        /* rsaEncryption with NULL parameters (RFC 3370 sec 4.2.1) */
        if (!X509_ALGOR_set0(k->alg, OBJ_nid2obj(NID_rsaEncryption), V_ASN1_NULL, NULL))
            goto out;
    } else if ((rv = oaep_algor(k->alg, alg == ENV_KT_RSA_OAEP_SHA256)) != ENV_OK) {
        goto out;
    }
    rv = ENV_ERR_NOMEM;
    if (!ASN1_OCTET_STRING_set(k->ek, enc_key, (int)enc_len))
        goto out;
    rv = ri_to_der(ri, der, len);
out:
    ENV_RI_free(ri);
    ERR_clear_error();
    return rv;
}

env_err env_kekri_build(const unsigned char *kek_id, size_t kek_id_len, unsigned kek_bits, bool pad,
                        const unsigned char *wrapped, size_t wrapped_len, unsigned char **der, size_t *len)
{
    env_err rv = ENV_ERR_NOMEM;
    ENV_RI *ri = NULL;
    ENV_KEKRI *k;
    int nid;

    if (der)
        *der = NULL;
    if (len)
        *len = 0;
    if (!kek_id || kek_id_len == 0 || kek_id_len > 256 || !wrapped || !der || !len)
        return ENV_ERR_ARGS;
    /* RFC 3394 output is n+1 64-bit blocks, n >= 2; RFC 5649 at least 16 bytes. */
    if (pad ? (wrapped_len < 16 || wrapped_len % 8) : (wrapped_len < 24 || wrapped_len % 8))
        return ENV_ERR_ARGS;
    if (wrapped_len > 1024)
        return ENV_ERR_ARGS;
    switch (kek_bits) {
    case 128: nid = pad ? NID_id_aes128_wrap_pad : NID_id_aes128_wrap; break;
    case 192: nid = pad ? NID_id_aes192_wrap_pad : NID_id_aes192_wrap; break;
    case 256: nid = pad ? NID_id_aes256_wrap_pad : NID_id_aes256_wrap; break;
    default: return ENV_ERR_ARGS;
    }
    if (!(ri = ENV_RI_new()) || !(ri->d.kekri = ENV_KEKRI_new()))
        goto out;
    ri->type = ENV_RI_T_KEKRI;
    k = ri->d.kekri;
    if (!ASN1_INTEGER_set(k->version, 4))
        goto out;
    if (!ASN1_OCTET_STRING_set(k->kekid->id, kek_id, (int)kek_id_len))
        goto out;
    /* RFC 3565 sec 2.3.2: the AES key wrap parameters are absent. */
    if (!X509_ALGOR_set0(k->alg, OBJ_nid2obj(nid), V_ASN1_UNDEF, NULL))
        goto out;
    if (!ASN1_OCTET_STRING_set(k->ek, wrapped, (int)wrapped_len))
        goto out;
    rv = ri_to_der(ri, der, len);
out:
    ENV_RI_free(ri);
    ERR_clear_error();
    return rv;
}

/* ---- helpers used by env_message.c ---- */

env_err env_cipher_from_algor(const X509_ALGOR *alg, bool *gcm, size_t *keylen, unsigned char *iv,
                              size_t *ivlen, size_t *taglen)
{
    env_err rv = ENV_ERR_UNSUPPORTED;
    int nid = OBJ_obj2nid(alg->algorithm);
    const ASN1_TYPE *param = alg->parameter;
    ENV_GCMPARAMS *gp = NULL;

    *ivlen = 0;
    *taglen = 0;
    switch (nid) {
    case NID_aes_256_cbc: *gcm = false; *keylen = 32; break;
    case NID_aes_192_cbc: *gcm = false; *keylen = 24; break;
    case NID_aes_128_cbc: *gcm = false; *keylen = 16; break;
    case NID_aes_256_gcm: *gcm = true; *keylen = 32; break;
    case NID_aes_192_gcm: *gcm = true; *keylen = 24; break;
    case NID_aes_128_gcm: *gcm = true; *keylen = 16; break;
    /* read, never written: what OpenSSL 3.0's `openssl cms -encrypt` and
     * `openssl smime -encrypt` use by default, and old Outlook sends */
    case NID_des_ede3_cbc: *gcm = false; *keylen = 24; break;
    default: return ENV_ERR_UNSUPPORTED;
    }
    if (!*gcm) {
        /* CBC: the parameter is the IV, one cipher block, as an OCTET STRING. */
        size_t block = nid == NID_des_ede3_cbc ? 8 : 16;
        if (!param || param->type != V_ASN1_OCTET_STRING || param->value.octet_string->length != (int)block)
            return ENV_ERR_NOT_CMS;
        memcpy(iv, param->value.octet_string->data, block);
        *ivlen = block;
        return ENV_OK;
    }
    if (!param || param->type != V_ASN1_SEQUENCE)
        return ENV_ERR_NOT_CMS;
    {
        const unsigned char *p = param->value.sequence->data;
        gp = d2i_ENV_GCMPARAMS(NULL, &p, param->value.sequence->length);
    }
    rv = ENV_ERR_NOT_CMS;
    if (!gp || gp->nonce->length < 1 || gp->nonce->length > 64)
        goto out;
    *taglen = 12;
    if (gp->icvlen) {
        long t = ASN1_INTEGER_get(gp->icvlen);
        if (t < 12 || t > 16) { /* RFC 5084 allows 12..16 */
            rv = ENV_ERR_UNSUPPORTED;
            goto out;
        }
        *taglen = (size_t)t;
    }
    memcpy(iv, gp->nonce->data, (size_t)gp->nonce->length);
    *ivlen = (size_t)gp->nonce->length;
    rv = ENV_OK;
out:
    ENV_GCMPARAMS_free(gp);
    ERR_clear_error();
    return rv;
}
