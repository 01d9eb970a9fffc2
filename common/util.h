/*
 * util.h: small shared helpers: bounded file I/O, atomic 0600 writes,
 * PIN sources, strict base64, bounded string and number parsing.
 * Library code: returns 0 on success or a negative UTIL_E* code, never exits.
 */
#ifndef GS_UTIL_H
#define GS_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum util_err {
    UTIL_OK = 0,
    UTIL_E_NOMEM = -1,
    UTIL_E_IO = -2,       /* open/read/write/rename failed; errno kept */
    UTIL_E_TOOBIG = -3,   /* input exceeds the caller's cap */
    UTIL_E_FORMAT = -4,   /* malformed input (base64, number, ...) */
    UTIL_E_PERM = -5,     /* file mode too open for a secret */
    UTIL_E_NOTFOUND = -6, /* file or environment variable absent */
    UTIL_E_ARGS = -7,
    UTIL_E_NOTREG = -8,   /* a secret's file is no regular file nor named pipe */
    UTIL_E_NOWRITER = -9, /* a named pipe not written and closed within the wait */
};
const char *util_strerror(int err);

#define GS_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Reads a whole file of at most max bytes into a fresh buffer (NUL-terminated
 * for convenience; *len excludes the NUL). Caller frees (wipes if secret). */
int util_read_file(const char *path, size_t max, unsigned char **out, size_t *len);
/* As util_read_file for a regular file only: UTIL_E_NOTREG for anything
 * else (a named pipe, a device), found without waiting (the open does not
 * block for a pipe's writer), for a process whose loop must not stop. */
int util_read_regular_file(const char *path, size_t max, unsigned char **out, size_t *len);
/* The same for an open descriptor read to its end (stdin of a pipe):
 * UTIL_E_TOOBIG as soon as more than max bytes arrive. */
int util_read_fd(int fd, size_t max, unsigned char **out, size_t *len);

/* Writes data to path atomically: temp file in the same directory with the
 * given mode, write, fsync, rename, fsync the directory. */
int util_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);

/* fsync of a directory, so a rename into it survives a crash. */
int util_fsync_dir(const char *dir);

/* The directory part of path ("." if it has none, "/" for a file in /),
 * malloc'd (the caller frees it); NULL when out of memory. */
char *util_dir_of(const char *path);

/* Why the directory of path cannot be written, as an errno (EROFS for a
 * read-only file system also to root, EACCES), or 0 when it can. SQLite
 * says only "unable to open database file" when a WAL database's -shm
 * file cannot be made beside it, which it needs even to read. */
int util_dir_unwritable(const char *path);

/* The chattr attributes of path that forbid changing it other than by
 * appending: UTIL_ATTR_APPEND (chattr +a), UTIL_ATTR_IMMUTABLE (chattr
 * +i), or 0 when it has neither or they cannot be read (a file system
 * without them). dir: path is a directory, followed through a link;
 * otherwise a regular file, not followed. Anything else (a FIFO, a
 * device) is 0, never opened. */
#define UTIL_ATTR_APPEND 1
#define UTIL_ATTR_IMMUTABLE 2
int util_file_attrs(const char *path, int dir);
/* For messages about what util_file_attrs found: its name with the
 * chattr flag ("immutable (chattr +i)", else "append-only (chattr +a)";
 * immutable first, as it forbids more) and the flag's letter ('i' or 'a')
 * that chattr -X takes off. attrs is util_file_attrs's nonzero result. */
const char *util_file_attrs_name(int attrs);
char util_file_attrs_flag(int attrs);

/* Same as util_write_file_atomic, but streaming: util_atomic_open gives a FILE* on a temp file next to
 * path; util_atomic_commit fsyncs and renames it into place (and closes);
 * util_atomic_abort unlinks it. Both free *af. */
typedef struct util_atomic_file util_atomic_file;
int util_atomic_open(const char *path, mode_t mode, util_atomic_file **af);
void *util_atomic_fp(util_atomic_file *af); /* FILE * */
int util_atomic_commit(util_atomic_file *af);
void util_atomic_abort(util_atomic_file *af);

/* A PIN source: "env:NAME" reads the environment variable NAME, "file:PATH"
 * or a bare PATH reads the file (which must not be group/world readable).
 * Trailing newline stripped. *pin is NUL-terminated, at most 256 bytes;
 * release with util_secret_free(pin, len). */
int util_read_pin_source(const char *source, char **pin, size_t *len);
/* The same, waiting at most wait_ms for a named pipe's writer
 * (util_read_pin_source waits 10 s). */
int util_read_pin_source_wait(const char *source, int wait_ms, char **pin, size_t *len);
/* Why util_read_file (or util_read_regular_file) failed with rc, errno e
 * taken just after it, for a message: UTIL_E_IO says the system's reason
 * ("Is a directory", "Permission denied"), not "I/O error". */
const char *util_read_why(int rc, int e);
/* Why util_read_pin_source failed with rc, errno e taken just after it,
 * for a message: an open the system refused says its reason (permission
 * denied, a link that loops), not "I/O error"; UTIL_E_FORMAT is "empty". */
const char *util_pin_source_why(int rc, int e);
/* The file a PIN source reads ("file:PATH" or a bare PATH: PATH, a
 * pointer into source), or NULL for NULL or "env:NAME": one reading of
 * the syntax for the reader and for those who look at the file (the
 * refusal records' change check, check's [server] user row). */
const char *util_pin_source_path(const char *source);

/* Nonzero when a pkcs11: URI carries a PIN itself (a pin-value attribute,
 * RFC 7512 section 2.4, in its path or query, in any case). Such a URI is
 * refused where it is given and never shown: the PIN would be in an error
 * line, a log or a database record. */
int util_uri_has_pin_value(const char *uri);
/* The PIN source of a pkcs11: URI (pin-source, RFC 7512 section 2.4, or
 * p11-kit's older name pinfile), where and as p11-kit reads one: in the
 * path or the query, white space dropped in the scheme and names, the
 * scheme in any case, the name in lower case; given twice, the last, as
 * p11-kit takes it (groupmail's read and groupsrv's refusal are this one
 * reading: the PIN read from another file than other programs given the
 * URI read counts towards the token's lockout). 1 with *value (unless
 * value is NULL; malloc'd, release with util_secret_free) its value, %XX
 * decoded, white space at either end dropped and within kept (groupmail
 * has always read a path with a raw space so); 0 when there is none
 * (*value NULL); UTIL_E_FORMAT when p11-kit would refuse it (a name in
 * another case, "PIN-SOURCE="; a '%' that starts no %XX) or cut it short
 * (%00); UTIL_E_NOMEM. */
int util_uri_pin_source(const char *uri, char **value);
/* Nonzero when util_uri_pin_source finds a PIN source, or one p11-kit
 * refuses. groupsrv logs in to its token once, with [hsm] pin_source: a
 * key URI's own PIN source is refused where the URI is given (--use-key,
 * [tls] key) rather than ignored without a word. */
int util_uri_has_pin_source(const char *uri);

/* Nonzero when a pkcs11: URI holds a byte RFC 7512 wants percent-encoded
 * and p11-kit does not refuse. Always, in the path (before any '?': the
 * query names no token or key, and groupmail reads its pin-source= as
 * written): whitespace, which p11-kit drops without a word ("object=eng
 * key" names a key "engkey", "token=My Card" a token "MyCard"), and other
 * control bytes. With strict, anywhere in the URI, also bytes
 * above 0x7e (a label's UTF-8) and " < > \ ^ ` { | }, which p11-kit takes
 * as they are: refused where a URI is new (--use-key, which the database
 * records and every output shows), not in a configuration that worked.
 * A refusal gives the encoded form (below): the one that names what the
 * user meant. */
int util_uri_needs_escape(const char *uri, int strict);

/* The value of one hex digit c (either case), or -1 when c is none. */
int util_hex_digit(int c);

/* The n bytes of a pkcs11: URI's value at in with each %XX decoded (not
 * %00, nor a '%' that starts no %XX: kept as written) and white space
 * kept, unlike p11-kit: malloc'd, NUL-terminated; NULL when out of memory. */
char *util_uri_value_decode(const char *in, size_t n);

/* A value for a pkcs11: URI (RFC 7512: a token's or object's label),
 * every byte but the unreserved A-Z a-z 0-9 - . _ ~ written %XX, into out
 * (cap bytes; cut short at a whole byte when too small); returns out. */
char *util_uri_escape_value(const char *in, char *out, size_t cap);

/* util_uri_escape_value with ':' kept as it is (RFC 7512 allows it in a
 * value): an object label "gs:group:eng:v1" stays readable, while a ';',
 * '\'', space or '%' in it is encoded, so that the URI names that object
 * and nothing else, also inside shell single quotes. */
char *util_uri_escape_label(const char *in, char *out, size_t cap);

/* uri with each byte util_uri_needs_escape objects to written %XX
 * (upper-case hex), the rest as it was, into out (cap bytes, cut short
 * with "..." when too small); returns out. */
char *util_uri_escape_loose(const char *uri, char *out, size_t cap);

/* The host of scheme://[userinfo@]host[:port][/...] into host (size
 * bytes), an IPv6 literal without its brackets, as written (never
 * resolved): UTIL_OK; UTIL_E_FORMAT for no "://", an empty host, an
 * unclosed '[' or two '@' (parsers differ on where such a host starts);
 * UTIL_E_TOOBIG when it does not fit. host is "" on every failure. */
int util_url_host(const char *url, char *host, size_t size);

/* Nonzero when a URL's host (scheme://[userinfo@]host[:port][/...]) is
 * this machine's loopback: "localhost", an IPv4 address in 127.0.0.0/8,
 * or [::1]; as written, never resolved (a name that resolves to 127.0.0.1
 * elsewhere is not taken on trust). 0 for anything else, NULL included.
 * For the SMTP clients' rule that a password goes in clear only to a
 * relay on this host. */
int util_url_host_is_loopback(const char *url);

/* Nonzero when a URL's authority holds userinfo (an '@' before the host:
 * a user, a password, or ;AUTH= login options). libcurl logs in with
 * them, past every check of the SMTP clients' own user and password
 * settings, so an SMTP URL with them is refused. 0 for NULL. */
int util_url_has_userinfo(const char *url);

/* Where an SMTP client may send an AUTH password over a connection that
 * may stay clear (no smtps://, STARTTLS not required): nowhere, a server
 * on this host (util_url_host_is_loopback), or anywhere. The exploder's
 * [delivery] relay_auth_in_clear and groupmail's [smtp] auth_in_clear. */
typedef enum util_auth_clear { UTIL_AUTH_CLEAR_NO = 0, UTIL_AUTH_CLEAR_LOOPBACK, UTIL_AUTH_CLEAR_YES } util_auth_clear;

/* "no", "loopback" or "yes" (in any case) into *out: UTIL_OK, else
 * UTIL_E_FORMAT with *out unchanged (NULL included). */
int util_auth_clear_parse(const char *word, util_auth_clear *out);

/* Nonzero when rule lets a password go in clear to the server of url
 * (scheme://host...): yes anywhere, loopback only to this host, no never.
 * The caller has already found that the connection may stay clear. */
int util_auth_clear_allows(util_auth_clear rule, const char *url);

/* For an "env:NAME" source: wipes the variable's value in place (it stays
 * readable in /proc/PID/environ otherwise) and removes it from the
 * environment, so child processes and later readers do not see it. Other
 * sources: nothing. Call once the secret was read. Not thread-safe
 * (environment), like setenv. */
void util_forget_env_source(const char *source);

/* Wipes and frees a secret buffer (NULL is fine). */
void util_secret_free(void *p, size_t len);
/* A buffer that may hold a secret, grown by copying rather than realloc
 * (which could leave an unwiped copy in freed memory): a new malloc'd
 * buffer of newcap bytes starting with the first `used` bytes of p, which
 * is then wiped (oldcap bytes) and freed (p may be NULL). NULL when out
 * of memory, and p is left as it was. used <= oldcap, used <= newcap. */
void *util_secret_grow(void *p, size_t used, size_t oldcap, size_t newcap);

/* Standard base64 (RFC 4648), no line breaks on encode. Decode is strict:
 * rejects characters outside the alphabet, bad padding and input longer
 * than max_in; whitespace is not accepted. Caller frees the output. */
int util_b64_encode(const unsigned char *in, size_t len, char **out);
int util_b64_decode(const char *in, size_t inlen, size_t max_in, unsigned char **out, size_t *outlen);

/* Hex of bytes into a NUL-terminated buffer of 2*len+1. */
void util_hex(const unsigned char *in, size_t len, char *out);

/* Seconds of CLOCK_MONOTONIC as a double: for deadlines, ages and
 * durations, which must not jump when the wall clock is set. */
double util_monotonic_s(void);

/* Bounded copy: always NUL-terminates; returns UTIL_E_TOOBIG on truncation. */
int util_strlcpy(char *dst, const char *src, size_t size);

/* Strict decimal parsing: whole string, no sign for unsigned, range checked. */
int util_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
int util_parse_int(const char *s, long min, long max, long *out);

/* Overflow-checked size arithmetic: 0 on success. */
int util_size_add(size_t a, size_t b, size_t *out);
int util_size_mul(size_t a, size_t b, size_t *out);

/* Random hex id of 2*nbytes chars (nbytes <= 16) from the OpenSSL DRBG. */
int util_random_id(char *out, size_t nbytes);

/* Is the certificate (an X509 *) valid now, notBefore <= now <= notAfter?
 * 0 if so; else -1 with why (cap bytes) saying how, in words that follow
 * a name: "expired on 2026-01-02 00:00:00 UTC", "is not valid before
 * ...", "has an unreadable validity period". */
struct x509_st;
int util_cert_valid_now(const struct x509_st *cert, char *why, size_t cap);
/* The certificate's notAfter as "YYYY-MM-DD HH:MM:SS UTC" (cap bytes;
 * "an unreadable date" if it cannot be read). */
void util_cert_not_after_text(const struct x509_st *cert, char *buf, size_t cap);
/* An ASN1_TIME (a certificate's or a CRL's) as "YYYY-MM-DD HH:MM:SS UTC"
 * ("an unreadable date" if it cannot be read). */
struct asn1_string_st;
void util_asn1_time_text(const struct asn1_string_st *t, char *buf, size_t cap);

/* A pem_password_cb that gives no passphrase (-1): an encrypted PEM block
 * fails to read instead of asking on the terminal. Without it OpenSSL's
 * default asks through its UI, which under the network process's seccomp
 * filter is a forbidden call (ioctl on the terminal) that ends the
 * process; elsewhere it would wait for a terminal a service has not. */
int util_pem_no_passphrase(char *buf, int size, int rwflag, void *u);

/* Standard input, output or error closed by whoever started the program
 * (`>&-`, cron, a supervisor): the next file opened takes that number,
 * and what is meant for that stream lands in it (an error line in the
 * audit log, a database or a socket to the server; output in a spool
 * file). Each closed one of 0, 1, 2 is opened on /dev/null, the way
 * OpenSSH's sanitise_stdfd does: input write-only and output read-only,
 * so that reading or writing them fails (EBADF) as it did while they were
 * closed and the program says so (no empty message taken, no output
 * silently lost); error write-only (lines dropped). Open ones are left as
 * they are. Call first thing in main(),
 * before anything opens a file. UTIL_OK, else UTIL_E_IO (errno kept:
 * /dev/null missing) and the program should exit: nothing can be said. */
int util_sanitise_stdfd(void);

/* The addresses "host:port" or "[v6]:port" resolves to for a listening
 * TCP socket (AI_PASSIVE: an empty host is the wildcard), in *ai (the
 * caller frees it with freeaddrinfo). 0; UTIL_LISTEN_NOT_HOSTPORT; or
 * UTIL_LISTEN_UNRESOLVED with *why getaddrinfo's words (errno means
 * nothing then). serve binds the first; `check` compares the first of two
 * listeners, so both take an address the same way. */
#define UTIL_LISTEN_NOT_HOSTPORT (-1)
#define UTIL_LISTEN_UNRESOLVED (-2)
struct addrinfo;
int util_listen_resolve(const char *hostport, struct addrinfo **ai, const char **why);
/* Nonzero when util_sanitise_stdfd found fd (0, 1 or 2) closed and put
 * /dev/null there. */
int util_stdfd_was_closed(int fd);

/* A file-size limit (RLIMIT_FSIZE: `ulimit -f`, systemd's LimitFSIZE=)
 * makes a write past it raise SIGXFSZ, whose default kills the process
 * (exit 153) in the middle of a change: a member's key and certificate
 * files left behind with no member, an audit "started" record with no
 * outcome, a half-written output file. Ignored, the write fails with
 * EFBIG instead and takes the path every full disk takes (a clear error,
 * the change undone). The disposition is inherited by children, which
 * then see EFBIG too. Call first thing in main(), beside
 * util_sanitise_stdfd. */
void util_fsize_limit_fails_writes(void);

/* In a child after fork(): closes every descriptor above stderr but the
 * n in keep[] (which it may reorder), so that a child does not hold its
 * parent's listeners and links. */
void util_close_all_but(int *keep, unsigned n);

/* mkdir -p with the given mode for created components. */
int util_mkdir_p(const char *path, mode_t mode);

#endif
