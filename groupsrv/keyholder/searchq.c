/*
 * searchq.c: key versions whose requests answer at once instead of
 * searching the token again, and the one search again in flight per
 * version that other requests wait for (see searchq.h).
 */
#include "searchq.h"

#include <pthread.h>
#include <string.h>
#include <time.h>

static pthread_mutex_t searchq_mu = PTHREAD_MUTEX_INITIALIZER;
/* Waited on with CLOCK_MONOTONIC deadlines (the requests' deadlines are
 * on that clock); made once, as a static initialiser cannot set a clock. */
static pthread_cond_t searchq_cv;
static pthread_once_t searchq_once = PTHREAD_ONCE_INIT;
static struct {
    int64_t group_id;
    enum searchq_kind kind;
    unsigned version;
    double until;       /* no search again for this version before; 0: not quiet */
    bool searching;     /* one request is searching again for it now */
    unsigned waiters;   /* requests waiting for that search's outcome */
    unsigned long ends; /* searches of this slot ended so far (a waiter's search ended when it moved) */
    bool found;         /* what the last search that ended found */
    bool vain;          /* a search that ended found nothing (one cut short by its deadline proved nothing) */
} quiet[SEARCHQ_SLOTS];

static void cv_init(void)
{
    pthread_condattr_t a;

    /* Without the monotonic clock (never on Linux with glibc) the cv
     * would wait by the wall clock, on which a CLOCK_MONOTONIC deadline
     * is long past: each timed wait returns at once, and a waiter polls
     * the mutex, busy, until its deadline or the searcher's end. Correct
     * still, only costly; not worth a second clock's arithmetic. */
    if (pthread_condattr_init(&a) != 0 || pthread_condattr_setclock(&a, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&searchq_cv, &a) != 0)
        (void)pthread_cond_init(&searchq_cv, NULL);
    (void)pthread_condattr_destroy(&a);
}

static double mono_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Called locked. A slot names a version while it is quiet, searched or
 * waited for. */
static bool in_use(int i, double now)
{
    return quiet[i].until > now || quiet[i].searching || quiet[i].waiters > 0;
}

/* The slot that marks (group_id, kind, version) (-1: none), and in *spare
 * one free or run out (-1: every slot marks another version still quiet,
 * searched or waited for). Called locked. */
static int slot_of(int64_t group_id, enum searchq_kind kind, unsigned version, double now, int *spare)
{
    int own = -1;

    *spare = -1;
    for (int i = 0; i < SEARCHQ_SLOTS; i++) {
        if ((quiet[i].until != 0 || quiet[i].searching || quiet[i].waiters > 0) && quiet[i].group_id == group_id &&
            quiet[i].kind == kind && quiet[i].version == version)
            own = i;
        else if (*spare < 0 && !in_use(i, now))
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
    may = own >= 0 ? !quiet[own].searching && now >= quiet[own].until : spare >= 0;
    pthread_mutex_unlock(&searchq_mu);
    return may;
}

enum searchq_turn searchq_begin(int64_t group_id, enum searchq_kind kind, unsigned version, double now,
                                double wait_until, unsigned max_waiters, bool *waited)
{
    enum searchq_turn turn = SEARCHQ_ANSWER;
    int own, spare;

    *waited = false;
    (void)pthread_once(&searchq_once, cv_init);
    pthread_mutex_lock(&searchq_mu);
again:
    own = slot_of(group_id, kind, version, now, &spare);
    if (own >= 0 && quiet[own].searching) {
        /* Another request is searching again for this very version: its
         * outcome is this one's too. Waiting, not pausing and searching
         * itself: the token is searched once, not once per worker. Not
         * for a version searched in vain before (it has been quiet for a
         * gap since): that one is truly absent, not lagging (a lag ends
         * within one search again), and only the request searching pays
         * the pause; the others answer at once and their workers go on
         * with other work. A version not searched in vain yet may be one
         * just made, whose requests all want it (a group-secret load after
         * a `secret rotate`): up to max_waiters wait. */
        unsigned long ends = quiet[own].ends;
        if (quiet[own].vain || quiet[own].waiters >= max_waiters)
            goto out;
        if (wait_until <= now)
            goto out;
        struct timespec ts;
        double whole = (double)(time_t)wait_until;
        ts.tv_sec = (time_t)wait_until;
        ts.tv_nsec = (long)((wait_until - whole) * 1e9);
        quiet[own].waiters++;
        *waited = true;
        while (quiet[own].searching && quiet[own].ends == ends && mono_s() < wait_until)
            if (pthread_cond_timedwait(&searchq_cv, &searchq_mu, &ts) != 0 && mono_s() >= wait_until)
                break;
        quiet[own].waiters--;
        if (quiet[own].ends != ends && quiet[own].found) {
            turn = SEARCHQ_FOUND;
        } else if (quiet[own].ends != ends && !quiet[own].vain && (now = mono_s()) < wait_until) {
            /* cut short by its searcher's deadline (searchq_done with no
             * gap): it proved nothing, and this request has time left.
             * Taken again from the start: it searches itself (the next
             * request would), or waits for the one who took it first. */
            goto again;
        }
        goto out;
    }
    if (own >= 0 && now < quiet[own].until)
        goto out;
    if (own < 0 && spare < 0)
        goto out; /* every slot marks another version (searchq_may) */
    /* Marked before the search, not after it: the requests for this
     * version that come meanwhile wait for it instead of each pausing
     * its own worker. */
    if (own < 0) {
        own = spare;
        quiet[own].ends = 0;
        quiet[own].found = quiet[own].vain = false;
    }
    quiet[own].group_id = group_id;
    quiet[own].kind = kind;
    quiet[own].version = version;
    quiet[own].until = 0;
    quiet[own].searching = true;
    turn = SEARCHQ_SEARCH;
out:
    pthread_mutex_unlock(&searchq_mu);
    return turn;
}

void searchq_done(int64_t group_id, enum searchq_kind kind, unsigned version, bool found, double now, double gap_s)
{
    int own, spare;

    (void)pthread_once(&searchq_once, cv_init);
    pthread_mutex_lock(&searchq_mu);
    own = slot_of(group_id, kind, version, now, &spare);
    if (own < 0 && !found && spare >= 0) {
        own = spare;
        quiet[own].ends = 0;
        quiet[own].vain = false;
    }
    if (own >= 0) {
        quiet[own].group_id = group_id;
        quiet[own].kind = kind;
        quiet[own].version = version;
        quiet[own].searching = false;
        quiet[own].ends++;
        quiet[own].found = found;
        quiet[own].vain = !found && (gap_s > 0 || quiet[own].vain);
        quiet[own].until = found ? 0 : now + gap_s;
    }
    pthread_mutex_unlock(&searchq_mu);
    /* After the unlock, as everywhere: woken, the waiters need the mutex. */
    pthread_cond_broadcast(&searchq_cv);
}

unsigned searchq_waiting(int64_t group_id, enum searchq_kind kind, unsigned version)
{
    unsigned n = 0;
    int spare;

    pthread_mutex_lock(&searchq_mu);
    int own = slot_of(group_id, kind, version, 0, &spare);
    if (own >= 0)
        n = quiet[own].waiters;
    pthread_mutex_unlock(&searchq_mu);
    return n;
}

void searchq_reset(void)
{
    pthread_mutex_lock(&searchq_mu);
    memset(quiet, 0, sizeof(quiet));
    pthread_mutex_unlock(&searchq_mu);
}
