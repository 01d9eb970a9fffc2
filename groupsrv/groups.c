/* groups.c: see groups.h. Token objects are created first and the rows
 * recorded after, in one transaction; any failure destroys the new token
 * objects, so an admin command either completes or changes nothing. */
#include "groups.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "certname.h"
#include "log.h"
#include "mailaddr.h"
#include "util.h"

struct gs_group {
    gs_store_group *info;
    gs_policy policy;
    gs_group_key_ref *versions;         /* group key pair versions, newest first */
    size_t n_versions;
    gs_group_secret_ref *kek_versions;  /* group secret key (KEK) versions, newest first */
    size_t n_kek_versions;
    hsm_key *reject;
    bool lacks_keys; /* a version the database records is not on this token */
    /* The token labels of the versions the load did not find (parallel to
     * versions and kek_versions; NULL where found), for gs_group_find_missing. */
    char **missing_labels, **missing_kek_labels;
};

/* ---- small helpers -------------------------------------------------------- */

static void label_group(char *buf, size_t n, const char *g, unsigned v) { (void)snprintf(buf, n, "gs:group:%s:v%u", g, v); }
static void label_secret(char *buf, size_t n, const char *g, unsigned v) { (void)snprintf(buf, n, "gs:secret:%s:v%u", g, v); }
static void label_reject(char *buf, size_t n, const char *g) { (void)snprintf(buf, n, "gs:reject:%s", g); }

/* The secret key commands (rotate, record, retire) and a removal's next
 * secret need a group that uses group-secret: STATE, naming it, if not. */
static gs_err require_group_secret(const gs_store_group *g)
{
    if (!(g->methods & GS_METHOD_GROUP_SECRET))
        return gs_err_set(GS_ERR_STATE, "group %s does not use group-secret", g->name);
    return GS_OK;
}

gs_err gs_token_label_present(hsm_ctx *hsm, const char *label, bool *present)
{
    hsm_key *k = NULL;
    hsm_err he = hsm_key_find(hsm, label, 0, &k);

    hsm_key_free(k);
    *present = he == HSM_OK || he == HSM_ERR_KEY_AMBIGUOUS;
    if (*present || he == HSM_ERR_KEY_NOT_FOUND)
        return GS_OK;
    return gs_hsm_fail(he, "looking up", label);
}

/* Is any object with this label on the token? EXISTS if so. The label is
 * one no database record names yet (a new group, version or secret), so
 * the object is most likely what a run that lost the token half-way
 * could not destroy: the error says how to delete it. */
static gs_err label_free(hsm_ctx *hsm, const char *label)
{
    bool present;
    gs_err err = gs_token_label_present(hsm, label, &present);

    if (err != GS_OK || !present)
        return err;
    return gs_err_set(GS_ERR_EXISTS,
                      "token already has an object labelled %s, which the database does not record "
                      "(left by a failed run? delete it: pkcs11-tool --login --delete-object --label %s "
                      "--type privkey, and pubkey or secrkey)",
                      label, label);
}

/* Labels of unrecorded token objects a new version went past (below). */
static _Thread_local char skipped_labels[256];

/* The first version from `from` on whose label no token object exists.
 * Such an object is a key made after the backup a restored database
 * predates (members may hold it, mail may be wrapped under it: its
 * number must not name another key), or one a failed run left: either
 * way it is kept, and the new version gets the next number. */
static gs_err free_version(hsm_ctx *hsm, void (*label_of)(char *, size_t, const char *, unsigned), const char *name,
                           unsigned from, unsigned *version, char *label, size_t cap)
{
    for (unsigned v = from; v > 0 && v < from + 256; v++) {
        bool present;
        label_of(label, cap, name, v);
        gs_err err = gs_token_label_present(hsm, label, &present);
        if (err != GS_OK)
            return err;
        if (!present) {
            *version = v;
            return GS_OK;
        }
        size_t used = strlen(skipped_labels);
        (void)snprintf(skipped_labels + used, sizeof(skipped_labels) - used, "%s%s", used > 0 ? ", " : "", label);
        log_warn("token object not in the database kept; the new version goes past it label=\"%s\"", log_qs(label));
    }
    return gs_err_set(GS_ERR_EXISTS, "token already has objects labelled %s and the 255 versions after it, which the "
                                     "database does not record",
                      label);
}

size_t gs_skipped_labels_take(char *buf, size_t cap)
{
    size_t n = strlen(skipped_labels);

    if (cap > 0)
        (void)util_strlcpy(buf, skipped_labels, cap);
    skipped_labels[0] = '\0';
    return n;
}

/* Labels of new token objects a failure path could not destroy (the
 * token went away), for the error line: this thread's command only. */
static _Thread_local char left_labels[256];

static void note_left(const char *label)
{
    size_t used = strlen(left_labels);

    if (strstr(left_labels, label) != NULL)
        return;
    (void)snprintf(left_labels + used, sizeof(left_labels) - used, "%s%s", used > 0 ? ", " : "", label);
}

/* Sets the error detail back to what failed, naming the new token
 * objects that could not be destroyed again, if any. Returns err. */
static gs_err restore_detail(gs_err err, const char *detail)
{
    if (left_labels[0] == '\0')
        return gs_err_set(err, "%s", detail);
    err = gs_err_set(err, "%s; left on the token, as the database does not record them: %s (delete them: "
                          "pkcs11-tool --login --delete-object --label LABEL --type privkey, pubkey or secrkey)",
                     detail, left_labels);
    left_labels[0] = '\0';
    return err;
}

/* A failed commit whose outcome is not known (gs_store_commit_unknown:
 * the COMMIT sent, its answer lost, the database gone for the lookup):
 * the rows naming the new token keys may be there once the database is
 * back (PostgreSQL's crash recovery keeps a commit that reached its WAL),
 * and destroying the keys then left a group, or its current version,
 * whose key no token has. So they stay; the error names them, what may
 * have been made (`made`: "group eng was created") and how to tell.
 * labels: the kept labels, ", " between them. Returns err. */
gs_err gs_keys_kept_after_unknown_commit(gs_err err, const char *made, const char *group, const char *labels)
{
    char detail[512];

    (void)util_strlcpy(detail, gs_err_detail(), sizeof(detail));
    log_warn("token keys kept: whether the commit recording them was made is not known group=%s labels=\"%s\"",
             group != NULL ? group : "-", log_qs(labels));
    return gs_err_set(err,
                      "whether %s is not known (its COMMIT was sent, the answer lost, the database not there to "
                      "ask): its new keys are kept on the token (%s); once the database answers, `groupsrv %s%s` "
                      "tells: not recorded there, delete them (pkcs11-tool --login --delete-object "
                      "--label LABEL --type privkey, pubkey or secrkey) before trying again (%s)",
                      made, labels, group != NULL ? "group show " : "ca show", group != NULL ? group : "", detail);
}

/* Appends label to a ", "-separated list in buf (cap bytes). */
static void label_list_add(char *buf, size_t cap, const char *label)
{
    size_t used = strlen(buf);

    if (used < cap)
        (void)snprintf(buf + used, cap - used, "%s%s", used > 0 ? ", " : "", label);
}

/* Destroys both halves of a pair (or a secret key) by label; best effort,
 * used on failure paths and by retire. Returns the first error. */
static hsm_err destroy_label(hsm_ctx *hsm, const char *label, hsm_key_class cls)
{
    hsm_key *k = NULL;
    hsm_err he = hsm_key_find(hsm, label, cls, &k);
    if (he == HSM_OK) {
        he = hsm_key_destroy(hsm, k);
        hsm_key_free(k);
    } else if (he == HSM_ERR_KEY_NOT_FOUND) {
        he = HSM_OK;
    }
    return he;
}

/* destroy_label on a failure path: what stays is named in the error. */
static void undo_label(hsm_ctx *hsm, const char *label, hsm_key_class cls)
{
    hsm_err he = destroy_label(hsm, label, cls);
    if (he != HSM_OK) {
        log_warn("could not destroy token key label=\"%s\" err=\"%s\"", log_qs(label), hsm_strerror(he));
        note_left(label);
    }
}

static void destroy_pair(hsm_ctx *hsm, const char *label)
{
    undo_label(hsm, label, HSM_CLASS_PRIVATE);
    undo_label(hsm, label, HSM_CLASS_PUBLIC);
}

void gs_token_destroy_label(hsm_ctx *hsm, const char *label)
{
    static const hsm_key_class classes[] = {HSM_CLASS_PRIVATE, HSM_CLASS_PUBLIC, HSM_CLASS_SECRET};

    for (size_t i = 0; i < GS_ARRAY_LEN(classes); i++) {
        hsm_err he = destroy_label(hsm, label, classes[i]);
        if (he != HSM_OK)
            log_warn("could not destroy token key label=\"%s\" err=\"%s\"", log_qs(label), hsm_strerror(he));
    }
}

unsigned gs_group_key_usage(hsm_key_type type, unsigned methods, bool allow_pkcs1v15)
{
    gs_policy everything_on_token;

    memset(&everything_on_token, 0, sizeof(everything_on_token));
    return gs_policy_group_usage(&everything_on_token, type, methods, allow_pkcs1v15);
}

/* What a key of group g of this kind must look like under policy pol,
 * with the accepted weakenings `missing`. */
static void group_expect(const gs_store_group *g, const gs_policy *pol, gs_key_kind kind, hsm_key_type type,
                         unsigned bits, unsigned missing, gs_key_expect *e)
{
    memset(e, 0, sizeof(*e));
    e->kind = kind;
    e->missing = missing;
    e->replicable = g->replicable;
    if (kind == GS_KIND_GROUP) {
        e->type = type;
        e->bits = bits;
        e->usage = gs_policy_group_usage(pol, type, g->methods, g->allow_pkcs1v15);
        e->allow_pkcs1v15 = g->allow_pkcs1v15;
        /* A v1.5 group made before v1.5 implied CKA_DECRYPT may lack it:
         * only its v1.5 unwraps fail (discovery does not offer v1.5). */
        e->decrypt_optional =
            g->allow_pkcs1v15 && !(gs_policy_group_usage(pol, type, g->methods, false) & HSM_USE_DECRYPT);
    } else if (kind == GS_KIND_SECRET) {
        /* Extractable by design (delivered wrapped); a replicable
         * group's copies read CKA_ALWAYS_SENSITIVE false (unwrapped). */
        e->usage = pol->secrets == GS_SECRETS_TOKEN_ECB ? HSM_USE_WRAP_ECB : HSM_USE_WRAP;
    }
}

const char *gs_key_policy_problem(const gs_store_group *g, const char *kind, unsigned missing,
                                  const hsm_key_info *info, const char **custody)
{
    hsm_key_type type = HSM_KEYTYPE_RSA;
    unsigned bits = 0;
    gs_key_expect e;
    gs_policy pol;

    if (custody != NULL)
        *custody = "";
    if (gs_keyspec_parse(g->algorithm, &type, &bits) != GS_OK)
        return "the group's key spec is invalid";
    if (gs_policy_parse(g->policy, &pol) != GS_OK)
        return "the group's key policy is unreadable";
    group_expect(g, &pol,
                 strcmp(kind, "secret") == 0   ? GS_KIND_SECRET
                 : strcmp(kind, "reject") == 0 ? GS_KIND_REJECT
                                               : GS_KIND_GROUP,
                 type, bits, missing, &e);
    return gs_key_check2(info, &e, NULL, custody);
}

const char *gs_ca_key_problem(const hsm_key_info *info, bool replicable, const char **custody)
{
    gs_key_expect e;

    memset(&e, 0, sizeof(e));
    e.kind = GS_KIND_CA;
    e.replicable = replicable;
    return gs_key_check2(info, &e, NULL, custody);
}

char *gs_pin_refusal_path(const struct gs_config *cfg)
{
    const char *beside = cfg->db.path != NULL ? cfg->db.path : cfg->audit.path;
    char *dir, *path = NULL;
    size_t n;

    if (beside == NULL || (dir = util_dir_of(beside)) == NULL)
        return NULL;
    n = strlen(dir) + sizeof("/" GS_PIN_REFUSAL_FILE);
    if ((path = malloc(n)) != NULL)
        (void)snprintf(path, n, "%s/%s", dir, GS_PIN_REFUSAL_FILE);
    free(dir);
    return path;
}

gs_err gs_hsm_open(const struct gs_config *cfg, hsm_ctx **out)
{
    hsm_config hc;
    hsm_err he;
    char *refusal = NULL;
    *out = NULL;
    /* A token URI that cannot name a token, or that carries a PIN, is a
     * configuration error (5), found before the module is loaded. The
     * config reader cannot check it: the network process links it
     * without p11-kit. */
    if (hsm_token_uri_check(cfg->hsm.token) != HSM_OK)
        return gs_err_set(GS_ERR_CONFIG, "%s: 'token' in [hsm]: %s", cfg->path != NULL ? cfg->path : "config",
                          hsm_last_error_detail());
    memset(&hc, 0, sizeof(hc));
    hc.module = cfg->hsm.module;
    hc.token_uri = cfg->hsm.token;
    hc.pin_source = cfg->hsm.pin_source;
    hc.max_sessions = cfg->hsm.max_sessions;
    hc.init_args = cfg->hsm.init_args;
    /* A PIN the token refused is not sent again by the next command or
     * start (a service manager restarting serve would lock a token that
     * counts tries without saying so): remembered beside the database,
     * or with [db] url beside the audit log, where the key holder writes. */
    if (cfg->hsm.pin_source != NULL && strcmp(cfg->hsm.pin_source, HSM_PIN_SOURCE_PINPAD) != 0 &&
        (refusal = gs_pin_refusal_path(cfg)) == NULL)
        return gs_err_set(GS_ERR_NOMEM, "out of memory");
    hc.refusal_path = refusal;
    he = hsm_open(&hc, out);
    free(refusal);
    /* A URI naming another module than [hsm] module (RFC 7512's
     * module-path=, module-name=) is found once the module is loaded:
     * a configuration error too. */
    if (he == HSM_ERR_URI)
        return gs_err_set(GS_ERR_CONFIG, "%s: 'token' in [hsm]: %s", cfg->path != NULL ? cfg->path : "config",
                          hsm_last_error_detail());
    if (he != HSM_OK) {
        gs_err err = gs_hsm_fail(he, "opening token", cfg->hsm.token);
        return err == GS_ERR_HSM ? gs_err_set(GS_ERR_TOKEN, "%s", gs_err_detail()) : err;
    }
    return GS_OK;
}

/* ---- loading --------------------------------------------------------------- */

/* Every certificate in a PEM text, in order (GS_ERR_CERT if none). */
static gs_err cert_pem_all(const char *pem, STACK_OF(X509) **out)
{
    BIO *bio = NULL;
    X509 *x;
    gs_err err = GS_ERR_NOMEM;

    *out = sk_X509_new_null();
    if (*out == NULL || (bio = BIO_new_mem_buf(pem, -1)) == NULL)
        goto out;
    while ((x = PEM_read_bio_X509(bio, NULL, util_pem_no_passphrase, NULL)) != NULL) /* never asks */
        if (!sk_X509_push(*out, x)) {
            X509_free(x);
            goto out;
        }
    err = sk_X509_num(*out) > 0 ? GS_OK : gs_err_set(GS_ERR_CERT, "not a valid X.509 certificate");
out:
    ERR_clear_error();
    BIO_free(bio);
    if (err != GS_OK) {
        sk_X509_pop_free(*out, X509_free);
        *out = NULL;
    }
    return err;
}

/* The certificates a version's record keeps after its current one (those
 * `group import-cert` replaced); *out NULL when there are none. */
static gs_err cert_pem_former(const char *pem, STACK_OF(X509) **out)
{
    STACK_OF(X509) *all = NULL;
    gs_err err;

    *out = NULL;
    /* The common case, one certificate, parses nothing more. */
    const char *second = strstr(pem, "-----BEGIN CERTIFICATE-----");
    if (second == NULL || strstr(second + 1, "-----BEGIN CERTIFICATE-----") == NULL)
        return GS_OK;
    if ((err = cert_pem_all(pem, &all)) != GS_OK)
        return err;
    X509_free(sk_X509_shift(all)); /* the current one, parsed by the caller */
    *out = all;
    return GS_OK;
}

void gs_group_free(gs_group *g)
{
    if (g == NULL)
        return;
    for (size_t i = 0; i < g->n_versions; i++) {
        X509_free(g->versions[i].cert);
        sk_X509_pop_free(g->versions[i].former, X509_free);
        hsm_key_free(g->versions[i].key);
    }
    free(g->versions);
    for (size_t i = 0; i < g->n_kek_versions; i++)
        hsm_key_free(g->kek_versions[i].key);
    free(g->kek_versions);
    for (size_t i = 0; g->missing_labels != NULL && i < g->n_versions; i++)
        free(g->missing_labels[i]);
    free(g->missing_labels);
    for (size_t i = 0; g->missing_kek_labels != NULL && i < g->n_kek_versions; i++)
        free(g->missing_kek_labels[i]);
    free(g->missing_kek_labels);
    hsm_key_free(g->reject);
    gs_store_group_free(g->info);
    free(g);
}

/* A sealed secret key of the store as an hsm key reference: its seal key
 * pair found on the token. */
static gs_err load_sealed(hsm_ctx *hsm, const char *seal_label, const unsigned char *blob, size_t len,
                          hsm_key_type type, unsigned bits, const char *what, hsm_key **out)
{
    hsm_key *seal = NULL;
    hsm_err he;

    *out = NULL;
    if (seal_label == NULL || blob == NULL)
        return gs_err_set(GS_ERR_SCHEMA, "%s is sealed but its seal key or blob is not recorded", what);
    he = hsm_key_find(hsm, seal_label, HSM_CLASS_PRIVATE, &seal);
    if (he == HSM_OK)
        he = hsm_key_from_sealed(hsm, seal, type, bits, blob, len, out);
    hsm_key_free(seal);
    if (he != HSM_OK)
        return gs_hsm_fail(he, what, seal_label);
    return GS_OK;
}

/* The keys labelled labels[0..n) found in one search (hsm_key_find_labels),
 * or NULL: then each is found by itself, as take_found finds none. */
static hsm_key **find_by_labels(hsm_ctx *hsm, hsm_key_class cls, const char *const *labels, size_t n)
{
    hsm_key **found;

    if (n < 2 || (found = calloc(n, sizeof(*found))) == NULL)
        return NULL;
    if (hsm_key_find_labels(hsm, cls, labels, n, found) != HSM_OK) {
        free(found); /* hsm_key_find names what went wrong */
        return NULL;
    }
    return found;
}

/* found[i], handed over to the caller, or NULL. */
static hsm_key *take_found(hsm_key **found, size_t i)
{
    hsm_key *k = found != NULL ? found[i] : NULL;
    if (k != NULL)
        found[i] = NULL;
    return k;
}

static void found_free(hsm_key **found, size_t n)
{
    for (size_t i = 0; found != NULL && i < n; i++)
        hsm_key_free(found[i]);
    free(found);
}

/* Whether the key found under a version's label is the one its
 * certificate names: false only when the token's public key was read and
 * differs. A token re-initialised (same label, and on SoftHSM,
 * opencryptoki and cards the same serial) whose labels were filled again
 * by another installation or a second `ca init`/`group create` against
 * another database holds other keys under the same labels: unwrapping
 * with them answered RSA-OAEP senders 400 unwrap_failed (the sender
 * blamed) and PKCS#1 v1.5 senders 200 with implicit rejection's
 * substitute key (every member's decryption failing), while the server
 * said nothing; `check` already said "certificate key differs from the
 * token key". Such a version is served as one this token lacks (503
 * key_unavailable for it, logged naming the label). The key's public half
 * is the one the key holder read when it found the key (hsm: its modulus
 * or point), not read again; one that could not be read then is exported
 * now, and one that cannot be read at all (an EC key without its public
 * object, a token error) is not judged: the unwrap answers as before. */
/* The versions (by token label: a group's version's own) whose key was
 * last found not to be their certificate's, with that key's SHA-256:
 * such a version is served as missing, and a group lacking a key is
 * loaded afresh at every request (and searched for again), so the error
 * was logged on every request to the group, drowning the log. Logged
 * once per version and key found; again when another key turns up under
 * the label, or after the right one was found. Process-wide (a server's
 * token workers share it); a full table forgets its oldest entry, which
 * then logs once more. */
#define MISMATCH_SLOTS 64
static struct {
    char label[GS_LABEL_MAX + 1];
    unsigned char spki_sha256[32];
} mismatch_seen[MISMATCH_SLOTS];
static unsigned mismatch_next;
static pthread_mutex_t mismatch_mu = PTHREAD_MUTEX_INITIALIZER;

/* Whether the mismatch of label's key (SHA-256 sha; NULL: the key matches
 * now) is news: true for a mismatch not logged yet. */
static bool mismatch_news(const char *label, const unsigned char *sha)
{
    bool news = sha != NULL;
    size_t i;

    if (strlen(label) > GS_LABEL_MAX)
        return news; /* not kept: logged every time, as before */
    if (pthread_mutex_lock(&mismatch_mu) != 0)
        return news;
    for (i = 0; i < MISMATCH_SLOTS; i++)
        if (strcmp(mismatch_seen[i].label, label) == 0)
            break;
    if (i < MISMATCH_SLOTS && sha == NULL) {
        mismatch_seen[i].label[0] = '\0'; /* right again: a later mismatch is news */
    } else if (i < MISMATCH_SLOTS) {
        news = memcmp(mismatch_seen[i].spki_sha256, sha, 32) != 0;
        memcpy(mismatch_seen[i].spki_sha256, sha, 32);
    } else if (sha != NULL) {
        for (i = 0; i < MISMATCH_SLOTS && mismatch_seen[i].label[0] != '\0'; i++)
            ;
        if (i == MISMATCH_SLOTS)
            i = mismatch_next++ % MISMATCH_SLOTS;
        (void)util_strlcpy(mismatch_seen[i].label, label, sizeof(mismatch_seen[i].label));
        memcpy(mismatch_seen[i].spki_sha256, sha, 32);
    }
    (void)pthread_mutex_unlock(&mismatch_mu);
    return news;
}

static bool key_is_certified(hsm_ctx *hsm, hsm_key *key, X509 *cert, const char *label)
{
    unsigned char *spki = NULL, sha[32];
    size_t spki_len = 0;
    bool ok, hashed = false;
    int same;

    if (key == NULL || cert == NULL)
        return true;
    /* What the key holder read of the key when it found it (its modulus
     * or point) answers without asking the token again; a key whose public
     * half was not read then is exported. */
    same = hsm_key_matches_public(key, X509_get0_pubkey(cert), sha);
    if (same >= 0) {
        ok = same == 1;
        hashed = true;
    } else {
        if (hsm_key_export_public(hsm, key, &spki, &spki_len) != HSM_OK) {
            free(spki);
            return true;
        }
        ok = gs_cert_matches_spki(cert, spki, spki_len);
        if (!ok)
            hashed = EVP_Digest(spki, spki_len, sha, NULL, EVP_sha256(), NULL) == 1;
        free(spki);
    }
    if (!ok && (!hashed || mismatch_news(label, sha)))
        log_error("group key is not the one its certificate names (the token initialised anew and the label "
                  "made again, or another token of the same label): not used, served as missing (groupsrv check "
                  "shows it; logged once for this key) label=\"%s\"",
                  log_qs(label));
    else if (!ok)
        log_debug("group key is still not the one its certificate names label=\"%s\"", log_qs(label));
    else
        (void)mismatch_news(label, NULL);
    return ok;
}

gs_err gs_group_load(gs_store *st, hsm_ctx *hsm, const char *name, gs_group **out)
{
    gs_group *g = NULL;
    gs_store_group_key *keys = NULL;
    gs_store_secret *secrets = NULL;
    const char **version_labels = NULL, **kek_labels = NULL;
    hsm_key **key_found = NULL, **secret_found = NULL;
    size_t nk = 0, ns = 0;
    hsm_key_type type;
    unsigned bits;
    gs_err err;
    hsm_err he;

    *out = NULL;
    g = calloc(1, sizeof(*g));
    if (g == NULL)
        return GS_ERR_NOMEM;
    err = gs_store_group_get(st, name, &g->info);
    if (err)
        goto out;
    err = gs_policy_parse(g->info->policy, &g->policy);
    if (!err)
        err = gs_keyspec_parse(g->info->algorithm, &type, &bits);
    if (err)
        goto out;
    err = gs_store_group_keys(st, g->info->id, &keys, &nk);
    if (!err)
        err = gs_store_secrets(st, g->info->id, &secrets, &ns);
    if (err)
        goto out;
    err = GS_ERR_NOMEM;
    g->versions = calloc(nk ? nk : 1, sizeof(*g->versions));
    g->kek_versions = calloc(ns ? ns : 1, sizeof(*g->kek_versions));
    g->missing_labels = calloc(nk ? nk : 1, sizeof(*g->missing_labels));
    g->missing_kek_labels = calloc(ns ? ns : 1, sizeof(*g->missing_kek_labels));
    if (g->versions == NULL || g->kek_versions == NULL || g->missing_labels == NULL || g->missing_kek_labels == NULL)
        goto out;
    /* Each version found by label costs a search of the token, often
     * linear in its objects; a group that rotated its secret key at every
     * removal has thousands: they are found in one search per class. */
    if ((version_labels = calloc(nk ? nk : 1, sizeof(*version_labels))) == NULL ||
        (kek_labels = calloc(ns ? ns : 1, sizeof(*kek_labels))) == NULL)
        goto out;
    for (size_t i = 0; i < nk; i++)
        version_labels[i] = keys[i].state == GS_KEY_RETIRED ? NULL : keys[i].token_label;
    for (size_t i = 0; i < ns; i++)
        kek_labels[i] = secrets[i].state == GS_KEY_RETIRED || secrets[i].sealed ? NULL : secrets[i].token_label;
    key_found = find_by_labels(hsm, HSM_CLASS_PRIVATE, version_labels, nk);
    secret_found = find_by_labels(hsm, HSM_CLASS_SECRET, kek_labels, ns);
    for (size_t i = 0; i < nk; i++) {
        gs_group_key_ref *r;
        if (keys[i].state == GS_KEY_RETIRED)
            continue;
        r = &g->versions[g->n_versions++];
        r->version = keys[i].version;
        r->current = keys[i].state == GS_KEY_CURRENT;
        r->type = type;
        err = gs_weak_parse(keys[i].weakenings, &r->missing);
        if (err)
            goto out;
        err = gs_cert_parse((const unsigned char *)keys[i].cert_pem, strlen(keys[i].cert_pem), &r->cert);
        if (err)
            goto out;
        err = cert_pem_former(keys[i].cert_pem, &r->former);
        if (err)
            goto out;
        if ((r->key = take_found(key_found, i)) != NULL)
            he = HSM_OK;
        else
            he = hsm_key_find(hsm, keys[i].token_label, HSM_CLASS_PRIVATE, &r->key);
        if (he == HSM_OK && !key_is_certified(hsm, r->key, r->cert, keys[i].token_label)) {
            hsm_key_free(r->key);
            r->key = NULL;
            he = HSM_ERR_KEY_NOT_FOUND;
        }
        if (he == HSM_ERR_KEY_NOT_FOUND) {
            r->key = NULL; /* recorded by another server; this token lacks it */
            g->lacks_keys = true;
            if ((g->missing_labels[g->n_versions - 1] = strdup(keys[i].token_label)) == NULL) {
                err = GS_ERR_NOMEM;
                goto out;
            }
            continue;
        }
        if (he != HSM_OK) {
            err = gs_hsm_fail(he, "group key", keys[i].token_label);
            goto out;
        }
    }
    for (size_t i = 0; i < ns; i++) {
        gs_group_secret_ref *r;
        if (secrets[i].state == GS_KEY_RETIRED)
            continue;
        r = &g->kek_versions[g->n_kek_versions++];
        r->version = secrets[i].version;
        r->current = secrets[i].state == GS_KEY_CURRENT;
        memcpy(r->kek_id, secrets[i].kek_id, GS_KEK_ID_LEN);
        if (secrets[i].sealed != NULL) {
            err = load_sealed(hsm, secrets[i].seal_label, secrets[i].sealed, secrets[i].sealed_len,
                              HSM_KEYTYPE_AES, 256, "sealed secret key", &r->key);
            if (err)
                goto out;
            continue;
        }
        if ((r->key = take_found(secret_found, i)) != NULL)
            continue;
        he = hsm_key_find(hsm, secrets[i].token_label, HSM_CLASS_SECRET, &r->key);
        if (he == HSM_ERR_KEY_NOT_FOUND) {
            r->key = NULL;
            g->lacks_keys = true;
            if ((g->missing_kek_labels[g->n_kek_versions - 1] = strdup(secrets[i].token_label)) == NULL) {
                err = GS_ERR_NOMEM;
                goto out;
            }
            continue;
        }
        if (he != HSM_OK) {
            err = gs_hsm_fail(he, "secret key", secrets[i].token_label);
            goto out;
        }
    }
    if (g->info->reject_sealed != NULL) {
        err = load_sealed(hsm, g->info->reject_seal_label, g->info->reject_sealed, g->info->reject_sealed_len,
                          HSM_KEYTYPE_GENERIC_SECRET, 256, "sealed rejection key", &g->reject);
        if (err)
            goto out;
    } else if (g->info->reject_label != NULL) {
        he = hsm_key_find(hsm, g->info->reject_label, HSM_CLASS_SECRET, &g->reject);
        if (he == HSM_ERR_KEY_NOT_FOUND) {
            /* Not on this token yet (a replica before the ceremony): PKCS#1
             * v1.5 requests are 503 key_unavailable here, OAEP is served. */
            g->reject = NULL;
            g->lacks_keys = true;
        } else if (he != HSM_OK) {
            err = gs_hsm_fail(he, "rejection key", g->info->reject_label);
            goto out;
        }
    }
    if (g->n_versions == 0 || !g->versions[0].current) {
        err = gs_err_set(GS_ERR_STATE, "group %s has no current key version", name);
        goto out;
    }
    *out = g;
    g = NULL;
    err = GS_OK;
out:
    found_free(key_found, nk);
    found_free(secret_found, ns);
    free(version_labels);
    free(kek_labels);
    gs_store_group_keys_free(keys, nk);
    gs_store_secrets_free(secrets, ns);
    gs_group_free(g);
    return err;
}

const gs_store_group *gs_group_info(const gs_group *g) { return g->info; }
int64_t gs_group_id(const gs_group *g) { return g->info->id; }
bool gs_group_lacks_keys(const gs_group *g) { return g->lacks_keys; }

/* One more search for *key by label; *missing stays set while not found
 * (or, with cert, while the key found is not the one it names). */
static gs_err find_again(hsm_ctx *hsm, const char *label, hsm_key_class cls, const char *what, X509 *cert,
                         hsm_key **key, bool *missing, bool *found)
{
    hsm_err he;

    if (*key != NULL || label == NULL)
        return GS_OK;
    he = hsm_key_find(hsm, label, cls, key);
    if (he == HSM_OK && cert != NULL && !key_is_certified(hsm, *key, cert, label)) {
        hsm_key_free(*key);
        he = HSM_ERR_KEY_NOT_FOUND;
    }
    if (he == HSM_ERR_KEY_NOT_FOUND) {
        *key = NULL;
        *missing = true;
        return GS_OK;
    }
    if (he != HSM_OK) {
        *key = NULL;
        *missing = true;
        return gs_hsm_fail(he, what, label);
    }
    *found = true;
    return GS_OK;
}

gs_err gs_group_find_missing(gs_group *g, hsm_ctx *hsm, bool *found)
{
    bool missing = false;
    gs_err err = GS_OK;

    *found = false;
    if (!g->lacks_keys)
        return GS_OK;
    for (size_t i = 0; i < g->n_versions && !err; i++)
        err = find_again(hsm, g->missing_labels[i], HSM_CLASS_PRIVATE, "group key", g->versions[i].cert,
                         &g->versions[i].key, &missing, found);
    for (size_t i = 0; i < g->n_kek_versions && !err; i++)
        err = find_again(hsm, g->missing_kek_labels[i], HSM_CLASS_SECRET, "secret key", NULL, &g->kek_versions[i].key,
                         &missing, found);
    if (!err && g->info->reject_sealed == NULL && g->info->reject_label != NULL)
        err = find_again(hsm, g->info->reject_label, HSM_CLASS_SECRET, "rejection key", NULL, &g->reject, &missing,
                         found);
    /* still incomplete (or not known to be complete): loaded afresh next time */
    g->lacks_keys = missing || err != GS_OK;
    return err;
}
size_t gs_group_key_count(const gs_group *g) { return g->n_versions; }
const gs_group_key_ref *gs_group_key_at(const gs_group *g, size_t i) { return i < g->n_versions ? &g->versions[i] : NULL; }
const gs_group_key_ref *gs_group_current_key(const gs_group *g) { return g->n_versions ? &g->versions[0] : NULL; }
size_t gs_group_secret_count(const gs_group *g) { return g->n_kek_versions; }
const gs_group_secret_ref *gs_group_secret_at(const gs_group *g, size_t i)
{
    return i < g->n_kek_versions ? &g->kek_versions[i] : NULL;
}
const gs_group_secret_ref *gs_group_current_secret(const gs_group *g)
{
    return g->n_kek_versions && g->kek_versions[0].current ? &g->kek_versions[0] : NULL;
}
const gs_group_secret_ref *gs_group_secret_by_kek_id(const gs_group *g, const unsigned char *id, size_t len)
{
    if (id == NULL || len != GS_KEK_ID_LEN)
        return NULL;
    for (size_t i = 0; i < g->n_kek_versions; i++)
        if (memcmp(g->kek_versions[i].kek_id, id, GS_KEK_ID_LEN) == 0)
            return &g->kek_versions[i];
    return NULL;
}
hsm_key *gs_group_reject_key(const gs_group *g) { return g->reject; }
hsm_key *const *gs_group_reject_key_slot(const gs_group *g) { return &g->reject; }
const gs_policy *gs_group_policy(const gs_group *g) { return &g->policy; }
hsm_rewrap_path gs_group_rewrap_path(const gs_group *g)
{
    return g->policy.rewrap == GS_REWRAP_SOFTWARE ? HSM_REWRAP_SOFTWARE : HSM_REWRAP_TOKEN;
}

gs_err gs_group_cert_chain_pem(const gs_group *g, const gs_ca *ca, char **pem)
{
    char *a = NULL, *b = NULL;
    X509 *cacert = ca ? gs_ca_cert(ca) : NULL;
    const gs_group_key_ref *cur = gs_group_current_key(g);
    gs_err err;
    size_t la, lb = 0;

    *pem = NULL;
    if (cur == NULL)
        return gs_err_set(GS_ERR_STATE, "group has no current key");
    err = gs_cert_to_pem(cur->cert, &a);
    if (err)
        return err;
    if (cacert && X509_check_issued(cacert, cur->cert) == X509_V_OK) {
        err = gs_cert_to_pem(cacert, &b);
        if (err)
            goto out;
        lb = strlen(b);
    }
    la = strlen(a);
    *pem = malloc(la + lb + 1);
    if (*pem == NULL) {
        err = GS_ERR_NOMEM;
        goto out;
    }
    memcpy(*pem, a, la);
    if (b)
        memcpy(*pem + la, b, lb);
    (*pem)[la + lb] = '\0';
out:
    free(a);
    free(b);
    return err;
}

/* ---- creating keys ------------------------------------------------------------ */

#define SEAL_LABEL "gs:seal"

/* Reads a new or adopted key's attributes back and checks them against
 * what it must be; returns its public key when asked (pub_out). */
static gs_err check_new_key(hsm_ctx *hsm, hsm_key *priv, const char *label, const gs_key_expect *e,
                            EVP_PKEY **pub_out)
{
    hsm_key_info info;
    unsigned char *spki = NULL;
    size_t spki_len = 0;
    const unsigned char *p;
    const char *problem;
    gs_err err = GS_OK;
    hsm_err he;

    if (pub_out != NULL)
        *pub_out = NULL;
    he = hsm_key_get_info(hsm, priv, &info);
    if (he != HSM_OK)
        return gs_hsm_fail(he, "reading attributes of", label);
    if ((problem = gs_key_check(&info, e, NULL)) != NULL)
        return gs_err_set(GS_ERR_POLICY, "key %s: %s", label, problem);
    if (pub_out == NULL)
        return GS_OK;
    he = hsm_key_export_public(hsm, priv, &spki, &spki_len);
    if (he != HSM_OK)
        return gs_hsm_fail(he, "reading public key of", label);
    p = spki;
    *pub_out = d2i_PUBKEY(NULL, &p, (long)spki_len);
    if (*pub_out == NULL)
        err = gs_err_set(GS_ERR_CRYPTO, "token public key of %s unreadable", label);
    free(spki);
    return err;
}

static void log_weakening(const char *label, const hsm_keygen_result *res)
{
    char weak[64];

    if (res->missing == 0)
        return;
    gs_weak_format(res->missing, weak, sizeof(weak));
    log_warn("key made without every protection (an accepted weakening, recorded) label=\"%s\" weakenings=%s why=\"%s\"",
             log_qs(label), weak, log_qs(res->why));
}

/* Generates a key pair on the token with exactly `usage` and every
 * protection the token stores (replicable: extractable only under trusted
 * wrap), checks it, and returns its public key; *missing gets the
 * protections it could not have. */
static gs_err make_pair(hsm_ctx *hsm, const char *label, gs_key_kind kind, hsm_key_type type, unsigned bits,
                        unsigned usage, bool allow_pkcs1v15, bool replicable, EVP_PKEY **pub_out,
                        unsigned *missing)
{
    hsm_keygen_spec ks;
    hsm_keygen_result res;
    hsm_key *pub = NULL, *priv = NULL;
    gs_key_expect e;
    gs_err err;
    hsm_err he;

    *pub_out = NULL;
    *missing = 0;
    err = label_free(hsm, label);
    if (err)
        return err;
    ks = (hsm_keygen_spec){.label = label, .type = type, .bits = bits, .usage = usage, .replicable = replicable};
    he = hsm_generate_keypair_best(hsm, &ks, &res, &pub, &priv);
    if (he != HSM_OK)
        return gs_hsm_fail(he, "generating key", label);
    memset(&e, 0, sizeof(e));
    e.kind = kind;
    e.type = type;
    e.bits = bits;
    e.usage = usage;
    e.allow_pkcs1v15 = allow_pkcs1v15;
    e.missing = res.missing;
    e.replicable = replicable;
    err = check_new_key(hsm, priv, label, &e, pub_out);
    if (err == GS_OK) {
        *missing = res.missing;
        log_weakening(label, &res);
    }
    hsm_key_free(pub);
    hsm_key_free(priv);
    if (err) {
        char detail[512];
        (void)util_strlcpy(detail, gs_err_detail(), sizeof(detail));
        destroy_pair(hsm, label);
        err = restore_detail(err, detail);
    }
    return err;
}

/* Generates a symmetric key on the token with exactly the given use and
 * every protection the token stores (replicable: extractable only under
 * trusted wrap), checks it, and destroys it again on a problem (tokens
 * may add usages). */
static gs_err make_sym_key(hsm_ctx *hsm, const char *label, gs_key_kind kind, hsm_key_type type, unsigned usage,
                           bool extractable, bool replicable, unsigned *missing)
{
    hsm_keygen_spec ks;
    hsm_keygen_result res;
    hsm_key *k = NULL;
    gs_key_expect e;
    gs_err err;
    hsm_err he;

    *missing = 0;
    err = label_free(hsm, label);
    if (err)
        return err;
    memset(&ks, 0, sizeof(ks));
    ks.label = label;
    ks.type = type;
    ks.bits = 256;
    ks.usage = usage;
    ks.extractable = extractable;
    ks.replicable = replicable;
    he = hsm_generate_secret_key_best(hsm, &ks, &res, &k);
    if (he != HSM_OK)
        return gs_hsm_fail(he, kind == GS_KIND_SECRET ? "generating secret key" : "generating rejection key", label);
    memset(&e, 0, sizeof(e));
    e.kind = kind;
    e.usage = usage;
    e.missing = res.missing;
    e.replicable = replicable;
    err = check_new_key(hsm, k, label, &e, NULL);
    if (err)
        (void)hsm_key_destroy(hsm, k);
    else {
        *missing = res.missing;
        log_weakening(label, &res);
    }
    hsm_key_free(k);
    return err;
}

/* The token key pair sealed secrets open with: found (and checked), or
 * made (decrypt only). *made tells the caller to destroy it on failure
 * and to record it; *seal is the caller's. */
static gs_err ensure_seal_key(hsm_ctx *hsm, const hsm_caps *caps, hsm_key **seal, bool *made, unsigned *missing)
{
    gs_key_expect e;
    EVP_PKEY *pk = NULL;
    gs_err err;
    hsm_err he;

    *seal = NULL;
    *made = false;
    *missing = 0;
    he = hsm_key_find(hsm, SEAL_LABEL, HSM_CLASS_PRIVATE, seal);
    if (he == HSM_OK) {
        memset(&e, 0, sizeof(e));
        e.kind = GS_KIND_SEAL;
        e.missing = gs_policy_caps_missing(caps);
        return check_new_key(hsm, *seal, SEAL_LABEL, &e, NULL);
    }
    if (he != HSM_ERR_KEY_NOT_FOUND)
        return gs_hsm_fail(he, "looking up", SEAL_LABEL);
    /* RSA-3072 where the token makes it, else RSA-2048 (smartcards). */
    err = make_pair(hsm, SEAL_LABEL, GS_KIND_SEAL, HSM_KEYTYPE_RSA,
                    caps->mech[HSM_MECH_RSA_KEYGEN].max_bits >= 3072 || caps->mech[HSM_MECH_RSA_KEYGEN].max_bits == 0
                        ? 3072
                        : 2048,
                    HSM_USE_DECRYPT, false, false, &pk, missing);
    EVP_PKEY_free(pk);
    if (err)
        return err;
    *made = true;
    he = hsm_key_find(hsm, SEAL_LABEL, HSM_CLASS_PRIVATE, seal);
    if (he != HSM_OK)
        return gs_hsm_fail(he, "finding the new seal key", SEAL_LABEL);
    log_info("seal key made label=\"%s\"", SEAL_LABEL);
    return GS_OK;
}

/* A group secret key (or the rejection key) as the policy says: on the
 * token, or sealed (then *sealed, the caller's, holds the blob). */
struct made_secret {
    bool on_token;          /* a token object was made (destroy on failure) */
    unsigned missing;       /* its weakenings */
    unsigned char *sealed;  /* sealed: the blob */
    size_t sealed_len;
};

static void made_secret_clear(struct made_secret *m)
{
    free(m->sealed);
    memset(m, 0, sizeof(*m));
}

static gs_err make_secret(hsm_ctx *hsm, gs_secret_store where, hsm_key *seal, const char *label,
                          struct made_secret *m)
{
    hsm_err he;
    gs_err err;

    memset(m, 0, sizeof(*m));
    if (where == GS_SECRETS_SEALED) {
        he = hsm_sealed_secret_new(hsm, seal, HSM_KEYTYPE_AES, 256, &m->sealed, &m->sealed_len);
        return he == HSM_OK ? GS_OK : gs_hsm_fail(he, "sealing a new secret key to", SEAL_LABEL);
    }
    /* Extractable only by wrapping: delivered wrapped to members. */
    err = make_sym_key(hsm, label, GS_KIND_SECRET, HSM_KEYTYPE_AES,
                       where == GS_SECRETS_TOKEN_ECB ? HSM_USE_WRAP_ECB : HSM_USE_WRAP, true, false, &m->missing);
    m->on_token = err == GS_OK;
    return err;
}

/* HMAC key for PKCS#1 v1.5 implicit rejection: never leaves, except for a
 * replicable group, whose clones must answer bad padding with the very
 * same substitute (else comparing two servers would tell valid padding). */
static gs_err make_reject(hsm_ctx *hsm, bool sealed, hsm_key *seal, const char *label, bool replicable,
                          struct made_secret *m)
{
    hsm_err he;
    gs_err err;

    memset(m, 0, sizeof(*m));
    if (sealed) {
        he = hsm_sealed_secret_new(hsm, seal, HSM_KEYTYPE_GENERIC_SECRET, 256, &m->sealed, &m->sealed_len);
        return he == HSM_OK ? GS_OK : gs_hsm_fail(he, "sealing a new rejection key to", SEAL_LABEL);
    }
    err = make_sym_key(hsm, label, GS_KIND_REJECT, HSM_KEYTYPE_GENERIC_SECRET, HSM_USE_SIGN, false, replicable,
                       &m->missing);
    m->on_token = err == GS_OK;
    return err;
}

static gs_err issue_group_cert(const gs_ca *ca, hsm_ctx *hsm, const struct gs_config *cfg, const char *name,
                               const char *address, EVP_PKEY *pk, char **pem)
{
    gs_cert_spec spec;
    X509 *cert = NULL;
    gs_err err;
    *pem = NULL;
    memset(&spec, 0, sizeof(spec));
    spec.pubkey = pk;
    spec.subject_cn = name;
    spec.san_email = address;
    /* What stock S/MIME clients look for in a recipient certificate. */
    spec.key_usage = EVP_PKEY_get_base_id(pk) == EVP_PKEY_EC ? GS_KU_KEY_AGREEMENT : GS_KU_KEY_ENCIPHERMENT;
    spec.ext_key_usage = GS_EKU_EMAIL_PROTECTION;
    spec.lifetime = (long)cfg->ca.group_cert_days * 86400L;
    spec.backdate = 300;
    err = gs_ca_issue(ca, hsm, &spec, &cert);
    if (err == GS_OK)
        err = gs_cert_to_pem(cert, pem);
    X509_free(cert);
    return err;
}

static gs_err new_kek_id(unsigned char id[GS_KEK_ID_LEN])
{
    if (RAND_bytes(id, GS_KEK_ID_LEN) != 1)
        return gs_err_set(GS_ERR_CRYPTO, "RAND_bytes failed");
    return GS_OK;
}

/* What to do about an adopted key that falls short. The mechanisms to
 * allow are the group's: an RSA group taking PKCS#1 v1.5 senders needs
 * RSA-PKCS beside RSA-OAEP (a key made as the hint once said, OAEP
 * alone, refused every v1.5 sender's message). */
static const char *adopt_hint(const char *problem, hsm_key_type type, bool v15)
{
    if (strstr(problem, "lacks RSA-PKCS,") != NULL)
        return "make the key with both (pkcs11-tool --allowed-mechanisms RSA-PKCS-OAEP,RSA-PKCS), or create the "
               "group with --oaep-only (RSA-OAEP senders only)";
    if (strstr(problem, "CKA_ALLOWED_MECHANISMS") != NULL)
        return type == HSM_KEYTYPE_EC ? "the token stores CKA_ALLOWED_MECHANISMS: make the key with it (pkcs11-tool "
                                        "--allowed-mechanisms ECDH1-DERIVE)"
               : v15 ? "the token stores CKA_ALLOWED_MECHANISMS: make the key with it (pkcs11-tool "
                       "--allowed-mechanisms RSA-PKCS-OAEP,RSA-PKCS; RSA-PKCS-OAEP alone with --oaep-only)"
                     : "the token stores CKA_ALLOWED_MECHANISMS: make the key with it (pkcs11-tool "
                       "--allowed-mechanisms RSA-PKCS-OAEP)";
    if (strstr(problem, "CKA_UNWRAP_TEMPLATE") != NULL)
        return "the token stores CKA_UNWRAP_TEMPLATE: make the key with one forcing CKA_SENSITIVE, or "
               "without CKA_UNWRAP";
    if (strstr(problem, "SENSITIVE") != NULL || strstr(problem, "EXTRACTABLE") != NULL ||
        strstr(problem, "readable") != NULL)
        return "a group key must be generated on the token, sensitive and never extractable";
    return "make the key with exactly the usage groupsrv check shows for the group's policy";
}

/* `group create --use-key URI`: the key made by the token's own tool,
 * checked against the policy this token allows. */
/* The methods of a new group with a key of this type: those asked, else
 * the default; an EC key does deliver=tls only (GS_METHODS_EC), and a
 * group advertising more would send its members' mail into refusals. */
static gs_err group_methods(const gs_group_spec *spec, hsm_key_type type, unsigned *methods)
{
    if (type != HSM_KEYTYPE_EC) {
        *methods = spec->methods ? spec->methods : GS_METHODS_DEFAULT;
        return GS_OK;
    }
    *methods = spec->methods ? spec->methods : GS_METHODS_EC;
    if (*methods & ~(unsigned)GS_METHODS_EC)
        return gs_err_set(GS_ERR_ARGS, "an EC group key can only be unwrapped with deliver=tls: use --methods tls "
                          "(the default for EC keys), or an RSA key for the other methods");
    return GS_OK;
}

/* An EC group is read by ECDH with the X9.63 KDF inside the token (the
 * shared secret never leaves it). A token may list CKM_ECDH1_DERIVE and
 * take CKD_NULL only (SoftHSM 2.6.1): its group would be made and pass
 * every check while every RFC 5753 message to it is refused at unwrap
 * (400 unsupported_algorithm), so the derive is tried first, with key
 * (an adopted one) or a session key pair of bits. */
static gs_err ec_kdf_check(hsm_ctx *hsm, hsm_key *key, unsigned bits)
{
    unsigned kdfs = 0;
    hsm_err he = hsm_probe_ecdh_kdf(hsm, key, bits, &kdfs);

    if (he != HSM_OK)
        return gs_hsm_fail(he, "trying ECDH with the X9.63 KDF", key != NULL ? hsm_key_label(key) : "(session key)");
    /* The token's lasting answer, as gs_policy_choose's refusals: 400
     * over REST, not 503 "try again later" and a token error counted. */
    if (kdfs == 0)
        return gs_err_set(GS_ERR_POLICY, "this token cannot hold EC group keys: %s, which every RFC 5753 sender's "
                          "message needs, so none could be read: use an RSA key (--key rsa:3072)",
                          hsm_last_error_detail());
    return GS_OK;
}

static gs_err adopt_group_key(hsm_ctx *hsm, const hsm_caps *caps, const gs_group_spec *spec, unsigned *methods,
                              bool *v15_out, gs_policy *pol, hsm_key_type *type, unsigned *bits, unsigned *missing,
                              EVP_PKEY **pk)
{
    const char *uri = spec->use_key;
    bool v15;
    hsm_key *key = NULL;
    hsm_key_info info;
    gs_key_expect e;
    const char *problem;
    char q[160];
    gs_err err;
    hsm_err he;

    *pk = NULL;
    *missing = 0;
    (void)log_quote(q, sizeof(q), uri);
    if (strncmp(uri, "pkcs11:", 7) != 0)
        return gs_err_set(GS_ERR_ARGS, "--use-key needs a pkcs11: URI of a private key");
    he = hsm_key_find(hsm, uri, HSM_CLASS_PRIVATE, &key);
    if (he == HSM_OK)
        he = hsm_key_get_info(hsm, key, &info);
    if (he != HSM_OK) {
        err = gs_hsm_fail(he, "--use-key", q);
        goto out;
    }
    *type = info.type;
    *bits = info.bits;
    if (!((info.type == HSM_KEYTYPE_RSA && (info.bits == 2048 || info.bits == 3072 || info.bits == 4096)) ||
          (info.type == HSM_KEYTYPE_EC && (info.bits == 256 || info.bits == 384)))) {
        err = gs_err_set(GS_ERR_POLICY, "--use-key %s: an RSA key of 2048, 3072 or 4096 bits or an EC key on "
                         "P-256 or P-384 is needed", q);
        goto out;
    }
    if (spec->allow_pkcs1v15 && info.type != HSM_KEYTYPE_RSA) {
        err = gs_err_set(GS_ERR_ARGS, "--allow-pkcs1v15 needs an RSA group key");
        goto out;
    }
    if ((err = group_methods(spec, info.type, methods)) != GS_OK)
        goto out;
    /* RSA groups take v1.5 by default: stock clients send nothing else. */
    v15 = *v15_out = info.type == HSM_KEYTYPE_RSA && !spec->oaep_only;
    err = gs_policy_choose(caps, info.type, *methods, v15, info.unwrap, pol);
    if (err)
        goto out;
    memset(&e, 0, sizeof(e));
    e.kind = GS_KIND_GROUP;
    e.type = info.type;
    e.bits = info.bits;
    e.usage = gs_policy_group_usage(pol, info.type, *methods, v15);
    e.allow_pkcs1v15 = v15;
    /* A key of a new group that takes v1.5: its mechanism list must let
     * it decrypt v1.5 (a key already serving is judged by check). */
    e.need_pkcs1v15 = v15;
    e.missing = gs_policy_caps_missing(caps);
    if ((problem = gs_key_check(&info, &e, NULL)) != NULL) {
        err = gs_err_set(GS_ERR_POLICY, "--use-key %s: %s: %s%s", q, problem, adopt_hint(problem, info.type, v15),
                         gs_adopt_custody_hint(problem));
        goto out;
    }
    /* What the key lacks of what applies to it: its recorded weakenings. */
    if (info.n_allowed_mechanisms == 0)
        *missing |= HSM_PROT_ALLOWED_MECHANISMS;
    if ((e.usage & HSM_USE_UNWRAP) && !info.has_unwrap_template)
        *missing |= HSM_PROT_UNWRAP_TEMPLATE;
    /* after the key's own checks: a key without CKA_DERIVE is told so */
    if (info.type == HSM_KEYTYPE_EC && (err = ec_kdf_check(hsm, key, info.bits)) != GS_OK)
        goto out;
    err = check_new_key(hsm, key, q, &e, pk);
out:
    hsm_key_free(key);
    return err;
}

/* The group's new key version 1, generated or adopted; *v15 whether the
 * group accepts PKCS#1 v1.5 (every RSA group unless --oaep-only). */
static gs_err first_group_key(hsm_ctx *hsm, const hsm_caps *caps, const gs_group_spec *spec, unsigned *methods,
                              gs_policy *pol, char *label, size_t label_size, char *keyspec, size_t keyspec_size,
                              unsigned *missing, EVP_PKEY **pk, bool *v15)
{
    hsm_key_type type;
    unsigned bits;
    gs_err err;

    *v15 = false;
    if (spec->use_key != NULL) {
        err = adopt_group_key(hsm, caps, spec, methods, v15, pol, &type, &bits, missing, pk);
        if (err)
            return err;
        if (util_strlcpy(label, spec->use_key, label_size) != UTIL_OK)
            return gs_err_set(GS_ERR_ARGS, "--use-key URI longer than %zu bytes", label_size - 1);
        (void)snprintf(keyspec, keyspec_size, "%s:%s%u", type == HSM_KEYTYPE_RSA ? "rsa" : "ec",
                       type == HSM_KEYTYPE_RSA ? "" : "p", bits);
        return GS_OK;
    }
    (void)util_strlcpy(keyspec, spec->keyspec ? spec->keyspec : "rsa:3072", keyspec_size);
    err = gs_keyspec_parse(keyspec, &type, &bits);
    if (err)
        return err;
    *v15 = type == HSM_KEYTYPE_RSA && !spec->oaep_only;
    err = gs_policy_choose(caps, type, *methods, *v15, true, pol);
    if (err)
        return err;
    if (type == HSM_KEYTYPE_EC && (err = ec_kdf_check(hsm, NULL, bits)) != GS_OK)
        return err;
    /* The key ceremony copies keys that are on the token; a sealed secret
     * lives outside it, sealed to a key pair that never leaves. */
    if (spec->replicable && (((*methods & GS_METHOD_GROUP_SECRET) && pol->secrets == GS_SECRETS_SEALED) ||
                             (*v15 && pol->reject_sealed)))
        return gs_err_set(GS_ERR_POLICY, "--replicable: this token cannot keep the group's %s on the token (%s), "
                          "so the key ceremony could not copy it%s",
                          pol->reject_sealed && *v15 ? "implicit-rejection key" : "secret keys",
                          pol->reject_sealed && *v15 ? "reject-sealed" : "secret-sealed",
                          pol->reject_sealed && *v15 ? " (--oaep-only needs none)" : "");
    label_group(label, label_size, spec->name, 1);
    return make_pair(hsm, label, GS_KIND_GROUP, type, bits, gs_policy_group_usage(pol, type, *methods, *v15), *v15,
                     spec->replicable, pk, missing);
}

/* The commands that make token keys run under the keys lock (store.h),
 * from their first "does it exist" check to their commit, through one
 * function: a `work` and its arguments. */
enum keys_work { KEYS_GROUP_CREATE, KEYS_GROUP_ROTATE, KEYS_SECRET_ROTATE, KEYS_MEMBER_REMOVE };
struct keys_call {
    enum keys_work work;
    hsm_ctx *hsm;
    const gs_ca *ca;
    const struct gs_config *cfg;
    const gs_group_spec *spec; /* group create */
    const char *name, *email;  /* the group; member remove: the member */
    unsigned *version_out;     /* cleared first (may be NULL) */
    gs_member_removal *removal; /* member remove: cleared first */
    bool take_over;             /* group rotate --take-over: a clone becomes the group's origin */
    bool *took_over;            /* group rotate: whether it did (may be NULL) */
};
static gs_err under_keys_lock(gs_store *st, const struct keys_call *c);

/* A list address is one group's: the group certificate names it (SAN
 * rfc822Name), senders find that certificate by the address, and the
 * exploder serves one group per address. Two groups of one address were
 * made, each with a certificate for it: mail encrypted to the one a
 * sender's directory gave was refused by the list of the other. Compared
 * without ASCII case, as every address is. Under the keys lock (group
 * create), so two creations at once cannot both pass. EXISTS names the
 * group that has it. */
gs_err gs_group_address_free(gs_store *st, const char *address)
{
    gs_store_group **groups = NULL;
    size_t n = 0;
    gs_err err = gs_store_group_list(st, &groups, &n);

    if (err != GS_OK)
        return err;
    for (size_t i = 0; i < n && err == GS_OK; i++)
        if (groups[i]->address != NULL && strcasecmp(groups[i]->address, address) == 0)
            err = gs_err_set(GS_ERR_EXISTS, "the list address %s is already group %s's (one group per address)",
                             address, groups[i]->name);
    gs_store_group_list_free(groups, n);
    return err;
}

static gs_err group_create_locked(gs_store *st, hsm_ctx *hsm, const gs_ca *ca, const struct gs_config *cfg,
                       const gs_group_spec *spec, unsigned *version_out)
{
    gs_store_group row, *existing = NULL;
    char klabel[GS_LABEL_MAX + 1], slabel[GS_LABEL_MAX + 1], rlabel[GS_LABEL_MAX + 1];
    char keyspec[16], policy[96], kweak[64], sweak[64], seal_weak[64], rweak[64];
    unsigned char kek_id[GS_KEK_ID_LEN];
    struct made_secret sec, rej;
    bool made_key = false, made_seal = false, v15 = false, keep = false;
    hsm_key *seal = NULL;
    gs_policy pol;
    hsm_caps caps;
    EVP_PKEY *pk = NULL;
    char *pem = NULL;
    unsigned methods, kmissing = 0, seal_missing = 0;
    int64_t id = 0;
    gs_err err;

    memset(&sec, 0, sizeof(sec));
    memset(&rej, 0, sizeof(rej));
    if (version_out)
        *version_out = 0;
    if (spec == NULL || !gs_valid_group_name(spec->name))
        return gs_err_set(GS_ERR_ARGS, "invalid group name (" GS_GROUP_NAME_RULE ")");
    if (!gs_valid_email(spec->address))
        return gs_err_set(GS_ERR_ARGS, "invalid list address (expected LIST@DOMAIN): %s",
                          mailaddr_problem(spec->address));
    if (spec->use_key == NULL) {
        hsm_key_type type;
        unsigned bits;
        err = gs_keyspec_parse(spec->keyspec ? spec->keyspec : "rsa:3072", &type, &bits);
        if (err)
            return err;
        if (spec->allow_pkcs1v15 && type != HSM_KEYTYPE_RSA)
            return gs_err_set(GS_ERR_ARGS, "--allow-pkcs1v15 needs an RSA group key");
        if ((err = group_methods(spec, type, &methods)) != GS_OK)
            return err;
        /* The import proves each copy by a decryption test inside the
         * token, which RSA keys allow everywhere (SoftHSM has no ECDH KDF). */
        if (spec->replicable && type != HSM_KEYTYPE_RSA)
            return gs_err_set(GS_ERR_ARGS, "--replicable needs an RSA group key");
    } else if (spec->replicable) {
        /* An adopted key was made by another tool, never extractable. */
        return gs_err_set(GS_ERR_ARGS, "--replicable makes the group's keys on this token: not with --use-key");
    }
    /* An adopted key's type, and so its methods, are known once it is found. */
    if (spec->use_key != NULL)
        methods = spec->methods ? spec->methods : GS_METHODS_DEFAULT;
    if ((methods & GS_METHOD_LOCAL_KEY) && !spec->replicable)
        return gs_err_set(GS_ERR_ARGS, "the local-key method needs --replicable (members get a copy of the group key)");
    if (spec->allow_pkcs1v15 && spec->oaep_only)
        return gs_err_set(GS_ERR_ARGS, "--allow-pkcs1v15 and --oaep-only contradict each other");
    if (spec->admin_email != NULL && !gs_valid_email(spec->admin_email))
        return gs_err_set(GS_ERR_ARGS, "invalid admin email address: %s", mailaddr_problem(spec->admin_email));
    err = gs_store_group_get(st, spec->name, &existing);
    gs_store_group_free(existing);
    if (err == GS_OK)
        return gs_err_set(GS_ERR_EXISTS, "group %s already exists", spec->name);
    if (err != GS_ERR_NOT_FOUND)
        return err;
    if ((err = gs_group_address_free(st, spec->address)) != GS_OK)
        return err;
    (void)hsm_caps_get(hsm, &caps);
    /* What a probe could not try reads as absent: the group's policy,
     * chosen from it and recorded for good, would be weaker than the
     * token allows, and the refusals below would name what the token may
     * well have ("use a token with RSA-OAEP", "--oaep-only", "lacks
     * trusted wrap") for a device error of a moment. Keygen refuses a
     * partial probe too; an adopted key (--use-key) makes none. */
    if (caps.incomplete)
        return gs_err_set(GS_ERR_HSM, "the token's capabilities could not be probed (%.180s): no group is made "
                          "from a partial probe (its key policy is chosen from it for good); try again "
                          "(`groupsrv check` shows the probe)",
                          caps.incomplete_why);
    if (spec->replicable) {
        char missing[1024];
        if (!hsm_caps_trusted_wrap(&caps, missing, sizeof(missing)))
            return gs_err_set(GS_ERR_POLICY, "--replicable: this token lacks trusted wrap (missing: %s), so the key "
                              "ceremony could never copy the group's keys; create the group without --replicable",
                              missing);
    }

    label_secret(slabel, sizeof(slabel), spec->name, 1);
    label_reject(rlabel, sizeof(rlabel), spec->name);
    err = first_group_key(hsm, &caps, spec, &methods, &pol, klabel, sizeof(klabel), keyspec, sizeof(keyspec),
                          &kmissing, &pk, &v15);
    if (err)
        goto out;
    made_key = spec->use_key == NULL;
    err = issue_group_cert(ca, hsm, cfg, spec->name, spec->address, pk, &pem);
    if (err)
        goto out;
    if (((methods & GS_METHOD_GROUP_SECRET) && pol.secrets == GS_SECRETS_SEALED) ||
        (v15 && pol.reject_sealed)) {
        err = ensure_seal_key(hsm, &caps, &seal, &made_seal, &seal_missing);
        if (err)
            goto out;
    }
    if (methods & GS_METHOD_GROUP_SECRET) {
        err = new_kek_id(kek_id);
        if (!err)
            err = make_secret(hsm, pol.secrets, seal, slabel, &sec);
        if (err)
            goto out;
    }
    if (v15) {
        err = make_reject(hsm, pol.reject_sealed, seal, rlabel, spec->replicable, &rej);
        if (err)
            goto out;
    }
    gs_policy_format(&pol, policy, sizeof(policy));
    gs_weak_format(kmissing, kweak, sizeof(kweak));
    gs_weak_format(sec.missing, sweak, sizeof(sweak));
    gs_weak_format(seal_missing, seal_weak, sizeof(seal_weak));
    gs_weak_format(rej.missing, rweak, sizeof(rweak));
    memset(&row, 0, sizeof(row));
    row.name = (char *)spec->name;
    row.address = (char *)spec->address;
    row.methods = methods;
    row.algorithm = keyspec;
    row.allow_pkcs1v15 = v15;
    row.reject_label = v15 ? rlabel : NULL;
    row.policy = policy;
    row.reject_seal_label = rej.sealed ? SEAL_LABEL : NULL;
    row.reject_sealed = rej.sealed;
    row.reject_sealed_len = rej.sealed_len;
    row.replicable = spec->replicable;
    row.reject_weakenings = rweak;
    row.member_wrap = spec->member_wrap == GS_WRAP_OAEP ? GS_WRAP_OAEP : GS_WRAP_PKCS1V15;
    err = gs_store_begin(st);
    if (err)
        goto out;
    err = gs_store_group_add(st, &row, &id);
    if (!err) {
        gs_store_keyrec kr = {.weakenings = kweak};
        err = gs_store_group_key_add2(st, id, 1, klabel, pem, &kr);
    }
    if (!err && (methods & GS_METHOD_GROUP_SECRET)) {
        gs_store_keyrec sr = {.weakenings = sweak, .seal_label = sec.sealed ? SEAL_LABEL : NULL,
                              .sealed = sec.sealed, .sealed_len = sec.sealed_len};
        err = gs_store_secret_add2(st, id, 1, slabel, kek_id, &sr);
    }
    if (!err && seal != NULL)
        err = gs_store_seal_key_put(st, SEAL_LABEL, seal_weak);
    if (!err && spec->admin_email != NULL)
        err = gs_store_member_add(st, id, spec->admin_email, GS_ROLE_ADMIN, spec->admin_cert_pem);
    if (err) {
        gs_store_rollback(st);
        goto out;
    }
    err = gs_store_commit(st);
    if (err) {
        keep = gs_store_commit_unknown(st);
        goto out;
    }
    log_info("group created group=%s label=\"%s\" policy=%s replicable=%d", spec->name, log_qs(klabel), policy,
             (int)spec->replicable);
    if (spec->admin_email != NULL)
        log_info("member added group=%s member=%s role=admin wrap=%s", spec->name, spec->admin_email,
                 gs_wrap_name(GS_WRAP_DEFAULT));
    if (version_out)
        *version_out = 1;
out:
    if (err && keep) {
        char labels[4 * (GS_LABEL_MAX + 2)] = "", made[GS_NAME_MAX + 32];
        if (made_key)
            label_list_add(labels, sizeof(labels), klabel);
        if (sec.on_token)
            label_list_add(labels, sizeof(labels), slabel);
        if (rej.on_token)
            label_list_add(labels, sizeof(labels), rlabel);
        if (made_seal)
            label_list_add(labels, sizeof(labels), SEAL_LABEL);
        (void)snprintf(made, sizeof(made), "group %s was created", spec->name);
        err = gs_keys_kept_after_unknown_commit(err, made, spec->name, labels);
    } else if (err) {
        gs_err saved = err;
        char detail[512];
        (void)util_strlcpy(detail, gs_err_detail(), sizeof(detail));
        if (made_key)
            destroy_pair(hsm, klabel);
        if (sec.on_token)
            undo_label(hsm, slabel, HSM_CLASS_SECRET);
        if (rej.on_token)
            undo_label(hsm, rlabel, HSM_CLASS_SECRET);
        if (made_seal)
            destroy_pair(hsm, SEAL_LABEL);
        err = restore_detail(saved, detail);
    }
    made_secret_clear(&sec);
    made_secret_clear(&rej);
    hsm_key_free(seal);
    EVP_PKEY_free(pk);
    free(pem);
    return err;
}

/* Under the keys lock: of two creations of one name the second finds the
 * first's group and is refused (EXISTS) before it makes anything. */
gs_err gs_group_create(gs_store *st, hsm_ctx *hsm, const gs_ca *ca, const struct gs_config *cfg,
                       const gs_group_spec *spec, unsigned *version_out)
{
    return under_keys_lock(st, &(struct keys_call){.work = KEYS_GROUP_CREATE, .hsm = hsm, .ca = ca, .cfg = cfg,
                                                   .spec = spec, .version_out = version_out});
}

static unsigned max_key_version(const gs_store_group_key *keys, size_t n)
{
    unsigned v = 0;
    for (size_t i = 0; i < n; i++)
        if (keys[i].version > v)
            v = keys[i].version;
    return v;
}

/* Is this database a clone's own, given the group by `group import` from
 * another server? Then that server makes the group's versions: one made
 * here would be certified by this server's CA, take the number the
 * origin's next version takes too (two keys under one version number),
 * and make the origin's export of its own version refused here. Told
 * apart by the certificates recorded for the group, the ones `group
 * import-cert` replaced included: none of them is this server's CA's on
 * a clone, while the origin's CA certified every version it made, and
 * servers sharing the origin's database (a cluster, a spare token) share
 * its CA (ca import), so any of them may rotate, also where every
 * current certificate is now an organisation's own. Last, the token: an
 * origin whose own certificates were all replaced still holds originals
 * of the group's keys, a clone only imported copies. A token that cannot
 * answer is an error, never taken for a clone (its removal would then
 * rotate nothing). */
static gs_err group_made_elsewhere(gs_store *st, hsm_ctx *hsm, const gs_store_group *g, bool *elsewhere)
{
    gs_store_group_key *keys = NULL;
    gs_store_ca *ca_row = NULL;
    STACK_OF(X509) *certs = NULL;
    X509 *ca = NULL;
    const char **labels = NULL;
    hsm_key **found = NULL;
    size_t nk = 0;
    hsm_err he;
    gs_err err;

    *elsewhere = false;
    if (!g->replicable || hsm == NULL)
        return GS_OK;
    /* No CA: a database `group import --ca` made, a clone's (an origin
     * has the CA its versions came from); the token tells. */
    err = gs_store_ca_get(st, &ca_row);
    if (err == GS_ERR_NOT_FOUND)
        err = GS_OK;
    else if (err || (err = gs_cert_parse((const unsigned char *)ca_row->cert_pem, strlen(ca_row->cert_pem),
                                         &ca)) != GS_OK)
        goto out;
    if ((err = gs_store_group_keys(st, g->id, &keys, &nk)) != GS_OK)
        goto out;
    /* Newest first: the current version's certificate decides at once on
     * an origin that never replaced it. */
    for (size_t i = nk; ca != NULL && i-- > 0;) {
        if ((err = cert_pem_all(keys[i].cert_pem, &certs)) != GS_OK)
            goto out;
        for (int c = 0; c < sk_X509_num(certs); c++)
            if (X509_verify(sk_X509_value(certs, c), X509_get0_pubkey(ca)) == 1)
                goto out; /* certified here */
        sk_X509_pop_free(certs, X509_free);
        certs = NULL;
    }
    /* One search for all of them: a clone's removal must not cost
     * versions x token objects (hsm_key_find_labels). */
    if ((labels = calloc(nk + 1, sizeof(*labels))) == NULL ||
        (found = calloc(nk + 1, sizeof(*found))) == NULL) {
        err = GS_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < nk; i++)
        labels[i] = keys[i].state == GS_KEY_RETIRED ? NULL : keys[i].token_label;
    if ((he = hsm_key_find_labels(hsm, HSM_CLASS_PRIVATE, labels, nk, found)) != HSM_OK) {
        err = gs_hsm_fail(he, "looking up the keys of group", g->name);
        goto out;
    }
    for (size_t i = 0; i < nk; i++) {
        hsm_key_info ki;

        if (found[i] == NULL)
            continue;
        if ((he = hsm_key_get_info(hsm, found[i], &ki)) != HSM_OK) {
            err = gs_hsm_fail(he, "reading attributes of", keys[i].token_label);
            goto out;
        }
        if (ki.extractable && ki.wrap_with_trusted)
            goto out; /* an original: made on this token */
    }
    *elsewhere = true;
out:
    ERR_clear_error();
    for (size_t i = 0; found != NULL && i < nk; i++)
        hsm_key_free(found[i]);
    free(found);
    free(labels);
    sk_X509_pop_free(certs, X509_free);
    X509_free(ca);
    gs_store_ca_free(ca_row);
    gs_store_group_keys_free(keys, nk);
    return err;
}

/* The refusal of a new version where group_made_elsewhere says so. */
static gs_err made_elsewhere_refusal(const char *name, const char *what, const char *option)
{
    return gs_err_set(GS_ERR_STATE,
                      "group %s came to this server by `group import` (its keys here are copies, "
                      "certified by another server's CA): a new %s made here would differ from "
                      "that server's of the same number; make it there and import it here "
                      "(`group export %s %s N`), or, that server lost for good, make this one "
                      "the group's origin (`group rotate %s --take-over`)",
                      name, what, name, option, name);
}

/* A group key version made on the token with its certificate, not yet
 * recorded: rotation and member removal record it in their own way. */
struct next_version {
    unsigned version;
    char label[GS_LABEL_MAX + 1];
    char weak[64];
    char *pem;
    bool made;
};

static gs_err make_next_version(gs_store *st, hsm_ctx *hsm, const gs_ca *ca, const struct gs_config *cfg,
                                const gs_store_group *g, struct next_version *nv)
{
    gs_store_group_key *keys = NULL;
    size_t nk = 0;
    EVP_PKEY *pk = NULL;
    hsm_key_type type;
    unsigned bits, missing = 0;
    gs_policy pol;
    gs_err err;

    memset(nv, 0, sizeof(*nv));
    err = gs_keyspec_parse(g->algorithm, &type, &bits);
    if (!err)
        err = gs_policy_parse(g->policy, &pol);
    if (!err)
        err = gs_store_group_keys(st, g->id, &keys, &nk);
    if (err)
        goto out;
    err = free_version(hsm, label_group, g->name, max_key_version(keys, nk) + 1, &nv->version, nv->label,
                       sizeof(nv->label));
    if (err)
        goto out;
    /* The recorded policy, not today's capabilities: the group's path
     * stays what was decided (and shown) at creation; so does replicable. */
    err = make_pair(hsm, nv->label, GS_KIND_GROUP, type, bits,
                    gs_policy_group_usage(&pol, type, g->methods, g->allow_pkcs1v15), g->allow_pkcs1v15,
                    g->replicable, &pk, &missing);
    if (err)
        goto out;
    nv->made = true;
    gs_weak_format(missing, nv->weak, sizeof(nv->weak));
    err = issue_group_cert(ca, hsm, cfg, g->name, g->address, pk, &nv->pem);
out:
    EVP_PKEY_free(pk);
    gs_store_group_keys_free(keys, nk);
    return err;
}

/* Records a version make_next_version made, as the group's current one. */
static gs_err record_next_version(gs_store *st, const gs_store_group *g, const struct next_version *nv)
{
    gs_store_keyrec kr = {.weakenings = nv->weak};

    return gs_store_group_key_add2(st, g->id, nv->version, nv->label, nv->pem, &kr);
}

/* Undoes make_next_version (the token pair), keeping the error detail. */
static void drop_next_version(hsm_ctx *hsm, struct next_version *nv)
{
    char detail[512];

    if (nv->made) {
        (void)util_strlcpy(detail, gs_err_detail(), sizeof(detail));
        destroy_pair(hsm, nv->label);
        (void)restore_detail(GS_ERR_ARGS, detail);
    }
    free(nv->pem);
    memset(nv, 0, sizeof(*nv));
}

static gs_err group_rotate_locked(gs_store *st, hsm_ctx *hsm, const gs_ca *ca, const struct gs_config *cfg,
                                  const char *name, bool take_over, unsigned *version_out, bool *took_over)
{
    gs_store_group *g = NULL;
    struct next_version nv;
    gs_err err;

    memset(&nv, 0, sizeof(nv));
    skipped_labels[0] = '\0';
    if (version_out)
        *version_out = 0;
    if (took_over)
        *took_over = false;
    bool elsewhere = false;
    err = gs_store_group_get(st, name, &g);
    if (err)
        return err;
    /* take_over: the origin is gone; the version made here, certified by
     * this server's CA, makes this server the group's origin (from then on
     * group_made_elsewhere finds this CA's certificate). */
    err = group_made_elsewhere(st, hsm, g, &elsewhere);
    if (!err && elsewhere && !take_over)
        err = made_elsewhere_refusal(name, "key version", "--version");
    if (!err)
        err = make_next_version(st, hsm, ca, cfg, g, &nv);
    if (!err && (err = record_next_version(st, g, &nv)) != GS_OK && gs_store_commit_unknown(st)) {
        char made[GS_NAME_MAX + 48];
        (void)snprintf(made, sizeof(made), "key version %u of group %s was made", nv.version, name);
        err = gs_keys_kept_after_unknown_commit(err, made, name, nv.label);
        nv.made = false; /* kept */
    }
    if (err)
        goto out;
    log_info("group key rotated group=%s version=%u took_over=%d", name, nv.version,
             (int)(elsewhere && take_over));
    if (version_out)
        *version_out = nv.version;
    /* what happened, not what was asked: on the origin (or a server
     * sharing its database) --take-over is an ordinary rotation */
    if (took_over)
        *took_over = elsewhere && take_over;
    nv.made = false; /* recorded: keep it */
out:
    drop_next_version(hsm, &nv);
    gs_store_group_free(g);
    return err;
}

/* Under the keys lock: two rotations at once get two versions. */
gs_err gs_group_rotate(gs_store *st, hsm_ctx *hsm, const gs_ca *ca, const struct gs_config *cfg,
                       const char *name, unsigned *version_out)
{
    return gs_group_rotate_ex(st, hsm, ca, cfg, name, false, version_out, NULL);
}

gs_err gs_group_rotate_ex(gs_store *st, hsm_ctx *hsm, const gs_ca *ca, const struct gs_config *cfg,
                          const char *name, bool take_over, unsigned *version_out, bool *took_over)
{
    return under_keys_lock(st, &(struct keys_call){.work = KEYS_GROUP_ROTATE,
                                                   .hsm = hsm,
                                                   .ca = ca,
                                                   .cfg = cfg,
                                                   .name = name,
                                                   .version_out = version_out,
                                                   .take_over = take_over,
                                                   .took_over = took_over});
}

/* One version as a retire sees it, of either kind. label is NULL for a
 * sealed secret key: nothing on the token, its blob goes with the row. */
struct retire_row {
    unsigned version;
    gs_key_state state;
    const char *label;
};

/* A retire destroys token objects after its commit: on a write-protected
 * token that cannot be done, and the versions would stay recorded as
 * retired yet on the token, which `check` flags and `serve` will not start
 * with, for as long as the token is protected. Refused before the commit
 * when any version below `before` has objects on the token; one whose
 * objects this token never held (a server that imported only later
 * versions) or no longer holds destroys nothing, and is retired. */
static gs_err retire_destroys_here(hsm_ctx *hsm, const struct retire_row *rows, size_t n, unsigned before,
                                   const char *kind)
{
    hsm_token_info ti;

    if (hsm_token_info_get(hsm, &ti) != HSM_OK || !ti.write_protected)
        return GS_OK;
    for (size_t i = 0; i < n; i++) {
        bool present;
        if (rows[i].state == GS_KEY_CURRENT || rows[i].version >= before || rows[i].label == NULL)
            continue;
        if (gs_token_label_present(hsm, rows[i].label, &present) == GS_OK && !present)
            continue;
        /* Retired already (by another server sharing the database): its
         * copy here stays until this token takes changes again, and this
         * server will not start meanwhile (docs/scale-out.md). */
        if (rows[i].state == GS_KEY_RETIRED)
            return gs_err_set(GS_ERR_STATE,
                              "the token is write-protected (CKF_WRITE_PROTECTED): the %s version %u, retired "
                              "already (by another server sharing the database?), is still on it and cannot be "
                              "destroyed; nothing retired: lift the write protection, run this again, then "
                              "protect the token again",
                              kind, rows[i].version);
        return gs_err_set(GS_ERR_STATE,
                          "the token is write-protected (CKF_WRITE_PROTECTED): the %s version %u on it cannot be "
                          "destroyed; nothing retired (retire where the token takes changes)",
                          kind, rows[i].version);
    }
    return GS_OK;
}

/* The retire of group key versions and of secret key versions: every
 * old version below `before` is marked retired in one transaction (once
 * committed the server no longer offers them), then its token objects
 * are destroyed, and so are those of versions retired earlier still on
 * this token. kind names the versions in messages and the log. */
static gs_err retire_rows(gs_store *st, hsm_ctx *hsm, const char *name, int64_t group_id, bool secret,
                          const struct retire_row *rows, size_t n, unsigned before, size_t *n_retired,
                          size_t *n_cleared)
{
    const char *kind = secret ? "secret key" : "key";
    size_t count = 0, cleared = 0;
    unsigned current = 0;
    gs_err err;

    for (size_t i = 0; i < n; i++)
        if (rows[i].state == GS_KEY_CURRENT)
            current = rows[i].version;
    if (before == 0 || before > current)
        return gs_err_set(GS_ERR_STATE, "--before %u: must be between 1 and the current %sversion %u", before,
                          secret ? "secret key " : "", current);
    if ((err = retire_destroys_here(hsm, rows, n, before, kind)) != GS_OK)
        return err;
    if ((err = gs_store_begin(st)) != GS_OK)
        return err;
    for (size_t i = 0; i < n && !err; i++) {
        if (rows[i].state == GS_KEY_OLD && rows[i].version < before) {
            err = secret ? gs_store_secret_retire(st, group_id, rows[i].version)
                         : gs_store_group_key_retire(st, group_id, rows[i].version);
            count++;
        }
    }
    if (err) {
        gs_store_rollback(st);
        return err;
    }
    if ((err = gs_store_commit(st)) != GS_OK)
        return err;
    for (size_t i = 0; i < n; i++) {
        bool earlier = rows[i].state == GS_KEY_RETIRED;
        hsm_err a, b = HSM_OK;
        if ((rows[i].state != GS_KEY_OLD && !earlier) || rows[i].version >= before || rows[i].label == NULL)
            continue;
        /* Retired before (by another server sharing this database, or by a
         * run whose destroy failed): only what is still on this token. */
        bool present;
        if (earlier && gs_token_label_present(hsm, rows[i].label, &present) == GS_OK && !present)
            continue; /* (a failed lookup: tried, and the destroy says what is wrong) */
        if (secret) {
            a = destroy_label(hsm, rows[i].label, HSM_CLASS_SECRET);
        } else {
            a = destroy_label(hsm, rows[i].label, HSM_CLASS_PRIVATE);
            b = destroy_label(hsm, rows[i].label, HSM_CLASS_PUBLIC);
        }
        if ((a != HSM_OK || b != HSM_OK) && !err) {
            err = gs_hsm_fail(a != HSM_OK ? a : b,
                              secret ? "destroying retired secret key (recorded as retired; `check` flags it: run "
                                       "the retire again)"
                                     : "destroying retired key (recorded as retired; `check` flags it: run the "
                                       "retire again)",
                              rows[i].label);
        } else if (a == HSM_OK && b == HSM_OK) {
            cleared += earlier;
            log_info("group %s %s group=%s version=%u", kind,
                     earlier ? "retired earlier destroyed on this token" : "retired", name, rows[i].version);
        }
    }
    if (n_retired)
        *n_retired = count;
    if (n_cleared)
        *n_cleared = cleared;
    return err;
}

/* The rows of group `name`'s key versions or (secret) secret key
 * versions, retired by retire_rows, under the keys lock (as rotate): the
 * versions read are still so at the commit. Servers sharing a database
 * run the same retire, often at once: the second reads the first's
 * retirement and only destroys its copies, instead of finding the rows it
 * read changed under it ("not an old (retirable) version"). */
static gs_err retire_versions(gs_store *st, hsm_ctx *hsm, const char *name, bool secret, unsigned before,
                              size_t *n_retired, size_t *n_cleared)
{
    gs_store_group *g = NULL;
    gs_store_group_key *keys = NULL;
    gs_store_secret *secrets = NULL;
    struct retire_row *rows = NULL;
    size_t nk = 0, ns = 0;
    bool locked = false;
    gs_err err;

    if (n_retired)
        *n_retired = 0;
    if (n_cleared)
        *n_cleared = 0;
    if ((err = gs_store_group_get(st, name, &g)) != GS_OK)
        goto out;
    if (secret && (err = require_group_secret(g)) != GS_OK)
        goto out;
    if ((err = gs_store_keys_lock(st)) != GS_OK)
        goto out;
    locked = true;
    err = secret ? gs_store_secrets(st, g->id, &secrets, &ns) : gs_store_group_keys(st, g->id, &keys, &nk);
    if (!err && (rows = calloc(nk + ns ? nk + ns : 1, sizeof(*rows))) == NULL)
        err = GS_ERR_NOMEM;
    if (err)
        goto out;
    for (size_t i = 0; i < nk; i++)
        rows[i] = (struct retire_row){keys[i].version, keys[i].state, keys[i].token_label};
    for (size_t i = 0; i < ns; i++)
        rows[i] = (struct retire_row){secrets[i].version, secrets[i].state,
                                      secrets[i].sealed != NULL ? NULL : secrets[i].token_label};
    err = retire_rows(st, hsm, name, g->id, secret, rows, nk + ns, before, n_retired, n_cleared);
out:
    if (locked)
        gs_store_keys_unlock(st);
    free(rows);
    gs_store_group_keys_free(keys, nk);
    gs_store_secrets_free(secrets, ns);
    gs_store_group_free(g);
    return err;
}

gs_err gs_group_retire(gs_store *st, hsm_ctx *hsm, const char *name, unsigned before, size_t *n_retired,
                       size_t *n_cleared)
{
    return retire_versions(st, hsm, name, false, before, n_retired, n_cleared);
}

gs_err gs_secret_retire(gs_store *st, hsm_ctx *hsm, const char *name, unsigned before, size_t *n_retired,
                        size_t *n_cleared)
{
    return retire_versions(st, hsm, name, true, before, n_retired, n_cleared);
}

gs_err gs_group_renew_cert(gs_store *st, hsm_ctx *hsm, const gs_ca *ca, const struct gs_config *cfg,
                           const char *name, unsigned version, unsigned *version_out)
{
    gs_group *g = NULL;
    const gs_group_key_ref *k = NULL;
    unsigned char *spki = NULL;
    size_t spki_len = 0;
    const unsigned char *p;
    EVP_PKEY *pk = NULL;
    X509 *cert = NULL;
    char *pem = NULL;
    bool elsewhere = false;
    gs_err err;
    hsm_err he;

    *version_out = 0;
    if ((err = gs_group_load(st, hsm, name, &g)) != GS_OK)
        goto out;
    /* A clone's CA is not the group's: its certificate would be refused
     * by every sender and member that knows the group's CA. */
    if ((err = group_made_elsewhere(st, hsm, g->info, &elsewhere)) != GS_OK)
        goto out;
    if (elsewhere) {
        err = gs_err_set(GS_ERR_STATE, "group %s came to this server by `group import` (its keys here are copies, "
                                       "certified by another server's CA): this server's CA cannot certify it; "
                                       "renew it there and give the certificate to this server (`group "
                                       "import-cert %s --cert FILE --version N`)",
                         name, name);
        goto out;
    }
    for (size_t i = 0; i < g->n_versions && k == NULL; i++)
        if (version == 0 ? g->versions[i].current : g->versions[i].version == version)
            k = &g->versions[i];
    if (k == NULL) {
        err = gs_err_set(GS_ERR_NOT_FOUND, "group %s has no usable key version %u", name, version);
        goto out;
    }
    if (k->key == NULL) {
        err = gs_err_set(GS_ERR_HSM, "group %s: key version %u is not on this token", name, k->version);
        goto out;
    }
    if ((he = hsm_key_export_public(hsm, k->key, &spki, &spki_len)) != HSM_OK) {
        err = gs_hsm_fail(he, "reading the public key of the key of group", name);
        goto out;
    }
    p = spki;
    if ((pk = d2i_PUBKEY(NULL, &p, (long)spki_len)) == NULL) {
        err = gs_err_set(GS_ERR_CRYPTO, "the token's public key does not parse");
        goto out;
    }
    if ((err = issue_group_cert(ca, hsm, cfg, g->info->name, g->info->address, pk, &pem)) != GS_OK ||
        (err = gs_cert_parse((const unsigned char *)pem, strlen(pem), &cert)) != GS_OK)
        goto out;
    /* The same checks and record as a certificate signed elsewhere. */
    if ((err = gs_group_import_cert(st, hsm, name, k->version, cert)) == GS_OK)
        *version_out = k->version;
out:
    ERR_clear_error();
    X509_free(cert);
    free(pem);
    EVP_PKEY_free(pk);
    free(spki);
    gs_group_free(g);
    return err;
}

/* A version's new record: cert's PEM, then the certificates of the old
 * record (its current one first) that differ from cert, at most
 * GS_FORMER_CERTS_MAX of them and as many as fit a certificate record
 * (the oldest are dropped). */
static gs_err cert_pem_with_former(X509 *cert, const char *old_pem, char **out)
{
    STACK_OF(X509) *old = NULL;
    char *pem = NULL, *one = NULL;
    size_t len, kept = 0;
    gs_err err;

    *out = NULL;
    if ((err = gs_cert_to_pem(cert, &pem)) != GS_OK || (err = cert_pem_all(old_pem, &old)) != GS_OK)
        goto out;
    len = strlen(pem);
    for (int i = 0; i < sk_X509_num(old) && kept < GS_FORMER_CERTS_MAX; i++) {
        X509 *x = sk_X509_value(old, i);
        if (X509_cmp(x, cert) == 0)
            continue;
        if ((err = gs_cert_to_pem(x, &one)) != GS_OK)
            goto out;
        size_t n = strlen(one);
        if (len + n >= GS_CERT_RECORD_MAX)
            break;
        char *grown = realloc(pem, len + n + 1);
        if (grown == NULL) {
            err = GS_ERR_NOMEM;
            goto out;
        }
        pem = grown;
        memcpy(pem + len, one, n + 1);
        len += n;
        kept++;
        free(one);
        one = NULL;
    }
    *out = pem;
    pem = NULL;
out:
    free(one);
    free(pem);
    sk_X509_pop_free(old, X509_free);
    return err;
}

/* A group certificate names the list address (GS_ERR_CERT otherwise). */
static gs_err cert_names_list(const gs_store_group *g, X509 *cert)
{
    char email[GS_EMAIL_MAX + 1];
    gs_err err = gs_cert_email(cert, email, sizeof(email));
    if (err)
        return err;
    if (strcasecmp(email, g->address) != 0)
        return gs_err_set(GS_ERR_CERT, "certificate is for %s, not the list address %s", email, g->address);
    return GS_OK;
}

/* Whether cert certifies the group key on the token: priv, or when NULL
 * the private key under label. GS_ERR_CERT naming label when it does not. */
static gs_err cert_of_token_key(hsm_ctx *hsm, hsm_key *priv, const char *label, X509 *cert)
{
    hsm_key *found = NULL;
    unsigned char *spki = NULL;
    size_t spki_len = 0;
    hsm_err he = HSM_OK;
    gs_err err = GS_OK;

    if (priv == NULL && (he = hsm_key_find(hsm, label, HSM_CLASS_PRIVATE, &found)) == HSM_OK)
        priv = found;
    if (he == HSM_OK)
        he = hsm_key_export_public(hsm, priv, &spki, &spki_len);
    if (he != HSM_OK)
        err = gs_hsm_fail(he, "group key", label);
    else if (!gs_cert_matches_spki(cert, spki, spki_len))
        err = gs_err_set(GS_ERR_CERT, "certificate public key does not match token key %s", label);
    free(spki);
    hsm_key_free(found);
    return err;
}

/* The token key under `label` for re-recording version `version` of
 * group g that the database does not record (a version made after the
 * backup a restored database predates): it must be on the token and pass
 * the key audit for `kind` ("group", "secret") with the weakenings of the
 * current version (made on this token), `weak`. *key the caller's. */
static gs_err unrecorded_key(hsm_ctx *hsm, const gs_store_group *g, const char *kind, unsigned version,
                             const char *label, hsm_key_class cls, const char *weak, hsm_key **key)
{
    hsm_key_info info;
    unsigned missing = 0;
    const char *problem;
    gs_err err;
    hsm_err he;

    *key = NULL;
    if ((err = gs_weak_parse(weak, &missing)) != GS_OK)
        return err;
    /* One search: the find of the key itself says whether it is there. */
    if ((he = hsm_key_find(hsm, label, cls, key)) == HSM_ERR_KEY_NOT_FOUND)
        return gs_err_set(GS_ERR_NOT_FOUND,
                          "group %s has no %s version %u: the database does not record it and the token has no %s",
                          g->name, strcmp(kind, "secret") == 0 ? "secret key" : "key", version, label);
    if (he != HSM_OK)
        return gs_hsm_fail(he, "token key", label);
    if ((he = hsm_key_get_info(hsm, *key, &info)) != HSM_OK) {
        err = gs_hsm_fail(he, "reading the attributes of token key", label);
    } else if ((problem = gs_key_policy_problem(g, kind, missing, &info, NULL)) != NULL) {
        err = gs_err_set(GS_ERR_STATE, "token key %s is not a %s key of group %s's policy: %s", label, kind, g->name,
                         problem);
    }
    if (err) {
        hsm_key_free(*key);
        *key = NULL;
    }
    return err;
}

/* group import-cert --version N of a version the database does not
 * record (docs/operations.md, restore): the key gs:group:NAME:vN must be
 * on the token (unrecorded_key) and be cert's key; it is recorded as
 * old, or as current when it is above the current version (then cert
 * must be valid now: senders get it). Under the keys lock, as a
 * rotation that would number past it. */
static gs_err record_unrecorded_version(gs_store *st, hsm_ctx *hsm, const gs_store_group *g, unsigned version,
                                        X509 *cert)
{
    gs_store_group_key *keys = NULL;
    const gs_store_group_key *cur = NULL;
    size_t nk = 0;
    char label[GS_LABEL_MAX + 1];
    hsm_key *priv = NULL;
    char *pem = NULL;
    gs_store_keyrec rec;
    gs_err err;

    if ((err = gs_store_keys_lock(st)) != GS_OK)
        return err;
    label_group(label, sizeof(label), g->name, version);
    if ((err = gs_store_group_keys(st, g->id, &keys, &nk)) != GS_OK)
        goto out;
    for (size_t i = 0; i < nk; i++) {
        if (keys[i].version == version) { /* recorded by another command meanwhile */
            err = gs_err_set(GS_ERR_EXISTS, "group %s: key version %u is recorded now: run the command again",
                             g->name, version);
            goto out;
        }
        if (keys[i].state == GS_KEY_CURRENT)
            cur = &keys[i];
    }
    if (cur == NULL) {
        err = gs_err_set(GS_ERR_STATE, "group %s has no current key version", g->name);
        goto out;
    }
    if ((err = unrecorded_key(hsm, g, "group", version, label, HSM_CLASS_PRIVATE, cur->weakenings, &priv)) != GS_OK ||
        (err = cert_names_list(g, cert)) != GS_OK)
        goto out;
    if (version > cur->version && (err = gs_cert_check_valid_now(cert, "certificate")) != GS_OK)
        goto out;
    if ((err = cert_of_token_key(hsm, priv, label, cert)) != GS_OK || (err = gs_cert_to_pem(cert, &pem)) != GS_OK)
        goto out;
    memset(&rec, 0, sizeof(rec));
    rec.weakenings = cur->weakenings;
    err = gs_store_group_key_add_as(st, g->id, version, label, pem,
                                    version > cur->version ? GS_KEY_CURRENT : GS_KEY_OLD, &rec);
    if (!err)
        log_info("unrecorded group key version recorded group=%s version=%u label=\"%s\"", g->name, version, log_qs(label));
out:
    gs_store_keys_unlock(st);
    free(pem);
    hsm_key_free(priv);
    gs_store_group_keys_free(keys, nk);
    return err;
}

gs_err gs_secret_record(gs_store *st, hsm_ctx *hsm, const char *name, unsigned version,
                        const unsigned char kek_id[GS_KEK_ID_LEN])
{
    gs_store_group *g = NULL;
    gs_store_secret *secrets = NULL;
    const gs_store_secret *cur = NULL;
    size_t ns = 0;
    char label[GS_LABEL_MAX + 1];
    hsm_key *key = NULL;
    gs_store_keyrec rec;
    gs_policy pol;
    bool locked = false;
    gs_err err;

    if ((err = gs_store_group_get(st, name, &g)) != GS_OK)
        goto out;
    if ((err = require_group_secret(g)) != GS_OK)
        goto out;
    if ((err = gs_policy_parse(g->policy, &pol)) != GS_OK)
        goto out;
    if (pol.secrets == GS_SECRETS_SEALED) {
        err = gs_err_set(GS_ERR_STATE, "group %s keeps its secret keys sealed in the database, not on the token: "
                                       "a version the database lost is gone", g->name);
        goto out;
    }
    if ((err = gs_store_keys_lock(st)) != GS_OK)
        goto out;
    locked = true;
    if ((err = gs_store_secrets(st, g->id, &secrets, &ns)) != GS_OK)
        goto out;
    for (size_t i = 0; i < ns; i++) {
        if (secrets[i].version == version) {
            err = gs_err_set(GS_ERR_EXISTS, "group %s: secret key version %u is recorded", g->name, version);
            goto out;
        }
        if (secrets[i].state == GS_KEY_CURRENT)
            cur = &secrets[i];
    }
    if (cur == NULL) {
        err = gs_err_set(GS_ERR_STATE, "group %s has no current secret key version", g->name);
        goto out;
    }
    label_secret(label, sizeof(label), g->name, version);
    if ((err = unrecorded_key(hsm, g, "secret", version, label, HSM_CLASS_SECRET, cur->weakenings, &key)) != GS_OK)
        goto out;
    memset(&rec, 0, sizeof(rec));
    rec.weakenings = cur->weakenings;
    err = gs_store_secret_add_as(st, g->id, version, label, kek_id,
                                 version > cur->version ? GS_KEY_CURRENT : GS_KEY_OLD, &rec);
    if (err == GS_ERR_EXISTS)
        err = gs_err_set(GS_ERR_EXISTS, "group %s: another secret key version has this KEK identifier", g->name);
    if (!err)
        log_info("unrecorded secret key version recorded group=%s version=%u label=\"%s\"", g->name, version, log_qs(label));
out:
    if (locked)
        gs_store_keys_unlock(st);
    hsm_key_free(key);
    gs_store_secrets_free(secrets, ns);
    gs_store_group_free(g);
    return err;
}

gs_err gs_group_import_cert(gs_store *st, hsm_ctx *hsm, const char *name, unsigned version, X509 *cert)
{
    gs_store_group *g = NULL;
    gs_store_group_key *keys = NULL;
    const gs_store_group_key *k = NULL;
    size_t nk = 0;
    char *pem = NULL;
    bool locked = false;
    gs_err err;

    if (cert == NULL)
        return gs_err_set(GS_ERR_ARGS, "no certificate");
    err = gs_store_group_get(st, name, &g);
    if (err)
        return err;
    /* The record is read, extended and written back: two imports (or
     * renewals) at once would each keep the certificates as they read
     * them, and the one written last would drop the other's, which mail
     * sent to it in between names. They take turns. */
    if ((err = gs_store_keys_lock(st)) != GS_OK)
        goto out;
    locked = true;
    err = gs_store_group_keys(st, g->id, &keys, &nk);
    if (err)
        goto out;
    for (size_t i = 0; i < nk; i++)
        if ((version == 0 && keys[i].state == GS_KEY_CURRENT) || (version != 0 && keys[i].version == version))
            k = &keys[i];
    if (k == NULL && version != 0) {
        /* Not recorded: a version made after the backup a restored
         * database predates, still on the token, may be recorded again. */
        err = record_unrecorded_version(st, hsm, g, version, cert);
        goto out;
    }
    if (k == NULL || k->state == GS_KEY_RETIRED) {
        err = gs_err_set(GS_ERR_NOT_FOUND, "group %s has no usable key version %u", name, version);
        goto out;
    }
    if ((err = cert_names_list(g, cert)) != GS_OK)
        goto out;
    /* Senders' tools refuse an expired group certificate (groupmail), or
     * should: renewing to one would stop the list. */
    if ((err = gs_cert_check_valid_now(cert, "certificate")) != GS_OK)
        goto out;
    if ((err = cert_of_token_key(hsm, NULL, k->token_label, cert)) != GS_OK)
        goto out;
    err = cert_pem_with_former(cert, k->cert_pem, &pem);
    if (!err)
        err = gs_store_group_key_set_cert(st, g->id, k->version, pem);
    if (!err)
        log_info("group certificate imported group=%s version=%u", name, k->version);
out:
    if (locked)
        gs_store_keys_unlock(st);
    free(pem);
    gs_store_group_keys_free(keys, nk);
    gs_store_group_free(g);
    return err;
}

/* The next secret key version, made as the group's policy says (on the
 * token, or sealed); the caller records it with *rec and destroys a token
 * object again (destroy_next_secret) if that fails. */
struct next_secret {
    unsigned version;
    char label[GS_LABEL_MAX + 1];
    unsigned char kek_id[GS_KEK_ID_LEN];
    char weak[64];
    struct made_secret made;
    gs_store_keyrec rec;
};

static gs_err next_secret(gs_store *st, hsm_ctx *hsm, const gs_store_group *g, struct next_secret *ns)
{
    gs_store_secret *s = NULL;
    size_t n = 0;
    unsigned v = 0;
    hsm_key *seal = NULL;
    gs_policy pol;
    gs_err err;
    hsm_err he;

    memset(ns, 0, sizeof(*ns));
    if ((err = require_group_secret(g)) != GS_OK)
        return err;
    err = gs_policy_parse(g->policy, &pol);
    if (!err)
        err = gs_store_secrets(st, g->id, &s, &n);
    if (err)
        return err;
    for (size_t i = 0; i < n; i++)
        if (s[i].version > v)
            v = s[i].version;
    gs_store_secrets_free(s, n);
    err = free_version(hsm, label_secret, g->name, v + 1, &ns->version, ns->label, sizeof(ns->label));
    if (!err)
        err = new_kek_id(ns->kek_id);
    if (err)
        return err;
    if (pol.secrets == GS_SECRETS_SEALED) {
        he = hsm_key_find(hsm, SEAL_LABEL, HSM_CLASS_PRIVATE, &seal);
        if (he != HSM_OK)
            return gs_hsm_fail(he, "seal key", SEAL_LABEL);
    }
    err = make_secret(hsm, pol.secrets, seal, ns->label, &ns->made);
    hsm_key_free(seal);
    if (err)
        return err;
    gs_weak_format(ns->made.missing, ns->weak, sizeof(ns->weak));
    ns->rec.weakenings = ns->weak;
    ns->rec.seal_label = ns->made.sealed ? SEAL_LABEL : NULL;
    ns->rec.sealed = ns->made.sealed;
    ns->rec.sealed_len = ns->made.sealed_len;
    return GS_OK;
}

/* After a failure to record it: the token object goes again; the detail
 * of the failure is kept. Frees what next_secret made. */
static void next_secret_undo(hsm_ctx *hsm, struct next_secret *ns, bool destroy)
{
    if (destroy && ns->made.on_token) {
        char detail[512];
        gs_err saved = GS_OK;
        (void)util_strlcpy(detail, gs_err_detail(), sizeof(detail));
        undo_label(hsm, ns->label, HSM_CLASS_SECRET);
        (void)restore_detail(saved, detail);
    }
    made_secret_clear(&ns->made);
}

static gs_err secret_rotate_locked(gs_store *st, hsm_ctx *hsm, const char *name, unsigned *version_out)
{
    gs_store_group *g = NULL;
    struct next_secret ns;
    bool keep = false;
    gs_err err;

    memset(&ns, 0, sizeof(ns));
    skipped_labels[0] = '\0';
    if (version_out)
        *version_out = 0;
    bool elsewhere = false;
    err = gs_store_group_get(st, name, &g);
    if (err)
        return err;
    err = group_made_elsewhere(st, hsm, g, &elsewhere);
    if (!err && elsewhere)
        err = made_elsewhere_refusal(name, "secret key version", "--secret-version");
    if (!err)
        err = next_secret(st, hsm, g, &ns);
    if (err)
        goto out;
    err = gs_store_secret_add2(st, g->id, ns.version, ns.label, ns.kek_id, &ns.rec);
    if (err && gs_store_commit_unknown(st)) {
        char made[GS_NAME_MAX + 56];
        (void)snprintf(made, sizeof(made), "secret key version %u of group %s was made", ns.version, name);
        err = gs_keys_kept_after_unknown_commit(err, made, name, ns.label);
        keep = true;
    }
    if (err)
        goto out;
    log_info("secret key rotated group=%s version=%u", name, ns.version);
    if (version_out)
        *version_out = ns.version;
out:
    next_secret_undo(hsm, &ns, err != GS_OK && !keep);
    gs_store_group_free(g);
    return err;
}

/* Under the keys lock: two rotations (or removals) at once get two
 * versions, not one label on two keys. */
gs_err gs_secret_rotate(gs_store *st, hsm_ctx *hsm, const char *name, unsigned *version_out)
{
    return under_keys_lock(st, &(struct keys_call){.work = KEYS_SECRET_ROTATE, .hsm = hsm, .name = name,
                                                   .version_out = version_out});
}

/* ---- membership --------------------------------------------------------------- */

gs_err gs_member_add(gs_store *st, const char *group, const char *email, gs_role role, X509 *cert)
{
    return gs_member_add_wrap(st, group, email, role, cert, GS_WRAP_DEFAULT);
}

/* A new member's certificate as PEM (*pem NULL without one), checked to
 * name the member's address as the server will know it (gs_cert_identity:
 * a certificate recorded here must authenticate as the member); GS_ERR_CERT
 * otherwise. */
static gs_err member_cert_pem(X509 *cert, const char *email, char **pem)
{
    char cemail[GS_EMAIL_MAX + 1];
    char q[GS_EMAIL_MAX + 8];
    gs_err err;

    *pem = NULL;
    if (cert == NULL)
        return GS_OK;
    if (!gs_cert_identity(cert, cemail, sizeof(cemail)) || !gs_valid_email(cemail))
        return gs_err_set(GS_ERR_CERT, "certificate has no email address (SAN rfc822Name, else a subject CN or "
                                       "emailAddress that is one)");
    if (strcasecmp(cemail, email) != 0)
        return gs_err_set(GS_ERR_CERT, "certificate is for %s, not %s", log_quote(q, sizeof(q), cemail), email);
    /* Message keys are re-wrapped to it (recipient-key, member-certs). */
    if ((err = gs_key_check_strength(X509_get0_pubkey(cert), "certificate")) != GS_OK)
        return err;
    /* The server would refuse it (401 certificate_expired) and wrap
     * member-certs copies to it: refused here, where it is named. */
    if ((err = gs_cert_check_valid_now(cert, "certificate")) != GS_OK)
        return err;
    if ((err = gs_cert_to_pem(cert, pem)) != GS_OK)
        return err;
    /* The record is read back with gs_cert_parse, which takes at most
     * GS_CERT_RECORD_MAX: a DER certificate under that (a file, a PUT's
     * PEM with long lines) can be a longer PEM, recorded and then never
     * read (certificate_mismatch on every request, a GET's certificate
     * null beside has_certificate, which a GET put back drops). */
    if (strlen(*pem) > GS_CERT_RECORD_MAX) {
        size_t n = strlen(*pem);
        free(*pem);
        *pem = NULL;
        return gs_err_set(GS_ERR_CERT, "certificate too large: its PEM record would be %zu bytes, over %d", n,
                          GS_CERT_RECORD_MAX);
    }
    return GS_OK;
}

/* Runs of gs_member_put's transaction when concurrent PUTs of the same
 * member keep inserting it first: each retry follows a commit of another. */
#define MEMBER_PUT_ATTEMPTS 4

/* The swap of a member's record for (role, pem, wrap) in one
 * transaction: the old record goes if there is one (*replaced), the new
 * one is inserted. */
static gs_err member_replace(gs_store *st, int64_t group_id, const char *email, gs_role role, const char *pem,
                             gs_wrap wrap, bool *replaced)
{
    gs_err err;

    *replaced = false;
    for (int attempt = 1;; attempt++) {
        bool found = false;
        if ((err = gs_store_begin(st)) != GS_OK)
            return err;
        /* The old record goes if there is one: both stores answer
         * NOT_FOUND (and change nothing) when there is none. */
        err = gs_store_member_remove(st, group_id, email);
        if (err == GS_OK)
            found = true;
        else if (err == GS_ERR_NOT_FOUND)
            err = GS_OK;
        if (err == GS_OK)
            err = gs_store_member_add(st, group_id, email, role, pem);
        if (err == GS_OK && wrap != GS_WRAP_DEFAULT)
            err = gs_store_member_set_wrap(st, group_id, email, wrap);
        if (err != GS_OK)
            gs_store_rollback(st);
        else
            err = gs_store_commit(st);
        *replaced = found;
        /* PostgreSQL (READ COMMITTED): a PUT of the same member committed
         * by another connection after our DELETE found nothing makes our
         * INSERT a unique violation. Run again: the DELETE now sees that
         * record and replaces it, as if the two PUTs had come in turn. */
        if (err == GS_ERR_EXISTS && !found && attempt < MEMBER_PUT_ATTEMPTS)
            continue;
        break;
    }
    if (err != GS_OK)
        *replaced = false; /* nothing changed, a failed commit included */
    return err;
}

gs_err gs_member_put(gs_store *st, const char *group, const char *email, gs_role role, X509 *cert, gs_wrap wrap,
                     bool *replaced)
{
    gs_store_group *g = NULL;
    char *pem = NULL;
    gs_err err;

    *replaced = false;
    if (!gs_valid_email(email))
        return gs_err_set(GS_ERR_ARGS, "invalid member email address: %s", mailaddr_problem(email));
    if ((err = gs_store_group_get(st, group, &g)) != GS_OK)
        return err;
    /* Everything that can refuse the new record is checked before the
     * old one is touched, and the swap is one transaction. */
    if ((err = member_cert_pem(cert, email, &pem)) != GS_OK)
        goto out;
    err = member_replace(st, g->id, email, role, pem, wrap, replaced);
    if (err == GS_OK)
        log_info("member %s group=%s member=%s role=%s wrap=%s", *replaced ? "replaced" : "added", group, email,
                 gs_role_name(role), gs_wrap_name(wrap));
out:
    free(pem);
    gs_store_group_free(g);
    return err;
}

gs_err gs_member_set(gs_store *st, int64_t group_id, const gs_store_member *prev, gs_role role, X509 *cert,
                     gs_wrap wrap)
{
    char *pem = NULL;
    bool replaced = false;
    gs_err err;

    if (cert != NULL)
        err = member_cert_pem(cert, prev->email, &pem);
    else if (prev->cert_pem != NULL && (pem = strdup(prev->cert_pem)) == NULL)
        err = gs_err_set(GS_ERR_NOMEM, "out of memory");
    else
        err = GS_OK;
    if (err == GS_OK)
        err = member_replace(st, group_id, prev->email, role, pem, wrap, &replaced);
    if (err == GS_OK)
        log_info("member replaced group_id=%lld member=%s role=%s wrap=%s certificate=%s", (long long)group_id,
                 prev->email, gs_role_name(role), gs_wrap_name(wrap), cert != NULL ? "new" : "kept");
    free(pem);
    return err;
}

gs_err gs_member_admins(gs_store *st, int64_t group_id, size_t *admins)
{
    gs_store_member *list = NULL;
    size_t n = 0;
    gs_err err = gs_store_member_list(st, group_id, &list, &n);

    *admins = 0;
    if (err != GS_OK)
        return err;
    for (size_t i = 0; i < n; i++)
        *admins += list[i].role == GS_ROLE_ADMIN;
    gs_store_member_list_free(list, n);
    return GS_OK;
}

gs_err gs_member_add_wrap(gs_store *st, const char *group, const char *email, gs_role role, X509 *cert,
                          gs_wrap wrap)
{
    gs_store_group *g = NULL;
    char *pem = NULL;
    gs_err err;

    if (!gs_valid_email(email))
        return gs_err_set(GS_ERR_ARGS, "invalid member email address: %s", mailaddr_problem(email));
    err = gs_store_group_get(st, group, &g);
    if (err)
        return err;
    if ((err = member_cert_pem(cert, email, &pem)) != GS_OK)
        goto out;
    if (wrap == GS_WRAP_DEFAULT) {
        err = gs_store_member_add(st, g->id, email, role, pem);
    } else if ((err = gs_store_begin(st)) == GS_OK) {
        /* the member and their wrap choice land together or not at all */
        err = gs_store_member_add(st, g->id, email, role, pem);
        if (!err)
            err = gs_store_member_set_wrap(st, g->id, email, wrap);
        if (err)
            gs_store_rollback(st);
        else
            err = gs_store_commit(st);
    }
    if (!err)
        log_info("member added group=%s member=%s role=%s wrap=%s", group, email, gs_role_name(role),
                 gs_wrap_name(wrap));
out:
    free(pem);
    gs_store_group_free(g);
    return err;
}

gs_err gs_member_remove(gs_store *st, hsm_ctx *hsm, const struct gs_config *cfg, const char *group,
                        const char *email, unsigned *rotated_version)
{
    gs_member_removal r;
    gs_err err = gs_member_remove_ex(st, hsm, NULL, cfg, group, email, &r);

    if (rotated_version)
        *rotated_version = r.secret_version;
    return err;
}

static gs_err member_remove_locked(gs_store *st, hsm_ctx *hsm, const gs_ca *ca, const struct gs_config *cfg,
                           const char *group, const char *email, gs_member_removal *out)
{
    gs_store_group *g = NULL;
    gs_store_member *m = NULL;
    gs_ca *own_ca = NULL;
    struct next_secret ns;
    struct next_version nv;
    bool rotate, rotate_key, made = false, rotating = false, keep = false;
    gs_err err;

    memset(&ns, 0, sizeof(ns));
    memset(&nv, 0, sizeof(nv));
    skipped_labels[0] = '\0';
    memset(out, 0, sizeof(*out));
    err = gs_store_group_get(st, group, &g);
    if (err)
        return err;
    err = gs_store_member_get(st, g->id, email, &m);
    if (err) {
        char q[GS_EMAIL_MAX + 8];
        if (err == GS_ERR_NOT_FOUND)
            err = gs_err_set(err, "%s is not a member of %s", log_quote(q, sizeof(q), email), group);
        goto out;
    }
    (void)snprintf(out->email, sizeof(out->email), "%s", m->email);
    rotate = cfg->server.auto_rotate_secret_on_remove && (g->methods & GS_METHOD_GROUP_SECRET);
    rotate_key = (g->methods & GS_METHOD_LOCAL_KEY) != 0;
    if ((rotate || rotate_key) && hsm == NULL) {
        err = gs_err_set(GS_ERR_ARGS, "removing a member rotates a key: token needed");
        goto out;
    }
    /* A clone's own database: the removal here, the rotations on the
     * server the group came from (their versions are imported here). */
    if ((rotate || rotate_key) && (err = group_made_elsewhere(st, hsm, g, &out->rotate_elsewhere)) != GS_OK)
        goto out;
    if (out->rotate_elsewhere)
        rotate = rotate_key = false;
    if (rotate || rotate_key) {
        /* A write-protected token serves but makes no key: said up front,
         * as a refusal (the REST answer is 400, not a 503 whose
         * Retry-After would be followed for ever), the member kept. */
        hsm_caps caps;
        char q[GS_EMAIL_MAX + 8];
        if (hsm_caps_get(hsm, &caps) == HSM_OK && caps.write_protected) {
            err = gs_err_set(GS_ERR_ARGS, "%s stays a member of %s: removing a member makes a new %s on the token, "
                             "which is write-protected (CKF_WRITE_PROTECTED); remove members where the token "
                             "takes new keys",
                             log_quote(q, sizeof(q), email), group,
                             rotate_key ? "group key version" : "group secret key version");
            goto out;
        }
    }
    /* From here a failure of the token's work (a key that cannot be made)
     * leaves the member in: said first (below), so that nobody reads a
     * failed rotation as a removal that only lacked its new key. */
    rotating = true;
    /* Option C: the member may hold a copy of the group key on their own
     * token, which no server can take back. Mail to the group must go to a
     * key they do not have: a new version, in the same step. */
    if (rotate_key) {
        if (ca == NULL) {
            err = gs_ca_load(st, hsm, &own_ca);
            if (!err)
                err = gs_ca_check_key(own_ca, hsm);
            if (err)
                goto out;
            ca = own_ca;
        }
        err = make_next_version(st, hsm, ca, cfg, g, &nv);
        if (err)
            goto out;
    }
    if (rotate) {
        err = next_secret(st, hsm, g, &ns);
        if (err)
            goto out;
        made = true;
    }
    rotating = false;
    /* Removal and the new versions land together, or none of them. */
    err = gs_store_begin(st);
    if (err)
        goto out;
    err = gs_store_member_remove(st, g->id, email);
    if (!err && rotate)
        err = gs_store_secret_add2(st, g->id, ns.version, ns.label, ns.kek_id, &ns.rec);
    if (!err && nv.made)
        err = record_next_version(st, g, &nv);
    if (err) {
        gs_store_rollback(st);
        goto out;
    }
    err = gs_store_commit(st);
    if (err && gs_store_commit_unknown(st) && (made || nv.made)) {
        char labels[2 * (GS_LABEL_MAX + 2)] = "", what[GS_EMAIL_MAX + GS_NAME_MAX + 48], q[GS_EMAIL_MAX + 8];
        if (made)
            label_list_add(labels, sizeof(labels), ns.label);
        if (nv.made)
            label_list_add(labels, sizeof(labels), nv.label);
        (void)snprintf(what, sizeof(what), "the removal of %s from %s was made", log_quote(q, sizeof(q), email),
                       group);
        err = gs_keys_kept_after_unknown_commit(err, what, group, labels);
        keep = true;
        nv.made = false; /* kept */
    }
    if (err)
        goto out;
    log_info("member removed group=%s member=%s secret_version=%u key_version=%u rotate_elsewhere=%d", group, email,
             ns.version, nv.version, (int)out->rotate_elsewhere);
    out->secret_version = ns.version;
    out->key_version = nv.version;
    nv.made = false; /* recorded */
out:
    if (made)
        next_secret_undo(hsm, &ns, err != GS_OK && !keep);
    drop_next_version(hsm, &nv); /* destroys the pair unless it was recorded (or kept) */
    if (err != GS_OK && rotating) {
        char d[512], q[GS_EMAIL_MAX + 8];
        (void)util_strlcpy(d, gs_err_detail(), sizeof(d));
        (void)gs_err_set(err, "%s stays a member of %s: %s", log_quote(q, sizeof(q), email), group, d);
    }
    gs_ca_free(own_ca);
    gs_store_member_free(m);
    gs_store_group_free(g);
    return err;
}

/* Two records the same to the field (NULL: no record); the email as
 * spelt, the time it was made included, so that a record made anew with
 * the same content is another. */
static bool same_member(const gs_store_member *a, const gs_store_member *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a->email, b->email) == 0 && a->role == b->role && a->added == b->added && a->wrap == b->wrap &&
           (a->cert_pem == NULL ? b->cert_pem == NULL : b->cert_pem != NULL && strcmp(a->cert_pem, b->cert_pem) == 0);
}

gs_err gs_member_restore(gs_store *st, int64_t group_id, const char *email, const gs_store_member *prev,
                         const gs_store_member *made)
{
    gs_store_member *now = NULL;
    gs_err err;

    if ((err = gs_store_begin(st)) != GS_OK)
        return err;
    err = gs_store_member_get(st, group_id, email, &now);
    if (err == GS_ERR_NOT_FOUND)
        err = GS_OK;
    if (err == GS_OK && !same_member(now, made))
        err = gs_err_set(GS_ERR_STATE, "the member's record was changed again since: not put back over it");
    if (err == GS_OK && now != NULL)
        err = gs_store_member_remove(st, group_id, email);
    if (err == GS_OK && prev != NULL)
        err = gs_store_member_add(st, group_id, prev->email, prev->role, prev->cert_pem);
    if (err == GS_OK && prev != NULL && prev->wrap != GS_WRAP_DEFAULT)
        err = gs_store_member_set_wrap(st, group_id, prev->email, prev->wrap);
    gs_store_member_free(now);
    if (err != GS_OK) {
        gs_store_rollback(st);
        return err;
    }
    return gs_store_commit(st);
}

/* Under the keys lock: a removal may make the next secret (and key)
 * version, and two removals at once must not pick the same one. */
gs_err gs_member_remove_ex(gs_store *st, hsm_ctx *hsm, const gs_ca *ca, const struct gs_config *cfg,
                           const char *group, const char *email, gs_member_removal *out)
{
    return under_keys_lock(st, &(struct keys_call){.work = KEYS_MEMBER_REMOVE, .hsm = hsm, .ca = ca, .cfg = cfg,
                                                   .name = group, .email = email, .removal = out});
}

/* What each keys_work runs, its arguments taken from the call. */
static gs_err create_work(gs_store *st, const struct keys_call *c)
{
    return group_create_locked(st, c->hsm, c->ca, c->cfg, c->spec, c->version_out);
}
static gs_err rotate_work(gs_store *st, const struct keys_call *c)
{
    return group_rotate_locked(st, c->hsm, c->ca, c->cfg, c->name, c->take_over, c->version_out,
                               c->took_over);
}
static gs_err secret_rotate_work(gs_store *st, const struct keys_call *c)
{
    return secret_rotate_locked(st, c->hsm, c->name, c->version_out);
}
static gs_err remove_work(gs_store *st, const struct keys_call *c)
{
    return member_remove_locked(st, c->hsm, c->ca, c->cfg, c->name, c->email, c->removal);
}

static gs_err under_keys_lock(gs_store *st, const struct keys_call *c)
{
    static gs_err (*const works[])(gs_store *, const struct keys_call *) = {
        [KEYS_GROUP_CREATE] = create_work,
        [KEYS_GROUP_ROTATE] = rotate_work,
        [KEYS_SECRET_ROTATE] = secret_rotate_work,
        [KEYS_MEMBER_REMOVE] = remove_work,
    };
    gs_err err;

    if (c->version_out)
        *c->version_out = 0;
    if (c->removal)
        memset(c->removal, 0, sizeof(*c->removal));
    if ((size_t)c->work >= GS_ARRAY_LEN(works) || works[c->work] == NULL)
        return gs_err_set(GS_ERR_ARGS, "unknown keys work");
    if ((err = gs_store_keys_lock(st)) != GS_OK)
        return err;
    err = works[c->work](st, c);
    gs_store_keys_unlock(st);
    return err;
}

/* ---- audit ----------------------------------------------------------------------- */

struct audit {
    hsm_ctx *hsm;
    void (*cb)(void *arg, const gs_key_audit_row *row);
    void *arg;
    unsigned problems;
    bool trusted_wrap_unenforced; /* the token keeps CKA_WRAP_WITH_TRUSTED without enforcing it */
    bool no_aes_key_wrap;         /* the module offers no CKM_AES_KEY_WRAP for C_WrapKey */
    char note[320];               /* a row's note and one of ours */
    char why[320];                /* a key URI's own reason it found no key (fetch) */
};

static void report(struct audit *a, gs_key_audit_row *row)
{
    row->ok = row->problem == NULL || row->problem[0] == '\0';
    if (row->problem == NULL)
        row->problem = "";
    if (row->accepted == NULL)
        row->accepted = "";
    if (row->note == NULL)
        row->note = "";
    if (row->custody == NULL)
        row->custody = "";
    if (!row->ok)
        a->problems++;
    if (a->cb)
        a->cb(a->arg, row);
}

/* A row for one key, cleared: what it is and where it belongs. */
static void row_begin(gs_key_audit_row *row, const char *kind, const char *group, const char *label, unsigned version)
{
    memset(row, 0, sizeof(*row));
    row->kind = kind;
    row->group = group;
    row->label = label;
    row->version = version;
}

/* A retired version must really be gone: reported with problem (which
 * names the retire to run again) while it is still on the token. */
static void audit_retired(struct audit *a, gs_key_audit_row *row, const char *problem)
{
    bool present;

    if (gs_token_label_present(a->hsm, row->label, &present) == GS_OK && !present)
        return;
    row->present = true;
    row->problem = problem;
    report(a, row);
}

/* Finds label of class cls (unless *key is already the key found) and fills
 * info; returns a problem or NULL. */
static const char *fetch(struct audit *a, const char *label, hsm_key_class cls, hsm_key_info *info, hsm_key **key)
{
    hsm_err he = *key != NULL ? HSM_OK : hsm_key_find(a->hsm, label, cls, key);
    const char *d = hsm_last_error_detail();

    /* A key recorded by a URI (--use-key) whose slot-id, slot or module
     * attributes no longer match (a reader plugged in elsewhere, the
     * module upgraded) or that names another token: the key may well be
     * on the token, and "missing" would send the operator looking for a
     * deleted key. The URI's own reason, as serve gives it. */
    if ((he == HSM_ERR_KEY_NOT_FOUND || he == HSM_ERR_URI) && strncmp(label, "pkcs11:", 7) == 0 &&
        hsm_last_error_uri_elsewhere()) {
        snprintf(a->why, sizeof(a->why), "not found by its recorded URI: %.260s", d);
        return a->why;
    }
    if (he == HSM_ERR_KEY_NOT_FOUND)
        return "missing from the token";
    if (he == HSM_ERR_KEY_AMBIGUOUS)
        return "more than one object with this label";
    if (he != HSM_OK)
        return "token lookup failed";
    he = hsm_key_get_info(a->hsm, *key, info);
    if (he != HSM_OK)
        return "attributes unreadable";
    return NULL;
}

/* Adds text to row's note (after what it says already), in a->note. */
static void note_add(struct audit *a, gs_key_audit_row *row, const char *text)
{
    char buf[sizeof(a->note)];
    bool before = row->note != NULL && row->note[0] != '\0';

    /* row->note may be a->note itself: composed apart, then copied */
    (void)snprintf(buf, sizeof(buf), "%s%s%s", before ? row->note : "", before ? "; " : "", text);
    memcpy(a->note, buf, sizeof(buf));
    row->note = a->note;
}

/* One token key: found (if *key is NULL), attributes checked against e (its
 * recorded weakenings accepted). Fills row; the key stays in *key for more
 * checks. */
static void audit_key(struct audit *a, gs_key_audit_row *row, const char *label, hsm_key_class cls,
                      const gs_key_expect *e, hsm_key_info *info, hsm_key **key)
{
    row->problem = fetch(a, label, cls, info, key);
    row->present = row->problem == NULL || strcmp(row->problem, "missing from the token") != 0;
    if (row->problem == NULL) {
        row->info = info;
        row->problem = gs_key_check2(info, e, &row->note, &row->custody);
    }
    /* A replicable original is sound only where the token refuses to wrap
     * it under keys the security officer did not make trusted. */
    if (row->problem == NULL && a->trusted_wrap_unenforced && row->custody != NULL &&
        strncmp(row->custody, "replicable", 10) == 0)
        row->problem = "extractable, and this token does not enforce CKA_WRAP_WITH_TRUSTED (cap trusted wrap): "
                       "the user PIN alone can wrap it out";
    /* A PIN source in a URI recorded before --use-key refused it: never
     * read (the token is logged in with [hsm] pin_source alone), and
     * serve takes the key without a word; the operator who gave it may
     * think that file's PIN is the one in use. */
    if (strncmp(label, "pkcs11:", 7) == 0 && util_uri_has_pin_source(label))
        note_add(a, row, "WARNING: its recorded URI names a PIN source (pin-source), which is not read: the token's "
                         "PIN is [hsm] pin_source's");
}

/* Reads a recorded weakenings text; a damaged one is the row's problem. */
static unsigned row_missing(gs_key_audit_row *row, const char *text)
{
    unsigned m = 0;

    row->accepted = text != NULL ? text : "";
    if (gs_weak_parse(text, &m) != GS_OK)
        row->problem = "unknown weakening recorded in the database";
    return m;
}

static void audit_sealed(struct audit *a, gs_key_audit_row *row, const char *seal_label, const unsigned char *blob,
                         size_t len, hsm_key_type type)
{
    hsm_key *seal = NULL, *k = NULL;
    hsm_err he;

    row->present = false;
    if (seal_label == NULL || blob == NULL) {
        row->problem = "sealed, but its seal key or blob is not recorded";
        return;
    }
    he = hsm_key_find(a->hsm, seal_label, HSM_CLASS_PRIVATE, &seal);
    if (he == HSM_OK)
        he = hsm_key_from_sealed(a->hsm, seal, type, 256, blob, len, &k);
    if (he == HSM_OK)
        he = hsm_sealed_check(a->hsm, k);
    if (he == HSM_ERR_KEY_NOT_FOUND)
        row->problem = "its seal key is missing from the token";
    else if (he == HSM_ERR_DECRYPT)
        row->problem = "does not open with its seal key";
    else if (he != HSM_OK)
        row->problem = "could not be opened on the token";
    else
        row->present = true;
    row->accepted = type == HSM_KEYTYPE_AES ? "secret-sealed" : "reject-sealed";
    hsm_key_free(k);
    hsm_key_free(seal);
}

static void audit_group(struct audit *a, gs_store *st, const gs_store_group *g)
{
    gs_store_group_key *keys = NULL;
    gs_store_secret *secrets = NULL;
    size_t nk = 0, ns = 0;
    const char **labels = NULL;
    hsm_key **key_found = NULL, **secret_found = NULL;
    hsm_key_type type = HSM_KEYTYPE_RSA;
    unsigned bits = 0;
    gs_key_audit_row row;
    hsm_key_info info;
    gs_key_expect e;
    gs_policy pol;

    if (gs_keyspec_parse(g->algorithm, &type, &bits) != GS_OK || gs_policy_parse(g->policy, &pol) != GS_OK ||
        gs_store_group_keys(st, g->id, &keys, &nk) != GS_OK || gs_store_secrets(st, g->id, &secrets, &ns) != GS_OK) {
        row_begin(&row, "group", g->name, "", 0);
        row.problem = "database records unreadable";
        report(a, &row);
        goto out;
    }
    /* One token search per class, not one per version (gs_group_load);
     * what it does not find is looked for by label, and named. */
    if ((labels = calloc(nk > ns ? nk : ns ? ns : 1, sizeof(*labels))) != NULL) {
        for (size_t i = 0; i < nk; i++)
            labels[i] = keys[i].state == GS_KEY_RETIRED ? NULL : keys[i].token_label;
        key_found = find_by_labels(a->hsm, HSM_CLASS_PRIVATE, labels, nk);
        for (size_t i = 0; i < ns; i++)
            labels[i] = secrets[i].sealed != NULL || secrets[i].state == GS_KEY_RETIRED ? NULL : secrets[i].token_label;
        secret_found = find_by_labels(a->hsm, HSM_CLASS_SECRET, labels, ns);
    }
    for (size_t i = 0; i < nk; i++) {
        hsm_key *k = take_found(key_found, i);
        row_begin(&row, "group", g->name, keys[i].token_label, keys[i].version);
        if (keys[i].state == GS_KEY_RETIRED) {
            audit_retired(a, &row, "retired but still on the token (run `group retire` on this server)");
            continue;
        }
        group_expect(g, &pol, GS_KIND_GROUP, type, bits, row_missing(&row, keys[i].weakenings), &e);
        if (row.problem == NULL)
            audit_key(a, &row, keys[i].token_label, HSM_CLASS_PRIVATE, &e, &info, &k);
        if (row.problem == NULL) {
            unsigned char *spki = NULL;
            size_t spki_len = 0;
            X509 *cert = NULL;
            if (hsm_key_export_public(a->hsm, k, &spki, &spki_len) != HSM_OK)
                row.problem = "public key unreadable";
            else if (gs_cert_parse((const unsigned char *)keys[i].cert_pem, strlen(keys[i].cert_pem), &cert) != GS_OK)
                row.problem = "recorded certificate invalid";
            else if (!gs_cert_matches_spki(cert, spki, spki_len))
                row.problem = "certificate key differs from the token key";
            X509_free(cert);
            free(spki);
        }
        hsm_key_free(k);
        report(a, &row);
    }
    for (size_t i = 0; i < ns; i++) {
        hsm_key *k = take_found(secret_found, i);
        row_begin(&row, "secret", g->name, secrets[i].token_label, secrets[i].version);
        if (secrets[i].state == GS_KEY_RETIRED) {
            audit_retired(a, &row, "retired but still on the token (run `secret retire` on this server)");
            continue;
        }
        if (secrets[i].sealed != NULL) {
            audit_sealed(a, &row, secrets[i].seal_label, secrets[i].sealed, secrets[i].sealed_len, HSM_KEYTYPE_AES);
        } else {
            group_expect(g, &pol, GS_KIND_SECRET, type, bits, row_missing(&row, secrets[i].weakenings), &e);
            if (row.problem == NULL)
                audit_key(a, &row, secrets[i].token_label, HSM_CLASS_SECRET, &e, &info, &k);
            /* A key made to wrap with CKM_AES_KEY_WRAP (where it was made:
             * the token directly, another module) served through a module
             * that does not offer it (p11-kit's RPC, a network HSM's client):
             * sound, but group-secret is refused. Said, not a problem: the
             * rest of the group is served. */
            if (row.problem == NULL && row.info != NULL && row.info->wrap && a->no_aes_key_wrap) {
                note_add(a, &row, "CKM_AES_KEY_WRAP is not offered through this module: deliver=group-secret is "
                                  "refused (unsupported_algorithm) here");
            }
        }
        hsm_key_free(k);
        report(a, &row);
    }
    if (g->reject_label) {
        hsm_key *k = NULL;
        row_begin(&row, "reject", g->name, g->reject_label, 0);
        if (g->reject_sealed != NULL) {
            audit_sealed(a, &row, g->reject_seal_label, g->reject_sealed, g->reject_sealed_len,
                         HSM_KEYTYPE_GENERIC_SECRET);
        } else {
            group_expect(g, &pol, GS_KIND_REJECT, type, bits, row_missing(&row, g->reject_weakenings), &e);
            if (row.problem == NULL)
                audit_key(a, &row, g->reject_label, HSM_CLASS_SECRET, &e, &info, &k);
        }
        hsm_key_free(k);
        report(a, &row);
    }
out:
    found_free(key_found, nk);
    found_free(secret_found, ns);
    free(labels);
    gs_store_group_keys_free(keys, nk);
    gs_store_secrets_free(secrets, ns);
}

/* The labels the database records, and those reported (gs_keys_unrecorded). */
struct unrecorded {
    char **labels;
    size_t n, cap; /* the recorded labels, then those reported */
    void (*cb)(void *arg, const char *label);
    void *arg;
    gs_err err;
};

static gs_err unrec_add(struct unrecorded *u, const char *label)
{
    if (label == NULL || label[0] == '\0')
        return GS_OK;
    if (u->n == u->cap) {
        size_t cap = u->cap ? u->cap * 2 : 32;
        char **grown = cap > SIZE_MAX / sizeof(*grown) ? NULL : realloc(u->labels, cap * sizeof(*grown));
        if (grown == NULL)
            return GS_ERR_NOMEM;
        u->labels = grown;
        u->cap = cap;
    }
    if ((u->labels[u->n] = strdup(label)) == NULL)
        return GS_ERR_NOMEM;
    u->n++;
    return GS_OK;
}

/* Is label recorded (or reported)? An adopted key is recorded by its URI:
 * its object= attribute names it. */
static bool unrec_known(const struct unrecorded *u, const char *label)
{
    size_t len = strlen(label);

    for (size_t i = 0; i < u->n; i++) {
        const char *r = u->labels[i], *at;
        if (strcmp(r, label) == 0)
            return true;
        if (strncmp(r, "pkcs11:", 7) == 0 && (at = strstr(r, "object=")) != NULL &&
            strncmp(at + 7, label, len) == 0 && strchr(";?", at[7 + len]) != NULL)
            return true;
    }
    return false;
}

static int unrec_key(void *arg, hsm_ctx *hsm, hsm_key *key)
{
    struct unrecorded *u = arg;
    /* The label the listing read: every attribute (hsm_key_get_info) would
     * be a dozen more round trips per object on a remote token. */
    const char *label = hsm_key_label(key);

    (void)hsm;
    if (strncmp(label, "gs:transport:", 13) == 0 || unrec_known(u, label))
        return 0;
    /* Known from here on: the other half of a pair is not named twice. */
    if ((u->err = unrec_add(u, label)) != GS_OK)
        return 1;
    u->cb(u->arg, label);
    return 0;
}

gs_err gs_keys_unrecorded(gs_store *st, hsm_ctx *hsm, void (*cb)(void *arg, const char *label), void *arg)
{
    struct unrecorded u = {NULL, 0, 0, cb, arg, GS_OK};
    gs_store_ca *ca = NULL;
    gs_store_seal_key *seals = NULL;
    gs_store_group **groups = NULL;
    size_t nseal = 0, ng = 0;
    gs_err err = gs_store_ca_get(st, &ca);

    if (err == GS_OK)
        err = unrec_add(&u, ca->label);
    else if (err == GS_ERR_NOT_FOUND)
        err = GS_OK;
    if (!err)
        err = gs_store_seal_keys(st, &seals, &nseal);
    for (size_t i = 0; !err && i < nseal; i++)
        err = unrec_add(&u, seals[i].label);
    if (!err)
        err = gs_store_group_list(st, &groups, &ng);
    for (size_t i = 0; !err && i < ng; i++) {
        gs_store_group_key *keys = NULL;
        gs_store_secret *secrets = NULL;
        size_t nk = 0, ns = 0;
        err = unrec_add(&u, groups[i]->reject_label);
        if (!err)
            err = gs_store_group_keys(st, groups[i]->id, &keys, &nk);
        for (size_t j = 0; !err && j < nk; j++) /* retired ones too: `check` names those still here */
            err = unrec_add(&u, keys[j].token_label);
        if (!err)
            err = gs_store_secrets(st, groups[i]->id, &secrets, &ns);
        for (size_t j = 0; !err && j < ns; j++)
            err = unrec_add(&u, secrets[j].token_label);
        gs_store_group_keys_free(keys, nk);
        gs_store_secrets_free(secrets, ns);
    }
    if (!err) {
        hsm_err he = hsm_key_list(hsm, "gs:", unrec_key, &u);
        err = u.err != GS_OK ? u.err : he != HSM_OK ? gs_hsm_fail(he, "listing the token's keys", "gs:") : GS_OK;
    }
    for (size_t i = 0; i < u.n; i++)
        free(u.labels[i]);
    free(u.labels);
    gs_store_ca_free(ca);
    gs_store_seal_keys_free(seals, nseal);
    gs_store_group_list_free(groups, ng);
    return err;
}

gs_err gs_keys_audit(gs_store *st, hsm_ctx *hsm, void (*cb)(void *arg, const gs_key_audit_row *row), void *arg,
                     unsigned *problems)
{
    struct audit a = {hsm, cb, arg, 0, false, false, "", ""};
    hsm_caps caps;
    gs_store_ca *ca = NULL;
    gs_store_group **groups = NULL;
    gs_store_seal_key *seals = NULL;
    size_t ng = 0, nseal = 0;
    gs_key_audit_row row;
    hsm_key_info info;
    gs_key_expect e;
    gs_err err;

    *problems = 0;
    if (hsm_caps_get(hsm, &caps) == HSM_OK) {
        a.trusted_wrap_unenforced = caps.wrap_with_trusted_unenforced;
        a.no_aes_key_wrap = !hsm_caps_has(&caps, HSM_MECH_AES_KEY_WRAP, HSM_MF_WRAP);
    }
    memset(&row, 0, sizeof(row));
    row.kind = "ca";
    row.group = "";
    err = gs_store_ca_get(st, &ca);
    if (err == GS_ERR_NOT_FOUND) {
        row.label = "";
        row.problem = "CA not initialised (groupsrv ca init)";
        report(&a, &row);
    } else if (err) {
        return err;
    } else {
        hsm_key *k = NULL;
        row.label = ca->label;
        memset(&e, 0, sizeof(e));
        e.kind = GS_KIND_CA;
        e.replicable = ca->replicable;
        e.missing = row_missing(&row, ca->weakenings);
        if (row.problem == NULL)
            audit_key(&a, &row, ca->label, HSM_CLASS_PRIVATE, &e, &info, &k);
        /* The key under the CA's label must be the certificate's, as serve
         * and every issuing command require (gs_ca_load): a database
         * restored next to a token made anew holds another gs:ca. */
        if (row.problem == NULL && k != NULL) {
            unsigned char *spki = NULL;
            size_t spki_len = 0;
            X509 *cert = NULL;
            if (hsm_key_export_public(hsm, k, &spki, &spki_len) != HSM_OK)
                row.problem = "public key unreadable";
            else if (gs_cert_parse((const unsigned char *)ca->cert_pem, strlen(ca->cert_pem), &cert) != GS_OK)
                row.problem = "recorded certificate invalid";
            else if (!gs_cert_matches_spki(cert, spki, spki_len))
                row.problem = "certificate key differs from the token key";
            X509_free(cert);
            free(spki);
        }
        hsm_key_free(k);
        report(&a, &row);
    }
    err = gs_store_seal_keys(st, &seals, &nseal);
    if (err)
        goto out;
    for (size_t i = 0; i < nseal; i++) {
        hsm_key *k = NULL;
        row_begin(&row, "seal", "", seals[i].label, 0);
        memset(&e, 0, sizeof(e));
        e.kind = GS_KIND_SEAL;
        e.missing = row_missing(&row, seals[i].weakenings);
        if (row.problem == NULL)
            audit_key(&a, &row, seals[i].label, HSM_CLASS_PRIVATE, &e, &info, &k);
        hsm_key_free(k);
        report(&a, &row);
    }
    err = gs_store_group_list(st, &groups, &ng);
    if (err)
        goto out;
    for (size_t i = 0; i < ng; i++)
        audit_group(&a, st, groups[i]);
    *problems = a.problems;
out:
    gs_store_ca_free(ca);
    gs_store_seal_keys_free(seals, nseal);
    gs_store_group_list_free(groups, ng);
    return err;
}

