/*
 * inifile.h: inih over whole lines. libinih reads each line into a buffer
 * of INI_MAX_LINE (200) bytes and parses what is left of a longer line as
 * a line of its own: the value is cut short without a word, and the error,
 * if any, names a line the file does not have. inifile_parse reads the
 * lines itself and refuses a longer one, naming it; every other rule
 * (sections, comments, continuation lines) is inih's.
 * Library code: never exits, never prints.
 */
#ifndef GS_INIFILE_H
#define GS_INIFILE_H

#include <ini.h>
#include <stdio.h>

/* Characters a line may have, its newline not counted (inih's buffer
 * less its terminating NUL). */
#define INIFILE_LINE_MAX 199

enum inifile_status {
    INIFILE_OK = 0,
    INIFILE_BAD_LINE,  /* *line: the first line the handler refused (a key, or an empty [section]) */
    INIFILE_SYNTAX,    /* *line: a line inih cannot read (not a [section], key = value
                        * or comment), before any the handler refused */
    INIFILE_LONG_LINE, /* *line: a line longer than INIFILE_LINE_MAX */
    INIFILE_NUL,       /* *line: a line with a NUL byte in it */
    INIFILE_IO,        /* the file cannot be opened or read; errno kept */
    INIFILE_NOMEM,
};

/* Parses the file at path, or the string text when path is NULL, calling
 * handler for each key as ini_parse does, and with name and value NULL
 * for each [section] with no key under it, once the next section or the
 * end shows it empty (so that the handler can refuse an unknown section
 * that has no key; a refusal names the section's line). *line is the line number for
 * the four line statuses, else 0. Returns the status. */
enum inifile_status inifile_parse(const char *path, const char *text, ini_handler handler, void *user,
                                  int *line);
/* The same over an open stream, which stays open (the caller's). */
enum inifile_status inifile_parse_stream(FILE *f, ini_handler handler, void *user, int *line);
/* What is wrong with the line of INIFILE_SYNTAX, _LONG_LINE or _NUL, in
 * words every program's message uses ("line longer than 199 characters");
 * NULL for the other statuses, whose words are the caller's. */
const char *inifile_line_strerror(enum inifile_status st);

#endif
