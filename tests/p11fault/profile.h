/*
 * profile.h: token profiles of the p11fault module (tests only): the
 * forwarders in p11fault.c call these hooks so that SoftHSM behind them
 * behaves like another kind of token. Chosen at C_Initialize by the
 * environment variable GS_P11FAULT_PROFILE (unset: none, plain
 * forwarding).
 *
 * "smartcard" models a decrypt-only smartcard as OpenSC presents one:
 *  - mechanisms: CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_RSA_PKCS (decrypt, sign),
 *    CKM_RSA_PKCS_OAEP (decrypt only, SHA-1/MGF1-SHA-1 only), CKM_SHA_1,
 *    CKM_SHA256 (digests); any other mechanism is CKR_MECHANISM_INVALID,
 *    other OAEP parameters CKR_MECHANISM_PARAM_INVALID;
 *  - no C_WrapKey, C_UnwrapKey, C_DeriveKey, C_GenerateKey
 *    (CKR_FUNCTION_NOT_SUPPORTED); C_CreateObject of private or secret
 *    keys is refused (CKR_TEMPLATE_INCONSISTENT): nothing is imported;
 *  - CKA_ALLOWED_MECHANISMS and CKA_UNWRAP_TEMPLATE unknown
 *    (CKR_ATTRIBUTE_TYPE_INVALID in templates and when read);
 *  - every private key has CKA_ALWAYS_AUTHENTICATE: after C_DecryptInit
 *    or C_SignInit with it, C_Decrypt / C_Sign answer
 *    CKR_USER_NOT_LOGGED_IN until C_Login(CKU_CONTEXT_SPECIFIC) with the
 *    user PIN (compared with the one of the last successful CKU_USER
 *    login of this process: the card checks it again);
 *  - at most 2 sessions (ulMaxSessionCount 2, C_OpenSession beyond it
 *    CKR_SESSION_COUNT).
 * With GS_P11FAULT_RSA_DECRYPT=v15 (at C_Initialize) the card is one of
 * the many PIV and OpenPGP cards without OAEP: CKM_RSA_PKCS and raw
 * CKM_RSA_X_509 (decrypt, sign), no CKM_RSA_PKCS_OAEP; with =raw it
 * decrypts and signs with CKM_RSA_X_509 only (no padding on the card).
 *
 * "no-v15-wrap" models a token that unwraps and wraps with RSA-OAEP but
 * not with CKM_RSA_PKCS: C_GetMechanismInfo(CKM_RSA_PKCS) without
 * CKF_WRAP, C_WrapKey with it CKR_MECHANISM_INVALID; all else forwarded.
 *
 * "oaep-only" models an HSM held to RSA-OAEP (a policy that forbids
 * PKCS#1 v1.5 encryption): C_GetMechanismInfo(CKM_RSA_PKCS) without
 * CKF_ENCRYPT, CKF_DECRYPT, CKF_WRAP and CKF_UNWRAP (signing stays),
 * C_DecryptInit and C_WrapKey with it CKR_MECHANISM_INVALID.
 *
 * "ecdh-kdf" models a token whose CKM_ECDH1_DERIVE takes the X9.63 KDF
 * (CKD_SHA1_KDF, CKD_SHA256_KDF), as NSS softokn's does, where SoftHSM
 * 2.6.1 takes CKD_NULL only: such a derive is SoftHSM's CKD_NULL derive
 * into a session secret read back, the KDF run here, and the caller's key
 * (its template, CKA_VALUE for CKA_VALUE_LEN) made with C_CreateObject.
 * Tests only: the shared secret leaves the token, as it never would.
 *
 * Independent of the profile, GS_P11FAULT_SESSION_QUOTA=N (at
 * C_Initialize) models a session limit the token does not report: a
 * network HSM's per-client or per-partition session quota, or a card
 * whose other sessions belong to other applications. C_GetTokenInfo says
 * what the target says (SoftHSM: ulMaxSessionCount 0, no limit), while
 * C_OpenSession beyond N sessions open in this process answers
 * CKR_SESSION_COUNT.
 *
 * GS_P11FAULT_RSA_MAX_BITS=B (at C_Initialize) models a token that makes
 * RSA keys up to B bits only (PIV cards and YubiKey 4: 2048): the RSA
 * mechanisms' C_GetMechanismInfo reports ulMaxKeySize B, and
 * C_GenerateKeyPair(CKM_RSA_PKCS_KEY_PAIR_GEN) with a larger
 * CKA_MODULUS_BITS answers CKR_KEY_SIZE_RANGE.
 *
 * GS_P11FAULT_PINPAD=1 (at C_Initialize) models a token behind a PIN-pad
 * reader, or an HSM with a PED: C_GetTokenInfo adds
 * CKF_PROTECTED_AUTHENTICATION_PATH, and C_Login with no PIN (NULL, 0)
 * logs in with the PIN "typed on the pad", GS_P11FAULT_PINPAD_PIN; with
 * that unset nobody types and the login answers CKR_FUNCTION_CANCELED, as
 * a pad does at its time-out. A PIN given in the call is used as given
 * (OpenSC with a pad reader does so).
 *
 * GS_P11FAULT_WRITE_PROTECTED=1 (at C_Initialize) models a write-protected
 * token (a card locked against changes, an HSM partition set read-only):
 * C_GetTokenInfo adds CKF_WRITE_PROTECTED and C_OpenSession with
 * CKF_RW_SESSION answers CKR_TOKEN_WRITE_PROTECTED. Read-only sessions
 * are forwarded; in them SoftHSM refuses to create or destroy token
 * objects (CKR_SESSION_READ_ONLY), while session objects work.
 *
 * GS_P11FAULT_PIN_TRIES=N (at C_Initialize) models a smartcard in a
 * reader with a user PIN retry counter of N (per process): the slot adds
 * CKF_HW_SLOT and CKF_REMOVABLE_DEVICE; each CKR_PIN_INCORRECT of the
 * target counts one try down, a good login resets the count; C_GetTokenInfo
 * adds CKF_USER_PIN_COUNT_LOW after a wrong try, CKF_USER_PIN_FINAL_TRY
 * at one left and CKF_USER_PIN_LOCKED at none, when C_Login answers
 * CKR_PIN_LOCKED without reaching the target. GS_P11FAULT_PIN_ERROR=RV
 * (a number, 0x5 = CKR_GENERAL_ERROR) answers a wrong PIN with RV instead
 * of CKR_PIN_INCORRECT, as some card drivers do.
 *
 * GS_P11FAULT_MECH_INFO_FAIL=M (a number, at C_Initialize): the token
 * lists mechanism M but C_GetMechanismInfo(M) answers CKR_GENERAL_ERROR,
 * for good (a token whose driver fails on a mechanism it lists).
 */
#ifndef GS_P11FAULT_PROFILE_H
#define GS_P11FAULT_PROFILE_H

#include <p11-kit/pkcs11.h>

/* The real module's function list (p11fault.c); NULL before C_Initialize. */
CK_FUNCTION_LIST *p11f_real(void);

void prof_load(void);                 /* at C_Initialize */
void prof_reset(void);                /* at C_Finalize: sessions gone */
int prof_active(void);

/* Pre-hooks: CKR_OK lets the call through, anything else is its answer. */
CK_RV prof_unsupported(void);         /* C_WrapKey, C_UnwrapKey, C_DeriveKey, C_GenerateKey */
CK_RV prof_wrap_pre(const CK_MECHANISM *m); /* C_WrapKey: the above, and "no-v15-wrap" */
CK_RV prof_mech_info_pre(CK_MECHANISM_TYPE type);
CK_RV prof_check_mech(const CK_MECHANISM *m, int sign);   /* *Init, key pair generation */
CK_RV prof_check_template(const CK_ATTRIBUTE *t, CK_ULONG n);
/* C_GenerateKeyPair: GS_P11FAULT_RSA_MAX_BITS against CKA_MODULUS_BITS. */
CK_RV prof_rsa_size_check(const CK_MECHANISM *m, const CK_ATTRIBUTE *pub, CK_ULONG n);
CK_RV prof_create_object_pre(const CK_ATTRIBUTE *t, CK_ULONG n);
CK_RV prof_open_session_pre(CK_FLAGS flags);
CK_RV prof_op_use(CK_SESSION_HANDLE s);       /* C_Decrypt*, C_Sign* */
/* C_Login, first: with the PIN pad model, a call without a PIN gets the
 * pad's (*pin, *len replaced), or CKR_FUNCTION_CANCELED. */
CK_RV prof_pinpad(unsigned char **pin, unsigned long *len);
/* C_Login around the real call: GS_P11FAULT_PIN_TRIES / _PIN_ERROR. */
CK_RV prof_pin_counter_pre(CK_USER_TYPE type);
CK_RV prof_pin_counter_post(CK_USER_TYPE type, CK_RV rv);
void prof_slot_info_post(CK_SLOT_INFO *info); /* C_GetSlotInfo */
/* C_Login: returns 1 and sets *rv when the profile answered it itself. */
int prof_login(CK_SESSION_HANDLE s, CK_USER_TYPE type, const unsigned char *pin, CK_ULONG len, CK_RV *rv);

/* The private-key template of C_GenerateKeyPair as the card applies it:
 * a usage not asked for is off (SoftHSM would default CKA_SIGN and
 * CKA_DECRYPT on), so pkcs11-tool --usage-decrypt makes a decrypt-only
 * key as the card's own tool would. *out is malloc'd (caller frees), or
 * NULL when the profile is off (use the original). */
CK_RV prof_keypair_private(const CK_ATTRIBUTE *in, CK_ULONG n, CK_ATTRIBUTE **out, CK_ULONG *nout);

/* C_DeriveKey, "ecdh-kdf": *done set when the profile answered the call
 * (its result returned); otherwise forwarded. */
CK_RV prof_derive(CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_OBJECT_HANDLE base, CK_ATTRIBUTE *t, CK_ULONG n,
                  CK_OBJECT_HANDLE *key, int *done);

/* Post-hooks, after a successful real call. */
void prof_mech_list_post(CK_MECHANISM_TYPE *list, CK_ULONG *count, int count_only);
void prof_mech_info_post(CK_MECHANISM_TYPE type, CK_MECHANISM_INFO *info);
void prof_token_info_post(CK_TOKEN_INFO *info);
void prof_session_opened(CK_SESSION_HANDLE s);
void prof_session_closed(CK_SESSION_HANDLE s);
void prof_all_sessions_closed(void);
void prof_op_init(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key);  /* after C_DecryptInit/C_SignInit */
void prof_login_post(CK_USER_TYPE type, const unsigned char *pin, CK_ULONG len);
/* C_GetAttributeValue: the profile's attributes answered here, the rest
 * forwarded; returns the call's result. */
CK_RV prof_get_attributes(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE *t, CK_ULONG n);

#endif
