/*
 * envtool: test-only command-line driver of the envelope library, for the
 * shell interop tests (and other helpers' tests). Not installed.
 *
 *   envtool encrypt   --cert F [--cert F ...] [--cipher gcm|cbc|gcm128|cbc128]
 *                     [--kt oaep|oaep256] [--format smime|der|pem] [--mime] [--in F] [--out F|-]
 *   envtool decrypt   [--cert F --key F | --cek-file F | --kek-file F --kek-id HEX]
 *                     [--in F] [--out F|-]          (--out: temp file, renamed only on success)
 *   envtool info      [--in F]                      cipher, recipient count, outer headers
 *   envtool extract-ri (--cert F | --index N | --kek-id HEX) [--in F] --out F   (DER RecipientInfo)
 *   envtool ri-info   --ri F [--cert F]             type, algorithm, match, key lengths, KARI inputs
 *   envtool ri-decrypt --ri F [--cert F] (--key F | --kek-file F) --out F   (content key, 0600)
 *   envtool replace-ri --ri F [--ri F ...] [--add] [--format smime|der|pem] [--headers F] [--in F] --out F
 *   envtool ktri      --cert F [--kt oaep|oaep256] --enc-key F --out F
 *   envtool kekri     --kek-id HEX [--bits 128|192|256] [--pad] --wrapped F --out F
 *   envtool aes-wrap  --kek-file F [--pad] --in F --out F   (EVP AES key wrap, to make test input)
 *
 * Exit status: 0 on success, 2 on usage errors, 10 + env_err on library
 * errors (so tests can tell ENV_ERR_AUTH from ENV_ERR_TRUNCATED). With
 * ENVTOOL_RSS=1 the peak resident set (VmHWM, kB) is printed to stderr.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "envelope.h"
#include "util.h"

#define MAX_CERTS 64
#define MAX_RIS 64
#define SMALL_FILE (1024 * 1024)

static const char *const err_names[] = {
    "ENV_OK", "ENV_ERR_NOMEM", "ENV_ERR_ARGS", "ENV_ERR_IO", "ENV_ERR_TRUNCATED",
    "ENV_ERR_NOT_CMS", "ENV_ERR_MIME", "ENV_ERR_CONTENT_TYPE", "ENV_ERR_NO_RECIPIENT",
    "ENV_ERR_UNSUPPORTED", "ENV_ERR_AUTH", "ENV_ERR_KEY", "ENV_ERR_CERT", "ENV_ERR_TOO_LARGE",
    "ENV_ERR_CRYPTO", "ENV_ERR_ENCODING", "ENV_ERR_BASE64",
};

struct args {
    const char *certs[MAX_CERTS];
    size_t ncerts;
    const char *ris[MAX_RIS];
    size_t nris;
    const char *key, *in, *out, *cek_file, *kek_file, *kek_id, *enc_key, *wrapped, *headers;
    const char *cipher, *kt, *format;
    long index, bits;
    bool mime, add, pad;
};

static int fail(env_err e, const char *what)
{
    fprintf(stderr, "envtool: %s: %s (%s)\n", what, env_strerror(e),
            (size_t)e < sizeof(err_names) / sizeof(err_names[0]) ? err_names[e] : "?");
    return 10 + (int)e;
}

static int usage(const char *msg)
{
    fprintf(stderr, "envtool: %s (see the comment at the top of tests/tools/envtool.c)\n", msg);
    return 2;
}

static void print_rss(void)
{
    FILE *f;
    char line[256];
    if (!getenv("ENVTOOL_RSS") || !(f = fopen("/proc/self/status", "r")))
        return;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            fprintf(stderr, "vmhwm_kb=%ld\n", strtol(line + 6, NULL, 10));
    fclose(f);
}

static X509 *load_cert(const char *path)
{
    BIO *b = BIO_new_file(path, "r");
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    if (!x)
        fprintf(stderr, "envtool: cannot read certificate %s\n", path);
    return x;
}

static EVP_PKEY *load_key(const char *path)
{
    BIO *b = BIO_new_file(path, "r");
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    if (!k)
        fprintf(stderr, "envtool: cannot read key %s\n", path);
    return k;
}

static int read_small(const char *path, unsigned char **buf, size_t *len)
{
    if (util_read_file(path, SMALL_FILE, buf, len) != UTIL_OK) {
        fprintf(stderr, "envtool: cannot read %s\n", path);
        return -1;
    }
    return 0;
}

static int hex_decode(const char *hex, unsigned char *out, size_t cap, size_t *len)
{
    long n = 0;
    unsigned char *b = OPENSSL_hexstr2buf(hex, &n);
    if (!b || n <= 0 || (size_t)n > cap) {
        OPENSSL_free(b);
        return -1;
    }
    memcpy(out, b, (size_t)n);
    *len = (size_t)n;
    OPENSSL_clear_free(b, (size_t)n);
    return 0;
}

static BIO *open_in(const char *path)
{
    BIO *b = path && strcmp(path, "-") != 0 ? BIO_new_file(path, "rb") : BIO_new_fp(stdin, BIO_NOCLOSE);
    if (!b)
        fprintf(stderr, "envtool: cannot open %s\n", path);
    return b;
}

/* Output: "-" or none = stdout; else a temp file renamed into place only by
 * out_commit (so a failed run leaves no partial file). */
typedef struct outf {
    util_atomic_file *af;
    BIO *bio;
} outf;

static int out_open(const char *path, mode_t mode, outf *o)
{
    memset(o, 0, sizeof(*o));
    if (!path || strcmp(path, "-") == 0) {
        o->bio = BIO_new_fp(stdout, BIO_NOCLOSE);
        return o->bio ? 0 : -1;
    }
    if (util_atomic_open(path, mode, &o->af) != UTIL_OK) {
        fprintf(stderr, "envtool: cannot create %s\n", path);
        return -1;
    }
    o->bio = BIO_new_fp(util_atomic_fp(o->af), BIO_NOCLOSE);
    return o->bio ? 0 : -1;
}

static int out_close(outf *o, bool commit)
{
    int rc = 0;
    if (o->bio && BIO_flush(o->bio) <= 0)
        commit = false, rc = -1;
    BIO_free(o->bio);
    o->bio = NULL;
    if (o->af) {
        if (commit) {
            if (util_atomic_commit(o->af) != UTIL_OK)
                rc = -1;
        } else {
            util_atomic_abort(o->af);
        }
        o->af = NULL;
    }
    return rc;
}

static int write_small(const char *path, const unsigned char *p, size_t n, mode_t mode)
{
    if (util_write_file_atomic(path, p, n, mode) != UTIL_OK) {
        fprintf(stderr, "envtool: cannot write %s\n", path);
        return -1;
    }
    return 0;
}

static env_format parse_format(const char *f)
{
    if (!f || strcmp(f, "smime") == 0)
        return ENV_FORMAT_SMIME;
    if (strcmp(f, "der") == 0)
        return ENV_FORMAT_DER;
    if (strcmp(f, "pem") == 0)
        return ENV_FORMAT_PEM;
    return (env_format)-1;
}

static env_kt_alg parse_kt(const char *k)
{
    if (!k || strcmp(k, "oaep256") == 0)
        return ENV_KT_RSA_OAEP_SHA256;
    if (strcmp(k, "oaep") == 0)
        return ENV_KT_RSA_OAEP_SHA1;
    if (strcmp(k, "pkcs1v15") == 0)
        return ENV_KT_RSA_PKCS1V15;
    return 0;
}

static int cmd_encrypt(struct args *a)
{
    X509 *certs[MAX_CERTS] = {0};
    env_encrypt_opts o = {0};
    BIO *in = NULL;
    outf out = {0};
    env_err e;
    int rc = 1;

    if (a->ncerts == 0)
        return usage("encrypt needs --cert");
    for (size_t i = 0; i < a->ncerts; i++)
        if (!(certs[i] = load_cert(a->certs[i])))
            goto done;
    if (!a->cipher || strcmp(a->cipher, "gcm") == 0)
        o.cipher = ENV_CIPHER_AES256_GCM;
    else if (strcmp(a->cipher, "cbc") == 0)
        o.cipher = ENV_CIPHER_AES256_CBC;
    else if (strcmp(a->cipher, "gcm128") == 0)
        o.cipher = ENV_CIPHER_AES128_GCM;
    else if (strcmp(a->cipher, "cbc128") == 0)
        o.cipher = ENV_CIPHER_AES128_CBC;
    else {
        rc = usage("bad --cipher");
        goto done;
    }
    o.kt = parse_kt(a->kt);
    o.out_format = parse_format(a->format);
    o.input_is_mime = a->mime;
    if (!o.kt || (int)o.out_format < 0) {
        rc = usage("bad --kt or --format");
        goto done;
    }
    if (!(in = open_in(a->in)) || out_open(a->out, 0644, &out) != 0)
        goto done;
    e = env_encrypt(&o, certs, a->ncerts, in, out.bio);
    if (out_close(&out, e == ENV_OK) != 0 && e == ENV_OK)
        e = ENV_ERR_IO;
    rc = e == ENV_OK ? 0 : fail(e, "encrypt");
done:
    out_close(&out, false);
    BIO_free(in);
    for (size_t i = 0; i < a->ncerts; i++)
        X509_free(certs[i]);
    return rc;
}

static int read_msg(const char *path, env_message **msg)
{
    BIO *in = open_in(path);
    env_err e;
    if (!in)
        return 1;
    e = env_message_read(in, ENV_FORMAT_AUTO, 0, msg);
    BIO_free(in);
    return e == ENV_OK ? 0 : fail(e, "read");
}

static int cmd_decrypt(struct args *a)
{
    env_message *msg = NULL;
    X509 *cert = NULL;
    EVP_PKEY *pkey = NULL;
    unsigned char *keybuf = NULL, cek[64], kid[256];
    size_t keylen = 0, ceklen = 0, kidlen = 0, idx;
    outf out = {0};
    env_err e = ENV_ERR_ARGS;
    int rc;

    if ((rc = read_msg(a->in, &msg)) != 0)
        goto done;
    rc = 1;
    if (a->cek_file) {
        if (read_small(a->cek_file, &keybuf, &keylen) != 0)
            goto done;
        if (keylen > sizeof(cek))
            goto done;
        memcpy(cek, keybuf, keylen);
        ceklen = keylen;
    } else if (a->kek_file) {
        unsigned char *der = NULL;
        size_t derlen = 0;
        env_recipient *ri = NULL;
        if (!a->kek_id || hex_decode(a->kek_id, kid, sizeof(kid), &kidlen) != 0) {
            rc = usage("--kek-file needs --kek-id HEX");
            goto done;
        }
        if (read_small(a->kek_file, &keybuf, &keylen) != 0)
            goto done;
        if ((e = env_message_find_kekri(msg, kid, kidlen, &idx)) != ENV_OK ||
            (e = env_message_recipient_der(msg, idx, &der, &derlen)) != ENV_OK ||
            (e = env_recipient_parse(der, derlen, &ri)) != ENV_OK ||
            (e = env_recipient_decrypt_kekri(ri, keybuf, keylen, cek, sizeof(cek), &ceklen)) != ENV_OK) {
            free(der);
            env_recipient_free(ri);
            rc = fail(e, "kekri");
            goto done;
        }
        free(der);
        env_recipient_free(ri);
    } else if (a->ncerts == 1 && a->key) {
        if (!(cert = load_cert(a->certs[0])) || !(pkey = load_key(a->key)))
            goto done;
    } else {
        rc = usage("decrypt needs --cert and --key, --cek-file, or --kek-file");
        goto done;
    }
    if (out_open(a->out, 0600, &out) != 0)
        goto done;
    if (pkey)
        e = env_message_decrypt_with_pkey(msg, cert, pkey, out.bio);
    else
        e = env_message_decrypt(msg, cek, ceklen, out.bio);
    /* Plaintext is committed (renamed into place) only on ENV_OK. */
    if (out_close(&out, e == ENV_OK) != 0 && e == ENV_OK)
        e = ENV_ERR_IO;
    rc = e == ENV_OK ? 0 : fail(e, "decrypt");
done:
    out_close(&out, false);
    OPENSSL_cleanse(cek, sizeof(cek));
    if (keybuf)
        util_secret_free(keybuf, keylen);
    env_message_free(msg);
    X509_free(cert);
    EVP_PKEY_free(pkey);
    return rc;
}

static const char *kt_name(env_kt_alg k)
{
    switch (k) {
    case ENV_KT_RSA_OAEP_SHA1: return "rsa-oaep";
    case ENV_KT_RSA_OAEP_SHA256: return "rsa-oaep-256";
    case ENV_KT_RSA_PKCS1V15: return "rsa-pkcs1v15";
    case ENV_KT_ECDH: return "ecdh";
    }
    return "?";
}

static int cmd_info(struct args *a)
{
    env_message *msg = NULL;
    int rc = read_msg(a->in, &msg);
    if (rc)
        return rc;
    printf("cipher=%s\nrecipients=%zu\n", env_message_content_alg(msg), env_message_recipient_count(msg));
    for (size_t i = 0; i < env_message_recipient_count(msg); i++) {
        unsigned char *der = NULL;
        size_t len = 0;
        env_recipient *ri = NULL;
        env_kt_alg alg = 0;
        if (env_message_recipient_der(msg, i, &der, &len) == ENV_OK && env_recipient_parse(der, len, &ri) == ENV_OK) {
            (void)env_recipient_kt_alg(ri, &alg);
            printf("ri%zu.type=%d\nri%zu.alg=%s\n", i, (int)env_recipient_type(ri), i,
                   env_recipient_type(ri) == ENV_RI_KEKRI ? "kek" : kt_name(alg));
        }
        env_recipient_free(ri);
        free(der);
    }
    printf("outer_headers_begin\n%souter_headers_end\n", env_message_outer_headers(msg));
    env_message_free(msg);
    return 0;
}

static int cmd_extract_ri(struct args *a)
{
    env_message *msg = NULL;
    X509 *cert = NULL;
    unsigned char *der = NULL, kid[256];
    size_t len = 0, idx = 0, kidlen = 0;
    env_err e = ENV_OK;
    int rc;

    if (!a->out)
        return usage("extract-ri needs --out");
    if ((rc = read_msg(a->in, &msg)) != 0)
        return rc;
    rc = 1;
    if (a->ncerts == 1) {
        if (!(cert = load_cert(a->certs[0])))
            goto done;
        e = env_message_find_recipient(msg, cert, &idx);
    } else if (a->kek_id) {
        if (hex_decode(a->kek_id, kid, sizeof(kid), &kidlen) != 0)
            goto done;
        e = env_message_find_kekri(msg, kid, kidlen, &idx);
    } else if (a->index >= 0) {
        idx = (size_t)a->index;
    } else {
        rc = usage("extract-ri needs --cert, --kek-id or --index");
        goto done;
    }
    if (e == ENV_OK)
        e = env_message_recipient_der(msg, idx, &der, &len);
    if (e != ENV_OK) {
        rc = fail(e, "extract-ri");
        goto done;
    }
    rc = write_small(a->out, der, len, 0644) == 0 ? 0 : 1;
done:
    free(der);
    X509_free(cert);
    env_message_free(msg);
    return rc;
}

static int cmd_ri_info(struct args *a)
{
    unsigned char *der = NULL;
    size_t len = 0;
    env_recipient *ri = NULL;
    X509 *cert = NULL;
    env_kt_alg alg = 0;
    env_err e;
    int rc = 1;

    if (a->nris != 1)
        return usage("ri-info needs one --ri");
    if (read_small(a->ris[0], &der, &len) != 0)
        return 1;
    if ((e = env_recipient_parse(der, len, &ri)) != ENV_OK) {
        rc = fail(e, "parse");
        goto done;
    }
    if (a->ncerts == 1 && !(cert = load_cert(a->certs[0])))
        goto done;
    printf("type=%s\n", (const char *[]){"?", "ktri", "kari", "kekri", "other"}[env_recipient_type(ri)]);
    e = env_recipient_kt_alg(ri, &alg);
    printf("alg=%s\n", e == ENV_OK ? kt_name(alg) : env_strerror(e));
    if (cert)
        printf("matches=%d\n", env_recipient_matches_cert(ri, cert) ? 1 : 0);
    {
        const unsigned char *k;
        size_t kl;
        if (env_recipient_encrypted_key(ri, cert, &k, &kl) == ENV_OK)
            printf("encrypted_key_len=%zu\n", kl);
        if (env_recipient_kek_id(ri, &k, &kl) == ENV_OK) {
            char hex[513];
            util_hex(k, kl > 256 ? 256 : kl, hex);
            printf("kek_id=%s\n", hex);
        }
    }
    if (env_recipient_type(ri) == ENV_RI_KARI) {
        env_kari_params kp;
        if ((e = env_recipient_kari_params(ri, cert, &kp)) == ENV_OK) {
            printf("kari.kdf=%s\nkari.kek_len=%zu\nkari.peer_point_len=%zu\nkari.shared_info_len=%zu\n"
                   "kari.wrapped_key_len=%zu\n",
                   kp.kdf_sha256 ? "sha256" : "sha1", kp.kek_len, kp.peer_point_len, kp.shared_info_len,
                   kp.wrapped_key_len);
            env_kari_params_clear(&kp);
        } else {
            printf("kari=%s\n", env_strerror(e));
        }
    }
    rc = 0;
done:
    env_recipient_free(ri);
    X509_free(cert);
    free(der);
    return rc;
}

static int cmd_ri_decrypt(struct args *a)
{
    unsigned char *der = NULL, *kek = NULL, cek[64];
    size_t len = 0, keklen = 0, ceklen = 0;
    env_recipient *ri = NULL;
    X509 *cert = NULL;
    EVP_PKEY *pkey = NULL;
    env_err e;
    int rc = 1;

    if (a->nris != 1 || !a->out || (!a->key && !a->kek_file))
        return usage("ri-decrypt needs --ri, --out and --key or --kek-file");
    if (read_small(a->ris[0], &der, &len) != 0)
        return 1;
    if ((e = env_recipient_parse(der, len, &ri)) != ENV_OK) {
        rc = fail(e, "parse");
        goto done;
    }
    if (a->ncerts == 1 && !(cert = load_cert(a->certs[0])))
        goto done;
    if (a->key) {
        if (!(pkey = load_key(a->key)))
            goto done;
        e = env_recipient_decrypt_with_pkey(ri, cert, pkey, cek, sizeof(cek), &ceklen);
    } else {
        if (read_small(a->kek_file, &kek, &keklen) != 0)
            goto done;
        e = env_recipient_decrypt_kekri(ri, kek, keklen, cek, sizeof(cek), &ceklen);
    }
    if (e != ENV_OK) {
        rc = fail(e, "ri-decrypt");
        goto done;
    }
    rc = write_small(a->out, cek, ceklen, 0600) == 0 ? 0 : 1;
done:
    OPENSSL_cleanse(cek, sizeof(cek));
    if (kek)
        util_secret_free(kek, keklen);
    env_recipient_free(ri);
    X509_free(cert);
    EVP_PKEY_free(pkey);
    free(der);
    return rc;
}

static int cmd_replace_ri(struct args *a)
{
    env_message *msg = NULL;
    unsigned char *ders[2 * MAX_RIS] = {0};
    size_t lens[2 * MAX_RIS] = {0}, n = 0;
    unsigned char *hdrs = NULL;
    size_t hlen = 0;
    outf out = {0};
    env_format fmt = parse_format(a->format);
    env_err e;
    int rc;

    if (a->nris == 0 || !a->out || (int)fmt < 0)
        return usage("replace-ri needs --ri and --out");
    if ((rc = read_msg(a->in, &msg)) != 0)
        return rc;
    rc = 1;
    if (a->add) {
        for (size_t i = 0; i < env_message_recipient_count(msg) && n < MAX_RIS; i++, n++)
            if (env_message_recipient_der(msg, i, &ders[n], &lens[n]) != ENV_OK)
                goto done;
    }
    for (size_t i = 0; i < a->nris; i++, n++)
        if (read_small(a->ris[i], &ders[n], &lens[n]) != 0)
            goto done;
    if ((e = env_message_set_recipients(msg, (const unsigned char *const *)ders, lens, n)) != ENV_OK) {
        rc = fail(e, "set-recipients");
        goto done;
    }
    if (a->headers && read_small(a->headers, &hdrs, &hlen) != 0)
        goto done;
    if (out_open(a->out, 0644, &out) != 0)
        goto done;
    e = env_message_write(msg, fmt, (const char *)hdrs, out.bio);
    if (out_close(&out, e == ENV_OK) != 0 && e == ENV_OK)
        e = ENV_ERR_IO;
    rc = e == ENV_OK ? 0 : fail(e, "write");
done:
    out_close(&out, false);
    for (size_t i = 0; i < n; i++)
        free(ders[i]);
    free(hdrs);
    env_message_free(msg);
    return rc;
}

static int cmd_ktri(struct args *a)
{
    X509 *cert = NULL;
    unsigned char *ek = NULL, *der = NULL;
    size_t eklen = 0, len = 0;
    env_err e;
    int rc = 1;

    if (a->ncerts != 1 || !a->enc_key || !a->out || !parse_kt(a->kt))
        return usage("ktri needs --cert, --enc-key and --out");
    if (!(cert = load_cert(a->certs[0])) || read_small(a->enc_key, &ek, &eklen) != 0)
        goto done;
    if ((e = env_ktri_build(cert, parse_kt(a->kt), ek, eklen, &der, &len)) != ENV_OK) {
        rc = fail(e, "ktri");
        goto done;
    }
    rc = write_small(a->out, der, len, 0644) == 0 ? 0 : 1;
done:
    free(der);
    free(ek);
    X509_free(cert);
    return rc;
}

static int cmd_kekri(struct args *a)
{
    unsigned char *w = NULL, *der = NULL, kid[256];
    size_t wlen = 0, len = 0, kidlen = 0;
    env_err e;
    int rc = 1;

    if (!a->kek_id || !a->wrapped || !a->out || hex_decode(a->kek_id, kid, sizeof(kid), &kidlen) != 0)
        return usage("kekri needs --kek-id HEX, --wrapped and --out");
    if (read_small(a->wrapped, &w, &wlen) != 0)
        return 1;
    if ((e = env_kekri_build(kid, kidlen, a->bits > 0 ? (unsigned)a->bits : 256, a->pad, w, wlen, &der, &len)) !=
        ENV_OK) {
        rc = fail(e, "kekri");
        goto done;
    }
    rc = write_small(a->out, der, len, 0644) == 0 ? 0 : 1;
done:
    free(der);
    free(w);
    return rc;
}

/* AES key wrap with EVP, to produce test input for kekri. */
static int cmd_aes_wrap(struct args *a)
{
    unsigned char *kek = NULL, *key = NULL, out[1024];
    size_t keklen = 0, keylen = 0;
    const EVP_CIPHER *c;
    EVP_CIPHER_CTX *ctx = NULL;
    int n = 0, rc = 1;

    if (!a->kek_file || !a->in || !a->out)
        return usage("aes-wrap needs --kek-file, --in and --out");
    if (read_small(a->kek_file, &kek, &keklen) != 0 || read_small(a->in, &key, &keylen) != 0)
        goto done;
    switch (keklen) {
    case 16: c = a->pad ? EVP_aes_128_wrap_pad() : EVP_aes_128_wrap(); break;
    case 24: c = a->pad ? EVP_aes_192_wrap_pad() : EVP_aes_192_wrap(); break;
    case 32: c = a->pad ? EVP_aes_256_wrap_pad() : EVP_aes_256_wrap(); break;
    default: goto done;
    }
    if (keylen + 16 > sizeof(out) || !(ctx = EVP_CIPHER_CTX_new()))
        goto done;
    EVP_CIPHER_CTX_set_flags(ctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
    if (!EVP_EncryptInit_ex(ctx, c, NULL, kek, NULL) || EVP_EncryptUpdate(ctx, out, &n, key, (int)keylen) <= 0)
        goto done;
    rc = write_small(a->out, out, (size_t)n, 0644) == 0 ? 0 : 1;
done:
    EVP_CIPHER_CTX_free(ctx);
    if (kek)
        util_secret_free(kek, keklen);
    if (key)
        util_secret_free(key, keylen);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"cert", required_argument, NULL, 'c'},   {"key", required_argument, NULL, 'k'},
        {"in", required_argument, NULL, 'i'},     {"out", required_argument, NULL, 'o'},
        {"cipher", required_argument, NULL, 'C'}, {"kt", required_argument, NULL, 'T'},
        {"format", required_argument, NULL, 'f'}, {"mime", no_argument, NULL, 'm'},
        {"ri", required_argument, NULL, 'r'},     {"add", no_argument, NULL, 'a'},
        {"index", required_argument, NULL, 'n'},  {"cek-file", required_argument, NULL, 'K'},
        {"kek-file", required_argument, NULL, 'E'}, {"kek-id", required_argument, NULL, 'I'},
        {"enc-key", required_argument, NULL, 'e'}, {"wrapped", required_argument, NULL, 'w'},
        {"bits", required_argument, NULL, 'b'},   {"pad", no_argument, NULL, 'p'},
        {"headers", required_argument, NULL, 'H'}, {NULL, 0, NULL, 0},
    };
    struct args a;
    const char *cmd;
    int c, rc;

    memset(&a, 0, sizeof(a));
    a.index = -1;
    if (argc < 2)
        return usage("no command");
    cmd = argv[1];
    optind = 2;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            if (a.ncerts == MAX_CERTS)
                return usage("too many --cert");
            a.certs[a.ncerts++] = optarg;
            break;
        case 'r':
            if (a.nris == MAX_RIS)
                return usage("too many --ri");
            a.ris[a.nris++] = optarg;
            break;
        case 'k': a.key = optarg; break;
        case 'i': a.in = optarg; break;
        case 'o': a.out = optarg; break;
        case 'C': a.cipher = optarg; break;
        case 'T': a.kt = optarg; break;
        case 'f': a.format = optarg; break;
        case 'm': a.mime = true; break;
        case 'a': a.add = true; break;
        case 'K': a.cek_file = optarg; break;
        case 'E': a.kek_file = optarg; break;
        case 'I': a.kek_id = optarg; break;
        case 'e': a.enc_key = optarg; break;
        case 'w': a.wrapped = optarg; break;
        case 'p': a.pad = true; break;
        case 'H': a.headers = optarg; break;
        case 'n':
            if (util_parse_int(optarg, 0, MAX_RIS * 1000, &a.index) != UTIL_OK)
                return usage("bad --index");
            break;
        case 'b':
            if (util_parse_int(optarg, 128, 256, &a.bits) != UTIL_OK)
                return usage("bad --bits");
            break;
        default: return usage("bad option");
        }
    }
    if (strcmp(cmd, "encrypt") == 0)
        rc = cmd_encrypt(&a);
    else if (strcmp(cmd, "decrypt") == 0)
        rc = cmd_decrypt(&a);
    else if (strcmp(cmd, "info") == 0)
        rc = cmd_info(&a);
    else if (strcmp(cmd, "extract-ri") == 0)
        rc = cmd_extract_ri(&a);
    else if (strcmp(cmd, "ri-info") == 0)
        rc = cmd_ri_info(&a);
    else if (strcmp(cmd, "ri-decrypt") == 0)
        rc = cmd_ri_decrypt(&a);
    else if (strcmp(cmd, "replace-ri") == 0)
        rc = cmd_replace_ri(&a);
    else if (strcmp(cmd, "ktri") == 0)
        rc = cmd_ktri(&a);
    else if (strcmp(cmd, "kekri") == 0)
        rc = cmd_kekri(&a);
    else if (strcmp(cmd, "aes-wrap") == 0)
        rc = cmd_aes_wrap(&a);
    else
        rc = usage("unknown command");
    print_rss();
    return rc;
}
