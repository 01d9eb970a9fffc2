/*
 * profile.c: the token profiles of p11fault (see profile.h). Tests only:
 * it models what a real smartcard refuses, in front of SoftHSM, which
 * really does every operation it lets through.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdint.h>

#include "profile.h"

#define SC_SESSIONS_MAX 2
#define TRACK_MAX 64
#define PIN_MAX 256

static pthread_mutex_t prof_mu = PTHREAD_MUTEX_INITIALIZER;
static int smartcard;
static int no_v15_wrap; /* profile "no-v15-wrap" */
static int oaep_only;   /* profile "oaep-only" */
static int ecdh_kdf;    /* profile "ecdh-kdf" */
static unsigned session_quota; /* GS_P11FAULT_SESSION_QUOTA; 0: none */
static CK_ULONG rsa_max_bits;   /* GS_P11FAULT_RSA_MAX_BITS; 0: as the target */
static int pinpad;              /* GS_P11FAULT_PINPAD */
static int write_protected;     /* GS_P11FAULT_WRITE_PROTECTED */
static int pin_tries_max;       /* GS_P11FAULT_PIN_TRIES; 0: no counter */
static int pin_tries_left;
static int pin_tries_set;      /* 1 + the pin_tries_max pin_tries_left was set for */
static CK_RV pin_error_rv;      /* GS_P11FAULT_PIN_ERROR; 0: CKR_PIN_INCORRECT as is */
static CK_MECHANISM_TYPE mech_info_fail; /* GS_P11FAULT_MECH_INFO_FAIL */
static int mech_info_fail_set;
static unsigned char pad_pin[PIN_MAX]; /* GS_P11FAULT_PINPAD_PIN: what the person types */
static CK_ULONG pad_pin_len;
static int pad_pin_set;
static unsigned open_sessions;
static struct {
    CK_SESSION_HANDLE h;
    int need_ctx_login; /* an operation on an always-authenticate key was started */
} track[TRACK_MAX];
static unsigned char user_pin[PIN_MAX];
static CK_ULONG user_pin_len;

static const CK_MECHANISM_TYPE sc_mechs[] = {CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_RSA_PKCS, CKM_RSA_PKCS_OAEP,
                                             CKM_RSA_X_509, CKM_SHA_1, CKM_SHA256};
/* GS_P11FAULT_RSA_DECRYPT: which RSA decryptions the card does. */
enum sc_rsa { SC_RSA_OAEP_V15 = 0, SC_RSA_V15, SC_RSA_RAW };
static enum sc_rsa sc_rsa;

void prof_load(void)
{
    const char *p = getenv("GS_P11FAULT_PROFILE");

    pthread_mutex_lock(&prof_mu);
    smartcard = p != NULL && strcmp(p, "smartcard") == 0;
    no_v15_wrap = p != NULL && strcmp(p, "no-v15-wrap") == 0;
    oaep_only = p != NULL && strcmp(p, "oaep-only") == 0;
    ecdh_kdf = p != NULL && strcmp(p, "ecdh-kdf") == 0;
    p = getenv("GS_P11FAULT_RSA_DECRYPT");
    sc_rsa = p != NULL && strcmp(p, "v15") == 0 ? SC_RSA_V15 : p != NULL && strcmp(p, "raw") == 0 ? SC_RSA_RAW
                                                                                                 : SC_RSA_OAEP_V15;
    p = getenv("GS_P11FAULT_SESSION_QUOTA");
    session_quota = p != NULL ? (unsigned)strtoul(p, NULL, 10) : 0;
    p = getenv("GS_P11FAULT_RSA_MAX_BITS");
    rsa_max_bits = p != NULL ? (CK_ULONG)strtoul(p, NULL, 10) : 0;
    p = getenv("GS_P11FAULT_WRITE_PROTECTED");
    write_protected = p != NULL && strcmp(p, "1") == 0;
    p = getenv("GS_P11FAULT_PIN_TRIES");
    pin_tries_max = p != NULL ? (int)strtol(p, NULL, 10) : 0;
    if (pin_tries_max < 0 || pin_tries_max > 100)
        pin_tries_max = 0;
    /* The card's counter outlives C_Finalize and C_Initialize. */
    if (pin_tries_set != pin_tries_max + 1)
        pin_tries_left = pin_tries_max;
    pin_tries_set = pin_tries_max + 1;
    p = getenv("GS_P11FAULT_PIN_ERROR");
    pin_error_rv = p != NULL ? (CK_RV)strtoul(p, NULL, 0) : 0;
    p = getenv("GS_P11FAULT_MECH_INFO_FAIL");
    mech_info_fail_set = p != NULL;
    mech_info_fail = p != NULL ? (CK_MECHANISM_TYPE)strtoul(p, NULL, 0) : 0;
    p = getenv("GS_P11FAULT_PINPAD");
    pinpad = p != NULL && strcmp(p, "1") == 0;
    p = getenv("GS_P11FAULT_PINPAD_PIN");
    pad_pin_set = p != NULL && strlen(p) < PIN_MAX;
    pad_pin_len = pad_pin_set ? strlen(p) : 0;
    if (pad_pin_set)
        memcpy(pad_pin, p, pad_pin_len);
    pthread_mutex_unlock(&prof_mu);
}

void prof_reset(void)
{
    pthread_mutex_lock(&prof_mu);
    open_sessions = 0;
    memset(track, 0, sizeof(track));
    pthread_mutex_unlock(&prof_mu);
}

int prof_active(void)
{
    int a;

    pthread_mutex_lock(&prof_mu);
    a = smartcard;
    pthread_mutex_unlock(&prof_mu);
    return a;
}

static int sc_mech_known(CK_MECHANISM_TYPE m)
{
    enum sc_rsa rsa;
    size_t i;

    pthread_mutex_lock(&prof_mu);
    rsa = sc_rsa;
    pthread_mutex_unlock(&prof_mu);
    /* Raw RSA only with GS_P11FAULT_RSA_DECRYPT; then without OAEP, and
     * "raw" without PKCS#1 v1.5 too. */
    if ((m == CKM_RSA_X_509 && rsa == SC_RSA_OAEP_V15) || (m == CKM_RSA_PKCS_OAEP && rsa != SC_RSA_OAEP_V15) ||
        (m == CKM_RSA_PKCS && rsa == SC_RSA_RAW))
        return 0;
    for (i = 0; i < sizeof(sc_mechs) / sizeof(sc_mechs[0]); i++)
        if (sc_mechs[i] == m)
            return 1;
    return 0;
}

CK_RV prof_unsupported(void)
{
    return prof_active() ? CKR_FUNCTION_NOT_SUPPORTED : CKR_OK;
}

CK_RV prof_mech_info_pre(CK_MECHANISM_TYPE type)
{
    int broken;

    pthread_mutex_lock(&prof_mu);
    broken = mech_info_fail_set && type == mech_info_fail;
    pthread_mutex_unlock(&prof_mu);
    if (broken)
        return CKR_GENERAL_ERROR;
    return prof_active() && !sc_mech_known(type) ? CKR_MECHANISM_INVALID : CKR_OK;
}

CK_RV prof_wrap_pre(const CK_MECHANISM *m)
{
    int off;

    pthread_mutex_lock(&prof_mu);
    off = no_v15_wrap || oaep_only;
    pthread_mutex_unlock(&prof_mu);
    if (off && m != NULL && m->mechanism == CKM_RSA_PKCS)
        return CKR_MECHANISM_INVALID;
    return prof_unsupported();
}

CK_RV prof_rsa_size_check(const CK_MECHANISM *m, const CK_ATTRIBUTE *pub, CK_ULONG n)
{
    CK_ULONG max, i, bits = 0;

    pthread_mutex_lock(&prof_mu);
    max = rsa_max_bits;
    pthread_mutex_unlock(&prof_mu);
    if (max == 0 || m == NULL || m->mechanism != CKM_RSA_PKCS_KEY_PAIR_GEN)
        return CKR_OK;
    for (i = 0; pub != NULL && i < n; i++)
        if (pub[i].type == CKA_MODULUS_BITS && pub[i].pValue != NULL && pub[i].ulValueLen == sizeof(CK_ULONG))
            memcpy(&bits, pub[i].pValue, sizeof(bits));
    return bits > max ? CKR_KEY_SIZE_RANGE : CKR_OK;
}

void prof_mech_info_post(CK_MECHANISM_TYPE type, CK_MECHANISM_INFO *info)
{
    int off;
    CK_ULONG max;

    pthread_mutex_lock(&prof_mu);
    off = no_v15_wrap;
    max = rsa_max_bits;
    pthread_mutex_unlock(&prof_mu);
    if (max != 0 && info != NULL &&
        (type == CKM_RSA_PKCS_KEY_PAIR_GEN || type == CKM_RSA_PKCS || type == CKM_RSA_PKCS_OAEP ||
         type == CKM_RSA_X_509 || type == CKM_SHA256_RSA_PKCS) &&
        info->ulMaxKeySize > max)
        info->ulMaxKeySize = max;
    if (off && info != NULL && type == CKM_RSA_PKCS)
        info->flags &= ~(CK_FLAGS)CKF_WRAP;
    pthread_mutex_lock(&prof_mu);
    off = oaep_only;
    pthread_mutex_unlock(&prof_mu);
    if (off && info != NULL && type == CKM_RSA_PKCS)
        info->flags &= ~(CK_FLAGS)(CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP);
    if (!prof_active() || info == NULL)
        return;
    /* What the card does itself: private-key operations only. */
    switch (type) {
    case CKM_RSA_PKCS_OAEP:
        info->flags = CKF_HW | CKF_DECRYPT;
        break;
    case CKM_RSA_PKCS:
    case CKM_RSA_X_509:
        info->flags = CKF_HW | CKF_DECRYPT | CKF_SIGN;
        break;
    case CKM_RSA_PKCS_KEY_PAIR_GEN:
        info->flags = CKF_HW | CKF_GENERATE_KEY_PAIR;
        break;
    default:
        info->flags &= CKF_DIGEST;
        break;
    }
}

void prof_mech_list_post(CK_MECHANISM_TYPE *list, CK_ULONG *count, int count_only)
{
    CK_ULONG i, n = 0;

    if (!prof_active() || count == NULL)
        return;
    if (count_only) {
        /* Room for the real list; filtered when it is fetched. */
        return;
    }
    for (i = 0; i < *count; i++)
        if (sc_mech_known(list[i]))
            list[n++] = list[i];
    *count = n;
}

CK_RV prof_check_mech(const CK_MECHANISM *m, int sign)
{
    int v15_off;

    pthread_mutex_lock(&prof_mu);
    v15_off = oaep_only;
    pthread_mutex_unlock(&prof_mu);
    if (v15_off && !sign && m != NULL && m->mechanism == CKM_RSA_PKCS)
        return CKR_MECHANISM_INVALID;
    if (!prof_active())
        return CKR_OK;
    if (m == NULL || !sc_mech_known(m->mechanism))
        return CKR_MECHANISM_INVALID;
    if (m->mechanism == CKM_RSA_PKCS_OAEP) {
        const CK_RSA_PKCS_OAEP_PARAMS *p = m->pParameter;
        if (sign)
            return CKR_MECHANISM_INVALID;
        if (p == NULL || m->ulParameterLen != sizeof(*p) || p->hashAlg != CKM_SHA_1 || p->mgf != CKG_MGF1_SHA1)
            return CKR_MECHANISM_PARAM_INVALID;
    }
    return CKR_OK;
}

CK_RV prof_check_template(const CK_ATTRIBUTE *t, CK_ULONG n)
{
    CK_ULONG i;

    if (!prof_active())
        return CKR_OK;
    for (i = 0; t != NULL && i < n; i++)
        if (t[i].type == CKA_ALLOWED_MECHANISMS || t[i].type == CKA_UNWRAP_TEMPLATE)
            return CKR_ATTRIBUTE_TYPE_INVALID;
    return CKR_OK;
}

CK_RV prof_create_object_pre(const CK_ATTRIBUTE *t, CK_ULONG n)
{
    CK_ULONG i;
    CK_RV rv;

    if (!prof_active())
        return CKR_OK;
    if ((rv = prof_check_template(t, n)) != CKR_OK)
        return rv;
    for (i = 0; t != NULL && i < n; i++) {
        if (t[i].type == CKA_CLASS && t[i].pValue != NULL && t[i].ulValueLen == sizeof(CK_OBJECT_CLASS)) {
            CK_OBJECT_CLASS c;
            memcpy(&c, t[i].pValue, sizeof(c));
            if (c == CKO_PRIVATE_KEY || c == CKO_SECRET_KEY)
                return CKR_TEMPLATE_INCONSISTENT;
        }
    }
    return CKR_OK;
}

CK_RV prof_keypair_private(const CK_ATTRIBUTE *in, CK_ULONG n, CK_ATTRIBUTE **out, CK_ULONG *nout)
{
    static CK_BBOOL off = CK_FALSE;
    static const CK_ATTRIBUTE_TYPE usages[] = {CKA_SIGN, CKA_SIGN_RECOVER, CKA_DECRYPT, CKA_UNWRAP, CKA_DERIVE};
    CK_ATTRIBUTE *t;
    CK_ULONG i, k, m;

    *out = NULL;
    *nout = 0;
    if (!prof_active())
        return CKR_OK;
    if ((t = calloc(n + sizeof(usages) / sizeof(usages[0]), sizeof(*t))) == NULL)
        return CKR_HOST_MEMORY;
    for (i = 0; i < n; i++)
        t[i] = in[i];
    m = n;
    for (k = 0; k < sizeof(usages) / sizeof(usages[0]); k++) {
        int asked = 0;
        for (i = 0; i < n; i++)
            if (in[i].type == usages[k])
                asked = 1;
        if (!asked) {
            t[m].type = usages[k];
            t[m].pValue = &off;
            t[m++].ulValueLen = sizeof(off);
        }
    }
    *out = t;
    *nout = m;
    return CKR_OK;
}

CK_RV prof_open_session_pre(CK_FLAGS flags)
{
    CK_RV rv = CKR_OK;

    pthread_mutex_lock(&prof_mu);
    if (write_protected && (flags & CKF_RW_SESSION))
        rv = CKR_TOKEN_WRITE_PROTECTED;
    if (rv == CKR_OK &&
        ((smartcard && open_sessions >= SC_SESSIONS_MAX) || (session_quota > 0 && open_sessions >= session_quota)))
        rv = CKR_SESSION_COUNT;
    pthread_mutex_unlock(&prof_mu);
    return rv;
}

void prof_session_opened(CK_SESSION_HANDLE s)
{
    unsigned i;

    pthread_mutex_lock(&prof_mu);
    if (smartcard || session_quota > 0) {
        open_sessions++;
        for (i = 0; i < TRACK_MAX; i++)
            if (track[i].h == 0) {
                track[i].h = s;
                track[i].need_ctx_login = 0;
                break;
            }
    }
    pthread_mutex_unlock(&prof_mu);
}

void prof_session_closed(CK_SESSION_HANDLE s)
{
    unsigned i;

    pthread_mutex_lock(&prof_mu);
    if (smartcard || session_quota > 0) {
        if (open_sessions > 0)
            open_sessions--;
        for (i = 0; i < TRACK_MAX; i++)
            if (track[i].h == s)
                track[i].h = 0;
    }
    pthread_mutex_unlock(&prof_mu);
}

void prof_all_sessions_closed(void)
{
    prof_reset();
}

CK_RV prof_pinpad(unsigned char **pin, unsigned long *len)
{
    CK_RV rv = CKR_OK;

    pthread_mutex_lock(&prof_mu);
    if (pinpad && *pin == NULL && *len == 0) {
        if (pad_pin_set) {
            *pin = pad_pin;
            *len = pad_pin_len;
        } else {
            rv = CKR_FUNCTION_CANCELED;
        }
    }
    pthread_mutex_unlock(&prof_mu);
    return rv;
}

CK_RV prof_pin_counter_pre(CK_USER_TYPE type)
{
    CK_RV rv = CKR_OK;

    pthread_mutex_lock(&prof_mu);
    if (pin_tries_max > 0 && type != CKU_SO && pin_tries_left == 0)
        rv = CKR_PIN_LOCKED;
    pthread_mutex_unlock(&prof_mu);
    return rv;
}

CK_RV prof_pin_counter_post(CK_USER_TYPE type, CK_RV rv)
{
    pthread_mutex_lock(&prof_mu);
    if (pin_tries_max > 0 && type != CKU_SO) {
        if (rv == CKR_PIN_INCORRECT && pin_tries_left > 0)
            pin_tries_left--;
        else if (rv == CKR_OK)
            pin_tries_left = pin_tries_max;
    }
    if (rv == CKR_PIN_INCORRECT && pin_error_rv != 0)
        rv = pin_error_rv;
    pthread_mutex_unlock(&prof_mu);
    return rv;
}

void prof_slot_info_post(CK_SLOT_INFO *info)
{
    pthread_mutex_lock(&prof_mu);
    if (pin_tries_max > 0 && info != NULL)
        info->flags |= CKF_HW_SLOT | CKF_REMOVABLE_DEVICE;
    pthread_mutex_unlock(&prof_mu);
}

void prof_token_info_post(CK_TOKEN_INFO *info)
{
    int pad;

    pthread_mutex_lock(&prof_mu);
    pad = pinpad;
    if (pin_tries_max > 0 && info != NULL) {
        if (pin_tries_left == 0)
            info->flags |= CKF_USER_PIN_LOCKED;
        else if (pin_tries_left == 1)
            info->flags |= CKF_USER_PIN_FINAL_TRY;
        if (pin_tries_left < pin_tries_max)
            info->flags |= CKF_USER_PIN_COUNT_LOW;
    }
    pthread_mutex_unlock(&prof_mu);
    if (pad && info != NULL)
        info->flags |= CKF_PROTECTED_AUTHENTICATION_PATH;
    pthread_mutex_lock(&prof_mu);
    pad = write_protected;
    pthread_mutex_unlock(&prof_mu);
    if (pad && info != NULL)
        info->flags |= CKF_WRITE_PROTECTED;
    if (!prof_active() || info == NULL)
        return;
    info->ulMaxSessionCount = SC_SESSIONS_MAX;
    info->ulMaxRwSessionCount = SC_SESSIONS_MAX;
}

static int is_private_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o)
{
    CK_FUNCTION_LIST *r = p11f_real();
    CK_OBJECT_CLASS c = 0;
    CK_ATTRIBUTE a = {CKA_CLASS, &c, sizeof(c)};

    return r != NULL && r->C_GetAttributeValue(s, o, &a, 1) == CKR_OK && c == CKO_PRIVATE_KEY;
}

void prof_op_init(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key)
{
    int priv;
    unsigned i;

    if (!prof_active())
        return;
    priv = is_private_key(s, key);
    pthread_mutex_lock(&prof_mu);
    for (i = 0; i < TRACK_MAX; i++)
        if (track[i].h == s)
            track[i].need_ctx_login = priv;
    pthread_mutex_unlock(&prof_mu);
}

CK_RV prof_op_use(CK_SESSION_HANDLE s)
{
    CK_RV rv = CKR_OK;
    unsigned i;

    pthread_mutex_lock(&prof_mu);
    for (i = 0; smartcard && i < TRACK_MAX; i++)
        if (track[i].h == s && track[i].need_ctx_login)
            rv = CKR_USER_NOT_LOGGED_IN;
    pthread_mutex_unlock(&prof_mu);
    return rv;
}

int prof_login(CK_SESSION_HANDLE s, CK_USER_TYPE type, const unsigned char *pin, CK_ULONG len, CK_RV *rv)
{
    unsigned i;
    int found = 0;

    if (!prof_active() || type != CKU_CONTEXT_SPECIFIC)
        return 0;
    pthread_mutex_lock(&prof_mu);
    for (i = 0; i < TRACK_MAX; i++) {
        if (track[i].h != s || !track[i].need_ctx_login)
            continue;
        found = 1;
        if (pin == NULL || len != user_pin_len || user_pin_len == 0 || memcmp(pin, user_pin, len) != 0) {
            *rv = CKR_PIN_INCORRECT;
        } else {
            track[i].need_ctx_login = 0;
            *rv = CKR_OK;
        }
    }
    if (!found)
        *rv = CKR_OPERATION_NOT_INITIALIZED;
    pthread_mutex_unlock(&prof_mu);
    return 1;
}

void prof_login_post(CK_USER_TYPE type, const unsigned char *pin, CK_ULONG len)
{
    if (!prof_active() || type != CKU_USER || pin == NULL || len > PIN_MAX)
        return;
    pthread_mutex_lock(&prof_mu);
    memcpy(user_pin, pin, len);
    user_pin_len = len;
    pthread_mutex_unlock(&prof_mu);
}

CK_RV prof_get_attributes(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE *t, CK_ULONG n)
{
    CK_FUNCTION_LIST *r = p11f_real();
    CK_ATTRIBUTE *fw = NULL;
    CK_ULONG *map = NULL, i, m = 0;
    CK_RV rv = CKR_OK, rv2;
    int unknown = 0;

    if (r == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (!prof_active())
        return r->C_GetAttributeValue(s, o, t, n);
    if (n > 0 && ((fw = calloc(n, sizeof(*fw))) == NULL || (map = calloc(n, sizeof(*map))) == NULL)) {
        free(fw);
        return CKR_HOST_MEMORY;
    }
    for (i = 0; i < n; i++) {
        if (t[i].type == CKA_ALLOWED_MECHANISMS || t[i].type == CKA_UNWRAP_TEMPLATE) {
            t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
            unknown = 1;
        } else if (t[i].type == CKA_ALWAYS_AUTHENTICATE && is_private_key(s, o)) {
            if (t[i].pValue == NULL) {
                t[i].ulValueLen = sizeof(CK_BBOOL);
            } else if (t[i].ulValueLen < sizeof(CK_BBOOL)) {
                t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
                rv = CKR_BUFFER_TOO_SMALL;
            } else {
                *(CK_BBOOL *)t[i].pValue = CK_TRUE;
                t[i].ulValueLen = sizeof(CK_BBOOL);
            }
        } else {
            fw[m] = t[i];
            map[m++] = i;
        }
    }
    if (m > 0) {
        rv2 = r->C_GetAttributeValue(s, o, fw, m);
        for (i = 0; i < m; i++)
            t[map[i]].ulValueLen = fw[i].ulValueLen;
        if (rv2 != CKR_OK)
            rv = rv2;
    }
    if (rv == CKR_OK && unknown)
        rv = CKR_ATTRIBUTE_TYPE_INVALID;
    free(fw);
    free(map);
    return rv;
}

/* ---- "ecdh-kdf": the X9.63 KDF of CKM_ECDH1_DERIVE ----------------------- */

/* ANSI X9.63 KDF: Hash(Z || counter || SharedInfo), counter from 1. */
static int x963_kdf(const EVP_MD *md, const unsigned char *z, size_t zlen, const unsigned char *info, size_t infolen,
                    unsigned char *out, size_t outlen)
{
    unsigned char block[EVP_MAX_MD_SIZE];
    unsigned int blen = 0;
    uint32_t counter = 1;
    size_t done = 0;
    int ok = 1;

    while (ok && done < outlen) {
        unsigned char c[4] = {(unsigned char)(counter >> 24), (unsigned char)(counter >> 16),
                              (unsigned char)(counter >> 8), (unsigned char)counter};
        EVP_MD_CTX *mc = EVP_MD_CTX_new();
        ok = mc != NULL && EVP_DigestInit_ex(mc, md, NULL) == 1 && EVP_DigestUpdate(mc, z, zlen) == 1 &&
             EVP_DigestUpdate(mc, c, sizeof(c)) == 1 && (infolen == 0 || EVP_DigestUpdate(mc, info, infolen) == 1) &&
             EVP_DigestFinal_ex(mc, block, &blen) == 1;
        EVP_MD_CTX_free(mc);
        if (ok) {
            size_t n = outlen - done < blen ? outlen - done : blen;
            memcpy(out + done, block, n);
            done += n;
            counter++;
        }
    }
    OPENSSL_cleanse(block, sizeof(block));
    return ok;
}

CK_RV prof_derive(CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_OBJECT_HANDLE base, CK_ATTRIBUTE *t, CK_ULONG n,
                  CK_OBJECT_HANDLE *key, int *done)
{
    CK_FUNCTION_LIST *real = p11f_real();
    CK_ECDH1_DERIVE_PARAMS *dp, plain;
    CK_MECHANISM pm = {CKM_ECDH1_DERIVE, &plain, sizeof(plain)};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE gen = CKK_GENERIC_SECRET;
    CK_BBOOL ck_true = CK_TRUE, ck_false = CK_FALSE;
    CK_ULONG zlen, want = 0;
    CK_ATTRIBUTE zt[] = {
        {CKA_CLASS, &cls, sizeof(cls)},         {CKA_KEY_TYPE, &gen, sizeof(gen)},
        {CKA_TOKEN, &ck_false, sizeof(ck_false)}, {CKA_SENSITIVE, &ck_false, sizeof(ck_false)},
        {CKA_EXTRACTABLE, &ck_true, sizeof(ck_true)}, {CKA_VALUE_LEN, &zlen, sizeof(zlen)},
    };
    CK_ATTRIBUTE *ct = NULL;
    CK_ULONG cn = 0;
    CK_OBJECT_HANDLE zh = CK_INVALID_HANDLE;
    unsigned char z[66], kv[64];
    CK_ATTRIBUTE zv = {CKA_VALUE, z, sizeof(z)};
    const EVP_MD *md;
    CK_RV rv;
    int on;

    *done = 0;
    pthread_mutex_lock(&prof_mu);
    on = ecdh_kdf;
    pthread_mutex_unlock(&prof_mu);
    if (!on || real == NULL || m == NULL || m->mechanism != CKM_ECDH1_DERIVE || m->pParameter == NULL ||
        m->ulParameterLen != sizeof(*dp))
        return CKR_OK;
    dp = m->pParameter;
    if (dp->kdf == CKD_NULL)
        return CKR_OK;
    *done = 1;
    md = dp->kdf == CKD_SHA1_KDF ? EVP_sha1() : dp->kdf == CKD_SHA256_KDF ? EVP_sha256() : NULL;
    if (md == NULL || dp->pPublicData == NULL || dp->ulPublicDataLen < 3 || dp->ulPublicDataLen % 2 == 0)
        return CKR_MECHANISM_PARAM_INVALID;
    for (CK_ULONG i = 0; i < n; i++)
        if (t[i].type == CKA_VALUE_LEN && t[i].pValue != NULL && t[i].ulValueLen == sizeof(CK_ULONG))
            want = *(CK_ULONG *)t[i].pValue;
    if (want == 0 || want > sizeof(kv))
        return CKR_TEMPLATE_INCOMPLETE;
    zlen = (dp->ulPublicDataLen - 1) / 2; /* the field size: Z is its x coordinate */
    if (zlen > sizeof(z))
        return CKR_MECHANISM_PARAM_INVALID;
    memset(&plain, 0, sizeof(plain));
    plain.kdf = CKD_NULL;
    plain.pPublicData = dp->pPublicData;
    plain.ulPublicDataLen = dp->ulPublicDataLen;
    if ((rv = real->C_DeriveKey(s, &pm, base, zt, sizeof(zt) / sizeof(zt[0]), &zh)) != CKR_OK)
        return rv;
    rv = real->C_GetAttributeValue(s, zh, &zv, 1);
    (void)real->C_DestroyObject(s, zh);
    if (rv == CKR_OK && zv.ulValueLen != zlen)
        rv = CKR_GENERAL_ERROR;
    if (rv == CKR_OK && !x963_kdf(md, z, zlen, dp->pSharedData, dp->pSharedData ? dp->ulSharedDataLen : 0, kv, want))
        rv = CKR_HOST_MEMORY;
    /* The caller's template, CKA_VALUE in place of CKA_VALUE_LEN. */
    if (rv == CKR_OK && (ct = calloc(n + 1, sizeof(*ct))) == NULL)
        rv = CKR_HOST_MEMORY;
    for (CK_ULONG i = 0; rv == CKR_OK && i < n; i++)
        if (t[i].type != CKA_VALUE_LEN)
            ct[cn++] = t[i];
    if (rv == CKR_OK) {
        ct[cn].type = CKA_VALUE;
        ct[cn].pValue = kv;
        ct[cn].ulValueLen = want;
        rv = real->C_CreateObject(s, ct, cn + 1, key);
    }
    free(ct);
    OPENSSL_cleanse(z, sizeof(z));
    OPENSSL_cleanse(kv, sizeof(kv));
    return rv;
}
