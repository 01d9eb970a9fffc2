/*
 * sqlite-fstat.c: does SQLite fstat the database at every read transaction?
 * (docs/performance.md, "the zero-cost token profiled again"). Makes a WAL
 * database in DIR (an empty directory), then 1,000 `PRAGMA data_version` (one read transaction
 * each, as the key holder's change stamp) on a second connection, with the
 * WAL empty (`empty`) or after one INSERT by the first connection (`written`).
 * Count the system calls between the two marks on stderr:
 *
 *   cc -O2 sqlite-fstat.c -o sqlite-fstat -lsqlite3
 *   strace -f -e trace=newfstatat,fcntl ./sqlite-fstat DIR empty 2>&1 | sed -n '/^start$/,/^end$/p' | sed 's/(.*//' | sort | uniq -c
 */
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

static int run(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

int main(int argc, char **argv)
{
    sqlite3 *w = NULL, *r = NULL;
    sqlite3_stmt *s = NULL;
    char path[4096];
    int rc = 1, n;

    if (argc != 3 || (strcmp(argv[2], "empty") != 0 && strcmp(argv[2], "written") != 0)) {
        fprintf(stderr, "usage: sqlite-fstat DIR empty|written\n");
        return 2;
    }
    n = snprintf(path, sizeof(path), "%s/t.db", argv[1]);
    if (n < 0 || (size_t)n >= sizeof(path))
        return 2;
    /* A fresh database: its WAL is deleted when the last connection closes. */
    if (sqlite3_open(path, &w) != SQLITE_OK ||
        run(w, "PRAGMA journal_mode=WAL; DROP TABLE IF EXISTS t; CREATE TABLE t(x); INSERT INTO t VALUES(1)") != 0)
        goto out;
    sqlite3_close(w);
    w = NULL;
    if (sqlite3_open(path, &w) != SQLITE_OK || sqlite3_open(path, &r) != SQLITE_OK ||
        run(r, "SELECT 1 FROM t") != 0)
        goto out;
    if (strcmp(argv[2], "written") == 0 && run(w, "INSERT INTO t VALUES(2)") != 0)
        goto out;
    if (sqlite3_prepare_v2(r, "PRAGMA data_version", -1, &s, NULL) != SQLITE_OK)
        goto out;
    fprintf(stderr, "start\n");
    for (int i = 0; i < 1000; i++) {
        if (sqlite3_step(s) != SQLITE_ROW)
            goto out;
        sqlite3_reset(s);
    }
    fprintf(stderr, "end\n");
    rc = 0;
out:
    sqlite3_finalize(s);
    sqlite3_close(r);
    sqlite3_close(w);
    return rc;
}
