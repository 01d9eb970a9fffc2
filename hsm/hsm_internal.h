/*
 * hsm_internal.h: shared between the hsm/ source files only; not installed,
 * not for callers. Defines the context, the key reference, the session pool
 * and the one PKCS#11 call wrapper (P11()).
 *
 * Lock order: ctx->pool_mu, then ctx->login_mu, then ctx->key_mu. Held
 * across C_* calls only: login_mu around C_Login (one thread logs in at a
 * time) and pool_mu while a lost token is looked up again (one thread
 * re-finds it for all). key_mu never.
 */
#ifndef GS_HSM_INTERNAL_H
#define GS_HSM_INTERNAL_H

#include <pthread.h>
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

typedef struct hsm_session {
    CK_SESSION_HANDLE h;
    unsigned epoch; /* ctx->sess_epoch when opened; stale sessions are closed */
    bool broken;    /* set by an operation that saw the session die */
} hsm_session;

struct hsm_ctx {
    CK_FUNCTION_LIST *fl;
    CK_FUNCTION_LIST **modlist; /* set when loaded by name: released on close */
    bool initialized;
    P11KitUri *token_uri;

    CK_SLOT_ID slot;
    CK_TOKEN_INFO tinfo;

    /* The session pool. */
    pthread_mutex_t pool_mu;
    pthread_cond_t pool_cv;
    hsm_session *idle; /* stack of idle sessions */
    unsigned n_idle;
    unsigned n_open; /* idle + borrowed */
    unsigned max_sessions;
    unsigned sess_epoch; /* bumped on token loss: older sessions are dead */
    bool token_lost;     /* DEVICE_REMOVED seen: re-find the token before use */

    /* Login: the PIN is kept for re-login after a lost login or token. */
    pthread_mutex_t login_mu;
    char *pin;
    size_t pin_len;
    bool want_login;
    bool pin_rejected;

    /* Object handle cache generation: bumped whenever handles may be stale. */
    pthread_mutex_t key_mu;
    unsigned key_gen;
};

struct hsm_key {
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE ktype;
    char label[128];
    unsigned char id[64];
    size_t id_len;
    CK_OBJECT_HANDLE handle; /* valid while gen == ctx->key_gen */
    unsigned gen;
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
const char *hsm_ckr_name(CK_RV rv);
hsm_err hsm_map_rv(CK_RV rv);
/* Sets the thread's detail text (printf-style). */
void hsm_set_detail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void hsm_clear_detail(void);
/* While set, this thread's P11() calls log "rv=withheld" and leave no
 * detail: used around the PKCS#1 v1.5 decrypt, whose result is secret. */
void hsm_p11_quiet(bool on);
/* Keeps the detail of the real failure across clean-up calls (destroying
 * session objects) that may fail too. */
typedef struct hsm_errsave {
    CK_RV rv;
    char detail[192];
} hsm_errsave;
void hsm_err_save(hsm_errsave *sv);
void hsm_err_restore(const hsm_errsave *sv);

/* ---- hsm.c: sessions and recovery ----------------------------------- */

/* Runs op once with a borrowed session; on a recoverable failure (session
 * gone, login lost, token removed, stale object handle) recovers and runs
 * it once more. op must clear its outputs on entry (it may run twice). */
typedef hsm_err (*hsm_op_fn)(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg);
hsm_err hsm_run(hsm_ctx *ctx, hsm_op_fn op, void *arg);

/* A copy of ctx->tinfo, read under pool_mu: a thread that finds the token
 * again after its loss rewrites it there. */
void hsm_token_info_copy(hsm_ctx *ctx, CK_TOKEN_INFO *out);
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
void hsm_destroy_session_obj(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *h);

#endif
