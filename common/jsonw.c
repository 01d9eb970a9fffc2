/*
 * jsonw.c: the bounded compact-JSON writer (jsonw.h). The escaping and the
 * UTF-8 rules follow jansson 2.14's dump.c and utf.c, so that an answer
 * written here is the same bytes jansson would have written;
 * tests/unit/test_common.c compares the two on adversarial strings.
 */
#include "jsonw.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "util.h"

#define JSONW_MAX_DEPTH 16

struct jsonw {
    char *buf;
    size_t len, cap, max;
    jsonw_err err;
    unsigned depth;
    uint32_t is_object; /* bit d: level d+1 is an object (else an array) */
    uint32_t has_items; /* bit d: level d+1 already holds an item */
    int after_key;      /* a key was written: its value is due */
    int done;           /* the top-level value is complete */
};

const char *jsonw_strerror(jsonw_err err)
{
    switch (err) {
    case JSONW_OK: return "success";
    case JSONW_E_NOMEM: return "out of memory";
    case JSONW_E_TOOBIG: return "JSON text too long";
    case JSONW_E_UTF8: return "string is not valid UTF-8";
    case JSONW_E_SHAPE: return "JSON value out of place";
    }
    return "unknown error";
}

jsonw *jsonw_new(size_t max)
{
    jsonw *w = calloc(1, sizeof(*w));

    if (w == NULL)
        return NULL;
    w->max = max;
    w->cap = max < 256 ? max : 256;
    if ((w->buf = malloc(w->cap ? w->cap : 1)) == NULL) {
        free(w);
        return NULL;
    }
    return w;
}

void jsonw_free(jsonw *w)
{
    if (w == NULL)
        return;
    util_secret_free(w->buf, w->cap);
    free(w);
}

/* Room for n more bytes; 0, or -1 with w->err set. */
static int reserve(jsonw *w, size_t n)
{
    if (w->err != JSONW_OK)
        return -1;
    if (n > w->max - w->len) {
        w->err = JSONW_E_TOOBIG;
        return -1;
    }
    if (w->len + n <= w->cap)
        return 0;
    /* Grown by copying (not realloc), so that no copy of the text is left
     * unwiped in freed memory. */
    size_t cap = w->cap * 2 > w->len + n ? w->cap * 2 : w->len + n;
    if (cap > w->max)
        cap = w->max;
    char *p = util_secret_grow(w->buf, w->len, w->cap, cap);
    if (p == NULL) {
        w->err = JSONW_E_NOMEM;
        return -1;
    }
    w->buf = p;
    w->cap = cap;
    return 0;
}

static void put(jsonw *w, const char *s, size_t n)
{
    if (reserve(w, n) == 0) {
        memcpy(w->buf + w->len, s, n);
        w->len += n;
    }
}

/* Before a value: checks that one is due here and writes the comma. */
static int value_start(jsonw *w)
{
    if (w->err != JSONW_OK)
        return -1;
    if (w->done || (w->depth > 0 && (w->is_object >> (w->depth - 1) & 1) && !w->after_key)) {
        w->err = JSONW_E_SHAPE;
        return -1;
    }
    if (w->depth > 0 && !w->after_key) {
        uint32_t bit = 1u << (w->depth - 1);
        if (w->has_items & bit)
            put(w, ",", 1);
        w->has_items |= bit;
    }
    w->after_key = 0;
    return w->err == JSONW_OK ? 0 : -1;
}

/* After a value: the top-level one completes the text. */
static void value_end(jsonw *w)
{
    if (w->depth == 0)
        w->done = 1;
}

static void open_level(jsonw *w, int object)
{
    if (value_start(w) != 0)
        return;
    if (w->depth >= JSONW_MAX_DEPTH) {
        w->err = JSONW_E_SHAPE;
        return;
    }
    put(w, object ? "{" : "[", 1);
    uint32_t bit = 1u << w->depth;
    w->is_object = object ? w->is_object | bit : w->is_object & ~bit;
    w->has_items &= ~bit;
    w->depth++;
}

static void close_level(jsonw *w, int object)
{
    if (w->err != JSONW_OK)
        return;
    if (w->depth == 0 || (int)(w->is_object >> (w->depth - 1) & 1) != object || w->after_key) {
        w->err = JSONW_E_SHAPE;
        return;
    }
    put(w, object ? "}" : "]", 1);
    w->depth--;
    value_end(w);
}

void jsonw_obj_begin(jsonw *w) { open_level(w, 1); }
void jsonw_obj_end(jsonw *w) { close_level(w, 1); }
void jsonw_arr_begin(jsonw *w) { open_level(w, 0); }
void jsonw_arr_end(jsonw *w) { close_level(w, 0); }

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid:
 * no overlong forms, no surrogates, nothing above U+10FFFF (jansson's
 * utf8_check_first/utf8_check_full). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t k;
    uint32_t v;

    if (c < 0x80)
        return 1;
    if (c < 0xC2)
        return 0; /* a continuation byte, or an overlong 2-byte form */
    if (c < 0xE0) {
        k = 2;
        v = c & 0x1F;
    } else if (c < 0xF0) {
        k = 3;
        v = c & 0x0F;
    } else if (c < 0xF5) {
        k = 4;
        v = c & 0x07;
    } else {
        return 0;
    }
    if (k > n)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = v << 6 | (s[i] & 0x3F);
    }
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF) || (k == 3 && v < 0x800) || (k == 4 && v < 0x10000))
        return 0;
    return k;
}

size_t jsonw_utf8_seq(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    return utf8_len((const unsigned char *)s, n);
}

int jsonw_utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;

    for (size_t i = 0; i < n;) {
        size_t k = utf8_len(u + i, n - i);
        if (k == 0)
            return 0;
        i += k;
    }
    return 1;
}

static void put_string(jsonw *w, const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t n = strlen(str), run = 0;

    put(w, "\"", 1);
    for (size_t i = 0; i < n && w->err == JSONW_OK;) {
        unsigned char c = s[i];
        const char *esc = NULL;
        char u[8];
        if (c >= 0x80) {
            size_t k = utf8_len(s + i, n - i);
            if (k == 0) {
                w->err = JSONW_E_UTF8;
                return;
            }
            i += k;
            run += k;
            continue;
        }
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (c < 0x20) {
                snprintf(u, sizeof(u), "\\u%04X", (unsigned)c);
                esc = u;
            }
        }
        if (esc == NULL) {
            i++;
            run++;
            continue;
        }
        put(w, str + i - run, run);
        put(w, esc, strlen(esc));
        run = 0;
        i++;
    }
    put(w, str + n - run, run);
    put(w, "\"", 1);
}

void jsonw_key(jsonw *w, const char *key)
{
    if (w->err != JSONW_OK)
        return;
    if (w->depth == 0 || !(w->is_object >> (w->depth - 1) & 1) || w->after_key) {
        w->err = JSONW_E_SHAPE;
        return;
    }
    uint32_t bit = 1u << (w->depth - 1);
    if (w->has_items & bit)
        put(w, ",", 1);
    w->has_items |= bit;
    put_string(w, key);
    put(w, ":", 1);
    w->after_key = 1;
}

void jsonw_str(jsonw *w, const char *s)
{
    if (s == NULL && w->err == JSONW_OK)
        w->err = JSONW_E_SHAPE;
    if (value_start(w) != 0)
        return;
    put_string(w, s);
    value_end(w);
}

void jsonw_b64(jsonw *w, const unsigned char *p, size_t len)
{
    unsigned char chunk[65]; /* 48 bytes encoded, and EVP_EncodeBlock's NUL */

    if (value_start(w) != 0)
        return;
    if (len / 3 > (w->max - w->len) / 4) {
        w->err = JSONW_E_TOOBIG;
        return;
    }
    put(w, "\"", 1);
    if (reserve(w, (len + 2) / 3 * 4 + 1) != 0)
        return;
    for (size_t off = 0; off < len && w->err == JSONW_OK; off += 48) {
        int n = EVP_EncodeBlock(chunk, p + off, (int)(len - off < 48 ? len - off : 48));
        put(w, (const char *)chunk, (size_t)n);
    }
    OPENSSL_cleanse(chunk, sizeof(chunk));
    put(w, "\"", 1);
    value_end(w);
}

void jsonw_int(jsonw *w, long long v)
{
    char num[24];
    int n;

    if (value_start(w) != 0)
        return;
    n = snprintf(num, sizeof(num), "%lld", v);
    put(w, num, (size_t)n);
    value_end(w);
}

void jsonw_newline(jsonw *w)
{
    if (w->err != JSONW_OK)
        return;
    if (!w->done) {
        w->err = JSONW_E_SHAPE;
        return;
    }
    put(w, "\n", 1);
}

jsonw_err jsonw_text(const jsonw *w, const char **text, size_t *len)
{
    *text = NULL;
    *len = 0;
    if (w->err != JSONW_OK)
        return w->err;
    if (!w->done)
        return JSONW_E_SHAPE;
    *text = w->buf;
    *len = w->len;
    return JSONW_OK;
}
