/*
 * benchutil.h: what the bench tools share: a monotonic clock, a bounded
 * latency recorder with percentiles, and the one CSV result line every
 * tool prints, so bench/run can concatenate them into bench/results/.
 *
 * Benchmark programs only; nothing in groupsrv links this.
 */
#ifndef GS_BENCHUTIL_H
#define GS_BENCHUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Monotonic time in nanoseconds. */
uint64_t bench_now_ns(void);

/* Latency samples in microseconds; at most cap are kept (later samples are
 * counted but dropped, so memory stays bounded for long runs). */
typedef struct bench_lat bench_lat;
bench_lat *bench_lat_new(size_t cap);
void bench_lat_free(bench_lat *l);
void bench_lat_add(bench_lat *l, uint64_t usec);
/* Appends all samples of src to dst (bounded by dst's cap). */
void bench_lat_merge(bench_lat *dst, const bench_lat *src);
size_t bench_lat_count(const bench_lat *l);
/* Percentile p (0..100) in milliseconds; 0 when there are no samples.
 * Sorts the samples the first time it is called after an add. */
double bench_lat_pct_ms(bench_lat *l, double p);
/* Writes "percentile,latency_ms" rows (a fine grid towards the tail) to
 * path, for the latency-distribution plot. Returns 0 or -1. */
int bench_lat_write_dist(bench_lat *l, const char *path);

/* One result row. Columns (also the header):
 * tool,variant,key,conc,ops,errors,seconds,ops_per_s,p50_ms,p90_ms,p99_ms,cpu_s */
typedef struct bench_result {
    const char *tool;    /* "p11rate", "unwrap-load", ... */
    const char *variant; /* "softhsm", "p11-kit-server", "keepalive", ... */
    const char *key;     /* "rsa2048", "rsa3072", "p256" */
    unsigned conc;       /* threads or connections */
    uint64_t ops, errors;
    double seconds, cpu_s;
} bench_result;
void bench_result_print(FILE *out, bool header, const bench_result *r, bench_lat *lat);

/* Process CPU time (user+system) in seconds, from getrusage. */
double bench_cpu_seconds(void);

/* Strict argument parsing helpers: print a one-line error and return -1. */
int bench_arg_u64(const char *prog, const char *opt, const char *s, uint64_t min, uint64_t max,
                  uint64_t *out);
int bench_arg_double(const char *prog, const char *opt, const char *s, double min, double max, double *out);

#endif
