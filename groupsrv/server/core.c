/*
 * core.c: the network process's event-loop threads, TLS connections,
 * routing through the handlers' tables, reply and input helpers,
 * per-request authentication, and calls to the key holder (server.h).
 */
#include "server.h"

#include <limits.h>
#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
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
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h> /* the request's HTTP version */
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "jsonin.h"
#include "reqscan.h"
#include "log.h"
#include "util.h"

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

/* Asks the threads that stepped back from accepting and now hold fewer
 * connections than `mine` to accept again at once, in their own loops
 * (resume_cb), not at their next tick: the thread still accepting is the
 * one that cannot step back, and a burst of new connections (an overload
 * round's 256 at once) all went to it while the others waited a quarter
 * of a second, 248 of 256 on one of 8 threads. Each is asked once until
 * its loop has run the request. */
static void wake_behind(struct srv_thread *t, long mine)
{
    struct srv *s = t->srv;

    if (atomic_load(&s->shutting_down))
        return;
    for (unsigned i = 0; i < s->nthreads; i++) {
        struct srv_thread *u = &s->threads[i];
        if (u == t || u->resume_ev == NULL || !atomic_load(&u->accept_paused) || atomic_load(&u->nconns) >= mine)
            continue;
        if (!atomic_exchange(&u->resume_asked, 1))
            event_active(u->resume_ev, 0, 0);
    }
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

    long mine = atomic_load(&t->nconns);

    if (t->accept_paused || mine <= other_min_conns(t))
        return;
    wake_behind(t, mine);
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
    enum srv_lindex which;
    enum conn_stage stage;
    struct bufferevent *bev;
    struct event *deadline;
    int admitted;         /* admission has run (a timer due at once after accept;
                             the handshake may end before it runs) */
    int authenticated;    /* a trusted client certificate at the handshake */
    int unauth_counted;   /* finished its handshake without a trusted certificate:
                             counted in srv.unauth and the per-address table */
    int released;         /* no longer counted against the budgets (closing or freed) */
    double accepted;      /* util_monotonic_s() at accept */
    int linger_fd;        /* the socket, taken over from libevent for the
                             lingering close as evhttp frees the connection, or -1 */
    int over_budget;      /* admitted past a full listener: its request gets 503 */
    struct evbuffer_cb_entry *input_cb; /* conn_input_cb on the bufferevent's input */
    struct event *watch;  /* conn_watch_cb: keeps the socket's read interest in epoll */
    int watch_on;         /* watch is added */
    int watch_idle;       /* watch's wake-ups since the bufferevent last read */
    /* The request being received, its head and a chunked body followed as
     * they come (conn_scan_head); offsets count the input's bytes since
     * accept. */
    uint64_t in_added, in_drained; /* bytes ever added to, drained from the input */
    uint64_t head_scanned;         /* the offset scanned up to */
    struct reqscan scan;           /* the request coming in (reqscan.h) */
    struct sockaddr_storage addr;
    socklen_t addr_len;
    /* The first record header's 5 bytes as they came (conn_msg_cb), for
     * a request line OpenSSL 3.0 does not call one (DELETE, OPTIONS). */
    unsigned char first_rec[5];
    int first_rec_seen;
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
    log_debug("connection closed reason=%s listener=%s", why, c->which == SRV_LI_API ? "api" : "certsrv");
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
static struct srv_conn *conn_evictable(struct srv_thread *t, enum srv_lindex which, const struct srv_conn *self,
                                       int handshakes_too)
{
    struct srv_conn *handshaking = NULL;
    double old_enough = util_monotonic_s() - HANDSHAKE_EVICT_AGE;

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

/* Request heads are capped here; bodies by evhttp (twice max_body plus
 * 4096, make_http). */
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

/* The evhttp connection of c: libevent 2.1 has no hook at a new
 * connection; evhttp gives the connection itself as the argument of its
 * bufferevent's callbacks (set once it reads). NULL before. */
static struct evhttp_connection *conn_evcon(struct srv_conn *c)
{
    bufferevent_data_cb readcb = NULL;
    void *arg = NULL;

    bufferevent_getcb(c->bev, &readcb, NULL, NULL, &arg);
    struct evhttp_connection *evcon = arg;
    if (readcb == NULL || evcon == NULL || evhttp_connection_get_bufferevent(evcon) != c->bev)
        return NULL;
    return evcon;
}

/* The head of a request is in, and evhttp has not read it yet (the
 * input's callbacks run before the bufferevent's read callback). With an
 * Expect header, libevent answers "100 Continue" to a body up to its own
 * cap, twice max_body plus 4096 (make_http), and a client then sends a body that is
 * refused (JSON 413) once read. A body declared over max_body gets
 * libevent's 413 at once instead, before any 100 Continue: the
 * connection's cap is lowered to max_body, which libevent checks against
 * the Content-Length first. The connection closes after that 413, so the
 * lowered cap never meets another request. */
static void conn_head_done(struct srv_conn *c)
{
    size_t max_body = c->t->srv->max_body;
    struct evhttp_connection *evcon;

    if (!c->scan.head_expect || c->scan.head_cl <= (uint64_t)max_body || (evcon = conn_evcon(c)) == NULL)
        return;
    evhttp_connection_set_max_body_size(evcon, (ev_ssize_t)max_body);
}

/* Follows the input received since the last scan while the request is
 * coming in (reqscan_feed): its head, and a chunked body's framing, for
 * what libevent reads leniently and a proxy in front may read otherwise;
 * handle() refuses what it marks. */
static void conn_scan_head(struct srv_conn *c, struct evbuffer *in)
{
    struct evbuffer_iovec v[8];
    struct evbuffer_ptr pos;
    int head_was_open = c->scan.head_open;

    if (c->head_scanned < c->in_drained)
        c->head_scanned = c->in_drained;
    while (reqscan_active(&c->scan) && c->head_scanned < c->in_added) {
        if (evbuffer_ptr_set(in, &pos, (size_t)(c->head_scanned - c->in_drained), EVBUFFER_PTR_SET) != 0)
            break;
        int n = evbuffer_peek(in, -1, &pos, v, 8);
        if (n <= 0)
            break;
        for (int i = 0; i < n && i < 8 && reqscan_active(&c->scan); i++)
            c->head_scanned += reqscan_feed(&c->scan, v[i].iov_base, v[i].iov_len);
    }
    if (head_was_open && !c->scan.head_open)
        conn_head_done(c);
}

/* ---- read interest kept over a request ----------------------------------
 * evhttp stops reading a connection when a request is in (it disables the
 * bufferevent's read) and starts again when the answer is queued: with
 * nothing else on the socket, libevent removes it from the epoll set and
 * adds it back, two epoll_ctl per request (the changelist cannot merge
 * them: the key holder's answer comes an epoll_wait later). A second read
 * event on the socket, added at admission (conn_watch_arm), keeps the
 * socket in the set, so the bufferevent's toggles stay in libevent's own
 * tables. It reads nothing: woken twice with nothing read by the
 * bufferevent in between (the client sent more, or closed, while its
 * request is being answered; or the bufferevent's read is off for another
 * reason), it takes itself out, and the connection is exactly as without
 * it (one epoll_ctl, as before) until the bufferevent reads again. Its
 * first wake-up cannot be told from the one that brought the request: the
 * request's bytes are read, and evhttp has stopped reading, before the
 * watch's callback runs in the same loop turn. */
static void conn_watch_cb(evutil_socket_t fd, short what, void *arg)
{
    struct srv_conn *c = arg;
    (void)fd; (void)what;

    if (c->stage == CONN_CLOSING || ++c->watch_idle > 1) {
        event_del(c->watch);
        c->watch_on = 0;
    }
}

/* Only while the bufferevent's own read is in the epoll set (at admission
 * and as it reads), so that adding the watch is no system call. */
static void conn_watch_arm(struct srv_conn *c)
{
    c->watch_idle = 0;
    if (c->watch == NULL || c->watch_on || c->stage == CONN_CLOSING)
        return;
    if (event_add(c->watch, NULL) == 0)
        c->watch_on = 1;
}

static void conn_watch_free(struct srv_conn *c)
{
    if (c->watch != NULL)
        event_free(c->watch); /* deletes it */
    c->watch = NULL;
    c->watch_on = 0;
}

static void conn_input_cb(struct evbuffer *in, const struct evbuffer_cb_info *info, void *arg)
{
    struct srv_conn *c = arg;

    c->in_drained += info->n_deleted;
    c->in_added += info->n_added;
    if (info->n_added > 0)
        conn_watch_arm(c);
    if (info->n_added > 0)
        conn_scan_head(c, in);
    if (info->n_added > 0 && evbuffer_get_length(in) > conn_input_max(c->t->srv))
        conn_close(c, "input_beyond_request");
}

/* ---- lingering close --------------------------------------------------------
 * libevent closes a connection as soon as its answer is written, also when
 * it refused a request before reading all of it (a body far over the cap
 * gets libevent's 413 at once). The client may still be sending, and Linux
 * answers unread data on a closed socket with a reset, which can destroy
 * the answer before the client has read it. So each admitted connection
 * takes its socket over from libevent as evhttp frees it (conn_closing_cb):
 * the socket then sends the FIN (shutdown SHUT_WR), reads and drops what
 * still comes until the client closes, LINGER_SECONDS pass or LINGER_BYTES
 * were dropped (nginx's lingering_close), and only then is closed. A client
 * that sends nothing more sees the answer and the FIN at once. Bounded per
 * thread; not at shutdown.
 *
 * Taken over, never duplicated: an epoll registration belongs to the open
 * socket, not to its descriptor number, and the loops batch their epoll
 * changes (loop_base_new), so libevent removes the bufferevent's
 * registration only at its next epoll_wait, after it has closed the
 * descriptor. With a duplicate keeping the socket open, that removal fails
 * (EBADF, ignored by libevent) and the registration stays in the epoll set
 * under a number libevent no longer knows: it woke the thread thousands of
 * times a second for as long as the linger lasted (the socket writable
 * after shutdown, or the client's unread bytes). */
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

/* Takes over fd, the socket of a connection libevent has freed. */
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

/* evhttp calls it as it frees the connection, before the bufferevent
 * closes the socket (it closes what its SSL's BIO names): the socket is
 * taken out of the BIO and lingers once the connection is freed
 * (conn_freed). evhttp's reset of an outgoing connection calls close
 * callbacks too and then closes the socket itself; the connections here
 * are all incoming, freed only by evhttp_connection_free. */
static void conn_closing_cb(struct evhttp_connection *evcon, void *arg)
{
    struct srv_conn *c = arg;
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    BIO *bio = ssl != NULL ? SSL_get_wbio(ssl) : NULL;
    int fd = bufferevent_getfd(c->bev);
    (void)evcon;

    conn_watch_free(c); /* before the socket is closed or taken over */
    if (c->linger_fd >= 0 || fd < 0 || bio == NULL || SSL_get_rbio(ssl) != bio || BIO_get_fd(bio, NULL) != fd)
        return; /* libevent closes it plainly */
    BIO_set_fd(bio, -1, BIO_NOCLOSE);
    c->linger_fd = fd;
}

/* At admission: the socket is to linger after the close. */
static void conn_take_socket_at_close(struct srv_conn *c)
{
    struct evhttp_connection *evcon = conn_evcon(c);

    if (evcon != NULL)
        evhttp_connection_set_closecb(evcon, conn_closing_cb, c);
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
        conn_take_socket_at_close(c);
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
        /* Without it (no memory) evhttp's toggles reach epoll, as before. */
        c->watch = event_new(c->t->base, bufferevent_getfd(c->bev), EV_READ | EV_PERSIST, conn_watch_cb, c);
        conn_watch_arm(c);
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

/* OpenSSL 3.0 tells a request line from TLS by GET, POST, HEAD, PUT and
 * CONNECT alone (later versions also by these): `curl -X DELETE http://`
 * or an OPTIONS preflight to the TLS port got the close without a word
 * the others got before the 400. The first record's header bytes are
 * what OpenSSL looked at. */
static bool first_rec_is_http(const struct srv_conn *c)
{
    static const char *const methods[] = {"DELET", "OPTIO", "PATCH", "TRACE"};

    if (!c->first_rec_seen)
        return false;
    for (size_t i = 0; i < GS_ARRAY_LEN(methods); i++)
        if (memcmp(c->first_rec, methods[i], sizeof(c->first_rec)) == 0)
            return true;
    return false;
}

/* OpenSSL's message callback, for the first record's header only (it is
 * removed then): conn_answer_plain_http reads those bytes. */
static void conn_msg_cb(int write_p, int version, int content_type, const void *buf, size_t len, SSL *ssl,
                        void *arg)
{
    struct srv_conn *c = SSL_get_ex_data(ssl, tls_conn_index());
    (void)version;
    (void)arg;

    if (write_p || content_type != SSL3_RT_HEADER)
        return;
    if (c != NULL && !c->first_rec_seen && len >= sizeof(c->first_rec)) {
        memcpy(c->first_rec, buf, sizeof(c->first_rec));
        c->first_rec_seen = 1;
    }
    SSL_set_msg_callback(ssl, NULL);
}

/* A plain HTTP request sent to a TLS listener (http:// for https://, a
 * load balancer's health check without TLS): OpenSSL ends the handshake
 * at its first bytes and sends no alert, and the client saw the
 * connection closed without a word (curl: "Empty reply from server").
 * Called as the handshake's state machine returns: when OpenSSL's error
 * says so, the client gets a plain HTTP 400 naming the mistake, as nginx
 * answers, on the socket still open. */
static void conn_answer_plain_http(const SSL *ssl, struct srv_conn *c)
{
    static const char body[] =
        "{\"error\":{\"code\":\"bad_request\",\"message\":\"this port speaks TLS: send the request over "
        "HTTPS (https://)\"}}\n";
    char answer[512];
    unsigned long e = ERR_peek_last_error();
    int fd = SSL_get_fd(ssl);

    if (fd < 0 || ERR_GET_LIB(e) != ERR_LIB_SSL)
        return;
    if (ERR_GET_REASON(e) != SSL_R_HTTP_REQUEST && ERR_GET_REASON(e) != SSL_R_HTTPS_PROXY_REQUEST &&
        !(ERR_GET_REASON(e) == SSL_R_WRONG_VERSION_NUMBER && first_rec_is_http(c)))
        return;
    int n = snprintf(answer, sizeof(answer),
                     "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\nConnection: close\r\n\r\n%s",
                     sizeof(body) - 1, body);
    log_debug("plain HTTP on a TLS listener, answered 400 listener=%s", c->which == SRV_LI_API ? "api" : "certsrv");
    /* A new connection's socket buffer takes it whole; if not, the
     * client gets the close it got before. */
    if (n <= 0 || (size_t)n >= sizeof(answer) || send(fd, answer, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) != n)
        return;
    /* What the client sent that OpenSSL did not read (a POST's body) would
     * make the close a reset, which may drop the answer at the client:
     * what has arrived is read and dropped, after the FIN. */
    (void)shutdown(fd, SHUT_WR);
    for (int i = 0; i < 16 && recv(fd, answer, sizeof(answer), MSG_DONTWAIT) > 0; i++)
        ;
}

/* OpenSSL's info callback: at the end of the handshake the request
 * deadline starts, and a trusted client certificate moves the connection
 * into the members' share (the verification is remembered for its first
 * request, so it is not repeated). */
static void conn_info_cb(const SSL *ssl, int where, int ret)
{
    struct srv_conn *c = SSL_get_ex_data(ssl, tls_conn_index());

    if (c != NULL && c->stage == CONN_HANDSHAKE && (where & SSL_CB_ACCEPT_EXIT) == SSL_CB_ACCEPT_EXIT && ret <= 0)
        conn_answer_plain_http(ssl, c);
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

/* Whether the head of the request just read held a NUL byte, (*fold)
 * a header line folded onto the next (obs-fold), and (*chunk_bad) whether
 * its chunked body was framed otherwise than RFC 9112
 * 7.1 says. evhttp has taken its head and body out of the input, so what
 * the input holds now (pipelined) begins the next request's head: its scan
 * starts over. */
static int conn_head_had_nul(struct evhttp_request *req, int *fold, int *chunk_bad)
{
    struct srv_conn *c = req_conn(req);
    int nul;

    *fold = 0;
    *chunk_bad = 0;
    if (c == NULL || c->input_cb == NULL)
        return 0;
    nul = c->scan.head_nul;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t left = evbuffer_get_length(in);
    if (left <= c->in_added)
        c->in_drained = c->in_added - left;
    c->head_scanned = c->in_drained;
    *fold = c->scan.head_fold;
    *chunk_bad = c->scan.chunk_bad;
    reqscan_start(&c->scan);
    conn_scan_head(c, in);
    return nul;
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
    conn_watch_free(c);
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
    reqscan_start(&c->scan);
    SSL_set_ex_data(ssl, tls_conn_index(), c);
    SSL_set_info_callback(ssl, conn_info_cb);
    SSL_set_msg_callback(ssl, conn_msg_cb);
    atomic_fetch_add(&t->nconns, 1);
    atomic_fetch_add(&t->srv->conns[c->which], 1);
    c->accepted = util_monotonic_s();
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

/* The event-loop thread running on this pthread (thread_main), for
 * libevent callbacks whose argument is libevent's own. */
static _Thread_local struct srv_thread *loop_thread;

/* Connections closed per failed accept for want of descriptors. */
#define EMFILE_EVICT_MAX 8

/* Listeners rested by accept_error_cb (enabling an enabled one is a no-op). */
static void listeners_rested_end(struct srv_thread *t)
{
    if (!t->accept_paused && !atomic_load(&t->srv->shutting_down))
        set_listeners(t, 1);
}

static void rest_end_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    listeners_rested_end(arg);
}

/* Closes up to EMFILE_EVICT_MAX connections of this thread that may make
 * room (conn_evictable), of listener `first` before the other; how many. */
static int evict_for_descriptors(struct srv_thread *t, enum srv_lindex first)
{
    enum srv_lindex order[2] = {first, first == SRV_LI_API ? SRV_LI_CERTSRV : SRV_LI_API};
    int evicted = 0;

    for (int i = 0; i < 2; i++) {
        struct srv_conn *old;
        while (evicted < EMFILE_EVICT_MAX && (old = conn_evictable(t, order[i], NULL, 1)) != NULL) {
            conn_close(old, "evicted_for_descriptors");
            evicted++;
        }
    }
    return evicted;
}

/* Bumped by a thread out of descriptors with none of its own connections
 * to close: the thread that accepts is the one holding the fewest
 * (balance_accept), so the idle ones are mostly another's. Each thread's
 * tick closes some of its own when it sees the count move. */
static atomic_uint descriptors_short;
static _Thread_local unsigned descriptors_short_seen;

/* accept(2) failed for want of descriptors (EMFILE, ENFILE) or memory.
 * libevent's listener would log it and try again at once, as the pending
 * connection keeps the socket readable: a busy loop writing a warning each
 * time (740,000 lines in 3 s measured). The listener rests instead; the
 * tick enables it again within a quarter of a second, and connections wait
 * in the backlog meanwhile. Logged at most once every 10 s.
 * Out of descriptors with a limit below what the budgets may take (a
 * LimitNOFILE lowered, prlimit on the running server), the budgets never
 * fill, so nothing made room: idle connections without a certificate,
 * opened again as they timed out, kept members and /healthz out for as
 * long as they came. They make room here as for a full listener
 * (conn_evictable): never a member's connection or one being answered. */
static void accept_error_cb(struct evconnlistener *lev, void *arg)
{
    static atomic_long last_logged;
    struct srv_thread *t = loop_thread;
    int err = EVUTIL_SOCKET_ERROR(), evicted = 0, soon = 0;
    long now = (long)util_monotonic_s(), last = atomic_load(&last_logged);
    (void)arg;

    evconnlistener_disable(lev);
    if (t != NULL && (err == EMFILE || err == ENFILE)) {
        int cert = t->certbound != NULL && evhttp_bound_socket_get_listener(t->certbound) == lev;
        evicted = evict_for_descriptors(t, cert ? SRV_LI_CERTSRV : SRV_LI_API);
        if (evicted == 0)
            atomic_fetch_add(&descriptors_short, 1);
        /* Their descriptors are free once the loop has run their closes:
         * accept again then, not at the next tick, so that connections
         * waiting in the backlog (a member's among them) are not held a
         * quarter of a second for each few that made room. Only after room
         * was made: never a busy loop. */
        struct timeval tv = {0, 10000};
        soon = evicted > 0 && event_base_once(t->base, -1, EV_TIMEOUT, rest_end_cb, t, &tv) == 0;
    }
    if (now - last >= 10 && atomic_compare_exchange_strong(&last_logged, &last, now))
        log_warn("cannot accept connections: accepts paused for a moment (out of descriptors? see LimitNOFILE) "
                 "err=\"%s\" evicted=%d resume=%s",
                 evutil_socket_error_to_string(err), evicted, soon ? "soon" : "tick");
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct srv_thread *t = arg;
    (void)fd; (void)what;
    atomic_store(&t->resume_asked, 0);
    maybe_resume_accept(t);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct srv_thread *t = arg;
    (void)fd; (void)what;
    maybe_resume_accept(t);
    unsigned short_now = atomic_load(&descriptors_short);
    if (short_now != descriptors_short_seen) {
        descriptors_short_seen = short_now;
        (void)evict_for_descriptors(t, SRV_LI_API); /* any number, none included */
    }
    listeners_rested_end(t);
}

/* ---- replies ------------------------------------------------------------- */

/* Date (RFC 9110 6.6.1: an origin server with a clock sends it in every
 * 2xx, 3xx and 4xx answer, whatever the request's version). libevent
 * adds it to HTTP/1.1 answers only, so an HTTP/1.0 client (a monitoring
 * probe, a proxy speaking 1.0 to its backends) got none, and neither
 * could a cache or a script tell when an answer was made. Added here for
 * every answer of ours, in the IMF-fixdate form libevent writes (names
 * spelt out: no locale comes into it); libevent adds none beside it. */
static void add_date_header(struct evkeyvalq *h)
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    char date[64];
    struct tm tm;
    time_t now = time(NULL);

    if (evhttp_find_header(h, "Date") != NULL || gmtime_r(&now, &tm) == NULL || tm.tm_wday < 0 ||
        tm.tm_wday > 6 || tm.tm_mon < 0 || tm.tm_mon > 11)
        return;
    (void)snprintf(date, sizeof(date), "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday,
                   months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    evhttp_add_header(h, "Date", date);
}

static void add_common_headers(struct srv_req *r, const char *content_type)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);

    add_date_header(h);
    evhttp_add_header(h, "Content-Type", content_type);
    evhttp_add_header(h, "X-Request-Id", r->id);
    evhttp_add_header(h, "Cache-Control", "no-store");
    evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
    if (atomic_load(&r->srv->shutting_down))
        evhttp_add_header(h, "Connection", "close");
}

/* The reason phrase (RFC 9110 15) of every status the server answers: one
 * missing here went out as "415 Status", which scripts and logs show. */
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
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    }
    return "Status";
}

/* libevent calls this when the bytes have been handed to TLS (or the
 * connection is gone): answers may carry a plain content key. */
static void wipe_body_cb(const void *data, size_t len, void *extra)
{
    (void)extra;
    OPENSSL_cleanse((void *)data, len);
    free((void *)data);
}

/* At most this much of an answer is written at once (reply_send): when
 * the socket takes less, libevent retries the TLS write with at most
 * 16 KiB, and OpenSSL wants the retry to be as long as the first try. */
#define DIRECT_WRITE_MAX 15000

/* What reply_send relies on (the TLS bufferevent retrying an unfinished
 * write with the same bytes, up to 16 KiB) was read off libevent 2.1: with
 * another series, at build or at run time, answers take evhttp's own path. */
static int direct_write_ok(void)
{
#if LIBEVENT_VERSION_NUMBER >= 0x02010000 && LIBEVENT_VERSION_NUMBER < 0x02020000
    return (event_get_version_number() & 0xffff0000u) == 0x02010000u;
#else
    return 0;
#endif
}

/* evhttp queues an answer's head and body as separate chains, and
 * libevent's TLS bufferevent makes a TLS record and a write(2) of each,
 * after the next epoll_wait has reported the socket writable (one
 * epoll_ctl to ask, one to stop). An answer to a connection that has
 * nothing else queued is instead made one chain (wiped when freed: it may
 * hold a key) and written here at once, one record in one write(2). What
 * the socket does not take stays queued as that one chain, and libevent
 * retries the write as OpenSSL requires (the same bytes). evhttp learns
 * that the answer is out from its write callback, deferred to the loop,
 * where it may free the request and the connection outside our calls. */
static void reply_send(struct evhttp_request *req, int status, struct evbuffer *body)
{
    struct evhttp_connection *ec = evhttp_request_get_connection(req);
    struct bufferevent *bev = ec ? evhttp_connection_get_bufferevent(ec) : NULL;
    SSL *ssl = bev ? bufferevent_openssl_get_ssl(bev) : NULL;
    struct evbuffer *out = bev ? bufferevent_get_output(bev) : NULL;
    /* Only where libevent's retry of an unfinished write is the same
     * SSL_write: one chain, at most 16 KiB, no partial writes. */
    int idle = ssl != NULL && evbuffer_get_length(out) == 0 &&
               !(SSL_get_mode(ssl) & SSL_MODE_ENABLE_PARTIAL_WRITE) && direct_write_ok();
    unsigned char *flat = NULL;
    size_t n = 0;

    evhttp_send_reply(req, status, reason(status), body); /* may free req (no connection) */
    if (!idle || (n = evbuffer_get_length(out)) == 0 || n > DIRECT_WRITE_MAX || (flat = malloc(n)) == NULL)
        return;
    if (evbuffer_copyout(out, flat, n) != (ev_ssize_t)n ||
        evbuffer_add_reference(out, flat, n, wipe_body_cb, NULL) != 0) {
        OPENSSL_cleanse(flat, n);
        free(flat);
        return;
    }
    evbuffer_drain(out, n); /* the chains copied into flat: only flat is left */
    ERR_clear_error();
    if (SSL_write(ssl, flat, (int)n) != (int)n) {
        ERR_clear_error(); /* libevent's own retry reports what it finds */
        return;
    }
    evbuffer_drain(out, n);
    bufferevent_disable(bev, EV_WRITE);
    bufferevent_trigger(bev, EV_WRITE, BEV_TRIG_DEFER_CALLBACKS);
}

static const char *method_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    default:
        return "other";
    }
}

/* [server] access_log: one line per request, so that an operator sees who
 * asked what (the audit log has the key operations only). Nothing secret:
 * the verified identity of the client certificate (as the audit log
 * names it), never the body; the path as the client sent it, escaped. No
 * allocation: log_qs's buffers are the thread's. A certificate not looked
 * at by the handler (discovery, /healthz) is not verified for this line.
 * Written just before the answer is handed to libevent, which may free
 * the request with it (a connection already gone): nothing of r->req is
 * read after that. */
static void access_line(struct srv_req *r)
{
    double ms = (util_monotonic_s() - r->start) * 1e3;
    struct evhttp_connection *c = evhttp_request_get_connection(r->req);
    const char *who = "-";
    char *addr = NULL;
    ev_uint16_t port = 0;

    if (r->peer_checked && r->peer.status == PEER_MEMBER_CERT)
        who = r->peer.identity;
    else if (r->peer_checked && r->peer.status == PEER_MEMBERSHIP)
        who = "anonymous member";
    if (c != NULL)
        evhttp_connection_get_peer(c, &addr, &port);
    log_info("request method=%s path=\"%s\" status=%d ms=%.1f identity=\"%s\" client=%s listener=%s",
             method_name(evhttp_request_get_command(r->req)), log_qs(evhttp_request_get_uri(r->req)),
             r->status, ms, log_qs(who), addr != NULL ? log_qs(addr) : "-", r->certsrv ? "certsrv" : "api");
}

void srv_reply_bytes(struct srv_req *r, int status, const char *content_type, const void *data, size_t len)
{
    unsigned char *body = NULL;
    struct evbuffer *buf = NULL;

    if (r->replied) {
        log_error("second reply suppressed status=%d", status);
        return;
    }
    r->replied = 1;
    r->status = status;
    add_common_headers(r, content_type);
    if (r->head) {
        /* The GET answer's length, and no body: libevent writes a body given
         * to a HEAD as it is, without a length, and the client would read it
         * as the start of its next answer. */
        char n[24];
        snprintf(n, sizeof(n), "%zu", len);
        evhttp_add_header(evhttp_request_get_output_headers(r->req), "Content-Length", n);
        len = 0;
    }
    /* Our own copy, wiped when libevent is done with it. */
    if ((body = malloc(len > 0 ? len : 1)) == NULL || (buf = evbuffer_new()) == NULL) {
        free(body);
        r->status = 500;
        if (r->srv->cfg->server.access_log)
            access_line(r);
        evhttp_send_error(r->req, 500, NULL);
        metrics_request(r->ep, 500);
        return;
    }
    if (len > 0) {
        memcpy(body, data, len);
        if (evbuffer_add_reference(buf, body, len, wipe_body_cb, NULL) != 0) {
            OPENSSL_cleanse(body, len);
            free(body);
            evbuffer_free(buf);
            r->status = 500;
            if (r->srv->cfg->server.access_log)
                access_line(r);
            evhttp_send_error(r->req, 500, NULL);
            metrics_request(r->ep, 500);
            return;
        }
    } else {
        free(body);
    }
    if (r->srv->cfg->server.access_log)
        access_line(r);
    conn_answered(r->req);
    reply_send(r->req, status, buf);
    evbuffer_free(buf);
    metrics_request(r->ep, status);
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
    __attribute__((format(printf, 4, 0)));
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

    if (r->replied)
        return;
    snprintf(v, sizeof(v), "%u", retry_after ? retry_after : 1);
    evhttp_add_header(evhttp_request_get_output_headers(r->req), "Retry-After", v);
    srv_reply_error(r, status, code, "%s", msg);
}

void srv_reply_holder_error(struct srv_req *r, const ipc_msg *a)
{
    int status = (int)ipc_u32(a, IPC_T_STATUS, 500);
    const char *code = ipc_str(a, IPC_T_CODE), *msg = ipc_str(a, IPC_T_MESSAGE);

    if (status < 400 || status > 599 || code == NULL) {
        srv_reply_error(r, 500, "internal", "internal error");
        return;
    }
    if (ipc_has(a, IPC_T_RETRY))
        srv_reply_retry(r, status, ipc_u32(a, IPC_T_RETRY, 5), code, msg ? msg : code);
    else
        srv_reply_error(r, status, code, "%s", msg ? msg : code);
}

void srv_err_set(srv_err *e, int status, const char *code, const char *fmt, ...)
{
    va_list ap;

    e->status = status;
    e->code = code;
    e->retry = status == 429 || status == 503 ? 5 : 0;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
}

void srv_err_json(srv_err *e, const json_error_t *err)
{
    /* jansson's text quotes the input: only its line and column go out,
     * with our words for what it says. Valid JSON this parser cannot hold
     * (a number past 64 bits or a double, deeper nesting than it reads,
     * a \u0000 in a value or a key: jansson has a code for each) is not
     * "malformed": a script author would look for a typo. */
    const char *why;
    switch (json_error_code(err)) {
    case json_error_duplicate_key: why = "a key is given twice in a JSON object"; break;
    case json_error_numeric_overflow:
        why = "a number out of range (integers are 64-bit, other numbers IEEE doubles)";
        break;
    case json_error_stack_overflow: why = "JSON nested too deeply"; break;
    case json_error_invalid_utf8: why = "JSON that is not UTF-8"; break;
    case json_error_null_character:
    case json_error_null_byte_in_key:
        why = "a \\u0000 in a JSON string";
        break;
    default: why = "malformed JSON"; break;
    }
    srv_err_set(e, 400, "bad_json", "%s at line %d column %d", why, err->line, err->column);
}

void srv_reply_err(struct srv_req *r, const srv_err *e)
{
    if (e->retry)
        srv_reply_retry(r, e->status, e->retry, e->code, e->msg);
    else
        srv_reply_error(r, e->status, e->code, "%s", e->msg);
}

/* ---- input --------------------------------------------------------------- */

/* Whether a Content-Encoding value (a list, RFC 9110 8.4) names a coding
 * other than identity: "identity, identity" or an empty element is none. */
static int names_a_coding(const char *list)
{
    for (const char *p = list; *p != '\0';) {
        p += strspn(p, " \t,");
        size_t n = strcspn(p, " \t,");
        if (n > 0 && !(n == 8 && strncasecmp(p, "identity", 8) == 0))
            return 1;
        p += n;
    }
    return 0;
}

/* The first Content-Encoding the request has that names a coding other
 * than identity, or NULL. The server decodes none: a gzip body read as
 * JSON was answered 400 bad_json "malformed JSON at line 1 column 1",
 * which tells a script nothing about the cause. */
static const char *body_coding(struct evhttp_request *req)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);

    for (struct evkeyval *kv = h ? h->tqh_first : NULL; kv != NULL; kv = kv->next.tqe_next)
        if (strcasecmp(kv->key, "Content-Encoding") == 0 && names_a_coding(kv->value))
            return kv->value;
    return NULL;
}

/* -1 with e set when a body of n bytes is over the cap, or is sent in a
 * content coding (RFC 9110 15.5.16: 415, with the codings taken). */
static int body_cap(struct srv_req *r, size_t n, srv_err *e)
{
    const char *coding = body_coding(r->req);

    if (coding != NULL) {
        if (evhttp_add_header(evhttp_request_get_output_headers(r->req), "Accept-Encoding", "identity") != 0) {
            srv_err_set(e, 500, "internal", "out of memory");
            return -1;
        }
        srv_err_set(e, 415, "unsupported_encoding",
                    "the body is in a Content-Encoding (%.40s) the server does not decode: send it uncompressed",
                    coding);
        return -1;
    }
    if (n <= r->srv->max_body)
        return 0;
    srv_err_set(e, 413, "too_large", "request body of %zu bytes exceeds the limit of %zu", n, r->srv->max_body);
    return -1;
}

int srv_body(struct srv_req *r, char **body, size_t *len, srv_err *e)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(r->req);
    size_t n = evbuffer_get_length(in);
    char *p;

    *body = NULL;
    *len = 0;
    if (body_cap(r, n, e) != 0)
        return -1;
    if ((p = malloc(n + 1)) == NULL) {
        srv_err_set(e, 500, "internal", "out of memory");
        return -1;
    }
    if (n > 0 && evbuffer_copyout(in, p, n) != (ev_ssize_t)n) {
        free(p);
        srv_err_set(e, 500, "internal", "could not read the body");
        return -1;
    }
    p[n] = '\0';
    *body = p;
    *len = n;
    return 0;
}

json_t *srv_json_body(struct srv_req *r, srv_err *e)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(r->req);
    size_t len = evbuffer_get_length(in);
    const char *body;
    json_error_t err;
    json_t *o = NULL;

    if (body_cap(r, len, e) != 0)
        return NULL;
    if (len == 0) {
        srv_err_set(e, 400, "bad_request", "a JSON object body is required");
        return NULL;
    }
    /* Parsed where it lies (made contiguous), not from a copy. */
    if ((body = (const char *)evbuffer_pullup(in, -1)) == NULL) {
        srv_err_set(e, 500, "internal", "could not read the body");
        return NULL;
    }
    /* A flat object of plain strings (an unwrap's) is read in one pass;
     * anything else, and every error, is jansson's. Depth and size are
     * bounded by the body cap; reject NULs and duplicate keys. A scalar
     * is JSON too (JSON_DECODE_ANY): refused below as an array is, not
     * as "malformed JSON", which sent a script author looking for a typo
     * in a body that was a JSON string. */
    o = jsonin_flat_object(body, len);
    if (o == NULL)
        o = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);
    if (o == NULL) {
        srv_err_json(e, &err);
        return NULL;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        o = NULL;
        srv_err_set(e, 400, "bad_json", "the body must be a JSON object");
    }
    return o;
}

const char *srv_json_str(json_t *o, const char *key, srv_err *e)
{
    json_t *v = json_object_get(o, key);

    if (v == NULL)
        return NULL;
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v)) {
        srv_err_set(e, 400, "bad_request", "\"%s\" must be a string", key);
        return NULL;
    }
    return json_string_value(v);
}

/* ---- authentication ------------------------------------------------------ */

#ifdef GS_FUZZING
/* Only in the fuzz target (tests/fuzz/fuzz_http.c): it speaks plain HTTP
 * and says who the peer is, so that its inputs reach the handlers. */
const peer_info *(*srv_fuzz_peer)(void);
#endif

const peer_info *srv_peer(struct srv_req *r)
{
#ifdef GS_FUZZING
    if (!r->peer_checked && srv_fuzz_peer != NULL) {
        r->peer = *srv_fuzz_peer();
        if (r->peer.cert != NULL && X509_up_ref(r->peer.cert) != 1)
            memset(&r->peer, 0, sizeof(r->peer));
        r->peer_checked = 1;
    }
#endif
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
        /* The request may outlive its connection while the key holder
         * works: keep a reference of our own. */
        if (r->peer.cert != NULL && X509_up_ref(r->peer.cert) != 1)
            memset(&r->peer, 0, sizeof(r->peer));
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

/* ---- calls to the key holder ----------------------------------------------- */

static void req_free(struct srv_req *r)
{
    if (r->ctx_free != NULL)
        r->ctx_free(r->ctx);
    gview_unref(r->view);
    X509_free(r->peer.cert);
    r->t->requests--;
    free(r);
}

/* Ends a request whose handler (or last callback) returned: frees it once
 * it has its reply and no call is in flight. */
static void req_settle(struct srv_req *r)
{
    if (r->calls > 0)
        return;
    if (!r->replied) {
        log_error("handler ended without a reply");
        srv_reply_error(r, 500, "internal", "internal error");
    }
    log_debug("request done ep=%s ms=%.1f", metrics_endpoint_name(r->ep), (util_monotonic_s() - r->start) * 1e3);
    req_free(r);
}

/* The DER of cert's public key, as every call to the key holder carries
 * it: encoded once per certificate and thread, not per request (it was
 * the one DER encoding left per request). The cache holds a reference to
 * each certificate, so the same pointer is the same certificate. NULL
 * with *len 0 when it cannot be encoded. */
static const unsigned char *peer_spki(struct srv_thread *t, X509 *cert, int *len)
{
    struct srv_spki *e;

    for (unsigned i = 0; i < SRV_SPKI_CACHE; i++)
        if (t->spki[i].cert == cert) {
            *len = t->spki[i].len;
            return t->spki[i].der;
        }
    e = &t->spki[t->spki_next];
    X509_free(e->cert);
    OPENSSL_free(e->der);
    *e = (struct srv_spki){0};
    *len = 0;
    if ((e->len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &e->der)) <= 0 || X509_up_ref(cert) != 1) {
        OPENSSL_free(e->der);
        *e = (struct srv_spki){0};
        return NULL;
    }
    e->cert = cert;
    t->spki_next = (t->spki_next + 1) % SRV_SPKI_CACHE;
    *len = e->len;
    return e->der;
}

static void peer_spki_free(struct srv_thread *t)
{
    for (unsigned i = 0; i < SRV_SPKI_CACHE; i++) {
        X509_free(t->spki[i].cert);
        OPENSSL_free(t->spki[i].der);
        t->spki[i] = (struct srv_spki){0};
    }
}

void srv_ipc_begin(struct srv_req *r, ipc_buf *b, uint32_t type)
{
    const peer_info *p = srv_peer(r);
    const unsigned char *spki;
    int n = 0;

    ipc_begin(b, type, 0);
    ipc_put_str(b, IPC_T_REQUEST_ID, r->id);
    if (p->status != PEER_MEMBER_CERT && p->status != PEER_MEMBERSHIP)
        return;
    spki = peer_spki(r->t, p->cert, &n);
    ipc_put_u32(b, IPC_T_CALLER, p->status == PEER_MEMBER_CERT ? IPC_CALLER_IDENTITY : IPC_CALLER_MEMBERSHIP);
    ipc_put_str(b, IPC_T_IDENTITY, p->status == PEER_MEMBER_CERT ? p->identity : p->group);
    if (spki != NULL)
        ipc_put_bytes(b, IPC_T_SPKI, spki, (size_t)n);
}

struct call_ctx {
    struct srv_req *r;
    srv_cont cont;
    unsigned flags;
};

static void holder_down(struct srv_req *r, srv_cont cont, unsigned flags)
{
    if (flags & SRV_CALL_DOWN_TOO)
        cont(r, NULL);
    else
        srv_reply_retry(r, 503, 5, "token_unavailable", "the key token is not reachable; try again later");
}

static void call_done(void *arg, const ipc_msg *answer)
{
    struct call_ctx *cc = arg;
    struct srv_req *r = cc->r;
    srv_cont cont = cc->cont;
    unsigned flags = cc->flags;

    free(cc);
    r->calls--;
    log_set_request_id(r->id);
    if (!r->replied) {
        if (answer == NULL && (flags & SRV_CALL_CHANGES))
            srv_reply_retry(r, 503, 5, "token_unavailable",
                            "the key holder stopped before it answered: the change may have been made; "
                            "look before trying again");
        else if (answer == NULL)
            holder_down(r, cont, flags);
        else
            cont(r, answer);
    }
    req_settle(r);
    log_set_request_id(NULL);
}

int srv_call(struct srv_req *r, ipc_buf *b, srv_cont cont, unsigned flags)
{
    struct call_ctx *cc = malloc(sizeof(*cc));

    if (cc == NULL || !khlink_up(r->t->link)) {
        free(cc);
        ipc_buf_free(b);
        holder_down(r, cont, flags);
        return -1;
    }
    *cc = (struct call_ctx){.r = r, .cont = cont, .flags = flags};
    r->calls++;
    if (((flags & SRV_CALL_CHANGES) ? khlink_call_untimed : khlink_call)(r->t->link, b, call_done, cc) != 0) {
        r->calls--;
        free(cc);
        holder_down(r, cont, flags);
        return -1;
    }
    return 0;
}

static void authz_answer(struct srv_req *r, const ipc_msg *a)
{
    if (ipc_u32(a, IPC_T_STATUS, 500) == 204)
        srv_reply_err(r, r->ctx);
    else
        srv_reply_holder_error(r, a);
}

void srv_authz_then(struct srv_req *r, enum ipc_action action, const srv_err *e)
{
    srv_err *copy = malloc(sizeof(*copy));
    ipc_buf b;

    if (copy == NULL) {
        srv_reply_err(r, e);
        return;
    }
    *copy = *e;
    if (r->ctx_free != NULL)
        r->ctx_free(r->ctx);
    r->ctx = copy;
    r->ctx_free = free;
    ipc_buf_init(&b);
    srv_ipc_begin(r, &b, IPC_AUTHZ);
    ipc_put_u32(&b, IPC_T_ACTION, action);
    if (r->param[0][0] != '\0')
        ipc_put_str(&b, IPC_T_GROUP, r->param[0]);
    (void)srv_call(r, &b, authz_answer, 0);
}

struct view_ctx {
    void (*next)(struct srv_req *r);
};

static void view_answer(struct srv_req *r, const ipc_msg *a)
{
    struct view_ctx *vc = r->ctx;
    void (*next)(struct srv_req *) = vc->next;
    uint32_t status = ipc_u32(a, IPC_T_STATUS, 500);
    gview *v = NULL;

    free(r->ctx);
    r->ctx = NULL;
    r->ctx_free = NULL;
    if (status != 200) {
        srv_reply_holder_error(r, a);
        return;
    }
    if (ipc_u32(a, IPC_T_FLAGS, 0) & IPC_FLAG_NOT_MODIFIED) {
        v = gviews_get(r->t->views, r->param[0], 0, true);
        if (v == NULL) { /* evicted meanwhile: ask again in full */
            srv_with_view(r, false, next);
            return;
        }
        v->gen = ipc_u64(a, IPC_T_GEN, v->gen);
        gview_ref(v);
    } else {
        if (gview_parse(a, &v) != 0) {
            srv_reply_error(r, 500, "internal", "unusable group data from the key holder");
            return;
        }
        gviews_put(r->t->views, gview_ref(v));
    }
    gview_unref(r->view);
    r->view = v;
    r->view_confirmed = true;
    next(r);
}

void srv_with_view(struct srv_req *r, bool fresh, void (*next)(struct srv_req *r))
{
    const char *name = r->param[0];
    gview *have;
    ipc_buf b;

    if (!gs_valid_group_name(name)) {
        srv_reply_error(r, 404, "not_found", "no such group");
        return;
    }
    (void)srv_peer(r); /* while the connection is surely there */
    have = gviews_get(r->t->views, name, khlink_gen(r->t->link), fresh);
    if (have != NULL && !fresh) {
        gview_unref(r->view);
        r->view = gview_ref(have);
        next(r);
        return;
    }
    struct view_ctx *vc = malloc(sizeof(*vc));
    if (vc == NULL) {
        srv_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    vc->next = next;
    r->ctx = vc;
    r->ctx_free = free;
    ipc_buf_init(&b);
    srv_ipc_begin(r, &b, IPC_VIEW);
    ipc_put_str(&b, IPC_T_GROUP, name);
    /* Discovery asks for the key transports (a token probe, so only
     * there), and takes "not modified" only for a view that has them: one
     * fetched for another request, or whose key transports the token could
     * not tell, is fetched whole. */
    int discovery = r->ep == EP_DISCOVERY;
    if (discovery)
        ipc_put_u32(&b, IPC_T_FLAGS, IPC_FLAG_KEY_TRANSPORTS);
    if (have != NULL && (!discovery || have->key_transports != 0))
        ipc_put_u64(&b, IPC_T_GEN, have->gen);
    (void)srv_call(r, &b, view_answer, 0);
}

/* ---- routing ------------------------------------------------------------- */

#define MAX_SEGMENTS 6
#define MAX_SEGMENT_LEN 256 /* decoded: an address of 254 octets fits */
/* As sent: every decoded octet may be written as %XX (a member address
 * holds atext such as % # ? { } that a URL path must encode). */
#define MAX_SEGMENT_RAW (3 * MAX_SEGMENT_LEN)

/* The path of the request target, raw (not decoded), and its length; NULL
 * if the target names none this server serves. Origin form (RFC 9112
 * 3.2.1) is read from the target as sent, up to its query: libevent's URI
 * parser reads a target beginning with "//" as a host and a path, so
 * "//evil/v1/groups/eng" and "///v1/groups/eng" were served as
 * /v1/groups/eng, and a proxy in front that allows or refuses by path saw
 * another path than the one served (an empty first segment here, a 404
 * as anywhere else). Absolute form (3.2.2: "https://host/v1/...") is taken
 * with an http or https scheme and a host (not empty), not looked at; any other scheme
 * ("foo:/v1/groups/eng") names nothing. */
static const char *target_path(struct evhttp_request *req, size_t *len)
{
    const char *target = evhttp_request_get_uri(req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *scheme = uri ? evhttp_uri_get_scheme(uri) : NULL;
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    const char *host = uri ? evhttp_uri_get_host(uri) : NULL;

    if (target == NULL)
        return NULL;
    if (target[0] == '/') {
        *len = strcspn(target, "?#");
        return target;
    }
    /* an empty host ("http:///v1/...", "http://@/...") is no http URI
     * (RFC 9110 4.2.1), and a WHATWG URL parser in a proxy reads the
     * first segment as the host: another path than this one */
    if (scheme == NULL || (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0) || host == NULL ||
        host[0] == '\0' || path == NULL)
        return NULL;
    *len = strlen(path);
    return path;
}

/* Is every '%' in the n bytes at s followed by two hex digits (RFC 3986
 * 2.1)? evhttp_uridecode keeps any other '%' as it is, so "a%ZZ" would
 * name "a%ZZ" while "a%41" names "aA": which one a client that forgot to
 * send '%' as %25 reached would depend on the bytes after it. */
static int pct_encoding_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == '%' && (n - i < 3 || !isxdigit((unsigned char)s[i + 1]) || !isxdigit((unsigned char)s[i + 2])))
            return 0;
    return 1;
}

/* Splits the request path into percent-decoded segments; -1 if malformed,
 * -2 for a segment holding an encoded '/' (%2F): never taken as a part of
 * a name (as Apache's AllowEncodedSlashes Off, a proxy in front may
 * decode it into a path of other segments), and no group name or member
 * address has one (the address rule refuses '/'); -3 for a '%' not
 * followed by two hex digits (a 400: the request target is not a URI). */
static int split_path(struct evhttp_request *req, char seg[MAX_SEGMENTS][MAX_SEGMENT_LEN + 1], size_t *n)
{
    size_t plen = 0;
    const char *path = target_path(req, &plen);

    *n = 0;
    if (path == NULL || plen == 0 || path[0] != '/')
        return -1;
    const char *p = path + 1, *end = path + plen;
    while (p < end) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        size_t len = slash ? (size_t)(slash - p) : (size_t)(end - p);
        if (*n >= MAX_SEGMENTS || len == 0 || len > MAX_SEGMENT_RAW)
            return -1;
        if (!pct_encoding_ok(p, len))
            return -3;
        char raw[MAX_SEGMENT_RAW + 1];
        memcpy(raw, p, len);
        raw[len] = '\0';
        size_t dl = 0;
        char *dec = evhttp_uridecode(raw, 0, &dl);
        if (dec != NULL && dl == strlen(dec) && strchr(dec, '/') != NULL) {
            free(dec);
            return -2;
        }
        if (dec == NULL || dl != strlen(dec) || dl == 0 || dl > MAX_SEGMENT_LEN) {
            free(dec);
            return -1;
        }
        util_strlcpy(seg[*n], dec, MAX_SEGMENT_LEN + 1);
        free(dec);
        (*n)++;
        p += len;
        if (p < end && *p == '/')
            p++;
    }
    return 0;
}

/* Does pattern match the segments? The '*' segments go to r->param. */
static int route_match(const char *pattern, char seg[MAX_SEGMENTS][MAX_SEGMENT_LEN + 1], size_t n,
                       struct srv_req *r)
{
    const char *p = pattern + 1;
    size_t i = 0, np = 0;

    while (*p != '\0') {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (i >= n)
            return 0;
        if (len == 1 && p[0] == '*') {
            if (np < SRV_MAX_PARAMS)
                util_strlcpy(r->param[np++], seg[i], sizeof(r->param[0]));
        } else if (strlen(seg[i]) != len || strncmp(seg[i], p, len) != 0) {
            return 0;
        }
        i++;
        p += len;
        if (*p == '/')
            p++;
    }
    return i == n;
}

enum evhttp_cmd_type srv_command(const struct srv_req *r)
{
    return r->head ? EVHTTP_REQ_GET : evhttp_request_get_command(r->req);
}

static unsigned method_bit(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET: return SRV_GET;
    case EVHTTP_REQ_POST: return SRV_POST;
    case EVHTTP_REQ_PUT: return SRV_PUT;
    case EVHTTP_REQ_DELETE: return SRV_DELETE;
    default: return SRV_OTHER; /* OPTIONS, PATCH: matched by SRV_ANY only */
    }
}

static void method_not_allowed(struct srv_req *r, unsigned methods)
{
    static const char *const names[] = {"GET", "POST", "PUT", "DELETE"};
    char allow[64] = "";

    for (unsigned i = 0; i < 4; i++)
        if (methods & (1u << i)) {
            if (allow[0] != '\0')
                strncat(allow, ", ", sizeof(allow) - strlen(allow) - 1);
            strncat(allow, names[i], sizeof(allow) - strlen(allow) - 1);
            if (i == 0) /* every GET answers HEAD too */
                strncat(allow, ", HEAD", sizeof(allow) - strlen(allow) - 1);
        }
    evhttp_add_header(evhttp_request_get_output_headers(r->req), "Allow", allow);
    srv_reply_error(r, 405, "method_not_allowed", "use %s", allow);
}

static void dispatch(struct srv_req *r)
{
    char seg[MAX_SEGMENTS][MAX_SEGMENT_LEN + 1];
    size_t n = 0;
    unsigned listener = r->certsrv ? SRV_CERTSRV : SRV_API;
    unsigned m = method_bit(srv_command(r));

    int split = split_path(r->req, seg, &n);
    if (split == 0)
        for (size_t i = 0; i < r->srv->nroutes; i++) {
            const struct srv_route *rt = &r->srv->routes[i];
            if (!(rt->listener & listener) || !route_match(rt->pattern, seg, n, r))
                continue;
            r->ep = rt->ep;
            if (!(rt->methods & m))
                method_not_allowed(r, rt->methods);
            else
                rt->handler(r);
            return;
        }
    /* still 404 (no resource has such a path), saying why: a script that
     * percent-encodes a whole address sees what to change */
    if (split == -2)
        srv_reply_error(r, 404, "not_found",
                        "no such resource: a path segment holds an encoded / (%%2F), which no group name or member "
                        "address has");
    else if (split == -3)
        srv_reply_error(r, 400, "bad_request",
                        "a malformed percent-encoding in the path: a %% not followed by two hex digits (send a %% "
                        "as %%25)");
    else
        srv_reply_error(r, 404, "not_found", "no such resource");
}

int srv_routes_set(struct srv *s, const struct srv_route *const *tables, const size_t *counts, size_t ntables)
{
    size_t total = 0;
    struct srv_route *all;

    for (size_t i = 0; i < ntables; i++)
        total += counts[i];
    if ((all = calloc(total ? total : 1, sizeof(*all))) == NULL)
        return -1;
    total = 0;
    for (size_t i = 0; i < ntables; i++)
        for (size_t k = 0; k < counts[i]; k++)
            all[total++] = tables[i][k];
    free((void *)s->routes);
    s->routes = all;
    s->nroutes = total;
    return 0;
}

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

/* Whether the request has a header whose name is not an RFC 9110 token.
 * libevent keeps "Content-Length " (white space before the colon) as a
 * name of its own, so such a header frames nothing here while a proxy
 * that trims it frames the body by it; RFC 9112 5.1: reject with 400. */
static bool bad_header_name(struct evhttp_request *req)
{
    static const char tchar[] = "!#$%&'*+-.^_`|~0123456789"
                                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);

    for (struct evkeyval *kv = h ? h->tqh_first : NULL; kv != NULL; kv = kv->next.tqe_next)
        if (kv->key[0] == '\0' || kv->key[strspn(kv->key, tchar)] != '\0')
            return true;
    return false;
}

/* Why the request's framing is ambiguous (a request-smuggling precondition
 * behind a proxy that reads it another way), or NULL. libevent frames the
 * body as chunked only when the first Transfer-Encoding is exactly
 * "chunked" (then ignoring Content-Length), else by the first
 * Content-Length, whatever coding is named, read by strtoll. RFC 7230
 * 3.3.3: reject, and close. */
static const char *ambiguous_framing(struct evhttp_request *req)
{
    unsigned cl = header_count(req, "Content-Length"), te = header_count(req, "Transfer-Encoding");
    const char *coding = evhttp_find_header(evhttp_request_get_input_headers(req), "Transfer-Encoding");
    const char *length = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Length");

    if (bad_header_name(req))
        return "a header name with white space or a character not allowed in it";
    if (cl > 1)
        return "more than one Content-Length header";
    /* libevent reads the length with strtoll, which takes "+5" (and "-0")
     * as a number; RFC 9110 8.6 allows digits only, and a proxy in front
     * may frame such a body otherwise (or not at all). */
    if (length != NULL && (length[0] == '\0' || strspn(length, "0123456789") != strlen(length)))
        return "a Content-Length that is not a plain decimal number";
    if (te > 1 || (coding != NULL && strcasecmp(coding, "chunked") != 0))
        return "a Transfer-Encoding other than one \"chunked\"";
    if (te > 0 && cl > 0)
        return "both Content-Length and Transfer-Encoding";
    /* HTTP/1.0 has no Transfer-Encoding: a proxy that speaks it frames
     * such a body by its Content-Length or not at all, where libevent reads
     * it chunked. RFC 9112 6.1: the framing is faulty; close. */
    if (te > 0 && req->major == 1 && req->minor == 0)
        return "a Transfer-Encoding in an HTTP/1.0 request";
    /* libevent reads no body after a HEAD: the bytes of its body would be
     * read as the next request on the connection, where a proxy frames
     * them as the HEAD's body (RFC 9112 6.3: the framing does not depend
     * on the method), a request smuggled past it. */
    if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD &&
        (te > 0 || (length != NULL && length[strspn(length, "0")] != '\0')))
        return "a HEAD request with a body";
    return NULL;
}

/* Why the request's Host is not as RFC 9112 3.2 requires, or NULL: an
 * HTTP/1.1 request must carry exactly one Host header (libevent answers
 * one without), and no request may carry two. The server answers the
 * same whatever the host, but a proxy in front or a virtual host would
 * route such a request by a host it guessed. */
static const char *bad_host(struct evhttp_request *req)
{
    /* RFC 3986 3.2.2 reg-name (with pct-encoded), and inside an
     * IP-literal's brackets the colons of IPv6 too. */
    static const char reg[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=%";
    static const char lit[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:";
    unsigned n = header_count(req, "Host");
    const char *v = evhttp_find_header(evhttp_request_get_input_headers(req), "Host");
    size_t k;

    if (n > 1)
        return "more than one Host header";
    if (n == 0 && (req->major > 1 || (req->major == 1 && req->minor >= 1)))
        return "an HTTP/1.1 request without a Host header";
    if (v == NULL)
        return NULL;
    /* libevent strips the spaces before a value, not a tab, which RFC
     * 9110 5.6.3 allows there too (OWS); after it a tab is stripped. */
    v += strspn(v, " \t");
    /* RFC 9112 3.2: a Host whose value is not uri-host [":" port] is a
     * 400 too ("a b", "x/y", "x@y"); an empty one is allowed. */
    if (v[0] == '[') {
        k = 1 + strspn(v + 1, lit);
        if (v[k] != ']')
            return "a Host header that is not a host name and port";
        k++;
    } else {
        k = strspn(v, reg);
    }
    if (v[k] == ':')
        k += 1 + strspn(v + k + 1, "0123456789");
    return v[k] == '\0' ? NULL : "a Host header that is not a host name and port";
}

/* Why the request target as sent is not one (RFC 9112 3.2), or NULL.
 * libevent takes the request line's last space as the one before the
 * version, so "GET /v1/groups/eng?a b HTTP/1.1" was served with the target
 * "/v1/groups/eng?a b"; 3.2 says not to correct an invalid request line
 * and process it (it may be made to pass a filter in front), so white
 * space or a control character in the target is a 400. */
static const char *bad_target(struct evhttp_request *req)
{
    const char *t = evhttp_request_get_uri(req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);

    for (const char *p = t; p != NULL && *p != '\0'; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p == 0x7f)
            return "a request target with white space or a control character";
    /* No form of request target has a fragment (RFC 9112 3.2): libevent
     * serves "/v1/groups/eng#x" as /v1/groups/eng, where a proxy may take
     * the # as part of the path. A # in a member address is sent as %23. */
    if (t != NULL && strchr(t, '#') != NULL)
        return "a request target with a fragment (#)";
    /* userinfo in an http(s) URI is to be treated as an error (RFC 9110
     * 4.2.4): "https://good@evil/..." names the host after the @. (With
     * an empty host, "https://@/...", the target names nothing: 404 by
     * target_path.) */
    const char *host = uri != NULL ? evhttp_uri_get_host(uri) : NULL;
    if (t != NULL && t[0] != '/' && host != NULL && host[0] != '\0' && evhttp_uri_get_userinfo(uri) != NULL)
        return "a request target with userinfo (user@)";
    return NULL;
}

/* Why the request's HTTP version cannot be answered, or NULL. libevent
 * reads the request line's version with sscanf("HTTP/%d.%d") and refuses
 * only a major version over 1, and its answer repeats the numbers read:
 * "HTTP/1.-57 200 OK" to "HTTP/1.1111111111111111111", "HTTP/1.2 200 OK"
 * to HTTP/1.2, status lines no client reads (RFC 9112 2.3: one digit
 * each). A later HTTP/1 minor version is answered as HTTP/1.1 (RFC 9110
 * 2.5); any other version is refused, its answer in HTTP/1.1. */
static const char *bad_version(struct evhttp_request *req)
{
    if (req->major == 1 && req->minor >= 0 && req->minor <= 9) {
        if (req->minor > 1)
            req->minor = 1;
        return NULL;
    }
    req->major = 1;
    req->minor = 1;
    return "an HTTP version other than HTTP/1.0 or HTTP/1.1";
}

/* Request ids are not secret (the client sees them) but must be unique
 * (the audit log is searched by them) and must not tell one client how
 * many requests others made. RAND_bytes for each one cost 3 % of the
 * network process's CPU (the DRBG's lock, a getpid for its fork check, a
 * cipher call): each thread draws random bytes for 64 ids at once
 * instead. "0" while none could be drawn, as before. */
static void next_request_id(struct srv_thread *t, char *out)
{
    if (t->reqid_left == 0) {
        if (RAND_bytes(t->reqid_pool, (int)sizeof(t->reqid_pool)) != 1) {
            util_strlcpy(out, "0", 2);
            return;
        }
        t->reqid_left = sizeof(t->reqid_pool);
    }
    t->reqid_left -= 8;
    util_hex(t->reqid_pool + t->reqid_left, 8, out);
}

static void handle(struct evhttp_request *req, struct srv_thread *t, int certsrv)
{
    struct srv_req *r = calloc(1, sizeof(*r));

    if (r == NULL) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    *r = (struct srv_req){.t = t,
                          .srv = t->srv,
                          .req = req,
                          .certsrv = certsrv,
                          .head = evhttp_request_get_command(req) == EVHTTP_REQ_HEAD,
                          .start = util_monotonic_s()};
    t->requests++;
    /* libevent marks a request in absolute form with an http(s) URL as
     * one to a proxy, and then closes the connection after the answer
     * (without saying so in a Connection header) unless Proxy-Connection
     * says keep-alive: a request pipelined behind it was never answered.
     * This is no proxy: absolute form is served as its path (RFC 9112
     * 3.2.2), with the connection's keep-alive as for any request. */
    req->flags &= ~EVHTTP_PROXY_REQUEST;
    int over_budget = conn_in_service(req);
    next_request_id(t, r->id);
    log_set_request_id(r->id);
    int fold, chunk_bad;
    const char *ambiguous =
        conn_head_had_nul(req, &fold, &chunk_bad) ? "a NUL byte in the request head" : ambiguous_framing(req);
    /* libevent joins a line that begins with white space to the header
     * before it; a proxy that takes it as a header of its own (" Content-
     * Length: 5") frames the body otherwise. RFC 9112 5.2 allows a 400. */
    if (ambiguous == NULL && fold)
        ambiguous = "a header line folded onto the next (obs-fold)";
    if (ambiguous == NULL && chunk_bad)
        ambiguous = "a chunked body framed otherwise than by bare hexadecimal chunk sizes and CRLF";
    const char *version = bad_version(req);
    if (ambiguous == NULL)
        ambiguous = version != NULL ? version : bad_host(req);
    if (ambiguous == NULL)
        ambiguous = bad_target(req);
    if (ambiguous != NULL) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        srv_reply_error(r, 400, "bad_request", "%s", ambiguous);
    } else if (over_budget) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        srv_reply_retry(r, 503, 1, "too_many_connections", "the server is at its connection limit");
    } else
        dispatch(r);
    req_settle(r);
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
    enum srv_lindex which = certsrv ? SRV_LI_CERTSRV : SRV_LI_API;

    *bound = NULL;
    if (http == NULL)
        return NULL;
    t->lctx[which].t = t;
    t->lctx[which].which = which;
#ifdef GS_FUZZING
    (void)make_bev; /* plain HTTP */
#else
    evhttp_set_bevcb(http, make_bev, &t->lctx[which]);
#endif
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

    /* Requests waiting for the key holder finish; then only connections
     * still sending a request (or idle keep-alives) remain. */
    if ((atomic_load(&t->nconns) > 0 || t->requests > 0) && util_monotonic_s() < t->drain_deadline) {
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
    t->drain_deadline = util_monotonic_s() + 5.0;
    struct timeval tv = {0, 0};
    event_add(t->drain_ev, &tv);
}

static void relink_cb(evutil_socket_t fd, short what, void *arg)
{
    struct srv_thread *t = arg;
    int nfd = atomic_exchange(&t->new_link_fd, -1);
    (void)fd; (void)what;

    if (nfd < 0)
        return;
    /* A new key holder: what the old one said about groups may be stale. */
    gviews_flush(t->views);
    if (khlink_attach(t->link, nfd) != 0)
        log_error("cannot use the new link to the key holder thread=%u", t->index);
}

void srv_thread_relink(struct srv *s, unsigned i, int fd)
{
    if (s->threads == NULL || i >= s->nthreads) {
        close(fd);
        return;
    }
    int old = atomic_exchange(&s->threads[i].new_link_fd, fd);
    if (old >= 0)
        close(old);
    event_active(s->threads[i].relink_ev, 0, 0);
}

static pthread_mutex_t go_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t go_cv = PTHREAD_COND_INITIALIZER;
static int go_flag;

static void *thread_main(void *arg)
{
    struct srv_thread *t = arg;

    /* Wait until the process is sandboxed (srv_threads_run). */
    pthread_mutex_lock(&go_mu);
    while (!go_flag)
        pthread_cond_wait(&go_cv, &go_mu);
    pthread_mutex_unlock(&go_mu);
    khlink_set_current(t->link);
    loop_thread = t;
    event_base_dispatch(t->base);
    return NULL;
}

/* An event loop whose epoll changes are batched: a connection's read and
 * write interest goes on and off several times per request (bufferevent,
 * evhttp), and the changelist turns that into at most one epoll_ctl per
 * fd per loop iteration instead of one per toggle. */
static struct event_base *loop_base_new(void)
{
    struct event_config *cfg = event_config_new();
    struct event_base *base = NULL;

    if (cfg == NULL)
        return NULL;
    if (event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST) == 0)
        base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    return base;
}

/* Each failure is logged with its step and the system's reason: out of
 * descriptors, the network process's start said only that its threads
 * could not be set up. */
static int thread_init(struct srv *s, struct srv_thread *t, unsigned i, int link_fd)
{
    const char *what = "event base";

    t->srv = s;
    t->index = i;
    atomic_init(&t->nconns, 0);
    atomic_init(&t->new_link_fd, -1);
    atomic_init(&t->accept_paused, 0);
    atomic_init(&t->resume_asked, 0);
    if ((t->views = gviews_new()) == NULL || (t->base = loop_base_new()) == NULL)
        goto fail;
    what = "key holder link";
    if ((t->link = khlink_new(t->base, s->timeout)) == NULL || khlink_attach(t->link, link_fd) != 0) {
        link_fd = -1; /* attach closed it */
        goto fail;
    }
    link_fd = -1;
    khlink_set_queue_max(t->link, s->cfg != NULL ? s->cfg->server.keyholder_queue_max : 0);
    what = "API listener";
    if ((t->http = make_http(t, s->listen_fd, 0, &t->bound)) == NULL)
        goto fail;
    what = "certificate server listener";
    if (s->certsrv_fd >= 0 && (t->certhttp = make_http(t, s->certsrv_fd, 1, &t->certbound)) == NULL)
        goto fail;
    what = "events";
    t->shutdown_ev = event_new(t->base, -1, 0, shutdown_cb, t);
    t->drain_ev = evtimer_new(t->base, drain_cb, t);
    t->tick_ev = event_new(t->base, -1, EV_PERSIST, tick_cb, t);
    t->relink_ev = event_new(t->base, -1, 0, relink_cb, t);
    t->resume_ev = event_new(t->base, -1, 0, resume_cb, t);
    if (t->shutdown_ev == NULL || t->drain_ev == NULL || t->tick_ev == NULL || t->relink_ev == NULL ||
        t->resume_ev == NULL)
        goto fail;
    struct timeval tick = {0, 250000};
    event_add(t->tick_ev, &tick);
    return 0;
fail:
    log_error("an event-loop thread could not be set up thread=%u what=\"%s\" err=\"%s\"", i, what,
              strerror(errno));
    if (link_fd >= 0)
        close(link_fd);
    return -1;
}

static void thread_free(struct srv_thread *t)
{
    /* Calls still waiting for the key holder fail (503) and free their
     * requests; then the HTTP side goes. */
    khlink_free(t->link);
    t->link = NULL;
    if (t->http != NULL)
        evhttp_free(t->http);
    if (t->certhttp != NULL)
        evhttp_free(t->certhttp);
    linger_free_all(t); /* after the connections, before the base */
    struct event *evs[] = {t->shutdown_ev, t->drain_ev, t->tick_ev, t->relink_ev, t->resume_ev};
    for (size_t i = 0; i < GS_ARRAY_LEN(evs); i++)
        if (evs[i] != NULL)
            event_free(evs[i]);
    int fd = atomic_exchange(&t->new_link_fd, -1);
    if (fd >= 0)
        close(fd);
    if (t->base != NULL)
        event_base_free(t->base);
    gviews_free(t->views);
    peer_spki_free(t);
    memset(t, 0, sizeof(*t));
}

/* The descriptors the listeners' budgets may take: per connection its
 * socket (also for the few admitted past a full listener), the lingering
 * closes of every thread,
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
            need += (rlim_t)(s->budget[i] + s->budget[i] / 16 + 1);
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

int srv_threads_init(struct srv *s, const int *link_fds)
{
    unsigned i;

    raise_fd_limit(s);
    tls_set_conn_free_cb(conn_freed);
    if ((s->threads = calloc(s->nthreads, sizeof(*s->threads))) == NULL) {
        log_error("the event-loop threads could not be set up err=\"out of memory\"");
        goto fail_fds;
    }
    for (i = 0; i < s->nthreads; i++)
        if (thread_init(s, &s->threads[i], i, link_fds[i]) != 0) {
            i++;
            goto fail;
        }
    atomic_store(&s->accepting, (int)s->nthreads);
    return 0;
fail:
    for (unsigned k = i; k < s->nthreads; k++)
        close(link_fds[k]);
    for (unsigned k = 0; k < s->nthreads; k++)
        thread_free(&s->threads[k]);
    free(s->threads);
    s->threads = NULL;
    return -1;
fail_fds:
    for (i = 0; i < s->nthreads; i++)
        close(link_fds[i]);
    return -1;
}

int srv_threads_run(struct srv *s)
{
    sigset_t all, old;
    unsigned started = 0;

    /* Workers never take signals: the main thread's loop handles them. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (; started < s->nthreads; started++)
        if (pthread_create(&s->threads[started].tid, NULL, thread_main, &s->threads[started]) != 0)
            break;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (started == s->nthreads)
        return 0;
    /* Some threads did not start: free those, stop the started ones. */
    for (unsigned i = started; i < s->nthreads; i++)
        thread_free(&s->threads[i]);
    s->nthreads = started;
    srv_threads_go();
    srv_threads_stop(s);
    return -1;
}

void srv_threads_go(void)
{
    pthread_mutex_lock(&go_mu);
    go_flag = 1;
    pthread_cond_broadcast(&go_cv);
    pthread_mutex_unlock(&go_mu);
}

void srv_threads_free(struct srv *s)
{
    for (unsigned i = 0; s->threads != NULL && i < s->nthreads; i++)
        thread_free(&s->threads[i]);
    free(s->threads);
    s->threads = NULL;
}

void srv_threads_stop(struct srv *s)
{
    if (s->threads == NULL)
        return;
    atomic_store(&s->shutting_down, 1);
    srv_threads_go(); /* threads still at the gate leave at once */
    for (unsigned i = 0; i < s->nthreads; i++)
        event_active(s->threads[i].shutdown_ev, 0, 0);
    for (unsigned i = 0; i < s->nthreads; i++)
        pthread_join(s->threads[i].tid, NULL);
    for (unsigned i = 0; i < s->nthreads; i++)
        thread_free(&s->threads[i]);
    free(s->threads);
    s->threads = NULL;
}
