/* gm_common.c: groupmail configuration, messages, store paths, the
 * member's identity (file or token key) and the REST handle. */
#include "gm.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "inifile.h"
#include "log.h"
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "util.h"

#define MAX_CERT_FILE (256u * 1024)
#define MAX_KEY_FILE (64u * 1024)

/* ---- messages ------------------------------------------------------------ */

void gm_err(const char *fmt, ...)
{
    va_list ap;
    char line[1024];
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    /* one line, whatever the (possibly server-provided) parts contained */
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    fprintf(stderr, "groupmail: %s\n", line);
}

void gm_progress(const gm_config *c, const char *fmt, ...)
{
    va_list ap;
    if (c->quiet || !isatty(STDERR_FILENO))
        return;
    va_start(ap, fmt);
    fputs("groupmail: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int gm_rest_fail(gs_rest *r, gs_rest_err err, const char *what)
{
    const char *code = gs_rest_last_code(r), *msg = gs_rest_last_message(r), *detail = gs_rest_last_detail(r);
    int rc;

    switch (err) {
    case GS_REST_ERR_UNAUTHORIZED:
    case GS_REST_ERR_FORBIDDEN: rc = GM_EXIT_REFUSED; break;
    case GS_REST_ERR_REJECTED:
        /* method_not_allowed is exit 3 as a 403 (a deliver method the group
         * does not offer: GS_REST_ERR_FORBIDDEN); here it is a 405, an HTTP
         * method the endpoint does not take (a proxy or a wrong --server
         * path): a request refused as invalid, exit 1 as the other 4xx,
         * not "not a member". */
        if (strcmp(code, "unwrap_failed") == 0 || strcmp(code, "bad_recipient_info") == 0 ||
            strcmp(code, "unknown_recipient") == 0 || strcmp(code, "no_recipient") == 0)
            rc = GM_EXIT_BAD_MESSAGE;
        else if (strcmp(code, "not_a_member") == 0)
            rc = GM_EXIT_REFUSED;
        else if (strcmp(code, "algorithm_not_allowed") == 0 || strcmp(code, "unsupported_algorithm") == 0)
            rc = GM_EXIT_BAD_MESSAGE; /* a group, or a server, that never unwraps this message */
        else
            rc = GM_EXIT_ERROR;
        break;
    case GS_REST_ERR_UNREACHABLE:
    case GS_REST_ERR_TIMEOUT:
    case GS_REST_ERR_TLS:
    case GS_REST_ERR_PIN:
    case GS_REST_ERR_RATE_LIMITED:
    case GS_REST_ERR_UNAVAILABLE:
    case GS_REST_ERR_SERVER:
    case GS_REST_ERR_BAD_ANSWER:
    case GS_REST_ERR_TOO_LARGE: rc = GM_EXIT_UNREACHABLE; break;
    default: rc = GM_EXIT_ERROR; break;
    }
    if (code[0] != '\0')
        gm_err("%s: %s (%s: %s)", what, gs_rest_strerror(err), code, msg);
    else if (detail[0] != '\0')
        gm_err("%s: %s (%s)", what, gs_rest_strerror(err), detail);
    else if (gs_rest_last_status(r) > 0)
        gm_err("%s: %s (HTTP %ld)", what, gs_rest_strerror(err), gs_rest_last_status(r));
    else
        gm_err("%s: %s", what, gs_rest_strerror(err));
    return rc;
}

bool gm_in_is_stdin(const char *in)
{
    return in != NULL && strcmp(in, "/dev/stdin") == 0;
}

int gm_env_exit(env_err e)
{
    switch (e) {
    case ENV_ERR_TRUNCATED:
    case ENV_ERR_NOT_CMS:
    case ENV_ERR_MIME:
    case ENV_ERR_ENCODING:
    case ENV_ERR_BASE64:
    case ENV_ERR_CONTENT_TYPE:
    case ENV_ERR_NO_RECIPIENT:
    case ENV_ERR_UNSUPPORTED:
    case ENV_ERR_AUTH:
    case ENV_ERR_KEY:
    case ENV_ERR_TOO_LARGE: return GM_EXIT_BAD_MESSAGE;
    default: return GM_EXIT_ERROR;
    }
}

/* ---- configuration -------------------------------------------------------- */

void gm_config_clear(gm_config *c)
{
    char **strs[] = {&c->config_file, &c->server, &c->group, &c->cacert, &c->pin, &c->certsrv, &c->group_ca,
                     &c->group_cert, &c->cert, &c->key, &c->tls_cert, &c->tls_key, &c->hsm_module, &c->hsm_token,
                     &c->hsm_pin_source, &c->group_key, &c->store, &c->smtp, &c->smtp_cacert, &c->smtp_user,
                     &c->smtp_password_file, &c->smtp_auth_in_clear, &c->from, &c->to, &c->via, &c->in,
                     &c->out, &c->recipient_info, &c->oaep, &c->format, &c->content_algorithm};
    for (size_t i = 0; i < GS_ARRAY_LEN(strs); i++) {
        free(*strs[i]);
        *strs[i] = NULL;
    }
}

static char *expand_home(const char *v)
{
    const char *home = getenv("HOME");
    if (v[0] == '~' && v[1] == '/' && home != NULL) {
        size_t n = strlen(home) + strlen(v);
        char *p = malloc(n);
        if (p != NULL)
            snprintf(p, n, "%s%s", home, v + 1);
        return p;
    }
    return strdup(v);
}

static int set_if_unset(char **dst, const char *v)
{
    if (*dst != NULL)
        return 0;
    if ((*dst = expand_home(v)) == NULL)
        return -1;
    return 0;
}

struct ini_key {
    const char *section, *name;
    size_t off;
};
#define K(s, n, f) {s, n, offsetof(gm_config, f)}
static const struct ini_key ini_keys[] = {
    K("server", "url", server),         K("server", "group", group),
    K("server", "cacert", cacert),      K("server", "pin", pin),
    K("server", "certificate_server", certsrv), K("server", "group_ca", group_ca),
    K("server", "group_cert", group_cert),
    K("identity", "cert", cert),        K("identity", "key", key),
    K("identity", "tls_cert", tls_cert), K("identity", "tls_key", tls_key),
    K("hsm", "module", hsm_module),     K("hsm", "token", hsm_token),
    K("hsm", "pin_source", hsm_pin_source), K("hsm", "group_key", group_key),
    K("store", "dir", store),           K("smtp", "relay", smtp),
    K("smtp", "from", from),            K("smtp", "cacert", smtp_cacert),
    K("smtp", "user", smtp_user),       K("smtp", "password_file", smtp_password_file),
    K("smtp", "auth_in_clear", smtp_auth_in_clear),
    K("decrypt", "via", via),
    K("encrypt", "oaep", oaep),         K("encrypt", "format", format),
};
#undef K

/* Keys ini_cb handles itself, after ini_keys (their index: N + position). */
static const struct {
    const char *section, *name;
} ini_own_keys[] = {{"server", "timeout"}, {"smtp", "starttls"}, {"encrypt", "cipher"}};
enum { INI_TIMEOUT = GS_ARRAY_LEN(ini_keys), INI_STARTTLS, INI_CIPHER, INI_NKEYS };

struct ini_state {
    gm_config *c;
    const char *path;
    int bad;
    /* A key given twice in the file is an error: which one counted would
     * be a guess (flags and the environment are taken first, so the
     * file's first value would win, unlike in every other INI file). */
    bool seen[INI_NKEYS];
};

/* Keys with a fixed set of values: a bad one is an error of the file
 * (exit 1, naming it), not of the flag that would otherwise take the
 * blame later (groupmail(1), "Configuration"). */
static const struct {
    const char *section, *name, *values[7];
} ini_choices[] = {
    {"decrypt", "via", {"tls", "recipient-key", "membership-cert", "group-secret", "local-key", "own-key"}},
    {"encrypt", "oaep", {"sha1", "sha256"}},
    {"encrypt", "format", {"smime", "pem", "der"}},
    {"encrypt", "cipher", {"gcm", "cbc", "aes-256-gcm", "aes-256-cbc"}},
    {"smtp", "auth_in_clear", {"no", "loopback", "yes"}},
};

/* 1 when [section] name takes any value or value is one of its choices. */
static int ini_value_ok(const char *section, const char *name, const char *value)
{
    for (size_t i = 0; i < GS_ARRAY_LEN(ini_choices); i++) {
        if (strcmp(section, ini_choices[i].section) != 0 || strcmp(name, ini_choices[i].name) != 0)
            continue;
        for (size_t k = 0; k < GS_ARRAY_LEN(ini_choices[i].values) && ini_choices[i].values[k] != NULL; k++)
            if (strcmp(value, ini_choices[i].values[k]) == 0)
                return 1;
        return 0;
    }
    return 1;
}

/* The index of a key groupmail reads (ini_keys, then ini_own_keys), or
 * -1 for an unknown one. */
static int ini_key_index(const char *section, const char *name)
{
    for (size_t i = 0; i < GS_ARRAY_LEN(ini_keys); i++)
        if (strcmp(section, ini_keys[i].section) == 0 && strcmp(name, ini_keys[i].name) == 0)
            return (int)i;
    for (size_t i = 0; i < GS_ARRAY_LEN(ini_own_keys); i++)
        if (strcmp(section, ini_own_keys[i].section) == 0 && strcmp(name, ini_own_keys[i].name) == 0)
            return INI_TIMEOUT + (int)i;
    return -1;
}

/* 1 when some key groupmail reads is in [section]. */
static int ini_section_known(const char *section)
{
    for (size_t i = 0; i < GS_ARRAY_LEN(ini_keys); i++)
        if (strcmp(section, ini_keys[i].section) == 0)
            return 1;
    for (size_t i = 0; i < GS_ARRAY_LEN(ini_own_keys); i++)
        if (strcmp(section, ini_own_keys[i].section) == 0)
            return 1;
    return 0;
}

static int ini_cb(void *user, const char *section, const char *name, const char *value)
{
    struct ini_state *st = user;
    int k;

    if (name == NULL) { /* a [section] line (inifile.h): known, even with no key under it */
        if (!ini_section_known(section)) {
            gm_err("%s: unknown section [%s]", st->path, section);
            st->bad = 1;
        }
        return 1;
    }
    k = ini_key_index(section, name);
    if (k < 0) {
        gm_err("%s: unknown key [%s] %s", st->path, section, name);
        st->bad = 1;
        return 1;
    }
    if (st->seen[k]) {
        gm_err("%s: repeated key [%s] %s", st->path, section, name);
        st->bad = 1;
        return 1;
    }
    st->seen[k] = true;
    if (value[0] == '\0') {
        gm_err("%s: empty value for [%s] %s", st->path, section, name);
        st->bad = 1;
        return 1;
    }
    if (!ini_value_ok(section, name, value)) {
        char q[64];
        gm_err("%s: bad value '%s' for [%s] %s", st->path, log_quote(q, sizeof(q), value), section, name);
        st->bad = 1;
        return 1;
    }
    if (k < INI_TIMEOUT) {
        char **dst = (char **)((char *)st->c + ini_keys[k].off);
        if (set_if_unset(dst, value) != 0)
            st->bad = 1;
        return 1;
    }
    if (k == INI_TIMEOUT) {
        long t;
        if (util_parse_int(value, 1, 3600, &t) != UTIL_OK) {
            gm_err("%s: [server] timeout must be 1..3600 seconds", st->path);
            st->bad = 1;
        } else if (st->c->timeout == 0) {
            st->c->timeout = t;
        }
        return 1;
    }
    if (k == INI_STARTTLS) {
        /* The exploder's [delivery] starttls words; --smtp-starttls wins. */
        int mode = strcmp(value, "no") == 0         ? GM_STARTTLS_NO
                   : strcmp(value, "yes") == 0      ? GM_STARTTLS_YES
                   : strcmp(value, "required") == 0 ? GM_STARTTLS_REQUIRED
                                                    : GM_STARTTLS_UNSET;
        if (mode == GM_STARTTLS_UNSET) {
            gm_err("%s: [smtp] starttls must be no, yes or required", st->path);
            st->bad = 1;
        } else if (st->c->smtp_starttls == GM_STARTTLS_UNSET) {
            st->c->smtp_starttls = mode;
        }
        return 1;
    }
    /* INI_CIPHER */
    if (strcmp(value, "cbc") == 0 || strcmp(value, "aes-256-cbc") == 0)
        st->c->cbc = true;
    return 1;
}

int gm_config_load_stream(gm_config *c, FILE *f, const char *name)
{
    struct ini_state st = {.c = c, .path = name};
    int line = 0;

    /* Whole lines: libinih alone would cut a long value (a pkcs11: URI, a
     * path) short without a word (common/inifile.h). */
    enum inifile_status ist = inifile_parse_stream(f, ini_cb, &st, &line);
    switch (ist) {
    case INIFILE_OK:
        break;
    case INIFILE_BAD_LINE: /* ini_cb says why itself and never refuses a line */
    case INIFILE_SYNTAX:
        gm_err("%s: syntax error on line %d", name, line);
        return -1;
    case INIFILE_LONG_LINE:
    case INIFILE_NUL:
        gm_err("%s:%d: %s", name, line, inifile_line_strerror(ist));
        return -1;
    case INIFILE_IO:
        gm_err("cannot read config %s: %s", name, strerror(errno));
        return -1;
    case INIFILE_NOMEM:
        gm_err("%s: out of memory", name);
        return -1;
    }
    return st.bad ? -1 : 0;
}

int gm_config_load_file(gm_config *c, const char *path, bool required)
{
    FILE *f = fopen(path, "r");
    int rc;

    if (f == NULL) {
        if (!required && errno == ENOENT)
            return 0;
        gm_err("cannot read config %s: %s", path, strerror(errno));
        return -1;
    }
    rc = gm_config_load_stream(c, f, path);
    fclose(f);
    return rc;
}

int gm_config_load_env(gm_config *c)
{
    static const struct {
        const char *var;
        size_t off;
    } vars[] = {
        {"GROUPMAIL_SERVER", offsetof(gm_config, server)},   {"GROUPMAIL_GROUP", offsetof(gm_config, group)},
        {"GROUPMAIL_CACERT", offsetof(gm_config, cacert)},   {"GROUPMAIL_CERT", offsetof(gm_config, cert)},
        {"GROUPMAIL_KEY", offsetof(gm_config, key)},         {"GROUPMAIL_TLS_CERT", offsetof(gm_config, tls_cert)},
        {"GROUPMAIL_TLS_KEY", offsetof(gm_config, tls_key)}, {"GROUPMAIL_STORE", offsetof(gm_config, store)},
        {"GROUPMAIL_VIA", offsetof(gm_config, via)},         {"GROUPMAIL_SMTP", offsetof(gm_config, smtp)},
        {"GROUPMAIL_PIN_SOURCE", offsetof(gm_config, hsm_pin_source)},
        {"GROUPMAIL_HSM_MODULE", offsetof(gm_config, hsm_module)},
    };
    for (size_t i = 0; i < GS_ARRAY_LEN(vars); i++) {
        const char *v = getenv(vars[i].var);
        if (v != NULL && *v != '\0' && set_if_unset((char **)((char *)c + vars[i].off), v) != 0)
            return -1;
    }
    return 0;
}

static char *xdg_path(const char *xdg_var, const char *fallback, const char *leaf)
{
    const char *x = getenv(xdg_var), *home = getenv("HOME");
    char buf[4096];
    if (x != NULL && x[0] == '/')
        snprintf(buf, sizeof(buf), "%s/groupmail%s", x, leaf);
    else if (home != NULL && home[0] != '\0')
        snprintf(buf, sizeof(buf), "%s/%s/groupmail%s", home, fallback, leaf);
    else
        return NULL;
    return strdup(buf);
}

char *gm_default_config_path(void) { return xdg_path("XDG_CONFIG_HOME", ".config", "/config"); }
char *gm_default_store_path(void) { return xdg_path("XDG_DATA_HOME", ".local/share", ""); }

/* ---- store ---------------------------------------------------------------- */

static void safe_name(char *dst, size_t dsz, const char *src)
{
    size_t o = 0;
    for (; *src && o + 1 < dsz; src++)
        dst[o++] = ((*src >= 'a' && *src <= 'z') || (*src >= 'A' && *src <= 'Z') || (*src >= '0' && *src <= '9') ||
                    *src == '.' || *src == '-' || *src == '@')
                       ? *src
                       : '_';
    dst[o] = '\0';
}

/* The URL's authority (after "scheme://", up to one of stop), as typed,
 * into out; -1 when it does not fit. */
static int url_authority(const char *server, const char *stop, char *out, size_t cap)
{
    const char *h = strstr(server, "://");
    size_t n;

    h = h ? h + 3 : server;
    n = strcspn(h, stop);
    if (n >= cap)
        return -1;
    memcpy(out, h, n);
    out[n] = '\0';
    return 0;
}

/* The server as the store names it: one server however its URL is typed.
 * The host in lower case (DNS names and IPv6 literals are read in any
 * case), without the trailing dot of a fully qualified name, without
 * userinfo, the port without leading zeros and without ":443" (https's
 * port when none is given); the
 * pin of https://groupsrv.example.org:8443 is the pin of
 * https://GroupSrv.Example.org.:8443/ (a new pin made under the other
 * spelling took any certificate, as a first use does). An IP address and
 * a name stay two servers: nothing here resolves names. */
static int store_host(const char *server, char *out, size_t cap)
{
    char auth[256];
    const char *host, *port = NULL, *at;
    size_t hlen;
    int w;

    if (url_authority(server, "/?#", auth, sizeof(auth)) != 0)
        return -1;
    host = (at = strrchr(auth, '@')) != NULL ? at + 1 : auth;
    if (host[0] == '[') { /* [IPv6]:port */
        const char *close = strchr(host, ']');
        hlen = close != NULL ? (size_t)(close - host) + 1 : strlen(host);
        if (host[hlen] == ':')
            port = host + hlen + 1;
    } else {
        const char *colon = strrchr(host, ':');
        hlen = colon != NULL ? (size_t)(colon - host) : strlen(host);
        if (colon != NULL)
            port = colon + 1;
    }
    if (hlen > 1 && host[hlen - 1] == '.')
        hlen--;
    /* the port as a number: curl reads :08443 as 8443 (the same server,
     * another pin taken on its first use) */
    while (port != NULL && port[0] == '0' && port[1] >= '0' && port[1] <= '9')
        port++;
    if (port != NULL && (port[0] == '\0' || strcmp(port, "443") == 0))
        port = NULL;
    w = snprintf(out, cap, "%.*s%s%s", (int)hlen, host, port != NULL ? ":" : "", port != NULL ? port : "");
    if (w < 0 || (size_t)w >= cap)
        return -1;
    for (char *p = out; *p != '\0'; p++)
        *p = (char)tolower((unsigned char)*p);
    return 0;
}

static int store_id_of(const char *group, const char *host, char *out, size_t outsz)
{
    char g[256], raw[600];

    safe_name(g, sizeof(g), group);
    snprintf(raw, sizeof(raw), "%s@%s", g, host);
    safe_name(out, outsz, raw);
    return 0;
}

int gm_store_id(const char *server, const char *group, char *out, size_t outsz)
{
    char host[256];

    if (server == NULL || group == NULL || store_host(server, host, sizeof(host)) != 0)
        return -1;
    return store_id_of(group, host, out, outsz);
}

int gm_store_id_as_typed(const char *server, const char *group, char *out, size_t outsz)
{
    char host[256];

    if (server == NULL || group == NULL || url_authority(server, "/", host, sizeof(host)) != 0)
        return -1;
    return store_id_of(group, host, out, outsz);
}

char *gm_store_path(const gm_config *c, const char *sub, const char *name)
{
    char buf[4096];
    if (c->store == NULL)
        return NULL;
    if (sub != NULL)
        snprintf(buf, sizeof(buf), "%s/%s", c->store, sub);
    else
        snprintf(buf, sizeof(buf), "%s", c->store);
    if (util_mkdir_p(buf, 0700) != UTIL_OK) {
        gm_err("cannot create store directory %s: %s", buf, strerror(errno));
        return NULL;
    }
    if (name != NULL) {
        size_t l = strlen(buf);
        snprintf(buf + l, sizeof(buf) - l, "/%s", name);
    }
    return strdup(buf);
}

/* ---- certificates ------------------------------------------------------- */

int gm_pem_certs(const unsigned char *pem, size_t len, STACK_OF(X509) **out)
{
    BIO *b = NULL;
    X509 *x;
    int rc = -1;
    STACK_OF(X509) *sk = sk_X509_new_null();

    *out = NULL;
    if (sk == NULL || len > INT_MAX || (b = BIO_new_mem_buf(pem, (int)len)) == NULL)
        goto out;
    /* No pass phrase is given (util_pem_no_passphrase): for a block marked
     * encrypted, in a file or a server's answer, OpenSSL's default asked on
     * the terminal or read a line of standard input (the message). */
    while ((x = PEM_read_bio_X509(b, NULL, util_pem_no_passphrase, NULL)) != NULL) {
        if (sk_X509_num(sk) >= GM_PEM_CERTS_MAX || !sk_X509_push(sk, x)) {
            X509_free(x);
            goto out;
        }
    }
    ERR_clear_error();
    if (sk_X509_num(sk) == 0)
        goto out;
    *out = sk;
    sk = NULL;
    rc = 0;
out:
    BIO_free(b);
    sk_X509_pop_free(sk, X509_free);
    return rc;
}

static X509 *read_cert_file(const char *path, bool quiet)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    STACK_OF(X509) *sk = NULL;
    X509 *x = NULL;

    if (util_read_file(path, MAX_CERT_FILE, &buf, &len) != UTIL_OK) {
        if (!quiet)
            gm_err("cannot read certificate %s", path);
        return NULL;
    }
    if (gm_pem_certs(buf, len, &sk) == 0) {
        x = sk_X509_shift(sk);
    } else {
        const unsigned char *p = buf;
        x = d2i_X509(NULL, &p, (long)len);
        if (x == NULL && !quiet)
            gm_err("%s: not a PEM or DER certificate", path);
    }
    ERR_clear_error();
    sk_X509_pop_free(sk, X509_free);
    free(buf);
    return x;
}

X509 *gm_read_cert_file(const char *path) { return read_cert_file(path, false); }
X509 *gm_read_cert_file_quiet(const char *path) { return read_cert_file(path, true); }

int gm_no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    /* The empty passphrase, as libcurl is given for --via tls
     * (CURLOPT_KEYPASSWD ""): a key encrypted with an empty passphrase
     * (`openssl pkcs8 -topk8 -passout pass:`) loads for every method, not
     * for tls alone; any other passphrase fails to decrypt it. */
    return 0;
}

static EVP_PKEY *read_key_file(const char *path)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    BIO *b = NULL;
    EVP_PKEY *k = NULL;

    if (util_read_file(path, MAX_KEY_FILE, &buf, &len) != UTIL_OK) {
        gm_err("cannot read key %s", path);
        return NULL;
    }
    if ((b = BIO_new_mem_buf(buf, (int)len)) != NULL)
        k = PEM_read_bio_PrivateKey(b, NULL, gm_no_passphrase, NULL);
    if (k == NULL) {
        const unsigned char *p = buf;
        k = d2i_AutoPrivateKey(NULL, &p, (long)len);
    }
    if (k == NULL)
        gm_err("%s: not a usable private key (PEM or DER, unencrypted)", path);
    ERR_clear_error();
    BIO_free(b);
    util_secret_free(buf, len);
    return k;
}

/* ---- tokens ---------------------------------------------------------------- */

/* The token part of a key URI: "pkcs11:token=x;serial=y" from
 * "pkcs11:token=x;object=k;serial=y?pin-source=...". */
static char *token_uri_of(const char *key_uri)
{
    static const char *keep[] = {"token=", "manufacturer=", "serial=", "model="};
    const char *p = key_uri + strlen("pkcs11:");
    size_t plen = strcspn(p, "?"), cap = strlen(key_uri) + 8;
    char *out = malloc(cap), *seg = strndup(p, plen);
    bool first = true;

    if (out == NULL || seg == NULL) {
        free(out);
        free(seg);
        return NULL;
    }
    snprintf(out, cap, "pkcs11:");
    for (char *t = seg; t != NULL && *t != '\0';) {
        char *semi = strchr(t, ';');
        if (semi != NULL)
            *semi = '\0';
        for (size_t i = 0; i < GS_ARRAY_LEN(keep); i++) {
            if (strncmp(t, keep[i], strlen(keep[i])) == 0) {
                size_t l = strlen(out);
                snprintf(out + l, cap - l, "%s%s", first ? "" : ";", t);
                first = false;
            }
        }
        t = semi != NULL ? semi + 1 : NULL;
    }
    free(seg);
    return out;
}

/* The PIN source of a key or token URI, as p11-kit reads it
 * (util_uri_pin_source: in the query or the path, the last of two,
 * pinfile= too, %XX decoded, a raw space kept): 0 with *src (NULL: none),
 * or -1 after the error line for one p11-kit refuses. The same reading
 * as groupsrv's refusal of a PIN source in a key URI: groupmail read the
 * names without white space or case ("; pin-source=", "PKCS11:pin-source=",
 * which p11-kit reads, not logged in) and took "PIN-SOURCE=", which p11-kit
 * refuses, for none. */
static int uri_pin_source(const char *uri, char **src)
{
    int rc = util_uri_pin_source(uri, src);

    if (rc >= 0)
        return 0;
    if (rc == UTIL_E_FORMAT)
        gm_err("%s: its pin-source (or pinfile) is one p11-kit refuses: the name in lower case, a %%XX of two hex "
               "digits, not %%00", uri);
    else
        gm_err("%s: %s", uri, util_strerror(rc));
    return -1;
}

/* Whether gm_hsm_open_token finds a PIN source for uri (and logs in). */
static bool has_pin_source(const gm_config *c, const char *uri)
{
    return c->hsm_pin_source != NULL || util_uri_pin_source(uri, NULL) == 1 ||
           (c->hsm_token != NULL && util_uri_pin_source(c->hsm_token, NULL) == 1);
}

int gm_hsm_open_token(const gm_config *c, const char *uri, hsm_ctx **ctx)
{
    hsm_config hc = {0};
    char *tok = NULL, *pinsrc = NULL;
    hsm_err he;
    int rc = -1;

    *ctx = NULL;
    hc.module = c->hsm_module;
    if (hc.module == NULL) {
        gm_err("a pkcs11: key needs [hsm] module (the PKCS#11 module path)");
        return -1;
    }
    if (c->hsm_token != NULL)
        hc.token_uri = c->hsm_token;
    else if ((tok = token_uri_of(uri)) == NULL)
        goto out;
    else
        hc.token_uri = tok;
    if (c->hsm_pin_source != NULL)
        hc.pin_source = c->hsm_pin_source;
    else if (uri_pin_source(uri, &pinsrc) != 0 ||
             (pinsrc == NULL && c->hsm_token != NULL && uri_pin_source(c->hsm_token, &pinsrc) != 0))
        goto out;
    else
        hc.pin_source = pinsrc;
    hc.max_sessions = 2;
    if ((he = hsm_open(&hc, ctx)) != HSM_OK) {
        gm_err("token %s: %s %s", hc.token_uri, hsm_strerror(he), hsm_last_error_detail());
        goto out;
    }
    rc = 0;
out:
    free(tok);
    if (pinsrc != NULL)
        util_secret_free(pinsrc, strlen(pinsrc)); /* a source name, wiped anyway */
    return rc;
}

int gm_hsm_open_for(const gm_config *c, const char *key_uri, hsm_ctx **ctx, hsm_key **key)
{
    hsm_err he;

    *key = NULL;
    if (gm_hsm_open_token(c, key_uri, ctx) != 0)
        return -1;
    if ((he = hsm_key_find(*ctx, key_uri, HSM_CLASS_PRIVATE, key)) != HSM_OK) {
        /* without a PIN there is no login, and a token shows no private key */
        gm_err("key %s: %s %s%s", key_uri, hsm_strerror(he), hsm_last_error_detail(),
               has_pin_source(c, key_uri) ? ""
                                          : " (no PIN source, so not logged in: give [hsm] pin_source, "
                                            "--pin-source or pin-source= in the URI)");
        hsm_close(*ctx);
        *ctx = NULL;
        return -1;
    }
    return 0;
}

/* ---- the member ------------------------------------------------------------ */

void gm_member_clear(gm_member *m)
{
    X509_free(m->cert);
    EVP_PKEY_free(m->pkey);
    hsm_key_free(m->hkey);
    hsm_close(m->hsm);
    memset(m, 0, sizeof(*m));
}

int gm_member_load(const gm_config *c, gm_member *m)
{
    memset(m, 0, sizeof(*m));
    if (c->cert == NULL || c->key == NULL) {
        gm_err("this needs the member certificate and key (--cert FILE --key FILE|pkcs11:URI)");
        return -1;
    }
    if ((m->cert = gm_read_cert_file(c->cert)) == NULL)
        goto fail;
    if (strncmp(c->key, "pkcs11:", 7) == 0) {
        if (gm_hsm_open_for(c, c->key, &m->hsm, &m->hkey) != 0)
            goto fail;
    } else {
        if ((m->pkey = read_key_file(c->key)) == NULL)
            goto fail;
        if (X509_check_private_key(m->cert, m->pkey) != 1) {
            ERR_clear_error();
            gm_err("%s does not match the certificate %s", c->key, c->cert);
            goto fail;
        }
    }
    return 0;
fail:
    gm_member_clear(m);
    return -1;
}

int gm_member_oaep_decrypt(gm_member *m, bool sha256, const unsigned char *in, size_t inlen, unsigned char *out,
                           size_t outcap, size_t *outlen)
{
    EVP_PKEY_CTX *pc = NULL;
    unsigned char *tmp = NULL;
    size_t tlen = 0;
    int rc = -1;

    *outlen = 0;
    if (m->hkey != NULL) {
        hsm_unwrap_input hi = {.group_key = m->hkey,
                               .alg = sha256 ? HSM_KT_RSA_OAEP_SHA256 : HSM_KT_RSA_OAEP_SHA1,
                               .encrypted_key = in,
                               .encrypted_key_len = inlen};
        hsm_err he = hsm_decrypt_content_key(m->hsm, &hi, out, outcap, outlen);
        if (he != HSM_OK) {
            gm_err("token decryption failed: %s %s", hsm_strerror(he), hsm_last_error_detail());
            return -1;
        }
        return 0;
    }
    if (m->pkey == NULL)
        return -1;
    const EVP_MD *md = sha256 ? EVP_sha256() : EVP_sha1();
    if ((pc = EVP_PKEY_CTX_new(m->pkey, NULL)) == NULL || EVP_PKEY_decrypt_init(pc) <= 0 ||
        EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_OAEP_PADDING) <= 0 || EVP_PKEY_CTX_set_rsa_oaep_md(pc, md) <= 0 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(pc, md) <= 0 || EVP_PKEY_decrypt(pc, NULL, &tlen, in, inlen) <= 0)
        goto out;
    if ((tmp = malloc(tlen)) == NULL || EVP_PKEY_decrypt(pc, tmp, &tlen, in, inlen) <= 0 || tlen > outcap)
        goto out;
    memcpy(out, tmp, tlen);
    *outlen = tlen;
    rc = 0;
out:
    if (rc != 0)
        gm_err("RSA-OAEP decryption with the member key failed");
    ERR_clear_error();
    if (tmp != NULL)
        OPENSSL_clear_free(tmp, tlen);
    EVP_PKEY_CTX_free(pc);
    return rc;
}

int gm_member_decrypt_ri(gm_member *m, const env_recipient *ri, unsigned char *cek, size_t cekcap, size_t *ceklen)
{
    env_err e;
    env_kt_alg alg;
    const unsigned char *ek;
    size_t eklen;

    *ceklen = 0;
    if (env_recipient_type(ri) != ENV_RI_KTRI) {
        gm_err("the RecipientInfo for your certificate is not key transport");
        return -1;
    }
    if (!env_recipient_matches_cert(ri, m->cert)) {
        gm_err("the key was wrapped to another certificate than --cert");
        return -1;
    }
    if (m->pkey != NULL) {
        if ((e = env_recipient_decrypt_with_pkey(ri, m->cert, m->pkey, cek, cekcap, ceklen)) != ENV_OK) {
            gm_err("cannot decrypt the re-wrapped key: %s", env_strerror(e));
            return -1;
        }
        return 0;
    }
    if ((e = env_recipient_kt_alg(ri, &alg)) != ENV_OK || (e = env_recipient_encrypted_key(ri, NULL, &ek, &eklen)) != ENV_OK) {
        gm_err("re-wrapped key unusable: %s", env_strerror(e));
        return -1;
    }
    if (alg == ENV_KT_RSA_PKCS1V15) {
        /* the hsm layer decrypts v1.5 only with implicit rejection, which
         * needs a rejection key a member's token does not have */
        gm_err("the key is wrapped with RSA PKCS#1 v1.5, which groupmail does not decrypt with a key on a token: "
               "ask the group's administrator for `groupsrv member set GROUP ADDRESS --wrap oaep`");
        return -1;
    }
    if (alg != ENV_KT_RSA_OAEP_SHA1 && alg != ENV_KT_RSA_OAEP_SHA256) {
        gm_err("the wrapped key uses an unsupported algorithm");
        return -1;
    }
    return gm_member_oaep_decrypt(m, alg == ENV_KT_RSA_OAEP_SHA256, ek, eklen, cek, cekcap, ceklen);
}

/* ---- the TLS identity on a token ------------------------------------------ */

/* The member's TLS client key on their token, for the whole run (one
 * login): the EVP_PKEY borrows the hsm_ctx, and every gs_rest handle made
 * by gm_rest_open holds the EVP_PKEY. Closed by gm_tls_token_close. */
static struct {
    hsm_ctx *hsm;
    EVP_PKEY *pkey;
} tls_tok;

static bool key_is_token(const gm_config *c)
{
    return c->tls_cert == NULL && c->cert != NULL && c->key != NULL && strncmp(c->key, "pkcs11:", 7) == 0;
}

int gm_tls_token_prepare(const gm_config *c)
{
    hsm_ctx *hc = NULL;
    hsm_key *hk = NULL;
    hsm_key_info ki;
    const char *backend = NULL;
    hsm_err he;
    int rc = GM_EXIT_ERROR;

    if (!key_is_token(c) || tls_tok.pkey != NULL)
        return GM_EXIT_OK;
    if (!gs_rest_pkey_supported(&backend)) {
        gm_err("a TLS client key on a token needs libcurl built with OpenSSL (this one uses %s); "
               "use a key file (--tls-cert/--tls-key)", backend);
        return GM_EXIT_ERROR;
    }
    if (gm_hsm_open_for(c, c->key, &hc, &hk) != 0)
        return GM_EXIT_ERROR;
    if ((he = hsm_key_get_info(hc, hk, &ki)) != HSM_OK) {
        gm_err("key %s: %s %s", c->key, hsm_strerror(he), hsm_last_error_detail());
        goto out;
    }
    if (ki.type == HSM_KEYTYPE_RSA) {
        /* TLS 1.3 client auth signs with RSA-PSS, which OpenSSL 3.0 would
         * hand to a token only as a raw RSA private operation: never done. */
        gm_err("the member key on the token is RSA, which cannot authenticate TLS without raw RSA on the token: "
               "use a key file (--tls-cert/--tls-key) or an EC (P-256/P-384) token key");
        goto out;
    }
    if (ki.type != HSM_KEYTYPE_EC || (ki.bits != 256 && ki.bits != 384) || !ki.sign) {
        gm_err("the member key on the token must be EC P-256 or P-384 with CKA_SIGN for TLS");
        goto out;
    }
    if ((he = hsm_key_evp_pkey(hc, hk, &tls_tok.pkey)) != HSM_OK) {
        gm_err("key %s: %s %s", c->key, hsm_strerror(he), hsm_last_error_detail());
        goto out;
    }
    tls_tok.hsm = hc;
    hc = NULL;
    rc = GM_EXIT_OK;
out:
    hsm_key_free(hk);
    hsm_close(hc);
    return rc;
}

void gm_tls_token_close(void)
{
    /* The EVP_PKEY first: it borrows the context. */
    EVP_PKEY_free(tls_tok.pkey);
    hsm_close(tls_tok.hsm);
    memset(&tls_tok, 0, sizeof(tls_tok));
}

int gm_need_rsa_tls_cert(const gm_config *c, const char *what)
{
    const char *path = c->tls_cert != NULL ? c->tls_cert : c->cert;
    X509 *x;
    int id;

    if (path == NULL || (x = gm_read_cert_file_quiet(path)) == NULL)
        return GM_EXIT_OK; /* whoever needs it says so */
    id = EVP_PKEY_get_base_id(X509_get0_pubkey(x));
    X509_free(x);
    if (id == EVP_PKEY_RSA)
        return GM_EXIT_OK;
    gm_err("%s needs an RSA member certificate (the server re-wraps keys to it with RSA-OAEP), "
           "and %s has an %s key: with it use --via tls or --via membership-cert",
           what, path, id == EVP_PKEY_EC ? "EC" : "other");
    return GM_EXIT_USAGE;
}

/* ---- REST ------------------------------------------------------------------ */

int gm_rest_open(const gm_config *c, const char *url, gs_rest **r)
{
    gs_rest_opts o = {0};
    gs_rest_err e;

    *r = NULL;
    o.base_url = url != NULL ? url : c->server;
    if (o.base_url == NULL) {
        gm_err("no group server: give --server URL (or [server] url)");
        return GM_EXIT_USAGE;
    }
    o.ca_file = c->cacert;
    o.pinned_pubkey = c->pin;
    o.timeout_ms = c->timeout > 0 ? c->timeout * 1000 : 0;
    if (c->tls_cert != NULL) {
        o.cert_file = c->tls_cert;
        o.key_file = c->tls_key;
    } else if (c->cert != NULL && c->key != NULL && strncmp(c->key, "pkcs11:", 7) != 0) {
        o.cert_file = c->cert;
        o.key_file = c->key;
    } else if (key_is_token(c) && tls_tok.pkey != NULL) {
        /* gm_tls_token_prepare ran: the key on the token signs the handshake */
        o.cert_file = c->cert;
        o.client_pkey = tls_tok.pkey;
    }
    if ((e = gs_rest_new(&o, r)) != GS_REST_OK) {
        if (e == GS_REST_ERR_CLIENT_CERT && o.client_pkey != NULL) {
            gm_err("cannot use %s with the key on the token (unreadable, or not that key's certificate)", o.cert_file);
            return GM_EXIT_ERROR;
        }
        if (e == GS_REST_ERR_PIN_FORMAT) { /* a local file or setting: as a --cacert that cannot be read */
            gm_err("cannot use the pin %s: %s", o.pinned_pubkey, gs_rest_strerror(e));
            return GM_EXIT_ERROR;
        }
        gm_err("cannot use server URL %s: %s", o.base_url,
               gs_rest_url_ok(o.base_url) ? gs_rest_strerror(e) : gs_rest_url_why(o.base_url));
        return GM_EXIT_USAGE;
    }
    return GM_EXIT_OK;
}
