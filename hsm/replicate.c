/*
 * replicate.c: copying keys from one token to another without them ever
 * leaving token protection (the key ceremony; see hsm.h, "replication").
 *
 * Sending token: the security officer makes a one-time AES-256 key as a
 * session object with CKA_TRUSTED, and imports the receiving token's
 * transport public key as a trusted session object. Keys generated
 * replicable carry CKA_WRAP_WITH_TRUSTED, so only such a trusted key can
 * wrap them: the user's session wraps each one under the one-time key
 * (RFC 5649) and the one-time key to the transport key (RSA-OAEP).
 * Receiving token: the transport private key unwraps the one-time key,
 * which unwraps every key as sensitive and never extractable.
 *
 * The one-time key is a session object on purpose: it exists only inside
 * one session of this process, is destroyed as soon as the keys are
 * wrapped, and if the process dies first the token drops it with the
 * session. A token object would need a second SO step to delete, and a
 * crash between the two would leave a trusted wrapping key behind.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "log.h"
#include "util.h"
#include "hsm_internal.h"

#define ITEMS_MAX 256u
#define WRAPPED_MAX (16u * 1024u) /* an RSA-16384 private key, PKCS#8, padded */
#define KEK_CT_MAX 2048u          /* RSA-OAEP output up to 16384 bits */
#define SO_PIN_MAX 256u

static CK_BBOOL ck_true = CK_TRUE, ck_false = CK_FALSE;

#define ATTR(t, ty, p, l) ((t)[n].type = (ty), (t)[n].pValue = (void *)(p), (t)[n].ulValueLen = (l), n++)
#define BOOL(t, ty, v) ATTR(t, ty, (v) ? &ck_true : &ck_false, sizeof(CK_BBOOL))

static void oaep(hsm_oaep_hash hash, CK_RSA_PKCS_OAEP_PARAMS *p)
{
    memset(p, 0, sizeof(*p));
    p->hashAlg = hash == HSM_OAEP_SHA256 ? CKM_SHA256 : CKM_SHA_1;
    p->mgf = hash == HSM_OAEP_SHA256 ? CKG_MGF1_SHA256 : CKG_MGF1_SHA1;
    p->source = CKZ_DATA_SPECIFIED;
}

/* After any C_Logout the application's private object handles are dead
 * (PKCS#11 2.40, C_Logout): bump the generation so every hsm_key is
 * found again, and log the user back in with the context's PIN. */
static hsm_err login_user_again(hsm_ctx *ctx, CK_SESSION_HANDLE s)
{
    hsm_err err;

    pthread_mutex_lock(&ctx->login_mu);
    pthread_mutex_lock(&ctx->key_mu);
    ctx->key_gen++;
    pthread_mutex_unlock(&ctx->key_mu);
    err = hsm_login_counted(ctx, s, CKU_USER, ctx->pin, ctx->pin_len, NULL);
    if (err != HSM_OK && err != HSM_ERR_PIN_LOCKED && hsm_last_rv() == CKR_USER_ALREADY_LOGGED_IN)
        err = HSM_OK;
    pthread_mutex_unlock(&ctx->login_mu);
    return err;
}

/* ---- export ------------------------------------------------------------------ */

static void export_clear(hsm_replica_export *x)
{
    for (size_t i = 0; i < x->n_items; i++) {
        free(x->items[i].wrapped);
        x->items[i].wrapped = NULL;
        x->items[i].wrapped_len = 0;
    }
    free(x->wrapped_kek);
    x->wrapped_kek = NULL;
    x->wrapped_kek_len = 0;
    x->kek_hash = 0;
}

/* The security officer's part: the one-time key and the trusted transport
 * key, both public session objects (they must outlive the SO's logout;
 * private session objects would not). */
static hsm_err so_make_trusted(hsm_ctx *ctx, CK_SESSION_HANDLE s, const hsm_replica_export *x, CK_OBJECT_HANDLE *kek,
                               CK_OBJECT_HANDLE *tpub)
{
    static const hsm_pub_import trusted_wrap = {.trusted = true, .wrap = true};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ULONG vlen = 32;
    CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_MECHANISM_TYPE wrap_only[] = {CKM_AES_KEY_WRAP_PAD};
    CK_ATTRIBUTE t[16];
    CK_ULONG n = 0;
    hsm_err err;

    ATTR(t, CKA_CLASS, &cls, sizeof(cls));
    ATTR(t, CKA_KEY_TYPE, &kt, sizeof(kt));
    ATTR(t, CKA_VALUE_LEN, &vlen, sizeof(vlen));
    BOOL(t, CKA_TOKEN, false);
    BOOL(t, CKA_PRIVATE, false);
    BOOL(t, CKA_SENSITIVE, true);
    /* It leaves only to the trusted transport key, RSA-OAEP wrapped. */
    BOOL(t, CKA_EXTRACTABLE, true);
    BOOL(t, CKA_WRAP_WITH_TRUSTED, true);
    BOOL(t, CKA_TRUSTED, true);
    BOOL(t, CKA_WRAP, true);
    BOOL(t, CKA_UNWRAP, false);
    BOOL(t, CKA_ENCRYPT, false);
    BOOL(t, CKA_DECRYPT, false);
    BOOL(t, CKA_SIGN, false);
    BOOL(t, CKA_DERIVE, false);
    ATTR(t, CKA_ALLOWED_MECHANISMS, wrap_only, sizeof(wrap_only));
    if ((err = P11(ctx, C_GenerateKey, s, &gen, t, n, kek)) != HSM_OK) {
        char prev[192];
        util_strlcpy(prev, hsm_last_error_detail(), sizeof(prev));
        hsm_set_detail("the security officer could not make the one-time trusted AES key (%s)", prev);
        return err;
    }
    if ((err = hsm_import_rsa_pubkey(ctx, s, x->transport_spki, x->transport_spki_len, &trusted_wrap, tpub)) !=
        HSM_OK) {
        if (err != HSM_ERR_PUBLIC_KEY) {
            char prev[192];
            util_strlcpy(prev, hsm_last_error_detail(), sizeof(prev));
            hsm_set_detail("the security officer could not import the transport key as trusted (%s)", prev);
        }
        return err;
    }
    return HSM_OK;
}

/* Wraps one key under the one-time key into a fresh buffer. */
static hsm_err wrap_item(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE kek, hsm_replica_item *it)
{
    CK_MECHANISM m = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_OBJECT_HANDLE h;
    CK_ULONG len = 0;
    unsigned char *buf = NULL;
    char q[160];
    hsm_err err;

    if ((err = hsm_key_handle(ctx, s, it->key, &h)) != HSM_OK)
        return err;
    err = P11(ctx, C_WrapKey, s, &m, kek, h, NULL, &len);
    if (err == HSM_OK && (len == 0 || len > WRAPPED_MAX)) {
        hsm_set_detail("wrapped key of %lu bytes", (unsigned long)len);
        err = HSM_ERR_DEVICE;
    }
    if (err == HSM_OK) {
        if ((buf = malloc(len)) == NULL)
            return HSM_ERR_NOMEM;
        err = P11(ctx, C_WrapKey, s, &m, kek, h, buf, &len);
    }
    if (err != HSM_OK) {
        CK_RV rv = hsm_last_rv();
        free(buf);
        if (rv == CKR_KEY_UNEXTRACTABLE || rv == CKR_KEY_NOT_WRAPPABLE) {
            /* A key made replicable (extractable under trusted wrap) that
             * the trusted one-time key may not wrap all the same: the
             * token does not honour the SO's CKA_TRUSTED, not the key's
             * making ("it was not made replicable" sent the operator to
             * recreate a group that was). */
            if (hsm_get_bool(ctx, s, h, CKA_EXTRACTABLE) && hsm_get_bool(ctx, s, h, CKA_WRAP_WITH_TRUSTED))
                hsm_set_detail("the token would not wrap key %s (%s) under the one-time key the security officer "
                               "made trusted, though the key is extractable under trusted wrap: this token does not "
                               "let a CKA_TRUSTED key wrap it (`groupsrv check`, cap trusted wrap)",
                               log_quote(q, sizeof(q), it->key->label), hsm_ckr_name(rv));
            else
                hsm_set_detail("key %s cannot be wrapped (%s): it was not made replicable",
                               log_quote(q, sizeof(q), it->key->label), hsm_ckr_name(rv));
            return HSM_ERR_KEY_POLICY;
        }
        return err;
    }
    it->wrapped = buf;
    it->wrapped_len = len;
    return HSM_OK;
}

/* The one-time key to the transport key: OAEP with SHA-256 where the
 * token has it, else SHA-1 (SoftHSM 2.6 wraps with nothing else); only
 * with a hash the receiving token unwraps with, where its transport key
 * file says which (x->kek_hashes): a file it cannot unwrap was written,
 * and refused only there, at the import. */
static hsm_err wrap_kek(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE tpub, CK_OBJECT_HANDLE kek,
                        hsm_replica_export *x)
{
    static const hsm_oaep_hash order[] = {HSM_OAEP_SHA256, HSM_OAEP_SHA1};
    unsigned char buf[KEK_CT_MAX];
    CK_RSA_PKCS_OAEP_PARAMS op;
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &op, sizeof(op)};
    hsm_err err = HSM_ERR_MECHANISM;
    bool tried = false;

    for (size_t i = 0; i < GS_ARRAY_LEN(order); i++) {
        CK_ULONG len = sizeof(buf);
        if (x->kek_hashes != 0 && (x->kek_hashes & (1u << order[i])) == 0)
            continue;
        tried = true;
        oaep(order[i], &op);
        err = P11(ctx, C_WrapKey, s, &m, tpub, kek, buf, &len);
        if (err == HSM_OK) {
            if ((x->wrapped_kek = malloc(len)) == NULL)
                return HSM_ERR_NOMEM;
            memcpy(x->wrapped_kek, buf, len);
            x->wrapped_kek_len = len;
            x->kek_hash = order[i];
            return HSM_OK;
        }
        CK_RV rv = hsm_last_rv();
        if (rv != CKR_MECHANISM_PARAM_INVALID && rv != CKR_ARGUMENTS_BAD && rv != CKR_MECHANISM_INVALID)
            return err;
    }
    if (!tried) {
        hsm_set_detail("the receiving token's transport key file names no RSA-OAEP hash this program knows");
        return HSM_ERR_MECHANISM;
    }
    /* One hash allowed, and this token would not wrap with it: said as
     * the two tokens not sharing a hash, not as a bare CKR_. */
    if (x->kek_hashes == (1u << HSM_OAEP_SHA1) || x->kek_hashes == (1u << HSM_OAEP_SHA256)) {
        char prev[192];
        util_strlcpy(prev, hsm_last_error_detail(), sizeof(prev));
        hsm_set_detail("the receiving token unwraps the one-time key with RSA-OAEP-%s only (its transport key "
                       "file says so), which this token does not wrap with (%s)",
                       x->kek_hashes == (1u << HSM_OAEP_SHA256) ? "SHA256" : "SHA1", prev);
        err = HSM_ERR_MECHANISM;
    }
    return err;
}

static hsm_err op_export(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    hsm_replica_export *x = arg;
    CK_OBJECT_HANDLE kek = CK_INVALID_HANDLE, tpub = CK_INVALID_HANDLE;
    hsm_errsave sv;
    hsm_err err, err2;
    bool so_sent = false;

    export_clear(x);
    /* Login state belongs to the whole application: the user's login
     * must end before the SO's can begin. */
    err = P11(ctx, C_Logout, s);
    if (err != HSM_OK && hsm_last_rv() != CKR_USER_NOT_LOGGED_IN)
        goto relogin;
    err = hsm_login_counted(ctx, s, CKU_SO, x->so_pin, x->so_pin_len, &so_sent);
    if (err != HSM_OK) {
        char prev[192];
        util_strlcpy(prev, hsm_last_error_detail(), sizeof(prev));
        hsm_set_detail("security officer login: %s", prev);
        /* A PIN of a length the token never takes is refused unsent: the
         * token rejected nothing, and its SO counter did not move. */
        if (err == HSM_ERR_PIN_INCORRECT && so_sent)
            log_warn("token rejected the SO PIN");
        else if (err == HSM_ERR_PIN_INCORRECT)
            log_warn("the SO PIN was not sent: its length is outside the token's PIN lengths (ulMinPinLen.."
                     "ulMaxPinLen)");
        goto relogin;
    }
    err = so_make_trusted(ctx, s, x, &kek, &tpub);
    hsm_err_save(&sv);
    err2 = P11(ctx, C_Logout, s);
    hsm_err_restore(&sv);
    if (err == HSM_OK)
        err = err2;
relogin:
    hsm_err_save(&sv);
    err2 = login_user_again(ctx, s);
    if (err == HSM_OK)
        err = err2;
    else
        hsm_err_restore(&sv);
    if (err != HSM_OK)
        goto out;
    for (size_t i = 0; i < x->n_items; i++)
        if ((err = wrap_item(ctx, s, kek, &x->items[i])) != HSM_OK)
            goto out;
    err = wrap_kek(ctx, s, tpub, kek, x);
out:
    /* Both were public session objects: the user session may destroy them. */
    hsm_destroy_session_obj(ctx, s, &kek);
    hsm_destroy_session_obj(ctx, s, &tpub);
    if (err != HSM_OK)
        export_clear(x);
    return err;
}

hsm_err hsm_replica_export_run(hsm_ctx *ctx, hsm_replica_export *x)
{
    hsm_clear_detail();
    if (x == NULL)
        return HSM_ERR_ARGS;
    x->wrapped_kek = NULL;
    x->wrapped_kek_len = 0;
    x->kek_hash = 0;
    if (ctx == NULL || x->so_pin == NULL || x->so_pin_len == 0 || x->so_pin_len > SO_PIN_MAX ||
        x->transport_spki == NULL || x->items == NULL || x->n_items == 0 || x->n_items > ITEMS_MAX)
        return HSM_ERR_ARGS;
    for (size_t i = 0; i < x->n_items; i++) {
        x->items[i].wrapped = NULL;
        x->items[i].wrapped_len = 0;
        if (x->items[i].key == NULL)
            return HSM_ERR_ARGS;
    }
    if (!ctx->want_login) {
        hsm_set_detail("copying keys out needs a user login (pin_source)");
        return HSM_ERR_ARGS;
    }
    return hsm_run(ctx, op_export, x);
}

/* ---- import -------------------------------------------------------------------- */

struct import_arg {
    hsm_key *transport;
    hsm_oaep_hash kek_hash;
    const unsigned char *wrapped_kek;
    size_t wrapped_kek_len;
    const hsm_replica_in *items;
    size_t n;
    hsm_key **out;
    hsm_caps caps; /* loaded before the op (never inside one) */
};

/* HSM_ERR_KEY_EXISTS when any key object has this label or CKA_ID. */
static hsm_err check_free(hsm_ctx *ctx, CK_SESSION_HANDLE s, const hsm_keygen_spec *spec)
{
    CK_ATTRIBUTE by[2] = {{CKA_LABEL, (void *)spec->label, strlen(spec->label)},
                          {CKA_ID, (void *)spec->id, spec->id_len}};
    char q[160];

    for (size_t i = 0; i < 2; i++) {
        CK_OBJECT_HANDLE h;
        CK_ULONG got = 0;
        hsm_err err = P11(ctx, C_FindObjectsInit, s, &by[i], 1);
        hsm_err err2;
        if (err != HSM_OK)
            return err;
        err = P11(ctx, C_FindObjects, s, &h, 1, &got);
        err2 = P11(ctx, C_FindObjectsFinal, s);
        if (err == HSM_OK)
            err = err2;
        if (err != HSM_OK)
            return err;
        if (got != 0) {
            hsm_set_detail("the token already has an object %s %s", i == 0 ? "labelled" : "with the CKA_ID of",
                           log_quote(q, sizeof(q), spec->label));
            return HSM_ERR_KEY_EXISTS;
        }
    }
    return HSM_OK;
}

/* The template a copy is unwrapped with: what generation would have set
 * for spec, sensitive and never extractable (secret keys: extractable
 * only if spec says so, e.g. group secret keys that are delivered wrapped). */
static CK_ULONG copy_template(const hsm_keygen_spec *spec, const hsm_caps *caps, CK_ATTRIBUTE *t,
                              CK_OBJECT_CLASS *cls, CK_KEY_TYPE *kt, CK_MECHANISM_TYPE mechs[8],
                              CK_ATTRIBUTE *unwrap_tmpl)
{
    bool pair = spec->type == HSM_KEYTYPE_RSA;
    unsigned u = spec->usage;
    CK_ULONG nm = hsm_spec_mechanisms(spec, caps, mechs), n = 0;

    *cls = pair ? CKO_PRIVATE_KEY : CKO_SECRET_KEY;
    *kt = pair ? CKK_RSA : spec->type == HSM_KEYTYPE_AES ? CKK_AES : CKK_GENERIC_SECRET;
    ATTR(t, CKA_CLASS, cls, sizeof(*cls));
    ATTR(t, CKA_KEY_TYPE, kt, sizeof(*kt));
    BOOL(t, CKA_TOKEN, true);
    BOOL(t, CKA_PRIVATE, true);
    BOOL(t, CKA_SENSITIVE, true);
    BOOL(t, CKA_EXTRACTABLE, !pair && spec->extractable);
    ATTR(t, CKA_LABEL, spec->label, strlen(spec->label));
    ATTR(t, CKA_ID, spec->id, spec->id_len);
    BOOL(t, CKA_DECRYPT, (u & HSM_USE_DECRYPT) != 0);
    BOOL(t, CKA_UNWRAP, (u & HSM_USE_UNWRAP) != 0);
    BOOL(t, CKA_SIGN, (u & HSM_USE_SIGN) != 0);
    BOOL(t, CKA_DERIVE, false);
    if (pair) {
        BOOL(t, CKA_SIGN_RECOVER, false);
    } else {
        BOOL(t, CKA_ENCRYPT, (u & HSM_USE_ENCRYPT) != 0);
        BOOL(t, CKA_WRAP, (u & HSM_USE_WRAP) != 0);
        BOOL(t, CKA_VERIFY, false);
    }
    if (u & HSM_USE_UNWRAP)
        ATTR(t, CKA_UNWRAP_TEMPLATE, unwrap_tmpl, sizeof(*unwrap_tmpl));
    if (nm > 0)
        ATTR(t, CKA_ALLOWED_MECHANISMS, mechs, nm * sizeof(mechs[0]));
    return n;
}

static hsm_key *ref_new(const hsm_keygen_spec *spec, CK_OBJECT_CLASS cls, CK_KEY_TYPE kt, CK_OBJECT_HANDLE h,
                        unsigned gen)
{
    hsm_key *k = calloc(1, sizeof(*k));

    if (k == NULL)
        return NULL;
    k->cls = cls;
    k->ktype = kt;
    util_strlcpy(k->label, spec->label, sizeof(k->label));
    memcpy(k->id, spec->id, spec->id_len);
    k->id_len = spec->id_len;
    k->handle = h;
    k->gen = gen;
    return k;
}

static hsm_err import_one(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE kek, const hsm_replica_in *in,
                          const hsm_caps *caps, unsigned gen, CK_OBJECT_HANDLE *priv, CK_OBJECT_HANDLE *pub,
                          hsm_key **ref)
{
    CK_MECHANISM m = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
    CK_ATTRIBUTE t[24], unwrap_tmpl = {CKA_SENSITIVE, &ck_true, sizeof(ck_true)};
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE kt;
    CK_MECHANISM_TYPE mechs[8];
    CK_ULONG n = copy_template(&in->spec, caps, t, &cls, &kt, mechs, &unwrap_tmpl);
    char q[160];
    hsm_err err;

    err = P11(ctx, C_UnwrapKey, s, &m, kek, (CK_BYTE_PTR)in->wrapped, (CK_ULONG)in->wrapped_len, t, n, priv);
    if (err != HSM_OK) {
        char prev[192];
        util_strlcpy(prev, hsm_last_error_detail(), sizeof(prev));
        hsm_set_detail("unwrapping %s: %s", log_quote(q, sizeof(q), in->spec.label), prev);
        /* AES key wrap's integrity check failing is a decryption failure. */
        return err == HSM_ERR_DEVICE && hsm_last_rv() == CKR_GENERAL_ERROR ? HSM_ERR_DECRYPT : err;
    }
    if ((err = hsm_verify_key_policy(ctx, s, *priv, &in->spec)) != HSM_OK)
        return err;
    if (in->public_spki != NULL) {
        hsm_pub_import po = {.token = true,
                             .wrap = (in->spec.usage & HSM_USE_UNWRAP) != 0,
                             .encrypt = (in->spec.usage & HSM_USE_DECRYPT) != 0,
                             .verify = (in->spec.usage & HSM_USE_SIGN) != 0,
                             .label = in->spec.label,
                             .id = in->spec.id,
                             .id_len = in->spec.id_len};
        if ((err = hsm_import_rsa_pubkey(ctx, s, in->public_spki, in->public_spki_len, &po, pub)) != HSM_OK)
            return err;
    }
    if ((*ref = ref_new(&in->spec, cls, kt, *priv, gen)) == NULL)
        return HSM_ERR_NOMEM;
    return HSM_OK;
}

static hsm_err op_import(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    struct import_arg *ia = arg;
    CK_OBJECT_CLASS scls = CKO_SECRET_KEY;
    CK_KEY_TYPE aes = CKK_AES;
    CK_ATTRIBUTE kt[] = {
        {CKA_CLASS, &scls, sizeof(scls)},          {CKA_KEY_TYPE, &aes, sizeof(aes)},
        {CKA_TOKEN, &ck_false, sizeof(CK_BBOOL)},   {CKA_PRIVATE, &ck_true, sizeof(CK_BBOOL)},
        {CKA_SENSITIVE, &ck_true, sizeof(CK_BBOOL)}, {CKA_EXTRACTABLE, &ck_false, sizeof(CK_BBOOL)},
        {CKA_UNWRAP, &ck_true, sizeof(CK_BBOOL)},   {CKA_WRAP, &ck_false, sizeof(CK_BBOOL)},
        {CKA_ENCRYPT, &ck_false, sizeof(CK_BBOOL)}, {CKA_DECRYPT, &ck_false, sizeof(CK_BBOOL)},
    };
    CK_RSA_PKCS_OAEP_PARAMS op;
    CK_MECHANISM om = {CKM_RSA_PKCS_OAEP, &op, sizeof(op)};
    CK_OBJECT_HANDLE tk, kek = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE *made = NULL; /* 2 per item: private/secret, public */
    unsigned gen;
    hsm_err err;

    for (size_t i = 0; i < ia->n; i++) {
        hsm_key_free(ia->out[i]);
        ia->out[i] = NULL;
    }
    if ((made = calloc(2 * ia->n, sizeof(*made))) == NULL)
        return HSM_ERR_NOMEM;
    for (size_t i = 0; i < 2 * ia->n; i++)
        made[i] = CK_INVALID_HANDLE;
    for (size_t i = 0; i < ia->n; i++)
        if ((err = check_free(ctx, s, &ia->items[i].spec)) != HSM_OK)
            goto out;
    if ((err = hsm_key_handle(ctx, s, ia->transport, &tk)) != HSM_OK)
        goto out;
    oaep(ia->kek_hash, &op);
    err = P11(ctx, C_UnwrapKey, s, &om, tk, (CK_BYTE_PTR)ia->wrapped_kek, (CK_ULONG)ia->wrapped_kek_len, kt,
              GS_ARRAY_LEN(kt), &kek);
    if (err != HSM_OK) {
        char prev[192];
        util_strlcpy(prev, hsm_last_error_detail(), sizeof(prev));
        hsm_set_detail("the transport key could not unwrap the one-time key (%s)", prev);
        if (err == HSM_ERR_DEVICE && hsm_last_rv() == CKR_GENERAL_ERROR)
            err = HSM_ERR_DECRYPT;
        goto out;
    }
    pthread_mutex_lock(&ctx->key_mu);
    gen = ctx->key_gen;
    pthread_mutex_unlock(&ctx->key_mu);
    for (size_t i = 0; i < ia->n; i++)
        if ((err = import_one(ctx, s, kek, &ia->items[i], &ia->caps, gen, &made[2 * i], &made[2 * i + 1],
                              &ia->out[i])) != HSM_OK)
            goto out;
out:
    hsm_destroy_session_obj(ctx, s, &kek);
    if (err != HSM_OK) {
        /* All or nothing: never leave part of a shipment on the token. */
        for (size_t i = 0; i < 2 * ia->n; i++)
            hsm_destroy_session_obj(ctx, s, &made[i]);
        for (size_t i = 0; i < ia->n; i++) {
            hsm_key_free(ia->out[i]);
            ia->out[i] = NULL;
        }
    }
    free(made);
    return err;
}

static bool spec_ok(const hsm_keygen_spec *spec)
{
    const unsigned pair_use = HSM_USE_DECRYPT | HSM_USE_UNWRAP | HSM_USE_PKCS1V15 | HSM_USE_SIGN;
    const unsigned secret_use = HSM_USE_WRAP | HSM_USE_UNWRAP | HSM_USE_SIGN | HSM_USE_ENCRYPT | HSM_USE_DECRYPT;

    if (spec->label == NULL || spec->label[0] == '\0' || strlen(spec->label) >= 128 || spec->id == NULL ||
        spec->id_len == 0 || spec->id_len > 64 || spec->replicable)
        return false;
    switch (spec->type) {
    case HSM_KEYTYPE_RSA:
        /* A group key (decrypt/unwrap) or a CA key (sign only). */
        return (spec->usage & ~pair_use) == 0 && !spec->extractable &&
               ((spec->usage & (HSM_USE_DECRYPT | HSM_USE_UNWRAP)) != 0) != ((spec->usage & HSM_USE_SIGN) != 0);
    case HSM_KEYTYPE_AES:
        return (spec->usage & ~secret_use) == 0 && (spec->usage & HSM_USE_SIGN) == 0;
    case HSM_KEYTYPE_GENERIC_SECRET:
        return spec->usage == HSM_USE_SIGN && !spec->extractable;
    default:
        return false;
    }
}

hsm_err hsm_replica_import(hsm_ctx *ctx, hsm_key *transport, hsm_oaep_hash kek_hash, const unsigned char *wrapped_kek,
                           size_t wrapped_kek_len, const hsm_replica_in *items, size_t n, hsm_key **out)
{
    struct import_arg ia = {.transport = transport,
                            .kek_hash = kek_hash,
                            .wrapped_kek = wrapped_kek,
                            .wrapped_kek_len = wrapped_kek_len,
                            .items = items,
                            .n = n,
                            .out = out};

    hsm_clear_detail();
    if (out != NULL && n <= ITEMS_MAX)
        for (size_t i = 0; i < n; i++)
            out[i] = NULL;
    if (ctx == NULL || transport == NULL || wrapped_kek == NULL || wrapped_kek_len == 0 ||
        wrapped_kek_len > KEK_CT_MAX || (kek_hash != HSM_OAEP_SHA1 && kek_hash != HSM_OAEP_SHA256) ||
        items == NULL || out == NULL || n == 0 || n > ITEMS_MAX)
        return HSM_ERR_ARGS;
    for (size_t i = 0; i < n; i++) {
        if (!spec_ok(&items[i].spec) || items[i].wrapped == NULL || items[i].wrapped_len < 16 ||
            items[i].wrapped_len > WRAPPED_MAX || (items[i].public_spki != NULL && items[i].spec.type != HSM_KEYTYPE_RSA)) {
            hsm_set_detail("copy %zu: unsupported key description", i);
            return HSM_ERR_ARGS;
        }
    }
    hsm_caps_load(ctx, &ia.caps);
    return hsm_run(ctx, op_import, &ia);
}
