/*
 * test_gsk.c: the key shipment file (gsk/gsk_file.c) without a token:
 * shipments signed by software CA keys (RSA and EC) read back field for
 * field; every single byte of a file changed (two ways), every
 * truncation, an appended byte, another CA, and signed manifests that are
 * malformed in each way the reader checks are all refused. Transport key
 * files: RSA-3072 accepted, smaller or non-RSA keys and garbage refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "gsk_internal.h"
#include "log.h"
#include "util.h"

struct ca {
    EVP_PKEY *key;
    X509 *cert;
};

static X509 *self_signed(EVP_PKEY *key, const char *cn, bool is_ca)
{
    X509 *c = X509_new();
    X509_NAME *n = X509_NAME_new();

    assert_non_null(c);
    assert_int_equal(X509_set_version(c, 2), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(c), is_ca ? 1 : 2), 1);
    assert_int_equal(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0), 1);
    assert_int_equal(X509_set_subject_name(c, n), 1);
    assert_int_equal(X509_set_issuer_name(c, n), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(c), 0));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(c), 86400));
    assert_int_equal(X509_set_pubkey(c, key), 1);
    assert_true(X509_sign(c, key, EVP_sha256()) > 0);
    X509_NAME_free(n);
    return c;
}

static struct ca ca_new(const char *type)
{
    struct ca ca;
    ca.key = strcmp(type, "rsa") == 0 ? EVP_RSA_gen(2048) : EVP_EC_gen("P-256");
    assert_non_null(ca.key);
    ca.cert = self_signed(ca.key, "test CA", true);
    return ca;
}

static void ca_free(struct ca *ca)
{
    EVP_PKEY_free(ca->key);
    X509_free(ca->cert);
}

static int sw_sign(void *arg, const unsigned char *data, size_t len, unsigned char **sig, size_t *siglen)
{
    EVP_PKEY *key = arg;
    EVP_MD_CTX *mc = EVP_MD_CTX_new();
    size_t n = 0;
    int rc = -1;

    *sig = NULL;
    if (mc == NULL || EVP_DigestSignInit(mc, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(mc, NULL, &n, data, len) != 1 || (*sig = malloc(n)) == NULL ||
        EVP_DigestSign(mc, *sig, &n, data, len) != 1)
        goto out;
    *siglen = n;
    rc = 0;
out:
    EVP_MD_CTX_free(mc);
    return rc;
}

static char *pem_of(X509 *c)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data, *s;
    long n;

    assert_int_equal(PEM_write_bio_X509(b, c), 1);
    n = BIO_get_mem_data(b, &data);
    s = strndup(data, (size_t)n);
    BIO_free(b);
    return s;
}

static unsigned char *bytes(size_t n, unsigned char v)
{
    unsigned char *p = malloc(n);
    assert_non_null(p);
    memset(p, v, n);
    return p;
}

/* A shipment of two group key versions, a secret key and a rejection key. */
static gsk_manifest *sample(void)
{
    gsk_manifest *m = NULL;
    EVP_PKEY *gk = EVP_RSA_gen(2048);
    X509 *gc = self_signed(gk, "eng", false);

    assert_int_equal(gsk_manifest_new(4, &m), GSK_OK);
    util_strlcpy(m->ceremony, "00112233445566778899aabbccddeeff", sizeof(m->ceremony));
    util_strlcpy(m->created, "2025-01-31T12:00:00Z", sizeof(m->created));
    util_strlcpy(m->exported_by, "root", sizeof(m->exported_by));
    util_strlcpy(m->source_token, "groupsrv (serial 1234)", sizeof(m->source_token));
    memset(m->transport_sha256, 'a', 64);
    m->kek_hash = HSM_OAEP_SHA1;
    m->wrapped_kek = bytes(384, 0x11);
    m->wrapped_kek_len = 384;
    util_strlcpy(m->group.name, "eng", sizeof(m->group.name));
    util_strlcpy(m->group.address, "eng@example.org", sizeof(m->group.address));
    util_strlcpy(m->group.methods, "tls,recipient-key,local-key", sizeof(m->group.methods));
    util_strlcpy(m->group.keyspec, "rsa:2048", sizeof(m->group.keyspec));
    m->group.replicable = true;
    util_strlcpy(m->group.member_wrap, "oaep", sizeof(m->group.member_wrap));
    util_strlcpy(m->group.policy, "rewrap=token,secrets=token,reject=token", sizeof(m->group.policy));
    m->complete = true;
    for (size_t i = 0; i < 4; i++) {
        gsk_key *k = &m->entries[i];
        k->kind = i < 2 ? GSK_KIND_GROUP : i == 2 ? GSK_KIND_SECRET : GSK_KIND_REJECT;
        k->version = k->kind == GSK_KIND_REJECT ? 0 : (unsigned)(i % 2 + 1);
        k->current = i == 1;
        (void)snprintf(k->label, sizeof(k->label), "gs:%s:eng:v%zu", gsk_kind_name(k->kind), i);
        memset(k->id, (int)i + 1, 16);
        k->id_len = 16;
        if (k->kind == GSK_KIND_GROUP)
            k->cert_pem = pem_of(gc);
        if (k->kind == GSK_KIND_SECRET)
            memset(k->kek_id, 0x5a, sizeof(k->kek_id));
        k->wrapped = bytes(40 + i, (unsigned char)(0x20 + i));
        k->wrapped_len = 40 + i;
    }
    X509_free(gc);
    EVP_PKEY_free(gk);
    return m;
}

static void written(struct ca *ca, unsigned char **der, size_t *len)
{
    gsk_manifest *m = sample();
    assert_int_equal(gsk_shipment_write(m, ca->cert, sw_sign, ca->key, der, len), GSK_OK);
    gsk_manifest_free(m);
}

static void test_roundtrip(void **state)
{
    const char *types[] = {"rsa", "ec"};

    (void)state;
    for (size_t t = 0; t < 2; t++) {
        struct ca ca = ca_new(types[t]);
        gsk_manifest *want = sample(), *got = NULL;
        unsigned char *der = NULL;
        size_t len = 0;

        assert_int_equal(gsk_shipment_write(want, ca.cert, sw_sign, ca.key, &der, &len), GSK_OK);
        assert_int_equal(gsk_shipment_read(der, len, ca.cert, &got), GSK_OK);
        assert_string_equal(got->ceremony, want->ceremony);
        assert_string_equal(got->signer_ca_sha256, want->signer_ca_sha256);
        assert_string_equal(got->signer_algorithm, t == 0 ? "sha256WithRSAEncryption" : "ecdsa-with-SHA256");
        assert_string_equal(got->transport_sha256, want->transport_sha256);
        assert_string_equal(got->group.methods, "tls,recipient-key,local-key");
        assert_true(got->group.replicable && !got->group.allow_pkcs1v15 && got->complete);
        assert_string_equal(got->group.member_wrap, "oaep");
        assert_string_equal(got->group.policy, "rewrap=token,secrets=token,reject=token");
        assert_int_equal(got->kek_hash, HSM_OAEP_SHA1);
        assert_int_equal(got->wrapped_kek_len, 384);
        assert_int_equal(got->n_entries, 4);
        for (size_t i = 0; i < 4; i++) {
            assert_int_equal(got->entries[i].kind, want->entries[i].kind);
            assert_int_equal(got->entries[i].version, want->entries[i].version);
            assert_int_equal(got->entries[i].current, want->entries[i].current);
            assert_string_equal(got->entries[i].label, want->entries[i].label);
            assert_int_equal(got->entries[i].id_len, 16);
            assert_memory_equal(got->entries[i].id, want->entries[i].id, 16);
            assert_int_equal(got->entries[i].wrapped_len, want->entries[i].wrapped_len);
            assert_memory_equal(got->entries[i].wrapped, want->entries[i].wrapped, want->entries[i].wrapped_len);
        }
        assert_string_equal(got->entries[0].cert_pem, want->entries[0].cert_pem);
        assert_memory_equal(got->entries[2].kek_id, want->entries[2].kek_id, 16);
        assert_int_equal(gsk_manifest_find(got, GSK_KIND_GROUP, 2), 1);
        assert_int_equal(gsk_manifest_find(got, GSK_KIND_REJECT, 0), 3);
        assert_int_equal(gsk_manifest_find(got, GSK_KIND_SECRET, 9), -1);
        gsk_manifest_free(want);
        gsk_manifest_free(got);
        free(der);
        ca_free(&ca);
    }
}

/* Every byte changed (a low bit of every byte, and a high bit of every
 * seventh: the DER lengths and tags as well as the text), every
 * truncation, one byte more. */
static void test_every_byte(void **state)
{
    struct ca ca = ca_new("rsa");
    unsigned char *der = NULL, *copy;
    size_t len = 0, accepted = 0;
    const unsigned char flips[2] = {0x01, 0x80};
    gsk_manifest *m = NULL;

    (void)state;
    written(&ca, &der, &len);
    assert_true(len > 2000);
    copy = malloc(len + 1);
    assert_non_null(copy);
    for (size_t i = 0; i < len; i++) {
        for (size_t f = 0; f < (i % 7 == 0 ? 2u : 1u); f++) {
            memcpy(copy, der, len);
            copy[i] ^= flips[f];
            if (gsk_shipment_read(copy, len, ca.cert, &m) == GSK_OK) {
                accepted++;
                print_error("accepted with byte %zu ^ 0x%02x\n", i, flips[f]);
                gsk_manifest_free(m);
            }
        }
    }
    for (size_t n = 0; n < len; n++)
        if (gsk_shipment_read(der, n, ca.cert, &m) == GSK_OK) {
            accepted++;
            gsk_manifest_free(m);
        }
    memcpy(copy, der, len);
    copy[len] = 0;
    assert_int_equal(gsk_shipment_read(copy, len + 1, ca.cert, &m), GSK_ERR_FORMAT);
    assert_int_equal(accepted, 0);
    assert_int_equal(gsk_shipment_read(der, len, ca.cert, &m), GSK_OK);
    gsk_manifest_free(m);
    free(copy);
    free(der);
    ca_free(&ca);
}

static void test_other_ca(void **state)
{
    struct ca ca = ca_new("rsa"), other = ca_new("rsa"), ec = ca_new("ec");
    unsigned char *der = NULL;
    size_t len = 0;
    gsk_manifest *m = NULL;

    (void)state;
    written(&other, &der, &len);
    assert_int_equal(gsk_shipment_read(der, len, ca.cert, &m), GSK_ERR_SIGNER);
    assert_non_null(strstr(gsk_err_detail(), "not the trusted CA"));
    assert_int_equal(gsk_shipment_read(der, len, ec.cert, &m), GSK_ERR_SIGNER);
    assert_null(m);
    /* The same CA key under a renewed certificate (ca renew-cert): the
     * file is bound to the certificate it names, and the refusal says so. */
    X509 *renewed = self_signed(other.key, "test CA", true);
    assert_int_equal(X509_gmtime_adj(X509_getm_notAfter(renewed), 2 * 86400) != NULL, 1);
    assert_true(X509_sign(renewed, other.key, EVP_sha256()) > 0);
    assert_int_equal(gsk_shipment_read(der, len, renewed, &m), GSK_ERR_SIGNER);
    assert_non_null(strstr(gsk_err_detail(), "the trusted CA's key under its certificate"));
    assert_null(m);
    X509_free(renewed);
    free(der);
    ca_free(&ca);
    ca_free(&other);
    ca_free(&ec);
}

/* Signs arbitrary manifest text into a frame of format fmt, as a forger
 * with the CA key (or a later groupsrv) would. */
static void frame_as(struct ca *ca, const char *fmt, const char *text, unsigned char **der, size_t *len)
{
    GSK_FILE *f = GSK_FILE_new();
    unsigned char *sig = NULL, *p = NULL;
    size_t siglen = 0;
    int n;

    assert_int_equal(sw_sign(ca->key, (const unsigned char *)text, strlen(text), &sig, &siglen), 0);
    assert_int_equal(ASN1_STRING_set(f->format, fmt, -1), 1);
    assert_int_equal(ASN1_OCTET_STRING_set(f->manifest, (const unsigned char *)text, (int)strlen(text)), 1);
    assert_int_equal(ASN1_OCTET_STRING_set(f->signature, sig, (int)siglen), 1);
    n = i2d_GSK_FILE(f, &p);
    assert_true(n > 0);
    *der = malloc((size_t)n);
    memcpy(*der, p, (size_t)n);
    *len = (size_t)n;
    OPENSSL_free(p);
    GSK_FILE_free(f);
    free(sig);
}

static void frame(struct ca *ca, const char *text, unsigned char **der, size_t *len)
{
    frame_as(ca, GSK_FORMAT, text, der, len);
}

/* Replaces the first occurrence of from in s by to (fresh string). */
static char *subst(const char *s, const char *from, const char *to)
{
    const char *at = strstr(s, from);
    char *r;

    assert_non_null(at);
    if (at == NULL)
        return NULL;
    size_t head = (size_t)(at - s), tl = strlen(to), rest = strlen(at + strlen(from));

    assert_non_null(r = malloc(head + tl + rest + 1));
    memcpy(r, s, head);
    memcpy(r + head, to, tl);
    memcpy(r + head + tl, at + strlen(from), rest + 1);
    return r;
}

static void test_malformed_manifests(void **state)
{
    struct ca ca = ca_new("rsa");
    unsigned char *der = NULL;
    size_t len = 0;
    GSK_FILE *f;
    const unsigned char *p;
    char *good;
    gsk_manifest *m = NULL;
    /* Each edit makes a signed manifest the reader must refuse. */
    const char *edits[][2] = {
        {"\"format\": \"groupsrv-key-shipment-1\"", "\"format\": \"groupsrv-key-shipment-2\""},
        {"\"ceremony\"", "\"extra\": 1, \"ceremony\""},
        {"\"ceremony\"", "\"ceremony\": \"x\", \"ceremony\""},
        {"\"kind\": \"reject\"", "\"kind\": \"private\""},
        {"\"state\": \"current\"", "\"state\": \"new\""},
        {"\"version\": 2", "\"version\": 0"},
        {"\"version\": 2", "\"version\": \"2\""},
        {"\"wrapping\": \"RSA-OAEP-SHA1\"", "\"wrapping\": \"RSA-PKCS\""},
        {"\"algorithm\": \"AES-256\"", "\"algorithm\": \"AES-128\""},
        {"\"wrapping\": \"AES-KEY-WRAP-PAD\"", "\"wrapping\": \"AES-KEY-WRAP\""},
        {"\"id\": \"01", "\"id\": \"0G"},
        {"\"id\": \"01", "\"id\": \"1"},
        {"\"kek_id\": \"5a", "\"kek_id\": \""},
        {"\"label\": \"gs:group:eng:v1\"", "\"label\": \"gs:group:eng:v0\""}, /* a duplicate label */
        {"\"label\": \"gs:group:eng:v0\"", "\"label\": \"bad\\nlabel\""},
        {"\"replicable\": true", "\"replicable\": 1"},
        {"\"methods\": [", "\"methods\": [\"a,b\", "},
        {"-----BEGIN CERTIFICATE-----", "-----BEGIN CERTIFICATX-----"},
        {"\"wrapped\": \"", "\"wrapped\": \"!"},
        {"\"keys\": [", "\"keys\": 1, \"k\": ["},
        {"\"complete\": true", "\"complete\": \"yes\""},
        {"\"member_wrap\": \"oaep\"", "\"member_wrap\": \"rsa\""},
        {"\"member_wrap\": \"oaep\"", "\"member_wrap\": 1"},
        {"\"policy\": \"rewrap", "\"policy\": \"\\nrewrap"},
        {"\"policy\": \"rewrap", "\"policy\": [\"rewrap\"], \"x\": \"rewrap"},
    };

    (void)state;
    written(&ca, &der, &len);
    p = der;
    f = d2i_GSK_FILE(NULL, &p, (long)len);
    assert_non_null(f);
    good = strndup((const char *)ASN1_STRING_get0_data(f->manifest), (size_t)ASN1_STRING_length(f->manifest));
    GSK_FILE_free(f);
    free(der);
    /* The unedited text re-signed is fine: the edits are what is refused. */
    frame(&ca, good, &der, &len);
    assert_int_equal(gsk_shipment_read(der, len, ca.cert, &m), GSK_OK);
    gsk_manifest_free(m);
    free(der);
    for (size_t i = 0; i < sizeof(edits) / sizeof(edits[0]); i++) {
        char *bad = subst(good, edits[i][0], edits[i][1]);
        frame(&ca, bad, &der, &len);
        if (gsk_shipment_read(der, len, ca.cert, &m) != GSK_ERR_FORMAT)
            fail_msg("edit %zu (%s) accepted", i, edits[i][1]);
        assert_null(m);
        free(der);
        free(bad);
    }
    frame(&ca, "not json", &der, &len);
    assert_int_equal(gsk_shipment_read(der, len, ca.cert, &m), GSK_ERR_FORMAT);
    free(der);
    free(good);
    ca_free(&ca);
}

/* A file of a later format (a newer groupsrv's) is named as such, with
 * the way out; it said "not a key shipment", as for damage. Other
 * formats are still "not a key shipment". */
static void test_newer_format(void **state)
{
    struct ca ca = ca_new("rsa");
    unsigned char *der = NULL;
    size_t len = 0;
    gsk_manifest *m = NULL;
    const char *others[] = {"groupsrv-key-shipment-0", "groupsrv-key-shipment-02", "groupsrv-key-shipment-2x",
                            "groupsrv-key-shipment-", "groupsrv-key-shipment-1234567", "other-format-2"};

    (void)state;
    frame_as(&ca, "groupsrv-key-shipment-2", "{}", &der, &len);
    assert_int_equal(gsk_shipment_read(der, len, ca.cert, &m), GSK_ERR_FORMAT);
    assert_null(m);
    assert_string_equal(gsk_err_detail(), "a key shipment of format groupsrv-key-shipment-2, made by a newer "
                                          "groupsrv: this one reads groupsrv-key-shipment-1 only; import it with "
                                          "a groupsrv as new as the sender's");
    free(der);
    frame_as(&ca, "groupsrv-key-shipment-999999", "{}", &der, &len);
    assert_int_equal(gsk_shipment_read(der, len, ca.cert, &m), GSK_ERR_FORMAT);
    assert_non_null(strstr(gsk_err_detail(), "format groupsrv-key-shipment-999999, made by a newer groupsrv"));
    free(der);
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
        frame_as(&ca, others[i], "{}", &der, &len);
        assert_int_equal(gsk_shipment_read(der, len, ca.cert, &m), GSK_ERR_FORMAT);
        if (strcmp(gsk_err_detail(), "not a key shipment: format is not groupsrv-key-shipment-1") != 0)
            fail_msg("format %s: %s", others[i], gsk_err_detail());
        free(der);
    }
    ca_free(&ca);
}

static char *pubkey_pem(EVP_PKEY *k, const char *preamble)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data, *s;
    long n;

    BIO_puts(b, preamble);
    assert_int_equal(PEM_write_bio_PUBKEY(b, k), 1);
    n = BIO_get_mem_data(b, &data);
    s = strndup(data, (size_t)n);
    BIO_free(b);
    return s;
}

static void test_transport_file(void **state)
{
    EVP_PKEY *r3072 = EVP_RSA_gen(3072), *r2048 = EVP_RSA_gen(2048), *ec = EVP_EC_gen("P-384");
    char *ok = pubkey_pem(r3072, "token: x\nsha256: 0000\n"), *small = pubkey_pem(r2048, ""), *e = pubkey_pem(ec, "");
    unsigned char *spki = NULL;
    size_t len = 0;
    char fp[65], fp2[65], spoken[80];

    (void)state;
    assert_int_equal(gsk_transport_read((unsigned char *)ok, strlen(ok), &spki, &len, fp), GSK_OK);
    gsk_fingerprint(spki, len, fp2);
    assert_string_equal(fp, fp2);
    gsk_fingerprint_spoken(fp, spoken);
    assert_int_equal(strlen(spoken), 79);
    assert_true(spoken[4] == ' ' && spoken[74] == ' ');
    free(spki);
    assert_int_equal(gsk_transport_read((unsigned char *)small, strlen(small), &spki, &len, fp), GSK_ERR_FORMAT);
    assert_null(spki);
    assert_int_equal(gsk_transport_read((unsigned char *)e, strlen(e), &spki, &len, fp), GSK_ERR_FORMAT);
    assert_int_equal(gsk_transport_read((const unsigned char *)"garbage", 7, &spki, &len, fp), GSK_ERR_FORMAT);
    free(ok);
    free(small);
    free(e);
    EVP_PKEY_free(r3072);
    EVP_PKEY_free(r2048);
    EVP_PKEY_free(ec);
}

/* The "unwraps:" line of a transport key file: what the receiving token's
 * key unwraps with; none (an older groupsrv's file) is any hash. */
static void test_transport_hashes(void **state)
{
    static const struct {
        const char *text;
        gsk_err want;
        unsigned mask;
    } cases[] = {
        {"token: x\nunwraps: RSA-OAEP-SHA1\n-----BEGIN PUBLIC KEY-----\n", GSK_OK, 1u << HSM_OAEP_SHA1},
        {"unwraps: RSA-OAEP-SHA256\n", GSK_OK, 1u << HSM_OAEP_SHA256},
        {"unwraps: RSA-OAEP-SHA256, RSA-OAEP-SHA1\r\n", GSK_OK, (1u << HSM_OAEP_SHA1) | (1u << HSM_OAEP_SHA256)},
        {"token: x\nsha256: 0000\n-----BEGIN PUBLIC KEY-----\nunwraps: RSA-OAEP-SHA1\n", GSK_OK, 0},
        {"", GSK_OK, 0},
        {"unwraps: RSA-OAEP-SHA2\n", GSK_ERR_FORMAT, 0},
        {"unwraps: RSA-OAEP-SHA1x RSA-PKCS\n", GSK_ERR_FORMAT, 0},
        {"unwraps:\n", GSK_ERR_FORMAT, 0},
    };
    unsigned mask;

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        mask = 99;
        assert_int_equal(gsk_transport_hashes((const unsigned char *)cases[i].text, strlen(cases[i].text), &mask),
                         cases[i].want);
        assert_int_equal(mask, cases[i].mask);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transport_hashes),
        cmocka_unit_test(test_roundtrip),           cmocka_unit_test(test_every_byte),
        cmocka_unit_test(test_other_ca),            cmocka_unit_test(test_malformed_manifests),
        cmocka_unit_test(test_transport_file),     cmocka_unit_test(test_newer_format),
    };
    log_init("test_gsk", LOG_LVL_ERROR, NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
