/*
 * metrics.h: process-wide counters for GET /metrics (Prometheus text format
 * 0.0.4). Owned by groupsrv/server/. Lock-free (C11 atomics); callable from
 * any thread.
 *
 * Each process counts what it sees: the network process requests and
 * connections, the key holder token time and token errors. The key
 * holder's part reaches the network process's /metrics as a
 * metrics_token record (IPC_STATS, packed as little-endian u64 words).
 */
#ifndef GS_SRV_METRICS_H
#define GS_SRV_METRICS_H

#include <stddef.h>

enum metrics_endpoint {
    EP_OTHER = 0,
    EP_DISCOVERY,
    EP_CERTIFICATE,
    EP_UNWRAP,
    EP_UNWRAP_BATCH,
    EP_REWRAP,
    EP_SECRET_KEYS,
    EP_MEMBERS,
    EP_GROUPS,
    EP_MEMBERSHIP_CERT,
    EP_HEALTHZ,
    EP_METRICS,
    EP_COUNT
};

const char *metrics_endpoint_name(enum metrics_endpoint ep);

/* The network process's counters. */
void metrics_request(enum metrics_endpoint ep, int status);
void metrics_connection(int delta);
long metrics_connections(void);
/* The notAfter of the TLS certificate being served, in Unix seconds (0:
 * unknown, not rendered); set at start and at each reload taken up. */
void metrics_tls_not_after(long long unix_seconds);
/* The same for the local CA certificate the key holder loaded (0: none). */
void metrics_ca_not_after(long long unix_seconds);

/* What the links to the key holder hold (holder.c): the change in bytes
 * and frames held; a call refused at once (stalled: the key holder
 * answers nothing; else: the bound was reached); a call that timed out
 * before its frame was written (never sent). */
void metrics_khq_held(long long bytes_delta, long long frames_delta);
void metrics_khq_refused(int stalled);
void metrics_khq_unsent(void);

/* The key holder's counters. Latency of one token unwrap/rewrap, in seconds. */
void metrics_unwrap_latency(double seconds);
void metrics_token_error(void);

#define METRICS_LAT_BUCKETS 13
typedef struct metrics_token {
    long sessions_in_use;   /* < 0: unknown (the gauges are left out) */
    long sessions_idle;
    int token_up, audit_up;
    unsigned long token_errors;
    unsigned long lat_bucket[METRICS_LAT_BUCKETS];
    unsigned long lat_count, lat_sum_us;
} metrics_token;
#define METRICS_TOKEN_WORDS (5 + METRICS_LAT_BUCKETS + 2)

/* This process's token counters (the gauges are the caller's to set). */
void metrics_token_snapshot(metrics_token *out);
/* out holds METRICS_TOKEN_WORDS * 8 bytes. */
void metrics_token_pack(const metrics_token *t, unsigned char *out);
/* 0, or -1 when len is not METRICS_TOKEN_WORDS * 8. */
int metrics_token_unpack(const unsigned char *in, size_t len, metrics_token *out);

/* Renders this process's request counters with the key holder's token
 * counters (NULL: the key holder did not answer; token and audit down,
 * its counters and the session gauges left out).
 * Returns a malloc'd NUL-terminated string (caller frees) or NULL. */
char *metrics_render(const metrics_token *t);

#endif
