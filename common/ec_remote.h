/*
 * ec_remote.h: an EC key whose ECDSA signatures are made somewhere else
 * (on a token, or by another process), for OpenSSL's TLS and X.509 code.
 *
 * Why the deprecated EC_KEY_METHOD: OpenSSL 3.0 has no other public way to
 * put a private-key operation elsewhere short of a provider, and Debian 12
 * ships no pkcs11-provider. A legacy EC_KEY with its own method is marked
 * "foreign" and signed through that method. Only ec_remote.c uses the
 * deprecated API; the callers pass their ECDSA_SIG-returning function.
 */
#ifndef GS_EC_REMOTE_H
#define GS_EC_REMOTE_H

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>

/* Makes the signature of dgst for ec, or returns NULL with an OpenSSL
 * error raised. kinv and r (precomputed nonces) are always NULL. */
typedef ECDSA_SIG *ec_remote_sign_fn(const unsigned char *dgst, int dlen, const BIGNUM *kinv, const BIGNUM *r,
                                     EC_KEY *ec);

/* A method that is OpenSSL's default EC method except that signing goes to
 * sign (the DER form and the refused nonce setup are this module's), or
 * NULL when out of memory. Made once per caller and kept for the process's
 * life (OpenSSL keeps a pointer to it in every key). */
EC_KEY_METHOD *ec_remote_method_new(ec_remote_sign_fn *sign);

/* Sets method (from ec_remote_method_new) on ec and wraps ec in a new
 * EVP_PKEY, which owns ec from then on: 0, or -1 (ec still the caller's). */
int ec_remote_pkey(EC_KEY *ec, EC_KEY_METHOD *method, EVP_PKEY **out);

#endif
