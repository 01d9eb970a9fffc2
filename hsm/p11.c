/*
 * p11.c: the one PKCS#11 call wrapper, the CKR_* name table, the CK_RV to
 * hsm_err mapping and the per-thread error detail.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "hsm_internal.h"

/* PKCS#11 3.0/3.1 codes that p11-kit's 2.40 header lacks. */
#ifndef CKR_TOKEN_RESOURCE_EXCEEDED
#define CKR_TOKEN_RESOURCE_EXCEEDED (0x201UL)
#endif
#ifndef CKR_OPERATION_CANCEL_FAILED
#define CKR_OPERATION_CANCEL_FAILED (0x202UL)
#endif
#ifndef CKR_KEY_EXHAUSTED
#define CKR_KEY_EXHAUSTED (0x203UL)
#endif

static _Thread_local char tls_detail[384];
static _Thread_local CK_RV tls_last_rv;
static _Thread_local bool tls_quiet;
/* The detail says a key URI names another token, slot or module. */
static _Thread_local bool tls_elsewhere;

static const struct {
    CK_RV rv;
    const char *name;
} ckr_names[] = {
    {CKR_OK, "CKR_OK"},
    {CKR_CANCEL, "CKR_CANCEL"},
    {CKR_HOST_MEMORY, "CKR_HOST_MEMORY"},
    {CKR_SLOT_ID_INVALID, "CKR_SLOT_ID_INVALID"},
    {CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR"},
    {CKR_FUNCTION_FAILED, "CKR_FUNCTION_FAILED"},
    {CKR_ARGUMENTS_BAD, "CKR_ARGUMENTS_BAD"},
    {CKR_NO_EVENT, "CKR_NO_EVENT"},
    {CKR_NEED_TO_CREATE_THREADS, "CKR_NEED_TO_CREATE_THREADS"},
    {CKR_CANT_LOCK, "CKR_CANT_LOCK"},
    {CKR_ATTRIBUTE_READ_ONLY, "CKR_ATTRIBUTE_READ_ONLY"},
    {CKR_ATTRIBUTE_SENSITIVE, "CKR_ATTRIBUTE_SENSITIVE"},
    {CKR_ATTRIBUTE_TYPE_INVALID, "CKR_ATTRIBUTE_TYPE_INVALID"},
    {CKR_ATTRIBUTE_VALUE_INVALID, "CKR_ATTRIBUTE_VALUE_INVALID"},
    {CKR_ACTION_PROHIBITED, "CKR_ACTION_PROHIBITED"},
    {CKR_DATA_INVALID, "CKR_DATA_INVALID"},
    {CKR_DATA_LEN_RANGE, "CKR_DATA_LEN_RANGE"},
    {CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR"},
    {CKR_DEVICE_MEMORY, "CKR_DEVICE_MEMORY"},
    {CKR_DEVICE_REMOVED, "CKR_DEVICE_REMOVED"},
    {CKR_ENCRYPTED_DATA_INVALID, "CKR_ENCRYPTED_DATA_INVALID"},
    {CKR_ENCRYPTED_DATA_LEN_RANGE, "CKR_ENCRYPTED_DATA_LEN_RANGE"},
    {CKR_FUNCTION_CANCELED, "CKR_FUNCTION_CANCELED"},
    {CKR_FUNCTION_NOT_PARALLEL, "CKR_FUNCTION_NOT_PARALLEL"},
    {CKR_FUNCTION_NOT_SUPPORTED, "CKR_FUNCTION_NOT_SUPPORTED"},
    {CKR_KEY_HANDLE_INVALID, "CKR_KEY_HANDLE_INVALID"},
    {CKR_KEY_SIZE_RANGE, "CKR_KEY_SIZE_RANGE"},
    {CKR_KEY_TYPE_INCONSISTENT, "CKR_KEY_TYPE_INCONSISTENT"},
    {CKR_KEY_NOT_NEEDED, "CKR_KEY_NOT_NEEDED"},
    {CKR_KEY_CHANGED, "CKR_KEY_CHANGED"},
    {CKR_KEY_NEEDED, "CKR_KEY_NEEDED"},
    {CKR_KEY_INDIGESTIBLE, "CKR_KEY_INDIGESTIBLE"},
    {CKR_KEY_FUNCTION_NOT_PERMITTED, "CKR_KEY_FUNCTION_NOT_PERMITTED"},
    {CKR_KEY_NOT_WRAPPABLE, "CKR_KEY_NOT_WRAPPABLE"},
    {CKR_KEY_UNEXTRACTABLE, "CKR_KEY_UNEXTRACTABLE"},
    {CKR_MECHANISM_INVALID, "CKR_MECHANISM_INVALID"},
    {CKR_MECHANISM_PARAM_INVALID, "CKR_MECHANISM_PARAM_INVALID"},
    {CKR_OBJECT_HANDLE_INVALID, "CKR_OBJECT_HANDLE_INVALID"},
    {CKR_OPERATION_ACTIVE, "CKR_OPERATION_ACTIVE"},
    {CKR_OPERATION_NOT_INITIALIZED, "CKR_OPERATION_NOT_INITIALIZED"},
    {CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT"},
    {CKR_PIN_INVALID, "CKR_PIN_INVALID"},
    {CKR_PIN_LEN_RANGE, "CKR_PIN_LEN_RANGE"},
    {CKR_PIN_EXPIRED, "CKR_PIN_EXPIRED"},
    {CKR_PIN_LOCKED, "CKR_PIN_LOCKED"},
    {CKR_SESSION_CLOSED, "CKR_SESSION_CLOSED"},
    {CKR_SESSION_COUNT, "CKR_SESSION_COUNT"},
    {CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID"},
    {CKR_SESSION_PARALLEL_NOT_SUPPORTED, "CKR_SESSION_PARALLEL_NOT_SUPPORTED"},
    {CKR_SESSION_READ_ONLY, "CKR_SESSION_READ_ONLY"},
    {CKR_SESSION_EXISTS, "CKR_SESSION_EXISTS"},
    {CKR_SESSION_READ_ONLY_EXISTS, "CKR_SESSION_READ_ONLY_EXISTS"},
    {CKR_SESSION_READ_WRITE_SO_EXISTS, "CKR_SESSION_READ_WRITE_SO_EXISTS"},
    {CKR_SIGNATURE_INVALID, "CKR_SIGNATURE_INVALID"},
    {CKR_SIGNATURE_LEN_RANGE, "CKR_SIGNATURE_LEN_RANGE"},
    {CKR_TEMPLATE_INCOMPLETE, "CKR_TEMPLATE_INCOMPLETE"},
    {CKR_TEMPLATE_INCONSISTENT, "CKR_TEMPLATE_INCONSISTENT"},
    {CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT"},
    {CKR_TOKEN_NOT_RECOGNIZED, "CKR_TOKEN_NOT_RECOGNIZED"},
    {CKR_TOKEN_WRITE_PROTECTED, "CKR_TOKEN_WRITE_PROTECTED"},
    {CKR_UNWRAPPING_KEY_HANDLE_INVALID, "CKR_UNWRAPPING_KEY_HANDLE_INVALID"},
    {CKR_UNWRAPPING_KEY_SIZE_RANGE, "CKR_UNWRAPPING_KEY_SIZE_RANGE"},
    {CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT, "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT"},
    {CKR_USER_ALREADY_LOGGED_IN, "CKR_USER_ALREADY_LOGGED_IN"},
    {CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN"},
    {CKR_USER_PIN_NOT_INITIALIZED, "CKR_USER_PIN_NOT_INITIALIZED"},
    {CKR_USER_TYPE_INVALID, "CKR_USER_TYPE_INVALID"},
    {CKR_USER_ANOTHER_ALREADY_LOGGED_IN, "CKR_USER_ANOTHER_ALREADY_LOGGED_IN"},
    {CKR_USER_TOO_MANY_TYPES, "CKR_USER_TOO_MANY_TYPES"},
    {CKR_WRAPPED_KEY_INVALID, "CKR_WRAPPED_KEY_INVALID"},
    {CKR_WRAPPED_KEY_LEN_RANGE, "CKR_WRAPPED_KEY_LEN_RANGE"},
    {CKR_WRAPPING_KEY_HANDLE_INVALID, "CKR_WRAPPING_KEY_HANDLE_INVALID"},
    {CKR_WRAPPING_KEY_SIZE_RANGE, "CKR_WRAPPING_KEY_SIZE_RANGE"},
    {CKR_WRAPPING_KEY_TYPE_INCONSISTENT, "CKR_WRAPPING_KEY_TYPE_INCONSISTENT"},
    {CKR_RANDOM_SEED_NOT_SUPPORTED, "CKR_RANDOM_SEED_NOT_SUPPORTED"},
    {CKR_RANDOM_NO_RNG, "CKR_RANDOM_NO_RNG"},
    {CKR_DOMAIN_PARAMS_INVALID, "CKR_DOMAIN_PARAMS_INVALID"},
    {CKR_CURVE_NOT_SUPPORTED, "CKR_CURVE_NOT_SUPPORTED"},
    {CKR_BUFFER_TOO_SMALL, "CKR_BUFFER_TOO_SMALL"},
    {CKR_SAVED_STATE_INVALID, "CKR_SAVED_STATE_INVALID"},
    {CKR_INFORMATION_SENSITIVE, "CKR_INFORMATION_SENSITIVE"},
    {CKR_STATE_UNSAVEABLE, "CKR_STATE_UNSAVEABLE"},
    {CKR_CRYPTOKI_NOT_INITIALIZED, "CKR_CRYPTOKI_NOT_INITIALIZED"},
    {CKR_CRYPTOKI_ALREADY_INITIALIZED, "CKR_CRYPTOKI_ALREADY_INITIALIZED"},
    {CKR_MUTEX_BAD, "CKR_MUTEX_BAD"},
    {CKR_MUTEX_NOT_LOCKED, "CKR_MUTEX_NOT_LOCKED"},
    {CKR_NEW_PIN_MODE, "CKR_NEW_PIN_MODE"},
    {CKR_NEXT_OTP, "CKR_NEXT_OTP"},
    {CKR_EXCEEDED_MAX_ITERATIONS, "CKR_EXCEEDED_MAX_ITERATIONS"},
    {CKR_FIPS_SELF_TEST_FAILED, "CKR_FIPS_SELF_TEST_FAILED"},
    {CKR_LIBRARY_LOAD_FAILED, "CKR_LIBRARY_LOAD_FAILED"},
    {CKR_PIN_TOO_WEAK, "CKR_PIN_TOO_WEAK"},
    {CKR_PUBLIC_KEY_INVALID, "CKR_PUBLIC_KEY_INVALID"},
    {CKR_FUNCTION_REJECTED, "CKR_FUNCTION_REJECTED"},
    {CKR_TOKEN_RESOURCE_EXCEEDED, "CKR_TOKEN_RESOURCE_EXCEEDED"},
    {CKR_OPERATION_CANCEL_FAILED, "CKR_OPERATION_CANCEL_FAILED"},
    {CKR_KEY_EXHAUSTED, "CKR_KEY_EXHAUSTED"},
};

const char *hsm_ckr_name(CK_RV rv)
{
    static _Thread_local char unknown[48];
    size_t i;

    for (i = 0; i < sizeof(ckr_names) / sizeof(ckr_names[0]); i++)
        if (ckr_names[i].rv == rv)
            return ckr_names[i].name;
    if (rv & CKR_VENDOR_DEFINED)
        snprintf(unknown, sizeof(unknown), "CKR_VENDOR_DEFINED+0x%lx",
                 (unsigned long)(rv & ~CKR_VENDOR_DEFINED));
    else
        snprintf(unknown, sizeof(unknown), "CKR_0x%lx", (unsigned long)rv);
    return unknown;
}

const char *hsm_rv_name(unsigned long rv)
{
    return hsm_ckr_name((CK_RV)rv);
}

hsm_err hsm_map_rv(CK_RV rv)
{
    switch (rv) {
    case CKR_OK:
        return HSM_OK;
    case CKR_HOST_MEMORY:
        return HSM_ERR_NOMEM;
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
        return HSM_ERR_PIN_INCORRECT;
    case CKR_PIN_LOCKED:
    case CKR_PIN_EXPIRED:
        return HSM_ERR_PIN_LOCKED;
    case CKR_DEVICE_REMOVED:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
        return HSM_ERR_TOKEN_ABSENT;
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_SESSION_COUNT:
        return HSM_ERR_SESSION;
    case CKR_USER_NOT_LOGGED_IN:
    case CKR_USER_PIN_NOT_INITIALIZED:
        return HSM_ERR_NOT_LOGGED_IN;
    case CKR_ENCRYPTED_DATA_INVALID:
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
    case CKR_WRAPPED_KEY_INVALID:
    case CKR_WRAPPED_KEY_LEN_RANGE:
        return HSM_ERR_DECRYPT;
    case CKR_MECHANISM_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_CURVE_NOT_SUPPORTED:
    case CKR_DOMAIN_PARAMS_INVALID:
    case CKR_KEY_SIZE_RANGE:
    /* A function the module lacks, or one the token lists mechanisms for
     * but its policy forbids (network HSMs: C_UnwrapKey, C_WrapKey): the
     * token does not do what was asked, as for a mechanism it lacks. It
     * is not a module that is down: retrying does not help. */
    case CKR_FUNCTION_NOT_SUPPORTED:
        return HSM_ERR_MECHANISM;
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
    case CKR_KEY_TYPE_INCONSISTENT:
    case CKR_KEY_UNEXTRACTABLE:
    case CKR_KEY_NOT_WRAPPABLE:
    case CKR_WRAPPING_KEY_TYPE_INCONSISTENT:
    case CKR_WRAPPING_KEY_SIZE_RANGE:
    case CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT:
    case CKR_UNWRAPPING_KEY_SIZE_RANGE:
    case CKR_ATTRIBUTE_SENSITIVE:
    case CKR_ACTION_PROHIBITED:
        return HSM_ERR_KEY_POLICY;
    case CKR_KEY_HANDLE_INVALID:
    case CKR_OBJECT_HANDLE_INVALID:
    case CKR_WRAPPING_KEY_HANDLE_INVALID:
    case CKR_UNWRAPPING_KEY_HANDLE_INVALID:
        return HSM_ERR_KEY_NOT_FOUND;
    case CKR_BUFFER_TOO_SMALL:
        return HSM_ERR_BUFFER;
    case CKR_PUBLIC_KEY_INVALID:
        return HSM_ERR_PUBLIC_KEY;
    case CKR_ARGUMENTS_BAD:
    case CKR_ATTRIBUTE_VALUE_INVALID:
    case CKR_ATTRIBUTE_TYPE_INVALID:
    case CKR_TEMPLATE_INCOMPLETE:
    case CKR_TEMPLATE_INCONSISTENT:
    case CKR_DATA_INVALID:
    case CKR_DATA_LEN_RANGE:
        return HSM_ERR_ARGS;
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_MEMORY:
    case CKR_GENERAL_ERROR:
    case CKR_FUNCTION_FAILED:
    case CKR_TOKEN_RESOURCE_EXCEEDED:
        return HSM_ERR_DEVICE;
    case CKR_CRYPTOKI_NOT_INITIALIZED:
    case CKR_CRYPTOKI_ALREADY_INITIALIZED:
    case CKR_LIBRARY_LOAD_FAILED:
    case CKR_CANT_LOCK:
    case CKR_NEED_TO_CREATE_THREADS:
        return HSM_ERR_MODULE;
    case CKR_SESSION_READ_ONLY:
    case CKR_TOKEN_WRITE_PROTECTED:
        return HSM_ERR_WRITE_PROTECTED;
    default:
        return HSM_ERR_PKCS11;
    }
}

const char *hsm_strerror(hsm_err err)
{
    switch (err) {
    case HSM_OK:
        return "success";
    case HSM_ERR_NOMEM:
        return "out of memory";
    case HSM_ERR_ARGS:
        return "invalid arguments";
    case HSM_ERR_MODULE:
        return "PKCS#11 module could not be loaded or initialised";
    case HSM_ERR_URI:
        return "malformed PKCS#11 URI";
    case HSM_ERR_TOKEN_NOT_FOUND:
        return "no single token matches the URI";
    case HSM_ERR_TOKEN_ABSENT:
        return "token removed or not present";
    case HSM_ERR_PIN_SOURCE:
        return "PIN source unreadable, empty or too open";
    case HSM_ERR_PIN_INCORRECT:
        return "PIN incorrect (not retried)";
    case HSM_ERR_PIN_LOCKED:
        return "PIN locked or expired";
    case HSM_ERR_NOT_LOGGED_IN:
        return "not logged in to the token";
    case HSM_ERR_SESSION:
        return "token session lost";
    case HSM_ERR_KEY_NOT_FOUND:
        return "key not found";
    case HSM_ERR_KEY_AMBIGUOUS:
        return "key reference matches more than one key";
    case HSM_ERR_KEY_EXISTS:
        return "a key with this label or id exists";
    case HSM_ERR_MECHANISM:
        return "mechanism or parameters not supported by the token";
    case HSM_ERR_KEY_POLICY:
        return "key attributes forbid this use";
    case HSM_ERR_DECRYPT:
        return "decryption failed";
    case HSM_ERR_BUFFER:
        return "output buffer too small";
    case HSM_ERR_PUBLIC_KEY:
        return "public key malformed or unsupported";
    case HSM_ERR_DEVICE:
        return "token device error";
    case HSM_ERR_PKCS11:
        return "PKCS#11 error";
    case HSM_ERR_WRITE_PROTECTED:
        return "the token is write-protected";
    case HSM_ERR_TOO_MANY_OBJECTS:
        return "the token holds more matching objects than one search reads";
    }
    return "unknown hsm error";
}

const char *hsm_last_error_detail(void)
{
    return tls_detail;
}

bool hsm_last_error_uri_elsewhere(void)
{
    return tls_elsewhere;
}

void hsm_detail_uri_elsewhere(void)
{
    tls_elsewhere = true;
}

CK_RV hsm_last_rv(void)
{
    return tls_last_rv;
}

void hsm_set_detail(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(tls_detail, sizeof(tls_detail), fmt, ap);
    va_end(ap);
    tls_elsewhere = false;
}

void hsm_clear_detail(void)
{
    tls_detail[0] = '\0';
    tls_elsewhere = false;
}

CK_RV hsm_p11_missing(const char *fn)
{
    log_debug("function missing from module fn=%s", fn);
    return CKR_FUNCTION_NOT_SUPPORTED;
}

void hsm_p11_quiet(bool on)
{
    tls_quiet = on;
}

/* What a refusal usually means, for the detail (and so for every error
 * message built on it): the user learns what to look at, not only a code. */
static const char *ckr_hint(CK_RV rv)
{
    switch (rv) {
    case CKR_MECHANISM_INVALID:
        return "the token does not offer this mechanism; `groupsrv check` lists what it offers";
    case CKR_MECHANISM_PARAM_INVALID:
        return "the token refuses these mechanism parameters";
    case CKR_ATTRIBUTE_TYPE_INVALID:
        return "the token does not know an attribute asked for";
    case CKR_ATTRIBUTE_VALUE_INVALID:
    case CKR_TEMPLATE_INCONSISTENT:
        return "the token refuses an attribute value asked for";
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
        return "the key's attributes do not allow this operation";
    case CKR_KEY_NOT_WRAPPABLE:
    case CKR_KEY_UNEXTRACTABLE:
        return "the key may not be wrapped out";
    case CKR_FUNCTION_NOT_SUPPORTED:
        return "the module does not implement this function, or the token's policy forbids it";
    case CKR_SESSION_READ_ONLY:
    case CKR_TOKEN_WRITE_PROTECTED:
        return "the token is write-protected: keys cannot be made or deleted on it, it can only serve";
    case CKR_SESSION_READ_ONLY_EXISTS:
        /* The security officer logs in on read/write sessions only, and
         * on a write-protected token every session is read-only. */
        return "the SO logs in on read/write sessions only: is the token write-protected?";
    case CKR_FUNCTION_CANCELED:
        return "on a token with a PIN pad: nobody entered the PIN on the pad in time";
    case CKR_DEVICE_MEMORY:
        return "the token is out of memory: delete objects it no longer needs, or try again later";
    default:
        return NULL;
    }
}

hsm_err hsm_p11_done(const char *fn, CK_RV rv)
{
    tls_last_rv = rv;
    if (tls_quiet) {
        log_debug("pkcs11 call=%s rv=withheld", fn);
        return hsm_map_rv(rv);
    }
    /* Only the name and the result: arguments may be PINs or key bytes. */
    log_debug("pkcs11 call=%s rv=%s", fn, hsm_ckr_name(rv));
    if (rv != CKR_OK) {
        const char *hint = ckr_hint(rv);
        hsm_set_detail("%s: %s%s%s%s", fn, hsm_ckr_name(rv), hint ? " (" : "", hint ? hint : "", hint ? ")" : "");
    }
    return hsm_map_rv(rv);
}

void hsm_detail_mech(CK_MECHANISM_TYPE m)
{
    char rest[sizeof(tls_detail)];
    char *colon;

    /* "C_WrapKey: CKR_X" -> "C_WrapKey(CKM_AES_KEY_WRAP): CKR_X" */
    if (strncmp(tls_detail, "C_", 2) != 0 || (colon = strstr(tls_detail, ": ")) == NULL ||
        memchr(tls_detail, '(', (size_t)(colon - tls_detail)) != NULL)
        return;
    snprintf(rest, sizeof(rest), "%s", colon);
    *colon = '\0';
    snprintf(colon, sizeof(tls_detail) - (size_t)(colon - tls_detail), "(%s)%s", hsm_mech_ckm_name(m), rest);
}

void hsm_err_save(hsm_errsave *sv)
{
    sv->rv = tls_last_rv;
    memcpy(sv->detail, tls_detail, sizeof(sv->detail));
    sv->elsewhere = tls_elsewhere;
}

void hsm_err_restore(const hsm_errsave *sv)
{
    tls_last_rv = sv->rv;
    memcpy(tls_detail, sv->detail, sizeof(tls_detail));
    tls_elsewhere = sv->elsewhere;
}

hsm_err hsm_read_list(hsm_ctx *ctx, const hsm_list_read *how, CK_ULONG **list_out, CK_ULONG *n_out)
{
    CK_ULONG *list = NULL;
    CK_ULONG n = 0;
    hsm_err err;

    *list_out = NULL;
    *n_out = 0;
    /* A list that grew between the call asking its length and the call
     * reading it is CKR_BUFFER_TOO_SMALL with n the new length and the
     * array undefined: asked for again, never read (it was read to the
     * new length, past the array's end). */
    for (int tries = 0;; tries++) {
        CK_ULONG asked;

        if ((err = how->get(ctx, how->arg, NULL, &n)) != HSM_OK)
            goto out;
        if (n == 0 || n > how->max) {
            *n_out = n; /* not read: the caller says what an empty or too long list means */
            goto out;
        }
        if ((list = calloc(n + how->spare, sizeof(*list))) == NULL) {
            err = HSM_ERR_NOMEM;
            goto out;
        }
        asked = n;
        err = how->get(ctx, how->arg, list, &n);
        if (err == HSM_OK && n > asked) { /* a module that wrote past what it was given: trust none of it */
            hsm_set_detail("%s answered %lu %s in an array of %lu", how->fn, (unsigned long)n, how->what,
                           (unsigned long)asked);
            err = HSM_ERR_PKCS11;
        }
        if (err != HSM_ERR_BUFFER)
            break;
        free(list);
        list = NULL;
        if (tries + 1 >= how->tries) {
            hsm_set_detail("%s kept growing between the call asking its length and the call reading it "
                           "(%d tries)",
                           how->whose, how->tries);
            err = HSM_ERR_PKCS11;
            goto out;
        }
    }
    /* A list emptied between the two calls (the last reader unplugged)
     * is an empty list: no array handed back (op_mechs returns at n == 0
     * without freeing one). */
    if (err == HSM_OK && n > 0) {
        *list_out = list;
        *n_out = n;
        list = NULL;
    }
out:
    free(list);
    return err;
}
