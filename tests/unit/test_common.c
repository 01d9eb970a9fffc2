/* Unit tests for common/: strict base64, PIN sources, atomic writes, parsing, log quoting,
 * the JSON writer (against jansson, the library whose output it must equal). */
#define _GNU_SOURCE /* O_PATH */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <linux/fs.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <limits.h>

#include "jsonw.h"
#include "log.h"
#include "mailaddr.h"
#include "mailfold.h"
#include "outfile.h"
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

/* A PIN file that is a named pipe: read when a writer comes within the
 * wait, refused after it when none does (a start hung for good, without a
 * word, before); a device or socket is refused at once. */
static void test_pin_source_fifo(void **state)
{
    (void)state;
    char dir[] = "/tmp/gs-test-XXXXXX", path[128];
    char *pin = NULL;
    size_t len = 0;
    int status = 0;
    pid_t pid;

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/pin", dir);
    assert_int_equal(mkfifo(path, 0600), 0);
    /* nobody writes: refused after the wait */
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(20); /* the bug: a read that never ends */
        _exit(util_read_pin_source_wait(path, 200, &pin, &len) == UTIL_E_NOWRITER ? 0 : 1);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    /* a writer: its PIN is read */
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        _exit(fd >= 0 && write(fd, "2468\r\n", 6) == 6 ? 0 : 1);
    }
    assert_int_equal(util_read_pin_source_wait(path, 10000, &pin, &len), UTIL_OK);
    assert_int_equal(len, 4);
    assert_string_equal(pin, "2468");
    util_secret_free(pin, len);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    /* a writer that writes its PIN but never closes (c53b107): refused
     * after the wait, not taken half-read; one that writes more than a
     * PIN: too big */
    for (int k = 0; k < 2; k++) {
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            char big[600];
            int fd = open(path, O_WRONLY | O_CLOEXEC);
            memset(big, '7', sizeof(big));
            if (fd < 0 || (k == 0 ? write(fd, "2468\n", 5) != 5 : write(fd, big, sizeof(big)) != (ssize_t)sizeof(big)))
                _exit(1);
            pause(); /* holds the pipe open */
            _exit(0);
        }
        assert_int_equal(util_read_pin_source_wait(path, 300, &pin, &len), k == 0 ? UTIL_E_NOWRITER : UTIL_E_TOOBIG);
        assert_null(pin);
        (void)kill(pid, SIGKILL);
        assert_int_equal(waitpid(pid, &status, 0), pid);
    }
    unlink(path);
    /* a character device */
    assert_int_equal(util_read_pin_source("/dev/null", &pin, &len), UTIL_E_NOTREG);
    /* a socket: refused as one, not "No such device or address" (its
     * open's ENXIO, which names nothing wrong) */
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int sfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(sfd >= 0);
    assert_true(strlen(path) < sizeof(sa.sun_path));
    memcpy(sa.sun_path, path, strlen(path) + 1);
    assert_int_equal(bind(sfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(chmod(path, 0600), 0);
    assert_int_equal(util_read_pin_source(path, &pin, &len), UTIL_E_NOTREG);
    (void)close(sfd);
    unlink(path);
    rmdir(dir);
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
    /* log_qs: the same escaping, in per-thread slots, several in one call */
    const char *a = log_qs("C_Decrypt: \"x\"\n"), *b = log_qs("b c");
    assert_string_equal(a, "C_Decrypt: \\\"x\\\"\\x0a");
    assert_string_equal(b, "b c");
}

/* Every record is one line: a field value that was not quoted (a database's
 * message ends in a newline, a path may hold one) cannot end the line and
 * start a forged record. */
static void test_log_one_line_per_record(void **state)
{
    (void)state;
    FILE *sink = tmpfile();
    char line[4096];
    int lines = 0;

    assert_non_null(sink);
    log_init("test", LOG_LVL_DEBUG, sink);
    log_set_request_id("5f2c");
    log_info("postgresql notice=%s", "NOTICE:  relation exists\n");
    log_warn("text with %s path=%s", "a\nb", "/tmp/x\n2026-01-01T00:00:00.000Z level=error fake=1\r\x7f");
    log_error("key=%s other=1", "v\nlevel=error");
    log_set_request_id(NULL);
    rewind(sink);
    while (fgets(line, sizeof(line), sink) != NULL) {
        lines++;
        assert_non_null(strchr(line, '\n'));
        assert_null(strchr(line, '\r'));
        assert_null(strchr(line, 0x7f));
        assert_non_null(strstr(line, " level="));
    }
    assert_int_equal(lines, 3);
    rewind(sink);
    assert_non_null(fgets(line, sizeof(line), sink));
    assert_non_null(strstr(line, "req=5f2c msg=\"postgresql\" notice=NOTICE:  relation exists\\x0a\n"));
    assert_non_null(fgets(line, sizeof(line), sink));
    assert_non_null(strstr(line,
                           "msg=\"text with a\\x0ab\" path=/tmp/x\\x0a2026-01-01T00:00:00.000Z level=error "
                           "fake=1\\x0d\\x7f\n"));
    assert_non_null(fgets(line, sizeof(line), sink));
    assert_non_null(strstr(line, "msg=\"\" key=v\\x0alevel=error other=1\n"));
    log_init("test", LOG_LVL_INFO, NULL);
    fclose(sink);
}

/* ---- jsonw: the same bytes as jansson's compact dump ---------------------- */

/* jansson's text of o (stolen), with the newline the server adds. */
static char *jansson_text(json_t *o)
{
    assert_non_null(o);
    char *t = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    assert_non_null(t);
    size_t n = strlen(t);
    char *out = malloc(n + 2);
    assert_non_null(out);
    memcpy(out, t, n);
    out[n] = '\n';
    out[n + 1] = '\0';
    free(t);
    return out;
}

static void assert_text(const jsonw *w, const char *want)
{
    const char *t = NULL;
    size_t n = 0;
    assert_int_equal(jsonw_text(w, &t, &n), JSONW_OK);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(t, want, n);
}

/* Which relays may be sent an SMTP password without TLS: this host only,
 * as written in the URL, never a look-alike. */
static void test_url_host_is_loopback(void **state)
{
    (void)state;
    assert_true(util_url_host_is_loopback("smtp://127.0.0.1:25"));
    assert_true(util_url_host_is_loopback("smtp://127.3.4.5:587/helo.example.org"));
    assert_true(util_url_host_is_loopback("smtp://localhost"));
    assert_true(util_url_host_is_loopback("smtp://LocalHost:25"));
    assert_true(util_url_host_is_loopback("smtp://[::1]:25"));
    assert_true(util_url_host_is_loopback("smtp://user@127.0.0.1:25"));
    assert_false(util_url_host_is_loopback("smtp://192.0.2.1:25"));
    assert_false(util_url_host_is_loopback("smtp://localhost.example.org:25"));
    assert_false(util_url_host_is_loopback("smtp://127.0.0.1.example.org:25"));
    assert_false(util_url_host_is_loopback("smtp://128.0.0.1:25"));
    assert_false(util_url_host_is_loopback("smtp://[::2]:25"));
    assert_false(util_url_host_is_loopback("smtp://[::1"));
    assert_false(util_url_host_is_loopback("smtp://127.0.0.1@relay.example.org:25"));
    /* two '@': which host is meant depends on the parser, so none is */
    assert_false(util_url_host_is_loopback("smtp://a@127.0.0.1:25@relay.example.org"));
    assert_false(util_url_host_is_loopback("smtp://a@localhost@relay.example.org:25"));
    /* where libcurl ends the host (at / ? #), and forms never taken */
    assert_true(util_url_host_is_loopback("smtp://127.0.0.1:25#@relay.example.org"));
    assert_false(util_url_host_is_loopback("smtp://[::ffff:127.0.0.1]:25"));
    assert_false(util_url_host_is_loopback("smtp://localhost.:25"));
    assert_false(util_url_host_is_loopback("127.0.0.1:25"));
    assert_false(util_url_host_is_loopback(NULL));
    /* the host alone, as check compares it with the TLS certificate's names */
    char host[16];
    assert_int_equal(util_url_host("https://gs.example.org:8444/x", host, sizeof(host)), UTIL_OK);
    assert_string_equal(host, "gs.example.org");
    assert_int_equal(util_url_host("https://u@[::1]:8444", host, sizeof(host)), UTIL_OK);
    assert_string_equal(host, "::1");
    assert_int_equal(util_url_host("https://127.0.0.1", host, sizeof(host)), UTIL_OK);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(util_url_host("https://:8444", host, sizeof(host)), UTIL_E_FORMAT);
    assert_int_equal(util_url_host("https://[::1", host, sizeof(host)), UTIL_E_FORMAT);
    assert_int_equal(util_url_host("https://a@b@c", host, sizeof(host)), UTIL_E_FORMAT);
    assert_int_equal(util_url_host("https://a-much-longer-name.example.org", host, sizeof(host)),
                     UTIL_E_TOOBIG);
    assert_string_equal(host, "");
    /* a login in the URL, which libcurl would use: refused by both clients */
    assert_true(util_url_has_userinfo("smtp://u:p@relay.example.org:25"));
    assert_true(util_url_has_userinfo("smtp://;AUTH=PLAIN@127.0.0.1"));
    assert_true(util_url_has_userinfo("smtps://u@[::1]:465/helo"));
    assert_false(util_url_has_userinfo("smtp://relay.example.org:25/a@b"));
    assert_false(util_url_has_userinfo("smtp://127.0.0.1:25#@x"));
    assert_false(util_url_has_userinfo("relay@example.org"));
    assert_false(util_url_has_userinfo(NULL));
}

/* The clear-text AUTH rule both SMTP clients apply: its words, and what
 * each allows. */
static void test_auth_clear_rule(void **state)
{
    util_auth_clear r = UTIL_AUTH_CLEAR_YES;
    (void)state;
    assert_int_equal(util_auth_clear_parse("no", &r), UTIL_OK);
    assert_int_equal(r, UTIL_AUTH_CLEAR_NO);
    assert_int_equal(util_auth_clear_parse("LoopBack", &r), UTIL_OK);
    assert_int_equal(r, UTIL_AUTH_CLEAR_LOOPBACK);
    assert_int_equal(util_auth_clear_parse("yes", &r), UTIL_OK);
    assert_int_equal(r, UTIL_AUTH_CLEAR_YES);
    assert_int_equal(util_auth_clear_parse("always", &r), UTIL_E_FORMAT);
    assert_int_equal(util_auth_clear_parse(NULL, &r), UTIL_E_FORMAT);
    assert_int_equal(r, UTIL_AUTH_CLEAR_YES); /* unchanged */
    assert_false(util_auth_clear_allows(UTIL_AUTH_CLEAR_NO, "smtp://127.0.0.1:25"));
    assert_true(util_auth_clear_allows(UTIL_AUTH_CLEAR_LOOPBACK, "smtp://127.0.0.1:25"));
    assert_false(util_auth_clear_allows(UTIL_AUTH_CLEAR_LOOPBACK, "smtp://192.0.2.1:25"));
    assert_true(util_auth_clear_allows(UTIL_AUTH_CLEAR_YES, "smtp://192.0.2.1:25"));
}

/* mailfold never folds a field's first line before its colon: with white
 * space between name and colon (RFC 5322 obs-optional, "To :"), a fold
 * there left a line "To" with no colon, no field at all. Such a line with
 * no white space after the colon goes as it came; with some, the fold goes
 * after the colon; unfolded, the field is as it came. */
static void test_mailfold_keeps_colon(void **state)
{
    char in[1200], out[1300], un[1300];
    size_t n, o, u = 0;
    (void)state;

    /* "To :" and a 996-octet run: nowhere after the colon to fold */
    n = (size_t)snprintf(in, sizeof(in), "To :%0996d\r\n", 0);
    o = mailfold(NULL, in, n, "\r\n");
    assert_int_equal(o, n);
    assert_int_equal(mailfold(out, in, n, "\r\n"), n);
    assert_memory_equal(out, in, n);

    /* white space on both sides of the colon, a long run after: the fold
     * is after the colon, each line within 998 and its first one the
     * field's name and colon */
    n = (size_t)snprintf(in, sizeof(in), "Subject\t: %0500d %0600d\n", 0, 0);
    o = mailfold(NULL, in, n, "\n");
    assert_true(o > n && o < sizeof(out));
    o = mailfold(out, in, n, "\n");
    for (size_t i = 0, ls = 0; i < o; i++) {
        if (out[i] != '\n')
            continue;
        assert_true(i - ls <= MAILFOLD_MAX_LINE);
        if (ls == 0)
            assert_non_null(memchr(out, ':', i));
        else
            assert_true(out[ls] == ' ' || out[ls] == '\t');
        ls = i + 1;
    }
    assert_memory_equal(out, "Subject\t: ", 10);
    for (size_t i = 0; i < o; i++) /* unfold: a newline before white space out */
        if (!(out[i] == '\n' && i + 1 < o))
            un[u++] = out[i];
    assert_int_equal(u, n);
    assert_memory_equal(un, in, n);
}

/* The one address rule of groupsrv, the exploder and groupmail: RFC 5321
 * limits (local part 64, address 254), dot-atom local parts, host-name
 * domains; quoted local parts, address literals and non-ASCII refused,
 * each with its own reason. */
static void test_mailaddr(void **state)
{
    char a[300];
    (void)state;
    assert_null(mailaddr_problem("a@b.org"));
    assert_null(mailaddr_problem("first.last+tag@sub.example.org"));
    assert_null(mailaddr_problem("o'brien!x#y$z%&*=?^_`{|}~-@xn--bcher-kva.example"));
    assert_null(mailaddr_problem("Root@LocalHost"));
    /* 64 octets of local part and 254 in all are the limits */
    memset(a, 'l', 64);
    memcpy(a + 64, "@x.org", 7);
    assert_null(mailaddr_problem(a));
    memset(a, 'l', 65);
    memcpy(a + 65, "@x.org", 7);
    assert_string_equal(mailaddr_problem(a), "a local part longer than 64 octets (RFC 5321)");
    memset(a, 'd', sizeof(a));
    memcpy(a, "l@", 2);
    for (size_t i = 2 + 63; i < 254; i += 64)
        a[i] = '.';
    a[254] = '\0';
    assert_null(mailaddr_problem(a));
    a[254] = 'd';
    a[255] = '\0';
    assert_string_equal(mailaddr_problem(a), "longer than 254 octets (RFC 5321)");
    memset(a, 'd', 70);
    memcpy(a, "l@", 2);
    a[70] = '\0';
    assert_string_equal(mailaddr_problem(a), "a domain label longer than 63 octets");
    assert_string_equal(mailaddr_problem("\"a b\"@x.org"), "a quoted local part (\"...\"@), which is not supported");
    assert_non_null(strstr(mailaddr_problem("a@[192.0.2.1]"), "address literal"));
    assert_non_null(strstr(mailaddr_problem("a@[IPv6:2001:db8::1]"), "address literal"));
    assert_non_null(strstr(mailaddr_problem("j\xc3\xbc" "rgen@example.org"), "SMTPUTF8"));
    assert_non_null(strstr(mailaddr_problem("a@b\xc3\xbc" "cher.example"), "SMTPUTF8"));
    assert_string_equal(mailaddr_problem(""), "empty");
    assert_string_equal(mailaddr_problem(NULL), "empty");
    assert_string_equal(mailaddr_problem("nobody"), "no @");
    assert_string_equal(mailaddr_problem("a@b@c.org"), "more than one @");
    assert_string_equal(mailaddr_problem("@b.org"), "an empty local part");
    assert_string_equal(mailaddr_problem("a@"), "an empty domain");
    assert_non_null(mailaddr_problem("a b@c.org"));
    assert_non_null(mailaddr_problem("a\n@c.org"));
    assert_non_null(strstr(mailaddr_problem("a/b@c.org"), "local part may not hold"));
    assert_non_null(strstr(mailaddr_problem("<a@b.org>"), "may not hold"));
    /* what may name a record an older build stored under a looser rule */
    assert_true(mailaddr_names_record("a..b@mail_host.example"));
    assert_true(mailaddr_names_record("dept/ops@example.org"));
    assert_true(mailaddr_names_record("a@b"));
    /* the choice between the two rules */
    assert_null(mailaddr_refusal("a@b.org", 1));
    assert_string_equal(mailaddr_refusal("a..b@mail_host.example", 1), mailaddr_problem("a..b@mail_host.example"));
    assert_null(mailaddr_refusal("a..b@mail_host.example", 0));
    assert_string_equal(mailaddr_refusal("a b@example.org", 0), MAILADDR_RECORD_RULE);
    assert_false(mailaddr_names_record(NULL));
    assert_false(mailaddr_names_record(""));
    assert_false(mailaddr_names_record("nobody"));
    assert_false(mailaddr_names_record("@b.org"));
    assert_false(mailaddr_names_record("a@"));
    assert_false(mailaddr_names_record("a@b@c.org"));
    assert_false(mailaddr_names_record("a b@c.org"));
    assert_false(mailaddr_names_record("<a@c.org>"));
    assert_false(mailaddr_names_record("a,b@c.org"));
    assert_false(mailaddr_names_record("a\n@c.org"));
    assert_false(mailaddr_names_record("j\xc3\xbc" "rgen@example.org"));
    memset(a, 'l', 255);
    a[1] = '@';
    a[255] = '\0';
    assert_false(mailaddr_names_record(a));
    a[254] = '\0';
    assert_true(mailaddr_names_record(a));
    assert_non_null(strstr(mailaddr_problem("a,b@c.org"), "may not hold"));
    assert_non_null(strstr(mailaddr_problem(".a@b.org"), "dot first"));
    assert_non_null(strstr(mailaddr_problem("a.@b.org"), "dot first"));
    assert_non_null(strstr(mailaddr_problem("a..b@c.org"), "dot first"));
    assert_non_null(strstr(mailaddr_problem("a@b..org"), "empty label"));
    assert_non_null(strstr(mailaddr_problem("a@b.org."), "empty label"));
    assert_non_null(strstr(mailaddr_problem("a@.b.org"), "empty label"));
    assert_non_null(strstr(mailaddr_problem("a@-b.org"), "hyphen"));
    assert_non_null(strstr(mailaddr_problem("a@b-.org"), "hyphen"));
    assert_non_null(strstr(mailaddr_problem("a@b_c.org"), "domain name may not hold"));
}

static void test_jsonw_answers_equal_jansson(void **state)
{
    (void)state;
    unsigned char key[100];
    for (size_t i = 0; i < sizeof(key); i++)
        key[i] = (unsigned char)(i * 151 + 7);
    for (size_t n = 0; n <= sizeof(key); n++) {
        char *b64 = NULL;
        assert_int_equal(util_b64_encode(key, n, &b64), UTIL_OK);
        long long version = n % 2 ? (long long)n : LLONG_MAX - (long long)n;
        /* The three answers of an unwrap, as api.c writes them. */
        jsonw *w = jsonw_new(4096);
        jsonw_obj_begin(w);
        jsonw_key(w, "key");
        jsonw_b64(w, key, n);
        jsonw_key(w, "key_version");
        jsonw_int(w, version);
        jsonw_obj_end(w);
        jsonw_newline(w);
        char *want = jansson_text(json_pack("{s:s,s:I}", "key", b64, "key_version", (json_int_t)version));
        assert_text(w, want);
        free(want);
        jsonw_free(w);

        w = jsonw_new(4096);
        jsonw_obj_begin(w);
        jsonw_key(w, "results");
        jsonw_arr_begin(w);
        jsonw_obj_begin(w);
        jsonw_key(w, "recipient_info");
        jsonw_b64(w, key, n);
        jsonw_key(w, "kek_id");
        jsonw_b64(w, key, n / 2);
        jsonw_key(w, "secret_version");
        jsonw_int(w, LLONG_MIN);
        jsonw_obj_end(w);
        jsonw_obj_begin(w);
        jsonw_key(w, "status");
        jsonw_int(w, 403);
        jsonw_key(w, "error");
        jsonw_obj_begin(w);
        jsonw_key(w, "code");
        jsonw_str(w, "not_a_member");
        jsonw_key(w, "message");
        jsonw_str(w, "a \"quoted\"\tmessage\\ / \xc3\xa9\n");
        jsonw_obj_end(w);
        jsonw_obj_end(w);
        jsonw_arr_end(w);
        jsonw_obj_end(w);
        jsonw_newline(w);
        char *half = NULL;
        assert_int_equal(util_b64_encode(key, n / 2, &half), UTIL_OK);
        want = jansson_text(json_pack("{s:[{s:s,s:s,s:I},{s:i,s:{s:s,s:s}}]}", "results", "recipient_info", b64,
                                      "kek_id", half, "secret_version", (json_int_t)LLONG_MIN, "status", 403, "error",
                                      "code", "not_a_member", "message", "a \"quoted\"\tmessage\\ / \xc3\xa9\n"));
        assert_text(w, want);
        free(want);
        free(half);
        jsonw_free(w);
        free(b64);
    }
}

/* s written as a string by jsonw and by jansson: both refuse it, or both
 * write the same bytes. Returns 1 when both accepted it. */
static int string_agrees(const char *s)
{
    jsonw *w = jsonw_new(1 << 16);
    assert_non_null(w);
    jsonw_str(w, s);
    const char *t = NULL;
    size_t n = 0;
    jsonw_err err = jsonw_text(w, &t, &n);
    json_t *js = json_string(s);
    if (js == NULL) {
        assert_int_equal(err, JSONW_E_UTF8);
        jsonw_free(w);
        return 0;
    }
    assert_int_equal(err, JSONW_OK);
    char *want = json_dumps(js, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(js);
    assert_non_null(want);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(t, want, n);
    free(want);
    jsonw_free(w);
    return 1;
}

static void test_jsonw_escapes_like_jansson(void **state)
{
    (void)state;
    char s[2] = {0, 0};
    /* Every single byte, ASCII controls and high bytes alike. */
    for (int c = 1; c < 256; c++) {
        s[0] = (char)c;
        assert_int_equal(string_agrees(s), c < 0x80);
    }
    static const char *const valid[] = {
        "", "plain", "\"\\/\b\f\n\r\t\x01\x1f\x7f", "caf\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x94\x91",
        "\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80", "\xef\xbf\xbf", "\xed\x9f\xbf", "\xee\x80\x80",
        "\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf", "\xe2\x80\xa8 line separator", "</script>",
    };
    for (size_t i = 0; i < GS_ARRAY_LEN(valid); i++)
        assert_int_equal(string_agrees(valid[i]), 1);
    static const char *const invalid[] = {
        "\x80", "\xbf", "\xc0\x80", "\xc1\xbf", "\xc2", "\xc2\x41", "\xe0\x80\x80", "\xe0\x9f\xbf",
        "\xed\xa0\x80", "\xed\xbf\xbf", "\xe2\x82", "\xf0\x80\x80\x80", "\xf0\x8f\xbf\xbf", "\xf4\x90\x80\x80",
        "\xf5\x80\x80\x80", "\xff", "ok\xe2\x82", "\xf0\x9f\x94",
    };
    for (size_t i = 0; i < GS_ARRAY_LEN(invalid); i++)
        assert_int_equal(string_agrees(invalid[i]), 0);
    /* Random strings, biased to the bytes that matter. */
    static const unsigned char pick[] = {'a', '"', '\\', '\n', 0x01, 0x1f, 0x7f, 0x80, 0xbf, 0xc2, 0xc3, 0xdf,
                                         0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xa0, 0x9f, 0x8f, 0x90, 0xa9, 0xff};
    unsigned seed = 12345, accepted = 0;
    char r[24];
    for (int i = 0; i < 20000; i++) {
        size_t len = (seed = seed * 1103515245u + 12345u) >> 16 & 15;
        for (size_t k = 0; k < len; k++) {
            seed = seed * 1103515245u + 12345u;
            r[k] = (char)pick[(seed >> 16) % sizeof(pick)];
        }
        r[len] = '\0';
        accepted += (unsigned)string_agrees(r);
    }
    assert_true(accepted > 1000 && accepted < 19000); /* both kinds were tried */
}

static void test_jsonw_shape_and_bounds(void **state)
{
    (void)state;
    const char *t = NULL;
    size_t n = 0;
    jsonw *w;

    /* A value where a key is due, a key in an array, a second top-level
     * value, an unbalanced close, an unclosed object: refused, and sticky. */
    w = jsonw_new(100);
    jsonw_obj_begin(w);
    jsonw_int(w, 1);
    assert_int_equal(jsonw_text(w, &t, &n), JSONW_E_SHAPE);
    assert_null(t);
    jsonw_key(w, "a");
    jsonw_int(w, 1);
    jsonw_obj_end(w);
    assert_int_equal(jsonw_text(w, &t, &n), JSONW_E_SHAPE);
    jsonw_free(w);
    w = jsonw_new(100);
    jsonw_arr_begin(w);
    jsonw_key(w, "a");
    assert_int_equal(jsonw_text(w, &t, &n), JSONW_E_SHAPE);
    jsonw_free(w);
    w = jsonw_new(100);
    jsonw_int(w, 1);
    jsonw_int(w, 2);
    assert_int_equal(jsonw_text(w, &t, &n), JSONW_E_SHAPE);
    jsonw_free(w);
    w = jsonw_new(100);
    jsonw_arr_begin(w);
    jsonw_obj_end(w);
    assert_int_equal(jsonw_text(w, &t, &n), JSONW_E_SHAPE);
    jsonw_free(w);
    w = jsonw_new(100);
    jsonw_obj_begin(w);
    jsonw_key(w, "a");
    jsonw_obj_end(w); /* a key without its value */
    assert_int_equal(jsonw_text(w, &t, &n), JSONW_E_SHAPE);
    jsonw_free(w);
    w = jsonw_new(100);
    jsonw_obj_begin(w);
    assert_int_equal(jsonw_text(w, &t, &n), JSONW_E_SHAPE);
    jsonw_newline(w);
    assert_int_equal(jsonw_text(w, &t, &n), JSONW_E_SHAPE);
    jsonw_free(w);
    /* 16 levels, not 17. */
    w = jsonw_new(100);
    for (int i = 0; i < 16; i++)
        jsonw_arr_begin(w);
    for (int i = 0; i < 16; i++)
        jsonw_arr_end(w);
    assert_int_equal(jsonw_text(w, &t, &n), JSONW_OK);
    jsonw_free(w);
    w = jsonw_new(100);
    for (int i = 0; i < 17; i++)
        jsonw_arr_begin(w);
    assert_int_equal(jsonw_text(w, &t, &n), JSONW_E_SHAPE);
    jsonw_free(w);

    /* The maximum holds exactly: base64 of 30 bytes is 40 characters. */
    unsigned char b[30] = {0};
    w = jsonw_new(42);
    jsonw_b64(w, b, sizeof(b));
    assert_int_equal(jsonw_text(w, &t, &n), JSONW_OK);
    assert_int_equal(n, 42);
    jsonw_free(w);
    w = jsonw_new(41);
    jsonw_b64(w, b, sizeof(b));
    assert_int_equal(jsonw_text(w, &t, &n), JSONW_E_TOOBIG);
    jsonw_free(w);
    w = jsonw_new(8);
    jsonw_str(w, "a\"\"\"");
    assert_int_equal(jsonw_text(w, &t, &n), JSONW_E_TOOBIG);
    jsonw_free(w);
    w = jsonw_new(9);
    jsonw_str(w, "a\"\"\""); /* "a\"\"\"" is 9 bytes */
    assert_text(w, "\"a\\\"\\\"\\\"\"");
    jsonw_free(w);
    /* A huge length is refused before any arithmetic can wrap. */
    w = jsonw_new(SIZE_MAX);
    jsonw_b64(w, b, SIZE_MAX - 1);
    assert_int_equal(jsonw_text(w, &t, &n), JSONW_E_TOOBIG);
    jsonw_free(w);
    /* Growth past the first buffer keeps every byte. */
    w = jsonw_new(1 << 20);
    jsonw_arr_begin(w);
    for (int i = 0; i < 1000; i++)
        jsonw_int(w, i);
    jsonw_arr_end(w);
    json_t *a = json_array();
    for (int i = 0; i < 1000; i++)
        json_array_append_new(a, json_integer(i));
    char *want = json_dumps(a, JSON_COMPACT);
    json_decref(a);
    assert_text(w, want);
    free(want);
    jsonw_free(w);
    jsonw_free(NULL);
    assert_string_equal(jsonw_strerror(JSONW_E_UTF8), "string is not valid UTF-8");
}

/* What p11-kit would drop (a space) or keep raw (UTF-8, quotes): found,
 * and encoded as %XX, the rest of the URI left as it is; a label encoded
 * as a URI value; cut short, never past the buffer. */
/* util_uri_pin_source: the PIN source p11-kit reads (each value here is
 * what p11-kit 0.24's p11_kit_uri_get_pin_source gives, but for a raw
 * space within a value, kept), or the refusal of one it refuses. */
static void test_uri_pin_source(void **state)
{
    static const struct {
        const char *uri;
        int rc;
        const char *value;
    } cases[] = {
        {"pkcs11:token=a?pin-source=file:/p", 1, "file:/p"},
        {"pkcs11:pin-source=/p;token=a", 1, "/p"},
        {"pkcs11:token=a;pinfile=/p", 1, "/p"},
        /* the last of two, path or query, either name */
        {"pkcs11:token=a;pin-source=/p?pin-source=/q", 1, "/q"},
        {"pkcs11:token=a?pin-source=/p&pinfile=/q&module-name=m", 1, "/q"},
        {"pkcs11:token=a;pinfile=/p;object=o?pin-source=/q&x=y", 1, "/q"},
        /* white space (not a tab) dropped in the scheme and the names, the
         * scheme in any case: groupmail read none of these */
        {" pkcs11: token=a ; pin-source = /p", 1, "/p"},
        {"pkcs11:token=a? pin-source=/p", 1, "/p"},
        {"pkcs11:token=a?pin-\nsource=/p", 1, "/p"},
        {"PKCS11:pin-source=/p", 1, "/p"},
        {"Pkcs11:token=a?pinfile=/p", 1, "/p"},
        /* a value's %XX decoded, ';', '?' and '=' in a query value kept, white
         * space at its ends dropped, within kept (groupmail's reading) */
        {"pkcs11:token=a?pin-source=file:/My%20PINs/p%3bq", 1, "file:/My PINs/p;q"},
        {"pkcs11:token=a?pin-source=/x;y?z=w", 1, "/x;y?z=w"},
        {"pkcs11:token=a?pin-source= /my pins/p ", 1, "/my pins/p"},
        {"pkcs11:token=a?pin-source=", 1, ""},
        {"pkcs11:token=a;;pin-source=/p", 1, "/p"},
        /* none: a label or a query value holding the text, no scheme */
        {"pkcs11:object=a:pin-source=b;type=private", 0, NULL},
        {"pkcs11:object=a&pin-source=b", 0, NULL},
        {"pkcs11:object=k?module-name=a;pin-source=b", 0, NULL},
        {"pkcs11:object=k?module-name=a?pin-source=b", 0, NULL},
        {"pkcs11:token=a%3bpin-source=/x", 0, NULL},
        {"pkcs11:object=%70in-source=x", 0, NULL},
        {"pkcs11:object=k?pin-value=1", 0, NULL},
        {"pkcs11:token=a?pin-\tsource=/p", 0, NULL},
        {"pin-source=/p", 0, NULL},
        {"\tpkcs11:pin-source=/p", 0, NULL},
        {"pkcs11:token=a", 0, NULL},
        /* refused: p11-kit refuses the URI (a name in another case; a bad
         * %XX even in an earlier one) or cuts the value short (%00) */
        {"pkcs11:token=a?PIN-SOURCE=/p", UTIL_E_FORMAT, NULL},
        {"pkcs11:token=a;PinFile=/p", UTIL_E_FORMAT, NULL},
        {"pkcs11:token=a?pin-source=/p&Pin-Source=/q", UTIL_E_FORMAT, NULL},
        {"pkcs11:token=a?pin-source=%4", UTIL_E_FORMAT, NULL},
        {"pkcs11:token=a?pin-source=/%zz&pin-source=/q", UTIL_E_FORMAT, NULL},
        {"pkcs11:token=a?pin-source=/x%00y", UTIL_E_FORMAT, NULL},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *v = (char *)"unset";
        int rc = util_uri_pin_source(cases[i].uri, &v);
        if (rc != cases[i].rc || (cases[i].value == NULL ? v != NULL : v == NULL || strcmp(v, cases[i].value) != 0))
            fail_msg("%s: %d [%s], wanted %d [%s]", cases[i].uri, rc, v != NULL ? v : "(none)", cases[i].rc,
                     cases[i].value != NULL ? cases[i].value : "(none)");
        free(v);
        assert_int_equal(util_uri_pin_source(cases[i].uri, NULL), cases[i].rc);
        assert_int_equal(util_uri_has_pin_source(cases[i].uri), cases[i].rc != 0);
    }
    assert_int_equal(util_uri_pin_source(NULL, NULL), 0);
}

static void test_uri_escape_loose(void **state)
{
    char out[64];
    (void)state;

    assert_false(util_uri_needs_escape("pkcs11:token=grp%20tok;object=a%3Bb;type=private", 1));
    assert_false(util_uri_needs_escape(NULL, 1));
    /* p11-kit drops the space: still a PIN, refused before any message
     * that shows the URI encoded. */
    assert_true(util_uri_has_pin_value("pkcs11:object=k?pin -value=1234"));
    assert_true(util_uri_has_pin_value("pkcs11:object=k; PIN-VALUE=1234"));
    assert_false(util_uri_has_pin_value("pkcs11:object=pin-valued"));
    assert_true(util_uri_has_pin_source("pkcs11:object=k?pin-source=file:/p"));
    assert_true(util_uri_has_pin_source("pkcs11:object=k;PIN -Source=/p"));
    assert_false(util_uri_has_pin_source("pkcs11:object=pin-sources"));
    assert_false(util_uri_has_pin_source("pkcs11:object=k?pin-value=1"));
    /* p11-kit's older name for it, which it reads the same */
    assert_true(util_uri_has_pin_source("pkcs11:object=k;type=private?pinfile=file:/p"));
    assert_true(util_uri_has_pin_source("pkcs11:object=k;pinfile=/p"));
    assert_true(util_uri_has_pin_source("pkcs11:pin-source=/p"));
    assert_true(util_uri_has_pin_source(" PKCS11 : object=k ? x=1 & pin-source=/p"));
    assert_true(util_uri_has_pin_source("pkcs11:object=k;pin-source=/a?pin-source=/b"));
    /* a label or a query value holding the text: p11-kit reads no PIN
     * source there (object= is "a:pin-source=b"), so neither is refused */
    assert_false(util_uri_has_pin_source("pkcs11:object=a:pin-source=b;type=private"));
    assert_false(util_uri_has_pin_source("pkcs11:object=a&pin-source=b"));
    assert_false(util_uri_has_pin_source("pkcs11:token=t:pinfile=b;object=k"));
    assert_false(util_uri_has_pin_source("pkcs11:object=k?module-name=a;pin-source=b"));
    assert_false(util_uri_has_pin_source("pkcs11:object=k?module-name=a?pin-source=b"));
    assert_false(util_uri_has_pin_source("pkcs11:object=pin-source=x"));
    assert_false(util_uri_has_pin_source("pkcs11:object=%70in-source=x"));
    assert_false(util_uri_has_pin_source("pin-source=/p"));
    /* ... while a pin-value written so is still taken for one (never shown) */
    assert_true(util_uri_has_pin_value("pkcs11:object=a:pin-value=1234"));
    assert_true(util_uri_needs_escape("pkcs11:object=eng key", 0));
    assert_true(util_uri_needs_escape("pkcs11:object=eng\tkey", 0));
    assert_false(util_uri_needs_escape("pkcs11:object=Gr\xc3\xbcn", 0));
    assert_true(util_uri_needs_escape("pkcs11:object=Gr\xc3\xbcn", 1));
    assert_true(util_uri_needs_escape("pkcs11:object=a|b", 1));
    /* The query names no token or key: a pin-source path with a space (read
     * as written) or a module-path with one is no refusal; with strict
     * (a URI the database records) it is. */
    assert_false(util_uri_needs_escape("pkcs11:object=k?pin-source=file:/my pins/pin", 0));
    assert_false(util_uri_needs_escape("pkcs11:token=t?module-path=/opt/My HSM/x.so", 0));
    assert_true(util_uri_needs_escape("pkcs11:object=k ey?pin-source=file:/pin", 0));
    assert_true(util_uri_needs_escape("pkcs11:object=k?pin-source=file:/my pins/pin", 1));
    /* A value's %XX decoded, a space kept; %00 and a stray '%' as written. */
    char *v = util_uri_value_decode("file:/My%20PINs/p%c3%a9 n%00%4%zz%", 34);
    assert_non_null(v);
    assert_string_equal(v, "file:/My PINs/p\xc3\xa9 n%00%4%zz%");
    free(v);
    assert_non_null(v = util_uri_value_decode("a%41&b", 4));
    assert_string_equal(v, "aA");
    free(v);
    assert_string_equal(util_uri_escape_loose("pkcs11:object=Gr\xc3\xbcn \"x\";type=private", out, sizeof(out)),
                        "pkcs11:object=Gr%C3%BCn%20%22x%22;type=private");
    assert_string_equal(util_uri_escape_loose("pkcs11:object=a b c d e f", out, 20), "pkcs11:object=a...");
    /* A label as a URI value: all but unreserved bytes encoded. */
    assert_string_equal(util_uri_escape_value("alice's card;/%?\xc3\xa9-._~", out, sizeof(out)),
                        "alice%27s%20card%3B%2F%25%3F%C3%A9-._~");
    assert_string_equal(util_uri_escape_value("a b", out, 6), "a%20b");
    assert_string_equal(util_uri_escape_value("a b", out, 4), "a");
    /* An object's label: ':' kept, what would end the attribute, the
     * shell's quotes or a %XX encoded. */
    assert_string_equal(util_uri_escape_label("gs:group:eng:v1", out, sizeof(out)), "gs:group:eng:v1");
    assert_string_equal(util_uri_escape_label("gs:group:eng:v1;type=secret-key x'%", out, sizeof(out)),
                        "gs:group:eng:v1%3Btype%3Dsecret-key%20x%27%25");
    assert_string_equal(util_uri_escape_loose("pkcs11:object=\xff\xff\xff\xff\xff\xff", out, 24),
                        "pkcs11:object=%FF%FF...");
}

/* In a child with standard input, output and error closed:
 * util_sanitise_stdfd puts /dev/null there, input write-only and output
 * read-only (a read or write fails as on a closed descriptor), error
 * writable; the next file opened is above 2. */
static void test_sanitise_stdfd(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct stat st, nul;
        int bad = 0, fd;
        close(STDIN_FILENO);
        close(STDOUT_FILENO);
        close(STDERR_FILENO);
        if (util_sanitise_stdfd() != UTIL_OK)
            _exit(10);
        if (stat("/dev/null", &nul) != 0)
            _exit(11);
        for (int i = 0; i <= 2; i++)
            if (fstat(i, &st) != 0 || st.st_rdev != nul.st_rdev || !S_ISCHR(st.st_mode))
                bad = 12 + i;
        if (bad)
            _exit(bad);
        if ((fcntl(STDOUT_FILENO, F_GETFL) & O_ACCMODE) != O_RDONLY || write(STDOUT_FILENO, "x", 1) != -1 ||
            errno != EBADF)
            _exit(15);
        if (write(STDERR_FILENO, "x", 1) != 1)
            _exit(16);
        char c;
        if ((fcntl(STDIN_FILENO, F_GETFL) & O_ACCMODE) != O_WRONLY || read(STDIN_FILENO, &c, 1) != -1 ||
            errno != EBADF)
            _exit(19);
        if ((fd = open("/dev/null", O_RDONLY)) <= STDERR_FILENO)
            _exit(17);
        close(fd);
        /* open ones are left as they are, a second call changes nothing */
        _exit(util_sanitise_stdfd() == UTIL_OK && fcntl(STDOUT_FILENO, F_GETFL) >= 0 ? 0 : 18);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* util_out_take_back removes the file util_out_commit put in place, and
 * nothing else: not a file someone renamed over it since, not a stream. */
static void test_out_take_back(void **state)
{
    (void)state;
    char dir[] = "/tmp/gs-out-XXXXXX", path[64], other[64];
    util_out_written w;
    struct stat st;

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/t.pem", dir);
    snprintf(other, sizeof(other), "%s/other", dir);
    assert_int_equal(util_out_write(path, "one\n", 4, 0600, 0, &w), UTIL_OUT_OK);
    assert_int_equal(w.kind, UTIL_OUT_FILE);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    /* another file in its place since: kept */
    assert_int_equal(util_write_file_atomic(other, "two\n", 4, 0644), UTIL_OK);
    assert_int_equal(rename(other, path), 0);
    util_out_take_back(path, &w);
    assert_int_equal(stat(path, &st), 0);
    /* the file written: removed */
    assert_int_equal(util_out_write(path, "three\n", 6, 0600, 0, &w), UTIL_OUT_OK);
    util_out_take_back(path, &w);
    assert_int_not_equal(stat(path, &st), 0);
    /* a stream (here /dev/null): written, never removed */
    assert_int_equal(util_out_write("/dev/null", "x", 1, 0600, 0, &w), UTIL_OUT_OK);
    assert_int_equal(w.kind, UTIL_OUT_STREAM);
    util_out_take_back("/dev/null", &w);
    assert_int_equal(stat("/dev/null", &st), 0);
    assert_true(S_ISCHR(st.st_mode));
    assert_int_equal(rmdir(dir), 0);
}

/* A socket at the --out name is neither written nor renamed over. */
static void test_out_refuses_socket(void **state)
{
    (void)state;
    char dir[] = "/tmp/gs-out-XXXXXX";
    struct sockaddr_un sa;
    struct stat st;
    int s = socket(AF_UNIX, SOCK_STREAM, 0);

    assert_true(s >= 0);
    assert_non_null(mkdtemp(dir));
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/sock", dir);
    assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(util_out_write(sa.sun_path, "x", 1, 0600, 0, NULL), UTIL_OUT_E_ARGS);
    assert_int_equal(stat(sa.sun_path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    close(s);
    assert_int_equal(unlink(sa.sun_path), 0);
    assert_int_equal(rmdir(dir), 0);
}

/* In a child with standard input and output closed: every name of
 * descriptor 1 (/proc/thread-self/fd/1 too) is standard output, whose
 * read-only stand-in fails the write, never the stand-in opened anew;
 * /dev/stdin names a closed standard input (refused); /dev/null is
 * written. */
static void test_out_closed_std(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        static const char *const names[] = {"/dev/stdout", "/dev/fd/1", "/proc/self/fd/1", "/proc/thread-self/fd/1"};
        util_out_written w;
        char task[64];

        close(STDIN_FILENO);
        close(STDOUT_FILENO);
        if (util_sanitise_stdfd() != UTIL_OK)
            _exit(10);
        for (size_t i = 0; i < GS_ARRAY_LEN(names); i++)
            if (util_out_write(names[i], "x", 1, 0600, 0, &w) != UTIL_OUT_E_WRITE || w.kind != UTIL_OUT_STDOUT)
                _exit(11 + (int)i);
        snprintf(task, sizeof(task), "/proc/%ld/task/%ld/fd/1", (long)getpid(), (long)getpid());
        if (util_out_write(task, "x", 1, 0600, 0, NULL) != UTIL_OUT_E_WRITE)
            _exit(16);
        if (util_out_write("/dev/stdin", "x", 1, 0600, 0, NULL) != UTIL_OUT_E_CLOSED)
            _exit(17);
        _exit(util_out_write("/dev/null", "x", 1, 0600, 0, NULL) == UTIL_OUT_OK ? 0 : 18);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* Runs util_out_write(path) in a child that SIGALRM ends after 10 s
 * and returns what it returned (or -100 when it hung or died). */
static int out_write_in_child(const char *path)
{
    int status = 0;
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(10);
        _exit(-util_out_write(path, "secret\n", 7, 0600, UTIL_OUT_MEMORY, NULL));
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? -WEXITSTATUS(status) : -100;
}

/* Another user's named pipe in a sticky directory anyone can write, with
 * no reader: refused at once. It was opened for writing first and only
 * then looked at, so the command (as root: a secret in hand, a key made
 * on the token) waited in open until the pipe's owner chose to read it.
 * Root only: the pipe must be someone else's. */
static void test_out_foreign_pipe_not_opened(void **state)
{
    (void)state;
    char dir[] = "/tmp/gs-out-XXXXXX", fifo[64];

    if (geteuid() != 0)
        skip();
    assert_non_null(mkdtemp(dir));
    assert_int_equal(chmod(dir, 01777), 0);
    snprintf(fifo, sizeof(fifo), "%s/msg.txt", dir);
    assert_int_equal(mkfifo(fifo, 0666), 0);
    assert_int_equal(chown(fifo, 65534, 65534), 0);
    assert_int_equal(out_write_in_child(fifo), UTIL_OUT_E_FOREIGN);
    assert_int_equal(unlink(fifo), 0);
    assert_int_equal(rmdir(dir), 0);
}

/* Another user's named pipe in a directory others can write that is not
 * sticky (a team's shared directory, 0777 or 0770), its reader waiting:
 * refused as in a sticky one. The sticky bit only keeps others from
 * renaming entries; without it anyone who can write the directory can put
 * their pipe at the name, and the secret (a 0600 file's content, as a
 * rename over the name had kept it) went to their reader. Root only. */
static void test_out_foreign_pipe_any_shared_dir(void **state)
{
    (void)state;
    static const mode_t modes[] = {0777, 0770};
    char dir[] = "/tmp/gs-out-XXXXXX", fifo[64];

    if (geteuid() != 0)
        skip();
    assert_non_null(mkdtemp(dir));
    snprintf(fifo, sizeof(fifo), "%s/msg.txt", dir);
    for (size_t i = 0; i < GS_ARRAY_LEN(modes); i++) {
        char got[16] = "";
        ssize_t n;
        int rfd;

        assert_int_equal(chmod(dir, modes[i]), 0);
        assert_int_equal(mkfifo(fifo, 0666), 0);
        assert_int_equal(chown(fifo, 65534, 65534), 0);
        assert_true((rfd = open(fifo, O_RDONLY | O_NONBLOCK)) >= 0); /* the other user's reader */
        assert_int_equal(out_write_in_child(fifo), UTIL_OUT_E_FOREIGN);
        n = read(rfd, got, sizeof(got));
        assert_true(n <= 0);
        close(rfd);
        assert_int_equal(unlink(fifo), 0);
    }
    /* one's own pipe there is written */
    assert_int_equal(mkfifo(fifo, 0600), 0);
    {
        int rfd = open(fifo, O_RDONLY | O_NONBLOCK);
        char got[16] = "";

        assert_true(rfd >= 0);
        assert_int_equal(out_write_in_child(fifo), UTIL_OUT_OK);
        assert_int_equal(read(rfd, got, sizeof(got)), 7);
        close(rfd);
    }
    assert_int_equal(unlink(fifo), 0);
    assert_int_equal(rmdir(dir), 0);
}

/* A pipe given on a descriptor other than 0-2 (the shell's `--out
 * >(cmd)`, which passes /dev/fd/63) is written: it was refused as another
 * user's pipe, its name resolving to none (pipe:[N]). */
static void test_out_own_pipe_descriptor(void **state)
{
    (void)state;
    static const char *const dirs[] = {"/dev/fd", "/proc/self/fd"};

    for (size_t i = 0; i < GS_ARRAY_LEN(dirs); i++) {
        char path[64], got[16] = "";
        util_out_written w;
        int p[2];

        assert_int_equal(pipe(p), 0);
        snprintf(path, sizeof(path), "%s/%d", dirs[i], p[1]);
        assert_int_equal(util_out_write(path, "secret\n", 7, 0600, UTIL_OUT_MEMORY, &w), UTIL_OUT_OK);
        assert_int_equal(w.kind, UTIL_OUT_STREAM);
        close(p[1]);
        assert_int_equal(read(p[0], got, sizeof(got)), 7);
        assert_memory_equal(got, "secret\n", 7);
        close(p[0]);
    }
    /* "01" is no name in /proc (no leading zero): not standard output */
    assert_int_equal(util_out_write("/dev/fd/01", "", 0, 0600, 0, NULL), UTIL_OUT_E_CREATE);
}

/* Is pid blocked in the open for writing of open_stream (openat with
 * O_WRONLY, not the O_PATH one before it)? From /proc/PID/syscall:
 * "NR dirfd path flags ..." while it sleeps in a system call. */
static bool blocked_in_write_open(pid_t pid)
{
    char name[64], line[256];
    unsigned long nr, dirfd, pathp, flags;
    FILE *f;
    bool yes = false;

    snprintf(name, sizeof(name), "/proc/%d/syscall", (int)pid);
    if ((f = fopen(name, "r")) == NULL)
        return false;
    if (fgets(line, sizeof(line), f) != NULL && sscanf(line, "%lu %lx %lx %lx", &nr, &dirfd, &pathp, &flags) == 4)
        yes = nr == SYS_openat && (flags & O_ACCMODE) == O_WRONLY && !(flags & O_PATH);
    fclose(f);
    return yes;
}

/* The reader of one's own named pipe removes it once it has it open
 * (`{ rm p; cat; } < p`, `exec 3<p; rm p`): the output is written. The
 * pipe was looked at again by name after the open for writing, found
 * gone (no name to resolve: "unknown"), and refused as another user's
 * pipe, the reader getting nothing. The open through /proc/self/fd is of
 * the very pipe already checked; only the open by name (no /proc) needs
 * the look after. The child is let go only once it waits in that open,
 * read from /proc/PID/syscall: no sleep that races. */
static void test_out_own_pipe_removed_by_reader(void **state)
{
    (void)state;
    char dir[] = "/tmp/gs-out-XXXXXX", fifo[64], proc[64], got[16] = "";
    int pfd, rfd, status = 0;
    pid_t pid;

    assert_non_null(mkdtemp(dir));
    snprintf(fifo, sizeof(fifo), "%s/key.pipe", dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_true((pfd = open(fifo, O_PATH | O_CLOEXEC)) >= 0);
    assert_true((pid = fork()) >= 0);
    if (pid == 0) {
        alarm(10);
        _exit(-util_out_write(fifo, "secret\n", 7, 0600, UTIL_OUT_MEMORY, NULL));
    }
    for (int i = 0; i < 10000 && !blocked_in_write_open(pid); i++)
        usleep(1000);
    assert_true(blocked_in_write_open(pid));
    /* the reader: opens the pipe, then removes its name */
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", pfd);
    assert_int_equal(unlink(fifo), 0);
    assert_true((rfd = open(proc, O_RDONLY | O_NONBLOCK)) >= 0);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(-WEXITSTATUS(status), UTIL_OUT_OK);
    assert_int_equal(read(rfd, got, sizeof(got)), 7);
    assert_memory_equal(got, "secret\n", 7);
    close(rfd);
    close(pfd);
    assert_int_equal(rmdir(dir), 0);
}

/* Opens of path inotify saw (IN_OPEN) since wd was added on fd. */
static int inotify_opens(int fd)
{
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    int opens = 0;
    ssize_t n;

    while ((n = read(fd, buf, sizeof(buf))) > 0)
        for (char *p = buf; p < buf + n; p += sizeof(struct inotify_event) + ((struct inotify_event *)p)->len)
            opens += (((struct inotify_event *)p)->mask & IN_OPEN) != 0;
    return opens;
}

/* util_file_attrs (audit rotate, serve's start) reads chattr attributes
 * of a regular file or a directory and opens nothing else: opening is
 * itself an act on a FIFO (a writer waiting for a reader goes on, then
 * finds none: SIGPIPE) or a device (a tape rewinds at close; a tty
 * without O_NOCTTY becomes a session leader's controlling terminal),
 * which audit.c's open_regular checks the type first for. It opened any
 * path O_RDONLY. A link to a file is not followed; to a directory it is
 * (dir). */
/* util_pin_source_path: the one reading of the PIN source syntax that
 * the reader, the refusal records and check's [server] user row share. */
static void test_pin_source_path(void **state)
{
    (void)state;
    assert_null(util_pin_source_path(NULL));
    assert_null(util_pin_source_path("env:GS_PIN"));
    assert_string_equal(util_pin_source_path("file:/etc/groupsrv/pin"), "/etc/groupsrv/pin");
    assert_string_equal(util_pin_source_path("/etc/groupsrv/pin"), "/etc/groupsrv/pin");
    assert_string_equal(util_pin_source_path("file:"), "");
}

static void test_file_attrs_opens_only_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/gs-attrs-XXXXXX", fifo[64], file[64], flink[64], dlink[64];
    const char *tty;
    int in, ptm, wd, fl;

    assert_non_null(mkdtemp(dir));
    snprintf(fifo, sizeof(fifo), "%s/fifo", dir);
    snprintf(file, sizeof(file), "%s/audit.jsonl", dir);
    snprintf(flink, sizeof(flink), "%s/link", dir);
    snprintf(dlink, sizeof(dlink), "%s/dlink", dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_int_equal(util_write_file_atomic(file, "x\n", 2, 0600), UTIL_OK);
    assert_int_equal(symlink(file, flink), 0);
    assert_int_equal(symlink(dir, dlink), 0);
    assert_true((ptm = posix_openpt(O_RDWR | O_NOCTTY)) >= 0);
    assert_int_equal(grantpt(ptm), 0);
    assert_int_equal(unlockpt(ptm), 0);
    assert_non_null(tty = ptsname(ptm));
    assert_true((in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) >= 0);
    assert_true((wd = inotify_add_watch(in, fifo, IN_OPEN)) >= 0);
    assert_int_equal(util_file_attrs(fifo, 0), 0);
    assert_int_equal(util_file_attrs(fifo, 1), 0);
    assert_int_equal(inotify_opens(in), 0);
    assert_int_equal(inotify_rm_watch(in, wd), 0);
    (void)inotify_opens(in); /* IN_IGNORED */
    assert_true((wd = inotify_add_watch(in, tty, IN_OPEN)) >= 0);
    assert_int_equal(util_file_attrs(tty, 0), 0);
    assert_int_equal(inotify_opens(in), 0);
    assert_int_equal(inotify_rm_watch(in, wd), 0);
    (void)inotify_opens(in);
    /* the file and the directory are read, through a link only for the
     * directory (root only: setting +a takes CAP_LINUX_IMMUTABLE, and a
     * file system may have no attributes) */
    if (geteuid() == 0) {
        int fd = open(file, O_RDONLY | O_CLOEXEC), dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(fd >= 0 && dfd >= 0);
        fl = FS_APPEND_FL;
        if (ioctl(fd, FS_IOC_SETFLAGS, &fl) == 0) {
            assert_int_equal(util_file_attrs(file, 0), UTIL_ATTR_APPEND);
            assert_int_equal(util_file_attrs(flink, 0), 0);
            fl = 0;
            assert_int_equal(ioctl(fd, FS_IOC_SETFLAGS, &fl), 0);
            fl = FS_IMMUTABLE_FL;
            assert_int_equal(ioctl(dfd, FS_IOC_SETFLAGS, &fl), 0);
            assert_int_equal(util_file_attrs(dlink, 1), UTIL_ATTR_IMMUTABLE);
            assert_int_equal(util_file_attrs(dir, 1), UTIL_ATTR_IMMUTABLE);
            assert_int_equal(util_file_attrs(file, 1), 0); /* not a directory */
            fl = 0;
            assert_int_equal(ioctl(dfd, FS_IOC_SETFLAGS, &fl), 0);
        }
        close(fd);
        close(dfd);
    }
    assert_int_equal(util_file_attrs(file, 0), 0);
    assert_int_equal(util_file_attrs(dir, 1), 0);
    close(in);
    close(ptm);
    assert_int_equal(unlink(dlink), 0);
    assert_int_equal(unlink(flink), 0);
    assert_int_equal(unlink(file), 0);
    assert_int_equal(unlink(fifo), 0);
    assert_int_equal(rmdir(dir), 0);
}

/* In a child whose descriptor table is full, util_close_all_but(), as
 * serve's children call it after fork, still closes every descriptor but
 * stderr's and the kept ones: it opened /proc/self/fd to list them, which
 * needs a descriptor of its own (and /proc), so the key holder forked
 * from a supervisor at its limit kept the listeners and the network
 * process's link ends. The child says by its exit status which one it
 * found open that it should not have (1 + fd), or 0. */
static void test_close_all_but_full_table(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct rlimit rl = {64, 64};
        int last = -1, keep[2];
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            _exit(200);
        for (int fd; (fd = dup(2)) >= 0;)
            last = fd;
        if (errno != EMFILE || last < 11)
            _exit(201);
        keep[0] = last; /* unsorted on purpose */
        keep[1] = 10;
        util_close_all_but(keep, 2);
        for (int fd = 3; fd < 64; fd++)
            if ((fcntl(fd, F_GETFD) >= 0) != (fd == 10 || fd == last))
                _exit(1 + fd);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uri_pin_source),
        cmocka_unit_test(test_uri_escape_loose),
        cmocka_unit_test(test_b64_roundtrip),
        cmocka_unit_test(test_b64_rejects),
        cmocka_unit_test(test_pin_source),
        cmocka_unit_test(test_pin_source_fifo),
        cmocka_unit_test(test_atomic_write_mode),
        cmocka_unit_test(test_atomic_killed_writer_leaves_nothing),
        cmocka_unit_test(test_read_fd_cap),
        cmocka_unit_test(test_parse_numbers),
        cmocka_unit_test(test_log_quote),
        cmocka_unit_test(test_log_one_line_per_record),
        cmocka_unit_test(test_jsonw_answers_equal_jansson),
        cmocka_unit_test(test_jsonw_escapes_like_jansson),
        cmocka_unit_test(test_jsonw_shape_and_bounds),
        cmocka_unit_test(test_url_host_is_loopback),
        cmocka_unit_test(test_auth_clear_rule),
        cmocka_unit_test(test_sanitise_stdfd),
        cmocka_unit_test(test_out_take_back),
        cmocka_unit_test(test_out_refuses_socket),
        cmocka_unit_test(test_out_closed_std),
        cmocka_unit_test(test_out_foreign_pipe_not_opened),
        cmocka_unit_test(test_out_foreign_pipe_any_shared_dir),
        cmocka_unit_test(test_out_own_pipe_descriptor),
        cmocka_unit_test(test_out_own_pipe_removed_by_reader),
        cmocka_unit_test(test_file_attrs_opens_only_files),
        cmocka_unit_test(test_pin_source_path),
        cmocka_unit_test(test_mailaddr),
        cmocka_unit_test(test_mailfold_keeps_colon),
        cmocka_unit_test(test_close_all_but_full_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
