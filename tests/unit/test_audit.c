/*
 * test_audit.c: the server's hash-chained audit log (groupsrv/server/audit.c):
 * the chain, group commit (records queued, then written by a round with one
 * write and one fdatasync), interleaving with other appenders and rotation,
 * what a failed write or fdatasync does, and that a record is written whole
 * or not at all. fdatasync and write are wrapped at
 * link time (-Wl,--wrap=...) so a test can make a sync fail or slow, or a
 * write stop short as on a full disk; everything else is the real file
 * system. The same records in the database ([audit] store = db) against a
 * private PostgreSQL that tests/lib/pg.sh starts for the test.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "audit.h"
#include "log.h"
#include "pgtest.h"
#include "store.h"

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

int __real_fdatasync(int fd);
ssize_t __real_write(int fd, const void *buf, size_t n);
ssize_t __wrap_write(int fd, const void *buf, size_t n);

/* A full disk: the next write of a record (> 16 bytes) writes half of it,
 * and the call after that fails with ENOSPC, as write(2) does when space
 * runs out part way. */
static atomic_int disk_full_writes;
static atomic_int enospc_next;
static atomic_int record_writes; /* writes of more than 16 bytes */

ssize_t __wrap_write(int fd, const void *buf, size_t n)
{
    if (n > 16)
        atomic_fetch_add(&record_writes, 1);
    if (atomic_load(&enospc_next)) {
        atomic_store(&enospc_next, 0);
        errno = ENOSPC;
        return -1;
    }
    if (n > 16 && atomic_load(&disk_full_writes) > 0) {
        atomic_fetch_sub(&disk_full_writes, 1);
        atomic_store(&enospc_next, 1);
        return __real_write(fd, buf, n / 2);
    }
    return __real_write(fd, buf, n);
}
/* A scripted CLOCK_MONOTONIC while armed: the first reading just before a
 * second ends (x.999999000), each later one fake_clock_step_ns further on,
 * so that a wait's arithmetic meets a change of second at a known point. */
int __real_clock_gettime(clockid_t id, struct timespec *ts);
int __wrap_clock_gettime(clockid_t id, struct timespec *ts);
static atomic_int fake_clock_armed;
static atomic_llong fake_clock_ns, fake_clock_step_ns;

int __wrap_clock_gettime(clockid_t id, struct timespec *ts)
{
    if (id != CLOCK_MONOTONIC || !atomic_load(&fake_clock_armed))
        return __real_clock_gettime(id, ts);
    long long ns = atomic_fetch_add(&fake_clock_ns, atomic_load(&fake_clock_step_ns));
    ts->tv_sec = (time_t)(ns / 1000000000LL);
    ts->tv_nsec = (long)(ns % 1000000000LL);
    return 0;
}

int __wrap_fdatasync(int fd);

static atomic_int fail_syncs;   /* fail the next N calls with EIO */
static atomic_int sync_calls;
static atomic_int sync_delay_ms; /* each call sleeps this long first */
static void (*during_sync)(void); /* run once inside the next call */

int __wrap_fdatasync(int fd);

static atomic_int fail_syncs;   /* fail the next N calls with EIO */
static atomic_int sync_calls;
static atomic_int sync_delay_ms; /* each call sleeps this long first */
static void (*during_sync)(void); /* run once inside the next call */

/* Another process appending while a log reads the file: armed with a log
 * on the same file and a descriptor of it, the next pread(2) that finds
 * the file's lock free first lets that other log append one record (it
 * takes the lock itself), as a server may between two system calls of
 * an appender that does not hold the lock. */
ssize_t __real_pread(int fd, void *buf, size_t n, off_t off);
ssize_t __wrap_pread(int fd, void *buf, size_t n, off_t off);
static audit_log *pread_other;
static int pread_probe_fd = -1;

ssize_t __wrap_pread(int fd, void *buf, size_t n, off_t off)
{
    if (pread_other != NULL && flock(pread_probe_fd, LOCK_EX | LOCK_NB) == 0) {
        audit_log *other = pread_other;
        audit_record r = {.action = "member-add", .identity = "another process", .outcome = "ok", .key_version = -1};
        pread_other = NULL;
        flock(pread_probe_fd, LOCK_UN);
        (void)audit_append(other, &r);
    }
    return __real_pread(fd, buf, n, off);
}

int __wrap_fdatasync(int fd)
{
    atomic_fetch_add(&sync_calls, 1);
    if (during_sync != NULL) {
        void (*hook)(void) = during_sync;
        during_sync = NULL;
        hook();
    }
    int ms = atomic_load(&sync_delay_ms);
    if (ms > 0) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)ms * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (atomic_load(&fail_syncs) > 0) {
        atomic_fetch_sub(&fail_syncs, 1);
        errno = EIO;
        return -1;
    }
    return __real_fdatasync(fd);
}

struct fx {
    char dir[64];
    char path[96];
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/test-audit.XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    snprintf(f->path, sizeof(f->path), "%s/audit.jsonl", f->dir);
    atomic_store(&fail_syncs, 0);
    atomic_store(&sync_calls, 0);
    atomic_store(&sync_delay_ms, 0);
    atomic_store(&disk_full_writes, 0);
    atomic_store(&enospc_next, 0);
    atomic_store(&record_writes, 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    unlink(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static audit_record rec(const char *outcome)
{
    return (audit_record){.request_id = "r1", .action = "unwrap", .identity = "alice@example.org",
                          .group = "staff", .key_version = 1, .method = "tls", .outcome = outcome};
}

/* A new log at f->path with n records, closed again. */
static void write_records(struct fx *f, int n)
{
    audit_log *log = NULL;
    audit_record r = rec("ok");

    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    for (int i = 0; i < n; i++)
        assert_int_equal(audit_append(log, &r), AUDIT_OK);
    audit_close(log);
}

static size_t verify(const char *path)
{
    size_t lines = 0, bad = 0;
    char head[65];
    assert_int_equal(audit_verify_file(path, &lines, &bad, head), AUDIT_OK);
    assert_int_equal(bad, 0);
    return lines;
}

static void test_append_chains_and_reopen_continues(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");

    write_records(f, 3);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    audit_close(log);
    assert_int_equal(verify(f->path), 4);
}

static void test_edited_line_breaks_chain(void **state)
{
    struct fx *f = *state;

    write_records(f, 3);
    /* Change "alice" to "mallo" in the first line only. */
    FILE *fp = fopen(f->path, "r+");
    assert_non_null(fp);
    char line[1024];
    assert_non_null(fgets(line, sizeof(line), fp));
    char *p = strstr(line, "alice");
    assert_non_null(p);
    assert_int_equal(fseek(fp, (long)(p - line), SEEK_SET), 0);
    assert_int_equal(fwrite("mallo", 1, 5, fp), 5);
    fclose(fp);
    size_t lines = 0, bad = 0;
    assert_int_equal(audit_verify_file(f->path, &lines, &bad, NULL), AUDIT_ERR_CHAIN);
    assert_int_equal(bad, 2);
}

static void test_write_is_not_durable_until_synced(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    unsigned long long a = 0, b = 0;

    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_write(log, &r, &a), AUDIT_OK);
    assert_int_equal(audit_write(log, &r, &b), AUDIT_OK);
    assert_true(b > a);
    assert_int_equal(audit_seq_state(log, a), 0);
    assert_int_equal(atomic_load(&sync_calls), 0);
    /* One wait syncs both (group commit). */
    assert_int_equal(audit_wait_durable(log, b, b), AUDIT_OK);
    assert_int_equal(atomic_load(&sync_calls), 1);
    assert_int_equal(audit_seq_state(log, a), 1);
    assert_int_equal(audit_seq_state(log, b), 1);
    assert_int_equal(audit_wait_durable(log, a, a), AUDIT_OK);
    assert_int_equal(atomic_load(&sync_calls), 1);
    audit_close(log);
    assert_int_equal(verify(f->path), 2);
}

static void test_failed_sync_fails_every_record_it_covered(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    unsigned long long a = 0, b = 0, c = 0;

    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_write(log, &r, &a), AUDIT_OK);
    assert_int_equal(audit_write(log, &r, &b), AUDIT_OK);
    atomic_store(&fail_syncs, 1);
    assert_int_equal(audit_wait_durable(log, b, b), AUDIT_ERR_IO);
    assert_int_equal(audit_seq_state(log, a), -1);
    assert_int_equal(audit_seq_state(log, b), -1);
    /* A later successful sync proves nothing about them ... */
    assert_int_equal(audit_write(log, &r, &c), AUDIT_OK);
    assert_int_equal(audit_wait_durable(log, c, c), AUDIT_OK);
    assert_int_equal(audit_seq_state(log, a), -1);
    /* ... but the next record is durable, and the chain still verifies. */
    assert_int_equal(audit_seq_state(log, c), 1);
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    audit_close(log);
    assert_int_equal(verify(f->path), 4);
}

/* One request's records may fall into different rounds: if any of them
 * was covered by a failed round the request fails, even when its last
 * record was synced fine later. */
static void test_request_range_fails_if_any_record_failed(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    unsigned long long first = 0, second = 0, other = 0;

    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_write(log, &r, &first), AUDIT_OK);
    atomic_store(&fail_syncs, 1);
    assert_int_equal(audit_wait_durable(log, first, first), AUDIT_ERR_IO);
    assert_int_equal(audit_write(log, &r, &second), AUDIT_OK);
    assert_int_equal(audit_write(log, &r, &other), AUDIT_OK);
    assert_int_equal(audit_wait_durable(log, second, second), AUDIT_OK);
    assert_int_equal(audit_seq_state(log, second), 1);
    assert_int_equal(audit_range_state(log, first, second), -1);
    assert_int_equal(audit_wait_durable(log, first, second), AUDIT_ERR_IO);
    assert_int_equal(audit_range_state(log, second, other), 1);
    assert_int_equal(audit_wait_durable(log, 0, 1), AUDIT_ERR_ARGS);
    audit_close(log);
}

/* Lines written while a failing fdatasync runs are failed with it: Linux
 * reports a write-back error once, so the next successful sync proves
 * nothing about pages they may share. The write happens inside the
 * wrapped fdatasync (the log's mutex is not held during a sync). */
static audit_log *late_log;
static unsigned long long late_seq;

static void write_during_sync(void)
{
    audit_record r = rec("ok");
    if (audit_write(late_log, &r, &late_seq) != AUDIT_OK)
        late_seq = 0;
}

static void test_writes_during_failed_sync_fail_too(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    unsigned long long a = 0;

    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_write(log, &r, &a), AUDIT_OK);
    late_log = log;
    late_seq = 0;
    during_sync = write_during_sync;
    atomic_store(&fail_syncs, 1);
    assert_int_equal(audit_wait_durable(log, a, a), AUDIT_ERR_IO);
    assert_true(late_seq > a);
    assert_int_equal(audit_seq_state(log, late_seq), -1);
    assert_int_equal(audit_wait_durable(log, late_seq, late_seq), AUDIT_ERR_IO);
    /* The next record is fine again. */
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    audit_close(log);
    assert_int_equal(verify(f->path), 3);
}

/* audit_check: cheap while all is well; after a failure it runs a real
 * round and clears the failure only if that works. */
static void test_check_after_failure(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    unsigned long long a = 0;

    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    int before = atomic_load(&sync_calls);
    assert_int_equal(audit_check(log), AUDIT_OK);
    assert_int_equal(atomic_load(&sync_calls), before);
    assert_int_equal(audit_write(log, &r, &a), AUDIT_OK);
    atomic_store(&fail_syncs, 2);
    assert_int_equal(audit_wait_durable(log, a, a), AUDIT_ERR_IO);
    assert_int_equal(audit_check(log), AUDIT_ERR_IO); /* the disk still fails */
    assert_int_equal(audit_check(log), AUDIT_OK);     /* now it works */
    assert_int_equal(audit_seq_state(log, a), -1);    /* still never durable */
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    /* A file moved away is reported at once. */
    char moved[128];
    snprintf(moved, sizeof(moved), "%s.moved", f->path);
    assert_int_equal(rename(f->path, moved), 0);
    assert_int_equal(audit_check(log), AUDIT_ERR_IO);
    assert_int_equal(audit_append(log, &r), AUDIT_ERR_IO);
    assert_int_equal(rename(moved, f->path), 0);
    assert_int_equal(audit_check(log), AUDIT_OK);
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    audit_close(log);
    assert_int_equal(verify(f->path), 4);
}

/* A round writes every queued record with one write(2) and syncs them
 * with one fdatasync; nothing touches the file before it. */
static void test_round_writes_queue_in_one_write(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    unsigned long long seq[10];
    struct stat st;

    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    for (int i = 0; i < 10; i++)
        assert_int_equal(audit_write(log, &r, &seq[i]), AUDIT_OK);
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_size, 0);
    assert_int_equal(atomic_load(&record_writes), 0);
    assert_int_equal(audit_wait_durable(log, seq[0], seq[9]), AUDIT_OK);
    assert_int_equal(atomic_load(&record_writes), 1);
    assert_int_equal(atomic_load(&sync_calls), 1);
    assert_int_equal(audit_range_state(log, seq[0], seq[9]), 1);
    audit_close(log);
    assert_int_equal(verify(f->path), 10);
}

/* A record too long to be a line is refused alone; its neighbours in the
 * same round are written and chain past it. */
static void test_overlong_record_fails_alone(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok"), big = rec("ok");
    unsigned long long a = 0, b = 0, c = 0;
    char *huge = malloc(10000);

    assert_non_null(huge);
    memset(huge, 'x', 9999);
    huge[9999] = '\0';
    json_t *extra = json_pack("{s:s}", "note", huge);
    big.extra = extra;
    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_write(log, &r, &a), AUDIT_OK);
    assert_int_equal(audit_write(log, &big, &b), AUDIT_OK);
    assert_int_equal(audit_write(log, &r, &c), AUDIT_OK);
    assert_int_equal(audit_wait_durable(log, c, c), AUDIT_OK);
    assert_int_equal(audit_seq_state(log, a), 1);
    assert_int_equal(audit_seq_state(log, b), -1);
    assert_int_equal(audit_wait_durable(log, a, c), AUDIT_ERR_IO);
    audit_close(log);
    json_decref(extra);
    free(huge);
    assert_int_equal(verify(f->path), 2);
}

/* Another process that holds the file's lock and stops (a CLI append
 * suspended with ^Z) fails the round after the bounded wait instead of
 * stalling every answer; once it lets go, records are written again and
 * the chain still verifies. */
static void test_round_gives_up_on_a_lock_held_too_long(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    unsigned long long a = 0, b = 0;
    struct timespec t0, t1;

    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    audit_set_lock_wait(log, 200);
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    /* A second open file description: its flock conflicts with the log's. */
    int other = open(f->path, O_RDWR | O_APPEND);
    assert_true(other >= 0);
    assert_int_equal(flock(other, LOCK_EX), 0);
    assert_int_equal(audit_write(log, &r, &a), AUDIT_OK);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(audit_wait_durable(log, a, a), AUDIT_ERR_IO);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double waited = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    assert_true(waited >= 0.2);
    assert_int_equal(audit_seq_state(log, a), -1);
    assert_int_equal(flock(other, LOCK_UN), 0);
    close(other);
    assert_int_equal(audit_write(log, &r, &b), AUDIT_OK);
    assert_int_equal(audit_wait_durable(log, b, b), AUDIT_OK);
    assert_int_equal(audit_seq_state(log, b), 1);
    audit_close(log);
    assert_int_equal(verify(f->path), 2);
}

/* The wait for a held lock is the whole lock_wait, also when the second
 * changes during it: readings 199.5 ms apart, the first at x.999999000,
 * the next at x+1.199499000; cutting the nanosecond difference to
 * milliseconds on its own made that 200 ms, and the round gave up half a
 * millisecond early (the test above then measured less than its 200 ms).
 * The round reads the clock again, at 399 ms, before it gives up. */
static void test_round_waits_the_whole_lock_wait(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    unsigned long long a = 0;

    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    audit_set_lock_wait(log, 200);
    int other = open(f->path, O_RDWR | O_APPEND);
    assert_true(other >= 0);
    assert_int_equal(flock(other, LOCK_EX), 0);
    assert_int_equal(audit_write(log, &r, &a), AUDIT_OK);
    const long long first = 1000LL * 1000000000LL + 999999000LL, step = 199500000LL;
    atomic_store(&fake_clock_ns, first);
    atomic_store(&fake_clock_step_ns, step);
    atomic_store(&fake_clock_armed, 1);
    audit_err rc = audit_wait_durable(log, a, a);
    atomic_store(&fake_clock_armed, 0);
    assert_int_equal(rc, AUDIT_ERR_IO);
    /* the reading it gave up at: the last one handed out */
    long long gave_up_after = atomic_load(&fake_clock_ns) - step - first;
    assert_true(gave_up_after >= 200000000LL);
    assert_int_equal(flock(other, LOCK_UN), 0);
    close(other);
    audit_close(log);
}

/* A full disk in the middle of a round's write fails every record of the
 * round, cuts the fragment off, and the next round starts from the head
 * before it. */
static void test_full_disk_fails_the_whole_batch(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    unsigned long long a = 0, b = 0, c = 0;

    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    assert_int_equal(audit_write(log, &r, &a), AUDIT_OK);
    assert_int_equal(audit_write(log, &r, &b), AUDIT_OK);
    atomic_store(&disk_full_writes, 1);
    assert_int_equal(audit_wait_durable(log, b, b), AUDIT_ERR_IO);
    assert_int_equal(audit_seq_state(log, a), -1);
    assert_int_equal(verify(f->path), 1);
    assert_int_equal(audit_write(log, &r, &c), AUDIT_OK);
    assert_int_equal(audit_wait_durable(log, c, c), AUDIT_OK);
    audit_close(log);
    assert_int_equal(verify(f->path), 2);
}

/* Records nobody waited for are written when the log is closed. */
static void test_close_writes_what_is_queued(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    unsigned long long a = 0;

    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_write(log, &r, &a), AUDIT_OK);
    assert_int_equal(audit_write(log, &r, &a), AUDIT_OK);
    audit_close(log);
    assert_int_equal(verify(f->path), 2);
}

/* Concurrent blocking appenders share rounds and keep one chain. */
struct appender {
    audit_log *log;
    int n;
    int failures;
};

static void *append_many(void *arg)
{
    struct appender *a = arg;
    audit_record r = rec("ok");
    for (int i = 0; i < a->n; i++)
        if (audit_append(a->log, &r) != AUDIT_OK)
            a->failures++;
    return NULL;
}

/* nthreads threads append 40 records each to log; during(arg), if given,
 * runs meanwhile. All must succeed. */
static void run_appenders(audit_log *log, int nthreads, void *(*during)(void *), void *arg)
{
    pthread_t th[8], other;
    struct appender a[8];

    assert_true(nthreads <= 8);
    for (int i = 0; i < nthreads; i++) {
        a[i] = (struct appender){.log = log, .n = 40};
        assert_int_equal(pthread_create(&th[i], NULL, append_many, &a[i]), 0);
    }
    if (during != NULL)
        assert_int_equal(pthread_create(&other, NULL, during, arg), 0);
    for (int i = 0; i < nthreads; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(a[i].failures, 0);
    }
    if (during != NULL)
        pthread_join(other, NULL);
}

static void test_concurrent_appenders_one_chain(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;

    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    atomic_store(&sync_delay_ms, 2);
    run_appenders(log, 4, NULL, NULL);
    assert_true(atomic_load(&sync_calls) < 160);
    audit_close(log);
    assert_int_equal(verify(f->path), 160);
}

/* A crash or a full disk left half a record: `audit verify` calls it a
 * torn tail (not tampering), and opening the log cuts it off. */
static void test_torn_tail_cut_at_open(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    size_t lines = 0, bad = 0;
    char head[65];

    write_records(f, 2);
    int fd = open(f->path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "{\"time\":", 8), 8);
    close(fd);
    assert_int_equal(audit_verify_file(f->path, &lines, &bad, head), AUDIT_ERR_TORN);
    assert_int_equal(lines, 2);
    assert_int_equal(bad, 3);
    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    audit_close(log);
    assert_int_equal(verify(f->path), 3);
}

/* A power loss in a write may leave the file grown with its new blocks
 * zero (XFS): more NUL bytes than a record is long, after a fragment of a
 * record or after the last complete one. An interrupted write all the
 * same: verify says torn (not malformed), the next open cuts the NUL bytes
 * and the fragment, and the chain goes on (before, serve refused to
 * start, "audit log line malformed"). */
static void test_nul_tail_of_a_crash_cut_at_open(void **state)
{
    struct fx *f = *state;
    static const char *const fragments[] = {"{\"time\":\"2026-", ""};
    static char zeros[3 * 8192]; /* three times the longest record (AUDIT_MAX_LINE) */

    for (size_t k = 0; k < sizeof(fragments) / sizeof(fragments[0]); k++) {
        audit_log *log = NULL;
        audit_record r = rec("ok");
        size_t lines = 0, bad = 0, flen = strlen(fragments[k]);

        unlink(f->path);
        write_records(f, 2);
        int fd = open(f->path, O_WRONLY | O_APPEND);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, fragments[k], flen), (ssize_t)flen);
        assert_int_equal(write(fd, zeros, sizeof(zeros)), (ssize_t)sizeof(zeros));
        close(fd);
        assert_int_equal(audit_verify_file(f->path, &lines, &bad, NULL), AUDIT_ERR_TORN);
        assert_int_equal(lines, 2);
        assert_int_equal(bad, 3);
        assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
        assert_int_equal(audit_torn_bytes_cut(log), (long long)(flen + sizeof(zeros)));
        assert_int_equal(audit_append(log, &r), AUDIT_OK);
        audit_close(log);
        assert_int_equal(verify(f->path), 3);
    }
}

/* A line longer than any record, unterminated, is not a torn write of ours. */
static void test_overlong_tail_refused(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    char junk[9000];

    write_records(f, 1);
    memset(junk, 'x', sizeof(junk));
    int fd = open(f->path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
    close(fd);
    assert_int_equal(audit_open(f->path, &log), AUDIT_ERR_FORMAT);
    assert_null(log);
}

/* A short write (a full disk) fails its record and leaves no fragment for
 * the next record to land on. */
static void test_short_write_cut_back(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");

    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    atomic_store(&disk_full_writes, 1);
    assert_int_equal(audit_append(log, &r), AUDIT_ERR_IO);
    assert_int_equal(verify(f->path), 1);
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    audit_close(log);
    assert_int_equal(verify(f->path), 2);
}

/* Records removed under the writer, the file kept (logrotate's
 * copytruncate, a cut by hand): its next record chains to the last one it
 * wrote, not to what is left, so verify reports the break where records
 * are missing. It continued from the file's last line: a log cut to
 * nothing started a new chain and verified, as did one cut to its first
 * record. A cut inside a record is cut back to the last whole line. */
static void test_records_cut_under_the_writer_break_the_chain(void **state)
{
    struct fx *f = *state;
    audit_record r = rec("ok");
    size_t lines = 0, bad = 0;
    char first[8192];

    /* cut to nothing, then to the first record, then inside the second */
    off_t cuts[3] = {0, -1, -2};
    for (int i = 0; i < 3; i++) {
        audit_log *log = NULL;
        unlink(f->path);
        assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
        for (int j = 0; j < 3; j++)
            assert_int_equal(audit_append(log, &r), AUDIT_OK);
        FILE *fp = fopen(f->path, "r");
        assert_non_null(fp);
        assert_non_null(fgets(first, sizeof(first), fp));
        fclose(fp);
        off_t cut = cuts[i] == 0 ? 0 : (off_t)strlen(first) + (cuts[i] == -2 ? 10 : 0);
        assert_int_equal(truncate(f->path, cut), 0);
        assert_int_equal(audit_append(log, &r), AUDIT_OK);
        assert_int_equal(audit_append(log, &r), AUDIT_OK);
        audit_close(log);
        assert_int_equal(audit_verify_file(f->path, &lines, &bad, NULL), AUDIT_ERR_CHAIN);
        assert_int_equal(bad, cut == 0 ? 1 : 2);
        assert_int_equal(lines, cut == 0 ? 0 : 1);
        /* the records after the break chain to each other */
        struct stat st;
        assert_int_equal(stat(f->path, &st), 0);
        fp = fopen(f->path, "r");
        assert_non_null(fp);
        int n = 0;
        while (fgets(first, sizeof(first), fp) != NULL)
            n++;
        fclose(fp);
        assert_int_equal(n, cut == 0 ? 2 : 3);
    }
}

/* What serve and the admin commands say when the log's directory is gone
 * and could not be made (their mkdir failed: a directory only root may
 * write): the directory, not "No such file or directory" of a file they
 * would make. */
static void test_open_why_names_a_missing_directory(void **state)
{
    struct fx *f = *state;
    char path[600], why[1024];

    snprintf(path, sizeof(path), "%s/gone/audit.jsonl", f->dir);
    audit_open_why(path, ENOENT, why, sizeof(why));
    char want[700];
    snprintf(want, sizeof(want), "its directory %s/gone does not exist, and ", f->dir);
    if (strncmp(why, want, strlen(want)) != 0 || strstr(why, "systemd-tmpfiles --create groupsrv.conf") == NULL)
        fail_msg("audit_open_why: %s", why);
    /* the directory there, the file not: the system's words */
    audit_open_why(f->path, ENOENT, why, sizeof(why));
    assert_string_equal(why, strerror(ENOENT));
}

/* The hash of line n (1-based) of path, and its "prev", for chain checks
 * past the first break verify reports. */
static void line_hash_prev(const char *path, int n, char hash[65], char prev[65])
{
    char line[8192];
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    for (int i = 0; i < n; i++)
        assert_non_null(fgets(line, sizeof(line), fp));
    fclose(fp);
    size_t len = strlen(line);
    assert_true(len > 0 && line[len - 1] == '\n');
    unsigned char md[32];
    SHA256((const unsigned char *)line, len - 1, md);
    for (int i = 0; i < 32; i++)
        snprintf(hash + 2 * i, 3, "%02x", md[i]);
    const char *p = strstr(line, "\"prev\":\"");
    assert_non_null(p);
    memcpy(prev, p + 8, 64);
    prev[64] = '\0';
}

/* Cut to nothing, then another appender (an admin command) writes more
 * than the server had before the server's next record: the file is longer
 * than the server left it, and it took that for appends and continued
 * from the file's last line, so the cut verified (a chain from zeros). */
static void test_cut_then_grown_by_another_appender_still_breaks(void **state)
{
    struct fx *f = *state;
    audit_record r = rec("ok");
    audit_log *srv = NULL, *cli = NULL;
    size_t lines = 0, bad = 0;

    audit_record admin = rec("ok");

    /* the admin command's records are not the server's byte for byte (in
     * the same millisecond they could be, and nothing would be missing) */
    admin.request_id = "cli";
    /* the server's next act a record, then a check (/healthz) that finds
     * the cut before the admin command writes */
    for (int check = 0; check < 2; check++) {
        unlink(f->path);
        assert_int_equal(audit_open(f->path, &srv), AUDIT_OK);
        for (int i = 0; i < 2; i++)
            assert_int_equal(audit_append(srv, &r), AUDIT_OK);
        assert_int_equal(truncate(f->path, 0), 0);
        if (check)
            assert_int_equal(audit_check(srv), AUDIT_OK);
        assert_int_equal(audit_open(f->path, &cli), AUDIT_OK);
        for (int i = 0; i < 4; i++)
            assert_int_equal(audit_append(cli, &admin), AUDIT_OK);
        audit_close(cli);
        assert_int_equal(audit_append(srv, &r), AUDIT_OK);
        audit_close(srv);
        assert_int_equal(audit_verify_file(f->path, &lines, &bad, NULL), AUDIT_ERR_CHAIN);
        assert_int_equal(bad, 5);
    }
}

/* A file of three records cut under its writers: the first is the one
 * break (its prev not zeros: verify reports it), the second and third
 * chain on from it (no fork, no second break). */
static void broken_at_first_then_chained(const char *path)
{
    char h1[65], p1[65], h2[65], p2[65], h3[65], p3[65];

    line_hash_prev(path, 1, h1, p1);
    line_hash_prev(path, 2, h2, p2);
    line_hash_prev(path, 3, h3, p3);
    assert_string_not_equal(p1, "0000000000000000000000000000000000000000000000000000000000000000");
    assert_string_equal(p2, h1);
    assert_string_equal(p3, h2);
}

/* Two writers that know the same last line (a server and an admin
 * command opened before the cut, or two servers) and a cut under both:
 * the first to write chains to that line (the break verify reports); the
 * second must continue from the first's record, not chain to the same
 * line again, a second line with the same prev (a fork after the break). */
static void test_cut_under_two_writers_does_not_fork(void **state)
{
    struct fx *f = *state;
    audit_record r = rec("ok");
    audit_log *a = NULL, *b = NULL;

    assert_int_equal(audit_open(f->path, &a), AUDIT_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(audit_append(a, &r), AUDIT_OK);
    assert_int_equal(audit_open(f->path, &b), AUDIT_OK);
    assert_int_equal(truncate(f->path, 0), 0);
    assert_int_equal(audit_append(b, &r), AUDIT_OK);
    assert_int_equal(audit_append(a, &r), AUDIT_OK);
    assert_int_equal(audit_append(b, &r), AUDIT_OK);
    audit_close(a);
    audit_close(b);
    broken_at_first_then_chained(f->path);
}

/* A cut under a writer that knows an older line than the file's last: an
 * admin command appended after the server's last record, the file was cut
 * (copytruncate), and the admin command (or a second server) wrote first,
 * chaining to its own last line: the break is in the file. The server,
 * whose last line is the one before, chained to that one again: a second
 * break right after the first (verify then shows the first only; with it
 * accepted, the file still does not verify on from there). It continues
 * from the file's records instead; a chain from zeros written after the
 * cut still gets the server's break (test_cut_then_grown_by_another_
 * appender_still_breaks). */
static void test_cut_under_a_writer_knowing_an_older_line_breaks_once(void **state)
{
    struct fx *f = *state;
    audit_record r = rec("ok"), admin = rec("ok");
    audit_log *srv = NULL, *cli = NULL;

    admin.request_id = "cli";
    assert_int_equal(audit_open(f->path, &srv), AUDIT_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(audit_append(srv, &r), AUDIT_OK);
    assert_int_equal(audit_open(f->path, &cli), AUDIT_OK);
    assert_int_equal(audit_append(cli, &admin), AUDIT_OK);
    assert_int_equal(truncate(f->path, 0), 0);
    assert_int_equal(audit_append(cli, &admin), AUDIT_OK);
    audit_close(cli);
    assert_int_equal(audit_append(srv, &r), AUDIT_OK);
    assert_int_equal(audit_append(srv, &r), AUDIT_OK);
    audit_close(srv);
    broken_at_first_then_chained(f->path);
}

/* A file that starts with a break (a copytruncate the server chained
 * over: its first line's prev is not zeros), then cut at its end: the
 * server's last records removed, by hand or by someone hiding what they
 * did. The first line is no break written since the cut (it was there
 * when the server wrote its last record), so the server's next record
 * chains to the last one it wrote, the break where the records are
 * missing. It took the first line's break for another appender's, made
 * after the cut, and continued from the file's last line: the cut left no
 * trace in the chain and the server said nothing. */
static void test_cut_at_the_end_of_a_file_starting_with_a_break_still_breaks(void **state)
{
    struct fx *f = *state;
    audit_record r = rec("ok");
    audit_log *srv = NULL;
    char h1[65], p1[65], h2[65], p2[65], h3[65], p3[65];

    assert_int_equal(audit_open(f->path, &srv), AUDIT_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(audit_append(srv, &r), AUDIT_OK);
    assert_int_equal(truncate(f->path, 0), 0); /* copytruncate */
    for (int i = 0; i < 3; i++)
        assert_int_equal(audit_append(srv, &r), AUDIT_OK);
    broken_at_first_then_chained(f->path);
    line_hash_prev(f->path, 3, h3, p3); /* the server's last record */
    FILE *fp = fopen(f->path, "r");
    assert_non_null(fp);
    char line[8192];
    off_t two = 0;
    for (int i = 0; i < 2; i++) {
        assert_non_null(fgets(line, sizeof(line), fp));
        two += (off_t)strlen(line);
    }
    fclose(fp);
    assert_int_equal(truncate(f->path, two), 0); /* its last record cut off */
    assert_int_equal(audit_append(srv, &r), AUDIT_OK);
    audit_close(srv);
    line_hash_prev(f->path, 2, h2, p2);
    line_hash_prev(f->path, 3, h1, p1);
    assert_string_not_equal(p1, h2);
    assert_string_equal(p1, h3);
}

/* Cut under the server (copytruncate), then `audit rotate` from another
 * process before the server's next record: the rotation seals what is
 * left and the successor chains to that seal; the server followed it
 * without looking at the file it left, so the whole chain verified. Its
 * next record chains to the last one it wrote: the break is in the chain. */
static void test_cut_then_rotated_by_another_still_breaks(void **state)
{
    struct fx *f = *state;
    audit_record r = rec("ok");
    audit_log *srv = NULL, *cli = NULL;
    char archive[256];
    audit_verify_result res;

    /* followed at the next record, then at a SIGHUP's reopen */
    for (int reopen = 0; reopen < 2; reopen++) {
        assert_int_equal(audit_open(f->path, &srv), AUDIT_OK);
        for (int i = 0; i < 3; i++)
            assert_int_equal(audit_append(srv, &r), AUDIT_OK);
        assert_int_equal(truncate(f->path, 0), 0);
        assert_int_equal(audit_open(f->path, &cli), AUDIT_OK);
        assert_int_equal(audit_rotate(cli, archive, sizeof(archive)), AUDIT_OK);
        audit_close(cli);
        if (reopen)
            assert_int_equal(audit_reopen(srv), AUDIT_OK);
        assert_int_equal(audit_append(srv, &r), AUDIT_OK);
        assert_int_equal(audit_check(srv), AUDIT_OK);
        assert_int_equal(audit_append(srv, &r), AUDIT_OK);
        audit_close(srv);
        assert_int_equal(audit_verify_chain(f->path, 1, &res), AUDIT_ERR_CHAIN);
        assert_int_equal(res.bad_line, 2);
        assert_string_equal(res.bad_file, f->path);
        assert_int_equal(unlink(archive), 0);
        assert_int_equal(unlink(f->path), 0);
    }
}

/* Deleted and made anew at its path: SIGHUP's audit_reopen writes there. */
static void test_reopen_after_delete(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");

    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    assert_int_equal(audit_reopen(log), AUDIT_OK); /* nothing to do */
    assert_int_equal(unlink(f->path), 0);
    assert_int_equal(audit_append(log, &r), AUDIT_ERR_IO);
    assert_int_equal(audit_check(log), AUDIT_ERR_IO);
    int fd = open(f->path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(audit_check(log), AUDIT_ERR_IO); /* not before the reopen */
    assert_int_equal(audit_reopen(log), AUDIT_OK);
    assert_int_equal(audit_check(log), AUDIT_OK);
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    audit_close(log);
    assert_int_equal(verify(f->path), 1);
}

/* Rotation tests leave archives next to the log: remove every file. */
static int teardown_all(void **state)
{
    struct fx *f = *state;
    DIR *d = opendir(f->dir);
    struct dirent *e;
    char p[512];

    while (d != NULL && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(p, sizeof(p), "%s/%s", f->dir, e->d_name);
        unlink(p);
    }
    if (d != NULL)
        closedir(d);
    return teardown(state);
}

static audit_verify_result chain_ok(const char *path, size_t files, size_t lines)
{
    audit_verify_result res;
    audit_err rc = audit_verify_chain(path, 1, &res);
    if (rc != AUDIT_OK)
        fail_msg("verify_chain: %s at %s:%zu", audit_strerror(rc), res.bad_file, res.bad_line);
    assert_int_equal(res.files, files);
    assert_int_equal(res.lines, lines);
    return res;
}

/* The last line of a file, without its newline. */
static void last_line(const char *path, char *buf, size_t cap)
{
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    buf[0] = '\0';
    char line[8192];
    while (fgets(line, sizeof(line), fp) != NULL)
        snprintf(buf, cap, "%s", line);
    fclose(fp);
    buf[strcspn(buf, "\n")] = '\0';
}

static void test_rotate_continues_chain_in_new_file(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    char archive[256], line[8192];

    write_records(f, 3);
    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_rotate(log, archive, sizeof(archive)), AUDIT_OK);
    assert_int_equal(strncmp(archive, f->path, strlen(f->path)), 0);
    assert_int_equal(archive[strlen(f->path)], '.');
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    audit_close(log);

    /* archive: 3 records and the seal naming it; new file: the
     * continuation naming the archive, then the 2 new records */
    last_line(archive, line, sizeof(line));
    assert_non_null(strstr(line, "\"action\":\"audit-rotate\""));
    assert_non_null(strstr(line, strrchr(archive, '/') + 1));
    assert_int_equal(verify(archive), 4);
    chain_ok(f->path, 2, 7);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* alone, the new file does not start the chain; --no-follow takes its
     * first link as given */
    size_t lines = 0, bad = 0;
    assert_int_equal(audit_verify_file(f->path, &lines, &bad, NULL), AUDIT_ERR_CHAIN);
    assert_int_equal(bad, 1);
    audit_verify_result res;
    assert_int_equal(audit_verify_chain(f->path, 0, &res), AUDIT_OK);
    assert_int_equal(res.lines, 3);
}

/* A running server's log (a) is rotated by another process's handle (b):
 * a's next check and write land in the new file, on the same chain. */
static void test_appender_follows_rotation_by_another(void **state)
{
    struct fx *f = *state;
    audit_log *a = NULL, *b = NULL;
    audit_record r = rec("ok");
    char archive[256];

    assert_int_equal(audit_open(f->path, &a), AUDIT_OK);
    assert_int_equal(audit_append(a, &r), AUDIT_OK);
    assert_int_equal(audit_open(f->path, &b), AUDIT_OK);
    assert_int_equal(audit_append(a, &r), AUDIT_OK); /* after b read the head */
    assert_int_equal(audit_rotate(b, archive, sizeof(archive)), AUDIT_OK);
    audit_close(b);
    assert_int_equal(audit_check(a), AUDIT_OK);
    assert_int_equal(audit_append(a, &r), AUDIT_OK);
    audit_close(a);
    assert_int_equal(verify(archive), 3);
    chain_ok(f->path, 2, 5);
}

/* What the diagnostic log says at a SIGHUP's reopen: after a rotation by
 * another process (audit rotate) and before the server's next record, the
 * chain goes on in the file the rotation made, and the log says so; only
 * a file made anew at the path starts a new chain. */
static void reopen_logged(audit_log *log, char *buf, size_t size)
{
    FILE *sink = tmpfile();
    enum log_level level = log_get_level();
    size_t n;

    assert_non_null(sink);
    log_init(NULL, LOG_LVL_INFO, sink);
    assert_int_equal(audit_reopen(log), AUDIT_OK);
    log_init(NULL, level, NULL);
    rewind(sink);
    n = fread(buf, 1, size - 1, sink);
    buf[n] = '\0';
    fclose(sink);
}

static void test_reopen_after_rotation_says_it_continues(void **state)
{
    struct fx *f = *state;
    audit_log *a = NULL, *b = NULL;
    audit_record r = rec("ok");
    char archive[256], said[4096];

    assert_int_equal(audit_open(f->path, &a), AUDIT_OK);
    assert_int_equal(audit_append(a, &r), AUDIT_OK);
    assert_int_equal(audit_open(f->path, &b), AUDIT_OK);
    assert_int_equal(audit_rotate(b, archive, sizeof(archive)), AUDIT_OK);
    audit_close(b);
    reopen_logged(a, said, sizeof(said));
    assert_non_null(strstr(said, "audit log rotated: continuing in the new file"));
    assert_null(strstr(said, "new chain"));
    assert_int_equal(audit_append(a, &r), AUDIT_OK);
    audit_close(a);
    chain_ok(f->path, 2, 4);
    /* Deleted and made anew: a new chain, said so. */
    assert_int_equal(audit_open(f->path, &a), AUDIT_OK);
    assert_int_equal(unlink(f->path), 0);
    int fd = open(f->path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    close(fd);
    reopen_logged(a, said, sizeof(said));
    assert_non_null(strstr(said, "a new file at its path starts a new chain"));
    audit_close(a);
}

/* SIGHUP's reopen with the log's directory deleted under the server: it
 * logged detail="No such file or directory", read as the file missing
 * (which the reopen makes); the directory is named, and that the server
 * does not make it again. */
static void test_reopen_names_a_deleted_directory(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    char said[4096], want[256];
    FILE *sink = tmpfile();
    enum log_level level = log_get_level();

    assert_non_null(sink);
    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    assert_int_equal(unlink(f->path), 0);
    assert_int_equal(rmdir(f->dir), 0);
    log_init(NULL, LOG_LVL_INFO, sink);
    assert_int_equal(audit_reopen(log), AUDIT_ERR_IO);
    log_init(NULL, level, NULL);
    rewind(sink);
    size_t n = fread(said, 1, sizeof(said) - 1, sink);
    said[n] = '\0';
    fclose(sink);
    snprintf(want, sizeof(want), "detail=\"its directory %s does not exist (deleted under the server", f->dir);
    if (strstr(said, "cannot reopen the audit log") == NULL || strstr(said, want) == NULL ||
        strstr(said, "then SIGHUP") == NULL)
        fail_msg("reopen said: %s", said);
    assert_int_equal(mkdir(f->dir, 0700), 0);
    assert_int_equal(audit_reopen(log), AUDIT_OK);
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    audit_close(log);
    assert_int_equal(verify(f->path), 1);
}

/* The log rotated twice by another process between two of a server's
 * rounds: the file at the path continues the intermediate file, not the
 * server's; the server follows the chain back to its own seal and goes on
 * in the newest file (it refused every record until SIGHUP before). */
static void test_appender_follows_two_rotations(void **state)
{
    struct fx *f = *state;
    audit_log *srv = NULL, *cli = NULL;
    audit_record r = rec("ok");
    unsigned long long s1 = 0, s2 = 0;
    char first[256], second[256];

    assert_int_equal(audit_open(f->path, &srv), AUDIT_OK);
    assert_int_equal(audit_write(srv, &r, &s1), AUDIT_OK);
    assert_int_equal(audit_wait_durable(srv, s1, s1), AUDIT_OK);
    assert_int_equal(audit_open(f->path, &cli), AUDIT_OK);
    assert_int_equal(audit_rotate(cli, first, sizeof(first)), AUDIT_OK);
    assert_int_equal(audit_append(cli, &r), AUDIT_OK);
    assert_int_equal(audit_rotate(cli, second, sizeof(second)), AUDIT_OK);
    audit_close(cli);
    assert_int_equal(audit_write(srv, &r, &s2), AUDIT_OK);
    assert_int_equal(audit_wait_durable(srv, s2, s2), AUDIT_OK);
    audit_close(srv);
    assert_int_equal(verify(first), 2);
    chain_ok(f->path, 3, 7); /* the middle file is checked as a link of the chain */
}

/* A server's queued records interleaved with another appender (the CLI)
 * and a rotation by it: each round continues from the file's last line,
 * records queued before the rotation land in the successor after
 * "audit-continue", and the chain verifies across both files. */
static void test_batches_interleave_with_cli_and_rotation(void **state)
{
    struct fx *f = *state;
    audit_log *srv = NULL, *cli = NULL;
    audit_record r = rec("ok");
    unsigned long long s1 = 0, s2 = 0, s3 = 0, s4 = 0;
    char archive[256];

    assert_int_equal(audit_open(f->path, &srv), AUDIT_OK);
    assert_int_equal(audit_open(f->path, &cli), AUDIT_OK);
    assert_int_equal(audit_write(srv, &r, &s1), AUDIT_OK);
    assert_int_equal(audit_append(cli, &r), AUDIT_OK);             /* line 1 */
    assert_int_equal(audit_wait_durable(srv, s1, s1), AUDIT_OK);   /* line 2, after the CLI's */
    assert_int_equal(audit_write(srv, &r, &s2), AUDIT_OK);
    assert_int_equal(audit_write(srv, &r, &s3), AUDIT_OK);
    assert_int_equal(audit_append(cli, &r), AUDIT_OK);             /* line 3 */
    assert_int_equal(audit_rotate(cli, archive, sizeof(archive)), AUDIT_OK); /* seal: line 4 */
    assert_int_equal(audit_write(srv, &r, &s4), AUDIT_OK);
    assert_int_equal(audit_wait_durable(srv, s2, s4), AUDIT_OK);   /* after "audit-continue" */
    assert_int_equal(audit_append(cli, &r), AUDIT_OK);
    audit_close(cli);
    audit_close(srv);
    assert_int_equal(verify(archive), 4);
    chain_ok(f->path, 2, 9);
}

/* A CLI opening the log while the server appends (groupsrv member add
 * beside serve): the chain head and the size it was read at are taken
 * under the file's lock, so the first record chains to the line that is
 * last, never to the one before a line the server appended meanwhile. */
static void test_open_reads_head_under_the_lock(void **state)
{
    struct fx *f = *state;
    audit_log *server = NULL, *cli = NULL;
    audit_record r = rec("ok");

    write_records(f, 2);
    assert_int_equal(audit_open(f->path, &server), AUDIT_OK);
    audit_set_lock_wait(server, 20); /* blocked by the CLI's lock: it gives up */
    assert_true((pread_probe_fd = open(f->path, O_RDONLY | O_CLOEXEC)) >= 0);
    pread_other = server;
    assert_int_equal(audit_open(f->path, &cli), AUDIT_OK);
    pread_other = NULL;
    close(pread_probe_fd);
    pread_probe_fd = -1;
    assert_int_equal(audit_append(cli, &r), AUDIT_OK);
    audit_close(cli);
    audit_close(server);
    size_t n = verify(f->path);
    assert_true(n == 3 || n == 4);
}

/* Two handles on one file (what a server sees when a rotation sealed its
 * file but could not replace it): each continues from the other's line. */
static void test_appenders_in_two_processes_share_one_chain(void **state)
{
    struct fx *f = *state;
    audit_log *a = NULL, *b = NULL;
    audit_record r = rec("ok");

    assert_int_equal(audit_open(f->path, &a), AUDIT_OK);
    assert_int_equal(audit_open(f->path, &b), AUDIT_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(audit_append(a, &r), AUDIT_OK);
        assert_int_equal(audit_append(b, &r), AUDIT_OK);
    }
    assert_int_equal(audit_check(a), AUDIT_OK);
    audit_close(a);
    audit_close(b);
    assert_int_equal(verify(f->path), 6);
}

/* A file at the path that is not the sealed log's successor (a restore
 * or a mistake) is never written to: records would be lost from the chain. */
static void test_replaced_file_not_followed(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    char moved[128];

    write_records(f, 2);
    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    snprintf(moved, sizeof(moved), "%s/moved", f->dir);
    assert_int_equal(rename(f->path, moved), 0);
    write_records(f, 1); /* a fresh log at the path */
    assert_int_equal(audit_check(log), AUDIT_ERR_IO);
    assert_int_equal(audit_append(log, &r), AUDIT_ERR_IO);
    audit_close(log);
    assert_int_equal(verify(f->path), 1);
    assert_int_equal(verify(moved), 2);
}

static void test_verify_names_missing_and_edited_archive(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    char first[256], second[256], save[300];
    audit_verify_result res;

    write_records(f, 2);
    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_rotate(log, first, sizeof(first)), AUDIT_OK);
    assert_int_equal(audit_rotate(log, second, sizeof(second)), AUDIT_OK);
    audit_close(log);
    assert_string_not_equal(first, second); /* same second: -2 suffix */
    chain_ok(f->path, 3, 2 + 2 + 2);

    snprintf(save, sizeof(save), "%s.save", first);
    assert_int_equal(rename(first, save), 0);
    assert_int_equal(audit_verify_chain(f->path, 1, &res), AUDIT_ERR_MISSING);
    assert_string_equal(res.bad_file, first);
    /* the files after the missing one were checked: the second archive
     * (continuation, seal) and the current file (continuation) */
    assert_int_equal(res.files, 2);
    assert_int_equal(res.lines, 3);

    /* an edited record in the oldest file breaks the chain there */
    FILE *in = fopen(save, "r"), *out = fopen(first, "w");
    assert_non_null(in);
    assert_non_null(out);
    char line[8192];
    for (int n = 1; fgets(line, sizeof(line), in) != NULL; n++) {
        char *p = n == 2 ? strstr(line, "\"outcome\":\"ok\"") : NULL;
        if (p != NULL)
            memcpy(p, "\"outcome\":\"no\"", 14);
        fputs(line, out);
    }
    fclose(in);
    fclose(out);
    unlink(save);
    assert_int_equal(audit_verify_chain(f->path, 1, &res), AUDIT_ERR_CHAIN);
    assert_string_equal(res.bad_file, first);
    assert_int_equal(res.bad_line, 3);
}

/* With an archive missing, a file after it that was edited is reported
 * (exit 3 in the command), not only the missing one. */
static void test_verify_missing_archive_still_checks_the_rest(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    char first[256], second[256];
    audit_verify_result res;

    write_records(f, 1);
    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_rotate(log, first, sizeof(first)), AUDIT_OK);
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    assert_int_equal(audit_rotate(log, second, sizeof(second)), AUDIT_OK);
    audit_close(log);
    assert_int_equal(unlink(first), 0);
    assert_int_equal(audit_verify_chain(f->path, 1, &res), AUDIT_ERR_MISSING);

    /* drop the second archive's middle record: its next line no longer chains */
    FILE *fp = fopen(second, "r");
    assert_non_null(fp);
    char lines[4][8192];
    int n = 0;
    while (n < 4 && fgets(lines[n], sizeof(lines[n]), fp) != NULL)
        n++;
    fclose(fp);
    assert_int_equal(n, 4); /* continuation, 2 records, seal */
    fp = fopen(second, "w");
    assert_non_null(fp);
    fputs(lines[0], fp);
    fputs(lines[2], fp);
    fputs(lines[3], fp);
    fclose(fp);
    assert_int_equal(audit_verify_chain(f->path, 1, &res), AUDIT_ERR_CHAIN);
    assert_string_equal(res.bad_file, second);
    assert_int_equal(res.bad_line, 2);
}

struct rotator {
    const char *path;
    int n;
    int failures;
};

static void *rotate_many(void *arg)
{
    struct rotator *ro = arg;
    char archive[256];
    for (int i = 0; i < ro->n; i++) {
        audit_log *log = NULL;
        if (audit_open(ro->path, &log) != AUDIT_OK || audit_rotate(log, archive, sizeof(archive)) != AUDIT_OK)
            ro->failures++;
        audit_close(log);
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 3000000L};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

/* Appenders (with the background syncer, as the server runs) and another
 * handle rotating over and over: no record lost, one chain across files. */
static void test_rotation_under_concurrent_appends(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    struct rotator ro = {.path = f->path, .n = 5};

    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    atomic_store(&sync_delay_ms, 1);
    run_appenders(log, 3, rotate_many, &ro);
    assert_int_equal(ro.failures, 0);
    audit_close(log);
    chain_ok(f->path, 6, 120 + 2 * 5);
}

/* How many files in f->dir have names starting with the log's. */
static int files_like_log(const struct fx *f)
{
    DIR *d = opendir(f->dir);
    struct dirent *e;
    int n = 0;

    assert_non_null(d);
    while ((e = readdir(d)) != NULL)
        n += strncmp(e->d_name, "audit.jsonl", 11) == 0;
    closedir(d);
    return n;
}

/* A rotation that crashed after it made the new file but before it put it
 * in place leaves PATH.rotating: the next rotation replaces it instead of
 * failing (it would have failed for good, adding a seal each time). */
static void test_rotate_after_leftover_new_file(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    char tmp[128], archive[256];

    write_records(f, 3);
    snprintf(tmp, sizeof(tmp), "%s.rotating", f->path);
    FILE *fp = fopen(tmp, "w");
    assert_non_null(fp);
    fputs("{\"action\":\"audit-contin", fp); /* torn, as a crash leaves it */
    fclose(fp);
    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_rotate(log, archive, sizeof(archive)), AUDIT_OK);
    audit_close(log);
    assert_int_equal(access(tmp, F_OK), -1);
    chain_ok(f->path, 2, 3 + 1 + 1);
}

/* A rotation that cannot make the new file fails before it seals the log
 * or links an archive: the log is as it was. */
static void test_rotate_failing_early_changes_nothing(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    char tmp[128], inside[160], archive[256], line[8192];

    write_records(f, 3);
    /* a directory at the new file's name: neither removed nor replaced */
    snprintf(tmp, sizeof(tmp), "%s.rotating", f->path);
    snprintf(inside, sizeof(inside), "%s/x", tmp);
    assert_int_equal(mkdir(tmp, 0700), 0);
    assert_int_equal(mkdir(inside, 0700), 0);
    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_rotate(log, archive, sizeof(archive)), AUDIT_ERR_IO);
    assert_string_equal(archive, "");
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    audit_close(log);
    assert_int_equal(verify(f->path), 4);
    last_line(f->path, line, sizeof(line));
    assert_null(strstr(line, "audit-rotate"));
    assert_int_equal(files_like_log(f), 2); /* the log and the directory */
    rmdir(inside);
    rmdir(tmp);
}

static void crash_now(void)
{
    _exit(0);
}

/* A rotation killed half-way (here in the seal's fdatasync): a server that
 * opens the log afterwards writes on after the seal, the next rotation
 * works, and the chain verifies across the files. */
static void test_rotation_killed_half_way(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    char archive[256];
    int status = 0;

    write_records(f, 3);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        audit_log *child = NULL;
        if (audit_open(f->path, &child) != AUDIT_OK)
            _exit(2);
        during_sync = crash_now;
        audit_rotate(child, archive, sizeof(archive));
        _exit(3); /* not reached: crash_now ran */
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    assert_int_equal(audit_rotate(log, archive, sizeof(archive)), AUDIT_OK);
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    audit_close(log);
    /* 3 records, the first seal, 1 record, the second seal | continuation, 1 record */
    chain_ok(f->path, 2, 3 + 1 + 1 + 1 + 1 + 1);
}

/* A symbolic link at the log's path is refused: `audit rotate` runs as
 * root in a directory the server's user owns, and must not append to
 * whatever file that user points it at. */
static void test_symlink_at_path_refused(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    char target[128];
    struct stat st;

    snprintf(target, sizeof(target), "%s/target", f->dir);
    FILE *fp = fopen(target, "w");
    assert_non_null(fp);
    fputs("not an audit log\n", fp);
    fclose(fp);
    assert_int_equal(symlink(target, f->path), 0);
    assert_int_equal(audit_open(f->path, &log), AUDIT_ERR_IO);
    assert_null(log);
    assert_int_equal(stat(target, &st), 0);
    assert_int_equal(st.st_size, 17);
}

/* A FIFO at the log's path (or named to verify) is refused, never opened
 * and never waited on: an open with no writer blocks, and is itself an
 * act on the FIFO. The alarm turns a wait into a failure. */
static void test_fifo_at_path_refused_unopened(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    size_t lines = 9, bad = 9;

    assert_int_equal(mkfifo(f->path, 0600), 0);
    alarm(10);
    assert_int_equal(audit_verify_file(f->path, &lines, &bad, NULL), AUDIT_ERR_IO);
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_int_equal(audit_open(f->path, &log), AUDIT_ERR_IO);
    assert_int_equal(errno, EINVAL);
    alarm(0);
    assert_null(log);
    assert_int_equal(lines, 0);
}

/* ---- the line's bytes: what the jansson object made before ---------------- */

/* Identities as a certificate may carry them: every escape jansson makes
 * (quote, backslash, the named and the \u00XX control characters, DEL as
 * is, non-ASCII in and past the BMP, U+10FFFF, a line separator). */
static const char *const odd_identities[] = {
    "alice@example.org",
    "\xc3\x9cn\xc3\xaf\x63\xc3\xb8\x64\xc3\xa9 <\xc3\xa9@example.org>",
    "quote\"back\\slash/and/slash",
    "ctl\x01\x1f\x7f\b\f\n\r\t end",
    "emoji \xf0\x9f\x98\x80 clef \xf0\x9d\x84\x9e",
    "\xe4\xb8\xad\xe6\x96\x87@\xe4\xbe\x8b\xe5\xad\x90.\xe5\x85\xac\xe5\x8f\xb8",
    "\xe2\x80\xa8 sep \xef\xbf\xbf max \xf4\x8f\xbf\xbf",
    "",
};

/* Strings json_string refuses (not UTF-8): the record is refused too. */
static const char *const not_utf8[] = {
    "\xc0\xaf",         /* overlong '/' */
    "\xe0\x80\xaf",     /* overlong, 3 bytes */
    "\xf0\x80\x80\xaf", /* overlong, 4 bytes */
    "\xed\xa0\x80",     /* a surrogate half */
    "\xf4\x90\x80\x80", /* past U+10FFFF */
    "\xf5\x80\x80\x80",
    "cut \xe2\x82",
    "\x80 lone continuation",
    "\xc3(",
};

/* The line the jansson object of before made for r at time `when`, chained
 * to prev (malloc'd, no newline). */
static char *jansson_line(const audit_record *r, const char *when, const char *prev)
{
    json_t *o = json_object();

    assert_non_null(o);
    json_object_set_new(o, "time", json_string(when));
    if (r->request_id)
        json_object_set_new(o, "request_id", json_string(r->request_id));
    if (r->action)
        json_object_set_new(o, "action", json_string(r->action));
    if (r->identity)
        json_object_set_new(o, "identity", json_string(r->identity));
    if (r->group)
        json_object_set_new(o, "group", json_string(r->group));
    if (r->method)
        json_object_set_new(o, "method", json_string(r->method));
    if (r->key_version >= 0)
        json_object_set_new(o, "key_version", json_integer(r->key_version));
    if (r->outcome)
        json_object_set_new(o, "outcome", json_string(r->outcome));
    if (r->extra != NULL && json_is_object((json_t *)r->extra))
        assert_int_equal(json_object_update(o, (json_t *)r->extra), 0);
    json_object_set_new(o, "prev", json_string(prev));
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
    json_decref(o);
    assert_non_null(line);
    return line;
}

static void sha256_hex(const char *line, size_t len, char hex[65])
{
    unsigned char md[32];
    EVP_Digest(line, len, md, NULL, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

/* The file at path holds exactly recs[0..n), each line the bytes the
 * jansson object made (at the time the line names), chained from zero. */
static void assert_lines_are_jansson(const char *path, const audit_record *recs, size_t n)
{
    FILE *fp = fopen(path, "r");
    char *line = NULL, prev[65];
    size_t cap = 0;
    ssize_t len;

    assert_non_null(fp);
    memset(prev, '0', 64);
    prev[64] = '\0';
    for (size_t i = 0; i < n; i++) {
        assert_true((len = getline(&line, &cap, fp)) > 1);
        assert_int_equal(line[len - 1], '\n');
        line[--len] = '\0';
        json_t *o = json_loads(line, 0, NULL);
        assert_non_null(o);
        char *want = jansson_line(&recs[i], json_string_value(json_object_get(o, "time")), prev);
        json_decref(o);
        assert_string_equal(line, want);
        free(want);
        sha256_hex(line, (size_t)len, prev);
    }
    assert_int_equal(getline(&line, &cap, fp), -1);
    free(line);
    fclose(fp);
}

/* The records of odd identities, each with and without its optional
 * fields and with extras (one appended after the fields, one repeating a
 * field, which jansson replaces where it stands), are the very bytes the
 * jansson object made, chained as before; `audit verify` accepts them. */
static void test_lines_are_what_jansson_made(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    json_t *extras[4] = {NULL, json_pack("{s:I}", "secret_version", (json_int_t)7),
                         json_pack("{s:s,s:i}", "outcome", "replaced", "n", 2), json_object()};
    audit_record recs[64];
    size_t n = 0;

    for (size_t i = 0; i < N_OF(odd_identities); i++)
        for (size_t x = 0; x < 4; x++) {
            audit_record r = rec(odd_identities[(i + x) % N_OF(odd_identities)]);
            r.identity = odd_identities[i];
            r.extra = extras[x];
            if (x == 1) {
                r.request_id = NULL;
                r.method = NULL;
                r.key_version = -1;
            }
            if (x == 3)
                r.group = odd_identities[(i + 1) % N_OF(odd_identities)];
            recs[n++] = r;
        }
    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(audit_append(log, &recs[i]), AUDIT_OK);
    /* a string jansson would not take is refused, as it was */
    for (size_t i = 0; i < N_OF(not_utf8); i++) {
        audit_record bad = rec("ok");
        unsigned long long seq = 0;
        bad.identity = not_utf8[i];
        assert_int_equal(audit_write(log, &bad, &seq), AUDIT_ERR_NOMEM);
        bad = rec(not_utf8[i]);
        assert_int_equal(audit_write(log, &bad, &seq), AUDIT_ERR_NOMEM);
    }
    audit_close(log);
    assert_lines_are_jansson(f->path, recs, n);
    for (size_t x = 0; x < 4; x++)
        json_decref(extras[x]);
    assert_int_equal(verify(f->path), n);
}

/* A record over the renderer's cap (1 MiB) is refused when it is written,
 * before it is queued; the log goes on. */
static void test_oversize_record_refused_at_write(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    unsigned long long seq = 0;
    size_t n = 1024 * 1024 + 1;
    char *huge = malloc(n + 1);

    assert_non_null(huge);
    memset(huge, 'x', n);
    huge[n] = '\0';
    json_t *extra = json_pack("{s:s}", "note", huge);
    assert_non_null(extra);
    r.extra = extra;
    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    assert_int_equal(audit_write(log, &r, &seq), AUDIT_ERR_ARGS);
    assert_int_equal(seq, 0);
    r.extra = NULL;
    assert_int_equal(audit_append(log, &r), AUDIT_OK);
    audit_close(log);
    json_decref(extra);
    free(huge);
    assert_int_equal(verify(f->path), 1);
}

/* Random strings, mostly UTF-8 with every kind of odd byte among it: a
 * record is accepted exactly when jansson takes the string, and its line
 * is the one jansson made. */
static void test_random_identities_match_jansson(void **state)
{
    struct fx *f = *state;
    audit_log *log = NULL;
    static const char *const pieces[] = {"a", "Z", "\"", "\\", "/", "\x01", "\x1f", "\x7f", "\n", "\t",
                                         "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf",
                                         "\xc0", "\x80", "\xed\xa0\x80", "\xe2\x82", "\xff", " "};
    static char ids[300][64];
    static audit_record recs[300];
    size_t ok = 0;
    unsigned seed = 16;

    assert_int_equal(audit_open(f->path, &log), AUDIT_OK);
    for (size_t i = 0; i < N_OF(ids); i++) {
        size_t len = 0, parts = (size_t)rand_r(&seed) % 12;
        ids[i][0] = '\0';
        for (size_t p = 0; p < parts; p++) {
            const char *piece = pieces[(size_t)rand_r(&seed) % N_OF(pieces)];
            if (len + strlen(piece) + 1 > sizeof(ids[i]))
                break;
            memcpy(ids[i] + len, piece, strlen(piece) + 1);
            len += strlen(piece);
        }
        json_t *js = json_string(ids[i]);
        audit_record r = rec("ok");
        unsigned long long seq = 0;
        r.identity = ids[i];
        assert_int_equal(audit_write(log, &r, &seq), js != NULL ? AUDIT_OK : AUDIT_ERR_NOMEM);
        if (js != NULL) {
            memmove(ids[ok], ids[i], sizeof(ids[i]));
            ok++;
        }
        json_decref(js);
    }
    audit_close(log);
    assert_true(ok > 50 && ok < N_OF(ids) - 50); /* both kinds were made */
    for (size_t i = 0; i < ok; i++) {
        recs[i] = rec("ok");
        recs[i].identity = ids[i];
    }
    assert_lines_are_jansson(f->path, recs, ok);
    assert_int_equal(verify(f->path), ok);
}

/* ---- [audit] store = db (a private PostgreSQL, tests/lib/pg.sh) ---------- */

struct dbfx {
    char name[64];
    char url[1024];
};

static int db_setup(void **state)
{
    struct dbfx *f = calloc(1, sizeof(*f));
    gs_store *st = NULL;
    if (f == NULL || pgtest_create("audit_", f->name, sizeof(f->name), f->url, sizeof(f->url)) != 0)
        return -1;
    /* the schema, as `groupsrv ca init` makes it */
    if (gs_store_open(f->url, GS_STORE_CREATE, &st) != GS_OK)
        return -1;
    gs_store_close(st);
    *state = f;
    return 0;
}

static int db_teardown(void **state)
{
    struct dbfx *f = *state;
    gs_store_set_timeout(10); /* a test that set less and failed */
    pgtest_drop(f->name);
    free(f);
    return 0;
}

static audit_err verify_db(struct dbfx *f, size_t *chains, char *report, size_t cap)
{
    FILE *out = fmemopen(report, cap, "w");
    assert_non_null(out);
    audit_err e = audit_verify_db(f->url, out, chains);
    fclose(out);
    return e;
}

static long rows_of(struct dbfx *f, const char *instance)
{
    char sql[160];
    (void)snprintf(sql, sizeof(sql), "SELECT count(*) FROM audit WHERE instance = '%s'", instance);
    return pgtest_int(f->name, sql);
}

static void test_db_chains_per_instance_and_reopen(void **state)
{
    struct dbfx *f = *state;
    audit_log *a = NULL, *b = NULL;
    audit_record r = rec("ok");
    char report[2048];
    size_t chains = 0;

    assert_int_equal(audit_open_db(f->url, "gs-a", &a), AUDIT_OK);
    assert_int_equal(audit_open_db(f->url, "gs-b", &b), AUDIT_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(audit_append(a, &r), AUDIT_OK);
        assert_int_equal(audit_append(b, &r), AUDIT_OK);
    }
    audit_close(a);
    a = NULL;
    /* a restarted server continues its chain */
    assert_int_equal(audit_open_db(f->url, "gs-a", &a), AUDIT_OK);
    assert_int_equal(audit_append(a, &r), AUDIT_OK);
    audit_close(a);
    audit_close(b);
    assert_int_equal(rows_of(f, "gs-a"), 4);
    assert_int_equal(rows_of(f, "gs-b"), 3);
    assert_int_equal(verify_db(f, &chains, report, sizeof(report)), AUDIT_OK);
    assert_int_equal(chains, 2);
    assert_non_null(strstr(report, "instance gs-a: ok: 4 records"));

    /* a deleted row is a gap, an edited one breaks the chain at the next */
    assert_int_equal(pgtest_exec(f->name, "DELETE FROM audit WHERE instance = 'gs-a' AND seq = 2"), 0);
    assert_int_equal(verify_db(f, &chains, report, sizeof(report)), AUDIT_ERR_CHAIN);
    assert_non_null(strstr(report, "instance gs-a: gap: records 2..2 missing"));
    assert_non_null(strstr(report, "instance gs-b: ok: 3 records"));
    assert_int_equal(pgtest_exec(f->name, "UPDATE audit SET line = replace(line, 'alice', 'mallory') "
                                          "WHERE instance = 'gs-b' AND seq = 1"), 0);
    assert_int_equal(verify_db(f, &chains, report, sizeof(report)), AUDIT_ERR_CHAIN);
    assert_non_null(strstr(report, "instance gs-b: record 2: audit log hash chain broken"));
}

/* The database's lines (with "instance" and "seq") are the bytes the
 * jansson object made, for odd identities and an odd instance name. */
static void test_db_lines_are_what_jansson_made(void **state)
{
    struct dbfx *f = *state;
    audit_log *log = NULL;
    const char *instance = "gs-\xc3\xa9\"\\x";
    json_t *extra = json_pack("{s:I}", "secret_version", (json_int_t)3);
    gs_store *st = NULL;
    gs_store_audit_row *rows = NULL;
    size_t n = 0;
    char prev[65];

    assert_int_equal(audit_open_db(f->url, instance, &log), AUDIT_OK);
    for (size_t i = 0; i < N_OF(odd_identities); i++) {
        audit_record r = rec("ok");
        r.identity = odd_identities[i];
        r.extra = i % 2 ? extra : NULL;
        assert_int_equal(audit_append(log, &r), AUDIT_OK);
    }
    audit_close(log);
    assert_int_equal(gs_store_open(f->url, 0, &st), GS_OK);
    assert_int_equal(gs_store_audit_read(st, instance, 0, 100, &rows, &n), GS_OK);
    assert_int_equal(n, N_OF(odd_identities));
    memset(prev, '0', 64);
    prev[64] = '\0';
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_loads(rows[i].line, 0, NULL), *want = json_object();
        assert_non_null(o);
        json_object_set_new(want, "time", json_string(json_string_value(json_object_get(o, "time"))));
        json_object_set_new(want, "request_id", json_string("r1"));
        json_object_set_new(want, "action", json_string("unwrap"));
        json_object_set_new(want, "identity", json_string(odd_identities[i]));
        json_object_set_new(want, "group", json_string("staff"));
        json_object_set_new(want, "method", json_string("tls"));
        json_object_set_new(want, "key_version", json_integer(1));
        json_object_set_new(want, "outcome", json_string("ok"));
        if (i % 2)
            json_object_update(want, extra);
        json_object_set_new(want, "instance", json_string(instance));
        json_object_set_new(want, "seq", json_integer((json_int_t)(i + 1)));
        json_object_set_new(want, "prev", json_string(prev));
        char *line = json_dumps(want, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
        assert_string_equal(rows[i].line, line);
        sha256_hex(line, strlen(line), prev);
        free(line);
        json_decref(want);
        json_decref(o);
    }
    gs_store_audit_rows_free(rows, n);
    gs_store_close(st);
    json_decref(extra);
}

/* Ends every session on f's database but the caller's. */
static void end_sessions(struct dbfx *f)
{
    char sql[256];
    (void)snprintf(sql, sizeof(sql),
                   "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '%s' "
                   "AND pid <> pg_backend_pid()", f->name);
    assert_true(pgtest_int("postgres", sql) >= 1);
}

/* The database connection is lost and cannot be opened again: the round
 * that meets it fails exactly its own records (an earlier durable one
 * stays durable), audit_check reconnects once it can, and the chain goes
 * on from the table without a hole. */
static void test_db_lost_connection_fails_its_round_only(void **state)
{
    struct dbfx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    unsigned long long s1 = 0, s2 = 0, s3 = 0;
    char sql[256], report[2048];
    size_t chains = 0;

    assert_int_equal(audit_open_db(f->url, "gs-a", &log), AUDIT_OK);
    assert_int_equal(audit_write(log, &r, &s1), AUDIT_OK);
    assert_int_equal(audit_seq_state(log, s1), 0); /* not durable before its round */
    assert_int_equal(audit_wait_durable(log, s1, s1), AUDIT_OK);
    (void)snprintf(sql, sizeof(sql), "ALTER DATABASE \"%s\" WITH ALLOW_CONNECTIONS false", f->name);
    assert_int_equal(pgtest_exec(NULL, sql), 0);
    end_sessions(f);
    assert_int_equal(audit_write(log, &r, &s2), AUDIT_OK);
    assert_int_equal(audit_wait_durable(log, s2, s2), AUDIT_ERR_IO);
    assert_int_equal(audit_seq_state(log, s1), 1);
    assert_int_equal(audit_range_state(log, s1, s2), -1);
    (void)snprintf(sql, sizeof(sql), "ALTER DATABASE \"%s\" WITH ALLOW_CONNECTIONS true", f->name);
    assert_int_equal(pgtest_exec(NULL, sql), 0);
    assert_int_equal(audit_check(log), AUDIT_OK); /* reconnected */
    assert_int_equal(audit_write(log, &r, &s3), AUDIT_OK);
    assert_int_equal(audit_wait_durable(log, s3, s3), AUDIT_OK);
    audit_close(log);
    assert_int_equal(rows_of(f, "gs-a"), 2);
    assert_int_equal(verify_db(f, &chains, report, sizeof(report)), AUDIT_OK);
}

/* The connection is lost in the middle of a round (the database
 * restarted, the session ended) but can be opened again: the insert is
 * looked up and sent once more on a new connection, so its records are
 * durable, each once, and the chain has no hole. */
static void test_db_lost_connection_round_sent_again(void **state)
{
    struct dbfx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    unsigned long long s1 = 0, s2 = 0;
    char report[2048];
    size_t chains = 0;

    assert_int_equal(audit_open_db(f->url, "gs-a", &log), AUDIT_OK);
    assert_int_equal(audit_write(log, &r, &s1), AUDIT_OK);
    assert_int_equal(audit_wait_durable(log, s1, s1), AUDIT_OK);
    end_sessions(f);
    assert_int_equal(audit_write(log, &r, &s2), AUDIT_OK);
    assert_int_equal(audit_wait_durable(log, s2, s2), AUDIT_OK);
    assert_int_equal(audit_range_state(log, s1, s2), 1);
    audit_close(log);
    assert_int_equal(rows_of(f, "gs-a"), 2);
    assert_int_equal(verify_db(f, &chains, report, sizeof(report)), AUDIT_OK);
}

/* Two servers configured with one instance name: the second writer's
 * record is refused (fails closed), the chain stays whole. */
static void test_db_same_instance_twice_fails_closed(void **state)
{
    struct dbfx *f = *state;
    audit_log *a = NULL, *b = NULL;
    audit_record r = rec("ok");
    char report[2048];
    size_t chains = 0;

    assert_int_equal(audit_open_db(f->url, "gs-a", &a), AUDIT_OK);
    assert_int_equal(audit_open_db(f->url, "gs-a", &b), AUDIT_OK);
    assert_int_equal(audit_append(a, &r), AUDIT_OK);
    assert_int_equal(audit_append(b, &r), AUDIT_ERR_IO);
    audit_close(a);
    audit_close(b);
    assert_int_equal(rows_of(f, "gs-a"), 1);
    assert_int_equal(verify_db(f, &chains, report, sizeof(report)), AUDIT_OK);
}

/* The admin commands' chain (INSTANCE/admin) is shared by every command
 * run at the same time (two admins, a provisioning script running member
 * adds side by side): a command whose head went stale meanwhile chains
 * its record after the other's, never fails it (the change it records
 * is made already). A server's own chain still fails closed (above). */
static void test_db_admin_chain_shared(void **state)
{
    struct dbfx *f = *state;
    audit_log *a = NULL, *b = NULL;
    audit_record r = rec("ok");
    char report[2048];
    size_t chains = 0;

    assert_int_equal(audit_open_db(f->url, "gs-a" GS_AUDIT_ADMIN_SUFFIX, &a), AUDIT_OK);
    assert_int_equal(audit_open_db(f->url, "gs-a" GS_AUDIT_ADMIN_SUFFIX, &b), AUDIT_OK);
    assert_int_equal(audit_append(a, &r), AUDIT_OK);
    assert_int_equal(audit_append(b, &r), AUDIT_OK);
    assert_int_equal(audit_append(a, &r), AUDIT_OK);
    audit_close(a);
    audit_close(b);
    assert_int_equal(rows_of(f, "gs-a" GS_AUDIT_ADMIN_SUFFIX), 3);
    assert_int_equal(verify_db(f, &chains, report, sizeof(report)), AUDIT_OK);
    assert_non_null(strstr(report, "ok: 3 records"));
}

/* An admin command's insert gets no answer within [db] timeout (a commit
 * held by a deferred trigger, which would then append another command's
 * record after it once the lookup waits): before, it committed after the
 * lookup and, its chain lock gone with the connection, another command's
 * record after it; the command counted it as written once. Now the
 * lookup's connection first ends that backend (store_pg's end_orphan), so
 * the first try is rolled back and decided before the lookup, and the
 * second try writes the record, once (the trigger fires again, and lets
 * it through). A record found committed with the chain moved on after it
 * is still counted once (db_append_again), for a backend that cannot be
 * ended in time. */
static void test_db_admin_chain_committed_then_moved_on(void **state)
{
    struct dbfx *f = *state;
    audit_log *a = NULL;
    audit_record r = rec("ok");
    char sql[2048], report[2048];
    size_t chains = 0;

    (void)snprintf(sql, sizeof(sql), "ALTER DATABASE %s SET statement_timeout = '60s'", f->name);
    assert_int_equal(pgtest_exec("postgres", sql), 0);
    assert_int_equal(pgtest_exec(f->name,
        "CREATE SEQUENCE late; "
        "CREATE FUNCTION late() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN "
        "  IF NEW.instance = 'gs-a/admin' AND nextval('late') = 1 THEN "
        "    LOCK TABLE audit IN ACCESS EXCLUSIVE MODE; "
        "    FOR i IN 1..400 LOOP "
        "      PERFORM pg_stat_clear_snapshot(); "
        "      EXIT WHEN EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
        "        AND wait_event_type = 'Lock' AND query LIKE '%audit%'); "
        "      PERFORM pg_sleep(0.05); "
        "    END LOOP; "
        "    INSERT INTO audit (instance, seq, line) VALUES (NEW.instance, NEW.seq + 1, "
        "      json_build_object('action', 'other', 'instance', NEW.instance, 'seq', NEW.seq + 1, "
        "        'prev', encode(sha256(convert_to(NEW.line, 'UTF8')), 'hex'))::text); "
        "  END IF; "
        "  RETURN NULL; "
        "END $$; "
        "CREATE CONSTRAINT TRIGGER late AFTER INSERT ON audit DEFERRABLE INITIALLY DEFERRED "
        "  FOR EACH ROW EXECUTE FUNCTION late()"), 0);
    gs_store_set_timeout(1);
    assert_int_equal(audit_open_db(f->url, "gs-a" GS_AUDIT_ADMIN_SUFFIX, &a), AUDIT_OK);
    assert_int_equal(audit_append(a, &r), AUDIT_OK);
    gs_store_set_timeout(10);
    assert_int_equal(pgtest_int(f->name, "SELECT last_value FROM late"), 2);
    assert_int_equal(rows_of(f, "gs-a" GS_AUDIT_ADMIN_SUFFIX), 1);
    assert_int_equal(pgtest_exec(f->name, "DROP TRIGGER late ON audit"), 0);
    assert_int_equal(audit_append(a, &r), AUDIT_OK);
    audit_close(a);
    assert_int_equal(rows_of(f, "gs-a" GS_AUDIT_ADMIN_SUFFIX), 2);
    assert_int_equal(verify_db(f, &chains, report, sizeof(report)), AUDIT_OK);
    assert_non_null(strstr(report, "ok: 2 records"));
}

struct append_one {
    audit_log *log;
    audit_err rc;
};

static void *append_one(void *p)
{
    struct append_one *a = p;
    audit_record r = rec("ok");
    a->rc = audit_append(a->log, &r);
    return NULL;
}

/* Admin commands run at the same time take turns on their shared chain
 * (a lock in the database): one appends only once the other has let go,
 * after its head. Optimistic tries alone lost records: of 40 `member set`
 * run at once, 5 were made without their record. */
static void test_db_admin_chain_takes_turns(void **state)
{
    struct dbfx *f = *state;
    const char *chain = "gs-a" GS_AUDIT_ADMIN_SUFFIX;
    audit_log *a = NULL, *b = NULL;
    gs_store *holder = NULL;
    struct append_one arg = {0};
    audit_record r = rec("ok");
    pthread_t th;
    char sql[256], report[2048];
    size_t chains = 0;
    long waiting = 0;

    assert_int_equal(audit_open_db(f->url, chain, &a), AUDIT_OK);
    assert_int_equal(audit_open_db(f->url, chain, &b), AUDIT_OK);
    assert_int_equal(audit_append(b, &r), AUDIT_OK);
    /* another command holds the chain: a's append waits for it */
    assert_int_equal(gs_store_open(f->url, 0, &holder), GS_OK);
    assert_int_equal(gs_store_audit_chain_lock(holder, chain), GS_OK);
    arg.log = a;
    assert_int_equal(pthread_create(&th, NULL, append_one, &arg), 0);
    (void)snprintf(sql, sizeof(sql),
                   "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = "
                   "(SELECT oid FROM pg_database WHERE datname = '%s')", f->name);
    for (int i = 0; i < 400 && waiting == 0; i++) {
        struct timespec pause = {0, 25 * 1000 * 1000};
        if ((waiting = pgtest_int(f->name, sql)) == 0)
            (void)nanosleep(&pause, NULL);
    }
    assert_int_equal(waiting, 1);
    gs_store_audit_chain_unlock(holder, chain);
    pthread_join(th, NULL);
    assert_int_equal(arg.rc, AUDIT_OK);
    assert_int_equal(audit_append(b, &r), AUDIT_OK);
    gs_store_close(holder);
    audit_close(a);
    audit_close(b);
    assert_int_equal(rows_of(f, chain), 3);
    assert_int_equal(verify_db(f, &chains, report, sizeof(report)), AUDIT_OK);
    assert_non_null(strstr(report, "ok: 3 records"));
}

/* The key holder's way: writers do not wait, one round inserts the batch
 * (one statement); what is still queued at close is inserted too. */
static void test_db_round_batches(void **state)
{
    struct dbfx *f = *state;
    audit_log *log = NULL;
    audit_record r = rec("ok");
    unsigned long long seq[200], late = 0;
    char report[2048];
    size_t chains = 0;

    assert_int_equal(audit_open_db(f->url, "gs-a", &log), AUDIT_OK);
    for (int i = 0; i < 200; i++)
        assert_int_equal(audit_write(log, &r, &seq[i]), AUDIT_OK);
    assert_int_equal(audit_range_state(log, seq[0], seq[199]), 0);
    assert_int_equal(rows_of(f, "gs-a"), 0);
    assert_int_equal(audit_wait_durable(log, seq[199], seq[199]), AUDIT_OK);
    assert_int_equal(audit_range_state(log, seq[0], seq[199]), 1);
    assert_int_equal(rows_of(f, "gs-a"), 200);
    assert_int_equal(audit_write(log, &r, &late), AUDIT_OK);
    audit_close(log);
    assert_int_equal(rows_of(f, "gs-a"), 201);
    assert_int_equal(verify_db(f, &chains, report, sizeof(report)), AUDIT_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_append_chains_and_reopen_continues, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_reads_head_under_the_lock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_edited_line_breaks_chain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_is_not_durable_until_synced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_sync_fails_every_record_it_covered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_range_fails_if_any_record_failed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writes_during_failed_sync_fail_too, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_after_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_round_writes_queue_in_one_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overlong_record_fails_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_disk_fails_the_whole_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_round_gives_up_on_a_lock_held_too_long, setup, teardown),
        cmocka_unit_test_setup_teardown(test_round_waits_the_whole_lock_wait, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_writes_what_is_queued, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_appenders_one_chain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_cut_at_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nul_tail_of_a_crash_cut_at_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overlong_tail_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_short_write_cut_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_records_cut_under_the_writer_break_the_chain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_why_names_a_missing_directory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_then_grown_by_another_appender_still_breaks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_under_two_writers_does_not_fork, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_under_a_writer_knowing_an_older_line_breaks_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_at_the_end_of_a_file_starting_with_a_break_still_breaks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_then_rotated_by_another_still_breaks, setup, teardown_all),
        cmocka_unit_test_setup_teardown(test_reopen_after_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotate_continues_chain_in_new_file, setup, teardown_all),
        cmocka_unit_test_setup_teardown(test_appender_follows_two_rotations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_appender_follows_rotation_by_another, setup, teardown_all),
        cmocka_unit_test_setup_teardown(test_reopen_after_rotation_says_it_continues, setup, teardown_all),
        cmocka_unit_test_setup_teardown(test_reopen_names_a_deleted_directory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_appenders_in_two_processes_share_one_chain, setup, teardown_all),
        cmocka_unit_test_setup_teardown(test_batches_interleave_with_cli_and_rotation, setup, teardown_all),
        cmocka_unit_test_setup_teardown(test_replaced_file_not_followed, setup, teardown_all),
        cmocka_unit_test_setup_teardown(test_verify_names_missing_and_edited_archive, setup, teardown_all),
        cmocka_unit_test_setup_teardown(test_verify_missing_archive_still_checks_the_rest, setup, teardown_all),
        cmocka_unit_test_setup_teardown(test_rotation_under_concurrent_appends, setup, teardown_all),
        cmocka_unit_test_setup_teardown(test_rotate_after_leftover_new_file, setup, teardown_all),
        cmocka_unit_test_setup_teardown(test_rotate_failing_early_changes_nothing, setup, teardown_all),
        cmocka_unit_test_setup_teardown(test_rotation_killed_half_way, setup, teardown_all),
        cmocka_unit_test_setup_teardown(test_symlink_at_path_refused, setup, teardown_all),
        cmocka_unit_test_setup_teardown(test_fifo_at_path_refused_unopened, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lines_are_what_jansson_made, setup, teardown),
        cmocka_unit_test_setup_teardown(test_random_identities_match_jansson, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversize_record_refused_at_write, setup, teardown),
    };
    const struct CMUnitTest db_tests[] = {
        cmocka_unit_test_setup_teardown(test_db_chains_per_instance_and_reopen, db_setup, db_teardown),
        cmocka_unit_test_setup_teardown(test_db_lines_are_what_jansson_made, db_setup, db_teardown),
        cmocka_unit_test_setup_teardown(test_db_lost_connection_fails_its_round_only, db_setup, db_teardown),
        cmocka_unit_test_setup_teardown(test_db_lost_connection_round_sent_again, db_setup, db_teardown),
        cmocka_unit_test_setup_teardown(test_db_same_instance_twice_fails_closed, db_setup, db_teardown),
        cmocka_unit_test_setup_teardown(test_db_admin_chain_shared, db_setup, db_teardown),
        cmocka_unit_test_setup_teardown(test_db_admin_chain_takes_turns, db_setup, db_teardown),
        cmocka_unit_test_setup_teardown(test_db_admin_chain_committed_then_moved_on, db_setup, db_teardown),
        cmocka_unit_test_setup_teardown(test_db_round_batches, db_setup, db_teardown),
    };
    int failed = cmocka_run_group_tests_name("file", tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("database", db_tests, NULL, NULL);
    return failed;
}
