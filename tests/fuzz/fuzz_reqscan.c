/*
 * fuzz_reqscan: libFuzzer target for what the network process follows of
 * a request as its bytes come in (groupsrv/server/reqscan.c): the head
 * (NUL bytes, folded lines, Transfer-Encoding, Expect, Content-Length) and a chunked body's
 * framing, which handle() refuses when libevent would read it leniently.
 * fuzz_http cannot reach it: its plain-HTTP connections have no
 * connection state, so the scan never runs there.
 *
 * Input: byte 0 seeds how the rest is cut into reads (TLS records); the
 * rest is what the client sends on one connection. Invariants checked:
 *  - the same bytes give the same state and the same request end whether
 *    fed at once, a byte at a time, or cut anywhere;
 *  - the head ends at the first LF LF or LF CR LF; its NUL and obs-fold
 *    marks are those of the bytes before it; every line libevent would
 *    take as a Transfer-Encoding or Expect header is seen as one, and the
 *    largest Content-Length value is read;
 *  - a chunked body is accepted, refused (at which byte) or still open
 *    exactly as a plain reading of RFC 9112 7.1 (sizes of bare hex below
 *    2^60 with any leading zeros, no extensions, CRLF or bare LF,
 *    trailer lines without NUL) says.
 *
 * Registered in tests/fuzz.cmake; seeds in tests/fuzz/corpus/reqscan/.
 */
#include <stdint.h>
#include <string.h>

#include "fuzz.h"
#include "reqscan.h"

enum { R_DONE, R_BAD, R_OPEN };

static int hexval(uint8_t b)
{
    if (b >= '0' && b <= '9')
        return b - '0';
    if (b >= 'a' && b <= 'f')
        return b - 'a' + 10;
    if (b >= 'A' && b <= 'F')
        return b - 'A' + 10;
    return -1;
}

/* A line end at p[*i]: CRLF or a bare LF. R_DONE past it, R_BAD at the
 * byte that is not one, R_OPEN if the input ends first. */
static int ref_eol(const uint8_t *p, size_t n, size_t *i)
{
    if (*i < n && p[*i] == '\r')
        (*i)++;
    if (*i == n)
        return R_OPEN;
    if (p[*i] != '\n')
        return R_BAD;
    (*i)++;
    return R_DONE;
}

/* A chunked body in p[0..n), read whole: R_DONE with *at just past its
 * end, R_BAD with *at at the first byte that breaks it, or R_OPEN. */
static int ref_chunked(const uint8_t *p, size_t n, size_t *at)
{
    size_t i = 0;
    int r;

    for (;;) {
        uint64_t size = 0;
        size_t digits = 0;
        for (; i < n && hexval(p[i]) >= 0; i++, digits++) {
            if (size >> 56) /* the next digit makes it 2^60 or more */
                goto bad;
            size = size * 16 + (uint64_t)hexval(p[i]);
        }
        if (i == n)
            return R_OPEN;
        if (digits == 0)
            goto bad;
        if ((r = ref_eol(p, n, &i)) != R_DONE)
            goto eol;
        if (size == 0)
            break;
        if (n - i <= size)
            return R_OPEN;
        i += (size_t)size;
        if ((r = ref_eol(p, n, &i)) != R_DONE)
            goto eol;
    }
    for (;;) { /* trailer lines, then an empty line */
        if (i == n)
            return R_OPEN;
        if (p[i] == '\r' || p[i] == '\n') {
            if ((r = ref_eol(p, n, &i)) != R_DONE)
                goto eol;
            *at = i;
            return R_DONE;
        }
        for (; i < n && p[i] != '\n'; i++)
            if (p[i] == '\0')
                goto bad;
        if (i == n)
            return R_OPEN;
        i++;
    }
eol:
    if (r == R_OPEN)
        return R_OPEN;
bad:
    *at = i;
    return R_BAD;
}

static int same(const struct reqscan *a, const struct reqscan *b)
{
    return a->head_open == b->head_open && a->head_eol == b->head_eol && a->head_nul == b->head_nul &&
           a->head_name == b->head_name && a->head_name_len == b->head_name_len && a->head_te == b->head_te &&
           a->head_expect == b->head_expect && a->head_in_cl == b->head_in_cl && a->head_cl == b->head_cl &&
           a->head_cl_line == b->head_cl_line &&
           a->head_line_start == b->head_line_start && a->head_fold == b->head_fold &&
           a->chunk_state == b->chunk_state && a->chunk_bad == b->chunk_bad && a->chunk_left == b->chunk_left &&
           a->chunk_digits == b->chunk_digits;
}

/* Feeds p[0..n) in reads of the sizes next_len gives; the bytes taken. */
static size_t feed_cut(struct reqscan *s, const uint8_t *p, size_t n, uint32_t seed)
{
    size_t off = 0;

    reqscan_start(s);
    while (off < n && reqscan_active(s)) {
        size_t len;
        if (seed == 0) {
            len = n - off; /* at once */
        } else if (seed == 1) {
            len = 1; /* a byte per read */
        } else {
            seed = seed * 1103515245u + 12345u;
            len = 1 + (seed >> 16) % 23;
            if (len > n - off)
                len = n - off;
        }
        size_t k = reqscan_feed(s, p + off, len);
        FUZZ_CHECK(k <= len);
        off += k;
        if (k < len)
            FUZZ_CHECK(!reqscan_active(s));
    }
    return off;
}

/* Whether the line at p[0..n) (up to its LF) begins with the header
 * name and colon as libevent reads a header: ASCII case folded. */
static int libevent_name_line(const uint8_t *p, size_t n, const char *name)
{
    size_t i;

    for (i = 0; name[i] != '\0'; i++) {
        if (i == n)
            return 0;
        uint8_t b = p[i] >= 'A' && p[i] <= 'Z' ? (uint8_t)(p[i] + 32) : p[i];
        if (b != (uint8_t)name[i])
            return 0;
    }
    return 1;
}

/* A Content-Length line's value as the scan reads it: the decimal digits
 * after spaces and tabs, saturated; 0 without digits. */
static uint64_t cl_value(const uint8_t *p, size_t n)
{
    size_t i = strlen("content-length:");
    uint64_t v = 0;

    while (i < n && (p[i] == ' ' || p[i] == '\t'))
        i++;
    for (; i < n && p[i] >= '0' && p[i] <= '9'; i++)
        v = v > (UINT64_MAX - 9) / 10 ? UINT64_MAX : v * 10 + (uint64_t)(p[i] - '0');
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct reqscan whole, bytes, cut;

    if (size < 1)
        return 0;
    uint32_t seed = data[0] | 2u;
    const uint8_t *p = data + 1;
    size_t n = size - 1;

    size_t kw = feed_cut(&whole, p, n, 0);
    size_t kb = feed_cut(&bytes, p, n, 1);
    size_t kc = feed_cut(&cut, p, n, seed);
    FUZZ_CHECK(kw == kb && kw == kc);
    FUZZ_CHECK(same(&whole, &bytes) && same(&whole, &cut));

    /* The head: up to the first LF LF or LF CR LF. */
    size_t head = 0;
    for (size_t i = 0; i < n && head == 0; i++)
        if (p[i] == '\n' && i + 1 < n && (p[i + 1] == '\n' || (p[i + 1] == '\r' && i + 2 < n && p[i + 2] == '\n')))
            head = i + (p[i + 1] == '\n' ? 2 : 3);
    if (head == 0) {
        FUZZ_CHECK(whole.head_open && kw == n);
        return 0;
    }
    FUZZ_CHECK(!whole.head_open);
    FUZZ_CHECK(whole.head_nul == (memchr(p, '\0', head) != NULL));
    /* Header lines (not the request line) without a CR inside (a bare CR
     * is libevent's 400 whatever the scan made of it) are checked for the
     * names followed: Transfer-Encoding, Expect and Content-Length. */
    int fold = 0, te = 0, expect = 0;
    uint64_t cl = 0;
    for (size_t i = 0; i + 1 < head; i++) {
        if (p[i] != '\n')
            continue;
        const uint8_t *l = p + i + 1;
        if (l[0] == ' ' || l[0] == '\t' || (l[0] == '\r' && (l[1] == ' ' || l[1] == '\t')))
            fold = 1;
        const uint8_t *lf = memchr(l, '\n', head - (i + 1));
        size_t len = lf != NULL ? (size_t)(lf - l) : head - (i + 1);
        if (len > 0 && l[len - 1] == '\r')
            len--;
        if (memchr(l, '\r', len) != NULL)
            continue;
        te |= libevent_name_line(l, len, "transfer-encoding:");
        expect |= libevent_name_line(l, len, "expect:");
        if (libevent_name_line(l, len, "content-length:") && cl_value(l, len) > cl)
            cl = cl_value(l, len);
    }
    FUZZ_CHECK(whole.head_fold == fold);
    if (te)
        FUZZ_CHECK(whole.head_te);
    if (expect)
        FUZZ_CHECK(whole.head_expect);
    FUZZ_CHECK(whole.head_cl >= cl);
    /* In a head without a CR but before an LF or a 0x1a byte (which the
     * scan's case folding takes for a colon) the scan sees no Expect and
     * no larger Content-Length than libevent's headers hold: a request
     * with Expect whose body fits max_body never gets a cap lowered on a
     * value it does not have (core.c, conn_head_done). */
    int plain = memchr(p, 0x1a, head) == NULL;
    for (size_t i = 0; i < head && plain; i++)
        if (p[i] == '\r' && (i + 1 == head || p[i + 1] != '\n'))
            plain = 0;
    if (plain)
        FUZZ_CHECK(whole.head_expect == expect && whole.head_cl == cl);

    if (!whole.head_te) {
        FUZZ_CHECK(kw == head && !reqscan_active(&whole));
        return 0;
    }
    size_t at = 0;
    switch (ref_chunked(p + head, n - head, &at)) {
    case R_DONE:
        FUZZ_CHECK(!whole.chunk_bad && !reqscan_active(&whole) && kw == head + at);
        break;
    case R_BAD:
        FUZZ_CHECK(whole.chunk_bad && !reqscan_active(&whole) && kw == head + at + 1);
        break;
    default:
        FUZZ_CHECK(!whole.chunk_bad && reqscan_active(&whole) && kw == n);
        break;
    }
    return 0;
}
