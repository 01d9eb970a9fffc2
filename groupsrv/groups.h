/*
 * groups.h: groups as the server and the admin commands see them: the
 * store's rows joined with key handles on the token, plus the admin
 * operations (create, rotate, retire, import a certificate, rotate the
 * secret key, add/remove members) and the key attribute audit run by
 * `groupsrv check` and at `groupsrv serve` start.
 *
 * Token object labels (see docs/operations.md):
 *   gs:ca                    CA key pair (sign only)
 *   gs:group:<name>:v<N>     group key pair version N (pub and priv share label and CKA_ID)
 *   gs:secret:<name>:v<N>    group secret key version N (AES-256, wrap only, extractable only wrapped)
 *   gs:reject:<name>         implicit-rejection HMAC key (groups that allow PKCS#1 v1.5)
 *   gs:seal                  RSA key pair (decrypt only) that sealed secret keys open with, on
 *                            tokens that cannot keep secret keys (policy.h: secret-sealed)
 * A group key adopted with --use-key keeps its own label: the store holds
 * the pkcs11: URI it was given by.
 *
 * Threads: a gs_group is a snapshot; it is read-only after gs_group_load
 * and may be shared by threads, but membership is NOT in it: ask the store
 * (gs_store_member_get) on every request. Reload the group (cheap: one
 * query plus C_FindObjects per version) when key versions may have changed,
 * e.g. per request or on a short timer.
 *
 * Ownership: gs_group_load returns a gs_group freed with gs_group_free;
 * the X509 and hsm_key pointers in its refs are borrowed from it.
 */
#ifndef GS_GROUPS_H
#define GS_GROUPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <openssl/x509.h>

#include "ca.h"
#include "config.h"
#include "gs_error.h"
#include "hsm.h"
#include "policy.h"
#include "store.h"

typedef struct gs_group gs_group;

typedef struct gs_group_key_ref {
    unsigned version;
    bool current;
    X509 *cert;          /* the group certificate of this version (borrowed) */
    STACK_OF(X509) *former; /* the certificates `group import-cert` replaced, newest first, at most
                               GS_FORMER_CERTS_MAX (borrowed; NULL if none): mail sent to them
                               names them, and must still find this version */
    hsm_key *key;        /* the group private key on the token (borrowed); NULL if this token lacks it */
    hsm_key_type type;   /* RSA or EC */
    unsigned missing;    /* its accepted key-level weakenings (enum hsm_protection) */
} gs_group_key_ref;

typedef struct gs_group_secret_ref {
    unsigned version;
    bool current;
    unsigned char kek_id[GS_KEK_ID_LEN];
    hsm_key *key;        /* the AES-256 secret key on the token, or sealed (borrowed); NULL if this
                            token lacks it */
} gs_group_secret_ref;

/* Loads group `name` with every non-retired key version and secret key
 * version, finding each on the token. NOT_FOUND for an unknown group. A
 * version recorded in the database but missing from this token (servers
 * on cloned tokens sharing one database, one token not yet given a new
 * version) is loaded with key NULL: callers answer key_unavailable for
 * that version. Other token failures are GS_ERR_HSM (detail names the
 * label). Does not audit attributes (see gs_keys_audit). */
gs_err gs_group_load(gs_store *st, hsm_ctx *hsm, const char *name, gs_group **out);
void gs_group_free(gs_group *g);

const gs_store_group *gs_group_info(const gs_group *g);  /* name, address, methods, ... (borrowed) */
int64_t gs_group_id(const gs_group *g);
/* True when a version the database records was not on the token at load
 * (its key is NULL): a cache loads such a group again, so that a key
 * copied to the token meanwhile is found at the next request. */
bool gs_group_lacks_keys(const gs_group *g);
/* Searches the token once more for each version (and the rejection key)
 * the load did not find, and fills in those now found; *found says
 * whether any was. A key another process has just made may be missing
 * from a search made at that moment and shown by the next (SoftHSM
 * writes a new object's file after releasing its lock; a network HSM
 * cluster shows it on the other members after it synchronised). The
 * hsm_key of a version found is owned by g like the others: refs the
 * caller holds stay valid, their key now set. Clears the lacks_keys mark
 * when nothing is missing any more. GS_OK, or GS_ERR_HSM when a search
 * failed (detail names the label). */
gs_err gs_group_find_missing(gs_group *g, hsm_ctx *hsm, bool *found);
/* Key versions, newest first; index 0 is the current one. */
size_t gs_group_key_count(const gs_group *g);
const gs_group_key_ref *gs_group_key_at(const gs_group *g, size_t i);
const gs_group_key_ref *gs_group_current_key(const gs_group *g);
/* Secret key versions, newest first; 0 of them if the group has no
 * group-secret method. */
size_t gs_group_secret_count(const gs_group *g);
const gs_group_secret_ref *gs_group_secret_at(const gs_group *g, size_t i);
const gs_group_secret_ref *gs_group_current_secret(const gs_group *g); /* NULL if none */
const gs_group_secret_ref *gs_group_secret_by_kek_id(const gs_group *g, const unsigned char *id, size_t len);
/* The implicit-rejection HMAC key (on the token, or sealed), or NULL when
 * the group does not allow PKCS#1 v1.5. */
hsm_key *gs_group_reject_key(const gs_group *g);
/* Where g keeps it (gs_group_find_missing may fill it in later). */
hsm_key *const *gs_group_reject_key_slot(const gs_group *g);
/* The group's recorded key policy (borrowed). */
const gs_policy *gs_group_policy(const gs_group *g);
/* Where hsm/ re-wraps this group's content keys (from its policy). */
hsm_rewrap_path gs_group_rewrap_path(const gs_group *g);
/* PEM chain for GET /certificate: current group cert, then the CA cert if
 * it issued it (ca may be NULL). Caller frees. */
gs_err gs_group_cert_chain_pem(const gs_group *g, const gs_ca *ca, char **pem);

/* ---- admin operations (commands and the admin REST API) ------------------ */

typedef struct gs_group_spec {
    const char *name;
    const char *address;       /* LIST@DOMAIN, the SAN rfc822Name */
    const char *keyspec;       /* NULL = "rsa:3072" */
    unsigned methods;          /* 0 = GS_METHODS_DEFAULT */
    /* PKCS#1 v1.5 key transport (what NSS, gpgsm and Outlook send) is
     * accepted, through implicit rejection, by every RSA group unless
     * oaep_only; allow_pkcs1v15 asks for it explicitly (an error for EC
     * keys, and together with oaep_only). */
    bool allow_pkcs1v15;
    const char *use_key;       /* a pkcs11: URI of an existing private key to adopt instead of
                                  generating one (keyspec is then taken from the key); NULL */
    bool replicable;           /* keys leave the token only under trusted wrap (the key
                                  ceremony); RSA only, never with use_key; required by
                                  GS_METHOD_LOCAL_KEY */
    bool oaep_only;
    gs_wrap member_wrap;       /* member-certs copies: DEFAULT = PKCS1V15 */
    /* The group's first admin (NULL: none, as `group create`), recorded
     * in the transaction that records the group: POST /v1/groups made
     * them in two steps, and a failed second left a group nobody could
     * administer, its name taken (a retry was 400 exists). admin_cert_pem
     * (may be NULL) is stored as given, already checked by the caller. */
    const char *admin_email;
    const char *admin_cert_pem;
} gs_group_spec;

/* The key attribute audit's verdict on one key of group g, kind "group"
 * (a key version), "secret" or "reject", as `groupsrv check` reports it:
 * NULL when info meets the group's recorded policy with the accepted
 * weakenings `missing` (enum hsm_protection), else the problem. A
 * replicable group's keys may also be the original (sensitive,
 * extractable only with CKA_WRAP_WITH_TRUSTED) or a copy from the key
 * ceremony (sensitive, not extractable, CKA_ALWAYS_SENSITIVE false as on
 * every unwrapped key); *custody (may be NULL) says which (gs_key_check2).
 * Every other extractable key is refused. */
const char *gs_key_policy_problem(const gs_store_group *g, const char *kind, unsigned missing,
                                  const hsm_key_info *info, const char **custody);

/* The same verdict for the local CA's key (sign only, every protection),
 * e.g. a copy `ca import` just made; *custody (may be NULL) as above. */
const char *gs_ca_key_problem(const hsm_key_info *info, bool replicable, const char **custody);

/* The hsm usage bits a group key version must have and nothing more. */
unsigned gs_group_key_usage(hsm_key_type type, unsigned methods, bool allow_pkcs1v15);

/* A failed commit whose outcome is not known (gs_store_commit_unknown:
 * the COMMIT sent, its answer lost, the database gone for the lookup):
 * the rows naming the new token keys may be there once the database is
 * back, so the caller keeps the keys. Logs that and sets err's detail:
 * what may have been made (`made`: "group eng was created"), the kept
 * labels (", " between them), how to tell (`group show GROUP`, or `ca
 * show` where group is NULL). Returns err. */
gs_err gs_keys_kept_after_unknown_commit(gs_err err, const char *made, const char *group, const char *labels);

/* Creates the group: its key policy chosen from the token's capability
 * set (policy.h), key pair v1 on the token with exactly the usage that
 * policy needs and every protection the token stores (attributes read
 * back and checked; what it cannot store recorded as a weakening), or the
 * key named by spec->use_key adopted after the same checks (POLICY, with
 * what to do, if it falls short of what the token allows), the group
 * certificate from the CA (CN=name, SAN rfc822Name=address, keyUsage
 * keyEncipherment (RSA) or keyAgreement (EC), EKU emailProtection), the
 * secret key v1 when group-secret is allowed, the rejection key when
 * PKCS#1 v1.5 is, and the rows. On failure nothing is left behind (token
 * objects made here destroyed; an adopted key is never destroyed).
 * EXISTS for a duplicate name or taken labels. */
gs_err gs_group_create(gs_store *st, hsm_ctx *hsm, const gs_ca *ca, const struct gs_config *cfg,
                       const gs_group_spec *spec, unsigned *version_out);
/* GS_OK when no group has list address `address` (compared without
 * ASCII case: one group per address, as gs_group_create holds to), else
 * EXISTS naming the group that has it. For a new group made another way
 * (group import), called under the keys lock. */
gs_err gs_group_address_free(gs_store *st, const char *address);
/* New key version (same policy) with a new certificate; old versions stay
 * usable for decryption until retired. */
gs_err gs_group_rotate(gs_store *st, hsm_ctx *hsm, const gs_ca *ca, const struct gs_config *cfg,
                       const char *name, unsigned *version_out);
/* The same; take_over: also on a clone with its own database whose
 * origin is gone (otherwise refused there, see group_made_elsewhere):
 * the new version, certified by this server's CA, makes it the origin.
 * *took_over (may be NULL): true when it did so, false for an ordinary
 * rotation (take_over on a server that is no clone). */
gs_err gs_group_rotate_ex(gs_store *st, hsm_ctx *hsm, const gs_ca *ca, const struct gs_config *cfg,
                          const char *name, bool take_over, unsigned *version_out, bool *took_over);
/* Retires every version < before (not the current one: STATE): marks
 * them retired, then destroys their token objects. Versions retired
 * earlier whose objects are still on this token (another server of a
 * shared database retired them, or a destroy failed) are destroyed too;
 * *n_cleared counts them. Either count may be NULL. */
gs_err gs_group_retire(gs_store *st, hsm_ctx *hsm, const char *name, unsigned before, size_t *n_retired,
                       size_t *n_cleared);
/* The same for group secret key versions (`secret retire`): marks every
 * old secret version below `before` (at most the current one) retired,
 * dropping a sealed one's blob, then destroys their token objects, and
 * those of secret versions retired earlier still on this token. STATE
 * for a group without group-secret or a bad `before`. Takes the keys
 * lock. */
gs_err gs_secret_retire(gs_store *st, hsm_ctx *hsm, const char *name, unsigned before, size_t *n_retired,
                        size_t *n_cleared);
/* `secret record`: records again secret key version `version` of group
 * `name` that the database does not record but the token holds
 * (gs:secret:NAME:vN, made after the backup a restored database
 * predates), under kek_id, the KEK identifier mail and members' copies
 * carry: as old, or as current above the current version. The key must
 * pass the key audit with the current secret version's weakenings.
 * NOT_FOUND (no such key on the token either), EXISTS (the version or
 * the identifier is recorded), STATE (no group-secret, or sealed secret
 * keys: those lived in the database only). Takes the keys lock. */
gs_err gs_secret_record(gs_store *st, hsm_ctx *hsm, const char *name, unsigned version,
                        const unsigned char kek_id[GS_KEK_ID_LEN]);
/* Labels of token objects the database does not record that the last
 * group rotate, secret rotate or member remove of this thread numbered
 * its new version past (kept: see free_version), ", "-separated, copied
 * to buf (cap bytes) and cleared. Returns their length (0: none). */
size_t gs_skipped_labels_take(char *buf, size_t cap);
/* Replaces the certificate of `version` (0 = current) with one signed
 * elsewhere: must parse, be valid now, carry the token key's public key
 * and the list address as rfc822Name (GS_ERR_CERT otherwise). The
 * certificate it replaces is kept after it (at most GS_FORMER_CERTS_MAX),
 * so RecipientInfos of mail sent before the renewal, which name the old
 * certificate's issuer and serial, still find the version. Under the keys
 * lock from reading the record to writing it: two at once take turns, and
 * neither drops the other's certificate. */
gs_err gs_group_import_cert(gs_store *st, hsm_ctx *hsm, const char *name, unsigned version, X509 *cert);
/* Renews the certificate of `version` (0 = current) from the local CA for
 * the same token key: a new certificate as `group create` issues them
 * (lifetime [ca] group_cert_days), recorded as gs_group_import_cert does,
 * the old one kept. NOT_FOUND for no such version; GS_ERR_HSM when this
 * token lacks the key. *version_out: the version renewed. */
gs_err gs_group_renew_cert(gs_store *st, hsm_ctx *hsm, const gs_ca *ca, const struct gs_config *cfg,
                           const char *name, unsigned version, unsigned *version_out);
/* New group secret key version (AES-256 on the token). STATE if the group
 * does not allow group-secret. */
gs_err gs_secret_rotate(gs_store *st, hsm_ctx *hsm, const char *name, unsigned *version_out);
/* Adds a member. cert may be NULL (then members authenticate with a
 * certificate from a configured client CA whose email matches); when
 * given it must be valid X.509 with an email equal (case-insensitive) to
 * email (GS_ERR_CERT otherwise). EXISTS for a duplicate member. */
gs_err gs_member_add(gs_store *st, const char *group, const char *email, gs_role role, X509 *cert);
/* The same with the member's own wrap for member-certs copies (DEFAULT:
 * the group's), recorded in the same transaction. */
gs_err gs_member_add_wrap(gs_store *st, const char *group, const char *email, gs_role role, X509 *cert,
                          gs_wrap wrap);

/* Adds the member, or replaces the record of one (the REST API's PUT), in
 * one transaction: a record that is refused (a certificate for another
 * address, a store error) leaves the old one as it was. *replaced: there
 * was one (false on failure). */
gs_err gs_member_put(gs_store *st, const char *group, const char *email, gs_role role, X509 *cert, gs_wrap wrap,
                     bool *replaced);
/* `groupsrv member set`: the record prev (as gs_store_member_get read
 * it, under the keys lock) replaced as gs_member_put replaces it, with
 * role and wrap, and cert (checked as gs_member_put checks it) or, NULL,
 * prev's certificate PEM kept as stored. The address keeps its stored
 * spelling. */
gs_err gs_member_set(gs_store *st, int64_t group_id, const gs_store_member *prev, gs_role role, X509 *cert,
                     gs_wrap wrap);
/* *admins: how many of the group's members are admins. */
gs_err gs_member_admins(gs_store *st, int64_t group_id, size_t *admins);
/* Puts a member's record back as it was before a change whose audit
 * record could not be written (the REST API's PUT and DELETE): prev as
 * gs_store_member_get read it (its role, certificate PEM as stored, and
 * wrap), or NULL for a member that did not exist (the record is deleted).
 * Only while the record is still `made`, the one the change left (as
 * gs_store_member_get read it after the change; NULL: a removal): a
 * record changed again since is left as it is, GS_ERR_STATE. The check
 * and the undo are one transaction; callers hold the keys lock from
 * before the change, so that no member change that takes it can come
 * between. No key is made or destroyed (a removal's new secret or key
 * version stays). */
gs_err gs_member_restore(gs_store *st, int64_t group_id, const char *email, const gs_store_member *prev,
                         const gs_store_member *made);
/* Removes a member; when cfg->server.auto_rotate_secret_on_remove and the
 * group uses group-secret, a new secret key version is made on the token
 * first and recorded in the same transaction as the removal.
 * *rotated_version (may be NULL) gets the new version or 0. */
gs_err gs_member_remove(gs_store *st, hsm_ctx *hsm, const struct gs_config *cfg, const char *group,
                        const char *email, unsigned *rotated_version);

/* What a removal rotated (0 = nothing). */
typedef struct gs_member_removal {
    unsigned secret_version; /* new group secret key version */
    unsigned key_version;    /* new group key version: groups that allow local-key (option C) */
    char email[GS_EMAIL_MAX + 1]; /* the member removed, as stored (the request may differ in case) */
    bool rotate_elsewhere;   /* nothing rotated: the group came by `group import` from the server that
                                makes its versions (a clone's own database) */
} gs_member_removal;
/* gs_member_remove, and for a group that allows local-key also a new
 * group key version with its certificate from ca (NULL: the local CA is
 * loaded from st and hsm): a member who held a copy of the group key on
 * their own token must not read mail sent after their removal. The
 * removal and every new version are recorded in one transaction; on
 * failure the new token objects are destroyed again. Where the group came
 * by `group import` into a clone's own database, nothing is rotated (the
 * origin makes the versions) and out->rotate_elsewhere says so. */
gs_err gs_member_remove_ex(gs_store *st, hsm_ctx *hsm, const gs_ca *ca, const struct gs_config *cfg,
                           const char *group, const char *email, gs_member_removal *out);

/* ---- key attribute audit ---------------------------------------------------- */

typedef struct gs_key_audit_row {
    const char *label;        /* token label */
    const char *kind;         /* "ca", "group", "secret", "reject" */
    const char *group;        /* group name or "" */
    unsigned version;         /* 0 when not versioned */
    bool present;             /* found on the token */
    const hsm_key_info *info; /* attributes read (NULL if absent) */
    bool ok;
    const char *problem;      /* first problem found, "" when ok */
    const char *accepted;     /* the key's recorded weakenings ("no-allowed-mechanisms,..."), "" */
    const char *note;         /* what could not be verified through this module, "" */
    const char *custody;      /* replicable groups: "replicable: leaves only under trusted
                                 wrap" or "imported copy"; "" otherwise */
} gs_key_audit_row;

/* Checks every key the store records (CA, each non-retired group key
 * version, secret key versions, rejection keys, seal keys): present,
 * sensitive, always sensitive, never extractable (secret keys: extractable
 * only by wrapping, value unreadable; replicable groups: see
 * gs_key_policy_problem), exactly the usage its group's policy allows,
 * and every protection it was recorded with (unwrap template forcing
 * sensitive, allowed mechanisms within policy): the policy that was
 * possible on its token, not more; the group certificate's key equals the
 * token's; a sealed secret opens. cb (may be NULL) gets each row
 * (borrowed for the call). *problems = number of bad rows. Returns GS_OK
 * when the audit ran (whatever it found). */
gs_err gs_keys_audit(gs_store *st, hsm_ctx *hsm, void (*cb)(void *arg, const gs_key_audit_row *row), void *arg,
                     unsigned *problems);

/* Every key on the token labelled "gs:..." that the database does not
 * record (transport keys aside, which no database records): cb gets each
 * label once. What a killed import or a failed run left, or versions made
 * after the backup a restored database predates. GS_OK when the listing
 * ran. */
gs_err gs_keys_unrecorded(gs_store *st, hsm_ctx *hsm, void (*cb)(void *arg, const char *label), void *arg);

/* Whether any object labelled label is on the token (*present; one or
 * more): GS_OK. A lookup that fails otherwise: gs_hsm_fail's error (with
 * its detail), *present false. */
gs_err gs_token_label_present(hsm_ctx *hsm, const char *label, bool *present);

/* Destroys every key object labelled label (both halves of a pair, or a
 * secret key); best effort (failures are logged), for undoing a command's
 * own new objects. */
void gs_token_destroy_label(hsm_ctx *hsm, const char *label);

/* Opens the token named in cfg->hsm (wrong PIN etc. -> GS_ERR_TOKEN with
 * detail). */
gs_err gs_hsm_open(const struct gs_config *cfg, hsm_ctx **out);
/* Where gs_hsm_open remembers a PIN the token refused (hsm_config's
 * refusal_path): GS_PIN_REFUSAL_FILE in the directory of [db] path, or
 * with [db] url of [audit] path. malloc'd; NULL when out of memory. */
#define GS_PIN_REFUSAL_FILE "pin-refused"
char *gs_pin_refusal_path(const struct gs_config *cfg);

#endif
