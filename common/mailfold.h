/*
 * mailfold: header lines longer than RFC 5322's 998 octets folded before
 * white space (2.2.3: a line break before a space or tab, which readers
 * take out again when they unfold). A relay that holds SMTP to RFC 5321's
 * 1000-octet lines (4.5.3.1.6) answers a longer one with 500 ("Line too
 * long"), and the message is not sent: the exploder folds its copies'
 * headers, groupmail encrypt --mime the routing fields it copies outside.
 * Postfix folds such lines the same way when it relays them.
 */
#ifndef GS_MAILFOLD_H
#define GS_MAILFOLD_H

#include <stdbool.h>
#include <stddef.h>

#define MAILFOLD_MAX_LINE 998u /* RFC 5322 2.1.1: octets of a line, without its CRLF */

/* Copies f[0, n) (header lines, each ended by LF or CRLF, the last one
 * perhaps not) to out, or only counts with out NULL, each line longer than
 * MAILFOLD_MAX_LINE folded before a space or tab with eol ("\r\n" or
 * "\n"). A fold never leaves a line of white space alone (RFC 5322 4.2's
 * obsolete syntax, which some readers take for the blank line that ends
 * the header block): not in a long run of white space, nor in a line's
 * trailing white space. A line that cannot be folded so that each of its
 * lines is within MAILFOLD_MAX_LINE (a run of over 998 octets without
 * white space) goes as it came. Unfolded, the lines are f's. Returns the bytes written:
 * call it with out NULL first to size out. */
size_t mailfold(char *out, const char *f, size_t n, const char *eol);

/* Whether the header line line[0, len) is a field named name (compared
 * without case): "Name:" or, RFC 5322 4.5's obs-optional, "Name" and
 * white space before the colon ("To :"), which section 4 has readers
 * take (Postfix, Mozilla's libmime, the exploder): obsolete syntax is
 * read, never written. The one rule of every reader of header fields
 * that names its field (groupmail send, the envelope's readers). */
bool mail_field_is(const char *line, size_t len, const char *name);

#endif
