/* deliver.c: `exploder deliver --list ADDR [--sender ADDR] < message`, run by
 * the MTA's pipe transport. The answer is the exit code (sysexits.h): 0
 * only once the message and all its recipients are committed to the spool. */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "cmd.h"
#include "groupinfo.h"
#include "log.h"
#include "mail.h"
#include "prepare.h"
#include "spool.h"
#include "util.h"

/* Reads all of fd, at most max bytes (XP_ERR_TOO_LARGE beyond). */
static xp_err read_all(int fd, size_t max, unsigned char **out, size_t *len)
{
    switch (util_read_fd(fd, max, out, len)) {
    case UTIL_OK: return XP_OK;
    case UTIL_E_TOOBIG: return XP_ERR_TOO_LARGE;
    case UTIL_E_NOMEM: return XP_ERR_NOMEM;
    default: return XP_ERR_IO;
    }
}

/* A header value reduced to something safe to store and log. */
static void clean_value(const char *v, char *out, size_t outsz)
{
    size_t o = 0;
    for (const char *p = v; p != NULL && *p && o + 1 < outsz; p++)
        out[o++] = (*p >= 32 && *p < 127) ? *p : '?';
    out[o] = '\0';
}

/* list+tag@domain -> list@domain in base: the address Postfix, with its
 * recipient_delimiter "+" (Debian's default), itself took for the list when
 * it accepted the mail (relay_recipient_maps, transport_maps) and passes
 * whole as ${recipient}. False when there is no "+tag" in the local part. */
static bool list_base_address(const char *addr, char *base, size_t basesz)
{
    const char *at = strrchr(addr, '@'), *plus;
    size_t local, domain;
    if (at == NULL || (plus = memchr(addr, '+', (size_t)(at - addr))) == NULL || plus == addr)
        return false;
    local = (size_t)(plus - addr);
    domain = strlen(at);
    if (local > basesz - 1 || domain > basesz - 1 - local)
        return false;
    memcpy(base, addr, local);
    memcpy(base + local, at, domain + 1);
    return true;
}

/* Is addr (an addr-spec mail_addr_spec took, or "") a member of l? An
 * SMTPUTF8 poster's alice@b\xc3\xbccher.example is the member stored as
 * alice@xn--bcher-kva.example: the domain is compared in its A-label form
 * (mail_addr_intl), the local part as it is. */
static bool is_member(spool *s, const xp_list *l, const char *addr)
{
    char key[MAIL_MAX_ADDR + 1], q[128], qw[256];
    const char *why = NULL;

    if (addr[0] == '\0')
        return false;
    if (mail_addr_intl(addr, key, sizeof(key), &why) != XP_OK) {
        log_info("address not compared with the members list=%s address=\"%s\" reason=\"%s\"", l->address,
                 log_quote(q, sizeof(q), addr), log_quote(qw, sizeof(qw), why != NULL ? why : "not an address"));
        return false;
    }
    return spool_member_is(s, l->id, key);
}

void xp_post_from(const xp_list *l, const char *hdrs, size_t hdr_end, char *from, size_t fromsz)
{
    char *v;

    from[0] = '\0';
    /* RFC 5322 3.6: one From. With two, a DMARC checker may refuse or
     * check either and a mail reader show either: no From is taken then
     * (the envelope sender may still be a member) */
    if (mail_header_count(hdrs, hdr_end, "From") > 1) {
        log_info("more than one From header, none compared with the members list=%s", l->address);
    } else if ((v = mail_header_get(hdrs, hdr_end, "From")) != NULL) {
        if (mail_addr_spec(v, from, fromsz) != XP_OK)
            from[0] = '\0';
        free(v);
    }
}

bool xp_poster_is_member(spool *s, const xp_list *l, const char *from, const char *sender)
{
    return is_member(s, l, from) || is_member(s, l, sender);
}

/* The one line the MTA gets on standard error, and puts into its bounce
 * (Postfix pipe(8) takes a leading RFC 3463 status code as the DSN status):
 * "STATUS text", plain, printable, nothing from the log. */
typedef struct answer {
    const char *status; /* NULL: nothing said yet */
    char text[400];
} answer;

static int say(answer *a, int ex, const char *status, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int say(answer *a, int ex, const char *status, const char *fmt, ...)
{
    va_list ap;
    a->status = status;
    va_start(ap, fmt);
    vsnprintf(a->text, sizeof(a->text), fmt, ap);
    va_end(ap);
    return ex;
}

static void answer_print(const answer *a, int ex)
{
    char line[sizeof(a->text)];
    size_t o = 0;
    if (ex == XP_EX_OK || ex == XP_EX_USAGE)
        return;
    if (a->status == NULL) /* anything not said: temporary (75), the MTA keeps the mail */
        snprintf(line, sizeof(line), "temporary failure of the list exploder; the mail will be retried");
    else
        snprintf(line, sizeof(line), "%s", a->text);
    for (char *p = line; *p && o + 1 < sizeof(line); p++)
        line[o++] = (*p >= 32 && *p < 127) ? *p : '?';
    line[o] = '\0';
    fprintf(stderr, "%s %s\n", a->status != NULL ? a->status : "4.3.0", line);
}

int cmd_deliver(const xp_conf *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"list", required_argument, NULL, 'l'}, {"sender", required_argument, NULL, 's'}, {NULL, 0, NULL, 0}};
    const char *list_addr = NULL, *sender_arg = NULL;
    unsigned char *data = NULL;
    size_t len = 0, hdr_end, body_start;
    bool crlf, unmet = false;
    spool *s = NULL;
    xp_list *l = NULL;
    char sender[MAIL_MAX_ADDR + 1] = "", from[MAIL_MAX_ADDR + 1] = "", msgid[256] = "", q[128];
    char list_id[MAIL_MAX_ADDR + 1], base[MAIL_MAX_ADDR + 1];
    char *v = NULL, why[300];
    const char *kt = NULL, *bad = NULL;
    int ex = XP_EX_TEMPFAIL, opt;
    int64_t id = 0, checked_at = 0;
    xp_err rc;
    answer ans = {NULL, ""};

    /* exploder(1): a bad command line is 64 with one line, status 5.3.0 */
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":l:s:", opts, NULL)) != -1) {
        switch (opt) {
        case 'l': list_addr = optarg; break;
        case 's': sender_arg = optarg; break;
        default: return xp_getopt_error("5.3.0 ", "deliver", opt, argv);
        }
    }
    if (optind != argc)
        return xp_usage_error("5.3.0 ", "deliver: unexpected argument %.40s", argv[optind]);
    if (list_addr == NULL)
        return xp_usage_error("5.3.0 ", "deliver: --list ADDR is required");
    rc = read_all(STDIN_FILENO, (size_t)c->max_message_size, &data, &len);
    if (rc == XP_ERR_TOO_LARGE) {
        log_warn("refused: message too large list=\"%s\" max=%llu", log_quote(q, sizeof(q), list_addr),
                 (unsigned long long)c->max_message_size);
        ex = say(&ans, XP_EX_DATAERR, "5.3.4", "message too large for the list (limit %llu bytes)",
                 (unsigned long long)c->max_message_size);
        goto out;
    }
    if (rc != XP_OK) {
        log_error("cannot read message from stdin err=\"%s\"", xp_strerror(rc));
        goto out; /* 75: the MTA keeps it */
    }
    if ((rc = spool_open(c->spool_path, &s)) != XP_OK) {
        /* a downgrade: the MTA keeps the mail until the newer exploder is back */
        if (rc == XP_ERR_SCHEMA)
            ex = say(&ans, XP_EX_TEMPFAIL, "4.3.5", "%s", xp_strerror(rc));
        goto out;
    }
    rc = spool_list_get(s, list_addr, &l);
    /* a list's own name wins; else list+tag@ is mail to the list */
    if (rc == XP_ERR_NOTFOUND && list_base_address(list_addr, base, sizeof(base)))
        rc = spool_list_get(s, base, &l);
    if (rc == XP_ERR_NOTFOUND) {
        log_warn("refused: no such list list=\"%s\"", log_quote(q, sizeof(q), list_addr));
        ex = say(&ans, XP_EX_NOUSER, "5.1.1", "no such list: %s", q);
        goto out;
    }
    if (rc != XP_OK)
        goto out;
    if ((rc = mail_split((const char *)data, len, &hdr_end, &body_start, &crlf)) != XP_OK) {
        log_warn("refused: malformed message list=%s err=\"%s\"", l->address, mail_split_strerror(rc));
        ex = say(&ans, XP_EX_DATAERR, "5.6.0", "%s: malformed message: %s", l->address, mail_split_strerror(rc));
        goto out;
    }
    /* a copy we sent ourselves coming back is a loop, not a new post; also
     * when a list it went through since put its own List-Id before ours */
    if (mail_list_id(l->address, list_id, sizeof(list_id)) == XP_OK &&
        mail_has_list_id((const char *)data, hdr_end, list_id)) {
        log_warn("refused: mail loop list=%s", l->address);
        ex = say(&ans, XP_EX_DATAERR, "5.4.6", "mail loop: the message already carries List-Id <%s>", list_id);
        goto out;
    }
    /* our copy back through another list, which replaced our List-Id */
    if (mail_been_there((const char *)data, hdr_end, l->address)) {
        log_warn("refused: mail loop list=%s", l->address);
        ex = say(&ans, XP_EX_DATAERR, "5.4.6", "mail loop: the message already went through %s (X-BeenThere)",
                 l->address);
        goto out;
    }
    /* envelope sender: the MTA's (--sender ${sender}), else Return-Path */
    if (sender_arg != NULL) {
        /* The MTA's null sender may come as "", "<>" or MAILER-DAEMON: all
         * mean "do not bounce to anyone". Never refuse mail over it. */
        const char *sw = NULL;
        char qw[256];
        if (*sender_arg != '\0' && strcmp(sender_arg, "<>") != 0 &&
            mail_addr_spec_why(sender_arg, sender, sizeof(sender), &sw) != XP_OK) {
            log_info("envelope sender is not an address, treated as null sender=\"%s\" reason=\"%s\"",
                     log_quote(q, sizeof(q), sender_arg), log_quote(qw, sizeof(qw), sw != NULL ? sw : "not an address"));
            sender[0] = '\0';
        }
    } else if ((v = mail_header_get((const char *)data, hdr_end, "Return-Path")) != NULL) {
        if (mail_addr_spec(v, sender, sizeof(sender)) != XP_OK)
            sender[0] = '\0';
        free(v);
        v = NULL;
    }
    xp_post_from(l, (const char *)data, hdr_end, from, sizeof(from));
    if (sender_arg == NULL && sender[0] == '\0')
        memcpy(sender, from, sizeof(sender));
    if ((v = mail_header_get((const char *)data, hdr_end, "Message-ID")) != NULL) {
        clean_value(v, msgid, sizeof(msgid));
        free(v);
        v = NULL;
    }
    if (l->members_only && !xp_poster_is_member(s, l, from, sender)) {
        log_warn("refused: sender not a member list=%s from=\"%s\"", l->address,
                 log_quote(q, sizeof(q), from));
        ex = say(&ans, XP_EX_NOPERM, "5.7.1", "%s accepts mail from its members only", l->address);
        goto out;
    }
    checked_at = l->group_info_at; /* the discovery answer the check went by */
    rc = xp_check_message(c, l, data, len, &kt, &bad, &unmet, false);
    if (rc == XP_OK && unmet) {
        /* Also for a certificate of the group's CA the list has not met:
         * perhaps a version newer than the list's newest, which `groupsrv
         * group retire --before` may have left the only one the group
         * server still reads (a sender with the older and the current
         * certificate in their address book). Learnt now, the message is
         * read with it; not learnt (the server's current one is known, or
         * it cannot be asked now), it is taken as it is. Not asked, and
         * not logged, within the minute after the group server was asked:
         * then the certificate the list has not met is most often the
         * sender's own, which the group's CA issued too (`member add
         * --issue-cert`) and which Thunderbird and Outlook add to every
         * message. */
        xp_err fr = xp_group_cert_refresh_unmet(c, s, l, why, sizeof(why));
        if (fr == XP_OK) {
            log_info("a new group certificate added to the list list=%s", l->address);
            checked_at = l->group_info_at;
            rc = xp_check_message(c, l, data, len, &kt, &bad, NULL, false);
        } else if (fr != XP_ERR_NOTFOUND) {
            log_info("group certificate not refreshed, the message is taken for a version the list knows "
                     "list=%s reason=\"%s\"",
                     l->address, why);
        }
    }
    if (rc == XP_ERR_WRONG_RECIPIENT) {
        /* the group key may have been rotated: senders that fetched the
         * new certificate encrypt to a version this list has not met */
        xp_err fr = xp_group_cert_refresh(c, s, l, why, sizeof(why));
        if (fr == XP_OK) {
            log_info("a new group certificate added to the list list=%s", l->address);
            checked_at = l->group_info_at;
            rc = xp_check_message(c, l, data, len, &kt, &bad, NULL, false);
        }
        /* The list knows the group's current certificate (the server said
         * so now, or within the minute): a message that names another
         * certificate of the group's CA may be for a version before the
         * list's oldest (a list made after `groupsrv group rotate`, a
         * sender who still has the certificate before) or between its
         * newest and the current one. The exploder cannot tell it from
         * the sender's own certificate: taken, and the group server says
         * at preparation (its unknown_recipient bounces it), as groupmail
         * lets it say for a reader whose pin never held that version. A
         * forward list, which no group server reads for, still refuses it
         * (xp_check_message says why). */
        if (rc == XP_ERR_WRONG_RECIPIENT &&
            (fr == XP_OK || fr == XP_ERR_NOTFOUND || xp_group_cert_known_lately(c, l))) {
            rc = xp_check_message(c, l, data, len, &kt, &bad, NULL, true);
            if (rc == XP_OK)
                log_info("taken for a key version the list has not met, which the group server decides list=%s",
                         l->address);
        }
        if (rc == XP_ERR_WRONG_RECIPIENT && fr != XP_OK && fr != XP_ERR_NOTFOUND) {
            /* Not knowing is not a refusal: the MTA asks again later, when
             * the group server can say whether the certificate is new. */
            log_warn("group certificate not refreshed list=%s reason=\"%s\"", l->address, why);
            ex = say(&ans, XP_EX_TEMPFAIL, "4.3.0",
                     "%s: the message is encrypted to a group certificate this list does not know, and the "
                     "group server cannot be asked for the current one now (%s)",
                     l->address, why);
            goto out;
        }
    }
    /* Mail the group server will never unwrap is refused below, with its
     * reason, not accepted and bounced hours later. The answer is cached;
     * without one (server down, never fetched) the runner finds out. A
     * message to several key versions was read with the newest whose
     * RecipientInfo the group takes by the answer cached before this
     * check (find_group_ri): when an answer came since (this refresh, or
     * the one a message naming another certificate of the group's CA
     * makes), it is checked again, so that the choice and the refusal use
     * the same one (a list made while the group server was down has none
     * cached). */
    if (rc == XP_OK && kt != NULL) {
        if (xp_group_info_refresh(c, s, l, false, why, sizeof(why)) != XP_OK)
            log_warn("group server discovery not refreshed, using what is cached list=%s reason=\"%s\"",
                     l->address, why);
        if (l->group_info_at != checked_at)
            rc = xp_check_message(c, l, data, len, &kt, &bad, NULL, false);
    }
    if (bad == NULL)
        bad = xp_strerror(rc); /* the refusals' reason when the check gave none */
    switch (rc) {
    case XP_OK: break;
    case XP_ERR_FORMAT:
    case XP_ERR_TOO_LARGE:
        log_warn("refused: malformed message list=%s err=\"%s\"", l->address, bad);
        ex = say(&ans, XP_EX_DATAERR, "5.6.0", "%s: malformed message: %s", l->address, bad);
        goto out;
    case XP_ERR_NOT_ENCRYPTED:
    case XP_ERR_WRONG_RECIPIENT:
    case XP_ERR_CIPHER: /* RFC 3463 X.7.6: cryptographic algorithm not supported */
        log_warn("refused list=%s reason=\"%s\"", l->address, bad);
        ex = say(&ans, XP_EX_NOPERM, rc == XP_ERR_CIPHER ? "5.7.6" : "5.7.1", "%s: %s", l->address, bad);
        goto out;
    default:
        log_error("cannot check message list=%s err=\"%s\"", l->address, xp_strerror(rc));
        goto out; /* 75: an admin can fix the list and the MTA retries */
    }
    if (kt != NULL) {
        if (xp_group_accepts(l, kt, why, sizeof(why)) == XP_ERR_REFUSED) {
            log_warn("refused list=%s key_transport=%s reason=\"%s\"", l->address, kt, why);
            ex = say(&ans, XP_EX_NOPERM, "5.7.6", "%s: the group server will not decrypt this message: %s",
                     l->address, why);
            goto out;
        }
    }
    if ((rc = spool_accept(s, l, sender, msgid, data, len, &id)) != XP_OK) {
        log_error("cannot spool message list=%s err=\"%s\"", l->address, xp_strerror(rc));
        goto out;
    }
    /* the sender and the Message-ID are the poster's: quoted, so that
     * neither can add a field (or, escaped, a line) to the log */
    char qm[sizeof(msgid) * 2];
    log_info("accepted list=%s id=%lld size=%zu sender=\"%s\" message_id=\"%s\"", l->address, (long long)id,
             len, log_quote(q, sizeof(q), sender), log_quote(qm, sizeof(qm), msgid));
    ex = XP_EX_OK;
out:
    answer_print(&ans, ex);
    free(v);
    free(data);
    xp_list_free(l);
    spool_close(s);
    return ex;
}
