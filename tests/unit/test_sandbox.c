/*
 * test_sandbox.c: the network process's seccomp filter
 * (groupsrv/server/sandbox.c), installed in a forked child that then
 * tries one call: what an event loop with TLS needs still works, and what
 * a compromised network process would want (a new descriptor for an open
 * socket, a socket of its own, executable memory, a signal to another
 * process, a file) ends the child with the filter's status (128 + SIGSYS)
 * or fails. server_keyholder shows the filter is on in the running
 * process (Seccomp: 2); this shows what it lets through.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "sandbox.h"

#define TRAPPED (128 + SIGSYS) /* sandbox.c's SIGSYS handler: _exit(128 + SIGSYS) */

enum try_kind {
    TRY_GETFL,
    TRY_SETFD,
    TRY_DUPFD,
    TRY_DUPFD_CLOEXEC,
    TRY_SOCKET,
    TRY_MMAP_EXEC,
    TRY_KILL_PARENT,
    TRY_OPEN,
};

/* The child's exit status after the filter and one call: 0 when the call
 * did what the loop expects (success, or EACCES for an open), 1 when it
 * failed otherwise, 2 when the filter could not be installed, TRAPPED when
 * the filter stopped it. */
static int run_filtered(enum try_kind kind)
{
    int st = 0;
    pid_t pid = fork();

    if (pid < 0)
        return -1;
    if (pid == 0) {
        char err[200];
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC), ok = 0;
        /* an unprivileged process needs no_new_privs to install a filter
         * (sandbox_drop sets it in the network process) */
        if (fd < 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || sandbox_seccomp(err, sizeof(err)) != 0)
            _exit(2);
        switch (kind) {
        case TRY_GETFL:
            ok = fcntl(fd, F_GETFL) >= 0;
            break;
        case TRY_SETFD:
            ok = fcntl(fd, F_SETFD, FD_CLOEXEC) == 0;
            break;
        case TRY_DUPFD:
            ok = fcntl(fd, F_DUPFD, 0) >= 0;
            break;
        case TRY_DUPFD_CLOEXEC:
            ok = fcntl(fd, F_DUPFD_CLOEXEC, 0) >= 0;
            break;
        case TRY_SOCKET:
            ok = socket(AF_INET, SOCK_STREAM, 0) >= 0;
            break;
        case TRY_MMAP_EXEC:
            ok = mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) != MAP_FAILED;
            break;
        case TRY_KILL_PARENT:
            ok = kill(getppid(), 0) == 0;
            break;
        case TRY_OPEN:
            ok = open("/etc/hostname", O_RDONLY) < 0 && errno == EACCES;
            break;
        }
        _exit(ok ? 0 : 1);
    }
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

static void test_loop_calls_allowed(void **state)
{
    (void)state;
    assert_int_equal(run_filtered(TRY_GETFL), 0);
    assert_int_equal(run_filtered(TRY_SETFD), 0);
}

/* A duplicate of a descriptor is never needed after start (core.c takes a
 * connection's socket over for the lingering close); refused as any call
 * the loop does not make. */
static void test_no_duplicates(void **state)
{
    (void)state;
    assert_int_equal(run_filtered(TRY_DUPFD_CLOEXEC), TRAPPED);
    assert_int_equal(run_filtered(TRY_DUPFD), TRAPPED);
}

static void test_compromise_refused(void **state)
{
    (void)state;
    assert_int_equal(run_filtered(TRY_SOCKET), TRAPPED);
    assert_int_equal(run_filtered(TRY_MMAP_EXEC), TRAPPED);
    assert_int_equal(run_filtered(TRY_KILL_PARENT), TRAPPED);
#ifndef GS_SANITIZER_BUILD
    /* a sanitizer build lets files be opened (its reports read them) */
    assert_int_equal(run_filtered(TRY_OPEN), 0);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loop_calls_allowed),
        cmocka_unit_test(test_no_duplicates),
        cmocka_unit_test(test_compromise_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
