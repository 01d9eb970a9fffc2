/*
 * test_policy.c: groupsrv/policy.c: a group's key policy chosen from the
 * capability sets the token matrix found (SoftHSM, NSS softokn,
 * opencryptoki, SoftHSM over p11-kit RPC, a decrypt-only smartcard), its
 * text forms, the usage it gives group keys, and the key checks with their
 * accepted weakenings. No token: capability sets and key attributes are
 * written out as the tokens reported them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "gs_error.h"
#include "policy.h"
#include "store.h"

#define T_CKM_RSA_PKCS 0x1UL
#define T_CKM_RSA_PKCS_OAEP 0x9UL
#define T_CKM_SHA256_RSA_PKCS 0x40UL
#define T_CKM_AES_ECB 0x1081UL
#define T_CKM_AES_KEY_WRAP 0x2109UL

static void mech(hsm_caps *c, hsm_mech m, unsigned flags)
{
    c->mech[m].present = true;
    c->mech[m].flags = flags;
}

/* What each token of the matrix reported (hsm_caps_get). */
enum tok { T_SOFTHSM, T_NSS, T_OCK, T_RPC, T_CARD, T_NONE };

static void caps_of(enum tok t, hsm_caps *c)
{
    memset(c, 0, sizeof(*c));
    if (t == T_NONE)
        return;
    mech(c, HSM_MECH_RSA_KEYGEN, HSM_MF_GENERATE);
    if (t == T_CARD) {
        mech(c, HSM_MECH_RSA_OAEP, HSM_MF_DECRYPT);
        mech(c, HSM_MECH_RSA_PKCS, HSM_MF_DECRYPT | HSM_MF_SIGN);
        c->max_sessions = 2;
        return;
    }
    mech(c, HSM_MECH_RSA_OAEP, HSM_MF_ENCRYPT | HSM_MF_DECRYPT | HSM_MF_WRAP | HSM_MF_UNWRAP);
    mech(c, HSM_MECH_RSA_PKCS, HSM_MF_DECRYPT | HSM_MF_SIGN);
    mech(c, HSM_MECH_AES_KEYGEN, HSM_MF_GENERATE);
    mech(c, HSM_MECH_AES_ECB, HSM_MF_ENCRYPT | HSM_MF_DECRYPT);
    mech(c, HSM_MECH_GENERIC_KEYGEN, HSM_MF_GENERATE);
    mech(c, HSM_MECH_SHA256_HMAC, HSM_MF_SIGN);
    if (t != T_OCK)
        mech(c, HSM_MECH_SHA256_RSA_PKCS, HSM_MF_SIGN);
    if (t == T_SOFTHSM || t == T_NSS)
        mech(c, HSM_MECH_AES_KEY_WRAP, HSM_MF_WRAP | HSM_MF_UNWRAP);
    c->allowed_mechanisms = t == T_OCK ? HSM_ATTR_NO : t == T_NSS ? HSM_ATTR_SESSION_ONLY : HSM_ATTR_YES;
    c->unwrap_template = t == T_OCK || t == T_RPC ? HSM_ATTR_NO : HSM_ATTR_YES;
    c->rewrap_on_token = true;
    c->secret_on_token = true;
    c->hmac_on_token = true;
}

static void test_text_forms(void **state)
{
    gs_policy p, q;
    char buf[128];
    unsigned m = 99;
    (void)state;

    assert_int_equal(gs_policy_parse("", &p), GS_OK);
    assert_int_equal(p.rewrap, GS_REWRAP_TOKEN);
    assert_int_equal(p.secrets, GS_SECRETS_TOKEN);
    assert_false(p.reject_sealed);
    assert_int_equal(gs_policy_parse(NULL, &p), GS_OK);
    p.rewrap = GS_REWRAP_SOFTWARE;
    p.secrets = GS_SECRETS_SEALED;
    p.reject_sealed = true;
    gs_policy_format(&p, buf, sizeof(buf));
    assert_string_equal(buf, "rewrap=software,secrets=sealed,reject=sealed");
    assert_int_equal(gs_policy_parse(buf, &q), GS_OK);
    assert_true(q.rewrap == p.rewrap && q.secrets == p.secrets && q.reject_sealed == p.reject_sealed);
    p.secrets = GS_SECRETS_TOKEN_ECB;
    p.rewrap = GS_REWRAP_TOKEN;
    gs_policy_format(&p, buf, sizeof(buf));
    assert_string_equal(buf, "rewrap=token,secrets=token-aes-ecb,reject=sealed");
    assert_int_equal(gs_policy_parse("rewrap=token,secrets=somewhere,reject=token", &q), GS_ERR_SCHEMA);
    /* As a group has it (check's policy line, discovery): an OAEP-only
     * group has no rejection key and a group without group-secret no
     * secret keys, though the record keeps the defaults (a migrated
     * group's "" reads as "reject=token"). */
    assert_int_equal(gs_policy_parse("", &q), GS_OK);
    gs_policy_group_format(&q, GS_METHODS_DEFAULT, false, buf, sizeof(buf));
    assert_string_equal(buf, "rewrap=token,secrets=token,reject=none");
    gs_policy_group_format(&q, GS_METHOD_TLS | GS_METHOD_RECIPIENT_KEY, false, buf, sizeof(buf));
    assert_string_equal(buf, "rewrap=token,secrets=none,reject=none");
    gs_policy_group_format(&q, GS_METHODS_DEFAULT, true, buf, sizeof(buf));
    assert_string_equal(buf, "rewrap=token,secrets=token,reject=token");
    gs_policy_group_format(&p, GS_METHODS_DEFAULT, true, buf, sizeof(buf));
    assert_string_equal(buf, "rewrap=token,secrets=token-aes-ecb,reject=sealed");
    assert_string_equal(gs_policy_reject_shown(&p, false), "none");
    assert_string_equal(gs_policy_secrets_shown(&p, GS_METHOD_TLS), "none");
    assert_int_equal(gs_policy_parse("rewrap=token", &q), GS_ERR_SCHEMA);

    gs_weak_format(0, buf, sizeof(buf));
    assert_string_equal(buf, "");
    gs_weak_format(HSM_PROT_ALL, buf, sizeof(buf));
    assert_string_equal(buf, "no-allowed-mechanisms,no-unwrap-template");
    assert_int_equal(gs_weak_parse(buf, &m), GS_OK);
    assert_int_equal(m, HSM_PROT_ALL);
    assert_int_equal(gs_weak_parse("no-unwrap-template", &m), GS_OK);
    assert_int_equal(m, HSM_PROT_UNWRAP_TEMPLATE);
    assert_int_equal(gs_weak_parse("", &m), GS_OK);
    assert_int_equal(m, 0);
    assert_int_equal(gs_weak_parse("no-sensitive", &m), GS_ERR_SCHEMA);
    assert_non_null(gs_weakening_text("software-rewrap"));
    assert_non_null(gs_weakening_text("no-unwrap-template"));
    assert_null(gs_weakening_text("whatever"));
}

/* The policy each token of the matrix gets, and its named weakenings. */
static void test_choose(void **state)
{
    static const struct {
        enum tok t;
        const char *policy, *weak;
        unsigned missing;
    } want[] = {
        {T_SOFTHSM, "rewrap=token,secrets=token,reject=token", "", 0},
        {T_NSS, "rewrap=token,secrets=token,reject=token", "", HSM_PROT_ALLOWED_MECHANISMS},
        {T_OCK, "rewrap=token,secrets=token-aes-ecb,reject=token", "secret-aes-ecb", HSM_PROT_ALL},
        {T_RPC, "rewrap=token,secrets=token-aes-ecb,reject=token", "secret-aes-ecb", HSM_PROT_UNWRAP_TEMPLATE},
        {T_CARD, "rewrap=software,secrets=sealed,reject=sealed", "software-rewrap secret-sealed reject-sealed",
         HSM_PROT_ALL},
    };
    const unsigned all = GS_METHODS_DEFAULT;
    (void)state;

    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        hsm_caps c;
        gs_policy p;
        const char *names[8];
        char buf[128] = "", joined[128] = "";
        size_t n;

        caps_of(want[i].t, &c);
        assert_int_equal(gs_policy_choose(&c, HSM_KEYTYPE_RSA, all, true, true, &p), GS_OK);
        gs_policy_format(&p, buf, sizeof(buf));
        assert_string_equal(buf, want[i].policy);
        n = gs_policy_weakenings(&p, all, true, names, 8);
        for (size_t k = 0, used = 0; k < n; k++)
            used += (size_t)snprintf(joined + used, sizeof(joined) - used, "%s%s", k ? " " : "", names[k]);
        assert_string_equal(joined, want[i].weak);
        assert_int_equal(gs_policy_caps_missing(&c), want[i].missing);
    }
}

static void test_choose_refusals_and_usage(void **state)
{
    hsm_caps c;
    gs_policy p;
    unsigned u;
    (void)state;

    /* No RSA-OAEP at all: no group keys here, and the detail says so. */
    caps_of(T_NONE, &c);
    assert_int_equal(gs_policy_choose(&c, HSM_KEYTYPE_RSA, GS_METHODS_DEFAULT, false, true, &p), GS_ERR_POLICY);
    assert_non_null(strstr(gs_err_detail(), "CKM_RSA_PKCS_OAEP"));

    /* A token without CKM_RSA_PKCS decryption (an OAEP-only policy):
     * a group that takes PKCS#1 v1.5 senders is refused, naming
     * --oaep-only; an --oaep-only group is made. */
    caps_of(T_SOFTHSM, &c);
    c.mech[HSM_MECH_RSA_PKCS].flags = HSM_MF_SIGN;
    assert_int_equal(gs_policy_choose(&c, HSM_KEYTYPE_RSA, GS_METHODS_DEFAULT, true, true, &p), GS_ERR_POLICY);
    assert_non_null(strstr(gs_err_detail(), "CKM_RSA_PKCS decryption"));
    assert_non_null(strstr(gs_err_detail(), "--oaep-only"));
    c.mech[HSM_MECH_RSA_PKCS].present = false;
    assert_int_equal(gs_policy_choose(&c, HSM_KEYTYPE_RSA, GS_METHODS_DEFAULT, true, false, &p), GS_ERR_POLICY);
    assert_int_equal(gs_policy_choose(&c, HSM_KEYTYPE_RSA, GS_METHODS_DEFAULT, false, true, &p), GS_OK);
    assert_int_equal(p.rewrap, GS_REWRAP_TOKEN);

    /* A card that cannot even make the seal key pair: refused for
     * group-secret, with what to do; fine without it. */
    caps_of(T_CARD, &c);
    c.mech[HSM_MECH_RSA_KEYGEN].present = false;
    assert_int_equal(gs_policy_choose(&c, HSM_KEYTYPE_RSA, GS_METHODS_DEFAULT, false, true, &p), GS_ERR_POLICY);
    assert_non_null(strstr(gs_err_detail(), "--methods"));
    assert_int_equal(gs_policy_choose(&c, HSM_KEYTYPE_RSA, GS_METHOD_TLS | GS_METHOD_RECIPIENT_KEY, false, true, &p),
                     GS_OK);
    assert_int_equal(p.rewrap, GS_REWRAP_SOFTWARE);
    assert_int_equal(p.secrets, GS_SECRETS_TOKEN); /* unused: no group-secret */

    /* An adopted key without CKA_UNWRAP on a token that could unwrap:
     * the software path. */
    caps_of(T_SOFTHSM, &c);
    assert_int_equal(gs_policy_choose(&c, HSM_KEYTYPE_RSA, GS_METHODS_DEFAULT, false, false, &p), GS_OK);
    assert_int_equal(p.rewrap, GS_REWRAP_SOFTWARE);

    /* Usage: unwrap for the token path, decrypt for tls, the software path
     * and secret keys outside C_WrapKey. */
    memset(&p, 0, sizeof(p));
    u = gs_policy_group_usage(&p, HSM_KEYTYPE_RSA, GS_METHOD_RECIPIENT_KEY | GS_METHOD_GROUP_SECRET, false);
    assert_int_equal(u, HSM_USE_UNWRAP);
    u = gs_policy_group_usage(&p, HSM_KEYTYPE_RSA, GS_METHODS_DEFAULT, true);
    assert_int_equal(u, HSM_USE_UNWRAP | HSM_USE_DECRYPT | HSM_USE_PKCS1V15);
    p.secrets = GS_SECRETS_TOKEN_ECB;
    u = gs_policy_group_usage(&p, HSM_KEYTYPE_RSA, GS_METHOD_RECIPIENT_KEY | GS_METHOD_GROUP_SECRET, false);
    assert_int_equal(u, HSM_USE_UNWRAP | HSM_USE_DECRYPT);
    u = gs_policy_group_usage(&p, HSM_KEYTYPE_RSA, GS_METHOD_RECIPIENT_KEY, false);
    assert_int_equal(u, HSM_USE_UNWRAP);
    p.rewrap = GS_REWRAP_SOFTWARE;
    u = gs_policy_group_usage(&p, HSM_KEYTYPE_RSA, GS_METHOD_RECIPIENT_KEY, false);
    assert_int_equal(u, HSM_USE_DECRYPT);
    assert_int_equal(gs_policy_group_usage(&p, HSM_KEYTYPE_EC, GS_METHODS_DEFAULT, false), HSM_USE_DERIVE);
}

/* A sound RSA group key as generated on a token with every protection. */
static void sound_group_key(hsm_key_info *i)
{
    memset(i, 0, sizeof(*i));
    i->cls = HSM_CLASS_PRIVATE;
    i->type = HSM_KEYTYPE_RSA;
    i->bits = 2048;
    i->token = i->private_ = i->sensitive = i->always_sensitive = i->never_extractable = true;
    i->decrypt = i->unwrap = true;
    i->has_unwrap_template = i->unwrap_template_sensitive = true;
    i->allowed_mechanisms[0] = T_CKM_RSA_PKCS_OAEP;
    i->n_allowed_mechanisms = 1;
}

static void test_key_checks(void **state)
{
    hsm_key_info i;
    gs_key_expect e;
    const char *note;
    (void)state;

    memset(&e, 0, sizeof(e));
    e.kind = GS_KIND_GROUP;
    e.type = HSM_KEYTYPE_RSA;
    e.bits = 2048;
    e.usage = HSM_USE_UNWRAP | HSM_USE_DECRYPT;
    sound_group_key(&i);
    assert_null(gs_key_check(&i, &e, &note));
    assert_string_equal(note, "");

    /* Never given up, whatever was accepted. */
    e.missing = HSM_PROT_ALL;
    i.extractable = true;
    assert_string_equal(gs_key_check(&i, &e, NULL), "CKA_EXTRACTABLE is true");
    sound_group_key(&i);
    i.sensitive = false;
    assert_string_equal(gs_key_check(&i, &e, NULL), "CKA_SENSITIVE is false");
    sound_group_key(&i);
    i.sign = true;
    assert_non_null(strstr(gs_key_check(&i, &e, NULL), "CKA_SIGN"));
    /* The attribute that is set is the one named: SoftHSM sets
     * CKA_SIGN_RECOVER by default (p11tool leaves it), and pkcs11-tool
     * lists it as nothing; "CKA_SIGN allowed" named one the security team
     * saw unset. */
    sound_group_key(&i);
    i.sign_recover = true;
    assert_string_equal(gs_key_check(&i, &e, NULL), "CKA_SIGN_RECOVER allowed (policy: no signing)");
    /* ...with what works: no stock tool asks for it false. */
    assert_non_null(strstr(gs_adopt_custody_hint(gs_key_check(&i, &e, NULL)), "cannot ask for CKA_SIGN_RECOVER "
                                                                               "false"));
    sound_group_key(&i);
    i.encrypt = true;
    assert_string_equal(gs_key_check(&i, &e, NULL), "wrap/encrypt/verify usage set (CKA_ENCRYPT)");
    {
        /* A CA key made by pkcs11-tool or p11tool on SoftHSM: sign, and
         * the module's defaults for the rest. */
        gs_key_expect ca;
        memset(&ca, 0, sizeof(ca));
        ca.kind = GS_KIND_CA;
        ca.missing = HSM_PROT_ALL;
        sound_group_key(&i);
        i.sign = true;
        i.decrypt = false;
        i.n_allowed_mechanisms = 0;
        assert_string_equal(gs_key_check(&i, &ca, NULL), "usage beyond signing set (CKA_UNWRAP)");
        i.unwrap = false;
        i.sign_recover = true;
        assert_string_equal(gs_key_check(&i, &ca, NULL), "usage beyond signing set (CKA_SIGN_RECOVER)");
        i.sign_recover = false;
        assert_null(gs_key_check(&i, &ca, NULL));
    }

    /* A protection recorded as present must be there... */
    e.missing = 0;
    sound_group_key(&i);
    i.n_allowed_mechanisms = 0;
    assert_non_null(strstr(gs_key_check(&i, &e, NULL), "CKA_ALLOWED_MECHANISMS absent"));
    sound_group_key(&i);
    i.has_unwrap_template = false;
    assert_non_null(strstr(gs_key_check(&i, &e, NULL), "CKA_UNWRAP_TEMPLATE"));
    /* ...unless accepted as a weakening when the key was made... */
    e.missing = HSM_PROT_ALL;
    assert_null(gs_key_check(&i, &e, NULL));
    /* ...or not readable through this module (noted, not a problem). */
    e.missing = 0;
    sound_group_key(&i);
    i.has_unwrap_template = false;
    i.unwrap_template_unknown = true;
    assert_null(gs_key_check(&i, &e, &note));
    assert_non_null(strstr(note, "not verified"));
    /* A mechanism outside the policy is always a problem. */
    sound_group_key(&i);
    i.allowed_mechanisms[1] = T_CKM_RSA_PKCS;
    i.n_allowed_mechanisms = 2;
    assert_non_null(strstr(gs_key_check(&i, &e, NULL), "outside the policy"));
    e.allow_pkcs1v15 = true;
    assert_null(gs_key_check(&i, &e, NULL));
    /* A key adopted for a group taking PKCS#1 v1.5 (--use-key): its list
     * must name CKM_RSA_PKCS, with which v1.5 is decrypted; RSA-OAEP
     * alone would refuse every v1.5 sender's message. A key already
     * serving is not held to it, nor a token that keeps no list. */
    e.need_pkcs1v15 = true;
    assert_null(gs_key_check(&i, &e, NULL));
    sound_group_key(&i);
    assert_string_equal(gs_key_check(&i, &e, NULL),
                        "CKA_ALLOWED_MECHANISMS lacks RSA-PKCS, which the group's PKCS#1 v1.5 senders need");
    e.need_pkcs1v15 = false;
    assert_null(gs_key_check(&i, &e, NULL));
    e.need_pkcs1v15 = true;
    e.missing = HSM_PROT_ALLOWED_MECHANISMS;
    i.n_allowed_mechanisms = 0;
    assert_null(gs_key_check(&i, &e, NULL));
    e.missing = 0;
    e.need_pkcs1v15 = false;

    /* The software path: decrypt, never unwrap. */
    e.usage = HSM_USE_DECRYPT;
    e.allow_pkcs1v15 = false;
    sound_group_key(&i);
    assert_non_null(strstr(gs_key_check(&i, &e, NULL), "CKA_UNWRAP set"));
    i.unwrap = false;
    i.has_unwrap_template = false;
    assert_null(gs_key_check(&i, &e, NULL));

    /* Secret keys: AES key wrap, or CKM_AES_ECB only. */
    memset(&e, 0, sizeof(e));
    e.kind = GS_KIND_SECRET;
    e.usage = HSM_USE_WRAP_ECB;
    memset(&i, 0, sizeof(i));
    i.cls = HSM_CLASS_SECRET;
    i.type = HSM_KEYTYPE_AES;
    i.bits = 256;
    i.token = i.private_ = i.sensitive = i.always_sensitive = i.extractable = true;
    i.encrypt = true;
    i.allowed_mechanisms[0] = T_CKM_AES_ECB;
    i.n_allowed_mechanisms = 1;
    assert_null(gs_key_check(&i, &e, NULL));
    i.allowed_mechanisms[0] = T_CKM_AES_KEY_WRAP;
    assert_non_null(strstr(gs_key_check(&i, &e, NULL), "outside the policy"));
    e.usage = HSM_USE_WRAP;
    assert_non_null(strstr(gs_key_check(&i, &e, NULL), "CKA_WRAP missing"));
    i.encrypt = false;
    i.wrap = true;
    assert_null(gs_key_check(&i, &e, NULL));
    i.value_readable = true;
    assert_string_equal(gs_key_check(&i, &e, NULL), "key value is readable");

    /* The seal key pair: decrypt only. */
    memset(&e, 0, sizeof(e));
    e.kind = GS_KIND_SEAL;
    e.missing = HSM_PROT_ALLOWED_MECHANISMS;
    sound_group_key(&i);
    i.unwrap = false;
    assert_null(gs_key_check(&i, &e, NULL));
    i.sign = true;
    assert_non_null(strstr(gs_key_check(&i, &e, NULL), "beyond decryption"));

    /* The CA: sign only, CKM_RSA_PKCS allowed (a DigestInfo signed on tokens
     * without CKM_SHA256_RSA_PKCS). */
    memset(&e, 0, sizeof(e));
    e.kind = GS_KIND_CA;
    sound_group_key(&i);
    i.decrypt = i.unwrap = false;
    i.sign = true;
    i.allowed_mechanisms[0] = T_CKM_RSA_PKCS;
    assert_null(gs_key_check(&i, &e, NULL));
    i.allowed_mechanisms[0] = T_CKM_SHA256_RSA_PKCS;
    assert_null(gs_key_check(&i, &e, NULL));
    i.decrypt = true;
    assert_non_null(strstr(gs_key_check(&i, &e, NULL), "beyond signing"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_forms),
        cmocka_unit_test(test_choose),
        cmocka_unit_test(test_choose_refusals_and_usage),
        cmocka_unit_test(test_key_checks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
