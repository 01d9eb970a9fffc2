/* Unit tests for envelope/: round trips for every algorithm combination,
 * RecipientInfo parse/build, re-wrap, framing, and every kind of bad input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "envelope.h"

static EVP_PKEY *rsa_key, *rsa_key2, *ec_key;
static X509 *rsa_cert, *rsa_cert2, *ec_cert;

static X509 *make_cert(EVP_PKEY *pk, const char *cn, long serial)
{
    X509 *x = X509_new();
    X509_NAME *name;
    X509V3_CTX ctx;
    X509_EXTENSION *ext;

    assert_non_null(x);
    assert_true(X509_set_version(x, 2));
    assert_true(ASN1_INTEGER_set(X509_get_serialNumber(x), serial));
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), 0));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 3600));
    assert_true(X509_set_pubkey(x, pk));
    name = X509_get_subject_name(x);
    assert_true(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0));
    assert_true(X509_set_issuer_name(x, name));
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_key_identifier, "hash");
    assert_non_null(ext);
    assert_true(X509_add_ext(x, ext, -1));
    X509_EXTENSION_free(ext);
    assert_true(X509_sign(x, pk, EVP_sha256()) > 0);
    return x;
}

static int setup(void **state)
{
    (void)state;
    rsa_key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    rsa_key2 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    ec_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (!rsa_key || !rsa_key2 || !ec_key)
        return -1;
    rsa_cert = make_cert(rsa_key, "group", 1);
    rsa_cert2 = make_cert(rsa_key2, "member", 2);
    ec_cert = make_cert(ec_key, "ecgroup", 3);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    X509_free(rsa_cert);
    X509_free(rsa_cert2);
    X509_free(ec_cert);
    EVP_PKEY_free(rsa_key);
    EVP_PKEY_free(rsa_key2);
    EVP_PKEY_free(ec_key);
    return 0;
}

/* Encrypts content into a fresh memory BIO's bytes (caller frees *out). */
static env_err encrypt_mem(const env_encrypt_opts *o, X509 *cert, const void *content, size_t len,
                           unsigned char **out, size_t *outlen)
{
    BIO *in = BIO_new_mem_buf(content, (int)len), *mem = BIO_new(BIO_s_mem());
    X509 *certs[1] = {cert};
    env_err e = env_encrypt(o, certs, 1, in, mem);
    char *p = NULL;
    long n = BIO_get_mem_data(mem, &p);
    *out = malloc((size_t)n + 1);
    memcpy(*out, p, (size_t)n);
    (*out)[n] = '\0'; /* for strstr on S/MIME and PEM output */
    *outlen = (size_t)n;
    BIO_free(in);
    BIO_free(mem);
    return e;
}

static env_err read_mem(const unsigned char *buf, size_t len, env_message **msg)
{
    BIO *in = BIO_new_mem_buf(buf, (int)len);
    env_err e = env_message_read(in, ENV_FORMAT_AUTO, 0, msg);
    BIO_free(in);
    return e;
}

/* Decrypts with pkey into a buffer; returns the error, *out the bytes. */
static env_err decrypt_mem(const env_message *msg, X509 *cert, EVP_PKEY *pk, char **out, size_t *outlen)
{
    BIO *mem = BIO_new(BIO_s_mem());
    env_err e = env_message_decrypt_with_pkey(msg, cert, pk, mem);
    char *p = NULL;
    long n = BIO_get_mem_data(mem, &p);
    *out = calloc(1, (size_t)n + 1);
    if (n > 0)
        memcpy(*out, p, (size_t)n);
    *outlen = (size_t)n;
    BIO_free(mem);
    return e;
}

static const char content[] = "opaque content: \x00\x01\x02 and more bytes, not a multiple of 16";

static void roundtrip(env_cipher c, env_kt_alg kt, env_format f, X509 *cert, EVP_PKEY *pk)
{
    env_encrypt_opts o = {.cipher = c, .kt = kt, .out_format = f};
    unsigned char *enc = NULL, *der = NULL;
    size_t enclen = 0, outlen = 0, idx = 99, derlen = 0;
    env_message *msg = NULL;
    env_recipient *ri = NULL;
    env_kt_alg alg = 0;
    char *out = NULL;

    assert_int_equal(encrypt_mem(&o, cert, content, sizeof(content), &enc, &enclen), ENV_OK);
    assert_int_equal(read_mem(enc, enclen, &msg), ENV_OK);
    assert_int_equal(env_message_cipher(msg), c);
    {
        /* the name a client sends as content_algorithm gives back the key length */
        size_t kl = 0;
        const char *canon = NULL;
        assert_int_equal(env_content_alg_key_length(env_message_content_alg(msg), &kl, &canon), ENV_OK);
        assert_int_equal(kl, env_message_key_length(msg));
        assert_string_equal(canon, env_message_content_alg(msg));
    }
    assert_int_equal(env_message_recipient_count(msg), 1);
    assert_int_equal(env_message_find_recipient(msg, cert, &idx), ENV_OK);
    assert_int_equal(idx, 0);
    assert_int_equal(env_message_find_recipient(msg, rsa_cert2, &idx), ENV_ERR_NO_RECIPIENT);
    assert_int_equal(env_message_recipient_der(msg, 0, &der, &derlen), ENV_OK);
    assert_int_equal(env_recipient_parse(der, derlen, &ri), ENV_OK);
    assert_true(env_recipient_matches_cert(ri, cert));
    assert_int_equal(env_recipient_kt_alg(ri, &alg), ENV_OK);
    assert_int_equal(alg, kt);
    assert_int_equal(env_recipient_type(ri), kt == ENV_KT_ECDH ? ENV_RI_KARI : ENV_RI_KTRI);
    assert_int_equal(decrypt_mem(msg, cert, pk, &out, &outlen), ENV_OK);
    assert_int_equal(outlen, sizeof(content));
    assert_memory_equal(out, content, sizeof(content));
    if (f == ENV_FORMAT_SMIME)
        assert_non_null(strstr((char *)enc, "Content-Type: application/pkcs7-mime"));
    else if (f == ENV_FORMAT_PEM)
        assert_memory_equal(enc, "-----BEGIN CMS-----", 19);
    else
        assert_int_equal(enc[0], 0x30);
    free(out);
    free(der);
    env_recipient_free(ri);
    env_message_free(msg);
    free(enc);
}

static void test_roundtrip_rsa(void **state)
{
    static const env_cipher ciphers[] = {ENV_CIPHER_AES256_GCM, ENV_CIPHER_AES256_CBC};
    static const env_kt_alg kts[] = {ENV_KT_RSA_OAEP_SHA1, ENV_KT_RSA_OAEP_SHA256};
    static const env_format fmts[] = {ENV_FORMAT_SMIME, ENV_FORMAT_DER, ENV_FORMAT_PEM};
    /* what stock clients send: AES-128/192 in both modes */
    static const env_cipher others[] = {ENV_CIPHER_AES128_CBC, ENV_CIPHER_AES192_CBC, ENV_CIPHER_AES128_GCM,
                                        ENV_CIPHER_AES192_GCM};
    (void)state;
    for (size_t c = 0; c < 2; c++)
        for (size_t k = 0; k < 2; k++)
            for (size_t f = 0; f < 3; f++)
                roundtrip(ciphers[c], kts[k], fmts[f], rsa_cert, rsa_key);
    for (size_t c = 0; c < 4; c++)
        roundtrip(others[c], ENV_KT_RSA_OAEP_SHA1, ENV_FORMAT_DER, rsa_cert, rsa_key);
}

static void test_content_alg_names(void **state)
{
    static const struct {
        const char *in, *canon;
        size_t len;
    } ok[] = {
        {"aes-128-cbc", "aes-128-cbc", 16},      {"AES-128-CBC", "aes-128-cbc", 16},
        {"2.16.840.1.101.3.4.1.2", "aes-128-cbc", 16}, {"2.16.840.1.101.3.4.1.22", "aes-192-cbc", 24},
        {"aes-256-cbc", "aes-256-cbc", 32},      {"id-aes128-GCM", "aes-128-gcm", 16},
        {"2.16.840.1.101.3.4.1.26", "aes-192-gcm", 24}, {"aes-256-gcm", "aes-256-gcm", 32},
        {"des-ede3-cbc", "des-ede3-cbc", 24},    {"1.2.840.113549.1.9.16.3.18", "chacha20-poly1305", 32},
    };
    static const char *const unsupported[] = {"rc2-cbc", "1.2.840.113549.3.2", "aes-128-cbc ", "2.16.840.1.101.3.4.1",
                                              "aes-128-ccm"};
    size_t len = 99;
    const char *canon = "x";
    (void)state;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        assert_int_equal(env_content_alg_key_length(ok[i].in, &len, &canon), ENV_OK);
        assert_int_equal(len, ok[i].len);
        assert_string_equal(canon, ok[i].canon);
    }
    for (size_t i = 0; i < sizeof(unsupported) / sizeof(unsupported[0]); i++) {
        assert_int_equal(env_content_alg_key_length(unsupported[i], &len, &canon), ENV_ERR_UNSUPPORTED);
        assert_int_equal(len, 0);
        assert_null(canon);
    }
    assert_int_equal(env_content_alg_key_length("", &len, NULL), ENV_ERR_ARGS);
    assert_int_equal(env_content_alg_key_length(NULL, &len, NULL), ENV_ERR_ARGS);
    assert_int_equal(env_content_alg_key_length("aes-128-cbc", NULL, NULL), ENV_ERR_ARGS);
    assert_int_equal(
        env_content_alg_key_length("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", &len, NULL),
        ENV_ERR_ARGS);
}

static void test_roundtrip_ecdh(void **state)
{
    (void)state;
    roundtrip(ENV_CIPHER_AES256_GCM, ENV_KT_ECDH, ENV_FORMAT_DER, ec_cert, ec_key);
    roundtrip(ENV_CIPHER_AES256_CBC, ENV_KT_ECDH, ENV_FORMAT_SMIME, ec_cert, ec_key);
}

static void test_kari_params(void **state)
{
    env_encrypt_opts o = {0};
    unsigned char *enc = NULL, *der = NULL;
    size_t enclen, derlen;
    env_message *msg = NULL;
    env_recipient *ri = NULL;
    env_kari_params kp;
    static const unsigned char bits256[] = {0xa2, 0x06, 0x04, 0x04, 0x00, 0x00, 0x01, 0x00};
    (void)state;

    assert_int_equal(encrypt_mem(&o, ec_cert, content, sizeof(content), &enc, &enclen), ENV_OK);
    assert_int_equal(read_mem(enc, enclen, &msg), ENV_OK);
    assert_int_equal(env_message_recipient_der(msg, 0, &der, &derlen), ENV_OK);
    assert_int_equal(env_recipient_parse(der, derlen, &ri), ENV_OK);
    assert_int_equal(env_recipient_kari_params(ri, ec_cert, &kp), ENV_OK);
    assert_int_equal(kp.kdf_sha256, 1);
    assert_int_equal(kp.kek_len, 32);
    assert_int_equal(kp.peer_point_len, 65);
    assert_int_equal(kp.peer_point[0], 0x04);
    assert_int_equal(kp.wrapped_key_len, 40);
    /* SharedInfo ends with suppPubInfo [2] { OCTET STRING 00000100 } */
    assert_true(kp.shared_info_len > sizeof(bits256));
    assert_memory_equal(kp.shared_info + kp.shared_info_len - sizeof(bits256), bits256, sizeof(bits256));
    env_kari_params_clear(&kp);
    assert_null(kp.shared_info);
    assert_int_equal(env_recipient_kari_params(ri, rsa_cert, &kp), ENV_ERR_NO_RECIPIENT);
    env_recipient_free(ri);
    free(der);
    env_message_free(msg);
    free(enc);
}

/* The obsolete syntax of RFC 5322 4.5 (white space before the colon,
 * "Bcc :") is a blind copy all the same: its field stays out of the
 * encrypted copy every member reads. */
static void test_mime_framing_obs_colon(void **state)
{
    static const char mail[] = "From: alice@example.org\nTo :\tlist@example.org\nBcc\t : hidden@example.org,\n"
                               "  other@example.org\nSubject: s\nResent-Bcc :r@example.org\n\nbody\n";
    env_encrypt_opts o = {.input_is_mime = true};
    unsigned char *enc = NULL;
    size_t enclen, outlen;
    env_message *msg = NULL;
    char *out = NULL;
    (void)state;

    assert_int_equal(encrypt_mem(&o, rsa_cert, mail, strlen(mail), &enc, &enclen), ENV_OK);
    enc[enclen] = '\0';
    assert_non_null(strstr((char *)enc, "From: alice@example.org\n"));
    assert_null(strstr((char *)enc, "hidden@"));
    assert_int_equal(read_mem(enc, enclen, &msg), ENV_OK);
    assert_int_equal(decrypt_mem(msg, rsa_cert, rsa_key, &out, &outlen), ENV_OK);
    assert_non_null(strstr(out, "Subject: s\r\n"));
    assert_null(strstr(out, "hidden@"));
    assert_null(strstr(out, "other@"));
    assert_null(strstr(out, "r@example.org"));
    free(out);
    env_message_free(msg);
    free(enc);
}

static void test_mime_framing(void **state)
{
    static const char mail[] = "From: alice@example.org\nTo: list@example.org\nBcc: hidden@example.org,\n"
                               "  other@example.org\nSubject: secret\nRESENT-BCC: r@example.org\n"
                               "X-Private: inner only\nReferences: <a@b>\n  <c@d>\n\nbody line 1\n"
                               "Bcc: in the body\nbody line 2\n";
    env_encrypt_opts o = {.input_is_mime = true};
    unsigned char *enc = NULL;
    size_t enclen, outlen;
    env_message *msg = NULL;
    char *out = NULL, *hdrs;
    const char *outer;
    (void)state;

    assert_int_equal(encrypt_mem(&o, rsa_cert, mail, strlen(mail), &enc, &enclen), ENV_OK);
    enc[enclen] = '\0';
    hdrs = (char *)enc;
    assert_non_null(strstr(hdrs, "From: alice@example.org\n"));
    assert_non_null(strstr(hdrs, "References: <a@b>\n  <c@d>\n"));
    assert_null(strstr(hdrs, "X-Private"));
    assert_non_null(strstr(hdrs, "smime-type=authEnveloped-data"));
    assert_non_null(strstr(hdrs, "Content-Disposition: attachment; filename=\"smime.p7m\""));
    assert_non_null(strstr(hdrs, "Content-Transfer-Encoding: base64"));
    assert_non_null(strstr(hdrs, "MIME-Version: 1.0"));
    assert_int_equal(read_mem(enc, enclen, &msg), ENV_OK);
    outer = env_message_outer_headers(msg);
    assert_non_null(strstr(outer, "Subject: secret\n"));
    assert_null(strstr(outer, "Content-Type"));
    assert_null(strstr(outer, "MIME-Version"));
    assert_int_equal(decrypt_mem(msg, rsa_cert, rsa_key, &out, &outlen), ENV_OK);
    /* The whole message inside, in canonical CRLF form, but for the blind
     * copies' fields (with their folded lines): every member reads it. */
    assert_non_null(strstr(out, "To: list@example.org\r\nSubject: secret\r\nX-Private: inner only\r\n"));
    assert_null(strstr(out, "hidden@"));
    assert_null(strstr(out, "other@"));
    assert_null(strstr(out, "r@example.org"));
    assert_null(strstr(hdrs, "hidden@"));
    assert_non_null(strstr(out, "\r\n\r\nbody line 1\r\nBcc: in the body\r\nbody line 2\r\n"));
    free(out);
    env_message_free(msg);
    free(enc);
}

static void assert_all_crlf(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] == '\n')
            assert_true(i > 0 && p[i - 1] == '\r');
}

/* CRLF headers in: CRLF throughout out (headers, MIME lines, base64 body),
 * on encryption and on re-writing; an mbox From_ line is tolerated. */
static void test_crlf(void **state)
{
    static const char mail[] = "From: a@example.org\r\nTo: l@example.org\r\nSubject: crlf\r\n\r\nbody\r\n";
    env_encrypt_opts o = {.input_is_mime = true};
    unsigned char *enc = NULL, *withfrom;
    size_t enclen, outlen;
    env_message *msg = NULL;
    BIO *mem;
    char *p, *out = NULL;
    long n;
    (void)state;

    assert_int_equal(encrypt_mem(&o, rsa_cert, mail, strlen(mail), &enc, &enclen), ENV_OK);
    assert_all_crlf(enc, enclen);
    withfrom = malloc(enclen + 64);
    n = snprintf((char *)withfrom, 64, "From a@example.org Sun Nov 29 20:00:00 2026\n");
    memcpy(withfrom + n, enc, enclen);
    assert_int_equal(read_mem(withfrom, enclen + (size_t)n, &msg), ENV_OK);
    free(withfrom);
    assert_string_equal(env_message_outer_headers(msg), "From: a@example.org\r\nTo: l@example.org\r\nSubject: crlf\r\n");
    mem = BIO_new(BIO_s_mem());
    assert_int_equal(env_message_write(msg, ENV_FORMAT_SMIME, NULL, mem), ENV_OK);
    n = BIO_get_mem_data(mem, &p);
    assert_all_crlf((unsigned char *)p, (size_t)n);
    BIO_free(mem);
    assert_int_equal(decrypt_mem(msg, rsa_cert, rsa_key, &out, &outlen), ENV_OK);
    assert_string_equal(out, mail);
    free(out);
    env_message_free(msg);
    free(enc);
}

/* A NUL in a header line (outer, a long line's later piece, a Content-*
 * field, a multipart part's header): refused as framing, as the
 * exploder's header split refuses it. It used to end the line there: the
 * rest of it and its newline were dropped and the next field merged into
 * it ("X-Note: aFrom: a@example.org"), and a Content-Type was read only
 * up to it. */
static void test_header_nul(void **state)
{
    static const char mail[] = "From: a@example.org\nSubject: s\n\nbody\n";
    env_encrypt_opts o = {.input_is_mime = true};
    unsigned char *enc = NULL;
    size_t enclen;
    (void)state;

    assert_int_equal(encrypt_mem(&o, rsa_cert, mail, strlen(mail), &enc, &enclen), ENV_OK);
    for (int k = 0; k < 4; k++) {
        size_t cap = enclen + 40000, n = 0;
        char *in = malloc(cap);
        env_message *msg = NULL;
        if (k == 0) {
            memcpy(in, "Subject: x\nX-Note: a\0b\n", 23);
            n = 23;
        } else if (k == 1) { /* the NUL in the second piece of a 20000-octet line */
            memcpy(in, "X-Long: ", 8);
            memset(in + 8, 'x', 20000);
            in[8 + 17000] = '\0';
            in[8 + 20000] = '\n';
            n = 8 + 20000 + 1;
        }
        if (k == 2) { /* in the Content-Type: the encrypted message's own, with a NUL after its type */
            const char *ct = strstr((char *)enc, "application/pkcs7-mime");
            size_t at = (size_t)(ct - (char *)enc) + strlen("application/pkcs7-mime");
            assert_non_null(ct);
            memcpy(in, enc, enclen);
            in[at] = '\0';
            n = enclen;
        } else if (k == 3) { /* a multipart part's header */
            const char *b64 = strstr((char *)enc, "\n\n");
            n = (size_t)snprintf(in, cap,
                                 "Subject: mixed\nMIME-Version: 1.0\n"
                                 "Content-Type: multipart/mixed; boundary=b1\n\n"
                                 "--b1\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\n"
                                 "Content-Transfer-Encoding: base64\nX-Part: a@b@c\n\n%s\n--b1--\n",
                                 b64 + 2);
            *strstr(in, "a@b@c") = '\0';
        } else {
            memcpy(in + n, enc, enclen);
            n += enclen;
        }
        {
            BIO *b = BIO_new_mem_buf(in, (int)n);
            env_err e = env_message_read_flags(b, ENV_FORMAT_SMIME, ENV_READ_IN_MULTIPART, 0, &msg);
            BIO_free(b);
            if (e == ENV_OK)
                fprintf(stderr, "case %d: read; outer \"%.60s\"\n", k, env_message_outer_headers(msg));
            assert_int_equal(e, ENV_ERR_MIME);
        }
        env_message_free(msg);
        free(in);
    }
    free(enc);
}

/* Header lines longer than the reader's 16 KiB line buffer (a client that
 * does not fold writes a To: of 800 addresses on one line; Postfix passes
 * it on whole): read, kept byte for byte and written out again, in the
 * outer header block and in a multipart's part; one exactly a buffer long
 * (its newline the next piece, which is no blank line). A Content-* field
 * that long is not S/MIME framing we could read; the block's cap holds. */
static void test_long_header_lines(void **state)
{
    static const size_t lens[] = {16 * 1024 - 1 - 4, 16 * 1024 - 4, 20000, 40000};
    env_encrypt_opts o = {.input_is_mime = true};
    for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
        size_t vlen = lens[k], enclen, outlen, n;
        char *mail = malloc(vlen + 256), *out = NULL, *p;
        unsigned char *enc = NULL;
        env_message *msg = NULL;
        BIO *mem;
        long m;
        (void)state;

        n = (size_t)snprintf(mail, 64, "From: a@example.org\nTo: ");
        memset(mail + n, 'x', vlen);
        n += vlen;
        n += (size_t)snprintf(mail + n, 64, "\nSubject: long\n\nbody\n");
        assert_int_equal(encrypt_mem(&o, rsa_cert, mail, n, &enc, &enclen), ENV_OK);
        assert_int_equal(read_mem(enc, enclen, &msg), ENV_OK);
        /* "To: " + the value + "\n" in the outer headers, whole */
        p = strstr(env_message_outer_headers(msg), "To: ");
        assert_non_null(p);
        assert_int_equal(strspn(p + 4, "x"), vlen);
        assert_string_equal(p + 4 + vlen, "\nSubject: long\n");
        mem = BIO_new(BIO_s_mem());
        assert_int_equal(env_message_write(msg, ENV_FORMAT_SMIME, NULL, mem), ENV_OK);
        m = BIO_get_mem_data(mem, &p);
        assert_true(m > 0 && (size_t)m > 20 + 4 + vlen + 15);
        assert_memory_equal(p, mail, 20 + 4 + vlen + 15); /* the outer headers come first */
        BIO_free(mem);
        assert_int_equal(decrypt_mem(msg, rsa_cert, rsa_key, &out, &outlen), ENV_OK);
        assert_non_null(strstr(out, "long\r\n\r\nbody\r\n")); /* the whole mail, canonical CRLF */
        free(out);
        env_message_free(msg);
        msg = NULL;
        if (k == 2) {
            /* the same in a multipart/mixed's S/MIME part header (read, not kept) */
            const char *b64 = strstr((char *)enc, "\n\n");
            size_t l = enclen + vlen + 512;
            char *mp = malloc(l);
            int w = snprintf(mp, l,
                             "Subject: mixed\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b1\n\n"
                             "--b1\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\n"
                             "Content-Transfer-Encoding: base64\nX-Long: ");
            memset(mp + w, 'y', vlen);
            w += (int)vlen;
            w += snprintf(mp + w, l - (size_t)w, "\n\n%s\n--b1--\n", b64 + 2);
            BIO *in = BIO_new_mem_buf(mp, w);
            assert_int_equal(env_message_read_flags(in, ENV_FORMAT_SMIME, ENV_READ_IN_MULTIPART, 0, &msg), ENV_OK);
            assert_string_equal(env_message_outer_headers(msg), "Subject: mixed\n");
            BIO_free(in);
            env_message_free(msg);
            msg = NULL;
            free(mp);
        }
        free(enc);
        free(mail);
    }
    {
        /* a Content-Type over a line buffer long, and a header block over its cap */
        size_t l = 2u * 1024 * 1024;
        char *big = malloc(l + 64);
        int w = snprintf(big, 64, "Content-Type: application/pkcs7-mime; x=");
        env_message *msg = NULL;
        memset(big + w, 'z', 20000);
        memcpy(big + w + 20000, "\n\nAAAA\n", 8);
        assert_int_equal(read_mem((unsigned char *)big, strlen(big), &msg), ENV_ERR_MIME);
        w = snprintf(big, 64, "Subject: ");
        memset(big + w, 'z', l);
        memcpy(big + w + l, "\n\nAAAA\n", 8);
        assert_int_equal(read_mem((unsigned char *)big, strlen(big), &msg), ENV_ERR_TOO_LARGE);
        free(big);
    }
}

/* encrypt --mime copies the routing fields outside, through SMTP: a To:
 * of 800 addresses on one line is folded there (a relay holding SMTP to
 * 1000-octet lines answers 500 and the message is not sent), unfolded the
 * same field, line ends as the input's; inside, the message as it came. */
static void test_mime_long_routing_folded(void **state)
{
    env_encrypt_opts o = {.input_is_mime = true};
    (void)state;
    for (int crlf = 0; crlf < 2; crlf++) {
        const char *nl = crlf ? "\r\n" : "\n";
        size_t cap = 64 * 1024, n, tolen, enclen, outlen, lines = 0;
        char *mail = malloc(cap), *out = NULL, *p, *to;
        unsigned char *enc = NULL;
        env_message *msg = NULL;

        n = (size_t)snprintf(mail, cap, "From: a@example.org%sTo: ", nl);
        to = mail + n - 4;
        for (int i = 0; i < 800; i++)
            n += (size_t)snprintf(mail + n, cap - n, "user%d@example.net, ", i);
        n += (size_t)snprintf(mail + n, cap - n, "last@example.net");
        tolen = (size_t)(mail + n - to);
        n += (size_t)snprintf(mail + n, cap - n, "%sSubject: long%s%sbody%s", nl, nl, nl, nl);
        assert_int_equal(encrypt_mem(&o, rsa_cert, mail, n, &enc, &enclen), ENV_OK);
        /* every line of the S/MIME output within 998 octets, each ended
         * as the input's lines are */
        for (p = (char *)enc; *p != '\0'; lines++) {
            char *e = strchr(p, '\n');
            assert_non_null(e);
            assert_true(e - p <= 998 + crlf);
            assert_int_equal(e > p && e[-1] == '\r', crlf);
            p = e + 1;
        }
        assert_true(lines > 64 / 4);
        /* unfolded, the outer To: is the input's */
        assert_int_equal(read_mem(enc, enclen, &msg), ENV_OK);
        p = strstr(env_message_outer_headers(msg), "To: ");
        assert_non_null(p);
        {
            char *un = malloc(strlen(p) + 1);
            size_t u = 0;
            for (size_t i = 0; p[i] != '\0'; i++) {
                if (p[i] == '\n' && (p[i + 1] == ' ' || p[i + 1] == '\t')) {
                    if (u > 0 && un[u - 1] == '\r')
                        u--;
                    continue;
                }
                un[u++] = p[i];
            }
            assert_true(u > tolen);
            assert_memory_equal(un, to, tolen);
            assert_memory_equal(un + tolen, nl, strlen(nl));
            free(un);
        }
        /* inside, the field whole */
        assert_int_equal(decrypt_mem(msg, rsa_cert, rsa_key, &out, &outlen), ENV_OK);
        to[tolen] = '\0'; /* the rest of mail is not needed any more */
        assert_non_null(strstr(out, to));
        free(out);
        env_message_free(msg);
        free(enc);
        free(mail);
    }
}

/* The width of every base64 line but the last of out, after its header
 * block (S/MIME) or its BEGIN line (PEM), up to an END line; each line
 * ended in CRLF when crlf, else LF. */
static size_t b64_width(const char *out, bool pem, bool crlf)
{
    const char *p = pem ? strstr(out, "-----\n") + 6 : strstr(out, crlf ? "\r\n\r\n" : "\n\n") + (crlf ? 4 : 2);
    size_t width = 0, last = 0;
    while (*p != '\0' && strncmp(p, "-----END", 8) != 0) {
        const char *e = strchr(p, '\n');
        size_t w;
        assert_non_null(e);
        w = (size_t)(e - p) - (crlf ? 1 : 0);
        assert_int_equal(e > p && e[-1] == '\r', crlf);
        if (last != 0)
            assert_int_equal(last, width); /* only the last line is shorter */
        if (width == 0)
            width = w;
        assert_true(w <= width);
        last = w;
        p = e + 1;
    }
    return width;
}

/* S/MIME in base64 lines of 76 (RFC 2045's longest, as most clients write
 * them: an exploder copy is then not larger than its post for its line
 * breaks); PEM in lines of exactly 64, as RFC 7468 has its generators
 * write them. A PEM of 76-character lines was written for a while. */
static void test_b64_widths(void **state)
{
    static const char crlf_mail[] = "From: a@example.org\r\nSubject: w\r\n\r\nbody\r\n";
    unsigned char buf[3000];
    (void)state;
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (unsigned char)(i * 13);
    for (int k = 0; k < 3; k++) {
        env_encrypt_opts o = {.out_format = k == 1 ? ENV_FORMAT_PEM : ENV_FORMAT_SMIME, .input_is_mime = k == 2};
        unsigned char *enc = NULL;
        size_t enclen;
        env_message *msg = NULL;
        BIO *mem = BIO_new(BIO_s_mem());
        char *p;
        long n;

        if (k == 2)
            assert_int_equal(encrypt_mem(&o, rsa_cert, crlf_mail, strlen(crlf_mail), &enc, &enclen), ENV_OK);
        else
            assert_int_equal(encrypt_mem(&o, rsa_cert, buf, sizeof(buf), &enc, &enclen), ENV_OK);
        assert_int_equal(b64_width((char *)enc, k == 1, k == 2), k == 1 ? 64 : 76);
        /* and written again (the exploder's copies), in each form */
        assert_int_equal(read_mem(enc, enclen, &msg), ENV_OK);
        assert_int_equal(env_message_write(msg, k == 1 ? ENV_FORMAT_PEM : ENV_FORMAT_SMIME, NULL, mem), ENV_OK);
        assert_int_equal(BIO_write(mem, "", 1), 1);
        n = BIO_get_mem_data(mem, &p);
        assert_true(n > 0);
        assert_int_equal(b64_width(p, k == 1, k == 2), k == 1 ? 64 : 76);
        BIO_free(mem);
        env_message_free(msg);
        free(enc);
    }
}

/* Content sizes around the base64 line and AES block boundaries. */
static void test_sizes(void **state)
{
    unsigned char buf[300];
    (void)state;
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (unsigned char)(i * 7);
    for (size_t len = 0; len < sizeof(buf); len += (len < 100 ? 1 : 37)) {
        env_encrypt_opts o = {.cipher = len % 2 ? ENV_CIPHER_AES256_CBC : ENV_CIPHER_AES256_GCM};
        unsigned char *enc = NULL;
        size_t enclen, outlen;
        env_message *msg = NULL;
        char *out = NULL;
        assert_int_equal(encrypt_mem(&o, rsa_cert, buf, len, &enc, &enclen), ENV_OK);
        assert_int_equal(read_mem(enc, enclen, &msg), ENV_OK);
        assert_int_equal(decrypt_mem(msg, rsa_cert, rsa_key, &out, &outlen), ENV_OK);
        assert_int_equal(outlen, len);
        if (len)
            assert_memory_equal(out, buf, len);
        free(out);
        env_message_free(msg);
        free(enc);
    }
}

static void test_builders(void **state)
{
    unsigned char cek[32], ek[256], *der = NULL, wrapped[40], got[64];
    size_t eklen = sizeof(ek), derlen, gotlen;
    const unsigned char *k, *id;
    size_t klen, idlen;
    env_recipient *ri = NULL;
    env_kt_alg alg;
    EVP_PKEY_CTX *pctx;
    EVP_CIPHER_CTX *cctx;
    unsigned char kek[32];
    int n = 0;
    (void)state;

    assert_true(RAND_bytes(cek, sizeof(cek)) == 1);
    /* KTRI with a key we OAEP-SHA256-encrypt ourselves, as the token would. */
    pctx = EVP_PKEY_CTX_new(rsa_key2, NULL);
    assert_true(EVP_PKEY_encrypt_init(pctx) > 0);
    assert_true(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_OAEP_PADDING) > 0);
    assert_true(EVP_PKEY_CTX_set_rsa_oaep_md(pctx, EVP_sha256()) > 0);
    assert_true(EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()) > 0);
    assert_true(EVP_PKEY_encrypt(pctx, ek, &eklen, cek, sizeof(cek)) > 0);
    EVP_PKEY_CTX_free(pctx);
    assert_int_equal(env_ktri_build(rsa_cert2, ENV_KT_RSA_OAEP_SHA256, ek, eklen, &der, &derlen), ENV_OK);
    assert_int_equal(env_recipient_parse(der, derlen, &ri), ENV_OK);
    assert_int_equal(env_recipient_type(ri), ENV_RI_KTRI);
    assert_int_equal(env_recipient_kt_alg(ri, &alg), ENV_OK);
    assert_int_equal(alg, ENV_KT_RSA_OAEP_SHA256);
    assert_true(env_recipient_matches_cert(ri, rsa_cert2));
    assert_false(env_recipient_matches_cert(ri, rsa_cert));
    /* another certificate of rsa_cert2's issuer: not it, but its issuer's */
    {
        X509 *sib = make_cert(rsa_key, "member", 9);
        assert_false(env_recipient_matches_cert(ri, sib));
        assert_true(env_recipient_names_issuer_of(ri, sib));
        assert_true(env_recipient_names_issuer_of(ri, rsa_cert2));
        assert_false(env_recipient_names_issuer_of(ri, rsa_cert));
        X509_free(sib);
    }
    assert_int_equal(env_recipient_encrypted_key(ri, NULL, &k, &klen), ENV_OK);
    assert_int_equal(klen, eklen);
    assert_memory_equal(k, ek, eklen);
    assert_int_equal(env_recipient_decrypt_with_pkey(ri, rsa_cert2, rsa_key2, got, sizeof(got), &gotlen), ENV_OK);
    assert_int_equal(gotlen, 32);
    assert_memory_equal(got, cek, 32);
    assert_int_equal(env_recipient_decrypt_with_pkey(ri, rsa_cert, rsa_key, got, sizeof(got), &gotlen),
                     ENV_ERR_NO_RECIPIENT);
    env_recipient_free(ri);
    ri = NULL;
    free(der);
    der = NULL;
    /* Trailing garbage is not one RecipientInfo. */
    assert_int_equal(env_ktri_build(rsa_cert2, ENV_KT_RSA_OAEP_SHA1, ek, eklen, &der, &derlen), ENV_OK);
    {
        unsigned char *longer = malloc(derlen + 1);
        memcpy(longer, der, derlen);
        longer[derlen] = 0;
        assert_int_equal(env_recipient_parse(longer, derlen + 1, &ri), ENV_ERR_NOT_CMS);
        assert_null(ri);
        free(longer);
    }
    assert_int_equal(env_recipient_parse(der, derlen, &ri), ENV_OK);
    assert_int_equal(env_recipient_kt_alg(ri, &alg), ENV_OK);
    assert_int_equal(alg, ENV_KT_RSA_OAEP_SHA1);
    env_recipient_free(ri);
    ri = NULL;
    free(der);
    der = NULL;
    assert_int_equal(env_ktri_build(ec_cert, ENV_KT_RSA_OAEP_SHA1, ek, eklen, &der, &derlen), ENV_ERR_CERT);
    assert_int_equal(env_ktri_build(rsa_cert2, ENV_KT_ECDH, ek, eklen, &der, &derlen), ENV_ERR_ARGS);
    /* PKCS#1 v1.5 (member copies for NSS and gpgsm readers): rsaEncryption, NULL parameters */
    eklen = sizeof(ek);
    pctx = EVP_PKEY_CTX_new(rsa_key2, NULL);
    assert_true(EVP_PKEY_encrypt_init(pctx) > 0);
    assert_true(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) > 0);
    assert_true(EVP_PKEY_encrypt(pctx, ek, &eklen, cek, 16) > 0);
    EVP_PKEY_CTX_free(pctx);
    assert_int_equal(env_ktri_build(rsa_cert2, ENV_KT_RSA_PKCS1V15, ek, eklen, &der, &derlen), ENV_OK);
    assert_int_equal(env_recipient_parse(der, derlen, &ri), ENV_OK);
    assert_int_equal(env_recipient_kt_alg(ri, &alg), ENV_OK);
    assert_int_equal(alg, ENV_KT_RSA_PKCS1V15);
    assert_int_equal(env_recipient_decrypt_with_pkey(ri, rsa_cert2, rsa_key2, got, sizeof(got), &gotlen), ENV_OK);
    assert_int_equal(gotlen, 16);
    assert_memory_equal(got, cek, 16);
    /* the DER names rsaEncryption (1.2.840.113549.1.1.1) followed by NULL */
    {
        static const unsigned char rsaenc[] = {0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00};
        bool found = false;
        for (size_t i = 0; i + sizeof(rsaenc) <= derlen && !found; i++)
            found = memcmp(der + i, rsaenc, sizeof(rsaenc)) == 0;
        assert_true(found);
    }
    env_recipient_free(ri);
    ri = NULL;
    free(der);
    der = NULL;

    /* KEKRI with an RFC 3394 wrap made with EVP. */
    assert_true(RAND_bytes(kek, sizeof(kek)) == 1);
    cctx = EVP_CIPHER_CTX_new();
    EVP_CIPHER_CTX_set_flags(cctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
    assert_true(EVP_EncryptInit_ex(cctx, EVP_aes_256_wrap(), NULL, kek, NULL));
    assert_true(EVP_EncryptUpdate(cctx, wrapped, &n, cek, sizeof(cek)) > 0);
    assert_int_equal(n, 40);
    EVP_CIPHER_CTX_free(cctx);
    assert_int_equal(env_kekri_build((const unsigned char *)"\x00\x07", 2, 256, false, wrapped, 40, &der, &derlen),
                     ENV_OK);
    assert_int_equal(env_recipient_parse(der, derlen, &ri), ENV_OK);
    assert_int_equal(env_recipient_type(ri), ENV_RI_KEKRI);
    assert_int_equal(env_recipient_kek_id(ri, &id, &idlen), ENV_OK);
    assert_int_equal(idlen, 2);
    assert_memory_equal(id, "\x00\x07", 2);
    assert_int_equal(env_recipient_decrypt_kekri(ri, kek, sizeof(kek), got, sizeof(got), &gotlen), ENV_OK);
    assert_int_equal(gotlen, 32);
    assert_memory_equal(got, cek, 32);
    kek[0] ^= 1;
    assert_int_equal(env_recipient_decrypt_kekri(ri, kek, sizeof(kek), got, sizeof(got), &gotlen), ENV_ERR_KEY);
    assert_int_equal(env_recipient_decrypt_kekri(ri, kek, 16, got, sizeof(got), &gotlen), ENV_ERR_KEY);
    assert_false(env_recipient_matches_cert(ri, rsa_cert));
    env_recipient_free(ri);
    free(der);
    assert_int_equal(env_kekri_build((const unsigned char *)"x", 1, 100, false, wrapped, 40, &der, &derlen),
                     ENV_ERR_ARGS);
    assert_int_equal(env_kekri_build((const unsigned char *)"x", 1, 256, false, wrapped, 20, &der, &derlen),
                     ENV_ERR_ARGS);
    assert_int_equal(env_recipient_parse((const unsigned char *)"\x30\x03\x02\x01", 4, &ri), ENV_ERR_NOT_CMS);
}

/* Group message -> KTRI for a member + the old RI, written and read back. */
static void test_rewrap(void **state)
{
    env_encrypt_opts o = {.out_format = ENV_FORMAT_DER};
    unsigned char *enc = NULL, *old = NULL, *neu = NULL, cek[64], ek[256];
    size_t enclen, oldlen, neulen, ceklen, eklen = sizeof(ek), outlen, idx;
    env_message *msg = NULL, *msg2 = NULL;
    env_recipient *ri = NULL;
    EVP_PKEY_CTX *pctx;
    BIO *mem;
    char *p, *out = NULL;
    long n;
    static const env_format fmts[] = {ENV_FORMAT_DER, ENV_FORMAT_PEM, ENV_FORMAT_SMIME};
    (void)state;

    assert_int_equal(encrypt_mem(&o, rsa_cert, content, sizeof(content), &enc, &enclen), ENV_OK);
    assert_int_equal(read_mem(enc, enclen, &msg), ENV_OK);
    assert_int_equal(env_message_recipient_der(msg, 0, &old, &oldlen), ENV_OK);
    assert_int_equal(env_recipient_parse(old, oldlen, &ri), ENV_OK);
    assert_int_equal(env_recipient_decrypt_with_pkey(ri, rsa_cert, rsa_key, cek, sizeof(cek), &ceklen), ENV_OK);
    env_recipient_free(ri);
    pctx = EVP_PKEY_CTX_new(rsa_key2, NULL);
    assert_true(EVP_PKEY_encrypt_init(pctx) > 0);
    assert_true(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_OAEP_PADDING) > 0);
    assert_true(EVP_PKEY_encrypt(pctx, ek, &eklen, cek, ceklen) > 0);
    EVP_PKEY_CTX_free(pctx);
    assert_int_equal(env_ktri_build(rsa_cert2, ENV_KT_RSA_OAEP_SHA1, ek, eklen, &neu, &neulen), ENV_OK);
    {
        const unsigned char *ders[2] = {old, neu};
        size_t lens[2] = {oldlen, neulen};
        assert_int_equal(env_message_set_recipients(msg, ders, lens, 2), ENV_OK);
        ders[0] = (const unsigned char *)"garbage";
        lens[0] = 7;
        assert_int_equal(env_message_set_recipients(msg, ders, lens, 2), ENV_ERR_ARGS);
        assert_int_equal(env_message_recipient_count(msg), 2);
    }
    for (size_t f = 0; f < 3; f++) {
        mem = BIO_new(BIO_s_mem());
        assert_int_equal(env_message_write(msg, fmts[f], "Subject: rewrapped\n", mem), ENV_OK);
        n = BIO_get_mem_data(mem, &p);
        assert_int_equal(read_mem((unsigned char *)p, (size_t)n, &msg2), ENV_OK);
        BIO_free(mem);
        assert_int_equal(env_message_recipient_count(msg2), 2);
        assert_int_equal(env_message_find_recipient(msg2, rsa_cert2, &idx), ENV_OK);
        assert_int_equal(idx, 1);
        if (fmts[f] == ENV_FORMAT_SMIME)
            assert_string_equal(env_message_outer_headers(msg2), "Subject: rewrapped\n");
        assert_int_equal(decrypt_mem(msg2, rsa_cert2, rsa_key2, &out, &outlen), ENV_OK);
        assert_memory_equal(out, content, sizeof(content));
        free(out);
        assert_int_equal(decrypt_mem(msg2, rsa_cert, rsa_key, &out, &outlen), ENV_OK);
        free(out);
        env_message_free(msg2);
        msg2 = NULL;
    }
    /* Known content key path, and wrong keys. */
    mem = BIO_new(BIO_s_mem());
    assert_int_equal(env_message_decrypt(msg, cek, ceklen, mem), ENV_OK);
    BIO_free(mem);
    mem = BIO_new(BIO_s_mem());
    assert_int_equal(env_message_decrypt(msg, cek, 16, mem), ENV_ERR_KEY);
    cek[3] ^= 0x40;
    assert_int_equal(env_message_decrypt(msg, cek, ceklen, mem), ENV_ERR_AUTH);
    BIO_free(mem);
    OPENSSL_cleanse(cek, sizeof(cek));
    free(old);
    free(neu);
    env_message_free(msg);
    free(enc);
}

static void test_truncated_everywhere(void **state)
{
    static const env_cipher ciphers[] = {ENV_CIPHER_AES256_GCM, ENV_CIPHER_AES256_CBC};
    (void)state;
    for (size_t c = 0; c < 2; c++) {
        env_encrypt_opts o = {.cipher = ciphers[c], .out_format = ENV_FORMAT_DER};
        unsigned char *enc = NULL;
        size_t enclen;
        assert_int_equal(encrypt_mem(&o, rsa_cert, content, sizeof(content), &enc, &enclen), ENV_OK);
        for (size_t cut = 0; cut < enclen; cut++) {
            env_message *msg = NULL;
            env_err e = read_mem(enc, cut, &msg);
            if (e != ENV_ERR_TRUNCATED)
                fprintf(stderr, "cut=%zu of %zu: %s\n", cut, enclen, env_strerror(e));
            assert_int_equal(e, ENV_ERR_TRUNCATED);
            assert_null(msg);
        }
        free(enc);
    }
}

/* Flipping any byte never crashes; in the ciphertext or tag it is ENV_ERR_AUTH. */
static void test_tamper(void **state)
{
    static const char block_content[64] = "sixty-four bytes of content, a multiple of the AES block size...";
    static const env_cipher ciphers[] = {ENV_CIPHER_AES256_GCM, ENV_CIPHER_AES256_CBC};
    (void)state;
    for (size_t c = 0; c < 2; c++) {
        env_encrypt_opts o = {.cipher = ciphers[c], .out_format = ENV_FORMAT_DER};
        unsigned char *enc = NULL;
        size_t enclen, outlen;
        char *out;
        assert_int_equal(encrypt_mem(&o, rsa_cert, block_content, sizeof(block_content), &enc, &enclen), ENV_OK);
        for (size_t i = 0; i < enclen; i++) {
            env_message *msg = NULL;
            env_err e;
            enc[i] ^= 0x01;
            e = read_mem(enc, enclen, &msg);
            if (e == ENV_OK) {
                e = decrypt_mem(msg, rsa_cert, rsa_key, &out, &outlen);
                /* Some bytes (e.g. an issuer name string's type) may not
                 * matter; with GCM the content must then be intact. CBC
                 * (EnvelopedData) has no integrity: an IV flip passes. */
                if (e == ENV_OK && c == 0)
                    assert_memory_equal(out, block_content, sizeof(block_content));
                free(out);
            }
            env_message_free(msg);
            enc[i] ^= 0x01;
        }
        /* GCM: the content sits just before two EOCs, the 18-byte tag and
         * three EOCs; flip a byte inside the ciphertext. (CBC cannot promise
         * AUTH for a flip: padding is all it checks.) */
        if (c == 0) {
            env_message *msg = NULL;
            size_t pos = enclen - 6 - 18 - 4 - 17;
            enc[pos] ^= 0x01;
            assert_int_equal(read_mem(enc, enclen, &msg), ENV_OK);
            assert_int_equal(decrypt_mem(msg, rsa_cert, rsa_key, &out, &outlen), ENV_ERR_AUTH);
            free(out);
            env_message_free(msg);
            enc[pos] ^= 0x01;
        }
        if (c == 0) { /* the GCM tag */
            env_message *msg = NULL;
            enc[enclen - 8] ^= 0x80;
            assert_int_equal(read_mem(enc, enclen, &msg), ENV_OK);
            assert_int_equal(decrypt_mem(msg, rsa_cert, rsa_key, &out, &outlen), ENV_ERR_AUTH);
            free(out);
            env_message_free(msg);
        }
        free(enc);
    }
}

/* What is wrong with an S/MIME body, said as it is: a Content-Transfer-
 * Encoding other than base64 (binary, as some senders write CMS) is
 * ENV_ERR_ENCODING, not "malformed S/MIME framing"; a footer or disclaimer
 * a list or gateway appended inside the base64 is ENV_ERR_BASE64, where a
 * footer of letters only was "input truncated" and one with a full stop
 * "malformed S/MIME framing"; base64 really cut short stays
 * ENV_ERR_TRUNCATED, and a "-- " signature line after the base64 is read
 * as before. Each case at each of the base64's three endings ("==", "=",
 * none), LF and CRLF, at the top and as a multipart/mixed part. */
static void test_b64_body_faults(void **state)
{
    static const struct {
        const char *name, *tail; /* the text after the base64 (its lines joined by "|") */
        bool blank;              /* a blank line before it */
        env_err want;
    } cases[] = {
        {"footer with a full stop", "This list is run by Example Corp.", true, ENV_ERR_BASE64},
        {"footer of letters", "Footer text here", true, ENV_ERR_BASE64},
        {"footer of letters, no blank line", "Footer text here", false, ENV_ERR_BASE64},
        {"one word, no blank line", "Unsubscribe", false, ENV_ERR_BASE64},
        {"mailman footer", "_______________________________________________|Eng mailing list", true,
         ENV_ERR_BASE64},
        {"a signature line", "-- |Alice", true, ENV_OK},
        {"blank lines only", "|", false, ENV_OK},
    };
    unsigned char fill[64];
    (void)state;
    memset(fill, 'c', sizeof(fill));
    for (size_t len = 40; len < 43; len++) /* GCM: the DER's length moves by one, the padding with it */
        for (int crlf = 0; crlf < 2; crlf++)
            for (int mp = 0; mp < 2; mp++) {
                const char *nl = crlf ? "\r\n" : "\n";
                env_encrypt_opts o = {.input_is_mime = true};
                char mail[256], *hdr_end, *body, *m, *last;
                unsigned char *enc = NULL;
                size_t enclen, cap, bodylen, hdrlen;
                env_message *msg = NULL;
                int w;

                w = snprintf(mail, sizeof(mail), "From: a@example.org%sSubject: f%s%s", nl, nl, nl);
                memcpy(mail + w, fill, len);
                assert_int_equal(encrypt_mem(&o, rsa_cert, mail, (size_t)w + len, &enc, &enclen), ENV_OK);
                hdr_end = strstr((char *)enc, crlf ? "\r\n\r\n" : "\n\n");
                assert_non_null(hdr_end);
                hdrlen = (size_t)(hdr_end - (char *)enc) + (crlf ? 4 : 2);
                body = (char *)enc + hdrlen;
                bodylen = enclen - hdrlen;
                /* the last base64 line shorter than the others or padded:
                 * what tells a footer of letters from more base64 */
                enc[enclen - strlen(nl)] = '\0';
                last = strrchr(body, '\n');
                assert_true(last == NULL || strlen(last + 1) < 76 || strchr(last, '=') != NULL);
                memcpy(enc + enclen - strlen(nl), nl, strlen(nl));
                cap = enclen + 1024;
                m = malloc(cap);
                for (size_t k = 0; k < (sizeof(cases) / sizeof(cases[0])) + 3; k++) {
                    size_t n = 0;
                    env_err want, e;
                    BIO *b;
                    if (mp) {
                        n += (size_t)snprintf(m, cap, "Subject: f%sMIME-Version: 1.0%sContent-Type: multipart/mixed; "
                                                      "boundary=B%s%s--B%s",
                                              nl, nl, nl, nl, nl);
                        /* the part's header: the message's Content-* lines */
                        {
                            const char *ct = strstr((char *)enc, "Content-Type:");
                            assert_non_null(ct);
                            memcpy(m + n, ct, (size_t)(body - ct));
                            n += (size_t)(body - ct);
                        }
                    } else {
                        memcpy(m, enc, hdrlen);
                        n = hdrlen;
                    }
                    if (k < (sizeof(cases) / sizeof(cases[0]))) {
                        memcpy(m + n, body, bodylen);
                        n += bodylen;
                        if (cases[k].blank)
                            n += (size_t)snprintf(m + n, cap - n, "%s", nl);
                        for (const char *t = cases[k].tail; *t != '\0'; t++) {
                            if (*t == '|')
                                n += (size_t)snprintf(m + n, cap - n, "%s", nl);
                            else
                                m[n++] = *t;
                        }
                        n += (size_t)snprintf(m + n, cap - n, "%s", nl);
                        want = cases[k].want;
                    } else if (k == (sizeof(cases) / sizeof(cases[0]))) { /* cut in the middle of a line */
                        size_t cut = bodylen / 2;
                        while (body[cut] == '\r' || body[cut] == '\n' || body[cut - 1] == '\n')
                            cut++;
                        memcpy(m + n, body, cut);
                        n += cut;
                        want = ENV_ERR_TRUNCATED;
                    } else if (k == (sizeof(cases) / sizeof(cases[0])) + 1) { /* cut at the end of a line */
                        size_t cut = (size_t)(strchr(body + bodylen / 2, '\n') - body) + 1;
                        memcpy(m + n, body, cut);
                        n += cut;
                        want = ENV_ERR_TRUNCATED;
                    } else { /* the DER as it is: Content-Transfer-Encoding: binary */
                        char *cte = strstr(m, "Content-Transfer-Encoding: base64");
                        unsigned char *der = NULL;
                        size_t derlen = 0;
                        assert_non_null(cte);
                        memcpy(cte + strlen("Content-Transfer-Encoding: "), "binary", 6); /* as long */
                        b = BIO_new_mem_buf(enc, (int)enclen);
                        assert_int_equal(env_message_read(b, ENV_FORMAT_SMIME, 0, &msg), ENV_OK);
                        BIO_free(b);
                        {
                            BIO *d = BIO_new(BIO_s_mem());
                            char *dp;
                            assert_int_equal(env_message_write(msg, ENV_FORMAT_DER, NULL, d), ENV_OK);
                            derlen = (size_t)BIO_get_mem_data(d, &dp);
                            der = malloc(derlen);
                            memcpy(der, dp, derlen);
                            BIO_free(d);
                        }
                        env_message_free(msg);
                        msg = NULL;
                        assert_true(n + derlen < cap);
                        memcpy(m + n, der, derlen);
                        n += derlen;
                        free(der);
                        want = ENV_ERR_ENCODING;
                    }
                    if (mp)
                        n += (size_t)snprintf(m + n, cap - n, "%s--B--%s", nl, nl);
                    b = BIO_new_mem_buf(m, (int)n);
                    e = env_message_read_flags(b, ENV_FORMAT_SMIME, mp ? ENV_READ_IN_MULTIPART : 0, 0, &msg);
                    BIO_free(b);
                    if (e != want)
                        fprintf(stderr, "case %zu (%s), content of %zu, crlf %d, multipart %d: %s, want %s\n", k,
                                k < (sizeof(cases) / sizeof(cases[0])) ? cases[k].name : "cut/binary", len, crlf, mp,
                                env_strerror(e), env_strerror(want));
                    assert_int_equal(e, want);
                    env_message_free(msg);
                    msg = NULL;
                }
                free(m);
                free(enc);
            }
}

static void test_bad_inputs(void **state)
{
    env_message *msg = NULL;
    unsigned char rnd[2048];
    BIO *in, *mem;
    CMS_ContentInfo *cms;
    char *p;
    long n;
    (void)state;

    assert_int_equal(read_mem((const unsigned char *)"", 0, &msg), ENV_ERR_TRUNCATED);
    assert_true(RAND_bytes(rnd, sizeof(rnd)) == 1);
    rnd[0] = 0x01;
    assert_int_equal(read_mem(rnd, sizeof(rnd), &msg), ENV_ERR_NOT_CMS);
    rnd[0] = 'A';
    rnd[1] = 0x00;
    assert_int_equal(read_mem(rnd, sizeof(rnd), &msg), ENV_ERR_NOT_CMS);
    assert_int_equal(read_mem((const unsigned char *)"\x30\x03\x02\x01\x00", 5, &msg), ENV_ERR_NOT_CMS);

    /* SignedData */
    in = BIO_new_mem_buf("hello", 5);
    cms = CMS_sign(rsa_cert, rsa_key, NULL, in, CMS_BINARY);
    assert_non_null(cms);
    BIO_free(in);
    mem = BIO_new(BIO_s_mem());
    assert_true(i2d_CMS_bio(mem, cms) > 0);
    n = BIO_get_mem_data(mem, &p);
    assert_int_equal(read_mem((unsigned char *)p, (size_t)n, &msg), ENV_ERR_CONTENT_TYPE);
    BIO_free(mem);
    CMS_ContentInfo_free(cms);

    /* MIME framing */
    {
        static const char *const bad_mime[] = {
            "Subject: x\nContent-Type: application/pkcs7-mime\n\nMIIB\n",                 /* no CTE */
            "Subject: x\nContent-Type: application/pkcs7-mime\nContent-Transfer-Encoding: base64\n\n*!*\n",
        };
        static const env_err want[] = {ENV_ERR_ENCODING, ENV_ERR_BASE64};
        for (size_t i = 0; i < 2; i++)
            assert_int_equal(read_mem((const unsigned char *)bad_mime[i], strlen(bad_mime[i]), &msg), want[i]);
        assert_int_equal(read_mem((const unsigned char *)"Subject: x\nContent-Type: multipart/signed; a=b\n\nx\n",
                                  48, &msg),
                         ENV_ERR_CONTENT_TYPE);
        assert_int_equal(read_mem((const unsigned char *)"Subject: x\nContent-Type: text/plain\n\nhello\n", 42, &msg),
                         ENV_ERR_NOT_CMS);
        assert_int_equal(read_mem((const unsigned char *)"-----BEGIN CMS-----\nMIIB\n", 25, &msg),
                         ENV_ERR_TRUNCATED);
        assert_int_equal(read_mem((const unsigned char *)"-----BEGIN CERTIFICATE-----\nMIIB\n", 33, &msg),
                         ENV_ERR_NOT_CMS);
    }
    /* Size cap */
    {
        env_encrypt_opts o = {0};
        unsigned char *enc = NULL;
        size_t enclen;
        assert_int_equal(encrypt_mem(&o, rsa_cert, content, sizeof(content), &enc, &enclen), ENV_OK);
        in = BIO_new_mem_buf(enc, (int)enclen);
        assert_int_equal(env_message_read(in, ENV_FORMAT_AUTO, 100, &msg), ENV_ERR_TOO_LARGE);
        BIO_free(in);
        /* x-pkcs7-mime is accepted too */
        p = strstr((char *)enc, "application/pkcs7-mime");
        assert_non_null(p);
        {
            size_t pre = (size_t)(p - (char *)enc);
            char *alt = malloc(enclen + 3);
            memcpy(alt, enc, pre);
            memcpy(alt + pre, "application/x-pkcs7-mime", 24);
            memcpy(alt + pre + 24, p + 22, enclen - pre - 22);
            assert_int_equal(read_mem((unsigned char *)alt, enclen + 2, &msg), ENV_OK);
            env_message_free(msg);
            msg = NULL;
            free(alt);
        }
        free(enc);
    }
    /* Arguments */
    assert_int_equal(env_message_read(NULL, ENV_FORMAT_AUTO, 0, &msg), ENV_ERR_ARGS);
    {
        X509 *certs[1] = {rsa_cert};
        env_encrypt_opts o = {.kt = ENV_KT_RSA_PKCS1V15};
        in = BIO_new_mem_buf("x", 1);
        mem = BIO_new(BIO_s_mem());
        assert_int_equal(env_encrypt(&o, certs, 1, in, mem), ENV_ERR_ARGS);
        assert_int_equal(env_encrypt(NULL, certs, 0, in, mem), ENV_ERR_ARGS);
        BIO_free(in);
        BIO_free(mem);
    }
    assert_string_equal(env_strerror(ENV_ERR_AUTH), "content authentication failed (tampered or wrong key)");
    env_message_free(NULL);
    env_recipient_free(NULL);
    env_kari_params_clear(NULL);
}

/* An input BIO that hands out `left` bytes of 'a', then fails (an EIO
 * from a pipe or disk: BIO_read -1, not retryable). */
static int failing_read(BIO *b, char *buf, int len)
{
    long *left = BIO_get_data(b);
    int n = *left < len ? (int)*left : len;
    BIO_clear_retry_flags(b);
    if (n <= 0)
        return -1;
    memset(buf, 'a', (size_t)n);
    *left -= n;
    return n;
}

static long failing_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static BIO *failing_bio(BIO_METHOD **m, long *left)
{
    BIO *b;
    assert_non_null(*m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "failing"));
    assert_int_equal(BIO_meth_set_read(*m, failing_read), 1);
    assert_int_equal(BIO_meth_set_ctrl(*m, failing_ctrl), 1);
    assert_non_null(b = BIO_new(*m));
    BIO_set_data(b, left);
    BIO_set_init(b, 1);
    return b;
}

/* A read error of the input is ENV_ERR_IO, never a complete-looking
 * encryption of what came before it, nor a "truncated" message. */
static void test_input_read_error(void **state)
{
    static const long sizes[] = {0, 100, 70000, 200000};
    X509 *certs[1] = {rsa_cert};
    (void)state;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        for (int mime = 0; mime < 2; mime++) {
            BIO_METHOD *m = NULL;
            long left = sizes[i];
            BIO *in = failing_bio(&m, &left), *out = BIO_new(BIO_s_mem());
            env_encrypt_opts o = {.input_is_mime = mime != 0};
            assert_non_null(out);
            assert_int_equal(env_encrypt(&o, certs, 1, in, out), ENV_ERR_IO);
            BIO_free(in);
            BIO_free(out);
            BIO_meth_free(m);
        }
    }
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        BIO_METHOD *m = NULL;
        long left = sizes[i];
        BIO *in = failing_bio(&m, &left);
        env_message *msg = NULL;
        assert_int_equal(env_message_read(in, ENV_FORMAT_DER, 0, &msg), ENV_ERR_IO);
        assert_null(msg);
        BIO_free(in);
        BIO_meth_free(m);
    }
}

/* Issuer names are kept as received and decoded only when they must be:
 * the same names match, the same bad names are refused, with or without
 * certificates whose issuer spares the decoding. */
static void test_recipient_issuer_names(void **state)
{
    unsigned char ek[256] = {1, 2, 3}, *der = NULL, *alt = NULL;
    size_t derlen = 0, altlen = 0;
    env_recipient *ri = NULL;
    X509 *known[2] = {rsa_cert, rsa_cert2};
    (void)state;

    assert_int_equal(env_ktri_build(rsa_cert2, ENV_KT_RSA_OAEP_SHA1, ek, sizeof(ek), &der, &derlen), ENV_OK);
    for (size_t nknown = 0; nknown <= 2; nknown++) {
        assert_int_equal(env_recipient_parse_known(der, derlen, known, nknown, &ri), ENV_OK);
        assert_true(env_recipient_matches_cert(ri, rsa_cert2));
        assert_false(env_recipient_matches_cert(ri, rsa_cert));
        env_recipient_free(ri);
        ri = NULL;
    }
    assert_int_equal(env_recipient_parse_known(der, derlen, NULL, 1, &ri), ENV_ERR_ARGS);

    /* The same name in another form (upper case: the certificate says
     * "member") is the same issuer, as
     * X509_NAME_cmp says, though not the same bytes. */
    X509 *other = X509_new();
    X509_NAME *name = X509_NAME_new();
    assert_non_null(other);
    assert_non_null(name);
    assert_true(X509_NAME_add_entry_by_NID(name, NID_commonName, V_ASN1_UTF8STRING, (const unsigned char *)"MEMBER",
                                           -1, -1, 0));
    assert_true(X509_set_issuer_name(other, name));
    assert_true(ASN1_INTEGER_set(X509_get_serialNumber(other), 2));
    assert_true(X509_set_pubkey(other, rsa_key2));
    assert_int_equal(X509_NAME_cmp(name, X509_get_issuer_name(rsa_cert2)), 0);
    assert_int_equal(env_ktri_build(other, ENV_KT_RSA_OAEP_SHA1, ek, sizeof(ek), &alt, &altlen), ENV_OK);
    assert_true(altlen != derlen || memcmp(alt, der, derlen) != 0);
    assert_int_equal(env_recipient_parse_known(alt, altlen, known, 2, &ri), ENV_OK);
    assert_true(env_recipient_matches_cert(ri, rsa_cert2));
    assert_true(env_recipient_matches_cert(ri, other));
    assert_false(env_recipient_matches_cert(ri, rsa_cert));
    env_recipient_free(ri);
    ri = NULL;

    /* A well-formed SEQUENCE that is not a Name (its first RDN made an
     * INTEGER): refused by both parsers, whatever certificates are known. */
    unsigned char *issuer = NULL;
    int ilen = i2d_X509_NAME(X509_get_issuer_name(rsa_cert2), &issuer);
    assert_true(ilen > 2 && issuer[0] == 0x30 && issuer[2] == 0x31);
    unsigned char *at = NULL;
    for (size_t i = 0; i + (size_t)ilen <= derlen && at == NULL; i++)
        if (memcmp(der + i, issuer, (size_t)ilen) == 0)
            at = der + i;
    assert_non_null(at);
    at[2] = 0x02;
    assert_int_equal(env_recipient_parse(der, derlen, &ri), ENV_ERR_NOT_CMS);
    assert_null(ri);
    assert_int_equal(env_recipient_parse_known(der, derlen, known, 2, &ri), ENV_ERR_NOT_CMS);
    assert_null(ri);
    /* The name's string retagged: as a BMPString (6 bytes, 3 characters)
     * it decodes; as a UniversalString (4 bytes a character) it does not. */
    at[2] = 0x31;
    unsigned char *str = NULL;
    for (unsigned char *q = at; q + 8 <= at + ilen && str == NULL; q++)
        if (q[0] == V_ASN1_UTF8STRING && q[1] == 6 && memcmp(q + 2, "member", 6) == 0)
            str = q;
    assert_non_null(str);
    str[0] = V_ASN1_BMPSTRING;
    assert_int_equal(env_recipient_parse(der, derlen, &ri), ENV_OK);
    env_recipient_free(ri);
    ri = NULL;
    assert_int_equal(env_recipient_parse_known(der, derlen, known, 2, &ri), ENV_OK);
    assert_false(env_recipient_matches_cert(ri, rsa_cert2));
    env_recipient_free(ri);
    ri = NULL;
    str[0] = V_ASN1_UNIVERSALSTRING;
    assert_int_equal(env_recipient_parse(der, derlen, &ri), ENV_ERR_NOT_CMS);
    assert_int_equal(env_recipient_parse_known(der, derlen, known, 2, &ri), ENV_ERR_NOT_CMS);
    assert_null(ri);

    OPENSSL_free(issuer);
    X509_NAME_free(name);
    X509_free(other);
    free(alt);
    free(der);
}

/* Which Content-Type / Content-Disposition pairs are S/MIME (RFC 8551 3.8). */
static env_err read_mem_flags(const char *buf, size_t len, unsigned flags, env_message **msg)
{
    BIO *in = BIO_new_mem_buf(buf, (int)len);
    env_err e = env_message_read_flags(in, ENV_FORMAT_AUTO, flags, 0, msg);
    BIO_free(in);
    return e;
}

/* A mail of head, then each part (NULL ends) after a "--B" line, "--B--". */
static char *multipart_mail(const char *head, const char *nl, const char *const *parts)
{
    size_t cap = strlen(head) + 64, n;
    char *m;
    for (size_t i = 0; parts[i] != NULL; i++)
        cap += strlen(parts[i]) + 64;
    m = malloc(cap);
    n = (size_t)snprintf(m, cap, "%s%spreamble, --B is no delimiter here%s", head, nl, nl);
    for (size_t i = 0; parts[i] != NULL; i++)
        n += (size_t)snprintf(m + n, cap - n, "--Part_B1%s%s%s", nl, parts[i], nl);
    snprintf(m + n, cap - n, "--Part_B1-- %sepilogue%s", nl, nl);
    return m;
}

/* mail, read with ENV_READ_IN_MULTIPART, decrypts to content. */
static void assert_part_decrypts(const char *mail)
{
    env_message *msg = NULL;
    char *out = NULL;
    size_t outlen = 0;

    assert_int_equal(read_mem_flags(mail, strlen(mail), ENV_READ_IN_MULTIPART, &msg), ENV_OK);
    assert_int_equal(decrypt_mem(msg, rsa_cert, rsa_key, &out, &outlen), ENV_OK);
    assert_int_equal(outlen, sizeof(content));
    assert_memory_equal(out, content, sizeof(content));
    free(out);
    env_message_free(msg);
}

/* The S/MIME part one level down (ENV_READ_IN_MULTIPART): in a
 * multipart/mixed a list or a gateway made to add a footer, or first in a
 * multipart/signed (encrypted, then signed). Only with the flag. */
static void test_multipart_part(void **state)
{
    env_encrypt_opts o = {.cipher = ENV_CIPHER_AES256_CBC, .kt = ENV_KT_RSA_OAEP_SHA1};
    unsigned char *enc = NULL;
    size_t enclen;
    env_message *msg = NULL;
    char *mail, *crlf_part;
    static const char footer[] = "Content-Type: text/plain\n\n-- \neng mailing list\n--part_b1\n--Part_B1x";
    static const char mixed[] = "From: a@example.org\nSubject: [eng] hello\nMIME-Version: 1.0\n"
                                "Content-Type: multipart/mixed;\n boundary=\"Part_B1\"\n";
    static const char mixed_crlf[] = "From: a@example.org\r\nSubject: [eng] hello\r\nMIME-Version: 1.0\r\n"
                                     "Content-Type: MULTIPART/Mixed; BOUNDARY=Part_B1\r\n";
    static const char sig[] = "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\";"
                              " micalg=sha-256; boundary=\"Part_B1\"\n";
    static const char sigpart[] = "Content-Type: application/pkcs7-signature; name=smime.p7s\n"
                                  "Content-Transfer-Encoding: base64\n\nMIAGCSqGSIb3DQEHAqCAMIACAQEx\n";
    (void)state;

    assert_int_equal(encrypt_mem(&o, rsa_cert, content, sizeof(content), &enc, &enclen), ENV_OK);
    enc[enclen] = '\0';
    {
        const char *parts[] = {(char *)enc, footer, NULL};
        mail = multipart_mail(mixed, "\n", parts);
        assert_int_equal(read_mem_flags(mail, strlen(mail), 0, &msg), ENV_ERR_NOT_CMS);
        assert_part_decrypts(mail);
        assert_int_equal(read_mem_flags(mail, strlen(mail), ENV_READ_IN_MULTIPART, &msg), ENV_OK);
        assert_non_null(strstr(env_message_outer_headers(msg), "Subject: [eng] hello\n"));
        assert_null(strstr(env_message_outer_headers(msg), "multipart"));
        env_message_free(msg);
        msg = NULL;
        /* cut inside the S/MIME part: never a message */
        assert_int_not_equal(read_mem_flags(mail, strlen(mail) - strlen(footer) - 100, ENV_READ_IN_MULTIPART, &msg),
                             ENV_OK);
        assert_null(msg);
        free(mail);
    }
    {   /* a header part first, CRLF throughout, parameters in any case */
        size_t n = strlen((char *)enc) * 2 + 1, j = 0;
        crlf_part = malloc(n);
        for (const char *p = (char *)enc; *p; p++) {
            if (*p == '\n')
                crlf_part[j++] = '\r';
            crlf_part[j++] = *p;
        }
        crlf_part[j] = '\0';
        const char *parts[] = {"Content-Type: text/plain\r\n\r\nlist header", crlf_part, NULL};
        mail = multipart_mail(mixed_crlf, "\r\n", parts);
        assert_part_decrypts(mail);
        free(mail);
        free(crlf_part);
    }
    {   /* two encrypted parts: which one is the message? */
        const char *parts[] = {(char *)enc, (char *)enc, NULL};
        mail = multipart_mail(mixed, "\n", parts);
        assert_int_equal(read_mem_flags(mail, strlen(mail), ENV_READ_IN_MULTIPART, &msg), ENV_ERR_MIME);
        free(mail);
    }
    {   /* none */
        const char *parts[] = {footer, NULL};
        mail = multipart_mail(mixed, "\n", parts);
        assert_int_equal(read_mem_flags(mail, strlen(mail), ENV_READ_IN_MULTIPART, &msg), ENV_ERR_NOT_CMS);
        free(mail);
    }
    {   /* encrypted, then signed */
        const char *parts[] = {(char *)enc, sigpart, NULL};
        mail = multipart_mail(sig, "\n", parts);
        assert_int_equal(read_mem_flags(mail, strlen(mail), 0, &msg), ENV_ERR_CONTENT_TYPE);
        assert_part_decrypts(mail);
        free(mail);
    }
    {   /* signed, not encrypted */
        const char *parts[] = {footer, sigpart, NULL};
        mail = multipart_mail(sig, "\n", parts);
        assert_int_equal(read_mem_flags(mail, strlen(mail), ENV_READ_IN_MULTIPART, &msg), ENV_ERR_CONTENT_TYPE);
        free(mail);
    }
    {   /* no boundary parameter; a part that is not base64 */
        static const char nob[] = "Content-Type: multipart/mixed\n\n--Part_B1\n";
        assert_int_equal(read_mem_flags(nob, strlen(nob), ENV_READ_IN_MULTIPART, &msg), ENV_ERR_MIME);
        const char *parts[] = {"Content-Type: application/pkcs7-mime\nContent-Transfer-Encoding: 8bit\n\nx", NULL};
        mail = multipart_mail(mixed, "\n", parts);
        assert_int_equal(read_mem_flags(mail, strlen(mail), ENV_READ_IN_MULTIPART, &msg), ENV_ERR_ENCODING);
        free(mail);
    }
    assert_null(msg);
    free(enc);
}

/* env_mime_read_top: the top-level entity as the reader takes it, for
 * the exploder's forward mode (which sends the body on as it came). */
static void test_mime_read_top(void **state)
{
    static const struct {
        const char *mail, *type;
        bool smime, base64;
        const char *stop; /* the body from the base64 decoder's stop ("" for none) */
    } ok[] = {
        {"Subject: a\nContent-Type: application/pkcs7-mime; name=smime.p7m\n"
         "Content-Transfer-Encoding: base64\n\nQUJD\n-- \nsig\n",
         "application/pkcs7-mime", true, true, "-- \nsig\n"},
        /* the last of a field given twice, as the reader reads it */
        {"Content-Type: text/plain\nContent-Type: Application/X-PKCS7-MIME\nContent-Transfer-Encoding: 7bit\n"
         "Content-Transfer-Encoding: BASE64 (comment)\n\nQUJD\n",
         "application/x-pkcs7-mime", true, true, ""},
        {"Content-Type: application/pkcs7-mime\nContent-Type: text/plain\n\nQUJD-x\n", "text/plain", false,
         false, "-x\n"},
        /* a CR before the CRLF ends the value; folded values unfolded */
        {"Content-Type:\r\n application/octet-stream;\r\n name*0=smime.;\r\n name*1=p7m\r\n"
         "Content-Transfer-Encoding: base64\r\r\n\r\nQUJD\r\n",
         "application/octet-stream", true, true, ""},
        {"Content-Type: multipart/signed; boundary=b\n\n--b\n", "multipart/signed", false, false, "--b\n"},
        {"Subject: none\n\nbody\n", "", false, false, ""},
    };
    env_mime_top top;
    (void)state;

    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        const char *m = ok[i].mail,
                   *body = strstr(m, "\n\n") != NULL ? strstr(m, "\n\n") + 2 : strstr(m, "\r\n\r\n") + 4;
        size_t len = strlen(m);
        assert_int_equal(env_mime_read_top(m, len, &top), ENV_OK);
        assert_string_equal(top.media_type, ok[i].type);
        assert_int_equal(top.smime, ok[i].smime);
        assert_int_equal(top.base64, ok[i].base64);
        assert_int_equal(top.body, (size_t)(body - m));
        assert_int_equal(top.b64_stop, ok[i].stop[0] ? len - strlen(ok[i].stop) : len);
    }
    /* what the reader refuses, cleared */
    assert_int_equal(env_mime_read_top("no header\n\nbody", 16, &top), ENV_ERR_NOT_CMS);
    assert_int_equal(top.body, 0);
    /* no header line at all: a blank first line (the exploder's mail_split
     * refuses it too), or only an mbox "From " line before it */
    assert_int_equal(env_mime_read_top("\nContent-Type: text/plain\n\nbody", 31, &top), ENV_ERR_NOT_CMS);
    assert_int_equal(top.body, 0);
    assert_int_equal(env_mime_read_top("\r\nbody", 6, &top), ENV_ERR_NOT_CMS);
    assert_int_equal(env_mime_read_top("From a@b Sun Dec  6 13:55:54 2026\n\nbody", 39, &top), ENV_ERR_NOT_CMS);
    assert_int_equal(top.body, 0);
    assert_int_equal(env_mime_read_top("Subject: x\n", 11, &top), ENV_ERR_TRUNCATED);
    assert_int_equal(env_mime_read_top("Subject: x\nContent-Type: a\0b\n\n", 31, &top), ENV_ERR_MIME);
    assert_int_equal(env_mime_read_top(NULL, 0, &top), ENV_ERR_ARGS);
}

static void test_mime_is_smime(void **state)
{
    char long_name[600];
    (void)state;
    assert_true(env_mime_is_smime("application/pkcs7-mime; smime-type=enveloped-data", NULL));
    assert_true(env_mime_is_smime("Application/X-PKCS7-MIME", NULL));
    assert_true(env_mime_is_smime("application/octet-stream; name=smime.p7m", NULL));
    assert_true(env_mime_is_smime("application/octet-stream; a=\"x;name=no.bin\"; name=\"Mail.P7M\"", NULL));
    assert_true(env_mime_is_smime("application/octet-stream", "attachment; filename=\"smime.p7m\""));
    assert_false(env_mime_is_smime("application/octet-stream", NULL));
    assert_false(env_mime_is_smime("application/octet-stream; name=smime.p7s", "attachment; filename=x.bin"));
    assert_false(env_mime_is_smime("application/octet-stream; a=\"name=smime.p7m\"", NULL));
    assert_false(env_mime_is_smime("application/octet-stream; name=", NULL));
    assert_false(env_mime_is_smime("application/pkcs7-mimeX", NULL));
    assert_false(env_mime_is_smime("text/plain; name=smime.p7m", NULL));
    assert_false(env_mime_is_smime(NULL, "attachment; filename=smime.p7m"));
    /* RFC 2231: a client that writes its file names the extended way */
    assert_true(env_mime_is_smime("application/octet-stream; name*=smime.p7m", NULL));
    assert_true(env_mime_is_smime("application/octet-stream; name*=UTF-8''smime.p7m", NULL));
    assert_true(env_mime_is_smime("application/octet-stream; name*=utf-8'en'smime%2Ep7m", NULL));
    assert_true(env_mime_is_smime("application/octet-stream; name*0=smime; name*1=\".p7m\"", NULL));
    assert_true(env_mime_is_smime("application/octet-stream; name*0*=utf-8''my%20mail; name*1=.p7m", NULL));
    assert_true(env_mime_is_smime("application/octet-stream", "attachment; filename*=utf-8''smime.p7m"));
    assert_true(env_mime_is_smime("application/octet-stream", "attachment; filename*0=smime; filename*1=.p7m"));
    assert_false(env_mime_is_smime("application/octet-stream; name*=utf-8''smime.p7s", NULL));
    assert_false(env_mime_is_smime("application/octet-stream; name*1=.p7m", NULL));
    assert_false(env_mime_is_smime("application/octet-stream; name*=x%00.p7m", NULL));
    /* a NUL ends no name early: what follows it counts */
    assert_false(env_mime_is_smime("application/octet-stream; name*=smime.p7m%00.txt", NULL));
    assert_false(env_mime_is_smime("application/octet-stream; name*0*=smime.p7m%00; name*1=.txt", NULL));
    assert_false(env_mime_is_smime("application/octet-stream; name*0=smime.p7m; name*1=.txt", NULL));
    assert_false(env_mime_is_smime("text/plain; name*=smime.p7m", NULL));
    /* a value longer than what is looked at is cut, never overrun */
    memset(long_name, 'a', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    assert_false(env_mime_is_smime(long_name, long_name));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_rsa),  cmocka_unit_test(test_roundtrip_ecdh),
        cmocka_unit_test(test_content_alg_names),
        cmocka_unit_test(test_kari_params),    cmocka_unit_test(test_mime_framing), cmocka_unit_test(test_mime_framing_obs_colon),
        cmocka_unit_test(test_crlf),           cmocka_unit_test(test_sizes), cmocka_unit_test(test_b64_widths), cmocka_unit_test(test_b64_body_faults),
        cmocka_unit_test(test_builders),       cmocka_unit_test(test_rewrap),
        cmocka_unit_test(test_recipient_issuer_names),
        cmocka_unit_test(test_truncated_everywhere), cmocka_unit_test(test_tamper),
        cmocka_unit_test(test_bad_inputs),     cmocka_unit_test(test_input_read_error),
        cmocka_unit_test(test_mime_is_smime),  cmocka_unit_test(test_multipart_part),
        cmocka_unit_test(test_mime_read_top),
        cmocka_unit_test(test_long_header_lines),    cmocka_unit_test(test_header_nul),    cmocka_unit_test(test_mime_long_routing_folded),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
