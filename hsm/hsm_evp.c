/*
 * hsm_evp.c: an OpenSSL EVP_PKEY whose ECDSA signing runs on the token
 * (hsm_key_evp_pkey, see hsm.h). Used for TLS keys on a token: the group
 * server's own key and a member's smartcard key in groupmail.
 *
 * The method is common/ec_remote.c's (why a deprecated EC_KEY_METHOD: see
 * there); this file gives it the token signature and the key. It uses the
 * deprecated EC_KEY accessors and alone in hsm/ is compiled with
 * -Wno-deprecated-declarations (hsm/CMakeLists.txt); when a provider is
 * available it should replace this file.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/x509.h>

#include "ec_remote.h"
#include "hsm.h"
#include "hsm_internal.h"
#include "log.h"

/* What the EC_KEY carries in its ex_data: which token key signs. Counted,
 * because OpenSSL copies ex_data pointers when it duplicates a key. */
struct evpkey {
    atomic_int refs;
    hsm_ctx *hsm; /* borrowed: must outlive every EVP_PKEY made here */
    hsm_key *key; /* owned: our own copy of the caller's reference */
};

static pthread_once_t meth_once = PTHREAD_ONCE_INIT;
static EC_KEY_METHOD *token_meth;
static int ek_idx = -1;

static void evpkey_unref(struct evpkey *ek)
{
    if (ek == NULL || atomic_fetch_sub(&ek->refs, 1) != 1)
        return;
    hsm_key_free(ek->key);
    free(ek);
}

static void ek_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent; (void)ad; (void)idx; (void)argl; (void)argp;
    evpkey_unref(ptr);
}

static int ek_ex_dup(CRYPTO_EX_DATA *to, const CRYPTO_EX_DATA *from, void **from_d, int idx, long argl, void *argp)
{
    struct evpkey *ek = *from_d;
    (void)to; (void)from; (void)idx; (void)argl; (void)argp;
    if (ek != NULL)
        atomic_fetch_add(&ek->refs, 1);
    return 1;
}

/* The ECDSA signature of a digest made by OpenSSL (TLS handshake, X.509
 * signing), by the token. */
static ECDSA_SIG *token_sign_sig(const unsigned char *dgst, int dlen, const BIGNUM *kinv, const BIGNUM *r,
                                 EC_KEY *ec)
{
    struct evpkey *ek = EC_KEY_get_ex_data(ec, ek_idx);
    unsigned char *der = NULL;
    const unsigned char *p;
    size_t derlen = 0;
    ECDSA_SIG *sig = NULL;
    hsm_err he;

    (void)kinv; (void)r; /* precomputed nonces make no sense on a token */
    if (ek == NULL || dgst == NULL || dlen <= 0) {
        ERR_raise(ERR_LIB_EC, ERR_R_PASSED_INVALID_ARGUMENT);
        return NULL;
    }
    he = hsm_sign(ek->hsm, ek->key, HSM_SIG_ECDSA_DIGEST, dgst, (size_t)dlen, &der, &derlen);
    if (he != HSM_OK) {
        log_error("signature on the token failed error=\"%s\" detail=\"%s\"", hsm_strerror(he),
                  log_qs(hsm_last_error_detail()));
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

static void make_meth(void)
{
    ek_idx = EC_KEY_get_ex_new_index(0, NULL, NULL, ek_ex_dup, ek_ex_free);
    if (ek_idx < 0)
        return;
    token_meth = ec_remote_method_new(token_sign_sig);
}

/* A private copy of the caller's reference, so the EVP_PKEY does not
 * depend on the caller keeping theirs. handle/gen change under key_mu. */
static hsm_key *key_copy(hsm_ctx *ctx, hsm_key *key)
{
    hsm_key *k = calloc(1, sizeof(*k));
    if (k == NULL)
        return NULL;
    pthread_mutex_lock(&ctx->key_mu);
    *k = *key;
    pthread_mutex_unlock(&ctx->key_mu);
    return k;
}

hsm_err hsm_key_evp_pkey(hsm_ctx *ctx, hsm_key *key, EVP_PKEY **out)
{
    struct evpkey *ek = NULL;
    hsm_key_info ki;
    unsigned char *spki = NULL;
    const unsigned char *p;
    size_t spki_len = 0;
    EC_KEY *ec = NULL;
    EVP_PKEY *pk = NULL;
    hsm_err err = HSM_ERR_ARGS;
    int nid;

    if (out != NULL)
        *out = NULL;
    if (ctx == NULL || key == NULL || out == NULL)
        return HSM_ERR_ARGS;
    if (pthread_once(&meth_once, make_meth) != 0 || token_meth == NULL)
        return HSM_ERR_NOMEM;
    if ((err = hsm_key_get_info(ctx, key, &ki)) != HSM_OK)
        goto out;
    hsm_clear_detail();
    err = HSM_ERR_KEY_POLICY;
    if (ki.cls != HSM_CLASS_PRIVATE) {
        hsm_set_detail("not a private key");
        goto out;
    }
    if (ki.type == HSM_KEYTYPE_RSA) {
        /* TLS 1.3 signs with RSA-PSS, which OpenSSL 3.0 hands a legacy
         * RSA_METHOD only as a raw RSA private operation: never offered. */
        hsm_set_detail("RSA keys are not supported (RSA-PSS would need raw RSA on the token)");
        goto out;
    }
    if (ki.type != HSM_KEYTYPE_EC || !ki.sign) {
        hsm_set_detail("an EC key with CKA_SIGN is required");
        goto out;
    }
    if ((err = hsm_key_export_public(ctx, key, &spki, &spki_len)) != HSM_OK)
        goto out;
    err = HSM_ERR_PUBLIC_KEY;
    p = spki;
    if ((ec = d2i_EC_PUBKEY(NULL, &p, (long)spki_len)) == NULL || EC_KEY_get0_group(ec) == NULL) {
        hsm_set_detail("the token's public key does not parse");
        goto out;
    }
    nid = EC_GROUP_get_curve_name(EC_KEY_get0_group(ec));
    if (nid != NID_X9_62_prime256v1 && nid != NID_secp384r1 && nid != NID_secp521r1) {
        hsm_set_detail("unsupported curve (P-256, P-384 or P-521)");
        goto out;
    }
    err = HSM_ERR_NOMEM;
    if ((ek = calloc(1, sizeof(*ek))) == NULL)
        goto out;
    atomic_init(&ek->refs, 1);
    ek->hsm = ctx;
    if ((ek->key = key_copy(ctx, key)) == NULL)
        goto out;
    if (EC_KEY_set_ex_data(ec, ek_idx, ek) != 1)
        goto out;
    ek = NULL; /* freed with ec from here on */
    if (ec_remote_pkey(ec, token_meth, &pk) != 0)
        goto out;
    ec = NULL;
    *out = pk;
    pk = NULL;
    err = HSM_OK;
out:
    EVP_PKEY_free(pk);
    EC_KEY_free(ec);
    evpkey_unref(ek);
    free(spki);
    ERR_clear_error();
    return err;
}
