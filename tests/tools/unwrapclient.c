/*
 * unwrapclient: libcurl test client of the group server, for what curl(1)
 * cannot script: many concurrent clients, and revocation checks on a
 * kept-alive connection and on a resumed TLS session.
 *
 *   unwrapclient load URL BODYFILE THREADS COUNT EXPECT   (POST each; all must answer EXPECT)
 *   unwrapclient steps keepalive|resume URL BODYFILE S1,S2,...
 *       each S is an expected status, or "wait" (print WAITING and read a
 *       line from stdin before going on). keepalive: one handle, the
 *       connection must be reused; resume: a new connection per request
 *       sharing the TLS session cache, the session must be resumed.
 *   unwrapclient soak URL BODYFILE THREADS SECONDS LOGFILE
 *       THREADS kept-alive connections post for SECONDS whatever the
 *       answers; one line per request to LOGFILE:
 *         END_MS STATUS CODE REQUEST_ID RETRY_AFTER
 *       (END_MS since the start; STATUS 0 when the connection failed;
 *       "-" for what the answer lacked). For tests that break the server
 *       on purpose and then look at what every client saw. With
 *       UC_SOAK_START=1 each line ends with START_MONO_MS too: when the
 *       request began, in CLOCK_MONOTONIC milliseconds (as Python's
 *       time.monotonic()), so a test can tell the requests sent after a
 *       command of its own returned.
 *   Options via environment: UC_CERT, UC_KEY, UC_CACERT (PEM files),
 *   UC_METHOD (GET/POST, default POST when BODYFILE is not "-").
 * Exit 0 when every answer matched (soak: when it ran), 1 otherwise, 2 on
 * usage errors.
 */
#include <pthread.h>
#include <stdio.h>
#include <strings.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <openssl/ssl.h>

struct buf {
    char *p;
    size_t len;
};

static size_t sink(char *ptr, size_t size, size_t n, void *arg)
{
    struct buf *b = arg;
    size_t add = size * n;
    if (b->len + add > (1u << 20))
        return 0;
    char *np = realloc(b->p, b->len + add + 1);
    if (np == NULL)
        return 0;
    memcpy(np + b->len, ptr, add);
    b->p = np;
    b->len += add;
    b->p[b->len] = '\0';
    return add;
}

static const char *url, *body;
static size_t body_len;
static long expect;
static unsigned count;
static CURLSH *share;
static pthread_mutex_t share_mu[CURL_LOCK_DATA_LAST];

static void lock_cb(CURL *h, curl_lock_data d, curl_lock_access a, void *u)
{
    (void)h; (void)a; (void)u;
    pthread_mutex_lock(&share_mu[d]);
}
static void unlock_cb(CURL *h, curl_lock_data d, void *u)
{
    (void)h; (void)u;
    pthread_mutex_unlock(&share_mu[d]);
}

static CURLcode ctx_cb(CURL *h, void *sslctx, void *arg);

static CURL *make_handle(struct buf *b)
{
    CURL *h = curl_easy_init();
    const char *m = getenv("UC_METHOD");

    if (h == NULL)
        return NULL;
    curl_easy_setopt(h, CURLOPT_URL, url);
    if (getenv("UC_CERT"))
        curl_easy_setopt(h, CURLOPT_SSLCERT, getenv("UC_CERT"));
    if (getenv("UC_KEY"))
        curl_easy_setopt(h, CURLOPT_SSLKEY, getenv("UC_KEY"));
    if (getenv("UC_CACERT"))
        curl_easy_setopt(h, CURLOPT_CAINFO, getenv("UC_CACERT"));
    curl_easy_setopt(h, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    if (share != NULL) {
        curl_easy_setopt(h, CURLOPT_SHARE, share);
        curl_easy_setopt(h, CURLOPT_SSL_CTX_FUNCTION, ctx_cb);
    }
    if (body != NULL && !(m && strcmp(m, "GET") == 0)) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)body_len);
    }
    return h;
}

static void *load_thread(void *arg)
{
    long *fails = arg;
    struct buf b = {0};
    CURL *h = make_handle(&b);

    for (unsigned i = 0; h != NULL && i < count; i++) {
        long status = 0;
        b.len = 0;
        CURLcode rc = curl_easy_perform(h);
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        if (rc != CURLE_OK || status != expect) {
            fprintf(stderr, "unwrapclient: got %ld (%s) %s\n", status, curl_easy_strerror(rc), b.p ? b.p : "");
            (*fails)++;
        }
    }
    if (h == NULL)
        (*fails)++;
    curl_easy_cleanup(h);
    free(b.p);
    return NULL;
}

/* ---- soak ---- */
static double soak_seconds, soak_t0;
static int soak_start; /* UC_SOAK_START: log each request's start too */
static FILE *soak_log;
static pthread_mutex_t soak_mu = PTHREAD_MUTEX_INITIALIZER;

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct hdrs {
    char id[40], retry[16];
};

/* Keeps X-Request-Id and Retry-After (values without spaces). */
static size_t on_header(char *ptr, size_t size, size_t n, void *arg)
{
    struct hdrs *h = arg;
    size_t len = size * n;
    const char *names[] = {"x-request-id:", "retry-after:"};
    char *dst[] = {h->id, h->retry};
    size_t cap[] = {sizeof(h->id), sizeof(h->retry)};

    for (int i = 0; i < 2; i++) {
        size_t nl = strlen(names[i]);
        if (len > nl && strncasecmp(ptr, names[i], nl) == 0) {
            size_t k = 0;
            for (size_t j = nl; j < len && k + 1 < cap[i]; j++)
                if (ptr[j] > ' ')
                    dst[i][k++] = ptr[j];
            dst[i][k] = '\0';
        }
    }
    return len;
}

static void *soak_thread(void *arg)
{
    struct buf b = {0};
    struct hdrs hd;
    CURL *h = make_handle(&b);
    (void)arg;

    if (h == NULL)
        return NULL;
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &hd);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L);
    while (mono_s() - soak_t0 < soak_seconds) {
        long status = 0;
        char code[48] = "-";
        b.len = 0;
        if (b.p != NULL)
            b.p[0] = '\0';
        memset(&hd, 0, sizeof(hd));
        double start = mono_s(); /* before anything of the request is sent */
        CURLcode rc = curl_easy_perform(h);
        if (rc == CURLE_OK)
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        const char *c = b.p ? strstr(b.p, "\"code\":\"") : NULL;
        if (c != NULL) {
            c += 8;
            size_t k = 0;
            while (c[k] && c[k] != '"' && k + 1 < sizeof(code)) {
                code[k] = c[k];
                k++;
            }
            code[k] = '\0';
        }
        pthread_mutex_lock(&soak_mu);
        fprintf(soak_log, "%.0f %ld %s %s %s", (mono_s() - soak_t0) * 1e3, status, code,
                hd.id[0] ? hd.id : "-", hd.retry[0] ? hd.retry : "-");
        if (soak_start)
            fprintf(soak_log, " %.3f", start * 1e3);
        fputc('\n', soak_log);
        pthread_mutex_unlock(&soak_mu);
        if (rc != CURLE_OK || status == 503 || status == 429) {
            /* A broken connection (the next request opens a new one), or
             * told to come back: a short pause keeps the test machine's
             * CPU for the server. */
            struct timespec ts = {0, 20000000};
            nanosleep(&ts, NULL);
        }
    }
    curl_easy_cleanup(h);
    free(b.p);
    return NULL;
}

static int read_body(const char *file)
{
    FILE *f;
    static char data[1 << 20];

    if (strcmp(file, "-") == 0)
        return 0;
    if ((f = fopen(file, "rb")) == NULL)
        return -1;
    body_len = fread(data, 1, sizeof(data) - 1, f);
    fclose(f);
    data[body_len] = '\0';
    body = data;
    return 0;
}

/* Whether the last TLS handshake resumed a session, recorded by an info
 * callback libcurl lets us install on its SSL_CTX. */
static int last_resumed = -1;

static void info_cb(const SSL *ssl, int where, int ret)
{
    (void)ret;
    if (where & SSL_CB_HANDSHAKE_DONE)
        last_resumed = SSL_session_reused((SSL *)ssl);
}

static CURLcode ctx_cb(CURL *h, void *sslctx, void *arg)
{
    (void)h; (void)arg;
    SSL_CTX_set_info_callback((SSL_CTX *)sslctx, info_cb);
    return CURLE_OK;
}

int main(int argc, char **argv)
{
    int bad = 0;

    if (argc < 2)
        goto usage;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (strcmp(argv[1], "load") == 0 && argc == 7) {
        url = argv[2];
        unsigned nt = (unsigned)strtoul(argv[4], NULL, 10);
        count = (unsigned)strtoul(argv[5], NULL, 10);
        expect = strtol(argv[6], NULL, 10);
        if (read_body(argv[3]) != 0 || nt == 0 || nt > 256)
            goto usage;
        pthread_t tid[256];
        long fails[256] = {0};
        for (unsigned i = 0; i < nt; i++)
            pthread_create(&tid[i], NULL, load_thread, &fails[i]);
        long total = 0;
        for (unsigned i = 0; i < nt; i++) {
            pthread_join(tid[i], NULL);
            total += fails[i];
        }
        printf("load: %u requests, %ld unexpected\n", nt * count, total);
        return total == 0 ? 0 : 1;
    }
    if (strcmp(argv[1], "soak") == 0 && argc == 7) {
        url = argv[2];
        unsigned nt = (unsigned)strtoul(argv[4], NULL, 10);
        soak_seconds = strtod(argv[5], NULL);
        if (read_body(argv[3]) != 0 || nt == 0 || nt > 256 || soak_seconds <= 0 ||
            (soak_log = fopen(argv[6], "w")) == NULL)
            goto usage;
        pthread_t tid[256];
        const char *st = getenv("UC_SOAK_START");
        soak_start = st != NULL && strcmp(st, "1") == 0;
        soak_t0 = mono_s();
        for (unsigned i = 0; i < nt; i++)
            pthread_create(&tid[i], NULL, soak_thread, NULL);
        for (unsigned i = 0; i < nt; i++)
            pthread_join(tid[i], NULL);
        fclose(soak_log);
        return 0;
    }
    if (strcmp(argv[1], "steps") == 0 && argc == 6) {
        int resume = strcmp(argv[2], "resume") == 0;
        url = argv[3];
        if (read_body(argv[4]) != 0)
            goto usage;
        if (resume) {
            share = curl_share_init();
            for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
                pthread_mutex_init(&share_mu[i], NULL);
            curl_share_setopt(share, CURLSHOPT_LOCKFUNC, lock_cb);
            curl_share_setopt(share, CURLSHOPT_UNLOCKFUNC, unlock_cb);
            curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
        }
        struct buf b = {0};
        CURL *h = NULL;
        int n = 0;
        char *list = strdup(argv[5]), *next = list;
        while (next != NULL) {
            char *s = next, *comma = strchr(next, ',');
            if (comma != NULL)
                *comma = '\0';
            next = comma ? comma + 1 : NULL;
            if (strcmp(s, "wait") == 0) {
                char line[64];
                printf("WAITING\n");
                fflush(stdout);
                if (fgets(line, sizeof(line), stdin) == NULL)
                    return 1;
                continue;
            }
            long want = strtol(s, NULL, 10), status = 0, connects = -1;
            if (h == NULL || resume) {
                curl_easy_cleanup(h);
                h = make_handle(&b);
            }
            b.len = 0;
            last_resumed = -1;
            CURLcode rc = curl_easy_perform(h);
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
            curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &connects);
            int resumed = last_resumed;
            printf("step %d status %ld new_connections %ld resumed %d body %s", n, status, connects, resumed,
                   b.p ? b.p : "\n");
            if (rc != CURLE_OK || status != want)
                bad = 1;
            if (n > 0 && !resume && connects != 0)
                bad = 1, printf("  expected the kept-alive connection to be reused\n");
            if (n > 0 && resume && resumed != 1)
                bad = 1, printf("  expected a resumed TLS session\n");
            n++;
        }
        fflush(stdout);
        curl_easy_cleanup(h);
        free(list);
        free(b.p);
        return bad;
    }
usage:
    fprintf(stderr, "usage: unwrapclient load URL BODYFILE THREADS COUNT EXPECT\n"
                    "       unwrapclient steps keepalive|resume URL BODYFILE S1,S2,...\n"
                    "       unwrapclient soak URL BODYFILE THREADS SECONDS LOGFILE\n");
    return 2;
}
