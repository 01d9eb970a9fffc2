/*
 * mail.h: the little RFC 5322 handling the exploder needs: split a message
 * into header block and body, read one header, pull an addr-spec out of an
 * address header, and rewrite the header block with the list headers of
 * RFC 2919 (List-Id) and RFC 2369 (List-Post, List-Unsubscribe).
 *
 * The body is never touched here: callers copy bytes [body_start, len) as
 * they are (forward mode re-breaks only an S/MIME body of base64 text
 * with a line over MAIL_MAX_LINE), so encrypted content stays the same.
 *
 * All functions are pure (no I/O). Returned strings are malloc'd, owned by
 * the caller.
 */
#ifndef GS_XP_MAIL_H
#define GS_XP_MAIL_H

#include <stdbool.h>
#include <stddef.h>

#include "xp.h"

#define MAIL_MAX_HEADER_BLOCK (256u * 1024u) /* bytes of header block we parse */
#define MAIL_MAX_HEADER_LINES 4000u
#define MAIL_MAX_ADDR 320u                   /* RFC 5321: 64 + 1 + 255 */

/* Splits buf into headers [0, *hdr_end) (the last header line's newline
 * included) and body [*body_start, len). Each header line must be
 * "Name: value" with a printable name, or a folded continuation; NUL bytes,
 * a missing blank line or an empty header block are XP_ERR_FORMAT. *crlf is
 * set when the first line ends in CRLF (we then write CRLF too). */
xp_err mail_split(const char *buf, size_t len, size_t *hdr_end, size_t *body_start, bool *crlf);

/* What a mail_split error means, in words for a bounce (static). */
const char *mail_split_strerror(xp_err rc);

/* The unfolded, trimmed value of the first header called name (case
 * insensitive) in hdrs[0, len), or NULL when absent (or out of memory). */
char *mail_header_get(const char *hdrs, size_t len, const char *name);

/* The addr-spec of an address header value ("Name <a@b>" or "a@b"),
 * one that can name a record (mailaddr_names_record: a member stored
 * under an older rule is still one). XP_ERR_FORMAT otherwise. Read as
 * RFC 5322 3.4 has it: comments (nested, with quoted-pairs) and a quoted
 * display name are skipped; a shape that may be read two ways (two
 * <...>, an unterminated comment or quoted string, a list of addresses,
 * text after the '>') is refused. */
xp_err mail_addr_spec(const char *value, char *out, size_t outsz);

/* As mail_addr_spec, and *why (static English, or NULL) says what is
 * wrong with an address that is not taken. An addr-spec with UTF-8
 * (RFC 6531, SMTPUTF8) is taken when mail_addr_intl takes it, and given
 * as written. */
xp_err mail_addr_spec_why(const char *value, char *out, size_t outsz, const char **why);

/* The form an address is compared with list members in (members are
 * stored US-ASCII, an IDN domain in its xn-- A-label form): the local part
 * as it is (compared byte for byte beyond ASCII case, which the spool's
 * NOCASE folds), the domain, when it is not US-ASCII, in its A-label form
 * by IDNA 2008 with the UTS #46 mapping (nontransitional, STD3 rules, as
 * Postfix, libcurl and browsers look it up), which must leave it as
 * written beyond ASCII case (its U-label form: a fullwidth or upper-case
 * letter, a soft hyphen or NFD is refused). addr is an addr-spec: at most
 * MAIL_MAX_ADDR octets, its ASCII octets as mailaddr_names_record takes
 * them, its others well-formed UTF-8 from U+00A0 up (no C1 controls), a
 * local part of at most 64 octets. XP_ERR_FORMAT otherwise, *why saying
 * why ("the domain is not a valid IDNA 2008 name: ..."). An ASCII address
 * is given as it is. */
xp_err mail_addr_intl(const char *addr, char *key, size_t keysz, const char **why);

/* As mail_addr_intl, for what an operator typed (UTS #46 is for that):
 * the domain may be in any spelling the mapping takes to a U-label
 * ("B\xc3\x9cCHER.example" gives xn--bcher-kva.example). Only to say
 * what to write instead, never to compare with members. */
xp_err mail_addr_intl_typed(const char *addr, char *key, size_t keysz, const char **why);

/* True if s is all US-ASCII (an address that needs no SMTPUTF8 and no
 * A-label form). */
bool mail_addr_ascii(const char *s);

/* True if the local part of addr (all of it without an '@') is US-ASCII:
 * an address that an SMTP relay without SMTPUTF8 can still carry, with its
 * domain in the A-label form. */
bool mail_addr_local_ascii(const char *addr);

/* True if s is a bare address by common/mailaddr.h's rule (which
 * mailaddr_problem explains), as groupsrv and groupmail take them. */
bool mail_addr_valid(const char *s);

/* RFC 2919 list identifier of a list address: "eng@lists.example.org" ->
 * "eng.lists.example.org". */
xp_err mail_list_id(const char *list_addr, char *out, size_t outsz);

/* The header block to send: our List-Id, List-Post, List-Unsubscribe,
 * Precedence and X-BeenThere first, then hdrs[0, len) without any incoming
 * List-* or Precedence header (a sender must not be able to forge them).
 * Incoming X-BeenThere headers are kept: they are the trail that lets a
 * list see its own copy come back through another list, which has replaced
 * our List-Id with its own. A line longer than 998 octets is folded
 * before white space (mailfold). Newlines as crlf says. len may be 0. *out is
 * NUL-terminated and ends with a newline (the blank separator line is NOT
 * included). */
xp_err mail_list_headers(const char *hdrs, size_t len, const char *list_addr, bool crlf, char **out,
                         size_t *outlen);

/* True if any X-BeenThere header of hdrs[0, len) names list_addr (an
 * addr-spec, compared case-insensitively): the message went through this
 * list already (the Mailman convention, kept by other list managers). */
bool mail_been_there(const char *hdrs, size_t len, const char *list_addr);

/* True if any List-Id header of hdrs[0, len) ("phrase <id>" or "<id>")
 * names id (mail_list_id's, compared case-insensitively): a copy of this
 * list's come back, also through another list that added its own List-Id
 * and kept ours. */
bool mail_has_list_id(const char *hdrs, size_t len, const char *id);

/* True if hdrs[0, len) has a field called name (case insensitive). */
bool mail_header_present(const char *hdrs, size_t len, const char *name);

/* How many fields called name (case insensitive) hdrs[0, len) has. */
size_t mail_header_count(const char *hdrs, size_t len, const char *name);

/* True if hdrs[0, len) has a field called name (case insensitive) whose
 * value is more than white space. */
bool mail_header_has_value(const char *hdrs, size_t len, const char *name);

/* Takes every field called name (case insensitive), with its folded
 * lines, out of hdrs[0, len) in place; returns the length left. */
size_t mail_header_remove(char *hdrs, size_t len, const char *name);

/* RFC 5322 2.1.1: a line is at most 998 octets, its CRLF aside; SMTP
 * relays may hold DATA to it (RFC 5321 4.5.3.1.6) and refuse the rest. */
#define MAIL_MAX_LINE 998u

/* The length of the longest line of p[0, n), without its CR LF. */
size_t mail_longest_line(const char *p, size_t n);

/* True if p[0, n) is nothing but base64 text: its alphabet, '=', and
 * spaces, tabs, CRs and LFs between (what a base64 decoder reads the
 * same however it is broken into lines). */
bool mail_is_base64_text(const char *p, size_t n);

/* Lower-cases the domain part in place (local parts are case-sensitive in
 * theory; we compare them case-insensitively like every list manager). */
void mail_addr_normalize(char *addr);

#endif
