/*
 * fuzz_http: libFuzzer target for the network process's request handling
 * up to the key holder: evhttp's request line and headers, the route
 * table, path segments, JSON bodies, base64, RecipientInfos, CSRs, PEM
 * certificates, and the frames the handlers send to the key holder, which
 * is faked here (it answers whatever it is asked, or refuses, depending on
 * the input). The network code is the real one (core.c, api.c, certsrv.c,
 * gview.c, holder.c), compiled with GS_FUZZING: plain HTTP on a Unix
 * socket instead of TLS, and the peer named by the input.
 *
 * Input: byte 0 picks the peer (bits 0-1: 1 a member's identity
 * certificate, 2 a membership certificate, else none) and the listener
 * (bit 2: the certificate server, else the API); byte 1 how the fake
 * key holder answers (as asked, 403, 503, item failures); the rest is
 * what the client sends on one connection. Invariants checked: every
 * frame the network side sends decodes under its type's schema.
 *
 * Registered in tests/fuzz.cmake (tests/fuzz/README.md); the network
 * code comes from gs_net_fuzzing (tests/keyholder.cmake). Seeds in
 * tests/fuzz/corpus/http/, fixtures in tests/fuzz/http/. With
 * FUZZ_HTTP_SHOW set, the answers the server wrote are copied to stdout
 * (for reading what a seed or a crash input does).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/pem.h>

#include "fuzz.h"
#include "log.h"
#include "metrics.h"
#include "server.h"
#include "util.h"

extern const peer_info *(*srv_fuzz_peer)(void);

#ifndef GS_FUZZ_HTTP_DIR
#define GS_FUZZ_HTTP_DIR "tests/fuzz/http"
#endif

static const char config_text[] = "[server]\nthreads = 1\nunwrap_batch_max = 8\nmetrics = admin\n"
                                  "[hsm]\nmodule = /nonexistent.so\npin_source = /nonexistent\n"
                                  "[certsrv]\nlisten = 127.0.0.1:1\n";

static struct {
    struct gs_config *cfg;
    struct srv srv;
    char api_path[64], cert_path[64];
    int holder_fd;
    struct event *holder_ev;
    struct evbuffer *holder_in;
    X509 *group_cert, *member_cert, *membership_cert;
    peer_info peer;
    int mood;
} F;

static const peer_info *fuzz_peer(void) { return &F.peer; }

static X509 *load_cert(const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", GS_FUZZ_HTTP_DIR, name);
    FILE *f = fopen(path, "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f != NULL)
        fclose(f);
    if (x == NULL) {
        fprintf(stderr, "fuzz_http: cannot read %s\n", path);
        abort();
    }
    return x;
}

static void put_der(ipc_buf *b, enum ipc_tag tag, X509 *x)
{
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    if (n > 0)
        ipc_put_bytes(b, tag, der, (size_t)n);
    OPENSSL_free(der);
}

/* The fake key holder: every request it gets must be well-formed. */
static void answer(const ipc_msg *m, ipc_buf *b)
{
    static const unsigned char bytes[256] = {1, 2, 3, 4};
    uint32_t rt = m->type | IPC_REPLY;
    ipc_iter it;
    ipc_msg sub;

    ipc_begin(b, rt, m->cookie);
    if (F.mood == 1 && m->type != IPC_VIEW && m->type != IPC_INFO) {
        ipc_put_u32(b, IPC_T_STATUS, 403);
        ipc_put_str(b, IPC_T_CODE, "not_a_member");
        ipc_put_str(b, IPC_T_MESSAGE, "not a member of this group");
        return;
    }
    if (F.mood == 2) {
        ipc_put_u32(b, IPC_T_STATUS, 503);
        ipc_put_str(b, IPC_T_CODE, "token_unavailable");
        ipc_put_str(b, IPC_T_MESSAGE, "the key token is not reachable");
        ipc_put_u32(b, IPC_T_RETRY, 5);
        return;
    }
    ipc_put_u64(b, IPC_T_GEN, 7);
    switch (m->type) {
    case IPC_VIEW:
        ipc_put_u32(b, IPC_T_STATUS, 200);
        ipc_put_str(b, IPC_T_NAME, ipc_str(m, IPC_T_GROUP));
        ipc_put_str(b, IPC_T_ADDRESS, "eng@example.org");
        ipc_put_u32(b, IPC_T_METHODS, 15);
        ipc_nest_begin(b, IPC_T_KEYREF);
        ipc_put_u32(b, IPC_T_KEY_VERSION, 1);
        ipc_put_u32(b, IPC_T_FLAGS, IPC_FLAG_CURRENT);
        put_der(b, IPC_T_CERT, F.group_cert);
        ipc_nest_end(b);
        ipc_put_u32(b, IPC_T_SECRET_VERSION, 2);
        ipc_put_bytes(b, IPC_T_KEK_ID, bytes, 16);
        ipc_put_str(b, IPC_T_KEY_POLICY, "{\"rewrap\":\"token\",\"secret_keys\":\"token\",\"rejection_key\":\"none\","
                                         "\"weakenings\":[]}");
        ipc_put_u32(b, IPC_T_WRAP, 2);
        /* mood 3: the token could not say which key transports (left out) */
        if (F.mood != 3)
            ipc_put_u32(b, IPC_T_KEY_TRANSPORTS, IPC_KT_OAEP | IPC_KT_OAEP256 | IPC_KT_PKCS1V15);
        break;
    case IPC_UNWRAP:
    case IPC_REWRAP:
        ipc_put_u32(b, IPC_T_STATUS, 200);
        ipc_iter_init(&it, m, IPC_T_ITEM);
        while (ipc_iter_next(&it, NULL, &sub)) {
            ipc_nest_begin(b, IPC_T_RESULT);
            if (F.mood == 3) {
                ipc_put_u32(b, IPC_T_STATUS, 400);
                ipc_put_str(b, IPC_T_CODE, "unwrap_failed");
                ipc_put_str(b, IPC_T_MESSAGE, "the key could not be unwrapped");
            } else {
                ipc_put_u32(b, IPC_T_STATUS, 200);
                ipc_put_bytes(b, IPC_T_KEY, bytes, 32);
                ipc_put_bytes(b, IPC_T_WRAPPED, bytes, 40);
                ipc_put_bytes(b, IPC_T_KEK_ID, bytes, 16);
                ipc_put_u32(b, IPC_T_SECRET_VERSION, 2);
                ipc_put_u32(b, IPC_T_KEY_VERSION, ipc_u32(&sub, IPC_T_KEY_VERSION, 1));
            }
            ipc_nest_end(b);
        }
        if (m->type == IPC_REWRAP) {
            ipc_put_u32(b, IPC_T_KEY_VERSION, 1);
            ipc_put_bytes(b, IPC_T_DER, bytes, 100);
            ipc_put_str(b, IPC_T_EMAIL, "alice@example.org");
        }
        break;
    case IPC_SECRET_KEYS:
        ipc_put_u32(b, IPC_T_STATUS, 200);
        ipc_nest_begin(b, IPC_T_SECRET);
        ipc_put_u32(b, IPC_T_SECRET_VERSION, 2);
        ipc_put_bytes(b, IPC_T_KEK_ID, bytes, 16);
        ipc_put_bytes(b, IPC_T_WRAPPED, bytes, 256);
        ipc_nest_end(b);
        break;
    case IPC_CERTIFY:
        ipc_put_u32(b, IPC_T_STATUS, ipc_has(m, IPC_T_CSR_SPKI) ? 200 : 204);
        if (ipc_has(m, IPC_T_CSR_SPKI))
            put_der(b, IPC_T_CERT, F.membership_cert);
        break;
    case IPC_HEALTH:
        /* mood 3: the key holder cannot reach its database */
        ipc_put_u32(b, IPC_T_STATUS, F.mood == 3 ? 503 : 200);
        ipc_put_str(b, IPC_T_TOKEN_STATE, "ok");
        ipc_put_str(b, IPC_T_AUDIT_STATE, "ok");
        ipc_put_str(b, IPC_T_DB_STATE, F.mood == 3 ? "unavailable" : "ok");
        if (F.mood == 3)
            ipc_put_str(b, IPC_T_CODE, "db_unavailable");
        break;
    case IPC_STATS: {
        metrics_token t;
        unsigned char packed[METRICS_TOKEN_WORDS * 8];
        metrics_token_snapshot(&t);
        metrics_token_pack(&t, packed);
        ipc_put_u32(b, IPC_T_STATUS, 200);
        ipc_put_bytes(b, IPC_T_COUNTERS, packed, sizeof(packed));
        break;
    }
    case IPC_MEMBERS:
    case IPC_MEMBER_GET:
    case IPC_MEMBER_PUT:
        ipc_put_u32(b, IPC_T_STATUS, m->type == IPC_MEMBER_PUT ? 201 : 200);
        for (int i = 0; i < (m->type == IPC_MEMBERS ? 2 : 1); i++) {
            ipc_nest_begin(b, IPC_T_MEMBER);
            ipc_put_str(b, IPC_T_EMAIL, "alice@example.org");
            ipc_put_u32(b, IPC_T_ROLE, 1);
            ipc_put_u32(b, IPC_T_FLAGS, IPC_FLAG_HAS_CERT);
            ipc_put_u64(b, IPC_T_ADDED, 1);
            ipc_put_u32(b, IPC_T_WRAP, (uint32_t)i);
            put_der(b, IPC_T_CERT, F.member_cert);
            ipc_nest_end(b);
        }
        break;
    case IPC_MEMBER_DELETE:
        ipc_put_u32(b, IPC_T_STATUS, 200);
        ipc_put_u32(b, IPC_T_SECRET_VERSION, 3);
        ipc_put_u32(b, IPC_T_KEY_VERSION, 2);
        break;
    case IPC_GROUP_CREATE:
        ipc_put_u32(b, IPC_T_STATUS, 201);
        ipc_put_u32(b, IPC_T_KEY_VERSION, 1);
        break;
    case IPC_AUTHZ:
        ipc_put_u32(b, IPC_T_STATUS, 204);
        break;
    default:
        ipc_put_u32(b, IPC_T_STATUS, 200);
        break;
    }
}

static void holder_read(evutil_socket_t fd, short what, void *arg)
{
    unsigned char buf[65536];
    ssize_t n;
    (void)what; (void)arg;

    while ((n = read(fd, buf, sizeof(buf))) > 0)
        evbuffer_add(F.holder_in, buf, (size_t)n);
    for (;;) {
        uint32_t type;
        uint64_t cookie;
        unsigned char *payload;
        size_t len;
        ipc_msg m;
        ipc_buf b;
        int rc = ipc_ev_next(F.holder_in, &type, &cookie, &payload, &len);
        if (rc == 0)
            break;
        FUZZ_CHECK(rc == 1);
        /* What the network side sends must be what the schema allows. */
        FUZZ_CHECK(type >= IPC_VIEW && type < IPC_REQ_END);
        int drc = ipc_decode(type, cookie, payload, len, &m);
        if (drc != IPC_OK)
            printf("frame of type %u refused: %s\n", (unsigned)type, ipc_strerror(drc));
        FUZZ_CHECK(drc == IPC_OK);
        ipc_buf_init(&b);
        answer(&m, &b);
        FUZZ_CHECK(ipc_end(&b) == IPC_OK);
        FUZZ_CHECK(ipc_write_frame(fd, &b, -1, 5000) == IPC_OK);
        ipc_buf_free(&b);
        ipc_payload_free(payload, len);
    }
}

static int unix_listener(char *path, size_t cap, const char *tag)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0); /* as listen_on() makes them */

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    /* Abstract names: nothing to clean up. */
    snprintf(path, cap, "groupsrv-fuzz-%s-%ld", tag, (long)getpid());
    memcpy(sa.sun_path + 1, path, strlen(path));
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(path))) != 0 ||
        listen(fd, 64) != 0)
        abort();
    return fd;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    int sv[2];
    (void)argc; (void)argv;

    log_init("fuzz_http", LOG_LVL_ERROR, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (gs_config_load_string(config_text, "fuzz.conf", &F.cfg) != GS_OK)
        abort();
    F.group_cert = load_cert("group.pem");
    F.member_cert = load_cert("member.pem");
    F.membership_cert = load_cert("membership.pem");
    struct srv *s = &F.srv;
    s->cfg = F.cfg;
    s->nthreads = 1;
    s->max_body = 65536;
    s->timeout = 5;
    s->max_conns = 1024;
    s->listen_fd = unix_listener(F.api_path, sizeof(F.api_path), "api");
    s->certsrv_fd = unix_listener(F.cert_path, sizeof(F.cert_path), "cert");
    const struct srv_route *tables[] = {api_routes, certsrv_routes};
    const size_t counts[] = {api_nroutes, certsrv_nroutes};
    if (srv_routes_set(s, tables, counts, 2) != 0 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        abort();
    if (srv_threads_init(s, &sv[0]) != 0)
        abort();
    F.holder_fd = sv[1];
    fcntl(F.holder_fd, F_SETFL, O_NONBLOCK);
    F.holder_in = evbuffer_new();
    F.holder_ev = event_new(s->threads[0].base, F.holder_fd, EV_READ | EV_PERSIST, holder_read, NULL);
    if (F.holder_in == NULL || F.holder_ev == NULL || event_add(F.holder_ev, NULL) != 0)
        abort();
    srv_fuzz_peer = fuzz_peer;
    return 0;
}

static void spin(struct event_base *base, int times)
{
    for (int i = 0; i < times; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct event_base *base;
    struct sockaddr_un sa;
    size_t off = 0;
    int c, shut = 0;

    if (F.cfg == NULL)
        LLVMFuzzerInitialize(NULL, NULL);
    if (size < 2)
        return 0;
    base = F.srv.threads[0].base;
    memset(&F.peer, 0, sizeof(F.peer));
    switch (data[0] & 3) {
    case 1:
        F.peer.status = PEER_MEMBER_CERT;
        snprintf(F.peer.identity, sizeof(F.peer.identity), "alice@example.org");
        F.peer.cert = F.member_cert;
        break;
    case 2:
        F.peer.status = PEER_MEMBERSHIP;
        snprintf(F.peer.group, sizeof(F.peer.group), "eng");
        F.peer.cert = F.membership_cert;
        break;
    default:
        F.peer.status = PEER_NONE;
    }
    F.mood = data[1] % 4;
    const char *path = data[0] & 4 ? F.cert_path : F.api_path;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path + 1, path, strlen(path));
    if ((c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
        return 0;
    if (connect(c, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(path))) != 0) {
        close(c);
        return 0;
    }
    data += 2;
    size -= 2;
    /* Send, read what comes back, until the server closes (bounded). */
    for (int round = 0; round < 2000; round++) {
        if (off < size) {
            ssize_t n = write(c, data + off, size - off);
            if (n > 0)
                off += (size_t)n;
        } else if (!shut) {
            shutdown(c, SHUT_WR);
            shut = 1;
        }
        spin(base, 2);
        char buf[8192];
        ssize_t n = read(c, buf, sizeof(buf));
        if (n > 0 && getenv("FUZZ_HTTP_SHOW") != NULL)
            fwrite(buf, 1, (size_t)n, stdout);
        if (n == 0)
            break;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            break;
    }
    close(c);
    spin(base, 4);
    return 0;
}
