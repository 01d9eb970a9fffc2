/*
 * gm_ceremony.c: the key ceremony on a member's own token (option C):
 * `groupmail keys transport-key` and `keys import-group-key`. The files
 * and token steps are gsk/'s, shared with groupsrv; here: the member's
 * trust (the group CA, as for fetch-cert), which keys a member takes (the
 * group key versions, decrypt only), and the member's own record of each
 * ceremony, <store>/ceremony.jsonl: JSON lines, mode 0600, each with
 * "prev", the SHA-256 of the line before (`groupsrv audit verify --file`
 * checks it).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "gm.h"
#include "gsk.h"
#include "util.h"

#define RECORD_LOG_MAX (8u * 1024u * 1024u)

/* ---- the member's ceremony record ------------------------------------------------ */

/* The hash chain's link: SHA-256 of the last line of the file (64 zeros
 * for an empty one). The file is the member's own, small, read whole. */
static int last_line_hash(int fd, char hex[65])
{
    unsigned char *buf = NULL, md[SHA256_DIGEST_LENGTH];
    size_t len = 0, end, start;

    memset(hex, '0', 64);
    hex[64] = '\0';
    if (util_read_fd(fd, RECORD_LOG_MAX, &buf, &len) != UTIL_OK)
        return -1;
    if (len == 0) {
        free(buf);
        return 0;
    }
    if (buf[len - 1] != '\n') { /* a torn line: refuse to chain to it */
        free(buf);
        return -1;
    }
    end = len - 1;
    for (start = end; start > 0 && buf[start - 1] != '\n'; start--)
        ;
    SHA256(buf + start, end - start, md);
    util_hex(md, sizeof(md), hex);
    free(buf);
    return 0;
}

static int record(const gm_config *c, const char *action, json_t *fields)
{
    char *path = gm_store_path(c, NULL, "ceremony.jsonl"), prev[65], when[32], who[96], *line = NULL;
    time_t t = time(NULL);
    json_t *o = NULL;
    struct tm tm;
    int fd = -1, rc = -1;

    errno = 0;
    if (path == NULL || fields == NULL)
        goto out;
    gsk_operator(who, sizeof(who));
    if (gmtime_r(&t, &tm) == NULL || strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        goto out;
    if ((fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600)) < 0 || flock(fd, LOCK_EX) != 0 ||
        last_line_hash(fd, prev) != 0)
        goto out;
    /* The same fields as the server's audit lines, then the ceremony's. */
    if ((o = json_pack("{s:s,s:s,s:s}", "time", when, "action", action, "identity", who)) == NULL ||
        json_object_update(o, fields) != 0 || json_object_set_new(o, "prev", json_string(prev)) != 0 ||
        (line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII)) == NULL)
        goto out;
    size_t n = strlen(line);
    line[n] = '\n'; /* the NUL becomes the newline */
    if (write(fd, line, n + 1) != (ssize_t)(n + 1) || fsync(fd) != 0)
        goto out;
    rc = 0;
out:
    if (rc != 0)
        gm_err("cannot write the ceremony record %s: %s", path != NULL ? path : "(store)",
               errno ? strerror(errno) : "malformed");
    if (fd >= 0)
        close(fd);
    free(line);
    free(path);
    json_decref(o);
    json_decref(fields);
    return rc;
}

/* "label (serial N)" of the token, and its label alone (for URIs). */
static void token_desc(hsm_ctx *hsm, char *buf, size_t cap, char label[33])
{
    hsm_token_info ti;

    if (hsm_token_info_get(hsm, &ti) == HSM_OK) {
        snprintf(buf, cap, "%s (serial %s)", ti.label, ti.serial);
        memcpy(label, ti.label, sizeof(ti.label));
    } else {
        snprintf(buf, cap, "?");
        label[0] = '\0';
    }
}

/* Takes a key pair this run made off the token again. */
static void destroy_label(hsm_ctx *hsm, const char *label)
{
    static const hsm_key_class classes[] = {HSM_CLASS_PRIVATE, HSM_CLASS_PUBLIC};

    for (size_t i = 0; i < GS_ARRAY_LEN(classes); i++) {
        hsm_key *k = NULL;
        if (hsm_key_find(hsm, label, classes[i], &k) == HSM_OK)
            (void)hsm_key_destroy(hsm, k);
        hsm_key_free(k);
    }
}

static int need_token(const gm_config *c)
{
    if (c->hsm_token == NULL || strncmp(c->hsm_token, "pkcs11:", 7) != 0) {
        gm_err("missing --token pkcs11:URI (your own token)");
        return -1;
    }
    return 0;
}

/* ---- keys transport-key ------------------------------------------------------------ */

/* Transport keys already on the token (both halves carry the label: each
 * named once). A member's ceremony that stopped between `keys
 * transport-key` and the import (a crash, a file never sent) leaves one,
 * and the member has no `check` to tell them: with the token's user PIN
 * a .gsk file made for it gives the group key in the clear to any PKCS#11
 * program (SECURITY.md). Said when the next one is made. */
struct transport_left {
    char labels[16][64];
    size_t n;
};

static int transport_left_cb(void *arg, hsm_ctx *hsm, hsm_key *key)
{
    struct transport_left *t = arg;
    const char *label = hsm_key_label(key);
    char cmd[256];

    (void)hsm;
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->labels[i], label) == 0)
            return 0;
    if (t->n == sizeof(t->labels) / sizeof(t->labels[0]))
        return 0;
    (void)util_strlcpy(t->labels[t->n++], label, sizeof(t->labels[0]));
    /* the token's label, anyone's with the user PIN: shown only when it
     * is ours in form (the prefix and hex), never raw bytes on a terminal */
    bool plain = strlen(label) < sizeof(t->labels[0]);
    for (const char *p = label + strlen(GSK_TRANSPORT_PREFIX); plain && *p != '\0'; p++)
        plain = (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f');
    if (!plain || gsk_transport_delete_cmd(label, false, cmd, sizeof(cmd)) != GSK_OK) {
        gm_err("warning: a transport key from an earlier ceremony is still on the token (its label is not one "
               "groupmail makes; pkcs11-tool --list-objects names it): delete both halves once no file made for it "
               "is still to be imported");
        return 0;
    }
    gm_err("warning: transport key %s from an earlier ceremony is still on the token (an import that did not finish, "
           "or --keep-transport-key): with this token's user PIN a .gsk file made for it gives the group key in the "
           "clear to any PKCS#11 program; once no file made for it is still to be imported, delete both halves: %s",
           label, cmd);
    return 0;
}

int gm_cmd_keys_transport(gm_config *c)
{
    hsm_ctx *hsm = NULL;
    char desc[96], tlabel[33], fp[65], spoken[80], label[64] = "", *pem = NULL;
    util_out *uo = NULL;
    util_out_written written;
    FILE *info;
    gsk_err ge;
    int rc = GM_EXIT_USAGE;

    if (need_token(c) != 0)
        return GM_EXIT_USAGE;
    if (c->out == NULL) {
        gm_err("missing --out FILE (the transport key file to give the group's administrator)");
        return GM_EXIT_USAGE;
    }
    rc = GM_EXIT_ERROR;
    if (gm_hsm_open_token(c, c->hsm_token, &hsm) != 0)
        goto out;
    token_desc(hsm, desc, sizeof(desc), tlabel);
    struct transport_left left = {.n = 0};
    if (hsm_key_list(hsm, GSK_TRANSPORT_PREFIX, transport_left_cb, &left) != HSM_OK)
        gm_err("warning: the token's transport keys could not be listed (%s)", hsm_last_error_detail());
    /* --out opened before the key is made: a named pipe's open waits for
     * its reader, and a command stopped there (Ctrl-C) left a new key on
     * the token that nothing had taken. */
    if (gm_out_open(c, 0644, &uo) != GM_EXIT_OK)
        goto out;
    if ((ge = gsk_transport_make(hsm, desc, &pem, fp, label, sizeof(label))) != GSK_OK) {
        gm_err("transport key: %s", gsk_err_detail());
        goto out;
    }
    /* Written as every --out is: a named pipe or /dev/stdout is written
     * to, never renamed over (as root, a regular file in place of
     * /dev/stdout or /dev/null). */
    rc = gm_out_put(c, uo, pem, strlen(pem), &written);
    uo = NULL;
    if (rc != GM_EXIT_OK) {
        destroy_label(hsm, label);
        goto out;
    }
    rc = GM_EXIT_ERROR;
    if (record(c, "transport-key",
               json_pack("{s:s,s:s,s:s}", "token", desc, "transport_key_sha256", fp, "label", label)) != 0) {
        destroy_label(hsm, label);
        /* a stream's copy is gone; only the file written is taken back */
        util_out_take_back(c->out, &written);
        goto out;
    }
    gsk_fingerprint_spoken(fp, spoken);
    info = util_out_info_stream(written.kind); /* standard output holds only the key */
    fprintf(info, "transport key %s made on token %s\nsha256 %s\n", label, desc, spoken);
    fprintf(info, "wrote %s: give it to the group's administrator and read them the fingerprint over another channel\n",
            c->out);
    rc = GM_EXIT_OK;
out:
    util_out_abort(uo);
    free(pem);
    hsm_close(hsm);
    return rc;
}

/* ---- keys import-group-key --------------------------------------------------------- */

static int exit_for(gsk_err ge)
{
    switch (ge) {
    case GSK_ERR_FORMAT:
    case GSK_ERR_SIGNATURE:
    case GSK_ERR_SIGNER:
        return GM_EXIT_BAD_MESSAGE;
    default:
        return GM_EXIT_ERROR;
    }
}

/* Does the canonical comma list name the method? */
static bool methods_has(const char *list, const char *method)
{
    size_t n = strlen(method);

    for (const char *p = list; p != NULL && *p != '\0'; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
        if (strncmp(p, method, n) == 0 && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

/* A refused (or failed) import, in the member's record too: what is known
 * of the file (m may be NULL: it did not verify) and why. */
static void record_refusal(const gm_config *c, const gsk_manifest *m, bool token_gone, const char *why)
{
    char outcome[640];
    json_t *f;

    /* A token that went away refused nothing. */
    (void)snprintf(outcome, sizeof(outcome), "%s: %s", token_gone ? "failed" : "refused", why);
    f = json_pack("{s:s,s:s}", "file", c->in, "outcome", outcome);
    if (f != NULL && m != NULL) {
        json_object_set_new(f, "group", json_string(m->group.name));
        json_object_set_new(f, "ceremony", json_string(m->ceremony));
        json_object_set_new(f, "transport_key_sha256", json_string(m->transport_sha256));
        json_object_set_new(f, "exported_by", json_string(m->exported_by));
    }
    (void)record(c, "import-group-key", f);
}

/* The ceremony's last step, once the keys are imported and recorded: the
 * transport key they came through is deleted, both halves (SECURITY.md,
 * "The receiving token's user PIN and the file": while it and a file made
 * for it both exist, your token's PIN gives the file's keys in the clear
 * to any PKCS#11 program). --keep-transport-key keeps it for another file
 * made for it. Recorded as transport-key-destroy. GM_EXIT_OK, or
 * GM_EXIT_TRANSPORT_LEFT after the line saying how to delete it (the keys
 * stay imported), or GM_EXIT_ERROR when it went but its record could not
 * be written. */
static int transport_done(const gm_config *c, hsm_ctx *hsm, const gsk_manifest *m, const char *desc)
{
    hsm_key *t = NULL;
    char label[128] = "", cmd[320];
    bool public_only = false;
    gsk_err ge;
    int rc = GM_EXIT_OK;

    if ((ge = gsk_transport_find(hsm, m->transport_sha256, &t)) == GSK_OK) {
        /* Token labels are at most 127 bytes (hsm): a longer one is a bug. */
        if (util_strlcpy(label, hsm_key_label(t), sizeof(label)) != UTIL_OK) {
            gm_err("the transport key's label is too long");
            rc = GM_EXIT_ERROR;
            goto out;
        }
        if (c->keep_transport_key) {
            printf("transport key %s kept (--keep-transport-key): delete both halves once the last file made for "
                   "it is imported (import it without --keep-transport-key)\n",
                   label);
            goto out;
        }
        ge = gsk_transport_destroy(hsm, t, &public_only);
    }
    if (ge != GSK_OK) {
        char outcome[600];
        (void)snprintf(outcome, sizeof(outcome), "failed: %s", gsk_err_detail());
        (void)record(c, "transport-key-destroy",
                     json_pack("{s:s,s:s,s:s,s:s,s:s}", "ceremony", m->ceremony, "token", desc,
                               "transport_key_sha256", m->transport_sha256, "label", label, "outcome", outcome));
        /* The instruction before the token's reason, which may be long. */
        if (gsk_transport_delete_cmd(label[0] ? label : GSK_TRANSPORT_PREFIX "...", public_only, cmd,
                                     sizeof(cmd)) != GSK_OK)
            cmd[0] = '\0'; /* not reached: a label (checked above) is at most 127 bytes */
        /* Only the public half left (it unwraps nothing): say so, not to
         * delete a private key already gone. */
        if (public_only)
            gm_err("the group key is imported and its transport key %s's private half deleted, but its public "
                   "half could not be deleted; delete it now (%s: it unwraps nothing, but is left over): %s",
                   label, cmd, gsk_err_detail());
        else
            gm_err("the group key is imported, but its transport key %s could not be deleted; delete it now "
                   "(%s: with your token's PIN, a file made for it gives its keys in the clear): %s",
                   label[0] ? label : "(not found)", cmd, gsk_err_detail());
        rc = GM_EXIT_TRANSPORT_LEFT;
        goto out;
    }
    if (record(c, "transport-key-destroy",
               json_pack("{s:s,s:s,s:s,s:s,s:s}", "ceremony", m->ceremony, "token", desc, "transport_key_sha256",
                         m->transport_sha256, "label", label, "outcome", "ok")) != 0) {
        gm_err("transport key %s was deleted, but its record was not written", label);
        rc = GM_EXIT_ERROR;
        goto out;
    }
    printf("transport key %s deleted (both halves): for a later file make a new one (keys transport-key)\n", label);
out:
    hsm_key_free(t);
    return rc;
}

int gm_cmd_keys_import(gm_config *c)
{
    const char *ca_file = c->group_ca != NULL ? c->group_ca : c->cacert;
    unsigned char *file = NULL;
    size_t flen = 0, n = 0;
    X509 *ca = NULL;
    gsk_manifest *m = NULL;
    gsk_import_item *items = NULL;
    hsm_key **refs = NULL;
    hsm_ctx *hsm = NULL;
    json_t *versions = NULL, *labels = NULL;
    char desc[96], tlabel[33], tlabel_uri[3 * 32 + 1], klabel_uri[3 * sizeof(((gsk_key *)0)->label) + 1];
    gsk_err ge;
    int ur, rc = GM_EXIT_USAGE;

    if (need_token(c) != 0)
        return rc;
    if (c->in == NULL || ca_file == NULL) {
        gm_err("missing %s", c->in == NULL ? "--in FILE.gsk" : "--group-ca FILE (the CA of the group server, "
                                                               "which signed the file)");
        return rc;
    }
    rc = GM_EXIT_ERROR;
    ur = gm_in_is_stdin(c->in) ? util_read_fd(STDIN_FILENO, GSK_FILE_MAX, &file, &flen)
                               : util_read_file(c->in, GSK_FILE_MAX, &file, &flen);
    if (ur != UTIL_OK) {
        gm_err("cannot read %s: %s", c->in, util_read_why(ur, errno)); /* it gave no reason ("Is a directory") */
        goto out;
    }
    if ((ca = gm_read_cert_file(ca_file)) == NULL)
        goto out;
    if ((ge = gsk_shipment_read(file, flen, ca, &m)) != GSK_OK) {
        gm_err("%s refused: %s", c->in, gsk_err_detail());
        record_refusal(c, NULL, false, gsk_err_detail());
        rc = exit_for(ge);
        goto out;
    }
    /* A member needs the group key versions only; the group's secret and
     * rejection keys are for servers. */
    if ((items = calloc(m->n_entries, sizeof(*items))) == NULL || (refs = calloc(m->n_entries, sizeof(*refs))) == NULL)
        goto out;
    for (size_t i = 0; i < m->n_entries; i++) {
        if (m->entries[i].kind != GSK_KIND_GROUP)
            continue;
        items[n].index = i;
        items[n].usage = HSM_USE_DECRYPT; /* local-key decrypts with C_Decrypt */
        n++;
    }
    if (n == 0) {
        gm_err("%s holds no group key version", c->in);
        record_refusal(c, m, false, "the file holds no group key version");
        goto out;
    }
    /* Only a group that allows local-key rotates its key when a member
     * is removed (no server can take a copy back from a token): a copy of
     * another group's key would keep reading the group's mail after its
     * holder's removal. A file made for a member of such a group is the
     * sending side's mistake, refused before the token is touched. */
    if (!methods_has(m->group.methods, "local-key")) {
        gm_err("%s refused: group %s does not allow local-key (its key is not rotated when a member is removed, so "
               "a copy on a member's token would outlive the removal): ask its administrator",
               c->in, m->group.name);
        record_refusal(c, m, false, "the group does not allow local-key");
        goto out;
    }
    if (gm_hsm_open_token(c, c->hsm_token, &hsm) != 0)
        goto out;
    token_desc(hsm, desc, sizeof(desc), tlabel);
    if ((ge = gsk_import(hsm, m, items, n, refs)) != GSK_OK) {
        /* A token that went away refused nothing. */
        gm_err(ge == GSK_ERR_TOKEN ? "%s: %s" : "%s refused: %s", c->in, gsk_err_detail());
        record_refusal(c, m, ge == GSK_ERR_TOKEN, gsk_err_detail());
        rc = exit_for(ge);
        goto out;
    }
    versions = json_array();
    labels = json_array();
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(versions, json_integer(m->entries[items[i].index].version));
        json_array_append_new(labels, json_string(m->entries[items[i].index].label));
    }
    if (record(c, "import-group-key",
               json_pack("{s:s,s:s,s:s,s:s,s:O,s:O,s:s,s:b,s:s}", "group", m->group.name, "ceremony", m->ceremony,
                         "token", desc, "transport_key_sha256", m->transport_sha256, "key_versions", versions,
                         "labels", labels, "exported_by", m->exported_by, "keep_transport_key",
                         c->keep_transport_key, "outcome", "ok")) != 0) {
        /* No copy without its record. */
        for (size_t i = 0; i < n; i++)
            destroy_label(hsm, m->entries[items[i].index].label);
        goto out;
    }
    printf("group %s: imported on token %s (ceremony %s), each key passed its decryption test\n", m->group.name, desc,
           m->ceremony);
    /* Ready to paste: the token's label percent-encoded (a card's label
     * "Alice card" as token=Alice%20card), and so the key's: the file
     * names it, and a ';' or '\'' in it would otherwise make the line name
     * another key, or end the shell's quotes. */
    util_uri_escape_value(tlabel, tlabel_uri, sizeof(tlabel_uri));
    for (size_t i = 0; i < n; i++) {
        const gsk_key *k = &m->entries[items[i].index];
        util_uri_escape_label(k->label, klabel_uri, sizeof(klabel_uri));
        printf("  v%u  --group-key 'pkcs11:token=%s;object=%s;type=private'\n", k->version, tlabel_uri,
               klabel_uri);
    }
    if (n < m->n_entries)
        printf("(%zu server keys in the file were not imported: secret and rejection keys stay on servers)\n",
               m->n_entries - n);
    rc = transport_done(c, hsm, m, desc);
out:
    for (size_t i = 0; refs != NULL && i < n; i++)
        hsm_key_free(refs[i]);
    free(refs);
    free(items);
    json_decref(versions);
    json_decref(labels);
    gsk_manifest_free(m);
    X509_free(ca);
    free(file);
    hsm_close(hsm);
    return rc;
}
