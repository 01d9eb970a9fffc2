/* tlschain.c: see tlschain.h (moved out of the network process's TLS layer
 * so that `check` loads the [tls] files as serve does). */
#include "tlschain.h"

#include <limits.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include "util.h"

int gs_tls_use_chain_pem(SSL_CTX *ctx, const char *pem, size_t len, int *failed)
{
    BIO *bio = len <= INT_MAX ? BIO_new_mem_buf(pem, (int)len) : NULL;
    X509 *x = NULL;
    int ok = 0;

    *failed = 1;
    if (bio == NULL || (x = PEM_read_bio_X509_AUX(bio, NULL, util_pem_no_passphrase, NULL)) == NULL ||
        SSL_CTX_use_certificate(ctx, x) != 1 || SSL_CTX_clear_chain_certs(ctx) != 1)
        goto out;
    X509_free(x);
    /* _AUX as for the first: PEM_read_bio_X509 skips a TRUSTED CERTIFICATE
     * block ('openssl x509 -trustout'): an intermediate so written was
     * left out of the chain sent without a word, and clients lacked it.
     * Its trust settings mean nothing in a chain sent (the DER goes alone). */
    for (*failed = 2; (x = PEM_read_bio_X509_AUX(bio, NULL, util_pem_no_passphrase, NULL)) != NULL; (*failed)++) {
        if (SSL_CTX_add0_chain_cert(ctx, x) != 1)
            goto out;
    }
    /* The end of the text, not a broken certificate, ended the loop. */
    unsigned long e = ERR_peek_last_error();
    ok = ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
    if (ok) {
        ERR_clear_error();
        *failed = 0;
    }
out:
    X509_free(x);
    BIO_free(bio);
    return ok;
}

int gs_tls_client_store(const char *pem, size_t len, X509_STORE *store, STACK_OF(X509_NAME) *names, int *ncerts)
{
    BIO *bio = NULL;
    STACK_OF(X509_INFO) *infos = NULL;
    int ncrl = -1;

    *ncerts = 0;
    if (len > INT_MAX || (bio = BIO_new_mem_buf(pem, (int)len)) == NULL)
        goto out;
    if ((infos = PEM_X509_INFO_read_bio(bio, NULL, util_pem_no_passphrase, NULL)) == NULL)
        goto out;
    ncrl = 0;
    for (int i = 0; i < sk_X509_INFO_num(infos); i++) {
        X509_INFO *xi = sk_X509_INFO_value(infos, i);
        if (xi->x509 != NULL) {
            if (!X509_STORE_add_cert(store, xi->x509)) {
                ncrl = -1;
                goto out;
            }
            if (names != NULL) {
                X509_NAME *n = X509_NAME_dup(X509_get_subject_name(xi->x509));
                if (n == NULL || !sk_X509_NAME_push(names, n)) {
                    X509_NAME_free(n);
                    ncrl = -1;
                    goto out;
                }
            }
            (*ncerts)++;
        }
        if (xi->crl != NULL) {
            if (!X509_STORE_add_crl(store, xi->crl)) {
                ncrl = -1;
                goto out;
            }
            ncrl++;
        }
    }
    if (ncrl > 0)
        X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
out:
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
    BIO_free(bio);
    return ncrl;
}
