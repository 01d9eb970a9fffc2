/*
 * certname.h: the address a client certificate names, by one rule for the
 * TLS layer (the identity of every request) and for the admin commands
 * (a member's recorded certificate must name the member), so that a
 * certificate `member add` records is one the server then knows by that
 * member's name. Pure function of the certificate; thread-safe.
 */
#ifndef GS_CERTNAME_H
#define GS_CERTNAME_H

#include <stddef.h>

#include <openssl/x509.h>

/* The identity of cert, written to buf (NUL-terminated, len bytes):
 *   - the first rfc822Name of the subjectAltName; an unusable one (empty,
 *     a NUL, longer than buf) means none at all, never a subject field;
 *   - without a SAN e-mail address: the subject CN when it is an address
 *     (gs_valid_email), else the subject emailAddress when that is one
 *     (certificates of older S/MIME CAs carry it there), else the CN.
 * Returns 1 when an identity was written, 0 otherwise (buf is then ""). */
int gs_cert_identity(X509 *cert, char *buf, size_t len);

#endif
