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
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "hsm_internal.h"
#include "log.h"
#include "util.h"

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

/* The lock file every change leaves beside the record (kept by design):
 * removed so that the test's directory goes too. */
static void unlink_lock(const char *dir)
{
    char lock[160];
    (void)snprintf(lock, sizeof(lock), "%s/pin-refused.lock", dir);
    unlink(lock);
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
    unlink_lock(dir);
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
    unlink_lock(dir);
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
    unlink_lock(dir);
    rmdir(dir);
}

/* Two processes updating the record at once (two instances sharing a
 * directory, one recording a refusal as the other's login clears its
 * own token's entries): each reads, changes and writes the whole file, so
 * without a lock the later write drops the earlier one's entry, and that
 * refused PIN is sent again by the next start. The update waits for the
 * lock beside the record: while another process holds it, a recording
 * process writes nothing, and once it is let go its entry joins the
 * entry written meanwhile. */
static void test_update_waits_for_lock(void **state)
{
    (void)state;
    char dir[] = "/tmp/gs-refusal-XXXXXX", rec[128], key[140], lock[140];
    CK_TOKEN_INFO a, b;
    hsm_pin_src sa = {.is_file = true, .dev = 1, .ino = 10, .size = 5, .mtime_s = 1, .ctime_s = 1};
    hsm_pin_src sb = {.is_file = true, .dev = 1, .ino = 20, .size = 5, .mtime_s = 2, .ctime_s = 2};
    int fd, status = 0;
    pid_t pid;

    assert_non_null(mkdtemp(dir));
    (void)snprintf(rec, sizeof(rec), "%s/pin-refused", dir);
    (void)snprintf(key, sizeof(key), "%s.key", rec);
    (void)snprintf(lock, sizeof(lock), "%s.lock", rec);
    token(&a, "A1");
    token(&b, "B2");
    /* A's entry stands; the key exists, so the child waits only for the lock. */
    hsm_refusal_record(rec, &a, &sa, "wrong", 5, "/etc/a/pin", "CKR_PIN_INCORRECT");
    /* Another process in the middle of its update. */
    assert_true((fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) >= 0);
    assert_int_equal(flock(fd, LOCK_EX), 0);
    assert_true((pid = fork()) >= 0);
    if (pid == 0) {
        (void)close(fd);
        hsm_refusal_record(rec, &b, &sb, "wronG", 5, "/etc/b/pin", "CKR_PIN_INCORRECT");
        _exit(0);
    }
    /* Given time to run, the child must not have written: the holder's
     * own write would replace it. (A child slow to start makes this
     * check weaker, never wrong.) */
    struct timespec ts = {0, 300 * 1000 * 1000};
    (void)nanosleep(&ts, NULL);
    assert_false(matches(rec, &b, &sb, "wronG"));
    assert_int_equal(flock(fd, LOCK_UN), 0);
    (void)close(fd);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_true(matches(rec, &a, &sa, "wrong"));
    assert_true(matches(rec, &b, &sb, "wronG"));
    unlink(rec);
    unlink(key);
    unlink(lock);
    rmdir(dir);
}

/* A key this user cannot use (one root left) is replaced as a refusal is
 * recorded: two processes doing that at once each wrote its entry under
 * its own new key, and the entry whose key the other replaced never
 * matched again (that PIN sent again by the next start). The key is
 * replaced only under the record's lock: while another process holds it,
 * the key stays as it is. */
static void test_key_replaced_under_lock(void **state)
{
    (void)state;
    char dir[] = "/tmp/gs-refusal-XXXXXX", rec[128], key[140], lock[140];
    CK_TOKEN_INFO ti;
    hsm_pin_src env = {.is_file = false};
    struct stat st;
    int fd, status = 0;
    pid_t pid;
    FILE *f;

    assert_non_null(mkdtemp(dir));
    (void)snprintf(rec, sizeof(rec), "%s/pin-refused", dir);
    (void)snprintf(key, sizeof(key), "%s.key", rec);
    (void)snprintf(lock, sizeof(lock), "%s.lock", rec);
    token(&ti, "A1");
    assert_non_null(f = fopen(key, "w"));
    assert_int_equal(fputs("short", f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(key, 0644), 0);
    /* another process in the middle of its change */
    assert_true((fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) >= 0);
    assert_int_equal(flock(fd, LOCK_EX), 0);
    assert_true((pid = fork()) >= 0);
    if (pid == 0) {
        (void)close(fd);
        hsm_refusal_record(rec, &ti, &env, "wrong", 5, "env:GS_PIN", "CKR_PIN_INCORRECT");
        _exit(0);
    }
    /* (A child slow to start makes this check weaker, never wrong.) */
    struct timespec ts = {0, 300 * 1000 * 1000};
    (void)nanosleep(&ts, NULL);
    assert_int_equal(stat(key, &st), 0);
    assert_int_equal(st.st_size, 5);
    assert_int_equal(st.st_mode & 0777, 0644);
    assert_int_equal(flock(fd, LOCK_UN), 0);
    (void)close(fd);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_true(matches(rec, &ti, &env, "wrong"));
    assert_int_equal(stat(key, &st), 0);
    assert_int_equal(st.st_size, 32);
    unlink(rec);
    unlink(key);
    unlink(lock);
    rmdir(dir);
}

/* A PIN source that is a named pipe (a helper writes the PIN into it at
 * each start): every write changes the pipe's times, so an identity
 * with them never matched the next start's, and the same refused PIN
 * was sent again by every restart. The pipe is known by its PIN's MAC. */
static void test_fifo_source(void **state)
{
    (void)state;
    char dir[] = "/tmp/gs-refusal-XXXXXX", rec[128], key[140], fifo[128], b[8];
    CK_TOKEN_INFO ti;
    hsm_pin_src s1, s2;
    struct timespec ts = {0, 30 * 1000 * 1000};
    int fd;

    assert_non_null(mkdtemp(dir));
    (void)snprintf(rec, sizeof(rec), "%s/pin-refused", dir);
    (void)snprintf(key, sizeof(key), "%s.key", rec);
    (void)snprintf(fifo, sizeof(fifo), "%s/pin", dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    token(&ti, "A1");
    hsm_refusal_src_stat(fifo, &s1);
    hsm_refusal_record(rec, &ti, &s1, "wrong", 5, fifo, "CKR_PIN_INCORRECT");
    /* the helper writes the same PIN again for the next start */
    (void)nanosleep(&ts, NULL);
    assert_true((fd = open(fifo, O_RDWR | O_CLOEXEC)) >= 0);
    assert_int_equal(write(fd, "wrong\n", 6), 6);
    assert_int_equal(read(fd, b, sizeof(b)), 6);
    (void)close(fd);
    hsm_refusal_src_stat(fifo, &s2);
    assert_true(matches(rec, &ti, &s2, "wrong"));
    assert_false(matches(rec, &ti, &s2, "right"));
    unlink(rec);
    unlink(key);
    unlink(fifo);
    unlink_lock(dir);
    rmdir(dir);
}

/* Standard input as the PIN source (pin_source = /dev/stdin, `echo PIN |
 * groupsrv ...` from a cron job): its pipe is a new inode at every start,
 * so a pipe known by its device and inode never matched the next start's:
 * the same refused PIN was sent again by every run, each run adding an
 * entry that pushed other sources' out. A pipe is known by its PIN's MAC. */
static void test_stdin_pipe_source(void **state)
{
    (void)state;
    char dir[] = "/tmp/gs-refusal-XXXXXX", rec[128], key[140], lock[140], path[64];
    CK_TOKEN_INFO ti;
    hsm_pin_src s1, s2;
    int p1[2], p2[2];

    assert_non_null(mkdtemp(dir));
    (void)snprintf(rec, sizeof(rec), "%s/pin-refused", dir);
    (void)snprintf(key, sizeof(key), "%s.key", rec);
    (void)snprintf(lock, sizeof(lock), "%s.lock", rec);
    token(&ti, "A1");
    /* two runs, each with its own pipe on standard input */
    assert_int_equal(pipe(p1), 0);
    assert_int_equal(pipe(p2), 0);
    (void)snprintf(path, sizeof(path), "/proc/self/fd/%d", p1[0]);
    hsm_refusal_src_stat(path, &s1);
    assert_true(s1.is_pipe);
    hsm_refusal_record(rec, &ti, &s1, "wrong", 5, "/dev/stdin", "CKR_PIN_INCORRECT");
    (void)snprintf(path, sizeof(path), "/proc/self/fd/%d", p2[0]);
    hsm_refusal_src_stat(path, &s2);
    assert_true(matches(rec, &ti, &s2, "wrong"));
    assert_false(matches(rec, &ti, &s2, "right"));
    /* the second run's refusal replaces the first's entry, adds none */
    hsm_refusal_record(rec, &ti, &s2, "wrong", 5, "/dev/stdin", "CKR_PIN_INCORRECT");
    unsigned char *text = NULL;
    size_t len = 0, entries = 0;
    assert_int_equal(util_read_file(rec, 65536, &text, &len), UTIL_OK);
    for (const char *c = (const char *)text; (c = strstr(c, "groupsrv-pin-refused 1 ")) != NULL; c++)
        entries++;
    free(text);
    assert_int_equal(entries, 1);
    for (int i = 0; i < 2; i++) {
        (void)close(p1[i]);
        (void)close(p2[i]);
    }
    unlink(rec);
    unlink(key);
    unlink(lock);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_identity_other_pin),
        cmocka_unit_test(test_shared_directory),
        cmocka_unit_test(test_unusable_key_replaced),
        cmocka_unit_test(test_update_waits_for_lock),
        cmocka_unit_test(test_key_replaced_under_lock),
        cmocka_unit_test(test_fifo_source),
        cmocka_unit_test(test_stdin_pipe_source),
    };
    log_init("test_refusal", LOG_LVL_WARN, NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
