/* benchutil.c: see benchutil.h. */
#include "benchutil.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "util.h"

struct bench_lat {
    uint32_t *v;
    size_t n, cap;
    uint64_t dropped;
    bool sorted;
};

uint64_t bench_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

double bench_cpu_seconds(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0.0;
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

bench_lat *bench_lat_new(size_t cap)
{
    bench_lat *l = calloc(1, sizeof(*l));
    size_t bytes;

    if (l == NULL)
        return NULL;
    if (util_size_mul(cap ? cap : 1, sizeof(uint32_t), &bytes) != 0 || (l->v = malloc(bytes)) == NULL) {
        free(l);
        return NULL;
    }
    l->cap = cap ? cap : 1;
    return l;
}

void bench_lat_free(bench_lat *l)
{
    if (l == NULL)
        return;
    free(l->v);
    free(l);
}

void bench_lat_add(bench_lat *l, uint64_t usec)
{
    if (l->n >= l->cap) {
        l->dropped++;
        return;
    }
    l->v[l->n++] = usec > UINT32_MAX ? UINT32_MAX : (uint32_t)usec;
    l->sorted = false;
}

void bench_lat_merge(bench_lat *dst, const bench_lat *src)
{
    size_t i;

    for (i = 0; i < src->n; i++)
        bench_lat_add(dst, src->v[i]);
    dst->dropped += src->dropped;
}

size_t bench_lat_count(const bench_lat *l)
{
    return l->n;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

    return x < y ? -1 : x > y;
}

double bench_lat_pct_ms(bench_lat *l, double p)
{
    size_t idx;

    if (l == NULL || l->n == 0)
        return 0.0;
    if (!l->sorted) {
        qsort(l->v, l->n, sizeof(l->v[0]), cmp_u32);
        l->sorted = true;
    }
    /* Nearest-rank percentile. */
    idx = (size_t)ceil(p / 100.0 * (double)l->n);
    if (idx > 0)
        idx--;
    if (idx >= l->n)
        idx = l->n - 1;
    return l->v[idx] / 1000.0;
}

int bench_lat_write_dist(bench_lat *l, const char *path)
{
    FILE *f;
    double p;
    int rc = -1;

    if ((f = fopen(path, "w")) == NULL)
        return -1;
    fprintf(f, "percentile,latency_ms\n");
    /* Denser towards the tail, where the interesting part of a latency
     * distribution is: 0..90 by 1, 90..99 by 0.1, 99..99.99 by 0.01. */
    for (p = 0.0; p < 90.0; p += 1.0)
        fprintf(f, "%.2f,%.3f\n", p, bench_lat_pct_ms(l, p));
    for (p = 90.0; p < 99.0; p += 0.1)
        fprintf(f, "%.2f,%.3f\n", p, bench_lat_pct_ms(l, p));
    for (p = 99.0; p < 99.995; p += 0.01)
        fprintf(f, "%.2f,%.3f\n", p, bench_lat_pct_ms(l, p));
    fprintf(f, "100.00,%.3f\n", bench_lat_pct_ms(l, 100.0));
    if (fclose(f) == 0)
        rc = 0;
    return rc;
}

void bench_result_print(FILE *out, bool header, const bench_result *r, bench_lat *lat)
{
    if (header)
        fprintf(out, "tool,variant,key,conc,ops,errors,seconds,ops_per_s,p50_ms,p90_ms,p99_ms,cpu_s\n");
    fprintf(out, "%s,%s,%s,%u,%llu,%llu,%.3f,%.1f,%.3f,%.3f,%.3f,%.2f\n", r->tool, r->variant, r->key,
            r->conc, (unsigned long long)r->ops, (unsigned long long)r->errors, r->seconds,
            r->seconds > 0 ? (double)r->ops / r->seconds : 0.0, bench_lat_pct_ms(lat, 50),
            bench_lat_pct_ms(lat, 90), bench_lat_pct_ms(lat, 99), r->cpu_s);
    fflush(out);
}

int bench_arg_u64(const char *prog, const char *opt, const char *s, uint64_t min, uint64_t max,
                  uint64_t *out)
{
    if (s == NULL || util_parse_u64(s, min, max, out) != 0) {
        fprintf(stderr, "%s: %s wants a whole number in %llu..%llu\n", prog, opt, (unsigned long long)min,
                (unsigned long long)max);
        return -1;
    }
    return 0;
}

int bench_arg_double(const char *prog, const char *opt, const char *s, double min, double max, double *out)
{
    char *end = NULL;
    double v;

    errno = 0;
    v = s ? strtod(s, &end) : 0.0;
    if (s == NULL || *s == '\0' || end == NULL || *end != '\0' || errno != 0 || !(v >= min && v <= max)) {
        fprintf(stderr, "%s: %s wants a number in %g..%g\n", prog, opt, min, max);
        return -1;
    }
    *out = v;
    return 0;
}
