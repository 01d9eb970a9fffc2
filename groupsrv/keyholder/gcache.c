/*
 * gcache.c: per-worker cache of loaded groups and recorded member keys
 * (see gcache.h).
 */
#include "gcache.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>

#include "log.h"
#include "util.h"

/* Bounded: a server with more groups than this reloads the least recently
 * used, as it did on every request before. */
#define GCACHE_GROUPS 32
#define GCACHE_PKEYS 32
/* Members kept per worker; beyond, the least recently used is read again. */
#define GCACHE_MEMBERS 64

struct gcache_group {
    char name[GS_NAME_MAX + 1];
    gs_group *g;
    uint64_t used;
    unsigned kts;  /* GCACHE_KT_* bits the current key accepts; with kts_known */
    int kts_known;
};

struct gcache_member {
    int64_t group_id;
    char *identity; /* exactly as asked (the store compares without case) */
    gs_store_member *m;
    uint64_t used;
};

struct gcache_pkey {
    char *pem;
    unsigned char *spki;
    size_t spki_len;
};

struct gcache {
    uint64_t stamp;
    int have_stamp;
    int stale;
    uint64_t tick;
    struct gcache_group groups[GCACHE_GROUPS];
    struct gcache_member members[GCACHE_MEMBERS];
    struct gcache_pkey pkeys[GCACHE_PKEYS];
    unsigned pkey_next;
};

gcache *gcache_new(void) { return calloc(1, sizeof(struct gcache)); }

static void flush(gcache *c)
{
    for (size_t i = 0; i < GCACHE_GROUPS; i++) {
        gs_group_free(c->groups[i].g);
        memset(&c->groups[i], 0, sizeof(c->groups[i]));
    }
    for (size_t i = 0; i < GCACHE_MEMBERS; i++) {
        free(c->members[i].identity);
        gs_store_member_free(c->members[i].m);
        memset(&c->members[i], 0, sizeof(c->members[i]));
    }
    for (size_t i = 0; i < GCACHE_PKEYS; i++) {
        free(c->pkeys[i].pem);
        free(c->pkeys[i].spki);
        memset(&c->pkeys[i], 0, sizeof(c->pkeys[i]));
    }
    c->pkey_next = 0;
    c->stale = 0;
}

void gcache_free(gcache *c)
{
    if (c == NULL)
        return;
    flush(c);
    free(c);
}

void gcache_mark_stale(gcache *c)
{
    if (c != NULL)
        c->stale = 1;
}

int gcache_is_stale(const gcache *c) { return c == NULL || c->stale; }

gs_err gcache_refresh(gcache *c, gs_store *st, int *changed)
{
    uint64_t stamp = 0;
    gs_err e;

    if (changed != NULL)
        *changed = 0;
    if ((e = gs_store_change_stamp(st, &stamp)) != GS_OK)
        return e;
    if (!c->have_stamp || stamp != c->stamp || c->stale) {
        if (c->have_stamp)
            log_debug("database changed: cached groups dropped");
        if (changed != NULL && (!c->have_stamp || stamp != c->stamp))
            *changed = 1;
        flush(c);
        c->stamp = stamp;
        c->have_stamp = 1;
    }
    return GS_OK;
}

gs_err gcache_group(gcache *c, gs_store *st, hsm_ctx *hsm, const char *name, gs_group **out)
{
    gs_err e;
    struct gcache_group *slot = NULL;

    *out = NULL;
    if (c == NULL || name == NULL || strlen(name) > GS_NAME_MAX)
        return GS_ERR_ARGS;
    c->tick++;
    for (size_t i = 0; i < GCACHE_GROUPS; i++) {
        if (c->groups[i].g != NULL && strcmp(c->groups[i].name, name) == 0) {
            if (gs_group_lacks_keys(c->groups[i].g)) {
                /* every thread looks again for a version its token lacked */
                gs_group_free(c->groups[i].g);
                c->groups[i].g = NULL;
                break;
            }
            c->groups[i].used = c->tick;
            *out = c->groups[i].g;
            return GS_OK;
        }
    }
    /* A change committed after the stamp was read may already be in what
     * we load now; the next request then sees a new stamp and reloads. */
    gs_group *g = NULL;
    /* The load finds keys in the token and may unwrap sealed ones there:
     * no read snapshot is held across token calls (a slow token would pin
     * the WAL and age the snapshot). What follows reads afresh. */
    gs_store_read_end(st);
    if ((e = gs_group_load(st, hsm, name, &g)) != GS_OK)
        return e;
    /* An empty slot, else the least recently used one. */
    for (size_t i = 0; i < GCACHE_GROUPS; i++) {
        struct gcache_group *cand = &c->groups[i];
        if (cand->g == NULL) {
            slot = cand;
            break;
        }
        if (slot == NULL || cand->used < slot->used)
            slot = cand;
    }
    gs_group_free(slot->g);
    util_strlcpy(slot->name, name, sizeof(slot->name));
    slot->g = g;
    slot->used = c->tick;
    /* a reused slot must not answer with the last group's probe */
    slot->kts = 0;
    slot->kts_known = 0;
    *out = g;
    return GS_OK;
}

/* Whether the identity named is the member's recorded address but for
 * ASCII case, the rule SQLite's NOCASE applies. PostgreSQL finds a member
 * with lower() under the database's collation, which under a UTF-8 one
 * folds more: U+212A KELVIN SIGN is k and U+0130 is i, so it finds kim
 * for "k\u0130m@example.org", another address that a client CA may
 * certify for someone else (or a compromised network process may name to
 * get a rate-limit bucket of its own). */
bool gcache_same_address(const char *identity, const char *recorded)
{
    const unsigned char *a = (const unsigned char *)identity, *b = (const unsigned char *)recorded;

    if (a == NULL || b == NULL)
        return false;
    for (; *a != '\0' && *b != '\0'; a++, b++) {
        unsigned char x = *a >= 'A' && *a <= 'Z' ? (unsigned char)(*a - 'A' + 'a') : *a;
        unsigned char y = *b >= 'A' && *b <= 'Z' ? (unsigned char)(*b - 'A' + 'a') : *b;
        if (x != y)
            return false;
    }
    return *a == *b;
}

gs_err gcache_member(gcache *c, gs_store *st, int64_t group_id, const char *identity, const gs_store_member **out)
{
    struct gcache_member *slot = NULL;
    gs_store_member *m = NULL;
    char *copy;
    gs_err e;

    *out = NULL;
    if (c == NULL || identity == NULL)
        return GS_ERR_ARGS;
    c->tick++;
    for (size_t i = 0; i < GCACHE_MEMBERS; i++) {
        struct gcache_member *cand = &c->members[i];
        if (cand->m != NULL && cand->group_id == group_id && strcmp(cand->identity, identity) == 0) {
            cand->used = c->tick;
            *out = cand->m;
            return GS_OK;
        }
    }
    /* Not kept (a refusal never is: it is read again every time). */
    if ((e = gs_store_member_get(st, group_id, identity, &m)) != GS_OK)
        return e;
    if (!gcache_same_address(identity, m->email)) {
        gs_store_member_free(m);
        return gs_err_set(GS_ERR_NOT_FOUND, "not a member");
    }
    if ((copy = strdup(identity)) == NULL) {
        gs_store_member_free(m);
        return GS_ERR_NOMEM;
    }
    for (size_t i = 0; i < GCACHE_MEMBERS; i++) {
        struct gcache_member *cand = &c->members[i];
        if (cand->m == NULL) {
            slot = cand;
            break;
        }
        if (slot == NULL || cand->used < slot->used)
            slot = cand;
    }
    free(slot->identity);
    gs_store_member_free(slot->m);
    slot->group_id = group_id;
    slot->identity = copy;
    slot->m = m;
    slot->used = c->tick;
    *out = m;
    return GS_OK;
}

/* A probe's answer is about the key only when the token gave one: the
 * mechanism or the key's policy refused, or it worked. Anything else (a
 * device error, a session lost) says nothing and must not be cached. */
static int kt_probe(hsm_ctx *hsm, hsm_key *key, hsm_kt_alg alg, int *definite)
{
    hsm_err err = hsm_check_kt_alg(hsm, key, alg);

    if (err != HSM_OK && err != HSM_ERR_MECHANISM && err != HSM_ERR_KEY_POLICY)
        *definite = 0;
    return err == HSM_OK;
}

unsigned gcache_key_transports(gcache *c, hsm_ctx *hsm, const gs_group *g)
{
    struct gcache_group *slot = NULL;
    const gs_group_key_ref *cur = gs_group_current_key(g);
    unsigned kts = 0;
    int definite = 1;

    /* No current version, or one this token does not hold yet (a replica
     * before the ceremony reached it): nothing can be said, and a list of
     * OAEP alone would make exploders refuse every v1.5 sender. */
    if (cur == NULL || cur->key == NULL)
        return 0;
    if (cur->type != HSM_KEYTYPE_RSA)
        return GCACHE_KT_ECDH;
    for (size_t i = 0; c != NULL && i < GCACHE_GROUPS; i++)
        if (c->groups[i].g == g)
            slot = &c->groups[i];
    if (slot != NULL && slot->kts_known)
        return slot->kts;
    /* OAEP with SHA-1 is what every group key is made for; SHA-256 and
     * v1.5 depend on the token and the key's policy: ask it once per load
     * (a probe closes the session it used, so not per request). */
    kts = GCACHE_KT_OAEP;
    if (kt_probe(hsm, cur->key, HSM_KT_RSA_OAEP_SHA256, &definite))
        kts |= GCACHE_KT_OAEP256;
    if (gs_group_info(g)->allow_pkcs1v15 && gs_group_reject_key(g) != NULL &&
        kt_probe(hsm, cur->key, HSM_KT_RSA_PKCS1V15, &definite))
        kts |= GCACHE_KT_PKCS1V15;
    if (!definite)
        return 0;
    if (slot != NULL) {
        slot->kts = kts;
        slot->kts_known = 1;
    }
    return kts;
}

int gcache_secret_wraps(hsm_ctx *hsm, const gs_group *g)
{
    const gs_group_secret_ref *sec = gs_group_current_secret(g);
    hsm_caps caps;
    hsm_key_info info;

    if (sec == NULL || sec->key == NULL || hsm_caps_get(hsm, &caps) != HSM_OK ||
        hsm_caps_has(&caps, HSM_MECH_AES_KEY_WRAP, HSM_MF_WRAP))
        return 1;
    /* CKA_WRAP is what hsm/ goes by (made for CKM_AES_KEY_WRAP; a key
     * made for CKM_AES_ECB encrypts and never wraps). */
    if (hsm_key_get_info(hsm, sec->key, &info) != HSM_OK || info.sealed || !info.wrap)
        return 1;
    return 0;
}

/* The DER SubjectPublicKeyInfo of a PEM certificate (caller frees). */
static int pem_spki(const char *pem, unsigned char **der, size_t *len)
{
    X509 *rec = NULL;
    int n;

    *der = NULL;
    *len = 0;
    if (gs_cert_parse((const unsigned char *)pem, strlen(pem), &rec) != GS_OK)
        return -1;
    n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(rec), der);
    X509_free(rec);
    if (n <= 0) {
        *der = NULL;
        return -1;
    }
    *len = (size_t)n;
    return 0;
}

int gcache_spki_matches_pem(gcache *c, const unsigned char *spki, size_t spki_len, const char *pem)
{
    const struct gcache_pkey *hit = NULL;
    unsigned char *der = NULL;
    size_t len = 0;
    int ok;

    if (spki == NULL || pem == NULL)
        return 0;
    for (size_t i = 0; c != NULL && i < GCACHE_PKEYS; i++)
        if (c->pkeys[i].pem != NULL && strcmp(c->pkeys[i].pem, pem) == 0) {
            hit = &c->pkeys[i];
            break;
        }
    if (hit != NULL)
        return hit->spki_len == spki_len && memcmp(hit->spki, spki, spki_len) == 0;
    if (pem_spki(pem, &der, &len) != 0)
        return 0;
    /* DER of one key is one encoding: equal bytes, equal key. */
    ok = len == spki_len && memcmp(der, spki, len) == 0;
    char *copy = c != NULL ? strdup(pem) : NULL;
    if (copy != NULL) {
        struct gcache_pkey *s = &c->pkeys[c->pkey_next];
        c->pkey_next = (c->pkey_next + 1) % GCACHE_PKEYS;
        free(s->pem);
        free(s->spki);
        s->pem = copy;
        s->spki = der;
        s->spki_len = len;
        der = NULL;
    }
    free(der);
    return ok;
}
