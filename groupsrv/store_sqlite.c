/* store_sqlite.c: the SQLite backend of store.h (see store_impl.h). One
 * SQLite connection per gs_store; every query is a prepared statement with
 * bound parameters. */
#include "store_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* Statements run on every server request, prepared once per connection
 * (re-parsing the SQL was a visible share of a request's CPU). */
enum hot_stmt { HOT_DATA_VERSION, HOT_MEMBER_GET, HOT_READ_BEGIN, HOT_READ_END, HOT_HEALTH_READ, HOT_N };

struct sq_store {
    struct gs_store base;
    sqlite3 *db;
    sqlite3_stmt *hot[HOT_N];
    int keys_fd; /* the database's directory while the keys lock is held, else -1 */
    dev_t dev;   /* the file opened (ino 0: not a file): still the one at its path? */
    ino_t ino;
    dev_t wal_dev; /* its -wal, open for as long as the connection is (ino 0: not seen yet) */
    ino_t wal_ino;
    dev_t shm_dev; /* its -shm, the same (ino 0: not seen yet) */
    ino_t shm_ino;
    bool write_checked; /* the file passed PRAGMA quick_check before this connection's first write */
};

#define SQ(st) ((struct sq_store *)(st))

/* Migrations: migrations[i] takes the schema from version i to i+1. Never
 * edit a released step; append a new one, here and in store_pg.c (both
 * backends are at GS_STORE_SCHEMA_VERSION). */
static const char *const migrations[] = {
    /* 0 -> 1 */
    "CREATE TABLE ca ("
    "  id INTEGER PRIMARY KEY CHECK (id = 1),"
    "  key_label TEXT NOT NULL,"
    "  cert_pem TEXT NOT NULL,"
    "  created INTEGER NOT NULL);"
    "CREATE TABLE groups ("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL UNIQUE,"
    "  address TEXT NOT NULL,"
    "  methods INTEGER NOT NULL,"
    "  key_spec TEXT NOT NULL,"
    "  allow_pkcs1v15 INTEGER NOT NULL,"
    "  reject_label TEXT,"
    "  created INTEGER NOT NULL);"
    "CREATE TABLE group_keys ("
    "  group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,"
    "  version INTEGER NOT NULL,"
    "  token_label TEXT NOT NULL UNIQUE,"
    "  cert_pem TEXT NOT NULL,"
    "  state INTEGER NOT NULL,"
    "  created INTEGER NOT NULL,"
    "  retired INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY (group_id, version));"
    "CREATE TABLE secret_keys ("
    "  group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,"
    "  version INTEGER NOT NULL,"
    "  token_label TEXT NOT NULL UNIQUE,"
    "  kek_id BLOB NOT NULL UNIQUE,"
    "  state INTEGER NOT NULL,"
    "  created INTEGER NOT NULL,"
    "  PRIMARY KEY (group_id, version));"
    "CREATE TABLE members ("
    "  group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,"
    "  email TEXT NOT NULL COLLATE NOCASE,"
    "  role INTEGER NOT NULL,"
    "  cert_pem TEXT,"
    "  added INTEGER NOT NULL,"
    "  PRIMARY KEY (group_id, email));",
    /* 1 -> 2: each key's accepted weakenings (what its token could not
     * do, issue 13), each group's key policy (where content keys are
     * re-wrapped, where secret keys live), and secret keys sealed to a
     * token key pair for tokens that cannot keep them. */
    "ALTER TABLE ca ADD COLUMN weakenings TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE groups ADD COLUMN key_policy TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE groups ADD COLUMN reject_seal_label TEXT;"
    "ALTER TABLE groups ADD COLUMN reject_sealed BLOB;"
    "ALTER TABLE group_keys ADD COLUMN weakenings TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE secret_keys ADD COLUMN weakenings TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE secret_keys ADD COLUMN seal_label TEXT;"
    "ALTER TABLE secret_keys ADD COLUMN sealed BLOB;"
    "CREATE TABLE seal_keys ("
    "  label TEXT PRIMARY KEY,"
    "  weakenings TEXT NOT NULL DEFAULT '',"
    "  created INTEGER NOT NULL);",
    /* 2 -> 3: replicable groups and CA (the key ceremony copies their
     * keys to other tokens; issue 17). Parenthesised: one element of two
     * statements, not a missing comma (clang's -Wstring-concatenation). */
    ("ALTER TABLE groups ADD COLUMN replicable INTEGER NOT NULL DEFAULT 0;"
     "ALTER TABLE ca ADD COLUMN replicable INTEGER NOT NULL DEFAULT 0;"),
    /* 3 -> 4 (issue 14): how member-certs copies are wrapped to each
     * member: the group's default, and a member's own choice (NULL = the
     * default); and the weakenings accepted for a group's rejection key,
     * which every RSA group now has unless --oaep-only. */
    ("ALTER TABLE groups ADD COLUMN member_wrap TEXT NOT NULL DEFAULT 'pkcs1v15'"
     "  CHECK (member_wrap IN ('oaep', 'pkcs1v15'));"
     "ALTER TABLE groups ADD COLUMN reject_weakenings TEXT NOT NULL DEFAULT '';"
     "ALTER TABLE members ADD COLUMN wrap TEXT CHECK (wrap IN ('oaep', 'pkcs1v15'));"),
};
_Static_assert(sizeof(migrations) / sizeof(migrations[0]) == GS_STORE_SCHEMA_VERSION,
               "a migration step for each schema version");

/* ---- connection ------------------------------------------------------------ */

/* The database files this process found damaged (SQLite: malformed, or
 * no database), by device and inode: every connection of the process to
 * one refuses writes from then on (sq_write_check), until the process
 * ends. The server's key holder has a connection per worker, and the one
 * that found the damage is not the one a change comes to. A file restored
 * in place (cp onto it) is still refused: which pages the connections
 * kept is not known; the restore is followed by a restart. */
#define DAMAGED_MAX 16
static pthread_mutex_t damaged_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    dev_t dev;
    ino_t ino;
} damaged[DAMAGED_MAX];
static size_t ndamaged; /* under damaged_mu */

static bool damaged_find(dev_t dev, ino_t ino)
{
    for (size_t i = 0; i < ndamaged; i++)
        if (damaged[i].dev == dev && damaged[i].ino == ino)
            return true;
    return false;
}

static void note_damaged(gs_store *st)
{
    if (SQ(st)->ino == 0)
        return;
    pthread_mutex_lock(&damaged_mu);
    if (!damaged_find(SQ(st)->dev, SQ(st)->ino) && ndamaged < DAMAGED_MAX) {
        damaged[ndamaged].dev = SQ(st)->dev;
        damaged[ndamaged].ino = SQ(st)->ino;
        ndamaged++;
    }
    pthread_mutex_unlock(&damaged_mu);
}

static bool known_damaged(gs_store *st)
{
    bool found;

    if (SQ(st)->ino == 0)
        return false;
    pthread_mutex_lock(&damaged_mu);
    found = damaged_find(SQ(st)->dev, SQ(st)->ino);
    pthread_mutex_unlock(&damaged_mu);
    return found;
}

static gs_err db_error(gs_store *st, const char *what)
{
    int code = sqlite3_extended_errcode(SQ(st)->db);
    int sys = sqlite3_system_errno(SQ(st)->db);
    if ((code & 0xff) == SQLITE_CONSTRAINT)
        return gs_err_set(GS_ERR_EXISTS, "%s: %s", what, sqlite3_errmsg(SQ(st)->db));
    /* another process held the write lock past the busy timeout */
    if ((code & 0xff) == SQLITE_BUSY || (code & 0xff) == SQLITE_LOCKED)
        return gs_err_set_db(GS_ERR_DB, GS_DB_CAUSE_LOCKED, "%s: %s", what, sqlite3_errmsg(SQ(st)->db));
    /* The file truncated or written over under the connection: no retry
     * mends it, the /healthz check says so (khops.c) */
    if ((code & 0xff) == SQLITE_CORRUPT || (code & 0xff) == SQLITE_NOTADB) {
        note_damaged(st);
        return gs_err_set_db(GS_ERR_DB, GS_DB_CAUSE_DAMAGED, "%s: %s", what, sqlite3_errmsg(SQ(st)->db));
    }
    /* a WAL database's -shm file could not be made (util_dir_unwritable) */
    if ((code & 0xff) == SQLITE_CANTOPEN && (sys = util_dir_unwritable(sqlite3_db_filename(SQ(st)->db, "main"))) != 0)
        return gs_err_set(GS_ERR_DB, "%s: %s (the database's directory cannot be written: %s)", what,
                          sqlite3_errmsg(SQ(st)->db), strerror(sys));
    /* "disk I/O error" alone does not tell a full disk (no room for the
     * -shm file a WAL database needs even to be read) from a failing one */
    if ((code & 0xff) == SQLITE_IOERR && sys != 0)
        return gs_err_set(GS_ERR_DB, "%s: %s (%s)", what, sqlite3_errmsg(SQ(st)->db), strerror(sys));
    return gs_err_set(GS_ERR_DB, "%s: %s", what, sqlite3_errmsg(SQ(st)->db));
}

static gs_err exec(gs_store *st, const char *sql)
{
    if (sqlite3_exec(SQ(st)->db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return db_error(st, "sqlite");
    return GS_OK;
}

static gs_err prepare(gs_store *st, const char *sql, sqlite3_stmt **stmt)
{
    if (sqlite3_prepare_v2(SQ(st)->db, sql, -1, stmt, NULL) != SQLITE_OK) {
        *stmt = NULL;
        return db_error(st, "prepare");
    }
    return GS_OK;
}

/* A cached statement for a hot query; give it back with hot_done. */
static gs_err prepare_hot(gs_store *st, enum hot_stmt which, const char *sql, sqlite3_stmt **stmt)
{
    if (SQ(st)->hot[which] == NULL &&
        sqlite3_prepare_v3(SQ(st)->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &SQ(st)->hot[which], NULL) != SQLITE_OK) {
        SQ(st)->hot[which] = NULL;
        *stmt = NULL;
        return db_error(st, "prepare");
    }
    *stmt = SQ(st)->hot[which];
    return GS_OK;
}

/* Resets a cached statement at once: a statement left mid-step would keep
 * its read transaction (and an old snapshot of the database) open. */
static void hot_done(sqlite3_stmt *stmt)
{
    if (stmt != NULL) {
        sqlite3_reset(stmt);
        sqlite3_clear_bindings(stmt);
    }
}

static gs_err read_user_version(gs_store *st, int *v)
{
    sqlite3_stmt *s = NULL;
    gs_err err = prepare(st, "PRAGMA user_version", &s);
    if (err)
        return err;
    if (sqlite3_step(s) != SQLITE_ROW) {
        err = db_error(st, "user_version");
    } else {
        *v = sqlite3_column_int(s, 0);
    }
    sqlite3_finalize(s);
    return err;
}

static gs_err migrate(gs_store *st, int *found)
{
    gs_err err;
    int v = 0;
    char sql[64];

    /* IMMEDIATE: two processes creating or migrating the same database
     * serialise here; the version is read again under the lock. */
    err = exec(st, "BEGIN IMMEDIATE");
    if (err)
        return err;
    err = read_user_version(st, &v);
    if (err)
        goto out;
    *found = v;
    if (v > (int)GS_ARRAY_LEN(migrations)) {
        err = GS_ERR_SCHEMA; /* gs_store_settle_schema says it */
        goto out;
    }
    for (; v < (int)GS_ARRAY_LEN(migrations); v++) {
        err = exec(st, migrations[v]);
        if (err)
            goto out;
        (void)snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", v + 1);
        err = exec(st, sql);
        if (err)
            goto out;
        log_info("database migrated version=%d", v + 1);
    }
    err = exec(st, "COMMIT");
out:
    if (err)
        (void)sqlite3_exec(SQ(st)->db, "ROLLBACK", NULL, NULL, NULL);
    else
        st->schema = v;
    return err;
}

static const struct gs_store_ops sq_ops;
static void sq_close(gs_store *st);
static bool index_is_own_wal(gs_store *st);

/* Whether the database file is in WAL mode: bytes 18 and 19 of its header
 * (the file format's write and read versions) are 2 then. A file not so
 * (a copy in rollback-journal mode) makes a -journal in its directory for
 * every write, and its switch to WAL at serve's start does. Read through
 * SQLite's own descriptor: an open and close(2) of the file here would drop
 * the SHARED lock SQLite holds on a WAL database for the connection's life
 * (POSIX locks are the process's), and another process's last close would
 * then checkpoint and delete the -wal this one goes on writing into. A
 * file shorter than the header (made, not yet written) is not WAL. */
static bool sq_file_is_wal(sqlite3 *db)
{
    unsigned char v[2];
    sqlite3_file *f = NULL;

    if (sqlite3_file_control(db, "main", SQLITE_FCNTL_FILE_POINTER, &f) != SQLITE_OK || f == NULL ||
        f->pMethods == NULL)
        return false;
    return f->pMethods->xRead(f, v, (int)sizeof(v), 18) == SQLITE_OK && v[0] == 2 && v[1] == 2;
}

/* What keeps this user from writing the SQLite database at path, into why
 * (naming the file), and its errno; 0 when nothing does. Not only the file:
 * the -wal and -shm beside it (copied back with the file by root's cp,
 * they are root's: SQLite then opens the database read-only without a
 * word) and, when either is missing or the file is not in WAL mode yet,
 * its directory, where SQLite creates them (a directory root made is a
 * database every write to fails, or one that does not open at all). With
 * both there and writable, in WAL mode, SQLite creates nothing in the
 * directory (no rollback journal; the -wal it cannot delete at close
 * stays, as it is then), so a directory the service user may not write
 * is a working database. path is the name
 * SQLite resolved (sqlite3_db_filename: symbolic links followed), as the
 * -wal and -shm are beside the file a link points to; db is its
 * connection, open. AT_EACCESS: the effective user is the one SQLite
 * writes as. */
static int sq_write_problem(sqlite3 *db, const char *path, char *why, size_t size)
{
    char dir[4096], side[4096 + 8];
    struct stat sb;
    bool missing = false;
    int e;

    if (faccessat(AT_FDCWD, path, W_OK, AT_EACCESS) != 0) {
        e = errno;
        (void)snprintf(why, size, "%s: %s", path, strerror(e));
        return e;
    }
    for (int i = 0; i < 2; i++) {
        int n = snprintf(side, sizeof(side), "%s%s", path, i == 0 ? "-wal" : "-shm");
        if (n < 0 || (size_t)n >= sizeof(side))
            continue;
        if (lstat(side, &sb) != 0) {
            missing = true;
            continue;
        }
        if (faccessat(AT_FDCWD, side, W_OK, AT_EACCESS) != 0) {
            e = errno;
            (void)snprintf(why, size, "%s, left by another user: %s", side, strerror(e));
            return e;
        }
    }
    if (!missing && sq_file_is_wal(db))
        return 0;
    if (util_strlcpy(dir, path, sizeof(dir)) != UTIL_OK)
        return 0; /* sqlite3_open_v2 names a path that long itself */
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        (void)util_strlcpy(dir, ".", sizeof(dir));
    else
        slash[slash == dir ? 1 : 0] = '\0';
    if (faccessat(AT_FDCWD, dir, W_OK | X_OK, AT_EACCESS) != 0) {
        e = errno;
        (void)snprintf(why, size, "its directory %s, where SQLite creates the -wal and -shm files: %s", dir,
                       strerror(e));
        return e;
    }
    return 0;
}

/* The one wording for a database this user cannot write (serve's start
 * refusal, check's row, the open that fails for it); short enough that
 * gs_err's 512 bytes keep also, what SQLite said, with /var/lib paths. */
static gs_err sq_write_error(const char *path, const char *why, const char *also)
{
    return gs_err_set(
        GS_ERR_DB,
        "database %s cannot be written by this user (uid %u): %s: no membership change could be "
        "recorded (the file, its directory and any -wal and -shm beside it must be the service "
        "user's: restored as another user? chown them)%s%s",
        path, (unsigned)geteuid(), why, also[0] ? "; " : "", also);
}

/* The -wal and -shm this connection opened (a WAL database opens both at
 * the first read and keeps them until it closes): sq_check_location
 * compares the files at their paths with them. Not there yet (a
 * connection that has not read yet): noted at the next check. The -shm's
 * name is the database's with "-shm" (SQLite's unix VFS; SQLite has no
 * call that gives it). */
/* path + "-shm" into buf: 0, or -1 when it does not fit. */
static int shm_path(const char *path, char *buf, size_t len)
{
    int n = snprintf(buf, len, "%s-shm", path);
    return n > 0 && (size_t)n < len ? 0 : -1;
}

static void note_wal(gs_store *st)
{
    const char *path = sqlite3_db_filename(SQ(st)->db, "main");
    const char *wal = path != NULL && *path != '\0' ? sqlite3_filename_wal(path) : NULL;
    char shm[PATH_MAX + 8];
    struct stat sb, sh;

    if (wal != NULL && *wal != '\0' && shm_path(path, shm, sizeof(shm)) == 0 && stat(wal, &sb) == 0 &&
        S_ISREG(sb.st_mode) && stat(shm, &sh) == 0 && S_ISREG(sh.st_mode)) {
        SQ(st)->wal_dev = sb.st_dev;
        SQ(st)->wal_ino = sb.st_ino;
        SQ(st)->shm_dev = sh.st_dev;
        SQ(st)->shm_ino = sh.st_ino;
    }
}

/* pid into the distinct pids[*n] (at most cap): false when it is not
 * there and they are full. */
static bool note_pid(long *pids, size_t *n, size_t cap, long pid)
{
    for (size_t i = 0; i < *n; i++)
        if (pids[i] == pid)
            return true;
    if (*n == cap)
        return false;
    pids[(*n)++] = pid;
    return true;
}

/* One look at /proc/locks: the pid of a process other than this one that
 * holds a POSIX lock on the database file (db) and none on the -shm at its
 * path (shm); 0 when there is none or it cannot be told. Each file's
 * holders are kept as distinct pids: a process holds several locks on the
 * -shm (its own, read marks, the write lock), and more than MAX_PIDS
 * holders is "cannot be told", not a holder whose -shm lock was past the
 * ones looked at. */
static long lock_holder_without_shm(const struct stat *db, const struct stat *shm)
{
    enum { MAX_PIDS = 64 }; /* distinct lock holders looked at, each file */
    long on_db[MAX_PIDS], on_shm[MAX_PIDS];
    size_t ndb = 0, nshm = 0;
    char line[256], kind[16];
    long pid, found = 0;
    unsigned maj, mnr;
    unsigned long ino;
    bool all = true;
    FILE *f = fopen("/proc/locks", "re");

    if (f == NULL)
        return 0;
    while (all && fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "%*d: %15s %*s %*s %ld %x:%x:%lu", kind, &pid, &maj, &mnr, &ino) != 5 ||
            strcmp(kind, "POSIX") != 0 || pid == (long)getpid())
            continue; /* "->": a lock waited for, not held */
        if (ino == (unsigned long)db->st_ino && maj == major(db->st_dev) && mnr == minor(db->st_dev))
            all = note_pid(on_db, &ndb, MAX_PIDS, pid);
        else if (ino == (unsigned long)shm->st_ino && maj == major(shm->st_dev) && mnr == minor(shm->st_dev))
            all = note_pid(on_shm, &nshm, MAX_PIDS, pid);
    }
    fclose(f);
    if (!all)
        return 0;
    for (size_t i = 0; i < ndb && found == 0; i++) {
        found = on_db[i];
        for (size_t j = 0; j < nshm; j++)
            if (on_shm[j] == on_db[i])
                found = 0;
    }
    return found;
}

/* A process with the database open in WAL mode holds SQLite's SHARED lock
 * on the file for the connection's life, and a read lock on the -shm it
 * shares. One that holds the first and none on the -shm now at the path
 * has a -shm that was deleted (rm groupsrv.db-*, a running server): this
 * connection made a new one, found nobody else in it and rebuilt the
 * index from a new, empty -wal. It reads the database file without that
 * process's changes since its last checkpoint, and a write here starts a
 * second history beside that process's, which it does not see (it goes
 * on serving a member removed here) and whose stop keeps one of the two.
 * Linux's /proc/locks says who holds what; the pid of such a process, or
 * 0 (none, or it cannot be told: a file system that shows other device
 * numbers there). Three looks 20 ms apart: a process that is opening the
 * database holds the first lock a moment before the second. */
static long other_without_shm(const char *path)
{
    char shm[PATH_MAX + 8];
    struct stat db, sh;
    long pid = 0;

    if (shm_path(path, shm, sizeof(shm)) != 0)
        return 0;
    for (int look = 0; look < 3; look++) {
        if (look > 0) {
            struct timespec ts = {0, 20 * 1000 * 1000};
            (void)nanosleep(&ts, NULL);
        }
        if (stat(path, &db) != 0 || stat(shm, &sh) != 0 || (pid = lock_holder_without_shm(&db, &sh)) == 0)
            return 0;
    }
    return pid;
}

gs_err gs_store_sqlite_open(const char *path, unsigned flags, gs_store **out)
{
    gs_store *st = NULL;
    gs_err err = GS_ERR_NOMEM;
    int oflags;
    int v = 0;
    struct stat sb;

    if (out)
        *out = NULL;
    if (path == NULL || out == NULL)
        return gs_err_set(GS_ERR_ARGS, "no database path");
    if (stat(path, &sb) != 0) {
        if (!(flags & GS_STORE_CREATE))
            return gs_err_set(GS_ERR_NOT_FOUND, "database %s does not exist (run `groupsrv ca init` first)", path);
        /* Create it 0600 ourselves: SQLite would use the umask. */
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 && errno != EEXIST)
            return gs_err_set(GS_ERR_IO, "cannot create database %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
    }
    st = calloc(1, sizeof(struct sq_store));
    if (st == NULL)
        goto out;
    st->ops = &sq_ops;
    SQ(st)->keys_fd = -1;
    st->readonly = (flags & GS_STORE_READONLY) != 0;
    oflags = (st->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, &SQ(st)->db, oflags, NULL) != SQLITE_OK) {
        err = gs_err_set(GS_ERR_DB, "cannot open database %s: %s", path,
                         SQ(st)->db ? sqlite3_errmsg(SQ(st)->db) : "out of memory");
        goto out;
    }
    if (stat(path, &sb) == 0) {
        SQ(st)->dev = sb.st_dev;
        SQ(st)->ino = sb.st_ino;
    }
    sqlite3_extended_result_codes(SQ(st)->db, 1);
    (void)sqlite3_limit(SQ(st)->db, SQLITE_LIMIT_LENGTH, GS_STORE_VALUE_MAX);
    (void)sqlite3_busy_timeout(SQ(st)->db, 5000);
    err = exec(st, "PRAGMA foreign_keys = ON");
    if (err)
        goto out;
    if (!st->readonly) {
        err = exec(st, "PRAGMA journal_mode = WAL");
        if (err)
            goto out;
        err = exec(st, "PRAGMA synchronous = FULL");
        if (err)
            goto out;
    }
    err = read_user_version(st, &v);
    if (err)
        goto out;
    /* A -wal deleted under a server (rm groupsrv.db-*): this connection
     * made a new one at the path, while the index all share describes the
     * log the server goes on writing into the deleted file. A write here
     * started the log over in the new file (once the server had
     * checkpointed): the server then read its pages from its own file at
     * the new frames' places, and its stop kept one of the two: this
     * change (exit 0) or the server's since (201) was lost, or the
     * database corrupted. Refused before anything is written. */
    if (!st->readonly && sq_file_is_wal(SQ(st)->db) && !index_is_own_wal(st)) {
        /* SQLite opens a file it cannot open for writing read-only,
         * without a word, and the index then cannot be told (a file
         * system turned read-only or failing under a running server):
         * that is the reason to give, not a deleted -wal. */
        if (sqlite3_db_readonly(SQ(st)->db, "main") == 1) {
            int fd = open(path, O_RDWR | O_CLOEXEC);
            int e = fd < 0 ? errno : 0;
            if (fd >= 0)
                close(fd);
            err = gs_err_set(GS_ERR_DB, "database %s cannot be written: %s", path,
                             e != 0 ? strerror(e) : "SQLite opened it read-only");
            goto out;
        }
        err = gs_err_set(GS_ERR_DB,
                         "database %s: its write-ahead log is not the one its shared-memory index describes: a "
                         "running server still writes one that was deleted (rm of groupsrv.db-wal?); a change "
                         "here would be lost or corrupt the database: stop the server with SIGTERM, which "
                         "writes its changes into the database, then run this again (docs/operations.md)",
                         path);
        goto out;
    }
    long holder = 0;
    if (!st->readonly && sq_file_is_wal(SQ(st)->db)) {
        const char *real = sqlite3_db_filename(SQ(st)->db, "main");
        holder = other_without_shm(real != NULL && *real != '\0' ? real : path);
    }
    if (holder != 0) {
        err = gs_err_set(GS_ERR_DB,
                         "database %s: process %ld has it open with a shared-memory index that is no longer at "
                         "its path (rm of groupsrv.db-shm?): this one reads the database without that process's "
                         "latest changes, and a change here would be lost or corrupt the database: stop that "
                         "process (a server: SIGTERM), then run this again (docs/operations.md)",
                         path, holder);
        goto out;
    }
    if ((err = gs_store_settle_schema(st, v, migrate, path)) != GS_OK)
        goto out;
    if (!st->readonly)
        note_wal(st);
    *out = st;
    st = NULL;
    err = GS_OK;
out:
    if (err != GS_OK && err != GS_ERR_NOMEM && err != GS_ERR_SCHEMA && st != NULL && SQ(st)->db != NULL) {
        /* "attempt to write a readonly database" at PRAGMA user_version
         * does not say which file: when this user may not write one of
         * them, that is the reason to give (a read-only file system or a
         * full disk db_error names already). */
        char why[4200 + 64], detail[512];
        const char *real = sqlite3_db_filename(SQ(st)->db, "main");
        int e = sq_write_problem(SQ(st)->db, real != NULL && *real != '\0' ? real : path, why, sizeof(why));
        if (e == EACCES || e == EPERM) {
            (void)snprintf(detail, sizeof(detail), "%s", gs_err_detail());
            err = sq_write_error(path, why, detail);
        }
    }
    if (st != NULL)
        sq_close(st);
    return err;
}

/* SQLite opens a file this user may not write read-only, silently, and
 * a server on it then refused every membership change (a removal too)
 * while /healthz said ok: a copy restored by root with cp is such a
 * file. serve refuses it at start, check names it (its own handle is
 * read-only by design, so it asks the file system). */
static gs_err sq_check_grants(gs_store *st, bool audit)
{
    const char *path = sqlite3_db_filename(SQ(st)->db, "main");
    char why[4200 + 64];
    (void)audit;

    if (path == NULL || *path == '\0')
        return GS_OK;
    if (sq_write_problem(SQ(st)->db, path, why, sizeof(why)) != 0)
        return sq_write_error(path, why, "");
    if (!st->readonly && sqlite3_db_readonly(SQ(st)->db, "main") == 1)
        return sq_write_error(path, "SQLite opened it read-only", "");
    return GS_OK;
}

/* What is at the path of the -wal this connection opened. */
typedef enum {
    WAL_OURS,        /* the file it opened: SQLite's own close does the rest */
    WAL_GONE,        /* deleted: its frames are in no file another process reads */
    WAL_NEW_EMPTY,   /* deleted, and another process made an empty one since (it opened the database) */
    WAL_NEW_WRITTEN, /* deleted, and another connection wrote a new one at its path since */
} wal_at_path;

static wal_at_path wal_now(gs_store *st)
{
    const char *path = sqlite3_db_filename(SQ(st)->db, "main");
    const char *wal = path != NULL && *path != '\0' ? sqlite3_filename_wal(path) : NULL;
    struct stat sb;

    if (st->readonly || SQ(st)->wal_ino == 0 || wal == NULL || *wal == '\0')
        return WAL_OURS;
    if (stat(wal, &sb) != 0)
        return WAL_GONE;
    if (sb.st_dev == SQ(st)->wal_dev && sb.st_ino == SQ(st)->wal_ino)
        return WAL_OURS;
    return sb.st_size == 0 ? WAL_NEW_EMPTY : WAL_NEW_WRITTEN;
}

/* The index header as SQLite reads it (copy 1, barrier, copy 2, equal
 * and initialised) into h; false when a writer kept changing it. */
static bool read_index_hdr(sqlite3_file *dbf, void volatile *map, unsigned char h[48])
{
    const volatile unsigned char *m = map;
    unsigned char h2[48];

    for (int tries = 0; tries < 100; tries++) {
        if (tries > 0)
            (void)usleep(1000);
        for (size_t i = 0; i < sizeof(h2); i++)
            h[i] = m[i];
        dbf->pMethods->xShmBarrier(dbf);
        for (size_t i = 0; i < sizeof(h2); i++)
            h2[i] = m[sizeof(h2) + i];
        if (memcmp(h, h2, sizeof(h2)) == 0 && h[12] == 1)
            return true;
    }
    return false;
}

/* Whether the WAL file walf holds every frame index header h lists, of
 * the log h describes (its salts). */
static bool wal_holds_index(sqlite3_file *walf, const unsigned char h[48])
{
    unsigned char wh[32], fh[24];
    uint32_t mx, pgsz;
    uint16_t sz16;

    memcpy(&mx, h + 16, sizeof(mx)); /* the index is in native byte order */
    if (mx == 0)
        return true; /* no frame: a checkpoint copies nothing */
    memcpy(&sz16, h + 14, sizeof(sz16));
    pgsz = (uint32_t)(sz16 & 0xfe00) + ((uint32_t)(sz16 & 1) << 16); /* 65536 is stored as 1 */
    if (pgsz < 512 || (pgsz & (pgsz - 1)) != 0)
        return false;
    if (walf->pMethods->xRead(walf, wh, (int)sizeof(wh), 0) != SQLITE_OK ||
        (((uint32_t)wh[8] << 24) | ((uint32_t)wh[9] << 16) | ((uint32_t)wh[10] << 8) | wh[11]) != pgsz ||
        memcmp(wh + 16, h + 32, 8) != 0)
        return false;
    for (uint32_t i = 1; i <= mx; i++) {
        sqlite3_int64 off = 32 + (sqlite3_int64)(i - 1) * (24 + (sqlite3_int64)pgsz);
        if (walf->pMethods->xRead(walf, fh, (int)sizeof(fh), off) != SQLITE_OK || memcmp(fh + 8, h + 32, 8) != 0)
            return false;
    }
    return true;
}

/* Whether the WAL index this connection shares (the -shm it has mapped)
 * describes the log in the -wal file it has open, deleted or not: only
 * then may it checkpoint, which copies frame i of its own file for each
 * frame i the index lists. Not so once another process started the log
 * over in another file at the path (a -wal deleted a second time after
 * an admin command wrote there: nothing is at the path, as after one
 * deletion), or appended to another file there: the checkpoint copied
 * this file's stale pages, or the zeros of its holes, at the places of
 * that file's frames into the database. A log carries the salts of its
 * start in the WAL header, the index header and every frame's header
 * (SQLite's file format, "WAL File Format"): the index's must be this
 * file's, and every frame the index lists must be in this file with them.
 * Read as SQLite reads the index header: copy 1, barrier, copy 2, equal.
 * False also when it cannot be told. */
static bool index_is_own_wal(gs_store *st)
{
    sqlite3_file *dbf = NULL, *walf = NULL;
    void volatile *map = NULL;
    unsigned char h[48], again[48];

    if (sqlite3_file_control(SQ(st)->db, "main", SQLITE_FCNTL_FILE_POINTER, &dbf) != SQLITE_OK || dbf == NULL ||
        dbf->pMethods == NULL || dbf->pMethods->iVersion < 2 ||
        sqlite3_file_control(SQ(st)->db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &walf) != SQLITE_OK ||
        walf == NULL || walf->pMethods == NULL)
        return false;
    if (dbf->pMethods->xShmMap(dbf, 0, 32768, 0, &map) != SQLITE_OK || map == NULL)
        return false;
    /* A writer starting the log over writes the index header (new salts,
     * no frame) before the file's: a file that differs from an index
     * header that changed meanwhile is looked at again. */
    for (int tries = 0; tries < 100; tries++) {
        if (!read_index_hdr(dbf, map, h))
            return false;
        if (wal_holds_index(walf, h))
            return true;
        if (!read_index_hdr(dbf, map, again) || memcmp(h, again, sizeof(h)) == 0)
            return false;
    }
    return false;
}

/* A -wal deleted under this connection (docs/operations.md: "stop the
 * server with SIGTERM: its close writes those changes into the
 * database"): SQLite's own checkpoint at close is not enough for that
 * promise. It runs only when the close gets the database's EXCLUSIVE
 * lock, which it does not while any other connection has the database
 * open: another process's (an sqlite3 shell, a monitoring script), whose
 * later close checkpoints only the -wal it sees, or another of this
 * process's closing at the same moment. The changes, each answered 201,
 * were then lost when the process exited. A FULL checkpoint needs no
 * such lock, only that no reader is inside a transaction on an older
 * snapshot, which it waits for (the busy timeout).
 *
 * Waited for once per process, not once per connection: the closes are
 * one at a time (close_mu), and the key holder has a connection per
 * token worker (one per CPU, up to 16), so a reader that stayed inside
 * its transaction kept a stop waiting 5 s per worker, past the
 * supervisor's 60 s and systemd's TimeoutStopSec=30, which then killed
 * the key holder (a failed stop). After one close waited in vain, the
 * next ones try at once (the reader may be gone by then); one that gets
 * through waits again next time. Under close_mu. */
static bool ckpt_kept_waiting;

static void checkpoint_orphaned_wal(gs_store *st)
{
    int nlog = -1, ncopied = -1;
    bool waits = !ckpt_kept_waiting;

    if (!waits)
        (void)sqlite3_busy_timeout(SQ(st)->db, 0); /* the connection is closing: nothing else waits on it */
    int rc = sqlite3_wal_checkpoint_v2(SQ(st)->db, "main", SQLITE_CHECKPOINT_FULL, &nlog, &ncopied);

    ckpt_kept_waiting = (rc & 0xff) == SQLITE_BUSY;
    if (rc == SQLITE_OK && ncopied >= nlog) {
        log_info("the deleted write-ahead log's changes were written into the database at close frames=%d", nlog);
        return;
    }
    log_error("the changes in the deleted write-ahead log could not all be written into the database at close: "
              "they are lost when every process that has the database open has closed it err=\"%s\" frames=%d "
              "copied=%d waited=%s",
              log_qs(sqlite3_errmsg(SQ(st)->db)), nlog, ncopied, waits ? "busy_timeout" : "no");
}

/* The -wal deleted and another written at its path since. Mostly the
 * other connection started the log over in the new file, which it may
 * once every frame of the deleted one is in the database (a checkpoint
 * by another of this process's connections, which hold the old file),
 * and the -shm all share now describes the new file's frames. Any
 * checkpoint from this connection, the FULL one above or SQLite's own at
 * the last close, copies the deleted file's pages at the places of the
 * new file's frames into the database: "database disk image is
 * malformed" at the next start, and the other process's changes (an
 * admin command's, exit 0) gone with the -wal that close deletes. So
 * neither is made, and the database and the new -wal stay one consistent
 * history, the other process's; what this connection committed after
 * that restart is lost (it went into the deleted file). A new -wal the
 * other connection appended to instead (it read no page the deleted one
 * has) leaves the deleted one's frames lost either way: a checkpoint
 * would write its stale pages in the place of the new frames. */
static void keep_new_wal(gs_store *st, const char *what)
{
    int off = -1;

    if (sqlite3_db_config(SQ(st)->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, &off) != SQLITE_OK || off != 1) {
        log_error("the database's write-ahead log was deleted and %s, and the close could not be kept from "
                  "writing the deleted one into the database: check it (PRAGMA integrity_check)",
                  what);
        return;
    }
    log_error("the database's write-ahead log was deleted and %s: the deleted one is not written into the "
              "database at close, which would corrupt it; changes made here since the deletion may be lost: "
              "check the members changed since (docs/operations.md)",
              what);
}

/* One close at a time in this process: SQLite's checkpoint at close (it
 * folds the -wal into the database file and deletes it) needs the
 * EXCLUSIVE lock, which a close does not get while another connection of
 * the process is still open. Two closed at once (the key holder's token
 * workers at a stop, each on its own thread) each saw the other's lock
 * and neither checkpointed: the -wal stayed beside a database file that
 * lacked its changes. In turn, the last one sees no other and does. */
static pthread_mutex_t close_mu = PTHREAD_MUTEX_INITIALIZER;

static void sq_close(gs_store *st)
{
    if (SQ(st)->keys_fd >= 0)
        close(SQ(st)->keys_fd);
    for (int i = 0; i < HOT_N; i++)
        sqlite3_finalize(SQ(st)->hot[i]);
    pthread_mutex_lock(&close_mu);
    if (SQ(st)->db != NULL) {
        /* An empty new -wal has no frame: the index still describes only
         * this connection's, all in the deleted file. Another process
         * could write into the new one between this look and the
         * checkpoint; it takes the deleted -wal, and a command at the
         * very moment of the server's stop, to get there. */
        wal_at_path at = wal_now(st);
        if (at == WAL_NEW_WRITTEN)
            keep_new_wal(st, "another process wrote a new one at its path");
        else if ((at == WAL_GONE || at == WAL_NEW_EMPTY) && !index_is_own_wal(st))
            keep_new_wal(st, "the shared index describes another one, which another process wrote since");
        else if (at == WAL_GONE || at == WAL_NEW_EMPTY)
            checkpoint_orphaned_wal(st);
    }
    if (sqlite3_close(SQ(st)->db) != SQLITE_OK) {
        /* A statement left unfinalized keeps the connection open, and
         * with it the checkpoint its close would make: named (a defect
         * here), then finalized, and the connection closed after all. */
        unsigned left = 0;
        sqlite3_stmt *s;
        log_error("the database connection did not close err=\"%s\"", log_qs(sqlite3_errmsg(SQ(st)->db)));
        while ((s = sqlite3_next_stmt(SQ(st)->db, NULL)) != NULL) {
            sqlite3_finalize(s);
            left++;
        }
        int rc = sqlite3_close(SQ(st)->db);
        log_error("statements left open finalized at the database's close statements=%u closed=%s err=\"%s\"", left,
                  rc == SQLITE_OK ? "yes" : "no", log_qs(sqlite3_errstr(rc)));
    }
    pthread_mutex_unlock(&close_mu);
    free(st);
}

/* The keys lock (store.h) is flock(2) on the database's directory: every
 * process that opens the database can open that, whoever made the file,
 * and no file is added. Not the database file: a second descriptor on it,
 * closed, would drop SQLite's own POSIX locks in this process. flock is
 * per open file, so threads of one process exclude each other too. */
static gs_err sq_keys_lock_try(gs_store *st, bool *got)
{
    const char *path = sqlite3_db_filename(SQ(st)->db, "main");
    char dir[4096];
    int fd;

    *got = false;
    if (path == NULL || *path == '\0') { /* in memory: no other connection sees it */
        *got = true;
        return GS_OK;
    }
    if (util_strlcpy(dir, path, sizeof(dir)) != UTIL_OK)
        return gs_err_set(GS_ERR_DB, "the keys lock: database path longer than %zu bytes", sizeof(dir) - 1);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        (void)util_strlcpy(dir, ".", sizeof(dir));
    else
        slash[slash == dir ? 1 : 0] = '\0';
    if ((fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        return gs_err_set(GS_ERR_IO, "the keys lock: cannot open %s: %s", dir, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(fd);
        if (e == EWOULDBLOCK || e == EINTR)
            return GS_OK;
        return gs_err_set(GS_ERR_IO, "the keys lock: flock %s: %s", dir, strerror(e));
    }
    SQ(st)->keys_fd = fd;
    *got = true;
    return GS_OK;
}

/* Closing the descriptor drops the flock. */
static void sq_keys_unlock(gs_store *st)
{
    if (SQ(st)->keys_fd >= 0)
        close(SQ(st)->keys_fd);
    SQ(st)->keys_fd = -1;
}

/* Whether the database's -wal or -shm (what) is still the file this
 * connection opened (dev, ino) at p; why says what its loss costs. */
static gs_err sq_same_companion(const char *p, dev_t dev, ino_t ino, const char *what, const char *why)
{
    struct stat sb;

    if (stat(p, &sb) != 0)
        return gs_err_set_db(GS_ERR_DB, GS_DB_CAUSE_MOVED, "the database's %s open here is no longer at %s (%s): %s",
                             what, p,
                          strerror(errno), why);
    if (sb.st_dev != dev || sb.st_ino != ino)
        return gs_err_set_db(GS_ERR_DB, GS_DB_CAUSE_MOVED, "%s is another file than the %s open here (replaced)", p,
                             what);
    return GS_OK;
}

/* The file at its path, truncated or written over in place (a restore
 * by `cp` or `truncate` onto the open file, a disk that lost writes):
 * the same file, so the checks above pass, and PRAGMA data_version reads
 * no page, while every request that read a lost page answered 503
 * store_unavailable ("database disk image is malformed") and /healthz
 * said ok. So the check reads where a key request reads: the schema, and
 * the first row of the groups, their keys and the members, root page
 * down (a few pages: anyone may probe /healthz, as often as they like);
 * a lost page elsewhere is found by the request that reads it
 * (khops.c's note_db_damaged). GS_ERR_DB with GS_DB_CAUSE_DAMAGED when
 * SQLite finds the file malformed. */
static gs_err sq_read_check(gs_store *st)
{
    sqlite3_stmt *s = NULL;
    gs_err err;

    if ((err = prepare_hot(st, HOT_HEALTH_READ,
                           "SELECT EXISTS (SELECT 1 FROM groups), EXISTS (SELECT 1 FROM group_keys), "
                           "EXISTS (SELECT 1 FROM members)",
                           &s)) != GS_OK)
        return err;
    if (sqlite3_step(s) != SQLITE_ROW)
        err = db_error(st, "read check");
    hot_done(s);
    return err;
}

/* A database file moved, deleted or replaced (a restore by mv) under an
 * open connection goes on being read and written by it, unseen by every
 * other process that opens the path. So does its -wal: SQLite keeps the
 * one it opened until the connection closes (nobody else deletes it while
 * this connection holds its share of the -shm), and a -wal deleted under
 * it (an operator "cleaning up", `rm groupsrv.db-*`) took every change
 * committed since into a file no other process reads and a crash loses:
 * changes answered 201 vanished at the next start. */
static gs_err sq_check_files(gs_store *st)
{
    const char *path = sqlite3_db_filename(SQ(st)->db, "main");
    struct stat sb;
    gs_err err;

    if (SQ(st)->ino == 0 || path == NULL || *path == '\0')
        return GS_OK;
    if (stat(path, &sb) != 0)
        return gs_err_set_db(GS_ERR_DB, GS_DB_CAUSE_MOVED, "the database file open here is no longer at %s (%s)", path,
                          strerror(errno));
    if (sb.st_dev != SQ(st)->dev || sb.st_ino != SQ(st)->ino)
        return gs_err_set_db(GS_ERR_DB, GS_DB_CAUSE_MOVED, "%s is another file than the database open here (replaced)",
                             path);
    if (st->readonly)
        return GS_OK;
    if (SQ(st)->wal_ino == 0) {
        note_wal(st);
        return GS_OK;
    }
    const char *wal = sqlite3_filename_wal(path);
    if (wal == NULL || *wal == '\0')
        return GS_OK;
    if ((err = sq_same_companion(wal, SQ(st)->wal_dev, SQ(st)->wal_ino, "write-ahead log",
                                 "changes since are only in this process until it stops")) != GS_OK)
        return err;
    /* The -shm alone deleted (a clean-up of "shared memory" files): the
     * next process to open the database makes a new one and, seeing no
     * other user in it, writes the -wal as if alone; this connection's
     * next commit overwrites what that process committed. `member add`
     * exited 0 and its member was gone, 200 here throughout. */
    char shm[PATH_MAX + 8];
    if (shm_path(path, shm, sizeof(shm)) != 0)
        return GS_OK; /* not reached: note_wal noted nothing then */
    return sq_same_companion(shm, SQ(st)->shm_dev, SQ(st)->shm_ino, "shared-memory index",
                             "another process would write the write-ahead log over this one's changes");
}

/* For /healthz: the files at their paths, then their pages readable. */
static gs_err sq_check_location(gs_store *st)
{
    gs_err err = sq_check_files(st);

    return err != GS_OK ? err : sq_read_check(st);
}

static gs_err sq_change_stamp(gs_store *st, uint64_t *stamp)
{
    sqlite3_stmt *s = NULL;
    gs_err err;

    /* data_version only moves for other connections' commits; this
     * connection's own writes show in its total change count. */
    if ((err = prepare_hot(st, HOT_DATA_VERSION, "PRAGMA data_version", &s)) != GS_OK)
        return err;
    if (sqlite3_step(s) != SQLITE_ROW) {
        err = db_error(st, "data_version");
    } else {
        *stamp = ((uint64_t)sqlite3_column_int64(s, 0) << 32) ^ (uint64_t)sqlite3_total_changes64(SQ(st)->db);
    }
    hot_done(s);
    return err;
}

/* A deferred BEGIN: the read transaction starts at the first read and
 * holds its snapshot (one WAL read lock, one size check) until read_end. */
static gs_err sq_read_begin(gs_store *st)
{
    sqlite3_stmt *s = NULL;
    gs_err err;

    if ((err = prepare_hot(st, HOT_READ_BEGIN, "BEGIN", &s)) != GS_OK)
        return err;
    if (sqlite3_step(s) != SQLITE_DONE)
        err = db_error(st, "begin");
    hot_done(s);
    return err;
}

static void sq_read_end(gs_store *st)
{
    sqlite3_stmt *s = NULL;

    if (prepare_hot(st, HOT_READ_END, "COMMIT", &s) == GS_OK) {
        (void)sqlite3_step(s);
        hot_done(s);
    }
    /* A failed statement may have ended it already; never leave one open. */
    if (!sqlite3_get_autocommit(SQ(st)->db))
        (void)sqlite3_exec(SQ(st)->db, "ROLLBACK", NULL, NULL, NULL);
}

/* The refusal of a write into a damaged file: why, and what to do. */
static gs_err refuse_damaged(gs_store *st, const char *why)
{
    const char *path = sqlite3_db_filename(SQ(st)->db, "main");
    char q[320];

    return gs_err_set_db(GS_ERR_DB, GS_DB_CAUSE_DAMAGED,
                         "database %s is damaged (%s): changes are refused until it is restored from a backup "
                         "(stop the server, PRAGMA integrity_check, docs/operations.md); nothing was changed",
                         path != NULL && *path != '\0' ? path : "(in memory)", log_quote(q, sizeof(q), why));
}

/* PRAGMA quick_check: GS_OK when it says ok; a file it finds damaged (or
 * cannot read for being malformed) is noted as damaged (note_damaged) and
 * refused with GS_DB_CAUSE_DAMAGED naming what it found; another error
 * (a lock, I/O) is db_error's. Reads every page once (about a second per
 * few hundred MB). */
static gs_err quick_check(gs_store *st)
{
    sqlite3_stmt *s = NULL;
    gs_err err;
    char why[256] = "";

    if ((err = prepare(st, "PRAGMA quick_check(1)", &s)) == GS_OK) {
        if (sqlite3_step(s) != SQLITE_ROW) {
            err = db_error(st, "quick_check");
        } else {
            const char *res = (const char *)sqlite3_column_text(s, 0);
            if (res == NULL || strcmp(res, "ok") != 0)
                (void)snprintf(why, sizeof(why), "PRAGMA quick_check: %s", res != NULL ? res : "no answer");
        }
    }
    /* A page the check could not read at all is damage too. */
    if (err == GS_ERR_DB && gs_err_db_cause() == GS_DB_CAUSE_DAMAGED)
        (void)snprintf(why, sizeof(why), "%s", gs_err_detail());
    if (why[0] != '\0') {
        note_damaged(st);
        err = refuse_damaged(st, why);
    }
    sqlite3_finalize(s);
    return err;
}

/* Before a write: a file this process found damaged is refused, and so is
 * one PRAGMA quick_check finds damaged before this connection's first
 * write (an admin command's, a server worker's). SQLite commits a change
 * whose pages read well into a file with a lost page elsewhere: exit 0 or
 * 201, and the change lost when the operator restores the file from a
 * backup, or a b-tree damaged further by writing into it. The check runs
 * once per connection; later damage is found by the read that meets it
 * (db_error). */
static gs_err sq_write_check(gs_store *st)
{
    gs_err err;

    if (known_damaged(st))
        return refuse_damaged(st, "found malformed by this process");
    if (SQ(st)->write_checked)
        return GS_OK;
    if ((err = quick_check(st)) == GS_OK)
        SQ(st)->write_checked = true;
    return err;
}

static gs_err sq_begin(gs_store *st) { return exec(st, "BEGIN IMMEDIATE"); }

static gs_err sq_commit(gs_store *st) { return exec(st, "COMMIT"); }

static void sq_rollback(gs_store *st) { (void)sqlite3_exec(SQ(st)->db, "ROLLBACK", NULL, NULL, NULL); }

/* ---- small helpers ------------------------------------------------------ */

/* A BLOB column copied (NULL stays NULL); false when out of memory. */
static bool col_blobdup(sqlite3_stmt *s, int i, unsigned char **out, size_t *len)
{
    const void *b = sqlite3_column_blob(s, i);
    int n = sqlite3_column_bytes(s, i);

    *out = NULL;
    *len = 0;
    if (b == NULL || n <= 0)
        return true;
    if ((*out = malloc((size_t)n)) == NULL)
        return false;
    memcpy(*out, b, (size_t)n);
    *len = (size_t)n;
    return true;
}

static char *col_strdup(sqlite3_stmt *s, int i, bool *oom)
{
    const unsigned char *t = sqlite3_column_text(s, i);
    char *r;
    if (t == NULL)
        return NULL;
    r = strdup((const char *)t);
    if (r == NULL)
        *oom = true;
    return r;
}

/* Every bind is checked: a failed bind (SQLITE_TOOBIG over
 * GS_STORE_VALUE_MAX, SQLITE_NOMEM, SQLITE_RANGE) leaves the parameter
 * NULL, and a nullable column (a member's certificate) would store that
 * silently. */
static gs_err bind_check(int rc, int i)
{
    if (rc == SQLITE_OK)
        return GS_OK;
    if (rc == SQLITE_TOOBIG)
        return gs_err_set(GS_ERR_ARGS, "value too long for the database (parameter %d, at most %d bytes)", i,
                          GS_STORE_VALUE_MAX);
    if (rc == SQLITE_NOMEM)
        return gs_err_set(GS_ERR_NOMEM, "out of memory binding parameter %d", i);
    return gs_err_set(GS_ERR_DB, "binding parameter %d: %s", i, sqlite3_errstr(rc));
}

/* NULL binds SQL NULL. */
static gs_err bind_text(sqlite3_stmt *s, int i, const char *v)
{
    return bind_check(v ? sqlite3_bind_text(s, i, v, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(s, i), i);
}

static gs_err bind_int(sqlite3_stmt *s, int i, int64_t v)
{
    return bind_check(sqlite3_bind_int64(s, i, (sqlite3_int64)v), i);
}

static gs_err bind_blob(sqlite3_stmt *s, int i, const void *v, size_t len)
{
    if (len > (size_t)GS_STORE_VALUE_MAX)
        return bind_check(SQLITE_TOOBIG, i);
    return bind_check(sqlite3_bind_blob(s, i, v, (int)len, SQLITE_TRANSIENT), i);
}


/* Steps a statement that returns no rows; counts changed rows. */
static gs_err step_done(gs_store *st, sqlite3_stmt *s, const char *what, int *changes)
{
    int rc = sqlite3_step(s);
    if (rc != SQLITE_DONE)
        return db_error(st, what);
    if (changes)
        *changes = sqlite3_changes(SQ(st)->db);
    return GS_OK;
}

/* ---- CA ---------------------------------------------------------------- */

static gs_err sq_ca_get(gs_store *st, gs_store_ca **out)
{
    sqlite3_stmt *s = NULL;
    gs_store_ca *ca = NULL;
    bool oom = false;
    gs_err err;
    int rc;

    *out = NULL;
    err = prepare(st, "SELECT key_label, cert_pem, created, weakenings, replicable FROM ca WHERE id = 1", &s);
    if (err)
        return err;
    rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
        err = gs_err_set(GS_ERR_NOT_FOUND, "no CA (run `groupsrv ca init`)");
        goto out;
    }
    if (rc != SQLITE_ROW) {
        err = db_error(st, "read ca");
        goto out;
    }
    ca = calloc(1, sizeof(*ca));
    if (ca == NULL) {
        err = GS_ERR_NOMEM;
        goto out;
    }
    ca->label = col_strdup(s, 0, &oom);
    ca->cert_pem = col_strdup(s, 1, &oom);
    ca->created = sqlite3_column_int64(s, 2);
    ca->weakenings = col_strdup(s, 3, &oom);
    ca->replicable = sqlite3_column_int(s, 4) != 0;
    if (oom || ca->label == NULL || ca->cert_pem == NULL || ca->weakenings == NULL) {
        err = GS_ERR_NOMEM;
        goto out;
    }
    *out = ca;
    ca = NULL;
out:
    gs_store_ca_free(ca);
    sqlite3_finalize(s);
    return err;
}

static gs_err sq_ca_put(gs_store *st, const char *key_label, const char *cert_pem, bool replicable,
                        const gs_store_keyrec *rec)
{
    sqlite3_stmt *s = NULL;
    gs_err err;
    err = prepare(st,
                  "INSERT INTO ca (id, key_label, cert_pem, created, weakenings, replicable) VALUES (1, ?, ?, ?, ?, ?)",
                  &s);
    if (err)
        return err;
    if ((err = bind_text(s, 1, key_label)) || (err = bind_text(s, 2, cert_pem)) ||
        (err = bind_int(s, 3, gs_store_now())) || (err = bind_text(s, 4, gs_store_rec_weak(rec))) ||
        (err = bind_int(s, 5, replicable ? 1 : 0)))
        goto out;
    err = step_done(st, s, "store ca", NULL);
    if (err == GS_ERR_EXISTS)
        err = gs_err_set(GS_ERR_EXISTS, "a CA is already initialised in this database");
out:
    sqlite3_finalize(s);
    return err;
}

static gs_err sq_ca_set_cert(gs_store *st, const char *cert_pem)
{
    sqlite3_stmt *s = NULL;
    int changes = 0;
    gs_err err = prepare(st, "UPDATE ca SET cert_pem = ? WHERE id = 1", &s);
    if (err)
        return err;
    if ((err = bind_text(s, 1, cert_pem)) == GS_OK)
        err = step_done(st, s, "store ca certificate", &changes);
    if (err == GS_OK && changes == 0)
        err = gs_err_set(GS_ERR_NOT_FOUND, "no CA (run `groupsrv ca init`)");
    sqlite3_finalize(s);
    return err;
}

/* ---- groups --------------------------------------------------------------- */

static gs_err sq_group_add(gs_store *st, const gs_store_group *g, int64_t *id)
{
    sqlite3_stmt *s = NULL;
    gs_err err;
    err = prepare(st,
                  "INSERT INTO groups (name, address, methods, key_spec, allow_pkcs1v15, reject_label, created, "
                  "key_policy, reject_seal_label, reject_sealed, replicable, member_wrap, reject_weakenings) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  &s);
    if (err)
        return err;
    if ((err = bind_text(s, 1, g->name)) || (err = bind_text(s, 2, g->address)) ||
        (err = bind_int(s, 3, g->methods)) || (err = bind_text(s, 4, g->algorithm)) ||
        (err = bind_int(s, 5, g->allow_pkcs1v15 ? 1 : 0)) || (err = bind_text(s, 6, g->reject_label)) ||
        (err = bind_int(s, 7, gs_store_now())) || (err = bind_text(s, 8, g->policy ? g->policy : "")) ||
        (err = bind_text(s, 9, g->reject_seal_label)) ||
        (err = g->reject_sealed ? bind_blob(s, 10, g->reject_sealed, g->reject_sealed_len)
                                : bind_check(sqlite3_bind_null(s, 10), 10)) ||
        (err = bind_int(s, 11, g->replicable ? 1 : 0)) ||
        (err = bind_text(s, 12, gs_wrap_name(gs_store_group_wrap(g->member_wrap)))) ||
        (err = bind_text(s, 13, g->reject_weakenings ? g->reject_weakenings : "")))
        goto out;
    err = step_done(st, s, "add group", NULL);
    if (err == GS_ERR_EXISTS)
        err = gs_err_set(GS_ERR_EXISTS, "group %s already exists", g->name);
    else if (err == GS_OK && id)
        *id = sqlite3_last_insert_rowid(SQ(st)->db);
out:
    sqlite3_finalize(s);
    return err;
}

#define GROUP_COLS                                                                                             \
    "id, name, address, methods, key_spec, allow_pkcs1v15, reject_label, created, key_policy, reject_seal_label, " \
    "reject_sealed, replicable, member_wrap, reject_weakenings"

static gs_err group_from_row(sqlite3_stmt *s, gs_store_group **out)
{
    bool oom = false;
    gs_store_group *g = calloc(1, sizeof(*g));
    *out = NULL;
    if (g == NULL)
        return GS_ERR_NOMEM;
    g->id = sqlite3_column_int64(s, 0);
    g->name = col_strdup(s, 1, &oom);
    g->address = col_strdup(s, 2, &oom);
    g->methods = (unsigned)sqlite3_column_int64(s, 3);
    g->algorithm = col_strdup(s, 4, &oom);
    g->allow_pkcs1v15 = sqlite3_column_int(s, 5) != 0;
    g->reject_label = col_strdup(s, 6, &oom);
    g->created = sqlite3_column_int64(s, 7);
    g->policy = col_strdup(s, 8, &oom);
    g->reject_seal_label = col_strdup(s, 9, &oom);
    if (!col_blobdup(s, 10, &g->reject_sealed, &g->reject_sealed_len))
        oom = true;
    g->replicable = sqlite3_column_int(s, 11) != 0;
    g->member_wrap = gs_store_group_wrap(gs_store_wrap_from_text((const char *)sqlite3_column_text(s, 12)));
    g->reject_weakenings = col_strdup(s, 13, &oom);
    if (oom || g->name == NULL || g->address == NULL || g->algorithm == NULL || g->policy == NULL ||
        g->reject_weakenings == NULL) {
        gs_store_group_free(g);
        return GS_ERR_NOMEM;
    }
    *out = g;
    return GS_OK;
}

static gs_err sq_group_get(gs_store *st, const char *name, gs_store_group **out)
{
    sqlite3_stmt *s = NULL;
    gs_err err;
    int rc;
    char q[80];

    err = prepare(st, "SELECT " GROUP_COLS " FROM groups WHERE name = ?", &s);
    if (err)
        return err;
    err = bind_text(s, 1, name);
    if (err)
        goto out;
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        err = group_from_row(s, out);
    else if (rc == SQLITE_DONE)
        err = gs_err_set(GS_ERR_NOT_FOUND, "unknown group %s", log_quote(q, sizeof(q), name));
    else
        err = db_error(st, "read group");
out:
    sqlite3_finalize(s);
    return err;
}

/* Per-group list queries: SQL with one parameter (the group id), one
 * array element per row, read by `row` into a zeroed element. On failure
 * `release` frees the elements read so far and the array. */
typedef gs_err (*row_reader)(sqlite3_stmt *s, void *elem);
typedef void (*rows_release)(void *list, size_t n);

static gs_err read_group_rows(gs_store *st, const char *sql, int64_t group_id, size_t elem, size_t first,
                              row_reader row, rows_release release, const char *what, void **out, size_t *n)
{
    sqlite3_stmt *s = NULL;
    unsigned char *list = NULL;
    size_t count = 0, cap = 0;
    gs_err err;
    int rc;

    *out = NULL;
    *n = 0;
    if ((err = prepare(st, sql, &s)) != GS_OK)
        return err;
    if ((err = bind_int(s, 1, group_id)) != GS_OK)
        goto out;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (count == cap) {
            unsigned char *nl = gs_store_grow_array(list, &cap, elem, first);
            if (nl == NULL) {
                err = GS_ERR_NOMEM;
                goto out;
            }
            list = nl;
        }
        void *e = list + count++ * elem;
        memset(e, 0, elem);
        if ((err = row(s, e)) != GS_OK)
            goto out;
    }
    if (rc != SQLITE_DONE) {
        err = db_error(st, what);
        goto out;
    }
    *out = list;
    *n = count;
    list = NULL;
    count = 0;
out:
    release(list, count);
    sqlite3_finalize(s);
    return err;
}

static gs_err sq_group_list(gs_store *st, gs_store_group ***out, size_t *n)
{
    sqlite3_stmt *s = NULL;
    gs_store_group **list = NULL;
    size_t count = 0, cap = 0;
    gs_err err;
    int rc;

    *out = NULL;
    *n = 0;
    err = prepare(st, "SELECT " GROUP_COLS " FROM groups ORDER BY name", &s);
    if (err)
        return err;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (count == cap) {
            gs_store_group **nl = gs_store_grow_array(list, &cap, sizeof(*nl), 8);
            if (nl == NULL) {
                err = GS_ERR_NOMEM;
                goto out;
            }
            list = nl;
        }
        err = group_from_row(s, &list[count]);
        if (err)
            goto out;
        count++;
    }
    if (rc != SQLITE_DONE) {
        err = db_error(st, "list groups");
        goto out;
    }
    *out = list;
    *n = count;
    list = NULL;
    count = 0;
out:
    gs_store_group_list_free(list, count);
    sqlite3_finalize(s);
    return err;
}

/* ---- group key versions ------------------------------------------------------ */

/* The group's current version (of keys or secrets: sql) becomes old. */
static gs_err demote_current(gs_store *st, const char *sql, int64_t group_id)
{
    sqlite3_stmt *s = NULL;
    gs_err err = prepare(st, sql, &s);
    if (err)
        return err;
    if ((err = bind_int(s, 1, GS_KEY_OLD)) == GS_OK && (err = bind_int(s, 2, group_id)) == GS_OK &&
        (err = bind_int(s, 3, GS_KEY_CURRENT)) == GS_OK)
        err = step_done(st, s, "demote current version", NULL);
    sqlite3_finalize(s);
    return err;
}

/* A new version row: in one transaction (unless the caller's), the group's
 * current version demoted when the new one is CURRENT (an imported older
 * version, OLD, demotes nothing), then the prepared and bound insert ins
 * (the caller's to finalize). */
static gs_err add_version(gs_store *st, const char *demote_sql, int64_t group_id, gs_key_state state,
                          sqlite3_stmt *ins, const char *what)
{
    bool mine = false;
    gs_err err = gs_store_tx_begin_if_needed(st, &mine);

    if (err == GS_OK && state == GS_KEY_CURRENT)
        err = demote_current(st, demote_sql, group_id);
    if (err == GS_OK)
        err = step_done(st, ins, what, NULL);
    return gs_store_tx_end_if_mine(st, mine, err);
}

static gs_err sq_group_key_add(gs_store *st, int64_t group_id, unsigned version, const char *token_label,
                               const char *cert_pem, gs_key_state state, const gs_store_keyrec *rec)
{
    sqlite3_stmt *s = NULL;
    gs_err err = prepare(st,
                         "INSERT INTO group_keys (group_id, version, token_label, cert_pem, state, created, weakenings) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?)",
                  &s);
    if (err)
        return err;
    if ((err = bind_int(s, 1, group_id)) || (err = bind_int(s, 2, version)) || (err = bind_text(s, 3, token_label)) ||
        (err = bind_text(s, 4, cert_pem)) || (err = bind_int(s, 5, state)) ||
        (err = bind_int(s, 6, gs_store_now())) || (err = bind_text(s, 7, gs_store_rec_weak(rec))))
        goto out;
    err = add_version(st, "UPDATE group_keys SET state = ? WHERE group_id = ? AND state = ?", group_id, state, s,
                      "add key version");
    if (err == GS_ERR_EXISTS)
        err = gs_err_set(GS_ERR_EXISTS, "key version %u or label %s already recorded", version, token_label);
out:
    sqlite3_finalize(s);
    return err;
}

static gs_err sq_group_key_set_cert(gs_store *st, int64_t group_id, unsigned version, const char *cert_pem)
{
    sqlite3_stmt *s = NULL;
    int changes = 0;
    gs_err err = prepare(st, "UPDATE group_keys SET cert_pem = ? WHERE group_id = ? AND version = ?", &s);
    if (err)
        return err;
    if ((err = bind_text(s, 1, cert_pem)) || (err = bind_int(s, 2, group_id)) || (err = bind_int(s, 3, version)))
        goto out;
    err = step_done(st, s, "set certificate", &changes);
    if (err == GS_OK && changes == 0)
        err = gs_err_set(GS_ERR_NOT_FOUND, "no key version %u", version);
out:
    sqlite3_finalize(s);
    return err;
}

/* Marks an old version retired. sql is the UPDATE of its table with
 * ?1 the new state, ?2 the group, ?3 the version, ?4 the old state and,
 * where the table has the column, ?5 the time; what names the row. */
static gs_err retire_row(gs_store *st, const char *sql, const char *what, int64_t group_id, unsigned version)
{
    sqlite3_stmt *s = NULL;
    int changes = 0;
    gs_err err = prepare(st, sql, &s);
    if (err)
        return err;
    if ((err = bind_int(s, 1, GS_KEY_RETIRED)) || (err = bind_int(s, 2, group_id)) ||
        (err = bind_int(s, 3, version)) || (err = bind_int(s, 4, GS_KEY_OLD)) ||
        (sqlite3_bind_parameter_count(s) >= 5 && (err = bind_int(s, 5, gs_store_now()))))
        goto out;
    err = step_done(st, s, "retire key", &changes);
    if (err == GS_OK && changes == 0)
        err = gs_err_set(GS_ERR_STATE, "%s version %u is not an old (retirable) version", what, version);
out:
    sqlite3_finalize(s);
    return err;
}

static gs_err sq_group_key_retire(gs_store *st, int64_t group_id, unsigned version)
{
    return retire_row(st,
                      "UPDATE group_keys SET state = ?1, retired = ?5 WHERE group_id = ?2 AND version = ?3 "
                      "AND state = ?4",
                      "key", group_id, version);
}

static gs_err group_key_from_row(sqlite3_stmt *s, void *elem)
{
    gs_store_group_key *k = elem;
    bool oom = false;

    k->version = (unsigned)sqlite3_column_int64(s, 0);
    k->token_label = col_strdup(s, 1, &oom);
    k->cert_pem = col_strdup(s, 2, &oom);
    k->state = (gs_key_state)sqlite3_column_int(s, 3);
    k->created = sqlite3_column_int64(s, 4);
    k->retired = sqlite3_column_int64(s, 5);
    k->weakenings = col_strdup(s, 6, &oom);
    return (oom || !k->token_label || !k->cert_pem || !k->weakenings) ? GS_ERR_NOMEM : GS_OK;
}

static void release_group_keys(void *list, size_t n) { gs_store_group_keys_free(list, n); }

static gs_err sq_group_keys(gs_store *st, int64_t group_id, gs_store_group_key **out, size_t *n)
{
    void *list = NULL;
    gs_err err = read_group_rows(st,
                                 "SELECT version, token_label, cert_pem, state, created, retired, weakenings FROM group_keys "
                                 "WHERE group_id = ? ORDER BY version DESC",
                                 group_id, sizeof(**out), 4, group_key_from_row, release_group_keys,
                                 "list key versions", &list, n);
    *out = list;
    return err;
}

/* ---- secret key versions -------------------------------------------------------- */

static gs_err sq_secret_add(gs_store *st, int64_t group_id, unsigned version, const char *token_label,
                            const unsigned char kek_id[GS_KEK_ID_LEN], gs_key_state state,
                            const gs_store_keyrec *rec)
{
    sqlite3_stmt *s = NULL;
    gs_err err = prepare(st,
                         "INSERT INTO secret_keys (group_id, version, token_label, kek_id, state, created, weakenings, "
                  "seal_label, sealed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  &s);
    if (err)
        return err;
    if ((err = bind_int(s, 1, group_id)) || (err = bind_int(s, 2, version)) || (err = bind_text(s, 3, token_label)) ||
        (err = bind_blob(s, 4, kek_id, GS_KEK_ID_LEN)) || (err = bind_int(s, 5, state)) ||
        (err = bind_int(s, 6, gs_store_now())) || (err = bind_text(s, 7, gs_store_rec_weak(rec))) ||
        (err = bind_text(s, 8, rec != NULL ? rec->seal_label : NULL)) ||
        (err = rec != NULL && rec->sealed != NULL ? bind_blob(s, 9, rec->sealed, rec->sealed_len)
                                                  : bind_check(sqlite3_bind_null(s, 9), 9)))
        goto out;
    err = add_version(st, "UPDATE secret_keys SET state = ? WHERE group_id = ? AND state = ?", group_id, state, s,
                      "add secret version");
    if (err == GS_ERR_EXISTS)
        err = gs_err_set(GS_ERR_EXISTS, "secret key version %u or label %s already recorded", version, token_label);
out:
    sqlite3_finalize(s);
    return err;
}

static gs_err secret_from_row(sqlite3_stmt *s, void *elem)
{
    gs_store_secret *k = elem;
    bool oom = false;

    k->version = (unsigned)sqlite3_column_int64(s, 0);
    k->token_label = col_strdup(s, 1, &oom);
    if (sqlite3_column_bytes(s, 2) == GS_KEK_ID_LEN)
        memcpy(k->kek_id, sqlite3_column_blob(s, 2), GS_KEK_ID_LEN);
    k->state = (gs_key_state)sqlite3_column_int(s, 3);
    k->created = sqlite3_column_int64(s, 4);
    k->weakenings = col_strdup(s, 5, &oom);
    k->seal_label = col_strdup(s, 6, &oom);
    if (!col_blobdup(s, 7, &k->sealed, &k->sealed_len))
        oom = true;
    return (oom || !k->token_label || !k->weakenings) ? GS_ERR_NOMEM : GS_OK;
}

static void release_secrets(void *list, size_t n) { gs_store_secrets_free(list, n); }

static gs_err sq_secrets(gs_store *st, int64_t group_id, gs_store_secret **out, size_t *n)
{
    void *list = NULL;
    gs_err err = read_group_rows(st,
                                 "SELECT version, token_label, kek_id, state, created, weakenings, seal_label, sealed "
                                 "FROM secret_keys "
                                 "WHERE group_id = ? ORDER BY version DESC",
                                 group_id, sizeof(**out), 4, secret_from_row, release_secrets,
                                 "list secret versions", &list, n);
    *out = list;
    return err;
}

/* The sealed blob goes with the row's retirement: it is the key. */
static gs_err sq_secret_retire(gs_store *st, int64_t group_id, unsigned version)
{
    return retire_row(st,
                      "UPDATE secret_keys SET state = ?1, sealed = NULL WHERE group_id = ?2 AND version = ?3 "
                      "AND state = ?4",
                      "secret key", group_id, version);
}

static gs_err sq_secret_by_kek_id(gs_store *st, const unsigned char *kek_id, int64_t *group_id, unsigned *version)
{
    sqlite3_stmt *s = NULL;
    size_t len = GS_KEK_ID_LEN;
    gs_err err;
    int rc;
    err = prepare(st, "SELECT group_id, version FROM secret_keys WHERE kek_id = ?", &s);
    if (err)
        return err;
    err = bind_blob(s, 1, kek_id, len);
    if (err)
        goto out;
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *group_id = sqlite3_column_int64(s, 0);
        *version = (unsigned)sqlite3_column_int64(s, 1);
    } else if (rc == SQLITE_DONE) {
        err = gs_err_set(GS_ERR_NOT_FOUND, "no secret key with this identifier");
    } else {
        err = db_error(st, "find secret");
    }
out:
    sqlite3_finalize(s);
    return err;
}

/* ---- seal keys ---------------------------------------------------------------- */

static gs_err sq_seal_key_put(gs_store *st, const char *label, const char *weakenings)
{
    sqlite3_stmt *s = NULL;
    gs_err err;

    err = prepare(st, "INSERT OR IGNORE INTO seal_keys (label, weakenings, created) VALUES (?, ?, ?)", &s);
    if (err)
        return err;
    if ((err = bind_text(s, 1, label)) || (err = bind_text(s, 2, weakenings)) ||
        (err = bind_int(s, 3, gs_store_now())))
        goto out;
    err = step_done(st, s, "record seal key", NULL);
out:
    sqlite3_finalize(s);
    return err;
}

static gs_err sq_seal_keys(gs_store *st, gs_store_seal_key **out, size_t *n)
{
    sqlite3_stmt *s = NULL;
    gs_store_seal_key *list = NULL;
    size_t count = 0, cap = 0;
    gs_err err;
    int rc;

    if ((err = prepare(st, "SELECT label, weakenings, created FROM seal_keys ORDER BY label", &s)) != GS_OK)
        return err;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        bool oom = false;
        if (count == cap) {
            gs_store_seal_key *nl = gs_store_grow_array(list, &cap, sizeof(*nl), 2);
            if (nl == NULL) {
                err = GS_ERR_NOMEM;
                goto out;
            }
            list = nl;
        }
        memset(&list[count], 0, sizeof(list[count]));
        list[count].label = col_strdup(s, 0, &oom);
        list[count].weakenings = col_strdup(s, 1, &oom);
        list[count].created = sqlite3_column_int64(s, 2);
        count++;
        if (oom || list[count - 1].label == NULL || list[count - 1].weakenings == NULL) {
            err = GS_ERR_NOMEM;
            goto out;
        }
    }
    if (rc != SQLITE_DONE) {
        err = db_error(st, "list seal keys");
        goto out;
    }
    *out = list;
    *n = count;
    list = NULL;
    count = 0;
out:
    gs_store_seal_keys_free(list, count);
    sqlite3_finalize(s);
    return err;
}

/* ---- members ---------------------------------------------------------------- */

static gs_err sq_member_add(gs_store *st, int64_t group_id, const char *email, gs_role role, const char *cert_pem)
{
    sqlite3_stmt *s = NULL;
    gs_err err;
    err = prepare(st, "INSERT INTO members (group_id, email, role, cert_pem, added) VALUES (?, ?, ?, ?, ?)", &s);
    if (err)
        return err;
    if ((err = bind_int(s, 1, group_id)) || (err = bind_text(s, 2, email)) || (err = bind_int(s, 3, (int)role)) ||
        (err = bind_text(s, 4, cert_pem)) || (err = bind_int(s, 5, gs_store_now())))
        goto out;
    err = step_done(st, s, "add member", NULL);
    if (err == GS_ERR_EXISTS)
        err = gs_err_set(GS_ERR_EXISTS, "%s is already a member", email);
out:
    sqlite3_finalize(s);
    return err;
}

static gs_err sq_member_remove(gs_store *st, int64_t group_id, const char *email)
{
    sqlite3_stmt *s = NULL;
    int changes = 0;
    char q[GS_EMAIL_MAX + 16];
    gs_err err = prepare(st, "DELETE FROM members WHERE group_id = ? AND email = ?", &s);
    if (err)
        return err;
    if ((err = bind_int(s, 1, group_id)) || (err = bind_text(s, 2, email)))
        goto out;
    err = step_done(st, s, "remove member", &changes);
    if (err == GS_OK && changes == 0)
        err = gs_err_set(GS_ERR_NOT_FOUND, "%s is not a member", log_quote(q, sizeof(q), email ? email : ""));
out:
    sqlite3_finalize(s);
    return err;
}

static gs_err member_from_row(sqlite3_stmt *s, void *elem)
{
    gs_store_member *m = elem;
    bool oom = false;
    memset(m, 0, sizeof(*m));
    m->email = col_strdup(s, 0, &oom);
    m->role = (gs_role)sqlite3_column_int(s, 1);
    m->cert_pem = col_strdup(s, 2, &oom);
    m->added = sqlite3_column_int64(s, 3);
    m->wrap = gs_store_wrap_from_text((const char *)sqlite3_column_text(s, 4));
    return (oom || m->email == NULL) ? GS_ERR_NOMEM : GS_OK;
}

static gs_err sq_member_get(gs_store *st, int64_t group_id, const char *email, gs_store_member **out)
{
    sqlite3_stmt *s = NULL;
    gs_store_member *m = NULL;
    gs_err err;
    int rc;

    err = prepare_hot(st, HOT_MEMBER_GET, "SELECT email, role, cert_pem, added, wrap FROM members WHERE group_id = ? AND email = ?",
                      &s);
    if (err)
        return err;
    if ((err = bind_int(s, 1, group_id)) || (err = bind_text(s, 2, email)))
        goto out;
    rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
        err = gs_err_set(GS_ERR_NOT_FOUND, "not a member");
        goto out;
    }
    if (rc != SQLITE_ROW) {
        err = db_error(st, "read member");
        goto out;
    }
    m = calloc(1, sizeof(*m));
    if (m == NULL) {
        err = GS_ERR_NOMEM;
        goto out;
    }
    err = member_from_row(s, m);
    if (err)
        goto out;
    *out = m;
    m = NULL;
out:
    gs_store_member_free(m);
    hot_done(s);
    return err;
}

static void release_members(void *list, size_t n) { gs_store_member_list_free(list, n); }

/* One UPDATE of a wrap column; NOT_FOUND when no row matched. */
static gs_err set_wrap(gs_store *st, const char *sql, int64_t group_id, const char *email, const char *value,
                       const char *what)
{
    sqlite3_stmt *s = NULL;
    int changes = 0;
    gs_err err = prepare(st, sql, &s);
    if (err)
        return err;
    if ((err = bind_text(s, 1, value)) || (err = bind_int(s, 2, group_id)) ||
        (email != NULL && (err = bind_text(s, 3, email))))
        goto out;
    err = step_done(st, s, what, &changes);
    if (err == GS_OK && changes == 0)
        err = gs_err_set(GS_ERR_NOT_FOUND, email != NULL ? "not a member" : "no such group");
out:
    sqlite3_finalize(s);
    return err;
}

static gs_err sq_member_set_wrap(gs_store *st, int64_t group_id, const char *email, gs_wrap wrap)
{
    return set_wrap(st, "UPDATE members SET wrap = ? WHERE group_id = ? AND email = ?", group_id, email,
                    wrap == GS_WRAP_DEFAULT ? NULL : gs_wrap_name(wrap), "set member wrap");
}

static gs_err sq_group_set_member_wrap(gs_store *st, int64_t group_id, gs_wrap wrap)
{
    return set_wrap(st, "UPDATE groups SET member_wrap = ? WHERE id = ?", group_id, NULL, gs_wrap_name(wrap),
                    "set group member wrap");
}

static gs_err sq_member_list(gs_store *st, int64_t group_id, gs_store_member **out, size_t *n)
{
    void *list = NULL;
    gs_err err = read_group_rows(st, "SELECT email, role, cert_pem, added, wrap FROM members WHERE group_id = ? ORDER BY email",
                                 group_id, sizeof(**out), 8, member_from_row, release_members, "list members", &list,
                                 n);
    *out = list;
    return err;
}

static const struct gs_store_ops sq_ops = {
    .name = "sqlite",
    .close = sq_close,
    .change_stamp = sq_change_stamp,
    .check_location = sq_check_location,
    .check_grants = sq_check_grants,
    .read_begin = sq_read_begin,
    .read_end = sq_read_end,
    .keys_lock_try = sq_keys_lock_try,
    .keys_unlock = sq_keys_unlock,
    .write_check = sq_write_check,
    .check_integrity = quick_check,
    .begin = sq_begin,
    .commit = sq_commit,
    .rollback = sq_rollback,
    .ca_get = sq_ca_get,
    .ca_put = sq_ca_put,
    .ca_set_cert = sq_ca_set_cert,
    .group_add = sq_group_add,
    .group_get = sq_group_get,
    .group_list = sq_group_list,
    .group_set_member_wrap = sq_group_set_member_wrap,
    .group_key_add = sq_group_key_add,
    .group_key_set_cert = sq_group_key_set_cert,
    .group_key_retire = sq_group_key_retire,
    .group_keys = sq_group_keys,
    .secret_add = sq_secret_add,
    .secrets = sq_secrets,
    .secret_retire = sq_secret_retire,
    .secret_by_kek_id = sq_secret_by_kek_id,
    .seal_key_put = sq_seal_key_put,
    .seal_keys = sq_seal_keys,
    .member_add = sq_member_add,
    .member_remove = sq_member_remove,
    .member_get = sq_member_get,
    .member_list = sq_member_list,
    .member_set_wrap = sq_member_set_wrap,
};
