/*
 * khdrive: drives the key holder directly, as a compromised network
 * process could: it forks keyholder_main (the same code `groupsrv serve`
 * forks) with two links and sends it malformed and hostile frames, each
 * of which must be refused with an answer (or, for a frame header that
 * cannot be trusted, by closing that link only), while the key holder
 * keeps serving good requests on the other link.
 *
 *   khdrive CONFIG RI.der MEMBER MEMBER-CERT.pem NON-MEMBER [MEMBER2 MEMBER2-CERT.pem]
 *
 * Beyond the frames themselves, it plays the compromised network process
 * of SECURITY.md ("What a compromised network process can and cannot
 * do"): admin operations, the exploder's rewrap and group creation
 * claimed for a plain member, secret keys and membership certificates for
 * a non-member, a membership certificate's holder acting beyond its one
 * use, and (with MEMBER2, whose config has a rate limit and a failed-unwrap
 * cap) the rate limit and the suspension, also under the identity spelt
 * in upper case (and spelt with U+0130 / U+212A: no member), and an
 * unwrap frame of more items than [server]
 * unwrap_batch_max (refused before it is queued). Each must be refused
 * by the key holder itself. And a
 * network process that floods a link and never reads the answers: the key
 * holder stops reading that link rather than hold the answers, and the
 * network process's synchronous call (holder.c) made meanwhile, behind
 * calls the full socket did not take, is still answered.
 *
 * Prints "ok: ..." per check; exit 0 when all passed, 1 otherwise.
 */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "config.h"
#include "envelope.h"
#include "holder.h"
#include "ipc.h"
#include "keyholder.h"
#include "log.h"
#include "names.h"
#include "ratelimit.h"
#include "util.h"

static int failed;

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        if (cond) {                                                                                                    \
            printf("ok: ");                                                                                            \
        } else {                                                                                                       \
            printf("FAIL: ");                                                                                          \
            failed = 1;                                                                                                \
        }                                                                                                              \
        printf(__VA_ARGS__);                                                                                           \
        printf("\n");                                                                                                  \
        fflush(stdout);                                                                                                \
    } while (0)

/* SIGTERM to the key holder under test, and its clean exit checked. */
static void stop_keyholder(pid_t pid)
{
    int st = 0;

    kill(pid, SIGTERM);
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the key holder stops cleanly on SIGTERM");
}

static int write_all(int fd, const void *p, size_t n)
{
    const unsigned char *c = p;
    while (n > 0) {
        ssize_t k = write(fd, c, n);
        if (k <= 0)
            return -1;
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Reads one answer frame (30 s at most): 0 with *m decoded (payload in
 * *owned, caller frees), 1 at end of stream, -1 on error. */
static int read_answer(int fd, ipc_reader *rd, ipc_msg *m, unsigned char **owned)
{
    for (;;) {
        const unsigned char *frame;
        size_t flen;
        int rc = ipc_reader_peek(rd, &frame, &flen);
        if (rc == 1) {
            uint32_t type, plen;
            uint64_t cookie;
            ipc_header(frame, &type, &plen, &cookie);
            *owned = malloc(plen + 1);
            memcpy(*owned, frame + IPC_HDR_LEN, plen);
            ipc_reader_consume(rd, flen);
            return ipc_decode(type, cookie, *owned, plen, m) == IPC_OK ? 0 : -1;
        }
        if (rc < 0)
            return -1;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 30000) <= 0)
            return -1;
        rc = ipc_reader_fill(rd, fd);
        if (rc == IPC_E_CLOSED)
            return 1;
        if (rc != IPC_OK)
            return -1;
    }
}

/* Sends raw frame bytes and expects an answer with the status (and code). */
static void expect(int fd, ipc_reader *rd, const void *frame, size_t len, uint32_t want_type, uint32_t want_status,
                   const char *want_code, const char *what)
{
    ipc_msg m;
    unsigned char *owned = NULL;

    if (write_all(fd, frame, len) != 0) {
        CHECK(0, "%s: could not send", what);
        return;
    }
    int rc = read_answer(fd, rd, &m, &owned);
    if (rc != 0) {
        CHECK(0, "%s: no answer (%d)", what, rc);
        free(owned);
        return;
    }
    const char *code = ipc_str(&m, IPC_T_CODE);
    CHECK(m.type == want_type && ipc_u32(&m, IPC_T_STATUS, 0) == want_status &&
              (want_code == NULL || (code != NULL && strcmp(code, want_code) == 0)),
          "%s: answered %u %s (type 0x%x)", what, ipc_u32(&m, IPC_T_STATUS, 0), code ? code : "-", m.type);
    free(owned);
}

/* Builds and sends a frame (ipc_end'd here) and expects its answer. */
static void ask(int fd, ipc_reader *rd, ipc_buf *b, uint32_t want_status, const char *want_code, const char *what)
{
    uint32_t type;

    (void)ipc_end(b);
    memcpy(&type, b->p, 4);
    expect(fd, rd, b->p, b->len, type | IPC_REPLY, want_status, want_code, what);
}

/* A frame: header and raw payload bytes. */
static size_t raw_frame(unsigned char *out, uint32_t type, uint64_t cookie, const void *payload, uint32_t plen)
{
    memcpy(out, &type, 4);
    memcpy(out + 4, &plen, 4);
    memcpy(out + 8, &cookie, 8);
    memcpy(out + IPC_HDR_LEN, payload, plen);
    return IPC_HDR_LEN + plen;
}

/* As a network process that sends and never reads its answers: health
 * requests (queued up to the key holder's job cap, then each answered 503
 * at once, without a log line) until the link takes no more for a second,
 * or flood_max bytes went. The bytes sent; *frames the
 * number of frames. The key holder must stop reading the link (its unread
 * answers held to a bound) rather than keep every answer in its memory. */
static size_t flood_unread(int fd, size_t flood_max, size_t *frames)
{
    unsigned char batch[IPC_HDR_LEN * 4096];
    size_t sent = 0, at = sizeof(batch);
    int fl = fcntl(fd, F_GETFL);

    for (size_t i = 0; i < sizeof(batch); i += IPC_HDR_LEN)
        (void)raw_frame(batch + i, IPC_HEALTH, 1000 + i, "", 0);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)
        return 0;
    while (sent < flood_max) {
        if (at == sizeof(batch))
            at = 0;
        ssize_t k = write(fd, batch + at, sizeof(batch) - at);
        if (k > 0) {
            at += (size_t)k;
            sent += (size_t)k;
            continue;
        }
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            break;
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, 1000) == 0)
            break; /* the key holder reads no more of this link */
    }
    /* finish the frame cut in two, so that every answer can be counted */
    if (at % IPC_HDR_LEN != 0) {
        (void)fcntl(fd, F_SETFL, fl);
        size_t rest = IPC_HDR_LEN - at % IPC_HDR_LEN;
        if (write_all(fd, batch + at, rest) == 0)
            sent += rest;
    }
    (void)fcntl(fd, F_SETFL, fl);
    *frames = sent / IPC_HDR_LEN;
    return sent;
}

/* Reads answers to `want` health requests in bulk (a frame at a time
 * through an ipc_reader moves the rest of its buffer each time: minutes
 * under ASan for this many). The number of health answers read before
 * want, the end of the stream, an error or 30 s without one. */
static size_t read_health_answers(int fd, size_t want)
{
    static unsigned char buf[1u << 18];
    size_t have = 0, got = 0;

    while (got < want) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 30000) <= 0)
            break;
        ssize_t n = read(fd, buf + have, sizeof(buf) - have);
        if (n <= 0)
            break;
        have += (size_t)n;
        size_t off = 0;
        while (have - off >= IPC_HDR_LEN) {
            uint32_t type, plen;
            uint64_t cookie;
            if (ipc_header(buf + off, &type, &plen, &cookie) != IPC_OK || plen > sizeof(buf) - IPC_HDR_LEN)
                return got;
            if (have - off < IPC_HDR_LEN + (size_t)plen)
                break;
            if (type != (IPC_HEALTH | IPC_REPLY))
                return got;
            got++;
            off += IPC_HDR_LEN + (size_t)plen;
        }
        memmove(buf, buf + off, have - off);
        have -= off;
    }
    return got;
}

/* Reads and drops what the key holder sends on fd until it sends nothing
 * for a second (or closes). */
static void drain_link(int fd)
{
    static unsigned char buf[1u << 16];
    struct pollfd p = {.fd = fd, .events = POLLIN};

    while (poll(&p, 1, 1000) > 0 && read(fd, buf, sizeof(buf)) > 0)
        ;
}

/* khlink_call's callback for calls whose answers do not matter. */
static void ignore_answer(void *arg, const ipc_msg *reply)
{
    (void)arg;
    (void)reply;
}

/* The status of an asynchronous call's answer, into *arg. */
static void note_status(void *arg, const ipc_msg *reply)
{
    *(unsigned *)arg = reply != NULL ? ipc_u32(reply, IPC_T_STATUS, 1) : 1;
}

/* An answer as the key holder writes it: type | IPC_REPLY, the cookie of
 * the call, a status. */
static int write_answer(int fd, ipc_buf *b, uint32_t type, uint64_t cookie, unsigned status)
{
    ipc_begin(b, type | IPC_REPLY, cookie);
    ipc_put_u32(b, IPC_T_STATUS, status);
    return ipc_end(b) == IPC_OK ? write_all(fd, b->p, b->len) : -1;
}

/* The public key of the member's certificate, as the network process
 * sends it for a member recorded with one. */
static unsigned char *spki;
static int spki_len;

/* The public key of a certificate file, DER (OPENSSL_free); -1 if unreadable. */
static int load_spki(const char *path, unsigned char **der)
{
    FILE *f = fopen(path, "r");
    X509 *cert = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    int n = -1;

    if (f != NULL)
        fclose(f);
    if (cert != NULL)
        n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), der);
    X509_free(cert);
    return n;
}

/* Forks the key holder under test (keyholder_main, as `serve` does) with
 * nlinks links (at most 2) and rl (NULL: it makes its own from cfg), and
 * waits until it says it is ready (checked): its pid with ends[i] the
 * network process's end of link i, or -1. Its control channel stays open
 * (closed, the key holder would stop: its supervisor gone). */
static pid_t start_keyholder(const struct gs_config *cfg, unsigned nlinks, ratelimit *rl, int *ends)
{
    int ctl[2], pairs[2][2];
    ipc_reader rdc;
    pid_t pid;

    if (nlinks > 2 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) != 0)
        return -1;
    for (unsigned i = 0; i < nlinks; i++)
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pairs[i]) != 0)
            return -1;
    if ((pid = fork()) == 0) {
        int links[2];
        close(ctl[0]);
        for (unsigned i = 0; i < nlinks; i++) {
            close(pairs[i][0]);
            links[i] = pairs[i][1];
        }
        _exit(keyholder_main(cfg, ctl[1], links, nlinks, rl));
    }
    close(ctl[1]);
    for (unsigned i = 0; i < nlinks; i++) {
        close(pairs[i][1]);
        ends[i] = pairs[i][0];
    }
    ipc_reader_init(&rdc);
    struct pollfd p = {.fd = ctl[0], .events = POLLIN};
    int ready = pid > 0 && poll(&p, 1, 60000) == 1 && ipc_reader_fill(&rdc, ctl[0]) == IPC_OK;
    ipc_reader_free(&rdc);
    CHECK(ready, "the key holder started");
    return ready ? pid : -1;
}

/* The start of a mode driving a member (argv: --MODE CONFIG RI.der
 * MEMBER MEMBER-CERT.pem, then argc_want - 5 more): the log, the public
 * key of the member's certificate (spki), the config and the
 * RecipientInfo's encrypted key (in *ri). 0, or 2 (said on stderr). */
static int member_mode_start(int argc, char **argv, int argc_want, const char *usage, struct gs_config **cfg,
                             unsigned char **ri_der, env_recipient **ri, const unsigned char **ek, size_t *ek_len)
{
    size_t ri_len = 0;

    if (argc != argc_want) {
        fprintf(stderr, "usage: khdrive %s\n", usage);
        return 2;
    }
    log_init("khdrive", LOG_LVL_WARN, NULL);
    const char *conf = argv[2], *ri_path = argv[3], *cert = argv[5];
    if ((spki_len = load_spki(cert, &spki)) <= 0 || gs_config_load(conf, cfg) != GS_OK ||
        util_read_file(ri_path, 65536, ri_der, &ri_len) != UTIL_OK ||
        env_recipient_parse(*ri_der, ri_len, ri) != ENV_OK ||
        env_recipient_encrypted_key(*ri, NULL, ek, ek_len) != ENV_OK) {
        fprintf(stderr, "khdrive: cannot read the certificate, the config or the RecipientInfo\n");
        return 2;
    }
    return 0;
}

/* Sends an unwrap and reads its answer, whatever it is (0 when one came). */
static int send_unwrap_any(int fd, ipc_reader *rd, ipc_buf *b)
{
    ipc_msg m;
    unsigned char *owned = NULL;
    int rc = write_all(fd, b->p, b->len) == 0 ? read_answer(fd, rd, &m, &owned) : -1;

    free(owned);
    return rc;
}

/* The membership certificate in an IPC_CERTIFY answer names the group
 * and nothing of the member, lives at most lifetime seconds, and is for
 * the public key asked for. */
static int check_membership_cert(const ipc_msg *m, const char *group, const char *member, long lifetime,
                                 const unsigned char *want_spki, int want_len)
{
    const unsigned char *der, *q;
    size_t dl;
    unsigned char *got = NULL;
    X509 *x = NULL;
    int ok = 0, pday, psec, gl;
    char text[4096];

    if (ipc_bytes(m, IPC_T_CERT, &der, &dl) != 0 || (q = der, x = d2i_X509(NULL, &q, (long)dl)) == NULL)
        return 0;
    X509_NAME_oneline(X509_get_subject_name(x), text, sizeof(text));
    gl = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &got);
    ok = strstr(text, group) != NULL && memmem(der, dl, member, strlen(member)) == NULL && gl == want_len && memcmp(got, want_spki, (size_t)gl) == 0 &&
         ASN1_TIME_diff(&pday, &psec, X509_get0_notBefore(x), X509_get0_notAfter(x)) == 1 &&
         (long)pday * 86400 + psec <= lifetime + 300;
    OPENSSL_free(got);
    X509_free(x);
    return ok;
}

/* Starts a request of type from an identified caller (with the member's
 * public key, as for a member recorded with a certificate), for group
 * (NULL: none). */
static void request_begin(ipc_buf *b, uint32_t type, uint64_t cookie, const char *who, const char *group)
{
    ipc_begin(b, type, cookie);
    ipc_put_str(b, IPC_T_REQUEST_ID, "feedfacefeedface");
    ipc_put_u32(b, IPC_T_CALLER, IPC_CALLER_IDENTITY);
    ipc_put_str(b, IPC_T_IDENTITY, who);
    if (spki_len > 0)
        ipc_put_bytes(b, IPC_T_SPKI, spki, (size_t)spki_len);
    ipc_put_str(b, IPC_T_GROUP, group);
}

/* Starts a request of type from the holder of a membership certificate
 * of cert_group (anonymous), whose public key is the member's. */
static void membership_begin(ipc_buf *b, uint32_t type, uint64_t cookie, const char *cert_group)
{
    ipc_begin(b, type, cookie);
    ipc_put_u32(b, IPC_T_CALLER, IPC_CALLER_MEMBERSHIP);
    ipc_put_str(b, IPC_T_IDENTITY, cert_group);
    ipc_put_bytes(b, IPC_T_SPKI, spki, (size_t)spki_len);
    ipc_put_str(b, IPC_T_GROUP, "eng");
}

/* who in ASCII upper case, in out (cap bytes). */
static const char *upper_case(const char *who, char *out, size_t cap)
{
    size_t k;

    for (k = 0; who[k] != '\0' && k + 1 < cap; k++)
        out[k] = (char)(who[k] >= 'a' && who[k] <= 'z' ? who[k] - 'a' + 'A' : who[k]);
    out[k] = '\0';
    return out;
}

/* who with each 'i' spelt U+0130 (LATIN CAPITAL LETTER I WITH DOT ABOVE)
 * and each 'k' U+212A (KELVIN SIGN), in out (cap bytes): letters that a
 * PostgreSQL database's lower() folds to the ASCII ones under a UTF-8
 * collation (SQLite's NOCASE does not); NULL when who has neither. */
static const char *unicode_case(const char *who, char *out, size_t cap)
{
    size_t k = 0;
    int changed = 0;

    for (; *who != '\0' && k + 4 < cap; who++) {
        if (*who == 'i') {
            memcpy(out + k, "\xc4\xb0", 2);
            k += 2;
            changed = 1;
        } else if (*who == 'k') {
            memcpy(out + k, "\xe2\x84\xaa", 3);
            k += 3;
            changed = 1;
        } else {
            out[k++] = *who;
        }
    }
    out[k] = '\0';
    return changed && *who == '\0' ? out : NULL;
}

static void unwrap_frame(ipc_buf *b, uint64_t cookie, const char *who, const char *group, const unsigned char *ek,
                         size_t ek_len)
{
    request_begin(b, IPC_UNWRAP, cookie, who, group);
    ipc_nest_begin(b, IPC_T_ITEM);
    ipc_put_u32(b, IPC_T_DELIVER, IPC_DELIVER_TLS);
    ipc_put_u32(b, IPC_T_ALG, IPC_ALG_OAEP_SHA1);
    ipc_put_bytes(b, IPC_T_ENC_KEY, ek, ek_len);
    ipc_nest_end(b);
    (void)ipc_end(b);
}

/* An unwrap frame of `items` items, each the encrypted key ek. */
static void unwrap_items_frame(ipc_buf *b, uint64_t cookie, const char *who, const char *group,
                               const unsigned char *ek, size_t ek_len, unsigned items)
{
    request_begin(b, IPC_UNWRAP, cookie, who, group);
    for (unsigned i = 0; i < items; i++) {
        ipc_nest_begin(b, IPC_T_ITEM);
        ipc_put_u32(b, IPC_T_DELIVER, IPC_DELIVER_TLS);
        ipc_put_u32(b, IPC_T_ALG, IPC_ALG_OAEP_SHA1);
        ipc_put_bytes(b, IPC_T_ENC_KEY, ek, ek_len);
        ipc_nest_end(b);
    }
    (void)ipc_end(b);
}

/*
 * khdrive --budget CONFIG RI.der MEMBER MEMBER-CERT.pem NON-MEMBER
 *
 * What a (compromised) network process can have the key holder hold for
 * one link is bounded by [server] keyholder_queue_max (CONFIG: small, one
 * token worker, max_queue_ms = 0, and a slow token: tests/p11fault's
 * GS_P11FAULT_SERVICE_US, seconds per private-key operation). The
 * member's unwrap holds the one worker for that long; the non-member's
 * batches sent meanwhile are queued while the link's frames fit the
 * budget and refused 503 overloaded at once beyond it (before: every
 * one queued, up to the queue's job cap, some 800 MiB of 100-item
 * frames). Every frame is answered exactly once; once the queue has
 * drained the budget is free again (one more batch is served, 403).
 */
#define BUDGET_FRAMES 12

/* The last quarter of the link's budget is kept for small frames (at
 * most a 64th of it): the member's unwrap holds the one worker again,
 * the non-member's batches fill what large frames may, and health checks
 * (what /healthz sends) adding up to just under a quarter of the budget
 * are every one taken and answered (before: the batches filled the
 * budget to within a batch, and the health checks beyond it were refused
 * 503 overloaded: one client's batches took the link from every other
 * request of its event-loop thread). */
#define SMALL_MAX 400
static void small_reserve(int fd, ipc_reader *rd, const char *member, const char *nonmember, const unsigned char *ek,
                          size_t ek_len, unsigned items, size_t budget)
{
    ipc_buf b;
    ipc_msg m;
    unsigned char *owned = NULL;
    size_t len0, lbatch, lsmall;
    unsigned nsmall, answers = 0, small_answers = 0, small_refused = 0, stray = 0;

    ipc_buf_init(&b);
    unwrap_frame(&b, 300, member, "eng", ek, ek_len);
    len0 = b.len - IPC_HDR_LEN;
    if (write_all(fd, b.p, b.len) != 0)
        goto out;
    unwrap_items_frame(&b, 301, nonmember, "eng", ek, ek_len, items);
    lbatch = b.len - IPC_HDR_LEN;
    ipc_begin(&b, IPC_HEALTH, 400);
    ipc_put_str(&b, IPC_T_REQUEST_ID, "feedfacefeedface");
    (void)ipc_end(&b);
    lsmall = b.len - IPC_HDR_LEN;
    nsmall = (unsigned)((budget / 4 - 1) / lsmall);
    if (nsmall > SMALL_MAX)
        nsmall = SMALL_MAX;
    unsigned nbatch = (unsigned)(budget / lbatch) + 2;
    /* Without the reserve: the batches took the budget to within gap
     * bytes; the health checks' bytes are more than that. */
    size_t gap = budget - len0 - (budget - len0) / lbatch * lbatch;
    CHECK(lsmall <= budget / 64 && lbatch > budget / 64 && nsmall * lsmall > gap,
          "frames for the reserve: %u batches of %zu bytes after a %zu-byte unwrap, then %u health checks of %zu "
          "bytes (%zu in all; without the reserve %zu would fit)",
          nbatch, lbatch, len0, nsmall, lsmall, nsmall * lsmall, gap);
    for (unsigned i = 0; i < nbatch; i++) {
        unwrap_items_frame(&b, 301 + i, nonmember, "eng", ek, ek_len, items);
        if (write_all(fd, b.p, b.len) != 0)
            goto out;
    }
    for (unsigned i = 0; i < nsmall; i++) {
        ipc_begin(&b, IPC_HEALTH, 1000 + i);
        ipc_put_str(&b, IPC_T_REQUEST_ID, "feedfacefeedface");
        (void)ipc_end(&b);
        if (write_all(fd, b.p, b.len) != 0)
            goto out;
    }
    while (answers < 1 + nbatch + nsmall && read_answer(fd, rd, &m, &owned) == 0) {
        const char *code = ipc_str(&m, IPC_T_CODE);
        bool over = ipc_u32(&m, IPC_T_STATUS, 0) == 503 && code != NULL && strcmp(code, "overloaded") == 0;
        if (m.cookie >= 1000 && m.cookie < 1000 + nsmall) {
            small_answers++;
            small_refused += over;
        } else if (m.cookie < 300 || m.cookie > 301 + nbatch) {
            stray++;
        }
        answers++;
        free(owned);
        owned = NULL;
    }
    CHECK(answers == 1 + nbatch + nsmall && stray == 0, "the reserve's frames each answered (%u of %u, %u unknown)",
          answers, 1 + nbatch + nsmall, stray);
    CHECK(small_answers == nsmall && small_refused == 0,
          "health checks behind a link filled with batches: %u of %u refused 503 overloaded, want none (the last "
          "quarter of [server] keyholder_queue_max is kept for small frames)",
          small_refused, nsmall);
out:
    free(owned);
    ipc_buf_free(&b);
}

static int budget_main(int argc, char **argv)
{
    struct gs_config *cfg = NULL;
    unsigned char *ri_der = NULL, *owned = NULL;
    size_t len[BUDGET_FRAMES + 1] = {0}, accepted = 0;
    env_recipient *ri = NULL;
    const unsigned char *ek;
    size_t ek_len;
    int l0[1] = {-1};
    unsigned status[BUDGET_FRAMES + 1] = {0}, answers = 0, overloaded = 0, dup = 0, stray = 0;
    ipc_reader rd;
    ipc_buf b;
    ipc_msg m;
    pid_t pid = -1;

    if (member_mode_start(argc, argv, 7, "--budget CONFIG RI.der MEMBER MEMBER-CERT.pem NON-MEMBER", &cfg, &ri_der,
                          &ri, &ek, &ek_len) != 0)
        return 2;
    size_t budget = cfg->server.keyholder_queue_max;
    unsigned items = cfg->server.unwrap_batch_max ? cfg->server.unwrap_batch_max : 100;
    ipc_reader_init(&rd);
    ipc_buf_init(&b);
    if ((pid = start_keyholder(cfg, 1, NULL, l0)) < 0)
        goto out;
    /* Cookie 1: the member's unwrap, on the one worker for the token's
     * service time; 2..: the non-member's batches, sent at once. */
    unwrap_frame(&b, 1, argv[4], "eng", ek, ek_len);
    len[0] = b.len - IPC_HDR_LEN;
    CHECK(write_all(l0[0], b.p, b.len) == 0, "the member's unwrap sent (%zu bytes)", len[0]);
    size_t total = len[0];
    for (unsigned i = 1; i <= BUDGET_FRAMES; i++) {
        unwrap_items_frame(&b, 1 + i, argv[6], "eng", ek, ek_len, items);
        len[i] = b.len - IPC_HDR_LEN;
        total += len[i];
        if (write_all(l0[0], b.p, b.len) != 0)
            break;
    }
    CHECK(total > 2 * budget, "%u batches of %u items sent behind it: %zu bytes, over twice [server] "
          "keyholder_queue_max (%zu)", BUDGET_FRAMES, items, total, budget);
    while (answers + stray < BUDGET_FRAMES + 1) {
        int rc = read_answer(l0[0], &rd, &m, &owned);
        if (rc != 0)
            break;
        uint64_t ck = m.cookie;
        const char *code = ipc_str(&m, IPC_T_CODE);
        unsigned st = ipc_u32(&m, IPC_T_STATUS, 0);
        if (ck < 1 || ck > BUDGET_FRAMES + 1) {
            stray++;
        } else if (status[ck - 1] != 0) {
            dup++;
        } else {
            status[ck - 1] = st;
            answers++;
            if (st == 503 && code != NULL && strcmp(code, "overloaded") == 0)
                overloaded++;
            else
                accepted += len[ck - 1];
        }
        free(owned);
        owned = NULL;
    }
    CHECK(answers == BUDGET_FRAMES + 1 && dup == 0 && stray == 0,
          "every frame answered exactly once (%u of %u; %u twice, %u unknown)", answers, BUDGET_FRAMES + 1, dup,
          stray);
    CHECK(status[0] == 200, "the member's unwrap on the slow token: %u, want 200", status[0]);
    CHECK(overloaded > 0, "batches beyond [server] keyholder_queue_max refused 503 overloaded at once: %u of %u",
          overloaded, BUDGET_FRAMES);
    CHECK(accepted <= budget + len[0],
          "the frames the key holder took held to the link's budget: %zu bytes, budget %zu (one frame may go over)",
          accepted, budget);
    unsigned ok403 = 0;
    for (unsigned i = 1; i <= BUDGET_FRAMES; i++)
        ok403 += status[i] == 403;
    CHECK(ok403 + overloaded == BUDGET_FRAMES, "the batches taken were each answered 403 (%u), the rest "
          "overloaded (%u)", ok403, overloaded);
    /* The budget is given back as jobs end: a batch now is served. */
    unwrap_items_frame(&b, 100, argv[6], "eng", ek, ek_len, items);
    expect(l0[0], &rd, b.p, b.len, IPC_UNWRAP | IPC_REPLY, 403, "not_a_member",
           "a batch after the queue drained (the link's budget given back)");
    small_reserve(l0[0], &rd, argv[4], argv[6], ek, ek_len, items, budget);
out:
    if (l0[0] >= 0)
        close(l0[0]); /* closed first, as a network process that went: the key holder stops at once */
    if (pid > 0)
        stop_keyholder(pid);
    ipc_buf_free(&b);
    ipc_reader_free(&rd);
    env_recipient_free(ri);
    free(ri_der);
    OPENSSL_free(spki);
    gs_config_free(cfg);
    return failed;
}

/*
 * khdrive --ratelimit CONFIG RI.der MEMBER MEMBER-CERT.pem
 *
 * The rate limit is one bucket per member whatever the message type: a
 * (compromised) network process cannot get more of a member's turns by
 * spreading them over unwraps, secret-key fetches, membership
 * certificates and authorisation checks. The key holder gets a bucket
 * of RL_BURST that refills once in a thousand seconds (its rate limiter
 * made here, as the supervisor makes the shared one), so that no refill
 * comes between the steps: the member's unwraps empty it, then every
 * other message type that stands for a member's request is answered 429
 * rate_limited. The call of the limiter in each is what this shows
 * (tests/lint/ratelimit-once.sh checks the charge once per request).
 */
#define RL_BURST 4

static int ratelimit_main(int argc, char **argv)
{
    struct gs_config *cfg = NULL;
    unsigned char *ri_der = NULL;
    env_recipient *ri = NULL;
    const unsigned char *ek;
    size_t ek_len;
    int l0[1] = {-1};
    ipc_reader rd;
    ipc_buf b;
    ratelimit *rl = NULL;
    pid_t pid = -1;
    unsigned served = 0;

    if (member_mode_start(argc, argv, 6, "--ratelimit CONFIG RI.der MEMBER MEMBER-CERT.pem", &cfg, &ri_der, &ri, &ek,
                          &ek_len) != 0)
        return 2;
    const char *who = argv[4];
    ipc_reader_init(&rd);
    ipc_buf_init(&b);
    /* The key holder's own (a copy in its process): freed there at exit. */
    if ((rl = ratelimit_new(1e-3, RL_BURST, 0, 0)) == NULL || (pid = start_keyholder(cfg, 1, rl, l0)) < 0)
        goto out;
    for (unsigned i = 0; i < RL_BURST; i++) {
        ipc_msg m;
        unsigned char *owned = NULL;
        unwrap_frame(&b, 10 + i, who, "eng", ek, ek_len);
        if (write_all(l0[0], b.p, b.len) == 0 && read_answer(l0[0], &rd, &m, &owned) == 0)
            served += ipc_u32(&m, IPC_T_STATUS, 0) == 200;
        free(owned);
    }
    CHECK(served == RL_BURST, "the member's bucket of %u emptied by unwraps (%u served)", RL_BURST, served);
    unwrap_frame(&b, 20, who, "eng", ek, ek_len);
    expect(l0[0], &rd, b.p, b.len, IPC_UNWRAP | IPC_REPLY, 429, "rate_limited", "an unwrap once it is empty");
    request_begin(&b, IPC_UNWRAP, 21, who, "eng");
    ask(l0[0], &rd, &b, 429, "rate_limited", "an unwrap of no items (the authorisation alone)");
    request_begin(&b, IPC_SECRET_KEYS, 22, who, "eng");
    ask(l0[0], &rd, &b, 429, "rate_limited", "the group secret keys");
    request_begin(&b, IPC_CERTIFY, 23, who, "eng");
    ipc_put_bytes(&b, IPC_T_CSR_SPKI, spki, (size_t)spki_len);
    ask(l0[0], &rd, &b, 429, "rate_limited", "a membership certificate");
    request_begin(&b, IPC_CERTIFY, 24, who, "eng");
    ask(l0[0], &rd, &b, 429, "rate_limited", "a membership certificate's authorisation alone");
    static const uint32_t acts[] = {IPC_ACT_UNWRAP, IPC_ACT_SECRET_KEYS};
    for (size_t i = 0; i < GS_ARRAY_LEN(acts); i++) {
        char what[96];
        request_begin(&b, IPC_AUTHZ, 25 + i, who, "eng");
        ipc_put_u32(&b, IPC_T_ACTION, acts[i]);
        (void)snprintf(what, sizeof(what), "an authorisation check (action %u)", (unsigned)acts[i]);
        ask(l0[0], &rd, &b, 429, "rate_limited", what);
    }
out:
    if (l0[0] >= 0)
        close(l0[0]);
    if (pid > 0)
        stop_keyholder(pid);
    ratelimit_free(rl);
    ipc_buf_free(&b);
    ipc_reader_free(&rd);
    env_recipient_free(ri);
    free(ri_der);
    OPENSSL_free(spki);
    gs_config_free(cfg);
    return failed;
}

/*
 * khdrive --answers CONFIG ADMIN ADMIN-CERT.pem FRAMES
 *
 * A (compromised) network process that asks for large answers and reads
 * none: FRAMES member lists of group eng (CONFIG's database holds some
 * thousand members: each answer hundreds of KiB, the request a hundred
 * bytes) on one link. The key holder stops reading the link at 4 MiB of
 * unread answers, but the answers of what it had taken kept coming: every
 * one held (FRAMES times the answer: over 150 MB here). Now, past 64 MiB
 * unread, the large ones are dropped. Once the same admin's list on a
 * second link is answered (the fair queue's order: after those of the
 * first), the first link's answers are read and weighed; the link then
 * serves again.
 */
#define ANSWERS_HARD (64u << 20) /* keyholder.c's LINK_OUT_HARD */

static int answers_main(int argc, char **argv)
{
    struct gs_config *cfg = NULL;
    int ends[2] = {-1, -1};
    ipc_reader rd1;
    ipc_buf b;
    ipc_msg m;
    unsigned char *owned = NULL;
    long frames = 0;
    pid_t pid = -1;

    if (argc != 6 || util_parse_int(argv[5], 1, 1000, &frames) != UTIL_OK) {
        fprintf(stderr, "usage: khdrive --answers CONFIG ADMIN ADMIN-CERT.pem FRAMES\n");
        return 2;
    }
    log_init("khdrive", LOG_LVL_WARN, NULL);
    if ((spki_len = load_spki(argv[4], &spki)) <= 0 || gs_config_load(argv[2], &cfg) != GS_OK) {
        fprintf(stderr, "khdrive: cannot read the certificate or the config\n");
        return 2;
    }
    ipc_reader_init(&rd1);
    ipc_buf_init(&b);
    if ((pid = start_keyholder(cfg, 2, NULL, ends)) < 0)
        goto out;
    /* One list first, read: its size. */
    request_begin(&b, IPC_MEMBERS, 1, argv[3], "eng");
    (void)ipc_end(&b);
    size_t one = 0;
    if (write_all(ends[0], b.p, b.len) == 0 && read_answer(ends[0], &rd1, &m, &owned) == 0 &&
        ipc_u32(&m, IPC_T_STATUS, 0) == 200)
        one = m.len + IPC_HDR_LEN;
    free(owned);
    owned = NULL;
    CHECK(one > 16384 && one * (size_t)frames > 2 * (size_t)ANSWERS_HARD,
          "a member list of eng is %zu bytes; %ld of them %zu MiB, over twice the unread answers a link holds (%u "
          "MiB)", one, frames, one * (size_t)frames >> 20, ANSWERS_HARD >> 20);
    for (long i = 0; i < frames; i++) {
        request_begin(&b, IPC_MEMBERS, 100 + (uint64_t)i, argv[3], "eng");
        (void)ipc_end(&b);
        if (write_all(ends[0], b.p, b.len) != 0)
            break;
    }
    /* The same admin's flow on the other link: answered once the key
     * holder has taken every list of the first. */
    request_begin(&b, IPC_MEMBERS, 2, argv[3], "eng");
    (void)ipc_end(&b);
    int probe = write_all(ends[1], b.p, b.len) == 0 && read_answer(ends[1], &rd1, &m, &owned) == 0 &&
                ipc_u32(&m, IPC_T_STATUS, 0) == 200;
    free(owned);
    owned = NULL;
    CHECK(probe, "the other link is served meanwhile");
    usleep(500000); /* the list a worker may still be making */
    /* What the first link holds now: read in bulk and weighed. */
    static unsigned char rbuf[1u << 16];
    size_t bytes = 0;
    struct pollfd q = {.fd = ends[0], .events = POLLIN};
    while (poll(&q, 1, 2000) > 0) {
        ssize_t n = read(ends[0], rbuf, sizeof(rbuf));
        if (n <= 0)
            break;
        bytes += (size_t)n;
    }
    CHECK(bytes > 0 && bytes <= ANSWERS_HARD + 4 * one,
          "the key holder held %zu MiB of answers for a link that read none (%ld asked, %zu MiB in all; at most %u "
          "MiB and a few answers)",
          bytes >> 20, frames, one * (size_t)frames >> 20, ANSWERS_HARD >> 20);
    ipc_begin(&b, IPC_HEALTH, 3);
    ipc_reader_free(&rd1);
    ipc_reader_init(&rd1);
    ask(ends[0], &rd1, &b, 200, NULL, "the link serves again once its answers are read");
out:
    for (size_t i = 0; i < GS_ARRAY_LEN(ends); i++)
        if (ends[i] >= 0)
            close(ends[i]);
    if (pid > 0)
        stop_keyholder(pid);
    ipc_buf_free(&b);
    ipc_reader_free(&rd1);
    OPENSSL_free(spki);
    gs_config_free(cfg);
    return failed;
}

int main(int argc, char **argv)
{
    struct gs_config *cfg = NULL;
    unsigned char *ri_der = NULL, buf[4096];
    size_t ri_len = 0;
    env_recipient *ri = NULL;
    const unsigned char *ek;
    size_t ek_len;
    ipc_reader rd0, rd1;
    ipc_buf b;
    ipc_msg m;
    unsigned char *owned = NULL;

    if (argc > 1 && strcmp(argv[1], "--budget") == 0)
        return budget_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "--answers") == 0)
        return answers_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "--ratelimit") == 0)
        return ratelimit_main(argc, argv);
    if (argc != 6 && argc != 8) {
        fprintf(stderr, "usage: khdrive CONFIG RI.der MEMBER MEMBER-CERT.pem NON-MEMBER [MEMBER2 MEMBER2-CERT.pem]\n");
        return 2;
    }
    FILE *cf = fopen(argv[4], "r");
    X509 *cert = cf ? PEM_read_X509(cf, NULL, NULL, NULL) : NULL;
    if (cf != NULL)
        fclose(cf);
    if (cert == NULL || (spki_len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &spki)) <= 0) {
        fprintf(stderr, "khdrive: cannot read %s\n", argv[4]);
        return 2;
    }
    X509_free(cert);
    log_init("khdrive", LOG_LVL_WARN, NULL);
    if (gs_config_load(argv[1], &cfg) != GS_OK || util_read_file(argv[2], 65536, &ri_der, &ri_len) != UTIL_OK ||
        env_recipient_parse(ri_der, ri_len, &ri) != ENV_OK || env_recipient_encrypted_key(ri, NULL, &ek, &ek_len) != ENV_OK) {
        fprintf(stderr, "khdrive: cannot read the config or the RecipientInfo\n");
        return 2;
    }
    ipc_reader_init(&rd0);
    ipc_reader_init(&rd1);
    ipc_buf_init(&b);
    int ends[2] = {-1, -1};
    pid_t pid = start_keyholder(cfg, 2, NULL, ends);
    if (pid < 0)
        goto out;
    int l0[1] = {ends[0]}, l1[1] = {ends[1]};

    /* 1. A field that claims more bytes than the frame has (truncated). */
    unsigned char pay[64];
    uint16_t tag = IPC_T_GROUP;
    uint32_t flen = 100;
    memcpy(pay, &tag, 2);
    memcpy(pay + 2, &flen, 4);
    memcpy(pay + 6, "eng", 4);
    size_t n = raw_frame(buf, IPC_VIEW, 11, pay, 10);
    expect(l0[0], &rd0, buf, n, IPC_VIEW | IPC_REPLY, 400, "bad_request", "truncated field");
    /* 2. An unknown message type. */
    n = raw_frame(buf, 0x4242, 12, "", 0);
    expect(l0[0], &rd0, buf, n, IPC_REPLY, 400, "bad_request", "unknown message type");
    /* 3. Bad lengths: a 3-byte u32, a 65-byte digest, a string without its NUL. */
    uint32_t three = 3;
    tag = IPC_T_FLAGS;
    memcpy(pay, &tag, 2);
    memcpy(pay + 2, &three, 4);
    memcpy(pay + 6, "abc", 3);
    n = raw_frame(buf, IPC_INFO, 13, pay, 9);
    expect(l0[0], &rd0, buf, n, IPC_INFO | IPC_REPLY, 400, "bad_request", "a u32 of 3 bytes");
    unsigned char digest[65] = {0};
    tag = IPC_T_DIGEST;
    uint32_t dl = sizeof(digest);
    memcpy(pay, &tag, 2);
    memcpy(pay + 2, &dl, 4);
    unsigned char big[6 + sizeof(digest)];
    memcpy(big, pay, 6);
    memcpy(big + 6, digest, sizeof(digest));
    n = raw_frame(buf, IPC_SIGN, 14, big, sizeof(big));
    expect(l0[0], &rd0, buf, n, IPC_SIGN | IPC_REPLY, 400, "bad_request", "a 65-byte digest");
    tag = IPC_T_GROUP;
    flen = 3;
    memcpy(pay, &tag, 2);
    memcpy(pay + 2, &flen, 4);
    memcpy(pay + 6, "eng", 3);
    n = raw_frame(buf, IPC_VIEW, 15, pay, 9);
    expect(l0[0], &rd0, buf, n, IPC_VIEW | IPC_REPLY, 400, "bad_request", "a string without its NUL");
    /* 4. A well-formed unwrap for an identity that is not a member: a key
     * decision, refused and audited. */
    unwrap_frame(&b, 16, argv[5], "eng", ek, ek_len);
    expect(l0[0], &rd0, b.p, b.len, IPC_UNWRAP | IPC_REPLY, 403, "not_a_member", "unwrap for a non-member");
    /* 5. A group that does not exist. */
    unwrap_frame(&b, 17, argv[3], "nosuchgroup", ek, ek_len);
    expect(l0[0], &rd0, b.p, b.len, IPC_UNWRAP | IPC_REPLY, 404, "not_found", "unwrap for a group that does not exist");
    /* 6. A member, correctly: still serving. */
    unwrap_frame(&b, 18, argv[3], "eng", ek, ek_len);
    expect(l0[0], &rd0, b.p, b.len, IPC_UNWRAP | IPC_REPLY, 200, NULL, "a member's unwrap after all that");
    /* 6+. An unwrap frame with more items than [server] unwrap_batch_max
     * (the network process refuses such a batch itself, 413, before it
     * sends anything): refused 413 as it is read, before it is queued.
     * Queued, it counted as that many turns of the token queue, whose
     * measured time per turn (load shedding's estimate) it then skewed,
     * and it was refused only by a token worker, after the group was
     * loaded and the caller authorised: for a group that does not exist
     * that answer was 404, for a non-member 403 (an audit record). A
     * frame of unwrap_batch_max items, as a legitimate network process
     * sends, is served. */
    {
        unsigned max = cfg->server.unwrap_batch_max ? cfg->server.unwrap_batch_max : 100;
        static const struct {
            int who; /* 3: the member, 5: the non-member */
            const char *group, *what;
        } over[] = {{3, "eng", "a member's"}, {5, "eng", "a non-member's"}, {3, "nosuchgroup", "a missing group's"}};
        for (size_t k = 0; k < GS_ARRAY_LEN(over); k++) {
            char what[128];
            request_begin(&b, IPC_UNWRAP, 21, argv[over[k].who], over[k].group);
            for (unsigned i = 0; i <= max; i++) {
                ipc_nest_begin(&b, IPC_T_ITEM);
                ipc_put_u32(&b, IPC_T_DELIVER, IPC_DELIVER_TLS);
                ipc_put_u32(&b, IPC_T_ALG, IPC_ALG_OAEP_SHA1);
                ipc_put_bytes(&b, IPC_T_ENC_KEY, ek, ek_len);
                ipc_nest_end(&b);
            }
            (void)snprintf(what, sizeof(what), "%s unwrap frame of unwrap_batch_max + 1 = %u items, refused unqueued",
                           over[k].what, max + 1);
            ask(l0[0], &rd0, &b, 413, "too_many_items", what);
        }
        request_begin(&b, IPC_UNWRAP, 22, argv[3], "eng");
        for (unsigned i = 0; i < max; i++) {
            ipc_nest_begin(&b, IPC_T_ITEM);
            ipc_put_u32(&b, IPC_T_DELIVER, IPC_DELIVER_TLS);
            ipc_put_u32(&b, IPC_T_ALG, IPC_ALG_OAEP_SHA1);
            ipc_put_bytes(&b, IPC_T_ENC_KEY, ek, ek_len);
            ipc_nest_end(&b);
        }
        (void)ipc_end(&b);
        unsigned served = 0;
        if (write_all(l0[0], b.p, b.len) == 0 && read_answer(l0[0], &rd0, &m, &owned) == 0 &&
            ipc_u32(&m, IPC_T_STATUS, 0) == 200) {
            ipc_iter it;
            ipc_msg res;
            ipc_iter_init(&it, &m, IPC_T_RESULT);
            while (ipc_iter_next(&it, NULL, &res))
                served += ipc_u32(&res, IPC_T_STATUS, 0) == 200;
        }
        CHECK(served == max, "an unwrap frame of unwrap_batch_max = %u items is served (%u unwrapped)", max, served);
        free(owned);
        owned = NULL;
    }
    /* 6-. The same unwrap with a request id that is no request id (not
     * UTF-8: its audit record cannot be written): refused as malformed
     * before the group key is used, not a token operation without its
     * record (and without a failed-unwrap count) answered 503. */
    ipc_begin(&b, IPC_UNWRAP, 19);
    ipc_put_str(&b, IPC_T_REQUEST_ID, "\xc3\x28\xff");
    ipc_put_u32(&b, IPC_T_CALLER, IPC_CALLER_IDENTITY);
    ipc_put_str(&b, IPC_T_IDENTITY, argv[3]);
    ipc_put_bytes(&b, IPC_T_SPKI, spki, (size_t)spki_len);
    ipc_put_str(&b, IPC_T_GROUP, "eng");
    ipc_nest_begin(&b, IPC_T_ITEM);
    ipc_put_u32(&b, IPC_T_DELIVER, IPC_DELIVER_TLS);
    ipc_put_u32(&b, IPC_T_ALG, IPC_ALG_OAEP_SHA1);
    ipc_put_bytes(&b, IPC_T_ENC_KEY, ek, ek_len);
    ipc_nest_end(&b);
    ask(l0[0], &rd0, &b, 400, "bad_request", "an unwrap whose request id is not one (not UTF-8)");
    /* 6-. An identity that is not UTF-8 (the network process takes it
     * from a certificate, as UTF-8): no member of any group, refused as
     * one, 403 with its record (the identity escaped: the audit log holds
     * UTF-8 only); it was a store or audit failure, 503 with no record. */
    unwrap_frame(&b, 20, "mall\xf6ry@example.org", "eng", ek, ek_len);
    expect(l0[0], &rd0, b.p, b.len, IPC_UNWRAP | IPC_REPLY, 403, "not_a_member",
           "an unwrap for an identity that is not UTF-8");
    /* 6a. What a member may not do, claimed by the network process for
     * one: the admin operations, creating a group, the exploder's rewrap. */
    request_begin(&b, IPC_MEMBER_PUT, 30, argv[3], "eng");
    ipc_put_str(&b, IPC_T_EMAIL, "intruder@example.org");
    ipc_put_u32(&b, IPC_T_ROLE, GS_ROLE_ADMIN);
    ask(l0[0], &rd0, &b, 403, "forbidden", "member add (as admin) claimed for a plain member");
    request_begin(&b, IPC_MEMBER_DELETE, 31, argv[3], "eng");
    ipc_put_str(&b, IPC_T_EMAIL, argv[3]);
    ask(l0[0], &rd0, &b, 403, "forbidden", "member remove claimed for a plain member");
    request_begin(&b, IPC_MEMBERS, 32, argv[3], "eng");
    ask(l0[0], &rd0, &b, 403, "forbidden", "member list claimed for a plain member");
    request_begin(&b, IPC_GROUP_CREATE, 33, argv[3], NULL);
    ipc_put_str(&b, IPC_T_NAME, "stolen");
    ipc_put_str(&b, IPC_T_ADDRESS, "stolen@example.org");
    ask(l0[0], &rd0, &b, 403, "forbidden", "group create claimed for a member who administers no group");
    request_begin(&b, IPC_REWRAP, 34, argv[3], "eng");
    ipc_put_u32(&b, IPC_T_TO, IPC_TO_MEMBERS);
    ipc_nest_begin(&b, IPC_T_ITEM);
    ipc_put_u32(&b, IPC_T_DELIVER, IPC_DELIVER_TLS);
    ipc_put_u32(&b, IPC_T_ALG, IPC_ALG_OAEP_SHA1);
    ipc_put_bytes(&b, IPC_T_ENC_KEY, ek, ek_len);
    ipc_nest_end(&b);
    ask(l0[0], &rd0, &b, 403, "forbidden", "the exploder's rewrap claimed for a plain member");
    /* 6b. A non-member: no secret keys, no membership certificate. */
    request_begin(&b, IPC_SECRET_KEYS, 35, argv[5], "eng");
    ask(l0[0], &rd0, &b, 403, "not_a_member", "secret keys for a non-member (to the caller's key)");
    request_begin(&b, IPC_CERTIFY, 36, argv[5], "eng");
    ipc_put_bytes(&b, IPC_T_CSR_SPKI, spki, (size_t)spki_len);
    ask(l0[0], &rd0, &b, 403, "not_a_member", "a membership certificate for a non-member");
    /* 6c. A membership certificate's holder: only unwraps of its own
     * group, never a certificate of its own. */
    membership_begin(&b, IPC_UNWRAP, 37, "othergroup");
    ask(l0[0], &rd0, &b, 403, "not_a_member", "a membership certificate of another group used for eng");
    membership_begin(&b, IPC_CERTIFY, 38, "eng");
    ipc_put_bytes(&b, IPC_T_CSR_SPKI, spki, (size_t)spki_len);
    ask(l0[0], &rd0, &b, 403, "forbidden", "a membership certificate asked for by a membership certificate");
    /* 6d. A member's membership certificate: the key holder chooses
     * every field but the public key. */
    request_begin(&b, IPC_CERTIFY, 39, argv[3], "eng");
    ipc_put_bytes(&b, IPC_T_CSR_SPKI, spki, (size_t)spki_len);
    (void)ipc_end(&b);
    if (write_all(l0[0], b.p, b.len) == 0 && read_answer(l0[0], &rd0, &m, &owned) == 0) {
        CHECK(ipc_u32(&m, IPC_T_STATUS, 0) == 200 &&
                  check_membership_cert(&m, "eng", argv[3],
                                        cfg->certsrv.lifetime ? (long)cfg->certsrv.lifetime : 3600, spki, spki_len),
              "a member's membership certificate names the group, not the member, for the asked key, within the "
              "lifetime (%s)", ipc_u32(&m, IPC_T_STATUS, 0) == 200 ? "issued" : "refused");
    } else {
        CHECK(0, "a member's membership certificate");
    }
    free(owned);
    owned = NULL;
    /* 6e. No [tls] key on the token: nothing to sign with. */
    ipc_begin(&b, IPC_SIGN, 40);
    ipc_put_bytes(&b, IPC_T_DIGEST, digest, 32);
    ask(l0[0], &rd0, &b, 404, "not_found", "a signature with no TLS key on the token");
    /* 7. A header over the size cap on the other link: that link is closed. */
    uint32_t huge = IPC_MAX_PAYLOAD + 1, t = IPC_VIEW;
    memset(buf, 0, IPC_HDR_LEN);
    memcpy(buf, &t, 4);
    memcpy(buf + 4, &huge, 4);
    write_all(l1[0], buf, IPC_HDR_LEN);
    CHECK(read_answer(l1[0], &rd1, &m, &owned) == 1, "an oversize frame header closes that link");
    free(owned);
    owned = NULL;
    /* 8. The first link still serves, and the answer pairs by cookie. */
    unwrap_frame(&b, 19, argv[3], "eng", ek, ek_len);
    if (write_all(l0[0], b.p, b.len) == 0 && read_answer(l0[0], &rd0, &m, &owned) == 0) {
        const unsigned char *res;
        size_t rl;
        CHECK(m.cookie == 19 && ipc_u32(&m, IPC_T_STATUS, 0) == 200 && ipc_bytes(&m, IPC_T_RESULT, &res, &rl) == 0,
              "the other link keeps serving (cookie %llu)", (unsigned long long)m.cookie);
    } else {
        CHECK(0, "the other link keeps serving");
    }
    free(owned);
    owned = NULL;
    /* 8a. The failed-unwrap suspension and the rate limit (the config
     * has a cap and a limit), with the identity in upper case too: the
     * key holder's counters are per member, however the network process
     * spells it. */
    if (argc == 8) {
        unsigned char *spki2 = NULL, *spki1 = spki, bad[4096];
        int len2 = load_spki(argv[7], &spki2), len1 = spki_len;
        char upper[256];
        size_t k;
        CHECK(len2 > 0 && ek_len <= sizeof(bad), "the second member's certificate");
        if (len2 > 0 && ek_len <= sizeof(bad)) {
            spki = spki2;
            spki_len = len2;
            memcpy(bad, ek, ek_len);
            bad[ek_len / 2] ^= 0x55;
            for (k = 0; k < 3; k++) {
                unwrap_frame(&b, 50 + k, argv[6], "eng", bad, ek_len);
                if (send_unwrap_any(l0[0], &rd0, &b) != 0)
                    break;
            }
            CHECK(k == 3, "three unwraps of a damaged key answered");
            unwrap_frame(&b, 54, argv[6], "eng", ek, ek_len);
            expect(l0[0], &rd0, b.p, b.len, IPC_UNWRAP | IPC_REPLY, 429, "suspended",
                   "suspended after max_failed_unwraps");
            unwrap_frame(&b, 55, upper_case(argv[6], upper, sizeof(upper)), "eng", ek, ek_len);
            expect(l0[0], &rd0, b.p, b.len, IPC_UNWRAP | IPC_REPLY, 429, "suspended",
                   "the same member in upper case is suspended too");
            spki = spki1;
            spki_len = len1;
            /* The first member's bucket, emptied. */
            int limited = 0;
            for (k = 0; k < 40 && !limited; k++) {
                unwrap_frame(&b, 60 + k, argv[3], "eng", ek, ek_len);
                if (write_all(l0[0], b.p, b.len) != 0 || read_answer(l0[0], &rd0, &m, &owned) != 0)
                    break;
                limited = ipc_u32(&m, IPC_T_STATUS, 0) == 429;
                free(owned);
                owned = NULL;
            }
            CHECK(limited, "the rate limit stops a member's unwraps (after %zu)", k);
            unwrap_frame(&b, 120, upper_case(argv[3], upper, sizeof(upper)), "eng", ek, ek_len);
            expect(l0[0], &rd0, b.p, b.len, IPC_UNWRAP | IPC_REPLY, 429, "rate_limited",
                   "the same member in upper case has no bucket of its own");
            /* Spelt with letters the store's comparison may fold to
             * the member's (PostgreSQL's lower() under a UTF-8
             * collation): another address, no member, on either store
             * (not a bucket of its own for the member). */
            const char *odd = unicode_case(argv[3], upper, sizeof(upper));
            if (odd != NULL) {
                unwrap_frame(&b, 121, odd, "eng", ek, ek_len);
                if (write_all(l0[0], b.p, b.len) == 0 && read_answer(l0[0], &rd0, &m, &owned) == 0) {
                    uint32_t st = ipc_u32(&m, IPC_T_STATUS, 0);
                    CHECK(st == 403, "the member spelt with U+0130 / U+212A is no member (%u)", (unsigned)st);
                } else {
                    CHECK(0, "the member spelt with U+0130 / U+212A: no answer");
                }
                free(owned);
                owned = NULL;
            }
        }
        OPENSSL_free(spki2);
    }
    /* 8b. A network process that sends and does not read: the key holder
     * stops reading that link instead of holding its answers without
     * bound (64 MiB of requests would be ~300 MiB of answers), and serves
     * it again once its answers are read. */
    {
        size_t frames = 0, cap = 64u << 20;
        size_t sent = flood_unread(l0[0], cap, &frames);
        CHECK(sent > 0 && sent < cap, "a link whose answers are not read stops being read (after %zu frames)", frames);
        size_t answered = read_health_answers(l0[0], frames);
        CHECK(answered == frames, "every frame sent before then answered once read (%zu of %zu)", answered, frames);
        ipc_begin(&b, IPC_HEALTH, 130);
        ask(l0[0], &rd0, &b, 200, NULL, "the link serves again once its answers are read");
    }
    /* 8c. The network process's synchronous call (a TLS handshake's
     * signature) made while the key holder does not read its link (8b) and
     * the link's socket is full, calls of the loop waiting behind it: the
     * call reads the answers while it waits to write, so the key holder
     * reads again and the call is answered (503 here: the flood fills the
     * key holder's queue), instead of each side waiting for the other
     * until the call's timeout (a failed TLS handshake). */
    {
        size_t frames = 0, queued = 0;
        struct event_base *eb = event_base_new();
        khlink *kl = eb != NULL ? khlink_new(eb, 10) : NULL;
        int dfd = -1, answered = 0;
        size_t sent = flood_unread(l0[0], 64u << 20, &frames);
        if (kl != NULL && (dfd = dup(l0[0])) >= 0 && khlink_attach(kl, dfd) == 0) {
            ipc_msg sm;
            /* As many as the link holds (holder.h: 4096 frames), then
             * the loop's turns that write them: what the socket does
             * not take waits in the link's output, ahead of the call. */
            for (; queued < 65536; queued++) {
                ipc_begin(&b, IPC_HEALTH, 0);
                if (khlink_call(kl, &b, ignore_answer, NULL) != 0)
                    break;
            }
            for (int i = 0; i < 4; i++)
                (void)event_base_loop(eb, EVLOOP_NONBLOCK);
            ipc_begin(&b, IPC_HEALTH, 0);
            answered = queued >= 4096 && khlink_call_sync(kl, &b, 5000, &sm) == 0;
        }
        CHECK(sent > 0 && answered, "a synchronous call on a link the key holder stopped reading is answered");
        khlink_free(kl);
        if (eb != NULL)
            event_base_free(eb);
        drain_link(l0[0]); /* the answers to the flood and to the calls */
        (void)fcntl(l0[0], F_SETFL, fcntl(l0[0], F_GETFL) & ~O_NONBLOCK); /* the dup shared it */
    }
    /* 8d. A synchronous call's read takes in, past its own answer, the
     * answer of a call of the loop sent right after it (a TLS handshake's
     * signature while unwraps are answered): the loop delivers that one
     * too, not only once the key holder next writes (on an idle server,
     * never: that request timed out). A stand-in key holder, a socket
     * pair, writes both answers at once. */
    {
        int kh_end[2] = {-1, -1};
        unsigned async_status = 0;
        struct event_base *eb = event_base_new();
        khlink *kl = eb != NULL ? khlink_new(eb, 10) : NULL;
        ipc_msg sm;
        if (kl != NULL && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, kh_end) == 0 &&
            khlink_attach(kl, kh_end[0]) == 0) {
            ipc_begin(&b, IPC_HEALTH, 0);
            /* cookies: 1 the loop's call, 2 the synchronous one */
            if (khlink_call(kl, &b, note_status, &async_status) == 0 &&
                write_answer(kh_end[1], &b, IPC_HEALTH, 2, 200) == 0 &&
                write_answer(kh_end[1], &b, IPC_HEALTH, 1, 200) == 0) {
                ipc_begin(&b, IPC_HEALTH, 0);
                if (khlink_call_sync(kl, &b, 5000, &sm) == 0)
                    for (int i = 0; i < 10 && async_status == 0; i++)
                        (void)event_base_loop(eb, EVLOOP_NONBLOCK);
            }
        } /* else khlink_attach closed kh_end[0] */
        CHECK(async_status == 200, "an answer read by a synchronous call past its own reaches its call (status %u)",
              async_status);
        khlink_free(kl);
        if (kh_end[1] >= 0)
            close(kh_end[1]);
        if (eb != NULL)
            event_base_free(eb);
    }
    /* 8e. The key holder answers a call of the loop and then dies (kill
     * -9, a crash) while a synchronous call waits: the call reads that
     * answer and the link's end, and fails. The answer it read is still
     * the loop's: its call gets it (a REST removal the key holder made is
     * answered as made), not the NULL of a link that went down first. */
    {
        int kh_end[2] = {-1, -1};
        unsigned async_status = 0;
        struct event_base *eb = event_base_new();
        khlink *kl = eb != NULL ? khlink_new(eb, 10) : NULL;
        ipc_msg sm;
        int sync_rc = 0;
        if (kl != NULL && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, kh_end) == 0 &&
            khlink_attach(kl, kh_end[0]) == 0) {
            ipc_begin(&b, IPC_HEALTH, 0);
            /* cookie 1: the loop's call; the synchronous one (2) is never answered */
            if (khlink_call(kl, &b, note_status, &async_status) == 0 &&
                write_answer(kh_end[1], &b, IPC_HEALTH, 1, 200) == 0 && shutdown(kh_end[1], SHUT_WR) == 0) {
                /* Its end as a dying key holder's, after the call's
                 * frame was written: the answer, then end of file. */
                ipc_begin(&b, IPC_HEALTH, 0);
                sync_rc = khlink_call_sync(kl, &b, 5000, &sm);
                for (int i = 0; i < 10 && async_status == 0; i++)
                    (void)event_base_loop(eb, EVLOOP_NONBLOCK);
            }
        } /* else khlink_attach closed kh_end[0] */
        CHECK(sync_rc != 0 && async_status == 200,
              "an answer read with the key holder's end by a synchronous call reaches its call (%d, %u)",
              sync_rc, async_status);
        khlink_free(kl);
        if (kh_end[1] >= 0)
            close(kh_end[1]);
        if (eb != NULL)
            event_base_free(eb);
    }
    /* 9. A half frame, then the link closes: the key holder stays up. */
    unwrap_frame(&b, 20, argv[3], "eng", ek, ek_len);
    write_all(l0[0], b.p, b.len / 2);
    close(l0[0]);
    l0[0] = -1;
    usleep(200000);
    CHECK(waitpid(pid, NULL, WNOHANG) == 0, "a link closed mid-frame does not stop the key holder");
out:
    if (pid > 0)
        stop_keyholder(pid);
    ipc_buf_free(&b);
    ipc_reader_free(&rd0);
    ipc_reader_free(&rd1);
    env_recipient_free(ri);
    free(ri_der);
    OPENSSL_free(spki);
    gs_config_free(cfg);
    return failed;
}
