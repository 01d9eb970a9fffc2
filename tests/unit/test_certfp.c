/*
 * test_certfp.c: groupsrv/ca.c's gs_cert_record_fingerprint, what
 * `member list` shows for each member. The same fingerprint as a full
 * parse (gs_cert_parse + gs_cert_fingerprint) for every form a record
 * can hold, and "-" (GS_ERR_CERT) where that parse refuses; and its cost
 * per certificate, counted in OpenSSL allocations, not in seconds: the
 * full parse of OpenSSL 3.0 decodes the public key through a new decoder
 * context (hundreds of allocations, about 0.25 ms), which made a listing
 * of 100,000 members take half a minute.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "ca.h"
#include "gs_error.h"

static size_t allocs; /* OpenSSL's allocations since the last reset */

static void *count_malloc(size_t n, const char *file, int line)
{
    (void)file;
    (void)line;
    allocs++;
    return malloc(n);
}

static void *count_realloc(void *p, size_t n, const char *file, int line)
{
    (void)file;
    (void)line;
    allocs++;
    return realloc(p, n);
}

static void count_free(void *p, const char *file, int line)
{
    (void)file;
    (void)line;
    free(p);
}

/* A self-signed certificate with an RSA-2048 or a P-256 key. */
static X509 *make_cert(bool rsa)
{
    EVP_PKEY *k = rsa ? EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048)
                      : EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *x = X509_new();
    X509_NAME *n = X509_NAME_new();
    assert_non_null(k);
    assert_non_null(x);
    assert_non_null(n);
    assert_int_equal(X509_set_version(x, 2), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), 7), 1);
    assert_int_equal(
        X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"m@example.org", -1, -1, 0),
        1);
    assert_int_equal(X509_set_subject_name(x, n), 1);
    assert_int_equal(X509_set_issuer_name(x, n), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), 0));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 3600));
    assert_int_equal(X509_set_pubkey(x, k), 1);
    assert_true(X509_sign(x, k, EVP_sha256()) > 0);
    X509_NAME_free(n);
    EVP_PKEY_free(k);
    return x;
}

static char *pem_of(X509 *x, const char *before, const char *after)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data = NULL, *out;
    long n;
    assert_non_null(b);
    assert_true(BIO_puts(b, before) >= 0);
    assert_int_equal(PEM_write_bio_X509(b, x), 1);
    assert_true(BIO_puts(b, after) >= 0);
    n = BIO_get_mem_data(b, &data);
    assert_true(n > 0);
    out = calloc(1, (size_t)n + 1);
    assert_non_null(out);
    memcpy(out, data, (size_t)n);
    BIO_free(b);
    return out;
}

/* The full parse's answer for a record: the fingerprint, or "" refused. */
static void full_parse(const char *rec, size_t len, char fp[65])
{
    X509 *x = NULL;
    fp[0] = '\0';
    if (gs_cert_parse((const unsigned char *)rec, len, &x) == GS_OK)
        gs_cert_fingerprint(x, fp);
    X509_free(x);
}

static void same_as_full_parse(const char *rec)
{
    char want[65], got[65];
    full_parse(rec, strlen(rec), want);
    gs_err e = gs_cert_record_fingerprint(rec, got);
    assert_int_equal(e, want[0] != '\0' ? GS_OK : GS_ERR_CERT);
    assert_string_equal(got, want);
}

static void test_same_fingerprint(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++) {
        X509 *x = make_cert(i == 0);
        char *plain = pem_of(x, "", ""), *junk_after = pem_of(x, "", "trailing text\n"),
             *key_first = pem_of(x, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "");
        char fp[65];
        same_as_full_parse(plain);
        same_as_full_parse(junk_after);
        same_as_full_parse(key_first);
        gs_cert_fingerprint(x, fp);
        assert_int_equal(gs_cert_record_fingerprint(plain, fp), GS_OK);
        /* a damaged record: a byte of the base64 changed inside the body */
        char *bad = strdup(plain);
        assert_non_null(bad);
        bad[strlen(bad) / 2] = bad[strlen(bad) / 2] == 'A' ? 'B' : 'A';
        same_as_full_parse(bad);
        /* the signature cut off: the full parse refuses it, so does this */
        char *cut = strdup(plain);
        const char *end = strstr(cut, "-----END");
        assert_non_null(end);
        memmove(cut + (end - cut) - 70, end, strlen(end) + 1);
        same_as_full_parse(cut);
        assert_int_equal(gs_cert_record_fingerprint(cut, fp), GS_ERR_CERT);
        assert_string_equal(fp, "");
        free(bad);
        free(cut);
        free(plain);
        free(junk_after);
        free(key_first);
        X509_free(x);
    }
    char fp[65];
    assert_int_equal(gs_cert_record_fingerprint("", fp), GS_ERR_CERT);
    assert_int_equal(gs_cert_record_fingerprint("not a certificate", fp), GS_ERR_CERT);
}

/* A listing's cost per member: a bounded number of allocations for the
 * fingerprint of a plain PEM record, not a decoder context's. */
static void test_cost_per_record(void **state)
{
    X509 *x = make_cert(true);
    char *pem;
    char fp[65];
    size_t full, fast;
    (void)state;
    pem = pem_of(x, "", "");
    gs_cert_record_fingerprint(pem, fp); /* first use: the digest's fetch */
    full_parse(pem, strlen(pem), fp);
    allocs = 0;
    full_parse(pem, strlen(pem), fp);
    full = allocs;
    allocs = 0;
    assert_int_equal(gs_cert_record_fingerprint(pem, fp), GS_OK);
    fast = allocs;
    print_message("allocations per certificate: full parse %zu, record fingerprint %zu\n", full, fast);
    assert_true(fast <= 300);
    free(pem);
    X509_free(x);
}

int main(void)
{
    if (CRYPTO_set_mem_functions(count_malloc, count_realloc, count_free) != 1)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_fingerprint),
        cmocka_unit_test(test_cost_per_record),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
