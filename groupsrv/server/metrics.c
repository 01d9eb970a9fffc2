/*
 * metrics.c: Prometheus counters (see metrics.h).
 */
#include "metrics.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const int status_codes[] = {200, 201, 204, 400, 401, 403, 404, 405, 409, 413, 415, 429, 500, 503};
#define N_STATUS (sizeof(status_codes) / sizeof(status_codes[0]))
/* Histogram upper bounds in seconds; the +Inf bucket is the count. */
static const double buckets[METRICS_LAT_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                    0.25,  0.5,    1,     2.5,  5,     10};
#define N_BUCKETS METRICS_LAT_BUCKETS

static atomic_ulong req_count[EP_COUNT][N_STATUS + 1]; /* last column: other statuses */
/* Observations per bin, not cumulative: bin i holds those in (buckets[i-1],
 * buckets[i]], the last one those above every bound. One increment per
 * observation, so a snapshot sums what it read into cumulative buckets
 * and a count that always agree, however many workers observe meanwhile
 * (cumulative counters and a separate count, read one after another,
 * were torn: a bucket above the next one, or above the count). */
static atomic_ulong lat_bin[N_BUCKETS + 1];
static atomic_ulong lat_sum_us;
static atomic_ulong token_errors;
static atomic_long connections;
static atomic_llong tls_not_after;
static atomic_llong ca_not_after;

static const char *ep_names[EP_COUNT] = {
    [EP_OTHER] = "other", [EP_DISCOVERY] = "discovery", [EP_CERTIFICATE] = "certificate",
    [EP_UNWRAP] = "unwrap", [EP_UNWRAP_BATCH] = "unwrap_batch", [EP_REWRAP] = "rewrap",
    [EP_SECRET_KEYS] = "secret_keys", [EP_MEMBERS] = "members", [EP_GROUPS] = "groups",
    [EP_MEMBERSHIP_CERT] = "membership_certificates", [EP_HEALTHZ] = "healthz", [EP_METRICS] = "metrics",
};

const char *metrics_endpoint_name(enum metrics_endpoint ep)
{
    return (unsigned)ep < EP_COUNT ? ep_names[ep] : "other";
}

void metrics_request(enum metrics_endpoint ep, int status)
{
    size_t i;

    if ((unsigned)ep >= EP_COUNT)
        ep = EP_OTHER;
    for (i = 0; i < N_STATUS; i++)
        if (status_codes[i] == status)
            break;
    atomic_fetch_add(&req_count[ep][i], 1);
}

void metrics_unwrap_latency(double seconds)
{
    size_t i = 0;

    while (i < N_BUCKETS && seconds > buckets[i])
        i++;
    atomic_fetch_add(&lat_bin[i], 1);
    atomic_fetch_add(&lat_sum_us, (unsigned long)(seconds * 1e6));
}

void metrics_token_error(void) { atomic_fetch_add(&token_errors, 1); }
/* The links to the key holder (holder.c), over every thread. */
static _Atomic long long khq_bytes, khq_frames;
static _Atomic unsigned long long khq_refused[2], khq_unsent;

void metrics_khq_held(long long bytes_delta, long long frames_delta)
{
    atomic_fetch_add(&khq_bytes, bytes_delta);
    atomic_fetch_add(&khq_frames, frames_delta);
}
void metrics_khq_refused(int stalled) { atomic_fetch_add(&khq_refused[stalled ? 1 : 0], 1); }
void metrics_khq_unsent(void) { atomic_fetch_add(&khq_unsent, 1); }

void metrics_connection(int delta) { atomic_fetch_add(&connections, delta); }
long metrics_connections(void) { return atomic_load(&connections); }

/* A bounded growing string; on overflow or OOM it latches failure. */
struct sbuf {
    char *p;
    size_t len, cap;
    int bad;
};

__attribute__((format(printf, 2, 3))) static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;

    if (b->bad)
        return;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->bad = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        if (b->cap >= (1u << 20)) {
            b->bad = 1;
            return;
        }
        char *np = realloc(b->p, b->cap * 2);
        if (np == NULL) {
            b->bad = 1;
            return;
        }
        b->p = np;
        b->cap *= 2;
    }
}

void metrics_token_snapshot(metrics_token *out)
{
    memset(out, 0, sizeof(*out));
    out->sessions_in_use = -1;
    out->token_errors = atomic_load(&token_errors);
    unsigned long below = 0;
    for (size_t i = 0; i < N_BUCKETS; i++) {
        below += atomic_load(&lat_bin[i]);
        out->lat_bucket[i] = below;
    }
    out->lat_count = below + atomic_load(&lat_bin[N_BUCKETS]);
    out->lat_sum_us = atomic_load(&lat_sum_us);
}

void metrics_token_pack(const metrics_token *t, unsigned char *out)
{
    uint64_t w[METRICS_TOKEN_WORDS];
    size_t n = 0;

    w[n++] = (uint64_t)(int64_t)t->sessions_in_use;
    w[n++] = (uint64_t)(int64_t)t->sessions_idle;
    w[n++] = (uint64_t)t->token_up;
    w[n++] = (uint64_t)t->audit_up;
    w[n++] = t->token_errors;
    for (size_t i = 0; i < N_BUCKETS; i++)
        w[n++] = t->lat_bucket[i];
    w[n++] = t->lat_count;
    w[n++] = t->lat_sum_us;
    memcpy(out, w, sizeof(w));
}

int metrics_token_unpack(const unsigned char *in, size_t len, metrics_token *out)
{
    uint64_t w[METRICS_TOKEN_WORDS];
    size_t n = 0;

    memset(out, 0, sizeof(*out));
    if (len != sizeof(w))
        return -1;
    memcpy(w, in, sizeof(w));
    out->sessions_in_use = (long)(int64_t)w[n++];
    out->sessions_idle = (long)(int64_t)w[n++];
    out->token_up = w[n++] != 0;
    out->audit_up = w[n++] != 0;
    out->token_errors = (unsigned long)w[n++];
    for (size_t i = 0; i < N_BUCKETS; i++)
        out->lat_bucket[i] = (unsigned long)w[n++];
    out->lat_count = (unsigned long)w[n++];
    out->lat_sum_us = (unsigned long)w[n++];
    return 0;
}

void metrics_tls_not_after(long long unix_seconds) { atomic_store(&tls_not_after, unix_seconds); }
void metrics_ca_not_after(long long unix_seconds) { atomic_store(&ca_not_after, unix_seconds); }

char *metrics_render(const metrics_token *t)
{
    struct sbuf b = {.cap = 8192};
    metrics_token none;
    /* The key holder's counters are its own: without its answer they are
     * left out, not shown as 0, which Prometheus would take for a counter
     * reset (and the next scrape's values for a jump). */
    const int holder_answered = t != NULL;

    if (t == NULL) {
        memset(&none, 0, sizeof(none));
        none.sessions_in_use = -1;
        t = &none;
    }

    if ((b.p = malloc(b.cap)) == NULL)
        return NULL;
    b.p[0] = '\0';
    sb_printf(&b, "# HELP groupsrv_requests_total HTTP requests by endpoint and status.\n"
                  "# TYPE groupsrv_requests_total counter\n");
    for (size_t e = 0; e < EP_COUNT; e++)
        for (size_t s = 0; s <= N_STATUS; s++) {
            unsigned long v = atomic_load(&req_count[e][s]);
            if (v == 0)
                continue;
            if (s < N_STATUS)
                sb_printf(&b, "groupsrv_requests_total{endpoint=\"%s\",status=\"%d\"} %lu\n", ep_names[e],
                          status_codes[s], v);
            else
                sb_printf(&b, "groupsrv_requests_total{endpoint=\"%s\",status=\"other\"} %lu\n", ep_names[e], v);
        }
    if (holder_answered) {
        sb_printf(&b, "# HELP groupsrv_unwrap_duration_seconds Token time of unwrap and rewrap operations.\n"
                      "# TYPE groupsrv_unwrap_duration_seconds histogram\n");
        for (size_t i = 0; i < N_BUCKETS; i++)
            sb_printf(&b, "groupsrv_unwrap_duration_seconds_bucket{le=\"%g\"} %lu\n", buckets[i],
                      t->lat_bucket[i]);
        unsigned long cnt = t->lat_count;
        sb_printf(&b, "groupsrv_unwrap_duration_seconds_bucket{le=\"+Inf\"} %lu\n", cnt);
        sb_printf(&b, "groupsrv_unwrap_duration_seconds_sum %.6f\n", (double)t->lat_sum_us / 1e6);
        sb_printf(&b, "groupsrv_unwrap_duration_seconds_count %lu\n", cnt);
        sb_printf(&b,
                  "# HELP groupsrv_token_errors_total Token (PKCS#11) failures other than bad input.\n"
                  "# TYPE groupsrv_token_errors_total counter\ngroupsrv_token_errors_total %lu\n",
                  t->token_errors);
    }
    if (t->sessions_in_use >= 0)
        sb_printf(&b, "# HELP groupsrv_token_sessions_in_use Token sessions borrowed from the pool.\n"
                      "# TYPE groupsrv_token_sessions_in_use gauge\ngroupsrv_token_sessions_in_use %ld\n"
                      "# HELP groupsrv_token_sessions_idle Token sessions idle in the pool.\n"
                      "# TYPE groupsrv_token_sessions_idle gauge\ngroupsrv_token_sessions_idle %ld\n",
                  t->sessions_in_use, t->sessions_idle);
    sb_printf(&b, "# HELP groupsrv_connections Open client connections.\n"
                  "# TYPE groupsrv_connections gauge\ngroupsrv_connections %ld\n",
              atomic_load(&connections));
    sb_printf(&b, "# HELP groupsrv_token_up 1 when the token answers.\n"
                  "# TYPE groupsrv_token_up gauge\ngroupsrv_token_up %d\n"
                  "# HELP groupsrv_audit_up 1 when the audit log is writable.\n"
                  "# TYPE groupsrv_audit_up gauge\ngroupsrv_audit_up %d\n",
              t->token_up, t->audit_up);
    long long qb = atomic_load(&khq_bytes), qf = atomic_load(&khq_frames);
    sb_printf(&b,
              "# HELP groupsrv_keyholder_queue_bytes Bytes of requests held for the key holder, not yet taken by "
              "it.\n# TYPE groupsrv_keyholder_queue_bytes gauge\ngroupsrv_keyholder_queue_bytes %llu\n"
              "# HELP groupsrv_keyholder_queue_frames Requests held for the key holder, not yet written to it.\n"
              "# TYPE groupsrv_keyholder_queue_frames gauge\ngroupsrv_keyholder_queue_frames %llu\n"
              "# HELP groupsrv_keyholder_refused_total Requests answered 503 at once, not passed on to the key "
              "holder.\n# TYPE groupsrv_keyholder_refused_total counter\n"
              "groupsrv_keyholder_refused_total{reason=\"queue_full\"} %llu\n"
              "groupsrv_keyholder_refused_total{reason=\"stalled\"} %llu\n"
              "# HELP groupsrv_keyholder_unsent_total Requests that timed out before they were written to the key "
              "holder (never sent).\n# TYPE groupsrv_keyholder_unsent_total counter\n"
              "groupsrv_keyholder_unsent_total %llu\n",
              qb > 0 ? (unsigned long long)qb : 0, qf > 0 ? (unsigned long long)qf : 0,
              atomic_load(&khq_refused[0]), atomic_load(&khq_refused[1]), atomic_load(&khq_unsent));
    long long not_after = atomic_load(&tls_not_after);
    if (not_after != 0)
        sb_printf(&b,
                  "# HELP groupsrv_tls_certificate_not_after_seconds When the served TLS certificate expires (Unix "
                  "time).\n# TYPE groupsrv_tls_certificate_not_after_seconds gauge\n"
                  "groupsrv_tls_certificate_not_after_seconds %lld\n",
                  not_after);
    not_after = atomic_load(&ca_not_after);
    if (not_after != 0)
        sb_printf(&b,
                  "# HELP groupsrv_ca_certificate_not_after_seconds When the local CA certificate the server "
                  "uses expires (Unix time).\n# TYPE groupsrv_ca_certificate_not_after_seconds gauge\n"
                  "groupsrv_ca_certificate_not_after_seconds %lld\n",
                  not_after);
    if (b.bad) {
        free(b.p);
        return NULL;
    }
    return b.p;
}
