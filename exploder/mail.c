/* mail.c: header block parsing and list headers. See mail.h. */
#include "mail.h"
#include "mailaddr.h"
#include "mailfold.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Length of the line starting at p (without its newline) and the length of
 * its newline (1 for LF, 2 for CRLF, 0 at the end of the buffer). */
static size_t line_len(const char *p, size_t avail, size_t *nl)
{
    const char *lf = memchr(p, '\n', avail);
    size_t n;
    if (lf == NULL) {
        *nl = 0;
        return avail;
    }
    n = (size_t)(lf - p);
    if (n > 0 && p[n - 1] == '\r') {
        *nl = 2;
        return n - 1;
    }
    *nl = 1;
    return n;
}

xp_err mail_split(const char *buf, size_t len, size_t *hdr_end, size_t *body_start, bool *crlf)
{
    size_t off = 0, lines = 0;

    *hdr_end = 0;
    *body_start = 0;
    *crlf = false;
    if (buf == NULL)
        return XP_ERR_ARGS;
    while (off < len) {
        size_t nl, n = line_len(buf + off, len - off, &nl);
        if (nl == 0)
            return XP_ERR_FORMAT; /* headers never end: no body separator */
        if (lines == 0)
            *crlf = (nl == 2);
        if (n == 0) {
            if (lines == 0)
                return XP_ERR_FORMAT;
            *hdr_end = off;
            *body_start = off + nl;
            return XP_OK;
        }
        if (memchr(buf + off, '\0', n) != NULL)
            return XP_ERR_FORMAT;
        if (buf[off] == ' ' || buf[off] == '\t') {
            if (lines == 0)
                return XP_ERR_FORMAT; /* continuation without a header */
        } else {
            /* field-name: printable US-ASCII except ':', then ':' */
            size_t i = 0;
            while (i < n && buf[off + i] != ':') {
                unsigned char ch = (unsigned char)buf[off + i];
                if (ch < 33 || ch > 126)
                    return XP_ERR_FORMAT;
                i++;
            }
            if (i == 0 || i == n)
                return XP_ERR_FORMAT;
        }
        off += n + nl;
        if (++lines > MAIL_MAX_HEADER_LINES || off > MAIL_MAX_HEADER_BLOCK)
            return XP_ERR_TOO_LARGE;
    }
    return XP_ERR_FORMAT;
}

const char *mail_split_strerror(xp_err rc)
{
    if (rc == XP_ERR_TOO_LARGE)
        return "header block too large";
    return "not an RFC 5322 message (a bad header line, a NUL byte, or no blank line before the body)";
}

/* Iterates over header fields: *name_len is the field name length, the
 * field spans [start, end) including continuation lines and newline. */
static bool next_field(const char *h, size_t len, size_t *pos, size_t *start, size_t *end, size_t *name_len)
{
    size_t off = *pos, nl, n;
    if (off >= len)
        return false;
    *start = off;
    n = line_len(h + off, len - off, &nl);
    const char *colon = memchr(h + off, ':', n);
    *name_len = colon != NULL ? (size_t)(colon - (h + off)) : 0;
    off += n + nl;
    while (off < len && (h[off] == ' ' || h[off] == '\t')) {
        n = line_len(h + off, len - off, &nl);
        off += n + nl;
    }
    *end = off;
    *pos = off;
    return true;
}

char *mail_header_get(const char *hdrs, size_t len, const char *name)
{
    size_t pos = 0, start, end, nlen, want = strlen(name);

    while (next_field(hdrs, len, &pos, &start, &end, &nlen)) {
        if (nlen != want || strncasecmp(hdrs + start, name, want) != 0)
            continue;
        /* unfold: drop CR/LF, keep the whitespace that follows */
        size_t vstart = start + nlen + 1, o = 0;
        char *v = malloc(end - vstart + 1);
        if (v == NULL)
            return NULL;
        for (size_t i = vstart; i < end; i++)
            if (hdrs[i] != '\r' && hdrs[i] != '\n')
                v[o++] = hdrs[i];
        v[o] = '\0';
        size_t b = 0;
        while (v[b] == ' ' || v[b] == '\t')
            b++;
        while (o > b && (v[o - 1] == ' ' || v[o - 1] == '\t'))
            o--;
        memmove(v, v + b, o - b);
        v[o - b] = '\0';
        return v;
    }
    return NULL;
}

bool mail_header_present(const char *hdrs, size_t len, const char *name)
{
    size_t pos = 0, start, end, nlen, want = strlen(name);

    while (next_field(hdrs, len, &pos, &start, &end, &nlen))
        if (nlen == want && strncasecmp(hdrs + start, name, want) == 0)
            return true;
    return false;
}

bool mail_header_has_value(const char *hdrs, size_t len, const char *name)
{
    size_t pos = 0, start, end, nlen, want = strlen(name);

    while (next_field(hdrs, len, &pos, &start, &end, &nlen)) {
        if (nlen != want || strncasecmp(hdrs + start, name, want) != 0)
            continue;
        for (size_t i = start + nlen + 1; i < end; i++)
            if (hdrs[i] != ' ' && hdrs[i] != '\t' && hdrs[i] != '\r' && hdrs[i] != '\n')
                return true;
    }
    return false;
}

size_t mail_header_remove(char *hdrs, size_t len, const char *name)
{
    size_t pos = 0, start, end, nlen, want = strlen(name);

    while (next_field(hdrs, len, &pos, &start, &end, &nlen)) {
        if (nlen != want || strncasecmp(hdrs + start, name, want) != 0)
            continue;
        memmove(hdrs + start, hdrs + end, len - end);
        len -= end - start;
        pos = start;
    }
    return len;
}

size_t mail_longest_line(const char *p, size_t n)
{
    size_t longest = 0;

    while (n > 0) {
        const char *lf = memchr(p, '\n', n);
        size_t l = lf != NULL ? (size_t)(lf - p) : n, w = l;
        if (w > 0 && p[w - 1] == '\r')
            w--;
        if (w > longest)
            longest = w;
        if (lf == NULL)
            break;
        p += l + 1;
        n -= l + 1;
    }
    return longest;
}

bool mail_is_base64_text(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        bool alpha = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9');
        bool space = ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
        if (!alpha && !space && ch != '+' && ch != '/' && ch != '=')
            return false;
    }
    return true;
}

/* The group server's rule (common/mailaddr.h): a list member the group
 * server would refuse could never get a member-certs copy. */
bool mail_addr_valid(const char *s) { return mailaddr_problem(s) == NULL; }

xp_err mail_addr_spec(const char *value, char *out, size_t outsz)
{
    const char *b, *e;
    size_t n;

    if (outsz == 0)
        return XP_ERR_ARGS;
    out[0] = '\0';
    if (value == NULL)
        return XP_ERR_FORMAT;
    b = strrchr(value, '<');
    if (b != NULL) {
        b++;
        e = strchr(b, '>');
        if (e == NULL)
            return XP_ERR_FORMAT;
    } else {
        b = value;
        while (*b == ' ' || *b == '\t')
            b++;
        e = b + strlen(b);
        while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
    }
    n = (size_t)(e - b);
    if (n == 0 || n >= outsz || n > MAIL_MAX_ADDR)
        return XP_ERR_FORMAT;
    memcpy(out, b, n);
    out[n] = '\0';
    /* an address someone else wrote, compared with members (who may be
     * stored under an older, looser rule) or sent a bounce: one that can
     * name a record, never a space, CR, LF or angle bracket */
    if (!mailaddr_names_record(out)) {
        out[0] = '\0';
        return XP_ERR_FORMAT;
    }
    return XP_OK;
}

void mail_addr_normalize(char *addr)
{
    char *at = strrchr(addr, '@');
    if (at == NULL)
        return;
    for (char *p = at; *p; p++)
        *p = (char)tolower((unsigned char)*p);
}

xp_err mail_list_id(const char *list_addr, char *out, size_t outsz)
{
    size_t n;
    if (outsz == 0)
        return XP_ERR_ARGS;
    out[0] = '\0';
    /* a list's address was checked when the list was made, perhaps by an
     * older exploder under its looser rule: its mail must still go out */
    if (!mailaddr_names_record(list_addr))
        return XP_ERR_FORMAT;
    n = strlen(list_addr);
    if (n >= outsz)
        return XP_ERR_TOO_LARGE;
    for (size_t i = 0; i <= n; i++) {
        char ch = list_addr[i];
        out[i] = ch == '@' ? '.' : (char)tolower((unsigned char)ch);
    }
    return XP_OK;
}

bool mail_been_there(const char *hdrs, size_t len, const char *list_addr)
{
    static const char name[] = "X-BeenThere";
    size_t pos = 0, start, end, nlen, want = sizeof(name) - 1;
    char addr[MAIL_MAX_ADDR + 1];

    while (next_field(hdrs, len, &pos, &start, &end, &nlen)) {
        char *v;
        bool hit;
        if (nlen != want || strncasecmp(hdrs + start, name, want) != 0)
            continue;
        /* each occurrence on its own: mail_header_get only finds the first */
        if ((v = mail_header_get(hdrs + start, end - start, name)) == NULL)
            continue;
        hit = mail_addr_spec(v, addr, sizeof(addr)) == XP_OK && strcasecmp(addr, list_addr) == 0;
        free(v);
        if (hit)
            return true;
    }
    return false;
}

/* Headers a copy never carries over: the list's own (a sender cannot
 * forge them), and Return-Path, which names the original sender's
 * envelope: the copy is a new message whose envelope sender is the list's
 * (RFC 5321 4.4: an originator does not send one; the final MTA adds it). */
static bool is_dropped(const char *name, size_t n)
{
    if (n >= 5 && strncasecmp(name, "List-", 5) == 0)
        return true;
    if (n == 10 && strncasecmp(name, "Precedence", 10) == 0)
        return true;
    if (n == 11 && strncasecmp(name, "Return-Path", 11) == 0)
        return true;
    return false;
}

xp_err mail_list_headers(const char *hdrs, size_t len, const char *list_addr, bool crlf, char **out,
                         size_t *outlen)
{
    char id[MAIL_MAX_ADDR + 1], local[MAIL_MAX_ADDR + 1], ours[5 * MAIL_MAX_ADDR + 256];
    const char *eol = crlf ? "\r\n" : "\n";
    const char *at;
    size_t pos = 0, start, end, nlen, o, cap;
    char *buf = NULL;
    xp_err rc;
    int n;

    *out = NULL;
    *outlen = 0;
    if ((rc = mail_list_id(list_addr, id, sizeof(id))) != XP_OK)
        return rc;
    at = strrchr(list_addr, '@');
    memcpy(local, list_addr, (size_t)(at - list_addr));
    local[at - list_addr] = '\0';
    n = snprintf(ours, sizeof(ours),
                 "List-Id: <%s>%s"
                 "List-Post: <mailto:%s>%s"
                 "List-Unsubscribe: <mailto:%s-request%s?subject=unsubscribe>%s"
                 "Precedence: list%s"
                 "X-BeenThere: %s%s",
                 id, eol, list_addr, eol, local, at, eol, eol, list_addr, eol);
    if (n < 0 || (size_t)n >= sizeof(ours))
        return XP_ERR_TOO_LARGE;
    if (len > MAIL_MAX_HEADER_BLOCK * 4u)
        return XP_ERR_TOO_LARGE;
    /* the folded fields' size, counted before they are written (len is
     * bounded above, and a fold adds at most two octets) */
    cap = (size_t)n + 3;
    while (next_field(hdrs, len, &pos, &start, &end, &nlen))
        if (!is_dropped(hdrs + start, nlen))
            cap += mailfold(NULL, hdrs + start, end - start, eol);
    if ((buf = malloc(cap)) == NULL)
        return XP_ERR_NOMEM;
    memcpy(buf, ours, (size_t)n);
    o = (size_t)n;
    pos = 0;
    while (next_field(hdrs, len, &pos, &start, &end, &nlen)) {
        if (is_dropped(hdrs + start, nlen))
            continue;
        o += mailfold(buf + o, hdrs + start, end - start, eol);
    }
    /* a header block given without its final newline gets one */
    if (o > 0 && buf[o - 1] != '\n') {
        memcpy(buf + o, eol, strlen(eol));
        o += strlen(eol);
    }
    buf[o] = '\0';
    *out = buf;
    *outlen = o;
    return XP_OK;
}
