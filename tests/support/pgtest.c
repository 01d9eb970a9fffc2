/* pgtest.c: see pgtest.h. */
#include "pgtest.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int pgtest_url(const char *name, char *out, size_t cap)
{
    const char *base = getenv("GS_TEST_PG_URL");
    const char *q = base ? strchr(base, '?') : NULL;
    if (q == NULL) {
        fprintf(stderr, "GS_TEST_PG_URL is not set: run the test under tests/lib/pg.sh run\n");
        return -1;
    }
    return snprintf(out, cap, "postgresql:///%s%s", name, q) < (int)cap ? 0 : -1;
}

void pgtest_name_of(const char *url, char *name, size_t cap)
{
    const char *db = url + strlen("postgresql:///");
    (void)snprintf(name, cap, "%.*s", (int)strcspn(db, "?"), db);
}

int pgtest_exec(const char *db, const char *sql)
{
    char url[1024];
    int ok;
    if (pgtest_url(db ? db : "postgres", url, sizeof(url)) != 0)
        return -1;
    PGconn *c = PQconnectdb(url);
    PGresult *r = PQexec(c, sql);
    ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!ok)
        fprintf(stderr, "pgtest: %s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    return ok ? 0 : -1;
}

long pgtest_int(const char *db, const char *sql)
{
    char url[1024];
    long v = -1;
    if (pgtest_url(db, url, sizeof(url)) != 0)
        return -1;
    PGconn *c = PQconnectdb(url);
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        v = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    PQfinish(c);
    return v;
}

int pgtest_create(const char *prefix, char *name, size_t name_cap, char *url, size_t url_cap)
{
    static unsigned seq;
    char sql[160];
    if (snprintf(name, name_cap, "%s%ld_%u", prefix, (long)getpid(), ++seq) >= (int)name_cap)
        return -1;
    (void)snprintf(sql, sizeof(sql), "CREATE DATABASE \"%s\"", name);
    if (pgtest_exec(NULL, sql) != 0)
        return -1;
    return pgtest_url(name, url, url_cap);
}

void pgtest_drop(const char *name)
{
    char sql[160];
    if (name == NULL || *name == '\0')
        return;
    (void)snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS \"%s\" WITH (FORCE)", name);
    (void)pgtest_exec(NULL, sql);
}
