/*
 * pgtest.h: throw-away PostgreSQL databases for cmocka tests (library
 * gs_pgtest). The server is the private one tests/lib/pg.sh started for
 * the test (`tests/lib/pg.sh run TEST`): $GS_TEST_PG_URL is the URI of its
 * maintenance database. Without it every call fails: a test that needs
 * PostgreSQL fails, never skips.
 */
#ifndef GS_PGTEST_H
#define GS_PGTEST_H

#include <stddef.h>

/* The URI of database `name` on the test server into out; 0 or -1. */
int pgtest_url(const char *name, char *out, size_t cap);
/* A new empty database named "<prefix><pid>_<n>": its name into name and
 * its URI into url; 0 or -1. Drop it with pgtest_drop. */
int pgtest_create(const char *prefix, char *name, size_t name_cap, char *url, size_t url_cap);
void pgtest_drop(const char *name);
/* Runs sql on database db (NULL: the maintenance database); 0 or -1. */
int pgtest_exec(const char *db, const char *sql);
/* The first column of the one row sql returns on db as a number; -1 on failure. */
long pgtest_int(const char *db, const char *sql);
/* The database name in a URI made by pgtest_url. */
void pgtest_name_of(const char *url, char *name, size_t cap);

#endif
