/* Unit tests for groupsrv/server/jsonin.c: what the one-pass reader takes,
 * jansson takes the same way; what it leaves, it leaves to jansson. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jsonin.h"

/* The property every input must have: when jsonin reads it, json_loadb
 * reads the same object (same members, same order, same types). Returns
 * whether jsonin read it. */
static int agrees(const char *text, size_t len)
{
    json_error_t err;
    json_t *fast = jsonin_flat_object(text, len);
    json_t *slow = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);

    if (fast == NULL) {
        json_decref(slow);
        return 0;
    }
    assert_non_null(slow);
    assert_true(json_equal(fast, slow));
    char *a = json_dumps(fast, JSON_COMPACT | JSON_PRESERVE_ORDER);
    char *b = json_dumps(slow, JSON_COMPACT | JSON_PRESERVE_ORDER);
    assert_non_null(a);
    assert_non_null(b);
    assert_string_equal(a, b);
    free(a);
    free(b);
    json_decref(fast);
    json_decref(slow);
    return 1;
}

static int agrees_str(const char *text)
{
    return agrees(text, strlen(text));
}

static void test_common_bodies_are_read(void **state)
{
    (void)state;
    static const char *const bodies[] = {
        "{\"recipient_info\":\"MIIBjAIBADB0MGcxCzAJBgNVBAYTAkRF+/==\"}",
        "{\"recipient_info\":\"AAAA\",\"deliver\":\"recipient-key\",\"key_version\":2}",
        "{\"encrypted_key\":\"AAAA\",\"algorithm\":\"RSA-OAEP-256\",\"key_length\":32,\"key_version\":0}",
        "{\"content_algorithm\":\"2.16.840.1.101.3.4.1.42\",\"n\":-17,\"m\":999999999999999999}",
        "{}", " { } ", "\r\n\t{ \"a\" : \"b\" ,\n \"c\" :\t1 }\n", "{\"\":\"\"}", "{\"a\":\"b\"}\n\n",
        "{\"path\":\"a/b <c> {d} [e] 'f' ~!@#$%^&*()_+=`|;:,.?\"}",
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++)
        assert_int_equal(agrees_str(bodies[i]), 1);
}

static void test_everything_else_is_left_to_jansson(void **state)
{
    (void)state;
    static const char *const others[] = {
        /* valid JSON that is not a flat object of plain values */
        "{\"a\":\"\\n\"}", "{\"a\":\"\\u00e9\"}", "{\"a\\\"\":\"b\"}", "{\"a\":\"caf\xc3\xa9\"}", "{\"a\":{}}",
        "{\"a\":[]}", "{\"a\":true}", "{\"a\":false}", "{\"a\":null}", "{\"a\":1.5}", "{\"a\":1e3}", "{\"a\":1E3}",
        "{\"a\":-0}", "{\"a\":1234567890123456789}", "{\"a\":-1234567890123456789}", "[]", "\"a\"", "1",
        /* invalid JSON: jansson words the error */
        "", " ", "{", "}", "{\"a\"}", "{\"a\":}", "{\"a\":\"b\",}", "{,}", "{\"a\":\"b\"", "{\"a\":\"b",
        "{\"a\":\"b\"}x", "{\"a\":\"b\"}{}", "{\"a\":\"b\" \"c\":\"d\"}", "{\"a\":01}", "{\"a\":-}", "{\"a\":+1}",
        "{\"a\":1a}", "{\"a\":\"b\",\"a\":\"c\"}", "{\"a\":1,\"a\":1}", "{\"a\":\"tab\there\"}", "{'a':'b'}",
        "{\"a\":\"\x7f\"}", "\xef\xbb\xbf{}", "{a:\"b\"}", "{\"a\" \"b\"}", "{\"a\":\"b\"\x0b}",
    };
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++)
        assert_int_equal(agrees_str(others[i]), 0);
    /* A NUL inside the text, and a key too long for the reader. */
    assert_int_equal(agrees("{\"a\":\"b\0c\"}", 11), 0);
    assert_int_equal(agrees("{\"a\":\"b\"}\0", 10), 0);
    char big[400];
    memset(big, 'k', sizeof(big));
    memcpy(big, "{\"", 2);
    memcpy(big + sizeof(big) - 6, "\":1}", 5);
    assert_int_equal(agrees(big, strlen(big)), 0);
    /* Not past the end: the length given, not the NUL, ends the text. */
    assert_int_equal(agrees("{\"a\":\"b\"}", 8), 0);
    assert_int_equal(agrees("{\"a\":12}", 7), 0);
}

/* Random edits of a body, with the characters that matter to JSON. */
static void test_random_edits_agree(void **state)
{
    (void)state;
    static const char base[] = "{\"recipient_info\":\"QUJD+/==\", \"key_version\":12,\"deliver\":\"tls\"}";
    static const char pick[] = "{}[]\":,\\ \t\n0123456789-+.eEaZ/\x01\x7f\x80\xc3\xa9tfn";
    unsigned seed = 4242, read = 0;
    char t[sizeof(base) + 8];

    for (int round = 0; round < 30000; round++) {
        size_t n = sizeof(base) - 1;
        memcpy(t, base, n);
        int edits = 1 + (int)((seed = seed * 1103515245u + 12345u) >> 16) % 3;
        for (int k = 0; k < edits; k++) {
            seed = seed * 1103515245u + 12345u;
            size_t at = (seed >> 16) % n;
            seed = seed * 1103515245u + 12345u;
            char c = pick[(seed >> 16) % (sizeof(pick) - 1)];
            switch ((seed >> 8) % 3) {
            case 0: t[at] = c; break;
            case 1: /* delete */
                memmove(t + at, t + at + 1, n - at - 1);
                n--;
                break;
            default: /* insert */
                if (n + 1 < sizeof(t)) {
                    memmove(t + at + 1, t + at, n - at);
                    t[at] = c;
                    n++;
                }
            }
        }
        read += (unsigned)agrees(t, n);
    }
    assert_true(read > 1000 && read < 29000); /* both kinds were tried */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_common_bodies_are_read),
        cmocka_unit_test(test_everything_else_is_left_to_jansson),
        cmocka_unit_test(test_random_edits_agree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
