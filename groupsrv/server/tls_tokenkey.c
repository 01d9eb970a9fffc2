/*
 * tls_tokenkey.c: an EVP_PKEY whose ECDSA signing is done by the key
 * holder (see tls_tokenkey.h), through common/ec_remote.c's method (as
 * hsm/hsm_evp.c signs on the token inside the key holder). It uses the
 * deprecated EC_KEY accessors (groupsrv/server/CMakeLists.txt).
 */
#include "tls_tokenkey.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include "ec_remote.h"
#include "holder.h"
#include "log.h"

/* A handshake waits at most this long for its signature. */
#define SIGN_TIMEOUT_MS 10000

static pthread_once_t meth_once = PTHREAD_ONCE_INIT;
static EC_KEY_METHOD *remote_meth;

static ECDSA_SIG *remote_sign_sig(const unsigned char *dgst, int dlen, const BIGNUM *kinv, const BIGNUM *r,
                                  EC_KEY *ec)
{
    khlink *l = khlink_current();
    ECDSA_SIG *sig = NULL;
    const unsigned char *p;
    size_t len;
    ipc_msg a;
    ipc_buf b;

    (void)kinv; (void)r; (void)ec; /* precomputed nonces make no sense on a token */
    if (l == NULL || dgst == NULL || dlen < 20 || dlen > 64) {
        ERR_raise(ERR_LIB_EC, ERR_R_PASSED_INVALID_ARGUMENT);
        return NULL;
    }
    ipc_buf_init(&b);
    ipc_begin(&b, IPC_SIGN, 0);
    ipc_put_bytes(&b, IPC_T_DIGEST, dgst, (size_t)dlen);
    if (khlink_call_sync(l, &b, SIGN_TIMEOUT_MS, &a) != 0 || ipc_u32(&a, IPC_T_STATUS, 500) != 200 ||
        ipc_bytes(&a, IPC_T_SIG, &p, &len) != 0) {
        log_error("the key holder made no TLS signature");
        ERR_raise(ERR_LIB_EC, ERR_R_INTERNAL_ERROR);
        return NULL;
    }
    const unsigned char *q = p;
    if ((sig = d2i_ECDSA_SIG(NULL, &q, (long)len)) == NULL || q != p + len) {
        ECDSA_SIG_free(sig);
        sig = NULL;
        ERR_raise(ERR_LIB_EC, ERR_R_INTERNAL_ERROR);
    }
    return sig;
}

static void make_meth(void)
{
    remote_meth = ec_remote_method_new(remote_sign_sig);
}

int tls_tokenkey_new(const unsigned char *spki, size_t spki_len, const char *uri, EVP_PKEY **out, char *errbuf,
                     size_t errlen)
{
    const unsigned char *p = spki;
    EC_KEY *ec = NULL;
    EVP_PKEY *pk = NULL;
    int nid, rc = -1;

    *out = NULL;
    errbuf[0] = '\0';
    if (pthread_once(&meth_once, make_meth) != 0 || remote_meth == NULL) {
        snprintf(errbuf, errlen, "out of memory");
        goto out;
    }
    if (spki == NULL || (ec = d2i_EC_PUBKEY(NULL, &p, (long)spki_len)) == NULL || EC_KEY_get0_group(ec) == NULL) {
        snprintf(errbuf, errlen, "[tls] key %s: the token's public key does not parse", uri);
        goto out;
    }
    nid = EC_GROUP_get_curve_name(EC_KEY_get0_group(ec));
    if (nid != NID_X9_62_prime256v1 && nid != NID_secp384r1) {
        snprintf(errbuf, errlen, "[tls] key %s is on an unsupported curve (P-256 or P-384 required)", uri);
        goto out;
    }
    if (ec_remote_pkey(ec, remote_meth, &pk) != 0) {
        snprintf(errbuf, errlen, "out of memory");
        goto out;
    }
    ec = NULL;
    log_info("TLS key on the token uri=\"%s\" curve=%s", log_qs(uri), OBJ_nid2sn(nid));
    *out = pk;
    pk = NULL;
    rc = 0;
out:
    EVP_PKEY_free(pk);
    EC_KEY_free(ec);
    ERR_clear_error();
    return rc;
}
