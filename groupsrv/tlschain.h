/*
 * tlschain.h: the [tls] cert file put into a TLS context, by one function
 * for serve's network process and for `check`, so that check's verdict on
 * the file is the one serve reaches at start: every certificate in it is
 * read (only the end of the text ends the list, a broken one fails), and
 * each goes through OpenSSL's checks of a server's own chain (the
 * security level's key sizes and signature digests: an RSA-1024 key, a
 * SHA-1 signed intermediate).
 */
#ifndef GS_TLSCHAIN_H
#define GS_TLSCHAIN_H

#include <stddef.h>

#include <openssl/ssl.h>

/* What serve reads of the [tls] cert file, at most. */
#define GS_TLS_CERT_MAX (1u << 20)

/* Makes the first certificate of the PEM text ctx's own and the others its
 * chain (SSL_CTX_use_certificate_chain_file without a file). 1 on success;
 * 0 otherwise, with *failed the 1-based place of the certificate that
 * could not be read or was refused, and OpenSSL's reason on its error
 * queue. */
int gs_tls_use_chain_pem(SSL_CTX *ctx, const char *pem, size_t len, int *failed);

#endif
