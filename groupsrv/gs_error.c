/* gs_error.c: see gs_error.h. */
#include "gs_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char detail[512];
static _Thread_local gs_db_cause db_cause;

const char *gs_strerror(gs_err err)
{
    switch (err) {
    case GS_OK: return "ok";
    case GS_ERR_NOMEM: return "out of memory";
    case GS_ERR_ARGS: return "invalid argument";
    case GS_ERR_CONFIG: return "invalid configuration";
    case GS_ERR_IO: return "I/O error";
    case GS_ERR_DB: return "database error";
    case GS_ERR_SCHEMA: return "database schema mismatch";
    case GS_ERR_NOT_FOUND: return "not found";
    case GS_ERR_EXISTS: return "already exists";
    case GS_ERR_CERT: return "invalid certificate";
    case GS_ERR_HSM: return "token operation failed";
    case GS_ERR_TOKEN: return "token unavailable";
    case GS_ERR_POLICY: return "key violates its policy";
    case GS_ERR_CRYPTO: return "cryptographic operation failed";
    case GS_ERR_STATE: return "operation not allowed in this state";
    case GS_ERR_DB_UNAVAILABLE: return "database unavailable";
    }
    return "unknown error";
}

const char *gs_err_detail(void) { return detail; }

void gs_err_clear(void)
{
    detail[0] = '\0';
    db_cause = GS_DB_CAUSE_OTHER;
}

gs_db_cause gs_err_db_cause(void) { return db_cause; }

static void set_detail(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
static void set_detail(const char *fmt, va_list ap)
{
    /* Format into a scratch buffer first: callers may pass gs_err_detail()
     * itself as an argument to prefix it. */
    char tmp[sizeof(detail)];
    (void)vsnprintf(tmp, sizeof(tmp), fmt, ap);
    memcpy(detail, tmp, sizeof(detail));
}

gs_err gs_err_set(gs_err err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_detail(fmt, ap);
    va_end(ap);
    db_cause = GS_DB_CAUSE_OTHER;
    return err;
}

gs_err gs_err_set_db(gs_err err, gs_db_cause cause, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_detail(fmt, ap);
    va_end(ap);
    db_cause = cause;
    return err;
}

int gs_err_exit_code(gs_err err)
{
    switch (err) {
    case GS_OK: return 0;
    case GS_ERR_NOT_FOUND:
    case GS_ERR_EXISTS: return 3;
    case GS_ERR_TOKEN: return 4;
    case GS_ERR_CONFIG: return 5;
    default: return 1;
    }
}
