/*
 * api.c: the REST endpoints of the group server listener (DESIGN.md "REST
 * API", docs/api.md). Every request is authorised from scratch: the client
 * certificate is verified now, membership is read from SQLite now; the
 * group and its keys come from the thread's cache, reloaded whenever the
 * database changed (gcache.h).
 */
#include "server.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "envelope.h"
#include "log.h"
#include "util.h"

#define MAX_SEGMENTS 6
#define MAX_SEGMENT_LEN 256
#define MAX_RI_DER 16384       /* one RecipientInfo */
#define MAX_ENC_KEY 1024       /* an RSA-8192 ciphertext is 1024 bytes */
#define MAX_CEK 64

/* The one reason a v1.5 message is refused, word for word the same here
 * and in `exploder deliver` (which reads the discovery answer). */
#define MSG_V15_REFUSED "PKCS#1 v1.5 key transport is not allowed for this group"
#define MSG_LEN_REQUIRED                                                                                     \
    "PKCS#1 v1.5 key transport needs \"content_algorithm\" (or \"key_length\"): the content key's length is " \
    "never guessed"

/* Who is calling, decided per request. */
struct caller {
    const peer_info *peer;
    const char *identity;      /* email/CN, or "anonymous member" */
    gs_store_member *member;   /* NULL for membership certificates */
    int anonymous;             /* a membership certificate (method G) */
};

static void caller_clear(struct caller *c)
{
    gs_store_member_free(c->member);
    memset(c, 0, sizeof(*c));
}

/* ---- small helpers ------------------------------------------------------- */

static const char *method_names[] = {"tls", "recipient-key", "group-secret", "membership-cert", "local-key"};

static json_t *methods_json(unsigned m)
{
    json_t *a = json_array();
    for (unsigned i = 0; a != NULL && i < GS_ARRAY_LEN(method_names); i++)
        if (m & (1u << i))
            json_array_append_new(a, json_string(method_names[i]));
    return a;
}

static json_t *b64_json(const unsigned char *p, size_t len)
{
    char *s = NULL;
    json_t *j;

    if (util_b64_encode(p, len, &s) != UTIL_OK)
        return NULL;
    j = json_string(s);
    /* It may be the text of a plain content key (deliver=tls). */
    OPENSSL_cleanse(s, strlen(s));
    free(s);
    return j;
}

/* json_dumps grows its buffer with realloc, leaving copies of a plain key
 * in freed memory: answers that may hold one are serialised through this
 * buffer, which wipes what it leaves behind. */
struct wiped_text {
    char *p;
    size_t len, cap;
};

static int wiped_text_add(const char *data, size_t n, void *arg)
{
    struct wiped_text *t = arg;

    if (n > SIZE_MAX / 2 - t->len - 2)
        return -1;
    if (t->len + n + 2 > t->cap) {
        size_t cap = (t->len + n + 2) * 2;
        char *p = malloc(cap);
        if (p == NULL)
            return -1;
        if (t->len > 0)
            memcpy(p, t->p, t->len);
        if (t->p != NULL)
            OPENSSL_cleanse(t->p, t->cap);
        free(t->p);
        t->p = p;
        t->cap = cap;
    }
    memcpy(t->p + t->len, data, n);
    t->len += n;
    return 0;
}

/* o as compact JSON and a newline; NULL when out of memory. Wipe it after use. */
static char *dump_wiped(const json_t *o, size_t *len)
{
    struct wiped_text t = {NULL, 0, 0};

    *len = 0;
    if (json_dump_callback(o, wiped_text_add, &t, JSON_COMPACT | JSON_PRESERVE_ORDER) != 0 ||
        wiped_text_add("\n", 1, &t) != 0) {
        if (t.p != NULL)
            OPENSSL_cleanse(t.p, t.cap);
        free(t.p);
        return NULL;
    }
    *len = t.len;
    return t.p;
}

static int audit_refusal(struct srv_req *r, const char *action, const char *identity, const char *group,
                         const char *outcome)
{
    audit_record rec = {.action = action, .identity = identity, .group = group, .key_version = -1,
                        .outcome = outcome};
    return srv_audit(r, &rec);
}

/* The group from this thread's cache (reloaded when the database changed;
 * borrowed for the rest of the request: never freed by the handler);
 * replies 404/503 on failure. */
static gs_group *load_group(struct srv_req *r, const char *name)
{
    gs_group *g = NULL;
    gs_err e;

    if (!gs_valid_group_name(name)) {
        srv_reply_error(r, 404, "not_found", "no such group");
        return NULL;
    }
    if ((e = gcache_group(r->t->gcache, r->t->store, r->srv->hsm, name, &g)) != GS_OK) {
        srv_reply_gs_error(r, e, "group");
        return NULL;
    }
    return g;
}

/* Authenticates the caller for group g and checks its role. roles: bit set
 * of (1 << gs_role); allow_anonymous: a membership certificate of this
 * group is accepted. Replies 401/403/429/503 and returns -1 otherwise. */
static int authorise(struct srv_req *r, gs_group *g, unsigned roles, int allow_anonymous, const char *action,
                     struct caller *c)
{
    const gs_store_group *gi = gs_group_info(g);
    gs_err e;

    memset(c, 0, sizeof(*c));
    if (srv_require_cert(r) != 0)
        return -1;
    c->peer = srv_peer(r);
    if (c->peer->status == PEER_MEMBERSHIP) {
        c->identity = "anonymous member";
        c->anonymous = 1;
        if (!allow_anonymous || strcmp(c->peer->group, gi->name) != 0 ||
            !(gi->methods & GS_METHOD_MEMBERSHIP_CERT)) {
            audit_refusal(r, action, c->identity, gi->name, "not_a_member");
            if (!r->replied)
                srv_reply_error(r, 403, "not_a_member",
                                "a membership certificate is accepted only for recipient-key unwraps of its group");
            return -1;
        }
        return srv_rate_limit(r);
    }
    c->identity = c->peer->identity;
    e = gs_store_member_get(r->t->store, gs_group_id(g), c->identity, &c->member);
    if (e == GS_ERR_NOT_FOUND) {
        audit_refusal(r, action, c->identity, gi->name, "not_a_member");
        if (!r->replied)
            srv_reply_error(r, 403, "not_a_member", "not a member of this group");
        return -1;
    }
    if (e != GS_OK) {
        srv_reply_gs_error(r, e, "member");
        return -1;
    }
    if (c->member->cert_pem != NULL && !gcache_cert_matches_pem(r->t->gcache, c->peer->cert, c->member->cert_pem)) {
        audit_refusal(r, action, c->identity, gi->name, "certificate_mismatch");
        if (!r->replied)
            srv_reply_error(r, 403, "certificate_mismatch", "this certificate is not the one recorded for the member");
        return -1;
    }
    if (!(roles & (1u << c->member->role))) {
        audit_refusal(r, action, c->identity, gi->name, "forbidden_role");
        if (!r->replied)
            srv_reply_error(r, 403, "forbidden", "the role '%s' may not do this", gs_role_name(c->member->role));
        return -1;
    }
    return srv_rate_limit(r);
}

#define ROLES_READERS ((1u << GS_ROLE_MEMBER) | (1u << GS_ROLE_ADMIN))
#define ROLES_EXPLODER (1u << GS_ROLE_EXPLODER)
#define ROLES_ADMIN (1u << GS_ROLE_ADMIN)

/* The caller's certificate public key as DER SubjectPublicKeyInfo. */
static int cert_spki(X509 *cert, unsigned char **der, size_t *len)
{
    int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), der);
    if (n <= 0) {
        *der = NULL;
        return -1;
    }
    *len = (size_t)n;
    return 0;
}

/* ---- unwrap ---------------------------------------------------------------- */

struct item_err {
    int status;
    const char *code;
    char msg[200];
    unsigned retry;
};

static json_t *item_fail(struct item_err *e, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static json_t *item_fail(struct item_err *e, int status, const char *code, const char *fmt, ...)
{
    va_list ap;

    e->status = status;
    e->code = code;
    e->retry = status == 503 ? 5 : 0;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    return NULL;
}

/* A key version recorded in the shared database but missing from this
 * instance's token (a cloned token not yet given a newer key): 503
 * key_unavailable for this version only, the group keeps working with the
 * versions it has; the group is reloaded next time, so a key imported
 * meanwhile is found. */
static json_t *key_unavailable(struct srv_req *r, struct item_err *e, unsigned version, const char *what)
{
    gcache_mark_stale(r->t->gcache);
    /* A token that lost its objects (taken out, its store gone) lacks
     * every version: that is the token's failure, not a copy still due. */
    hsm_err he;
    audit_err ae;
    srv_health(r->srv, &he, &ae);
    if (he != HSM_OK) {
        metrics_token_error();
        log_error("token lost its objects op=%s err=%s detail=%s", what, hsm_strerror(he), hsm_last_error_detail());
        return item_fail(e, 503, "token_unavailable", "the key token is not reachable; try again later");
    }
    log_warn("key version not on this token kind=%s version=%u (groupsrv check lists them)", what, version);
    return item_fail(e, 503, "key_unavailable", "%s version %u is not on this server's token; try another server",
                     what, version);
}

enum deliver { DELIVER_TLS = 0, DELIVER_RECIPIENT_KEY, DELIVER_GROUP_SECRET };
static const char *deliver_names[] = {"tls", "recipient-key", "group-secret"};
static const unsigned deliver_bits[] = {GS_METHOD_TLS, GS_METHOD_RECIPIENT_KEY, GS_METHOD_GROUP_SECRET};

/* Decoded unwrap input: which key version, which algorithm, which bytes. */
struct unwrap_in {
    env_recipient *ri;
    unsigned char *raw;              /* bare encrypted_key (owned) */
    size_t raw_len;
    const unsigned char *enc;        /* the encrypted key (into ri or raw) */
    size_t enc_len;
    const gs_group_key_ref *ref;
    hsm_kt_alg alg;
    int ecdh;                        /* KARI: EC group key */
    size_t cek_len;                  /* 0 unless given (needed for PKCS#1 v1.5) */
};

static void unwrap_in_clear(struct unwrap_in *u)
{
    env_recipient_free(u->ri);
    free(u->raw);
    memset(u, 0, sizeof(*u));
}

/* The item's optional "key_version": *ref is NULL when absent, else the
 * group's key of that version. -1 with e filled when it is not an integer
 * or names no key version of the group. */
static int item_key_version(json_t *item, gs_group *g, const gs_group_key_ref **ref, struct item_err *e)
{
    json_t *jv = json_object_get(item, "key_version");

    *ref = NULL;
    if (jv == NULL)
        return 0;
    if (!json_is_integer(jv)) {
        item_fail(e, 400, "bad_request", "\"key_version\" must be an integer");
        return -1;
    }
    for (size_t i = 0; i < gs_group_key_count(g) && *ref == NULL; i++)
        if ((json_int_t)gs_group_key_at(g, i)->version == json_integer_value(jv))
            *ref = gs_group_key_at(g, i);
    if (*ref == NULL) {
        item_fail(e, 400, "unknown_key_version", "no such key version");
        return -1;
    }
    return 0;
}

/* An RSA ciphertext is exactly as long as the modulus (RFC 8017 7.1.2,
 * 7.2.2): any other length is refused here, before any token call. True
 * when the length fits or the key size is unknown. */
static bool rsa_ciphertext_len_ok(const gs_group_key_ref *ref, size_t len)
{
    EVP_PKEY *pub = ref->cert != NULL ? X509_get0_pubkey(ref->cert) : NULL;

    if (pub == NULL || EVP_PKEY_get_base_id(pub) != EVP_PKEY_RSA)
        return true;
    return len == (size_t)EVP_PKEY_get_size(pub);
}

/* Parses the item's input into u; NULL return means e is filled. */
static int parse_unwrap_input(json_t *item, gs_group *g, struct unwrap_in *u, struct item_err *e)
{
    json_t *jri = json_object_get(item, "recipient_info"), *jek = json_object_get(item, "encrypted_key");
    unsigned char *der = NULL;
    size_t der_len = 0;
    const gs_group_key_ref *named = NULL;
    int rc = -1;

    memset(u, 0, sizeof(*u));
    if ((jri == NULL) == (jek == NULL)) {
        item_fail(e, 400, "bad_request", "give exactly one of \"recipient_info\" and \"encrypted_key\"");
        goto out;
    }
    json_t *jlen = json_object_get(item, "key_length"), *jcalg = json_object_get(item, "content_algorithm");
    if (jlen != NULL) {
        json_int_t n = json_is_integer(jlen) ? json_integer_value(jlen) : -1;
        if (n != 16 && n != 24 && n != 32) {
            item_fail(e, 400, "bad_request", "\"key_length\" must be 16, 24 or 32");
            goto out;
        }
        u->cek_len = (size_t)n;
    }
    if (jcalg != NULL) {
        /* The message's content-encryption algorithm says how long its key
         * is: what a RecipientInfo alone cannot tell. */
        size_t kl = 0;
        char q[80];
        env_err ce = json_is_string(jcalg) ? env_content_alg_key_length(json_string_value(jcalg), &kl, NULL)
                                           : ENV_ERR_ARGS;
        if (ce == ENV_ERR_UNSUPPORTED) {
            item_fail(e, 400, "unsupported_algorithm",
                      "\"content_algorithm\" %s is not supported (AES-128/192/256 CBC or GCM, des-ede3-cbc, "
                      "chacha20-poly1305, by name or OID)",
                      log_quote(q, sizeof(q), json_string_value(jcalg)));
            goto out;
        }
        if (ce != ENV_OK) {
            item_fail(e, 400, "bad_request",
                      "\"content_algorithm\" must be an OID or a name such as \"aes-128-cbc\" (at most 64 characters)");
            goto out;
        }
        if (u->cek_len != 0 && u->cek_len != kl) {
            item_fail(e, 400, "bad_request", "\"key_length\" %zu contradicts \"content_algorithm\" (a %zu-byte key)",
                      u->cek_len, kl);
            goto out;
        }
        u->cek_len = kl;
    }
    if (jri != NULL) {
        if (!json_is_string(jri)) {
            item_fail(e, 400, "bad_request", "\"recipient_info\" must be a base64 string");
            goto out;
        }
        int urc = util_b64_decode(json_string_value(jri), json_string_length(jri), (MAX_RI_DER + 2) / 3 * 4, &der,
                                  &der_len);
        if (urc == UTIL_E_TOOBIG) {
            item_fail(e, 413, "too_large", "\"recipient_info\" exceeds %d bytes", MAX_RI_DER);
            goto out;
        }
        if (urc != UTIL_OK || der_len == 0) {
            item_fail(e, 400, "bad_base64", "\"recipient_info\" is not valid standard base64");
            goto out;
        }
        if (env_recipient_parse(der, der_len, &u->ri) != ENV_OK) {
            item_fail(e, 400, "bad_recipient_info", "\"recipient_info\" is not a DER RecipientInfo");
            goto out;
        }
        env_ri_type t = env_recipient_type(u->ri);
        if (t != ENV_RI_KTRI && t != ENV_RI_KARI) {
            item_fail(e, 400, "unsupported", "only KeyTransRecipientInfo and KeyAgreeRecipientInfo can be unwrapped");
            goto out;
        }
        if (!env_recipient_version_valid(u->ri)) {
            item_fail(e, 400, "bad_recipient_info", "the RecipientInfo version is not the one RFC 5652 requires");
            goto out;
        }
        /* The identifier names the group key version. */
        for (size_t i = 0; i < gs_group_key_count(g) && u->ref == NULL; i++) {
            const gs_group_key_ref *k = gs_group_key_at(g, i);
            if (k->cert != NULL && env_recipient_matches_cert(u->ri, k->cert))
                u->ref = k;
        }
        if (u->ref == NULL) {
            item_fail(e, 400, "unknown_recipient", "the RecipientInfo names no key version of this group");
            goto out;
        }
        /* An optional "key_version" is checked as with "encrypted_key",
         * and must name the version the RecipientInfo names. */
        if (item_key_version(item, g, &named, e) != 0)
            goto out;
        if (named != NULL && named != u->ref) {
            item_fail(e, 400, "unknown_key_version", "\"key_version\" is not the version the RecipientInfo names");
            goto out;
        }
        env_kt_alg ka;
        if (env_recipient_kt_alg(u->ri, &ka) != ENV_OK) {
            item_fail(e, 400, "unsupported", "unsupported key transport algorithm");
            goto out;
        }
        switch (ka) {
        case ENV_KT_RSA_OAEP_SHA1: u->alg = HSM_KT_RSA_OAEP_SHA1; break;
        case ENV_KT_RSA_OAEP_SHA256: u->alg = HSM_KT_RSA_OAEP_SHA256; break;
        case ENV_KT_RSA_PKCS1V15: u->alg = HSM_KT_RSA_PKCS1V15; break;
        case ENV_KT_ECDH: u->ecdh = 1; break;
        }
        if (!u->ecdh && env_recipient_encrypted_key(u->ri, NULL, &u->enc, &u->enc_len) != ENV_OK) {
            item_fail(e, 400, "bad_recipient_info", "the RecipientInfo carries no encrypted key");
            goto out;
        }
    } else {
        const char *alg = json_string_value(json_object_get(item, "algorithm"));
        if (alg == NULL) {
            item_fail(e, 400, "bad_request", "\"algorithm\" (RSA-OAEP or RSA-OAEP-256) is required with \"encrypted_key\"");
            goto out;
        }
        if (strcmp(alg, "RSA-OAEP") == 0)
            u->alg = HSM_KT_RSA_OAEP_SHA1;
        else if (strcmp(alg, "RSA-OAEP-256") == 0)
            u->alg = HSM_KT_RSA_OAEP_SHA256;
        else if (strcmp(alg, "RSA-PKCS1-v1_5") == 0)
            u->alg = HSM_KT_RSA_PKCS1V15;
        else {
            item_fail(e, 400, "unsupported_algorithm", "\"algorithm\" must be RSA-OAEP or RSA-OAEP-256");
            goto out;
        }
        if (!json_is_string(jek)) {
            item_fail(e, 400, "bad_request", "\"encrypted_key\" must be a base64 string");
            goto out;
        }
        int urc = util_b64_decode(json_string_value(jek), json_string_length(jek), (MAX_ENC_KEY + 2) / 3 * 4,
                                  &u->raw, &u->raw_len);
        if (urc == UTIL_E_TOOBIG) {
            item_fail(e, 413, "too_large", "\"encrypted_key\" exceeds %d bytes", MAX_ENC_KEY);
            goto out;
        }
        if (urc != UTIL_OK || u->raw_len == 0) {
            item_fail(e, 400, "bad_base64", "\"encrypted_key\" is not valid standard base64");
            goto out;
        }
        u->enc = u->raw;
        u->enc_len = u->raw_len;
        if (item_key_version(item, g, &named, e) != 0)
            goto out;
        if ((u->ref = named) == NULL && (u->ref = gs_group_current_key(g)) == NULL) {
            item_fail(e, 503, "no_group_key", "the group has no current key");
            goto out;
        }
        if (u->ref->type != HSM_KEYTYPE_RSA) {
            item_fail(e, 400, "unsupported", "a bare encrypted_key needs an RSA group key");
            goto out;
        }
    }
    rc = 0;
out:
    free(der);
    if (rc != 0) {
        env_recipient_free(u->ri);
        free(u->raw);
        memset(u, 0, sizeof(*u));
    }
    return rc;
}

static int hsm_failure_is_decrypt(hsm_err err)
{
    /* Everything that depends on the ciphertext's content becomes one
     * answer; the caller cannot tell padding, length or key apart. */
    return err == HSM_ERR_DECRYPT || err == HSM_ERR_BUFFER || err == HSM_ERR_ARGS;
}

static int hsm_err_unavailable(hsm_err err)
{
    return err == HSM_ERR_TOKEN_ABSENT || err == HSM_ERR_TOKEN_NOT_FOUND || err == HSM_ERR_NOT_LOGGED_IN ||
           err == HSM_ERR_SESSION || err == HSM_ERR_DEVICE || err == HSM_ERR_MODULE || err == HSM_ERR_PKCS11 ||
           err == HSM_ERR_PIN_INCORRECT || err == HSM_ERR_PIN_LOCKED || err == HSM_ERR_NOMEM;
}

static json_t *hsm_item_fail(struct srv_req *r, struct item_err *e, hsm_err err, const char *op)
{
    /* A cached key that failed for another reason than the ciphertext may
     * be gone or changed on the token: load the group afresh next time. */
    if (!hsm_failure_is_decrypt(err))
        gcache_mark_stale(r->t->gcache);
    if (hsm_failure_is_decrypt(err)) {
        log_info("unwrap failed op=%s err=%s detail=%s", op, hsm_strerror(err), hsm_last_error_detail());
        return item_fail(e, 400, "unwrap_failed", "the key could not be unwrapped");
    }
    metrics_token_error();
    log_error("token operation failed op=%s err=%s detail=%s", op, hsm_strerror(err), hsm_last_error_detail());
    if (err == HSM_ERR_MECHANISM)
        return item_fail(e, 400, "unsupported_algorithm", "the token does not support this algorithm");
    if (err == HSM_ERR_PUBLIC_KEY)
        return item_fail(e, 400, "unsupported_certificate_key", "the certificate key cannot be wrapped to (RSA needed)");
    if (hsm_err_unavailable(err) || err == HSM_ERR_KEY_NOT_FOUND) {
        srv_token_unavailable(r->srv);
        return item_fail(e, 503, "token_unavailable", "the key token is not reachable; try again later");
    }
    return item_fail(e, 500, "internal", "token operation failed");
}

/* The token input of an RSA item. A RecipientInfo does not say how long
 * the content key is: the client's "content_algorithm" (or "key_length")
 * does. For OAEP without it the token takes the key at its own length;
 * PKCS#1 v1.5 needs it for the implicit-rejection substitute and is refused
 * without it, never guessed, and refused altogether where the group does
 * not allow it. NULL return: e is filled. */
static hsm_unwrap_input *rsa_input(struct srv_req *r, gs_group *g, const struct unwrap_in *u, hsm_unwrap_input *in,
                                   struct item_err *e)
{
    memset(in, 0, sizeof(*in));
    in->group_key = u->ref->key;
    in->alg = u->alg;
    in->encrypted_key = u->enc;
    in->encrypted_key_len = u->enc_len;
    in->expected_len = u->cek_len;
    in->rewrap = gs_group_rewrap_path(g);
    if (u->alg == HSM_KT_RSA_PKCS1V15) {
        const gs_store_group *gi = gs_group_info(g);
        if (gi->allow_pkcs1v15 && gs_group_reject_key(g) == NULL && gi->reject_label != NULL &&
            gi->reject_sealed == NULL) {
            /* The group takes v1.5, but its rejection key is not on this
             * server's token yet: another server can answer (a 400 here
             * would make exploders bounce the mail for good). */
            key_unavailable(r, e, u->ref->version, "rejection key for group key");
            return NULL;
        }
        if (!gi->allow_pkcs1v15 || gs_group_reject_key(g) == NULL) {
            item_fail(e, 400, "algorithm_not_allowed", MSG_V15_REFUSED);
            return NULL;
        }
        if (u->cek_len == 0) {
            item_fail(e, 400, "content_algorithm_required", MSG_LEN_REQUIRED);
            return NULL;
        }
        in->reject_key = gs_group_reject_key(g);
    }
    return in;
}

/* Token work for one item; returns the answer object or NULL with e set. */
static json_t *unwrap_exec(struct srv_req *r, gs_group *g, struct caller *c, enum deliver d, struct unwrap_in *u,
                           struct item_err *e, long *secret_version)
{
    json_t *res = NULL;
    hsm_err he = HSM_OK;
    unsigned char cek[MAX_CEK];
    size_t cek_len = 0;
    unsigned char *spki = NULL, *wrapped = NULL, *der = NULL;
    size_t spki_len = 0, wrapped_len = 0, der_len = 0;
    env_kari_params kp;
    double t0 = srv_now();

    memset(&kp, 0, sizeof(kp));
    *secret_version = -1;
    if (u->ref->key == NULL) /* a version this instance's token lacks */
        return key_unavailable(r, e, u->ref->version, "group key");
    hsm_unwrap_input in;
    memset(&in, 0, sizeof(in));
    if (!u->ecdh && rsa_input(r, g, u, &in, e) == NULL)
        return NULL;
    if (u->ecdh && d != DELIVER_TLS)
        return item_fail(e, 400, "unsupported", "EC group keys can only be unwrapped with deliver=tls");
    /* The same answer as a ciphertext the token refuses (the caller must
     * not tell length from padding), audited and counted alike. */
    if (!u->ecdh && !rsa_ciphertext_len_ok(u->ref, u->enc_len))
        return item_fail(e, 400, "unwrap_failed", "the key could not be unwrapped");

    switch (d) {
    case DELIVER_TLS:
        if (u->ecdh) {
            if (env_recipient_kari_params(u->ri, u->ref->cert, &kp) != ENV_OK) {
                res = item_fail(e, 400, "bad_recipient_info", "malformed KeyAgreeRecipientInfo");
                goto out;
            }
            hsm_ecdh_input ein = {.group_key = u->ref->key, .peer_point = kp.peer_point,
                                  .peer_point_len = kp.peer_point_len,
                                  .kdf_hash = kp.kdf_sha256 ? HSM_OAEP_SHA256 : HSM_OAEP_SHA1,
                                  .shared_info = kp.shared_info, .shared_info_len = kp.shared_info_len,
                                  .kek_len = kp.kek_len, .wrapped_key = kp.wrapped_key,
                                  .wrapped_key_len = kp.wrapped_key_len};
            he = hsm_ecdh_decrypt_content_key(r->srv->hsm, &ein, cek, sizeof(cek), &cek_len);
            /* a key of another length than the content algorithm's is no key */
            if (he == HSM_OK && u->cek_len != 0 && cek_len != u->cek_len)
                he = HSM_ERR_DECRYPT;
        } else {
            he = hsm_decrypt_content_key(r->srv->hsm, &in, cek, sizeof(cek), &cek_len);
        }
        metrics_unwrap_latency(srv_now() - t0);
        if (he != HSM_OK) {
            res = hsm_item_fail(r, e, he, "decrypt");
            goto out;
        }
        res = json_object();
        if (res == NULL || json_object_set_new(res, "key", b64_json(cek, cek_len)) != 0) {
            json_decref(res);
            res = item_fail(e, 500, "internal", "out of memory");
        }
        break;
    case DELIVER_RECIPIENT_KEY: {
        const unsigned char *sp[1];
        size_t sl[1];
        if (cert_spki(c->peer->cert, &spki, &spki_len) != 0) {
            res = item_fail(e, 400, "unsupported_certificate_key", "the client certificate key is unusable");
            goto out;
        }
        if (EVP_PKEY_get_base_id(X509_get0_pubkey(c->peer->cert)) != EVP_PKEY_RSA) {
            res = item_fail(e, 400, "unsupported_certificate_key", "recipient-key needs an RSA client certificate");
            goto out;
        }
        sp[0] = spki;
        sl[0] = spki_len;
        /* SoftHSM 2.6 wraps only with OAEP SHA-1: the CMS default parameters. */
        he = hsm_rewrap_to_public_keys(r->srv->hsm, &in, HSM_OAEP_SHA1, sp, sl, 1, &wrapped, &wrapped_len);
        metrics_unwrap_latency(srv_now() - t0);
        if (he != HSM_OK) {
            res = hsm_item_fail(r, e, he, "rewrap");
            goto out;
        }
        if (env_ktri_build(c->peer->cert, ENV_KT_RSA_OAEP_SHA1, wrapped, wrapped_len, &der, &der_len) != ENV_OK) {
            res = item_fail(e, 500, "internal", "could not build the RecipientInfo");
            goto out;
        }
        res = json_object();
        if (res == NULL || json_object_set_new(res, "recipient_info", b64_json(der, der_len)) != 0) {
            json_decref(res);
            res = item_fail(e, 500, "internal", "out of memory");
        }
        break;
    }
    case DELIVER_GROUP_SECRET: {
        const gs_group_secret_ref *sec = gs_group_current_secret(g);
        if (sec == NULL) {
            res = item_fail(e, 403, "method_not_allowed", "the group has no secret key");
            goto out;
        }
        if (sec->key == NULL) {
            res = key_unavailable(r, e, sec->version, "secret key");
            goto out;
        }
        he = hsm_rewrap_to_secret_key(r->srv->hsm, &in, sec->key, &wrapped, &wrapped_len);
        metrics_unwrap_latency(srv_now() - t0);
        if (he != HSM_OK) {
            res = hsm_item_fail(r, e, he, "rewrap-secret");
            goto out;
        }
        /* Content keys of 16/24/32 bytes: RFC 3394 (wrapped = key + 8). */
        bool pad = wrapped_len < 24 || (wrapped_len - 8) % 8 != 0;
        if (env_kekri_build(sec->kek_id, GS_KEK_ID_LEN, 256, pad, wrapped, wrapped_len, &der, &der_len) != ENV_OK) {
            res = item_fail(e, 500, "internal", "could not build the RecipientInfo");
            goto out;
        }
        *secret_version = sec->version;
        res = json_pack("{s:o?,s:o?,s:I}", "recipient_info", b64_json(der, der_len), "kek_id",
                        b64_json(sec->kek_id, GS_KEK_ID_LEN), "secret_version", (json_int_t)sec->version);
        if (res == NULL)
            res = item_fail(e, 500, "internal", "out of memory");
        break;
    }
    }
    if (res != NULL)
        json_object_set_new(res, "key_version", json_integer(u->ref->version));
out:
    OPENSSL_cleanse(cek, sizeof(cek));
    env_kari_params_clear(&kp);
    free(spki);
    free(wrapped);
    free(der);
    return res;
}

/* One unwrap item, audited; NULL with e set on failure. */
static json_t *unwrap_item(struct srv_req *r, gs_group *g, struct caller *c, json_t *item, const char *deflt,
                           struct item_err *e)
{
    struct unwrap_in u;
    json_t *res = NULL;
    enum deliver d;
    long secret_version = -1;
    const char *gname = gs_group_info(g)->name;

    memset(&u, 0, sizeof(u));
    if (!json_is_object(item))
        return item_fail(e, 400, "bad_request", "each item must be a JSON object");
    json_t *jd = json_object_get(item, "deliver");
    const char *dn = jd ? json_string_value(jd) : deflt;
    if (dn == NULL)
        return item_fail(e, 400, "bad_request", "\"deliver\" must be a string");
    for (d = DELIVER_TLS; d <= DELIVER_GROUP_SECRET; d++)
        if (strcmp(dn, deliver_names[d]) == 0)
            break;
    if (d > DELIVER_GROUP_SECRET)
        return item_fail(e, 400, "bad_request", "\"deliver\" must be tls, recipient-key or group-secret");
    if (!(gs_group_info(g)->methods & deliver_bits[d]) && !(c->anonymous && d == DELIVER_RECIPIENT_KEY))
        return item_fail(e, 403, "method_not_allowed", "the group does not allow deliver=%s", dn);
    if (c->anonymous && d != DELIVER_RECIPIENT_KEY)
        return item_fail(e, 403, "not_a_member", "a membership certificate allows only deliver=recipient-key");
    if (parse_unwrap_input(item, g, &u, e) != 0)
        return NULL;

    res = unwrap_exec(r, g, c, d, &u, e, &secret_version);
    /* Audit every use of a group key, successful or not, before answering. */
    json_t *extra = secret_version >= 0 ? json_pack("{s:I}", "secret_version", (json_int_t)secret_version) : NULL;
    audit_record rec = {.request_id = r->id, .action = "unwrap", .identity = c->identity, .group = gname,
                        .key_version = (long)u.ref->version, .method = dn,
                        .outcome = res != NULL ? "ok" : e->code, .extra = extra};
    audit_err ae = srv_audit_write(r, &rec);
    json_decref(extra);
    if (ae != AUDIT_OK) {
        json_t *o = res;
        res = NULL;
        if (o != NULL) {
            /* Wipe the plain key of method F before dropping the answer. */
            json_t *k = json_object_get(o, "key");
            if (k != NULL)
                OPENSSL_cleanse((void *)json_string_value(k), json_string_length(k));
            json_decref(o);
        }
        item_fail(e, 503, "audit_unavailable", "the audit log cannot be written; refusing to answer");
    } else if (res == NULL && strcmp(e->code, "unwrap_failed") == 0) {
        char key[SRV_RL_KEY_MAX];
        if (srv_rl_key(c->peer, key, sizeof(key)) && ratelimit_failure(r->srv->rl, key)) {
            char q[128];
            log_error("ALERT identity suspended after repeated failed unwraps identity=%s group=%s",
                      log_quote(q, sizeof(q), c->identity), gname);
            audit_record al = {.request_id = r->id, .action = "suspend", .identity = c->identity, .group = gname,
                               .key_version = -1, .outcome = "too_many_failed_unwraps"};
            if (srv_audit_write(r, &al) != AUDIT_OK)
                log_error("audit of a suspension failed identity=%s", log_quote(q, sizeof(q), c->identity));
        }
    }
    unwrap_in_clear(&u);
    return res;
}

/* Wipes a reply carrying a plain key after it was serialised. */
static void reply_key_json(struct srv_req *r, json_t *o)
{
    size_t n = 0;
    char *text = dump_wiped(o, &n);
    json_t *k = json_object_get(o, "key");

    if (k != NULL)
        OPENSSL_cleanse((void *)json_string_value(k), json_string_length(k));
    json_decref(o);
    if (text == NULL) {
        srv_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    srv_reply_bytes(r, 200, "application/json", text, n);
    OPENSSL_cleanse(text, n);
    free(text);
}

static void h_unwrap(struct srv_req *r, const char *group)
{
    gs_group *g = NULL;
    json_t *body = NULL, *res;
    struct caller c;
    struct item_err e;

    memset(&c, 0, sizeof(c));
    if ((g = load_group(r, group)) == NULL)
        goto out;
    if (authorise(r, g, ROLES_READERS, 1, "unwrap", &c) != 0)
        goto out;
    if ((body = srv_json_body(r)) == NULL)
        goto out;
    memset(&e, 0, sizeof(e));
    if ((res = unwrap_item(r, g, &c, body, "tls", &e)) == NULL) {
        if (e.retry)
            srv_reply_retry(r, e.status, e.retry, e.code, e.msg);
        else
            srv_reply_error(r, e.status, e.code, "%s", e.msg);
        goto out;
    }
    reply_key_json(r, res);
out:
    caller_clear(&c);
    json_decref(body);
}

static void h_unwrap_batch(struct srv_req *r, const char *group)
{
    gs_group *g = NULL;
    json_t *body = NULL, *results = NULL, *items;
    struct caller c;
    int bad = 0;

    memset(&c, 0, sizeof(c));
    if ((g = load_group(r, group)) == NULL)
        goto out;
    if (authorise(r, g, ROLES_READERS, 1, "unwrap", &c) != 0)
        goto out;
    if ((body = srv_json_body(r)) == NULL)
        goto out;
    const char *deflt = srv_json_str(r, body, "deliver", &bad);
    if (bad)
        goto out;
    items = json_object_get(body, "items");
    if (!json_is_array(items) || json_array_size(items) == 0) {
        srv_reply_error(r, 400, "bad_request", "\"items\" must be a non-empty array");
        goto out;
    }
    if (json_array_size(items) > r->srv->cfg->server.unwrap_batch_max) {
        srv_reply_error(r, 413, "too_many_items", "at most %u items per batch", r->srv->cfg->server.unwrap_batch_max);
        goto out;
    }
    if ((results = json_array()) == NULL) {
        srv_reply_error(r, 500, "internal", "out of memory");
        goto out;
    }
    for (size_t i = 0; i < json_array_size(items); i++) {
        struct item_err e;
        char key[SRV_RL_KEY_MAX];
        unsigned retry = 0;
        json_t *res = NULL;
        memset(&e, 0, sizeof(e));
        /* An item's failure may suspend the caller: the items after it
         * get no token operation. */
        if (srv_rl_key(c.peer, key, sizeof(key)) && ratelimit_suspended(r->srv->rl, key, &retry))
            item_fail(&e, 429, "suspended", "suspended after too many failed unwraps; retry in %u s", retry);
        else
            res = unwrap_item(r, g, &c, json_array_get(items, i), deflt ? deflt : "tls", &e);
        if (res == NULL && (e.status == 503 || e.status == 500)) {
            /* Token or audit down: the whole batch fails closed. */
            if (e.retry)
                srv_reply_retry(r, e.status, e.retry, e.code, e.msg);
            else
                srv_reply_error(r, e.status, e.code, "%s", e.msg);
            goto out;
        }
        if (res == NULL)
            res = json_pack("{s:i,s:{s:s,s:s}}", "status", e.status, "error", "code", e.code, "message", e.msg);
        if (res == NULL || json_array_append_new(results, res) != 0) {
            srv_reply_error(r, 500, "internal", "out of memory");
            goto out;
        }
    }
    json_t *o = json_pack("{s:O}", "results", results);
    if (o == NULL) {
        srv_reply_error(r, 500, "internal", "out of memory");
        goto out;
    }
    reply_key_json(r, o);
out:
    if (results != NULL) {
        for (size_t i = 0; i < json_array_size(results); i++) {
            json_t *k = json_object_get(json_array_get(results, i), "key");
            if (k != NULL)
                OPENSSL_cleanse((void *)json_string_value(k), json_string_length(k));
        }
        json_decref(results);
    }
    caller_clear(&c);
    json_decref(body);
}

/* ---- rewrap (the exploder) ------------------------------------------------- */

static void h_rewrap(struct srv_req *r, const char *group)
{
    gs_group *g = NULL;
    json_t *body = NULL, *res = NULL;
    struct caller c;
    struct unwrap_in u;
    struct item_err e;
    gs_store_member *members = NULL;
    size_t nmembers = 0, n = 0;
    X509 **certs = NULL;
    unsigned char **spki = NULL, **outs = NULL;
    size_t *spki_len = NULL, *out_lens = NULL;
    hsm_kt_alg *wraps = NULL;
    const char **emails = NULL;
    int bad = 0;
    const char *outcome = "ok";

    memset(&c, 0, sizeof(c));
    memset(&u, 0, sizeof(u));
    memset(&e, 0, sizeof(e));
    if ((g = load_group(r, group)) == NULL)
        goto out;
    if (authorise(r, g, ROLES_EXPLODER, 0, "rewrap", &c) != 0)
        goto out;
    if ((body = srv_json_body(r)) == NULL)
        goto out;
    const char *to = srv_json_str(r, body, "to", &bad);
    if (bad)
        goto out;
    if (to == NULL || (strcmp(to, "group-secret") != 0 && strcmp(to, "members") != 0)) {
        srv_reply_error(r, 400, "bad_request", "\"to\" must be group-secret or members");
        goto out;
    }
    if (json_object_get(body, "recipient_info") == NULL) {
        srv_reply_error(r, 400, "bad_request", "\"recipient_info\" is required");
        goto out;
    }
    if (strcmp(to, "group-secret") == 0) {
        /* Same token work as an unwrap with deliver=group-secret (with the
         * body's content_algorithm / key_length). */
        json_t *item = json_copy(body);
        if (item != NULL && (json_object_del(item, "to") != 0 ||
                             json_object_set_new(item, "deliver", json_string("group-secret")) != 0)) {
            json_decref(item);
            item = NULL;
        }
        if (item == NULL) {
            srv_reply_error(r, 500, "internal", "out of memory");
            goto out;
        }
        if (!(gs_group_info(g)->methods & GS_METHOD_GROUP_SECRET)) {
            json_decref(item);
            srv_reply_error(r, 403, "method_not_allowed", "the group does not use a group secret key");
            goto out;
        }
        if (parse_unwrap_input(item, g, &u, &e) != 0) {
            json_decref(item);
            srv_reply_error(r, e.status, e.code, "%s", e.msg);
            goto out;
        }
        json_decref(item);
        long sv = -1;
        res = unwrap_exec(r, g, &c, DELIVER_GROUP_SECRET, &u, &e, &sv);
        outcome = res ? "ok" : e.code;
    } else {
        gs_err ge = gs_store_member_list(r->t->store, gs_group_id(g), &members, &nmembers);
        if (ge != GS_OK) {
            srv_reply_gs_error(r, ge, "members");
            goto out;
        }
        if (parse_unwrap_input(body, g, &u, &e) != 0) {
            srv_reply_error(r, e.status, e.code, "%s", e.msg);
            goto out;
        }
        if (u.ecdh) {
            srv_reply_error(r, 400, "unsupported", "EC group keys cannot be re-wrapped");
            goto out;
        }
        if ((certs = calloc(nmembers + 1, sizeof(*certs))) == NULL ||
            (spki = calloc(nmembers + 1, sizeof(*spki))) == NULL ||
            (spki_len = calloc(nmembers + 1, sizeof(*spki_len))) == NULL ||
            (outs = calloc(nmembers + 1, sizeof(*outs))) == NULL ||
            (out_lens = calloc(nmembers + 1, sizeof(*out_lens))) == NULL ||
            (wraps = calloc(nmembers + 1, sizeof(*wraps))) == NULL ||
            (emails = calloc(nmembers + 1, sizeof(*emails))) == NULL) {
            srv_reply_error(r, 500, "internal", "out of memory");
            goto out;
        }
        /* Readers with an RSA certificate on record; exploders never get
         * keys. Each is wrapped with what their client decrypts: their own
         * choice, else the group's (PKCS#1 v1.5 unless set to OAEP). */
        gs_wrap group_wrap = gs_group_info(g)->member_wrap;
        for (size_t i = 0; i < nmembers; i++) {
            X509 *x = NULL;
            if (members[i].role == GS_ROLE_EXPLODER || members[i].cert_pem == NULL)
                continue;
            if (gs_cert_parse((const unsigned char *)members[i].cert_pem, strlen(members[i].cert_pem), &x) != GS_OK)
                continue;
            if (EVP_PKEY_get_base_id(X509_get0_pubkey(x)) != EVP_PKEY_RSA || cert_spki(x, &spki[n], &spki_len[n]) != 0) {
                X509_free(x);
                continue;
            }
            gs_wrap w = members[i].wrap != GS_WRAP_DEFAULT ? members[i].wrap : group_wrap;
            wraps[n] = w == GS_WRAP_OAEP ? HSM_KT_RSA_OAEP_SHA1 : HSM_KT_RSA_PKCS1V15;
            emails[n] = members[i].email;
            certs[n++] = x;
        }
        hsm_unwrap_input in;
        /* The same order as unwrap_exec: a key not here first, then the input. */
        if (u.ref->key == NULL) {
            struct item_err ke;
            key_unavailable(r, &ke, u.ref->version, "group key");
            srv_reply_retry(r, 503, ke.retry, ke.code, ke.msg);
            goto out;
        }
        if (rsa_input(r, g, &u, &in, &e) == NULL) {
            if (e.status == 503)
                srv_reply_retry(r, 503, e.retry, e.code, e.msg);
            else
                srv_reply_error(r, e.status, e.code, "%s", e.msg);
            goto out;
        }
        json_t *arr = json_array(), *who = json_array();
        res = arr != NULL && who != NULL
                  ? json_pack("{s:o,s:o,s:I}", "recipient_infos", arr, "members", who, "key_version",
                              (json_int_t)u.ref->version)
                  : NULL;
        if (res == NULL) {
            if (arr == NULL || who == NULL) {
                json_decref(arr);
                json_decref(who);
            }
            srv_reply_error(r, 500, "internal", "out of memory");
            goto out;
        }
        if (!rsa_ciphertext_len_ok(u.ref, u.enc_len)) {
            json_decref(res);
            res = item_fail(&e, 400, "unwrap_failed", "the key could not be unwrapped");
            outcome = e.code;
        } else if (n > 0) {
            double t0 = srv_now();
            /* One unwrap inside the token for all members. */
            hsm_err he = hsm_rewrap_to_recipients(r->srv->hsm, &in, wraps, (const unsigned char *const *)spki,
                                                  spki_len, n, outs, out_lens);
            metrics_unwrap_latency(srv_now() - t0);
            if (he != HSM_OK) {
                json_decref(res);
                res = hsm_item_fail(r, &e, he, "rewrap-members");
                outcome = e.code;
            }
            for (size_t i = 0; res != NULL && i < n; i++) {
                unsigned char *der = NULL;
                size_t dl = 0;
                env_kt_alg ka = wraps[i] == HSM_KT_RSA_PKCS1V15 ? ENV_KT_RSA_PKCS1V15 : ENV_KT_RSA_OAEP_SHA1;
                if (env_ktri_build(certs[i], ka, outs[i], out_lens[i], &der, &dl) != ENV_OK ||
                    json_array_append_new(arr, b64_json(der, dl)) != 0 ||
                    json_array_append_new(who, json_string(emails[i])) != 0) {
                    free(der);
                    json_decref(res);
                    res = item_fail(&e, 500, "internal", "could not build a RecipientInfo");
                    outcome = e.code;
                    break;
                }
                free(der);
            }
        }
    }
    json_t *extra = json_pack("{s:I}", "recipients", (json_int_t)(strcmp(to, "members") == 0 ? n : 1));
    audit_record rec = {.action = "rewrap", .identity = c.identity, .group = gs_group_info(g)->name,
                        .key_version = u.ref ? (long)u.ref->version : -1, .method = to, .outcome = outcome,
                        .extra = extra};
    int arc = srv_audit(r, &rec);
    json_decref(extra);
    if (arc != 0)
        goto out;
    if (res == NULL) {
        if (e.retry)
            srv_reply_retry(r, e.status, e.retry, e.code, e.msg);
        else
            srv_reply_error(r, e.status, e.code, "%s", e.msg);
        goto out;
    }
    srv_reply_json(r, 200, res);
    res = NULL;
out:
    json_decref(res);
    for (size_t i = 0; i < n; i++) {
        X509_free(certs[i]);
        free(spki[i]);
        free(outs ? outs[i] : NULL);
    }
    free(certs);
    free(spki);
    free(spki_len);
    free(outs);
    free(out_lens);
    free(wraps);
    free(emails);
    gs_store_member_list_free(members, nmembers);
    unwrap_in_clear(&u);
    caller_clear(&c);
    json_decref(body);
}

/* ---- secret keys ------------------------------------------------------------ */

static void h_secret_keys(struct srv_req *r, const char *group)
{
    gs_group *g = NULL;
    json_t *keys = NULL;
    struct caller c;
    unsigned char *spki = NULL;
    size_t spki_len = 0;
    const char *outcome = "ok";
    int status = 200;
    hsm_err he = HSM_OK;

    memset(&c, 0, sizeof(c));
    if ((g = load_group(r, group)) == NULL)
        goto out;
    if (authorise(r, g, ROLES_READERS, 0, "secret-keys", &c) != 0)
        goto out;
    if (!(gs_group_info(g)->methods & GS_METHOD_GROUP_SECRET)) {
        srv_reply_error(r, 403, "method_not_allowed", "the group does not use a group secret key");
        goto out;
    }
    if (EVP_PKEY_get_base_id(X509_get0_pubkey(c.peer->cert)) != EVP_PKEY_RSA ||
        cert_spki(c.peer->cert, &spki, &spki_len) != 0) {
        srv_reply_error(r, 400, "unsupported_certificate_key", "secret keys are wrapped to RSA certificate keys only");
        goto out;
    }
    if ((keys = json_array()) == NULL) {
        srv_reply_error(r, 500, "internal", "out of memory");
        goto out;
    }
    double t0 = srv_now();
    for (size_t i = 0; i < gs_group_secret_count(g); i++) {
        const gs_group_secret_ref *s = gs_group_secret_at(g, i);
        unsigned char *w = NULL;
        size_t wl = 0;
        if (s->key == NULL) {
            /* a version this instance's token lacks: the token error path
             * answers 503, and the cache reloads the group next time */
            gcache_mark_stale(r->t->gcache);
            he = HSM_ERR_KEY_NOT_FOUND;
            /* as key_unavailable(): a token without its objects is down */
            hsm_err th;
            audit_err ta;
            srv_health(r->srv, &th, &ta);
            outcome = th == HSM_OK ? "key_unavailable" : "token_error";
            break;
        }
        if ((he = hsm_wrap_secret_key_to_public(r->srv->hsm, s->key, HSM_OAEP_SHA1, spki, spki_len, &w, &wl)) != HSM_OK) {
            outcome = "token_error";
            break;
        }
        json_t *k = json_pack("{s:I,s:o?,s:o?,s:s}", "version", (json_int_t)s->version, "kek_id",
                              b64_json(s->kek_id, GS_KEK_ID_LEN), "wrapped_key", b64_json(w, wl), "algorithm",
                              "RSA-OAEP");
        free(w);
        if (k == NULL || json_array_append_new(keys, k) != 0) {
            status = 500;
            outcome = "internal";
            break;
        }
    }
    metrics_unwrap_latency(srv_now() - t0);
    audit_record rec = {.action = "secret-keys", .identity = c.identity, .group = gs_group_info(g)->name,
                        .key_version = -1, .method = "recipient-key", .outcome = outcome};
    if (srv_audit(r, &rec) != 0)
        goto out;
    if (he != HSM_OK && strcmp(outcome, "key_unavailable") == 0) {
        srv_reply_retry(r, 503, 5, "key_unavailable", "a secret key version is not on this server's token");
        goto out;
    }
    if (he != HSM_OK) {
        srv_reply_hsm_error(r, he, "wrap-secret");
        goto out;
    }
    if (status != 200) {
        srv_reply_error(r, 500, "internal", "out of memory");
        goto out;
    }
    srv_reply_json(r, 200, json_pack("{s:O}", "keys", keys));
out:
    json_decref(keys);
    free(spki);
    caller_clear(&c);
}

/* ---- discovery ------------------------------------------------------------- */

/* Which path the group's keys take, and what it gave up to its token
 * (groupsrv/policy.h): {"rewrap": "token"|"software", "secret_keys":
 * "token"|"token-aes-ecb"|"sealed"|"none", "rejection_key": "token"|
 * "sealed"|"none", "weakenings": [names]}. */
static json_t *key_policy_json(const gs_group *g)
{
    const gs_store_group *gi = gs_group_info(g);
    const gs_policy *p = gs_group_policy(g);
    const gs_group_key_ref *cur = gs_group_current_key(g);
    const char *names[8];
    size_t n = gs_policy_weakenings(p, gi->methods, gi->allow_pkcs1v15, names, GS_ARRAY_LEN(names));
    json_t *w = json_array(), *o;

    /* The current key version's own weakenings follow the group's. */
    if (cur != NULL && (cur->missing & HSM_PROT_ALLOWED_MECHANISMS) && n < GS_ARRAY_LEN(names))
        names[n++] = "no-allowed-mechanisms";
    if (cur != NULL && (cur->missing & HSM_PROT_UNWRAP_TEMPLATE) && n < GS_ARRAY_LEN(names))
        names[n++] = "no-unwrap-template";
    for (size_t i = 0; w != NULL && i < n; i++)
        json_array_append_new(w, json_string(names[i]));
    o = json_pack("{s:s,s:s,s:s,s:o?}", "rewrap", gs_rewrap_name(p->rewrap), "secret_keys",
                  (gi->methods & GS_METHOD_GROUP_SECRET) ? gs_secrets_name(p->secrets) : "none", "rejection_key",
                  !gi->allow_pkcs1v15 ? "none" : p->reject_sealed ? "sealed" : "token", "weakenings", w);
    return o;
}

static void h_group_info(struct srv_req *r, const char *group)
{
    gs_group *g = load_group(r, group);
    char url[300];

    if (g == NULL)
        return;
    const gs_store_group *gi = gs_group_info(g);
    json_t *versions = json_array();
    for (size_t i = 0; versions != NULL && i < gs_group_key_count(g); i++)
        json_array_append_new(versions, json_integer(gs_group_key_at(g, i)->version));
    json_t *o = json_pack("{s:s,s:s,s:o?,s:o?}", "name", gi->name, "address", gi->address ? gi->address : "",
                          "methods", methods_json(gi->methods), "key_versions", versions);
    const gs_group_key_ref *cur = gs_group_current_key(g);
    if (o != NULL && cur != NULL)
        json_object_set_new(o, "current_key_version", json_integer(cur->version));
    if (o != NULL)
        json_object_set_new(o, "key_policy", key_policy_json(g));
    /* What a message may use to be unwrapped at all (the exploder refuses
     * anything else at once, senders can check before sending). */
    static const struct {
        unsigned bit;
        const char *name;
    } kt_names[] = {{GCACHE_KT_OAEP, "RSA-OAEP"},
                    {GCACHE_KT_OAEP256, "RSA-OAEP-256"},
                    {GCACHE_KT_PKCS1V15, "RSA-PKCS1-v1_5"},
                    {GCACHE_KT_ECDH, "ECDH"}};
    unsigned kts = gcache_key_transports(r->t->gcache, r->srv->hsm, g);
    json_t *ktj = json_array();
    for (size_t i = 0; ktj != NULL && i < GS_ARRAY_LEN(kt_names); i++)
        if (kts & kt_names[i].bit)
            json_array_append_new(ktj, json_string(kt_names[i].name));
    /* 0: the token could not say now; left out, clients treat it as not said. */
    if (o != NULL && ktj != NULL && kts != 0)
        json_object_set_new(o, "key_transports", ktj);
    else
        json_decref(ktj);
    if (o != NULL)
        json_object_set_new(o, "member_wrap", json_string(gs_wrap_name(gi->member_wrap)));
    if (o != NULL && gs_group_current_secret(g) != NULL)
        json_object_set_new(o, "secret_version", json_integer(gs_group_current_secret(g)->version));
    const struct gs_config *cfg = r->srv->cfg;
    if (o != NULL && (cfg->certsrv.url != NULL || cfg->certsrv.listen != NULL)) {
        if (cfg->certsrv.url != NULL)
            util_strlcpy(url, cfg->certsrv.url, sizeof(url));
        else
            snprintf(url, sizeof(url), "https://%s", cfg->certsrv.listen);
        json_object_set_new(o, "certificate_server", json_string(url));
    }
    if (o == NULL) {
        srv_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    srv_reply_json(r, 200, o);
}

static void h_group_cert(struct srv_req *r, const char *group)
{
    gs_group *g = load_group(r, group);
    char *pem = NULL;
    gs_err e;

    if (g == NULL)
        return;
    if ((e = gs_group_cert_chain_pem(g, r->srv->ca, &pem)) != GS_OK)
        srv_reply_gs_error(r, e, "certificate");
    else
        srv_reply_bytes(r, 200, "application/pem-certificate-chain", pem, strlen(pem));
    free(pem);
}

/* ---- admin ------------------------------------------------------------------ */

static json_t *member_json(const gs_store_member *m, int with_cert)
{
    json_t *o = json_pack("{s:s,s:s,s:b,s:I,s:s}", "email", m->email, "role", gs_role_name(m->role),
                          "has_certificate", m->cert_pem != NULL, "added", (json_int_t)m->added, "wrap",
                          gs_wrap_name(m->wrap));
    if (o != NULL && with_cert)
        json_object_set_new(o, "certificate", m->cert_pem ? json_string(m->cert_pem) : json_null());
    return o;
}

static void h_members_list(struct srv_req *r, const char *group)
{
    gs_group *g = NULL;
    struct caller c;
    gs_store_member *list = NULL;
    size_t n = 0;
    gs_err e;

    memset(&c, 0, sizeof(c));
    if ((g = load_group(r, group)) == NULL || authorise(r, g, ROLES_ADMIN, 0, "member-list", &c) != 0)
        goto out;
    if ((e = gs_store_member_list(r->t->store, gs_group_id(g), &list, &n)) != GS_OK) {
        srv_reply_gs_error(r, e, "members");
        goto out;
    }
    json_t *a = json_array();
    for (size_t i = 0; a != NULL && i < n; i++)
        json_array_append_new(a, member_json(&list[i], 0));
    srv_reply_json(r, 200, json_pack("{s:o?}", "members", a));
out:
    gs_store_member_list_free(list, n);
    caller_clear(&c);
}

static void h_member(struct srv_req *r, const char *group, const char *email, enum evhttp_cmd_type cmd)
{
    gs_group *g = NULL;
    struct caller c;
    gs_store_member *m = NULL;
    json_t *body = NULL;
    X509 *cert = NULL;
    gs_err e;
    int bad = 0;
    const char *action = cmd == EVHTTP_REQ_GET ? "member-get" : cmd == EVHTTP_REQ_PUT ? "member-add" : "member-remove";

    memset(&c, 0, sizeof(c));
    if ((g = load_group(r, group)) == NULL || authorise(r, g, ROLES_ADMIN, 0, action, &c) != 0)
        goto out;
    if (!gs_valid_email(email)) {
        srv_reply_error(r, 400, "bad_request", "the member id must be an email address");
        goto out;
    }
    const char *gname = gs_group_info(g)->name;
    if (cmd == EVHTTP_REQ_GET) {
        if ((e = gs_store_member_get(r->t->store, gs_group_id(g), email, &m)) != GS_OK) {
            srv_reply_gs_error(r, e, "member");
            goto out;
        }
        srv_reply_json(r, 200, member_json(m, 1));
        goto out;
    }
    if (cmd == EVHTTP_REQ_DELETE) {
        gs_member_removal rm;
        e = gs_member_remove_ex(r->t->store, r->srv->hsm, r->srv->ca, r->srv->cfg, gname, email, &rm);
        unsigned rotated = rm.secret_version;
        audit_record rec = {.action = action, .identity = c.identity, .group = gname,
                            .key_version = rm.key_version ? (long)rm.key_version : -1,
                            .outcome = e == GS_OK ? "ok" : gs_strerror(e)};
        json_t *extra = json_pack("{s:s,s:I,s:I}", "member", email, "secret_rotated_to", (json_int_t)rotated,
                                  "key_rotated_to", (json_int_t)rm.key_version);
        rec.extra = extra;
        int arc = srv_audit(r, &rec);
        json_decref(extra);
        if (arc != 0)
            goto out;
        if (e != GS_OK) {
            srv_reply_gs_error(r, e, "member");
            goto out;
        }
        json_t *o = json_pack("{s:s}", "removed", email);
        if (o != NULL && rotated)
            json_object_set_new(o, "secret_version", json_integer(rotated));
        if (o != NULL && rm.key_version)
            json_object_set_new(o, "key_version", json_integer(rm.key_version));
        srv_reply_json(r, 200, o);
        goto out;
    }
    /* PUT: create or replace. */
    if ((body = srv_json_body(r)) == NULL)
        goto out;
    const char *role_s = srv_json_str(r, body, "role", &bad);
    if (bad)
        goto out;
    const char *pem = srv_json_str(r, body, "certificate", &bad);
    if (bad)
        goto out;
    const char *wrap_s = srv_json_str(r, body, "wrap", &bad);
    if (bad)
        goto out;
    gs_wrap wrap = GS_WRAP_DEFAULT;
    if (wrap_s != NULL && strcmp(wrap_s, "default") != 0 && gs_wrap_parse(wrap_s, &wrap) != GS_OK) {
        srv_reply_error(r, 400, "bad_request", "\"wrap\" must be pkcs1v15, oaep or default");
        goto out;
    }
    gs_role role = GS_ROLE_MEMBER;
    if (role_s != NULL && gs_role_parse(role_s, &role) != GS_OK) {
        srv_reply_error(r, 400, "bad_request", "\"role\" must be member, exploder or admin");
        goto out;
    }
    if (pem != NULL && gs_cert_parse((const unsigned char *)pem, strlen(pem), &cert) != GS_OK) {
        srv_reply_error(r, 400, "bad_certificate", "\"certificate\" is not a PEM certificate");
        goto out;
    }
    int existed = gs_store_member_get(r->t->store, gs_group_id(g), email, &m) == GS_OK;
    if (existed && (e = gs_store_member_remove(r->t->store, gs_group_id(g), email)) != GS_OK) {
        srv_reply_gs_error(r, e, "member");
        goto out;
    }
    e = gs_member_add_wrap(r->t->store, gname, email, role, cert, wrap);
    json_t *extra = json_pack("{s:s,s:s}", "member", email, "role", gs_role_name(role));
    audit_record rec = {.action = action, .identity = c.identity, .group = gname, .key_version = -1,
                        .outcome = e == GS_OK ? "ok" : gs_strerror(e), .extra = extra};
    int arc = srv_audit(r, &rec);
    json_decref(extra);
    if (arc != 0)
        goto out;
    if (e != GS_OK) {
        srv_reply_gs_error(r, e, "member");
        goto out;
    }
    gs_store_member_free(m);
    m = NULL;
    if ((e = gs_store_member_get(r->t->store, gs_group_id(g), email, &m)) != GS_OK) {
        srv_reply_gs_error(r, e, "member");
        goto out;
    }
    srv_reply_json(r, existed ? 200 : 201, member_json(m, 0));
out:
    X509_free(cert);
    json_decref(body);
    gs_store_member_free(m);
    caller_clear(&c);
}

/* An admin of any group may create groups (and becomes admin of the new one). */
static int require_any_admin(struct srv_req *r, char *identity, size_t idlen)
{
    gs_store_group **groups = NULL;
    size_t n = 0;
    int ok = 0;

    if (srv_require_cert(r) != 0)
        return -1;
    const peer_info *p = srv_peer(r);
    if (p->status != PEER_MEMBER_CERT) {
        srv_reply_error(r, 403, "forbidden", "administrators authenticate with an identity certificate");
        return -1;
    }
    gs_err e = gs_store_group_list(r->t->store, &groups, &n);
    if (e != GS_OK) {
        srv_reply_gs_error(r, e, "groups");
        return -1;
    }
    for (size_t i = 0; i < n && !ok; i++) {
        gs_store_member *m = NULL;
        if (gs_store_member_get(r->t->store, groups[i]->id, p->identity, &m) == GS_OK && m->role == GS_ROLE_ADMIN &&
            (m->cert_pem == NULL || gcache_cert_matches_pem(r->t->gcache, p->cert, m->cert_pem)))
            ok = 1;
        gs_store_member_free(m);
    }
    gs_store_group_list_free(groups, n);
    if (!ok) {
        srv_reply_error(r, 403, "forbidden", "only administrators may do this");
        return -1;
    }
    util_strlcpy(identity, p->identity, idlen);
    return srv_rate_limit(r);
}

static void h_group_create(struct srv_req *r)
{
    json_t *body = NULL;
    char who[256];
    int bad = 0;
    unsigned version = 0, methods = 0;
    gs_err e;

    if (require_any_admin(r, who, sizeof(who)) != 0)
        goto out;
    if (r->srv->ca == NULL) {
        srv_reply_error(r, 503, "no_ca", "the local CA is not initialised (groupsrv ca init)");
        goto out;
    }
    if ((body = srv_json_body(r)) == NULL)
        goto out;
    const char *name = srv_json_str(r, body, "name", &bad);
    const char *address = bad ? NULL : srv_json_str(r, body, "address", &bad);
    const char *keyspec = bad ? NULL : srv_json_str(r, body, "keyspec", &bad);
    if (bad)
        goto out;
    if (name == NULL || address == NULL || !gs_valid_group_name(name) || !gs_valid_email(address)) {
        srv_reply_error(r, 400, "bad_request", "\"name\" (a group name) and \"address\" (an email) are required");
        goto out;
    }
    json_t *jm = json_object_get(body, "methods");
    if (jm != NULL) {
        if (json_is_string(jm)) {
            if (gs_methods_parse(json_string_value(jm), &methods) != GS_OK) {
                srv_reply_error(r, 400, "bad_request", "\"methods\": %s", gs_err_detail());
                goto out;
            }
        } else if (json_is_array(jm) && json_array_size(jm) > 0 && json_array_size(jm) <= 8) {
            for (size_t i = 0; i < json_array_size(jm); i++) {
                unsigned b = 0;
                const char *s = json_string_value(json_array_get(jm, i));
                if (s == NULL || gs_methods_parse(s, &b) != GS_OK) {
                    srv_reply_error(r, 400, "bad_request", "\"methods\" has an unknown method");
                    goto out;
                }
                methods |= b;
            }
        } else {
            srv_reply_error(r, 400, "bad_request", "\"methods\" must be an array of method names");
            goto out;
        }
    }
    json_t *jp = json_object_get(body, "allow_pkcs1v15");
    if (jp != NULL && !json_is_boolean(jp)) {
        srv_reply_error(r, 400, "bad_request", "\"allow_pkcs1v15\" must be true or false");
        goto out;
    }
    json_t *jr = json_object_get(body, "replicable");
    if (jr != NULL && !json_is_boolean(jr)) {
        srv_reply_error(r, 400, "bad_request", "\"replicable\" must be true or false");
        goto out;
    }
    const char *mw = srv_json_str(r, body, "member_wrap", &bad);
    if (bad)
        goto out;
    gs_wrap member_wrap = GS_WRAP_DEFAULT;
    if (mw != NULL && gs_wrap_parse(mw, &member_wrap) != GS_OK) {
        srv_reply_error(r, 400, "bad_request", "\"member_wrap\" must be pkcs1v15 or oaep");
        goto out;
    }
    /* Absent: RSA groups accept v1.5 (the default); false: RSA-OAEP only. */
    gs_group_spec spec = {.name = name, .address = address, .keyspec = keyspec, .methods = methods,
                          .allow_pkcs1v15 = jp != NULL && json_is_true(jp),
                          .oaep_only = jp != NULL && json_is_false(jp), .member_wrap = member_wrap,
                          .replicable = jr != NULL && json_is_true(jr)};
    e = gs_group_create(r->t->store, r->srv->hsm, r->srv->ca, r->srv->cfg, &spec, &version);
    if (e == GS_OK)
        e = gs_member_add(r->t->store, name, who, GS_ROLE_ADMIN, NULL);
    audit_record rec = {.action = "group-create", .identity = who, .group = name, .key_version = version,
                        .outcome = e == GS_OK ? "ok" : gs_strerror(e)};
    if (srv_audit(r, &rec) != 0)
        goto out;
    if (e != GS_OK) {
        srv_reply_gs_error(r, e, "group");
        goto out;
    }
    srv_reply_json(r, 201, json_pack("{s:s,s:s,s:I}", "name", name, "address", address, "key_version",
                                     (json_int_t)version));
out:
    json_decref(body);
}

/* ---- health and metrics ------------------------------------------------------ */

static void h_healthz(struct srv_req *r)
{
    hsm_err he;
    audit_err ae;
    srv_health(r->srv, &he, &ae);
    uint64_t stamp = 0;
    /* A real query: with PostgreSQL the database is another machine, and a
     * load balancer must take this server out while it cannot reach it. */
    gs_err de = gs_store_change_stamp(r->t->store, &stamp);
    int db_ok = de == GS_OK;

    if (he == HSM_OK && ae == AUDIT_OK && db_ok) {
        srv_reply_json(r, 200, json_pack("{s:s,s:s,s:s,s:s}", "status", "ok", "token", "ok", "audit", "ok",
                                         "database", "ok"));
        return;
    }
    if (he != HSM_OK)
        metrics_token_error();
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:{s:s,s:s}}", "status", "unavailable", "token",
                          he == HSM_OK ? "ok" : hsm_strerror(he), "audit", ae == AUDIT_OK ? "ok" : audit_strerror(ae),
                          "database", db_ok ? "ok" : "unavailable", "error", "code",
                          he != HSM_OK                    ? "token_unavailable"
                          : ae != AUDIT_OK                ? "audit_unavailable"
                          : de == GS_ERR_DB_UNAVAILABLE   ? "db_unavailable"
                                                          : "store_unavailable",
                          "message", "the server cannot serve key requests now");
    evhttp_add_header(evhttp_request_get_output_headers(r->req), "Retry-After", "5");
    srv_reply_json(r, 503, o);
}

static void h_metrics(struct srv_req *r)
{
    const char *policy = r->srv->cfg->server.metrics ? r->srv->cfg->server.metrics : "admin";
    hsm_token_info ti;
    char who[256];

    if (strcmp(policy, "off") == 0) {
        srv_reply_error(r, 404, "not_found", "metrics are disabled");
        return;
    }
    if (strcmp(policy, "any") != 0 && require_any_admin(r, who, sizeof(who)) != 0)
        return;
    int token_up = hsm_token_info_get(r->srv->hsm, &ti) == HSM_OK;
    char *text = metrics_render(token_up ? (long)ti.sessions_in_use : -1, token_up ? (long)ti.sessions_idle : 0,
                                token_up, audit_check(r->srv->audit) == AUDIT_OK);
    if (text == NULL) {
        srv_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    srv_reply_bytes(r, 200, "text/plain; version=0.0.4", text, strlen(text));
    free(text);
}

/* ---- routing ------------------------------------------------------------------- */

/* Splits the request path into percent-decoded segments; -1 if malformed. */
static int split_path(struct evhttp_request *req, char seg[MAX_SEGMENTS][MAX_SEGMENT_LEN + 1], size_t *n)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;

    *n = 0;
    if (path == NULL || path[0] != '/')
        return -1;
    const char *p = path + 1;
    while (*p != '\0') {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (*n >= MAX_SEGMENTS || len == 0 || len > MAX_SEGMENT_LEN)
            return -1;
        char raw[MAX_SEGMENT_LEN + 1];
        memcpy(raw, p, len);
        raw[len] = '\0';
        size_t dl = 0;
        char *dec = evhttp_uridecode(raw, 0, &dl);
        if (dec == NULL || dl != strlen(dec) || dl == 0 || strchr(dec, '/') != NULL) {
            free(dec);
            return -1;
        }
        util_strlcpy(seg[*n], dec, MAX_SEGMENT_LEN + 1);
        free(dec);
        (*n)++;
        p += len;
        if (*p == '/')
            p++;
    }
    return 0;
}

static void method_not_allowed(struct srv_req *r, const char *allow)
{
    evhttp_add_header(evhttp_request_get_output_headers(r->req), "Allow", allow);
    srv_reply_error(r, 405, "method_not_allowed", "use %s", allow);
}

void api_route(struct srv_req *r)
{
    char seg[MAX_SEGMENTS][MAX_SEGMENT_LEN + 1];
    size_t n = 0;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(r->req);

    if (split_path(r->req, seg, &n) != 0) {
        srv_reply_error(r, 404, "not_found", "no such resource");
        return;
    }
    if (n == 1 && strcmp(seg[0], "healthz") == 0) {
        r->ep = EP_HEALTHZ;
        if (cmd != EVHTTP_REQ_GET)
            method_not_allowed(r, "GET");
        else
            h_healthz(r);
        return;
    }
    if (n == 1 && strcmp(seg[0], "metrics") == 0) {
        r->ep = EP_METRICS;
        if (cmd != EVHTTP_REQ_GET)
            method_not_allowed(r, "GET");
        else
            h_metrics(r);
        return;
    }
    if (n < 2 || strcmp(seg[0], "v1") != 0 || strcmp(seg[1], "groups") != 0) {
        srv_reply_error(r, 404, "not_found", "no such resource");
        return;
    }
    if (n == 2) {
        r->ep = EP_GROUPS;
        if (cmd != EVHTTP_REQ_POST)
            method_not_allowed(r, "POST");
        else
            h_group_create(r);
        return;
    }
    const char *g = seg[2];
    if (n == 3) {
        r->ep = EP_DISCOVERY;
        if (cmd != EVHTTP_REQ_GET)
            method_not_allowed(r, "GET");
        else
            h_group_info(r, g);
        return;
    }
    const char *what = seg[3];
    if (n == 4 && strcmp(what, "certificate") == 0) {
        r->ep = EP_CERTIFICATE;
        cmd != EVHTTP_REQ_GET ? method_not_allowed(r, "GET") : h_group_cert(r, g);
    } else if (n == 4 && strcmp(what, "unwrap") == 0) {
        r->ep = EP_UNWRAP;
        cmd != EVHTTP_REQ_POST ? method_not_allowed(r, "POST") : h_unwrap(r, g);
    } else if (n == 4 && strcmp(what, "unwrap-batch") == 0) {
        r->ep = EP_UNWRAP_BATCH;
        cmd != EVHTTP_REQ_POST ? method_not_allowed(r, "POST") : h_unwrap_batch(r, g);
    } else if (n == 4 && strcmp(what, "rewrap") == 0) {
        r->ep = EP_REWRAP;
        cmd != EVHTTP_REQ_POST ? method_not_allowed(r, "POST") : h_rewrap(r, g);
    } else if (n == 4 && strcmp(what, "secret-keys") == 0) {
        r->ep = EP_SECRET_KEYS;
        cmd != EVHTTP_REQ_GET ? method_not_allowed(r, "GET") : h_secret_keys(r, g);
    } else if (n == 4 && strcmp(what, "members") == 0) {
        r->ep = EP_MEMBERS;
        cmd != EVHTTP_REQ_GET ? method_not_allowed(r, "GET") : h_members_list(r, g);
    } else if (n == 5 && strcmp(what, "members") == 0) {
        r->ep = EP_MEMBERS;
        if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_PUT && cmd != EVHTTP_REQ_DELETE)
            method_not_allowed(r, "GET, PUT, DELETE");
        else
            h_member(r, g, seg[4], cmd);
    } else if (n == 4 && strcmp(what, "membership-certificates") == 0) {
        r->ep = EP_MEMBERSHIP_CERT;
        srv_reply_error(r, 404, "not_found", "membership certificates are issued by the certificate server listener");
    } else {
        srv_reply_error(r, 404, "not_found", "no such resource");
    }
}
