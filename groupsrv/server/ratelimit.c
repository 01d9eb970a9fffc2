/*
 * ratelimit.c: token buckets and failure counters keyed by identity.
 */
#include "ratelimit.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

#define RL_SLOTS 4096
#define RL_ID_MAX 256

struct rl_entry {
    char id[RL_ID_MAX];
    double tokens;
    double last;          /* monotonic seconds of the last refill */
    unsigned failures;
    double first_failure;
    double suspended_until;
    int used;
};

struct ratelimit {
    pthread_mutex_t mu;
    double rate, burst;
    unsigned max_failures, suspend_seconds;
    struct rl_entry slots[RL_SLOTS];
};

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

ratelimit *ratelimit_new(double rate, double burst, unsigned max_failures, unsigned suspend_seconds)
{
    struct ratelimit *rl = calloc(1, sizeof(*rl));

    if (rl == NULL)
        return NULL;
    pthread_mutex_init(&rl->mu, NULL);
    rl->rate = rate;
    rl->burst = burst < 1 ? 1 : burst;
    rl->max_failures = max_failures;
    rl->suspend_seconds = suspend_seconds;
    return rl;
}

void ratelimit_free(ratelimit *rl)
{
    if (rl == NULL)
        return;
    pthread_mutex_destroy(&rl->mu);
    free(rl);
}

static unsigned long fnv1a(const char *s)
{
    unsigned long h = 1469598103934665603UL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211UL;
    return h;
}

/* Open addressing over a short probe window; recycles the stalest
 * unsuspended entry of the window when none matches. Called locked. */
static struct rl_entry *lookup_locked(struct ratelimit *rl, const char *id, double now)
{
    unsigned long h = fnv1a(id);
    struct rl_entry *victim = NULL;

    for (unsigned i = 0; i < 16; i++) {
        struct rl_entry *e = &rl->slots[(h + i) % RL_SLOTS];
        if (e->used && strcmp(e->id, id) == 0)
            return e;
        if (!e->used) {
            if (victim == NULL || victim->used)
                victim = e;
        } else if (e->suspended_until <= now && (victim == NULL || (victim->used && e->last < victim->last))) {
            victim = e;
        }
    }
    if (victim == NULL)
        victim = &rl->slots[h % RL_SLOTS];
    memset(victim, 0, sizeof(*victim));
    util_strlcpy(victim->id, id, sizeof(victim->id));
    victim->used = 1;
    victim->tokens = rl->burst;
    victim->last = now;
    return victim;
}

rl_verdict ratelimit_take(ratelimit *rl, const char *identity, unsigned *retry_after)
{
    rl_verdict v = RL_OK;
    double now = now_mono();

    *retry_after = 0;
    if (rl == NULL || identity == NULL)
        return RL_OK;
    pthread_mutex_lock(&rl->mu);
    struct rl_entry *e = lookup_locked(rl, identity, now);
    if (e->suspended_until > now) {
        *retry_after = (unsigned)(e->suspended_until - now) + 1;
        v = RL_SUSPENDED;
        goto out;
    }
    if (rl->rate <= 0)
        goto out;
    e->tokens += (now - e->last) * rl->rate;
    if (e->tokens > rl->burst)
        e->tokens = rl->burst;
    e->last = now;
    if (e->tokens < 1.0) {
        *retry_after = (unsigned)((1.0 - e->tokens) / rl->rate) + 1;
        v = RL_LIMITED;
        goto out;
    }
    e->tokens -= 1.0;
out:
    pthread_mutex_unlock(&rl->mu);
    return v;
}

bool ratelimit_failure(ratelimit *rl, const char *identity)
{
    bool suspended = false;
    double now = now_mono();

    if (rl == NULL || identity == NULL || rl->max_failures == 0)
        return false;
    pthread_mutex_lock(&rl->mu);
    struct rl_entry *e = lookup_locked(rl, identity, now);
    /* Failures count within one suspension window; older ones are forgiven. */
    if (e->failures == 0 || now - e->first_failure > rl->suspend_seconds) {
        e->failures = 0;
        e->first_failure = now;
    }
    if (++e->failures >= rl->max_failures) {
        e->suspended_until = now + rl->suspend_seconds;
        e->failures = 0;
        suspended = true;
    }
    pthread_mutex_unlock(&rl->mu);
    return suspended;
}
