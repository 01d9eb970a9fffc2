/* Unit tests for common/: strict base64, PIN sources, atomic writes, parsing, log quoting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

static void test_b64_roundtrip(void **state)
{
    (void)state;
    for (size_t n = 0; n < 40; n++) {
        unsigned char in[40], *dec = NULL;
        char *enc = NULL;
        size_t declen = 0;
        for (size_t i = 0; i < n; i++)
            in[i] = (unsigned char)(i * 37 + 11);
        assert_int_equal(util_b64_encode(in, n, &enc), UTIL_OK);
        assert_int_equal(util_b64_decode(enc, strlen(enc), 1024, &dec, &declen), UTIL_OK);
        assert_int_equal(declen, n);
        assert_memory_equal(dec, in, n);
        free(enc);
        free(dec);
    }
}

static void test_b64_rejects(void **state)
{
    (void)state;
    /* The second half: the same faults in a group before the last, and a
     * byte above ASCII. */
    static const char *const bad[] = {"abc",      "ab=c",     "a===",     "ab\ncd==", "!!!!",     "QQ=A",
                                      "QR==",     "QUJ=x",    "QQ==QUJD", "QU=DQUJD", "Q!JDQUJD", "QUJ\x80QUJD"};
    unsigned char *dec = NULL;
    size_t len = 0;
    for (size_t i = 0; i < GS_ARRAY_LEN(bad); i++)
        assert_int_not_equal(util_b64_decode(bad[i], strlen(bad[i]), 1024, &dec, &len), UTIL_OK);
    assert_null(dec);
    assert_int_equal(util_b64_decode("QUJD", 4, 3, &dec, &len), UTIL_E_TOOBIG);
    assert_int_equal(util_b64_decode("QQ==", 4, 16, &dec, &len), UTIL_OK);
    assert_int_equal(len, 1);
    assert_int_equal(dec[0], 'A');
    free(dec);
}

static void test_pin_source(void **state)
{
    (void)state;
    char dir[] = "/tmp/gs-test-XXXXXX", path[128];
    char *pin = NULL;
    size_t len = 0;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/pin", dir);

    assert_int_equal(util_write_file_atomic(path, "1234\n", 5, 0600), UTIL_OK);
    assert_int_equal(util_read_pin_source(path, &pin, &len), UTIL_OK);
    assert_int_equal(len, 4);
    assert_string_equal(pin, "1234");
    util_secret_free(pin, len);

    assert_int_equal(chmod(path, 0644), 0);
    assert_int_equal(util_read_pin_source(path, &pin, &len), UTIL_E_PERM);

    setenv("GS_TEST_PIN", "987654", 1);
    assert_int_equal(util_read_pin_source("env:GS_TEST_PIN", &pin, &len), UTIL_OK);
    assert_string_equal(pin, "987654");
    util_secret_free(pin, len);
    assert_int_equal(util_read_pin_source("env:GS_TEST_PIN_ABSENT", &pin, &len), UTIL_E_NOTFOUND);
    setenv("GS_TEST_PIN", "", 1);
    assert_int_equal(util_read_pin_source("env:GS_TEST_PIN", &pin, &len), UTIL_E_FORMAT);

    unlink(path);
    rmdir(dir);
}

static void test_atomic_write_mode(void **state)
{
    (void)state;
    char dir[] = "/tmp/gs-test-XXXXXX", path[128];
    struct stat st;
    unsigned char *data = NULL;
    size_t len = 0;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/f", dir);
    assert_int_equal(util_write_file_atomic(path, "one", 3, 0600), UTIL_OK);
    assert_int_equal(util_write_file_atomic(path, "two!", 4, 0600), UTIL_OK);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(util_read_file(path, 100, &data, &len), UTIL_OK);
    assert_int_equal(len, 4);
    assert_memory_equal(data, "two!", 4);
    free(data);
    assert_int_equal(util_read_file(path, 3, &data, &len), UTIL_E_TOOBIG);

    util_atomic_file *af = NULL;
    assert_int_equal(util_atomic_open(path, 0600, &af), UTIL_OK);
    fputs("partial", (FILE *)util_atomic_fp(af));
    util_atomic_abort(af); /* the old content must survive */
    assert_int_equal(util_read_file(path, 100, &data, &len), UTIL_OK);
    assert_memory_equal(data, "two!", 4);
    free(data);
    unlink(path);
    assert_int_equal(rmdir(dir), 0); /* no temp file left behind */
}

static size_t dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    size_t n = 0;
    assert_non_null(d);
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

/* A writer killed before commit leaves nothing behind: no half-written
 * plaintext, spool or key file, not even a temp name. */
static void test_atomic_killed_writer_leaves_nothing(void **state)
{
    (void)state;
    char dir[] = "/tmp/gs-test-XXXXXX", path[128];
    int ready[2], status;
    pid_t pid;
    char c;

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/plain.txt", dir);
    assert_int_equal(pipe(ready), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        util_atomic_file *af = NULL;
        if (util_atomic_open(path, 0600, &af) != UTIL_OK)
            _exit(1);
        fputs("secret plaintext, half written", (FILE *)util_atomic_fp(af));
        fflush((FILE *)util_atomic_fp(af));
        if (write(ready[1], "r", 1) != 1)
            _exit(1);
        pause();
        _exit(0);
    }
    close(ready[1]);
    assert_int_equal(read(ready[0], &c, 1), 1);
    close(ready[0]);
    if (dir_entries(dir) != 0) /* O_TMPFILE unsupported here: the named fallback is visible */
        print_message("note: filesystem without O_TMPFILE, temp file visible while writing\n");
    else
        assert_int_equal(dir_entries(dir), 0);
    kill(pid, SIGKILL);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(access(path, F_OK) != 0);
    if (dir_entries(dir) == 0)
        assert_int_equal(rmdir(dir), 0);
}

/* util_read_fd: exactly max bytes fit, max+1 is too big, 0 bytes is fine. */
static void test_read_fd_cap(void **state)
{
    (void)state;
    static const size_t sizes[] = {0, 1, 4095, 4096, 4097, 10000};
    for (size_t i = 0; i < GS_ARRAY_LEN(sizes); i++) {
        for (int extra = 0; extra <= 1; extra++) {
            size_t n = sizes[i] + (size_t)extra, len = 0;
            unsigned char *data = NULL, *got = NULL;
            int p[2];
            FILE *w;
            assert_int_equal(pipe(p), 0);
            data = malloc(n + 1);
            assert_non_null(data);
            for (size_t k = 0; k < n; k++)
                data[k] = (unsigned char)(k * 7);
            pid_t pid = fork();
            assert_true(pid >= 0);
            if (pid == 0) {
                close(p[0]);
                w = fdopen(p[1], "w");
                if (w == NULL || (n > 0 && fwrite(data, 1, n, w) != n))
                    _exit(1);
                fclose(w);
                _exit(0);
            }
            close(p[1]);
            int rc = util_read_fd(p[0], sizes[i], &got, &len);
            close(p[0]);
            waitpid(pid, NULL, 0);
            if (extra == 0) {
                assert_int_equal(rc, UTIL_OK);
                assert_int_equal(len, n);
                assert_memory_equal(got, data, n);
                free(got);
            } else {
                assert_int_equal(rc, UTIL_E_TOOBIG);
                assert_null(got);
            }
            free(data);
        }
    }
}

static void test_parse_numbers(void **state)
{
    (void)state;
    uint64_t u;
    long l;
    assert_int_equal(util_parse_u64("42", 0, 100, &u), UTIL_OK);
    assert_int_equal(u, 42);
    assert_int_not_equal(util_parse_u64("-1", 0, 100, &u), UTIL_OK);
    assert_int_not_equal(util_parse_u64("101", 0, 100, &u), UTIL_OK);
    assert_int_not_equal(util_parse_u64("4x", 0, 100, &u), UTIL_OK);
    assert_int_not_equal(util_parse_u64("", 0, 100, &u), UTIL_OK);
    assert_int_not_equal(util_parse_u64("99999999999999999999999", 0, UINT64_MAX, &u), UTIL_OK);
    assert_int_equal(util_parse_int("-5", -10, 10, &l), UTIL_OK);
    assert_int_equal(l, -5);
    size_t s;
    assert_int_not_equal(util_size_mul(SIZE_MAX / 2, 3, &s), UTIL_OK);
    assert_int_not_equal(util_size_add(SIZE_MAX, 1, &s), UTIL_OK);
}

static void test_log_quote(void **state)
{
    (void)state;
    char buf[16];
    assert_string_equal(log_quote(buf, sizeof(buf), "a\"b\n"), "a\\\"b\\x0a");
    log_quote(buf, sizeof(buf), "0123456789abcdefghijkl");
    assert_true(strlen(buf) < sizeof(buf));
    assert_non_null(strstr(buf, "..."));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64_roundtrip),   cmocka_unit_test(test_b64_rejects),
        cmocka_unit_test(test_pin_source),      cmocka_unit_test(test_atomic_write_mode),
        cmocka_unit_test(test_atomic_killed_writer_leaves_nothing),
        cmocka_unit_test(test_read_fd_cap),
        cmocka_unit_test(test_parse_numbers),   cmocka_unit_test(test_log_quote),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
