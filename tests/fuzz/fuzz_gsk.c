/*
 * fuzz_gsk: the key ceremony's files (gsk/gsk_file.c), which arrive from
 * another server's operators or the group's administrator. The first
 * input byte picks what the rest is:
 *
 *   0  a .gsk file              gsk_shipment_read against the fuzz CA
 *   1  a manifest (JSON)        framed and signed with the fuzz CA key, then
 *                               read: the manifest parser behind the signature
 *   2  a transport key file     gsk_transport_read
 *
 * The fuzz CA is a fixed EC P-256 key and certificate (test material
 * only), so seeds can name it as their signer (sha256 0414200b...).
 * Invariants: an error is one line; a shipment read is within the
 * documented bounds, and written again (gsk_shipment_write) it reads back
 * with the same entries; a transport key is an RSA key of at least 3072
 * bits with a 64-digit fingerprint.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "fuzz.h"
#include "gsk_internal.h"
#include "log.h"

static const char ca_key_pem[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg8dB6K2zDY1lbIwWN\n"
    "EDJbf1ByTIESvRpgmn46eNqdj8ShRANCAATInaBFNqxiPWAGibNBGaB2YTVU96tw\n"
    "09Ro2EL/j/YoJmasUo4etLgo4pFNBxcd5rIbbX3WkqtVmf9u2RybTSyI\n"
    "-----END PRIVATE KEY-----\n";
static const char ca_cert_pem[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBfDCCASGgAwIBAgIUY9dEgJaBErEzquLhNDqScTigKO8wCgYIKoZIzj0EAwIw\n"
    "EjEQMA4GA1UEAwwHZnV6eiBDQTAgFw0yNjEyMDQyMjMwMTBaGA8yMTI2MTExMDIy\n"
    "MzAxMFowEjEQMA4GA1UEAwwHZnV6eiBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEH\n"
    "A0IABMidoEU2rGI9YAaJs0EZoHZhNVT3q3DT1GjYQv+P9igmZqxSjh60uCjikU0H\n"
    "Fx3mshttfdaSq1WZ/27ZHJtNLIijUzBRMB0GA1UdDgQWBBSizge1EgFUhStb6DzI\n"
    "WuFQh4aVFjAfBgNVHSMEGDAWgBSizge1EgFUhStb6DzIWuFQh4aVFjAPBgNVHRMB\n"
    "Af8EBTADAQH/MAoGCCqGSM49BAMCA0kAMEYCIQC4rCnNkxJxXr160bp4w4BzOdNw\n"
    "8MS5/xHyDiGGTExPRgIhAMObnAHnnkTYRs5B1JQPzIxWdxE+w5gqYz8NObotXKdm\n"
    "-----END CERTIFICATE-----\n";

static EVP_PKEY *ca_key;
static X509 *ca_cert;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    BIO *k = BIO_new_mem_buf(ca_key_pem, -1), *c = BIO_new_mem_buf(ca_cert_pem, -1);

    (void)argc;
    (void)argv;
    log_init("fuzz_gsk", LOG_LVL_ERROR, NULL);
    ca_key = k != NULL ? PEM_read_bio_PrivateKey(k, NULL, NULL, NULL) : NULL;
    ca_cert = c != NULL ? PEM_read_bio_X509(c, NULL, NULL, NULL) : NULL;
    BIO_free(k);
    BIO_free(c);
    return ca_key != NULL && ca_cert != NULL ? 0 : -1;
}

static int sign(void *arg, const unsigned char *data, size_t len, unsigned char **sig, size_t *siglen)
{
    EVP_MD_CTX *mc = EVP_MD_CTX_new();
    size_t n = 0;
    int rc = -1;

    (void)arg;
    *sig = NULL;
    if (mc != NULL && EVP_DigestSignInit(mc, NULL, EVP_sha256(), NULL, ca_key) == 1 &&
        EVP_DigestSign(mc, NULL, &n, data, len) == 1 && (*sig = malloc(n)) != NULL &&
        EVP_DigestSign(mc, *sig, &n, data, len) == 1) {
        *siglen = n;
        rc = 0;
    }
    EVP_MD_CTX_free(mc);
    return rc;
}

static bool one_line(const char *s)
{
    return strchr(s, '\n') == NULL && strchr(s, '\r') == NULL;
}

static void check_read(const unsigned char *der, size_t len)
{
    gsk_manifest *m = NULL, *again = NULL;
    unsigned char *der2 = NULL;
    size_t len2 = 0;
    gsk_err e = gsk_shipment_read(der, len, ca_cert, &m);

    if (e != GSK_OK) {
        FUZZ_CHECK(m == NULL && one_line(gsk_err_detail()));
        return;
    }
    FUZZ_CHECK(m->n_entries >= 1 && m->n_entries <= GSK_KEYS_MAX && m->wrapped_kek_len > 0);
    FUZZ_CHECK((gsk_manifest_find(m, GSK_KIND_CA, 0) >= 0) == (m->group.name[0] == '\0'));
    for (size_t i = 0; i < m->n_entries; i++) {
        const gsk_key *k = &m->entries[i];
        FUZZ_CHECK(k->label[0] != '\0' && one_line(k->label) && k->id_len >= 1 && k->wrapped_len >= 1);
        FUZZ_CHECK((k->cert_pem != NULL) == (k->kind == GSK_KIND_GROUP || k->kind == GSK_KIND_CA));
    }
    /* What was read can be written and read again, unchanged. */
    FUZZ_CHECK(gsk_shipment_write(m, ca_cert, sign, NULL, &der2, &len2) == GSK_OK);
    FUZZ_CHECK(gsk_shipment_read(der2, len2, ca_cert, &again) == GSK_OK);
    FUZZ_CHECK(again->n_entries == m->n_entries && strcmp(again->ceremony, m->ceremony) == 0);
    for (size_t i = 0; i < m->n_entries; i++)
        FUZZ_CHECK(strcmp(again->entries[i].label, m->entries[i].label) == 0 &&
                   again->entries[i].wrapped_len == m->entries[i].wrapped_len);
    free(der2);
    gsk_manifest_free(again);
    gsk_manifest_free(m);
}

/* The manifest framed and signed as the CA would (a forger with the key). */
static void check_manifest(const uint8_t *text, size_t len)
{
    GSK_FILE *f = GSK_FILE_new();
    unsigned char *sig = NULL, *der = NULL;
    size_t siglen = 0;
    int n;

    if (f != NULL && len > 0 && len < GSK_FILE_MAX / 2 && sign(NULL, text, len, &sig, &siglen) == 0 &&
        ASN1_STRING_set(f->format, GSK_FORMAT, -1) == 1 && ASN1_OCTET_STRING_set(f->manifest, text, (int)len) == 1 &&
        ASN1_OCTET_STRING_set(f->signature, sig, (int)siglen) == 1 && (n = i2d_GSK_FILE(f, &der)) > 0)
        check_read(der, (size_t)n);
    OPENSSL_free(der);
    free(sig);
    GSK_FILE_free(f);
}

static void check_transport(const uint8_t *text, size_t len)
{
    unsigned char *spki = NULL;
    size_t spki_len = 0;
    char fp[65];

    if (gsk_transport_read(text, len, &spki, &spki_len, fp) == GSK_OK)
        FUZZ_CHECK(spki != NULL && spki_len > 384 && strlen(fp) == 64);
    else
        FUZZ_CHECK(spki == NULL && one_line(gsk_err_detail()));
    {
        unsigned mask = 0;
        if (gsk_transport_hashes(text, len, &mask) == GSK_OK)
            FUZZ_CHECK((mask & ~((1u << HSM_OAEP_SHA1) | (1u << HSM_OAEP_SHA256))) == 0);
        else
            FUZZ_CHECK(mask == 0 && one_line(gsk_err_detail()));
    }
    free(spki);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    switch (data[0] % 3) {
    case 0:
        check_read(data + 1, size - 1);
        break;
    case 1:
        check_manifest(data + 1, size - 1);
        break;
    default:
        check_transport(data + 1, size - 1);
        break;
    }
    ERR_clear_error();
    return 0;
}
