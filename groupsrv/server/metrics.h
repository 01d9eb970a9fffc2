/*
 * metrics.h: process-wide counters for GET /metrics (Prometheus text format
 * 0.0.4). Owned by groupsrv/server/. Lock-free (C11 atomics); callable from
 * any thread.
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

void metrics_request(enum metrics_endpoint ep, int status);
/* Latency of one token unwrap/rewrap, in seconds. */
void metrics_unwrap_latency(double seconds);
void metrics_token_error(void);
void metrics_connection(int delta);
long metrics_connections(void);

/* Renders everything; sessions_in_use < 0 leaves that gauge out. Returns a
 * malloc'd NUL-terminated string (caller frees) or NULL. */
char *metrics_render(long sessions_in_use, long sessions_idle, int token_up, int audit_up);

#endif
