/*
 * hsm_internal.h: shared between the hsm/ source files only; not installed,
 * not for callers. Defines the context, the key reference, the session pool
 * and the one PKCS#11 call wrapper (P11()).
 *
 * Lock order: ctx->life_mu, then ctx->pool_mu, then ctx->login_mu, then
 * ctx->key_mu; ctx->caps_mu stands alone (taken with none of the others
 * held). Held across C_* calls only: life_mu (read-locked by every
 * operation, write-locked while the module is finalized and initialised
 * again), login_mu around C_Login (one thread logs in at a time) and
 * pool_mu while a lost token is looked up again (one thread re-finds it
 * for all). key_mu never.
 */
#ifndef GS_HSM_INTERNAL_H
#define GS_HSM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "hsm.h"

/* Last, because p11-kit's compatibility header #defines plain words such
 * as `value` and `count`: nothing after it may use them differently. */
#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

#define HSM_DEFAULT_SESSIONS 8u
#define HSM_MAX_SESSIONS 1024u /* groupsrv.conf [hsm] max_sessions allows 1..1024 */
#define HSM_PIN_MAX 256u

/* Fewest milliseconds between two attempts to initialise a module that
 * is down (a network HSM whose client library cannot reach its server):
 * requests meanwhile fail at once instead of queueing on the attempt. */
#define HSM_REINIT_INTERVAL_MS 250
/* ...and between initialisations while the token is missing (a client
 * library that lists its server's slots only after C_Initialize). */
#define HSM_REFIND_REINIT_MS 1000

typedef struct hsm_session {
    CK_SESSION_HANDLE h;
    unsigned epoch; /* ctx->sess_epoch when opened; stale sessions are closed */
    bool broken;    /* set by an operation that saw the session die */
} hsm_session;

/* A PIN source's identity when it was read (refusal.c): a file's stat;
 * for env:NAME nothing here (the PIN itself is MACed). */
typedef struct hsm_pin_src {
    bool is_file;
    bool is_pipe; /* a pipe (named, or /dev/stdin's): known by its PIN's MAC alone (each write changes its times; stdin's is a new inode each start) */
    unsigned long long dev, ino;
    long long size, mtime_s, ctime_s;
    long mtime_ns, ctime_ns;
} hsm_pin_src;

/* Whether a message may show this PIN source (hsm.c): env:NAME, file:PATH
 * or a path with a '/' names where the PIN is; any other value is not
 * shown, as it may be the PIN itself written where its source belongs.
 * NULL: false. */
bool hsm_pin_source_named(const char *src);

/* refusal.c: a PIN the token refused, remembered across processes at
 * hsm_config's refusal_path. src_stat takes the source's identity before
 * it is read; matches says whether the record names this token and this
 * source (when, rv: the record's time and the C_Login answer, for the
 * message); record writes it (after a CKR_PIN_INCORRECT, or a login that
 * may have cost a try: login_unsure), keeping other sources' and tokens'
 * entries; clear removes this token's entries (after a login), the file
 * when none is left. None fails the caller: a record that cannot be read
 * or written is logged. */
void hsm_refusal_src_stat(const char *pin_source, hsm_pin_src *src);
bool hsm_refusal_matches(const char *record, const CK_TOKEN_INFO *ti, const hsm_pin_src *src, const char *pin,
                         size_t pin_len, char *when, size_t whensz, char *rv, size_t rvsz);
void hsm_refusal_record(const char *record, const CK_TOKEN_INFO *ti, const hsm_pin_src *src, const char *pin,
                        size_t pin_len, const char *pin_source, const char *rv);
void hsm_refusal_clear(const char *record, const CK_TOKEN_INFO *ti);

struct hsm_ctx {
    CK_FUNCTION_LIST *fl;
    CK_FUNCTION_LIST **modlist; /* set when loaded by name: released on close */
    bool initialized;
    P11KitUri *token_uri;
    char *init_args;            /* [hsm] init_args (module by path), or NULL */
    /* Whether p11-kit-proxy.so loads this module (a URI naming the
     * proxy): 0 not asked yet, 1 yes, 2 no; asked once, as the answer
     * loads every module p11-kit configures. */
    atomic_int proxy_reach;

    /* The module's life: every operation holds life_mu for reading; a
     * re-initialisation (C_Finalize, C_Initialize) holds it for writing,
     * so no session or handle of the old instance is in use meanwhile. */
    pthread_rwlock_t life_mu;
    unsigned life_gen;          /* bumped by every re-initialisation */
    bool module_down;           /* C_Initialize failed on the last attempt */
    long long last_init_ms;     /* monotonic time of the last attempt */

    CK_SLOT_ID slot;
    CK_TOKEN_INFO tinfo;

    /* The session pool. */
    pthread_mutex_t pool_mu;
    pthread_cond_t pool_cv;
    hsm_session *idle; /* stack of idle sessions */
    unsigned n_idle;
    unsigned n_open; /* idle + borrowed */
    unsigned max_sessions;
    /* What max_sessions may grow back to after a limit learnt from
     * CKR_SESSION_COUNT (the configured size, or the token's reported
     * limit), and the borrows since it was last learnt or grown (hsm.c,
     * regrow_sessions). */
    unsigned sessions_ceiling;
    unsigned borrows_at_limit;
    bool regrown;        /* max_sessions was grown back; not yet confirmed by an open */
    unsigned sess_epoch; /* bumped on token loss: older sessions are dead */
    bool token_lost;     /* DEVICE_REMOVED seen: re-find the token before use */

    /* Login: the PIN is kept for re-login after a lost login or token. */
    pthread_mutex_t login_mu;
    char *pin;
    size_t pin_len;
    bool want_login;
    bool pinpad;             /* pin_source "pinpad": C_Login with no PIN, entered on the token's own
                                PIN pad (CKF_PROTECTED_AUTHENTICATION_PATH); pin stays NULL */
    bool pin_rejected;
    bool login_unsure;       /* a C_Login failed in a way that may have cost a PIN try on a card:
                                not sent again until a new PIN is set (hsm.c, login_unsure) */
    char *refusal_path;      /* hsm_config's refusal_path (copied), or NULL */
    char *source_name;       /* [hsm] pin_source, whence ctx->pin came: for the refusal record */
    hsm_pin_src pin_src;     /* its identity when it was read (refusal.c) */

    /* Object handle cache generation: bumped whenever handles may be stale. */
    pthread_mutex_t key_mu;
    unsigned key_gen;

    /* Token quirks learnt on the way (ops.c). */
    atomic_bool unwrap_no_extractable; /* CKA_EXTRACTABLE refused in unwrap templates */

    /* The capability set (caps.c), probed once on first use. */
    pthread_mutex_t caps_mu;
    bool caps_done;
    hsm_caps caps;
    /* Probes in a row in which the same lasting-looking failure came back
     * (caps.c, judge_lasting): per mechanism's C_GetMechanismInfo, and the
     * trusted-wrap enforcement trial. Under caps_mu. */
    unsigned char mech_info_fails[HSM_MECH_COUNT_];
    unsigned char trusted_wrap_fails;
};

struct hsm_key {
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE ktype;
    char label[128];
    unsigned char id[64];
    size_t id_len;
    CK_OBJECT_HANDLE handle; /* valid while gen == ctx->key_gen */
    unsigned gen;
    bool always_auth;        /* CKA_ALWAYS_AUTHENTICATE: C_Login(CKU_CONTEXT_SPECIFIC) per use */
    /* The SHA-256 of a key pair's public half as found by label
     * (key_note_public: an RSA key's CKA_MODULUS, an EC key's CKA_EC_POINT
     * from the public key object of its CKA_ID): a search again after its
     * handle went stale (a new login, a token initialised anew) must find
     * this key, not another one made since under the same label and CKA_ID
     * (groupsrv derives the CKA_ID from the label, so another
     * installation's key of that label has both); a group load compares it
     * with the certificate (hsm_key_matches_public), with no token call.
     * Set before the key is shared, read-only after. */
    bool have_pub;
    unsigned char pub_sha256[32];
    /* An AES key's CKA_WRAP as last read (ops.c), for object `wrap_handle`
     * in key generation `wrap_gen`; 0 = not read. Under ctx->key_mu. */
    signed char wraps;
    CK_OBJECT_HANDLE wrap_handle;
    unsigned wrap_gen;
    /* A sealed secret key (hsm_key_from_sealed): not a token object; its
     * value is RSA-OAEP ciphertext to `seal`, opened on the token for
     * each use. NULL for token objects. */
    struct hsm_sealed *sealed;
};

struct hsm_sealed {
    hsm_key *seal;           /* the token key pair that opens it (owned) */
    hsm_key_type type;       /* HSM_KEYTYPE_AES or HSM_KEYTYPE_GENERIC_SECRET */
    unsigned bits;
    unsigned char blob[1024];
    size_t blob_len;
};

/* ---- p11.c: the wrapper and error tables --------------------------- */

/* Every PKCS#11 call goes through P11(): it checks that the module has the
 * function, logs "fn rv" at debug level (never arguments), records a
 * failure as the thread's detail "C_Xxx: CKR_NAME", and returns the mapped
 * hsm_err. The raw CK_RV of the last call in this thread is hsm_last_rv(). */
hsm_err hsm_p11_done(const char *fn, CK_RV rv);
CK_RV hsm_p11_missing(const char *fn);
#define P11(ctx, fn, ...)                                                                                    \
    hsm_p11_done(#fn, (ctx)->fl->fn != NULL ? (ctx)->fl->fn(__VA_ARGS__) : hsm_p11_missing(#fn))

CK_RV hsm_last_rv(void);
/* The slot the token is in now (a re-found token may have moved). */
CK_SLOT_ID hsm_slot_now(hsm_ctx *ctx);
const char *hsm_ckr_name(CK_RV rv);
hsm_err hsm_map_rv(CK_RV rv);
/* Names the mechanism in the detail of the call that just failed:
 * "C_WrapKey: CKR_X" becomes "C_WrapKey(CKM_AES_KEY_WRAP): CKR_X". */
void hsm_detail_mech(CK_MECHANISM_TYPE m);
/* Sets the thread's detail text (printf-style). */
void hsm_set_detail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Whether the token's retry counter for `who` (CKU_USER or CKU_SO) still
 * allows a login that is not a person's own: HSM_OK, or HSM_ERR_PIN_LOCKED
 * with the detail saying what to do when the token reports the PIN locked
 * or at its last try. HSM_OK when the token cannot say. */
hsm_err hsm_pin_tries_left(hsm_ctx *ctx, CK_USER_TYPE who);
/* C_Login as who (CKU_USER, CKU_SO, CKU_CONTEXT_SPECIFIC) with pin, unless
 * hsm_pin_tries_left refuses it for that PIN's counter (then
 * HSM_ERR_PIN_LOCKED, nothing sent) or the PIN's length lies outside the
 * token's ulMinPinLen..ulMaxPinLen (then HSM_ERR_PIN_INCORRECT, nothing
 * sent; hsm_last_rv is not a C_Login's). *sent (may be NULL): whether
 * C_Login was called, so that a caller says "the token rejected" only of
 * a PIN the token saw. Every login of the library goes through here. */
hsm_err hsm_login_counted(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_USER_TYPE who, const char *pin, size_t pin_len,
                          bool *sent);
void hsm_clear_detail(void);
/* Marks the detail just set as a key URI naming another token, slot or
 * module (hsm_last_error_uri_elsewhere); the next detail set clears it. */
void hsm_detail_uri_elsewhere(void);
/* The PKCS#11 two-call list read (C_GetSlotList, C_GetMechanismList):
 * get(ctx, arg, NULL, &n) asks the length, get(ctx, arg, list, &n) reads
 * it. A list that grows between the two calls (CKR_BUFFER_TOO_SMALL) is
 * asked for again, up to `tries` reads; a count larger than the array
 * given is a module not trusted. Returns HSM_OK with *list the list (the
 * caller frees it) and *n its length, or HSM_OK with *list NULL and *n
 * the count when that is 0 or above `max` (nothing read: the caller says
 * what it means), or the error with the detail set. */
typedef hsm_err (*hsm_list_get_fn)(hsm_ctx *ctx, void *arg, CK_ULONG *list, CK_ULONG *n);
typedef struct {
    hsm_list_get_fn get;
    void *arg;
    const char *fn;    /* the call, named in the detail: "C_GetSlotList" */
    const char *what;  /* its elements: "slots" */
    const char *whose; /* the list: "the module's slot list" */
    CK_ULONG max;      /* longer lists are not read */
    size_t spare;      /* elements allocated past the count (a module known to write one more) */
    int tries;
} hsm_list_read;
hsm_err hsm_read_list(hsm_ctx *ctx, const hsm_list_read *how, CK_ULONG **list, CK_ULONG *n);
/* While set, this thread's P11() calls log "rv=withheld" and leave no
 * detail: used around the PKCS#1 v1.5 decrypt, whose result is secret. */
void hsm_p11_quiet(bool on);
/* Keeps the detail of the real failure across clean-up calls (destroying
 * session objects) that may fail too. */
typedef struct hsm_errsave {
    CK_RV rv;
    char detail[384];
    bool elsewhere;
} hsm_errsave;
void hsm_err_save(hsm_errsave *sv);
void hsm_err_restore(const hsm_errsave *sv);

/* ---- hsm.c: sessions and recovery ----------------------------------- */

/* Runs op once with a borrowed session; on a recoverable failure (session
 * gone, login lost, token removed, stale object handle, a module whose
 * connection broke and was re-initialised) recovers and runs it once
 * more. op must clear its outputs on entry (it may run twice). */
typedef hsm_err (*hsm_op_fn)(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg);
hsm_err hsm_run(hsm_ctx *ctx, hsm_op_fn op, void *arg);

/* A copy of ctx->tinfo, read under pool_mu: a thread that finds the token
 * again after its loss rewrites it there. */
void hsm_token_info_copy(hsm_ctx *ctx, CK_TOKEN_INFO *out);
/* RFC 7512's module-path= and module-name= in a URI say which module its
 * token or key is on. Only the loaded module is used, so a URI that names
 * another one would be read on the wrong module's token (one with the
 * same label): HSM_ERR_URI, the detail (starting with what) naming both.
 * HSM_OK when the URI names none or names the loaded one. */
hsm_err hsm_uri_module_check(hsm_ctx *ctx, P11KitUri *u, const char *what);
/* The same, run at most once: a trial (capability probe) whose failure
 * is the answer. A broken module is still re-initialised afterwards. */
hsm_err hsm_run_once(hsm_ctx *ctx, hsm_op_fn op, void *arg);
/* After an op saw CKR_DEVICE_ERROR & co.: is the module itself broken (a
 * slot-level call fails too)? Then finalize and initialise it again.
 * Returns HSM_OK when the module works (again), else the error. Callers
 * hold no session and no lock. *reinitialised tells whether it did. */
hsm_err hsm_module_recover(hsm_ctx *ctx, unsigned seen_gen, bool *reinitialised);
/* Context-specific login (CKA_ALWAYS_AUTHENTICATE) right after an
 * operation's Init call on key. HSM_OK when the key needs none. */
hsm_err hsm_context_login(hsm_ctx *ctx, CK_SESSION_HANDLE s, const hsm_key *key);
/* Called by an op: the session must not go back to the pool (e.g. an
 * operation was started and deliberately not finished). */
void hsm_taint_session(void);

/* ---- keys.c ---------------------------------------------------------- */

/* The current handle of key in this session (re-found after recovery). */
hsm_err hsm_key_handle(hsm_ctx *ctx, CK_SESSION_HANDLE s, hsm_key *key, CK_OBJECT_HANDLE *h);
/* Reads one attribute into a fresh buffer (caller frees; wipes if secret). */
hsm_err hsm_get_attr(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type,
                     unsigned char **val, size_t *len);
hsm_err hsm_get_ulong(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type,
                      CK_ULONG *out);
/* Imports an RSA public key (DER SPKI) as a session object usable for
 * C_WrapKey; caller destroys *h. */
hsm_err hsm_import_wrap_pubkey(hsm_ctx *ctx, CK_SESSION_HANDLE s, const unsigned char *spki, size_t spki_len,
                               CK_OBJECT_HANDLE *h);
/* The same with a choice of attributes: a token object with a label and
 * CKA_ID (replicate.c's copy of a key pair's public half), or a session
 * object the security officer marks CKA_TRUSTED (the transport key). RSA
 * 2048..16384 bits only (HSM_ERR_PUBLIC_KEY otherwise). */
typedef struct hsm_pub_import {
    bool token, trusted, wrap, encrypt, verify;
    const char *label;        /* NULL: none */
    const unsigned char *id;
    size_t id_len;
} hsm_pub_import;
hsm_err hsm_import_rsa_pubkey(hsm_ctx *ctx, CK_SESSION_HANDLE s, const unsigned char *spki, size_t spki_len,
                              const hsm_pub_import *opt, CK_OBJECT_HANDLE *h);
/* CKA_ALLOWED_MECHANISMS for a key with spec's type and usage (what
 * generation sets on a token with these capabilities); returns how many
 * of m[8] it filled. */
CK_ULONG hsm_spec_mechanisms(const hsm_keygen_spec *spec, const hsm_caps *caps, CK_MECHANISM_TYPE m[8]);
/* Reads the usage, sensitive/extractable (and, for replicable keys,
 * CKA_WRAP_WITH_TRUSTED) attributes of a private or secret key back:
 * HSM_ERR_KEY_POLICY (detail names the attribute) if the token changed one. */
hsm_err hsm_verify_key_policy(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, const hsm_keygen_spec *spec);
void hsm_destroy_session_obj(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *h);
/* Reads CKA_ALLOWED_MECHANISMS into m (cap entries) with one call of a
 * fixed-size buffer (p11-kit's RPC fails the length query of this array
 * attribute with CKR_DEVICE_ERROR). *n = 0 when absent. More than cap
 * (or than that buffer) is HSM_ERR_BUFFER with *present true, never the
 * first cap of them. */
hsm_err hsm_get_mechs(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_MECHANISM_TYPE *m, size_t cap,
                      size_t *n, bool *present);

/* A boolean attribute; absent or unreadable counts as false (no detail left). */
bool hsm_get_bool(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type);
/* The same, telling a failed read (*out false, the error returned) from a
 * false value; the thread's last error is left as it was. */
hsm_err hsm_read_bool(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type, bool *out);

/* ---- ops.c: shared with soft.c ----------------------------------------- */

void hsm_oaep_params(hsm_oaep_hash hash, CK_RSA_PKCS_OAEP_PARAMS *p);
/* Turns a refused OAEP hash into HSM_ERR_MECHANISM with a clear detail. */
hsm_err hsm_oaep_check(hsm_ctx *ctx, hsm_err err, hsm_oaep_hash hash);
/* SoftHSM's CKR_GENERAL_ERROR for a ciphertext that does not decrypt. */
hsm_err hsm_decrypt_check(hsm_err err);

/* ---- caps.c ------------------------------------------------------------ */

/* The capability set, probing it on first use (ctx->caps). Never fails:
 * what could not be probed reads as unsupported. Copies into *out. */
void hsm_caps_load(hsm_ctx *ctx, hsm_caps *out);
/* As hsm_caps_load, but a kept set that is incomplete (a trial failed
 * transiently) is probed again first (and replaced). */
void hsm_caps_load_complete(hsm_ctx *ctx, hsm_caps *out);
/* Marks an attribute as refused on token objects after key generation
 * showed it (NSS stores CKA_ALLOWED_MECHANISMS on session objects only). */
void hsm_caps_note_refused(hsm_ctx *ctx, unsigned protection, const char *detail);
const char *hsm_mech_ckm_name(CK_MECHANISM_TYPE m);

/* ---- soft.c: key bytes outside the token ------------------------------- */

/* Locked (mlock), non-dumped memory for key bytes that must pass through
 * the process (software re-wrap, sealed secrets). NULL when it cannot be
 * had (the caller fails closed). hsm_secmem_free wipes (NULL is fine). */
unsigned char *hsm_secmem_new(size_t len);
void hsm_secmem_free(unsigned char *p, size_t len);

#define HSM_SEALED_MAX 2048u /* room for a sealed secret opened (a whole RSA block) */

/* Opens a sealed secret key on the token (C_Decrypt with its seal key,
 * RSA-OAEP SHA-1) into out (locked memory of HSM_SEALED_MAX bytes).
 * *len is its length, checked against the key's size. */
hsm_err hsm_sealed_open(hsm_ctx *ctx, CK_SESSION_HANDLE s, const hsm_key *key, unsigned char *out, size_t cap,
                        size_t *len);
/* HMAC-SHA-256 of data under a sealed (generic secret) key. */
hsm_err hsm_sealed_hmac(hsm_ctx *ctx, CK_SESSION_HANDLE s, const hsm_key *key, const unsigned char *data,
                        size_t len, unsigned char mac[32]);
/* A recipient's RSA public key from a DER SubjectPublicKeyInfo (2048..16384
 * bits, nothing trailing); *out is the caller's (EVP_PKEY_free).
 * HSM_ERR_PUBLIC_KEY with the reason in the detail. */
typedef struct evp_pkey_st EVP_PKEY;
hsm_err hsm_recipient_rsa_pubkey(const unsigned char *spki, size_t spki_len, EVP_PKEY **out);
/* RSA-OAEP encryption of msg to a DER SPKI (RSA 2048..16384) in software.
 * *out is malloc'd (caller frees). */
hsm_err hsm_soft_oaep_encrypt(const unsigned char *spki, size_t spki_len, hsm_oaep_hash hash,
                              const unsigned char *msg, size_t len, unsigned char **out, size_t *outlen);
/* The same with any key transport the server wraps with (RSA-OAEP SHA-1 or
 * SHA-256, or PKCS#1 v1.5 for readers that need it). */
hsm_err hsm_soft_rsa_encrypt(const unsigned char *spki, size_t spki_len, hsm_kt_alg alg, const unsigned char *msg,
                             size_t len, unsigned char **out, size_t *outlen);
/* AES key wrap in software: RFC 3394 for whole 64-bit blocks of at least
 * 16 bytes, else RFC 5649 (as the token path chooses). */
hsm_err hsm_soft_aes_wrap(const unsigned char *kek, size_t keklen, const unsigned char *key, size_t keylen,
                          unsigned char *out, size_t cap, size_t *outlen);
/* The same, built on the token's CKM_AES_ECB under the token key kek. */
hsm_err hsm_token_ecb_wrap(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE kek, const unsigned char *key,
                           size_t keylen, unsigned char *out, size_t cap, size_t *outlen);

#endif
