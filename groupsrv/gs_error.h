/*
 * gs_error.h: the one error table of the groupsrv core library
 * (config, store, ca, groups). Library functions return gs_err and never
 * print or exit; the program turns the code plus gs_err_detail() into a
 * one-line message and an exit code (gs_err_exit_code()).
 */
#ifndef GS_GS_ERROR_H
#define GS_GS_ERROR_H

typedef enum gs_err {
    GS_OK = 0,
    GS_ERR_NOMEM,
    GS_ERR_ARGS,       /* invalid argument (bad name, address, option value) */
    GS_ERR_CONFIG,     /* config file unreadable or invalid (detail names key and line) */
    GS_ERR_IO,         /* file read/write failed */
    GS_ERR_DB,         /* database failure (detail has the SQLite or PostgreSQL message) */
    GS_ERR_SCHEMA,     /* database schema newer than this program, or corrupt */
    GS_ERR_NOT_FOUND,  /* unknown group, member, key version, CA not initialised */
    GS_ERR_EXISTS,     /* duplicate group, member, CA already initialised */
    GS_ERR_CERT,       /* certificate/CSR invalid, lacks an email, key mismatch */
    GS_ERR_HSM,        /* token operation failed (detail has hsm_strerror + CKR) */
    GS_ERR_TOKEN,      /* token unreachable, wrong PIN, PIN locked */
    GS_ERR_POLICY,     /* a key's attributes violate its policy (extractable, ...) */
    GS_ERR_CRYPTO,     /* other OpenSSL failure */
    GS_ERR_STATE,      /* operation not allowed in this state (retire current key, ...) */
    GS_ERR_DB_UNAVAILABLE, /* the database server cannot be reached (PostgreSQL down or
                            * restarting); the store reconnects by itself on a later call */
} gs_err;

/* Static text for a code. */
const char *gs_strerror(gs_err err);

/* Per-thread detail of the last failure in this thread, e.g.
 * "unknown key 'foo' in [server] at line 7"; "" when none. Never secret. */
const char *gs_err_detail(void);
/* Sets the detail (printf-style, truncated to 512 bytes); returns err so
 * callers can write `return gs_err_set(GS_ERR_ARGS, "...")`. */
gs_err gs_err_set(gs_err err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void gs_err_clear(void);

/* Why the database could not serve, for GS_ERR_DB_UNAVAILABLE and
 * GS_ERR_DB: the stores set it with the error (gs_err_set_db); any other
 * gs_err_set in the thread makes it GS_DB_CAUSE_OTHER again. */
typedef enum gs_db_cause {
    GS_DB_CAUSE_OTHER = 0, /* unreachable, connection lost, or a plain failure */
    GS_DB_CAUSE_LOCKED,    /* a lock another session or process holds was not granted in time */
    GS_DB_CAUSE_NO_ANSWER, /* the server did not answer within [db] timeout */
    GS_DB_CAUSE_READ_ONLY, /* connected to a read-only server (a standby) */
    GS_DB_CAUSE_KEYS_LOCK, /* the keys lock (gs_store_keys_lock): another command, server or request
                              making token keys held it for the whole wait */
    GS_DB_CAUSE_DAMAGED,   /* SQLite: the file is malformed or no database (truncated or overwritten) */
    GS_DB_CAUSE_MOVED,     /* SQLite: the file (or its -wal, -shm) at its path is not the one open here */
} gs_db_cause;
/* As gs_err_set, naming the cause. */
gs_err gs_err_set_db(gs_err err, gs_db_cause cause, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
gs_db_cause gs_err_db_cause(void);

/* Exit code for admin commands (see docs/groupsrv.1.md):
 * 0 ok; 1 operation failed; 3 not found / duplicate; 4 token or PIN;
 * 5 config. Usage errors (2) are decided by the program. */
int gs_err_exit_code(gs_err err);

#endif
