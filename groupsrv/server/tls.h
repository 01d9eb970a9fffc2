/*
 * tls.h: TLS contexts of the server and per-request client authentication.
 * Owned by groupsrv/server/ (the network process).
 *
 * A tls_state bundles an SSL_CTX (server certificate and key, TLS 1.2/1.3,
 * modern ciphers, session tickets) with the X509_STOREs used to verify
 * client certificates on every request. It is reference counted so SIGHUP
 * can swap in a new one while connections made with the old one finish.
 *
 * The TLS layer asks for a client certificate but accepts a connection
 * without one (or with an untrusted one): /healthz and discovery work for
 * anyone, and refusals are JSON 401/403 answers, decided per request by
 * tls_peer_check() at the time of the request. A connection remembers its
 * last successful chain verification for the same certificate and the
 * same tls_state (a reload makes a new one), until the chain's earliest
 * notAfter and at most 60 s, and an untrusted chain's refusal for 60 s
 * (not one that time may change: expired, not yet valid); membership is
 * read from the store on every request.
 */
#ifndef GS_SRV_TLS_H
#define GS_SRV_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

typedef struct tls_state tls_state;

/* Everything comes as bytes: the network process opens no files once it
 * is sandboxed (the supervisor reads them, at start and on SIGHUP). */
typedef struct tls_opts {
    const char *cert_pem;        /* server certificate chain, PEM */
    size_t cert_len;
    const char *key_pem;         /* its key, PEM (RSA or ECDSA); NULL when token_key is given */
    size_t key_len;
    EVP_PKEY *token_key;         /* [tls] key = pkcs11:URI: the key holder signs (tls_tokenkey.h); borrowed */
    const char *client_ca_pem;   /* CAs for member/admin client certificates (PEM, may hold CRLs); may be NULL */
    size_t client_ca_len;
    X509 *local_ca;              /* the local CA (membership certificates); may be NULL (borrowed) */
} tls_opts;

/* Builds a new state; on failure *out is NULL and errbuf says why. */
int tls_state_new(const tls_opts *opts, tls_state **out, char *errbuf, size_t errlen);
void tls_state_ref(tls_state *st);
void tls_state_unref(tls_state *st);
SSL_CTX *tls_state_ctx(tls_state *st); /* borrowed */

/* The process-wide current state (swapped by SIGHUP reload). get returns a
 * new reference (unref it). set takes a reference of its own. */
tls_state *tls_current_get(void);
void tls_current_set(tls_state *st);

typedef enum peer_status {
    PEER_NONE = 0,      /* no client certificate */
    PEER_UNTRUSTED,     /* chain does not verify (unknown CA, bad signature, revoked) */
    PEER_EXPIRED,       /* not yet valid or expired, now */
    PEER_NO_IDENTITY,   /* verified but neither email nor CN */
    PEER_MEMBER_CERT,   /* verified identity certificate: identity[] is set */
    PEER_MEMBERSHIP,    /* verified anonymous membership certificate: group[] is set */
} peer_status;

typedef struct peer_info {
    peer_status status;
    char identity[256]; /* gs_cert_identity (certname.h) */
    char group[72];     /* membership certificates: the group they were issued for */
    X509 *cert;         /* the peer certificate (borrowed from the SSL session) */
} peer_info;

/* Verifies the peer certificate of ssl now, against the stores of st: an
 * identity certificate against the client CAs, a membership certificate
 * (SAN URI urn:groupsrv:group:...) against the local CA only; or reuses
 * the connection's remembered verification (see above). */
void tls_peer_check(tls_state *st, SSL *ssl, peer_info *out);

/* ex_data slot on SSL objects used by the server to count connections. */
int tls_conn_index(void);
void tls_set_conn_free_cb(void (*cb)(void *arg));

#endif
