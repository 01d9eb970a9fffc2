/*
 * transport.h: handing one message to many recipients: SMTP through
 * libcurl (one transaction per call: MAIL FROM, n x RCPT TO, DATA, with
 * STARTTLS as configured), or a local maildir tree for demos.
 *
 * A transport keeps its libcurl handle between calls so batches to the
 * same relay reuse one connection.
 */
#ifndef GS_XP_TRANSPORT_H
#define GS_XP_TRANSPORT_H

#include <stddef.h>

#include "xp.h"

typedef struct xp_transport xp_transport;

/* Checks conf->relay and prepares (does not connect). The conf is
 * borrowed and must outlive the transport. */
xp_err xp_transport_new(const xp_conf *conf, xp_transport **out);
void xp_transport_free(xp_transport *t);

typedef struct xp_send_result {
    int *rcpt_code;   /* caller-provided array of n: the reply to each RCPT TO, 0 = never sent */
    int final_code;   /* reply at the end of DATA, 0 = not reached */
    char detail[256]; /* one line on what went wrong (curl's text or the server's reply) */
} xp_send_result;

/* Sends the file at path (LF or CRLF lines; sent as CRLF, dot-stuffed by
 * libcurl) from mail_from ("" = null reverse-path) to rcpts[0..n).
 * XP_OK: the relay accepted the message for every recipient whose
 * rcpt_code is 2xx. Otherwise XP_ERR_TEMP or XP_ERR_PERM for the message as
 * a whole (recipients with a 5xx rcpt_code are refused for good either way).
 * For maildir targets every recipient gets 250 or 451. */
xp_err xp_transport_send(xp_transport *t, const char *mail_from, char *const *rcpts, size_t n, const char *path,
                         xp_send_result *res);

#endif
