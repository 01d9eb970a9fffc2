/*
 * mailaddr: the one rule for an email address that groupsrv (members,
 * group addresses, certificate identities), the exploder (lists, members,
 * senders) and groupmail (--to, --from) take: an RFC 5321 Mailbox,
 * restricted to what every one of them can carry in a URL path, a file
 * name and an SMTP envelope without SMTPUTF8 (docs/api.md, "Addresses").
 *
 *   local@domain, US-ASCII, at most MAILADDR_MAX octets (RFC 5321: a path
 *   of at most 256 octets with its angle brackets);
 *   local part: a dot-atom (RFC 5322 atext and dots, no dot first, last
 *   or twice in a row), 1..64 octets, without '/' (it names files);
 *   domain: host-name labels (letters, digits, hyphens; 1..63 octets, no
 *   hyphen first or last) joined by dots, at most 255 octets.
 * Refused, each with its own reason: a quoted local part ("a b"@x), an
 * address literal (x@[192.0.2.1]), non-ASCII (an internationalized
 * address; an IDN domain goes in its xn-- A-label form).
 * Addresses compare case-insensitively as a whole (two that differ only
 * in case are one), and are kept as first written.
 */
#ifndef GS_MAILADDR_H
#define GS_MAILADDR_H

#define MAILADDR_MAX 254       /* octets of an address */
#define MAILADDR_LOCAL_MAX 64  /* octets of its local part */

/* NULL when addr is an address by the rule above, else why not: a
 * static, plain English phrase ("a local part longer than 64 octets"),
 * to follow "not an email address: ". */
const char *mailaddr_problem(const char *addr);

/* Whether addr may name a record that already exists: what a removal,
 * a lookup or a change of an existing member takes. Older builds stored
 * addresses under looser rules (a '_' in the domain, a dot twice in a
 * row, a local part over 64 octets, a '/' at the exploder), and such a
 * member must stay removable: 1..MAILADDR_MAX octets of printable
 * US-ASCII without spaces or <>(),;"\ (no older rule took those), one
 * '@' with something on each side. Never
 * for a new record: that takes mailaddr_problem's rule. */
int mailaddr_names_record(const char *addr);
/* Why mailaddr_names_record refused, to follow "not an email address: ". */
#define MAILADDR_RECORD_RULE                                                                                   \
    "not printable US-ASCII (without spaces or <>(),;\"\\) of at most 254 octets with one @ between a local part " \
    "and a domain"

/* The one choice between the two rules: why addr is refused, NULL when it
 * is taken. new_record: it makes a record (mailaddr_problem's rule);
 * else it names one that may exist (mailaddr_names_record, refused with
 * MAILADDR_RECORD_RULE). */
const char *mailaddr_refusal(const char *addr, int new_record);

#endif
