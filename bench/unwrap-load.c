/*
 * unwrap-load: load generator for POST /v1/groups/{g}/unwrap on libcurl's
 * multi interface (one thread, so it leaves the CPU to the server under
 * test). C concurrent requests with client certificates, for a count or a
 * duration, closed loop (each connection sends its next request when the
 * answer arrived) or open loop at a fixed rate (--rate: requests are due
 * at t0 + i/R and latency counts from when they were due, so a stalled
 * server is not hidden by the generator waiting for it).
 *
 * Connection modes:
 *   keepalive        C persistent connections (HTTP/1.1 keep-alive)
 *   new-conn         a new TCP+TLS connection per request, full handshake
 *                    (what a script calling curl in a loop pays)
 *   new-conn-resume  a new connection per request, TLS session resumed
 *
 *   unwrap-load --url URL --cert PEM --key PEM --cacert PEM
 *               (--ri DER [--deliver tls|recipient-key|group-secret] | --body JSON-FILE)
 *               [-c C] (--count N | --duration S) [--rate R] [--mode M]
 *               [--resolve HOST:PORT:ADDR] [--warmup N] [--timeout S]
 *               [--name KEY] [--variant V] [--header] [--lat-out FILE] [--shed-out FILE]
 * --shed-out: load shedding is an answer, not an error: a 503 "overloaded"
 * with Retry-After is counted as shed (written to FILE as shed=N and
 * shed_without_retry_after=N), kept out of the latencies and the errors;
 * the row's ops and percentiles are the admitted requests alone.
 * Prints one CSV row (benchutil.h); exit 0 only if there were no errors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "benchutil.h"
#include "util.h"

#define PROG "unwrap-load"
#define MAX_CONN 1024
#define RESP_CAP 65536
#define LAT_CAP 5000000

enum conn_mode { MODE_KEEPALIVE, MODE_NEW_CONN, MODE_NEW_CONN_RESUME };

typedef struct opts {
    bool shed_ok;       /* --shed-out: 503 overloaded is shedding, not an error */
    const char *url, *cert, *key, *cacert, *resolve;
    char *body;
    size_t body_len;
    const char *expect; /* substring a good answer must contain */
    unsigned conns;
    uint64_t count, warmup;
    double duration, rate, timeout;
    enum conn_mode mode;
} opts;

typedef struct slot {
    CURL *easy;
    bool busy;
    uint64_t due_ns; /* when this request was due (open loop) or sent */
    char resp[RESP_CAP];
    size_t resp_len;
    bool resp_overflow;
    bool retry_after;   /* the answer carried Retry-After */
    char errbuf[CURL_ERROR_SIZE];
} slot;

typedef struct stats {
    uint64_t ok, errors, shed, shed_no_retry;
    char first_error[256];
    bench_lat *lat;
    double connect_s_sum; /* TLS handshake time, to show resumption works */
    uint64_t new_conns;
} stats;

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *arg)
{
    slot *s = arg;
    size_t n = size * nmemb;

    if (n >= 12 && strncasecmp(ptr, "Retry-After:", 12) == 0)
        s->retry_after = true;
    return n;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *arg)
{
    slot *s = arg;
    size_t n = size * nmemb;

    /* Bounded: an answer larger than the cap is an error, not a realloc. */
    if (n > RESP_CAP - 1 - s->resp_len) {
        s->resp_overflow = true;
        return n;
    }
    memcpy(s->resp + s->resp_len, ptr, n);
    s->resp_len += n;
    s->resp[s->resp_len] = '\0';
    return n;
}

static int slot_setup(slot *s, const opts *o, CURLSH *share, struct curl_slist *hdrs, struct curl_slist *res)
{
    CURL *e;

    if ((s->easy = e = curl_easy_init()) == NULL)
        return -1;
    if (curl_easy_setopt(e, CURLOPT_URL, o->url) || curl_easy_setopt(e, CURLOPT_SSLCERT, o->cert) ||
        curl_easy_setopt(e, CURLOPT_SSLKEY, o->key) || curl_easy_setopt(e, CURLOPT_CAINFO, o->cacert) ||
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1) ||
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs) || curl_easy_setopt(e, CURLOPT_POST, 1L) ||
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, o->body) ||
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)o->body_len) ||
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) || curl_easy_setopt(e, CURLOPT_WRITEDATA, s) ||
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header) || curl_easy_setopt(e, CURLOPT_HEADERDATA, s) ||
        curl_easy_setopt(e, CURLOPT_PRIVATE, s) || curl_easy_setopt(e, CURLOPT_ERRORBUFFER, s->errbuf) ||
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) ||
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(o->timeout * 1000)) ||
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https") || curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L))
        return -1;
    if (res != NULL && curl_easy_setopt(e, CURLOPT_RESOLVE, res))
        return -1;
    if (o->mode != MODE_KEEPALIVE) {
        if (curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L) || curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L))
            return -1;
    }
    if (o->mode == MODE_NEW_CONN) {
        if (curl_easy_setopt(e, CURLOPT_SSL_SESSIONID_CACHE, 0L))
            return -1;
    } else if (share != NULL && curl_easy_setopt(e, CURLOPT_SHARE, share)) {
        return -1;
    }
    return 0;
}

/* what: "curl" or "answer"; text: curl's message or the answer body. */
static void note_error(stats *st, const char *what, const char *text, long num)
{
    st->errors++;
    if (st->errors == 1)
        snprintf(st->first_error, sizeof(st->first_error), "%s: %.200s (%ld)", what, text, num);
}

/* Runs one phase: count requests (or until deadline), open loop if rate > 0. */
static int run_phase(CURLM *m, slot *slots, const opts *o, uint64_t count, double duration, double rate,
                     int tfd, stats *st, double *elapsed)
{
    uint64_t issued = 0, done = 0, t0 = bench_now_ns(), now, next_due = t0;
    uint64_t deadline = duration > 0 ? t0 + (uint64_t)(duration * 1e9) : 0;
    /* Hard stop even if the server hangs: the duration (or the per-request
     * timeout times the count) plus a grace period. */
    uint64_t hard = t0 + (uint64_t)((duration > 0 ? duration : o->timeout * (double)count) * 1e9) +
                    (uint64_t)((o->timeout + 5) * 1e9);
    unsigned i, busy = 0;
    int running = 0, msgs;
    CURLMsg *msg;

    for (;;) {
        now = bench_now_ns();
        bool stop_issuing = (count && issued >= count) || (deadline && now >= deadline);
        if (stop_issuing && busy == 0)
            break;
        if (now >= hard) {
            fprintf(stderr, PROG ": giving up: %u requests still open after the time limit\n", busy);
            return -1;
        }
        /* Start what is due on free slots. */
        for (i = 0; i < o->conns && !stop_issuing; i++) {
            if (slots[i].busy)
                continue;
            if (rate > 0) {
                next_due = t0 + (uint64_t)((double)issued * 1e9 / rate);
                if (next_due > now)
                    break;
            } else {
                next_due = now;
            }
            slot *s = &slots[i];
            s->busy = true;
            s->due_ns = next_due;
            s->resp_len = 0;
            s->resp[0] = '\0';
            s->resp_overflow = false;
            s->retry_after = false;
            s->errbuf[0] = '\0';
            if (curl_multi_add_handle(m, s->easy) != CURLM_OK) {
                fprintf(stderr, PROG ": curl_multi_add_handle failed\n");
                return -1;
            }
            busy++;
            issued++;
            stop_issuing = (count && issued >= count) || (deadline && now >= deadline);
        }
        if (curl_multi_perform(m, &running) != CURLM_OK)
            return -1;
        while ((msg = curl_multi_info_read(m, &msgs)) != NULL) {
            slot *s = NULL;
            long code = 0;
            curl_off_t appc = 0, conc = 0;
            if (msg->msg != CURLMSG_DONE)
                continue;
            if (curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s) != CURLE_OK || s == NULL)
                return -1;
            now = bench_now_ns();
            if (curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &code) != CURLE_OK)
                code = 0;
            if (msg->data.result != CURLE_OK)
                note_error(st, "curl", s->errbuf[0] ? s->errbuf : curl_easy_strerror(msg->data.result),
                           (long)msg->data.result);
            else if (o->shed_ok && code == 503 && strstr(s->resp, "\"overloaded\"") != NULL) {
                if (!deadline || now <= deadline) {
                    st->shed++;
                    if (!s->retry_after)
                        st->shed_no_retry++;
                }
            } else if (code != 200 || s->resp_overflow || strstr(s->resp, o->expect) == NULL)
                note_error(st, "answer (HTTP status in brackets)", s->resp, code);
            else if (!deadline || now <= deadline) {
                st->ok++;
                if (st->lat != NULL)
                    bench_lat_add(st->lat, (now - s->due_ns) / 1000);
            }
            if (curl_easy_getinfo(s->easy, CURLINFO_APPCONNECT_TIME_T, &appc) == CURLE_OK &&
                curl_easy_getinfo(s->easy, CURLINFO_CONNECT_TIME_T, &conc) == CURLE_OK && appc > 0) {
                st->new_conns++;
                st->connect_s_sum += (double)(appc - conc) / 1e6;
            }
            curl_multi_remove_handle(m, s->easy);
            s->busy = false;
            busy--;
            done++;
        }
        /* Sleep in curl until I/O, or until the next request is due. With
         * every slot busy only I/O can free one, so never spin then. */
        int wait_ms = 100;
        bool issuing = !((count && issued >= count) || (deadline && now >= deadline));
        struct curl_waitfd extra = {.fd = tfd, .events = CURL_WAIT_POLLIN, .revents = 0};
        bool timer = false;
        if (issuing && busy < o->conns) {
            if (rate > 0) {
                /* Wake exactly when the next request is due: curl_multi_poll
                 * alone has millisecond steps, which would add up to 1 ms to
                 * every latency, and spinning would take CPU from the server. */
                uint64_t due = t0 + (uint64_t)((double)issued * 1e9 / rate);
                now = bench_now_ns();
                if (due > now) {
                    struct itimerspec its;
                    memset(&its, 0, sizeof(its));
                    its.it_value.tv_sec = (time_t)(due / 1000000000u);
                    its.it_value.tv_nsec = (long)(due % 1000000000u);
                    if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) != 0)
                        return -1;
                    timer = true;
                } else {
                    wait_ms = 0;
                }
            } else {
                wait_ms = 0; /* closed loop with a free slot: go round and issue */
            }
        }
        if (wait_ms > 0) {
            if (curl_multi_poll(m, timer ? &extra : NULL, timer ? 1 : 0, wait_ms, NULL) != CURLM_OK)
                return -1;
            if (timer) {
                uint64_t expirations;
                struct itimerspec off;
                memset(&off, 0, sizeof(off));
                if (extra.revents && read(tfd, &expirations, sizeof(expirations)) < 0)
                    (void)0; /* nothing to drain: the I/O woke us first */
                (void)timerfd_settime(tfd, TFD_TIMER_ABSTIME, &off, NULL);
            }
        }
    }
    (void)done;
    *elapsed = deadline ? duration : (double)(bench_now_ns() - t0) / 1e9;
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: " PROG " --url URL --cert PEM --key PEM --cacert PEM\n"
            "       (--ri DER [--deliver tls|recipient-key|group-secret] | --body JSON-FILE)\n"
            "       [-c CONNECTIONS] (--count N | --duration S) [--rate R]\n"
            "       [--mode keepalive|new-conn|new-conn-resume] [--resolve HOST:PORT:ADDR]\n"
            "       [--warmup N] [--timeout S] [--expect STR] [--name KEY] [--variant V]\n"
            "       [--header] [--lat-out FILE] [--shed-out FILE]\n");
}

static int make_body(const char *ri_path, const char *deliver, opts *o)
{
    unsigned char *der = NULL;
    char *b64 = NULL;
    size_t len = 0, need;
    int rc = -1;

    if (util_read_file(ri_path, 65536, &der, &len) != 0 || len == 0) {
        fprintf(stderr, PROG ": %s: cannot read the RecipientInfo\n", ri_path);
        goto out;
    }
    if (util_b64_encode(der, len, &b64) != 0)
        goto out;
    need = strlen(b64) + strlen(deliver) + 64;
    if ((o->body = malloc(need)) == NULL)
        goto out;
    snprintf(o->body, need, "{\"recipient_info\": \"%s\", \"deliver\": \"%s\"}", b64, deliver);
    o->body_len = strlen(o->body);
    rc = 0;
out:
    free(der);
    free(b64);
    return rc;
}

int main(int argc, char **argv)
{
    opts o;
    const char *ri = NULL, *deliver = "tls", *body_path = NULL, *name = "key", *variant = NULL;
    const char *lat_out = NULL, *shed_out = NULL;
    bool header = false;
    uint64_t u;
    CURLM *m = NULL;
    CURLSH *share = NULL;
    struct curl_slist *hdrs = NULL, *res = NULL;
    slot *slots = NULL;
    stats warm, st;
    bench_result r;
    double elapsed = 0, cpu0;
    unsigned i;
    int rc = 1, a, tfd = -1;

    memset(&o, 0, sizeof(o));
    memset(&warm, 0, sizeof(warm));
    memset(&st, 0, sizeof(st));
    o.conns = 1;
    o.timeout = 30;
    o.warmup = (uint64_t)-1; /* default: one request per connection */
    o.mode = MODE_KEEPALIVE;
    for (a = 1; a < argc; a++) {
        const char *op = argv[a], *v = a + 1 < argc ? argv[a + 1] : NULL;
        if (strcmp(op, "--header") == 0) {
            header = true;
            continue;
        }
        if (v == NULL) {
            usage();
            return 1;
        }
        a++;
        if (strcmp(op, "--url") == 0)
            o.url = v;
        else if (strcmp(op, "--cert") == 0)
            o.cert = v;
        else if (strcmp(op, "--key") == 0)
            o.key = v;
        else if (strcmp(op, "--cacert") == 0)
            o.cacert = v;
        else if (strcmp(op, "--resolve") == 0)
            o.resolve = v;
        else if (strcmp(op, "--ri") == 0)
            ri = v;
        else if (strcmp(op, "--deliver") == 0)
            deliver = v;
        else if (strcmp(op, "--body") == 0)
            body_path = v;
        else if (strcmp(op, "--expect") == 0)
            o.expect = v;
        else if (strcmp(op, "--name") == 0)
            name = v;
        else if (strcmp(op, "--variant") == 0)
            variant = v;
        else if (strcmp(op, "--lat-out") == 0)
            lat_out = v;
        else if (strcmp(op, "--shed-out") == 0) {
            shed_out = v;
            o.shed_ok = true;
        }
        else if (strcmp(op, "-c") == 0 || strcmp(op, "--connections") == 0) {
            if (bench_arg_u64(PROG, op, v, 1, MAX_CONN, &u) != 0)
                return 1;
            o.conns = (unsigned)u;
        } else if (strcmp(op, "--count") == 0) {
            if (bench_arg_u64(PROG, op, v, 1, 100000000, &o.count) != 0)
                return 1;
        } else if (strcmp(op, "--warmup") == 0) {
            if (bench_arg_u64(PROG, op, v, 0, 1000000, &o.warmup) != 0)
                return 1;
        } else if (strcmp(op, "--duration") == 0) {
            if (bench_arg_double(PROG, op, v, 0.1, 3600, &o.duration) != 0)
                return 1;
        } else if (strcmp(op, "--rate") == 0) {
            if (bench_arg_double(PROG, op, v, 0.1, 1e6, &o.rate) != 0)
                return 1;
        } else if (strcmp(op, "--timeout") == 0) {
            if (bench_arg_double(PROG, op, v, 0.1, 600, &o.timeout) != 0)
                return 1;
        } else if (strcmp(op, "--mode") == 0) {
            if (strcmp(v, "keepalive") == 0)
                o.mode = MODE_KEEPALIVE;
            else if (strcmp(v, "new-conn") == 0)
                o.mode = MODE_NEW_CONN;
            else if (strcmp(v, "new-conn-resume") == 0)
                o.mode = MODE_NEW_CONN_RESUME;
            else {
                usage();
                return 1;
            }
        } else {
            usage();
            return 1;
        }
    }
    if (o.url == NULL || o.cert == NULL || o.key == NULL || o.cacert == NULL || (ri == NULL) == (body_path == NULL) ||
        (o.count == 0) == (o.duration == 0.0)) {
        usage();
        return 1;
    }
    if (o.warmup == (uint64_t)-1)
        o.warmup = o.conns;
    if (o.expect == NULL)
        o.expect = strcmp(deliver, "tls") == 0 && body_path == NULL ? "\"key\"" : "\"";
    if (variant == NULL)
        variant = o.mode == MODE_KEEPALIVE ? "keepalive" : o.mode == MODE_NEW_CONN ? "new-conn" : "new-conn-resume";
    if (ri != NULL) {
        if (make_body(ri, deliver, &o) != 0)
            goto out;
    } else {
        unsigned char *b = NULL;
        size_t blen = 0;
        if (util_read_file(body_path, 1 << 20, &b, &blen) != 0) {
            fprintf(stderr, PROG ": %s: cannot read the body\n", body_path);
            goto out;
        }
        o.body = (char *)b;
        o.body_len = blen;
    }

    if ((tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)) < 0) {
        perror(PROG ": timerfd_create");
        goto out;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || (m = curl_multi_init()) == NULL)
        goto out;
    /* At most C connections, kept open between requests; HTTP/1.1 without
     * pipelining or multiplexing: one request per connection at a time. */
    if (curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)o.conns) != CURLM_OK ||
        curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, (long)o.conns) != CURLM_OK ||
        curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)o.conns) != CURLM_OK ||
        curl_multi_setopt(m, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING) != CURLM_OK)
        goto out;
    if (o.mode == MODE_NEW_CONN_RESUME) {
        /* One TLS session cache for all handles: every new connection resumes. */
        if ((share = curl_share_init()) == NULL ||
            curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) != CURLSHE_OK)
            goto out;
    }
    if ((hdrs = curl_slist_append(NULL, "Content-Type: application/json")) == NULL ||
        (hdrs = curl_slist_append(hdrs, "Expect:")) == NULL)
        goto out;
    if (o.resolve != NULL && (res = curl_slist_append(NULL, o.resolve)) == NULL)
        goto out;
    if ((slots = calloc(o.conns, sizeof(*slots))) == NULL)
        goto out;
    for (i = 0; i < o.conns; i++)
        if (slot_setup(&slots[i], &o, share, hdrs, res) != 0) {
            fprintf(stderr, PROG ": curl set-up failed\n");
            goto out;
        }

    /* Warm-up: open the connections (and, for resume, get a session). */
    if (o.warmup > 0) {
        if (run_phase(m, slots, &o, o.warmup, 0, 0, tfd, &warm, &elapsed) != 0)
            goto out;
        if (warm.errors) {
            fprintf(stderr, PROG ": warm-up failed: %s\n", warm.first_error);
            goto out;
        }
    }
    if ((st.lat = bench_lat_new(LAT_CAP)) == NULL)
        goto out;
    cpu0 = bench_cpu_seconds();
    if (run_phase(m, slots, &o, o.count, o.duration, o.rate, tfd, &st, &elapsed) != 0)
        goto out;
    memset(&r, 0, sizeof(r));
    r.tool = PROG;
    r.variant = variant;
    r.key = name;
    r.conc = o.conns;
    r.ops = st.ok;
    r.errors = st.errors;
    r.seconds = elapsed;
    r.cpu_s = bench_cpu_seconds() - cpu0;
    bench_result_print(stdout, header, &r, st.lat);
    if (st.errors)
        fprintf(stderr, PROG ": %llu errors, first: %s\n", (unsigned long long)st.errors, st.first_error);
    if (st.new_conns)
        fprintf(stderr, PROG ": %llu TLS handshakes, mean %.3f ms\n", (unsigned long long)st.new_conns,
                st.connect_s_sum * 1000 / (double)st.new_conns);
    if (lat_out != NULL && bench_lat_write_dist(st.lat, lat_out) != 0)
        fprintf(stderr, PROG ": cannot write %s\n", lat_out);
    if (shed_out != NULL) {
        FILE *f = fopen(shed_out, "w");
        if (f == NULL || fprintf(f, "shed=%llu\nshed_without_retry_after=%llu\n", (unsigned long long)st.shed,
                                 (unsigned long long)st.shed_no_retry) < 0)
            fprintf(stderr, PROG ": cannot write %s\n", shed_out);
        if (f != NULL)
            fclose(f);
    }
    rc = st.errors ? 3 : 0;
out:
    if (slots != NULL)
        for (i = 0; i < o.conns; i++) {
            if (slots[i].easy != NULL) {
                curl_multi_remove_handle(m, slots[i].easy);
                curl_easy_cleanup(slots[i].easy);
            }
        }
    free(slots);
    curl_multi_cleanup(m);
    curl_share_cleanup(share);
    curl_slist_free_all(hdrs);
    curl_slist_free_all(res);
    bench_lat_free(st.lat);
    free(o.body);
    if (tfd >= 0)
        close(tfd);
    curl_global_cleanup();
    return rc;
}
