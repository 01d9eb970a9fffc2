/*
 * policy.h: a group's key policy and the attribute checks of every key
 * groupsrv keeps on a token.
 *
 * The policy is the strongest the token supports (hsm_caps_get), chosen at
 * `group create` and recorded in the store, so that every later use, and
 * the key audit of `groupsrv check` and `serve`, follows what was decided
 * rather than what a token happens to report today. What the token could
 * not do is a named, accepted weakening, shown by `check`, GET
 * /v1/groups/{g} and the docs; sensitive and never extractable are never
 * given up. Names (stable, they appear in JSON and the store):
 *
 *   group level (gs_policy):
 *     software-rewrap        content keys are decrypted into locked server memory for
 *                            recipient-key, membership-cert, group-secret and rewrap
 *     secret-aes-ecb         group secret keys wrap with RFC 3394/5649 built on the token's
 *                            CKM_AES_ECB: the content key passes through locked memory
 *     secret-sealed          group secret keys live outside the token, sealed to a token key
 *                            pair, opened into locked memory for each use
 *     reject-sealed          the implicit-rejection key, sealed the same way
 *   key level (recorded per key):
 *     no-allowed-mechanisms  no CKA_ALLOWED_MECHANISMS on the key
 *     no-unwrap-template     no CKA_UNWRAP_TEMPLATE on the key
 *
 * Ownership: nothing here allocates; strings returned are static.
 */
#ifndef GS_POLICY_H
#define GS_POLICY_H

#include <stdbool.h>
#include <stddef.h>

#include "gs_error.h"
#include "hsm.h"

typedef enum gs_rewrap_path {
    GS_REWRAP_TOKEN = 0,   /* C_UnwrapKey into a session key, C_WrapKey out: never in memory */
    GS_REWRAP_SOFTWARE,    /* C_Decrypt into locked memory, re-wrapped with OpenSSL */
} gs_rewrap_path;

typedef enum gs_secret_store {
    GS_SECRETS_TOKEN = 0,  /* AES keys on the token, CKM_AES_KEY_WRAP(_PAD) */
    GS_SECRETS_TOKEN_ECB,  /* AES keys on the token, RFC 3394/5649 on CKM_AES_ECB */
    GS_SECRETS_SEALED,     /* sealed to a token key pair (no secret keys or no wrap on the token) */
} gs_secret_store;

typedef struct gs_policy {
    gs_rewrap_path rewrap;
    gs_secret_store secrets;
    bool reject_sealed;
} gs_policy;

/* "" (a database from before the policy was recorded) is everything on
 * the token. Else "rewrap=token|software,secrets=token|token-aes-ecb|sealed,
 * reject=token|sealed", as gs_policy_format writes it. GS_ERR_SCHEMA for
 * anything else (the store is damaged). */
gs_err gs_policy_parse(const char *text, gs_policy *out);
void gs_policy_format(const gs_policy *p, char *buf, size_t bufsize);
const char *gs_rewrap_name(gs_rewrap_path r);      /* "token", "software" */
const char *gs_secrets_name(gs_secret_store s);    /* "token", "token-aes-ecb", "sealed" */

/* The policy as the group has it, for people and clients (check's policy
 * line, discovery's key_policy, group show): the record keeps
 * "secrets=token" for a group without group-secret and "reject=token" for
 * one that refuses PKCS#1 v1.5 (the defaults gs_policy_choose leaves, and
 * what a database from before schema 2 reads as), yet such a group has no
 * secret keys or no rejection key at all: those read "none" here. */
const char *gs_policy_secrets_shown(const gs_policy *p, unsigned methods);
const char *gs_policy_reject_shown(const gs_policy *p, bool allow_pkcs1v15);
/* "rewrap=R,secrets=S,reject=J" with the two above. */
void gs_policy_group_format(const gs_policy *p, unsigned methods, bool allow_pkcs1v15, char *buf, size_t bufsize);

/* The group-level weakenings of p for a group with these methods, as
 * names (see above) into names[0..cap); returns how many. */
size_t gs_policy_weakenings(const gs_policy *p, unsigned methods, bool allow_pkcs1v15, const char **names,
                            size_t cap);
/* One line on what a weakening means (for `check`), or NULL if unknown. */
const char *gs_weakening_text(const char *name);

/* Key-level weakenings: the protections (enum hsm_protection) a key lacks,
 * as text ("no-allowed-mechanisms,no-unwrap-template"; "" for none) and
 * back. Unknown names in the store are GS_ERR_SCHEMA. */
void gs_weak_format(unsigned missing, char *buf, size_t bufsize);
gs_err gs_weak_parse(const char *text, unsigned *missing);

/* The strongest policy this token supports for a new group (with a key
 * generated on the token; `adopted_unwrap` false for an adopted key
 * without CKA_UNWRAP, which forces the software path). GS_ERR_POLICY,
 * with a detail naming what is missing and what to do, for a token that
 * cannot hold such a group at all (no RSA-OAEP decryption or unwrapping,
 * no CKM_RSA_PKCS decryption for a group taking PKCS#1 v1.5): the token's
 * lasting answer, not a failure of a moment (a request for such a group
 * is 400, never 503 "try again"). */
gs_err gs_policy_choose(const hsm_caps *caps, hsm_key_type type, unsigned methods, bool allow_pkcs1v15,
                        bool adopted_unwrap, gs_policy *out);

/* The protections (enum hsm_protection) this token cannot store, by its
 * capability probe: what a key made or adopted on it may lack. */
unsigned gs_policy_caps_missing(const hsm_caps *caps);

/* The hsm usage bits a group key version must have, and nothing more:
 * CKA_UNWRAP for the token path; CKA_DECRYPT for tls, the software path,
 * and secret keys that wrap outside C_WrapKey (token-aes-ecb, sealed). */
unsigned gs_policy_group_usage(const gs_policy *p, hsm_key_type type, unsigned methods, bool allow_pkcs1v15);

/* ---- key attribute checks ---------------------------------------------------- */

typedef enum gs_key_kind {
    GS_KIND_GROUP = 1,   /* a group key version (RSA or EC) */
    GS_KIND_CA,          /* the local CA (signing) */
    GS_KIND_SECRET,      /* a group secret key on the token */
    GS_KIND_REJECT,      /* the implicit-rejection HMAC key */
    GS_KIND_SEAL,        /* a key pair that sealed secrets open with (decrypt only) */
} gs_key_kind;

/* What a key must look like. */
typedef struct gs_key_expect {
    gs_key_kind kind;
    hsm_key_type type;   /* group keys: RSA or EC */
    unsigned bits;       /* group keys: the size of the group's key spec; 0 = any */
    unsigned usage;      /* group and secret keys: exactly these hsm usage bits */
    bool allow_pkcs1v15; /* group keys: CKM_RSA_PKCS may be allowed too */
    unsigned missing;    /* accepted weakenings (protections it may lack) */
    bool replicable;     /* a replicable group's (or CA's) key: see gs_key_check2 */
    bool decrypt_optional; /* group keys: CKA_DECRYPT is wanted only for PKCS#1 v1.5,
                              and the key is older than that (it may lack it) */
    bool need_pkcs1v15;  /* RSA group keys adopted for a group taking PKCS#1 v1.5: a
                            CKA_ALLOWED_MECHANISMS list must name CKM_RSA_PKCS (v1.5
                            is decrypted with it); not asked of keys already serving */
} gs_key_expect;

/* Checks a key's attributes (read with hsm_key_get_info) against e.
 * Returns NULL when sound, else the first problem, e.g. "CKA_EXTRACTABLE
 * is true". *note (may be NULL) gets what could not be verified here
 * (a protection this module cannot read back), else "". */
const char *gs_key_check(const hsm_key_info *info, const gs_key_expect *e, const char **note);
/* Whether an RSA key's CKA_ALLOWED_MECHANISMS, as read, leaves out
 * CKM_RSA_PKCS (so the token refuses it PKCS#1 v1.5 decryption); false
 * when the list is absent or longer than was read. */
bool gs_key_refuses_pkcs1v15(const hsm_key_info *info);
/* The same; with e->replicable the key may also be the original of a
 * replicable key (sensitive, always sensitive, extractable only with
 * CKA_WRAP_WITH_TRUSTED) or a copy the key ceremony unwrapped (sensitive,
 * not extractable; PKCS#11 makes CKA_ALWAYS_SENSITIVE and
 * CKA_NEVER_EXTRACTABLE false on every unwrapped key). Every other
 * extractable key is still refused, and the protections (usage, allowed
 * mechanisms, unwrap template) are checked as for any key. *custody (may
 * be NULL) names which: "replicable: leaves only under trusted wrap",
 * "imported copy", else "". */
const char *gs_key_check2(const hsm_key_info *info, const gs_key_expect *e, const char **note,
                          const char **custody);
/* For a key adopted with --use-key that gs_key_check refused for its
 * custody, or for a CKA_SIGN_RECOVER no stock tool can ask for false
 * (problem as returned): how to make one that passes with the
 * stock tool, as text beginning "; " (static), or "" when there is
 * nothing to add. pkcs11-tool --keypairgen asks for CKA_SENSITIVE with
 * --sensitive but can never ask for CKA_EXTRACTABLE false: on a token
 * whose default is extractable (NSS softokn, opencryptoki) only a key
 * groupsrv generates (--key) passes. */
const char *gs_adopt_custody_hint(const char *problem);
/* Only the rules of custody of gs_key_check2 (a token object, private,
 * sensitive, value unreadable, always sensitive, never extractable; a
 * replicable key's original or copy as above), without usage: for a key
 * that is about to be used (the CA key at load). NULL or the problem;
 * *custody (may be NULL) as for gs_key_check2. */
const char *gs_key_custody_problem(const hsm_key_info *info, bool replicable, const char **custody);

#endif
