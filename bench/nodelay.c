/*
 * nodelay.c: LD_PRELOAD diagnosis shim for `bench/run --diagnose`. Sets
 * TCP_NODELAY on every socket the process accepts, to measure how much of
 * the server's latency is Nagle's algorithm meeting the client's delayed
 * ACK (a response written as two TLS records, the second held back until
 * the first is acknowledged, up to 40 ms on Linux). Never used in
 * production; a server that needs it should set TCP_NODELAY itself.
 */
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <sys/socket.h>

typedef int (*accept4_fn)(int, struct sockaddr *, socklen_t *, int);

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);
int accept(int fd, struct sockaddr *addr, socklen_t *len);

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    static accept4_fn real;
    int s, one = 1;

    if (real == NULL) {
        /* POSIX allows this cast; there is no other way to get a function from dlsym. */
        *(void **)&real = dlsym(RTLD_NEXT, "accept4");
        if (real == NULL)
            return -1;
    }
    s = real(fd, addr, len, flags);
    if (s >= 0)
        (void)setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* not TCP: harmless failure */
    return s;
}

int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    return accept4(fd, addr, len, 0);
}
