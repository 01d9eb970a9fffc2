/*
 * jsonw.h: a small, bounded writer of compact JSON text, for answers of a
 * fixed shape (the group server's unwrap answers) where building a jansson
 * tree only to serialise it costs more than the rest of the answer. The
 * text is byte for byte what jansson's json_dumps(JSON_COMPACT |
 * JSON_PRESERVE_ORDER) makes of the same values: strings must be valid
 * UTF-8 (as json_string requires) and are escaped as jansson escapes them.
 *
 * Errors are sticky: after the first failed call the others do nothing,
 * and jsonw_text reports the first error. The writer owns its buffer and
 * wipes it when it grows and when it is freed (answers may hold a key).
 */
#ifndef GS_JSONW_H
#define GS_JSONW_H

#include <stddef.h>

typedef enum {
    JSONW_OK = 0,
    JSONW_E_NOMEM,   /* out of memory */
    JSONW_E_TOOBIG,  /* the text would exceed the writer's maximum */
    JSONW_E_UTF8,    /* a string is not valid UTF-8 (or holds a NUL) */
    JSONW_E_SHAPE,   /* a value where a key was due, or the reverse; nesting too deep or unbalanced */
} jsonw_err;

const char *jsonw_strerror(jsonw_err err);

/* 1 when the n bytes at s are valid UTF-8 as json_string takes it (no
 * overlong forms, surrogates or code points past U+10FFFF), else 0: a
 * string from outside (a certificate's name) that must go into JSON. */
int jsonw_utf8_valid(const char *s, size_t n);

/* Octets of the one UTF-8 sequence at s[0, n) by jsonw_utf8_valid's rule
 * (1 for US-ASCII), 0 when it is not well-formed or n is 0: for a caller
 * that must also look at which character it is (the exploder refuses C1
 * controls in an address). */
size_t jsonw_utf8_seq(const char *s, size_t n);

typedef struct jsonw jsonw;

/* A writer whose text may grow to at most max bytes; NULL when out of
 * memory. Free with jsonw_free (NULL is fine; the text is wiped). */
jsonw *jsonw_new(size_t max);
void jsonw_free(jsonw *w);

/* Objects and arrays, at most 16 deep. Inside an object, each value
 * follows a jsonw_key. */
void jsonw_obj_begin(jsonw *w);
void jsonw_obj_end(jsonw *w);
void jsonw_arr_begin(jsonw *w);
void jsonw_arr_end(jsonw *w);
/* A member's name (NUL-terminated, escaped as a string). */
void jsonw_key(jsonw *w, const char *key);
/* Values: a NUL-terminated string (NULL is an error), len bytes as a standard base64 string
 * (RFC 4648, no line breaks), an integer. */
void jsonw_str(jsonw *w, const char *s);
void jsonw_b64(jsonw *w, const unsigned char *p, size_t len);
void jsonw_int(jsonw *w, long long v);
/* A newline after the top-level value (the server ends its answers so). */
void jsonw_newline(jsonw *w);

/* The text so far (not NUL-terminated) and its length, once every object
 * and array is closed; the writer still owns it. JSONW_OK, or the first
 * error of any call (then *text is NULL and *len 0). */
jsonw_err jsonw_text(const jsonw *w, const char **text, size_t *len);

#endif
