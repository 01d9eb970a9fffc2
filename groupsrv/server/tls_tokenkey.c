/*
 * tls_tokenkey.c: an EVP_PKEY for the TLS server key whose ECDSA signing
 * runs on the token (see tls_tokenkey.h).
 *
 * Why the deprecated EC_KEY_METHOD API: OpenSSL 3.0 has no public way to
 * put a private-key operation elsewhere except a provider, and Debian 12
 * ships no pkcs11-provider (and no libp11 engine is wanted). A legacy
 * EC_KEY with its own method is marked "foreign" by OpenSSL and signed
 * through that method. This file alone is compiled with
 * -Wno-deprecated-declarations (groupsrv/server/CMakeLists.txt); when a
 * provider is available it should replace this file.
 */
#include "tls_tokenkey.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/x509.h>

#include "log.h"

/* What the EC_KEY carries in its ex_data: which token key signs. Counted,
 * because OpenSSL copies ex_data pointers when it duplicates a key. */
struct tokenkey {
    atomic_int refs;
    hsm_ctx *hsm;  /* borrowed */
    hsm_key *key;  /* owned */
};

static pthread_once_t meth_once = PTHREAD_ONCE_INIT;
static EC_KEY_METHOD *token_meth;
static int tk_idx = -1;

static void tokenkey_unref(struct tokenkey *tk)
{
    if (tk == NULL || atomic_fetch_sub(&tk->refs, 1) != 1)
        return;
    hsm_key_free(tk->key);
    free(tk);
}

static void tk_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
    tokenkey_unref(ptr);
}

static int tk_ex_dup(CRYPTO_EX_DATA *to, const CRYPTO_EX_DATA *from, void **from_d, int idx, long argl, void *argp)
{
    struct tokenkey *tk = *from_d;
    (void)to; (void)from; (void)idx; (void)argl; (void)argp;
    if (tk != NULL)
        atomic_fetch_add(&tk->refs, 1);
    return 1;
}

/* The ECDSA signature of a digest made by the TLS layer, by the token. */
static ECDSA_SIG *token_sign_sig(const unsigned char *dgst, int dlen, const BIGNUM *kinv, const BIGNUM *r,
                                 EC_KEY *ec)
{
    struct tokenkey *tk = EC_KEY_get_ex_data(ec, tk_idx);
    unsigned char *der = NULL;
    const unsigned char *p;
    size_t derlen = 0;
    ECDSA_SIG *sig = NULL;
    hsm_err he;

    (void)kinv; (void)r; /* precomputed nonces make no sense on a token */
    if (tk == NULL || dgst == NULL || dlen <= 0) {
        ERR_raise(ERR_LIB_EC, ERR_R_PASSED_INVALID_ARGUMENT);
        return NULL;
    }
    he = hsm_sign(tk->hsm, tk->key, HSM_SIG_ECDSA_DIGEST, dgst, (size_t)dlen, &der, &derlen);
    if (he != HSM_OK) {
        log_error("TLS key signature on the token failed error=\"%s\" detail=\"%s\"", hsm_strerror(he),
                  hsm_last_error_detail());
        ERR_raise(ERR_LIB_EC, ERR_R_INTERNAL_ERROR);
        return NULL;
    }
    p = der;
    if ((sig = d2i_ECDSA_SIG(NULL, &p, (long)derlen)) == NULL || p != der + derlen) {
        ECDSA_SIG_free(sig);
        sig = NULL;
        ERR_raise(ERR_LIB_EC, ERR_R_INTERNAL_ERROR);
    }
    free(der);
    return sig;
}

/* ECDSA_sign(): DER out, through token_sign_sig. */
static int token_sign(int type, const unsigned char *dgst, int dlen, unsigned char *sig, unsigned int *siglen,
                      const BIGNUM *kinv, const BIGNUM *r, EC_KEY *ec)
{
    ECDSA_SIG *s = token_sign_sig(dgst, dlen, kinv, r, ec);
    unsigned char *p = sig;
    int len;

    (void)type;
    *siglen = 0;
    if (s == NULL)
        return 0;
    len = i2d_ECDSA_SIG(s, sig != NULL ? &p : NULL);
    ECDSA_SIG_free(s);
    if (len <= 0)
        return 0;
    *siglen = (unsigned int)len;
    return 1;
}

/* No private value here to precompute a nonce with. */
static int token_sign_setup(EC_KEY *ec, BN_CTX *ctx, BIGNUM **kinv, BIGNUM **r)
{
    (void)ec; (void)ctx; (void)kinv; (void)r;
    ERR_raise(ERR_LIB_EC, ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED);
    return 0;
}

static void make_meth(void)
{
    tk_idx = EC_KEY_get_ex_new_index(0, NULL, NULL, tk_ex_dup, tk_ex_free);
    if (tk_idx < 0)
        return;
    /* Verification, key checks etc. stay OpenSSL's; only signing moves. */
    if ((token_meth = EC_KEY_METHOD_new(EC_KEY_get_default_method())) != NULL)
        EC_KEY_METHOD_set_sign(token_meth, token_sign, token_sign_setup, token_sign_sig);
}

/* Is the token key fit to be the TLS key? NULL if so, else why not. */
static const char *check_key(const hsm_key_info *ki)
{
    if (ki->type == HSM_KEYTYPE_RSA)
        return "is an RSA key: TLS 1.3 needs RSA-PSS signatures, which OpenSSL 3.0 can only delegate "
               "as raw RSA private operations, and groupsrv never offers raw RSA on the token; "
               "make an EC key (P-256 or P-384) for TLS instead (groupsrv tls init --key ec:p256)";
    if (ki->type != HSM_KEYTYPE_EC)
        return "is not an EC key (the TLS key on the token must be EC P-256 or P-384)";
    if (ki->bits != 256 && ki->bits != 384)
        return "is on an unsupported curve (the TLS key on the token must be EC P-256 or P-384)";
    if (!ki->sign)
        return "lacks CKA_SIGN";
    if (!ki->sensitive || ki->extractable || ki->value_readable)
        return "is not sensitive and non-extractable (CKA_SENSITIVE true, CKA_EXTRACTABLE false required)";
    return NULL;
}

int tls_tokenkey_load(hsm_ctx *hsm, const char *uri, EVP_PKEY **out, char *errbuf, size_t errlen)
{
    struct tokenkey *tk = NULL;
    hsm_key *key = NULL;
    hsm_key_info ki;
    unsigned char *spki = NULL;
    const unsigned char *p;
    size_t spki_len = 0;
    EC_KEY *ec = NULL;
    EVP_PKEY *pk = NULL;
    const char *why;
    hsm_err he;
    int rc = -1, nid;

    *out = NULL;
    errbuf[0] = '\0';
    if (hsm == NULL || uri == NULL) {
        snprintf(errbuf, errlen, "[tls] key is a pkcs11: URI but no token is open");
        goto out;
    }
    if (pthread_once(&meth_once, make_meth) != 0 || token_meth == NULL) {
        snprintf(errbuf, errlen, "out of memory (EC key method)");
        goto out;
    }
    if ((he = hsm_key_find(hsm, uri, HSM_CLASS_PRIVATE, &key)) != HSM_OK) {
        snprintf(errbuf, errlen, "[tls] key %s: %s%s%s", uri, hsm_strerror(he),
                 hsm_last_error_detail()[0] ? ": " : "", hsm_last_error_detail());
        goto out;
    }
    if ((he = hsm_key_get_info(hsm, key, &ki)) != HSM_OK) {
        snprintf(errbuf, errlen, "[tls] key %s: reading its attributes: %s", uri, hsm_strerror(he));
        goto out;
    }
    if ((why = check_key(&ki)) != NULL) {
        snprintf(errbuf, errlen, "[tls] key %s %s", uri, why);
        goto out;
    }
    if (!ki.always_sensitive || !ki.never_extractable)
        log_warn("the TLS key on the token was once readable or extractable (imported?) uri=%s", uri);
    if ((he = hsm_key_export_public(hsm, key, &spki, &spki_len)) != HSM_OK) {
        snprintf(errbuf, errlen, "[tls] key %s: reading its public key: %s", uri, hsm_strerror(he));
        goto out;
    }
    p = spki;
    if ((ec = d2i_EC_PUBKEY(NULL, &p, (long)spki_len)) == NULL || EC_KEY_get0_group(ec) == NULL) {
        snprintf(errbuf, errlen, "[tls] key %s: the token's public key does not parse", uri);
        goto out;
    }
    nid = EC_GROUP_get_curve_name(EC_KEY_get0_group(ec));
    if (nid != NID_X9_62_prime256v1 && nid != NID_secp384r1) {
        snprintf(errbuf, errlen, "[tls] key %s is on an unsupported curve (P-256 or P-384 required)", uri);
        goto out;
    }
    if ((tk = calloc(1, sizeof(*tk))) == NULL) {
        snprintf(errbuf, errlen, "out of memory");
        goto out;
    }
    atomic_init(&tk->refs, 1);
    tk->hsm = hsm;
    tk->key = key;
    key = NULL;
    /* The method before the EVP_PKEY: OpenSSL decides "foreign" (sign
     * through the method, never through its provider) when assigning. */
    if (EC_KEY_set_method(ec, token_meth) != 1 || EC_KEY_set_ex_data(ec, tk_idx, tk) != 1) {
        snprintf(errbuf, errlen, "EC key method");
        goto out;
    }
    tk = NULL; /* freed with ec from here on */
    if ((pk = EVP_PKEY_new()) == NULL || EVP_PKEY_assign_EC_KEY(pk, ec) != 1) {
        snprintf(errbuf, errlen, "out of memory");
        goto out;
    }
    ec = NULL;
    log_info("TLS key on the token uri=%s curve=%s", uri, OBJ_nid2sn(nid));
    *out = pk;
    pk = NULL;
    rc = 0;
out:
    EVP_PKEY_free(pk);
    EC_KEY_free(ec);
    tokenkey_unref(tk);
    hsm_key_free(key);
    free(spki);
    ERR_clear_error();
    return rc;
}
