/*
 * ratelimit.c: token buckets and failure counters keyed by identity.
 */
#include "ratelimit.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#define RL_SLOTS 4096
#define RL_WINDOW 16

/* Entries are keyed by a salted SHA-256 of the whole identity, so an
 * identity of any length has exactly one entry (a stored prefix let long
 * identities share or miss theirs), and a client cannot aim identities at
 * one probe window (the salt is random per process). */
struct rl_entry {
    unsigned char id[SHA256_DIGEST_LENGTH];
    double tokens;
    double last;          /* monotonic seconds of the last refill */
    unsigned failures;
    double first_failure;
    double suspended_until;
    int used;
};

struct ratelimit {
    pthread_mutex_t mu;       /* robust, and process-shared when shared */
    pid_t shared_by;          /* 0: private (calloc); else the process that made the mapping */
    double rate, burst;
    unsigned max_failures, suspend_seconds;
    unsigned char salt[16];
    struct rl_entry slots[RL_SLOTS];
};

/* The lock outlives a holder killed while holding it (a key holder ended
 * with SIGKILL): the next locker is told EOWNERDEAD and takes it over, the
 * entries as they were (numbers, at worst one update short). */
static int rl_mutex_init(pthread_mutex_t *mu, bool shared)
{
    pthread_mutexattr_t a;
    int rc = -1;

    if (pthread_mutexattr_init(&a) != 0)
        return -1;
    if (pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST) == 0 &&
        (!shared || pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED) == 0) && pthread_mutex_init(mu, &a) == 0)
        rc = 0;
    pthread_mutexattr_destroy(&a);
    return rc;
}

static void rl_lock(struct ratelimit *rl)
{
    if (pthread_mutex_lock(&rl->mu) == EOWNERDEAD)
        (void)pthread_mutex_consistent(&rl->mu);
}

static ratelimit *rl_make(double rate, double burst, unsigned max_failures, unsigned suspend_seconds, bool shared)
{
    struct ratelimit *rl;

    if (shared) {
        void *m = mmap(NULL, sizeof(*rl), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
            return NULL;
        rl = m; /* zero-filled, as calloc's */
        rl->shared_by = getpid();
    } else if ((rl = calloc(1, sizeof(*rl))) == NULL) {
        return NULL;
    }
    if (RAND_bytes(rl->salt, sizeof(rl->salt)) != 1 || rl_mutex_init(&rl->mu, shared) != 0) {
        if (shared)
            munmap(rl, sizeof(*rl));
        else
            free(rl);
        return NULL;
    }
    rl->rate = rate;
    rl->burst = burst < 1 ? 1 : burst;
    rl->max_failures = max_failures;
    rl->suspend_seconds = suspend_seconds;
    return rl;
}

ratelimit *ratelimit_new(double rate, double burst, unsigned max_failures, unsigned suspend_seconds)
{
    return rl_make(rate, burst, max_failures, suspend_seconds, false);
}

ratelimit *ratelimit_new_shared(double rate, double burst, unsigned max_failures, unsigned suspend_seconds)
{
    return rl_make(rate, burst, max_failures, suspend_seconds, true);
}

void ratelimit_free(ratelimit *rl)
{
    if (rl == NULL)
        return;
    if (rl->shared_by == 0) {
        pthread_mutex_destroy(&rl->mu);
        free(rl);
        return;
    }
    /* A forked process only lets go of its view: the lock and the counters
     * stay for the maker and the processes it forks next. */
    if (rl->shared_by == getpid())
        pthread_mutex_destroy(&rl->mu);
    munmap(rl, sizeof(*rl));
}

/* The entry key of identity; all zeros if hashing fails (then every such
 * identity shares one entry: limited together, never unlimited). */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void) { sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL); }

_Static_assert(sizeof(((rl_key *)0)->md) == SHA256_DIGEST_LENGTH, "an rl_key holds a SHA-256");

/* Computed before the mutex is taken (every token worker shares it), once
 * per request, with SHA-256 fetched from the provider once (EVP_sha256()
 * fetches it on every init). */
void ratelimit_key(const ratelimit *rl, const char *identity, rl_key *key)
{
    unsigned char *md = key->md;
    EVP_MD_CTX *c = rl != NULL && identity != NULL ? EVP_MD_CTX_new() : NULL;

    (void)pthread_once(&sha256_once, sha256_fetch);
    if (c == NULL || EVP_DigestInit_ex(c, sha256_md != NULL ? sha256_md : EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(c, rl->salt, sizeof(rl->salt)) != 1 ||
        EVP_DigestUpdate(c, identity, strlen(identity)) != 1 || EVP_DigestFinal_ex(c, md, NULL) != 1)
        memset(md, 0, SHA256_DIGEST_LENGTH);
    EVP_MD_CTX_free(c);
}

/* Whether e holds nothing a fresh entry would not: not suspended, no
 * failed unwrap within its window, its bucket full again. Only such an
 * entry may be recycled: else a caller that names enough other identities
 * (a compromised network process claims any member) would wipe a count
 * that limits someone, and start again with a full bucket and no
 * failures. Called locked. */
static bool at_rest(const struct ratelimit *rl, const struct rl_entry *e, double now)
{
    if (e->suspended_until > now)
        return false;
    if (e->failures > 0 && now - e->first_failure <= rl->suspend_seconds)
        return false;
    return rl->rate <= 0 || e->tokens + (now - e->last) * rl->rate >= rl->burst;
}

/* Open addressing over a short probe window; recycles the stalest entry
 * of the window that is at rest when none matches. When none is (every
 * entry suspended, counting failures or with a bucket not full again),
 * NULL: the caller refuses, failing closed. Called locked. */
static struct rl_entry *lookup_locked(struct ratelimit *rl, const unsigned char md[SHA256_DIGEST_LENGTH], double now)
{
    struct rl_entry *victim = NULL;
    unsigned long h;

    memcpy(&h, md, sizeof(h));
    for (unsigned i = 0; i < RL_WINDOW; i++) {
        struct rl_entry *e = &rl->slots[(h + i) % RL_SLOTS];
        if (e->used && CRYPTO_memcmp(e->id, md, SHA256_DIGEST_LENGTH) == 0)
            return e;
        if (!e->used) {
            if (victim == NULL || victim->used)
                victim = e;
        } else if (at_rest(rl, e, now) && (victim == NULL || (victim->used && e->last < victim->last))) {
            victim = e;
        }
    }
    if (victim == NULL)
        return NULL;
    memset(victim, 0, sizeof(*victim));
    memcpy(victim->id, md, SHA256_DIGEST_LENGTH);
    victim->used = 1;
    victim->tokens = rl->burst;
    victim->last = now;
    return victim;
}

rl_verdict ratelimit_take(ratelimit *rl, const rl_key *key, unsigned *retry_after)
{
    rl_verdict v = RL_OK;

    *retry_after = 0;
    if (rl == NULL || key == NULL)
        return RL_OK;
    double now = util_monotonic_s();
    rl_lock(rl);
    struct rl_entry *e = lookup_locked(rl, key->md, now);
    if (e == NULL) {
        *retry_after = 1;
        v = RL_LIMITED;
        goto out;
    }
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

rl_verdict ratelimit_take_once(ratelimit *rl, const rl_key *key, bool *charged, unsigned *retry_after)
{
    *retry_after = 0;
    if (*charged)
        return RL_OK;
    rl_verdict v = ratelimit_take(rl, key, retry_after);
    if (v == RL_OK)
        *charged = true;
    return v;
}

bool ratelimit_suspended(ratelimit *rl, const rl_key *key, unsigned *retry_after)
{
    bool suspended = false;

    *retry_after = 0;
    if (rl == NULL || key == NULL || rl->max_failures == 0)
        return false;
    double now = util_monotonic_s();
    rl_lock(rl);
    struct rl_entry *e = lookup_locked(rl, key->md, now);
    if (e == NULL || e->suspended_until > now) {
        *retry_after = e == NULL ? 1 : (unsigned)(e->suspended_until - now) + 1;
        suspended = true;
    }
    pthread_mutex_unlock(&rl->mu);
    return suspended;
}

bool ratelimit_failure(ratelimit *rl, const rl_key *key)
{
    bool suspended = false;

    if (rl == NULL || key == NULL || rl->max_failures == 0)
        return false;
    double now = util_monotonic_s();
    rl_lock(rl);
    struct rl_entry *e = lookup_locked(rl, key->md, now);
    if (e == NULL)
        goto out;
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
out:
    pthread_mutex_unlock(&rl->mu);
    return suspended;
}
