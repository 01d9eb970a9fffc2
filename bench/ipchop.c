/*
 * ipchop: what the hop between the network process and the key holder
 * costs by itself: two processes on a socketpair exchange an unwrap
 * request (one item, a 256-byte encrypted key, as groupsrv-net sends it)
 * and its answer (a 32-byte content key, as the key holder sends it),
 * encoded and decoded with groupsrv/ipc.c, each side waiting in poll(2) for
 * the other as the event loops do. No token, no TLS, no audit: the hop
 * alone.
 *
 *   ipchop [--count N] [--outstanding K] [--name NAME] [--header]
 *
 * Prints one CSV row (benchutil.h): ops = round trips, p50/p90/p99 = round
 * trip in ms (K = 1), cpu_s = CPU of both processes.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "benchutil.h"
#include "ipc.h"

#define PROG "ipchop"

static int send_all(int fd, const ipc_buf *b)
{
    size_t off = 0;
    while (off < b->len) {
        ssize_t n = write(fd, b->p + off, b->len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        off += (size_t)n;
    }
    return 0;
}

/* Waits in poll, reads what is there, returns the next whole frame decoded
 * (payload in *owned). 0, or -1 at end of stream. */
static int next_frame(int fd, struct evbuffer *in, ipc_msg *m, unsigned char **owned, size_t *olen)
{
    for (;;) {
        uint32_t type;
        uint64_t cookie;
        int rc = ipc_ev_next(in, &type, &cookie, owned, olen);
        if (rc == 1)
            return ipc_decode(type, cookie, *owned, *olen, m) == IPC_OK ? 0 : -1;
        if (rc < 0)
            return -1;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, -1) < 0 && errno != EINTR)
            return -1;
        unsigned char buf[65536];
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0)
            return -1;
        evbuffer_add(in, buf, (size_t)n);
    }
}

static void request(ipc_buf *b, uint64_t cookie)
{
    static const unsigned char ek[256] = {1};
    static const unsigned char spki[270] = {0x30}; /* an RSA-2048 SPKI's size; content unread here */
    ipc_begin(b, IPC_UNWRAP, cookie);
    ipc_put_str(b, IPC_T_REQUEST_ID, "0123456789abcdef");
    ipc_put_u32(b, IPC_T_CALLER, IPC_CALLER_IDENTITY);
    ipc_put_str(b, IPC_T_IDENTITY, "alice@bench.example");
    ipc_put_bytes(b, IPC_T_SPKI, spki, sizeof(spki));
    ipc_put_str(b, IPC_T_GROUP, "bench-rsa2048");
    ipc_nest_begin(b, IPC_T_ITEM);
    ipc_put_u32(b, IPC_T_DELIVER, IPC_DELIVER_TLS);
    ipc_put_u32(b, IPC_T_ALG, IPC_ALG_OAEP_SHA1);
    ipc_put_u32(b, IPC_T_KEY_VERSION, 1);
    ipc_put_u32(b, IPC_T_FLAGS, IPC_FLAG_FROM_RI);
    ipc_put_bytes(b, IPC_T_ENC_KEY, ek, sizeof(ek));
    ipc_nest_end(b);
    (void)ipc_end(b);
}

/* The key holder's side: answer every request until the link closes. */
static int echo(int fd)
{
    static const unsigned char cek[32] = {7};
    struct evbuffer *in = evbuffer_new();
    ipc_buf b;
    ipc_msg m;
    unsigned char *p;
    size_t len;

    ipc_buf_init(&b);
    while (next_frame(fd, in, &m, &p, &len) == 0) {
        ipc_begin(&b, m.type | IPC_REPLY, m.cookie);
        ipc_put_u32(&b, IPC_T_STATUS, 200);
        ipc_nest_begin(&b, IPC_T_RESULT);
        ipc_put_u32(&b, IPC_T_STATUS, 200);
        ipc_put_bytes(&b, IPC_T_KEY, cek, sizeof(cek));
        ipc_put_u32(&b, IPC_T_KEY_VERSION, 1);
        ipc_nest_end(&b);
        ipc_put_u64(&b, IPC_T_GEN, 1);
        ipc_payload_free(p, len);
        if (ipc_end(&b) != IPC_OK || send_all(fd, &b) != 0)
            break;
    }
    ipc_buf_free(&b);
    evbuffer_free(in);
    return 0;
}

int main(int argc, char **argv)
{
    uint64_t count = 100000, k = 1;
    const char *name = "ipc";
    bool header = false;
    int sv[2];

    for (int i = 1; i < argc; i++) {
        const char *op = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(op, "--header") == 0) {
            header = true;
            continue;
        }
        if (v == NULL)
            goto usage;
        i++;
        if (strcmp(op, "--count") == 0) {
            if (bench_arg_u64(PROG, op, v, 1, 100000000, &count) != 0)
                return 2;
        } else if (strcmp(op, "--outstanding") == 0) {
            if (bench_arg_u64(PROG, op, v, 1, 1024, &k) != 0)
                return 2;
        } else if (strcmp(op, "--name") == 0) {
            name = v;
        } else {
            goto usage;
        }
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return 1;
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        _exit(echo(sv[1]));
    }
    close(sv[1]);
    struct evbuffer *in = evbuffer_new();
    bench_lat *lat = bench_lat_new(count < 1000000 ? (size_t)count : 1000000);
    ipc_buf b;
    ipc_msg m;
    unsigned char *p;
    size_t len;
    uint64_t sent = 0, done = 0, errors = 0;
    uint64_t *t_sent = calloc((size_t)k, sizeof(uint64_t));
    ipc_buf_init(&b);
    double cpu0 = bench_cpu_seconds();
    uint64_t t0 = bench_now_ns();
    while (done < count) {
        while (sent < count && sent - done < k) {
            request(&b, sent);
            t_sent[sent % k] = bench_now_ns();
            if (send_all(sv[0], &b) != 0)
                goto out;
            sent++;
        }
        if (next_frame(sv[0], in, &m, &p, &len) != 0)
            goto out;
        if (ipc_u32(&m, IPC_T_STATUS, 0) != 200)
            errors++;
        if (k == 1)
            bench_lat_add(lat, (bench_now_ns() - t_sent[m.cookie % k]) / 1000);
        ipc_payload_free(p, len);
        done++;
    }
out:;
    double secs = (double)(bench_now_ns() - t0) / 1e9;
    double cpu = bench_cpu_seconds() - cpu0;
    close(sv[0]);
    int st;
    struct rusage ru;
    if (wait4(pid, &st, 0, &ru) == pid)
        cpu += (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
               (double)ru.ru_stime.tv_usec / 1e6;
    char variant[32];
    snprintf(variant, sizeof(variant), "outstanding-%llu", (unsigned long long)k);
    bench_result r = {.tool = PROG, .variant = variant, .key = name, .conc = (unsigned)k, .ops = done,
                      .errors = errors + (count - done), .seconds = secs, .cpu_s = cpu};
    bench_result_print(stdout, header, &r, lat);
    fprintf(stderr, PROG ": %.2f us of CPU per round trip (both processes)\n", done ? cpu * 1e6 / (double)done : 0);
    bench_lat_free(lat);
    ipc_buf_free(&b);
    evbuffer_free(in);
    free(t_sent);
    return done == count && errors == 0 ? 0 : 3;
usage:
    fprintf(stderr, "usage: " PROG " [--count N] [--outstanding K] [--name NAME] [--header]\n");
    return 2;
}
