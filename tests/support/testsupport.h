/*
 * testsupport.h: helpers for cmocka tests that need a PKCS#11 token
 * (library gs_testsupport; link it from your tests/<area>.cmake:
 *   target_link_libraries(test_x PRIVATE gs_testsupport ...)).
 *
 * Throw-away SoftHSM tokens:
 *   char dir[512];
 *   if (testtoken_make("grp", dir, sizeof(dir)) != 0) fail();
 *   // SOFTHSM2_CONF now points at dir/softhsm2.conf; the user PIN is in
 *   // dir/user-pin (0600): use testtoken_pin_source() as hsm pin_source.
 *   hsm_config cfg = {testtoken_softhsm_module(), "pkcs11:token=grp", pin_source, 0, NULL};
 *
 * Rules (SoftHSM and PKCS#11 impose them):
 *  - Make every token the process needs BEFORE the first hsm_open():
 *    testtoken_make forks and execs scripts/provision-softhsm, and nothing
 *    may fork after C_Initialize. SoftHSM reads SOFTHSM2_CONF at
 *    C_Initialize, so a process sees the token of the last testtoken_make
 *    call (one token per process is simplest; a cmocka group setup is the
 *    place for it).
 *  - Tokens live under the build tree (build/testwork/tok-LABEL-XXXXXX),
 *    never in the machine's default token store. testtoken_remove()
 *    deletes one (optional: the build tree is throw-away).
 *  - A missing SoftHSM or pkcs11-tool makes testtoken_make fail: treat
 *    that as a test failure, not a skip.
 *
 * Fault injection (tests/p11fault): use testtoken_p11fault_module() as the
 * hsm module; it forwards to SoftHSM and the testfault_* calls below make
 * chosen PKCS#11 functions fail with a chosen CK_RV.
 *
 * Software keys: testkey_rsa()/testkey_spki() make an OpenSSL key pair and
 * its DER SubjectPublicKeyInfo (e.g. a recipient key for rewrap tests).
 */
#ifndef GS_TESTSUPPORT_H
#define GS_TESTSUPPORT_H

#include <stddef.h>

#include <openssl/evp.h>

/* Creates a fresh SoftHSM token labelled `label` in a new directory, sets
 * SOFTHSM2_CONF for this process, and writes the directory path to
 * dir_out. Returns 0, or -1 (reason on stderr). */
int testtoken_make(const char *label, char *dir_out, size_t cap);

/* "DIR/user-pin" (a pin-source for hsm_config). Returns 0 or -1. */
int testtoken_pin_source(const char *dir, char *buf, size_t cap);

/* Reads the user PIN into buf (NUL-terminated, no newline). 0 or -1. */
int testtoken_read_pin(const char *dir, char *buf, size_t cap);

/* Deletes the token directory recursively. 0 or -1. */
int testtoken_remove(const char *dir);

/* Path of the SoftHSM2 module found by the build. */
const char *testtoken_softhsm_module(void);
/* Path of the fault-injecting module (build/lib/libp11fault.so). */
const char *testtoken_p11fault_module(void);

/* Fault control (see tests/p11fault/p11fault.c). rv is a CK_RV value.
 * count > 0: the next count calls of func fail; count < 0: until
 * testfault_clear(). Return -1 if the module cannot be reached. */
int testfault_inject(const char *func, unsigned long rv, int count);
int testfault_clear(void);
/* Calls of func so far (faulted ones included); "" = all functions. */
unsigned long testfault_calls(const char *func);
/* C_GetAttributeValue reports boolean attribute `type` (a CKA_ value) as
 * value (0/1) on every object; value < 0 removes it. 0 or -1. */
int testfault_override_bool(unsigned long type, int value);
/* p11fault_private_sensitive: a private key object's attribute `type`
 * answered CKR_ATTRIBUTE_SENSITIVE (0 = off). */
int testfault_private_sensitive(unsigned long type);
/* C_GetTokenInfo reports these CKF_ flags too (CKF_USER_PIN_FINAL_TRY, as
 * a card whose retry counter ran down); 0 removes them. 0 or -1. */
int testfault_token_flags(unsigned long flags);
/* Really closes every session in the real module (behind the caller's
 * back). Returns the CK_RV, or -1 if the module cannot be reached. */
long testfault_close_all_sessions(void);
/* A lost connection: every call but C_Initialize/C_Finalize answers
 * CKR_DEVICE_ERROR until the module is initialised again. 0 or -1. */
int testfault_disconnect(void);
/* A template with attribute `type` (a CKA_ value) breaks the connection
 * as above (p11-kit 0.24.1's RPC on CKA_UNWRAP_TEMPLATE); 0 = off. */
int testfault_break_on_attribute(unsigned long type);
/* p11fault_find_batch: C_FindObjects hands out at most n handles a call
 * (0: as many as asked). */
int testfault_find_batch(unsigned long n);
/* p11fault_mech_pad: C_GetMechanismList lists n more mechanisms, and
 * grow more after each of the next grow_calls calls (< 0: every call). */
int testfault_mech_pad(unsigned long n, unsigned long grow, int grow_calls);
/* p11fault_slot_pad: C_GetSlotList lists n more slots (no token behind
 * them), and grow more after each of the next grow_calls calls (< 0:
 * every call). */
int testfault_slot_pad(unsigned long n, unsigned long grow, int grow_calls);
/* A second secret key labelled `label` on the token labelled token_label,
 * made with C_CopyObject by the SoftHSM module this process has loaded
 * (hsm/ refuses to make a label in use), in a session of its own that
 * testtoken_copy_destroy closes after destroying the copy. Needs a
 * logged-in hsm context open on that token. NULL on failure. */
struct testtoken_copy;
struct testtoken_copy *testtoken_copy_secret(const char *token_label, const char *label);
/* n public data objects (CKO_DATA) labelled label made on the token of
 * token_label, through the SoftHSM module hsm_open loaded; n == 0 destroys
 * every data object of that label: 0, or -1. */
int testtoken_data_objects(const char *token_label, const char *label, int n);
/* The EC public key object labelled label on that token made again (same
 * CKA_ID and curve) with CKA_EC_POINT point[0..n) as given: a token that
 * keeps the point raw or compressed. 0, or -1. */
int testtoken_ec_point_as(const char *token_label, const char *label, const unsigned char *point, size_t n);
int testtoken_copy_destroy(struct testtoken_copy *c);
/* The slot id of the SoftHSM token labelled token_label, asked of the
 * module hsm_open loaded (as testtoken_copy_secret): 0, or -1. */
int testtoken_slot_id(const char *token_label, unsigned long *slot);

/* An NSS softokn database (certutil -N) with a random user PIN, in a new
 * directory under the build tree (fork and exec: before any hsm_open).
 * Writes the directory; DIR/pin is its pin-source (0600). 0 or -1. */
int testtoken_make_nss(char *dir_out, size_t cap); /* testtoken_remove() when done */
/* Path of libsoftokn3.so, or NULL when not found. */
const char *testtoken_nss_module(void);

/* An RSA key pair made in software (e = 65537). Caller EVP_PKEY_free()s. */
EVP_PKEY *testkey_rsa(unsigned bits);
/* An EC key pair on a named curve ("P-256", "P-384"). */
EVP_PKEY *testkey_ec(const char *curve);
/* DER SubjectPublicKeyInfo of pkey (malloc'd; caller frees). 0 or -1. */
int testkey_spki(EVP_PKEY *pkey, unsigned char **der, size_t *len);
/* Parses DER SPKI. NULL on error. */
EVP_PKEY *testkey_from_spki(const unsigned char *der, size_t len);

#endif
