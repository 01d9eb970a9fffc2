/*
 * env_internal.h: private to envelope/. Local C structs for the RFC 5652 /
 * 5083 / 5753 structures OpenSSL's public CMS API does not expose, described
 * to OpenSSL with its ASN.1 template macros (env_asn1.c), plus helpers shared
 * by the envelope source files. Not installed, not for other modules.
 */
#ifndef GS_ENV_INTERNAL_H
#define GS_ENV_INTERNAL_H

#include <openssl/asn1.h>
#include <openssl/asn1t.h>
#include <openssl/x509.h>

#include "envelope.h"

/* Caps on everything parsed outside the encrypted content. */
#define ENV_HDR_CAP (4u * 1024 * 1024)  /* version .. contentEncryptionAlgorithm */
#define ENV_TAIL_CAP (1u * 1024 * 1024) /* authAttrs, mac, unprotected attrs */
#define ENV_RI_CAP (64u * 1024)         /* one RecipientInfo */
#define ENV_MAX_RECIPIENTS 100000u
#define ENV_DEFAULT_MAX (1024ul * 1024 * 1024)

/* IssuerAndSerialNumber. The issuer Name is kept as received (its whole
 * DER, a SEQUENCE) and decoded only when it must be: decoding a Name (its
 * canonical form, a copy of every attribute) was most of the cost of
 * parsing a RecipientInfo, and the name a RecipientInfo carries is
 * nearly always byte for byte the issuer of a certificate at hand.
 * Whoever parses one checks that its names decode (env_ri_names_valid),
 * so that no more input is accepted than when they were decoded at once. */
typedef struct env_ias_st {
    ASN1_STRING *issuer;
    ASN1_INTEGER *serial;
} ENV_IAS;

/* RecipientIdentifier (KTRI) */
typedef struct env_rid_st {
    int type; /* 0 issuerAndSerialNumber, 1 subjectKeyIdentifier */
    union {
        ENV_IAS *ias;
        ASN1_OCTET_STRING *ski;
    } d;
} ENV_RID;

typedef struct env_ktri_st {
    ASN1_INTEGER *version;
    ENV_RID *rid;
    X509_ALGOR *alg;
    ASN1_OCTET_STRING *ek;
} ENV_KTRI;

/* OtherKeyAttribute */
typedef struct env_oka_st {
    ASN1_OBJECT *id;
    ASN1_TYPE *attr;
} ENV_OKA;

/* RecipientKeyIdentifier and KEKIdentifier have the same shape */
typedef struct env_keyid_st {
    ASN1_OCTET_STRING *id;
    ASN1_GENERALIZEDTIME *date;
    ENV_OKA *other;
} ENV_KEYID;

/* KeyAgreeRecipientIdentifier */
typedef struct env_karid_st {
    int type; /* 0 issuerAndSerialNumber, 1 rKeyId */
    union {
        ENV_IAS *ias;
        ENV_KEYID *rkeyid;
    } d;
} ENV_KARID;

/* RecipientEncryptedKey */
typedef struct env_rek_st {
    ENV_KARID *rid;
    ASN1_OCTET_STRING *ek;
} ENV_REK;
DEFINE_STACK_OF(ENV_REK)

/* OriginatorPublicKey */
typedef struct env_opk_st {
    X509_ALGOR *alg;
    ASN1_BIT_STRING *pub;
} ENV_OPK;

/* OriginatorIdentifierOrKey */
typedef struct env_oik_st {
    int type; /* 0 ias, 1 ski, 2 originatorKey */
    union {
        ENV_IAS *ias;
        ASN1_OCTET_STRING *ski;
        ENV_OPK *key;
    } d;
} ENV_OIK;

typedef struct env_kari_st {
    ASN1_INTEGER *version;
    ENV_OIK *originator;
    ASN1_OCTET_STRING *ukm;
    X509_ALGOR *alg;
    STACK_OF(ENV_REK) *reks;
} ENV_KARI;

typedef struct env_kekri_st {
    ASN1_INTEGER *version;
    ENV_KEYID *kekid;
    X509_ALGOR *alg;
    ASN1_OCTET_STRING *ek;
} ENV_KEKRI;

/* RecipientInfo CHOICE; pwri [3] and ori [4] are kept as opaque SEQUENCEs */
#define ENV_RI_T_KTRI 0
#define ENV_RI_T_KARI 1
#define ENV_RI_T_KEKRI 2
#define ENV_RI_T_PWRI 3
#define ENV_RI_T_ORI 4
typedef struct env_ri_st {
    int type;
    union {
        ENV_KTRI *ktri;
        ENV_KARI *kari;
        ENV_KEKRI *kekri;
        STACK_OF(ASN1_TYPE) *other;
    } d;
} ENV_RI;
DEFINE_STACK_OF(ENV_RI)

/* GCMParameters (RFC 5084) */
typedef struct env_gcmparams_st {
    ASN1_OCTET_STRING *nonce;
    ASN1_INTEGER *icvlen; /* DEFAULT 12 */
} ENV_GCMPARAMS;

/* ECC-CMS-SharedInfo (RFC 5753 sec 7.2) */
typedef struct env_sharedinfo_st {
    X509_ALGOR *wrap_alg;
    ASN1_OCTET_STRING *entityuinfo;
    ASN1_OCTET_STRING *supppubinfo;
} ENV_SHAREDINFO;

/* OriginatorInfo, kept opaque */
typedef struct env_originfo_st {
    STACK_OF(ASN1_TYPE) *certs;
    STACK_OF(ASN1_TYPE) *crls;
} ENV_ORIGINFO;

DECLARE_ASN1_FUNCTIONS(ENV_IAS)
DECLARE_ASN1_FUNCTIONS(ENV_RID)
DECLARE_ASN1_FUNCTIONS(ENV_KTRI)
DECLARE_ASN1_FUNCTIONS(ENV_OKA)
DECLARE_ASN1_FUNCTIONS(ENV_KEYID)
DECLARE_ASN1_FUNCTIONS(ENV_KARID)
DECLARE_ASN1_FUNCTIONS(ENV_REK)
DECLARE_ASN1_FUNCTIONS(ENV_OPK)
DECLARE_ASN1_FUNCTIONS(ENV_OIK)
DECLARE_ASN1_FUNCTIONS(ENV_KARI)
DECLARE_ASN1_FUNCTIONS(ENV_KEKRI)
DECLARE_ASN1_FUNCTIONS(ENV_RI)
DECLARE_ASN1_FUNCTIONS(ENV_GCMPARAMS)
DECLARE_ASN1_FUNCTIONS(ENV_SHAREDINFO)
DECLARE_ASN1_FUNCTIONS(ENV_ORIGINFO)
/* SET OF RecipientInfo (STACK_OF(ENV_RI)) */
DECLARE_ASN1_ITEM(ENV_RIS)
/* [0] IMPLICIT OriginatorInfo, as it sits in (Auth)EnvelopedData */
DECLARE_ASN1_ITEM(ENV_ORIGINFO_IMP0)
/* SET OF Attribute: universal (the GCM AAD), [1] and [2] IMPLICIT */
DECLARE_ASN1_ITEM(ENV_ATTRS)
DECLARE_ASN1_ITEM(ENV_ATTRS_IMP1)
DECLARE_ASN1_ITEM(ENV_ATTRS_IMP2)

/* A write-only base64 filter BIO (env_b64.c): lines of 76 characters for
 * S/MIME, of 64 with pem (RFC 7468), ending in CRLF or LF; BIO_flush
 * writes the final line. Push onto the sink. */
BIO *env_b64_new(bool crlf, bool pem);
/* MIME-Version, Content-* lines of an S/MIME message and the blank line. */
env_err env_write_mime_headers(BIO *out, bool auth, bool crlf);

/* Helpers shared between the source files (env_recipient.c). */
env_err env_cipher_from_algor(const X509_ALGOR *alg, bool *gcm, size_t *keylen, unsigned char *iv,
                              size_t *ivlen, size_t *taglen);
long env_recipient_version(const env_recipient *ri);
bool env_ias_matches(const ENV_IAS *ias, X509 *cert);
/* Whether every issuer Name in ri decodes as an X.509 Name; a name byte
 * for byte the issuer of one of the ncerts certs needs no decoding. */
bool env_ri_names_valid(const ENV_RI *ri, X509 *const *certs, size_t ncerts);
/* Canonical name of an AES content cipher (env_calg.c): "aes-128-cbc" ... */
const char *env_calg_name(bool gcm, size_t keylen);
env_err env_aes_unwrap(int wrap_nid, const unsigned char *kek, size_t keklen, const unsigned char *in,
                       size_t inlen, unsigned char *out, size_t outcap, size_t *outlen);

#endif
