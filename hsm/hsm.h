/*
 * hsm.h: the PKCS#11 layer. The only place in groupsrv that calls PKCS#11.
 *
 * The API is deliberately narrow: whole operations ("unwrap this key
 * inside the token and wrap it out to that public key"), never a generic
 * "call C_X". Every argument is plain bytes, so the layer can later move
 * behind a process boundary (as OpenSSH's ssh-pkcs11-helper) without
 * changing callers. Keys are named by PKCS#11 URI (RFC 7512) or by label.
 *
 * Threads: an hsm_ctx is shared by all threads; each call borrows a session
 * from an internal pool, so concurrent callers never share a session.
 * The layer recovers by itself from a closed or invalid session, a lost
 * login, a token that was removed and came back, and a module whose
 * connection broke (persistent CKR_DEVICE_ERROR or
 * CKR_CRYPTOKI_NOT_INITIALIZED: it is finalized and initialised again, as
 * network-HSM client libraries and p11-kit's RPC client need).
 *
 * Tokens differ: hsm/ learns what the token can do (hsm_caps_get) and
 * chooses by it where a choice keeps keys on the token (CA signatures over
 * a DigestInfo without CKM_SHA256_RSA_PKCS, RFC 3394 on CKM_AES_ECB without
 * AES key wrap, a context-specific login for CKA_ALWAYS_AUTHENTICATE keys,
 * the session limit of C_GetTokenInfo). What weakens a key's protection
 * is never chosen here: callers ask for it (hsm_generate_*_best,
 * HSM_REWRAP_SOFTWARE, sealed secret keys) and record it.
 *
 * Ownership: functions named x_new or x_open return objects the caller frees
 * with the matching x_free or x_close (NULL is fine). Output buffers passed as
 * (out, outcap, &outlen) are caller-owned; secrets written there must be
 * wiped by the caller (OPENSSL_cleanse). On failure outputs are cleared.
 *
 * Never fork after hsm_open() (PKCS#11 modules do not survive fork).
 */
#ifndef GS_HSM_H
#define GS_HSM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum hsm_err {
    HSM_OK = 0,
    HSM_ERR_NOMEM,
    HSM_ERR_ARGS,               /* caller passed something invalid */
    HSM_ERR_MODULE,             /* module could not be loaded or initialised */
    HSM_ERR_URI,                /* malformed PKCS#11 URI */
    HSM_ERR_TOKEN_NOT_FOUND,    /* no token, or more than one, matches the URI */
    HSM_ERR_TOKEN_ABSENT,       /* CKR_DEVICE_REMOVED / CKR_TOKEN_NOT_PRESENT: try later */
    HSM_ERR_PIN_SOURCE,         /* PIN source unreadable, empty or too open */
    HSM_ERR_PIN_INCORRECT,      /* CKR_PIN_INCORRECT (remembered: never retried) */
    HSM_ERR_PIN_LOCKED,         /* CKR_PIN_LOCKED */
    HSM_ERR_NOT_LOGGED_IN,      /* login lost and could not be restored */
    HSM_ERR_SESSION,            /* session invalid/closed and recovery failed */
    HSM_ERR_KEY_NOT_FOUND,
    HSM_ERR_KEY_AMBIGUOUS,      /* the URI/label matches more than one key */
    HSM_ERR_KEY_EXISTS,         /* creating a key whose label/id is taken */
    HSM_ERR_MECHANISM,          /* the token does not support this mechanism/parameters, or
                                   this function (CKR_FUNCTION_NOT_SUPPORTED: not implemented,
                                   or forbidden by the token's policy) */
    HSM_ERR_KEY_POLICY,         /* the key's attributes forbid this use */
    HSM_ERR_DECRYPT,            /* decryption/unwrap failed (bad ciphertext or wrong key) */
    HSM_ERR_BUFFER,             /* output buffer too small */
    HSM_ERR_PUBLIC_KEY,         /* a public key given to us is malformed/unsupported */
    HSM_ERR_DEVICE,             /* CKR_DEVICE_ERROR, CKR_GENERAL_ERROR, ...; also a module
                                   that is down (re-initialising it failed): try later */
    HSM_ERR_PKCS11,             /* any other CK_RV */
    HSM_ERR_WRITE_PROTECTED,    /* CKR_SESSION_READ_ONLY, CKR_TOKEN_WRITE_PROTECTED: the token
                                   keeps no new object (a read-only token or store, flagged
                                   CKF_WRITE_PROTECTED or not): retrying does not help */
    HSM_ERR_TOO_MANY_OBJECTS,   /* a listing met more token objects than it reads (1,000,000):
                                   answered as an error, never with part of the token */
} hsm_err;

/* Static text for an error code. */
const char *hsm_strerror(hsm_err err);
/* Per-thread detail of the last failure in this thread, e.g.
 * "C_Decrypt: CKR_MECHANISM_PARAM_INVALID"; "" when none. Never secret.
 * Where the token refused something we asked for, the detail names it
 * (the mechanism or attribute, the CKR_ name) and what to do. */
const char *hsm_last_error_detail(void);
/* Whether this thread's last failure was a PKCS#11 URI (a key URI, or the
 * token URI's module attributes) naming another token, slot or module than
 * the one in use: a key found by it may well be on the token. Said apart
 * from the detail, whose words may change. */
bool hsm_last_error_uri_elsewhere(void);

typedef struct hsm_ctx hsm_ctx; /* a loaded module, a token, a login, a session pool */
typedef struct hsm_key hsm_key; /* a reference to one key object on the token */

/* The pin source of a token with its own PIN pad or PED (see hsm_config). */
#define HSM_PIN_SOURCE_PINPAD "pinpad"

typedef struct hsm_config {
    const char *module;      /* path to a .so, or a p11-kit module name */
    const char *token_uri;   /* "pkcs11:token=groupsrv" (RFC 7512; token attributes only) */
    const char *pin_source;  /* "env:NAME", "file:PATH" or PATH; NULL = no login;
                                HSM_PIN_SOURCE_PINPAD: C_Login with no PIN, the person
                                enters it on the token's own PIN pad (only on a token with
                                CKF_PROTECTED_AUTHENTICATION_PATH, else HSM_ERR_PIN_SOURCE) */
    unsigned max_sessions;   /* pool size; 0 = default (8), at most 1024; lowered to the
                                token's ulMaxSessionCount when that is smaller */
    const char *init_args;   /* module by path only: the string C_Initialize gets as
                                pReserved (NSS softokn: "configdir='sql:DIR' certPrefix=''
                                keyPrefix='' secmod='secmod.db' flags="); NULL = none.
                                At most 1024 bytes. Copied. */
    const char *refusal_path; /* a file where a PIN the token refused (CKR_PIN_INCORRECT) is
                                 remembered across processes (refusal.c), in a directory this
                                 program writes: hsm_open and hsm_reload_pin then refuse, without
                                 C_Login, the same PIN source on the same token until the source
                                 changes (a file written anew, another env: value); a login
                                 removes it. NULL = remembered in this process only. Copied. */
} hsm_config;

/* Loads the module (p11_kit_module_load for a path, else a p11-kit config
 * module by name), C_Initialize, finds the token and logs in as user.
 * A module by path gets CKF_OS_LOCKING_OK and init_args; a module by name
 * gets NULL arguments, so that p11-kit applies its module file's
 * x-init-reserved (init_args with a name is HSM_ERR_ARGS).
 * The PIN is read from pin_source, kept (wiped on close)
 * for re-login after token loss, unless it was rejected.
 * Errors: HSM_ERR_MODULE (detail says what to do for CKR_ARGUMENTS_BAD:
 * the module wants init arguments), _URI, _TOKEN_NOT_FOUND, _PIN_SOURCE,
 * _PIN_INCORRECT (also, without calling C_Login, for a PIN this process
 * already saw rejected by the same token, or one refusal_path records),
 * _PIN_LOCKED, _DEVICE.
 * A token not found, or a device error while finding it and logging in,
 * is tried again from C_Initialize on, four times over about a second
 * (SoftHSM read while another process writes its token fails so); a PIN
 * or module error is returned at once.
 * A module given as a path is loaded directly (p11-kit "managed", so two
 * contexts in one process each get their own instance); a name is looked
 * up in p11-kit's module registry (pkcs11-config/README.md). */
hsm_err hsm_open(const hsm_config *cfg, hsm_ctx **out);
/* Checks a token URI as a configuration value, without a module: it must
 * parse (RFC 7512), name a token by token attributes only (token,
 * manufacturer, model, serial; an object's or slot's attribute would make
 * it match no token), and carry no PIN (pin-value, pin-source: PINs come
 * from a pin source only). HSM_OK, or HSM_ERR_URI with the detail saying
 * which. */
hsm_err hsm_token_uri_check(const char *uri);
void hsm_close(hsm_ctx *ctx);

/* Reads the PIN from pin_source again (a file; an env: source is read once
 * at hsm_open and gone since, so it is left as it is: HSM_OK) and uses it
 * for every later login, for an operator who changed the token's PIN and
 * the file and sends SIGHUP instead of restarting. A PIN the token
 * rejected before (in this process, or recorded at refusal_path) stays
 * refused and is never sent: HSM_ERR_PIN_INCORRECT, the PIN in use unchanged. A new PIN clears an earlier rejection, so a
 * context that stopped logging in logs in again at its next operation.
 * No token call is made here. Errors: HSM_ERR_PIN_SOURCE (unreadable,
 * empty, too open: the PIN in use unchanged), _ARGS (no login wanted). */
hsm_err hsm_reload_pin(hsm_ctx *ctx, const char *pin_source);

/* Opens sessions into the pool now, up to `want` (and the pool's size),
 * each logged in, and leaves them idle: a session limit the token does not
 * report in C_GetTokenInfo (it answers CKR_SESSION_COUNT instead: network
 * HSM client quotas, cards shared with other applications) is found at
 * start rather than under load. The pool is lowered to such a limit here
 * and whenever an operation meets it later (operations then wait for a
 * pooled session, they do not fail). *got: the sessions the pool may hold
 * now, want or fewer. HSM_OK when at least one session is open, else the
 * error of the first attempt (HSM_ERR_SESSION, detail "the token has no
 * session free ..." when other applications hold them all). */
hsm_err hsm_sessions_fill(hsm_ctx *ctx, unsigned want, unsigned *got);

/* Token reachable and logged in (C_GetSessionInfo on a pooled session). */
hsm_err hsm_ping(hsm_ctx *ctx);

/* Finalizes and initialises the module again now, for a caller that knows
 * an object must be on the token and the token says it is not: a module
 * may lose its token's objects under it and find them only when
 * initialised again (SoftHSM keeps a token whose directory vanished empty
 * until then). Sessions and object handles of the old instance are
 * forgotten; the token is looked up and logged in again on next use. The
 * caller limits how often (every operation waits meanwhile). Returns
 * HSM_OK, or HSM_ERR_DEVICE when the module did not initialise (operations
 * then try again, as for any module that is down). */
hsm_err hsm_module_reinit(hsm_ctx *ctx);

typedef struct hsm_token_info {
    char label[33], manufacturer[33], model[17], serial[17];
    unsigned long sessions_in_use, sessions_idle;
    bool write_protected; /* CKF_WRITE_PROTECTED: no token object can be made or destroyed */
} hsm_token_info;
hsm_err hsm_token_info_get(hsm_ctx *ctx, hsm_token_info *out);

/* Is this mechanism (and, for OAEP, this hash) usable on the token? Used by
 * callers to choose, and to produce the clear "unsupported" error early. */
typedef enum hsm_oaep_hash { HSM_OAEP_SHA1 = 1, HSM_OAEP_SHA256 } hsm_oaep_hash;

/* ---- what the token can do ----------------------------------------- */

/* The mechanisms groupsrv may use, each probed with C_GetMechanismList and
 * C_GetMechanismInfo. */
typedef enum hsm_mech {
    HSM_MECH_RSA_KEYGEN = 0,   /* CKM_RSA_PKCS_KEY_PAIR_GEN */
    HSM_MECH_RSA_OAEP,         /* CKM_RSA_PKCS_OAEP: decrypt, unwrap, wrap */
    HSM_MECH_RSA_PKCS,         /* CKM_RSA_PKCS: v1.5 decrypt, CA signatures over a DigestInfo */
    HSM_MECH_SHA256_RSA_PKCS,  /* CKM_SHA256_RSA_PKCS: CA signatures */
    HSM_MECH_EC_KEYGEN,        /* CKM_EC_KEY_PAIR_GEN */
    HSM_MECH_ECDSA,            /* CKM_ECDSA */
    HSM_MECH_ECDH,             /* CKM_ECDH1_DERIVE */
    HSM_MECH_AES_KEYGEN,       /* CKM_AES_KEY_GEN: group secret keys */
    HSM_MECH_AES_KEY_WRAP,     /* CKM_AES_KEY_WRAP (RFC 3394) */
    HSM_MECH_AES_KEY_WRAP_PAD, /* CKM_AES_KEY_WRAP_PAD (RFC 5649) */
    HSM_MECH_AES_ECB,          /* CKM_AES_ECB: RFC 3394/5649 built on it */
    HSM_MECH_GENERIC_KEYGEN,   /* CKM_GENERIC_SECRET_KEY_GEN: the rejection key */
    HSM_MECH_SHA256_HMAC,      /* CKM_SHA256_HMAC: implicit rejection */
    HSM_MECH_COUNT_
} hsm_mech;

/* What a mechanism may do (from CK_MECHANISM_INFO.flags). */
enum hsm_mech_flag {
    HSM_MF_ENCRYPT = 1u << 0,
    HSM_MF_DECRYPT = 1u << 1,
    HSM_MF_SIGN = 1u << 2,
    HSM_MF_WRAP = 1u << 3,
    HSM_MF_UNWRAP = 1u << 4,
    HSM_MF_DERIVE = 1u << 5,
    HSM_MF_GENERATE = 1u << 6,     /* key or key pair generation */
};

/* The optional key protections (attributes a token may not store). */
enum hsm_protection {
    HSM_PROT_ALLOWED_MECHANISMS = 1u << 0, /* CKA_ALLOWED_MECHANISMS */
    HSM_PROT_UNWRAP_TEMPLATE = 1u << 1,    /* CKA_UNWRAP_TEMPLATE forcing unwrapped keys sensitive */
};
#define HSM_PROT_ALL (HSM_PROT_ALLOWED_MECHANISMS | HSM_PROT_UNWRAP_TEMPLATE)

typedef enum hsm_attr_support {
    HSM_ATTR_NO = 0,        /* refused (or the trial could not be made) */
    HSM_ATTR_YES,           /* stored and read back, on session and token objects */
    HSM_ATTR_SESSION_ONLY,  /* stored on session objects; key generation (token
                               objects) refused it (NSS softokn: CKA_ALLOWED_MECHANISMS) */
} hsm_attr_support;

/* Probes in a row a failure must repeat in to count as the token's answer (hsm_caps). */
#define HSM_PROBE_TRIES 3

typedef struct hsm_caps {
    /* C_GetTokenInfo */
    unsigned long max_sessions;     /* ulMaxSessionCount; 0 = no limit reported */
    bool login_required;            /* CKF_LOGIN_REQUIRED */
    bool protected_auth_path;       /* CKF_PROTECTED_AUTHENTICATION_PATH (PIN pad) */
    bool write_protected;           /* CKF_WRITE_PROTECTED: read-only sessions; serves, makes no keys */
    bool pin_to_be_changed;         /* CKF_USER_PIN_TO_BE_CHANGED: the token wants a new user PIN
                                       (some then refuse private-key operations: CKR_PIN_EXPIRED) */
    bool pin_count_low;             /* CKF_USER_PIN_COUNT_LOW: wrong user PINs were tried */
    /* C_GetMechanismList / C_GetMechanismInfo */
    struct {
        bool present;
        unsigned flags;             /* enum hsm_mech_flag */
        unsigned long min_bits, max_bits;
        /* Listed, but C_GetMechanismInfo failed with info_rv
         * (CKR_GENERAL_ERROR, CKR_FUNCTION_FAILED) in HSM_PROBE_TRIES
         * probes in a row: counted as absent (present false). 0: answered. */
        unsigned long info_rv;
    } mech[HSM_MECH_COUNT_];
    /* Attributes, by a trial on a session object (created, read back,
     * destroyed), corrected by what key generation then showed. */
    hsm_attr_support allowed_mechanisms, unwrap_template;
    char allowed_mechanisms_why[256], unwrap_template_why[256]; /* the refusal, "" if none */
    /* CKA_WRAP_WITH_TRUSTED (with CKA_EXTRACTABLE) kept on a session key
     * and enforced (a key the user made cannot wrap it): what a replicable
     * key needs (hsm_caps_trusted_wrap). wrap_with_trusted_unenforced:
     * kept, but not enforced: a replicable key on this token can be
     * wrapped out with the user PIN alone. */
    hsm_attr_support wrap_with_trusted;
    bool wrap_with_trusted_unenforced;
    char wrap_with_trusted_why[256];
    /* Derived, for choosing a group's path:
     * rewrap_on_token: C_UnwrapKey (RSA-OAEP) into a session key and
     * C_WrapKey (RSA-OAEP) out of it both offered;
     * secret_on_token: AES keys can be made and wrapped (AES key wrap, or
     * CKM_AES_ECB to build it on) and delivered (RSA-OAEP C_WrapKey);
     * hmac_on_token: the implicit-rejection key can be made and used. */
    bool rewrap_on_token, secret_on_token, hmac_on_token;
    bool module_reinitialised;      /* a probe broke the module's connection (survived) */
    /* A trial failed for a reason that says nothing about the token's
     * abilities (CKR_DEVICE_MEMORY, CKR_DEVICE_ERROR, a lost session or
     * login): what it tried reads as unsupported, so such a set is not
     * trusted: hsm_caps_get probes again (up to HSM_PROBE_TRIES probes in
     * a row), and key generation "with what the token supports"
     * (hsm_generate_*_best) refuses to run on it rather than make a key
     * with fewer protections than the token may keep. A failure that is
     * the same CKR_GENERAL_ERROR or CKR_FUNCTION_FAILED in HSM_PROBE_TRIES
     * probes in a row is the token's answer, not a moment's: the
     * mechanism's info (info_rv) or the trusted-wrap enforcement trial
     * (wrap_with_trusted_why) is then judged "no" and no longer makes the
     * set incomplete. incomplete_why: the first such failure. */
    bool incomplete;
    char incomplete_why[256];
} hsm_caps;

/* The capability set of the token, probed on first use and kept (cheap
 * afterwards). Writes *out. Errors only for a bad ctx/out (HSM_ERR_ARGS):
 * what cannot be probed reads as unsupported, with the reason. */
hsm_err hsm_caps_get(hsm_ctx *ctx, hsm_caps *out);
/* SoftHSM's token directory (directories.tokendir of SOFTHSM2_CONF, else
 * of /etc/softhsm/softhsm2.conf), where its tokens' key files are: 0 and
 * the path in out (cap bytes); -1 when no configuration names one. Reads
 * a file only: no module is loaded. */
int hsm_softhsm_tokendir(char *out, size_t cap);
/* Whether module ([hsm] module: a file or a p11-kit module name) is
 * SoftHSM's (libsofthsm2.so, softhsm2; a path by the file it leads to,
 * so a link of another name is too; a p11-kit name by the file its
 * module file gives, which loads the modules p11-kit configures): only
 * then is the token directory above the store of the configured token. */
bool hsm_module_is_softhsm(const char *module);
/* "CKR_GENERAL_ERROR" etc. for a CK_RV (static text, or this thread's
 * buffer for one without a name). */
const char *hsm_rv_name(unsigned long rv);
/* "CKM_RSA_PKCS_OAEP" etc. for a hsm_mech (static text). */
const char *hsm_mech_name(hsm_mech m);
/* Is the mechanism offered with all of `flags`? */
bool hsm_caps_has(const hsm_caps *caps, hsm_mech m, unsigned flags);
/* Can a key leave this token under trusted wrap, as the key ceremony's
 * sending side does it (replicable groups, `group export`)? Needs
 * CKA_WRAP_WITH_TRUSTED kept on keys and enforced, CKM_AES_KEY_GEN,
 * CKM_AES_KEY_WRAP_PAD with CKF_WRAP and CKM_RSA_PKCS_OAEP with CKF_WRAP.
 * Returns true, or
 * false with missing (may be NULL; n bytes, always terminated) naming
 * each missing piece, "; " between them. */
bool hsm_caps_trusted_wrap(const hsm_caps *caps, char *missing, size_t n);
/* Can this token receive keys, as the key ceremony's receiving side does
 * (`token transport-key`, `group import`)? Needs CKM_RSA_PKCS_KEY_PAIR_GEN,
 * CKM_RSA_PKCS_OAEP and CKM_AES_KEY_WRAP_PAD with CKF_UNWRAP, and
 * CKA_ALLOWED_MECHANISMS and CKA_UNWRAP_TEMPLATE kept (the transport key
 * unwraps with OAEP only, into sensitive keys only). Returns as
 * hsm_caps_trusted_wrap. */
bool hsm_caps_receive(const hsm_caps *caps, char *missing, size_t n);
/* Can an EC group key on this token be used, by what the token lists?
 * Needs CKM_ECDH1_DERIVE with CKF_DERIVE and CKM_AES_KEY_WRAP with
 * CKF_UNWRAP (hsm_ecdh_decrypt_content_key); generating one also needs
 * CKM_EC_KEY_PAIR_GEN, which adopting one does not. Whether the derive
 * takes the X9.63 KDF is not listed: a token that lists it and takes
 * CKD_NULL only (SoftHSM 2.6.1) passes here and refuses at the unwrap.
 * Returns as hsm_caps_trusted_wrap. */
bool hsm_caps_ec_group(const hsm_caps *caps, char *missing, size_t n);


/* ---- keys ---------------------------------------------------------- */

typedef enum hsm_key_class { HSM_CLASS_PRIVATE = 1, HSM_CLASS_PUBLIC, HSM_CLASS_SECRET } hsm_key_class;
typedef enum hsm_key_type { HSM_KEYTYPE_RSA = 1, HSM_KEYTYPE_EC, HSM_KEYTYPE_AES, HSM_KEYTYPE_GENERIC_SECRET } hsm_key_type;

/* Finds exactly one key: `ref` is a PKCS#11 URI ("pkcs11:object=eng-v1;type=private")
 * or a plain label; `cls` restricts the class (0 = any, then the URI's type= decides).
 * A label shared by a key pair with cls 0 gives HSM_ERR_KEY_AMBIGUOUS. A
 * URI naming another token (token=, serial=, ...) gives HSM_ERR_KEY_NOT_FOUND.
 * The hsm_key keeps label, id and class, and finds its object again after
 * the token was re-inserted or the login renewed. It may be shared by
 * threads; free it only when no call uses it. */
hsm_err hsm_key_find(hsm_ctx *ctx, const char *ref, hsm_key_class cls, hsm_key **out);
void hsm_key_free(hsm_key *key);
/* The key's label as found (hsm_key_find, hsm_key_list; "" if none), owned
 * by key: no token call (hsm_key_get_info reads every attribute). */
const char *hsm_key_label(const hsm_key *key);
/* Finds keys of class cls by plain label, many in one search of the class
 * rather than one search each (a token's search is often linear in its
 * objects: a group with many secret key versions, found one by one, cost
 * versions x objects at every load). When the class holds many more
 * objects than labels asked for (a token shared by many groups, where
 * every call is a round trip: a network HSM, p11-kit's RPC), one search
 * per label instead: either way about 3 calls per label at most, plus the
 * reads of the keys found. out[i] (cleared on entry, n entries)
 * is the key labelled labels[i] when exactly one object of the class
 * carries it, else NULL (also for a NULL or empty labels[i]): hsm_key_find
 * then tells a missing key from an ambiguous one. Token objects only (so a
 * key another process is still making is not touched). The caller frees
 * each out[i]. HSM_OK, or the token's error (out[] all NULL). */
hsm_err hsm_key_find_labels(hsm_ctx *ctx, hsm_key_class cls, const char *const *labels, size_t n, hsm_key **out);
/* Deletes the object from the token (retire). The hsm_key is still freed by the caller. */
hsm_err hsm_key_destroy(hsm_ctx *ctx, hsm_key *key);

/* Usage flags: exactly these are set true on the created key; every other
 * usage is set false explicitly (tokens add defaults otherwise). */
enum hsm_usage {
    HSM_USE_DECRYPT = 1u << 0, /* C_Decrypt: plain key out (method F) */
    HSM_USE_UNWRAP = 1u << 1,  /* C_UnwrapKey into a sensitive session key */
    HSM_USE_SIGN = 1u << 2,
    HSM_USE_DERIVE = 1u << 3,  /* ECDH */
    HSM_USE_WRAP = 1u << 4,    /* secret keys: AES key wrap of session keys */
    HSM_USE_ENCRYPT = 1u << 5,
    HSM_USE_PKCS1V15 = 1u << 6, /* also allow CKM_RSA_PKCS (implicit rejection only) */
    HSM_USE_WRAP_ECB = 1u << 7, /* AES secret keys on a token without AES key wrap:
                                   CKA_ENCRYPT limited to CKM_AES_ECB, on which RFC 3394/5649
                                   is built (the content key then passes through memory) */
};

typedef struct hsm_keygen_spec {
    const char *label;        /* CKA_LABEL, required, unique on the token */
    const unsigned char *id;  /* CKA_ID; NULL = first 16 bytes of SHA-256(label) */
    size_t id_len;
    hsm_key_type type;        /* RSA or EC for pairs; AES or GENERIC_SECRET for secrets */
    unsigned bits;            /* RSA 2048/3072/4096; EC 256/384; AES 256; HMAC 256 */
    unsigned usage;           /* enum hsm_usage bits */
    bool extractable;         /* secret keys only: may leave wrapped (group secret keys) */
    bool replicable;          /* CKA_EXTRACTABLE with CKA_WRAP_WITH_TRUSTED: may leave the token
                                 only wrapped under a key the security officer made trusted
                                 (hsm_replica_export); read back, else HSM_ERR_KEY_POLICY */
} hsm_keygen_spec;

/* Generates a key pair on the token: private CKA_TOKEN, CKA_PRIVATE,
 * CKA_SENSITIVE, not CKA_EXTRACTABLE (replicable: extractable only under
 * trusted wrap), with exactly `usage` (plus
 * CKA_UNWRAP_TEMPLATE forcing unwrapped keys sensitive, and
 * CKA_ALLOWED_MECHANISMS limited to what `usage` needs). Reads every
 * attribute back and fails with HSM_ERR_KEY_POLICY (destroying the pair)
 * if the token added a usage. Either output may be NULL. */
hsm_err hsm_generate_keypair(hsm_ctx *ctx, const hsm_keygen_spec *spec, hsm_key **pub, hsm_key **priv);
/* Generates a secret key (AES-256 group secret key, or HMAC key for
 * implicit rejection) on the token: sensitive, extractable only if asked
 * (replicable: only under trusted wrap, as for key pairs). */
hsm_err hsm_generate_secret_key(hsm_ctx *ctx, const hsm_keygen_spec *spec, hsm_key **out);

/* What the *_best generators gave a key. */
typedef struct hsm_keygen_result {
    unsigned protections;   /* enum hsm_protection the key has */
    unsigned missing;       /* protections it lacks because the token cannot store them */
    char why[256];          /* the token's refusal, e.g. "C_GenerateKeyPair refused
                               CKA_ALLOWED_MECHANISMS (CKR_GENERAL_ERROR)"; "" if none */
} hsm_keygen_result;
/* As hsm_generate_keypair / hsm_generate_secret_key, with every optional
 * protection the token supports (hsm_caps_get) instead of all of them:
 * what it cannot store is left out and reported in *res, never silently
 * (callers record it as an accepted weakening and show it). A token that
 * refuses a protection at generation although the session-object probe
 * accepted it (NSS softokn) is asked again without it, and the capability
 * set is corrected. Sensitive, never extractable (and the exact usage) are
 * never given up. *res is always written. The strict functions above fail
 * instead, with HSM_ERR_ARGS and a detail naming the refused attribute. */
hsm_err hsm_generate_keypair_best(hsm_ctx *ctx, const hsm_keygen_spec *spec, hsm_keygen_result *res,
                                  hsm_key **pub, hsm_key **priv);
hsm_err hsm_generate_secret_key_best(hsm_ctx *ctx, const hsm_keygen_spec *spec, hsm_keygen_result *res,
                                     hsm_key **out);

typedef struct hsm_key_info {
    hsm_key_class cls;
    hsm_key_type type;
    unsigned bits;            /* RSA modulus bits, EC field bits, secret key bits */
    char label[128];
    unsigned char id[64];
    size_t id_len;
    bool token, private_, sensitive, always_sensitive, extractable, never_extractable;
    bool decrypt, unwrap, sign, derive, wrap, encrypt, verify, sign_recover;
    bool value_readable;      /* C_GetAttributeValue(CKA_VALUE) succeeded: must be false */
    bool wrap_with_trusted;   /* CKA_WRAP_WITH_TRUSTED: only a CKA_TRUSTED key may wrap it */
    bool trusted;             /* CKA_TRUSTED (set by the security officer only) */
    bool local;               /* CKA_LOCAL: generated on this token (false: unwrapped, imported, or not said) */
    bool has_unwrap_template; /* CKA_UNWRAP_TEMPLATE present */
    bool unwrap_template_sensitive; /* ...and it forces CKA_SENSITIVE=TRUE */
    unsigned long allowed_mechanisms[16]; /* CKA_ALLOWED_MECHANISMS (CKM_* values) */
    size_t n_allowed_mechanisms;          /* 0 = attribute absent (any mechanism) */
    bool allowed_mechanisms_too_many;     /* CKA_ALLOWED_MECHANISMS lists more than the 16 above
                                             (n_allowed_mechanisms 0): never taken as absent */
    bool always_authenticate;             /* CKA_ALWAYS_AUTHENTICATE: a login per use */
    /* The token (or the module in front of it) cannot store, or cannot
     * return, the attribute (hsm_caps_get): absent or not, it was not
     * read. p11-kit 0.24.1's RPC server crashes when asked for a stored
     * CKA_UNWRAP_TEMPLATE, so it is never asked where the probe failed;
     * NSS softokn returns a template without its values
     * (has_unwrap_template true, its contents unknown). */
    bool allowed_mechanisms_unknown, unwrap_template_unknown;
    bool sealed;                          /* a sealed secret key (hsm_key_from_sealed): the
                                             attributes above are its seal key's */
} hsm_key_info;
hsm_err hsm_key_get_info(hsm_ctx *ctx, hsm_key *key, hsm_key_info *out);

/* Which RSA-OAEP hashes key works with here, by real trials: a random
 * value encrypted in software to the key's public key with each hash, then
 * C_Decrypt (if the key has CKA_DECRYPT) and C_UnwrapKey into a session
 * key (if it has CKA_UNWRAP); the results are wiped or destroyed. Bit
 * (1u << HSM_OAEP_SHA1 / _SHA256) set in *decrypt / *unwrap for each that
 * worked. Up to four private-key operations. Errors: HSM_ERR_ARGS (not an
 * RSA private key), what finding the key gave, or a trial's failure that
 * is the token's, not the hash's (gone, CKR_DEVICE_ERROR,
 * CKR_DEVICE_MEMORY, a lost session or login: its detail kept, both
 * masks 0). */
hsm_err hsm_key_probe_oaep(hsm_ctx *ctx, hsm_key *key, unsigned *decrypt, unsigned *unwrap);

/* ---- sealed secret keys ---------------------------------------------- */

/* For tokens that cannot keep secret keys or wrap them out (smartcards):
 * the secret lives outside the token, RSA-OAEP-encrypted ("sealed") to a
 * token key pair that may only decrypt, and is opened on the token, into
 * locked memory, for each use and wiped at once. Weaker than a secret key
 * on the token (its value is in process memory while in use): callers
 * record it as an accepted weakening.
 *
 * A new random secret (HSM_KEYTYPE_AES of 128/192/256 bits, or
 * HSM_KEYTYPE_GENERIC_SECRET of 256 bits for HMAC), made in locked memory
 * and sealed to seal's public key (RSA-OAEP SHA-1; seal: an RSA private
 * key with CKA_DECRYPT). *blob (caller frees; not secret) is what to keep.
 * Errors: HSM_ERR_ARGS, HSM_ERR_NOMEM (also: no locked memory), what
 * reading seal's public key gave. */
hsm_err hsm_sealed_secret_new(hsm_ctx *ctx, hsm_key *seal, hsm_key_type type, unsigned bits,
                              unsigned char **blob, size_t *len);
/* A key reference to a sealed secret, for hsm_rewrap_to_secret_key (kek),
 * hsm_wrap_secret_key_to_public (secret) and implicit rejection
 * (reject_key). seal is copied (the caller keeps its own); blob is copied
 * (at most 1024 bytes). Nothing is opened here. Free with hsm_key_free. */
hsm_err hsm_key_from_sealed(hsm_ctx *ctx, hsm_key *seal, hsm_key_type type, unsigned bits,
                            const unsigned char *blob, size_t len, hsm_key **out);
/* Opens the sealed secret once and checks its length (a trial for
 * `groupsrv check`); nothing is kept. HSM_OK, HSM_ERR_DECRYPT (does not
 * open with its seal key), or the token's error. */
hsm_err hsm_sealed_check(hsm_ctx *ctx, hsm_key *key);

/* Every key on the token (token objects only, as hsm_key_find_labels)
 * whose label starts with prefix ("" = all): the callback gets each key
 * (borrowed for the call only). Returns the first non-zero callback value
 * as HSM_ERR_ARGS, or HSM_OK. No session is held while callbacks run: they
 * may call hsm_* on the same ctx. A token holding more than 1,000,000
 * token objects (of any class) gives HSM_ERR_TOO_MANY_OBJECTS and no
 * callback: never a part of the keys. */
hsm_err hsm_key_list(hsm_ctx *ctx, const char *label_prefix,
                     int (*cb)(void *arg, hsm_ctx *ctx, hsm_key *key), void *arg);

/* DER SubjectPublicKeyInfo of an RSA or EC key (public or private object;
 * for a private key the matching public attributes are read). Caller frees. */
hsm_err hsm_key_export_public(hsm_ctx *ctx, hsm_key *key, unsigned char **spki_der, size_t *len);

/* Whether pub (a certificate's key) is the public half of key pair `key`
 * as the token showed it when the key was found by label (an RSA key's
 * modulus, an EC key's point; kept to refuse another key found again
 * under its label and CKA_ID), with no token call: 1 yes, 0 no, -1 not
 * known (nothing was noted: ask the token with hsm_key_export_public).
 * With an answer, found_sha256 (if not NULL) gets the SHA-256 that names
 * the key found: another key found later under the label has another. */
typedef struct evp_pkey_st EVP_PKEY; /* <openssl/evp.h> (same typedef) */
int hsm_key_matches_public(const hsm_key *key, EVP_PKEY *pub, unsigned char found_sha256[32]);

/* ---- the message key operations ------------------------------------- */

/* How a content key was wrapped to a group RSA key. */
typedef enum hsm_kt_alg {
    HSM_KT_RSA_OAEP_SHA1 = 1,   /* OAEP, SHA-1, MGF1-SHA-1, no label (CMS default) */
    HSM_KT_RSA_OAEP_SHA256,     /* OAEP, SHA-256, MGF1-SHA-256, no label */
    HSM_KT_RSA_PKCS1V15,        /* only via implicit rejection; see below */
} hsm_kt_alg;

/* PKCS#1 v1.5 implicit rejection: on any padding failure the result is a
 * deterministic substitute (HMAC-SHA-256 of the ciphertext under
 * reject_key, truncated to expected_len), chosen without a data-dependent
 * branch, so callers cannot tell valid from invalid padding. Used for every
 * HSM_KT_RSA_PKCS1V15 operation below; reject_key must then be given. */
/* Where the content key is re-wrapped (recipient-key, membership
 * certificates, group-secret, rewrap). */
typedef enum hsm_rewrap_path {
    HSM_REWRAP_TOKEN = 0,  /* C_UnwrapKey into a sensitive session key, C_WrapKey out of it:
                              the content key never enters this process's memory */
    HSM_REWRAP_SOFTWARE,   /* tokens that cannot unwrap into a session key or wrap
                              (smartcards): C_Decrypt into locked memory, re-wrapped with
                              OpenSSL, wiped at once. Needs CKA_DECRYPT on the group key. */
} hsm_rewrap_path;

typedef struct hsm_unwrap_input {
    hsm_key *group_key;               /* the group private key */
    hsm_kt_alg alg;
    const unsigned char *encrypted_key;
    size_t encrypted_key_len;
    size_t expected_len;              /* content key length: 16, 24 or 32 (needed for v1.5);
                                         0 (OAEP) = whatever length the plaintext has */
    hsm_key *reject_key;              /* HMAC key for implicit rejection (v1.5 only) */
    hsm_rewrap_path rewrap;           /* the group's recorded path; 0 = on the token */
} hsm_unwrap_input;

/* Method F: the plain content key, for return over mutual TLS. Needs
 * CKA_DECRYPT on the group key. out must hold expected_len (or 64) bytes.
 * expected_len 0 (OAEP only) accepts any length. A ciphertext that does not
 * decrypt, or decrypts to the wrong length, gives HSM_ERR_DECRYPT; OAEP
 * with SHA-256 on a token without it (SoftHSM 2.6) gives HSM_ERR_MECHANISM
 * with detail "token does not support RSA-OAEP with SHA-256 (...)". */
hsm_err hsm_decrypt_content_key(hsm_ctx *ctx, const hsm_unwrap_input *in,
                                unsigned char *out, size_t outcap, size_t *outlen);

/* Methods E/G and member-certs: C_UnwrapKey into a sensitive session key,
 * then C_WrapKey with RSA-OAEP to each recipient public key (DER SPKI),
 * so the content key never enters our memory. outs[i] is allocated (caller
 * frees), lens[i] set. One unwrap for all n recipients (n <= 65536).
 * Recipient keys must be RSA, 2048..16384 bits (else HSM_ERR_PUBLIC_KEY);
 * on any failure every outs[i] is NULL. expected_len 0 (OAEP) unwraps the
 * key at its own length: callers need not guess. A non-zero expected_len
 * that the plaintext does not have is HSM_ERR_DECRYPT: read from
 * CKA_VALUE_LEN, or on tokens that do not report it for unwrapped keys
 * (SoftHSM 2.6.1) measured by an AES key wrap under a throw-away session
 * key (the key's bytes are never read). With HSM_KT_RSA_PKCS1V15 the key
 * is decrypted into memory (implicit rejection needs the bytes) and then
 * imported as the session key. */
hsm_err hsm_rewrap_to_public_keys(hsm_ctx *ctx, const hsm_unwrap_input *in,
                                  hsm_oaep_hash out_hash,
                                  const unsigned char *const *spki, const size_t *spki_len, size_t n,
                                  unsigned char **outs, size_t *lens);
/* The same with a wrap algorithm per recipient (wrap_algs[i] for spki[i]):
 * HSM_KT_RSA_OAEP_SHA1/_SHA256, or HSM_KT_RSA_PKCS1V15 (CKM_RSA_PKCS
 * C_WrapKey: what NSS 3.87 and gpgsm 2.2 readers can decrypt; wrapping is
 * encryption to the recipient, so no padding oracle is offered here).
 * Still one unwrap for all n. HSM_ERR_ARGS for any other value. */
hsm_err hsm_rewrap_to_recipients(hsm_ctx *ctx, const hsm_unwrap_input *in, const hsm_kt_alg *wrap_algs,
                                 const unsigned char *const *spki, const size_t *spki_len, size_t n,
                                 unsigned char **outs, size_t *lens);

/* Group-secret method: unwrap as above, wrap with AES key wrap under a
 * token AES key: RFC 3394 (CKM_AES_KEY_WRAP) when the key length is a
 * multiple of 8, else RFC 5649 (CKM_AES_KEY_WRAP_PAD). expected_len 0
 * works as above; when the token does not report the length, RFC 3394 is
 * used (CMS content keys are 16, 24 or 32 bytes) and *outlen - 8 is the
 * key length. Caller frees *out.
 * A kek made with HSM_USE_WRAP_ECB (no AES key wrap on the token): the
 * content key is decrypted into locked memory and RFC 3394/5649 computed
 * here on the token's CKM_AES_ECB (the kek stays on the token). A sealed
 * kek: the content key and the kek are both opened into locked memory and
 * wrapped with OpenSSL. Both need CKA_DECRYPT on the group key. */
hsm_err hsm_rewrap_to_secret_key(hsm_ctx *ctx, const hsm_unwrap_input *in, hsm_key *kek,
                                 unsigned char **out, size_t *outlen);

/* GET secret-keys: wraps a token secret key (the group secret key itself)
 * with RSA-OAEP to a recipient public key. Caller frees *out. A sealed
 * secret is opened into locked memory and encrypted with OpenSSL. */
hsm_err hsm_wrap_secret_key_to_public(hsm_ctx *ctx, hsm_key *secret, hsm_oaep_hash hash,
                                      const unsigned char *spki, size_t spki_len,
                                      unsigned char **out, size_t *outlen);

/* ECDH (RFC 5753 KeyAgreeRecipientInfo, dhSinglePass-stdDH-sha*kdf):
 * derive the shared secret with the group EC key and the originator's
 * public point, run the X9.63 KDF with shared_info (the DER
 * ECC-CMS-SharedInfo) into a KEK inside the token, and AES-unwrap the
 * wrapped content key into a session key, then re-wrap it like the
 * functions above. kdf_hash is HSM_OAEP_SHA1 or _SHA256 (the KDF hash). */
typedef struct hsm_ecdh_input {
    hsm_key *group_key;
    const unsigned char *peer_point; /* uncompressed EC point, 0x04||X||Y */
    size_t peer_point_len;
    hsm_oaep_hash kdf_hash;
    const unsigned char *shared_info;
    size_t shared_info_len;
    size_t kek_len;                  /* 16, 24 or 32 */
    const unsigned char *wrapped_key;/* RFC 3394 wrapped content key */
    size_t wrapped_key_len;
} hsm_ecdh_input;
/* Plain content key out (method F with an EC group). Tokens without the
 * X9.63 KDF in CKM_ECDH1_DERIVE (SoftHSM 2.6.1 accepts only CKD_NULL) give
 * HSM_ERR_MECHANISM with detail "token does not support ECDH with the
 * X9.63 KDF (...)": the shared secret is never taken out of the token. */
hsm_err hsm_ecdh_decrypt_content_key(hsm_ctx *ctx, const hsm_ecdh_input *in,
                                     unsigned char *out, size_t outcap, size_t *outlen);

/* Does the token's CKM_ECDH1_DERIVE take the X9.63 KDF, which every RFC
 * 5753 message needs (the shared secret never leaves the token)? A token
 * may list the mechanism and take CKD_NULL only (SoftHSM 2.6.1): no
 * mechanism flag tells, so a real trial: a derive with CKD_SHA1_KDF and
 * with CKD_SHA256_KDF from key (an EC private key), or with key NULL from
 * a session key pair on P-<bits> (256 or 384) made and destroyed here,
 * against a point made in software; the derived keys are destroyed
 * unread. Bit (1u << HSM_OAEP_SHA1 / _SHA256) set in *kdfs for each KDF
 * taken; with none, HSM_OK and a detail naming the token's refusal.
 * Other errors: the trial could not run (no answer about the KDF). */
hsm_err hsm_probe_ecdh_kdf(hsm_ctx *ctx, hsm_key *key, unsigned bits, unsigned *kdfs);

/* Is key transport `alg` usable with this group private key on this token
 * (mechanism present, parameters accepted, CKA_ALLOWED_MECHANISMS permits
 * it)? Probes with C_DecryptInit on a session that is then discarded, so
 * nothing is decrypted. A key that refuses to decrypt (no CKA_DECRYPT: a
 * group that only re-wraps on the token) is tried for RSA-OAEP with one
 * real C_UnwrapKey of a random value into a session key destroyed at once.
 * HSM_OK, or HSM_ERR_MECHANISM with a detail such as "token does not
 * support RSA-OAEP with SHA-256 (...)", or HSM_ERR_KEY_POLICY. For
 * choosing what a group advertises. */
hsm_err hsm_check_kt_alg(hsm_ctx *ctx, hsm_key *group_key, hsm_kt_alg alg);

/* ---- signing (certificates) ----------------------------------------- */
typedef enum hsm_sig_alg {
    HSM_SIG_RSA_PKCS1_SHA256 = 1, /* CKM_SHA256_RSA_PKCS */
    HSM_SIG_ECDSA_SHA256,         /* CKM_ECDSA_SHA256 (or CKM_ECDSA over our digest) */
    HSM_SIG_ECDSA_DIGEST,         /* CKM_ECDSA over data that already is a digest
                                     (20..64 bytes, the caller hashed): TLS server keys */
} hsm_sig_alg;
/* Signs data; for ECDSA the output is DER Ecdsa-Sig-Value (ready for X.509
 * and TLS), not PKCS#11's raw r||s. With HSM_SIG_ECDSA_DIGEST, data is the
 * digest itself and len must be 20..64 (else HSM_ERR_ARGS); the token
 * truncates a digest longer than the curve order as ECDSA says. Caller
 * frees *sig. HSM_SIG_RSA_PKCS1_SHA256 on a token without
 * CKM_SHA256_RSA_PKCS (opencryptoki 3.8, many smartcards) hashes here and
 * signs the DigestInfo with CKM_RSA_PKCS on the token: the same signature.
 * A key with CKA_ALWAYS_AUTHENTICATE gets its context-specific login. */
hsm_err hsm_sign(hsm_ctx *ctx, hsm_key *key, hsm_sig_alg alg, const unsigned char *data, size_t len,
                 unsigned char **sig, size_t *siglen);

/* ---- OpenSSL key object (TLS client/server keys on a token) --------- */
typedef struct evp_pkey_st EVP_PKEY; /* <openssl/evp.h> (same typedef) */
/* A new EVP_PKEY (caller frees with EVP_PKEY_free) that holds only the
 * public key of the EC private key `key` and whose ECDSA signing calls
 * hsm_sign(HSM_SIG_ECDSA_DIGEST) on the token: for SSL_CTX_use_PrivateKey,
 * X509_REQ_sign and the like; the private key never leaves the token.
 * `key` is borrowed for the call (the EVP_PKEY keeps its own reference, so
 * the caller may free `key` at once); `ctx` is borrowed and must stay open
 * as long as the EVP_PKEY, and anything holding it (SSL_CTX, SSL), lives.
 * Signing may run on any thread (each call borrows a pool session).
 * The key must be a private EC key (P-256, P-384 or P-521) with CKA_SIGN:
 * else HSM_ERR_KEY_POLICY (detail says why; RSA keys are refused: TLS 1.3
 * RSA-PSS would need raw RSA on the token) or HSM_ERR_PUBLIC_KEY. Callers
 * check anything else they require (sensitive, curve, ...) themselves.
 * Implemented with OpenSSL 3.0's legacy EC_KEY_METHOD (hsm/hsm_evp.c). */
hsm_err hsm_key_evp_pkey(hsm_ctx *ctx, hsm_key *key, EVP_PKEY **out);

/* ---- replication: keys copied token to token (hsm/replicate.c) ------- */

/* The key ceremony's token side. A key generated with spec.replicable
 * (CKA_EXTRACTABLE + CKA_WRAP_WITH_TRUSTED) can leave its token only
 * wrapped by a key that carries CKA_TRUSTED, which only the security
 * officer (SO) can set. Export: the SO makes a one-time AES-256 key and
 * imports the receiving token's transport public key, both as trusted
 * SESSION objects; the user's session wraps the keys under the one-time
 * key (RFC 5649, CKM_AES_KEY_WRAP_PAD) and the one-time key to the
 * transport key (RSA-OAEP); both objects are destroyed at once. Import:
 * the transport private key unwraps the one-time key, which unwraps each
 * key into a sensitive, never extractable token object. No key is ever
 * outside a token in the clear.
 *
 * Threads: the export logs the user out of the whole application for
 * the SO's part, so no other thread may use the context meanwhile (admin
 * commands only). */

typedef struct hsm_replica_item {
    hsm_key *key;             /* in, borrowed: a replicable private key, or a secret key */
    unsigned char *wrapped;   /* out: RFC 5649 wrapped under the one-time key (malloc'd, caller frees) */
    size_t wrapped_len;
} hsm_replica_item;

typedef struct hsm_replica_export {
    const char *so_pin;       /* the security officer's PIN (borrowed; the caller wipes it) */
    size_t so_pin_len;        /* 1..256 */
    const unsigned char *transport_spki; /* DER SubjectPublicKeyInfo of the receiving
                                            token's transport key: RSA 2048..16384 */
    size_t transport_spki_len;
    hsm_replica_item *items;  /* 1..256 keys to copy */
    size_t n_items;
    unsigned kek_hashes;      /* in: the OAEP hashes the receiving token unwraps with, bits
                                 (1u << HSM_OAEP_SHA1 / _SHA256); 0: not said, any */
    hsm_oaep_hash kek_hash;   /* out: the OAEP hash that wrapped the one-time key
                                 (SHA-256 where both tokens have it, else SHA-1) */
    unsigned char *wrapped_kek; /* out: the one-time key, RSA-OAEP to the transport key (caller frees) */
    size_t wrapped_kek_len;
} hsm_replica_export;

/* Runs the export above on a context opened with a user PIN. The user is
 * logged in again afterwards on every path (also after a wrong SO PIN).
 * Errors: HSM_ERR_PIN_INCORRECT / _PIN_LOCKED for the SO PIN (detail
 * "security officer login: ..."); HSM_ERR_KEY_POLICY when an item cannot be
 * wrapped (not made replicable; detail names its label);
 * HSM_ERR_PUBLIC_KEY for a transport key that is not RSA 2048..16384;
 * HSM_ERR_MECHANISM when the token lacks a mechanism; HSM_ERR_ARGS (also
 * for a context without a user PIN). On failure every out field is NULL/0. */
hsm_err hsm_replica_export_run(hsm_ctx *ctx, hsm_replica_export *x);

typedef struct hsm_replica_in {
    hsm_keygen_spec spec;     /* the copy's label, CKA_ID (required), type (RSA: decrypt/unwrap
                                 or sign only; AES; GENERIC_SECRET), usage, and for secret
                                 keys extractable;
                                 never replicable: copies are never extractable again */
    const unsigned char *wrapped;  /* RFC 5649 under the one-time key */
    size_t wrapped_len;
    const unsigned char *public_spki; /* RSA: the public key, made a token object with the
                                         same label and CKA_ID (NULL: none) */
    size_t public_spki_len;
} hsm_replica_in;

/* Imports n (1..256) keys: `transport` (this token's transport private
 * key) unwraps the one-time key with RSA-OAEP kek_hash into a session
 * object; each key is unwrapped with it as a token object: sensitive, not
 * extractable (CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE read false
 * on such copies, as PKCS#11 says for unwrapped keys), exactly the usage
 * its spec gives (read back), CKA_UNWRAP_TEMPLATE and
 * CKA_ALLOWED_MECHANISMS as generation sets them. out[i] gets a reference
 * to copy i (caller frees). All or nothing: on any failure every object
 * made is destroyed again. Errors: HSM_ERR_KEY_EXISTS (a label or CKA_ID
 * is taken; detail names it), HSM_ERR_DECRYPT (the transport key or the
 * one-time key does not unwrap: another transport key, damaged data),
 * HSM_ERR_KEY_POLICY (the token changed an attribute), HSM_ERR_ARGS. */
hsm_err hsm_replica_import(hsm_ctx *ctx, hsm_key *transport, hsm_oaep_hash kek_hash, const unsigned char *wrapped_kek,
                           size_t wrapped_kek_len, const hsm_replica_in *items, size_t n, hsm_key **out);

#endif
