/*
 * jsonin.c: flat objects of plain strings and small integers, read in one
 * pass (jsonin.h). Everything it takes, jansson takes the same way
 * (tests/unit/test_jsonin.c compares the two on valid, invalid and random
 * inputs); everything else is left to jansson.
 */
#include "jsonin.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* JSON's whitespace, as jansson's lexer skips it. */
static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t skip_ws(const char *t, size_t i, size_t len)
{
    while (i < len && is_ws(t[i]))
        i++;
    return i;
}

/* A string at t[i] (its opening quote): printable ASCII up to the closing
 * quote, no escapes. Its content's offset and length, and the offset
 * after it; false if it is not such a string. */
static bool plain_string(const char *t, size_t i, size_t len, size_t *start, size_t *n, size_t *next)
{
    if (i >= len || t[i] != '"')
        return false;
    *start = ++i;
    while (i < len && t[i] != '"') {
        unsigned char c = (unsigned char)t[i];
        if (c < 0x20 || c > 0x7e || c == '\\')
            return false;
        i++;
    }
    if (i >= len)
        return false;
    *n = i - *start;
    *next = i + 1;
    return true;
}

/* An integer at t[i]: -?(0|[1-9][0-9]{0,17}), not "-0", ending where
 * JSON lets a value end here (whitespace, ',' or '}'); a fraction or an
 * exponent makes it a real, which is left to jansson. */
static bool small_integer(const char *t, size_t i, size_t len, json_int_t *v, size_t *next)
{
    bool neg = false;
    size_t digits = 0;
    json_int_t x = 0;

    if (i < len && t[i] == '-') {
        neg = true;
        i++;
    }
    if (i >= len || t[i] < '0' || t[i] > '9')
        return false;
    if (t[i] == '0') {
        if (neg)
            return false;
        i++;
    } else {
        while (i < len && t[i] >= '0' && t[i] <= '9') {
            if (++digits > 18)
                return false;
            x = x * 10 + (t[i] - '0');
            i++;
        }
    }
    if (i >= len || !(is_ws(t[i]) || t[i] == ',' || t[i] == '}'))
        return false;
    *v = neg ? -x : x;
    *next = i;
    return true;
}

json_t *jsonin_flat_object(const char *text, size_t len)
{
    json_t *o = NULL, *val = NULL;
    size_t i, ks, kn, vs, vn;
    char key[256];
    json_int_t num;

    i = skip_ws(text, 0, len);
    if (i >= len || text[i] != '{' || (o = json_object()) == NULL)
        return NULL;
    i = skip_ws(text, i + 1, len);
    if (i < len && text[i] == '}') {
        i++;
        goto end;
    }
    for (;;) {
        if (!plain_string(text, i, len, &ks, &kn, &i) || kn >= sizeof(key))
            goto fail;
        i = skip_ws(text, i, len);
        if (i >= len || text[i] != ':')
            goto fail;
        i = skip_ws(text, i + 1, len);
        if (i < len && text[i] == '"') {
            if (!plain_string(text, i, len, &vs, &vn, &i) || (val = json_stringn_nocheck(text + vs, vn)) == NULL)
                goto fail;
        } else if (!small_integer(text, i, len, &num, &i) || (val = json_integer(num)) == NULL) {
            goto fail;
        }
        memcpy(key, text + ks, kn);
        key[kn] = '\0';
        /* A key given twice is jansson's to refuse. */
        if (json_object_get(o, key) != NULL || json_object_set_new_nocheck(o, key, val) != 0) {
            json_decref(val);
            goto fail;
        }
        val = NULL;
        i = skip_ws(text, i, len);
        if (i < len && text[i] == ',') {
            i = skip_ws(text, i + 1, len);
            continue;
        }
        if (i < len && text[i] == '}') {
            i++;
            break;
        }
        goto fail;
    }
end:
    /* Only whitespace may follow, as json_loadb requires. */
    if (skip_ws(text, i, len) == len)
        return o;
fail:
    json_decref(o);
    return NULL;
}
