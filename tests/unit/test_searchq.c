/*
 * test_searchq.c: the key versions whose requests answer at once instead
 * of searching the token again (groupsrv/keyholder/searchq.c): a version
 * searched in vain is quiet for the gap, one whose search found the key is
 * not, another version or kind of the same group is still searched, and
 * more versions than the table holds never take a quiet one's place (each
 * would search again at every request, every token worker pausing 120 ms
 * each time).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_quiet_for_the_gap, reset),
        cmocka_unit_test_setup(test_found_clears, reset),
        cmocka_unit_test_setup(test_other_version_still_searched, reset),
        cmocka_unit_test_setup(test_more_groups_than_slots, reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
