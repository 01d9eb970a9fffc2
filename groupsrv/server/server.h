/*
 * server.h: internals shared by the files of groupsrv/server/ (not a public
 * API). core.c runs the event-loop threads and offers the request helpers
 * below; api.c implements the endpoints; serve.c wires the process.
 *
 * Every request is handled to completion on the thread that read it: token
 * calls block that thread only (each thread borrows its own session from the
 * hsm pool), other threads keep serving. Every handler ends in exactly one
 * reply through srv_reply_* (the helpers refuse a second one).
 */
#ifndef GS_SRV_SERVER_H
#define GS_SRV_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>

#include "audit.h"
#include "ca.h"
#include "config.h"
#include "gcache.h"
#include "groups.h"
#include "hsm.h"
#include "metrics.h"
#include "ratelimit.h"
#include "store.h"
#include "tls.h"

struct srv_thread;
struct srv_pending;
struct srv_conn;
struct srv_linger;
struct srv_addr_table;

/* The two listeners, each with its own connection budget. */
enum srv_listener { SRV_API = 0, SRV_CERTSRV = 1 };

struct srv {
    const struct gs_config *cfg;
    hsm_ctx *hsm;
    gs_ca *ca;                /* NULL when `groupsrv ca init` has not run */
    audit_log *audit;
    ratelimit *rl;
    int listen_fd, certsrv_fd; /* certsrv_fd -1 when [certsrv] listen is absent */
    unsigned nthreads;
    struct srv_thread *threads;
    atomic_int shutting_down;
    atomic_int accepting;     /* threads whose listeners are enabled */
    size_t max_body;
    unsigned timeout;
    long max_conns;
    /* Admission (core.c): per listener, the connection budget, how many
     * of it connections without a trusted client certificate may use (the
     * rest is kept for members), and the counts now; connections without
     * a trusted client certificate per client address. */
    long budget[2], unauth_budget[2];
    atomic_long conns[2], unauth[2], over_budget[2];
    unsigned per_address, handshake_timeout, request_timeout;
    struct srv_addr_table *addrs;
    unsigned max_failures, suspend_seconds;
};

struct srv_thread {
    struct srv *srv;
    unsigned index;
    pthread_t tid;
    struct event_base *base;
    struct evhttp *http, *certhttp;
    struct evhttp_bound_socket *bound, *certbound;
    struct srv_listener_ctx {
        struct srv_thread *t;
        enum srv_listener which;
    } lctx[2];
    struct srv_conn *conn_head, *conn_tail; /* this thread's connections, oldest first */
    struct srv_linger *lingering;           /* closed connections still draining (core.c) */
    unsigned nlingering;
    gs_store *store;          /* this thread's SQLite connection */
    gcache *gcache;           /* loaded groups, reloaded when the database changes */
    struct event *shutdown_ev, *tick_ev, *drain_ev;
    /* Answers held until their audit records are durable, in the order
     * their records were written (so in sequence order); only this
     * thread touches the list. audit_ev is activated by the audit syncer
     * thread after each fdatasync round when npending > 0. */
    struct event *audit_ev;
    struct srv_pending *pending_head, *pending_tail;
    atomic_int npending;
    atomic_long nconns;
    int accept_paused;        /* this thread's listeners disabled (cap or balance) */
    double drain_deadline;
};

struct srv_req {
    struct srv_thread *t;
    struct srv *srv;
    struct evhttp_request *req;
    enum metrics_endpoint ep;
    int certsrv;              /* arrived on the certificate-server listener */
    char id[33];              /* request id, also sent as X-Request-Id */
    int replied;
    unsigned long long audit_first, audit_last; /* this request's audit records (0: none) */
    int peer_checked;
    peer_info peer;
    double start;
};

/* ---- replies (exactly one per request) ----
 * A request that wrote audit records (srv_audit, srv_audit_write) is
 * answered only once they are durable: the reply is queued and sent by the
 * thread's audit_ev, so the loop serves other connections meanwhile; if
 * the fdatasync fails the queued answer is wiped and replaced by 503
 * audit_unavailable. */
/* Sends body as JSON (steals the reference). */
void srv_reply_json(struct srv_req *r, int status, json_t *body);
/* {"error": {"code": code, "message": ...}}; 429/503 get Retry-After. */
void srv_reply_error(struct srv_req *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void srv_reply_retry(struct srv_req *r, int status, unsigned retry_after, const char *code, const char *msg);
void srv_reply_bytes(struct srv_req *r, int status, const char *content_type, const void *data, size_t len);

/* ---- input ---- */
/* The request body (NUL-terminated copy, caller frees); replies 413 and
 * returns -1 when over the cap. */
int srv_body(struct srv_req *r, char **body, size_t *len);
/* The body parsed as a JSON object; replies 400/413 and returns NULL otherwise. */
json_t *srv_json_body(struct srv_req *r);
/* Optional string member: NULL if absent; replies 400 and sets *bad when
 * present but not a string. */
const char *srv_json_str(struct srv_req *r, json_t *o, const char *key, int *bad);
/* Base64 member decoded with a cap on the decoded size; replies 400 (bad
 * type or base64) or 413 (too large) and returns -1. Absent: 0 with *out NULL. */
int srv_json_b64(struct srv_req *r, json_t *o, const char *key, size_t max, unsigned char **out, size_t *len);

/* ---- authentication and authorisation (every request; membership never cached) ---- */
const peer_info *srv_peer(struct srv_req *r);
/* Replies 401 for a missing/untrusted/expired certificate and returns -1. */
int srv_require_cert(struct srv_req *r);
/* The caller's rate-limit and suspension key into buf: "id:" and the
 * identity in ASCII lower case, or "membership:" and the group of an
 * anonymous membership certificate. Returns 0 (no key) for other callers. */
#define SRV_RL_KEY_MAX (sizeof("membership:") + sizeof(((peer_info *)0)->identity))
int srv_rl_key(const peer_info *p, char *buf, size_t len);
/* Rate limit by identity (or the membership certificate's group); replies
 * 429 and returns -1 when over. */
int srv_rate_limit(struct srv_req *r);
/* For /healthz: whether the token answers and still holds its objects
 * (*token) and the audit log can take another record (*audit, see
 * audit_check). Checked at most once a second for the whole process; every
 * probe in between gets that result (see core.c). */
void srv_health(struct srv *s, hsm_err *token, audit_err *audit);
/* A key request found the token unreachable or its objects missing: the
 * same check as srv_health (at most once a second), whose recovery
 * re-initialises the module while the objects stay missing, so service
 * comes back also when nobody probes /healthz. */
void srv_token_unavailable(struct srv *s);
/* Maps token and store errors to answers: 503 for an unreachable token or
 * database, 500 otherwise. */
void srv_reply_hsm_error(struct srv_req *r, hsm_err err, const char *what);
void srv_reply_gs_error(struct srv_req *r, gs_err err, const char *what);
/* Audit one record; on failure replies 503 (fail closed) and returns -1. */
int srv_audit(struct srv_req *r, const audit_record *rec);
/* Writes one record for this request (its request id filled in) without
 * replying; the request's answer then waits until it is durable. */
audit_err srv_audit_write(struct srv_req *r, const audit_record *rec);

double srv_now(void);

/* ---- endpoints (api.c, certsrv.c) ---- */
void api_route(struct srv_req *r);
void certsrv_route(struct srv_req *r);

/* ---- process (core.c) ---- */
/* The per-address counts of admission (see core.c). */
struct srv_addr_table *srv_addr_table_new(void);
void srv_addr_table_free(struct srv_addr_table *a);
int srv_threads_start(struct srv *s);
void srv_threads_stop(struct srv *s); /* graceful: stop accepting, drain, join */

#endif
