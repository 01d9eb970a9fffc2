/*
 * netmain.c: groupsrv-net, the network process of `groupsrv serve`. The
 * supervisor starts it (fork and exec: a fresh image with no PKCS#11
 * module, no PIN, nothing of the supervisor's memory) with one control
 * socket and sends it, in frames, everything it will use: the config
 * text, the TLS files' contents, the listening sockets and one link to
 * the key holder per event-loop thread plus one for this main thread.
 * Then it sandboxes itself and serves until SIGTERM; later frames bring
 * new TLS material (SIGHUP) and new links (the key holder restarted).
 *
 *   groupsrv-net --ctl FD
 *
 * It is not meant to be run by hand. Exit status: 0 after SIGTERM, 1 when
 * it could not start (the reason on stderr), 2 on bad arguments.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "log.h"
#include "sandbox.h"
#include "server.h"
#include "tls_tokenkey.h"
#include "util.h"

#define START_TIMEOUT_MS 60000

/* What the supervisor sent; the TLS texts are kept for reloads of the
 * token key alone and wiped on exit (the key PEM is a secret). */
struct net {
    struct gs_config *cfg;
    struct srv srv;
    struct event_base *base;
    khlink *link;              /* the main thread's link (INFO) */
    int ctl_fd;
    ipc_reader ctl;
    struct event *ctl_ev, *term_ev, *int_ev;
    int *link_fds;             /* until the threads take them */
    unsigned nlinks;
    atomic_int broken;         /* the key holder broke the protocol: end, exit status 1 */
    /* A reload's TLS files (CTL_TLS payload, owned, wiped: it may hold
     * the key) that could not be installed because the key holder did
     * not answer (it was being started again, or it is stopped or hung):
     * installed when its new links come, or once it answers anything
     * again on the main link (tls_retry_cb), so that a SIGHUP then is
     * not lost. NULL: none. */
    unsigned char *tls_pending;
    size_t tls_pending_len;
    double tls_pending_at;     /* when the key holder last failed to answer it (monotonic) */
    /* The key holder answered the kept reload 503 (busy, or the token
     * or its [tls] key not reachable): tried again when tls_retry_ev
     * fires, after the Retry-After it gave, whatever it answered since. */
    bool tls_pending_busy;
    struct event *tls_retry_ev;
};

static void tls_pending_clear(struct net *n)
{
    if (n->tls_retry_ev != NULL)
        event_del(n->tls_retry_ev);
    if (n->tls_pending != NULL)
        OPENSSL_cleanse(n->tls_pending, n->tls_pending_len);
    free(n->tls_pending);
    n->tls_pending = NULL;
    n->tls_pending_len = 0;
    n->tls_pending_busy = false;
}

static void wipe_opts(tls_opts *o)
{
    if (o->key_pem != NULL)
        OPENSSL_cleanse((void *)o->key_pem, o->key_len);
    free((void *)o->cert_pem);
    free((void *)o->key_pem);
    free((void *)o->client_ca_pem);
    memset(o, 0, sizeof(*o));
}

static char *dup_bytes(const unsigned char *p, size_t len)
{
    char *c = malloc(len + 1);
    if (c != NULL) {
        memcpy(c, p, len);
        c[len] = '\0';
    }
    return c;
}

/* A certificate's notAfter in Unix seconds (0 if unreadable). */
static long long cert_not_after(const X509 *cert)
{
    int days = 0, secs = 0;

    if (cert == NULL || !ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(cert)))
        return 0;
    return (long long)time(NULL) + (long long)days * 86400 + secs;
}

/* The longest wait before a reload the key holder answered 503 is tried
 * again, whatever Retry-After it gave (a queue's expected wait may be
 * up to an hour). */
#define TLS_RETRY_MAX_S 60

/* Builds and installs a TLS state from the files' contents (CTL_TLS) and
 * what the key holder says (the local CA, the token key's public key;
 * reload: it finds and checks the token key again). 0, -1 (errbuf), -2
 * (errbuf) when the key holder did not answer (its link down: it is
 * being started again), or -3 (errbuf, *retry_s its Retry-After, 1 to
 * TLS_RETRY_MAX_S) when it answered 503: its queue full past the place
 * kept for TLS set-ups, or its token or the [tls] key on it not
 * reachable now. */
static int tls_install(struct net *n, const ipc_msg *m, int reload, unsigned *retry_s, char *err, size_t errlen)
{
    tls_opts o;
    ipc_msg info;
    ipc_buf b;
    const unsigned char *p;
    size_t len;
    X509 *ca = NULL;
    EVP_PKEY *tokenkey = NULL;
    tls_state *st = NULL;
    int rc = -1;

    *retry_s = 0;
    memset(&o, 0, sizeof(o));
    ipc_buf_init(&b);
    ipc_begin(&b, IPC_INFO, 0);
    ipc_put_u32(&b, IPC_T_FLAGS, reload ? IPC_FLAG_RELOAD : 0);
    /* A reload waits [server] timeout, as every request does, but never
     * more than START_TIMEOUT_MS: this thread serves the supervisor's
     * control channel and SIGTERM, which a stopped key holder held for
     * the whole wait (timeout may be set up to 3600 s). */
    int wait_ms = START_TIMEOUT_MS;
    if (reload && n->srv.timeout < START_TIMEOUT_MS / 1000)
        wait_ms = (int)n->srv.timeout * 1000;
    if (khlink_call_sync(n->link, &b, wait_ms, &info) != 0) {
        snprintf(err, errlen, "the key holder did not answer");
        rc = -2;
        goto out;
    }
    uint32_t status = ipc_u32(&info, IPC_T_STATUS, 500);
    if (status != 200) {
        snprintf(err, errlen, "%s", ipc_str(&info, IPC_T_MESSAGE) ? ipc_str(&info, IPC_T_MESSAGE) : "key holder error");
        if (status == 503) {
            uint32_t r = ipc_u32(&info, IPC_T_RETRY, 1);
            *retry_s = r < 1 ? 1 : r > TLS_RETRY_MAX_S ? TLS_RETRY_MAX_S : (unsigned)r;
            rc = -3;
        }
        goto out;
    }
    if (ipc_bytes(&info, IPC_T_CA_CERT, &p, &len) == 0) {
        const unsigned char *q = p;
        ca = d2i_X509(NULL, &q, (long)len);
    }
    if (ipc_bytes(&info, IPC_T_SPKI, &p, &len) == 0 &&
        tls_tokenkey_new(p, len, n->cfg->tls.key, &tokenkey, err, errlen) != 0)
        goto out;
    if (ipc_bytes(m, IPC_T_CERT_PEM, &p, &len) == 0) {
        o.cert_pem = dup_bytes(p, len);
        o.cert_len = len;
    }
    if (tokenkey == NULL && ipc_bytes(m, IPC_T_KEY_PEM, &p, &len) == 0) {
        o.key_pem = dup_bytes(p, len);
        o.key_len = len;
    }
    if (ipc_bytes(m, IPC_T_CA_PEM, &p, &len) == 0) {
        o.client_ca_pem = dup_bytes(p, len);
        o.client_ca_len = len;
    }
    o.token_key = tokenkey;
    o.local_ca = ca;
    if (tls_state_new(&o, &st, err, errlen) != 0)
        goto out;
    metrics_tls_not_after(cert_not_after(SSL_CTX_get0_certificate(tls_state_ctx(st))));
    metrics_ca_not_after(cert_not_after(ca));
    tls_current_set(st);
    tls_state_unref(st);
    rc = 0;
out:
    wipe_opts(&o);
    EVP_PKEY_free(tokenkey); /* the SSL_CTX holds its own reference */
    X509_free(ca);
    return rc;
}

/* A link the key holder broke cannot be made again here: the process ends
 * (its requests finish, as at SIGTERM) and the supervisor, seeing it
 * exit, starts a new one with new links. Any thread may call this. */
static void on_broken(void *arg, const char *why)
{
    struct net *n = arg;

    if (atomic_exchange(&n->broken, 1) == 0)
        log_error("the key holder broke the protocol on a link: stopping, to be started again with new links "
                  "reason=\"%s\"",
                  why);
    /* loopexit, not loopbreak: the threads serve before the main loop
     * runs, and a loopbreak made then would be cleared when it starts. */
    event_base_loopexit(n->base, NULL);
}

static void on_term(evutil_socket_t sig, short what, void *arg)
{
    struct net *n = arg;
    (void)what;
    log_info("network process shutting down signal=%d", (int)sig);
    event_base_loopbreak(n->base);
}

/* A reload the key holder did not answer is kept (n->tls_pending, the
 * files' payload) and tried again: when its new links come (it was being
 * started again), or once it answers anything on the main link again
 * (stopped, SIGCONT; a token call that hung returned): the supervisor
 * restarts only a key holder that ended, so a stalled one gets no new
 * links, and its reload waited for the next SIGHUP. retry_s > 0: the key
 * holder answered 503 (tls_install's -3), and the reload is tried again
 * after that many seconds, whatever it answers meanwhile. */
static void tls_keep_pending(struct net *n, const unsigned char *payload, size_t len, unsigned retry_s)
{
    if (n->tls_pending == NULL) {
        if ((n->tls_pending = malloc(len > 0 ? len : 1)) == NULL)
            return;
        memcpy(n->tls_pending, payload, len);
        n->tls_pending_len = len;
    }
    n->tls_pending_at = util_monotonic_s();
    n->tls_pending_busy = retry_s > 0;
    struct timeval tv = {retry_s > 0 ? (time_t)retry_s : 1, 0};
    if (n->tls_retry_ev != NULL)
        (void)event_add(n->tls_retry_ev, &tv);
}

/* The reload a SIGHUP asked for while the key holder did not answer, now
 * that it may (its new links came: the main one comes last, the
 * supervisor sends the links once the new key holder is ready; or it
 * answered again). */
static void tls_reload_pending(struct net *n)
{
    ipc_msg m;
    char err[512];

    if (n->tls_pending == NULL)
        return;
    if (ipc_decode(IPC_CTL_TLS, 0, n->tls_pending, n->tls_pending_len, &m) != IPC_OK) {
        tls_pending_clear(n);
        return;
    }
    unsigned retry_s;
    bool busy = n->tls_pending_busy;
    int rc = tls_install(n, &m, 1, &retry_s, err, sizeof(err));
    if (rc == -2 || rc == -3) {
        /* still away, or still busy: kept, and said once (when put off) */
        tls_keep_pending(n, NULL, 0, rc == -3 ? retry_s : 0);
        return;
    }
    tls_pending_clear(n);
    if (rc == 0)
        log_info("reloaded TLS certificate, key, client CAs and CRLs (the reload put off while the key holder %s)",
                 busy ? "could not serve it" : "did not answer");
    else
        log_error("reload failed; keeping the previous TLS configuration reason=\"%s\"", err);
}

/* Once a second while a reload is kept: tried again as soon as the key
 * holder has answered anything on the main link since it last failed to
 * (the late answer to the reload's own request, at the latest). Nothing
 * is sent to a key holder that answers nothing. A reload it answered 503
 * is tried again when this fires, after the Retry-After it gave. */
static void tls_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct net *n = arg;
    struct timeval tv = {1, 0};
    (void)fd; (void)what;

    if (n->tls_pending == NULL)
        return;
    if (khlink_up(n->link) && (n->tls_pending_busy || khlink_last_read(n->link) > n->tls_pending_at)) {
        tls_reload_pending(n);
        return;
    }
    (void)event_add(n->tls_retry_ev, &tv);
}

/* Frames from the supervisor while serving: TLS reloads and new links. */
static void ctl_frame(void *arg, uint32_t type, const ipc_msg *m)
{
    struct net *n = arg;
    char err[512];

    if (m == NULL) {
        log_error("malformed control frame from the supervisor type=%u", (unsigned)type);
    } else if (type == IPC_CTL_TLS) {
        tls_pending_clear(n); /* these files are newer */
        unsigned retry_s;
        int rc = tls_install(n, m, 1, &retry_s, err, sizeof(err));
        if (rc == 0) {
            log_info("reloaded TLS certificate, key, client CAs and CRLs");
        } else if (rc == -2 && (tls_keep_pending(n, m->payload, m->len, 0), n->tls_pending != NULL)) {
            /* The key holder is being started again (a SIGHUP while it
             * restarts), or stopped or hung: tried again once its new
             * links come or it answers again. */
            log_error("reload failed; keeping the previous TLS configuration until the key holder answers "
                      "again (or the next SIGHUP) reason=\"%s\"",
                      err);
        } else if (rc == -3 && (tls_keep_pending(n, m->payload, m->len, retry_s), n->tls_pending != NULL)) {
            /* The key holder answered 503: its queue full past the place
             * kept for TLS set-ups, or its token or the [tls] key on it
             * not reachable now. Dropped, the reload waited for the next
             * SIGHUP; now tried again after the Retry-After it gave
             * (at most TLS_RETRY_MAX_S) until it is served or refused, or
             * newer files come. Said here once, not at every try. */
            log_error("reload put off; keeping the previous TLS configuration and trying again while the key "
                      "holder answers 503 (until it is served, or the next SIGHUP) retry_in=%us reason=\"%s\"",
                      retry_s, log_qs(err));
        } else {
            log_error("reload failed; keeping the previous TLS configuration reason=\"%s\"", err);
        }
    } else if (type == IPC_CTL_LINK) {
        uint32_t i = ipc_u32(m, IPC_T_INDEX, UINT32_MAX);
        int lfd = ipc_reader_take_fd(&n->ctl);
        if (lfd < 0)
            log_error("a new link came without its descriptor");
        else if (i == n->srv.nthreads) {
            if (khlink_attach(n->link, lfd) != 0)
                log_error("cannot use the new main link");
        } else if (i < n->srv.nthreads) {
            srv_thread_relink(&n->srv, i, lfd);
        } else {
            close(lfd);
        }
        if (i == n->srv.nthreads) {
            log_info("links to a restarted key holder received");
            tls_reload_pending(n);
        }
    }
}

static void on_ctl(evutil_socket_t fd, short what, void *arg)
{
    struct net *n = arg;
    int rc = ipc_reader_each(&n->ctl, fd, ctl_frame, n);
    (void)what;

    if (rc == IPC_OK)
        return;
    if (rc == IPC_E_FRAME)
        log_error("unusable control frame from the supervisor: stopping");
    else
        log_error("the supervisor is gone: stopping");
    event_base_loopbreak(n->base);
}

/* Reads the start-up frames (blocking) until CTL_GO. The TLS frame is
 * kept in *tls_frame (owned, decoded into *tls). */
static int receive_start(struct net *n, unsigned char **tls_frame, size_t *tls_len, ipc_msg *tls, int *listen_fds)
{
    int got_go = 0;

    *tls_frame = NULL;
    while (!got_go) {
        const unsigned char *frame;
        size_t flen;
        int rc;
        while ((rc = ipc_reader_peek(&n->ctl, &frame, &flen)) == 1) {
            uint32_t type, plen;
            uint64_t cookie;
            ipc_msg m;
            ipc_header(frame, &type, &plen, &cookie);
            if (ipc_decode(type, cookie, frame + IPC_HDR_LEN, plen, &m) != IPC_OK) {
                log_error("not started: malformed start-up frame type=%u", (unsigned)type);
                return -1;
            }
            const unsigned char *p;
            size_t len;
            uint32_t i = ipc_u32(&m, IPC_T_INDEX, UINT32_MAX);
            switch (type) {
            case IPC_CTL_CONFIG: {
                ipc_bytes(&m, IPC_T_TEXT, &p, &len);
                char *text = dup_bytes(p, len);
                gs_err ge = text ? gs_config_load_string(text, "groupsrv.conf", &n->cfg) : GS_ERR_NOMEM;
                free(text);
                if (ge != GS_OK) {
                    log_error("not started: the configuration does not load err=\"%s\"",
                              log_qs(gs_err_detail()));
                    return -1;
                }
                n->nlinks = n->cfg->server.threads + 1;
                if ((n->link_fds = malloc(n->nlinks * sizeof(int))) == NULL)
                    return -1;
                for (unsigned k = 0; k < n->nlinks; k++)
                    n->link_fds[k] = -1;
                break;
            }
            case IPC_CTL_TLS:
                if ((*tls_frame = malloc(plen > 0 ? plen : 1)) == NULL)
                    return -1;
                memcpy(*tls_frame, frame + IPC_HDR_LEN, plen);
                *tls_len = plen;
                if (ipc_decode(type, cookie, *tls_frame, plen, tls) != IPC_OK)
                    return -1;
                break;
            case IPC_CTL_LISTEN:
                if (i < 2)
                    listen_fds[i] = ipc_reader_take_fd(&n->ctl);
                break;
            case IPC_CTL_LINK:
                if (n->link_fds != NULL && i < n->nlinks)
                    n->link_fds[i] = ipc_reader_take_fd(&n->ctl);
                break;
            case IPC_CTL_GO:
                got_go = 1;
                break;
            }
            ipc_reader_consume(&n->ctl, flen);
            if (got_go)
                break;
        }
        if (rc < 0)
            return -1;
        if (!got_go && (rc = ipc_reader_fill(&n->ctl, n->ctl_fd)) != IPC_OK) {
            log_error("not started: start-up from the supervisor failed err=\"%s\"", ipc_strerror(rc));
            return -1;
        }
    }
    if (n->cfg == NULL || *tls_frame == NULL || listen_fds[0] < 0) {
        log_error("not started: incomplete start-up from the supervisor");
        return -1;
    }
    for (unsigned k = 0; k < n->nlinks; k++)
        if (n->link_fds[k] < 0) {
            log_error("not started: a link to the key holder is missing link=%u", k);
            return -1;
        }
    return 0;
}

int main(int argc, char **argv)
{
    struct net n;
    unsigned char *tls_frame = NULL;
    size_t tls_len = 0;
    ipc_msg tls;
    int listen_fds[2] = {-1, -1};
    char err[512];
    int rc = 1;
    long v;

    /* serve gives this process its own 0-2; run another way with one
     * closed, a listening socket or link received from the supervisor
     * would take its number and get the log lines. */
    if (util_sanitise_stdfd() != UTIL_OK)
        return 1;
    util_fsize_limit_fails_writes();
    memset(&n, 0, sizeof(n));
    n.ctl_fd = -1;
    n.srv.listen_fd = n.srv.certsrv_fd = -1;
    log_init("groupsrv-net", LOG_LVL_INFO, NULL);
    if (argc != 3 || strcmp(argv[1], "--ctl") != 0 || util_parse_int(argv[2], 3, 1 << 20, &v) != UTIL_OK) {
        fprintf(stderr, "usage: groupsrv-net --ctl FD (started by groupsrv serve)\n");
        return 2;
    }
    n.ctl_fd = (int)v;
    /* The supervisor gone means this process goes too. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    signal(SIGPIPE, SIG_IGN);
    ipc_libevent_log_to_ours();
    ipc_reader_init(&n.ctl);
    if (evthread_use_pthreads() != 0 || (n.base = event_base_new()) == NULL)
        goto out;
    if (receive_start(&n, &tls_frame, &tls_len, &tls, listen_fds) != 0)
        goto out;
    int lvl = log_level_parse(n.cfg->server.log_level);
    log_set_level(lvl >= 0 ? (enum log_level)lvl : LOG_LVL_INFO);
    struct srv *s = &n.srv;
    s->cfg = n.cfg;
    s->nthreads = n.cfg->server.threads ? n.cfg->server.threads : 4;
    s->max_body = n.cfg->server.max_body ? n.cfg->server.max_body : 65536;
    s->timeout = n.cfg->server.timeout ? n.cfg->server.timeout : 30;
    s->max_conns = n.cfg->server.max_connections ? (long)n.cfg->server.max_connections : 1024;
    s->budget[SRV_LI_API] = s->max_conns;
    s->unauth_budget[SRV_LI_API] = s->max_conns - (long)n.cfg->server.reserved_connections;
    s->budget[SRV_LI_CERTSRV] = n.cfg->certsrv.max_connections ? (long)n.cfg->certsrv.max_connections : 256;
    s->unauth_budget[SRV_LI_CERTSRV] = s->budget[SRV_LI_CERTSRV] - s->budget[SRV_LI_CERTSRV] / 4;
    s->per_address = n.cfg->server.max_connections_per_address ? n.cfg->server.max_connections_per_address : 32;
    s->handshake_timeout = n.cfg->server.handshake_timeout ? n.cfg->server.handshake_timeout : 10;
    s->request_timeout = n.cfg->server.request_timeout ? n.cfg->server.request_timeout : 20;
    if ((s->addrs = srv_addr_table_new()) == NULL)
        goto out;
    s->listen_fd = listen_fds[0];
    s->certsrv_fd = listen_fds[1];
    const struct srv_route *tables[] = {api_routes, certsrv_routes};
    const size_t counts[] = {api_nroutes, certsrv_nroutes};
    if (srv_routes_set(s, tables, counts, 2) != 0)
        goto out;
    if ((n.link = khlink_new(n.base, s->timeout)) == NULL || khlink_attach(n.link, n.link_fds[s->nthreads]) != 0) {
        n.link_fds[s->nthreads] = -1;
        goto out;
    }
    n.link_fds[s->nthreads] = -1;
    khlink_set_current(n.link);
    khlink_on_broken(on_broken, &n);
    unsigned retry_s;
    if (tls_install(&n, &tls, 0, &retry_s, err, sizeof(err)) != 0) {
        log_error("not started: the TLS configuration failed err=\"%s\"", log_qs(err));
        goto out;
    }
    if (srv_threads_init(s, n.link_fds) != 0) {
        log_error("not started: could not set up the event-loop threads (its line above says why)");
        goto out;
    }
    for (unsigned k = 0; k < s->nthreads; k++)
        n.link_fds[k] = -1; /* the threads have them */
    /* Confinement: the user first (every thread changes with it), then
     * the threads, then the filter for all of them at once. */
    err[0] = '\0';
    if (sandbox_drop(n.cfg->server.user, err, sizeof(err)) != 0) {
        log_error("not started: the network process sandbox failed err=\"%s\"", log_qs(err));
        srv_threads_free(s);
        goto out;
    }
    if (srv_threads_run(s) != 0) { /* it stopped those it started */
        log_error("not started: could not start the event-loop threads");
        goto out;
    }
    if (sandbox_seccomp(err, sizeof(err)) != 0) {
        log_error("not started: the network process sandbox failed err=\"%s\"", log_qs(err));
        srv_threads_stop(s);
        goto out;
    }
    srv_threads_go();
    n.ctl_ev = event_new(n.base, n.ctl_fd, EV_READ | EV_PERSIST, on_ctl, &n);
    n.term_ev = evsignal_new(n.base, SIGTERM, on_term, &n);
    n.int_ev = evsignal_new(n.base, SIGINT, on_term, &n);
    n.tls_retry_ev = evtimer_new(n.base, tls_retry_cb, &n);
    if (n.ctl_ev == NULL || n.term_ev == NULL || n.int_ev == NULL || n.tls_retry_ev == NULL ||
        event_add(n.ctl_ev, NULL) != 0 || evsignal_add(n.term_ev, NULL) != 0 || evsignal_add(n.int_ev, NULL) != 0) {
        srv_threads_stop(s);
        goto out;
    }
    /* SIGHUP goes to the supervisor, which sends the files: ignore it here. */
    signal(SIGHUP, SIG_IGN);
    ipc_buf ready;
    ipc_buf_init(&ready);
    ipc_begin(&ready, IPC_CTL_READY, 0);
    if (ipc_end(&ready) != IPC_OK || ipc_write_frame(n.ctl_fd, &ready, -1, 5000) != IPC_OK) {
        ipc_buf_free(&ready);
        srv_threads_stop(s);
        goto out;
    }
    ipc_buf_free(&ready);
    event_base_dispatch(n.base);
    srv_threads_stop(s);
    rc = atomic_load(&n.broken) ? 1 : 0;
out:
    for (unsigned k = 0; n.link_fds != NULL && k < n.nlinks; k++)
        if (n.link_fds[k] >= 0)
            close(n.link_fds[k]);
    free(n.link_fds);
    tls_pending_clear(&n);
    struct event *evs[] = {n.ctl_ev, n.term_ev, n.int_ev, n.tls_retry_ev};
    for (size_t i = 0; i < GS_ARRAY_LEN(evs); i++)
        if (evs[i] != NULL)
            event_free(evs[i]);
    khlink_free(n.link);
    tls_current_set(NULL);
    if (n.base != NULL)
        event_base_free(n.base);
    if (tls_frame != NULL)
        OPENSSL_cleanse(tls_frame, tls_len);
    free(tls_frame);
    ipc_reader_free(&n.ctl);
    free((void *)n.srv.routes);
    srv_addr_table_free(n.srv.addrs);
    if (listen_fds[0] >= 0)
        close(listen_fds[0]);
    if (listen_fds[1] >= 0)
        close(listen_fds[1]);
    gs_config_free(n.cfg);
    return rc;
}
