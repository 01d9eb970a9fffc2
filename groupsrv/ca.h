/*
 * ca.h: the local CA. Its key pair lives on the token (non-extractable,
 * CKA_SIGN only); its self-signed certificate is in the store. Every
 * certificate is built with OpenSSL, its TBSCertificate DER signed on the
 * token with hsm_sign(), assembled with OpenSSL's ASN.1 API, re-parsed and
 * verified against the CA public key before it is returned.
 *
 * Threads: after gs_ca_load() a gs_ca is read-only and may be shared by all
 * threads (the hsm_ctx does its own session handling).
 *
 * Ownership: gs_ca_load/gs_ca_init return a gs_ca freed with gs_ca_free.
 * X509/EVP_PKEY/X509_REQ arguments are borrowed. Certificates returned
 * through X509 ** are new references the caller frees (X509_free).
 */
#ifndef GS_CA_H
#define GS_CA_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/x509.h>

#include "gs_error.h"
#include "hsm.h"
#include "store.h"

typedef struct gs_ca gs_ca;

/* A failed hsm call as a gs_err, its detail "WHAT[ LABEL]: what hsm says
 * (the token's detail)": GS_ERR_TOKEN (exit 4) for a module, token or PIN
 * problem, GS_ERR_POLICY for a key whose attributes forbid the use, else
 * GS_ERR_HSM. Reads hsm_last_error_detail(); LABEL may be NULL. */
gs_err gs_hsm_fail(hsm_err he, const char *what, const char *label);

/* Key specs for token key pairs: "rsa:2048", "rsa:3072", "rsa:4096",
 * "ec:p256", "ec:p384". */
gs_err gs_keyspec_parse(const char *spec, hsm_key_type *type, unsigned *bits);

/* `groupsrv ca init`: generates the CA key pair on the token under label
 * (usage SIGN only), issues the self-signed CA certificate (CN=subject_cn,
 * basicConstraints CA:TRUE critical, keyUsage keyCertSign,cRLSign
 * critical, SKI), stores it. EXISTS if the store has a CA or the label is
 * taken on the token. On any failure the token keys are destroyed again. */
gs_err gs_ca_init(gs_store *st, hsm_ctx *hsm, const char *label, const char *keyspec, const char *subject_cn,
                  unsigned days, gs_ca **out);
/* The same, with every protection the token stores (what it cannot is
 * recorded as the CA key's weakening), or with use_key (a pkcs11: URI,
 * else NULL) adopting an existing private key made by the token's own
 * tool instead of generating one: it must be sensitive, never
 * extractable and sign only (GS_ERR_POLICY naming what is wrong
 * otherwise), and carry CKA_ALLOWED_MECHANISMS where the token stores it.
 * The store records the URI as the CA's label. keyspec is ignored then.
 * An adopted key is never destroyed, also on failure. */
gs_err gs_ca_init2(gs_store *st, hsm_ctx *hsm, const char *label, const char *keyspec, const char *use_key,
                   const char *subject_cn, unsigned days, gs_ca **out);
/* The same; with replicable (RSA, generated: not with use_key) the CA key
 * is sensitive and extractable only under trusted wrap, so that the key
 * ceremony (`ca export`) can copy it to the other servers of a cluster
 * that share one database. Recorded; gs_ca_check_key and the key audit
 * accept it. */
gs_err gs_ca_init_ex(gs_store *st, hsm_ctx *hsm, const char *label, const char *keyspec, const char *use_key,
                     const char *subject_cn, unsigned days, bool replicable, gs_ca **out);
/* Loads the CA: certificate from the store, key handle from the token.
 * NOT_FOUND before `ca init`; GS_ERR_CERT if the stored certificate is
 * not the token key's. Issued certificates are verified with the public
 * key read from the token. Does not audit the key's attributes: serve's
 * startup audit does, admin commands call gs_ca_check_key. */
gs_err gs_ca_load(gs_store *st, hsm_ctx *hsm, gs_ca **out);
/* GS_ERR_POLICY (detail names the attribute) unless the CA private key
 * is sensitive, always sensitive, never extractable and unreadable: a key
 * that may have been copied must not sign (a replicable CA's key: as
 * gs_key_custody_problem, policy.h, allows). */
gs_err gs_ca_check_key(const gs_ca *ca, hsm_ctx *hsm);
/* `groupsrv ca renew-cert`: a new self-signed CA certificate for the
 * same token key, with the recorded certificate's subject (so the same
 * issuer name and key identifier: certificates issued before verify
 * against it), lifetime `days` from now (backdated 5 minutes), recorded in
 * place of the old one. ca: as gs_ca_load made it (so the recorded
 * certificate is the token key's) and passed by gs_ca_check_key, as for
 * every issue. *out: the new certificate (X509_free). */
gs_err gs_ca_renew(const gs_ca *ca, hsm_ctx *hsm, gs_store *st, unsigned days, X509 **out);
void gs_ca_free(gs_ca *ca);

X509 *gs_ca_cert(const gs_ca *ca);        /* borrowed */
hsm_key *gs_ca_key(const gs_ca *ca);      /* borrowed */

enum gs_ku { /* keyUsage bits (marked critical) */
    GS_KU_DIGITAL_SIGNATURE = 1u << 0,
    GS_KU_KEY_ENCIPHERMENT = 1u << 1,
    GS_KU_KEY_AGREEMENT = 1u << 2,
};
enum gs_eku {
    GS_EKU_CLIENT_AUTH = 1u << 0,
    GS_EKU_EMAIL_PROTECTION = 1u << 1,
    GS_EKU_SERVER_AUTH = 1u << 2,
};

typedef struct gs_cert_spec {
    EVP_PKEY *pubkey;          /* subject public key (borrowed; only public part used) */
    const char *subject_cn;    /* CN=..., or NULL */
    const char *subject_o;     /* O=..., or NULL */
    const char *subject_ou;    /* OU=..., or NULL */
    const char *san_email;     /* SAN rfc822Name, or NULL */
    const char *san_uri;       /* SAN URI, or NULL */
    const char *san_dns;       /* SAN dNSName, or NULL (server certificates for demos) */
    unsigned key_usage;        /* enum gs_ku; 0 = omit */
    unsigned ext_key_usage;    /* enum gs_eku; 0 = omit */
    long lifetime;             /* notAfter = now + lifetime seconds; > 0 */
    long backdate;             /* notBefore = now - backdate (clock skew), >= 0 */
} gs_cert_spec;

/* Issues a certificate: random positive 127-bit serial, issuer = CA
 * subject, SKI, AKI keyid, basicConstraints CA:FALSE. The subject must have
 * at least one of CN/O/OU or a SAN. Returns GS_ERR_ARGS for a bad spec,
 * GS_ERR_HSM if signing fails, GS_ERR_CRYPTO if the self-check fails. */
gs_err gs_ca_issue(const gs_ca *ca, hsm_ctx *hsm, const gs_cert_spec *spec, X509 **out);

/* The certificate server's membership certificate: from a PEM/DER CSR
 * whose self-signature is verified; the CSR's subject and extensions are
 * ignored. Subject O=groupsrv membership, OU=<group>; SAN URI
 * urn:groupsrv:group:<group>; NO identity (no CN, no email). keyUsage
 * digitalSignature + keyEncipherment (RSA) or keyAgreement (EC); EKU
 * clientAuth, emailProtection; lifetime seconds (backdated 60 s).
 * Returns GS_ERR_CERT for an invalid CSR (bad signature, weak key: RSA
 * below 2048 bits or a key type other than RSA/EC). */
gs_err gs_ca_issue_membership(const gs_ca *ca, hsm_ctx *hsm, X509_REQ *csr, const char *group, long lifetime,
                              X509 **out);
/* The same for a public key whose CSR was checked elsewhere (the key
 * holder: the network process verified the CSR's self-signature). */
gs_err gs_ca_issue_membership_key(const gs_ca *ca, hsm_ctx *hsm, EVP_PKEY *pk, const char *group, long lifetime,
                                  X509 **out);

/* Is cert a membership certificate for group (SAN URI
 * urn:groupsrv:group:<group>, valid now)? Says nothing about the issuer:
 * the TLS layer must have verified the chain to the local CA. */
bool gs_cert_is_membership_for(X509 *cert, const char *group);

/* ---- certificate helpers (no token needed) ------------------------------- */

/* The most bytes of certificate text parsed or recorded as one record. */
#define GS_CERT_RECORD_MAX 65536

/* Parses one certificate from PEM or DER bytes (at most GS_CERT_RECORD_MAX;
 * of PEM, the first). GS_ERR_CERT if invalid. */
gs_err gs_cert_parse(const unsigned char *buf, size_t len, X509 **out);
/* PEM text of cert (caller frees with free()). */
gs_err gs_cert_to_pem(X509 *cert, char **pem);
/* The identity email: first SAN rfc822Name, else subject emailAddress.
 * GS_ERR_CERT (detail "certificate has no email address") if none, or if
 * it could name no record (mailaddr_names_record). Writes a NUL-terminated
 * copy into buf. */
gs_err gs_cert_email(X509 *cert, char *buf, size_t bufsize);
/* GS_OK unless pk (what: "certificate", "CSR" for the message) is RSA below
 * 2048 bits or EC below P-256: too weak to wrap message keys to, or to
 * identify a member. Other key types pass (the caller decides what it
 * can use); GS_ERR_CERT with the detail set otherwise. */
gs_err gs_key_check_strength(EVP_PKEY *pk, const char *what);
/* GS_OK if cert is valid now (notBefore <= now <= notAfter); else
 * GS_ERR_CERT with the detail naming what and the date in UTC, e.g.
 * "certificate expired on 2020-01-02 00:00:00 UTC". A certificate that
 * no peer would accept now is refused where it is recorded, not at its
 * first use. */
gs_err gs_cert_check_valid_now(X509 *cert, const char *what);
/* Does cert carry exactly the public key given as DER SubjectPublicKeyInfo? */
bool gs_cert_matches_spki(X509 *cert, const unsigned char *spki, size_t spki_len);
/* SHA-256 fingerprint of the DER certificate, lowercase hex (65 bytes). */
void gs_cert_fingerprint(X509 *cert, char out[65]);
/* The same fingerprint of a certificate as recorded (PEM or DER text, as
 * gs_cert_parse reads it), without decoding its public key when the
 * record is one plain PEM certificate in DER: what a listing of many
 * records shows. GS_ERR_CERT (out "") when gs_cert_parse would refuse it. */
gs_err gs_cert_record_fingerprint(const char *text, char out[65]);

#endif
