/*
 * test_ipc.c: the frame format between the server's processes
 * (groupsrv/ipc.c): what encodes decodes back; every malformed field,
 * frame and schema violation is refused; descriptors passed over a
 * control channel arrive with their frames; libevent framing; the network
 * process's link (holder.c) takes an answer only of its call's type.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include "holder.h"
#include "ipc.h"
#include "metrics.h"
#include "util.h"

/* A finished frame's payload. */
static const unsigned char *payload(const ipc_buf *b, size_t *len)
{
    *len = b->len - IPC_HDR_LEN;
    return b->p + IPC_HDR_LEN;
}

static void unwrap_request(ipc_buf *b)
{
    static const unsigned char ek[256] = {1, 2, 3};
    ipc_begin(b, IPC_UNWRAP, 7);
    ipc_put_str(b, IPC_T_REQUEST_ID, "00112233aabbccdd");
    ipc_put_u32(b, IPC_T_CALLER, IPC_CALLER_IDENTITY);
    ipc_put_str(b, IPC_T_IDENTITY, "alice@example.org");
    ipc_put_str(b, IPC_T_GROUP, "eng");
    for (int i = 0; i < 3; i++) {
        ipc_nest_begin(b, IPC_T_ITEM);
        ipc_put_u32(b, IPC_T_DELIVER, IPC_DELIVER_TLS);
        ipc_put_u32(b, IPC_T_ALG, IPC_ALG_OAEP_SHA1);
        ipc_put_u32(b, IPC_T_KEY_VERSION, (uint32_t)i + 1);
        ipc_put_bytes(b, IPC_T_ENC_KEY, ek, sizeof(ek));
        ipc_nest_end(b);
    }
    assert_int_equal(ipc_end(b), IPC_OK);
}

static void test_roundtrip(void **state)
{
    ipc_buf b;
    ipc_msg m, item;
    ipc_iter it;
    uint32_t type, plen;
    uint64_t cookie;
    size_t len;
    (void)state;

    ipc_buf_init(&b);
    unwrap_request(&b);
    assert_int_equal(ipc_header(b.p, &type, &plen, &cookie), IPC_OK);
    assert_int_equal(type, IPC_UNWRAP);
    assert_int_equal(cookie, 7);
    assert_int_equal(plen, b.len - IPC_HDR_LEN);
    const unsigned char *p = payload(&b, &len);
    assert_int_equal(ipc_decode(type, cookie, p, len, &m), IPC_OK);
    assert_string_equal(ipc_str(&m, IPC_T_IDENTITY), "alice@example.org");
    assert_string_equal(ipc_str(&m, IPC_T_GROUP), "eng");
    assert_int_equal(ipc_u32(&m, IPC_T_CALLER, 0), IPC_CALLER_IDENTITY);
    assert_false(ipc_has(&m, IPC_T_SPKI));
    assert_int_equal(m.count[IPC_T_ITEM], 3);
    ipc_iter_init(&it, &m, IPC_T_ITEM);
    for (uint32_t i = 1; i <= 3; i++) {
        const unsigned char *ek;
        size_t el;
        assert_int_equal(ipc_iter_next(&it, NULL, &item), 1);
        assert_int_equal(ipc_u32(&item, IPC_T_KEY_VERSION, 0), i);
        assert_int_equal(ipc_bytes(&item, IPC_T_ENC_KEY, &ek, &el), 0);
        assert_int_equal(el, 256);
        assert_int_equal(ek[2], 3);
    }
    assert_int_equal(ipc_iter_next(&it, NULL, &item), 0);
    /* A new cookie in place. */
    ipc_set_cookie(&b, 99);
    assert_int_equal(ipc_header(b.p, &type, &plen, &cookie), IPC_OK);
    assert_int_equal(cookie, 99);
    ipc_buf_free(&b);
}

/* Payload bytes built by hand: tag, length, value. */
struct raw {
    unsigned char p[512];
    size_t n;
};

static void raw_field(struct raw *r, uint16_t tag, const void *v, uint32_t len)
{
    memcpy(r->p + r->n, &tag, 2);
    memcpy(r->p + r->n + 2, &len, 4);
    memcpy(r->p + r->n + 6, v, len);
    r->n += 6 + len;
}

static int decode_raw(uint32_t type, const struct raw *r)
{
    ipc_msg m;
    return ipc_decode(type, 1, r->p, r->n, &m);
}

static void test_refusals(void **state)
{
    struct raw r;
    uint32_t one = 1;
    uint64_t big = 1;
    (void)state;

    /* The minimum that passes, as a reference. */
    memset(&r, 0, sizeof(r));
    raw_field(&r, IPC_T_DIGEST, "0123456789abcdefghij", 20);
    assert_int_equal(decode_raw(IPC_SIGN, &r), IPC_OK);

    assert_int_equal(decode_raw(0, &r), IPC_E_TYPE);
    assert_int_equal(decode_raw(IPC_REQ_END, &r), IPC_E_TYPE);
    assert_int_equal(decode_raw(0x7777, &r), IPC_E_TYPE);
    assert_int_equal(decode_raw(IPC_CTL_END, &r), IPC_E_TYPE);

    /* Required field missing. */
    memset(&r, 0, sizeof(r));
    assert_int_equal(decode_raw(IPC_SIGN, &r), IPC_E_MISSING);
    /* A tag the type does not allow, an unknown tag, tag 0. */
    raw_field(&r, IPC_T_DIGEST, "0123456789abcdefghij", 20);
    raw_field(&r, IPC_T_GROUP, "eng", 4);
    assert_int_equal(decode_raw(IPC_SIGN, &r), IPC_E_FIELD);
    memset(&r, 0, sizeof(r));
    raw_field(&r, IPC_T_COUNT, "x", 1);
    assert_int_equal(decode_raw(IPC_HEALTH, &r), IPC_E_FIELD);
    memset(&r, 0, sizeof(r));
    raw_field(&r, IPC_T_NONE, "x", 1);
    assert_int_equal(decode_raw(IPC_HEALTH, &r), IPC_E_FIELD);
    /* Duplicate of a non-repeated field. */
    memset(&r, 0, sizeof(r));
    raw_field(&r, IPC_T_DIGEST, "0123456789abcdefghij", 20);
    raw_field(&r, IPC_T_DIGEST, "0123456789abcdefghij", 20);
    assert_int_equal(decode_raw(IPC_SIGN, &r), IPC_E_FIELD);
    /* Over the cap (a digest is at most 64 bytes). */
    memset(&r, 0, sizeof(r));
    unsigned char d[65] = {0};
    raw_field(&r, IPC_T_DIGEST, d, 65);
    assert_int_equal(decode_raw(IPC_SIGN, &r), IPC_E_FIELD);
    /* Integers of the wrong width. */
    memset(&r, 0, sizeof(r));
    raw_field(&r, IPC_T_FLAGS, &big, 8);
    assert_int_equal(decode_raw(IPC_INFO, &r), IPC_E_FIELD);
    memset(&r, 0, sizeof(r));
    raw_field(&r, IPC_T_FLAGS, &one, 2);
    assert_int_equal(decode_raw(IPC_INFO, &r), IPC_E_FIELD);
    /* Strings: no NUL, a NUL inside, a control byte, empty. */
    const char *bad_strings[] = {"abc", "a\0c", "a\nc", ""};
    const uint32_t lens[] = {3, 4, 4, 0};
    for (size_t i = 0; i < 4; i++) {
        memset(&r, 0, sizeof(r));
        raw_field(&r, IPC_T_GROUP, bad_strings[i], lens[i]);
        assert_int_equal(decode_raw(IPC_VIEW, &r), IPC_E_FIELD);
    }
    memset(&r, 0, sizeof(r));
    raw_field(&r, IPC_T_GROUP, "eng", 4);
    assert_int_equal(decode_raw(IPC_VIEW, &r), IPC_OK);
    /* A request id: letters, digits, '-', '_', '.'; nothing else (it is
     * audited and logged as it is). */
    const char *bad_ids[] = {"\xc3\x28", "ab cd", "a\"b", "a=b", ""};
    for (size_t i = 0; i < sizeof(bad_ids) / sizeof(bad_ids[0]); i++) {
        memset(&r, 0, sizeof(r));
        raw_field(&r, IPC_T_REQUEST_ID, bad_ids[i], (uint32_t)strlen(bad_ids[i]) + 1);
        raw_field(&r, IPC_T_GROUP, "eng", 4);
        assert_int_equal(decode_raw(IPC_VIEW, &r), IPC_E_FIELD);
    }
    memset(&r, 0, sizeof(r));
    raw_field(&r, IPC_T_REQUEST_ID, "00ff-A_b.9", 11);
    raw_field(&r, IPC_T_GROUP, "eng", 4);
    assert_int_equal(decode_raw(IPC_VIEW, &r), IPC_OK);
    /* Truncated: a field header cut short, a length beyond the payload. */
    r.n -= 1;
    assert_int_equal(decode_raw(IPC_VIEW, &r), IPC_E_FIELD);
    memset(&r, 0, sizeof(r));
    raw_field(&r, IPC_T_GROUP, "eng", 4);
    uint32_t over = 5000;
    memcpy(r.p + 2, &over, 4);
    assert_int_equal(decode_raw(IPC_VIEW, &r), IPC_E_FIELD);
    memset(&r, 0, sizeof(r));
    raw_field(&r, IPC_T_GROUP, "eng", 4);
    r.p[r.n++] = 0; /* a trailing byte */
    assert_int_equal(decode_raw(IPC_VIEW, &r), IPC_E_FIELD);
    /* Nested: a field not allowed inside, nesting twice, a required one missing. */
    struct raw inner;
    memset(&inner, 0, sizeof(inner));
    raw_field(&inner, IPC_T_DELIVER, &one, 4);
    raw_field(&inner, IPC_T_ALG, &one, 4);
    raw_field(&inner, IPC_T_GROUP, "eng", 4);
    memset(&r, 0, sizeof(r));
    raw_field(&r, IPC_T_CALLER, &one, 4);
    raw_field(&r, IPC_T_IDENTITY, "a@b.c", 6);
    raw_field(&r, IPC_T_GROUP, "eng", 4);
    raw_field(&r, IPC_T_ITEM, inner.p, (uint32_t)inner.n);
    assert_int_equal(decode_raw(IPC_UNWRAP, &r), IPC_E_FIELD);
    memset(&inner, 0, sizeof(inner));
    raw_field(&inner, IPC_T_DELIVER, &one, 4);
    memset(&r, 0, sizeof(r));
    raw_field(&r, IPC_T_CALLER, &one, 4);
    raw_field(&r, IPC_T_IDENTITY, "a@b.c", 6);
    raw_field(&r, IPC_T_GROUP, "eng", 4);
    raw_field(&r, IPC_T_ITEM, inner.p, (uint32_t)inner.n);
    assert_int_equal(decode_raw(IPC_UNWRAP, &r), IPC_E_MISSING);
    /* Frame header over the cap. */
    unsigned char hdr[IPC_HDR_LEN] = {0};
    uint32_t t = IPC_SIGN, huge = IPC_MAX_PAYLOAD + 1, plen;
    uint64_t cookie;
    memcpy(hdr, &t, 4);
    memcpy(hdr + 4, &huge, 4);
    assert_int_equal(ipc_header(hdr, &t, &plen, &cookie), IPC_E_FRAME);
}

static void test_encoder_caps(void **state)
{
    ipc_buf b;
    unsigned char big[300];
    (void)state;

    memset(big, 'a', sizeof(big));
    big[sizeof(big) - 1] = '\0';
    ipc_buf_init(&b);
    ipc_begin(&b, IPC_VIEW, 1);
    ipc_put_str(&b, IPC_T_GROUP, (const char *)big); /* a group name is at most 64 */
    assert_int_equal(ipc_end(&b), IPC_E_FIELD);
    ipc_begin(&b, IPC_UNWRAP, 1);
    ipc_nest_begin(&b, IPC_T_ITEM);
    assert_int_equal(ipc_end(&b), IPC_E_FIELD); /* unclosed */
    ipc_begin(&b, IPC_UNWRAP, 1);
    ipc_nest_begin(&b, IPC_T_ITEM);
    ipc_nest_begin(&b, IPC_T_ITEM);
    ipc_nest_end(&b);
    assert_int_equal(ipc_end(&b), IPC_E_FIELD); /* nested twice */
    ipc_buf_free(&b);
}

/* A group view's key policy (discovery's "key_policy", issue 13) travels
 * as text in the VIEW answer only, within its cap. */
static void test_view_key_policy(void **state)
{
    static const char policy[] = "{\"rewrap\":\"software\",\"secret_keys\":\"sealed\",\"rejection_key\":\"token\","
                                 "\"weakenings\":[\"software-rewrap\",\"secret-sealed\"]}";
    char big[600];
    ipc_buf b;
    ipc_msg m;
    size_t len;
    (void)state;

    ipc_buf_init(&b);
    ipc_begin(&b, IPC_VIEW | IPC_REPLY, 3);
    ipc_put_u32(&b, IPC_T_STATUS, 200);
    ipc_put_str(&b, IPC_T_KEY_POLICY, policy);
    assert_int_equal(ipc_end(&b), IPC_OK);
    const unsigned char *p = payload(&b, &len);
    assert_int_equal(ipc_decode(IPC_VIEW | IPC_REPLY, 3, p, len, &m), IPC_OK);
    assert_string_equal(ipc_str(&m, IPC_T_KEY_POLICY), policy);
    /* Not in a request: the network process does not tell the key holder a policy. */
    ipc_begin(&b, IPC_VIEW, 4);
    ipc_put_str(&b, IPC_T_GROUP, "eng");
    ipc_put_str(&b, IPC_T_KEY_POLICY, policy);
    if (ipc_end(&b) == IPC_OK) {
        p = payload(&b, &len);
        assert_int_not_equal(ipc_decode(IPC_VIEW, 4, p, len, &m), IPC_OK);
    }
    /* At most 511 bytes of text. */
    memset(big, 'a', sizeof(big));
    big[sizeof(big) - 1] = '\0';
    ipc_begin(&b, IPC_VIEW | IPC_REPLY, 5);
    ipc_put_u32(&b, IPC_T_STATUS, 200);
    ipc_put_str(&b, IPC_T_KEY_POLICY, big);
    assert_int_equal(ipc_end(&b), IPC_E_FIELD);
    ipc_buf_free(&b);
}

/* The fields main's issues 14 and 17 added: a member's wrap (member
 * record, member put, group create and view), the key transports of a
 * view (an answer only), each member's address beside its RecipientInfo
 * in a rewrap answer, and the new key version a member removal made. */
static void test_wrap_transports_members(void **state)
{
    static const unsigned char der[64] = {0x30, 0x3e};
    ipc_buf b;
    ipc_msg m, sub;
    ipc_iter it;
    ipc_val v;
    size_t len;
    const unsigned char *p;
    (void)state;

    ipc_buf_init(&b);
    ipc_begin(&b, IPC_VIEW | IPC_REPLY, 1);
    ipc_put_u32(&b, IPC_T_STATUS, 200);
    ipc_put_u32(&b, IPC_T_WRAP, 2);
    ipc_put_u32(&b, IPC_T_KEY_TRANSPORTS, IPC_KT_OAEP | IPC_KT_PKCS1V15);
    assert_int_equal(ipc_end(&b), IPC_OK);
    p = payload(&b, &len);
    assert_int_equal(ipc_decode(IPC_VIEW | IPC_REPLY, 1, p, len, &m), IPC_OK);
    assert_int_equal(ipc_u32(&m, IPC_T_KEY_TRANSPORTS, 0), IPC_KT_OAEP | IPC_KT_PKCS1V15);
    assert_int_equal(ipc_u32(&m, IPC_T_WRAP, 0), 2);
    /* The network process cannot tell the key holder what a key accepts. */
    ipc_begin(&b, IPC_VIEW, 2);
    ipc_put_str(&b, IPC_T_GROUP, "eng");
    ipc_put_u32(&b, IPC_T_KEY_TRANSPORTS, IPC_KT_PKCS1V15);
    assert_int_equal(ipc_end(&b), IPC_OK);
    p = payload(&b, &len);
    assert_int_equal(ipc_decode(IPC_VIEW, 2, p, len, &m), IPC_E_FIELD);

    ipc_begin(&b, IPC_MEMBER_PUT, 3);
    ipc_put_u32(&b, IPC_T_CALLER, IPC_CALLER_IDENTITY);
    ipc_put_str(&b, IPC_T_IDENTITY, "admin@example.org");
    ipc_put_str(&b, IPC_T_GROUP, "eng");
    ipc_put_str(&b, IPC_T_EMAIL, "bob@example.org");
    ipc_put_u32(&b, IPC_T_WRAP, 1);
    assert_int_equal(ipc_end(&b), IPC_OK);
    p = payload(&b, &len);
    assert_int_equal(ipc_decode(IPC_MEMBER_PUT, 3, p, len, &m), IPC_OK);
    assert_int_equal(ipc_u32(&m, IPC_T_WRAP, 0), 1);

    ipc_begin(&b, IPC_MEMBERS | IPC_REPLY, 4);
    ipc_put_u32(&b, IPC_T_STATUS, 200);
    ipc_nest_begin(&b, IPC_T_MEMBER);
    ipc_put_str(&b, IPC_T_EMAIL, "bob@example.org");
    ipc_put_u32(&b, IPC_T_ROLE, 1);
    ipc_put_u32(&b, IPC_T_WRAP, 2);
    ipc_nest_end(&b);
    assert_int_equal(ipc_end(&b), IPC_OK);
    p = payload(&b, &len);
    assert_int_equal(ipc_decode(IPC_MEMBERS | IPC_REPLY, 4, p, len, &m), IPC_OK);
    ipc_iter_init(&it, &m, IPC_T_MEMBER);
    assert_int_equal(ipc_iter_next(&it, NULL, &sub), 1);
    assert_int_equal(ipc_u32(&sub, IPC_T_WRAP, 0), 2);

    /* members: a RecipientInfo and an address each, in order */
    ipc_begin(&b, IPC_REWRAP | IPC_REPLY, 5);
    ipc_put_u32(&b, IPC_T_STATUS, 200);
    ipc_put_u32(&b, IPC_T_KEY_VERSION, 1);
    ipc_put_bytes(&b, IPC_T_DER, der, sizeof(der));
    ipc_put_str(&b, IPC_T_EMAIL, "alice@example.org");
    ipc_put_bytes(&b, IPC_T_DER, der, sizeof(der));
    ipc_put_str(&b, IPC_T_EMAIL, "bob@example.org");
    assert_int_equal(ipc_end(&b), IPC_OK);
    p = payload(&b, &len);
    assert_int_equal(ipc_decode(IPC_REWRAP | IPC_REPLY, 5, p, len, &m), IPC_OK);
    assert_int_equal(m.count[IPC_T_DER], 2);
    assert_int_equal(m.count[IPC_T_EMAIL], 2);
    ipc_iter_init(&it, &m, IPC_T_EMAIL);
    assert_int_equal(ipc_iter_next(&it, &v, NULL), 1);
    assert_string_equal((const char *)v.p, "alice@example.org");
    assert_int_equal(ipc_iter_next(&it, &v, NULL), 1);
    assert_string_equal((const char *)v.p, "bob@example.org");
    assert_int_equal(ipc_iter_next(&it, &v, NULL), 0);
    /* an address is still an address: no control bytes, within its cap */
    ipc_begin(&b, IPC_REWRAP | IPC_REPLY, 6);
    ipc_put_u32(&b, IPC_T_STATUS, 200);
    ipc_put_str(&b, IPC_T_EMAIL, "bob\n@example.org");
    assert_int_equal(ipc_end(&b), IPC_OK);
    p = payload(&b, &len);
    assert_int_equal(ipc_decode(IPC_REWRAP | IPC_REPLY, 6, p, len, &m), IPC_E_FIELD);

    ipc_begin(&b, IPC_MEMBER_DELETE | IPC_REPLY, 7);
    ipc_put_u32(&b, IPC_T_STATUS, 200);
    ipc_put_u32(&b, IPC_T_SECRET_VERSION, 3);
    ipc_put_u32(&b, IPC_T_KEY_VERSION, 2);
    assert_int_equal(ipc_end(&b), IPC_OK);
    p = payload(&b, &len);
    assert_int_equal(ipc_decode(IPC_MEMBER_DELETE | IPC_REPLY, 7, p, len, &m), IPC_OK);
    assert_int_equal(ipc_u32(&m, IPC_T_KEY_VERSION, 0), 2);
    ipc_buf_free(&b);
}

/* A control channel (a blocking socket) whose peer reads nothing: the
 * write gives up after its timeout instead of blocking for ever (the
 * supervisor, writing to a network process that stopped reading, must
 * not hang). alarm(): without the timeout this test would hang, so it
 * fails by SIGALRM instead. */
static void test_write_frame_timeout(void **state)
{
    int sv[2];
    ipc_buf b;
    unsigned char *big = calloc(1, 4u << 20);
    (void)state;

    assert_non_null(big);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ipc_buf_init(&b);
    ipc_begin(&b, IPC_CTL_TLS, 0);
    ipc_put_bytes(&b, IPC_T_CERT_PEM, "x", 1);
    ipc_put_bytes(&b, IPC_T_CA_PEM, big, 4u << 20); /* more than the socket takes */
    assert_int_equal(ipc_end(&b), IPC_OK);
    alarm(10);
    assert_int_equal(ipc_write_frame(sv[0], &b, -1, 100), IPC_E_TIMEOUT);
    alarm(0);
    ipc_buf_free(&b);
    free(big);
    close(sv[0]);
    close(sv[1]);
}

/* A peer that reads, but slowly: 32 KiB every 50 ms, until the end. */
static void *slow_reader(void *arg)
{
    int fd = *(int *)arg;
    unsigned char buf[32768];
    const struct timespec pause = {0, 50 * 1000 * 1000};

    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n == 0 || (n < 0 && errno != EINTR))
            break;
        (void)nanosleep(&pause, NULL);
    }
    return NULL;
}

/* The timeout is for the whole frame: a peer that takes a little before
 * each wait would time out (a network process reading its control
 * channel slowly) held the writer for every wait in turn, here about 13 s
 * for 8 MiB (minutes for the largest TLS frame) instead of the 1 s
 * given. */
static void test_write_frame_timeout_slow_reader(void **state)
{
    int sv[2];
    ipc_buf b;
    pthread_t th;
    const size_t size = 8u << 20;
    unsigned char *big = calloc(1, size);
    (void)state;

    assert_non_null(big);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(pthread_create(&th, NULL, slow_reader, &sv[1]), 0);
    ipc_buf_init(&b);
    ipc_begin(&b, IPC_CTL_TLS, 0);
    ipc_put_bytes(&b, IPC_T_CERT_PEM, "x", 1);
    ipc_put_bytes(&b, IPC_T_CA_PEM, big, size);
    assert_int_equal(ipc_end(&b), IPC_OK);
    int rc = ipc_write_frame(sv[0], &b, -1, 1000);
    close(sv[0]); /* the reader reads to the end, then stops */
    assert_int_equal(pthread_join(th, NULL), 0);
    close(sv[1]);
    ipc_buf_free(&b);
    free(big);
    assert_int_equal(rc, IPC_E_TIMEOUT);
}

/* Frames and descriptors over a stream socket, as the supervisor sends
 * them: each descriptor is taken with its frame. */
static void test_control_channel(void **state)
{
    int sv[2], pipefd[2], pipefd2[2];
    ipc_buf b;
    ipc_reader rd;
    const unsigned char *frame;
    size_t flen;
    int got = 0;
    (void)state;

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(pipe(pipefd), 0);
    assert_int_equal(pipe(pipefd2), 0);
    ipc_buf_init(&b);
    ipc_begin(&b, IPC_CTL_CONFIG, 0);
    ipc_put_bytes(&b, IPC_T_TEXT, "[server]\n", 9);
    assert_int_equal(ipc_end(&b), IPC_OK);
    assert_int_equal(ipc_write_frame(sv[0], &b, -1, 1000), IPC_OK);
    for (uint32_t i = 0; i < 2; i++) {
        ipc_begin(&b, IPC_CTL_LINK, 0);
        ipc_put_u32(&b, IPC_T_INDEX, i);
        assert_int_equal(ipc_end(&b), IPC_OK);
        assert_int_equal(ipc_write_frame(sv[0], &b, i == 0 ? pipefd[0] : pipefd2[0], 1000), IPC_OK);
    }
    close(sv[0]);
    ipc_reader_init(&rd);
    for (;;) {
        int rc = ipc_reader_peek(&rd, &frame, &flen);
        assert_true(rc >= 0);
        if (rc == 0) {
            rc = ipc_reader_fill(&rd, sv[1]);
            if (rc == IPC_E_CLOSED)
                break;
            assert_int_equal(rc, IPC_OK);
            continue;
        }
        uint32_t type, plen;
        uint64_t cookie;
        ipc_msg m;
        ipc_header(frame, &type, &plen, &cookie);
        assert_int_equal(ipc_decode(type, cookie, frame + IPC_HDR_LEN, plen, &m), IPC_OK);
        if (type == IPC_CTL_LINK) {
            int fd = ipc_reader_take_fd(&rd);
            assert_true(fd >= 0);
            /* The descriptor is the pipe it was sent as. */
            int w = ipc_u32(&m, IPC_T_INDEX, 9) == 0 ? pipefd[1] : pipefd2[1];
            char c = 'x';
            assert_int_equal(write(w, &c, 1), 1);
            assert_int_equal(read(fd, &c, 1), 1);
            close(fd);
            got++;
        }
        ipc_reader_consume(&rd, flen);
    }
    assert_int_equal(got, 2);
    assert_int_equal(ipc_reader_take_fd(&rd), -1);
    ipc_reader_free(&rd);
    ipc_buf_free(&b);
    close(sv[1]);
    close(pipefd[0]);
    close(pipefd[1]);
    close(pipefd2[0]);
    close(pipefd2[1]);
}

/* libevent framing: partial frames wait, whole ones come out in order,
 * an unusable header is reported. */
static void test_evbuffer(void **state)
{
    struct evbuffer *in = evbuffer_new();
    ipc_buf b;
    uint32_t type;
    uint64_t cookie;
    unsigned char *p;
    size_t len;
    (void)state;

    ipc_buf_init(&b);
    unwrap_request(&b);
    evbuffer_add(in, b.p, 10);
    assert_int_equal(ipc_ev_next(in, &type, &cookie, &p, &len), 0);
    evbuffer_add(in, b.p + 10, b.len - 10);
    evbuffer_add(in, b.p, b.len);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(ipc_ev_next(in, &type, &cookie, &p, &len), 1);
        assert_int_equal(type, IPC_UNWRAP);
        assert_int_equal(len, b.len - IPC_HDR_LEN);
        ipc_payload_free(p, len);
    }
    assert_int_equal(ipc_ev_next(in, &type, &cookie, &p, &len), 0);
    uint32_t huge = IPC_MAX_PAYLOAD + 1;
    memcpy(b.p + 4, &huge, 4);
    evbuffer_add(in, b.p, IPC_HDR_LEN);
    assert_int_equal(ipc_ev_next(in, &type, &cookie, &p, &len), IPC_E_FRAME);
    evbuffer_free(in);
    ipc_buf_free(&b);
}

/* ipc_ev_queue moves two frames into one buffer without writing them:
 * they come out whole and in order, and b is left empty each time. */
static void test_ev_queue(void **state)
{
    struct evbuffer *out = evbuffer_new();
    ipc_buf b;
    uint32_t type;
    uint64_t cookie;
    unsigned char *p;
    size_t len, one;
    (void)state;

    ipc_buf_init(&b);
    for (int i = 0; i < 2; i++) {
        unwrap_request(&b);
        one = b.len;
        assert_int_equal(ipc_ev_queue(out, &b), IPC_OK);
        assert_null(b.p);
        assert_int_equal(b.len, 0);
    }
    assert_int_equal(evbuffer_get_length(out), 2 * one);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(ipc_ev_next(out, &type, &cookie, &p, &len), 1);
        assert_int_equal(type, IPC_UNWRAP);
        ipc_payload_free(p, len);
    }
    assert_int_equal(evbuffer_get_length(out), 0);
    evbuffer_free(out);
}

/* ipc_ev_write writes at once while the socket takes it, keeps the rest
 * (and everything after it, in order) for EV_WRITE; ipc_ev_fill reads it. */
static void test_ev_write_fill(void **state)
{
    struct evbuffer *out = evbuffer_new(), *in = evbuffer_new();
    int sv[2], queued = 0, sent = 0, got = 0, rc;
    int small = 4096;
    ipc_buf b;
    (void)state;

    signal(SIGPIPE, SIG_IGN);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    ipc_buf_init(&b);
    /* Until the socket is full and a frame has to wait, then two more. */
    while (queued < 3) {
        unwrap_request(&b);
        ipc_set_cookie(&b, (uint64_t)sent);
        rc = ipc_ev_write(sv[0], out, &b);
        assert_true(rc == 0 || rc == 1);
        assert_null(b.p);
        if (rc == 1)
            queued++;
        else
            assert_int_equal(queued, 0); /* nothing jumps the queue */
        sent++;
    }
    assert_true(evbuffer_get_length(out) > 0);
    /* The reader takes everything, in order, while out is flushed. */
    while (got < sent) {
        if (evbuffer_get_length(out) > 0)
            evbuffer_write(out, sv[0]);
        assert_int_equal(ipc_ev_fill(sv[1], in), IPC_OK);
        for (;;) {
            uint32_t type;
            uint64_t cookie;
            unsigned char *p;
            size_t len;
            rc = ipc_ev_next(in, &type, &cookie, &p, &len);
            if (rc == 0)
                break;
            assert_int_equal(rc, 1);
            assert_int_equal(cookie, (uint64_t)got);
            ipc_payload_free(p, len);
            got++;
        }
    }
    assert_int_equal(evbuffer_get_length(out), 0);
    /* Nothing to read is not an error; a closed peer is. */
    assert_int_equal(ipc_ev_fill(sv[1], in), IPC_OK);
    close(sv[0]);
    assert_int_equal(ipc_ev_fill(sv[1], in), IPC_E_CLOSED);
    unwrap_request(&b);
    assert_int_equal(ipc_ev_write(sv[1], out, &b), IPC_E_IO);
    assert_null(b.p);
    assert_int_equal(evbuffer_get_length(out), 0);
    close(sv[1]);
    evbuffer_free(out);
    evbuffer_free(in);
}

/* ipc_ev_read_frames: whole frames to the callback in order, a partial
 * one kept for the next read, a callback that closed its link stops the
 * loop, an unusable header or a closed peer ends the link. */
struct seen {
    int n, stop_after;
    uint64_t cookies[8];
};

static int on_frame(void *arg, uint32_t type, uint64_t cookie, unsigned char *p, size_t len)
{
    struct seen *s = arg;

    assert_int_equal(type, IPC_UNWRAP);
    ipc_payload_free(p, len);
    if (s->n < 8)
        s->cookies[s->n] = cookie;
    s->n++;
    return s->stop_after > 0 && s->n == s->stop_after;
}

static void test_read_frames(void **state)
{
    struct evbuffer *in = evbuffer_new();
    struct seen seen;
    int sv[2];
    ipc_buf b;
    (void)state;

    memset(&seen, 0, sizeof(seen));
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    ipc_buf_init(&b);
    /* Two whole frames and the start of a third. */
    for (uint64_t c = 1; c <= 3; c++) {
        unwrap_request(&b);
        ipc_set_cookie(&b, c);
        size_t n = c == 3 ? 20 : b.len;
        assert_int_equal(write(sv[0], b.p, n), (ssize_t)n);
        if (c == 3) {
            assert_int_equal(ipc_ev_read_frames(sv[1], in, on_frame, &seen), IPC_OK);
            assert_int_equal(seen.n, 2);
            assert_int_equal(write(sv[0], b.p + 20, b.len - 20), (ssize_t)(b.len - 20));
        }
    }
    assert_int_equal(ipc_ev_read_frames(sv[1], in, on_frame, &seen), IPC_OK);
    assert_int_equal(seen.n, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(seen.cookies[i], (uint64_t)i + 1);
    /* The callback closed the link after the first of two: the second stays. */
    seen.n = 0;
    seen.stop_after = 1;
    for (int i = 0; i < 2; i++) {
        unwrap_request(&b);
        assert_int_equal(write(sv[0], b.p, b.len), (ssize_t)b.len);
    }
    assert_int_equal(ipc_ev_read_frames(sv[1], in, on_frame, &seen), IPC_OK);
    assert_int_equal(seen.n, 1);
    assert_true(evbuffer_get_length(in) > 0);
    evbuffer_drain(in, evbuffer_get_length(in));
    /* An unusable header, then a closed peer. */
    seen.stop_after = 0;
    unwrap_request(&b);
    uint32_t huge = IPC_MAX_PAYLOAD + 1;
    memcpy(b.p + 4, &huge, 4);
    assert_int_equal(write(sv[0], b.p, IPC_HDR_LEN), IPC_HDR_LEN);
    assert_int_equal(ipc_ev_read_frames(sv[1], in, on_frame, &seen), IPC_E_FRAME);
    evbuffer_drain(in, evbuffer_get_length(in));
    close(sv[0]);
    assert_int_equal(ipc_ev_read_frames(sv[1], in, on_frame, &seen), IPC_E_CLOSED);
    assert_int_equal(seen.n, 1);
    close(sv[1]);
    ipc_buf_free(&b);
    evbuffer_free(in);
}

/* ipc_reader_each: every frame decoded to the callback (a malformed one as
 * NULL), with its descriptor to take; an unusable header ends the channel. */
struct ctl_seen {
    ipc_reader *rd;
    int frames, malformed, fds;
};

static void on_ctl(void *arg, uint32_t type, const ipc_msg *m)
{
    struct ctl_seen *s = arg;

    s->frames++;
    if (m == NULL) {
        s->malformed++;
        return;
    }
    if (type == IPC_CTL_LINK) {
        int fd = ipc_reader_take_fd(s->rd);
        assert_true(fd >= 0);
        close(fd);
        s->fds++;
    }
}

/* The histogram a scraper reads (IPC_STATS, then /metrics): buckets
 * cumulative and the +Inf bucket (the count) not below any of them, also
 * while token workers record latencies. */
static atomic_int observing;
static void *observe_latencies(void *arg)
{
    (void)arg;
    while (atomic_load(&observing))
        metrics_unwrap_latency(0.0005);
    return NULL;
}

static void test_histogram_consistent_under_load(void **state)
{
    (void)state;
    pthread_t th[2];
    metrics_token t, back;
    unsigned char packed[METRICS_TOKEN_WORDS * 8];
    unsigned long torn = 0, max_seen = 0;

    atomic_store(&observing, 1);
    for (size_t i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, observe_latencies, NULL), 0);
    do /* the observers are running */
        metrics_token_snapshot(&t);
    while (t.lat_count < 1000);
    for (int n = 0; n < 300000; n++) {
        metrics_token_snapshot(&t);
        for (size_t i = 0; i + 1 < METRICS_LAT_BUCKETS; i++)
            torn += t.lat_bucket[i] > t.lat_bucket[i + 1];
        torn += t.lat_bucket[METRICS_LAT_BUCKETS - 1] > t.lat_count;
        max_seen = t.lat_count;
    }
    atomic_store(&observing, 0);
    for (size_t i = 0; i < 2; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_true(max_seen > 0);
    assert_int_equal(torn, 0);
    /* and what the network process renders from the packed words */
    metrics_token_snapshot(&t);
    metrics_token_pack(&t, packed);
    assert_int_equal(metrics_token_unpack(packed, sizeof(packed), &back), 0);
    assert_int_equal(back.lat_count, t.lat_count);
    assert_int_equal(back.lat_bucket[0], t.lat_count);
}

/* ---- the network process's link (holder.c): answers paired by cookie and type ---- */

struct holder_seen {
    int calls;
    uint32_t status;
};

static void holder_cb(void *arg, const ipc_msg *reply)
{
    struct holder_seen *seen = arg;
    seen->calls++;
    seen->status = reply != NULL ? ipc_u32(reply, IPC_T_STATUS, 0) : 0;
}

/* The key holder's end: one answer frame of `type` under `cookie`. */
static void holder_answer(int fd, uint32_t type, uint64_t cookie, uint32_t status)
{
    ipc_buf b;

    ipc_buf_init(&b);
    ipc_begin(&b, type, cookie);
    ipc_put_u32(&b, IPC_T_STATUS, status);
    assert_int_equal(ipc_end(&b), IPC_OK);
    assert_int_equal(ipc_write_frame(fd, &b, -1, 1000), IPC_OK);
    ipc_buf_free(&b);
}

/* The key holder's end: the header of the next request frame (its
 * payload skipped). */
static void holder_request(int fd, uint32_t *type, uint64_t *cookie)
{
    unsigned char hdr[IPC_HDR_LEN], skip[4096];
    uint32_t plen;

    assert_int_equal(read(fd, hdr, sizeof(hdr)), (ssize_t)sizeof(hdr));
    assert_int_equal(ipc_header(hdr, type, &plen, cookie), IPC_OK);
    assert_true(plen <= sizeof(skip));
    if (plen > 0)
        assert_int_equal(read(fd, skip, plen), (ssize_t)plen);
}

/* An answer is taken for a call only when its type is the call's with
 * IPC_REPLY, not for its cookie alone: an answer meant for another call
 * under the same cookie (a key holder answering a network process that
 * was replaced meanwhile, whose calls were numbered from 1 too) is
 * dropped and the call waits for its own, asynchronous calls and
 * synchronous ones alike. */
static void test_holder_answer_type(void **state)
{
    struct event_base *base = event_base_new();
    khlink *l = base != NULL ? khlink_new(base, 30) : NULL;
    struct holder_seen seen = {0, 0};
    int sv[2];
    ipc_buf b;
    ipc_msg reply;
    uint32_t type;
    uint64_t cookie;
    (void)state;

    assert_non_null(l);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(khlink_attach(l, sv[0]), 0);
    ipc_buf_init(&b);
    ipc_begin(&b, IPC_HEALTH, 0);
    assert_int_equal(khlink_call(l, &b, holder_cb, &seen), 0);
    assert_int_equal(event_base_loop(base, EVLOOP_NONBLOCK), 0); /* the frame leaves */
    holder_request(sv[1], &type, &cookie);
    assert_int_equal(type, IPC_HEALTH);
    /* Its cookie, another request's type: not its answer. */
    holder_answer(sv[1], IPC_STATS | IPC_REPLY, cookie, 500);
    for (int i = 0; i < 3; i++)
        (void)event_base_loop(base, EVLOOP_NONBLOCK);
    assert_int_equal(seen.calls, 0);
    assert_true(khlink_up(l));
    holder_answer(sv[1], IPC_HEALTH | IPC_REPLY, cookie, 200);
    for (int i = 0; i < 3 && seen.calls == 0; i++)
        (void)event_base_loop(base, EVLOOP_NONBLOCK);
    assert_int_equal(seen.calls, 1);
    assert_int_equal(seen.status, 200);

    /* A synchronous call: its cookie is the next one; a frame of
     * another type under it waits in the socket ahead of its answer. */
    holder_answer(sv[1], IPC_STATS | IPC_REPLY, cookie + 1, 500);
    holder_answer(sv[1], IPC_INFO | IPC_REPLY, cookie + 1, 200);
    ipc_begin(&b, IPC_INFO, 0);
    assert_int_equal(khlink_call_sync(l, &b, 5000, &reply), 0);
    assert_int_equal(reply.type, IPC_INFO | IPC_REPLY);
    assert_int_equal(ipc_u32(&reply, IPC_T_STATUS, 0), 200);
    holder_request(sv[1], &type, &cookie);
    assert_int_equal(type, IPC_INFO);
    for (int i = 0; i < 3; i++) /* the frame set aside: the loop drops it */
        (void)event_base_loop(base, EVLOOP_NONBLOCK);
    assert_true(khlink_up(l));
    assert_int_equal(seen.calls, 1);

    /* IPC_REPLY alone (a request type the key holder does not know) is
     * an error answer to whichever call its cookie names: the call ends. */
    ipc_begin(&b, IPC_MEMBER_PUT, 0);
    assert_int_equal(khlink_call_untimed(l, &b, holder_cb, &seen), 0);
    assert_int_equal(event_base_loop(base, EVLOOP_NONBLOCK), 0);
    holder_request(sv[1], &type, &cookie);
    assert_int_equal(type, IPC_MEMBER_PUT);
    holder_answer(sv[1], IPC_REPLY, cookie, 400);
    for (int i = 0; i < 3 && seen.calls == 1; i++)
        (void)event_base_loop(base, EVLOOP_NONBLOCK);
    assert_int_equal(seen.calls, 2);
    assert_int_equal(seen.status, 400);
    khlink_free(l);
    close(sv[1]);
    event_base_free(base);
}

static void test_reader_each(void **state)
{
    int sv[2], pipefd[2];
    ipc_buf b;
    ipc_reader rd;
    struct ctl_seen seen = {.rd = &rd};
    (void)state;

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    assert_int_equal(pipe(pipefd), 0);
    ipc_buf_init(&b);
    ipc_reader_init(&rd);
    ipc_begin(&b, IPC_CTL_LINK, 0);
    ipc_put_u32(&b, IPC_T_INDEX, 0);
    assert_int_equal(ipc_end(&b), IPC_OK);
    assert_int_equal(ipc_write_frame(sv[0], &b, pipefd[0], 1000), IPC_OK);
    ipc_begin(&b, IPC_CTL_LINK, 0); /* its required index missing */
    assert_int_equal(ipc_end(&b), IPC_OK);
    assert_int_equal(ipc_write_frame(sv[0], &b, -1, 1000), IPC_OK);
    /* A read stops where a descriptor is attached: a few calls. */
    for (int i = 0; i < 4 && seen.frames < 2; i++)
        assert_int_equal(ipc_reader_each(&rd, sv[1], on_ctl, &seen), IPC_OK);
    assert_int_equal(seen.frames, 2);
    assert_int_equal(seen.malformed, 1);
    assert_int_equal(seen.fds, 1);
    /* Nothing new is not an error. */
    assert_int_equal(ipc_reader_each(&rd, sv[1], on_ctl, &seen), IPC_OK);
    assert_int_equal(seen.frames, 2);
    ipc_begin(&b, IPC_CTL_GO, 0);
    assert_int_equal(ipc_end(&b), IPC_OK);
    uint32_t huge = IPC_MAX_PAYLOAD + 1;
    memcpy(b.p + 4, &huge, 4);
    assert_int_equal(write(sv[0], b.p, IPC_HDR_LEN), IPC_HDR_LEN);
    assert_int_equal(ipc_reader_each(&rd, sv[1], on_ctl, &seen), IPC_E_FRAME);
    close(sv[0]);
    ipc_reader_consume(&rd, IPC_HDR_LEN);
    assert_int_equal(ipc_reader_each(&rd, sv[1], on_ctl, &seen), IPC_E_CLOSED);
    assert_int_equal(seen.frames, 2);
    ipc_reader_free(&rd);
    ipc_buf_free(&b);
    close(sv[1]);
    close(pipefd[0]);
    close(pipefd[1]);
}

/* A request's deadline (IPC_T_DEADLINE): a u64 on every request, none on
 * an answer; past when the monotonic clock is beyond it, never when absent. */
static void test_deadline(void **state)
{
    struct raw r;
    ipc_msg m;
    uint64_t past = 1, future = ipc_deadline_ms(util_monotonic_s() + 3600), zero = 0;
    uint32_t narrow = 5;
    (void)state;

    memset(&r, 0, sizeof(r));
    raw_field(&r, IPC_T_DIGEST, "0123456789abcdefghij", 20);
    raw_field(&r, IPC_T_DEADLINE, &past, 8);
    assert_int_equal(decode_raw(IPC_SIGN, &r), IPC_OK);
    assert_int_equal(ipc_decode(IPC_SIGN, 1, r.p, r.n, &m), IPC_OK);
    assert_true(ipc_deadline_passed(&m));
    /* In an answer: not a field answers carry. */
    memset(&r, 0, sizeof(r));
    raw_field(&r, IPC_T_STATUS, &narrow, 4);
    raw_field(&r, IPC_T_DEADLINE, &past, 8);
    assert_int_equal(decode_raw(IPC_SIGN | IPC_REPLY, &r), IPC_E_FIELD);
    /* Of the wrong width. */
    memset(&r, 0, sizeof(r));
    raw_field(&r, IPC_T_DEADLINE, &narrow, 4);
    assert_int_equal(decode_raw(IPC_HEALTH, &r), IPC_E_FIELD);
    /* Ahead, zero (none), absent: not passed. */
    memset(&r, 0, sizeof(r));
    raw_field(&r, IPC_T_DEADLINE, &future, 8);
    assert_int_equal(ipc_decode(IPC_HEALTH, 1, r.p, r.n, &m), IPC_OK);
    assert_false(ipc_deadline_passed(&m));
    memset(&r, 0, sizeof(r));
    raw_field(&r, IPC_T_DEADLINE, &zero, 8);
    assert_int_equal(ipc_decode(IPC_HEALTH, 1, r.p, r.n, &m), IPC_OK);
    assert_false(ipc_deadline_passed(&m));
    memset(&r, 0, sizeof(r));
    assert_int_equal(ipc_decode(IPC_HEALTH, 1, r.p, r.n, &m), IPC_OK);
    assert_false(ipc_deadline_passed(&m));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_encoder_caps),
        cmocka_unit_test(test_view_key_policy),
        cmocka_unit_test(test_wrap_transports_members),
        cmocka_unit_test(test_control_channel),
        cmocka_unit_test(test_write_frame_timeout),
        cmocka_unit_test(test_write_frame_timeout_slow_reader),
        cmocka_unit_test(test_ev_write_fill),
        cmocka_unit_test(test_ev_queue),
        cmocka_unit_test(test_evbuffer),
        cmocka_unit_test(test_read_frames),
        cmocka_unit_test(test_reader_each),
        cmocka_unit_test(test_holder_answer_type),
        cmocka_unit_test(test_histogram_consistent_under_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
