/*
 * p11fault: a fault-injecting forwarding PKCS#11 module, for tests only.
 *
 * It loads the real module named by the environment variable
 * GS_P11FAULT_TARGET (default: the SoftHSM2 module found at build time),
 * passes every call through its own CK_FUNCTION_LIST, and on demand
 * answers chosen calls with a chosen CK_RV instead of forwarding them: the
 * token behaviours SoftHSM cannot be made to show (device removed, session
 * invalidated, login lost, device error) become testable.
 *
 * Control API (exported; tests reach it with
 * dlopen(path, RTLD_NOW | RTLD_NOLOAD) + dlsym, since p11-kit loaded it):
 *   void p11fault_inject(const char *func, CK_RV rv, int count);
 *       the next `count` calls of func ("C_Decrypt") return rv without
 *       reaching the real module; count < 0: until p11fault_clear().
 *   void p11fault_clear(void);            drops every pending fault
 *   unsigned long p11fault_calls(const char *func);
 *       calls of func since load (injected ones included); "" = all calls
 *   void p11fault_reset_calls(void);
 *   void p11fault_override_bool(CK_ATTRIBUTE_TYPE type, int value);
 *       C_GetAttributeValue reports this boolean attribute as value (0/1)
 *       on every object, as a token that adds usages would; value < 0
 *       removes the override (p11fault_clear() removes all).
 *   void p11fault_token_flags(CK_FLAGS flags);
 *       adds flags to what C_GetTokenInfo reports, as a "tokenflags"
 *       line does (0 removes them; independent of the control file)
 *   CK_RV p11fault_close_all_sessions(void);
 *       really closes every session in the real module (C_CloseAllSessions
 *       on each slot): "the session was closed under us".
 *   void p11fault_disconnect(void);
 *       a lost connection, as a network HSM's client library or p11-kit's
 *       RPC client sees it: every call but C_Initialize and C_Finalize
 *       answers CKR_DEVICE_ERROR until the module is finalized and
 *       initialised again.
 *   void p11fault_private_sensitive(CK_ATTRIBUTE_TYPE type);
 *       C_GetAttributeValue answers `type` of a private key object as
 *       sensitive (CKR_ATTRIBUTE_SENSITIVE, its length
 *       CK_UNAVAILABLE_INFORMATION, the others filled), as a token that
 *       gives a private key's public attributes (CKA_MODULUS) on its
 *       public key object only. 0 = off (p11fault_clear() too).
 *   void p11fault_break_on_attribute(CK_ATTRIBUTE_TYPE type);
 *       a template carrying `type` (C_CreateObject, C_GenerateKey,
 *       C_GenerateKeyPair, C_GetAttributeValue) breaks the connection as
 *       above and answers CKR_DEVICE_ERROR: p11-kit 0.24.1's RPC server
 *       dies on a CKA_UNWRAP_TEMPLATE it is asked to carry back. 0 = off.
 *   void p11fault_find_batch(unsigned long n);
 *       C_FindObjects hands out at most n handles a call, as PKCS#11
 *       allows (and tokens that page their answers do): a caller must call
 *       it until it answers none. 0 = off (p11fault_clear() too).
 *   void p11fault_mech_pad(unsigned long n, unsigned long grow, int grow_calls);
 *       C_GetMechanismList lists n vendor-defined mechanisms after the
 *       real ones (a token with a very long list), and after each of the
 *       next grow_calls calls (< 0: every call) grow more: a list that
 *       grows between the call asking its length and the call reading it
 *       (CKR_BUFFER_TOO_SMALL with the new length). 0, 0, 0 = off
 *       (p11fault_clear() too).
 *   void p11fault_slot_pad(unsigned long n, unsigned long grow, int grow_calls);
 *       C_GetSlotList lists n slots more after the real ones (ids no
 *       slot of the real module has: C_GetTokenInfo on them fails as on
 *       a reader whose card was pulled), and after each of the next
 *       grow_calls calls (< 0: every call) grow more: a reader plugged in
 *       between the call asking the list's length and the call reading
 *       it (CKR_BUFFER_TOO_SMALL with the new length). 0, 0, 0 = off
 *       (p11fault_clear() too).
 *
 * Out-of-process control (for servers under test, which cannot be reached
 * through the C API): if the environment variable GS_P11FAULT_CONTROL names
 * a file, every call checks that file (a stat(): inode, size, mtime) and,
 * when it changed, re-reads its rules. One rule per line:
 *   FUNC RV [COUNT [SKIP]]   e.g. "C_Decrypt CKR_DEVICE_ERROR 3"
 * FUNC is a function name or "*" (every call except C_Initialize,
 * C_Finalize, C_GetInfo, C_GetSlotList, C_GetSlotInfo and
 * C_WaitForSlotEvent); RV a CKR_ name or a number (0x...); COUNT how many
 * calls (from the time the file was read) get RV, default: all of them;
 * SKIP how many of the rule's calls pass through first, default 0
 * ("C_DestroyObject 0x1b 1 1": only the second deletion fails, so the
 * second of two steps can be failed alone).
 * "#" starts a comment. An empty or absent file means pass-through.
 * A line "bool ATTR 0|1" (ATTR a CKA_ name or a number) makes
 * C_GetAttributeValue report that boolean attribute so on every object,
 * like p11fault_override_bool(). A line "logout" logs the application out
 * of the token (a real C_Logout) once, when the file is read: sessions stay
 * open but lose their login, as when another application or the token
 * itself ends the login. A line "tokenflags FLAG..." adds token flags
 * to what C_GetTokenInfo reports (CKF_ names such as
 * CKF_USER_PIN_FINAL_TRY or CKF_SO_PIN_LOCKED, or numbers), as a token
 * whose retry counter ran down shows them (SoftHSM has no counter).
 * A line "disconnect" is p11fault_disconnect(),
 * once, when the file is read. A line "delay FUNC MS" makes every call of
 * FUNC wait MS milliseconds (at most 60000) before it goes on, so that
 * two processes' calls overlap for certain (races made reliable).
 * A line "hide LABEL [MS]" makes C_FindObjects leave out the objects
 * whose CKA_LABEL is LABEL: at the first call that would hand one out,
 * and after it at every call that comes less than MS milliseconds after
 * the process's previous C_FindObjects call (no MS: at every call). So
 * searches in quick succession miss the object and a search after a
 * pause of MS finds it: an object another process has just made. SoftHSM
 * 2.6 writes a new object's file after it has released the file's lock,
 * so another process indexing the token directory at that moment reads
 * it empty and misses the object until a later search; a network HSM
 * cluster shows an object made through one member on another only after
 * it has synchronised. A line "lag LABEL MS" hides the same way for MS
 * milliseconds from the first call that would hand one out, whatever
 * calls come between: the same lag seen by concurrent requests, each
 * searching at its own moment (with "hide LABEL MS", searches of other
 * threads keep the object hidden as long as they come). At most 4
 * "hide" and "lag" lines together; LABEL has no blanks.
 * "* CKR_DEVICE_REMOVED" (or CKR_TOKEN_NOT_PRESENT) is a removed token:
 * C_GetSlotList(tokenPresent) lists no slot, C_GetSlotInfo clears
 * CKF_TOKEN_PRESENT, slot calls (C_GetTokenInfo, C_OpenSession, ...) answer
 * CKR_TOKEN_NOT_PRESENT, session calls the rule's RV; and on removal every
 * real session is closed, as a real removal would (the login is gone
 * when the token comes back). Rules of the C API above apply first.
 * Write the file atomically (write a temporary, rename it over).
 *
 * Call counts for servers under test: if GS_P11FAULT_COUNTS names a file,
 * every call rewrites it (atomically: a temporary renamed over it) with
 * one line "FUNC N" per function called so far in this process, so a test
 * can tell how many token calls a request made ("C_Decrypt 0" when none).
 *
 * Token model (bench/run's "hardware token" series): with
 * GS_P11FAULT_SERVICE_US=D set (microseconds, at C_Initialize), every
 * private-key operation (C_Decrypt with an output buffer, C_UnwrapKey,
 * C_DeriveKey) takes at least D: the real call runs, then the caller
 * sleeps until D has passed since it started. GS_P11FAULT_ENGINES=K
 * (default 1) lets K such operations run at once; more wait for a free
 * engine. So the token does at most K/D operations a second whatever the
 * host's CPU, as a hardware token with K crypto engines would, while every
 * operation is still really done by the target module.
 *
 * Token profiles (profile.h): GS_P11FAULT_PROFILE=smartcard makes the
 * target look like a decrypt-only smartcard (few mechanisms, no wrap or
 * unwrap, no CKA_ALLOWED_MECHANISMS/CKA_UNWRAP_TEMPLATE, a login per use,
 * two sessions); =no-v15-wrap takes C_WrapKey with CKM_RSA_PKCS away;
 * =oaep-only takes CKM_RSA_PKCS away for everything but signing.
 * GS_P11FAULT_SESSION_QUOTA=N: a session limit the token does not report
 * (CKR_SESSION_COUNT beyond N open sessions; profile.h).
 * GS_P11FAULT_RSA_MAX_BITS=B: a token that makes RSA keys of at most B
 * bits (ulMaxKeySize B, CKR_KEY_SIZE_RANGE beyond it; profile.h).
 * GS_P11FAULT_PINPAD=1: a token with a PIN pad (C_Login with no PIN takes
 * the one "typed", GS_P11FAULT_PINPAD_PIN; profile.h).
 * GS_P11FAULT_WRITE_PROTECTED=1: a write-protected token (profile.h).
 *
 * Zero-cost token (bench/run's "server CPU per unwrap"): with
 * GS_P11FAULT_ZERO_COST=1 (at C_Initialize), C_DecryptInit and C_Decrypt
 * never reach the target module: C_Decrypt answers the fixed 32-byte key
 * 00 01 02 ... 1f at once, whatever the ciphertext and key. Everything
 * else (sessions, login, finding keys, unwrap and wrap) is still real.
 * What the server spends per unwrap is then its own CPU alone.
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

#include "profile.h"

#ifndef GS_P11FAULT_DEFAULT_TARGET
#define GS_P11FAULT_DEFAULT_TARGET "/usr/lib/softhsm/libsofthsm2.so"
#endif

#define P11FAULT_EXPORT __attribute__((visibility("default")))

P11FAULT_EXPORT void p11fault_inject(const char *func, CK_RV rv, int n);
P11FAULT_EXPORT void p11fault_clear(void);
P11FAULT_EXPORT unsigned long p11fault_calls(const char *func);
P11FAULT_EXPORT void p11fault_reset_calls(void);
P11FAULT_EXPORT CK_RV p11fault_close_all_sessions(void);
P11FAULT_EXPORT void p11fault_override_bool(CK_ATTRIBUTE_TYPE type, int value);
P11FAULT_EXPORT void p11fault_private_sensitive(CK_ATTRIBUTE_TYPE type);
P11FAULT_EXPORT void p11fault_token_flags(CK_FLAGS flags);
P11FAULT_EXPORT void p11fault_disconnect(void);
P11FAULT_EXPORT void p11fault_break_on_attribute(CK_ATTRIBUTE_TYPE type);
P11FAULT_EXPORT void p11fault_find_batch(unsigned long n);
P11FAULT_EXPORT void p11fault_mech_pad(unsigned long n, unsigned long grow, int grow_calls);
P11FAULT_EXPORT void p11fault_slot_pad(unsigned long n, unsigned long grow, int grow_calls);
P11FAULT_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list);

static pthread_mutex_t fault_mu = PTHREAD_MUTEX_INITIALIZER;
static void *real_dl;
static CK_FUNCTION_LIST *real;
static unsigned long find_batch; /* C_FindObjects' most handles a call (fault_mu); 0: as asked */
static struct timespec last_find;  /* when C_FindObjects was called last (fault_mu) */
/* Entries listed after the real ones, and how the count grows (fault_mu) */
struct list_pad {
    unsigned long n, grow;
    int grow_calls; /* < 0: every call */
};
static struct list_pad mech_pad; /* p11fault_mech_pad */
static struct list_pad slot_pad; /* p11fault_slot_pad */

static int fault_take(int idx, CK_RV *rv);
static long model_begin(struct timespec *t0);
static void model_end(const struct timespec *t0, long ns);
static void override_bools(CK_ATTRIBUTE *templ, CK_ULONG n);
static int private_sensitive_hides(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE *templ, CK_ULONG n);

/* The pad this call lists; the next call's grows as p11fault_*_pad asked. */
static unsigned long pad_take(struct list_pad *p)
{
    unsigned long n;

    pthread_mutex_lock(&fault_mu);
    n = p->n;
    if (p->grow_calls != 0) {
        p->n += p->grow;
        if (p->grow_calls > 0)
            p->grow_calls--;
    }
    pthread_mutex_unlock(&fault_mu);
    return n;
}

static void pad_set(struct list_pad *p, unsigned long n, unsigned long grow, int grow_calls)
{
    pthread_mutex_lock(&fault_mu);
    p->n = n;
    p->grow = grow;
    p->grow_calls = grow_calls;
    pthread_mutex_unlock(&fault_mu);
}
static int ctl_token_removed(void);
static CK_FLAGS ctl_token_flags_now(void);
static int breaks(const CK_ATTRIBUTE *t, CK_ULONG n);
static unsigned long hide_filter(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE *h, unsigned long n,
                                 struct timespec prev);

static CK_RV fw_C_Initialize(void *init_args);
static CK_RV fw_C_Finalize(void *reserved);

/* Generated from p11-kit's pkcs11.h (PKCS#11 2.40 function list): one
 * forwarder per function, each counting the call and consulting the
 * fault table first. */
enum fw_index {
    FW_C_Initialize,
    FW_C_Finalize,
    FW_C_GetInfo,
    FW_C_GetSlotList,
    FW_C_GetSlotInfo,
    FW_C_GetTokenInfo,
    FW_C_WaitForSlotEvent,
    FW_C_GetMechanismList,
    FW_C_GetMechanismInfo,
    FW_C_InitToken,
    FW_C_InitPIN,
    FW_C_SetPIN,
    FW_C_OpenSession,
    FW_C_CloseSession,
    FW_C_CloseAllSessions,
    FW_C_GetSessionInfo,
    FW_C_GetOperationState,
    FW_C_SetOperationState,
    FW_C_Login,
    FW_C_Logout,
    FW_C_CreateObject,
    FW_C_CopyObject,
    FW_C_DestroyObject,
    FW_C_GetObjectSize,
    FW_C_GetAttributeValue,
    FW_C_SetAttributeValue,
    FW_C_FindObjectsInit,
    FW_C_FindObjects,
    FW_C_FindObjectsFinal,
    FW_C_EncryptInit,
    FW_C_Encrypt,
    FW_C_EncryptUpdate,
    FW_C_EncryptFinal,
    FW_C_DecryptInit,
    FW_C_Decrypt,
    FW_C_DecryptUpdate,
    FW_C_DecryptFinal,
    FW_C_DigestInit,
    FW_C_Digest,
    FW_C_DigestUpdate,
    FW_C_DigestKey,
    FW_C_DigestFinal,
    FW_C_SignInit,
    FW_C_Sign,
    FW_C_SignUpdate,
    FW_C_SignFinal,
    FW_C_SignRecoverInit,
    FW_C_SignRecover,
    FW_C_VerifyInit,
    FW_C_Verify,
    FW_C_VerifyUpdate,
    FW_C_VerifyFinal,
    FW_C_VerifyRecoverInit,
    FW_C_VerifyRecover,
    FW_C_DigestEncryptUpdate,
    FW_C_DecryptDigestUpdate,
    FW_C_SignEncryptUpdate,
    FW_C_DecryptVerifyUpdate,
    FW_C_GenerateKey,
    FW_C_GenerateKeyPair,
    FW_C_WrapKey,
    FW_C_UnwrapKey,
    FW_C_DeriveKey,
    FW_C_SeedRandom,
    FW_C_GenerateRandom,
    FW_C_GetFunctionStatus,
    FW_C_CancelFunction,
    FW_COUNT_
};
static const char *const fw_names[FW_COUNT_] = {
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_WaitForSlotEvent",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_GetSessionInfo",
    "C_GetOperationState",
    "C_SetOperationState",
    "C_Login",
    "C_Logout",
    "C_CreateObject",
    "C_CopyObject",
    "C_DestroyObject",
    "C_GetObjectSize",
    "C_GetAttributeValue",
    "C_SetAttributeValue",
    "C_FindObjectsInit",
    "C_FindObjects",
    "C_FindObjectsFinal",
    "C_EncryptInit",
    "C_Encrypt",
    "C_EncryptUpdate",
    "C_EncryptFinal",
    "C_DecryptInit",
    "C_Decrypt",
    "C_DecryptUpdate",
    "C_DecryptFinal",
    "C_DigestInit",
    "C_Digest",
    "C_DigestUpdate",
    "C_DigestKey",
    "C_DigestFinal",
    "C_SignInit",
    "C_Sign",
    "C_SignUpdate",
    "C_SignFinal",
    "C_SignRecoverInit",
    "C_SignRecover",
    "C_VerifyInit",
    "C_Verify",
    "C_VerifyUpdate",
    "C_VerifyFinal",
    "C_VerifyRecoverInit",
    "C_VerifyRecover",
    "C_DigestEncryptUpdate",
    "C_DecryptDigestUpdate",
    "C_SignEncryptUpdate",
    "C_DecryptVerifyUpdate",
    "C_GenerateKey",
    "C_GenerateKeyPair",
    "C_WrapKey",
    "C_UnwrapKey",
    "C_DeriveKey",
    "C_SeedRandom",
    "C_GenerateRandom",
    "C_GetFunctionStatus",
    "C_CancelFunction",
};

static CK_RV fw_C_GetInfo(struct _CK_INFO *info)
{
    CK_RV rv_;
    if (fault_take(FW_C_GetInfo, &rv_))
        return rv_;
    if (real == NULL || real->C_GetInfo == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_GetInfo(info);
}

static int slot_listed(const CK_SLOT_ID *list, CK_ULONG n, CK_SLOT_ID id)
{
    for (CK_ULONG i = 0; i < n; i++)
        if (list[i] == id)
            return 1;
    return 0;
}

static CK_RV fw_C_GetSlotList(unsigned char token_present, CK_SLOT_ID *slot_list, unsigned long *count)
{
    CK_RV rv_;
    if (fault_take(FW_C_GetSlotList, &rv_))
        return rv_;
    if (real == NULL || real->C_GetSlotList == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if (token_present && ctl_token_removed()) {
        /* A removed token: its slot has no token present. */
        if (count == NULL)
            return CKR_ARGUMENTS_BAD;
        *count = 0;
        return CKR_OK;
    }
    unsigned long pad = pad_take(&slot_pad);
    if (pad != 0 && count != NULL) {
        CK_ULONG cap = *count, rn = 0;
        if ((rv_ = real->C_GetSlotList(token_present, NULL, &rn)) != CKR_OK)
            return rv_;
        if (slot_list == NULL || cap < rn + pad) {
            *count = rn + pad;
            return slot_list == NULL ? CKR_OK : CKR_BUFFER_TOO_SMALL;
        }
        if ((rv_ = real->C_GetSlotList(token_present, slot_list, &rn)) != CKR_OK)
            return rv_;
        /* ids the real module does not list (else C_GetTokenInfo would
         * find a real token behind one) */
        CK_SLOT_ID id = 0x47530000ul;
        for (unsigned long i = 0; i < pad; i++, id++) {
            while (slot_listed(slot_list, rn, id))
                id++;
            slot_list[rn + i] = id;
        }
        *count = rn + pad;
        return CKR_OK;
    }
    return real->C_GetSlotList(token_present, slot_list, count);
}

static CK_RV fw_C_GetSlotInfo(CK_SLOT_ID slot_id, struct _CK_SLOT_INFO *info)
{
    CK_RV rv_;
    if (fault_take(FW_C_GetSlotInfo, &rv_))
        return rv_;
    if (real == NULL || real->C_GetSlotInfo == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    rv_ = real->C_GetSlotInfo(slot_id, info);
    if (rv_ == CKR_OK && info != NULL && ctl_token_removed())
        info->flags &= ~(CK_FLAGS)CKF_TOKEN_PRESENT;
    if (rv_ == CKR_OK)
        prof_slot_info_post(info);
    return rv_;
}

static CK_RV fw_C_GetTokenInfo(CK_SLOT_ID slot_id, struct _CK_TOKEN_INFO *info)
{
    CK_RV rv_;
    if (fault_take(FW_C_GetTokenInfo, &rv_))
        return rv_;
    if (real == NULL || real->C_GetTokenInfo == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    rv_ = real->C_GetTokenInfo(slot_id, info);
    if (rv_ == CKR_OK)
        prof_token_info_post(info);
    if (rv_ == CKR_OK && info != NULL)
        info->flags |= ctl_token_flags_now();
    return rv_;
}

static CK_RV fw_C_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID *slot, void *reserved)
{
    CK_RV rv_;
    if (fault_take(FW_C_WaitForSlotEvent, &rv_))
        return rv_;
    if (real == NULL || real->C_WaitForSlotEvent == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_WaitForSlotEvent(flags, slot, reserved);
}

static CK_RV fw_C_GetMechanismList(CK_SLOT_ID slot_id, CK_MECHANISM_TYPE *mechanism_list,
                                   unsigned long *count)
{
    CK_RV rv_;
    if (fault_take(FW_C_GetMechanismList, &rv_))
        return rv_;
    if (real == NULL || real->C_GetMechanismList == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    unsigned long pad = pad_take(&mech_pad);
    if (pad != 0 && count != NULL) {
        CK_ULONG cap = *count, rn = 0;
        if ((rv_ = real->C_GetMechanismList(slot_id, NULL, &rn)) != CKR_OK)
            return rv_;
        if (mechanism_list == NULL || cap < rn + pad) {
            *count = rn + pad;
            return mechanism_list == NULL ? CKR_OK : CKR_BUFFER_TOO_SMALL;
        }
        if ((rv_ = real->C_GetMechanismList(slot_id, mechanism_list, &rn)) != CKR_OK)
            return rv_;
        for (unsigned long i = 0; i < pad; i++)
            mechanism_list[rn + i] = CKM_VENDOR_DEFINED | (0x47530000ul + i);
        *count = rn + pad;
        return CKR_OK;
    }
    rv_ = real->C_GetMechanismList(slot_id, mechanism_list, count);
    if (rv_ == CKR_OK)
        prof_mech_list_post(mechanism_list, count, mechanism_list == NULL);
    return rv_;
}

static CK_RV fw_C_GetMechanismInfo(CK_SLOT_ID slot_id, CK_MECHANISM_TYPE type,
                                   struct _CK_MECHANISM_INFO *info)
{
    CK_RV rv_;
    if (fault_take(FW_C_GetMechanismInfo, &rv_))
        return rv_;
    if (real == NULL || real->C_GetMechanismInfo == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if ((rv_ = prof_mech_info_pre(type)) != CKR_OK)
        return rv_;
    rv_ = real->C_GetMechanismInfo(slot_id, type, info);
    if (rv_ == CKR_OK)
        prof_mech_info_post(type, info);
    return rv_;
}

static CK_RV fw_C_InitToken(CK_SLOT_ID slot_id, unsigned char *pin, unsigned long pin_len,
                            unsigned char *label)
{
    CK_RV rv_;
    if (fault_take(FW_C_InitToken, &rv_))
        return rv_;
    if (real == NULL || real->C_InitToken == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_InitToken(slot_id, pin, pin_len, label);
}

static CK_RV fw_C_InitPIN(CK_SESSION_HANDLE session, unsigned char *pin, unsigned long pin_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_InitPIN, &rv_))
        return rv_;
    if (real == NULL || real->C_InitPIN == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_InitPIN(session, pin, pin_len);
}

static CK_RV fw_C_SetPIN(CK_SESSION_HANDLE session, unsigned char *old_pin, unsigned long old_len,
                         unsigned char *new_pin, unsigned long new_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_SetPIN, &rv_))
        return rv_;
    if (real == NULL || real->C_SetPIN == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_SetPIN(session, old_pin, old_len, new_pin, new_len);
}

static CK_RV fw_C_OpenSession(CK_SLOT_ID slot_id, CK_FLAGS flags, void *application, CK_NOTIFY notify,
                              CK_SESSION_HANDLE *session)
{
    CK_RV rv_;
    if (fault_take(FW_C_OpenSession, &rv_))
        return rv_;
    if (real == NULL || real->C_OpenSession == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if ((rv_ = prof_open_session_pre(flags)) != CKR_OK)
        return rv_;
    rv_ = real->C_OpenSession(slot_id, flags, application, notify, session);
    if (rv_ == CKR_OK && session != NULL)
        prof_session_opened(*session);
    return rv_;
}

static CK_RV fw_C_CloseSession(CK_SESSION_HANDLE session)
{
    CK_RV rv_;
    if (fault_take(FW_C_CloseSession, &rv_))
        return rv_;
    if (real == NULL || real->C_CloseSession == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    rv_ = real->C_CloseSession(session);
    if (rv_ == CKR_OK)
        prof_session_closed(session);
    return rv_;
}

static CK_RV fw_C_CloseAllSessions(CK_SLOT_ID slot_id)
{
    CK_RV rv_;
    if (fault_take(FW_C_CloseAllSessions, &rv_))
        return rv_;
    if (real == NULL || real->C_CloseAllSessions == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    rv_ = real->C_CloseAllSessions(slot_id);
    if (rv_ == CKR_OK)
        prof_all_sessions_closed();
    return rv_;
}

static CK_RV fw_C_GetSessionInfo(CK_SESSION_HANDLE session, struct _CK_SESSION_INFO *info)
{
    CK_RV rv_;
    if (fault_take(FW_C_GetSessionInfo, &rv_))
        return rv_;
    if (real == NULL || real->C_GetSessionInfo == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_GetSessionInfo(session, info);
}

static CK_RV fw_C_GetOperationState(CK_SESSION_HANDLE session, unsigned char *operation_state,
                                    unsigned long *operation_state_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_GetOperationState, &rv_))
        return rv_;
    if (real == NULL || real->C_GetOperationState == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_GetOperationState(session, operation_state, operation_state_len);
}

static CK_RV fw_C_SetOperationState(CK_SESSION_HANDLE session, unsigned char *operation_state,
                                    unsigned long operation_state_len, CK_OBJECT_HANDLE encryption_key,
                                    CK_OBJECT_HANDLE authentiation_key)
{
    CK_RV rv_;
    if (fault_take(FW_C_SetOperationState, &rv_))
        return rv_;
    if (real == NULL || real->C_SetOperationState == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_SetOperationState(session, operation_state, operation_state_len, encryption_key,
                                     authentiation_key);
}

static CK_RV fw_C_Login(CK_SESSION_HANDLE session, CK_USER_TYPE user_type, unsigned char *pin,
                        unsigned long pin_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_Login, &rv_))
        return rv_;
    if (real == NULL || real->C_Login == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if ((rv_ = prof_pinpad(&pin, &pin_len)) != CKR_OK)
        return rv_;
    if (prof_login(session, user_type, pin, pin_len, &rv_))
        return rv_;
    if ((rv_ = prof_pin_counter_pre(user_type)) != CKR_OK)
        return rv_;
    rv_ = prof_pin_counter_post(user_type, real->C_Login(session, user_type, pin, pin_len));
    if (rv_ == CKR_OK || rv_ == CKR_USER_ALREADY_LOGGED_IN)
        prof_login_post(user_type, pin, pin_len);
    return rv_;
}

static CK_RV fw_C_Logout(CK_SESSION_HANDLE session)
{
    CK_RV rv_;
    if (fault_take(FW_C_Logout, &rv_))
        return rv_;
    if (real == NULL || real->C_Logout == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_Logout(session);
}

static CK_RV fw_C_CreateObject(CK_SESSION_HANDLE session, struct _CK_ATTRIBUTE *templ, unsigned long count,
                               CK_OBJECT_HANDLE *object)
{
    CK_RV rv_;
    if (fault_take(FW_C_CreateObject, &rv_))
        return rv_;
    if (real == NULL || real->C_CreateObject == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if (breaks(templ, count))
        return CKR_DEVICE_ERROR;
    if ((rv_ = prof_create_object_pre(templ, count)) != CKR_OK)
        return rv_;
    return real->C_CreateObject(session, templ, count, object);
}

static CK_RV fw_C_CopyObject(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, struct _CK_ATTRIBUTE *templ,
                             unsigned long count, CK_OBJECT_HANDLE *new_object)
{
    CK_RV rv_;
    if (fault_take(FW_C_CopyObject, &rv_))
        return rv_;
    if (real == NULL || real->C_CopyObject == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_CopyObject(session, object, templ, count, new_object);
}

static CK_RV fw_C_DestroyObject(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object)
{
    CK_RV rv_;
    if (fault_take(FW_C_DestroyObject, &rv_))
        return rv_;
    if (real == NULL || real->C_DestroyObject == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_DestroyObject(session, object);
}

static CK_RV fw_C_GetObjectSize(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, unsigned long *size)
{
    CK_RV rv_;
    if (fault_take(FW_C_GetObjectSize, &rv_))
        return rv_;
    if (real == NULL || real->C_GetObjectSize == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_GetObjectSize(session, object, size);
}

static CK_RV fw_C_GetAttributeValue(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                                    struct _CK_ATTRIBUTE *templ, unsigned long count)
{
    CK_RV rv_;
    if (fault_take(FW_C_GetAttributeValue, &rv_))
        return rv_;
    if (real == NULL || real->C_GetAttributeValue == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if (breaks(templ, count))
        return CKR_DEVICE_ERROR;
    rv_ = prof_get_attributes(session, object, templ, count);
    /* A template with an attribute the object lacks is answered so, the
     * others filled (PKCS#11): those are overridden too. */
    if (rv_ == CKR_OK || rv_ == CKR_ATTRIBUTE_TYPE_INVALID || rv_ == CKR_ATTRIBUTE_SENSITIVE) {
        override_bools(templ, count);
        if (private_sensitive_hides(session, object, templ, count) && rv_ == CKR_OK)
            rv_ = CKR_ATTRIBUTE_SENSITIVE;
    }
    return rv_;
}

static CK_RV fw_C_SetAttributeValue(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                                    struct _CK_ATTRIBUTE *templ, unsigned long count)
{
    CK_RV rv_;
    if (fault_take(FW_C_SetAttributeValue, &rv_))
        return rv_;
    if (real == NULL || real->C_SetAttributeValue == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_SetAttributeValue(session, object, templ, count);
}

static CK_RV fw_C_FindObjectsInit(CK_SESSION_HANDLE session, struct _CK_ATTRIBUTE *templ, unsigned long count)
{
    CK_RV rv_;
    if (fault_take(FW_C_FindObjectsInit, &rv_))
        return rv_;
    if (real == NULL || real->C_FindObjectsInit == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_FindObjectsInit(session, templ, count);
}

static CK_RV fw_C_FindObjects(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE *object,
                              unsigned long max_object_count, unsigned long *object_count)
{
    CK_RV rv_;
    if (fault_take(FW_C_FindObjects, &rv_))
        return rv_;
    if (real == NULL || real->C_FindObjects == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    struct timespec now, prev;
    (void)clock_gettime(CLOCK_MONOTONIC, &now);
    pthread_mutex_lock(&fault_mu);
    if (find_batch != 0 && max_object_count > find_batch)
        max_object_count = find_batch;
    prev = last_find;
    last_find = now;
    pthread_mutex_unlock(&fault_mu);
    for (;;) {
        CK_RV rv = real->C_FindObjects(session, object, max_object_count, object_count);
        /* every handle left out: ask again, or the caller takes "none" for the end */
        if (rv != CKR_OK || object == NULL || object_count == NULL || *object_count == 0 ||
            (*object_count = hide_filter(session, object, *object_count, prev)) != 0)
            return rv;
    }
}

static CK_RV fw_C_FindObjectsFinal(CK_SESSION_HANDLE session)
{
    CK_RV rv_;
    if (fault_take(FW_C_FindObjectsFinal, &rv_))
        return rv_;
    if (real == NULL || real->C_FindObjectsFinal == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_FindObjectsFinal(session);
}

static CK_RV fw_C_EncryptInit(CK_SESSION_HANDLE session, struct _CK_MECHANISM *mechanism,
                              CK_OBJECT_HANDLE key)
{
    CK_RV rv_;
    if (fault_take(FW_C_EncryptInit, &rv_))
        return rv_;
    if (real == NULL || real->C_EncryptInit == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if (prof_active())
        return CKR_MECHANISM_INVALID; /* a card encrypts nothing itself */
    return real->C_EncryptInit(session, mechanism, key);
}

static CK_RV fw_C_Encrypt(CK_SESSION_HANDLE session, unsigned char *data, unsigned long data_len,
                          unsigned char *encrypted_data, unsigned long *encrypted_data_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_Encrypt, &rv_))
        return rv_;
    if (real == NULL || real->C_Encrypt == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_Encrypt(session, data, data_len, encrypted_data, encrypted_data_len);
}

static CK_RV fw_C_EncryptUpdate(CK_SESSION_HANDLE session, unsigned char *part, unsigned long part_len,
                                unsigned char *encrypted_part, unsigned long *encrypted_part_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_EncryptUpdate, &rv_))
        return rv_;
    if (real == NULL || real->C_EncryptUpdate == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_EncryptUpdate(session, part, part_len, encrypted_part, encrypted_part_len);
}

static CK_RV fw_C_EncryptFinal(CK_SESSION_HANDLE session, unsigned char *last_encrypted_part,
                               unsigned long *last_encrypted_part_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_EncryptFinal, &rv_))
        return rv_;
    if (real == NULL || real->C_EncryptFinal == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_EncryptFinal(session, last_encrypted_part, last_encrypted_part_len);
}

static int zero_cost; /* GS_P11FAULT_ZERO_COST, read at C_Initialize */

static CK_RV fw_C_DecryptInit(CK_SESSION_HANDLE session, struct _CK_MECHANISM *mechanism,
                              CK_OBJECT_HANDLE key)
{
    CK_RV rv_;
    if (fault_take(FW_C_DecryptInit, &rv_))
        return rv_;
    if (zero_cost)
        return CKR_OK;
    if (real == NULL || real->C_DecryptInit == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if ((rv_ = prof_check_mech(mechanism, 0)) != CKR_OK)
        return rv_;
    rv_ = real->C_DecryptInit(session, mechanism, key);
    if (rv_ == CKR_OK)
        prof_op_init(session, key);
    return rv_;
}

static CK_RV fw_C_Decrypt(CK_SESSION_HANDLE session, unsigned char *encrypted_data,
                          unsigned long encrypted_data_len, unsigned char *data, unsigned long *data_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_Decrypt, &rv_))
        return rv_;
    if (real == NULL || real->C_Decrypt == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if ((rv_ = prof_op_use(session)) != CKR_OK)
        return rv_;
    if (zero_cost) {
        /* The token that costs nothing: a fixed key, at once. */
        unsigned long want = *data_len;
        *data_len = 32;
        if (data == NULL)
            return CKR_OK;
        if (want < 32)
            return CKR_BUFFER_TOO_SMALL;
        for (unsigned i = 0; i < 32; i++)
            data[i] = (unsigned char)i;
        return CKR_OK;
    }
    if (data == NULL) /* a length query is not an operation */
        return real->C_Decrypt(session, encrypted_data, encrypted_data_len, data, data_len);
    struct timespec t0;
    long ns_ = model_begin(&t0);
    rv_ = real->C_Decrypt(session, encrypted_data, encrypted_data_len, data, data_len);
    model_end(&t0, ns_);
    return rv_;
}

static CK_RV fw_C_DecryptUpdate(CK_SESSION_HANDLE session, unsigned char *encrypted_part,
                                unsigned long encrypted_part_len, unsigned char *part,
                                unsigned long *part_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_DecryptUpdate, &rv_))
        return rv_;
    if (real == NULL || real->C_DecryptUpdate == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if ((rv_ = prof_op_use(session)) != CKR_OK)
        return rv_;
    return real->C_DecryptUpdate(session, encrypted_part, encrypted_part_len, part, part_len);
}

static CK_RV fw_C_DecryptFinal(CK_SESSION_HANDLE session, unsigned char *last_part,
                               unsigned long *last_part_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_DecryptFinal, &rv_))
        return rv_;
    if (real == NULL || real->C_DecryptFinal == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_DecryptFinal(session, last_part, last_part_len);
}

static CK_RV fw_C_DigestInit(CK_SESSION_HANDLE session, struct _CK_MECHANISM *mechanism)
{
    CK_RV rv_;
    if (fault_take(FW_C_DigestInit, &rv_))
        return rv_;
    if (real == NULL || real->C_DigestInit == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_DigestInit(session, mechanism);
}

static CK_RV fw_C_Digest(CK_SESSION_HANDLE session, unsigned char *data, unsigned long data_len,
                         unsigned char *digest, unsigned long *digest_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_Digest, &rv_))
        return rv_;
    if (real == NULL || real->C_Digest == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_Digest(session, data, data_len, digest, digest_len);
}

static CK_RV fw_C_DigestUpdate(CK_SESSION_HANDLE session, unsigned char *part, unsigned long part_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_DigestUpdate, &rv_))
        return rv_;
    if (real == NULL || real->C_DigestUpdate == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_DigestUpdate(session, part, part_len);
}

static CK_RV fw_C_DigestKey(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE key)
{
    CK_RV rv_;
    if (fault_take(FW_C_DigestKey, &rv_))
        return rv_;
    if (real == NULL || real->C_DigestKey == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_DigestKey(session, key);
}

static CK_RV fw_C_DigestFinal(CK_SESSION_HANDLE session, unsigned char *digest, unsigned long *digest_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_DigestFinal, &rv_))
        return rv_;
    if (real == NULL || real->C_DigestFinal == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_DigestFinal(session, digest, digest_len);
}

static CK_RV fw_C_SignInit(CK_SESSION_HANDLE session, struct _CK_MECHANISM *mechanism, CK_OBJECT_HANDLE key)
{
    CK_RV rv_;
    if (fault_take(FW_C_SignInit, &rv_))
        return rv_;
    if (real == NULL || real->C_SignInit == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if ((rv_ = prof_check_mech(mechanism, 1)) != CKR_OK)
        return rv_;
    rv_ = real->C_SignInit(session, mechanism, key);
    if (rv_ == CKR_OK)
        prof_op_init(session, key);
    return rv_;
}

static CK_RV fw_C_Sign(CK_SESSION_HANDLE session, unsigned char *data, unsigned long data_len,
                       unsigned char *signature, unsigned long *signature_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_Sign, &rv_))
        return rv_;
    if (real == NULL || real->C_Sign == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if ((rv_ = prof_op_use(session)) != CKR_OK)
        return rv_;
    return real->C_Sign(session, data, data_len, signature, signature_len);
}

static CK_RV fw_C_SignUpdate(CK_SESSION_HANDLE session, unsigned char *part, unsigned long part_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_SignUpdate, &rv_))
        return rv_;
    if (real == NULL || real->C_SignUpdate == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if ((rv_ = prof_op_use(session)) != CKR_OK)
        return rv_;
    return real->C_SignUpdate(session, part, part_len);
}

static CK_RV fw_C_SignFinal(CK_SESSION_HANDLE session, unsigned char *signature, unsigned long *signature_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_SignFinal, &rv_))
        return rv_;
    if (real == NULL || real->C_SignFinal == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_SignFinal(session, signature, signature_len);
}

static CK_RV fw_C_SignRecoverInit(CK_SESSION_HANDLE session, struct _CK_MECHANISM *mechanism,
                                  CK_OBJECT_HANDLE key)
{
    CK_RV rv_;
    if (fault_take(FW_C_SignRecoverInit, &rv_))
        return rv_;
    if (real == NULL || real->C_SignRecoverInit == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_SignRecoverInit(session, mechanism, key);
}

static CK_RV fw_C_SignRecover(CK_SESSION_HANDLE session, unsigned char *data, unsigned long data_len,
                              unsigned char *signature, unsigned long *signature_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_SignRecover, &rv_))
        return rv_;
    if (real == NULL || real->C_SignRecover == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_SignRecover(session, data, data_len, signature, signature_len);
}

static CK_RV fw_C_VerifyInit(CK_SESSION_HANDLE session, struct _CK_MECHANISM *mechanism, CK_OBJECT_HANDLE key)
{
    CK_RV rv_;
    if (fault_take(FW_C_VerifyInit, &rv_))
        return rv_;
    if (real == NULL || real->C_VerifyInit == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if (prof_active())
        return CKR_MECHANISM_INVALID; /* verification is the host's business */
    return real->C_VerifyInit(session, mechanism, key);
}

static CK_RV fw_C_Verify(CK_SESSION_HANDLE session, unsigned char *data, unsigned long data_len,
                         unsigned char *signature, unsigned long signature_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_Verify, &rv_))
        return rv_;
    if (real == NULL || real->C_Verify == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_Verify(session, data, data_len, signature, signature_len);
}

static CK_RV fw_C_VerifyUpdate(CK_SESSION_HANDLE session, unsigned char *part, unsigned long part_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_VerifyUpdate, &rv_))
        return rv_;
    if (real == NULL || real->C_VerifyUpdate == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_VerifyUpdate(session, part, part_len);
}

static CK_RV fw_C_VerifyFinal(CK_SESSION_HANDLE session, unsigned char *signature,
                              unsigned long signature_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_VerifyFinal, &rv_))
        return rv_;
    if (real == NULL || real->C_VerifyFinal == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_VerifyFinal(session, signature, signature_len);
}

static CK_RV fw_C_VerifyRecoverInit(CK_SESSION_HANDLE session, struct _CK_MECHANISM *mechanism,
                                    CK_OBJECT_HANDLE key)
{
    CK_RV rv_;
    if (fault_take(FW_C_VerifyRecoverInit, &rv_))
        return rv_;
    if (real == NULL || real->C_VerifyRecoverInit == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_VerifyRecoverInit(session, mechanism, key);
}

static CK_RV fw_C_VerifyRecover(CK_SESSION_HANDLE session, unsigned char *signature,
                                unsigned long signature_len, unsigned char *data, unsigned long *data_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_VerifyRecover, &rv_))
        return rv_;
    if (real == NULL || real->C_VerifyRecover == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_VerifyRecover(session, signature, signature_len, data, data_len);
}

static CK_RV fw_C_DigestEncryptUpdate(CK_SESSION_HANDLE session, unsigned char *part, unsigned long part_len,
                                      unsigned char *encrypted_part, unsigned long *encrypted_part_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_DigestEncryptUpdate, &rv_))
        return rv_;
    if (real == NULL || real->C_DigestEncryptUpdate == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_DigestEncryptUpdate(session, part, part_len, encrypted_part, encrypted_part_len);
}

static CK_RV fw_C_DecryptDigestUpdate(CK_SESSION_HANDLE session, unsigned char *encrypted_part,
                                      unsigned long encrypted_part_len, unsigned char *part,
                                      unsigned long *part_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_DecryptDigestUpdate, &rv_))
        return rv_;
    if (real == NULL || real->C_DecryptDigestUpdate == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_DecryptDigestUpdate(session, encrypted_part, encrypted_part_len, part, part_len);
}

static CK_RV fw_C_SignEncryptUpdate(CK_SESSION_HANDLE session, unsigned char *part, unsigned long part_len,
                                    unsigned char *encrypted_part, unsigned long *encrypted_part_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_SignEncryptUpdate, &rv_))
        return rv_;
    if (real == NULL || real->C_SignEncryptUpdate == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_SignEncryptUpdate(session, part, part_len, encrypted_part, encrypted_part_len);
}

static CK_RV fw_C_DecryptVerifyUpdate(CK_SESSION_HANDLE session, unsigned char *encrypted_part,
                                      unsigned long encrypted_part_len, unsigned char *part,
                                      unsigned long *part_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_DecryptVerifyUpdate, &rv_))
        return rv_;
    if (real == NULL || real->C_DecryptVerifyUpdate == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_DecryptVerifyUpdate(session, encrypted_part, encrypted_part_len, part, part_len);
}

static CK_RV fw_C_GenerateKey(CK_SESSION_HANDLE session, struct _CK_MECHANISM *mechanism,
                              struct _CK_ATTRIBUTE *templ, unsigned long count, CK_OBJECT_HANDLE *key)
{
    CK_RV rv_;
    if (fault_take(FW_C_GenerateKey, &rv_))
        return rv_;
    if (real == NULL || real->C_GenerateKey == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if (breaks(templ, count))
        return CKR_DEVICE_ERROR;
    if ((rv_ = prof_unsupported()) != CKR_OK)
        return rv_;
    return real->C_GenerateKey(session, mechanism, templ, count, key);
}

static CK_RV fw_C_GenerateKeyPair(CK_SESSION_HANDLE session, struct _CK_MECHANISM *mechanism,
                                  struct _CK_ATTRIBUTE *public_key_template,
                                  unsigned long public_key_attribute_count,
                                  struct _CK_ATTRIBUTE *private_key_template,
                                  unsigned long private_key_attribute_count, CK_OBJECT_HANDLE *public_key,
                                  CK_OBJECT_HANDLE *private_key)
{
    CK_RV rv_;
    if (fault_take(FW_C_GenerateKeyPair, &rv_))
        return rv_;
    if (real == NULL || real->C_GenerateKeyPair == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if (breaks(public_key_template, public_key_attribute_count) ||
        breaks(private_key_template, private_key_attribute_count))
        return CKR_DEVICE_ERROR;
    if ((rv_ = prof_check_mech(mechanism, 0)) != CKR_OK ||
        (rv_ = prof_rsa_size_check(mechanism, public_key_template, public_key_attribute_count)) != CKR_OK ||
        (rv_ = prof_check_template(public_key_template, public_key_attribute_count)) != CKR_OK ||
        (rv_ = prof_check_template(private_key_template, private_key_attribute_count)) != CKR_OK)
        return rv_;
    {
        CK_ATTRIBUTE *card = NULL;
        CK_ULONG ncard = 0;
        if ((rv_ = prof_keypair_private(private_key_template, private_key_attribute_count, &card, &ncard)) != CKR_OK)
            return rv_;
        rv_ = real->C_GenerateKeyPair(session, mechanism, public_key_template, public_key_attribute_count,
                                      card != NULL ? card : private_key_template,
                                      card != NULL ? ncard : private_key_attribute_count, public_key, private_key);
        free(card);
        return rv_;
    }
}

static CK_RV fw_C_WrapKey(CK_SESSION_HANDLE session, struct _CK_MECHANISM *mechanism,
                          CK_OBJECT_HANDLE wrapping_key, CK_OBJECT_HANDLE key, unsigned char *wrapped_key,
                          unsigned long *wrapped_key_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_WrapKey, &rv_))
        return rv_;
    if (real == NULL || real->C_WrapKey == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if ((rv_ = prof_wrap_pre(mechanism)) != CKR_OK)
        return rv_;
    return real->C_WrapKey(session, mechanism, wrapping_key, key, wrapped_key, wrapped_key_len);
}

static CK_RV fw_C_UnwrapKey(CK_SESSION_HANDLE session, struct _CK_MECHANISM *mechanism,
                            CK_OBJECT_HANDLE unwrapping_key, unsigned char *wrapped_key,
                            unsigned long wrapped_key_len, struct _CK_ATTRIBUTE *templ,
                            unsigned long attribute_count, CK_OBJECT_HANDLE *key)
{
    CK_RV rv_;
    if (fault_take(FW_C_UnwrapKey, &rv_))
        return rv_;
    if (real == NULL || real->C_UnwrapKey == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if ((rv_ = prof_unsupported()) != CKR_OK)
        return rv_;
    struct timespec t0;
    long ns_ = model_begin(&t0);
    rv_ = real->C_UnwrapKey(session, mechanism, unwrapping_key, wrapped_key, wrapped_key_len, templ,
                            attribute_count, key);
    model_end(&t0, ns_);
    return rv_;
}

static CK_RV fw_C_DeriveKey(CK_SESSION_HANDLE session, struct _CK_MECHANISM *mechanism,
                            CK_OBJECT_HANDLE base_key, struct _CK_ATTRIBUTE *templ,
                            unsigned long attribute_count, CK_OBJECT_HANDLE *key)
{
    CK_RV rv_;
    if (fault_take(FW_C_DeriveKey, &rv_))
        return rv_;
    if (real == NULL || real->C_DeriveKey == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    if ((rv_ = prof_unsupported()) != CKR_OK)
        return rv_;
    int done_ = 0;
    rv_ = prof_derive(session, mechanism, base_key, templ, attribute_count, key, &done_);
    if (done_)
        return rv_;
    struct timespec t0;
    long ns_ = model_begin(&t0);
    rv_ = real->C_DeriveKey(session, mechanism, base_key, templ, attribute_count, key);
    model_end(&t0, ns_);
    return rv_;
}

static CK_RV fw_C_SeedRandom(CK_SESSION_HANDLE session, unsigned char *seed, unsigned long seed_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_SeedRandom, &rv_))
        return rv_;
    if (real == NULL || real->C_SeedRandom == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_SeedRandom(session, seed, seed_len);
}

static CK_RV fw_C_GenerateRandom(CK_SESSION_HANDLE session, unsigned char *random_data,
                                 unsigned long random_len)
{
    CK_RV rv_;
    if (fault_take(FW_C_GenerateRandom, &rv_))
        return rv_;
    if (real == NULL || real->C_GenerateRandom == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_GenerateRandom(session, random_data, random_len);
}

static CK_RV fw_C_GetFunctionStatus(CK_SESSION_HANDLE session)
{
    CK_RV rv_;
    if (fault_take(FW_C_GetFunctionStatus, &rv_))
        return rv_;
    if (real == NULL || real->C_GetFunctionStatus == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_GetFunctionStatus(session);
}

static CK_RV fw_C_CancelFunction(CK_SESSION_HANDLE session)
{
    CK_RV rv_;
    if (fault_take(FW_C_CancelFunction, &rv_))
        return rv_;
    if (real == NULL || real->C_CancelFunction == NULL)
        return real == NULL ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_FUNCTION_NOT_SUPPORTED;
    return real->C_CancelFunction(session);
}

/* ---- fault table -------------------------------------------------------- */

static struct {
    CK_RV rv;
    int remaining; /* > 0: that many more; < 0: forever; 0: none */
} faults[FW_COUNT_];
static unsigned long calls[FW_COUNT_];

static int fw_lookup(const char *func)
{
    int i;

    for (i = 0; func != NULL && i < FW_COUNT_; i++)
        if (strcmp(fw_names[i], func) == 0)
            return i;
    return -1;
}

/* ---- out-of-process control file (GS_P11FAULT_CONTROL) ---------------- */

#define CTL_RULES_MAX 32
#define CTL_FILE_MAX 8192
#define CTL_ALL (-1)

static struct {
    int idx; /* fw_index, or CTL_ALL */
    CK_RV rv;
    int remaining; /* > 0: that many more; < 0: forever; 0: used up */
    int skip;      /* calls still to pass through before the rule applies */
} ctl_rules[CTL_RULES_MAX];
static unsigned ctl_nrules;
static int ctl_inited;
static const char *ctl_path; /* NULL: no control file */
static struct stat ctl_st;   /* of the file last read */
static int ctl_have_st;
static int ctl_removed; /* a "*" removal rule is in force */
#define CTL_BOOLS_MAX 8
static struct {
    CK_ATTRIBUTE_TYPE type;
    int value;
} ctl_bools[CTL_BOOLS_MAX];
static unsigned ctl_nbools;
static CK_FLAGS ctl_token_flags; /* "tokenflags": added to C_GetTokenInfo's flags */
static CK_FLAGS api_token_flags; /* p11fault_token_flags(): the same, set in-process */
static int ctl_logout_pending; /* a "logout" line was just read */
/* "delay FUNC MS": each call of FUNC waits MS milliseconds before it is
 * forwarded, so that two processes' calls overlap for certain (a race
 * between two key generations made reliable). 0: no delay. */
static long ctl_delay_ms[FW_COUNT_];
/* "hide LABEL [MS]": objects left out of C_FindObjects' answers. */
#define CTL_HIDES_MAX 4
#define CTL_HIDE_LABEL_MAX 128
static struct {
    char label[CTL_HIDE_LABEL_MAX + 1];
    size_t len; /* label's length: CKA_LABEL is compared as counted bytes */
    long ms;    /* the pause before a search that shows it; < 0: none does */
    int seen; /* a call has hidden it (the first always does) */
    int lag;  /* "lag": hidden until ms after first, the first hiding call */
    struct timespec first;
} ctl_hides[CTL_HIDES_MAX];
static unsigned ctl_nhides;
/* A lost connection (a network HSM's client, p11-kit's RPC after its
 * server died): every call fails with CKR_DEVICE_ERROR until the module
 * is finalized and initialised again. */
static int disconnected;
static CK_ATTRIBUTE_TYPE break_attr; /* 0: none */

/* A template with the attribute that breaks the connection (p11-kit's RPC
 * server dying on it): disconnected from now on. */
static int breaks(const CK_ATTRIBUTE *t, CK_ULONG n)
{
    CK_ULONG i;
    int hit = 0;

    pthread_mutex_lock(&fault_mu);
    for (i = 0; break_attr != 0 && t != NULL && i < n; i++)
        if (t[i].type == break_attr)
            hit = 1;
    if (hit)
        disconnected = 1;
    pthread_mutex_unlock(&fault_mu);
    return hit;
}

static const struct {
    const char *name;
    CK_ATTRIBUTE_TYPE type;
} cka_names[] = {
    {"CKA_TOKEN", CKA_TOKEN},
    {"CKA_PRIVATE", CKA_PRIVATE},
    {"CKA_SENSITIVE", CKA_SENSITIVE},
    {"CKA_EXTRACTABLE", CKA_EXTRACTABLE},
    {"CKA_NEVER_EXTRACTABLE", CKA_NEVER_EXTRACTABLE},
    {"CKA_ALWAYS_SENSITIVE", CKA_ALWAYS_SENSITIVE},
    {"CKA_MODIFIABLE", CKA_MODIFIABLE},
    {"CKA_DECRYPT", CKA_DECRYPT},
    {"CKA_ENCRYPT", CKA_ENCRYPT},
    {"CKA_SIGN", CKA_SIGN},
    {"CKA_VERIFY", CKA_VERIFY},
    {"CKA_WRAP", CKA_WRAP},
    {"CKA_UNWRAP", CKA_UNWRAP},
    {"CKA_DERIVE", CKA_DERIVE},
};

static const struct {
    const char *name;
    CK_RV rv;
} ckr_names[] = {
    {"CKR_GENERAL_ERROR", CKR_GENERAL_ERROR},
    {"CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED},
    {"CKR_HOST_MEMORY", CKR_HOST_MEMORY},
    {"CKR_DEVICE_ERROR", CKR_DEVICE_ERROR},
    {"CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY},
    {"CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED},
    {"CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT},
    {"CKR_TOKEN_NOT_RECOGNIZED", CKR_TOKEN_NOT_RECOGNIZED},
    {"CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID},
    {"CKR_SESSION_CLOSED", CKR_SESSION_CLOSED},
    {"CKR_SESSION_COUNT", CKR_SESSION_COUNT},
    {"CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN},
    {"CKR_USER_PIN_NOT_INITIALIZED", CKR_USER_PIN_NOT_INITIALIZED},
    {"CKR_PIN_INCORRECT", CKR_PIN_INCORRECT},
    {"CKR_PIN_LOCKED", CKR_PIN_LOCKED},
    {"CKR_KEY_HANDLE_INVALID", CKR_KEY_HANDLE_INVALID},
    {"CKR_OBJECT_HANDLE_INVALID", CKR_OBJECT_HANDLE_INVALID},
    {"CKR_OPERATION_ACTIVE", CKR_OPERATION_ACTIVE},
    {"CKR_OPERATION_NOT_INITIALIZED", CKR_OPERATION_NOT_INITIALIZED},
    {"CKR_ENCRYPTED_DATA_INVALID", CKR_ENCRYPTED_DATA_INVALID},
    {"CKR_MECHANISM_INVALID", CKR_MECHANISM_INVALID},
    {"CKR_ARGUMENTS_BAD", CKR_ARGUMENTS_BAD},
    {"CKR_FUNCTION_NOT_SUPPORTED", CKR_FUNCTION_NOT_SUPPORTED},
    {"CKR_CRYPTOKI_NOT_INITIALIZED", CKR_CRYPTOKI_NOT_INITIALIZED},
};

static int is_removal_rv(CK_RV rv)
{
    return rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT;
}

/* Calls a "*" rule leaves alone: loading, and the slot view (which a
 * removal rule changes in its own way). */
static int ctl_exempt(int idx)
{
    return idx == FW_C_Initialize || idx == FW_C_Finalize || idx == FW_C_GetInfo || idx == FW_C_GetSlotList ||
           idx == FW_C_GetSlotInfo || idx == FW_C_WaitForSlotEvent;
}

/* Calls on a slot (not a session): with the token removed they answer
 * CKR_TOKEN_NOT_PRESENT. */
static int slot_call(int idx)
{
    return idx == FW_C_GetTokenInfo || idx == FW_C_GetMechanismList || idx == FW_C_GetMechanismInfo ||
           idx == FW_C_InitToken || idx == FW_C_OpenSession || idx == FW_C_CloseAllSessions;
}

/* Next whitespace-separated word of *p (NUL-terminated in place). */
static char *next_word(char **p)
{
    char *s = *p, *w;

    while (*s == ' ' || *s == '\t' || *s == '\r')
        s++;
    if (*s == '\0' || *s == '#') {
        *p = s;
        return NULL;
    }
    w = s;
    while (*s != '\0' && *s != ' ' && *s != '\t' && *s != '\r')
        s++;
    if (*s != '\0')
        *s++ = '\0';
    *p = s;
    return w;
}

static int parse_rv(const char *w, CK_RV *rv)
{
    char *end = NULL;
    unsigned long v;
    size_t i;

    for (i = 0; i < sizeof(ckr_names) / sizeof(ckr_names[0]); i++)
        if (strcmp(ckr_names[i].name, w) == 0) {
            *rv = ckr_names[i].rv;
            return 0;
        }
    v = strtoul(w, &end, 0);
    if (end == w || *end != '\0' || v == 0)
        return -1;
    *rv = (CK_RV)v;
    return 0;
}

/* "bool ATTR 0|1": an attribute override. Called locked. */
static void ctl_parse_bool(const char *attr, const char *val)
{
    CK_ATTRIBUTE_TYPE type = 0;
    char *end = NULL;
    size_t i;
    int found = 0;

    if (attr == NULL || val == NULL || (strcmp(val, "0") != 0 && strcmp(val, "1") != 0) ||
        ctl_nbools >= CTL_BOOLS_MAX) {
        fprintf(stderr, "p11fault: ignoring control line: bool %.60s\n", attr ? attr : "");
        return;
    }
    for (i = 0; i < sizeof(cka_names) / sizeof(cka_names[0]) && !found; i++)
        if (strcmp(cka_names[i].name, attr) == 0) {
            type = cka_names[i].type;
            found = 1;
        }
    if (!found) {
        type = (CK_ATTRIBUTE_TYPE)strtoul(attr, &end, 0);
        if (end == attr || *end != '\0') {
            fprintf(stderr, "p11fault: ignoring control line: bool %.60s\n", attr);
            return;
        }
    }
    ctl_bools[ctl_nbools].type = type;
    ctl_bools[ctl_nbools].value = val[0] == '1';
    ctl_nbools++;
}

static CK_FLAGS ctl_token_flags_now(void)
{
    CK_FLAGS f;

    pthread_mutex_lock(&fault_mu);
    f = ctl_token_flags | api_token_flags;
    pthread_mutex_unlock(&fault_mu);
    return f;
}

void p11fault_token_flags(CK_FLAGS flags)
{
    pthread_mutex_lock(&fault_mu);
    api_token_flags = flags;
    pthread_mutex_unlock(&fault_mu);
}

/* One word of a "tokenflags" line. Called locked. */
static void ctl_parse_token_flag(const char *w)
{
    static const struct {
        const char *name;
        CK_FLAGS flag;
    } names[] = {
        {"CKF_USER_PIN_COUNT_LOW", CKF_USER_PIN_COUNT_LOW}, {"CKF_USER_PIN_FINAL_TRY", CKF_USER_PIN_FINAL_TRY},
        {"CKF_USER_PIN_LOCKED", CKF_USER_PIN_LOCKED},       {"CKF_SO_PIN_COUNT_LOW", CKF_SO_PIN_COUNT_LOW},
        {"CKF_SO_PIN_FINAL_TRY", CKF_SO_PIN_FINAL_TRY},     {"CKF_SO_PIN_LOCKED", CKF_SO_PIN_LOCKED},
        {"CKF_USER_PIN_TO_BE_CHANGED", CKF_USER_PIN_TO_BE_CHANGED},
    };
    char *end = NULL;
    unsigned long v;

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(names[i].name, w) == 0) {
            ctl_token_flags |= names[i].flag;
            return;
        }
    v = strtoul(w, &end, 0);
    if (end == w || *end != '\0') {
        fprintf(stderr, "p11fault: ignoring control word: tokenflags %.60s\n", w);
        return;
    }
    ctl_token_flags |= (CK_FLAGS)v;
}

/* A rule's number word w (min..1000000) into *out; dflt when w is NULL
 * (no such word). -1 if w is no such number. */
static int ctl_number(const char *w, long min, int dflt, int *out)
{
    char *end = NULL;
    long n;

    *out = dflt;
    if (w == NULL)
        return 0;
    n = strtol(w, &end, 10);
    if (end == w || *end != '\0' || n < min || n > 1000000)
        return -1;
    *out = (int)n;
    return 0;
}

/* Parses the control file's text into the rule table. Called locked. */
static void ctl_parse_locked(char *text)
{
    char *line = text, *nl, *p, *wf, *wr, *wc, *ws;
    CK_RV rv;
    int idx, count, skip;

    ctl_nrules = 0;
    ctl_nbools = 0;
    ctl_nhides = 0;
    ctl_token_flags = 0;
    memset(ctl_delay_ms, 0, sizeof(ctl_delay_ms));
    for (; line != NULL && ctl_nrules < CTL_RULES_MAX; line = nl) {
        if ((nl = strchr(line, '\n')) != NULL)
            *nl++ = '\0';
        p = line;
        if ((wf = next_word(&p)) == NULL)
            continue;
        wr = next_word(&p);
        wc = next_word(&p);
        ws = next_word(&p);
        if (strcmp(wf, "logout") == 0) {
            ctl_logout_pending = 1;
            continue;
        }
        if (strcmp(wf, "disconnect") == 0) {
            disconnected = 1;
            continue;
        }
        if (strcmp(wf, "bool") == 0) {
            ctl_parse_bool(wr, wc);
            continue;
        }
        if (strcmp(wf, "delay") == 0) {
            char *end = NULL;
            long ms = wc != NULL ? strtol(wc, &end, 10) : -1;
            idx = wr != NULL ? fw_lookup(wr) : -1;
            if (idx < 0 || end == wc || (end != NULL && *end != '\0') || ms < 0 || ms > 60000)
                fprintf(stderr, "p11fault: ignoring control line: delay %.80s\n", wr ? wr : "");
            else
                ctl_delay_ms[idx] = ms;
            continue;
        }
        if (strcmp(wf, "hide") == 0 || strcmp(wf, "lag") == 0) {
            char *end = NULL;
            int lag = strcmp(wf, "lag") == 0;
            long ms = wc != NULL ? strtol(wc, &end, 10) : -1;
            if (wr == NULL || strlen(wr) > CTL_HIDE_LABEL_MAX || ctl_nhides >= CTL_HIDES_MAX ||
                (lag && wc == NULL) || (wc != NULL && (end == wc || *end != '\0' || ms < 0 || ms > 600000))) {
                fprintf(stderr, "p11fault: ignoring control line: %s %.80s\n", wf, wr ? wr : "");
                continue;
            }
            ctl_hides[ctl_nhides].len = strlen(wr);
            memcpy(ctl_hides[ctl_nhides].label, wr, ctl_hides[ctl_nhides].len + 1);
            ctl_hides[ctl_nhides].ms = ms;
            ctl_hides[ctl_nhides].lag = lag;
            ctl_hides[ctl_nhides].seen = 0;
            ctl_nhides++;
            continue;
        }
        if (strcmp(wf, "tokenflags") == 0) {
            if (wr != NULL)
                ctl_parse_token_flag(wr);
            for (char *w = wc; w != NULL; w = w == wc ? ws : next_word(&p))
                ctl_parse_token_flag(w);
            continue;
        }
        idx = strcmp(wf, "*") == 0 ? CTL_ALL : fw_lookup(wf);
        /* a bad count or skip makes the line invalid */
        if (ctl_number(wc, 1, -1, &count) != 0 || ctl_number(ws, 0, 0, &skip) != 0)
            wr = NULL;
        if ((idx < 0 && idx != CTL_ALL) || wr == NULL || parse_rv(wr, &rv) != 0) {
            fprintf(stderr, "p11fault: ignoring control line: %.80s\n", wf);
            continue;
        }
        ctl_rules[ctl_nrules].idx = idx;
        ctl_rules[ctl_nrules].rv = rv;
        ctl_rules[ctl_nrules].remaining = count;
        ctl_rules[ctl_nrules].skip = skip;
        ctl_nrules++;
    }
}

static int ctl_removal_active_locked(void)
{
    unsigned i;

    for (i = 0; i < ctl_nrules; i++)
        if (ctl_rules[i].idx == CTL_ALL && ctl_rules[i].remaining != 0 && is_removal_rv(ctl_rules[i].rv))
            return 1;
    return 0;
}

/* Re-reads the control file if it changed (a stat per call). Returns 1
 * when a removal rule just came into force: the caller closes the real
 * sessions (unlocked). Called locked. */
static int ctl_refresh_locked(void)
{
    struct stat st;
    char *text = NULL;
    FILE *f = NULL;
    size_t n = 0;
    int was_removed = ctl_removed;

    if (!ctl_inited) {
        const char *p = getenv("GS_P11FAULT_CONTROL");
        ctl_path = p != NULL && *p != '\0' ? p : NULL;
        ctl_inited = 1;
    }
    if (ctl_path == NULL)
        return 0;
    if (stat(ctl_path, &st) != 0) {
        ctl_nrules = 0; /* absent: pass-through */
        ctl_nbools = 0;
        ctl_nhides = 0;
        memset(ctl_delay_ms, 0, sizeof(ctl_delay_ms));
        ctl_token_flags = 0;
        ctl_have_st = 0;
        ctl_removed = 0;
        return 0;
    }
    if (ctl_have_st && st.st_ino == ctl_st.st_ino && st.st_dev == ctl_st.st_dev && st.st_size == ctl_st.st_size &&
        st.st_mtim.tv_sec == ctl_st.st_mtim.tv_sec && st.st_mtim.tv_nsec == ctl_st.st_mtim.tv_nsec)
        return 0;
    ctl_st = st;
    ctl_have_st = 1;
    ctl_nrules = 0;
    ctl_nbools = 0;
    ctl_nhides = 0;
    ctl_token_flags = 0;
    if ((text = calloc(1, CTL_FILE_MAX + 1)) != NULL && (f = fopen(ctl_path, "r")) != NULL) {
        n = fread(text, 1, CTL_FILE_MAX, f);
        text[n] = '\0';
        ctl_parse_locked(text);
    }
    if (f != NULL)
        fclose(f);
    free(text);
    ctl_removed = ctl_removal_active_locked();
    return ctl_removed && !was_removed;
}

/* The first control rule for this call, if any. Called locked. */
static int ctl_take_locked(int idx, CK_RV *rv)
{
    unsigned i;

    for (i = 0; i < ctl_nrules; i++) {
        if (ctl_rules[i].remaining == 0)
            continue;
        if (ctl_rules[i].idx != idx && (ctl_rules[i].idx != CTL_ALL || ctl_exempt(idx)))
            continue;
        if (ctl_rules[i].skip > 0) {
            ctl_rules[i].skip--;
            continue;
        }
        *rv = ctl_rules[i].rv;
        if (ctl_rules[i].idx == CTL_ALL && is_removal_rv(*rv) && slot_call(idx))
            *rv = CKR_TOKEN_NOT_PRESENT;
        if (ctl_rules[i].remaining > 0)
            ctl_rules[i].remaining--;
        if (ctl_rules[i].remaining == 0)
            ctl_removed = ctl_removal_active_locked();
        return 1;
    }
    return 0;
}

/* "hide" rules: drops from h[0..n) the objects whose label a rule in
 * force names; returns how many are left. The labels are read unlocked
 * (a real call). */
static unsigned long hide_filter(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE *h, unsigned long n,
                                 struct timespec prev)
{
    unsigned long kept = 0;
    struct timespec now;
    unsigned nh;

    (void)clock_gettime(CLOCK_MONOTONIC, &now);
    pthread_mutex_lock(&fault_mu);
    nh = ctl_nhides;
    pthread_mutex_unlock(&fault_mu);
    if (nh == 0)
        return n;
    for (unsigned long i = 0; i < n; i++) {
        char label[CTL_HIDE_LABEL_MAX + 1];
        CK_ATTRIBUTE a = {CKA_LABEL, label, CTL_HIDE_LABEL_MAX};
        int hide = 0;
        if (real->C_GetAttributeValue(session, h[i], &a, 1) == CKR_OK && a.ulValueLen <= CTL_HIDE_LABEL_MAX) {
            label[a.ulValueLen] = '\0';
            pthread_mutex_lock(&fault_mu);
            /* Bounded by the array as well as the count, and compared as
             * the counted bytes CKA_LABEL is (a label may hold a NUL): a
             * strcmp here was GCC's -Wstringop-overread at -O2/-O3 with
             * -Werror, which broke every Release build. */
            for (unsigned r = 0; r < ctl_nhides && r < CTL_HIDES_MAX && !hide; r++) {
                if (ctl_hides[r].len != a.ulValueLen || memcmp(ctl_hides[r].label, label, a.ulValueLen) != 0)
                    continue;
                long quiet = (long)(now.tv_sec - prev.tv_sec) * 1000 + (now.tv_nsec - prev.tv_nsec) / 1000000;
                if (!ctl_hides[r].seen)
                    ctl_hides[r].first = now;
                long since = (long)(now.tv_sec - ctl_hides[r].first.tv_sec) * 1000 +
                             (now.tv_nsec - ctl_hides[r].first.tv_nsec) / 1000000;
                hide = !ctl_hides[r].seen || ctl_hides[r].ms < 0 ||
                       (ctl_hides[r].lag ? since < ctl_hides[r].ms : quiet < ctl_hides[r].ms);
                ctl_hides[r].seen = 1;
            }
            pthread_mutex_unlock(&fault_mu);
        }
        if (!hide)
            h[kept++] = h[i];
    }
    return kept;
}

static int ctl_token_removed(void)
{
    int r;

    pthread_mutex_lock(&fault_mu);
    r = ctl_removed;
    pthread_mutex_unlock(&fault_mu);
    return r;
}

static void close_real_sessions(void);
static void logout_real(void);

/* Writes every function's call count to GS_P11FAULT_COUNTS (see above).
 * Called locked. */
static void counts_write_locked(void)
{
    static int inited;
    static const char *path;
    char tmp[4096];
    FILE *f;

    if (!inited) {
        path = getenv("GS_P11FAULT_COUNTS");
        inited = 1;
    }
    if (path == NULL || snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
        return;
    if ((f = fopen(tmp, "w")) == NULL)
        return;
    for (int i = 0; i < FW_COUNT_; i++)
        fprintf(f, "%s %lu\n", fw_names[i], calls[i]);
    if (fclose(f) == 0)
        rename(tmp, path);
}

static int fault_take(int idx, CK_RV *rv)
{
    int hit = 0, removed_now, logout_now;
    long delay_ms;

    pthread_mutex_lock(&fault_mu);
    calls[idx]++;
    counts_write_locked();
    removed_now = ctl_refresh_locked();
    logout_now = ctl_logout_pending && idx != FW_C_Initialize && idx != FW_C_Finalize;
    if (logout_now)
        ctl_logout_pending = 0;
    if (disconnected && idx != FW_C_Initialize && idx != FW_C_Finalize) {
        *rv = CKR_DEVICE_ERROR;
        hit = 1;
    } else if (faults[idx].remaining != 0) {
        *rv = faults[idx].rv;
        if (faults[idx].remaining > 0)
            faults[idx].remaining--;
        hit = 1;
    } else {
        hit = ctl_take_locked(idx, rv);
    }
    delay_ms = ctl_delay_ms[idx];
    pthread_mutex_unlock(&fault_mu);
    if (delay_ms > 0) {
        struct timespec d = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
        while (nanosleep(&d, &d) != 0 && errno == EINTR)
            ;
    }
    /* A removed token loses every session and its login. */
    if (removed_now)
        close_real_sessions();
    if (logout_now)
        logout_real();
    return hit;
}

void p11fault_inject(const char *func, CK_RV rv, int n)
{
    int i = fw_lookup(func);

    if (i < 0)
        return;
    pthread_mutex_lock(&fault_mu);
    faults[i].rv = rv;
    faults[i].remaining = n;
    pthread_mutex_unlock(&fault_mu);
}

#define OVERRIDE_MAX 8
static struct {
    CK_ATTRIBUTE_TYPE type;
    int value; /* -1: slot unused */
} overrides[OVERRIDE_MAX] = {{0, -1}, {0, -1}, {0, -1}, {0, -1}, {0, -1}, {0, -1}, {0, -1}, {0, -1}};

void p11fault_override_bool(CK_ATTRIBUTE_TYPE type, int value)
{
    int i, slot = -1;

    pthread_mutex_lock(&fault_mu);
    for (i = 0; i < OVERRIDE_MAX; i++) {
        if (overrides[i].value >= 0 && overrides[i].type == type) {
            slot = i;
            break;
        }
        if (overrides[i].value < 0 && slot < 0)
            slot = i;
    }
    if (slot >= 0) {
        overrides[slot].type = type;
        overrides[slot].value = value < 0 ? -1 : value != 0;
    }
    pthread_mutex_unlock(&fault_mu);
}

static void override_bools(CK_ATTRIBUTE *templ, CK_ULONG n)
{
    CK_ULONG j;
    int i;

    pthread_mutex_lock(&fault_mu);
    for (i = 0; i < OVERRIDE_MAX; i++) {
        if (overrides[i].value < 0)
            continue;
        for (j = 0; j < n; j++)
            if (templ[j].type == overrides[i].type && templ[j].pValue != NULL &&
                templ[j].ulValueLen == sizeof(CK_BBOOL))
                *(CK_BBOOL *)templ[j].pValue = (CK_BBOOL)overrides[i].value;
    }
    for (i = 0; i < (int)ctl_nbools; i++)
        for (j = 0; j < n; j++)
            if (templ[j].type == ctl_bools[i].type && templ[j].pValue != NULL &&
                templ[j].ulValueLen == sizeof(CK_BBOOL))
                *(CK_BBOOL *)templ[j].pValue = (CK_BBOOL)ctl_bools[i].value;
    pthread_mutex_unlock(&fault_mu);
}

static CK_ATTRIBUTE_TYPE private_sensitive; /* 0: off; under fault_mu */

void p11fault_private_sensitive(CK_ATTRIBUTE_TYPE type)
{
    pthread_mutex_lock(&fault_mu);
    private_sensitive = type;
    pthread_mutex_unlock(&fault_mu);
}

/* p11fault_private_sensitive: hides that attribute of a private key
 * object in templ; 1 if it did. */
static int private_sensitive_hides(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE *templ, CK_ULONG n)
{
    CK_OBJECT_CLASS cls = 0;
    CK_ATTRIBUTE c = {CKA_CLASS, &cls, sizeof(cls)};
    CK_ATTRIBUTE_TYPE type;
    CK_ULONG j;
    int hid = 0;

    pthread_mutex_lock(&fault_mu);
    type = private_sensitive;
    pthread_mutex_unlock(&fault_mu);
    if (type == 0 || real == NULL)
        return 0;
    for (j = 0; j < n; j++)
        if (templ[j].type == type)
            break;
    if (j == n || real->C_GetAttributeValue(s, o, &c, 1) != CKR_OK || cls != CKO_PRIVATE_KEY)
        return 0;
    for (j = 0; j < n; j++)
        if (templ[j].type == type) {
            templ[j].ulValueLen = CK_UNAVAILABLE_INFORMATION;
            hid = 1;
        }
    return hid;
}

void p11fault_break_on_attribute(CK_ATTRIBUTE_TYPE type)
{
    pthread_mutex_lock(&fault_mu);
    break_attr = type;
    pthread_mutex_unlock(&fault_mu);
}

void p11fault_find_batch(unsigned long n)
{
    pthread_mutex_lock(&fault_mu);
    find_batch = n;
    pthread_mutex_unlock(&fault_mu);
}

void p11fault_mech_pad(unsigned long n, unsigned long grow, int grow_calls)
{
    pad_set(&mech_pad, n, grow, grow_calls);
}

void p11fault_slot_pad(unsigned long n, unsigned long grow, int grow_calls)
{
    pad_set(&slot_pad, n, grow, grow_calls);
}

void p11fault_disconnect(void)
{
    pthread_mutex_lock(&fault_mu);
    disconnected = 1;
    pthread_mutex_unlock(&fault_mu);
}

CK_FUNCTION_LIST *p11f_real(void)
{
    return real;
}

void p11fault_clear(void)
{
    int i;

    pthread_mutex_lock(&fault_mu);
    memset(faults, 0, sizeof(faults));
    for (i = 0; i < OVERRIDE_MAX; i++)
        overrides[i].value = -1;
    break_attr = 0;
    private_sensitive = 0;
    find_batch = 0;
    memset(&mech_pad, 0, sizeof(mech_pad));
    memset(&slot_pad, 0, sizeof(slot_pad));
    pthread_mutex_unlock(&fault_mu);
}

unsigned long p11fault_calls(const char *func)
{
    unsigned long n = 0;
    int i;

    pthread_mutex_lock(&fault_mu);
    if (func != NULL && *func == '\0') {
        for (i = 0; i < FW_COUNT_; i++)
            n += calls[i];
    } else if ((i = fw_lookup(func)) >= 0) {
        n = calls[i];
    }
    pthread_mutex_unlock(&fault_mu);
    return n;
}

void p11fault_reset_calls(void)
{
    pthread_mutex_lock(&fault_mu);
    memset(calls, 0, sizeof(calls));
    pthread_mutex_unlock(&fault_mu);
}

static void close_real_sessions(void)
{
    (void)p11fault_close_all_sessions();
}

/* C_Logout through a fresh session on each slot: the login of the whole
 * application ends, the other sessions stay open. */
static void logout_real(void)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64, i;
    CK_SESSION_HANDLE h;

    if (real == NULL || real->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        return;
    for (i = 0; i < n; i++) {
        if (real->C_OpenSession(slots[i], CKF_SERIAL_SESSION, NULL, NULL, &h) != CKR_OK)
            continue;
        (void)real->C_Logout(h);
        (void)real->C_CloseSession(h);
    }
}

CK_RV p11fault_close_all_sessions(void)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64, i;
    CK_RV rv;

    if (real == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if ((rv = real->C_GetSlotList(CK_TRUE, slots, &n)) != CKR_OK)
        return rv;
    for (i = 0; i < n; i++)
        if ((rv = real->C_CloseAllSessions(slots[i])) != CKR_OK)
            return rv;
    prof_all_sessions_closed();
    return CKR_OK;
}

/* ---- loading the real module ------------------------------------------- */

static CK_RV load_real(void)
{
    const char *path = getenv("GS_P11FAULT_TARGET");
    CK_RV (*gfl)(CK_FUNCTION_LIST_PTR_PTR);
    CK_RV rv;

    if (real != NULL)
        return CKR_OK;
    if (path == NULL || *path == '\0')
        path = GS_P11FAULT_DEFAULT_TARGET;
    if ((real_dl = dlopen(path, RTLD_NOW | RTLD_LOCAL)) == NULL)
        return CKR_GENERAL_ERROR;
    *(void **)(&gfl) = dlsym(real_dl, "C_GetFunctionList");
    if (gfl == NULL)
        return CKR_GENERAL_ERROR;
    rv = gfl(&real);
    if (rv != CKR_OK)
        real = NULL;
    return rv;
}

/* ---- token model (GS_P11FAULT_SERVICE_US, GS_P11FAULT_ENGINES) ---------- */

static pthread_mutex_t model_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t model_free = PTHREAD_COND_INITIALIZER;
static long model_service_ns; /* 0: no model */
static long model_engines = 1, model_busy;

static long env_long(const char *name, long min, long max, long deflt)
{
    const char *v = getenv(name);
    char *end = NULL;
    long n;

    if (v == NULL || *v == '\0')
        return deflt;
    n = strtol(v, &end, 10);
    if (*end != '\0' || n < min || n > max) {
        fprintf(stderr, "p11fault: ignoring %s=%.20s (want %ld..%ld)\n", name, v, min, max);
        return deflt;
    }
    return n;
}

static void model_load(void)
{
    pthread_mutex_lock(&model_mu);
    model_service_ns = env_long("GS_P11FAULT_SERVICE_US", 0, 10000000, 0) * 1000L;
    model_engines = env_long("GS_P11FAULT_ENGINES", 1, 1024, 1);
    zero_cost = (int)env_long("GS_P11FAULT_ZERO_COST", 0, 1, 0);
    pthread_mutex_unlock(&model_mu);
}

/* Takes an engine (waiting for one) and notes the start time; returns
 * the service time to hold it for (0: no model). */
static long model_begin(struct timespec *t0)
{
    pthread_mutex_lock(&model_mu);
    long ns = model_service_ns;
    if (ns > 0) {
        while (model_busy >= model_engines)
            pthread_cond_wait(&model_free, &model_mu);
        model_busy++;
    }
    pthread_mutex_unlock(&model_mu);
    clock_gettime(CLOCK_MONOTONIC, t0);
    return ns;
}

/* Holds the engine until the service time has passed, then frees it. */
static void model_end(const struct timespec *t0, long ns)
{
    if (ns <= 0)
        return;
    struct timespec until = *t0;
    until.tv_sec += ns / 1000000000L;
    until.tv_nsec += ns % 1000000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR)
        ;
    pthread_mutex_lock(&model_mu);
    model_busy--;
    pthread_cond_signal(&model_free);
    pthread_mutex_unlock(&model_mu);
}

static CK_RV fw_C_Initialize(void *init_args)
{
    CK_RV rv;

    if (fault_take(FW_C_Initialize, &rv))
        return rv;
    model_load();
    prof_load();
    prof_reset();
    pthread_mutex_lock(&fault_mu);
    rv = load_real();
    pthread_mutex_unlock(&fault_mu);
    if (rv != CKR_OK)
        return rv;
    return real->C_Initialize(init_args);
}

/* The real module stays loaded after C_Finalize: a later C_Initialize
 * reuses it (and dlclose of a PKCS#11 module is often unsafe anyway). */
static CK_RV fw_C_Finalize(void *reserved)
{
    CK_RV rv;

    if (fault_take(FW_C_Finalize, &rv))
        return rv;
    if (real == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    /* A new C_Initialize is a new connection. */
    pthread_mutex_lock(&fault_mu);
    disconnected = 0;
    pthread_mutex_unlock(&fault_mu);
    prof_reset();
    return real->C_Finalize(reserved);
}

static CK_FUNCTION_LIST fw_list = {
    .version = {2, 40},
    .C_Initialize = fw_C_Initialize,
    .C_Finalize = fw_C_Finalize,
    .C_GetInfo = fw_C_GetInfo,
    .C_GetSlotList = fw_C_GetSlotList,
    .C_GetSlotInfo = fw_C_GetSlotInfo,
    .C_GetTokenInfo = fw_C_GetTokenInfo,
    .C_WaitForSlotEvent = fw_C_WaitForSlotEvent,
    .C_GetMechanismList = fw_C_GetMechanismList,
    .C_GetMechanismInfo = fw_C_GetMechanismInfo,
    .C_InitToken = fw_C_InitToken,
    .C_InitPIN = fw_C_InitPIN,
    .C_SetPIN = fw_C_SetPIN,
    .C_OpenSession = fw_C_OpenSession,
    .C_CloseSession = fw_C_CloseSession,
    .C_CloseAllSessions = fw_C_CloseAllSessions,
    .C_GetSessionInfo = fw_C_GetSessionInfo,
    .C_GetOperationState = fw_C_GetOperationState,
    .C_SetOperationState = fw_C_SetOperationState,
    .C_Login = fw_C_Login,
    .C_Logout = fw_C_Logout,
    .C_CreateObject = fw_C_CreateObject,
    .C_CopyObject = fw_C_CopyObject,
    .C_DestroyObject = fw_C_DestroyObject,
    .C_GetObjectSize = fw_C_GetObjectSize,
    .C_GetAttributeValue = fw_C_GetAttributeValue,
    .C_SetAttributeValue = fw_C_SetAttributeValue,
    .C_FindObjectsInit = fw_C_FindObjectsInit,
    .C_FindObjects = fw_C_FindObjects,
    .C_FindObjectsFinal = fw_C_FindObjectsFinal,
    .C_EncryptInit = fw_C_EncryptInit,
    .C_Encrypt = fw_C_Encrypt,
    .C_EncryptUpdate = fw_C_EncryptUpdate,
    .C_EncryptFinal = fw_C_EncryptFinal,
    .C_DecryptInit = fw_C_DecryptInit,
    .C_Decrypt = fw_C_Decrypt,
    .C_DecryptUpdate = fw_C_DecryptUpdate,
    .C_DecryptFinal = fw_C_DecryptFinal,
    .C_DigestInit = fw_C_DigestInit,
    .C_Digest = fw_C_Digest,
    .C_DigestUpdate = fw_C_DigestUpdate,
    .C_DigestKey = fw_C_DigestKey,
    .C_DigestFinal = fw_C_DigestFinal,
    .C_SignInit = fw_C_SignInit,
    .C_Sign = fw_C_Sign,
    .C_SignUpdate = fw_C_SignUpdate,
    .C_SignFinal = fw_C_SignFinal,
    .C_SignRecoverInit = fw_C_SignRecoverInit,
    .C_SignRecover = fw_C_SignRecover,
    .C_VerifyInit = fw_C_VerifyInit,
    .C_Verify = fw_C_Verify,
    .C_VerifyUpdate = fw_C_VerifyUpdate,
    .C_VerifyFinal = fw_C_VerifyFinal,
    .C_VerifyRecoverInit = fw_C_VerifyRecoverInit,
    .C_VerifyRecover = fw_C_VerifyRecover,
    .C_DigestEncryptUpdate = fw_C_DigestEncryptUpdate,
    .C_DecryptDigestUpdate = fw_C_DecryptDigestUpdate,
    .C_SignEncryptUpdate = fw_C_SignEncryptUpdate,
    .C_DecryptVerifyUpdate = fw_C_DecryptVerifyUpdate,
    .C_GenerateKey = fw_C_GenerateKey,
    .C_GenerateKeyPair = fw_C_GenerateKeyPair,
    .C_WrapKey = fw_C_WrapKey,
    .C_UnwrapKey = fw_C_UnwrapKey,
    .C_DeriveKey = fw_C_DeriveKey,
    .C_SeedRandom = fw_C_SeedRandom,
    .C_GenerateRandom = fw_C_GenerateRandom,
    .C_GetFunctionStatus = fw_C_GetFunctionStatus,
    .C_CancelFunction = fw_C_CancelFunction,
    .C_GetFunctionList = C_GetFunctionList,
};

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    if (list == NULL)
        return CKR_ARGUMENTS_BAD;
    *list = &fw_list;
    return CKR_OK;
}
