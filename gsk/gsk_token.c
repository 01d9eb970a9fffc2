/*
 * gsk_token.c: the ceremony's steps on a token, through hsm/ only:
 * making and finding transport keys, export (hsm_replica_export_run) and
 * import (hsm_replica_import) with the decryption test that proves each
 * imported group key is its certificate's.
 */
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "gsk_internal.h"
#include "util.h"

#define PROOF_KEY_LEN 32

/* ---- transport keys ------------------------------------------------------------ */

static gsk_err check_transport_attrs(hsm_ctx *hsm, hsm_key *priv)
{
    hsm_key_info ki;
    hsm_err he = hsm_key_get_info(hsm, priv, &ki);

    if (he != HSM_OK)
        return gsk_hsm_fail(he, "reading the transport key's attributes");
    if (ki.type != HSM_KEYTYPE_RSA || !ki.sensitive || !ki.always_sensitive || ki.extractable ||
        !ki.never_extractable || !ki.unwrap || ki.decrypt || ki.sign || ki.derive || ki.value_readable)
        return gsk_fail(GSK_ERR_POLICY, "the token did not make the transport key unwrap-only, sensitive and never "
                                        "extractable");
    return GSK_OK;
}

/* The "unwraps:" line's text of a mask of OAEP hashes (gsk_transport_hashes reads it). */
static const char *unwraps_text(unsigned mask)
{
    if (mask == ((1u << HSM_OAEP_SHA1) | (1u << HSM_OAEP_SHA256)))
        return "RSA-OAEP-SHA256, RSA-OAEP-SHA1";
    return mask == (1u << HSM_OAEP_SHA256) ? "RSA-OAEP-SHA256" : "RSA-OAEP-SHA1";
}

static gsk_err transport_pem(const char *token_desc, const char *label, const unsigned char *spki, size_t spki_len,
                             const char fp[65], unsigned unwraps, char **pem)
{
    const unsigned char *p = spki;
    EVP_PKEY *pk = d2i_PUBKEY(NULL, &p, (long)spki_len);
    BIO *b = BIO_new(BIO_s_mem());
    char spoken[80];
    char *data = NULL;
    long n;
    gsk_err err = GSK_ERR_NOMEM;

    *pem = NULL;
    gsk_fingerprint_spoken(fp, spoken);
    if (pk == NULL || b == NULL ||
        BIO_printf(b,
                   "groupsrv transport key: give this file to the sending side (group export --to FILE),\n"
                   "and read the fingerprint below to them over another channel before they export.\n"
                   "token:  %s\nlabel:  %s\nkey:    RSA-%d, unwrap only, sensitive, never extractable\n"
                   "sha256: %s\nunwraps: %s\n",
                   token_desc, label, EVP_PKEY_get_bits(pk), spoken, unwraps_text(unwraps)) <= 0 ||
        PEM_write_bio_PUBKEY(b, pk) != 1 || (n = BIO_get_mem_data(b, &data)) <= 0)
        goto out;
    if ((*pem = malloc((size_t)n + 1)) == NULL)
        goto out;
    memcpy(*pem, data, (size_t)n);
    (*pem)[n] = '\0';
    err = GSK_OK;
out:
    BIO_free(b);
    EVP_PKEY_free(pk);
    return err;
}

gsk_err gsk_transport_make(hsm_ctx *hsm, const char *token_desc, char **pem, char fp[65], char *label_out,
                           size_t label_cap)
{
    unsigned char id[16], *spki = NULL;
    size_t spki_len = 0;
    char hex[33], label[64], missing[1024];
    unsigned decrypt = 0, unwraps = 0;
    hsm_keygen_spec ks;
    hsm_caps caps;
    hsm_key *priv = NULL, *pub = NULL;
    gsk_err err;
    hsm_err he;

    *pem = NULL;
    if (hsm == NULL || token_desc == NULL)
        return GSK_ERR_ARGS;
    if ((he = hsm_caps_get(hsm, &caps)) != HSM_OK)
        return gsk_hsm_fail(he, "reading the token's capabilities");
    if (!hsm_caps_receive(&caps, missing, sizeof(missing)))
        return gsk_fail(GSK_ERR_POLICY, "this token cannot receive keys (missing: %s)", missing);
    if (RAND_bytes(id, sizeof(id)) != 1)
        return gsk_fail(GSK_ERR_NOMEM, "no random bytes");
    util_hex(id, 8, hex);
    (void)snprintf(label, sizeof(label), GSK_TRANSPORT_PREFIX "%s", hex);
    memset(&ks, 0, sizeof(ks));
    ks.label = label;
    ks.id = id;
    ks.id_len = sizeof(id);
    ks.type = HSM_KEYTYPE_RSA;
    ks.bits = GSK_TRANSPORT_BITS;
    ks.usage = HSM_USE_UNWRAP;
    /* Strict: a token that takes the protections on session keys only
     * (NSS softokn) cannot make it, and cannot receive keys. */
    if ((he = hsm_generate_keypair(hsm, &ks, &pub, &priv)) != HSM_OK)
        return gsk_hsm_fail(he, "generating the transport key (RSA-3072, unwrap only, with CKA_ALLOWED_MECHANISMS "
                                "and CKA_UNWRAP_TEMPLATE on a token key, as a receiving token must keep them)");
    if ((err = check_transport_attrs(hsm, priv)) != GSK_OK)
        goto out;
    /* Which OAEP hashes the key really unwraps with (trials), for the
     * file: the sending token then wraps the one-time key with one of
     * them. It chose SHA-256 wherever it could, and a receiving token
     * that unwraps with SHA-1 only (SoftHSM 2.6) refused the file at the
     * import, after the whole ceremony, with nothing the operators could
     * change. None at all: this token cannot receive keys. */
    if ((he = hsm_key_probe_oaep(hsm, priv, &decrypt, &unwraps)) != HSM_OK) {
        err = gsk_hsm_fail(he, "trying the transport key's RSA-OAEP unwrap");
        goto out;
    }
    unwraps &= (1u << HSM_OAEP_SHA1) | (1u << HSM_OAEP_SHA256);
    if (unwraps == 0) {
        err = gsk_fail(GSK_ERR_POLICY, "this token cannot receive keys: its transport key unwrapped with RSA-OAEP "
                                       "under neither SHA-1 nor SHA-256 (tried on the new key)");
        goto out;
    }
    if ((he = hsm_key_export_public(hsm, priv, &spki, &spki_len)) != HSM_OK) {
        err = gsk_hsm_fail(he, "reading the transport public key");
        goto out;
    }
    gsk_fingerprint(spki, spki_len, fp);
    if ((err = transport_pem(token_desc, label, spki, spki_len, fp, unwraps, pem)) != GSK_OK)
        goto out;
    if (label_out != NULL)
        util_strlcpy(label_out, label, label_cap);
out:
    if (err != GSK_OK) {
        (void)hsm_key_destroy(hsm, priv);
        (void)hsm_key_destroy(hsm, pub);
    }
    free(spki);
    hsm_key_free(priv);
    hsm_key_free(pub);
    return err;
}

struct find_arg {
    const char *fp;
    char label[128];
    int found;
};

/* Whether key is an object of class cls whose public key's SPKI
 * fingerprint is fp (its info in *ki); false also when it cannot be read. */
static bool key_is_class_with_fp(hsm_ctx *hsm, hsm_key *key, hsm_key_class cls, const char *fp, hsm_key_info *ki)
{
    unsigned char *spki = NULL;
    size_t len = 0;
    char have[65];

    if (hsm_key_get_info(hsm, key, ki) != HSM_OK || ki->cls != cls ||
        hsm_key_export_public(hsm, key, &spki, &len) != HSM_OK)
        return false;
    gsk_fingerprint(spki, len, have);
    free(spki);
    return strcmp(have, fp) == 0;
}

static int find_cb(void *arg, hsm_ctx *hsm, hsm_key *key)
{
    struct find_arg *fa = arg;
    hsm_key_info ki;

    /* A label longer than the buffer is no transport key of ours (they
     * are GSK_TRANSPORT_PREFIX and 16 hex digits): not taken. */
    if (key_is_class_with_fp(hsm, key, HSM_CLASS_PRIVATE, fa->fp, &ki) &&
        util_strlcpy(fa->label, ki.label, sizeof(fa->label)) == UTIL_OK)
        fa->found = 1;
    return 0;
}

gsk_err gsk_transport_find(hsm_ctx *hsm, const char fp[65], hsm_key **out)
{
    struct find_arg fa = {fp, "", 0};
    hsm_err he;
    gsk_err err;

    *out = NULL;
    if ((he = hsm_key_list(hsm, GSK_TRANSPORT_PREFIX, find_cb, &fa)) != HSM_OK)
        return gsk_hsm_fail(he, "listing transport keys");
    if (!fa.found)
        /* Most often one an earlier import deleted (a ceremony run as
         * before the imports did): said, with what to do. */
        return gsk_fail(GSK_ERR_TRANSPORT, "this file was made for transport key sha256 %.16s..., which is not on "
                                           "this token (an import deletes the transport key it came through unless "
                                           "given --keep-transport-key: for a file made for one deleted, make a new "
                                           "transport key and export to it again)",
                        fp);
    if ((he = hsm_key_find(hsm, fa.label, HSM_CLASS_PRIVATE, out)) != HSM_OK)
        return gsk_hsm_fail(he, "finding the transport key");
    if ((err = check_transport_attrs(hsm, *out)) != GSK_OK) {
        hsm_key_free(*out);
        *out = NULL;
    }
    return err;
}

/* The transport key's public half: the public key object with the
 * private half's label whose key is the private half's (its SPKI
 * fingerprint), so another object given that label is neither deleted
 * nor in the way. */
struct pub_arg {
    const char *label, *fp;
    hsm_err err;  /* of the first deletion that failed */
    int left;     /* public halves the token would not delete */
};

static int pub_destroy_cb(void *arg, hsm_ctx *hsm, hsm_key *key)
{
    struct pub_arg *pa = arg;
    hsm_key_info ki;
    hsm_err he;

    if (strcmp(hsm_key_label(key), pa->label) != 0 ||
        !key_is_class_with_fp(hsm, key, HSM_CLASS_PUBLIC, pa->fp, &ki))
        return 0;
    if ((he = hsm_key_destroy(hsm, key)) != HSM_OK) {
        if (pa->left++ == 0)
            pa->err = he;
    }
    return 0;
}

gsk_err gsk_transport_destroy(hsm_ctx *hsm, hsm_key *priv, bool *public_only)
{
    char label[128], fp[65];
    unsigned char *spki = NULL;
    size_t len = 0;
    struct pub_arg pa;
    hsm_err he;

    if (public_only != NULL)
        *public_only = false;
    if (hsm == NULL || priv == NULL)
        return GSK_ERR_ARGS;
    /* Only a transport key: the label is the one gsk_transport_find took
     * by its prefix (labels are at most 127 bytes); anything else here is
     * a caller's mistake. */
    if (util_strlcpy(label, hsm_key_label(priv), sizeof(label)) != UTIL_OK ||
        strncmp(label, GSK_TRANSPORT_PREFIX, strlen(GSK_TRANSPORT_PREFIX)) != 0)
        return gsk_fail(GSK_ERR_ARGS, "not a transport key");
    /* Its key, to know its public half by once the private one is gone. */
    if ((he = hsm_key_export_public(hsm, priv, &spki, &len)) != HSM_OK)
        return gsk_hsm_fail(he, "reading the transport public key (both halves are still on the token)");
    gsk_fingerprint(spki, len, fp);
    free(spki);
    if ((he = hsm_key_destroy(hsm, priv)) != HSM_OK)
        return gsk_hsm_fail(he, "deleting the transport private key (both halves are still on the token)");
    if (public_only != NULL)
        *public_only = true;
    memset(&pa, 0, sizeof(pa));
    pa.label = label;
    pa.fp = fp;
    if ((he = hsm_key_list(hsm, label, pub_destroy_cb, &pa)) == HSM_OK && pa.left > 0)
        he = pa.err;
    if (he != HSM_OK)
        return gsk_hsm_fail(he, "deleting the transport public key (the private key is deleted; the public key, "
                                "which unwraps nothing, is still on the token)");
    if (public_only != NULL)
        *public_only = false;
    return GSK_OK;
}

gsk_err gsk_transport_delete_cmd(const char *label, bool public_only, char *out, size_t cap)
{
    int n;

    if (label == NULL || out == NULL || cap == 0)
        return GSK_ERR_ARGS;
    if (public_only)
        n = snprintf(out, cap, "pkcs11-tool --login --delete-object --type pubkey --label %s", label);
    else
        n = snprintf(out, cap, "pkcs11-tool --login --delete-object --type privkey --label %s, and --type pubkey",
                     label);
    if (n < 0 || (size_t)n >= cap)
        return GSK_ERR_ARGS;
    return GSK_OK;
}

/* ---- export ------------------------------------------------------------------------ */

gsk_err gsk_export(hsm_ctx *hsm, const char *so_pin, size_t so_pin_len, const unsigned char *spki, size_t spki_len,
                   unsigned unwraps, gsk_manifest *m, hsm_key *const *keys)
{
    hsm_replica_item *items = NULL;
    hsm_replica_export x;
    gsk_err err = GSK_OK;
    hsm_err he;

    if (hsm == NULL || so_pin == NULL || spki == NULL || m == NULL || keys == NULL)
        return GSK_ERR_ARGS;
    if ((items = calloc(m->n_entries, sizeof(*items))) == NULL)
        return GSK_ERR_NOMEM;
    for (size_t i = 0; i < m->n_entries; i++)
        items[i].key = keys[i];
    memset(&x, 0, sizeof(x));
    x.so_pin = so_pin;
    x.so_pin_len = so_pin_len;
    x.transport_spki = spki;
    x.transport_spki_len = spki_len;
    x.items = items;
    x.n_items = m->n_entries;
    x.kek_hashes = unwraps;
    if ((he = hsm_replica_export_run(hsm, &x)) != HSM_OK) {
        err = gsk_hsm_fail(he, he == HSM_ERR_PIN_INCORRECT ? "the token refused the SO PIN" : "wrapping the keys");
        goto out;
    }
    for (size_t i = 0; i < m->n_entries; i++) {
        free(m->entries[i].wrapped);
        m->entries[i].wrapped = items[i].wrapped;
        m->entries[i].wrapped_len = items[i].wrapped_len;
        items[i].wrapped = NULL;
    }
    free(m->wrapped_kek);
    m->wrapped_kek = x.wrapped_kek;
    m->wrapped_kek_len = x.wrapped_kek_len;
    m->kek_hash = x.kek_hash;
    gsk_fingerprint(spki, spki_len, m->transport_sha256);
out:
    free(items);
    return err;
}

/* ---- import --------------------------------------------------------------------------- */

/* DER SPKI and bits of a certificate's RSA key. */
static gsk_err cert_key(const char *pem, unsigned char **spki, size_t *len, unsigned *bits)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509 *c = b != NULL ? PEM_read_bio_X509(b, NULL, util_pem_no_passphrase, NULL) : NULL;
    EVP_PKEY *pk = c != NULL ? X509_get0_pubkey(c) : NULL;
    unsigned char *der = NULL;
    int n;
    gsk_err err = GSK_ERR_FORMAT;

    *spki = NULL;
    if (pk == NULL || EVP_PKEY_get_base_id(pk) != EVP_PKEY_RSA) {
        gsk_fail(err, "a certificate's key is not RSA: only RSA keys are copied");
        goto out;
    }
    if ((n = i2d_PUBKEY(pk, &der)) <= 0 || (*spki = malloc((size_t)n)) == NULL) {
        err = GSK_ERR_NOMEM;
        goto out;
    }
    memcpy(*spki, der, (size_t)n);
    *len = (size_t)n;
    *bits = (unsigned)EVP_PKEY_get_bits(pk);
    err = GSK_OK;
out:
    OPENSSL_free(der);
    X509_free(c);
    BIO_free(b);
    ERR_clear_error();
    return err;
}

/* RSA-OAEP (SHA-1: every token decrypts it) of a random key to spki. */
static int oaep_encrypt(const unsigned char *spki, size_t len, const unsigned char *pt, size_t ptlen,
                        unsigned char *ct, size_t *ctlen)
{
    const unsigned char *p = spki;
    EVP_PKEY *pk = d2i_PUBKEY(NULL, &p, (long)len);
    EVP_PKEY_CTX *c = pk != NULL ? EVP_PKEY_CTX_new(pk, NULL) : NULL;
    int ok = c != NULL && EVP_PKEY_encrypt_init(c) == 1 && EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING) == 1 &&
             EVP_PKEY_encrypt(c, ct, ctlen, pt, ptlen) == 1;

    EVP_PKEY_CTX_free(c);
    EVP_PKEY_free(pk);
    return ok ? 0 : -1;
}

/* A test that could not run because the token went away proves nothing
 * about the key: it is the token's failure (exit 4), not a refusal. */
static bool token_gone(hsm_err he)
{
    return he == HSM_ERR_TOKEN_ABSENT || he == HSM_ERR_DEVICE || he == HSM_ERR_SESSION ||
           he == HSM_ERR_NOT_LOGGED_IN || he == HSM_ERR_PIN_INCORRECT || he == HSM_ERR_PIN_LOCKED ||
           he == HSM_ERR_MODULE;
}

static gsk_err proof_token_fail(hsm_err he, const char *test, const char *label)
{
    return gsk_fail(GSK_ERR_TOKEN, "the %s test of key %.128s could not run: %s (%s)", test, label,
                    hsm_strerror(he), hsm_last_error_detail());
}

/* The decryption test: a random key encrypted to the certificate must come
 * back out of the token copy. DECRYPT keys answer it directly; unwrap-only
 * keys unwrap it and wrap it out to a throw-away software key. */
static gsk_err prove(hsm_ctx *hsm, hsm_key *key, unsigned usage, const unsigned char *spki, size_t spki_len,
                     const char *label)
{
    unsigned char pt[PROOF_KEY_LEN], got[512], ct[2048];
    size_t ctlen = sizeof(ct), gotlen = 0;
    EVP_PKEY *eph = NULL;
    EVP_PKEY_CTX *dc = NULL;
    unsigned char *eph_spki = NULL, *outs[1] = {NULL};
    size_t lens[1] = {0};
    hsm_unwrap_input in;
    hsm_err he;
    gsk_err err = GSK_ERR_PROOF;
    int n;

    if (RAND_bytes(pt, sizeof(pt)) != 1 || oaep_encrypt(spki, spki_len, pt, sizeof(pt), ct, &ctlen) != 0)
        return gsk_fail(GSK_ERR_NOMEM, "cannot make the decryption test for %s", label);
    memset(&in, 0, sizeof(in));
    in.group_key = key;
    in.alg = HSM_KT_RSA_OAEP_SHA1;
    in.encrypted_key = ct;
    in.encrypted_key_len = ctlen;
    in.expected_len = sizeof(pt);
    if (usage & HSM_USE_DECRYPT) {
        he = hsm_decrypt_content_key(hsm, &in, got, sizeof(got), &gotlen);
    } else {
        const unsigned char *sp[1];
        size_t sl[1];
        if ((eph = EVP_RSA_gen(2048)) == NULL || (n = i2d_PUBKEY(eph, &eph_spki)) <= 0) {
            err = gsk_fail(GSK_ERR_NOMEM, "cannot make the throw-away key for the decryption test");
            goto out;
        }
        sp[0] = eph_spki;
        sl[0] = (size_t)n;
        he = hsm_rewrap_to_public_keys(hsm, &in, HSM_OAEP_SHA1, sp, sl, 1, outs, lens);
        gotlen = sizeof(got);
        if (he == HSM_OK &&
            ((dc = EVP_PKEY_CTX_new(eph, NULL)) == NULL || EVP_PKEY_decrypt_init(dc) != 1 ||
             EVP_PKEY_CTX_set_rsa_padding(dc, RSA_PKCS1_OAEP_PADDING) != 1 ||
             EVP_PKEY_decrypt(dc, got, &gotlen, outs[0], lens[0]) != 1))
            gotlen = 0;
    }
    if (token_gone(he)) {
        err = proof_token_fail(he, "decryption", label);
        goto out;
    }
    if (he != HSM_OK || gotlen != sizeof(pt) || CRYPTO_memcmp(got, pt, sizeof(pt)) != 0) {
        const char *d = he != HSM_OK ? hsm_last_error_detail() : "";
        err = gsk_fail(GSK_ERR_PROOF, "key %s does not decrypt what its certificate encrypts%s%s", label,
                       d[0] ? ": " : "", d);
        goto out;
    }
    err = GSK_OK;
out:
    OPENSSL_cleanse(pt, sizeof(pt));
    OPENSSL_cleanse(got, sizeof(got));
    free(outs[0]);
    OPENSSL_free(eph_spki);
    EVP_PKEY_CTX_free(dc);
    EVP_PKEY_free(eph);
    ERR_clear_error();
    return err;
}

/* A CA key copy proves itself by signing: its certificate's key must verify. */
static gsk_err prove_sign(hsm_ctx *hsm, hsm_key *key, const unsigned char *spki, size_t spki_len, const char *label)
{
    unsigned char data[PROOF_KEY_LEN], *sig = NULL;
    size_t siglen = 0;
    const unsigned char *p = spki;
    EVP_PKEY *pk = d2i_PUBKEY(NULL, &p, (long)spki_len);
    EVP_MD_CTX *mc = EVP_MD_CTX_new();
    hsm_err he = HSM_ERR_ARGS;
    gsk_err err = GSK_ERR_PROOF;

    if (pk != NULL && mc != NULL && RAND_bytes(data, sizeof(data)) == 1 &&
        (he = hsm_sign(hsm, key, HSM_SIG_RSA_PKCS1_SHA256, data, sizeof(data), &sig, &siglen)) == HSM_OK &&
        EVP_DigestVerifyInit(mc, NULL, EVP_sha256(), NULL, pk) == 1 &&
        EVP_DigestVerify(mc, sig, siglen, data, sizeof(data)) == 1)
        err = GSK_OK;
    else if (token_gone(he))
        err = proof_token_fail(he, "signature", label);
    else
        gsk_fail(err, "key %s does not sign what its certificate verifies%s%s", label, he != HSM_OK ? ": " : "",
                 he != HSM_OK ? hsm_last_error_detail() : "");
    free(sig);
    EVP_MD_CTX_free(mc);
    EVP_PKEY_free(pk);
    ERR_clear_error();
    return err;
}

/* Removes what an import made (private/secret objects and public halves).
 * What the token no longer lets it destroy (it went away) is added to the
 * error's detail by label, with how to delete it by hand. */
static void undo(hsm_ctx *hsm, const gsk_manifest *m, const gsk_import_item *items, size_t n, hsm_key **refs)
{
    char left[256] = "", detail[512];
    size_t used = 0;

    for (size_t i = 0; i < n; i++) {
        hsm_key *pub = NULL;
        const char *label = m->entries[items[i].index].label;
        bool gone = refs[i] != NULL && hsm_key_destroy(hsm, refs[i]) != HSM_OK;
        gsk_kind kind = m->entries[items[i].index].kind;
        hsm_err he = HSM_ERR_KEY_NOT_FOUND;
        if ((kind == GSK_KIND_GROUP || kind == GSK_KIND_CA) &&
            (he = hsm_key_find(hsm, label, HSM_CLASS_PUBLIC, &pub)) == HSM_OK)
            he = hsm_key_destroy(hsm, pub);
        hsm_key_free(pub);
        if ((gone || (he != HSM_OK && he != HSM_ERR_KEY_NOT_FOUND)) && used < sizeof(left))
            used += (size_t)snprintf(left + used, sizeof(left) - used, "%s%s", used > 0 ? ", " : "", label);
    }
    if (left[0] == '\0')
        return;
    util_strlcpy(detail, gsk_err_detail(), sizeof(detail));
    (void)gsk_fail(GSK_ERR_HSM, "%s; left on the token: %s (delete them: pkcs11-tool --login --delete-object "
                                   "--label LABEL --type privkey, pubkey or secrkey)",
                   detail, left);
}

gsk_err gsk_import(hsm_ctx *hsm, const gsk_manifest *m, const gsk_import_item *items, size_t n, hsm_key **out)
{
    hsm_replica_in *in = NULL;
    hsm_key *transport = NULL, **refs = NULL;
    unsigned char **spkis = NULL;
    gsk_err err;
    hsm_err he;

    if (out != NULL)
        for (size_t i = 0; i < n && i < GSK_KEYS_MAX; i++)
            out[i] = NULL;
    if (hsm == NULL || m == NULL || items == NULL || n == 0 || n > GSK_KEYS_MAX)
        return GSK_ERR_ARGS;
    for (size_t i = 0; i < n; i++)
        if (items[i].index >= m->n_entries)
            return GSK_ERR_ARGS;
    if ((err = gsk_transport_find(hsm, m->transport_sha256, &transport)) != GSK_OK)
        return err;
    in = calloc(n, sizeof(*in));
    refs = calloc(n, sizeof(*refs));
    spkis = calloc(n, sizeof(*spkis));
    if (in == NULL || refs == NULL || spkis == NULL) {
        err = GSK_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const gsk_key *k = &m->entries[items[i].index];
        hsm_keygen_spec *s = &in[i].spec;
        s->label = k->label;
        s->id = k->id;
        s->id_len = k->id_len;
        s->usage = items[i].usage;
        s->extractable = items[i].extractable;
        s->type = k->kind == GSK_KIND_GROUP || k->kind == GSK_KIND_CA ? HSM_KEYTYPE_RSA
                  : k->kind == GSK_KIND_SECRET                         ? HSM_KEYTYPE_AES
                                                                       : HSM_KEYTYPE_GENERIC_SECRET;
        in[i].wrapped = k->wrapped;
        in[i].wrapped_len = k->wrapped_len;
        if (k->kind == GSK_KIND_GROUP || k->kind == GSK_KIND_CA) {
            if ((err = cert_key(k->cert_pem, &spkis[i], &in[i].public_spki_len, &s->bits)) != GSK_OK)
                goto out;
            in[i].public_spki = spkis[i];
        }
    }
    he = hsm_replica_import(hsm, transport, m->kek_hash, m->wrapped_kek, m->wrapped_kek_len, in, n, refs);
    if (he != HSM_OK) {
        err = gsk_hsm_fail(he, "importing the keys");
        /* The token failing (gone, no room: CKR_DEVICE_MEMORY, a lost
         * connection's CKR_DEVICE_ERROR) says nothing of the file: the
         * token's failure, as when the decryption test cannot run, not a
         * refusal. A wrapped key whose integrity check fails is
         * HSM_ERR_DECRYPT (hsm/replicate.c) and stays one. */
        if (token_gone(he))
            err = GSK_ERR_TOKEN;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const gsk_key *k = &m->entries[items[i].index];
        err = k->kind == GSK_KIND_GROUP ? prove(hsm, refs[i], items[i].usage, in[i].public_spki,
                                                in[i].public_spki_len, k->label)
              : k->kind == GSK_KIND_CA  ? prove_sign(hsm, refs[i], in[i].public_spki, in[i].public_spki_len, k->label)
                                        : GSK_OK;
        if (err != GSK_OK) {
            undo(hsm, m, items, n, refs);
            goto out;
        }
    }
    for (size_t i = 0; out != NULL && i < n; i++) {
        out[i] = refs[i];
        refs[i] = NULL;
    }
    err = GSK_OK;
out:
    for (size_t i = 0; i < n; i++) {
        if (refs != NULL)
            hsm_key_free(refs[i]);
        if (spkis != NULL)
            free(spkis[i]);
    }
    free(refs);
    free(spkis);
    free(in);
    hsm_key_free(transport);
    return err;
}

void gsk_operator(char *buf, size_t cap)
{
    struct passwd pw, *res = NULL;
    char tmp[1024];
    const char *sudo = getenv("SUDO_USER");

    if (getpwuid_r(getuid(), &pw, tmp, sizeof(tmp), &res) == 0 && res != NULL)
        (void)snprintf(buf, cap, "%s%s%s%s", res->pw_name, sudo != NULL ? " (sudo by " : "",
                       sudo != NULL ? sudo : "", sudo != NULL ? ")" : "");
    else
        (void)snprintf(buf, cap, "uid %u", (unsigned)getuid());
    for (char *p = buf; *p != '\0'; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f || *p == '"')
            *p = '?';
}
