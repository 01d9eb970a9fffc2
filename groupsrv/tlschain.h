/*
 * tlschain.h: the [tls] files made into what serve's network process
 * works with, by one function each for it and for `check`, so that
 * check's verdict on a file is the one serve reaches:
 *   - cert: every certificate in it is read (only the end of the text
 *     ends the list, a broken one fails), and each goes through OpenSSL's
 *     checks of a server's own chain (the security level's key sizes and
 *     signature digests: an RSA-1024 key, a SHA-1 signed intermediate);
 *   - client_ca: the store client certificates are verified against.
 */
#ifndef GS_TLSCHAIN_H
#define GS_TLSCHAIN_H

#include <stddef.h>

#include <openssl/ssl.h>

/* What serve reads of the [tls] cert and client_ca files, at most. */
#define GS_TLS_CERT_MAX (1u << 20)
#define GS_TLS_CLIENT_CA_MAX (16u << 20)

/* Makes the first certificate of the PEM text ctx's own and the others its
 * chain (SSL_CTX_use_certificate_chain_file without a file). 1 on success;
 * 0 otherwise, with *failed the 1-based place of the certificate that
 * could not be read or was refused, and OpenSSL's reason on its error
 * queue. */
int gs_tls_use_chain_pem(SSL_CTX *ctx, const char *pem, size_t len, int *failed);

/* Adds every certificate and CRL of the client CA file's PEM text to store
 * (and the certificates' subjects to names, if given: the CA list the TLS
 * layer sends), with *ncerts the certificates; with a CRL among them,
 * every certificate of a chain is checked against its issuer's CRL,
 * intermediates included (as nginx's ssl_crl: a revoked intermediate CA
 * revokes its members). Returns the number of CRLs, or -1. */
int gs_tls_client_store(const char *pem, size_t len, X509_STORE *store, STACK_OF(X509_NAME) *names, int *ncerts);

#endif
