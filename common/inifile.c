/* inifile.c: see inifile.h. */
#include "inifile.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

struct line_reader {
    FILE *f;       /* the file, or NULL for text */
    const char *s; /* the rest of text */
    int lineno;    /* lines handed to inih so far */
    int long_line; /* the first line too long, 0 if none */
    int nul_line;  /* the first line with a NUL byte, 0 if none */
    ini_handler handler; /* the caller's, and its user pointer */
    void *user;
    int handler_line; /* the first line the handler refused, 0 if none */
    bool after_key;   /* a key was read since the last [section]: inih reads
                       * an indented line as that key's continuation */
    char section[INIFILE_LINE_MAX + 1]; /* the last [section]'s name ... */
    int section_lineno; /* ... and its line while no key followed it, else 0 */
};

/* inih's handler: the caller's, noting which line it refused first. inih
 * reports only the first bad line, the handler's or its own syntax error,
 * and the caller must know which, or a message names the wrong line. */
static int call_handler(void *stream, const char *section, const char *name, const char *value)
{
    struct line_reader *r = stream;
    int ok = r->handler(r->user, section, name, value);

    r->after_key = true;
    r->section_lineno = 0;
    if (!ok && r->handler_line == 0)
        r->handler_line = r->lineno; /* inih handles each line as soon as it is read */
    return ok;
}

/* The section before, if no key followed it (an empty section): the
 * handler hears of it with name and value NULL, inih's
 * INI_CALL_HANDLER_ON_NEW_SECTION convention (which Debian's libinih is
 * built without), so that a misspelt "[Server]" with nothing under it is
 * not passed over without a word; a section with keys is judged by its
 * keys, as before. Called at the next [section] line and at the end.
 * Returns false when the handler refuses it (noted as its line). */
static bool empty_section_done(struct line_reader *r)
{
    int at = r->section_lineno;

    if (at == 0)
        return true;
    r->section_lineno = 0;
    if (r->handler(r->user, r->section, NULL, NULL))
        return true;
    if (r->handler_line == 0)
        r->handler_line = at;
    return false;
}

/* Notes a [section] line as inih reads one: the first line's UTF-8 byte
 * order mark skipped, white space before the '[' allowed unless the line
 * continues a key, the name up to the first ']' before any inline
 * comment. Returns false when the section before it was empty and the
 * handler refused it. */
static bool section_line(struct line_reader *r, const char *line)
{
    const char *p = line, *end;
    size_t len;

    if (r->lineno == 1 && (unsigned char)p[0] == 0xEF && (unsigned char)p[1] == 0xBB && (unsigned char)p[2] == 0xBF)
        p += 3;
    while (*p != '\0' && isspace((unsigned char)*p))
        p++;
    if (*p != '[' || (p > line && r->after_key))
        return true;
    for (end = p + 1; *end != '\0' && *end != ']'; end++)
        if (*end == ';' && isspace((unsigned char)end[-1]))
            return true; /* an inline comment before any ']': inih's syntax error */
    if (*end != ']')
        return true;
    if (!empty_section_done(r))
        return false;
    len = (size_t)(end - (p + 1)); /* < the line's length, which fits */
    memcpy(r->section, p + 1, len);
    r->section[len] = '\0';
    r->section_lineno = r->lineno;
    r->after_key = false;
    return true;
}

static int next_char(struct line_reader *r)
{
    if (r->f != NULL)
        return getc(r->f);
    if (*r->s == '\0')
        return EOF;
    return (unsigned char)*r->s++;
}

/* inih's reader: one whole line into str (num bytes), without its newline.
 * A line that does not fit, or that holds a NUL byte (which would end it
 * early in inih's eyes), ends the parse (NULL, as at the end of input) and
 * is recorded for inifile_parse to report. */
static char *read_line(char *str, int num, void *stream)
{
    struct line_reader *r = stream;
    size_t n = 0, cap;
    int ch;

    if (num < 2)
        return NULL;
    /* the documented limit, whatever buffer libinih was built with */
    cap = (size_t)num - 1 < INIFILE_LINE_MAX ? (size_t)num - 1 : INIFILE_LINE_MAX;
    for (;;) {
        ch = next_char(r);
        if (ch == EOF) {
            if (n == 0) {
                (void)empty_section_done(r); /* the last section, if empty */
                return NULL;
            }
            break;
        }
        if (ch == '\n')
            break;
        if (ch == '\0') {
            r->nul_line = r->lineno + 1;
            return NULL;
        }
        if (n == cap) {
            r->long_line = r->lineno + 1;
            return NULL;
        }
        str[n++] = (char)ch;
    }
    str[n] = '\0';
    r->lineno++;
    if (!section_line(r, str))
        return NULL; /* end the parse here, as at a long line: no later error may be named first */
    return str;
}

/* Parses from r (its file or its text) and reports as inifile_parse. */
static enum inifile_status parse_reader(struct line_reader *r, ini_handler handler, void *user, int *line)
{
    enum inifile_status st;
    int rc;

    r->handler = handler;
    r->user = user;
    rc = ini_parse_stream(read_line, r, call_handler, r);
    if (r->f != NULL && ferror(r->f)) /* a directory: EISDIR */
        return INIFILE_IO;
    if (rc == -2) {
        st = INIFILE_NOMEM;
    } else if (rc > 0) {
        /* Parsing stopped at a long or NUL line: any error inih reports
         * is on an earlier line, so it comes first. */
        st = rc == r->handler_line ? INIFILE_BAD_LINE : INIFILE_SYNTAX;
        *line = rc;
    } else if (r->handler_line > 0) {
        st = INIFILE_BAD_LINE; /* a [section] line the handler refused */
        *line = r->handler_line;
    } else if (r->long_line > 0) {
        st = INIFILE_LONG_LINE;
        *line = r->long_line;
    } else if (r->nul_line > 0) {
        st = INIFILE_NUL;
        *line = r->nul_line;
    } else {
        st = rc == 0 ? INIFILE_OK : INIFILE_IO;
    }
    return st;
}

enum inifile_status inifile_parse_stream(FILE *f, ini_handler handler, void *user, int *line)
{
    struct line_reader r = {0};

    *line = 0;
    if (f == NULL) {
        errno = EINVAL;
        return INIFILE_IO;
    }
    r.f = f;
    return parse_reader(&r, handler, user, line);
}

enum inifile_status inifile_parse(const char *path, const char *text, ini_handler handler, void *user,
                                  int *line)
{
    struct line_reader r = {0};
    enum inifile_status st = INIFILE_IO;

    *line = 0;
    if (path != NULL) {
        if ((r.f = fopen(path, "r")) == NULL)
            goto out;
    } else if (text != NULL) {
        r.s = text;
    } else {
        errno = EINVAL;
        goto out;
    }
    st = parse_reader(&r, handler, user, line);
out:
    if (r.f != NULL) {
        int saved = errno;
        (void)fclose(r.f);
        errno = saved;
    }
    return st;
}

#define INIFILE_STR_(x) #x
#define INIFILE_STR(x) INIFILE_STR_(x)

const char *inifile_line_strerror(enum inifile_status st)
{
    switch (st) {
    case INIFILE_SYNTAX: return "syntax error (expected [section] or key = value)";
    case INIFILE_LONG_LINE: return "line longer than " INIFILE_STR(INIFILE_LINE_MAX) " characters";
    case INIFILE_NUL: return "NUL byte in line";
    default: return NULL;
    }
}
