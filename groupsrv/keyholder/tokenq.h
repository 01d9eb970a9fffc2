/*
 * tokenq.h: a fair queue of token work in front of a pool of token workers.
 * Owned by groupsrv/keyholder/.
 *
 * Work arrives from the key holder's I/O loop, which must never wait for
 * the token, and is run by `workers` threads, each doing one token
 * operation at a time (with its own session, which the hsm pool hands it).
 * Between identities the queue is fair: each identity (the flow key) has
 * its own FIFO and the flows take turns by deficit round robin, so a client
 * with 60 connections gets the same share of the token as one with a single
 * connection, and a batch of N items counts as N turns. Within one
 * identity the order is first come, first served.
 *
 * Bounded: at most max_jobs queued (TQ_FULL above that; one job marked
 * reserved may be queued past it at a time), and a job whose
 * expected wait exceeds the caller's limit is refused at once (TQ_SHED) so
 * that it can be answered 503 with Retry-After instead of waiting. The
 * expected wait is the work queued ahead of the new job in round-robin
 * order (each other flow's backlog, up to the new job's own position)
 * times the measured service time, divided by the workers.
 *
 * Threads: submit, cancel and stop from any thread (one mutex); the run
 * callback runs on a worker thread and owns the job from then on: the
 * queue never touches a job after handing it out.
 */
#ifndef GS_KH_TOKENQ_H
#define GS_KH_TOKENQ_H

#include <stdbool.h>
#include <stddef.h>

typedef struct tokenq tokenq;
struct tq_flow;

/* Embedded in the caller's job; set cost and cls before submitting. */
typedef struct tq_job {
    struct tq_job *next;
    struct tq_flow *flow;   /* set while queued */
    unsigned cost;          /* turns this job takes (>= 1) */
    unsigned cls;           /* TQ_TOKEN or TQ_LIGHT: service times are measured per class */
    bool batchable;         /* takes about its class's measured time per unit of cost, so it may
                             * share a woken worker with other short jobs (tokenq_wake); false
                             * (a rewrap to a whole group, a key generation): a worker of its own */
    double est_s;           /* its estimated service time, at submit */
    bool reserved;          /* queued even when max_jobs are, one such job at a time: work that is
                             * no client's (the network process's TLS set-up), which a queue
                             * filled by clients must not refuse */
    bool over_cap;          /* set by the queue: this reserved job was let in past max_jobs */
    bool worker_only;       /* never run by tokenq_run_here (a job it gave back) */
} tq_job;

enum { TQ_TOKEN = 0, TQ_LIGHT = 1, TQ_CLASSES };

typedef struct tokenq_ops {
    /* Per-worker state, made on the worker's thread before it takes work
     * (NULL fails tokenq_start); freed by fini on the same thread. */
    void *(*init)(void *arg, unsigned index);
    void (*fini)(void *worker);
    /* Runs one job; the job is the callback's from here on. Returns
     * true when it did the job's work, whose time is then a sample of its
     * class's service time; false when it dropped the job unrun (a request
     * past its deadline, answered at once), whose few microseconds say
     * nothing about the token: fed to the average, a backlog dropped
     * after a stall would make queued work look free and turn shedding
     * by expected wait off until real jobs rebuilt it. False too for a
     * job whose time was mostly a pause of its own (the key holder's
     * search again for a key not shown yet) or the database's (a failure
     * after a timeout), which says as little. */
    bool (*run)(void *worker, tq_job *job);
    /* Optional: runs on the same worker after each run, outside the
     * measured service time and before the worker takes its next job
     * (work that follows a job but is not the token's: the key holder's
     * audit round when it has nothing else to do). */
    void (*after_run)(void *worker);
    void *arg;
} tokenq_ops;

/* A queue with `workers` threads (1..256) and room for max_jobs. NULL on
 * failure (out of memory, a thread or a worker's init failed). */
tokenq *tokenq_start(unsigned workers, unsigned max_jobs, const tokenq_ops *ops);

typedef enum tq_verdict {
    TQ_QUEUED = 0,
    TQ_SHED,     /* the expected wait exceeds max_wait_s */
    TQ_FULL,     /* max_jobs are queued */
    TQ_STOPPED,  /* tokenq_stop was called */
} tq_verdict;

/* Queues job under flow_key (copied). max_wait_s <= 0: no limit.
 * *expected_wait_s (may be NULL) gets the estimate, also when refused. */
tq_verdict tokenq_submit(tokenq *q, tq_job *job, const char *flow_key, double max_wait_s, double *expected_wait_s);

/* Batches: tokenq_submit_deferred queues like tokenq_submit but wakes no
 * worker; the caller queues every job its loop turn brought, then calls
 * tokenq_wake once. tokenq_wake wakes as many sleeping workers as the
 * queued work needs: one per job while the measured service time of the
 * queued jobs is unknown or long (a token call: each job gets a worker of
 * its own, in parallel), but one worker for about TQ_BATCH_US of queued
 * work when the jobs are short, which that worker runs one after the
 * other without sleeping in between (a wake-up, and the sleep it ends,
 * cost more than such a job). Only jobs marked batchable are shared so:
 * the class's average says nothing about a job of another kind that
 * shares the class, which could hold a shared worker for seconds while
 * the jobs behind it wait and other workers sleep. At least one when
 * anything is queued. */
#define TQ_BATCH_US 200
tq_verdict tokenq_submit_deferred(tokenq *q, tq_job *job, const char *flow_key, double max_wait_s,
                                  double *expected_wait_s);
void tokenq_wake(tokenq *q);

/* Run-to-completion: the calling thread (the key holder's I/O loop) runs
 * the queued work itself, in the queue's fair order, instead of waking a
 * worker, when the hand-over (a wake-up, and the sleep it ends) would cost
 * more than the work: every worker is asleep and nothing runs (so no job
 * waits for a worker's token session, and the order is the queue's), and
 * every queued job is batchable, of class TQ_TOKEN and cost 1, not marked
 * worker_only, with that class's measured service time under TQ_INLINE_US
 * and all of them together under TQ_BATCH_US. `run` gets each job as the
 * workers' run callback does and returns TQ_RAN (a sample of the service
 * time, as a worker's), TQ_RAN_UNMEASURED (tokenq_ops.run's false), or
 * TQ_GAVE_BACK: the job would have to wait (the key holder's search
 * again for a key not shown yet pauses up to 120 ms), which the calling
 * thread must not; the callback has queued it again with worker_only set,
 * and the caller's tokenq_wake afterwards wakes a worker for it. The time
 * until a job was given back is a sample as well: it was spent here.
 * after_run is not called. Returns the number of jobs taken (0: none
 * qualified). The caller calls tokenq_wake after it either way. */
#define TQ_INLINE_US 100
enum { TQ_RAN = 0, TQ_RAN_UNMEASURED, TQ_GAVE_BACK };
unsigned tokenq_run_here(tokenq *q, int (*run)(void *ctx, tq_job *job), void *ctx);

/* Removes a job that has not started; true if it was still queued (it is
 * then the caller's again), false if a worker has it. */
bool tokenq_cancel(tokenq *q, tq_job *job);

/* Refuses new work, lets the workers finish everything queued, joins
 * them and frees the queue. NULL is fine. */
void tokenq_stop(tokenq *q);

/* Jobs queued or running (a snapshot; a run callback counts its own). */
unsigned tokenq_pending(tokenq *q);

typedef struct tokenq_stats {
    unsigned queued, running, flows, workers;
    unsigned idle;                /* workers asleep, waiting for work */
    double service_s[TQ_CLASSES]; /* measured service time per unit of cost (jobs run, not dropped) */
} tokenq_stats;
void tokenq_get_stats(tokenq *q, tokenq_stats *out);

#endif
