/*
 * gm.h: internals of the groupmail program (not a library: these may
 * print and decide exit codes). See docs/groupmail.1.md.
 */
#ifndef GS_GM_H
#define GS_GM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "envelope.h"
#include "hsm.h"
#include "outfile.h"
#include "restclient.h"

/* Exit codes (documented in docs/groupmail.1.md). */
enum gm_exit {
    GM_EXIT_OK = 0,
    GM_EXIT_ERROR = 1,       /* local problem: files, configuration, token */
    GM_EXIT_USAGE = 2,
    GM_EXIT_REFUSED = 3,     /* not a member, refused by the server */
    GM_EXIT_UNREACHABLE = 4, /* server unreachable or unusable (TLS, pin, garbage, 5xx) */
    GM_EXIT_BAD_MESSAGE = 5, /* not a message for this group, tampered, malformed */
    GM_EXIT_TRANSPORT_LEFT = 6, /* keys import-group-key: imported, but the transport key could not be deleted */
};

/* Everything a command may need, merged from config file, environment
 * and flags (flags win). Strings are malloc'd, NULL when unset. */
typedef struct gm_config {
    char *config_file;
    char *server, *group, *cacert, *pin, *certsrv, *group_ca, *group_cert;
    char *cert, *key, *tls_cert, *tls_key;
    char *hsm_module, *hsm_token, *hsm_pin_source, *group_key;
    char *store;
    char *smtp, *from, *to;
    char *smtp_cacert; /* CA file for an smtps:// server (default: the system's store) */
    char *smtp_user, *smtp_password_file; /* AUTH at a submission server; where its password is, never the password */
    char *smtp_auth_in_clear;             /* [smtp] auth_in_clear: no (NULL), loopback or yes */
    char *via, *in, *out, *recipient_info;
    char *content_algorithm; /* unwrap --recipient-info: the message's content algorithm */
    char *oaep;    /* sha1 | sha256 (encrypt) */
    char *format;  /* smime | pem | der (encrypt output) */
    long timeout;  /* seconds */
    bool cbc, mime, repin, verbose, quiet, encrypt_first;
    bool keep_transport_key; /* keys import-group-key: the transport key stays (more files made for it) */
    /* smtp:// only: [smtp] starttls, or --smtp-starttls (required) */
    enum { GM_STARTTLS_UNSET = 0, GM_STARTTLS_NO, GM_STARTTLS_YES, GM_STARTTLS_REQUIRED } smtp_starttls;
    /* given as flags (not from the file or the environment): a flag that
     * asks for TLS where the connection has none is a usage error */
    bool smtp_starttls_flag, smtp_cacert_flag;
} gm_config;

void gm_config_clear(gm_config *c);
/* Loads `path` (INI) into c for keys still unset. Missing file: ok when
 * !required. Returns 0, or -1 after printing an error. */
int gm_config_load_file(gm_config *c, const char *path, bool required);
/* The same from an open stream (name is for messages). */
int gm_config_load_stream(gm_config *c, FILE *f, const char *name);
/* Fills keys still unset from GROUPMAIL_* environment variables. */
int gm_config_load_env(gm_config *c);
/* Default config path: $XDG_CONFIG_HOME/groupmail/config or
 * ~/.config/groupmail/config. Caller frees; NULL if no HOME. */
char *gm_default_config_path(void);
char *gm_default_store_path(void);

/* ---- messages to the user ------------------------------------------ */
void gm_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void gm_progress(const gm_config *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Exit code and one-line error for a REST failure. */
int gm_rest_fail(gs_rest *r, gs_rest_err err, const char *what);
int gm_env_exit(env_err e);
/* Whether --in names the standard input stream itself ("-", which
 * parse_options keeps as "/dev/stdin", or /dev/stdin as typed): read from
 * descriptor 0, never opened anew (a socket on stdin cannot be opened,
 * and a file opened anew is read from its start, not where the stream
 * is). */
bool gm_in_is_stdin(const char *in);

/* ---- the local store (pins, secret keys, membership certificates) ---- */
/* "<group>@<host_port>" made filename-safe, from server URL and group:
 * the host in lower case, without a trailing dot, userinfo or ":443", so
 * that one server has one pin however its URL is typed. 0, or -1 (NULL,
 * too long). */
int gm_store_id(const char *server, const char *group, char *out, size_t outsz);
/* The same with the host and port as typed: the name of the store's
 * entries before it was read so (gm_store.c moves them). */
int gm_store_id_as_typed(const char *server, const char *group, char *out, size_t outsz);
/* Path under the store dir (created 0700); caller frees. */
char *gm_store_path(const gm_config *c, const char *sub, const char *name);

/* ---- the member's own identity --------------------------------------- */
typedef struct gm_member {
    X509 *cert;      /* the member certificate (--cert) */
    EVP_PKEY *pkey;  /* its key from a file, or NULL */
    hsm_ctx *hsm;    /* or on a token (--key pkcs11:...) */
    hsm_key *hkey;
} gm_member;
int gm_member_load(const gm_config *c, gm_member *m);
void gm_member_clear(gm_member *m);
/* RSA-OAEP decrypt of a small secret (content key, secret key) with the
 * member key; sha256 picks the OAEP hash. 0 or -1 (error printed). */
int gm_member_oaep_decrypt(gm_member *m, bool sha256, const unsigned char *in, size_t inlen, unsigned char *out,
                           size_t outcap, size_t *outlen);
/* Content key from a RecipientInfo (KTRI) addressed to the member. */
int gm_member_decrypt_ri(gm_member *m, const env_recipient *ri, unsigned char *cek, size_t cekcap, size_t *ceklen);

/* Opens the [hsm] token for a key URI (token from [hsm] token, else the
 * token attributes of the URI; PIN from [hsm] pin_source or pin-source=). */
int gm_hsm_open_for(const gm_config *c, const char *key_uri, hsm_ctx **ctx, hsm_key **key);
/* The same token opening without a key: token from [hsm] token (--token),
 * else the token attributes of uri; PIN from [hsm] pin_source, else the
 * pin-source= of uri or of the token URI. 0, or -1 (error printed). */
int gm_hsm_open_token(const gm_config *c, const char *uri, hsm_ctx **ctx);

/* buf written to --out as every command's --out is (common/outfile.h): a
 * file replaced by rename, or a named pipe, device or /dev/stdout written
 * to, never renamed over; in two steps, for a command that makes what it
 * writes: gm_out_open opens --out first (a named pipe's open waits for its
 * reader, before anything is made), gm_out_put writes buf to *uo and
 * commits it (uo freed either way; util_out_abort drops it unwritten).
 * *w says what was written (util_out_take_back takes a replaced file
 * back). GM_EXIT_OK, or an exit code (error printed). */
int gm_out_open(const gm_config *c, mode_t mode, util_out **uo);
int gm_out_put(const gm_config *c, util_out *uo, const void *buf, size_t len, util_out_written *w);

/* ---- the key ceremony, member side (gm_ceremony.c) ------------------- */
/* keys transport-key --token URI --out FILE: a transport key on the
 * member's token. keys import-group-key --in FILE.gsk --token URI: the
 * group key versions of a shipment onto it (option C). Exit codes as
 * docs/groupmail.1.md says. Both append a record to <store>/ceremony.jsonl. */
int gm_cmd_keys_transport(gm_config *c);
int gm_cmd_keys_import(gm_config *c);

/* The member's TLS client key on a token (--key pkcs11:URI without
 * --tls-cert): opens the token once per run and makes an EVP_PKEY that
 * signs there (EC P-256/P-384 only; an RSA token key is refused with the
 * reason, exit 1). Call before the first gm_rest_open of a command that
 * authenticates; a no-op for key files. GM_EXIT_OK or an exit code
 * (error printed). gm_tls_token_close at exit, after every gs_rest_free. */
int gm_tls_token_prepare(const gm_config *c);
void gm_tls_token_close(void);
/* Methods where the server re-wraps to the TLS certificate's key
 * (recipient-key, keys sync / group-secret) need it to be RSA: else one
 * line saying which methods work (tls, membership-cert) and GM_EXIT_USAGE. */
int gm_need_rsa_tls_cert(const gm_config *c, const char *what);

/* REST handle for the configured server with the member's TLS identity
 * (tls_cert/tls_key, else cert/key when the key is a file, else cert and
 * the token key prepared by gm_tls_token_prepare). */
int gm_rest_open(const gm_config *c, const char *url, gs_rest **r);

/* Certificates a PEM list may hold: a pin file keeps the group key's
 * earlier versions after re-keys (fetch-cert --repin), up to this many in
 * all, and every reader of it must take as many. */
#define GM_PEM_CERTS_MAX 64
/* Loads PEM certificates (up to GM_PEM_CERTS_MAX) from bytes. */
int gm_pem_certs(const unsigned char *pem, size_t len, STACK_OF(X509) **out);
X509 *gm_read_cert_file(const char *path);
X509 *gm_read_cert_file_quiet(const char *path); /* no message when absent */
/* A pem_password_cb that gives the empty passphrase: an encrypted key
 * file is refused instead of OpenSSL prompting on the terminal (or
 * reading the message's standard input when there is none); one
 * encrypted with an empty passphrase loads, as libcurl's does. */
int gm_no_passphrase(char *buf, int size, int rwflag, void *u);

#endif
