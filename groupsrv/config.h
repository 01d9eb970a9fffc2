/*
 * config.h: groupsrv.conf (INI, read with inih). Every key is documented in
 * docs/groupsrv.1.md. Unknown sections or keys, malformed values and
 * duplicate keys are errors naming the key and the line.
 *
 * Ownership: gs_config_load() returns a config the caller frees with
 * gs_config_free() (NULL fine). All strings inside are owned by the config
 * and are NUL-terminated; absent optional strings are NULL. A loaded config
 * is read-only and may be shared by all threads.
 */
#ifndef GS_CONFIG_H
#define GS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "gs_error.h"

/* Default config path when neither -c nor $GROUPSRV_CONF is given. */
#define GS_CONFIG_DEFAULT_PATH "/etc/groupsrv/groupsrv.conf"

/* The largest config file gs_config_load reads. */
#define GS_CONFIG_FILE_MAX (1u << 20)

struct gs_config {
    char *path;                 /* the file this was loaded from */
    unsigned char *text;        /* the file's bytes as parsed, read once (NULL from a string);
                                   wiped at gs_config_free: [db] url may hold a password */
    size_t text_len;
    struct {
        char *listen;           /* "host:port", default "127.0.0.1:8443" */
        unsigned threads;       /* the network process's event-loop threads, 1..256, default 4 */
        size_t max_body;        /* request body cap in bytes, default 65536 (1 KiB..16 MiB) */
        unsigned unwrap_batch_max;     /* items per unwrap-batch, default 100 (1..10000) */
        unsigned rate_limit;    /* requests per second per client identity; 0 = off (default) */
        unsigned rate_burst;    /* token-bucket burst, default 2 * rate_limit */
        unsigned timeout;       /* seconds per request (read+write), default 30 */
        size_t keyholder_queue_max;    /* bytes of requests the network process holds per thread for a
                                          key holder that does not take them, default 1 MiB
                                          (4 KiB..64 MiB); 503 at once beyond */
        unsigned max_connections;      /* API listener's connections, default 1024 */
        unsigned reserved_connections; /* of those, kept for connections with a trusted client
                                          certificate; default max_connections / 4 */
        unsigned max_connections_per_address; /* connections without a trusted client certificate
                                                 from one address, default 32 */
        unsigned handshake_timeout;    /* seconds from accept to the end of the TLS handshake, default 10 */
        unsigned request_timeout;      /* seconds from the handshake (or the previous answer) until the
                                          whole request head and body are in, default 20 */
        unsigned max_failed_unwraps;   /* failed unwraps per identity that suspend it, default 20; 0 = off */
        unsigned suspend_seconds;      /* failure window and suspension length, default 600 */
        bool auto_rotate_secret_on_remove; /* default yes */
        char *metrics;          /* who may GET /metrics: "off", "any", "admin"; default "admin" */
        char *log_level;        /* error|warn|info|debug, default "info" */
        bool access_log;        /* an info line per HTTP request (who, what, status), default no */
        unsigned max_queue_ms;  /* shed token work expected to wait longer (503), default 2000; 0 = never */
        char *user;             /* the network process's account when started as root; default "nobody" */
        char *instance;         /* this server's name in shared state (its audit chain); default the host name */
    } server;
    struct {
        char *cert;             /* server certificate chain, PEM (required for serve) */
        char *key;              /* a PEM file or a pkcs11: URI */
        char *client_ca;        /* CAs accepted for client certificates; NULL = the local CA cert */
    } tls;
    struct {
        char *module;           /* path to a .so or a p11-kit module name (required) */
        char *token;            /* PKCS#11 token URI, default "pkcs11:token=groupsrv" */
        char *pin_source;       /* "env:NAME", "file:PATH" or PATH (required) */
        char *so_pin_source;    /* the security officer's PIN, same forms, for `group export`
                                   only; NULL: asked on the terminal */
        unsigned max_sessions;  /* session pool size, 0 = hsm default */
        char *init_args;        /* C_Initialize arguments for a module by path (NSS softokn), or NULL */
        unsigned workers;       /* token workers in the key holder, 0 = one per CPU (at least 2) */
    } hsm;
    struct {
        char *path;             /* SQLite file, default "/var/lib/groupsrv/groupsrv.db"; NULL when url is set */
        char *url;              /* PostgreSQL URI (postgresql://...); exactly one of path and url */
        unsigned timeout;       /* seconds to wait for any one answer of PostgreSQL, default 10 */
        char *unreplicated_writes; /* "answer" (default) or "refuse": writes made on the primary alone */
    } db;
    struct {
        char *path;             /* JSON-lines audit log, default "/var/log/groupsrv/audit.jsonl" */
        char *store;            /* "file" (default: path) or "db" (the PostgreSQL audit table) */
    } audit;
    struct {
        char *listen;           /* "host:port"; NULL (absent) = no certificate server */
        unsigned lifetime;      /* membership certificate lifetime in seconds, default 3600 (60..604800) */
        unsigned max_connections; /* the certificate server listener's own budget, default 256
                                     (a quarter kept for trusted client certificates) */
        char *url;              /* advertised as "certificate_server"; default "https://<listen>" */
    } certsrv;
    struct {
        char *key_label;        /* token label of the CA key, default "gs:ca" */
        unsigned group_cert_days;   /* group certificate lifetime, default 825 */
        unsigned member_cert_days;  /* member client certificates (--issue-cert), default 365 */
        unsigned ca_days;       /* self-signed CA certificate lifetime, default 3650 */
    } ca;
};

/* Loads and validates path, read once (at most GS_CONFIG_FILE_MAX bytes;
 * the bytes parsed stay in text). On failure *out is NULL and gs_err_detail()
 * says what and where ("groupsrv.conf:7: unknown key 'lisen' in [server]"). */
gs_err gs_config_load(const char *path, struct gs_config **out);
/* Same, from a string (tests); name is used in messages. */
gs_err gs_config_load_string(const char *text, const char *name, struct gs_config **out);
void gs_config_free(struct gs_config *cfg);

/* What gs_store_open gets: [db] url, else [db] path (borrowed). */
const char *gs_config_db_location(const struct gs_config *cfg);

/* Which file to load: explicit (from -c) if non-NULL, else $GROUPSRV_CONF,
 * else GS_CONFIG_DEFAULT_PATH. Returned pointer is borrowed. */
const char *gs_config_choose_path(const char *explicit_path);

#endif
