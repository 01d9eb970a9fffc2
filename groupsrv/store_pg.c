/* store_pg.c: the PostgreSQL backend of store.h (see store_impl.h), for
 * several group servers sharing one database. One libpq connection per
 * gs_store. Every query is a named prepared statement from the table
 * below, prepared on first use on each connection, with parameters sent
 * apart from the SQL.
 *
 * A lost connection (server stopped, restarted, failed over) fails the
 * call in progress with GS_ERR_DB_UNAVAILABLE; the next call reconnects
 * (and prepares again), unless an explicit transaction was open: its
 * statements are gone with the connection, so every call fails until
 * the caller rolls back. */
#include "store_impl.h"

#include <errno.h>
#include <libpq-fe.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "util.h"

/* Migrations: migrations[i] takes the schema from version i to i+1, in one
 * transaction. The same versions as store_sqlite.c's (append a step to
 * both). Beyond SQLite's tables: `changes`, the counter that a trigger
 * bumps in every writing transaction (the change stamp every server
 * instance polls), and `audit`, the audit chains of `[audit] store = db`.
 * Emails compare case-insensitively (SQLite's NOCASE): a unique index on
 * lower(email), which is ASCII's lower case only in a database whose
 * collation check_ascii_case takes. */
static const char *const migrations[] = {
    /* 0 -> 1 */
    "CREATE TABLE ca ("
    "  id INTEGER PRIMARY KEY CHECK (id = 1),"
    "  key_label TEXT NOT NULL,"
    "  cert_pem TEXT NOT NULL,"
    "  created BIGINT NOT NULL);"
    "CREATE TABLE groups ("
    "  id BIGSERIAL PRIMARY KEY,"
    "  name TEXT NOT NULL UNIQUE,"
    "  address TEXT NOT NULL,"
    "  methods BIGINT NOT NULL,"
    "  key_spec TEXT NOT NULL,"
    "  allow_pkcs1v15 INTEGER NOT NULL,"
    "  reject_label TEXT,"
    "  created BIGINT NOT NULL);"
    "CREATE TABLE group_keys ("
    "  group_id BIGINT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,"
    "  version BIGINT NOT NULL,"
    "  token_label TEXT NOT NULL UNIQUE,"
    "  cert_pem TEXT NOT NULL,"
    "  state INTEGER NOT NULL,"
    "  created BIGINT NOT NULL,"
    "  retired BIGINT NOT NULL DEFAULT 0,"
    "  PRIMARY KEY (group_id, version));"
    "CREATE TABLE secret_keys ("
    "  group_id BIGINT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,"
    "  version BIGINT NOT NULL,"
    "  token_label TEXT NOT NULL UNIQUE,"
    "  kek_id BYTEA NOT NULL UNIQUE,"
    "  state INTEGER NOT NULL,"
    "  created BIGINT NOT NULL,"
    "  PRIMARY KEY (group_id, version));"
    "CREATE TABLE members ("
    "  group_id BIGINT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,"
    "  email TEXT NOT NULL,"
    "  role INTEGER NOT NULL,"
    "  cert_pem TEXT,"
    "  added BIGINT NOT NULL);"
    "CREATE UNIQUE INDEX members_email ON members (group_id, lower(email));"
    "CREATE TABLE changes (id INTEGER PRIMARY KEY CHECK (id = 1), n BIGINT NOT NULL);"
    "INSERT INTO changes (id, n) VALUES (1, 0);"
    "CREATE FUNCTION gs_bump_changes() RETURNS trigger LANGUAGE plpgsql AS"
    "  $$BEGIN UPDATE changes SET n = n + 1 WHERE id = 1; RETURN NULL; END$$;"
    "CREATE TRIGGER ca_changes AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON ca"
    "  FOR EACH STATEMENT EXECUTE FUNCTION gs_bump_changes();"
    "CREATE TRIGGER groups_changes AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON groups"
    "  FOR EACH STATEMENT EXECUTE FUNCTION gs_bump_changes();"
    "CREATE TRIGGER group_keys_changes AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON group_keys"
    "  FOR EACH STATEMENT EXECUTE FUNCTION gs_bump_changes();"
    "CREATE TRIGGER secret_keys_changes AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON secret_keys"
    "  FOR EACH STATEMENT EXECUTE FUNCTION gs_bump_changes();"
    "CREATE TRIGGER members_changes AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON members"
    "  FOR EACH STATEMENT EXECUTE FUNCTION gs_bump_changes();"
    "CREATE TABLE audit ("
    "  instance TEXT NOT NULL,"
    "  seq BIGINT NOT NULL,"
    "  line TEXT NOT NULL,"
    "  PRIMARY KEY (instance, seq));",
    /* 1 -> 2: store_sqlite.c's step (issue 13's key policy, weakenings
     * and sealed secret keys), BYTEA for its BLOBs; seal_keys bumps the
     * change stamp like every table but the audit table. */
    "ALTER TABLE ca ADD COLUMN weakenings TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE groups ADD COLUMN key_policy TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE groups ADD COLUMN reject_seal_label TEXT;"
    "ALTER TABLE groups ADD COLUMN reject_sealed BYTEA;"
    "ALTER TABLE group_keys ADD COLUMN weakenings TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE secret_keys ADD COLUMN weakenings TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE secret_keys ADD COLUMN seal_label TEXT;"
    "ALTER TABLE secret_keys ADD COLUMN sealed BYTEA;"
    "CREATE TABLE seal_keys ("
    "  label TEXT PRIMARY KEY,"
    "  weakenings TEXT NOT NULL DEFAULT '',"
    "  created BIGINT NOT NULL);"
    "CREATE TRIGGER seal_keys_changes AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON seal_keys"
    "  FOR EACH STATEMENT EXECUTE FUNCTION gs_bump_changes();",
    /* 2 -> 3: store_sqlite.c's step (issue 17's replicable groups and CA),
     * parenthesised as there. */
    ("ALTER TABLE groups ADD COLUMN replicable INTEGER NOT NULL DEFAULT 0;"
     "ALTER TABLE ca ADD COLUMN replicable INTEGER NOT NULL DEFAULT 0;"),
    /* 3 -> 4: store_sqlite.c's step (issue 14's member-certs wraps and the
     * rejection key's weakenings), parenthesised as there. */
    ("ALTER TABLE groups ADD COLUMN member_wrap TEXT NOT NULL DEFAULT 'pkcs1v15'"
     "  CHECK (member_wrap IN ('oaep', 'pkcs1v15'));"
     "ALTER TABLE groups ADD COLUMN reject_weakenings TEXT NOT NULL DEFAULT '';"
     "ALTER TABLE members ADD COLUMN wrap TEXT CHECK (wrap IN ('oaep', 'pkcs1v15'));"),
};
_Static_assert(sizeof(migrations) / sizeof(migrations[0]) == GS_STORE_SCHEMA_VERSION,
               "a migration step for each schema version");

/* An advisory lock key ("gsrv") that serialises servers migrating at once. */
#define MIGRATE_LOCK "1735611254"
/* The keys lock's advisory lock key ("gskl"), store.h. */
#define KEYS_LOCK "1735617388"
/* The class ("gsac") of the advisory locks under which the writers of one
 * shared audit chain take turns; the chain name's hash is the second key. */
#define AUDIT_CHAIN_LOCK "1735615843"

enum q {
    Q_STAMP,
    Q_MEMBER_GET,
    Q_CA_GET,
    Q_CA_PUT,
    Q_CA_SET_CERT,
    Q_GROUP_ADD,
    Q_GROUP_GET,
    Q_GROUP_LIST,
    Q_GROUP_SET_WRAP,
    Q_KEY_DEMOTE,
    Q_KEY_ADD,
    Q_KEY_SET_CERT,
    Q_KEY_RETIRE,
    Q_KEYS,
    Q_SECRET_DEMOTE,
    Q_SECRET_ADD,
    Q_SECRETS,
    Q_SECRET_RETIRE,
    Q_SECRET_BY_KEK,
    Q_SEAL_KEY_PUT,
    Q_SEAL_KEYS,
    Q_MEMBER_ADD,
    Q_MEMBER_REMOVE,
    Q_MEMBER_LIST,
    Q_MEMBER_SET_WRAP,
    Q_AUDIT_HEAD,
    Q_GRANTS,
    Q_AUDIT_APPEND,
    Q_AUDIT_INSTANCES,
    Q_AUDIT_READ,
    Q_AUDIT_CHAIN_LOCK,
    Q_AUDIT_CHAIN_UNLOCK,
    Q_N
};

/* BYTEA columns are read as hex (results come as text). */
#define GROUP_COLS                                                                                             \
    "id, name, address, methods, key_spec, allow_pkcs1v15, reject_label, created, key_policy, reject_seal_label, " \
    "encode(reject_sealed, 'hex'), replicable, member_wrap, reject_weakenings"
#define MEMBER_COLS "email, role, cert_pem, added, wrap"

static const char *const queries[Q_N] = {
    [Q_STAMP] = "SELECT n FROM changes WHERE id = 1",
    [Q_MEMBER_GET] = "SELECT " MEMBER_COLS " FROM members WHERE group_id = $1 AND lower(email) = lower($2)",
    [Q_CA_SET_CERT] = "UPDATE ca SET cert_pem = $1 WHERE id = 1",
    [Q_CA_GET] = "SELECT key_label, cert_pem, created, weakenings, replicable FROM ca WHERE id = 1",
    [Q_CA_PUT] = "INSERT INTO ca (id, key_label, cert_pem, created, weakenings, replicable) "
                 "VALUES (1, $1, $2, $3, $4, $5)",
    [Q_GROUP_ADD] = "INSERT INTO groups (name, address, methods, key_spec, allow_pkcs1v15, reject_label, created, "
                    "key_policy, reject_seal_label, reject_sealed, replicable, member_wrap, reject_weakenings) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
    [Q_GROUP_GET] = "SELECT " GROUP_COLS " FROM groups WHERE name = $1",
    /* Byte order, as SQLite's BINARY collation, whatever the database's locale. */
    [Q_GROUP_LIST] = "SELECT " GROUP_COLS " FROM groups ORDER BY name COLLATE \"C\"",
    [Q_GROUP_SET_WRAP] = "UPDATE groups SET member_wrap = $1 WHERE id = $2",
    [Q_KEY_DEMOTE] = "UPDATE group_keys SET state = $1 WHERE group_id = $2 AND state = $3",
    [Q_KEY_ADD] = "INSERT INTO group_keys (group_id, version, token_label, cert_pem, state, created, weakenings) "
                  "VALUES ($1, $2, $3, $4, $5, $6, $7)",
    [Q_KEY_SET_CERT] = "UPDATE group_keys SET cert_pem = $1 WHERE group_id = $2 AND version = $3",
    [Q_KEY_RETIRE] = "UPDATE group_keys SET state = $1, retired = $5 WHERE group_id = $2 AND version = $3 "
                     "AND state = $4",
    [Q_KEYS] = "SELECT version, token_label, cert_pem, state, created, retired, weakenings FROM group_keys "
               "WHERE group_id = $1 ORDER BY version DESC",
    [Q_SECRET_DEMOTE] = "UPDATE secret_keys SET state = $1 WHERE group_id = $2 AND state = $3",
    [Q_SECRET_ADD] = "INSERT INTO secret_keys (group_id, version, token_label, kek_id, state, created, weakenings, "
                     "seal_label, sealed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    [Q_SECRETS] = "SELECT version, token_label, encode(kek_id, 'hex'), state, created, weakenings, seal_label, "
                  "encode(sealed, 'hex') FROM secret_keys "
                  "WHERE group_id = $1 ORDER BY version DESC",
    [Q_SECRET_RETIRE] = "UPDATE secret_keys SET state = $1, sealed = NULL WHERE group_id = $2 AND version = $3 "
                        "AND state = $4",
    [Q_SECRET_BY_KEK] = "SELECT group_id, version FROM secret_keys WHERE kek_id = $1",
    /* A second record of the same label is a no-op, as SQLite's INSERT OR IGNORE. */
    [Q_SEAL_KEY_PUT] = "INSERT INTO seal_keys (label, weakenings, created) VALUES ($1, $2, $3) "
                       "ON CONFLICT (label) DO NOTHING",
    [Q_SEAL_KEYS] = "SELECT label, weakenings, created FROM seal_keys ORDER BY label COLLATE \"C\"",
    [Q_MEMBER_ADD] = "INSERT INTO members (group_id, email, role, cert_pem, added) VALUES ($1, $2, $3, $4, $5)",
    [Q_MEMBER_REMOVE] = "DELETE FROM members WHERE group_id = $1 AND lower(email) = lower($2)",
    [Q_MEMBER_LIST] = "SELECT " MEMBER_COLS " FROM members WHERE group_id = $1 "
                      "ORDER BY lower(email) COLLATE \"C\", email COLLATE \"C\"",
    [Q_MEMBER_SET_WRAP] = "UPDATE members SET wrap = $1 WHERE group_id = $2 AND lower(email) = lower($3)",
    [Q_AUDIT_HEAD] = "SELECT seq, line FROM audit WHERE instance = $1 ORDER BY seq DESC LIMIT 1",
    /* docs/scale-out.md's grants that the role lacks ($1: the audit
     * table's too), NULL when none; ownership, superuser and inherited
     * roles count, as for the statements themselves. Only what serve's
     * statements use (DELETE on members alone; no INSERT on changes, no
     * UPDATE on seal_keys; on ca only SELECT and on groups no UPDATE: ca
     * init, renew, import and group set --wrap are commands): a role kept
     * to those (so that a compromised server can neither replace the CA
     * certificate nor delete a key's record) served before this check and
     * must not be refused at an upgrade. A column grant counts
     * (has_any_column_privilege): has_table_privilege is false for a role
     * granted every column, which the statements serve. nextval() runs
     * with USAGE or UPDATE on the sequence: either counts. */
    [Q_GRANTS] = "SELECT current_user, string_agg(m.p || ' ON ' || m.t, ', ') FROM ("
                 "SELECT t, p FROM (VALUES ('ca', 'SELECT'), ('groups', 'SELECT'), ('groups', 'INSERT'), "
                 "('group_keys', 'SELECT'), ('group_keys', 'INSERT'), ('group_keys', 'UPDATE'), "
                 "('secret_keys', 'SELECT'), ('secret_keys', 'INSERT'), ('secret_keys', 'UPDATE'), "
                 "('seal_keys', 'SELECT'), ('seal_keys', 'INSERT'), "
                 "('members', 'SELECT'), ('members', 'INSERT'), ('members', 'UPDATE'), "
                 "('changes', 'SELECT'), ('changes', 'UPDATE'), ('schema_version', 'SELECT')) v(t, p) "
                 "WHERE NOT has_any_column_privilege(t, p) "
                 "UNION ALL SELECT 'members', 'DELETE' WHERE NOT has_table_privilege('members', 'DELETE') "
                 "UNION ALL SELECT 'SEQUENCE groups_id_seq', 'USAGE' "
                 "WHERE NOT has_sequence_privilege('groups_id_seq', 'USAGE, UPDATE') "
                 "UNION ALL SELECT 'audit', p FROM unnest(ARRAY['SELECT', 'INSERT']) p "
                 "WHERE $1::boolean AND NOT has_any_column_privilege('audit', p)) m",
    /* One statement for the whole batch: one round trip, one commit. */
    /* ... and, when $4 (pg_audit_append), only after the record it
     * chains to: a head kept in memory across a failover to a standby
     * that lacked the chain's last records would leave a gap, which audit
     * verify reports as records deleted. */
    [Q_AUDIT_APPEND] = "INSERT INTO audit (instance, seq, line) "
                       "SELECT $1, $2::bigint + t.o - 1, t.l FROM unnest($3::text[]) WITH ORDINALITY AS t(l, o) "
                       "WHERE NOT $4::boolean OR $2::bigint = 1 "
                       "OR EXISTS (SELECT 1 FROM audit WHERE instance = $1 AND seq = $2::bigint - 1)",
    [Q_AUDIT_INSTANCES] = "SELECT DISTINCT instance FROM audit ORDER BY 1",
    [Q_AUDIT_READ] = "SELECT seq, line FROM audit WHERE instance = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    [Q_AUDIT_CHAIN_LOCK] = "SELECT pg_advisory_lock(" AUDIT_CHAIN_LOCK ", hashtext($1))",
    [Q_AUDIT_CHAIN_UNLOCK] = "SELECT pg_advisory_unlock(" AUDIT_CHAIN_LOCK ", hashtext($1))",
};

struct pg_store {
    struct gs_store base;
    PGconn *conn;
    char *url;
    bool prepared[Q_N];
    bool lost;   /* the connection failed: reconnect at the next call */
    bool lost_quietly; /* ... or was only given up after a lock or statement timeout: no loss was
                          logged, so the reconnect is no "restored" either */
    bool no_answer; /* the last statement got no answer in time (the connection was closed) */
    bool unbounded; /* statements may take as long as they take (the migration) */
    int64_t last_used_ms; /* CLOCK_MONOTONIC at the last ensure_connected */
    unsigned conn_gen;    /* counts connections made: tells a statement sent on a new one */
    bool writing;         /* the statement in flight may commit something (not a read) */
    int backend_pid;      /* the connection's backend, and its backend_start in microseconds */
    bool unidentified_logged; /* the backend could not be told: said once per handle */
    int64_t backend_start_us;
    int orphan_pid;       /* a backend left with a write in flight, ended before the next statement */
    int64_t orphan_start_us;
    bool unreplicated;    /* a commit's synchronous standby wait was ended (end_orphan, or the database:
                             notice_receive): made on the primary alone */
    bool own_stmt_timeout; /* the session's statement_timeout is [db] timeout, not one the DBA set */
    int64_t stmt_timeout_ms; /* the session's statement_timeout at its setup (0: none, or not understood) */
    int64_t sent_ms;         /* CLOCK_MONOTONIC when the statement awaited last was sent */
    bool idle_timeout_off; /* pg_keys_lock_try turned idle_session_timeout off: unlock RESETs it */
    unsigned audit_gen;    /* conn_gen when an audit head was read or records appended last */
    bool stamp_known;      /* the change counter and the connection pg_change_stamp read it on last, */
    int64_t stamp_n;       /* and the stamp it gave for them: a count that moves whenever either */
    unsigned stamp_gen;    /* differs, so it never comes back to a value it gave before */
    uint64_t stamp;
};

#define PG(st) ((struct pg_store *)(st))

/* Parameters of one statement: text (or NULL), integers as text, or
 * binary bytes. */
#define MAX_PARAMS 13
struct params {
    int n;
    const char *val[MAX_PARAMS];
    int len[MAX_PARAMS];
    int fmt[MAX_PARAMS];
    char num[MAX_PARAMS][24];
};

static void p_text(struct params *p, const char *v)
{
    p->val[p->n] = v;
    p->len[p->n] = 0;
    p->fmt[p->n] = 0;
    p->n++;
}

static void p_int(struct params *p, int64_t v)
{
    (void)snprintf(p->num[p->n], sizeof(p->num[p->n]), "%lld", (long long)v);
    p_text(p, p->num[p->n]);
}

static void p_bytes(struct params *p, const unsigned char *v, size_t len)
{
    p->val[p->n] = (const char *)v;
    p->len[p->n] = (int)len;
    p->fmt[p->n] = 1;
    p->n++;
}

static int64_t monotonic_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Server notices (e.g. "relation already exists, skipping") go to the
 * diagnostic log, not to stderr. One says more: a COMMIT's wait for a
 * synchronous standby ended by another than groupsrv (the DBA's
 * pg_cancel_backend or pg_terminate_backend, a fast shutdown) is a
 * WARNING of SyncRepWaitForLSN, and the commit is made on the primary
 * alone: a cancelled one is even answered as a success, an ended one
 * leaves no backend for end_orphan to find. Without this both were
 * answered as made under [db] unreplicated_writes = refuse. Told by the
 * routine's name, which lc_messages does not translate. */
static void notice_receive(void *arg, const PGresult *res)
{
    gs_store *st = arg;
    char q[256];
    const char *fn = PQresultErrorField(res, PG_DIAG_SOURCE_FUNCTION);
    const char *message = PQresultErrorMessage(res);

    if (fn != NULL && strcmp(fn, "SyncRepWaitForLSN") == 0) {
        PG(st)->unreplicated = true;
        log_warn("database session waiting for a synchronous standby was cancelled or ended by the database "
                 "(pg_cancel_backend, pg_terminate_backend, a shutdown): its commit is on the primary only until a "
                 "standby has it detail=\"%s\"",
                 log_quote(q, sizeof(q), message));
        return;
    }
    log_debug("postgresql notice=\"%s\"", log_quote(q, sizeof(q), message));
}

/* libpq's messages end in a newline and go on over indented lines ("...
 * failed: No such file or directory\n\tIs the server running ..."); one-line
 * errors do not: each newline and the tabs after it become one space. */
static const char *conn_message(PGconn *conn, char *buf, size_t cap)
{
    /* libpq's hint under each host it could not reach ("Is the server
     * running on that host and accepting TCP/IP connections?") repeats
     * what its line says; with a multi-host URI three of them filled the
     * room (this buffer, the error detail) of the later hosts' reasons,
     * often the one that mattered (a wrong password at the primary). */
    static const char hint[] = "\tIs the server running ";
    const char *src = conn ? PQerrorMessage(conn) : "out of memory";
    size_t w = 0;

    if (cap == 0)
        return buf;
    while (*src != '\0') {
        size_t len = strcspn(src, "\n");
        if (strncmp(src, hint, sizeof(hint) - 1) != 0) {
            size_t r = 0;
            while (r < len && (src[r] == '\t' || src[r] == ' ')) /* the indent of a continuation line */
                r++;
            if (r < len && w > 0 && w + 1 < cap)
                buf[w++] = ' ';
            for (; r < len && w + 1 < cap; r++)
                buf[w++] = src[r] == '\t' ? ' ' : src[r];
        }
        src += len;
        if (*src == '\n')
            src++;
    }
    while (w > 0 && buf[w - 1] == ' ')
        w--;
    buf[w] = '\0';
    return buf;
}

static int sqlstate_unavailable(const char *state)
{
    /* connection exceptions; admin/crash shutdown, cannot connect now;
     * too many connections; a lock not granted within lock_timeout
     * (another session holds it); a read-only transaction (connected to a
     * standby, or to a primary demoted by a failover): reconnect, and a
     * multi-host URI with target_session_attrs=read-write finds the new
     * primary; a statement cancelled by statement_timeout ([db] timeout) */
    return state != NULL && (strncmp(state, "08", 2) == 0 || strcmp(state, "57P01") == 0 ||
                             strcmp(state, "57P02") == 0 || strcmp(state, "57P03") == 0 ||
                             strcmp(state, "53300") == 0 || strcmp(state, "25006") == 0 ||
                             strcmp(state, "55P03") == 0 || strcmp(state, "57014") == 0);
}

/* await_result reads the clock just after the statement went out */
#define SENT_SLACK_MS 50

/* The gs_err for a failed result (res may be NULL). */
static gs_err result_error(gs_store *st, PGresult *res, const char *what)
{
    char msg[512];
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

    if (PG(st)->no_answer) {
        PG(st)->no_answer = false;
        log_warn("database did not answer in time; connection closed op=\"%s\" wait_s=%u", what,
                 gs_store_timeout() + 1);
        return gs_err_set_db(GS_ERR_DB_UNAVAILABLE, GS_DB_CAUSE_NO_ANSWER,
                             "%s: the database did not answer within %u s ([db] timeout)", what,
                             gs_store_timeout() + 1);
    }
    conn_message(PG(st)->conn, msg, sizeof(msg));
    if (PG(st)->conn == NULL || PQstatus(PG(st)->conn) != CONNECTION_OK || sqlstate_unavailable(state)) {
        /* Each cause in its own words: a lock another session holds, a
         * statement cut by statement_timeout or a standby is no
         * unreachable database. */
        bool locked = state != NULL && strcmp(state, "55P03") == 0;
        /* 57014 (query_canceled) is both statement_timeout and a cancel
         * (pg_cancel_backend); only the message tells them apart, and it is
         * in the server's lc_messages ("storniere Anfrage wegen
         * Zeitüberschreitung der Anfrage"): matched in English, every cut
         * on a server speaking another language was logged as a lost
         * connection, and as restored at the next statement. So by time:
         * the statement_timeout cuts a statement only after it ran that
         * long, which the client, having sent it earlier, saw at least
         * too (less the moment between the send and await_result's
         * clock: the slack); a cancel sooner is no timeout. Nor is any
         * cancel while the migration's SET LOCAL statement_timeout = 0
         * holds (unbounded): a DBA's pg_cancel_backend of a migration
         * waiting for another's lock, after the session's timeout, was
         * said to be that timeout's cut. */
        bool too_long = state != NULL && strcmp(state, "57014") == 0 && !PG(st)->unbounded &&
                        PG(st)->stmt_timeout_ms > 0 &&
                        monotonic_ms() - PG(st)->sent_ms + SENT_SLACK_MS >= PG(st)->stmt_timeout_ms;
        bool read_only = state != NULL && strcmp(state, "25006") == 0;
        if (!PG(st)->lost && !locked && !too_long)
            log_warn("database connection lost op=\"%s\" detail=\"%s\"", what, log_qs(msg));
        if (!PG(st)->lost)
            PG(st)->lost_quietly = locked || too_long;
        PG(st)->lost = true;
        if (locked)
            return gs_err_set_db(GS_ERR_DB_UNAVAILABLE, GS_DB_CAUSE_LOCKED,
                                 "%s: a database lock another session holds was not granted in time: %s", what, msg);
        /* The DBA's statement_timeout (postgresql.conf or ALTER SYSTEM,
         * ALTER ROLE or DATABASE ... SET, the URI's options or PGOPTIONS)
         * is left alone: then that one cut it, and the log must not send
         * the operator to [db] timeout, nor to a role that has none when
         * it is in postgresql.conf. */
        if (too_long && PG(st)->own_stmt_timeout)
            return gs_err_set_db(GS_ERR_DB_UNAVAILABLE, GS_DB_CAUSE_NO_ANSWER,
                                 "%s: the statement ran longer than [db] timeout: %s", what, msg);
        if (too_long)
            return gs_err_set_db(GS_ERR_DB_UNAVAILABLE, GS_DB_CAUSE_NO_ANSWER,
                                 "%s: the statement ran longer than the statement_timeout PostgreSQL gives "
                                 "groupsrv's sessions (postgresql.conf or ALTER SYSTEM, ALTER ROLE or DATABASE ... "
                                 "SET, the URI's options or PGOPTIONS; groupsrv's [db] timeout applies only where "
                                 "none is set): %s",
                                 what, msg);
        if (read_only)
            return gs_err_set_db(GS_ERR_DB_UNAVAILABLE, GS_DB_CAUSE_READ_ONLY, "%s: the database is read-only: %s",
                                 what, msg);
        return gs_err_set(GS_ERR_DB_UNAVAILABLE, "%s: database unavailable: %s", what, msg);
    }
    if (state != NULL && strncmp(state, "23", 2) == 0)
        return gs_err_set(GS_ERR_EXISTS, "%s: %s", what, msg);
    return gs_err_set(GS_ERR_DB, "%s: %s", what, msg);
}

/* ---- statements with a bounded wait -------------------------------------------
 * PQexec waits for the answer as long as the connection lasts: a server
 * that hangs without closing it (a stopped backend or host, a proxy that
 * blackholes the connection) held a key holder worker as long, and every
 * request queued behind it waited out [server] timeout for a 503 that
 * blamed the token. Keepalives and tcp_user_timeout do not help there
 * (the peer's kernel still acknowledges) and do not apply to a unix
 * socket. So every statement is sent (PQsend*, the connection
 * non-blocking) and its answer awaited at most [db] timeout plus a second
 * (the session's statement_timeout, when it is ours, ends a slow statement
 * first, keeping the connection); then the connection is closed (the
 * server rolls back what it had not committed once it sees that) and the
 * request gets 503 db_unavailable; the next statement connects again. */

/* The connection is given up with a write in flight (no answer in time,
 * or the connection broke): its backend may still be running it, e.g. a
 * COMMIT waiting for a synchronous standby that is down. Closing our end
 * does not stop that wait; the transaction commits whenever it ends (the
 * standby back, the wait cancelled), long after its caller answered as
 * if it never happened (an audit record for a request the client saw
 * fail, or a record written twice). connect_session ends that backend
 * before anything else is sent, so what the next statements read is the
 * outcome for good. */
static void leave_backend(gs_store *st)
{
    if (!PG(st)->writing || PG(st)->backend_pid == 0)
        return;
    PG(st)->orphan_pid = PG(st)->backend_pid;
    PG(st)->orphan_start_us = PG(st)->backend_start_us;
    PG(st)->backend_pid = 0;
}

/* The answer to what was just sent (sent: what PQsend* returned): the
 * last result, or the first that failed; NULL when the send failed, the
 * connection broke before the server said it was ready again
 * (PQerrorMessage says why), or no answer came in time (then no_answer is
 * set and the connection closed).
 *
 * A statement outside a transaction block commits only after its
 * CommandComplete is written: the server buffers that, commits at the
 * Sync, then sends both with ReadyForQuery. A backend stopped in between
 * (an immediate shutdown, a crash of another backend: SIGQUIT) flushes
 * the buffer with its "terminating connection" warning and exits without
 * committing. So a result counts only once ReadyForQuery came (PQgetResult
 * gave NULL): an audit insert taken as made there let an answer go out
 * with no record and broke the chain at the next one. */
static PGresult *await_result(gs_store *st, int sent)
{
    PGconn *conn = PG(st)->conn;
    int64_t deadline = PG(st)->unbounded ? 0 : monotonic_ms() + ((int64_t)gs_store_timeout() + 1) * 1000;
    PGresult *res = NULL, *r;
    bool ready = false;

    PG(st)->sent_ms = monotonic_ms();
    if (!sent)
        return NULL;
    for (;;) {
        int unsent = PQflush(conn); /* 0: all out; 1: more to write; -1: failed */
        if (unsent < 0)
            break;
        if (unsent == 0 && !PQisBusy(conn)) {
            if ((r = PQgetResult(conn)) == NULL) {
                ready = true;
                break;
            }
            if (res != NULL && PQresultStatus(res) == PGRES_FATAL_ERROR) {
                PQclear(r);
            } else {
                PQclear(res);
                res = r;
            }
            continue;
        }
        int wait_ms = -1;
        if (deadline != 0) {
            int64_t left = deadline - monotonic_ms();
            if (left <= 0)
                goto no_answer;
            wait_ms = left > INT_MAX ? INT_MAX : (int)left;
        }
        struct pollfd pfd = {.fd = PQsocket(conn), .events = (short)(POLLIN | (unsent ? POLLOUT : 0))};
        int n = poll(&pfd, 1, wait_ms);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0)
            goto no_answer;
        if (n < 0 || ((pfd.revents & (POLLIN | POLLERR | POLLHUP)) && !PQconsumeInput(conn)))
            break; /* the connection broke: its status says so */
    }
    if (!ready && PQresultStatus(res) != PGRES_FATAL_ERROR) {
        PQclear(res); /* not known to be committed: the caller sees the broken connection */
        res = NULL;
    }
    if (!ready)
        leave_backend(st);
    return res;
no_answer:
    PQclear(res);
    leave_backend(st);
    PQfinish(conn);
    PG(st)->conn = NULL;
    PG(st)->lost = true;
    PG(st)->lost_quietly = false;
    PG(st)->no_answer = true;
    return NULL;
}

static PGresult *pg_exec(gs_store *st, const char *sql)
{
    if (PG(st)->conn == NULL)
        return NULL;
    PG(st)->writing = strncmp(sql, "SELECT ", 7) != 0;
    return await_result(st, PQsendQuery(PG(st)->conn, sql));
}

static gs_err exec_simple(gs_store *st, const char *sql, const char *what)
{
    PGresult *res = pg_exec(st, sql);
    ExecStatusType s = PQresultStatus(res);
    gs_err err = (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK) ? GS_OK : result_error(st, res, what);
    PQclear(res);
    return err;
}

/* Ends the backend that connection's loss left with a write in flight
 * (leave_backend), found by its pid and backend_start (never a later
 * backend given the same pid), and waits until it is gone: a commit it
 * was waiting on (a synchronous standby down) is then made, locally, as
 * PostgreSQL does when such a wait is cancelled; one it had not reached
 * is rolled back. Either way the tables now hold the outcome, and the
 * caller's lookup (the audit's, db_append_again) reads it. A backend that
 * does not go within [db] timeout (a stopped process or host) is logged
 * and left: the statements go on as before, and a second insert of its
 * rows waits for it under lock_timeout. It is the same role's backend,
 * which pg_terminate_backend allows without a superuser; where the
 * session runs as another role than its login (the URI's options -c
 * role=...) that may see that backend (pg_read_all_stats) but not signal
 * it, PostgreSQL refuses, and the log says so and what would let it. A backend not found was gone before (the connection's loss reached
 * it, a restart): the log says that, not that it was ended, so an
 * operator does not take a backend that was never looked at for one
 * that was. */
#define BACKEND_START_US "(extract(epoch FROM backend_start) * 1000000)::bigint"
static gs_err end_orphan(gs_store *st)
{
    static const char *const end_sql =
        "SELECT pg_terminate_backend(pid), wait_event = 'SyncRep' FROM pg_stat_activity WHERE pid = $1 AND " BACKEND_START_US
        " = $2";
    static const char *const there_sql =
        "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND " BACKEND_START_US " = $2";
    struct params p = {0};
    int64_t deadline = monotonic_ms() + ((int64_t)gs_store_timeout() + 1) * 1000;
    gs_err err = GS_OK;
    bool gone = false, sync_rep = false, found = true, refused = false;
    const char *sql = end_sql;

    p_int(&p, PG(st)->orphan_pid);
    p_int(&p, PG(st)->orphan_start_us);
    for (;;) {
        PGresult *r = await_result(st, PQsendQueryParams(PG(st)->conn, sql, p.n, NULL, p.val, p.len, p.fmt, 0));
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            const char *state = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
            refused = state != NULL && strcmp(state, "42501") == 0; /* insufficient_privilege */
            err = result_error(st, r, "ending the session a lost write left");
            PQclear(r);
            break;
        }
        gone = sql == there_sql && PQntuples(r) == 0;
        if (sql == end_sql && PQntuples(r) == 0) {
            gone = true; /* not there to end */
            found = false;
        }
        if (sql == end_sql && PQntuples(r) == 1)
            sync_rep = strcmp(PQgetvalue(r, 0, 1), "t") == 0;
        PQclear(r);
        if (gone || monotonic_ms() >= deadline)
            break;
        if (sql == there_sql) {
            struct timespec ts = {.tv_sec = 0, .tv_nsec = 20 * 1000 * 1000};
            (void)nanosleep(&ts, NULL);
        }
        sql = there_sql;
    }
    if (err == GS_ERR_DB_UNAVAILABLE)
        return err; /* this connection is gone too: the next one tries again */
    /* Gone before it was looked at, with synchronous standbys asked for:
     * a primary that crashed, was stopped with -m immediate or lost its
     * postmaster (kill -9: the waiting backend then leaves without a word,
     * not even the WARNING) while the COMMIT waited for a standby (none
     * connected) has the commit in its WAL, and after the restart the
     * lookup finds the rows, with no WARNING and no backend in SyncRep to
     * tell they are on the primary alone. Whether a standby has them is
     * unknown, so they count as not: under [db] unreplicated_writes =
     * refuse such an unwrap was answered 200 with the key; under answer
     * the log said only "gone already", none of the lines the operator is
     * told to watch for. An unreadable setting counts as set. */
    bool unknown = false;
    if (gone && !found) {
        PGresult *r = pg_exec(st, "SELECT current_setting('synchronous_standby_names') <> ''");
        unknown = !(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && PQnfields(r) == 1 &&
                    strcmp(PQgetvalue(r, 0, 0), "f") == 0);
        PQclear(r);
        if (PG(st)->conn == NULL || PQstatus(PG(st)->conn) != CONNECTION_OK)
            return gs_err_set(GS_ERR_DB_UNAVAILABLE, "the database connection was lost in the session setup");
    }
    if (gone && (sync_rep || unknown))
        PG(st)->unreplicated = true;
    if (gone && sync_rep)
        log_warn("database session left waiting for a synchronous standby ended: its commit is on the primary "
                 "only until a standby has it pid=%d",
                 PG(st)->orphan_pid);
    else if (unknown)
        log_warn("database session left with a write in flight was gone already (a restart or crash of the "
                 "database, its postmaster killed?) while synchronous standbys are asked for: whether a standby "
                 "has its commit is not known, so it counts as made on the primary alone%s pid=%d",
                 gs_store_refuse_unreplicated() ? " ([db] unreplicated_writes = refuse)"
                                                : " until a standby has caught up",
                 PG(st)->orphan_pid);
    else if (gone && found)
        log_info("database session left with a write in flight ended pid=%d", PG(st)->orphan_pid);
    else if (gone)
        log_info("database session left with a write in flight was gone already; its write committed or was rolled "
                 "back as it got pid=%d",
                 PG(st)->orphan_pid);
    else if (refused)
        log_warn("database session left with a write in flight was not ended: PostgreSQL refused to terminate it "
                 "(the server's role needs the privileges of the session's login role, or of pg_signal_backend); "
                 "its write may still commit pid=%d detail=\"%s\"",
                 PG(st)->orphan_pid, log_qs(gs_err_detail()));
    else
        log_warn("database session left with a write in flight did not end in time; its write may still commit "
                 "pid=%d detail=\"%s\"",
                 PG(st)->orphan_pid, err != GS_OK ? log_qs(gs_err_detail()) : "still running");
    PG(st)->orphan_pid = 0;
    return GS_OK;
}

/* A time setting as SHOW prints it ("0", "250ms", "90s", "2min", "1h",
 * "1d": the largest unit that divides it, milliseconds bare when none),
 * in milliseconds; 0 for anything else. */
static int64_t guc_ms(const char *v)
{
    static const struct {
        const char *unit;
        int64_t ms;
    } units[] = {{"", 1}, {"ms", 1}, {"s", 1000}, {"min", 60000}, {"h", 3600000}, {"d", 86400000}};
    char *end = NULL;
    long long n;

    if (v == NULL || *v < '0' || *v > '9')
        return 0;
    errno = 0;
    n = strtoll(v, &end, 10);
    if (errno != 0 || n <= 0 || n > INT32_MAX)
        return 0;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (strcmp(end, units[i].unit) == 0)
            return (int64_t)n * units[i].ms;
    return 0;
}

/* This connection's backend: its pid and start (microseconds: no
 * DateStyle or time zone in it), which tells it from a later backend
 * given its pid, for end_orphan. The pid as the backend says, not libpq's
 * PQbackendPID: behind a pooler (PgBouncer, docs/scale-out.md's session
 * pooling) that is the pooler's own cancel key, no PostgreSQL process,
 * and the backend left with a write was never found, so never ended.
 * A statement of its own after the setup, not the setup's last: where
 * pg_stat_activity may not be read (REVOKE ... FROM PUBLIC, a hardened
 * database) a failed setup refused every connection, the server served
 * nothing; and where the row's backend_start is hidden (the session runs
 * as a role without the privileges of its login role, the URI's options
 * -c role=...) the backend was silently never ended. Either way now the
 * server goes on without ending such backends, and says so once. */
static gs_err identify_backend(gs_store *st)
{
    PGresult *res = pg_exec(st, "SELECT pid, " BACKEND_START_US " FROM pg_stat_activity WHERE pid = pg_backend_pid()");
    gs_err err = GS_OK;
    const char *why = NULL;
    char detail[256] = "";

    PG(st)->writing = false;
    PG(st)->backend_pid = 0;
    PG(st)->backend_start_us = 0;
    if (res == NULL || PQstatus(PG(st)->conn) != CONNECTION_OK) {
        err = result_error(st, res, "session setup");
        goto out;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        why = "pg_stat_activity could not be read";
        (void)snprintf(detail, sizeof(detail), "%s", PQresultErrorMessage(res));
    } else if (PQntuples(res) != 1 || PQnfields(res) != 2 || PQgetisnull(res, 0, 0) || PQgetisnull(res, 0, 1)) {
        why = "pg_stat_activity hides its backend_start (the session's role lacks the privileges of its login role)";
    } else {
        PG(st)->backend_pid = (int)strtol(PQgetvalue(res, 0, 0), NULL, 10);
        PG(st)->backend_start_us = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
        if (PG(st)->backend_start_us == 0 || PG(st)->backend_pid <= 0) {
            PG(st)->backend_pid = 0; /* not told apart from a later backend with its pid: never ended */
            why = "pg_stat_activity gave no backend_start";
        }
    }
    if (why != NULL && !PG(st)->unidentified_logged) {
        PG(st)->unidentified_logged = true;
        for (char *c = detail; *c != '\0'; c++)
            if (*c == '\n')
                *c = ' ';
        log_warn("database backend not identified: %s; a backend left with a write in flight (a COMMIT waiting for "
                 "a synchronous standby) will not be ended, and its write may commit after its request was "
                 "answered as failed detail=\"%s\"",
                 why, log_qs(detail));
    }
out:
    PQclear(res);
    return err;
}

/* A connect that failed over a TLS file (a CA, a client certificate or
 * key, a CRL) the connection options name: libpq says "root certificate
 * file "/etc/groupsrv/pg-ca.pem" does not exist", which read as the
 * database not existing (a command's exit 3, "not created yet", which a
 * provisioning script takes for a database to set up), and named neither
 * the option nor where it was set. Writes which option names the file
 * libpq's message (msg) quotes, and where it came from ([db] url, an
 * environment variable, the libpq service file); or, for a CA libpq
 * looked for by default (sslmode=verify-ca or verify-full without
 * sslrootcert), that none is set. False when msg quotes no such file. */
static bool tls_file_problem(PGconn *conn, const char *url, const char *msg, char *out, size_t cap)
{
    static const char *const keys[] = {"sslrootcert", "sslcert", "sslkey", "sslcrl", "sslcrldir"};
    PQconninfoOption *opts = conn != NULL ? PQconninfo(conn) : NULL;
    bool found = false, root_set = false;

    for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL && !found; o++) {
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]) && !found; i++) {
            char quoted[PATH_MAX + 3], inurl[32];
            if (strcmp(o->keyword, keys[i]) != 0 || o->val == NULL || o->val[0] == '\0')
                continue;
            root_set = root_set || i == 0;
            if ((size_t)snprintf(quoted, sizeof(quoted), "\"%s\"", o->val) >= sizeof(quoted) ||
                strstr(msg, quoted) == NULL)
                continue;
            (void)snprintf(inurl, sizeof(inurl), "%s=", keys[i]);
            const char *from = strstr(url, inurl) != NULL                          ? "[db] url"
                               : o->envvar != NULL && getenv(o->envvar) != NULL ? o->envvar
                                                                                 : "the libpq service file";
            (void)snprintf(out, cap, "the file %s's %s names, %s, cannot be used", from, keys[i], o->val);
            found = true;
        }
    }
    if (!found && !root_set && strstr(msg, "root certificate file \"") != NULL) {
        (void)snprintf(out, cap, "[db] url sets no sslrootcert (the CA certificate its sslmode verifies the server "
                                 "with), so libpq looked for its default file");
        found = true;
    }
    PQconninfoFree(opts);
    return found;
}

/* Opens the connection and sets the session up: synchronous commit
 * (a commit returns once it is on disk, whatever the server's default),
 * read-only transactions for a read-only store. opening: the store's
 * first connect (gs_store_pg_open), where a database that is not there
 * is GS_ERR_NOT_FOUND (a command's exit 3, "not created yet"); on a
 * reconnect every failure is GS_ERR_DB_UNAVAILABLE. */
static gs_err connect_session(gs_store *st, bool opening)
{
    char msg[512];
    gs_err err;

    if (PG(st)->conn != NULL)
        PQfinish(PG(st)->conn);
    memset(PG(st)->prepared, 0, sizeof(PG(st)->prepared));
    PG(st)->no_answer = false; /* a verdict on the old connection, never told */
    PG(st)->backend_pid = 0;   /* known once the setup below tells it */
    PG(st)->idle_timeout_off = false; /* a new session has the role's */
    PG(st)->conn = PQconnectdb(PG(st)->url);
    if (PG(st)->conn == NULL || PQstatus(PG(st)->conn) != CONNECTION_OK) {
        conn_message(PG(st)->conn, msg, sizeof(msg));
        gs_store_url_mask_passwords(PG(st)->url, msg, sizeof(msg));
        PG(st)->lost = true;
        PG(st)->lost_quietly = false;
        /* libpq has no SQLSTATE for a failed connect: the text tells a
         * missing database from a server that is down. Only at open: a
         * server whose database is away for a while (renamed, or dropped
         * and made again by a restore; connections refused meanwhile)
         * fails to reconnect, an outage like any other, 503
         * db_unavailable. Its requests were answered 404 not_found
         * "database not found", which an exploder takes for a group that
         * is gone: mail bounced, not deferred. */
        char tls[PATH_MAX + 128];
        if (tls_file_problem(PG(st)->conn, PG(st)->url, msg, tls, sizeof(tls)))
            return gs_err_set(opening ? GS_ERR_CONFIG : GS_ERR_DB_UNAVAILABLE, "cannot connect to the database: %s: %s",
                              tls, msg);
        if (opening && strstr(msg, "does not exist") != NULL)
            return gs_err_set(GS_ERR_NOT_FOUND, "database: %s", msg);
        return gs_err_set(GS_ERR_DB_UNAVAILABLE, "cannot connect to the database: %s", msg);
    }
    (void)PQsetNoticeReceiver(PG(st)->conn, notice_receive, st);
    if (PQsetnonblocking(PG(st)->conn, 1) != 0) {
        conn_message(PG(st)->conn, msg, sizeof(msg));
        PG(st)->lost = true;
        PG(st)->lost_quietly = false;
        return gs_err_set(GS_ERR_DB_UNAVAILABLE, "cannot connect to the database: %s", msg);
    }
    /* A statement waiting for a lock another session holds (a long
     * transaction, LOCK TABLE, VACUUM FULL, another program's migration)
     * gives up after 5 s, as SQLite's busy timeout does, and the request
     * gets 503 db_unavailable: without it every worker waited as long as
     * the lock was held and the key holder stopped answering at all.
     * Only where nobody chose a value (the URI's options, ALTER ROLE or
     * DATABASE ... SET lock_timeout). A statement that runs longer than
     * [db] timeout is cancelled by the server (statement_timeout, likewise
     * only where unset), before the client gives up on the connection.
     * client_min_messages is made the session's own, and at most warning:
     * notice_receive tells a commit made on the primary alone by its
     * WARNING, which client_min_messages = error (on the role, the
     * database, the URI, or postgresql.conf, there also for sessions
     * already open at a reload) keeps from the client; such writes were
     * answered 200 under [db] unreplicated_writes = refuse. */
    char setup[640];
    (void)snprintf(setup, sizeof(setup),
                   "SET synchronous_commit = on; %s"
                   "SELECT set_config('client_min_messages', CASE current_setting('client_min_messages') "
                   "WHEN 'error' THEN 'warning' ELSE current_setting('client_min_messages') END, false); "
                   "SELECT set_config('lock_timeout', '5s', false) WHERE current_setting('lock_timeout') = '0'; "
                   "SELECT CASE WHEN current_setting('statement_timeout') = '0' "
                   "THEN set_config('statement_timeout', '%us', false) END IS NOT NULL, "
                   "current_setting('statement_timeout')",
                   st->readonly ? "SET default_transaction_read_only = on; " : "", gs_store_timeout());
    PGresult *res = pg_exec(st, setup);
    PG(st)->writing = false;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        err = result_error(st, res, "session setup");
        PQclear(res);
        return err;
    }
    /* the last statement's row: set here, so a cut statement ran past [db]
     * timeout; otherwise the DBA's value, as the session has it now (a
     * reload that changes postgresql.conf's later is not seen: a cut
     * sooner than this one is then logged as a lost connection) */
    PG(st)->own_stmt_timeout = PQntuples(res) == 1 && PQnfields(res) == 2 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    if (PG(st)->own_stmt_timeout)
        PG(st)->stmt_timeout_ms = (int64_t)gs_store_timeout() * 1000;
    else
        PG(st)->stmt_timeout_ms =
            PQntuples(res) == 1 && PQnfields(res) == 2 ? guc_ms(PQgetvalue(res, 0, 1)) : 0;
    PQclear(res);
    if ((err = identify_backend(st)) != GS_OK)
        return err;
    if (PG(st)->orphan_pid != 0 && (err = end_orphan(st)) != GS_OK)
        return err;
    /* Not after a lock or statement timeout (the migration's tries, a
     * request behind another session's lock): that connection was fine,
     * and closed only to start clean; no loss was logged. */
    if (PG(st)->lost && !PG(st)->lost_quietly)
        log_info("database connection restored");
    PG(st)->lost = false;
    PG(st)->lost_quietly = false;
    PG(st)->conn_gen++;
    return GS_OK;
}

/* A connection left idle may have been ended meanwhile: PostgreSQL
 * restarted or failed over, pg_terminate_backend, idle_session_timeout. The
 * server then sent its FATAL and closed the socket, but libpq notices only
 * when it next reads, i.e. when the next statement has already failed: the
 * first request after a database restart would get 503 while /healthz
 * (on another connection) said 200. Reading what is waiting (one
 * non-blocking recv, and only after gs_store_idle_check() ms without use,
 * so a busy connection pays nothing) finds the end before the statement is
 * sent, and the statement goes out on a new connection. */
static void notice_idle_end(gs_store *st)
{
    char msg[512];
    int64_t now = monotonic_ms();
    bool idle = now - PG(st)->last_used_ms >= (int64_t)gs_store_idle_check();

    PG(st)->last_used_ms = now;
    if (!idle || PG(st)->lost || PG(st)->conn == NULL || PQstatus(PG(st)->conn) != CONNECTION_OK ||
        PQtransactionStatus(PG(st)->conn) != PQTRANS_IDLE)
        return;
    /* twice: a server ending the session sends its FATAL, then closes; a
     * read that finds the message returns before it sees the end */
    if (PQconsumeInput(PG(st)->conn) == 1 && PQstatus(PG(st)->conn) == CONNECTION_OK &&
        PQconsumeInput(PG(st)->conn) == 1 && PQstatus(PG(st)->conn) == CONNECTION_OK)
        return;
    log_info("idle database connection was closed by the server; connecting again detail=\"%s\"",
             log_qs(conn_message(PG(st)->conn, msg, sizeof(msg))));
    PG(st)->lost = true;
    PG(st)->lost_quietly = false;
}

/* A usable connection: reconnects after a loss, except inside an explicit
 * transaction (which the loss has rolled back). */
static gs_err ensure_connected(gs_store *st)
{
    if (!st->in_tx)
        notice_idle_end(st);
    if (!PG(st)->lost && PG(st)->conn != NULL && PQstatus(PG(st)->conn) == CONNECTION_OK)
        return GS_OK;
    if (st->in_tx)
        return gs_err_set(GS_ERR_DB_UNAVAILABLE, "the database connection was lost in a transaction");
    /* The keys lock (an advisory lock of the session) ended with the
     * connection: a new one would carry on without it, beside a command
     * that took it meanwhile. The command stops; after its unlock the
     * handle connects again. */
    if (st->keys_locked > 0)
        return gs_err_set(GS_ERR_DB_UNAVAILABLE,
                          "the database connection was lost while this command held the keys lock; not carried "
                          "on without it: try the command again");
    return connect_session(st, false);
}

/* A statement that changes nothing: sent again when the connection it
 * went out on turns out to have been ended (below). Not the advisory
 * locks' SELECTs. */
static bool reads_only(enum q which)
{
    return strncmp(queries[which], "SELECT ", 7) == 0 && which != Q_AUDIT_CHAIN_LOCK &&
           which != Q_AUDIT_CHAIN_UNLOCK;
}

/* The statement failed because the server had ended its connection (a
 * restart, a failover, pg_terminate_backend; not a hang, a lock or a
 * read-only server). Before result_error, which closes the books on it. */
static bool ended_by_server(gs_store *st, PGresult *r)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;

    if (PG(st)->no_answer || PG(st)->conn == NULL)
        return false;
    return PQstatus(PG(st)->conn) != CONNECTION_OK ||
           (state != NULL && (strncmp(state, "08", 2) == 0 || strcmp(state, "57P01") == 0 ||
                              strcmp(state, "57P02") == 0));
}

/* Runs prepared query `which` with p. GS_OK with *res holding the result
 * (caller PQclears it) or an error with *res NULL.
 * A connection in use less than gs_store_idle_check() ago is not read
 * before the statement goes out (notice_idle_end): under load every token
 * worker's is, so after a database restart or failover each worker's
 * next request met its ended connection and got 503, though it came after
 * the database was back. A read that meets a connection the server ended
 * is sent once more on a new one (a read changes nothing, so twice is
 * safe); not inside a transaction (the loss rolled it back) nor under the
 * keys lock (gone with the connection), nor when the connection was new
 * (the database is still away: no second connect). */
static gs_err run(gs_store *st, enum q which, const struct params *p, PGresult **res, const char *what)
{
    char name[16];
    gs_err err;
    PGresult *r;

    *res = NULL;
    for (int i = 0; p != NULL && i < p->n; i++) {
        size_t len = p->fmt[i] ? (size_t)p->len[i] : (p->val[i] ? strlen(p->val[i]) : 0);
        if (len > (size_t)GS_STORE_VALUE_MAX && which != Q_AUDIT_APPEND)
            return gs_err_set(GS_ERR_ARGS, "value too long for the database (parameter %d, at most %d bytes)", i + 1,
                              GS_STORE_VALUE_MAX);
    }
    (void)snprintf(name, sizeof(name), "gs_q%d", (int)which);
    for (int attempt = 0;; attempt++) {
        unsigned gen = PG(st)->conn_gen;
        if ((err = ensure_connected(st)) != GS_OK)
            return err;
        bool again = attempt == 0 && gen == PG(st)->conn_gen && reads_only(which) && !st->in_tx &&
                     st->keys_locked == 0;
        if (!PG(st)->prepared[which]) {
            PG(st)->writing = false;
            r = await_result(st, PQsendPrepare(PG(st)->conn, name, queries[which], 0, NULL));
            if (PQresultStatus(r) != PGRES_COMMAND_OK) {
                again = again && ended_by_server(st, r);
                err = result_error(st, r, what);
                PQclear(r);
                if (again)
                    continue;
                return err;
            }
            PQclear(r);
            PG(st)->prepared[which] = true;
        }
        PG(st)->writing = !reads_only(which);
        r = await_result(st, PQsendQueryPrepared(PG(st)->conn, name, p ? p->n : 0, p ? p->val : NULL,
                                                 p ? p->len : NULL, p ? p->fmt : NULL, 0));
        if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
            again = again && ended_by_server(st, r);
            err = result_error(st, r, what);
            PQclear(r);
            if (again)
                continue;
            return err;
        }
        *res = r;
        return GS_OK;
    }
}

/* A statement without rows; *changes (may be NULL) gets the rows changed. */
static gs_err run_done(gs_store *st, enum q which, const struct params *p, const char *what, long *changes)
{
    PGresult *r = NULL;
    gs_err err = run(st, which, p, &r, what);
    if (err == GS_OK && changes != NULL)
        *changes = strtol(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return err;
}

static char *col_strdup(PGresult *r, int row, int col, bool *oom)
{
    char *v;
    if (PQgetisnull(r, row, col))
        return NULL;
    v = strdup(PQgetvalue(r, row, col));
    if (v == NULL)
        *oom = true;
    return v;
}

static int64_t col_int(PGresult *r, int row, int col) { return strtoll(PQgetvalue(r, row, col), NULL, 10); }

/* A BYTEA column selected as encode(col, 'hex'), decoded into *out (NULL
 * and 0 for SQL NULL or no bytes, as SQLite's blob reader). GS_OK,
 * GS_ERR_NOMEM, or GS_ERR_SCHEMA for text that is not hex. */
static gs_err col_hexdup(PGresult *r, int row, int col, unsigned char **out, size_t *len)
{
    const char *hex = PQgetvalue(r, row, col);
    size_t n = strlen(hex);

    *out = NULL;
    *len = 0;
    if (PQgetisnull(r, row, col) || n == 0)
        return GS_OK;
    if (n % 2 != 0)
        return gs_err_set(GS_ERR_SCHEMA, "malformed hex column");
    if ((*out = malloc(n / 2)) == NULL)
        return GS_ERR_NOMEM;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = util_hex_digit((unsigned char)hex[2 * i]);
        int lo = util_hex_digit((unsigned char)hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            free(*out);
            *out = NULL;
            return gs_err_set(GS_ERR_SCHEMA, "malformed hex column");
        }
        (*out)[i] = (unsigned char)(hi << 4 | lo);
    }
    *len = n / 2;
    return GS_OK;
}

/* ---- connection, schema ------------------------------------------------------ */

static gs_err read_version(gs_store *st, int *v)
{
    PGresult *r = pg_exec(st, "SELECT to_regclass('schema_version') IS NOT NULL");
    gs_err err = GS_OK;
    int exists;

    *v = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        err = result_error(st, r, "schema version");
        goto out;
    }
    exists = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    r = NULL;
    if (!exists) /* a database without our tables: version 0 */
        goto out;
    r = pg_exec(st, "SELECT max(version) FROM schema_version");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        err = result_error(st, r, "schema version");
    else if (!PQgetisnull(r, 0, 0))
        *v = (int)col_int(r, 0, 0);
out:
    PQclear(r);
    return err;
}

/* A migration's ALTER TABLE takes its table's ACCESS EXCLUSIVE lock:
 * it waits for every transaction that has touched the table (a running
 * server of the older version, an operator's open psql transaction), and
 * while it waits every other session's statement on that table queues
 * behind it. Unbounded, one transaction left open stopped the upgrade for
 * as long as it stayed open, and every running server's requests for as
 * long (each gave up after its 5 s lock_timeout: 503 for all). So each
 * statement of the migration waits at most MIGRATE_LOCK_WAIT for a table
 * lock (less than the servers' 5 s: those queued behind it are then
 * served late, not refused), and a migration that meets one is rolled
 * back and tried again after a pause that lets the queue drain, at most
 * MIGRATE_ATTEMPTS times. Waiting for another server's migration (the
 * advisory lock) stays unbounded: that one is bounded so itself. */
#define MIGRATE_LOCK_WAIT "1s"
#define MIGRATE_ATTEMPTS 3

/* The migration's first statement. A role that may not create tables
 * (PostgreSQL 15 gives the public schema's CREATE to the database's
 * owner alone; the server role of docs/scale-out.md, "Database roles")
 * got "migrate: ERROR: permission denied for schema public LINE 1:
 * CREATE TABLE ...", from `ca init` and from a serve started on a
 * database nobody had set up, which said neither whose right it lacks
 * nor who makes the tables. */
static gs_err create_version_table(gs_store *st)
{
    PGresult *r = pg_exec(st, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)");
    const char *state = PQresultStatus(r) == PGRES_FATAL_ERROR ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    bool denied = state != NULL && strcmp(state, "42501") == 0; /* insufficient_privilege */
    gs_err err = PQresultStatus(r) == PGRES_COMMAND_OK ? GS_OK : result_error(st, r, "migrate");

    PQclear(r);
    if (err != GS_OK && denied) {
        char detail[512], q[96];
        const char *user = PG(st)->conn != NULL ? PQuser(PG(st)->conn) : NULL;
        (void)util_strlcpy(detail, gs_err_detail(), sizeof(detail));
        err = gs_err_set(err,
                         "the database role %s may not create groupsrv's tables (no CREATE on the schema): run "
                         "`groupsrv ca init` (and, after an upgrade, `groupsrv check`) as the schema's owner, "
                         "then the servers as this role with the grants docs/scale-out.md (\"Database roles\") "
                         "lists (%s)",
                         log_quote(q, sizeof(q), user != NULL ? user : "?"), detail);
    }
    return err;
}

static gs_err migrate_once(gs_store *st, int *found)
{
    char sql[96];
    gs_err err;
    int v = 0;

    /* Several servers starting on a new database: the first migrates, the
     * others wait on the lock and then find the schema current. */
    if ((err = exec_simple(st, "BEGIN", "migrate")) != GS_OK)
        return err;
    /* the first server's migration may take longer than [db] timeout */
    PG(st)->unbounded = true;
    if ((err = exec_simple(st, "SET LOCAL lock_timeout = 0; SET LOCAL statement_timeout = 0", "migrate")) != GS_OK ||
        (err = exec_simple(st, "SELECT pg_advisory_xact_lock(" MIGRATE_LOCK ")", "migrate")) != GS_OK ||
        (err = exec_simple(st, "SET LOCAL lock_timeout = '" MIGRATE_LOCK_WAIT "'", "migrate")) != GS_OK ||
        (err = create_version_table(st)) != GS_OK || (err = read_version(st, &v)) != GS_OK)
        goto out;
    *found = v;
    if (v > (int)GS_STORE_SCHEMA_VERSION) {
        err = GS_ERR_SCHEMA; /* gs_store_settle_schema says it */
        goto out;
    }
    for (; v < GS_STORE_SCHEMA_VERSION; v++) {
        if ((err = exec_simple(st, migrations[v], "migrate")) != GS_OK)
            goto out;
        (void)snprintf(sql, sizeof(sql), "DELETE FROM schema_version; INSERT INTO schema_version VALUES (%d)", v + 1);
        if ((err = exec_simple(st, sql, "migrate")) != GS_OK)
            goto out;
        log_info("database migrated version=%d", v + 1);
    }
    err = exec_simple(st, "COMMIT", "migrate");
out:
    if (err)
        (void)exec_simple(st, "ROLLBACK", "migrate");
    PG(st)->unbounded = false;
    return err;
}

static gs_err migrate(gs_store *st, int *found)
{
    const struct timespec pause = {.tv_sec = 1};
    gs_err err;

    for (int attempt = 1;; attempt++) {
        err = migrate_once(st, found);
        if (err != GS_ERR_DB_UNAVAILABLE || gs_err_db_cause() != GS_DB_CAUSE_LOCKED)
            return err;
        if (attempt == MIGRATE_ATTEMPTS)
            break;
        log_warn("database migration waited " MIGRATE_LOCK_WAIT " for a table lock another session holds; rolled "
                 "back, trying again attempt=%d",
                 attempt);
        (void)nanosleep(&pause, NULL);
        /* the lock timeout marked the (still open) connection lost */
        if ((err = ensure_connected(st)) != GS_OK)
            return err;
    }
    /* the lock timeout's own words say less than this */
    return gs_err_set_db(err, GS_DB_CAUSE_LOCKED,
                         "a table stayed locked by another session (a transaction left open?) through %d tries of "
                         MIGRATE_LOCK_WAIT " each; try again",
                         MIGRATE_ATTEMPTS);
}

static const struct gs_store_ops pg_ops;
static void pg_close(gs_store *st);

/* Member addresses are US-ASCII and compare without ASCII case, as
 * SQLite's NOCASE: here the unique index and the lookups use lower()
 * under the database's collation. Under a Turkish or Azerbaijani one
 * (libc tr_TR or az_AZ, ICU tr or az; what a bare CREATE DATABASE gives
 * on such a host) lower('I') is U+0131 DOTLESS I, not 'i', so KIM@ and
 * kim@ were two members: a PUT in another case added a second record
 * instead of replacing the first, a removal left the other in place, and
 * a member recorded as KIM@ was no member for kim@'s certificate.
 * Refused at open, naming the way out, rather than served so. */
static gs_err check_ascii_case(gs_store *st)
{
    PGresult *r = pg_exec(st, "SELECT lower('ABCDEFGHIJKLMNOPQRSTUVWXYZ') = 'abcdefghijklmnopqrstuvwxyz'");
    gs_err err = GS_OK;

    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        err = result_error(st, r, "the database's collation");
    else if (strcmp(PQgetvalue(r, 0, 0), "t") != 0)
        err = gs_err_set(GS_ERR_DB,
                         "the database's collation does not lower-case the ASCII letters as ASCII (lower('I') is "
                         "not 'i', as under a Turkish or Azerbaijani locale): member addresses would not compare "
                         "without ASCII case; create the database with another locale, e.g. CREATE DATABASE ... "
                         "TEMPLATE template0 LOCALE 'C.UTF-8' (docs/scale-out.md, \"Database roles\")");
    PQclear(r);
    return err;
}

/* libpq waits as long as the kernel does by default: a connect to a host
 * that vanished, or a query on a connection whose peer is gone without a
 * reset, would hold an event-loop thread for minutes. Unless the URI says
 * otherwise: give up connecting after 5 s, and notice a dead peer within
 * about 10 s (TCP only; ignored on a unix socket). A store that writes
 * also wants a primary: target_session_attrs=read-write refuses a standby,
 * or a primary a failover demoted, at connect (the server would otherwise
 * read membership there, say healthy, and fail every audit insert), and
 * makes a multi-host URI move on to the new primary. A copy; NULL when out
 * of memory. */
static char *url_with_timeouts(const char *url, bool writes)
{
    static const char *const fixed[] = {"connect_timeout=5",   "keepalives_idle=5",
                                        "keepalives_interval=2", "keepalives_count=3",
                                        "tcp_user_timeout=10000", "target_session_attrs=read-write"};
    /* and the process's name for pg_stat_activity (gs_store_set_app_name:
     * "groupsrv gs-a", ...): as fallback_application_name, which libpq
     * sends only when neither the URI nor PGAPPNAME names one; its
     * characters need no %-encoding but the space */
    char app[sizeof("fallback_application_name=") + 3 * 64];
    const char *defaults[GS_ARRAY_LEN(fixed) + 1];
    size_t ndefaults = 0, cap = strlen(url) + 1, used, a;
    char *out;

    for (size_t i = 0; i < GS_ARRAY_LEN(fixed); i++)
        if (writes || strncmp(fixed[i], "target_session_attrs=", 21) != 0) /* writers only */
            defaults[ndefaults++] = fixed[i];
    if (*gs_store_app_name() != '\0') {
        a = (size_t)snprintf(app, sizeof(app), "fallback_application_name=");
        for (const char *p = gs_store_app_name(); *p != '\0' && a + 4 <= sizeof(app); p++)
            a += (size_t)snprintf(app + a, sizeof(app) - a, *p == ' ' ? "%%20" : "%c", *p);
        defaults[ndefaults++] = app;
    }
    for (size_t i = 0; i < ndefaults; i++)
        cap += strlen(defaults[i]) + 1;
    if ((out = malloc(cap)) == NULL)
        return NULL;
    used = (size_t)snprintf(out, cap, "%s", url);
    for (size_t i = 0; i < ndefaults; i++) {
        size_t key = strcspn(defaults[i], "=") + 1;
        const char *q = gs_store_url_query(out); /* not a '?' in the password */
        /* "?key=" or "&key=" already in the query: the operator's value */
        int present = 0;
        for (const char *p = q; p != NULL && !present; p = strchr(p + 1, '&'))
            present = strncmp(p + 1, defaults[i], key) == 0;
        /* No separator after one the query ends in: libpq takes "...?"
         * and "...?a=b&", but refuses the empty parameter of "?&k=v". */
        if (!present)
            used += (size_t)snprintf(out + used, cap - used, "%s%s",
                                     q == NULL ? "?" : out[used - 1] == '?' || out[used - 1] == '&' ? "" : "&",
                                     defaults[i]);
    }
    return out;
}

gs_err gs_store_pg_open(const char *url, unsigned flags, gs_store **out)
{
    gs_store *st = NULL;
    gs_err err = GS_ERR_NOMEM;
    int v = 0;

    if ((st = calloc(1, sizeof(struct pg_store))) == NULL)
        goto out;
    st->ops = &pg_ops;
    st->readonly = (flags & GS_STORE_READONLY) != 0;
    if ((PG(st)->url = url_with_timeouts(url, !st->readonly)) == NULL)
        goto out;
    if ((err = connect_session(st, true)) != GS_OK || (err = check_ascii_case(st)) != GS_OK ||
        (err = read_version(st, &v)) != GS_OK)
        goto out;
    if ((err = gs_store_settle_schema(st, v, migrate, "(PostgreSQL)")) != GS_OK)
        goto out;
    *out = st;
    st = NULL;
    err = GS_OK;
out:
    if (st != NULL)
        pg_close(st);
    return err;
}

static void pg_close(gs_store *st)
{
    if (PG(st)->conn != NULL)
        PQfinish(PG(st)->conn);
    free(PG(st)->url);
    free(st);
}

static int64_t realtime_ms(void)
{
    struct timespec ts;
    (void)clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* gs_store_clock_offset: the local clock's midpoint around the query
 * against clock_timestamp() (now() is the transaction's start). */
static gs_err pg_clock_offset(gs_store *st, int64_t *offset_ms)
{
    PGresult *r;
    int64_t before, after;
    gs_err err = ensure_connected(st);

    if (err)
        return err;
    before = realtime_ms();
    r = pg_exec(st, "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint");
    after = realtime_ms();
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQgetisnull(r, 0, 0))
        err = result_error(st, r, "the database's clock");
    else
        *offset_ms = before + (after - before) / 2 - strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return err;
}

static gs_err pg_change_stamp(gs_store *st, uint64_t *stamp)
{
    PGresult *r = NULL;
    gs_err err = run(st, Q_STAMP, NULL, &r, "change stamp");
    if (err == GS_OK) {
        /* The counter and the connection it was read on: a new connection
         * may reach another database (the standby a failover promoted,
         * which lacks the old primary's last commits; a restored backup),
         * whose counter can come back to a value read before with other
         * rows behind it (a member removed there since). What was kept
         * from the old connection is dropped then: a stamp read on one
         * connection never equals one read on another. Counted here, not
         * mixed from the two: the counter with the connection count in
         * its top 16 bits came back equal 65536 connections later (and for
         * a counter past 2^48), keeping a removed member's record. */
        if (PQntuples(r) == 1) {
            int64_t n = col_int(r, 0, 0);
            if (!PG(st)->stamp_known || n != PG(st)->stamp_n || PG(st)->conn_gen != PG(st)->stamp_gen) {
                PG(st)->stamp_known = true;
                PG(st)->stamp_n = n;
                PG(st)->stamp_gen = PG(st)->conn_gen;
                PG(st)->stamp++;
            }
            *stamp = PG(st)->stamp;
        } else {
            err = gs_err_set(GS_ERR_SCHEMA, "the changes row is missing");
        }
    }
    PQclear(r);
    return err;
}

static gs_err pg_begin(gs_store *st)
{
    gs_err err = ensure_connected(st);
    return err ? err : exec_simple(st, "BEGIN", "begin");
}

/* The COMMIT of transaction xid got no answer, or its connection broke
 * (err, the thread's detail saying which), with its backend maybe still
 * at it: e.g. waiting for a synchronous standby that is down, which
 * closing the connection does not stop; it would commit when the wait
 * ends, long after the caller answered 503 and recorded the change as not
 * made (a member added, audited "database unavailable"). On a new
 * connection, which first ends that backend (connect_session,
 * end_orphan), PostgreSQL's txid_status tells the outcome, decided by
 * then: committed, GS_OK (the caller goes on as after a commit; under the
 * keys lock, lost with the old connection, the handle stays lost so the
 * command's further statements stop, as ensure_connected says); aborted
 * (*aborted set) or still undecided (a backend that would not end, the
 * database not reachable for the lookup), err as it was. */
static gs_err commit_outcome(gs_store *st, const char *xid, gs_err err, bool *aborted)
{
    char detail[512];
    gs_db_cause cause = gs_err_db_cause();
    bool committed = false;

    (void)snprintf(detail, sizeof(detail), "%s", gs_err_detail());
    if (PG(st)->conn != NULL) {
        PQfinish(PG(st)->conn);
        PG(st)->conn = NULL;
    }
    if (connect_session(st, false) == GS_OK) {
        struct params p = {0};
        p_text(&p, xid);
        PGresult *r = await_result(st, PQsendQueryParams(PG(st)->conn, "SELECT txid_status($1::bigint)", p.n, NULL,
                                                         p.val, p.len, p.fmt, 0));
        bool told = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0);
        committed = told && strcmp(PQgetvalue(r, 0, 0), "committed") == 0;
        *aborted = told && strcmp(PQgetvalue(r, 0, 0), "aborted") == 0;
        PQclear(r);
    }
    if (st->keys_locked > 0 && PG(st)->conn != NULL) {
        PQfinish(PG(st)->conn);
        PG(st)->conn = NULL;
        PG(st)->lost = true;
        PG(st)->lost_quietly = true; /* the loss was logged, and so was the new connection */
    }
    if (committed) {
        log_warn("database commit whose answer was lost was made (looked up by its transaction id) detail=\"%s\"",
                 log_qs(detail));
        return GS_OK;
    }
    return gs_err_set_db(err, cause, "%s", detail);
}

static gs_err pg_commit(gs_store *st)
{
    char xid[32] = "";
    PGresult *r;
    gs_err err = ensure_connected(st);

    if (err)
        return err;
    /* The transaction's id (none when it wrote nothing): what
     * commit_outcome asks about if the COMMIT's answer is lost. */
    r = pg_exec(st, "SELECT txid_current_if_assigned()");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        err = result_error(st, r, "commit");
        PQclear(r);
        return err;
    }
    if (PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
        (void)snprintf(xid, sizeof(xid), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    err = exec_simple(st, "COMMIT", "commit");
    /* A COMMIT sent whose answer was lost: made or not, only a lookup
     * tells; one that finds neither leaves the outcome unknown
     * (gs_store_commit_unknown), and so does a backend that could not be
     * identified to end it (no lookup: it may still commit). */
    if (err == GS_ERR_DB_UNAVAILABLE && xid[0] != '\0') {
        bool aborted = false;
        if (PG(st)->orphan_pid != 0)
            err = commit_outcome(st, xid, err, &aborted);
        st->commit_unknown = err != GS_OK && !aborted;
    }
    return err;
}

static void pg_rollback(gs_store *st)
{
    if (!PG(st)->lost && PG(st)->conn != NULL && PQstatus(PG(st)->conn) == CONNECTION_OK)
        (void)exec_simple(st, "ROLLBACK", "rollback");
}

/* The keys lock (store.h): a session-level advisory lock, taken outside
 * any transaction and kept across the command's commits. A connection
 * lost meanwhile loses the lock with it; the command's statements then
 * fail (ensure_connected does not connect again while it is held) and
 * it stops. */
static gs_err pg_keys_lock_try(gs_store *st, bool *got)
{
    PGresult *res;
    gs_err err = ensure_connected(st);

    *got = false;
    if (err)
        return err;
    /* Held, the session sits idle while the token makes a key (seconds
     * for RSA-3072 and more): an idle_session_timeout the DBA set on the
     * role (PostgreSQL 14 and later) ended it there, the lock with it, and
     * every group create and rotate failed with "the database connection
     * was lost while this command held the keys lock", again at each
     * retry. So the session that holds the lock has none; pg_keys_unlock
     * puts the role's value back. No such setting (before 14): nothing.
     * current_setting, not pg_settings: a database that revokes that view
     * from PUBLIC (a hardened database) failed every command that
     * takes this lock. */
    res = pg_exec(st, "SELECT l, CASE WHEN l AND current_setting('idle_session_timeout', true) IS NOT NULL "
                      "THEN set_config('idle_session_timeout', '0', false) END "
                      "FROM pg_try_advisory_lock(" KEYS_LOCK ") AS l");
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQnfields(res) != 2) {
        err = result_error(st, res, "the keys lock");
    } else {
        *got = PQgetvalue(res, 0, 0)[0] == 't';
        PG(st)->idle_timeout_off = *got && !PQgetisnull(res, 0, 1);
    }
    PQclear(res);
    return err;
}

/* Best effort, and the thread's error detail stays the command's. A
 * connection marked lost may still be open (a statement that gave up on
 * a lock, 55P03, or met a read-only standby): its session, and with it
 * the lock, is ended here, not at this handle's next statement, which in
 * a server's idle worker may be a long time away. */
static void pg_keys_unlock(gs_store *st)
{
    if (!PG(st)->lost && PG(st)->conn != NULL && PQstatus(PG(st)->conn) == CONNECTION_OK) {
        /* RESET: the value the session began with (postgresql.conf, ALTER
         * ROLE or DATABASE ... SET, the URI's options) */
        PQclear(pg_exec(st, PG(st)->idle_timeout_off
                                ? "SELECT pg_advisory_unlock(" KEYS_LOCK "); RESET idle_session_timeout"
                                : "SELECT pg_advisory_unlock(" KEYS_LOCK ")"));
        /* Nobody reads its outcome: no answer in time (the connection is
         * closed, the lock with it) is not the next statement's error. */
        PG(st)->no_answer = false;
    } else if (PG(st)->conn != NULL) {
        PQfinish(PG(st)->conn);
        PG(st)->conn = NULL;
        PG(st)->lost = true;
    }
    PG(st)->idle_timeout_off = false;
}

/* ---- CA -------------------------------------------------------------------- */

static gs_err pg_ca_get(gs_store *st, gs_store_ca **out)
{
    PGresult *r = NULL;
    gs_store_ca *ca = NULL;
    bool oom = false;
    gs_err err = run(st, Q_CA_GET, NULL, &r, "read ca");

    if (err)
        return err;
    if (PQntuples(r) == 0) {
        err = gs_err_set(GS_ERR_NOT_FOUND, "no CA (run `groupsrv ca init`)");
        goto out;
    }
    if ((ca = calloc(1, sizeof(*ca))) == NULL) {
        err = GS_ERR_NOMEM;
        goto out;
    }
    ca->label = col_strdup(r, 0, 0, &oom);
    ca->cert_pem = col_strdup(r, 0, 1, &oom);
    ca->created = col_int(r, 0, 2);
    ca->weakenings = col_strdup(r, 0, 3, &oom);
    ca->replicable = col_int(r, 0, 4) != 0;
    if (oom || ca->label == NULL || ca->cert_pem == NULL || ca->weakenings == NULL) {
        err = GS_ERR_NOMEM;
        goto out;
    }
    *out = ca;
    ca = NULL;
out:
    gs_store_ca_free(ca);
    PQclear(r);
    return err;
}

static gs_err pg_ca_put(gs_store *st, const char *key_label, const char *cert_pem, bool replicable,
                        const gs_store_keyrec *rec)
{
    struct params p = {0};
    p_text(&p, key_label);
    p_text(&p, cert_pem);
    p_int(&p, gs_store_now());
    p_text(&p, gs_store_rec_weak(rec));
    p_int(&p, replicable ? 1 : 0);
    gs_err err = run_done(st, Q_CA_PUT, &p, "store ca", NULL);
    if (err == GS_ERR_EXISTS)
        err = gs_err_set(GS_ERR_EXISTS, "a CA is already initialised in this database");
    return err;
}

static gs_err pg_ca_set_cert(gs_store *st, const char *cert_pem)
{
    struct params p = {0};
    long changes = 0;
    p_text(&p, cert_pem);
    gs_err err = run_done(st, Q_CA_SET_CERT, &p, "store ca certificate", &changes);
    if (err == GS_OK && changes == 0)
        err = gs_err_set(GS_ERR_NOT_FOUND, "no CA (run `groupsrv ca init`)");
    return err;
}

/* ---- groups ------------------------------------------------------------------ */

static gs_err pg_group_add(gs_store *st, const gs_store_group *g, int64_t *id)
{
    struct params p = {0};
    PGresult *r = NULL;
    p_text(&p, g->name);
    p_text(&p, g->address);
    p_int(&p, g->methods);
    p_text(&p, g->algorithm);
    p_int(&p, g->allow_pkcs1v15 ? 1 : 0);
    p_text(&p, g->reject_label);
    p_int(&p, gs_store_now());
    p_text(&p, g->policy ? g->policy : "");
    p_text(&p, g->reject_seal_label);
    p_bytes(&p, g->reject_sealed, g->reject_sealed_len);
    p_int(&p, g->replicable ? 1 : 0);
    p_text(&p, gs_wrap_name(gs_store_group_wrap(g->member_wrap)));
    p_text(&p, g->reject_weakenings ? g->reject_weakenings : "");
    gs_err err = run(st, Q_GROUP_ADD, &p, &r, "add group");
    if (err == GS_ERR_EXISTS)
        err = gs_err_set(GS_ERR_EXISTS, "group %s already exists", g->name);
    else if (err == GS_OK && id != NULL && PQntuples(r) == 1)
        *id = col_int(r, 0, 0);
    PQclear(r);
    return err;
}

static gs_err group_from_row(PGresult *r, int row, gs_store_group **out)
{
    bool oom = false;
    gs_store_group *g = calloc(1, sizeof(*g));
    *out = NULL;
    if (g == NULL)
        return GS_ERR_NOMEM;
    g->id = col_int(r, row, 0);
    g->name = col_strdup(r, row, 1, &oom);
    g->address = col_strdup(r, row, 2, &oom);
    g->methods = (unsigned)col_int(r, row, 3);
    g->algorithm = col_strdup(r, row, 4, &oom);
    g->allow_pkcs1v15 = col_int(r, row, 5) != 0;
    g->reject_label = col_strdup(r, row, 6, &oom);
    g->created = col_int(r, row, 7);
    g->policy = col_strdup(r, row, 8, &oom);
    g->reject_seal_label = col_strdup(r, row, 9, &oom);
    gs_err err = col_hexdup(r, row, 10, &g->reject_sealed, &g->reject_sealed_len);
    g->replicable = col_int(r, row, 11) != 0;
    g->member_wrap = gs_store_group_wrap(gs_store_wrap_from_text(PQgetvalue(r, row, 12)));
    g->reject_weakenings = col_strdup(r, row, 13, &oom);
    if (err == GS_OK && (oom || g->name == NULL || g->address == NULL || g->algorithm == NULL || g->policy == NULL ||
                         g->reject_weakenings == NULL))
        err = GS_ERR_NOMEM;
    if (err != GS_OK) {
        gs_store_group_free(g);
        return err;
    }
    *out = g;
    return GS_OK;
}

static gs_err pg_group_get(gs_store *st, const char *name, gs_store_group **out)
{
    struct params p = {0};
    PGresult *r = NULL;
    char q[80];
    p_text(&p, name);
    gs_err err = run(st, Q_GROUP_GET, &p, &r, "read group");
    if (err == GS_OK) {
        if (PQntuples(r) == 1)
            err = group_from_row(r, 0, out);
        else
            err = gs_err_set(GS_ERR_NOT_FOUND, "unknown group %s", log_quote(q, sizeof(q), name));
    }
    PQclear(r);
    return err;
}

/* The rows of query `which` (parameters p, may be NULL), one array element
 * each, read by `row` into a zeroed element; no rows, no array. On failure
 * `release` frees what was read. */
typedef gs_err (*row_reader)(PGresult *r, int row, void *elem);
typedef void (*rows_release)(void *list, size_t n);

static gs_err read_rows(gs_store *st, enum q which, const struct params *p, size_t elem, row_reader row,
                        rows_release release, const char *what, void **out, size_t *n)
{
    PGresult *r = NULL;
    unsigned char *list = NULL;
    size_t count = 0, bytes;
    gs_err err;
    int rows;

    if ((err = run(st, which, p, &r, what)) != GS_OK)
        return err;
    rows = PQntuples(r);
    if (rows == 0) /* as SQLite's: no rows, no array */
        goto out;
    if (util_size_mul((size_t)rows, elem, &bytes) != 0 || (list = calloc(1, bytes)) == NULL) {
        err = GS_ERR_NOMEM;
        goto out;
    }
    for (; count < (size_t)rows; count++)
        if ((err = row(r, (int)count, list + count * elem)) != GS_OK) {
            count++; /* partly read: release frees what it holds */
            goto out;
        }
    *out = list;
    *n = count;
    list = NULL;
    count = 0;
out:
    release(list, count);
    PQclear(r);
    return err;
}

/* Per-group lists: the group id is the one parameter. */
static gs_err read_group_rows(gs_store *st, enum q which, int64_t group_id, size_t elem, row_reader row,
                              rows_release release, const char *what, void **out, size_t *n)
{
    struct params p = {0};
    p_int(&p, group_id);
    return read_rows(st, which, &p, elem, row, release, what, out, n);
}

static gs_err group_row(PGresult *r, int row, void *elem) { return group_from_row(r, row, elem); }

static void release_groups(void *list, size_t n) { gs_store_group_list_free(list, n); }

static gs_err pg_group_list(gs_store *st, gs_store_group ***out, size_t *n)
{
    void *list = NULL;
    gs_err err = read_rows(st, Q_GROUP_LIST, NULL, sizeof(**out), group_row, release_groups, "list groups", &list, n);
    *out = list;
    return err;
}

/* ---- group key versions --------------------------------------------------------- */

/* Demotes the group's current version (keys or secrets) and inserts the new
 * one, in one transaction. */
static gs_err add_version(gs_store *st, enum q demote, enum q add, const struct params *row, int64_t group_id,
                          gs_key_state state, const char *what)
{
    struct params p = {0};
    bool mine = false;
    gs_err err = gs_store_tx_begin_if_needed(st, &mine);

    if (err)
        return err;
    p_int(&p, GS_KEY_OLD);
    p_int(&p, group_id);
    p_int(&p, GS_KEY_CURRENT);
    /* an imported older version (OLD) demotes nothing */
    if (state != GS_KEY_CURRENT || (err = run_done(st, demote, &p, what, NULL)) == GS_OK)
        err = run_done(st, add, row, what, NULL);
    return gs_store_tx_end_if_mine(st, mine, err);
}

static gs_err pg_group_key_add(gs_store *st, int64_t group_id, unsigned version, const char *token_label,
                               const char *cert_pem, gs_key_state state, const gs_store_keyrec *rec)
{
    struct params p = {0};
    p_int(&p, group_id);
    p_int(&p, version);
    p_text(&p, token_label);
    p_text(&p, cert_pem);
    p_int(&p, state);
    p_int(&p, gs_store_now());
    p_text(&p, gs_store_rec_weak(rec));
    gs_err err = add_version(st, Q_KEY_DEMOTE, Q_KEY_ADD, &p, group_id, state, "add key version");
    if (err == GS_ERR_EXISTS)
        err = gs_err_set(GS_ERR_EXISTS, "key version %u or label %s already recorded", version, token_label);
    return err;
}

static gs_err pg_group_key_set_cert(gs_store *st, int64_t group_id, unsigned version, const char *cert_pem)
{
    struct params p = {0};
    long changes = 0;
    p_text(&p, cert_pem);
    p_int(&p, group_id);
    p_int(&p, version);
    gs_err err = run_done(st, Q_KEY_SET_CERT, &p, "set certificate", &changes);
    if (err == GS_OK && changes == 0)
        err = gs_err_set(GS_ERR_NOT_FOUND, "no key version %u", version);
    return err;
}

/* Marks an old version retired (q: binds state, group, version, old
 * state and, for group keys, the time; what names the row). */
static gs_err retire_row(gs_store *st, enum q q, const char *what, int64_t group_id, unsigned version)
{
    struct params p = {0};
    long changes = 0;
    p_int(&p, GS_KEY_RETIRED);
    p_int(&p, group_id);
    p_int(&p, version);
    p_int(&p, GS_KEY_OLD);
    if (q == Q_KEY_RETIRE)
        p_int(&p, gs_store_now());
    gs_err err = run_done(st, q, &p, "retire key", &changes);
    if (err == GS_OK && changes == 0)
        err = gs_err_set(GS_ERR_STATE, "%s version %u is not an old (retirable) version", what, version);
    return err;
}

static gs_err pg_group_key_retire(gs_store *st, int64_t group_id, unsigned version)
{
    return retire_row(st, Q_KEY_RETIRE, "key", group_id, version);
}

/* The sealed blob goes with the row's retirement: it is the key. */
static gs_err pg_secret_retire(gs_store *st, int64_t group_id, unsigned version)
{
    return retire_row(st, Q_SECRET_RETIRE, "secret key", group_id, version);
}

static gs_err group_key_from_row(PGresult *r, int row, void *elem)
{
    gs_store_group_key *k = elem;
    bool oom = false;
    k->version = (unsigned)col_int(r, row, 0);
    k->token_label = col_strdup(r, row, 1, &oom);
    k->cert_pem = col_strdup(r, row, 2, &oom);
    k->state = (gs_key_state)col_int(r, row, 3);
    k->created = col_int(r, row, 4);
    k->retired = col_int(r, row, 5);
    k->weakenings = col_strdup(r, row, 6, &oom);
    return (oom || !k->token_label || !k->cert_pem || !k->weakenings) ? GS_ERR_NOMEM : GS_OK;
}

static void release_group_keys(void *list, size_t n) { gs_store_group_keys_free(list, n); }

static gs_err pg_group_keys(gs_store *st, int64_t group_id, gs_store_group_key **out, size_t *n)
{
    void *list = NULL;
    gs_err err = read_group_rows(st, Q_KEYS, group_id, sizeof(**out), group_key_from_row, release_group_keys,
                                 "list key versions", &list, n);
    *out = list;
    return err;
}

/* ---- secret key versions ------------------------------------------------------------ */

static gs_err pg_secret_add(gs_store *st, int64_t group_id, unsigned version, const char *token_label,
                            const unsigned char kek_id[GS_KEK_ID_LEN], gs_key_state state,
                            const gs_store_keyrec *rec)
{
    struct params p = {0};
    p_int(&p, group_id);
    p_int(&p, version);
    p_text(&p, token_label);
    p_bytes(&p, kek_id, GS_KEK_ID_LEN);
    p_int(&p, state);
    p_int(&p, gs_store_now());
    p_text(&p, gs_store_rec_weak(rec));
    p_text(&p, rec != NULL ? rec->seal_label : NULL);
    p_bytes(&p, rec != NULL ? rec->sealed : NULL, rec != NULL ? rec->sealed_len : 0);
    gs_err err = add_version(st, Q_SECRET_DEMOTE, Q_SECRET_ADD, &p, group_id, state, "add secret version");
    if (err == GS_ERR_EXISTS)
        err = gs_err_set(GS_ERR_EXISTS, "secret key version %u or label %s already recorded", version, token_label);
    return err;
}

static gs_err secret_from_row(PGresult *r, int row, void *elem)
{
    gs_store_secret *k = elem;
    bool oom = false;
    unsigned char *kek_id = NULL;
    size_t kek_id_len = 0;
    gs_err err;

    k->version = (unsigned)col_int(r, row, 0);
    k->token_label = col_strdup(r, row, 1, &oom);
    if ((err = col_hexdup(r, row, 2, &kek_id, &kek_id_len)) != GS_OK)
        return err;
    if (kek_id_len == GS_KEK_ID_LEN)
        memcpy(k->kek_id, kek_id, GS_KEK_ID_LEN);
    free(kek_id);
    k->state = (gs_key_state)col_int(r, row, 3);
    k->created = col_int(r, row, 4);
    k->weakenings = col_strdup(r, row, 5, &oom);
    k->seal_label = col_strdup(r, row, 6, &oom);
    if ((err = col_hexdup(r, row, 7, &k->sealed, &k->sealed_len)) != GS_OK)
        return err;
    return (oom || !k->token_label || !k->weakenings) ? GS_ERR_NOMEM : GS_OK;
}

static void release_secrets(void *list, size_t n) { gs_store_secrets_free(list, n); }

static gs_err pg_secrets(gs_store *st, int64_t group_id, gs_store_secret **out, size_t *n)
{
    void *list = NULL;
    gs_err err = read_group_rows(st, Q_SECRETS, group_id, sizeof(**out), secret_from_row, release_secrets,
                                 "list secret versions", &list, n);
    *out = list;
    return err;
}

static gs_err pg_secret_by_kek_id(gs_store *st, const unsigned char *kek_id, int64_t *group_id, unsigned *version)
{
    struct params p = {0};
    PGresult *r = NULL;
    p_bytes(&p, kek_id, GS_KEK_ID_LEN);
    gs_err err = run(st, Q_SECRET_BY_KEK, &p, &r, "find secret");
    if (err == GS_OK) {
        if (PQntuples(r) == 1) {
            *group_id = col_int(r, 0, 0);
            *version = (unsigned)col_int(r, 0, 1);
        } else {
            err = gs_err_set(GS_ERR_NOT_FOUND, "no secret key with this identifier");
        }
    }
    PQclear(r);
    return err;
}

/* ---- seal keys ---------------------------------------------------------------------- */

static gs_err pg_seal_key_put(gs_store *st, const char *label, const char *weakenings)
{
    struct params p = {0};
    p_text(&p, label);
    p_text(&p, weakenings);
    p_int(&p, gs_store_now());
    return run_done(st, Q_SEAL_KEY_PUT, &p, "record seal key", NULL);
}

static gs_err seal_key_row(PGresult *r, int row, void *elem)
{
    gs_store_seal_key *k = elem;
    bool oom = false;
    k->label = col_strdup(r, row, 0, &oom);
    k->weakenings = col_strdup(r, row, 1, &oom);
    k->created = col_int(r, row, 2);
    return (oom || k->label == NULL || k->weakenings == NULL) ? GS_ERR_NOMEM : GS_OK;
}

static void release_seal_keys(void *list, size_t n) { gs_store_seal_keys_free(list, n); }

static gs_err pg_seal_keys(gs_store *st, gs_store_seal_key **out, size_t *n)
{
    void *list = NULL;
    gs_err err = read_rows(st, Q_SEAL_KEYS, NULL, sizeof(**out), seal_key_row, release_seal_keys, "list seal keys",
                           &list, n);
    *out = list;
    return err;
}

/* ---- members ------------------------------------------------------------------------ */

static gs_err pg_member_add(gs_store *st, int64_t group_id, const char *email, gs_role role, const char *cert_pem)
{
    struct params p = {0};
    p_int(&p, group_id);
    p_text(&p, email);
    p_int(&p, (int)role);
    p_text(&p, cert_pem);
    p_int(&p, gs_store_now());
    gs_err err = run_done(st, Q_MEMBER_ADD, &p, "add member", NULL);
    if (err == GS_ERR_EXISTS)
        err = gs_err_set(GS_ERR_EXISTS, "%s is already a member", email);
    return err;
}

static gs_err pg_member_remove(gs_store *st, int64_t group_id, const char *email)
{
    struct params p = {0};
    long changes = 0;
    char q[GS_EMAIL_MAX + 16];
    p_int(&p, group_id);
    p_text(&p, email);
    gs_err err = run_done(st, Q_MEMBER_REMOVE, &p, "remove member", &changes);
    if (err == GS_OK && changes == 0)
        err = gs_err_set(GS_ERR_NOT_FOUND, "%s is not a member", log_quote(q, sizeof(q), email));
    return err;
}

static gs_err member_from_row(PGresult *r, int row, void *elem)
{
    gs_store_member *m = elem;
    bool oom = false;
    m->email = col_strdup(r, row, 0, &oom);
    m->role = (gs_role)col_int(r, row, 1);
    m->cert_pem = col_strdup(r, row, 2, &oom);
    m->added = col_int(r, row, 3);
    m->wrap = PQgetisnull(r, row, 4) ? GS_WRAP_DEFAULT : gs_store_wrap_from_text(PQgetvalue(r, row, 4));
    return (oom || m->email == NULL) ? GS_ERR_NOMEM : GS_OK;
}

static gs_err pg_member_get(gs_store *st, int64_t group_id, const char *email, gs_store_member **out)
{
    struct params p = {0};
    PGresult *r = NULL;
    gs_store_member *m = NULL;
    gs_err err;

    p_int(&p, group_id);
    p_text(&p, email);
    if ((err = run(st, Q_MEMBER_GET, &p, &r, "read member")) != GS_OK)
        return err;
    if (PQntuples(r) == 0) {
        err = gs_err_set(GS_ERR_NOT_FOUND, "not a member");
        goto out;
    }
    if ((m = calloc(1, sizeof(*m))) == NULL) {
        err = GS_ERR_NOMEM;
        goto out;
    }
    if ((err = member_from_row(r, 0, m)) != GS_OK)
        goto out;
    *out = m;
    m = NULL;
out:
    gs_store_member_free(m);
    PQclear(r);
    return err;
}

static void release_members(void *list, size_t n) { gs_store_member_list_free(list, n); }

/* One UPDATE of a wrap column; NOT_FOUND when no row matched. */
static gs_err set_wrap(gs_store *st, enum q which, int64_t group_id, const char *email, const char *value,
                       const char *what)
{
    struct params p = {0};
    long changes = 0;
    p_text(&p, value);
    p_int(&p, group_id);
    if (email != NULL)
        p_text(&p, email);
    gs_err err = run_done(st, which, &p, what, &changes);
    if (err == GS_OK && changes == 0)
        err = gs_err_set(GS_ERR_NOT_FOUND, email != NULL ? "not a member" : "no such group");
    return err;
}

static gs_err pg_member_set_wrap(gs_store *st, int64_t group_id, const char *email, gs_wrap wrap)
{
    return set_wrap(st, Q_MEMBER_SET_WRAP, group_id, email, wrap == GS_WRAP_DEFAULT ? NULL : gs_wrap_name(wrap),
                    "set member wrap");
}

static gs_err pg_group_set_member_wrap(gs_store *st, int64_t group_id, gs_wrap wrap)
{
    return set_wrap(st, Q_GROUP_SET_WRAP, group_id, NULL, gs_wrap_name(wrap), "set group member wrap");
}

static gs_err pg_member_list(gs_store *st, int64_t group_id, gs_store_member **out, size_t *n)
{
    void *list = NULL;
    gs_err err = read_group_rows(st, Q_MEMBER_LIST, group_id, sizeof(**out), member_from_row, release_members,
                                 "list members", &list, n);
    *out = list;
    return err;
}

/* A backend left with a write in flight is not yet ended (end_orphan). */
static bool pg_write_unsettled(gs_store *st) { return PG(st)->orphan_pid != 0; }

static bool pg_take_unreplicated(gs_store *st)
{
    bool u = PG(st)->unreplicated;
    PG(st)->unreplicated = false;
    return u;
}

/* ---- audit chains ---------------------------------------------------------------------- */

static gs_err pg_audit_head(gs_store *st, const char *instance, int64_t *seq, char **line)
{
    struct params p = {0};
    PGresult *r = NULL;
    bool oom = false;
    p_text(&p, instance);
    gs_err err = run(st, Q_AUDIT_HEAD, &p, &r, "audit head");
    if (err == GS_OK)
        PG(st)->audit_gen = PG(st)->conn_gen;
    if (err == GS_OK && PQntuples(r) == 1) {
        *seq = col_int(r, 0, 0);
        *line = col_strdup(r, 0, 1, &oom);
        if (oom || *line == NULL) {
            *seq = 0;
            err = GS_ERR_NOMEM;
        }
    }
    PQclear(r);
    return err;
}

static gs_err pg_check_grants(gs_store *st, bool audit)
{
    struct params p = {0};
    PGresult *r = NULL;

    p_text(&p, audit ? "true" : "false");
    gs_err err = run(st, Q_GRANTS, &p, &r, "privileges");
    if (err == GS_OK && PQntuples(r) == 1 && !PQgetisnull(r, 0, 1))
        err = gs_err_set(GS_ERR_DB,
                         "the database role \"%s\" lacks privileges the server needs (docs/scale-out.md, "
                         "\"Database roles\"): %s",
                         PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1));
    PQclear(r);
    return err;
}

/* The lines as one text[] literal: {"l1","l2"} with " and \ escaped. */
static char *array_literal(char *const *lines, size_t n)
{
    size_t cap = 3, used = 0;
    char *buf;

    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(lines[i]);
        /* each byte at most doubled, plus quotes and a comma */
        if (l > (SIZE_MAX - cap) / 2 - 3)
            return NULL;
        cap += 2 * l + 3;
    }
    if ((buf = malloc(cap)) == NULL)
        return NULL;
    buf[used++] = '{';
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            buf[used++] = ',';
        buf[used++] = '"';
        for (const char *c = lines[i]; *c; c++) {
            if (*c == '"' || *c == '\\')
                buf[used++] = '\\';
            buf[used++] = *c;
        }
        buf[used++] = '"';
    }
    buf[used++] = '}';
    buf[used] = '\0';
    return buf;
}

static gs_err pg_audit_append(gs_store *st, const char *instance, int64_t first_seq, char *const *lines, size_t n)
{
    struct params p = {0};
    char *arr = array_literal(lines, n);
    long changes = 0;
    gs_err err;

    if (arr == NULL)
        return GS_ERR_NOMEM;
    /* On a connection made since the head was read or the last records
     * went in (a restart, a failover: ensure_connected notices one closed
     * while idle and connects again without a word), the record these
     * chain to must be in the table: a standby promoted may lack it.
     * Otherwise not looked at: rows an operator archived up to the head
     * while the server runs do not restart its chain. */
    if ((err = ensure_connected(st)) != GS_OK) {
        free(arr);
        return err;
    }
    p_text(&p, instance);
    p_int(&p, first_seq);
    p_text(&p, arr);
    p_text(&p, PG(st)->audit_gen != PG(st)->conn_gen ? "true" : "false");
    err = run_done(st, Q_AUDIT_APPEND, &p, "audit append", &changes);
    if (err == GS_OK && changes > 0)
        PG(st)->audit_gen = PG(st)->conn_gen;
    if (err == GS_ERR_EXISTS)
        err = gs_err_set(GS_ERR_EXISTS, "audit record %lld of instance %s already exists (two servers with one "
                         "[server] instance name?)", (long long)first_seq, instance);
    else if (err == GS_OK && changes == 0 && n > 0)
        err = gs_err_set(GS_ERR_NOT_FOUND, "audit record %lld of instance %s, which record %lld chains to, is not "
                         "in the table (a failover to a standby that lacked it? a restored backup?)",
                         (long long)first_seq - 1, instance, (long long)first_seq);
    else if (err == GS_OK && changes != (long)n)
        err = gs_err_set(GS_ERR_DB, "audit append stored %ld of %zu records", changes, n);
    free(arr);
    return err;
}

/* A session lock, outside any transaction: it waits as every lock wait
 * of the session does, at most lock_timeout (5 s, connect_session, unless
 * the role or database sets one), then fails. A connection lost meanwhile
 * loses the lock with it: the insert then fails or, on a new connection, meets the
 * other writer's seq (audit.c reads the head again). */
static gs_err pg_audit_chain_lock(gs_store *st, const char *instance)
{
    struct params p = {0};

    p_text(&p, instance);
    return run_done(st, Q_AUDIT_CHAIN_LOCK, &p, "audit chain lock", NULL);
}

/* Best effort on the connection that took it (a lost one holds no lock):
 * never connects again for it, as pg_keys_unlock. */
static void pg_audit_chain_unlock(gs_store *st, const char *instance)
{
    struct params p = {0};

    if (PG(st)->lost || PG(st)->conn == NULL || PQstatus(PG(st)->conn) != CONNECTION_OK)
        return;
    p_text(&p, instance);
    (void)run_done(st, Q_AUDIT_CHAIN_UNLOCK, &p, "audit chain unlock", NULL);
    PG(st)->no_answer = false;
}

static gs_err instance_row(PGresult *r, int row, void *elem)
{
    bool oom = false;
    char **name = elem;
    *name = col_strdup(r, row, 0, &oom);
    return oom || *name == NULL ? GS_ERR_NOMEM : GS_OK;
}

static void release_strings(void *list, size_t n) { gs_store_strings_free(list, n); }

static gs_err pg_audit_instances(gs_store *st, char ***out, size_t *n)
{
    void *list = NULL;
    gs_err err = read_rows(st, Q_AUDIT_INSTANCES, NULL, sizeof(**out), instance_row, release_strings,
                           "audit instances", &list, n);
    *out = list;
    return err;
}

static gs_err audit_row(PGresult *r, int row, void *elem)
{
    bool oom = false;
    gs_store_audit_row *a = elem;
    a->seq = col_int(r, row, 0);
    a->line = col_strdup(r, row, 1, &oom);
    return oom || a->line == NULL ? GS_ERR_NOMEM : GS_OK;
}

static void release_audit_rows(void *list, size_t n) { gs_store_audit_rows_free(list, n); }

static gs_err pg_audit_read(gs_store *st, const char *instance, int64_t after_seq, size_t limit,
                            gs_store_audit_row **out, size_t *n)
{
    struct params p = {0};
    void *list = NULL;
    p_text(&p, instance);
    p_int(&p, after_seq);
    p_int(&p, (int64_t)(limit > 100000 ? 100000 : limit));
    gs_err err = read_rows(st, Q_AUDIT_READ, &p, sizeof(**out), audit_row, release_audit_rows, "audit read", &list, n);
    *out = list;
    return err;
}

static const struct gs_store_ops pg_ops = {
    .name = "postgresql",
    .close = pg_close,
    .change_stamp = pg_change_stamp,
    .begin = pg_begin,
    .commit = pg_commit,
    .rollback = pg_rollback,
    .keys_lock_try = pg_keys_lock_try,
    .keys_unlock = pg_keys_unlock,
    .ca_get = pg_ca_get,
    .ca_put = pg_ca_put,
    .ca_set_cert = pg_ca_set_cert,
    .group_add = pg_group_add,
    .group_get = pg_group_get,
    .group_list = pg_group_list,
    .group_set_member_wrap = pg_group_set_member_wrap,
    .group_key_add = pg_group_key_add,
    .group_key_set_cert = pg_group_key_set_cert,
    .group_key_retire = pg_group_key_retire,
    .group_keys = pg_group_keys,
    .secret_add = pg_secret_add,
    .secrets = pg_secrets,
    .secret_retire = pg_secret_retire,
    .secret_by_kek_id = pg_secret_by_kek_id,
    .seal_key_put = pg_seal_key_put,
    .seal_keys = pg_seal_keys,
    .member_add = pg_member_add,
    .member_remove = pg_member_remove,
    .member_get = pg_member_get,
    .member_list = pg_member_list,
    .member_set_wrap = pg_member_set_wrap,
    .check_grants = pg_check_grants,
    .clock_offset = pg_clock_offset,
    .audit_head = pg_audit_head,
    .audit_append = pg_audit_append,
    .audit_instances = pg_audit_instances,
    .audit_read = pg_audit_read,
    .audit_chain_lock = pg_audit_chain_lock,
    .audit_chain_unlock = pg_audit_chain_unlock,
    .write_unsettled = pg_write_unsettled,
    .take_unreplicated = pg_take_unreplicated,
};
