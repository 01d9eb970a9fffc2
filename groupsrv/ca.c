/* ca.c: see ca.h. Certificates are assembled here from a TBSCertificate
 * and a signature made on the token: the CA private key never leaves it. */
#include "ca.h"

#include <openssl/asn1.h>
#include <openssl/asn1t.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "mailaddr.h"
#include "policy.h"
#include "util.h"

/* Cap on certificate/CSR input we parse (PEM of a 16k-bit RSA cert is far below). */
#define CERT_MAX GS_CERT_RECORD_MAX

struct gs_ca {
    X509 *cert;
    EVP_PKEY *pub;       /* the CA public key (from the certificate) */
    hsm_key *key;        /* the CA private key on the token */
    hsm_sig_alg alg;
    bool replicable;     /* its key may be an original under trusted wrap, or a copy */
};

static gs_err ossl_err(gs_err err, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[160] = "";
    if (e != 0)
        ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return gs_err_set(err, "%s%s%s", what, buf[0] ? ": " : "", buf);
}

gs_err gs_hsm_fail(hsm_err he, const char *what, const char *label)
{
    gs_err err = GS_ERR_HSM;
    const char *d = hsm_last_error_detail();
    if (he == HSM_ERR_PIN_INCORRECT || he == HSM_ERR_PIN_LOCKED || he == HSM_ERR_TOKEN_ABSENT ||
        he == HSM_ERR_TOKEN_NOT_FOUND || he == HSM_ERR_NOT_LOGGED_IN || he == HSM_ERR_PIN_SOURCE ||
        he == HSM_ERR_MODULE)
        err = GS_ERR_TOKEN;
    if (he == HSM_ERR_KEY_POLICY)
        err = GS_ERR_POLICY;
    /* Not a failing token: one that keeps no new object (NSS softokn
     * opened read-only reports it only so). The caller's request cannot be
     * met here, as for CKF_WRITE_PROTECTED (exit 1; 400 over REST, never a
     * 503 that clients would retry for ever). */
    if (he == HSM_ERR_WRITE_PROTECTED)
        err = GS_ERR_ARGS;
    return gs_err_set(err, "%s%s%s: %s%s%s%s", what, label ? " " : "", label ? label : "", hsm_strerror(he),
                      d && d[0] ? " (" : "", d && d[0] ? d : "", d && d[0] ? ")" : "");
}

gs_err gs_keyspec_parse(const char *spec, hsm_key_type *type, unsigned *bits)
{
    static const struct {
        const char *name;
        hsm_key_type type;
        unsigned bits;
    } specs[] = {
        {"rsa:2048", HSM_KEYTYPE_RSA, 2048}, {"rsa:3072", HSM_KEYTYPE_RSA, 3072},
        {"rsa:4096", HSM_KEYTYPE_RSA, 4096}, {"ec:p256", HSM_KEYTYPE_EC, 256},
        {"ec:p384", HSM_KEYTYPE_EC, 384},
    };
    for (size_t i = 0; spec && i < GS_ARRAY_LEN(specs); i++) {
        if (strcmp(spec, specs[i].name) == 0) {
            *type = specs[i].type;
            *bits = specs[i].bits;
            return GS_OK;
        }
    }
    return gs_err_set(GS_ERR_ARGS, "unknown key type (expected rsa:2048, rsa:3072, rsa:4096, ec:p256 or ec:p384)");
}

/* ---- certificate helpers --------------------------------------------------- */

gs_err gs_cert_parse(const unsigned char *buf, size_t len, X509 **out)
{
    X509 *x = NULL;
    BIO *bio = NULL;
    *out = NULL;
    if (buf == NULL || len == 0 || len > CERT_MAX)
        return gs_err_set(GS_ERR_CERT, "not a valid X.509 certificate (empty or too large)");
    bio = BIO_new_mem_buf(buf, (int)len);
    if (bio == NULL)
        return GS_ERR_NOMEM;
    /* No pass phrase is given: DER bytes (a member PUT's certificate
     * comes as DER) can hold a PEM block marked encrypted, and OpenSSL's
     * default then asks on the key holder's terminal or standard input. */
    x = PEM_read_bio_X509(bio, NULL, util_pem_no_passphrase, NULL);
    BIO_free(bio);
    if (x == NULL) {
        const unsigned char *p = buf;
        x = d2i_X509(NULL, &p, (long)len);
        if (x != NULL && p != buf + len) {
            X509_free(x);
            x = NULL;
        }
    }
    ERR_clear_error();
    if (x == NULL)
        return gs_err_set(GS_ERR_CERT, "not a valid X.509 certificate");
    *out = x;
    return GS_OK;
}

gs_err gs_cert_to_pem(X509 *cert, char **pem)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *data = NULL;
    long n;
    gs_err err = GS_ERR_NOMEM;
    *pem = NULL;
    if (bio == NULL)
        return err;
    if (PEM_write_bio_X509(bio, cert) != 1) {
        err = ossl_err(GS_ERR_CRYPTO, "PEM_write_bio_X509");
        goto out;
    }
    n = BIO_get_mem_data(bio, &data);
    if (n <= 0)
        goto out;
    *pem = malloc((size_t)n + 1);
    if (*pem == NULL)
        goto out;
    memcpy(*pem, data, (size_t)n);
    (*pem)[n] = '\0';
    err = GS_OK;
out:
    BIO_free(bio);
    return err;
}

gs_err gs_cert_email(X509 *cert, char *buf, size_t bufsize)
{
    GENERAL_NAMES *gens = NULL;
    gs_err err = gs_err_set(GS_ERR_CERT, "certificate has no email address (SAN rfc822Name or emailAddress)");
    const unsigned char *data = NULL;
    int len = 0;

    if (bufsize)
        buf[0] = '\0';
    gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens); i++) {
        GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
        if (gn->type == GEN_EMAIL) {
            data = ASN1_STRING_get0_data(gn->d.rfc822Name);
            len = ASN1_STRING_length(gn->d.rfc822Name);
            break;
        }
    }
    if (data == NULL) {
        X509_NAME *subj = X509_get_subject_name(cert);
        int idx = X509_NAME_get_index_by_NID(subj, NID_pkcs9_emailAddress, -1);
        if (idx >= 0) {
            ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx));
            data = ASN1_STRING_get0_data(s);
            len = ASN1_STRING_length(s);
        }
    }
    if (data != NULL) {
        if (len <= 0 || (size_t)len >= bufsize || memchr(data, '\0', (size_t)len) != NULL) {
            err = gs_err_set(GS_ERR_CERT, "certificate email address is malformed or too long");
        } else {
            memcpy(buf, data, (size_t)len);
            buf[len] = '\0';
            /* compared with a group's address as stored, which an older
             * version may have taken under a looser rule */
            if (mailaddr_names_record(buf)) {
                err = GS_OK;
            } else {
                buf[0] = '\0';
                err = gs_err_set(GS_ERR_CERT, "certificate email address is malformed: %s", MAILADDR_RECORD_RULE);
            }
        }
    }
    GENERAL_NAMES_free(gens);
    ERR_clear_error();
    return err;
}

gs_err gs_key_check_strength(EVP_PKEY *pk, const char *what)
{
    if (pk == NULL)
        return gs_err_set(GS_ERR_CERT, "%s has no usable public key", what);
    int type = EVP_PKEY_get_base_id(pk);
    if (type == EVP_PKEY_RSA && EVP_PKEY_get_bits(pk) < 2048)
        return gs_err_set(GS_ERR_CERT, "%s key is RSA below 2048 bits", what);
    if (type == EVP_PKEY_EC && EVP_PKEY_get_bits(pk) < 256)
        return gs_err_set(GS_ERR_CERT, "%s key is EC below P-256", what);
    /* A curve written out as explicit parameters rather than named
     * (RFC 5480 2.1.1 forbids it in certificates): any curve its maker
     * chose, with a P-256-sized order and whatever generator, where the
     * rule is a known curve of at least P-256. OpenSSL gives such a key
     * the name of the curve whose numbers it repeats, and says it was
     * decoded from explicit parameters. */
    char curve[64];
    int explicit = 0;
    if (type == EVP_PKEY_EC &&
        (EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, curve, sizeof(curve), NULL) != 1 ||
         (EVP_PKEY_get_int_param(pk, OSSL_PKEY_PARAM_EC_DECODED_FROM_EXPLICIT_PARAMS, &explicit) == 1 &&
          explicit != 0))) {
        ERR_clear_error();
        return gs_err_set(GS_ERR_CERT, "%s key is EC on a curve given by explicit parameters, not a named curve",
                          what);
    }
    return GS_OK;
}

gs_err gs_cert_check_valid_now(X509 *cert, const char *what)
{
    char why[96];

    if (util_cert_valid_now(cert, why, sizeof(why)) != 0)
        return gs_err_set(GS_ERR_CERT, "%s %s", what, why);
    return GS_OK;
}

bool gs_cert_matches_spki(X509 *cert, const unsigned char *spki, size_t spki_len)
{
    const unsigned char *p = spki;
    EVP_PKEY *k;
    bool ok = false;
    if (cert == NULL || spki == NULL || spki_len == 0 || spki_len > CERT_MAX)
        return false;
    k = d2i_PUBKEY(NULL, &p, (long)spki_len);
    if (k != NULL && X509_get0_pubkey(cert) != NULL)
        ok = EVP_PKEY_eq(k, X509_get0_pubkey(cert)) == 1;
    EVP_PKEY_free(k);
    ERR_clear_error();
    return ok;
}

void gs_cert_fingerprint(X509 *cert, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    out[0] = '\0';
    if (X509_digest(cert, EVP_sha256(), md, &n) == 1 && n == 32)
        util_hex(md, 32, out);
}

/* A certificate's shape (RFC 5280 4.1) with its SubjectPublicKeyInfo
 * read as an algorithm and a bit string, not decoded into a key:
 * OpenSSL 3.0's d2i_X509 decodes every certificate's public key through a
 * new decoder context (about 0.25 ms a certificate, nearly all of a
 * 100,000-member `member list`), and a key that does not decode does not
 * fail that parse either. */
/* clang-format off */
typedef struct {
    X509_ALGOR *algor;
    ASN1_BIT_STRING *key;
} fp_spki;
ASN1_SEQUENCE(fp_spki) = {
    ASN1_SIMPLE(fp_spki, algor, X509_ALGOR),
    ASN1_SIMPLE(fp_spki, key, ASN1_BIT_STRING)
} static_ASN1_SEQUENCE_END(fp_spki)

typedef struct {
    ASN1_INTEGER *version;
    ASN1_INTEGER *serial;
    X509_ALGOR *signature;
    X509_NAME *issuer;
    X509_VAL *validity;
    X509_NAME *subject;
    fp_spki *spki;
    ASN1_BIT_STRING *issuer_uid;
    ASN1_BIT_STRING *subject_uid;
    STACK_OF(X509_EXTENSION) *extensions;
} fp_tbs;
ASN1_SEQUENCE(fp_tbs) = {
    ASN1_EXP_OPT(fp_tbs, version, ASN1_INTEGER, 0),
    ASN1_SIMPLE(fp_tbs, serial, ASN1_INTEGER),
    ASN1_SIMPLE(fp_tbs, signature, X509_ALGOR),
    ASN1_SIMPLE(fp_tbs, issuer, X509_NAME),
    ASN1_SIMPLE(fp_tbs, validity, X509_VAL),
    ASN1_SIMPLE(fp_tbs, subject, X509_NAME),
    ASN1_SIMPLE(fp_tbs, spki, fp_spki),
    ASN1_IMP_OPT(fp_tbs, issuer_uid, ASN1_BIT_STRING, 1),
    ASN1_IMP_OPT(fp_tbs, subject_uid, ASN1_BIT_STRING, 2),
    ASN1_EXP_SEQUENCE_OF_OPT(fp_tbs, extensions, X509_EXTENSION, 3)
} static_ASN1_SEQUENCE_END(fp_tbs)

typedef struct {
    fp_tbs *tbs;
    X509_ALGOR *sig_alg;
    ASN1_BIT_STRING *signature;
} fp_cert;
ASN1_SEQUENCE(fp_cert) = {
    ASN1_SIMPLE(fp_cert, tbs, fp_tbs),
    ASN1_SIMPLE(fp_cert, sig_alg, X509_ALGOR),
    ASN1_SIMPLE(fp_cert, signature, ASN1_BIT_STRING)
} static_ASN1_SEQUENCE_END(fp_cert)
/* clang-format on */

/* The fast path of gs_cert_record_fingerprint: one PEM CERTIFICATE block
 * without headers whose DER reads as a certificate and is its own
 * re-encoding (what X509_digest hashes). 0 on success; -1 when the full
 * parse has to decide. */
static int record_fingerprint_fast(const char *text, size_t len, char out[65])
{
    BIO *bio = BIO_new_mem_buf(text, (int)len);
    char *name = NULL, *header = NULL;
    unsigned char *der = NULL, *re = NULL, md[EVP_MAX_MD_SIZE];
    const unsigned char *p;
    long dlen = 0;
    int relen, rc = -1;
    unsigned int mdlen = 0;
    ASN1_VALUE *c = NULL;

    if (bio == NULL || PEM_read_bio(bio, &name, &header, &der, &dlen) != 1)
        goto out;
    if (strcmp(name, PEM_STRING_X509) != 0 || header[0] != '\0' || dlen <= 0)
        goto out;
    p = der;
    c = ASN1_item_d2i(NULL, &p, dlen, ASN1_ITEM_rptr(fp_cert));
    if (c == NULL || p != der + dlen)
        goto out;
    relen = ASN1_item_i2d(c, &re, ASN1_ITEM_rptr(fp_cert));
    if (relen != dlen || memcmp(re, der, (size_t)dlen) != 0)
        goto out;
    if (EVP_Digest(der, (size_t)dlen, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        goto out;
    util_hex(md, 32, out);
    rc = 0;
out:
    ASN1_item_free(c, ASN1_ITEM_rptr(fp_cert));
    OPENSSL_free(re);
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(der);
    BIO_free(bio);
    ERR_clear_error();
    return rc;
}

gs_err gs_cert_record_fingerprint(const char *text, char out[65])
{
    size_t len = text != NULL ? strlen(text) : 0;
    X509 *x = NULL;
    gs_err err;

    out[0] = '\0';
    if (len == 0 || len > CERT_MAX)
        return gs_err_set(GS_ERR_CERT, "not a valid X.509 certificate (empty or too large)");
    if (record_fingerprint_fast(text, len, out) == 0)
        return GS_OK;
    err = gs_cert_parse((const unsigned char *)text, len, &x);
    if (err == GS_OK) {
        gs_cert_fingerprint(x, out);
        if (out[0] == '\0')
            err = gs_err_set(GS_ERR_CRYPTO, "could not hash the certificate");
    }
    X509_free(x);
    return err;
}

bool gs_cert_is_membership_for(X509 *cert, const char *group)
{
    GENERAL_NAMES *gens;
    char want[GS_NAME_MAX + sizeof(GS_MEMBERSHIP_URI_PREFIX)];
    bool ok = false;
    if (cert == NULL || !gs_valid_group_name(group))
        return false;
    (void)snprintf(want, sizeof(want), "%s%s", GS_MEMBERSHIP_URI_PREFIX, group);
    if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0 || X509_cmp_current_time(X509_get0_notAfter(cert)) < 0)
        return false;
    gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens); i++) {
        GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
        if (gn->type == GEN_URI && (size_t)ASN1_STRING_length(gn->d.uniformResourceIdentifier) == strlen(want) &&
            memcmp(ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier), want, strlen(want)) == 0)
            ok = true;
    }
    GENERAL_NAMES_free(gens);
    ERR_clear_error();
    return ok;
}

/* ---- building and signing ----------------------------------------------------- */

static gs_err spki_to_pkey(const unsigned char *spki, size_t len, EVP_PKEY **out)
{
    const unsigned char *p = spki;
    *out = d2i_PUBKEY(NULL, &p, (long)len);
    if (*out == NULL)
        return ossl_err(GS_ERR_CRYPTO, "token public key unreadable");
    return GS_OK;
}

static gs_err add_name(X509_NAME *n, int nid, const char *v)
{
    if (v == NULL)
        return GS_OK;
    if (X509_NAME_add_entry_by_NID(n, nid, MBSTRING_UTF8, (const unsigned char *)v, -1, -1, 0) != 1)
        return ossl_err(GS_ERR_ARGS, "subject name component invalid or too long");
    return GS_OK;
}

static gs_err add_gen(GENERAL_NAMES *gens, int type, const char *v)
{
    GENERAL_NAME *gn = NULL;
    ASN1_IA5STRING *ia5 = NULL;
    if (v == NULL)
        return GS_OK;
    gn = GENERAL_NAME_new();
    ia5 = ASN1_IA5STRING_new();
    if (gn == NULL || ia5 == NULL || ASN1_STRING_set(ia5, v, -1) != 1)
        goto fail;
    GENERAL_NAME_set0_value(gn, type, ia5);
    ia5 = NULL;
    if (sk_GENERAL_NAME_push(gens, gn) <= 0)
        goto fail;
    return GS_OK;
fail:
    ASN1_IA5STRING_free(ia5);
    GENERAL_NAME_free(gn);
    return GS_ERR_NOMEM;
}

static gs_err add_conf_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509_EXTENSION *ext;
    int ok;
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (ext == NULL)
        return ossl_err(GS_ERR_CRYPTO, "certificate extension");
    ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1 ? GS_OK : ossl_err(GS_ERR_CRYPTO, "X509_add_ext");
}

static gs_err add_key_usage(X509 *x, unsigned ku, bool ca)
{
    ASN1_BIT_STRING *bs = ASN1_BIT_STRING_new();
    int ok = bs != NULL;
    if (ok && (ku & GS_KU_DIGITAL_SIGNATURE))
        ok = ASN1_BIT_STRING_set_bit(bs, 0, 1);
    if (ok && (ku & GS_KU_KEY_ENCIPHERMENT))
        ok = ASN1_BIT_STRING_set_bit(bs, 2, 1);
    if (ok && (ku & GS_KU_KEY_AGREEMENT))
        ok = ASN1_BIT_STRING_set_bit(bs, 4, 1);
    if (ok && ca)
        ok = ASN1_BIT_STRING_set_bit(bs, 5, 1) && ASN1_BIT_STRING_set_bit(bs, 6, 1);
    if (ok)
        ok = X509_add1_ext_i2d(x, NID_key_usage, bs, 1, X509V3_ADD_DEFAULT) == 1;
    ASN1_BIT_STRING_free(bs);
    return ok ? GS_OK : ossl_err(GS_ERR_CRYPTO, "keyUsage");
}

static gs_err add_eku(X509 *x, unsigned eku)
{
    EXTENDED_KEY_USAGE *e = sk_ASN1_OBJECT_new_null();
    int ok = e != NULL;
    if (ok && (eku & GS_EKU_SERVER_AUTH))
        ok = sk_ASN1_OBJECT_push(e, OBJ_nid2obj(NID_server_auth)) > 0;
    if (ok && (eku & GS_EKU_CLIENT_AUTH))
        ok = sk_ASN1_OBJECT_push(e, OBJ_nid2obj(NID_client_auth)) > 0;
    if (ok && (eku & GS_EKU_EMAIL_PROTECTION))
        ok = sk_ASN1_OBJECT_push(e, OBJ_nid2obj(NID_email_protect)) > 0;
    if (ok)
        ok = X509_add1_ext_i2d(x, NID_ext_key_usage, e, 0, X509V3_ADD_DEFAULT) == 1;
    sk_ASN1_OBJECT_free(e); /* the objects are static (OBJ_nid2obj) */
    return ok ? GS_OK : ossl_err(GS_ERR_CRYPTO, "extendedKeyUsage");
}

static gs_err add_basic_constraints(X509 *x, bool ca)
{
    BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new();
    int ok = bc != NULL;
    if (ok) {
        bc->ca = ca ? 0xff : 0;
        ok = X509_add1_ext_i2d(x, NID_basic_constraints, bc, 1, X509V3_ADD_DEFAULT) == 1;
    }
    BASIC_CONSTRAINTS_free(bc);
    return ok ? GS_OK : ossl_err(GS_ERR_CRYPTO, "basicConstraints");
}

static gs_err set_serial(X509 *x)
{
    BIGNUM *bn = BN_new();
    gs_err err = GS_OK;
    /* 127 random bits: positive, and well within the 20-octet limit. */
    if (bn == NULL || BN_rand(bn, 127, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) != 1 ||
        BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL)
        err = ossl_err(GS_ERR_CRYPTO, "serial number");
    BN_free(bn);
    return err;
}

static hsm_sig_alg sig_alg_for(EVP_PKEY *pub)
{
    return EVP_PKEY_get_base_id(pub) == EVP_PKEY_EC ? HSM_SIG_ECDSA_SHA256 : HSM_SIG_RSA_PKCS1_SHA256;
}

/* Signs x on the token: the signature algorithm is written into the TBS,
 * the TBS DER is signed with hsm_sign, and Certificate ::= SEQUENCE {
 * tbsCertificate, signatureAlgorithm, signatureValue BIT STRING } is
 * assembled from DER pieces with OpenSSL's ASN.1 encoders, re-parsed, and
 * verified with verify_key. */
static gs_err sign_on_token(hsm_ctx *hsm, hsm_key *key, hsm_sig_alg alg, EVP_PKEY *verify_key, X509 *x, X509 **out)
{
    unsigned char *tbs = NULL, *algder = NULL, *sig = NULL, *der = NULL, *p;
    size_t siglen = 0;
    int tbslen, alglen, bslen, content, total;
    X509_ALGOR *algor;
    X509 *signed_cert = NULL;
    const unsigned char *cp;
    gs_err err = GS_ERR_CRYPTO;
    hsm_err he;

    *out = NULL;
    /* OpenSSL only exposes the TBS signature AlgorithmIdentifier as const;
     * it is a heap object owned by x, and setting it before encoding the TBS
     * is exactly what X509_sign does internally. */
    algor = (X509_ALGOR *)X509_get0_tbs_sigalg(x);
    if (alg == HSM_SIG_ECDSA_SHA256) {
        if (X509_ALGOR_set0(algor, OBJ_nid2obj(NID_ecdsa_with_SHA256), V_ASN1_UNDEF, NULL) != 1)
            goto ossl;
    } else if (X509_ALGOR_set0(algor, OBJ_nid2obj(NID_sha256WithRSAEncryption), V_ASN1_NULL, NULL) != 1) {
        goto ossl;
    }
    tbslen = i2d_re_X509_tbs(x, &tbs);
    alglen = i2d_X509_ALGOR(algor, &algder);
    if (tbslen <= 0 || alglen <= 0)
        goto ossl;
    he = hsm_sign(hsm, key, alg, tbs, (size_t)tbslen, &sig, &siglen);
    if (he != HSM_OK) {
        err = gs_hsm_fail(he, "signing with the CA key", NULL);
        goto out;
    }
    if (siglen == 0 || siglen > 4096) {
        err = gs_err_set(GS_ERR_HSM, "token returned a signature of %zu bytes", siglen);
        goto out;
    }
    content = (int)siglen + 1; /* leading "unused bits" octet */
    bslen = ASN1_object_size(0, content, V_ASN1_BIT_STRING);
    total = tbslen + alglen + bslen;
    der = malloc((size_t)ASN1_object_size(1, total, V_ASN1_SEQUENCE));
    if (der == NULL) {
        err = GS_ERR_NOMEM;
        goto out;
    }
    p = der;
    ASN1_put_object(&p, 1, total, V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL);
    memcpy(p, tbs, (size_t)tbslen);
    p += tbslen;
    memcpy(p, algder, (size_t)alglen);
    p += alglen;
    ASN1_put_object(&p, 0, content, V_ASN1_BIT_STRING, V_ASN1_UNIVERSAL);
    *p++ = 0;
    memcpy(p, sig, siglen);
    p += siglen;
    cp = der;
    signed_cert = d2i_X509(NULL, &cp, (long)(p - der));
    if (signed_cert == NULL || cp != p)
        goto ossl;
    /* Self-check: a token that signed with another key, or an encoding
     * slip, must never produce a certificate. */
    if (X509_verify(signed_cert, verify_key) != 1) {
        err = ossl_err(GS_ERR_CRYPTO, "issued certificate does not verify with the CA key");
        goto out;
    }
    *out = signed_cert;
    signed_cert = NULL;
    err = GS_OK;
    goto out;
ossl:
    err = ossl_err(GS_ERR_CRYPTO, "assembling certificate");
out:
    X509_free(signed_cert);
    OPENSSL_free(tbs);
    OPENSSL_free(algder);
    free(sig);
    free(der);
    return err;
}

/* Builds the unsigned certificate body shared by the CA and leaf certs. */
static gs_err build_cert(X509 *issuer, const gs_cert_spec *spec, bool ca, X509 **out)
{
    X509 *x = NULL;
    X509_NAME *name = NULL;
    GENERAL_NAMES *gens = NULL;
    bool subject_empty;
    gs_err err = GS_ERR_NOMEM;

    *out = NULL;
    if (spec->pubkey == NULL || spec->lifetime <= 0 || spec->backdate < 0)
        return gs_err_set(GS_ERR_ARGS, "certificate spec lacks a key or lifetime");
    subject_empty = !spec->subject_cn && !spec->subject_o && !spec->subject_ou;
    if (subject_empty && !spec->san_email && !spec->san_uri && !spec->san_dns)
        return gs_err_set(GS_ERR_ARGS, "certificate would have neither subject nor SAN");
    x = X509_new();
    name = X509_NAME_new();
    if (x == NULL || name == NULL)
        goto out;
    if (X509_set_version(x, X509_VERSION_3) != 1)
        goto ossl;
    err = set_serial(x);
    if (err)
        goto out;
    err = add_name(name, NID_organizationName, spec->subject_o);
    if (!err)
        err = add_name(name, NID_organizationalUnitName, spec->subject_ou);
    if (!err)
        err = add_name(name, NID_commonName, spec->subject_cn);
    if (err)
        goto out;
    if (X509_set_subject_name(x, name) != 1 ||
        X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(x), -spec->backdate) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), spec->lifetime) == NULL || X509_set_pubkey(x, spec->pubkey) != 1)
        goto ossl;
    /* Never past the issuer's own notAfter: the chain would fail from
     * then on while the certificate claimed to be good. */
    if (issuer != NULL && ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(issuer)) > 0 &&
        X509_set1_notAfter(x, X509_get0_notAfter(issuer)) != 1)
        goto ossl;
    err = add_basic_constraints(x, ca);
    if (!err && (spec->key_usage || ca))
        err = add_key_usage(x, spec->key_usage, ca);
    if (!err && spec->ext_key_usage)
        err = add_eku(x, spec->ext_key_usage);
    if (!err)
        err = add_conf_ext(x, issuer ? issuer : x, NID_subject_key_identifier, "hash");
    if (!err && issuer)
        err = add_conf_ext(x, issuer, NID_authority_key_identifier, "keyid:always");
    if (err)
        goto out;
    if (spec->san_email || spec->san_uri || spec->san_dns) {
        err = GS_ERR_NOMEM;
        gens = sk_GENERAL_NAME_new_null();
        if (gens == NULL)
            goto out;
        err = add_gen(gens, GEN_EMAIL, spec->san_email);
        if (!err)
            err = add_gen(gens, GEN_URI, spec->san_uri);
        if (!err)
            err = add_gen(gens, GEN_DNS, spec->san_dns);
        if (err)
            goto out;
        /* RFC 5280 4.2.1.6: critical when the subject is empty. */
        if (X509_add1_ext_i2d(x, NID_subject_alt_name, gens, subject_empty ? 1 : 0, X509V3_ADD_DEFAULT) != 1)
            goto ossl;
    }
    *out = x;
    x = NULL;
    err = GS_OK;
    goto out;
ossl:
    err = ossl_err(GS_ERR_CRYPTO, "building certificate");
out:
    GENERAL_NAMES_free(gens);
    X509_NAME_free(name);
    X509_free(x);
    return err;
}

gs_err gs_ca_issue(const gs_ca *ca, hsm_ctx *hsm, const gs_cert_spec *spec, X509 **out)
{
    X509 *x = NULL;
    gs_err err;
    *out = NULL;
    if (ca == NULL || hsm == NULL || spec == NULL)
        return gs_err_set(GS_ERR_ARGS, "no CA or spec");
    err = build_cert(ca->cert, spec, false, &x);
    if (err == GS_OK)
        err = sign_on_token(hsm, ca->key, ca->alg, ca->pub, x, out);
    X509_free(x);
    return err;
}

gs_err gs_ca_issue_membership(const gs_ca *ca, hsm_ctx *hsm, X509_REQ *csr, const char *group, long lifetime,
                              X509 **out)
{
    EVP_PKEY *pk;

    *out = NULL;
    if (csr == NULL)
        return gs_err_set(GS_ERR_ARGS, "membership certificate needs a CSR, a group and a lifetime");
    pk = X509_REQ_get0_pubkey(csr);
    if (pk == NULL || X509_REQ_verify(csr, pk) != 1) {
        ERR_clear_error();
        return gs_err_set(GS_ERR_CERT, "CSR signature does not verify");
    }
    return gs_ca_issue_membership_key(ca, hsm, pk, group, lifetime, out);
}

gs_err gs_ca_issue_membership_key(const gs_ca *ca, hsm_ctx *hsm, EVP_PKEY *pk, const char *group, long lifetime,
                                  X509 **out)
{
    gs_cert_spec spec;
    char uri[GS_NAME_MAX + sizeof(GS_MEMBERSHIP_URI_PREFIX)];
    int type;

    *out = NULL;
    if (pk == NULL || !gs_valid_group_name(group) || lifetime <= 0)
        return gs_err_set(GS_ERR_ARGS, "membership certificate needs a key, a group and a lifetime");
    type = EVP_PKEY_get_base_id(pk);
    if (type != EVP_PKEY_RSA && type != EVP_PKEY_EC)
        return gs_err_set(GS_ERR_CERT, "CSR key must be RSA (>= 2048 bits) or EC (>= P-256)");
    gs_err strength = gs_key_check_strength(pk, "CSR");
    if (strength != GS_OK)
        return strength;
    (void)snprintf(uri, sizeof(uri), "%s%s", GS_MEMBERSHIP_URI_PREFIX, group);
    memset(&spec, 0, sizeof(spec));
    spec.pubkey = pk;
    spec.subject_o = GS_MEMBERSHIP_O;
    spec.subject_ou = group;
    spec.san_uri = uri;
    spec.key_usage = GS_KU_DIGITAL_SIGNATURE | (type == EVP_PKEY_RSA ? GS_KU_KEY_ENCIPHERMENT : GS_KU_KEY_AGREEMENT);
    spec.ext_key_usage = GS_EKU_CLIENT_AUTH | GS_EKU_EMAIL_PROTECTION;
    spec.lifetime = lifetime;
    spec.backdate = 60;
    return gs_ca_issue(ca, hsm, &spec, out);
}

/* ---- CA lifecycle ---------------------------------------------------------------- */

void gs_ca_free(gs_ca *ca)
{
    if (ca == NULL)
        return;
    X509_free(ca->cert);
    EVP_PKEY_free(ca->pub);
    hsm_key_free(ca->key);
    free(ca);
}

X509 *gs_ca_cert(const gs_ca *ca) { return ca ? ca->cert : NULL; }
hsm_key *gs_ca_key(const gs_ca *ca) { return ca ? ca->key : NULL; }

gs_err gs_ca_check_key(const gs_ca *ca, hsm_ctx *hsm)
{
    hsm_key_info info;
    const char *why = NULL, *note = NULL;
    hsm_err he;
    if (ca == NULL || hsm == NULL)
        return gs_err_set(GS_ERR_ARGS, "no CA");
    he = hsm_key_get_info(hsm, ca->key, &info);
    if (he != HSM_OK)
        return gs_hsm_fail(he, "CA key attributes", NULL);
    why = gs_key_custody_problem(&info, ca->replicable, &note);
    if (why)
        return gs_err_set(GS_ERR_POLICY, "CA key %s is extractable or not sensitive (%s): refusing to use it",
                          info.label[0] ? info.label : "gs:ca", why);
    return GS_OK;
}

gs_err gs_ca_load(gs_store *st, hsm_ctx *hsm, gs_ca **out)
{
    gs_store_ca *row = NULL;
    gs_ca *ca = NULL;
    unsigned char *spki = NULL;
    size_t spki_len = 0;
    gs_err err;
    hsm_err he;

    *out = NULL;
    err = gs_store_ca_get(st, &row);
    if (err)
        return err;
    err = GS_ERR_NOMEM;
    ca = calloc(1, sizeof(*ca));
    if (ca == NULL)
        goto out;
    ca->replicable = row->replicable;
    err = gs_cert_parse((const unsigned char *)row->cert_pem, strlen(row->cert_pem), &ca->cert);
    if (err)
        goto out;
    he = hsm_key_find(hsm, row->label, HSM_CLASS_PRIVATE, &ca->key);
    if (he != HSM_OK) {
        err = gs_hsm_fail(he, "CA key", NULL);
        goto out;
    }
    he = hsm_key_export_public(hsm, ca->key, &spki, &spki_len);
    if (he != HSM_OK) {
        err = gs_hsm_fail(he, "CA public key", NULL);
        goto out;
    }
    if (!gs_cert_matches_spki(ca->cert, spki, spki_len)) {
        err = gs_err_set(GS_ERR_CERT, "CA certificate does not match the token key %s", row->label);
        goto out;
    }
    /* Every issued certificate is verified with the token's own public
     * key (equal to the certificate's, checked just above). */
    err = spki_to_pkey(spki, spki_len, &ca->pub);
    if (err)
        goto out;
    ca->alg = sig_alg_for(ca->pub);
    *out = ca;
    ca = NULL;
    err = GS_OK;
out:
    free(spki);
    gs_ca_free(ca);
    gs_store_ca_free(row);
    return err;
}

gs_err gs_ca_renew(const gs_ca *ca, hsm_ctx *hsm, gs_store *st, unsigned days, X509 **out)
{
    X509 *unsigned_cert = NULL, *cert = NULL;
    char *pem = NULL;
    gs_cert_spec spec;
    gs_err err;

    *out = NULL;
    if (ca == NULL || hsm == NULL)
        return gs_err_set(GS_ERR_ARGS, "no CA");
    if (days == 0)
        return gs_err_set(GS_ERR_ARGS, "the CA certificate needs a lifetime");
    memset(&spec, 0, sizeof(spec));
    spec.pubkey = ca->pub;
    spec.subject_cn = "-"; /* replaced by the old certificate's subject below */
    spec.lifetime = (long)days * 86400L;
    spec.backdate = 300;
    if ((err = build_cert(NULL, &spec, true, &unsigned_cert)) != GS_OK)
        goto out;
    /* The same subject (and so issuer) and key, so the same key
     * identifier: what the CA issued before verifies against either. */
    if (X509_set_subject_name(unsigned_cert, X509_get_subject_name(ca->cert)) != 1 ||
        X509_set_issuer_name(unsigned_cert, X509_get_subject_name(ca->cert)) != 1) {
        err = ossl_err(GS_ERR_CRYPTO, "building the CA certificate");
        goto out;
    }
    if ((err = sign_on_token(hsm, ca->key, ca->alg, ca->pub, unsigned_cert, &cert)) != GS_OK ||
        (err = gs_cert_to_pem(cert, &pem)) != GS_OK || (err = gs_store_ca_set_cert(st, pem)) != GS_OK)
        goto out;
    log_info("CA certificate renewed days=%u", days);
    *out = cert;
    cert = NULL;
out:
    free(pem);
    X509_free(unsigned_cert);
    X509_free(cert);
    return err;
}

gs_err gs_ca_init(gs_store *st, hsm_ctx *hsm, const char *label, const char *keyspec, const char *subject_cn,
                  unsigned days, gs_ca **out)
{
    return gs_ca_init_ex(st, hsm, label, keyspec, NULL, subject_cn, days, false, out);
}

/* The CA key pair: generated on the token with every protection it stores
 * (*made true; replicable: extractable only under trusted wrap), or the
 * existing private key named by use_key (adopted, never destroyed by us),
 * checked as a CA key either way. *missing gets its weakenings. */
static gs_err ca_key(hsm_ctx *hsm, const char *label, const char *keyspec, const char *use_key, bool replicable,
                     hsm_key **pub, hsm_key **priv, bool *made, unsigned *missing)
{
    hsm_keygen_spec ks;
    hsm_keygen_result res;
    hsm_key_info info;
    hsm_caps caps;
    gs_key_expect e;
    hsm_key_type type;
    const char *problem;
    unsigned bits;
    gs_err err;
    hsm_err he;

    *pub = *priv = NULL;
    *made = false;
    *missing = 0;
    memset(&e, 0, sizeof(e));
    e.kind = GS_KIND_CA;
    if (use_key != NULL) {
        char q[160];
        (void)log_quote(q, sizeof(q), use_key);
        if (strncmp(use_key, "pkcs11:", 7) != 0)
            return gs_err_set(GS_ERR_ARGS, "--use-key needs a pkcs11: URI of a private key");
        (void)hsm_caps_get(hsm, &caps);
        he = hsm_key_find(hsm, use_key, HSM_CLASS_PRIVATE, priv);
        if (he == HSM_OK)
            he = hsm_key_get_info(hsm, *priv, &info);
        if (he != HSM_OK)
            return gs_hsm_fail(he, "--use-key", NULL);
        if (info.type != HSM_KEYTYPE_RSA && info.type != HSM_KEYTYPE_EC)
            return gs_err_set(GS_ERR_POLICY, "--use-key %s: an RSA or EC key is needed", q);
        e.missing = gs_policy_caps_missing(&caps);
        if ((problem = gs_key_check(&info, &e, NULL)) != NULL)
            return gs_err_set(GS_ERR_POLICY, "--use-key %s: %s: a CA key must be made on the token, sensitive, "
                              "never extractable, sign only%s%s", q, problem,
                              strstr(problem, "ALLOWED") ? " (and with CKA_ALLOWED_MECHANISMS: this token stores it)"
                                                         : "",
                              gs_adopt_custody_hint(problem));
        if (info.n_allowed_mechanisms == 0)
            *missing = HSM_PROT_ALLOWED_MECHANISMS;
        return GS_OK;
    }
    err = gs_keyspec_parse(keyspec ? keyspec : "rsa:3072", &type, &bits);
    if (err)
        return err;
    ks = (hsm_keygen_spec){.label = label, .type = type, .bits = bits, .usage = HSM_USE_SIGN, .replicable = replicable};
    he = hsm_generate_keypair_best(hsm, &ks, &res, pub, priv);
    if (he != HSM_OK)
        return gs_hsm_fail(he, "generating the CA key", NULL);
    *made = true;
    e.missing = res.missing;
    e.replicable = replicable;
    he = hsm_key_get_info(hsm, *priv, &info);
    if (he != HSM_OK)
        return gs_hsm_fail(he, "reading the CA key's attributes", NULL);
    if ((problem = gs_key_check(&info, &e, NULL)) != NULL)
        return gs_err_set(GS_ERR_POLICY, "new CA key %s: %s", label, problem);
    *missing = res.missing;
    if (res.missing != 0)
        log_warn("CA key made without CKA_ALLOWED_MECHANISMS (an accepted weakening, recorded) why=\"%s\"", res.why);
    return GS_OK;
}

gs_err gs_ca_init2(gs_store *st, hsm_ctx *hsm, const char *label, const char *keyspec, const char *use_key,
                   const char *subject_cn, unsigned days, gs_ca **out)
{
    return gs_ca_init_ex(st, hsm, label, keyspec, use_key, subject_cn, days, false, out);
}

gs_err gs_ca_init_ex(gs_store *st, hsm_ctx *hsm, const char *label, const char *keyspec, const char *use_key,
                     const char *subject_cn, unsigned days, bool replicable, gs_ca **out)
{
    gs_store_ca *existing = NULL;
    hsm_key *probe = NULL, *pub = NULL, *priv = NULL;
    unsigned char *spki = NULL;
    size_t spki_len = 0;
    EVP_PKEY *pk = NULL;
    X509 *unsigned_cert = NULL, *cert = NULL;
    char *pem = NULL, weak[64];
    const char *ref = use_key != NULL ? use_key : label;
    gs_ca *ca = NULL;
    gs_cert_spec spec;
    bool made = false;
    unsigned missing = 0;
    gs_err err;
    hsm_err he;

    if (out)
        *out = NULL;
    if (label == NULL || strlen(label) > GS_LABEL_MAX || subject_cn == NULL || days == 0)
        return gs_err_set(GS_ERR_ARGS, "CA needs a label, a subject and a lifetime");
    if (use_key != NULL && strlen(use_key) > GS_LABEL_MAX)
        return gs_err_set(GS_ERR_ARGS, "--use-key URI longer than %d bytes", GS_LABEL_MAX);
    if (use_key == NULL) {
        hsm_key_type type;
        unsigned bits;
        err = gs_keyspec_parse(keyspec ? keyspec : "rsa:3072", &type, &bits);
        if (err)
            return err;
        if (replicable && type != HSM_KEYTYPE_RSA)
            return gs_err_set(GS_ERR_ARGS, "--replicable needs an RSA CA key");
    } else if (replicable) {
        /* An adopted key was made by another tool, never extractable. */
        return gs_err_set(GS_ERR_ARGS, "--replicable makes the CA key on this token: not with --use-key");
    }
    err = gs_store_ca_get(st, &existing);
    gs_store_ca_free(existing);
    if (err == GS_OK)
        return gs_err_set(GS_ERR_EXISTS, "a CA is already initialised in this database");
    if (err != GS_ERR_NOT_FOUND)
        return err;
    if (use_key == NULL) {
        he = hsm_key_find(hsm, label, 0, &probe);
        hsm_key_free(probe);
        if (he == HSM_OK || he == HSM_ERR_KEY_AMBIGUOUS)
            return gs_err_set(GS_ERR_EXISTS, "token already has an object labelled %s", label);
        if (he != HSM_ERR_KEY_NOT_FOUND)
            return gs_hsm_fail(he, "token", NULL);
    }
    if (replicable) {
        hsm_caps caps;
        char lacks[384];
        (void)hsm_caps_get(hsm, &caps);
        if (!hsm_caps_trusted_wrap(&caps, lacks, sizeof(lacks)))
            return gs_err_set(GS_ERR_POLICY, "--replicable: this token lacks trusted wrap (missing: %s), so the key "
                              "ceremony could never copy the CA key; initialise the CA without --replicable",
                              lacks);
    }
    err = ca_key(hsm, label, keyspec, use_key, replicable, &pub, &priv, &made, &missing);
    if (err)
        goto out;
    he = hsm_key_export_public(hsm, priv, &spki, &spki_len);
    if (he != HSM_OK) {
        err = gs_hsm_fail(he, "reading the CA public key", NULL);
        goto out;
    }
    err = spki_to_pkey(spki, spki_len, &pk);
    if (err)
        goto out;
    memset(&spec, 0, sizeof(spec));
    spec.pubkey = pk;
    spec.subject_cn = subject_cn;
    spec.lifetime = (long)days * 86400L;
    spec.backdate = 300;
    err = build_cert(NULL, &spec, true, &unsigned_cert);
    if (err)
        goto out;
    err = sign_on_token(hsm, priv, sig_alg_for(pk), pk, unsigned_cert, &cert);
    if (err)
        goto out;
    err = gs_cert_to_pem(cert, &pem);
    if (err)
        goto out;
    gs_weak_format(missing, weak, sizeof(weak));
    {
        /* In a transaction of its own: its COMMIT, if the answer is lost,
         * is looked up by its transaction id (store_pg.c, pg_commit), and
         * one whose outcome stays unknown (the database restarting,
         * crashed: its recovery may keep the row) keeps the key. As a
         * lone INSERT (autocommit) the row was there after the restart,
         * naming a key this destroyed: the CA gone for good, and ca init
         * refused ("a CA is already initialised"). */
        gs_store_keyrec rec = {.weakenings = weak};
        if ((err = gs_store_begin(st)) == GS_OK) {
            if ((err = gs_store_ca_put_as(st, ref, pem, replicable, &rec)) != GS_OK)
                gs_store_rollback(st);
            else
                err = gs_store_commit(st);
        }
        if (err && made && gs_store_commit_unknown(st)) {
            char detail[512];
            (void)util_strlcpy(detail, gs_err_detail(), sizeof(detail));
            made = false; /* kept */
            log_warn("token keys kept: whether the commit recording them was made is not known label=\"%s\"",
                     log_qs(ref));
            err = gs_err_set(err,
                             "whether the CA was recorded is not known (its COMMIT was sent, the answer lost, the "
                             "database not there to ask): its key pair is kept on the token (%s); once the "
                             "database answers, `groupsrv ca show` tells: not recorded there, delete it "
                             "(pkcs11-tool --login --delete-object --label %s --type privkey, then pubkey) before "
                             "trying again (%s)",
                             ref, ref, detail);
        }
    }
    if (err)
        goto out;
    log_info("CA initialised label=\"%s\" adopted=%s replicable=%d", log_qs(ref), use_key != NULL ? "yes" : "no",
             (int)replicable);
    if (out) {
        ca = calloc(1, sizeof(*ca));
        if (ca == NULL) {
            err = GS_ERR_NOMEM;
            goto out;
        }
        ca->cert = cert;
        cert = NULL;
        ca->pub = pk;
        pk = NULL;
        ca->key = priv;
        priv = NULL;
        ca->alg = sig_alg_for(ca->pub);
        ca->replicable = replicable;
        *out = ca;
    }
    err = GS_OK;
out:
    if (err && made && priv) {
        /* Leave nothing behind on the token for a CA that was not recorded
         * (an adopted key is the owner's: never destroyed). */
        (void)hsm_key_destroy(hsm, priv);
        if (pub)
            (void)hsm_key_destroy(hsm, pub);
    }
    hsm_key_free(pub);
    hsm_key_free(priv);
    free(spki);
    free(pem);
    EVP_PKEY_free(pk);
    X509_free(unsigned_cert);
    X509_free(cert);
    return err;
}
