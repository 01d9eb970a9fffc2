/*
 * serve.c: `groupsrv serve` (process wiring, signals, reload) and
 * `groupsrv audit verify`.
 */
#include "serve.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "log.h"
#include "server.h"
#include "util.h"

static int listen_on(const char *hostport, int *fd_out)
{
    char host[256], *colon;
    struct addrinfo hints, *ai = NULL;
    int fd = -1, one = 1, rc = -1;

    *fd_out = -1;
    if (util_strlcpy(host, hostport, sizeof(host)) != 0 || (colon = strrchr(host, ':')) == NULL)
        return -1;
    *colon = '\0';
    const char *port = colon + 1;
    char *h = host;
    if (h[0] == '[' && colon > h && colon[-1] == ']') { /* [::1]:8443 */
        h++;
        colon[-1] = '\0';
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    if (getaddrinfo(*h ? h : NULL, port, &hints, &ai) != 0 || ai == NULL)
        goto out;
    if ((fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0)
        goto out;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0)
        log_warn("SO_REUSEADDR failed addr=%s", hostport);
    /* Answers are small and go out as several TLS records: without
     * TCP_NODELAY, Nagle holds the last one until the client's delayed ACK
     * (~40 ms per request on a kept-alive connection). Accepted sockets
     * inherit it from the listener on Linux and the BSDs. */
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
        log_warn("TCP_NODELAY failed addr=%s", hostport);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 511) != 0)
        goto out;
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

struct main_loop {
    struct event_base *base;
    const struct gs_config *cfg;
    gs_ca *ca;
    hsm_ctx *hsm;
    audit_log *audit;
};

/* hsm: for [tls] key = pkcs11:URI (the token is open before TLS set-up). */
static int load_tls(const struct gs_config *cfg, gs_ca *ca, hsm_ctx *hsm)
{
    tls_opts o = {.cert_file = cfg->tls.cert, .key_file = cfg->tls.key, .client_ca_file = cfg->tls.client_ca,
                  .local_ca = ca ? gs_ca_cert(ca) : NULL, .hsm = hsm};
    tls_state *st = NULL;
    char err[512];

    if (tls_state_new(&o, &st, err, sizeof(err)) != 0) {
        log_error("TLS setup failed reason=\"%s\"", err);
        return -1;
    }
    tls_current_set(st);
    tls_state_unref(st);
    return 0;
}

static void on_term(evutil_socket_t sig, short what, void *arg)
{
    struct main_loop *m = arg;
    (void)what;
    log_info("shutting down signal=%d", (int)sig);
    event_base_loopbreak(m->base);
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    struct main_loop *m = arg;
    (void)sig; (void)what;
    /* New connections use the new certificate/key/CAs/CRLs; requests on
     * existing connections are verified against the new stores too. */
    if (load_tls(m->cfg, m->ca, m->hsm) == 0)
        log_info("reloaded TLS certificate, key, client CAs and CRLs");
    else
        log_error("reload failed; keeping the previous TLS configuration");
    /* An audit log deleted (or moved away) and made anew at its path:
     * write there from now on, without a restart. */
    if (audit_reopen(m->audit) != AUDIT_OK)
        log_error("the audit log at its path cannot be opened; key requests stay refused");
}

static void key_audit_row(void *arg, const gs_key_audit_row *row)
{
    unsigned *bad = arg;
    if (!row->ok && !row->present && (row->version > 0 || strcmp(row->kind, "reject") == 0)) {
        /* A key version (or a group's rejection key) this token lacks:
         * servers on one shared database whose tokens get keys by the
         * ceremony. Served as 503 key_unavailable, not fatal. */
        log_warn("key version missing from this token kind=%s group=%s version=%u label=%s", row->kind, row->group,
                 row->version, row->label);
        return;
    }
    if (!row->ok) {
        log_error("token key fails its policy label=%s problem=\"%s\"", row->label, row->problem);
        (*bad)++;
    } else if (row->accepted[0] != '\0' || row->note[0] != '\0') {
        /* Never silent: what the token could not do is named at every start. */
        if (row->accepted[0] != '\0')
            log_warn("token key runs with an accepted weakening label=%s weakenings=%s note=\"%s\"", row->label,
                     row->accepted, row->note);
        else
            log_warn("token key passes, not every attribute verified label=%s note=\"%s\"", row->label, row->note);
    }
}

/* What the token can do, once at start (hsm/ probes it; the policy of
 * each group was chosen from it and is in the database). */
static void log_caps(hsm_ctx *hsm)
{
    hsm_caps c;

    (void)hsm_caps_get(hsm, &c);
    log_info("token capabilities rewrap_on_token=%s secret_keys_on_token=%s allowed_mechanisms=%s "
             "unwrap_template=%s max_sessions=%lu",
             c.rewrap_on_token ? "yes" : "no", c.secret_on_token ? "yes" : "no",
             c.allowed_mechanisms == HSM_ATTR_YES ? "yes" : "no", c.unwrap_template == HSM_ATTR_YES ? "yes" : "no",
             c.max_sessions);
}

int gs_cmd_serve(const struct gs_config *cfg, int argc, char **argv)
{
    struct srv s;
    struct gs_config hcfg;
    gs_store *st = NULL;
    struct main_loop m = {0};
    struct event *ev_term = NULL, *ev_int = NULL, *ev_hup = NULL;
    int rc = 1;
    gs_err ge;

    memset(&s, 0, sizeof(s));
    s.listen_fd = s.certsrv_fd = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fprintf(stderr, "usage: groupsrv [-c FILE] serve\n");
            return 0;
        }
        fprintf(stderr, "groupsrv serve: unknown argument '%s'\n", argv[i]);
        return 2;
    }
    if (cfg->tls.cert == NULL || cfg->tls.key == NULL) {
        fprintf(stderr, "groupsrv serve: [tls] cert and key are required\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (evthread_use_pthreads() != 0) {
        fprintf(stderr, "groupsrv serve: libevent threading unavailable\n");
        return 1;
    }
    s.cfg = cfg;
    s.nthreads = cfg->server.threads ? cfg->server.threads : 4;
    s.max_body = cfg->server.max_body ? cfg->server.max_body : 65536;
    s.timeout = cfg->server.timeout ? cfg->server.timeout : 30;
    s.max_conns = cfg->server.max_connections ? (long)cfg->server.max_connections : 1024;
    s.budget[SRV_API] = s.max_conns;
    s.unauth_budget[SRV_API] = s.max_conns - (long)cfg->server.reserved_connections;
    s.budget[SRV_CERTSRV] = cfg->certsrv.max_connections ? (long)cfg->certsrv.max_connections : 256;
    s.unauth_budget[SRV_CERTSRV] = s.budget[SRV_CERTSRV] - s.budget[SRV_CERTSRV] / 4;
    s.per_address = cfg->server.max_connections_per_address ? cfg->server.max_connections_per_address : 32;
    s.handshake_timeout = cfg->server.handshake_timeout ? cfg->server.handshake_timeout : 10;
    s.request_timeout = cfg->server.request_timeout ? cfg->server.request_timeout : 20;
    if ((s.addrs = srv_addr_table_new()) == NULL)
        return 1;
    /* [server] max_failed_unwraps, suspend_seconds (defaults 20, 600). */
    s.max_failures = cfg->server.max_failed_unwraps;
    s.suspend_seconds = cfg->server.suspend_seconds ? cfg->server.suspend_seconds : 600;

    /* The audit log first: without it nothing may be served. */
    if (strcmp(cfg->audit.store, "db") == 0) {
        audit_err ae = audit_open_db(gs_config_db_location(cfg), cfg->server.instance, &s.audit);
        if (ae != AUDIT_OK) {
            fprintf(stderr, "groupsrv serve: audit table (instance %s): %s: %s\n", cfg->server.instance,
                    audit_strerror(ae), gs_err_detail());
            goto out;
        }
    } else {
        char *dup = strdup(cfg->audit.path);
        if (dup == NULL)
            goto out;
        util_mkdir_p(dirname(dup), 0700);
        free(dup);
        audit_err ae = audit_open(cfg->audit.path, &s.audit);
        if (ae != AUDIT_OK) {
            fprintf(stderr, "groupsrv serve: audit log %s: %s\n", cfg->audit.path, audit_strerror(ae));
            goto out;
        }
    }
    /* One token session per event-loop thread, plus headroom for /healthz. */
    hcfg = *cfg;
    if (hcfg.hsm.max_sessions < s.nthreads + 2)
        hcfg.hsm.max_sessions = s.nthreads + 2;
    if ((ge = gs_hsm_open(&hcfg, &s.hsm)) != GS_OK) {
        fprintf(stderr, "groupsrv serve: token: %s\n", gs_err_detail()[0] ? gs_err_detail() : gs_strerror(ge));
        goto out;
    }
    log_caps(s.hsm);
    if ((ge = gs_store_open(gs_config_db_location(cfg), 0, &st)) != GS_OK) {
        char where[1100];
        gs_store_location_display(gs_config_db_location(cfg), where, sizeof(where));
        fprintf(stderr, "groupsrv serve: database %s: %s\n", where,
                gs_err_detail()[0] ? gs_err_detail() : gs_strerror(ge));
        goto out;
    }
    ge = gs_ca_load(st, s.hsm, &s.ca);
    if (ge == GS_ERR_NOT_FOUND)
        log_warn("no local CA (groupsrv ca init): no membership certificates, no group creation");
    else if (ge != GS_OK) {
        fprintf(stderr, "groupsrv serve: CA: %s\n", gs_err_detail()[0] ? gs_err_detail() : gs_strerror(ge));
        goto out;
    }
    unsigned problems = 0, bad_rows = 0;
    if ((ge = gs_keys_audit(st, s.hsm, key_audit_row, &bad_rows, &problems)) != GS_OK) {
        fprintf(stderr, "groupsrv serve: key audit: %s\n", gs_err_detail()[0] ? gs_err_detail() : gs_strerror(ge));
        goto out;
    }
    if (bad_rows > 0) {
        fprintf(stderr, "groupsrv serve: %u token key(s) violate their policy (see groupsrv check); refusing to start\n",
                bad_rows);
        goto out;
    }
    gs_store_close(st);
    st = NULL;
    if (load_tls(cfg, s.ca, s.hsm) != 0) {
        fprintf(stderr, "groupsrv serve: TLS configuration failed (see log)\n");
        goto out;
    }
    s.rl = ratelimit_new((double)cfg->server.rate_limit,
                         (double)(cfg->server.rate_burst ? cfg->server.rate_burst : 2 * cfg->server.rate_limit),
                         s.max_failures, s.suspend_seconds);
    if (s.rl == NULL)
        goto out;
    const char *listen = cfg->server.listen ? cfg->server.listen : "127.0.0.1:8443";
    if (listen_on(listen, &s.listen_fd) != 0) {
        fprintf(stderr, "groupsrv serve: cannot listen on %s: %s\n", listen, strerror(errno));
        goto out;
    }
    if (cfg->certsrv.listen != NULL && listen_on(cfg->certsrv.listen, &s.certsrv_fd) != 0) {
        fprintf(stderr, "groupsrv serve: cannot listen on %s: %s\n", cfg->certsrv.listen, strerror(errno));
        goto out;
    }
    m.cfg = cfg;
    m.ca = s.ca;
    m.hsm = s.hsm;
    m.audit = s.audit;
    if ((m.base = event_base_new()) == NULL)
        goto out;
    ev_term = evsignal_new(m.base, SIGTERM, on_term, &m);
    ev_int = evsignal_new(m.base, SIGINT, on_term, &m);
    ev_hup = evsignal_new(m.base, SIGHUP, on_hup, &m);
    if (ev_term == NULL || ev_int == NULL || ev_hup == NULL || evsignal_add(ev_term, NULL) != 0 ||
        evsignal_add(ev_int, NULL) != 0 || evsignal_add(ev_hup, NULL) != 0)
        goto out;
    if (srv_threads_start(&s) != 0) {
        fprintf(stderr, "groupsrv serve: could not start the event-loop threads (see log)\n");
        goto out;
    }
    log_info("listening addr=%s certsrv=%s threads=%u", listen, cfg->certsrv.listen ? cfg->certsrv.listen : "off",
             s.nthreads);
    event_base_dispatch(m.base);
    srv_threads_stop(&s);
    log_info("stopped");
    rc = 0;
out:
    srv_threads_stop(&s);
    if (ev_term != NULL)
        event_free(ev_term);
    if (ev_int != NULL)
        event_free(ev_int);
    if (ev_hup != NULL)
        event_free(ev_hup);
    if (m.base != NULL)
        event_base_free(m.base);
    if (s.listen_fd >= 0)
        close(s.listen_fd);
    if (s.certsrv_fd >= 0)
        close(s.certsrv_fd);
    tls_current_set(NULL);
    ratelimit_free(s.rl);
    srv_addr_table_free(s.addrs);
    gs_store_close(st);
    gs_ca_free(s.ca);
    hsm_close(s.hsm);
    audit_close(s.audit);
    return rc;
}

#define AUDIT_USAGE                                                                                          \
    "usage: groupsrv [-c FILE] audit verify [--file PATH] [--no-follow]\n"                                   \
    "       groupsrv [-c FILE] audit rotate [--file PATH]\n"

/* groupsrv audit verify: exit 0 good, 1 unreadable or an earlier file
 * missing, 3 broken chain or malformed line, 6 a torn tail only. */
static int audit_verify_cmd(const char *file, int follow)
{
    audit_verify_result res;
    audit_err e = audit_verify_chain(file, follow, &res);

    if (e == AUDIT_OK) {
        if (res.files > 1)
            printf("ok: %zu lines in %zu files, chain head %s\n", res.lines, res.files, res.head);
        else
            printf("ok: %zu lines, chain head %s\n", res.lines, res.head);
        return 0;
    }
    if (e == AUDIT_ERR_MISSING) {
        fprintf(stderr, "groupsrv audit verify: %s: %s (%zu good lines after it)\n", res.bad_file,
                audit_strerror(e), res.lines);
        return 1;
    }
    if (e == AUDIT_ERR_IO || e == AUDIT_ERR_NOMEM || e == AUDIT_ERR_ARGS) {
        fprintf(stderr, "groupsrv audit verify: %s: %s\n", res.bad_file[0] ? res.bad_file : file,
                e == AUDIT_ERR_IO ? strerror(errno) : audit_strerror(e));
        return 1;
    }
    if (e == AUDIT_ERR_TORN) {
        /* Not tampering: a write cut short (crash, full disk), which the
         * server cuts off when it next opens or writes the file. */
        fprintf(stderr,
                "groupsrv audit verify: %s: torn tail: line %zu is an incomplete record (an interrupted write, "
                "not an edit); the %zu lines before it verify; `groupsrv serve` cuts it off at start\n",
                res.bad_file, res.bad_line, res.lines);
        return 6;
    }
    fprintf(stderr, "groupsrv audit verify: %s: line %zu: %s (%zu good lines before it)\n", res.bad_file,
            res.bad_line, audit_strerror(e), res.lines);
    return 3;
}

/* groupsrv audit rotate: exit 0 rotated, 1 failed, 3 last line torn. */
static int audit_rotate_cmd(const char *file)
{
    audit_log *log = NULL;
    char archive[4096];
    struct stat st;
    audit_err e;

    /* An existing regular file only: rotating must not create a log (as
     * root, one the server could not write), nor follow a link. */
    if (lstat(file, &st) != 0) {
        fprintf(stderr, "groupsrv audit rotate: %s: %s\n", file, strerror(errno));
        return 1;
    }
    if (!S_ISREG(st.st_mode)) {
        fprintf(stderr, "groupsrv audit rotate: %s: not a regular file\n", file);
        return 1;
    }
    if ((e = audit_open(file, &log)) == AUDIT_OK)
        e = audit_rotate(log, archive, sizeof(archive));
    audit_close(log);
    if (e == AUDIT_OK) {
        printf("sealed %s as %s; %s continues the chain\n", file, archive, file);
        return 0;
    }
    fprintf(stderr, "groupsrv audit rotate: %s: %s\n", file, audit_strerror(e));
    return e == AUDIT_ERR_FORMAT ? 3 : 1;
}

int gs_cmd_audit(const struct gs_config *cfg, int argc, char **argv)
{
    const char *file = cfg ? cfg->audit.path : NULL;
    int follow = 1, verify, explicit_file = 0;
    size_t chains = 0;

    if (argc < 2 || (strcmp(argv[1], "verify") != 0 && strcmp(argv[1], "rotate") != 0)) {
        fprintf(stderr, AUDIT_USAGE);
        return 2;
    }
    verify = strcmp(argv[1], "verify") == 0;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--file") == 0 && i + 1 < argc) {
            file = argv[++i];
            explicit_file = 1;
        } else if (verify && strcmp(argv[i], "--no-follow") == 0) {
            follow = 0;
        } else {
            fprintf(stderr, AUDIT_USAGE);
            return 2;
        }
    }
    if (!explicit_file && cfg != NULL && strcmp(cfg->audit.store, "db") == 0) {
        if (!verify) {
            /* Rows in a table: archived by instance and sequence range, not rotated. */
            fprintf(stderr, "groupsrv audit rotate: [audit] store = db has no file to rotate (see docs/scale-out.md)\n");
            return 2;
        }
        /* Every instance's chain in the shared database. */
        audit_err de = audit_verify_db(gs_config_db_location(cfg), stdout, &chains);
        if (de == AUDIT_OK) {
            printf("ok: %zu instance chain(s) verified\n", chains);
            return 0;
        }
        fprintf(stderr, "groupsrv audit verify: %s\n", audit_strerror(de));
        return de == AUDIT_ERR_IO ? 1 : 3;
    }
    if (file == NULL) {
        fprintf(stderr, "groupsrv audit %s: no audit file ([audit] path or --file)\n", argv[1]);
        return 2;
    }
    return verify ? audit_verify_cmd(file, follow) : audit_rotate_cmd(file);
}
