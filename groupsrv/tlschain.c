/* tlschain.c: see tlschain.h (moved out of the network process's TLS layer
 * so that `check` loads the [tls] cert file as serve does). */
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
    for (*failed = 2; (x = PEM_read_bio_X509(bio, NULL, util_pem_no_passphrase, NULL)) != NULL; (*failed)++) {
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
