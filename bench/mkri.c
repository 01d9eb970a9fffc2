/*
 * mkri: makes the input the benchmarks send. Encrypts a small message to a
 * certificate with envelope/ (as a sender would) and writes its first
 * RecipientInfo as DER: a KTRI (RSA-OAEP) for an RSA certificate, a KARI
 * (ECDH) for an EC one. The same file feeds p11rate (--ri) and
 * unwrap-load (--ri), so the server and the limit decrypt the same thing.
 *
 *   mkri --cert GROUP.pem [--kt oaep-sha1|oaep-sha256] --out RI.der [--ek-out EK.bin]
 *
 * --ek-out also writes the bare encrypted key of a KTRI, the input of
 * `pkcs11-tool --decrypt` in the one-process-per-message comparison.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "envelope.h"
#include "util.h"

#define PROG "mkri"

int main(int argc, char **argv)
{
    const char *cert_path = NULL, *out_path = NULL, *ek_path = NULL;
    env_encrypt_opts eo;
    X509 *cert = NULL;
    FILE *f = NULL;
    BIO *in = NULL, *mem = NULL;
    env_message *msg = NULL;
    env_recipient *ri = NULL;
    unsigned char *der = NULL;
    size_t len = 0;
    env_err e;
    int rc = 1, a;
    static const char text[] = "groupsrv benchmark message\n";

    memset(&eo, 0, sizeof(eo));
    eo.out_format = ENV_FORMAT_DER;
    for (a = 1; a + 1 < argc; a += 2) {
        if (strcmp(argv[a], "--cert") == 0)
            cert_path = argv[a + 1];
        else if (strcmp(argv[a], "--out") == 0)
            out_path = argv[a + 1];
        else if (strcmp(argv[a], "--ek-out") == 0)
            ek_path = argv[a + 1];
        else if (strcmp(argv[a], "--kt") == 0 && strcmp(argv[a + 1], "oaep-sha1") == 0)
            eo.kt = ENV_KT_RSA_OAEP_SHA1;
        else if (strcmp(argv[a], "--kt") == 0 && strcmp(argv[a + 1], "oaep-sha256") == 0)
            eo.kt = ENV_KT_RSA_OAEP_SHA256;
        else
            break;
    }
    if (a != argc || cert_path == NULL || out_path == NULL) {
        fprintf(stderr, "usage: " PROG " --cert GROUP.pem [--kt oaep-sha1|oaep-sha256] --out RI.der [--ek-out EK.bin]\n");
        return 1;
    }
    if ((f = fopen(cert_path, "r")) == NULL || (cert = PEM_read_X509(f, NULL, util_pem_no_passphrase, NULL)) == NULL) {
        fprintf(stderr, PROG ": %s: not a PEM certificate\n", cert_path);
        goto out;
    }
    if ((in = BIO_new_mem_buf(text, (int)sizeof(text) - 1)) == NULL || (mem = BIO_new(BIO_s_mem())) == NULL)
        goto out;
    if ((e = env_encrypt(&eo, &cert, 1, in, mem)) != ENV_OK ||
        (e = env_message_read(mem, ENV_FORMAT_DER, 0, &msg)) != ENV_OK ||
        (e = env_message_recipient_der(msg, 0, &der, &len)) != ENV_OK) {
        fprintf(stderr, PROG ": %s\n", env_strerror(e));
        goto out;
    }
    if (util_write_file_atomic(out_path, der, len, 0644) != 0) {
        fprintf(stderr, PROG ": cannot write %s\n", out_path);
        goto out;
    }
    if (ek_path != NULL) {
        const unsigned char *ek;
        size_t eklen;
        if ((e = env_recipient_parse(der, len, &ri)) != ENV_OK || env_recipient_type(ri) != ENV_RI_KTRI ||
            (e = env_recipient_encrypted_key(ri, NULL, &ek, &eklen)) != ENV_OK ||
            util_write_file_atomic(ek_path, ek, eklen, 0644) != 0) {
            fprintf(stderr, PROG ": cannot write the encrypted key (KTRI only) to %s\n", ek_path);
            goto out;
        }
    }
    rc = 0;
out:
    env_recipient_free(ri);
    if (f != NULL)
        fclose(f);
    free(der);
    env_message_free(msg);
    BIO_free(in);
    BIO_free(mem);
    X509_free(cert);
    return rc;
}
