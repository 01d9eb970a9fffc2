/*
 * store.h: the group server's database, behind one interface with two
 * backends: a SQLite file (WAL; the default, for one server) or a
 * PostgreSQL database (libpq; for several servers sharing one state).
 * Both have a versioned schema with migrations applied by gs_store_open.
 *
 * Threads: a gs_store is one connection and must be used by one thread at
 * a time. Open one per thread (gs_store_open is cheap once the schema is
 * current). SQLite: writers in other connections/processes are waited for
 * (busy timeout 5 s). PostgreSQL: a lost connection fails the call with
 * GS_ERR_DB_UNAVAILABLE (an open transaction is lost with it) and the next
 * call reconnects by itself; statements are prepared once per connection.
 *
 * No caching: every getter reads the database, so a member removed by
 * `groupsrv member remove` in another process is refused on the very next
 * request that calls gs_store_member_get().
 *
 * Ownership: getters return freshly allocated records/arrays; free them
 * with the matching *_free (NULL fine). Strings in records are owned by
 * the record. On failure outputs are NULL/0.
 * Returns GS_OK, GS_ERR_NOT_FOUND (no such row), GS_ERR_EXISTS (unique
 * constraint), GS_ERR_DB, GS_ERR_SCHEMA, GS_ERR_NOMEM, GS_ERR_ARGS (also
 * for a value longer than GS_STORE_VALUE_MAX: nothing is written).
 */
#ifndef GS_STORE_H
#define GS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gs_error.h"
#include "names.h"

/* Current schema version written by this program. */
#define GS_STORE_SCHEMA_VERSION 4

/* Longest string or blob the database takes (certificates are far below;
 * set as SQLite's per-connection length limit). Longer values are
 * GS_ERR_ARGS, never stored as NULL. */
#define GS_STORE_VALUE_MAX (1024 * 1024)


typedef struct gs_store gs_store;

/* 1 when location is a PostgreSQL connection URI (postgresql:// or
 * postgres://), which gs_store_open opens with libpq; else 0 (a path). */
int gs_store_location_is_url(const char *location);
/* location for messages, with any password in a URI masked ("***"):
 * the user:password@ part and password= and sslpassword= parameters.
 * Always terminated. */
void gs_store_location_display(const char *location, char *buf, size_t cap);
/* Where the passwords are written in a database URI (user:PASSWORD@, also
 * one with a '/' or '@' that libpq cannot read as one, and each
 * password= or sslpassword= value of its query, the keyword %-encoded or
 * not): up to
 * max spans, in order, as offsets into location; returns how many. None
 * in a file path. */
typedef struct gs_store_span {
    size_t off, len;
} gs_store_span;
#define GS_STORE_URL_PASSWORDS_MAX 8
size_t gs_store_url_passwords(const char *location, gs_store_span *spans, size_t max);
/* libpq quotes what it cannot parse, and some of its messages quote the
 * whole URI: the password of url (user:PASSWORD@, password=PASSWORD), as
 * it is written there and as libpq %-decodes it, becomes "***" in msg
 * (NUL-terminated, cap bytes), so that it reaches neither stderr nor the
 * log (`check` shows the URI so too). So does each piece of it libpq reads
 * as something else and quotes: a password with a '/' or '@' not
 * %-encoded is read as a port, host names and a database name (`invalid
 * integer value "PASS"`, `could not translate host name "WORD@host"`). */
void gs_store_url_mask_passwords(const char *url, char *msg, size_t cap);
/* The '?' that starts a database URI's query, found as libpq finds it
 * (after the user:password@ part, which may hold one), or NULL: none, or
 * a file path. */
const char *gs_store_url_query(const char *location);

enum gs_store_flags {
    GS_STORE_CREATE = 1u << 0,   /* create the file (0600) and apply migrations */
    GS_STORE_READONLY = 1u << 1, /* open read-only (check, list, show) */
};
/* Opens location: a SQLite file path, or a PostgreSQL URI (see
 * gs_store_location_is_url). Without GS_STORE_CREATE a missing file is
 * GS_ERR_NOT_FOUND; a PostgreSQL database must exist (GS_ERR_NOT_FOUND if
 * not; GS_STORE_CREATE there means "apply migrations", as on any
 * read-write open). An existing database with an older schema is migrated
 * in one transaction (a failed step: its error, naming the versions,
 * nothing changed); read-only, it is GS_ERR_SCHEMA, or GS_ERR_NOT_FOUND
 * when it has none of our tables (version 0); a newer one is GS_ERR_SCHEMA.
 * An unreachable PostgreSQL server is GS_ERR_DB_UNAVAILABLE. */
gs_err gs_store_open(const char *location, unsigned flags, gs_store **out);
/* [db] timeout for the PostgreSQL stores this process opens from now on:
 * the longest wait for any one answer of the server (and its
 * statement_timeout, unless the URI's options or the role chose one).
 * Default 10 s; SQLite keeps its own 5 s busy timeout. */
void gs_store_set_timeout(unsigned seconds);
/* gs_store_set_timeout's value (seconds). */
unsigned gs_store_timeout(void);
/* The PostgreSQL application_name of the connections this process opens
 * from now on (sent as fallback_application_name: an application_name in
 * the URI, or PGAPPNAME, wins), so that a DBA tells the servers' and the
 * admin commands' sessions apart in pg_stat_activity. Letters, digits,
 * spaces and . - _ : / only (others are dropped); cut to 63 bytes, as
 * PostgreSQL would. NULL or "" sends none. */
void gs_store_set_app_name(const char *name);
/* How long a PostgreSQL connection stays unused before its next call first
 * reads whether the server ended it meanwhile (and connects again before
 * sending the statement); default GS_STORE_IDLE_CHECK_MS. A test that needs
 * its statement to meet the ended connection itself sets UINT_MAX: how
 * long its own steps take does not choose the path then. */
#define GS_STORE_IDLE_CHECK_MS 100u
void gs_store_set_idle_check(unsigned ms);
void gs_store_close(gs_store *st);
int gs_store_schema_version(gs_store *st);
/* The older schema version (1 or more) that this open of st migrated to
 * the current one; 0 when it found the schema current (another process,
 * a second `check` or a starting serve, may have migrated it first) or
 * created it. */
int gs_store_migrated_from(const gs_store *st);
const char *gs_store_backend(const gs_store *st); /* "sqlite" or "postgresql" */

/* A stamp that differs from the previous call's whenever the database may
 * have changed in between: a commit by another connection or process
 * (SQLite: PRAGMA data_version; PostgreSQL: a counter row that a trigger
 * on every table but the audit table bumps in the writing transaction, so
 * every server sharing the database sees it at its next call) or a change
 * through this connection. For caches of data derived from the database
 * (the server's loaded groups and keys), never for membership answers.
 * Also a cheap liveness check of the connection. GS_OK, or GS_ERR_DB /
 * GS_ERR_DB_UNAVAILABLE (then *stamp is 0). */
gs_err gs_store_change_stamp(gs_store *st, uint64_t *stamp);

/* Whether the database this handle has open is still the one at its
 * location: SQLite, that the file at the path is the file opened (not
 * moved away, deleted, or replaced by another, as a restore with mv does,
 * while this connection goes on using the old one), and that the first
 * rows of its tables still read (not truncated or written over in place:
 * GS_DB_CAUSE_DAMAGED); PostgreSQL: always. A few stat(2) and one short
 * read, for health checks. GS_OK, or GS_ERR_DB with the detail. */
gs_err gs_store_check_location(gs_store *st);

/* Whether the database reads whole, for `check`: SQLite, PRAGMA
 * quick_check (every page read once); PostgreSQL: always. GS_OK, or
 * GS_ERR_DB with GS_DB_CAUSE_DAMAGED and a detail naming the damage (the
 * same words as a write refused on it), or another read error. */
gs_err gs_store_check_integrity(gs_store *st);

/* A read snapshot for a run of reads (the key holder's request: the
 * change stamp, then the member). SQLite: one read transaction for all of
 * them (each call alone takes its own, with its locks and a file-size
 * check each); the reads see the database as it was at the first one, so
 * a change committed before read_begin is seen (a member removed then is
 * refused). PostgreSQL: nothing (each statement reads the latest commit;
 * a transaction would cost round trips). Only reads belong between the
 * two: gs_store_begin ends the snapshot first. read_begin inside a
 * transaction or a snapshot does nothing; read_end without one does
 * nothing. GS_OK or GS_ERR_DB. */
gs_err gs_store_read_begin(gs_store *st);
void gs_store_read_end(gs_store *st);

/* Explicit transactions (BEGIN IMMEDIATE). Calls between begin and commit
 * are atomic; single calls outside are atomic on their own. Nesting is
 * GS_ERR_ARGS. rollback is a no-op without an open transaction. */
gs_err gs_store_begin(gs_store *st);
gs_err gs_store_commit(gs_store *st);
void gs_store_rollback(gs_store *st);
/* Whether the last failed gs_store_commit may have committed all the
 * same: PostgreSQL got the COMMIT but its answer was lost (the connection
 * broke, or no answer in time) and its outcome could not be looked up (the
 * database gone meanwhile: restarting, crashed). The caller then must not
 * undo what the transaction records (token keys a group's rows name):
 * the rows may be there once the database is back. False after a commit
 * that succeeded or failed for certain, after a gs_store_begin or a write
 * outside a transaction (an earlier commit's outcome is not theirs), and
 * always on SQLite. */
bool gs_store_commit_unknown(const gs_store *st);

/* The keys lock: one command at a time (in any process or thread) picks
 * a new token label (a group's, a key or secret version's), makes the key
 * under it and records it. Without it two `group create` of one name, or
 * two member removals that each rotate the group secret, both find the
 * label free and both make a key under it: the loser cannot tell its key
 * from the winner's, and the winner's label names two keys. Taken before
 * the "does it exist" checks, released after the commit (or the undo).
 * Member changes (REST and command line) hold it too, from reading the
 * record as it was until their audit record is written or the change
 * undone: an undo then never puts a record back over another change.
 * SQLite: flock(2) on the database's directory (the database file itself
 * would mix with SQLite's own POSIX locks); PostgreSQL: a session advisory
 * lock, so every server sharing the database takes turns (its connection
 * lost, the lock is gone: every statement of the handle then fails with
 * GS_ERR_DB_UNAVAILABLE until the unlock, never on a new connection
 * without the lock). Nests on one
 * handle. Waits up to GS_STORE_KEYS_LOCK_WAIT_S seconds: GS_OK, GS_ERR_DB
 * after that ("another command has been making keys ..."), GS_ERR_DB or
 * GS_ERR_DB_UNAVAILABLE when the lock cannot be asked for. unlock keeps
 * the thread's error detail; unlock without the lock does nothing.
 * Given up after the wait, gs_err_db_cause() is GS_DB_CAUSE_KEYS_LOCK.
 * gs_store_keys_lock_wait sets how long this handle's lock waits instead
 * (0: GS_STORE_KEYS_LOCK_WAIT_S): a server's token worker, which key
 * requests need, waits no longer than token work may wait in its queue. */
#define GS_STORE_KEYS_LOCK_WAIT_S 120
gs_err gs_store_keys_lock(gs_store *st);
void gs_store_keys_lock_wait(gs_store *st, unsigned wait_ms);
void gs_store_keys_unlock(gs_store *st);

/* How a token key was made (schema 2): the weakenings accepted for it, a
 * comma list of names ("no-allowed-mechanisms,no-unwrap-template"; "" or
 * NULL = none: every protection), and for a sealed secret key its blob
 * and the label of the token key pair it is sealed to. Borrowed. */
typedef struct gs_store_keyrec {
    const char *weakenings;
    const char *seal_label;
    const unsigned char *sealed;
    size_t sealed_len;
} gs_store_keyrec;

/* ---- CA ------------------------------------------------------------- */
typedef struct gs_store_ca {
    char *label;       /* token label (or pkcs11: URI, when adopted) of the CA private key */
    char *cert_pem;    /* self-signed CA certificate */
    int64_t created;   /* unix seconds */
    char *weakenings;  /* accepted weakenings of the CA key ("" = none) */
    bool replicable;   /* the CA key leaves its token only under trusted wrap (ca export) */
} gs_store_ca;
gs_err gs_store_ca_get(gs_store *st, gs_store_ca **out); /* NOT_FOUND before `ca init` */
gs_err gs_store_ca_put(gs_store *st, const char *key_label, const char *cert_pem); /* EXISTS if set */
/* The same, with the key's record (rec may be NULL). */
gs_err gs_store_ca_put2(gs_store *st, const char *key_label, const char *cert_pem, const gs_store_keyrec *rec);
/* The same, recording whether the CA key is replicable. */
gs_err gs_store_ca_put_as(gs_store *st, const char *key_label, const char *cert_pem, bool replicable,
                          const gs_store_keyrec *rec);
/* Replaces the CA certificate (`ca renew-cert`: the same key). NOT_FOUND
 * before `ca init`. */
gs_err gs_store_ca_set_cert(gs_store *st, const char *cert_pem);
void gs_store_ca_free(gs_store_ca *ca);

/* ---- groups ---------------------------------------------------------- */
typedef struct gs_store_group {
    int64_t id;
    char *name;
    char *address;        /* LIST@DOMAIN */
    unsigned methods;     /* enum gs_method bits */
    char *algorithm;      /* key spec: "rsa:3072", "rsa:2048", "ec:p256" */
    bool allow_pkcs1v15;
    char *reject_label;   /* token label of the implicit-rejection HMAC key, or NULL */
    int64_t created;
    char *policy;         /* the group's key policy ("" = everything on the token; see
                             groupsrv/policy.h); gs_store_group_add takes NULL as "" */
    char *reject_seal_label;      /* a sealed rejection key: its seal key pair's label */
    char *reject_weakenings;      /* weakenings accepted for the rejection key on the token
                                     (schema 4; "" = none, NULL on add = "") */
    unsigned char *reject_sealed; /* ...and its blob (NULL: the rejection key is on the token) */
    size_t reject_sealed_len;
    bool replicable;      /* keys extractable only under trusted wrap: the key ceremony may copy them */
    gs_wrap member_wrap;  /* default wrap of member-certs copies; DEFAULT on add = PKCS1V15 */
} gs_store_group;
/* Adds a group; *id (may be NULL) gets its row id. EXISTS on duplicate name. */
gs_err gs_store_group_add(gs_store *st, const gs_store_group *g, int64_t *id);
/* The group's default wrap for member-certs copies (OAEP or PKCS1V15). */
gs_err gs_store_group_set_member_wrap(gs_store *st, int64_t group_id, gs_wrap wrap);
gs_err gs_store_group_get(gs_store *st, const char *name, gs_store_group **out);
/* All groups ordered by name; *out is an array of n pointers. */
gs_err gs_store_group_list(gs_store *st, gs_store_group ***out, size_t *n);
void gs_store_group_free(gs_store_group *g);
void gs_store_group_list_free(gs_store_group **list, size_t n);

/* ---- group key versions ---------------------------------------------- */
typedef enum gs_key_state { GS_KEY_CURRENT = 1, GS_KEY_OLD, GS_KEY_RETIRED } gs_key_state;
const char *gs_key_state_name(gs_key_state s); /* "current", "old", "retired" */

typedef struct gs_store_group_key {
    unsigned version;     /* 1, 2, ... */
    char *token_label;    /* "gs:group:<name>:v<N>" (private and public share it) */
    char *cert_pem;       /* the group certificate of this version */
    gs_key_state state;
    int64_t created;
    int64_t retired;      /* 0 unless retired */
    char *weakenings;     /* accepted weakenings of this key ("" = none) */
} gs_store_group_key;
/* Adds version `version` as current and demotes the previous current to
 * old, atomically. EXISTS if the version exists. */
gs_err gs_store_group_key_add(gs_store *st, int64_t group_id, unsigned version, const char *token_label,
                              const char *cert_pem);
/* The same, with the key's record (rec may be NULL). token_label may be a
 * pkcs11: URI (a key adopted with --use-key). */
gs_err gs_store_group_key_add2(gs_store *st, int64_t group_id, unsigned version, const char *token_label,
                               const char *cert_pem, const gs_store_keyrec *rec);
/* The same with the state given: CURRENT demotes the previous current
 * version, OLD only adds (a version imported below the current one). */
gs_err gs_store_group_key_add_as(gs_store *st, int64_t group_id, unsigned version, const char *token_label,
                                 const char *cert_pem, gs_key_state state, const gs_store_keyrec *rec);
/* Replaces the certificate of a version (import-cert). */
gs_err gs_store_group_key_set_cert(gs_store *st, int64_t group_id, unsigned version, const char *cert_pem);
/* Marks a non-current version retired (STATE for the current one). */
gs_err gs_store_group_key_retire(gs_store *st, int64_t group_id, unsigned version);
/* Every version of the group, newest first (retired included). */
gs_err gs_store_group_keys(gs_store *st, int64_t group_id, gs_store_group_key **out, size_t *n);
void gs_store_group_keys_free(gs_store_group_key *list, size_t n);

/* ---- group secret key versions ----------------------------------------- */
typedef struct gs_store_secret {
    unsigned version;
    char *token_label;                  /* "gs:secret:<name>:v<N>" */
    unsigned char kek_id[GS_KEK_ID_LEN];/* random; the KEKRecipientInfo kekid */
    gs_key_state state;                 /* CURRENT, OLD or RETIRED (secret retire) */
    int64_t created;
    char *weakenings;                   /* accepted weakenings ("" = none) */
    char *seal_label;                   /* sealed: the seal key pair's label, else NULL */
    unsigned char *sealed;              /* sealed: the blob (token_label names no object) */
    size_t sealed_len;
} gs_store_secret;
gs_err gs_store_secret_add(gs_store *st, int64_t group_id, unsigned version, const char *token_label,
                           const unsigned char kek_id[GS_KEK_ID_LEN]);
/* The same, with the key's record (rec may be NULL). */
gs_err gs_store_secret_add2(gs_store *st, int64_t group_id, unsigned version, const char *token_label,
                            const unsigned char kek_id[GS_KEK_ID_LEN], const gs_store_keyrec *rec);
/* The same with the state given (CURRENT demotes, OLD only adds). */
gs_err gs_store_secret_add_as(gs_store *st, int64_t group_id, unsigned version, const char *token_label,
                              const unsigned char kek_id[GS_KEK_ID_LEN], gs_key_state state,
                              const gs_store_keyrec *rec);
/* Marks a non-current secret version retired and drops its sealed blob
 * (STATE for the current one or one retired already). */
gs_err gs_store_secret_retire(gs_store *st, int64_t group_id, unsigned version);
/* Newest first (retired included). */
gs_err gs_store_secrets(gs_store *st, int64_t group_id, gs_store_secret **out, size_t *n);
/* The version with this kek id (any group), NOT_FOUND otherwise. */
gs_err gs_store_secret_by_kek_id(gs_store *st, const unsigned char *kek_id, size_t len, int64_t *group_id,
                                 unsigned *version);
void gs_store_secrets_free(gs_store_secret *s, size_t n);

/* ---- seal keys (token key pairs that sealed secrets open with) ------------ */
typedef struct gs_store_seal_key {
    char *label;
    char *weakenings;
    int64_t created;
} gs_store_seal_key;
/* Records a seal key pair (a second call for the same label is a no-op). */
gs_err gs_store_seal_key_put(gs_store *st, const char *label, const char *weakenings);
/* Every recorded seal key, by label. */
gs_err gs_store_seal_keys(gs_store *st, gs_store_seal_key **out, size_t *n);
void gs_store_seal_keys_free(gs_store_seal_key *list, size_t n);

/* ---- members ------------------------------------------------------------ */
typedef struct gs_store_member {
    char *email;          /* as added; compared case-insensitively */
    gs_role role;
    char *cert_pem;       /* the member's certificate, or NULL */
    int64_t added;
    gs_wrap wrap;         /* member-certs wrap; DEFAULT = the group's member_wrap */
} gs_store_member;
gs_err gs_store_member_add(gs_store *st, int64_t group_id, const char *email, gs_role role,
                           const char *cert_pem); /* EXISTS on duplicate */
gs_err gs_store_member_remove(gs_store *st, int64_t group_id, const char *email); /* NOT_FOUND */
/* A member's member-certs wrap (DEFAULT: back to the group's). NOT_FOUND. */
gs_err gs_store_member_set_wrap(gs_store *st, int64_t group_id, const char *email, gs_wrap wrap);
/* Reads the database on every call (no cache). */
gs_err gs_store_member_get(gs_store *st, int64_t group_id, const char *email, gs_store_member **out);
/* Ordered by email; *out is an array of n records (free with _list_free). */
gs_err gs_store_member_list(gs_store *st, int64_t group_id, gs_store_member **out, size_t *n);
void gs_store_member_free(gs_store_member *m);
void gs_store_member_list_free(gs_store_member *list, size_t n);

/* ---- audit chains (PostgreSQL only: GS_ERR_ARGS on SQLite) ------------
 * One table of audit lines, one hash chain per server instance: rows
 * (instance, seq, line), seq 1, 2, ... per instance. The lines are made
 * and checked by groupsrv/server/audit.c; the store only keeps them. */
#define GS_AUDIT_INSTANCE_MAX 64
/* An admin command that audits (the key ceremony) writes a chain of its
 * own, the instance name with this suffix: a server keeps its chain's head
 * in memory, and a record slipped into its chain by another process would
 * fail the server's next batch. Every admin command writes the one admin
 * chain: its writers take turns under gs_store_audit_chain_lock, and a
 * seq taken all the same (a writer without the lock) is another command's
 * record: audit.c reads the head again and chains after it. Chain names
 * are at most GS_AUDIT_CHAIN_MAX. */
#define GS_AUDIT_ADMIN_SUFFIX "/admin"
#define GS_AUDIT_CHAIN_MAX (GS_AUDIT_INSTANCE_MAX + (int)sizeof(GS_AUDIT_ADMIN_SUFFIX) - 1)
/* The database role's privileges against those a server needs
 * (docs/scale-out.md, "Database roles"): GS_OK, or GS_ERR_DB naming the
 * role and each privilege it lacks. audit: also SELECT and INSERT on the
 * audit table ([audit] store = db). Without it a role short of a grant
 * started and said healthy, and then failed every request that needed the
 * grant (all of them, for the audit table's INSERT). GS_OK for a backend
 * without roles. SQLite: GS_ERR_DB when this user cannot write the file
 * (SQLite would open it read-only without a word). */
gs_err gs_store_check_grants(gs_store *st, bool audit);
/* The database server's clock against this host's, in milliseconds,
 * host minus database (positive: this host is ahead), read between two
 * readings of the local clock (PostgreSQL's clock_timestamp()). Servers
 * sharing a database take it as their common reference: a membership
 * certificate one issues, backdated GS_CLOCK_SKEW_MAX_S, is refused as not
 * yet valid by another whose clock is behind it by more. GS_ERR_NOT_FOUND
 * where the database has no clock of its own (SQLite); a database error
 * else. */
gs_err gs_store_clock_offset(gs_store *st, int64_t *offset_ms);
/* How far a server's clock may be from the database server's before
 * `check` and serve's start warn: half the membership certificates'
 * backdating (60 s), so two servers on either side still agree. */
#define GS_CLOCK_SKEW_MAX_S 30
typedef struct gs_store_audit_row {
    int64_t seq;
    char *line;
} gs_store_audit_row;
/* The instance's last row: *seq 0 and *line NULL when it has none. *line
 * is the caller's (free()). */
gs_err gs_store_audit_head(gs_store *st, const char *instance, int64_t *seq, char **line);
/* True while a write whose connection was lost as it ran (no answer in
 * time, the connection broken) may still be running on the server: its
 * outcome, looked up now, is not yet final. The next connection settles it
 * (PostgreSQL: ends that backend first); false on a backend without such
 * writes (SQLite). */
bool gs_store_write_unsettled(gs_store *st);
/* True when a write given up on since the last call was made on the
 * primary alone: its backend, ended while its COMMIT waited for a
 * synchronous standby (none connected), made it locally, as PostgreSQL
 * does when that wait is cancelled; a failover to a standby may lose it.
 * Clears what it reports. False on SQLite. */
bool gs_store_take_unreplicated(gs_store *st);
/* [db] unreplicated_writes = refuse: such writes are not answered as made
 * (the audit's batch fails, its requests get 503); default: answered. */
void gs_store_set_refuse_unreplicated(bool refuse);
bool gs_store_refuse_unreplicated(void);
/* Inserts lines[0..n) as seq first_seq.. in one statement, committed with
 * synchronous commit before returning GS_OK. EXISTS when a seq is taken
 * (another process writes the same instance's chain). */
gs_err gs_store_audit_append(gs_store *st, const char *instance, int64_t first_seq, char *const *lines, size_t n);
/* Waits (at most the session's lock_timeout: 5 s unless the role or
 * database sets one) for, and takes, the lock under which the
 * writers of one shared chain read its head and append after it, so that
 * none finds its seq taken; held by this connection until unlocked or
 * closed. gs_store_audit_chain_unlock never fails (NULL is fine). */
gs_err gs_store_audit_chain_lock(gs_store *st, const char *instance);
void gs_store_audit_chain_unlock(gs_store *st, const char *instance);
/* Every instance with rows, ordered; free with gs_store_strings_free. */
gs_err gs_store_audit_instances(gs_store *st, char ***out, size_t *n);
/* Up to limit rows of instance with seq > after_seq, in seq order. */
gs_err gs_store_audit_read(gs_store *st, const char *instance, int64_t after_seq, size_t limit,
                           gs_store_audit_row **out, size_t *n);
void gs_store_audit_rows_free(gs_store_audit_row *rows, size_t n);
void gs_store_strings_free(char **list, size_t n);

#endif
