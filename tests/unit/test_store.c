/* Unit tests for groupsrv/store*.c: schema and migrations, groups, key and
 * secret versions, members (no cache across connections), transactions,
 * the change stamp, and the name/method/role helpers. The same cases run
 * against both backends: a SQLite file, and a PostgreSQL database created
 * per test in the private server that tests/lib/pg.sh started
 * ($GS_TEST_PG_URL; never skipped: without it the PostgreSQL group fails).
 * PostgreSQL alone: the audit chains and reconnecting after a lost
 * connection. */
#define _GNU_SOURCE
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

#include <pthread.h>

#include "groups.h"
#include "log.h"
#include "pgtest.h"
#include "store.h"
#include "store_impl.h" /* commit_unknown, set as a lost COMMIT sets it */

/* Which backend the current group runs on. */
static int g_pg;

struct fx {
    char dir[256];
    char path[300];   /* SQLite file */
    char dbname[64];  /* PostgreSQL database */
    char loc[1024];   /* what gs_store_open gets */
    gs_store *st;
    int64_t gid;
};

/* A fresh, empty database of the current backend: its location in loc. */
static int new_db(struct fx *f, const char *tag, char *loc, size_t cap)
{
    char prefix[32];
    if (!g_pg)
        return snprintf(loc, cap, "%s/%s.db", f->dir, tag) < (int)cap ? 0 : -1;
    (void)snprintf(prefix, sizeof(prefix), "t_%s_", tag);
    return pgtest_create(prefix, f->dbname, sizeof(f->dbname), loc, cap);
}

/* Runs the backend's own SQL directly on the test database. */
static int raw_exec(struct fx *f, const char *loc, const char *sqlite_sql, const char *pg_sql)
{
    if (g_pg) {
        char name[64];
        pgtest_name_of(loc, name, sizeof(name));
        return pgtest_exec(name, pg_sql);
    }
    sqlite3 *db = NULL;
    int rc = sqlite3_open(loc, &db) == SQLITE_OK && sqlite3_exec(db, sqlite_sql, NULL, NULL, NULL) == SQLITE_OK;
    sqlite3_close(db);
    (void)f;
    return rc ? 0 : -1;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    const char *work = getenv("GS_TEST_WORK");
    gs_store_group g = {0};
    if (f == NULL)
        return -1;
    gs_store_set_idle_check(GS_STORE_IDLE_CHECK_MS); /* a test that changed it failed half-way */
    (void)snprintf(f->dir, sizeof(f->dir), "%s/store.XXXXXX", work && *work ? work : "/tmp");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    (void)snprintf(f->path, sizeof(f->path), "%s/gs.db", f->dir);
    if (new_db(f, "gs", f->loc, sizeof(f->loc)) != 0)
        return -1;
    if (gs_store_open(f->loc, GS_STORE_CREATE, &f->st) != GS_OK) {
        fprintf(stderr, "open %s: %s\n", f->loc, gs_err_detail());
        return -1;
    }
    g.name = "eng";
    g.address = "eng@example.org";
    g.methods = GS_METHODS_DEFAULT;
    g.algorithm = "rsa:2048";
    if (gs_store_group_add(f->st, &g, &f->gid) != GS_OK)
        return -1;
    *state = f;
    return 0;
}

static void rm_db(const char *path)
{
    char p[1100];
    static const char *const sfx[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < 4; i++) {
        (void)snprintf(p, sizeof(p), "%s%s", path, sfx[i]);
        unlink(p);
    }
}

/* Removes a database made by new_db (name: its PostgreSQL name, taken
 * right after new_db) and points the fixture at its own one again for
 * teardown. */
static void drop_extra_db(struct fx *f, const char *loc, const char *name)
{
    if (g_pg) {
        pgtest_drop(name);
        pgtest_name_of(f->loc, f->dbname, sizeof(f->dbname));
    } else {
        rm_db(loc);
    }
}

static int teardown(void **state)
{
    struct fx *f = *state;
    gs_store_close(f->st);
    if (g_pg)
        pgtest_drop(f->dbname);
    else
        rm_db(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static void test_open_schema(void **state)
{
    struct fx *f = *state;
    struct stat sb;
    gs_store *st = NULL, *ro = NULL;
    char missing[1024];
    assert_int_equal(gs_store_schema_version(f->st), GS_STORE_SCHEMA_VERSION);
    assert_string_equal(gs_store_backend(f->st), g_pg ? "postgresql" : "sqlite");
    if (g_pg) {
        assert_int_equal(pgtest_url("no_such_database", missing, sizeof(missing)), 0);
    } else {
        assert_int_equal(stat(f->path, &sb), 0);
        assert_int_equal(sb.st_mode & 0777, 0600);
        (void)snprintf(missing, sizeof(missing), "%s/none.db", f->dir);
    }
    assert_int_equal(gs_store_open(missing, 0, &st), GS_ERR_NOT_FOUND);
    assert_null(st);
    /* reopen: no migration needed; read-only works too */
    assert_int_equal(gs_store_open(f->loc, 0, &st), GS_OK);
    assert_int_equal(gs_store_open(f->loc, GS_STORE_READONLY, &ro), GS_OK);
    gs_store_close(ro);
    gs_store_close(st);
    gs_store_close(NULL);
}

static void test_newer_schema_refused(void **state)
{
    struct fx *f = *state;
    gs_store *st = NULL;
    assert_int_equal(raw_exec(f, f->loc, "PRAGMA user_version = 99", "UPDATE schema_version SET version = 99"), 0);
    assert_int_equal(gs_store_open(f->loc, 0, &st), GS_ERR_SCHEMA);
    assert_null(st);
    assert_non_null(strstr(gs_err_detail(), "99"));
}

/* An older database (here version 0: an existing database without our
 * tables) is migrated on a read-write open, refused read-only as one not
 * created yet, and a migration that fails leaves it exactly as it was
 * (one transaction). */
static void test_older_schema_migrated(void **state)
{
    struct fx *f = *state;
    char loc[1024], name[64];
    gs_store *st = NULL;
    gs_store_group *g = NULL;

    assert_int_equal(new_db(f, "old", loc, sizeof(loc)), 0);
    (void)snprintf(name, sizeof(name), "%s", f->dbname);
    assert_int_equal(raw_exec(f, loc, "CREATE TABLE unrelated (x INTEGER)", "CREATE TABLE unrelated (x INTEGER)"), 0);
    /* read-only: not created yet, as a missing file is (exit 3) */
    assert_int_equal(gs_store_open(loc, GS_STORE_READONLY, &st), GS_ERR_NOT_FOUND);
    assert_null(st);
    assert_non_null(strstr(gs_err_detail(), "ca init"));
    assert_int_equal(gs_store_open(loc, 0, &st), GS_OK);
    assert_int_equal(gs_store_schema_version(st), GS_STORE_SCHEMA_VERSION);
    assert_int_equal(gs_store_group_get(st, "eng", &g), GS_ERR_NOT_FOUND); /* tables exist, empty */
    gs_store_close(st);
    st = NULL;
    assert_int_equal(gs_store_open(loc, GS_STORE_READONLY, &st), GS_OK);
    gs_store_close(st);
    st = NULL;
    if (g_pg)
        pgtest_drop(name);
    else
        rm_db(loc);

    /* a step that fails half-way (a table it creates is already there) */
    assert_int_equal(new_db(f, "clash", loc, sizeof(loc)), 0);
    (void)snprintf(name, sizeof(name), "%s", f->dbname);
    assert_int_equal(raw_exec(f, loc, "CREATE TABLE members (x INTEGER)", "CREATE TABLE members (x INTEGER)"), 0);
    assert_int_equal(gs_store_open(loc, 0, &st), GS_ERR_DB);
    assert_null(st);
    if (g_pg) {
        /* only the clashing table: no ca, groups, schema_version ... */
        assert_int_equal(pgtest_int(name, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), 1);
        pgtest_drop(name);
    } else {
        sqlite3 *db = NULL;
        sqlite3_stmt *q = NULL;
        assert_int_equal(sqlite3_open(loc, &db), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(db, "SELECT (SELECT count(*) FROM sqlite_master), "
                                                "(SELECT user_version FROM pragma_user_version)", -1, &q, NULL),
                         SQLITE_OK);
        assert_int_equal(sqlite3_step(q), SQLITE_ROW);
        assert_int_equal(sqlite3_column_int(q, 0), 1); /* only the clashing table: no ca, groups, ... */
        assert_int_equal(sqlite3_column_int(q, 1), 0);
        sqlite3_finalize(q);
        sqlite3_close(db);
        rm_db(loc);
    }
    /* the fixture's database again for teardown */
    if (g_pg)
        pgtest_name_of(f->loc, f->dbname, sizeof(f->dbname));
}


/* What schema 1 wrote, per backend (groupsrv before the key policy), with
 * one CA, one group and one key version. */
static const char v1_sqlite[] =
    "CREATE TABLE ca (id INTEGER PRIMARY KEY CHECK (id = 1), key_label TEXT NOT NULL,"
    " cert_pem TEXT NOT NULL, created INTEGER NOT NULL);"
    "CREATE TABLE groups (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
    " address TEXT NOT NULL, methods INTEGER NOT NULL, key_spec TEXT NOT NULL,"
    " allow_pkcs1v15 INTEGER NOT NULL, reject_label TEXT, created INTEGER NOT NULL);"
    "CREATE TABLE group_keys (group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE"
    " CASCADE, version INTEGER NOT NULL, token_label TEXT NOT NULL UNIQUE, cert_pem TEXT"
    " NOT NULL, state INTEGER NOT NULL, created INTEGER NOT NULL, retired INTEGER NOT"
    " NULL DEFAULT 0, PRIMARY KEY (group_id, version));"
    "CREATE TABLE secret_keys (group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE"
    " CASCADE, version INTEGER NOT NULL, token_label TEXT NOT NULL UNIQUE, kek_id BLOB"
    " NOT NULL UNIQUE, state INTEGER NOT NULL, created INTEGER NOT NULL, PRIMARY KEY"
    " (group_id, version));"
    "CREATE TABLE members (group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE"
    " CASCADE, email TEXT NOT NULL COLLATE NOCASE, role INTEGER NOT NULL, cert_pem TEXT,"
    " added INTEGER NOT NULL, PRIMARY KEY (group_id, email));"
    "INSERT INTO ca VALUES (1, 'gs:ca', 'CAPEM', 1);"
    "INSERT INTO groups VALUES (1, 'old', 'old@example.org', 15, 'rsa:3072', 0, NULL, 1);"
    "INSERT INTO group_keys VALUES (1, 1, 'gs:group:old:v1', 'PEM', 1, 1, 0);"
    "PRAGMA user_version = 1;";
static const char v1_pg[] =
    "CREATE TABLE ca (id INTEGER PRIMARY KEY CHECK (id = 1), key_label TEXT NOT NULL,"
    " cert_pem TEXT NOT NULL, created BIGINT NOT NULL);"
    "CREATE TABLE groups (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE, address TEXT NOT NULL,"
    " methods BIGINT NOT NULL, key_spec TEXT NOT NULL, allow_pkcs1v15 INTEGER NOT NULL, reject_label TEXT,"
    " created BIGINT NOT NULL);"
    "CREATE TABLE group_keys (group_id BIGINT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,"
    " version BIGINT NOT NULL, token_label TEXT NOT NULL UNIQUE, cert_pem TEXT NOT NULL,"
    " state INTEGER NOT NULL, created BIGINT NOT NULL, retired BIGINT NOT NULL DEFAULT 0,"
    " PRIMARY KEY (group_id, version));"
    "CREATE TABLE secret_keys (group_id BIGINT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,"
    " version BIGINT NOT NULL, token_label TEXT NOT NULL UNIQUE, kek_id BYTEA NOT NULL UNIQUE,"
    " state INTEGER NOT NULL, created BIGINT NOT NULL, PRIMARY KEY (group_id, version));"
    "CREATE TABLE members (group_id BIGINT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,"
    " email TEXT NOT NULL, role INTEGER NOT NULL, cert_pem TEXT, added BIGINT NOT NULL);"
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
    "CREATE TABLE audit (instance TEXT NOT NULL, seq BIGINT NOT NULL, line TEXT NOT NULL,"
    " PRIMARY KEY (instance, seq));"
    "CREATE TABLE schema_version (version INTEGER NOT NULL);"
    "INSERT INTO schema_version VALUES (1);"
    "INSERT INTO ca VALUES (1, 'gs:ca', 'CAPEM', 1);"
    "INSERT INTO groups VALUES (1, 'old', 'old@example.org', 15, 'rsa:3072', 0, NULL, 1);"
    "SELECT setval('groups_id_seq', 1);"
    "INSERT INTO group_keys VALUES (1, 1, 'gs:group:old:v1', 'PEM', 1, 1, 0);";

/* A schema-1 database (before issue 14) with a group and a member gets
 * the wrap columns: the group's default PKCS#1 v1.5, the member's the
 * group's; the setters work on it; a new group keeps its rejection key's
 * weakenings and member wrap. */
static void test_migrate_v1_wrap(void **state)
{
    struct fx *f = *state;
    char loc[1024], name[64];
    gs_store *st = NULL;
    gs_store_group *g = NULL, row;
    gs_store_group **groups = NULL;
    gs_store_member *m = NULL;
    size_t n = 0;
    static const char member[] = "INSERT INTO members VALUES (1, 'alice@example.org', 1, NULL, 1);";

    assert_int_equal(new_db(f, "v1wrap", loc, sizeof(loc)), 0);
    (void)snprintf(name, sizeof(name), "%s", f->dbname);
    assert_int_equal(raw_exec(f, loc, v1_sqlite, v1_pg), 0);
    assert_int_equal(raw_exec(f, loc, member, member), 0);
    assert_int_equal(gs_store_open(loc, 0, &st), GS_OK);
    assert_int_equal(gs_store_schema_version(st), GS_STORE_SCHEMA_VERSION);
    assert_int_equal(gs_store_group_get(st, "old", &g), GS_OK);
    assert_int_equal(g->member_wrap, GS_WRAP_PKCS1V15);
    assert_false(g->allow_pkcs1v15); /* an old group keeps its policy: its key has no v1.5 mechanism */
    assert_string_equal(g->reject_weakenings, "");
    assert_int_equal(gs_store_member_get(st, g->id, "alice@example.org", &m), GS_OK);
    assert_int_equal(m->wrap, GS_WRAP_DEFAULT);
    gs_store_member_free(m);
    m = NULL;
    assert_int_equal(gs_store_member_set_wrap(st, g->id, "ALICE@example.org", GS_WRAP_OAEP), GS_OK);
    assert_int_equal(gs_store_member_get(st, g->id, "alice@example.org", &m), GS_OK);
    assert_int_equal(m->wrap, GS_WRAP_OAEP);
    gs_store_member_free(m);
    m = NULL;
    assert_int_equal(gs_store_member_list(st, g->id, &m, &n), GS_OK);
    assert_int_equal(n, 1);
    assert_int_equal(m[0].wrap, GS_WRAP_OAEP);
    gs_store_member_list_free(m, n);
    m = NULL;
    assert_int_equal(gs_store_member_set_wrap(st, g->id, "nobody@example.org", GS_WRAP_OAEP), GS_ERR_NOT_FOUND);
    assert_int_equal(gs_store_member_set_wrap(st, g->id, "alice@example.org", GS_WRAP_DEFAULT), GS_OK);
    assert_int_equal(gs_store_member_get(st, g->id, "alice@example.org", &m), GS_OK);
    assert_int_equal(m->wrap, GS_WRAP_DEFAULT);
    gs_store_member_free(m);
    m = NULL;
    assert_int_equal(gs_store_group_set_member_wrap(st, g->id, GS_WRAP_OAEP), GS_OK);
    assert_int_equal(gs_store_group_set_member_wrap(st, g->id, GS_WRAP_DEFAULT), GS_ERR_ARGS);
    assert_int_equal(gs_store_group_set_member_wrap(st, 999, GS_WRAP_OAEP), GS_ERR_NOT_FOUND);
    gs_store_group_free(g);
    g = NULL;
    assert_int_equal(gs_store_group_get(st, "old", &g), GS_OK);
    assert_int_equal(g->member_wrap, GS_WRAP_OAEP);
    gs_store_group_free(g);
    g = NULL;

    /* a new group's rejection key weakenings and member wrap */
    memset(&row, 0, sizeof(row));
    row.name = "nss";
    row.address = "nss@example.org";
    row.algorithm = "rsa:2048";
    row.methods = GS_METHODS_DEFAULT;
    row.allow_pkcs1v15 = true;
    row.reject_label = "gs:reject:nss";
    row.reject_weakenings = "no-allowed-mechanisms";
    row.member_wrap = GS_WRAP_OAEP;
    assert_int_equal(gs_store_group_add(st, &row, NULL), GS_OK);
    assert_int_equal(gs_store_group_get(st, "nss", &g), GS_OK);
    assert_string_equal(g->reject_weakenings, "no-allowed-mechanisms");
    assert_int_equal(g->member_wrap, GS_WRAP_OAEP);
    gs_store_group_free(g);
    /* a group added without a wrap gets v1.5, and the list reads both */
    row.name = "plain";
    row.address = "plain@example.org";
    row.reject_weakenings = NULL;
    row.member_wrap = GS_WRAP_DEFAULT;
    assert_int_equal(gs_store_group_add(st, &row, NULL), GS_OK);
    assert_int_equal(gs_store_group_list(st, &groups, &n), GS_OK);
    assert_int_equal(n, 3);
    assert_string_equal(groups[0]->name, "nss");
    assert_int_equal(groups[0]->member_wrap, GS_WRAP_OAEP);
    assert_string_equal(groups[2]->name, "plain");
    assert_int_equal(groups[2]->member_wrap, GS_WRAP_PKCS1V15);
    assert_string_equal(groups[2]->reject_weakenings, "");
    gs_store_group_list_free(groups, n);
    /* an address of an older, looser rule (a group imported from a .gsk
     * made there) is stored; one that could name no record is not */
    row.name = "older";
    row.address = "older@mail_host.example";
    assert_int_equal(gs_store_group_add(st, &row, NULL), GS_OK);
    row.name = "spaced";
    row.address = "a b@example.org";
    assert_int_equal(gs_store_group_add(st, &row, NULL), GS_ERR_ARGS);
    gs_store_close(st);
    drop_extra_db(f, loc, name);
}

/* A schema-1 database with a page written over (a disk error before an
 * upgrade): the new program's open migrates it, a write like any other,
 * so it is refused naming the damage and the file keeps its schema (the
 * migration went into the damaged file the operator then restores). */
static void test_migrate_damaged_refused(void **state)
{
    struct fx *f = *state;
    char loc[1024];
    gs_store *st = NULL;
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    int root = 0, version = -1;
    FILE *fp;

    assert_int_equal(new_db(f, "v1damaged", loc, sizeof(loc)), 0);
    assert_int_equal(raw_exec(f, loc, v1_sqlite, v1_pg), 0);
    assert_int_equal(raw_exec(f, loc, "CREATE TABLE spare (x TEXT); INSERT INTO spare VALUES ('x');", ""), 0);
    assert_int_equal(sqlite3_open(loc, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT rootpage FROM sqlite_master WHERE name = 'spare'", -1, &q, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    root = sqlite3_column_int(q, 0);
    sqlite3_finalize(q);
    sqlite3_close(db);
    assert_true(root > 1);
    /* the page's b-tree type byte: none SQLite knows */
    assert_non_null(fp = fopen(loc, "r+b"));
    assert_int_equal(fseek(fp, (long)(root - 1) * 4096, SEEK_SET), 0);
    assert_int_equal(fputc(0x07, fp), 0x07);
    assert_int_equal(fclose(fp), 0);

    assert_int_equal(gs_store_open(loc, 0, &st), GS_ERR_DB);
    assert_null(st);
    assert_int_equal(gs_err_db_cause(), GS_DB_CAUSE_DAMAGED);
    assert_non_null(strstr(gs_err_detail(), "is damaged"));
    assert_int_equal(sqlite3_open(loc, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    version = sqlite3_column_int(q, 0);
    sqlite3_finalize(q);
    sqlite3_close(db);
    assert_int_equal(version, 1);
    rm_db(loc);
}

/* Schema 2 (issue 13): a database of schema 1 keeps its rows and gets the
 * empty policy and weakenings (= everything on the token, every
 * protection); the new fields are written and read back. */
static void test_policy_records(void **state)
{
    struct fx *f = *state;
    char loc[1024], name[64];
    gs_store *st = NULL;
    gs_store_group *g = NULL, row;
    gs_store_group_key *k = NULL;
    gs_store_secret *sec = NULL;
    gs_store_seal_key *seals = NULL;
    gs_store_ca *ca = NULL;
    size_t n = 0;
    int64_t id = 0;
    uint64_t before = 0, after = 0;
    unsigned char kek[GS_KEK_ID_LEN], blob[3] = {1, 2, 3};
    gs_store_keyrec rec = {.weakenings = "no-allowed-mechanisms", .seal_label = "gs:seal", .sealed = blob,
                           .sealed_len = sizeof(blob)};

    assert_int_equal(new_db(f, "v1", loc, sizeof(loc)), 0);
    (void)snprintf(name, sizeof(name), "%s", f->dbname);
    assert_int_equal(raw_exec(f, loc, v1_sqlite, v1_pg), 0);
    assert_int_equal(gs_store_open(loc, 0, &st), GS_OK);
    assert_int_equal(gs_store_schema_version(st), GS_STORE_SCHEMA_VERSION);
    assert_int_equal(gs_store_group_get(st, "old", &g), GS_OK);
    assert_string_equal(g->policy, "");
    assert_null(g->reject_sealed);
    assert_false(g->replicable); /* schema 3 (issue 17): not replicable unless created so */
    gs_store_group_free(g);
    assert_int_equal(gs_store_group_keys(st, 1, &k, &n), GS_OK);
    assert_int_equal(n, 1);
    assert_string_equal(k[0].weakenings, "");
    gs_store_group_keys_free(k, n);
    assert_int_equal(gs_store_ca_get(st, &ca), GS_OK);
    assert_string_equal(ca->weakenings, "");
    gs_store_ca_free(ca);

    /* The new fields. */
    memset(&row, 0, sizeof(row));
    row.name = "card";
    row.address = "card@example.org";
    row.algorithm = "rsa:2048";
    row.methods = GS_METHODS_DEFAULT;
    row.allow_pkcs1v15 = true;
    row.reject_label = "gs:reject:card";
    row.policy = "rewrap=software,secrets=sealed,reject=sealed";
    row.reject_seal_label = "gs:seal";
    row.reject_sealed = blob;
    row.reject_sealed_len = sizeof(blob);
    assert_int_equal(gs_store_group_add(st, &row, &id), GS_OK);
    assert_int_equal(gs_store_group_get(st, "card", &g), GS_OK);
    assert_string_equal(g->policy, row.policy);
    assert_string_equal(g->reject_seal_label, "gs:seal");
    assert_int_equal(g->reject_sealed_len, sizeof(blob));
    assert_memory_equal(g->reject_sealed, blob, sizeof(blob));
    gs_store_group_free(g);
    assert_int_equal(gs_store_group_key_add2(st, id, 1, "pkcs11:token=t;object=card;type=private", "PEM", &rec), GS_OK);
    assert_int_equal(gs_store_group_keys(st, id, &k, &n), GS_OK);
    assert_string_equal(k[0].weakenings, "no-allowed-mechanisms");
    assert_string_equal(k[0].token_label, "pkcs11:token=t;object=card;type=private");
    gs_store_group_keys_free(k, n);
    memset(kek, 7, sizeof(kek));
    assert_int_equal(gs_store_secret_add2(st, id, 1, "gs:secret:card:v1", kek, &rec), GS_OK);
    assert_int_equal(gs_store_secrets(st, id, &sec, &n), GS_OK);
    assert_string_equal(sec[0].seal_label, "gs:seal");
    assert_int_equal(sec[0].sealed_len, sizeof(blob));
    assert_memory_equal(sec[0].sealed, blob, sizeof(blob));
    assert_memory_equal(sec[0].kek_id, kek, sizeof(kek));
    gs_store_secrets_free(sec, n);
    assert_int_equal(gs_store_secret_add(st, id, 2, "gs:secret:card:v2", (unsigned char[GS_KEK_ID_LEN]){8}), GS_OK);
    assert_int_equal(gs_store_secrets(st, id, &sec, &n), GS_OK);
    assert_null(sec[0].sealed);
    assert_null(sec[0].seal_label);
    assert_string_equal(sec[0].weakenings, "");
    gs_store_secrets_free(sec, n);
    assert_int_equal(gs_store_seal_keys(st, &seals, &n), GS_OK);
    assert_int_equal(n, 0);
    assert_null(seals);
    /* a seal key is a change other servers' caches must see */
    assert_int_equal(gs_store_change_stamp(st, &before), GS_OK);
    assert_int_equal(gs_store_seal_key_put(st, "gs:seal", "no-allowed-mechanisms"), GS_OK);
    assert_int_equal(gs_store_change_stamp(st, &after), GS_OK);
    assert_true(before != after);
    assert_int_equal(gs_store_seal_key_put(st, "gs:seal", ""), GS_OK); /* once */
    assert_int_equal(gs_store_seal_keys(st, &seals, &n), GS_OK);
    assert_int_equal(n, 1);
    assert_string_equal(seals[0].label, "gs:seal");
    assert_string_equal(seals[0].weakenings, "no-allowed-mechanisms");
    gs_store_seal_keys_free(seals, n);
    gs_store_close(st);
    drop_extra_db(f, loc, name);
}

static void test_groups(void **state)
{
    struct fx *f = *state;
    gs_store_group g = {0}, *got = NULL, **list = NULL;
    size_t n = 0;
    int64_t id = 0;

    assert_int_equal(gs_store_group_get(f->st, "eng", &got), GS_OK);
    assert_string_equal(got->address, "eng@example.org");
    assert_int_equal(got->methods, GS_METHODS_DEFAULT);
    assert_false(got->allow_pkcs1v15);
    assert_null(got->reject_label);
    gs_store_group_free(got);
    assert_int_equal(gs_store_group_get(f->st, "nope", &got), GS_ERR_NOT_FOUND);
    assert_null(got);
    assert_non_null(strstr(gs_err_detail(), "unknown group nope"));

    g.name = "eng";
    g.address = "other@example.org";
    g.algorithm = "rsa:3072";
    g.methods = GS_METHOD_TLS;
    assert_int_equal(gs_store_group_add(f->st, &g, &id), GS_ERR_EXISTS);
    g.name = "Bad Name";
    assert_int_equal(gs_store_group_add(f->st, &g, &id), GS_ERR_ARGS);
    g.name = "abc";
    g.allow_pkcs1v15 = true;
    g.reject_label = "gs:reject:abc";
    assert_int_equal(gs_store_group_add(f->st, &g, &id), GS_OK);
    assert_true(id > 0);
    assert_int_equal(gs_store_group_list(f->st, &list, &n), GS_OK);
    assert_int_equal(n, 2);
    assert_string_equal(list[0]->name, "abc");
    assert_string_equal(list[0]->reject_label, "gs:reject:abc");
    assert_true(list[0]->allow_pkcs1v15);
    assert_string_equal(list[1]->name, "eng");
    gs_store_group_list_free(list, n);
}

static void test_key_versions(void **state)
{
    struct fx *f = *state;
    gs_store_group_key *k = NULL;
    size_t n = 0;
    assert_int_equal(gs_store_group_key_add(f->st, f->gid, 1, "gs:group:eng:v1", "PEM1"), GS_OK);
    assert_int_equal(gs_store_group_key_add(f->st, f->gid, 2, "gs:group:eng:v2", "PEM2"), GS_OK);
    assert_int_equal(gs_store_group_key_add(f->st, f->gid, 2, "gs:group:eng:v2x", "PEM2"), GS_ERR_EXISTS);
    assert_int_equal(gs_store_group_keys(f->st, f->gid, &k, &n), GS_OK);
    assert_int_equal(n, 2);
    assert_int_equal(k[0].version, 2);
    assert_int_equal(k[0].state, GS_KEY_CURRENT);
    assert_int_equal(k[1].state, GS_KEY_OLD);
    assert_string_equal(k[1].token_label, "gs:group:eng:v1");
    gs_store_group_keys_free(k, n);
    /* the current version cannot be retired; an old one can, once */
    assert_int_equal(gs_store_group_key_retire(f->st, f->gid, 2), GS_ERR_STATE);
    assert_int_equal(gs_store_group_key_retire(f->st, f->gid, 1), GS_OK);
    assert_int_equal(gs_store_group_key_retire(f->st, f->gid, 1), GS_ERR_STATE);
    assert_int_equal(gs_store_group_key_set_cert(f->st, f->gid, 2, "NEWPEM"), GS_OK);
    assert_int_equal(gs_store_group_key_set_cert(f->st, f->gid, 9, "X"), GS_ERR_NOT_FOUND);
    assert_int_equal(gs_store_group_keys(f->st, f->gid, &k, &n), GS_OK);
    assert_int_equal(k[1].state, GS_KEY_RETIRED);
    assert_true(k[1].retired > 0);
    assert_string_equal(k[0].cert_pem, "NEWPEM");
    gs_store_group_keys_free(k, n);
    assert_string_equal(gs_key_state_name(GS_KEY_RETIRED), "retired");
}

static void test_secrets(void **state)
{
    struct fx *f = *state;
    unsigned char id1[GS_KEK_ID_LEN], id2[GS_KEK_ID_LEN];
    gs_store_secret *s = NULL;
    size_t n = 0;
    int64_t gid = 0;
    unsigned v = 0;
    memset(id1, 1, sizeof(id1));
    memset(id2, 2, sizeof(id2));
    assert_int_equal(gs_store_secret_add(f->st, f->gid, 1, "gs:secret:eng:v1", id1), GS_OK);
    assert_int_equal(gs_store_secret_add(f->st, f->gid, 2, "gs:secret:eng:v2", id2), GS_OK);
    assert_int_equal(gs_store_secret_add(f->st, f->gid, 3, "gs:secret:eng:v3", id2), GS_ERR_EXISTS);
    assert_int_equal(gs_store_secrets(f->st, f->gid, &s, &n), GS_OK);
    assert_int_equal(n, 2);
    assert_int_equal(s[0].version, 2);
    assert_int_equal(s[0].state, GS_KEY_CURRENT);
    assert_int_equal(s[1].state, GS_KEY_OLD);
    assert_memory_equal(s[1].kek_id, id1, GS_KEK_ID_LEN);
    gs_store_secrets_free(s, n);
    assert_int_equal(gs_store_secret_by_kek_id(f->st, id1, GS_KEK_ID_LEN, &gid, &v), GS_OK);
    assert_int_equal(gid, f->gid);
    assert_int_equal(v, 1);
    memset(id1, 9, sizeof(id1));
    assert_int_equal(gs_store_secret_by_kek_id(f->st, id1, GS_KEK_ID_LEN, &gid, &v), GS_ERR_NOT_FOUND);
    assert_int_equal(gs_store_secret_by_kek_id(f->st, id1, 3, &gid, &v), GS_ERR_NOT_FOUND);
    /* secret retire: the current version cannot be retired; an old one
     * can, once, and a sealed one loses its blob with it */
    unsigned char id3[GS_KEK_ID_LEN], blob[4] = {1, 2, 3, 4};
    gs_store_keyrec rec = {.seal_label = "gs:seal", .sealed = blob, .sealed_len = sizeof(blob)};
    memset(id3, 3, sizeof(id3));
    assert_int_equal(gs_store_secret_add2(f->st, f->gid, 3, "gs:secret:eng:v3", id3, &rec), GS_OK);
    memset(id3, 4, sizeof(id3));
    assert_int_equal(gs_store_secret_add(f->st, f->gid, 4, "gs:secret:eng:v4", id3), GS_OK);
    assert_int_equal(gs_store_secret_retire(f->st, f->gid, 4), GS_ERR_STATE);
    assert_int_equal(gs_store_secret_retire(f->st, f->gid, 3), GS_OK);
    assert_int_equal(gs_store_secret_retire(f->st, f->gid, 3), GS_ERR_STATE);
    assert_int_equal(gs_store_secret_retire(f->st, f->gid, 9), GS_ERR_STATE);
    assert_int_equal(gs_store_secrets(f->st, f->gid, &s, &n), GS_OK);
    assert_int_equal(n, 4);
    assert_int_equal(s[0].state, GS_KEY_CURRENT);
    assert_int_equal(s[1].state, GS_KEY_RETIRED);
    assert_null(s[1].sealed);
    assert_int_equal(s[2].state, GS_KEY_OLD);
    gs_store_secrets_free(s, n);
}

/* Schema 3 (issue 17), the same on both backends: replicable groups and
 * CA, and versions imported below the current one (OLD: nothing demoted). */
static void test_replicable_records(void **state)
{
    struct fx *f = *state;
    gs_store_group row = {.name = "rep", .address = "rep@example.org", .methods = GS_METHODS_DEFAULT | GS_METHOD_LOCAL_KEY,
                          .algorithm = "rsa:2048", .replicable = true};
    gs_store_group *g = NULL, **list = NULL;
    gs_store_group_key *k = NULL;
    gs_store_secret *sec = NULL;
    gs_store_ca *ca = NULL;
    unsigned char id1[GS_KEK_ID_LEN], id2[GS_KEK_ID_LEN];
    int64_t gid = 0;
    size_t n = 0;

    memset(id1, 1, sizeof(id1));
    memset(id2, 2, sizeof(id2));
    assert_int_equal(gs_store_group_add(f->st, &row, &gid), GS_OK);
    assert_int_equal(gs_store_group_get(f->st, "rep", &g), GS_OK);
    assert_true(g->replicable);
    assert_int_equal(g->methods, GS_METHODS_DEFAULT | GS_METHOD_LOCAL_KEY);
    gs_store_group_free(g);
    assert_int_equal(gs_store_group_list(f->st, &list, &n), GS_OK);
    assert_int_equal(n, 2);
    assert_false(list[0]->replicable); /* eng, made without */
    assert_true(list[1]->replicable);
    gs_store_group_list_free(list, n);

    assert_int_equal(gs_store_ca_set_cert(f->st, "NOCA"), GS_ERR_NOT_FOUND);
    assert_int_equal(gs_store_ca_put_as(f->st, "gs:ca", "CAPEM", true, NULL), GS_OK);
    assert_int_equal(gs_store_ca_get(f->st, &ca), GS_OK);
    assert_true(ca->replicable);
    gs_store_ca_free(ca);
    /* ca renew-cert: the certificate only; label and replicable stay */
    assert_int_equal(gs_store_ca_set_cert(f->st, "CAPEM2"), GS_OK);
    assert_int_equal(gs_store_ca_get(f->st, &ca), GS_OK);
    assert_string_equal(ca->cert_pem, "CAPEM2");
    assert_string_equal(ca->label, "gs:ca");
    assert_true(ca->replicable);
    gs_store_ca_free(ca);

    /* v2 arrives first, v1 is imported after it: v2 stays current */
    assert_int_equal(gs_store_group_key_add(f->st, gid, 2, "gs:group:rep:v2", "PEM2"), GS_OK);
    assert_int_equal(gs_store_group_key_add_as(f->st, gid, 1, "gs:group:rep:v1", "PEM1", GS_KEY_OLD, NULL), GS_OK);
    assert_int_equal(gs_store_group_key_add_as(f->st, gid, 3, "gs:group:rep:v3", "PEM3", GS_KEY_RETIRED, NULL),
                     GS_ERR_ARGS);
    assert_int_equal(gs_store_group_keys(f->st, gid, &k, &n), GS_OK);
    assert_int_equal(n, 2);
    assert_int_equal(k[0].version, 2);
    assert_int_equal(k[0].state, GS_KEY_CURRENT);
    assert_int_equal(k[1].version, 1);
    assert_int_equal(k[1].state, GS_KEY_OLD);
    gs_store_group_keys_free(k, n);
    assert_int_equal(gs_store_secret_add(f->st, gid, 2, "gs:secret:rep:v2", id2), GS_OK);
    assert_int_equal(gs_store_secret_add_as(f->st, gid, 1, "gs:secret:rep:v1", id1, GS_KEY_OLD, NULL), GS_OK);
    assert_int_equal(gs_store_secrets(f->st, gid, &sec, &n), GS_OK);
    assert_int_equal(n, 2);
    assert_int_equal(sec[0].version, 2);
    assert_int_equal(sec[0].state, GS_KEY_CURRENT);
    assert_int_equal(sec[1].state, GS_KEY_OLD);
    assert_memory_equal(sec[1].kek_id, id1, GS_KEK_ID_LEN);
    gs_store_secrets_free(sec, n);
    /* a new current version still demotes the current one */
    assert_int_equal(gs_store_group_key_add_as(f->st, gid, 3, "gs:group:rep:v3", "PEM3", GS_KEY_CURRENT, NULL), GS_OK);
    assert_int_equal(gs_store_group_keys(f->st, gid, &k, &n), GS_OK);
    assert_int_equal(n, 3);
    assert_int_equal(k[0].state, GS_KEY_CURRENT);
    assert_int_equal(k[1].state, GS_KEY_OLD);
    gs_store_group_keys_free(k, n);
}

static void test_members_no_cache(void **state)
{
    struct fx *f = *state;
    gs_store *other = NULL;
    gs_store_member *m = NULL, *list = NULL;
    size_t n = 0;

    assert_int_equal(gs_store_member_add(f->st, f->gid, "alice@example.org", GS_ROLE_MEMBER, "CERT"), GS_OK);
    assert_int_equal(gs_store_member_add(f->st, f->gid, "ALICE@example.org", GS_ROLE_MEMBER, NULL), GS_ERR_EXISTS);
    assert_int_equal(gs_store_member_add(f->st, f->gid, "list@example.org", GS_ROLE_EXPLODER, NULL), GS_OK);
    assert_int_equal(gs_store_member_add(f->st, f->gid, "bad address", GS_ROLE_MEMBER, NULL), GS_ERR_ARGS);
    /* a second connection (another thread or process) */
    assert_int_equal(gs_store_open(f->loc, 0, &other), GS_OK);
    assert_int_equal(gs_store_member_get(other, f->gid, "Alice@Example.org", &m), GS_OK);
    assert_string_equal(m->email, "alice@example.org");
    assert_int_equal(m->role, GS_ROLE_MEMBER);
    assert_string_equal(m->cert_pem, "CERT");
    gs_store_member_free(m);
    m = NULL;
    /* removed in one connection: refused by the other on the very next call */
    assert_int_equal(gs_store_member_remove(f->st, f->gid, "alice@example.org"), GS_OK);
    assert_int_equal(gs_store_member_get(other, f->gid, "alice@example.org", &m), GS_ERR_NOT_FOUND);
    assert_null(m);
    assert_int_equal(gs_store_member_remove(f->st, f->gid, "alice@example.org"), GS_ERR_NOT_FOUND);
    assert_int_equal(gs_store_member_list(other, f->gid, &list, &n), GS_OK);
    assert_int_equal(n, 1);
    assert_string_equal(list[0].email, "list@example.org");
    assert_int_equal(list[0].role, GS_ROLE_EXPLODER);
    assert_null(list[0].cert_pem);
    gs_store_member_list_free(list, n);
    gs_store_close(other);
}

/* A fresh store of the current backend, with group "eng": on PostgreSQL
 * in a database made with CREATE DATABASE's `options` (its name in name,
 * cap bytes), else the fixture's own. */
static gs_store *store_made_as(struct fx *f, const char *options, char *name, size_t cap, int64_t *gid)
{
    char sql[512], loc[1024];
    gs_store_group g = {.name = "eng", .address = "eng@example.org", .methods = GS_METHODS_DEFAULT,
                        .algorithm = "rsa:2048"};
    gs_store *st = NULL;

    name[0] = '\0';
    *gid = f->gid;
    if (!g_pg)
        return f->st;
    (void)snprintf(name, cap, "t_coll_%ld", (long)getpid());
    (void)snprintf(sql, sizeof(sql), "CREATE DATABASE \"%s\" %s", name, options);
    if (pgtest_exec(NULL, sql) != 0 || pgtest_url(name, loc, sizeof(loc)) != 0)
        return NULL;
    if (gs_store_open(loc, GS_STORE_CREATE, &st) != GS_OK) {
        fprintf(stderr, "open %s: %s\n", loc, gs_err_detail());
        return NULL;
    }
    if (gs_store_group_add(st, &g, gid) != GS_OK) {
        gs_store_close(st);
        return NULL;
    }
    return st;
}

/* A member is its address but for ASCII case, on both backends, also
 * where PostgreSQL's lower() folds more (a database whose collation is
 * UTF-8, C.UTF-8 here, as a bare CREATE DATABASE gives on most hosts):
 * "k\u0130m@" (U+0130) and "\u212Aim@" (KELVIN SIGN) are other
 * addresses, and so are kim@ with white space, angle brackets or a dot
 * after the domain; none of them is found, changed or removed in kim's
 * place. Before, PostgreSQL's lookup found (and its DELETE removed) kim
 * for the first two. */
static void test_member_other_spellings(void **state)
{
    struct fx *f = *state;
    static const char *const other[] = {"k\xc4\xb0m@example.org", "\xe2\x84\xaaim@example.org",
                                        "KIM@EXAMPLE.ORG\xe2\x80\x8b", " kim@example.org", "kim@example.org ",
                                        "<kim@example.org>", "kim@example.org.", "kim@example.org\n"};
    char name[64];
    int64_t gid;
    gs_store_member *m = NULL;
    gs_store *st = store_made_as(f, "TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C.UTF-8'",
                                 name, sizeof(name), &gid);

    assert_non_null(st);
    assert_int_equal(gs_store_member_add(st, gid, "kim@example.org", GS_ROLE_ADMIN, NULL), GS_OK);
    for (size_t i = 0; i < sizeof(other) / sizeof(other[0]); i++) {
        assert_int_equal(gs_store_member_get(st, gid, other[i], &m), GS_ERR_NOT_FOUND);
        assert_null(m);
        assert_int_equal(gs_store_member_set_wrap(st, gid, other[i], GS_WRAP_OAEP), GS_ERR_NOT_FOUND);
        assert_int_equal(gs_store_member_remove(st, gid, other[i]), GS_ERR_NOT_FOUND);
    }
    /* kim herself, in any ASCII case, unchanged */
    assert_int_equal(gs_store_member_get(st, gid, "KIM@Example.ORG", &m), GS_OK);
    assert_string_equal(m->email, "kim@example.org");
    assert_int_equal(m->role, GS_ROLE_ADMIN);
    assert_int_equal(m->wrap, GS_WRAP_DEFAULT);
    gs_store_member_free(m);
    assert_int_equal(gs_store_member_remove(st, gid, "Kim@example.org"), GS_OK);
    if (st != f->st) {
        gs_store_close(st);
        pgtest_drop(name);
    }
}

/* PostgreSQL alone: a database whose collation lower-cases 'I' to
 * U+0131 DOTLESS I (Turkish, here ICU's tr-TR) would make KIM@ and kim@
 * two members, so that a PUT in another case adds a second record and a
 * removal leaves one in place. Such a database is refused at open,
 * saying why, before anything is stored in it. */
static void test_turkish_collation_refused(void **state)
{
    struct fx *f = *state;
    char name[64], sql[256], loc[1024];
    gs_store *st = NULL;

    (void)f;
    (void)snprintf(name, sizeof(name), "t_tr_%ld", (long)getpid());
    (void)snprintf(sql, sizeof(sql),
                   "CREATE DATABASE \"%s\" TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C.UTF-8' "
                   "LOCALE_PROVIDER icu ICU_LOCALE 'tr-TR'",
                   name);
    assert_int_equal(pgtest_exec(NULL, sql), 0);
    assert_int_equal(pgtest_url(name, loc, sizeof(loc)), 0);
    gs_err e = gs_store_open(loc, GS_STORE_CREATE, &st);
    if (e == GS_OK) { /* what it allowed before */
        gs_store_group g = {.name = "eng", .address = "eng@example.org", .methods = GS_METHODS_DEFAULT,
                            .algorithm = "rsa:2048"};
        int64_t gid = 0;
        assert_int_equal(gs_store_group_add(st, &g, &gid), GS_OK);
        assert_int_equal(gs_store_member_add(st, gid, "kim@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
        gs_err again = gs_store_member_add(st, gid, "KIM@example.org", GS_ROLE_MEMBER, NULL);
        gs_store_close(st);
        pgtest_drop(name);
        fprintf(stderr, "a Turkish collation was taken; KIM@ after kim@: %s\n", gs_strerror(again));
        fail();
    }
    assert_int_equal(e, GS_ERR_DB);
    assert_non_null(strstr(gs_err_detail(), "lower('I') is not 'i'"));
    assert_int_equal(pgtest_int(name, "SELECT count(*) FROM pg_tables WHERE tablename = 'members'"), 0);
    pgtest_drop(name);
}

/* Each connection names its process in pg_stat_activity (application_name,
 * gs_store_set_app_name: "groupsrv gs-a" for a server's), so that a DBA
 * tells the servers sharing one database apart; an application_name in the
 * URI is the operator's and wins. */
static void test_application_name(void **state)
{
    struct fx *f = *state;
    char name[64], sql[512], loc[1200];
    gs_store *st = NULL;

    pgtest_name_of(f->loc, name, sizeof(name));
    gs_store_set_app_name("groupsrv gs-a/admin member add\n'x");
    assert_int_equal(gs_store_open(f->loc, 0, &st), GS_OK);
    (void)snprintf(sql, sizeof(sql),
                   "SELECT count(*) FROM pg_stat_activity WHERE datname = '%s' AND application_name = "
                   "'groupsrv gs-a/admin member addx'",
                   name);
    assert_int_equal(pgtest_int("postgres", sql), 1);
    gs_store_close(st);
    st = NULL;

    gs_store_set_app_name("groupsrv gs-b");
    (void)snprintf(loc, sizeof(loc), "%s%capplication_name=dba-says", f->loc, strchr(f->loc, '?') ? '&' : '?');
    assert_int_equal(gs_store_open(loc, 0, &st), GS_OK);
    (void)snprintf(sql, sizeof(sql),
                   "SELECT count(*) FROM pg_stat_activity WHERE datname = '%s' AND application_name = 'dba-says'",
                   name);
    assert_int_equal(pgtest_int("postgres", sql), 1);
    gs_store_close(st);
    st = NULL;

    /* A query that ends in its separator, as libpq takes it (psql
     * connects with "...?" and "...?a=b&"): the parameters groupsrv adds
     * made "?&connect_timeout=5" or "&&connect_timeout=5", and libpq
     * refused the URI ("missing key/value separator"). */
    (void)snprintf(loc, sizeof(loc), "%s%c", f->loc, strchr(f->loc, '?') ? '&' : '?');
    assert_int_equal(gs_store_open(loc, 0, &st), GS_OK);
    gs_store_close(st);
    gs_store_set_app_name(NULL);
}

/* The keys lock (store.h) held on one connection: a second connection's
 * gs_store_keys_lock (another thread here; another process or server
 * alike) waits until the first lets go, then gets it. Nested on one handle. */
struct keys_waiter {
    const char *loc;
    atomic_int got;
    gs_err err;
};

static void *keys_lock_waiter(void *arg)
{
    struct keys_waiter *w = arg;
    gs_store *st = NULL;

    w->err = gs_store_open(w->loc, 0, &st);
    if (w->err == GS_OK)
        w->err = gs_store_keys_lock(st);
    atomic_store(&w->got, 1);
    gs_store_keys_unlock(st);
    gs_store_close(st);
    return NULL;
}

static void test_keys_lock(void **state)
{
    struct fx *f = *state;
    struct keys_waiter w = {.loc = f->loc};
    const struct timespec moment = {0, 300 * 1000 * 1000};
    pthread_t th;

    assert_int_equal(gs_store_keys_lock(f->st), GS_OK);
    assert_int_equal(gs_store_keys_lock(f->st), GS_OK); /* nested */
    gs_store_keys_unlock(f->st);
    assert_int_equal(pthread_create(&th, NULL, keys_lock_waiter, &w), 0);
    (void)nanosleep(&moment, NULL);
    assert_int_equal(atomic_load(&w.got), 0); /* still held by the outer lock */
    /* the holder's transactions go on meanwhile */
    assert_int_equal(gs_store_begin(f->st), GS_OK);
    assert_int_equal(gs_store_member_add(f->st, f->gid, "k@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    assert_int_equal(gs_store_commit(f->st), GS_OK);
    (void)nanosleep(&moment, NULL);
    assert_int_equal(atomic_load(&w.got), 0);
    gs_store_keys_unlock(f->st);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(w.err, GS_OK);
    assert_int_equal(atomic_load(&w.got), 1);
    /* free again: this connection takes it at once; unlock without it is nothing */
    assert_int_equal(gs_store_keys_lock(f->st), GS_OK);
    /* A handle told to wait 100 ms (a server's token worker) gives up
     * while another holds it, saying the lock was not granted, and
     * takes it once free. */
    gs_store *other = NULL;
    assert_int_equal(gs_store_open(f->loc, 0, &other), GS_OK);
    gs_store_keys_lock_wait(other, 100);
    assert_int_equal(gs_store_keys_lock(other), GS_ERR_DB);
    assert_int_equal(gs_err_db_cause(), GS_DB_CAUSE_KEYS_LOCK);
    gs_store_keys_unlock(f->st);
    assert_int_equal(gs_store_keys_lock(other), GS_OK);
    gs_store_keys_unlock(other);
    gs_store_close(other);
    gs_store_keys_unlock(f->st);
}

/* SQLite keeps a SHARED POSIX lock on a WAL database file for as long as
 * the connection is open: another process's last close takes EXCLUSIVE
 * to checkpoint and delete the -wal, and fails while it is held. A
 * POSIX lock is dropped by any close(2) of the file in the process, so
 * check_grants (serve's and the key holder's start) must not open and
 * close the file itself: it did to read the header's WAL bytes, and the
 * next admin command's close deleted the -wal the server went on
 * writing into. A child process asks whether the lock is still held. */
static void test_check_grants_keeps_lock(void **state)
{
    struct fx *f = *state;
    int status = 0;
    pid_t pid;

    /* a write: the -wal and -shm beside the file, so the header is read */
    assert_int_equal(gs_store_member_add(f->st, f->gid, "lock@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    assert_int_equal(gs_store_check_grants(f->st, false), GS_OK);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* SQLite's unix VFS: SHARED is a read lock on 510 bytes from
         * PENDING_BYTE + 2 */
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0x40000000 + 2, .l_len = 510};
        int fd = open(f->path, O_RDWR | O_CLOEXEC);
        _exit(fd >= 0 && fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type == F_RDLCK ? 0 : 1);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0); /* 1: the server's lock was gone */
}

/* The database as a stock sqlite3 (check) reads it after a stop:
 * PRAGMA integrity_check says ok. */
static void assert_db_intact(sqlite3 *check)
{
    sqlite3_stmt *s = NULL;

    assert_int_equal(sqlite3_prepare_v2(check, "PRAGMA integrity_check", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(s, 0), "ok");
    sqlite3_finalize(s);
}

/* The store opened again (f->st) holds each of the n members want. */
static void assert_members_kept(struct fx *f, const char *const *want, size_t n)
{
    gs_store_member *m = NULL;

    assert_int_equal(gs_store_open(f->loc, 0, &f->st), GS_OK);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(gs_store_member_get(f->st, f->gid, want[i], &m), GS_OK);
        gs_store_member_free(m);
        m = NULL;
    }
}

/* A -wal deleted under the server and then *replaced*: one connection of
 * the server's checkpointed it (all its frames in the database), and an
 * sqlite3 shell (groupsrv's admin commands are refused then) started the
 * write-ahead log over in a new -wal at the
 * path, which the server's shared index now describes. A close that
 * checkpointed its own deleted -wal (the FULL checkpoint at close, or
 * SQLite's own when the close is the last) copied the old file's pages
 * for the new file's frames into the database: "database disk image is
 * malformed" at the next start, and the admin command's change, exit 0,
 * gone. Such a close writes nothing from the deleted file, whose changes
 * are all in the database already. */
static void test_close_after_wal_replaced(void **state)
{
    struct fx *f = *state;
    char wal[320];
    sqlite3 *other = NULL, *check = NULL;
    sqlite3_stmt *s = NULL;

    (void)snprintf(wal, sizeof(wal), "%s-wal", f->path);
    assert_int_equal(gs_store_member_add(f->st, f->gid, "a1@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    /* another connection of the server's, its -wal open before the rm */
    assert_int_equal(sqlite3_open(f->path, &other), SQLITE_OK);
    assert_int_equal(sqlite3_exec(other, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(unlink(wal), 0);
    assert_int_equal(gs_store_member_add(f->st, f->gid, "a2@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    /* its automatic checkpoint: every frame in the database */
    assert_int_equal(sqlite3_exec(other, "PRAGMA wal_checkpoint(PASSIVE)", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_close(other), SQLITE_OK);
    /* an sqlite3 shell's write (an admin command is refused now): a new
     * -wal, the log started over in it */
    assert_int_equal(sqlite3_open(f->path, &other), SQLITE_OK);
    assert_int_equal(sqlite3_exec(other, "CREATE TABLE shell_note(a); INSERT INTO shell_note VALUES ('b1')", NULL,
                                  NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_close(other), SQLITE_OK);
    gs_store_close(f->st); /* the server's stop */
    f->st = NULL;

    assert_int_equal(sqlite3_open(f->path, &check), SQLITE_OK);
    assert_db_intact(check);
    assert_int_equal(sqlite3_prepare_v2(check, "SELECT a FROM shell_note", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(s, 0), "b1");
    sqlite3_finalize(s);
    assert_int_equal(sqlite3_close(check), SQLITE_OK);
    static const char *const want[] = {"a1@example.org", "a2@example.org"};
    assert_members_kept(f, want, sizeof(want) / sizeof(want[0]));
}

/* The -wal deleted twice (a clean-up that runs again, `rm groupsrv.db-*`),
 * an admin command between: one connection of the server's checkpointed
 * the first deleted file, the command (an sqlite3 shell; groupsrv's are
 * refused then) started the log over in a new -wal and the shared index
 * describes that one's frames; then it was deleted
 * too. Nothing is at the path, as after a single deletion, but the index
 * no longer describes the file this connection has open: a checkpoint
 * from it copied that file's stale pages at the places of the other's
 * frames into the database ("database disk image is malformed"). The
 * close tells by the log's salts, which the index and every frame of the
 * file it describes carry, and writes nothing then. */
static void test_close_after_wal_deleted_twice(void **state)
{
    struct fx *f = *state;
    char wal[320];
    sqlite3 *other = NULL, *check = NULL;
    gs_store_member *m = NULL;

    (void)snprintf(wal, sizeof(wal), "%s-wal", f->path);
    for (int i = 0; i < 20; i++) { /* frames enough in the first file for the new log's */
        char who[64];
        (void)snprintf(who, sizeof(who), "a%d@example.org", i);
        assert_int_equal(gs_store_member_add(f->st, f->gid, who, GS_ROLE_MEMBER, NULL), GS_OK);
    }
    assert_int_equal(sqlite3_open(f->path, &other), SQLITE_OK);
    assert_int_equal(sqlite3_exec(other, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(unlink(wal), 0);
    assert_int_equal(gs_store_member_add(f->st, f->gid, "post@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    assert_int_equal(sqlite3_exec(other, "PRAGMA wal_checkpoint(PASSIVE)", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_close(other), SQLITE_OK);
    /* an sqlite3 shell's writes (an admin command is refused now) */
    assert_int_equal(sqlite3_open(f->path, &other), SQLITE_OK);
    assert_int_equal(sqlite3_exec(other,
                                  "CREATE TABLE shell_note(a); INSERT INTO shell_note VALUES ('b1');"
                                  "DELETE FROM members WHERE email = 'a7@example.org'",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_close(other), SQLITE_OK);
    assert_int_equal(unlink(wal), 0); /* the second deletion */
    gs_store_close(f->st);            /* the server's stop */
    f->st = NULL;

    assert_int_equal(sqlite3_open(f->path, &check), SQLITE_OK);
    assert_db_intact(check);
    assert_int_equal(sqlite3_close(check), SQLITE_OK);
    assert_int_equal(gs_store_open(f->loc, 0, &f->st), GS_OK);
    /* in the database before the shell's write: kept */
    assert_int_equal(gs_store_member_get(f->st, f->gid, "post@example.org", &m), GS_OK);
    gs_store_member_free(m);
    m = NULL;
    assert_int_equal(gs_store_member_get(f->st, f->gid, "a19@example.org", &m), GS_OK);
    gs_store_member_free(m);
}

/* The -wal deleted under the server and an admin command run before the
 * stop (docs/operations.md says not to; a script does): once the server
 * had checkpointed the deleted file, the command's write started the log
 * over in the new -wal it made, exit 0, and the stop then had two logs to
 * choose from. The command is refused at its open instead, naming the
 * cause, and the stop writes the server's changes, also those made after
 * the refusal. */
static void test_admin_refused_after_wal_deleted(void **state)
{
    struct fx *f = *state;
    char wal[320];
    sqlite3 *other = NULL, *check = NULL;
    gs_store *admin = NULL;

    (void)snprintf(wal, sizeof(wal), "%s-wal", f->path);
    assert_int_equal(gs_store_member_add(f->st, f->gid, "m1@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    assert_int_equal(sqlite3_open(f->path, &other), SQLITE_OK);
    assert_int_equal(sqlite3_exec(other, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(unlink(wal), 0);
    assert_int_equal(gs_store_member_add(f->st, f->gid, "m2@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    /* the server's automatic checkpoint of the deleted file */
    assert_int_equal(sqlite3_exec(other, "PRAGMA wal_checkpoint(PASSIVE)", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_close(other), SQLITE_OK);
    assert_int_not_equal(gs_store_open(f->loc, 0, &admin), GS_OK);
    assert_null(admin);
    assert_non_null(strstr(gs_err_detail(), "not the one its shared-memory index describes"));
    assert_int_equal(gs_store_member_add(f->st, f->gid, "m3@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    gs_store_close(f->st); /* the server's stop */
    f->st = NULL;

    assert_int_equal(sqlite3_open(f->path, &check), SQLITE_OK);
    assert_db_intact(check);
    assert_int_equal(sqlite3_close(check), SQLITE_OK);
    static const char *const want[] = {"m1@example.org", "m2@example.org", "m3@example.org"};
    assert_members_kept(f, want, sizeof(want) / sizeof(want[0]));
}

/* `rm groupsrv.db-*` under a running server deletes the -shm with the
 * -wal: an admin command then made a new -shm, found nobody in it,
 * rebuilt the index from a new empty -wal and read the database file
 * without the server's changes since its last checkpoint (a member the
 * server removed, 200, was still there for it) and wrote a second history
 * beside the server's, exit 0. It is refused at its open, naming the
 * process; the server's stop keeps its changes. */
static void test_admin_refused_after_shm_deleted(void **state)
{
    struct fx *f = *state;
    char wal[320], shm[320], b = 0;
    int c2p[2], p2c[2], status = 0;
    gs_store *admin = NULL;
    gs_store_member *m = NULL;
    pid_t pid;

    (void)snprintf(wal, sizeof(wal), "%s-wal", f->path);
    (void)snprintf(shm, sizeof(shm), "%s-shm", f->path);
    assert_int_equal(gs_store_member_add(f->st, f->gid, "s1@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    gs_store_close(f->st); /* the server is the child: this process has the database closed */
    f->st = NULL;
    assert_int_equal(pipe(c2p), 0);
    assert_int_equal(pipe(p2c), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        gs_store *srv = NULL;
        close(c2p[0]);
        close(p2c[1]); /* the parent's end: its failure or exit ends the wait below */
        int ok = gs_store_open(f->loc, 0, &srv) == GS_OK &&
                 gs_store_member_add(srv, f->gid, "s2@example.org", GS_ROLE_MEMBER, NULL) == GS_OK &&
                 unlink(wal) == 0 && unlink(shm) == 0 && gs_store_member_remove(srv, f->gid, "s1@example.org") == GS_OK;
        char r = ok ? 'y' : 'n';
        ok = write(c2p[1], &r, 1) == 1 && read(p2c[0], &r, 1) == 1 && ok;
        gs_store_close(srv); /* the stop */
        _exit(ok ? 0 : 1);
    }
    close(c2p[1]);
    close(p2c[0]);
    assert_int_equal(read(c2p[0], &b, 1), 1);
    assert_int_equal(b, 'y');
    assert_int_not_equal(gs_store_open(f->loc, 0, &admin), GS_OK);
    assert_null(admin);
    assert_non_null(strstr(gs_err_detail(), "no longer at its path"));
    assert_int_equal(write(p2c[1], "x", 1), 1);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    close(c2p[0]);
    close(p2c[1]);
    assert_int_equal(gs_store_open(f->loc, 0, &f->st), GS_OK);
    assert_int_equal(gs_store_member_get(f->st, f->gid, "s1@example.org", &m), GS_ERR_NOT_FOUND);
    assert_int_equal(gs_store_member_get(f->st, f->gid, "s2@example.org", &m), GS_OK);
    gs_store_member_free(m);
}

/* A running server and another process holding many POSIX locks on the
 * -shm (a lock tool, or many readers inside transactions, each with a
 * read mark besides the -shm lock every connection holds): /proc/locks
 * listed more than 64 of them before the server's, the look kept only
 * the first 64, found the server's database lock without its -shm lock
 * and refused every admin command ("has it open with a shared-memory
 * index that is no longer at its path"), nothing deleted. Too many to
 * look at is "cannot be told": no refusal. */
static void test_admin_not_refused_many_shm_locks(void **state)
{
    struct fx *f = *state;
    char shm[320], b = 0;
    int c2p[2], p2c[2], status = 0;
    gs_store *admin = NULL;
    pid_t srv, locker;
    cpu_set_t one, was;
    int have_was = sched_getaffinity(0, sizeof(was), &was) == 0;

    (void)snprintf(shm, sizeof(shm), "%s-shm", f->path);
    gs_store_close(f->st);
    f->st = NULL;
    /* one CPU for all three: /proc/locks lists each CPU's locks newest
     * first, so the locker's come before the server's */
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu() >= 0 ? sched_getcpu() : 0, &one);
    (void)sched_setaffinity(0, sizeof(one), &one);
    assert_int_equal(pipe(c2p), 0);
    assert_int_equal(pipe(p2c), 0);
    srv = fork();
    assert_true(srv >= 0);
    if (srv == 0) {
        gs_store *st = NULL;
        gs_store_member *m = NULL;
        close(c2p[0]);
        close(p2c[1]);
        int ok = gs_store_open(f->loc, 0, &st) == GS_OK &&
                 gs_store_member_get(st, f->gid, "nobody@example.org", &m) == GS_ERR_NOT_FOUND;
        char r = ok ? 'y' : 'n';
        ok = write(c2p[1], &r, 1) == 1 && read(p2c[0], &r, 1) == 0 && ok; /* until the parent's end closes */
        gs_store_close(st);
        _exit(ok ? 0 : 1);
    }
    assert_int_equal(read(c2p[0], &b, 1), 1);
    assert_int_equal(b, 'y');
    locker = fork();
    assert_true(locker >= 0);
    if (locker == 0) {
        close(c2p[0]);
        close(p2c[1]);
        int fd = open(shm, O_RDWR | O_CLOEXEC), ok = fd >= 0;
        for (int i = 0; ok && i < 80; i++) { /* bytes SQLite never locks, apart: 80 entries */
            struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 4096 + 2 * i, .l_len = 1};
            ok = fcntl(fd, F_SETLK, &fl) == 0;
        }
        char r = ok ? 'y' : 'n';
        ok = write(c2p[1], &r, 1) == 1 && read(p2c[0], &r, 1) == 0 && ok;
        _exit(ok ? 0 : 1);
    }
    close(c2p[1]);
    close(p2c[0]);
    assert_int_equal(read(c2p[0], &b, 1), 1);
    assert_int_equal(b, 'y');
    gs_err e = gs_store_open(f->loc, 0, &admin);
    if (e != GS_OK)
        fprintf(stderr, "refused: %s\n", gs_err_detail());
    close(p2c[1]);
    close(c2p[0]);
    assert_int_equal(waitpid(locker, &status, 0), locker);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(waitpid(srv, &status, 0), srv);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (have_was)
        (void)sched_setaffinity(0, sizeof(was), &was); /* as it was */
    assert_int_equal(e, GS_OK);
    f->st = admin;
}

/* The -wal deleted and a reader (an operator's sqlite3) inside a
 * transaction at the stop: the FULL checkpoint at close waits the busy
 * timeout for it, and the closes are one at a time, so the key holder's
 * one connection per token worker (up to 16) waited 5 s each, past the
 * supervisor's 60 s and systemd's 30 s. One close waits; the next tries
 * at once. The reader's own close, the last, then writes the changes
 * (docs/operations.md: "end that process's transaction"). */
/* SQLite's busy handler counts the time it waited by the sleeps it
 * asked for, not by the clock: connections opened on this VFS (the
 * default one's methods, sleeps returned at once) reach the 5 s busy
 * timeout at once, so the test still sees the close that waited it out
 * without spending 5 s of each pass on it. */
static sqlite3_vfs fast_sleep_vfs;

static int fast_sleep(sqlite3_vfs *vfs, int us)
{
    (void)vfs;
    return us;
}

static void fast_sleep_vfs_register(void)
{
    sqlite3_vfs *dflt = sqlite3_vfs_find(NULL);

    assert_non_null(dflt);
    fast_sleep_vfs = *dflt;
    fast_sleep_vfs.zName = "gs-test-fast-sleep";
    fast_sleep_vfs.pNext = NULL;
    fast_sleep_vfs.xSleep = fast_sleep;
    assert_int_equal(sqlite3_vfs_register(&fast_sleep_vfs, 1), SQLITE_OK);
}

static void test_orphaned_wal_close_waits_once(void **state)
{
    struct fx *f = *state;
    char wal[320], logpath[320], line[4096];
    sqlite3 *reader = NULL;
    gs_store *second = NULL;
    gs_store_member *m = NULL;
    FILE *lf;
    int waited = 0, at_once = 0;

    (void)snprintf(wal, sizeof(wal), "%s-wal", f->path);
    (void)snprintf(logpath, sizeof(logpath), "%s/close.log", f->dir);
    /* every connection of the test on the fast-sleep VFS (f->st again) */
    fast_sleep_vfs_register();
    gs_store_close(f->st);
    assert_int_equal(gs_store_open(f->loc, 0, &f->st), GS_OK);
    assert_int_equal(gs_store_member_add(f->st, f->gid, "w1@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    assert_int_equal(gs_store_open(f->loc, 0, &second), GS_OK);
    assert_int_equal(sqlite3_open(f->path, &reader), SQLITE_OK);
    assert_int_equal(sqlite3_exec(reader, "BEGIN; SELECT count(*) FROM members", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(unlink(wal), 0);
    /* a change past the reader's snapshot, in the deleted file only */
    assert_int_equal(gs_store_member_add(f->st, f->gid, "w2@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    assert_non_null(lf = fopen(logpath, "w+"));
    log_init("groupsrv", LOG_LVL_INFO, lf);
    gs_store_close(f->st); /* the stop: each worker's connection */
    f->st = NULL;
    gs_store_close(second);
    log_init("groupsrv", LOG_LVL_INFO, NULL);
    rewind(lf);
    while (fgets(line, sizeof(line), lf) != NULL) {
        if (strstr(line, "could not all be written") == NULL)
            continue;
        waited += strstr(line, "waited=busy_timeout") != NULL;
        at_once += strstr(line, "waited=no") != NULL;
    }
    fclose(lf);
    unlink(logpath);
    assert_int_equal(waited, 1);
    assert_int_equal(at_once, 1);
    assert_int_equal(sqlite3_exec(reader, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_close(reader), SQLITE_OK);
    assert_int_equal(sqlite3_vfs_unregister(&fast_sleep_vfs), SQLITE_OK);
    assert_int_equal(gs_store_open(f->loc, 0, &f->st), GS_OK);
    assert_int_equal(gs_store_member_get(f->st, f->gid, "w2@example.org", &m), GS_OK);
    gs_store_member_free(m);
}

/* A value SQLite refuses to bind (over GS_STORE_VALUE_MAX) is an error,
 * never a NULL stored in its place: the member's certificate column is
 * nullable, and an unchecked bind added the member without it. */
static void test_bind_too_long(void **state)
{
    struct fx *f = *state;
    gs_store_member *m = NULL;
    gs_store_group_key *keys = NULL;
    size_t n = 0;
    char *big = malloc((size_t)GS_STORE_VALUE_MAX + 2);
    assert_non_null(big);
    memset(big, 'A', (size_t)GS_STORE_VALUE_MAX + 1);
    big[GS_STORE_VALUE_MAX + 1] = '\0';

    assert_int_equal(gs_store_member_add(f->st, f->gid, "big@example.org", GS_ROLE_MEMBER, big), GS_ERR_ARGS);
    assert_non_null(strstr(gs_err_detail(), "too long"));
    assert_int_equal(gs_store_member_get(f->st, f->gid, "big@example.org", &m), GS_ERR_NOT_FOUND);
    assert_null(m);
    /* a NOT NULL column: the error is the length, not a constraint (EXISTS) */
    assert_int_equal(gs_store_group_key_add(f->st, f->gid, 1, "gs:group:eng:v1", big), GS_ERR_ARGS);
    assert_int_equal(gs_store_group_keys(f->st, f->gid, &keys, &n), GS_OK);
    assert_int_equal(n, 0);
    assert_int_equal(gs_store_group_key_add(f->st, f->gid, 1, "gs:group:eng:v1", "PEM"), GS_OK);
    assert_int_equal(gs_store_group_key_set_cert(f->st, f->gid, 1, big), GS_ERR_ARGS);
    assert_int_equal(gs_store_group_keys(f->st, f->gid, &keys, &n), GS_OK);
    assert_int_equal(n, 1);
    assert_string_equal(keys[0].cert_pem, "PEM");
    gs_store_group_keys_free(keys, n);
    /* a long value within the limit is fine (the row holds other columns too) */
    big[GS_STORE_VALUE_MAX / 2] = '\0';
    assert_int_equal(gs_store_member_add(f->st, f->gid, "big@example.org", GS_ROLE_MEMBER, big), GS_OK);
    assert_int_equal(gs_store_member_get(f->st, f->gid, "big@example.org", &m), GS_OK);
    assert_non_null(m->cert_pem);
    assert_int_equal(strlen(m->cert_pem), GS_STORE_VALUE_MAX / 2);
    gs_store_member_free(m);
    free(big);
}

static void test_transactions(void **state)
{
    struct fx *f = *state;
    gs_store_member *m = NULL;
    gs_store_ca *ca = NULL;
    assert_int_equal(gs_store_begin(f->st), GS_OK);
    assert_int_equal(gs_store_begin(f->st), GS_ERR_ARGS);
    assert_int_equal(gs_store_member_add(f->st, f->gid, "x@example.org", GS_ROLE_ADMIN, NULL), GS_OK);
    assert_int_equal(gs_store_group_key_add(f->st, f->gid, 1, "gs:group:eng:v1", "P"), GS_OK); /* joins the tx */
    gs_store_rollback(f->st);
    assert_int_equal(gs_store_member_get(f->st, f->gid, "x@example.org", &m), GS_ERR_NOT_FOUND);
    assert_int_equal(gs_store_commit(f->st), GS_ERR_ARGS);
    assert_int_equal(gs_store_begin(f->st), GS_OK);
    assert_int_equal(gs_store_member_add(f->st, f->gid, "x@example.org", GS_ROLE_ADMIN, NULL), GS_OK);
    assert_int_equal(gs_store_commit(f->st), GS_OK);
    assert_int_equal(gs_store_member_get(f->st, f->gid, "x@example.org", &m), GS_OK);
    assert_int_equal(m->role, GS_ROLE_ADMIN);
    gs_store_member_free(m);
    /* CA row */
    assert_int_equal(gs_store_ca_get(f->st, &ca), GS_ERR_NOT_FOUND);
    assert_int_equal(gs_store_ca_put(f->st, "gs:ca", "CAPEM"), GS_OK);
    assert_int_equal(gs_store_ca_put(f->st, "gs:ca", "CAPEM2"), GS_ERR_EXISTS);
    assert_int_equal(gs_store_ca_get(f->st, &ca), GS_OK);
    assert_string_equal(ca->label, "gs:ca");
    assert_string_equal(ca->cert_pem, "CAPEM");
    gs_store_ca_free(ca);
}


/* gs_store_commit_unknown speaks of the last commit only: a handle whose
 * earlier COMMIT's answer was lost (PostgreSQL's pg_commit sets the flag;
 * set here as it sets it) then fails a later step before its own commit
 * (a write refused, a begin that fails) must not say "not known", or
 * group rotate and ca init keep a new token key the database never named
 * and say its outcome is unknown. */
static void test_commit_unknown_not_stale(void **state)
{
    struct fx *f = *state;

    f->st->commit_unknown = true;
    assert_true(gs_store_commit_unknown(f->st));
    /* a lone write that fails (key version 1 twice), no commit of its own */
    assert_int_equal(gs_store_group_key_add(f->st, f->gid, 1, "gs:group:eng:v1", "P"), GS_OK);
    f->st->commit_unknown = true;
    assert_int_equal(gs_store_group_key_add(f->st, f->gid, 1, "gs:group:eng:v1", "P"), GS_ERR_EXISTS);
    assert_false(gs_store_commit_unknown(f->st));
    /* a transaction that is begun and rolled back */
    f->st->commit_unknown = true;
    assert_int_equal(gs_store_begin(f->st), GS_OK);
    assert_false(gs_store_commit_unknown(f->st));
    gs_store_rollback(f->st);
    assert_false(gs_store_commit_unknown(f->st));
}

/* The stamp the server's group cache polls: moves when another connection
 * (another server) commits a change, stays while nothing changes. */
static void test_change_stamp(void **state)
{
    struct fx *f = *state;
    gs_store *other = NULL;
    gs_store_member *m = NULL;
    uint64_t a = 0, b = 0, c = 0;

    assert_int_equal(gs_store_open(f->loc, 0, &other), GS_OK);
    assert_int_equal(gs_store_change_stamp(other, &a), GS_OK);
    assert_int_equal(gs_store_member_get(other, f->gid, "nobody@example.org", &m), GS_ERR_NOT_FOUND);
    assert_int_equal(gs_store_change_stamp(other, &b), GS_OK);
    assert_true(a == b);
    assert_int_equal(gs_store_group_key_add(f->st, f->gid, 1, "gs:group:eng:v1", "PEM1"), GS_OK);
    assert_int_equal(gs_store_change_stamp(other, &b), GS_OK);
    assert_true(a != b);
    /* a write through the same connection moves it too */
    assert_int_equal(gs_store_member_add(other, f->gid, "x@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    assert_int_equal(gs_store_change_stamp(other, &c), GS_OK);
    assert_true(c != b);
    gs_store_close(other);
}

/* gs_member_put (REST PUT of a member) on another connection while a
 * transaction adds the same member: PostgreSQL's READ COMMITTED lets the
 * put's DELETE find nothing and its INSERT wait on the unique index; after
 * the first commits, the put must still succeed (the record replaced),
 * never fail with a unique violation. SQLite serialises the two. */
struct put_job {
    gs_store *st;
    gs_err err;
    bool replaced;
};

static void *put_member_thread(void *arg)
{
    struct put_job *j = arg;
    j->err = gs_member_put(j->st, "eng", "race@example.org", GS_ROLE_ADMIN, NULL, GS_WRAP_DEFAULT, &j->replaced);
    return NULL;
}

static void test_member_put_race(void **state)
{
    struct fx *f = *state;
    struct put_job j = {0};
    gs_store_member *m = NULL;
    pthread_t th;

    assert_int_equal(gs_store_open(f->loc, 0, &j.st), GS_OK);
    assert_int_equal(gs_store_begin(f->st), GS_OK);
    assert_int_equal(gs_store_member_add(f->st, f->gid, "race@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    assert_int_equal(pthread_create(&th, NULL, put_member_thread, &j), 0);
    /* Commit once the put waits for this transaction (PostgreSQL: a lock
     * wait shows in pg_stat_activity); at most 10 s either way. */
    for (int i = 0; i < 200; i++) {
        if (g_pg && pgtest_int(f->dbname, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                          "AND datname = current_database()") > 0)
            break;
        usleep(50 * 1000);
        if (!g_pg && i >= 4)
            break;
    }
    assert_int_equal(gs_store_commit(f->st), GS_OK);
    assert_int_equal(pthread_join(th, NULL), 0);
    if (j.err != GS_OK)
        fprintf(stderr, "gs_member_put: %s: %s\n", gs_strerror(j.err), gs_err_detail());
    assert_int_equal(j.err, GS_OK);
    assert_true(j.replaced);
    assert_int_equal(gs_store_member_get(f->st, f->gid, "race@example.org", &m), GS_OK);
    assert_int_equal(m->role, GS_ROLE_ADMIN);
    gs_store_member_free(m);
    gs_store_close(j.st);
}

/* The key holder's read snapshot (one SQLite read transaction per
 * request): a member removed by another connection before it begins is
 * refused inside it, the next snapshot sees the next change, and a write
 * after read_begin ends the snapshot instead of failing. */
static void test_read_snapshot(void **state)
{
    struct fx *f = *state;
    gs_store *other = NULL;
    gs_store_member *m = NULL;
    uint64_t a = 0, b = 0;

    assert_int_equal(gs_store_member_add(f->st, f->gid, "alice@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    assert_int_equal(gs_store_open(f->loc, 0, &other), GS_OK);
    assert_int_equal(gs_store_read_begin(other), GS_OK);
    assert_int_equal(gs_store_read_begin(other), GS_OK); /* already in one: nothing */
    assert_int_equal(gs_store_change_stamp(other, &a), GS_OK);
    assert_int_equal(gs_store_member_get(other, f->gid, "alice@example.org", &m), GS_OK);
    gs_store_member_free(m);
    m = NULL;
    gs_store_read_end(other);
    gs_store_read_end(other); /* none open: nothing */
    assert_int_equal(gs_store_member_remove(f->st, f->gid, "alice@example.org"), GS_OK);
    assert_int_equal(gs_store_read_begin(other), GS_OK);
    assert_int_equal(gs_store_change_stamp(other, &b), GS_OK);
    assert_true(a != b);
    assert_int_equal(gs_store_member_get(other, f->gid, "alice@example.org", &m), GS_ERR_NOT_FOUND);
    assert_null(m);
    /* a write (its own transaction) ends the snapshot first */
    assert_int_equal(gs_store_member_add(f->st, f->gid, "bob@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    assert_int_equal(gs_store_begin(other), GS_OK);
    assert_int_equal(gs_store_member_add(other, f->gid, "carol@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    assert_int_equal(gs_store_commit(other), GS_OK);
    assert_int_equal(gs_store_member_get(f->st, f->gid, "carol@example.org", &m), GS_OK);
    gs_store_member_free(m);
    m = NULL;
    /* closed with a snapshot open: no transaction left behind */
    assert_int_equal(gs_store_read_begin(other), GS_OK);
    assert_int_equal(gs_store_member_get(other, f->gid, "bob@example.org", &m), GS_OK);
    gs_store_member_free(m);
    gs_store_close(other);
    assert_int_equal(gs_store_member_remove(f->st, f->gid, "bob@example.org"), GS_OK);
}

/* Audit chains: PostgreSQL keeps them, one per instance; SQLite has none. */
static void test_audit_rows(void **state)
{
    struct fx *f = *state;
    char *line = NULL, **inst = NULL;
    int64_t seq = -1;
    gs_store_audit_row *rows = NULL;
    size_t n = 0;
    char *const batch[] = {"{\"a\":\"q\\\"uote\"}", "back\\slash", "{}"};
    uint64_t s1 = 0, s2 = 0;

    if (!g_pg) {
        assert_int_equal(gs_store_audit_head(f->st, "a", &seq, &line), GS_ERR_ARGS);
        assert_int_equal(gs_store_audit_append(f->st, "a", 1, batch, 1), GS_ERR_ARGS);
        return;
    }
    assert_int_equal(gs_store_audit_head(f->st, "a", &seq, &line), GS_OK);
    assert_int_equal(seq, 0);
    assert_null(line);
    assert_int_equal(gs_store_change_stamp(f->st, &s1), GS_OK);
    assert_int_equal(gs_store_audit_append(f->st, "a", 1, batch, 3), GS_OK);
    assert_int_equal(gs_store_audit_append(f->st, "b", 1, batch, 1), GS_OK);
    /* audit writes do not invalidate the servers' group caches */
    assert_int_equal(gs_store_change_stamp(f->st, &s2), GS_OK);
    assert_true(s1 == s2);
    /* a taken seq: another process writes this instance's chain */
    assert_int_equal(gs_store_audit_append(f->st, "a", 3, batch, 1), GS_ERR_EXISTS);
    assert_non_null(strstr(gs_err_detail(), "instance"));
    assert_int_equal(gs_store_audit_head(f->st, "a", &seq, &line), GS_OK);
    assert_int_equal(seq, 3);
    assert_string_equal(line, "{}");
    free(line);
    assert_int_equal(gs_store_audit_read(f->st, "a", 1, 10, &rows, &n), GS_OK);
    assert_int_equal(n, 2);
    assert_int_equal(rows[0].seq, 2);
    assert_string_equal(rows[0].line, "back\\slash");
    gs_store_audit_rows_free(rows, n);
    assert_int_equal(gs_store_audit_read(f->st, "a", 0, 1, &rows, &n), GS_OK);
    assert_int_equal(n, 1);
    assert_string_equal(rows[0].line, batch[0]);
    gs_store_audit_rows_free(rows, n);
    assert_int_equal(gs_store_audit_instances(f->st, &inst, &n), GS_OK);
    assert_int_equal(n, 2);
    assert_string_equal(inst[0], "a");
    assert_string_equal(inst[1], "b");
    gs_store_strings_free(inst, n);
    assert_int_equal(gs_store_audit_head(f->st, "", &seq, &line), GS_ERR_ARGS);
}

/* The SQL that ends every other session on the fixture's database (as a
 * PostgreSQL restart or failover does to a server's connections). */
/* Ends the database's other sessions and waits until their backends have
 * exited (pg_terminate_backend with a timeout, PostgreSQL 14): without
 * the wait, a backend not yet scheduled still holds its session (and its
 * advisory locks) while the test goes on. The count is of those ended. */
static void end_sessions_sql(const struct fx *f, char *sql, size_t cap)
{
    (void)snprintf(sql, cap,
                   "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 30000)) FROM pg_stat_activity "
                   "WHERE datname = '%s' AND pid <> pg_backend_pid()", f->dbname);
}

/* PostgreSQL restarted or failed over: a read that meets the dead
 * connection is sent again on a new one and served (under load no
 * connection is idle long enough to be read first, and every token
 * worker's next request got 503 though the database was back); a write
 * that meets it fails with GS_ERR_DB_UNAVAILABLE (it may have been made),
 * the next one reconnects; a transaction open at the loss fails until
 * rolled back. (A connection unused for 100 ms is read first, and the
 * call finds the end before its statement goes out: a busy machine takes
 * that long between two lines here, so that check is put off for this
 * test. ops_pg_outage tests it.) */
static void test_reconnect(void **state)
{
    struct fx *f = *state;
    gs_store_member *m = NULL;
    char sql[256];

    if (!g_pg)
        return;
    end_sessions_sql(f, sql, sizeof(sql));
    assert_int_equal(gs_store_member_add(f->st, f->gid, "a@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    gs_store_set_idle_check(UINT_MAX);
    assert_true(pgtest_int(f->dbname, sql) >= 1);
    assert_int_equal(gs_store_member_get(f->st, f->gid, "a@example.org", &m), GS_OK);
    gs_store_member_free(m);
    m = NULL;
    assert_true(pgtest_int(f->dbname, sql) >= 1);
    assert_int_equal(gs_store_member_add(f->st, f->gid, "d@example.org", GS_ROLE_MEMBER, NULL),
                     GS_ERR_DB_UNAVAILABLE);
    assert_int_equal(gs_store_member_get(f->st, f->gid, "a@example.org", &m), GS_OK);
    gs_store_member_free(m);
    m = NULL;

    assert_int_equal(gs_store_begin(f->st), GS_OK);
    assert_int_equal(gs_store_member_add(f->st, f->gid, "b@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    assert_true(pgtest_int(f->dbname, sql) >= 1);
    assert_int_equal(gs_store_member_add(f->st, f->gid, "c@example.org", GS_ROLE_MEMBER, NULL),
                     GS_ERR_DB_UNAVAILABLE);
    /* no reconnect inside the lost transaction: c is not added on its own */
    assert_int_equal(gs_store_member_add(f->st, f->gid, "c@example.org", GS_ROLE_MEMBER, NULL),
                     GS_ERR_DB_UNAVAILABLE);
    assert_int_equal(gs_store_commit(f->st), GS_ERR_DB_UNAVAILABLE);
    assert_int_equal(gs_store_member_get(f->st, f->gid, "b@example.org", &m), GS_ERR_NOT_FOUND);
    assert_int_equal(gs_store_member_get(f->st, f->gid, "c@example.org", &m), GS_ERR_NOT_FOUND);

    /* The read's second try cannot connect (the database refuses
     * connections still): the caller gets that reason, after one try,
     * and the read after the database is back is served. */
    char alter[256];
    (void)snprintf(alter, sizeof(alter), "ALTER DATABASE \"%s\" ALLOW_CONNECTIONS false", f->dbname);
    assert_int_equal(pgtest_exec(NULL, alter), 0);
    assert_true(pgtest_int("postgres", sql) >= 1);
    assert_int_equal(gs_store_member_get(f->st, f->gid, "a@example.org", &m), GS_ERR_DB_UNAVAILABLE);
    assert_null(m);
    assert_non_null(strstr(gs_err_detail(), "cannot connect to the database"));
    /* Nor while the database is away (renamed, or dropped and made again
     * by a restore): libpq's "database ... does not exist" is an outage
     * here, not "not found" (a server answered its requests 404
     * not_found "database not found", which an exploder bounces). */
    (void)snprintf(alter, sizeof(alter), "ALTER DATABASE \"%s\" RENAME TO \"%s_away\"", f->dbname, f->dbname);
    assert_int_equal(pgtest_exec(NULL, alter), 0);
    gs_err away = gs_store_member_get(f->st, f->gid, "a@example.org", &m);
    (void)snprintf(alter, sizeof(alter), "ALTER DATABASE \"%s_away\" RENAME TO \"%s\"", f->dbname, f->dbname);
    assert_int_equal(pgtest_exec(NULL, alter), 0);
    assert_int_equal(away, GS_ERR_DB_UNAVAILABLE);
    assert_null(m);
    (void)snprintf(alter, sizeof(alter), "ALTER DATABASE \"%s\" ALLOW_CONNECTIONS true", f->dbname);
    assert_int_equal(pgtest_exec(NULL, alter), 0);
    assert_int_equal(gs_store_member_get(f->st, f->gid, "a@example.org", &m), GS_OK);
    gs_store_member_free(m);
    m = NULL;
    gs_store_set_idle_check(GS_STORE_IDLE_CHECK_MS);
}

/* A token worker drops what it kept when the change stamp moves. On a new
 * connection (a failover to a standby that lacked the old primary's last
 * commits, a restored backup) the counter can read a value read before,
 * with other rows behind it (a member removed there since): the stamp
 * differs all the same, from every stamp this handle read before, whatever
 * the counter reads there. (The stamp mixed the counter with the low 16
 * bits of the connection count: 65536 connections later, or a counter past
 * 2^48, it came back equal, and a removed member's record was kept.) */
static void test_change_stamp_reconnect(void **state)
{
    struct fx *f = *state;
    uint64_t a = 0, b = 0, c = 0, again = 0;
    char sql[256], set[96];

    if (!g_pg)
        return;
    end_sessions_sql(f, sql, sizeof(sql));
    gs_store_set_idle_check(UINT_MAX); /* the stamp's read meets the ended connection (test_reconnect) */
    assert_int_equal(pgtest_exec(f->dbname, "UPDATE changes SET n = 5 WHERE id = 1"), 0);
    assert_int_equal(gs_store_change_stamp(f->st, &a), GS_OK);
    assert_int_equal(gs_store_change_stamp(f->st, &again), GS_OK);
    assert_true(a == again); /* nothing changed: steady */
    /* a new connection, the counter as it was */
    assert_true(pgtest_int(f->dbname, sql) >= 1);
    assert_int_equal(gs_store_change_stamp(f->st, &b), GS_OK);
    assert_true(b != a);
    assert_int_equal(gs_store_change_stamp(f->st, &again), GS_OK);
    assert_true(b == again);
    /* another new connection, the counter at the value that the old
     * mixing (counter ^ connections << 48) made read as b again */
    uint64_t g = (b ^ 5u) >> 48;
    (void)snprintf(set, sizeof(set), "UPDATE changes SET n = %llu WHERE id = 1",
                   (unsigned long long)(5u ^ ((g ^ ((g + 1) & 0xffffu)) << 48)));
    assert_int_equal(pgtest_exec(f->dbname, set), 0);
    assert_true(pgtest_int(f->dbname, sql) >= 1);
    assert_int_equal(gs_store_change_stamp(f->st, &c), GS_OK);
    assert_true(c != b && c != a);
    gs_store_set_idle_check(GS_STORE_IDLE_CHECK_MS);
}

/* PostgreSQL's keys lock is a session advisory lock: it ends with its
 * connection. A command that held it and lost the connection (a database
 * restart during a key generation) must not carry on over a new one: it
 * would hold the lock no more, and another server, given it meanwhile,
 * picks the same label. Its statements fail until it lets go. */
static void test_keys_lock_lost(void **state)
{
    struct fx *f = *state;
    gs_store *other = NULL;
    gs_store_member *m = NULL;
    char sql[256];

    if (!g_pg)
        return;
    end_sessions_sql(f, sql, sizeof(sql));
    assert_int_equal(gs_store_member_add(f->st, f->gid, "a@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    assert_int_equal(gs_store_keys_lock(f->st), GS_OK);
    assert_true(pgtest_int(f->dbname, sql) >= 1);
    /* the lock went with the connection: another one gets it at once */
    assert_int_equal(gs_store_open(f->loc, 0, &other), GS_OK);
    assert_int_equal(gs_store_keys_lock(other), GS_OK);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(gs_store_member_get(f->st, f->gid, "a@example.org", &m), GS_ERR_DB_UNAVAILABLE);
        assert_null(m);
    }
    assert_non_null(strstr(gs_err_detail(), "keys lock"));
    assert_int_equal(gs_store_member_add(f->st, f->gid, "b@example.org", GS_ROLE_MEMBER, NULL),
                     GS_ERR_DB_UNAVAILABLE);
    gs_store_keys_unlock(other);
    gs_store_close(other);
    /* let go: the handle connects again */
    gs_store_keys_unlock(f->st);
    assert_int_equal(gs_store_member_get(f->st, f->gid, "a@example.org", &m), GS_OK);
    gs_store_member_free(m);
    m = NULL;
    assert_int_equal(gs_store_member_get(f->st, f->gid, "b@example.org", &m), GS_ERR_NOT_FOUND);
    assert_int_equal(gs_store_keys_lock(f->st), GS_OK);
    gs_store_keys_unlock(f->st);
}

/* A statement that gives up on a lock (lock_timeout, 55P03) marks the
 * connection lost, but the connection is still open, and so is its
 * session's keys lock: the unlock must end it, or every command that
 * makes keys, on every server, waits until this handle's next statement
 * happens to reconnect (a server's idle worker: any time). */
static void test_keys_lock_released_after_lock_timeout(void **state)
{
    struct fx *f = *state;
    gs_store *st = NULL;
    char loc[1200];
    const char *advisory = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                           "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

    if (!g_pg)
        return;
    (void)snprintf(loc, sizeof(loc), "%s%coptions=-c%%20lock_timeout%%3D300", f->loc,
                   strchr(f->loc, '?') != NULL ? '&' : '?');
    assert_int_equal(gs_store_open(loc, 0, &st), GS_OK);
    assert_int_equal(gs_store_keys_lock(st), GS_OK);
    assert_int_equal(pgtest_int(f->dbname, advisory), 1);
    /* another transaction holds the row st wants: st's insert gives up */
    assert_int_equal(gs_store_begin(f->st), GS_OK);
    assert_int_equal(gs_store_member_add(f->st, f->gid, "held@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    assert_int_equal(gs_store_member_add(st, f->gid, "held@example.org", GS_ROLE_MEMBER, NULL),
                     GS_ERR_DB_UNAVAILABLE);
    gs_store_keys_unlock(st);
    /* The unlock closes the connection; its backend lets go of the lock as
     * it ends, a moment after the close (seen still held once in CI): a
     * bounded wait, never a lock that stays. */
    for (int i = 0; i < 100 && pgtest_int(f->dbname, advisory) != 0; i++)
        usleep(20 * 1000);
    assert_int_equal(pgtest_int(f->dbname, advisory), 0);
    gs_store_rollback(f->st);
    /* the handle works again, and takes the lock again */
    assert_int_equal(gs_store_member_add(st, f->gid, "held@example.org", GS_ROLE_MEMBER, NULL), GS_OK);
    assert_int_equal(gs_store_keys_lock(st), GS_OK);
    gs_store_keys_unlock(st);
    gs_store_close(st);
}

/* A statement that got no answer within [db] timeout closes the connection
 * and is reported as such (503 "did not answer in time"), once: the
 * keys lock's unlock, whose outcome nobody reads, left that verdict
 * behind, and the next statement's own error (here a duplicate, 409) was
 * then told as a database that did not answer. The unlock is made to
 * hang by a pg_advisory_unlock of the session's search path, found before
 * pg_catalog's, that sleeps past the wait (statement_timeout is the
 * URI's, so the session's own does not cut it first). */
static void test_no_answer_told_once(void **state)
{
    struct fx *f = *state;
    gs_store *st = NULL;
    gs_store_group g = {0};
    int64_t id = 0;
    char loc[1200];

    if (!g_pg)
        return;
    assert_int_equal(pgtest_exec(f->dbname, "CREATE FUNCTION public.pg_advisory_unlock(bigint) RETURNS boolean "
                                            "LANGUAGE sql AS $$ SELECT pg_sleep(2.5); "
                                            "SELECT pg_catalog.pg_advisory_unlock($1) $$"),
                     0);
    (void)snprintf(loc, sizeof(loc),
                   "%s%coptions=-c%%20search_path%%3Dpublic,pg_catalog%%20-c%%20statement_timeout%%3D60000", f->loc,
                   strchr(f->loc, '?') != NULL ? '&' : '?');
    assert_int_equal(gs_store_open(loc, 0, &st), GS_OK);
    gs_store_set_timeout(1);
    assert_int_equal(gs_store_keys_lock(st), GS_OK);
    gs_store_keys_unlock(st); /* no answer within 2 s: the connection is closed */
    g.name = "eng";
    g.address = "eng@example.org";
    g.methods = GS_METHODS_DEFAULT;
    g.algorithm = "rsa:2048";
    assert_int_equal(gs_store_group_add(st, &g, &id), GS_ERR_EXISTS);
    assert_null(strstr(gs_err_detail(), "in time"));
    gs_store_set_timeout(0); /* the default again */
    gs_store_close(st);
}

static void test_helpers(void **state)
{
    (void)state;
    unsigned m = 0;
    char buf[128];
    gs_store_span spans[GS_STORE_URL_PASSWORDS_MAX];
    gs_role r;
    assert_int_equal(gs_methods_parse("tls,group-secret", &m), GS_OK);
    assert_int_equal(m, GS_METHOD_TLS | GS_METHOD_GROUP_SECRET);
    gs_methods_format(GS_METHODS_DEFAULT, buf, sizeof(buf));
    assert_string_equal(buf, "tls,recipient-key,group-secret,membership-cert");
    assert_int_equal(gs_methods_parse(buf, &m), GS_OK);
    assert_int_equal(m, GS_METHODS_DEFAULT);
    assert_int_equal(gs_methods_parse("tls,pigeon", &m), GS_ERR_ARGS);
    assert_non_null(strstr(gs_err_detail(), "pigeon"));
    assert_int_equal(gs_methods_parse("", &m), GS_ERR_ARGS);
    assert_int_equal(gs_methods_parse("tls,", &m), GS_ERR_ARGS);
    assert_int_equal(gs_methods_parse("tls,,group-secret", &m), GS_ERR_ARGS);
    assert_int_equal(gs_role_parse("exploder", &r), GS_OK);
    assert_int_equal(r, GS_ROLE_EXPLODER);
    assert_string_equal(gs_role_name(GS_ROLE_ADMIN), "admin");
    assert_int_equal(gs_role_parse("root", &r), GS_ERR_ARGS);

    assert_true(gs_valid_group_name("eng"));
    assert_true(gs_valid_group_name("team-1.dev_x"));
    assert_false(gs_valid_group_name(""));
    assert_false(gs_valid_group_name("Eng"));
    assert_false(gs_valid_group_name("-x"));
    assert_false(gs_valid_group_name("a/b"));
    assert_false(gs_valid_group_name("a:b"));
    memset(buf, 'a', 65);
    buf[65] = '\0';
    assert_false(gs_valid_group_name(buf));
    buf[64] = '\0';
    assert_true(gs_valid_group_name(buf));

    assert_true(gs_valid_email("a@b.org"));
    assert_true(gs_valid_email("first.last+tag@sub.example.org"));
    assert_false(gs_valid_email("nobody"));
    assert_false(gs_valid_email("a@@b"));
    assert_false(gs_valid_email("a@b@c"));
    assert_false(gs_valid_email("@b.org"));
    assert_false(gs_valid_email("a@"));
    assert_false(gs_valid_email("a b@c.org"));
    assert_false(gs_valid_email("a/b@c.org"));
    assert_false(gs_valid_email("<a@b.org>"));
    assert_false(gs_valid_email("a,b@c.org"));
    assert_false(gs_valid_email(NULL));

    /* locations in messages: passwords masked, the rest kept */
    assert_true(gs_store_location_is_url("postgresql:///g?host=/run/postgresql"));
    assert_true(gs_store_location_is_url("postgres://h/g"));
    assert_false(gs_store_location_is_url("/var/lib/groupsrv/groupsrv.db"));
    gs_store_location_display("postgresql://gs:s3cret@db.example.org:5432/g?sslmode=verify-full", buf, sizeof(buf));
    assert_string_equal(buf, "postgresql://gs:***@db.example.org:5432/g?sslmode=verify-full");
    gs_store_location_display("postgresql:///g?host=/s&password=s3cret&user=gs", buf, sizeof(buf));
    assert_string_equal(buf, "postgresql:///g?host=/s&password=***&user=gs");
    gs_store_location_display("postgresql://db/g?password=x", buf, sizeof(buf));
    assert_string_equal(buf, "postgresql://db/g?password=***");
    gs_store_location_display("/tmp/a:b@c.db", buf, sizeof(buf));
    assert_string_equal(buf, "/tmp/a:b@c.db");
    /* an empty password, and one password= running into another '?' */
    gs_store_location_display("postgresql://u:@h/d", buf, sizeof(buf));
    assert_string_equal(buf, "postgresql://u:***@h/d");
    gs_store_location_display("postgresql://u:p@h/d?password=a?password=b&x=1", buf, sizeof(buf));
    assert_string_equal(buf, "postgresql://u:***@h/d?password=***&x=1");
    /* libpq's user:password@ ends at the first '@' before a '/': a '?',
     * '&' or '#' before it is the password's (before, the whole password
     * was shown) */
    gs_store_location_display("postgresql://u:p?w&x#y@h/d?sslmode=require", buf, sizeof(buf));
    assert_string_equal(buf, "postgresql://u:***@h/d?sslmode=require");
    gs_store_location_display("postgresql://h/d?user=a@b&password=c", buf, sizeof(buf));
    assert_string_equal(buf, "postgresql://h/d?user=a@b&password=***");
    /* a '/' in it (base64) that libpq takes for the path: each piece,
     * which libpq quotes as a port or database name */
    gs_store_location_display("postgresql://u:Qx7/z9+Kq/w@h:5432/d", buf, sizeof(buf));
    assert_string_equal(buf, "postgresql://u:***@h:5432/d");
    gs_store_location_display("postgresql://h:5432/d?user=a@b", buf, sizeof(buf));
    assert_string_equal(buf, "postgresql://h:5432/d?user=a@b");
    /* an '@' in the password, not written %40 (libpq ends the password
     * at the first and quotes the rest as the host name), also with
     * several hosts or an IPv6 one, and in the user name */
    gs_store_location_display("postgresql://gs:P@ssw0rd@db.example.org/g", buf, sizeof(buf));
    assert_string_equal(buf, "postgresql://gs:***@db.example.org/g");
    gs_store_location_display("postgresql://u:p@s@s@[::1]:5432,h2:5433/g?sslmode=require", buf, sizeof(buf));
    assert_string_equal(buf, "postgresql://u:***@[::1]:5432,h2:5433/g?sslmode=require");
    gs_store_location_display("postgresql://us@er:pw@h/g", buf, sizeof(buf));
    assert_string_equal(buf, "postgresql://us@er:***@h/g");
    /* a query right after the host, without a path */
    gs_store_location_display("postgresql://db:5432?dbname=g&password=s3cret", buf, sizeof(buf));
    assert_string_equal(buf, "postgresql://db:5432?dbname=g&password=***");
    gs_store_location_display("postgresql://[::1]?password=s3cret", buf, sizeof(buf));
    assert_string_equal(buf, "postgresql://[::1]?password=***");
    /* the keyword percent-encoded, which libpq decodes */
    gs_store_location_display("postgresql:///g?host=/s&%70assw%6Frd=s3cret&user=gs", buf, sizeof(buf));
    assert_string_equal(buf, "postgresql:///g?host=/s&%70assw%6Frd=***&user=gs");
    /* more '/' in it than there are spans: one span, all of it */
    gs_store_location_display("postgresql://u:a/b/c/d/e/f/g/h/i/j@h/g?password=x&password=y", buf, sizeof(buf));
    assert_string_equal(buf, "postgresql://u:***@h/g?password=***&password=***");
    /* the query, where groupsrv adds its connection parameters: not at a
     * '?' in the password */
    assert_null(gs_store_url_query("postgresql://u:pw?x@h/g"));
    assert_string_equal(gs_store_url_query("postgresql://u:pw?x@h/g?sslmode=require"), "?sslmode=require");
    assert_string_equal(gs_store_url_query("postgresql://h:5432?dbname=g"), "?dbname=g");
    assert_string_equal(gs_store_url_query("postgresql:///g?host=/s"), "?host=/s");
    assert_null(gs_store_url_query("/tmp/a?b.db"));
    /* the edges: nothing after the scheme, an '@' last, an '@' only in the
     * query, IPv6 and several hosts, "postgres://" */
    assert_int_equal(gs_store_url_passwords("postgresql://", spans, GS_STORE_URL_PASSWORDS_MAX), 0);
    assert_int_equal(gs_store_url_passwords("postgresql://@", spans, GS_STORE_URL_PASSWORDS_MAX), 0);
    assert_null(gs_store_url_query("postgresql://"));
    gs_store_location_display("postgresql://u:pw@", buf, sizeof(buf));
    assert_string_equal(buf, "postgresql://u:***@");
    gs_store_location_display("postgres://u:p@w@[::1]:5432,[fe80::1%25eth0]:5433/g?x=a@b&password=", buf,
                              sizeof(buf));
    assert_string_equal(buf, "postgres://u:***@[::1]:5432,[fe80::1%25eth0]:5433/g?x=a@b&password=***");
    /* the passphrase of the client key is a secret too; a longer keyword
     * ending so is not one */
    gs_store_location_display(
        "postgresql://h/g?sslkey=/k.pem&sslpassword=s3cret&%73slpassword=x&xsslpassword=y", buf, sizeof(buf));
    assert_string_equal(buf,
                        "postgresql://h/g?sslkey=/k.pem&sslpassword=***&%73slpassword=***&xsslpassword=y");
    /* cut to the buffer, still terminated */
    gs_store_location_display("postgresql://u:s3cret@h/g", buf, 16);
    assert_string_equal(buf, "postgresql://u:");
}

/* libpq's own messages for passwords it reads as something else, as
 * libpq 15-17 print them: each quoted piece of the password becomes
 * "***", also when libpq quotes it %-decoded. */
static void test_url_mask_passwords(void **state)
{
    char msg[256];
    (void)state;

    (void)snprintf(msg, sizeof(msg), "invalid integer value \"s3cret\" for connection option \"port\"");
    gs_store_url_mask_passwords("postgresql://u:s3cr%65t/x@127.0.0.1/db", msg, sizeof(msg));
    assert_string_equal(msg, "invalid integer value \"***\" for connection option \"port\"");
    (void)snprintf(msg, sizeof(msg), "could not translate host name \"ssword@127.0.0.1\" to address");
    gs_store_url_mask_passwords("postgresql://u:p@s%73word@127.0.0.1:1/db", msg, sizeof(msg));
    assert_string_equal(msg, "could not translate host name \"***@127.0.0.1\" to address");
    /* as written, when it is quoted so (an invalid %-sequence) */
    (void)snprintf(msg, sizeof(msg), "invalid percent-encoded token: \"9Kq%%zz@\"");
    gs_store_url_mask_passwords("postgresql://u:Tr0ub@9Kq%zz@h/db", msg, sizeof(msg));
    assert_string_equal(msg, "invalid percent-encoded token: \"***@\"");
    /* a query's password= decoded, and the message cut to its buffer */
    (void)snprintf(msg, sizeof(msg), "password \"a b\" and \"a%%20b\"");
    gs_store_url_mask_passwords("postgresql://h/g?password=a%20b", msg, sizeof(msg));
    assert_string_equal(msg, "password \"***\" and \"***\"");
    (void)snprintf(msg, sizeof(msg), "x s3cret");
    gs_store_url_mask_passwords("postgresql://u:s3cret@h/g", msg, 6);
    assert_string_equal(msg, "x ***");
}

static int group_sqlite(void **state)
{
    (void)state;
    g_pg = 0;
    return 0;
}

/* Never skipped: without the test server the whole group fails. */
static int group_pg(void **state)
{
    (void)state;
    g_pg = 1;
    if (getenv("GS_TEST_PG_URL") == NULL) {
        fprintf(stderr, "GS_TEST_PG_URL is not set: run under tests/lib/pg.sh run\n");
        return -1;
    }
    return 0;
}

int main(void)
{
    /* The same cases for each backend. */
#define STORE_TESTS                                                            \
    cmocka_unit_test_setup_teardown(test_open_schema, setup, teardown),        \
    cmocka_unit_test_setup_teardown(test_newer_schema_refused, setup, teardown), \
    cmocka_unit_test_setup_teardown(test_older_schema_migrated, setup, teardown), \
    cmocka_unit_test_setup_teardown(test_migrate_v1_wrap, setup, teardown),   \
    cmocka_unit_test_setup_teardown(test_policy_records, setup, teardown),     \
    cmocka_unit_test_setup_teardown(test_groups, setup, teardown),             \
    cmocka_unit_test_setup_teardown(test_key_versions, setup, teardown),       \
    cmocka_unit_test_setup_teardown(test_secrets, setup, teardown),            \
    cmocka_unit_test_setup_teardown(test_replicable_records, setup, teardown), \
    cmocka_unit_test_setup_teardown(test_members_no_cache, setup, teardown),   \
    cmocka_unit_test_setup_teardown(test_member_other_spellings, setup, teardown), \
    cmocka_unit_test_setup_teardown(test_keys_lock, setup, teardown),          \
    cmocka_unit_test_setup_teardown(test_bind_too_long, setup, teardown),      \
    cmocka_unit_test_setup_teardown(test_transactions, setup, teardown),       \
    cmocka_unit_test_setup_teardown(test_commit_unknown_not_stale, setup, teardown), \
    cmocka_unit_test_setup_teardown(test_change_stamp, setup, teardown),       \
    cmocka_unit_test_setup_teardown(test_read_snapshot, setup, teardown),      \
    cmocka_unit_test_setup_teardown(test_member_put_race, setup, teardown),    \
    cmocka_unit_test_setup_teardown(test_audit_rows, setup, teardown),         \
    cmocka_unit_test_setup_teardown(test_reconnect, setup, teardown),          \
    cmocka_unit_test_setup_teardown(test_change_stamp_reconnect, setup, teardown), \
    cmocka_unit_test_setup_teardown(test_keys_lock_lost, setup, teardown),     \
    cmocka_unit_test_setup_teardown(test_keys_lock_released_after_lock_timeout, setup, teardown), \
    cmocka_unit_test_setup_teardown(test_no_answer_told_once, setup, teardown)
    const struct CMUnitTest sqlite_tests[] = {STORE_TESTS, cmocka_unit_test(test_helpers),
                                              cmocka_unit_test_setup_teardown(test_check_grants_keeps_lock, setup,
                                                                              teardown),
                                              cmocka_unit_test_setup_teardown(test_close_after_wal_replaced, setup,
                                                                              teardown),
                                              cmocka_unit_test_setup_teardown(test_orphaned_wal_close_waits_once,
                                                                              setup, teardown),
                                              cmocka_unit_test_setup_teardown(test_close_after_wal_deleted_twice,
                                                                              setup, teardown),
                                              cmocka_unit_test_setup_teardown(test_admin_refused_after_wal_deleted,
                                                                              setup, teardown),
                                              cmocka_unit_test_setup_teardown(test_admin_refused_after_shm_deleted,
                                                                              setup, teardown),
                                              cmocka_unit_test_setup_teardown(test_admin_not_refused_many_shm_locks,
                                                                              setup, teardown),
                                              cmocka_unit_test_setup_teardown(test_migrate_damaged_refused, setup,
                                                                              teardown),
                                              cmocka_unit_test(test_url_mask_passwords)};
    const struct CMUnitTest pg_tests[] = {STORE_TESTS,
                                          cmocka_unit_test_setup_teardown(test_turkish_collation_refused, setup,
                                                                          teardown),
                                          cmocka_unit_test_setup_teardown(test_application_name, setup, teardown)};
    int failed = cmocka_run_group_tests_name("sqlite", sqlite_tests, group_sqlite, NULL);
    failed += cmocka_run_group_tests_name("postgresql", pg_tests, group_pg, NULL);
    return failed;
}
