/*
 * test_ratelimit.c: the per-identity token bucket and the suspension after
 * failed unwraps (groupsrv/server/ratelimit.c), through the keys a request
 * makes once (ratelimit_key) and then uses for every check: one identity
 * one entry, others untouched, a burst then 429 with a Retry-After, the
 * failure cap suspending the identity (and only it), and a NULL limiter
 * that lets everything through; counts kept however many other
 * identities pass through the bounded table; a shared limiter's suspension made in a
 * forked process (a key holder) outlives that process, a private one's
 * does not.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "ratelimit.h"

static void test_key_per_identity(void **state)
{
    (void)state;
    ratelimit *rl = ratelimit_new(1, 1, 0, 60), *other = ratelimit_new(1, 1, 0, 60);
    rl_key a1, a2, b, a_other;

    assert_non_null(rl);
    assert_non_null(other);
    ratelimit_key(rl, "id:alice@example.org", &a1);
    ratelimit_key(rl, "id:alice@example.org", &a2);
    ratelimit_key(rl, "id:bob@example.org", &b);
    ratelimit_key(other, "id:alice@example.org", &a_other);
    assert_memory_equal(a1.md, a2.md, sizeof(a1.md));
    assert_memory_not_equal(a1.md, b.md, sizeof(a1.md));
    /* salted per limiter: a client cannot aim at one probe window */
    assert_memory_not_equal(a1.md, a_other.md, sizeof(a1.md));
    ratelimit_free(rl);
    ratelimit_free(other);
}

static void test_burst_then_limited(void **state)
{
    (void)state;
    ratelimit *rl = ratelimit_new(0.5, 2, 0, 60);
    rl_key alice, bob;
    unsigned retry = 99;

    assert_non_null(rl);
    ratelimit_key(rl, "id:alice@example.org", &alice);
    ratelimit_key(rl, "id:bob@example.org", &bob);
    assert_int_equal(ratelimit_take(rl, &alice, &retry), RL_OK);
    assert_int_equal(retry, 0);
    assert_int_equal(ratelimit_take(rl, &alice, &retry), RL_OK);
    assert_int_equal(ratelimit_take(rl, &alice, &retry), RL_LIMITED);
    assert_true(retry >= 1 && retry <= 3);
    assert_int_equal(ratelimit_take(rl, &bob, &retry), RL_OK); /* bob has his own bucket */
    ratelimit_free(rl);
}

/* A request the key holder's I/O loop gave back to a token worker is run
 * twice (keyholder.c, job_run_here): charged once. A bucket of one: the
 * loop's pass takes the token, the worker's run of the same request
 * takes nothing (RL_OK, not 429), and the next request is limited. No
 * time passes that matters: a token a thousand seconds. */
static void test_take_once_per_request(void **state)
{
    (void)state;
    ratelimit *rl = ratelimit_new(0.001, 1, 0, 60);
    rl_key alice;
    unsigned retry = 99;
    bool charged = false, next = false;

    assert_non_null(rl);
    ratelimit_key(rl, "id:alice@example.org", &alice);
    assert_int_equal(ratelimit_take_once(rl, &alice, &charged, &retry), RL_OK); /* the loop's pass */
    assert_true(charged);
    assert_int_equal(retry, 0);
    assert_int_equal(ratelimit_take_once(rl, &alice, &charged, &retry), RL_OK); /* the worker's run */
    assert_int_equal(retry, 0);
    assert_int_equal(ratelimit_take_once(rl, &alice, &next, &retry), RL_LIMITED); /* the next request */
    assert_false(next);
    assert_true(retry >= 1);
    /* a limited request is not charged: it is refused, not run again */
    assert_int_equal(ratelimit_take_once(rl, &alice, &next, &retry), RL_LIMITED);
    ratelimit_free(rl);
}

static void test_failures_suspend(void **state)
{
    (void)state;
    ratelimit *rl = ratelimit_new(0, 1, 3, 600);
    rl_key mallory, alice;
    unsigned retry = 0;

    assert_non_null(rl);
    ratelimit_key(rl, "id:mallory@example.org", &mallory);
    ratelimit_key(rl, "id:alice@example.org", &alice);
    assert_false(ratelimit_failure(rl, &mallory));
    assert_false(ratelimit_failure(rl, &mallory));
    assert_false(ratelimit_suspended(rl, &mallory, &retry));
    assert_true(ratelimit_failure(rl, &mallory)); /* the third suspends */
    assert_true(ratelimit_suspended(rl, &mallory, &retry));
    assert_true(retry > 590 && retry <= 601);
    assert_int_equal(ratelimit_take(rl, &mallory, &retry), RL_SUSPENDED);
    assert_false(ratelimit_suspended(rl, &alice, &retry));
    assert_int_equal(ratelimit_take(rl, &alice, &retry), RL_OK); /* rate 0: no bucket */
    ratelimit_free(rl);
}

/* Requests under n other identities, one each (a compromised network
 * process claiming every member in turn). */
static void touch_others(ratelimit *rl, unsigned n)
{
    char id[64];
    rl_key k;
    unsigned retry;

    for (unsigned i = 0; i < n; i++) {
        (void)snprintf(id, sizeof(id), "id:member%u@example.org", i);
        ratelimit_key(rl, id, &k);
        (void)ratelimit_take(rl, &k, &retry);
    }
}

/* The table is bounded; making room must not lose a count that limits
 * someone. 100,000 other identities pass through it (every entry's
 * window many times over): mallory's failed unwraps short of the cap
 * still count, and alice's emptied bucket is still empty. Before, the
 * stalest unsuspended entry of a window was recycled, count or not. */
static void test_room_keeps_counts(void **state)
{
    (void)state;
    ratelimit *rl = ratelimit_new(0, 1, 3, 600);
    rl_key mallory, alice;
    unsigned retry = 0;

    assert_non_null(rl);
    ratelimit_key(rl, "id:mallory@example.org", &mallory);
    assert_false(ratelimit_failure(rl, &mallory));
    assert_false(ratelimit_failure(rl, &mallory));
    touch_others(rl, 100000);
    assert_true(ratelimit_failure(rl, &mallory)); /* still the third */
    assert_int_equal(ratelimit_take(rl, &mallory, &retry), RL_SUSPENDED);
    ratelimit_free(rl);

    rl = ratelimit_new(0.001, 2, 0, 600); /* about 17 minutes a token */
    assert_non_null(rl);
    ratelimit_key(rl, "id:alice@example.org", &alice);
    assert_int_equal(ratelimit_take(rl, &alice, &retry), RL_OK);
    assert_int_equal(ratelimit_take(rl, &alice, &retry), RL_OK);
    assert_int_equal(ratelimit_take(rl, &alice, &retry), RL_LIMITED);
    touch_others(rl, 100000);
    assert_int_equal(ratelimit_take(rl, &alice, &retry), RL_LIMITED);
    ratelimit_free(rl);
}

static void test_null_limiter(void **state)
{
    (void)state;
    rl_key k;
    unsigned retry = 5;

    memset(&k, 0xaa, sizeof(k));
    ratelimit_key(NULL, "id:alice@example.org", &k);
    assert_int_equal(ratelimit_take(NULL, &k, &retry), RL_OK);
    assert_int_equal(retry, 0);
    assert_false(ratelimit_suspended(NULL, &k, &retry));
    assert_false(ratelimit_failure(NULL, &k));
}

/* In a forked child, as a key holder: max_failures failed unwraps suspend
 * mallory, then the child ends (its view let go, as a key holder's at
 * exit). Whether the parent then sees mallory suspended. */
static bool suspended_by_child(ratelimit *rl)
{
    rl_key k;
    unsigned retry = 0;
    int st = 0;
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0) {
        bool now_suspended = false;
        ratelimit_key(rl, "id:mallory@example.org", &k);
        for (int i = 0; i < 3; i++)
            now_suspended = ratelimit_failure(rl, &k);
        bool ok = now_suspended && ratelimit_suspended(rl, &k, &retry);
        ratelimit_free(rl);
        _exit(ok ? 0 : 1);
    }
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ratelimit_key(rl, "id:mallory@example.org", &k);
    return ratelimit_suspended(rl, &k, &retry);
}

static void test_shared_outlives_process(void **state)
{
    (void)state;
    ratelimit *shared = ratelimit_new_shared(0, 1, 3, 600), *private = ratelimit_new(0, 1, 3, 600);
    rl_key other;
    unsigned retry = 0;

    assert_non_null(shared);
    assert_non_null(private);
    assert_true(suspended_by_child(shared));
    ratelimit_key(shared, "id:alice@example.org", &other);
    assert_false(ratelimit_suspended(shared, &other, &retry));
    /* the control: a private limiter's suspension goes with its process */
    assert_false(suspended_by_child(private));
    ratelimit_free(shared);
    ratelimit_free(private);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_per_identity),
        cmocka_unit_test(test_burst_then_limited),
        cmocka_unit_test(test_take_once_per_request),
        cmocka_unit_test(test_failures_suspend),
        cmocka_unit_test(test_room_keeps_counts),
        cmocka_unit_test(test_null_limiter),
        cmocka_unit_test(test_shared_outlives_process),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
