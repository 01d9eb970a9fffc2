/*
 * env_calg.c: the content-encryption algorithms a client may name when it
 * asks the group server to unwrap a key. A RecipientInfo alone does not
 * say how long the content key is; with RSA PKCS#1 v1.5 the server must
 * know it (implicit rejection substitutes a key of that length), and with
 * RSA-OAEP a plaintext of another length is a failed unwrap. The length
 * follows from the message's contentEncryptionAlgorithm, which the client
 * reads and sends along ("content_algorithm").
 */
#include <string.h>
#include <strings.h>

#include "env_internal.h"

struct calg {
    const char *name;  /* canonical, what env_message_content_alg returns */
    const char *alias; /* OpenSSL's short name where it differs, else NULL */
    const char *oid;
    size_t keylen;
    bool gcm;
};

/* Only algorithms whose key length is fixed by the identifier. The AES ones
 * come first (env_calg_name); the envelope decrypts 3DES too (on input
 * only); ChaCha20-Poly1305 is known so a server can still answer for
 * clients that decrypt it themselves. */
static const struct calg calgs[] = {
    {"aes-128-cbc", NULL, "2.16.840.1.101.3.4.1.2", 16, false},
    {"aes-192-cbc", NULL, "2.16.840.1.101.3.4.1.22", 24, false},
    {"aes-256-cbc", NULL, "2.16.840.1.101.3.4.1.42", 32, false},
    {"aes-128-gcm", "id-aes128-GCM", "2.16.840.1.101.3.4.1.6", 16, true},
    {"aes-192-gcm", "id-aes192-GCM", "2.16.840.1.101.3.4.1.26", 24, true},
    {"aes-256-gcm", "id-aes256-GCM", "2.16.840.1.101.3.4.1.46", 32, true},
    {"des-ede3-cbc", NULL, "1.2.840.113549.3.7", 24, false},
    {"chacha20-poly1305", NULL, "1.2.840.113549.1.9.16.3.18", 32, false},
};

env_err env_content_alg_key_length(const char *name_or_oid, size_t *keylen, const char **canonical)
{
    size_t n;

    if (keylen)
        *keylen = 0;
    if (canonical)
        *canonical = NULL;
    if (!name_or_oid || !keylen)
        return ENV_ERR_ARGS;
    n = strlen(name_or_oid);
    if (n == 0 || n > 64)
        return ENV_ERR_ARGS;
    for (size_t i = 0; i < sizeof(calgs) / sizeof(calgs[0]); i++) {
        const struct calg *c = &calgs[i];
        if (strcasecmp(name_or_oid, c->name) == 0 || strcmp(name_or_oid, c->oid) == 0 ||
            (c->alias && strcasecmp(name_or_oid, c->alias) == 0)) {
            *keylen = c->keylen;
            if (canonical)
                *canonical = c->name;
            return ENV_OK;
        }
    }
    return ENV_ERR_UNSUPPORTED;
}

const char *env_calg_name(bool gcm, size_t keylen)
{
    for (size_t i = 0; i < 6; i++) /* the AES entries: what a parsed message can carry */
        if (calgs[i].gcm == gcm && calgs[i].keylen == keylen)
            return calgs[i].name;
    return "unknown";
}
