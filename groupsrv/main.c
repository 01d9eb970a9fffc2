/*
 * main.c: the groupsrv program. Admin subcommands on the token and the
 * database (see docs/groupsrv.1.md), plus `serve` and `audit`, which are
 * dispatched to groupsrv/server/ when it is built in (GS_HAVE_SERVER).
 *
 * Every failure is one line on stderr ("groupsrv: what is wrong") and an
 * exit code: 0 ok, 1 failed / check found problems, 2 usage, 3 not found
 * or duplicate, 4 token or PIN, 5 configuration (6: audit verify's torn
 * tail; 7: an import made whose transport key the token did not delete).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* setresuid, setresgid, pipe2: check's [server] user row */
#endif
#include <arpa/inet.h>
#include <dirent.h>
#include <grp.h>
#include <pwd.h>
#include <linux/capability.h>
#include <netdb.h>
#include <netinet/in.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ca.h"
#include "ceremony.h"
#include "audit.h"
#include "cli.h"
#include "config.h"
#include "groups.h"
#include "gsk.h"
#include "gs_version.h"
#include "gs_error.h"
#include "hsm.h"
#include "log.h"
#include "mailaddr.h"
#include "store.h"
#include "tlschain.h"
#include "tlscmd.h"
#include "util.h"
#ifdef GS_HAVE_SERVER
#include "serve.h"
#endif

#define CERT_FILE_MAX 65536

static const char usage_text[] =
    "usage: groupsrv [-c FILE] [-v] COMMAND ...\n"
    "  ca init [--key rsa:3072|ec:p256 | --use-key pkcs11:URI] [--subject CN] [--days N] [--replicable]\n"
    "  ca renew-cert [--days N]\n"
    "  ca show\n"
    "  ca export --to TRANSPORT.pem --out FILE.gsk\n"
    "  ca import --in FILE.gsk [--ca CA.pem] [--keep-transport-key]\n"
    "  group create NAME --address LIST@DOMAIN [--key rsa:3072|ec:p256 | --use-key pkcs11:URI]\n"
    "               [--methods tls,recipient-key,group-secret,membership-cert,local-key] [--oaep-only]\n"
    "               [--wrap pkcs1v15|oaep] [--replicable]\n"
    "  group set NAME --wrap pkcs1v15|oaep\n"
    "  group rotate NAME [--take-over]\n"
    "  group retire NAME --before VERSION\n"
    "  group import-cert NAME --cert FILE [--version N]\n"
    "  group renew-cert NAME [--version N]\n"
    "  group list\n"
    "  group show NAME [--cert | --pubkey]\n"
    "  group export NAME [--version N | --all] [--secret-version N] --to TRANSPORT.pem --out FILE.gsk\n"
    "  group import --in FILE.gsk [--ca CA.pem] [--keep-transport-key]\n"
    "  token transport-key --out TRANSPORT.pem\n"
    "  secret rotate NAME\n"
    "  secret retire NAME --before VERSION\n"
    "  secret record NAME --version N --kek-id HEX\n"
    "  member add NAME EMAIL (--cert FILE | --issue-cert --out DIR) [--role member|exploder|admin]\n"
    "             [--wrap pkcs1v15|oaep]\n"
    "  member set NAME EMAIL [--wrap pkcs1v15|oaep|default] [--role member|exploder|admin]\n"
    "             [--cert FILE | --issue-cert --out DIR]\n"
    "  member remove NAME EMAIL\n"
    "  member list NAME\n"
    "  check\n"
    "  tls init --dns NAME --out FILE [--key ec:p256|ec:p384 | --renew] [--subject CN] [--label LABEL] [--days N]\n"
    "  serve\n"
    "  audit verify [--file PATH] [--no-follow] [--since ARCHIVE]\n"
    "  audit rotate [--file PATH]\n"
    "config: -c FILE, else $GROUPSRV_CONF, else " GS_CONFIG_DEFAULT_PATH "\n";

/* ---- argument handling ------------------------------------------------------ */

/* Every error is exactly one line on stderr, "groupsrv: what is wrong":
 * control characters that came from arguments or files (a newline in an
 * argument) are shown as '?' so they cannot start a second line. */
static bool error_lines_logged;

void error_lines_to_log(void)
{
    error_lines_logged = true;
}

static void plain_error_line(const char *msg, const char *suffix)
{
    fputs("groupsrv: ", stderr);
    for (const unsigned char *p = (const unsigned char *)msg; *p; p++)
        fputc(*p < 0x20 || *p == 0x7f ? '?' : *p, stderr);
    fputs(suffix, stderr);
    fputc('\n', stderr);
}

void error_line(const char *msg, const char *suffix)
{
    if (error_lines_logged) {
        /* serve: its stderr is the diagnostic log, whose every line is a
         * key=value record (docs/operations.md); log_qs escapes what
         * came from arguments or files */
        log_emit(LOG_LVL_ERROR, "serve", "not started err=\"%s%s\"", log_qs(msg), log_qs(suffix));
        return;
    }
    plain_error_line(msg, suffix);
}

int usage_error(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* for the person who typed the command line, also serve's */
    plain_error_line(msg, " (see groupsrv --help)");
    return EXIT_USAGE;
}

/* Splits argv into positionals and the options in defs; unknown options,
 * missing values and repeated options are usage errors (returns 2). */
int parse_args(int argc, char **argv, const struct opt_def *defs, size_t ndefs, struct args *a)
{
    memset(a, 0, sizeof(*a));
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        if (strncmp(s, "--", 2) == 0) {
            const char *eq = strchr(s, '=');
            size_t nlen = eq ? (size_t)(eq - s) : strlen(s);
            const struct opt_def *d = NULL;
            for (size_t k = 0; k < ndefs; k++)
                if (strlen(defs[k].name) == nlen && strncmp(defs[k].name, s, nlen) == 0)
                    d = &defs[k];
            if (d == NULL)
                return usage_error("unknown option %s", s);
            for (size_t k = 0; k < a->nopt; k++)
                if (strcmp(a->opt_name[k], d->name) == 0)
                    return usage_error("option %s given twice", d->name);
            if (a->nopt == MAX_ARGS)
                return usage_error("too many options%s", "");
            a->opt_name[a->nopt] = d->name;
            if (d->has_arg) {
                if (eq)
                    a->opt_val[a->nopt] = eq + 1;
                else if (i + 1 < argc)
                    a->opt_val[a->nopt] = argv[++i];
                else
                    return usage_error("option %s needs a value", d->name);
            } else if (eq) {
                return usage_error("option %s takes no value", d->name);
            } else {
                a->opt_val[a->nopt] = "";
            }
            a->nopt++;
        } else {
            if (a->npos == MAX_ARGS)
                return usage_error("too many arguments%s", "");
            a->pos[a->npos++] = s;
        }
    }
    return 0;
}

/* Is word one of the NULL-terminated words? */
static bool one_of(const char *word, const char *const *words)
{
    for (; *words != NULL; words++)
        if (strcmp(word, *words) == 0)
            return true;
    return false;
}

const char *opt(const struct args *a, const char *name)
{
    for (size_t k = 0; k < a->nopt; k++)
        if (strcmp(a->opt_name[k], name) == 0)
            return a->opt_val[k];
    return NULL;
}

int fail(gs_err err)
{
    const char *d = gs_err_detail();
    error_line(d && d[0] ? d : gs_strerror(err), "");
    return gs_err_exit_code(err);
}

static gs_err out_err(const char *path, int ur)
{
    if (ur == UTIL_OUT_E_CREATE || ur == UTIL_OUT_E_OPEN || ur == UTIL_OUT_E_STAGE || ur == UTIL_OUT_E_WRITE)
        return gs_err_set(GS_ERR_IO, "cannot write %s: %s (%s)", path, util_out_strerror(ur), strerror(errno));
    return gs_err_set(GS_ERR_IO, "cannot write %s: %s", path, util_out_strerror(ur));
}

gs_err out_open(const char *path, mode_t mode, util_out **o)
{
    int ur = util_out_open(path, mode, UTIL_OUT_MEMORY, o); /* small: staged in memory, never in /tmp */

    return ur == UTIL_OUT_OK ? GS_OK : out_err(path, ur);
}

gs_err out_commit(util_out *o, const char *path, const void *buf, size_t len, util_out_written *w)
{
    int ur;

    if (w != NULL)
        memset(w, 0, sizeof(*w));
    if (len > 0 && fwrite(buf, 1, len, util_out_fp(o)) != len) {
        int e = errno;

        util_out_abort(o);
        errno = e;
        return out_err(path, UTIL_OUT_E_WRITE);
    }
    ur = util_out_commit(o, w);
    return ur == UTIL_OUT_OK ? GS_OK : out_err(path, ur);
}

gs_err write_out(const char *path, const void *buf, size_t len, mode_t mode, util_out_written *w)
{
    util_out *o = NULL;
    gs_err err;

    if (w != NULL)
        memset(w, 0, sizeof(*w));
    if ((err = out_open(path, mode, &o)) != GS_OK)
        return err;
    return out_commit(o, path, buf, len, w);
}

FILE *info_stream(const char *path) { return util_out_info_stream(util_out_kind_of(path)); }

/* --use-key with a pin-value: exit 1, the URI not shown (the database
 * would record it, and an error line would show the PIN). */
static int refuse_uri_pin(const char *cmd)
{
    return fail(gs_err_set(GS_ERR_ARGS, "%s: the --use-key URI carries a PIN (pin-value; not shown): the PIN comes "
                           "from [hsm] pin_source only", cmd));
}

/* --use-key with a pin-source: exit 1. The token is logged in once, with
 * [hsm] pin_source, for every key on it: a PIN source of the key's own
 * would be ignored (a key adopted with one that named another PIN, or a
 * file since deleted, would seem to work), and the database would record
 * the file's path. */
static int refuse_uri_pin_source(const char *cmd)
{
    return fail(gs_err_set(GS_ERR_ARGS, "%s: the --use-key URI names a PIN source (pin-source), which groupsrv "
                           "does not read: the PIN comes from [hsm] pin_source only; drop pin-source= (or pinfile=, "
                           "its older name) from the URI",
                           cmd));
}

/* --use-key with a space, a label's UTF-8 or another byte RFC 7512 wants
 * percent-encoded: exit 1 with the encoded URI to give instead. p11-kit
 * would drop the space and look for another key, and the database would
 * record (and every output show) the URI as typed. */
static int refuse_uri_unescaped(const char *cmd, const char *uri)
{
    char enc[1024];

    return fail(gs_err_set(GS_ERR_ARGS,
                           "%s: the --use-key URI has bytes a PKCS#11 URI must percent-encode (RFC 7512: spaces, "
                           "non-ASCII, quotes): give --use-key '%s'",
                           cmd, util_uri_escape_loose(uri, enc, sizeof(enc))));
}

/* --use-key that is not a pkcs11: URI (a bare label "eng key"): the
 * refusal gs_ca_init_ex and group create give, before the database is
 * made and not as a URI to percent-encode. */
static int use_key_refusal(const char *cmd, const char *uri)
{
    if (uri == NULL)
        return 0;
    if (util_uri_has_pin_value(uri))
        return refuse_uri_pin(cmd);
    if (util_uri_has_pin_source(uri))
        return refuse_uri_pin_source(cmd);
    if (strncmp(uri, "pkcs11:", 7) != 0)
        return fail(gs_err_set(GS_ERR_ARGS, "%s: --use-key needs a pkcs11: URI of a private key", cmd));
    if (util_uri_needs_escape(uri, 1))
        return refuse_uri_unescaped(cmd, uri);
    return 0;
}

/* ---- shared set-up ------------------------------------------------------------- */

static void env_close(struct env *e)
{
    gs_ca_free(e->ca);
    hsm_close(e->hsm);
    gs_store_close(e->st);
    e->ca = NULL;
    e->hsm = NULL;
    e->st = NULL;
}

gs_err env_open(struct env *e, unsigned need)
{
    gs_err err = GS_OK;
    /* Creating the database (ca init): the token first, so that a wrong
     * PIN or an absent token leaves no empty database behind. */
    if ((need & NEED_DB_CREATE) && (need & NEED_TOKEN) && e->hsm == NULL) {
        err = gs_hsm_open(e->cfg, &e->hsm);
        if (err)
            return err;
    }
    if ((need & NEED_DB_CREATE) && e->cfg->db.path != NULL) {
        /* The database's directory: created private if absent. */
        char dir[4096];
        char *slash;
        if (util_strlcpy(dir, e->cfg->db.path, sizeof(dir)) != UTIL_OK)
            return gs_err_set(GS_ERR_CONFIG, "[db] path too long");
        slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = '\0';
            if (util_mkdir_p(dir, 0700) != UTIL_OK)
                return gs_err_set(GS_ERR_IO, "cannot create directory %s: %s", dir, strerror(errno));
        }
    }
    if (need & (NEED_DB | NEED_DB_CREATE | NEED_DB_RO)) {
        unsigned fl = (need & NEED_DB_CREATE) ? GS_STORE_CREATE : 0;
        if (need & NEED_DB_RO)
            fl |= GS_STORE_READONLY;
        err = gs_store_open(gs_config_db_location(e->cfg), fl, &e->st);
        if (err)
            return err;
    }
    if ((need & (NEED_TOKEN | NEED_CA)) && e->hsm == NULL) {
        err = gs_hsm_open(e->cfg, &e->hsm);
        if (err)
            return err;
    }
    if ((need & NEED_CA) && e->ca == NULL) {
        err = gs_ca_load(e->st, e->hsm, &e->ca);
        if (!err)
            err = gs_ca_check_key(e->ca, e->hsm);
    }
    return err;
}

gs_err read_cert_file(const char *path, X509 **out)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    gs_err err;
    int rc = util_read_file(path, CERT_FILE_MAX, &buf, &len), e = errno;
    *out = NULL;
    if (rc != UTIL_OK)
        return gs_err_set(rc == UTIL_E_NOTFOUND ? GS_ERR_NOT_FOUND : GS_ERR_IO, "cannot read %s: %s", path,
                          util_read_why(rc, e));
    err = gs_cert_parse(buf, len, out);
    if (err)
        err = gs_err_set(err, "%s: %s", path, gs_err_detail());
    free(buf);
    return err;
}

static void print_time(FILE *f, int64_t t)
{
    char buf[32];
    time_t tt = (time_t)t;
    struct tm tm;
    if (gmtime_r(&tt, &tm) && strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm))
        fputs(buf, f);
    else
        fputs("?", f);
}

/* ---- key policy, as the commands show it -------------------------------------------- */

/* Appends ", word" (or "word" first) to buf; false when it is full. */
static bool append_word(char *buf, size_t n, size_t *used, const char *word, size_t wlen)
{
    int w = snprintf(buf + *used, n - *used, "%s%.*s", *used ? ", " : "", (int)wlen, word);

    if (w < 0 || (size_t)w >= n - *used)
        return false;
    *used += (size_t)w;
    return true;
}

/* The hashes of a mask of (1u << HSM_OAEP_SHA1 / _SHA256) bits, as
 * "SHA-1, SHA-256", or "-" for none: the OAEP hashes a key takes
 * (hsm_key_probe_oaep), or its ECDH's X9.63 KDFs (hsm_probe_ecdh_kdf). */
static void hashes_text(unsigned mask, char *buf, size_t n)
{
    size_t used = 0;

    buf[0] = '\0';
    if (mask & (1u << HSM_OAEP_SHA1))
        (void)append_word(buf, n, &used, "SHA-1", 5);
    if (mask & (1u << HSM_OAEP_SHA256))
        (void)append_word(buf, n, &used, "SHA-256", 7);
    if (used == 0)
        (void)util_strlcpy(buf, "-", n);
}

/* "none", or the names of a group's accepted weakenings (group level and
 * those of key version `weak`, a comma list), comma separated. */
static void weakenings_line(const gs_store_group *g, const char *weak, char *buf, size_t n)
{
    const char *names[8];
    gs_policy pol;
    size_t k, used = 0;

    buf[0] = '\0';
    if (gs_policy_parse(g->policy, &pol) != GS_OK) {
        (void)util_strlcpy(buf, "(unreadable policy)", n);
        return;
    }
    k = gs_policy_weakenings(&pol, g->methods, g->allow_pkcs1v15, names, GS_ARRAY_LEN(names));
    for (size_t i = 0; i < k; i++)
        if (!append_word(buf, n, &used, names[i], strlen(names[i])))
            return;
    for (const char *p = weak; p != NULL && *p != '\0';) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (!append_word(buf, n, &used, p, len))
            return;
        p = end ? end + 1 : p + len;
    }
    if (buf[0] == '\0')
        (void)util_strlcpy(buf, "none", n);
}

/* The policy lines `group create` and `group show` print. `group show`
 * aligns them with its other fields (in_table); `group create` prints them
 * alone, with one space after the colon, as the documents quote them
 * ("weakenings: none"), so that a script's grep finds them. */
static void print_group_policy(const gs_store_group *g, const char *weak, bool in_table)
{
    const int width = in_table ? 16 : 0;
    char line[512];
    gs_policy pol;

    if (gs_policy_parse(g->policy, &pol) != GS_OK)
        return;
    printf("%-*srewrap on the %s; secret keys %s; rejection key %s\n", width, "key policy: ",
           pol.rewrap == GS_REWRAP_SOFTWARE ? "host (software re-wrap: content keys in locked server memory)"
                                            : "token (content keys never in server memory)",
           !(g->methods & GS_METHOD_GROUP_SECRET) ? "none"
           : pol.secrets == GS_SECRETS_SEALED     ? "sealed to a token key pair"
           : pol.secrets == GS_SECRETS_TOKEN_ECB  ? "on the token (AES key wrap built on CKM_AES_ECB)"
                                                  : "on the token (AES key wrap)",
           !g->allow_pkcs1v15 ? "none" : pol.reject_sealed ? "sealed to a token key pair" : "on the token");
    weakenings_line(g, weak, line, sizeof(line));
    printf("%-*s%s\n", width, "weakenings: ", line);
}

static void print_ca_weakenings(struct env *e)
{
    gs_store_ca *row = NULL;

    if (gs_store_ca_get(e->st, &row) != GS_OK)
        return;
    printf("weakenings: %s\n", row->weakenings[0] ? row->weakenings : "none");
    gs_store_ca_free(row);
}

/* ca renew-cert: the current group certificates the CA issued that end
 * after its new end (a --days shorter than what it issued before): from
 * then on they verify for nobody (senders' tools refuse the group
 * certificate), though nothing else changed. Said on stderr, a line per
 * group; the renewal stands (a short CA may be meant). */
static void warn_groups_past_ca(gs_store *st, X509 *ca_cert)
{
    gs_store_group **groups = NULL;
    size_t ng = 0;
    char ca_until[64], until[64], msg[512];

    if (gs_store_group_list(st, &groups, &ng) != GS_OK)
        return;
    util_cert_not_after_text(ca_cert, ca_until, sizeof(ca_until));
    for (size_t i = 0; i < ng; i++) {
        gs_store_group_key *keys = NULL;
        size_t nk = 0;
        if (gs_store_group_keys(st, groups[i]->id, &keys, &nk) != GS_OK)
            continue;
        for (size_t j = 0; j < nk; j++) {
            X509 *gc = NULL;
            if (keys[j].state != GS_KEY_CURRENT || keys[j].cert_pem == NULL ||
                gs_cert_parse((const unsigned char *)keys[j].cert_pem, strlen(keys[j].cert_pem), &gc) != GS_OK)
                continue;
            /* the organisation's certificates (group import-cert) are not this CA's to cut */
            if (X509_check_issued(ca_cert, gc) == X509_V_OK &&
                ASN1_TIME_compare(X509_get0_notAfter(gc), X509_get0_notAfter(ca_cert)) > 0) {
                util_cert_not_after_text(gc, until, sizeof(until));
                (void)snprintf(msg, sizeof(msg),
                               "warning: group %s's certificate (version %u) is valid until %s, after the CA "
                               "certificate's new end, %s: from then on it no longer verifies (nor do member and "
                               "tls init certificates that end later); renew the CA for longer (ca renew-cert "
                               "--days N)",
                               groups[i]->name, keys[j].version, until, ca_until);
                error_line(msg, "");
            }
            X509_free(gc);
        }
        gs_store_group_keys_free(keys, nk);
    }
    gs_store_group_list_free(groups, ng);
}

/* ---- ca ---------------------------------------------------------------------------- */

static int cmd_ca(struct env *e, int argc, char **argv)
{
    static const struct opt_def defs[] = {{"--key", true}, {"--subject", true}, {"--days", true}, {"--use-key", true},
                                          {"--replicable", false}};
    struct args a;
    gs_err err;
    int rc;

    /* The key ceremony (ceremony.c) has its own options. */
    if (argc > 0 && strcmp(argv[0], "export") == 0)
        return gs_cmd_ca_export(e, argc, argv);
    if (argc > 0 && strcmp(argv[0], "import") == 0)
        return gs_cmd_ca_import(e, argc, argv);
    rc = parse_args(argc, argv, defs, GS_ARRAY_LEN(defs), &a);
    if (rc)
        return rc;
    if (a.npos == 0)
        return usage_error("ca: expected init, renew-cert, show, export or import%s", "");
    if (strcmp(a.pos[0], "init") != 0 && strcmp(a.pos[0], "show") != 0 && strcmp(a.pos[0], "renew-cert") != 0)
        return usage_error("ca: unknown subcommand %s (expected init, renew-cert, show, export or import)", a.pos[0]);
    if (a.npos != 1)
        return usage_error("ca %s: unexpected argument %s", a.pos[0], a.pos[1]);
    unsigned days = e->cfg->ca.ca_days;
    if (opt(&a, "--days")) {
        uint64_t d;
        if (util_parse_u64(opt(&a, "--days"), 1, 36500, &d) != UTIL_OK)
            return usage_error("--days: expected 1..36500, got %s", opt(&a, "--days"));
        days = (unsigned)d;
    }
    if (strcmp(a.pos[0], "renew-cert") == 0) {
        struct cli_record rec;
        X509 *cert = NULL;
        char fp[65] = "", until[64] = "";
        json_t *extra;
        if (a.nopt > (opt(&a, "--days") != NULL))
            return usage_error("ca renew-cert takes only --days N%s", "");
        err = env_open(e, NEED_DB | NEED_TOKEN);
        if (!err)
            err = cli_record_open(e->cfg, &rec, "ca renew-cert");
        if (err)
            return fail(err);
        /* The CA loaded and its key checked as for every issue, after
         * the audit record is open so that a refusal is recorded too. */
        err = env_open(e, NEED_CA);
        /* Recorded as started first: a command killed between the new
         * certificate's commit and its outcome record leaves a record. */
        if (!err)
            err = cli_record_started(&rec, "ca-renew-cert", NULL, json_pack("{s:I}", "days", (json_int_t)days));
        if (!err)
            err = gs_ca_renew(e->ca, e->hsm, e->st, days, &cert);
        extra = json_pack("{s:I}", "days", (json_int_t)days);
        if (!err) {
            gs_cert_fingerprint(cert, fp);
            util_cert_not_after_text(cert, until, sizeof(until));
            (void)json_object_set_new(extra, "certificate_sha256", json_string(fp));
            (void)json_object_set_new(extra, "not_after", json_string(until));
        }
        if ((rc = cli_record_done(&rec, "ca-renew-cert", NULL, -1, err, extra)) != 0) {
            X509_free(cert);
            return rc;
        }
        printf("CA certificate renewed for the same key: certificate sha256 %s, valid until %s\n", fp, until);
        warn_groups_past_ca(e->st, cert);
        X509_free(cert);
        return 0;
    }
    if (strcmp(a.pos[0], "init") == 0) {
        const char *subject = opt(&a, "--subject") ? opt(&a, "--subject") : "groupsrv local CA";
        if (opt(&a, "--key") && opt(&a, "--use-key"))
            return usage_error("ca init: --key and --use-key exclude each other%s", "");
        if ((rc = use_key_refusal("ca init", opt(&a, "--use-key"))) != 0)
            return rc;
        const char *ref = opt(&a, "--use-key") ? opt(&a, "--use-key") : e->cfg->ca.key_label;
        struct cli_record rec;
        char fp[65] = "";
        json_t *extra;
        /* The audit file first, so that one that cannot take the record
         * leaves no new database behind; the database's own chain needs
         * the schema this makes. */
        bool chain_in_db = strcmp(e->cfg->audit.store, "db") == 0;
        err = chain_in_db ? GS_OK : cli_record_open(e->cfg, &rec, "ca init");
        if (!err && (err = env_open(e, NEED_DB_CREATE | NEED_TOKEN)) != GS_OK && !chain_in_db)
            cli_record_close(&rec);
        if (!err && chain_in_db)
            err = cli_record_open(e->cfg, &rec, "ca init");
        if (err)
            return fail(err);
        /* Recorded as started first: a CA key made on the token cannot be
         * taken back, and a command killed before its outcome record must
         * not leave it without a record. */
        err = cli_record_started(&rec, "ca-init", NULL,
                                 json_pack("{s:o,s:b}", "label", cli_json_text(ref), "replicable",
                                           opt(&a, "--replicable") != NULL));
        if (!err)
            err = gs_ca_init_ex(e->st, e->hsm, e->cfg->ca.key_label, opt(&a, "--key"), opt(&a, "--use-key"),
                                subject, days, opt(&a, "--replicable") != NULL, &e->ca);
        extra = json_pack("{s:o,s:b}", "label", cli_json_text(ref), "replicable", opt(&a, "--replicable") != NULL);
        if (!err) {
            gs_cert_fingerprint(gs_ca_cert(e->ca), fp);
            (void)json_object_set_new(extra, "certificate_sha256", json_string(fp));
        }
        if ((rc = cli_record_done(&rec, "ca-init", NULL, -1, err, extra)) != 0)
            return rc;
        printf("CA initialised: label %s, certificate sha256 %s\n", ref, fp);
        print_ca_weakenings(e);
        return 0;
    }
    if (strcmp(a.pos[0], "show") == 0) {
        gs_store_ca *row = NULL;
        if (a.nopt)
            return usage_error("ca show takes no options%s", "");
        err = env_open(e, NEED_DB_RO);
        if (!err)
            err = gs_store_ca_get(e->st, &row);
        if (err)
            return fail(err);
        fputs(row->cert_pem, stdout);
        gs_store_ca_free(row);
        return 0;
    }
    return usage_error("ca: unknown subcommand %s", a.pos[0]);
}

/* ---- group ----------------------------------------------------------------------- */

static int group_show(struct env *e, const struct args *a)
{
    gs_store_group *g = NULL;
    gs_store_group_key *keys = NULL;
    gs_store_secret *secrets = NULL;
    gs_store_member *members = NULL;
    size_t nk = 0, ns = 0, nm = 0;
    X509 *cert = NULL;
    char methods[128];
    gs_err err;
    int rc = 0;

    if (opt(a, "--cert") && opt(a, "--pubkey"))
        return usage_error("group show: --cert and --pubkey exclude each other%s", "");
    err = env_open(e, NEED_DB_RO);
    if (!err)
        err = gs_store_group_get(e->st, a->pos[1], &g);
    if (!err)
        err = gs_store_group_keys(e->st, g->id, &keys, &nk);
    if (!err)
        err = gs_store_secrets(e->st, g->id, &secrets, &ns);
    if (!err)
        err = gs_store_member_list(e->st, g->id, &members, &nm);
    if (err) {
        rc = fail(err);
        goto out;
    }
    /* Keys come newest first: the newest current version is the one shown.
     * A database with two current versions (damaged, or edited by hand)
     * must not have the first parsed certificate overwritten and leaked. */
    for (size_t i = 0; i < nk && cert == NULL; i++) {
        if (keys[i].state != GS_KEY_CURRENT)
            continue;
        err = gs_cert_parse((const unsigned char *)keys[i].cert_pem, strlen(keys[i].cert_pem), &cert);
        if (err) {
            rc = fail(err);
            goto out;
        }
    }
    if (opt(a, "--cert")) {
        if (cert == NULL || PEM_write_X509(stdout, cert) != 1)
            rc = fail(gs_err_set(GS_ERR_STATE, "group %s has no current certificate", g->name));
        goto out;
    }
    if (opt(a, "--pubkey")) {
        if (cert == NULL || PEM_write_PUBKEY(stdout, X509_get0_pubkey(cert)) != 1)
            rc = fail(gs_err_set(GS_ERR_STATE, "group %s has no current key", g->name));
        goto out;
    }
    gs_methods_format(g->methods, methods, sizeof(methods));
    printf("group:          %s\naddress:        %s\nmethods:        %s\nkey:            %s\npkcs1v15:       %s\n"
           "member wrap:    %s\nreplicable:     %s\n",
           g->name, g->address, methods, g->algorithm,
           g->allow_pkcs1v15 ? "accepted (implicit rejection)" : "refused (RSA-OAEP only)", gs_wrap_name(g->member_wrap),
           /* Read from the database, not the token: on a clone the keys
            * are imported copies, which never leave (`check` tells which).
            * Secret key versions are the exception on both: wrapped to
            * members, they carry no CKA_WRAP_WITH_TRUSTED (SECURITY.md). */
           g->replicable ? "yes (group and rejection keys: the origin's leave only under trusted wrap, group "
                           "export there; imported copies never leave; secret key versions leave wrapped, as "
                           "members get them)"
                         : "no");
    for (size_t i = 0; i < nk; i++)
        if (keys[i].state == GS_KEY_CURRENT) {
            print_group_policy(g, keys[i].weakenings, true);
            break;
        }
    printf("created:        ");
    print_time(stdout, g->created);
    printf("\nmembers:        %zu\nkey versions:\n", nm);
    for (size_t i = 0; i < nk; i++) {
        X509 *c = NULL;
        char fp[65] = "";
        if (gs_cert_parse((const unsigned char *)keys[i].cert_pem, strlen(keys[i].cert_pem), &c) == GS_OK)
            gs_cert_fingerprint(c, fp);
        printf("  v%-4u %-8s %-28s sha256 %s%s%s\n", keys[i].version, gs_key_state_name(keys[i].state),
               keys[i].token_label, fp, keys[i].weakenings[0] ? " weakenings " : "", keys[i].weakenings);
        X509_free(c);
    }
    if (ns)
        printf("secret key versions:\n");
    for (size_t i = 0; i < ns; i++) {
        char hex[2 * GS_KEK_ID_LEN + 1];
        util_hex(secrets[i].kek_id, GS_KEK_ID_LEN, hex);
        printf("  v%-4u %-8s %-28s kek-id %s%s%s\n", secrets[i].version, gs_key_state_name(secrets[i].state),
               secrets[i].token_label, hex, secrets[i].sealed ? " sealed to " : "",
               secrets[i].sealed ? secrets[i].seal_label : "");
    }
    if (g->reject_label)
        printf("rejection key:  %s\n", g->reject_label);
out:
    X509_free(cert);
    gs_store_member_list_free(members, nm);
    gs_store_secrets_free(secrets, ns);
    gs_store_group_keys_free(keys, nk);
    gs_store_group_free(g);
    return rc;
}

/* After a new key version: the unrecorded token objects it was numbered
 * past (a database restored from a backup, or a failed run), kept. */
static void print_skipped(void)
{
    char labels[256];

    if (gs_skipped_labels_take(labels, sizeof(labels)) > 0)
        printf("kept on the token, though the database does not record them: %s (made after the backup the "
               "database was restored from, or left by a failed run: docs/operations.md); the new version is "
               "numbered past them\n",
               labels);
}

/* A change to an existing group (group rotate|retire|import-cert|
 * renew-cert, secret rotate|retire|record): its record with outcome
 * "started" first (cli_record_started), durable before anything is
 * changed, so that a command killed between its commit and its outcome
 * record leaves the change with a record. An unknown group is refused
 * before it, as member changes are (the same error the change gives);
 * extra is stolen either way. */
static gs_err group_change_started(struct env *e, struct cli_record *rec, const char *action, const char *group,
                                   json_t *extra)
{
    gs_store_group *g = NULL;
    gs_err err = gs_store_group_get(e->st, group, &g);

    gs_store_group_free(g);
    if (err) {
        json_decref(extra);
        return err;
    }
    return cli_record_started(rec, action, group, extra);
}

static int cmd_group(struct env *e, int argc, char **argv)
{
    static const struct opt_def defs[] = {{"--address", true},        {"--key", true},        {"--methods", true},
                                          {"--allow-pkcs1v15", false}, {"--oaep-only", false}, {"--wrap", true},
                                          {"--before", true},          {"--cert", true},       {"--version", true},
                                          {"--pubkey", false},         {"--use-key", true},    {"--replicable", false},
                                          {"--take-over", false}};
    static const struct opt_def show_defs[] = {{"--cert", false}, {"--pubkey", false}};
    struct args a;
    struct cli_record rec;
    gs_err err;
    int rc;
    const char *sub = argc > 0 ? argv[0] : "";

    /* The key ceremony (ceremony.c) has its own options. */
    if (strcmp(sub, "export") == 0)
        return gs_cmd_group_export(e, argc, argv);
    if (strcmp(sub, "import") == 0)
        return gs_cmd_group_import(e, argc, argv);
    if (strcmp(sub, "show") == 0)
        rc = parse_args(argc, argv, show_defs, GS_ARRAY_LEN(show_defs), &a);
    else
        rc = parse_args(argc, argv, defs, GS_ARRAY_LEN(defs), &a);
    if (rc)
        return rc;
    static const char *const group_subs[] = {"create",     "set",  "rotate", "retire", "import-cert",
                                             "renew-cert", "list", "show",   NULL};
    if (a.npos == 0)
        return usage_error("group: expected create, set, rotate, retire, import-cert, renew-cert, list, show, "
                           "export or import%s",
                           "");
    if (!one_of(sub, group_subs))
        return usage_error("group: unknown subcommand %s (expected create, set, rotate, retire, import-cert, "
                           "renew-cert, list, show, export or import)", sub);
    if (strcmp(sub, "list") == 0) {
        gs_store_group **list = NULL;
        size_t n = 0;
        if (a.npos != 1 || a.nopt)
            return usage_error("group list takes no arguments%s", "");
        err = env_open(e, NEED_DB_RO);
        if (!err)
            err = gs_store_group_list(e->st, &list, &n);
        if (err)
            return fail(err);
        for (size_t i = 0; i < n; i++) {
            char methods[128];
            gs_methods_format(list[i]->methods, methods, sizeof(methods));
            printf("%-24s %-32s %-9s %s\n", list[i]->name, list[i]->address, list[i]->algorithm, methods);
        }
        gs_store_group_list_free(list, n);
        return 0;
    }
    if (a.npos != 2)
        return usage_error("group %s: expected one group NAME", sub);
    if (strcmp(sub, "show") == 0)
        return group_show(e, &a);
    if (strcmp(sub, "create") == 0) {
        gs_group_spec spec;
        unsigned v = 0;
        memset(&spec, 0, sizeof(spec));
        spec.name = a.pos[1];
        spec.address = opt(&a, "--address");
        spec.keyspec = opt(&a, "--key");
        spec.use_key = opt(&a, "--use-key");
        spec.allow_pkcs1v15 = opt(&a, "--allow-pkcs1v15") != NULL;
        spec.replicable = opt(&a, "--replicable") != NULL;
        spec.oaep_only = opt(&a, "--oaep-only") != NULL;
        if (spec.address == NULL)
            return usage_error("group create: --address LIST@DOMAIN is required%s", "");
        if (spec.keyspec && spec.use_key)
            return usage_error("group create: --key and --use-key exclude each other%s", "");
        if ((rc = use_key_refusal("group create", spec.use_key)) != 0)
            return rc;
        if (spec.allow_pkcs1v15 && spec.oaep_only)
            return usage_error("group create: --allow-pkcs1v15 and --oaep-only contradict each other%s", "");
        if (opt(&a, "--wrap") && gs_wrap_parse(opt(&a, "--wrap"), &spec.member_wrap) != GS_OK)
            return usage_error("group create: --wrap must be pkcs1v15 or oaep, not %s", opt(&a, "--wrap"));
        if (opt(&a, "--before") || opt(&a, "--cert") || opt(&a, "--version"))
            return usage_error("group create: unexpected option%s", "");
        if (opt(&a, "--methods") && gs_methods_parse(opt(&a, "--methods"), &spec.methods) != GS_OK)
            return usage_error("group create: %s", gs_err_detail());
        if (!gs_valid_group_name(spec.name))
            return fail(gs_err_set(GS_ERR_ARGS, "invalid group name (" GS_GROUP_NAME_RULE ")"));
        if (!gs_valid_email(spec.address))
            return fail(gs_err_set(GS_ERR_ARGS, "invalid list address (expected LIST@DOMAIN): %s",
                                   mailaddr_problem(spec.address)));
        err = env_open(e, NEED_DB | NEED_CA);
        if (!err)
            err = cli_record_open(e->cfg, &rec, "group create");
        if (err)
            return fail(err);
        /* Recorded as started first: no undoing a creation (keys on the
         * token), and a command killed before its outcome record must not
         * leave a group without a record. */
        err = cli_record_started(&rec, "group-create", spec.name,
                                 json_pack("{s:s,s:b}", "address", spec.address, "replicable", spec.replicable));
        if (!err)
            err = gs_group_create(e->st, e->hsm, e->ca, e->cfg, &spec, &v);
        if ((rc = cli_record_done(&rec, "group-create", spec.name, v ? (long)v : -1, err,
                                  json_pack("{s:s,s:b}", "address", spec.address, "replicable", spec.replicable))) != 0)
            return rc;
        printf("group %s created: key version %u%s\n", spec.name, v,
               spec.replicable ? " (replicable: copied only by the key ceremony, see group export)" : "");
        {
            gs_store_group *g = NULL;
            gs_store_group_key *keys = NULL;
            size_t nk = 0;
            if (gs_store_group_get(e->st, spec.name, &g) == GS_OK &&
                gs_store_group_keys(e->st, g->id, &keys, &nk) == GS_OK && nk > 0)
                print_group_policy(g, keys[0].weakenings, false);
            gs_store_group_keys_free(keys, nk);
            gs_store_group_free(g);
        }
        return 0;
    }
    if (strcmp(sub, "set") == 0) {
        gs_store_group *g = NULL;
        gs_wrap w;
        if (a.nopt != 1 || opt(&a, "--wrap") == NULL)
            return usage_error("group set: expected --wrap pkcs1v15|oaep%s", "");
        if (gs_wrap_parse(opt(&a, "--wrap"), &w) != GS_OK)
            return usage_error("group set: --wrap must be pkcs1v15 or oaep, not %s", opt(&a, "--wrap"));
        err = env_open(e, NEED_DB);
        if (!err)
            err = cli_record_open(e->cfg, &rec, "group set");
        if (err)
            return fail(err);
        err = gs_store_group_get(e->st, a.pos[1], &g);
        if (!err)
            err = cli_record_started(&rec, "group-set", a.pos[1], json_pack("{s:s}", "wrap", gs_wrap_name(w)));
        if (!err)
            err = gs_store_group_set_member_wrap(e->st, g->id, w);
        gs_store_group_free(g);
        if ((rc = cli_record_done(&rec, "group-set", a.pos[1], -1, err, json_pack("{s:s}", "wrap", gs_wrap_name(w)))) !=
            0)
            return rc;
        printf("group %s: member-certs copies wrapped with %s unless a member chose otherwise\n", a.pos[1],
               gs_wrap_name(w));
        return 0;
    }
    if (strcmp(sub, "rotate") == 0) {
        unsigned v = 0;
        bool take_over = opt(&a, "--take-over") != NULL, took_over = false;
        if (a.nopt != (take_over ? 1u : 0u))
            return usage_error("group rotate takes no options but --take-over%s", "");
        err = env_open(e, NEED_DB | NEED_CA);
        if (!err)
            err = cli_record_open(e->cfg, &rec, "group rotate");
        if (err)
            return fail(err);
        /* the started record says what was asked (a take-over or not) */
        err = group_change_started(e, &rec, "group-rotate", a.pos[1],
                                   take_over ? json_pack("{s:b}", "take_over", true) : NULL);
        if (!err)
            err = gs_group_rotate_ex(e->st, e->hsm, e->ca, e->cfg, a.pos[1], take_over, &v, &took_over);
        /* the record says what happened: a take-over, or (asked for on a
         * server that made the group) an ordinary rotation */
        if ((rc = cli_record_done(&rec, "group-rotate", a.pos[1], v ? (long)v : -1, err,
                                  take_over ? json_pack("{s:b}", "take_over", took_over) : NULL)) != 0)
            return rc;
        printf("group %s: new key version %u\n", a.pos[1], v);
        if (take_over)
            printf("%s\n", took_over ? "this server is now the group's origin (its CA certifies the version)"
                                     : "the group was made here (or on a server sharing this database): "
                                       "nothing taken over, an ordinary rotation");
        print_skipped();
        return 0;
    }
    if (strcmp(sub, "retire") == 0) {
        uint64_t before = 0;
        size_t n = 0, cleared = 0;
        if (opt(&a, "--before") == NULL || a.nopt != 1)
            return usage_error("group retire: --before VERSION is required%s", "");
        if (util_parse_u64(opt(&a, "--before"), 1, UINT32_MAX, &before) != UTIL_OK)
            return usage_error("group retire: bad --before %s", opt(&a, "--before"));
        err = env_open(e, NEED_DB | NEED_TOKEN);
        if (!err)
            err = cli_record_open(e->cfg, &rec, "group retire");
        if (err)
            return fail(err);
        err = group_change_started(e, &rec, "group-retire", a.pos[1], json_pack("{s:I}", "before", (json_int_t)before));
        if (!err)
            err = gs_group_retire(e->st, e->hsm, a.pos[1], (unsigned)before, &n, &cleared);
        if ((rc = cli_record_done(&rec, "group-retire", a.pos[1], -1, err,
                                  json_pack("{s:I,s:I,s:I}", "before", (json_int_t)before, "retired", (json_int_t)n,
                                            "destroyed_earlier", (json_int_t)cleared))) != 0)
            return rc;
        printf("group %s: %zu key version(s) retired\n", a.pos[1], n);
        if (cleared > 0)
            printf("group %s: %zu version(s) retired earlier destroyed on this token\n", a.pos[1], cleared);
        return 0;
    }
    if (strcmp(sub, "import-cert") == 0) {
        uint64_t version = 0;
        X509 *cert = NULL;
        if (opt(&a, "--cert") == NULL)
            return usage_error("group import-cert: --cert FILE is required%s", "");
        if (opt(&a, "--version") && util_parse_u64(opt(&a, "--version"), 1, UINT32_MAX, &version) != UTIL_OK)
            return usage_error("group import-cert: bad --version %s", opt(&a, "--version"));
        char fp[65] = "";
        err = read_cert_file(opt(&a, "--cert"), &cert);
        if (!err)
            err = env_open(e, NEED_DB | NEED_TOKEN);
        if (!err)
            err = cli_record_open(e->cfg, &rec, "group import-cert");
        if (err) {
            X509_free(cert);
            return fail(err);
        }
        gs_cert_fingerprint(cert, fp);
        err = group_change_started(e, &rec, "group-import-cert", a.pos[1],
                                   version ? json_pack("{s:s,s:I}", "certificate_sha256", fp, "version",
                                                       (json_int_t)version)
                                           : json_pack("{s:s}", "certificate_sha256", fp));
        if (!err)
            err = gs_group_import_cert(e->st, e->hsm, a.pos[1], (unsigned)version, cert);
        X509_free(cert);
        if ((rc = cli_record_done(&rec, "group-import-cert", a.pos[1], version ? (long)version : -1, err,
                                  json_pack("{s:s}", "certificate_sha256", fp))) != 0)
            return rc;
        printf("group %s: certificate imported\n", a.pos[1]);
        return 0;
    }
    if (strcmp(sub, "renew-cert") == 0) {
        uint64_t version = 0;
        unsigned v = 0;
        if (a.nopt > (opt(&a, "--version") != NULL))
            return usage_error("group renew-cert takes only --version N%s", "");
        if (opt(&a, "--version") && util_parse_u64(opt(&a, "--version"), 1, UINT32_MAX, &version) != UTIL_OK)
            return usage_error("group renew-cert: bad --version %s", opt(&a, "--version"));
        err = env_open(e, NEED_DB | NEED_CA);
        if (!err)
            err = cli_record_open(e->cfg, &rec, "group renew-cert");
        if (err)
            return fail(err);
        err = group_change_started(e, &rec, "group-renew-cert", a.pos[1],
                                   version ? json_pack("{s:I}", "version", (json_int_t)version) : NULL);
        if (!err)
            err = gs_group_renew_cert(e->st, e->hsm, e->ca, e->cfg, a.pos[1], (unsigned)version, &v);
        if ((rc = cli_record_done(&rec, "group-renew-cert", a.pos[1], v ? (long)v : (version ? (long)version : -1),
                                  err, NULL)) != 0)
            return rc;
        printf("group %s: certificate of key version %u renewed by the local CA (the key is the same)\n", a.pos[1],
               v);
        return 0;
    }
    return usage_error("group: unknown subcommand %s", sub);
}

/* ---- secret ---------------------------------------------------------------------- */

/* `secret retire NAME --before VERSION` (a.pos[1] is NAME), as `group
 * retire` is for key versions. */
static int cmd_secret_retire(struct env *e, const struct args *a)
{
    struct cli_record rec;
    uint64_t before = 0;
    size_t n = 0, cleared = 0;
    gs_err err;
    int rc;

    if (opt(a, "--before") == NULL || a->nopt != 1)
        return usage_error("secret retire: --before VERSION is required%s", "");
    if (util_parse_u64(opt(a, "--before"), 1, UINT32_MAX, &before) != UTIL_OK)
        return usage_error("secret retire: bad --before %s", opt(a, "--before"));
    err = env_open(e, NEED_DB | NEED_TOKEN);
    if (!err)
        err = cli_record_open(e->cfg, &rec, "secret retire");
    if (err)
        return fail(err);
    err = group_change_started(e, &rec, "secret-retire", a->pos[1], json_pack("{s:I}", "before", (json_int_t)before));
    if (!err)
        err = gs_secret_retire(e->st, e->hsm, a->pos[1], (unsigned)before, &n, &cleared);
    if ((rc = cli_record_done(&rec, "secret-retire", a->pos[1], -1, err,
                              json_pack("{s:I,s:I,s:I}", "before", (json_int_t)before, "retired", (json_int_t)n,
                                        "destroyed_earlier", (json_int_t)cleared))) != 0)
        return rc;
    printf("group %s: %zu secret key version(s) retired\n", a->pos[1], n);
    if (cleared > 0)
        printf("group %s: %zu secret key version(s) retired earlier destroyed on this token\n", a->pos[1], cleared);
    return 0;
}

/* `secret record NAME --version N --kek-id HEX`: a secret key version a
 * restored database lacks, recorded again (gs_secret_record). HEX: the 32
 * hex digits `group show` and `groupmail keys list` print. */
static int cmd_secret_record(struct env *e, const struct args *a)
{
    struct cli_record rec;
    unsigned char kek_id[GS_KEK_ID_LEN];
    const char *hex = opt(a, "--kek-id");
    uint64_t version = 0;
    gs_err err;
    int rc;

    if (opt(a, "--version") == NULL || hex == NULL || a->nopt != 2)
        return usage_error("secret record: --version N and --kek-id HEX are required%s", "");
    if (util_parse_u64(opt(a, "--version"), 1, UINT32_MAX, &version) != UTIL_OK)
        return usage_error("secret record: bad --version %s", opt(a, "--version"));
    if (strlen(hex) != 2 * GS_KEK_ID_LEN || strspn(hex, "0123456789abcdefABCDEF") != 2 * GS_KEK_ID_LEN)
        return usage_error("secret record: --kek-id must be %d hex digits", 2 * GS_KEK_ID_LEN);
    for (size_t i = 0; i < GS_KEK_ID_LEN; i++) {
        unsigned byte = 0;
        for (size_t j = 0; j < 2; j++) {
            char ch = hex[2 * i + j];
            byte = byte * 16 + (unsigned)(ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10);
        }
        kek_id[i] = (unsigned char)byte;
    }
    err = env_open(e, NEED_DB | NEED_TOKEN);
    if (!err)
        err = cli_record_open(e->cfg, &rec, "secret record");
    if (err)
        return fail(err);
    err = group_change_started(e, &rec, "secret-record", a->pos[1],
                               json_pack("{s:I,s:s#}", "secret_version", (json_int_t)version, "kek_id", hex,
                                         (size_t)(2 * GS_KEK_ID_LEN)));
    if (!err)
        err = gs_secret_record(e->st, e->hsm, a->pos[1], (unsigned)version, kek_id);
    if ((rc = cli_record_done(&rec, "secret-record", a->pos[1], -1, err,
                              json_pack("{s:I,s:s#}", "secret_version", (json_int_t)version, "kek_id", hex,
                                        (size_t)(2 * GS_KEK_ID_LEN)))) != 0)
        return rc;
    printf("group %s: secret key version %u recorded\n", a->pos[1], (unsigned)version);
    return 0;
}

static int cmd_secret(struct env *e, int argc, char **argv)
{
    static const struct opt_def defs[] = {{"--before", true}, {"--version", true}, {"--kek-id", true}};
    struct args a;
    struct cli_record rec;
    unsigned v = 0;
    gs_err err;
    int rc = parse_args(argc, argv, defs, GS_ARRAY_LEN(defs), &a);
    if (rc)
        return rc;
    if (a.npos == 2 && strcmp(a.pos[0], "retire") == 0)
        return cmd_secret_retire(e, &a);
    if (a.npos == 2 && strcmp(a.pos[0], "record") == 0)
        return cmd_secret_record(e, &a);
    if (a.npos != 2 || strcmp(a.pos[0], "rotate") != 0)
        return usage_error("secret: expected `secret rotate NAME`, `secret retire NAME --before VERSION` or `secret "
                           "record NAME --version N --kek-id HEX`%s", "");
    if (a.nopt)
        return usage_error("secret rotate takes no options%s", "");
    err = env_open(e, NEED_DB | NEED_TOKEN);
    if (!err)
        err = cli_record_open(e->cfg, &rec, "secret rotate");
    if (err)
        return fail(err);
    err = group_change_started(e, &rec, "secret-rotate", a.pos[1], NULL);
    if (!err)
        err = gs_secret_rotate(e->st, e->hsm, a.pos[1], &v);
    if ((rc = cli_record_done(&rec, "secret-rotate", a.pos[1], -1, err,
                              json_pack("{s:I}", "secret_version", (json_int_t)v))) != 0)
        return rc;
    printf("group %s: new secret key version %u\n", a.pos[1], v);
    print_skipped();
    return 0;
}

/* ---- member ---------------------------------------------------------------------- */

static gs_err path_join(char *buf, size_t n, const char *dir, const char *email, const char *ext)
{
    int w = snprintf(buf, n, "%s/%s%s", dir, email, ext);
    if (w < 0 || (size_t)w >= n)
        return gs_err_set(GS_ERR_ARGS, "output path too long");
    return GS_OK;
}

/* --issue-cert: a software RSA-2048 key (the member's own key, 0600) and a
 * client certificate from the local CA. Files first, then the row; a
 * failure to record removes the files again. */
static gs_err issue_member_cert(struct env *e, const char *email, const char *outdir, X509 **cert_out,
                                char *keypath, char *certpath, size_t pathsize)
{
    EVP_PKEY *pk = NULL;
    X509 *cert = NULL;
    BIO *kbio = NULL;
    char *kdata = NULL, *pem = NULL;
    long klen;
    gs_cert_spec spec;
    struct stat sb;
    gs_err err;

    *cert_out = NULL;
    if (stat(outdir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return gs_err_set(GS_ERR_IO, "--out %s is not a directory", outdir);
    err = path_join(keypath, pathsize, outdir, email, ".key");
    if (!err)
        err = path_join(certpath, pathsize, outdir, email, ".pem");
    if (err)
        return err;
    if (stat(keypath, &sb) == 0 || stat(certpath, &sb) == 0)
        return gs_err_set(GS_ERR_EXISTS, "%s or %s already exists", keypath, certpath);
    pk = EVP_RSA_gen(2048);
    if (pk == NULL) {
        err = gs_err_set(GS_ERR_CRYPTO, "RSA key generation failed");
        goto out;
    }
    memset(&spec, 0, sizeof(spec));
    spec.pubkey = pk;
    /* CN is at most 64 characters (X.520); longer addresses are in the SAN only. */
    spec.subject_cn = strlen(email) <= 64 ? email : NULL;
    spec.san_email = email;
    spec.key_usage = GS_KU_DIGITAL_SIGNATURE | GS_KU_KEY_ENCIPHERMENT;
    spec.ext_key_usage = GS_EKU_CLIENT_AUTH | GS_EKU_EMAIL_PROTECTION;
    spec.lifetime = (long)e->cfg->ca.member_cert_days * 86400L;
    spec.backdate = 300;
    err = gs_ca_issue(e->ca, e->hsm, &spec, &cert);
    if (err)
        goto out;
    err = gs_cert_to_pem(cert, &pem);
    if (err)
        goto out;
    /* Secure-heap BIO: the PEM private key is wiped when freed. */
    kbio = BIO_new(BIO_s_secmem());
    if (kbio == NULL || PEM_write_bio_PrivateKey(kbio, pk, NULL, NULL, 0, NULL, NULL) != 1 ||
        (klen = BIO_get_mem_data(kbio, &kdata)) <= 0) {
        err = gs_err_set(GS_ERR_CRYPTO, "cannot encode the member key");
        goto out;
    }
    if (util_write_file_atomic(keypath, kdata, (size_t)klen, 0600) != UTIL_OK) {
        err = gs_err_set(GS_ERR_IO, "cannot write %s: %s", keypath, strerror(errno));
        goto out;
    }
    if (util_write_file_atomic(certpath, pem, strlen(pem), 0644) != UTIL_OK) {
        err = gs_err_set(GS_ERR_IO, "cannot write %s: %s", certpath, strerror(errno));
        (void)unlink(keypath);
        goto out;
    }
    *cert_out = cert;
    cert = NULL;
out:
    BIO_free(kbio);
    free(pem);
    X509_free(cert);
    EVP_PKEY_free(pk);
    return err;
}

/* A member change of the command line, from before it to its audit
 * record: under the keys lock (as the server's member changes, here and
 * on servers sharing the database), with the record as it was, so that a
 * change whose record cannot be written is put back (member_undo) and no
 * change made meanwhile by another is put back over. Before the change,
 * its record with outcome "started" (cli_record_started): a command
 * killed between the change and its outcome record leaves that one. */
struct member_change {
    gs_store *st;
    int64_t group_id;
    const char *email;
    gs_store_member *prev; /* NULL: not a member before */
    gs_store_member *made; /* the record as the change left it (NULL: removed, or unread) */
    bool locked;
    const char *files[2]; /* --issue-cert's key and certificate, removed by an undo */
};

/* Takes the lock and reads the record as it was. An error (no such group,
 * the database) is the change's error: it is recorded as its refusal. */
static gs_err member_change_begin(struct env *e, const char *group, const char *email, struct member_change *mc)
{
    gs_store_group *g = NULL;
    gs_err err;

    memset(mc, 0, sizeof(*mc));
    mc->st = e->st;
    mc->email = email;
    if ((err = gs_store_keys_lock(e->st)) != GS_OK)
        return err;
    mc->locked = true;
    if ((err = gs_store_group_get(e->st, group, &g)) != GS_OK)
        return err;
    mc->group_id = g->id;
    gs_store_group_free(g);
    err = gs_store_member_get(e->st, mc->group_id, email, &mc->prev);
    return err == GS_ERR_NOT_FOUND ? GS_OK : err;
}

/* After a change made: the record as it left it, for the undo's check.
 * Unread (the database gone), no undo replaces the record. */
static void member_change_made(struct member_change *mc)
{
    if (gs_store_member_get(mc->st, mc->group_id, mc->email, &mc->made) != GS_OK)
        mc->made = NULL;
}

static void member_change_end(struct member_change *mc)
{
    if (mc->locked)
        gs_store_keys_unlock(mc->st);
    gs_store_member_free(mc->prev);
    gs_store_member_free(mc->made);
    memset(mc, 0, sizeof(*mc));
}

/* cli_record_done_or_undo's undo: the record put back as it was. */
static gs_err member_undo(void *arg)
{
    struct member_change *mc = arg;
    gs_err err = gs_member_restore(mc->st, mc->group_id, mc->email, mc->prev, mc->made);

    for (size_t i = 0; err == GS_OK && i < GS_ARRAY_LEN(mc->files); i++)
        if (mc->files[i] != NULL)
            (void)unlink(mc->files[i]);
    return err;
}

/* A member change's start: the certificate file read (certfile NULL:
 * none), the database opened and the audit log; on failure nothing is
 * held. */
static gs_err member_change_open(struct env *e, const char *certfile, X509 **cert, struct cli_record *rec)
{
    gs_err err = certfile != NULL ? read_cert_file(certfile, cert) : GS_OK;

    if (!err)
        err = env_open(e, NEED_DB);
    if (!err)
        err = cli_record_open(e->cfg, rec, "the change");
    if (err) {
        X509_free(*cert);
        *cert = NULL;
    }
    return err;
}

/* --issue-cert's files after the change (*err): removed when it was not
 * made, else left to the undo should its record fail. A change whose
 * commit's outcome is not known (gs_store_commit_unknown: the COMMIT
 * sent, its answer lost, the database gone for the lookup) may be in the
 * database once it is back (PostgreSQL's crash recovery keeps a commit
 * that reached its WAL): the record would then name a certificate whose
 * key was deleted, the member's old one refused, so the files stay and
 * *err says how to tell (cert: the one issued, for its fingerprint). */
static void member_change_files(struct member_change *mc, gs_err *err, bool wrote, const char *group,
                                const char *email, X509 *cert, const char *keypath, const char *certpath)
{
    if (!wrote)
        return;
    if (*err && gs_store_commit_unknown(mc->st)) {
        char detail[512], fp[65];
        (void)util_strlcpy(detail, gs_err_detail(), sizeof(detail));
        gs_cert_fingerprint(cert, fp);
        log_warn(
            "member certificate files kept: whether the commit recording the certificate was made is not "
            "known group=%s member=%s key=\"%s\" certificate=\"%s\" fingerprint=%s",
            group, email, log_qs(keypath), log_qs(certpath), fp);
        *err =
            gs_err_set(*err,
                       "%s and %s kept: whether the change was made is not known (its COMMIT was sent, the "
                       "answer lost, the database not there to ask); once the database answers, `groupsrv "
                       "member list %s` tells: %s with certificate %s, hand both files over, else delete "
                       "them (%s)",
                       certpath, keypath, group, email, fp, detail);
        return;
    }
    if (*err) {
        (void)unlink(keypath);
        (void)unlink(certpath);
    }
    mc->files[0] = keypath;
    mc->files[1] = certpath;
}

/* `member set` with --role, --cert or --issue-cert: the record replaced
 * as the REST PUT replaces it (gs_member_set: one transaction, no key
 * made, the secret key not rotated), keeping what the command does not
 * name (role, wrap, certificate; wrap/role NULL: kept), and recorded as
 * that PUT is: action member-add with member and role, a "started" before
 * the change, a refused demotion of the group's last admin with outcome
 * last_admin and nothing changed. --issue-cert writes its files as
 * member add --issue-cert does (issue_member_cert); a change not made
 * removes them again. */
static int member_set_record(struct env *e, const char *group, const char *email, const gs_wrap *wrap,
                             const gs_role *role, const char *certfile, const char *outdir)
{
    struct cli_record rec;
    struct member_change mc;
    X509 *cert = NULL;
    char keypath[4096], certpath[4096], fp[65] = "";
    bool wrote = false;
    gs_role r = GS_ROLE_MEMBER;
    gs_wrap w = GS_WRAP_DEFAULT;
    size_t admins = 0;
    gs_err err;
    int rc;

    if ((err = member_change_open(e, certfile, &cert, &rec)) != GS_OK)
        return fail(err);
    const char *typed = email; /* --issue-cert's files are named as the command line names them */
    err = member_change_begin(e, group, email, &mc);
    if (!err && mc.prev == NULL)
        err = gs_err_set(GS_ERR_NOT_FOUND, "%s is not a member of group %s", email, group);
    if (!err) {
        email = mc.prev->email; /* as stored */
        r = role != NULL ? *role : mc.prev->role;
        w = wrap != NULL ? *wrap : mc.prev->wrap;
    }
    if (!err && mc.prev->role == GS_ROLE_ADMIN && r != GS_ROLE_ADMIN &&
        (err = gs_member_admins(e->st, mc.group_id, &admins)) == GS_OK && admins <= 1) {
        /* The REST PUT's 409 last_admin, recorded with that outcome. */
        char msg[GS_EMAIL_MAX + GS_NAME_MAX + 128];
        (void)snprintf(msg, sizeof(msg),
                       "%s is the last admin of group %s: make another member admin first; the change was not made",
                       email, group);
        if (cli_record_write(&rec, "member-add", group, "last_admin",
                             json_pack("{s:s,s:s}", "member", email, "role", gs_role_name(r))) != GS_OK)
            log_warn("the refusal could not be recorded in the audit log");
        cli_record_close(&rec);
        member_change_end(&mc);
        X509_free(cert);
        return fail(gs_err_set(GS_ERR_STATE, "%s", msg));
    }
    if (!err && outdir != NULL)
        err = env_open(e, NEED_CA);
    if (!err)
        err = cli_record_started(&rec, "member-add", group,
                                 json_pack("{s:s,s:s}", "member", email, "role", gs_role_name(r)));
    if (!err && outdir != NULL) {
        err = issue_member_cert(e, typed, outdir, &cert, keypath, certpath, sizeof(keypath));
        wrote = err == GS_OK;
    }
    if (!err)
        err = gs_member_set(e->st, mc.group_id, mc.prev, r, cert, w);
    if (!err)
        member_change_made(&mc);
    if (!err && cert != NULL)
        gs_cert_fingerprint(cert, fp);
    member_change_files(&mc, &err, wrote, group, email, cert, keypath, certpath);
    X509_free(cert);
    json_t *detail = json_pack("{s:s,s:s}", "member", email, "role", gs_role_name(r));
    if (detail != NULL && wrap != NULL)
        (void)json_object_set_new(detail, "wrap", json_string(gs_wrap_name(w)));
    if (detail != NULL && fp[0] != '\0')
        (void)json_object_set_new(detail, "certificate_sha256", json_string(fp));
    char shown[GS_EMAIL_MAX + 1];
    (void)util_strlcpy(shown, email, sizeof(shown));
    rc = cli_record_done_or_undo(&rec, "member-add", group, -1, err, detail, member_undo, &mc);
    member_change_end(&mc);
    if (rc != 0)
        return rc;
    printf("member %s of %s: role %s, member-certs wrap %s, certificate %s\n", shown, group, gs_role_name(r),
           gs_wrap_name(w), fp[0] != '\0' ? fp : "kept");
    if (wrote)
        printf("wrote %s and %s\n", certpath, keypath);
    return 0;
}

static int cmd_member(struct env *e, int argc, char **argv)
{
    static const struct opt_def defs[] = {
        {"--cert", true}, {"--issue-cert", false}, {"--out", true}, {"--role", true}, {"--wrap", true}};
    struct args a;
    struct cli_record rec;
    gs_err err;
    int rc = parse_args(argc, argv, defs, GS_ARRAY_LEN(defs), &a);
    const char *sub;
    if (rc)
        return rc;
    static const char *const member_subs[] = {"add", "set", "remove", "list", NULL};
    if (a.npos >= 1 && !one_of(a.pos[0], member_subs))
        return usage_error("member: unknown subcommand %s (expected add, set, remove or list)", a.pos[0]);
    if (a.npos < 2)
        return usage_error("member: expected add, set, remove or list with a group NAME%s", "");
    sub = a.pos[0];
    if (strcmp(sub, "list") == 0) {
        gs_store_group *g = NULL;
        gs_store_member *m = NULL;
        size_t n = 0;
        if (a.npos != 2 || a.nopt)
            return usage_error("member list: expected NAME only%s", "");
        err = env_open(e, NEED_DB_RO);
        if (!err)
            err = gs_store_group_get(e->st, a.pos[1], &g);
        if (!err)
            err = gs_store_member_list(e->st, g->id, &m, &n);
        gs_store_group_free(g);
        if (err)
            return fail(err);
        for (size_t i = 0; i < n; i++) {
            char fp[65] = "-";
            if (m[i].cert_pem != NULL && gs_cert_record_fingerprint(m[i].cert_pem, fp) != GS_OK)
                (void)snprintf(fp, sizeof(fp), "-");
            printf("%-40s %-9s %-8s %s\n", m[i].email, gs_role_name(m[i].role), gs_wrap_name(m[i].wrap), fp);
        }
        gs_store_member_list_free(m, n);
        return 0;
    }
    if (a.npos != 3)
        return usage_error("member %s: expected NAME EMAIL", sub);
    /* add makes a record (and with --issue-cert files named after it):
     * the address rule; set and remove name a record that may be older
     * than that rule, and must reach it */
    const char *why = mailaddr_refusal(a.pos[2], strcmp(sub, "add") == 0);
    if (why != NULL)
        return fail(gs_err_set(GS_ERR_ARGS, "invalid member email address: %s", why));
    if (strcmp(sub, "set") == 0) {
        gs_wrap w = GS_WRAP_DEFAULT;
        gs_role role = GS_ROLE_MEMBER;
        const char *wv = opt(&a, "--wrap"), *rv = opt(&a, "--role"), *certfile = opt(&a, "--cert"),
                   *outdir = opt(&a, "--out");
        bool issue = opt(&a, "--issue-cert") != NULL;
        if (a.nopt == 0)
            return usage_error("member set: expected --wrap pkcs1v15|oaep|default, --role member|exploder|admin, "
                               "--cert FILE or --issue-cert --out DIR%s",
                               "");
        if (wv != NULL && strcmp(wv, "default") != 0 && gs_wrap_parse(wv, &w) != GS_OK)
            return usage_error("member set: --wrap must be pkcs1v15, oaep or default, not %s", wv);
        if (rv != NULL && gs_role_parse(rv, &role) != GS_OK)
            return usage_error("member set: unknown --role %s (member, exploder, admin)", rv);
        if (certfile != NULL && issue)
            return usage_error("member set: give one of --cert FILE or --issue-cert --out DIR, not both%s", "");
        if (issue != (outdir != NULL))
            return usage_error("member set: --issue-cert and --out DIR go together%s", "");
        if (rv != NULL || certfile != NULL || issue) {
            /* files named after EMAIL: the address rule, as member add's */
            if (issue && (why = mailaddr_refusal(a.pos[2], true)) != NULL)
                return fail(gs_err_set(GS_ERR_ARGS, "invalid member email address: %s", why));
            return member_set_record(e, a.pos[1], a.pos[2], wv != NULL ? &w : NULL, rv != NULL ? &role : NULL,
                                     certfile, outdir);
        }
        struct member_change mc;
        err = env_open(e, NEED_DB);
        if (!err)
            err = cli_record_open(e->cfg, &rec, "the change");
        if (err)
            return fail(err);
        err = member_change_begin(e, a.pos[1], a.pos[2], &mc);
        if (!err)
            err = cli_record_started(&rec, "member-set", a.pos[1],
                                     json_pack("{s:s,s:s}", "member", a.pos[2], "wrap", gs_wrap_name(w)));
        if (!err)
            err = gs_store_member_set_wrap(e->st, mc.group_id, a.pos[2], w);
        if (!err)
            member_change_made(&mc);
        rc = cli_record_done_or_undo(&rec, "member-set", a.pos[1], -1, err,
                                     json_pack("{s:s,s:s}", "member", a.pos[2], "wrap", gs_wrap_name(w)),
                                     member_undo, &mc);
        member_change_end(&mc);
        if (rc == 0)
            printf("member %s of %s: member-certs wrap %s\n", a.pos[2], a.pos[1], gs_wrap_name(w));
        return rc;
    }
    if (strcmp(sub, "remove") == 0) {
        gs_member_removal rm;
        memset(&rm, 0, sizeof(rm));
        if (a.nopt)
            return usage_error("member remove takes no options%s", "");
        err = env_open(e, NEED_DB | NEED_TOKEN);
        if (!err)
            err = cli_record_open(e->cfg, &rec, "the change");
        if (err)
            return fail(err);
        struct member_change mc;
        err = member_change_begin(e, a.pos[1], a.pos[2], &mc);
        if (!err)
            err = cli_record_started(&rec, "member-remove", a.pos[1],
                                     json_pack("{s:s}", "member", mc.prev != NULL ? mc.prev->email : a.pos[2]));
        if (!err)
            err = gs_member_remove_ex(e->st, e->hsm, NULL, e->cfg, a.pos[1], a.pos[2], &rm);
        const char *removed = rm.email[0] != '\0' ? rm.email : a.pos[2]; /* as stored */
        if (rm.email[0] != '\0')
            mc.email = rm.email;
        json_t *detail = audit_removal_detail(removed, rm.secret_version, rm.key_version, rm.rotate_elsewhere);
        rc = cli_record_done_or_undo(&rec, "member-remove", a.pos[1],
                                     rm.key_version ? (long)rm.key_version : -1, err, detail, member_undo,
                                     &mc);
        member_change_end(&mc);
        if (rc != 0)
            return rc;
        printf("member %s removed from %s", removed, a.pos[1]);
        if (rm.secret_version)
            printf("; new secret key version %u", rm.secret_version);
        printf("\n");
        if (rm.key_version)
            printf("group key rotated to version %u: the group allows local-key, so %s may hold a copy of the "
                   "older versions on their own token; mail sent from now on goes to version %u "
                   "(publish `group show %s --cert`, and export it to clones and members)\n",
                   rm.key_version, removed, rm.key_version, a.pos[1]);
        if (rm.rotate_elsewhere)
            printf("no key rotated here: group %s came to this server by `group import`, and the server it came "
                   "from makes its versions: remove %s there too (that rotates), then import the new versions "
                   "here (`group export %s --version N --secret-version N`)\n",
                   a.pos[1], removed, a.pos[1]);
        print_skipped();
        return 0;
    }
    if (strcmp(sub, "add") == 0) {
        gs_role role = GS_ROLE_MEMBER;
        const char *certfile = opt(&a, "--cert"), *outdir = opt(&a, "--out");
        bool issue = opt(&a, "--issue-cert") != NULL;
        char keypath[4096], certpath[4096];
        X509 *cert = NULL;
        bool wrote = false;
        gs_wrap wrap = GS_WRAP_DEFAULT;
        if (opt(&a, "--role") && gs_role_parse(opt(&a, "--role"), &role) != GS_OK)
            return usage_error("member add: unknown --role %s (member, exploder, admin)", opt(&a, "--role"));
        if (opt(&a, "--wrap") && gs_wrap_parse(opt(&a, "--wrap"), &wrap) != GS_OK)
            return usage_error("member add: --wrap must be pkcs1v15 or oaep, not %s", opt(&a, "--wrap"));
        if ((certfile != NULL) == issue)
            return usage_error("member add: give exactly one of --cert FILE or --issue-cert --out DIR%s", "");
        if (issue != (outdir != NULL))
            return usage_error("member add: --issue-cert and --out DIR go together%s", "");
        if ((err = member_change_open(e, certfile, &cert, &rec)) != GS_OK)
            return fail(err);
        /* Under the lock from here: a duplicate or an unknown group is
         * refused before files are made, and before the record of the
         * change started. */
        struct member_change mc;
        err = member_change_begin(e, a.pos[1], a.pos[2], &mc);
        if (!err && mc.prev != NULL)
            err = gs_err_set(GS_ERR_EXISTS, "%s is already a member", a.pos[2]);
        if (!err && issue)
            err = env_open(e, NEED_CA);
        if (!err)
            err = cli_record_started(&rec, "member-add", a.pos[1],
                                     json_pack("{s:s,s:s}", "member", a.pos[2], "role", gs_role_name(role)));
        if (!err && issue) {
            err = issue_member_cert(e, a.pos[2], outdir, &cert, keypath, certpath, sizeof(keypath));
            wrote = err == GS_OK;
        }
        if (!err)
            err = gs_member_add_wrap(e->st, a.pos[1], a.pos[2], role, cert, wrap);
        if (!err)
            member_change_made(&mc);
        member_change_files(&mc, &err, wrote, a.pos[1], a.pos[2], cert, keypath, certpath);
        X509_free(cert);
        rc = cli_record_done_or_undo(&rec, "member-add", a.pos[1], -1, err,
                                     json_pack("{s:s,s:s}", "member", a.pos[2], "role", gs_role_name(role)),
                                     member_undo, &mc);
        member_change_end(&mc);
        if (rc != 0)
            return rc;
        printf("member %s added to %s as %s\n", a.pos[2], a.pos[1], gs_role_name(role));
        if (wrote)
            printf("wrote %s and %s\n", certpath, keypath);
        return 0;
    }
    return usage_error("member: unknown subcommand %s", sub);
}

/* ---- check ----------------------------------------------------------------------- */

static const char *yn(bool b) { return b ? "yes" : "no"; }

/* The key table of `check`: rows are kept until the audit ends so that
 * the GROUP and LABEL columns are as wide as their longest entry (a key
 * adopted with --use-key is named by its whole pkcs11: URI) and every
 * column stays in line; a width is capped so one very long URI makes its
 * own row long rather than every row. */
#define CHECK_GROUP_W 16
#define CHECK_LABEL_W 30
#define CHECK_W_MAX 120
#define CHECK_ROWS_MAX 100000

struct check_line {
    char *group, *label, *rest; /* "rest": kind, version and group come first */
    size_t group_cols, label_cols; /* characters shown (term_text) */
    char kind[8], ver[16];
};

/* A label as a terminal may show it: a token's labels are anyone's with
 * the user PIN, and an escape sequence printed as it is would drive the
 * operator's terminal (clear it, retitle it, hide lines), a tab or a
 * multi-byte character move the columns after it. Printable ASCII and
 * UTF-8 characters (not C1 controls) are kept; every other byte, and the
 * backslash, is shown as \xNN. *cols: the characters shown. NULL when out
 * of memory. */
static char *term_text(const char *s, size_t *cols)
{
    size_t len = strlen(s), n = 0, k = 0;
    char *out;

    if (len > (SIZE_MAX - 1) / 4 || (out = malloc(len * 4 + 1)) == NULL)
        return NULL;
    for (size_t i = 0; i < len;) {
        const unsigned char *p = (const unsigned char *)s + i;
        size_t seq = 0;
        if (p[0] >= 0x20 && p[0] < 0x7f && p[0] != '\\')
            seq = 1;
        else if (p[0] >= 0xc2 && p[0] <= 0xdf && i + 1 < len && (p[1] & 0xc0) == 0x80)
            seq = p[0] == 0xc2 && p[1] < 0xa0 ? 0 : 2; /* U+0080..U+009F: C1 controls (0x9b: CSI) */
        else if (p[0] >= 0xe0 && p[0] <= 0xef && i + 2 < len && (p[1] & 0xc0) == 0x80 && (p[2] & 0xc0) == 0x80 &&
                 !(p[0] == 0xe0 && p[1] < 0xa0) && !(p[0] == 0xed && p[1] > 0x9f))
            seq = 3;
        else if (p[0] >= 0xf0 && p[0] <= 0xf4 && i + 3 < len && (p[1] & 0xc0) == 0x80 && (p[2] & 0xc0) == 0x80 &&
                 (p[3] & 0xc0) == 0x80 && !(p[0] == 0xf0 && p[1] < 0x90) && !(p[0] == 0xf4 && p[1] > 0x8f))
            seq = 4;
        if (seq > 0) {
            memcpy(out + n, p, seq);
            n += seq;
            i += seq;
            k++;
        } else {
            (void)snprintf(out + n, 5, "\\x%02x", p[0]);
            n += 4;
            i++;
            k += 4;
        }
    }
    out[n] = '\0';
    *cols = k;
    return out;
}

/* check's token line. The token's own strings go to the operator's
 * terminal from any token (a network HSM's, a p11-kit RPC peer's): escaped
 * as object labels are (term_text). */
static void print_token_line(const char *uri, const hsm_token_info *ti)
{
    size_t cols;
    char *label = term_text(ti->label, &cols), *maker = term_text(ti->manufacturer, &cols),
         *model = term_text(ti->model, &cols), *serial = term_text(ti->serial, &cols);

    if (label != NULL && maker != NULL && model != NULL && serial != NULL)
        printf("token     OK   %s (label \"%s\", %s %s, serial %s)\n", uri, label, maker, model, serial);
    else
        printf("token     OK   %s\n", uri);
    free(label);
    free(maker);
    free(model);
    free(serial);
}

struct check_table {
    struct check_line *lines;
    size_t n, cap;
    bool nomem; /* a row could not be kept: printed at once instead */
};

static int check_width(int base, size_t len) { return len > (size_t)base ? (len > CHECK_W_MAX ? CHECK_W_MAX : (int)len) : base; }

/* Padded by the characters shown, not by bytes (a UTF-8 label). */
static void check_print_line(const struct check_line *l, int gw, int lw)
{
    int gp = l->group_cols < (size_t)gw ? gw - (int)l->group_cols : 0;
    int lp = l->label_cols < (size_t)lw ? lw - (int)l->label_cols : 0;

    printf("%-6s %s%*s %-4s %s%*s %s\n", l->kind, l->group, gp, "", l->ver, l->label, lp, "", l->rest);
}

static void check_line_free(struct check_line *l)
{
    free(l->group);
    free(l->label);
    free(l->rest);
}

static void check_row(void *arg, const gs_key_audit_row *r)
{
    struct check_table *t = arg;
    struct check_line l;
    char extra[320] = "", rest[512];

    memset(&l, 0, sizeof(l));
    (void)util_strlcpy(l.kind, r->kind, sizeof(l.kind));
    (void)util_strlcpy(l.ver, "-", sizeof(l.ver));
    if (r->version)
        (void)snprintf(l.ver, sizeof(l.ver), "v%u", r->version);
    /* A replicable key's custody and an accepted weakening are named on
     * the key's own row, never silent. */
    bool custody = r->ok && r->custody != NULL && r->custody[0];
    if (custody || r->accepted[0] || r->note[0])
        (void)snprintf(extra, sizeof(extra), "%s%s%s%s%s%s%s%s", custody ? " (" : "", custody ? r->custody : "",
                       custody ? ")" : "", r->accepted[0] ? " (accepted weakening: " : "", r->accepted,
                       r->accepted[0] ? ")" : "", r->note[0] ? "; " : "", r->note);
    if (r->info) {
        const hsm_key_info *i = r->info;
        (void)snprintf(rest, sizeof(rest), "%-4s %-5s %-6s %-5s %-4s %-4s %-4s %-4s %s%s%s", yn(i->sensitive),
                       yn(i->always_sensitive), yn(i->never_extractable), yn(i->extractable), yn(i->decrypt),
                       yn(i->unwrap), yn(i->sign), yn(i->wrap), r->ok ? "OK" : "PROBLEM: ", r->problem, extra);
    } else {
        (void)snprintf(rest, sizeof(rest), "%-4s %-5s %-6s %-5s %-4s %-4s %-4s %-4s %s%s%s", "-", "-", "-", "-", "-",
                       "-", "-", "-", r->ok ? "OK" : "PROBLEM: ", r->problem, extra);
    }
    l.group = term_text(r->group[0] ? r->group : "-", &l.group_cols);
    l.label = term_text(r->info || r->label[0] ? r->label : "-", &l.label_cols);
    l.rest = strdup(rest);
    if (l.group == NULL || l.label == NULL || l.rest == NULL || t->n >= CHECK_ROWS_MAX) {
        t->nomem = true;
        goto out;
    }
    if (t->n == t->cap) {
        size_t ncap = t->cap ? t->cap * 2 : 16;
        struct check_line *nl = realloc(t->lines, ncap * sizeof(*nl));
        if (nl == NULL) {
            t->nomem = true;
            goto out;
        }
        t->lines = nl;
        t->cap = ncap;
    }
    t->lines[t->n++] = l;
    return;
out:
    /* Never lost: a row that cannot be kept is shown as it comes. */
    if (l.group != NULL && l.label != NULL && l.rest != NULL)
        check_print_line(&l, CHECK_GROUP_W, CHECK_LABEL_W);
    else
        printf("%-6s %s %s %s (out of memory)\n", l.kind, l.group != NULL ? l.group : "?", l.ver,
               l.label != NULL ? l.label : "?");
    check_line_free(&l);
}

/* Prints the header and the kept rows, then frees them. */
static void check_table_flush(struct check_table *t)
{
    int gw = CHECK_GROUP_W, lw = CHECK_LABEL_W;

    for (size_t i = 0; i < t->n; i++) {
        gw = check_width(gw, t->lines[i].group_cols);
        lw = check_width(lw, t->lines[i].label_cols);
    }
    printf("%-6s %-*s %-4s %-*s %-4s %-5s %-6s %-5s %-4s %-4s %-4s %-4s %s\n", "KIND", gw, "GROUP", "VER", lw, "LABEL",
           "SENS", "ASENS", "NEVERX", "EXTR", "DEC", "UNWR", "SIGN", "WRAP", "STATUS");
    for (size_t i = 0; i < t->n; i++) {
        check_print_line(&t->lines[i], gw, lw);
        check_line_free(&t->lines[i]);
    }
    free(t->lines);
    memset(t, 0, sizeof(*t));
}

/* ---- check: what the token can do ------------------------------------------------------ */

static void mech_flags_text(unsigned f, char *buf, size_t n)
{
    static const struct {
        unsigned bit;
        const char *name;
    } names[] = {{HSM_MF_GENERATE, "generate"}, {HSM_MF_ENCRYPT, "encrypt"}, {HSM_MF_DECRYPT, "decrypt"},
                 {HSM_MF_SIGN, "sign"},         {HSM_MF_WRAP, "wrap"},       {HSM_MF_UNWRAP, "unwrap"},
                 {HSM_MF_DERIVE, "derive"}};
    size_t used = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < GS_ARRAY_LEN(names); i++)
        if ((f & names[i].bit) && !append_word(buf, n, &used, names[i].name, strlen(names[i].name)))
            return;
    if (used == 0)
        (void)util_strlcpy(buf, "-", n);
}

static const char *attr_support_text(hsm_attr_support a)
{
    return a == HSM_ATTR_YES ? "yes" : a == HSM_ATTR_SESSION_ONLY ? "session objects only" : "no";
}

/* The capability table of `check`: what every group's policy is chosen
 * from. Lines start with "cap " so that scripts can pick them out. */
static void print_caps(hsm_ctx *hsm)
{
    hsm_caps c;
    char flags[96];

    (void)hsm_caps_get(hsm, &c);
    printf("capabilities of the token (each group's key policy is chosen from them):\n");
    if (c.incomplete)
        printf("cap probe                  incomplete: %s; what it could not try reads \"no\" below, and no key "
               "is generated until a probe completes: run check again\n",
               c.incomplete_why);
    if (c.max_sessions > 0)
        printf("cap sessions               at most %lu (C_GetTokenInfo); the pool opens no more\n", c.max_sessions);
    else
        printf("cap sessions               no limit reported (C_GetTokenInfo)\n");
    printf("cap login                  %s%s\n", c.login_required ? "required" : "not required",
           c.protected_auth_path ? "; PIN pad (protected authentication path)" : "");
    if (c.pin_to_be_changed || c.pin_count_low)
        printf("cap user PIN               %s%s%s\n",
               c.pin_to_be_changed ? "to be changed (CKF_USER_PIN_TO_BE_CHANGED): change it on the token "
                                     "(pkcs11-tool --change-pin) and in pin_source"
                                   : "",
               c.pin_to_be_changed && c.pin_count_low ? "; " : "",
               c.pin_count_low ? "wrong PINs were tried (CKF_USER_PIN_COUNT_LOW)" : "");
    if (c.write_protected)
        printf("cap write-protected        yes (CKF_WRITE_PROTECTED): serves with read-only sessions; no key can be "
               "made or deleted on it\n");
    for (int m = 0; m < HSM_MECH_COUNT_; m++) {
        if (c.mech[m].present)
            mech_flags_text(c.mech[m].flags, flags, sizeof(flags));
        char sizes[160] = "";
        if (c.mech[m].present && (m == HSM_MECH_RSA_KEYGEN || m == HSM_MECH_EC_KEYGEN) && c.mech[m].max_bits > 0)
            snprintf(sizes, sizeof(sizes), " (%lu-%lu bits)", c.mech[m].min_bits, c.mech[m].max_bits);
        if (!c.mech[m].present && c.mech[m].info_rv != 0)
            snprintf(sizes, sizeof(sizes), ": listed, but C_GetMechanismInfo fails (%s) in %d probes in a row: "
                     "counted as absent", hsm_rv_name(c.mech[m].info_rv), HSM_PROBE_TRIES);
        printf("cap mechanism %-28s %s%s%s\n", hsm_mech_name((hsm_mech)m), c.mech[m].present ? "yes: " : "no",
               c.mech[m].present ? flags : "", sizes);
    }
    printf("cap attribute %-28s %s%s%s\n", "CKA_ALLOWED_MECHANISMS", attr_support_text(c.allowed_mechanisms),
           c.allowed_mechanisms_why[0] ? ": " : "", c.allowed_mechanisms_why);
    printf("cap attribute %-28s %s%s%s\n", "CKA_UNWRAP_TEMPLATE", attr_support_text(c.unwrap_template),
           c.unwrap_template_why[0] ? ": " : "", c.unwrap_template_why);
    {
        /* The very test group create applies (policy.c): a token without
         * RSA-OAEP (many PIV and OpenPGP cards: PKCS#1 v1.5 and raw RSA
         * only) is refused there, and check says so before anyone tries. */
        gs_policy pol;
        /* A group taking PKCS#1 v1.5 (group create's default) asks more:
         * CKM_RSA_PKCS decryption, a rejection key. Where only --oaep-only
         * groups can be made, a bare "yes" promised the default. */
        if (gs_policy_choose(&c, HSM_KEYTYPE_RSA, GS_METHOD_TLS, false, true, &pol) != GS_OK)
            printf("cap group keys (RSA)       no: %s; group create refuses\n", gs_err_detail());
        else if (gs_policy_choose(&c, HSM_KEYTYPE_RSA, GS_METHOD_TLS, true, true, &pol) != GS_OK)
            printf("cap group keys (RSA)       yes, --oaep-only groups only: %s; group create refuses one taking "
                   "PKCS#1 v1.5 (the default)\n",
                   gs_err_detail());
        else
            printf("cap group keys (RSA)       yes\n");
        /* By what the token lists, then by a trial derive: the X9.63 KDF
         * of its ECDH is not listed (SoftHSM 2.6.1 lists CKM_ECDH1_DERIVE
         * and takes CKD_NULL only), and group create tries it too. */
        unsigned kdfs = 0;
        char kdf_names[32];
        if (gs_policy_choose(&c, HSM_KEYTYPE_EC, GS_METHOD_TLS, false, true, &pol) != GS_OK)
            printf("cap group keys (EC)        no: %s; group create refuses\n", gs_err_detail());
        else if (!hsm_caps_has(&c, HSM_MECH_EC_KEYGEN, HSM_MF_GENERATE))
            printf("cap group keys (EC)        yes, by the mechanisms listed (ECDH, AES key wrap); the X9.63 KDF "
                   "is tried on an adopted key (no EC key generation here)\n");
        else if (hsm_probe_ecdh_kdf(hsm, NULL, 256, &kdfs) != HSM_OK)
            printf("cap group keys (EC)        not tried: %s\n", hsm_last_error_detail());
        else if (kdfs == 0)
            printf("cap group keys (EC)        no: %s, which every RFC 5753 sender's message needs; group create "
                   "refuses\n", hsm_last_error_detail());
        else {
            hashes_text(kdfs, kdf_names, sizeof(kdf_names));
            printf("cap group keys (EC)        yes: ECDH with the X9.63 KDF (%s) and AES key wrap\n", kdf_names);
        }
    }
    printf("cap wrap/unwrap            %s\n",
           c.rewrap_on_token ? "yes: C_UnwrapKey into a session key and C_WrapKey with RSA-OAEP (content keys "
                               "never in server memory)"
                             : "no: new groups re-wrap in software (software-rewrap)");
    printf("cap secret keys            %s\n",
           !c.secret_on_token ? "no: new groups seal their secret keys to a token key pair (secret-sealed)"
           : hsm_caps_has(&c, HSM_MECH_AES_KEY_WRAP, HSM_MF_WRAP)
               ? "yes: AES keys wrapped with CKM_AES_KEY_WRAP(_PAD)"
               : "yes, without AES key wrap: RFC 3394/5649 built on CKM_AES_ECB (secret-aes-ecb)");
    printf("cap signatures (CA)        %s\n",
           hsm_caps_has(&c, HSM_MECH_SHA256_RSA_PKCS, HSM_MF_SIGN) ? "CKM_SHA256_RSA_PKCS"
           : hsm_caps_has(&c, HSM_MECH_RSA_PKCS, HSM_MF_SIGN)
               ? "CKM_RSA_PKCS over a DigestInfo hashed here (no CKM_SHA256_RSA_PKCS; the key stays on the token)"
               : "no RSA signatures");
    {
        char lacks[1024];
        if (hsm_caps_trusted_wrap(&c, lacks, sizeof(lacks)))
            printf("cap trusted wrap           yes: replicable groups and the key ceremony (group export)\n");
        else
            printf("cap trusted wrap           no: --replicable is refused; missing: %s\n", lacks);
        /* The attributes' trials are on session keys (a probe writes
         * nothing to the token), while the transport key is a token key:
         * NSS softokn keeps CKA_ALLOWED_MECHANISMS on session keys only,
         * and a plain "yes" was followed by token transport-key's refusal.
         * Said as what it is. */
        if (hsm_caps_receive(&c, lacks, sizeof(lacks)))
            printf("cap receive keys           yes, as far as session keys show: the key ceremony's receiving side "
                   "(token transport-key, group import); its transport key is a token key, which a token keeping "
                   "CKA_ALLOWED_MECHANISMS or CKA_UNWRAP_TEMPLATE on session keys only (NSS softokn) refuses at "
                   "token transport-key\n");
        else
            printf("cap receive keys           no: token transport-key is refused; missing: %s\n", lacks);
    }
    if (c.module_reinitialised)
        printf("cap note                   a probe broke the module's connection; it was re-initialised\n");
}

/* Each group's recorded policy, and for its current key what the token
 * does with it: OAEP hashes (real trials) and a login per operation. */
static void print_group_policies(struct env *e)
{
    gs_store_group **groups = NULL;
    size_t ng = 0;
    hsm_caps c;
    bool v15_missing;

    if (gs_store_group_list(e->st, &groups, &ng) != GS_OK)
        return;
    /* A group that takes PKCS#1 v1.5 reads it only by CKM_RSA_PKCS
     * decryption on the token (group create refuses such a group where
     * the token has none, but the token's policy may have changed since,
     * or the group was made before that refusal): its keys are sound, so
     * the key table says OK while every v1.5 sender's message is 400
     * unsupported_algorithm. Not judged from an incomplete probe. */
    v15_missing = hsm_caps_get(e->hsm, &c) == HSM_OK && !c.incomplete &&
                  !hsm_caps_has(&c, HSM_MECH_RSA_PKCS, HSM_MF_DECRYPT);
    for (size_t i = 0; i < ng; i++) {
        gs_store_group_key *keys = NULL;
        size_t nk = 0;
        char line[512], pol[96], dec[32], unw[32];
        gs_policy p;

        if (gs_store_group_keys(e->st, groups[i]->id, &keys, &nk) != GS_OK)
            continue;
        for (size_t k = 0; k < nk; k++) {
            hsm_key *key = NULL;
            hsm_key_info ki;
            unsigned d = 0, u = 0;
            memset(&ki, 0, sizeof(ki));
            if (keys[k].state != GS_KEY_CURRENT)
                continue;
            /* as group show and discovery say it: a group that refuses
             * PKCS#1 v1.5 has no rejection key, one without group-secret
             * no secret keys, whatever the record's defaults read */
            if (gs_policy_parse(groups[i]->policy, &p) == GS_OK)
                gs_policy_group_format(&p, groups[i]->methods, groups[i]->allow_pkcs1v15, pol, sizeof(pol));
            else
                (void)util_strlcpy(pol, "(unreadable)", sizeof(pol));
            weakenings_line(groups[i], keys[k].weakenings, line, sizeof(line));
            printf("policy %-16s %s; weakenings: %s\n", groups[i]->name, pol, line);
            if (v15_missing && groups[i]->allow_pkcs1v15)
                printf("policy %-16s WARNING: takes PKCS#1 v1.5 senders (made without --oaep-only), but the token "
                       "offers no %s decryption: their messages are refused (400 unsupported_algorithm)\n",
                       groups[i]->name, hsm_mech_name(HSM_MECH_RSA_PKCS));
            bool have_info = hsm_key_find(e->hsm, keys[k].token_label, HSM_CLASS_PRIVATE, &key) == HSM_OK &&
                             hsm_key_get_info(e->hsm, key, &ki) == HSM_OK;
            if (have_info && ki.type == HSM_KEYTYPE_EC && hsm_probe_ecdh_kdf(e->hsm, key, 0, &d) == HSM_OK) {
                /* Its keys are sound on a token whose ECDH takes no X9.63
                 * KDF (SoftHSM 2.6.1: CKD_NULL only; a group made before
                 * group create tried it, or adopted, or on another token
                 * replaced since): the key table says OK while every RFC
                 * 5753 message is refused at unwrap. */
                if (d == 0)
                    printf("policy %-16s WARNING: v%u is an EC key, but %s: every RFC 5753 sender's message "
                           "is refused (400 unsupported_algorithm)\n",
                           groups[i]->name, keys[k].version, hsm_last_error_detail());
                else {
                    hashes_text(d, dec, sizeof(dec));
                    printf("policy %-16s v%u ECDH X9.63 KDF: %s\n", groups[i]->name, keys[k].version, dec);
                }
            }
            /* The same refusal by the key: one adopted with RSA-OAEP alone
             * allowed (as group create's hint once said to make it) is
             * sound for OAEP, and the token refuses it CKM_RSA_PKCS. */
            if (have_info && groups[i]->allow_pkcs1v15 && ki.type == HSM_KEYTYPE_RSA && gs_key_refuses_pkcs1v15(&ki))
                printf("policy %-16s WARNING: takes PKCS#1 v1.5 senders (made without --oaep-only), but key version "
                       "%u's CKA_ALLOWED_MECHANISMS leaves out %s: their messages are refused (400 "
                       "unsupported_algorithm)\n",
                       groups[i]->name, keys[k].version, hsm_mech_name(HSM_MECH_RSA_PKCS));
            if (have_info && ki.type == HSM_KEYTYPE_RSA && hsm_key_probe_oaep(e->hsm, key, &d, &u) == HSM_OK) {
                hashes_text(d, dec, sizeof(dec));
                hashes_text(u, unw, sizeof(unw));
                printf("policy %-16s v%u OAEP hashes: decrypt %s; unwrap %s; login per operation: %s\n",
                       groups[i]->name, keys[k].version, ki.decrypt ? dec : "(no CKA_DECRYPT)",
                       ki.unwrap ? unw : "(no CKA_UNWRAP)",
                       ki.always_authenticate ? "yes (CKA_ALWAYS_AUTHENTICATE)" : "no");
            }
            hsm_key_free(key);
        }
        gs_store_group_keys_free(keys, nk);
    }
    gs_store_group_list_free(groups, ng);
}

/* One row of the file checks; returns 1 for a problem (added up). */
static unsigned file_row(const char *what, bool ok, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static unsigned file_row(const char *what, bool ok, const char *fmt, ...)
{
    va_list ap;
    printf("%-10s%s", what, ok ? "OK   " : "PROBLEM: ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    return ok ? 0 : 1;
}

/* The first certificate of a PEM chain file (what serve uses as its own),
 * read as gs_tls_use_chain_pem reads it: a TRUSTED CERTIFICATE block (an
 * `openssl x509 -trustout` file) is serve's certificate too, not skipped
 * for the intermediate after it. */
static const char *read_leaf_cert(const char *path, X509 **out)
{
    BIO *bio = BIO_new_file(path, "r");
    *out = NULL;
    if (bio == NULL) {
        ERR_clear_error();
        return "unreadable";
    }
    *out = PEM_read_bio_X509_AUX(bio, NULL, util_pem_no_passphrase, NULL);
    BIO_free(bio);
    ERR_clear_error();
    return *out ? NULL : "no PEM certificate in it";
}

/* The DNS and IP names of a certificate's SAN, "DNS:a, IP:b", into buf;
 * "no SAN DNS or IP name" when it has none (clients then fall back to
 * the subject CN). */
static void san_names_text(X509 *cert, char *buf, size_t size)
{
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    size_t used = 0;

    buf[0] = '\0';
    for (int i = 0; names != NULL && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        char ip[64] = "";
        int n = 0;
        if (gn->type == GEN_DNS) {
            n = snprintf(buf + used, size - used, "%sDNS:%.*s", used ? ", " : "",
                         ASN1_STRING_length(gn->d.dNSName),
                         (const char *)ASN1_STRING_get0_data(gn->d.dNSName));
        } else if (gn->type == GEN_IPADD) {
            const unsigned char *a = ASN1_STRING_get0_data(gn->d.iPAddress);
            int len = ASN1_STRING_length(gn->d.iPAddress);
            if (len != 4 && len != 16)
                continue;
            if (inet_ntop(len == 4 ? AF_INET : AF_INET6, a, ip, sizeof(ip)) == NULL)
                continue;
            n = snprintf(buf + used, size - used, "%sIP:%s", used ? ", " : "", ip);
        } else {
            continue;
        }
        if (n < 0 || (size_t)n >= size - used) { /* cut: what fits is enough to see the point */
            buf[used] = '\0';
            break;
        }
        used += (size_t)n;
    }
    GENERAL_NAMES_free(names);
    ERR_clear_error();
    for (size_t i = 0; i < used; i++) /* an IA5String may hold control characters */
        if ((unsigned char)buf[i] < 0x20 || (unsigned char)buf[i] >= 0x7f)
            buf[i] = '?';
    if (used == 0)
        (void)snprintf(buf, size, "no SAN DNS or IP name");
}

/* 1 when a client takes cert for host as groupmail's libcurl (OpenSSL
 * backend) checks it: one trailing dot of host ignored; an address among
 * the SAN IP addresses, a name among the SAN DNS names, a wildcard only
 * as the whole first label ("*.example.org", not "g*.example.org"); the
 * subject CN only when the SAN has no DNS and no IP name at all (an IP
 * SAN alone rules out the CN, where OpenSSL's own check would take it). */
static int cert_is_for_host(X509 *cert, const char *host)
{
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    unsigned char addr[16];
    size_t n = strlen(host);
    bool has_san = false;
    int match;

    for (int i = 0; names != NULL && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        has_san = has_san || gn->type == GEN_DNS || gn->type == GEN_IPADD;
    }
    GENERAL_NAMES_free(names);
    if (inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1)
        match = has_san ? X509_check_ip_asc(cert, host, 0)
                        : X509_check_host(cert, host, n, X509_CHECK_FLAG_NO_WILDCARDS, NULL);
    else
        match = X509_check_host(
            cert, host, n > 1 && host[n - 1] == '.' ? n - 1 : n,
            X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS | (has_san ? X509_CHECK_FLAG_NEVER_CHECK_SUBJECT : 0), NULL);
    ERR_clear_error();
    return match == 1;
}

/* [certsrv] url: members fetch membership certificates there and verify
 * the certificate server by the [tls] certificate it listens with, so the
 * URL's host must be one of that certificate's names, as clients check
 * them (cert_is_for_host); else every fetch fails with a TLS name error.
 * A warning, not counted: a proxy that ends TLS with its own certificate
 * may be in front. Silent without [certsrv] listen. */
static void check_certsrv_url(const struct gs_config *cfg, X509 *cert)
{
    char host[256], names[512], listen_url[300];
    bool is_default;

    if (cfg->certsrv.listen == NULL || cfg->certsrv.url == NULL || cert == NULL)
        return;
    (void)snprintf(listen_url, sizeof(listen_url), "https://%s", cfg->certsrv.listen);
    is_default = strcmp(cfg->certsrv.url, listen_url) == 0;
    if (util_url_host(cfg->certsrv.url, host, sizeof(host)) != UTIL_OK) {
        printf("%-10sWARNING: [certsrv] url %s: no host in it that clients could reach\n", "certsrv",
               cfg->certsrv.url);
        return;
    }
    if (cert_is_for_host(cert, host)) {
        printf("%-10sOK   [certsrv] url %s: a name of the [tls] cert\n", "certsrv", cfg->certsrv.url);
        return;
    }
    san_names_text(cert, names, sizeof(names));
    printf(
        "%-10sWARNING: [certsrv] url %s: %s is not among the [tls] cert's names (%s), so members' "
        "membership certificate fetches fail with a TLS name error; set url to https://NAME:PORT with a name "
        "the certificate is for%s\n",
        "certsrv", cfg->certsrv.url, host, names,
        is_default ? " (url not set: it defaults to the listen address)" : "");
}

/* A certificate's name (its subject, or issuer) for check's lines, one line. */
static void name_text(const X509_NAME *name, char *buf, size_t cap)
{
    BIO *b = BIO_new(BIO_s_mem());
    int n = 0;

    buf[0] = '\0';
    if (b != NULL && X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253) >= 0)
        n = BIO_read(b, buf, (int)(cap > INT_MAX ? INT_MAX : cap - 1));
    buf[n > 0 ? n : 0] = '\0';
    for (char *p = buf; *p; p++) /* one printable line, whatever the name holds */
        if ((unsigned char)*p < 32 || *p == 127)
            *p = '?';
    BIO_free(b);
    ERR_clear_error();
}

/* The subject of a certificate for check's lines, one line. */
static void subject_text(X509 *x, char *buf, size_t cap)
{
    name_text(X509_get_subject_name(x), buf, cap);
}

/* Forgives the one refusal of a CA verified as the chain's end that is no
 * refusal in a client's chain: its extendedKeyUsage judged as a client's
 * (its use as a CA is checked apart). */
static int ca_as_end_cb(int ok, X509_STORE_CTX *xc)
{
    if (!ok && X509_STORE_CTX_get_error_depth(xc) == 0 &&
        X509_STORE_CTX_get_error(xc) == X509_V_ERR_INVALID_PURPOSE)
        return 1;
    return ok;
}

/* Why no client certificate x issued verifies in serve's chain above x,
 * made from the file (store: its certificates and CRLs, with serve's
 * flags): serve takes no partial chain, so x's issuers up to a
 * self-signed one must be in the file, valid now, CAs for client
 * authentication, within their pathLenConstraint, and, with CRLs in the
 * file, not revoked and with current CRLs of their issuers; x itself must
 * be a CA for client authentication. NULL when it verifies. */
static const char *client_ca_chain_why(X509 *x, X509_STORE *store, char *why, size_t cap)
{
    X509_STORE_CTX *xc = X509_STORE_CTX_new();
    STACK_OF(X509) *chain;
    char at[256], issuer[256];
    const char *rc = why;
    int is_ca = X509_check_ca(x) != 0, trust;
    long plen;

    if (xc == NULL || !X509_STORE_CTX_init(xc, store, x, NULL)) {
        (void)snprintf(why, cap, "out of memory verifying its chain");
        goto out;
    }
    X509_STORE_CTX_set_purpose(xc, X509_PURPOSE_SSL_CLIENT); /* as tls_peer_check */
    if (is_ca)
        X509_STORE_CTX_set_verify_cb(xc, ca_as_end_cb);
    if (X509_verify_cert(xc) != 1) {
        int e = X509_STORE_CTX_get_error(xc);
        X509 *cur = X509_STORE_CTX_get_current_cert(xc);
        subject_text(cur != NULL ? cur : x, at, sizeof(at));
        if (e == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY || e == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT)
            (void)snprintf(why, cap,
                           "the certificate that issued %s is not in the file: serve takes no partial chain, "
                           "the CAs above it up to the self-signed root must be in the file too (%s)",
                           at, X509_verify_cert_error_string(e));
        else {
            name_text(X509_get_issuer_name(cur != NULL ? cur : x), issuer, sizeof(issuer));
            (void)snprintf(why, cap, "its chain in the file does not verify at %s (issued by %s): %s", at, issuer,
                           X509_verify_cert_error_string(e));
        }
        goto out;
    }
    /* As an issuer in a client's chain: a CA for client authentication
     * (unless trust settings of a TRUSTED CERTIFICATE say otherwise, as
     * OpenSSL's check_purpose takes them), and within the pathLenConstraint
     * of the CAs above, counted with x itself among the intermediates. */
    trust = X509_check_trust(x, X509_TRUST_SSL_CLIENT, X509_TRUST_NO_SS_COMPAT);
    if (is_ca && (trust == X509_TRUST_REJECTED ||
                  (trust != X509_TRUST_TRUSTED && X509_check_purpose(x, X509_PURPOSE_SSL_CLIENT, 1) == 0))) {
        (void)snprintf(why, cap,
                       "it may not issue client certificates: its extendedKeyUsage (or Netscape certificate "
                       "type, or trust setting) leaves out client authentication (unsupported certificate purpose)");
        goto out;
    }
    chain = X509_STORE_CTX_get0_chain(xc);
    plen = is_ca && !(X509_get_extension_flags(x) & EXFLAG_SI);
    for (int j = 1; is_ca && chain != NULL && j < sk_X509_num(chain); j++) {
        X509 *up = sk_X509_value(chain, j);
        if (X509_get_pathlen(up) >= 0 && plen > X509_get_pathlen(up)) {
            subject_text(up, issuer, sizeof(issuer));
            (void)snprintf(why, cap,
                           "it is beyond the pathLenConstraint %ld of %s above it: no client certificate it "
                           "issued verifies (path length constraint exceeded)",
                           X509_get_pathlen(up), issuer);
            goto out;
        }
        plen += !(X509_get_extension_flags(up) & EXFLAG_SI);
    }
    rc = NULL;
out:
    X509_STORE_CTX_free(xc);
    ERR_clear_error();
    return rc;
}

/* Why CA certificate x of a client CA file verifies no client now: not a
 * CA at all (OpenSSL's chain check refuses it as an issuer: "invalid CA
 * certificate"; but for a self-signed one, which verifies itself), not
 * valid now, with CRLs in the file (serve then checks every certificate
 * of a chain, X509_V_FLAG_CRL_CHECK_ALL) no current CRL of its own, or
 * its chain in the file (client_ca_chain_why). NULL when it does. */
static const char *client_ca_unusable(X509 *x, STACK_OF(X509_INFO) * infos, int ncrl, X509_STORE *store, char *why,
                                      size_t cap)
{
    char valid[96], when[40];
    EVP_PKEY *pk = X509_get0_pubkey(x);
    const ASN1_TIME *stale = NULL;
    int current = 0, nosign = 0;

    /* A self-signed one stands for itself: the client presenting that very
     * certificate verifies (a pinned client), so it is not the mistake of a
     * CA's leaf put where its CA belongs. */
    if (X509_check_ca(x) == 0 && X509_self_signed(x, 1) != 1) {
        ERR_clear_error();
        (void)snprintf(why, cap,
                       "not a CA certificate (no basicConstraints CA:TRUE, or a keyUsage without "
                       "keyCertSign): no client certificate it issued verifies (invalid CA certificate)");
        return why;
    }
    if (util_cert_valid_now(x, valid, sizeof(valid)) != 0) {
        (void)snprintf(why, cap, "%s: no client certificate it issued verifies now", valid);
        return why;
    }
    if (ncrl == 0)
        return client_ca_chain_why(x, store, why, cap);
    for (int i = 0; i < sk_X509_INFO_num(infos); i++) {
        X509_CRL *crl = sk_X509_INFO_value(infos, i)->crl;
        if (crl == NULL || pk == NULL ||
            X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(x)) != 0 ||
            X509_CRL_verify(crl, pk) != 1)
            continue;
        const ASN1_TIME *next = X509_CRL_get0_nextUpdate(crl);
        if ((X509_get_extension_flags(x) & EXFLAG_KUSAGE) && !(X509_get_key_usage(x) & KU_CRL_SIGN))
            nosign = 1; /* OpenSSL refuses its CRLs: key usage does not include CRL signing */
        else if (X509_cmp_current_time(X509_CRL_get0_lastUpdate(crl)) < 0 &&
            (next == NULL || X509_cmp_current_time(next) > 0))
            current = 1;
        else if (next != NULL && X509_cmp_current_time(next) <= 0)
            stale = next;
    }
    ERR_clear_error();
    if (current)
        return client_ca_chain_why(x, store, why, cap);
    if (nosign) {
        (void)snprintf(why, cap,
                       "its keyUsage leaves out cRLSign, so its CRL is refused (key usage does not include CRL "
                       "signing), and so are the client certificates it issued");
    } else if (stale != NULL) {
        util_asn1_time_text(stale, when, sizeof(when));
        (void)snprintf(why, cap,
                       "its CRL's nextUpdate %s has passed: the client certificates it issued are refused "
                       "until a current CRL is in the file (and serve is sent SIGHUP)",
                       when);
    } else {
        (void)snprintf(why, cap,
                       "no current CRL of its own in the file: with CRLs in it every CA needs one "
                       "(SECURITY.md), so the client certificates it issued are refused");
    }
    return why;
}

/* [tls] client_ca: readable, with a certificate, and a CA in it that can
 * verify a client now. A CA that cannot is a warning line of its own (a
 * file may keep an old CA during a rollover); none that can is a problem:
 * serve would refuse every client certificate (401). */
static unsigned check_client_ca(const char *path)
{
    STACK_OF(X509_INFO) *infos = NULL;
    unsigned char *pem = NULL;
    size_t len = 0;
    BIO *bio = NULL;
    X509_STORE *store = NULL;
    const char *why = NULL;
    char subject[256], reason[640];
    int n = 0, ncrl = 0, usable = 0, ur;

    if ((ur = util_read_file(path, GS_TLS_CLIENT_CA_MAX, &pem, &len)) != UTIL_OK)
        why = ur == UTIL_E_TOOBIG ? "larger than the 16 MiB serve reads: serve does not start" : "unreadable";
    else if (len > INT_MAX || (bio = BIO_new_mem_buf(pem, (int)len)) == NULL || (store = X509_STORE_new()) == NULL)
        why = "out of memory";
    else if ((infos = PEM_X509_INFO_read_bio(bio, NULL, util_pem_no_passphrase, NULL)) == NULL)
        why = "not PEM";
    /* The store serve makes of the file (tls.c), by its own function. */
    else if ((ncrl = gs_tls_client_store((const char *)pem, len, store, NULL, &n)) < 0)
        why = "not PEM, or out of memory";
    if (why == NULL && n == 0)
        why = "no certificate in it";
    for (int i = 0; why == NULL && i < sk_X509_INFO_num(infos); i++) {
        X509 *x = sk_X509_INFO_value(infos, i)->x509;
        if (x == NULL)
            continue;
        if (client_ca_unusable(x, infos, ncrl, store, reason, sizeof(reason)) == NULL) {
            usable++;
            continue;
        }
        subject_text(x, subject, sizeof(subject));
        printf("%-10sWARNING: %s: %s: %s\n", "client_ca", path, subject, reason);
    }
    if (why == NULL && usable == 0)
        why = "no CA certificate in it can verify a client certificate now (the lines above say why): serve "
              "would refuse every client certificate";
    X509_STORE_free(store);
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
    BIO_free(bio);
    free(pem);
    ERR_clear_error();
    return file_row("client_ca", why == NULL, "%s%s%s", path, why ? ": " : "", why ? why : "");
}

/* The [tls] cert file put into a TLS context as serve's network process
 * puts it (gs_tls_use_chain_pem): NULL when serve takes it, else why not
 * (in why): a file larger than serve reads, a certificate that cannot be
 * read (a base64 line lost in a paste), or one OpenSSL refuses in a
 * server's chain (the security level: an RSA-1024 key, a SHA-1 signed
 * intermediate), each of which stops serve at start. *ctx holds the
 * chain for check_tls_chain. */
static const char *tls_cert_load(const char *path, SSL_CTX **ctx, char *why, size_t cap)
{
    unsigned char *pem = NULL;
    size_t len = 0;
    unsigned long e;
    char err[256];
    int failed = 0, ur;

    ERR_clear_error();
    if ((ur = util_read_file(path, GS_TLS_CERT_MAX, &pem, &len)) != UTIL_OK) {
        if (ur == UTIL_E_TOOBIG)
            (void)snprintf(why, cap, "larger than the %u KiB serve reads: serve does not start",
                           GS_TLS_CERT_MAX / 1024);
        else
            (void)snprintf(why, cap, "unreadable");
        goto out;
    }
    if ((*ctx = SSL_CTX_new(TLS_server_method())) == NULL) {
        (void)snprintf(why, cap, "out of memory");
        goto out;
    }
    if (gs_tls_use_chain_pem(*ctx, (const char *)pem, len, &failed) == 1) {
        why = NULL;
        goto out;
    }
    e = ERR_peek_error();
    ERR_error_string_n(e, err, sizeof(err));
    (void)snprintf(why, cap, "certificate %d of the file %s (%s): serve does not start", failed,
                   ERR_GET_LIB(e) == ERR_LIB_PEM ? "cannot be read" : "is refused", err);
out:
    free(pem);
    ERR_clear_error();
    return why;
}

/* The chain certificates after the first in the [tls] cert file that are
 * not valid now: serve sends them, and a client building the chain
 * through one refuses the server (an intermediate left at its old
 * version). A warning, not counted: an expired cross-signature may be sent
 * on purpose, for clients with an old trust store. */
static void check_tls_chain(const char *path, SSL_CTX *ctx)
{
    STACK_OF(X509) *chain = NULL;
    char valid[96], subject[256];

    if (ctx == NULL || SSL_CTX_get0_chain_certs(ctx, &chain) != 1)
        return;
    for (int i = 0; chain != NULL && i < sk_X509_num(chain); i++) {
        X509 *x = sk_X509_value(chain, i);
        if (util_cert_valid_now(x, valid, sizeof(valid)) == 0)
            continue;
        subject_text(x, subject, sizeof(subject));
        printf("%-10sWARNING: %s: chain certificate %d (%s) %s: serve sends it, and clients that build the "
               "chain through it refuse the server (replace it with its current version, unless it is a "
               "cross-signature kept on purpose)\n",
               "tls cert", path, i + 2, subject, valid);
    }
}

/* A [tls] key file others may read lets any local user take the server's
 * name (operations.md, "Files and owners": root:groupsrv 0640). Group read
 * is the layout the packages use, so only the others' read and write bits
 * count (their execute bit opens nothing of a key file); stat follows a
 * link to the file serve reads. */
static void check_tls_key_mode(const char *path)
{
    struct stat sb;

    if (stat(path, &sb) != 0 || (sb.st_mode & (S_IROTH | S_IWOTH)) == 0)
        return;
    printf("%-10sWARNING: %s: mode %04o: the server's TLS private key is open to every user of this host "
           "(chmod o-rwx %s; operations.md, \"Files and owners\": root:groupsrv 0640)\n",
           "tls key", path, (unsigned)(sb.st_mode & 07777), path);
}

/* [tls] cert, key, client_ca: what serve will load, checked the same way:
 * the files are readable, the key is the certificate's, the certificate is
 * valid now, the client CA file holds at least one certificate. A key that
 * is a pkcs11: URI is on the token; serve checks it there at start. */
static unsigned check_tls(const struct gs_config *cfg)
{
    unsigned problems = 0;
    X509 *cert = NULL;
    EVP_PKEY *pkey = NULL;
    SSL_CTX *ctx = NULL;
    const char *why;
    char valid[96], invalid[120], loaded[400];

    if (cfg->tls.cert == NULL && cfg->tls.key == NULL) {
        printf("%-10s-    [tls] cert and key not set (serve needs them)\n", "tls");
    } else if (cfg->tls.cert == NULL || cfg->tls.key == NULL) {
        problems += file_row("tls", false, "[tls] %s is set but %s is not", cfg->tls.cert ? "cert" : "key",
                             cfg->tls.cert ? "key" : "cert");
    } else {
        why = read_leaf_cert(cfg->tls.cert, &cert);
        if (why == NULL && util_cert_valid_now(cert, valid, sizeof(valid)) != 0) {
            (void)snprintf(invalid, sizeof(invalid), "certificate %s", valid);
            why = invalid;
        }
        if (why == NULL)
            why = tls_cert_load(cfg->tls.cert, &ctx, loaded, sizeof(loaded));
        problems += file_row("tls cert", why == NULL, "%s%s%s", cfg->tls.cert, why ? ": " : "", why ? why : "");
        check_tls_chain(cfg->tls.cert, ctx);
        if (strncmp(cfg->tls.key, "pkcs11:", 7) == 0) {
            printf("%-10sOK   the key is on the token (%s); serve checks it at start\n", "tls key", cfg->tls.key);
        } else {
            BIO *bio = BIO_new_file(cfg->tls.key, "r");
            why = NULL;
            if (bio == NULL)
                why = "unreadable";
            else if ((pkey = PEM_read_bio_PrivateKey(bio, NULL, util_pem_no_passphrase, NULL)) == NULL)
                why = "no unencrypted PEM private key in it";
            else if (cert != NULL && X509_check_private_key(cert, pkey) != 1)
                why = "does not match the [tls] cert";
            BIO_free(bio);
            ERR_clear_error();
            problems += file_row("tls key", why == NULL, "%s%s%s", cfg->tls.key, why ? ": " : "", why ? why : "");
            check_tls_key_mode(cfg->tls.key);
        }
    }
    if (cfg->tls.client_ca == NULL)
        printf("%-10sOK   not set: client certificates from the local CA\n", "client_ca");
    else
        problems += check_client_ca(cfg->tls.client_ca);
    check_certsrv_url(cfg, cert);
    SSL_CTX_free(ctx);
    EVP_PKEY_free(pkey);
    X509_free(cert);
    return problems;
}

static int group_address_cmp(const void *a, const void *b)
{
    const gs_store_group *ga = *(const gs_store_group *const *)a, *gb = *(const gs_store_group *const *)b;
    int c = strcasecmp(ga->address, gb->address);

    return c != 0 ? c : strcmp(ga->name, gb->name);
}

/* Two groups of one list address (compared without ASCII case): group
 * create refuses such a pair now, but a database made before that
 * refusal may hold one. Each has a certificate for the address, so mail
 * a sender encrypted to the one their directory gave is refused by the
 * list of the other. A warning, not a problem: both groups may hold
 * members and mail, and which to keep is the operator's choice (delete
 * the other's members, give its list another address). Sorted, so a
 * database of many groups is not compared pair by pair. */
static void check_shared_addresses(struct env *e)
{
    gs_store_group **groups = NULL, **by = NULL;
    size_t ng = 0, n = 0;

    if (gs_store_group_list(e->st, &groups, &ng) != GS_OK) {
        printf("groups    could not list the groups: %s\n", gs_err_detail());
        return;
    }
    if (ng < 2)
        goto out;
    if ((by = calloc(ng, sizeof(*by))) == NULL) {
        printf("groups    could not compare the list addresses: out of memory\n");
        goto out;
    }
    for (size_t i = 0; i < ng; i++)
        if (groups[i]->address != NULL)
            by[n++] = groups[i];
    qsort(by, n, sizeof(*by), group_address_cmp);
    for (size_t i = 0; i + 1 < n;) {
        size_t j = i + 1;
        while (j < n && strcasecmp(by[i]->address, by[j]->address) == 0)
            j++;
        if (j - i > 1) {
            size_t cols;
            char *shown = term_text(by[i]->address, &cols);
            printf("groups    WARNING: the list address %s belongs to %zu groups:",
                   shown != NULL ? shown : "(out of memory)", j - i);
            for (size_t k = i; k < j; k++)
                printf(" %s", by[k]->name);
            printf("; mail encrypted to one group's certificate is refused by the other's list: keep one group "
                   "for the address\n");
            free(shown);
        }
        i = j;
    }
out:
    free(by);
    gs_store_group_list_free(groups, ng);
}

/* The local CA's certificate: when it ends (everything it issues ends by
 * then too), a problem once it is not valid now, a note to renew it in
 * its last CA_RENEW_NOTE_DAYS days. Before `ca init`: nothing to check. */
#define CA_RENEW_NOTE_DAYS 90
static unsigned check_ca_cert(struct env *e)
{
    gs_store_ca *row = NULL;
    X509 *cert = NULL;
    char why[96], until[64];
    int days = 0, secs = 0;
    unsigned problem = 0;
    gs_err err;

    if ((err = gs_store_ca_get(e->st, &row)) == GS_ERR_NOT_FOUND) {
        printf("%-10s-    no local CA yet (ca init)\n", "ca cert");
        goto out;
    }
    if (err != GS_OK) {
        problem = file_row("ca cert", false, "the CA's record cannot be read: %s", gs_err_detail());
        goto out;
    }
    if (gs_cert_parse((const unsigned char *)row->cert_pem, strlen(row->cert_pem), &cert) != GS_OK) {
        problem = file_row("ca cert", false, "the recorded CA certificate does not parse");
        goto out;
    }
    if (util_cert_valid_now(cert, why, sizeof(why)) != 0) {
        problem = file_row("ca cert", false, "CA certificate %s (renew it: groupsrv ca renew-cert)", why);
        goto out;
    }
    util_cert_not_after_text(cert, until, sizeof(until));
    (void)ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(cert));
    ERR_clear_error();
    printf("%-10sOK   valid until %s (%d days)%s\n", "ca cert", until, days,
           days < CA_RENEW_NOTE_DAYS ? "; renew it soon: groupsrv ca renew-cert" : "");
out:
    X509_free(cert);
    gs_store_ca_free(row);
    return problem;
}

/* An audit log this user can append to, in a directory it cannot write:
 * serve runs, but `audit rotate` as this user (the monthly cron line of
 * docs/operations.md) fails every time, since it makes the next file and
 * links the archive in that directory. Not counted: root's rotate works,
 * and serve does not need it. */
static void check_audit_dir(const char *path)
{
    char *dir = util_dir_of(path);

    if (dir == NULL) {
        printf("%-10sWARNING: %s: out of memory checking its directory\n", "audit log", path);
        return;
    }
    if (access(dir, W_OK | X_OK) != 0)
        printf("%-10sWARNING: its directory %s cannot be written by this user (uid %lu): %s: "
               "`audit rotate` run as this user cannot archive the log (it makes the next file and the "
               "archive's name there)\n",
               "audit log", dir, (unsigned long)geteuid(), strerror(errno));
    free(dir);
}

/* The time of an audit record line (Unix seconds): every record starts
 * {"time":"YYYY-mm-ddTHH:MM:SS.mmmZ" (record_json writes the field
 * first), in a file or in the audit table; 0 when it has none. */
static time_t audit_line_time(const char *p)
{
    static const char lead[] = "{\"time\":\"";
    struct tm tm = {0};
    time_t t;

    if (strncmp(p, lead, sizeof(lead) - 1) != 0 ||
        sscanf(p + sizeof(lead) - 1, "%4d-%2d-%2dT%2d:%2d:%2d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec) != 6)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (t = timegm(&tm)) == (time_t)-1 ? 0 : t;
}

/* The latest record time in the last 64 KiB of the audit log; 0 when
 * there is none to read. */
static time_t audit_latest_time(const char *path)
{
    enum { WINDOW = 64 * 1024 };
    char *buf = NULL;
    struct stat sb;
    time_t latest = 0, t;
    ssize_t n;
    off_t off;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);

    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || (buf = malloc(WINDOW + 1)) == NULL)
        goto out;
    off = sb.st_size > WINDOW ? sb.st_size - WINDOW : 0;
    if ((n = pread(fd, buf, WINDOW, off)) <= 0)
        goto out;
    buf[n] = '\0';
    /* Lines whole in the window: those after a newline (or at the file's start). */
    for (char *p = off == 0 ? buf : strchr(buf, '\n'); p != NULL && *p != '\0'; p = strchr(p, '\n')) {
        if (*p == '\n')
            p++;
        if ((t = audit_line_time(p)) > latest)
            latest = t;
    }
out:
    free(buf);
    if (fd >= 0)
        close(fd);
    return latest;
}

/* [audit] store = db: the latest record time among the last rows of
 * this server's two chains in the audit table (its own and its admin
 * commands'), as the file's last 64 KiB: a record written before the
 * clock was set back is still seen once later ones follow it. 0 when
 * there is none (a role that may not read the table: the database rows
 * say so). */
static time_t audit_db_latest_time(struct env *e)
{
    enum { ROWS = 256 };
    static const char *const suffix[] = {"", GS_AUDIT_ADMIN_SUFFIX};
    char chain[GS_AUDIT_CHAIN_MAX + 1];
    time_t latest = 0, t;

    for (size_t i = 0; i < sizeof(suffix) / sizeof(suffix[0]); i++) {
        gs_store_audit_row *rows = NULL;
        int64_t seq = 0;
        char *line = NULL;
        size_t n = 0;
        (void)snprintf(chain, sizeof(chain), "%s%s", e->cfg->server.instance, suffix[i]);
        if (gs_store_audit_head(e->st, chain, &seq, &line) == GS_OK && line != NULL &&
            gs_store_audit_read(e->st, chain, seq > ROWS ? seq - ROWS : 0, ROWS, &rows, &n) == GS_OK)
            for (size_t j = 0; j < n; j++)
                if (rows[j].line != NULL && (t = audit_line_time(rows[j].line)) > latest)
                    latest = t;
        gs_store_audit_rows_free(rows, n);
        free(line);
    }
    return latest;
}

/* A clock set back (a time service's step, a virtual machine restored
 * from a snapshot, a dead RTC battery) shows against the audit log: its
 * latest record (latest) is later than now. Records' times then go
 * backwards (audit verify takes that), and a certificate issued in between
 * (by this server while its clock ran ahead, or by a client's CA with a
 * right clock) is not valid yet here. A minute is allowed for (membership
 * certificates are backdated by one); not counted: serve runs. */
static void check_clock(time_t latest)
{
    time_t now = time(NULL);

    if (latest <= now + 60)
        return;
    printf("%-10sWARNING: the system clock (", "clock");
    print_time(stdout, now);
    printf(") is %lld s behind the audit log's latest record (", (long long)(latest - now));
    print_time(stdout, latest);
    printf("): it was set back, or ran ahead then: a certificate issued in between (this server's "
           "membership certificates, a client's) is not valid yet here (401 certificate_expired), and the "
           "records' times go backwards (check the time service: timedatectl)\n");
}

/* [db] url: check reads the database read-only (it may be a standby's),
 * but serve opens it for writing (target_session_attrs=read-write) and
 * does not start where none of the URI's hosts takes writes: a URI naming
 * a standby alone, a primary a failover demoted, default_transaction_
 * read_only set on the database or role. check said every row OK there,
 * so the pre-flight passed a configuration serve refuses. Opened once
 * more as serve does. A warning, not counted: the read-only commands,
 * check among them, may use a standby (docs/scale-out.md). */
static void check_db_writable(struct env *e)
{
    gs_store *w = NULL;
    gs_err err;

    if (e->cfg->db.url == NULL)
        return; /* SQLite: check_grants tells a file this user cannot write */
    err = gs_store_open(gs_config_db_location(e->cfg), 0, &w);
    gs_store_close(w);
    if (err != GS_OK)
        printf("database  WARNING: it cannot be opened for writing, as serve and the commands that write open it "
               "(target_session_attrs=read-write: a standby, a demoted primary, default_transaction_read_only): "
               "serve does not start with this configuration: %s\n",
               gs_err_detail());
}

/* [db] url: the database server's clock is the one the servers sharing
 * it can agree on. A server whose clock is off by more than
 * GS_CLOCK_SKEW_MAX_S issues membership certificates (backdated 60 s)
 * that the others refuse as not valid yet (401 certificate_expired) for
 * as long as it is ahead, or that expire early there when it is behind;
 * nothing said so before a member was refused. A warning, as serve's. */
static void check_db_clock(struct env *e)
{
    int64_t off_ms = 0;

    if (gs_store_clock_offset(e->st, &off_ms) != GS_OK)
        return; /* SQLite, or the database gone since it opened: its row says so */
    if (off_ms <= GS_CLOCK_SKEW_MAX_S * 1000 && off_ms >= -GS_CLOCK_SKEW_MAX_S * 1000)
        return;
    printf("%-10sWARNING: the system clock is %lld s %s the database server's: keep every server sharing the "
           "database within %d s of it (a time service: timedatectl): membership certificates, backdated 60 s, "
           "that a server ahead issues are not valid yet (401 certificate_expired) at the others\n",
           "clock", (long long)((off_ms < 0 ? -off_ms : off_ms) / 1000), off_ms > 0 ? "ahead of" : "behind",
           GS_CLOCK_SKEW_MAX_S);
}

/* [audit] path: serve appends to it, creating the file and any missing
 * directories (0700). So: an existing file must be a writable regular
 * file; otherwise the nearest existing ancestor must be a writable
 * directory. */
static unsigned check_audit_path(const struct gs_config *cfg)
{
    char dir[4096], parent[4096] = "";
    struct stat sb;
    const char *why = NULL;
    char *slash;
    int access_errno;

    if (strcmp(cfg->audit.store, "db") == 0) {
        /* [audit] store = db: no file; the table is checked with the database. */
        printf("audit log OK   the database's audit table, chain of instance %s\n", cfg->server.instance);
        return 0;
    }

    /* lstat: serve and `audit rotate` refuse a symbolic link (O_NOFOLLOW,
     * groupsrv.1), so the pre-flight must not pass one by following it. */
    if (lstat(cfg->audit.path, &sb) == 0) {
        if (S_ISLNK(sb.st_mode))
            why = "a symbolic link (serve refuses it: the log must be a regular file at its path)";
        else if (!S_ISREG(sb.st_mode))
            why = "not a regular file";
        else if (access(cfg->audit.path, W_OK) != 0)
            why = "not writable";
        if (why == NULL && (sb.st_mode & 077) != 0)
            /* not counted: serve takes it too, with a warning */
            (void)file_row(
                "audit log", true,
                "%s; mode %04o: its group or others can read who unwrapped what (chmod 0600 unless "
                "that is meant)",
                cfg->audit.path, (unsigned)(sb.st_mode & 07777));
        else if (file_row("audit log", why == NULL, "%s%s%s", cfg->audit.path, why ? ": " : "",
                          why ? why : "") != 0)
            return 1;
        check_audit_dir(cfg->audit.path);
        return 0;
    }
    if (util_strlcpy(dir, cfg->audit.path, sizeof(dir)) != UTIL_OK)
        return file_row("audit log", false, "%s: path too long", cfg->audit.path);
    for (;;) {
        slash = strrchr(dir, '/');
        if (slash == NULL) {
            (void)util_strlcpy(dir, ".", sizeof(dir));
        } else if (slash == dir) {
            dir[1] = '\0';
        } else {
            *slash = '\0';
        }
        if (stat(dir, &sb) == 0)
            break;
        if (errno != ENOENT || slash == NULL || slash == dir) {
            why = "directory unreachable";
            break;
        }
        /* the log's own directory is missing too: say so, not that
         * some ancestor "is not writable" (the admin looks for it and
         * finds nothing; e.g. /var/log/groupsrv removed, or a cmake
         * install whose tmpfiles.d line never ran) */
        if (parent[0] == '\0')
            (void)util_strlcpy(parent, dir, sizeof(parent));
    }
    if (why == NULL && !S_ISDIR(sb.st_mode))
        why = "a path component is not a directory";
    if (why != NULL || access(dir, W_OK | X_OK) == 0)
        return file_row("audit log", why == NULL, "%s%s%s", cfg->audit.path,
                        why ? ": " : (parent[0] != '\0' ? " (will be created, with its directories)" : " (will be created)"),
                        why ? why : "");
    access_errno = errno;
    if (parent[0] == '\0')
        return file_row("audit log", false, "%s: directory not writable by this user (uid %lu): %s", cfg->audit.path,
                        (unsigned long)geteuid(), strerror(access_errno));
    return file_row("audit log", false,
                    "%s: its directory %s does not exist, and this user (uid %lu) cannot create it in %s: %s "
                    "(make it for the user serve runs as; the packages' /var/log/groupsrv: "
                    "systemd-tmpfiles --create groupsrv.conf)",
                    cfg->audit.path, parent, (unsigned long)geteuid(), dir, strerror(access_errno));
}

/* The first address "host:port" or "[v6]:port" resolves to, as serve's
 * listen_on takes it (AI_PASSIVE: an empty host is the wildcard); NULL,
 * or what getaddrinfo said. The IPv4 address of a v4-mapped IPv6 one. */
static const char *listen_addr(const char *hostport, struct sockaddr_storage *ss)
{
    struct addrinfo *ai = NULL;
    const char *why;

    if (util_listen_resolve(hostport, &ai, &why) != 0)
        return why;
    memset(ss, 0, sizeof(*ss));
    memcpy(ss, ai->ai_addr, ai->ai_addrlen <= sizeof(*ss) ? ai->ai_addrlen : sizeof(*ss));
    freeaddrinfo(ai);
    if (ss->ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *)ss)->sin6_addr)) {
        struct sockaddr_in v4 = {.sin_family = AF_INET, .sin_port = ((struct sockaddr_in6 *)ss)->sin6_port};
        memcpy(&v4.sin_addr, &((struct sockaddr_in6 *)ss)->sin6_addr.s6_addr[12], 4);
        memset(ss, 0, sizeof(*ss));
        memcpy(ss, &v4, sizeof(v4));
    }
    return NULL;
}

/* 1 when two listening sockets on a and b cannot both be bound: the same
 * port, and the same address or a wildcard that covers the other (Linux:
 * 0.0.0.0 every IPv4 address; [::] every address of both families unless
 * net.ipv6.bindv6only is 1: serve sets no IPV6_V6ONLY of its own). */
static int listen_overlap(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    const struct sockaddr_in *a4 = (const struct sockaddr_in *)a, *b4 = (const struct sockaddr_in *)b;
    const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)a, *b6 = (const struct sockaddr_in6 *)b;
    in_port_t pa = a->ss_family == AF_INET ? a4->sin_port : a6->sin6_port;
    in_port_t pb = b->ss_family == AF_INET ? b4->sin_port : b6->sin6_port;
    bool any_a = a->ss_family == AF_INET ? a4->sin_addr.s_addr == htonl(INADDR_ANY)
                                         : IN6_IS_ADDR_UNSPECIFIED(&a6->sin6_addr);
    bool any_b = b->ss_family == AF_INET ? b4->sin_addr.s_addr == htonl(INADDR_ANY)
                                         : IN6_IS_ADDR_UNSPECIFIED(&b6->sin6_addr);

    if (pa != pb)
        return 0;
    if (a->ss_family != b->ss_family) { /* only the IPv6 wildcard spans both */
        int v6only = 0;
        FILE *f = fopen("/proc/sys/net/ipv6/bindv6only", "re");
        if (f != NULL) {
            if (fscanf(f, "%d", &v6only) != 1)
                v6only = 0;
            (void)fclose(f);
        }
        return v6only != 1 && ((a->ss_family == AF_INET6 && any_a) || (b->ss_family == AF_INET6 && any_b));
    }
    if (any_a || any_b)
        return 1;
    if (a->ss_family == AF_INET)
        return a4->sin_addr.s_addr == b4->sin_addr.s_addr;
    /* one link-local address on two interfaces (fe80::1%eth0, fe80::1%eth1)
     * is two addresses: both bind */
    return memcmp(&a6->sin6_addr, &b6->sin6_addr, sizeof(a6->sin6_addr)) == 0 &&
           (!IN6_IS_ADDR_LINKLOCAL(&a6->sin6_addr) || a6->sin6_scope_id == b6->sin6_scope_id);
}

/* [server] listen and [certsrv] listen: serve binds both at start and
 * stops when it cannot (a port another program holds is only known
 * then; the running server holds its own). An address that does not
 * resolve, or the two on one port, is a problem here already. */
/* A port below net.ipv4.ip_unprivileged_port_start (1024 unless set; it
 * covers IPv6 too) takes CAP_NET_BIND_SERVICE, which the unit as shipped
 * does not give (CapabilityBoundingSet= empty): serve would stop 'cannot
 * listen ... Permission denied'. A warning, not counted: check run with
 * runuser lacks a capability a drop-in may give the unit. */
static void warn_low_port(const char *which, const char *listen, const struct sockaddr_storage *ss)
{
    unsigned port = ntohs(ss->ss_family == AF_INET ? ((const struct sockaddr_in *)ss)->sin_port
                                                   : ((const struct sockaddr_in6 *)ss)->sin6_port);
    unsigned start = 1024;
    unsigned long long eff = 0;
    char line[256];
    FILE *f;

    if ((f = fopen("/proc/sys/net/ipv4/ip_unprivileged_port_start", "re")) != NULL) {
        if (fscanf(f, "%u", &start) != 1)
            start = 1024;
        (void)fclose(f);
    }
    if (port == 0 || port >= start)
        return;
    if ((f = fopen("/proc/self/status", "re")) != NULL) {
        while (fgets(line, sizeof(line), f) != NULL)
            if (sscanf(line, "CapEff: %llx", &eff) == 1)
                break;
        (void)fclose(f);
    }
    if (eff & (1ULL << CAP_NET_BIND_SERVICE))
        return;
    printf(
        "%-10sWARNING: %s listen %s: port %u is below %u (net.ipv4.ip_unprivileged_port_start): binding it "
        "takes CAP_NET_BIND_SERVICE, which this user lacks and the unit as shipped does not give (a drop-in: "
        "docs/operations.md, \"A first configuration\")\n",
        "listen", which, listen, port, start);
}

/* ---- [server] user ----
 * serve started as root changes its network process (the one that faces
 * the network) to [server] user once the supervisor has handed it all it
 * needs: the configuration, the TLS files and its sockets. It opens no
 * file after that (its seccomp filter allows none), so the user needs to
 * read nothing; what it must not read are the secrets the other two
 * processes keep from it: were the filter ever got round, the user's
 * rights are what is left. Started as any other user, serve keeps that
 * user for all three processes and does not take the setting. */
enum { USER_PATHS_MAX = 4096 };

struct user_path {
    const char *what; /* "the user PIN source": static text */
    char *path;
    bool secret; /* readable: a problem (key material); else a warning, as check_db_mode's */
};

struct user_paths {
    struct user_path *v;
    size_t n, cap;
    bool full; /* USER_PATHS_MAX reached: the rest were not asked */
};

static void user_paths_free(struct user_paths *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->v[i].path);
    free(p->v);
    memset(p, 0, sizeof(*p));
}

/* Adds PATH when it is a regular file (a PIN from a pipe or a file not
 * made yet has nothing to read); -1 out of memory. */
static int user_paths_add(struct user_paths *p, const char *what, const char *path, bool secret)
{
    struct stat sb;

    if (path == NULL || stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        return 0;
    if (p->n == USER_PATHS_MAX) {
        p->full = true;
        return 0;
    }
    if (p->n == p->cap) {
        size_t nc = p->cap ? p->cap * 2 : 16;
        struct user_path *v;
        if (nc > USER_PATHS_MAX)
            nc = USER_PATHS_MAX;
        if ((v = realloc(p->v, nc * sizeof(*v))) == NULL)
            return -1;
        p->v = v;
        p->cap = nc;
    }
    if ((p->v[p->n].path = strdup(path)) == NULL)
        return -1;
    p->v[p->n].what = what;
    p->v[p->n].secret = secret;
    p->n++;
    return 0;
}

/* The key files of every token in SoftHSM's token directory
 * (TOKENDIR/TOKEN/FILE), when [hsm] module is SoftHSM; other modules keep
 * their stores where this program cannot tell, and SoftHSM's store
 * beside them (softhsm2 installed, its default configuration) is not the
 * token's: naming its files would be a problem of another program's. */
static int user_paths_add_tokens(struct user_paths *p, const char *module)
{
    char dir[PATH_MAX], sub[PATH_MAX], file[PATH_MAX];
    DIR *d = NULL, *t = NULL;
    struct dirent *e, *f;
    int rc = 0;

    if (!hsm_module_is_softhsm(module) || hsm_softhsm_tokendir(dir, sizeof(dir)) != 0 || (d = opendir(dir)) == NULL)
        return 0;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        int w = snprintf(sub, sizeof(sub), "%s/%s", dir, e->d_name);
        if (e->d_name[0] == '.' || w < 0 || (size_t)w >= sizeof(sub) || (t = opendir(sub)) == NULL)
            continue;
        while (rc == 0 && (f = readdir(t)) != NULL) {
            w = snprintf(file, sizeof(file), "%s/%s", sub, f->d_name);
            if (f->d_name[0] != '.' && w > 0 && (size_t)w < sizeof(file))
                rc = user_paths_add(p, "a file of the token store", file, true);
        }
        closedir(t);
    }
    closedir(d);
    return rc;
}

/* readable[i] = whether uid/gid (with no other group, as sandbox_drop
 * leaves the network process) may read p->v[i]: asked with access(2) in
 * a child that became the user, so modes, ACLs and every directory on
 * the way count as the kernel counts them. 0, or -1 and why. */
static int user_can_read(const struct passwd *pw, const struct user_paths *p, unsigned char *readable,
                         const char **why)
{
    int fds[2] = {-1, -1}, status = 0, rc = -1;
    size_t got = 0;
    pid_t pid;

    *why = NULL;
    if (pipe2(fds, O_CLOEXEC) != 0) {
        *why = strerror(errno);
        return -1;
    }
    if ((pid = fork()) < 0) {
        *why = strerror(errno);
        goto out;
    }
    if (pid == 0) {
        gid_t gid = pw->pw_gid;
        uid_t uid = pw->pw_uid;
        (void)close(fds[0]);
        if (setgroups(1, &gid) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0)
            _exit(3);
        for (size_t i = 0; i < p->n; i++) {
            unsigned char r = access(p->v[i].path, R_OK) == 0;
            if (write(fds[1], &r, 1) != 1)
                _exit(4);
        }
        _exit(0);
    }
    (void)close(fds[1]);
    fds[1] = -1;
    while (got < p->n) {
        ssize_t n = read(fds[0], readable + got, p->n - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (got != p->n || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        *why = WIFEXITED(status) && WEXITSTATUS(status) == 3 ? "could not become that user" : "the check's child failed";
    else
        rc = 0;
out:
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0)
            (void)close(fds[i]);
    return rc;
}

static unsigned check_server_user(const struct gs_config *cfg)
{
    const char *user = cfg->server.user;
    bool root = geteuid() == 0;
    struct user_paths p = {0};
    unsigned char *readable = NULL;
    const char *why = NULL;
    unsigned problems = 0;
    size_t tok_read = 0, tok_all = 0, tok_first = 0;
    struct passwd *pw;
    char shown[2048];

    errno = 0;
    if ((pw = getpwnam(user)) == NULL) {
        const char *err = errno != 0 ? strerror(errno) : "no such user";
        if (!root) {
            printf("%-10sWARNING: [server] user %s: %s: serve started as root would not start (started as this "
                   "user, uid %lu, it keeps it and does not take the setting)\n",
                   "user", user, err, (unsigned long)geteuid());
            return 0;
        }
        return file_row("user", false, "[server] user %s: %s: serve does not start (its network process changes to it)",
                        user, err);
    }
    if (pw->pw_uid == 0) {
        if (!root) {
            printf("%-10sWARNING: [server] user %s is root (uid 0): serve started as root would not start (its "
                   "network process must not run as root); started as this user, uid %lu, it keeps it\n",
                   "user", user, (unsigned long)geteuid());
            return 0;
        }
        return file_row("user", false,
                        "[server] user %s is root (uid 0): serve does not start, its network process must not run "
                        "as root (name an unprivileged user of its own)",
                        user);
    }
    if (!root)
        return file_row("user", true,
                        "[server] user %s (uid %lu): taken only when serve starts as root; started as this user "
                        "(uid %lu) its three processes keep it",
                        user, (unsigned long)pw->pw_uid, (unsigned long)geteuid());

    /* What the network process must not read; getpwnam's static result
     * stays valid: nothing below asks the user database again. */
    gs_store_location_display(cfg->db.url != NULL ? cfg->db.url : "", shown, sizeof(shown));
    if (user_paths_add_tokens(&p, cfg->hsm.module) != 0 ||
        user_paths_add(&p, "the user PIN source", util_pin_source_path(cfg->hsm.pin_source), true) != 0 ||
        user_paths_add(&p, "the SO PIN source", util_pin_source_path(cfg->hsm.so_pin_source), true) != 0 ||
        (cfg->tls.key != NULL && strncmp(cfg->tls.key, "pkcs11:", 7) != 0 &&
         user_paths_add(&p, "the [tls] key", cfg->tls.key, true) != 0) ||
        (cfg->db.url != NULL && strcmp(shown, cfg->db.url) != 0 &&
         user_paths_add(&p, "the configuration file (its [db] url holds a password)", cfg->path, true) != 0) ||
        (cfg->db.url == NULL && user_paths_add(&p, "the database", cfg->db.path, false) != 0) ||
        (strcmp(cfg->audit.store, "file") == 0 && user_paths_add(&p, "the audit log", cfg->audit.path, false) != 0)) {
        problems = file_row("user", false, "[server] user %s: out of memory listing the files it must not read", user);
        goto out;
    }
    if (p.n > 0 && ((readable = calloc(p.n, 1)) == NULL || user_can_read(pw, &p, readable, &why) != 0)) {
        problems = file_row("user", false, "[server] user %s (uid %lu): cannot tell what it can read: %s", user,
                            (unsigned long)pw->pw_uid, why != NULL ? why : "out of memory");
        goto out;
    }
    for (size_t i = 0; i < p.n; i++) {
        bool token = strcmp(p.v[i].what, "a file of the token store") == 0;
        tok_all += token;
        if (!readable[i])
            continue;
        if (token) {
            if (tok_read++ == 0)
                tok_first = i;
            continue;
        }
        if (p.v[i].secret)
            problems += file_row("user", false,
                                 "[server] user %s (uid %lu) can read %s %s: serve's network process runs as that "
                                 "user (chmod go-r it, or name a user of its own)",
                                 user, (unsigned long)pw->pw_uid, p.v[i].what, p.v[i].path);
        else
            printf("%-10sWARNING: [server] user %s (uid %lu) can read %s %s: serve's network process runs as that "
                   "user (chmod go-r it unless that is meant)\n",
                   "user", user, (unsigned long)pw->pw_uid, p.v[i].what, p.v[i].path);
    }
    if (tok_read > 0)
        problems += file_row("user", false,
                             "[server] user %s (uid %lu) can read %zu of the token store's %zu%s files, such as %s: "
                             "serve's network process runs as that user (chmod -R go-rwx the store, or name a user "
                             "of its own)",
                             user, (unsigned long)pw->pw_uid, tok_read, tok_all, p.full ? " (or more)" : "",
                             p.v[tok_first].path);
    if (problems == 0)
        (void)file_row("user", true,
                       "[server] user %s (uid %lu, gid %lu): serve's network process runs as it and needs no file; "
                       "it can read none of the %zu files checked (%s, PIN sources, [tls] key, database, "
                       "audit log)%s",
                       user, (unsigned long)pw->pw_uid, (unsigned long)pw->pw_gid, p.n,
                       hsm_module_is_softhsm(cfg->hsm.module) ? "SoftHSM's token store"
                                                              : "not the token's store: only SoftHSM's is known",
                       p.full ? " (the first ones of a larger token store)" : "");
out:
    free(readable);
    user_paths_free(&p);
    return problems;
}

static unsigned check_listen(const struct gs_config *cfg)
{
    struct sockaddr_storage srv, cs;
    const char *why;
    unsigned problem;

    if ((why = listen_addr(cfg->server.listen, &srv)) != NULL)
        return file_row("listen", false, "[server] listen %s: cannot resolve the address: %s",
                        cfg->server.listen, why);
    if (cfg->certsrv.listen == NULL) {
        problem = file_row("listen", true, "[server] %s", cfg->server.listen);
    } else if ((why = listen_addr(cfg->certsrv.listen, &cs)) != NULL) {
        return file_row("listen", false, "[certsrv] listen %s: cannot resolve the address: %s",
                        cfg->certsrv.listen, why);
    } else if (listen_overlap(&srv, &cs)) {
        problem = file_row(
            "listen", false,
            "[certsrv] listen %s and [server] listen %s are on one port: serve cannot bind both (give "
            "the certificate server a port of its own)",
            cfg->certsrv.listen, cfg->server.listen);
    } else {
        problem =
            file_row("listen", true, "[server] %s, [certsrv] %s", cfg->server.listen, cfg->certsrv.listen);
    }
    warn_low_port("[server]", cfg->server.listen, &srv);
    if (cfg->certsrv.listen != NULL)
        warn_low_port("[certsrv]", cfg->certsrv.listen, &cs);
    return problem;
}

/* [db] path: the membership, the member certificates and (with [audit]
 * store = db) the audit records, in the file and in the -wal beside it,
 * which SQLite makes with the file's mode. A warning, not counted, as
 * for the audit log: a group that may read them may be meant. A [db]
 * path that is a symbolic link has its -wal beside the file it points
 * to (SQLite resolves the link), so that file's name is the one asked. */
static void check_db_mode(const struct gs_config *cfg)
{
    char side[PATH_MAX + 8], *real = NULL;
    const char *db;
    struct stat sb;

    if (cfg->db.url != NULL || cfg->db.path == NULL)
        return;
    real = realpath(cfg->db.path, NULL);
    db = real != NULL ? real : cfg->db.path;
    for (int i = 0; i < 2; i++) {
        int n = snprintf(side, sizeof(side), "%s%s", db, i == 0 ? "" : "-wal");
        if (n < 0 || (size_t)n >= sizeof(side) || stat(side, &sb) != 0 || (sb.st_mode & 077) == 0)
            continue;
        printf("%-10sWARNING: %s: mode %04o: its group or others can read the groups' members and their "
               "certificates (chmod 0600 %s unless that is meant)\n",
               "database", side, (unsigned)(sb.st_mode & 07777), side);
    }
    free(real);
}

/* Servers on cloned tokens share one database: lists each current group
 * key or secret key version the database records that this token lacks
 * (serve answers 503 key_unavailable for it). Returns how many. */
static unsigned check_missing_current(struct env *e)
{
    gs_store_group **groups = NULL;
    size_t ng = 0;
    unsigned missing = 0;

    if (gs_store_group_list(e->st, &groups, &ng) != GS_OK)
        return 0;
    for (size_t i = 0; i < ng; i++) {
        gs_store_group_key *keys = NULL;
        gs_store_secret *secrets = NULL;
        size_t nk = 0, ns = 0;
        if (gs_store_group_keys(e->st, groups[i]->id, &keys, &nk) != GS_OK ||
            gs_store_secrets(e->st, groups[i]->id, &secrets, &ns) != GS_OK)
            nk = ns = 0;
        for (size_t j = 0; j < nk + ns; j++) {
            int is_key = j < nk;
            gs_key_state state = is_key ? keys[j].state : secrets[j - nk].state;
            const char *label = is_key ? keys[j].token_label : secrets[j - nk].token_label;
            hsm_key *k = NULL;
            /* a sealed secret key is a blob in the database, on no token */
            if (state != GS_KEY_CURRENT || (!is_key && secrets[j - nk].sealed != NULL))
                continue;
            hsm_err he = hsm_key_find(e->hsm, label, is_key ? HSM_CLASS_PRIVATE : HSM_CLASS_SECRET, &k);
            hsm_key_free(k);
            if (he != HSM_ERR_KEY_NOT_FOUND)
                continue;
            if (missing++ == 0)
                printf("current key versions in the database missing from this token (served as 503 key_unavailable):\n");
            printf("missing   group %s %s version %u label %s\n", groups[i]->name, is_key ? "key" : "secret",
                   is_key ? keys[j].version : secrets[j - nk].version, label);
        }
        gs_store_group_keys_free(keys, nk);
        gs_store_secrets_free(secrets, ns);
    }
    gs_store_group_list_free(groups, ng);
    return missing;
}

static void check_unrecorded(void *arg, const char *label)
{
    size_t cols;
    char *shown = term_text(label, &cols); /* the token's label: anyone's with the user PIN */
    (void)arg;
    printf("unrecorded %s: on the token, not in the database (a version made after the backup the database was "
           "restored from: keep it, and record it again with group import-cert --version N or secret record; or "
           "left by a killed import or a failed run: docs/operations.md)\n",
           shown != NULL ? shown : "(out of memory)");
    free(shown);
}

/* Transport keys still on the token (SECURITY.md, "The receiving
 * token's user PIN and the file"): with this token's user PIN, a .gsk file
 * made for one gives the keys in it in the clear to any PKCS#11 program,
 * not only through group import. A warning, not counted: a ceremony may
 * be under way. Both halves carry the label: each is named once. */
struct transport_seen {
    char labels[32][128];
    size_t n;
    bool more; /* more labels than there is room for */
};

static int check_transport_key(void *arg, hsm_ctx *hsm, hsm_key *key)
{
    struct transport_seen *t = arg;
    const char *label = hsm_key_label(key);
    size_t cols;
    char *shown;

    (void)hsm;
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->labels[i], label) == 0)
            return 0;
    if (t->n == sizeof(t->labels) / sizeof(t->labels[0])) {
        t->more = 1;
        return 0;
    }
    (void)util_strlcpy(t->labels[t->n++], label, sizeof(t->labels[0]));
    shown = term_text(label, &cols); /* the token's label: anyone's with the user PIN */
    printf("%-10sWARNING: %s is still on the token: with this token's user PIN, a .gsk file made for it gives "
           "the keys in it in the clear to any PKCS#11 program (SECURITY.md); delete both halves once its "
           "imports are done and make a new one for the next (docs/operations.md, step 7)\n",
           "transport", shown != NULL ? shown : "(out of memory)");
    free(shown);
    return 0;
}

static int cmd_check(struct env *e, int argc, char **argv)
{
    struct args a;
    hsm_token_info ti;
    unsigned problems = 0, key_problems = 0;
    struct check_table table = {0};
    bool migrated = false;
    gs_err err;
    hsm_err he;
    int rc = parse_args(argc, argv, NULL, 0, &a);
    if (rc)
        return rc;
    if (a.npos != 1)
        return usage_error("check takes no arguments%s", "");
    printf("config    OK   %s\n", e->cfg->path);
    problems += check_tls(e->cfg);
    problems += check_audit_path(e->cfg);
    if (strcmp(e->cfg->audit.store, "file") == 0)
        check_clock(audit_latest_time(e->cfg->audit.path));
    problems += check_listen(e->cfg);
    problems += check_server_user(e->cfg);
    err = env_open(e, NEED_DB_RO);
    if (err == GS_ERR_SCHEMA) {
        /* An older schema (after an upgrade) is what serve would migrate at
         * start: check does it now, where it may write (not on a standby,
         * nor as a role without ALTER: the store's error then names the
         * versions and why the migration failed). A newer schema fails
         * again, unchanged. */
        char ro_detail[600];
        (void)snprintf(ro_detail, sizeof(ro_detail), "%s", gs_err_detail());
        err = env_open(e, NEED_DB);
        /* not when another process (a second check, a starting serve)
         * migrated it between the two opens: this one found it current */
        migrated = err == GS_OK && gs_store_migrated_from(e->st) > 0;
        /* GS_ERR_DB: a migration step failed, its detail names the
         * versions; else the database could not be opened for writing
         * here (a standby, the server gone): both reasons. */
        if (err != GS_OK && err != GS_ERR_DB && err != GS_ERR_SCHEMA)
            (void)gs_err_set(err, "%s; it cannot be opened for writing here: %s", ro_detail, gs_err_detail());
    }
    if (err) {
        /* Still show what the token can do: before `ca init` that is what
         * an operator wants to see. */
        printf("database  PROBLEM: %s\n", gs_err_detail());
        problems++;
    } else if (gs_store_check_integrity(e->st) != GS_OK) {
        /* A page written over or lost (a failing disk, a restore onto the
         * open file) where the first rows still read: "OK" here, while
         * every change is refused on it. */
        printf("database  PROBLEM: %s\n", gs_err_detail());
        problems++;
        check_db_mode(e->cfg);
    } else {
        char where[1100];
        gs_store_location_display(gs_config_db_location(e->cfg), where, sizeof(where));
        printf("database  OK   %s (%s, schema %d%s)\n", where, gs_store_backend(e->st), gs_store_schema_version(e->st),
               migrated ? ", migrated from an older schema" : "");
        check_db_mode(e->cfg);
        check_db_writable(e);
        /* what serve refuses to start without */
        if (gs_store_check_grants(e->st, strcmp(e->cfg->audit.store, "db") == 0) != GS_OK) {
            printf("database  PROBLEM: %s\n", gs_err_detail());
            problems++;
        } else if (strcmp(e->cfg->audit.store, "db") == 0) {
            check_clock(audit_db_latest_time(e));
        }
        check_db_clock(e);
        problems += check_ca_cert(e);
        check_shared_addresses(e);
    }
    err = env_open(e, NEED_TOKEN);
    if (err) {
        printf("token     PROBLEM: %s\n", gs_err_detail());
        return 1;
    }
    he = hsm_ping(e->hsm);
    if (he == HSM_OK)
        he = hsm_token_info_get(e->hsm, &ti);
    if (he != HSM_OK) {
        printf("token     PROBLEM: %s (%s)\n", hsm_strerror(he), hsm_last_error_detail());
        return 1;
    }
    print_token_line(e->cfg->hsm.token, &ti);
    print_caps(e->hsm);
    if (e->st == NULL) {
        printf("%u problem(s) found\n", problems);
        return 1;
    }
    print_group_policies(e);
    err = gs_keys_audit(e->st, e->hsm, check_row, &table, &key_problems);
    check_table_flush(&table);
    if (err) {
        printf("keys      PROBLEM: %s\n", gs_err_detail());
        return 1;
    }
    if (key_problems == 0)
        printf("all keys OK\n");
    (void)check_missing_current(e);
    /* Not a problem: such a key may be one that mail still needs. */
    if (gs_keys_unrecorded(e->st, e->hsm, check_unrecorded, NULL) != GS_OK)
        printf("keys      could not list the token's keys: %s\n", gs_err_detail());
    struct transport_seen seen = {.n = 0};
    if (hsm_key_list(e->hsm, GSK_TRANSPORT_PREFIX, check_transport_key, &seen) != HSM_OK)
        printf("transport could not list the token's transport keys: %s\n", hsm_last_error_detail());
    else if (seen.more)
        printf("transport WARNING: and more than these %zu (pkcs11-tool --list-objects names them all)\n", seen.n);
    problems += key_problems;
    if (problems) {
        printf("%u problem(s) found\n", problems);
        return 1;
    }
    return 0;
}

/* ---- main ---------------------------------------------------------------------- */

/* A typo in a command line is a usage error (2) whatever the
 * configuration: on a host without one yet (just installed), `groupsrv
 * member ad ...` said "cannot open config file" (5) and a script saw a
 * configuration error. Only the word after the command is looked at here,
 * before the configuration is read: the first one, and only when it is no
 * option (no option's value can come before it); everything else is
 * checked by the command itself, which needs the configuration. */
static int check_subcommand(int argc, char **argv)
{
    static const struct {
        const char *cmd;
        const char *const subs[11];
        const char *expected;
    } table[] = {
        {"ca", {"init", "renew-cert", "show", "export", "import", NULL}, "init, renew-cert, show, export or import"},
        {"group",
         {"create", "set", "rotate", "retire", "import-cert", "renew-cert", "list", "show", "export", "import", NULL},
         "create, set, rotate, retire, import-cert, renew-cert, list, show, export or import"},
        {"secret", {"rotate", "retire", "record", NULL}, "rotate, retire or record"},
        {"member", {"add", "set", "remove", "list", NULL}, "add, set, remove or list"},
        {"audit", {"verify", "rotate", NULL}, "verify or rotate"},
        {"tls", {"init", NULL}, "init"},
        {"token", {"transport-key", NULL}, "transport-key"},
    };
    const char *cmd = argv[0];

    /* in the words each command says it */
    if (strcmp(cmd, "serve") == 0 && argc > 1)
        return usage_error("serve takes no arguments (got %s)", argv[1]);
    if (strcmp(cmd, "check") == 0 && argc > 1) {
        if (strncmp(argv[1], "--", 2) == 0)
            return usage_error("unknown option %s", argv[1]);
        return usage_error("check takes no arguments%s", "");
    }
    for (size_t i = 0; i < GS_ARRAY_LEN(table); i++) {
        if (strcmp(cmd, table[i].cmd) != 0)
            continue;
        if (argc < 2)
            return usage_error("%s: expected %s", cmd, table[i].expected);
        if (argv[1][0] == '-' || one_of(argv[1], table[i].subs))
            return 0;
        return usage_error("%s: unknown subcommand %s (expected %s)", cmd, argv[1], table[i].expected);
    }
    return 0;
}


int main(int argc, char **argv)
{
    const char *cfg_path = NULL;
    struct gs_config *cfg = NULL;
    struct env e;
    char *sub_argv[MAX_ARGS + 1];
    int sub_argc = 0, rc;
    const char *cmd;
    gs_err err;

    /* Before anything is opened: a standard descriptor closed by the
     * caller (`2>&-`, cron, a supervisor) would be the next file's number,
     * the database's connection, the audit log, a key file written, and
     * error lines or output would go into it; serve's processes inherit
     * 0-2 from here. Nothing can be said if /dev/null will not open. */
    if (util_sanitise_stdfd() != UTIL_OK)
        return 1;
    util_fsize_limit_fails_writes();
    /* Admin commands: an error is the one line fail()/usage_error() print;
     * library warnings (e.g. the hsm layer's "token rejected the PIN")
     * would make it two. -v shows them; serve sets its own level. */
    log_init("groupsrv", LOG_LVL_ERROR, NULL);
    memset(&e, 0, sizeof(e));
    /* -c FILE may appear anywhere; everything else is the command line. */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc)
                return usage_error("%s needs a FILE", argv[i]);
            if (cfg_path)
                return usage_error("-c given twice%s", "");
            cfg_path = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            /* the --x=v form every other option takes */
            if (cfg_path)
                return usage_error("-c given twice%s", "");
            cfg_path = argv[i] + 9;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(usage_text, stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0 && sub_argc == 0) {
            /* before the command: after it, --version is a command's option */
            puts("groupsrv " GS_VERSION);
            return 0;
        } else if (strcmp(argv[i], "-v") == 0 && sub_argc == 0) {
            log_set_level(LOG_LVL_INFO);
        } else {
            if (sub_argc == MAX_ARGS)
                return usage_error("too many arguments%s", "");
            sub_argv[sub_argc++] = argv[i];
        }
    }
    sub_argv[sub_argc] = NULL;
    if (sub_argc == 0)
        return usage_error("no command given%s", "");
    cmd = sub_argv[0];
    if (strcmp(cmd, "serve") == 0)
        error_lines_to_log(); /* a bad configuration too is a line of serve's log */
    if (strcmp(cmd, "help") == 0) {
        fputs(usage_text, stdout);
        return 0;
    }
    if (strcmp(cmd, "ca") && strcmp(cmd, "group") && strcmp(cmd, "secret") && strcmp(cmd, "member") &&
        strcmp(cmd, "check") && strcmp(cmd, "serve") && strcmp(cmd, "audit") &&
        strcmp(cmd, "tls") && strcmp(cmd, "token"))
        return usage_error("unknown command %s", cmd);
    rc = check_subcommand(sub_argc, sub_argv);
    if (rc)
        return rc;

    err = gs_config_load(gs_config_choose_path(cfg_path), &cfg);
    if (err) {
        rc = fail(err);
        return strcmp(cmd, "check") == 0 ? 1 : rc;
    }
    e.cfg = cfg;
    gs_store_set_timeout(cfg->db.timeout);
    {
        /* pg_stat_activity's application_name: "groupsrv gs-a" for a
         * server's sessions, "groupsrv gs-a member add" for a command's
         * (the instance first: what tells the servers apart; cut to
         * PostgreSQL's 63 bytes) */
        char app[128];
        bool sub = strcmp(cmd, "serve") != 0 && sub_argc > 1 && sub_argv[1][0] != '-';
        (void)snprintf(app, sizeof(app), "groupsrv %s%s%s%s%s", cfg->server.instance,
                       strcmp(cmd, "serve") != 0 ? " " : "", strcmp(cmd, "serve") != 0 ? cmd : "", sub ? " " : "",
                       sub ? sub_argv[1] : "");
        gs_store_set_app_name(app);
    }
    gs_store_set_refuse_unreplicated(strcmp(cfg->db.unreplicated_writes, "refuse") == 0);
    if (strcmp(cmd, "serve") == 0 || strcmp(cmd, "audit") == 0) {
#ifdef GS_HAVE_SERVER
        /* [server] log_level is the daemon's; `audit` is an admin command
         * like the others (its stderr the one error line unless -v: it
         * runs from cron, which mails what it prints) */
        if (strcmp(cmd, "serve") == 0) {
            int lvl = log_level_parse(cfg->server.log_level);
            log_set_level(lvl < 0 ? LOG_LVL_INFO : (enum log_level)lvl);
        }
        rc = strcmp(cmd, "serve") == 0 ? gs_cmd_serve(cfg, sub_argc, sub_argv) : gs_cmd_audit(cfg, sub_argc, sub_argv);
#else
        fprintf(stderr, "groupsrv: %s: this build has no server (groupsrv/server/ not built)\n", cmd);
        rc = 1;
#endif
    } else if (strcmp(cmd, "ca") == 0) {
        rc = cmd_ca(&e, sub_argc - 1, sub_argv + 1);
    } else if (strcmp(cmd, "group") == 0) {
        rc = cmd_group(&e, sub_argc - 1, sub_argv + 1);
    } else if (strcmp(cmd, "secret") == 0) {
        rc = cmd_secret(&e, sub_argc - 1, sub_argv + 1);
    } else if (strcmp(cmd, "member") == 0) {
        rc = cmd_member(&e, sub_argc - 1, sub_argv + 1);
    } else if (strcmp(cmd, "tls") == 0) {
        rc = gs_cmd_tls(cfg, sub_argc, sub_argv); /* tlscmd.c */
    } else if (strcmp(cmd, "token") == 0) {
        rc = gs_cmd_token(&e, sub_argc - 1, sub_argv + 1); /* ceremony.c */
    } else {
        rc = cmd_check(&e, sub_argc, sub_argv);
    }
    /* What a command printed (a certificate, `audit verify`'s ok line)
     * must have reached its file: on a full disk or a closed standard
     * output it did not, and a script taking exit 0 would keep a short
     * or empty file. serve writes no output of its own. */
    if (rc == 0 && strcmp(cmd, "serve") != 0) {
        errno = 0;
        if (fflush(stdout) != 0 || ferror(stdout)) {
            fprintf(stderr, "groupsrv: %s: cannot write standard output: %s\n", cmd,
                    errno != 0 ? strerror(errno) : "write error");
            rc = 1;
        }
    }
    env_close(&e);
    gs_config_free(cfg);
    return rc;
}
