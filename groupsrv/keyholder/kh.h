/*
 * kh.h: what the files of groupsrv/keyholder/ share (not a public API).
 * keyholder.c runs the process: the links, the queue, answers held until
 * their audit records are durable; khops.c is the work the token workers
 * do for each message type.
 *
 * A job is one request frame. The I/O loop makes it, the fair queue holds
 * it, one token worker runs it (building job->reply and writing its audit
 * records), and the I/O loop sends the reply once the records are durable,
 * or drops it when the link it came from is gone.
 */
#ifndef GS_KH_H
#define GS_KH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "audit.h"
#include "ca.h"
#include "config.h"
#include "gcache.h"
#include "groups.h"
#include "hsm.h"
#include "ipc.h"
#include "ratelimit.h"
#include "store.h"
#include "tokenq.h"

struct kh_link;

struct kh_job {
    tq_job tq;                     /* the queue's part */
    struct kh *kh;
    struct kh_link *link;          /* NULL once the link is gone: the answer is dropped */
    unsigned long long link_epoch; /* the link's epoch when the frame came: sent only on that link (keyholder.c) */
    struct kh_job *lprev, *lnext;  /* the link's outstanding jobs (I/O loop only) */
    struct kh_job *next;           /* the done list, then the held list */
    unsigned char *payload;        /* the request's payload (owned; msg points into it) */
    size_t len;
    ipc_msg msg;
    ipc_buf reply;                 /* built by the worker (may hold a content key) */
    unsigned long long audit_first, audit_last; /* its audit records (0: none) */
    unsigned long long arrival;    /* kh->arrivals when the I/O loop queued it (khops.c, stamp_current) */
    int syncer_owes;               /* held, and the syncer must send it (io->mu) */
    /* Answered a database failure (khops.c, answer_gs_error): its time is
     * the database's (up to [db] timeout, a busy timeout), no sample of
     * the token queue's service time. */
    bool db_failed;
    /* Its rate-limit token was taken (khops.c, rate_limit;
     * ratelimit_take_once): given back by the I/O loop's pass
     * (kh_worker.gave_back, tq.worker_only) and run again by a worker,
     * it is charged once. */
    bool rl_taken;
};

/* One per token worker thread: its own database connection and caches. */
struct kh_worker {
    struct kh *kh;
    unsigned index;
    gs_store *store;
    gcache *gc;
    /* The audit records of the answer this worker held and syncs itself
     * after the job (keyholder.c, job_after); 0: none. */
    unsigned long long sync_first, sync_last;
    /* The change stamp this worker read last, and kh->arrivals just before
     * it was read; stamp_ok: it may answer for a later unwrap (khops.c,
     * stamp_current). */
    unsigned long long stamp_arrivals;
    int stamp_ok;
    /* The job being run paused to search the token again (khops.c,
     * search_again): its time is mostly that pause, no service time. */
    bool paused;
    /* The job being run reached the token (a decrypt, rewrap, wrap or
     * sign call): only then is an unwrap, rewrap, secret-key fetch or TLS
     * signature a sample of the token's service time, and an
     * authorisation check or member change (the database alone, though
     * queued in the token's class) never. One refused before the token
     * (not a member, a bad certificate, an unknown group), or an
     * authorisation check (every request with a bad body makes one),
     * took microseconds of the database and nothing of the token; taken
     * as samples, a stream of them pulled the estimate under TQ_INLINE_US
     * on a token whose unwraps take milliseconds, and the I/O loop then ran
     * unwraps itself (tokenq_run_here): the token's milliseconds on the
     * loop, and the loop's own group cache filled from the token by
     * requests it then refused. */
    bool token_used;
    /* The deadline of the job being run (CLOCK_MONOTONIC seconds, the
     * network process's [server] timeout); 0: none. */
    double deadline_s;
    /* The I/O loop's own context (tokenq_run_here, keyholder.c): it never
     * syncs the audit log itself and never pauses (the I/O loop must not
     * wait for the disk or a search again, nor run the health check of a
     * token that failed): a job that would pause or check is
     * given back (gave_back) before anything of it is audited or sent,
     * and a worker runs it from the start. */
    bool io_loop;
    bool gave_back;
};

struct kh {
    const struct gs_config *cfg;
    hsm_ctx *hsm;
    /* NULL before `groupsrv ca init`. Replaced whole at a SIGHUP that finds
     * the CA certificate renewed (`ca renew-cert`); the replaced ones stay
     * allocated until exit (a worker may be issuing with one), at most
     * KH_CA_KEPT, kept under tls_lock's write side. */
    _Atomic(gs_ca *) ca;
#define KH_CA_KEPT 16
    gs_ca *ca_kept[KH_CA_KEPT];
    unsigned n_ca_kept;
    audit_log *audit;
    ratelimit *rl;
    tokenq *q;
    pthread_rwlock_t tls_lock;     /* read: a signature in progress; write: a reload */
    /* A reload's search for the [tls] key failed and has not succeeded
     * since: a network process tries a reload answered 503 again, and the
     * failure is logged once, not at every try (khops.c, op_info). */
    atomic_bool tls_reload_failing;
    hsm_key *tls_key;              /* [tls] key = pkcs11:..., else NULL */
    atomic_ulong gen;              /* moves whenever a worker sees the database change */
    atomic_ullong arrivals;        /* requests queued so far (the I/O loop counts, workers read) */
    double max_queue_s;
    size_t link_budget;            /* bytes of request frames outstanding per link ([server] keyholder_queue_max) */
    unsigned batch_max;
    unsigned workers;              /* token workers started */
    /* The I/O loop's state (keyholder.c). */
    struct kh_io *io;
};

/* khops.c */
void *kh_worker_init(void *kh, unsigned index);
void kh_worker_fini(void *worker);
/* Runs one job on a worker and leaves its encoded answer in job->reply;
 * the caller (keyholder.c) sends or holds it. False when the job was
 * dropped unrun (past its deadline), paused to search the token again
 * (a key version not shown yet) or answered a database failure: its time
 * is no service time. */
bool kh_job_run(void *worker, tq_job *job);
/* How a request is queued: its fairness flow (the identity it is made
 * for), its cost in turns and its service class. */
void kh_job_classify(const ipc_msg *m, char *flow, size_t flowcap, unsigned *cost, unsigned *cls, bool *batchable);
/* Finds and checks the [tls] key on the token (no-op without one): 0
 * (kh->tls_key replaced), or with the reason in errbuf (kh->tls_key
 * kept): -1 when the token did not show it or could not be read (away,
 * logged out, the key not found: it may be there later), -2 when the key
 * found is refused (its type, curve, attributes, or the local CA's key:
 * the same key is refused again until it is changed). */
int kh_tls_key_load(struct kh *kh, char *errbuf, size_t errlen);
/* An error answer for a request that never reached a worker. */
void kh_reply_error(ipc_buf *b, uint32_t type, uint64_t cookie, uint64_t gen, uint32_t status, unsigned retry,
                    const char *code, const char *msg);

#endif
