/* util.c: see util.h. */
#define _GNU_SOURCE /* O_TMPFILE, linkat, strndup */
#include "util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <signal.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <poll.h>
#include <linux/fs.h> /* FS_IOC_GETFLAGS: chattr attributes */
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <time.h>

#define PIN_MAX 256

const char *util_strerror(int err)
{
    switch (err) {
    case UTIL_OK: return "success";
    case UTIL_E_NOMEM: return "out of memory";
    case UTIL_E_IO: return "I/O error";
    case UTIL_E_TOOBIG: return "input too large";
    case UTIL_E_FORMAT: return "malformed input";
    case UTIL_E_PERM: return "file permissions too open for a secret (want 0600)";
    case UTIL_E_NOTFOUND: return "not found";
    case UTIL_E_ARGS: return "invalid arguments";
    case UTIL_E_NOTREG: return "not a regular file or named pipe";
    case UTIL_E_NOWRITER: return "a named pipe not written and closed within 10 s";
    }
    return "unknown error";
}

void util_secret_free(void *p, size_t len)
{
    if (p == NULL)
        return;
    OPENSSL_cleanse(p, len);
    free(p);
}

void *util_secret_grow(void *p, size_t used, size_t oldcap, size_t newcap)
{
    unsigned char *np = malloc(newcap > 0 ? newcap : 1);

    if (np == NULL)
        return NULL;
    if (used > 0)
        memcpy(np, p, used);
    util_secret_free(p, oldcap);
    return np;
}

int util_read_fd(int fd, size_t max, unsigned char **out, size_t *len)
{
    int rc = UTIL_E_IO;
    unsigned char *buf = NULL;
    size_t used = 0, cap;

    *out = NULL;
    *len = 0;
    if (fd < 0 || max == SIZE_MAX)
        return UTIL_E_ARGS;
    cap = max < 4096 ? max : 4096;
    if ((buf = malloc(cap + 1)) == NULL)
        return UTIL_E_NOMEM;
    for (;;) {
        if (used == cap && cap == max) {
            /* Full at the cap: the input fits only if it ends here. */
            unsigned char probe;
            ssize_t m;
            do
                m = read(fd, &probe, 1);
            while (m < 0 && errno == EINTR);
            if (m == 0)
                break;
            rc = m < 0 ? UTIL_E_IO : UTIL_E_TOOBIG;
            goto out;
        }
        if (used == cap) {
            size_t ncap = cap > max / 2 ? max : cap * 2;
            /* The data may be a secret. */
            unsigned char *nb = util_secret_grow(buf, used, cap + 1, ncap + 1);
            if (nb == NULL) {
                rc = UTIL_E_NOMEM;
                goto out;
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t n = read(fd, buf + used, cap - used);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            goto out;
        }
        if (n == 0)
            break;
        used += (size_t)n;
    }
    buf[used] = '\0';
    *out = buf;
    *len = used;
    buf = NULL;
    rc = UTIL_OK;
out:
    if (buf != NULL)
        util_secret_free(buf, cap + 1);
    return rc;
}

/* One open-and-read for util_read_file and util_read_regular_file.
 * regular_only: opened without waiting (O_NONBLOCK: a FIFO's open would
 * wait for a writer) and anything but a regular file refused; otherwise
 * whatever the path is gets read. */
static int read_path(const char *path, size_t max, bool regular_only, unsigned char **out, size_t *len)
{
    int rc, fd;
    struct stat st;
    bool known;

    *out = NULL;
    *len = 0;
    if (path == NULL || max == SIZE_MAX)
        return UTIL_E_ARGS;
    fd = open(path, O_RDONLY | O_CLOEXEC | (regular_only ? O_NONBLOCK | O_NOCTTY : 0));
    if (fd < 0)
        return errno == ENOENT ? UTIL_E_NOTFOUND : UTIL_E_IO;
    known = fstat(fd, &st) == 0;
    if (regular_only && !known)
        rc = UTIL_E_IO;
    else if (regular_only && !S_ISREG(st.st_mode))
        rc = UTIL_E_NOTREG;
    else if (known && S_ISREG(st.st_mode) && (uint64_t)st.st_size > max)
        rc = UTIL_E_TOOBIG;
    else
        rc = util_read_fd(fd, max, out, len); /* a regular file's reads do not wait */
    int e = errno; /* the read's (EISDIR for a directory): for util_read_why */
    close(fd);
    errno = e;
    return rc;
}

int util_read_file(const char *path, size_t max, unsigned char **out, size_t *len)
{
    return read_path(path, max, false, out, len);
}

int util_read_regular_file(const char *path, size_t max, unsigned char **out, size_t *len)
{
    return read_path(path, max, true, out, len);
}

struct util_atomic_file {
    FILE *fp;
    char *path;
    char *tmp; /* named temp file (mkstemp fallback); NULL while unnamed */
    bool unnamed; /* O_TMPFILE: invisible until committed */
};

int util_fsync_dir(const char *dir)
{
    int rc = UTIL_E_IO, fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (fd >= 0) {
        if (fsync(fd) == 0)
            rc = UTIL_OK;
        close(fd);
    }
    return rc;
}

char *util_dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

int util_dir_unwritable(const char *path)
{
    char *dir = path != NULL && *path != '\0' ? util_dir_of(path) : NULL;
    int e = 0;

    if (dir != NULL && access(dir, W_OK) != 0)
        e = errno;
    free(dir);
    return e;
}

int util_file_attrs(const char *path, int dir)
{
    struct stat st;
    int fd = -1, flags = 0;

    /* A regular file or a directory only, looked at before the open: an
     * open is itself an act on a FIFO (a writer waiting for a reader goes
     * on, then finds none) or a device (a tape rewinds at close, a tty
     * may become the controlling terminal); what it opened is looked at
     * again, as the path may be swapped in between. */
    if ((dir ? stat(path, &st) : lstat(path, &st)) != 0 || !(dir ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode)))
        return 0;
    fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | (dir ? O_DIRECTORY : O_NOFOLLOW));
    if (fd < 0)
        return 0;
    /* The kernel reads and writes an int, whatever the ioctl's number says */
    if (fstat(fd, &st) != 0 || !(dir ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode)) ||
        ioctl(fd, FS_IOC_GETFLAGS, &flags) != 0)
        flags = 0;
    (void)close(fd); /* read only: nothing to lose */
    return ((flags & FS_APPEND_FL) ? UTIL_ATTR_APPEND : 0) | ((flags & FS_IMMUTABLE_FL) ? UTIL_ATTR_IMMUTABLE : 0);
}

const char *util_file_attrs_name(int attrs)
{
    return (attrs & UTIL_ATTR_IMMUTABLE) ? "immutable (chattr +i)" : "append-only (chattr +a)";
}

char util_file_attrs_flag(int attrs)
{
    return (attrs & UTIL_ATTR_IMMUTABLE) ? 'i' : 'a';
}

static int fsync_parent_dir(const char *path)
{
    char *dir = util_dir_of(path);
    int rc;

    if (dir == NULL)
        return UTIL_E_NOMEM;
    rc = util_fsync_dir(dir);
    free(dir);
    return rc;
}

int util_atomic_open(const char *path, mode_t mode, util_atomic_file **afp)
{
    util_atomic_file *af = NULL;
    int rc = UTIL_E_NOMEM, fd = -1;
    char *dir = NULL;
    size_t n;

    *afp = NULL;
    if (path == NULL || *path == '\0')
        return UTIL_E_ARGS;
    if ((af = calloc(1, sizeof(*af))) == NULL)
        goto out;
    if ((af->path = strdup(path)) == NULL || (dir = util_dir_of(path)) == NULL)
        goto out;
#ifdef O_TMPFILE
    /* An unnamed file: a crash, kill -9 or Ctrl-C before commit leaves
     * nothing behind (no half-written plaintext or spool file). */
    fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, mode);
    if (fd >= 0)
        af->unnamed = true;
#endif
    if (fd < 0) { /* filesystem without O_TMPFILE: a named temp file */
        n = strlen(path) + sizeof(".tmp.XXXXXX");
        if ((af->tmp = malloc(n)) == NULL)
            goto out;
        snprintf(af->tmp, n, "%s.tmp.XXXXXX", path);
        fd = mkstemp(af->tmp);
        if (fd < 0) {
            free(af->tmp);
            af->tmp = NULL;
            rc = UTIL_E_IO;
            goto out;
        }
    }
    if (fchmod(fd, mode) != 0 || (af->fp = fdopen(fd, "w")) == NULL) {
        rc = UTIL_E_IO;
        goto out;
    }
    fd = -1;
    *afp = af;
    af = NULL;
    rc = UTIL_OK;
out:
    if (fd >= 0)
        close(fd);
    free(dir);
    if (af != NULL)
        util_atomic_abort(af);
    return rc;
}

void *util_atomic_fp(util_atomic_file *af) { return af->fp; }

void util_atomic_abort(util_atomic_file *af)
{
    if (af == NULL)
        return;
    if (af->fp != NULL)
        fclose(af->fp);
    if (af->tmp != NULL)
        unlink(af->tmp);
    free(af->tmp);
    free(af->path);
    free(af);
}

/* Gives the unnamed file a unique temporary name next to its target (it
 * must have one to be renamed over the target atomically). */
static int name_unnamed(util_atomic_file *af)
{
    char proc[64], suffix[17];
    size_t n = strlen(af->path) + sizeof(".tmp.") + sizeof(suffix);

    if ((af->tmp = malloc(n)) == NULL)
        return UTIL_E_NOMEM;
    for (int tries = 0; tries < 8; tries++) {
        if (util_random_id(suffix, 8) != UTIL_OK)
            break;
        snprintf(af->tmp, n, "%s.tmp.%s", af->path, suffix);
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fileno(af->fp));
        if (linkat(AT_FDCWD, proc, AT_FDCWD, af->tmp, AT_SYMLINK_FOLLOW) == 0)
            return UTIL_OK;
        if (errno != EEXIST)
            break;
    }
    free(af->tmp);
    af->tmp = NULL;
    return UTIL_E_IO;
}

int util_atomic_commit(util_atomic_file *af)
{
    int rc = UTIL_E_IO;
    if (af == NULL)
        return UTIL_E_ARGS;
    if (fflush(af->fp) != 0 || ferror(af->fp) || fsync(fileno(af->fp)) != 0)
        goto out;
    if (af->unnamed && (rc = name_unnamed(af)) != UTIL_OK)
        goto out;
    rc = UTIL_E_IO;
    if (fclose(af->fp) != 0) {
        af->fp = NULL;
        goto out;
    }
    af->fp = NULL;
    if (rename(af->tmp, af->path) != 0)
        goto out;
    free(af->tmp);
    af->tmp = NULL; /* renamed: nothing to unlink */
    rc = fsync_parent_dir(af->path);
out:
    util_atomic_abort(af);
    return rc;
}

int util_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode)
{
    util_atomic_file *af = NULL;
    int rc = util_atomic_open(path, mode, &af);
    if (rc != UTIL_OK)
        return rc;
    if (len > 0 && fwrite(data, 1, len, af->fp) != len) {
        util_atomic_abort(af);
        return UTIL_E_IO;
    }
    return util_atomic_commit(af);
}

/* Whether uri has the attribute attr ("pin-value") anywhere, read as
 * p11-kit reads it, whitespace dropped ("pin -value=" is a pin-value
 * there): a refusal that shows the URI must not show it. Taken loosely
 * (any case; after a ':' or '&' anywhere too): a separator mistyped
 * would put the PIN in a label, which errors show. */
static int uri_has_attr(const char *uri, const char *attr)
{
    size_t n = 0, alen = strlen(attr);
    char *plain;
    int found = 0;

    if (uri == NULL)
        return 0;
    if ((plain = malloc(strlen(uri) + 1)) == NULL)
        return 1; /* cannot tell: treated as carrying one, never shown */
    for (const char *p = uri; *p != '\0'; p++)
        if (!isspace((unsigned char)*p))
            plain[n++] = *p;
    plain[n] = '\0';
    for (const char *p = plain; *p != '\0' && !found; p++)
        found = (p == plain || p[-1] == ';' || p[-1] == '?' || p[-1] == '&' || p[-1] == ':') &&
                strncasecmp(p, attr, alen) == 0 && p[alen] == '=';
    free(plain);
    return found;
}

int util_uri_has_pin_value(const char *uri)
{
    return uri_has_attr(uri, "pin-value");
}

/* p11-kit's white space (P11_URL_WHITESPACE): dropped anywhere in a URI.
 * Not a tab or a form feed: p11-kit keeps those (and then refuses or
 * reads them as bytes of a name). */
static bool uri_ws(char c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\v';
}

/* Whether [p, end) is name, white space dropped; exact: in its case. */
static bool uri_name_is(const char *p, const char *end, const char *name, bool exact)
{
    for (; p < end; p++) {
        if (uri_ws(*p))
            continue;
        if (*name == '\0' || (exact ? *p != *name : tolower((unsigned char)*p) != *name))
            return false;
        name++;
    }
    return *name == '\0';
}

/* Whether every '%' in [p, end) starts a %XX p11-kit decodes, not %00
 * (p11-kit would cut the value there: a NUL ends its string). */
static bool uri_escapes_ok(const char *p, const char *end)
{
    for (; p < end; p++) {
        if (*p != '%')
            continue;
        if (end - p < 3 || util_hex_digit((unsigned char)p[1]) < 0 || util_hex_digit((unsigned char)p[2]) < 0 ||
            (p[1] == '0' && p[2] == '0'))
            return false;
        p += 2;
    }
    return true;
}

/* Where and as p11-kit (0.24) reads a PIN source, so that a label holding
 * the text ("object=a:pin-source=b", which p11-kit reads whole) is none:
 * white space dropped, the scheme's case ignored; an attribute starts
 * right after "pkcs11:", after a ';' in the path, after the first '?' and
 * after a '&' in the query (a ';' there, a '?' after the first, a ':' or
 * '&' in the path are bytes of a value); its name is up to the first '='.
 * Named "pin-source", or "pinfile", p11-kit's older name for the same
 * attribute; given more than once, the last. */
int util_uri_pin_source(const char *uri, char **value)
{
    static const char scheme[] = "pkcs11:";
    const char *p = uri, *val = NULL, *vend = NULL;
    bool in_query = false, refused = false;
    char *out;

    if (value != NULL)
        *value = NULL;
    if (uri == NULL)
        return 0;
    for (size_t i = 0; scheme[i] != '\0'; p++) {
        if (*p == '\0' || (!uri_ws(*p) && tolower((unsigned char)*p) != scheme[i]))
            return 0;
        i += !uri_ws(*p);
    }
    while (*p != '\0') {
        size_t len = strcspn(p, in_query ? "&" : ";?");
        const char *eq = memchr(p, '=', len);
        if (eq != NULL && (uri_name_is(p, eq, "pin-source", true) || uri_name_is(p, eq, "pinfile", true))) {
            val = eq + 1;
            vend = p + len;
            refused = refused || !uri_escapes_ok(val, vend);
        } else if (eq != NULL && (uri_name_is(p, eq, "pin-source", false) || uri_name_is(p, eq, "pinfile", false))) {
            refused = true; /* p11-kit refuses the URI (a path one: matches nothing) */
        }
        p += len;
        in_query = in_query || *p == '?';
        if (*p != '\0')
            p++;
    }
    if (refused)
        return UTIL_E_FORMAT;
    if (val == NULL)
        return 0;
    if (value == NULL)
        return 1;
    /* White space at either end dropped, as p11-kit drops it; within, kept
     * as written: groupmail has always read "?pin-source=file:/My PINs/pin"
     * so (docs/groupmail.1.md), where p11-kit reads "/MyPINs/pin". */
    while (val < vend && uri_ws(*val))
        val++;
    while (vend > val && uri_ws(vend[-1]))
        vend--;
    if ((out = util_uri_value_decode(val, (size_t)(vend - val))) == NULL)
        return UTIL_E_NOMEM;
    *value = out;
    return 1;
}

int util_uri_has_pin_source(const char *uri)
{
    return util_uri_pin_source(uri, NULL) != 0;
}

static int uri_byte_needs_escape(unsigned char c, int strict)
{
    if (c <= 0x20 || c == 0x7f)
        return 1;
    return strict && (c > 0x7f || strchr("\"<>\\^`{|}", c) != NULL);
}

int util_uri_needs_escape(const char *uri, int strict)
{
    if (uri == NULL)
        return 0;
    /* Not strict: the path only. The query names no token or key: its
     * pin-source= is read by groupmail as written (a raw space kept, as
     * it always was), its module-path= is not used. */
    for (const unsigned char *p = (const unsigned char *)uri; *p != '\0' && (strict || *p != '?'); p++)
        if (uri_byte_needs_escape(*p, strict))
            return 1;
    return 0;
}

int util_hex_digit(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

char *util_uri_value_decode(const char *in, size_t n)
{
    char *out;
    size_t o = 0;

    if (n == SIZE_MAX || (out = malloc(n + 1)) == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        int hi = -1, lo = -1;
        if (in[i] == '%' && n - i > 2) {
            hi = util_hex_digit((unsigned char)in[i + 1]);
            lo = util_hex_digit((unsigned char)in[i + 2]);
        }
        /* %00 would cut the value short: kept as written, as is a '%'
         * that starts no %XX (p11-kit refuses that URI anyway). */
        if (hi >= 0 && lo >= 0 && (hi | lo) != 0) {
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[o++] = in[i];
        }
    }
    out[o] = '\0';
    return out;
}

/* util_uri_escape_value, with the bytes of keep (never NUL) also written
 * as they are. */
static char *uri_escape(const char *in, const char *keep, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;

    if (cap == 0)
        return out;
    for (; *in != '\0'; in++) {
        unsigned char c = (unsigned char)*in;
        int plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    strchr("-._~", c) != NULL || strchr(keep, c) != NULL;
        if (o + (plain ? 1 : 3) + 1 > cap)
            break;
        if (plain) {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
    return out;
}

char *util_uri_escape_value(const char *in, char *out, size_t cap)
{
    return uri_escape(in, "", out, cap);
}

char *util_uri_escape_label(const char *in, char *out, size_t cap)
{
    return uri_escape(in, ":", out, cap);
}

char *util_uri_escape_loose(const char *uri, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;

    if (cap == 0)
        return out;
    for (const unsigned char *p = (const unsigned char *)(uri != NULL ? uri : ""); *p != '\0'; p++) {
        size_t n = uri_byte_needs_escape(*p, 1) ? 3 : 1;
        if (o + n + 4 > cap) { /* room for "..." and the NUL */
            memcpy(out + o, "...", cap - o >= 4 ? 3 : 0);
            o += cap - o >= 4 ? 3 : 0;
            break;
        }
        if (n == 3) {
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        } else {
            out[o++] = (char)*p;
        }
    }
    out[o] = '\0';
    return out;
}

/* The authority of scheme://authority[/?#...] and its length in *n; NULL
 * when url has no "://". It ends where libcurl ends it, at / ? or #. */
static const char *url_authority(const char *url, size_t *n)
{
    const char *h = url != NULL ? strstr(url, "://") : NULL;

    if (h == NULL)
        return NULL;
    h += 3;
    *n = strcspn(h, "/?#");
    return h;
}

int util_url_has_userinfo(const char *url)
{
    size_t n = 0;
    const char *h = url_authority(url, &n);

    return h != NULL && memchr(h, '@', n) != NULL;
}

int util_url_host(const char *url, char *host, size_t size)
{
    size_t n = 0;
    const char *h = url_authority(url, &n);

    if (size > 0)
        host[0] = '\0';
    if (h == NULL || size == 0)
        return UTIL_E_FORMAT;
    if (memchr(h, '@', n) != NULL) { /* userinfo before the host */
        const char *at = memchr(h, '@', n);
        /* a second '@': parsers differ on where the host starts (libcurl
         * refuses such a URL, a WHATWG parser takes the last '@') */
        if (memchr(at + 1, '@', n - (size_t)(at + 1 - h)) != NULL)
            return UTIL_E_FORMAT;
        n -= (size_t)(at + 1 - h);
        h = at + 1;
    }
    if (*h == '[') { /* an IPv6 literal, given without its brackets */
        const char *e = memchr(h, ']', n);
        if (e == NULL)
            return UTIL_E_FORMAT;
        h++;
        n = (size_t)(e - h);
    } else {
        n = strcspn(h, ":/?#");
    }
    if (n == 0)
        return UTIL_E_FORMAT;
    if (n >= size)
        return UTIL_E_TOOBIG;
    memcpy(host, h, n);
    host[n] = '\0';
    return UTIL_OK;
}

int util_url_host_is_loopback(const char *url)
{
    char host[64];
    struct in_addr a4;
    struct in6_addr a6;

    if (util_url_host(url, host, sizeof(host)) != UTIL_OK)
        return 0;
    if (strcasecmp(host, "localhost") == 0)
        return 1;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6);
    return inet_pton(AF_INET, host, &a4) == 1 && (ntohl(a4.s_addr) >> 24) == 127;
}

int util_auth_clear_parse(const char *word, util_auth_clear *out)
{
    static const struct {
        const char *word;
        util_auth_clear rule;
    } words[] = {{"no", UTIL_AUTH_CLEAR_NO}, {"loopback", UTIL_AUTH_CLEAR_LOOPBACK}, {"yes", UTIL_AUTH_CLEAR_YES}};

    for (size_t i = 0; word != NULL && i < sizeof(words) / sizeof(words[0]); i++)
        if (strcasecmp(word, words[i].word) == 0) {
            *out = words[i].rule;
            return UTIL_OK;
        }
    return UTIL_E_FORMAT;
}

int util_auth_clear_allows(util_auth_clear rule, const char *url)
{
    return rule == UTIL_AUTH_CLEAR_YES || (rule == UTIL_AUTH_CLEAR_LOOPBACK && util_url_host_is_loopback(url));
}

/* A named pipe's content (opened O_NONBLOCK) to its writer's close, of
 * at most max bytes, waiting at most wait_ms in all: a pipe nobody writes
 * to, or a writer that never closes, is UTIL_E_NOWRITER, not a wait for
 * ever. */
static int read_pipe(int fd, int wait_ms, size_t max, unsigned char **out, size_t *len)
{
    struct timespec start, now;
    unsigned char *buf = NULL;
    size_t used = 0;
    int rc = UTIL_E_IO;

    *out = NULL;
    *len = 0;
    if (max >= SIZE_MAX - 1 || (buf = malloc(max + 2)) == NULL)
        return UTIL_E_NOMEM;
    if (clock_gettime(CLOCK_MONOTONIC, &start) != 0)
        goto out;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        long spent;
        int r;
        if (clock_gettime(CLOCK_MONOTONIC, &now) != 0)
            goto out;
        spent = (long)(now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (spent >= wait_ms) {
            rc = UTIL_E_NOWRITER;
            goto out;
        }
        r = poll(&p, 1, (int)(wait_ms - spent));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            goto out;
        if (r == 0)
            continue; /* the time is checked above */
        ssize_t m = read(fd, buf + used, max + 1 - used);
        if (m < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (m < 0)
            goto out;
        if (m == 0)
            break; /* the writer closed */
        used += (size_t)m;
        if (used > max) {
            rc = UTIL_E_TOOBIG;
            goto out;
        }
    }
    buf[used] = '\0';
    *out = buf;
    *len = used;
    buf = NULL;
    rc = UTIL_OK;
out:
    util_secret_free(buf, max + 2);
    return rc;
}

int util_read_pin_source(const char *source, char **pin, size_t *len)
{
    return util_read_pin_source_wait(source, 10000, pin, len);
}

const char *util_pin_source_path(const char *source)
{
    if (source == NULL || strncmp(source, "env:", 4) == 0)
        return NULL;
    return strncmp(source, "file:", 5) == 0 ? source + 5 : source;
}

int util_read_pin_source_wait(const char *source, int wait_ms, char **pin, size_t *len)
{
    int rc;
    unsigned char *buf = NULL;
    size_t n = 0;

    *pin = NULL;
    *len = 0;
    if (source == NULL || *source == '\0')
        return UTIL_E_ARGS;
    if (strncmp(source, "env:", 4) == 0) {
        const char *v = getenv(source + 4);
        if (v == NULL)
            return UTIL_E_NOTFOUND;
        n = strlen(v);
        if (n > PIN_MAX)
            return UTIL_E_TOOBIG;
        if ((buf = malloc(n + 1)) == NULL)
            return UTIL_E_NOMEM;
        memcpy(buf, v, n + 1);
    } else {
        const char *path = util_pin_source_path(source); /* not NULL: not env: */
        struct stat st;
        /* A device or socket is refused before it is opened: opening a
         * device can act (a tape rewinds, a serial line's modem signals
         * rise, a watchdog arms), and a socket's open fails with "No such
         * device or address", which names nothing wrong. The type is
         * checked again on what was opened. */
        if (stat(path, &st) != 0)
            return errno == ENOENT ? UTIL_E_NOTFOUND : UTIL_E_IO;
        if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode))
            return UTIL_E_NOTREG;
        /* Opened without waiting: a named pipe's open would otherwise
         * wait for its writer for ever (a start hung without a word). */
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
        if (fd < 0)
            return errno == ENOENT ? UTIL_E_NOTFOUND : UTIL_E_IO;
        if (fstat(fd, &st) != 0)
            rc = UTIL_E_IO;
        else if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode))
            rc = UTIL_E_NOTREG; /* a terminal would wait for a person; a device holds no PIN */
        else if ((st.st_mode & 077) != 0)
            rc = UTIL_E_PERM;
        else if (S_ISREG(st.st_mode))
            rc = util_read_fd(fd, PIN_MAX + 2, &buf, &n);
        else
            rc = read_pipe(fd, wait_ms, PIN_MAX + 2, &buf, &n);
        (void)close(fd);
        if (rc != UTIL_OK)
            return rc;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    if (n == 0 || n > PIN_MAX) {
        util_secret_free(buf, n + 1);
        return n == 0 ? UTIL_E_FORMAT : UTIL_E_TOOBIG;
    }
    *pin = (char *)buf;
    *len = n;
    return UTIL_OK;
}

const char *util_read_why(int rc, int e)
{
    if (rc == UTIL_E_IO && e != 0)
        return strerror(e);
    return util_strerror(rc);
}

const char *util_pin_source_why(int rc, int e)
{
    return rc == UTIL_E_FORMAT ? "empty" : util_read_why(rc, e);
}

void util_forget_env_source(const char *source)
{
    char *v;

    if (source == NULL || strncmp(source, "env:", 4) != 0 || (v = getenv(source + 4)) == NULL)
        return;
    OPENSSL_cleanse(v, strlen(v));
    unsetenv(source + 4);
}

int util_b64_encode(const unsigned char *in, size_t len, char **out)
{
    size_t need;
    *out = NULL;
    if (len > (size_t)INT_MAX / 4 * 3 - 3)
        return UTIL_E_TOOBIG;
    need = (len + 2) / 3 * 4 + 1;
    if ((*out = malloc(need)) == NULL)
        return UTIL_E_NOMEM;
    EVP_EncodeBlock((unsigned char *)*out, in, (int)len);
    return UTIL_OK;
}

/* The value of each ASCII character in standard base64, -1 for none. */
static const signed char b64_values[128] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62, -1, -1, -1, 63,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -1, -1, -1,
    -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, -1, -1, -1, -1, -1,
    -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, -1, -1, -1, -1, -1,
};

static int b64_value(unsigned char c)
{
    return c < 128 ? b64_values[c] : -1;
}

int util_b64_decode(const char *in, size_t inlen, size_t max_in, unsigned char **out, size_t *outlen)
{
    unsigned char *buf;
    size_t pad = 0, o = 0;

    *out = NULL;
    *outlen = 0;
    if (in == NULL)
        return UTIL_E_ARGS;
    if (inlen > max_in)
        return UTIL_E_TOOBIG;
    if (inlen % 4 != 0)
        return UTIL_E_FORMAT;
    if (inlen >= 1 && in[inlen - 1] == '=')
        pad++;
    if (inlen >= 2 && in[inlen - 2] == '=')
        pad++;
    if ((buf = malloc(inlen / 4 * 3 + 1)) == NULL)
        return UTIL_E_NOMEM;
    /* Every group but the last: four characters, no padding. */
    size_t i = 0;
    for (; i + 4 < inlen; i += 4) {
        int a = b64_value((unsigned char)in[i]), b = b64_value((unsigned char)in[i + 1]),
            c = b64_value((unsigned char)in[i + 2]), d = b64_value((unsigned char)in[i + 3]);
        if ((a | b | c | d) < 0)
            goto bad;
        uint32_t w = ((uint32_t)a << 18) | ((uint32_t)b << 12) | ((uint32_t)c << 6) | (uint32_t)d;
        buf[o++] = (unsigned char)(w >> 16);
        buf[o++] = (unsigned char)(w >> 8);
        buf[o++] = (unsigned char)w;
    }
    for (; i < inlen; i += 4) {
        int v[4];
        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)in[i + (size_t)k];
            int last = (i + 4 == inlen);
            if (c == '=' && last && (size_t)k >= 4 - pad)
                v[k] = 0;
            else if ((v[k] = b64_value(c)) < 0)
                goto bad;
        }
        uint32_t w = ((uint32_t)v[0] << 18) | ((uint32_t)v[1] << 12) | ((uint32_t)v[2] << 6) | (uint32_t)v[3];
        buf[o++] = (unsigned char)(w >> 16);
        if (!(i + 4 == inlen && pad == 2))
            buf[o++] = (unsigned char)(w >> 8);
        if (!(i + 4 == inlen && pad >= 1))
            buf[o++] = (unsigned char)w;
        /* canonical: the unused low bits of the last group must be zero */
        if (i + 4 == inlen && ((pad == 2 && (w & 0xffff)) || (pad == 1 && (w & 0xff))))
            goto bad;
    }
    *out = buf;
    *outlen = o;
    return UTIL_OK;
bad:
    OPENSSL_cleanse(buf, inlen / 4 * 3 + 1);
    free(buf);
    return UTIL_E_FORMAT;
}

void util_hex(const unsigned char *in, size_t len, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = hx[in[i] >> 4];
        out[2 * i + 1] = hx[in[i] & 15];
    }
    out[2 * len] = '\0';
}

int util_strlcpy(char *dst, const char *src, size_t size)
{
    size_t n;
    if (size == 0)
        return UTIL_E_ARGS;
    n = strlen(src);
    if (n >= size) {
        memcpy(dst, src, size - 1);
        dst[size - 1] = '\0';
        return UTIL_E_TOOBIG;
    }
    memcpy(dst, src, n + 1);
    return UTIL_OK;
}

int util_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end = NULL;
    unsigned long long v;
    if (s == NULL || *s < '0' || *s > '9')
        return UTIL_E_FORMAT;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return UTIL_E_FORMAT;
    *out = (uint64_t)v;
    return UTIL_OK;
}

int util_parse_int(const char *s, long min, long max, long *out)
{
    char *end = NULL;
    long v;
    if (s == NULL || *s == '\0')
        return UTIL_E_FORMAT;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return UTIL_E_FORMAT;
    *out = v;
    return UTIL_OK;
}

int util_size_add(size_t a, size_t b, size_t *out)
{
    if (a > SIZE_MAX - b)
        return UTIL_E_TOOBIG;
    *out = a + b;
    return UTIL_OK;
}

int util_size_mul(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return UTIL_E_TOOBIG;
    *out = a * b;
    return UTIL_OK;
}

int util_random_id(char *out, size_t nbytes)
{
    unsigned char r[16];
    if (nbytes > sizeof(r))
        return UTIL_E_ARGS;
    if (RAND_bytes(r, (int)nbytes) != 1)
        return UTIL_E_IO;
    util_hex(r, nbytes, out);
    return UTIL_OK;
}

/* Which of 0, 1, 2 util_sanitise_stdfd found closed: their /dev/null
 * stand-ins look like any /dev/null afterwards (outfile.c asks). */
static int stdfd_closed[3];

int util_stdfd_was_closed(int fd) { return fd >= STDIN_FILENO && fd <= STDERR_FILENO && stdfd_closed[fd]; }

int util_sanitise_stdfd(void)
{
    for (int fd = STDIN_FILENO; fd <= STDERR_FILENO; fd++) {
        if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF)
            continue;
        stdfd_closed[fd] = 1;
        /* Input write-only and output read-only: reading or writing them
         * fails (EBADF) as it did while they were closed, so a program
         * says "cannot read the message" rather than taking an empty one.
         * The lowest free number: fd itself, as the lower ones are open. */
        int n = open("/dev/null", fd == STDOUT_FILENO ? O_RDONLY : O_WRONLY);
        if (n == fd)
            continue;
        if (n >= 0) {
            close(n);
            errno = EBADF;
        }
        return UTIL_E_IO;
    }
    return UTIL_OK;
}

void util_fsize_limit_fails_writes(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    (void)sigaction(SIGXFSZ, &sa, NULL); /* fails only for a bad signal number */
}

int util_mkdir_p(const char *path, mode_t mode)
{
    char buf[PATH_MAX];
    if (util_strlcpy(buf, path, sizeof(buf)) != UTIL_OK)
        return UTIL_E_TOOBIG;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, mode) != 0 && errno != EEXIST)
            return UTIL_E_IO;
        *p = '/';
    }
    if (mkdir(buf, mode) != 0 && errno != EEXIST)
        return UTIL_E_IO;
    return UTIL_OK;
}

void util_asn1_time_text(const ASN1_TIME *t, char *buf, size_t cap)
{
    struct tm tm;

    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1 || strftime(buf, cap, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
        (void)snprintf(buf, cap, "an unreadable date");
}

int util_pem_no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

void util_cert_not_after_text(const struct x509_st *cert, char *buf, size_t cap)
{
    util_asn1_time_text(cert != NULL ? X509_get0_notAfter(cert) : NULL, buf, cap);
}

int util_cert_valid_now(const struct x509_st *cert, char *why, size_t cap)
{
    char when[40];
    int rc = -1;

    if (cap > 0)
        why[0] = '\0';
    if (cert == NULL) {
        (void)snprintf(why, cap, "is missing");
        return -1;
    }
    /* X509_cmp_current_time: -1 before now, 1 after, 0 on an unreadable time. */
    int nb = X509_cmp_current_time(X509_get0_notBefore(cert));
    int na = X509_cmp_current_time(X509_get0_notAfter(cert));
    if (nb == 0 || na == 0) {
        (void)snprintf(why, cap, "has an unreadable validity period");
    } else if (na < 0) {
        util_asn1_time_text(X509_get0_notAfter(cert), when, sizeof(when));
        (void)snprintf(why, cap, "expired on %s", when);
    } else if (nb > 0) {
        util_asn1_time_text(X509_get0_notBefore(cert), when, sizeof(when));
        (void)snprintf(why, cap, "is not valid before %s", when);
    } else {
        rc = 0;
    }
    ERR_clear_error();
    return rc;
}

double util_monotonic_s(void)
{
    struct timespec ts;

    /* Cannot fail for CLOCK_MONOTONIC on Linux with a valid pointer. */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int util_listen_resolve(const char *hostport, struct addrinfo **ai, const char **why)
{
    char host[256], *colon, *h;
    struct addrinfo hints;
    int gai;

    *ai = NULL;
    *why = "not host:port";
    if (util_strlcpy(host, hostport, sizeof(host)) != UTIL_OK || (colon = strrchr(host, ':')) == NULL)
        return UTIL_LISTEN_NOT_HOSTPORT;
    *colon = '\0';
    h = host;
    if (h[0] == '[' && colon > h && colon[-1] == ']') { /* [::1]:8443 */
        h++;
        colon[-1] = '\0';
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    if ((gai = getaddrinfo(*h ? h : NULL, colon + 1, &hints, ai)) != 0 || *ai == NULL) {
        if (*ai != NULL) {
            freeaddrinfo(*ai);
            *ai = NULL;
        }
        *why = gai != 0 ? gai_strerror(gai) : "no address";
        return UTIL_LISTEN_UNRESOLVED;
    }
    *why = NULL;
    return 0;
}

/* Closes the descriptors lo..hi (hi UINT_MAX: all above lo). */
static void close_span(unsigned lo, unsigned hi)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, lo, hi, 0) == 0)
        return;
#endif
    /* A kernel before 5.9: the open ones as /proc lists them, or, when it
     * cannot be opened (no descriptor free for it, or no /proc), each one
     * below the limit (a descriptor above it, left from before a lowered
     * limit, stays). */
    DIR *d = opendir("/proc/self/fd");
    if (d != NULL) {
        int dfd = dirfd(d);
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            long fd;
            if (util_parse_int(e->d_name, lo, hi > INT_MAX ? INT_MAX : hi, &fd) == UTIL_OK && fd != dfd)
                (void)close((int)fd);
        }
        closedir(d);
        return;
    }
    struct rlimit rl;
    unsigned max = 1u << 20;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < max)
        max = (unsigned)rl.rlim_cur;
    for (unsigned fd = lo; fd <= hi && fd < max; fd++)
        (void)close((int)fd);
}

void util_close_all_but(int *keep, unsigned n)
{
    unsigned lo = 3;

    /* close_range(2) over the gaps between the kept ones: it needs no
     * descriptor of its own. Listing /proc/self/fd did, so a child whose
     * table was full (forked at the limit), or one without /proc, closed
     * nothing. Sorted first (a handful: insertion). */
    for (unsigned i = 1; i < n; i++)
        for (unsigned j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
            int t = keep[j];
            keep[j] = keep[j - 1];
            keep[j - 1] = t;
        }
    for (unsigned i = 0; i < n; i++) {
        if (keep[i] < 0 || (unsigned)keep[i] < lo)
            continue; /* stderr and below, or kept twice */
        if ((unsigned)keep[i] > lo)
            close_span(lo, (unsigned)keep[i] - 1);
        lo = (unsigned)keep[i] + 1;
    }
    close_span(lo, UINT_MAX);
}
