/* mailfold.c: header line folding. See mailfold.h. */
#include "mailfold.h"

#include <stdbool.h>
#include <string.h>
#include <strings.h>

static bool is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

/* Where the piece of a line that starts at f[s] is folded: the space or
 * tab that starts the next line, at most MAILFOLD_MAX_LINE octets on and
 * not past last (the line's last character that is not white space, so
 * that the new line is never its trailing white space alone), and after
 * colon (a field's first line keeps its name and colon together: "To :"
 * folded before its colon would leave a line "To", no field at all); s
 * when there is none, or the piece before it would be white space alone. */
static size_t fold_at(const char *f, size_t s, size_t last, size_t colon)
{
    size_t k = s + MAILFOLD_MAX_LINE < last ? s + MAILFOLD_MAX_LINE : last, t = s + 1;

    while (k > s && !is_wsp(f[k]))
        k--;
    if (k <= colon)
        return s;
    while (t < k && is_wsp(f[t]))
        t++;
    return t >= k ? s : k;
}

size_t mailfold(char *out, const char *f, size_t n, const char *eol)
{
    size_t o = 0, i = 0, el = strlen(eol);

    while (i < n) {
        const char *lf = memchr(f + i, '\n', n - i);
        size_t next = lf != NULL ? (size_t)(lf - f) + 1 : n, e = lf != NULL ? (size_t)(lf - f) : n, s = i, k, last;
        size_t colon = i;
        const char *c;
        bool fits = true;

        if (e > i && f[e - 1] == '\r')
            e--;
        /* a field's first line (not a continuation) is folded only after
         * its colon (RFC 5322 obs-optional allows white space before it) */
        if (e > i && !is_wsp(f[i]) && (c = memchr(f + i, ':', e - i)) != NULL)
            colon = (size_t)(c - f);
        for (last = e > s ? e - 1 : s; last > s && is_wsp(f[last]);)
            last--;
        /* A line that cannot be brought within MAILFOLD_MAX_LINE octets
         * everywhere goes as it came: the relay refuses it all the same,
         * and a part-folded field would only differ for nothing. */
        for (s = i; fits && e - s > MAILFOLD_MAX_LINE; s = k)
            fits = (k = fold_at(f, s, last, colon)) != s;
        s = i;
        while (fits && e - s > MAILFOLD_MAX_LINE) {
            k = fold_at(f, s, last, colon);
            if (out != NULL) {
                memcpy(out + o, f + s, k - s);
                memcpy(out + o + (k - s), eol, el);
            }
            o += k - s + el;
            s = k;
        }
        if (out != NULL)
            memcpy(out + o, f + s, next - s);
        o += next - s;
        i = next;
    }
    return o;
}

bool mail_field_is(const char *line, size_t len, const char *name)
{
    size_t k = strlen(name);

    if (len <= k || strncasecmp(line, name, k) != 0)
        return false;
    while (k < len && is_wsp(line[k]))
        k++;
    return k < len && line[k] == ':';
}
