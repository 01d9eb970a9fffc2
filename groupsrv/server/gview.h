/*
 * gview.h: a group's public data as the network process sees it (the key
 * holder's IPC_VIEW answer): name, address, methods, and each key
 * version's certificate, which is what it needs to discover, to serve the
 * certificate chain and to match a RecipientInfo to a key version. No key,
 * no membership: those stay in the key holder. Owned by groupsrv/server/.
 *
 * Each event-loop thread keeps the views it fetched, tagged with the key
 * holder's data generation; a view is used only while the generation the
 * key holder last reported is the same (any database change moves it).
 * Views are reference counted: a request keeps its view across its calls
 * to the key holder even if the cache replaces it meanwhile.
 *
 * Threads: a gviews cache and its views belong to one thread.
 */
#ifndef GS_SRV_GVIEW_H
#define GS_SRV_GVIEW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

#include "envelope.h"
#include "ipc.h"
#include "names.h"

typedef struct gview_key {
    unsigned version;
    bool current, ec;
    X509 *cert;
    size_t nformer;
    X509 *former[GS_FORMER_CERTS_MAX]; /* the certificates cert replaced (group import-cert) */
} gview_key;

/* Does the RecipientInfo name this version: its certificate, or one that
 * `group import-cert` replaced (mail sent before a renewal)? */
bool gview_key_named(const gview_key *k, const env_recipient *ri);

typedef struct gview {
    int refs;
    uint64_t gen;
    char name[GS_NAME_MAX + 1];
    char address[GS_EMAIL_MAX + 1];
    unsigned methods;           /* enum gs_method bits */
    bool allow_pkcs1v15;
    bool secret_no_wrap;        /* the current secret key cannot wrap through this module */
    size_t nversions;
    gview_key *versions;        /* the group key versions, newest first */
    bool has_secret;
    unsigned secret_version;
    X509 *chain_ca;             /* sent after the current certificate, or NULL */
    char key_policy[512];       /* discovery's "key_policy", compact JSON ("" if not sent) */
    gs_wrap member_wrap;        /* the group's wrap of member-certs copies */
    unsigned key_transports;    /* enum ipc_kt bits; 0: the token could not say (asked again next time) */
} gview;

/* Parses a VIEW answer (status 200, not "not modified"): 0, or -1. */
int gview_parse(const ipc_msg *reply, gview **out);
gview *gview_ref(gview *v);
void gview_unref(gview *v); /* NULL fine */
const gview_key *gview_current(const gview *v); /* NULL if none */

typedef struct gviews gviews;
gviews *gviews_new(void);
void gviews_free(gviews *c);
/* The cached view of group `name` fetched at generation gen, else NULL;
 * borrowed (take a reference to keep it). want_any: return it whatever its
 * generation (to ask "not modified?"). */
gview *gviews_get(gviews *c, const char *name, uint64_t gen, bool want_any);
/* Keeps v (takes the caller's reference), replacing the group's old view. */
void gviews_put(gviews *c, gview *v);
void gviews_flush(gviews *c);

#endif
