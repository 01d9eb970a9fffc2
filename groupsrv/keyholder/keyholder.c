/*
 * keyholder.c: the key holder process (keyholder.h): its start (the audit
 * log, the token, the startup key audit, the [tls] key), its I/O loop
 * (one thread: the links to the network process and the control channel
 * from the supervisor), the hand-over of work to the fair queue and the
 * token workers (tokenq.h, khops.c), answers held until their audit
 * records are durable, and the shutdown that finishes queued work.
 *
 * The I/O loop never waits for the disk, nor for the token beyond a short
 * unwrap: frames are checked and queued, every frame of one read before
 * the workers are woken once (tokenq_wake: as many as the work needs).
 * When every worker sleeps and what one read queued is short unwraps
 * (measured under TQ_INLINE_US each), the loop runs them itself, in the
 * queue's fair order (tokenq_run_here): the hand-over to a worker and its
 * sleep cost more than such a job (docs/performance.md). An answer is sent once its
 * audit records are durable, by the worker that made it when it was the
 * only work (it syncs the log itself once the job is over), else by the
 * syncer thread after its next round; the answers one round made durable
 * leave in one write per link. A frame whose header cannot be trusted
 * closes its link (the stream is lost); every other bad frame gets an
 * error answer and the link goes on. Either way the process keeps
 * serving.
 */
#include "keyholder.h"

#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "kh.h"
#include "log.h"
#include "util.h"

struct kh_link {
    struct kh *kh;
    unsigned index;
    int fd;                    /* -1 while no network process is connected */
    /* Moves at every link_open (l->wmu held; the I/O loop alone writes
     * it): a job answers only the link as it was when its frame came
     * (kh_job's link_epoch). A worker or the syncer takes a job's link
     * under io->mu and sends under l->wmu; should the network process
     * be replaced between the two (killed, restarted, and its new link
     * opened in this same slot), the answer would reach the new process
     * under a cookie of the old one's numbering, which the new one also
     * uses: another client's answer. */
    unsigned long long epoch;
    struct event *rev, *wev;   /* readable (I/O loop); writable while out holds bytes */
    struct evbuffer *in;       /* what was read and is not a whole frame yet (I/O loop only) */
    pthread_mutex_t wmu;       /* writers: fd and out */
    struct evbuffer *out;      /* answers that could not be written at once */
    struct kh_job *jobs;       /* outstanding: queued, running, or held for the audit (io->mu) */
    size_t jobs_bytes;         /* the request frames of jobs, in bytes (io->mu): held to [server]
                                * keyholder_queue_max (handle_frame) */
    bool read_paused;          /* rev taken off while out is over LINK_OUT_MAX (I/O loop only) */
    bool dropping;             /* large answers dropped since out passed LINK_OUT_HARD (l->wmu) */
};

/* Answers waiting for the network process to read them, per link, over
 * which the key holder stops reading that link's requests until it has
 * read them down to half: a network process that sends and never reads
 * (compromised, or stuck) fills its socket, not the key holder's memory.
 * A working one reads every answer as it comes: far below this. */
#define LINK_OUT_MAX (4u << 20)
/* Stopping the reads bounds the requests taken, not what their answers
 * weigh: a (compromised) network process that queued [server]
 * keyholder_queue_max of small requests with large answers (member lists
 * of a large group, an exploder's rewrap to every member: a request of a
 * hundred bytes, an answer of hundreds of KiB) and read none had them
 * all held here, the key holder's queue cap (1024 jobs and more) times
 * the answer: gigabytes for a group of some thousand members. Past
 * LINK_OUT_HARD of unread answers, an answer of more than
 * LINK_ANSWER_SMALL is dropped (wiped; its request was done and audited,
 * and the network process answers it 503 at its timeout, as any answer
 * that came too late), so a link holds at most LINK_OUT_HARD, one large
 * answer and the small answers of the jobs it had queued. The answers a
 * network process waits for without a timeout (member changes, group
 * creation) are small, and a working network process reads every answer
 * as it comes: it never comes near. */
#define LINK_OUT_HARD (16u * LINK_OUT_MAX)
#define LINK_ANSWER_SMALL (16u << 10)

struct kh_io {
    struct event_base *base;
    struct kh_link *links;
    unsigned nlinks;
    int ctl_fd;
    ipc_reader ctl;
    struct event *ctl_ev, *term_ev, *int_ev, *hup_ev;
    struct event *stop_ev;     /* the deadline of a stop that waits for the network process */
    int stop_requested;
    pthread_mutex_t mu;        /* the links' job lists, the held list, the syncer's state */
    struct kh_job *held_head, *held_tail; /* waiting for their audit records */
    unsigned syncer_owed;      /* held answers the syncer must send (syncer_owes) */
    pthread_cond_t held_cv;    /* the syncer waits here for held answers */
    pthread_t syncer;
    int syncer_running, syncer_stop;
    int stopping;
    void *inline_w;            /* the I/O loop's worker context for tokenq_run_here (SQLite only), or NULL */
};

/* ---- jobs ------------------------------------------------------------------ */

static void job_free(struct kh_job *j)
{
    if (j == NULL)
        return;
    ipc_buf_free(&j->reply);
    ipc_payload_free(j->payload, j->len);
    free(j);
}

/* io->mu held. */
static void link_add(struct kh_link *l, struct kh_job *j)
{
    j->link = l;
    j->link_epoch = l->epoch;
    l->jobs_bytes += j->len;
    j->lprev = NULL;
    j->lnext = l->jobs;
    if (l->jobs != NULL)
        l->jobs->lprev = j;
    l->jobs = j;
}

/* io->mu held. */
static void link_remove(struct kh_job *j)
{
    struct kh_link *l = j->link;

    if (l == NULL)
        return;
    l->jobs_bytes -= j->len;
    if (j->lprev != NULL)
        j->lprev->lnext = j->lnext;
    else
        l->jobs = j->lnext;
    if (j->lnext != NULL)
        j->lnext->lprev = j->lprev;
    j->lprev = j->lnext = NULL;
    j->link = NULL;
}

/* l->wmu held: whether an answer for the link as it was at epoch may be
 * sent on it now (not when the network process it was for was replaced
 * meanwhile: said, once per answer). */
static bool link_same(struct kh_link *l, unsigned long long epoch)
{
    if (l->fd < 0)
        return false;
    if (l->epoch == epoch)
        return true;
    log_info("answer dropped: the network process it was for has been replaced link=%u", l->index);
    return false;
}

/* l->wmu held: whether the finished answer b may join the link's unread
 * answers (LINK_OUT_HARD above); a drop is said once until the network
 * process has read its answers down again. */
static bool link_takes(struct kh_link *l, const ipc_buf *b)
{
    if (b->len <= LINK_ANSWER_SMALL || evbuffer_get_length(l->out) <= LINK_OUT_HARD)
        return true;
    if (!l->dropping) {
        l->dropping = true;
        log_warn("the network process does not read its answers: dropping its large answers until it does "
                 "link=%u unread_over=%u",
                 l->index, LINK_OUT_HARD);
    }
    return false;
}

/* Writes a finished frame to the link from whichever thread has it: at
 * once when the socket takes it, else it waits in out for the I/O loop
 * (the socket is full; a broken one is left to the read side); only to
 * the link as it was at epoch, and not past LINK_OUT_HARD (link_takes).
 * b is emptied. */
static void link_send(struct kh_link *l, unsigned long long epoch, ipc_buf *b)
{
    pthread_mutex_lock(&l->wmu);
    if (link_same(l, epoch) && link_takes(l, b)) {
        int rc = ipc_ev_write(l->fd, l->out, b);
        if (rc == 1)
            event_add(l->wev, NULL);
        else if (rc == IPC_E_NOMEM)
            log_error("an answer to the network process was lost link=%u", l->index);
    }
    pthread_mutex_unlock(&l->wmu);
    ipc_buf_free(b);
}

/* l->wmu held, l->fd open. Writes what out holds (one writev of every
 * frame in it); what the socket does not take waits for EV_WRITE. */
static void link_write_out(struct kh_link *l)
{
    if (evbuffer_write(l->out, l->fd) < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        evbuffer_drain(l->out, evbuffer_get_length(l->out)); /* broken: the read side closes it */
    if (evbuffer_get_length(l->out) > 0)
        event_add(l->wev, NULL);
}

static void link_write_cb(evutil_socket_t fd, short what, void *arg)
{
    struct kh_link *l = arg;
    bool resume;
    (void)what;

    pthread_mutex_lock(&l->wmu);
    if (l->fd == fd && evbuffer_write(l->out, fd) < 0 && errno != EAGAIN && errno != EINTR)
        evbuffer_drain(l->out, evbuffer_get_length(l->out)); /* broken: the read side closes it */
    size_t left = evbuffer_get_length(l->out);
    if ((resume = l->fd == fd && l->read_paused && left <= LINK_OUT_MAX / 2))
        l->read_paused = false;
    if (left <= LINK_OUT_MAX / 2)
        l->dropping = false;
    if (l->fd == fd && (left > 0 || l->read_paused))
        event_add(l->wev, NULL);
    pthread_mutex_unlock(&l->wmu);
    if (resume) { /* the network process reads again: so does the key holder */
        event_add(l->rev, NULL);
        log_info("the network process reads its answers again: reading its link again link=%u", l->index);
    }
}

/* After a read (I/O loop): stops reading the link while its answers pile
 * up unread; link_write_cb, kept pending meanwhile (also when a worker's
 * write empties out first), starts reading it again. */
static void link_pause_if_unread(struct kh_link *l)
{
    pthread_mutex_lock(&l->wmu);
    bool over = l->fd >= 0 && !l->read_paused && evbuffer_get_length(l->out) > LINK_OUT_MAX;
    if (over) {
        l->read_paused = true;
        event_del(l->rev);
        event_add(l->wev, NULL);
    }
    pthread_mutex_unlock(&l->wmu);
    if (over)
        log_warn("the network process does not read its answers: not reading its link until it does link=%u "
                 "unread_over=%u", l->index, LINK_OUT_MAX);
}

/* A job's answer as it may leave: if its audit records failed to become
 * durable, a 503 in its place. */
static void final_reply(struct kh_job *j, int audit_state)
{
    if (audit_state < 0) {
        /* Wiped: it may carry a content key the audit does not cover. The
         * line names the request (a syncer thread sends it, or a worker
         * between jobs), as its answer's X-Request-Id does. */
        char was[33];
        (void)snprintf(was, sizeof(was), "%s", log_get_request_id());
        log_set_request_id(ipc_str(&j->msg, IPC_T_REQUEST_ID));
        log_error("answer dropped: its audit record is not durable");
        log_set_request_id(was[0] != '\0' ? was : NULL);
        kh_reply_error(&j->reply, j->msg.type | IPC_REPLY, j->msg.cookie, atomic_load(&j->kh->gen), 503, 5,
                       "audit_unavailable", "the audit log cannot be written; refusing to answer");
        (void)ipc_end(&j->reply);
    }
}

/* Sends a job's answer (final_reply) and frees the job. The job is off
 * every list already; l is NULL when its link went away. */
static void finish(struct kh_link *l, struct kh_job *j, int audit_state)
{
    if (l != NULL) {
        final_reply(j, audit_state);
        link_send(l, j->link_epoch, &j->reply);
    }
    job_free(j);
}

/* Sends the answers of a list of jobs (linked by next, each with its
 * link in j->link, NULL when gone, and the state to send with in
 * audit_first) and frees them: the answers for one link join its output
 * buffer in order and leave in one write, so that a round's answers cost
 * the key holder one system call per link, and the network process one
 * wake-up, instead of one each. */
static void finish_batch(struct kh_job *list)
{
    while (list != NULL) {
        struct kh_link *l = list->link;
        struct kh_job **pp = &list, *mine = NULL, **mtail = &mine;
        /* Take this link's jobs off the list, in order. */
        while (*pp != NULL) {
            struct kh_job *j = *pp;
            if (j->link != l) {
                pp = &j->next;
                continue;
            }
            *pp = j->next;
            j->next = NULL;
            *mtail = j;
            mtail = &j->next;
        }
        if (l != NULL)
            pthread_mutex_lock(&l->wmu);
        while (mine != NULL) {
            struct kh_job *j = mine;
            mine = j->next;
            if (l != NULL && link_same(l, j->link_epoch)) {
                final_reply(j, j->audit_first == 1 ? 1 : -1);
                if (link_takes(l, &j->reply) && ipc_ev_queue(l->out, &j->reply) != IPC_OK)
                    log_error("an answer to the network process was lost link=%u", l->index);
            }
            job_free(j);
        }
        if (l != NULL) {
            if (l->fd >= 0)
                link_write_out(l);
            pthread_mutex_unlock(&l->wmu);
        }
    }
}

/* 1 durable (or nothing to wait for), 0 not yet, -1 failed. */
static int job_audit_state(const struct kh_job *j)
{
    return j->audit_last == 0 ? 1 : audit_range_state(j->kh->audit, j->audit_first, j->audit_last);
}

/* Sends every held answer whose records are now known durable (or
 * failed); drops, once as far, those whose link is gone. Runs on the
 * syncer thread after each sync round (and at shutdown). */
static void flush_held(struct kh_io *io)
{
    struct kh_job *ready = NULL, **tail = &ready, **pp, *last = NULL;

    pthread_mutex_lock(&io->mu);
    for (pp = &io->held_head; *pp != NULL;) {
        struct kh_job *j = *pp;
        /* A job whose link is gone waits too: its records are only
         * queued, and a round must write them (nothing is sent). */
        int st = job_audit_state(j);
        if (st == 0) {
            last = j;
            pp = &j->next;
            continue;
        }
        *pp = j->next;
        j->next = NULL;
        j->audit_first = (unsigned long long)st; /* reused: the state to send with */
        if (j->syncer_owes) {
            j->syncer_owes = 0;
            io->syncer_owed--;
        }
        struct kh_link *l = j->link;
        link_remove(j);
        j->link = l; /* kept for the send below (off the list) */
        *tail = j;
        tail = &j->next;
    }
    io->held_tail = last;
    pthread_mutex_unlock(&io->mu);
    finish_batch(ready);
}

/* A worker is done with j: answer now (no audit records to wait for),
 * or hold it for its audit records. A job alone in the key holder
 * (nothing queued, running or held) has its records made durable by this
 * worker once the job is over (job_after: one group-commit round), which
 * then sends the answer: it has nothing better to do, and the answer
 * waits for no other thread to be scheduled. With other work about, the
 * worker goes on and the syncer answers for it, one round covering every
 * answer held by then (the token's work does not wait for the disk, and
 * rounds cover more answers: each costs the disk a flush and the process
 * its CPU). Measured, and not done: a worker that syncs itself whenever
 * nothing is queued, while others run or hold answers, makes more and
 * smaller rounds and 40 % more context switches (docs/performance.md). */
static void job_done(struct kh_worker *w, struct kh_job *j)
{
    struct kh *kh = j->kh;
    struct kh_io *io = kh->io;
    struct kh_link *l;

    if (j->audit_last != 0) {
        /* Alone: nothing else queued or running (it counts itself). */
        int alone = !w->io_loop && tokenq_pending(kh->q) == 1;
        pthread_mutex_lock(&io->mu);
        int self = alone && io->held_head == NULL;
        /* Held even when its link is gone (nothing will be sent): its
         * records are only queued until a round writes them. */
        j->next = NULL;
        if (io->held_tail != NULL)
            io->held_tail->next = j;
        else
            io->held_head = j;
        io->held_tail = j;
        if (self) {
            w->sync_first = j->audit_first;
            w->sync_last = j->audit_last;
        } else {
            j->syncer_owes = 1;
            io->syncer_owed++;
            pthread_cond_signal(&io->held_cv);
        }
        pthread_mutex_unlock(&io->mu);
        return;
    }
    pthread_mutex_lock(&io->mu);
    l = j->link;
    link_remove(j);
    pthread_mutex_unlock(&io->mu);
    finish(l, j, 1);
}

/* The token queue's run callback: the operation (khops.c), then its
 * answer. A job dropped unrun is not measured (tokenq.h). */
static bool job_run(void *worker, tq_job *tq)
{
    bool ran = kh_job_run(worker, tq);
    job_done(worker, (struct kh_job *)tq);
    return ran;
}

/* tokenq_run_here's callback, on the I/O loop (its own kh_worker, which
 * never syncs the audit log: job_done hands the round to the syncer). A
 * job that would pause (a search again) or check a token that failed
 * its unwrap (khops.c, hsm_item_fail) comes back unanswered and
 * unaudited, its rate-limit token kept (rl_taken), and is queued again
 * for a worker, first in its flow (the jobs queued behind it were taken
 * with it), never shed: it was admitted already. */
static int job_run_here(void *worker, tq_job *tq)
{
    struct kh_worker *w = worker;
    struct kh_job *j = (struct kh_job *)tq;
    struct kh *kh = j->kh;
    char flow[300];
    unsigned cost = 1, cls = TQ_TOKEN;
    bool batchable = false;

    bool ran = kh_job_run(worker, tq);
    if (!w->gave_back) {
        job_done(w, j);
        return ran ? TQ_RAN : TQ_RAN_UNMEASURED;
    }
    log_set_request_id(ipc_str(&j->msg, IPC_T_REQUEST_ID));
    log_debug("request given back to a token worker: it searches the token again or checks a failed token");
    log_set_request_id(NULL);
    ipc_buf_free(&j->reply);
    ipc_buf_init(&j->reply);
    kh_job_classify(&j->msg, flow, sizeof(flow), &cost, &cls, &batchable);
    j->tq.worker_only = true;
    if (tokenq_submit_deferred(kh->q, &j->tq, flow, 0, NULL) == TQ_QUEUED)
        return TQ_GAVE_BACK;
    /* Refused only for want of memory for its flow's record (TQ_FULL):
     * the queue stops after this loop ends (drain), and the run emptied
     * it, so the jobs given back fit under max_jobs. Answered 503
     * token_unavailable, not overloaded as a shed job is: the job was
     * admitted, and overloaded's Retry-After is an expected wait at the
     * token, which this refusal has none of. */
    kh_reply_error(&j->reply, j->msg.type | IPC_REPLY, j->msg.cookie, atomic_load(&kh->gen), 503, 5,
                   "token_unavailable", "the key token is busy; try again later");
    (void)ipc_end(&j->reply);
    job_done(w, j);
    return TQ_RAN_UNMEASURED;
}

/* The token queue's after_run callback: the round job_done left to this
 * worker, then every answer it made durable (the worker's own, and the
 * others held by then). */
static void job_after(void *worker)
{
    struct kh_worker *w = worker;
    unsigned long long first = w->sync_first, last = w->sync_last;

    if (last == 0)
        return;
    w->sync_first = w->sync_last = 0;
    /* A failure is each answer's own to report: flush_held looks. */
    (void)audit_wait_durable(w->kh->audit, first, last);
    flush_held(w->kh->io);
}

/* The syncer: makes the records of held answers durable, one group-commit
 * round covering all that were written by then, and sends the answers.
 * It is woken only when it owes an answer (its worker had other work),
 * not for every record: a worker alone with its job syncs itself. */
static void *syncer_main(void *arg)
{
    struct kh *kh = arg;
    struct kh_io *io = kh->io;

    pthread_mutex_lock(&io->mu);
    for (;;) {
        while (io->syncer_owed == 0 && !io->syncer_stop)
            pthread_cond_wait(&io->held_cv, &io->mu);
        if (io->held_head == NULL) {
            if (io->syncer_stop)
                break; /* stopping, and nothing is held */
            continue;
        }
        /* The oldest held answer's records: the round this runs (or waits
         * for) writes and syncs every record queued by then, so it covers
         * the later answers too. Waiting for the newest instead spun while
         * another thread's round ran if the newest had failed already (a
         * record too long): that wait returns at once, the older answers
         * are not yet known. Each pass now sends the oldest at least. */
        unsigned long long upto = io->held_head->audit_last;
        pthread_mutex_unlock(&io->mu);
        /* A failure is each answer's own to report: flush_held looks. */
        (void)audit_wait_durable(kh->audit, upto, upto);
        flush_held(io);
        pthread_mutex_lock(&io->mu);
    }
    pthread_mutex_unlock(&io->mu);
    return NULL;
}

/* Sends what is held, then joins the syncer (no-op if it never started). */
static void syncer_stop(struct kh_io *io)
{
    pthread_mutex_lock(&io->mu);
    int running = io->syncer_running;
    io->syncer_stop = 1;
    io->syncer_running = 0;
    pthread_cond_broadcast(&io->held_cv);
    pthread_mutex_unlock(&io->mu);
    if (running)
        pthread_join(io->syncer, NULL);
}

/* ---- links ----------------------------------------------------------------- */

/* I/O loop. Queued work for a network process that is gone is not done at
 * all; running and held work finishes (and is audited) and its answer is
 * dropped. */
static void link_close(struct kh_link *l)
{
    struct kh_io *io = l->kh->io;
    struct kh_job *j, *next, *cancelled = NULL;

    if (l->fd < 0)
        return;
    event_del(l->rev);
    event_del(l->wev);
    pthread_mutex_lock(&io->mu);
    for (j = l->jobs; j != NULL; j = next) {
        next = j->lnext;
        j->lprev = j->lnext = NULL;
        j->link = NULL;
        if (l->kh->q != NULL && tokenq_cancel(l->kh->q, &j->tq)) {
            j->next = cancelled;
            cancelled = j;
        }
    }
    l->jobs = NULL;
    l->jobs_bytes = 0;
    pthread_mutex_unlock(&io->mu);
    pthread_mutex_lock(&l->wmu);
    close(l->fd);
    l->fd = -1;
    l->read_paused = false;
    l->dropping = false;
    evbuffer_drain(l->out, evbuffer_get_length(l->out));
    pthread_mutex_unlock(&l->wmu);
    evbuffer_drain(l->in, evbuffer_get_length(l->in));
    while (cancelled != NULL) {
        j = cancelled;
        cancelled = j->next;
        job_free(j);
    }
}

static void refuse(struct kh_link *l, uint32_t type, uint64_t cookie, uint32_t status, unsigned retry,
                   const char *code, const char *msg)
{
    ipc_buf b;

    ipc_buf_init(&b);
    kh_reply_error(&b, type, cookie, atomic_load(&l->kh->gen), status, retry, code, msg);
    if (ipc_end(&b) == IPC_OK)
        link_send(l, l->epoch, &b); /* the I/O loop: the link as it is */
    ipc_buf_free(&b);
}

/* One request frame: checked, then queued, or answered at once. */
static void handle_frame(struct kh_link *l, uint32_t type, uint64_t cookie, unsigned char *payload, size_t len)
{
    struct kh *kh = l->kh;
    struct kh_io *io = kh->io;
    struct kh_job *j = NULL;
    char flow[300], msg[128];
    unsigned cost = 1, cls = TQ_TOKEN;
    bool batchable = false;
    double wait = 0;
    int rc;

    if (type < IPC_VIEW || type >= IPC_REQ_END) {
        log_warn("unknown message type from the network process type=%u link=%u", (unsigned)type, l->index);
        refuse(l, IPC_REPLY, cookie, 400, 0, "bad_request", "unknown message type");
        ipc_payload_free(payload, len);
        return;
    }
    if ((j = calloc(1, sizeof(*j))) == NULL) {
        refuse(l, type | IPC_REPLY, cookie, 503, 1, "overloaded", "out of memory");
        ipc_payload_free(payload, len);
        return;
    }
    j->kh = kh;
    j->payload = payload;
    j->len = len;
    if ((rc = ipc_decode(type, cookie, payload, len, &j->msg)) != IPC_OK) {
        log_warn("malformed message from the network process type=%u link=%u reason=\"%s\"", (unsigned)type,
                 l->index, ipc_strerror(rc));
        snprintf(msg, sizeof(msg), "malformed message: %s", ipc_strerror(rc));
        refuse(l, type | IPC_REPLY, cookie, 400, 0, "bad_request", msg);
        job_free(j);
        return;
    }
    if (io->stopping) {
        refuse(l, type | IPC_REPLY, cookie, 503, 5, "token_unavailable", "the key holder is shutting down");
        job_free(j);
        return;
    }
    /* Its client has had its 503 (the network process's timeout): not
     * queued at all (khops.c drops one that expires while queued). */
    if (ipc_deadline_passed(&j->msg)) {
        refuse(l, type | IPC_REPLY, cookie, 503, 5, "token_unavailable",
               "the request waited past its deadline; try again later");
        job_free(j);
        return;
    }
    /* An unwrap counts as one turn of the token queue per item
     * (kh_job_classify), and the queue measures its time per turn for
     * load shedding. The network process refuses a batch of more than
     * [server] unwrap_batch_max items itself (413, same config), so a
     * frame with more comes only from a compromised one: queued, it would
     * take that many turns and, refused by its worker in no time, skew the
     * measured time per turn. Refused here, before it is queued. */
    if (type == IPC_UNWRAP && j->msg.count[IPC_T_ITEM] > kh->batch_max) {
        log_warn("unwrap frame with more items than [server] unwrap_batch_max from the network process items=%u "
                 "max=%u link=%u",
                 (unsigned)j->msg.count[IPC_T_ITEM], kh->batch_max, l->index);
        snprintf(msg, sizeof(msg), "at most %u items per batch", kh->batch_max);
        refuse(l, type | IPC_REPLY, cookie, 413, 0, "too_many_items", msg);
        job_free(j);
        return;
    }
    kh_job_classify(&j->msg, flow, sizeof(flow), &cost, &cls, &batchable);
    j->tq.cost = cost;
    j->tq.cls = cls;
    j->tq.batchable = batchable;
    /* What the link's jobs hold is bounded by the link's budget, [server]
     * keyholder_queue_max (what the network process itself holds per
     * link for a key holder that does not take its requests): a
     * (compromised) network process filling the queue (max_jobs) with
     * frames of unwrap_batch_max items of 8 KiB each had some 800 MiB of
     * them held here, and with max_queue_ms = 0 (never shed) more. A
     * frame is refused 503 overloaded at once when it would take the
     * link's outstanding frames over the budget; one frame alone always
     * goes (a batch larger than the budget is the network process's own
     * size check's, 413), and the TLS set-up is never refused (as under
     * max_jobs). The last quarter of the budget is kept for small frames
     * (at most a 64th of it: a health check, a TLS handshake signature,
     * a group's view, a single unwrap, a member change): with all of it
     * open to any frame, one client's unwrap batches filled the link,
     * and every other request of its event-loop thread was refused 503
     * overloaded, /healthz and new TLS connections too, where the fair
     * queue would have served them in their turn. On the link's list
     * before a worker can see it (and finish it). */
    size_t room = len <= kh->link_budget / 64 ? kh->link_budget : kh->link_budget - kh->link_budget / 4;
    pthread_mutex_lock(&io->mu);
    bool over_budget = type != IPC_INFO && l->jobs_bytes > 0 && (len > room || l->jobs_bytes > room - len);
    size_t held = l->jobs_bytes;
    if (!over_budget)
        link_add(l, j);
    pthread_mutex_unlock(&io->mu);
    if (over_budget) {
        const char *id = ipc_str(&j->msg, IPC_T_REQUEST_ID);
        log_set_request_id(id != NULL && id[0] != '\0' ? id : NULL);
        log_info("request refused: its link holds [server] keyholder_queue_max of requests link=%u held=%zu "
                 "frame=%zu budget=%zu",
                 l->index, held, len, kh->link_budget);
        log_set_request_id(NULL);
        job_free(j);
        refuse(l, type | IPC_REPLY, cookie, 503, 1, "overloaded", "the key token is busy; try again later");
        return;
    }
    /* Counted before any worker can take it: a worker whose change stamp
     * was read after this count may answer it with that stamp. */
    j->arrival = atomic_fetch_add(&kh->arrivals, 1) + 1;
    /* Woken in link_read_cb, once for every frame of this read. The
     * network process's TLS set-up (IPC_INFO: at its start, and at a
     * SIGHUP, when the [tls] key and the local CA are found again) waits
     * its turn but is never shed: it is no client's request, and shed
     * under load it kept the old certificate (a reload) or ended the
     * process (a start). Nor refused when clients' jobs fill the queue
     * (max_jobs): one such job may be queued past the cap at a time. */
    double max_wait = type == IPC_INFO ? 0 : kh->max_queue_s;
    j->tq.reserved = type == IPC_INFO;
    tq_verdict v = tokenq_submit_deferred(kh->q, &j->tq, flow, max_wait, &wait);
    if (v == TQ_QUEUED)
        return;
    pthread_mutex_lock(&io->mu);
    link_remove(j);
    pthread_mutex_unlock(&io->mu);
    const char *id = ipc_str(&j->msg, IPC_T_REQUEST_ID);
    char rid[33]; /* the shed line names the request, as its X-Request-Id */
    (void)snprintf(rid, sizeof(rid), "%s", id != NULL ? id : "");
    job_free(j);
    if (v == TQ_STOPPED) {
        refuse(l, type | IPC_REPLY, cookie, 503, 5, "token_unavailable", "the key holder is shutting down");
        return;
    }
    /* Shed at once: the client hears when to come back instead of waiting. */
    unsigned retry = wait < 1 ? 1 : wait > 3600 ? 3600 : (unsigned)ceil(wait);
    log_set_request_id(rid[0] != '\0' ? rid : NULL);
    log_info("request shed expected_wait_ms=%.0f queue=\"%s\"", wait * 1e3, v == TQ_FULL ? "full" : "over max_queue_ms");
    log_set_request_id(NULL);
    refuse(l, type | IPC_REPLY, cookie, 503, retry, "overloaded", "the key token is busy; try again later");
}

/* ---- stopping ---------------------------------------------------------------------- */

/* How long a stopping key holder keeps answering a network process that
 * is still draining its requests (it drains for at most 10 s). */
#define STOP_WAIT_S 15

static int links_open(const struct kh_io *io)
{
    for (unsigned i = 0; i < io->nlinks; i++)
        if (io->links[i].fd >= 0)
            return 1;
    return 0;
}

static void stop_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct kh_io *io = arg;
    (void)fd; (void)what;
    log_warn("the network process did not close its links in time: stopping");
    event_base_loopbreak(io->base);
}

/* SIGTERM or the supervisor gone. When the supervisor stops its children
 * in order, the network process has gone and closed its links: stop now.
 * When it died (kill -9), both children hear it at once: keep answering
 * until the network process has drained its in-flight requests and
 * closed its links (at most STOP_WAIT_S), so that none of them gets 503
 * for a key holder that could still answer. */
static void request_stop(struct kh_io *io)
{
    struct timeval tv = {STOP_WAIT_S, 0};

    io->stop_requested = 1;
    if (!links_open(io)) {
        event_base_loopbreak(io->base);
        return;
    }
    if (io->stop_ev == NULL && ((io->stop_ev = evtimer_new(io->base, stop_deadline_cb, io)) == NULL ||
                                evtimer_add(io->stop_ev, &tv) != 0))
        event_base_loopbreak(io->base);
}

static int link_frame(void *arg, uint32_t type, uint64_t cookie, unsigned char *payload, size_t len)
{
    struct kh_link *l = arg;

    handle_frame(l, type, cookie, payload, len);
    return l->fd < 0;
}

static void link_read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct kh_link *l = arg;
    int rc = ipc_ev_read_frames(fd, l->in, link_frame, l);
    (void)what;

    /* One wake for everything this read queued (tokenq.h: as many workers
     * as the work needs). */
    if (l->kh->q != NULL) {
        if (l->kh->io->inline_w != NULL)
            (void)tokenq_run_here(l->kh->q, job_run_here, l->kh->io->inline_w);
        tokenq_wake(l->kh->q);
    }
    if (rc == IPC_OK) {
        link_pause_if_unread(l);
        return;
    }
    if (rc == IPC_E_CLOSED || rc == IPC_E_IO)
        log_info("the network process closed its link link=%u", l->index);
    else if (rc == IPC_E_NOMEM)
        log_error("out of memory reading a link: closing it link=%u", l->index);
    else
        log_error("unusable frame from the network process: closing the link link=%u reason=\"%s\"", l->index,
                  ipc_strerror(rc));
    link_close(l);
    if (l->kh->io->stop_requested && !links_open(l->kh->io))
        event_base_loopbreak(l->kh->io->base);
}

static int link_init(struct kh *kh, struct kh_link *l, unsigned index)
{
    l->kh = kh;
    l->index = index;
    l->fd = -1;
    pthread_mutex_init(&l->wmu, NULL);
    return (l->in = evbuffer_new()) != NULL && (l->out = evbuffer_new()) != NULL ? 0 : -1;
}

static void link_fini(struct kh_link *l)
{
    if (l->rev != NULL)
        event_free(l->rev);
    if (l->wev != NULL)
        event_free(l->wev);
    if (l->in != NULL)
        evbuffer_free(l->in);
    if (l->out != NULL)
        evbuffer_free(l->out);
    pthread_mutex_destroy(&l->wmu);
}

static int link_open(struct kh_io *io, unsigned index, int fd)
{
    struct kh_link *l = &io->links[index];

    link_close(l);
    if (l->rev != NULL)
        event_free(l->rev);
    if (l->wev != NULL)
        event_free(l->wev);
    l->rev = l->wev = NULL;
    if (evutil_make_socket_nonblocking(fd) != 0 ||
        (l->rev = event_new(io->base, fd, EV_READ | EV_PERSIST, link_read_cb, l)) == NULL ||
        (l->wev = event_new(io->base, fd, EV_WRITE, link_write_cb, l)) == NULL || event_add(l->rev, NULL) != 0) {
        close(fd);
        return -1;
    }
    pthread_mutex_lock(&l->wmu);
    l->fd = fd;
    l->epoch++;
    pthread_mutex_unlock(&l->wmu);
    return 0;
}

/* ---- the control channel ----------------------------------------------------- */

static void ctl_frame(void *arg, uint32_t type, const ipc_msg *m)
{
    struct kh_io *io = arg;

    if (type != IPC_CTL_LINK || m == NULL)
        return;
    uint32_t index = ipc_u32(m, IPC_T_INDEX, UINT32_MAX);
    int lfd = ipc_reader_take_fd(&io->ctl);
    if (index < io->nlinks && lfd >= 0) {
        if (link_open(io, index, lfd) == 0)
            log_info("new link from a restarted network process link=%u", (unsigned)index);
    } else if (lfd >= 0) {
        close(lfd);
    }
}

static void ctl_cb(evutil_socket_t fd, short what, void *arg)
{
    struct kh_io *io = arg;
    int rc = ipc_reader_each(&io->ctl, fd, ctl_frame, io);
    (void)what;

    if (rc == IPC_OK)
        return;
    event_del(io->ctl_ev); /* a closed channel stays readable */
    if (rc == IPC_E_FRAME) {
        log_error("unusable control frame from the supervisor: stopping");
        event_base_loopbreak(io->base);
        return;
    }
    log_error("the supervisor is gone: stopping");
    request_stop(io);
}

static void term_cb(evutil_socket_t sig, short what, void *arg)
{
    struct kh_io *io = arg;
    (void)what;
    log_info("key holder shutting down signal=%d", (int)sig);
    request_stop(io);
}

/* SIGHUP, forwarded by the supervisor. The [tls] key is found again when
 * the network process reloads (IPC_INFO with IPC_FLAG_RELOAD); here, an
 * audit log deleted (or moved away) and made anew at its path is written
 * there from now on, and the PIN file is read again (the token's PIN
 * changed, or a rejected PIN corrected), both without a restart. */
static void hup_cb(evutil_socket_t sig, short what, void *arg)
{
    struct kh *kh = arg;
    const char *pin_source = kh->cfg->hsm.pin_source;
    hsm_err he;
    (void)sig; (void)what;

    if (audit_reopen(kh->audit) != AUDIT_OK)
        log_error("the audit log at its path cannot be opened; key requests stay refused");
    if (pin_source == NULL || pin_source[0] == '\0' || strncmp(pin_source, "env:", 4) == 0)
        return;
    if ((he = hsm_reload_pin(kh->hsm, pin_source)) != HSM_OK)
        log_error("the PIN source was not taken up err=\"%s\" detail=\"%s\"", hsm_strerror(he),
                  log_qs(hsm_last_error_detail()));
    else
        log_info("PIN source read again pin_source=\"%s\"", log_qs(pin_source));
}

/* ---- start and stop -------------------------------------------------------------- */

static void key_audit_row(void *arg, const gs_key_audit_row *row)
{
    unsigned *bad = arg;
    if (!row->ok && !row->present && (row->version > 0 || strcmp(row->kind, "reject") == 0)) {
        /* A key version (or a group's rejection key) this token lacks:
         * servers on one shared database whose tokens get keys by the
         * ceremony. Served as 503 key_unavailable, not fatal. */
        log_warn("key version missing from this token kind=%s group=%s version=%u label=\"%s\"", row->kind, row->group,
                 row->version, log_qs(row->label));
        return;
    }
    if (!row->ok) {
        log_error("token key fails its policy label=\"%s\" problem=\"%s\"", log_qs(row->label), log_qs(row->problem));
        (*bad)++;
    } else if (row->accepted[0] != '\0' || row->note[0] != '\0') {
        /* Never silent: what the token could not do is named at every start. */
        if (row->accepted[0] != '\0')
            log_warn("token key runs with an accepted weakening label=\"%s\" weakenings=%s note=\"%s\"", log_qs(row->label),
                     row->accepted, row->note);
        else
            log_warn("token key passes, not every attribute verified label=\"%s\" note=\"%s\"", log_qs(row->label), log_qs(row->note));
    }
}

/* What the token can do, once at start (hsm/ probes it; the policy of
 * each group was chosen from it and is in the database). */
static void log_caps(const hsm_caps *c)
{
    log_info("token capabilities rewrap_on_token=%s secret_keys_on_token=%s allowed_mechanisms=%s "
             "unwrap_template=%s max_sessions=%lu",
             c->rewrap_on_token ? "yes" : "no", c->secret_on_token ? "yes" : "no",
             c->allowed_mechanisms == HSM_ATTR_YES ? "yes" : "no", c->unwrap_template == HSM_ATTR_YES ? "yes" : "no",
             c->max_sessions);
    if (c->pin_to_be_changed)
        log_warn("the token wants a new user PIN (CKF_USER_PIN_TO_BE_CHANGED): change it (pkcs11-tool "
                 "--change-pin) and the pin source, then SIGHUP; some tokens refuse key operations until then");
    if (c->pin_count_low)
        log_warn("wrong user PINs were tried on the token (CKF_USER_PIN_COUNT_LOW)");
}

/* The default number of token workers: one per CPU (SoftHSM computes on
 * them), at least 2 so that a slow operation does not stall the rest. */
static unsigned default_workers(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 2 ? 2 : n > 16 ? 16 : (unsigned)n;
}

static int start(struct kh *kh, const struct gs_config *cfg, unsigned *workers)
{
    hsm_caps caps;
    struct gs_config hcfg;
    gs_store *st = NULL;
    char err[512];
    gs_err ge;
    int rc = -1;

    /* The audit log first: without it nothing may be served. With
     * [audit] store = db the key holder's own connection writes this
     * instance's chain in the database's audit table. */
    if (strcmp(cfg->audit.store, "db") == 0) {
        audit_err ae = audit_open_db(gs_config_db_location(cfg), cfg->server.instance, &kh->audit);
        if (ae != AUDIT_OK) {
            log_error(
                "not started: the audit table cannot be written instance=\"%s\" err=\"%s\" detail=\"%s\"",
                log_qs(cfg->server.instance), audit_strerror(ae), log_qs(gs_err_detail()));
            return -1;
        }
    } else {
        char *dup = strdup(cfg->audit.path);
        if (dup == NULL)
            return -1;
        util_mkdir_p(dirname(dup), 0700);
        free(dup);
        errno = 0;
        audit_err ae = audit_open(cfg->audit.path, &kh->audit);
        if (ae != AUDIT_OK) {
            int open_errno = errno;
            char why[1024];

            /* why, for the operator: a link (refused by design), no
             * permission (and whose the file is), an attribute, a
             * read-only or full file system */
            if (ae == AUDIT_ERR_IO && open_errno != 0) {
                audit_open_why(cfg->audit.path, open_errno, why, sizeof(why));
                log_error("not started: the audit log cannot be opened path=\"%s\" err=\"%s\" detail=\"%s\"",
                          log_qs(cfg->audit.path), audit_strerror(ae), log_qs(why));
            } else
                log_error("not started: the audit log cannot be opened path=\"%s\" err=\"%s\"",
                          log_qs(cfg->audit.path), audit_strerror(ae));
            return -1;
        }
    }
    /* A session per token worker, plus one for the odd call between. */
    hcfg = *cfg;
    if (hcfg.hsm.max_sessions < *workers + 1)
        hcfg.hsm.max_sessions = *workers + 1;
    if ((ge = gs_hsm_open(&hcfg, &kh->hsm)) != GS_OK) {
        log_error("not started: the token cannot be opened err=\"%s\"",
                  log_qs(gs_err_detail()[0] ? gs_err_detail() : gs_strerror(ge)));
        /* The key holder exits as every command does (gs_err_exit_code): 5
         * for a wrong configuration (a token URI with a PIN in it), which a
         * service manager does not restart (RestartPreventExitStatus), 4
         * for a token that cannot be opened. */
        return -gs_err_exit_code(ge);
    }
    (void)hsm_caps_get(kh->hsm, &caps);
    log_caps(&caps);
    /* hsm/ keeps its pool within the token's session limit; more workers
     * than sessions would only wait for one another (a smartcard: 1). */
    if (caps.max_sessions > 0 && *workers > caps.max_sessions) {
        log_warn("token workers lowered to the token's session limit workers=%u max_sessions=%lu", *workers,
                 caps.max_sessions);
        *workers = (unsigned)caps.max_sessions;
    }
    /* A limit the token does not report shows only when a session is
     * refused (CKR_SESSION_COUNT): open the workers' sessions now, so that
     * serve starts with as many workers as the token lets it have, instead
     * of finding out under load. */
    unsigned sessions = 0;
    hsm_err he = hsm_sessions_fill(kh->hsm, *workers, &sessions);
    if (he != HSM_OK) {
        log_error("not started: no token session could be opened err=\"%s\"",
                  log_qs(hsm_last_error_detail()[0] ? hsm_last_error_detail() : hsm_strerror(he)));
        rc = -4;
        goto out;
    }
    if (sessions < *workers) {
        log_warn("token workers lowered: the token refused more sessions (CKR_SESSION_COUNT) than it reports "
                 "workers=%u sessions=%u",
                 *workers, sessions);
        *workers = sessions;
    }
    if ((ge = gs_store_open(gs_config_db_location(cfg), 0, &st)) != GS_OK) {
        char where[1100];
        gs_store_location_display(gs_config_db_location(cfg), where, sizeof(where));
        log_error("not started: the database cannot be opened db=\"%s\" err=\"%s\"", log_qs(where),
                  log_qs(gs_err_detail()[0] ? gs_err_detail() : gs_strerror(ge)));
        goto out;
    }
    /* A role short of a grant would start, say healthy to HAProxy, and
     * fail every request that needs it (every key request, for the audit
     * table's INSERT): refused here, naming what is missing. */
    if ((ge = gs_store_check_grants(st, strcmp(cfg->audit.store, "db") == 0)) != GS_OK) {
        log_error("not started: %s detail=\"%s\"",
                  cfg->db.url != NULL ? "the database role lacks privileges the server needs"
                                      : "the database cannot be written by this user",
                  log_qs(gs_err_detail()[0] ? gs_err_detail() : gs_strerror(ge)));
        goto out;
    }
    /* Membership certificates another server checks: groupsrv check's
     * clock row says the same (docs/scale-out.md, "Clocks"). */
    int64_t off_ms = 0;
    if (gs_store_clock_offset(st, &off_ms) == GS_OK &&
        (off_ms > GS_CLOCK_SKEW_MAX_S * 1000 || off_ms < -GS_CLOCK_SKEW_MAX_S * 1000))
        log_warn("the system clock is %s the database server's: membership certificates this server issues are "
                 "not valid yet at the servers behind it (keep the servers within %d s: a time service) "
                 "offset_s=%lld",
                 off_ms > 0 ? "ahead of" : "behind", GS_CLOCK_SKEW_MAX_S, (long long)(off_ms / 1000));
    gs_ca *ca = NULL;
    ge = gs_ca_load(st, kh->hsm, &ca);
    atomic_store(&kh->ca, ca);
    if (ge == GS_ERR_NOT_FOUND)
        log_warn("no local CA (groupsrv ca init): no membership certificates, no group creation");
    else if (ge != GS_OK) {
        log_error("not started: the local CA cannot be loaded err=\"%s\"",
                  log_qs(gs_err_detail()[0] ? gs_err_detail() : gs_strerror(ge)));
        goto out;
    }
    unsigned problems = 0, bad_rows = 0;
    if ((ge = gs_keys_audit(st, kh->hsm, key_audit_row, &bad_rows, &problems)) != GS_OK) {
        log_error("not started: the token's keys cannot be checked err=\"%s\"",
                  log_qs(gs_err_detail()[0] ? gs_err_detail() : gs_strerror(ge)));
        goto out;
    }
    if (bad_rows > 0) {
        log_error("not started: token keys violate their policy (see groupsrv check) keys=%u", bad_rows);
        goto out;
    }
    if (kh_tls_key_load(kh, err, sizeof(err)) != 0) {
        log_error("not started: the TLS configuration failed err=\"%s\"", log_qs(err));
        goto out;
    }
    if (kh->rl == NULL && (kh->rl = keyholder_ratelimit_new(cfg, false)) == NULL)
        goto out;
    rc = 0;
out:
    gs_store_close(st);
    return rc;
}

/* Finishes what was queued and what waits for the audit log, and writes
 * the answers out (the network process still reads: it is draining too). */
static void drain(struct kh *kh)
{
    struct kh_io *io = kh->io;

    io->stopping = 1;
    tokenq_stop(kh->q); /* every queued job runs and is answered or held */
    kh->q = NULL;
    syncer_stop(io); /* it answers everything held first */
    flush_held(io);
    pthread_mutex_lock(&io->mu);
    struct kh_job *left = io->held_head; /* none can be pending now; be sure */
    io->held_head = io->held_tail = NULL;
    pthread_mutex_unlock(&io->mu);
    while (left != NULL) {
        struct kh_job *j = left;
        left = j->next;
        pthread_mutex_lock(&io->mu);
        struct kh_link *l = j->link;
        link_remove(j);
        pthread_mutex_unlock(&io->mu);
        finish(l, j, -1);
    }
    /* What waits in the links' buffers, for up to a second. */
    for (int round = 0; round < 100; round++) {
        size_t pending = 0;
        for (unsigned i = 0; i < io->nlinks; i++) {
            struct kh_link *l = &io->links[i];
            pthread_mutex_lock(&l->wmu);
            if (l->fd >= 0 && evbuffer_get_length(l->out) > 0 && evbuffer_write(l->out, l->fd) < 0 &&
                errno != EAGAIN && errno != EINTR)
                evbuffer_drain(l->out, evbuffer_get_length(l->out));
            pending += l->fd >= 0 ? evbuffer_get_length(l->out) : 0;
            pthread_mutex_unlock(&l->wmu);
        }
        if (pending == 0)
            break;
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
}

ratelimit *keyholder_ratelimit_new(const struct gs_config *cfg, bool shared)
{
    double rate = (double)cfg->server.rate_limit;
    double burst = (double)(cfg->server.rate_burst ? cfg->server.rate_burst : 2 * cfg->server.rate_limit);
    unsigned suspend_s = cfg->server.suspend_seconds ? cfg->server.suspend_seconds : 600;

    return shared ? ratelimit_new_shared(rate, burst, cfg->server.max_failed_unwraps, suspend_s)
                  : ratelimit_new(rate, burst, cfg->server.max_failed_unwraps, suspend_s);
}

int keyholder_main(const struct gs_config *cfg, int ctl_fd, const int *link_fds, unsigned nlinks, ratelimit *rl)
{
    struct kh kh;
    struct kh_io io;
    struct rlimit nocore = {0, 0};
    unsigned workers = cfg->hsm.workers ? cfg->hsm.workers : default_workers();
    unsigned taken = 0;
    int rc = 1;

    memset(&kh, 0, sizeof(kh));
    memset(&io, 0, sizeof(io));
    kh.cfg = cfg;
    kh.io = &io;
    kh.rl = rl; /* NULL: start() makes one */
    kh.batch_max = cfg->server.unwrap_batch_max ? cfg->server.unwrap_batch_max : 100;
    kh.max_queue_s = cfg->server.max_queue_ms / 1000.0;
    kh.link_budget = cfg->server.keyholder_queue_max ? cfg->server.keyholder_queue_max : 1024u * 1024;
    atomic_init(&kh.gen, 1);
    pthread_rwlock_init(&kh.tls_lock, NULL);
    pthread_mutex_init(&io.mu, NULL);
    pthread_cond_init(&io.held_cv, NULL);
    io.ctl_fd = ctl_fd;
    ipc_reader_init(&io.ctl);
    /* The PIN and the session handles live here: no core files, no
     * ptrace by the same user, no /proc/PID/mem for it. */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 || setrlimit(RLIMIT_CORE, &nocore) != 0) {
        log_error("not started: the key holder cannot disable core dumps err=\"%s\"", strerror(errno));
        goto out;
    }
    signal(SIGPIPE, SIG_IGN);
    if (evthread_use_pthreads() != 0 || (io.base = event_base_new()) == NULL)
        goto out;
    if ((io.links = calloc(nlinks ? nlinks : 1, sizeof(*io.links))) == NULL)
        goto out;
    for (; io.nlinks < nlinks; io.nlinks++)
        if (link_init(&kh, &io.links[io.nlinks], io.nlinks) != 0) {
            io.nlinks++;
            goto out;
        }
    int started = start(&kh, cfg, &workers);
    if (started != 0) {
        rc = -started; /* start() returns minus the exit code */
        goto out;
    }
    tokenq_ops ops = {
        .init = kh_worker_init, .fini = kh_worker_fini, .run = job_run, .after_run = job_after, .arg = &kh};
    unsigned max_jobs = cfg->server.max_connections > 512 ? 2 * cfg->server.max_connections : 1024;
    kh.workers = workers;
    if ((kh.q = tokenq_start(workers, max_jobs, &ops)) == NULL) {
        log_error("not started: the key holder cannot start its token workers workers=%u", workers);
        goto out;
    }
    /* Short unwraps run to completion on the I/O loop (tokenq_run_here):
     * with SQLite only, whose reads wait for no server (PostgreSQL's round
     * trip may wait up to [db] timeout, which the loop must not). Without
     * its context (out of memory) every job goes to a worker, as before. */
    if (!gs_store_location_is_url(gs_config_db_location(cfg))) {
        if ((io.inline_w = kh_worker_init(&kh, workers)) != NULL)
            ((struct kh_worker *)io.inline_w)->io_loop = true;
        else
            log_warn("short unwraps are handed to the token workers: no context for the I/O loop");
    }
    io.ctl_ev = event_new(io.base, ctl_fd, EV_READ | EV_PERSIST, ctl_cb, &io);
    io.term_ev = evsignal_new(io.base, SIGTERM, term_cb, &io);
    io.int_ev = evsignal_new(io.base, SIGINT, term_cb, &io);
    io.hup_ev = evsignal_new(io.base, SIGHUP, hup_cb, &kh);
    if (io.ctl_ev == NULL || io.term_ev == NULL || io.int_ev == NULL || io.hup_ev == NULL || event_add(io.ctl_ev, NULL) != 0 || evsignal_add(io.term_ev, NULL) != 0 ||
        evsignal_add(io.int_ev, NULL) != 0 || evsignal_add(io.hup_ev, NULL) != 0)
        goto out;
    if (pthread_create(&io.syncer, NULL, syncer_main, &kh) != 0) {
        log_error("cannot start the audit syncer thread");
        goto out;
    }
    io.syncer_running = 1;
    for (; taken < nlinks; taken++)
        if (link_open(&io, taken, link_fds[taken]) != 0) {
            taken++; /* link_open closed it */
            goto out;
        }
    ipc_buf ready;
    ipc_buf_init(&ready);
    ipc_begin(&ready, IPC_CTL_READY, 0);
    if (ipc_end(&ready) != IPC_OK || ipc_write_frame(ctl_fd, &ready, -1, 5000) != IPC_OK) {
        ipc_buf_free(&ready);
        goto out;
    }
    ipc_buf_free(&ready);
    log_info("key holder ready workers=%u max_queue_ms=%u", workers, cfg->server.max_queue_ms);
    event_base_dispatch(io.base);
    drain(&kh);
    rc = 0;
out:
    if (kh.q != NULL)
        drain(&kh);
    for (unsigned i = taken; i < nlinks; i++) /* not taken over yet */
        close(link_fds[i]);
    for (unsigned i = 0; i < io.nlinks; i++)
        link_close(&io.links[i]);
    while (io.held_head != NULL) {
        struct kh_job *j = io.held_head;
        io.held_head = j->next;
        job_free(j);
    }
    for (unsigned i = 0; i < io.nlinks; i++)
        link_fini(&io.links[i]);
    struct event *evs[] = {io.ctl_ev, io.term_ev, io.int_ev, io.hup_ev, io.stop_ev};
    for (size_t i = 0; i < GS_ARRAY_LEN(evs); i++)
        if (evs[i] != NULL)
            event_free(evs[i]);
    if (io.base != NULL)
        event_base_free(io.base);
    free(io.links);
    ipc_reader_free(&io.ctl);
    ratelimit_free(kh.rl);
    gs_ca_free(atomic_load(&kh.ca));
    for (unsigned i = 0; i < kh.n_ca_kept; i++)
        gs_ca_free(kh.ca_kept[i]);
    kh_worker_fini(io.inline_w);
    hsm_key_free(kh.tls_key);
    hsm_close(kh.hsm);
    audit_close(kh.audit);
    pthread_cond_destroy(&io.held_cv);
    pthread_mutex_destroy(&io.mu);
    pthread_rwlock_destroy(&kh.tls_lock);
    return rc;
}
