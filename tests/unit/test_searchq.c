/*
 * test_searchq.c: the key versions whose requests answer at once instead
 * of searching the token again (groupsrv/keyholder/searchq.c): a version
 * searched in vain is quiet for the gap, one whose search found the key is
 * not, another version or kind of the same group is still searched, and
 * more versions than the table holds never take a quiet one's place (each
 * would search again at every request, every token worker pausing 120 ms
 * each time). And one search again at a time per version: the version is
 * marked before the search, and the requests that come meanwhile wait for
 * its outcome (at most max_waiters of them, never past their deadline)
 * instead of each pausing a worker: a flood of requests for a version
 * truly absent paused every worker 120 ms once per gap.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <time.h>

#include <cmocka.h>

#include "searchq.h"

#define G SEARCHQ_GROUP_KEY

static int reset(void **state)
{
    (void)state;
    searchq_reset();
    return 0;
}

static void test_quiet_for_the_gap(void **state)
{
    (void)state;
    assert_true(searchq_may(7, G, 3, 100.0));
    searchq_done(7, G, 3, false, 100.1, 2.0);
    assert_false(searchq_may(7, G, 3, 100.2));
    assert_false(searchq_may(7, G, 3, 102.0));
    assert_true(searchq_may(7, G, 3, 102.2));
    assert_true(searchq_may(8, G, 3, 100.2)); /* another group is not */
}

static void test_found_clears(void **state)
{
    (void)state;
    searchq_done(7, G, 3, false, 100.0, 2.0);
    searchq_done(7, G, 3, true, 102.5, 2.0);
    assert_true(searchq_may(7, G, 3, 102.6));
}

/* A replica never given version 1 of group 7's secret key (docs/
 * scale-out.md) searches it in vain at every gap; version 2, made a moment
 * ago by another process and not yet shown by the token (SoftHSM's lag),
 * must still be searched again, or its requests get the 503 the search
 * again exists to avoid. A mark per group stopped it. Other kinds of the
 * same version are their own marks too. */
static void test_other_version_still_searched(void **state)
{
    (void)state;
    assert_true(searchq_may(7, SEARCHQ_SECRET_KEY, 1, 100.0));
    searchq_done(7, SEARCHQ_SECRET_KEY, 1, false, 100.1, 2.0);
    assert_false(searchq_may(7, SEARCHQ_SECRET_KEY, 1, 100.2));
    assert_true(searchq_may(7, SEARCHQ_SECRET_KEY, 2, 100.2));
    assert_true(searchq_may(7, SEARCHQ_GROUP_KEY, 1, 100.2));
    assert_true(searchq_may(7, SEARCHQ_REJECT_KEY, 1, 100.2));
    /* version 2 found: its mark (none) cleared, version 1 stays quiet */
    searchq_done(7, SEARCHQ_SECRET_KEY, 2, true, 100.3, 2.0);
    assert_false(searchq_may(7, SEARCHQ_SECRET_KEY, 1, 100.4));
    /* version 2 searched in vain too: two marks, each its own gap */
    searchq_done(7, SEARCHQ_SECRET_KEY, 2, false, 101.0, 2.0);
    assert_true(searchq_may(7, SEARCHQ_SECRET_KEY, 1, 102.2));
    assert_false(searchq_may(7, SEARCHQ_SECRET_KEY, 2, 102.2));
    searchq_done(7, SEARCHQ_SECRET_KEY, 2, true, 102.5, 2.0);
    assert_true(searchq_may(7, SEARCHQ_SECRET_KEY, 2, 102.6));
}

/* A replica that lacks a version of more groups than the table holds (a
 * `secret rotate` of every list on another server): a group beyond it
 * answers at once, and the quiet groups stay quiet. Evicting the oldest
 * mark made each request of those groups search again. */
static void test_more_groups_than_slots(void **state)
{
    (void)state;
    for (int64_t g = 1; g <= SEARCHQ_SLOTS; g++) {
        assert_true(searchq_may(g, G, 3, 100.0));
        searchq_done(g, G, 3, false, 100.0 + (double)g / 100, 2.0);
    }
    int64_t extra = SEARCHQ_SLOTS + 1;
    if (searchq_may(extra, G, 3, 100.5))
        searchq_done(extra, G, 3, false, 100.6, 2.0);
    for (int64_t g = 1; g <= SEARCHQ_SLOTS; g++)
        assert_false(searchq_may(g, G, 3, 100.7));
    assert_false(searchq_may(extra, G, 3, 100.7));
    /* once the marks ran out, every group searches again */
    assert_true(searchq_may(extra, G, 3, 103.0));
    searchq_done(extra, G, 3, false, 103.0, 2.0);
    assert_false(searchq_may(extra, G, 3, 103.1));
    assert_true(searchq_may(1, G, 3, 103.1));
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Marked before the search: while one request searches, the version is
 * not searched by another, and one that may not wait answers at once. */
static void test_marked_before_search(void **state)
{
    bool waited = true;
    double now = mono();
    (void)state;
    assert_int_equal(searchq_begin(7, G, 3, now, now + 30, 0, &waited), SEARCHQ_SEARCH);
    assert_false(waited);
    assert_false(searchq_may(7, G, 3, now));
    assert_int_equal(searchq_begin(7, G, 3, now, now + 30, 0, &waited), SEARCHQ_ANSWER);
    assert_false(waited);
    /* past its deadline: answers at once, not waiting */
    assert_int_equal(searchq_begin(7, G, 3, now, now, 4, &waited), SEARCHQ_ANSWER);
    assert_false(waited);
    assert_true(searchq_may(7, G, 4, now)); /* another version is not */
    searchq_done(7, G, 3, false, now, 2.0);
    assert_false(searchq_may(7, G, 3, now + 0.1));
    assert_int_equal(searchq_begin(7, G, 3, now + 0.1, now + 30, 4, &waited), SEARCHQ_ANSWER);
    assert_false(waited);
    /* cut short by its deadline (a gap of 0): the next request searches */
    assert_int_equal(searchq_begin(7, G, 3, now + 2.5, now + 30, 4, &waited), SEARCHQ_SEARCH);
    searchq_done(7, G, 3, false, now + 2.6, 0);
    assert_int_equal(searchq_begin(7, G, 3, now + 2.6, now + 30, 4, &waited), SEARCHQ_SEARCH);
}

struct waiter {
    pthread_t tid;
    double wait_until;
    enum searchq_turn turn;
    bool waited;
};

static void *wait_main(void *arg)
{
    struct waiter *wt = arg;
    wt->turn = searchq_begin(7, G, 3, mono(), wt->wait_until, 2, &wt->waited);
    return NULL;
}

/* Until n requests wait for the search of version 3 (at most a minute:
 * a loaded machine starts threads late). */
static void until_waiting(unsigned n)
{
    for (int i = 0; i < 60000 && searchq_waiting(7, G, 3) < n; i++) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    assert_int_equal(searchq_waiting(7, G, 3), n);
}

/* Two requests wait for the one search again (the third may not: at most
 * max_waiters); the search's outcome is theirs. */
static void wait_for(bool found)
{
    struct waiter wt[2];
    bool waited;
    double now = mono();

    assert_int_equal(searchq_begin(7, G, 3, now, now + 30, 2, &waited), SEARCHQ_SEARCH);
    for (int i = 0; i < 2; i++) {
        wt[i] = (struct waiter){.wait_until = now + 60};
        assert_int_equal(pthread_create(&wt[i].tid, NULL, wait_main, &wt[i]), 0);
    }
    until_waiting(2);
    assert_int_equal(searchq_begin(7, G, 3, mono(), mono() + 30, 2, &waited), SEARCHQ_ANSWER);
    assert_false(waited);
    searchq_done(7, G, 3, found, mono(), 2.0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(wt[i].tid, NULL), 0);
        assert_int_equal(wt[i].turn, found ? SEARCHQ_FOUND : SEARCHQ_ANSWER);
        assert_true(wt[i].waited);
    }
    assert_int_equal(searchq_waiting(7, G, 3), 0);
    assert_true(searchq_may(7, G, 3, mono()) == found);
}

static void test_waiters_get_found(void **state)
{
    (void)state;
    wait_for(true);
}

static void test_waiters_get_absent(void **state)
{
    (void)state;
    wait_for(false);
}

/* Once a search again for a version found nothing, the next one (after
 * the gap) is made by one request alone: the version is truly absent, and
 * the others answer at once instead of holding their workers too. A
 * search cut short by its deadline proved nothing. */
static void test_known_absent_no_waiters(void **state)
{
    bool waited;
    double now = mono();
    (void)state;
    assert_int_equal(searchq_begin(7, G, 3, now, now + 30, 4, &waited), SEARCHQ_SEARCH);
    searchq_done(7, G, 3, false, now, 0); /* cut short */
    assert_int_equal(searchq_begin(7, G, 3, now, now + 30, 4, &waited), SEARCHQ_SEARCH);
    searchq_done(7, G, 3, false, now, 0.01);
    now = mono() + 0.02;
    assert_int_equal(searchq_begin(7, G, 3, now, now + 30, 4, &waited), SEARCHQ_SEARCH);
    assert_int_equal(searchq_begin(7, G, 3, now, now + 30, 4, &waited), SEARCHQ_ANSWER);
    assert_false(waited);
    /* found at last (the ceremony reached this server): requests wait again */
    searchq_done(7, G, 3, true, now, 2.0);
    assert_int_equal(searchq_begin(7, G, 3, now, now + 30, 4, &waited), SEARCHQ_SEARCH);
    assert_int_equal(searchq_begin(7, G, 3, mono(), mono() + 0.02, 4, &waited), SEARCHQ_ANSWER);
    assert_true(waited);
}

/* A search that never ends (a worker stuck in a token call) holds its
 * waiters only until their deadline. */
static void test_wait_ends_at_deadline(void **state)
{
    bool waited;
    double now = mono();
    (void)state;
    assert_int_equal(searchq_begin(7, G, 3, now, now + 30, 2, &waited), SEARCHQ_SEARCH);
    assert_int_equal(searchq_begin(7, G, 3, mono(), mono() + 0.02, 2, &waited), SEARCHQ_ANSWER);
    assert_true(waited);
    assert_int_equal(searchq_waiting(7, G, 3), 0);
}

/* A search cut short by its searcher's deadline proved nothing: a waiter
 * with time left searches itself (the next request would), rather than
 * answer 503 key_unavailable "try another server" for a key that may be
 * one search away. */
static void test_cut_search_passes_to_waiter(void **state)
{
    struct waiter wt = {.wait_until = mono() + 60};
    bool waited;
    double now = mono();
    (void)state;

    assert_int_equal(searchq_begin(7, G, 3, now, now + 30, 2, &waited), SEARCHQ_SEARCH);
    assert_int_equal(pthread_create(&wt.tid, NULL, wait_main, &wt), 0);
    until_waiting(1);
    searchq_done(7, G, 3, false, mono(), 0); /* cut short */
    assert_int_equal(pthread_join(wt.tid, NULL), 0);
    assert_int_equal(wt.turn, SEARCHQ_SEARCH);
    assert_true(wt.waited);
    /* the search is the waiter's now: another request waits for it */
    assert_false(searchq_may(7, G, 3, mono()));
    searchq_done(7, G, 3, true, mono(), 2.0);
    assert_int_equal(searchq_waiting(7, G, 3), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_quiet_for_the_gap, reset),
        cmocka_unit_test_setup(test_found_clears, reset),
        cmocka_unit_test_setup(test_other_version_still_searched, reset),
        cmocka_unit_test_setup(test_more_groups_than_slots, reset),
        cmocka_unit_test_setup(test_marked_before_search, reset),
        cmocka_unit_test_setup(test_waiters_get_found, reset),
        cmocka_unit_test_setup(test_waiters_get_absent, reset),
        cmocka_unit_test_setup(test_wait_ends_at_deadline, reset),
        cmocka_unit_test_setup(test_known_absent_no_waiters, reset),
        cmocka_unit_test_setup(test_cut_search_passes_to_waiter, reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
