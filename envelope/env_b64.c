/*
 * env_b64.c: a write-only base64 filter BIO with a choice of line ending.
 * OpenSSL's BIO_f_base64 always ends lines with LF; S/MIME that travels by
 * SMTP wants CRLF throughout when its headers use CRLF, so the body must
 * match. S/MIME in lines of 76 characters, RFC 2045's longest, as Outlook,
 * Apple Mail and most clients write them: an exploder copy re-encoded in
 * shorter lines than its post's is larger than the post (in lines of 64,
 * by 0.5% in Postfix's count, which adds an octet per line), and a post
 * just under the relay's size limit then had every copy refused. PEM in
 * lines of 64: RFC 7468 (section 2) has its generators write exactly
 * that, and a strict reader may take nothing else.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "env_internal.h"

#define GROUP_MIME 57 /* input bytes per S/MIME line of 76 characters */
#define GROUP_PEM 48  /* input bytes per PEM line of 64 */
#define LINE 76       /* the longest line: 4 * GROUP_MIME / 3 */
#define LINES_PER_WRITE 64

typedef struct b64state {
    unsigned char in[GROUP_MIME];
    size_t n, group; /* group: input bytes per line, GROUP_MIME or GROUP_PEM */
    bool crlf;
    unsigned char out[LINES_PER_WRITE * (LINE + 2)];
    size_t outn;
} b64state;

static BIO_METHOD *b64_method;
static CRYPTO_ONCE b64_once = CRYPTO_ONCE_STATIC_INIT;

static int flush_out(BIO *b, b64state *s)
{
    size_t done = 0;
    BIO *next = BIO_next(b);
    if (!next)
        return 0;
    while (done < s->outn) {
        int w = BIO_write(next, s->out + done, (int)(s->outn - done));
        if (w <= 0)
            return 0;
        done += (size_t)w;
    }
    s->outn = 0;
    return 1;
}

/* Encodes n (<= s->group) bytes as one line into the output buffer. */
static int encode_line(BIO *b, b64state *s, const unsigned char *in, size_t n)
{
    if (s->outn + LINE + 2 > sizeof(s->out) && !flush_out(b, s))
        return 0;
    s->outn += (size_t)EVP_EncodeBlock(s->out + s->outn, in, (int)n);
    if (s->crlf)
        s->out[s->outn++] = '\r';
    s->out[s->outn++] = '\n';
    return 1;
}

static int b64_write(BIO *b, const char *data, int len)
{
    b64state *s = BIO_get_data(b);
    const unsigned char *p = (const unsigned char *)data;
    size_t n = len > 0 ? (size_t)len : 0;

    if (!s || len <= 0)
        return len == 0 ? 0 : -1;
    if (s->n) { /* complete a pending group first */
        size_t k = s->group - s->n < n ? s->group - s->n : n;
        memcpy(s->in + s->n, p, k);
        s->n += k;
        p += k;
        n -= k;
        if (s->n == s->group) {
            if (!encode_line(b, s, s->in, s->group))
                return -1;
            s->n = 0;
        }
    }
    while (n >= s->group) {
        if (!encode_line(b, s, p, s->group))
            return -1;
        p += s->group;
        n -= s->group;
    }
    if (n) {
        memcpy(s->in, p, n);
        s->n = n;
    }
    return len;
}

static long b64_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    b64state *s = BIO_get_data(b);
    BIO *next = BIO_next(b);

    if (cmd == BIO_CTRL_FLUSH) {
        /* The final, padded line; a flush means "end of data". */
        if (s->n) {
            if (!encode_line(b, s, s->in, s->n))
                return 0;
            s->n = 0;
        }
        if (!flush_out(b, s))
            return 0;
        return next ? BIO_ctrl(next, cmd, num, ptr) : 1;
    }
    if (cmd == BIO_CTRL_WPENDING)
        return (long)(s->n + s->outn) + (next ? BIO_ctrl(next, cmd, num, ptr) : 0);
    return next ? BIO_ctrl(next, cmd, num, ptr) : 0;
}

static int b64_create(BIO *b)
{
    b64state *s = calloc(1, sizeof(*s));
    if (!s)
        return 0;
    BIO_set_data(b, s);
    BIO_set_init(b, 1);
    return 1;
}

static int b64_destroy(BIO *b)
{
    b64state *s = BIO_get_data(b);
    if (s) {
        OPENSSL_cleanse(s, sizeof(*s)); /* held ciphertext only, but cheap */
        free(s);
    }
    BIO_set_data(b, NULL);
    return 1;
}

static void b64_init_method(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_FILTER, "groupsrv base64 (CRLF/LF)");
    if (!m)
        return;
    if (!BIO_meth_set_write(m, b64_write) || !BIO_meth_set_ctrl(m, b64_ctrl) ||
        !BIO_meth_set_create(m, b64_create) || !BIO_meth_set_destroy(m, b64_destroy)) {
        BIO_meth_free(m);
        return;
    }
    b64_method = m;
}

BIO *env_b64_new(bool crlf, bool pem)
{
    BIO *b;
    b64state *s;

    if (!CRYPTO_THREAD_run_once(&b64_once, b64_init_method) || !b64_method)
        return NULL;
    if (!(b = BIO_new(b64_method)))
        return NULL;
    s = BIO_get_data(b);
    s->crlf = crlf;
    s->group = pem ? GROUP_PEM : GROUP_MIME;
    return b;
}

env_err env_write_mime_headers(BIO *out, bool auth, bool crlf)
{
    const char *eol = crlf ? "\r\n" : "\n";
    /* RFC 8551 sec 3.2.2: authEnveloped-data names AuthEnvelopedData. */
    if (BIO_printf(out,
                   "MIME-Version: 1.0%s"
                   "Content-Disposition: attachment; filename=\"smime.p7m\"%s"
                   "Content-Type: application/pkcs7-mime; smime-type=%s; name=\"smime.p7m\"%s"
                   "Content-Transfer-Encoding: base64%s%s",
                   eol, eol, auth ? "authEnveloped-data" : "enveloped-data", eol, eol, eol) <= 0)
        return ENV_ERR_IO;
    return ENV_OK;
}
