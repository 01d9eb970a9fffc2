/*
 * refusal.c: a PIN the token refused, remembered across processes.
 *
 * A wrong PIN in the PIN source made every start send it once more: a
 * service manager that restarts `groupsrv serve` every few seconds, the
 * supervisor restarting its key holder, a cron job. A token that counts
 * failed logins without reporting CKF_USER_PIN_FINAL_TRY (several
 * smartcards and network HSMs) is then locked for good after a few
 * restarts. So a CKR_PIN_INCORRECT is written down (hsm_config's
 * refusal_path) and the same PIN source on the same token is not sent
 * again until the source changes.
 *
 * What is written is never the PIN nor a plain hash of it (a PIN of a few
 * digits is found from its hash at once): for a file, the file's identity
 * (device, inode, size, modification and change times: any write, rename
 * or touch changes it) and, when the key below can be had, an HMAC of the
 * PIN read from it: timestamps of a second or a jiffy, or a filesystem
 * whose inodes and times say nothing (some FUSE and network ones), would
 * otherwise let a corrected PIN of the same length look unchanged and be
 * refused for good; for a pipe (named, or standard input as /dev/stdin)
 * the HMAC alone, like env:NAME (the writer's write at each start changes
 * a named pipe's times, and an unnamed pipe is a new inode at each start);
 * for env:NAME, an
 * HMAC-SHA256 of the PIN under a random key kept in a separate 0600 file
 * beside the record, so that the record alone tells nothing about the
 * PIN. Both files are written atomically with mode 0600.
 *
 * The record sits in a directory that other configurations may share (two
 * instances' databases in /var/lib/groupsrv, or with [db] url their audit
 * logs in one directory), so it holds one entry per refused source and
 * token (at most ENTRIES_MAX, the oldest dropped): one token's refusal
 * does not replace another's, and a successful login removes only the
 * entries of its own token (a successful login resets the token's count
 * of wrong PINs, so a source on that token that is still wrong costs one
 * try again, never a lock-out). The file goes when no entry is left.
 *
 * Each change reads the record, changes it and writes it whole, so two
 * processes changing it at once (two instances sharing the directory,
 * one recording a refusal as the other's login clears its own entries)
 * would keep only the later write: the other's refusal lost, its PIN
 * sent again. Changes (and the replacement of a key this user cannot
 * use) are made holding flock(2) on "RECORD.lock" beside it (not the
 * directory, whose flock is the database's keys lock).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "log.h"
#include "util.h"
#include "hsm_internal.h"

#define RECORD_MAX 65536
#define ENTRIES_MAX 16
#define LINE_MAX_LEN 512
#define MAC_KEY_LEN 32
/* How long a change waits for another process's change (a few file
 * writes): a holder stopped (SIGSTOP, a debugger) must not stop a start. */
#define LOCK_WAIT_MS 10000

void hsm_refusal_src_stat(const char *pin_source, hsm_pin_src *src)
{
    struct stat st;
    const char *path;

    memset(src, 0, sizeof(*src));
    if ((path = util_pin_source_path(pin_source)) == NULL || stat(path, &st) != 0)
        return;
    src->is_file = true;
    if (S_ISFIFO(st.st_mode)) {
        /* The writer's write at each start changes a named pipe's times
         * (after this stat), and standard input's pipe (/dev/stdin,
         * `echo PIN | groupsrv ...`) is a new inode at every start: only
         * what was read from it, by its MAC, tells whether the PIN
         * changed. With its device and inode the same refused PIN was
         * sent again by every cron run, each adding an entry that pushed
         * another source's out. */
        src->is_pipe = true;
        return;
    }
    src->dev = (unsigned long long)st.st_dev;
    src->ino = (unsigned long long)st.st_ino;
    src->size = (long long)st.st_size;
    src->mtime_s = (long long)st.st_mtim.tv_sec;
    src->mtime_ns = (long)st.st_mtim.tv_nsec;
    src->ctime_s = (long long)st.st_ctim.tv_sec;
    src->ctime_ns = (long)st.st_ctim.tv_nsec;
}

/* The token's identity (label, manufacturer, model, serial: none secret)
 * as hex SHA-256, so that a record made for another token never matches.
 * Two of its flags count too: whether it wants a login and whether its
 * user PIN is set. They change when the PIN the refusal was about is set
 * on the token (an NSS database given a password with `certutil -W`, a
 * user PIN initialised by the security officer), so the PIN source's
 * unchanged value is tried once more; a wrong try never changes them
 * (unlike CKF_USER_PIN_COUNT_LOW, which is left out for that reason). */
static int token_id(const CK_TOKEN_INFO *ti, char hex[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    unsigned char pin_state[2] = {(ti->flags & CKF_LOGIN_REQUIRED) ? 1 : 0,
                                  (ti->flags & CKF_USER_PIN_INITIALIZED) ? 1 : 0};
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    int ok = mctx != NULL && EVP_DigestInit_ex(mctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(mctx, ti->label, sizeof(ti->label)) == 1 &&
             EVP_DigestUpdate(mctx, ti->manufacturerID, sizeof(ti->manufacturerID)) == 1 &&
             EVP_DigestUpdate(mctx, ti->model, sizeof(ti->model)) == 1 &&
             EVP_DigestUpdate(mctx, ti->serialNumber, sizeof(ti->serialNumber)) == 1 &&
             EVP_DigestUpdate(mctx, pin_state, sizeof(pin_state)) == 1 &&
             EVP_DigestFinal_ex(mctx, md, &mdlen) == 1 && mdlen == 32;

    EVP_MD_CTX_free(mctx);
    if (!ok)
        return -1;
    for (unsigned i = 0; i < 32; i++)
        (void)snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return 0;
}

/* The MAC key's file: the record's path with ".key". */
static int key_path(const char *record, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s.key", record);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

/* Takes the lock beside the record for a change: its descriptor, or -1
 * when it cannot be had (logged: the change is made anyway, as before
 * there was a lock, since leaving a refusal unrecorded costs a PIN try
 * for certain). A lock file this user cannot open (made by a command
 * root ran with the service's configuration) is replaced. */
static int lock_record(const char *record)
{
    char path[4200];
    int n = snprintf(path, sizeof(path), "%s.lock", record), fd = -1;

    if (n < 0 || (size_t)n >= sizeof(path))
        return -1;
    fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 && (errno == EACCES || errno == EPERM) && unlink(path) == 0)
        fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        log_warn("the PIN refusal record's lock cannot be opened; changed without it path=\"%s\" err=\"%s\"",
                 log_qs(path), strerror(errno));
        return -1;
    }
    for (int waited = 0;; waited += 10) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0)
            return fd;
        if ((errno != EWOULDBLOCK && errno != EINTR) || waited >= LOCK_WAIT_MS) {
            log_warn("the PIN refusal record's lock cannot be had; changed without it path=\"%s\" err=\"%s\"",
                     log_qs(path), errno == EWOULDBLOCK ? "held by another process" : strerror(errno));
            (void)close(fd);
            return -1;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        (void)nanosleep(&ts, NULL);
    }
}

static void unlock_record(int fd)
{
    if (fd >= 0)
        (void)close(fd); /* lets the flock go */
}

/* Reads the MAC key (32 bytes, a regular file not open to others); with
 * create, makes one if there is none, and replaces one this process
 * cannot use. 0, or -1 (no key: nothing recorded for an env: source can
 * match). */
static int mac_key(const char *record, bool create, unsigned char key[MAC_KEY_LEN])
{
    char path[4200], tmp[4240];
    unsigned char *buf = NULL;
    size_t n = 0;
    struct stat st;
    int rc = -1, fd = -1, e;
    bool unusable = false;

    tmp[0] = '\0';
    if (key_path(record, path, sizeof(path)) != 0)
        return -1;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (lstat(path, &st) == 0) {
            if (S_ISREG(st.st_mode) && (st.st_mode & 077) == 0 &&
                util_read_file(path, MAC_KEY_LEN + 1, &buf, &n) == UTIL_OK && n == MAC_KEY_LEN) {
                memcpy(key, buf, MAC_KEY_LEN);
                rc = 0;
                goto out;
            }
            if (buf != NULL)
                util_secret_free(buf, n + 1);
            buf = NULL;
            n = 0;
            log_warn("the PIN refusal record's key is not usable; %s path=\"%s\"", create ? "replaced" : "ignored",
                     log_qs(path));
            unusable = true;
        } else if (errno != ENOENT) {
            goto out;
        }
        if (!create || RAND_bytes(key, MAC_KEY_LEN) != 1)
            goto out;
        if (unusable) {
            /* One this user cannot read (made by a command root ran with
             * the service's configuration) or not one this program wrote:
             * the entries made under it cannot be checked here anyway, and
             * keeping it would leave every later refusal here unrecorded,
             * sent again by every restart. */
            if (util_write_file_atomic(path, key, MAC_KEY_LEN, 0600) != UTIL_OK) {
                log_warn("the PIN refusal record's key cannot be written path=\"%s\" err=\"%s\"", log_qs(path),
                         strerror(errno));
                goto out;
            }
            rc = 0;
            goto out;
        }
        /* None yet: written under another name and linked in, so that of
         * two processes making one at once the second takes the first's
         * instead of replacing it (the entry the first wrote under it
         * would never match again). */
        e = snprintf(tmp, sizeof(tmp), "%s.%ld.new", path, (long)getpid());
        if (e < 0 || (size_t)e >= sizeof(tmp))
            goto out;
        (void)unlink(tmp); /* left by a process that had this pid and died */
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        errno = 0; /* a short write sets none */
        if (fd < 0 || write(fd, key, MAC_KEY_LEN) != MAC_KEY_LEN || fsync(fd) != 0) {
            log_warn("the PIN refusal record's key cannot be written path=\"%s\" err=\"%s\"", log_qs(path),
                     errno != 0 ? strerror(errno) : "short write");
            goto out;
        }
        (void)close(fd);
        fd = -1;
        e = link(tmp, path) == 0 ? 0 : errno;
        (void)unlink(tmp);
        tmp[0] = '\0';
        if (e == 0) {
            rc = 0;
            goto out;
        }
        if (e != EEXIST) {
            log_warn("the PIN refusal record's key cannot be written path=\"%s\" err=\"%s\"", log_qs(path),
                     strerror(e));
            goto out;
        }
        /* another process made one meanwhile: take that one */
    }
out:
    if (fd >= 0)
        (void)close(fd);
    if (tmp[0] != '\0')
        (void)unlink(tmp);
    if (buf != NULL)
        util_secret_free(buf, n + 1);
    if (rc != 0)
        OPENSSL_cleanse(key, MAC_KEY_LEN);
    return rc;
}

/* HMAC-SHA256 of the PIN under the key beside record, as hex. -1 when
 * there is no usable key (with create, none could be made). */
static int pin_mac(const char *record, const char *pin, size_t pin_len, bool create_key, char hex[65])
{
    unsigned char key[MAC_KEY_LEN], mac[32];
    unsigned int maclen = 0;
    int rc = -1;

    if (pin == NULL || pin_len == 0 || pin_len > INT32_MAX || mac_key(record, create_key, key) != 0)
        return -1;
    if (HMAC(EVP_sha256(), key, MAC_KEY_LEN, (const unsigned char *)pin, pin_len, mac, &maclen) == NULL ||
        maclen != 32)
        goto out;
    for (unsigned i = 0; i < 32; i++)
        (void)snprintf(hex + 2 * i, 3, "%02x", mac[i]);
    rc = 0;
out:
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(mac, sizeof(mac));
    return rc;
}

/* The record's entry line for this token and source: what a later
 * process compares. -1 when it cannot be made (no usable key for env:).
 * A file's line carries the PIN's MAC when a key can be had, and only
 * its identity when not (a key this user cannot read: the same line is
 * then made again by the next process, which cannot read it either). */
static int record_line(const char *record, const CK_TOKEN_INFO *ti, const hsm_pin_src *src, const char *pin,
                       size_t pin_len, bool create_key, char *out, size_t cap)
{
    char tok[65], hex[65];
    int n;

    if (token_id(ti, tok) != 0)
        return -1;
    if (src->is_file) {
        bool mac = pin_mac(record, pin, pin_len, create_key, hex) == 0;
        /* A pipe without the MAC would match whatever it gives next: a
         * corrected PIN refused for good. Not recorded then (sent again). */
        if (src->is_pipe && !mac)
            return -1;
        if (src->is_pipe) {
            n = snprintf(out, cap, "groupsrv-pin-refused 1 token=%s source=pipe mac=%s", tok, hex);
            return n < 0 || (size_t)n >= cap ? -1 : 0;
        }
        n = snprintf(out, cap, "groupsrv-pin-refused 1 token=%s source=file dev=%llu ino=%llu size=%lld "
                     "mtime=%lld.%09ld ctime=%lld.%09ld%s%s",
                     tok, src->dev, src->ino, src->size, src->mtime_s, src->mtime_ns, src->ctime_s, src->ctime_ns,
                     mac ? " mac=" : "", mac ? hex : "");
        return n < 0 || (size_t)n >= cap ? -1 : 0;
    }
    if (pin_mac(record, pin, pin_len, create_key, hex) != 0)
        return -1;
    n = snprintf(out, cap, "groupsrv-pin-refused 1 token=%s source=env mac=%s", tok, hex);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

/* One entry of the record: its line and the line after it for a person
 * ("refused=TIME rv=..."), each without its newline. */
typedef struct refusal_entry {
    const char *line, *note;
    size_t line_len, note_len;
} refusal_entry;

#define ENTRY_PREFIX "groupsrv-pin-refused 1 "

/* Splits the record's text (NUL-terminated, modified: newlines become
 * NULs) into its entries, the newest last; lines that are none (comments,
 * anything else) are skipped. Returns the count, at most cap. */
static size_t parse_entries(char *text, refusal_entry *e, size_t cap)
{
    size_t count = 0;
    char *p = text;

    while (*p != '\0') {
        char *nl = strchr(p, '\n');
        char *next = nl != NULL ? nl + 1 : p + strlen(p);
        if (nl != NULL)
            *nl = '\0';
        if (strncmp(p, ENTRY_PREFIX, sizeof(ENTRY_PREFIX) - 1) == 0 && strlen(p) < LINE_MAX_LEN) {
            if (count == cap) { /* the oldest goes */
                memmove(e, e + 1, (cap - 1) * sizeof(*e));
                count--;
            }
            e[count].line = p;
            e[count].line_len = strlen(p);
            e[count].note = "";
            e[count].note_len = 0;
            if (strncmp(next, "refused=", 8) == 0) {
                char *nl2 = strchr(next, '\n');
                e[count].note = next;
                e[count].note_len = nl2 != NULL ? (size_t)(nl2 - next) : strlen(next);
                if (nl2 != NULL)
                    *nl2 = '\0';
                next = nl2 != NULL ? nl2 + 1 : next + strlen(next);
            }
            count++;
        }
        p = next;
    }
    return count;
}

/* The record's text, or NULL when there is none this program can take
 * (absent, not a regular file closed to others' writes, unreadable,
 * larger than any it writes): logged, except absent. Caller frees. */
static char *read_record(const char *record)
{
    unsigned char *buf = NULL;
    size_t n = 0;
    struct stat st;

    if (lstat(record, &st) != 0)
        return NULL;
    /* Not one this program wrote (a link, a directory, a FIFO, a file
     * others may write): not taken as a refusal, said in the log. */
    if (!S_ISREG(st.st_mode) || (st.st_mode & 022) != 0) {
        log_warn("the PIN refusal record is not a regular file closed to others; ignored path=\"%s\"",
                 log_qs(record));
        return NULL;
    }
    if (util_read_file(record, RECORD_MAX, &buf, &n) != UTIL_OK) {
        log_warn("the PIN refusal record cannot be read; ignored path=\"%s\" err=\"%s\"", log_qs(record),
                 strerror(errno));
        return NULL;
    }
    return (char *)buf;
}

/* Copies the value of "name=" on line p (up to a space or newline) to out. */
static void field(const char *p, const char *name, char *out, size_t cap)
{
    const char *t = strstr(p, name);
    size_t k;

    if (cap == 0)
        return;
    out[0] = '\0';
    if (t == NULL)
        return;
    t += strlen(name);
    k = strcspn(t, " \n");
    if (k >= cap)
        k = cap - 1;
    memcpy(out, t, k);
    out[k] = '\0';
}

bool hsm_refusal_matches(const char *record, const CK_TOKEN_INFO *ti, const hsm_pin_src *src, const char *pin,
                         size_t pin_len, char *when, size_t whensz, char *rv, size_t rvsz)
{
    char want[LINE_MAX_LEN], note[LINE_MAX_LEN];
    refusal_entry e[ENTRIES_MAX];
    char *text = NULL;
    size_t count;
    bool match = false;

    if (whensz > 0)
        when[0] = '\0';
    if (rvsz > 0)
        rv[0] = '\0';
    if (record == NULL || (text = read_record(record)) == NULL)
        return false;
    if (record_line(record, ti, src, pin, pin_len, false, want, sizeof(want)) != 0)
        goto out;
    count = parse_entries(text, e, ENTRIES_MAX);
    for (size_t i = count; i-- > 0 && !match;) {
        if (strcmp(e[i].line, want) != 0)
            continue;
        match = true;
        /* the line after it: "refused=TIME rv=CKR_... ..." for the message */
        (void)snprintf(note, sizeof(note), "%.*s", (int)(e[i].note_len < 400 ? e[i].note_len : 400), e[i].note);
        field(note, "refused=", when, whensz);
        field(note, " rv=", rv, rvsz);
    }
out:
    free(text);
    return match;
}

/* Writes the entries (and the comment for a person) atomically, or
 * removes the record when none is left. */
static int write_entries(const char *record, const refusal_entry *e, size_t count)
{
    static const char comment[] =
        "# Each entry: a PIN source the token refused (or whose login failed in a way that may have\n"
        "# counted a try): groupsrv does not send it again until the source changes. Correct the PIN\n"
        "# in it; if the token's PIN was set to it instead, remove this file.\n";
    char *text;
    size_t len = sizeof(comment), off = 0;
    int rc;

    if (count == 0)
        return unlink(record) == 0 || errno == ENOENT ? 0 : -1;
    for (size_t i = 0; i < count; i++)
        len += e[i].line_len + e[i].note_len + 2;
    if ((text = malloc(len)) == NULL)
        return -1;
    for (size_t i = 0; i < count; i++) {
        memcpy(text + off, e[i].line, e[i].line_len);
        off += e[i].line_len;
        text[off++] = '\n';
        if (e[i].note_len > 0) {
            memcpy(text + off, e[i].note, e[i].note_len);
            off += e[i].note_len;
            text[off++] = '\n';
        }
    }
    memcpy(text + off, comment, sizeof(comment) - 1);
    off += sizeof(comment) - 1;
    rc = util_write_file_atomic(record, text, off, 0600) == UTIL_OK ? 0 : -1;
    free(text);
    return rc;
}

void hsm_refusal_record(const char *record, const CK_TOKEN_INFO *ti, const hsm_pin_src *src, const char *pin,
                        size_t pin_len, const char *pin_source, const char *rv)
{
    char line[LINE_MAX_LEN], text[LINE_MAX_LEN], stamp[32], serial[65];
    time_t now = time(NULL);
    struct tm tm;
    size_t k;
    int n, rc, lockfd;
    char *old = NULL;

    if (record == NULL)
        return;
    /* Held from before the entry's MAC is made: that may replace a key
     * this user cannot use (one root left), and two processes replacing
     * it at once would each write an entry under its own key, the one
     * whose key was replaced never matching again (its PIN sent again). */
    lockfd = lock_record(record);
    if (record_line(record, ti, src, pin, pin_len, true, line, sizeof(line)) != 0) {
        log_warn("the refused PIN cannot be recorded; a restart would send it again path=\"%s\"", log_qs(record));
        goto out;
    }
    if (gmtime_r(&now, &tm) == NULL || strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        (void)snprintf(stamp, sizeof(stamp), "unknown");
    k = sizeof(ti->serialNumber);
    while (k > 0 && (ti->serialNumber[k - 1] == ' ' || ti->serialNumber[k - 1] == '\0'))
        k--;
    for (size_t i = 0; i < k; i++)
        serial[i] = (ti->serialNumber[i] > 0x20 && ti->serialNumber[i] < 0x7f) ? (char)ti->serialNumber[i] : '?';
    serial[k] = '\0';
    /* The entry's second line is for a person reading the file. */
    /* Shown only when it names a file or variable, never a value that
     * may be the PIN itself written where its source belongs; control
     * bytes as '?'. */
    char shown[201];
    (void)snprintf(shown, sizeof(shown), "%s", hsm_pin_source_named(pin_source) ? pin_source : "(not shown)");
    for (char *c = shown; *c != '\0'; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
    n = snprintf(text, sizeof(text), "refused=%s rv=%s token_serial=%s pin_source=%.200s", stamp, rv, serial,
                 shown);
    if (n < 0 || (size_t)n >= sizeof(text)) {
        log_warn("the refused PIN cannot be recorded; a restart would send it again path=\"%s\"", log_qs(record));
        goto out;
    }
    /* The entries of other sources and tokens are kept (the same source's
     * earlier entry is replaced by this one, the newest). */
    refusal_entry e[ENTRIES_MAX];
    size_t count = 0, kept = 0;
    old = read_record(record);
    if (old != NULL)
        count = parse_entries(old, e, ENTRIES_MAX);
    for (size_t i = 0; i < count; i++)
        if (strcmp(e[i].line, line) != 0)
            e[kept++] = e[i];
    if (kept == ENTRIES_MAX) {
        memmove(e, e + 1, (ENTRIES_MAX - 1) * sizeof(*e));
        kept--;
    }
    e[kept] = (refusal_entry){line, text, strlen(line), (size_t)n};
    rc = write_entries(record, e, kept + 1);
    if (rc != 0)
        log_warn("the refused PIN cannot be recorded; a restart would send it again path=\"%s\" err=\"%s\"",
                 log_qs(record), strerror(errno));
    else
        log_info("refused PIN source recorded path=\"%s\"", log_qs(record));
out:
    unlock_record(lockfd);
    free(old);
}

void hsm_refusal_clear(const char *record, const CK_TOKEN_INFO *ti)
{
    refusal_entry e[ENTRIES_MAX];
    char tok[65], prefix[sizeof(ENTRY_PREFIX) + 80];
    size_t count, kept = 0;
    char *text = NULL;
    struct stat st;
    int lockfd = -1;

    if (record == NULL || lstat(record, &st) != 0)
        return;
    lockfd = lock_record(record);
    /* Only this token's entries: another token's refusal, in a directory
     * two configurations share, still stands. */
    if (token_id(ti, tok) != 0 || (text = read_record(record)) == NULL) {
        /* not one this program can read: out of date like any other */
        if (unlink(record) == 0)
            log_info("the PIN refusal record is removed: the token took the PIN path=\"%s\"", log_qs(record));
        else if (errno != ENOENT)
            log_warn("the PIN refusal record cannot be removed path=\"%s\" err=\"%s\"", log_qs(record),
                     strerror(errno));
        goto out;
    }
    (void)snprintf(prefix, sizeof(prefix), ENTRY_PREFIX "token=%s ", tok);
    count = parse_entries(text, e, ENTRIES_MAX);
    for (size_t i = 0; i < count; i++)
        if (strncmp(e[i].line, prefix, strlen(prefix)) != 0)
            e[kept++] = e[i];
    if (kept == count && count > 0)
        goto out; /* none of this token's */
    if (write_entries(record, e, kept) == 0)
        log_info("the PIN refusal record %s: the token took the PIN path=\"%s\"",
                 kept == 0 ? "is removed" : "no longer names this token", log_qs(record));
    else
        log_warn("the PIN refusal record cannot be removed path=\"%s\" err=\"%s\"", log_qs(record),
                 strerror(errno));
out:
    unlock_record(lockfd);
    free(text);
}
