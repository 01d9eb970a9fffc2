/*
 * searchq.h: which key versions' requests may search the token again for
 * a version the database names but a search did not show (khops.c,
 * search_again). Owned by groupsrv/keyholder/.
 *
 * A search again pauses the token worker (20 and 100 ms). A version truly
 * absent (a replica the ceremony has not reached) must be answered at
 * once and must not hold the workers: after a search again that found
 * nothing, the requests for that version (group, key kind and version)
 * answer at once for a gap of seconds. The mark is per version, not per
 * group: a version permanently absent here (a replica never given an old
 * version) must not stop the search again for a version of the same group
 * made a moment ago by another process, the very case it exists for.
 * One request searches again for a version at a time: it marks the
 * version before its search (searchq_begin), and the requests for that
 * version that come meanwhile wait for its outcome (a key found then is
 * theirs too) instead of each pausing a worker of its own (at most
 * max_waiters). Once a search again for a version found nothing, the
 * next one (after the gap) is made by one request alone, the others
 * answering at once: the version is truly absent (a lag ends within one
 * search again), and a flood of requests for it holds one worker once
 * per gap, not every worker. Process-wide, one mutex; at most
 * SEARCHQ_SLOTS versions are remembered, and while that many are quiet,
 * searched or waited for, the requests for any other version answer at
 * once too (taking a quiet version's place would have each of them
 * search again in turn at every request).
 */
#ifndef GS_KH_SEARCHQ_H
#define GS_KH_SEARCHQ_H

#include <stdbool.h>
#include <stdint.h>

#define SEARCHQ_SLOTS 16

/* The kind of key a request lacks; with the group and the version it
 * names one mark. */
enum searchq_kind {
    SEARCHQ_GROUP_KEY = 1,
    SEARCHQ_SECRET_KEY,
    SEARCHQ_REJECT_KEY, /* the group's one rejection key; version 0 */
};

/* Whether a request lacking version of kind in group_id would search
 * again at time now (seconds, monotonic): the version is neither quiet nor
 * being searched, and has or can have a slot. Changes nothing. */
bool searchq_may(int64_t group_id, enum searchq_kind kind, unsigned version, double now);

enum searchq_turn {
    SEARCHQ_ANSWER = 0, /* answer at once: quiet, the table full, too many waiting, or waited in vain */
    SEARCHQ_SEARCH,     /* this request searches again, then calls searchq_done */
    SEARCHQ_FOUND,      /* the search this request waited for found the key: load it */
};
/* A request lacking that version at time now (seconds, CLOCK_MONOTONIC):
 * SEARCHQ_SEARCH marks the version as searched by this request; while
 * another request searches it, waits (blocking, at most until wait_until
 * on the same clock, only while fewer than max_waiters wait, and only
 * if no search for it has found nothing before) for that search's outcome
 * (*waited then true); a search cut short (searchq_done with no gap)
 * passes to a waiter with time left, SEARCHQ_SEARCH. */
enum searchq_turn searchq_begin(int64_t group_id, enum searchq_kind kind, unsigned version, double now,
                                double wait_until, unsigned max_waiters, bool *waited);
/* The search again for that version ended at now: found clears its mark;
 * not found answers its requests at once until now + gap_s (0: a search
 * cut short, which proved nothing: a waiter with time left searches
 * next). Wakes the requests waiting for it. */
void searchq_done(int64_t group_id, enum searchq_kind kind, unsigned version, bool found, double now, double gap_s);
/* Requests waiting for the search of that version now (tests). */
unsigned searchq_waiting(int64_t group_id, enum searchq_kind kind, unsigned version);
/* Forgets every mark (tests). */
void searchq_reset(void);

#endif
