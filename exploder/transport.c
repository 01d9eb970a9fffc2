/* transport.c: SMTP (libcurl) and maildir delivery. See transport.h. */
#include "transport.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "log.h"
#include "mail.h"
#include "util.h"

/* libcurl 7.69 to 8.1 spell it with three Ls; 8.2 added the fixed name. */
#ifndef CURLOPT_MAIL_RCPT_ALLOWFAILS
#define CURLOPT_MAIL_RCPT_ALLOWFAILS CURLOPT_MAIL_RCPT_ALLLOWFAILS
#endif

struct xp_transport {
    const xp_conf *conf;
    CURL *curl;
    char *maildir; /* non-NULL for maildir: targets */
    char *password;
    size_t password_len;
    int smtputf8; /* the last probe's relay offered SMTPUTF8: 1, did not: 0, not known: -1 */
};

xp_err xp_transport_new(const xp_conf *conf, xp_transport **out)
{
    xp_transport *t = NULL;
    xp_err rc = XP_ERR_NOMEM;

    *out = NULL;
    if (conf->relay == NULL) {
        log_error("no [delivery] relay configured");
        return XP_ERR_CONFIG;
    }
    if ((t = calloc(1, sizeof(*t))) == NULL)
        goto out;
    t->conf = conf;
    t->smtputf8 = -1;
    if (strncmp(conf->relay, "maildir:", 8) == 0) {
        if (conf->relay[8] == '\0') {
            rc = XP_ERR_CONFIG;
            goto out;
        }
        if ((t->maildir = strdup(conf->relay + 8)) == NULL)
            goto out;
    } else {
        if ((t->curl = curl_easy_init()) == NULL)
            goto out;
        if (conf->relay_user != NULL && conf->starttls == XP_STARTTLS_NO && strncmp(conf->relay, "smtp://", 7) == 0 &&
            !util_auth_clear_allows(conf->relay_auth_in_clear, conf->relay)) {
            /* starttls = no would send relay_user's password in clear
             * to a relay elsewhere: anyone on the path reads it */
            log_error("refusing to send relay_user's password in clear: starttls = no, and relay_auth_in_clear = %s "
                      "allows that %s; use starttls = required, smtps://, or relay_auth_in_clear = yes",
                      conf->relay_auth_in_clear == UTIL_AUTH_CLEAR_NO ? "no" : "loopback",
                      conf->relay_auth_in_clear == UTIL_AUTH_CLEAR_NO ? "to no relay" : "only to a relay on this host");
            rc = XP_ERR_CONFIG;
            goto out;
        }
        if (conf->relay_user != NULL) {
            char *pw = NULL;
            size_t pwlen = 0;
            int prc = UTIL_E_ARGS, e = 0;
            if (conf->relay_password_file != NULL) {
                errno = 0;
                prc = util_read_pin_source(conf->relay_password_file, &pw, &pwlen);
                e = errno; /* the system's reason for UTIL_E_IO */
            }
            if (prc != UTIL_OK) {
                /* with the reason: a mode too open, not found, a pipe
                 * nobody wrote to, a link that loops */
                log_error("relay_user set but relay_password_file missing or unreadable (want mode 0600) "
                          "path=\"%s\" err=\"%s\"",
                          log_qs(conf->relay_password_file != NULL ? conf->relay_password_file : ""),
                          conf->relay_password_file != NULL ? util_pin_source_why(prc, e) : "not set");
                rc = XP_ERR_CONFIG;
                goto out;
            }
            util_forget_env_source(conf->relay_password_file); /* out of /proc/PID/environ */
            t->password = pw;
            t->password_len = pwlen;
        }
    }
    *out = t;
    t = NULL;
    rc = XP_OK;
out:
    xp_transport_free(t);
    return rc;
}

void xp_transport_free(xp_transport *t)
{
    if (t == NULL)
        return;
    if (t->curl != NULL)
        curl_easy_cleanup(t->curl);
    free(t->maildir);
    util_secret_free(t->password, t->password_len);
    free(t);
}

/* ---- SMTP ------------------------------------------------------------------ */

/* Where we are in the SMTP dialogue, learned from libcurl's debug stream:
 * libcurl does not pipeline, so every command is followed by its reply. */
enum dlg_state { DLG_OTHER = 0, DLG_MAIL, DLG_RCPT, DLG_DATA, DLG_POSTDATA };

typedef struct send_ctx {
    FILE *fp;
    bool prev_cr;          /* last byte handed out was CR */
    bool pending_lf;       /* LF still owed after an inserted CR */
    enum dlg_state state;
    size_t rcpt_sent;      /* RCPT TO commands seen so far */
    size_t n;
    int *codes;
    int final_code;
    int refused_code;     /* a 5xx to DATA: the message as a whole refused */
    const char *waiting;  /* the reply we wait for, for messages */
    bool sent_all;        /* the whole message went out: only the relay's last reply is missing */
    bool ehlo;            /* reading the reply to EHLO */
    bool ehlo_seen;       /* an EHLO was answered on this transfer (not a reused connection) */
    bool smtputf8;        /* ... and its reply offered SMTPUTF8 (RFC 6531) */
    char fail_reply[160]; /* the last 4xx/5xx reply but to RCPT, printable ASCII */
} send_ctx;

/* Reads the message and turns bare LF into CRLF (SMTP's line ending; we
 * cannot use CURLOPT_CRLF, which would also double existing CRLFs). */
static size_t read_cb(char *buf, size_t size, size_t nitems, void *user)
{
    send_ctx *c = user;
    size_t cap = size * nitems, o = 0;
    char tmp[8192];

    if (cap < 2)
        return CURL_READFUNC_ABORT;
    if (c->pending_lf) {
        buf[o++] = '\n';
        c->pending_lf = false;
        c->prev_cr = false;
    }
    while (o + 2 <= cap) {
        size_t want = (cap - o) / 2;
        if (want > sizeof(tmp))
            want = sizeof(tmp);
        size_t got = fread(tmp, 1, want, c->fp);
        if (got == 0) {
            if (ferror(c->fp))
                return CURL_READFUNC_ABORT;
            c->sent_all = o == 0;
            break;
        }
        for (size_t i = 0; i < got; i++) {
            if (tmp[i] == '\n' && !c->prev_cr)
                buf[o++] = '\r';
            buf[o++] = tmp[i];
            c->prev_cr = tmp[i] == '\r';
        }
    }
    return o;
}

static int reply_code(const char *p, size_t n, bool *final)
{
    *final = false;
    if (n < 3 || !isdigit((unsigned char)p[0]) || !isdigit((unsigned char)p[1]) || !isdigit((unsigned char)p[2]))
        return 0;
    *final = n == 3 || p[3] == ' ' || p[3] == '\r' || p[3] == '\n';
    return (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
}

static int debug_cb(CURL *h, curl_infotype type, char *data, size_t size, void *user)
{
    send_ctx *c = user;
    (void)h;
    if (type == CURLINFO_HEADER_OUT) {
        if (size >= 10 && strncasecmp(data, "MAIL FROM:", 10) == 0) {
            c->state = DLG_MAIL;
            c->waiting = "the reply to MAIL FROM";
        } else if (size >= 8 && strncasecmp(data, "RCPT TO:", 8) == 0) {
            c->state = DLG_RCPT;
            c->waiting = "the reply to RCPT TO";
            c->rcpt_sent++;
        } else if (size >= 4 && strncasecmp(data, "DATA", 4) == 0) {
            c->state = DLG_DATA;
            c->waiting = "the reply to DATA";
        } else {
            c->state = DLG_OTHER;
            /* again after STARTTLS: what the last one offers counts */
            c->ehlo = size >= 4 && strncasecmp(data, "EHLO", 4) == 0;
            if (c->ehlo)
                c->smtputf8 = false;
            c->waiting = c->ehlo ? "the reply to EHLO" : "a reply";
        }
    } else if (type == CURLINFO_HEADER_IN) {
        bool final;
        int code = reply_code(data, size, &final);
        if (c->ehlo && code == 250 && size >= 12 && strncasecmp(data + 4, "SMTPUTF8", 8) == 0 &&
            (size == 12 || data[12] == '\r' || data[12] == '\n' || data[12] == ' '))
            c->smtputf8 = true;
        if (code == 0 || !final)
            return 0;
        if (c->ehlo) {
            c->ehlo = false;
            c->ehlo_seen = code == 250;
        }
        if (code >= 400 && c->state != DLG_RCPT) {
            /* the reply that ended the transaction (a refused RCPT is its
             * recipient's own code); to the log and the spool: printable only */
            size_t n = size, o;
            while (n > 0 && (data[n - 1] == '\r' || data[n - 1] == '\n'))
                n--;
            for (o = 0; o < n && o + 1 < sizeof(c->fail_reply); o++)
                c->fail_reply[o] = data[o] >= 0x20 && data[o] < 0x7f ? data[o] : '?';
            /* A reply longer than this is cut after a whole word: a word
             * cut short may be a member's address cut before its '@',
             * which the bounce would then not know to mask. */
            if (o < n && data[o] != ' ')
                while (o > 0 && c->fail_reply[o - 1] != ' ')
                    o--;
            while (o < n && o > 0 && c->fail_reply[o - 1] == ' ')
                o--;
            c->fail_reply[o] = '\0';
        }
        switch (c->state) {
        case DLG_MAIL:
            /* a 5xx here refuses our own envelope sender (the list owner,
             * or <> for bounces): the relay's or our configuration, which
             * an admin fixes, not the message: it stays a deferral */
            c->state = DLG_OTHER;
            break;
        case DLG_RCPT:
            if (c->rcpt_sent >= 1 && c->rcpt_sent <= c->n)
                c->codes[c->rcpt_sent - 1] = code;
            c->state = DLG_OTHER;
            break;
        case DLG_DATA:
            if (code / 100 == 5)
                c->refused_code = code;
            c->state = code == 354 ? DLG_POSTDATA : DLG_OTHER;
            break;
        case DLG_POSTDATA:
            c->final_code = code;
            c->state = DLG_OTHER;
            break;
        default:
            break;
        }
    }
    return 0;
}

/* After a failed transaction the connection's dialogue may be out of step:
 * libcurl 7.88 keeps a connection whose last reply timed out, and the reply
 * that comes late is then read as the answer to the next command (a stale
 * 250 taken for another transaction's). Never reuse it: a new handle, a new
 * connection. The old one's QUIT is bounded by SERVER_RESPONSE_TIMEOUT. */
static void fresh_handle(xp_transport *t)
{
    CURL *h = curl_easy_init();
    if (h == NULL)
        return; /* keep the old one: the next transaction may fail, no worse */
    curl_easy_cleanup(t->curl);
    t->curl = h;
}

#define CK(x)                                                                                                \
    do {                                                                                                     \
        if ((cr = (x)) != CURLE_OK)                                                                          \
            goto setup_failed;                                                                               \
    } while (0)

#define CKR(x)                                                                                               \
    do {                                                                                                     \
        if ((cr = (x)) != CURLE_OK)                                                                          \
            return cr;                                                                                       \
    } while (0)

/* The options of every transfer to the relay: where, how long, TLS and
 * login, and the debug stream that follows the dialogue. */
static CURLcode smtp_common_opts(xp_transport *t, CURL *h, send_ctx *ctx, char *errbuf)
{
    const xp_conf *conf = t->conf;
    CURLcode cr = CURLE_OK;
    CKR(curl_easy_setopt(h, CURLOPT_URL, conf->relay));
    /* A relay on this host directly, never through a proxy the environment
     * names (libcurl takes all_proxy for SMTP too): that would carry what
     * relay_auth_in_clear = loopback lets go in clear (the password) to the
     * proxy's host, and on to a relay there. */
    if (util_url_host_is_loopback(conf->relay))
        CKR(curl_easy_setopt(h, CURLOPT_PROXY, ""));
    CKR(curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L));
    CKR(curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf));
    CKR(curl_easy_setopt(h, CURLOPT_VERBOSE, 1L)); /* needed for the debug callback */
    CKR(curl_easy_setopt(h, CURLOPT_DEBUGFUNCTION, debug_cb));
    CKR(curl_easy_setopt(h, CURLOPT_DEBUGDATA, ctx));
    CKR(curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 30L));
    CKR(curl_easy_setopt(h, CURLOPT_TIMEOUT, (long)conf->relay_timeout));
    /* also bounds the QUIT at disconnect, which CURLOPT_TIMEOUT does not:
     * else a stalled relay holds the runner for libcurl's 120 s default */
    CKR(curl_easy_setopt(h, CURLOPT_SERVER_RESPONSE_TIMEOUT, (long)conf->relay_timeout));
    /* With a login, "yes" is "required": a relay, or anyone on the path,
     * that hides STARTTLS would otherwise be sent the password in clear.
     * Only an explicit "no" (a relay on this host) logs in without TLS. */
    long use_ssl = conf->starttls == XP_STARTTLS_REQUIRED ? (long)CURLUSESSL_ALL
                   : conf->starttls == XP_STARTTLS_YES    ? (conf->relay_user != NULL ? (long)CURLUSESSL_ALL
                                                                                      : (long)CURLUSESSL_TRY)
                                                          : (long)CURLUSESSL_NONE;
    CKR(curl_easy_setopt(h, CURLOPT_USE_SSL, use_ssl));
    CKR(curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, conf->relay_verify ? 1L : 0L));
    CKR(curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, conf->relay_verify ? 2L : 0L));
    if (conf->relay_cacert != NULL)
        CKR(curl_easy_setopt(h, CURLOPT_CAINFO, conf->relay_cacert));
    if (conf->relay_user != NULL) {
        CKR(curl_easy_setopt(h, CURLOPT_USERNAME, conf->relay_user));
        CKR(curl_easy_setopt(h, CURLOPT_PASSWORD, t->password));
    }
    return CURLE_OK;
}

static size_t discard_cb(char *p, size_t size, size_t n, void *user)
{
    (void)p;
    (void)user;
    return size * n;
}

/* Asks the relay (EHLO, then NOOP) whether it offers SMTPUTF8, before a
 * transaction that would need it: libcurl would send a UTF-8 mailbox to a
 * relay without it too, which RFC 6531 3.4 forbids. A new connection,
 * whose EHLO is read (a kept one's was read before, perhaps from another
 * relay behind the same name); it stays for the transaction. 1: offered,
 * 0: not, -1: not known (the relay could not be asked; *detail says why). */
static int smtp_probe_smtputf8(xp_transport *t, char *detail, size_t detailsz)
{
    send_ctx ctx;
    char errbuf[CURL_ERROR_SIZE] = "";
    CURLcode cr;
    CURL *h = t->curl;

    memset(&ctx, 0, sizeof(ctx));
    curl_easy_reset(h);
    if ((cr = smtp_common_opts(t, h, &ctx, errbuf)) != CURLE_OK ||
        (cr = curl_easy_setopt(h, CURLOPT_FRESH_CONNECT, 1L)) != CURLE_OK ||
        (cr = curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "NOOP")) != CURLE_OK ||
        (cr = curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard_cb)) != CURLE_OK) {
        snprintf(detail, detailsz, "libcurl setup: %s", curl_easy_strerror(cr));
        return -1;
    }
    ctx.waiting = "the greeting";
    cr = curl_easy_perform(h);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(h, CURLOPT_DEBUGDATA, NULL);
    /* a relay that took only HELO offers nothing */
    t->smtputf8 = cr == CURLE_OK || ctx.ehlo_seen ? (ctx.ehlo_seen && ctx.smtputf8 ? 1 : 0) : -1;
    if (cr != CURLE_OK) {
        /* the caller's failure path takes a new handle (fresh_handle) */
        snprintf(detail, detailsz, "%.200s (waiting for %s)", errbuf[0] ? errbuf : curl_easy_strerror(cr),
                 ctx.waiting);
        return -1;
    }
    return t->smtputf8;
}

static xp_err smtp_send(xp_transport *t, const char *mail_from, char *const *rcpts, size_t n, const char *path,
                        xp_send_result *res)
{
    const xp_conf *conf = t->conf;
    struct curl_slist *rl = NULL;
    send_ctx ctx;
    char from[MAIL_MAX_ADDR + 3], errbuf[CURL_ERROR_SIZE] = "", q[128], q2[128];
    CURLcode cr = CURLE_OK;
    xp_err rc = XP_ERR_TEMP;
    bool utf8_local = false, intl = false;
    CURL *h = t->curl;

    memset(&ctx, 0, sizeof(ctx));
    ctx.n = n;
    ctx.codes = res->rcpt_code;
    if ((ctx.fp = fopen(path, "rb")) == NULL) {
        snprintf(res->detail, sizeof(res->detail), "cannot open spool file (errno %d)", errno);
        rc = XP_ERR_IO;
        goto out;
    }
    /* An address with UTF-8 (a bounce to an SMTPUTF8 sender) goes as it
     * is only to a relay that offers SMTPUTF8 (RFC 6531 3.4), which
     * libcurl then declares: asked first. To one that does not, an ASCII
     * local part goes with its domain's A-label form (RFC 6531 3.2); a
     * UTF-8 local part cannot go at all. */
    for (size_t i = 0; i < n; i++) {
        if (!mail_addr_ascii(rcpts[i]))
            intl = true;
        if (!mail_addr_local_ascii(rcpts[i]))
            utf8_local = true;
    }
    if (intl && smtp_probe_smtputf8(t, res->detail, sizeof(res->detail)) < 0) {
        rc = XP_ERR_TEMP;
        goto out;
    }
    if (utf8_local && t->smtputf8 == 0) {
        for (size_t i = 0; i < n; i++) {
            if (mail_addr_local_ascii(rcpts[i]))
                continue; /* not tried: sent on the next pass */
            res->rcpt_code[i] = 553;
            log_warn("the relay does not offer SMTPUTF8, which an address with a UTF-8 local part needs "
                     "(RFC 6531); not sent to it relay=\"%s\" rcpt=\"%s\"",
                     log_quote(q, sizeof(q), conf->relay), log_quote(q2, sizeof(q2), rcpts[i]));
        }
        snprintf(res->detail, sizeof(res->detail),
                 "553 5.6.7 the relay does not offer SMTPUTF8, which an address with a UTF-8 local part needs");
        rc = XP_ERR_TEMP;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        char line[MAIL_MAX_ADDR + 3];
        struct curl_slist *nl;
        if (intl && t->smtputf8 == 0 && !mail_addr_ascii(rcpts[i])) {
            char key[MAIL_MAX_ADDR + 1];
            const char *why = NULL;
            if (mail_addr_intl(rcpts[i], key, sizeof(key), &why) != XP_OK) {
                /* deliver took it: not reached; refused like a relay would */
                snprintf(res->detail, sizeof(res->detail), "553 5.1.3 %s", why != NULL ? why : "not an address");
                res->rcpt_code[i] = 553;
                rc = XP_ERR_TEMP;
                goto out;
            }
            log_info("the relay does not offer SMTPUTF8: an internationalized domain goes in its A-label form "
                     "(RFC 6531 3.2) relay=\"%s\" rcpt=\"%s\"",
                     log_quote(q, sizeof(q), conf->relay), log_quote(q2, sizeof(q2), key));
            snprintf(line, sizeof(line), "<%s>", key);
        } else {
            snprintf(line, sizeof(line), "<%s>", rcpts[i]);
        }
        if ((nl = curl_slist_append(rl, line)) == NULL) {
            rc = XP_ERR_NOMEM;
            goto out;
        }
        rl = nl;
    }
    curl_easy_reset(h);
    CK(smtp_common_opts(t, h, &ctx, errbuf));
    if (mail_from != NULL && *mail_from != '\0') {
        snprintf(from, sizeof(from), "<%s>", mail_from);
        CK(curl_easy_setopt(h, CURLOPT_MAIL_FROM, from));
    } /* else: libcurl sends the null reverse-path "<>" */
    CK(curl_easy_setopt(h, CURLOPT_MAIL_RCPT, rl));
    CK(curl_easy_setopt(h, CURLOPT_MAIL_RCPT_ALLOWFAILS, 1L));
    CK(curl_easy_setopt(h, CURLOPT_UPLOAD, 1L));
    CK(curl_easy_setopt(h, CURLOPT_READFUNCTION, read_cb));
    CK(curl_easy_setopt(h, CURLOPT_READDATA, &ctx));
    ctx.waiting = "the greeting";
    cr = curl_easy_perform(h);
    res->final_code = ctx.final_code;
    /* a 2xx to the end of DATA is the relay taking the message, whatever
     * libcurl thinks of what came after: sending again would duplicate it */
    if (ctx.final_code / 100 == 2) {
        rc = XP_OK;
        goto out;
    }
    if (ctx.final_code / 100 == 5 || ctx.refused_code != 0)
        rc = XP_ERR_PERM; /* the message itself was refused (DATA or its end) */
    else
        rc = XP_ERR_TEMP;
    if (ctx.fail_reply[0] != '\0')
        snprintf(res->detail, sizeof(res->detail), "%s", ctx.fail_reply);
    else if (ctx.state == DLG_POSTDATA && ctx.sent_all)
        /* SMTP's duplicate window (RFC 1047): the relay may have the message */
        snprintf(res->detail, sizeof(res->detail), "no reply to the end of DATA: %.160s; sent again, may duplicate",
                 errbuf[0] ? errbuf : curl_easy_strerror(cr));
    else if (ctx.state == DLG_POSTDATA)
        snprintf(res->detail, sizeof(res->detail), "%.200s (while sending DATA)",
                 errbuf[0] ? errbuf : curl_easy_strerror(cr));
    else
        snprintf(res->detail, sizeof(res->detail), "%.200s (waiting for %s)",
                 errbuf[0] ? errbuf : curl_easy_strerror(cr), ctx.waiting);
    goto out;
setup_failed:
    snprintf(res->detail, sizeof(res->detail), "libcurl setup: %s", curl_easy_strerror(cr));
    rc = XP_ERR_TEMP;
out:
    if (h != NULL) {
        /* drop pointers into our stack before returning */
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
        curl_easy_setopt(h, CURLOPT_MAIL_RCPT, NULL);
        curl_easy_setopt(h, CURLOPT_READDATA, NULL);
        curl_easy_setopt(h, CURLOPT_DEBUGDATA, NULL);
    }
    if (rc != XP_OK && h != NULL)
        fresh_handle(t);
    curl_slist_free_all(rl);
    if (ctx.fp != NULL)
        fclose(ctx.fp);
    return rc;
}

/* ---- maildir --------------------------------------------------------------- */

/* A file-system-safe directory name for an address. */
static void safe_name(const char *addr, char *out, size_t outsz)
{
    size_t o = 0;
    for (const char *p = addr; *p && o + 1 < outsz; p++) {
        unsigned char ch = (unsigned char)*p;
        out[o++] = (isalnum(ch) || ch == '@' || ch == '.' || ch == '-' || ch == '_' || ch == '+') ? (char)ch : '_';
    }
    out[o] = '\0';
    if (out[0] == '.')
        out[0] = '_';
}

/* Maildir delivery: write into tmp/, fsync, rename into new/, fsync new/. */
static int maildir_one(const char *root, const char *rcpt, const unsigned char *data, size_t len)
{
    char name[MAIL_MAX_ADDR + 1], base[4096], tmp[4600], fin[4600], nd[4200], id[33];
    int n, fd = -1, rc = -1;
    size_t off = 0;

    safe_name(rcpt, name, sizeof(name));
    n = snprintf(base, sizeof(base), "%s/%s", root, name);
    if (n < 0 || (size_t)n >= sizeof(base))
        return -1;
    snprintf(nd, sizeof(nd), "%s/new", base);
    snprintf(tmp, sizeof(tmp), "%s/cur", base);
    if (util_mkdir_p(nd, 0700) != UTIL_OK || util_mkdir_p(tmp, 0700) != UTIL_OK)
        return -1;
    snprintf(tmp, sizeof(tmp), "%s/tmp", base);
    if (util_mkdir_p(tmp, 0700) != UTIL_OK || util_random_id(id, 8) != UTIL_OK)
        return -1;
    snprintf(tmp, sizeof(tmp), "%s/tmp/%lld.%d.%s.exploder", base, (long long)time(NULL), (int)getpid(), id);
    snprintf(fin, sizeof(fin), "%s/new/%lld.%d.%s.exploder", base, (long long)time(NULL), (int)getpid(), id);
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0)
        return -1;
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            goto out;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0)
        goto out;
    close(fd);
    fd = -1;
    if (rename(tmp, fin) != 0 || util_fsync_dir(nd) != UTIL_OK)
        goto out;
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    if (rc != 0)
        unlink(tmp);
    return rc;
}

static xp_err maildir_send(xp_transport *t, char *const *rcpts, size_t n, const char *path, xp_send_result *res)
{
    unsigned char *data = NULL;
    size_t len = 0;
    size_t ok = 0;

    if (util_read_file(path, XP_PREPARED_SIZE_CEILING, &data, &len) != UTIL_OK) {
        snprintf(res->detail, sizeof(res->detail), "cannot read spool file");
        return XP_ERR_IO;
    }
    for (size_t i = 0; i < n; i++) {
        if (maildir_one(t->maildir, rcpts[i], data, len) == 0) {
            res->rcpt_code[i] = 250;
            ok++;
        } else {
            res->rcpt_code[i] = 451;
            snprintf(res->detail, sizeof(res->detail), "maildir write failed (errno %d)", errno);
        }
    }
    free(data);
    res->final_code = ok > 0 ? 250 : 451;
    return ok > 0 ? XP_OK : XP_ERR_TEMP;
}

xp_err xp_transport_send(xp_transport *t, const char *mail_from, char *const *rcpts, size_t n, const char *path,
                         xp_send_result *res)
{
    res->final_code = 0;
    res->detail[0] = '\0';
    for (size_t i = 0; i < n; i++)
        res->rcpt_code[i] = 0;
    if (n == 0)
        return XP_OK;
    if (t->maildir != NULL)
        return maildir_send(t, rcpts, n, path, res);
    return smtp_send(t, mail_from, rcpts, n, path, res);
}
