/*
 * reqscan: what the network process follows of a request as its bytes
 * come in, before and beside libevent's own reading (core.c,
 * conn_scan_head): the head up to its empty line (a NUL byte in it, a
 * folded line, a Transfer-Encoding or Expect header, the Content-Length)
 * and then a chunked body's
 * framing (RFC 9112 7.1) up to its end. libevent reads both leniently
 * where a proxy in front may read the same bytes otherwise; handle()
 * refuses what this marks. Byte by byte, so a request split anywhere
 * across reads (TLS records) is followed the same; a chunk's data is
 * skipped in bulk. Pure: no I/O, no allocation (fuzz_reqscan).
 */
#ifndef GS_REQSCAN_H
#define GS_REQSCAN_H

#include <stddef.h>
#include <stdint.h>

struct reqscan {
    int head_open;       /* the head's empty line is not yet in */
    int head_eol;        /* 1 after an LF, 2 after LF CR: an LF next ends the head */
    int head_nul;        /* the head holds a NUL byte */
    int head_name;       /* the header name (enum reqscan_name, reqscan.c) being matched at the line's start, or -1 */
    int head_name_len;   /* its letters matched so far */
    int head_te;         /* the head has a Transfer-Encoding header */
    int head_expect;     /* the head has an Expect header */
    int head_in_cl;      /* in a Content-Length value: 1 before its digits, 2 in them */
    uint64_t head_cl;    /* the largest Content-Length value's leading digits (saturated) */
    uint64_t head_cl_line; /* this line's value so far */
    int head_line_start; /* the next byte begins a header line */
    int head_fold;       /* a header line begins with white space (obs-fold) */
    int chunk_state;     /* enum reqscan_chunk (reqscan.c): the chunked body after the head */
    int chunk_bad;       /* that body is framed otherwise than RFC 9112 7.1 says */
    uint64_t chunk_left; /* the chunk's data bytes still to come */
    unsigned chunk_digits; /* the hex digits of its size line so far */
};

/* At the start of a request head (a new connection, or the next request
 * on one). */
void reqscan_start(struct reqscan *s);

/* Whether bytes still to come belong to the request: its head is open, or
 * a chunked body has not ended (nor been found framed otherwise). */
int reqscan_active(const struct reqscan *s);

/* Follows the request through b[0..n): the number of bytes that belonged
 * to it (n, or fewer where it ended; what follows is the next request's,
 * or the rest of a refused one). */
size_t reqscan_feed(struct reqscan *s, const unsigned char *b, size_t n);

#endif
