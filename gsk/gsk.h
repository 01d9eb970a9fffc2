/*
 * gsk.h: the key ceremony's files and token steps, shared by groupsrv
 * (server clones: `group export`, `group import`, `token transport-key`)
 * and groupmail (option C on a member's own token: `keys transport-key`,
 * `keys import-group-key`). The format is documented in docs/operations.md
 * ("The key shipment file"); the token side is hsm/replicate.c.
 *
 * Two files travel:
 *  - the transport key file: PEM SubjectPublicKeyInfo of an RSA-3072 key
 *    made on the receiving token (unwrap only, never extractable), after
 *    a few text lines giving its label, token and SHA-256 fingerprint;
 *  - the key shipment (.gsk), DER:
 *      KeyShipment ::= SEQUENCE {
 *          format    UTF8String ("groupsrv-key-shipment-1"),
 *          manifest  OCTET STRING,   -- JSON text (UTF-8), see below
 *          signature OCTET STRING }  -- over the manifest octets, by the
 *                                       CA key on the sending token
 *    The signature algorithm follows the CA key: RSASSA-PKCS1-v1_5 with
 *    SHA-256, or ECDSA with SHA-256 (DER Ecdsa-Sig-Value). The manifest
 *    names group, key versions, labels, CKA_IDs, certificates and the
 *    wrapped keys; every byte outside it is fixed by DER or checked, so a
 *    file changed anywhere is refused.
 *
 * Errors: functions return a gsk_err and never print or exit;
 * gsk_err_detail() has a one-line reason (thread-local, never secret).
 * Ownership: _new/_parse results are freed with the matching _free
 * (NULL fine); buffers returned through unsigned char ** / char ** are
 * malloc'd and owned by the caller. X509 and hsm_* arguments are borrowed.
 */
#ifndef GS_GSK_H
#define GS_GSK_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/x509.h>

#include "hsm.h"

typedef enum gsk_err {
    GSK_OK = 0,
    GSK_ERR_NOMEM,
    GSK_ERR_ARGS,
    GSK_ERR_FORMAT,    /* not a key shipment or transport key file, or malformed */
    GSK_ERR_SIGNATURE, /* the signature does not verify: the file was changed */
    GSK_ERR_SIGNER,    /* signed by a CA other than the trusted one */
    GSK_ERR_TRANSPORT, /* made for a transport key this token does not hold */
    GSK_ERR_EXISTS,    /* a key of the shipment (label or CKA_ID) is already on the token */
    GSK_ERR_TOKEN,     /* token unreachable, wrong PIN (user or SO), PIN locked */
    GSK_ERR_POLICY,    /* a key cannot be copied (not replicable) or its copy has wrong attributes */
    GSK_ERR_PROOF,     /* an imported key failed the decryption test against its certificate */
    GSK_ERR_HSM,       /* any other token failure (detail has hsm's text) */
} gsk_err;

const char *gsk_strerror(gsk_err err);
const char *gsk_err_detail(void);

#define GSK_FORMAT "groupsrv-key-shipment-1"
#define GSK_FILE_MAX (4u * 1024u * 1024u) /* a shipment file is at most this big */
#define GSK_KEYS_MAX 256u
#define GSK_TRANSPORT_PREFIX "gs:transport:"
#define GSK_TRANSPORT_BITS 3072u

/* ---- the manifest ------------------------------------------------------- */

typedef enum gsk_kind {
    GSK_KIND_GROUP = 1, /* a group private key version (RSA), with its certificate */
    GSK_KIND_SECRET,    /* a group secret key version (AES-256, wrap only) */
    GSK_KIND_REJECT,    /* the implicit-rejection HMAC key */
    GSK_KIND_CA,        /* the local CA key (RSA), with its certificate: for servers that share
                           one database (a cluster); alone in its shipment */
} gsk_kind;
const char *gsk_kind_name(gsk_kind k); /* "group", "secret", "reject", "ca" */

typedef struct gsk_key {
    gsk_kind kind;
    unsigned version;          /* group and secret keys: 1, 2, ...; reject and ca: 0 */
    bool current;              /* the version was current when exported */
    char label[128];           /* CKA_LABEL, the same on both tokens */
    unsigned char id[64];      /* CKA_ID, the same on both tokens */
    size_t id_len;
    char *cert_pem;            /* group: the certificate of this version; ca: the CA's (PEM) */
    unsigned char kek_id[16];  /* secret: the KEKRecipientInfo key identifier */
    unsigned char *wrapped;    /* the key under the one-time key, RFC 5649 */
    size_t wrapped_len;
} gsk_key;

typedef struct gsk_manifest {
    char ceremony[33];         /* random hex id; both sides' audit records name it */
    char created[32];          /* UTC, 2025-01-31T12:00:00Z */
    char exported_by[65];      /* who ran the export (the operator's login name) */
    char source_token[100];    /* "label (serial N)" of the sending token */
    char signer_ca_sha256[65]; /* SHA-256 of the signing CA certificate (DER), hex */
    char signer_algorithm[32]; /* "sha256WithRSAEncryption" or "ecdsa-with-SHA256" */
    char transport_sha256[65]; /* SHA-256 of the transport key's DER SPKI, hex */
    bool complete;             /* every non-retired key of the group is in it (export --all):
                                  enough to set the group up on a server that lacks it */
    hsm_oaep_hash kek_hash;    /* RSA-OAEP hash that wrapped the one-time key */
    unsigned char *wrapped_kek;
    size_t wrapped_kek_len;
    struct {                   /* absent (name "") in a CA shipment */
        char name[65];
        char address[255];
        char methods[128];     /* canonical comma list, e.g. "tls,recipient-key,local-key" */
        char keyspec[16];      /* "rsa:3072" */
        bool allow_pkcs1v15;
        bool replicable;
        char member_wrap[16];  /* "oaep" or "pkcs1v15"; "" in files from before it was shipped */
        char policy[128];      /* the group's key policy text (groupsrv/policy.h); "" = none recorded */
    } group;
    gsk_key *entries;          /* n_entries (1..GSK_KEYS_MAX) */
    size_t n_entries;
} gsk_manifest;

/* An empty manifest with room for n keys (fields zero). */
gsk_err gsk_manifest_new(size_t n_entries, gsk_manifest **out);
void gsk_manifest_free(gsk_manifest *m);

/* ---- the shipment file -------------------------------------------------- */

/* Signs data with the CA key: *sig malloc'd. Returns 0, or -1 with
 * gsk_set_detail-style text left to the caller's own error channel. */
typedef int (*gsk_sign_fn)(void *arg, const unsigned char *data, size_t len, unsigned char **sig, size_t *siglen);

/* Fills m's signer fields from ca_cert, serialises the manifest, signs it
 * with sign(arg, ...) and encodes the file. The signature is checked
 * against ca_cert before the file is returned (GSK_ERR_SIGNATURE if the
 * token signed with another key). */
gsk_err gsk_shipment_write(gsk_manifest *m, X509 *ca_cert, gsk_sign_fn sign, void *arg, unsigned char **der,
                           size_t *der_len);

/* Decodes a shipment and accepts it only if: it is exactly one DER
 * KeyShipment (nothing before or after, canonical encoding, the format
 * string above); its signature verifies with trusted_ca's public key
 * (else GSK_ERR_SIGNER when the manifest names another CA, or
 * GSK_ERR_SIGNATURE); its manifest is well formed (GSK_ERR_FORMAT with
 * the field named) and names trusted_ca as its signer. */
gsk_err gsk_shipment_read(const unsigned char *der, size_t len, X509 *trusted_ca, gsk_manifest **out);

/* Index of the key of kind k and version v (v ignored for REJECT and CA), or -1. */
long gsk_manifest_find(const gsk_manifest *m, gsk_kind k, unsigned v);

/* ---- transport keys ----------------------------------------------------- */

/* Hex SHA-256 of a DER SPKI (the fingerprint), and its spoken form:
 * 16 groups of 4 hex digits separated by spaces (80 bytes). */
void gsk_fingerprint(const unsigned char *spki, size_t len, char hex[65]);
void gsk_fingerprint_spoken(const char hex[65], char out[80]);

/* Makes a transport key pair on the token: RSA-3072, label
 * "gs:transport:<16 hex>" (random, also its CKA_ID), private key unwrap
 * only, sensitive, never extractable (read back, else GSK_ERR_POLICY and
 * the pair is destroyed). *pem gets the transport key file text (the
 * lines above, then the PEM public key); fp its fingerprint; label_out
 * (>= 64 bytes, may be NULL) its label. token_desc names the token in the
 * file's text ("label (serial N)"). */
gsk_err gsk_transport_make(hsm_ctx *hsm, const char *token_desc, char **pem, char fp[65], char *label_out,
                           size_t label_cap);

/* Parses a transport key file (the text lines are ignored): an RSA public
 * key of at least 3072 bits. *spki malloc'd. GSK_ERR_FORMAT otherwise. */
gsk_err gsk_transport_read(const unsigned char *text, size_t len, unsigned char **spki, size_t *spki_len, char fp[65]);

/* The RSA-OAEP hashes the receiving token unwraps with, from the file's
 * "unwraps:" line (gsk_transport_make writes it after trials on the new
 * key): *mask gets bits (1u << HSM_OAEP_SHA1 / _SHA256); 0 when the file
 * has no such line (made by an older groupsrv: any hash). GSK_ERR_FORMAT
 * for a line that names no hash this program knows. */
gsk_err gsk_transport_hashes(const unsigned char *text, size_t len, unsigned *mask);

/* The private transport key on this token whose public key has the
 * fingerprint fp (labels starting "gs:transport:"). GSK_ERR_TRANSPORT if
 * none. */
gsk_err gsk_transport_find(hsm_ctx *hsm, const char fp[65], hsm_key **out);

/* Deletes the transport key pair whose private half is priv (from
 * gsk_transport_find): the private key first (the half that unwraps a
 * file made for it), then the public key object with its label and its
 * key (none is fine: deleted by hand; another object given the label is
 * left alone). The import's last step (SECURITY.md, "The receiving
 * token's user PIN and the file"): while the pair and a .gsk file made
 * for it both exist, the user PIN gives the file's keys in the clear to
 * any PKCS#11 program. GSK_ERR_TOKEN (token gone) or GSK_ERR_HSM, the
 * detail naming the half left on the token; *public_only (may be NULL)
 * says whether the private half went and only the public one is left. */
gsk_err gsk_transport_destroy(hsm_ctx *hsm, hsm_key *priv, bool *public_only);

/* The pkcs11-tool command that deletes the transport key labelled label
 * by hand (both halves; the public half alone if public_only), for the
 * lines of groupsrv and groupmail that say what is left and how to
 * delete it: one text, so the two programs cannot drift apart.
 * GSK_ERR_ARGS if it does not fit in cap. */
gsk_err gsk_transport_delete_cmd(const char *label, bool public_only, char *out, size_t cap);

/* ---- the token steps --------------------------------------------------- */

/* Export: wraps keys[i] (the token object of m->entries[i], i < m->n_entries)
 * for the transport key spki, with the SO PIN (see
 * hsm_replica_export_run), the one-time key with an RSA-OAEP hash in
 * unwraps (gsk_transport_hashes; 0: any); fills m->entries[i].wrapped, m->wrapped_kek,
 * m->kek_hash and m->transport_sha256. GSK_ERR_TOKEN for a wrong SO PIN
 * (detail says so), GSK_ERR_POLICY for a key that cannot be wrapped. */
gsk_err gsk_export(hsm_ctx *hsm, const char *so_pin, size_t so_pin_len, const unsigned char *spki, size_t spki_len,
                   unsigned unwraps, gsk_manifest *m, hsm_key *const *keys);

/* What one imported key becomes on the receiving token. */
typedef struct gsk_import_item {
    size_t index;   /* into m->entries */
    unsigned usage; /* enum hsm_usage bits of the copy (group: UNWRAP and/or DECRYPT,
                       + PKCS1V15; secret: WRAP; reject and ca: SIGN) */
    bool extractable; /* secret keys only: leaves wrapped (group secret keys) */
} gsk_import_item;

/* Import: finds the transport key (GSK_ERR_TRANSPORT), unwraps items
 * (1..GSK_KEYS_MAX) as sensitive, never extractable token objects with the
 * shipment's labels and CKA_IDs (GSK_ERR_EXISTS if one is taken; group
 * and CA keys also get their public key object from the certificate), and
 * proves each group key is its certificate's by a decryption test inside
 * the token (a random key encrypted to the certificate with RSA-OAEP, then
 * C_Decrypt, or for an unwrap-only key C_UnwrapKey and a wrap out to a
 * throw-away key), a CA key by a signature that its certificate's key
 * verifies (GSK_ERR_PROOF otherwise). All or nothing: on any
 * failure every object made is destroyed again. out[i] (may be NULL)
 * gets a reference to copy i (caller frees). */
gsk_err gsk_import(hsm_ctx *hsm, const gsk_manifest *m, const gsk_import_item *items, size_t n, hsm_key **out);

/* The operator's login name for audit records ("uid N" if unknown). */
void gsk_operator(char *buf, size_t cap);

#endif
