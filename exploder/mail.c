/* mail.c: header block parsing and list headers. See mail.h. */
#include "mail.h"
#include "jsonw.h"
#include "mailaddr.h"
#include "mailfold.h"

#include <ctype.h>
#include <idn2.h>
#include <stdint.h>
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
            /* field-name: printable US-ASCII except ':', then ':'; or
             * white space between them, RFC 5322 4.5's obs-optional
             * (field-name *WSP ":"), which section 4 has readers take and
             * Postfix passes: read as the field, written without it
             * (mail_list_headers) */
            size_t i = 0, w;
            while (i < n && buf[off + i] != ':') {
                unsigned char ch = (unsigned char)buf[off + i];
                if (ch < 33 || ch > 126)
                    break;
                i++;
            }
            for (w = i; w < n && (buf[off + w] == ' ' || buf[off + w] == '\t'); w++)
                ;
            if (i == 0 || w == n || buf[off + w] != ':')
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

/* Iterates over header fields: *name_len is the field name length (white
 * space before the colon, obs-optional, not counted: mail_split), the
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
    while (*name_len > 0 && (h[off + *name_len - 1] == ' ' || h[off + *name_len - 1] == '\t'))
        (*name_len)--;
    off += n + nl;
    while (off < len && (h[off] == ' ' || h[off] == '\t')) {
        n = line_len(h + off, len - off, &nl);
        off += n + nl;
    }
    *end = off;
    *pos = off;
    return true;
}

/* Where the value of a field next_field found starts: after its colon,
 * past any white space before it (obs-optional). */
static size_t value_start(const char *h, size_t start, size_t name_len)
{
    size_t i = start + name_len;
    while (h[i] == ' ' || h[i] == '\t')
        i++;
    return i + 1;
}

char *mail_header_get(const char *hdrs, size_t len, const char *name)
{
    size_t pos = 0, start, end, nlen, want = strlen(name);

    while (next_field(hdrs, len, &pos, &start, &end, &nlen)) {
        if (nlen != want || strncasecmp(hdrs + start, name, want) != 0)
            continue;
        /* unfold: drop the line ends (LF, CRLF), keep the whitespace that
         * follows; a CR not before an LF is no line end here (mail_split's)
         * and stays, so an address reader can refuse it: others (Python's
         * email package) take it for one */
        size_t vstart = value_start(hdrs, start, nlen), o = 0;
        char *v = malloc(end - vstart + 1);
        if (v == NULL)
            return NULL;
        for (size_t i = vstart; i < end; i++)
            if (hdrs[i] != '\n' && !(hdrs[i] == '\r' && i + 1 < end && hdrs[i + 1] == '\n'))
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

size_t mail_header_count(const char *hdrs, size_t len, const char *name)
{
    size_t pos = 0, start, end, nlen, want = strlen(name), n = 0;

    while (next_field(hdrs, len, &pos, &start, &end, &nlen))
        if (nlen == want && strncasecmp(hdrs + start, name, want) == 0)
            n++;
    return n;
}

bool mail_header_has_value(const char *hdrs, size_t len, const char *name)
{
    size_t pos = 0, start, end, nlen, want = strlen(name);

    while (next_field(hdrs, len, &pos, &start, &end, &nlen)) {
        if (nlen != want || strncasecmp(hdrs + start, name, want) != 0)
            continue;
        for (size_t i = value_start(hdrs, start, nlen); i < end; i++)
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

/* Octets of the well-formed UTF-8 sequence at p[0, avail) for a scalar
 * value from U+00A0 up (no C1 control, no surrogate, no overlong form),
 * 0 when there is none: jsonw's decoder, and C1 (U+0080..U+009F, which is
 * 0xC2 0x80..0x9F) refused besides. */
static size_t utf8_non_ascii(const unsigned char *p, size_t avail)
{
    size_t n = jsonw_utf8_seq((const char *)p, avail);

    if (n < 2 || (p[0] == 0xc2 && p[1] < 0xa0))
        return 0;
    return n;
}

bool mail_addr_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return false;
    return true;
}

bool mail_addr_local_ascii(const char *addr)
{
    const char *at = strrchr(addr, '@');
    size_t n = at != NULL ? (size_t)(at - addr) : strlen(addr);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)addr[i] >= 0x80)
            return false;
    return true;
}

/* typed: an address an operator typed, whose domain the UTS #46 mapping
 * may change (mail_addr_intl_typed) */
static xp_err addr_intl(const char *addr, char *key, size_t keysz, const char **why, bool typed)
{
    const char *at;
    char *ace = NULL, *strict = NULL;
    size_t n, local;
    bool ascii_domain = true;
    int r, len;
    xp_err rc = XP_ERR_FORMAT;

    *why = NULL;
    if (keysz == 0)
        return XP_ERR_ARGS;
    key[0] = '\0';
    if (addr == NULL || (n = strnlen(addr, MAIL_MAX_ADDR + 1)) == 0 || n > MAIL_MAX_ADDR) {
        *why = "empty, or longer than 320 octets";
        goto out;
    }
    if (mailaddr_names_record(addr)) {
        /* US-ASCII, compared as it is, under the rule members were stored
         * by (an A-label too: xn-- labels are taken as written, as a
         * member's are) */
        goto as_is;
    }
    if ((at = strchr(addr, '@')) == NULL || at == addr || at[1] == '\0' || strchr(at + 1, '@') != NULL) {
        *why = "not one @ between a local part and a domain";
        goto out;
    }
    if ((local = (size_t)(at - addr)) > 64) {
        *why = "a local part longer than 64 octets (RFC 5321)";
        goto out;
    }
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)addr[i];
        size_t k;
        if (c < 0x80) {
            if (c <= 0x20 || c == 0x7f || strchr("<>(),;\"\\", c) != NULL) {
                *why = "a space, a control character or one of <>(),;\"\\";
                goto out;
            }
            i++;
            continue;
        }
        if ((k = utf8_non_ascii((const unsigned char *)addr + i, n - i)) == 0) {
            *why = "not well-formed UTF-8 (or a control character)";
            goto out;
        }
        if (i > local)
            ascii_domain = false;
        i += k;
    }
    if (ascii_domain) {
        /* a UTF-8 local part at an ASCII domain: nothing to map; no member
         * has it (members are US-ASCII), but it is an address to bounce to */
        goto as_is;
    }
    /* UTS #46 nontransitional (IDNA 2008: ß and ς stay themselves), STD3
     * rules (host-name characters only after the mapping); libidn2 refuses
     * what IDNA 2008 disallows and checks the Bidi and joiner rules */
    r = idn2_lookup_u8((const uint8_t *)at + 1, (uint8_t **)&ace, IDN2_NONTRANSITIONAL | IDN2_USE_STD3_ASCII_RULES);
    if (r != IDN2_OK) {
        *why = "a domain that is not a valid internationalized domain name (IDNA 2008 / UTS #46)";
        if (r == IDN2_DISALLOWED || r == IDN2_CONTEXTJ || r == IDN2_CONTEXTO || r == IDN2_BIDI ||
            r == IDN2_UNASSIGNED || r == IDN2_LEADING_COMBINING || r == IDN2_NOT_NFC ||
            r == IDN2_INVALID_NONTRANSITIONAL || r == IDN2_HYPHEN_STARTEND || r == IDN2_INVALID_ALABEL)
            *why = "a domain with a character IDNA 2008 does not allow there (or an invalid U-label)";
        else if (r == IDN2_TOO_BIG_DOMAIN || r == IDN2_TOO_BIG_LABEL)
            *why = "a domain too long in its A-label form (63 octets a label, 255 in all)";
        goto out;
    }
    /* The domain must already be in the form the mapping gives (ASCII
     * case aside): UTS #46 is for what a user types, an address on the wire
     * holds U-labels (RFC 6531 3.2, RFC 5890). A mapped spelling names the
     * same DNS domain but not the same string, so the sender checks in
     * front of the exploder (SPF, DMARC, a relay's sender-login map) see
     * another domain: "alice@exam<U+00AD>ple.com" (an invisible soft
     * hyphen) or a fullwidth "example.com" would pass them and then be the
     * member alice@example.com here. IDNA 2008 without the mapping must
     * take it and give the same A-label form. */
    if (!typed) {
        char dom[MAIL_MAX_ADDR + 1];
        size_t dn = n - local - 1;
        memcpy(dom, at + 1, dn + 1);
        for (size_t i = 0; i < dn; i++)
            if (dom[i] >= 'A' && dom[i] <= 'Z')
                dom[i] = (char)(dom[i] - 'A' + 'a');
        r = idn2_lookup_u8((const uint8_t *)dom, (uint8_t **)&strict, IDN2_NO_TR46);
        if (r != IDN2_OK || strcmp(strict, ace) != 0) {
            *why = "a domain not written in its U-label form (a character the UTS #46 mapping changes: an "
                   "upper-case or fullwidth letter, a soft hyphen, another full stop, not NFC)";
            goto out;
        }
    }
    /* the A-label form a host name by the rule a member's domain has
     * (libidn2 lets an empty label through) */
    len = snprintf(key, keysz, "x@%s", ace);
    if (len < 0 || (size_t)len >= keysz || mailaddr_problem(key) != NULL) {
        key[0] = '\0';
        *why = "a domain that is not a host name in its A-label form (an empty label, or a character a host "
               "name may not hold)";
        goto out;
    }
    len = snprintf(key, keysz, "%.*s@%s", (int)local, addr, ace);
    if (len < 0 || (size_t)len >= keysz) {
        key[0] = '\0';
        *why = "longer than 254 octets in its A-label form";
        goto out;
    }
    /* what the A-label form is compared with was stored by the ASCII rule */
    if (mail_addr_local_ascii(key) && !mailaddr_names_record(key)) {
        key[0] = '\0';
        *why = "longer than 254 octets in its A-label form";
        goto out;
    }
    rc = XP_OK;
    goto out;
as_is:
    /* compared as written: nothing to map */
    if (n >= keysz) {
        rc = XP_ERR_TOO_LARGE;
        goto out;
    }
    memcpy(key, addr, n + 1);
    rc = XP_OK;
out:
    idn2_free(ace);
    idn2_free(strict);
    return rc;
}

xp_err mail_addr_intl(const char *addr, char *key, size_t keysz, const char **why)
{
    return addr_intl(addr, key, keysz, why, false);
}

xp_err mail_addr_intl_typed(const char *addr, char *key, size_t keysz, const char **why)
{
    return addr_intl(addr, key, keysz, why, true);
}

/* The addr-spec of an RFC 5322 address header value (3.4: a mailbox, a
 * name-addr or a bare addr-spec, with comments), as a DMARC checker and a
 * mail reader take it: a comment, however nested, and a quoted string in
 * the display name are not where the address is, so neither
 * "mallory@evil.example (<alice@example.com>)" nor
 * "\"<alice@example.com>\" <mallory@evil.example>" is alice. A shape others
 * may read another way is refused, not guessed at: more than one <...>,
 * an unterminated comment, quoted string or <, a ')' or '>' with nothing
 * open, a '\' outside a quoted string or comment, a ',' ';' or ':' before
 * the '<' or with no '<' (a list of addresses or a group), anything but
 * comments after the '>'. *b and *e span the address in plain (malloc'd, the value with each
 * comment a space). */
static const char *addr_locate(const char *value, char **plain, const char **b, const char **e)
{
    size_t n = strlen(value), o = 0, lt = SIZE_MAX, gt = SIZE_MAX;
    const char *p = value, *why = NULL;
    char *buf;

    *plain = NULL;
    /* a control character (a bare CR left by unfolding, a form feed, a
     * vertical tab, 0x1c..0x1e): a reader that takes it for a line end
     * (Python's email package) sees "mallory@evil.example\r<alice@example.com>"
     * as from mallory, the rest of the value as another line */
    for (const char *q = value; *q != '\0'; q++)
        if (((unsigned char)*q < 0x20 && *q != '\t') || *q == 0x7f)
            return "a control character (a CR, a form feed: a line end to some readers)";
    if ((buf = malloc(n + 1)) == NULL)
        return "out of memory";
    while (*p != '\0') {
        char c = *p;
        if (c == '(') {
            size_t depth = 1;
            for (p++; *p != '\0' && depth > 0; p++) {
                if (*p == '\\' && p[1] != '\0')
                    p++;
                else if (*p == '(')
                    depth++;
                else if (*p == ')')
                    depth--;
            }
            if (depth > 0) {
                why = "a comment '(' without its ')'";
                goto out;
            }
            buf[o++] = ' ';
            continue;
        }
        if (gt != SIZE_MAX && c != ' ' && c != '\t') {
            why = "more than a comment after the '>'";
            goto out;
        }
        if (c == '"') {
            buf[o++] = *p++;
            while (*p != '\0' && *p != '"') {
                if (*p == '\\' && p[1] != '\0')
                    buf[o++] = *p++;
                buf[o++] = *p++;
            }
            if (*p == '\0') {
                why = "a quoted string without its closing '\"'";
                goto out;
            }
            buf[o++] = *p++;
            continue;
        }
        if (c == ')' || c == '\\' || (lt == SIZE_MAX && (c == ',' || c == ';' || c == ':'))) {
            why = "a ')' without its '(', a '\\' outside a quoted string, or a list of addresses or a group";
            goto out;
        }
        if (c == '<') {
            if (lt != SIZE_MAX) {
                why = "more than one '<'";
                goto out;
            }
            lt = o;
        } else if (c == '>') {
            if (lt == SIZE_MAX) {
                why = "a '>' without its '<'";
                goto out;
            }
            gt = o;
        }
        buf[o++] = *p++;
    }
    buf[o] = '\0';
    if (lt != SIZE_MAX && gt == SIZE_MAX) {
        why = "a '<' without its '>'";
        goto out;
    }
    if (lt != SIZE_MAX) {
        *b = buf + lt + 1;
        *e = buf + gt;
    } else {
        *b = buf;
        *e = buf + o;
    }
    /* CFWS around the addr-spec (RFC 5322 3.4, 3.2.2) */
    while (*b < *e && (**b == ' ' || **b == '\t'))
        (*b)++;
    while (*e > *b && ((*e)[-1] == ' ' || (*e)[-1] == '\t'))
        (*e)--;
    *plain = buf;
    buf = NULL;
out:
    free(buf);
    return why;
}

xp_err mail_addr_spec_why(const char *value, char *out, size_t outsz, const char **why)
{
    const char *b = NULL, *e = NULL;
    char key[MAIL_MAX_ADDR + 1], *plain = NULL;
    size_t n;
    xp_err rc = XP_ERR_FORMAT;

    *why = NULL;
    if (outsz == 0)
        return XP_ERR_ARGS;
    out[0] = '\0';
    if (value == NULL)
        return XP_ERR_FORMAT;
    if ((*why = addr_locate(value, &plain, &b, &e)) != NULL)
        goto out;
    n = (size_t)(e - b);
    if (n == 0 || n >= outsz || n > MAIL_MAX_ADDR) {
        *why = "empty, or longer than 320 octets";
        goto out;
    }
    memcpy(out, b, n);
    out[n] = '\0';
    /* an address someone else wrote, compared with members (who may be
     * stored under an older, looser rule) or sent a bounce: one that can
     * name a record, never a space, CR, LF or angle bracket; or one with
     * UTF-8 (an SMTPUTF8 poster), whose domain has an A-label form */
    if (!mailaddr_names_record(out) && mail_addr_ascii(out)) {
        *why = MAILADDR_RECORD_RULE;
        out[0] = '\0';
        goto out;
    }
    if (mail_addr_intl(out, key, sizeof(key), why) != XP_OK) {
        out[0] = '\0';
        goto out;
    }
    rc = XP_OK;
out:
    free(plain);
    return rc;
}

xp_err mail_addr_spec(const char *value, char *out, size_t outsz)
{
    const char *why;
    return mail_addr_spec_why(value, out, outsz, &why);
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

/* Whether any occurrence of the field name has a value match(value, arg)
 * takes: each occurrence on its own (mail_header_get only finds the first,
 * and a loop or list check must not stop at it). */
static bool any_field_value(const char *hdrs, size_t len, const char *name,
                            bool (*match)(const char *v, const void *arg), const void *arg)
{
    size_t pos = 0, start, end, nlen, want = strlen(name);

    while (next_field(hdrs, len, &pos, &start, &end, &nlen)) {
        char *v;
        bool hit;
        if (nlen != want || strncasecmp(hdrs + start, name, want) != 0)
            continue;
        if ((v = mail_header_get(hdrs + start, end - start, name)) == NULL)
            continue;
        hit = match(v, arg);
        free(v);
        if (hit)
            return true;
    }
    return false;
}

/* Does an X-BeenThere value name the list's address? */
static bool names_list_addr(const char *v, const void *list_addr)
{
    char addr[MAIL_MAX_ADDR + 1];
    return mail_addr_spec(v, addr, sizeof(addr)) == XP_OK && strcasecmp(addr, list_addr) == 0;
}

bool mail_been_there(const char *hdrs, size_t len, const char *list_addr)
{
    return any_field_value(hdrs, len, "X-BeenThere", names_list_addr, list_addr);
}

/* Does a List-Id value ("phrase <id>" or "<id>") name id? */
static bool same_list_id(const char *v, const void *arg)
{
    const char *id = arg;
    const char *b = strrchr(v, '<'), *e;
    size_t n = strlen(id);
    if (b == NULL || (e = strchr(b, '>')) == NULL)
        return false;
    b++;
    return (size_t)(e - b) == n && strncasecmp(b, id, n) == 0;
}

bool mail_has_list_id(const char *hdrs, size_t len, const char *id)
{
    return any_field_value(hdrs, len, "List-Id", same_list_id, id);
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

/* Folds the field hdrs[start, end) (next_field's) into out + *o, or with
 * out NULL only counts, and adds what it writes to *o. RFC 5322 4:
 * obsolete syntax is read, never written: "Name :" goes as "Name:" (a
 * reader that does not take it, Python's email package, would end the
 * header block there). False: out of memory. */
static bool copy_field(char *out, const char *hdrs, size_t start, size_t end, size_t nlen, const char *eol,
                       size_t *o)
{
    size_t colon = nlen > 0 ? value_start(hdrs, start, nlen) - 1 : start;
    char *f;

    if (nlen == 0 || colon == start + nlen) {
        *o += mailfold(out != NULL ? out + *o : NULL, hdrs + start, end - start, eol);
        return true;
    }
    if ((f = malloc(end - start)) == NULL)
        return false;
    memcpy(f, hdrs + start, nlen);
    memcpy(f + nlen, hdrs + colon, end - colon);
    *o += mailfold(out != NULL ? out + *o : NULL, f, nlen + (end - colon), eol);
    free(f);
    return true;
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
        if (!is_dropped(hdrs + start, nlen) && !copy_field(NULL, hdrs, start, end, nlen, eol, &cap))
            return XP_ERR_NOMEM;
    if ((buf = malloc(cap)) == NULL)
        return XP_ERR_NOMEM;
    memcpy(buf, ours, (size_t)n);
    o = (size_t)n;
    pos = 0;
    while (next_field(hdrs, len, &pos, &start, &end, &nlen)) {
        if (!is_dropped(hdrs + start, nlen) && !copy_field(buf, hdrs, start, end, nlen, eol, &o)) {
            free(buf);
            return XP_ERR_NOMEM;
        }
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
