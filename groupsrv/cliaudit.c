/*
 * cliaudit.c: the audit records of the admin commands (cli.h): the key
 * ceremony (ceremony.c) and membership changes (main.c). They append to
 * the log `serve` writes, through the same audit module: every append
 * holds the file's flock and continues the chain from the file's last
 * line, so the server's records and these stay one chain; with [audit]
 * store = db they go to the chain INSTANCE/admin, the server's being
 * INSTANCE. The identity is the operator's login name.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "gsk.h"
#include "log.h"
#include "util.h"
#ifdef GS_HAVE_SERVER
#include "audit.h"
#endif

gs_err cli_record_open(const struct gs_config *cfg, struct cli_record *r, const char *what)
{
    memset(r, 0, sizeof(*r));
    gsk_operator(r->who, sizeof(r->who));
#ifdef GS_HAVE_SERVER
    char dir[4096];
    char *slash;
    audit_err ae;

    if (strcmp(cfg->audit.store, "db") == 0) {
        char chain[GS_AUDIT_CHAIN_MAX + 1];
        (void)snprintf(chain, sizeof(chain), "%s%s", cfg->server.instance, GS_AUDIT_ADMIN_SUFFIX);
        if ((ae = audit_open_db(gs_config_db_location(cfg), chain, &r->log)) != AUDIT_OK)
            return gs_err_set(GS_ERR_IO, "audit table (chain %s): %s (%s is not done without its record)", chain,
                              audit_strerror(ae), what);
        return GS_OK;
    }
    if (util_strlcpy(dir, cfg->audit.path, sizeof(dir)) != UTIL_OK)
        return gs_err_set(GS_ERR_CONFIG, "[audit] path too long");
    if ((slash = strrchr(dir, '/')) != NULL && slash != dir) {
        *slash = '\0';
        (void)util_mkdir_p(dir, 0700);
    }
    errno = 0;
    if ((ae = audit_open(cfg->audit.path, &r->log)) != AUDIT_OK) {
        /* and why (audit_open keeps the errno of what failed): a log
         * left behind by root refuses a command run as the server's user */
        int open_errno = errno;
        char why[1024] = "";

        if (ae == AUDIT_ERR_IO && open_errno != 0)
            audit_open_why(cfg->audit.path, open_errno, why, sizeof(why));
        return gs_err_set(GS_ERR_IO, "audit log %s: %s%s%s (%s is not done without its record)", cfg->audit.path,
                          audit_strerror(ae), why[0] != '\0' ? ": " : "", why, what);
    }
    /* Room for the record, reserved past the end of the file before the
     * change (a full disk opens fine, and fdatasync succeeds on it): else
     * the change would be made and its record then fail. */
    if ((ae = audit_check(r->log)) != AUDIT_OK) {
        audit_close(r->log);
        r->log = NULL;
        return gs_err_set(GS_ERR_IO, "audit log %s: no room for a record (the disk is full?) (%s is not done "
                          "without its record)", cfg->audit.path, what);
    }
    return GS_OK;
#else
    (void)cfg;
    return gs_err_set(GS_ERR_CONFIG, "this build has no audit log (groupsrv/server not built): %s is not done",
                      what);
#endif
}

void cli_record_close(struct cli_record *r)
{
#ifdef GS_HAVE_SERVER
    audit_close(r->log);
    r->log = NULL;
#else
    (void)r;
#endif
}

/* s as a record may carry it: s itself when it is UTF-8 (JSON holds
 * nothing else, and the audit log refuses a record that is not), else a
 * copy in buf with every byte outside printable ASCII shown as '?', as
 * the error lines show arguments. NULL stays NULL. */
static const char *record_text(const char *s, char *buf, size_t cap)
{
    json_t *probe = s != NULL ? json_string(s) : NULL;

    if (s == NULL || probe != NULL) {
        json_decref(probe);
        return s;
    }
    (void)util_strlcpy(buf, s, cap);
    for (unsigned char *p = (unsigned char *)buf; *p != '\0'; p++)
        if (*p < 0x20 || *p >= 0x7f)
            *p = '?';
    return buf;
}

json_t *cli_json_text(const char *s)
{
    char buf[4096];

    return json_string(record_text(s, buf, sizeof(buf)));
}

/* One record: the operator's uid beside the login name (which may come
 * from $SUDO_USER), so that the record says who even where names lie.
 * outcome NULL: the record written before a change (audit_started). */
static gs_err record_write(struct cli_record *r, const char *action, const char *group, long key_version,
                           const char *outcome, json_t *extra)
{
    gs_err err = GS_OK;
#ifdef GS_HAVE_SERVER
    char gbuf[256], obuf[512];

    /* A group name or an error quoting an argument may be any bytes. */
    group = record_text(group, gbuf, sizeof(gbuf));
    outcome = record_text(outcome, obuf, sizeof(obuf));
    if (extra == NULL)
        extra = json_object();
    if (extra != NULL)
        (void)json_object_set_new(extra, "uid", json_integer((json_int_t)getuid()));
    audit_record rec = {.action = action, .identity = r->who, .group = group, .key_version = key_version,
                        .outcome = outcome, .extra = extra};
    audit_err ae = outcome != NULL ? audit_append(r->log, &rec) : audit_started(r->log, &rec);
    if (ae != AUDIT_OK)
        err = gs_err_set(GS_ERR_IO, "audit log: %s", audit_strerror(ae));
#else
    (void)r, (void)action, (void)group, (void)key_version, (void)outcome;
    err = gs_err_set(GS_ERR_CONFIG, "no audit log in this build");
#endif
    json_decref(extra);
    return err;
}

gs_err cli_record_started(struct cli_record *r, const char *action, const char *group, json_t *extra)
{
    char gbuf[256], detail[512];

    if (record_write(r, action, group, -1, NULL, extra) == GS_OK)
        return GS_OK;
    (void)util_strlcpy(detail, gs_err_detail(), sizeof(detail));
    return gs_err_set(GS_ERR_IO, "%s (%s%s%s is not done without its record)", detail, action, group ? " " : "",
                      group ? record_text(group, gbuf, sizeof(gbuf)) : "");
}

gs_err cli_record_write(struct cli_record *r, const char *action, const char *group, const char *outcome,
                        json_t *extra)
{
    return record_write(r, action, group, -1, outcome, extra);
}

/* The failure's record, with err's detail as its outcome; the detail is
 * kept for the error line. */
static int record_failure(struct cli_record *r, const char *action, const char *group, long key_version, gs_err err,
                          json_t *extra)
{
    char detail[512];

    (void)util_strlcpy(detail, gs_err_detail(), sizeof(detail));
    if (record_write(r, action, group, key_version, detail[0] ? detail : gs_strerror(err), extra) != GS_OK)
        log_warn("the refusal could not be recorded in the audit log");
    (void)gs_err_set(err, "%s", detail);
    return fail(err);
}

int cli_record_done(struct cli_record *r, const char *action, const char *group, long key_version, gs_err change,
                    json_t *extra)
{
    return cli_record_done_or_undo(r, action, group, key_version, change, extra, NULL, NULL);
}

int cli_record_done_or_undo(struct cli_record *r, const char *action, const char *group, long key_version,
                            gs_err change, json_t *extra, gs_err (*undo)(void *arg), void *arg)
{
    char detail[512];
    gs_err err;
    int rc;

    if (change != GS_OK) {
        rc = record_failure(r, action, group, key_version, change, extra);
        cli_record_close(r);
        return rc;
    }
    err = record_write(r, action, group, key_version, "ok", extra);
    cli_record_close(r);
    if (err == GS_OK)
        return 0;
    (void)util_strlcpy(detail, gs_err_detail(), sizeof(detail));
    if (undo != NULL && undo(arg) == GS_OK)
        return fail(gs_err_set(err, "%s%s%s was undone: its audit record could not be written: %s", action,
                               group ? " " : "", group ? group : "", detail));
    if (undo != NULL)
        log_error("the change could not be undone detail=\"%s\"", log_qs(gs_err_detail()));
    return fail(gs_err_set(err, "%s%s%s was done, but its audit record was not written: %s", action,
                           group ? " " : "", group ? group : "", detail));
}

int cli_record_failure(struct cli_record *r, const char *action, const char *group, gs_err err, json_t *extra)
{
    return record_failure(r, action, group, -1, err, extra);
}
