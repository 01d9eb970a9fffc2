/*
 * log.h: the one diagnostic logging module.
 *
 * Lines look like
 *   2026-11-29T20:40:02.123Z level=info prog=groupsrv fn=serve_start req=5f2c msg="listening" addr=127.0.0.1:8443
 * Callers pass a message and optional key=value fields in one format string.
 * Untrusted strings must go through log_quote() (or the %s they feed is
 * truncated and escaped by the caller): never log PINs, keys or plaintext.
 * Whatever the caller passes, a record is one line: control bytes in the
 * fields are written as \xNN, as log_quote writes them.
 * The audit log is a separate module (groupsrv/audit.h), not this one.
 */
#ifndef GS_LOG_H
#define GS_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

enum log_level { LOG_LVL_ERROR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

/* Sets program name, threshold and sink (NULL = stderr). Not thread-safe:
 * call once at start-up, before threads exist. */
void log_init(const char *progname, enum log_level level, FILE *sink);
/* Sends lines to syslog(3) instead (facility e.g. LOG_MAIL, ident the
 * program name; syslog adds its own time stamp). For programs whose
 * standard error is not a log: `exploder deliver`, whose stderr the MTA
 * puts into bounces. Same threading rule as log_init. */
void log_use_syslog(int facility);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* "error", "warn", "info", "debug" -> level; returns -1 on unknown names. */
int log_level_parse(const char *name);

/* Per-thread request id (copied, up to 32 chars), shown as req=...; NULL clears. */
void log_set_request_id(const char *id);
const char *log_get_request_id(void);

/* fmt is "message text" optionally followed by " key=value ..." fields; the
 * part before the first " key=" is quoted as msg="...". */
void log_emit(enum log_level level, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Escapes an untrusted string for a log field: printable ASCII only,
 * quotes and backslashes escaped, truncated to fit; always NUL-terminated.
 * Returns buf. */
char *log_quote(char *buf, size_t bufsize, const char *untrusted);

/* log_quote() into one of LOG_QS_SLOTS buffers of the calling thread, for
 * a quoted field (`detail=\"%s\"`, log_qs(text)): up to that many in one
 * call; each is valid until the thread's LOG_QS_SLOTS-th next log_qs. A
 * value is cut to 480 bytes. */
#define LOG_QS_SLOTS 4
const char *log_qs(const char *untrusted);

#define log_error(...) log_emit(LOG_LVL_ERROR, __func__, __VA_ARGS__)
#define log_warn(...)  log_emit(LOG_LVL_WARN, __func__, __VA_ARGS__)
#define log_info(...)  log_emit(LOG_LVL_INFO, __func__, __VA_ARGS__)
#define log_debug(...)                                                      \
    do {                                                                    \
        if (log_get_level() >= LOG_LVL_DEBUG)                               \
            log_emit(LOG_LVL_DEBUG, __func__, __VA_ARGS__);                 \
    } while (0)

#endif
