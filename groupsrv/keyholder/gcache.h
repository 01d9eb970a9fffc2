/*
 * gcache.h: per token-worker caches of data derived from the database
 * (not a public API; owned by groupsrv/keyholder/).
 *
 * Loading a group (gs_group_load: rows, PEM certificates parsed, keys found
 * on the token) cost about as much CPU as the token's own RSA operation, on
 * every request. Each token worker keeps its loaded groups and reloads
 * them when gs_store_change_stamp says the database changed (any commit by
 * another connection or process, or a write through this worker's own
 * connection), checked by gcache_refresh before every job (an unwrap queued
 * before the worker's last read uses that read: khops.c, stamp_current).
 * The hsm_key objects
 * in a cached group find their token objects again after token loss
 * (hsm/), so a cached group survives it.
 *
 * Members found (gcache_member) are kept the same way: the change stamp is
 * read before any membership decision, after the request was queued, and any
 * commit (a removal, a new role or certificate, from any connection or
 * process, or a TRUNCATE on PostgreSQL) moves it and drops them all, so a
 * removed member is refused on the very next request. An identity that is
 * not a member is never kept: it is looked up every time.
 *
 * Also cached: the public key (DER SubjectPublicKeyInfo) of a member's
 * recorded certificate PEM, keyed by the exact PEM text (a changed record
 * is a different key).
 *
 * Threads: a gcache belongs to one token worker and is used only by it.
 */
#ifndef GS_SRV_GCACHE_H
#define GS_SRV_GCACHE_H

#include "groups.h"
#include "hsm.h"
#include "ipc.h"
#include "store.h"

typedef struct gcache gcache;

gcache *gcache_new(void);
void gcache_free(gcache *c); /* NULL fine */

/* Once per job, before anything else: reads the store's change stamp and
 * drops every cached group when it moved or gcache_mark_stale was called.
 * *changed (may be NULL) is set when the stamp moved since the last call.
 * GS_OK or GS_ERR_DB. */
gs_err gcache_refresh(gcache *c, gs_store *st, int *changed);

/* gcache_mark_stale was called since the last gcache_refresh: the next
 * job must refresh (a caller that may skip the stamp asks first). */
int gcache_is_stale(const gcache *c);

/* The loaded group `name`, borrowed: valid until the next gcache_refresh
 * or gcache_free on this cache (so for the rest of the current job).
 * Errors as gs_group_load (GS_ERR_NOT_FOUND, GS_ERR_HSM, GS_ERR_DB, ...);
 * failures are not cached. */
gs_err gcache_group(gcache *c, gs_store *st, hsm_ctx *hsm, const char *name, gs_group **out);

/* The member `identity` (exactly these bytes) of group group_id, borrowed
 * like a group: valid until the next gcache_refresh or gcache_free. Read
 * from the store (gs_store_member_get, which compares without case) when
 * not kept, and then kept; a member whose recorded address differs from
 * identity other than in ASCII case is no match (gcache_same_address).
 * Errors as gs_store_member_get (GS_ERR_NOT_FOUND for a non-member,
 * GS_ERR_DB), GS_ERR_NOMEM; failures are not cached. */
gs_err gcache_member(gcache *c, gs_store *st, int64_t group_id, const char *identity, const gs_store_member **out);

/* identity and recorded are one address but for ASCII case (the members
 * lookups of both stores must mean no more than that). */
bool gcache_same_address(const char *identity, const char *recorded);

/* A token operation with a cached key failed in a way a fresh load might
 * explain (key missing from the token): reload on the next request. Does
 * not free anything now (the current request may still use the group). */
void gcache_mark_stale(gcache *c);

/* Key transports the group's current key accepts (GCACHE_KT_* bits), for
 * the discovery answer: RSA-OAEP always, RSA-OAEP-256 where the token has
 * it, PKCS#1 v1.5 where the group allows it; ECDH for EC keys. Probed on
 * the token once per cached load of g. 0 bits, not cached, when nothing
 * can be said now: no current key, a current version this token does not
 * hold yet (a replica), or a probe that failed for another reason than
 * the mechanism or the key's policy. */
enum { GCACHE_KT_OAEP = IPC_KT_OAEP, GCACHE_KT_OAEP256 = IPC_KT_OAEP256, GCACHE_KT_PKCS1V15 = IPC_KT_PKCS1V15,
       GCACHE_KT_ECDH = IPC_KT_ECDH };
unsigned gcache_key_transports(gcache *c, hsm_ctx *hsm, const gs_group *g);

/* 0 when the group's current secret key cannot wrap content keys through
 * this module: a key on the token made to wrap with CKM_AES_KEY_WRAP
 * (made where the token offered it: directly, or through another module)
 * while this module does not offer CKM_AES_KEY_WRAP with CKF_WRAP
 * (p11-kit's RPC, a network HSM's client library), so every
 * deliver=group-secret and rewrap to group-secret is refused. 1 otherwise,
 * and whenever it cannot be said (no current secret, a sealed one, a key
 * built on CKM_AES_ECB, an attribute read that failed): discovery then
 * lists what the group was made with, as before. Reads the key's
 * attributes only on a module without AES key wrap. */
int gcache_secret_wraps(hsm_ctx *hsm, const gs_group *g);

/* 1 when spki (DER SubjectPublicKeyInfo, as the network process read it
 * from the caller's certificate) is the public key of the certificate in
 * pem (the member's recorded one), else 0 (also for an unparsable pem). */
int gcache_spki_matches_pem(gcache *c, const unsigned char *spki, size_t spki_len, const char *pem);

#endif
