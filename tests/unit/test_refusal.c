/*
 * test_refusal.c: hsm/refusal.c, the PIN refusal record, without a token:
 * a record never refuses a PIN other than the one refused (a file whose
 * identity looks unchanged, on a filesystem whose timestamps are coarse or
 * meaningless), and a directory two configurations share keeps each
 * token's refusal.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "hsm_internal.h"
#include "log.h"

static void token(CK_TOKEN_INFO *ti, const char *serial)
{
    memset(ti, ' ', sizeof(*ti));
    memcpy(ti->label, "groupsrv", 8);
    memcpy(ti->serialNumber, serial, strlen(serial));
}

static bool matches(const char *rec, const CK_TOKEN_INFO *ti, const hsm_pin_src *src, const char *pin)
{
    char when[40], rv[48];
    return hsm_refusal_matches(rec, ti, src, pin, strlen(pin), when, sizeof(when), rv, sizeof(rv));
}

/* A PIN file rewritten within the timestamps' resolution (a second on
 * some filesystems), or on one whose inode and times never change, with
 * a corrected PIN of the same length: its stat is the same, its PIN is
 * not. The corrected PIN must be tried. */
static void test_same_identity_other_pin(void **state)
{
    (void)state;
    char dir[] = "/tmp/gs-refusal-XXXXXX", rec[128];
    CK_TOKEN_INFO ti;
    hsm_pin_src src = {.is_file = true, .dev = 64769, .ino = 1234, .size = 7, .mtime_s = 1700000000,
                       .ctime_s = 1700000000};

    assert_non_null(mkdtemp(dir));
    (void)snprintf(rec, sizeof(rec), "%s/pin-refused", dir);
    token(&ti, "A1");
    hsm_refusal_record(rec, &ti, &src, "123456\n", 7, "/etc/groupsrv/pin", "CKR_PIN_INCORRECT");
    assert_true(matches(rec, &ti, &src, "123456\n"));
    assert_false(matches(rec, &ti, &src, "654321\n"));
    /* neither file holds the PIN */
    char key[140];
    (void)snprintf(key, sizeof(key), "%s.key", rec);
    FILE *f = fopen(rec, "r");
    char buf[8192];
    size_t n = f != NULL ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    buf[n] = '\0';
    if (f != NULL)
        fclose(f);
    assert_null(strstr(buf, "123456"));
    unlink(key);
    unlink(rec);
    rmdir(dir);
}

/* Two configurations whose databases share a directory, on two tokens:
 * token B's successful login leaves token A's refusal in place, and B's
 * own refusal does not replace A's. */
static void test_shared_directory(void **state)
{
    (void)state;
    char dir[] = "/tmp/gs-refusal-XXXXXX", rec[128], key[140];
    CK_TOKEN_INFO a, b;
    hsm_pin_src sa = {.is_file = true, .dev = 1, .ino = 10, .size = 5, .mtime_s = 1, .ctime_s = 1};
    hsm_pin_src sb = {.is_file = true, .dev = 1, .ino = 20, .size = 5, .mtime_s = 2, .ctime_s = 2};

    assert_non_null(mkdtemp(dir));
    (void)snprintf(rec, sizeof(rec), "%s/pin-refused", dir);
    (void)snprintf(key, sizeof(key), "%s.key", rec);
    token(&a, "A1");
    token(&b, "B2");
    hsm_refusal_record(rec, &a, &sa, "wrong", 5, "/etc/a/pin", "CKR_PIN_INCORRECT");
    assert_true(matches(rec, &a, &sa, "wrong"));
    /* B logs in: A's record stays */
    hsm_refusal_clear(rec, &b);
    assert_true(matches(rec, &a, &sa, "wrong"));
    /* B refused too: both are remembered */
    hsm_refusal_record(rec, &b, &sb, "wronG", 5, "/etc/b/pin", "CKR_PIN_INCORRECT");
    assert_true(matches(rec, &a, &sa, "wrong"));
    assert_true(matches(rec, &b, &sb, "wronG"));
    struct stat st;
    assert_int_equal(stat(rec, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* A logs in: B's stays, A's goes; B logs in: the file goes */
    hsm_refusal_clear(rec, &a);
    assert_false(matches(rec, &a, &sa, "wrong"));
    assert_true(matches(rec, &b, &sb, "wronG"));
    hsm_refusal_clear(rec, &b);
    assert_int_equal(access(rec, F_OK), -1);
    unlink(key);
    rmdir(dir);
}

/* A key beside the record that this process cannot use (made by a
 * command root ran with the service's configuration: 0600 and root's; or
 * not one this program wrote): a refusal of an env: PIN must still be
 * recorded, else every restart of the service sends that PIN again. */
static void test_unusable_key_replaced(void **state)
{
    (void)state;
    char dir[] = "/tmp/gs-refusal-XXXXXX", rec[128], key[140];
    CK_TOKEN_INFO ti;
    hsm_pin_src env = {.is_file = false};
    struct stat st;
    FILE *f;

    assert_non_null(mkdtemp(dir));
    (void)snprintf(rec, sizeof(rec), "%s/pin-refused", dir);
    (void)snprintf(key, sizeof(key), "%s.key", rec);
    token(&ti, "A1");
    assert_non_null(f = fopen(key, "w"));
    assert_int_equal(fputs("short", f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(key, 0644), 0);
    hsm_refusal_record(rec, &ti, &env, "wrong", 5, "env:GS_PIN", "CKR_PIN_INCORRECT");
    assert_true(matches(rec, &ti, &env, "wrong"));
    assert_false(matches(rec, &ti, &env, "right"));
    assert_int_equal(stat(key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(st.st_size, 32);
    unlink(rec);
    unlink(key);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_identity_other_pin),
        cmocka_unit_test(test_shared_directory),
        cmocka_unit_test(test_unusable_key_replaced),
    };
    log_init("test_refusal", LOG_LVL_WARN, NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
