/*
 * sandbox.h: the network process's confinement (SECURITY.md, "Processes").
 * Owned by groupsrv/server/.
 *
 * In order, once everything the process needs is open (listening sockets
 * and links received, TLS material received, threads created):
 *   sandbox_drop:    the unprivileged [server] user when started as root;
 *                    no new privileges; not dumpable (no ptrace by the same
 *                    user, no /proc/PID/mem); no core files;
 *   sandbox_seccomp: a libseccomp filter on every thread: what an event
 *                    loop with TLS needs (read, write, accept, epoll,
 *                    futex, memory without PROT_EXEC, clocks, randomness,
 *                    descriptors passed over its sockets); no exec, no new
 *                    processes or threads, no sockets of its own, no
 *                    ptrace; opening a file fails with EACCES (SIGHUP
 *                    reload sends the files' contents over the control
 *                    socket instead). A forbidden call ends the process
 *                    with a one-line report on stderr naming the call.
 * Both return 0, or -1 with a one-line reason in errbuf.
 */
#ifndef GS_SRV_SANDBOX_H
#define GS_SRV_SANDBOX_H

#include <stddef.h>

int sandbox_drop(const char *user, char *errbuf, size_t errlen);
int sandbox_seccomp(char *errbuf, size_t errlen);

#endif
