/*
 * audit.c: hash-chained, synchronously flushed audit log (see audit.h).
 * Appenders queue their records under the mutex; a group-commit round
 * writes everything queued (one flock, one check that the file is still
 * at its path, one write) and syncs it with one fdatasync, so a slow disk
 * delays answers but does not serialise them, and a busy server pays the
 * file's locks and checks once per round, not once per record.
 */
#define _GNU_SOURCE /* fallocate */
#include "audit.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <pwd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "log.h"
#include "store.h"
#include "util.h"

/* Lines are small records; a longer line is corruption, not data. */
#define AUDIT_MAX_LINE 8192
/* [audit] store = db: records per INSERT (one statement, one commit). */
#define AUDIT_DB_BATCH 1000
/* A CLI appender or `audit rotate` holds the file's flock for a few ms.
 * One that was stopped (^Z, a debugger) must not stall every key
 * request behind it for ever: a round gives up after this long and its
 * records fail (the answers become 503 audit_unavailable). */
#define AUDIT_LOCK_WAIT_MS 5000
/* Failed writes (file) and rounds (database) remembered exactly; beyond,
 * everything up to the oldest forgotten one counts as failed (fail closed). */
#define AUDIT_FAILED_RANGES 1024

struct audit_log {
    pthread_mutex_t mu;
    pthread_cond_t synced; /* broadcast when a sync round ends */
    int fd;
    char *path;
    char prev_hex[2 * SHA256_DIGEST_LENGTH + 1];
    int failed; /* the last append failed: checked by audit_check */
    off_t end;  /* file size after our last line: another size means another process appended */
    /* The hash of the file's first line as we last saw it (first_dev and
     * first_ino name the file; "" not known): after a cut, a break at the
     * first line is another appender's, made since, only when that line
     * is not the one the file started with before (file_continues_head). */
    char first_hex[2 * SHA256_DIGEST_LENGTH + 1];
    dev_t first_dev;
    ino_t first_ino;
    long long torn_cut; /* bytes of a torn tail audit_open cut off */
    /* Group commit: records are numbered in write order. Every record
     * <= synced_seq is durable; every record <= failed_seq was covered by
     * a failed fdatasync and is never reported durable (after a failed
     * fsync Linux may have dropped the dirty pages: a later successful
     * sync proves nothing about them). */
    unsigned long long written_seq, synced_seq, failed_seq;
    unsigned long long filed_seq; /* file: every record <= it is in a file (or failed) */
    int syncing; /* one appender runs fdatasync, without the mutex */
    unsigned long long rounds; /* sync rounds completed */
    /* Records wait in `queue` (in seq order, the last one is written_seq)
     * until a round writes (file) or inserts (database) them; appenders
     * take only qmu, so they never wait for a round's write; the round
     * formats and chains them, so a record that cannot be written leaves
     * no hole in the chain. A record that could not be written is failed,
     * exactly (failed ranges), never a neighbour's: its answer may already
     * be out. Database: only the thread running the round (syncing set)
     * touches db, db_seq, need_head and prev_hex. */
    gs_store *db;
    char *instance;
    int64_t db_seq;    /* the instance's last seq in the table */
    int need_head;     /* reload db_seq and prev_hex from the table first */
    pthread_mutex_t qmu; /* queue, nqueue, capqueue, spare, written_seq (taken after mu) */
    struct qrec *queue;
    size_t nqueue, capqueue;
    struct qrec *spare; /* an emptied queue array, kept for the next swap */
    size_t capspare;
    struct failed_range {
        unsigned long long lo, hi;
        bool unreplicated; /* in the audit table on the primary alone, refused (db_flush) */
    } failed_ranges[AUDIT_FAILED_RANGES];
    size_t nfailed;
    unsigned long long failed_floor;
    unsigned lock_wait_ms; /* how long a round waits for another process's flock */
};

/* A queued record. Rendered when it is written, outside every lock: body
 * is its JSON line up to the chain's fields ("{" and its members, no
 * closing brace), so a round only appends them, hashes and writes. A
 * record whose extra repeats one of the line's own fields is kept as a
 * jansson object (obj) instead: jansson replaces such a member where it
 * stands, and the line must stay what it always was. */
struct qrec {
    char *body;
    size_t len;
    json_t *obj;
};

static void qrec_clear(struct qrec *q);
static int sync_round_when_free_locked(struct audit_log *log);
static void account_sync_locked(struct audit_log *log, unsigned long long upto, int src, int serr);
static audit_err lock_current_locked(struct audit_log *log);
static void unlock_file(int fd);

const char *audit_strerror(audit_err err)
{
    switch (err) {
    case AUDIT_OK: return "ok";
    case AUDIT_ERR_NOMEM: return "out of memory";
    case AUDIT_ERR_ARGS: return "invalid arguments";
    case AUDIT_ERR_IO: return "audit log cannot be written";
    case AUDIT_ERR_FORMAT: return "audit log line malformed";
    case AUDIT_ERR_CHAIN: return "audit log hash chain broken";
    case AUDIT_ERR_MISSING: return "an earlier audit log file named by the chain is missing";
    case AUDIT_ERR_TORN: return "audit log ends in an incomplete record (an interrupted write)";
    case AUDIT_ERR_NOT_IN_CHAIN: return "not an earlier file of this audit log's chain";
    case AUDIT_ERR_UNREPLICATED: return "audit records made on the database's primary alone";
    }
    return "unknown audit error";
}

static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void) { sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL); }

/* SHA256() fetches the algorithm from the provider on every call; the
 * chain hashes every record, so it is fetched once (kept to exit). */
static void hash_line(const char *line, size_t len, char hex[2 * SHA256_DIGEST_LENGTH + 1])
{
    unsigned char md[SHA256_DIGEST_LENGTH];

    (void)pthread_once(&sha256_once, sha256_fetch);
    if (sha256_md == NULL || !EVP_Digest(line, len, md, NULL, sha256_md, NULL))
        SHA256((const unsigned char *)line, len, md);
    util_hex(md, sizeof(md), hex);
}

/* Reads the last line of fd (a readable descriptor) into *line (malloc'd,
 * NUL instead of its newline; NULL for an empty file). */
static audit_err read_last_line_at(int fd, char **line, size_t *len, off_t *size)
{
    audit_err rc = AUDIT_ERR_IO;
    struct stat st;
    char *buf = NULL;
    size_t want, got = 0;
    off_t start;

    *line = NULL;
    *len = 0;
    if (fstat(fd, &st) != 0)
        goto out;
    if (size != NULL)
        *size = st.st_size;
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
        ssize_t n = pread(fd, buf + got, want - got, start + (off_t)got);
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
    memmove(buf, buf + begin, end - begin);
    buf[end - begin] = '\0';
    *len = end - begin;
    *line = buf;
    buf = NULL;
    rc = AUDIT_OK;
out:
    free(buf);
    return rc;
}

static audit_err read_last_line(int fd, char **line, size_t *len)
{
    return read_last_line_at(fd, line, len, NULL);
}

/* Hashes the last line of log->fd into log->prev_hex (zeros if empty),
 * and notes the size it was read at in log->end: a later size tells that
 * another process appended. The caller holds the file's flock, or the
 * line and the size could be another appender's apart. */
static audit_err load_chain_head(struct audit_log *log)
{
    char *line = NULL;
    size_t len = 0;
    off_t size = 0;
    audit_err rc = read_last_line_at(log->fd, &line, &len, &size);

    memset(log->prev_hex, '0', sizeof(log->prev_hex) - 1);
    log->prev_hex[sizeof(log->prev_hex) - 1] = '\0';
    if (rc == AUDIT_OK && line != NULL)
        hash_line(line, len, log->prev_hex);
    if (rc == AUDIT_OK)
        log->end = size;
    free(line);
    return rc;
}

/* pread(2) of exactly n bytes at off (a short read is an error here: the
 * caller asks for bytes below the size it has seen under the lock). */
static int pread_all(int fd, char *buf, size_t n, off_t off)
{
    size_t got = 0;

    while (got < n) {
        ssize_t r = pread(fd, buf + got, n - got, off + (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

/* The size of fd's content without its trailing run of NUL bytes (size
 * itself when it ends in none), -1 on a read error. A machine that lost
 * its power during a write may show the file grown but the new blocks
 * zero (XFS does): NUL bytes no record holds (a record is JSON text), as
 * many as the last write was long, which may be more than a record. */
static off_t size_before_nuls(int fd, off_t size)
{
    char buf[4096];

    while (size > 0) {
        size_t want = size > (off_t)sizeof(buf) ? sizeof(buf) : (size_t)size;
        size_t i = want;
        if (pread_all(fd, buf, want, size - (off_t)want) != 0)
            return -1;
        while (i > 0 && buf[i - 1] == '\0')
            i--;
        size -= (off_t)(want - i);
        if (i > 0)
            break;
    }
    return size;
}

/* A write cut short (a crash, a full disk) leaves a fragment after the
 * last newline, and a crash may leave NUL bytes after it too (or after
 * the last newline): neither is a record, and the next record would land
 * on them. Cuts fd (readable and writable) back to its last complete
 * line, or to nothing if it has none; *cut_bytes (may be NULL) is how many
 * bytes that took. AUDIT_ERR_FORMAT: the unterminated tail, without its
 * NUL bytes, is longer than any record we write (not ours: left for
 * `audit verify`). The caller holds the file's flock. */
static audit_err cut_torn_tail(int fd, const char *path, long long *cut_bytes)
{
    struct stat st;
    char buf[AUDIT_MAX_LINE + 1];
    size_t want;
    off_t start, size, cut;

    if (fstat(fd, &st) != 0)
        return AUDIT_ERR_IO;
    if (st.st_size == 0)
        return AUDIT_OK;
    if ((size = size_before_nuls(fd, st.st_size)) < 0)
        return AUDIT_ERR_IO;
    want = size > (off_t)sizeof(buf) ? sizeof(buf) : (size_t)size;
    start = size - (off_t)want;
    if (want > 0 && pread_all(fd, buf, want, start) != 0)
        return AUDIT_ERR_IO;
    if (want > 0 && buf[want - 1] == '\n') {
        if (size == st.st_size)
            return AUDIT_OK;
        cut = size; /* NUL bytes after the last complete line */
    } else {
        size_t end = want > 0 ? want - 1 : 0;
        while (end > 0 && buf[end] != '\n')
            end--;
        if (want > 0 && buf[end] != '\n' && start != 0)
            return AUDIT_ERR_FORMAT;
        cut = want > 0 && buf[end] == '\n' ? start + (off_t)end + 1 : 0;
    }
    if (ftruncate(fd, cut) != 0 || fdatasync(fd) != 0)
        return AUDIT_ERR_IO;
    log_warn(
        "audit log ended in an incomplete record (an interrupted write); cut it off path=\"%s\" bytes=%lld",
        log_qs(path), (long long)(st.st_size - cut));
    if (cut_bytes != NULL)
        *cut_bytes = (long long)(st.st_size - cut);
    return AUDIT_OK;
}

/* The audit log names who unwrapped what. A file its group or others may
 * read is not refused (an operator may mean it: a log reader's group) but
 * said at each open, as `groupsrv check` says it. */
static void warn_if_open_to_others(int fd, const char *path)
{
    struct stat st;

    if (fstat(fd, &st) == 0 && (st.st_mode & 077) != 0)
        log_warn(
            "the audit log is open to its group or others (it names who unwrapped what): chmod 0600 unless "
            "that is meant path=\"%s\" mode=%04o",
            log_qs(path), (unsigned)(st.st_mode & 07777));
}

/* A log with no file or database yet (audit_close frees it); NULL when
 * out of memory. */
static struct audit_log *log_new(const char *path)
{
    struct audit_log *log = calloc(1, sizeof(*log));
    if (log == NULL)
        return NULL;
    log->fd = -1;
    log->lock_wait_ms = AUDIT_LOCK_WAIT_MS;
    pthread_mutex_init(&log->mu, NULL);
    pthread_mutex_init(&log->qmu, NULL);
    pthread_cond_init(&log->synced, NULL);
    if ((log->path = strdup(path)) == NULL) {
        audit_close(log);
        return NULL;
    }
    return log;
}

/* open(2) of an audit log file that takes nothing but a regular file (else
 * -1, errno EINVAL, or EISDIR for a directory): a FIFO put at the path (to
 * ship the log on) would take the records until its buffer filled and then
 * block the key holder's next write for good, every key request timing out;
 * a device would sync nothing. The type is checked before the open, as
 * opening is itself an act on a FIFO (it lets a writer waiting for a reader
 * go) or a device (a tty becomes a session leader's controlling terminal, a
 * tape rewinds at close); checked again on the descriptor, as the path may
 * be swapped between the two. O_NONBLOCK for the open only: opening a FIFO
 * swapped in meanwhile must not wait for its other end; the descriptor kept
 * is blocking (a file system that honours the flag must not answer EAGAIN
 * to a record's write). A link under O_NOFOLLOW is left to open(2) to
 * refuse (ELOOP, as before). */
static int open_regular(const char *path, int flags, mode_t mode)
{
    struct stat st;
    int fd, fl;
    int seen = (flags & O_NOFOLLOW) ? lstat(path, &st) : stat(path, &st);

    if (seen == 0 && !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode)) {
        errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL; /* a directory said as open(2) would */
        return -1;
    }
    /* O_NOCTTY: a tty swapped in between the check and the open must not
     * become the controlling terminal of a process without one. */
    if ((fd = open(path, flags | O_NONBLOCK | O_NOCTTY, mode)) < 0)
        return -1;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        errno = EINVAL;
        return -1;
    }
    if ((fl = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

audit_err audit_open(const char *path, audit_log **out)
{
    audit_err rc = AUDIT_ERR_NOMEM;
    struct audit_log *log = NULL;

    *out = NULL;
    if (path == NULL || *path == '\0')
        return AUDIT_ERR_ARGS;
    if ((log = log_new(path)) == NULL)
        goto out;
    /* Readable too: following a rotation reads the sealed file's end.
     * Never through a symbolic link: `audit rotate` runs as root in a
     * directory the server's user owns, and a link there would make it
     * append its seal to any file (and rotation replaces the path anyway). */
    log->fd = open_regular(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (log->fd < 0) {
        rc = AUDIT_ERR_IO;
        goto out;
    }
    /* A torn tail is cut and the chain head read under the lock other
     * appenders write under: read without it, the head could be the line
     * before a server's append and the size the one after it, and our
     * first record would chain to the wrong line. */
    if (flock(log->fd, LOCK_EX) != 0) {
        rc = AUDIT_ERR_IO;
        goto out;
    }
    rc = cut_torn_tail(log->fd, path, &log->torn_cut);
    if (rc == AUDIT_OK)
        rc = load_chain_head(log);
    unlock_file(log->fd);
    if (rc != AUDIT_OK)
        goto out;
    warn_if_open_to_others(log->fd, path);
    *out = log;
    log = NULL;
out:
    if (log != NULL) {
        int saved = errno; /* the caller says why the open failed */
        audit_close(log);
        errno = saved;
    }
    return rc;
}

/* "name (uid N)" for uid, or "uid N" when the name is unknown. */
static void user_name(uid_t uid, char *buf, size_t cap)
{
    struct passwd pw, *res = NULL;
    char tmp[1024];

    if (getpwuid_r(uid, &pw, tmp, sizeof(tmp), &res) == 0 && res != NULL)
        (void)snprintf(buf, cap, "%s (uid %lu)", pw.pw_name, (unsigned long)uid);
    else
        (void)snprintf(buf, cap, "uid %lu", (unsigned long)uid);
}

/* audit_open_why's words; made_dir: the caller tried to make the log's
 * directory (serve, the admin commands) and could not, else it never does
 * (SIGHUP's reopen) and its words say so. */
static void open_why(const char *path, int err, int made_dir, char *buf, size_t cap)
{
    struct stat st;
    char owner[320], self[320];
    char *dir = NULL;
    int attrs;

    if (cap == 0)
        return;
    (void)snprintf(buf, cap, "%s", strerror(err));
    if (err == ELOOP) {
        (void)snprintf(buf, cap, "a symbolic link (refused: the log must be a regular file)");
    } else if (err == EINVAL) {
        (void)snprintf(buf, cap, "not a regular file (a FIFO or device: refused)");
    } else if (err == EPERM && (attrs = util_file_attrs(path, 0)) != 0) {
        /* An append-only log (chattr +a) opens for appending, so EPERM
         * from it is the cut of a torn last record (a crash), which the
         * attribute forbids; "Operation not permitted" alone sent the
         * operator to the file's mode. An immutable one opens for nothing. */
        (void)snprintf(buf, cap, "%s%s", util_file_attrs_name(attrs),
                       (attrs & UTIL_ATTR_IMMUTABLE)
                           ? ": the server cannot append to it; chattr -i the file"
                           : ", and its last record is torn (an interrupted write): serve cuts that off at "
                             "start, which the attribute forbids: chattr -a the file, start serve, then "
                             "chattr +a it again");
    } else if (err == ENOENT && (dir = util_dir_of(path)) != NULL && stat(dir, &st) != 0 && errno == ENOENT) {
        /* The log's directory is gone (removed, or never made by
         * tmpfiles.d) and the caller could not make it: "No such file or
         * directory" alone reads as the file missing, which is made. */
        user_name(geteuid(), self, sizeof(self));
        if (made_dir)
            (void)snprintf(buf, cap,
                           "its directory %s does not exist, and %s cannot create it: make it for the server's "
                           "user (the packages' /var/log/groupsrv: systemd-tmpfiles --create groupsrv.conf)",
                           dir, self);
        else
            (void)snprintf(buf, cap,
                           "its directory %s does not exist (deleted under the server, which does not make it "
                           "again): make it for the server's user %s (the packages' /var/log/groupsrv: "
                           "systemd-tmpfiles --create groupsrv.conf), then SIGHUP",
                           dir, self);
    } else if (err == EACCES) {
        /* Whose the file is: one left behind by a command run as root
         * refuses the server's user, and the reverse. */
        user_name(geteuid(), self, sizeof(self));
        if (lstat(path, &st) == 0) {
            user_name(st.st_uid, owner, sizeof(owner));
            (void)snprintf(buf, cap, "%s: the file is owned by %s, mode %04o, and was opened as %s", strerror(err),
                           owner, (unsigned)(st.st_mode & 07777), self);
        } else if (errno == ENOENT && (dir = util_dir_of(path)) != NULL && stat(dir, &st) == 0) {
            user_name(st.st_uid, owner, sizeof(owner));
            (void)snprintf(buf, cap,
                           "%s: the file is not there and its directory %s (owned by %s, mode %04o) cannot "
                           "be written by %s", strerror(err), dir, owner, (unsigned)(st.st_mode & 07777), self);
        }
    }
    free(dir);
}

void audit_open_why(const char *path, int err, char *buf, size_t cap)
{
    open_why(path, err, 1, buf, cap);
}

long long audit_torn_bytes_cut(const audit_log *log)
{
    return log != NULL ? log->torn_cut : 0;
}

/* How many records wait in the queue (appenders change it under qmu only). */
static size_t queued(struct audit_log *log)
{
    pthread_mutex_lock(&log->qmu);
    size_t n = log->nqueue;
    pthread_mutex_unlock(&log->qmu);
    return n;
}

void audit_close(audit_log *log)
{
    if (log == NULL)
        return;
    /* Records still queued (an answer nobody waits for any more, such as
     * one for a network process that went away) are written, not lost. */
    pthread_mutex_lock(&log->mu);
    while (queued(log) > 0 && (log->fd >= 0 || log->db != NULL))
        (void)sync_round_when_free_locked(log);
    pthread_mutex_unlock(&log->mu);
    if (log->fd >= 0)
        close(log->fd);
    for (size_t i = 0; i < log->nqueue; i++)
        qrec_clear(&log->queue[i]);
    free(log->queue);
    free(log->spare);
    gs_store_close(log->db);
    free(log->instance);
    pthread_mutex_destroy(&log->mu);
    pthread_mutex_destroy(&log->qmu);
    pthread_cond_destroy(&log->synced);
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

/* fdatasync succeeds on a full disk: whether the next records fit is
 * learnt by reserving room for one more past the end of the file
 * (fallocate with KEEP_SIZE: content and size stay, the blocks are kept
 * for the records). Where the file system cannot, by writing a probe file
 * beside the log. 0 if there is room. */
static int reserve_space(int fd, const char *path)
{
    struct stat st;
    char probe[4096];
    int pfd, rc;

    if (fstat(fd, &st) != 0)
        return -1;
    /* A file-size limit (ulimit -f, systemd's LimitFSIZE=) is not checked
     * by fallocate with KEEP_SIZE: the write past it fails (EFBIG) on a
     * disk with room. Without this, /healthz said the audit log was fine
     * while every key request was refused for want of its record. */
    struct rlimit fsize;
    if (getrlimit(RLIMIT_FSIZE, &fsize) == 0 && fsize.rlim_cur != RLIM_INFINITY &&
        (st.st_size < 0 || (rlim_t)st.st_size + AUDIT_MAX_LINE > fsize.rlim_cur)) {
        errno = EFBIG;
        return -1;
    }
    if (fallocate(fd, FALLOC_FL_KEEP_SIZE, st.st_size, AUDIT_MAX_LINE) == 0)
        return 0;
    if (errno != EOPNOTSUPP && errno != ENOSYS)
        return -1;
    if (snprintf(probe, sizeof(probe), "%s.space-probe", path) >= (int)sizeof(probe))
        return -1;
    if ((pfd = open(probe, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0)
        return -1;
    unlink(probe);
    memset(probe, 0, sizeof(probe));
    rc = write_all(pfd, probe, sizeof(probe)) == 0 && fdatasync(pfd) == 0 ? 0 : -1;
    close(pfd);
    return rc;
}

audit_err audit_check(audit_log *log)
{
    audit_err rc = AUDIT_OK;

    if (log == NULL)
        return AUDIT_ERR_ARGS;
    pthread_mutex_lock(&log->mu);
    if (log->db != NULL) {
        /* After a failure, a round (reconnect, reload the chain head)
         * tells whether the database is back. */
        if (log->failed && sync_round_when_free_locked(log) != 0)
            rc = AUDIT_ERR_IO;
        pthread_mutex_unlock(&log->mu);
        return rc;
    }
    /* The file must still be the one we write (not deleted or replaced),
     * or its successor after `audit rotate`. */
    if (lock_current_locked(log) != AUDIT_OK) {
        rc = AUDIT_ERR_IO;
        goto out;
    }
    int room = reserve_space(log->fd, log->path);
    unlock_file(log->fd);
    if (room != 0) {
        rc = AUDIT_ERR_IO;
        goto out;
    }
    if (log->failed) {
        /* After a failure, a sync round (bookkept like any other, so a
         * failure fails what it covered) tells whether the disk works
         * again; then the next append may try. */
        if (sync_round_when_free_locked(log) != 0)
            rc = AUDIT_ERR_IO;
        else
            log->failed = 0;
    }
out:
    pthread_mutex_unlock(&log->mu);
    return rc;
}

/* The record's time, UTC with milliseconds. The seconds' text is kept per
 * thread: gmtime_r and strftime once a second, not once a record. */
static void now_iso(char *buf, size_t cap)
{
    static _Thread_local time_t base_sec = (time_t)-1;
    static _Thread_local char base[24];
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != base_sec) {
        gmtime_r(&ts.tv_sec, &tm);
        /* strftime cannot overflow-warn the way a %d chain does under FORTIFY. */
        if (strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm) == 0)
            base[0] = '\0';
        base_sec = base[0] != '\0' ? ts.tv_sec : (time_t)-1;
    }
    snprintf(buf, cap, "%s.%03dZ", base, (int)(ts.tv_nsec / 1000000) % 1000);
}

static int set_str(json_t *o, const char *k, const char *v)
{
    if (v == NULL)
        return 0;
    return json_object_set_new(o, k, json_string(v));
}

#define LINE_FLAGS (JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII)

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

/* ---- lines without jansson: the bytes json_dumps(LINE_FLAGS) makes ---------- */

/* One record rendered: far above any real one (an identity is at most
 * 256 bytes, 1.5 KiB escaped; extras are the server's own), a hard cap. */
#define AUDIT_RECORD_MAX (1024 * 1024)

/* A growing buffer of at most max bytes (0: the caller bounds it); err is
 * set by the first failed append: 1 out of memory, 2 over max. */
struct sbuf {
    char *p;
    size_t len, cap, max;
    int err;
};

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
    size_t need;

    if (b->err || n == 0)
        return;
    if (util_size_add(b->len, n, &need) != 0 || (b->max != 0 && need > b->max)) {
        b->err = 2;
        return;
    }
    if (need > b->cap) {
        size_t ncap = b->cap > 0 ? b->cap : 256;
        while (ncap < need && ncap <= SIZE_MAX / 2)
            ncap *= 2;
        char *np = ncap >= need ? realloc(b->p, ncap) : NULL;
        if (np == NULL) {
            b->err = 1;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
    memcpy(b->p + b->len, s, n);
    b->len = need;
}

static void sb_lit(struct sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* The code point of the UTF-8 sequence at s (at most n bytes) and its
 * length, or 0 when it is not valid UTF-8 by jansson's rules (json_string
 * refuses such a string): no overlong forms, no surrogates, nothing past
 * U+10FFFF, no sequence cut short. */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    size_t len;
    uint32_t v;

    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    if (s[0] >= 0xC2 && s[0] <= 0xDF)
        len = 2, v = s[0] & 0x1F;
    else if (s[0] >= 0xE0 && s[0] <= 0xEF)
        len = 3, v = s[0] & 0x0F;
    else if (s[0] >= 0xF0 && s[0] <= 0xF4)
        len = 4, v = s[0] & 0x07;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF) || (len == 3 && v < 0x800) || (len == 4 && v < 0x10000))
        return 0;
    *cp = v;
    return len;
}

static void sb_u16(struct sbuf *b, uint32_t unit)
{
    static const char hex[] = "0123456789ABCDEF";
    char e[6] = {'\\', 'u', hex[(unit >> 12) & 15], hex[(unit >> 8) & 15], hex[(unit >> 4) & 15], hex[unit & 15]};

    sb_put(b, e, sizeof(e));
}

/* s as a JSON string the way jansson writes it with JSON_ENSURE_ASCII:
 * printable ASCII as is (DEL too), '"' and '\\' escaped, \b \f \n \r \t,
 * other control characters and everything past ASCII as \uXXXX (upper
 * case; a surrogate pair past the BMP). -1 (nothing promised about b)
 * for a string that is not valid UTF-8. */
static int sb_json_str(struct sbuf *b, const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t n = strlen(str), run = 0;

    sb_put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            run++;
            i++;
            continue;
        }
        sb_put(b, (const char *)s + i - run, run);
        run = 0;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sb_put(b, e, 2);
            i++;
        } else if (c < 0x20) {
            const char *e = c == '\b' ? "\\b" : c == '\f' ? "\\f" : c == '\n' ? "\\n" : c == '\r' ? "\\r"
                          : c == '\t' ? "\\t" : NULL;
            if (e != NULL)
                sb_put(b, e, 2);
            else
                sb_u16(b, c);
            i++;
        } else {
            uint32_t cp = 0;
            size_t len = utf8_next(s + i, n - i, &cp);
            if (len == 0)
                return -1;
            if (cp < 0x10000) {
                sb_u16(b, cp);
            } else {
                cp -= 0x10000;
                sb_u16(b, 0xD800 | (cp >> 10));
                sb_u16(b, 0xDC00 | (cp & 0x3FF));
            }
            i += len;
        }
    }
    sb_put(b, (const char *)s + n - run, run);
    sb_put(b, "\"", 1);
    return 0;
}

/* ,"key":"value" (nothing for NULL); -1 for a value that is not UTF-8. */
static int sb_field(struct sbuf *b, const char *key, const char *value)
{
    if (value == NULL)
        return 0;
    sb_put(b, ",\"", 2);
    sb_lit(b, key);
    sb_put(b, "\":", 2);
    return sb_json_str(b, value);
}

/* Members a record's line has of its own: an extra repeating one of them
 * is left to jansson (see struct qrec). */
static const char *const line_fields[] = {"time",   "request_id", "action",   "identity", "group", "method",
                                          "key_version", "outcome", "instance", "seq",      "prev"};

static int extra_repeats_a_field(json_t *extra)
{
    for (size_t i = 0; i < GS_ARRAY_LEN(line_fields); i++)
        if (json_object_get(extra, line_fields[i]) != NULL)
            return 1;
    return 0;
}

static void qrec_clear(struct qrec *q)
{
    free(q->body);
    json_decref(q->obj);
    memset(q, 0, sizeof(*q));
}

/* Renders rec into q: the members record_json makes, in its order, with
 * jansson's escaping; extra's members (dumped by jansson) after them. */
static audit_err render_record(const audit_record *rec, struct qrec *q)
{
    struct sbuf b = {.max = AUDIT_RECORD_MAX};
    char when[40], num[32];
    json_t *extra = rec->extra != NULL && json_is_object((json_t *)rec->extra) ? rec->extra : NULL;
    char *dump = NULL;
    int bad = 0;

    memset(q, 0, sizeof(*q));
    if (extra != NULL && extra_repeats_a_field(extra))
        return (q->obj = record_json(rec)) != NULL ? AUDIT_OK : AUDIT_ERR_NOMEM;
    now_iso(when, sizeof(when));
    sb_put(&b, "{\"time\":", 8);
    bad |= sb_json_str(&b, when);
    bad |= sb_field(&b, "request_id", rec->request_id);
    bad |= sb_field(&b, "action", rec->action);
    bad |= sb_field(&b, "identity", rec->identity);
    bad |= sb_field(&b, "group", rec->group);
    bad |= sb_field(&b, "method", rec->method);
    if (rec->key_version >= 0) {
        int n = snprintf(num, sizeof(num), ",\"key_version\":%ld", rec->key_version);
        sb_put(&b, num, n > 0 && (size_t)n < sizeof(num) ? (size_t)n : 0);
    }
    bad |= sb_field(&b, "outcome", rec->outcome);
    if (extra != NULL && json_object_size(extra) > 0) {
        /* "{...}": its members go on after ours, as json_object_update
         * appends them */
        size_t n;
        if ((dump = json_dumps(extra, LINE_FLAGS)) == NULL || (n = strlen(dump)) < 2) {
            bad = 1;
        } else {
            sb_put(&b, ",", 1);
            sb_put(&b, dump + 1, n - 2);
        }
    }
    free(dump);
    if (bad || b.err) {
        /* Not UTF-8: json_string refused it, and record_json failed. */
        free(b.p);
        return b.err == 2 ? AUDIT_ERR_ARGS : AUDIT_ERR_NOMEM;
    }
    q->body = b.p;
    q->len = b.len;
    return AUDIT_OK;
}

/* Appends q's line chained to prev to b (the file's form: instance NULL;
 * the database's: instance and seq too), without its newline. */
static audit_err qrec_put_line(struct sbuf *b, const struct qrec *q, const char *instance, long long seq,
                               const char *prev)
{
    if (q->obj != NULL) {
        char *line;
        if ((instance != NULL && (json_object_set_new(q->obj, "instance", json_string(instance)) ||
                                  json_object_set_new(q->obj, "seq", json_integer(seq)))) ||
            json_object_set_new(q->obj, "prev", json_string(prev)) || (line = json_dumps(q->obj, LINE_FLAGS)) == NULL)
            return AUDIT_ERR_NOMEM;
        sb_lit(b, line);
        free(line);
        return b->err ? AUDIT_ERR_NOMEM : AUDIT_OK;
    }
    sb_put(b, q->body, q->len);
    if (instance != NULL) {
        char num[32];
        int n = snprintf(num, sizeof(num), ",\"seq\":%lld", seq);
        if (sb_field(b, "instance", instance) != 0)
            return AUDIT_ERR_NOMEM;
        sb_put(b, num, n > 0 && (size_t)n < sizeof(num) ? (size_t)n : 0);
    }
    sb_put(b, ",\"prev\":\"", 9);
    sb_lit(b, prev);
    sb_put(b, "\"}", 2);
    return b->err ? AUDIT_ERR_NOMEM : AUDIT_OK;
}

static void fail_range_locked(struct audit_log *log, unsigned long long lo, unsigned long long hi,
                              bool unreplicated);

/* Queued records taken by a round: seq first.. in order. */
struct batch {
    struct qrec *recs;
    size_t n, cap;
    unsigned long long first;
    struct qrec one; /* recs when no array could be had: a batch of one */
};

/* Takes every queued record (up to max) off the queue (mutex held). */
static void take_queue_locked(struct audit_log *log, size_t max, struct batch *b)
{
    pthread_mutex_lock(&log->qmu);
    b->n = log->nqueue < max ? log->nqueue : max;
    b->first = log->written_seq - log->nqueue + 1;
    b->recs = NULL;
    b->cap = b->n;
    if (b->n == log->nqueue) {
        /* All of it: the array goes with the batch, the spare becomes the queue. */
        b->recs = log->queue;
        b->cap = log->capqueue;
        log->queue = log->spare;
        log->capqueue = log->capspare;
        log->spare = NULL;
        log->capspare = 0;
        log->nqueue = 0;
    } else {
        /* Part of it (a database round's limit). Out of memory, the round
         * still takes one record: taking none would leave a caller that
         * loops until the queue is empty spinning for ever. */
        if ((b->recs = malloc(b->n * sizeof(*b->recs))) == NULL) {
            b->recs = &b->one;
            b->n = 1;
            b->cap = 0;
        }
        memcpy(b->recs, log->queue, b->n * sizeof(*b->recs));
        memmove(log->queue, log->queue + b->n, (log->nqueue - b->n) * sizeof(*b->recs));
        log->nqueue -= b->n;
    }
    pthread_mutex_unlock(&log->qmu);
}

/* Drops a taken batch's records and keeps its array as the spare. */
static void batch_done(struct audit_log *log, struct batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        qrec_clear(&b->recs[i]);
    if (b->recs == &b->one)
        b->recs = NULL;
    if (b->recs != NULL) {
        pthread_mutex_lock(&log->qmu);
        if (log->spare == NULL) {
            log->spare = b->recs;
            log->capspare = b->cap;
            b->recs = NULL;
        }
        pthread_mutex_unlock(&log->qmu);
    }
    free(b->recs);
    b->recs = NULL;
    b->n = 0;
}

/* A taken batch that is never written: failed, every record of it. */
static void fail_batch_locked(struct audit_log *log, struct batch *b)
{
    if (b->n > 0) {
        fail_range_locked(log, b->first, b->first + b->n - 1, false);
        log->filed_seq = b->first + b->n - 1;
    }
    batch_done(log, b);
}

/* Appends q's line, chained to the head, and its newline to buf (mutex
 * held) and moves the head to it. AUDIT_ERR_ARGS (buf as it was) for a
 * line too long to be a record. */
static audit_err put_chained_locked(struct audit_log *log, struct sbuf *buf, const struct qrec *q)
{
    size_t start = buf->len;
    audit_err rc = qrec_put_line(buf, q, NULL, 0, log->prev_hex);

    if (rc != AUDIT_OK)
        return rc;
    if (buf->len - start >= AUDIT_MAX_LINE) {
        buf->len = start;
        return AUDIT_ERR_ARGS;
    }
    /* The head moves only once the whole line is in the buffer: a caller
     * that fails here must find it where it was. */
    sb_put(buf, "\n", 1);
    if (buf->err) {
        buf->len = start;
        return AUDIT_ERR_NOMEM;
    }
    hash_line(buf->p + start, buf->len - start - 1, log->prev_hex);
    return AUDIT_OK;
}

/* Writes a taken batch (mutex and flock held) with one write, each line
 * chained to the one before. A record too long to be a line is failed
 * alone; a failed write fails the whole batch and cuts back what it left,
 * so the chain head is as before it. */
static void write_batch_flocked(struct audit_log *log, struct batch *b)
{
    char head[sizeof(log->prev_hex)];
    struct sbuf buf = {0};
    int ok = 0;

    if (b->n == 0) {
        batch_done(log, b);
        return;
    }
    memcpy(head, log->prev_hex, sizeof(head));
    for (size_t i = 0; i < b->n; i++) {
        audit_err rc = put_chained_locked(log, &buf, &b->recs[i]);
        if (rc == AUDIT_ERR_ARGS) {
            log_error("audit record too long: refused seq=%llu", b->first + i);
            fail_range_locked(log, b->first + i, b->first + i, false);
            continue;
        }
        if (rc != AUDIT_OK)
            goto out;
    }
    if (buf.len > 0 && write_all(log->fd, buf.p, buf.len) != 0) {
        log_error("audit append failed path=\"%s\" errno=%d records=%zu", log_qs(log->path), errno, b->n);
        /* A short write (a full disk) leaves a fragment: cut it off now, or
         * the next record lands on it. If that fails too, the next lock
         * finds the file longer than our last line and cuts it then. */
        if (ftruncate(log->fd, log->end) != 0)
            log_error("cannot cut an incomplete audit record path=\"%s\" errno=%d", log_qs(log->path), errno);
        goto out;
    }
    /* The lines are in the file: the next one chains to the last, whatever
     * the sync says (the chain follows the file's order). */
    log->end += (off_t)buf.len;
    ok = 1;
out:
    free(buf.p);
    if (!ok) {
        log->failed = 1;
        memcpy(log->prev_hex, head, sizeof(head));
        fail_batch_locked(log, b);
        return;
    }
    log->filed_seq = b->first + b->n - 1;
    batch_done(log, b);
}

/* Appends q as one line chained to the head (mutex and flock held) and
 * returns its sequence number in *seq; what is queued goes first, and
 * nothing is queued meanwhile (numbers grow in file order). */
static audit_err put_line_locked(struct audit_log *log, const struct qrec *q, unsigned long long *seq)
{
    audit_err rc;
    char head[sizeof(log->prev_hex)];
    struct sbuf line = {0};
    struct batch b;

    for (;;) {
        take_queue_locked(log, SIZE_MAX, &b);
        write_batch_flocked(log, &b);
        pthread_mutex_lock(&log->qmu);
        if (log->nqueue == 0)
            break; /* held from here: nothing is queued until our line is in */
        pthread_mutex_unlock(&log->qmu);
    }
    memcpy(head, log->prev_hex, sizeof(head));
    if ((rc = put_chained_locked(log, &line, q)) != AUDIT_OK)
        goto out;
    rc = AUDIT_ERR_IO;
    if (write_all(log->fd, line.p, line.len) != 0) {
        int werr = errno;
        log->failed = 1;
        memcpy(log->prev_hex, head, sizeof(head));
        log_error("audit append failed path=\"%s\" errno=%d", log_qs(log->path), werr);
        if (ftruncate(log->fd, log->end) != 0)
            log_error("cannot cut an incomplete audit record path=\"%s\" errno=%d", log_qs(log->path), errno);
        goto out;
    }
    log->end += (off_t)line.len;
    *seq = ++log->written_seq;
    log->filed_seq = log->written_seq;
    rc = AUDIT_OK;
out:
    pthread_mutex_unlock(&log->qmu);
    free(line.p);
    return rc;
}

/* Queues one rendered record (qmu held; q is moved into the queue on
 * success); the round that writes or inserts it chains it. */
static audit_err queue_qlocked(struct audit_log *log, struct qrec *q, unsigned long long *seq)
{
    if (log->nqueue == log->capqueue) {
        size_t ncap = log->capqueue ? 2 * log->capqueue : 64, bytes;
        struct qrec *nq;
        if (util_size_mul(ncap, sizeof(*nq), &bytes) != 0 || (nq = realloc(log->queue, bytes)) == NULL)
            return AUDIT_ERR_NOMEM;
        log->queue = nq;
        log->capqueue = ncap;
    }
    log->queue[log->nqueue++] = *q;
    memset(q, 0, sizeof(*q));
    *seq = ++log->written_seq;
    return AUDIT_OK;
}

/* One group-commit round (mutex held, released during fdatasync): covers
 * every line written before it started. The caller has checked that no
 * other round is running. Returns 0, or -1 if the fdatasync failed. */
static int db_round_locked(struct audit_log *log);

static int sync_round_locked(struct audit_log *log)
{
    if (log->db != NULL)
        return db_round_locked(log);
    struct batch b;
    take_queue_locked(log, SIZE_MAX, &b);
    if (b.n > 0) {
        /* Records must land in the configured file: if it was deleted or
         * moved away, writing to the orphaned inode would lose them. */
        if (lock_current_locked(log) != AUDIT_OK) {
            log->failed = 1;
            log_error("audit log cannot be appended to (not at its path, or its last line torn) path=\"%s\" "
                      "records=%zu",
                      log_qs(log->path), b.n);
            fail_batch_locked(log, &b);
        } else {
            write_batch_flocked(log, &b);
            unlock_file(log->fd);
        }
    } else {
        batch_done(log, &b); /* an empty one's array */
    }
    unsigned long long upto = log->filed_seq;

    log->syncing = 1;
    pthread_mutex_unlock(&log->mu);
    int src = fdatasync(log->fd);
    int serr = errno;
    pthread_mutex_lock(&log->mu);
    log->syncing = 0;
    account_sync_locked(log, upto, src, serr);
    return src != 0 ? -1 : 0;
}

/* Books the result of an fdatasync that covered every record up to upto
 * (mutex held) and wakes whoever waits for it. */
static void account_sync_locked(struct audit_log *log, unsigned long long upto, int src, int serr)
{
    log->rounds++;
    if (src != 0) {
        /* Lines that may share the failed sync's pages, and Linux reports
         * a write-back error only once: a later successful sync proves
         * nothing about them either. Records queued while it ran are
         * failed too (fail closed: their requests are refused with 503,
         * never answered on a doubtful log). */
        log->failed = 1;
        pthread_mutex_lock(&log->qmu);
        unsigned long long written = log->written_seq;
        pthread_mutex_unlock(&log->qmu);
        if (written > log->failed_seq)
            log->failed_seq = written;
        log_error("audit sync failed path=\"%s\" errno=%d records=%llu", log_qs(log->path), serr,
                  written - log->synced_seq);
    } else if (upto > log->synced_seq) {
        log->synced_seq = upto;
    }
    pthread_cond_broadcast(&log->synced);
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
 * answer was still held when it happened, is then failed too (fail closed).
 * -2 (failed) when each failed round that covered them made its rows on
 * the primary alone: the 503 can say they are in the table. */
static int range_state_locked(const struct audit_log *log, unsigned long long first, unsigned long long last)
{
    bool unreplicated = false;

    if (first <= log->failed_seq || first <= log->failed_floor)
        return -1;
    for (size_t i = 0; i < log->nfailed; i++)
        if (first <= log->failed_ranges[i].hi && last >= log->failed_ranges[i].lo) {
            if (!log->failed_ranges[i].unreplicated)
                return -1;
            unreplicated = true;
        }
    if (unreplicated)
        return -2;
    return last <= log->synced_seq ? 1 : 0;
}

/* ---- [audit] store = db ------------------------------------------------------ */

/* Reloads the chain head (db_seq, prev_hex) from the table; quiet: a
 * failure is not logged (the caller's retries log once, not each try). */
static int db_load_head_as(struct audit_log *log, bool quiet)
{
    int64_t seq = 0;
    char *line = NULL;
    gs_err ge = gs_store_audit_head(log->db, log->instance, &seq, &line);

    if (ge != GS_OK) {
        if (!quiet)
            log_error("audit head unreadable instance=%s err=\"%s\" detail=\"%s\"", log->instance,
                      gs_strerror(ge), log_qs(gs_err_detail()));
        return -1;
    }
    if (line != NULL) {
        hash_line(line, strlen(line), log->prev_hex);
        free(line);
    } else {
        memset(log->prev_hex, '0', sizeof(log->prev_hex) - 1);
        log->prev_hex[sizeof(log->prev_hex) - 1] = '\0';
    }
    log->db_seq = seq;
    log->need_head = 0;
    return 0;
}

static int db_load_head(struct audit_log *log) { return db_load_head_as(log, false); }

/* 1 when rows seq+1..seq+n of the chain are lines[0..n), 0 when not, -1
 * when the table cannot be read. */
static int db_lines_there(struct audit_log *log, int64_t seq, char *const *lines, size_t n)
{
    gs_store_audit_row *rows = NULL;
    size_t got = 0;
    int there;

    if (gs_store_audit_read(log->db, log->instance, seq, n, &rows, &got) != GS_OK)
        return -1;
    there = got == n;
    for (size_t i = 0; there && i < n; i++)
        there = rows[i].seq == seq + 1 + (int64_t)i && strcmp(rows[i].line, lines[i]) == 0;
    gs_store_audit_rows_free(rows, got);
    return there;
}

/* The insert of lines (n records after the head log holds, the last
 * hashing to prev_after) failed with GS_ERR_DB_UNAVAILABLE: its connection
 * was lost (the database restarted or failed over, the session was
 * ended), no answer came in time, or it waited out lock_timeout for a
 * lock another session holds (LOCK TABLE audit, VACUUM FULL: then nothing
 * was inserted, but the lock may be gone by the second try). Whether it
 * committed is in the table. Committed (only the acknowledgement was
 * lost): GS_OK. Not there and the chain as it was: once more, on a new
 * connection, so that a request already carried out (a member removed, a
 * group created) keeps its record and its answer. Anything else: an
 * error, and the caller reloads the head. The log names the cause: a lock
 * is no lost connection, and an operator looking for a database restart
 * would not find one. */
static gs_err db_append_again(struct audit_log *log, char *const *lines, size_t n, const char *prev_after)
{
    int64_t seq = log->db_seq;
    char head[sizeof(log->prev_hex)];
    gs_db_cause cause = gs_err_db_cause();
    const char *why = cause == GS_DB_CAUSE_LOCKED ? "waited lock_timeout for a lock another session holds (the "
                                                    "audit table locked?) and was not made"
                      : cause == GS_DB_CAUSE_NO_ANSWER ? "got no answer within [db] timeout"
                      : cause == GS_DB_CAUSE_READ_ONLY ? "met a read-only database"
                                                       : "lost its database connection";

    memcpy(head, log->prev_hex, sizeof(head));
    log_warn("audit insert %s; checking the table instance=%s records=%zu detail=\"%s\"", why,
             log->instance, n, log_qs(gs_err_detail()));
    /* The insert went out and its connection was lost, and the database
     * cannot be reached just now (restarting, a proxy in between
     * restarting): the rows may still commit, after a 503 that said they
     * were not made. While the store says so, the lookup is tried again
     * for up to [db] timeout plus a second; the answers are held anyway.
     * The first failure is logged, then only how the tries ended: one
     * line each 200 ms was up to ~55 lines for one lost insert. */
    double until = util_monotonic_s() + (double)gs_store_timeout() + 1.0;
    unsigned tries = 0;
    while (db_load_head_as(log, tries > 0) != 0) {
        tries++;
        if (!gs_store_write_unsettled(log->db) || util_monotonic_s() >= until) {
            /* Still unsettled: the insert may have committed (a COMMIT
             * waiting for a synchronous standby when the postmaster was
             * killed is in the WAL, kept by crash recovery), so the log
             * must not say its records were not written. */
            if (tries > 1)
                log_error("audit head still unreadable, lookup given up%s instance=%s tries=%u "
                          "detail=\"%s\"",
                          gs_store_write_unsettled(log->db)
                              ? ": whether the insert committed is not known; once the database is back its "
                                "records may be in the table, for requests answered 503"
                              : "",
                          log->instance, tries, log_qs(gs_err_detail()));
            return GS_ERR_DB_UNAVAILABLE;
        }
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 200 * 1000 * 1000};
        (void)nanosleep(&ts, NULL);
    }
    if (tries > 0)
        log_info("audit head readable again instance=%s tries=%u", log->instance, tries + 1);
    if (log->db_seq == seq + (int64_t)n && strcmp(log->prev_hex, prev_after) == 0) {
        log->db_seq = seq; /* the caller moves the head on */
        memcpy(log->prev_hex, head, sizeof(head));
        return GS_OK;
    }
    /* Committed, and another writer appended after it: an admin command
     * whose answer was lost lost its chain lock with the connection, and
     * the next command chained after its rows. Undone, it left its ok
     * record standing. The lines hold their seq and the hash of the line
     * before, so no other rows can be them; another command's record there
     * matches only if it is these bytes (same millisecond, operator and
     * change, after the same head). The head is read again at the next
     * round (a shared chain's always is). */
    if (log->db_seq > seq + (int64_t)n && db_lines_there(log, seq, lines, n) == 1) {
        log_warn("audit insert: the first try committed, and the chain moved on after it instance=%s records=%zu",
                 log->instance, n);
        log->db_seq = seq; /* the caller moves the head on */
        memcpy(log->prev_hex, head, sizeof(head));
        log->need_head = 1;
        return GS_OK;
    }
    if (log->db_seq != seq || strcmp(log->prev_hex, head) != 0)
        return gs_err_set(GS_ERR_DB, "the audit chain moved on while its insert failed");
    /* The first try is not in the table, and its backend is gone (the
     * lookup's connection ended it, or found it ended): that try made
     * nothing, on the primary or anywhere, so what the store said of its
     * commit (a backend gone while synchronous standbys are asked for
     * counts as made on the primary alone) is about no row. Only this
     * second try's own commit counts: kept, under [db] unreplicated_writes
     * = refuse a primary restarted mid-insert (or the session ended by
     * the DBA) had every request in flight answered 503, their records
     * in the table and on the standby. */
    (void)gs_store_take_unreplicated(log->db);
    gs_err ge = gs_store_audit_append(log->db, log->instance, seq + 1, lines, n);
    /* The first insert was still running on the server when the lookup
     * did not see it (no answer within [db] timeout: its backend kept
     * going, here a commit that took that long), and committed while the
     * second waited for its seq: the rows are these lines, once. Without
     * this the change was undone and answered 503 with its record in the
     * table (an admin command's chain even wrote it twice, after the
     * other). */
    if (ge == GS_ERR_EXISTS && db_lines_there(log, seq, lines, n) == 1) {
        log_warn("audit insert: the first try committed after all instance=%s records=%zu", log->instance, n);
        return GS_OK;
    }
    return ge;
}

/* The admin commands' chain (INSTANCE/admin, store.h) is written by every
 * admin command that runs: they take turns under the chain's lock in the
 * database (without it, 40 commands at once left some with their change
 * made and no record after all their tries). One whose seq is taken all
 * the same (a writer without the lock: an older version, a lock lost with
 * its connection) reads the head again and chains after it, this many
 * times. A server's own chain has one writer: there a taken seq fails
 * closed. */
#define DB_SHARED_CHAIN_TRIES 8

static bool db_chain_shared(const struct audit_log *log)
{
    size_t n = strlen(log->instance), sn = strlen(GS_AUDIT_ADMIN_SUFFIX);

    return n > sn && strcmp(log->instance + n - sn, GS_AUDIT_ADMIN_SUFFIX) == 0;
}

/* Numbers, chains and inserts batch[0..n) in one statement (synchronous
 * commit): 0 when committed; -2 when committed on the primary alone and
 * refused ([db] unreplicated_writes = refuse), -1 for any other failure.
 * Runs without the mutex, as the one round. */
static int db_flush(struct audit_log *log, struct qrec *batch, size_t n)
{
    char **lines = NULL;
    char prev[sizeof(log->prev_hex)];
    int rc = -1;
    size_t made = 0;
    gs_err ge;
    bool shared = n > 0 && db_chain_shared(log);

    if (shared && gs_store_audit_chain_lock(log->db, log->instance) != GS_OK) {
        log_error("audit chain lock failed instance=%s detail=\"%s\"", log->instance, log_qs(gs_err_detail()));
        log->need_head = 1;
        return -1;
    }
    /* a shared chain's head as it is now, under its lock: others append */
    if ((log->need_head || shared) && db_load_head(log) != 0)
        goto out;
    if (n == 0) {
        rc = 0;
        goto out;
    }
    if ((lines = calloc(n, sizeof(*lines))) == NULL)
        goto out;
    (void)gs_store_take_unreplicated(log->db); /* only what this round's inserts leave counts */
    for (unsigned tries = 1;; tries++) {
        memcpy(prev, log->prev_hex, sizeof(prev));
        for (; made < n; made++) {
            struct sbuf line = {0};
            long long seq = (long long)(log->db_seq + 1 + (int64_t)made);
            audit_err ae = qrec_put_line(&line, &batch[made], log->instance, seq, prev);
            sb_put(&line, "", 1); /* a C string for the store */
            if (ae != AUDIT_OK || line.err) {
                free(line.p);
                goto out;
            }
            lines[made] = line.p;
            hash_line(line.p, line.len - 1, prev);
        }
        ge = gs_store_audit_append(log->db, log->instance, log->db_seq + 1, lines, n);
        if (ge == GS_ERR_DB_UNAVAILABLE)
            ge = db_append_again(log, lines, n, prev);
        /* The record the head in memory names is not in the table: the
         * database failed over to a standby that lacked the chain's last
         * records (asynchronous, or written on the primary alone), or was
         * restored from a backup. Those records are lost with the rest of
         * what the old primary alone had; the chain continues after the
         * last record the table has, as a server started now would, rather
         * than leave a gap that audit verify reports as records deleted. */
        bool behind = ge == GS_ERR_NOT_FOUND;
        if (behind)
            log_error("audit chain: its last records are not in the database (a failover to a standby that lacked "
                      "them, a restored backup?); continuing after the last record there instance=%s seq=%lld "
                      "detail=\"%s\"",
                      log->instance, (long long)log->db_seq, log_qs(gs_err_detail()));
        if (!(behind || (ge == GS_ERR_EXISTS && db_chain_shared(log))) || tries == DB_SHARED_CHAIN_TRIES)
            break;
        /* another admin command took the seq (or the table's head is
         * older): the lines again, after the head the table has */
        for (size_t i = 0; i < made; i++) {
            free(lines[i]);
            lines[i] = NULL;
        }
        made = 0;
        if (db_load_head(log) != 0)
            goto out;
    }
    if (ge != GS_OK) {
        log_error("audit insert failed instance=%s records=%zu err=\"%s\" detail=\"%s\"", log->instance, n,
                  gs_strerror(ge), log_qs(gs_err_detail()));
        goto out;
    }
    /* [db] unreplicated_writes = refuse: the rows are in the table, but on
     * the primary alone (every synchronous standby down, the COMMIT's wait
     * ended by the server: store_pg.c, end_orphan). A failover may lose
     * them, so their requests are not answered as done (503, the key not
     * given): an ok record of a request that was refused stays, never an
     * answer whose record a failover could take away. The head is read
     * again from the table, which holds them. */
    if (gs_store_take_unreplicated(log->db) && gs_store_refuse_unreplicated()) {
        log_error("audit insert made on the primary alone (no synchronous standby had it); its requests refused "
                  "([db] unreplicated_writes = refuse) instance=%s records=%zu",
                  log->instance, n);
        rc = -2;
        goto out;
    }
    log->db_seq += (int64_t)n;
    memcpy(log->prev_hex, prev, sizeof(prev));
    rc = 0;
out:
    /* After any failure the table is the truth: a commit whose answer was
     * lost may or may not have happened. */
    if (rc != 0)
        log->need_head = 1;
    for (size_t i = 0; i < made && lines != NULL; i++)
        free(lines[i]);
    free(lines);
    if (shared)
        gs_store_audit_chain_unlock(log->db, log->instance);
    return rc;
}

/* Records lo..hi were never written (or, unreplicated, written on the
 * database primary alone and refused): failed, exactly (mutex held). */
static void fail_range_locked(struct audit_log *log, unsigned long long lo, unsigned long long hi,
                              bool unreplicated)
{
    if (log->nfailed > 0 && log->failed_ranges[log->nfailed - 1].hi + 1 == lo &&
        log->failed_ranges[log->nfailed - 1].unreplicated == unreplicated) {
        log->failed_ranges[log->nfailed - 1].hi = hi;
        return;
    }
    if (log->nfailed == AUDIT_FAILED_RANGES) {
        log->failed_floor = log->failed_ranges[0].hi;
        memmove(&log->failed_ranges[0], &log->failed_ranges[1], (log->nfailed - 1) * sizeof(log->failed_ranges[0]));
        log->nfailed--;
    }
    log->failed_ranges[log->nfailed].lo = lo;
    log->failed_ranges[log->nfailed].hi = hi;
    log->failed_ranges[log->nfailed].unreplicated = unreplicated;
    log->nfailed++;
}

/* The database form of a group-commit round (mutex held, released during
 * the insert): takes up to AUDIT_DB_BATCH queued records. */
static int db_round_locked(struct audit_log *log)
{
    struct batch b;

    take_queue_locked(log, AUDIT_DB_BATCH, &b);
    size_t n = b.n;
    unsigned long long first = b.first, upto = first + n - 1;
    log->syncing = 1;
    pthread_mutex_unlock(&log->mu);
    int rc = db_flush(log, b.recs, n);
    batch_done(log, &b);
    pthread_mutex_lock(&log->mu);
    log->syncing = 0;
    log->rounds++;
    if (rc != 0) {
        log->failed = 1;
        if (n > 0)
            fail_range_locked(log, first, upto, rc == -2);
    } else {
        log->failed = 0;
    }
    if (n > 0 && upto > log->synced_seq)
        log->synced_seq = upto;
    pthread_cond_broadcast(&log->synced);
    return rc;
}

audit_err audit_open_db(const char *db_location, const char *instance, audit_log **out)
{
    audit_err rc = AUDIT_ERR_NOMEM;
    struct audit_log *log = NULL;
    gs_err ge;

    *out = NULL;
    if (db_location == NULL || instance == NULL || *instance == '\0' || strlen(instance) > GS_AUDIT_CHAIN_MAX)
        return AUDIT_ERR_ARGS;
    if ((log = log_new("database")) == NULL || (log->instance = strdup(instance)) == NULL)
        goto out;
    if ((ge = gs_store_open(db_location, 0, &log->db)) != GS_OK) {
        log_error("audit database unavailable err=\"%s\" detail=\"%s\"", gs_strerror(ge),
                  log_qs(gs_err_detail()));
        rc = AUDIT_ERR_IO;
        goto out;
    }
    if (db_load_head(log) != 0) {
        rc = AUDIT_ERR_IO;
        goto out;
    }
    log_info("audit chain in the database instance=%s records=%lld", instance, (long long)log->db_seq);
    *out = log;
    log = NULL;
    rc = AUDIT_OK;
out:
    audit_close(log);
    return rc;
}

/* Checks one row of an instance's chain against what precedes it. */
static audit_err verify_row(const char *instance, const gs_store_audit_row *row, const char *prev)
{
    json_error_t jerr;
    json_t *o = json_loads(row->line, 0, &jerr);
    const char *p = json_string_value(json_object_get(o, "prev"));
    const char *inst = json_string_value(json_object_get(o, "instance"));
    json_t *seq = json_object_get(o, "seq");
    audit_err rc = AUDIT_OK;

    if (p == NULL || inst == NULL || !json_is_integer(seq))
        rc = AUDIT_ERR_FORMAT;
    else if (strcmp(inst, instance) != 0 || json_integer_value(seq) != row->seq || strcmp(p, prev) != 0)
        rc = AUDIT_ERR_CHAIN;
    json_decref(o);
    return rc;
}

/* One instance's chain: gaps are reported and verification goes on after
 * them; a broken link stops it. */
static audit_err verify_instance(gs_store *st, const char *instance, FILE *report)
{
    char prev[2 * SHA256_DIGEST_LENGTH + 1];
    int64_t expect = 1, after = 0;
    size_t good = 0, gaps = 0;
    audit_err rc = AUDIT_OK;

    memset(prev, '0', sizeof(prev) - 1);
    prev[sizeof(prev) - 1] = '\0';
    for (;;) {
        gs_store_audit_row *rows = NULL;
        size_t n = 0;
        gs_err ge = gs_store_audit_read(st, instance, after, 1000, &rows, &n);
        if (ge != GS_OK) {
            fprintf(report, "instance %s: cannot read: %s\n", instance, gs_err_detail());
            return AUDIT_ERR_IO;
        }
        if (n == 0) {
            gs_store_audit_rows_free(rows, n);
            break;
        }
        for (size_t i = 0; i < n && rc != AUDIT_ERR_CHAIN && rc != AUDIT_ERR_FORMAT; i++) {
            if (rows[i].seq != expect) {
                /* A gap: report it, then take the next row's link on trust. */
                fprintf(report, "instance %s: gap: records %lld..%lld missing\n", instance, (long long)expect,
                        (long long)rows[i].seq - 1);
                gaps++;
                json_t *o = json_loads(rows[i].line, 0, NULL);
                const char *p = json_string_value(json_object_get(o, "prev"));
                if (p != NULL && strlen(p) == sizeof(prev) - 1)
                    memcpy(prev, p, sizeof(prev));
                json_decref(o);
            }
            audit_err e = verify_row(instance, &rows[i], prev);
            if (e != AUDIT_OK) {
                fprintf(report, "instance %s: record %lld: %s (%zu good records before it)\n", instance,
                        (long long)rows[i].seq, audit_strerror(e), good);
                rc = e;
                break;
            }
            hash_line(rows[i].line, strlen(rows[i].line), prev);
            good++;
            expect = rows[i].seq + 1;
            after = rows[i].seq;
        }
        gs_store_audit_rows_free(rows, n);
        if (rc != AUDIT_OK)
            return rc;
    }
    if (gaps > 0) {
        fprintf(report, "instance %s: %zu records, %zu gap(s), chain head %s\n", instance, good, gaps, prev);
        return AUDIT_ERR_CHAIN;
    }
    fprintf(report, "instance %s: ok: %zu records, chain head %s\n", instance, good, prev);
    return AUDIT_OK;
}

audit_err audit_verify_db(const char *db_location, FILE *report, size_t *instances)
{
    gs_store *st = NULL;
    char **names = NULL;
    size_t n = 0;
    audit_err rc = AUDIT_ERR_IO;
    char detail[512] = "";

    *instances = 0;
    if (gs_store_open(db_location, GS_STORE_READONLY, &st) != GS_OK ||
        gs_store_audit_instances(st, &names, &n) != GS_OK) {
        /* the caller's one error line says why: the detail, kept over
         * the cleanup below */
        (void)util_strlcpy(detail, gs_err_detail(), sizeof(detail));
        goto out;
    }
    rc = AUDIT_OK;
    for (size_t i = 0; i < n; i++) {
        audit_err e = verify_instance(st, names[i], report);
        if (rc == AUDIT_OK || (rc == AUDIT_ERR_CHAIN && e != AUDIT_OK && e != AUDIT_ERR_CHAIN))
            rc = e;
    }
    *instances = n;
out:
    gs_store_strings_free(names, n);
    gs_store_close(st);
    if (detail[0] != '\0')
        (void)gs_err_set(GS_ERR_DB, "%s", detail);
    return rc;
}

audit_err audit_write(audit_log *log, const audit_record *rec, unsigned long long *seq)
{
    audit_err rc;
    struct qrec q;

    if (log == NULL || rec == NULL || seq == NULL)
        return AUDIT_ERR_ARGS;
    *seq = 0;
    /* Rendered here, by the writer's thread and outside every lock. */
    if ((rc = render_record(rec, &q)) != AUDIT_OK)
        return rc;
    /* Only the queue's lock: a round holds the log's mutex while it writes. */
    pthread_mutex_lock(&log->qmu);
    rc = queue_qlocked(log, &q, seq);
    pthread_mutex_unlock(&log->qmu);
    qrec_clear(&q); /* moved into the queue unless that failed */
    return rc;
}

int audit_range_state(audit_log *log, unsigned long long first, unsigned long long last)
{
    pthread_mutex_lock(&log->mu);
    int st = range_state_locked(log, first, last);
    pthread_mutex_unlock(&log->mu);
    return st < 0 ? -1 : st;
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
            rc = st == -2 ? AUDIT_ERR_UNREPLICATED : AUDIT_ERR_IO;
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

void *audit_removal_detail(const char *member, unsigned secret_version, unsigned key_version,
                           bool rotate_elsewhere)
{
    json_t *detail = json_pack("{s:s,s:I,s:I}", "member", member, "secret_rotated_to", (json_int_t)secret_version,
                               "key_rotated_to", (json_int_t)key_version);

    if (detail != NULL && rotate_elsewhere && json_object_set_new(detail, "rotate_elsewhere", json_true()) != 0) {
        json_decref(detail);
        detail = NULL;
    }
    return detail;
}

audit_err audit_started(audit_log *log, const audit_record *rec)
{
    audit_record started = *rec;

    started.outcome = AUDIT_STARTED;
    started.key_version = -1;
    return audit_append(log, &started);
}

/* Checks the lines of one file against the chain, starting from prev (in:
 * the hash the first line must name; out: the hash of the last good line).
 * trust_first: take the first line's "prev" as given (a file checked alone
 * whose predecessors are elsewhere). */
static audit_err verify_one(const char *path, char prev[2 * SHA256_DIGEST_LENGTH + 1], int trust_first,
                            char *start, size_t *lines, size_t *bad_line)
{
    audit_err rc = AUDIT_ERR_IO;
    FILE *fp = NULL;
    char *line = NULL;
    size_t cap = 0, n = 0;
    ssize_t len;
    int fd;

    *lines = 0;
    *bad_line = 0;
    /* a regular file only, and never waited on: a FIFO named here (or put
     * at the path after the caller looked) would block until a writer came */
    if ((fd = open_regular(path, O_RDONLY | O_CLOEXEC, 0)) < 0)
        goto out;
    if ((fp = fdopen(fd, "r")) == NULL) {
        close(fd);
        goto out;
    }
    while ((len = getline(&line, &cap, fp)) >= 0) {
        n++;
        size_t text = (size_t)len;
        while (text > 0 && line[text - 1] == '\0')
            text--;
        if (len > 0 && line[len - 1] != '\n' && text <= AUDIT_MAX_LINE) {
            /* The last line, unterminated: an interrupted write, not an
             * edit (the writer cuts it off before writing again), also
             * when a crash left NUL bytes after it, however many
             * (size_before_nuls). */
            rc = AUDIT_ERR_TORN;
            *bad_line = n;
            goto out;
        }
        if (len == 0 || line[len - 1] != '\n' || len > AUDIT_MAX_LINE) {
            rc = AUDIT_ERR_FORMAT;
            *bad_line = n;
            goto out;
        }
        line[--len] = '\0';
        json_error_t jerr;
        json_t *o = json_loadb(line, (size_t)len, 0, &jerr);
        const char *p = o ? json_string_value(json_object_get(o, "prev")) : NULL;
        if (p == NULL || strlen(p) != 2 * SHA256_DIGEST_LENGTH) {
            json_decref(o);
            rc = AUDIT_ERR_FORMAT;
            *bad_line = n;
            goto out;
        }
        if (n == 1 && trust_first) {
            /* Taken as given, so checked as the hash it must be: it is
             * printed (`--since`'s start) for the operator to compare, and
             * a rewritten archive could put any 64 bytes there, escape
             * sequences included. Every later prev is compared with a
             * hash computed here. */
            if (strspn(p, "0123456789abcdef") != 2 * SHA256_DIGEST_LENGTH) {
                json_decref(o);
                rc = AUDIT_ERR_FORMAT;
                *bad_line = n;
                goto out;
            }
            memcpy(prev, p, 2 * SHA256_DIGEST_LENGTH);
            if (start != NULL)
                memcpy(start, p, 2 * SHA256_DIGEST_LENGTH + 1);
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
    free(line);
    if (fp != NULL)
        fclose(fp);
    return rc;
}

audit_err audit_verify_file(const char *path, size_t *lines, size_t *bad_line, char *head_hex)
{
    char prev[2 * SHA256_DIGEST_LENGTH + 1];

    memset(prev, '0', sizeof(prev) - 1);
    prev[sizeof(prev) - 1] = '\0';
    audit_err rc = verify_one(path, prev, 0, NULL, lines, bad_line);
    if (head_hex != NULL)
        memcpy(head_hex, prev, sizeof(prev));
    return rc;
}

/*
 * Rotation. `groupsrv audit rotate` seals the file with an "audit-rotate"
 * record naming the archive the file is linked to, and puts at the path a
 * new file whose first record, "audit-continue", names that archive and
 * chains to the seal: the hash chain runs on across files, so archiving
 * never breaks it. Every appender holds flock(2) on its file while it
 * writes, so a rotation in another process (the admin command while the
 * server runs) never interleaves with a record; an appender whose file was
 * sealed and replaced continues in the successor.
 */

static void unlock_file(int fd)
{
    (void)flock(fd, LOCK_UN); /* cannot fail on a descriptor we locked */
}

static int is_at_path(int fd, const char *path)
{
    struct stat fst, pst;

    return fstat(fd, &fst) == 0 && stat(path, &pst) == 0 && fst.st_ino == pst.st_ino &&
           fst.st_dev == pst.st_dev;
}

static int fd_at_path(const struct audit_log *log)
{
    return is_at_path(log->fd, log->path);
}

/* fd_at_path, also giving the descriptor's stat (one fstat, one stat). */
static int fd_at_path_stat(const struct audit_log *log, struct stat *fst)
{
    struct stat pst;

    return fstat(log->fd, fst) == 0 && stat(log->path, &pst) == 0 && fst->st_ino == pst.st_ino &&
           fst->st_dev == pst.st_dev;
}

/* Opens the file at path and locks it; a file rotated away while we waited
 * for its lock is let go and the new one tried. -1 if there is none. */
static int open_locked_at_path(const char *path)
{
    for (int tries = 0; tries < 100; tries++) {
        int fd = open_regular(path, O_RDWR | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0);
        if (fd < 0)
            return -1;
        if (flock(fd, LOCK_EX) == 0 && is_at_path(fd, path))
            return fd;
        close(fd);
    }
    return -1;
}

/* Reads the first line of fd (from offset 0) into *line (malloc'd, NUL in
 * place of its newline). AUDIT_ERR_FORMAT: empty, unterminated or too long. */
static audit_err read_first_line(int fd, char **line, size_t *len)
{
    char *buf = malloc(AUDIT_MAX_LINE + 1);
    size_t got = 0;
    char *nl = NULL;

    *line = NULL;
    *len = 0;
    if (buf == NULL)
        return AUDIT_ERR_NOMEM;
    while (nl == NULL && got < AUDIT_MAX_LINE + 1) {
        ssize_t n = pread(fd, buf + got, AUDIT_MAX_LINE + 1 - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            free(buf);
            return AUDIT_ERR_IO;
        }
        if (n == 0)
            break;
        nl = memchr(buf + got, '\n', (size_t)n);
        got += (size_t)n;
    }
    if (nl == NULL) {
        free(buf);
        return AUDIT_ERR_FORMAT;
    }
    *nl = '\0';
    *len = (size_t)(nl - buf);
    *line = buf;
    return AUDIT_OK;
}

/* 1 if line is a record with this action; *field (may be NULL) receives a
 * copy of its string member `name` (NULL if absent). */
static int record_is(const char *line, size_t len, const char *action, const char *name, char **field)
{
    json_error_t jerr;
    json_t *o = line ? json_loadb(line, len, 0, &jerr) : NULL;
    const char *a = o ? json_string_value(json_object_get(o, "action")) : NULL;
    const char *v = o && name ? json_string_value(json_object_get(o, name)) : NULL;
    int yes = a != NULL && strcmp(a, action) == 0;

    if (field != NULL)
        *field = yes && v != NULL ? strdup(v) : NULL;
    json_decref(o);
    return yes && (field == NULL || *field != NULL);
}

static audit_err predecessor_of(const char *path, char **prev_path);

/* Whether the file at path starts with "audit-continue" chained to the
 * seal whose hash is seal_hex. */
static int continues_seal(const char *path, int fd, const char *seal_hex)
{
    char *first = NULL, *prev = NULL;
    size_t len = 0;
    int own = fd < 0, yes = 0;

    if (own && (fd = open_regular(path, O_RDONLY | O_CLOEXEC, 0)) < 0)
        return 0;
    if (read_first_line(fd, &first, &len) == AUDIT_OK && record_is(first, len, "audit-continue", "prev", &prev))
        yes = strcmp(prev, seal_hex) == 0;
    if (own)
        close(fd);
    free(first);
    free(prev);
    return yes;
}

/* Whether the chain of files ending at path (nfd: that file, open) holds
 * the successor of the file sealed with seal_hex: path itself, or a file
 * found walking back along the "previous" names (when the log was rotated
 * more than once since our last round), at most AUDIT_MAX_FILES deep. */
static int chain_continues_seal(const char *path, int nfd, const char *seal_hex)
{
    char *cur = NULL, *next = NULL;
    int found = continues_seal(path, nfd, seal_hex);

    if (!found && predecessor_of(path, &cur) != AUDIT_OK)
        cur = NULL;
    for (unsigned i = 0; !found && cur != NULL && i < AUDIT_MAX_FILES; i++) {
        if ((found = continues_seal(cur, -1, seal_hex)))
            break;
        if (predecessor_of(cur, &next) != AUDIT_OK)
            next = NULL;
        free(cur);
        cur = next;
        next = NULL;
    }
    free(cur);
    return found;
}

/* Whether the line of fd that ends at end (its newline the byte before
 * end) hashes to head: the file still holds, where we left it, the last
 * line we know of. */
static int line_before_is(int fd, off_t end, const char *head)
{
    char buf[AUDIT_MAX_LINE + 1], hex[2 * SHA256_DIGEST_LENGTH + 1];
    size_t want = end > (off_t)sizeof(buf) ? sizeof(buf) : (size_t)end;
    off_t start = end - (off_t)want;

    if (end == 0) /* left empty: appended since, unless we knew a line (a cut found, not yet written over) */
        return strspn(head, "0") == strlen(head);
    if (pread_all(fd, buf, want, start) != 0 || buf[want - 1] != '\n')
        return 0;
    size_t begin = want - 1;
    while (begin > 0 && buf[begin - 1] != '\n')
        begin--;
    if (begin == 0 && start != 0)
        return 0;
    hash_line(buf + begin, want - 1 - begin, hex);
    return strcmp(hex, head) == 0;
}

/* Whether fd's lines, read from the start, end in a run chained to head
 * or to the break at the file's first line: a line whose prev is head, or
 * the file's first line with a prev other than zeros that is no
 * "audit-continue" (which verify follows to the file it names): verify
 * reports that line as a break; and each line after it chained to the one
 * before. After a cut (logrotate's copytruncate), another appender that
 * knew head or a later line (a second server on the file, an admin
 * command open since before the cut that wrote after our last record) may
 * have written first and chained to its own last line: continuing from
 * the file then keeps one chain after that break, where chaining to head
 * again would put a second line after it (a fork) or a second break right
 * behind the first. A run from zeros, or one after a break further down
 * the file (records cut from its middle, ours after them maybe too), is
 * not taken: the caller makes the break. Nor is the first line's break
 * unless first_is_new (it is not the line the file started with when we
 * last wrote): a file that starts with a break (an earlier copytruncate)
 * and was cut at its end, our last records removed, would otherwise pass
 * for one written after a cut, and we would continue from what is left,
 * the removal leaving no trace. Read only after a cut (rare). */
static int file_continues_head(int fd, const char *head, int first_is_new)
{
    char *buf = malloc(AUDIT_MAX_LINE + 1);
    char last[2 * SHA256_DIGEST_LENGTH + 1] = "";
    size_t have = 0;
    off_t off = 0;
    int on = 0, ok = buf != NULL;

    while (ok) {
        ssize_t n = pread(fd, buf + have, AUDIT_MAX_LINE + 1 - have, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            ok = 0;
            break;
        }
        off += n;
        have += (size_t)n;
        char *p = buf, *nl;
        while ((nl = memchr(p, '\n', have - (size_t)(p - buf))) != NULL) {
            json_error_t jerr;
            json_t *o = json_loadb(p, (size_t)(nl - p), 0, &jerr);
            const char *prev = o ? json_string_value(json_object_get(o, "prev")) : NULL;
            const char *action = o ? json_string_value(json_object_get(o, "action")) : NULL;
            if (prev != NULL && strcmp(prev, head) == 0)
                on = 1;
            else if (prev != NULL && last[0] == '\0') /* the file's first line */
                on = first_is_new && strspn(prev, "0") != strlen(prev) &&
                     (action == NULL || strcmp(action, "audit-continue") != 0);
            else if (prev == NULL || strcmp(prev, last) != 0)
                on = 0;
            json_decref(o);
            hash_line(p, (size_t)(nl - p), last);
            p = nl + 1;
        }
        have -= (size_t)(p - buf);
        memmove(buf, p, have);
        if (n == 0 || have > AUDIT_MAX_LINE)
            break; /* the end (a torn tail is cut before), or a line no record is */
    }
    free(buf);
    return ok && on && have == 0;
}

/* Whether our file still holds the last line we know of where we left it
 * (mutex and flock held): not, when it was cut (copytruncate) since. */
static int as_we_left_it(const struct audit_log *log)
{
    struct stat st;

    if (fstat(log->fd, &st) != 0)
        return 1; /* not known: no break is made on a guess */
    return st.st_size >= log->end && line_before_is(log->fd, log->end, log->prev_hex);
}

/* Records were removed from the file we left before it was sealed (cut,
 * then rotated by another process before our next record): the sealed
 * chain and its successor verify over the gap, so the next record chains
 * to the last one we wrote, as after a cut in place, unless an appender
 * that knew that line wrote the break into the new file already. */
static void chain_over_sealed_cut_locked(struct audit_log *log, int cut, const char *our_head)
{
    if (!cut || file_continues_head(log->fd, our_head, 0))
        return;
    log_error("audit log was cut before it was rotated: the sealed file does not hold the records this server "
              "wrote to it; the next record chains to the last one written, so audit verify reports the break "
              "path=\"%s\"",
              log_qs(log->path));
    memcpy(log->prev_hex, our_head, sizeof(log->prev_hex));
}

/* Our file is no longer at its path (mutex and our flock held, no sync
 * round running). If its last line is a seal ("audit-rotate") and the file
 * now at the path starts with "audit-continue" chained to that seal (or,
 * after several rotations, one of the files it continues does),
 * continue there: what we wrote before the seal is synced (and booked),
 * the new file locked, its head loaded. Lines another appender (the CLI)
 * put between our last one and the seal are part of the sealed file's
 * chain, so they do not stop us. Otherwise the log was deleted or
 * replaced: AUDIT_ERR_IO, with our flock released. The rest of the links
 * between the files are `audit verify`'s to check. */
static audit_err follow_successor_locked(struct audit_log *log)
{
    audit_err rc = AUDIT_ERR_IO;
    char *last = NULL;
    char seal_hex[sizeof(log->prev_hex)];
    size_t len = 0;
    int nfd = -1;

    if (read_last_line(log->fd, &last, &len) != AUDIT_OK || !record_is(last, len, "audit-rotate", NULL, NULL))
        goto out;
    hash_line(last, len, seal_hex);
    if ((nfd = open_locked_at_path(log->path)) < 0)
        goto out;
    if (!chain_continues_seal(log->path, nfd, seal_hex))
        goto out;
    int cut = !as_we_left_it(log);
    int src = fdatasync(log->fd);
    account_sync_locked(log, log->filed_seq, src, errno);
    int sealed_fd = log->fd;
    char sealed_head[sizeof(log->prev_hex)];
    memcpy(sealed_head, log->prev_hex, sizeof(sealed_head));
    log->fd = nfd;
    if ((rc = load_chain_head(log)) != AUDIT_OK) {
        log->fd = sealed_fd; /* nfd is closed below */
        memcpy(log->prev_hex, sealed_head, sizeof(sealed_head));
        goto out;
    }
    nfd = sealed_fd; /* closing it below drops our lock on the sealed file */
    log_info("audit log rotated: continuing in the new file path=\"%s\"", log_qs(log->path));
    chain_over_sealed_cut_locked(log, cut, sealed_head);
out:
    if (rc != AUDIT_OK)
        unlock_file(log->fd);
    if (nfd >= 0)
        close(nfd);
    free(last);
    return rc;
}

/* Takes the cross-process append lock on the current file (mutex held),
 * first following it to its successor if it was rotated, and reloads the
 * head if another process appended. May wait for a running sync round
 * (which uses the descriptor). On failure nothing is locked. */
/* The file is not as we left it (mutex and flock held): continue from its
 * last line, after cutting off a torn tail (a write of ours whose fragment
 * could not be cut at once, or another process's cut short). */
static audit_err continue_from_file_locked(struct audit_log *log)
{
    audit_err rc = load_chain_head(log);

    if (rc == AUDIT_ERR_FORMAT && cut_torn_tail(log->fd, log->path, NULL) == AUDIT_OK)
        rc = load_chain_head(log);
    return rc;
}

/* flock(LOCK_EX) that gives up after log->lock_wait_ms: polls, from
 * 100 us up to 10 ms between tries (a CLI holds the lock for a few ms). */
static int flock_bounded(struct audit_log *log)
{
    struct timespec start, now, pause = {0, 100 * 1000};

    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        if (flock(log->fd, LOCK_EX | LOCK_NB) == 0)
            return 0;
        if (errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        clock_gettime(CLOCK_MONOTONIC, &now);
        /* In nanoseconds: milliseconds cut from the nanosecond difference
         * alone round up when it is negative (the second changed), and the
         * round gave up to a millisecond before lock_wait_ms. */
        long long waited_ns =
            (long long)(now.tv_sec - start.tv_sec) * 1000000000LL + (long long)(now.tv_nsec - start.tv_nsec);
        if (waited_ns >= (long long)log->lock_wait_ms * 1000000LL) {
            log_error("audit log locked by another process for over %u ms; failing this round path=\"%s\"",
                      log->lock_wait_ms, log_qs(log->path));
            errno = EWOULDBLOCK;
            return -1;
        }
        (void)nanosleep(&pause, NULL);
        if (pause.tv_nsec < 10 * 1000 * 1000)
            pause.tv_nsec *= 2;
    }
}

void audit_set_lock_wait(audit_log *log, unsigned ms)
{
    pthread_mutex_lock(&log->mu);
    log->lock_wait_ms = ms;
    pthread_mutex_unlock(&log->mu);
}

/* The hash of fd's first line into hex; -1 if it has none (empty, or
 * unterminated or too long). */
static int first_line_hash(int fd, char hex[2 * SHA256_DIGEST_LENGTH + 1])
{
    char *line = NULL;
    size_t len = 0;

    if (read_first_line(fd, &line, &len) != AUDIT_OK) {
        free(line);
        return -1;
    }
    hash_line(line, len, hex);
    free(line);
    return 0;
}

/* The file st describes is as we left it (mutex and flock held): note its
 * first line, once per file, for the next cut (a read of one line). */
static void note_first_line(struct audit_log *log, const struct stat *st)
{
    if (log->end == 0 ||
        (log->first_hex[0] != '\0' && log->first_dev == st->st_dev && log->first_ino == st->st_ino))
        return;
    if (first_line_hash(log->fd, log->first_hex) != 0) {
        log->first_hex[0] = '\0';
        return;
    }
    log->first_dev = st->st_dev;
    log->first_ino = st->st_ino;
}

/* Whether the file st describes, cut under us, starts with another line
 * than the one we noted: written since the cut. Not known (no line noted,
 * or noted of another file) is not new. */
static int first_line_is_new(const struct audit_log *log, const struct stat *st)
{
    char hex[2 * SHA256_DIGEST_LENGTH + 1];

    if (log->first_hex[0] == '\0' || log->first_dev != st->st_dev || log->first_ino != st->st_ino)
        return 0;
    return first_line_hash(log->fd, hex) == 0 && strcmp(hex, log->first_hex) != 0;
}

/* The file is shorter than the records this log wrote to it, or longer
 * but without our last line where we left it (mutex and flock held): no appender shrinks it (each cuts only a torn tail past the
 * last complete line, and ours is never torn), so records were removed
 * under the server: the file copied and truncated (logrotate's
 * copytruncate), or cut by hand. Continuing from the file's last line
 * would chain over the gap, and a log cut to nothing would start a new
 * chain that `audit verify` passes. The next record chains to the last one
 * this log wrote instead, so verify reports the break where the records
 * are missing; what is left of a record cut in the middle is cut off so
 * that the next one does not land on it. */
static audit_err continue_over_cut_locked(struct audit_log *log, off_t size)
{
    struct stat st;
    long long cut = 0;

    if (cut_torn_tail(log->fd, log->path, &cut) != AUDIT_OK || fstat(log->fd, &st) != 0)
        return AUDIT_ERR_IO;
    int first_is_new = first_line_is_new(log, &st);
    log->first_hex[0] = '\0'; /* noted again once the file is as we left it */
    if (file_continues_head(log->fd, log->prev_hex, first_is_new))
        return continue_from_file_locked(log); /* the break is there already, made by another */
    /* "no longer ends in": longer, but our last line is not where we left
     * it: cut and written again since by an appender that did not know it. */
    log_error("audit log %s the records this server wrote to it: records were removed under the "
              "server (copied and truncated, as logrotate's copytruncate does, or cut); the next record chains "
              "to the last one written, so audit verify reports the break path=\"%s\" size=%lld written=%lld",
              size < log->end ? "is shorter than" : "no longer ends in", log_qs(log->path), (long long)size,
              (long long)log->end);
    log->end = st.st_size;
    return AUDIT_OK;
}

static audit_err lock_current_locked(struct audit_log *log)
{
    struct stat st;

    for (;;) {
        if (flock_bounded(log) != 0)
            return AUDIT_ERR_IO;
        if (fd_at_path_stat(log, &st)) {
            /* Another process appended (a rotation that sealed the file
             * but could not replace it): continue from its last line.
             * Shorter than we left it: records were removed. */
            /* Longer: the line we left last must still end where we
             * left it, or the file was cut and written again (by an
             * appender that did not know our last line) before we came. */
            int cut = st.st_size != log->end &&
                      (st.st_size < log->end || !line_before_is(log->fd, log->end, log->prev_hex));
            audit_err rc = st.st_size == log->end ? AUDIT_OK
                           : cut                  ? continue_over_cut_locked(log, st.st_size)
                                                  : continue_from_file_locked(log);
            if (rc != AUDIT_OK)
                unlock_file(log->fd);
            else if (!cut)
                note_first_line(log, &st);
            return rc;
        }
        if (!log->syncing)
            return follow_successor_locked(log);
        unlock_file(log->fd);
        pthread_cond_wait(&log->synced, &log->mu);
    }
}

/* a, b and c in one malloc'd string (NULL when out of memory). */
static char *concat3(const char *a, const char *b, const char *c)
{
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c), n;
    char *s;

    if (util_size_add(la, lb, &n) != 0 || util_size_add(n, lc + 1, &n) != 0 || (s = malloc(n)) == NULL)
        return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb);
    memcpy(s + la + lb, c, lc + 1);
    return s;
}

/* The archive name for a rotation now: PATH.YYYYmmddTHHMMSSZ, with -2, -3,
 * ... when rotations come faster than once a second. link(2) claims the
 * name atomically; the first free one is kept, linked to our file. */
static audit_err link_archive(const char *path, char *archive, size_t cap)
{
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;

    if (gmtime_r(&now, &tm) == NULL || strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm) == 0)
        return AUDIT_ERR_IO;
    for (int i = 1; i < 100; i++) {
        int n = i == 1 ? snprintf(archive, cap, "%s.%s", path, stamp)
                       : snprintf(archive, cap, "%s.%s-%d", path, stamp, i);
        if (n < 0 || (size_t)n >= cap)
            return AUDIT_ERR_ARGS;
        if (link(path, archive) == 0)
            return AUDIT_OK;
        if (errno != EEXIST)
            return AUDIT_ERR_IO;
    }
    return AUDIT_ERR_IO;
}

/* One rotation record (no request fields) with a string member. */
static audit_err rotation_record(const char *action, const char *name, const char *value, struct qrec *q)
{
    json_t *extra = json_pack("{s:s}", name, value);
    audit_record r = {.action = action, .key_version = -1, .extra = extra};
    audit_err rc = extra != NULL ? render_record(&r, q) : AUDIT_ERR_NOMEM;

    json_decref(extra);
    return rc;
}

/* The successor file (mutex and flock held): a temp file next to the log,
 * owned like the sealed one so the server's user can append to it when root
 * rotates; returned locked. Every rotation takes the current file's flock
 * before it gets here, so a temp file already there is one a rotation left
 * when it crashed before its rename: it is removed, or it would block every
 * later rotation. O_EXCL: never through a link someone put there. */
static int open_successor(const char *tmp, const struct stat *sealed)
{
    int fd;

    if (unlink(tmp) != 0 && errno != ENOENT)
        return -1;
    if ((fd = open(tmp, O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0)
        return -1;
    if ((geteuid() == 0 && fchown(fd, sealed->st_uid, sealed->st_gid) != 0) || flock(fd, LOCK_EX) != 0) {
        int err = errno; /* for the caller's message */
        close(fd);
        unlink(tmp);
        errno = err;
        return -1;
    }
    return fd;
}

audit_err audit_rotate(audit_log *log, char *archive, size_t cap)
{
    audit_err rc = AUDIT_ERR_ARGS;
    struct qrec seal = {0}, cont = {0};
    char *tmp = NULL, *dir = NULL;
    const char *base;
    unsigned long long seq = 0;
    int locked = 0, linked = 0, sealed_fd = -1, new_fd = -1;
    struct stat st;
    char sealed_head[sizeof(log->prev_hex)];
    off_t sealed_end = 0;

    if (log == NULL || archive == NULL || cap == 0)
        return AUDIT_ERR_ARGS;
    archive[0] = '\0';
    pthread_mutex_lock(&log->mu);
    /* The descriptor changes below: no sync round may be using it. */
    for (;;) {
        if ((rc = lock_current_locked(log)) != AUDIT_OK)
            goto out;
        if (!log->syncing)
            break;
        unlock_file(log->fd);
        pthread_cond_wait(&log->synced, &log->mu);
    }
    locked = 1;
    /* Another process may have appended since we read the head. */
    if ((rc = load_chain_head(log)) != AUDIT_OK)
        goto out;
    rc = AUDIT_ERR_NOMEM;
    if ((dir = util_dir_of(log->path)) == NULL || (tmp = concat3(log->path, ".rotating", "")) == NULL)
        goto out;
    rc = AUDIT_ERR_IO;
    if (fstat(log->fd, &st) != 0)
        goto out;
    /* The successor first: a rotation that cannot make it (a full disk, a
     * directory it may not write) fails before the seal, changing nothing.
     * An empty file can be made on a full disk: room for its first record
     * is reserved too, or the seal would go in and the successor not. */
    if ((new_fd = open_successor(tmp, &st)) < 0 || reserve_space(new_fd, tmp) != 0) {
        log_error("audit rotate: cannot create the new file path=\"%s\" errno=%d", log_qs(tmp), errno);
        goto out;
    }
    if ((rc = link_archive(log->path, archive, cap)) != AUDIT_OK)
        goto out;
    linked = 1;
    base = strrchr(archive, '/') ? strrchr(archive, '/') + 1 : archive;
    if ((rc = rotation_record("audit-rotate", "archive", base, &seal)) != AUDIT_OK ||
        (rc = rotation_record("audit-continue", "previous", base, &cont)) != AUDIT_OK)
        goto out;
    /* Seal: after this record nothing more goes into this file. */
    if ((rc = put_line_locked(log, &seal, &seq)) != AUDIT_OK)
        goto out;
    int src = fdatasync(log->fd);
    account_sync_locked(log, log->filed_seq, src, errno);
    rc = AUDIT_ERR_IO;
    if (src != 0)
        goto out;
    memcpy(sealed_head, log->prev_hex, sizeof(sealed_head));
    sealed_end = log->end;
    /* The successor starts with a record chained to the seal, and is in
     * place (rename, directory synced) before anyone may look. */
    sealed_fd = log->fd;
    log->fd = new_fd;
    new_fd = -1;
    log->end = 0;
    if ((rc = put_line_locked(log, &cont, &seq)) != AUDIT_OK)
        goto out;
    src = fsync(log->fd);
    account_sync_locked(log, log->filed_seq, src, errno);
    rc = AUDIT_ERR_IO;
    if (src != 0 || rename(tmp, log->path) != 0)
        goto out;
    linked = 0;
    if (util_fsync_dir(dir) != UTIL_OK)
        log_warn("audit rotate: directory sync failed dir=\"%s\"", log_qs(dir));
    log_info("audit log sealed path=\"%s\" archive=\"%s\"", log_qs(log->path), log_qs(archive));
    rc = AUDIT_OK;
out:
    if (rc != AUDIT_OK && sealed_fd >= 0) {
        /* Back to the sealed file, still at the path: records go on after
         * the seal, which verify accepts (a seal is only a record). */
        new_fd = log->fd;
        log->fd = sealed_fd;
        sealed_fd = -1;
        memcpy(log->prev_hex, sealed_head, sizeof(sealed_head));
        log->end = sealed_end;
    }
    if (new_fd >= 0) {
        /* never put in place */
        close(new_fd);
        unlink(tmp);
    }
    if (sealed_fd >= 0)
        close(sealed_fd); /* drops the lock: other appenders follow now */
    if (linked && unlink(archive) == 0)
        archive[0] = '\0';
    if (locked)
        unlock_file(log->fd);
    pthread_mutex_unlock(&log->mu);
    qrec_clear(&seal);
    qrec_clear(&cont);
    free(tmp);
    free(dir);
    return rc;
}

/* The file named by the "previous" member of path's first record, in
 * path's directory (malloc'd), or NULL when path starts the chain. The name
 * must be a plain file name: the chain never leaves the directory. */
static audit_err predecessor_of(const char *path, char **prev_path)
{
    audit_err rc;
    char *line = NULL, *name = NULL, *dir = NULL;
    size_t len = 0;
    int fd = open_regular(path, O_RDONLY | O_CLOEXEC, 0);

    *prev_path = NULL;
    if (fd < 0)
        return AUDIT_ERR_IO;
    rc = read_first_line(fd, &line, &len);
    close(fd);
    if (rc == AUDIT_ERR_FORMAT) /* empty or torn: verify_one says where */
        rc = AUDIT_OK;
    if (rc != AUDIT_OK || !record_is(line, len, "audit-continue", "previous", &name))
        goto out;
    rc = AUDIT_ERR_FORMAT;
    if (name[0] == '\0' || strchr(name, '/') != NULL || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        goto out;
    rc = AUDIT_ERR_NOMEM;
    if ((dir = util_dir_of(path)) == NULL || (*prev_path = concat3(dir, "/", name)) == NULL)
        goto out;
    rc = AUDIT_OK;
out:
    free(line);
    free(name);
    free(dir);
    return rc;
}

/* A problem at a file: names it in res. */
static audit_err chain_fail(audit_verify_result *res, audit_err rc, const char *file, size_t line)
{
    (void)util_strlcpy(res->bad_file, file, sizeof(res->bad_file));
    res->bad_line = line;
    return rc;
}

/* Whether path is the file st describes (a name of it, or a link). */
static int same_file(const char *path, const struct stat *st)
{
    struct stat at;

    return stat(path, &at) == 0 && at.st_dev == st->st_dev && at.st_ino == st->st_ino;
}

/* The walk of audit_verify_chain and audit_verify_chain_since: since NULL,
 * back to the chain's start (follow) or path alone (!follow). */
static audit_err verify_chain(const char *path, int follow, const char *since, audit_verify_result *res)
{
    audit_err rc = AUDIT_ERR_ARGS;
    char **files = NULL, *prev_path = NULL, *since_dir = NULL, *since_path = NULL;
    size_t nfiles = 0, lines = 0, bad = 0;
    int missing = 0, found = 0;
    struct stat since_st;

    if (path == NULL || res == NULL)
        return AUDIT_ERR_ARGS;
    memset(res, 0, sizeof(*res));
    memset(res->head, '0', sizeof(res->head) - 1);
    /* The file to start at, by identity: a name given as ./A, dir/A or an
     * absolute path is the archive the chain names A. A bare name is one in
     * the log's directory, as the chain's own "previous" names are (the
     * name `ls` of that directory shows, typed from anywhere): read in the
     * current directory it was "No such file" outside the log's. */
    if (since != NULL && strchr(since, '/') == NULL) {
        if ((since_dir = util_dir_of(path)) == NULL || (since_path = concat3(since_dir, "/", since)) == NULL) {
            rc = AUDIT_ERR_NOMEM;
            goto out;
        }
        since = since_path;
    }
    if (since != NULL && stat(since, &since_st) != 0) {
        rc = chain_fail(res, AUDIT_ERR_IO, since, 0);
        goto out;
    }
    /* Newest first: walk back along the "previous" names. */
    rc = AUDIT_ERR_NOMEM;
    if ((files = calloc(AUDIT_MAX_FILES, sizeof(*files))) == NULL || (files[0] = strdup(path)) == NULL)
        goto out;
    nfiles = 1;
    while (follow) {
        if (since != NULL && same_file(files[nfiles - 1], &since_st)) {
            found = 1;
            break;
        }
        if ((rc = predecessor_of(files[nfiles - 1], &prev_path)) != AUDIT_OK) {
            rc = chain_fail(res, rc, files[nfiles - 1], 1);
            goto out;
        }
        if (prev_path == NULL) {
            if (since != NULL) {
                /* Never met since: checking from the chain's start would
                 * pass whatever since is, so it is refused. */
                rc = chain_fail(res, AUDIT_ERR_NOT_IN_CHAIN, since, 0);
                goto out;
            }
            break;
        }
        if (access(prev_path, F_OK) != 0) {
            /* The files after it are still checked (the oldest one's first
             * link taken as given), so the admin learns whether they are
             * intact. */
            missing = 1;
            break;
        }
        if (nfiles == AUDIT_MAX_FILES) {
            rc = chain_fail(res, AUDIT_ERR_FORMAT, prev_path, 0);
            goto out;
        }
        files[nfiles++] = prev_path;
        prev_path = NULL;
    }
    /* Oldest first, the chain carried from file to file. */
    for (size_t i = nfiles; i-- > 0;) {
        int trust_first = (!follow && i == 0) || ((missing || found) && i == nfiles - 1);
        rc = verify_one(files[i], res->head, trust_first, res->start, &lines, &bad);
        res->lines += lines;
        res->files++;
        if (rc != AUDIT_OK) {
            if (rc == AUDIT_ERR_IO)
                bad = 0;
            rc = chain_fail(res, rc, files[i], bad);
            goto out;
        }
    }
    rc = missing ? chain_fail(res, AUDIT_ERR_MISSING, prev_path, 0) : AUDIT_OK;
out:
    for (size_t i = 0; files != NULL && i < nfiles; i++)
        free(files[i]);
    free(files);
    free(prev_path);
    free(since_path);
    free(since_dir);
    return rc;
}

audit_err audit_verify_chain(const char *path, int follow, audit_verify_result *res)
{
    return verify_chain(path, follow, NULL, res);
}

audit_err audit_verify_chain_since(const char *path, const char *since, audit_verify_result *res)
{
    if (since == NULL)
        return AUDIT_ERR_ARGS;
    return verify_chain(path, 1, since, res);
}

/* Whether old_fd's last line is a seal ("audit-rotate") and the file at
 * path (nfd: it, open) or one it continues is chained to that seal: the
 * log was rotated, not deleted or replaced, and the chain goes on there. */
static int rotated_into(int old_fd, const char *path, int nfd)
{
    char *last = NULL;
    char seal_hex[2 * SHA256_DIGEST_LENGTH + 1];
    size_t len = 0;
    int yes = 0;

    if (read_last_line(old_fd, &last, &len) == AUDIT_OK && last != NULL &&
        record_is(last, len, "audit-rotate", NULL, NULL)) {
        hash_line(last, len, seal_hex);
        yes = chain_continues_seal(path, nfd, seal_hex);
    }
    free(last);
    return yes;
}

audit_err audit_reopen(audit_log *log)
{
    audit_err rc = AUDIT_OK;
    int nfd = -1, rotated;

    if (log == NULL)
        return AUDIT_ERR_ARGS;
    if (log->db != NULL)
        return AUDIT_OK; /* rows in the database: no file to reopen (the store reconnects by itself) */
    pthread_mutex_lock(&log->mu);
    if (fd_at_path(log))
        goto out; /* still the file at the path (or a rotation's, followed at the next write) */
    /* No sync round may run on the old descriptor while it is swapped. */
    while (log->syncing)
        pthread_cond_wait(&log->synced, &log->mu);
    if ((nfd = open_regular(log->path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600)) < 0 ||
        flock(nfd, LOCK_EX) != 0 || (rc = cut_torn_tail(nfd, log->path, NULL)) != AUDIT_OK) {
        int saved = errno;
        char why[1024];
        if (rc == AUDIT_OK)
            rc = AUDIT_ERR_IO;
        /* What the system said: its directory deleted (ENOENT: said as
         * such, "No such file or directory" read as the file missing,
         * which is made), a read-only remount, a permission lost. */
        if (nfd < 0)
            open_why(log->path, saved, 0, why, sizeof(why));
        else
            (void)snprintf(why, sizeof(why), "%s", strerror(saved));
        log_error("cannot reopen the audit log path=\"%s\" err=\"%s\" detail=\"%s\"", log_qs(log->path),
                  audit_strerror(rc), log_qs(why));
        goto out;
    }
    /* A SIGHUP after `audit rotate` and before the next record finds the
     * file the rotation made: said so, not "a new chain", which reads as
     * a log deleted or replaced. */
    rotated = rotated_into(log->fd, log->path, nfd);
    int cut = rotated && !as_we_left_it(log);
    /* Records written to the old file before it went away and not yet
     * synced: sync them there (they are in that file; their answers wait). */
    int src = fdatasync(log->fd);
    account_sync_locked(log, log->filed_seq, src, errno);
    int old = log->fd;
    char old_head[sizeof(log->prev_hex)];
    memcpy(old_head, log->prev_hex, sizeof(old_head));
    log->fd = nfd;
    if ((rc = load_chain_head(log)) != AUDIT_OK) {
        log->fd = old;
        memcpy(log->prev_hex, old_head, sizeof(old_head));
        goto out;
    }
    nfd = old; /* closed below */
    log->failed = 0;
    if (rotated) {
        log_info("audit log rotated: continuing in the new file path=\"%s\"", log_qs(log->path));
        chain_over_sealed_cut_locked(log, cut, old_head);
    }
    else
        log_info("audit log reopened (a new file at its path starts a new chain) path=\"%s\"", log_qs(log->path));
    warn_if_open_to_others(log->fd, log->path);
out:
    if (nfd >= 0) {
        unlock_file(nfd);
        close(nfd);
    }
    if (rc == AUDIT_OK && log->fd >= 0)
        unlock_file(log->fd);
    pthread_mutex_unlock(&log->mu);
    return rc;
}
