/*
 * searchq.h: which groups' requests may search the token again for a key
 * version the database names but a search did not show (khops.c,
 * search_again). Owned by groupsrv/keyholder/.
 *
 * A search again pauses the token worker (20 and 100 ms). A version truly
 * absent (a replica the ceremony has not reached) must be answered at
 * once and must not hold the workers: after a search again that found
 * nothing, the group's requests answer at once for a gap of seconds.
 * Process-wide, one mutex; at most SEARCHQ_SLOTS groups are remembered,
 * and while that many are quiet another group's requests answer at once
 * too (taking a quiet group's place would have each of them search again
 * in turn at every request).
 */
#ifndef GS_KH_SEARCHQ_H
#define GS_KH_SEARCHQ_H

#include <stdbool.h>
#include <stdint.h>

#define SEARCHQ_SLOTS 16

/* Whether a request of group_id may search again at time now (seconds,
 * monotonic). */
bool searchq_may(int64_t group_id, double now);
/* The search again of group_id ended at now: found clears the group's
 * mark; not found answers its requests at once until now + gap_s. */
void searchq_done(int64_t group_id, bool found, double now, double gap_s);
/* Forgets every group (tests). */
void searchq_reset(void);

#endif
