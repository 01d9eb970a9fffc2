/*
 * gm_store.h: groupmail's local stores under the store directory
 * ([store] dir, default ~/.local/share/groupmail), one subdirectory each:
 *   pins/<group>@<host_port>.pem           pinned group certificate chain
 *   secret-keys/<group>@<host_port>/<member cert sha256, 16 hex>/vN.json: version N,
 *                                            still RSA-OAEP-wrapped to the member key
 *   membership/<group>@<host_port>.pem/.key  cached membership certificate and key
 * Files 0600, written atomically (temp file + rename); directories 0700.
 */
#ifndef GS_GM_STORE_H
#define GS_GM_STORE_H

#include "gm.h"

char *gm_pin_path(const gm_config *c);
/* 0 and the chain (leaf first); -1 when there is no pin; -2 corrupt;
 * -3 two pins of the server (as typed by an older groupmail) differ: said. */
int gm_pin_load(const gm_config *c, STACK_OF(X509) **chain);
int gm_pin_save(const gm_config *c, STACK_OF(X509) *chain);

int gm_secret_store_save(const gm_config *c, X509 *member_cert, const gs_secret_keys *keys);
/* One stored secret key version, as read back from its vN.json. */
typedef struct gm_secret_entry {
    uint64_t version;
    unsigned char *kek_id;      /* KEKRI key identifier */
    size_t kek_id_len;
    unsigned char *wrapped_key; /* still RSA-OAEP-wrapped to the member key */
    size_t wrapped_key_len;
    char algorithm[32];         /* as stored ("RSA-OAEP", "RSA-OAEP-256"); "?" if absent, empty,
                                   too long, or not printable ASCII without spaces */
} gm_secret_entry;
/* Parses one stored version (JSON: version >= 0, base64 kek_id and
 * wrapped_key, optional algorithm). The store is groupmail's own, but
 * anything running as the user may have changed it: 0, or -1 when it is
 * not a well-formed entry (out empty). Clear with gm_secret_entry_clear. */
int gm_secret_entry_parse(const unsigned char *buf, size_t len, gm_secret_entry *out);
void gm_secret_entry_clear(gm_secret_entry *e);

typedef struct gm_stored_secret {
    uint64_t version;
    unsigned char *wrapped_key; /* RSA-OAEP to the member key */
    size_t wrapped_key_len;
    bool sha256;                /* RSA-OAEP-256 */
} gm_stored_secret;
/* 0 when a stored version has this KEK identifier. */
int gm_secret_store_find(const gm_config *c, X509 *member_cert, const unsigned char *kek_id, size_t kek_id_len,
                         gm_stored_secret *out);
void gm_stored_secret_clear(gm_stored_secret *s);
/* Prints the stored secret key versions of the configured group to out,
 * one line each ("vN kek_id=HEX algorithm=ALG member_cert=FP16"), sorted
 * by version, without unwrapping anything: only member_cert's directory,
 * or every member certificate's when NULL. Creates nothing. Returns the
 * number of versions listed, or -1 after printing an error. */
long gm_secret_store_list(const gm_config *c, X509 *member_cert, FILE *out);

typedef struct gm_mcert {
    X509 *cert;
    EVP_PKEY *pkey;
    unsigned char *cert_pem, *key_pem; /* for gs_rest_opts; key_pem wiped on clear */
    size_t cert_pem_len, key_pem_len;
} gm_mcert;
/* A cached membership certificate valid for at least min_validity more seconds. */
int gm_mcert_load(const gm_config *c, long min_validity, gm_mcert *m);
/* A fresh RSA-2048 key in m and a CSR without identity (PEM, caller frees). */
int gm_mcert_new_key(gm_mcert *m, char **csr_pem, size_t *csr_len);
/* Checks the issued certificate matches m's key, stores both (0600).
 * GM_EXIT_OK; GM_EXIT_UNREACHABLE for an answer that is no certificate
 * for m's key; GM_EXIT_ERROR when the store cannot take them (a full
 * disk), the cached pair then left as it was. */
int gm_mcert_accept(const gm_config *c, gm_mcert *m, const char *cert_pem, size_t cert_len);
void gm_mcert_clear(gm_mcert *m);
char *gm_mcert_path(const gm_config *c);

#endif
