/* mailaddr.c: see mailaddr.h. */
#include "mailaddr.h"

#include <stdbool.h>
#include <string.h>

/* RFC 5322 atext without '/', which would make a member's address a
 * path (groupsrv member add --issue-cert --out DIR, maildir:DIR/<member>). */
static bool local_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-=?^_`{|}~", c) != NULL);
}

static bool ldh(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

static const char *domain_problem(const char *d, size_t n)
{
    size_t label = 0;

    if (n == 0)
        return "an empty domain";
    if (d[0] == '[')
        return "an address literal ([192.0.2.1]) in place of a domain name, which is not supported";
    for (size_t i = 0; i <= n; i++) {
        if (i == n || d[i] == '.') {
            if (label == 0)
                return "a domain with an empty label (a dot first, last or twice in a row)";
            if (d[i - 1] == '-' || d[i - label] == '-')
                return "a domain label that starts or ends with a hyphen";
            label = 0;
            continue;
        }
        if (!ldh((unsigned char)d[i]))
            return "a character a domain name may not hold (letters, digits, hyphens and dots only)";
        if (++label > 63)
            return "a domain label longer than 63 octets";
    }
    return NULL;
}

const char *mailaddr_problem(const char *addr)
{
    const char *at;
    size_t n, local;

    if (addr == NULL || (n = strlen(addr)) == 0)
        return "empty";
    if (addr[0] == '"')
        return "a quoted local part (\"...\"@), which is not supported";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)addr[i];
        if (c >= 0x80)
            return "not US-ASCII (internationalized addresses, SMTPUTF8, are not supported; an IDN domain "
                   "goes in its xn-- form)";
        if (c <= 0x20 || c == 0x7f)
            return "a space or control character";
    }
    if (n > MAILADDR_MAX)
        return "longer than 254 octets (RFC 5321)";
    if ((at = strrchr(addr, '@')) == NULL)
        return "no @";
    if (memchr(addr, '@', (size_t)(at - addr)) != NULL)
        return "more than one @";
    if ((local = (size_t)(at - addr)) == 0)
        return "an empty local part";
    if (local > MAILADDR_LOCAL_MAX)
        return "a local part longer than 64 octets (RFC 5321)";
    for (size_t i = 0; i < local; i++) {
        if (addr[i] == '.') {
            if (i == 0 || i + 1 == local || addr[i + 1] == '.')
                return "a local part with a dot first, last or twice in a row";
        } else if (!local_char((unsigned char)addr[i])) {
            return "a character a local part may not hold (letters, digits, dots and !#$%&'*+-=?^_`{|}~ only)";
        }
    }
    return domain_problem(at + 1, n - local - 1);
}

int mailaddr_names_record(const char *addr)
{
    size_t n;
    const char *at;

    if (addr == NULL || (n = strlen(addr)) == 0 || n > MAILADDR_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)addr[i] <= 0x20 || (unsigned char)addr[i] >= 0x7f || strchr("<>(),;\"\\", addr[i]) != NULL)
            return 0; /* the last: what no older rule took either */
    at = strchr(addr, '@');
    return at != NULL && at != addr && at[1] != '\0' && strchr(at + 1, '@') == NULL;
}

const char *mailaddr_refusal(const char *addr, int new_record)
{
    if (new_record)
        return mailaddr_problem(addr);
    return mailaddr_names_record(addr) ? NULL : MAILADDR_RECORD_RULE;
}
