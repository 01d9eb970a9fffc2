/*
 * spool.h: the exploder's durable state: lists, members, and the queue of
 * accepted messages with one row per recipient.
 *
 * One SQLite file (SPOOL/exploder.db, WAL mode, synchronous=FULL, schema
 * version in PRAGMA user_version) plus message files in SPOOL/msg/. A file
 * is always written completely (temp file, fsync, rename, fsync of the
 * directory) BEFORE the row that names it is committed, so a committed row
 * never points at a missing or half-written file; a crash in between
 * leaves only an unreferenced file, which spool_sweep removes later. The
 * file's size and SHA-256 go into the same transaction (table files), so
 * a file damaged later is found (spool_file_check) and never sent.
 *
 * Invariants the queue runner relies on:
 *  - spool_accept commits the message and all its recipients in one
 *    transaction: either the MTA gets success and every member has a
 *    pending row, or it gets a failure and nothing is queued;
 *  - a recipient goes from pending to delivered only through
 *    spool_batch_done, called after the relay accepted it; a crash before
 *    that call leaves it pending (it is sent again: duplicates, no loss).
 *
 * Ownership: structs and arrays returned through ** are freed with the
 * matching *_free; strings inside them belong to the struct.
 */
#ifndef GS_XP_SPOOL_H
#define GS_XP_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xp.h"

typedef struct spool spool;

typedef enum xp_mode { XP_MODE_FORWARD = 1, XP_MODE_GROUP_SECRET, XP_MODE_MEMBER_CERTS } xp_mode;
const char *xp_mode_name(xp_mode m);
/* "forward" | "group-secret" | "member-certs" -> mode; 0 if unknown. */
xp_mode xp_mode_parse(const char *s);

typedef struct xp_list {
    int64_t id;
    char *address;        /* the list address, e.g. eng@lists.example.org */
    char *server;         /* group server base URL */
    char *group;          /* group name on the server */
    xp_mode mode;
    char *cert, *priv_path, *cacert; /* client certificate, its private key FILE, CA: paths only, NULL = [tls] */
    char *group_cert;     /* PEM of the group certificate (chain), NULL if not stored */
    bool require_encrypted; /* refuse mail not encrypted to group_cert (default) */
    bool members_only;      /* refuse senders that are not members */
    /* The group server's discovery answer as last fetched (groupinfo.h):
     * comma lists, NULL when never fetched (or the server did not say). */
    char *kt_algs, *group_methods; /* key transports the group accepts; its methods */
    int64_t group_info_at;  /* when it was fetched (unix seconds), 0 = never */
    int64_t group_info_tried; /* when fetching it last failed, 0 = never */
    int64_t group_cert_at;  /* when the group server's current certificate was last fetched, 0 = never */
    int64_t n_members;      /* list members when read */
} xp_list;
void xp_list_free(xp_list *l);

/* Opens (creating the directory, msg/ and the schema if needed; an older
 * schema is migrated). XP_ERR_SCHEMA: the schema is newer than this
 * program's (a downgrade), nothing changed. */
xp_err spool_open(const char *dir, spool **out);
void spool_close(spool *s);
/* SPOOL/msg/NAME into buf. */
xp_err spool_msg_path(const spool *s, const char *name, char *buf, size_t bufsz);

/* ---- lists ---- */
xp_err spool_list_create(spool *s, const xp_list *l);
xp_err spool_list_get(spool *s, const char *address, xp_list **out); /* XP_ERR_NOTFOUND */
/* Changes a list's mode and sender policy (l->id names it). Messages not yet
 * prepared are prepared under the new mode. */
xp_err spool_list_set_policy(spool *s, const xp_list *l);
xp_err spool_list_get_by_id(spool *s, int64_t id, xp_list **out);
/* Stores the discovery answer of a list's group (either list may be NULL:
 * not said) fetched at `at`. */
xp_err spool_list_set_group_info(spool *s, int64_t list_id, const char *kt_algs, const char *methods,
                                 int64_t at);
/* Notes that fetching it failed at `at` (what was cached stays). */
xp_err spool_list_group_info_tried(spool *s, int64_t list_id, int64_t at);
/* Replaces a list's group certificates (PEM: every key version it knows)
 * by pem if they are still old_pem (NULL: none), noting `at` as the time
 * the group server was asked; XP_ERR_EXISTS when they changed meanwhile
 * (another deliver added one: read them again and retry). */
xp_err spool_list_set_group_cert(spool *s, int64_t list_id, const char *old_pem, const char *pem, int64_t at);
/* Notes that the group server said at `at` that its current certificate
 * is one the list knows. */
xp_err spool_list_group_cert_checked(spool *s, int64_t list_id, int64_t at);
xp_err spool_member_add(spool *s, int64_t list_id, const char *address);    /* XP_ERR_EXISTS */
/* Adds many in one transaction; existing ones are skipped (*added counts
 * the new ones). */
xp_err spool_members_add(spool *s, int64_t list_id, char *const *addrs, size_t n, size_t *added);
xp_err spool_member_remove(spool *s, int64_t list_id, const char *address); /* XP_ERR_NOTFOUND */
bool spool_member_is(spool *s, int64_t list_id, const char *address);
/* Members in address order; free with xp_strv_free. */
xp_err spool_members(spool *s, int64_t list_id, char ***addrs, size_t *n);
void xp_strv_free(char **v, size_t n);
/* Queue counts of a list: messages not done, pending recipients. */
xp_err spool_list_stats(spool *s, int64_t list_id, int64_t *messages, int64_t *pending);

/* ---- message files ---- */

/* Whether message file `name` is as it was written: its size and SHA-256
 * are recorded (table files) in the transaction that commits the row
 * naming it. XP_OK when it matches or was written before sizes were
 * recorded; XP_ERR_DAMAGED (why says how: missing, cut short, changed)
 * when it does not: it must not be used; another error when it cannot be
 * read now. */
xp_err spool_file_check(spool *s, const char *name, char *why, size_t whysz);
/* Moves a damaged message file to SPOOL/damaged/ (dest: where, for the
 * log) and forgets its record. */
xp_err spool_set_aside(spool *s, const char *name, char *dest, size_t destsz);

/* ---- accepting ---- */

typedef enum xp_msg_kind { XP_KIND_LIST = 0, XP_KIND_BOUNCE = 1 } xp_msg_kind;

/* Stores data as a new message of list l from sender (may be "" for the
 * null sender) with one pending recipient per current member, and commits.
 * Returns XP_OK only when durably committed. */
xp_err spool_accept(spool *s, const xp_list *l, const char *sender, const char *message_id, const void *data,
                    size_t len, int64_t *msg_id);

/* ---- queue runner ---- */

typedef struct xp_msg {
    int64_t id;
    int64_t list_id;     /* 0 for bounces */
    xp_msg_kind kind;
    char *sender;        /* envelope sender of the original ("" = null) */
    char *message_id;    /* Message-ID header, for logs and bounces; "" if none */
    char *file;          /* name in msg/ of the message as received */
    char *out_file;      /* name in msg/ of the message to send (member-certs copies: the
                            template each member's copy is made from); NULL until prepared */
    int64_t received;
    int64_t attempts;    /* prepare attempts */
} xp_msg;
void xp_msg_free(xp_msg *m);

/* A message still to be prepared (state new) with next_attempt <= now.
 * XP_ERR_NOTFOUND when there is none. */
xp_err spool_next_to_prepare(spool *s, int64_t now, xp_msg **out);
/* The prepared file is written and synced: mark ready. */
xp_err spool_mark_ready(spool *s, int64_t msg_id, const char *out_file);
/* Preparing failed for now: try again at next_at. */
xp_err spool_defer_prepare(spool *s, int64_t msg_id, int64_t next_at, const char *why);

/* Why a member of a member-certs list got no copy (their failed row's
 * last_error; the bounce counts them). */
#define XP_NO_CERT_REASON "no certificate at the group server"
/* The bounce's reason for a message whose spool file was damaged. */
#define XP_DAMAGED_REASON "the list server's stored copy of it was damaged before it could be sent; send it again"
/* appended to a recipient's last error when spool_expire gives it up */
#define XP_EXPIRED_SUFFIX " (expired)"
/* Member-certs with one copy per member: in one transaction, each pending
 * recipient whose address (case-insensitive) is member[k] gets ri[k] as
 * its own RecipientInfo; the others fail with XP_NO_CERT_REASON (their
 * number in *without, may be NULL); then the message is ready. */
xp_err spool_mark_ready_members(spool *s, int64_t msg_id, const char *out_file, char *const *member,
                                unsigned char *const *ri, const size_t *ri_len, size_t n, int64_t *without);

typedef struct xp_batch {
    xp_msg *msg;
    int64_t *rcpt_ids;
    char **rcpts;
    int64_t *attempts;   /* delivery attempts so far, per recipient */
    unsigned char **ri;  /* member-certs: each recipient's own RecipientInfo (DER), else NULL */
    size_t *ri_len;
    size_t n;
} xp_batch;
void xp_batch_free(xp_batch *b);

/* Up to max due pending recipients of one ready message (the one with the
 * oldest due recipient). XP_ERR_NOTFOUND when nothing is due. */
xp_err spool_next_batch(spool *s, int64_t now, unsigned max, xp_batch **out);

typedef enum xp_rcpt_outcome { XP_RCPT_DELIVERED = 1, XP_RCPT_FAILED, XP_RCPT_DEFERRED } xp_rcpt_outcome;

/* Records the outcome of every recipient of b in ONE transaction.
 * next_at[i] is used for deferred ones; why[i] may be NULL. */
xp_err spool_batch_done(spool *s, const xp_batch *b, const xp_rcpt_outcome *outcome, const int64_t *next_at,
                        char *const *why);

/* Gives up on every pending recipient of a message (permanent failure of
 * the message itself, e.g. it can no longer be parsed, or the group server
 * refused it). why is for the log; reason (may be NULL) is the one plain
 * line the sender's bounce gives. */
xp_err spool_fail_pending(spool *s, int64_t msg_id, const char *why, const char *reason);

/* Gives up on recipients pending in messages received before cutoff
 * (marked failed, reason "expired"). Returns how many through *n. */
xp_err spool_expire(spool *s, int64_t cutoff, int64_t *n);

typedef struct xp_finished {
    xp_msg *msg;
    int64_t delivered, failed;
    int64_t no_cert;   /* failed with XP_NO_CERT_REASON (member-certs) */
    int64_t expired;   /* failed because still pending after max_age (spool_expire) */
    char *last_error;  /* of some failed recipient, or of the prepare step; may be NULL */
    char *reason;      /* the plain line for the sender when the message failed as a whole, or NULL */
    char *relay_reply; /* a relay's 5xx reply that refused a copy as a whole (DATA or its end), or NULL */
    char *rcpt_addrs;  /* with relay_reply: the message's recipients, separated by spaces (to mask in it); or NULL */
} xp_finished;

/* The next message (new or ready) with no pending recipient left, or
 * XP_ERR_NOTFOUND. The caller bounces if needed, then spool_finish. */
xp_err spool_next_finished(spool *s, xp_finished *out);
void xp_finished_clear(xp_finished *f);
/* Deletes the message rows, then its files; when bounce_rcpt is not NULL,
 * queues the bounce text in the same transaction. */
xp_err spool_finish(spool *s, const xp_msg *m, const char *bounce_rcpt, const void *bounce, size_t bounce_len);

/* Makes due at now whatever is scheduled after horizon (now plus the
 * longest retry interval): only a wall clock stepped back since it was
 * scheduled (NTP, a wrong RTC at boot) puts a retry there, and it would
 * otherwise wait for as long as the step. *n: rows made due. */
xp_err spool_clock_stepped_back(spool *s, int64_t now, int64_t horizon, int64_t *n);
/* Earliest next_attempt of anything pending (0 = nothing pending). */
xp_err spool_next_due(spool *s, int64_t *when);
/* Number of pending recipients plus messages waiting to be prepared. */
xp_err spool_pending_count(spool *s, int64_t *n);

/* Removes files in msg/ that no row names and that are older than
 * min_age seconds (left by a crash between file write and commit). */
xp_err spool_sweep(spool *s, int64_t now, int64_t min_age);

#endif
