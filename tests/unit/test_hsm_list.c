/*
 * hsm_key_list lists every key on the token, however many objects it
 * holds, or fails: built against gs_hsm_listcap (keys.c with LIST_FIRST 8
 * and LIST_MAX 48, tests/hsm.cmake), so forty keys outgrow the first
 * handle array and forty-nine pass the bound. A listing that stopped at
 * its first array answered HSM_OK with keys left out (gsk_transport_find
 * missed the transport key, check's unrecorded keys were incomplete).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hsm.h"
#include "hsm_internal.h"
#include "testsupport.h"

#define TOKEN_LABEL "hsmlist"
#define TOKEN_URI "pkcs11:token=" TOKEN_LABEL

static char tokdir[512];
static char pinsrc[600];

static int count_cb(void *arg, hsm_ctx *ctx, hsm_key *key)
{
    (void)ctx;
    (void)key;
    (*(int *)arg)++;
    return 0;
}

static void make_keys(hsm_ctx *ctx, const char *prefix, int from, int to)
{
    for (int i = from; i < to; i++) {
        char label[32];
        hsm_keygen_spec sp = {label, NULL, 0, HSM_KEYTYPE_AES, 256, HSM_USE_WRAP, false, false};
        hsm_key *k = NULL;
        hsm_err err;
        snprintf(label, sizeof(label), "%s%02d", prefix, i);
        err = hsm_generate_secret_key(ctx, &sp, &k);
        if (err != HSM_OK)
            fprintf(stderr, "secret %s: %s (%s)\n", label, hsm_strerror(err), hsm_last_error_detail());
        assert_int_equal(err, HSM_OK);
        hsm_key_free(k);
    }
}

static void test_list_all_then_bound(void **state)
{
    hsm_config cfg = {testtoken_softhsm_module(), TOKEN_URI, pinsrc, 1, NULL, NULL};
    hsm_ctx *ctx = NULL;
    int n = 0;
    (void)state;

    assert_int_equal(testtoken_make(TOKEN_LABEL, tokdir, sizeof(tokdir)), 0);
    assert_int_equal(testtoken_pin_source(tokdir, pinsrc, sizeof(pinsrc)), 0);
    assert_int_equal(hsm_open(&cfg, &ctx), HSM_OK);

    /* Forty token objects, five times the first array: every one listed. */
    make_keys(ctx, "aa-", 0, 20);
    make_keys(ctx, "zz-", 0, 20);
    assert_int_equal(hsm_key_list(ctx, "zz-", count_cb, &n), HSM_OK);
    assert_int_equal(n, 20);
    n = 0;
    assert_int_equal(hsm_key_list(ctx, "", count_cb, &n), HSM_OK);
    assert_int_equal(n, 40);

    /* Exactly the bound (48) still lists; one more is an error, not a
     * part of the keys: no callback runs. */
    make_keys(ctx, "zz-", 20, 28);
    n = 0;
    assert_int_equal(hsm_key_list(ctx, "zz-", count_cb, &n), HSM_OK);
    assert_int_equal(n, 28);
    make_keys(ctx, "zz-", 28, 29);
    n = 0;
    assert_int_equal(hsm_key_list(ctx, "zz-", count_cb, &n), HSM_ERR_TOO_MANY_OBJECTS);
    assert_int_equal(n, 0);
    assert_non_null(strstr(hsm_last_error_detail(), "more than 48 objects"));
    assert_null(strstr(hsm_strerror(HSM_ERR_TOO_MANY_OBJECTS), "unknown"));

    hsm_close(ctx);
    assert_int_equal(testtoken_remove(tokdir), 0);
}

/* A list that shrinks to nothing between hsm_read_list's two calls (the
 * last reader unplugged, a mechanism list emptied): "*list NULL and *n 0",
 * as an empty list asked first is. An array handed back with *n 0 was
 * leaked by op_mechs (caps.c), which returns at n == 0 before its free. */
static int shrink_calls;

static hsm_err get_shrinking(hsm_ctx *ctx, void *arg, CK_ULONG *list, CK_ULONG *n)
{
    (void)ctx;
    (void)arg;
    shrink_calls++;
    if (list == NULL)
        *n = 2;
    else
        *n = 0;
    return HSM_OK;
}

static void test_read_list_shrinks_to_empty(void **state)
{
    hsm_list_read how = {
        .get = get_shrinking,
        .fn = "C_GetSlotList",
        .what = "slots",
        .whose = "the module's slot list",
        .max = 8,
        .spare = 1,
        .tries = 3,
    };
    CK_ULONG *list = (CK_ULONG *)&how; /* overwritten */
    CK_ULONG n = 99;

    (void)state;
    assert_int_equal(hsm_read_list(NULL, &how, &list, &n), HSM_OK);
    assert_int_equal(shrink_calls, 2);
    assert_int_equal(n, 0);
    assert_null(list);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_list_all_then_bound),
        cmocka_unit_test(test_read_list_shrinks_to_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
