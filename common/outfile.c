/* outfile.c: see outfile.h. Moved here from groupmail so that groupsrv's
 * --out writers are the same code, not a second copy. */
#define _GNU_SOURCE /* memfd_create */
#include "outfile.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "util.h"

/* UTIL_OUT_CLOSED: a name for a standard stream the caller closed, whose
 * /dev/null stand-in would take the writes (refused). */
#define UTIL_OUT_CLOSED ((util_out_kind)-1)
/* UTIL_OUT_OTHER: a socket, block device or directory: neither written
 * nor renamed over (as root, a regular file in place of /dev/sda). */
#define UTIL_OUT_OTHER ((util_out_kind)-2)

struct util_out {
    util_out_kind kind;
    util_atomic_file *af; /* UTIL_OUT_FILE */
    FILE *tmp;            /* the staged bytes of a stream */
    FILE *dest;           /* stdout, stderr, or the opened pipe or device */
};

const char *util_out_strerror(int err)
{
    switch (err) {
    case UTIL_OUT_OK: return "success";
    case UTIL_OUT_E_NOMEM: return "out of memory";
    case UTIL_OUT_E_CREATE: return "cannot be created";
    case UTIL_OUT_E_OPEN: return "cannot be opened";
    case UTIL_OUT_E_REPLACED: return "it was replaced as it was opened";
    case UTIL_OUT_E_FOREIGN: return "a named pipe or device of another user in a directory others can write";
    case UTIL_OUT_E_CLOSED: return "names a standard stream the caller closed";
    case UTIL_OUT_E_STAGE: return "no memory or temporary file to stage the output in";
    case UTIL_OUT_E_WRITE: return "cannot write the output";
    case UTIL_OUT_E_ARGS: return "not a regular file, named pipe or character device";
    }
    return "unknown error";
}

/* Is fd open on the file st describes, of any type, and writable? The
 * file standard output or error already is: a file (not to be opened anew
 * at offset 0), a pipe or terminal (the same stream), a socket (which
 * /dev/stdout cannot open: ENXIO, and which a rename would replace the
 * link of). Not one that is only the read-only /dev/null standing in for
 * a closed standard output (util_sanitise_stdfd): writes to it fail, an
 * --out /dev/null must not. */
static bool same_file(int fd, const struct stat *st)
{
    struct stat fs;
    int fl;

    return fstat(fd, &fs) == 0 && fs.st_dev == st->st_dev && fs.st_ino == st->st_ino &&
           (fl = fcntl(fd, F_GETFL)) >= 0 && (fl & O_ACCMODE) != O_RDONLY;
}

/* Is dir (resolved) this process's descriptor directory: /proc/PID/fd,
 * or /proc/PID/task/TID/fd (/proc/thread-self/fd, which shares the
 * table)? PID as /proc/self resolves, not getpid(): in a PID namespace
 * whose /proc is the host's they differ. */
static bool is_own_fd_dir(const char *dir)
{
    char *self = realpath("/proc/self", NULL);
    const char *p;
    size_t n;
    bool own = false;

    if (self == NULL || strncmp(dir, self, (n = strlen(self))) != 0 || dir[n] != '/')
        goto out;
    p = dir + n + 1;
    if (strcmp(p, "fd") == 0) {
        own = true;
        goto out;
    }
    if (strncmp(p, "task/", 5) != 0 || p[5] < '0' || p[5] > '9')
        goto out;
    for (p += 5; *p >= '0' && *p <= '9'; p++)
        ;
    own = strcmp(p, "/fd") == 0;
out:
    free(self);
    return own;
}

/* Which descriptor of this process (standard input 0, output 1, error 2,
 * or another: /dev/fd/63 of the shell's `>(cmd)`) does path name by a
 * descriptor link (/dev/stdout, /dev/fd/1, /proc/self/fd/2,
 * /proc/thread-self/fd/1, a link to one, relative or not), or -1. Asked
 * of the names, link by link: stat and realpath only see the file the
 * descriptor is open on, which for a closed one is the /dev/null put
 * there, and `--out /dev/null` must still be written. No race with the
 * open: a standard stream is written through its descriptor, never opened
 * by this name. */
static int names_own_fd(const char *path)
{
    char cur[PATH_MAX], next[PATH_MAX], dir[PATH_MAX], *real = NULL, *copy = NULL;
    int fd = -1;

    if (snprintf(cur, sizeof(cur), "%s", path) >= (int)sizeof(cur))
        return -1;
    for (int hop = 0; hop < 40; hop++) { /* the kernel's limit of links in one name (MAXSYMLINKS) */
        ssize_t n;

        free(copy);
        free(real);
        real = NULL;
        if ((copy = strdup(cur)) == NULL || snprintf(dir, sizeof(dir), "%s", dirname(copy)) >= (int)sizeof(dir))
            break;
        if ((real = realpath(dir, NULL)) != NULL && is_own_fd_dir(real)) {
            const char *base = strrchr(cur, '/') != NULL ? strrchr(cur, '/') + 1 : cur; /* "1" in /proc/self/fd */
            char *end = NULL;
            long v;

            errno = 0;
            v = strtol(base, &end, 10);
            /* as /proc reads the name: digits, no leading zero ("01" is no entry) */
            if (*base >= '0' && *base <= '9' && (base[0] != '0' || base[1] == '\0') && end != NULL && *end == '\0' &&
                errno == 0 && v <= INT_MAX)
                fd = (int)v;
            break;
        }
        if ((n = readlink(cur, next, sizeof(next) - 1)) < 0)
            break; /* not a link: a name of its own */
        next[n] = '\0';
        if (next[0] == '/') {
            memcpy(cur, next, (size_t)n + 1);
        } else if (snprintf(cur, sizeof(cur), "%s/%s", dir, next) >= (int)sizeof(cur)) {
            break;
        }
    }
    free(copy);
    free(real);
    return fd;
}

static util_out_kind kind_stat(const char *path, struct stat *st)
{
    int named;

    if (path == NULL)
        return UTIL_OUT_STDOUT;
    /* --out /dev/stdout or /dev/stderr is that stream, also when the
     * caller closed it: then the output has nowhere to go (standard
     * output's stand-in is read-only: exit 1, as without --out), instead
     * of the /dev/null standing in for it being opened anew for writing
     * and the output vanishing with exit 0. */
    if ((named = names_own_fd(path)) == 1)
        return UTIL_OUT_STDOUT;
    if (named == 2)
        return util_stdfd_was_closed(2) ? UTIL_OUT_CLOSED : UTIL_OUT_STDERR;
    if (named == 0 && util_stdfd_was_closed(0)) /* its stand-in is a write-only /dev/null */
        return UTIL_OUT_CLOSED;
    if (stat(path, st) != 0)
        return UTIL_OUT_FILE;
    if (same_file(STDOUT_FILENO, st))
        return UTIL_OUT_STDOUT;
    if (same_file(STDERR_FILENO, st))
        return UTIL_OUT_STDERR;
    if (S_ISFIFO(st->st_mode) || S_ISCHR(st->st_mode))
        return UTIL_OUT_STREAM;
    return S_ISREG(st->st_mode) ? UTIL_OUT_FILE : UTIL_OUT_OTHER;
}

util_out_kind util_out_kind_of(const char *path)
{
    struct stat st;
    util_out_kind k = kind_stat(path, &st);

    return k == UTIL_OUT_CLOSED || k == UTIL_OUT_OTHER ? UTIL_OUT_FILE : k;
}

FILE *util_out_info_stream(util_out_kind kind) { return kind == UTIL_OUT_STDOUT ? stderr : stdout; }

/* Is the directory of path_in_dir one others can write (world- or
 * group-writable, sticky or not) in which st is another user's (neither
 * this user's nor the directory owner's)? Unknown: yes. */
static bool foreign_in_dir(const char *path_in_dir, const struct stat *st)
{
    char *copy = strdup(path_in_dir);
    struct stat d;
    bool foreign = true;

    if (copy != NULL && stat(dirname(copy), &d) == 0)
        foreign = (d.st_mode & (S_IWOTH | S_IWGRP)) && st->st_uid != geteuid() && st->st_uid != d.st_uid;
    free(copy);
    return foreign;
}

/* A named pipe or device someone else put at the --out path in a
 * directory others can write (/tmp, a team's shared directory): the
 * output would go to whoever reads it. Renamed over, as --out once always
 * was, it was harmless (the file 0600, the pipe gone); the shell's `>` is
 * refused it by the kernel in a sticky directory (fs.protected_fifos,
 * which only O_CREAT opens get). Refused by that rule, and also where the
 * directory is not sticky (there anyone who can write it can put their
 * pipe at any name): in such a directory, only a stream of this user's or
 * of the directory's owner. Asked of the directory the path names as
 * given and of the one it resolves to now: the other user may have
 * renamed a symbolic link to a pipe of theirs elsewhere over the entry,
 * which the resolved directory alone would not see. */
static bool stream_foreign(const char *path, const struct stat *st)
{
    char *real;
    bool foreign;
    int own = names_own_fd(path);

    /* A pipe this process was given on a descriptor (`--out >(cmd)`,
     * /dev/fd/63): no one put it in a directory, and its name resolves to
     * none (pipe:[N]), which the rule below took for unknown, refused. */
    if (own >= 0 && same_file(own, st))
        return false;
    real = realpath(path, NULL);
    foreign = foreign_in_dir(path, st) || real == NULL || foreign_in_dir(real, st);

    free(real);
    return foreign;
}

/* The existing pipe or device stat saw at path, opened (never created):
 * whoever can write a directory on the path can put another file there
 * in between, and a regular file (a link to one) opened without O_TRUNC
 * would get the output over its start. Only the stream stat saw is
 * written to, and it is looked at before it is opened for writing: the
 * name is first opened O_PATH (which neither blocks on a pipe nor runs a
 * device's open), that very file checked, and only then opened for
 * writing through /proc/self/fd. Opened for writing by name first, a pipe
 * swapped in (or another user's, refused only after) held the command in
 * open until someone read it, and a device swapped in (a watchdog, a tape
 * that rewinds on close, a serial line waiting for carrier) was opened
 * as root. Without /proc (a chroot) the name is opened and checked after. */
static int open_stream(const char *path, const struct stat *seen, FILE **dest)
{
    struct stat got;
    char proc[64];
    int pfd = -1, fd = -1, rc = UTIL_OUT_E_OPEN;

    *dest = NULL;
    if ((pfd = open(path, O_PATH | O_CLOEXEC)) < 0)
        goto out;
    if (fstat(pfd, &got) != 0)
        goto out;
    rc = UTIL_OUT_E_REPLACED;
    if (got.st_dev != seen->st_dev || got.st_ino != seen->st_ino || !(S_ISFIFO(got.st_mode) || S_ISCHR(got.st_mode)))
        goto out;
    rc = UTIL_OUT_E_FOREIGN;
    if (stream_foreign(path, &got))
        goto out;
    rc = UTIL_OUT_E_OPEN;
    (void)snprintf(proc, sizeof(proc), "/proc/self/fd/%d", pfd);
    /* Through /proc the very file checked above is opened: not looked at
     * again by name, where a reader that removes its pipe once it has it
     * open (`{ rm p; cat; } < p`) left no name to resolve and the pipe
     * was refused as another user's. Only the open by name is checked
     * after. */
    if ((fd = open(proc, O_WRONLY | O_NOCTTY | O_CLOEXEC)) < 0) {
        if (errno != ENOENT)
            goto out;
        if ((fd = open(path, O_WRONLY | O_NOCTTY | O_CLOEXEC)) < 0) /* no /proc */
            goto out;
        if (fstat(fd, &got) != 0)
            goto out;
        rc = UTIL_OUT_E_REPLACED;
        if (got.st_dev != seen->st_dev || got.st_ino != seen->st_ino ||
            !(S_ISFIFO(got.st_mode) || S_ISCHR(got.st_mode)))
            goto out;
        rc = UTIL_OUT_E_FOREIGN;
        if (stream_foreign(path, &got))
            goto out;
        rc = UTIL_OUT_E_OPEN;
    }
    if ((*dest = fdopen(fd, "wb")) == NULL)
        goto out;
    fd = -1;
    rc = UTIL_OUT_OK;
out:
    {
        int e = errno;
        if (fd >= 0)
            close(fd);
        if (pfd >= 0)
            close(pfd);
        errno = e;
    }
    return rc;
}

FILE *util_memory_file(const char *name)
{
    FILE *f;
    int fd = memfd_create(name, MFD_CLOEXEC);

    if (fd < 0)
        return NULL;
    if ((f = fdopen(fd, "w+b")) == NULL)
        close(fd);
    return f;
}

int util_out_open(const char *path, mode_t mode, int flags, util_out **op)
{
    struct stat seen;
    util_out *o = NULL;
    int rc = UTIL_OUT_E_NOMEM;

    *op = NULL;
    if (path != NULL && *path == '\0')
        return UTIL_OUT_E_ARGS;
    if ((o = calloc(1, sizeof(*o))) == NULL)
        goto out;
    o->kind = kind_stat(path, &seen);
    if (o->kind == UTIL_OUT_CLOSED) {
        rc = UTIL_OUT_E_CLOSED;
        goto out;
    }
    if (o->kind == UTIL_OUT_OTHER) {
        rc = UTIL_OUT_E_ARGS;
        goto out;
    }
    if (o->kind == UTIL_OUT_FILE) {
        rc = util_atomic_open(path, mode, &o->af) == UTIL_OK ? UTIL_OUT_OK : UTIL_OUT_E_CREATE;
        goto out;
    }
    if (o->kind == UTIL_OUT_STREAM) {
        if ((rc = open_stream(path, &seen, &o->dest)) != UTIL_OUT_OK)
            goto out;
    } else {
        o->dest = o->kind == UTIL_OUT_STDERR ? stderr : stdout;
    }
    rc = UTIL_OUT_E_STAGE;
    if ((o->tmp = (flags & UTIL_OUT_MEMORY) ? util_memory_file("out-staged") : tmpfile()) == NULL)
        goto out;
    rc = UTIL_OUT_OK;
out:
    if (rc == UTIL_OUT_OK) {
        *op = o;
    } else {
        int e = errno;
        util_out_abort(o);
        errno = e;
    }
    return rc;
}

FILE *util_out_fp(util_out *o) { return o->af != NULL ? util_atomic_fp(o->af) : o->tmp; }

util_out_kind util_out_get_kind(const util_out *o) { return o->kind; }

void util_out_abort(util_out *o)
{
    if (o == NULL)
        return;
    if (o->af != NULL)
        util_atomic_abort(o->af);
    if (o->tmp != NULL)
        fclose(o->tmp); /* tmpfile() and memfd: nothing left behind */
    if (o->dest != NULL && o->dest != stdout && o->dest != stderr)
        fclose(o->dest);
    free(o);
}

/* SIGPIPE held back while a stream is written: a pipe whose reader has
 * gone (`| head -c0`, a mail tool that quit) is then a failed write, exit
 * 1 with the command's own clean-up (a new key taken off the token, the
 * failure audited), instead of the signal ending the program between
 * making the key and recording it. One that the write raised is taken
 * back before SIGPIPE is let through again. */
struct sigpipe_state {
    sigset_t old;
    bool pending_before, blocked;
};

static void sigpipe_block(struct sigpipe_state *sp)
{
    sigset_t pipe_only, pending;

    memset(sp, 0, sizeof(*sp));
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    if (sigprocmask(SIG_BLOCK, &pipe_only, &sp->old) != 0)
        return;
    sp->blocked = true;
    sp->pending_before = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
}

static void sigpipe_unblock(struct sigpipe_state *sp)
{
    static const struct timespec now = {0, 0};
    sigset_t pipe_only, pending;
    int e = errno;

    if (!sp->blocked)
        return;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    if (!sp->pending_before && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1)
        (void)sigtimedwait(&pipe_only, NULL, &now);
    (void)sigprocmask(SIG_SETMASK, &sp->old, NULL);
    errno = e;
}

int util_out_commit(util_out *o, util_out_written *w)
{
    struct sigpipe_state sp;
    struct stat st;
    char buf[65536];
    size_t n;
    int rc = UTIL_OUT_E_WRITE;

    if (w != NULL)
        memset(w, 0, sizeof(*w));
    if (o == NULL)
        return UTIL_OUT_E_ARGS;
    if (w != NULL)
        w->kind = o->kind;
    if (o->af != NULL) {
        FILE *fp = util_atomic_fp(o->af);

        if (fflush(fp) != 0 || fstat(fileno(fp), &st) != 0) {
            util_atomic_abort(o->af);
        } else if (util_atomic_commit(o->af) == UTIL_OK) {
            if (w != NULL) {
                w->dev = st.st_dev;
                w->ino = st.st_ino;
            }
            rc = UTIL_OUT_OK;
        }
        o->af = NULL;
        goto out;
    }
    if (fflush(o->tmp) != 0 || fseek(o->tmp, 0, SEEK_SET) != 0)
        goto out;
    sigpipe_block(&sp);
    while ((n = fread(buf, 1, sizeof(buf), o->tmp)) > 0)
        if (fwrite(buf, 1, n, o->dest) != n)
            break;
    if (n == 0 && !ferror(o->tmp) && fflush(o->dest) == 0)
        rc = UTIL_OUT_OK;
    sigpipe_unblock(&sp);
    if (rc != UTIL_OUT_OK)
        goto out;
    rc = UTIL_OUT_E_WRITE;
    if (o->dest != stdout && o->dest != stderr) {
        FILE *d = o->dest;

        o->dest = NULL;
        if (fclose(d) != 0)
            goto out;
    }
    rc = UTIL_OUT_OK;
out:
    OPENSSL_cleanse(buf, sizeof(buf));
    {
        int e = errno;
        util_out_abort(o);
        errno = e;
    }
    return rc;
}

int util_out_write(const char *path, const void *buf, size_t len, mode_t mode, int flags, util_out_written *w)
{
    util_out *o = NULL;
    int rc;

    if (w != NULL)
        memset(w, 0, sizeof(*w));
    if ((rc = util_out_open(path, mode, flags, &o)) != UTIL_OUT_OK)
        return rc;
    if (len > 0 && fwrite(buf, 1, len, util_out_fp(o)) != len) {
        int e = errno;
        util_out_abort(o);
        errno = e;
        return UTIL_OUT_E_WRITE;
    }
    return util_out_commit(o, w);
}

void util_out_take_back(const char *path, const util_out_written *w)
{
    struct stat st;

    /* Only the very file renamed into place: by name alone this would
     * remove whatever is there now (someone's file put there since, or,
     * for a stream, the pipe or /dev/stdout itself as root). */
    if (path == NULL || w == NULL || w->kind != UTIL_OUT_FILE || lstat(path, &st) != 0 || !S_ISREG(st.st_mode) ||
        st.st_dev != w->dev || st.st_ino != w->ino)
        return;
    (void)unlink(path);
}
