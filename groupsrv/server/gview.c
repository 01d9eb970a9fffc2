/*
 * gview.c: group views and the per-thread cache of them (gview.h).
 */
#include "gview.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

/* Bounded: with more groups than this the least recently used is fetched again. */
#define GVIEWS_MAX 64

struct gviews {
    gview *v[GVIEWS_MAX];
    uint64_t used[GVIEWS_MAX];
    uint64_t tick;
};

gview *gview_ref(gview *v)
{
    if (v != NULL)
        v->refs++;
    return v;
}

void gview_unref(gview *v)
{
    if (v == NULL || --v->refs > 0)
        return;
    for (size_t i = 0; i < v->nversions; i++) {
        X509_free(v->versions[i].cert);
        for (size_t f = 0; f < v->versions[i].nformer; f++)
            X509_free(v->versions[i].former[f]);
    }
    free(v->versions);
    X509_free(v->chain_ca);
    free(v);
}

bool gview_key_named(const gview_key *k, const env_recipient *ri)
{
    if (env_recipient_matches_cert(ri, k->cert))
        return true;
    for (size_t f = 0; f < k->nformer; f++)
        if (env_recipient_matches_cert(ri, k->former[f]))
            return true;
    return false;
}

const gview_key *gview_current(const gview *v)
{
    for (size_t i = 0; i < v->nversions; i++)
        if (v->versions[i].current)
            return &v->versions[i];
    return NULL;
}

static X509 *der_cert(const unsigned char *p, size_t len)
{
    const unsigned char *q = p;
    X509 *x = d2i_X509(NULL, &q, (long)len);

    if (x != NULL && q != p + len) {
        X509_free(x);
        x = NULL;
    }
    return x;
}

int gview_parse(const ipc_msg *m, gview **out)
{
    gview *v = calloc(1, sizeof(*v));
    const unsigned char *p;
    size_t len, n = m->count[IPC_T_KEYREF];
    ipc_iter it;
    ipc_msg k;

    *out = NULL;
    if (v == NULL)
        return -1;
    v->refs = 1;
    v->gen = ipc_u64(m, IPC_T_GEN, 0);
    if (ipc_str(m, IPC_T_NAME) == NULL || util_strlcpy(v->name, ipc_str(m, IPC_T_NAME), sizeof(v->name)) != 0 ||
        util_strlcpy(v->address, ipc_str(m, IPC_T_ADDRESS) ? ipc_str(m, IPC_T_ADDRESS) : "", sizeof(v->address)) != 0)
        goto fail;
    v->methods = ipc_u32(m, IPC_T_METHODS, 0);
    v->allow_pkcs1v15 = (ipc_u32(m, IPC_T_FLAGS, 0) & IPC_FLAG_PKCS1V15) != 0;
    v->secret_no_wrap = (ipc_u32(m, IPC_T_FLAGS, 0) & IPC_FLAG_SECRET_NO_WRAP) != 0;
    v->member_wrap = (gs_wrap)ipc_u32(m, IPC_T_WRAP, GS_WRAP_DEFAULT);
    v->key_transports = ipc_u32(m, IPC_T_KEY_TRANSPORTS, 0);
    if (n > 0 && (v->versions = calloc(n, sizeof(*v->versions))) == NULL)
        goto fail;
    ipc_iter_init(&it, m, IPC_T_KEYREF);
    while (v->nversions < n && ipc_iter_next(&it, NULL, &k)) {
        gview_key *vk = &v->versions[v->nversions];
        uint32_t flags = ipc_u32(&k, IPC_T_FLAGS, 0);
        vk->version = ipc_u32(&k, IPC_T_KEY_VERSION, 0);
        vk->current = (flags & IPC_FLAG_CURRENT) != 0;
        vk->ec = (flags & IPC_FLAG_EC) != 0;
        /* counted from here: a failure below frees what was parsed */
        v->nversions++;
        if (ipc_bytes(&k, IPC_T_CERT, &p, &len) != 0 || (vk->cert = der_cert(p, len)) == NULL)
            goto fail;
        ipc_iter fit;
        ipc_val fv;
        ipc_iter_init(&fit, &k, IPC_T_FORMER_CERT);
        while (vk->nformer < GS_ARRAY_LEN(vk->former) && ipc_iter_next(&fit, &fv, NULL)) {
            if ((vk->former[vk->nformer] = der_cert(fv.p, fv.len)) == NULL)
                goto fail;
            vk->nformer++;
        }
    }
    if (ipc_has(m, IPC_T_SECRET_VERSION)) {
        v->has_secret = true;
        v->secret_version = ipc_u32(m, IPC_T_SECRET_VERSION, 0);
    }
    if (ipc_bytes(m, IPC_T_CA_CERT, &p, &len) == 0 && (v->chain_ca = der_cert(p, len)) == NULL)
        goto fail;
    if (ipc_str(m, IPC_T_KEY_POLICY) != NULL &&
        util_strlcpy(v->key_policy, ipc_str(m, IPC_T_KEY_POLICY), sizeof(v->key_policy)) != 0)
        goto fail;
    *out = v;
    return 0;
fail:
    gview_unref(v);
    return -1;
}

gviews *gviews_new(void) { return calloc(1, sizeof(struct gviews)); }

void gviews_flush(gviews *c)
{
    for (size_t i = 0; c != NULL && i < GVIEWS_MAX; i++) {
        gview_unref(c->v[i]);
        c->v[i] = NULL;
    }
}

void gviews_free(gviews *c)
{
    gviews_flush(c);
    free(c);
}

gview *gviews_get(gviews *c, const char *name, uint64_t gen, bool want_any)
{
    for (size_t i = 0; i < GVIEWS_MAX; i++)
        if (c->v[i] != NULL && strcmp(c->v[i]->name, name) == 0) {
            if (!want_any && (gen == 0 || c->v[i]->gen != gen))
                return NULL;
            c->used[i] = ++c->tick;
            return c->v[i];
        }
    return NULL;
}

void gviews_put(gviews *c, gview *v)
{
    long same = -1, empty = -1;
    size_t lru = 0, slot;

    for (size_t i = 0; i < GVIEWS_MAX; i++) {
        if (c->v[i] == NULL) {
            if (empty < 0)
                empty = (long)i;
        } else if (strcmp(c->v[i]->name, v->name) == 0) {
            same = (long)i;
            break;
        } else if (c->used[i] < c->used[lru] || c->v[lru] == NULL) {
            lru = i;
        }
    }
    slot = same >= 0 ? (size_t)same : empty >= 0 ? (size_t)empty : lru;
    gview_unref(c->v[slot]);
    c->v[slot] = v;
    c->used[slot] = ++c->tick;
}
