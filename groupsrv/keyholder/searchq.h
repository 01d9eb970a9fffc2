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
 * Process-wide, one mutex; at most SEARCHQ_SLOTS versions are remembered,
 * and while that many are quiet the requests for any other version answer
 * at once too (taking a quiet version's place would have each of them
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

/* Whether a request lacking version of kind in group_id may search again
 * at time now (seconds, monotonic). */
bool searchq_may(int64_t group_id, enum searchq_kind kind, unsigned version, double now);
/* The search again for that version ended at now: found clears its mark;
 * not found answers its requests at once until now + gap_s. */
void searchq_done(int64_t group_id, enum searchq_kind kind, unsigned version, bool found, double now, double gap_s);
/* Forgets every mark (tests). */
void searchq_reset(void);

#endif
