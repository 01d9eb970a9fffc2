/* runner.c: `exploder run [--once]`, the queue runner.
 *
 * One pass: prepare new messages (forward: add List-* headers; group-secret
 * and member-certs: one rewrap call each), send due recipients in batches
 * of batch_size per SMTP transaction, give up on recipients older than
 * max_age, and finish messages with nothing pending (bouncing to the sender
 * when some recipients failed). Every state change is committed before the
 * next step, and a recipient is only marked delivered after the relay
 * accepted it, so kill -9 at any point loses nothing (a batch in flight is
 * sent again: duplicates, never losses).
 *
 * Only one runner works on a spool at a time (flock on SPOOL/runner.lock,
 * released by the kernel if the runner dies). */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "cmd.h"
#include "envelope.h"
#include "log.h"
#include "mail.h"
#include "prepare.h"
#include "spool.h"
#include "transport.h"
#include "util.h"

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static int64_t now_s(void) { return (int64_t)time(NULL); }

uint64_t xp_backoff(const xp_conf *c, int64_t attempts)
{
    uint64_t d = c->retry_min;
    for (int64_t i = 1; i < attempts && d < c->retry_max; i++)
        d *= 2;
    return d > c->retry_max ? c->retry_max : d;
}

/* "LOCAL-owner@DOMAIN" of a list, or [delivery] envelope_from. */
static void envelope_from(const xp_conf *c, const char *list_addr, char *out, size_t outsz)
{
    const char *at = strrchr(list_addr, '@');
    if (c->envelope_from != NULL) {
        snprintf(out, outsz, "%s", c->envelope_from);
        return;
    }
    if (at == NULL) {
        snprintf(out, outsz, "%s", list_addr);
        return;
    }
    snprintf(out, outsz, "%.*s-owner%s", (int)(at - list_addr), list_addr, at);
}

/* ---- damaged spool files ------------------------------------------------ */

/* Checks message file `name` of m before it is used (spool_file_check).
 * A damaged one (cut short by a crash or a full disk, changed, missing) is
 * moved to SPOOL/damaged/ with one log line, and m's pending recipients
 * fail, so the sender gets a bounce saying so: nothing broken is sent.
 * XP_OK: the file is sound; XP_ERR_DAMAGED: m was failed (or could not
 * be: see the log); another error: it cannot be read now (retry). */
static xp_err check_msg_file(spool *s, const xp_msg *m, const char *name)
{
    char why[160], dest[4200], q[200];
    xp_err rc = spool_file_check(s, name, why, sizeof(why));

    if (rc != XP_ERR_DAMAGED)
        return rc;
    if (spool_set_aside(s, name, dest, sizeof(dest)) != XP_OK)
        dest[0] = '\0';
    log_error("spool file damaged, set aside and not sent id=%lld file=\"%s\" moved_to=\"%s\" reason=\"%s\"",
              (long long)m->id, log_qs(name), log_qs(dest[0] ? dest : "-"), log_quote(q, sizeof(q), why));
    if (spool_fail_pending(s, m->id, "spool file damaged", XP_DAMAGED_REASON) != XP_OK)
        log_error("cannot fail the recipients of a damaged message id=%lld", (long long)m->id);
    return XP_ERR_DAMAGED;
}

/* ---- prepare ------------------------------------------------------------ */

static void out_name(const char *in, char *out, size_t outsz)
{
    size_t n = strlen(in);
    if (n > 3 && strcmp(in + n - 3, ".in") == 0)
        n -= 3;
    snprintf(out, outsz, "%.*s.out", (int)n, in);
}

/* deliver's --members-only rule for the list as it is now: `list set
 * --members-only` (an open list flooded), or `list remove` of the
 * poster, since deliver took the post. xp_prepare checks the rest of
 * what deliver checks; this needs the members. *refused: the sender's
 * reason in reason (deliver's 5.7.1 words), why for the log. */
static xp_err members_recheck(spool *s, const xp_list *l, const xp_msg *m, const char *in_path, bool *refused,
                              char *reason, size_t reasonsz, char *why, size_t whysz)
{
    unsigned char *data = NULL;
    size_t len = 0, hdr_end, body_start;
    char from[MAIL_MAX_ADDR + 1];
    bool crlf;

    *refused = false;
    if (!l->members_only)
        return XP_OK;
    if (util_read_file(in_path, XP_MESSAGE_SIZE_CEILING, &data, &len) != UTIL_OK) {
        snprintf(why, whysz, "cannot read spooled message");
        return XP_ERR_IO;
    }
    /* a header block deliver would now refuse: xp_prepare says why */
    if (mail_split((const char *)data, len, &hdr_end, &body_start, &crlf) == XP_OK) {
        xp_post_from(l, (const char *)data, hdr_end, from, sizeof(from));
        if (!xp_poster_is_member(s, l, from, m->sender != NULL ? m->sender : "")) {
            *refused = true;
            snprintf(reason, reasonsz, "%s accepts mail from its members only", l->address);
            snprintf(why, whysz, "refused for the list as it is now (members only): the sender is not a member");
        }
    }
    free(data);
    return XP_OK;
}

/* *settled: the message left the "new" state (prepared, or failed for
 * good), rather than being deferred. */
static xp_err prepare_one(const xp_conf *c, spool *s, const xp_msg *m, bool *settled)
{
    xp_list *l = NULL;
    util_atomic_file *af = NULL;
    char name[128], in_path[4096], out_path[4096], why[512] = "", qwhy[640];
    xp_prepared prep;
    xp_err rc;
    bool refused = false;

    *settled = true;
    memset(&prep, 0, sizeof(prep));
    rc = spool_list_get_by_id(s, m->list_id, &l);
    if (rc == XP_ERR_NOTFOUND) {
        log_error("message of a deleted list id=%lld", (long long)m->id);
        return spool_fail_pending(s, m->id, "list no longer exists", "the list no longer exists");
    }
    if (rc != XP_OK)
        return rc;
    if ((rc = check_msg_file(s, m, m->file)) != XP_OK) {
        if (rc == XP_ERR_DAMAGED)
            rc = XP_OK; /* settled: failed, the sender is told */
        goto out;
    }
    out_name(m->file, name, sizeof(name));
    if ((rc = spool_msg_path(s, m->file, in_path, sizeof(in_path))) != XP_OK ||
        (rc = spool_msg_path(s, name, out_path, sizeof(out_path))) != XP_OK)
        goto out;
    if (util_atomic_open(out_path, 0600, &af) != UTIL_OK) {
        log_error("cannot create spool file path=\"%s\" errno=%d", log_qs(out_path), errno);
        rc = XP_ERR_IO;
        goto out;
    }
    rc = members_recheck(s, l, m, in_path, &refused, prep.reason, sizeof(prep.reason), why, sizeof(why));
    if (rc == XP_OK && refused)
        rc = XP_ERR_REFUSED; /* for good: bounced below with deliver's reason */
    else if (rc == XP_OK)
        rc = xp_prepare(c, l, in_path, util_atomic_fp(af), &prep, why, sizeof(why));
    if (rc == XP_OK) {
        /* the prepared file is on disk before the row says so */
        if (util_atomic_commit(af) != UTIL_OK) {
            af = NULL;
            rc = XP_ERR_IO;
            snprintf(why, sizeof(why), "cannot commit prepared message");
        } else {
            af = NULL;
            if (prep.n > 0) {
                /* member-certs: each member's own RecipientInfo on their row */
                int64_t without = 0;
                rc = spool_mark_ready_members(s, m->id, name, prep.member, prep.ri, prep.ri_len, prep.n, &without);
                if (rc == XP_OK && without > 0)
                    log_warn("list members without a certificate at the group server get no copy id=%lld list=%s "
                             "count=%lld",
                             (long long)m->id, l->address, (long long)without);
            } else {
                rc = spool_mark_ready(s, m->id, name);
            }
            goto out;
        }
    }
    util_atomic_abort(af);
    af = NULL;
    /* why may quote the group server (its error code): quoted, so a '"' in
     * it cannot end the field and forge others in the log */
    log_quote(qwhy, sizeof(qwhy), why[0] ? why : xp_strerror(rc));
    if (rc == XP_ERR_TEMP || rc == XP_ERR_IO || rc == XP_ERR_NOMEM) {
        uint64_t d = xp_backoff(c, m->attempts + 1);
        log_warn("cannot prepare message, will retry id=%lld list=%s in=%llus reason=\"%s\"", (long long)m->id,
                 l->address, (unsigned long long)d, qwhy);
        rc = spool_defer_prepare(s, m->id, now_s() + (int64_t)d, why);
        *settled = false;
    } else {
        /* permanent (a group server 4xx, an unreadable message): no retry,
         * the sender is told at once in one plain line */
        log_error("cannot prepare message, giving up id=%lld list=%s reason=\"%s\"", (long long)m->id, l->address,
                  qwhy);
        rc = spool_fail_pending(s, m->id, why[0] ? why : xp_strerror(rc),
                                prep.reason[0] ? prep.reason : "the list could not process the message");
    }
out:
    xp_prepared_clear(&prep);
    util_atomic_abort(af);
    xp_list_free(l);
    return rc;
}

/* ---- deliver one batch ------------------------------------------------ */

#define RECORD_PAUSE_MAX 30 /* seconds between attempts to record a relay's answer */

/* Sleeps up to secs seconds, less if a stop is requested. */
static void pause_s(unsigned secs)
{
    for (unsigned i = 0; i < secs * 10 && !stop_requested; i++) {
        struct timespec ts = {0, 100000000};
        nanosleep(&ts, NULL);
    }
}

/* Records the relay's answer to a batch, however long the spool refuses
 * (disk full, database locked): the relay has the message for every
 * recipient it took, and a batch left pending would be sent again by the
 * next pass, one duplicate per pass for as long as the spool fails. So
 * nothing else is sent until it is recorded. Stopped before that, the
 * batch is sent again at the next start, the duplicate of a crash here. */
static xp_err record_batch(spool *s, const xp_batch *b, const xp_rcpt_outcome *outcome,
                           const int64_t *next_at, char *const *why)
{
    unsigned pause = 1;
    xp_err rc;

    while ((rc = spool_batch_done(s, b, outcome, next_at, why)) != XP_OK && !stop_requested) {
        log_error(
            "cannot record the relay's answer, sending nothing until it is recorded id=%lld retry_in=%us "
            "err=\"%s\"",
            (long long)b->msg->id, pause, xp_strerror(rc));
        pause_s(pause);
        pause = pause * 2 > RECORD_PAUSE_MAX ? RECORD_PAUSE_MAX : pause * 2;
    }
    return rc;
}

/* How one recipient fared: its RCPT reply code (0: never sent) and how the
 * transaction ended. *line (for the row and the log) is "" when delivered. */
static xp_rcpt_outcome rcpt_outcome(const xp_conf *c, int code, xp_err sent, const char *detail, int64_t attempts,
                                    int64_t now, int64_t *next_at, char *line, size_t linesz)
{
    line[0] = '\0';
    *next_at = 0;
    if (code / 100 == 5) {
        snprintf(line, linesz, "RCPT %d", code);
        return XP_RCPT_FAILED; /* refused for good, whatever happened next */
    }
    if (code / 100 == 2 && sent == XP_OK)
        return XP_RCPT_DELIVERED;
    if (code / 100 == 2 && sent == XP_ERR_PERM) {
        /* the message refused as a whole (a 5xx to DATA or to its end) */
        snprintf(line, linesz, "%s", detail);
        return XP_RCPT_FAILED;
    }
    *next_at = now + (int64_t)xp_backoff(c, attempts + 1);
    if (code / 100 == 4)
        snprintf(line, linesz, "RCPT %d", code);
    else /* accepted at RCPT (or never asked): what failed came later */
        snprintf(line, linesz, "%s", detail[0] ? detail : "not sent");
    return XP_RCPT_DEFERRED;
}

/* Member-certs: each recipient gets their own copy, made from the prepared
 * template with only their own RecipientInfo, in its own SMTP transaction
 * (the connection is reused). One parse of the template per batch. */
static void send_member_copies(const xp_conf *c, xp_transport *t, const xp_batch *b, const char *from,
                               const char *tmpl_path, int64_t now, xp_rcpt_outcome *outcome, int64_t *next_at,
                               char lines[][300], char *detail, size_t detailsz)
{
    env_message *msg = NULL;
    BIO *in = NULL;
    char copy[4200];
    env_err e = ENV_ERR_IO;
    size_t i = 0;

    snprintf(copy, sizeof(copy), "%s.copy", tmpl_path);
    if ((in = BIO_new_file(tmpl_path, "rb")) != NULL)
        e = env_message_read(in, ENV_FORMAT_SMIME, XP_PREPARED_SIZE_CEILING, &msg);
    BIO_free(in);
    if (e != ENV_OK)
        snprintf(detail, detailsz, "cannot read the prepared message: %s", env_strerror(e));
    for (; e == ENV_OK && i < b->n; i++) {
        int code = 0;
        xp_send_result r1;
        xp_err sent;
        BIO *out;

        memset(&r1, 0, sizeof(r1));
        r1.rcpt_code = &code;
        if (b->ri[i] == NULL ||
            env_message_set_recipients(msg, (const unsigned char *const *)&b->ri[i], &b->ri_len[i], 1) != ENV_OK) {
            outcome[i] = XP_RCPT_FAILED;
            snprintf(lines[i], sizeof(lines[i]), "no usable RecipientInfo for this member");
            continue;
        }
        if ((out = BIO_new_file(copy, "wb")) == NULL) {
            snprintf(detail, detailsz, "cannot write a member copy (errno %d)", errno);
            break;
        }
        e = env_message_write(msg, ENV_FORMAT_SMIME, NULL, out);
        if (BIO_free(out) != 1 && e == ENV_OK)
            e = ENV_ERR_IO;
        if (e != ENV_OK) {
            snprintf(detail, detailsz, "cannot write a member copy: %s", env_strerror(e));
            break;
        }
        sent = xp_transport_send(t, from, &b->rcpts[i], 1, copy, &r1);
        outcome[i] = rcpt_outcome(c, code, sent, r1.detail, b->attempts[i], now, &next_at[i], lines[i],
                                  sizeof(lines[i]));
        if (outcome[i] == XP_RCPT_DEFERRED && detail[0] == '\0')
            snprintf(detail, detailsz, "%s", r1.detail);
    }
    /* what could not even be tried is deferred: the next pass tries again */
    for (; i < b->n; i++) {
        outcome[i] = XP_RCPT_DEFERRED;
        next_at[i] = now + (int64_t)xp_backoff(c, b->attempts[i] + 1);
        snprintf(lines[i], sizeof(lines[i]), "%s", detail);
    }
    (void)unlink(copy);
    env_message_free(msg);
}

/* *settled: some recipient of the batch was delivered or failed for good. */
static xp_err send_batch(const xp_conf *c, spool *s, xp_transport *t, const xp_batch *b, bool *settled)
{
    xp_list *l = NULL;
    xp_send_result res;
    xp_rcpt_outcome *outcome = NULL;
    int64_t *next_at = NULL;
    char **why = NULL, (*lines)[300] = NULL;
    char from[MAIL_MAX_ADDR + 16] = "", path[4096], q[128], detail[256] = "";
    const char *deferred_why = NULL;
    size_t delivered = 0, failed = 0, deferred = 0;
    int64_t now = now_s();
    xp_err rc = XP_ERR_NOMEM, sent;
    bool per_member = b->ri != NULL && b->n > 0 && b->ri[0] != NULL;

    *settled = false;
    memset(&res, 0, sizeof(res));
    if ((res.rcpt_code = calloc(b->n, sizeof(int))) == NULL || (outcome = calloc(b->n, sizeof(*outcome))) == NULL ||
        (next_at = calloc(b->n, sizeof(*next_at))) == NULL || (why = calloc(b->n, sizeof(*why))) == NULL ||
        (lines = calloc(b->n, sizeof(*lines))) == NULL)
        goto out;
    if (b->msg->kind == XP_KIND_LIST) {
        if ((rc = spool_list_get_by_id(s, b->msg->list_id, &l)) != XP_OK && rc != XP_ERR_NOTFOUND)
            goto out;
        envelope_from(c, l != NULL ? l->address : "postmaster", from, sizeof(from));
    } /* bounces go out with the null reverse-path so they never bounce back */
    const char *name = b->msg->out_file != NULL ? b->msg->out_file : b->msg->file;
    if ((rc = spool_msg_path(s, name, path, sizeof(path))) != XP_OK)
        goto out;
    if ((rc = check_msg_file(s, b->msg, name)) != XP_OK) {
        if (rc == XP_ERR_DAMAGED) {
            *settled = true;
            rc = XP_OK;
        }
        goto out;
    }
    if (per_member) {
        send_member_copies(c, t, b, from, path, now, outcome, next_at, lines, detail, sizeof(detail));
    } else {
        sent = xp_transport_send(t, from, b->rcpts, b->n, path, &res);
        snprintf(detail, sizeof(detail), "%s", res.detail);
        for (size_t i = 0; i < b->n; i++)
            outcome[i] = rcpt_outcome(c, res.rcpt_code[i], sent, res.detail, b->attempts[i], now, &next_at[i],
                                      lines[i], sizeof(lines[i]));
    }
    for (size_t i = 0; i < b->n; i++) {
        if (lines[i][0] != '\0' && (why[i] = strdup(lines[i])) == NULL) {
            rc = XP_ERR_NOMEM;
            goto out;
        }
        if (outcome[i] == XP_RCPT_DEFERRED && deferred_why == NULL)
            deferred_why = why[i];
        if (outcome[i] == XP_RCPT_DELIVERED)
            delivered++;
        else if (outcome[i] == XP_RCPT_FAILED) {
            failed++;
            char qr[320];
            log_warn("recipient refused id=%lld rcpt=\"%s\" reason=\"%s\"", (long long)b->msg->id,
                     log_quote(q, sizeof(q), b->rcpts[i]), log_quote(qr, sizeof(qr), lines[i]));
        } else
            deferred++;
    }
    /* one transaction for the whole batch, after the relay answered */
    if ((rc = record_batch(s, b, outcome, next_at, why)) != XP_OK)
        goto out;
    *settled = delivered + failed > 0;
    if (deferred > 0)
        log_warn("batch deferred id=%lld delivered=%zu failed=%zu deferred=%zu reason=\"%s\"", (long long)b->msg->id,
                 delivered, failed, deferred, log_quote(q, sizeof(q), detail[0] ? detail : deferred_why));
    else
        log_info("batch sent id=%lld delivered=%zu failed=%zu%s", (long long)b->msg->id, delivered, failed,
                 per_member ? " copies=per-member" : "");
out:
    if (why != NULL)
        xp_strv_free(why, b->n);
    free(lines);
    free(next_at);
    free(outcome);
    free(res.rcpt_code);
    xp_list_free(l);
    return rc;
}

/* ---- finish ----------------------------------------------------------- */

/* Appends one cause to the reason line, "; " between causes (cut at cap). */
static void add_cause(char *reason, size_t cap, const char *cause)
{
    size_t o = strlen(reason);
    if (o + 1 < cap && snprintf(reason + o, cap - o, "%s%s", o > 0 ? "; " : "", cause) < 0)
        reason[o] = '\0';
}

/* Does the word w (n bytes) name one of addrs' local parts (addrs:
 * addresses separated by spaces), case-blind, with no letter or digit
 * either side ("john.smith..." names john.smith, "johnny" not john)? */
static bool names_local_part(const char *w, size_t n, const char *addrs)
{
    while (addrs != NULL && *addrs != '\0') {
        size_t len = strcspn(addrs, " "), l = len;
        while (l > 0 && addrs[l - 1] != '@')
            l--;
        l = l > 0 ? l - 1 : len; /* the local part: up to the last '@' */
        for (size_t i = 0; l > 0 && i + l <= n; i++)
            if (strncasecmp(w + i, addrs, l) == 0 && (i == 0 || !isalnum((unsigned char)w[i - 1])) &&
                (i + l == n || !isalnum((unsigned char)w[i + l])))
                return true;
        addrs += len;
        addrs += strspn(addrs, " ");
    }
    return false;
}

/* Is the word w (n bytes) an address, or part of one: an '@' in it, its
 * URL form %40 (a content filter's link naming the recipient), or a
 * local part of the message's recipients (a relay that says "mailbox
 * john.smith full")? */
static bool word_is_address(const char *w, size_t n, const char *addrs)
{
    if (memchr(w, '@', n) != NULL)
        return true;
    for (size_t i = 0; i + 3 <= n; i++)
        if (w[i] == '%' && w[i + 1] == '4' && w[i + 2] == '0')
            return true;
    return names_local_part(w, n, addrs);
}

/* A relay's refusal (printable already: the transport keeps no other
 * byte, and cuts a long one after a whole word) for the sender, cut at
 * cap, each word that is or has an address (word_is_address) written
 * "<address>": the reply may name the member it was for, and the
 * membership is not the sender's to learn. What it says of the message
 * (too large, refused by a content filter) is what the sender can act on. */
static void relay_words(const char *reply, const char *addrs, char *out, size_t cap)
{
    size_t o = 0;

    out[0] = '\0';
    while (*reply != '\0' && o + 1 < cap) {
        size_t n = strcspn(reply, " ");
        if (word_is_address(reply, n, addrs)) {
            static const char mask[] = "<address>";
            size_t tail = 0; /* the punctuation after it ("<a@b>:") stays */
            while (tail < n && strchr(":,;.", reply[n - 1 - tail]) != NULL)
                tail++;
            if (o + sizeof(mask) + tail > cap)
                break;
            memcpy(out + o, mask, sizeof(mask) - 1);
            o += sizeof(mask) - 1;
            memcpy(out + o, reply + n - tail, tail);
            o += tail;
        } else {
            for (size_t i = 0; i < n && o + 1 < cap; i++)
                out[o++] = reply[i] == '"' ? '\'' : reply[i];
        }
        reply += n;
        for (; *reply == ' ' && o + 1 < cap; reply++)
            out[o++] = ' ';
    }
    out[o] = '\0';
}

/* Why members did not get it, each cause once with how many it hit, in
 * English for 1 and for N: no certificate the group server encrypts to
 * (member-certs: not a group member there, none on record, not RSA, or
 * only an expired one: the server's answer does not tell these apart),
 * refused by their mail system (a 5xx, at once), or still not taken after
 * max_age. */
static void failure_causes(const xp_finished *f, char *reason, size_t cap)
{
    int64_t refused = f->failed - f->no_cert - f->expired, late = f->expired;
    char cause[400];

    reason[0] = '\0';
    if (f->no_cert > 0) {
        snprintf(cause, sizeof(cause),
                 "%lld of them %s no certificate the group server can encrypt to (not a member of the group "
                 "there, no RSA certificate on record, or only an expired one)",
                 (long long)f->no_cert, f->no_cert == 1 ? "has" : "have");
        add_cause(reason, cap, cause);
    }
    if (refused > 0) {
        char said[180] = "";
        if (f->relay_reply != NULL && f->rcpt_addrs != NULL) /* no reply when the addresses to mask are missing */
            relay_words(f->relay_reply, f->rcpt_addrs, said, sizeof(said));
        snprintf(cause, sizeof(cause), "the mail %s of %lld of them refused it%s%s%s",
                 refused == 1 ? "system" : "systems", (long long)refused, said[0] ? " (the relay answered \"" : "",
                 said, said[0] ? "\")" : "");
        add_cause(reason, cap, cause);
    }
    if (late == 0 && reason[0] == '\0')
        late = f->failed; /* nothing else counted: they ran out of time */
    if (late > 0) {
        snprintf(cause, sizeof(cause), "the mail %s of %lld of them did not accept it in time",
                 late == 1 ? "system" : "systems", (long long)late);
        add_cause(reason, cap, cause);
    }
}

static xp_err bounce_text(const xp_conf *c, const xp_finished *f, const char *list_addr, char **out, size_t *outlen)
{
    char date[64], rdate[64], from[MAIL_MAX_ADDR + 32], to[MAIL_MAX_ADDR + 1], id[33], *buf = NULL;
    const char *domain = strrchr(list_addr, '@'), *why = NULL;
    time_t now = time(NULL), rcv = (time_t)f->msg->received;
    struct tm tm;
    size_t cap = 4096, o = 0;
    int n;
    char reason[512];

    *out = NULL;
    *outlen = 0;
    /* One plain line: the group server's refusal in its own words, else
     * what kind of failure it was; never a log line, never a member's
     * address (the relay's replies can name them). */
    if (f->reason != NULL && f->reason[0] != '\0')
        snprintf(reason, sizeof(reason), "%s", f->reason);
    else if (f->msg->out_file == NULL)
        snprintf(reason, sizeof(reason), "the list could not re-encrypt it for the members in time");
    else
        failure_causes(f, reason, sizeof(reason));
    for (char *p = reason; *p; p++) /* one printable line, whatever the server said */
        reason[o++] = (*p >= 32 && *p < 127) ? *p : '?';
    reason[o] = '\0';
    domain = domain != NULL ? domain + 1 : "localhost";
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
    gmtime_r(&rcv, &tm);
    strftime(rdate, sizeof(rdate), "%a, %d %b %Y %H:%M:%S +0000", &tm);
    if (c->bounce_from != NULL)
        snprintf(from, sizeof(from), "%s", c->bounce_from);
    else
        snprintf(from, sizeof(from), "MAILER-DAEMON@%s", domain);
    /* An SMTPUTF8 sender with an ASCII local part is written with its
     * domain's A-label form, which any relay carries (the envelope takes
     * the same form when the relay does not offer SMTPUTF8); one with a
     * UTF-8 local part as it is: it goes only through a relay that offers
     * SMTPUTF8, which takes UTF-8 header fields too (RFC 6532). */
    if (!mail_addr_local_ascii(f->msg->sender) ||
        mail_addr_intl(f->msg->sender, to, sizeof(to), &why) != XP_OK)
        snprintf(to, sizeof(to), "%s", f->msg->sender);
    if (util_random_id(id, 12) != UTIL_OK)
        return XP_ERR_CRYPTO;
    if ((buf = malloc(cap)) == NULL)
        return XP_ERR_NOMEM;
    /* Member addresses stay out of the bounce: the sender may be outside
     * the list, and the membership is not theirs to learn. The log has them. */
    n = snprintf(buf, cap,
                 "From: Mail Delivery System <%s>\n"
                 "To: <%s>\n"
                 "Subject: Undelivered mail to list %s\n"
                 "Date: %s\n"
                 "Message-ID: <%s@%s>\n"
                 "Auto-Submitted: auto-replied\n"
                 "MIME-Version: 1.0\n"
                 "Content-Type: text/plain; charset=us-ascii\n"
                 "\n"
                 "Your message %s to the list %s, accepted on %s,\n"
                 "could not be delivered to %lld of %lld list members.\n"
                 "Reason: %s.\n"
                 "\n"
                 "The encrypted message was not read by the list; the list\n"
                 "administrator can see the details in the exploder's log.\n",
                 from, to, list_addr, date, id, domain,
                 f->msg->message_id[0] ? f->msg->message_id : "(without Message-ID)", list_addr, rdate,
                 (long long)f->failed, (long long)(f->failed + f->delivered), reason);
    if (n < 0 || (size_t)n >= cap) {
        free(buf);
        return XP_ERR_TOO_LARGE;
    }
    *out = buf;
    *outlen = (size_t)n;
    return XP_OK;
}

static xp_err finish_one(const xp_conf *c, spool *s, const xp_finished *f)
{
    xp_list *l = NULL;
    char *text = NULL, q[128];
    size_t len = 0;
    xp_err rc;
    bool bounce = f->msg->kind == XP_KIND_LIST && f->failed > 0 && f->msg->sender[0] != '\0';

    if (bounce) {
        rc = spool_list_get_by_id(s, f->msg->list_id, &l);
        if (rc != XP_OK && rc != XP_ERR_NOTFOUND)
            return rc;
        if ((rc = bounce_text(c, f, l != NULL ? l->address : "unknown-list@localhost", &text, &len)) != XP_OK)
            goto out;
    }
    rc = spool_finish(s, f->msg, bounce ? f->msg->sender : NULL, text, len);
    if (rc == XP_OK)
        log_info("message done id=%lld kind=%s delivered=%lld failed=%lld bounce=\"%s\"", (long long)f->msg->id,
                 f->msg->kind == XP_KIND_BOUNCE ? "bounce" : "list", (long long)f->delivered,
                 (long long)f->failed, bounce ? log_quote(q, sizeof(q), f->msg->sender) : "no");
out:
    free(text);
    xp_list_free(l);
    return rc;
}

/* ---- the loop --------------------------------------------------------- */

/* One pass over everything due now; *work counts what was tried,
 * *settled what came to an end (a deferral does not). */
static xp_err run_pass(const xp_conf *c, spool *s, xp_transport *t, size_t *work, size_t *settled)
{
    xp_err rc;
    int64_t now = now_s(), expired = 0, stepped = 0;

    *work = *settled = 0;
    /* A retry is never scheduled further ahead than retry_max: one that
     * is was scheduled before the clock went back. Where that cannot be
     * written (a full disk), the pass goes on with what is due: sending
     * must not stop for a reschedule, which the next pass tries again. */
    if (spool_clock_stepped_back(s, now, now + (int64_t)c->retry_max, &stepped) != XP_OK)
        log_warn("retries scheduled beyond retry_max stay where they are for now: the spool cannot be written");
    else if (stepped > 0)
        log_warn("the clock went back: retries scheduled beyond retry_max from now are due now count=%lld",
                 (long long)stepped);
    while (!stop_requested) {
        xp_msg *m = NULL;
        bool done = false;
        rc = spool_next_to_prepare(s, now, &m);
        if (rc == XP_ERR_NOTFOUND)
            break;
        if (rc != XP_OK)
            return rc;
        rc = prepare_one(c, s, m, &done);
        xp_msg_free(m);
        if (rc != XP_OK)
            return rc;
        (*work)++;
        *settled += done;
    }
    while (!stop_requested) {
        xp_batch *b = NULL;
        bool done = false;
        rc = spool_next_batch(s, now, c->batch_size, &b);
        if (rc == XP_ERR_NOTFOUND)
            break;
        if (rc != XP_OK)
            return rc;
        rc = send_batch(c, s, t, b, &done);
        xp_batch_free(b);
        if (rc != XP_OK)
            return rc;
        (*work)++;
        *settled += done;
    }
    if ((rc = spool_expire(s, now_s() - (int64_t)c->max_age, &expired)) != XP_OK)
        return rc;
    *settled += (size_t)expired;
    if (expired > 0)
        log_warn("gave up on recipients after max_age count=%lld max_age=%llu", (long long)expired,
                 (unsigned long long)c->max_age);
    while (!stop_requested) {
        xp_finished f;
        rc = spool_next_finished(s, &f);
        if (rc == XP_ERR_NOTFOUND)
            break;
        if (rc != XP_OK)
            return rc;
        rc = finish_one(c, s, &f);
        xp_finished_clear(&f);
        if (rc != XP_OK)
            return rc;
        (*work)++;
        (*settled)++;
    }
    return XP_OK;
}

int cmd_run_args(int argc, char **argv, bool *once)
{
    static const struct option opts[] = {{"once", no_argument, NULL, 'o'}, {NULL, 0, NULL, 0}};
    int opt;

    *once = false;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":o", opts, NULL)) != -1) {
        if (opt == 'o')
            *once = true;
        else
            return xp_getopt_error("", "run", opt, argv);
    }
    if (optind != argc)
        return xp_usage_error("", "run: unexpected argument %.40s", argv[optind]);
    return 0;
}

int cmd_run(const xp_conf *c, int argc, char **argv)
{
    bool once = false;
    spool *s = NULL;
    xp_transport *t = NULL;
    char lockpath[4096];
    int lockfd = -1, ex = 1, n;
    struct sigaction sa;
    xp_err rc;

    if ((ex = cmd_run_args(argc, argv, &once)) != 0)
        return ex;
    ex = 1;
    if ((rc = spool_open(c->spool_path, &s)) != XP_OK) {
        fprintf(stderr, "exploder: cannot open spool: %s\n", xp_strerror(rc));
        ex = XP_EX_TEMPFAIL;
        goto out;
    }
    n = snprintf(lockpath, sizeof(lockpath), "%s/runner.lock", c->spool_path);
    if (n < 0 || (size_t)n >= sizeof(lockpath) ||
        (lockfd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0) {
        fprintf(stderr, "exploder: cannot open %s\n", lockpath);
        goto out;
    }
    if (flock(lockfd, LOCK_EX | LOCK_NB) != 0) {
        fprintf(stderr, "exploder: %s\n", xp_strerror(XP_ERR_BUSY));
        ex = XP_EX_TEMPFAIL;
        goto out;
    }
    if ((rc = xp_transport_new(c, &t)) != XP_OK) {
        fprintf(stderr, "exploder: delivery: %s\n", xp_strerror(rc));
        ex = XP_EX_CONFIG;
        goto out;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    (void)spool_sweep(s, now_s(), 3600);
    log_info("queue runner started once=%s relay=%s batch_size=%u", once ? "yes" : "no", c->relay, c->batch_size);
    for (unsigned pass = 0; !stop_requested; pass++) {
        size_t work = 0, settled = 0;
        int64_t due = 0, now;
        if ((rc = run_pass(c, s, t, &work, &settled)) != XP_OK) {
            log_error("queue pass failed err=\"%s\"", xp_strerror(rc));
            if (once)
                break;
        }
        /* --once passes again only while something comes to an end: a
         * pass that only defers would find the same items due again
         * whenever a pass outlasts the backoff (a slow group server). */
        if (once && (settled == 0 || pass > 100000))
            break;
        if (once)
            continue;
        /* idle until the next due item or the poll interval, whichever first */
        if (spool_next_due(s, &due) != XP_OK)
            due = 0;
        now = now_s();
        int64_t wait = (int64_t)c->poll_interval;
        if (due > 0 && due - now < wait)
            wait = due - now;
        if (work > 0 || wait < 0)
            wait = 0;
        /* a pass that failed (the spool, most likely) left its items due:
         * passing again at once would call the group server and the relay
         * for them several times a second */
        if (rc != XP_OK)
            wait = (int64_t)c->poll_interval;
        pause_s((unsigned)wait);
        if (wait == 0 && work == 0) {
            struct timespec ts = {0, 200000000};
            nanosleep(&ts, NULL);
        }
    }
    if (once) {
        int64_t pending = 0;
        if (spool_pending_count(s, &pending) != XP_OK)
            pending = 1;
        ex = pending == 0 ? XP_EX_OK : XP_EX_TEMPFAIL;
        if (pending > 0)
            log_info("queue not empty, deferred recipients remain pending=%lld", (long long)pending);
    } else
        ex = 0;
    log_info("queue runner stopped");
out:
    xp_transport_free(t);
    if (lockfd >= 0)
        close(lockfd);
    spool_close(s);
    return ex;
}
