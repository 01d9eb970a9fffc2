/*
 * tls_tokenkey.h: the TLS server key on the token ([tls] key = pkcs11:URI),
 * on the network side. Owned by groupsrv/server/.
 *
 * The network process has neither the token nor the key: OpenSSL gets an
 * EVP_PKEY holding only the public key (the key holder reads it from the
 * token and checks the key's attributes at its start, IPC_INFO), whose
 * ECDSA signing sends the digest the TLS handshake made to the key holder
 * (IPC_SIGN) and waits for the signature, as relayd's TLS engines ask its
 * ca process. The key holder signs nothing else with that key and never
 * signs with any other key for this request.
 *
 * The wait blocks the event-loop thread doing the handshake for one
 * token signature (at most the sync timeout): OpenSSL asks for the
 * signature in the middle of the handshake and libevent's TLS bufferevent
 * cannot suspend it. Kept-alive connections and resumed sessions do not
 * sign; docs/operations.md says what this costs on a slow token.
 *
 * Only EC keys on P-256 or P-384 are accepted. RSA keys are refused (by
 * the key holder, before): TLS 1.3 signs with RSA-PSS, which OpenSSL 3.0
 * can only hand to a legacy RSA_METHOD as a raw RSA private operation
 * (PSS padding done in software), and groupsrv never offers raw RSA on the
 * token.
 */
#ifndef GS_SRV_TLS_TOKENKEY_H
#define GS_SRV_TLS_TOKENKEY_H

#include <stddef.h>

#include <openssl/evp.h>

/* A new EVP_PKEY (caller frees) for the EC public key spki (DER
 * SubjectPublicKeyInfo, as the key holder read it from the token) whose
 * signatures are made by the key holder over the calling thread's link
 * (khlink_current). uri names the key in messages. Returns 0, or -1 with
 * a one-line reason in errbuf. */
int tls_tokenkey_new(const unsigned char *spki, size_t spki_len, const char *uri, EVP_PKEY **out, char *errbuf,
                     size_t errlen);

#endif
