/*
 * server.h: internals shared by the files of the network process
 * (groupsrv-net; not a public API). core.c runs the event-loop threads,
 * routes requests through a table the handlers fill in (api.c, certsrv.c
 * register their routes; core.c knows none of them), and offers the reply,
 * input, authentication and key-holder helpers below; netmain.c wires the
 * process.
 *
 * The network process parses everything that comes from the network
 * (TLS, HTTP, JSON, base64, CMS, CSRs) and holds no key, no PIN, no token
 * and no database: whatever needs one of them is a call to the key holder
 * (holder.h), which answers later. A handler that calls it returns at once
 * and continues in its callback, so a loop never waits for the token.
 * Every request ends in exactly one reply through srv_reply_* (the helpers
 * refuse a second one).
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

#include "config.h"
#include "gview.h"
#include "holder.h"
#include "ipc.h"
#include "metrics.h"
#include "names.h"
#include "tls.h"

struct srv_thread;
struct srv_req;
struct srv_conn;
struct srv_linger;
struct srv_addr_table;

/* ---- routes ---- */
enum srv_listener { SRV_API = 1, SRV_CERTSRV = 2 };   /* bits, in a route */
enum srv_lindex { SRV_LI_API = 0, SRV_LI_CERTSRV = 1 }; /* index, for admission */
enum srv_method {
    SRV_GET = 1u << 0, SRV_POST = 1u << 1, SRV_PUT = 1u << 2, SRV_DELETE = 1u << 3,
    SRV_OTHER = 1u << 4, /* OPTIONS, PATCH: never named in an Allow */
    SRV_ANY = 0x1fu,     /* every method, OPTIONS and PATCH too */
};
#define SRV_MAX_PARAMS 2
#define SRV_SPKI_CACHE 8
typedef void (*srv_handler)(struct srv_req *r);
struct srv_route {
    unsigned listener;        /* enum srv_listener bits */
    unsigned methods;         /* enum srv_method bits; others get 405 with Allow */
    const char *pattern;      /* "/v1/groups/ * /unwrap": each '*' one segment, handed to the handler */
    enum metrics_endpoint ep;
    srv_handler handler;
};

struct srv {
    const struct gs_config *cfg;
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
    const struct srv_route *routes;
    size_t nroutes;
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
        enum srv_lindex which;
    } lctx[2];
    struct srv_conn *conn_head, *conn_tail; /* this thread's connections, oldest first */
    struct srv_linger *lingering;           /* closed connections still draining (core.c) */
    unsigned nlingering;
    khlink *link;             /* this thread's link to the key holder */
    gviews *views;            /* the group views it fetched */
    struct event *shutdown_ev, *tick_ev, *drain_ev, *relink_ev;
    struct event *resume_ev;  /* another thread asks it to accept again (core.c, wake_behind) */
    atomic_int new_link_fd;   /* handed over by the main thread (-1: none) */
    atomic_long nconns;
    long requests;            /* in flight on this thread (waiting for the key holder) */
    atomic_int accept_paused; /* this thread's listeners disabled (cap or balance); read by others */
    atomic_int resume_asked;  /* resume_ev is active and has not run yet */
    double drain_deadline;
    unsigned char reqid_pool[512]; /* random bytes for request ids (next_request_id in core.c) */
    size_t reqid_left;        /* bytes of reqid_pool not used yet, from its start */
    struct srv_spki {         /* recent peers' public keys, DER (peer_spki in core.c) */
        X509 *cert;           /* a reference of our own */
        unsigned char *der;
        int len;
    } spki[SRV_SPKI_CACHE];
    unsigned spki_next;
};

/* A request from its arrival to its reply; it outlives the handler while
 * calls to the key holder are in flight. */
struct srv_req {
    struct srv_thread *t;
    struct srv *srv;
    struct evhttp_request *req;
    enum metrics_endpoint ep;
    int certsrv;              /* arrived on the certificate-server listener */
    int head;                 /* a HEAD: handled as GET, answered without the body */
    char id[33];              /* request id, also sent as X-Request-Id (and audited) */
    int replied;
    int status;               /* the reply's HTTP status, once replied */
    unsigned calls;           /* calls to the key holder in flight */
    int peer_checked;
    peer_info peer;           /* its certificate is a reference of our own */
    double start;
    char param[SRV_MAX_PARAMS][257]; /* the path's '*' segments, percent-decoded */
    gview *view;              /* the group's view (a reference), when fetched */
    bool view_confirmed;      /* the key holder gave or confirmed it during this request */
    void *ctx;                /* the handler's state across calls */
    void (*ctx_free)(void *ctx);
};

/* ---- replies (exactly one per request) ---- */
/* Sends body as JSON (steals the reference). */
void srv_reply_json(struct srv_req *r, int status, json_t *body);
/* {"error": {"code": code, "message": ...}}; 429/503 get Retry-After. */
void srv_reply_error(struct srv_req *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void srv_reply_retry(struct srv_req *r, int status, unsigned retry_after, const char *code, const char *msg);
void srv_reply_bytes(struct srv_req *r, int status, const char *content_type, const void *data, size_t len);
/* The key holder's error answer (status, code, message, Retry-After). */
void srv_reply_holder_error(struct srv_req *r, const ipc_msg *answer);

/* An error decided before the reply: the authorisation comes first. */
typedef struct srv_err {
    int status;
    const char *code;
    char msg[256];
    unsigned retry;
} srv_err;
void srv_err_set(srv_err *e, int status, const char *code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* 400 bad_json for a body jansson refused (err), naming a key given twice
 * as such: RFC 8259 allows it, so "malformed" would send the caller
 * looking for a syntax error that is not there. */
void srv_err_json(srv_err *e, const json_error_t *err);
void srv_reply_err(struct srv_req *r, const srv_err *e);

/* The request's method, HEAD given as GET (RFC 9110 9.3.2: the same
 * answer without its body, which srv_reply_bytes leaves out). */
enum evhttp_cmd_type srv_command(const struct srv_req *r);

/* ---- input ---- */
/* The request body (NUL-terminated copy, caller frees); -1 with e set
 * (413) when over the cap. */
int srv_body(struct srv_req *r, char **body, size_t *len, srv_err *e);
/* The body parsed as a JSON object; NULL with e set (400/413) otherwise. */
json_t *srv_json_body(struct srv_req *r, srv_err *e);
/* Optional string member: NULL if absent; sets e (400) when present but
 * not a string. */
const char *srv_json_str(json_t *o, const char *key, srv_err *e);

/* ---- authentication (every request; membership is the key holder's) ---- */
const peer_info *srv_peer(struct srv_req *r);
/* Replies 401 for a missing/untrusted/expired certificate and returns -1. */
int srv_require_cert(struct srv_req *r);

/* ---- the key holder ---- */
/* A request frame for r, with its request id and, when r has a verified
 * certificate, who is calling (identity or membership group, public key). */
void srv_ipc_begin(struct srv_req *r, ipc_buf *b, uint32_t type);
typedef void (*srv_cont)(struct srv_req *r, const ipc_msg *answer);
/* Sends b and continues in cont with the answer; when the key holder
 * cannot answer, replies 503 token_unavailable instead of calling cont,
 * unless flags has SRV_CALL_DOWN_TOO: then cont gets NULL (also at once,
 * when the link is down). SRV_CALL_CHANGES: the request changes state (a
 * member added or removed, a group created): no [server] timeout, the
 * answer is the key holder's however long the change takes, and a link
 * lost after the request went out is answered as such (the change may
 * have been made). Returns -1 when the request was not sent (it has been
 * answered, or cont has run). */
enum { SRV_CALL_DOWN_TOO = 1, SRV_CALL_CHANGES = 2 };
int srv_call(struct srv_req *r, ipc_buf *b, srv_cont cont, unsigned flags);
/* Asks the key holder whether r's caller may do `action` (on r's group),
 * then answers e if so, or the refusal (audited there) if not: input
 * errors come after authorisation, as they always did. */
void srv_authz_then(struct srv_req *r, enum ipc_action action, const srv_err *e);
/* The view of r->param[0]'s group into r->view, then next(r): from this
 * thread's cache when current, else from the key holder (fresh: always
 * ask, with "not modified" when unchanged). Replies 404/503 itself. */
void srv_with_view(struct srv_req *r, bool fresh, void (*next)(struct srv_req *r));

/* A certificate as the key holder sends it (DER) in PEM text for an
 * answer, malloc'ed, *pem_len without the NUL; NULL if it does not parse
 * or on no memory (certsrv.c). */
char *srv_cert_der_to_pem(const unsigned char *der, size_t len, size_t *pem_len);

/* ---- routes of the handlers (api.c, certsrv.c) ---- */
extern const struct srv_route api_routes[];
extern const size_t api_nroutes;
extern const struct srv_route certsrv_routes[];
extern const size_t certsrv_nroutes;

/* ---- process (core.c) ---- */
/* The per-address counts of admission (see core.c). */
struct srv_addr_table *srv_addr_table_new(void);
void srv_addr_table_free(struct srv_addr_table *a);
/* Routes: every table given is searched in order; the first pattern that
 * matches the path decides (404 when none does). */
int srv_routes_set(struct srv *s, const struct srv_route *const *tables, const size_t *counts, size_t ntables);
/* Creates the threads' loops and links (link_fds[i] for thread i, taken
 * over) without running them. */
int srv_threads_init(struct srv *s, const int *link_fds);
/* Starts them; they wait at a gate until srv_threads_go (the sandbox is
 * installed in between, for every thread at once). */
int srv_threads_run(struct srv *s);
void srv_threads_go(void);
void srv_threads_stop(struct srv *s); /* graceful: stop accepting, drain, join */
/* Frees threads made by srv_threads_init that never ran. */
void srv_threads_free(struct srv *s);
/* A new link for thread i after the key holder restarted (fd taken over). */
void srv_thread_relink(struct srv *s, unsigned i, int fd);

#endif
