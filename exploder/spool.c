/* spool.c: SQLite state and message files of the exploder. See spool.h. */
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sqlite3.h>

#include "log.h"
#include "util.h"

#define FILE_ID_BYTES 12

struct spool {
    sqlite3 *db;
    char *dir;
    char *msgdir;
};

/* Message states; recipients: pending, delivered, failed. */
enum { MSG_NEW = 0, MSG_READY = 1 };
enum { RCPT_PENDING = 0, RCPT_DELIVERED = 1, RCPT_FAILED = 2 };

/* Migrations: migrations[i] takes the spool schema from version i to i+1;
 * append, never edit one that shipped. */
static const char *const migrations[] = {
    /* 0 -> 1 */
    "CREATE TABLE IF NOT EXISTS lists("
    " id INTEGER PRIMARY KEY,"
    " address TEXT NOT NULL UNIQUE COLLATE NOCASE,"
    " server TEXT NOT NULL, grp TEXT NOT NULL,"
    " mode TEXT NOT NULL CHECK(mode IN ('forward','group-secret','member-certs')),"
    " cert TEXT, key TEXT, cacert TEXT, group_cert TEXT,"
    " require_encrypted INTEGER NOT NULL DEFAULT 1,"
    " members_only INTEGER NOT NULL DEFAULT 0,"
    " created INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS members("
    " list_id INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,"
    " address TEXT NOT NULL COLLATE NOCASE,"
    " added INTEGER NOT NULL,"
    " PRIMARY KEY(list_id, address));"
    "CREATE TABLE IF NOT EXISTS messages("
    " id INTEGER PRIMARY KEY,"
    " list_id INTEGER REFERENCES lists(id),"
    " kind INTEGER NOT NULL,"
    " sender TEXT NOT NULL,"
    " message_id TEXT NOT NULL DEFAULT '',"
    " file TEXT NOT NULL,"
    " out_file TEXT,"
    " state INTEGER NOT NULL,"
    " received INTEGER NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " next_attempt INTEGER NOT NULL,"
    " last_error TEXT);"
    "CREATE TABLE IF NOT EXISTS recipients("
    " id INTEGER PRIMARY KEY,"
    " message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,"
    " address TEXT NOT NULL,"
    " state INTEGER NOT NULL DEFAULT 0,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " next_attempt INTEGER NOT NULL,"
    " last_error TEXT);"
    "CREATE INDEX IF NOT EXISTS recipients_due ON recipients(state, next_attempt, message_id);"
    "CREATE INDEX IF NOT EXISTS recipients_msg ON recipients(message_id, state);"
    "CREATE INDEX IF NOT EXISTS messages_state ON messages(state, next_attempt);",
    /* 1 -> 2 (issue 14): the group server's discovery answer cached per
     * list (what deliver checks mail against), each member's own
     * RecipientInfo in member-certs mode (one copy per member), and the
     * plain reason a message's bounce gives the sender. */
    "ALTER TABLE lists ADD COLUMN key_transports TEXT;"
    "ALTER TABLE lists ADD COLUMN group_methods TEXT;"
    "ALTER TABLE lists ADD COLUMN group_info_at INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE lists ADD COLUMN group_info_tried INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE recipients ADD COLUMN ri BLOB;"
    "ALTER TABLE messages ADD COLUMN reason TEXT;",
    /* 2 -> 3: the size and SHA-256 of each message file, recorded with the
     * row that names it, so a file damaged on disk is set aside, never
     * sent (files of older spools have none and are not checked). */
    "CREATE TABLE IF NOT EXISTS files("
    " name TEXT PRIMARY KEY,"
    " size INTEGER NOT NULL,"
    " sha256 TEXT NOT NULL);",
    /* 3 -> 4: when the group server last said its current certificate is
     * one the list knows (deliver does not ask again at once). */
    "ALTER TABLE lists ADD COLUMN group_cert_at INTEGER NOT NULL DEFAULT 0;",
};
#define SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))

const char *xp_mode_name(xp_mode m)
{
    switch (m) {
    case XP_MODE_FORWARD: return "forward";
    case XP_MODE_GROUP_SECRET: return "group-secret";
    case XP_MODE_MEMBER_CERTS: return "member-certs";
    }
    return "?";
}

xp_mode xp_mode_parse(const char *s)
{
    if (s == NULL)
        return 0;
    if (strcmp(s, "forward") == 0)
        return XP_MODE_FORWARD;
    if (strcmp(s, "group-secret") == 0)
        return XP_MODE_GROUP_SECRET;
    if (strcmp(s, "member-certs") == 0)
        return XP_MODE_MEMBER_CERTS;
    return 0;
}

static xp_err db_fail(spool *s, const char *what)
{
    log_error("spool database error op=\"%s\" err=\"%s\"", what, sqlite3_errmsg(s->db));
    return XP_ERR_DB;
}

static xp_err exec(spool *s, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        /* a WAL database's -shm file could not be made (util_dir_unwritable) */
        char why[128] = "";
        int e = (sqlite3_errcode(s->db) & 0xff) == SQLITE_CANTOPEN
                    ? util_dir_unwritable(sqlite3_db_filename(s->db, "main")) : 0;
        if (e != 0)
            snprintf(why, sizeof(why), " (the spool directory cannot be written: %s)", strerror(e));
        log_error("spool database error sql=\"%.40s\" err=\"%s%s\"", sql, msg != NULL ? msg : "?", why);
        sqlite3_free(msg);
        return XP_ERR_DB;
    }
    return XP_OK;
}

static xp_err prep(spool *s, const char *sql, sqlite3_stmt **st)
{
    *st = NULL;
    if (sqlite3_prepare_v2(s->db, sql, -1, st, NULL) != SQLITE_OK)
        return db_fail(s, "prepare");
    return XP_OK;
}

static void rollback(spool *s)
{
    if (!sqlite3_get_autocommit(s->db))
        (void)sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

static char *col_dup(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t == NULL ? NULL : strdup((const char *)t);
}

static char *col_dup_nn(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return strdup(t == NULL ? "" : (const char *)t);
}

static int64_t now_s(void) { return (int64_t)time(NULL); }

void xp_strv_free(char **v, size_t n)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* The spool's schema version (PRAGMA user_version) into *version. */
static xp_err read_user_version(spool *s, int *version)
{
    sqlite3_stmt *st = NULL;
    xp_err rc = prep(s, "PRAGMA user_version", &st);

    if (rc == XP_OK && sqlite3_step(st) != SQLITE_ROW)
        rc = db_fail(s, "user_version");
    if (rc == XP_OK)
        *version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return rc;
}

xp_err spool_open(const char *dir, spool **out)
{
    spool *s = NULL;
    xp_err rc = XP_ERR_NOMEM;
    char path[4096];
    int n, version = 0;

    *out = NULL;
    if (dir == NULL || *dir == '\0')
        return XP_ERR_CONFIG;
    if ((s = calloc(1, sizeof(*s))) == NULL)
        goto out;
    if ((s->dir = strdup(dir)) == NULL)
        goto out;
    n = snprintf(path, sizeof(path), "%s/msg", dir);
    if (n < 0 || (size_t)n >= sizeof(path) || (s->msgdir = strdup(path)) == NULL) {
        rc = n < 0 || (size_t)n >= sizeof(path) ? XP_ERR_CONFIG : XP_ERR_NOMEM;
        goto out;
    }
    if (util_mkdir_p(s->msgdir, 0700) != UTIL_OK) {
        log_error("cannot create spool directory path=\"%s\" errno=%d", log_qs(s->msgdir), errno);
        rc = XP_ERR_IO;
        goto out;
    }
    snprintf(path, sizeof(path), "%s/exploder.db", dir);
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        log_error("cannot open spool database path=\"%s\" err=\"%s\"", log_qs(path),
                  log_qs(s->db != NULL ? sqlite3_errmsg(s->db) : "out of memory"));
        rc = XP_ERR_DB;
        goto out;
    }
    /* deliver (the MTA) and run share the file: wait for each other's locks */
    sqlite3_busy_timeout(s->db, 30000);
    if ((rc = exec(s, "PRAGMA journal_mode=WAL")) != XP_OK ||
        (rc = exec(s, "PRAGMA synchronous=FULL")) != XP_OK || (rc = exec(s, "PRAGMA foreign_keys=ON")) != XP_OK)
        goto out;
    if ((rc = read_user_version(s, &version)) != XP_OK)
        goto out;
    if (version < SCHEMA_VERSION) {
        /* deliver and run may both find an old schema, and a newer
         * exploder may write it meanwhile: what the version is under the
         * lock decides. Already current: nothing to do; newer: refused
         * below, nothing changed. */
        if ((rc = exec(s, "BEGIN IMMEDIATE")) != XP_OK)
            goto out;
        if ((rc = read_user_version(s, &version)) != XP_OK) {
            rollback(s);
            goto out;
        }
        for (; version < SCHEMA_VERSION; version++) {
            char sql[64];
            snprintf(sql, sizeof(sql), "PRAGMA user_version=%d", version + 1);
            if ((rc = exec(s, migrations[version])) != XP_OK || (rc = exec(s, sql)) != XP_OK) {
                rollback(s);
                goto out;
            }
        }
        if ((rc = exec(s, "COMMIT")) != XP_OK) {
            rollback(s);
            goto out;
        }
    }
    if (version > SCHEMA_VERSION) {
        log_error("spool schema is newer than this program have=%d want=%d", version, SCHEMA_VERSION);
        rc = XP_ERR_SCHEMA;
        goto out;
    }
    *out = s;
    s = NULL;
    rc = XP_OK;
out:
    spool_close(s);
    return rc;
}

void spool_close(spool *s)
{
    if (s == NULL)
        return;
    if (s->db != NULL)
        sqlite3_close_v2(s->db);
    free(s->dir);
    free(s->msgdir);
    free(s);
}

xp_err spool_msg_path(const spool *s, const char *name, char *buf, size_t bufsz)
{
    int n = snprintf(buf, bufsz, "%s/%s", s->msgdir, name);
    if (n < 0 || (size_t)n >= bufsz)
        return XP_ERR_TOO_LARGE;
    return XP_OK;
}

/* ---- lists --------------------------------------------------------------- */

void xp_list_free(xp_list *l)
{
    if (l == NULL)
        return;
    free(l->address);
    free(l->server);
    free(l->group);
    free(l->cert);
    free(l->priv_path);
    free(l->cacert);
    free(l->group_cert);
    free(l->kt_algs);
    free(l->group_methods);
    free(l);
}

static void bind_opt(sqlite3_stmt *st, int i, const char *v)
{
    if (v == NULL)
        sqlite3_bind_null(st, i);
    else
        sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT);
}

xp_err spool_list_create(spool *s, const xp_list *l)
{
    sqlite3_stmt *st = NULL;
    xp_err rc;
    int r;

    if (l->address == NULL || l->server == NULL || l->group == NULL || xp_mode_name(l->mode)[0] == '?')
        return XP_ERR_ARGS;
    rc = prep(s,
              "INSERT INTO lists(address,server,grp,mode,cert,key,cacert,group_cert,require_encrypted,"
              "members_only,created) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
              &st);
    if (rc != XP_OK)
        return rc;
    sqlite3_bind_text(st, 1, l->address, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, l->server, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, l->group, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, xp_mode_name(l->mode), -1, SQLITE_STATIC);
    bind_opt(st, 5, l->cert);
    bind_opt(st, 6, l->priv_path);
    bind_opt(st, 7, l->cacert);
    bind_opt(st, 8, l->group_cert);
    sqlite3_bind_int(st, 9, l->require_encrypted ? 1 : 0);
    sqlite3_bind_int(st, 10, l->members_only ? 1 : 0);
    sqlite3_bind_int64(st, 11, now_s());
    r = sqlite3_step(st);
    if (r == SQLITE_CONSTRAINT)
        rc = XP_ERR_EXISTS;
    else if (r != SQLITE_DONE)
        rc = db_fail(s, "list create");
    sqlite3_finalize(st);
    return rc;
}

xp_err spool_list_set_policy(spool *s, const xp_list *l)
{
    sqlite3_stmt *st = NULL;
    xp_err rc;
    int r;

    if (xp_mode_name(l->mode)[0] == '?' || (!l->require_encrypted && l->mode != XP_MODE_FORWARD))
        return XP_ERR_ARGS;
    rc = prep(s, "UPDATE lists SET mode=?, members_only=?, require_encrypted=? WHERE id=?", &st);
    if (rc != XP_OK)
        return rc;
    sqlite3_bind_text(st, 1, xp_mode_name(l->mode), -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, l->members_only ? 1 : 0);
    sqlite3_bind_int(st, 3, l->require_encrypted ? 1 : 0);
    sqlite3_bind_int64(st, 4, l->id);
    r = sqlite3_step(st);
    if (r != SQLITE_DONE)
        rc = db_fail(s, "list set");
    else if (sqlite3_changes(s->db) != 1)
        rc = XP_ERR_NOTFOUND;
    sqlite3_finalize(st);
    return rc;
}

static xp_err list_query(spool *s, const char *where, const char *text, int64_t id, xp_list **out)
{
    sqlite3_stmt *st = NULL;
    xp_list *l = NULL;
    xp_err rc;
    char sql[512];
    int r;

    *out = NULL;
    snprintf(sql, sizeof(sql),
             "SELECT id,address,server,grp,mode,cert,key,cacert,group_cert,require_encrypted,members_only,"
             "key_transports,group_methods,group_info_at,"
             "(SELECT count(*) FROM members WHERE members.list_id = lists.id),group_info_tried,group_cert_at "
             "FROM lists WHERE %s",
             where);
    if ((rc = prep(s, sql, &st)) != XP_OK)
        return rc;
    if (text != NULL)
        sqlite3_bind_text(st, 1, text, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_int64(st, 1, id);
    r = sqlite3_step(st);
    if (r == SQLITE_DONE) {
        rc = XP_ERR_NOTFOUND;
        goto out;
    }
    if (r != SQLITE_ROW) {
        rc = db_fail(s, "list get");
        goto out;
    }
    rc = XP_ERR_NOMEM;
    if ((l = calloc(1, sizeof(*l))) == NULL)
        goto out;
    l->id = sqlite3_column_int64(st, 0);
    l->address = col_dup(st, 1);
    l->server = col_dup(st, 2);
    l->group = col_dup(st, 3);
    l->mode = xp_mode_parse((const char *)sqlite3_column_text(st, 4));
    l->cert = col_dup(st, 5);
    l->priv_path = col_dup(st, 6);
    l->cacert = col_dup(st, 7);
    l->group_cert = col_dup(st, 8);
    l->require_encrypted = sqlite3_column_int(st, 9) != 0;
    l->members_only = sqlite3_column_int(st, 10) != 0;
    l->kt_algs = col_dup(st, 11);
    l->group_methods = col_dup(st, 12);
    l->group_info_at = sqlite3_column_int64(st, 13);
    l->n_members = sqlite3_column_int64(st, 14);
    l->group_info_tried = sqlite3_column_int64(st, 15);
    l->group_cert_at = sqlite3_column_int64(st, 16);
    if (l->address == NULL || l->server == NULL || l->group == NULL)
        goto out;
    *out = l;
    l = NULL;
    rc = XP_OK;
out:
    xp_list_free(l);
    sqlite3_finalize(st);
    return rc;
}

xp_err spool_list_get(spool *s, const char *address, xp_list **out)
{
    return list_query(s, "address = ?1", address, 0, out);
}

xp_err spool_list_get_by_id(spool *s, int64_t id, xp_list **out)
{
    return list_query(s, "id = ?1", NULL, id, out);
}

xp_err spool_list_set_group_info(spool *s, int64_t list_id, const char *kt_algs, const char *methods,
                                 int64_t at)
{
    sqlite3_stmt *st = NULL;
    xp_err rc = prep(s, "UPDATE lists SET key_transports=?, group_methods=?, group_info_at=? WHERE id=?", &st);
    if (rc != XP_OK)
        return rc;
    bind_opt(st, 1, kt_algs);
    bind_opt(st, 2, methods);
    sqlite3_bind_int64(st, 3, at);
    sqlite3_bind_int64(st, 4, list_id);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_fail(s, "list group info");
    else if (sqlite3_changes(s->db) != 1)
        rc = XP_ERR_NOTFOUND;
    sqlite3_finalize(st);
    return rc;
}

/* Sets one time column of a list: sql is "UPDATE lists SET col=? WHERE id=?". */
static xp_err list_set_time(spool *s, const char *sql, const char *what, int64_t list_id, int64_t at)
{
    sqlite3_stmt *st = NULL;
    xp_err rc = prep(s, sql, &st);
    if (rc != XP_OK)
        return rc;
    sqlite3_bind_int64(st, 1, at);
    sqlite3_bind_int64(st, 2, list_id);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_fail(s, what);
    sqlite3_finalize(st);
    return rc;
}

xp_err spool_list_group_info_tried(spool *s, int64_t list_id, int64_t at)
{
    return list_set_time(s, "UPDATE lists SET group_info_tried=? WHERE id=?", "list group info tried", list_id, at);
}

xp_err spool_list_set_group_cert(spool *s, int64_t list_id, const char *old_pem, const char *pem, int64_t at)
{
    sqlite3_stmt *st = NULL;
    /* compare and swap: one statement, so two delivers that each add a
     * certificate cannot overwrite each other's */
    xp_err rc = prep(s, "UPDATE lists SET group_cert=?1, group_cert_at=?4 WHERE id=?2 AND group_cert IS ?3", &st);
    if (rc != XP_OK)
        return rc;
    sqlite3_bind_text(st, 1, pem, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, list_id);
    bind_opt(st, 3, old_pem);
    sqlite3_bind_int64(st, 4, at);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_fail(s, "list group certificate");
    else if (sqlite3_changes(s->db) != 1)
        rc = XP_ERR_EXISTS;
    sqlite3_finalize(st);
    return rc;
}

xp_err spool_list_group_cert_checked(spool *s, int64_t list_id, int64_t at)
{
    return list_set_time(s, "UPDATE lists SET group_cert_at=? WHERE id=?", "list group certificate checked", list_id,
                         at);
}

xp_err spool_member_add(spool *s, int64_t list_id, const char *address)
{
    sqlite3_stmt *st = NULL;
    xp_err rc = prep(s, "INSERT INTO members(list_id,address,added) VALUES(?,?,?)", &st);
    int r;
    if (rc != XP_OK)
        return rc;
    sqlite3_bind_int64(st, 1, list_id);
    sqlite3_bind_text(st, 2, address, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, now_s());
    r = sqlite3_step(st);
    if (r == SQLITE_CONSTRAINT)
        rc = XP_ERR_EXISTS;
    else if (r != SQLITE_DONE)
        rc = db_fail(s, "member add");
    sqlite3_finalize(st);
    return rc;
}

xp_err spool_members_add(spool *s, int64_t list_id, char *const *addrs, size_t n, size_t *added)
{
    sqlite3_stmt *st = NULL;
    xp_err rc;
    int64_t now = now_s();

    *added = 0;
    if ((rc = exec(s, "BEGIN IMMEDIATE")) != XP_OK)
        return rc;
    if ((rc = prep(s, "INSERT OR IGNORE INTO members(list_id,address,added) VALUES(?,?,?)", &st)) != XP_OK)
        goto out;
    for (size_t i = 0; i < n; i++) {
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, list_id);
        sqlite3_bind_text(st, 2, addrs[i], -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 3, now);
        if (sqlite3_step(st) != SQLITE_DONE) {
            rc = db_fail(s, "members add");
            goto out;
        }
        *added += (size_t)sqlite3_changes(s->db);
    }
    sqlite3_finalize(st);
    st = NULL;
    rc = exec(s, "COMMIT");
out:
    sqlite3_finalize(st);
    if (rc != XP_OK) {
        rollback(s);
        *added = 0;
    }
    return rc;
}

xp_err spool_member_remove(spool *s, int64_t list_id, const char *address)
{
    sqlite3_stmt *st = NULL;
    xp_err rc = prep(s, "DELETE FROM members WHERE list_id=? AND address=?", &st);
    if (rc != XP_OK)
        return rc;
    sqlite3_bind_int64(st, 1, list_id);
    sqlite3_bind_text(st, 2, address, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_fail(s, "member remove");
    else if (sqlite3_changes(s->db) == 0)
        rc = XP_ERR_NOTFOUND;
    sqlite3_finalize(st);
    return rc;
}

bool spool_member_is(spool *s, int64_t list_id, const char *address)
{
    sqlite3_stmt *st = NULL;
    bool yes = false;
    if (prep(s, "SELECT 1 FROM members WHERE list_id=? AND address=?", &st) != XP_OK)
        return false;
    sqlite3_bind_int64(st, 1, list_id);
    sqlite3_bind_text(st, 2, address, -1, SQLITE_TRANSIENT);
    yes = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_finalize(st);
    return yes;
}

/* Collects column 0 (text) of every row of st into a string vector. */
static xp_err collect_strings(spool *s, sqlite3_stmt *st, char ***out, size_t *n)
{
    char **v = NULL;
    size_t cnt = 0, cap = 0;
    int r;
    xp_err rc = XP_OK;

    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (cnt == cap) {
            size_t ncap = cap ? cap * 2 : 16, bytes;
            char **nv;
            if (util_size_mul(ncap, sizeof(*v), &bytes) != 0 || (nv = realloc(v, bytes)) == NULL) {
                rc = XP_ERR_NOMEM;
                goto out;
            }
            v = nv;
            cap = ncap;
        }
        if ((v[cnt] = col_dup_nn(st, 0)) == NULL) {
            rc = XP_ERR_NOMEM;
            goto out;
        }
        cnt++;
    }
    if (r != SQLITE_DONE)
        rc = db_fail(s, "select");
out:
    if (rc != XP_OK) {
        xp_strv_free(v, cnt);
        v = NULL;
        cnt = 0;
    }
    *out = v;
    *n = cnt;
    return rc;
}

xp_err spool_members(spool *s, int64_t list_id, char ***addrs, size_t *n)
{
    sqlite3_stmt *st = NULL;
    xp_err rc;
    *addrs = NULL;
    *n = 0;
    if ((rc = prep(s, "SELECT address FROM members WHERE list_id=? ORDER BY address", &st)) != XP_OK)
        return rc;
    sqlite3_bind_int64(st, 1, list_id);
    rc = collect_strings(s, st, addrs, n);
    sqlite3_finalize(st);
    return rc;
}

static xp_err query_i64(spool *s, const char *sql, int64_t a, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    xp_err rc = prep(s, sql, &st);
    *out = 0;
    if (rc != XP_OK)
        return rc;
    sqlite3_bind_int64(st, 1, a);
    if (sqlite3_step(st) == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    else
        rc = db_fail(s, "count");
    sqlite3_finalize(st);
    return rc;
}

xp_err spool_list_stats(spool *s, int64_t list_id, int64_t *messages, int64_t *pending)
{
    xp_err rc = query_i64(s, "SELECT count(*) FROM messages WHERE list_id=?", list_id, messages);
    if (rc != XP_OK)
        return rc;
    return query_i64(s,
                     "SELECT count(*) FROM recipients r JOIN messages m ON r.message_id=m.id "
                     "WHERE m.list_id=? AND r.state=0",
                     list_id, pending);
}

/* ---- accepting ------------------------------------------------------------ */

/* Writes data durably under a fresh random name + suffix in msg/. */
static xp_err write_msg_file(spool *s, const char *suffix, const void *data, size_t len, char *name, size_t namesz)
{
    char id[2 * FILE_ID_BYTES + 1], path[4096];
    int n;
    if (util_random_id(id, FILE_ID_BYTES) != UTIL_OK)
        return XP_ERR_CRYPTO;
    n = snprintf(name, namesz, "%s%s", id, suffix);
    if (n < 0 || (size_t)n >= namesz || spool_msg_path(s, name, path, sizeof(path)) != XP_OK)
        return XP_ERR_TOO_LARGE;
    if (util_write_file_atomic(path, data, len, 0600) != UTIL_OK) {
        log_error("cannot write spool file path=\"%s\" errno=%d", log_qs(path), errno);
        return XP_ERR_IO;
    }
    return XP_OK;
}

static void unlink_msg(spool *s, const char *name)
{
    char path[4096];
    if (name == NULL || *name == '\0' || spool_msg_path(s, name, path, sizeof(path)) != XP_OK)
        return;
    if (unlink(path) != 0 && errno != ENOENT)
        log_warn("cannot remove spool file path=\"%s\" errno=%d", log_qs(path), errno);
}

/* ---- message file checksums ----------------------------------------------- */

/* Size and SHA-256 (hex) of the file at path, read in pieces. */
static xp_err file_digest(const char *path, int64_t *size, char hex[65])
{
    unsigned char buf[65536], md[32];
    unsigned mdlen = 0;
    EVP_MD_CTX *ctx = NULL;
    FILE *f = NULL;
    xp_err rc = XP_ERR_IO;
    size_t n;

    *size = 0;
    hex[0] = '\0';
    if ((f = fopen(path, "rb")) == NULL)
        goto out;
    if ((ctx = EVP_MD_CTX_new()) == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        rc = XP_ERR_CRYPTO;
        goto out;
    }
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
        if (EVP_DigestUpdate(ctx, buf, n) != 1) {
            rc = XP_ERR_CRYPTO;
            goto out;
        }
        *size += (int64_t)n;
    }
    if (ferror(f))
        goto out;
    if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 32) {
        rc = XP_ERR_CRYPTO;
        goto out;
    }
    util_hex(md, 32, hex);
    rc = XP_OK;
out:
    EVP_MD_CTX_free(ctx);
    if (f != NULL)
        fclose(f);
    return rc;
}

/* Records name's size and digest (inside the caller's transaction, the
 * one that commits the row naming the file). data: the file's bytes, or
 * NULL to read the file itself. */
static xp_err record_file(spool *s, const char *name, const void *data, size_t len)
{
    sqlite3_stmt *st = NULL;
    char hex[65], path[4096];
    unsigned char md[32];
    int64_t size = (int64_t)len;
    xp_err rc;

    if (data != NULL) {
        if (EVP_Digest(data, len, md, NULL, EVP_sha256(), NULL) != 1)
            return XP_ERR_CRYPTO;
        util_hex(md, 32, hex);
    } else if ((rc = spool_msg_path(s, name, path, sizeof(path))) != XP_OK ||
               (rc = file_digest(path, &size, hex)) != XP_OK) {
        log_error("cannot read spool file to record its digest name=%s errno=%d", name, errno);
        return rc;
    }
    if ((rc = prep(s, "INSERT OR REPLACE INTO files(name,size,sha256) VALUES(?,?,?)", &st)) != XP_OK)
        return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, size);
    sqlite3_bind_text(st, 3, hex, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_fail(s, "record file");
    sqlite3_finalize(st);
    return rc;
}

static xp_err forget_file(spool *s, const char *name)
{
    sqlite3_stmt *st = NULL;
    xp_err rc;

    if (name == NULL)
        return XP_OK;
    if ((rc = prep(s, "DELETE FROM files WHERE name=?", &st)) != XP_OK)
        return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_fail(s, "forget file");
    sqlite3_finalize(st);
    return rc;
}

xp_err spool_file_check(spool *s, const char *name, char *why, size_t whysz)
{
    sqlite3_stmt *st = NULL;
    char path[4096], hex[65] = "", want[65] = "";
    int64_t size = 0, want_size = 0;
    xp_err rc;
    int r;

    why[0] = '\0';
    if ((rc = prep(s, "SELECT size, sha256 FROM files WHERE name=?", &st)) != XP_OK)
        return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 1);
        want_size = sqlite3_column_int64(st, 0);
        (void)snprintf(want, sizeof(want), "%s", t != NULL ? (const char *)t : "");
    }
    sqlite3_finalize(st);
    if (r == SQLITE_DONE)
        return XP_OK; /* written before sizes were recorded: not checked */
    if (r != SQLITE_ROW)
        return db_fail(s, "file check");
    if ((rc = spool_msg_path(s, name, path, sizeof(path))) != XP_OK)
        return rc;
    rc = file_digest(path, &size, hex);
    if (rc == XP_ERR_IO && errno == ENOENT)
        (void)snprintf(why, whysz, "the file is missing");
    else if (rc != XP_OK)
        return rc; /* cannot read it now: try again later */
    else if (size != want_size)
        (void)snprintf(why, whysz, "%lld bytes where %lld were written", (long long)size, (long long)want_size);
    else if (strcmp(hex, want) != 0)
        (void)snprintf(why, whysz, "its content changed since it was written (SHA-256 differs)");
    else
        return XP_OK;
    return XP_ERR_DAMAGED;
}

xp_err spool_set_aside(spool *s, const char *name, char *dest, size_t destsz)
{
    char path[4096], dir[4096];
    int n;

    dest[0] = '\0';
    n = snprintf(dir, sizeof(dir), "%s/damaged", s->dir);
    if (n < 0 || (size_t)n >= sizeof(dir) || spool_msg_path(s, name, path, sizeof(path)) != XP_OK)
        return XP_ERR_TOO_LARGE;
    n = snprintf(dest, destsz, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= destsz)
        return XP_ERR_TOO_LARGE;
    if (util_mkdir_p(dir, 0700) != UTIL_OK || (rename(path, dest) != 0 && errno != ENOENT)) {
        log_error("cannot move a damaged spool file aside path=\"%s\" errno=%d", log_qs(path), errno);
        return XP_ERR_IO;
    }
    return forget_file(s, name);
}

xp_err spool_accept(spool *s, const xp_list *l, const char *sender, const char *message_id, const void *data,
                    size_t len, int64_t *msg_id)
{
    sqlite3_stmt *st = NULL;
    char name[64];
    xp_err rc;
    int64_t now = now_s(), id = 0;
    bool file_written = false;

    *msg_id = 0;
    if ((rc = write_msg_file(s, ".in", data, len, name, sizeof(name))) != XP_OK)
        goto out;
    file_written = true;
    if ((rc = exec(s, "BEGIN IMMEDIATE")) != XP_OK)
        goto out;
    if ((rc = prep(s,
                   "INSERT INTO messages(list_id,kind,sender,message_id,file,state,received,next_attempt) "
                   "VALUES(?,0,?,?,?,0,?,?)",
                   &st)) != XP_OK)
        goto out;
    sqlite3_bind_int64(st, 1, l->id);
    sqlite3_bind_text(st, 2, sender != NULL ? sender : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, message_id != NULL ? message_id : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 5, now);
    sqlite3_bind_int64(st, 6, now);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = db_fail(s, "insert message");
        goto out;
    }
    id = sqlite3_last_insert_rowid(s->db);
    sqlite3_finalize(st);
    st = NULL;
    if ((rc = record_file(s, name, data, len)) != XP_OK)
        goto out;
    /* the recipients are the members at the time of acceptance */
    if ((rc = prep(s,
                   "INSERT INTO recipients(message_id,address,state,next_attempt) "
                   "SELECT ?, address, 0, ? FROM members WHERE list_id=? ORDER BY address",
                   &st)) != XP_OK)
        goto out;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, now);
    sqlite3_bind_int64(st, 3, l->id);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = db_fail(s, "insert recipients");
        goto out;
    }
    if ((rc = exec(s, "COMMIT")) != XP_OK)
        goto out;
    *msg_id = id;
    rc = XP_OK;
out:
    sqlite3_finalize(st);
    if (rc != XP_OK) {
        rollback(s);
        if (file_written)
            unlink_msg(s, name);
    }
    return rc;
}

/* Inserts a ready bounce message row (file already written); inside the
 * caller's transaction. */
static xp_err insert_bounce(spool *s, const char *rcpt, const char *name)
{
    sqlite3_stmt *st = NULL;
    int64_t now = now_s(), id;
    xp_err rc = prep(s,
                     "INSERT INTO messages(list_id,kind,sender,file,out_file,state,received,next_attempt) "
                     "VALUES(NULL,1,'',?,?,1,?,?)",
                     &st);
    if (rc != XP_OK)
        return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, now);
    sqlite3_bind_int64(st, 4, now);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = db_fail(s, "insert bounce");
        goto out;
    }
    id = sqlite3_last_insert_rowid(s->db);
    sqlite3_finalize(st);
    if ((rc = prep(s, "INSERT INTO recipients(message_id,address,state,next_attempt) VALUES(?,?,0,?)", &st)) !=
        XP_OK)
        goto out;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, rcpt, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, now);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_fail(s, "insert bounce recipient");
out:
    sqlite3_finalize(st);
    return rc;
}

/* ---- queue runner ---------------------------------------------------------- */

void xp_msg_free(xp_msg *m)
{
    if (m == NULL)
        return;
    free(m->sender);
    free(m->message_id);
    free(m->file);
    free(m->out_file);
    free(m);
}

#define MSG_COLS "id,COALESCE(list_id,0),kind,sender,message_id,file,out_file,received,attempts"

static xp_err msg_from_row(sqlite3_stmt *st, xp_msg **out)
{
    xp_msg *m = calloc(1, sizeof(*m));
    *out = NULL;
    if (m == NULL)
        return XP_ERR_NOMEM;
    m->id = sqlite3_column_int64(st, 0);
    m->list_id = sqlite3_column_int64(st, 1);
    m->kind = sqlite3_column_int(st, 2) == 1 ? XP_KIND_BOUNCE : XP_KIND_LIST;
    m->sender = col_dup_nn(st, 3);
    m->message_id = col_dup_nn(st, 4);
    m->file = col_dup_nn(st, 5);
    m->out_file = col_dup(st, 6);
    m->received = sqlite3_column_int64(st, 7);
    m->attempts = sqlite3_column_int64(st, 8);
    if (m->sender == NULL || m->message_id == NULL || m->file == NULL) {
        xp_msg_free(m);
        return XP_ERR_NOMEM;
    }
    *out = m;
    return XP_OK;
}

/* Runs a bound one-message query: *out from its row, XP_ERR_NOTFOUND
 * when none, else the DB error (what names it). Finalizes st. */
static xp_err msg_step(spool *s, sqlite3_stmt *st, const char *what, xp_msg **out)
{
    xp_err rc;
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW)
        rc = msg_from_row(st, out);
    else if (r == SQLITE_DONE)
        rc = XP_ERR_NOTFOUND;
    else
        rc = db_fail(s, what);
    sqlite3_finalize(st);
    return rc;
}

static xp_err msg_get(spool *s, int64_t id, xp_msg **out)
{
    sqlite3_stmt *st = NULL;
    xp_err rc = prep(s, "SELECT " MSG_COLS " FROM messages WHERE id=?", &st);
    *out = NULL;
    if (rc != XP_OK)
        return rc;
    sqlite3_bind_int64(st, 1, id);
    return msg_step(s, st, "message get", out);
}

xp_err spool_next_to_prepare(spool *s, int64_t now, xp_msg **out)
{
    sqlite3_stmt *st = NULL;
    xp_err rc = prep(s,
                     "SELECT " MSG_COLS " FROM messages m WHERE state=0 AND next_attempt<=? "
                     "AND EXISTS(SELECT 1 FROM recipients r WHERE r.message_id=m.id AND r.state=0) "
                     "ORDER BY next_attempt, id LIMIT 1",
                     &st);
    *out = NULL;
    if (rc != XP_OK)
        return rc;
    sqlite3_bind_int64(st, 1, now);
    return msg_step(s, st, "next to prepare", out);
}

xp_err spool_mark_ready(spool *s, int64_t msg_id, const char *out_file)
{
    sqlite3_stmt *st = NULL;
    xp_err rc;

    if ((rc = exec(s, "BEGIN IMMEDIATE")) != XP_OK)
        return rc;
    if ((rc = record_file(s, out_file, NULL, 0)) != XP_OK ||
        (rc = prep(s, "UPDATE messages SET state=1, out_file=?, last_error=NULL WHERE id=? AND state=0", &st)) !=
            XP_OK)
        goto out;
    sqlite3_bind_text(st, 1, out_file, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, msg_id);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = db_fail(s, "mark ready");
        goto out;
    }
    rc = exec(s, "COMMIT");
out:
    sqlite3_finalize(st);
    if (rc != XP_OK)
        rollback(s);
    return rc;
}

/* A member address and its index, sorted case-insensitively for lookups. */
struct member_ix {
    const char *addr;
    size_t k;
};

static int cmp_member_ix(const void *a, const void *b)
{
    return strcasecmp(((const struct member_ix *)a)->addr, ((const struct member_ix *)b)->addr);
}

xp_err spool_mark_ready_members(spool *s, int64_t msg_id, const char *out_file, char *const *member,
                                unsigned char *const *ri, const size_t *ri_len, size_t n, int64_t *without)
{
    sqlite3_stmt *sel = NULL, *upd = NULL, *fail = NULL, *ready = NULL;
    struct member_ix *idx = NULL;
    int64_t missing = 0;
    xp_err rc;
    int r;

    if (without != NULL)
        *without = 0;
    if (n > 0 && (member == NULL || ri == NULL || ri_len == NULL))
        return XP_ERR_ARGS;
    if (n > 0 && (idx = calloc(n, sizeof(*idx))) == NULL)
        return XP_ERR_NOMEM;
    for (size_t k = 0; k < n; k++) {
        idx[k].addr = member[k] != NULL ? member[k] : "";
        idx[k].k = k;
    }
    if (n > 1)
        qsort(idx, n, sizeof(*idx), cmp_member_ix);
    if ((rc = exec(s, "BEGIN IMMEDIATE")) != XP_OK)
        goto out;
    if ((rc = record_file(s, out_file, NULL, 0)) != XP_OK ||
        (rc = prep(s, "SELECT id, address FROM recipients WHERE message_id=? AND state=0", &sel)) != XP_OK ||
        (rc = prep(s, "UPDATE recipients SET ri=? WHERE id=?", &upd)) != XP_OK ||
        (rc = prep(s, "UPDATE recipients SET state=2, last_error=? WHERE id=?", &fail)) != XP_OK ||
        (rc = prep(s, "UPDATE messages SET state=1, out_file=?, last_error=NULL WHERE id=? AND state=0", &ready)) !=
            XP_OK)
        goto out;
    sqlite3_bind_int64(sel, 1, msg_id);
    while ((r = sqlite3_step(sel)) == SQLITE_ROW) {
        int64_t rid = sqlite3_column_int64(sel, 0);
        struct member_ix key = {(const char *)sqlite3_column_text(sel, 1), 0}, *hit = NULL;
        size_t found = n;
        if (key.addr != NULL && n > 0)
            hit = bsearch(&key, idx, n, sizeof(*idx), cmp_member_ix);
        if (hit != NULL)
            found = hit->k;
        sqlite3_stmt *u = found < n ? upd : fail;
        sqlite3_reset(u);
        if (found < n)
            sqlite3_bind_blob(u, 1, ri[found], (int)ri_len[found], SQLITE_TRANSIENT);
        else
            sqlite3_bind_text(u, 1, XP_NO_CERT_REASON, -1, SQLITE_STATIC);
        sqlite3_bind_int64(u, 2, rid);
        if (sqlite3_step(u) != SQLITE_DONE) {
            rc = db_fail(s, "member ri");
            goto out;
        }
        missing += found < n ? 0 : 1;
    }
    if (r != SQLITE_DONE) {
        rc = db_fail(s, "member recipients");
        goto out;
    }
    sqlite3_bind_text(ready, 1, out_file, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(ready, 2, msg_id);
    if (sqlite3_step(ready) != SQLITE_DONE) {
        rc = db_fail(s, "mark ready");
        goto out;
    }
    rc = exec(s, "COMMIT");
out:
    sqlite3_finalize(sel);
    sqlite3_finalize(upd);
    sqlite3_finalize(fail);
    sqlite3_finalize(ready);
    if (rc != XP_OK)
        rollback(s);
    else if (without != NULL)
        *without = missing;
    free(idx);
    return rc;
}

xp_err spool_defer_prepare(spool *s, int64_t msg_id, int64_t next_at, const char *why)
{
    sqlite3_stmt *st = NULL;
    xp_err rc = prep(s, "UPDATE messages SET attempts=attempts+1, next_attempt=?, last_error=? WHERE id=?", &st);
    if (rc != XP_OK)
        return rc;
    sqlite3_bind_int64(st, 1, next_at);
    bind_opt(st, 2, why);
    sqlite3_bind_int64(st, 3, msg_id);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_fail(s, "defer prepare");
    sqlite3_finalize(st);
    return rc;
}

void xp_batch_free(xp_batch *b)
{
    if (b == NULL)
        return;
    xp_msg_free(b->msg);
    free(b->rcpt_ids);
    xp_strv_free(b->rcpts, b->n);
    free(b->attempts);
    for (size_t i = 0; b->ri != NULL && i < b->n; i++)
        free(b->ri[i]);
    free(b->ri);
    free(b->ri_len);
    free(b);
}

xp_err spool_next_batch(spool *s, int64_t now, unsigned max, xp_batch **out)
{
    sqlite3_stmt *st = NULL;
    xp_batch *b = NULL;
    xp_err rc;
    int64_t mid;
    int r;

    *out = NULL;
    if (max == 0)
        return XP_ERR_ARGS;
    rc = prep(s,
              "SELECT r.message_id FROM recipients r JOIN messages m ON m.id=r.message_id "
              "WHERE r.state=0 AND r.next_attempt<=? AND m.state=1 ORDER BY r.next_attempt, r.id LIMIT 1",
              &st);
    if (rc != XP_OK)
        return rc;
    sqlite3_bind_int64(st, 1, now);
    r = sqlite3_step(st);
    if (r == SQLITE_DONE) {
        rc = XP_ERR_NOTFOUND;
        goto out;
    }
    if (r != SQLITE_ROW) {
        rc = db_fail(s, "next batch");
        goto out;
    }
    mid = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    st = NULL;
    rc = XP_ERR_NOMEM;
    if ((b = calloc(1, sizeof(*b))) == NULL || (b->rcpt_ids = calloc(max, sizeof(int64_t))) == NULL ||
        (b->rcpts = calloc(max, sizeof(char *))) == NULL || (b->attempts = calloc(max, sizeof(int64_t))) == NULL ||
        (b->ri = calloc(max, sizeof(*b->ri))) == NULL || (b->ri_len = calloc(max, sizeof(*b->ri_len))) == NULL)
        goto out;
    if ((rc = msg_get(s, mid, &b->msg)) != XP_OK)
        goto out;
    if ((rc = prep(s,
                   "SELECT id,address,attempts,ri FROM recipients WHERE message_id=? AND state=0 AND next_attempt<=? "
                   "ORDER BY id LIMIT ?",
                   &st)) != XP_OK)
        goto out;
    sqlite3_bind_int64(st, 1, mid);
    sqlite3_bind_int64(st, 2, now);
    sqlite3_bind_int(st, 3, (int)max);
    while ((r = sqlite3_step(st)) == SQLITE_ROW && b->n < max) {
        b->rcpt_ids[b->n] = sqlite3_column_int64(st, 0);
        b->attempts[b->n] = sqlite3_column_int64(st, 2);
        if ((b->rcpts[b->n] = col_dup_nn(st, 1)) == NULL) {
            rc = XP_ERR_NOMEM;
            goto out;
        }
        if (sqlite3_column_type(st, 3) == SQLITE_BLOB && sqlite3_column_bytes(st, 3) > 0) {
            size_t len = (size_t)sqlite3_column_bytes(st, 3);
            if ((b->ri[b->n] = malloc(len)) == NULL) {
                free(b->rcpts[b->n]);
                rc = XP_ERR_NOMEM;
                goto out;
            }
            memcpy(b->ri[b->n], sqlite3_column_blob(st, 3), len);
            b->ri_len[b->n] = len;
        }
        b->n++;
    }
    if (r != SQLITE_DONE && r != SQLITE_ROW) {
        rc = db_fail(s, "batch recipients");
        goto out;
    }
    if (b->n == 0) {
        rc = XP_ERR_NOTFOUND;
        goto out;
    }
    *out = b;
    b = NULL;
    rc = XP_OK;
out:
    sqlite3_finalize(st);
    xp_batch_free(b);
    return rc;
}

xp_err spool_batch_done(spool *s, const xp_batch *b, const xp_rcpt_outcome *outcome, const int64_t *next_at,
                        char *const *why)
{
    sqlite3_stmt *st = NULL;
    xp_err rc;

    if ((rc = exec(s, "BEGIN IMMEDIATE")) != XP_OK)
        return rc;
    if ((rc = prep(s,
                   "UPDATE recipients SET state=?, attempts=attempts+1, next_attempt=?, last_error=? "
                   "WHERE id=? AND state=0",
                   &st)) != XP_OK)
        goto out;
    for (size_t i = 0; i < b->n; i++) {
        int state = outcome[i] == XP_RCPT_DELIVERED ? RCPT_DELIVERED
                    : outcome[i] == XP_RCPT_FAILED  ? RCPT_FAILED
                                                    : RCPT_PENDING;
        sqlite3_reset(st);
        sqlite3_bind_int(st, 1, state);
        sqlite3_bind_int64(st, 2, outcome[i] == XP_RCPT_DEFERRED ? next_at[i] : 0);
        bind_opt(st, 3, why != NULL ? why[i] : NULL);
        sqlite3_bind_int64(st, 4, b->rcpt_ids[i]);
        if (sqlite3_step(st) != SQLITE_DONE) {
            rc = db_fail(s, "batch update");
            goto out;
        }
    }
    sqlite3_finalize(st);
    st = NULL;
    rc = exec(s, "COMMIT");
out:
    sqlite3_finalize(st);
    if (rc != XP_OK)
        rollback(s);
    return rc;
}

xp_err spool_fail_pending(spool *s, int64_t msg_id, const char *why, const char *reason)
{
    sqlite3_stmt *st = NULL;
    xp_err rc = prep(s, "UPDATE messages SET last_error=?1, reason=?3 WHERE id=?2", &st);
    if (rc != XP_OK)
        return rc;
    bind_opt(st, 1, why);
    sqlite3_bind_int64(st, 2, msg_id);
    bind_opt(st, 3, reason);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_fail(s, "fail message");
    sqlite3_finalize(st);
    st = NULL;
    if (rc != XP_OK)
        return rc;
    if ((rc = prep(s, "UPDATE recipients SET state=2, last_error=?1 WHERE message_id=?2 AND state=0", &st)) != XP_OK)
        return rc;
    bind_opt(st, 1, why);
    sqlite3_bind_int64(st, 2, msg_id);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_fail(s, "fail recipients");
    sqlite3_finalize(st);
    return rc;
}

xp_err spool_expire(spool *s, int64_t cutoff, int64_t *n)
{
    sqlite3_stmt *st = NULL;
    xp_err rc = prep(s,
                     "UPDATE recipients SET state=2, last_error=COALESCE(last_error,'') || ?2 "
                     "WHERE state=0 AND message_id IN (SELECT id FROM messages WHERE received<?1)",
                     &st);
    *n = 0;
    if (rc != XP_OK)
        return rc;
    sqlite3_bind_int64(st, 1, cutoff);
    sqlite3_bind_text(st, 2, XP_EXPIRED_SUFFIX, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        rc = db_fail(s, "expire");
    else
        *n = sqlite3_changes(s->db);
    sqlite3_finalize(st);
    return rc;
}

xp_err spool_clock_stepped_back(spool *s, int64_t now, int64_t horizon, int64_t *n)
{
    static const char *const sql[] = {
        "UPDATE messages SET next_attempt=?1 WHERE state=0 AND next_attempt>?2",
        "UPDATE recipients SET next_attempt=?1 WHERE state=0 AND next_attempt>?2",
    };
    xp_err rc = XP_OK;

    *n = 0;
    for (size_t i = 0; i < GS_ARRAY_LEN(sql) && rc == XP_OK; i++) {
        sqlite3_stmt *st = NULL;
        if ((rc = prep(s, sql[i], &st)) != XP_OK)
            break;
        sqlite3_bind_int64(st, 1, now);
        sqlite3_bind_int64(st, 2, horizon);
        if (sqlite3_step(st) != SQLITE_DONE)
            rc = db_fail(s, "reschedule after a clock step");
        else
            *n += sqlite3_changes(s->db);
        sqlite3_finalize(st);
    }
    return rc;
}

void xp_finished_clear(xp_finished *f)
{
    xp_msg_free(f->msg);
    free(f->last_error);
    free(f->reason);
    free(f->relay_reply);
    free(f->rcpt_addrs);
    memset(f, 0, sizeof(*f));
}

xp_err spool_next_finished(spool *s, xp_finished *out)
{
    sqlite3_stmt *st = NULL;
    xp_err rc;
    int r;

    memset(out, 0, sizeof(*out));
    rc = prep(s,
              "SELECT " MSG_COLS ","
              " (SELECT count(*) FROM recipients r WHERE r.message_id=m.id AND r.state=1),"
              " (SELECT count(*) FROM recipients r WHERE r.message_id=m.id AND r.state=2),"
              " COALESCE((SELECT last_error FROM recipients r WHERE r.message_id=m.id AND r.state=2 "
              "   AND last_error IS NOT NULL LIMIT 1), m.last_error), m.reason,"
              " (SELECT count(*) FROM recipients r WHERE r.message_id=m.id AND r.state=2 AND r.last_error=?1),"
              " (SELECT count(*) FROM recipients r WHERE r.message_id=m.id AND r.state=2"
              "   AND substr(r.last_error, -length(?2)) = ?2),"
              /* the relay's own words when it refused the message as a
               * whole (a refused RCPT is recorded as "RCPT 550" alone) */
              " (SELECT last_error FROM recipients r WHERE r.message_id=m.id AND r.state=2"
              "   AND r.last_error GLOB '5[0-9][0-9][ -]*' LIMIT 1),"
              /* every address the message was for, whose local parts the
               * bounce masks in that reply as it masks whole addresses
               * (only with such a reply: a large list's message needs none) */
              " CASE WHEN EXISTS(SELECT 1 FROM recipients r WHERE r.message_id=m.id AND r.state=2"
              "   AND r.last_error GLOB '5[0-9][0-9][ -]*')"
              "  THEN (SELECT group_concat(address, ' ') FROM recipients r WHERE r.message_id=m.id) END "
              "FROM messages m WHERE NOT EXISTS(SELECT 1 FROM recipients r WHERE r.message_id=m.id AND r.state=0) "
              "ORDER BY id LIMIT 1",
              &st);
    if (rc != XP_OK)
        return rc;
    sqlite3_bind_text(st, 1, XP_NO_CERT_REASON, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, XP_EXPIRED_SUFFIX, -1, SQLITE_STATIC);
    r = sqlite3_step(st);
    if (r == SQLITE_DONE)
        rc = XP_ERR_NOTFOUND;
    else if (r != SQLITE_ROW)
        rc = db_fail(s, "next finished");
    else if ((rc = msg_from_row(st, &out->msg)) == XP_OK) {
        out->delivered = sqlite3_column_int64(st, 9);
        out->failed = sqlite3_column_int64(st, 10);
        out->last_error = col_dup(st, 11);
        out->reason = col_dup(st, 12);
        out->no_cert = sqlite3_column_int64(st, 13);
        out->expired = sqlite3_column_int64(st, 14);
        out->relay_reply = col_dup(st, 15);
        out->rcpt_addrs = col_dup(st, 16);
    }
    sqlite3_finalize(st);
    return rc;
}

xp_err spool_finish(spool *s, const xp_msg *m, const char *bounce_rcpt, const void *bounce, size_t bounce_len)
{
    sqlite3_stmt *st = NULL;
    char name[64] = "";
    xp_err rc;

    /* the bounce file is complete before the transaction that both queues
     * it and drops the original: a crash leaves one or the other */
    if (bounce_rcpt != NULL && (rc = write_msg_file(s, ".bounce", bounce, bounce_len, name, sizeof(name))) != XP_OK)
        return rc;
    if ((rc = exec(s, "BEGIN IMMEDIATE")) != XP_OK)
        goto out;
    if (bounce_rcpt != NULL && ((rc = insert_bounce(s, bounce_rcpt, name)) != XP_OK ||
                                (rc = record_file(s, name, bounce, bounce_len)) != XP_OK))
        goto out;
    if ((rc = forget_file(s, m->file)) != XP_OK || (rc = forget_file(s, m->out_file)) != XP_OK)
        goto out;
    if ((rc = prep(s, "DELETE FROM messages WHERE id=?", &st)) != XP_OK)
        goto out;
    sqlite3_bind_int64(st, 1, m->id);
    if (sqlite3_step(st) != SQLITE_DONE) {
        rc = db_fail(s, "finish");
        goto out;
    }
    sqlite3_finalize(st);
    st = NULL;
    if ((rc = exec(s, "COMMIT")) != XP_OK)
        goto out;
    /* rows are gone (committed): only now the files may go */
    unlink_msg(s, m->file);
    if (m->out_file != NULL && strcmp(m->out_file, m->file) != 0)
        unlink_msg(s, m->out_file);
out:
    sqlite3_finalize(st);
    if (rc != XP_OK) {
        rollback(s);
        if (name[0] != '\0')
            unlink_msg(s, name);
    }
    return rc;
}

xp_err spool_next_due(spool *s, int64_t *when)
{
    sqlite3_stmt *st = NULL;
    xp_err rc = prep(s,
                     "SELECT min(t) FROM ("
                     " SELECT min(r.next_attempt) AS t FROM recipients r JOIN messages m ON m.id=r.message_id "
                     "  WHERE r.state=0 AND m.state=1"
                     " UNION ALL SELECT min(next_attempt) FROM messages WHERE state=0)",
                     &st);
    *when = 0;
    if (rc != XP_OK)
        return rc;
    if (sqlite3_step(st) == SQLITE_ROW)
        *when = sqlite3_column_type(st, 0) == SQLITE_NULL ? 0 : sqlite3_column_int64(st, 0);
    else
        rc = db_fail(s, "next due");
    sqlite3_finalize(st);
    return rc;
}

xp_err spool_pending_count(spool *s, int64_t *n)
{
    return query_i64(s, "SELECT count(*) + ?1 FROM recipients WHERE state=0", 0, n);
}

static bool file_referenced(spool *s, const char *name)
{
    sqlite3_stmt *st = NULL;
    bool yes = true; /* on doubt, keep the file */
    if (prep(s, "SELECT 1 FROM messages WHERE file=?1 OR out_file=?1", &st) != XP_OK)
        return true;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    int r = sqlite3_step(st);
    if (r == SQLITE_DONE)
        yes = false;
    sqlite3_finalize(st);
    return yes;
}

xp_err spool_sweep(spool *s, int64_t now, int64_t min_age)
{
    DIR *d = opendir(s->msgdir);
    struct dirent *e;
    if (d == NULL)
        return XP_ERR_IO;
    while ((e = readdir(d)) != NULL) {
        char path[4096];
        struct stat st;
        if (e->d_name[0] == '.')
            continue;
        if (spool_msg_path(s, e->d_name, path, sizeof(path)) != XP_OK || stat(path, &st) != 0 ||
            !S_ISREG(st.st_mode))
            continue;
        if (now - (int64_t)st.st_mtime < min_age)
            continue;
        if (!file_referenced(s, e->d_name)) {
            log_info("removing unreferenced spool file name=%s", e->d_name);
            unlink_msg(s, e->d_name);
            (void)forget_file(s, e->d_name);
        }
    }
    closedir(d);
    return XP_OK;
}
