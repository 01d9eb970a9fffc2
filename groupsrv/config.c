/* config.c: see config.h. Table-driven: every key has one row saying its
 * section, type, range and where it goes, so unknown keys, duplicates and
 * out-of-range values all get the same one-line treatment. */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "inifile.h"
#include "log.h"
#include "store.h"
#include "util.h"

/* K_ENUM: a string that must be one of `choices` ("a|b|c"), checked as the
 * line is read, so its error names the line. */
enum ktype { K_STR, K_UINT, K_SIZE, K_BOOL, K_ENUM };

struct key_def {
    const char *section;
    const char *name;
    enum ktype type;
    size_t offset;
    uint64_t min, max;
    const char *choices; /* K_ENUM */
};

#define OFF(f) offsetof(struct gs_config, f)
static const struct key_def keys[] = {
    {"server", "listen", K_STR, OFF(server.listen), 0, 0, NULL},
    {"server", "threads", K_UINT, OFF(server.threads), 1, 256, NULL},
    {"server", "max_body", K_SIZE, OFF(server.max_body), 1024, 16u * 1024 * 1024, NULL},
    {"server", "unwrap_batch_max", K_UINT, OFF(server.unwrap_batch_max), 1, 10000, NULL},
    {"server", "rate_limit", K_UINT, OFF(server.rate_limit), 0, 1000000, NULL},
    {"server", "rate_burst", K_UINT, OFF(server.rate_burst), 1, 1000000, NULL},
    {"server", "timeout", K_UINT, OFF(server.timeout), 1, 3600, NULL},
    {"server", "keyholder_queue_max", K_SIZE, OFF(server.keyholder_queue_max), 4096, 64u * 1024 * 1024, NULL},
    {"server", "max_connections", K_UINT, OFF(server.max_connections), 1, 1000000, NULL},
    {"server", "reserved_connections", K_UINT, OFF(server.reserved_connections), 0, 1000000, NULL},
    {"server", "max_connections_per_address", K_UINT, OFF(server.max_connections_per_address), 1, 1000000,
     NULL},
    {"server", "handshake_timeout", K_UINT, OFF(server.handshake_timeout), 1, 3600, NULL},
    {"server", "request_timeout", K_UINT, OFF(server.request_timeout), 1, 3600, NULL},
    {"server", "max_failed_unwraps", K_UINT, OFF(server.max_failed_unwraps), 0, 1000000, NULL},
    {"server", "suspend_seconds", K_UINT, OFF(server.suspend_seconds), 1, 86400 * 30, NULL},
    {"server", "auto_rotate_secret_on_remove", K_BOOL, OFF(server.auto_rotate_secret_on_remove), 0, 0, NULL},
    {"server", "metrics", K_ENUM, OFF(server.metrics), 0, 0, "off|any|admin"},
    {"server", "log_level", K_ENUM, OFF(server.log_level), 0, 0, "error|warn|info|debug"},
    {"server", "access_log", K_BOOL, OFF(server.access_log), 0, 0, NULL},
    {"server", "max_queue_ms", K_UINT, OFF(server.max_queue_ms), 0, 3600000, NULL},
    {"server", "user", K_STR, OFF(server.user), 0, 0, NULL},
    {"tls", "cert", K_STR, OFF(tls.cert), 0, 0, NULL},
    {"tls", "key", K_STR, OFF(tls.key), 0, 0, NULL},
    {"tls", "client_ca", K_STR, OFF(tls.client_ca), 0, 0, NULL},
    {"hsm", "module", K_STR, OFF(hsm.module), 0, 0, NULL},
    {"hsm", "token", K_STR, OFF(hsm.token), 0, 0, NULL},
    {"hsm", "pin_source", K_STR, OFF(hsm.pin_source), 0, 0, NULL},
    {"hsm", "so_pin_source", K_STR, OFF(hsm.so_pin_source), 0, 0, NULL},
    {"hsm", "max_sessions", K_UINT, OFF(hsm.max_sessions), 1, 1024, NULL},
    {"hsm", "init_args", K_STR, OFF(hsm.init_args), 0, 0, NULL},
    {"hsm", "workers", K_UINT, OFF(hsm.workers), 1, 256, NULL},
    {"server", "instance", K_STR, OFF(server.instance), 0, 0, NULL},
    {"db", "path", K_STR, OFF(db.path), 0, 0, NULL},
    {"db", "url", K_STR, OFF(db.url), 0, 0, NULL},
    {"db", "timeout", K_UINT, OFF(db.timeout), 1, 3600, NULL},
    {"db", "unreplicated_writes", K_ENUM, OFF(db.unreplicated_writes), 0, 0, "answer|refuse"},
    {"audit", "path", K_STR, OFF(audit.path), 0, 0, NULL},
    {"audit", "store", K_ENUM, OFF(audit.store), 0, 0, "file|db"},
    {"certsrv", "listen", K_STR, OFF(certsrv.listen), 0, 0, NULL},
    {"certsrv", "lifetime", K_UINT, OFF(certsrv.lifetime), 60, 604800, NULL},
    {"certsrv", "max_connections", K_UINT, OFF(certsrv.max_connections), 1, 1000000, NULL},
    {"certsrv", "url", K_STR, OFF(certsrv.url), 0, 0, NULL},
    {"ca", "key_label", K_STR, OFF(ca.key_label), 0, 0, NULL},
    {"ca", "group_cert_days", K_UINT, OFF(ca.group_cert_days), 1, 36500, NULL},
    {"ca", "member_cert_days", K_UINT, OFF(ca.member_cert_days), 1, 36500, NULL},
    {"ca", "ca_days", K_UINT, OFF(ca.ca_days), 1, 36500, NULL},
};
#undef OFF

/* Longest accepted value: paths and URIs. */
#define VALUE_MAX 1024

struct parse_state {
    struct gs_config *cfg;
    bool seen[GS_ARRAY_LEN(keys)];
    bool rate_burst_set;
    char first_error[256]; /* message of the first bad key; line comes from inih */
};

static int fail(struct parse_state *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct parse_state *ps, const char *fmt, ...)
{
    if (ps->first_error[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        (void)vsnprintf(ps->first_error, sizeof(ps->first_error), fmt, ap);
        va_end(ap);
    }
    return 0; /* inih: error on this line */
}

static int parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};
    for (size_t i = 0; i < GS_ARRAY_LEN(yes); i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

/* Whether value is one of choices ("a|b|c"). */
static bool enum_has(const char *choices, const char *value)
{
    size_t n = strlen(value);

    for (const char *p = choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, value, n) == 0)
            return true;
        p += len + (bar ? 1 : 0);
    }
    return false;
}

/* "a|b|c" as "a, b or c". Returns out. */
static const char *enum_words(const char *choices, char *out, size_t cap)
{
    size_t o = 0;
    const char *last = strrchr(choices, '|');

    for (const char *p = choices; *p && o + 5 < cap; p++) {
        if (*p != '|')
            out[o++] = *p;
        else
            o += (size_t)snprintf(out + o, cap - o, "%s", p == last ? " or " : ", ");
    }
    out[o < cap ? o : cap - 1] = '\0';
    return out;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
    struct parse_state *ps = user;
    const struct key_def *def = NULL;
    size_t idx = 0;
    bool section_known = false;
    char qs[64], qn[64];

    /* Section and key names come from the file: quote them for messages. */
    (void)log_quote(qs, sizeof(qs), section);
    if (name == NULL) { /* a [section] line (inifile.h): known, even with no key under it */
        for (size_t i = 0; i < GS_ARRAY_LEN(keys); i++)
            if (strcmp(keys[i].section, section) == 0)
                return 1;
        return fail(ps, "unknown section [%s]", qs);
    }
    (void)log_quote(qn, sizeof(qn), name);

    for (size_t i = 0; i < GS_ARRAY_LEN(keys); i++) {
        if (strcmp(keys[i].section, section) != 0)
            continue;
        section_known = true;
        if (strcmp(keys[i].name, name) == 0) {
            def = &keys[i];
            idx = i;
            break;
        }
    }
    if (!section_known)
        return fail(ps, "unknown section [%s] (key '%s')", qs, qn);
    if (def == NULL)
        return fail(ps, "unknown key '%s' in [%s]", qn, qs);
    if (ps->seen[idx])
        return fail(ps, "duplicate key '%s' in [%s]", qn, qs);
    ps->seen[idx] = true;
    if (strlen(value) > VALUE_MAX)
        return fail(ps, "value of '%s' in [%s] is too long", qn, qs);

    char *base = (char *)ps->cfg;
    switch (def->type) {
    case K_ENUM:
        if (!enum_has(def->choices, value)) {
            char words[128];
            return fail(ps, "bad value for '%s' in [%s] (expected %s)", qn, qs,
                        enum_words(def->choices, words, sizeof(words)));
        }
        /* kept as a string */
        __attribute__((fallthrough));
    case K_STR: {
        if (value[0] == '\0')
            return fail(ps, "empty value for '%s' in [%s]", qn, qs);
        char **slot = (char **)(void *)(base + def->offset);
        char *copy = strdup(value);
        if (copy == NULL)
            return fail(ps, "out of memory at '%s' in [%s]", qn, qs);
        free(*slot); /* the default */
        *slot = copy;
        break;
    }
    case K_UINT:
    case K_SIZE: {
        uint64_t v = 0;
        if (util_parse_u64(value, def->min, def->max, &v) != UTIL_OK)
            return fail(ps, "bad value for '%s' in [%s] (not a number in range)", qn, qs);
        if (def->type == K_UINT)
            *(unsigned *)(void *)(base + def->offset) = (unsigned)v;
        else
            *(size_t *)(void *)(base + def->offset) = (size_t)v;
        if (strcmp(name, "rate_burst") == 0)
            ps->rate_burst_set = true;
        break;
    }
    case K_BOOL:
        if (parse_bool(value, (bool *)(void *)(base + def->offset)) != 0)
            return fail(ps, "bad value for '%s' in [%s] (expected yes or no)", qn, qs);
        break;
    }
    return 1;
}

static gs_err set_default(char **slot, const char *v)
{
    *slot = strdup(v);
    return *slot ? GS_OK : GS_ERR_NOMEM;
}

static struct gs_config *config_new(void)
{
    struct gs_config *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->server.threads = 4;
    c->server.max_body = 65536;
    c->server.unwrap_batch_max = 100;
    c->server.timeout = 30;
    c->server.keyholder_queue_max = 1024u * 1024;
    c->server.max_connections = 1024;
    c->server.reserved_connections = UINT_MAX; /* unset: a quarter of max_connections */
    c->server.max_connections_per_address = 32;
    c->server.handshake_timeout = 10;
    c->server.request_timeout = 20;
    c->certsrv.max_connections = 256;
    c->server.max_failed_unwraps = 20;
    c->server.suspend_seconds = 600;
    c->server.max_queue_ms = 2000;
    c->server.auto_rotate_secret_on_remove = true;
    c->certsrv.lifetime = 3600;
    c->db.timeout = 10;
    c->ca.group_cert_days = 825;
    c->ca.member_cert_days = 365;
    c->ca.ca_days = 3650;
    if (set_default(&c->server.listen, "127.0.0.1:8443") || set_default(&c->server.metrics, "admin") ||
        set_default(&c->server.log_level, "info") || set_default(&c->server.user, "nobody") || set_default(&c->hsm.token, "pkcs11:token=groupsrv") ||
        set_default(&c->db.path, "/var/lib/groupsrv/groupsrv.db") ||
        set_default(&c->audit.path, "/var/log/groupsrv/audit.jsonl") || set_default(&c->audit.store, "file") ||
        set_default(&c->db.unreplicated_writes, "answer") ||
        set_default(&c->ca.key_label, "gs:ca")) {
        gs_config_free(c);
        return NULL;
    }
    return c;
}

/* "host:port" or "[v6]:port", port 1..65535. */
static bool valid_listen(const char *s)
{
    const char *colon = strrchr(s, ':');
    uint64_t port = 0;
    if (colon == NULL || colon == s || util_parse_u64(colon + 1, 1, 65535, &port) != UTIL_OK)
        return false;
    if (s[0] == '[' && colon[-1] != ']')
        return false;
    return true;
}

/* store.h's, defined here: the network process validates [db] with the
 * config and links neither store.c nor a database library. */
int gs_store_location_is_url(const char *location)
{
    return location != NULL &&
           (strncmp(location, "postgresql://", 13) == 0 || strncmp(location, "postgres://", 11) == 0);
}

/* Index of a key in keys[] (it exists). */
static size_t key_index(const char *section, const char *name)
{
    for (size_t i = 0; i < GS_ARRAY_LEN(keys); i++)
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
            return i;
    return 0;
}

/* A server's instance name is its audit chain's name in the database, and
 * admin commands write the chain INSTANCE/admin: a server named gs-a/admin
 * would share gs-a's admin chain (two writers, records of the one server
 * mixed with the other's commands, and gs-a/admin's own admin chain named
 * gs-a/admin/admin), so '/' is kept for that suffix. It is also logged
 * unquoted (instance=NAME), printed by `audit verify` (instance NAME: ok)
 * and sent as part of the PostgreSQL application_name, which PostgreSQL
 * shows only in printable ASCII: a host name's characters, plus '_' and
 * ':', are enough to tell servers apart and keep all three readable. */
static bool instance_name_ok(const char *s)
{
    for (; *s != '\0'; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr(".-_:", *s) != NULL))
            return false;
    return true;
}

/* [db]: exactly one of path (SQLite, the default) and url (PostgreSQL);
 * [server] instance defaults to the host name; [audit] store = db needs
 * the PostgreSQL store, and [db] unreplicated_writes = refuse the audit
 * table. */
static gs_err validate_store(const char *name, struct gs_config *c, const bool *seen)
{
    char host[256];

    if (c->db.url != NULL) {
        if (seen[key_index("db", "path")])
            return gs_err_set(GS_ERR_CONFIG, "%s: [db] has both 'path' and 'url' (set exactly one)", name);
        if (!gs_store_location_is_url(c->db.url))
            return gs_err_set(GS_ERR_CONFIG, "%s: 'url' in [db] must be a postgresql:// URI", name);
        free(c->db.path);
        c->db.path = NULL;
    } else if (gs_store_location_is_url(c->db.path)) {
        return gs_err_set(GS_ERR_CONFIG, "%s: 'path' in [db] is a URI (use 'url' for PostgreSQL)", name);
    }
    if (strcmp(c->audit.store, "db") == 0 && c->db.url == NULL)
        return gs_err_set(GS_ERR_CONFIG, "%s: [audit] store = db needs the PostgreSQL store ([db] url)", name);
    /* Refusing is done by the audit table's inserts (server/audit.c,
     * db_flush): with the audit log in a file nothing was refused, and a
     * member change made on the primary alone was answered 200 under a
     * setting that said it would not be. */
    if (strcmp(c->db.unreplicated_writes, "refuse") == 0 && strcmp(c->audit.store, "db") != 0)
        return gs_err_set(GS_ERR_CONFIG,
                          "%s: [db] unreplicated_writes = refuse needs [audit] store = db (writes made on the "
                          "primary alone are told, and refused, by the audit table's inserts)",
                          name);
    if (c->server.instance == NULL) {
        if (gethostname(host, sizeof(host)) != 0)
            (void)snprintf(host, sizeof(host), "groupsrv");
        host[sizeof(host) - 1] = '\0';
        if ((c->server.instance = strndup(host, GS_AUDIT_INSTANCE_MAX)) == NULL)
            return GS_ERR_NOMEM;
    }
    if (c->server.instance[0] == '\0' || strlen(c->server.instance) > GS_AUDIT_INSTANCE_MAX)
        return gs_err_set(GS_ERR_CONFIG, "%s: 'instance' in [server] must be 1..%d bytes", name,
                          GS_AUDIT_INSTANCE_MAX);
    /* the host name is used only with a database's audit chains: a host
     * named otherwise keeps its SQLite server starting as before */
    if ((seen[key_index("server", "instance")] || c->db.url != NULL) && !instance_name_ok(c->server.instance))
        return gs_err_set(GS_ERR_CONFIG,
                          "%s: 'instance' in [server] (%s\"%s\") may hold only letters, digits and . - _ : "
                          "(a '/' would name another chain: INSTANCE/admin is the admin commands' audit chain)",
                          name, seen[key_index("server", "instance")] ? "" : "the host name, ",
                          log_qs(c->server.instance));
    return GS_OK;
}

const char *gs_config_db_location(const struct gs_config *cfg)
{
    return cfg->db.url != NULL ? cfg->db.url : cfg->db.path;
}

/* Cross-key checks after parsing. */
static gs_err validate(const char *name, struct gs_config *c)
{
    if (c->hsm.module == NULL)
        return gs_err_set(GS_ERR_CONFIG, "%s: missing required key 'module' in [hsm]", name);
    if (c->hsm.pin_source == NULL)
        return gs_err_set(GS_ERR_CONFIG, "%s: missing required key 'pin_source' in [hsm]", name);
    if (strncmp(c->hsm.token, "pkcs11:", 7) != 0)
        return gs_err_set(GS_ERR_CONFIG, "%s: 'token' in [hsm] must be a pkcs11: URI", name);
    /* A module by name gets its arguments from x-init-reserved in its
     * p11-kit module file (p11-kit applies it only for NULL arguments). */
    if (c->hsm.init_args != NULL && strchr(c->hsm.module, '/') == NULL)
        return gs_err_set(GS_ERR_CONFIG, "%s: 'init_args' in [hsm] needs a module given by path; for a p11-kit "
                          "module name put x-init-reserved in its module file", name);
    if (c->tls.key != NULL && util_uri_has_pin_value(c->tls.key))
        return gs_err_set(GS_ERR_CONFIG, "%s: 'key' in [tls] carries a PIN (pin-value; not shown): the PIN comes "
                          "from [hsm] pin_source only", name);
    /* The [tls] key is on the [hsm] token, logged in once with its PIN:
     * a PIN source of its own would be ignored without a word. */
    if (c->tls.key != NULL && strncmp(c->tls.key, "pkcs11:", 7) == 0 && util_uri_has_pin_source(c->tls.key))
        return gs_err_set(GS_ERR_CONFIG, "%s: 'key' in [tls] names a PIN source (pin-source), which groupsrv does "
                          "not read: the PIN comes from [hsm] pin_source only; drop pin-source= (or pinfile=, its "
                          "older name) from the URI",
                          name);
    if (c->tls.key != NULL && strncmp(c->tls.key, "pkcs11:", 7) == 0 && util_uri_needs_escape(c->tls.key, 0)) {
        char enc[1024];
        return gs_err_set(GS_ERR_CONFIG, "%s: 'key' in [tls] has a space or control byte, which a PKCS#11 URI "
                          "must percent-encode (p11-kit would drop it): %s", name,
                          util_uri_escape_loose(c->tls.key, enc, sizeof(enc)));
    }
    if (!valid_listen(c->server.listen))
        return gs_err_set(GS_ERR_CONFIG, "%s: 'listen' in [server] must be host:port", name);
    if (c->server.reserved_connections == UINT_MAX)
        c->server.reserved_connections = c->server.max_connections / 4;
    if (c->server.reserved_connections >= c->server.max_connections)
        return gs_err_set(GS_ERR_CONFIG, "%s: 'reserved_connections' in [server] must be below max_connections",
                          name);
    if (c->certsrv.listen != NULL && !valid_listen(c->certsrv.listen))
        return gs_err_set(GS_ERR_CONFIG, "%s: 'listen' in [certsrv] must be host:port", name);
    if (strlen(c->ca.key_label) > 127)
        return gs_err_set(GS_ERR_CONFIG, "%s: 'key_label' in [ca] is longer than 127 bytes", name);
    if (c->certsrv.listen != NULL && c->certsrv.url == NULL) {
        size_t n = strlen(c->certsrv.listen) + sizeof("https://");
        c->certsrv.url = malloc(n);
        if (c->certsrv.url == NULL)
            return GS_ERR_NOMEM;
        (void)snprintf(c->certsrv.url, n, "https://%s", c->certsrv.listen);
    }
    return GS_OK;
}

static gs_err load(const char *text, const char *path, const char *name, struct gs_config **out)
{
    struct parse_state ps;
    gs_err err = GS_ERR_NOMEM;
    enum inifile_status st;
    int line = 0;

    *out = NULL;
    gs_err_clear();
    memset(&ps, 0, sizeof(ps));
    ps.cfg = config_new();
    if (ps.cfg == NULL)
        goto out;
    ps.cfg->path = strdup(name);
    if (ps.cfg->path == NULL)
        goto out;
    if (text == NULL) {
        /* The file is read once and its bytes kept: serve hands the same
         * bytes to its network process, which could otherwise see a file
         * edited between two reads. */
        int rc = util_read_file(path, GS_CONFIG_FILE_MAX, &ps.cfg->text, &ps.cfg->text_len);
        if (rc == UTIL_E_TOOBIG) {
            err = gs_err_set(GS_ERR_CONFIG, "%s: config file larger than %u bytes", name, GS_CONFIG_FILE_MAX);
            goto out;
        }
        if (rc != UTIL_OK) {
            err = gs_err_set(GS_ERR_CONFIG, "%s: cannot open config file: %s", name,
                             strerror(rc == UTIL_E_NOTFOUND ? ENOENT : errno));
            goto out;
        }
    }
    if (text != NULL || ps.cfg->text_len == 0) {
        st = inifile_parse(NULL, text ? text : "", handler, &ps, &line);
    } else {
        FILE *f = fmemopen(ps.cfg->text, ps.cfg->text_len, "r");
        if (f == NULL)
            goto out;
        st = inifile_parse_stream(f, handler, &ps, &line);
        (void)fclose(f);
    }
    switch (st) {
    case INIFILE_OK:
        break;
    case INIFILE_IO:
        err = gs_err_set(GS_ERR_CONFIG, "%s: cannot open config file: %s", name, strerror(errno));
        goto out;
    case INIFILE_NOMEM:
        goto out;
    case INIFILE_LONG_LINE:
    case INIFILE_NUL:
    case INIFILE_SYNTAX:
        err = gs_err_set(GS_ERR_CONFIG, "%s:%d: %s", name, line, inifile_line_strerror(st));
        goto out;
    case INIFILE_BAD_LINE:
        err = gs_err_set(GS_ERR_CONFIG, "%s:%d: %s", name, line, ps.first_error[0] ? ps.first_error : "invalid setting");
        goto out;
    }
    if (!ps.rate_burst_set)
        ps.cfg->server.rate_burst = ps.cfg->server.rate_limit ? 2 * ps.cfg->server.rate_limit : 0;
    err = validate(name, ps.cfg);
    if (err == GS_OK)
        err = validate_store(name, ps.cfg, ps.seen);
    if (err != GS_OK)
        goto out;
    *out = ps.cfg;
    ps.cfg = NULL;
out:
    gs_config_free(ps.cfg);
    return err;
}

gs_err gs_config_load(const char *path, struct gs_config **out)
{
    if (out)
        *out = NULL;
    if (path == NULL || out == NULL)
        return gs_err_set(GS_ERR_ARGS, "no config path");
    return load(NULL, path, path, out);
}

gs_err gs_config_load_string(const char *text, const char *name, struct gs_config **out)
{
    if (out)
        *out = NULL;
    if (text == NULL || out == NULL)
        return gs_err_set(GS_ERR_ARGS, "no config text");
    return load(text, NULL, name ? name : "(string)", out);
}

void gs_config_free(struct gs_config *cfg)
{
    if (cfg == NULL)
        return;
    /* Wiped first: [db] url may carry the role's password, and SIGHUP
     * loads the edited file only to say whether a restart would start. */
    for (size_t i = 0; i < GS_ARRAY_LEN(keys); i++) {
        if (keys[i].type == K_STR || keys[i].type == K_ENUM) {
            char *v = *(char **)(void *)((char *)cfg + keys[i].offset);
            if (v != NULL)
                OPENSSL_cleanse(v, strlen(v));
            free(v);
        }
    }
    free(cfg->path);
    if (cfg->text != NULL) {
        OPENSSL_cleanse(cfg->text, cfg->text_len);
        free(cfg->text);
    }
    free(cfg);
}

const char *gs_config_choose_path(const char *explicit_path)
{
    const char *env;
    if (explicit_path != NULL && explicit_path[0] != '\0')
        return explicit_path;
    env = getenv("GROUPSRV_CONF");
    if (env != NULL && env[0] != '\0')
        return env;
    return GS_CONFIG_DEFAULT_PATH;
}
