/*
 * fuzz_envelope: libFuzzer target for the envelope parsers. The first input
 * byte picks the parser: odd = env_recipient_parse (a lone RecipientInfo,
 * as the group server receives it) with every accessor; even =
 * env_message_read (S/MIME, PEM or DER/BER; with ENV_READ_IN_MULTIPART,
 * as groupmail reads, when the byte's next bit is set) followed by
 * RecipientInfo access, re-encoding and a decryption attempt with a fixed
 * key.
 *
 * See fuzz.h for how targets are built, run and replayed.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>

#include "envelope.h"
#include "fuzz.h"

static void poke_recipient(const env_recipient *ri)
{
    const unsigned char *k;
    size_t len, ceklen;
    env_kt_alg alg;
    env_kari_params kp;
    unsigned char cek[64];
    static const unsigned char kek[32];

    (void)env_recipient_type(ri);
    (void)env_recipient_kt_alg(ri, &alg);
    (void)env_recipient_encrypted_key(ri, NULL, &k, &len);
    (void)env_recipient_kek_id(ri, &k, &len);
    if (env_recipient_kari_params(ri, NULL, &kp) == ENV_OK)
        env_kari_params_clear(&kp);
    (void)env_recipient_decrypt_kekri(ri, kek, sizeof(kek), cek, sizeof(cek), &ceklen);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const unsigned char key[32];
    env_recipient *ri = NULL;
    env_message *msg = NULL;
    BIO *in, *sink;

    if (size < 1)
        return 0;
    if (data[0] & 1) {
        if (env_recipient_parse(data + 1, size - 1, &ri) == ENV_OK)
            poke_recipient(ri);
        env_recipient_free(ri);
        return 0;
    }
    if (!(in = BIO_new_mem_buf(data + 1, (int)(size - 1))))
        return 0;
    if (env_message_read_flags(in, ENV_FORMAT_AUTO, (data[0] & 2) ? ENV_READ_IN_MULTIPART : 0, 1 << 20, &msg) ==
        ENV_OK) {
        for (size_t i = 0; i < env_message_recipient_count(msg); i++) {
            unsigned char *der = NULL;
            size_t len = 0;
            if (env_message_recipient_der(msg, i, &der, &len) == ENV_OK &&
                env_recipient_parse(der, len, &ri) == ENV_OK)
                poke_recipient(ri);
            env_recipient_free(ri);
            ri = NULL;
            free(der);
        }
        (void)env_message_outer_headers(msg);
        if ((sink = BIO_new(BIO_s_null()))) {
            (void)env_message_write(msg, ENV_FORMAT_DER, NULL, sink);
            (void)env_message_write(msg, ENV_FORMAT_SMIME, NULL, sink);
            (void)env_message_decrypt(msg, key, env_message_cipher(msg) == ENV_CIPHER_AES128_GCM ||
                                                        env_message_cipher(msg) == ENV_CIPHER_AES128_CBC
                                                    ? 16
                                                    : 32,
                                      sink);
            BIO_free(sink);
        }
    }
    env_message_free(msg);
    BIO_free(in);
    ERR_clear_error();
    return 0;
}
