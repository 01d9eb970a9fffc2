/*
 * tls_tokenkey.h: the TLS server key on the token ([tls] key = pkcs11:URI).
 * Owned by groupsrv/server/.
 *
 * The key never leaves the token: OpenSSL gets an EVP_PKEY (made by
 * hsm_key_evp_pkey, hsm/hsm_evp.c) holding only
 * the public key, whose ECDSA signing calls hsm_sign(HSM_SIG_ECDSA_DIGEST)
 * with the digest the TLS handshake made. The signing runs on the
 * event-loop threads; each call borrows a session from the hsm pool.
 *
 * Only EC keys on P-256 or P-384 are accepted. RSA keys are refused: TLS
 * 1.3 signs with RSA-PSS, which OpenSSL 3.0 can only hand to a legacy
 * RSA_METHOD as a raw RSA private operation (PSS padding done in
 * software), and groupsrv never offers raw RSA on the token.
 */
#ifndef GS_SRV_TLS_TOKENKEY_H
#define GS_SRV_TLS_TOKENKEY_H

#include <stddef.h>

#include <openssl/evp.h>

#include "hsm.h"

/* Finds the private key `uri` on the token (class private; it must have
 * CKA_SIGN, be sensitive and not extractable, and be EC P-256 or P-384),
 * reads its public key and returns a new EVP_PKEY whose private operation
 * is the token's (caller frees with EVP_PKEY_free). hsm is borrowed and
 * must stay open as long as the EVP_PKEY (and any SSL_CTX holding it)
 * lives. Returns 0, or -1 with a one-line reason in errbuf (for the
 * operator: says what to do). */
int tls_tokenkey_load(hsm_ctx *hsm, const char *uri, EVP_PKEY **out, char *errbuf, size_t errlen);

#endif
