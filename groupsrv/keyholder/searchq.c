/*
 * searchq.c: key versions whose requests answer at once instead of
 * searching the token again (see searchq.h).
 */
#include "searchq.h"

#include <pthread.h>
#include <string.h>

static pthread_mutex_t searchq_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    int64_t group_id;
    enum searchq_kind kind;
    unsigned version;
    double until; /* no search again for this version before; 0: slot free */
} quiet[SEARCHQ_SLOTS];

/* The slot that marks (group_id, kind, version) (-1: none), and in *spare
 * one free or run out (-1: every slot marks another version still quiet).
 * Called locked. */
static int slot_of(int64_t group_id, enum searchq_kind kind, unsigned version, double now, int *spare)
{
    int own = -1;

    *spare = -1;
    for (int i = 0; i < SEARCHQ_SLOTS; i++) {
        if (quiet[i].until != 0 && quiet[i].group_id == group_id && quiet[i].kind == kind &&
            quiet[i].version == version)
            own = i;
        else if (*spare < 0 && quiet[i].until <= now)
            *spare = i;
    }
    return own;
}

bool searchq_may(int64_t group_id, enum searchq_kind kind, unsigned version, double now)
{
    int own, spare;
    bool may;

    pthread_mutex_lock(&searchq_mu);
    own = slot_of(group_id, kind, version, now, &spare);
    /* With every slot marking another quiet version, this one is not
     * searched either: it could be marked only by ending another's quiet,
     * whose requests would then search again, each in turn, at every
     * request (a replica lacking a version of many groups, after a
     * rotation of them all on another server). */
    may = own >= 0 ? now >= quiet[own].until : spare >= 0;
    pthread_mutex_unlock(&searchq_mu);
    return may;
}

void searchq_done(int64_t group_id, enum searchq_kind kind, unsigned version, bool found, double now, double gap_s)
{
    int own, spare;

    pthread_mutex_lock(&searchq_mu);
    own = slot_of(group_id, kind, version, now, &spare);
    if (found && own >= 0) {
        quiet[own].until = 0;
    } else if (!found && (own >= 0 || spare >= 0)) {
        int i = own >= 0 ? own : spare;
        quiet[i].group_id = group_id;
        quiet[i].kind = kind;
        quiet[i].version = version;
        quiet[i].until = now + gap_s;
    }
    pthread_mutex_unlock(&searchq_mu);
}

void searchq_reset(void)
{
    pthread_mutex_lock(&searchq_mu);
    memset(quiet, 0, sizeof(quiet));
    pthread_mutex_unlock(&searchq_mu);
}
