/*
 * audit.c: hash-chained, synchronously flushed audit log (see audit.h).
 * Appends are serialised by the mutex; their fdatasync is shared (group
 * commit), so a slow disk delays answers but no longer serialises them.
 */
#include "audit.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "log.h"
#include "util.h"

/* Lines are small records; a longer line is corruption, not data. */
#define AUDIT_MAX_LINE 8192

struct audit_log {
    pthread_mutex_t mu;
    pthread_cond_t synced; /* broadcast when a sync round ends */
    int fd;
    char *path;
    char prev_hex[2 * SHA256_DIGEST_LENGTH + 1];
    int failed; /* the last append failed: checked by audit_check */
    /* Group commit: records are numbered in write order. Every record
     * <= synced_seq is durable; every record <= failed_seq was covered by
     * a failed fdatasync and is never reported durable (after a failed
     * fsync Linux may have dropped the dirty pages: a later successful
     * sync proves nothing about them). */
    unsigned long long written_seq, synced_seq, failed_seq;
    int syncing; /* one appender runs fdatasync, without the mutex */
    unsigned long long rounds; /* sync rounds completed */
    /* Optional background syncer (audit_syncer_start): appenders that do
     * not wait (audit_write) wake it, and it tells its owner after every
     * round, so an event loop can answer when its records are durable
     * instead of blocking in fdatasync. */
    pthread_cond_t work;
    pthread_t syncer;
    int syncer_running, syncer_stop;
    audit_durable_cb durable_cb;
    void *durable_arg;
};

static int sync_round_when_free_locked(struct audit_log *log);

const char *audit_strerror(audit_err err)
{
    switch (err) {
    case AUDIT_OK: return "ok";
    case AUDIT_ERR_NOMEM: return "out of memory";
    case AUDIT_ERR_ARGS: return "invalid arguments";
    case AUDIT_ERR_IO: return "audit log cannot be written";
    case AUDIT_ERR_FORMAT: return "audit log line malformed";
    case AUDIT_ERR_CHAIN: return "audit log hash chain broken";
    }
    return "unknown audit error";
}

static void hash_line(const char *line, size_t len, char hex[2 * SHA256_DIGEST_LENGTH + 1])
{
    unsigned char md[SHA256_DIGEST_LENGTH];

    SHA256((const unsigned char *)line, len, md);
    util_hex(md, sizeof(md), hex);
}

/* Finds the last line of the file and hashes it into log->prev_hex. */
static audit_err load_chain_head(struct audit_log *log)
{
    audit_err rc = AUDIT_ERR_IO;
    struct stat st;
    char *buf = NULL;
    size_t want, got = 0;
    off_t start;

    memset(log->prev_hex, '0', sizeof(log->prev_hex) - 1);
    log->prev_hex[sizeof(log->prev_hex) - 1] = '\0';
    if (fstat(log->fd, &st) != 0)
        goto out;
    if (st.st_size == 0) {
        rc = AUDIT_OK;
        goto out;
    }
    want = st.st_size > AUDIT_MAX_LINE + 1 ? AUDIT_MAX_LINE + 1 : (size_t)st.st_size;
    start = st.st_size - (off_t)want;
    if ((buf = malloc(want)) == NULL) {
        rc = AUDIT_ERR_NOMEM;
        goto out;
    }
    while (got < want) {
        ssize_t n = pread(log->fd, buf + got, want - got, start + (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto out;
        got += (size_t)n;
    }
    if (buf[want - 1] != '\n') {
        rc = AUDIT_ERR_FORMAT; /* torn last write */
        goto out;
    }
    size_t end = want - 1, begin = end;
    while (begin > 0 && buf[begin - 1] != '\n')
        begin--;
    if (begin == 0 && start != 0) {
        rc = AUDIT_ERR_FORMAT; /* last line longer than any line we write */
        goto out;
    }
    hash_line(buf + begin, end - begin, log->prev_hex);
    rc = AUDIT_OK;
out:
    free(buf);
    return rc;
}

audit_err audit_open(const char *path, audit_log **out)
{
    audit_err rc = AUDIT_ERR_NOMEM;
    struct audit_log *log = NULL;

    *out = NULL;
    if (path == NULL || *path == '\0')
        return AUDIT_ERR_ARGS;
    if ((log = calloc(1, sizeof(*log))) == NULL)
        goto out;
    log->fd = -1;
    pthread_mutex_init(&log->mu, NULL);
    pthread_cond_init(&log->synced, NULL);
    pthread_cond_init(&log->work, NULL);
    if ((log->path = strdup(path)) == NULL)
        goto out;
    log->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (log->fd < 0) {
        rc = AUDIT_ERR_IO;
        goto out;
    }
    /* pread needs a readable descriptor: reopen read-only just for the head. */
    int rfd = open(path, O_RDONLY | O_CLOEXEC);
    if (rfd < 0) {
        rc = AUDIT_ERR_IO;
        goto out;
    }
    int wfd = log->fd;
    log->fd = rfd;
    rc = load_chain_head(log);
    log->fd = wfd;
    close(rfd);
    if (rc != AUDIT_OK)
        goto out;
    *out = log;
    log = NULL;
out:
    audit_close(log);
    return rc;
}

void audit_close(audit_log *log)
{
    if (log == NULL)
        return;
    audit_syncer_stop(log);
    if (log->fd >= 0)
        close(log->fd);
    pthread_mutex_destroy(&log->mu);
    pthread_cond_destroy(&log->synced);
    pthread_cond_destroy(&log->work);
    free(log->path);
    free(log);
}

static int write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

audit_err audit_check(audit_log *log)
{
    audit_err rc = AUDIT_OK;
    struct stat st, cur;

    if (log == NULL)
        return AUDIT_ERR_ARGS;
    pthread_mutex_lock(&log->mu);
    /* The file must still be the one we write (not deleted or replaced). */
    if (fstat(log->fd, &st) != 0 || stat(log->path, &cur) != 0 || st.st_ino != cur.st_ino ||
        st.st_dev != cur.st_dev) {
        rc = AUDIT_ERR_IO;
    } else if (log->failed) {
        /* After a failure, a sync round (bookkept like any other, so a
         * failure fails what it covered) tells whether the disk works
         * again; then the next append may try. */
        if (sync_round_when_free_locked(log) != 0)
            rc = AUDIT_ERR_IO;
        else
            log->failed = 0;
    }
    pthread_mutex_unlock(&log->mu);
    return rc;
}

static void now_iso(char *buf, size_t cap)
{
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    /* strftime cannot overflow-warn the way a %d chain does under FORTIFY. */
    char base[24];
    if (strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm) == 0)
        base[0] = '\0';
    snprintf(buf, cap, "%s.%03dZ", base, (int)(ts.tv_nsec / 1000000) % 1000);
}

static int set_str(json_t *o, const char *k, const char *v)
{
    if (v == NULL)
        return 0;
    return json_object_set_new(o, k, json_string(v));
}

/* Formats rec as one JSON line chained to the current head (caller holds
 * the mutex); the line ends in '\n', *len counts it. */
static audit_err format_line(struct audit_log *log, json_t *o, char **line, size_t *len)
{
    *line = NULL;
    if (json_object_set_new(o, "prev", json_string(log->prev_hex)))
        return AUDIT_ERR_NOMEM;
    if ((*line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII)) == NULL)
        return AUDIT_ERR_NOMEM;
    *len = strlen(*line);
    if (*len >= AUDIT_MAX_LINE) {
        free(*line);
        *line = NULL;
        return AUDIT_ERR_ARGS;
    }
    (*line)[(*len)++] = '\n'; /* json_dumps's NUL becomes the newline */
    return AUDIT_OK;
}

static json_t *record_json(const audit_record *rec)
{
    char when[40];
    json_t *o = json_object();

    now_iso(when, sizeof(when));
    if (o == NULL)
        return NULL;
    if (set_str(o, "time", when) || set_str(o, "request_id", rec->request_id) ||
        set_str(o, "action", rec->action) || set_str(o, "identity", rec->identity) ||
        set_str(o, "group", rec->group) || set_str(o, "method", rec->method) ||
        (rec->key_version >= 0 && json_object_set_new(o, "key_version", json_integer(rec->key_version))) ||
        set_str(o, "outcome", rec->outcome) ||
        (rec->extra != NULL && json_is_object((json_t *)rec->extra) &&
         json_object_update(o, (json_t *)rec->extra) != 0)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Writes one line (mutex held) and returns its sequence number in *seq. */
static audit_err write_locked(struct audit_log *log, json_t *o, unsigned long long *seq)
{
    audit_err rc;
    char *line = NULL;
    size_t len = 0;
    struct stat fst, pst;

    if ((rc = format_line(log, o, &line, &len)) != AUDIT_OK)
        goto out;
    rc = AUDIT_ERR_IO;
    /* Records must land in the configured file: if it was deleted or
     * moved away, writing to the orphaned inode would lose them. */
    if (fstat(log->fd, &fst) != 0 || stat(log->path, &pst) != 0 || fst.st_ino != pst.st_ino ||
        fst.st_dev != pst.st_dev) {
        log->failed = 1;
        log_error("audit log is no longer at its path path=%s", log->path);
        goto out;
    }
    if (write_all(log->fd, line, len) != 0) {
        log->failed = 1;
        log_error("audit append failed path=%s errno=%d", log->path, errno);
        goto out;
    }
    /* The line is in the file: the next one chains to it, whatever the
     * sync says (the chain follows the file's order). */
    hash_line(line, len - 1, log->prev_hex);
    *seq = ++log->written_seq;
    rc = AUDIT_OK;
out:
    free(line);
    return rc;
}

/* One group-commit round (mutex held, released during fdatasync): covers
 * every line written before it started. The caller has checked that no
 * other round is running. Returns 0, or -1 if the fdatasync failed. */
static int sync_round_locked(struct audit_log *log)
{
    unsigned long long upto = log->written_seq;

    log->syncing = 1;
    pthread_mutex_unlock(&log->mu);
    int src = fdatasync(log->fd);
    int serr = errno;
    pthread_mutex_lock(&log->mu);
    log->syncing = 0;
    log->rounds++;
    if (src != 0) {
        /* Lines written while the failed sync ran may share its pages, and
         * Linux reports a write-back error only once: a later successful
         * sync proves nothing about them either. Fail them all. */
        log->failed = 1;
        if (log->written_seq > log->failed_seq)
            log->failed_seq = log->written_seq;
        log_error("audit sync failed path=%s errno=%d records=%llu", log->path, serr,
                  log->written_seq - log->synced_seq);
    } else if (upto > log->synced_seq) {
        log->synced_seq = upto;
    }
    pthread_cond_broadcast(&log->synced);
    if (log->syncer_running)
        pthread_cond_signal(&log->work);
    return src != 0 ? -1 : 0;
}

/* Runs a round once no other is running (mutex held). */
static int sync_round_when_free_locked(struct audit_log *log)
{
    while (log->syncing)
        pthread_cond_wait(&log->synced, &log->mu);
    return sync_round_locked(log);
}

/* Records first..last (one request's) are durable only if no failed
 * round covered any of them; a record synced before a later failure, whose
 * answer was still held when it happened, is then failed too (fail closed). */
static int range_state_locked(const struct audit_log *log, unsigned long long first, unsigned long long last)
{
    if (first <= log->failed_seq)
        return -1;
    return last <= log->synced_seq ? 1 : 0;
}

audit_err audit_write(audit_log *log, const audit_record *rec, unsigned long long *seq)
{
    audit_err rc;
    json_t *o;

    if (log == NULL || rec == NULL || seq == NULL)
        return AUDIT_ERR_ARGS;
    *seq = 0;
    if ((o = record_json(rec)) == NULL)
        return AUDIT_ERR_NOMEM;
    pthread_mutex_lock(&log->mu);
    rc = write_locked(log, o, seq);
    if (rc == AUDIT_OK && log->syncer_running)
        pthread_cond_signal(&log->work);
    pthread_mutex_unlock(&log->mu);
    json_decref(o);
    return rc;
}

int audit_range_state(audit_log *log, unsigned long long first, unsigned long long last)
{
    pthread_mutex_lock(&log->mu);
    int st = range_state_locked(log, first, last);
    pthread_mutex_unlock(&log->mu);
    return st;
}

int audit_seq_state(audit_log *log, unsigned long long seq)
{
    return audit_range_state(log, seq, seq);
}

audit_err audit_wait_durable(audit_log *log, unsigned long long first, unsigned long long last)
{
    audit_err rc = AUDIT_OK;

    if (log == NULL || first == 0 || last < first)
        return AUDIT_ERR_ARGS;
    pthread_mutex_lock(&log->mu);
    /* Group commit: one fdatasync covers every line written before it
     * started; the others wait for a round that covers their own lines. */
    for (;;) {
        int st = range_state_locked(log, first, last);
        if (st < 0) {
            rc = AUDIT_ERR_IO;
            break;
        }
        if (st > 0) {
            log->failed = 0;
            break;
        }
        if (log->syncing)
            pthread_cond_wait(&log->synced, &log->mu);
        else
            sync_round_locked(log);
    }
    pthread_mutex_unlock(&log->mu);
    return rc;
}

audit_err audit_append(audit_log *log, const audit_record *rec)
{
    unsigned long long seq = 0;
    audit_err rc = audit_write(log, rec, &seq);

    return rc == AUDIT_OK ? audit_wait_durable(log, seq, seq) : rc;
}

static void *syncer_main(void *arg)
{
    struct audit_log *log = arg;
    unsigned long long notified = 0;

    pthread_mutex_lock(&log->mu);
    for (;;) {
        /* Tell the owner about every round, also those run by a blocking
         * audit_append in another thread. */
        if (log->rounds != notified) {
            notified = log->rounds;
            if (log->durable_cb != NULL) {
                pthread_mutex_unlock(&log->mu);
                log->durable_cb(log->durable_arg);
                pthread_mutex_lock(&log->mu);
            }
            continue;
        }
        int pending = log->written_seq > log->synced_seq && log->written_seq > log->failed_seq;
        if (!pending && log->syncer_stop)
            break;
        if (!pending || log->syncing) {
            pthread_cond_wait(pending ? &log->synced : &log->work, &log->mu);
            continue;
        }
        sync_round_locked(log);
    }
    pthread_mutex_unlock(&log->mu);
    return NULL;
}

audit_err audit_syncer_start(audit_log *log, audit_durable_cb cb, void *arg)
{
    audit_err rc = AUDIT_OK;

    if (log == NULL)
        return AUDIT_ERR_ARGS;
    pthread_mutex_lock(&log->mu);
    if (log->syncer_running) {
        rc = AUDIT_ERR_ARGS;
        goto out;
    }
    log->durable_cb = cb;
    log->durable_arg = arg;
    log->syncer_stop = 0;
    if (pthread_create(&log->syncer, NULL, syncer_main, log) != 0) {
        rc = AUDIT_ERR_NOMEM;
        goto out;
    }
    log->syncer_running = 1;
out:
    pthread_mutex_unlock(&log->mu);
    return rc;
}

void audit_syncer_stop(audit_log *log)
{
    if (log == NULL)
        return;
    pthread_mutex_lock(&log->mu);
    int running = log->syncer_running;
    log->syncer_stop = 1;
    pthread_cond_broadcast(&log->work);
    pthread_mutex_unlock(&log->mu);
    if (!running)
        return;
    pthread_join(log->syncer, NULL); /* it syncs what is still pending first */
    pthread_mutex_lock(&log->mu);
    log->syncer_running = 0;
    log->durable_cb = NULL;
    pthread_mutex_unlock(&log->mu);
}

audit_err audit_verify_file(const char *path, size_t *lines, size_t *bad_line, char *head_hex)
{
    audit_err rc = AUDIT_ERR_IO;
    FILE *fp = NULL;
    char *line = NULL;
    size_t cap = 0, n = 0;
    char prev[2 * SHA256_DIGEST_LENGTH + 1];
    ssize_t len;

    *lines = 0;
    *bad_line = 0;
    memset(prev, '0', sizeof(prev) - 1);
    prev[sizeof(prev) - 1] = '\0';
    if ((fp = fopen(path, "re")) == NULL)
        goto out;
    while ((len = getline(&line, &cap, fp)) >= 0) {
        n++;
        if (len == 0 || line[len - 1] != '\n' || len > AUDIT_MAX_LINE) {
            rc = AUDIT_ERR_FORMAT;
            *bad_line = n;
            goto out;
        }
        line[--len] = '\0';
        json_error_t jerr;
        json_t *o = json_loadb(line, (size_t)len, 0, &jerr);
        const char *p = o ? json_string_value(json_object_get(o, "prev")) : NULL;
        if (p == NULL) {
            json_decref(o);
            rc = AUDIT_ERR_FORMAT;
            *bad_line = n;
            goto out;
        }
        int same = strcmp(p, prev) == 0;
        json_decref(o);
        if (!same) {
            rc = AUDIT_ERR_CHAIN;
            *bad_line = n;
            goto out;
        }
        hash_line(line, (size_t)len, prev);
        *lines = n;
    }
    if (ferror(fp))
        goto out;
    rc = AUDIT_OK;
out:
    if (head_hex != NULL)
        memcpy(head_hex, prev, sizeof(prev));
    free(line);
    if (fp != NULL)
        fclose(fp);
    return rc;
}
