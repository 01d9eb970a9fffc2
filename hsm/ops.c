/*
 * ops.c: the message key operations: RSA-OAEP decrypt, PKCS#1 v1.5 with
 * implicit rejection, unwrap into a session key and wrap out (to public
 * keys or under an AES key), ECDH, signing.
 *
 * Raw RSA (CKM_RSA_X_509) is never used. Session objects made here
 * (content keys, imported recipient keys, KEKs) are destroyed on every path.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "log.h"
#include "util.h"
#include "hsm_internal.h"

#define CT_MAX 2048      /* encrypted key: RSA up to 16384 bits */
#define RSA_OUT_MAX 2048 /* wrap/sign output of an RSA key up to 16384 bits */
#define RECIPIENTS_MAX 65536 /* members of one list in member-certs mode */
#define SIGN_DATA_MAX (1024u * 1024u)
#define ECDSA_DIGEST_MIN 20u /* SHA-1 (TLS 1.2 peers may still ask) */
#define ECDSA_DIGEST_MAX 64u /* SHA-512 */

static CK_BBOOL ck_true = CK_TRUE, ck_false = CK_FALSE;

/* ---- constant-time helpers (no branch on secret data) -------------------- */

/* All ones when x == 0, else 0. */
static size_t ct_is_zero(size_t x)
{
    return (size_t)0 - ((~x & (x - 1)) >> (sizeof(size_t) * 8 - 1));
}

static size_t ct_eq(size_t a, size_t b)
{
    return ct_is_zero(a ^ b);
}

/* ---- common pieces -------------------------------------------------------- */

static bool recoverable_rv(CK_RV rv)
{
    switch (rv) {
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_USER_NOT_LOGGED_IN:
    case CKR_DEVICE_REMOVED:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_OBJECT_HANDLE_INVALID:
    case CKR_KEY_HANDLE_INVALID:
        return true;
    default:
        return false;
    }
}

void hsm_oaep_params(hsm_oaep_hash hash, CK_RSA_PKCS_OAEP_PARAMS *p)
{
    memset(p, 0, sizeof(*p));
    p->hashAlg = hash == HSM_OAEP_SHA256 ? CKM_SHA256 : CKM_SHA_1;
    p->mgf = hash == HSM_OAEP_SHA256 ? CKG_MGF1_SHA256 : CKG_MGF1_SHA1;
    p->source = CKZ_DATA_SPECIFIED;
    p->pSourceData = NULL;
    p->ulSourceDataLen = 0;
}

/* SoftHSM 2.6.1 accepts only SHA-1 in CK_RSA_PKCS_OAEP_PARAMS and answers
 * CKR_ARGUMENTS_BAD (others say MECHANISM_PARAM_INVALID): turn that into
 * a clear "unsupported" instead of a generic failure. Not cached: a token
 * may support SHA-256 for C_Decrypt but not for C_WrapKey. */
hsm_err hsm_oaep_check(hsm_ctx *ctx, hsm_err err, hsm_oaep_hash hash)
{
    CK_RV rv = hsm_last_rv();
    char prev[192];

    if (err == HSM_OK)
        return err;
    if (hash == HSM_OAEP_SHA256 &&
        (rv == CKR_MECHANISM_PARAM_INVALID || rv == CKR_ARGUMENTS_BAD || rv == CKR_MECHANISM_INVALID)) {
        util_strlcpy(prev, hsm_last_error_detail(), sizeof(prev));
        hsm_set_detail("token does not support RSA-OAEP with SHA-256 (%s)", prev);
        return HSM_ERR_MECHANISM;
    }
    if (rv == CKR_MECHANISM_INVALID) {
        util_strlcpy(prev, hsm_last_error_detail(), sizeof(prev));
        hsm_set_detail("token does not support RSA-OAEP (%s)", prev);
    }
    return err;
}

/* SoftHSM reports a ciphertext that does not decrypt as CKR_GENERAL_ERROR;
 * for C_Decrypt/C_UnwrapKey that is a decryption failure, not a device one. */
hsm_err hsm_decrypt_check(hsm_err err)
{
    if (err == HSM_ERR_DEVICE && hsm_last_rv() == CKR_GENERAL_ERROR)
        return HSM_ERR_DECRYPT;
    return err;
}

static hsm_err check_unwrap_input(const hsm_unwrap_input *in)
{
    if (in == NULL || in->group_key == NULL || in->encrypted_key == NULL || in->encrypted_key_len == 0 ||
        in->encrypted_key_len > CT_MAX)
        return HSM_ERR_ARGS;
    switch (in->alg) {
    case HSM_KT_RSA_OAEP_SHA1:
    case HSM_KT_RSA_OAEP_SHA256:
        if (in->expected_len > 64)
            return HSM_ERR_ARGS;
        return HSM_OK;
    case HSM_KT_RSA_PKCS1V15:
        if (in->reject_key == NULL ||
            (in->expected_len != 16 && in->expected_len != 24 && in->expected_len != 32)) {
            hsm_set_detail("PKCS#1 v1.5 needs reject_key and expected_len 16, 24 or 32");
            return HSM_ERR_ARGS;
        }
        return HSM_OK;
    }
    return HSM_ERR_ARGS;
}

static hsm_oaep_hash kt_hash(hsm_kt_alg alg)
{
    return alg == HSM_KT_RSA_OAEP_SHA256 ? HSM_OAEP_SHA256 : HSM_OAEP_SHA1;
}

/* ---- PKCS#1 v1.5 with implicit rejection ------------------------------------ */

/* HMAC-SHA-256 of the ciphertext under the rejection key: on the token, or
 * for a sealed rejection key (a token without HMAC) opened into locked
 * memory and computed here. */
static hsm_err reject_mac(hsm_ctx *ctx, CK_SESSION_HANDLE s, const hsm_unwrap_input *in, unsigned char mac[32])
{
    CK_MECHANISM hm = {CKM_SHA256_HMAC, NULL, 0};
    CK_ULONG maclen = 32;
    CK_OBJECT_HANDLE rk;
    hsm_err err;

    if (in->reject_key->sealed != NULL)
        return hsm_sealed_hmac(ctx, s, in->reject_key, in->encrypted_key, in->encrypted_key_len, mac);
    if ((err = hsm_key_handle(ctx, s, in->reject_key, &rk)) != HSM_OK)
        return err;
    err = P11(ctx, C_SignInit, s, &hm, rk);
    if (err == HSM_OK)
        err = P11(ctx, C_Sign, s, (CK_BYTE_PTR)in->encrypted_key, (CK_ULONG)in->encrypted_key_len, mac, &maclen);
    if (err == HSM_OK && maclen != 32)
        err = HSM_ERR_DEVICE;
    return err;
}

/* Writes in->expected_len bytes to out: the decrypted key when the padding
 * is valid and the plaintext has the expected length, else the first
 * expected_len bytes of HMAC-SHA-256(ciphertext) under reject_key. Both
 * candidates are computed every time and the choice is a mask, so nothing
 * here branches on the padding result. (What the token itself leaks in
 * C_Decrypt timing is beyond our reach; SoftHSM/OpenSSL 3.0 is not
 * constant-time there.) Errors returned are only ones independent of the
 * ciphertext: session, login, token, key policy. */
static hsm_err ir_decrypt(hsm_ctx *ctx, CK_SESSION_HANDLE s, const hsm_unwrap_input *in, unsigned char *out)
{
    unsigned char mac[32], pt[CT_MAX];
    CK_ULONG ptlen = sizeof(pt);
    CK_MECHANISM rm = {CKM_RSA_PKCS, NULL, 0};
    CK_OBJECT_HANDLE gk;
    CK_RV rv;
    size_t good, i;
    hsm_errsave sv;
    hsm_err err;

    memset(out, 0, in->expected_len);
    memset(pt, 0, sizeof(pt));
    memset(mac, 0, sizeof(mac));
    if ((err = hsm_key_handle(ctx, s, in->group_key, &gk)) != HSM_OK)
        goto out;
    if ((err = reject_mac(ctx, s, in, mac)) != HSM_OK)
        goto out;
    if ((err = P11(ctx, C_DecryptInit, s, &rm, gk)) != HSM_OK)
        goto out;
    if ((err = hsm_context_login(ctx, s, in->group_key)) != HSM_OK)
        goto out;

    hsm_err_save(&sv);
    hsm_p11_quiet(true);
    err = P11(ctx, C_Decrypt, s, (CK_BYTE_PTR)in->encrypted_key, (CK_ULONG)in->encrypted_key_len, pt, &ptlen);
    hsm_p11_quiet(false);
    rv = hsm_last_rv();
    if (recoverable_rv(rv)) {
        /* Not about the data: the session/login/token went away. */
        hsm_set_detail("C_Decrypt: %s", hsm_ckr_name(rv));
        goto out;
    }
    hsm_err_restore(&sv);
    /* Any other outcome (bad padding, CKR_GENERAL_ERROR from SoftHSM, a
     * wrong-length plaintext) selects the substitute. */
    good = ct_eq((size_t)rv, (size_t)CKR_OK) & ct_eq((size_t)ptlen, in->expected_len);
    for (i = 0; i < in->expected_len; i++)
        out[i] = (unsigned char)((pt[i] & (unsigned char)good) | (mac[i] & (unsigned char)~good));
    err = HSM_OK;
out:
    OPENSSL_cleanse(pt, sizeof(pt));
    OPENSSL_cleanse(mac, sizeof(mac));
    if (err != HSM_OK)
        OPENSSL_cleanse(out, in->expected_len);
    return err;
}

/* ---- the content key in memory ------------------------------------------------- */

/* Decrypts the content key of `in` into out (cap bytes; at least CT_MAX
 * for OAEP: tokens want room for a whole modulus), *len its length. For
 * method F and every path that re-wraps in software; the caller wipes. */
static hsm_err decrypt_into(hsm_ctx *ctx, CK_SESSION_HANDLE s, const hsm_unwrap_input *in, unsigned char *out,
                            size_t cap, size_t *len)
{
    CK_ULONG ptlen = cap;
    CK_RSA_PKCS_OAEP_PARAMS op;
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &op, sizeof(op)};
    CK_OBJECT_HANDLE gk;
    hsm_err err;

    *len = 0;
    if (in->alg == HSM_KT_RSA_PKCS1V15) {
        if (cap < in->expected_len)
            return HSM_ERR_BUFFER;
        if ((err = ir_decrypt(ctx, s, in, out)) == HSM_OK)
            *len = in->expected_len;
        return err;
    }
    hsm_oaep_params(kt_hash(in->alg), &op);
    if ((err = hsm_key_handle(ctx, s, in->group_key, &gk)) != HSM_OK)
        return err;
    err = hsm_oaep_check(ctx, P11(ctx, C_DecryptInit, s, &m, gk), kt_hash(in->alg));
    if (err != HSM_OK)
        return err;
    if ((err = hsm_context_login(ctx, s, in->group_key)) != HSM_OK)
        return err;
    err = P11(ctx, C_Decrypt, s, (CK_BYTE_PTR)in->encrypted_key, (CK_ULONG)in->encrypted_key_len, out, &ptlen);
    err = hsm_oaep_check(ctx, hsm_decrypt_check(err), kt_hash(in->alg));
    if (err != HSM_OK) {
        OPENSSL_cleanse(out, cap);
        return err;
    }
    if (in->expected_len != 0 && ptlen != in->expected_len) {
        OPENSSL_cleanse(out, cap);
        hsm_set_detail("decrypted key has the wrong length");
        return HSM_ERR_DECRYPT;
    }
    *len = ptlen;
    return HSM_OK;
}

/* ---- method F: plain content key ---------------------------------------------- */

struct decrypt_arg {
    const hsm_unwrap_input *in;
    unsigned char *out;
    size_t outcap, outlen;
};

static hsm_err op_decrypt(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    struct decrypt_arg *da = arg;
    unsigned char pt[CT_MAX];
    size_t ptlen = 0;
    hsm_err err;

    OPENSSL_cleanse(da->out, da->outcap);
    da->outlen = 0;
    if ((err = decrypt_into(ctx, s, da->in, pt, sizeof(pt), &ptlen)) != HSM_OK)
        goto out;
    if (ptlen > da->outcap) {
        err = HSM_ERR_BUFFER;
        goto out;
    }
    memcpy(da->out, pt, ptlen);
    da->outlen = ptlen;
out:
    OPENSSL_cleanse(pt, sizeof(pt));
    return err;
}

hsm_err hsm_decrypt_content_key(hsm_ctx *ctx, const hsm_unwrap_input *in, unsigned char *out, size_t outcap,
                                size_t *outlen)
{
    struct decrypt_arg da = {in, out, outcap, 0};
    hsm_err err;

    if (outlen != NULL)
        *outlen = 0;
    if (out != NULL)
        OPENSSL_cleanse(out, outcap);
    hsm_clear_detail();
    if (ctx == NULL || out == NULL || outlen == NULL || (err = check_unwrap_input(in)) != HSM_OK)
        return HSM_ERR_ARGS;
    if (outcap < (in->expected_len != 0 ? in->expected_len : 1))
        return HSM_ERR_BUFFER;
    err = hsm_run(ctx, op_decrypt, &da);
    if (err != HSM_OK) {
        OPENSSL_cleanse(out, outcap);
        return err;
    }
    *outlen = da.outlen;
    return HSM_OK;
}

/* ---- probing a key transport algorithm -------------------------------------- */

struct check_arg {
    hsm_key *key;
    hsm_kt_alg alg;
};

static hsm_err op_check(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    struct check_arg *ca = arg;
    CK_RSA_PKCS_OAEP_PARAMS op;
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &op, sizeof(op)};
    CK_OBJECT_HANDLE h;
    hsm_err err;

    if ((err = hsm_key_handle(ctx, s, ca->key, &h)) != HSM_OK)
        return err;
    if (ca->alg == HSM_KT_RSA_PKCS1V15) {
        m.mechanism = CKM_RSA_PKCS;
        m.pParameter = NULL;
        m.ulParameterLen = 0;
    } else {
        hsm_oaep_params(kt_hash(ca->alg), &op);
    }
    err = P11(ctx, C_DecryptInit, s, &m, h);
    if (err == HSM_OK) {
        /* PKCS#11 2.40 has no way to cancel: the session is closed instead. */
        hsm_taint_session();
        return HSM_OK;
    }
    if (ca->alg == HSM_KT_RSA_PKCS1V15) {
        if (hsm_last_rv() == CKR_MECHANISM_INVALID) {
            char prev[192];
            util_strlcpy(prev, hsm_last_error_detail(), sizeof(prev));
            hsm_set_detail("key or token does not allow RSA PKCS#1 v1.5 (%s)", prev);
        }
        return err;
    }
    return hsm_oaep_check(ctx, err, kt_hash(ca->alg));
}

static hsm_err oaep_trial(hsm_ctx *ctx, hsm_key *key, const unsigned char *spki, size_t spki_len,
                          hsm_oaep_hash hash, bool unwrap, CK_RV *rv);

hsm_err hsm_check_kt_alg(hsm_ctx *ctx, hsm_key *group_key, hsm_kt_alg alg)
{
    struct check_arg ca = {group_key, alg};
    unsigned char *spki = NULL;
    size_t spki_len = 0;
    hsm_err err, trial;
    CK_RV rv = CKR_OK;

    hsm_clear_detail();
    if (ctx == NULL || group_key == NULL ||
        (alg != HSM_KT_RSA_OAEP_SHA1 && alg != HSM_KT_RSA_OAEP_SHA256 && alg != HSM_KT_RSA_PKCS1V15))
        return HSM_ERR_ARGS;
    err = hsm_run(ctx, op_check, &ca);
    /* A key that unwraps but may not decrypt (a group re-wrapping on the
     * token without tls or PKCS#1 v1.5) refuses C_DecryptInit whatever
     * C_UnwrapKey would do with RSA-OAEP: one real trial says. */
    if (err != HSM_ERR_KEY_POLICY || alg == HSM_KT_RSA_PKCS1V15 ||
        hsm_key_export_public(ctx, group_key, &spki, &spki_len) != HSM_OK) {
        free(spki);
        return err;
    }
    trial = oaep_trial(ctx, group_key, spki, spki_len, kt_hash(alg), true, &rv);
    free(spki);
    /* A trial that failed on its own data says nothing more than the
     * refusal before it. */
    if (trial == HSM_ERR_DECRYPT || trial == HSM_ERR_ARGS || trial == HSM_ERR_BUFFER)
        return err;
    return trial;
}

/* ---- content key as a session object ---------------------------------------- */

/* Template of a content key held in the token for re-wrapping: a session
 * object, sensitive (never readable), extractable only so that it can be
 * wrapped out, and good for nothing else. */
static CK_ULONG ck_template(CK_ATTRIBUTE *t, CK_OBJECT_CLASS *cls, CK_KEY_TYPE *kt)
{
    CK_ULONG n = 0;

#define A(ty, p, l) (t[n].type = (ty), t[n].pValue = (p), t[n].ulValueLen = (l), n++)
    A(CKA_CLASS, cls, sizeof(*cls));
    A(CKA_KEY_TYPE, kt, sizeof(*kt));
    A(CKA_TOKEN, &ck_false, sizeof(CK_BBOOL));
    A(CKA_PRIVATE, &ck_true, sizeof(CK_BBOOL));
    A(CKA_SENSITIVE, &ck_true, sizeof(CK_BBOOL));
    A(CKA_EXTRACTABLE, &ck_true, sizeof(CK_BBOOL));
    A(CKA_ENCRYPT, &ck_false, sizeof(CK_BBOOL));
    A(CKA_DECRYPT, &ck_false, sizeof(CK_BBOOL));
    A(CKA_WRAP, &ck_false, sizeof(CK_BBOOL));
    A(CKA_UNWRAP, &ck_false, sizeof(CK_BBOOL));
    A(CKA_SIGN, &ck_false, sizeof(CK_BBOOL));
    A(CKA_VERIFY, &ck_false, sizeof(CK_BBOOL));
    A(CKA_DERIVE, &ck_false, sizeof(CK_BBOOL));
#undef A
    return n;
}

/* Drops one attribute from a template; returns the new count. */
static CK_ULONG ck_without(CK_ATTRIBUTE *t, CK_ULONG n, CK_ATTRIBUTE_TYPE type)
{
    CK_ULONG i, k = 0;

    for (i = 0; i < n; i++)
        if (t[i].type != type)
            t[k++] = t[i];
    return k;
}

/* The length of a sensitive session key without reading it: AES key wrap
 * (RFC 3394) under a throw-away session AES key makes exactly length + 8
 * bytes. For tokens that do not report CKA_VALUE_LEN of unwrapped keys
 * (SoftHSM 2.6.1): with it an RSA-OAEP plaintext of the wrong length is a
 * failed unwrap, as on tokens that report it, instead of a key handed on.
 * Exact for lengths that are multiples of 8, which every AES content key
 * is; a token that refuses other lengths (CKR_KEY_SIZE_RANGE and the like)
 * has told us the length is wrong (*len = 1). SoftHSM 2.6.1 zero-pads them
 * to the next multiple of 8 instead, so there a 17..23-byte plaintext
 * passes for 24 (no CMS content key has such a length: it decrypts
 * nothing). A token without CKM_AES_KEY_GEN or CKM_AES_KEY_WRAP leaves
 * *len 0 ("not known"); session or token trouble is an error. */
static hsm_err probe_key_length(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE ck, CK_ULONG *len)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE aes = CKK_AES;
    CK_ULONG kl = 16, wl;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &aes, sizeof(aes)},
        {CKA_VALUE_LEN, &kl, sizeof(kl)},
        {CKA_TOKEN, &ck_false, sizeof(CK_BBOOL)},
        {CKA_SENSITIVE, &ck_true, sizeof(CK_BBOOL)},
        {CKA_EXTRACTABLE, &ck_false, sizeof(CK_BBOOL)},
        {CKA_WRAP, &ck_true, sizeof(CK_BBOOL)},
        {CKA_UNWRAP, &ck_false, sizeof(CK_BBOOL)},
        {CKA_ENCRYPT, &ck_false, sizeof(CK_BBOOL)},
        {CKA_DECRYPT, &ck_false, sizeof(CK_BBOOL)},
    };
    CK_MECHANISM gm = {CKM_AES_KEY_GEN, NULL, 0}, wm = {CKM_AES_KEY_WRAP, NULL, 0};
    CK_OBJECT_HANDLE kek = CK_INVALID_HANDLE;
    unsigned char buf[128];
    hsm_err err;

    *len = 0;
    hsm_p11_quiet(true);
    err = P11(ctx, C_GenerateKey, s, &gm, t, GS_ARRAY_LEN(t), &kek);
    if (err == HSM_OK) {
        wl = sizeof(buf);
        err = P11(ctx, C_WrapKey, s, &wm, kek, ck, buf, &wl);
        if (err == HSM_OK && wl > 8)
            *len = wl - 8;
    }
    hsm_p11_quiet(false);
    OPENSSL_cleanse(buf, sizeof(buf));
    if (err != HSM_OK) {
        CK_RV rv = hsm_last_rv();
        if (recoverable_rv(rv)) {
            hsm_destroy_session_obj(ctx, s, &kek);
            return err;
        }
        if (rv == CKR_KEY_SIZE_RANGE || rv == CKR_DATA_LEN_RANGE || rv == CKR_WRAPPED_KEY_LEN_RANGE)
            *len = 1;
    }
    hsm_destroy_session_obj(ctx, s, &kek);
    return HSM_OK;
}

/* Puts the content key of `in` into a session object *ck. For OAEP this is
 * C_UnwrapKey: the key never enters our memory. For PKCS#1 v1.5 it cannot
 * be: implicit rejection needs the decrypted bytes to choose between them
 * and the substitute, so the key passes through process memory (wiped
 * right after C_CreateObject). SECURITY.md says what that costs. */
static hsm_err content_key_object(hsm_ctx *ctx, CK_SESSION_HANDLE s, const hsm_unwrap_input *in,
                                  CK_OBJECT_HANDLE *ck, size_t *klen)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    size_t el = in->expected_len;
    CK_KEY_TYPE kt = (el == 16 || el == 24 || el == 32) ? CKK_AES : CKK_GENERIC_SECRET;
    CK_ATTRIBUTE t[16];
    CK_ULONG n = ck_template(t, &cls, &kt);
    CK_ULONG vlen = 0;
    hsm_err err;

    *ck = CK_INVALID_HANDLE;
    *klen = 0;
    if (in->alg == HSM_KT_RSA_PKCS1V15 || in->rewrap == HSM_REWRAP_SOFTWARE) {
        /* The bytes pass through locked memory into a session object. */
        unsigned char *key = hsm_secmem_new(CT_MAX);
        size_t len = 0;
        if (key == NULL)
            return HSM_ERR_NOMEM;
        err = decrypt_into(ctx, s, in, key, CT_MAX, &len);
        if (err == HSM_OK && len > 64) {
            hsm_set_detail("decrypted key has the wrong length");
            err = HSM_ERR_DECRYPT;
        }
        if (err == HSM_OK) {
            if (len != el)
                kt = (len == 16 || len == 24 || len == 32) ? CKK_AES : CKK_GENERIC_SECRET;
            t[n].type = CKA_VALUE;
            t[n].pValue = key;
            t[n++].ulValueLen = len;
            err = P11(ctx, C_CreateObject, s, t, n, ck);
        }
        hsm_secmem_free(key, CT_MAX);
        if (err == HSM_OK)
            *klen = len;
        return err;
    } else {
        CK_RSA_PKCS_OAEP_PARAMS op;
        CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &op, sizeof(op)};
        CK_OBJECT_HANDLE gk;

        hsm_oaep_params(kt_hash(in->alg), &op);
        if ((err = hsm_key_handle(ctx, s, in->group_key, &gk)) != HSM_OK)
            return err;
        if (atomic_load(&ctx->unwrap_no_extractable))
            n = ck_without(t, n, CKA_EXTRACTABLE);
        err = P11(ctx, C_UnwrapKey, s, &m, gk, (CK_BYTE_PTR)in->encrypted_key,
                  (CK_ULONG)in->encrypted_key_len, t, n, ck);
        if (err != HSM_OK)
            hsm_detail_mech(m.mechanism);
        if (err != HSM_OK && hsm_last_rv() == CKR_ATTRIBUTE_READ_ONLY && !atomic_load(&ctx->unwrap_no_extractable)) {
            /* opencryptoki 3.8 refuses CKA_EXTRACTABLE in an unwrap
             * template (its unwrapped keys are extractable anyway, and
             * C_WrapKey below proves it): asked again without it, and
             * from now on. Sensitive stays asked for. */
            atomic_store(&ctx->unwrap_no_extractable, true);
            log_info("token refuses CKA_EXTRACTABLE in an unwrap template; leaving it to the token's default");
            n = ck_without(t, n, CKA_EXTRACTABLE);
            err = P11(ctx, C_UnwrapKey, s, &m, gk, (CK_BYTE_PTR)in->encrypted_key,
                      (CK_ULONG)in->encrypted_key_len, t, n, ck);
        }
        /* An AES-typed unwrap of a wrong-length plaintext is a decryption failure too. */
        if (err == HSM_ERR_ARGS && kt == CKK_AES)
            err = HSM_ERR_DECRYPT;
        err = hsm_oaep_check(ctx, hsm_decrypt_check(err), kt_hash(in->alg));
        if (err != HSM_OK)
            return err;
        if ((err = hsm_get_ulong(ctx, s, *ck, CKA_VALUE_LEN, &vlen)) != HSM_OK) {
            hsm_destroy_session_obj(ctx, s, ck);
            return err;
        }
        /* SoftHSM 2.6.1 does not set CKA_VALUE_LEN on unwrapped keys (reads
         * back 0) and refuses it in the unwrap template
         * (CKR_ATTRIBUTE_READ_ONLY), so there the length cannot be checked
         * without reading the key, which we never do: trust expected_len.
         * With expected_len 0 the key was unwrapped as a generic secret of
         * the plaintext's own length; *klen 0 then means "not known", and
         * the wrap steps cope (OAEP wraps any length; the AES wrap learns
         * it from its output). OAEP already proved the plaintext is what
         * the sender wrapped, so nothing is lost by not knowing. */
        if (vlen == 0 && kt == CKK_AES && (err = probe_key_length(ctx, s, *ck, &vlen)) != HSM_OK) {
            hsm_destroy_session_obj(ctx, s, ck);
            return err;
        }
        if (vlen == 0)
            vlen = el;
        if (el != 0 && vlen != el) {
            hsm_destroy_session_obj(ctx, s, ck);
            hsm_set_detail("decrypted key has the wrong length");
            return HSM_ERR_DECRYPT;
        }
        *klen = vlen;
        return HSM_OK;
    }
}

/* ---- which OAEP hashes a key works with ---------------------------------------- */

struct probe_arg {
    hsm_unwrap_input in;
    bool unwrap;          /* try C_UnwrapKey, else C_Decrypt */
    CK_RV rv;             /* out: the trial's CK_RV */
};

static hsm_err op_probe_oaep(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    struct probe_arg *pa = arg;
    unsigned char *pt;
    CK_OBJECT_HANDLE ck = CK_INVALID_HANDLE;
    size_t len = 0;
    hsm_err err;

    if (pa->unwrap) {
        err = content_key_object(ctx, s, &pa->in, &ck, &len);
        pa->rv = err == HSM_OK ? CKR_OK : hsm_last_rv();
        hsm_destroy_session_obj(ctx, s, &ck);
        return err;
    }
    if ((pt = hsm_secmem_new(CT_MAX)) == NULL)
        return HSM_ERR_NOMEM;
    err = decrypt_into(ctx, s, &pa->in, pt, CT_MAX, &len);
    pa->rv = err == HSM_OK ? CKR_OK : hsm_last_rv();
    hsm_secmem_free(pt, CT_MAX);
    return err;
}

/* Did a trial fail because the token did (gone, no room, a lost session
 * or login), which says nothing about the hash? CKR_GENERAL_ERROR and
 * CKR_FUNCTION_FAILED are not counted: some tokens answer an OAEP hash
 * they lack with them. */
static bool trial_token_failed(hsm_err err, CK_RV rv)
{
    if (err == HSM_ERR_DEVICE)
        return rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_MEMORY;
    return err == HSM_ERR_TOKEN_ABSENT || err == HSM_ERR_SESSION || err == HSM_ERR_NOT_LOGGED_IN ||
           err == HSM_ERR_MODULE || err == HSM_ERR_PIN_INCORRECT || err == HSM_ERR_PIN_LOCKED;
}

hsm_err hsm_key_probe_oaep(hsm_ctx *ctx, hsm_key *key, unsigned *decrypt, unsigned *unwrap)
{
    static const hsm_oaep_hash hashes[] = {HSM_OAEP_SHA1, HSM_OAEP_SHA256};
    hsm_key_info ki;
    unsigned char *spki = NULL;
    size_t spki_len = 0, i;
    hsm_err err;

    if (decrypt != NULL)
        *decrypt = 0;
    if (unwrap != NULL)
        *unwrap = 0;
    hsm_clear_detail();
    if (ctx == NULL || key == NULL || decrypt == NULL || unwrap == NULL || key->sealed != NULL)
        return HSM_ERR_ARGS;
    if ((err = hsm_key_get_info(ctx, key, &ki)) != HSM_OK)
        return err;
    if (ki.cls != HSM_CLASS_PRIVATE || ki.type != HSM_KEYTYPE_RSA)
        return HSM_ERR_ARGS;
    if ((err = hsm_key_export_public(ctx, key, &spki, &spki_len)) != HSM_OK)
        return err;
    for (i = 0; i < GS_ARRAY_LEN(hashes) && err == HSM_OK; i++) {
        for (int k = 0; k < 2 && err == HSM_OK; k++) {
            if ((k == 0 && !ki.decrypt) || (k == 1 && !ki.unwrap))
                continue;
            CK_RV rv = CKR_OK;
            hsm_err trial = oaep_trial(ctx, key, spki, spki_len, hashes[i], k == 1, &rv);
            if (trial == HSM_OK)
                *(k == 0 ? decrypt : unwrap) |= 1u << hashes[i];
            else if (trial == HSM_ERR_NOMEM || trial == HSM_ERR_PUBLIC_KEY || trial_token_failed(trial, rv))
                err = trial; /* no trial could run, or the token failed: not an answer about the hash */
        }
    }
    free(spki);
    if (err == HSM_OK)
        hsm_clear_detail();
    else
        *decrypt = *unwrap = 0;
    return err;
}

/* One real trial of key with RSA-OAEP (hash): a random value encrypted to
 * its public key (spki) in software, then C_Decrypt, or with unwrap
 * C_UnwrapKey into a session key destroyed at once. */
static hsm_err oaep_trial(hsm_ctx *ctx, hsm_key *key, const unsigned char *spki, size_t spki_len,
                          hsm_oaep_hash hash, bool unwrap, CK_RV *rv)
{
    unsigned char value[32], *ct = NULL;
    size_t ct_len = 0;
    struct probe_arg pa;
    hsm_err err;

    /* A random value, not a secret: the trial's result is discarded. */
    if (RAND_bytes(value, sizeof(value)) != 1) {
        err = HSM_ERR_NOMEM;
        goto out;
    }
    if ((err = hsm_soft_oaep_encrypt(spki, spki_len, hash, value, sizeof(value), &ct, &ct_len)) != HSM_OK)
        goto out;
    memset(&pa, 0, sizeof(pa));
    pa.in.group_key = key;
    pa.in.alg = hash == HSM_OAEP_SHA256 ? HSM_KT_RSA_OAEP_SHA256 : HSM_KT_RSA_OAEP_SHA1;
    pa.in.encrypted_key = ct;
    pa.in.encrypted_key_len = ct_len;
    pa.in.expected_len = sizeof(value);
    pa.unwrap = unwrap;
    err = hsm_run_once(ctx, op_probe_oaep, &pa);
    /* run's own failure (no session) is in the thread's last CK_RV */
    *rv = pa.rv != CKR_OK || err == HSM_OK ? pa.rv : hsm_last_rv();
out:
    OPENSSL_cleanse(value, sizeof(value));
    free(ct);
    return err;
}

/* ---- E/G/member-certs: re-wrap to public keys --------------------------------- */

struct rewrap_arg {
    const hsm_unwrap_input *in;
    const hsm_kt_alg *wrap_algs;
    const unsigned char *const *spki;
    const size_t *spki_len;
    size_t n;
    unsigned char **outs;
    size_t *lens;
    hsm_key *kek;
    unsigned char *out;
    size_t outlen;
    bool software; /* this request takes the software path (below) */
};

static void rewrap_clear(struct rewrap_arg *ra)
{
    size_t i;

    for (i = 0; ra->outs != NULL && i < ra->n; i++) {
        free(ra->outs[i]);
        ra->outs[i] = NULL;
        ra->lens[i] = 0;
    }
    free(ra->out);
    ra->out = NULL;
    ra->outlen = 0;
}

/* Wraps key `ck` to the recipient spki into a fresh buffer: RSA-OAEP, or
 * with HSM_KT_RSA_PKCS1V15 CKM_RSA_PKCS (encryption to the recipient's own
 * key; the padding oracle, if any, is the recipient's own client's). */
static hsm_err wrap_to_spki(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE ck, hsm_kt_alg alg,
                            const unsigned char *spki, size_t spki_len, unsigned char **out, size_t *outlen)
{
    CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE;
    CK_RSA_PKCS_OAEP_PARAMS op;
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &op, sizeof(op)};
    unsigned char buf[RSA_OUT_MAX];
    CK_ULONG len = sizeof(buf);
    hsm_err err;

    *out = NULL;
    *outlen = 0;
    if (alg == HSM_KT_RSA_PKCS1V15) {
        m.mechanism = CKM_RSA_PKCS;
        m.pParameter = NULL;
        m.ulParameterLen = 0;
    } else {
        hsm_oaep_params(kt_hash(alg), &op);
    }
    if ((err = hsm_import_wrap_pubkey(ctx, s, spki, spki_len, &pub)) != HSM_OK)
        goto out;
    err = P11(ctx, C_WrapKey, s, &m, pub, ck, buf, &len);
    if (err != HSM_OK)
        hsm_detail_mech(m.mechanism);
    if (alg != HSM_KT_RSA_PKCS1V15)
        err = hsm_oaep_check(ctx, err, kt_hash(alg));
    if (err != HSM_OK)
        goto out;
    if ((*out = malloc(len)) == NULL) {
        err = HSM_ERR_NOMEM;
        goto out;
    }
    memcpy(*out, buf, len);
    *outlen = len;
out:
    hsm_destroy_session_obj(ctx, s, &pub);
    return err;
}

/* The software path (HSM_REWRAP_SOFTWARE): the content key is decrypted
 * into locked memory and encrypted to each recipient with OpenSSL. */
static hsm_err rewrap_pub_software(hsm_ctx *ctx, CK_SESSION_HANDLE s, struct rewrap_arg *ra)
{
    unsigned char *key = hsm_secmem_new(CT_MAX);
    size_t klen = 0, i;
    hsm_err err;

    if (key == NULL)
        return HSM_ERR_NOMEM;
    if ((err = decrypt_into(ctx, s, ra->in, key, CT_MAX, &klen)) != HSM_OK)
        goto out;
    for (i = 0; i < ra->n; i++) {
        err = hsm_soft_rsa_encrypt(ra->spki[i], ra->spki_len[i], ra->wrap_algs[i], key, klen, &ra->outs[i],
                                   &ra->lens[i]);
        if (err != HSM_OK)
            goto out;
    }
out:
    hsm_secmem_free(key, CT_MAX);
    return err;
}

static hsm_err op_rewrap_pub(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    struct rewrap_arg *ra = arg;
    CK_OBJECT_HANDLE ck = CK_INVALID_HANDLE;
    size_t klen, i;
    hsm_err err;

    rewrap_clear(ra);
    if (ra->in->rewrap == HSM_REWRAP_SOFTWARE || ra->software) {
        if ((err = rewrap_pub_software(ctx, s, ra)) != HSM_OK)
            rewrap_clear(ra);
        return err;
    }
    if ((err = content_key_object(ctx, s, ra->in, &ck, &klen)) != HSM_OK)
        goto out;
    for (i = 0; i < ra->n; i++) {
        err =
            wrap_to_spki(ctx, s, ck, ra->wrap_algs[i], ra->spki[i], ra->spki_len[i], &ra->outs[i], &ra->lens[i]);
        if (err != HSM_OK)
            goto out;
    }
out:
    hsm_destroy_session_obj(ctx, s, &ck);
    if (err != HSM_OK)
        rewrap_clear(ra);
    return err;
}

/* Whether PKCS#1 v1.5 copies must be wrapped in software: a token that
 * re-wraps with RSA-OAEP but lists no C_WrapKey for CKM_RSA_PKCS cannot
 * make them, so the whole request takes the software path (the content
 * key in locked server memory, as for HSM_REWRAP_SOFTWARE). That is a
 * weakening, said once in the log. */
static bool needs_soft_v15(hsm_ctx *ctx, const hsm_kt_alg *wrap_algs, size_t n)
{
    static atomic_bool said;
    hsm_caps caps;
    size_t i;

    for (i = 0; i < n && wrap_algs[i] != HSM_KT_RSA_PKCS1V15; i++)
        ;
    if (i == n)
        return false;
    hsm_caps_load(ctx, &caps);
    if (hsm_caps_has(&caps, HSM_MECH_RSA_PKCS, HSM_MF_WRAP))
        return false;
    if (!atomic_exchange(&said, true))
        log_warn("token has no C_WrapKey with CKM_RSA_PKCS: PKCS#1 v1.5 member copies are wrapped in software "
                 "(weakening: the content key is in locked server memory)");
    return true;
}

hsm_err hsm_rewrap_to_recipients(hsm_ctx *ctx, const hsm_unwrap_input *in, const hsm_kt_alg *wrap_algs,
                                 const unsigned char *const *spki, const size_t *spki_len, size_t n,
                                 unsigned char **outs, size_t *lens)
{
    struct rewrap_arg ra;
    size_t i;
    hsm_err err;

    hsm_clear_detail();
    if (outs != NULL && lens != NULL && n <= RECIPIENTS_MAX)
        for (i = 0; i < n; i++) {
            outs[i] = NULL;
            lens[i] = 0;
        }
    if (ctx == NULL || wrap_algs == NULL || spki == NULL || spki_len == NULL || outs == NULL || lens == NULL ||
        n == 0 || n > RECIPIENTS_MAX)
        return HSM_ERR_ARGS;
    for (i = 0; i < n; i++)
        if (wrap_algs[i] != HSM_KT_RSA_OAEP_SHA1 && wrap_algs[i] != HSM_KT_RSA_OAEP_SHA256 &&
            wrap_algs[i] != HSM_KT_RSA_PKCS1V15)
            return HSM_ERR_ARGS;
    if ((err = check_unwrap_input(in)) != HSM_OK)
        return err;
    memset(&ra, 0, sizeof(ra));
    ra.in = in;
    ra.wrap_algs = wrap_algs;
    ra.spki = spki;
    ra.spki_len = spki_len;
    ra.n = n;
    ra.outs = outs;
    ra.lens = lens;
    if (in->rewrap != HSM_REWRAP_SOFTWARE && needs_soft_v15(ctx, wrap_algs, n))
        ra.software = true;
    return hsm_run(ctx, op_rewrap_pub, &ra);
}

hsm_err hsm_rewrap_to_public_keys(hsm_ctx *ctx, const hsm_unwrap_input *in, hsm_oaep_hash out_hash,
                                  const unsigned char *const *spki, const size_t *spki_len, size_t n,
                                  unsigned char **outs, size_t *lens)
{
    hsm_kt_alg *algs;
    hsm_err err;

    if (out_hash != HSM_OAEP_SHA1 && out_hash != HSM_OAEP_SHA256) {
        hsm_clear_detail();
        return HSM_ERR_ARGS;
    }
    if (n == 0 || n > RECIPIENTS_MAX)
        return hsm_rewrap_to_recipients(ctx, in, NULL, spki, spki_len, n, outs, lens);
    if ((algs = malloc(n * sizeof(*algs))) == NULL)
        return HSM_ERR_NOMEM;
    for (size_t i = 0; i < n; i++)
        algs[i] = out_hash == HSM_OAEP_SHA256 ? HSM_KT_RSA_OAEP_SHA256 : HSM_KT_RSA_OAEP_SHA1;
    err = hsm_rewrap_to_recipients(ctx, in, algs, spki, spki_len, n, outs, lens);
    free(algs);
    return err;
}

/* ---- group-secret: re-wrap under a token AES key ------------------------------ */

/* How a group secret key wraps. */
enum kek_kind { KEK_WRAP, KEK_ECB, KEK_SEALED };

static enum kek_kind kek_kind_of(hsm_ctx *ctx, CK_SESSION_HANDLE s, hsm_key *kek, CK_OBJECT_HANDLE h)
{
    signed char wraps = 0;
    unsigned gen;

    if (kek->sealed != NULL)
        return KEK_SEALED;
    /* Made with HSM_USE_WRAP_ECB: encrypt (ECB only), no wrap. Read once
     * per object (a network HSM pays a round trip for each read). */
    pthread_mutex_lock(&ctx->key_mu);
    gen = ctx->key_gen;
    if (kek->wrap_gen == gen && kek->wrap_handle == h)
        wraps = kek->wraps;
    pthread_mutex_unlock(&ctx->key_mu);
    if (wraps == 0) {
        bool b;
        hsm_err rerr = hsm_read_bool(ctx, s, h, CKA_WRAP, &b);

        wraps = b ? 1 : -1;
        if (rerr == HSM_OK) { /* a failed read is not remembered */
            pthread_mutex_lock(&ctx->key_mu);
            kek->wraps = wraps;
            kek->wrap_handle = h;
            kek->wrap_gen = gen;
            pthread_mutex_unlock(&ctx->key_mu);
        }
    }
    return wraps > 0 ? KEK_WRAP : KEK_ECB;
}

/* RFC 3394/5649 with the content key in locked memory: on the token's
 * CKM_AES_ECB (the kek stays there), or in software under a sealed kek
 * opened into locked memory too. */
static hsm_err rewrap_secret_in_memory(hsm_ctx *ctx, CK_SESSION_HANDLE s, struct rewrap_arg *ra,
                                       enum kek_kind kind, CK_OBJECT_HANDLE kek)
{
    unsigned char *key = hsm_secmem_new(CT_MAX), *kv = NULL, buf[128];
    size_t klen = 0, kvlen = 0, outlen = 0;
    hsm_err err;

    if (key == NULL)
        return HSM_ERR_NOMEM;
    if ((err = decrypt_into(ctx, s, ra->in, key, CT_MAX, &klen)) != HSM_OK)
        goto out;
    if (klen < 1 || klen > 64) {
        hsm_set_detail("decrypted key has the wrong length");
        err = HSM_ERR_DECRYPT;
        goto out;
    }
    if (kind == KEK_ECB) {
        err = hsm_token_ecb_wrap(ctx, s, kek, key, klen, buf, sizeof(buf), &outlen);
    } else {
        if ((kv = hsm_secmem_new(HSM_SEALED_MAX)) == NULL) {
            err = HSM_ERR_NOMEM;
            goto out;
        }
        if ((err = hsm_sealed_open(ctx, s, ra->kek, kv, HSM_SEALED_MAX, &kvlen)) == HSM_OK)
            err = hsm_soft_aes_wrap(kv, kvlen, key, klen, buf, sizeof(buf), &outlen);
    }
    if (err != HSM_OK)
        goto out;
    if ((ra->out = malloc(outlen)) == NULL) {
        err = HSM_ERR_NOMEM;
        goto out;
    }
    memcpy(ra->out, buf, outlen);
    ra->outlen = outlen;
out:
    OPENSSL_cleanse(buf, sizeof(buf));
    hsm_secmem_free(kv, HSM_SEALED_MAX);
    hsm_secmem_free(key, CT_MAX);
    return err;
}

static hsm_err op_rewrap_secret(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    struct rewrap_arg *ra = arg;
    CK_OBJECT_HANDLE ck = CK_INVALID_HANDLE, kek = CK_INVALID_HANDLE;
    CK_MECHANISM m = {CKM_AES_KEY_WRAP, NULL, 0};
    unsigned char buf[128];
    CK_ULONG len = sizeof(buf);
    enum kek_kind kind;
    size_t klen;
    hsm_err err;

    rewrap_clear(ra);
    if (ra->kek->sealed == NULL && (err = hsm_key_handle(ctx, s, ra->kek, &kek)) != HSM_OK)
        goto out;
    kind = kek_kind_of(ctx, s, ra->kek, kek);
    if (kind != KEK_WRAP) {
        err = rewrap_secret_in_memory(ctx, s, ra, kind, kek);
        goto out;
    }
    if ((err = content_key_object(ctx, s, ra->in, &ck, &klen)) != HSM_OK)
        goto out;
    /* RFC 3394 needs whole 64-bit blocks (and at least two); else RFC 5649.
     * Length not known (expected_len 0 on a token that does not report
     * CKA_VALUE_LEN): RFC 3394 first, as every CMS content key (AES, 3DES)
     * is 16, 24 or 32 bytes; a token that refuses the length gets RFC 5649. */
    if (klen != 0 && (klen % 8 != 0 || klen < 16))
        m.mechanism = CKM_AES_KEY_WRAP_PAD;
    err = P11(ctx, C_WrapKey, s, &m, kek, ck, buf, &len);
    if (err != HSM_OK && klen == 0 &&
        (hsm_last_rv() == CKR_KEY_SIZE_RANGE || hsm_last_rv() == CKR_DATA_LEN_RANGE ||
         hsm_last_rv() == CKR_WRAPPED_KEY_LEN_RANGE)) {
        m.mechanism = CKM_AES_KEY_WRAP_PAD;
        len = sizeof(buf);
        err = P11(ctx, C_WrapKey, s, &m, kek, ck, buf, &len);
    }
    if (err != HSM_OK) {
        hsm_detail_mech(m.mechanism);
        goto out;
    }
    if ((ra->out = malloc(len)) == NULL) {
        err = HSM_ERR_NOMEM;
        goto out;
    }
    memcpy(ra->out, buf, len);
    ra->outlen = len;
out:
    hsm_destroy_session_obj(ctx, s, &ck);
    if (err != HSM_OK)
        rewrap_clear(ra);
    return err;
}

hsm_err hsm_rewrap_to_secret_key(hsm_ctx *ctx, const hsm_unwrap_input *in, hsm_key *kek, unsigned char **out,
                                 size_t *outlen)
{
    struct rewrap_arg ra;
    hsm_err err;

    if (out != NULL)
        *out = NULL;
    if (outlen != NULL)
        *outlen = 0;
    hsm_clear_detail();
    if (ctx == NULL || kek == NULL || out == NULL || outlen == NULL)
        return HSM_ERR_ARGS;
    if ((err = check_unwrap_input(in)) != HSM_OK)
        return err;
    memset(&ra, 0, sizeof(ra));
    ra.in = in;
    ra.kek = kek;
    if ((err = hsm_run(ctx, op_rewrap_secret, &ra)) != HSM_OK)
        return err;
    *out = ra.out;
    *outlen = ra.outlen;
    return HSM_OK;
}

/* ---- secret-keys: wrap a token secret key to a public key --------------------- */

struct wrapsec_arg {
    hsm_key *secret;
    hsm_oaep_hash hash;
    const unsigned char *spki;
    size_t spki_len;
    unsigned char *out;
    size_t outlen;
};

static hsm_err op_wrap_secret(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    struct wrapsec_arg *wa = arg;
    CK_OBJECT_HANDLE h;
    hsm_err err;

    free(wa->out);
    wa->out = NULL;
    wa->outlen = 0;
    if (wa->secret->sealed != NULL) {
        /* Opened into locked memory, encrypted to the member here. */
        unsigned char *kv = hsm_secmem_new(HSM_SEALED_MAX);
        size_t kvlen = 0;
        if (kv == NULL)
            return HSM_ERR_NOMEM;
        err = hsm_sealed_open(ctx, s, wa->secret, kv, HSM_SEALED_MAX, &kvlen);
        if (err == HSM_OK)
            err = hsm_soft_oaep_encrypt(wa->spki, wa->spki_len, wa->hash, kv, kvlen, &wa->out, &wa->outlen);
        hsm_secmem_free(kv, HSM_SEALED_MAX);
        return err;
    }
    if ((err = hsm_key_handle(ctx, s, wa->secret, &h)) != HSM_OK)
        return err;
    return wrap_to_spki(ctx, s, h, wa->hash == HSM_OAEP_SHA256 ? HSM_KT_RSA_OAEP_SHA256 : HSM_KT_RSA_OAEP_SHA1,
                        wa->spki, wa->spki_len, &wa->out, &wa->outlen);
}

hsm_err hsm_wrap_secret_key_to_public(hsm_ctx *ctx, hsm_key *secret, hsm_oaep_hash hash,
                                      const unsigned char *spki, size_t spki_len, unsigned char **out,
                                      size_t *outlen)
{
    struct wrapsec_arg wa = {secret, hash, spki, spki_len, NULL, 0};
    hsm_err err;

    if (out != NULL)
        *out = NULL;
    if (outlen != NULL)
        *outlen = 0;
    hsm_clear_detail();
    if (ctx == NULL || secret == NULL || spki == NULL || out == NULL || outlen == NULL ||
        (hash != HSM_OAEP_SHA1 && hash != HSM_OAEP_SHA256))
        return HSM_ERR_ARGS;
    if ((err = hsm_run(ctx, op_wrap_secret, &wa)) != HSM_OK) {
        free(wa.out);
        return err;
    }
    *out = wa.out;
    *outlen = wa.outlen;
    return HSM_OK;
}

/* ---- ECDH (RFC 5753) ---------------------------------------------------------- */

/* The template of the AES KEK that ECDH with the X9.63 KDF derives: a
 * session key that only unwraps and never leaves the token. One for the
 * unwrap and for hsm_probe_ecdh_kdf's trial, so the trial asks the token
 * exactly what an unwrap will. The attributes point into the struct. */
struct ecdh_kek {
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE type;
    CK_ULONG len;
    CK_ATTRIBUTE a[10];
};

static void ecdh_kek_template(struct ecdh_kek *t, CK_ULONG kek_len)
{
    const CK_ATTRIBUTE a[] = {
        {CKA_CLASS, &t->cls, sizeof(t->cls)},
        {CKA_KEY_TYPE, &t->type, sizeof(t->type)},
        {CKA_VALUE_LEN, &t->len, sizeof(t->len)},
        {CKA_TOKEN, &ck_false, sizeof(CK_BBOOL)},
        {CKA_SENSITIVE, &ck_true, sizeof(CK_BBOOL)},
        {CKA_EXTRACTABLE, &ck_false, sizeof(CK_BBOOL)},
        {CKA_UNWRAP, &ck_true, sizeof(CK_BBOOL)},
        {CKA_WRAP, &ck_false, sizeof(CK_BBOOL)},
        {CKA_ENCRYPT, &ck_false, sizeof(CK_BBOOL)},
        {CKA_DECRYPT, &ck_false, sizeof(CK_BBOOL)},
    };
    _Static_assert(sizeof(a) == sizeof(t->a), "ecdh_kek: template size");
    t->cls = CKO_SECRET_KEY;
    t->type = CKK_AES;
    t->len = kek_len;
    memcpy(t->a, a, sizeof(a));
}

struct ecdh_arg {
    const hsm_ecdh_input *in;
    unsigned char *out;
    size_t outcap, outlen;
};

static hsm_err op_ecdh(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    struct ecdh_arg *ea = arg;
    const hsm_ecdh_input *in = ea->in;
    CK_ECDH1_DERIVE_PARAMS dp;
    CK_MECHANISM dm = {CKM_ECDH1_DERIVE, &dp, sizeof(dp)};
    CK_MECHANISM wm = {CKM_AES_KEY_WRAP, NULL, 0};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE gen = CKK_GENERIC_SECRET;
    struct ecdh_kek kt;
    /* Method F hands the key out anyway: a readable session object. */
    CK_ATTRIBUTE ct[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &gen, sizeof(gen)},
        {CKA_TOKEN, &ck_false, sizeof(CK_BBOOL)},
        {CKA_SENSITIVE, &ck_false, sizeof(CK_BBOOL)},
        {CKA_EXTRACTABLE, &ck_true, sizeof(CK_BBOOL)},
    };
    CK_OBJECT_HANDLE gk, kek = CK_INVALID_HANDLE, ck = CK_INVALID_HANDLE;
    unsigned char *v = NULL;
    size_t vlen = 0;
    hsm_err err;

    OPENSSL_cleanse(ea->out, ea->outcap);
    ea->outlen = 0;
    if ((err = hsm_key_handle(ctx, s, in->group_key, &gk)) != HSM_OK)
        goto out;
    memset(&dp, 0, sizeof(dp));
    dp.kdf = in->kdf_hash == HSM_OAEP_SHA256 ? CKD_SHA256_KDF : CKD_SHA1_KDF;
    dp.pSharedData = (CK_BYTE_PTR)in->shared_info;
    dp.ulSharedDataLen = in->shared_info_len;
    dp.pPublicData = (CK_BYTE_PTR)in->peer_point;
    dp.ulPublicDataLen = in->peer_point_len;
    ecdh_kek_template(&kt, in->kek_len);
    err = P11(ctx, C_DeriveKey, s, &dm, gk, kt.a, GS_ARRAY_LEN(kt.a), &kek);
    if (err != HSM_OK) {
        CK_RV rv = hsm_last_rv();
        if (rv == CKR_MECHANISM_PARAM_INVALID || rv == CKR_ARGUMENTS_BAD || rv == CKR_MECHANISM_INVALID) {
            char prev[192];
            util_strlcpy(prev, hsm_last_error_detail(), sizeof(prev));
            /* SoftHSM 2.6.1 accepts only CKD_NULL (the bare shared secret),
             * which would have to leave the token for the KDF. */
            hsm_set_detail("token does not support ECDH with the X9.63 KDF (%s with shared info) (%s)",
                           in->kdf_hash == HSM_OAEP_SHA256 ? "CKD_SHA256_KDF" : "CKD_SHA1_KDF", prev);
            err = HSM_ERR_MECHANISM;
        }
        goto out;
    }
    err = hsm_decrypt_check(P11(ctx, C_UnwrapKey, s, &wm, kek, (CK_BYTE_PTR)in->wrapped_key,
                            (CK_ULONG)in->wrapped_key_len, ct, GS_ARRAY_LEN(ct), &ck));
    if (err != HSM_OK)
        goto out;
    if ((err = hsm_get_attr(ctx, s, ck, CKA_VALUE, &v, &vlen)) != HSM_OK)
        goto out;
    if (vlen > ea->outcap) {
        err = HSM_ERR_BUFFER;
        goto out;
    }
    memcpy(ea->out, v, vlen);
    ea->outlen = vlen;
out:
    if (v != NULL)
        OPENSSL_clear_free(v, vlen + 1);
    hsm_destroy_session_obj(ctx, s, &ck);
    hsm_destroy_session_obj(ctx, s, &kek);
    return err;
}

hsm_err hsm_ecdh_decrypt_content_key(hsm_ctx *ctx, const hsm_ecdh_input *in, unsigned char *out,
                                     size_t outcap, size_t *outlen)
{
    struct ecdh_arg ea = {in, out, outcap, 0};
    hsm_err err;

    if (outlen != NULL)
        *outlen = 0;
    if (out != NULL)
        OPENSSL_cleanse(out, outcap);
    hsm_clear_detail();
    if (ctx == NULL || in == NULL || out == NULL || outlen == NULL || in->group_key == NULL ||
        in->peer_point == NULL || in->peer_point_len < 3 || in->peer_point_len > 133 ||
        (in->shared_info == NULL && in->shared_info_len != 0) || in->shared_info_len > 1024 ||
        (in->kek_len != 16 && in->kek_len != 24 && in->kek_len != 32) || in->wrapped_key == NULL ||
        in->wrapped_key_len < 24 || in->wrapped_key_len > 72 || in->wrapped_key_len % 8 != 0 ||
        (in->kdf_hash != HSM_OAEP_SHA1 && in->kdf_hash != HSM_OAEP_SHA256))
        return HSM_ERR_ARGS;
    if ((err = hsm_run(ctx, op_ecdh, &ea)) != HSM_OK) {
        OPENSSL_cleanse(out, outcap);
        return err;
    }
    *outlen = ea.outlen;
    return HSM_OK;
}

/* ---- does the token's ECDH take the X9.63 KDF? ------------------------------------ */

struct kdf_probe_arg {
    hsm_key *key;                 /* NULL: a session key pair made for the trial */
    unsigned bits;                /* 256 or 384, for that key pair */
    const unsigned char *peer;    /* an uncompressed point of the curve */
    size_t peer_len;
    unsigned kdfs;                /* out: 1u << HSM_OAEP_SHA1 / _SHA256 for each taken */
    char refused[192];            /* out: the token's answer to the last refused one */
};

/* Whether the trial derive's refusal rv is the token's lasting answer
 * (it does not do this derive: a mechanism, parameter, curve, template,
 * attribute or key size it does not take, a function its policy forbids,
 * the peer's point in this form) rather than a failure that a later try
 * may not meet (the device, a session, the login, memory, an operation
 * left active, a code of the vendor's own or none the library knows). Only the first kind says the token
 * cannot hold the group: the second leaves the probe incomplete, and
 * group create says try again. A key's own refusal (CKA_DERIVE off:
 * HSM_ERR_KEY_POLICY) is no answer about the token either: the caller
 * names the key. Read as "try again" (503 over REST), a token answering
 * CKR_TEMPLATE_INCONSISTENT or CKR_FUNCTION_NOT_SUPPORTED for the derive
 * had its EC groups refused "try again" for ever. */
static bool derive_refusal_lasting(CK_RV rv)
{
    if (rv == CKR_OK || rv >= CKR_VENDOR_DEFINED)
        return false;
    if (rv == CKR_ATTRIBUTE_READ_ONLY)
        return true;
    switch (hsm_map_rv(rv)) {
    case HSM_ERR_MECHANISM:
    case HSM_ERR_ARGS:
    case HSM_ERR_PUBLIC_KEY:
        return true;
    default:
        return false;
    }
}

static hsm_err op_probe_ecdh_kdf(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    static const unsigned char p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    static const unsigned char p384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};
    static const hsm_oaep_hash hashes[] = {HSM_OAEP_SHA1, HSM_OAEP_SHA256};
    /* What an ECC-CMS-SharedInfo looks like in length; its content does
     * not matter to whether the KDF is taken. */
    unsigned char shared[32] = {0x30, 0x1e};
    struct kdf_probe_arg *pa = arg;
    CK_MECHANISM gm = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_ECDH1_DERIVE_PARAMS dp;
    CK_MECHANISM dm = {CKM_ECDH1_DERIVE, &dp, sizeof(dp)};
    struct ecdh_kek kt;
    CK_ATTRIBUTE pub[] = {
        {CKA_TOKEN, &ck_false, sizeof(CK_BBOOL)},
        {CKA_EC_PARAMS, (void *)(pa->bits == 384 ? p384 : p256), pa->bits == 384 ? sizeof(p384) : sizeof(p256)},
    };
    CK_ATTRIBUTE priv[] = {
        {CKA_TOKEN, &ck_false, sizeof(CK_BBOOL)},
        {CKA_PRIVATE, &ck_true, sizeof(CK_BBOOL)},
        {CKA_SENSITIVE, &ck_true, sizeof(CK_BBOOL)},
        {CKA_EXTRACTABLE, &ck_false, sizeof(CK_BBOOL)},
        {CKA_DERIVE, &ck_true, sizeof(CK_BBOOL)},
    };
    CK_OBJECT_HANDLE pubh = CK_INVALID_HANDLE, privh = CK_INVALID_HANDLE, kek = CK_INVALID_HANDLE;
    hsm_err err = HSM_OK;

    if (pa->key != NULL)
        err = hsm_key_handle(ctx, s, pa->key, &privh);
    else
        err = P11(ctx, C_GenerateKeyPair, s, &gm, pub, GS_ARRAY_LEN(pub), priv, GS_ARRAY_LEN(priv), &pubh, &privh);
    if (err != HSM_OK)
        goto out;
    /* The KEK as hsm_ecdh_decrypt_content_key asks for it, at 16 bytes
     * (aes128-wrap): the trial asks whether the KDF is taken. */
    ecdh_kek_template(&kt, 16);
    for (size_t i = 0; i < GS_ARRAY_LEN(hashes); i++) {
        memset(&dp, 0, sizeof(dp));
        dp.kdf = hashes[i] == HSM_OAEP_SHA256 ? CKD_SHA256_KDF : CKD_SHA1_KDF;
        dp.pSharedData = shared;
        dp.ulSharedDataLen = sizeof(shared);
        dp.pPublicData = (CK_BYTE_PTR)pa->peer;
        dp.ulPublicDataLen = pa->peer_len;
        err = P11(ctx, C_DeriveKey, s, &dm, privh, kt.a, GS_ARRAY_LEN(kt.a), &kek);
        if (err == HSM_OK) {
            pa->kdfs |= 1u << hashes[i];
            hsm_destroy_session_obj(ctx, s, &kek);
            continue;
        }
        if (!derive_refusal_lasting(hsm_last_rv()))
            goto out; /* no answer about the KDF */
        util_strlcpy(pa->refused, hsm_last_error_detail(), sizeof(pa->refused));
        err = HSM_OK;
    }
out:
    if (pa->key == NULL) {
        hsm_destroy_session_obj(ctx, s, &privh);
        hsm_destroy_session_obj(ctx, s, &pubh);
    }
    return err;
}

hsm_err hsm_probe_ecdh_kdf(hsm_ctx *ctx, hsm_key *key, unsigned bits, unsigned *kdfs)
{
    struct kdf_probe_arg pa;
    EVP_PKEY *peer = NULL;
    unsigned char *pt = NULL;
    size_t ptlen = 0;
    hsm_key_info ki;
    hsm_err err;

    if (kdfs != NULL)
        *kdfs = 0;
    hsm_clear_detail();
    if (ctx == NULL || kdfs == NULL || (key == NULL && bits != 256 && bits != 384))
        return HSM_ERR_ARGS;
    if (key != NULL) {
        if ((err = hsm_key_get_info(ctx, key, &ki)) != HSM_OK)
            return err;
        if (ki.cls != HSM_CLASS_PRIVATE || ki.type != HSM_KEYTYPE_EC || (ki.bits != 256 && ki.bits != 384))
            return HSM_ERR_ARGS;
        bits = ki.bits;
    }
    /* The other side's point: a key pair made here for the trial (the
     * derived key is destroyed unread, so nothing of it matters). */
    peer = EVP_PKEY_Q_keygen(NULL, NULL, "EC", bits == 384 ? "P-384" : "P-256");
    if (peer == NULL || (ptlen = EVP_PKEY_get1_encoded_public_key(peer, &pt)) == 0) {
        ERR_clear_error();
        err = HSM_ERR_NOMEM;
        goto out;
    }
    memset(&pa, 0, sizeof(pa));
    pa.key = key;
    pa.bits = bits;
    pa.peer = pt;
    pa.peer_len = ptlen;
    err = hsm_run_once(ctx, op_probe_ecdh_kdf, &pa);
    if (err == HSM_OK) {
        *kdfs = pa.kdfs;
        if (pa.kdfs == 0)
            hsm_set_detail("the token's %s takes no X9.63 KDF (CKD_SHA1_KDF and CKD_SHA256_KDF refused: %s)",
                           "CKM_ECDH1_DERIVE", pa.refused);
        else
            hsm_clear_detail();
    }
out:
    OPENSSL_free(pt);
    EVP_PKEY_free(peer);
    return err;
}

/* ---- signing ------------------------------------------------------------------ */

struct sign_arg {
    hsm_key *key;
    hsm_sig_alg alg;
    const unsigned char *data;
    size_t len;
    unsigned char *sig;
    size_t siglen;
    bool digestinfo;   /* the token lacks CKM_SHA256_RSA_PKCS: CKM_RSA_PKCS over a DigestInfo */
};

/* PKCS#11 ECDSA gives r||s; X.509 wants DER Ecdsa-Sig-Value. */
static hsm_err ecdsa_to_der(const unsigned char *raw, size_t rawlen, unsigned char **der, size_t *derlen)
{
    ECDSA_SIG *sig = NULL;
    BIGNUM *r = NULL, *s = NULL;
    unsigned char *p = NULL;
    int len;
    hsm_err err = HSM_ERR_DEVICE;

    if (rawlen == 0 || rawlen % 2 != 0 || rawlen > 264)
        goto out;
    r = BN_bin2bn(raw, (int)(rawlen / 2), NULL);
    s = BN_bin2bn(raw + rawlen / 2, (int)(rawlen / 2), NULL);
    if (r == NULL || s == NULL || (sig = ECDSA_SIG_new()) == NULL || ECDSA_SIG_set0(sig, r, s) != 1)
        goto out;
    r = s = NULL; /* owned by sig now */
    if ((len = i2d_ECDSA_SIG(sig, NULL)) <= 0 || (*der = malloc((size_t)len)) == NULL)
        goto out;
    p = *der;
    if (i2d_ECDSA_SIG(sig, &p) != len) {
        free(*der);
        *der = NULL;
        goto out;
    }
    *derlen = (size_t)len;
    err = HSM_OK;
out:
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(sig);
    return err;
}

/* DER DigestInfo prefix of SHA-256 (RFC 8017 section 9.2, note 1). */
static const unsigned char sha256_digestinfo[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65,
                                                  0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};

static hsm_err op_sign(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    struct sign_arg *sa = arg;
    CK_OBJECT_HANDLE h;
    CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, NULL, 0};
    unsigned char md[sizeof(sha256_digestinfo) + 32], buf[RSA_OUT_MAX];
    const unsigned char *in = sa->data;
    CK_ULONG inlen = sa->len, len = sizeof(buf);
    hsm_err err;

    free(sa->sig);
    sa->sig = NULL;
    sa->siglen = 0;
    if ((err = hsm_key_handle(ctx, s, sa->key, &h)) != HSM_OK)
        return err;
    if (sa->alg == HSM_SIG_RSA_PKCS1_SHA256 && sa->digestinfo) {
        /* The same PKCS#1 v1.5 signature, the hash made here: the key
         * stays on the token, which pads and signs the DigestInfo. */
        memcpy(md, sha256_digestinfo, sizeof(sha256_digestinfo));
        if (EVP_Digest(sa->data, sa->len, md + sizeof(sha256_digestinfo), NULL, EVP_sha256(), NULL) != 1)
            return HSM_ERR_NOMEM;
        m.mechanism = CKM_RSA_PKCS;
        in = md;
        inlen = sizeof(md);
    } else if (sa->alg == HSM_SIG_ECDSA_SHA256) {
        /* Hash here and sign with plain CKM_ECDSA: every token has it,
         * not every token has CKM_ECDSA_SHA256. */
        if (EVP_Digest(sa->data, sa->len, md, NULL, EVP_sha256(), NULL) != 1)
            return HSM_ERR_NOMEM;
        m.mechanism = CKM_ECDSA;
        in = md;
        inlen = 32;
    } else if (sa->alg == HSM_SIG_ECDSA_DIGEST) {
        /* The caller (TLS) hashed with the hash its signature scheme names. */
        m.mechanism = CKM_ECDSA;
    }
    if ((err = P11(ctx, C_SignInit, s, &m, h)) != HSM_OK) {
        char prev[192];
        util_strlcpy(prev, hsm_last_error_detail(), sizeof(prev));
        hsm_set_detail("C_SignInit(%s): %s", hsm_mech_ckm_name(m.mechanism), prev);
        return err;
    }
    if ((err = hsm_context_login(ctx, s, sa->key)) != HSM_OK)
        return err;
    if ((err = P11(ctx, C_Sign, s, (CK_BYTE_PTR)in, inlen, buf, &len)) != HSM_OK)
        return err;
    if (m.mechanism == CKM_ECDSA)
        return ecdsa_to_der(buf, len, &sa->sig, &sa->siglen);
    if ((sa->sig = malloc(len)) == NULL)
        return HSM_ERR_NOMEM;
    memcpy(sa->sig, buf, len);
    sa->siglen = len;
    return HSM_OK;
}

hsm_err hsm_sign(hsm_ctx *ctx, hsm_key *key, hsm_sig_alg alg, const unsigned char *data, size_t len,
                 unsigned char **sig, size_t *siglen)
{
    struct sign_arg sa = {key, alg, data, len, NULL, 0, false};
    hsm_caps caps;
    hsm_err err;

    if (sig != NULL)
        *sig = NULL;
    if (siglen != NULL)
        *siglen = 0;
    hsm_clear_detail();
    if (ctx == NULL || key == NULL || (data == NULL && len != 0) || len > SIGN_DATA_MAX || sig == NULL ||
        siglen == NULL ||
        (alg != HSM_SIG_RSA_PKCS1_SHA256 && alg != HSM_SIG_ECDSA_SHA256 && alg != HSM_SIG_ECDSA_DIGEST) ||
        (alg == HSM_SIG_ECDSA_DIGEST && (len < ECDSA_DIGEST_MIN || len > ECDSA_DIGEST_MAX)))
        return HSM_ERR_ARGS;
    if (alg == HSM_SIG_RSA_PKCS1_SHA256) {
        hsm_caps_load(ctx, &caps);
        sa.digestinfo = !hsm_caps_has(&caps, HSM_MECH_SHA256_RSA_PKCS, HSM_MF_SIGN) &&
                        hsm_caps_has(&caps, HSM_MECH_RSA_PKCS, HSM_MF_SIGN);
    }
    if ((err = hsm_run(ctx, op_sign, &sa)) != HSM_OK) {
        free(sa.sig);
        return err;
    }
    *sig = sa.sig;
    *siglen = sa.siglen;
    return HSM_OK;
}
