/*
 * serve.c: `groupsrv serve`, the supervisor of the server's processes
 * (SECURITY.md, "Processes"), and `groupsrv audit verify`.
 *
 * The supervisor never loads the PKCS#11 module, never reads the PIN and
 * never reads from the network. It opens the listening sockets (so that
 * privileged ports work and connections queue while the network process
 * restarts), forks the key holder (before anything touches PKCS#11: every
 * key holder, also a restarted one, is forked from this clean process),
 * forks and executes the network process (groupsrv-net: a fresh image),
 * hands each side its ends of the links between them, and then only
 * watches: a child that dies is restarted after a short backoff and the
 * other one gets new links; SIGHUP sends the TLS files' contents to the
 * network process; SIGTERM lets the network process drain, then the key
 * holder finish its queued work, and every child is reaped.
 */
#include "serve.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "audit.h"
#include "ca.h"
#include "cli.h"
#include "config.h"
#include "ipc.h"
#include "keyholder.h"
#include "log.h"
#include "ratelimit.h"
#include "store.h"
#include "tlschain.h"
#include "util.h"

#ifndef GS_LIBEXECDIR
#define GS_LIBEXECDIR "/usr/libexec/groupsrv"
#endif
#define READY_TIMEOUT_MS 120000
#define BACKOFF_MIN 0.2
#define BACKOFF_MAX 10.0

/* A listening socket on "host:port" or "[v6]:port" in *fd_out; 0, or -1
 * with why (whysz bytes) saying what failed: the address cannot be
 * resolved (getaddrinfo's words: errno means nothing then) or errno's. */
static int listen_on(const char *hostport, int *fd_out, char *why, size_t whysz)
{
    struct addrinfo *ai = NULL;
    const char *rwhy;
    int fd = -1, one = 1, rc = -1, r;

    *fd_out = -1;
    if ((r = util_listen_resolve(hostport, &ai, &rwhy)) != 0) {
        if (r == UTIL_LISTEN_NOT_HOSTPORT)
            (void)snprintf(why, whysz, "%s", rwhy);
        else
            (void)snprintf(why, whysz, "cannot resolve the address: %s", rwhy);
        goto out;
    }
    if ((fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0) {
        (void)snprintf(why, whysz, "%s", strerror(errno));
        goto out;
    }
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0)
        log_warn("SO_REUSEADDR failed addr=%s", hostport);
    /* Answers are small and go out as several TLS records: without
     * TCP_NODELAY, Nagle holds the last one until the client's delayed ACK
     * (~40 ms per request on a kept-alive connection). Accepted sockets
     * inherit it from the listener on Linux and the BSDs. */
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
        log_warn("TCP_NODELAY failed addr=%s", hostport);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 511) != 0) {
        (void)snprintf(why, whysz, "%s", strerror(errno));
        goto out;
    }
    *fd_out = fd;
    fd = -1;
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    if (ai != NULL)
        freeaddrinfo(ai);
    return rc;
}

struct child {
    const char *name;
    pid_t pid;
    int ctl;                 /* the supervisor's end of its control channel */
    double started, backoff;
    struct event *restart_ev;
};

struct sup {
    const struct gs_config *cfg;
    char net_path[PATH_MAX];
    int listen_fd, certsrv_fd;
    unsigned nlinks;         /* network threads + its main thread */
    struct child kh, net;
    int *net_ends;           /* links made with the current key holder, not yet given to a network process */
    struct event_base *base;
    int stopping;
    unsigned char *cfg_text; /* the configuration file as serve started with it (every network process gets it) */
    size_t cfg_len;
    int pin_in_env;          /* [hsm] pin_source = env:NAME, wiped here once the key holder had it */
    int failed;              /* stopped because a child could not be restarted */
    ratelimit *rl;           /* the key holders' limiter, in shared memory: a restarted key holder
                              * keeps its predecessor's suspensions (never read here) */
};

/* The network process gets the configuration file's text, but not the
 * database's password: it never connects to the database (SECURITY.md), and
 * is the process a remote attacker would reach first. Each verbatim copy of
 * [db] url in *text becomes the URI with its password as *** (what `check`
 * shows). 0, or -1 when out of memory; the old text is wiped and freed. */
static int hide_db_password(const struct gs_config *cfg, unsigned char **text, size_t *len)
{
    const char *url = cfg->db.url;
    char shown[2048];
    size_t ulen, slen, n = 0, used = 0;
    unsigned char *out;

    if (url == NULL || (ulen = strlen(url)) == 0 || ulen >= sizeof(shown))
        return 0;
    gs_store_location_display(url, shown, sizeof(shown));
    if (strcmp(shown, url) == 0)
        return 0; /* no password in it */
    slen = strlen(shown);
    for (size_t i = 0; i + ulen <= *len; i++)
        if (memcmp(*text + i, url, ulen) == 0) {
            n++;
            i += ulen - 1;
        }
    if (n == 0) {
        log_warn("[db] url not found as written in the config file: the network process gets its password too");
        return 0;
    }
    if ((out = malloc(*len + n * slen + 1)) == NULL)
        return -1;
    for (size_t i = 0; i < *len;) {
        if (i + ulen <= *len && memcmp(*text + i, url, ulen) == 0) {
            memcpy(out + used, shown, slen);
            used += slen;
            i += ulen;
        } else {
            out[used++] = (*text)[i++];
        }
    }
    OPENSSL_cleanse(*text, *len);
    free(*text);
    *text = out;
    *len = used;
    return 0;
}

/* groupsrv-net next to this program (a build tree, or an install that
 * keeps them together), else in the libexec directory. */
static int find_net_program(char *out, size_t len)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

    if (n > 0) {
        self[n] = '\0';
        snprintf(out, len, "%s/groupsrv-net", dirname(self));
        if (access(out, X_OK) == 0)
            return 0;
    }
    snprintf(out, len, "%s/groupsrv-net", GS_LIBEXECDIR);
    return access(out, X_OK) == 0 ? 0 : -1;
}

static void close_fds(int *fds, unsigned n)
{
    for (unsigned i = 0; fds != NULL && i < n; i++)
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
}

/* n socketpairs: a[i] for one side, b[i] for the other. A failure is
 * logged with the system's reason (out of descriptors: the caller's line
 * says only that the processes could not be linked). */
static int make_links(unsigned n, int *a, int *b)
{
    for (unsigned i = 0; i < n; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
            log_error("cannot link the key holder and the network process err=\"socketpair: %s\"", strerror(errno));
            close_fds(a, i);
            close_fds(b, i);
            return -1;
        }
        a[i] = sv[0];
        b[i] = sv[1];
    }
    return 0;
}

static void child_defaults(void)
{
    sigset_t none;
    int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGPIPE};

    for (size_t i = 0; i < GS_ARRAY_LEN(sigs); i++)
        signal(sigs[i], SIG_DFL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* Either child goes when the supervisor goes. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
}

/* Waits for CTL_READY on a child's control channel: 0; 5 when it exited
 * with 5 (its configuration is wrong), 4 when with 4 (the key holder could
 * not open the token); -1 when it exited otherwise or said nothing in time
 * (then it is reaped or killed). */
static int wait_ready(struct child *c)
{
    ipc_reader rd;
    double deadline = util_monotonic_s() + READY_TIMEOUT_MS / 1000.0;
    int rc = -1;
    bool closed = false; /* it closed its channel: it is exiting */

    ipc_reader_init(&rd);
    for (;;) {
        const unsigned char *frame;
        size_t flen;
        if (ipc_reader_peek(&rd, &frame, &flen) == 1) {
            uint32_t type, plen;
            uint64_t cookie;
            ipc_header(frame, &type, &plen, &cookie);
            ipc_reader_consume(&rd, flen);
            if (type == IPC_CTL_READY) {
                rc = 0;
                break;
            }
            continue;
        }
        struct pollfd p = {.fd = c->ctl, .events = POLLIN};
        int left = (int)((deadline - util_monotonic_s()) * 1000), n = 0;
        /* a signal caught while starting (on_early_signal) is no failure */
        while (left > 0 && (n = poll(&p, 1, left)) < 0 && errno == EINTR)
            left = (int)((deadline - util_monotonic_s()) * 1000);
        if (left <= 0 || n <= 0)
            break;
        if (ipc_reader_fill(&rd, c->ctl) != IPC_OK) {
            closed = true;
            break;
        }
    }
    ipc_reader_free(&rd);
    if (rc != 0 && c->pid > 0) {
        int st = 0;
        pid_t w = 0;
        /* A child that closed its channel is exiting (a sanitizer's leak
         * check may still run): up to 5 s for its status, which says
         * whether it was the configuration (5). One that said nothing in
         * time is killed at once. */
        w = waitpid(c->pid, &st, WNOHANG);
        for (int i = 0; closed && w == 0 && i < 500; i++) {
            (void)poll(NULL, 0, 10);
            w = waitpid(c->pid, &st, WNOHANG);
        }
        if (w == 0) {
            kill(c->pid, SIGKILL);
            waitpid(c->pid, &st, 0);
        } else if (w == c->pid && WIFEXITED(st) && (WEXITSTATUS(st) == 5 || WEXITSTATUS(st) == 4)) {
            rc = WEXITSTATUS(st);
        }
        c->pid = 0;
        close(c->ctl);
        c->ctl = -1;
    }
    return rc;
}

/* Forks the key holder with kh_ends as its link ends (closed here). */
static int start_holder(struct sup *s, int *kh_ends)
{
    int sv[2];
    pid_t pid;

    /* Each failure here says why: the callers' lines point to this one
     * (out of descriptors, or of processes under systemd's TasksMax). */
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        log_error("cannot start the key holder err=\"socketpair: %s\"", strerror(errno));
        close_fds(kh_ends, s->nlinks);
        return -1;
    }
    if ((pid = fork()) < 0) {
        log_error("cannot start the key holder err=\"fork: %s\"", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        close_fds(kh_ends, s->nlinks);
        return -1;
    }
    if (pid == 0) {
        child_defaults();
        int *keep = malloc((s->nlinks + 1) * sizeof(int));
        if (keep == NULL)
            _exit(1);
        memcpy(keep, kh_ends, s->nlinks * sizeof(int));
        keep[s->nlinks] = sv[1];
        /* No listening socket, no end of the network process's. */
        util_close_all_but(keep, s->nlinks + 1);
        free(keep);
        /* A key holder started again is forked from inside this
         * process's event loop, whose signal events libevent keeps in a
         * global: the key holder's own would make libevent warn "Added a
         * signal to event base ... with signals already added". The base
         * is of no use here; freed, it gives the signals up (its
         * descriptors are closed above, so nothing of the supervisor's
         * epoll set, which the fork shares, is touched). */
        if (s->base != NULL)
            event_base_free(s->base);
        log_init("groupsrv-keyholder", log_get_level(), NULL);
        prctl(PR_SET_NAME, "groupsrv-kh"); /* for ps and top */
        _exit(keyholder_main(s->cfg, sv[1], kh_ends, s->nlinks, s->rl));
    }
    close(sv[1]);
    close_fds(kh_ends, s->nlinks);
    s->kh.pid = pid;
    s->kh.ctl = sv[0];
    s->kh.started = util_monotonic_s();
    return wait_ready(&s->kh);
}

/* The longest a child may leave a control frame untaken. */
#define CTL_WRITE_MS 10000

static int send_frame(int ctl, uint32_t type, uint32_t index, int fd)
{
    ipc_buf b;
    int rc;

    ipc_buf_init(&b);
    ipc_begin(&b, type, 0);
    if (type == IPC_CTL_LINK || type == IPC_CTL_LISTEN)
        ipc_put_u32(&b, IPC_T_INDEX, index);
    rc = ctl < 0              ? IPC_E_CLOSED
         : ipc_end(&b) == IPC_OK ? ipc_write_frame(ctl, &b, fd, CTL_WRITE_MS)
                                 : IPC_E_FIELD;
    ipc_buf_free(&b);
    return rc;
}

/* GS_OK if the first certificate of the [tls] cert file is valid now (or
 * cannot be read here: the network process says what is wrong with it);
 * else GS_ERR_CERT with the detail naming the date. Read as
 * gs_tls_use_chain_pem reads it: a TRUSTED CERTIFICATE block first is the
 * one served, not skipped for the CA certificate after it. */
static gs_err tls_cert_valid_now(const unsigned char *pem, size_t len)
{
    BIO *bio = len <= INT_MAX ? BIO_new_mem_buf(pem, (int)len) : NULL;
    X509 *leaf = bio ? PEM_read_bio_X509_AUX(bio, NULL, util_pem_no_passphrase, NULL) : NULL; /* never asks */
    gs_err err = leaf ? gs_cert_check_valid_now(leaf, "the [tls] cert") : GS_OK;

    X509_free(leaf);
    BIO_free(bio);
    ERR_clear_error();
    return err;
}

/* A running network process that did not take a control frame (its
 * TLS files at a reload, new links) within CTL_WRITE_MS: stopped, stuck,
 * or compromised and no longer reading its channel. Part of a frame may
 * be in the channel, so nothing sent after it would be read as framed:
 * the process is killed, and on_chld starts a new one, which gets
 * everything at its start (s->net_ends: the links it was to get). The
 * channel is closed here, so that further frames fail at once instead of
 * each waiting CTL_WRITE_MS. */
static void net_ctl_failed(struct sup *s, const char *what, int rc)
{
    if (s->net.pid <= 0)
        return;
    log_error("the network process does not take its control frames: killing it to start a new one "
              "what=\"%s\" err=\"%s\" pid=%ld",
              what, ipc_strerror(rc), (long)s->net.pid);
    kill(s->net.pid, SIGKILL);
    if (s->net.ctl >= 0)
        close(s->net.ctl);
    s->net.ctl = -1;
}

/* Why a [tls] file was not read, for the log. */
static const char *tls_file_why(int ur)
{
    return ur == UTIL_E_NOTREG ? "not a regular file (a named pipe or a device is not read)" : util_strerror(ur);
}

/* When send_tls sends the TLS files: at serve's start, to a network
 * process started again (serve runs on), or at a reload (SIGHUP). */
enum tls_when { TLS_AT_START, TLS_AT_RESTART, TLS_AT_RELOAD };

/* The TLS files' contents (the network process cannot open files). At a
 * reload (SIGHUP) a certificate that is not valid now is refused and the
 * previous one kept: every client would refuse it. At a start there is
 * no previous one: it is served, with a warning. */
static int send_tls(struct sup *s, int ctl, enum tls_when when, int *wrc)
{
    const struct gs_config *cfg = s->cfg;
    unsigned char *cert = NULL, *key = NULL, *ca = NULL;
    size_t cl = 0, kl = 0, cal = 0;
    int rc = -1;
    ipc_buf b;

    *wrc = IPC_OK;

    /* at serve's start, the reason it does not start (docs/groupsrv.1.md);
     * not at a restart of the network process, which serve outlives */
    const char *why = when == TLS_AT_START ? "not started: " : "";

    ipc_buf_init(&b);
    /* Regular files only, found so without waiting: a named pipe there
     * (a writer that never comes) held the supervisor's loop in open()
     * at a SIGHUP for good, no child restarted and no signal served. */
    int ur;
    if ((ur = util_read_regular_file(cfg->tls.cert, GS_TLS_CERT_MAX, &cert, &cl)) != UTIL_OK) {
        log_error("%scannot read the TLS certificate path=\"%s\" reason=\"%s\"", why, log_qs(cfg->tls.cert),
                  tls_file_why(ur));
        goto out;
    }
    if (strncmp(cfg->tls.key, "pkcs11:", 7) != 0 &&
        (ur = util_read_regular_file(cfg->tls.key, 1u << 20, &key, &kl)) != UTIL_OK) {
        log_error("%scannot read the TLS key path=\"%s\" reason=\"%s\"", why, log_qs(cfg->tls.key),
                  tls_file_why(ur));
        goto out;
    }
    if (cfg->tls.client_ca != NULL &&
        (ur = util_read_regular_file(cfg->tls.client_ca, GS_TLS_CLIENT_CA_MAX, &ca, &cal)) != UTIL_OK) {
        log_error("%scannot read the client CA file path=\"%s\" reason=\"%s\"", why,
                  log_qs(cfg->tls.client_ca), tls_file_why(ur));
        goto out;
    }
    if (tls_cert_valid_now(cert, cl) != GS_OK) {
        if (when == TLS_AT_RELOAD) {
            log_error("the new TLS certificate is not taken up path=\"%s\" reason=\"%s\"",
                      log_qs(cfg->tls.cert), log_qs(gs_err_detail()));
            goto out;
        }
        log_warn("serving a TLS certificate that clients refuse path=\"%s\" reason=\"%s\"",
                 log_qs(cfg->tls.cert), log_qs(gs_err_detail()));
    }
    ipc_begin(&b, IPC_CTL_TLS, 0);
    ipc_put_bytes(&b, IPC_T_CERT_PEM, cert, cl);
    if (key != NULL)
        ipc_put_bytes(&b, IPC_T_KEY_PEM, key, kl);
    if (ca != NULL)
        ipc_put_bytes(&b, IPC_T_CA_PEM, ca, cal);
    if (ipc_end(&b) == IPC_OK && (*wrc = ipc_write_frame(ctl, &b, -1, CTL_WRITE_MS)) == IPC_OK)
        rc = 0;
out:
    ipc_buf_free(&b);
    free(cert);
    util_secret_free(key, kl);
    free(ca);
    return rc;
}

/* Forks and executes the network process and sends it its start: config
 * text, TLS material, listening sockets, net_ends (closed here). */
/* The network process's environment: the time zone and the sanitizers'
 * options, nothing else (no PIN source, whatever the service set). Built
 * in the child after fork (this process has one thread). */
static char **net_environ(void)
{
    extern char **environ;
    size_t n = 0, k = 0;

    for (char **e = environ; e != NULL && *e != NULL; e++)
        n++;
    static char *none[] = {NULL};
    char **out = calloc(n + 1, sizeof(*out));
    if (out == NULL)
        return none;
    for (char **e = environ; e != NULL && *e != NULL; e++) {
        const char *eq = strchr(*e, '=');
        size_t name = eq != NULL ? (size_t)(eq - *e) : 0;
        if ((name == 2 && strncmp(*e, "TZ", 2) == 0) || /* and ASAN_, UBSAN_, LSAN_OPTIONS: */
            (name > 11 && strncmp(*e + name - 11, "SAN_OPTIONS", 11) == 0))
            out[k++] = *e;
    }
    return out;
}

/* at_start: serve's start (TLS_AT_START); else a restart of the
 * network process. */
static int start_net(struct sup *s, int *net_ends, bool at_start)
{
    int sv[2], rc = -1;
    pid_t pid;
    ipc_buf b;

    ipc_buf_init(&b);
    /* As start_holder: each failure says why. */
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        log_error("cannot start the network process err=\"socketpair: %s\"", strerror(errno));
        close_fds(net_ends, s->nlinks);
        return -1;
    }
    if ((pid = fork()) < 0) {
        log_error("cannot start the network process err=\"fork: %s\"", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        close_fds(net_ends, s->nlinks);
        return -1;
    }
    if (pid == 0) {
        child_defaults();
        /* A fresh image: nothing of this process's memory goes along.
         * dup2 onto itself keeps close-on-exec: cleared by hand then. */
        if (sv[1] == 3 ? fcntl(3, F_SETFD, 0) != 0 : dup2(sv[1], 3) != 3)
            _exit(1);
        int keep = 3;
        util_close_all_but(&keep, 1);
        char *args[] = {"groupsrv-net", "--ctl", "3", NULL};
        execve(s->net_path, args, net_environ());
        log_error("not started: cannot run the network process path=\"%s\" err=\"%s\"", log_qs(s->net_path),
                  strerror(errno));
        _exit(127);
    }
    close(sv[1]);
    s->net.pid = pid;
    s->net.ctl = sv[0];
    s->net.started = util_monotonic_s();
    ipc_begin(&b, IPC_CTL_CONFIG, 0);
    ipc_put_bytes(&b, IPC_T_TEXT, s->cfg_text, s->cfg_len);
    int wrc;
    if (ipc_end(&b) != IPC_OK || ipc_write_frame(s->net.ctl, &b, -1, CTL_WRITE_MS) != IPC_OK ||
        send_tls(s, s->net.ctl, at_start ? TLS_AT_START : TLS_AT_RESTART, &wrc) != 0 ||
        send_frame(s->net.ctl, IPC_CTL_LISTEN, 0, s->listen_fd) != IPC_OK ||
        (s->certsrv_fd >= 0 && send_frame(s->net.ctl, IPC_CTL_LISTEN, 1, s->certsrv_fd) != IPC_OK))
        goto out;
    for (unsigned i = 0; i < s->nlinks; i++)
        if (send_frame(s->net.ctl, IPC_CTL_LINK, i, net_ends[i]) != IPC_OK)
            goto out;
    if (send_frame(s->net.ctl, IPC_CTL_GO, 0, -1) != IPC_OK)
        goto out;
    rc = 0;
out:
    ipc_buf_free(&b);
    close_fds(net_ends, s->nlinks);
    if (rc == 0) {
        rc = wait_ready(&s->net);
    } else {
        /* Its start-up cut short here (a [tls] file it cannot be sent):
         * the channel's end tells it at once, and it exits, instead of
         * waiting for the rest until wait_ready's 2 minutes are over. */
        (void)shutdown(s->net.ctl, SHUT_WR);
        (void)wait_ready(&s->net); /* reaps or kills it */
    }
    return rc;
}

/* ---- supervision -------------------------------------------------------------- */

/* Returns the wait before the next start, in seconds, for the log line
 * that says it: "trying again" alone left an operator watching a crash
 * loop not knowing whether anything would happen, or when. */
static double restart_later(struct sup *s, struct child *c)
{
    /* A child that lived a while is restarted at once; one that keeps
     * dying waits longer each time (a token that is away, a bad file). */
    c->backoff = util_monotonic_s() - c->started > 10 ? BACKOFF_MIN : c->backoff * 2;
    if (c->backoff < BACKOFF_MIN)
        c->backoff = BACKOFF_MIN;
    if (c->backoff > BACKOFF_MAX)
        c->backoff = BACKOFF_MAX;
    struct timeval tv = {(time_t)c->backoff, (suseconds_t)((c->backoff - (double)(time_t)c->backoff) * 1e6)};
    if (!s->stopping)
        evtimer_add(c->restart_ev, &tv);
    return c->backoff;
}

static void restart_holder(evutil_socket_t fd, short what, void *arg)
{
    struct sup *s = arg;
    int *kh_ends = calloc(s->nlinks, sizeof(int)), *net_ends = calloc(s->nlinks, sizeof(int));
    (void)fd; (void)what;

    if (kh_ends == NULL || net_ends == NULL || make_links(s->nlinks, kh_ends, net_ends) != 0) {
        free(kh_ends);
        free(net_ends);
        (void)restart_later(s, &s->kh);
        return;
    }
    log_info("starting the key holder again");
    if (start_holder(s, kh_ends) != 0) {
        close_fds(net_ends, s->nlinks);
        free(net_ends);
        free(kh_ends);
        log_error("the key holder did not start; trying again in=%.1fs", restart_later(s, &s->kh));
        return;
    }
    free(kh_ends);
    /* The network process (if it runs) takes the new links; if it is
     * being restarted itself, it gets them when it starts. */
    int wrc = IPC_OK;
    for (unsigned i = 0; s->net.pid > 0 && i < s->nlinks && wrc == IPC_OK; i++)
        if ((wrc = send_frame(s->net.ctl, IPC_CTL_LINK, i, net_ends[i])) != IPC_OK)
            net_ctl_failed(s, "new links", wrc);
    if (s->net.pid > 0 && wrc == IPC_OK) {
        close_fds(net_ends, s->nlinks);
        free(net_ends);
    } else {
        /* For the network process started next (this one is gone, or
         * killed above): the links sent to it stay open here. */
        if (s->net_ends != NULL)
            close_fds(s->net_ends, s->nlinks);
        free(s->net_ends);
        s->net_ends = net_ends;
    }
    log_info("key holder running again pid=%ld", (long)s->kh.pid);
}

static void restart_net(evutil_socket_t fd, short what, void *arg)
{
    struct sup *s = arg;
    int *net_ends = s->net_ends;
    (void)fd; (void)what;

    s->net_ends = NULL;
    if (net_ends == NULL) {
        int *kh_ends = calloc(s->nlinks, sizeof(int));
        net_ends = calloc(s->nlinks, sizeof(int));
        if (kh_ends == NULL || net_ends == NULL || make_links(s->nlinks, kh_ends, net_ends) != 0) {
            free(kh_ends);
            free(net_ends);
            (void)restart_later(s, &s->net);
            return;
        }
        /* The key holder replaces the links of the process that died. */
        for (unsigned i = 0; s->kh.pid > 0 && i < s->nlinks; i++)
            if (send_frame(s->kh.ctl, IPC_CTL_LINK, i, kh_ends[i]) != IPC_OK)
                log_error("could not hand a new link to the key holder link=%u", i);
        close_fds(kh_ends, s->nlinks);
        free(kh_ends);
    }
    log_info("starting the network process again");
    if (start_net(s, net_ends, false) != 0) {
        free(net_ends);
        log_error("the network process did not start; trying again in=%.1fs", restart_later(s, &s->net));
        return;
    }
    free(net_ends);
    log_info("network process running again pid=%ld", (long)s->net.pid);
}

static const char *exit_text(int st, char *buf, size_t len)
{
    if (WIFEXITED(st))
        snprintf(buf, len, "exit status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(buf, len, "signal %d%s", WTERMSIG(st), WTERMSIG(st) == SIGSYS ? " (forbidden system call)" : "");
    else
        snprintf(buf, len, "status %d", st);
    return buf;
}

/* Reaps every child that ended (no zombies) and restarts it. */
static void on_chld(evutil_socket_t sig, short what, void *arg)
{
    struct sup *s = arg;
    pid_t pid;
    int st;
    char why[64];
    (void)sig; (void)what;

    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        struct child *c = pid == s->kh.pid ? &s->kh : pid == s->net.pid ? &s->net : NULL;
        if (c == NULL)
            continue;
        c->pid = 0;
        if (c->ctl >= 0)
            close(c->ctl);
        c->ctl = -1;
        if (s->stopping)
            continue;
        if (c == &s->kh && s->pin_in_env) {
            /* A new key holder could not log in: the PIN is nowhere now. */
            log_error("the key holder exited unexpectedly (%s); its PIN came from the environment, which is wiped: "
                      "stopping, for the service manager to start groupsrv again",
                      exit_text(st, why, sizeof(why)));
            s->failed = 1;
            event_base_loopbreak(s->base);
            continue;
        }
        log_error("%s exited unexpectedly (%s); restarting it in=%.1fs", c->name, exit_text(st, why, sizeof(why)),
                  restart_later(s, c));
    }
}

/* SIGHUP reads the TLS files, the PIN file and the audit log's path again,
 * never the configuration file (groupsrv.1): an operator who edited it and
 * ran `systemctl reload` would otherwise believe the change was in effect.
 * The file is compared with the bytes serve started with (it may hold a
 * [db] url password: wiped). Unreadable now: said too, a restart would
 * fail the same way. */
static void note_config_changed(const struct gs_config *cfg)
{
    struct gs_config *edited = NULL;
    unsigned char *now = NULL;
    size_t len = 0;
    int rc = UTIL_E_IO, fd = -1;
    struct stat sb;
    const char *why = NULL;

    if (cfg->path == NULL || cfg->text == NULL)
        return;
    /* This runs in the supervisor's event loop: O_NONBLOCK and regular
     * files only, so a path that became a FIFO (open waits for a writer)
     * or a device does not stop every later reload, restart and stop. */
    if ((fd = open(cfg->path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)) < 0)
        rc = errno == ENOENT ? UTIL_E_NOTFOUND : UTIL_E_IO;
    else if (fstat(fd, &sb) != 0)
        rc = UTIL_E_IO;
    else if (!S_ISREG(sb.st_mode))
        why = "not a regular file";
    else if ((uint64_t)sb.st_size > GS_CONFIG_FILE_MAX)
        rc = UTIL_E_TOOBIG;
    else
        rc = util_read_fd(fd, GS_CONFIG_FILE_MAX, &now, &len);
    if (fd >= 0)
        close(fd);
    if (why != NULL || rc != UTIL_OK) {
        log_warn("the configuration file cannot be read again; a restart would not start path=\"%s\" err=\"%s\"",
                 log_qs(cfg->path), why != NULL ? why : util_strerror(rc));
        goto out;
    }
    if (len == cfg->text_len && CRYPTO_memcmp(now, cfg->text, len) == 0)
        goto out;
    /* An edit that broke the file (a stray bracket, a misspelt key) is
     * said now, while the server still runs: "restart to take the change
     * up" alone led to a restart that did not start. */
    if (memchr(now, '\0', len) != NULL) {
        log_warn("the configuration file changed since serve started and holds a NUL byte; a restart would not "
                 "start path=\"%s\"",
                 log_qs(cfg->path));
    } else if (gs_config_load_string((const char *)now, cfg->path, &edited) != GS_OK) {
        char q[600];
        log_warn("the configuration file changed since serve started and is not valid; a restart would not start "
                 "path=\"%s\" err=\"%s\"",
                 log_qs(cfg->path), log_quote(q, sizeof(q), gs_err_detail()));
    } else {
        log_warn("the configuration file changed since serve started; SIGHUP reads the TLS files, the PIN "
                 "file, the CA certificate and the audit log again, not this file: restart groupsrv to take "
                 "the change up path=\"%s\"",
                 log_qs(cfg->path));
    }
out:
    gs_config_free(edited);
    if (now != NULL)
        OPENSSL_cleanse(now, len);
    free(now);
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    struct sup *s = arg;
    (void)sig; (void)what;

    note_config_changed(s->cfg);

    /* New connections use the new certificate/key/CAs/CRLs; requests on
     * existing connections are verified against the new stores too. The
     * network process says "reloaded" once it has them. */
    /* The key holder first: it opens the audit log again if it was
     * replaced (log rotation), which must not wait for the network
     * process to take its frame. */
    if (s->kh.pid > 0)
        kill(s->kh.pid, SIGHUP);
    int wrc = IPC_OK;
    if (s->net.pid <= 0) {
        /* Not "reload failed": there is no configuration to keep, and the
         * process started next reads the files as they are then
         * (send_tls, TLS_AT_RESTART). */
        log_info("the network process is being started again: it reads the TLS files at its start");
        return;
    }
    if (send_tls(s, s->net.ctl, TLS_AT_RELOAD, &wrc) != 0) {
        if (wrc != IPC_OK)
            net_ctl_failed(s, "TLS reload", wrc); /* its successor reads the files at its start */
        else
            log_error("reload failed; keeping the previous TLS configuration");
    }
}

/* A SIGTERM or SIGINT before the event loop's signal events are in place
 * (set while both children start): the server stops as soon as it has
 * started. */
static volatile sig_atomic_t early_stop;

static void on_early_signal(int sig)
{
    if (sig != SIGHUP)
        early_stop = 1;
}

static void on_term(evutil_socket_t sig, short what, void *arg)
{
    struct sup *s = arg;
    (void)what;
    log_info("shutting down signal=%d", (int)sig);
    event_base_loopbreak(s->base);
}

/* Sends SIGTERM and waits up to `seconds` for the child, then kills it.
 * 0 when it exited cleanly (or was not running), else -1. */
static int stop_child(struct child *c, double seconds)
{
    int st = 0;
    double deadline = util_monotonic_s() + seconds;
    char why[64];

    if (c->pid <= 0)
        return 0;
    kill(c->pid, SIGTERM);
    while (waitpid(c->pid, &st, WNOHANG) == 0) {
        if (util_monotonic_s() > deadline) {
            log_error("%s did not stop in time: killing it", c->name);
            kill(c->pid, SIGKILL);
            waitpid(c->pid, &st, 0);
            break;
        }
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    c->pid = 0;
    if (c->ctl >= 0)
        close(c->ctl);
    c->ctl = -1;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 0;
    log_error("%s ended badly at shutdown (%s)", c->name, exit_text(st, why, sizeof(why)));
    return -1;
}

int gs_cmd_serve(const struct gs_config *cfg, int argc, char **argv)
{
    struct sup s;
    struct event *ev_term = NULL, *ev_int = NULL, *ev_hup = NULL, *ev_chld = NULL;
    int *kh_ends = NULL, *net_ends = NULL;
    int rc = 1;
    char why[160];

    memset(&s, 0, sizeof(s));
    s.listen_fd = s.certsrv_fd = -1;
    s.kh = (struct child){.name = "the key holder", .ctl = -1};
    s.net = (struct child){.name = "the network process", .ctl = -1};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fprintf(stderr, "usage: groupsrv [-c FILE] serve\n");
            return 0;
        }
        return usage_error("serve takes no arguments (got %s)", argv[i]);
    }
    if (cfg->tls.cert == NULL || cfg->tls.key == NULL) {
        /* the configuration lacks what serve needs: exit 5, as for any
         * invalid configuration (groupsrv(1), EXIT STATUS) */
        log_error("not started: [tls] cert and key are required config=\"%s\"", log_qs(cfg->path));
        return 5;
    }
    /* Not dumpable, no core files: this process holds the configuration
     * with [db] url's password and, for a moment at each start and reload,
     * the [tls] key file's contents; and the key holder it forks inherits
     * both settings, so it is never dumpable, not even before its own
     * prctl runs (a tracer attached then would stay attached). */
    struct rlimit nocore = {0, 0};
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 || setrlimit(RLIMIT_CORE, &nocore) != 0) {
        log_error("not started: cannot disable core dumps err=\"%s\"", strerror(errno));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    /* The signal events are added once both children are ready (a second
     * or more: the token's login): a SIGTERM before then (a service
     * manager's stop just after its start, a test's) killed this process
     * by the default action, exit by signal 15 and the children left to
     * find the supervisor gone; a SIGHUP (a reload) killed it too. Caught
     * from here on (the children set their own: child_defaults). */
    struct sigaction early;
    memset(&early, 0, sizeof(early));
    early.sa_handler = on_early_signal;
    early.sa_flags = SA_RESTART;
    sigemptyset(&early.sa_mask);
    if (sigaction(SIGTERM, &early, NULL) != 0 || sigaction(SIGINT, &early, NULL) != 0 ||
        sigaction(SIGHUP, &early, NULL) != 0) {
        log_error("not started: cannot catch signals err=\"%s\"", strerror(errno));
        return 1;
    }
    ipc_libevent_log_to_ours();
    s.cfg = cfg;
    s.nlinks = (cfg->server.threads ? cfg->server.threads : 4) + 1;
    if (find_net_program(s.net_path, sizeof(s.net_path)) != 0) {
        log_error("not started: the network process program is missing path=\"%s\"", log_qs(s.net_path));
        return 1;
    }
    if (geteuid() == 0 && getpwnam(cfg->server.user) == NULL) {
        log_error("not started: [server] user does not exist user=\"%s\"", log_qs(cfg->server.user));
        return 1;
    }
    /* The bytes cfg was parsed from (read once, by gs_config_load): every
     * network process, also one started again later, gets the
     * configuration the key holder and this process run with (its threads
     * are the links made here), not the file as edited since; a change to
     * the file takes a restart of serve. */
    if (cfg->text == NULL || (s.cfg_text = malloc(cfg->text_len + 1)) == NULL) {
        log_error("not started err=\"%s\"", cfg->text == NULL ? "no config file text" : "out of memory");
        return 1;
    }
    memcpy(s.cfg_text, cfg->text, cfg->text_len);
    s.cfg_text[cfg->text_len] = '\0';
    s.cfg_len = cfg->text_len;
    if (hide_db_password(cfg, &s.cfg_text, &s.cfg_len) != 0) {
        log_error("not started err=\"out of memory\"");
        goto out;
    }
    const char *listen = cfg->server.listen ? cfg->server.listen : "127.0.0.1:8443";
    if (listen_on(listen, &s.listen_fd, why, sizeof(why)) != 0) {
        log_error("not started: cannot listen addr=\"%s\" err=\"%s\"", log_qs(listen), log_qs(why));
        goto out;
    }
    if (cfg->certsrv.listen != NULL && listen_on(cfg->certsrv.listen, &s.certsrv_fd, why, sizeof(why)) != 0) {
        log_error("not started: cannot listen addr=\"%s\" listener=certsrv err=\"%s\"",
                  log_qs(cfg->certsrv.listen), log_qs(why));
        goto out;
    }
    /* Made before the first key holder, for every key holder: the
     * counters of one that dies go on in the next (SECURITY.md). */
    if ((s.rl = keyholder_ratelimit_new(cfg, true)) == NULL) {
        log_error("not started err=\"cannot make the rate limiter's shared memory\"");
        goto out;
    }
    if ((kh_ends = calloc(s.nlinks, sizeof(int))) == NULL || (net_ends = calloc(s.nlinks, sizeof(int))) == NULL) {
        log_error("not started err=\"out of memory\"");
        goto out;
    }
    if (make_links(s.nlinks, kh_ends, net_ends) != 0) {
        log_error("not started: the processes could not be linked (its line above says why)");
        goto out;
    }
    /* The key holder first, from this process that never touched PKCS#11. */
    int held = start_holder(&s, kh_ends);
    if (held != 0) {
        log_error("not started: the key holder could not start (its line above says why)");
        close_fds(net_ends, s.nlinks);
        if (held == 5 || held == 4)
            rc = held; /* the configuration (not worth a restart), or the token */
        goto out;
    }
    /* An env: PIN is the key holder's now: wiped here (the value in place,
     * so /proc/PID/environ no longer shows it), before the network process
     * starts. The key holder cannot be restarted without it (on_chld). */
    s.pin_in_env = cfg->hsm.pin_source != NULL && strncmp(cfg->hsm.pin_source, "env:", 4) == 0;
    util_forget_env_source(cfg->hsm.pin_source);
    if (start_net(&s, net_ends, true) != 0) {
        log_error("not started: the network process could not start (its line above says why)");
        goto out;
    }
    if ((s.base = event_base_new()) == NULL)
        goto out;
    s.kh.restart_ev = evtimer_new(s.base, restart_holder, &s);
    s.net.restart_ev = evtimer_new(s.base, restart_net, &s);
    ev_term = evsignal_new(s.base, SIGTERM, on_term, &s);
    ev_int = evsignal_new(s.base, SIGINT, on_term, &s);
    ev_hup = evsignal_new(s.base, SIGHUP, on_hup, &s);
    ev_chld = evsignal_new(s.base, SIGCHLD, on_chld, &s);
    if (s.kh.restart_ev == NULL || s.net.restart_ev == NULL || ev_term == NULL || ev_int == NULL || ev_hup == NULL ||
        ev_chld == NULL || evsignal_add(ev_term, NULL) != 0 || evsignal_add(ev_int, NULL) != 0 ||
        evsignal_add(ev_hup, NULL) != 0 || evsignal_add(ev_chld, NULL) != 0)
        goto out;
    on_chld(SIGCHLD, 0, &s); /* one may have ended before the handler was in place */
    log_info("listening addr=%s certsrv=%s threads=%u keyholder=%ld network=%ld", listen,
             cfg->certsrv.listen ? cfg->certsrv.listen : "off", s.nlinks - 1, (long)s.kh.pid, (long)s.net.pid);
    if (early_stop)
        log_info("shutting down: a signal came while starting");
    else
        event_base_dispatch(s.base);
    rc = s.failed ? 1 : 0;
out:
    s.stopping = 1;
    /* The network process drains its requests while the key holder still
     * answers; then the key holder finishes its queue and syncs. */
    int net_rc = stop_child(&s.net, 10), kh_rc = stop_child(&s.kh, 60);
    if (net_rc != 0 || kh_rc != 0)
        rc = 1; /* e.g. the sanitizer found a leak in a child */
    if (rc == 0)
        log_info("stopped");
    close_fds(s.net_ends, s.nlinks);
    free(s.net_ends);
    free(kh_ends);
    free(net_ends);
    struct event *evs[] = {ev_term, ev_int, ev_hup, ev_chld, s.kh.restart_ev, s.net.restart_ev};
    for (size_t i = 0; i < GS_ARRAY_LEN(evs); i++)
        if (evs[i] != NULL)
            event_free(evs[i]);
    if (s.base != NULL)
        event_base_free(s.base);
    if (s.listen_fd >= 0)
        close(s.listen_fd);
    if (s.certsrv_fd >= 0)
        close(s.certsrv_fd);
    ratelimit_free(s.rl);
    /* the text may still hold [db] url's password (not found written out) */
    if (s.cfg_text != NULL)
        OPENSSL_cleanse(s.cfg_text, s.cfg_len);
    free(s.cfg_text);
    return rc;
}

/* One error line of `audit verify` or `audit rotate`, as every command's:
 * "groupsrv: audit verify: ...", control characters of paths shown as '?'. */
__attribute__((format(printf, 1, 2))) static void audit_cmd_error(const char *fmt, ...)
{
    char msg[4096 + 512];
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    error_line(msg, "");
}

/* groupsrv audit verify: exit 0 good, 1 unreadable or an earlier file
 * missing (or --since not on the chain), 3 broken chain or malformed line,
 * 6 a torn tail only. since: --since, the archive to start at (the older
 * ones moved away), or NULL. */
static int audit_verify_cmd(const char *file, int follow, const char *since)
{
    audit_verify_result res;
    struct stat st;

    /* A FIFO would block the open until a writer comes, a pipe cannot be
     * read twice (the chain's check seeks): a copy in a file is checked. */
    if (stat(file, &st) == 0 && !S_ISREG(st.st_mode)) {
        audit_cmd_error("audit verify: %s: not a regular file (save the log to a file and verify that)",
                        file);
        return 1;
    }
    audit_err e = since != NULL ? audit_verify_chain_since(file, since, &res) : audit_verify_chain(file, follow, &res);

    if (e == AUDIT_OK && since != NULL) {
        /* The start is taken as given: printed for the operator to compare
         * with the hash recorded before the older archives were moved away
         * (a chain put in their place would start elsewhere). */
        printf("ok: %zu lines in %zu files from %s, start %s, chain head %s\n", res.lines, res.files, since,
               res.start[0] ? res.start : "(none: the file is empty)", res.head);
        return 0;
    }
    if (e == AUDIT_OK) {
        if (res.files > 1)
            printf("ok: %zu lines in %zu files, chain head %s\n", res.lines, res.files, res.head);
        else
            printf("ok: %zu lines, chain head %s\n", res.lines, res.head);
        return 0;
    }
    if (e == AUDIT_ERR_MISSING) {
        audit_cmd_error("audit verify: %s: %s (%zu good lines after it)", res.bad_file, audit_strerror(e),
                        res.lines);
        return 1;
    }
    if (e == AUDIT_ERR_NOT_IN_CHAIN) {
        audit_cmd_error("audit verify: --since %s: %s (%s, followed back to its start, does not pass it)", since,
                        audit_strerror(e), file);
        return 1;
    }
    if (e == AUDIT_ERR_IO || e == AUDIT_ERR_NOMEM || e == AUDIT_ERR_ARGS) {
        audit_cmd_error("audit verify: %s: %s", res.bad_file[0] ? res.bad_file : file,
                        e == AUDIT_ERR_IO ? strerror(errno) : audit_strerror(e));
        return 1;
    }
    if (e == AUDIT_ERR_TORN) {
        /* Not tampering: a write cut short (crash, full disk), which the
         * server cuts off when it next opens or writes the file. */
        audit_cmd_error(
            "audit verify: %s: torn tail: line %zu is an incomplete record (an interrupted write, "
            "not an edit); the %zu lines before it verify; `groupsrv serve` cuts it off at start",
            res.bad_file, res.bad_line, res.lines);
        return 6;
    }
    /* A changed record still chains to the one before it: the break shows
     * at the next line, so both are named. */
    if (e == AUDIT_ERR_CHAIN && res.bad_line > 1)
        audit_cmd_error(
            "audit verify: %s: line %zu: %s (%zu good lines before it): its prev is not the hash of "
            "line %zu (line %zu or %zu changed, or records between them removed or moved)",
            res.bad_file, res.bad_line, audit_strerror(e), res.lines, res.bad_line - 1, res.bad_line - 1,
            res.bad_line);
    else
        audit_cmd_error("audit verify: %s: line %zu: %s (%zu good lines before it)", res.bad_file,
                        res.bad_line, audit_strerror(e), res.lines);
    return 3;
}

/* Whether the log's directory is append-only or immutable, said as audit
 * rotate's error: asked before rotating, as an append-only directory lets
 * the archive's name be made and the seal written, then forbids putting
 * the next file at the log's path and removing the archive's name and the
 * .rotating file again, so the seal stayed in the file the server writes
 * on and no later rotation could remove the .rotating file. */
static int audit_dir_refuses(const char *file)
{
    char *dir = util_dir_of(file);
    int attrs = dir != NULL ? util_file_attrs(dir, 1) : 0;

    if (attrs != 0)
        audit_cmd_error("audit rotate: %s: its directory %s is %s, which forbids putting the next file at the "
                        "log's path: remove the attribute for the rotation (chattr -%c %s)",
                        file, dir, util_file_attrs_name(attrs), util_file_attrs_flag(attrs), dir);
    free(dir);
    return attrs != 0;
}

/* groupsrv audit rotate: exit 0 rotated, 1 failed, 3 last line torn. */
static int audit_rotate_cmd(const char *file)
{
    audit_log *log = NULL;
    char archive[4096];
    struct stat st;
    audit_err e;
    int dir_errno, attrs;

    /* An existing regular file only: rotating must not create a log (as
     * root, one the server could not write), nor follow a link. */
    if (lstat(file, &st) != 0) {
        audit_cmd_error("audit rotate: %s: %s", file, strerror(errno));
        return 1;
    }
    if (!S_ISREG(st.st_mode)) {
        audit_cmd_error("audit rotate: %s: not a regular file", file);
        return 1;
    }
    if (audit_dir_refuses(file))
        return 1;
    if ((e = audit_open(file, &log)) == AUDIT_OK && audit_torn_bytes_cut(log) > 0)
        /* records were lost there: said, also from cron (exit 0: the rest
         * of the chain is whole, and rotating goes on) */
        audit_cmd_error(
            "audit rotate: %s: cut off a torn tail of %lld bytes first (an incomplete last record: "
            "an interrupted write, not an edit)",
            file, audit_torn_bytes_cut(log));
    if (e == AUDIT_OK)
        e = audit_rotate(log, archive, sizeof(archive));
    audit_close(log);
    if (e == AUDIT_OK) {
        printf("sealed %s as %s; %s continues the chain\n", file, archive, file);
        return 0;
    }
    /* "cannot be written" of a log this user appends to: its directory is
     * what refused (the next file and the archive's name are made there),
     * so say that, or the operator looks at the file's mode in vain. */
    if (e == AUDIT_ERR_IO && access(file, W_OK) == 0 && (dir_errno = util_dir_unwritable(file)) != 0) {
        audit_cmd_error(
            "audit rotate: %s: its directory cannot be written by this user (uid %lu): %s (rotating makes "
            "the next file and the archive's name there: run it as the directory's owner)",
            file, (unsigned long)geteuid(), strerror(dir_errno));
        return 1;
    }
    /* An append-only log (chattr +a, a common hardening) takes records
     * as before, but rotating links it to its archive name and replaces
     * it, which the attribute forbids (EPERM): "cannot be written" would
     * send the operator to a file that is being written. */
    if (e == AUDIT_ERR_IO && (attrs = util_file_attrs(file, 0)) != 0) {
        audit_cmd_error("audit rotate: %s: the file is %s, which forbids giving it its archive name and "
                        "putting the next file at its path: remove the attribute for the rotation (chattr -%c) "
                        "and set it on the new file afterwards",
                        file, util_file_attrs_name(attrs), util_file_attrs_flag(attrs));
        return 1;
    }
    audit_cmd_error("audit rotate: %s: %s", file, audit_strerror(e));
    return e == AUDIT_ERR_FORMAT ? 3 : 1;
}

int gs_cmd_audit(const struct gs_config *cfg, int argc, char **argv)
{
    const char *file = cfg ? cfg->audit.path : NULL;
    int follow = 1, verify, explicit_file = 0;
    const char *since = NULL;
    size_t chains = 0;

    if (argc < 2 || (strcmp(argv[1], "verify") != 0 && strcmp(argv[1], "rotate") != 0))
        return usage_error("audit: expected verify or rotate");
    verify = strcmp(argv[1], "verify") == 0;
    /* main.c's parser, as every other command: --opt VALUE or --opt=VALUE */
    static const struct opt_def verify_defs[] = {{"--file", true}, {"--no-follow", false}, {"--since", true}};
    struct args a;
    int rc = parse_args(argc - 2, argv + 2, verify_defs, verify ? 3 : 1, &a);
    if (rc != 0)
        return rc;
    if (a.npos > 0)
        return usage_error("audit %s: unexpected argument %s", argv[1], a.pos[0]);
    if (opt(&a, "--file") != NULL) {
        file = opt(&a, "--file");
        explicit_file = 1;
    }
    if (opt(&a, "--no-follow") != NULL)
        follow = 0;
    since = opt(&a, "--since");
    if (since != NULL && !follow)
        return usage_error("audit verify: --since and --no-follow exclude each other");
    if (since != NULL && since[0] == '\0')
        return usage_error("audit verify: --since needs a file name");
    if (!explicit_file && cfg != NULL && strcmp(cfg->audit.store, "db") == 0) {
        if (verify && since != NULL) {
            audit_cmd_error("audit verify: --since is for a file log; [audit] store = db keeps rows, not "
                            "archives (see docs/scale-out.md)");
            return 2;
        }
        if (!verify) {
            /* Rows in a table: archived by instance and sequence range, not rotated. */
            audit_cmd_error("audit rotate: [audit] store = db has no file to rotate (see docs/scale-out.md)");
            return 2;
        }
        /* Every instance's chain in the shared database. */
        audit_err de = audit_verify_db(gs_config_db_location(cfg), stdout, &chains);
        if (de == AUDIT_OK) {
            printf("ok: %zu instance chain(s) verified\n", chains);
            return 0;
        }
        if (de == AUDIT_ERR_IO) {
            /* one line (error_line shows the control characters of
             * libpq's message as '?') */
            char msg[700];
            (void)snprintf(msg, sizeof(msg), "audit verify: cannot read the audit table: %s", gs_err_detail());
            error_line(msg, "");
            return 1;
        }
        audit_cmd_error("audit verify: %s", audit_strerror(de));
        return 3;
    }
    if (file == NULL) {
        audit_cmd_error("audit %s: no audit file ([audit] path or --file)", argv[1]);
        return 2;
    }
    return verify ? audit_verify_cmd(file, follow, since) : audit_rotate_cmd(file);
}
