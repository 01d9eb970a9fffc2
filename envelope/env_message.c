/*
 * env_message.c: reading, modifying, decrypting and writing whole
 * (Auth)EnvelopedData messages in bounded memory.
 *
 * Reading: the input (S/MIME, PEM or DER/BER) is decoded into an unlinked
 * temporary file. The structure is then walked with ASN1_get_object() for
 * the outer TLV headers, while every small element (version, originatorInfo,
 * recipientInfos, algorithms, attributes, mac) is decoded by OpenSSL's ASN.1
 * templates from a bounded window. Only the position of encryptedContent
 * (primitive, or constructed and possibly indefinite BER as `openssl cms
 * -stream` writes it) is remembered; its bytes stay in the file.
 *
 * Writing re-encodes the small parts with definite lengths and copies the
 * encryptedContent TLV verbatim from the file; decryption reads its OCTET
 * STRING chunks from the file and feeds EVP in 64 KiB pieces.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/objects.h>

#include "env_internal.h"
#include "mailfold.h"
#include "util.h"

#define IO_CHUNK (64u * 1024)
#define HDR_LINE_CAP (16u * 1024)     /* one header line (outer or of a part) */
#define HDR_BLOCK_CAP (1024u * 1024)  /* all outer headers */
#define MAX_NESTING 8                 /* constructed OCTET STRING depth */

struct env_message {
    int fd; /* unlinked temp file: the decoded DER/BER of the ContentInfo */
    off_t size;
    bool auth;
    long version;
    ENV_ORIGINFO *orig;
    unsigned char **ri_der;
    size_t *ri_len;
    size_t nri;
    ASN1_OBJECT *inner_type;
    X509_ALGOR *calg;
    bool gcm;
    size_t keylen, ivlen, taglen;
    unsigned char iv[64];
    off_t ec_off, ec_end; /* the [0] encryptedContent TLV */
    off_t cms_end;        /* just past the ContentInfo: decoded bytes after it are text added to its base64 */
    STACK_OF(X509_ATTRIBUTE) *attrs1; /* unprotectedAttrs (Env) or authAttrs (Auth) */
    ASN1_OCTET_STRING *mac;            /* Auth only */
    STACK_OF(X509_ATTRIBUTE) *attrs2;  /* unauthAttrs (Auth only) */
    char *outer;
    unsigned char *win; /* read window for small elements */
    off_t win_off;
    size_t win_len;
};

/* ---- temp file ---------------------------------------------------------- */

static int tmp_open(void)
{
    const char *dir = getenv("TMPDIR");
    char path[4096];
    int fd, n;

    if (!dir || !*dir)
        dir = "/tmp";
    n = snprintf(path, sizeof(path), "%s/gs-envelope-XXXXXX", dir);
    if (n < 0 || (size_t)n >= sizeof(path))
        return -1;
    if ((fd = mkstemp(path)) < 0)
        return -1;
    /* Unlinked at once: nothing is left behind whatever happens to us. */
    (void)unlink(path);
    return fd;
}

typedef struct spool {
    int fd;
    off_t size;
    uint64_t max;
    unsigned char *buf;
    size_t n;
} spool;

static env_err spool_flush(spool *s)
{
    size_t done = 0;
    while (done < s->n) {
        ssize_t w = write(s->fd, s->buf + done, s->n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return ENV_ERR_IO;
        done += (size_t)w;
    }
    s->n = 0;
    return ENV_OK;
}

static env_err spool_write(spool *s, const unsigned char *p, size_t n)
{
    env_err rv;
    if ((uint64_t)s->size + n > s->max)
        return ENV_ERR_TOO_LARGE;
    s->size += (off_t)n;
    while (n) {
        size_t k = IO_CHUNK - s->n < n ? IO_CHUNK - s->n : n;
        memcpy(s->buf + s->n, p, k);
        s->n += k;
        p += k;
        n -= k;
        if (s->n == IO_CHUNK && (rv = spool_flush(s)) != ENV_OK)
            return rv;
    }
    return ENV_OK;
}

static env_err read_at(const env_message *m, off_t off, void *buf, size_t n)
{
    size_t done = 0;
    if (off < 0 || off + (off_t)n > m->size)
        return ENV_ERR_TRUNCATED;
    while (done < n) {
        ssize_t r = pread(m->fd, (unsigned char *)buf + done, n - done, off + (off_t)done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return ENV_ERR_IO;
        done += (size_t)r;
    }
    return ENV_OK;
}

/* ---- input reader: buffered, capped ------------------------------------- */

typedef struct reader {
    BIO *in;
    unsigned char *buf;
    size_t pos, len;
    uint64_t total, max;
    bool eof;
    env_err err;
    bool b64_tail; /* a base64 body held text that base64 is not (b64_shape) */
} reader;

static bool rd_fill(reader *r)
{
    int n;
    if (r->pos < r->len)
        return true;
    if (r->eof)
        return false;
    r->pos = r->len = 0;
    n = BIO_read(r->in, r->buf, IO_CHUNK);
    if (n <= 0) {
        /* BIO_read returns <= 0 both at EOF and on error; retryable BIOs are
         * not supported (callers hand us blocking BIOs). A read error is
         * ENV_ERR_IO, not a message that looks truncated. */
        if (n < 0 && !BIO_should_retry(r->in))
            r->err = ENV_ERR_IO;
        r->eof = true;
        return false;
    }
    r->total += (uint64_t)n;
    if (r->total > r->max) {
        r->err = ENV_ERR_TOO_LARGE;
        r->eof = true;
        return false;
    }
    r->len = (size_t)n;
    return true;
}

/* One line including its '\n' into line (NUL-terminated). A line longer
 * than cap-1 is returned in pieces with *partial set. 0 bytes = EOF. */
static size_t rd_line(reader *r, char *line, size_t cap, bool *partial)
{
    size_t n = 0;
    *partial = false;
    while (n + 1 < cap) {
        unsigned char c;
        if (!rd_fill(r))
            break;
        c = r->buf[r->pos++];
        line[n++] = (char)c;
        if (c == '\n')
            break;
    }
    if (n + 1 >= cap && line[n - 1] != '\n')
        *partial = true;
    line[n] = '\0';
    return n;
}

/* ---- input decoding into the spool --------------------------------------- */

static env_err b64_chunk(EVP_ENCODE_CTX *ctx, spool *s, const char *p, size_t n, bool *stop)
{
    unsigned char out[(HDR_LINE_CAP / 4) * 3 + 64];
    int outl = 0, r;
    env_err rv = ENV_OK;

    while (n && !*stop) {
        size_t k = n > HDR_LINE_CAP ? HDR_LINE_CAP : n;
        r = EVP_DecodeUpdate(ctx, out, &outl, (const unsigned char *)p, (int)k);
        if (r < 0) /* a character base64 has not, or one after its end ('=') */
            return ENV_ERR_BASE64;
        if (outl > 0 && (rv = spool_write(s, out, (size_t)outl)) != ENV_OK)
            return rv;
        if (r == 0 && memchr(p, '-', k)) /* '-' ends base64 for the decoder */
            *stop = true;
        p += k;
        n -= k;
    }
    return rv;
}

/* What the lines of a base64 body look like, to tell text in it (a footer
 * or disclaimer a list or gateway added inside the S/MIME part) from
 * base64 cut short when the decoding fails: base64 writers put no white
 * space inside a line, every line but the last is as long as the first,
 * and nothing follows the last (one with '=', or shorter). Said, never
 * refused for: the decoder decides what is read. */
typedef struct b64_shape {
    size_t width; /* characters of the first line (0: none yet) */
    size_t cur;   /* characters of the current line so far */
    bool gap;     /* white space after a character of the current line */
    bool pad;     /* the current line holds '=' */
    bool over;    /* a line ended the base64 (padded, short, or blank after text) */
    bool tail;    /* text base64 is not: after its end, or with white space inside */
} b64_shape;

/* A piece of a body line (the whole line, or a long line's piece); eol:
 * the line ends with it. */
static void b64_shape_piece(b64_shape *sh, const char *p, size_t n, bool eol)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\r' || p[i] == '\n')
            continue;
        if (p[i] == ' ' || p[i] == '\t') {
            sh->gap = sh->gap || sh->cur > 0;
            continue;
        }
        if (sh->over || sh->gap)
            sh->tail = true;
        sh->pad = sh->pad || p[i] == '=';
        sh->cur++;
    }
    if (!eol)
        return;
    if (sh->cur == 0) {
        sh->over = sh->over || sh->width > 0;
    } else {
        if (sh->width == 0)
            sh->width = sh->cur;
        sh->tail = sh->tail || sh->cur > sh->width;
        sh->over = sh->over || sh->pad || sh->cur < sh->width;
    }
    sh->cur = 0;
    sh->gap = sh->pad = false;
}

static env_err b64_final(EVP_ENCODE_CTX *ctx, spool *s)
{
    unsigned char out[64];
    int outl = 0;
    if (EVP_DecodeFinal(ctx, out, &outl) < 0)
        return ENV_ERR_TRUNCATED; /* base64 stops mid-quantum: input was cut */
    return outl > 0 ? spool_write(s, out, (size_t)outl) : ENV_OK;
}

static bool blank_line(const char *l)
{
    return strcmp(l, "\n") == 0 || strcmp(l, "\r\n") == 0;
}

/* Case-insensitive "name:" prefix test; white space before the colon is
 * RFC 5322 4.5's obs-optional, which section 4 has readers take (as
 * Mozilla's libmime and Postfix do, and the exploder's mail_split). */
static bool header_is(const char *line, const char *name)
{
    return mail_field_is(line, strlen(line), name);
}

static char lowered(char c, bool lower)
{
    return lower ? (char)tolower((unsigned char)c) : c;
}

/* A header line's value into v (lowered when lower), cut at cap. */
static void trim_value(const char *line, char *v, size_t cap, bool lower)
{
    const char *p = strchr(line, ':');
    size_t n = 0;
    p = p ? p + 1 : line;
    while (*p == ' ' || *p == '\t')
        p++;
    while (*p && *p != '\r' && *p != '\n' && n + 1 < cap)
        v[n++] = lowered(*p++, lower);
    v[n] = '\0';
}

/* A folded continuation line of a header value appended to v (lowered
 * when lower, one space between the parts, cut at cap: only the leading
 * media type, its parameters and the encoding are ever looked at). The
 * same calls with and without lower keep the two copies aligned. */
static void append_value(char *v, size_t cap, const char *cont, bool lower)
{
    size_t n = strlen(v);
    while (*cont == ' ' || *cont == '\t')
        cont++;
    if (n > 0 && n + 1 < cap && *cont != '\r' && *cont != '\n' && *cont != '\0')
        v[n++] = ' ';
    while (*cont && *cont != '\r' && *cont != '\n' && n + 1 < cap)
        v[n++] = lowered(*cont++, lower);
    v[n] = '\0';
}

static bool mime_type_is(const char *v, const char *type)
{
    size_t n = strlen(type);
    return strncmp(v, type, n) == 0 && (v[n] == '\0' || v[n] == ';' || v[n] == ' ' || v[n] == '\t');
}

/* The value of parameter name (lowercase) in a lowercased header value
 * "type; a=b; name=\"x\"", unquoted, into out (cut at cap); false if absent.
 * It is copied from src, v with its case kept (same length), or from v
 * when src is NULL. */
static bool mime_param(const char *v, const char *src, const char *name, char *out, size_t cap)
{
    size_t n = strlen(name), o = 0;
    const char *p = strchr(v, ';');

    while (p != NULL) {
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        if (strncmp(p, name, n) == 0 && p[n] == '=') {
            bool quoted = p[n + 1] == '"';
            for (p += n + 1 + quoted; *p && o + 1 < cap; p++) {
                if (quoted ? *p == '"' : (*p == ';' || *p == ' ' || *p == '\t'))
                    break;
                out[o++] = src != NULL ? src[p - v] : *p;
            }
            out[o] = '\0';
            return true;
        }
        /* next parameter, skipping a quoted ';' */
        bool in_quotes = false;
        for (; *p && (in_quotes || *p != ';'); p++)
            if (*p == '"')
                in_quotes = !in_quotes;
        p = *p == ';' ? p : NULL;
    }
    return false;
}

static bool ends_with_p7m(const char *file)
{
    size_t n = strlen(file);
    return n >= 4 && strcmp(file + n - 4, ".p7m") == 0;
}

/* Appends an RFC 2231 extended value (first: the one that starts with
 * charset'language') to out at *o, %XX decoded (cut at cap). A first
 * piece without the two quotes is taken as it is: some clients write
 * name*=smime.p7m. false for a %00: no file name holds a NUL, and the
 * string would end there ("smime.p7m%00.txt" read as "smime.p7m"). */
static bool ext_append(const char *v, bool first, char *out, size_t cap, size_t *o)
{
    const char *q1 = first ? strchr(v, '\'') : NULL, *q2 = q1 != NULL ? strchr(q1 + 1, '\'') : NULL;

    if (q2 != NULL)
        v = q2 + 1;
    for (; *v && *o + 1 < cap; v++) {
        int hi, lo;
        if (*v == '%' && (hi = util_hex_digit((unsigned char)v[1])) >= 0 &&
            (lo = util_hex_digit((unsigned char)v[2])) >= 0) {
            if (hi == 0 && lo == 0)
                return false;
            out[(*o)++] = (char)tolower(hi * 16 + lo); /* the value around it is lowered */
            v += 2;
        } else {
            out[(*o)++] = *v;
        }
    }
    out[*o] = '\0';
    return true;
}

#define RFC2231_MAX_PIECES 16 /* a file name is never longer in practice */

/* A parameter's value in a lowercased header value, as mime_param finds
 * it, or as RFC 2231 writes it: name*=charset'lang'value (%XX encoded),
 * or cut in pieces name*0=, name*1*= ... Mail user agents use these for
 * any file name they think needs it (a long one, or one with a space),
 * so "name*=utf-8''smime.p7m" names S/MIME as name=smime.p7m does. */
static bool mime_param_2231(const char *v, const char *name, char *out, size_t cap)
{
    char key[40], piece[256];
    size_t o = 0;

    out[0] = '\0';
    if (mime_param(v, NULL, name, out, cap))
        return true;
    snprintf(key, sizeof(key), "%s*", name);
    if (mime_param(v, NULL, key, piece, sizeof(piece)))
        return ext_append(piece, true, out, cap, &o);
    for (int i = 0; i < RFC2231_MAX_PIECES; i++) {
        snprintf(key, sizeof(key), "%s*%d*", name, i);
        if (mime_param(v, NULL, key, piece, sizeof(piece))) {
            if (!ext_append(piece, i == 0, out, cap, &o))
                return false;
            continue;
        }
        snprintf(key, sizeof(key), "%s*%d", name, i);
        if (!mime_param(v, NULL, key, piece, sizeof(piece)))
            return i > 0;
        for (size_t k = 0; piece[k] && o + 1 < cap; k++)
            out[o++] = piece[k];
        out[o] = '\0';
    }
    return true;
}

bool env_mime_is_smime(const char *content_type, const char *content_disposition)
{
    char ct[256], cd[256], file[256];
    size_t i;

    if (content_type == NULL)
        return false;
    for (i = 0; content_type[i] && i + 1 < sizeof(ct); i++)
        ct[i] = (char)tolower((unsigned char)content_type[i]);
    ct[i] = '\0';
    if (mime_type_is(ct, "application/pkcs7-mime") || mime_type_is(ct, "application/x-pkcs7-mime"))
        return true;
    if (!mime_type_is(ct, "application/octet-stream"))
        return false;
    /* RFC 8551 3.8: application/octet-stream with the file suffix p7m */
    if (mime_param_2231(ct, "name", file, sizeof(file)) && ends_with_p7m(file))
        return true;
    for (i = 0; content_disposition != NULL && content_disposition[i] && i + 1 < sizeof(cd); i++)
        cd[i] = (char)tolower((unsigned char)content_disposition[i]);
    cd[i] = '\0';
    return mime_param_2231(cd, "filename", file, sizeof(file)) && ends_with_p7m(file);
}

/* field-name *WSP ":" (the white space: obs-optional, header_is) */
static bool looks_like_header(const char *l)
{
    const char *c = strchr(l, ':'), *p = l;
    if (!c || c == l)
        return false;
    for (; p < c && *p > ' ' && *p <= '~'; p++)
        ;
    if (p == l)
        return false;
    for (; p < c && (*p == ' ' || *p == '\t'); p++)
        ;
    return p == c;
}

/* Appends to a growing capped string. */
static env_err str_append(char **s, size_t *len, const char *add, size_t cap)
{
    size_t n = strlen(add), nl;
    char *t;
    if (util_size_add(*len, n, &nl) || nl + 1 > cap)
        return ENV_ERR_TOO_LARGE;
    if (!(t = realloc(*s, nl + 1)))
        return ENV_ERR_NOMEM;
    memcpy(t + *len, add, n + 1);
    *s = t;
    *len = nl;
    return ENV_OK;
}

/* What a MIME header block says about its body. */
typedef struct mime_head {
    char ctype[512];     /* Content-Type, unfolded and lowercased */
    char ctype_raw[512]; /* the same with its case kept: a boundary is case-sensitive */
    char cte[64];
    char cdisp[256];
    bool have_ct, have_cte;
    bool fields; /* a header line was read (an mbox "From " line is none) */
} mime_head;

/* The rest of a header line longer than the line buffer, after its first
 * piece: RFC 5322 asks for at most 998 characters, but MTAs pass longer
 * ones (Postfix puts back together what it split at line_length_limit),
 * and a client that does not fold writes a To: of 800 addresses on one
 * line. Appended to *outer when outer is given (a field that is kept),
 * counted against the header block's cap either way. */
static env_err header_line_rest(reader *r, char *line, char **outer, size_t *outer_len, size_t *hdr_total)
{
    bool partial = true;
    env_err rv;
    size_t n;

    while (partial) {
        n = rd_line(r, line, HDR_LINE_CAP, &partial);
        if (r->err)
            return r->err;
        if (n == 0) /* EOF inside the header block */
            return ENV_ERR_TRUNCATED;
        *hdr_total += n;
        if (*hdr_total > HDR_BLOCK_CAP)
            return ENV_ERR_TOO_LARGE;
        if (memchr(line, '\0', n) != NULL) /* as in read_head */
            return ENV_ERR_MIME;
        if (outer != NULL && (rv = str_append(outer, outer_len, line, HDR_BLOCK_CAP)) != ENV_OK)
            return rv;
    }
    return ENV_OK;
}

/* Reads one header block, up to and including its blank line, into h.
 * top: the message's own header block (an mbox From_ line is skipped, and
 * the fields but MIME-Version and Content-* are kept in m->outer); else the
 * header block of a body part, which ends the input only if cut short. */
static env_err read_head(env_message *m, reader *r, char *line, bool top, mime_head *h)
{
    env_err rv = ENV_OK;
    char *folding = NULL, *folding_raw = NULL;
    size_t outer_len = m->outer != NULL ? strlen(m->outer) : 0, hdr_total = 0, n, folding_cap = 0;
    bool partial, first = true, keep = true;

    memset(h, 0, sizeof(*h));
    for (;;) {
        n = rd_line(r, line, HDR_LINE_CAP, &partial);
        if (r->err)
            return r->err;
        if (n == 0) /* EOF inside the header block */
            return top && first ? ENV_ERR_NOT_CMS : ENV_ERR_TRUNCATED;
        hdr_total += n;
        if (hdr_total > HDR_BLOCK_CAP)
            return ENV_ERR_TOO_LARGE;
        /* No header line holds a NUL (RFC 5322 2.2; the exploder's
         * mail_split refuses it too). Read as a C string, the line would
         * end there: the rest of it and its newline lost, the next field
         * run into it in the outer headers, a Content-Type read only up to
         * it. Refused, never cut (on the first line: no mail at all). */
        if (memchr(line, '\0', n) != NULL)
            return top && first ? ENV_ERR_NOT_CMS : ENV_ERR_MIME;
        if (blank_line(line))
            return ENV_OK;
        /* An mbox "From " separator line as some MTA pipes prepend: drop it. */
        if (top && first && strncmp(line, "From ", 5) == 0 && !looks_like_header(line)) {
            if (partial && (rv = header_line_rest(r, line, NULL, NULL, &hdr_total)) != ENV_OK)
                return rv;
            continue;
        }
        if (line[0] == ' ' || line[0] == '\t') { /* folded continuation */
            if (first)
                return top ? ENV_ERR_NOT_CMS : ENV_ERR_MIME;
            /* RFC 5322 folding: "Content-Type:" may carry its value on the next line */
            if (folding != NULL)
                append_value(folding, folding_cap, line, true);
            if (folding_raw != NULL)
                append_value(folding_raw, folding_cap, line, false);
        } else {
            if (!looks_like_header(line))
                return top && first ? ENV_ERR_NOT_CMS : ENV_ERR_MIME;
            /* MIME-Version and Content-* describe the body: regenerated on write. */
            keep = top && !(header_is(line, "MIME-Version") || strncasecmp(line, "Content-", 8) == 0);
            folding = folding_raw = NULL;
            if (header_is(line, "Content-Type")) {
                trim_value(line, h->ctype, sizeof(h->ctype), true);
                trim_value(line, h->ctype_raw, sizeof(h->ctype_raw), false);
                h->have_ct = true;
                folding = h->ctype;
                folding_raw = h->ctype_raw;
                folding_cap = sizeof(h->ctype);
            } else if (header_is(line, "Content-Transfer-Encoding")) {
                trim_value(line, h->cte, sizeof(h->cte), true);
                h->have_cte = true;
                folding = h->cte;
                folding_cap = sizeof(h->cte);
            } else if (header_is(line, "Content-Disposition")) {
                trim_value(line, h->cdisp, sizeof(h->cdisp), true);
                folding = h->cdisp;
                folding_cap = sizeof(h->cdisp);
            }
        }
        first = false;
        h->fields = true;
        if (keep && (rv = str_append(&m->outer, &outer_len, line, HDR_BLOCK_CAP)) != ENV_OK)
            return rv;
        if (!partial)
            continue;
        /* a Content-* field we read, longer than a line buffer: not one we
         * could have read right */
        if (folding != NULL)
            return ENV_ERR_MIME;
        if ((rv = header_line_rest(r, line, keep ? &m->outer : NULL, &outer_len, &hdr_total)) != ENV_OK)
            return rv;
    }
}

/* Is line (a whole line) the delimiter "--boundary", or with close the
 * closing "--boundary--"? RFC 2046 5.1.1 allows white space after either. */
static bool is_delimiter(const char *line, const char *delim, bool *close)
{
    size_t n = strlen(delim);
    const char *p = line + n;

    *close = false;
    if (strncmp(line, delim, n) != 0)
        return false;
    if (p[0] == '-' && p[1] == '-') {
        *close = true;
        p += 2;
    }
    while (*p == ' ' || *p == '\t')
        p++;
    return *p == '\0' || strcmp(p, "\n") == 0 || strcmp(p, "\r\n") == 0;
}

/* Decodes a base64 body into the spool up to the end of the input or, with
 * delim, up to its next delimiter line (*ended: one was seen; *close: the
 * closing one). */
static env_err read_b64_body(reader *r, char *line, spool *s, const char *delim, bool *ended, bool *close)
{
    env_err rv = ENV_OK;
    EVP_ENCODE_CTX *ctx = EVP_ENCODE_CTX_new();
    bool partial, bol = true, stop = false;
    size_t n;
    b64_shape sh;

    memset(&sh, 0, sizeof(sh));
    *ended = *close = false;
    if (ctx == NULL)
        return ENV_ERR_NOMEM;
    EVP_DecodeInit(ctx);
    for (;;) {
        n = rd_line(r, line, HDR_LINE_CAP, &partial);
        if (r->err) {
            rv = r->err;
            goto out;
        }
        if (n == 0)
            break;
        if (delim != NULL && bol && !partial && is_delimiter(line, delim, close)) {
            *ended = true;
            break;
        }
        bol = !partial;
        /* after base64's end ('=' or '-') a part may carry trailing lines */
        if (!stop && (rv = b64_chunk(ctx, s, line, n, &stop)) != ENV_OK)
            goto out;
        if (!stop) /* a '-' line ("-- " before a signature) ends it as the decoder takes it */
            b64_shape_piece(&sh, line, n, !partial);
        if (stop && delim == NULL)
            break;
    }
    rv = b64_final(ctx, s);
    /* an incomplete last quantum: cut short, or text added after the base64 */
    if (rv == ENV_ERR_TRUNCATED && sh.tail)
        rv = ENV_ERR_BASE64;
out:
    r->b64_tail = r->b64_tail || sh.tail;
    EVP_ENCODE_CTX_free(ctx);
    return rv;
}

/* Skips a body part up to its multipart's next delimiter line. */
static env_err skip_part(reader *r, char *line, const char *delim, bool *ended, bool *close)
{
    bool partial, bol = true;
    size_t n;

    *ended = *close = false;
    while ((n = rd_line(r, line, HDR_LINE_CAP, &partial)) > 0) {
        if (bol && !partial && is_delimiter(line, delim, close)) {
            *ended = true;
            break;
        }
        bol = !partial;
    }
    return r->err;
}

/* The one S/MIME part of a multipart (h: its header block). multipart/mixed
 * as a list or gateway makes it when it adds a footer or a disclaimer
 * outside the encryption: the other parts are skipped; a second S/MIME
 * part is ENV_ERR_MIME (which would be the message?), none ENV_ERR_NOT_CMS.
 * multipart/signed (encrypted, then signed): its first part must be the
 * S/MIME one, else ENV_ERR_CONTENT_TYPE (signed, not encrypted); the
 * signature is not read. */
static env_err read_multipart(env_message *m, reader *r, char *line, const mime_head *h, bool is_signed,
                              spool *s)
{
    env_err rv;
    char boundary[128], delim[132];
    bool ended, close, found = false;
    mime_head part;

    if (!mime_param(h->ctype, h->ctype_raw, "boundary", boundary, sizeof(boundary)) || boundary[0] == '\0' ||
        strlen(boundary) > 70)
        return ENV_ERR_MIME;
    snprintf(delim, sizeof(delim), "--%s", boundary);
    if ((rv = skip_part(r, line, delim, &ended, &close)) != ENV_OK) /* the preamble */
        return rv;
    if (!ended || close)
        return ENV_ERR_MIME;
    do {
        if ((rv = read_head(m, r, line, false, &part)) != ENV_OK)
            return rv;
        if (part.have_ct && env_mime_is_smime(part.ctype, part.cdisp)) {
            if (found)
                return ENV_ERR_MIME;
            if (!part.have_cte || !mime_type_is(part.cte, "base64"))
                return ENV_ERR_ENCODING;
            if ((rv = read_b64_body(r, line, s, delim, &ended, &close)) != ENV_OK)
                return rv;
            found = true;
        } else if (is_signed) {
            return ENV_ERR_CONTENT_TYPE;
        } else if ((rv = skip_part(r, line, delim, &ended, &close)) != ENV_OK) {
            return rv;
        }
        if (is_signed) /* the signature part is not needed */
            return ENV_OK;
    } while (ended && !close);
    return found ? ENV_OK : ENV_ERR_NOT_CMS;
}

/* S/MIME: outer headers, then the base64 application/pkcs7-mime body;
 * with ENV_READ_IN_MULTIPART also a pkcs7-mime part of a multipart/mixed
 * or multipart/signed message. */
static env_err read_smime(env_message *m, reader *r, spool *s, unsigned flags)
{
    env_err rv;
    char *line = NULL;
    mime_head h;
    bool ended, close;

    if (!(line = malloc(HDR_LINE_CAP)) || !(m->outer = calloc(1, 1))) {
        rv = ENV_ERR_NOMEM;
        goto out;
    }
    if ((rv = read_head(m, r, line, true, &h)) != ENV_OK)
        goto out;
    if (!h.have_ct) {
        rv = ENV_ERR_NOT_CMS;
        goto out;
    }
    if (mime_type_is(h.ctype, "multipart/signed") || mime_type_is(h.ctype, "multipart/mixed")) {
        if (flags & ENV_READ_IN_MULTIPART)
            rv = read_multipart(m, r, line, &h, mime_type_is(h.ctype, "multipart/signed"), s);
        else
            rv = mime_type_is(h.ctype, "multipart/signed") ? ENV_ERR_CONTENT_TYPE : ENV_ERR_NOT_CMS;
        goto out;
    }
    if (!env_mime_is_smime(h.ctype, h.cdisp)) {
        rv = ENV_ERR_NOT_CMS;
        goto out;
    }
    if (!h.have_cte || !mime_type_is(h.cte, "base64")) {
        rv = ENV_ERR_ENCODING;
        goto out;
    }
    rv = read_b64_body(r, line, s, NULL, &ended, &close);
out:
    free(line);
    return rv;
}

env_err env_mime_read_top(const void *data, size_t len, env_mime_top *top)
{
    env_err rv = ENV_ERR_NOMEM;
    env_message *m = NULL;
    char *line = NULL;
    const char *dash;
    mime_head h;
    reader r;
    size_t i;

    memset(&r, 0, sizeof(r));
    if (top != NULL)
        memset(top, 0, sizeof(*top));
    if (data == NULL || top == NULL || len > INT_MAX)
        return ENV_ERR_ARGS;
    if ((m = calloc(1, sizeof(*m))) == NULL)
        goto out;
    m->fd = -1;
    if ((r.in = BIO_new_mem_buf(data, (int)len)) == NULL || (r.buf = malloc(IO_CHUNK)) == NULL ||
        (line = malloc(HDR_LINE_CAP)) == NULL)
        goto out;
    r.max = len;
    /* the reader's own header reading, as read_smime begins */
    if ((rv = read_head(m, &r, line, true, &h)) != ENV_OK)
        goto out;
    /* A blank line before any header line: a body with no header block
     * (mail_split refuses it too), not a message whose fields are absent;
     * the reader refuses it for its missing Content-Type. */
    if (!h.fields) {
        rv = ENV_ERR_NOT_CMS;
        goto out;
    }
    top->body = (size_t)(r.total - (r.len - r.pos));
    for (i = 0; h.ctype[i] != '\0' && h.ctype[i] != ';' && h.ctype[i] != ' ' && h.ctype[i] != '\t' &&
                i + 1 < sizeof(top->media_type);
         i++)
        top->media_type[i] = h.ctype[i];
    top->media_type[i] = '\0';
    top->smime = h.have_ct && env_mime_is_smime(h.ctype, h.cdisp);
    top->base64 = h.have_cte && mime_type_is(h.cte, "base64");
    /* b64_chunk: the decoder stops at its first '-' (B64_EOF) */
    dash = memchr((const char *)data + top->body, '-', len - top->body);
    top->b64_stop = dash != NULL ? (size_t)(dash - (const char *)data) : len;
    rv = ENV_OK;
out:
    if (rv != ENV_OK && top != NULL)
        memset(top, 0, sizeof(*top));
    free(line);
    free(r.buf);
    BIO_free(r.in);
    env_message_free(m);
    return rv;
}

/* The PEM labels CMS comes under: RFC 7468's CMS, OpenSSL's older PKCS7,
 * and gpgsm's --armor (libksba), which names what the content is. */
static bool pem_cms_label(const char *line)
{
    static const char *const labels[] = {"-----BEGIN CMS-----", "-----BEGIN PKCS7-----",
                                         "-----BEGIN ENCRYPTED MESSAGE-----"};
    for (size_t i = 0; i < GS_ARRAY_LEN(labels); i++)
        if (strncmp(line, labels[i], strlen(labels[i])) == 0)
            return true;
    return false;
}

static env_err read_pem(reader *r, spool *s)
{
    env_err rv = ENV_OK;
    char *line = NULL;
    size_t n;
    bool partial, begun = false, ended = false, stop = false;
    EVP_ENCODE_CTX *ctx = NULL;

    if (!(line = malloc(HDR_LINE_CAP)) || !(ctx = EVP_ENCODE_CTX_new())) {
        rv = ENV_ERR_NOMEM;
        goto out;
    }
    EVP_DecodeInit(ctx);
    while (!ended) {
        n = rd_line(r, line, HDR_LINE_CAP, &partial);
        if (r->err) {
            rv = r->err;
            goto out;
        }
        if (n == 0)
            break;
        if (!begun) {
            if (blank_line(line))
                continue;
            if (!pem_cms_label(line)) {
                rv = ENV_ERR_NOT_CMS;
                goto out;
            }
            begun = true;
            continue;
        }
        if (strncmp(line, "-----END ", 9) == 0) {
            ended = true;
            break;
        }
        if ((rv = b64_chunk(ctx, s, line, n, &stop)) != ENV_OK)
            goto out;
        if (stop) {
            rv = ENV_ERR_MIME;
            goto out;
        }
    }
    if (!begun) {
        rv = ENV_ERR_NOT_CMS;
        goto out;
    }
    if (!ended) {
        rv = ENV_ERR_TRUNCATED;
        goto out;
    }
    rv = b64_final(ctx, s);
out:
    free(line);
    EVP_ENCODE_CTX_free(ctx);
    return rv;
}

static env_err read_der(reader *r, spool *s)
{
    env_err rv;
    while (rd_fill(r)) {
        if ((rv = spool_write(s, r->buf + r->pos, r->len - r->pos)) != ENV_OK)
            return rv;
        r->pos = r->len;
    }
    return r->err;
}

/* ---- BER structure walk over the temp file -------------------------------- */

typedef struct tlv {
    off_t off;
    size_t hl;
    long len;
    int tag, xclass;
    bool cons, indef;
} tlv;

static bool is_eoc(const tlv *t)
{
    return t->tag == V_ASN1_EOC && t->xclass == V_ASN1_UNIVERSAL && !t->cons && t->len == 0;
}

/* TLV header at off, inside a container ending at limit. */
static env_err hdr_at(const env_message *m, off_t off, off_t limit, tlv *t)
{
    unsigned char buf[256];
    const unsigned char *p = buf;
    size_t avail;
    long len = 0;
    int tag = 0, xclass = 0, r;
    env_err rv;

    memset(t, 0, sizeof(*t));
    if (off >= limit)
        return limit >= m->size ? ENV_ERR_TRUNCATED : ENV_ERR_NOT_CMS;
    /* A header is at most ~140 bytes (5-byte tag, 1+127 length bytes). */
    avail = limit - off < (off_t)sizeof(buf) ? (size_t)(limit - off) : sizeof(buf);
    if ((rv = read_at(m, off, buf, avail)) != ENV_OK)
        return rv;
    r = ASN1_get_object(&p, &len, &tag, &xclass, (long)(limit - off));
    ERR_clear_error();
    if (r & 0x80) {
        if (p == buf) /* unparseable header */
            return (limit >= m->size && avail < 16) ? ENV_ERR_TRUNCATED : ENV_ERR_NOT_CMS;
        /* length runs past the container */
        return off + (off_t)(p - buf) + len > m->size ? ENV_ERR_TRUNCATED : ENV_ERR_NOT_CMS;
    }
    t->off = off;
    t->hl = (size_t)(p - buf);
    t->len = len;
    t->tag = tag;
    t->xclass = xclass;
    t->cons = (r & V_ASN1_CONSTRUCTED) != 0;
    t->indef = (r & 1) != 0;
    return ENV_OK;
}

static off_t tlv_end(const tlv *t, off_t limit)
{
    return t->indef ? limit : t->off + (off_t)t->hl + t->len;
}

/* Into the constructed element of tag and class at *pos (inside limit):
 * its header in *t, *pos moved past that header to its first content
 * byte, *end where its contents end. ENV_ERR_NOT_CMS for anything else. */
static env_err enter(const env_message *m, off_t *pos, off_t limit, int tag, int xclass, tlv *t, off_t *end)
{
    env_err rv = hdr_at(m, *pos, limit, t);

    if (rv != ENV_OK)
        return rv;
    if (t->tag != tag || t->xclass != xclass || !t->cons)
        return ENV_ERR_NOT_CMS;
    *pos += (off_t)t->hl;
    *end = tlv_end(t, limit);
    return ENV_OK;
}

/* Pointer to at most cap bytes of the file from off (bounded by limit). */
static env_err window(env_message *m, off_t off, off_t limit, size_t cap, const unsigned char **p, size_t *n)
{
    size_t want = limit - off < (off_t)cap ? (size_t)(limit - off) : cap;
    env_err rv;

    if (m->win && off >= m->win_off && off + (off_t)want <= m->win_off + (off_t)m->win_len) {
        *p = m->win + (off - m->win_off);
        *n = want;
        return ENV_OK;
    }
    if (!m->win && !(m->win = malloc(ENV_HDR_CAP)))
        return ENV_ERR_NOMEM;
    if ((rv = read_at(m, off, m->win, want)) != ENV_OK)
        return rv;
    m->win_off = off;
    m->win_len = want;
    *p = m->win;
    *n = want;
    return ENV_OK;
}

/* Decodes one element at *pos with an ASN.1 template item. */
static env_err elem_at(env_message *m, off_t *pos, off_t limit, size_t cap, const ASN1_ITEM *it, void *out)
{
    tlv t;
    const unsigned char *w, *p;
    size_t n;
    env_err rv;
    ASN1_VALUE *v;

    *(ASN1_VALUE **)out = NULL;
    if ((rv = hdr_at(m, *pos, limit, &t)) != ENV_OK)
        return rv;
    if ((rv = window(m, *pos, limit, cap, &w, &n)) != ENV_OK)
        return rv;
    p = w;
    v = ASN1_item_d2i(NULL, &p, (long)n, it);
    ERR_clear_error();
    if (!v) {
        if (!t.indef && t.hl + (size_t)t.len <= n)
            return ENV_ERR_NOT_CMS;
        if (!t.indef)
            return ENV_ERR_TOO_LARGE;
        return *pos + (off_t)n >= m->size ? ENV_ERR_TRUNCATED : ENV_ERR_TOO_LARGE;
    }
    *pos += (off_t)(p - w);
    *(ASN1_VALUE **)out = v;
    return ENV_OK;
}

/* Is the next thing in this container its end? */
static env_err at_end(const env_message *m, off_t pos, bool indef, off_t end, bool *yes)
{
    tlv t;
    env_err rv;
    *yes = false;
    if (!indef) {
        if (pos > end)
            return ENV_ERR_NOT_CMS;
        *yes = pos == end;
        return ENV_OK;
    }
    if ((rv = hdr_at(m, pos, end, &t)) != ENV_OK)
        return rv;
    *yes = is_eoc(&t);
    return ENV_OK;
}

static env_err close_container(const env_message *m, off_t *pos, bool indef, off_t end)
{
    tlv t;
    env_err rv;
    if (!indef)
        return *pos == end ? ENV_OK : ENV_ERR_NOT_CMS;
    if ((rv = hdr_at(m, *pos, end, &t)) != ENV_OK)
        return rv;
    if (!is_eoc(&t))
        return ENV_ERR_NOT_CMS;
    *pos += (off_t)t.hl;
    return ENV_OK;
}

typedef env_err (*chunk_fn)(void *arg, const env_message *m, off_t off, size_t len);

/* Walks an OCTET STRING (primitive or constructed, BER) calling fn for each
 * primitive piece; *end is just past it. */
static env_err walk_octets(const env_message *m, const tlv *t, off_t limit, int depth, chunk_fn fn, void *arg,
                           off_t *end)
{
    env_err rv = ENV_OK;
    off_t pos = t->off + (off_t)t->hl, cend;

    if (!t->cons) {
        if (fn && t->len > 0 && (rv = fn(arg, m, pos, (size_t)t->len)) != ENV_OK)
            return rv;
        *end = pos + t->len;
        return ENV_OK;
    }
    if (depth >= MAX_NESTING)
        return ENV_ERR_NOT_CMS;
    cend = tlv_end(t, limit);
    for (;;) {
        tlv c;
        if (!t->indef && pos == cend)
            break;
        if ((rv = hdr_at(m, pos, cend, &c)) != ENV_OK)
            return rv;
        if (t->indef && is_eoc(&c)) {
            pos += (off_t)c.hl;
            break;
        }
        if (c.tag != V_ASN1_OCTET_STRING || c.xclass != V_ASN1_UNIVERSAL)
            return ENV_ERR_NOT_CMS;
        if ((rv = walk_octets(m, &c, cend, depth + 1, fn, arg, &pos)) != ENV_OK)
            return rv;
    }
    *end = pos;
    return ENV_OK;
}

static env_err set_ris(env_message *m, STACK_OF(ENV_RI) *ris)
{
    size_t n = (size_t)sk_ENV_RI_num(ris);
    env_err rv = ENV_ERR_NOMEM;

    if (n == 0)
        return ENV_ERR_NO_RECIPIENT;
    if (n > ENV_MAX_RECIPIENTS)
        return ENV_ERR_TOO_LARGE;
    if (!(m->ri_der = calloc(n, sizeof(*m->ri_der))) || !(m->ri_len = calloc(n, sizeof(*m->ri_len))))
        return ENV_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        unsigned char *p = NULL;
        /* Issuer names are kept undecoded (env_internal.h): refused here,
         * as when the template decoded them. */
        if (!env_ri_names_valid(sk_ENV_RI_value(ris, (int)i), NULL, 0)) {
            rv = ENV_ERR_NOT_CMS;
            goto out;
        }
        int len = i2d_ENV_RI(sk_ENV_RI_value(ris, (int)i), &p);
        if (len <= 0)
            goto out;
        m->ri_der[i] = malloc((size_t)len);
        if (!m->ri_der[i]) {
            OPENSSL_free(p);
            goto out;
        }
        memcpy(m->ri_der[i], p, (size_t)len);
        OPENSSL_free(p);
        m->ri_len[i] = (size_t)len;
        m->nri = i + 1;
    }
    rv = ENV_OK;
out:
    return rv;
}

static env_err parse_cms(env_message *m)
{
    env_err rv;
    tlv ci, c0, ed, eci, ec, t;
    off_t pos, end_ci, end_c0, end_ed, end_eci;
    ASN1_OBJECT *ct = NULL;
    ASN1_INTEGER *ver = NULL;
    STACK_OF(ENV_RI) *ris = NULL;
    bool yes;
    int nid;

    if (m->size == 0)
        return ENV_ERR_TRUNCATED;
    pos = 0;
    if ((rv = enter(m, &pos, m->size, V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, &ci, &end_ci)) != ENV_OK)
        goto out;
    if ((rv = elem_at(m, &pos, end_ci, 4096, ASN1_ITEM_rptr(ASN1_OBJECT), &ct)) != ENV_OK) {
        if (rv != ENV_ERR_TRUNCATED)
            rv = ENV_ERR_NOT_CMS;
        goto out;
    }
    nid = OBJ_obj2nid(ct);
    if (nid == NID_pkcs7_enveloped) {
        m->auth = false;
    } else if (nid == NID_id_smime_ct_authEnvelopedData) {
        m->auth = true;
    } else {
        rv = ENV_ERR_CONTENT_TYPE;
        goto out;
    }
    if ((rv = enter(m, &pos, end_ci, 0, V_ASN1_CONTEXT_SPECIFIC, &c0, &end_c0)) != ENV_OK ||
        (rv = enter(m, &pos, end_c0, V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, &ed, &end_ed)) != ENV_OK)
        goto out;
    if ((rv = elem_at(m, &pos, end_ed, 64, ASN1_ITEM_rptr(ASN1_INTEGER), &ver)) != ENV_OK)
        goto out;
    m->version = ASN1_INTEGER_get(ver);
    if ((rv = hdr_at(m, pos, end_ed, &t)) != ENV_OK)
        goto out;
    if (t.tag == 0 && t.xclass == V_ASN1_CONTEXT_SPECIFIC && t.cons) {
        if ((rv = elem_at(m, &pos, end_ed, ENV_HDR_CAP, ASN1_ITEM_rptr(ENV_ORIGINFO_IMP0), &m->orig)) != ENV_OK)
            goto out;
    }
    if ((rv = elem_at(m, &pos, end_ed, ENV_HDR_CAP, ASN1_ITEM_rptr(ENV_RIS), &ris)) != ENV_OK)
        goto out;
    if ((rv = set_ris(m, ris)) != ENV_OK)
        goto out;
    /* (Auth)EncryptedContentInfo */
    if ((rv = enter(m, &pos, end_ed, V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL, &eci, &end_eci)) != ENV_OK)
        goto out;
    if ((rv = elem_at(m, &pos, end_eci, 4096, ASN1_ITEM_rptr(ASN1_OBJECT), &m->inner_type)) != ENV_OK)
        goto out;
    if ((rv = elem_at(m, &pos, end_eci, 4096, ASN1_ITEM_rptr(X509_ALGOR), &m->calg)) != ENV_OK)
        goto out;
    if ((rv = env_cipher_from_algor(m->calg, &m->gcm, &m->keylen, m->iv, &m->ivlen, &m->taglen)) != ENV_OK)
        goto out;
    if (m->gcm != m->auth) { /* GCM only in AuthEnvelopedData (RFC 5084), CBC only in EnvelopedData */
        rv = ENV_ERR_UNSUPPORTED;
        goto out;
    }
    if ((rv = at_end(m, pos, eci.indef, end_eci, &yes)) != ENV_OK)
        goto out;
    if (yes) { /* detached content: not something a mail ever carries */
        rv = ENV_ERR_UNSUPPORTED;
        goto out;
    }
    if ((rv = hdr_at(m, pos, end_eci, &ec)) != ENV_OK)
        goto out;
    if (ec.tag != 0 || ec.xclass != V_ASN1_CONTEXT_SPECIFIC) {
        rv = ENV_ERR_NOT_CMS;
        goto out;
    }
    m->ec_off = pos;
    if ((rv = walk_octets(m, &ec, end_eci, 0, NULL, NULL, &m->ec_end)) != ENV_OK)
        goto out;
    pos = m->ec_end;
    if ((rv = close_container(m, &pos, eci.indef, end_eci)) != ENV_OK)
        goto out;
    /* After the content: [1] attrs; for Auth also the mac and [2] attrs. */
    if ((rv = at_end(m, pos, ed.indef, end_ed, &yes)) != ENV_OK)
        goto out;
    if (!yes && (rv = hdr_at(m, pos, end_ed, &t)) == ENV_OK && t.tag == 1 && t.xclass == V_ASN1_CONTEXT_SPECIFIC) {
        if ((rv = elem_at(m, &pos, end_ed, ENV_TAIL_CAP, ASN1_ITEM_rptr(ENV_ATTRS_IMP1), &m->attrs1)) != ENV_OK)
            goto out;
    }
    if (rv != ENV_OK)
        goto out;
    if (m->auth) {
        if ((rv = elem_at(m, &pos, end_ed, 4096, ASN1_ITEM_rptr(ASN1_OCTET_STRING), &m->mac)) != ENV_OK)
            goto out;
        if ((rv = at_end(m, pos, ed.indef, end_ed, &yes)) != ENV_OK)
            goto out;
        if (!yes &&
            (rv = elem_at(m, &pos, end_ed, ENV_TAIL_CAP, ASN1_ITEM_rptr(ENV_ATTRS_IMP2), &m->attrs2)) != ENV_OK)
            goto out;
    }
    if ((rv = close_container(m, &pos, ed.indef, end_ed)) != ENV_OK)
        goto out;
    if ((rv = close_container(m, &pos, c0.indef, end_c0)) != ENV_OK)
        goto out;
    rv = close_container(m, &pos, ci.indef, end_ci);
    m->cms_end = pos;
out:
    ASN1_OBJECT_free(ct);
    ASN1_INTEGER_free(ver);
    sk_ENV_RI_pop_free(ris, ENV_RI_free);
    ERR_clear_error();
    return rv;
}

env_err env_message_read(BIO *in, env_format fmt, size_t max_size, env_message **out)
{
    return env_message_read_flags(in, fmt, 0, max_size, out);
}

env_err env_message_read_flags(BIO *in, env_format fmt, unsigned flags, size_t max_size, env_message **out)
{
    env_err rv = ENV_ERR_NOMEM;
    env_message *m = NULL;
    reader r;
    spool s;

    memset(&r, 0, sizeof(r));
    memset(&s, 0, sizeof(s));
    if (out)
        *out = NULL;
    if (!in || !out || fmt < ENV_FORMAT_AUTO || fmt > ENV_FORMAT_PEM)
        return ENV_ERR_ARGS;
    if (!(m = calloc(1, sizeof(*m))))
        goto out;
    m->fd = -1;
    r.in = in;
    r.max = max_size ? max_size : ENV_DEFAULT_MAX;
    if (!(r.buf = malloc(IO_CHUNK)) || !(s.buf = malloc(IO_CHUNK)))
        goto out;
    s.max = r.max;
    if ((m->fd = s.fd = tmp_open()) < 0) {
        rv = ENV_ERR_IO;
        goto out;
    }
    if (fmt == ENV_FORMAT_AUTO) {
        if (!rd_fill(&r)) {
            rv = r.err ? r.err : ENV_ERR_TRUNCATED;
            goto out;
        }
        if (r.buf[0] == 0x30)
            fmt = ENV_FORMAT_DER;
        else if (r.len >= 5 && memcmp(r.buf, "-----", 5) == 0)
            fmt = ENV_FORMAT_PEM;
        else
            fmt = ENV_FORMAT_SMIME;
    }
    if (fmt == ENV_FORMAT_DER)
        rv = read_der(&r, &s);
    else if (fmt == ENV_FORMAT_PEM)
        rv = read_pem(&r, &s);
    else
        rv = read_smime(m, &r, &s, flags);
    if (rv != ENV_OK)
        goto out;
    if ((rv = spool_flush(&s)) != ENV_OK)
        goto out;
    m->size = s.size;
    if (!m->outer && !(m->outer = calloc(1, 1))) {
        rv = ENV_ERR_NOMEM;
        goto out;
    }
    /* CMS that ends early, in base64 that text was added to: the text */
    if ((rv = parse_cms(m)) != ENV_OK) {
        if (rv == ENV_ERR_TRUNCATED && r.b64_tail)
            rv = ENV_ERR_BASE64;
        goto out;
    }
    /* The header window is only needed while parsing. */
    free(m->win);
    m->win = NULL;
    *out = m;
    m = NULL;
out:
    free(r.buf);
    free(s.buf);
    env_message_free(m);
    return rv;
}

static void free_ris(env_message *m)
{
    for (size_t i = 0; i < m->nri; i++)
        free(m->ri_der[i]);
    free(m->ri_der);
    free(m->ri_len);
    m->ri_der = NULL;
    m->ri_len = NULL;
    m->nri = 0;
}

void env_message_free(env_message *msg)
{
    if (!msg)
        return;
    if (msg->fd >= 0)
        close(msg->fd);
    ENV_ORIGINFO_free(msg->orig);
    free_ris(msg);
    ASN1_OBJECT_free(msg->inner_type);
    X509_ALGOR_free(msg->calg);
    sk_X509_ATTRIBUTE_pop_free(msg->attrs1, X509_ATTRIBUTE_free);
    sk_X509_ATTRIBUTE_pop_free(msg->attrs2, X509_ATTRIBUTE_free);
    ASN1_OCTET_STRING_free(msg->mac);
    free(msg->outer);
    free(msg->win);
    free(msg);
}

static bool is_des3(const env_message *msg)
{
    return OBJ_obj2nid(msg->calg->algorithm) == NID_des_ede3_cbc;
}

env_cipher env_message_cipher(const env_message *msg)
{
    if (!msg)
        return 0;
    if (is_des3(msg))
        return ENV_CIPHER_DES3_CBC;
    switch (msg->keylen) {
    case 16: return msg->gcm ? ENV_CIPHER_AES128_GCM : ENV_CIPHER_AES128_CBC;
    case 24: return msg->gcm ? ENV_CIPHER_AES192_GCM : ENV_CIPHER_AES192_CBC;
    default: return msg->gcm ? ENV_CIPHER_AES256_GCM : ENV_CIPHER_AES256_CBC;
    }
}

const char *env_message_content_alg(const env_message *msg)
{
    if (!msg)
        return "unknown";
    return is_des3(msg) ? "des-ede3-cbc" : env_calg_name(msg->gcm, msg->keylen);
}

size_t env_message_key_length(const env_message *msg)
{
    return msg ? msg->keylen : 0;
}

size_t env_message_content_max(const env_message *msg)
{
    return msg && msg->ec_end > msg->ec_off ? (size_t)(msg->ec_end - msg->ec_off) : 0;
}

size_t env_message_recipient_count(const env_message *msg)
{
    return msg ? msg->nri : 0;
}

env_err env_message_recipient_der(const env_message *msg, size_t i, unsigned char **der, size_t *len)
{
    if (der)
        *der = NULL;
    if (len)
        *len = 0;
    if (!msg || !der || !len || i >= msg->nri)
        return ENV_ERR_ARGS;
    if (!(*der = malloc(msg->ri_len[i])))
        return ENV_ERR_NOMEM;
    memcpy(*der, msg->ri_der[i], msg->ri_len[i]);
    *len = msg->ri_len[i];
    return ENV_OK;
}

env_err env_message_find_recipient(const env_message *msg, X509 *cert, size_t *index)
{
    if (index)
        *index = 0;
    if (!msg || !cert || !index)
        return ENV_ERR_ARGS;
    for (size_t i = 0; i < msg->nri; i++) {
        env_recipient *ri = NULL;
        bool match;
        if (env_recipient_parse(msg->ri_der[i], msg->ri_len[i], &ri) != ENV_OK)
            continue;
        match = env_recipient_matches_cert(ri, cert);
        env_recipient_free(ri);
        if (match) {
            *index = i;
            return ENV_OK;
        }
    }
    return ENV_ERR_NO_RECIPIENT;
}

env_err env_message_find_kekri(const env_message *msg, const unsigned char *kek_id, size_t kek_id_len,
                               size_t *index)
{
    if (index)
        *index = 0;
    if (!msg || !kek_id || !index)
        return ENV_ERR_ARGS;
    for (size_t i = 0; i < msg->nri; i++) {
        env_recipient *ri = NULL;
        const unsigned char *id;
        size_t idlen;
        bool match = false;
        if (env_recipient_parse(msg->ri_der[i], msg->ri_len[i], &ri) != ENV_OK)
            continue;
        if (env_recipient_kek_id(ri, &id, &idlen) == ENV_OK)
            match = idlen == kek_id_len && memcmp(id, kek_id, idlen) == 0;
        env_recipient_free(ri);
        if (match) {
            *index = i;
            return ENV_OK;
        }
    }
    return ENV_ERR_NO_RECIPIENT;
}

env_err env_message_set_recipients(env_message *msg, const unsigned char *const *ders, const size_t *lens, size_t n)
{
    env_err rv = ENV_ERR_NOMEM;
    unsigned char **nd = NULL;
    size_t *nl = NULL, done = 0;

    if (!msg || !ders || !lens || n == 0)
        return ENV_ERR_ARGS;
    if (n > ENV_MAX_RECIPIENTS)
        return ENV_ERR_TOO_LARGE;
    if (!(nd = calloc(n, sizeof(*nd))) || !(nl = calloc(n, sizeof(*nl))))
        goto out;
    for (; done < n; done++) {
        env_recipient *ri = NULL;
        /* Each must be exactly one well-formed RecipientInfo. */
        if (!ders[done] || (rv = env_recipient_parse(ders[done], lens[done], &ri)) != ENV_OK) {
            rv = ENV_ERR_ARGS;
            goto out;
        }
        env_recipient_free(ri);
        rv = ENV_ERR_NOMEM;
        if (!(nd[done] = malloc(lens[done])))
            goto out;
        memcpy(nd[done], ders[done], lens[done]);
        nl[done] = lens[done];
    }
    free_ris(msg);
    msg->ri_der = nd;
    msg->ri_len = nl;
    msg->nri = n;
    nd = NULL;
    nl = NULL;
    rv = ENV_OK;
out:
    if (nd)
        for (size_t i = 0; i < done; i++)
            free(nd[i]);
    free(nd);
    free(nl);
    return rv;
}

void env_message_drop_originator(env_message *msg)
{
    if (msg == NULL)
        return;
    ENV_ORIGINFO_free(msg->orig);
    msg->orig = NULL;
}

bool env_message_has_originator(const env_message *msg)
{
    return msg != NULL && msg->orig != NULL;
}

const char *env_message_outer_headers(const env_message *msg)
{
    return msg && msg->outer ? msg->outer : "";
}

bool env_message_trailing(const env_message *msg)
{
    return msg != NULL && msg->cms_end < msg->size;
}

/* ---- decryption ------------------------------------------------------------ */

typedef struct dec_state {
    EVP_CIPHER_CTX *ctx;
    BIO *out;
    unsigned char *in, *plain;
} dec_state;

static env_err bio_write_all(BIO *b, const void *p, size_t n)
{
    const unsigned char *c = p;
    while (n) {
        int k = n > INT_MAX ? INT_MAX : (int)n;
        int w = BIO_write(b, c, k);
        if (w <= 0)
            return ENV_ERR_IO;
        c += w;
        n -= (size_t)w;
    }
    return ENV_OK;
}

static env_err dec_chunk(void *arg, const env_message *m, off_t off, size_t len)
{
    dec_state *d = arg;
    env_err rv;
    while (len) {
        size_t k = len > IO_CHUNK ? IO_CHUNK : len;
        int outl = 0;
        if ((rv = read_at(m, off, d->in, k)) != ENV_OK)
            return rv;
        if (!EVP_DecryptUpdate(d->ctx, d->plain, &outl, d->in, (int)k))
            return ENV_ERR_CRYPTO;
        if (outl > 0 && (rv = bio_write_all(d->out, d->plain, (size_t)outl)) != ENV_OK)
            return rv;
        off += (off_t)k;
        len -= k;
    }
    return ENV_OK;
}

env_err env_message_decrypt(const env_message *msg, const unsigned char *cek, size_t ceklen, BIO *out)
{
    env_err rv = ENV_ERR_NOMEM;
    dec_state d;
    const EVP_CIPHER *c;
    unsigned char *aad = NULL;
    int aadlen = 0, outl = 0;
    tlv ec;
    off_t end;

    memset(&d, 0, sizeof(d));
    if (!msg || !cek || !out)
        return ENV_ERR_ARGS;
    if (ceklen != msg->keylen)
        return ENV_ERR_KEY;
    if (!(c = EVP_get_cipherbynid(OBJ_obj2nid(msg->calg->algorithm))))
        return ENV_ERR_UNSUPPORTED;
    d.out = out;
    if (!(d.ctx = EVP_CIPHER_CTX_new()) || !(d.in = malloc(IO_CHUNK)) || !(d.plain = malloc(IO_CHUNK + 64)))
        goto out;
    rv = ENV_ERR_CRYPTO;
    if (!EVP_DecryptInit_ex(d.ctx, c, NULL, NULL, NULL))
        goto out;
    if (msg->gcm && !EVP_CIPHER_CTX_ctrl(d.ctx, EVP_CTRL_GCM_SET_IVLEN, (int)msg->ivlen, NULL))
        goto out;
    if (!EVP_DecryptInit_ex(d.ctx, NULL, NULL, cek, msg->iv))
        goto out;
    if (msg->gcm) {
        /* RFC 5083 sec 2.2: the AAD is the DER of authAttrs with a SET OF tag. */
        if (msg->attrs1) {
            if ((aadlen = ASN1_item_i2d((ASN1_VALUE *)msg->attrs1, &aad, ASN1_ITEM_rptr(ENV_ATTRS))) <= 0)
                goto out;
            if (!EVP_DecryptUpdate(d.ctx, NULL, &outl, aad, aadlen))
                goto out;
        }
        if (!msg->mac || (size_t)msg->mac->length != msg->taglen) {
            rv = ENV_ERR_AUTH;
            goto out;
        }
    }
    if ((rv = hdr_at(msg, msg->ec_off, msg->ec_end, &ec)) != ENV_OK)
        goto out;
    if ((rv = walk_octets(msg, &ec, msg->ec_end, 0, dec_chunk, &d, &end)) != ENV_OK)
        goto out;
    if (msg->gcm &&
        !EVP_CIPHER_CTX_ctrl(d.ctx, EVP_CTRL_GCM_SET_TAG, (int)msg->taglen, msg->mac->data)) {
        rv = ENV_ERR_CRYPTO;
        goto out;
    }
    if (!EVP_DecryptFinal_ex(d.ctx, d.plain, &outl)) {
        rv = ENV_ERR_AUTH;
        goto out;
    }
    if (outl > 0 && (rv = bio_write_all(out, d.plain, (size_t)outl)) != ENV_OK)
        goto out;
    if (BIO_flush(out) <= 0) {
        rv = ENV_ERR_IO;
        goto out;
    }
    rv = ENV_OK;
out:
    EVP_CIPHER_CTX_free(d.ctx);
    free(d.in);
    if (d.plain)
        OPENSSL_cleanse(d.plain, IO_CHUNK + 64);
    free(d.plain);
    OPENSSL_free(aad);
    ERR_clear_error();
    return rv;
}

env_err env_message_decrypt_with_pkey(const env_message *msg, X509 *cert, EVP_PKEY *pkey, BIO *out)
{
    env_err rv;
    size_t idx, keylen = 0;
    env_recipient *ri = NULL;
    unsigned char key[64];

    if (!msg || !cert || !pkey || !out)
        return ENV_ERR_ARGS;
    if ((rv = env_message_find_recipient(msg, cert, &idx)) != ENV_OK)
        return rv;
    if ((rv = env_recipient_parse(msg->ri_der[idx], msg->ri_len[idx], &ri)) != ENV_OK)
        return rv;
    if ((rv = env_recipient_decrypt_with_pkey(ri, cert, pkey, key, sizeof(key), &keylen)) != ENV_OK)
        goto out;
    rv = env_message_decrypt(msg, key, keylen, out);
out:
    OPENSSL_cleanse(key, sizeof(key));
    env_recipient_free(ri);
    return rv;
}

/* ---- writing --------------------------------------------------------------- */

/* Version per RFC 5652 sec 6.1 (EnvelopedData) or 0 (AuthEnvelopedData). */
static long env_version(const env_message *m)
{
    long v = 0;
    if (m->auth)
        return 0;
    for (size_t i = 0; i < m->nri; i++) {
        /* pwri/ori force v3; anything but a v0 KTRI (issuerAndSerialNumber) v2. */
        env_recipient *ri = NULL;
        if (env_recipient_parse(m->ri_der[i], m->ri_len[i], &ri) != ENV_OK)
            continue;
        if (env_recipient_type(ri) == ENV_RI_OTHER)
            v = 3;
        else if (v < 2 && env_recipient_version(ri) != 0)
            v = 2;
        env_recipient_free(ri);
    }
    if (v < 2 && (m->orig || m->attrs1))
        v = 2;
    if (m->version == 4 && m->orig)
        v = 4; /* originatorInfo with other certificate/CRL formats: keep */
    return v;
}

typedef struct part {
    unsigned char *der;
    int len;
} part;

/* encryptedContent as one primitive [0] OCTET STRING: BER chunks (openssl
 * cms -stream, our own env_encrypt) are joined. libksba (gpgsm 2.2.40)
 * misreads an indefinite-length content inside the definite-length
 * wrappers we write ("invalid padding"); a primitive one every reader
 * takes. */
struct ec_sum {
    uint64_t total;
};

static env_err ec_count(void *arg, const env_message *m, off_t off, size_t len)
{
    (void)m;
    (void)off;
    ((struct ec_sum *)arg)->total += len;
    return ENV_OK;
}

struct ec_copy {
    BIO *sink;
    unsigned char *buf;
};

static env_err ec_copy_chunk(void *arg, const env_message *m, off_t off, size_t len)
{
    struct ec_copy *c = arg;
    env_err rv;
    while (len) {
        size_t k = len > IO_CHUNK ? IO_CHUNK : len;
        if ((rv = read_at(m, off, c->buf, k)) != ENV_OK || (rv = bio_write_all(c->sink, c->buf, k)) != ENV_OK)
            return rv;
        off += (off_t)k;
        len -= k;
    }
    return ENV_OK;
}

env_err env_message_write(const env_message *msg, env_format fmt, const char *outer_headers, BIO *out)
{
    env_err rv = ENV_ERR_NOMEM;
    part ct = {0}, ver = {0}, orig = {0}, inner = {0}, calg = {0}, a1 = {0}, mac = {0}, a2 = {0};
    ASN1_INTEGER *vi = NULL;
    BIO *b64 = NULL, *sink = out;
    bool crlf = false;
    size_t ris = 0;
    long ec_len, eci_len, ed_len, tail, ec_total = -1; /* ec_total >= 0: chunks joined into it */
    tlv ect;
    int set_tlv, eci_tlv, ed_tlv, c0_tlv, ci_tlv;
    unsigned char hdr[32], *p, *buf = NULL;
    const ASN1_ITEM *a1_it = ASN1_ITEM_rptr(ENV_ATTRS_IMP1);

    if (!msg || !out || fmt < ENV_FORMAT_AUTO || fmt > ENV_FORMAT_PEM)
        return ENV_ERR_ARGS;
    if (fmt == ENV_FORMAT_AUTO)
        fmt = ENV_FORMAT_SMIME;
    for (size_t i = 0; i < msg->nri; i++)
        if (util_size_add(ris, msg->ri_len[i], &ris) || ris > INT_MAX / 2)
            return ENV_ERR_TOO_LARGE;
    ec_len = (long)(msg->ec_end - msg->ec_off);
    rv = ENV_ERR_NOT_CMS;
    if (hdr_at(msg, msg->ec_off, msg->ec_end, &ect) != ENV_OK)
        goto out;
    if (ect.cons) {
        struct ec_sum sum = {0};
        off_t end;
        if (walk_octets(msg, &ect, msg->ec_end, 0, ec_count, &sum, &end) != ENV_OK)
            goto out;
        rv = ENV_ERR_TOO_LARGE;
        if (sum.total > INT_MAX / 4 || (ec_len = ASN1_object_size(0, (int)sum.total, 0)) < 0)
            goto out;
        ec_total = (long)sum.total;
    }
    rv = ENV_ERR_NOMEM;
    if (!(vi = ASN1_INTEGER_new()) || !ASN1_INTEGER_set(vi, env_version(msg)))
        goto out;
    rv = ENV_ERR_CRYPTO;
    if ((ct.len = i2d_ASN1_OBJECT(OBJ_nid2obj(msg->auth ? NID_id_smime_ct_authEnvelopedData : NID_pkcs7_enveloped),
                                  &ct.der)) <= 0 ||
        (ver.len = i2d_ASN1_INTEGER(vi, &ver.der)) <= 0 ||
        (inner.len = i2d_ASN1_OBJECT(msg->inner_type, &inner.der)) <= 0 ||
        (calg.len = i2d_X509_ALGOR(msg->calg, &calg.der)) <= 0)
        goto out;
    if (msg->orig && (orig.len = ASN1_item_i2d((ASN1_VALUE *)msg->orig, &orig.der, ASN1_ITEM_rptr(ENV_ORIGINFO_IMP0))) <= 0)
        goto out;
    if (msg->attrs1 && (a1.len = ASN1_item_i2d((ASN1_VALUE *)msg->attrs1, &a1.der, a1_it)) <= 0)
        goto out;
    if (msg->mac && (mac.len = i2d_ASN1_OCTET_STRING(msg->mac, &mac.der)) <= 0)
        goto out;
    if (msg->attrs2 && (a2.len = ASN1_item_i2d((ASN1_VALUE *)msg->attrs2, &a2.der, ASN1_ITEM_rptr(ENV_ATTRS_IMP2))) <= 0)
        goto out;
    /* Definite lengths all the way out; the content TLV may itself be
     * indefinite BER, which is fine inside definite wrappers. */
    rv = ENV_ERR_TOO_LARGE;
    tail = (long)a1.len + mac.len + a2.len;
    if ((set_tlv = ASN1_object_size(1, (int)ris, V_ASN1_SET)) < 0)
        goto out;
    if (ec_len > INT_MAX / 2)
        goto out;
    eci_len = inner.len + calg.len + ec_len;
    if ((eci_tlv = ASN1_object_size(1, (int)eci_len, V_ASN1_SEQUENCE)) < 0)
        goto out;
    ed_len = (long)ver.len + orig.len + set_tlv + eci_tlv + tail;
    if (ed_len > INT_MAX / 2 || (ed_tlv = ASN1_object_size(1, (int)ed_len, V_ASN1_SEQUENCE)) < 0 ||
        (c0_tlv = ASN1_object_size(1, ed_tlv, 0)) < 0 ||
        (ci_tlv = ASN1_object_size(1, ct.len + c0_tlv, V_ASN1_SEQUENCE)) < 0)
        goto out;
    (void)ci_tlv;

    rv = ENV_ERR_IO;
    if (fmt == ENV_FORMAT_SMIME) {
        const char *oh = outer_headers ? outer_headers : msg->outer;
        size_t ol = oh ? strlen(oh) : 0;
        /* Line ends follow the outer headers: CRLF there means CRLF throughout. */
        crlf = oh && strstr(oh, "\r\n") != NULL;
        if (ol && BIO_write(out, oh, (int)ol) != (int)ol)
            goto out;
        if (ol && oh[ol - 1] != '\n' && BIO_puts(out, crlf ? "\r\n" : "\n") <= 0)
            goto out;
        if ((rv = env_write_mime_headers(out, msg->auth, crlf)) != ENV_OK)
            goto out;
    } else if (fmt == ENV_FORMAT_PEM) {
        if (BIO_puts(out, "-----BEGIN CMS-----\n") <= 0)
            goto out;
    }
    if (fmt != ENV_FORMAT_DER) {
        rv = ENV_ERR_NOMEM;
        if (!(b64 = env_b64_new(crlf, fmt == ENV_FORMAT_PEM)))
            goto out;
        sink = BIO_push(b64, out);
    }
    rv = ENV_ERR_IO;
#define PUT_HDR(cons, len, tag, cls)                                                                         \
    do {                                                                                                     \
        p = hdr;                                                                                             \
        ASN1_put_object(&p, cons, (int)(len), tag, cls);                                                     \
        if ((rv = bio_write_all(sink, hdr, (size_t)(p - hdr))) != ENV_OK)                                    \
            goto out;                                                                                        \
    } while (0)
#define PUT_PART(pt)                                                                                         \
    do {                                                                                                     \
        if ((pt).len > 0 && (rv = bio_write_all(sink, (pt).der, (size_t)(pt).len)) != ENV_OK)                \
            goto out;                                                                                        \
    } while (0)
    PUT_HDR(1, ct.len + c0_tlv, V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL);
    PUT_PART(ct);
    PUT_HDR(1, ed_tlv, 0, V_ASN1_CONTEXT_SPECIFIC);
    PUT_HDR(1, ed_len, V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL);
    PUT_PART(ver);
    PUT_PART(orig);
    PUT_HDR(1, ris, V_ASN1_SET, V_ASN1_UNIVERSAL);
    for (size_t i = 0; i < msg->nri; i++)
        if ((rv = bio_write_all(sink, msg->ri_der[i], msg->ri_len[i])) != ENV_OK)
            goto out;
    PUT_HDR(1, eci_len, V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL);
    PUT_PART(inner);
    PUT_PART(calg);
    /* The encrypted content, byte for byte (BER chunks joined into one
     * primitive [0], see ec_count). */
    rv = ENV_ERR_NOMEM;
    if (!(buf = malloc(IO_CHUNK)))
        goto out;
    if (ec_total >= 0) {
        struct ec_copy cp = {sink, buf};
        off_t end;
        PUT_HDR(0, ec_total, 0, V_ASN1_CONTEXT_SPECIFIC);
        if ((rv = walk_octets(msg, &ect, msg->ec_end, 0, ec_copy_chunk, &cp, &end)) != ENV_OK)
            goto out;
    } else {
        for (off_t o = msg->ec_off; o < msg->ec_end;) {
            size_t k = msg->ec_end - o > (off_t)IO_CHUNK ? IO_CHUNK : (size_t)(msg->ec_end - o);
            if ((rv = read_at(msg, o, buf, k)) != ENV_OK || (rv = bio_write_all(sink, buf, k)) != ENV_OK)
                goto out;
            o += (off_t)k;
        }
    }
    PUT_PART(a1);
    PUT_PART(mac);
    PUT_PART(a2);
#undef PUT_HDR
#undef PUT_PART
    rv = ENV_ERR_IO;
    if (BIO_flush(sink) <= 0)
        goto out;
    if (fmt == ENV_FORMAT_PEM && BIO_puts(out, "-----END CMS-----\n") <= 0)
        goto out;
    if (BIO_flush(out) <= 0)
        goto out;
    rv = ENV_OK;
out:
    if (b64) {
        BIO_pop(b64);
        BIO_free(b64);
    }
    free(buf);
    ASN1_INTEGER_free(vi);
    OPENSSL_free(ct.der);
    OPENSSL_free(ver.der);
    OPENSSL_free(orig.der);
    OPENSSL_free(inner.der);
    OPENSSL_free(calg.der);
    OPENSSL_free(a1.der);
    OPENSSL_free(mac.der);
    OPENSSL_free(a2.der);
    ERR_clear_error();
    return rv;
}
