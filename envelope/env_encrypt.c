/*
 * env_encrypt.c: encryption to group certificates with OpenSSL's public CMS
 * API in streaming mode (BIO_new_CMS), so a message of any size is
 * encrypted in bounded memory: AuthEnvelopedData with AES-GCM (the default)
 * or EnvelopedData with AES-CBC; RSA-OAEP key transport or ECDH key
 * agreement (RFC 5753) chosen by the certificate's key type.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/cms.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

#include "env_internal.h"
#include "mailfold.h"

#define ENC_CHUNK (64u * 1024)
#define MIME_HDR_CAP (1024u * 1024)

static env_err write_all(BIO *b, const void *p, size_t n)
{
    const unsigned char *c = p;
    while (n) {
        int w = BIO_write(b, c, n > INT_MAX ? INT_MAX : (int)n);
        if (w <= 0)
            return ENV_ERR_IO;
        c += w;
        n -= (size_t)w;
    }
    return ENV_OK;
}

/* BIO_read that tells the end of the input from a read error: 0 at EOF
 * (or a retryable "no data now"), -1 on an error. Without this a failing
 * input would be encrypted, truncated, as if it were the whole message. */
static int read_in(BIO *in, void *buf, int len)
{
    int r = BIO_read(in, buf, len);
    if (r > 0)
        return r;
    return r < 0 && !BIO_should_retry(in) ? -1 : 0;
}

/* Plaintext writer; for MIME input, bare LF becomes CRLF (RFC 8551 sec 3.1.1
 * canonical form), which is what every S/MIME reader expects inside. */
typedef struct ptw {
    BIO *b;
    bool crlf, prev_cr;
    unsigned char *tmp; /* 2 * ENC_CHUNK */
} ptw;

static env_err ptw_write(ptw *w, const unsigned char *p, size_t n)
{
    env_err rv;
    if (!w->crlf)
        return write_all(w->b, p, n);
    while (n) {
        size_t k = n > ENC_CHUNK ? ENC_CHUNK : n, o = 0;
        for (size_t i = 0; i < k; i++) {
            if (p[i] == '\n' && !w->prev_cr)
                w->tmp[o++] = '\r';
            w->tmp[o++] = p[i];
            w->prev_cr = p[i] == '\r';
        }
        if ((rv = write_all(w->b, w->tmp, o)) != ENV_OK)
            return rv;
        p += k;
        n -= k;
    }
    return ENV_OK;
}

static const char *const routing_headers[] = {"From", "To", "Cc", "Date", "Message-ID", "Subject",
                                              "Reply-To", "In-Reply-To", "References"};
/* Blind copies: RFC 5322 3.6.3 keeps their addresses from the other
 * recipients, and every member of the list decrypts the inner copy. */
static const char *const blind_headers[] = {"Bcc", "Resent-Bcc"};

/* Whether the header field starting at line is one of names[0..n). With
 * obs, the name may be followed by white space before its colon (RFC 5322
 * 4.5's obsolete syntax, "Bcc :", which readers take): such a Bcc is a
 * blind copy all the same, never put inside for every member to read.
 * Routing fields are copied outside only as "Name:" (a "To :" stays
 * inside): obsolete syntax is read, never written (RFC 5322 4). */
static bool header_is(const char *line, size_t len, const char *const *names, size_t n, bool obs)
{
    for (size_t i = 0; i < n; i++) {
        size_t k = strlen(names[i]);
        if (obs ? mail_field_is(line, len, names[i])
                : len > k && strncasecmp(line, names[i], k) == 0 && line[k] == ':')
            return true;
    }
    return false;
}

static bool is_routing(const char *line, size_t len)
{
    return header_is(line, len, routing_headers, sizeof(routing_headers) / sizeof(routing_headers[0]), false);
}

static bool is_blind(const char *line, size_t len)
{
    return header_is(line, len, blind_headers, sizeof(blind_headers) / sizeof(blind_headers[0]), true);
}

/* Reads the RFC 5322 header block of in into *hdr (with what follows it in
 * the same reads: *hdrlen is the header block incl. the blank line, *got
 * all bytes read). */
static env_err read_header_block(BIO *in, unsigned char **buf, size_t *hdrlen, size_t *got)
{
    size_t cap = ENC_CHUNK, n = 0;
    unsigned char *b = malloc(cap);

    *buf = NULL;
    *hdrlen = *got = 0;
    if (!b)
        return ENV_ERR_NOMEM;
    for (;;) {
        int r;
        /* Search for the end of headers in what we have. */
        for (size_t i = 0; i < n; i++) {
            if (b[i] != '\n')
                continue;
            if (i == 0 || (i + 1 < n && b[i + 1] == '\n')) {
                *hdrlen = i == 0 ? 1 : i + 2;
                goto done;
            }
            if (i + 2 < n && b[i + 1] == '\r' && b[i + 2] == '\n') {
                *hdrlen = i + 3;
                goto done;
            }
        }
        if (n == cap) {
            unsigned char *t;
            if (cap >= MIME_HDR_CAP) {
                free(b);
                return ENV_ERR_TOO_LARGE;
            }
            if (!(t = realloc(b, cap * 2))) {
                free(b);
                return ENV_ERR_NOMEM;
            }
            b = t;
            cap *= 2;
        }
        r = read_in(in, b + n, (int)(cap - n));
        if (r < 0) {
            free(b);
            return ENV_ERR_IO;
        }
        if (r == 0) { /* no body: the whole input is headers */
            *hdrlen = n;
            goto done;
        }
        n += (size_t)r;
    }
done:
    *buf = b;
    *got = n;
    return ENV_OK;
}

/* Hands each header field of h[0..len) (with its folded lines) for which
 * is_field says want to emit(sink, ...), up to the blank line; *end gets
 * the blank line's offset (len when there is none). */
static env_err copy_fields(const unsigned char *h, size_t len, bool (*is_field)(const char *, size_t), bool want,
                           env_err (*emit)(void *, const unsigned char *, size_t), void *sink, size_t *end)
{
    size_t i = 0;
    bool keep = false;
    env_err rv;

    while (i < len) {
        size_t e = i;
        while (e < len && h[e] != '\n')
            e++;
        if (e < len)
            e++;
        if (h[i] == '\r' || h[i] == '\n')
            break; /* the blank line */
        if (h[i] != ' ' && h[i] != '\t')
            keep = is_field((const char *)h + i, e - i) == want;
        if (keep && (rv = emit(sink, h + i, e - i)) != ENV_OK)
            return rv;
        i = e;
    }
    *end = i;
    return ENV_OK;
}

static env_err emit_ptw(void *w, const unsigned char *p, size_t n) { return ptw_write(w, p, n); }

/* The outer headers' sink: each line longer than 998 octets folded before
 * white space (mailfold), with eol. */
typedef struct fold_sink {
    BIO *out;
    const char *eol;
} fold_sink;

static env_err emit_bio_folded(void *arg, const unsigned char *p, size_t n)
{
    const fold_sink *fs = arg;
    size_t need = mailfold(NULL, (const char *)p, n, fs->eol);
    char *t;
    env_err rv;

    if (need == n)
        return write_all(fs->out, p, n);
    if (!(t = malloc(need)))
        return ENV_ERR_NOMEM;
    (void)mailfold(t, (const char *)p, n, fs->eol);
    rv = write_all(fs->out, t, need);
    free(t);
    return rv;
}

/* Copies the routing header fields (with folded lines) to out. They go
 * outside the encryption and through SMTP: a line longer than 998 octets
 * (a To: of hundreds of addresses a client did not fold) is folded, as
 * the exploder folds its copies' (a relay that holds SMTP to 1000-octet
 * lines answers 500 and the message is not sent). Inside, the message is
 * as it came. */
static env_err write_routing(BIO *out, const unsigned char *h, size_t len, bool crlf)
{
    fold_sink fs = {out, crlf ? "\r\n" : "\n"};
    size_t end;
    return copy_fields(h, len, is_routing, true, emit_bio_folded, &fs, &end);
}

/* Writes the header block h[0..len) (blank line included) to the
 * encrypted content, without the blind-copy fields and their folded
 * lines. */
static env_err write_inner_headers(ptw *w, const unsigned char *h, size_t len)
{
    size_t end;
    env_err rv = copy_fields(h, len, is_blind, false, emit_ptw, w, &end);
    return rv != ENV_OK ? rv : ptw_write(w, h + end, len - end);
}

static env_err add_recipient(CMS_ContentInfo *cms, X509 *cert, env_kt_alg kt)
{
    EVP_PKEY *pub = X509_get0_pubkey(cert);
    CMS_RecipientInfo *ri;
    EVP_PKEY_CTX *pctx;

    if (!pub)
        return ENV_ERR_CERT;
    if (EVP_PKEY_is_a(pub, "RSA")) {
        const EVP_MD *md;
        if (kt == ENV_KT_RSA_OAEP_SHA1)
            md = EVP_sha1();
        else if (kt == ENV_KT_RSA_OAEP_SHA256)
            md = EVP_sha256();
        else
            return ENV_ERR_ARGS; /* PKCS#1 v1.5 is never produced */
        if (!(ri = CMS_add1_recipient_cert(cms, cert, CMS_KEY_PARAM)))
            return ENV_ERR_CERT;
        if (!(pctx = CMS_RecipientInfo_get0_pkey_ctx(ri)) ||
            EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
            EVP_PKEY_CTX_set_rsa_oaep_md(pctx, md) <= 0 || EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) <= 0)
            return ENV_ERR_CRYPTO;
        return ENV_OK;
    }
    if (EVP_PKEY_is_a(pub, "EC")) {
        /* KARI, dhSinglePass-stdDH-sha256kdf-scheme, AES key wrap sized to
         * the content cipher (OpenSSL picks the wrap). */
        if (!(ri = CMS_add1_recipient_cert(cms, cert, CMS_KEY_PARAM)))
            return ENV_ERR_CERT;
        if (!(pctx = CMS_RecipientInfo_get0_pkey_ctx(ri)) || EVP_PKEY_CTX_set_ecdh_kdf_md(pctx, EVP_sha256()) <= 0)
            return ENV_ERR_CRYPTO;
        return ENV_OK;
    }
    return ENV_ERR_CERT;
}

env_err env_encrypt(const env_encrypt_opts *opts, X509 *const *recips, size_t n, BIO *in, BIO *out)
{
    env_err rv = ENV_ERR_ARGS;
    env_encrypt_opts o;
    const EVP_CIPHER *cipher;
    CMS_ContentInfo *cms = NULL;
    BIO *b64 = NULL, *sink = out, *cmsbio = NULL;
    unsigned char *hdr = NULL, *buf = NULL, *tmp = NULL;
    size_t hdrlen = 0, got = 0;
    bool auth, crlf = false;
    int firstlen = 0;
    ptw w;

    memset(&o, 0, sizeof(o));
    if (opts)
        o = *opts;
    if (!o.cipher)
        o.cipher = ENV_CIPHER_AES256_GCM;
    if (!o.kt)
        o.kt = ENV_KT_RSA_OAEP_SHA256;
    if (!o.out_format)
        o.out_format = ENV_FORMAT_SMIME;
    if (!recips || n == 0 || n > ENV_MAX_RECIPIENTS || !in || !out)
        return ENV_ERR_ARGS;
    switch (o.cipher) {
    case ENV_CIPHER_AES256_GCM: cipher = EVP_aes_256_gcm(); auth = true; break;
    case ENV_CIPHER_AES128_GCM: cipher = EVP_aes_128_gcm(); auth = true; break;
    case ENV_CIPHER_AES256_CBC: cipher = EVP_aes_256_cbc(); auth = false; break;
    case ENV_CIPHER_AES128_CBC: cipher = EVP_aes_128_cbc(); auth = false; break;
    case ENV_CIPHER_AES192_GCM: cipher = EVP_aes_192_gcm(); auth = true; break;
    case ENV_CIPHER_AES192_CBC: cipher = EVP_aes_192_cbc(); auth = false; break;
    default: return ENV_ERR_ARGS;
    }
    if (o.out_format != ENV_FORMAT_SMIME && o.out_format != ENV_FORMAT_DER && o.out_format != ENV_FORMAT_PEM)
        return ENV_ERR_ARGS;
    rv = ENV_ERR_CRYPTO;
    cms = auth ? CMS_AuthEnvelopedData_create(cipher) : CMS_EnvelopedData_create(cipher);
    if (!cms)
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (!recips[i]) {
            rv = ENV_ERR_ARGS;
            goto out;
        }
        if ((rv = add_recipient(cms, recips[i], o.kt)) != ENV_OK)
            goto out;
    }
    rv = ENV_ERR_NOMEM;
    if (!(buf = malloc(ENC_CHUNK)) || !(tmp = malloc(2 * ENC_CHUNK)))
        goto out;
    if (o.input_is_mime && (rv = read_header_block(in, &hdr, &hdrlen, &got)) != ENV_OK)
        goto out;

    rv = ENV_ERR_IO;
    if (o.out_format == ENV_FORMAT_SMIME) {
        /* CRLF in the input's header block: CRLF throughout the output. */
        for (size_t i = 0; hdr && i + 1 < hdrlen && !crlf; i++)
            crlf = hdr[i] == '\r' && hdr[i + 1] == '\n';
        if (hdr && (rv = write_routing(out, hdr, hdrlen, crlf)) != ENV_OK)
            goto out;
        if ((rv = env_write_mime_headers(out, auth, crlf)) != ENV_OK)
            goto out;
    } else if (o.out_format == ENV_FORMAT_PEM && BIO_puts(out, "-----BEGIN CMS-----\n") <= 0) {
        goto out;
    }
    if (o.out_format != ENV_FORMAT_DER) {
        rv = ENV_ERR_NOMEM;
        if (!(b64 = env_b64_new(crlf, o.out_format == ENV_FORMAT_PEM)))
            goto out;
        sink = BIO_push(b64, out);
    }
    /* Streaming: the RecipientInfos and header go out now, the content as
     * we write it, the tag (GCM) on flush. */
    rv = ENV_ERR_CRYPTO;
    if (!hdr && (firstlen = read_in(in, buf, ENC_CHUNK)) < 0) { /* look ahead: any content at all? */
        rv = ENV_ERR_IO;
        goto out;
    }
    if (!hdr && firstlen == 0) {
        /* Empty content: OpenSSL 3.0 cannot stream an empty AES-GCM
         * content (no tag is produced), so encrypt it in one go. */
        BIO *empty = BIO_new(BIO_s_mem());
        if (!empty || !CMS_set_detached(cms, 0) || !CMS_final(cms, empty, NULL, CMS_BINARY) ||
            i2d_CMS_bio(sink, cms) <= 0) {
            BIO_free(empty);
            goto out;
        }
        BIO_free(empty);
        if (BIO_flush(sink) <= 0)
            goto out;
    } else {
        if (!(cmsbio = BIO_new_CMS(sink, cms)))
            goto out;
        w.b = cmsbio;
        w.crlf = o.input_is_mime;
        w.prev_cr = false;
        w.tmp = tmp;
        if (hdr && ((rv = write_inner_headers(&w, hdr, hdrlen)) != ENV_OK ||
                    (rv = ptw_write(&w, hdr + hdrlen, got - hdrlen)) != ENV_OK))
            goto out;
        if (!hdr && (rv = ptw_write(&w, buf, (size_t)firstlen)) != ENV_OK)
            goto out;
        for (;;) {
            int r = read_in(in, buf, ENC_CHUNK);
            if (r < 0) {
                rv = ENV_ERR_IO;
                goto out;
            }
            if (r == 0)
                break;
            if ((rv = ptw_write(&w, buf, (size_t)r)) != ENV_OK)
                goto out;
        }
        rv = ENV_ERR_CRYPTO;
        if (BIO_flush(cmsbio) <= 0)
            goto out;
    }
    rv = ENV_ERR_IO;
    if (b64 && BIO_flush(b64) <= 0)
        goto out;
    if (o.out_format == ENV_FORMAT_PEM && BIO_puts(out, "-----END CMS-----\n") <= 0)
        goto out;
    if (BIO_flush(out) <= 0)
        goto out;
    rv = ENV_OK;
out:
    /* Free the BIOs BIO_new_CMS pushed, down to (not including) sink. */
    while (cmsbio && cmsbio != sink) {
        BIO *next = BIO_pop(cmsbio);
        BIO_free(cmsbio);
        cmsbio = next;
    }
    if (b64) {
        BIO_pop(b64);
        BIO_free(b64);
    }
    /* Plaintext passed through these: wipe before freeing. */
    if (buf)
        OPENSSL_cleanse(buf, ENC_CHUNK);
    if (tmp)
        OPENSSL_cleanse(tmp, 2 * ENC_CHUNK);
    if (hdr)
        OPENSSL_cleanse(hdr, got);
    free(buf);
    free(tmp);
    free(hdr);
    CMS_ContentInfo_free(cms);
    ERR_clear_error();
    return rv;
}
