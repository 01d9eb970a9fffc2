/*
 * core.c: event-loop threads, TLS connections, request dispatch, reply and
 * input helpers, per-request authentication (see server.h).
 */
#include "server.h"

#include <limits.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <netinet/in.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <openssl/crypto.h>
#include <openssl/err.h>

#include "log.h"
#include "util.h"

double srv_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- connections --------------------------------------------------------- */


static void set_listeners(struct srv_thread *t, int enable)
{
    struct evhttp_bound_socket *b[2] = {t->bound, t->certbound};

    for (int i = 0; i < 2; i++) {
        if (b[i] == NULL)
            continue;
        struct evconnlistener *l = evhttp_bound_socket_get_listener(b[i]);
        if (enable)
            evconnlistener_enable(l);
        else
            evconnlistener_disable(l);
    }
}

static void pause_accept(struct srv_thread *t, int pause)
{
    if (pause == t->accept_paused)
        return;
    set_listeners(t, !pause);
    t->accept_paused = pause;
    atomic_fetch_add(&t->srv->accepting, pause ? -1 : 1);
}

/* Fewest connections held by any other thread (LONG_MAX if none). */
static long other_min_conns(const struct srv_thread *t)
{
    const struct srv *s = t->srv;
    long min = LONG_MAX;

    for (unsigned i = 0; i < s->nthreads; i++) {
        if (&s->threads[i] == t)
            continue;
        long n = atomic_load(&s->threads[i].nconns);
        if (n < min)
            min = n;
    }
    return min;
}

/* Threads share one listening socket and the first to wake accepts every
 * pending connection, so a client opening two connections at once often
 * gets both on one thread while the other idles: with blocking token calls
 * that halves throughput. A thread holding more connections than another
 * steps back from accepting, but never the last one accepting (a CAS on
 * the count), so new connections are never left waiting; the tick lets it
 * accept again once the others have caught up. */
static void balance_accept(struct srv_thread *t)
{
    int n = atomic_load(&t->srv->accepting);

    if (t->accept_paused || atomic_load(&t->nconns) <= other_min_conns(t))
        return;
    while (n > 1) {
        if (atomic_compare_exchange_weak(&t->srv->accepting, &n, n - 1)) {
            set_listeners(t, 0);
            t->accept_paused = 1;
            return;
        }
    }
}

/* Accept again if this thread stepped back and is no longer ahead. */
static void maybe_resume_accept(struct srv_thread *t)
{
    if (t->accept_paused && !atomic_load(&t->srv->shutting_down) && t->bound != NULL &&
        atomic_load(&t->nconns) <= other_min_conns(t))
        pause_accept(t, 0);
}

/* ---- admission ------------------------------------------------------------
 * An unauthenticated peer must not be able to lock members out (slowloris:
 * many connections that each trickle a request). Every connection has a
 * deadline for its TLS handshake ([server] handshake_timeout) and then for
 * its whole request, head and body ([server] request_timeout, counted again
 * from each answer on a kept-alive connection). Each listener has its own
 * budget. Connections that finished their handshake without a trusted
 * client certificate may use only part of it (the rest is kept for
 * members), and only [server] max_connections_per_address from one
 * address; one more closes the oldest such connection waiting for its
 * request, or itself. When a new connection finds its listener full, the
 * oldest connection of the same thread without a trusted certificate that
 * waits for its request, or else is stuck in its handshake for a second,
 * is closed to make room; if there is none (full of members and answers
 * under way), a few more (a sixteenth of the budget) are let in to be
 * answered 503 too_many_connections, and beyond those the new one is
 * closed at once: never a hang in the backlog.
 * Connections are closed with shutdown(2), so libevent frees them through
 * its own error path. */

enum conn_stage { CONN_HANDSHAKE, CONN_WAIT_REQUEST, CONN_IN_SERVICE, CONN_CLOSING };

struct srv_conn {
    struct srv_thread *t;
    struct srv_conn *prev, *next;
    enum srv_listener which;
    enum conn_stage stage;
    struct bufferevent *bev;
    struct event *deadline;
    int admitted;         /* admission has run (a timer due at once after accept;
                             the handshake may end before it runs) */
    int authenticated;    /* a trusted client certificate at the handshake */
    int unauth_counted;   /* finished its handshake without a trusted certificate:
                             counted in srv.unauth and the per-address table */
    int released;         /* no longer counted against the budgets (closing or freed) */
    double accepted;      /* srv_now() at accept */
    int linger_fd;        /* a duplicate of the socket for the lingering close, or -1 */
    int over_budget;      /* admitted past a full listener: its request gets 503 */
    struct evbuffer_cb_entry *input_cb; /* conn_input_cb on the bufferevent's input */
    struct sockaddr_storage addr;
    socklen_t addr_len;
};

/* Connections without a trusted client certificate per address, shared by
 * the threads (mutex). */
#define ADDR_BUCKETS 1024
struct addr_node {
    struct addr_node *next;
    unsigned char key[17]; /* family, then up to 16 address bytes */
    unsigned n;
};
struct srv_addr_table {
    pthread_mutex_t mu;
    struct addr_node *b[ADDR_BUCKETS];
};

static size_t addr_key(const struct sockaddr_storage *sa, unsigned char key[17])
{
    memset(key, 0, 17);
    key[0] = (unsigned char)sa->ss_family;
    if (sa->ss_family == AF_INET)
        memcpy(key + 1, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    else if (sa->ss_family == AF_INET6)
        memcpy(key + 1, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    return 17;
}

/* Adds delta to the count of addr; returns the new count (0 on no memory
 * for a new address: the caller then admits, as no count can be kept). */
static unsigned addr_count(struct srv_addr_table *a, const struct sockaddr_storage *sa, int delta)
{
    unsigned char key[17];
    unsigned h = 2166136261u, n = 0;

    addr_key(sa, key);
    for (size_t i = 0; i < sizeof(key); i++)
        h = (h ^ key[i]) * 16777619u;
    pthread_mutex_lock(&a->mu);
    struct addr_node **pp = &a->b[h % ADDR_BUCKETS];
    while (*pp != NULL && memcmp((*pp)->key, key, sizeof(key)) != 0)
        pp = &(*pp)->next;
    if (*pp == NULL && delta > 0 && (*pp = calloc(1, sizeof(**pp))) != NULL)
        memcpy((*pp)->key, key, sizeof(key));
    if (*pp != NULL) {
        (*pp)->n = delta < 0 && (*pp)->n == 0 ? 0 : (unsigned)((int)(*pp)->n + delta);
        n = (*pp)->n;
        if (n == 0) {
            struct addr_node *dead = *pp;
            *pp = dead->next;
            free(dead);
        }
    }
    pthread_mutex_unlock(&a->mu);
    return n;
}

struct srv_addr_table *srv_addr_table_new(void)
{
    struct srv_addr_table *a = calloc(1, sizeof(*a));
    if (a != NULL)
        pthread_mutex_init(&a->mu, NULL);
    return a;
}

void srv_addr_table_free(struct srv_addr_table *a)
{
    if (a == NULL)
        return;
    for (size_t i = 0; i < ADDR_BUCKETS; i++)
        for (struct addr_node *n = a->b[i], *next; n != NULL; n = next) {
            next = n->next;
            free(n);
        }
    pthread_mutex_destroy(&a->mu);
    free(a);
}

/* Stops counting the connection against its listener's budgets: when it
 * is being closed (libevent frees it a little later, and closing
 * connections must not make a listener look full) or freed. Once. */
static void conn_release(struct srv_conn *c)
{
    struct srv *s = c->t->srv;

    if (c->released)
        return;
    c->released = 1;
    if (c->unauth_counted) {
        atomic_fetch_sub(&s->unauth[c->which], 1);
        addr_count(s->addrs, &c->addr, -1);
        c->unauth_counted = 0;
    }
    atomic_fetch_sub(&s->conns[c->which], 1);
    if (c->over_budget)
        atomic_fetch_sub(&s->over_budget[c->which], 1);
}

/* Enters stage, with its deadline once admitted (until then the admission
 * timer stays due; it arms the deadline of the stage it finds). */
static void conn_arm(struct srv_conn *c, enum conn_stage stage)
{
    const struct srv *s = c->t->srv;
    struct timeval tv = {.tv_sec = stage == CONN_HANDSHAKE ? s->handshake_timeout : s->request_timeout};

    c->stage = stage;
    if (!c->admitted)
        return;
    if (stage == CONN_HANDSHAKE || stage == CONN_WAIT_REQUEST)
        event_add(c->deadline, &tv);
    else
        event_del(c->deadline);
}

/* The client's address, read once. 0 if known. */
static int conn_peer_addr(struct srv_conn *c)
{
    if (c->addr_len > 0)
        return 0;
    c->addr_len = sizeof(c->addr);
    if (getpeername(bufferevent_getfd(c->bev), (struct sockaddr *)&c->addr, &c->addr_len) != 0) {
        c->addr_len = 0;
        return -1;
    }
    return 0;
}

/* Closes the connection through libevent's own error path. */
static void conn_close(struct srv_conn *c, const char *why)
{
    evutil_socket_t fd = bufferevent_getfd(c->bev);

    if (c->stage == CONN_CLOSING)
        return;
    c->stage = CONN_CLOSING;
    conn_release(c);
    event_del(c->deadline);
    log_debug("connection closed reason=%s listener=%s", why, c->which == SRV_API ? "api" : "certsrv");
    if (fd >= 0)
        shutdown(fd, SHUT_RDWR);
}

/* A member's handshake takes milliseconds; one still under way after this
 * long is suspect, and may be closed to make room for a new connection. */
#define HANDSHAKE_EVICT_AGE 1.0

/* The connection to close to make room (other than self), on this thread
 * and listener: the oldest that finished its handshake without a trusted
 * certificate and is waiting for its request; else, when handshakes may be
 * taken too, the oldest still in its handshake after HANDSHAKE_EVICT_AGE;
 * NULL if none. Connections with a trusted certificate, those being
 * answered and young handshakes (a member's, most likely) are never
 * chosen. */
static struct srv_conn *conn_evictable(struct srv_thread *t, enum srv_listener which, const struct srv_conn *self,
                                       int handshakes_too)
{
    struct srv_conn *handshaking = NULL;
    double old_enough = srv_now() - HANDSHAKE_EVICT_AGE;

    for (struct srv_conn *c = t->conn_head; c != NULL; c = c->next) {
        if (c == self || c->which != which || c->authenticated)
            continue;
        if (c->stage == CONN_WAIT_REQUEST && c->unauth_counted)
            return c;
        if (handshakes_too && handshaking == NULL && c->stage == CONN_HANDSHAKE && c->accepted <= old_enough)
            handshaking = c;
    }
    return handshaking;
}

/* Request heads are capped here; bodies by evhttp (twice max_body). */
#define HEADERS_MAX 16384

/* What a connection may have received and not yet handed to evhttp.
 * evhttp takes the head and body out of the bufferevent's input as they
 * come, so the input holds little, except while an answer is written: then
 * libevent keeps reading (to notice a close) and keeps what comes, without
 * bound. A client that sends requests and never reads the answers would
 * fill the server's memory that way. One whole request of the largest
 * size plus a TLS record may wait; a client further ahead is closed. (A
 * read high-water mark would push back instead, but libevent 2.1's TLS
 * bufferevent can then leave the rest of a record inside OpenSSL and never
 * read it: libevent issue 854, fixed only in 2.2.) */
static size_t conn_input_max(const struct srv *s)
{
    return HEADERS_MAX + s->max_body * 2 + 4096 + 16384;
}

static void conn_input_cb(struct evbuffer *in, const struct evbuffer_cb_info *info, void *arg)
{
    struct srv_conn *c = arg;

    if (info->n_added > 0 && evbuffer_get_length(in) > conn_input_max(c->t->srv))
        conn_close(c, "input_beyond_request");
}

/* ---- lingering close --------------------------------------------------------
 * libevent closes a connection as soon as its answer is written, also when
 * it refused a request before reading all of it (a body far over the cap
 * gets libevent's 413 at once). The client may still be sending, and Linux
 * answers unread data on a closed socket with a reset, which can destroy
 * the answer before the client has read it. So each connection keeps a
 * duplicate of its socket: once libevent has closed its own, the duplicate
 * sends the FIN (shutdown SHUT_WR), then reads and drops what still comes
 * until the client closes, LINGER_SECONDS pass or LINGER_BYTES were
 * dropped (nginx's lingering_close). A client that sends nothing more sees
 * the answer and the FIN at once. Bounded per thread; not at shutdown. */
#define LINGER_SECONDS 2
#define LINGER_BYTES (1024 * 1024)
#define LINGER_MAX_PER_THREAD 1024

struct srv_linger {
    struct srv_linger *prev, *next;
    struct srv_thread *t;
    struct event *ev;
    int fd;
    size_t dropped;
};

static void linger_end(struct srv_linger *l)
{
    struct srv_thread *t = l->t;

    if (l->prev != NULL)
        l->prev->next = l->next;
    else
        t->lingering = l->next;
    if (l->next != NULL)
        l->next->prev = l->prev;
    t->nlingering--;
    event_free(l->ev);
    close(l->fd);
    free(l);
}

static void linger_cb(evutil_socket_t fd, short what, void *arg)
{
    struct srv_linger *l = arg;
    char buf[16384];

    if (what & EV_TIMEOUT) {
        linger_end(l);
        return;
    }
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n > 0 && (l->dropped += (size_t)n) < LINGER_BYTES)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return; /* more may come: wait for it (the timeout still runs) */
        linger_end(l); /* the client closed, an error, or enough dropped */
        return;
    }
}

/* Takes over fd, a duplicate of the socket of a connection libevent closed. */
static void linger_start(struct srv_thread *t, int fd)
{
    struct srv_linger *l = NULL;
    struct timeval tv = {LINGER_SECONDS, 0};

    if (atomic_load(&t->srv->shutting_down) || t->nlingering >= LINGER_MAX_PER_THREAD ||
        shutdown(fd, SHUT_WR) != 0 || evutil_make_socket_nonblocking(fd) != 0 ||
        (l = calloc(1, sizeof(*l))) == NULL ||
        (l->ev = event_new(t->base, fd, EV_READ | EV_PERSIST, linger_cb, l)) == NULL ||
        event_add(l->ev, &tv) != 0) {
        if (l != NULL && l->ev != NULL)
            event_free(l->ev);
        free(l);
        close(fd);
        return;
    }
    l->t = t;
    l->fd = fd;
    l->next = t->lingering;
    if (t->lingering != NULL)
        t->lingering->prev = l;
    t->lingering = l;
    t->nlingering++;
}

static void linger_free_all(struct srv_thread *t)
{
    while (t->lingering != NULL)
        linger_end(t->lingering);
}

/* Runs right after accept (the socket is set by then) and at each deadline. */
static void conn_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct srv_conn *c = arg;
    struct srv *s = c->t->srv;
    (void)fd; (void)what;

    if (!c->admitted && c->stage != CONN_CLOSING) {
        if (conn_peer_addr(c) != 0) {
            conn_close(c, "no_peer_address");
            return;
        }
        c->linger_fd = fcntl(bufferevent_getfd(c->bev), F_DUPFD_CLOEXEC, 0); /* -1: closed plainly */
        if (atomic_load(&s->conns[c->which]) > s->budget[c->which]) {
            struct srv_conn *old = conn_evictable(c->t, c->which, c, 1);
            if (old != NULL) {
                conn_close(old, "evicted_for_new_connection");
            } else if (atomic_fetch_add(&s->over_budget[c->which], 1) < s->budget[c->which] / 16 + 1) {
                /* Full of members and answers under way: a few more may
                 * come in to be told so (503 too_many_connections). */
                c->over_budget = 1;
            } else {
                atomic_fetch_sub(&s->over_budget[c->which], 1);
                conn_close(c, "listener_full");
                return;
            }
        }
        c->admitted = 1;
        conn_arm(c, c->stage);
        return;
    }
    switch (c->stage) {
    case CONN_HANDSHAKE:
        conn_close(c, "handshake_timeout");
        return;
    case CONN_WAIT_REQUEST:
        conn_close(c, "request_timeout");
        return;
    case CONN_IN_SERVICE:
    case CONN_CLOSING:
        return;
    }
}

/* OpenSSL's info callback: at the end of the handshake the request
 * deadline starts, and a trusted client certificate moves the connection
 * into the members' share (the verification is remembered for its first
 * request, so it is not repeated). */
static void conn_info_cb(const SSL *ssl, int where, int ret)
{
    struct srv_conn *c = SSL_get_ex_data(ssl, tls_conn_index());
    (void)ret;

    if (c == NULL || !(where & SSL_CB_HANDSHAKE_DONE) || c->stage != CONN_HANDSHAKE)
        return;
    struct srv *s = c->t->srv;
    tls_state *tls = tls_current_get();
    peer_info info;
    if (tls != NULL) {
        tls_peer_check(tls, (SSL *)ssl, &info);
        c->authenticated = info.status == PEER_MEMBER_CERT || info.status == PEER_MEMBERSHIP;
    }
    tls_state_unref(tls);
    /* Without a trusted certificate it takes a place in the listener's
     * unauthenticated share and in its address's count from here on.
     * Handshakes under way are not counted there, so members opening many
     * connections at once from one address (or through one proxy) are
     * never refused before they could show their certificate. */
    if (!c->authenticated) {
        if (conn_peer_addr(c) != 0) {
            conn_close(c, "no_peer_address");
            return;
        }
        c->unauth_counted = 1;
        atomic_fetch_add(&s->unauth[c->which], 1);
        if (addr_count(s->addrs, &c->addr, 1) > s->per_address) {
            conn_close(c, "per_address_limit");
            return;
        }
        if (atomic_load(&s->unauth[c->which]) > s->unauth_budget[c->which]) {
            struct srv_conn *old = conn_evictable(c->t, c->which, c, 0);
            if (old == NULL) {
                conn_close(c, "unauthenticated_share_full");
                return;
            }
            conn_close(old, "evicted_for_new_connection");
        }
    }
    conn_arm(c, CONN_WAIT_REQUEST);
}

static struct srv_conn *req_conn(struct evhttp_request *req)
{
    struct evhttp_connection *ec = req ? evhttp_request_get_connection(req) : NULL;
    struct bufferevent *bev = ec ? evhttp_connection_get_bufferevent(ec) : NULL;
    SSL *ssl = bev ? bufferevent_openssl_get_ssl(bev) : NULL;

    return ssl ? SSL_get_ex_data(ssl, tls_conn_index()) : NULL;
}

/* The whole request is in: no deadline while it is being answered.
 * Returns 1 if the connection was admitted past a full listener. */
static int conn_in_service(struct evhttp_request *req)
{
    struct srv_conn *c = req_conn(req);

    if (c != NULL && c->stage == CONN_WAIT_REQUEST)
        conn_arm(c, CONN_IN_SERVICE);
    return c != NULL && c->over_budget;
}

/* Answered: the next request on the connection has its own deadline. */
static void conn_answered(struct evhttp_request *req)
{
    struct srv_conn *c = req_conn(req);

    if (c != NULL && c->stage == CONN_IN_SERVICE)
        conn_arm(c, CONN_WAIT_REQUEST);
}

/* Runs when OpenSSL frees a connection's SSL (the bufferevent owns it), on
 * the connection's own thread: a thread that stepped back from accepting
 * takes new connections again as soon as it is no longer ahead, not at the
 * next tick (a client's connections opened meanwhile would all land on
 * the other threads). */
static void conn_freed(void *arg)
{
    struct srv_conn *c = arg;
    struct srv_thread *t = c->t;

    conn_release(c);
    /* OpenSSL frees the SSL in the bufferevent's destructor, before the
     * bufferevent's buffers: no callback may find c after this. */
    if (c->input_cb != NULL)
        evbuffer_remove_cb_entry(bufferevent_get_input(c->bev), c->input_cb);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        t->conn_head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    else
        t->conn_tail = c->prev;
    event_free(c->deadline);
    if (c->linger_fd >= 0)
        linger_start(t, c->linger_fd);
    free(c);
    atomic_fetch_sub(&t->nconns, 1);
    metrics_connection(-1);
    maybe_resume_accept(t);
}

/* evhttp asks for a bufferevent per accepted connection: a TLS one with a
 * fresh SSL from the current (reloadable) context, and the connection's
 * admission state in the SSL's ex_data. */
static struct bufferevent *make_bev(struct event_base *base, void *arg)
{
    struct srv_listener_ctx *lc = arg;
    struct srv_thread *t = lc->t;
    tls_state *tls = tls_current_get();
    SSL *ssl = NULL;
    struct bufferevent *bev = NULL;
    struct srv_conn *c = NULL;

    if (tls == NULL || (ssl = SSL_new(tls_state_ctx(tls))) == NULL) {
        tls_state_unref(tls);
        log_error("SSL_new failed");
        return NULL;
    }
    tls_state_unref(tls); /* the SSL holds its own SSL_CTX reference */
    if ((c = calloc(1, sizeof(*c))) == NULL ||
        (c->deadline = evtimer_new(base, conn_deadline_cb, c)) == NULL) {
        free(c);
        SSL_free(ssl);
        log_error("out of memory for a connection");
        return NULL;
    }
    c->t = t;
    c->which = lc->which;
    c->stage = CONN_HANDSHAKE;
    c->linger_fd = -1;
    SSL_set_ex_data(ssl, tls_conn_index(), c);
    SSL_set_info_callback(ssl, conn_info_cb);
    atomic_fetch_add(&t->nconns, 1);
    atomic_fetch_add(&t->srv->conns[c->which], 1);
    c->accepted = srv_now();
    metrics_connection(1);
    c->prev = t->conn_tail;
    if (t->conn_tail != NULL)
        t->conn_tail->next = c;
    else
        t->conn_head = c;
    t->conn_tail = c;
    bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        SSL_free(ssl); /* conn_freed undoes the counts */
        return NULL;
    }
    c->bev = bev;
    /* Without it (no memory) the connection is still served, uncapped. */
    if ((c->input_cb = evbuffer_add_cb(bufferevent_get_input(bev), conn_input_cb, c)) == NULL)
        log_error("out of memory for a connection's input cap");
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    /* Admission runs once evhttp has given the bufferevent its socket. */
    struct timeval now = {0, 0};
    event_add(c->deadline, &now);
    balance_accept(t);
    return bev;
}

/* accept(2) failed for want of descriptors (EMFILE, ENFILE) or memory.
 * libevent's listener would log it and try again at once, as the pending
 * connection keeps the socket readable: a busy loop writing a warning each
 * time (740,000 lines in 3 s measured). The listener rests instead; the
 * tick enables it again within a quarter of a second, and connections wait
 * in the backlog meanwhile. Logged at most once every 10 s. */
static void accept_error_cb(struct evconnlistener *lev, void *arg)
{
    static atomic_long last_logged;
    int err = EVUTIL_SOCKET_ERROR();
    long now = (long)srv_now(), last = atomic_load(&last_logged);
    (void)arg;

    evconnlistener_disable(lev);
    if (now - last >= 10 && atomic_compare_exchange_strong(&last_logged, &last, now))
        log_warn("cannot accept connections: accepts paused for a moment (out of descriptors? see LimitNOFILE) "
                 "err=\"%s\"", evutil_socket_error_to_string(err));
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct srv_thread *t = arg;
    (void)fd; (void)what;
    maybe_resume_accept(t);
    /* Listeners rested by accept_error_cb (enabling an enabled one is a no-op). */
    if (!t->accept_paused && !atomic_load(&t->srv->shutting_down))
        set_listeners(t, 1);
}

/* ---- replies ------------------------------------------------------------- */

static void add_common_headers(struct srv_req *r, const char *content_type)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);

    evhttp_add_header(h, "Content-Type", content_type);
    evhttp_add_header(h, "X-Request-Id", r->id);
    evhttp_add_header(h, "Cache-Control", "no-store");
    evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
    if (atomic_load(&r->srv->shutting_down))
        evhttp_add_header(h, "Connection", "close");
}

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    }
    return "Status";
}

/* An answer held until its audit records are durable (see server.h). */
struct srv_pending {
    struct srv_pending *next;
    struct evhttp_request *req;
    unsigned long long first, last; /* its audit records */
    int status;
    enum metrics_endpoint ep;
    unsigned char *body; /* may hold a plain content key: wiped when freed */
    size_t len;
};

/* libevent calls this when the bytes have been handed to TLS (or the
 * connection is gone): answers may carry a plain content key. */
static void wipe_body_cb(const void *data, size_t len, void *extra)
{
    (void)extra;
    OPENSSL_cleanse((void *)data, len);
    free((void *)data);
}

static void wipe_free(unsigned char *body, size_t len)
{
    if (body != NULL)
        OPENSSL_cleanse(body, len);
    free(body);
}

/* Sends body (owned; wiped after use) now. */
static void send_now(struct evhttp_request *req, enum metrics_endpoint ep, int status, unsigned char *body,
                     size_t len)
{
    struct evbuffer *buf = evbuffer_new();

    if (buf == NULL || (len > 0 && evbuffer_add_reference(buf, body, len, wipe_body_cb, NULL) != 0)) {
        wipe_free(body, len);
        evbuffer_free(buf);
        evhttp_send_error(req, 500, NULL);
        metrics_request(ep, 500);
        return;
    }
    if (len == 0)
        free(body);
    conn_answered(req);
    evhttp_send_reply(req, status, reason(status), buf);
    evbuffer_free(buf);
    metrics_request(ep, status);
}

/* The answer was not audited durably: drop it (wiped) and fail closed. */
static void send_audit_failure(struct evhttp_request *req, enum metrics_endpoint ep, unsigned char *body,
                               size_t len)
{
    static const char msg[] = "{\"error\":{\"code\":\"audit_unavailable\",\"message\":"
                              "\"the audit log cannot be written; refusing to answer\"}}\n";
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    unsigned char *copy = malloc(sizeof(msg) - 1);

    wipe_free(body, len);
    log_error("answer dropped: its audit record is not durable");
    evhttp_remove_header(h, "Retry-After");
    evhttp_add_header(h, "Retry-After", "5");
    evhttp_remove_header(h, "Content-Type"); /* the held answer's may not be JSON */
    evhttp_add_header(h, "Content-Type", "application/json");
    if (copy == NULL) {
        evhttp_send_error(req, 503, NULL);
        metrics_request(ep, 503);
        return;
    }
    memcpy(copy, msg, sizeof(msg) - 1);
    send_now(req, ep, 503, copy, sizeof(msg) - 1);
}

/* Sends every held answer whose records are now known durable (or failed). */
static void flush_pending(struct srv_thread *t)
{
    struct srv_pending *p;

    while ((p = t->pending_head) != NULL) {
        int st = audit_range_state(t->srv->audit, p->first, p->last);
        if (st == 0)
            break;
        t->pending_head = p->next;
        if (t->pending_head == NULL)
            t->pending_tail = NULL;
        atomic_fetch_sub(&t->npending, 1);
        /* Held across the start of a shutdown: tell the client, as
         * add_common_headers does for answers sent at once. */
        struct evkeyvalq *h = evhttp_request_get_output_headers(p->req);
        if (atomic_load(&t->srv->shutting_down) && evhttp_find_header(h, "Connection") == NULL)
            evhttp_add_header(h, "Connection", "close");
        if (st > 0)
            send_now(p->req, p->ep, p->status, p->body, p->len);
        else
            send_audit_failure(p->req, p->ep, p->body, p->len);
        free(p);
    }
}

static void audit_done_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    flush_pending(arg);
}

/* Called by the audit syncer thread after every fdatasync round. */
static void audit_durable(void *arg)
{
    struct srv *s = arg;

    for (unsigned i = 0; i < s->nthreads; i++)
        if (atomic_load(&s->threads[i].npending) > 0)
            event_active(s->threads[i].audit_ev, 0, 0);
}

/* Queues the answer until r's audit records are durable. */
static void hold_until_audited(struct srv_req *r, int status, unsigned char *body, size_t len)
{
    struct srv_thread *t = r->t;
    struct srv_pending *p = calloc(1, sizeof(*p));

    if (p == NULL) {
        /* No memory to wait without blocking: wait here instead. */
        if (audit_wait_durable(r->srv->audit, r->audit_first, r->audit_last) == AUDIT_OK)
            send_now(r->req, r->ep, status, body, len);
        else
            send_audit_failure(r->req, r->ep, body, len);
        return;
    }
    *p = (struct srv_pending){.req = r->req, .first = r->audit_first, .last = r->audit_last, .status = status,
                              .ep = r->ep, .body = body, .len = len};
    if (t->pending_tail != NULL)
        t->pending_tail->next = p;
    else
        t->pending_head = p;
    t->pending_tail = p;
    atomic_fetch_add(&t->npending, 1);
    /* The round covering it may have ended before npending was raised,
     * and then the syncer did not wake us: look once more. */
    if (audit_range_state(r->srv->audit, r->audit_first, r->audit_last) != 0)
        event_active(t->audit_ev, 0, 0);
}

void srv_reply_bytes(struct srv_req *r, int status, const char *content_type, const void *data, size_t len)
{
    unsigned char *body = NULL;

    if (r->replied) {
        log_error("second reply suppressed status=%d", status);
        return;
    }
    r->replied = 1;
    add_common_headers(r, content_type);
    /* Our own copy, wiped when libevent is done with it. */
    if ((body = malloc(len > 0 ? len : 1)) == NULL) {
        evhttp_send_error(r->req, 500, NULL);
        metrics_request(r->ep, 500);
        return;
    }
    if (len > 0)
        memcpy(body, data, len);
    if (r->audit_last != 0) {
        int st = audit_range_state(r->srv->audit, r->audit_first, r->audit_last);
        if (st == 0 && r->t->audit_ev != NULL) {
            hold_until_audited(r, status, body, len);
            return;
        }
        if (st == 0)
            st = audit_wait_durable(r->srv->audit, r->audit_first, r->audit_last) == AUDIT_OK ? 1 : -1;
        if (st < 0) {
            send_audit_failure(r->req, r->ep, body, len);
            return;
        }
    }
    send_now(r->req, r->ep, status, body, len);
}

void srv_reply_json(struct srv_req *r, int status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;

    json_decref(body);
    if (text == NULL) {
        static const char oom[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}\n";
        srv_reply_bytes(r, 500, "application/json", oom, sizeof(oom) - 1);
        return;
    }
    size_t n = strlen(text);
    text[n] = '\n'; /* replaces the NUL: a trailing newline is friendlier to curl users */
    srv_reply_bytes(r, status, "application/json", text, n + 1);
    OPENSSL_cleanse(text, n + 1);
    free(text);
}

static void reply_error_v(struct srv_req *r, int status, const char *code, const char *fmt, va_list ap)
{
    char msg[512];

    vsnprintf(msg, sizeof(msg), fmt, ap);
    json_t *o = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
    srv_reply_json(r, status, o);
}

void srv_reply_error(struct srv_req *r, int status, const char *code, const char *fmt, ...)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);
    va_list ap;

    /* Every 429 and 503 tells the client when to come back, also on paths
     * that did not go through srv_reply_retry. */
    if ((status == 429 || status == 503) && !r->replied && evhttp_find_header(h, "Retry-After") == NULL)
        evhttp_add_header(h, "Retry-After", "5");
    va_start(ap, fmt);
    reply_error_v(r, status, code, fmt, ap);
    va_end(ap);
}

void srv_reply_retry(struct srv_req *r, int status, unsigned retry_after, const char *code, const char *msg)
{
    char v[16];

    snprintf(v, sizeof(v), "%u", retry_after ? retry_after : 1);
    evhttp_add_header(evhttp_request_get_output_headers(r->req), "Retry-After", v);
    srv_reply_error(r, status, code, "%s", msg);
}

/* ---- input --------------------------------------------------------------- */

int srv_body(struct srv_req *r, char **body, size_t *len)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(r->req);
    size_t n = evbuffer_get_length(in);
    char *p;

    *body = NULL;
    *len = 0;
    if (n > r->srv->max_body) {
        srv_reply_error(r, 413, "too_large", "request body of %zu bytes exceeds the limit of %zu", n,
                        r->srv->max_body);
        return -1;
    }
    if ((p = malloc(n + 1)) == NULL) {
        srv_reply_error(r, 500, "internal", "out of memory");
        return -1;
    }
    if (n > 0 && evbuffer_remove(in, p, n) != (int)n) {
        free(p);
        srv_reply_error(r, 500, "internal", "could not read the body");
        return -1;
    }
    p[n] = '\0';
    *body = p;
    *len = n;
    return 0;
}

json_t *srv_json_body(struct srv_req *r)
{
    char *body = NULL;
    size_t len = 0;
    json_error_t err;
    json_t *o = NULL;

    if (srv_body(r, &body, &len) != 0)
        return NULL;
    if (len == 0) {
        srv_reply_error(r, 400, "bad_request", "a JSON object body is required");
        goto out;
    }
    /* Depth and size are bounded by the body cap; reject NULs and duplicate keys. */
    o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
    if (o == NULL) {
        char where[64];
        snprintf(where, sizeof(where), "line %d column %d", err.line, err.column);
        srv_reply_error(r, 400, "bad_json", "malformed JSON at %s", where);
        goto out;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        o = NULL;
        srv_reply_error(r, 400, "bad_json", "the body must be a JSON object");
    }
out:
    free(body);
    return o;
}

const char *srv_json_str(struct srv_req *r, json_t *o, const char *key, int *bad)
{
    json_t *v = json_object_get(o, key);

    if (v == NULL)
        return NULL;
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v)) {
        *bad = 1;
        srv_reply_error(r, 400, "bad_request", "\"%s\" must be a string", key);
        return NULL;
    }
    return json_string_value(v);
}

int srv_json_b64(struct srv_req *r, json_t *o, const char *key, size_t max, unsigned char **out, size_t *len)
{
    json_t *v = json_object_get(o, key);
    size_t max_in;

    *out = NULL;
    *len = 0;
    if (v == NULL)
        return 0;
    if (!json_is_string(v)) {
        srv_reply_error(r, 400, "bad_request", "\"%s\" must be a base64 string", key);
        return -1;
    }
    max_in = (max + 2) / 3 * 4;
    int rc = util_b64_decode(json_string_value(v), json_string_length(v), max_in, out, len);
    if (rc == UTIL_E_TOOBIG || (rc == UTIL_OK && *len > max)) {
        free(*out);
        *out = NULL;
        srv_reply_error(r, 413, "too_large", "\"%s\" exceeds %zu bytes", key, max);
        return -1;
    }
    if (rc != UTIL_OK || *len == 0) {
        free(*out);
        *out = NULL;
        srv_reply_error(r, 400, "bad_base64", "\"%s\" is not valid standard base64", key);
        return -1;
    }
    return 0;
}

/* ---- authentication ------------------------------------------------------ */

const peer_info *srv_peer(struct srv_req *r)
{
    if (!r->peer_checked) {
        struct evhttp_connection *c = evhttp_request_get_connection(r->req);
        struct bufferevent *bev = c ? evhttp_connection_get_bufferevent(c) : NULL;
        SSL *ssl = bev ? bufferevent_openssl_get_ssl(bev) : NULL;
        tls_state *tls = tls_current_get();
        if (tls != NULL)
            tls_peer_check(tls, ssl, &r->peer);
        else
            memset(&r->peer, 0, sizeof(r->peer));
        tls_state_unref(tls);
        r->peer_checked = 1;
    }
    return &r->peer;
}

int srv_require_cert(struct srv_req *r)
{
    const peer_info *p = srv_peer(r);

    switch (p->status) {
    case PEER_MEMBER_CERT:
    case PEER_MEMBERSHIP:
        return 0;
    case PEER_NONE:
        srv_reply_error(r, 401, "no_client_certificate", "a client certificate is required");
        return -1;
    case PEER_EXPIRED:
        srv_reply_error(r, 401, "certificate_expired", "the client certificate is expired or not yet valid");
        return -1;
    case PEER_NO_IDENTITY:
        srv_reply_error(r, 401, "no_identity", "the client certificate names no email address or CN");
        return -1;
    case PEER_UNTRUSTED:
        break;
    }
    srv_reply_error(r, 401, "untrusted_certificate", "the client certificate is not trusted");
    return -1;
}

int srv_rl_key(const peer_info *p, char *buf, size_t len)
{
    int n;

    if (p->status == PEER_MEMBER_CERT)
        n = snprintf(buf, len, "id:%s", p->identity);
    else if (p->status == PEER_MEMBERSHIP)
        n = snprintf(buf, len, "membership:%s", p->group); /* anonymous: one bucket per group */
    else
        return 0;
    if (n < 0 || (size_t)n >= len)
        return 0;
    /* Membership compares e-mail addresses without ASCII case (SQLite
     * NOCASE): ALICE@ and alice@ are one member, so one bucket. */
    for (char *c = buf; *c != '\0'; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c - 'A' + 'a');
    return 1;
}

int srv_rate_limit(struct srv_req *r)
{
    const peer_info *p = srv_peer(r);
    char key[SRV_RL_KEY_MAX];
    unsigned retry = 0;

    if (!srv_rl_key(p, key, sizeof(key)))
        return 0;
    rl_verdict v = ratelimit_take(r->srv->rl, key, &retry);
    if (v == RL_LIMITED) {
        srv_reply_retry(r, 429, retry, "rate_limited", "too many requests; slow down");
        return -1;
    }
    if (v == RL_SUSPENDED) {
        srv_reply_retry(r, 429, retry, "suspended", "suspended after too many failed unwraps");
        return -1;
    }
    return 0;
}

/* The token answers and still holds its objects. */
static hsm_err token_check(struct srv *s)
{
    hsm_key_info ki;
    hsm_err he = hsm_ping(s->hsm);

    if (he != HSM_OK || s->ca == NULL)
        return he;
    return hsm_key_get_info(s->hsm, gs_ca_key(s->ca), &ki);
}

#define OBJECTS_REINIT_MAX 30.0 /* seconds between re-initialisations while objects stay missing */
static pthread_mutex_t objects_mu = PTHREAD_MUTEX_INITIALIZER;
static double objects_reinit_at, objects_reinit_gap; /* next allowed; the gap after it */

/* A token whose objects vanished (a SoftHSM token directory moved away)
 * answers a ping but fails every key request; the local CA's private key
 * stands for the objects (group keys are made beside it). Without a CA
 * only the ping. SoftHSM finds objects that come back only when the module
 * is initialised again, so while the CA key is missing the module is
 * initialised again and the check repeated: at once, then after 1, 2, 4
 * ... at most 30 seconds while they stay missing (each one makes every
 * operation wait a moment, and the logins start over). */
static hsm_err token_health(struct srv *s)
{
    hsm_err he = token_check(s);
    double now = srv_now();
    int reinit;

    pthread_mutex_lock(&objects_mu);
    if (he == HSM_OK)
        objects_reinit_at = objects_reinit_gap = 0;
    reinit = he == HSM_ERR_KEY_NOT_FOUND && now >= objects_reinit_at;
    if (reinit) {
        objects_reinit_at = now + objects_reinit_gap;
        objects_reinit_gap = objects_reinit_gap < 1 ? 1 : objects_reinit_gap * 2;
        if (objects_reinit_gap > OBJECTS_REINIT_MAX)
            objects_reinit_gap = OBJECTS_REINIT_MAX;
    }
    pthread_mutex_unlock(&objects_mu);
    if (reinit && hsm_module_reinit(s->hsm) == HSM_OK)
        he = token_check(s);
    return he;
}

/* /healthz needs no certificate and load balancers probe it often, while a
 * check costs about 26 token calls (the CA key's lookup) and an audit room
 * check under the audit log's lock (on a file system without fallocate a
 * write and an fdatasync). One check serves every probe of the process for
 * HEALTH_TTL seconds, so probes cannot load the token or the audit disk;
 * while one runs, the others answer the last result instead of queueing on
 * the token, unless it is older than HEALTH_STALE (a check that hangs must
 * not hide a hung token behind an old "ok"). */
#define HEALTH_TTL 1.0
#define HEALTH_STALE 5.0
static pthread_mutex_t health_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    int valid, running;
    double at; /* srv_now() when the last check ended */
    hsm_err token;
    audit_err audit;
} health;

void srv_health(struct srv *s, hsm_err *token, audit_err *audit)
{
    double now = srv_now();
    int check;

    pthread_mutex_lock(&health_mu);
    check = !health.valid || (now - health.at >= HEALTH_TTL && (!health.running || now - health.at >= HEALTH_STALE));
    if (check)
        health.running = 1;
    *token = health.token;
    *audit = health.audit;
    pthread_mutex_unlock(&health_mu);
    if (!check)
        return;
    *token = token_health(s);
    *audit = audit_check(s->audit);
    pthread_mutex_lock(&health_mu);
    health.valid = 1;
    health.running = 0;
    health.at = srv_now();
    health.token = *token;
    health.audit = *audit;
    pthread_mutex_unlock(&health_mu);
}

static int hsm_err_is_unavailable(hsm_err err)
{
    switch (err) {
    case HSM_ERR_TOKEN_ABSENT:
    case HSM_ERR_TOKEN_NOT_FOUND:
    case HSM_ERR_NOT_LOGGED_IN:
    case HSM_ERR_SESSION:
    case HSM_ERR_DEVICE:
    case HSM_ERR_MODULE:
    case HSM_ERR_PIN_INCORRECT:
    case HSM_ERR_PIN_LOCKED:
    case HSM_ERR_PIN_SOURCE:
    case HSM_ERR_PKCS11:
    case HSM_ERR_NOMEM:
        return 1;
    default:
        return 0;
    }
}

void srv_token_unavailable(struct srv *s)
{
    hsm_err he;
    audit_err ae;

    srv_health(s, &he, &ae);
}

void srv_reply_hsm_error(struct srv_req *r, hsm_err err, const char *what)
{
    metrics_token_error();
    gcache_mark_stale(r->t->gcache); /* reload the group's keys next time */
    log_error("token operation failed op=%s err=%s detail=%s", what, hsm_strerror(err), hsm_last_error_detail());
    if (hsm_err_is_unavailable(err) || err == HSM_ERR_KEY_NOT_FOUND) {
        srv_token_unavailable(r->srv);
        srv_reply_retry(r, 503, 5, "token_unavailable", "the key token is not reachable; try again later");
    } else
        srv_reply_error(r, 500, "internal", "token operation failed");
}

void srv_reply_gs_error(struct srv_req *r, gs_err err, const char *what)
{
    switch (err) {
    case GS_ERR_NOT_FOUND:
        srv_reply_error(r, 404, "not_found", "%s not found", what);
        return;
    case GS_ERR_EXISTS:
        srv_reply_error(r, 400, "exists", "%s already exists", what);
        return;
    case GS_ERR_ARGS:
    case GS_ERR_CERT:
        srv_reply_error(r, 400, "bad_request", "%s: %s", what, gs_err_detail());
        return;
    case GS_ERR_HSM:
    case GS_ERR_TOKEN:
        metrics_token_error();
        log_error("token failure op=%s detail=%s", what, gs_err_detail());
        srv_token_unavailable(r->srv);
        srv_reply_retry(r, 503, 5, "token_unavailable", "the key token is not reachable; try again later");
        return;
    case GS_ERR_DB_UNAVAILABLE: {
        /* PostgreSQL down or failing over: no answer without the
         * membership check; the store reconnects on a later request. One
         * log line a second: an outage under load is thousands of these. */
        static atomic_long last_logged;
        long now = (long)srv_now(), prev = atomic_load(&last_logged);
        if (now != prev && atomic_compare_exchange_strong(&last_logged, &prev, now))
            log_warn("database unavailable op=%s detail=%s", what, gs_err_detail());
        srv_reply_retry(r, 503, 5, "db_unavailable", "the database is not reachable; try again later");
        return;
    }
    case GS_ERR_DB:
    case GS_ERR_IO:
        log_error("store failure op=%s detail=%s", what, gs_err_detail());
        srv_reply_retry(r, 503, 5, "store_unavailable", "the membership database is not available");
        return;
    default:
        log_error("failure op=%s err=%s detail=%s", what, gs_strerror(err), gs_err_detail());
        srv_reply_error(r, 500, "internal", "internal error");
        return;
    }
}

audit_err srv_audit_write(struct srv_req *r, const audit_record *rec)
{
    audit_record copy = *rec;
    unsigned long long seq = 0;

    copy.request_id = r->id;
    audit_err ae = audit_write(r->srv->audit, &copy, &seq);
    if (ae == AUDIT_OK) {
        /* Every record of the request must be durable, not just the last:
         * a batch's records may fall into different sync rounds. */
        if (r->audit_first == 0)
            r->audit_first = seq;
        r->audit_last = seq;
    }
    return ae;
}

int srv_audit(struct srv_req *r, const audit_record *rec)
{
    if (srv_audit_write(r, rec) != AUDIT_OK) {
        srv_reply_retry(r, 503, 5, "audit_unavailable", "the audit log cannot be written; refusing to answer");
        return -1;
    }
    return 0;
}

/* ---- dispatch ------------------------------------------------------------ */

/* How many times the request carries header name (case-insensitive). */
static unsigned header_count(struct evhttp_request *req, const char *name)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    unsigned n = 0;

    for (struct evkeyval *kv = h ? h->tqh_first : NULL; kv != NULL; kv = kv->next.tqe_next)
        if (strcasecmp(kv->key, name) == 0)
            n++;
    return n;
}

/* Why the request's framing is ambiguous (a request-smuggling precondition
 * behind a proxy that reads it another way), or NULL. libevent frames the
 * body as chunked only when the first Transfer-Encoding is exactly
 * "chunked" (then ignoring Content-Length), else by the first
 * Content-Length, whatever coding is named. RFC 7230 3.3.3: reject, and
 * close. */
static const char *ambiguous_framing(struct evhttp_request *req)
{
    unsigned cl = header_count(req, "Content-Length"), te = header_count(req, "Transfer-Encoding");
    const char *coding = evhttp_find_header(evhttp_request_get_input_headers(req), "Transfer-Encoding");

    if (cl > 1)
        return "more than one Content-Length header";
    if (te > 1 || (coding != NULL && strcasecmp(coding, "chunked") != 0))
        return "a Transfer-Encoding other than one \"chunked\"";
    if (te > 0 && cl > 0)
        return "both Content-Length and Transfer-Encoding";
    return NULL;
}

static void handle(struct evhttp_request *req, struct srv_thread *t, int certsrv)
{
    struct srv_req r = {.t = t, .srv = t->srv, .req = req, .certsrv = certsrv};

    r.start = srv_now();
    int over_budget = conn_in_service(req);
    if (util_random_id(r.id, 8) != 0)
        snprintf(r.id, sizeof(r.id), "0");
    log_set_request_id(r.id);
    const char *ambiguous = ambiguous_framing(req);
    if (ambiguous != NULL) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        srv_reply_error(&r, 400, "bad_request", "%s", ambiguous);
    } else if (over_budget) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        srv_reply_retry(&r, 503, 1, "too_many_connections", "the server is at its connection limit");
    } else if (certsrv)
        certsrv_route(&r);
    else
        api_route(&r);
    if (!r.replied) {
        log_error("handler ended without a reply");
        srv_reply_error(&r, 500, "internal", "internal error");
    }
    log_debug("request done status_ep=%s ms=%.1f", metrics_endpoint_name(r.ep), (srv_now() - r.start) * 1e3);
    log_set_request_id(NULL);
}

static void api_cb(struct evhttp_request *req, void *arg) { handle(req, arg, 0); }
static void certsrv_cb(struct evhttp_request *req, void *arg) { handle(req, arg, 1); }

/* ---- threads ------------------------------------------------------------- */

static struct evhttp *make_http(struct srv_thread *t, int fd, int certsrv, struct evhttp_bound_socket **bound)
{
    struct srv *s = t->srv;
    struct evhttp *http = evhttp_new(t->base);
    int dfd = -1;
    enum srv_listener which = certsrv ? SRV_CERTSRV : SRV_API;

    *bound = NULL;
    if (http == NULL)
        return NULL;
    t->lctx[which].t = t;
    t->lctx[which].which = which;
    evhttp_set_bevcb(http, make_bev, &t->lctx[which]);
    evhttp_set_gencb(http, certsrv ? certsrv_cb : api_cb, t);
    /* libevent's own (HTML) 413 only for bodies far over our JSON-answered
     * cap (sent at once, then a lingering close: see above). libevent's own
     * EVHTTP_SERVER_LINGERING_CLOSE would read the whole declared length
     * first, holding a client that declares much and sends nothing until
     * its timeout. */
    evhttp_set_max_body_size(http, (ev_ssize_t)(s->max_body * 2 + 4096));
    evhttp_set_max_headers_size(http, HEADERS_MAX);
    struct timeval tv = {.tv_sec = s->timeout};
    evhttp_set_timeout_tv(http, &tv);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                         EVHTTP_REQ_HEAD | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    /* Each thread accepts on its own duplicate of the shared listening
     * socket: whichever loop is free takes the next connection. */
    if ((dfd = dup(fd)) < 0 || (*bound = evhttp_accept_socket_with_handle(http, dfd)) == NULL) {
        if (dfd >= 0)
            close(dfd);
        evhttp_free(http);
        return NULL;
    }
    evconnlistener_set_error_cb(evhttp_bound_socket_get_listener(*bound), accept_error_cb);
    return http;
}

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
    struct srv_thread *t = arg;
    (void)fd; (void)what;

    /* Handlers run to completion before this fires, so only connections
     * still sending a request (or idle keep-alives) remain. */
    if ((atomic_load(&t->nconns) > 0 || t->pending_head != NULL) && srv_now() < t->drain_deadline) {
        struct timeval tv = {0, 100000};
        event_add(t->drain_ev, &tv);
        return;
    }
    event_base_loopbreak(t->base);
}

static void shutdown_cb(evutil_socket_t fd, short what, void *arg)
{
    struct srv_thread *t = arg;
    (void)fd; (void)what;

    if (t->bound != NULL)
        evhttp_del_accept_socket(t->http, t->bound);
    if (t->certbound != NULL)
        evhttp_del_accept_socket(t->certhttp, t->certbound);
    t->bound = t->certbound = NULL;
    t->drain_deadline = srv_now() + 5.0;
    struct timeval tv = {0, 0};
    event_add(t->drain_ev, &tv);
}

static void *thread_main(void *arg)
{
    struct srv_thread *t = arg;

    event_base_dispatch(t->base);
    return NULL;
}

static int thread_init(struct srv *s, struct srv_thread *t, unsigned i)
{
    gs_err ge;

    t->srv = s;
    t->index = i;
    atomic_init(&t->nconns, 0);
    if ((t->gcache = gcache_new()) == NULL)
        return -1;
    if ((ge = gs_store_open(gs_config_db_location(s->cfg), 0, &t->store)) != GS_OK) {
        log_error("cannot open the database backend=%s err=%s detail=%s", s->cfg->db.url ? "postgresql" : "sqlite",
                  gs_strerror(ge), gs_err_detail());
        return -1;
    }
    if ((t->base = event_base_new()) == NULL)
        return -1;
    if ((t->http = make_http(t, s->listen_fd, 0, &t->bound)) == NULL)
        return -1;
    if (s->certsrv_fd >= 0 && (t->certhttp = make_http(t, s->certsrv_fd, 1, &t->certbound)) == NULL)
        return -1;
    t->shutdown_ev = event_new(t->base, -1, 0, shutdown_cb, t);
    t->drain_ev = evtimer_new(t->base, drain_cb, t);
    t->tick_ev = event_new(t->base, -1, EV_PERSIST, tick_cb, t);
    t->audit_ev = event_new(t->base, -1, 0, audit_done_cb, t);
    atomic_init(&t->npending, 0);
    if (t->shutdown_ev == NULL || t->drain_ev == NULL || t->tick_ev == NULL || t->audit_ev == NULL)
        return -1;
    struct timeval tick = {0, 250000};
    event_add(t->tick_ev, &tick);
    return 0;
}

static void thread_free(struct srv_thread *t)
{
    /* The loop has ended and the syncer has synced what was pending:
     * settle held answers so their requests and buffers are released. */
    if (t->srv != NULL && t->audit_ev != NULL)
        flush_pending(t);
    for (struct srv_pending *p = t->pending_head, *next; p != NULL; p = next) {
        next = p->next;
        send_audit_failure(p->req, p->ep, p->body, p->len);
        free(p);
    }
    t->pending_head = t->pending_tail = NULL;
    if (t->http != NULL)
        evhttp_free(t->http);
    if (t->certhttp != NULL)
        evhttp_free(t->certhttp);
    linger_free_all(t); /* after the connections, before the base */
    if (t->shutdown_ev != NULL)
        event_free(t->shutdown_ev);
    if (t->drain_ev != NULL)
        event_free(t->drain_ev);
    if (t->tick_ev != NULL)
        event_free(t->tick_ev);
    if (t->audit_ev != NULL)
        event_free(t->audit_ev);
    if (t->base != NULL)
        event_base_free(t->base);
    gcache_free(t->gcache); /* before the store and the hsm it borrowed from */
    gs_store_close(t->store);
    memset(t, 0, sizeof(*t));
}

/* The descriptors the listeners' budgets may take: per connection its
 * socket and the duplicate kept for its lingering close (also for the few
 * admitted past a full listener), the lingering closes of every thread,
 * and 64 for the rest (database, audit log, token, listeners). The soft
 * limit is raised to that, within the hard one (systemd's default soft
 * limit is 1024, and it advises programs that do not use select(2) to
 * raise it themselves); short of it, the operator is told. */
static void raise_fd_limit(const struct srv *s)
{
    struct rlimit rl;
    rlim_t need = 64 + (rlim_t)LINGER_MAX_PER_THREAD * s->nthreads;

    for (int i = 0; i < 2; i++)
        if (i == SRV_API || s->certsrv_fd >= 0)
            need += 2 * (rlim_t)(s->budget[i] + s->budget[i] / 16 + 1);
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need)
        return;
    rl.rlim_cur = rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need ? rl.rlim_max : need;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 && getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < need)
        log_warn("the descriptor limit is below what the connection budgets may take: raise LimitNOFILE or lower "
                 "max_connections limit=%llu need=%llu",
                 (unsigned long long)rl.rlim_cur, (unsigned long long)need);
}

int srv_threads_start(struct srv *s)
{
    sigset_t all, old;
    unsigned started = 0;

    raise_fd_limit(s);

    tls_set_conn_free_cb(conn_freed);
    if ((s->threads = calloc(s->nthreads, sizeof(*s->threads))) == NULL)
        return -1;
    for (unsigned i = 0; i < s->nthreads; i++)
        if (thread_init(s, &s->threads[i], i) != 0)
            goto fail;
    atomic_store(&s->accepting, (int)s->nthreads);
    /* Workers (and the audit syncer) never take signals: the main
     * thread's loop handles them. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    if (audit_syncer_start(s->audit, audit_durable, s) != AUDIT_OK) {
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        log_error("cannot start the audit syncer thread");
        goto fail;
    }
    for (; started < s->nthreads; started++)
        if (pthread_create(&s->threads[started].tid, NULL, thread_main, &s->threads[started]) != 0)
            break;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (started == s->nthreads)
        return 0;
    /* Some threads did not start: free those, stop the started ones. The
     * syncer goes first, as its callback reads s->nthreads. */
    audit_syncer_stop(s->audit);
    for (unsigned i = started; i < s->nthreads; i++)
        thread_free(&s->threads[i]);
    s->nthreads = started;
    srv_threads_stop(s);
    return -1;
fail:
    for (unsigned i = 0; i < s->nthreads; i++)
        thread_free(&s->threads[i]);
    free(s->threads);
    s->threads = NULL;
    return -1;
}

void srv_threads_stop(struct srv *s)
{
    if (s->threads == NULL)
        return;
    atomic_store(&s->shutting_down, 1);
    for (unsigned i = 0; i < s->nthreads; i++)
        event_active(s->threads[i].shutdown_ev, 0, 0);
    for (unsigned i = 0; i < s->nthreads; i++)
        pthread_join(s->threads[i].tid, NULL);
    /* Its callback reads s->threads: stop it (after a last sync) first. */
    audit_syncer_stop(s->audit);
    for (unsigned i = 0; i < s->nthreads; i++)
        thread_free(&s->threads[i]);
    free(s->threads);
    s->threads = NULL;
}
