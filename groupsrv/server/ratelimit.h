/*
 * ratelimit.h: per-identity token bucket (429) and a cap on failed unwraps
 * (suspension). Owned by groupsrv/server/. Thread-safe (one mutex); the
 * table is bounded: a new identity takes a free entry of its window, else
 * the stalest one at rest (not suspended, no failure within
 * suspend_seconds, bucket full), else it is refused (ratelimit_take:
 * RL_LIMITED, retry after 1 s; ratelimit_suspended: true). No
 * pointers inside, so that it can live in shared memory
 * (ratelimit_new_shared).
 */
#ifndef GS_SRV_RATELIMIT_H
#define GS_SRV_RATELIMIT_H

#include <stdbool.h>

typedef struct ratelimit ratelimit;

/* rate: tokens per second; burst: bucket size; max_failures: failed unwraps
 * (within suspend_seconds of each other) that suspend an identity for
 * suspend_seconds; 0 disables the respective check. */
ratelimit *ratelimit_new(double rate, double burst, unsigned max_failures, unsigned suspend_seconds);
/* The same in memory shared with the processes this one forks afterwards
 * (MAP_SHARED): `serve`'s supervisor makes it before the first key holder,
 * so a key holder that dies (kill -9, a crash) and is forked again finds
 * every bucket, failure count and suspension as they were. The lock is
 * process-shared and robust: one held by a process that was killed is
 * taken over by the next. */
ratelimit *ratelimit_new_shared(double rate, double burst, unsigned max_failures, unsigned suspend_seconds);
/* Private: freed. Shared: the calling process's mapping is let go; only
 * its maker also destroys the lock. */
void ratelimit_free(ratelimit *rl);

typedef enum rl_verdict { RL_OK = 0, RL_LIMITED, RL_SUSPENDED } rl_verdict;

/* An identity's entry key in rl (a salted SHA-256 of it): made once per
 * request by ratelimit_key, then used for each check of that request. */
typedef struct rl_key {
    unsigned char md[32];
} rl_key;
void ratelimit_key(const ratelimit *rl, const char *identity, rl_key *key);

/* Takes one token for key; *retry_after gets seconds to wait when not OK.
 * rl NULL: RL_OK. */
rl_verdict ratelimit_take(ratelimit *rl, const rl_key *key, unsigned *retry_after);
/* ratelimit_take for a request that may be run more than once: the key
 * holder's I/O loop gives a request it may not finish (a search again, a
 * token that failed) back to a token worker, which runs it from the
 * start. *charged is the request's own (false when it is made): a take
 * that is RL_OK sets it, and with it set nothing is taken (RL_OK), so a
 * request costs its caller one token however many times it is run. */
rl_verdict ratelimit_take_once(ratelimit *rl, const rl_key *key, bool *charged, unsigned *retry_after);
/* Whether key's identity is suspended now (no token taken); *retry_after
 * gets the seconds left. A batch asks before each item, so it stops at the
 * failure that suspends its caller. */
bool ratelimit_suspended(ratelimit *rl, const rl_key *key, unsigned *retry_after);
/* Records a failed unwrap; returns true when this failure suspended key's identity. */
bool ratelimit_failure(ratelimit *rl, const rl_key *key);

#endif
