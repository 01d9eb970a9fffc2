/*
 * reqscan.c: a request's head and chunked body followed as they come in
 * (reqscan.h).
 */
#include "reqscan.h"

#include <string.h>

/* A chunked body's framing, followed byte by byte after the head. */
enum reqscan_chunk {
    CHUNK_OFF,         /* no chunked body being received */
    CHUNK_SIZE,        /* in the chunk-size line */
    CHUNK_SIZE_LF,     /* after its CR */
    CHUNK_DATA,        /* chunk_left bytes of data to come */
    CHUNK_DATA_CR,     /* the CRLF after the data */
    CHUNK_DATA_LF,     /* after its CR */
    CHUNK_TRAILER,     /* at the start of a trailer line (or the final CRLF) */
    CHUNK_TRAILER_IN,  /* inside a trailer line */
    CHUNK_END_LF       /* after the final CR */
};

void reqscan_start(struct reqscan *s)
{
    memset(s, 0, sizeof(*s));
    s->head_open = 1;
    s->chunk_state = CHUNK_OFF;
}

int reqscan_active(const struct reqscan *s) { return s->head_open || s->chunk_state != CHUNK_OFF; }

/* One byte of a chunked body: RFC 9112 7.1 with the bare LF line ends
 * libevent also takes, without chunk extensions (libevent answers them
 * 413). libevent reads the size with strtoll(16), which takes "0x1a",
 * "+1a" and " 1a", ignores anything after a space ("1a junk"), and skips
 * empty lines between chunks: a proxy in front frames such a body
 * otherwise (or ends it early, "0x1a" as 0), so the request is refused
 * (handle) whatever libevent made of it. */
static void chunk_byte(struct reqscan *s, unsigned char b)
{
    int hex = (b >= '0' && b <= '9') || ((b | 0x20) >= 'a' && (b | 0x20) <= 'f');

    switch ((enum reqscan_chunk)s->chunk_state) {
    case CHUNK_SIZE:
        if (hex && s->chunk_left < ((uint64_t)1 << 56)) {
            s->chunk_left = s->chunk_left * 16 + (uint64_t)(b <= '9' ? b - '0' : (b | 0x20) - 'a' + 10);
            s->chunk_digits++;
            return;
        }
        if (s->chunk_digits == 0 || (b != '\r' && b != '\n'))
            break;
        if (b == '\r') {
            s->chunk_state = CHUNK_SIZE_LF;
            return;
        }
        __attribute__((fallthrough)); /* a bare LF ends the line */
    case CHUNK_SIZE_LF:
        if (b != '\n')
            break;
        s->chunk_state = s->chunk_left == 0 ? CHUNK_TRAILER : CHUNK_DATA;
        return;
    case CHUNK_DATA_CR:
    case CHUNK_DATA_LF:
        if (b == '\r' && s->chunk_state == CHUNK_DATA_CR) {
            s->chunk_state = CHUNK_DATA_LF;
            return;
        }
        if (b != '\n')
            break;
        s->chunk_state = CHUNK_SIZE;
        s->chunk_left = 0;
        s->chunk_digits = 0;
        return;
    case CHUNK_TRAILER:
        if (b == '\r' || b == '\n')
            s->chunk_state = b == '\r' ? CHUNK_END_LF : CHUNK_OFF;
        else if (b != '\0')
            s->chunk_state = CHUNK_TRAILER_IN;
        else
            break;
        return;
    case CHUNK_TRAILER_IN:
        if (b == '\0')
            break;
        if (b == '\n')
            s->chunk_state = CHUNK_TRAILER;
        return;
    case CHUNK_END_LF:
        if (b != '\n')
            break;
        s->chunk_state = CHUNK_OFF;
        return;
    case CHUNK_OFF:
    case CHUNK_DATA: /* taken in bulk by reqscan_feed */
        return;
    }
    s->chunk_bad = 1;
    s->chunk_state = CHUNK_OFF; /* refused: nothing more to follow */
}

/* The head's byte b at the start of a line or inside it: whether the line
 * is a Transfer-Encoding header (any value: handle refuses all but
 * "chunked", whose body is then followed). */
static void scan_te(struct reqscan *s, unsigned char b)
{
    static const char name[] = "transfer-encoding:";

    if (s->head_te_match < 0)
        return;
    if ((b | 0x20) != (unsigned char)name[s->head_te_match]) {
        s->head_te_match = -1;
        return;
    }
    if (name[++s->head_te_match] == '\0') {
        s->head_te = 1;
        s->head_te_match = -1;
    }
}

/* A NUL byte marks the head, the empty line closes it. libevent keeps a
 * header line only up to its first NUL, so "Content-Length: 5<NUL>9"
 * frames the body by 5 and "Transfer-Encoding: chunked<NUL>, gzip" reads
 * as chunked, while a proxy that replaces the NUL with a space (as RFC
 * 9110 5.5 allows it to) frames the same bytes otherwise. A body is not
 * scanned for NULs (a DER CSR holds them); a chunked one's framing is
 * followed (chunk_byte). */
size_t reqscan_feed(struct reqscan *s, const unsigned char *b, size_t n)
{
    size_t k = 0;

    for (; k < n && s->head_open; k++) {
        if (b[k] == '\0')
            s->head_nul = 1;
        if (b[k] == '\n') {
            s->head_open = s->head_eol == 0;
            s->head_eol = 1;
            s->head_te_match = 0;
            s->head_line_start = 1;
            if (!s->head_open && s->head_te)
                s->chunk_state = CHUNK_SIZE;
        } else if (b[k] == '\r' && s->head_eol == 1) {
            s->head_eol = 2;
        } else if (b[k] != '\r' || s->head_eol == 2) {
            s->head_eol = 0;
            scan_te(s, b[k]);
            if (s->head_line_start && (b[k] == ' ' || b[k] == '\t'))
                s->head_fold = 1;
            s->head_line_start = 0;
        }
    }
    while (k < n && s->chunk_state != CHUNK_OFF) {
        if (s->chunk_state == CHUNK_DATA) {
            size_t take = n - k;
            if ((uint64_t)take > s->chunk_left)
                take = (size_t)s->chunk_left;
            k += take;
            s->chunk_left -= take;
            if (s->chunk_left == 0)
                s->chunk_state = CHUNK_DATA_CR;
        } else {
            chunk_byte(s, b[k++]);
        }
    }
    return k;
}
