/*
 * sandbox.c: privilege drop and the seccomp filter (sandbox.h).
 *
 * The filter is an allow list: the default traps, and the SIGSYS handler
 * writes which call it was and ends the process (the supervisor restarts
 * it), so a call this list forgot shows up in the log rather than as a
 * mystery. Arguments are checked where a call could do more than the loop
 * needs: memory never becomes executable, signals go only to this
 * process, ioctl is FIONREAD only, fcntl reads and changes flags only (no
 * duplicates), stat works on open descriptors only.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* setresuid, AT_EMPTY_PATH */
#endif
#include "sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <seccomp.h>

/* libseccomp's SCMP_A0..SCMP_A5 are compound literals that leave a
 * comparison's second datum to its zero default, which clang's -Wextra
 * (-Wmissing-field-initializers) reports at every rule; gcc does not. */
#ifdef __clang__
#pragma clang diagnostic ignored "-Wmissing-field-initializers"
#endif

int sandbox_drop(const char *user, char *errbuf, size_t errlen)
{
    struct rlimit nocore = {0, 0};

    errbuf[0] = '\0';
    if (geteuid() == 0 && user != NULL) {
        struct passwd *pw = getpwnam(user);
        if (pw == NULL) {
            snprintf(errbuf, errlen, "[server] user '%s' does not exist", user);
            return -1;
        }
        if (pw->pw_uid == 0) {
            snprintf(errbuf, errlen, "[server] user '%s' is root: the network process must not be", user);
            return -1;
        }
        gid_t gid = pw->pw_gid;
        uid_t uid = pw->pw_uid;
        if (setgroups(1, &gid) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0) {
            snprintf(errbuf, errlen, "cannot become user '%s': %s", user, strerror(errno));
            return -1;
        }
        if (setuid(0) == 0) { /* must be impossible now */
            snprintf(errbuf, errlen, "privileges could be regained after dropping them");
            return -1;
        }
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 ||
        setrlimit(RLIMIT_CORE, &nocore) != 0) {
        snprintf(errbuf, errlen, "cannot restrict the process: %s", strerror(errno));
        return -1;
    }
    return 0;
}

/* Async-signal-safe: names the forbidden call and ends the process. */
static void on_sigsys(int sig, siginfo_t *si, void *ctx)
{
    char msg[96] = "groupsrv-net: the sandbox stopped a forbidden system call nr=";
    size_t n = strlen(msg);
    int nr = si->si_syscall;
    char digits[12];
    int k = 0;
    (void)sig; (void)ctx;

    if (nr < 0)
        nr = 0;
    do
        digits[k++] = (char)('0' + nr % 10);
    while ((nr /= 10) > 0 && k < (int)sizeof(digits));
    while (k > 0 && n < sizeof(msg) - 2)
        msg[n++] = digits[--k];
    msg[n++] = '\n';
    (void)!write(STDERR_FILENO, msg, n);
    _exit(128 + SIGSYS);
}

#define ALLOW(call) seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(call), 0)
#define ALLOW1(call, a) seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(call), 1, a)

int sandbox_seccomp(char *errbuf, size_t errlen)
{
    static const char *const plain[] = {
        /* I/O on descriptors the process already has */
        "read", "write", "readv", "writev", "close", "recvfrom", "recvmsg", "sendto", "sendmsg", "accept", "accept4",
        "shutdown", "getsockopt", "setsockopt", "getsockname", "getpeername", "lseek",
        /* event loops */
        "epoll_wait", "epoll_pwait", "epoll_ctl", "poll", "ppoll", "select", "pselect6",
        /* threads already made, memory */
        "futex", "munmap", "mremap", "madvise", "brk", "sched_yield", "sched_getaffinity", "rseq",
        "set_robust_list", "get_robust_list",
        /* time, identity, randomness */
        "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time", "getpid",
        "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getrandom",
        /* signals and leaving */
        "rt_sigreturn", "rt_sigprocmask", "rt_sigaction", "sigaltstack", "restart_syscall", "exit", "exit_group",
    };
    scmp_filter_ctx ctx = NULL;
    struct sigaction sa;
    pid_t me = getpid();
    int rc = -1;

    errbuf[0] = '\0';
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    if (sigaction(SIGSYS, &sa, NULL) != 0 || (ctx = seccomp_init(SCMP_ACT_TRAP)) == NULL) {
        snprintf(errbuf, errlen, "cannot set up the seccomp filter");
        goto out;
    }
    /* Every thread gets the filter at once (they exist already). */
    if (seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1) != 0)
        goto fail;
    for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
        int nr = seccomp_syscall_resolve_name(plain[i]);
        if (nr == __NR_SCMP_ERROR)
            continue; /* not on this architecture */
        if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) != 0)
            goto fail;
    }
    /* Memory, never executable. */
    if (ALLOW1(mmap, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)) != 0 ||
        ALLOW1(mprotect, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)) != 0)
        goto fail;
    /* Signals to this process only (abort(), thread wake-ups). */
    if (ALLOW1(kill, SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)me)) != 0 ||
        ALLOW1(tgkill, SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)me)) != 0)
        goto fail;
    /* libevent asks how much a socket holds; sockets are made non-blocking
     * and close-on-exec. No F_DUPFD or F_DUPFD_CLOEXEC: the lingering close
     * takes a connection's socket over rather than duplicating it (core.c),
     * and each loop's duplicate of a listening socket is made before the
     * filter; a descriptor made after start comes only from accept or over
     * the control socket. */
#ifndef GS_SANITIZER_BUILD
    if (ALLOW1(ioctl, SCMP_A1(SCMP_CMP_EQ, FIONREAD)) != 0)
        goto fail;
#else
    if (ALLOW(ioctl) != 0) /* a sanitizer's report asks isatty() of its log file */
        goto fail;
#endif
    if (ALLOW1(fcntl, SCMP_A1(SCMP_CMP_EQ, F_GETFL)) != 0 ||
        ALLOW1(fcntl, SCMP_A1(SCMP_CMP_EQ, F_SETFL)) != 0 || ALLOW1(fcntl, SCMP_A1(SCMP_CMP_EQ, F_GETFD)) != 0 ||
        ALLOW1(fcntl, SCMP_A1(SCMP_CMP_EQ, F_SETFD)) != 0)
        goto fail;
    /* fstat of open descriptors (stdio), never of a path. */
#ifndef GS_SANITIZER_BUILD
    if (ALLOW(fstat) != 0 || ALLOW1(newfstatat, SCMP_A3(SCMP_CMP_MASKED_EQ, AT_EMPTY_PATH, AT_EMPTY_PATH)) != 0 ||
        ALLOW1(statx, SCMP_A2(SCMP_CMP_MASKED_EQ, AT_EMPTY_PATH, AT_EMPTY_PATH)) != 0)
        goto fail;
#else
    if (ALLOW(fstat) != 0 || ALLOW(newfstatat) != 0 || ALLOW(statx) != 0)
        goto fail;
#endif
    /* getrlimit (no new limits). */
    if (ALLOW1(prlimit64, SCMP_A2(SCMP_CMP_EQ, 0)) != 0)
        goto fail;
#ifndef GS_SANITIZER_BUILD
    /* Files cannot be opened: libraries that look for one get an error. */
    const uint32_t no_files = SCMP_ACT_ERRNO(EACCES);
#else
    /* AddressSanitizer's leak check at exit reads /proc/self/maps and stops
     * the threads with ptrace from a helper it clones; a ThreadSanitizer
     * report is symbolized from the libraries' files (stat by path): allowed
     * in sanitizer builds only, never in a release build (the test of the
     * sandbox then checks the release build's filter). */
    const uint32_t no_files = SCMP_ACT_ALLOW;
    {
        static const char *const san[] = {"clone", "ptrace", "wait4", "waitid", "prctl", "getdents", "getdents64", "readlinkat",
                                          "sched_setaffinity", "dup", "dup2", "dup3", "pipe2", "stat", "lstat"};
        for (size_t i = 0; i < sizeof(san) / sizeof(san[0]); i++) {
            int nr = seccomp_syscall_resolve_name(san[i]);
            if (nr != __NR_SCMP_ERROR && seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) != 0)
                goto fail;
        }
    }
#endif
    static const char *const opens[] = {"openat", "open", "access", "faccessat", "faccessat2", "readlink"};
    for (size_t i = 0; i < sizeof(opens) / sizeof(opens[0]); i++) {
        int nr = seccomp_syscall_resolve_name(opens[i]);
        if (nr != __NR_SCMP_ERROR && seccomp_rule_add(ctx, no_files, nr, 0) != 0)
            goto fail;
    }
    if (seccomp_load(ctx) != 0)
        goto fail;
    rc = 0;
    goto out;
fail:
    snprintf(errbuf, errlen, "cannot install the seccomp filter");
out:
    seccomp_release(ctx);
    return rc;
}
