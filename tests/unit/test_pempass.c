/*
 * test_pempass.c: certificates the clients read from a group server's
 * answer (groupmail's gm_pem_certs; the exploder's group certificate
 * reads) never ask a pass phrase for a PEM block marked encrypted.
 * OpenSSL's default callback asks on the terminal and, with none, reads
 * the pass phrase from standard input: a server's answer could make
 * groupmail prompt the user ("Enter PEM pass phrase:") or read a line of
 * what it was given on standard input.
 * Also the restclient's client certificate file (client_pkey, a key on a
 * token) and the key ceremony's transport key file (groupsrv key
 * export/import reads it through gsk_transport_read).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "gm.h"
#include "gsk.h"
#include "prepare.h"
#include "restclient.h"

#define PASS "secret"

static X509 *cert;
static EVP_PKEY *cert_key; /* the certificate's key */

/* A self-signed certificate. */
static int setup(void **state)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *n;

    (void)state;
    assert_non_null(k);
    assert_non_null(x);
    assert_int_equal(X509_set_version(x, 2), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), 7), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), 0));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 3600));
    n = X509_get_subject_name(x);
    assert_int_equal(
        X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"group", -1, -1, 0), 1);
    assert_int_equal(X509_set_issuer_name(x, n), 1);
    assert_int_equal(X509_set_pubkey(x, k), 1);
    assert_true(X509_sign(x, k, EVP_sha256()) > 0);
    cert_key = k;
    cert = x;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    X509_free(cert);
    EVP_PKEY_free(cert_key);
    return 0;
}

/* The certificate as PEM, its block encrypted under PASS when encrypt is
 * set (Proc-Type: 4,ENCRYPTED). Caller frees. */
static char *cert_pem(bool encrypt)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data = NULL, *out;
    long len;

    assert_non_null(b);
    if (encrypt)
        assert_int_equal(PEM_ASN1_write_bio((i2d_of_void *)i2d_X509, PEM_STRING_X509, b, cert,
                                            EVP_aes_128_cbc(), (const unsigned char *)PASS, (int)strlen(PASS),
                                            NULL, NULL),
                         1);
    else
        assert_int_equal(PEM_write_bio_X509(b, cert), 1);
    len = BIO_get_mem_data(b, &data);
    assert_true(len > 0);
    out = calloc(1, (size_t)len + 1);
    assert_non_null(out);
    memcpy(out, data, (size_t)len);
    BIO_free(b);
    return out;
}

/* An RSA-3072 public key as PEM (a transport key file), its block
 * encrypted under PASS when encrypt is set. Caller frees. */
static char *pubkey_pem(bool encrypt)
{
    EVP_PKEY *k = EVP_RSA_gen(3072);
    BIO *b = BIO_new(BIO_s_mem());
    char *data = NULL, *out;
    long len;

    assert_non_null(k);
    assert_non_null(b);
    if (encrypt)
        assert_int_equal(PEM_ASN1_write_bio((i2d_of_void *)i2d_PUBKEY, PEM_STRING_PUBLIC, b, k, EVP_aes_128_cbc(),
                                            (const unsigned char *)PASS, (int)strlen(PASS), NULL, NULL),
                         1);
    else
        assert_int_equal(PEM_write_bio_PUBKEY(b, k), 1);
    len = BIO_get_mem_data(b, &data);
    assert_true(len > 0);
    out = calloc(1, (size_t)len + 1);
    assert_non_null(out);
    memcpy(out, data, (size_t)len);
    BIO_free(b);
    EVP_PKEY_free(k);
    return out;
}

enum reader { GM_PEM_CERTS, XP_CERT_CHECK, XP_GROUP_CERT_KNOWN, REST_PKEY_CERT, GSK_TRANSPORT };

/* gs_rest_new with client_pkey and the certificate file holding pem:
 * whether it took the certificate. */
static int rest_pkey_cert_taken(const char *pem)
{
    char path[] = "/tmp/test_pempass.XXXXXX";
    int fd = mkstemp(path), taken;
    gs_rest_opts o = {0};
    gs_rest *r = NULL;

    if (fd < 0 || write(fd, pem, strlen(pem)) != (ssize_t)strlen(pem) || close(fd) != 0)
        _exit(3);
    o.base_url = "https://127.0.0.1:1";
    o.cert_file = path;
    o.client_pkey = cert_key;
    taken = gs_rest_new(&o, &r) == GS_REST_OK;
    gs_rest_free(r);
    (void)unlink(path);
    return taken;
}

/* Whether reader took the certificate in pem, run in a child with no
 * controlling terminal and PASS on standard input (where OpenSSL's
 * default callback reads a pass phrase then): 1 taken, 0 not. */
static int read_in_child(enum reader which, const char *pem)
{
    int fds[2], status = 0;
    pid_t pid;

    assert_int_equal(pipe(fds), 0);
    assert_int_equal(write(fds[1], PASS "\n", strlen(PASS) + 1), (ssize_t)strlen(PASS) + 1);
    close(fds[1]);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int taken = 0;
        (void)setsid(); /* no terminal to ask on: OpenSSL's default reads standard input */
        if (dup2(fds[0], 0) != 0)
            _exit(3);
        alarm(20); /* a read that waits is a failure, not a hang */
        if (which == GM_PEM_CERTS) {
            STACK_OF(X509) *sk = NULL;
            taken = gm_pem_certs((const unsigned char *)pem, strlen(pem), &sk) == 0;
            sk_X509_pop_free(sk, X509_free);
        } else if (which == XP_CERT_CHECK) {
            char *subject = NULL;
            taken = xp_cert_check(pem, &subject) == XP_OK;
            free(subject);
        } else if (which == XP_GROUP_CERT_KNOWN) {
            taken = xp_group_cert_known(pem, cert);
        } else if (which == REST_PKEY_CERT) {
            taken = rest_pkey_cert_taken(pem);
        } else {
            unsigned char *spki = NULL;
            size_t spki_len = 0;
            char fp[65];
            taken = gsk_transport_read((const unsigned char *)pem, strlen(pem), &spki, &spki_len, fp) == GSK_OK;
            free(spki);
        }
        _exit(taken ? 1 : 0);
    }
    close(fds[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static void test_gm_pem_certs_no_passphrase(void **state)
{
    (void)state;
    char *plain = cert_pem(false), *enc = cert_pem(true);
    assert_int_equal(read_in_child(GM_PEM_CERTS, plain), 1);
    assert_int_equal(read_in_child(GM_PEM_CERTS, enc), 0);
    free(plain);
    free(enc);
}

static void test_xp_cert_check_no_passphrase(void **state)
{
    (void)state;
    char *plain = cert_pem(false), *enc = cert_pem(true);
    assert_int_equal(read_in_child(XP_CERT_CHECK, plain), 1);
    assert_int_equal(read_in_child(XP_CERT_CHECK, enc), 0);
    free(plain);
    free(enc);
}

static void test_xp_group_cert_known_no_passphrase(void **state)
{
    (void)state;
    char *plain = cert_pem(false), *enc = cert_pem(true);
    assert_int_equal(read_in_child(XP_GROUP_CERT_KNOWN, plain), 1);
    assert_int_equal(read_in_child(XP_GROUP_CERT_KNOWN, enc), 0);
    free(plain);
    free(enc);
}

static void test_rest_pkey_cert_no_passphrase(void **state)
{
    (void)state;
    const char *backend = NULL;
    if (!gs_rest_pkey_supported(&backend))
        skip(); /* a libcurl without OpenSSL takes no client_pkey */
    char *plain = cert_pem(false), *enc = cert_pem(true);
    assert_int_equal(read_in_child(REST_PKEY_CERT, plain), 1);
    assert_int_equal(read_in_child(REST_PKEY_CERT, enc), 0);
    free(plain);
    free(enc);
}

static void test_gsk_transport_read_no_passphrase(void **state)
{
    (void)state;
    char *plain = pubkey_pem(false), *enc = pubkey_pem(true);
    assert_int_equal(read_in_child(GSK_TRANSPORT, plain), 1);
    assert_int_equal(read_in_child(GSK_TRANSPORT, enc), 0);
    free(plain);
    free(enc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gm_pem_certs_no_passphrase),
        cmocka_unit_test(test_xp_cert_check_no_passphrase),
        cmocka_unit_test(test_xp_group_cert_known_no_passphrase),
        cmocka_unit_test(test_rest_pkey_cert_no_passphrase),
        cmocka_unit_test(test_gsk_transport_read_no_passphrase),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
