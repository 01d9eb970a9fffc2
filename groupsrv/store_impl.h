/*
 * store_impl.h: what a store backend provides (internal to groupsrv/store*.c).
 *
 * store.c is the one place that chooses a backend (gs_store_open: a
 * postgresql:// URI opens store_pg.c, anything else is a SQLite file for
 * store_sqlite.c), checks the arguments every backend would check the same
 * way, and forwards each call through the backend's ops table. A backend's
 * handle starts with a struct gs_store (its `base`), so a gs_store pointer
 * converts to the backend's own type.
 *
 * Ops get arguments already validated by store.c and follow store.h's
 * contract (outputs cleared by store.c before the call).
 */
#ifndef GS_STORE_IMPL_H
#define GS_STORE_IMPL_H

#include "store.h"

struct gs_store_ops {
    const char *name; /* "sqlite", "postgresql" */
    void (*close)(gs_store *st);
    gs_err (*change_stamp)(gs_store *st, uint64_t *stamp);
    gs_err (*check_location)(gs_store *st); /* NULL: nothing to check */
    /* Before a write (gs_store_begin, a write outside a transaction,
     * the keys lock on a read-write handle): GS_OK or the reason the
     * database must not be written now. NULL: nothing to check. */
    gs_err (*write_check)(gs_store *st);
    gs_err (*check_integrity)(gs_store *st); /* gs_store_check_integrity; NULL: nothing to check */
    gs_err (*begin)(gs_store *st);
    gs_err (*commit)(gs_store *st);
    void (*rollback)(gs_store *st);
    gs_err (*read_begin)(gs_store *st); /* NULL: snapshots are no-ops */
    void (*read_end)(gs_store *st);
    gs_err (*keys_lock_try)(gs_store *st, bool *got); /* the keys lock without waiting */
    void (*keys_unlock)(gs_store *st);
    gs_err (*ca_get)(gs_store *st, gs_store_ca **out);
    gs_err (*ca_put)(gs_store *st, const char *key_label, const char *cert_pem, bool replicable,
                     const gs_store_keyrec *rec);
    gs_err (*ca_set_cert)(gs_store *st, const char *cert_pem);
    gs_err (*group_add)(gs_store *st, const gs_store_group *g, int64_t *id);
    gs_err (*group_get)(gs_store *st, const char *name, gs_store_group **out);
    gs_err (*group_list)(gs_store *st, gs_store_group ***out, size_t *n);
    /* wrap: OAEP or PKCS1V15; NOT_FOUND without the group */
    gs_err (*group_set_member_wrap)(gs_store *st, int64_t group_id, gs_wrap wrap);
    gs_err (*group_key_add)(gs_store *st, int64_t group_id, unsigned version, const char *token_label,
                            const char *cert_pem, gs_key_state state, const gs_store_keyrec *rec);
    gs_err (*group_key_set_cert)(gs_store *st, int64_t group_id, unsigned version, const char *cert_pem);
    gs_err (*group_key_retire)(gs_store *st, int64_t group_id, unsigned version);
    gs_err (*group_keys)(gs_store *st, int64_t group_id, gs_store_group_key **out, size_t *n);
    gs_err (*secret_add)(gs_store *st, int64_t group_id, unsigned version, const char *token_label,
                         const unsigned char kek_id[GS_KEK_ID_LEN], gs_key_state state, const gs_store_keyrec *rec);
    gs_err (*secrets)(gs_store *st, int64_t group_id, gs_store_secret **out, size_t *n);
    gs_err (*secret_retire)(gs_store *st, int64_t group_id, unsigned version);
    gs_err (*secret_by_kek_id)(gs_store *st, const unsigned char *kek_id, int64_t *group_id, unsigned *version);
    gs_err (*seal_key_put)(gs_store *st, const char *label, const char *weakenings);
    gs_err (*seal_keys)(gs_store *st, gs_store_seal_key **out, size_t *n);
    gs_err (*member_add)(gs_store *st, int64_t group_id, const char *email, gs_role role, const char *cert_pem);
    gs_err (*member_remove)(gs_store *st, int64_t group_id, const char *email);
    gs_err (*member_get)(gs_store *st, int64_t group_id, const char *email, gs_store_member **out);
    gs_err (*member_list)(gs_store *st, int64_t group_id, gs_store_member **out, size_t *n);
    /* wrap DEFAULT stores NULL (the group's); NOT_FOUND without the member */
    gs_err (*member_set_wrap)(gs_store *st, int64_t group_id, const char *email, gs_wrap wrap);
    /* NULL: the backend has no roles to check */
    gs_err (*check_grants)(gs_store *st, bool audit);
    /* gs_store_clock_offset; NULL: no clock of its own */
    gs_err (*clock_offset)(gs_store *st, int64_t *offset_ms);
    /* Audit chains (NULL in a backend without an audit table). */
    gs_err (*audit_head)(gs_store *st, const char *instance, int64_t *seq, char **line);
    gs_err (*audit_append)(gs_store *st, const char *instance, int64_t first_seq, char *const *lines, size_t n);
    gs_err (*audit_instances)(gs_store *st, char ***out, size_t *n);
    gs_err (*audit_read)(gs_store *st, const char *instance, int64_t after_seq, size_t limit,
                         gs_store_audit_row **out, size_t *n);
    gs_err (*audit_chain_lock)(gs_store *st, const char *instance);
    void (*audit_chain_unlock)(gs_store *st, const char *instance);
    /* gs_store_write_unsettled; NULL: never */
    bool (*write_unsettled)(gs_store *st);
    /* gs_store_take_unreplicated; NULL: never */
    bool (*take_unreplicated)(gs_store *st);
};

struct gs_store {
    const struct gs_store_ops *ops;
    int schema;   /* schema version once open */
    int migrated_from; /* the older schema version this open migrated; 0: none */
    bool in_tx;   /* an explicit gs_store_begin is open */
    bool commit_unknown; /* the last commit failed with its outcome unknown (gs_store_commit_unknown) */
    bool in_read; /* a gs_store_read_begin snapshot is open */
    bool readonly;
    unsigned keys_locked; /* gs_store_keys_lock depth */
    unsigned keys_lock_wait_ms; /* gs_store_keys_lock_wait; 0: GS_STORE_KEYS_LOCK_WAIT_S */
};

gs_err gs_store_sqlite_open(const char *path, unsigned flags, gs_store **out);
gs_err gs_store_pg_open(const char *url, unsigned flags, gs_store **out);
unsigned gs_store_idle_check(void);
/* gs_store_set_app_name's name ("" when none). */
const char *gs_store_app_name(void);

/* Shared by the backends. */
/* The weakenings of a key record: "" without a record or a list. */
const char *gs_store_rec_weak(const gs_store_keyrec *rec);
/* Room for more rows in a result array: doubles *cap (first when empty),
 * overflow checked. Returns the (maybe moved) array, or NULL with the old
 * one untouched and *cap unchanged. */
void *gs_store_grow_array(void *list, size_t *cap, size_t elem, size_t first);
int64_t gs_store_now(void);
/* A group's member wrap as stored: OAEP or else PKCS#1 v1.5 (the default). */
gs_wrap gs_store_group_wrap(gs_wrap w);
/* A wrap column's text: NULL (members: the group's) or an unknown name is DEFAULT. */
gs_wrap gs_store_wrap_from_text(const char *text);
/* Runs the caller's statements in a transaction unless one is open:
 * *mine says whether this call opened it; end commits or rolls back. */
gs_err gs_store_tx_begin_if_needed(gs_store *st, bool *mine);
gs_err gs_store_tx_end_if_mine(gs_store *st, bool mine, gs_err err);
/* A backend's migration: under the database's own lock (another process
 * may have migrated it, or a newer program written it, since v was read)
 * reads the version again into *found, then brings an older schema to
 * GS_STORE_SCHEMA_VERSION in one transaction. GS_OK when the schema is
 * current now (*found says whether this call changed it); GS_ERR_SCHEMA,
 * nothing changed, when *found is newer; a step's error otherwise. */
typedef gs_err (*gs_store_migrate_fn)(gs_store *st, int *found);
/* A backend found schema version v: GS_OK (st->schema set) when current
 * or once migrate brought it there (st->migrated_from set when this open
 * migrated it); GS_ERR_SCHEMA when newer, or older on a read-only store
 * (GS_ERR_NOT_FOUND for version 0 there); migrate's error, its detail
 * naming the versions, when a step failed. where names the database in
 * the message. */
gs_err gs_store_settle_schema(gs_store *st, int v, gs_store_migrate_fn migrate, const char *where);

#endif
