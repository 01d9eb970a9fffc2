/* policy.c: see policy.h. */
#include "policy.h"

#include <p11-kit/pkcs11.h>
#include <stdio.h>
#include <string.h>

#include "store.h"
#include "util.h"

#ifndef CKM_AES_KEY_WRAP_KWP
#define CKM_AES_KEY_WRAP_KWP 0x210bUL
#endif

/* ---- text forms ------------------------------------------------------------ */

const char *gs_rewrap_name(gs_rewrap_path r)
{
    return r == GS_REWRAP_SOFTWARE ? "software" : "token";
}

const char *gs_secrets_name(gs_secret_store s)
{
    return s == GS_SECRETS_SEALED ? "sealed" : s == GS_SECRETS_TOKEN_ECB ? "token-aes-ecb" : "token";
}

static const char *reject_name(const gs_policy *p)
{
    return p->reject_sealed ? "sealed" : "token";
}

/* One form for the stored policy and for a group's as shown, so what the
 * commands show reads as what the database holds. */
static void policy_text(const gs_policy *p, const char *secrets, const char *reject, char *buf, size_t bufsize)
{
    (void)snprintf(buf, bufsize, "rewrap=%s,secrets=%s,reject=%s", gs_rewrap_name(p->rewrap), secrets, reject);
}

void gs_policy_format(const gs_policy *p, char *buf, size_t bufsize)
{
    policy_text(p, gs_secrets_name(p->secrets), reject_name(p), buf, bufsize);
}

const char *gs_policy_secrets_shown(const gs_policy *p, unsigned methods)
{
    return (methods & GS_METHOD_GROUP_SECRET) ? gs_secrets_name(p->secrets) : "none";
}

const char *gs_policy_reject_shown(const gs_policy *p, bool allow_pkcs1v15)
{
    return allow_pkcs1v15 ? reject_name(p) : "none";
}

void gs_policy_group_format(const gs_policy *p, unsigned methods, bool allow_pkcs1v15, char *buf, size_t bufsize)
{
    policy_text(p, gs_policy_secrets_shown(p, methods), gs_policy_reject_shown(p, allow_pkcs1v15), buf, bufsize);
}

gs_err gs_policy_parse(const char *text, gs_policy *out)
{
    char want[96];
    gs_policy p;

    memset(out, 0, sizeof(*out));
    if (text == NULL || text[0] == '\0')
        return GS_OK;
    /* Every form gs_policy_format can write, compared whole: the store
     * holds nothing else unless it was damaged. */
    for (int r = 0; r < 2; r++)
        for (int s = 0; s < 3; s++)
            for (int j = 0; j < 2; j++) {
                p.rewrap = (gs_rewrap_path)r;
                p.secrets = (gs_secret_store)s;
                p.reject_sealed = j != 0;
                gs_policy_format(&p, want, sizeof(want));
                if (strcmp(want, text) == 0) {
                    *out = p;
                    return GS_OK;
                }
            }
    return gs_err_set(GS_ERR_SCHEMA, "unknown key policy in the database: %.80s", text);
}

size_t gs_policy_weakenings(const gs_policy *p, unsigned methods, bool allow_pkcs1v15, const char **names,
                            size_t cap)
{
    size_t n = 0;

    if (p->rewrap == GS_REWRAP_SOFTWARE && n < cap)
        names[n++] = "software-rewrap";
    if ((methods & GS_METHOD_GROUP_SECRET) && p->secrets == GS_SECRETS_TOKEN_ECB && n < cap)
        names[n++] = "secret-aes-ecb";
    if ((methods & GS_METHOD_GROUP_SECRET) && p->secrets == GS_SECRETS_SEALED && n < cap)
        names[n++] = "secret-sealed";
    if (allow_pkcs1v15 && p->reject_sealed && n < cap)
        names[n++] = "reject-sealed";
    return n;
}

static const struct {
    const char *name;
    const char *text;
} weakening_texts[] = {
    {"software-rewrap", "content keys are decrypted into locked server memory for recipient-key, "
                        "membership-cert, group-secret and rewrap (the token cannot unwrap into a session "
                        "key or wrap)"},
    {"secret-aes-ecb", "group secret keys wrap with RFC 3394/5649 built on the token's CKM_AES_ECB: the content "
                       "key passes through locked server memory (the token has no AES key wrap)"},
    {"secret-sealed", "group secret keys are kept outside the token, sealed to a token key pair, and opened "
                      "into locked server memory for each use (the token cannot keep or wrap them)"},
    {"reject-sealed", "the implicit-rejection key is kept outside the token, sealed, and opened into locked "
                      "server memory for each use (the token has no HMAC)"},
    {"no-allowed-mechanisms", "the key has no CKA_ALLOWED_MECHANISMS: the token cannot store it, so it does "
                              "not limit the key to its mechanisms"},
    {"no-unwrap-template", "the key has no CKA_UNWRAP_TEMPLATE: the token cannot store it, so keys unwrapped "
                           "with it are sensitive only because groupsrv asks for it"},
};

const char *gs_weakening_text(const char *name)
{
    for (size_t i = 0; name != NULL && i < GS_ARRAY_LEN(weakening_texts); i++)
        if (strcmp(weakening_texts[i].name, name) == 0)
            return weakening_texts[i].text;
    return NULL;
}

void gs_weak_format(unsigned missing, char *buf, size_t bufsize)
{
    (void)snprintf(buf, bufsize, "%s%s%s", (missing & HSM_PROT_ALLOWED_MECHANISMS) ? "no-allowed-mechanisms" : "",
                   (missing & HSM_PROT_ALLOWED_MECHANISMS) && (missing & HSM_PROT_UNWRAP_TEMPLATE) ? "," : "",
                   (missing & HSM_PROT_UNWRAP_TEMPLATE) ? "no-unwrap-template" : "");
}

gs_err gs_weak_parse(const char *text, unsigned *missing)
{
    const char *p = text;

    *missing = 0;
    while (p != NULL && *p != '\0') {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == strlen("no-allowed-mechanisms") && strncmp(p, "no-allowed-mechanisms", n) == 0)
            *missing |= HSM_PROT_ALLOWED_MECHANISMS;
        else if (n == strlen("no-unwrap-template") && strncmp(p, "no-unwrap-template", n) == 0)
            *missing |= HSM_PROT_UNWRAP_TEMPLATE;
        else
            return gs_err_set(GS_ERR_SCHEMA, "unknown key weakening in the database: %.80s", text);
        p = end ? end + 1 : p + n;
    }
    return GS_OK;
}

/* ---- choosing -------------------------------------------------------------------- */

gs_err gs_policy_choose(const hsm_caps *caps, hsm_key_type type, unsigned methods, bool allow_pkcs1v15,
                        bool adopted_unwrap, gs_policy *out)
{
    bool can_decrypt = hsm_caps_has(caps, HSM_MECH_RSA_OAEP, HSM_MF_DECRYPT);

    memset(out, 0, sizeof(*out));
    if (type == HSM_KEYTYPE_EC) {
        /* ECDH, method F only: nothing to choose, but a token that lacks
         * what every unwrap needs would make (or adopt) a key no message
         * can ever be read with. */
        char missing[512];
        if (!hsm_caps_ec_group(caps, missing, sizeof(missing)))
            return gs_err_set(GS_ERR_POLICY, "this token cannot hold EC group keys (missing: %s): use an RSA key "
                              "(--key rsa:3072)", missing);
        return GS_OK;
    }
    if (!can_decrypt && !caps->rewrap_on_token)
        return gs_err_set(GS_ERR_POLICY, "the token offers %s neither for decryption nor for unwrapping: it "
                          "cannot hold group keys (use a token with RSA-OAEP)", hsm_mech_name(HSM_MECH_RSA_OAEP));
    /* PKCS#1 v1.5 is taken by decrypting on the token (implicit
     * rejection needs the padding result there), never by unwrapping: a
     * token without CKM_RSA_PKCS decryption (an OAEP-only HSM policy)
     * would make a group that every v1.5 sender's message is refused by. */
    if (allow_pkcs1v15 && !hsm_caps_has(caps, HSM_MECH_RSA_PKCS, HSM_MF_DECRYPT))
        return gs_err_set(GS_ERR_POLICY, "the token offers no %s decryption, which PKCS#1 v1.5 senders need: create "
                          "the group with --oaep-only (RSA-OAEP senders only)", hsm_mech_name(HSM_MECH_RSA_PKCS));
    out->rewrap = caps->rewrap_on_token && adopted_unwrap ? GS_REWRAP_TOKEN : GS_REWRAP_SOFTWARE;
    if (out->rewrap == GS_REWRAP_SOFTWARE && !can_decrypt)
        return gs_err_set(GS_ERR_POLICY, "the key cannot unwrap and the token offers no %s decryption: make the "
                          "key with CKA_UNWRAP", hsm_mech_name(HSM_MECH_RSA_OAEP));
    if (caps->secret_on_token && hsm_caps_has(caps, HSM_MECH_AES_KEY_WRAP, HSM_MF_WRAP))
        out->secrets = GS_SECRETS_TOKEN;
    else if (caps->secret_on_token)
        out->secrets = GS_SECRETS_TOKEN_ECB;
    else
        out->secrets = GS_SECRETS_SEALED;
    out->reject_sealed = !caps->hmac_on_token;
    /* Secret keys outside C_WrapKey need the content key in memory, which
     * the group key must then decrypt: only where the group uses them. */
    if (!(methods & GS_METHOD_GROUP_SECRET))
        out->secrets = GS_SECRETS_TOKEN;
    if (!allow_pkcs1v15)
        out->reject_sealed = false;
    if ((out->secrets == GS_SECRETS_SEALED || out->reject_sealed) &&
        (!can_decrypt || !hsm_caps_has(caps, HSM_MECH_RSA_KEYGEN, HSM_MF_GENERATE)))
        return gs_err_set(GS_ERR_POLICY, "the token can neither keep %s nor generate the RSA key pair it would be "
                          "sealed to: create the group %s",
                          out->secrets == GS_SECRETS_SEALED ? "group secret keys" : "the implicit-rejection key",
                          out->secrets == GS_SECRETS_SEALED
                              ? "without group-secret (--methods tls,recipient-key,membership-cert)"
                              : "with --oaep-only (no PKCS#1 v1.5 senders)");
    return GS_OK;
}

unsigned gs_policy_caps_missing(const hsm_caps *caps)
{
    unsigned m = 0;

    if (caps->allowed_mechanisms != HSM_ATTR_YES)
        m |= HSM_PROT_ALLOWED_MECHANISMS;
    if (caps->unwrap_template != HSM_ATTR_YES)
        m |= HSM_PROT_UNWRAP_TEMPLATE;
    return m;
}

unsigned gs_policy_group_usage(const gs_policy *p, hsm_key_type type, unsigned methods, bool allow_pkcs1v15)
{
    unsigned u = 0;

    if (type == HSM_KEYTYPE_EC)
        return HSM_USE_DERIVE;
    if (p->rewrap == GS_REWRAP_TOKEN)
        u |= HSM_USE_UNWRAP;
    if ((methods & GS_METHOD_TLS) || p->rewrap == GS_REWRAP_SOFTWARE ||
        ((methods & GS_METHOD_GROUP_SECRET) && p->secrets != GS_SECRETS_TOKEN))
        u |= HSM_USE_DECRYPT;
    /* PKCS#1 v1.5 goes through implicit rejection, which decrypts
     * (C_Decrypt, CKM_RSA_PKCS) whatever the method: it needs CKA_DECRYPT
     * even where the group never hands out a plain key (no tls). */
    if (allow_pkcs1v15)
        u |= HSM_USE_PKCS1V15 | HSM_USE_DECRYPT;
    return u;
}

/* ---- checks ------------------------------------------------------------------------ */

static bool mech_in(unsigned long m, const unsigned long *set, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (set[i] == m)
            return true;
    return false;
}

bool gs_key_refuses_pkcs1v15(const hsm_key_info *info)
{
    return info->n_allowed_mechanisms > 0 && !info->allowed_mechanisms_too_many &&
           !mech_in(CKM_RSA_PKCS, info->allowed_mechanisms, info->n_allowed_mechanisms);
}

/* Every allowed mechanism must be in `allowed`; with `required` an absent
 * CKA_ALLOWED_MECHANISMS (= any mechanism) is a problem too, unless it
 * cannot be read through this module (then noted). */
static const char *check_mechs(const hsm_key_info *i, const unsigned long *allowed, size_t n, bool required,
                               const char **note)
{
    /* Whatever the rest: the mechanisms past the ones read may be outside
     * the policy, and are not "cannot be read" (a note, accepted). */
    if (i->allowed_mechanisms_too_many)
        return "CKA_ALLOWED_MECHANISMS lists more mechanisms than the 16 groupsrv reads (allow only the policy's)";
    if (i->n_allowed_mechanisms == 0) {
        if (!required)
            return NULL;
        if (i->allowed_mechanisms_unknown) {
            *note = "CKA_ALLOWED_MECHANISMS cannot be read through this module (not verified)";
            return NULL;
        }
        return "CKA_ALLOWED_MECHANISMS absent (any mechanism allowed)";
    }
    for (size_t k = 0; k < i->n_allowed_mechanisms; k++)
        if (!mech_in(i->allowed_mechanisms[k], allowed, n))
            return "CKA_ALLOWED_MECHANISMS allows a mechanism outside the policy";
    return NULL;
}

/* Common to every private or never-leaving key. A replicable key's copy
 * was unwrapped, and PKCS#11 makes CKA_ALWAYS_SENSITIVE false on every
 * unwrapped key: it is judged by what it is now (sensitive, value
 * unreadable) and named an imported copy. */
static const char *check_locked(const hsm_key_info *i, const gs_key_expect *e, const char **custody)
{
    if (!i->token)
        return "not a token object";
    if (!i->private_)
        return "CKA_PRIVATE is false";
    if (!i->sensitive)
        return "CKA_SENSITIVE is false";
    if (!i->always_sensitive && !e->replicable)
        return "CKA_ALWAYS_SENSITIVE is false";
    if (i->value_readable)
        return "key value is readable";
    if (!i->always_sensitive)
        *custody = "imported copy";
    return NULL;
}

/* Leaving the token: never, except a replicable key's original, which
 * leaves only under a key the security officer made trusted
 * (CKA_WRAP_WITH_TRUSTED). Every other extractable key is refused. */
static const char *check_never_leaves(const hsm_key_info *i, const gs_key_expect *e, const char **custody)
{
    if (i->extractable) {
        if (!e->replicable)
            return "CKA_EXTRACTABLE is true";
        if (!i->wrap_with_trusted)
            return "CKA_EXTRACTABLE is true without CKA_WRAP_WITH_TRUSTED";
        if (!i->always_sensitive)
            return "extractable under trusted wrap but not always sensitive";
        *custody = "replicable: leaves only under trusted wrap";
        return NULL;
    }
    if (!i->never_extractable) {
        if (!e->replicable)
            return "CKA_NEVER_EXTRACTABLE is false";
        /* Generated here (CKA_LOCAL) and not extractable now: an original
         * whose CKA_EXTRACTABLE was set false since, no copy. */
        *custody = i->local ? "made here, not extractable now: no token can give it" : "imported copy";
    }
    return NULL;
}

const char *gs_adopt_custody_hint(const char *problem)
{
    if (problem == NULL)
        return "";
    if (strcmp(problem, "CKA_EXTRACTABLE is true") == 0 || strcmp(problem, "CKA_NEVER_EXTRACTABLE is false") == 0)
        return "; pkcs11-tool cannot ask for CKA_EXTRACTABLE false (NSS softokn and opencryptoki make keys "
               "extractable unless asked): let groupsrv generate the key on the token instead (--key)";
    if (strcmp(problem, "CKA_SENSITIVE is false") == 0 || strcmp(problem, "CKA_ALWAYS_SENSITIVE is false") == 0)
        return "; make a new key with CKA_SENSITIVE from the start (pkcs11-tool --keypairgen --sensitive), or let "
               "groupsrv generate it (--key)";
    /* No stock tool asks for it false, and SoftHSM sets it unless asked:
     * a key made there by pkcs11-tool or p11tool can never be adopted. */
    if (strstr(problem, "CKA_SIGN_RECOVER") != NULL)
        return "; pkcs11-tool and p11tool cannot ask for CKA_SIGN_RECOVER false (SoftHSM sets it unless asked, "
               "and pkcs11-tool does not list it): let groupsrv generate the key on the token instead (--key)";
    return "";
}

const char *gs_key_custody_problem(const hsm_key_info *i, bool replicable, const char **custody)
{
    gs_key_expect e;
    const char *dummy, *p;

    memset(&e, 0, sizeof(e));
    e.replicable = replicable;
    if (custody == NULL)
        custody = &dummy;
    *custody = "";
    if ((p = check_locked(i, &e, custody)) != NULL)
        return p;
    return check_never_leaves(i, &e, custody);
}

static const char *check_group(const hsm_key_info *i, const gs_key_expect *e, const char **note,
                               const char **custody)
{
    bool want_decrypt = (e->usage & HSM_USE_DECRYPT) != 0, want_unwrap = (e->usage & HSM_USE_UNWRAP) != 0;
    const char *p;

    if (i->cls != HSM_CLASS_PRIVATE || i->type != e->type)
        return "wrong key class or type";
    if (e->bits != 0 && i->bits != 0 && i->bits != e->bits)
        return "wrong key size";
    if ((p = check_locked(i, e, custody)) != NULL || (p = check_never_leaves(i, e, custody)) != NULL)
        return p;
    /* Each refusal names the attribute that is set: the security team
     * compares it with what the token's tool lists (pkcs11-tool shows
     * CKA_SIGN_RECOVER, which SoftHSM sets by default and p11tool leaves,
     * as nothing; "CKA_SIGN allowed" for it named one it saw unset). */
    if (i->sign)
        return "CKA_SIGN allowed (policy: no signing)";
    if (i->sign_recover)
        return "CKA_SIGN_RECOVER allowed (policy: no signing)";
    if (i->wrap)
        return "wrap/encrypt/verify usage set (CKA_WRAP)";
    if (i->encrypt)
        return "wrap/encrypt/verify usage set (CKA_ENCRYPT)";
    if (i->verify)
        return "wrap/encrypt/verify usage set (CKA_VERIFY)";
    if (e->type == HSM_KEYTYPE_RSA) {
        static const unsigned long oaep[] = {CKM_RSA_PKCS_OAEP};
        static const unsigned long oaep_v15[] = {CKM_RSA_PKCS_OAEP, CKM_RSA_PKCS};
        if (want_decrypt && !i->decrypt && !e->decrypt_optional)
            return "CKA_DECRYPT missing (the group's policy decrypts on the token)";
        if (!want_decrypt && i->decrypt)
            return "CKA_DECRYPT set but the group's policy does not need it";
        if (i->unwrap != want_unwrap)
            return want_unwrap ? "CKA_UNWRAP missing" : "CKA_UNWRAP set but the group re-wraps in software";
        if (i->derive)
            return "CKA_DERIVE set on an RSA key";
        if (want_unwrap && !(e->missing & HSM_PROT_UNWRAP_TEMPLATE)) {
            if (i->unwrap_template_unknown)
                *note = i->has_unwrap_template ? "CKA_UNWRAP_TEMPLATE present; its contents cannot be read from "
                                                 "this token (not verified)"
                                               : "CKA_UNWRAP_TEMPLATE cannot be read through this module (not verified)";
            else if (!i->has_unwrap_template || !i->unwrap_template_sensitive)
                return "CKA_UNWRAP_TEMPLATE missing or does not force CKA_SENSITIVE";
        }
        p = e->allow_pkcs1v15 ? check_mechs(i, oaep_v15, 2, !(e->missing & HSM_PROT_ALLOWED_MECHANISMS), note)
                              : check_mechs(i, oaep, 1, !(e->missing & HSM_PROT_ALLOWED_MECHANISMS), note);
        if (p)
            return p;
        if (i->n_allowed_mechanisms > 0 && !mech_in(CKM_RSA_PKCS_OAEP, i->allowed_mechanisms, i->n_allowed_mechanisms))
            return "CKA_ALLOWED_MECHANISMS lacks RSA-OAEP";
        /* v1.5 is read by C_Decrypt with CKM_RSA_PKCS, which the token
         * refuses a key whose list leaves it out: every v1.5 sender's
         * message would be 400 unsupported_algorithm. */
        if (e->need_pkcs1v15 && gs_key_refuses_pkcs1v15(i))
            return "CKA_ALLOWED_MECHANISMS lacks RSA-PKCS, which the group's PKCS#1 v1.5 senders need";
        return NULL;
    }
    {
        static const unsigned long ecdh[] = {CKM_ECDH1_DERIVE, CKM_ECDH1_COFACTOR_DERIVE};
        if (i->decrypt)
            return "CKA_DECRYPT set on an EC key";
        if (!i->derive)
            return "CKA_DERIVE missing";
        if (i->unwrap)
            return "CKA_UNWRAP set on an EC key";
        return check_mechs(i, ecdh, 2, !(e->missing & HSM_PROT_ALLOWED_MECHANISMS), note);
    }
}

/* Usage attributes a key of some kind must not have. */
enum {
    U_DECRYPT = 1 << 0,
    U_ENCRYPT = 1 << 1,
    U_SIGN = 1 << 2,
    U_SIGN_RECOVER = 1 << 3,
    U_VERIFY = 1 << 4,
    U_WRAP = 1 << 5,
    U_UNWRAP = 1 << 6,
    U_DERIVE = 1 << 7,
};

/* The refusals "usage beyond WHAT set (CKA_X)", one per kind of key and
 * attribute, in the order of the U_ bits. The attribute is named because
 * the security team compares it with what the token's tool lists, and
 * some (CKA_SIGN_RECOVER, which SoftHSM sets by default) pkcs11-tool lists
 * as nothing. Static strings: the checks run on several threads. */
#define BEYOND(what)                                                                                              \
    {                                                                                                             \
        "usage beyond " what " set (CKA_DECRYPT)", "usage beyond " what " set (CKA_ENCRYPT)",                    \
            "usage beyond " what " set (CKA_SIGN)", "usage beyond " what " set (CKA_SIGN_RECOVER)",              \
            "usage beyond " what " set (CKA_VERIFY)", "usage beyond " what " set (CKA_WRAP)",                    \
            "usage beyond " what " set (CKA_UNWRAP)", "usage beyond " what " set (CKA_DERIVE)"                   \
    }
static const char *const beyond_signing[] = BEYOND("signing"), *const beyond_ecb[] = BEYOND("AES-ECB encryption"),
                         *const beyond_kw[] = BEYOND("key wrapping"), *const beyond_hmac[] = BEYOND("HMAC"),
                         *const beyond_decryption[] = BEYOND("decryption");
#undef BEYOND

/* texts[b] for the first attribute of `banned` the key has, or NULL. */
static const char *usage_beyond(const hsm_key_info *i, const char *const *texts, unsigned banned)
{
    const bool has[] = {i->decrypt, i->encrypt, i->sign, i->sign_recover, i->verify, i->wrap, i->unwrap, i->derive};

    for (unsigned b = 0; b < GS_ARRAY_LEN(has); b++)
        if ((banned & (1u << b)) && has[b])
            return texts[b];
    return NULL;
}

static const char *check_ca(const hsm_key_info *i, const gs_key_expect *e, const char **note,
                            const char **custody)
{
    static const unsigned long sig[] = {CKM_SHA256_RSA_PKCS, CKM_RSA_PKCS, CKM_ECDSA, CKM_ECDSA_SHA256};
    const char *p;

    if (i->cls != HSM_CLASS_PRIVATE)
        return "not a private key";
    if ((p = check_locked(i, e, custody)) != NULL || (p = check_never_leaves(i, e, custody)) != NULL)
        return p;
    if (!i->sign)
        return "CKA_SIGN missing";
    if ((p = usage_beyond(i, beyond_signing, U_DECRYPT | U_UNWRAP | U_DERIVE | U_WRAP | U_ENCRYPT | U_SIGN_RECOVER)) !=
        NULL)
        return p;
    return check_mechs(i, sig, GS_ARRAY_LEN(sig), !(e->missing & HSM_PROT_ALLOWED_MECHANISMS), note);
}

static const char *check_secret(const hsm_key_info *i, const gs_key_expect *e, const char **note,
                                const char **custody)
{
    static const unsigned long kw[] = {CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD, CKM_AES_KEY_WRAP_KWP};
    static const unsigned long ecb[] = {CKM_AES_ECB};
    bool by_ecb = (e->usage & HSM_USE_WRAP_ECB) != 0;
    const char *p;

    if (i->cls != HSM_CLASS_SECRET || i->type != HSM_KEYTYPE_AES)
        return "not an AES secret key";
    if (i->bits != 0 && i->bits != 256)
        return "not 256 bits";
    if ((p = check_locked(i, e, custody)) != NULL)
        return p;
    /* Extractable by design (delivered wrapped to members); sensitive and
     * an unreadable value keep it from leaving in the clear. */
    if (by_ecb) {
        if (!i->encrypt)
            return "CKA_ENCRYPT missing (RFC 3394 is built on CKM_AES_ECB here)";
        if ((p = usage_beyond(i, beyond_ecb,
                              U_WRAP | U_DECRYPT | U_SIGN | U_VERIFY | U_DERIVE | U_UNWRAP | U_SIGN_RECOVER)) != NULL)
            return p;
        return check_mechs(i, ecb, 1, !(e->missing & HSM_PROT_ALLOWED_MECHANISMS), note);
    }
    if (!i->wrap)
        return "CKA_WRAP missing";
    if ((p = usage_beyond(i, beyond_kw,
                          U_DECRYPT | U_ENCRYPT | U_SIGN | U_VERIFY | U_DERIVE | U_UNWRAP | U_SIGN_RECOVER)) != NULL)
        return p;
    return check_mechs(i, kw, GS_ARRAY_LEN(kw), !(e->missing & HSM_PROT_ALLOWED_MECHANISMS), note);
}

static const char *check_reject(const hsm_key_info *i, const gs_key_expect *e, const char **note,
                                const char **custody)
{
    static const unsigned long hmac[] = {CKM_SHA256_HMAC, CKM_SHA256_HMAC_GENERAL};
    const char *p;

    if (i->cls != HSM_CLASS_SECRET)
        return "not a secret key";
    if ((p = check_locked(i, e, custody)) != NULL || (p = check_never_leaves(i, e, custody)) != NULL)
        return p;
    if (!i->sign)
        return "CKA_SIGN (HMAC) missing";
    if ((p = usage_beyond(i, beyond_hmac, U_DECRYPT | U_ENCRYPT | U_WRAP | U_UNWRAP | U_DERIVE)) != NULL)
        return p;
    return check_mechs(i, hmac, GS_ARRAY_LEN(hmac), !(e->missing & HSM_PROT_ALLOWED_MECHANISMS), note);
}

static const char *check_seal(const hsm_key_info *i, const gs_key_expect *e, const char **note,
                              const char **custody)
{
    static const unsigned long oaep[] = {CKM_RSA_PKCS_OAEP};
    const char *p;

    if (i->cls != HSM_CLASS_PRIVATE || i->type != HSM_KEYTYPE_RSA)
        return "not an RSA private key";
    if ((p = check_locked(i, e, custody)) != NULL || (p = check_never_leaves(i, e, custody)) != NULL)
        return p;
    if (!i->decrypt)
        return "CKA_DECRYPT missing";
    if ((p = usage_beyond(i, beyond_decryption, U_UNWRAP | U_SIGN | U_SIGN_RECOVER | U_DERIVE | U_WRAP | U_ENCRYPT)) !=
        NULL)
        return p;
    return check_mechs(i, oaep, 1, !(e->missing & HSM_PROT_ALLOWED_MECHANISMS), note);
}

const char *gs_key_check(const hsm_key_info *info, const gs_key_expect *e, const char **note)
{
    return gs_key_check2(info, e, note, NULL);
}

const char *gs_key_check2(const hsm_key_info *info, const gs_key_expect *e, const char **note,
                          const char **custody)
{
    const char *dummy, *dummy2;

    if (note == NULL)
        note = &dummy;
    if (custody == NULL)
        custody = &dummy2;
    *note = "";
    *custody = "";
    switch (e->kind) {
    case GS_KIND_GROUP:
        return check_group(info, e, note, custody);
    case GS_KIND_CA:
        return check_ca(info, e, note, custody);
    case GS_KIND_SECRET:
        return check_secret(info, e, note, custody);
    case GS_KIND_REJECT:
        return check_reject(info, e, note, custody);
    case GS_KIND_SEAL:
        return check_seal(info, e, note, custody);
    }
    return "unknown key kind";
}
