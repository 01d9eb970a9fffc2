/*
 * soft.c: the paths on which key bytes pass through this process, for
 * tokens that cannot do the whole job themselves: locked memory for them,
 * RSA-OAEP and AES key wrap in software (the software re-wrap path and
 * sealed secret keys), RFC 3394/5649 built on a token's CKM_AES_ECB, and
 * sealed secret keys (see hsm.h). Every buffer that holds key bytes is
 * locked, kept out of core dumps and wiped before it is released.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "log.h"
#include "util.h"
#include "hsm_internal.h"

#define SPKI_MAX 16384
#define RSA_OUT_MAX 2048

/* ---- locked memory ---------------------------------------------------------- */

static size_t page_round(size_t len)
{
    long pg = sysconf(_SC_PAGESIZE);
    size_t p = pg > 0 ? (size_t)pg : 4096;

    return (len + p - 1) / p * p;
}

unsigned char *hsm_secmem_new(size_t len)
{
    size_t sz;
    void *p;

    if (len == 0 || len > 65536)
        return NULL;
    sz = page_round(len);
    p = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        hsm_set_detail("no memory for key bytes (mmap: %s)", strerror(errno));
        return NULL;
    }
    if (mlock(p, sz) != 0) {
        /* Fail closed: key bytes must not be paged out. */
        hsm_set_detail("cannot lock memory for key bytes (mlock: %s); raise RLIMIT_MEMLOCK", strerror(errno));
        munmap(p, sz);
        return NULL;
    }
    (void)madvise(p, sz, MADV_DONTDUMP);
    return p;
}

void hsm_secmem_free(unsigned char *p, size_t len)
{
    size_t sz;

    if (p == NULL)
        return;
    sz = page_round(len);
    OPENSSL_cleanse(p, sz);
    (void)munlock(p, sz);
    (void)munmap(p, sz);
}

/* ---- RSA-OAEP in software ------------------------------------------------------ */

hsm_err hsm_recipient_rsa_pubkey(const unsigned char *spki, size_t spki_len, EVP_PKEY **out)
{
    const unsigned char *p = spki;
    EVP_PKEY *pkey;

    *out = NULL;
    if (spki == NULL || spki_len == 0 || spki_len > SPKI_MAX) {
        hsm_set_detail("recipient public key missing or too large");
        return HSM_ERR_PUBLIC_KEY;
    }
    pkey = d2i_PUBKEY(NULL, &p, (long)spki_len);
    if (pkey == NULL || p != spki + spki_len || EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA) {
        hsm_set_detail("recipient public key is not a DER RSA SubjectPublicKeyInfo");
        EVP_PKEY_free(pkey);
        return HSM_ERR_PUBLIC_KEY;
    }
    if (EVP_PKEY_get_bits(pkey) < 2048 || EVP_PKEY_get_bits(pkey) > 16384) {
        hsm_set_detail("recipient RSA key size %d not accepted (2048..16384)", EVP_PKEY_get_bits(pkey));
        EVP_PKEY_free(pkey);
        return HSM_ERR_PUBLIC_KEY;
    }
    *out = pkey;
    return HSM_OK;
}

hsm_err hsm_soft_oaep_encrypt(const unsigned char *spki, size_t spki_len, hsm_oaep_hash hash,
                              const unsigned char *msg, size_t len, unsigned char **out, size_t *outlen)
{
    return hsm_soft_rsa_encrypt(spki, spki_len, hash == HSM_OAEP_SHA256 ? HSM_KT_RSA_OAEP_SHA256 : HSM_KT_RSA_OAEP_SHA1,
                                msg, len, out, outlen);
}

hsm_err hsm_soft_rsa_encrypt(const unsigned char *spki, size_t spki_len, hsm_kt_alg alg, const unsigned char *msg,
                             size_t len, unsigned char **out, size_t *outlen)
{
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *pc = NULL;
    const EVP_MD *md = alg == HSM_KT_RSA_OAEP_SHA256 ? EVP_sha256() : EVP_sha1();
    bool v15 = alg == HSM_KT_RSA_PKCS1V15;
    unsigned char *buf = NULL;
    size_t blen = 0;
    hsm_err err = HSM_ERR_PUBLIC_KEY;

    *out = NULL;
    *outlen = 0;
    if ((err = hsm_recipient_rsa_pubkey(spki, spki_len, &pkey)) != HSM_OK)
        return err;
    err = HSM_ERR_NOMEM;
    if ((pc = EVP_PKEY_CTX_new(pkey, NULL)) == NULL || EVP_PKEY_encrypt_init(pc) != 1 ||
        EVP_PKEY_CTX_set_rsa_padding(pc, v15 ? RSA_PKCS1_PADDING : RSA_PKCS1_OAEP_PADDING) != 1 ||
        (!v15 && (EVP_PKEY_CTX_set_rsa_oaep_md(pc, md) != 1 || EVP_PKEY_CTX_set_rsa_mgf1_md(pc, md) != 1)) ||
        EVP_PKEY_encrypt(pc, NULL, &blen, msg, len) != 1 || blen == 0 || blen > RSA_OUT_MAX ||
        (buf = malloc(blen)) == NULL)
        goto out;
    if (EVP_PKEY_encrypt(pc, buf, &blen, msg, len) != 1) {
        hsm_set_detail("%s encryption to the recipient key failed", v15 ? "RSA PKCS#1 v1.5" : "RSA-OAEP");
        err = HSM_ERR_PUBLIC_KEY;
        goto out;
    }
    *out = buf;
    *outlen = blen;
    buf = NULL;
    err = HSM_OK;
out:
    free(buf);
    EVP_PKEY_CTX_free(pc);
    EVP_PKEY_free(pkey);
    return err;
}

/* ---- AES key wrap (RFC 3394 / 5649) ----------------------------------------------- */

static bool use_3394(size_t keylen)
{
    return keylen >= 16 && keylen % 8 == 0;
}

hsm_err hsm_soft_aes_wrap(const unsigned char *kek, size_t keklen, const unsigned char *key, size_t keylen,
                          unsigned char *out, size_t cap, size_t *outlen)
{
    const char *name;
    EVP_CIPHER *c = NULL;
    EVP_CIPHER_CTX *cc = NULL;
    int l1 = 0, l2 = 0;
    hsm_err err = HSM_ERR_NOMEM;

    *outlen = 0;
    if (keylen == 0 || keylen > 64 || cap < keylen + 16)
        return HSM_ERR_ARGS;
    switch (keklen) {
    case 16: name = use_3394(keylen) ? "AES-128-WRAP" : "AES-128-WRAP-PAD"; break;
    case 24: name = use_3394(keylen) ? "AES-192-WRAP" : "AES-192-WRAP-PAD"; break;
    case 32: name = use_3394(keylen) ? "AES-256-WRAP" : "AES-256-WRAP-PAD"; break;
    default:
        hsm_set_detail("secret key of %zu bytes is not an AES key", keklen);
        return HSM_ERR_KEY_POLICY;
    }
    if ((c = EVP_CIPHER_fetch(NULL, name, NULL)) == NULL || (cc = EVP_CIPHER_CTX_new()) == NULL)
        goto out;
    EVP_CIPHER_CTX_set_flags(cc, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
    if (EVP_EncryptInit_ex2(cc, c, kek, NULL, NULL) != 1 ||
        EVP_EncryptUpdate(cc, out, &l1, key, (int)keylen) != 1 || EVP_EncryptFinal_ex(cc, out + l1, &l2) != 1)
        goto out;
    *outlen = (size_t)(l1 + l2);
    err = HSM_OK;
out:
    if (err != HSM_OK)
        OPENSSL_cleanse(out, cap);
    EVP_CIPHER_CTX_free(cc);
    EVP_CIPHER_free(c);
    return err;
}

/* One AES block under the token key kek (CKM_AES_ECB). */
static hsm_err ecb_block(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE kek, const unsigned char in[16],
                         unsigned char out[16])
{
    CK_MECHANISM m = {CKM_AES_ECB, NULL, 0};
    CK_ULONG len = 16;
    hsm_err err;

    if ((err = P11(ctx, C_EncryptInit, s, &m, kek)) != HSM_OK)
        return err;
    err = P11(ctx, C_Encrypt, s, (CK_BYTE_PTR)in, 16, out, &len);
    if (err == HSM_OK && len != 16)
        err = HSM_ERR_DEVICE;
    return err;
}

hsm_err hsm_token_ecb_wrap(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE kek, const unsigned char *key,
                           size_t keylen, unsigned char *out, size_t cap, size_t *outlen)
{
    static const unsigned char iv3394[8] = {0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6};
    unsigned char *r = NULL, a[8], b[16];
    size_t n, plen, i;
    unsigned j;
    hsm_err err;

    *outlen = 0;
    if (keylen == 0 || keylen > 64 || cap < keylen + 16)
        return HSM_ERR_ARGS;
    /* R: the (padded) key, then the intermediate blocks: locked memory. */
    if ((r = hsm_secmem_new(72)) == NULL)
        return HSM_ERR_NOMEM;
    plen = (keylen + 7) / 8 * 8;
    memcpy(r, key, keylen);
    if (use_3394(keylen)) {
        memcpy(a, iv3394, 8);
    } else {
        /* RFC 5649: the alternative IV carries the length; zero padding. */
        a[0] = 0xa6, a[1] = 0x59, a[2] = 0x59, a[3] = 0xa6;
        a[4] = (unsigned char)(keylen >> 24), a[5] = (unsigned char)(keylen >> 16);
        a[6] = (unsigned char)(keylen >> 8), a[7] = (unsigned char)keylen;
    }
    n = plen / 8;
    if (n == 1) {
        /* RFC 5649 section 4.1: one block, encrypted once. */
        memcpy(b, a, 8);
        memcpy(b + 8, r, 8);
        if ((err = ecb_block(ctx, s, kek, b, out)) != HSM_OK)
            goto out;
        *outlen = 16;
        goto out;
    }
    /* RFC 3394 section 2.2.1, the index-based form. */
    for (j = 0; j < 6; j++) {
        for (i = 0; i < n; i++) {
            uint64_t t = (uint64_t)n * j + i + 1;
            unsigned k;
            memcpy(b, a, 8);
            memcpy(b + 8, r + 8 * i, 8);
            if ((err = ecb_block(ctx, s, kek, b, b)) != HSM_OK)
                goto out;
            memcpy(a, b, 8);
            for (k = 0; k < 8; k++)
                a[7 - k] ^= (unsigned char)(t >> (8 * k));
            memcpy(r + 8 * i, b + 8, 8);
        }
    }
    memcpy(out, a, 8);
    memcpy(out + 8, r, plen);
    *outlen = plen + 8;
    err = HSM_OK;
out:
    OPENSSL_cleanse(a, sizeof(a));
    OPENSSL_cleanse(b, sizeof(b));
    hsm_secmem_free(r, 72);
    return err;
}

/* ---- sealed secret keys ---------------------------------------------------------- */

static bool sealed_size_ok(hsm_key_type type, unsigned bits)
{
    if (type == HSM_KEYTYPE_AES)
        return bits == 128 || bits == 192 || bits == 256;
    return type == HSM_KEYTYPE_GENERIC_SECRET && bits == 256;
}

hsm_err hsm_sealed_secret_new(hsm_ctx *ctx, hsm_key *seal, hsm_key_type type, unsigned bits,
                              unsigned char **blob, size_t *len)
{
    unsigned char *spki = NULL, *secret = NULL;
    size_t spki_len = 0;
    hsm_err err;

    if (blob != NULL)
        *blob = NULL;
    if (len != NULL)
        *len = 0;
    hsm_clear_detail();
    if (ctx == NULL || seal == NULL || blob == NULL || len == NULL || seal->sealed != NULL ||
        seal->ktype != CKK_RSA || !sealed_size_ok(type, bits))
        return HSM_ERR_ARGS;
    if ((err = hsm_key_export_public(ctx, seal, &spki, &spki_len)) != HSM_OK)
        return err;
    if ((secret = hsm_secmem_new(bits / 8)) == NULL) {
        err = HSM_ERR_NOMEM;
        goto out;
    }
    if (RAND_priv_bytes(secret, (int)(bits / 8)) != 1) {
        err = HSM_ERR_NOMEM;
        goto out;
    }
    err = hsm_soft_oaep_encrypt(spki, spki_len, HSM_OAEP_SHA1, secret, bits / 8, blob, len);
out:
    hsm_secmem_free(secret, bits / 8);
    free(spki);
    return err;
}

hsm_err hsm_key_from_sealed(hsm_ctx *ctx, hsm_key *seal, hsm_key_type type, unsigned bits,
                            const unsigned char *blob, size_t len, hsm_key **out)
{
    hsm_key *k = NULL;

    if (out != NULL)
        *out = NULL;
    if (ctx == NULL || seal == NULL || blob == NULL || out == NULL || len == 0 || seal->sealed != NULL ||
        !sealed_size_ok(type, bits))
        return HSM_ERR_ARGS;
    if (len > sizeof(((struct hsm_sealed *)0)->blob))
        return HSM_ERR_ARGS;
    if ((k = calloc(1, sizeof(*k))) == NULL || (k->sealed = calloc(1, sizeof(*k->sealed))) == NULL ||
        (k->sealed->seal = calloc(1, sizeof(*k->sealed->seal))) == NULL) {
        hsm_key_free(k);
        return HSM_ERR_NOMEM;
    }
    /* Our own copy of the seal key's reference (handle and generation
     * change under key_mu). */
    pthread_mutex_lock(&ctx->key_mu);
    *k->sealed->seal = *seal;
    pthread_mutex_unlock(&ctx->key_mu);
    k->cls = CKO_SECRET_KEY;
    k->ktype = type == HSM_KEYTYPE_AES ? CKK_AES : CKK_GENERIC_SECRET;
    snprintf(k->label, sizeof(k->label), "sealed to %.100s", seal->label);
    k->sealed->type = type;
    k->sealed->bits = bits;
    memcpy(k->sealed->blob, blob, len);
    k->sealed->blob_len = len;
    *out = k;
    return HSM_OK;
}

hsm_err hsm_sealed_open(hsm_ctx *ctx, CK_SESSION_HANDLE s, const hsm_key *key, unsigned char *out, size_t cap,
                        size_t *len)
{
    const struct hsm_sealed *sd = key->sealed;
    CK_RSA_PKCS_OAEP_PARAMS op;
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &op, sizeof(op)};
    CK_OBJECT_HANDLE h;
    CK_ULONG olen = cap;
    hsm_err err;

    *len = 0;
    if (sd == NULL)
        return HSM_ERR_ARGS;
    hsm_oaep_params(HSM_OAEP_SHA1, &op);
    if ((err = hsm_key_handle(ctx, s, sd->seal, &h)) != HSM_OK)
        return err;
    if ((err = P11(ctx, C_DecryptInit, s, &m, h)) != HSM_OK)
        return err;
    if ((err = hsm_context_login(ctx, s, sd->seal)) != HSM_OK)
        return err;
    err = hsm_decrypt_check(P11(ctx, C_Decrypt, s, (CK_BYTE_PTR)sd->blob, (CK_ULONG)sd->blob_len, out, &olen));
    if (err == HSM_OK && olen != sd->bits / 8) {
        hsm_set_detail("sealed secret key opens to %lu bytes, not %u", (unsigned long)olen, sd->bits / 8);
        err = HSM_ERR_DECRYPT;
    }
    if (err != HSM_OK) {
        OPENSSL_cleanse(out, cap);
        return err;
    }
    *len = olen;
    return HSM_OK;
}

hsm_err hsm_sealed_hmac(hsm_ctx *ctx, CK_SESSION_HANDLE s, const hsm_key *key, const unsigned char *data,
                        size_t len, unsigned char mac[32])
{
    unsigned char *kv = hsm_secmem_new(HSM_SEALED_MAX);
    unsigned int mlen = 0;
    size_t kvlen = 0;
    hsm_err err;

    if (kv == NULL)
        return HSM_ERR_NOMEM;
    if ((err = hsm_sealed_open(ctx, s, key, kv, HSM_SEALED_MAX, &kvlen)) == HSM_OK &&
        (HMAC(EVP_sha256(), kv, (int)kvlen, data, len, mac, &mlen) == NULL || mlen != 32))
        err = HSM_ERR_NOMEM;
    hsm_secmem_free(kv, HSM_SEALED_MAX);
    return err;
}

static hsm_err op_sealed_check(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    unsigned char *kv = hsm_secmem_new(HSM_SEALED_MAX);
    size_t kvlen = 0;
    hsm_err err;

    if (kv == NULL)
        return HSM_ERR_NOMEM;
    err = hsm_sealed_open(ctx, s, arg, kv, HSM_SEALED_MAX, &kvlen);
    hsm_secmem_free(kv, HSM_SEALED_MAX);
    return err;
}

hsm_err hsm_sealed_check(hsm_ctx *ctx, hsm_key *key)
{
    hsm_clear_detail();
    if (ctx == NULL || key == NULL || key->sealed == NULL)
        return HSM_ERR_ARGS;
    return hsm_run(ctx, op_sealed_check, key);
}
