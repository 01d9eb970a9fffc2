/*
 * restclient.h: a small libcurl client of the group server REST API v1
 * (docs/api.md, DESIGN.md "REST API"). Used by groupmail and the exploder.
 *
 * One gs_rest handle = one libcurl easy handle: connections are kept alive
 * and reused across calls. A handle is NOT thread-safe: use one per thread.
 *
 * TLS: HTTPS only, TLS 1.2 or newer, the server verified against ca_file
 * (else the system store), optionally pinned to a public key. The client
 * certificate and key (mutual TLS) come from PEM files or PEM bytes in
 * memory, or the certificate from a file and the key as an OpenSSL
 * EVP_PKEY (client_pkey: a key on a PKCS#11 token made by hsm_key_evp_pkey,
 * so the private key never leaves the token); that needs libcurl built
 * with OpenSSL, checked at run time (see docs/groupmail.1.md).
 *
 * Errors: every call returns a gs_rest_err. After a failed call the handle
 * keeps the HTTP status, the server's error code and message (sanitised,
 * printable ASCII) and a transport detail, until the next call.
 *
 * Ownership: outputs are cleared on entry and filled only on GS_REST_OK;
 * they are malloc'd and released with the matching *_clear or *_free.
 * Content keys (gs_unwrap_result.key) are wiped by gs_unwrap_result_clear.
 * Input pointers are borrowed for the duration of the call only, except
 * that gs_rest_new copies everything it keeps (the key PEM is wiped on
 * gs_rest_free).
 */
#ifndef GS_RESTCLIENT_H
#define GS_RESTCLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum gs_rest_err {
    GS_REST_OK = 0,
    GS_REST_ERR_NOMEM,
    GS_REST_ERR_ARGS,         /* caller passed something invalid (URL, sizes, missing field) */
    GS_REST_ERR_CLIENT_CERT,  /* our client certificate/key could not be loaded */
    GS_REST_ERR_UNREACHABLE,  /* DNS, connect refused, connection dropped or answer cut short */
    GS_REST_ERR_TIMEOUT,      /* connect or whole-request timeout, or HTTP 408 */
    GS_REST_ERR_TLS,          /* handshake failed, server certificate not trusted */
    GS_REST_ERR_PIN,          /* server public key does not match the pin */
    GS_REST_ERR_UNAUTHORIZED, /* HTTP 401: no (acceptable) client certificate */
    GS_REST_ERR_FORBIDDEN,    /* HTTP 403: not a member / refused */
    GS_REST_ERR_NOT_FOUND,    /* HTTP 404: no such group (or endpoint) */
    GS_REST_ERR_RATE_LIMITED, /* HTTP 429 */
    GS_REST_ERR_UNAVAILABLE,  /* HTTP 503: token unreachable, try later */
    GS_REST_ERR_REJECTED,     /* other 4xx (400 bad request, 405, 413, unwrap_failed...) */
    GS_REST_ERR_SERVER,       /* other 5xx */
    GS_REST_ERR_BAD_ANSWER,   /* malformed JSON/base64/PEM, missing fields, not JSON by its
                                 Content-Type, unexpected status (1xx, 3xx: redirects are
                                 never followed), not HTTP */
    GS_REST_ERR_TOO_LARGE,    /* response body over max_response, or a header over libcurl's cap */
    GS_REST_ERR_CA_FILE,      /* our ca_file (CAs or CRLs) could not be read: a local error */
    GS_REST_ERR_PIN_FORMAT,   /* our pinned_pubkey is neither sha256//BASE64 of 32 bytes (;-separated)
                                 nor a readable regular file with one public key: a local error */
} gs_rest_err;

/* Static text for an error code. */
const char *gs_rest_strerror(gs_rest_err err);

typedef struct gs_rest gs_rest;

typedef struct gs_rest_opts {
    const char *base_url;      /* "https://host:port" of the group server (required);
                                  a trailing "/" is ignored */
    const char *cert_file;     /* client certificate, PEM file (may hold the chain); NULL = none */
    const char *key_file;      /* its private key, PEM file; NULL = in cert_file */
    /* Alternatively the client certificate and key as PEM bytes (used for
     * membership certificates made in memory). Ignored when cert_file set. */
    const unsigned char *cert_pem;
    size_t cert_pem_len;
    const unsigned char *key_pem; /* copied; the copy is wiped on gs_rest_free */
    size_t key_pem_len;
    const char *ca_file;       /* CAs that verify the server; NULL = system store */
    const char *pinned_pubkey; /* "sha256//BASE64[;sha256//...]" or a PEM/DER
                                  public key file; NULL = no pin */
    long connect_timeout_ms;   /* 0 = 10000 */
    long timeout_ms;           /* whole request; 0 = 30000 */
    size_t max_response;       /* response body cap; 0 = 4 MiB */
    const char *user_agent;    /* NULL = "groupsrv-restclient/VERSION" */
    /* The client key as an OpenSSL EVP_PKEY (an EC key on a token from
     * hsm_key_evp_pkey), with the certificate (and chain) from cert_file;
     * key_file and the PEM bytes are then not used. Installed into each
     * connection's SSL_CTX by CURLOPT_SSL_CTX_FUNCTION, so libcurl must use
     * OpenSSL: otherwise, or if the key does not match the certificate,
     * gs_rest_new fails with GS_REST_ERR_CLIENT_CERT (and logs why). The
     * handle takes its own reference (EVP_PKEY_up_ref), released by
     * gs_rest_free; whatever the key borrows (the hsm_ctx) must outlive
     * the handle. NULL = not used. */
    struct evp_pkey_st *client_pkey;
} gs_rest_opts;

/* Does this libcurl take client_pkey (is its TLS backend OpenSSL)? If not
 * and backend is not NULL, *backend is its TLS library ("GnuTLS/3.7.9"). */
bool gs_rest_pkey_supported(const char **backend);

/* Makes a handle; checks the URL is https:// and the sizes are sane. Does
 * not connect. *out is NULL on failure. */
gs_rest_err gs_rest_new(const gs_rest_opts *opts, gs_rest **out);

/* Whether url can name a group or certificate server: https://, 9 to
 * 2048 bytes. What gs_rest_new and gs_rest_membership_certificate take. */
bool gs_rest_url_ok(const char *url);
/* Why gs_rest_url_ok refuses url, in words for an error line ("it must be
 * https://"); NULL when it takes it. Static text. */
const char *gs_rest_url_why(const char *url);
/* Closes connections, wipes the in-memory key. NULL is fine. */
void gs_rest_free(gs_rest *r);

/* Details of the last call (valid until the next call on r). */
long gs_rest_last_status(const gs_rest *r);        /* HTTP status; 0 = no answer */
const char *gs_rest_last_code(const gs_rest *r);    /* server error code ("not_a_member"), "" if none */
const char *gs_rest_last_message(const gs_rest *r); /* server error message, sanitised, "" if none */
const char *gs_rest_last_detail(const gs_rest *r);  /* transport detail (libcurl text), "" if none */
long gs_rest_last_retry_after(const gs_rest *r);    /* Retry-After seconds on 429/503, else -1 */

/* ---- GET /v1/groups/{g} ---------------------------------------------- */

typedef struct gs_group_info {
    char *name;
    char *address;            /* list address; "" if absent */
    char *certificate_server; /* "https://host:port"; "" if absent */
    char **methods;           /* e.g. "tls", "recipient-key", "membership-cert", "group-secret" */
    size_t n_methods;
    uint64_t *key_versions;
    size_t n_key_versions;
    /* Key transports the group accepts ("RSA-OAEP", "RSA-OAEP-256",
     * "RSA-PKCS1-v1_5", "ECDH"); kt_algs_known is false when the
     * server did not say (servers before issue 14). */
    char **kt_algs;
    size_t n_kt_algs;
    bool kt_algs_known;
} gs_group_info;
void gs_group_info_clear(gs_group_info *gi);
gs_rest_err gs_rest_group_info(gs_rest *r, const char *group, gs_group_info *out);

/* ---- GET /v1/groups/{g}/certificate ----------------------------------- */

/* The group certificate chain, PEM text (checked to hold at least one
 * certificate block, not parsed further). *pem is NUL-terminated; caller frees. */
gs_rest_err gs_rest_group_certificate(gs_rest *r, const char *group, char **pem, size_t *len);

/* ---- POST /v1/groups/{g}/unwrap and unwrap-batch ---------------------- */

typedef enum gs_deliver {
    GS_DELIVER_TLS = 0,        /* the plain content key, over mutual TLS (method F) */
    GS_DELIVER_RECIPIENT_KEY,  /* a KTRI to the caller's certificate (methods E, G) */
    GS_DELIVER_GROUP_SECRET,   /* a KEKRecipientInfo under the group secret key */
} gs_deliver;
const char *gs_deliver_name(gs_deliver d); /* "tls", "recipient-key", "group-secret" */

typedef struct gs_unwrap_req {
    /* Either a DER RecipientInfo ... */
    const unsigned char *recipient_info;
    size_t recipient_info_len;
    /* ... or the bare encrypted key with its algorithm. */
    const unsigned char *encrypted_key;
    size_t encrypted_key_len;
    const char *algorithm;     /* "RSA-OAEP" | "RSA-OAEP-256" */
    gs_deliver deliver;
    /* The message's content-encryption algorithm (a name such as
     * "aes-128-cbc" or the OID from EncryptedContentInfo), sent as
     * "content_algorithm" so the server knows the content key's length
     * (needed for PKCS#1 v1.5, checked for RSA-OAEP). NULL: not sent. */
    const char *content_algorithm;
} gs_unwrap_req;

typedef struct gs_unwrap_result {
    unsigned char *key;             /* deliver=tls: the content key (secret) */
    size_t key_len;
    unsigned char *recipient_info;  /* otherwise: DER RecipientInfo */
    size_t recipient_info_len;
    int64_t key_version;            /* group key version used; -1 if not given */
    int64_t secret_version;         /* group-secret: secret key version; -1 if not given */
} gs_unwrap_result;
/* Wipes the key and frees everything; leaves the struct zeroed (versions -1). */
void gs_unwrap_result_clear(gs_unwrap_result *res);

gs_rest_err gs_rest_unwrap(gs_rest *r, const char *group, const gs_unwrap_req *req, gs_unwrap_result *out);

#define GS_REST_BATCH_MAX 64
/* Several unwraps in one request (n <= GS_REST_BATCH_MAX). The call result
 * is about the request as a whole; on GS_REST_OK each item has its own
 * result in item_errs[i] (GS_REST_OK, or GS_REST_ERR_FORBIDDEN/REJECTED/...
 * from the item's error code) and, when OK, outs[i]. */
gs_rest_err gs_rest_unwrap_batch(gs_rest *r, const char *group, const gs_unwrap_req *reqs, size_t n,
                                 gs_unwrap_result *outs, gs_rest_err *item_errs);

/* ---- POST /v1/groups/{g}/rewrap (the exploder) ------------------------ */

typedef enum gs_rewrap_to {
    GS_REWRAP_GROUP_SECRET = 1, /* one KEKRecipientInfo */
    GS_REWRAP_MEMBERS,          /* one KTRI per current member certificate */
} gs_rewrap_to;

typedef struct gs_ri_list {
    unsigned char **der; /* n DER RecipientInfos */
    size_t *len;
    size_t n;
    /* GS_REWRAP_MEMBERS: the member address of each der[i] (the answer's
     * "members"), or NULL when the server did not name them. */
    char **member;
} gs_ri_list;
void gs_ri_list_clear(gs_ri_list *l);

/* Sends one DER RecipientInfo (the group's) and gets the re-wrapped
 * RecipientInfo(s). STABLE: the exploder links against this. */
gs_rest_err gs_rest_rewrap(gs_rest *r, const char *group, const unsigned char *ri, size_t ri_len,
                           gs_rewrap_to to, gs_ri_list *out);
/* The same with the message's content algorithm (see gs_unwrap_req; NULL:
 * not sent). A "members" list in the answer that does not match the RIs
 * one for one is GS_REST_ERR_BAD_ANSWER. */
gs_rest_err gs_rest_rewrap_alg(gs_rest *r, const char *group, const unsigned char *ri, size_t ri_len,
                               gs_rewrap_to to, const char *content_algorithm, gs_ri_list *out);
/* The max_response a GS_REWRAP_MEMBERS answer for `members` members
 * needs: the 4 MiB default and 2 KiB a member (one RecipientInfo is about
 * 600 bytes of JSON for an RSA-2048 member key, 950 for RSA-4096, with
 * its member's address), counting at most 65,536 members (what the server
 * re-wraps to in one call). 10,000 members: 24 MiB. */
size_t gs_rest_members_answer_cap(size_t members);

/* ---- GET /v1/groups/{g}/secret-keys ----------------------------------- */

typedef struct gs_secret_key {
    uint64_t version;
    unsigned char *kek_id;      /* the KEKRI key identifier of this version */
    size_t kek_id_len;
    unsigned char *wrapped_key; /* the secret key RSA-OAEP-wrapped to our certificate key */
    size_t wrapped_key_len;
    char algorithm[32];         /* "RSA-OAEP" | "RSA-OAEP-256" */
} gs_secret_key;

typedef struct gs_secret_keys {
    gs_secret_key *keys;
    size_t n;
} gs_secret_keys;
void gs_secret_keys_clear(gs_secret_keys *s);
gs_rest_err gs_rest_secret_keys(gs_rest *r, const char *group, gs_secret_keys *out);

/* ---- POST {certsrv}/v1/groups/{g}/membership-certificates ------------- */

/* Sends a PEM CSR (Content-Type application/pkcs10) to the certificate
 * server at certsrv_url ("https://host:port"; NULL = the handle's base URL),
 * with the handle's TLS settings, and returns the PEM certificate
 * (NUL-terminated; caller frees). */
gs_rest_err gs_rest_membership_certificate(gs_rest *r, const char *certsrv_url, const char *group,
                                           const char *csr_pem, size_t csr_len, char **cert_pem,
                                           size_t *cert_len);

#endif
