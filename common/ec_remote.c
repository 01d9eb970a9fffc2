/*
 * ec_remote.c: see ec_remote.h. This file alone in common/ is compiled with
 * -Wno-deprecated-declarations (common/CMakeLists.txt).
 */
#include "ec_remote.h"

#include <openssl/err.h>

/* ECDSA_sign(): DER out, through the sign_sig function of ec's own method. */
static int remote_sign(int type, const unsigned char *dgst, int dlen, unsigned char *sig, unsigned int *siglen,
                       const BIGNUM *kinv, const BIGNUM *r, EC_KEY *ec)
{
    ECDSA_SIG *(*sign_sig)(const unsigned char *, int, const BIGNUM *, const BIGNUM *, EC_KEY *) = NULL;
    ECDSA_SIG *s;
    unsigned char *p = sig;
    int len;

    (void)type;
    *siglen = 0;
    EC_KEY_METHOD_get_sign(EC_KEY_get_method(ec), NULL, NULL, &sign_sig);
    if (sign_sig == NULL || (s = sign_sig(dgst, dlen, kinv, r, ec)) == NULL)
        return 0;
    len = i2d_ECDSA_SIG(s, sig != NULL ? &p : NULL);
    ECDSA_SIG_free(s);
    if (len <= 0)
        return 0;
    *siglen = (unsigned int)len;
    return 1;
}

/* No private value here to precompute a nonce with. */
static int remote_sign_setup(EC_KEY *ec, BN_CTX *ctx, BIGNUM **kinv, BIGNUM **r)
{
    (void)ec; (void)ctx; (void)kinv; (void)r;
    ERR_raise(ERR_LIB_EC, ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED);
    return 0;
}

EC_KEY_METHOD *ec_remote_method_new(ec_remote_sign_fn *sign)
{
    /* Verification, key checks etc. stay OpenSSL's; only signing moves. */
    EC_KEY_METHOD *m = EC_KEY_METHOD_new(EC_KEY_get_default_method());

    if (m != NULL)
        EC_KEY_METHOD_set_sign(m, remote_sign, remote_sign_setup, sign);
    return m;
}

int ec_remote_pkey(EC_KEY *ec, EC_KEY_METHOD *method, EVP_PKEY **out)
{
    EVP_PKEY *pk = NULL;

    *out = NULL;
    /* The method before the EVP_PKEY: OpenSSL decides "foreign" (sign
     * through the method, never through its provider) when assigning. */
    if (ec == NULL || method == NULL || EC_KEY_set_method(ec, method) != 1 || (pk = EVP_PKEY_new()) == NULL ||
        EVP_PKEY_assign_EC_KEY(pk, ec) != 1) {
        EVP_PKEY_free(pk);
        return -1;
    }
    *out = pk;
    return 0;
}
