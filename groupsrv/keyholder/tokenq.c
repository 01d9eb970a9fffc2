/*
 * tokenq.c: deficit round robin between identities, FIFO within each, a
 * pool of worker threads (see tokenq.h).
 *
 * Locked sections are marked `q->mu held`. Flows live in a small hash
 * table while they have queued jobs; the active ones also sit in a ring
 * that the workers walk. A flow leaves both when its last job is taken.
 */
#include "tokenq.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "util.h"

#define TQ_BUCKETS 1024
#define TQ_MAX_WORKERS 256
/* Service times are smoothed over about the last 16 jobs of their class. */
#define TQ_EWMA_WEIGHT 0.0625

struct tq_flow {
    struct tq_flow *hnext;           /* hash chain */
    struct tq_flow *rnext, *rprev;   /* the ring of flows with queued jobs */
    tq_job *head, *tail;
    double deficit;                  /* turns earned and not yet used */
    int in_turn;                     /* its turn has begun (its turn was earned) */
    double backlog_s;                /* estimated service time of its queued jobs */
    char key[];
};

struct worker {
    tokenq *q;
    pthread_t tid;
    unsigned index;
    int started, init_done, init_ok;
};

struct tokenq {
    pthread_mutex_t mu;
    pthread_cond_t work_cv, init_cv;
    struct tq_flow *buckets[TQ_BUCKETS];
    struct tq_flow *ring;            /* the flow whose turn it is */
    unsigned queued, running, flows, max_jobs, nworkers;
    unsigned sleeping;               /* workers waiting in work_cv */
    unsigned over_cap;               /* reserved jobs queued past max_jobs (0 or 1) */
    int stopping;
    double service_s[TQ_CLASSES];
    tokenq_ops ops;
    struct worker *workers;
};

static uint32_t hash_key(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

/* q->mu held. */
static struct tq_flow **flow_slot(tokenq *q, const char *key)
{
    struct tq_flow **pp = &q->buckets[hash_key(key) % TQ_BUCKETS];
    while (*pp != NULL && strcmp((*pp)->key, key) != 0)
        pp = &(*pp)->hnext;
    return pp;
}

/* q->mu held. */
static void ring_add(tokenq *q, struct tq_flow *f)
{
    if (q->ring == NULL) {
        f->rnext = f->rprev = f;
        q->ring = f;
        return;
    }
    /* At the tail: just before the flow whose turn it is. */
    f->rnext = q->ring;
    f->rprev = q->ring->rprev;
    q->ring->rprev->rnext = f;
    q->ring->rprev = f;
}

/* q->mu held. Drops an empty flow from the ring and the table. */
static void flow_drop(tokenq *q, struct tq_flow *f)
{
    if (f->rnext == f)
        q->ring = NULL;
    else {
        f->rprev->rnext = f->rnext;
        f->rnext->rprev = f->rprev;
        if (q->ring == f)
            q->ring = f->rnext;
    }
    struct tq_flow **pp = flow_slot(q, f->key);
    if (*pp == f)
        *pp = f->hnext;
    q->flows--;
    free(f);
}

/* q->mu held. The work queued ahead of a new job of flow `self` that
 * would add est_s: in round-robin order every other flow gets served up to
 * about as much as self has queued by then. */
static double wait_ahead(tokenq *q, const struct tq_flow *self, double est_s)
{
    double own = self ? self->backlog_s : 0, sum = own;
    struct tq_flow *f = q->ring;

    if (f == NULL)
        return 0;
    do {
        if (f != self)
            sum += f->backlog_s < own + est_s ? f->backlog_s : own + est_s;
        f = f->rnext;
    } while (f != q->ring);
    return sum / (double)q->nworkers;
}

static tq_verdict submit(tokenq *q, tq_job *job, const char *flow_key, double max_wait_s, double *expected_wait_s,
                         int wake)
{
    tq_verdict v = TQ_QUEUED;
    struct tq_flow **slot, *f;
    double wait;

    if (expected_wait_s != NULL)
        *expected_wait_s = 0;
    if (job->cost == 0)
        job->cost = 1;
    if (job->cls >= TQ_CLASSES)
        job->cls = TQ_TOKEN;
    pthread_mutex_lock(&q->mu);
    job->est_s = job->cost * q->service_s[job->cls];
    slot = flow_slot(q, flow_key);
    f = *slot;
    wait = wait_ahead(q, f, job->est_s);
    if (expected_wait_s != NULL)
        *expected_wait_s = wait;
    if (q->stopping)
        v = TQ_STOPPED;
    else if (q->queued >= q->max_jobs && !(job->reserved && q->over_cap == 0))
        v = TQ_FULL;
    else if (max_wait_s > 0 && wait > max_wait_s)
        v = TQ_SHED;
    if (v != TQ_QUEUED)
        goto out;
    if (f == NULL) {
        size_t n = strlen(flow_key);
        if ((f = calloc(1, sizeof(*f) + n + 1)) == NULL) {
            v = TQ_FULL;
            goto out;
        }
        memcpy(f->key, flow_key, n + 1);
        *slot = f;
        q->flows++;
        ring_add(q, f);
    }
    job->next = NULL;
    job->flow = f;
    if (f->tail != NULL)
        f->tail->next = job;
    else
        f->head = job;
    f->tail = job;
    f->backlog_s += job->est_s;
    /* Only one past the cap: a network process that sends its set-up
     * again and again (a compromised one) grows the queue by one, not
     * without bound. */
    job->over_cap = q->queued >= q->max_jobs;
    if (job->over_cap)
        q->over_cap++;
    q->queued++;
out:
    pthread_mutex_unlock(&q->mu);
    /* After the unlock: a worker woken while the mutex is held only
     * blocks on it again (a second sleep and wake per request). */
    if (v == TQ_QUEUED && wake)
        pthread_cond_signal(&q->work_cv);
    return v;
}

tq_verdict tokenq_submit(tokenq *q, tq_job *job, const char *flow_key, double max_wait_s, double *expected_wait_s)
{
    return submit(q, job, flow_key, max_wait_s, expected_wait_s, 1);
}

tq_verdict tokenq_submit_deferred(tokenq *q, tq_job *job, const char *flow_key, double max_wait_s,
                                  double *expected_wait_s)
{
    return submit(q, job, flow_key, max_wait_s, expected_wait_s, 0);
}

/* q->mu held. How many sleeping workers the queued work needs woken: a
 * job of unknown cost (its class not measured yet, or not batchable)
 * counts as a whole worker; batchable jobs of known short cost share one
 * per TQ_BATCH_US. */
static unsigned workers_needed(tokenq *q)
{
    double short_s = 0;
    unsigned need = 0;
    struct tq_flow *f = q->ring;

    if (f == NULL)
        return 0;
    do {
        for (tq_job *j = f->head; j != NULL; j = j->next) {
            if (!j->batchable || j->est_s <= 0 || j->est_s >= TQ_BATCH_US / 1e6)
                need++;
            else
                short_s += j->est_s;
        }
        f = f->rnext;
    } while (f != q->ring && need < q->sleeping);
    if (short_s > 0) {
        /* Rounded up (without libm: tests link this file alone). */
        double n = short_s / (TQ_BATCH_US / 1e6);
        unsigned whole = (unsigned)n;
        need += whole + (n > (double)whole);
    }
    return need < q->sleeping ? need : q->sleeping;
}

void tokenq_wake(tokenq *q)
{
    pthread_mutex_lock(&q->mu);
    unsigned n = workers_needed(q);
    pthread_mutex_unlock(&q->mu);
    /* After the unlock, as in submit. A worker that wakes to an empty
     * queue (another took the work) only sleeps again. */
    for (unsigned i = 0; i < n; i++)
        pthread_cond_signal(&q->work_cv);
}

static tq_job *take(tokenq *q);

/* q->mu held. Whether the queued work qualifies for tokenq_run_here. */
static bool inline_ok(tokenq *q)
{
    double sum = 0, svc = q->service_s[TQ_TOKEN];
    struct tq_flow *f = q->ring;

    if (f == NULL || q->stopping || q->running != 0 || q->sleeping != q->nworkers || svc <= 0 ||
        svc >= TQ_INLINE_US / 1e6)
        return false;
    do {
        for (tq_job *j = f->head; j != NULL; j = j->next) {
            if (!j->batchable || j->cls != TQ_TOKEN || j->cost != 1 || j->worker_only)
                return false;
            sum += svc;
        }
        f = f->rnext;
    } while (f != q->ring);
    return sum < TQ_BATCH_US / 1e6;
}

unsigned tokenq_run_here(tokenq *q, int (*run)(void *ctx, tq_job *job), void *ctx)
{
    tq_job *list = NULL, **tail = &list;
    unsigned n = 0;

    pthread_mutex_lock(&q->mu);
    if (!inline_ok(q)) {
        pthread_mutex_unlock(&q->mu);
        return 0;
    }
    /* All of it at once, in the fair order take() gives: a worker woken
     * meanwhile (spuriously) finds nothing, so no two threads share the
     * token's sessions beyond what the workers alone would. */
    while (q->ring != NULL) {
        tq_job *j = take(q);
        *tail = j;
        tail = &j->next;
        n++;
    }
    q->running += n;
    pthread_mutex_unlock(&q->mu);
    while (list != NULL) {
        tq_job *j = list;
        list = j->next;
        j->next = NULL;
        double t0 = util_monotonic_s();
        int how = run(ctx, j); /* j is not ours any more */
        double t = util_monotonic_s() - t0;
        pthread_mutex_lock(&q->mu);
        q->running--;
        /* A job given back is a sample too: its time until then was this
         * thread's own (the key holder's group load, token searches, before
         * the search again it gives back), and unmeasured, a stream of them
         * kept the time short and the I/O loop taking each. */
        if (how == TQ_RAN || how == TQ_GAVE_BACK)
            q->service_s[TQ_TOKEN] += TQ_EWMA_WEIGHT * (t - q->service_s[TQ_TOKEN]);
        pthread_mutex_unlock(&q->mu);
    }
    return n;
}

/* q->mu held; the ring is not empty. Deficit round robin: a flow earns
 * one turn when its turn begins, serves its head job once it has earned
 * the job's cost, keeps the turn only while what is left pays for the
 * next job, and otherwise passes the turn on. With every cost 1 this is
 * plain round robin, one job per flow per round. */
static tq_job *take(tokenq *q)
{
    for (;;) {
        struct tq_flow *f = q->ring;
        tq_job *j = f->head;
        if (!f->in_turn) {
            f->deficit += 1;
            f->in_turn = 1;
        }
        if (f->deficit + 1e-9 < (double)j->cost) {
            f->in_turn = 0;
            q->ring = f->rnext;
            continue;
        }
        f->deficit -= (double)j->cost;
        f->head = j->next;
        if (f->head == NULL)
            f->tail = NULL;
        f->backlog_s -= j->est_s;
        if (f->backlog_s < 0 || f->head == NULL)
            f->backlog_s = 0;
        q->queued--;
        if (j->over_cap) {
            q->over_cap--;
            j->over_cap = false;
        }
        j->next = NULL;
        j->flow = NULL;
        if (f->head == NULL)
            flow_drop(q, f);
        else if (f->deficit + 1e-9 < (double)f->head->cost) {
            f->in_turn = 0;
            q->ring = f->rnext;
        }
        return j;
    }
}

bool tokenq_cancel(tokenq *q, tq_job *job)
{
    bool found = false;

    pthread_mutex_lock(&q->mu);
    struct tq_flow *f = job->flow;
    if (f != NULL) {
        tq_job **pp = &f->head, *prev = NULL;
        while (*pp != NULL && *pp != job) {
            prev = *pp;
            pp = &(*pp)->next;
        }
        if (*pp == job) {
            *pp = job->next;
            if (f->tail == job)
                f->tail = prev;
            f->backlog_s -= job->est_s;
            if (f->backlog_s < 0 || f->head == NULL)
                f->backlog_s = 0;
            q->queued--;
            if (job->over_cap) {
                q->over_cap--;
                job->over_cap = false;
            }
            job->next = NULL;
            job->flow = NULL;
            found = true;
            if (f->head == NULL)
                flow_drop(q, f);
        }
    }
    pthread_mutex_unlock(&q->mu);
    return found;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    tokenq *q = w->q;
    void *ctx = q->ops.init ? q->ops.init(q->ops.arg, w->index) : q->ops.arg;
    int ok = q->ops.init == NULL || ctx != NULL;

    pthread_mutex_lock(&q->mu);
    w->init_done = 1;
    w->init_ok = ok;
    pthread_cond_broadcast(&q->init_cv);
    while (ok) {
        while (q->ring == NULL && !q->stopping) {
            q->sleeping++;
            pthread_cond_wait(&q->work_cv, &q->mu);
            q->sleeping--;
        }
        if (q->ring == NULL)
            break; /* stopping and drained */
        tq_job *j = take(q);
        unsigned cls = j->cls, cost = j->cost;
        q->running++;
        pthread_mutex_unlock(&q->mu);
        double t0 = util_monotonic_s();
        bool measured = q->ops.run(ctx, j); /* j is not ours any more */
        double per_unit = (util_monotonic_s() - t0) / (double)cost;
        pthread_mutex_lock(&q->mu);
        q->running--;
        /* A job dropped unrun is no sample (tokenq.h): after a stall, a
         * backlog of them would pull the average to near zero. */
        if (measured && q->service_s[cls] == 0)
            q->service_s[cls] = per_unit;
        else if (measured)
            q->service_s[cls] += TQ_EWMA_WEIGHT * (per_unit - q->service_s[cls]);
        if (q->ops.after_run != NULL) {
            pthread_mutex_unlock(&q->mu);
            q->ops.after_run(ctx);
            pthread_mutex_lock(&q->mu);
        }
    }
    pthread_mutex_unlock(&q->mu);
    if (ok && q->ops.fini != NULL)
        q->ops.fini(ctx);
    return NULL;
}

static void join_and_free(tokenq *q)
{
    pthread_mutex_lock(&q->mu);
    q->stopping = 1;
    pthread_cond_broadcast(&q->work_cv);
    pthread_mutex_unlock(&q->mu);
    for (unsigned i = 0; i < q->nworkers; i++)
        if (q->workers[i].started)
            pthread_join(q->workers[i].tid, NULL);
    /* Nothing can be queued now (workers drain before they exit), but a
     * worker whose init failed never drained: free what it left. */
    for (size_t b = 0; b < TQ_BUCKETS; b++)
        while (q->buckets[b] != NULL) {
            struct tq_flow *f = q->buckets[b];
            q->buckets[b] = f->hnext;
            free(f);
        }
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->work_cv);
    pthread_cond_destroy(&q->init_cv);
    free(q->workers);
    free(q);
}

tokenq *tokenq_start(unsigned workers, unsigned max_jobs, const tokenq_ops *ops)
{
    tokenq *q;
    int ok = 1;

    if (workers == 0 || workers > TQ_MAX_WORKERS || max_jobs == 0 || ops == NULL || ops->run == NULL)
        return NULL;
    if ((q = calloc(1, sizeof(*q))) == NULL)
        return NULL;
    if ((q->workers = calloc(workers, sizeof(*q->workers))) == NULL) {
        free(q);
        return NULL;
    }
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->work_cv, NULL);
    pthread_cond_init(&q->init_cv, NULL);
    q->ops = *ops;
    q->max_jobs = max_jobs;
    q->nworkers = workers;
    for (unsigned i = 0; i < workers; i++) {
        q->workers[i] = (struct worker){.q = q, .index = i};
        if (pthread_create(&q->workers[i].tid, NULL, worker_main, &q->workers[i]) != 0) {
            log_error("cannot start a token worker thread index=%u", i);
            ok = 0;
            break;
        }
        q->workers[i].started = 1;
    }
    /* Every worker has its session and database connection, or none works. */
    pthread_mutex_lock(&q->mu);
    for (unsigned i = 0; ok && i < workers; i++) {
        while (!q->workers[i].init_done)
            pthread_cond_wait(&q->init_cv, &q->mu);
        ok = q->workers[i].init_ok;
    }
    pthread_mutex_unlock(&q->mu);
    if (!ok) {
        join_and_free(q);
        return NULL;
    }
    return q;
}

void tokenq_stop(tokenq *q)
{
    if (q != NULL)
        join_and_free(q);
}

unsigned tokenq_pending(tokenq *q)
{
    pthread_mutex_lock(&q->mu);
    unsigned n = q->queued + q->running;
    pthread_mutex_unlock(&q->mu);
    return n;
}

void tokenq_get_stats(tokenq *q, tokenq_stats *out)
{
    pthread_mutex_lock(&q->mu);
    out->queued = q->queued;
    out->running = q->running;
    out->flows = q->flows;
    out->workers = q->nworkers;
    out->idle = q->sleeping;
    memcpy(out->service_s, q->service_s, sizeof(out->service_s));
    pthread_mutex_unlock(&q->mu);
}
