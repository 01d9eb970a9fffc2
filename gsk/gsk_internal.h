/*
 * gsk_internal.h: shared by the gsk/ source files only. The DER frame of a
 * key shipment (an OpenSSL ASN.1 template: OpenSSL parses, nothing here
 * reads bytes by hand) and the error detail setter.
 */
#ifndef GS_GSK_INTERNAL_H
#define GS_GSK_INTERNAL_H

#include <openssl/asn1.h>
#include <openssl/asn1t.h>

#include "gsk.h"

typedef struct gsk_file_st {
    ASN1_UTF8STRING *format;
    ASN1_OCTET_STRING *manifest;
    ASN1_OCTET_STRING *signature;
} GSK_FILE;
DECLARE_ASN1_FUNCTIONS(GSK_FILE)

/* Sets the thread's detail (printf-style) and returns err. */
gsk_err gsk_fail(gsk_err err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The hsm error of the last call as a gsk error, detail "what: hsm text (detail)". */
gsk_err gsk_hsm_fail(hsm_err he, const char *what);

#endif
