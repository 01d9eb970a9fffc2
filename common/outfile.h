/*
 * outfile.h: how every program writes the file an `--out` names
 * (groupmail's commands, groupsrv's token transport-key, group and ca
 * export, tls init). A regular file, or a name that is none yet, is
 * replaced atomically (a temp file beside it renamed over it, with the
 * caller's mode); anything else is written as it is, never renamed over:
 *  - standard output or error itself: no --out, or one that names
 *    descriptor 1 or 2 (/dev/stdout, /dev/fd/1, /proc/self/fd/2,
 *    /proc/thread-self/fd/1, a link to one, relative or not) or the file
 *    the stream is open on (/dev/stdout with `> FILE`: not opened anew at
 *    offset 0). A closed standard output stays closed (its read-only
 *    /dev/null stand-in fails the write: exit 1, as without --out); a
 *    closed standard error is refused (UTIL_OUT_E_CLOSED);
 *  - an existing named pipe or character device (/dev/null, /dev/stdout
 *    on a pipe or a terminal, a pipe a mail tool reads), opened and
 *    written; renaming over it put a regular file holding the output in
 *    place of the pipe or device (as root, in place of /dev/null or
 *    /dev/stdout) and nothing reached the reader.
 * Output to a stream is staged until commit, so a command that fails
 * before it writes nothing there. Library code: returns 0 or a negative
 * UTIL_OUT_E* code (errno kept where it says so), never prints or exits.
 */
#ifndef GS_OUTFILE_H
#define GS_OUTFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>

enum util_out_err {
    UTIL_OUT_OK = 0,
    UTIL_OUT_E_NOMEM = -1,
    UTIL_OUT_E_CREATE = -2,   /* the temp file beside a regular file cannot be made; errno kept */
    UTIL_OUT_E_OPEN = -3,     /* the named pipe or device cannot be opened; errno kept */
    UTIL_OUT_E_REPLACED = -4, /* the pipe or device was replaced by another file as it was opened */
    UTIL_OUT_E_FOREIGN = -5,  /* another user's pipe or device in a directory others can write */
    UTIL_OUT_E_CLOSED = -6,   /* names standard error, which the caller closed */
    UTIL_OUT_E_STAGE = -7,    /* no memory file or temporary file to stage the output in; errno kept */
    UTIL_OUT_E_WRITE = -8,    /* writing, syncing or renaming into place failed; errno kept */
    UTIL_OUT_E_ARGS = -9,
};
/* One line of text for an error (no path in it): "cannot be opened", ... */
const char *util_out_strerror(int err);

typedef enum util_out_kind {
    UTIL_OUT_FILE,   /* a regular file (or none yet): replaced by rename */
    UTIL_OUT_STDOUT, /* standard output (path NULL or naming it) */
    UTIL_OUT_STDERR, /* standard error */
    UTIL_OUT_STREAM, /* an existing named pipe or character device, opened by name */
} util_out_kind;

/* An anonymous memory file (memfd: no name in any file system; name is
 * what /proc shows), read and write, close-on-exec, or NULL with errno
 * set. No fallback to a disk file: plaintext must not land there. */
FILE *util_memory_file(const char *name);

/* Flags of util_out_open. */
#define UTIL_OUT_MEMORY 1 /* stage in an anonymous memory file (memfd), never on disk: plaintext */

/* What util_out_commit wrote: its kind and, for UTIL_OUT_FILE, the file
 * renamed into place (so util_out_take_back removes that file only). */
typedef struct util_out_written {
    util_out_kind kind;
    dev_t dev;
    ino_t ino;
} util_out_written;

/* How path (NULL: standard output) would be written now; a guess for
 * choosing where other text goes (util_out_open decides again). */
util_out_kind util_out_kind_of(const char *path);

/* Where a command writing --out of this kind puts its own lines
 * ("wrote ...", a fingerprint): standard error when --out is standard
 * output (which then holds only the file), else standard output. */
FILE *util_out_info_stream(util_out_kind kind);

/* Opens path for output as above; mode is a regular file's (0600 for
 * one that holds secrets). *o is the caller's until util_out_commit or
 * util_out_abort. 0 or UTIL_OUT_E_*. */
typedef struct util_out util_out;
int util_out_open(const char *path, mode_t mode, int flags, util_out **o);
FILE *util_out_fp(util_out *o);           /* where the bytes go until commit */
util_out_kind util_out_get_kind(const util_out *o);
/* Puts the bytes in place: a file renamed over path (fsynced), a stream
 * written and flushed. Frees o. w (may be NULL) says what was written. 0
 * or UTIL_OUT_E_WRITE (nothing renamed into place then). */
int util_out_commit(util_out *o, util_out_written *w);
/* Drops o and what was written to it (nothing reaches path); NULL is fine. */
void util_out_abort(util_out *o);

/* util_out_open, one write of len bytes, util_out_commit. */
int util_out_write(const char *path, const void *buf, size_t len, mode_t mode, int flags, util_out_written *w);

/* Takes back what util_out_commit put at path when what follows it
 * failed (its record could not be written): path is unlinked only if it
 * is still the regular file committed there; a stream's bytes are gone,
 * and a file someone put there since (or a pipe, or /dev/stdout) is never
 * removed. */
void util_out_take_back(const char *path, const util_out_written *w);

#endif
