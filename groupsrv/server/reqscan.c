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
    s->head_name = -1; /* the request line names no header */
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

/* The header names followed in the head; their first letters differ, so
 * one name at a time is matched from a line's start. */
enum reqscan_name { NAME_TE, NAME_EXPECT, NAME_CL, NAME_COUNT };
static const char *const reqscan_names[NAME_COUNT] = {"transfer-encoding:", "expect:", "content-length:"};

/* A Content-Length value's byte: its leading decimal digits after OWS
 * (the largest of several headers is kept; handle() refuses a value that
 * is not all digits, and two headers, whatever this read). */
static void scan_cl(struct reqscan *s, unsigned char b)
{
    if (b >= '0' && b <= '9') {
        uint64_t v = s->head_in_cl == 2 ? s->head_cl_line : 0;
        v = v > (UINT64_MAX - 9) / 10 ? UINT64_MAX : v * 10 + (uint64_t)(b - '0');
        s->head_cl_line = v;
        s->head_in_cl = 2;
        if (v > s->head_cl)
            s->head_cl = v;
    } else if (s->head_in_cl == 2 || (b != ' ' && b != '\t')) {
        s->head_in_cl = 0;
    }
}

/* The head's byte b at the start of a line or inside it: whether the line
 * is a Transfer-Encoding header (any value: handle refuses all but
 * "chunked", whose body is then followed), an Expect header (any value),
 * or a Content-Length header (its value: scan_cl). */
static void scan_name(struct reqscan *s, unsigned char b)
{
    if (s->head_in_cl) {
        scan_cl(s, b);
        return;
    }
    if (s->head_line_start) {
        s->head_name = -1;
        for (int i = 0; i < NAME_COUNT; i++)
            if ((b | 0x20) == (unsigned char)reqscan_names[i][0])
                s->head_name = i;
        s->head_name_len = 0;
    }
    if (s->head_name < 0)
        return;
    const char *name = reqscan_names[s->head_name];
    if ((b | 0x20) != (unsigned char)name[s->head_name_len]) {
        s->head_name = -1;
        return;
    }
    if (name[++s->head_name_len] != '\0')
        return;
    if (s->head_name == NAME_TE)
        s->head_te = 1;
    else if (s->head_name == NAME_EXPECT)
        s->head_expect = 1;
    else
        s->head_in_cl = 1;
    s->head_name = -1;
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
            s->head_in_cl = 0;
            s->head_line_start = 1;
            if (!s->head_open && s->head_te)
                s->chunk_state = CHUNK_SIZE;
        } else if (b[k] == '\r' && s->head_eol == 1) {
            s->head_eol = 2;
        } else if (b[k] != '\r' || s->head_eol == 2) {
            s->head_eol = 0;
            scan_name(s, b[k]);
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
