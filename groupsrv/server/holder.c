/*
 * holder.c: calls to the key holder over one link (holder.h).
 *
 * Pending calls are kept in the order they were sent and found by cookie
 * when an answer comes; a thread has at most a few hundred in flight (one
 * per connection), so a linear search costs less than a table would (the
 * timeouts too: untimed calls may come before timed ones).
 *
 * What the link holds for the key holder is bounded (holder.h): a frame
 * stays with its call until the socket has room for it (out holds little
 * more than the socket takes), so a call that times out before its frame
 * left is never sent; the frames waiting so are capped in bytes and
 * number; and once a call timed out with nothing at all read from the key
 * holder since it was made, the link counts as stalled and refuses new
 * calls at once but a probe (one at a time, one per timeout), until the
 * key holder answers again.
 * Before this a stopped key holder had every request's frame kept for it
 * (memory grew with the request rate), and on SIGCONT it did the token
 * work for thousands of requests answered 503 long before.
 */
#include "holder.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "log.h"
#include "metrics.h"
#include "util.h"

struct call {
    struct call *next, *prev;
    uint64_t cookie;
    uint32_t type;     /* the request's: its answer is of type | IPC_REPLY */
    double made;       /* when the call was made (monotonic) */
    double deadline;   /* 0: untimed */
    khlink_cb cb;
    void *arg;
    ipc_buf frame;     /* the frame while it has not gone to out (len 0 after) */
};

/* Frames not yet handed to out: at most this many per link (the bytes:
 * [server] keyholder_queue_max). */
#define UNSENT_FRAMES_MAX 4096
/* out is topped up from the waiting frames to about this much, no more:
 * what went to out is sent even if its call times out meanwhile. */
#define OUT_LOW (64u * 1024)

struct khlink {
    struct event_base *base;
    int fd;                       /* -1 while down */
    struct event *rev, *wev;      /* readable; writable while out holds bytes */
    struct event *flush;          /* writes out at the end of the loop's turn */
    int flush_pending;
    struct evbuffer *in, *out;    /* partial frames read; what the socket did not take yet */
    struct event *tick;
    struct call *head, *tail;     /* pending, oldest first */
    uint64_t next_cookie, gen;
    unsigned timeout_s;
    size_t queue_max;             /* bytes of waiting frames and out together */
    struct call *unsent;          /* the first call whose frame waits (later ones wait too) */
    size_t unsent_bytes;
    unsigned unsent_frames;
    long long counted;            /* bytes this link counts in /metrics now */
    double last_read;             /* when an answer was last read (monotonic) */
    bool stalled;                 /* a call timed out with nothing read since it was made */
    uint64_t probe;               /* cookie of the one call let through while stalled (0: none) */
    double probe_next;            /* no probe before this (one per [server] timeout) */
    unsigned char *sync_payload;  /* the last synchronous answer's bytes */
    size_t sync_len;
};

static __thread khlink *current_link;
/* Told when a key holder breaks the protocol on a link (khlink_on_broken). */
static void (*broken_fn)(void *arg, const char *why);
static void *broken_arg;

void khlink_on_broken(void (*fn)(void *arg, const char *why), void *arg)
{
    broken_fn = fn;
    broken_arg = arg;
}

void khlink_set_current(khlink *l) { current_link = l; }
khlink *khlink_current(void) { return current_link; }

/* Keeps the process-wide byte gauge in step with this link. */
static void count_queue(khlink *l)
{
    long long now = (long long)(l->unsent_bytes + (l->out != NULL ? evbuffer_get_length(l->out) : 0));

    metrics_khq_held(now - l->counted, 0);
    l->counted = now;
}

static void unlink_call(khlink *l, struct call *c)
{
    if (c == l->unsent)
        l->unsent = c->next;
    if (c->frame.len > 0) {
        /* Never sent: the key holder never hears of it. */
        l->unsent_bytes -= c->frame.len;
        l->unsent_frames--;
        metrics_khq_held(0, -1);
        ipc_buf_free(&c->frame);
        count_queue(l);
    }
    if (c->cookie == l->probe) {
        l->probe = 0;
        l->probe_next = util_monotonic_s() + l->timeout_s;
    }
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
}

static struct call *find_call(khlink *l, uint64_t cookie)
{
    for (struct call *c = l->head; c != NULL; c = c->next)
        if (c->cookie == cookie)
            return c;
    return NULL;
}

/* The request type of a finished frame (its header). */
static uint32_t frame_type(const ipc_buf *b)
{
    uint32_t type = 0, plen;
    uint64_t cookie;

    if (b->len >= IPC_HDR_LEN)
        (void)ipc_header(b->p, &type, &plen, &cookie);
    return type;
}

/* Whether an answer of type `answer` is one to a request of type
 * `request`. A second safeguard after the cookie: an answer meant for
 * another call (a key holder that answered a network process that was
 * replaced meanwhile, under that one's numbering, which this one uses
 * too) is never decoded as this call's, when its type says so.
 * IPC_REPLY alone is the key holder's refusal of a request whose type it
 * does not know (ipc.h; a key holder of another version): an error
 * status and nothing else, taken, so that the call ends (an untimed
 * call would wait for ever). */
static bool answers(uint32_t request, uint32_t answer)
{
    return answer == (request | IPC_REPLY) || answer == IPC_REPLY;
}

/* Every pending call fails (the callbacks may send new calls: they go to
 * whatever socket the link has by then). */
static void fail_all(khlink *l)
{
    struct call *c = l->head;

    /* The waiting frames go first (none is sent after this). */
    for (struct call *u = l->unsent; u != NULL; u = u->next)
        if (u->frame.len > 0) {
            l->unsent_bytes -= u->frame.len;
            l->unsent_frames--;
            metrics_khq_held(0, -1);
            ipc_buf_free(&u->frame);
        }
    l->unsent = NULL;
    l->probe = 0;
    count_queue(l);
    l->head = l->tail = NULL;
    while (c != NULL) {
        struct call *next = c->next;
        c->cb(c->arg, NULL);
        free(c);
        c = next;
    }
}

static void close_socket(khlink *l)
{
    if (l->fd < 0)
        return;
    event_del(l->rev);
    event_del(l->wev);
    event_free(l->rev);
    event_free(l->wev);
    l->rev = l->wev = NULL;
    close(l->fd);
    l->fd = -1;
    evbuffer_drain(l->in, evbuffer_get_length(l->in));
    evbuffer_drain(l->out, evbuffer_get_length(l->out));
}

static void down(khlink *l, const char *why)
{
    if (l->fd >= 0) {
        log_error("link to the key holder down reason=\"%s\"", why);
        close_socket(l);
    }
    l->gen = 0;
    l->stalled = false;
    fail_all(l);
}

/* The key holder sent what no key holder sends: the link is dropped, and
 * since only the supervisor makes links, the process is told (it ends, to
 * be started again with new ones). */
static void broken(khlink *l, const char *why)
{
    down(l, why);
    if (broken_fn != NULL)
        broken_fn(broken_arg, why);
}

/* One answer frame; 0, or -1 when it cannot be decoded (the key holder is
 * trusted to speak the protocol: the link is dropped). */
static int deliver(khlink *l, uint32_t type, uint64_t cookie, const unsigned char *payload, size_t len)
{
    ipc_msg m;
    struct call *c;

    if (!(type & IPC_REPLY) || ipc_decode(type, cookie, payload, len, &m) != IPC_OK)
        return -1;
    if (ipc_has(&m, IPC_T_GEN))
        l->gen = ipc_u64(&m, IPC_T_GEN, 0);
    /* Any answer, late ones too: the key holder takes work again. */
    l->last_read = util_monotonic_s();
    if (l->stalled)
        log_info("the key holder answers again: requests are passed on to it again");
    l->stalled = false;
    if ((c = find_call(l, cookie)) == NULL) {
        log_debug("late answer from the key holder dropped cookie=%llu", (unsigned long long)cookie);
        return 0;
    }
    if (!answers(c->type, type)) {
        /* Not this call's: it waits on for its own answer (or its
         * timeout, or the link going down). */
        log_error("an answer from the key holder of another type than its call dropped cookie=%llu type=%u "
                  "call_type=%u",
                  (unsigned long long)cookie, (unsigned)type, (unsigned)c->type);
        return 0;
    }
    unlink_call(l, c);
    c->cb(c->arg, &m);
    free(c);
    return 0;
}

static int read_frame(void *arg, uint32_t type, uint64_t cookie, unsigned char *payload, size_t len)
{
    khlink *l = arg;
    int fd = l->fd;
    int rc = deliver(l, type, cookie, payload, len);

    ipc_payload_free(payload, len);
    if (rc != 0) {
        broken(l, "malformed answer from the key holder");
        return 1;
    }
    return l->fd != fd; /* a callback replaced or closed the link */
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
    khlink *l = arg;
    int rc = ipc_ev_read_frames(fd, l->in, read_frame, l);
    (void)what;

    if (rc == IPC_OK)
        return;
    if (rc == IPC_E_CLOSED || rc == IPC_E_IO) {
        /* Whole answers may wait in the input ahead of the end: a
         * synchronous call read them with it (khlink_call_sync) and left
         * them here. The key holder sent them before it went (a REST
         * change it made, say): their calls get them, not a NULL. */
        unsigned char *payload;
        size_t len;
        uint32_t type;
        uint64_t cookie;
        while (l->fd == fd && ipc_ev_next(l->in, &type, &cookie, &payload, &len) == 1)
            if (read_frame(l, type, cookie, payload, len) != 0)
                return; /* broken, or a callback replaced or closed the link */
        if (l->fd != fd)
            return;
    }
    if (rc != IPC_E_CLOSED && rc != IPC_E_IO && rc != IPC_E_NOMEM) {
        broken(l, "unusable frame from the key holder");
        return;
    }
    down(l, rc == IPC_E_CLOSED ? "the key holder closed the link" : rc == IPC_E_IO ? "link error" : "out of memory");
}

/* Writes what out holds, as far as the socket takes it; the rest waits
 * for the socket to become writable. */
static void flush_out(khlink *l)
{
    if (l->fd < 0)
        return;
    for (;;) {
        /* Top out up from the waiting frames, in order. */
        while (l->unsent != NULL && evbuffer_get_length(l->out) < OUT_LOW) {
            struct call *c = l->unsent;
            size_t n = c->frame.len;
            l->unsent = c->next;
            if (n == 0)
                continue;
            if (ipc_ev_queue(l->out, &c->frame) != IPC_OK) {
                /* Not sent; its call times out (or the link goes down). */
                log_error("out of memory queueing a frame for the key holder");
            }
            l->unsent_bytes -= n;
            l->unsent_frames--;
            metrics_khq_held(0, -1);
        }
        count_queue(l);
        if (l->fd < 0 || evbuffer_get_length(l->out) == 0)
            return;
        size_t before = evbuffer_get_length(l->out);
        if (evbuffer_write(l->out, l->fd) < 0 && errno != EAGAIN && errno != EINTR) {
            down(l, "link error");
            return;
        }
        count_queue(l);
        if (evbuffer_get_length(l->out) > 0) {
            event_add(l->wev, NULL);
            return;
        }
        if (evbuffer_get_length(l->out) == before || l->unsent == NULL)
            return;
    }
}

/* Has flush_out run at the end of this loop turn. */
static void schedule_flush(khlink *l)
{
    if (!l->flush_pending) {
        l->flush_pending = 1;
        event_active(l->flush, EV_WRITE, 0);
    }
}

static void write_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd; (void)what;
    flush_out(arg);
}

/* Runs once per loop turn in which calls were made, after the events that
 * made them: their frames go out in one write, and wake the key holder
 * once. Not while the socket is full (write_cb flushes then). */
static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
    khlink *l = arg;
    (void)fd; (void)what;

    l->flush_pending = 0;
    if (l->wev == NULL || !event_pending(l->wev, EV_WRITE, NULL))
        flush_out(l);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    khlink *l = arg;
    double now = util_monotonic_s();
    (void)fd; (void)what;

    for (struct call *c = l->head, *next; c != NULL; c = next) {
        next = c->next;
        if (c->deadline == 0 || c->deadline > now)
            continue;
        bool sent = c->frame.len == 0 && c != l->unsent;
        unlink_call(l, c);
        if (!sent)
            metrics_khq_unsent();
        /* Nothing at all read from the key holder since this call was
         * made: it takes no work now (stopped, or every worker stuck in a
         * token call), or this was one slow request (a large batch at a
         * slow token) on an otherwise idle link while the key holder's
         * other workers are free. New calls are refused at once, but a
         * probe: the first goes on at once, so in the second case the next
         * client is served and its answer ends the stall; a stopped key
         * holder costs that one probe, then one per timeout (unlink_call). */
        if (l->last_read < c->made && !l->stalled) {
            l->stalled = true;
            l->probe_next = now;
            log_error("the key holder answered nothing in [server] timeout: requests are answered 503 at "
                      "once until it answers again timeout_s=%u",
                      l->timeout_s);
        }
        log_error("the key holder did not answer in time cookie=%llu sent=%s", (unsigned long long)c->cookie,
                  sent ? "yes" : "no");
        c->cb(c->arg, NULL); /* may make calls: they join the tail */
        free(c);
        next = l->head; /* the callback may have failed others (down) */
    }
}

khlink *khlink_new(struct event_base *base, unsigned timeout_s)
{
    khlink *l = calloc(1, sizeof(*l));
    struct timeval tv = {0, 250000};

    if (l == NULL)
        return NULL;
    l->fd = -1;
    l->base = base;
    if ((l->in = evbuffer_new()) == NULL || (l->out = evbuffer_new()) == NULL) {
        khlink_free(l);
        return NULL;
    }
    l->timeout_s = timeout_s ? timeout_s : 30;
    l->queue_max = KHLINK_QUEUE_MAX_DEFAULT;
    l->next_cookie = 1;
    if ((l->flush = event_new(base, -1, 0, flush_cb, l)) == NULL ||
        (l->tick = event_new(base, -1, EV_PERSIST, tick_cb, l)) == NULL || event_add(l->tick, &tv) != 0) {
        khlink_free(l);
        return NULL;
    }
    return l;
}

void khlink_set_queue_max(khlink *l, size_t bytes)
{
    if (l != NULL)
        l->queue_max = bytes > 0 ? bytes : KHLINK_QUEUE_MAX_DEFAULT;
}

void khlink_free(khlink *l)
{
    if (l == NULL)
        return;
    close_socket(l);
    fail_all(l);
    count_queue(l);
    if (l->tick != NULL)
        event_free(l->tick);
    if (l->flush != NULL)
        event_free(l->flush);
    if (l->in != NULL)
        evbuffer_free(l->in);
    if (l->out != NULL)
        evbuffer_free(l->out);
    ipc_payload_free(l->sync_payload, l->sync_len);
    free(l);
}

int khlink_attach(khlink *l, int fd)
{
    down(l, "replaced");
    if (evutil_make_socket_nonblocking(fd) != 0 ||
        (l->rev = event_new(l->base, fd, EV_READ | EV_PERSIST, read_cb, l)) == NULL ||
        (l->wev = event_new(l->base, fd, EV_WRITE, write_cb, l)) == NULL || event_add(l->rev, NULL) != 0) {
        if (l->rev != NULL)
            event_free(l->rev);
        if (l->wev != NULL)
            event_free(l->wev);
        l->rev = l->wev = NULL;
        close(fd);
        return -1;
    }
    l->fd = fd;
    l->last_read = util_monotonic_s();
    return 0;
}

bool khlink_up(const khlink *l) { return l != NULL && l->fd >= 0; }
uint64_t khlink_gen(const khlink *l) { return l != NULL ? l->gen : 0; }
double khlink_last_read(const khlink *l) { return l != NULL ? l->last_read : 0; }

/* May a call be made now? Refuses (counted) when the frames waiting
 * would pass the bound, or while the link is stalled and a probe is out.
 * A frame alone is always let through, however large: a request the
 * configuration admits is never refused for its size. */
static bool admit(khlink *l, size_t len, double now, bool *probe)
{
    size_t held = l->unsent_bytes + evbuffer_get_length(l->out);

    *probe = false;
    if (l->stalled) {
        /* One probe at a time, and one per timeout: a client that asks
         * again after each 503 does not make every request a probe. */
        if (l->probe != 0 || now < l->probe_next) {
            metrics_khq_refused(1);
            return false;
        }
        *probe = true;
    }
    if (held > 0 && (l->unsent_frames >= UNSENT_FRAMES_MAX || len > l->queue_max || held > l->queue_max - len)) {
        metrics_khq_refused(0);
        return false;
    }
    return true;
}

static int call_add(khlink *l, ipc_buf *b, bool timed, khlink_cb cb, void *arg)
{
    struct call *c = NULL;
    int rc = -1;
    bool probe = false;
    double now = util_monotonic_s();

    if (l == NULL || l->fd < 0)
        goto out;
    /* A timed call carries its deadline: the key holder drops it unrun
     * once that is past (its client was answered 503 by then). */
    if (timed)
        ipc_put_u64(b, IPC_T_DEADLINE, ipc_deadline_ms(now + l->timeout_s));
    /* Checked before anything is allocated for the call. */
    if (ipc_end(b) != IPC_OK || !admit(l, b->len, now, &probe) || (c = calloc(1, sizeof(*c))) == NULL)
        goto out;
    c->cookie = l->next_cookie++;
    c->type = frame_type(b);
    c->made = now;
    c->deadline = timed ? now + l->timeout_s : 0;
    c->cb = cb;
    c->arg = arg;
    ipc_set_cookie(b, c->cookie);
    /* The frame waits with its call (moved, not copied: wiped once
     * written, as frames carry keys) until out has room: flush_out sends
     * it with the others of this loop turn. */
    c->frame = *b;
    ipc_buf_init(b);
    l->unsent_bytes += c->frame.len;
    l->unsent_frames++;
    metrics_khq_held(0, 1);
    if (l->unsent == NULL)
        l->unsent = c;
    if (probe)
        l->probe = c->cookie;
    schedule_flush(l);
    c->prev = l->tail;
    if (l->tail != NULL)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
    count_queue(l);
    c = NULL;
    rc = 0;
out:
    free(c);
    ipc_buf_free(b);
    return rc;
}

int khlink_call(khlink *l, ipc_buf *b, khlink_cb cb, void *arg) { return call_add(l, b, true, cb, arg); }
int khlink_call_untimed(khlink *l, ipc_buf *b, khlink_cb cb, void *arg) { return call_add(l, b, false, cb, arg); }

/* Writes out what waits in out, blocking until deadline, and reads what
 * the key holder sends meanwhile into in (the caller sorts it): the key
 * holder stops reading a link whose answers pile up unread (keyholder.c,
 * LINK_OUT_MAX), so a writer that waited for room without reading would
 * wait for the key holder while the key holder waits for it. */
static int flush_output(khlink *l, double deadline)
{
    while (evbuffer_get_length(l->out) > 0) {
        int n = evbuffer_write(l->out, l->fd);
        if (n > 0)
            continue;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        int left = (int)((deadline - util_monotonic_s()) * 1000);
        struct pollfd p = {.fd = l->fd, .events = POLLOUT | POLLIN};
        if (left <= 0 || poll(&p, 1, left) <= 0)
            return -1;
        if ((p.revents & POLLIN) != 0 && (n = evbuffer_read(l->in, l->fd, 65536)) <= 0 &&
            (n == 0 || (errno != EAGAIN && errno != EINTR)))
            return -1; /* closed: the read callback tells the loop */
    }
    return 0;
}

int khlink_call_sync(khlink *l, ipc_buf *b, int timeout_ms, ipc_msg *reply)
{
    uint64_t cookie;
    uint32_t call_type;
    int fd, rc = -1, found = 0;
    const char *why = "out of memory";
    struct evbuffer *in, *stash = NULL;
    double deadline = util_monotonic_s() + timeout_ms / 1000.0;

    memset(reply, 0, sizeof(*reply));
    ipc_payload_free(l->sync_payload, l->sync_len);
    l->sync_payload = NULL;
    l->sync_len = 0;
    /* Its deadline: a signature the handshake gave up on is not made later. */
    ipc_put_u64(b, IPC_T_DEADLINE, ipc_deadline_ms(deadline));
    if (l->fd < 0 || ipc_end(b) != IPC_OK || (stash = evbuffer_new()) == NULL) {
        why = "link down";
        goto out;
    }
    /* A stalled key holder would hold this thread (and every connection
     * on it) for the whole wait. */
    if (l->stalled) {
        metrics_khq_refused(1);
        why = "the key holder answers nothing (stalled)";
        goto out;
    }
    cookie = l->next_cookie++;
    ipc_set_cookie(b, cookie);
    call_type = frame_type(b);
    fd = l->fd;
    in = l->in;
    /* Behind what out holds (never overtaking it), but ahead of the
     * frames still waiting with their calls (l->unsent): answers go by
     * cookie, so no order among calls is owed. Never cut: what the
     * deadline leaves unwritten goes on in the loop (write_cb), its
     * answer then dropped as late. */
    if (ipc_ev_queue(l->out, b) != IPC_OK || flush_output(l, deadline) != 0) {
        if (evbuffer_get_length(l->out) > 0)
            event_add(l->wev, NULL);
        why = "write failed";
        goto out;
    }
    /* Read until our answer; complete frames of other calls move aside
     * and go back in front of the input afterwards, for the loop. */
    while (!found) {
        unsigned char hdr[IPC_HDR_LEN];
        uint32_t type, plen;
        uint64_t ck;
        while (evbuffer_get_length(in) >= IPC_HDR_LEN) {
            evbuffer_copyout(in, hdr, sizeof(hdr));
            if (ipc_header(hdr, &type, &plen, &ck) != IPC_OK) {
                why = "unusable frame";
                goto out;
            }
            if (evbuffer_get_length(in) - IPC_HDR_LEN < plen)
                break;
            /* Another call's, or of another type than this one's (not
             * its answer whatever its cookie: the loop drops it). */
            if (ck != cookie || !answers(call_type, type)) {
                evbuffer_remove_buffer(in, stash, IPC_HDR_LEN + (size_t)plen);
                continue;
            }
            unsigned char *p = NULL;
            size_t len = 0;
            if (ipc_ev_next(in, &type, &ck, &p, &len) != 1) {
                why = "unusable frame";
                goto out;
            }
            l->sync_payload = p;
            l->sync_len = len;
            if (!(type & IPC_REPLY) || ipc_decode(type, ck, p, len, reply) != IPC_OK) {
                why = "malformed answer";
                goto out;
            }
            if (ipc_has(reply, IPC_T_GEN))
                l->gen = ipc_u64(reply, IPC_T_GEN, 0);
            l->last_read = util_monotonic_s();
            found = 1;
            break;
        }
        if (found)
            break;
        int left = (int)((deadline - util_monotonic_s()) * 1000);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&p, 1, left) <= 0) {
            why = "no answer in time";
            goto out;
        }
        int n = evbuffer_read(in, fd, 65536);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            why = "the key holder closed the link";
            goto out;
        }
    }
    rc = 0;
out:
    ipc_buf_free(b);
    if (stash != NULL) {
        if (l->fd >= 0 && evbuffer_get_length(stash) > 0)
            evbuffer_prepend_buffer(l->in, stash); /* back in front, for the loop */
        evbuffer_free(stash);
    }
    /* What the input holds now (frames set aside, answers read past ours
     * or while writing) is the loop's: its read callback runs soon, not
     * only when the key holder next writes (on an idle link, never). */
    if (l->fd >= 0 && evbuffer_get_length(l->in) > 0)
        event_active(l->rev, EV_READ, 0);
    /* Frames that waited behind a full out go on in the loop. */
    if (l->fd >= 0 && l->unsent != NULL)
        schedule_flush(l);
    if (l->out != NULL)
        count_queue(l);
    if (rc != 0)
        log_error("synchronous call to the key holder failed reason=\"%s\"", why);
    return rc;
}
