/*
 * test_searchq.c: the groups whose requests answer a key version the token
 * does not show at once instead of searching again
 * (groupsrv/keyholder/searchq.c): a group searched in vain is quiet for
 * the gap, one whose search found the key is not, and more groups than
 * the table holds never take a quiet group's place (each would search
 * again at every request, every token worker pausing 120 ms each time).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "searchq.h"

static int reset(void **state)
{
    (void)state;
    searchq_reset();
    return 0;
}

static void test_quiet_for_the_gap(void **state)
{
    (void)state;
    assert_true(searchq_may(7, 100.0));
    searchq_done(7, false, 100.1, 2.0);
    assert_false(searchq_may(7, 100.2));
    assert_false(searchq_may(7, 102.0));
    assert_true(searchq_may(7, 102.2));
    assert_true(searchq_may(8, 100.2)); /* another group is not */
}

static void test_found_clears(void **state)
{
    (void)state;
    searchq_done(7, false, 100.0, 2.0);
    searchq_done(7, true, 102.5, 2.0);
    assert_true(searchq_may(7, 102.6));
}

/* A replica that lacks a version of more groups than the table holds (a
 * `secret rotate` of every list on another server): a group beyond it
 * answers at once, and the quiet groups stay quiet. Evicting the oldest
 * mark made each request of those groups search again. */
static void test_more_groups_than_slots(void **state)
{
    (void)state;
    for (int64_t g = 1; g <= SEARCHQ_SLOTS; g++) {
        assert_true(searchq_may(g, 100.0));
        searchq_done(g, false, 100.0 + (double)g / 100, 2.0);
    }
    int64_t extra = SEARCHQ_SLOTS + 1;
    if (searchq_may(extra, 100.5))
        searchq_done(extra, false, 100.6, 2.0);
    for (int64_t g = 1; g <= SEARCHQ_SLOTS; g++)
        assert_false(searchq_may(g, 100.7));
    assert_false(searchq_may(extra, 100.7));
    /* once the marks ran out, every group searches again */
    assert_true(searchq_may(extra, 103.0));
    searchq_done(extra, false, 103.0, 2.0);
    assert_false(searchq_may(extra, 103.1));
    assert_true(searchq_may(1, 103.1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_quiet_for_the_gap, reset),
        cmocka_unit_test_setup(test_found_clears, reset),
        cmocka_unit_test_setup(test_more_groups_than_slots, reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
