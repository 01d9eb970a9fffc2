/*
 * caps.c: what the token can do (hsm_caps_get): C_GetTokenInfo, the
 * mechanisms groupsrv may use with their C_GetMechanismInfo flags, and the
 * optional key attributes, tried on a session object because PKCS#11 has
 * no other way to ask. Probed once per context, on first use.
 *
 * A trial may break the module: p11-kit 0.24.1's RPC answers an unwrap
 * template it cannot carry with CKR_DEVICE_ERROR, and its server side
 * crashes when asked to return one (every later call then fails). The
 * trials run through hsm_run_once, whose recovery re-initialises such a
 * module; the attribute is then simply unsupported.
 */
#include <stdio.h>
#include <string.h>

#include <openssl/rand.h>

#include "log.h"
#include "util.h"
#include "hsm_internal.h"

static const struct {
    CK_MECHANISM_TYPE ckm;
    const char *name;
} mech_table[HSM_MECH_COUNT_] = {
    [HSM_MECH_RSA_KEYGEN] = {CKM_RSA_PKCS_KEY_PAIR_GEN, "CKM_RSA_PKCS_KEY_PAIR_GEN"},
    [HSM_MECH_RSA_OAEP] = {CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP"},
    [HSM_MECH_RSA_PKCS] = {CKM_RSA_PKCS, "CKM_RSA_PKCS"},
    [HSM_MECH_SHA256_RSA_PKCS] = {CKM_SHA256_RSA_PKCS, "CKM_SHA256_RSA_PKCS"},
    [HSM_MECH_EC_KEYGEN] = {CKM_EC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN"},
    [HSM_MECH_ECDSA] = {CKM_ECDSA, "CKM_ECDSA"},
    [HSM_MECH_ECDH] = {CKM_ECDH1_DERIVE, "CKM_ECDH1_DERIVE"},
    [HSM_MECH_AES_KEYGEN] = {CKM_AES_KEY_GEN, "CKM_AES_KEY_GEN"},
    [HSM_MECH_AES_KEY_WRAP] = {CKM_AES_KEY_WRAP, "CKM_AES_KEY_WRAP"},
    [HSM_MECH_AES_KEY_WRAP_PAD] = {CKM_AES_KEY_WRAP_PAD, "CKM_AES_KEY_WRAP_PAD"},
    [HSM_MECH_AES_ECB] = {CKM_AES_ECB, "CKM_AES_ECB"},
    [HSM_MECH_GENERIC_KEYGEN] = {CKM_GENERIC_SECRET_KEY_GEN, "CKM_GENERIC_SECRET_KEY_GEN"},
    [HSM_MECH_SHA256_HMAC] = {CKM_SHA256_HMAC, "CKM_SHA256_HMAC"},
};

/* Names of mechanisms that may appear in CKA_ALLOWED_MECHANISMS of our
 * keys, for messages ("CKM_0x..." otherwise). */
const char *hsm_mech_ckm_name(CK_MECHANISM_TYPE m)
{
    static _Thread_local char other[32];
    size_t i;

    for (i = 0; i < GS_ARRAY_LEN(mech_table); i++)
        if (mech_table[i].ckm == m)
            return mech_table[i].name;
    switch (m) {
    case CKM_ECDSA_SHA256:
        return "CKM_ECDSA_SHA256";
    case CKM_AES_GCM:
        return "CKM_AES_GCM";
    case CKM_AES_CBC_PAD:
        return "CKM_AES_CBC_PAD";
    case CKM_SHA256_HMAC_GENERAL:
        return "CKM_SHA256_HMAC_GENERAL";
    default:
        snprintf(other, sizeof(other), "CKM_0x%lx", (unsigned long)m);
        return other;
    }
}

const char *hsm_mech_name(hsm_mech m)
{
    return (unsigned)m < HSM_MECH_COUNT_ ? mech_table[m].name : "unknown mechanism";
}

bool hsm_caps_has(const hsm_caps *caps, hsm_mech m, unsigned flags)
{
    return caps != NULL && (unsigned)m < HSM_MECH_COUNT_ && caps->mech[m].present &&
           (caps->mech[m].flags & flags) == flags;
}

static unsigned flags_from_ck(CK_FLAGS f)
{
    unsigned r = 0;

    if (f & CKF_ENCRYPT)
        r |= HSM_MF_ENCRYPT;
    if (f & CKF_DECRYPT)
        r |= HSM_MF_DECRYPT;
    if (f & CKF_SIGN)
        r |= HSM_MF_SIGN;
    if (f & CKF_WRAP)
        r |= HSM_MF_WRAP;
    if (f & CKF_UNWRAP)
        r |= HSM_MF_UNWRAP;
    if (f & CKF_DERIVE)
        r |= HSM_MF_DERIVE;
    if (f & (CKF_GENERATE | CKF_GENERATE_KEY_PAIR))
        r |= HSM_MF_GENERATE;
    return r;
}

/* ---- mechanisms ------------------------------------------------------------ */

#define MECH_LIST_MAX 4096
/* Reads of a mechanism list that grows between its two calls before the
 * probe gives up (and is incomplete, so tried again at the next use). */
#define MECH_LIST_TRIES 3
/* Larger session counts are sentinels (or no limit in practice). */
#define HSM_MAX_SESSIONS_REPORTED 65536ul

static bool transient_failure(hsm_err err);
static void note_incomplete(hsm_caps *c, const char *what, const char *detail);

/* Failures a token may give for a moment or for good: CKR_GENERAL_ERROR,
 * CKR_FUNCTION_FAILED. Repeated in HSM_PROBE_TRIES probes in a row, they
 * are its answer (judge_lasting); the rest of the transient failures
 * (CKR_DEVICE_ERROR, CKR_DEVICE_MEMORY, a lost session or login) never are. */
static bool lasting_rv(CK_RV rv)
{
    return rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED;
}

static hsm_err get_mech_list(hsm_ctx *ctx, void *arg, CK_ULONG *list, CK_ULONG *n)
{
    return P11(ctx, C_GetMechanismList, *(CK_SLOT_ID *)arg, list, n);
}

static hsm_err op_mechs(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    hsm_caps *c = arg;
    CK_MECHANISM_TYPE *list = NULL;
    CK_ULONG n = 0, i, k;
    CK_SLOT_ID slot;
    hsm_err err;
    hsm_list_read how = {
        .get = get_mech_list,
        .fn = "C_GetMechanismList",
        .what = "mechanisms",
        .whose = "the token's mechanism list",
        .max = MECH_LIST_MAX,
        .spare = 1,
        .tries = MECH_LIST_TRIES,
    };

    (void)s;
    pthread_mutex_lock(&ctx->pool_mu);
    slot = ctx->slot;
    pthread_mutex_unlock(&ctx->pool_mu);
    for (k = 0; k < HSM_MECH_COUNT_; k++)
        memset(&c->mech[k], 0, sizeof(c->mech[k]));
    /* The whole list or an error (hsm_read_list asks again for a list
     * that grew between its two calls). One longer than MECH_LIST_MAX is
     * an error naming its length, not a list cut short: a mechanism past
     * the cut would count as absent and choose a weaker key policy for
     * good. One spare element: p11-kit 0.24.1's RPC client, dropping the
     * mechanisms it cannot carry, moves the list with one element too
     * many (a read past its end; found by AddressSanitizer). */
    how.arg = &slot;
    if ((err = hsm_read_list(ctx, &how, &list, &n)) != HSM_OK)
        return err;
    if (n == 0)
        return HSM_OK;
    if (list == NULL) {
        hsm_set_detail("the token lists %lu mechanisms, more than the %d groupsrv reads", (unsigned long)n,
                       MECH_LIST_MAX);
        return HSM_ERR_PKCS11;
    }
    for (i = 0; err == HSM_OK && i < n; i++) {
        for (k = 0; k < HSM_MECH_COUNT_; k++) {
            CK_MECHANISM_INFO mi;
            hsm_errsave sv;
            hsm_err ierr;

            if (mech_table[k].ckm != list[i])
                continue;
            memset(&mi, 0, sizeof(mi));
            hsm_err_save(&sv);
            /* Listed but no info: counted as offered without flags. No
             * info for a moment (a device error) is not that: the flags
             * it lacks would choose a weaker key policy for good. */
            ierr = P11(ctx, C_GetMechanismInfo, slot, list[i], &mi);
            if (ierr == HSM_OK) {
                c->mech[k].flags = flags_from_ck(mi.flags);
                c->mech[k].min_bits = mi.ulMinKeySize;
                c->mech[k].max_bits = mi.ulMaxKeySize;
            } else if (lasting_rv(hsm_last_rv())) {
                c->mech[k].info_rv = hsm_last_rv(); /* judged by judge_lasting */
            } else if (transient_failure(ierr)) {
                note_incomplete(c, mech_table[k].name, hsm_last_error_detail());
            }
            hsm_err_restore(&sv);
            c->mech[k].present = true;
        }
    }
    free(list);
    return err;
}

/* ---- attribute trials --------------------------------------------------------- */

enum untrusted_wrap {
    UNTRUSTED_WRAP_REFUSED,    /* the token refused the wrap: it enforces the attribute */
    UNTRUSTED_WRAP_WORKS,      /* it wrapped: kept, not enforced */
    UNTRUSTED_WRAP_NOT_PROBED, /* no AES key with CKA_WRAP could be made to try */
    UNTRUSTED_WRAP_FAILED,     /* the trial failed for a moment (a device error): no verdict */
};

struct trial {
    CK_ATTRIBUTE_TYPE attr; /* the attribute tried; 0 = the baseline */
    bool stored;            /* read back after creation (and, for CKA_WRAP_WITH_TRUSTED, enforced) */
    enum untrusted_wrap wrap; /* CKA_WRAP_WITH_TRUSTED kept: what an untrusted key's wrap did */
    char failed[192];         /* wrap UNTRUSTED_WRAP_FAILED: why */
    CK_RV failed_rv;          /* and the CKR it failed with */
};

static CK_BBOOL ck_true = CK_TRUE, ck_false = CK_FALSE;

/* Whether a key made by the user, not trusted, can wrap key h, which
 * carries CKA_WRAP_WITH_TRUSTED: a token that keeps the attribute but
 * does not enforce it (NSS softokn 3.87) would let anyone with the user
 * PIN wrap a replicable group key under a key of their own and decrypt it
 * in the clear. Only a refusal of the wrap itself counts as enforcement:
 * a token that refuses to import the wrapping key (C_CreateObject, as HSMs
 * in FIPS mode do) is tried with one it generates, and one that makes
 * neither was not probed. */
static enum untrusted_wrap untrusted_wrap(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ULONG value_len = 32;
    unsigned char value[32], wrapped[64];
    CK_ULONG wlen = sizeof(wrapped);
    CK_MECHANISM mech = {CKM_AES_KEY_WRAP_PAD, NULL, 0}, gen = {CKM_AES_KEY_GEN, NULL, 0};
    hsm_err err;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &ck_false, sizeof(ck_false)}, {CKA_WRAP, &ck_true, sizeof(ck_true)},
        {CKA_VALUE, value, sizeof(value)},
    };
    CK_ATTRIBUTE gtmpl[] = {
        {CKA_CLASS, &cls, sizeof(cls)},        {CKA_KEY_TYPE, &kt, sizeof(kt)},
        {CKA_TOKEN, &ck_false, sizeof(ck_false)}, {CKA_WRAP, &ck_true, sizeof(ck_true)},
        {CKA_VALUE_LEN, &value_len, sizeof(value_len)},
    };
    CK_OBJECT_HANDLE w = CK_INVALID_HANDLE;
    enum untrusted_wrap verdict = UNTRUSTED_WRAP_NOT_PROBED;

    if (RAND_bytes(value, sizeof(value)) != 1)
        goto out;
    if (P11(ctx, C_CreateObject, s, tmpl, GS_ARRAY_LEN(tmpl), &w) != HSM_OK) {
        w = CK_INVALID_HANDLE;
        if ((err = P11(ctx, C_GenerateKey, s, &gen, gtmpl, GS_ARRAY_LEN(gtmpl), &w)) != HSM_OK) {
            w = CK_INVALID_HANDLE;
            if (transient_failure(err))
                verdict = UNTRUSTED_WRAP_FAILED;
            goto out;
        }
    }
    /* Only the token's refusal is enforcement: a wrap that failed for a
     * moment says nothing, and taken for a refusal it would pass a token
     * that lets any key the user makes wrap replicable keys out. */
    err = P11(ctx, C_WrapKey, s, &mech, w, h, wrapped, &wlen);
    verdict = err == HSM_OK              ? UNTRUSTED_WRAP_WORKS
              : transient_failure(err) ? UNTRUSTED_WRAP_FAILED
                                       : UNTRUSTED_WRAP_REFUSED;
    hsm_destroy_session_obj(ctx, s, &w);
out:
    OPENSSL_cleanse(value, sizeof(value));
    OPENSSL_cleanse(wrapped, sizeof(wrapped));
    return verdict;
}

/* Creates a session AES key (random value, not secret: it is destroyed at
 * once) carrying the attribute, reads it back, destroys it. */
static hsm_err op_trial(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    struct trial *t = arg;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    unsigned char value[16];
    CK_MECHANISM_TYPE mechs[] = {CKM_AES_KEY_WRAP};
    CK_ATTRIBUTE utmpl[] = {{CKA_SENSITIVE, &ck_true, sizeof(ck_true)}};
    CK_ATTRIBUTE tmpl[10];
    CK_ULONG n = 0;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    hsm_err err;

    t->stored = false;
    t->wrap = UNTRUSTED_WRAP_REFUSED;
    if (RAND_bytes(value, sizeof(value)) != 1)
        return HSM_ERR_NOMEM;
#define A(ty, p, l) (tmpl[n].type = (ty), tmpl[n].pValue = (p), tmpl[n].ulValueLen = (l), n++)
    A(CKA_CLASS, &cls, sizeof(cls));
    A(CKA_KEY_TYPE, &kt, sizeof(kt));
    A(CKA_TOKEN, &ck_false, sizeof(CK_BBOOL));
    A(CKA_VALUE, value, sizeof(value));
    A(CKA_WRAP, &ck_false, sizeof(CK_BBOOL));
    A(CKA_UNWRAP, &ck_true, sizeof(CK_BBOOL));
    if (t->attr == CKA_ALLOWED_MECHANISMS)
        A(CKA_ALLOWED_MECHANISMS, mechs, sizeof(mechs));
    else if (t->attr == CKA_UNWRAP_TEMPLATE)
        A(CKA_UNWRAP_TEMPLATE, utmpl, sizeof(utmpl));
    else if (t->attr == CKA_WRAP_WITH_TRUSTED) {
        /* As a replicable key has it: extractable, only under trusted wrap. */
        A(CKA_EXTRACTABLE, &ck_true, sizeof(CK_BBOOL));
        A(CKA_WRAP_WITH_TRUSTED, &ck_true, sizeof(CK_BBOOL));
    }
#undef A
    err = P11(ctx, C_CreateObject, s, tmpl, n, &h);
    OPENSSL_cleanse(value, sizeof(value));
    if (err != HSM_OK)
        return err;
    if (t->attr == CKA_ALLOWED_MECHANISMS) {
        CK_MECHANISM_TYPE got[8];
        size_t ngot = 0;
        bool present = false;
        hsm_errsave sv;

        hsm_err_save(&sv);
        if (hsm_get_mechs(ctx, s, h, got, GS_ARRAY_LEN(got), &ngot, &present) == HSM_OK)
            t->stored = present && ngot == 1 && got[0] == CKM_AES_KEY_WRAP;
        hsm_err_restore(&sv);
    } else if (t->attr == CKA_UNWRAP_TEMPLATE) {
        CK_ATTRIBUTE q = {CKA_UNWRAP_TEMPLATE, NULL, 0};
        hsm_errsave sv;

        hsm_err_save(&sv);
        if (P11(ctx, C_GetAttributeValue, s, h, &q, 1) == HSM_OK)
            t->stored = q.ulValueLen == sizeof(utmpl);
        hsm_err_restore(&sv);
    } else if (t->attr == CKA_WRAP_WITH_TRUSTED) {
        hsm_errsave sv;

        hsm_err_save(&sv);
        t->stored = hsm_get_bool(ctx, s, h, CKA_WRAP_WITH_TRUSTED);
        if (t->stored) {
            t->wrap = untrusted_wrap(ctx, s, h);
            if (t->wrap == UNTRUSTED_WRAP_FAILED) {
                util_strlcpy(t->failed, hsm_last_error_detail(), sizeof(t->failed));
                t->failed_rv = hsm_last_rv();
            }
            t->stored = t->wrap == UNTRUSTED_WRAP_REFUSED;
        }
        hsm_err_restore(&sv);
    } else {
        t->stored = true;
    }
    hsm_destroy_session_obj(ctx, s, &h);
    return HSM_OK;
}

/* Failures that say nothing about what the token can do (it was busy,
 * full, gone, or logged out for a moment): a trial ending so is not a
 * verdict. */
static bool transient_failure(hsm_err err)
{
    return err == HSM_ERR_DEVICE || err == HSM_ERR_SESSION || err == HSM_ERR_TOKEN_ABSENT ||
           err == HSM_ERR_NOT_LOGGED_IN || err == HSM_ERR_NOMEM || err == HSM_ERR_PIN_INCORRECT ||
           err == HSM_ERR_PIN_LOCKED;
}

/* Notes the first transient failure of the probe in c (see hsm_caps). */
static void note_incomplete(hsm_caps *c, const char *what, const char *detail)
{
    if (c->incomplete)
        return;
    c->incomplete = true;
    snprintf(c->incomplete_why, sizeof(c->incomplete_why), "%s: %.180s", what, detail);
}

/* Tries one attribute; writes the verdict and, when refused, why. A trial
 * that failed transiently marks c incomplete; lasting (may be NULL): the
 * enforcement wrap failed with a lasting_rv, for judge_lasting. */
static hsm_attr_support try_attr(hsm_ctx *ctx, hsm_caps *c, CK_ATTRIBUTE_TYPE attr, const char *name, char *why,
                                 size_t whycap, bool *reinit, bool *not_enforced, bool *lasting)
{
    struct trial t = {attr, false, UNTRUSTED_WRAP_REFUSED, "", CKR_OK};
    unsigned gen0, gen1;
    hsm_err err;

    pthread_rwlock_rdlock(&ctx->life_mu);
    gen0 = ctx->life_gen;
    pthread_rwlock_unlock(&ctx->life_mu);
    err = hsm_run_once(ctx, op_trial, &t);
    pthread_rwlock_rdlock(&ctx->life_mu);
    gen1 = ctx->life_gen;
    pthread_rwlock_unlock(&ctx->life_mu);
    if (gen1 != gen0) {
        *reinit = true;
        snprintf(why, whycap, "%s on a session key broke the module's connection (%.60s); re-initialised", name,
                 hsm_last_error_detail());
        return HSM_ATTR_NO;
    }
    /* A device error tied to the attribute is how p11-kit's RPC refuses
     * one it cannot carry: judged below by the trial without it. A full
     * token, a lost session or login say nothing about the attribute. */
    if (transient_failure(err) && (err != HSM_ERR_DEVICE || hsm_last_rv() == CKR_DEVICE_MEMORY)) {
        note_incomplete(c, name, hsm_last_error_detail());
        snprintf(why, whycap, "not probed: %.200s", hsm_last_error_detail());
        return HSM_ATTR_NO;
    }
    if (err == HSM_OK && t.wrap == UNTRUSTED_WRAP_FAILED) {
        if (lasting != NULL && lasting_rv(t.failed_rv)) {
            *lasting = true; /* judged by judge_lasting */
            snprintf(why, whycap, "the wrap that tries whether it is enforced fails (%.150s)", t.failed);
            return HSM_ATTR_NO;
        }
        note_incomplete(c, name, t.failed);
        snprintf(why, whycap, "not probed: the wrap that tries whether it is enforced failed (%.150s)", t.failed);
        return HSM_ATTR_NO;
    }
    if (err == HSM_OK && t.stored) {
        why[0] = '\0';
        return HSM_ATTR_YES;
    }
    if (not_enforced != NULL)
        *not_enforced = err == HSM_OK && t.wrap == UNTRUSTED_WRAP_WORKS;
    if (err == HSM_OK && t.wrap == UNTRUSTED_WRAP_WORKS) {
        snprintf(why, whycap, "kept but not enforced: a key the user made, not trusted, wrapped a session key "
                 "carrying it");
        return HSM_ATTR_NO;
    }
    if (err == HSM_OK && t.wrap == UNTRUSTED_WRAP_NOT_PROBED) {
        snprintf(why, whycap, "kept, but whether it is enforced could not be tried: the token neither imported "
                 "nor generated an AES key with CKA_WRAP to wrap with");
        return HSM_ATTR_NO;
    }
    if (err == HSM_OK) {
        snprintf(why, whycap, "the token accepted %s on a session key but did not keep it", name);
        return HSM_ATTR_NO;
    }
    {
        char prev[192];
        struct trial base = {0, false, UNTRUSTED_WRAP_REFUSED, "", CKR_OK};

        util_strlcpy(prev, hsm_last_error_detail(), sizeof(prev));
        /* Without the attribute: does the token make such keys at all? */
        err = hsm_run_once(ctx, op_trial, &base);
        if (err == HSM_OK)
            snprintf(why, whycap, "C_CreateObject refused %s on a session key (%.92s)", name, prev);
        else
            snprintf(why, whycap, "not probed: the token makes no session AES keys (%.80s)",
                     hsm_last_error_detail());
        if (transient_failure(err))
            note_incomplete(c, name, hsm_last_error_detail());
    }
    return HSM_ATTR_NO;
}

/* ---- the set ------------------------------------------------------------------- */

/* The lasting-looking failures of probe c (mechanism infos, the
 * trusted-wrap trial: wrap_lasting) against the probes before it: one
 * that came back in HSM_PROBE_TRIES probes in a row is the token's answer
 * (the mechanism counted absent, the attribute "no"); one not yet so
 * marks c incomplete, to be probed again. */
static void judge_lasting(hsm_ctx *ctx, hsm_caps *c, bool wrap_lasting)
{
    char what[64];

    pthread_mutex_lock(&ctx->caps_mu);
    for (unsigned k = 0; k < HSM_MECH_COUNT_; k++) {
        if (c->mech[k].info_rv == CKR_OK) {
            ctx->mech_info_fails[k] = 0;
            continue;
        }
        if (ctx->mech_info_fails[k] < HSM_PROBE_TRIES)
            ctx->mech_info_fails[k]++;
        if (ctx->mech_info_fails[k] >= HSM_PROBE_TRIES) {
            c->mech[k].present = false;
            log_warn("the token lists %s but C_GetMechanismInfo fails (%s) in %d probes in a row: counted as absent",
                     mech_table[k].name, hsm_ckr_name(c->mech[k].info_rv), HSM_PROBE_TRIES);
            continue;
        }
        snprintf(what, sizeof(what), "C_GetMechanismInfo(%s)", mech_table[k].name);
        note_incomplete(c, what, hsm_ckr_name(c->mech[k].info_rv));
    }
    if (!wrap_lasting) {
        ctx->trusted_wrap_fails = 0;
    } else {
        if (ctx->trusted_wrap_fails < HSM_PROBE_TRIES)
            ctx->trusted_wrap_fails++;
        if (ctx->trusted_wrap_fails >= HSM_PROBE_TRIES) {
            /* Not enforced as far as anyone can tell: no replicable keys. */
            size_t used = strlen(c->wrap_with_trusted_why);
            snprintf(c->wrap_with_trusted_why + used, sizeof(c->wrap_with_trusted_why) - used,
                     " in %d probes in a row: counted as not enforced", HSM_PROBE_TRIES);
            log_warn("CKA_WRAP_WITH_TRUSTED counted as not enforced detail=\"%s\"",
                     log_qs(c->wrap_with_trusted_why));
        } else {
            note_incomplete(c, "CKA_WRAP_WITH_TRUSTED", c->wrap_with_trusted_why);
        }
    }
    pthread_mutex_unlock(&ctx->caps_mu);
}

static void probe(hsm_ctx *ctx, hsm_caps *c)
{
    bool reinit = false, wrap_lasting = false;

    memset(c, 0, sizeof(*c));
    pthread_mutex_lock(&ctx->pool_mu);
    c->max_sessions = ctx->tinfo.ulMaxSessionCount;
    /* 0 is "effectively infinite", ~0 "unavailable"; opencryptoki says ~1. */
    if (c->max_sessions > HSM_MAX_SESSIONS_REPORTED)
        c->max_sessions = 0;
    c->login_required = (ctx->tinfo.flags & CKF_LOGIN_REQUIRED) != 0;
    c->protected_auth_path = (ctx->tinfo.flags & CKF_PROTECTED_AUTHENTICATION_PATH) != 0;
    c->write_protected = (ctx->tinfo.flags & CKF_WRITE_PROTECTED) != 0;
    c->pin_to_be_changed = (ctx->tinfo.flags & CKF_USER_PIN_TO_BE_CHANGED) != 0;
    c->pin_count_low = (ctx->tinfo.flags & CKF_USER_PIN_COUNT_LOW) != 0;
    pthread_mutex_unlock(&ctx->pool_mu);

    if (hsm_run_once(ctx, op_mechs, c) != HSM_OK) {
        log_warn("could not list the token's mechanisms detail=\"%s\"", log_qs(hsm_last_error_detail()));
        note_incomplete(c, "the mechanism list", hsm_last_error_detail());
    }
    c->allowed_mechanisms = try_attr(ctx, c, CKA_ALLOWED_MECHANISMS, "CKA_ALLOWED_MECHANISMS",
                                     c->allowed_mechanisms_why, sizeof(c->allowed_mechanisms_why), &reinit, NULL,
                                     NULL);
    c->unwrap_template = try_attr(ctx, c, CKA_UNWRAP_TEMPLATE, "CKA_UNWRAP_TEMPLATE", c->unwrap_template_why,
                                  sizeof(c->unwrap_template_why), &reinit, NULL, NULL);
    c->wrap_with_trusted = try_attr(ctx, c, CKA_WRAP_WITH_TRUSTED, "CKA_WRAP_WITH_TRUSTED", c->wrap_with_trusted_why,
                                    sizeof(c->wrap_with_trusted_why), &reinit, &c->wrap_with_trusted_unenforced,
                                    &wrap_lasting);
    judge_lasting(ctx, c, wrap_lasting);
    if (c->incomplete)
        log_warn("the token's capabilities could not all be probed; probed again on next use detail=\"%s\"",
                 log_qs(c->incomplete_why));
    c->module_reinitialised = reinit;
    c->rewrap_on_token = hsm_caps_has(c, HSM_MECH_RSA_OAEP, HSM_MF_UNWRAP | HSM_MF_WRAP);
    c->secret_on_token = hsm_caps_has(c, HSM_MECH_AES_KEYGEN, HSM_MF_GENERATE) &&
                         hsm_caps_has(c, HSM_MECH_RSA_OAEP, HSM_MF_WRAP) &&
                         (hsm_caps_has(c, HSM_MECH_AES_KEY_WRAP, HSM_MF_WRAP) ||
                          hsm_caps_has(c, HSM_MECH_AES_ECB, HSM_MF_ENCRYPT));
    c->hmac_on_token =
        hsm_caps_has(c, HSM_MECH_GENERIC_KEYGEN, HSM_MF_GENERATE) && hsm_caps_has(c, HSM_MECH_SHA256_HMAC, HSM_MF_SIGN);
    hsm_clear_detail();
    log_debug("token capabilities probed allowed_mechanisms=%d unwrap_template=%d rewrap_on_token=%d "
              "secret_on_token=%d",
              (int)c->allowed_mechanisms, (int)c->unwrap_template, (int)c->rewrap_on_token,
              (int)c->secret_on_token);
}

void hsm_caps_load(hsm_ctx *ctx, hsm_caps *out)
{
    hsm_caps fresh;
    bool have;

    pthread_mutex_lock(&ctx->caps_mu);
    have = ctx->caps_done;
    if (have)
        *out = ctx->caps;
    pthread_mutex_unlock(&ctx->caps_mu);
    if (have)
        return;
    /* Probed without caps_mu (the trials take the other locks); two
     * threads racing here both probe, the first result is kept. */
    probe(ctx, &fresh);
    pthread_mutex_lock(&ctx->caps_mu);
    if (!ctx->caps_done) {
        ctx->caps = fresh;
        ctx->caps_done = true;
    }
    *out = ctx->caps;
    pthread_mutex_unlock(&ctx->caps_mu);
}

void hsm_caps_load_complete(hsm_ctx *ctx, hsm_caps *out)
{
    hsm_caps fresh;

    hsm_caps_load(ctx, out);
    /* Bounded: a failure that came back in HSM_PROBE_TRIES probes in a row
     * is judged (judge_lasting) or, if it is of the kind that never is
     * (CKR_DEVICE_ERROR...), left for the next use. */
    for (unsigned i = 1; out->incomplete && i < HSM_PROBE_TRIES; i++) {
        probe(ctx, &fresh);
        pthread_mutex_lock(&ctx->caps_mu);
        if (ctx->caps.incomplete)
            ctx->caps = fresh;
        *out = ctx->caps;
        pthread_mutex_unlock(&ctx->caps_mu);
    }
}

/* Appends "; " (unless first) and text to buf (n bytes, truncating). */
static void name_missing(char *buf, size_t n, const char *text)
{
    size_t used;

    if (buf == NULL || n == 0)
        return;
    used = strlen(buf);
    (void)snprintf(buf + used, n - used, "%s%s", used > 0 ? "; " : "", text);
}

/* A mechanism a capability needs, and what for. */
struct need_mech {
    hsm_mech m;
    unsigned flags;
    const char *what;
};

/* Names each of the mechanisms the token lacks; false if any. */
static bool need_mechs(const hsm_caps *c, const struct need_mech *need, size_t count, char *missing, size_t n)
{
    bool ok = true;

    for (size_t i = 0; i < count; i++)
        if (!hsm_caps_has(c, need[i].m, need[i].flags)) {
            name_missing(missing, n, need[i].what);
            ok = false;
        }
    return ok;
}

/* Names an attribute the token does not keep, with the trial's reason. */
static bool need_attr(hsm_attr_support got, const char *name, const char *why, char *missing, size_t n)
{
    char attr[320];

    if (got == HSM_ATTR_YES)
        return true;
    (void)snprintf(attr, sizeof(attr), "%s (%s)", name, why[0] ? why : "not probed");
    name_missing(missing, n, attr);
    return false;
}

bool hsm_caps_trusted_wrap(const hsm_caps *c, char *missing, size_t n)
{
    static const struct need_mech need[] = {
        {HSM_MECH_AES_KEYGEN, HSM_MF_GENERATE, "CKM_AES_KEY_GEN (the one-time wrapping key)"},
        {HSM_MECH_AES_KEY_WRAP_PAD, HSM_MF_WRAP, "CKM_AES_KEY_WRAP_PAD with CKF_WRAP (wraps the keys)"},
        {HSM_MECH_RSA_OAEP, HSM_MF_WRAP, "CKM_RSA_PKCS_OAEP with CKF_WRAP (wraps it to the transport key)"}};
    bool ok;

    if (missing != NULL && n > 0)
        missing[0] = '\0';
    ok = need_attr(c->wrap_with_trusted, "CKA_WRAP_WITH_TRUSTED", c->wrap_with_trusted_why, missing, n);
    return need_mechs(c, need, GS_ARRAY_LEN(need), missing, n) && ok;
}

bool hsm_caps_receive(const hsm_caps *c, char *missing, size_t n)
{
    static const struct need_mech need[] = {
        {HSM_MECH_RSA_KEYGEN, HSM_MF_GENERATE, "CKM_RSA_PKCS_KEY_PAIR_GEN (the transport key)"},
        {HSM_MECH_RSA_OAEP, HSM_MF_UNWRAP, "CKM_RSA_PKCS_OAEP with CKF_UNWRAP (unwraps the one-time key)"},
        {HSM_MECH_AES_KEY_WRAP_PAD, HSM_MF_UNWRAP, "CKM_AES_KEY_WRAP_PAD with CKF_UNWRAP (unwraps the keys)"}};
    bool ok;

    if (missing != NULL && n > 0)
        missing[0] = '\0';
    ok = need_mechs(c, need, GS_ARRAY_LEN(need), missing, n);
    ok = need_attr(c->allowed_mechanisms, "CKA_ALLOWED_MECHANISMS", c->allowed_mechanisms_why, missing, n) && ok;
    return need_attr(c->unwrap_template, "CKA_UNWRAP_TEMPLATE", c->unwrap_template_why, missing, n) && ok;
}

bool hsm_caps_ec_group(const hsm_caps *c, char *missing, size_t n)
{
    static const struct need_mech need[] = {
        {HSM_MECH_ECDH, HSM_MF_DERIVE, "CKM_ECDH1_DERIVE with CKF_DERIVE (the key agreement of RFC 5753 senders)"},
        {HSM_MECH_AES_KEY_WRAP, HSM_MF_UNWRAP,
         "CKM_AES_KEY_WRAP with CKF_UNWRAP (unwraps the content key under the agreed key)"}};

    if (missing != NULL && n > 0)
        missing[0] = '\0';
    return need_mechs(c, need, GS_ARRAY_LEN(need), missing, n);
}

hsm_err hsm_caps_get(hsm_ctx *ctx, hsm_caps *out)
{
    if (out != NULL)
        memset(out, 0, sizeof(*out));
    if (ctx == NULL || out == NULL)
        return HSM_ERR_ARGS;
    hsm_caps_load_complete(ctx, out);
    return HSM_OK;
}

void hsm_caps_note_refused(hsm_ctx *ctx, unsigned protection, const char *detail)
{
    pthread_mutex_lock(&ctx->caps_mu);
    if (ctx->caps_done && (protection & HSM_PROT_ALLOWED_MECHANISMS) &&
        ctx->caps.allowed_mechanisms == HSM_ATTR_YES) {
        ctx->caps.allowed_mechanisms = HSM_ATTR_SESSION_ONLY;
        util_strlcpy(ctx->caps.allowed_mechanisms_why, detail, sizeof(ctx->caps.allowed_mechanisms_why));
    }
    if (ctx->caps_done && (protection & HSM_PROT_UNWRAP_TEMPLATE) && ctx->caps.unwrap_template == HSM_ATTR_YES) {
        ctx->caps.unwrap_template = HSM_ATTR_SESSION_ONLY;
        util_strlcpy(ctx->caps.unwrap_template_why, detail, sizeof(ctx->caps.unwrap_template_why));
    }
    pthread_mutex_unlock(&ctx->caps_mu);
}
