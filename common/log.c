/* log.c: see log.h. One mutex around the sink so lines never interleave. */
#include "log.h"

#include <pthread.h>
#include <string.h>
#include <sys/time.h>
#include <syslog.h>
#include <time.h>

static char log_prog[32] = "groupsrv";
static enum log_level log_threshold = LOG_LVL_INFO;
static FILE *log_sink;
static int log_syslog; /* lines go to syslog(3) */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local char log_reqid[33];

void log_init(const char *progname, enum log_level level, FILE *sink)
{
    if (progname != NULL)
        snprintf(log_prog, sizeof(log_prog), "%s", progname);
    log_threshold = level;
    log_sink = sink;
}

void log_use_syslog(int facility)
{
    openlog(log_prog, LOG_PID, facility);
    log_syslog = 1;
}

void log_set_level(enum log_level level) { log_threshold = level; }
enum log_level log_get_level(void) { return log_threshold; }

int log_level_parse(const char *name)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (name != NULL && strcmp(name, names[i]) == 0)
            return (int)i;
    return -1;
}

void log_set_request_id(const char *id)
{
    if (id == NULL)
        log_reqid[0] = '\0';
    else
        snprintf(log_reqid, sizeof(log_reqid), "%s", id);
}

const char *log_get_request_id(void) { return log_reqid; }

char *log_quote(char *buf, size_t bufsize, const char *untrusted)
{
    size_t o = 0;
    if (bufsize == 0)
        return buf;
    if (untrusted == NULL)
        untrusted = "(null)";
    for (const unsigned char *p = (const unsigned char *)untrusted; *p; p++) {
        char tmp[5];
        size_t n;
        if (*p == '"' || *p == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)*p;
            n = 2;
        } else if (*p < 0x20 || *p > 0x7e) {
            snprintf(tmp, sizeof(tmp), "\\x%02x", *p);
            n = 4;
        } else {
            tmp[0] = (char)*p;
            n = 1;
        }
        if (o + n + 4 >= bufsize) { /* room for "..." and NUL */
            if (o + 3 < bufsize) {
                memcpy(buf + o, "...", 3);
                o += 3;
            }
            break;
        }
        memcpy(buf + o, tmp, n);
        o += n;
    }
    buf[o] = '\0';
    return buf;
}

/* One line per record whatever a field holds: a value the caller did not
 * pass through log_quote (a database's message, a path, a module's text)
 * may carry a newline or other control bytes, which would end the line
 * and start a forged one. They become \xNN as log_quote writes them;
 * quotes stay, they are the caller's field syntax. */
static const char *escape_controls(char *out, size_t cap, const char *in)
{
    size_t o = 0;

    for (const unsigned char *p = (const unsigned char *)in; *p && o + 5 < cap; p++) {
        if (*p < 0x20 || *p == 0x7f)
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", *p);
        else
            out[o++] = (char)*p;
    }
    out[o] = '\0';
    return out;
}

const char *log_qs(const char *untrusted)
{
    static _Thread_local char slots[LOG_QS_SLOTS][480];
    static _Thread_local unsigned next;
    char *buf = slots[next++ % LOG_QS_SLOTS];

    return log_quote(buf, sizeof(slots[0]), untrusted);
}

void log_emit(enum log_level level, const char *func, const char *fmt, ...)
{
    static const char *const lvl[] = {"error", "warn", "info", "debug"};
    char body[2048], msg[1024], ts[40];
    const char *fields = "";
    struct timeval tv;
    struct tm tm;
    va_list ap;
    FILE *out = log_sink != NULL ? log_sink : stderr;

    if (level > log_threshold)
        return;
    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);

    /* Split "text key=value..." at the first " word=" so the text is quoted.
     * A body that starts with "word=" is all fields. */
    size_t cut = strlen(body);
    const char *eq0 = strchr(body, '='), *sp0 = strchr(body, ' ');
    if (eq0 != NULL && eq0 > body && (sp0 == NULL || eq0 < sp0)) {
        cut = 0;
        fields = body;
    } else {
        for (char *p = body; (p = strchr(p, ' ')) != NULL; p++) {
            char *eq = strchr(p + 1, '=');
            char *sp = strchr(p + 1, ' ');
            if (eq != NULL && (sp == NULL || eq < sp) && eq > p + 1) {
                cut = (size_t)(p - body);
                fields = p;
                break;
            }
        }
    }
    char text[1024], fq[sizeof(body) * 4];
    snprintf(text, sizeof(text), "%.*s", (int)cut, body);
    log_quote(msg, sizeof(msg), text);
    const char *sep = fields == body ? " " : ""; /* a body of fields only */
    fields = escape_controls(fq, sizeof(fq), fields);

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);

    if (log_syslog) {
        static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
        syslog(prio[level], "level=%s fn=%s%s%s msg=\"%s\"%s%s", lvl[level], func,
               log_reqid[0] ? " req=" : "", log_reqid, msg, sep, fields);
        return;
    }
    pthread_mutex_lock(&log_lock);
    fprintf(out, "%s.%03ldZ level=%s prog=%s fn=%s%s%s msg=\"%s\"%s%s\n", ts, (long)(tv.tv_usec / 1000),
            lvl[level], log_prog, func, log_reqid[0] ? " req=" : "", log_reqid, msg, sep, fields);
    fflush(out);
    pthread_mutex_unlock(&log_lock);
}
