/*
 * provision-decrypt: test helper for tests/integration/provision-*.sh.
 *   provision-decrypt CONF LABEL HEXFILE
 * Opens the token named in CONF, finds the private key LABEL (a group key
 * version, e.g. gs:group:eng:v1), and recovers the content key from the
 * RSA-OAEP (SHA-1) encrypted key in HEXFILE with hsm_decrypt_content_key.
 * Prints the content key in hex. Exit 0 ok, 3 key not on the token,
 * 1 decryption failed, 2 usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "config.h"
#include "groups.h"
#include "hsm.h"
#include "log.h"
#include "util.h"

int main(int argc, char **argv)
{
    struct gs_config *cfg = NULL;
    hsm_ctx *hsm = NULL;
    hsm_key *key = NULL;
    unsigned char *hex = NULL, enc[1024], cek[64];
    size_t hexlen = 0, enclen = 0, ceklen = 0;
    hsm_unwrap_input in;
    char out[2 * sizeof(cek) + 1];
    int rc = 1;
    hsm_err he;

    log_init("provision-decrypt", LOG_LVL_WARN, NULL);
    if (argc != 4) {
        fprintf(stderr, "usage: provision-decrypt CONF LABEL HEXFILE\n");
        return 2;
    }
    if (gs_config_load(argv[1], &cfg) != GS_OK) {
        fprintf(stderr, "provision-decrypt: %s\n", gs_err_detail());
        return 2;
    }
    if (util_read_file(argv[3], 4096, &hex, &hexlen) != UTIL_OK) {
        fprintf(stderr, "provision-decrypt: cannot read %s\n", argv[3]);
        goto out;
    }
    for (size_t i = 0; i + 1 < hexlen && enclen < sizeof(enc); i += 2) {
        int a = util_hex_digit((unsigned char)hex[i]), b = util_hex_digit((unsigned char)hex[i + 1]);
        if (a < 0 || b < 0)
            break;
        enc[enclen++] = (unsigned char)(a * 16 + b);
    }
    if (gs_hsm_open(cfg, &hsm) != GS_OK) {
        fprintf(stderr, "provision-decrypt: %s\n", gs_err_detail());
        goto out;
    }
    he = hsm_key_find(hsm, argv[2], HSM_CLASS_PRIVATE, &key);
    if (he != HSM_OK) {
        fprintf(stderr, "provision-decrypt: key %s: %s\n", argv[2], hsm_strerror(he));
        rc = he == HSM_ERR_KEY_NOT_FOUND ? 3 : 1;
        goto out;
    }
    memset(&in, 0, sizeof(in));
    in.group_key = key;
    in.alg = HSM_KT_RSA_OAEP_SHA1;
    in.encrypted_key = enc;
    in.encrypted_key_len = enclen;
    in.expected_len = 32;
    he = hsm_decrypt_content_key(hsm, &in, cek, sizeof(cek), &ceklen);
    if (he != HSM_OK) {
        fprintf(stderr, "provision-decrypt: decrypt: %s (%s)\n", hsm_strerror(he), hsm_last_error_detail());
        goto out;
    }
    util_hex(cek, ceklen, out);
    printf("%s\n", out);
    OPENSSL_cleanse(out, sizeof(out));
    rc = 0;
out:
    OPENSSL_cleanse(cek, sizeof(cek));
    free(hex);
    hsm_key_free(key);
    hsm_close(hsm);
    gs_config_free(cfg);
    return rc;
}
