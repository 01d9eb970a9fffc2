/* conf.c: exploder.conf (INI via inih) and the error table. See xp.h. */
#include "xp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "inifile.h"
#include "log.h"
#include "mailaddr.h"
#include "util.h"

const char *xp_strerror(xp_err err)
{
    switch (err) {
    case XP_OK: return "success";
    case XP_ERR_NOMEM: return "out of memory";
    case XP_ERR_ARGS: return "invalid arguments";
    case XP_ERR_IO: return "I/O error";
    case XP_ERR_DB: return "spool database error";
    case XP_ERR_CONFIG: return "configuration error";
    case XP_ERR_NOTFOUND: return "not found";
    case XP_ERR_EXISTS: return "already exists";
    case XP_ERR_FORMAT: return "malformed message";
    case XP_ERR_TOO_LARGE: return "message too large";
    case XP_ERR_NOT_ENCRYPTED: return "message is not encrypted (CMS EnvelopedData)";
    case XP_ERR_WRONG_RECIPIENT: return "message is not encrypted to the list's group certificate";
    case XP_ERR_REFUSED: return "refused by list policy";
    case XP_ERR_TEMP: return "temporary failure";
    case XP_ERR_PERM: return "permanent failure";
    case XP_ERR_CRYPTO: return "CMS processing failed";
    case XP_ERR_BUSY: return "another queue runner is active on this spool";
    case XP_ERR_CIPHER: return "message is encrypted with an algorithm the members cannot decrypt";
    case XP_ERR_DAMAGED: return "spool file damaged";
    case XP_ERR_SCHEMA: return "spool database written by a newer exploder (this one is older: upgrade it again)";
    }
    return "unknown error";
}

void xp_conf_free(xp_conf *c)
{
    if (c == NULL)
        return;
    free(c->spool_path);
    free(c->relay);
    free(c->envelope_from);
    free(c->bounce_from);
    free(c->relay_cacert);
    free(c->relay_user);
    free(c->relay_password_file);
    free(c->tls_cert);
    free(c->tls_priv_path);
    free(c->tls_ca);
    free(c->log_file);
    free(c);
}

static int set_str(char **dst, const char *v)
{
    char *d = strdup(v);
    if (d == NULL)
        return 0;
    free(*dst);
    *dst = d;
    return 1;
}

static int set_u64(uint64_t *dst, const char *v, uint64_t min, uint64_t max)
{
    return util_parse_u64(v, min, max, dst) == UTIL_OK;
}

static int set_bool(int *dst, const char *v)
{
    if (strcasecmp(v, "yes") == 0 || strcasecmp(v, "true") == 0 || strcmp(v, "1") == 0)
        *dst = 1;
    else if (strcasecmp(v, "no") == 0 || strcasecmp(v, "false") == 0 || strcmp(v, "0") == 0)
        *dst = 0;
    else
        return 0;
    return 1;
}

/* A key of three words (no | yes | required, no | loopback | yes): the
 * value of the word v is, case-insensitively; 0 for another word. */
static int set_word(int *dst, const char *v, const char *const words[3], const int values[3])
{
    for (int i = 0; i < 3; i++)
        if (strcasecmp(v, words[i]) == 0) {
            *dst = values[i];
            return 1;
        }
    return 0;
}

/* One key: 1 taken, 0 a bad value, -1 not a key of ours (an error too,
 * so a typo does not silently fall back to a default). */
static int conf_handler(void *user, const char *section, const char *name, const char *value)
{
    xp_conf *c = user;
    uint64_t u = 0;

    if (strcmp(section, "spool") == 0) {
        if (strcmp(name, "path") == 0)
            return set_str(&c->spool_path, value);
        if (strcmp(name, "max_message_size") == 0)
            return set_u64(&c->max_message_size, value, 1024, XP_MESSAGE_SIZE_CEILING);
    } else if (strcmp(section, "delivery") == 0) {
        if (strcmp(name, "relay") == 0) {
            if (strncmp(value, "smtp://", 7) != 0 && strncmp(value, "smtps://", 8) != 0 &&
                strncmp(value, "maildir:", 8) != 0)
                return 0;
            /* a login in the URL (user:password@, ;AUTH=): libcurl would
             * use it past relay_user's checks; it goes in relay_user */
            if (strncmp(value, "maildir:", 8) != 0 && util_url_has_userinfo(value))
                return 0;
            return set_str(&c->relay, value);
        }
        if (strcmp(name, "batch_size") == 0) {
            if (!set_u64(&u, value, 1, 1000))
                return 0;
            c->batch_size = (unsigned)u;
            return 1;
        }
        if (strcmp(name, "max_age") == 0)
            return set_u64(&c->max_age, value, 1, 90ULL * 86400);
        if (strcmp(name, "retry_min") == 0)
            return set_u64(&c->retry_min, value, 1, 86400);
        if (strcmp(name, "retry_max") == 0)
            return set_u64(&c->retry_max, value, 1, 7ULL * 86400);
        if (strcmp(name, "poll_interval") == 0)
            return set_u64(&c->poll_interval, value, 1, 3600);
        if (strcmp(name, "relay_timeout") == 0)
            return set_u64(&c->relay_timeout, value, 1, 3600);
        /* The mail system's own addresses, which the operator's MTA already
         * takes: the existing-address rule (no spaces, brackets or control
         * bytes, one '@'), so a typo is a bad value at start, while a value
         * an older version took (a '_' in a domain) keeps working across an
         * upgrade (docs/operations.md, "Upgrading"). */
        if (strcmp(name, "envelope_from") == 0)
            return mailaddr_names_record(value) && set_str(&c->envelope_from, value);
        if (strcmp(name, "bounce_from") == 0)
            return mailaddr_names_record(value) && set_str(&c->bounce_from, value);
        if (strcmp(name, "starttls") == 0) {
            static const char *const words[3] = {"no", "yes", "required"};
            static const int values[3] = {XP_STARTTLS_NO, XP_STARTTLS_YES, XP_STARTTLS_REQUIRED};
            int v;
            if (!set_word(&v, value, words, values))
                return 0;
            c->starttls = (xp_starttls)v;
            return 1;
        }
        if (strcmp(name, "relay_cacert") == 0)
            return set_str(&c->relay_cacert, value);
        if (strcmp(name, "relay_verify") == 0)
            return set_bool(&c->relay_verify, value);
        if (strcmp(name, "relay_user") == 0)
            return set_str(&c->relay_user, value);
        if (strcmp(name, "relay_auth_in_clear") == 0)
            return util_auth_clear_parse(value, &c->relay_auth_in_clear) == UTIL_OK;
        if (strcmp(name, "relay_password_file") == 0)
            return set_str(&c->relay_password_file, value);
        if (strcmp(name, "group_info_ttl") == 0)
            return set_u64(&c->group_info_ttl, value, 0, 86400);
    } else if (strcmp(section, "tls") == 0) {
        if (strcmp(name, "cert") == 0)
            return set_str(&c->tls_cert, value);
        if (strcmp(name, "key") == 0)
            return set_str(&c->tls_priv_path, value);
        if (strcmp(name, "ca") == 0)
            return set_str(&c->tls_ca, value);
        if (strcmp(name, "timeout") == 0)
            return set_u64(&c->tls_timeout, value, 1, 3600);
    } else if (strcmp(section, "log") == 0) {
        if (strcmp(name, "level") == 0) {
            int l = log_level_parse(value);
            if (l < 0)
                return 0;
            c->log_level = l;
            return 1;
        }
        if (strcmp(name, "file") == 0)
            return set_str(&c->log_file, value);
    }
    return -1; /* not a key of ours */
}

/* What conf_load reports beside the line: "unknown key 'x' in [s]", ... */
static _Thread_local char conf_why[160];

const char *xp_conf_error(void) { return conf_why; }

/* inih's handler: conf_handler's answer, with why it refused a line (an
 * unknown key, a bad or empty value) in conf_why. The first refusal is the
 * one inih reports, so only the first is kept. A key given again replaces
 * the value before it (exploder(1)): configurations are written as a base
 * and the lines that override it. */
static int conf_line(void *user, const char *section, const char *name, const char *value)
{
    char qn[64], qs[64];
    int rc;

    (void)log_quote(qs, sizeof(qs), section);
    if (name == NULL) { /* a [section] line (inifile.h): known, even with no key under it */
        static const char *const sections[] = {"spool", "delivery", "tls", "log"};
        for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++)
            if (strcmp(section, sections[i]) == 0)
                return 1;
        if (conf_why[0] == '\0')
            (void)snprintf(conf_why, sizeof(conf_why), "unknown section [%s]", qs);
        return 0;
    }
    (void)log_quote(qn, sizeof(qn), name);
    rc = conf_handler(user, section, name, value);
    if (rc == 1 && value[0] == '\0')
        rc = 0; /* an empty path or address is a mistake, not a default */
    if (rc == 1)
        return 1;
    if (conf_why[0] == '\0')
        (void)snprintf(conf_why, sizeof(conf_why),
                       rc < 0 ? "unknown key '%s' in [%s]"
                              : value[0] == '\0' ? "empty value for '%s' in [%s]" : "bad value for '%s' in [%s]",
                       qn, qs);
    return 0;
}

/* From a file (path) or a string (text), whichever is not NULL. */
static xp_err conf_load(const char *path, const char *text, xp_conf **out, int *err_line)
{
    xp_conf *c = NULL;
    xp_err rc = XP_ERR_NOMEM;
    int r;

    *out = NULL;
    *err_line = 0;
    conf_why[0] = '\0';
    if ((c = calloc(1, sizeof(*c))) == NULL)
        goto out;
    c->max_message_size = 32u << 20;
    c->batch_size = 100;
    c->max_age = 5 * 86400;
    c->retry_min = 60;
    c->retry_max = 3600;
    c->poll_interval = 10;
    c->relay_timeout = 120;
    c->tls_timeout = 30;
    c->starttls = XP_STARTTLS_YES;
    c->relay_auth_in_clear = UTIL_AUTH_CLEAR_LOOPBACK;
    c->relay_verify = 1;
    c->log_level = LOG_LVL_INFO;
    c->group_info_ttl = 300;
    if (path != NULL || text != NULL) {
        /* whole lines: a line longer than inih's buffer is refused by
         * its number, not cut short (common/inifile.h) */
        enum inifile_status ist = inifile_parse(text != NULL ? NULL : path, text, conf_line, c, &r);
        if (ist != INIFILE_OK) {
            *err_line = r;
            if (inifile_line_strerror(ist) != NULL)
                (void)snprintf(conf_why, sizeof(conf_why), "%s", inifile_line_strerror(ist));
            rc = ist == INIFILE_NOMEM ? XP_ERR_NOMEM : XP_ERR_CONFIG;
            goto out;
        }
    }
    if (c->retry_max < c->retry_min)
        c->retry_max = c->retry_min;
    *out = c;
    c = NULL;
    rc = XP_OK;
out:
    xp_conf_free(c);
    return rc;
}

xp_err xp_conf_load(const char *path, xp_conf **out, int *err_line) { return conf_load(path, NULL, out, err_line); }

xp_err xp_conf_load_string(const char *text, xp_conf **out, int *err_line)
{
    if (text == NULL) {
        *out = NULL;
        *err_line = 0;
        return XP_ERR_ARGS;
    }
    return conf_load(NULL, text, out, err_line);
}
