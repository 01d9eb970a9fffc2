/*
 * ceremony.c: `groupsrv token transport-key`, `group export`, `group
 * import`: a replicable group's keys copied to another server's token
 * (see ceremony.h). The token work is hsm/replicate.c through gsk/; this
 * file decides what goes into a shipment, asks for the SO PIN, keeps the
 * database in step and writes the audit records.
 *
 * Order of every command: everything that can be checked without the
 * token is checked first, then the audit log is opened (no ceremony
 * without its record), then a record with outcome "started" is made
 * durable (a command killed later still leaves one), then the token is
 * changed; a record is written for the outcome, refusals included. An import that fails anywhere destroys
 * what it put on the token, and records nothing in the database.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* ppoll: the SO PIN prompt */
#endif
#include "ceremony.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "cli.h"
#include "groups.h"
#include "gsk.h"
#include "log.h"
#include "mailaddr.h"
#include "util.h"

#define TRANSPORT_FILE_MAX (64u * 1024u)
#define SO_PIN_MAX 256u
/* hsm_sign takes at most 1 MiB: 64 keys (certificate and wrapped key,
 * about 4 KiB each) stay well below it. */
#define EXPORT_KEYS_MAX 64u

/* ---- errors -------------------------------------------------------------- */

/* A gsk failure as the groupsrv error whose exit code docs/groupsrv.1.md gives. */
static gs_err from_gsk(gsk_err ge, const char *prefix)
{
    gs_err err;

    switch (ge) {
    case GSK_OK: return GS_OK;
    case GSK_ERR_NOMEM: err = GS_ERR_NOMEM; break;
    case GSK_ERR_TOKEN: err = GS_ERR_TOKEN; break;
    case GSK_ERR_EXISTS: err = GS_ERR_EXISTS; break;
    case GSK_ERR_TRANSPORT: err = GS_ERR_NOT_FOUND; break;
    case GSK_ERR_POLICY: err = GS_ERR_POLICY; break;
    case GSK_ERR_PROOF: err = GS_ERR_CRYPTO; break;
    case GSK_ERR_HSM: err = GS_ERR_HSM; break;
    default: err = GS_ERR_ARGS; break; /* a file that is malformed, changed, or signed by another CA */
    }
    /* A token that went away refused nothing: no "refused: " for it. */
    return gs_err_set(err, "%s%s", ge == GSK_ERR_TOKEN || ge == GSK_ERR_NOMEM ? "" : prefix,
                      gsk_err_detail()[0] ? gsk_err_detail() : gsk_strerror(ge));
}

/* ---- small helpers ------------------------------------------------------------- */

static void token_desc(hsm_ctx *hsm, char *buf, size_t cap)
{
    hsm_token_info ti;

    if (hsm_token_info_get(hsm, &ti) == HSM_OK)
        (void)snprintf(buf, cap, "%s (serial %s)", ti.label, ti.serial);
    else
        (void)snprintf(buf, cap, "?");
}

static gs_err read_file_max(const char *path, size_t max, unsigned char **buf, size_t *len)
{
    int rc = util_read_file(path, max, buf, len), e = errno;

    /* The system's reason: "--in DIR" said "I/O error", not that it named
     * a directory. */
    if (rc != UTIL_OK)
        return gs_err_set(rc == UTIL_E_NOTFOUND ? GS_ERR_NOT_FOUND : GS_ERR_IO, "cannot read %s: %s", path,
                          util_read_why(rc, e));
    return GS_OK;
}

static void now_utc(char *buf, size_t cap)
{
    time_t t = time(NULL);
    struct tm tm;

    if (gmtime_r(&t, &tm) == NULL || strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        (void)snprintf(buf, cap, "?");
}

static void free_refs(hsm_key **refs, size_t n)
{
    for (size_t i = 0; refs != NULL && i < n; i++)
        hsm_key_free(refs[i]);
    free(refs);
}

/* ---- the SO PIN ------------------------------------------------------------------ */

/* The signals that end or stop a program at its terminal. Caught while the
 * echo is off, to turn it on again first: a Ctrl-C (or a kill, a hang-up,
 * a Ctrl-Z) at the prompt used to leave the operator's terminal without
 * echo, the next commands typed unseen. */
static const int tty_signals[] = {SIGINT, SIGQUIT, SIGTERM, SIGHUP, SIGALRM, SIGTSTP, SIGTTIN, SIGTTOU};
static volatile sig_atomic_t tty_caught;

static void tty_catch(int sig) { tty_caught = sig; }

/* Catches tty_signals not ignored (saved: their actions, to put back;
 * block: the set of them, for tty_read_char's waits). */
static void tty_signals_catch(struct sigaction *saved, sigset_t *block)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = tty_catch;
    (void)sigemptyset(&sa.sa_mask);
    (void)sigemptyset(block);
    tty_caught = 0;
    for (size_t i = 0; i < GS_ARRAY_LEN(tty_signals); i++) {
        (void)sigaddset(block, tty_signals[i]);
        if (sigaction(tty_signals[i], NULL, &saved[i]) != 0)
            saved[i].sa_handler = SIG_IGN; /* not caught: not put back either */
        else if (saved[i].sa_handler != SIG_IGN)
            (void)sigaction(tty_signals[i], &sa, NULL);
    }
}

/* Puts back the actions and, unless NULL, the signal mask: a signal that
 * came while blocked is caught here. */
static void tty_signals_restore(const struct sigaction *saved, const sigset_t *mask)
{
    if (mask != NULL)
        (void)sigprocmask(SIG_SETMASK, mask, NULL);
    for (size_t i = 0; i < GS_ARRAY_LEN(tty_signals); i++)
        if (saved[i].sa_handler != SIG_IGN)
            (void)sigaction(tty_signals[i], &saved[i], NULL);
}

/* One byte from the terminal: 1, 0 at its end, -1 on an error or when one
 * of tty_signals came (tty_caught). They are blocked but in ppoll's wait
 * (mask): none can slip in between a look at tty_caught and a read that
 * would then wait on. A read in the background, which the blocked
 * SIGTTIN makes an EIO, is taken as that SIGTTIN: the job stops, as
 * without the blocking. */
static int tty_read_char(int fd, const sigset_t *mask, char *c)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};

    for (;;) {
        if (tty_caught != 0)
            return -1;
        int r = ppoll(&pfd, 1, NULL, mask);
        if (r < 0 && errno != EINTR)
            return -1;
        if (r <= 0)
            continue; /* a signal: tty_caught says which, if one of ours */
        ssize_t n = read(fd, c, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EIO && tcgetpgrp(fd) != getpgrp())
            tty_caught = SIGTTIN;
        return n < 0 ? -1 : (int)n;
    }
}

/* The signal caught (the terminal already put back, saved restored) taken
 * as it would have been: most end the program here. True when it was one
 * that stops it (Ctrl-Z; a background job's terminal access), now
 * continued: the prompt is made again. */
static bool tty_signal_take(int sig)
{
    (void)raise(sig);
    return sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU;
}

/* Asked on the terminal without echo: never an argument, never logged.
 * A signal at the prompt puts the terminal back and is then taken as it
 * would have been (the default: the program ends, or stops and asks again
 * when continued). */
static gs_err so_pin_from_tty(const char *desc, char **pin, size_t *len)
{
    struct termios old, quiet;
    struct sigaction saved[GS_ARRAY_LEN(tty_signals)];
    sigset_t block, mask;
    char *buf = NULL;
    size_t n = 0;
    gs_err err = GS_OK;
    int sig, fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);

    *pin = NULL;
    *len = 0;
    if (fd < 0 || tcgetattr(fd, &old) != 0) {
        if (fd >= 0)
            close(fd);
        return gs_err_set(GS_ERR_TOKEN, "no SO PIN: set [hsm] so_pin_source, or run on a terminal");
    }
    if ((buf = calloc(1, SO_PIN_MAX + 2)) == NULL) {
        close(fd);
        return gs_err_set(GS_ERR_NOMEM, "out of memory reading the SO PIN");
    }
again:
    quiet = old;
    quiet.c_lflag &= ~(tcflag_t)ECHO;
    tty_signals_catch(saved, &block);
    /* Echo off (and typed-ahead input dropped) before the prompt shows:
     * nothing typed after the prompt can be echoed. In a background job
     * this raises SIGTTOU (caught; not blocked yet): the job stops until
     * brought to the foreground, as it did before the signals were caught. */
    if (tcsetattr(fd, TCSAFLUSH, &quiet) != 0) {
        tty_signals_restore(saved, NULL);
        if ((sig = tty_caught) != 0 && tty_signal_take(sig))
            goto again;
        err = gs_err_set(GS_ERR_TOKEN, "cannot turn the terminal's echo off for the SO PIN");
        goto out;
    }
    (void)sigprocmask(SIG_BLOCK, &block, &mask);
    (void)dprintf(fd, "security officer (SO) PIN of token %s: ", desc);
    for (;;) {
        char c;
        if (tty_read_char(fd, &mask, &c) <= 0 || c == '\n' || c == '\r')
            break;
        if (n == SO_PIN_MAX) {
            err = gs_err_set(GS_ERR_TOKEN, "SO PIN longer than %u characters", SO_PIN_MAX);
            break;
        }
        buf[n++] = c;
    }
    (void)tcsetattr(fd, TCSAFLUSH, &old); /* the signals blocked: not cut short */
    (void)dprintf(fd, "\n");
    tty_signals_restore(saved, &mask); /* one that came meanwhile is caught now */
    if ((sig = tty_caught) != 0) {
        OPENSSL_cleanse(buf, SO_PIN_MAX + 2);
        n = 0;
        err = GS_OK;
        if (tty_signal_take(sig))
            goto again;
        err = gs_err_set(GS_ERR_TOKEN, "no SO PIN: the prompt was interrupted");
    }
    if (err == GS_OK && n == 0)
        err = gs_err_set(GS_ERR_TOKEN, "empty SO PIN");
out:
    close(fd);
    if (err != GS_OK) {
        util_secret_free(buf, SO_PIN_MAX + 2);
        return err;
    }
    *pin = buf;
    *len = n;
    return GS_OK;
}

static gs_err so_pin_read(const struct gs_config *cfg, const char *desc, char **pin, size_t *len)
{
    int rc;

    if (cfg->hsm.so_pin_source == NULL)
        return so_pin_from_tty(desc, pin, len);
    errno = 0;
    rc = util_read_pin_source(cfg->hsm.so_pin_source, pin, len);
    if (rc != UTIL_OK)
        return gs_err_set(GS_ERR_TOKEN, "[hsm] so_pin_source: %s", util_pin_source_why(rc, errno));
    return GS_OK;
}

/* ---- token transport-key ------------------------------------------------------------ */

int gs_cmd_token(struct env *e, int argc, char **argv)
{
    static const struct opt_def defs[] = {{"--out", true}};
    struct args a;
    struct cli_record rec;
    char desc[96], fp[65], spoken[80], label[64] = "";
    char *pem = NULL;
    util_out *uo = NULL;
    util_out_written written;
    FILE *info;
    gs_err err;
    gsk_err ge;
    int rc = parse_args(argc, argv, defs, GS_ARRAY_LEN(defs), &a);

    if (rc)
        return rc;
    if (a.npos != 1 || strcmp(a.pos[0], "transport-key") != 0)
        return usage_error("token: expected `token transport-key --out FILE`%s", "");
    if (opt(&a, "--out") == NULL)
        return usage_error("token transport-key: --out FILE is required%s", "");
    if ((err = cli_record_open(e->cfg, &rec, "the ceremony")) != GS_OK)
        return fail(err);
    if ((err = env_open(e, NEED_TOKEN)) != GS_OK) {
        rc = cli_record_failure(&rec, "transport-key", NULL, err, NULL);
        goto out;
    }
    token_desc(e->hsm, desc, sizeof(desc));
    /* --out opened before the key is made: a named pipe's open waits for
     * its reader, and a command stopped there (Ctrl-C) left a new key on
     * the token that nothing had taken. */
    if ((err = out_open(opt(&a, "--out"), 0644, &uo)) != GS_OK) {
        rc = cli_record_failure(&rec, "transport-key", NULL, err, json_pack("{s:s}", "token", desc));
        goto out;
    }
    /* Recorded as started first: a command killed between making the key
     * and its outcome record (kill -9, power lost) leaves a record. */
    if ((err = cli_record_started(&rec, "transport-key", NULL, json_pack("{s:s}", "token", desc))) != GS_OK) {
        rc = cli_record_failure(&rec, "transport-key", NULL, err, json_pack("{s:s}", "token", desc));
        goto out;
    }
    if ((ge = gsk_transport_make(e->hsm, desc, &pem, fp, label, sizeof(label))) != GSK_OK) {
        rc = cli_record_failure(&rec, "transport-key", NULL, from_gsk(ge, ""), json_pack("{s:s}", "token", desc));
        goto out;
    }
    /* Written as groupmail's --out is: /dev/stdout or a named pipe is
     * written to, never renamed over (nothing reached standard output,
     * and as root a regular file took the place of /dev/stdout). */
    err = out_commit(uo, opt(&a, "--out"), pem, strlen(pem), &written);
    uo = NULL;
    if (err != GS_OK) {
        gs_token_destroy_label(e->hsm, label);
        rc = cli_record_failure(&rec, "transport-key", NULL, err, json_pack("{s:s}", "token", desc));
        goto out;
    }
    if ((err = cli_record_write(&rec, "transport-key", NULL, "ok",
                            json_pack("{s:s,s:s,s:s}", "token", desc, "transport_key_sha256", fp, "label", label))) !=
        GS_OK) {
        gs_token_destroy_label(e->hsm, label);
        util_out_take_back(opt(&a, "--out"), &written); /* the file written, never a stream or another's */
        rc = fail(err);
        goto out;
    }
    gsk_fingerprint_spoken(fp, spoken);
    info = util_out_info_stream(written.kind); /* standard output holds only the key */
    fprintf(info, "transport key %s made on token %s (RSA-%u, unwrap only, never extractable)\n", label, desc,
            GSK_TRANSPORT_BITS);
    fprintf(info, "sha256 %s\n", spoken);
    fprintf(info, "wrote %s: give it to the sending side and read them the fingerprint over another channel\n",
            opt(&a, "--out"));
    rc = 0;
out:
    util_out_abort(uo);
    free(pem);
    cli_record_close(&rec);
    return rc;
}

/* ---- group export ---------------------------------------------------------------------- */

struct sign_ctx {
    hsm_ctx *hsm;
    hsm_key *key;
    hsm_sig_alg alg;
};

static int ca_sign(void *arg, const unsigned char *data, size_t len, unsigned char **sig, size_t *siglen)
{
    struct sign_ctx *sc = arg;

    return hsm_sign(sc->hsm, sc->key, sc->alg, data, len, sig, siglen) == HSM_OK ? 0 : -1;
}

/* One key of the shipment, as the database and the token know it.
 * *made_here (unless NULL) says, with GS_ERR_POLICY, that the key this
 * token cannot wrap was generated on it (CKA_LOCAL): no copy, but an
 * original made not extractable after its creation, which no server can
 * give any more. */
static gs_err add_key(hsm_ctx *hsm, gsk_key *k, hsm_key **ref, gsk_kind kind, unsigned version, bool current,
                      const char *label, const char *cert_pem, const unsigned char *kek_id, bool *made_here)
{
    hsm_key_info ki;
    hsm_err he;

    if (made_here != NULL)
        *made_here = false;
    k->kind = kind;
    k->version = version;
    k->current = current;
    if (util_strlcpy(k->label, label, sizeof(k->label)) != UTIL_OK)
        return gs_err_set(GS_ERR_ARGS, "label %s too long", label);
    if (cert_pem != NULL && (k->cert_pem = strdup(cert_pem)) == NULL)
        return gs_err_set(GS_ERR_NOMEM, "out of memory copying the certificate of %s", label);
    if (kek_id != NULL)
        memcpy(k->kek_id, kek_id, sizeof(k->kek_id));
    he = hsm_key_find(hsm, label, kind == GSK_KIND_GROUP || kind == GSK_KIND_CA ? HSM_CLASS_PRIVATE : HSM_CLASS_SECRET,
                      ref);
    if (he == HSM_OK)
        he = hsm_key_get_info(hsm, *ref, &ki);
    if (he != HSM_OK)
        return gs_err_set(he == HSM_ERR_KEY_NOT_FOUND ? GS_ERR_NOT_FOUND : GS_ERR_HSM, "key %s: %s (%s)", label,
                          hsm_strerror(he), hsm_last_error_detail());
    /* Copies made by an import are never extractable: only the token
     * that generated a key can give it on. A key generated here (CKA_LOCAL)
     * and not extractable is none: CKA_EXTRACTABLE was set false on it
     * since (PKCS#11 lets anyone with the user PIN do so, never back), and
     * "export from the token that generated it" sent the operator of that
     * very token looking for another. */
    if (kind != GSK_KIND_SECRET && !ki.extractable && ki.local) {
        if (made_here != NULL)
            *made_here = true;
        return gs_err_set(GS_ERR_POLICY, "key %s was made on this token but is not extractable now (CKA_EXTRACTABLE "
                                         "false, set so after it was made): no token can give it, as copies are "
                                         "never given on",
                          label);
    }
    if (kind != GSK_KIND_SECRET && (!ki.extractable || !ki.wrap_with_trusted))
        return gs_err_set(GS_ERR_POLICY, "key %s on this token cannot be wrapped (%s): export from the token "
                                         "that generated it",
                          label, ki.extractable ? "extractable without CKA_WRAP_WITH_TRUSTED" : "an imported copy");
    if (ki.id_len == 0 || ki.id_len > sizeof(k->id))
        return gs_err_set(GS_ERR_HSM, "key %s has no usable CKA_ID", label);
    memcpy(k->id, ki.id, ki.id_len);
    k->id_len = ki.id_len;
    return GS_OK;
}

struct export_sel {
    bool all;
    unsigned version, secret_version; /* 0 = not asked */
};

static bool want_version(const struct export_sel *sel, const gs_store_group_key *k)
{
    if (k->state == GS_KEY_RETIRED)
        return false;
    if (sel->all)
        return true;
    if (sel->version != 0)
        return k->version == sel->version;
    /* Neither: the current version, unless only a secret key version was asked. */
    return sel->secret_version == 0 && k->state == GS_KEY_CURRENT;
}

static bool want_secret(const struct export_sel *sel, const gs_store_secret *s)
{
    return s->state != GS_KEY_RETIRED && (sel->all || s->version == sel->secret_version);
}

/* The line naming a key of group this token cannot give (why: "not on
 * this token", ...) and where to get it: the server whose token made it,
 * with the export that ships it. kind and opt: "key version " and
 * "--version", or "secret key version " and "--secret-version"; opt NULL
 * for the rejection key (only --all ships it). Said alike by `group
 * export --all` (what it left out) and `group import` (what is still
 * missing). A key not on this token may also be one this token made and
 * lost (deleted by hand, the token put back from an older copy): nothing
 * records which server made a key, and told only "give it from the
 * server whose token made it" the operator of a lone origin looked for
 * another server that never existed (copies are never given on), so
 * lost says that too. Names and labels are bounded (names.h): GIVE_LINE
 * holds it. */
#define GIVE_LINE 1024
static void give_from_maker(char line[GIVE_LINE], const char *group, const char *kind, const char *opt,
                            unsigned version, const char *label, const char *why, bool lost)
{
    char cmd[160];

    if (opt == NULL) {
        (void)snprintf(cmd, sizeof(cmd), "group export %s --all", group);
        (void)snprintf(line, GIVE_LINE, "the rejection key (%s): %s; give it from the server whose token made it (`%s`)",
                       label, why, cmd);
    } else {
        (void)snprintf(cmd, sizeof(cmd), "group export %s %s %u", group, opt, version);
        (void)snprintf(line, GIVE_LINE, "%s%u (%s): %s; give it from the server whose token made it (`%s`)", kind,
                       version, label, why, cmd);
    }
    if (lost) {
        size_t n = strlen(line);
        (void)snprintf(line + n, GIVE_LINE - n,
                       ", if that is another server; if it was this one, the key was deleted "
                       "from this token (or the token put back from an older copy) and no server can give it again, "
                       "as copies are never given on");
    }
}

/* What `group export --all` left out: the lines it prints, and for its
 * audit record each key and why alone ("key version 4: not on this
 * token"). The record is one audit line (at most 8 KiB, or the export
 * fails and its file is taken back): the whole lines, some 300 bytes
 * each with their advice (450 for a 64-character group name), made an
 * export that left out about 26 keys (18) fail as "audit log cannot be
 * written". The advice is the same for every key, and the label is the
 * database's (`group show`): without them left_out stays under 4 KiB
 * at EXPORT_KEYS_MAX, whatever the names. */
struct left_out {
    json_t *lines, *keys;
    /* The newest key version and secret key version left out that may be
     * this token's own and gone (not on it, or made here and not
     * extractable now), and whether it is the current one: what to retire
     * if no server can give it (retire_hint). 0: none. */
    unsigned gone[2];
    bool gone_current[2];
};

/* One key --all leaves out: what it is, why, and where to get it. The
 * slot of the shipment it took is made empty again for the next key.
 * made_here: the key was generated on this token and is not extractable
 * now (add_key), which no server can give. */
static gs_err leave_out(struct left_out *left, const char *group, gsk_key *k, hsm_key **ref, gs_err why,
                        bool made_here)
{
    char line[GIVE_LINE], fact[96];
    const char *kind = k->kind == GSK_KIND_SECRET ? "secret key version " : k->kind == GSK_KIND_GROUP ? "key version "
                                                                                                       : "";
    const char *opt = k->kind == GSK_KIND_REJECT   ? NULL
                      : k->kind == GSK_KIND_SECRET ? "--secret-version"
                                                   : "--version";
    const char *what = why == GS_ERR_NOT_FOUND ? "not on this token"
                       : made_here             ? "made on this token, not extractable now"
                                               : "an imported copy here";

    if (made_here) {
        char which[48];
        if (opt == NULL)
            (void)snprintf(which, sizeof(which), "the rejection key");
        else
            (void)snprintf(which, sizeof(which), "%s%u", kind, k->version);
        (void)snprintf(line, GIVE_LINE, "%s (%s): %s (CKA_EXTRACTABLE false, set so after it was made): no token "
                                        "can give it, as copies are never given on",
                       which, k->label, what);
    } else
        give_from_maker(line, group, kind, opt, k->version, k->label, what, why == GS_ERR_NOT_FOUND);
    if ((why == GS_ERR_NOT_FOUND || made_here) && k->kind != GSK_KIND_REJECT) {
        size_t t = k->kind == GSK_KIND_GROUP ? 0 : 1;
        if (k->version > left->gone[t]) {
            left->gone[t] = k->version;
            left->gone_current[t] = k->current;
        }
    }
    if (opt == NULL)
        (void)snprintf(fact, sizeof(fact), "the rejection key: %s", what);
    else
        (void)snprintf(fact, sizeof(fact), "%s%u: %s", kind, k->version, what);
    free(k->cert_pem);
    memset(k, 0, sizeof(*k));
    hsm_key_free(*ref);
    *ref = NULL;
    /* the detail said why the key was left out: replaced, so that a
     * failure here is not reported as that reason */
    if (json_array_append_new(left->lines, json_string(line)) != 0 ||
        json_array_append_new(left->keys, json_string(fact)) != 0)
        return gs_err_set(GS_ERR_NOMEM, "out of memory listing the keys left out");
    return GS_OK;
}

/* Fills the shipment from the rows: --all is every non-retired key of the
 * group (versions, secret key versions, rejection key); --version N one key
 * version (default: the current one); --secret-version N one secret key
 * version. refs[i] is the token object of m->entries[i].
 *
 * In a cluster every server makes versions (a rotation, a removal through
 * HAProxy): its own token holds the original, the others copies, which
 * cannot be given on. --all then gives what this token can and names the
 * rest in left (the file is not complete), so that a new server, or one
 * whose token was made anew, gets the rejection key and this token's
 * versions here and the others' from them. A token that can give no
 * group key version at all (a clone's) is refused as before. */
static gs_err select_keys(struct env *e, const gs_store_group *g, const struct export_sel *sel, gsk_manifest **out,
                          hsm_key ***refs_out, struct left_out *left)
{
    gs_store_group_key *keys = NULL;
    gs_store_secret *secrets = NULL;
    size_t nk = 0, ns = 0, nv = 0, nsec = 0, n = 0, at = 0;
    bool reject = sel->all && g->reject_label != NULL;
    gsk_manifest *m = NULL;
    hsm_key **refs = NULL;
    size_t shipped = 0; /* group key versions in the file */
    gs_err err, first_err = GS_OK;
    char first_msg[512] = "";
    bool made_here = false;

    *out = NULL;
    *refs_out = NULL;
    if ((err = gs_store_group_keys(e->st, g->id, &keys, &nk)) != GS_OK ||
        (err = gs_store_secrets(e->st, g->id, &secrets, &ns)) != GS_OK)
        goto out;
    for (size_t i = 0; i < nk; i++)
        nv += want_version(sel, &keys[i]);
    for (size_t i = 0; i < ns; i++)
        nsec += want_secret(sel, &secrets[i]);
    if (sel->version != 0 && nv == 0)
        err = gs_err_set(GS_ERR_NOT_FOUND, "group %s has no key version %u (or it is retired)", g->name, sel->version);
    else if (sel->secret_version != 0 && nsec == 0)
        err = gs_err_set(GS_ERR_NOT_FOUND, "group %s has no secret key version %u (or it is retired)", g->name,
                         sel->secret_version);
    n = nv + nsec + (reject ? 1 : 0);
    if (!err && n == 0)
        err = gs_err_set(GS_ERR_STATE, "group %s has no key to export", g->name);
    if (!err && n > EXPORT_KEYS_MAX)
        err = gs_err_set(GS_ERR_ARGS, "%zu keys: at most %u per file (export in parts with --version)", n,
                         EXPORT_KEYS_MAX);
    if (err)
        goto out;
    if (gsk_manifest_new(n, &m) != GSK_OK || (refs = calloc(n, sizeof(*refs))) == NULL) {
        err = gs_err_set(GS_ERR_NOMEM, "out of memory for a shipment of %zu keys", n);
        goto out;
    }
    /* The rows come newest first; the shipment lists versions oldest first. */
    for (size_t i = nk; i-- > 0 && !err;) {
        if (!want_version(sel, &keys[i]))
            continue;
        err = add_key(e->hsm, &m->entries[at], &refs[at], GSK_KIND_GROUP, keys[i].version,
                      keys[i].state == GS_KEY_CURRENT, keys[i].token_label, keys[i].cert_pem, NULL, &made_here);
        if (err == GS_OK)
            at++, shipped++;
        else if (sel->all && (err == GS_ERR_NOT_FOUND || err == GS_ERR_POLICY)) {
            if (first_err == GS_OK) {
                first_err = err;
                (void)util_strlcpy(first_msg, gs_err_detail(), sizeof(first_msg));
            }
            err = leave_out(left, g->name, &m->entries[at], &refs[at], err, made_here);
        }
    }
    for (size_t i = ns; i-- > 0 && !err;) {
        if (!want_secret(sel, &secrets[i]))
            continue;
        err = add_key(e->hsm, &m->entries[at], &refs[at], GSK_KIND_SECRET, secrets[i].version,
                      secrets[i].state == GS_KEY_CURRENT, secrets[i].token_label, NULL, secrets[i].kek_id, &made_here);
        if (err == GS_OK)
            at++;
        else if (sel->all && (err == GS_ERR_NOT_FOUND || err == GS_ERR_POLICY))
            err = leave_out(left, g->name, &m->entries[at], &refs[at], err, made_here);
    }
    if (!err && reject) {
        err = add_key(e->hsm, &m->entries[at], &refs[at], GSK_KIND_REJECT, 0, false, g->reject_label, NULL, NULL,
                      &made_here);
        if (err == GS_OK)
            at++;
        else if (err == GS_ERR_NOT_FOUND || err == GS_ERR_POLICY)
            err = leave_out(left, g->name, &m->entries[at], &refs[at], err, made_here);
    }
    /* No key version of the group from this token: a clone's copies only,
     * which it passes on to no one (the first reason stands). */
    if (!err && sel->all && shipped == 0 && first_err != GS_OK)
        err = gs_err_set(first_err, "%s", first_msg);
    if (!err && at == 0)
        err = gs_err_set(GS_ERR_STATE, "group %s: this token holds none of its keys to give", g->name);
    if (err)
        goto out;
    m->n_entries = at;
    m->complete = sel->all && json_array_size(left->lines) == 0;
    *out = m;
    *refs_out = refs;
    m = NULL;
    refs = NULL;
out:
    free_refs(refs, at < n ? at + 1 : n); /* a failed add_key may have set refs[at] */
    gsk_manifest_free(m);
    gs_store_group_keys_free(keys, nk);
    gs_store_secrets_free(secrets, ns);
    return err;
}

/* "v1,v2" style lists and labels of a shipment for the audit record. */
static json_t *shipment_json(const gsk_manifest *m)
{
    json_t *versions = json_array(), *secrets = json_array(), *labels = json_array();
    bool reject = false;

    for (size_t i = 0; i < m->n_entries; i++) {
        const gsk_key *k = &m->entries[i];
        if (k->kind == GSK_KIND_GROUP)
            json_array_append_new(versions, json_integer(k->version));
        else if (k->kind == GSK_KIND_SECRET)
            json_array_append_new(secrets, json_integer(k->version));
        else
            reject = true;
        json_array_append_new(labels, json_string(k->label));
    }
    return json_pack("{s:s,s:s,s:o,s:o,s:b,s:o}", "ceremony", m->ceremony, "transport_key_sha256", m->transport_sha256,
                     "key_versions", versions, "secret_versions", secrets, "rejection_key", (int)reject, "labels",
                     labels);
}

static void print_versions(FILE *f, const gsk_manifest *m, gsk_kind kind, const char *what)
{
    bool any = false;

    for (size_t i = 0; i < m->n_entries; i++) {
        if (m->entries[i].kind != kind)
            continue;
        fprintf(f, "%s%u (%s)", any ? ", " : what, m->entries[i].version, m->entries[i].label);
        any = true;
    }
    if (any)
        fprintf(f, "\n");
}

/* What a shipment holds, one line per kind, to f. */
static void print_shipment(FILE *f, const gsk_manifest *m)
{
    long r = gsk_manifest_find(m, GSK_KIND_REJECT, 0), c = gsk_manifest_find(m, GSK_KIND_CA, 0);

    print_versions(f, m, GSK_KIND_GROUP, "key versions: ");
    print_versions(f, m, GSK_KIND_SECRET, "secret key versions: ");
    if (r >= 0)
        fprintf(f, "rejection key: %s\n", m->entries[r].label);
    if (c >= 0)
        fprintf(f, "CA key: %s\n", m->entries[c].label);
}


static int parse_version(const char *s, const char *what, unsigned *out)
{
    uint64_t v;

    if (s == NULL)
        return 0;
    if (util_parse_u64(s, 1, UINT32_MAX, &v) != UTIL_OK)
        return usage_error("group export: bad %s %s", what, s);
    *out = (unsigned)v;
    return 0;
}

/* The way out when a key left out is gone for good (this token's own,
 * deleted or made not extractable: no server can give it, as copies are
 * never given on): every later --all leaves it out, and a new clone with
 * its own database refuses a file that is not complete, for ever. A
 * retired version is not part of --all: retiring it (with the versions
 * before it: retire takes every one below a version, and the current one
 * only after a rotation) makes the next --all complete. Said only as a
 * condition: in a cluster the key may well be on another server. */
static void retire_hint(FILE *f, const char *group, const struct left_out *left)
{
    static const char *const what[2] = {"key version", "secret key version"};
    static const char *const cmd[2] = {"group", "secret"};

    for (size_t t = 0; t < 2; t++) {
        unsigned v = left->gone[t];
        if (v == 0 || v == UINT32_MAX)
            continue;
        fprintf(f, "if lost: if no server can give %s %u (this token's own key, deleted from it or not extractable "
                   "now), no --all of group %s is complete until it is retired, with the versions before it (mail "
                   "to them can then no longer be read): ",
                what[t], v, group);
        if (left->gone_current[t])
            fprintf(f, "`groupsrv %s rotate %s`, then `groupsrv %s retire %s --before %u` here\n", cmd[t], group,
                    cmd[t], group, v + 1);
        else
            fprintf(f, "`groupsrv %s retire %s --before %u` here\n", cmd[t], group, v + 1);
    }
}

/* The transport key file given with --to: its DER public key and
 * fingerprint, and the RSA-OAEP hashes the receiving token unwraps with
 * (gsk_transport_hashes; 0 for a file that does not say). */
static gs_err read_transport(const char *path, unsigned char **spki, size_t *spki_len, char fp[65], unsigned *unwraps)
{
    unsigned char *text = NULL;
    size_t len = 0;
    gs_err err = read_file_max(path, TRANSPORT_FILE_MAX, &text, &len);
    gsk_err ge;

    if (err != GS_OK)
        return err;
    ge = gsk_transport_read(text, len, spki, spki_len, fp);
    if (ge == GSK_OK && (ge = gsk_transport_hashes(text, len, unwraps)) != GSK_OK) {
        free(*spki);
        *spki = NULL;
        *spki_len = 0;
    }
    free(text);
    return ge == GSK_OK ? GS_OK : from_gsk(ge, "");
}

/* The export's part after the keys are chosen (refs[i] is m's entry i on
 * the token): the SO PIN, the token's wrapping, the CA's signature, the
 * file, the audit line in rec. group is NULL for the CA; left the keys
 * `group export --all` left out (leave_out), or NULL. Returns the exit
 * status. */
static int ship(struct env *e, struct cli_record *rec, gsk_manifest *m, hsm_key **refs, const char *action,
                const char *group, const unsigned char *spki, size_t spki_len, unsigned unwraps, const char *fp,
                const char *out_path, const struct left_out *left)
{
    json_t *extra;
    struct sign_ctx sc;
    unsigned char *der = NULL;
    size_t der_len = 0, so_pin_len = 0;
    char spoken[80], desc[96], *so_pin = NULL;
    FILE *info = info_stream(out_path); /* the .gsk alone on standard output */
    util_out_written written;
    gs_err err;
    gsk_err ge;
    int rc;

    token_desc(e->hsm, desc, sizeof(desc));
    if (util_random_id(m->ceremony, 16) != UTIL_OK) {
        rc = cli_record_failure(rec, action, group, gs_err_set(GS_ERR_CRYPTO, "no random bytes"), NULL);
        goto out;
    }
    now_utc(m->created, sizeof(m->created));
    util_strlcpy(m->exported_by, rec->who, sizeof(m->exported_by));
    util_strlcpy(m->source_token, desc, sizeof(m->source_token));
    util_strlcpy(m->transport_sha256, fp, sizeof(m->transport_sha256));
    gsk_fingerprint_spoken(fp, spoken);
    /* The SO compares this with what the receiving side read to them. On
     * standard error when --out is standard output: the .gsk alone there. */
    fprintf(info, "transport key sha256 %s\n", spoken);
    fflush(info);
    if ((err = so_pin_read(e->cfg, desc, &so_pin, &so_pin_len)) != GS_OK) {
        rc = cli_record_failure(rec, action, group, err, shipment_json(m));
        goto out;
    }
    /* Recorded as started first: the keys leave the token wrapped, and a
     * command killed between writing the file and its outcome record must
     * not leave the file with no record. */
    if ((err = cli_record_started(rec, action, group, shipment_json(m))) != GS_OK) {
        util_secret_free(so_pin, so_pin_len + 1);
        rc = cli_record_failure(rec, action, group, err, shipment_json(m));
        goto out;
    }
    ge = gsk_export(e->hsm, so_pin, so_pin_len, spki, spki_len, unwraps, m, refs);
    util_secret_free(so_pin, so_pin_len + 1);
    if (ge != GSK_OK) {
        rc = cli_record_failure(rec, action, group, from_gsk(ge, ""), shipment_json(m));
        goto out;
    }
    sc.hsm = e->hsm;
    sc.key = gs_ca_key(e->ca);
    sc.alg = EVP_PKEY_get_base_id(X509_get0_pubkey(gs_ca_cert(e->ca))) == EVP_PKEY_EC ? HSM_SIG_ECDSA_SHA256
                                                                                      : HSM_SIG_RSA_PKCS1_SHA256;
    if ((ge = gsk_shipment_write(m, gs_ca_cert(e->ca), ca_sign, &sc, &der, &der_len)) != GSK_OK) {
        rc = cli_record_failure(rec, action, group, from_gsk(ge, "signing the shipment: "), shipment_json(m));
        goto out;
    }
    /* Written as groupmail's --out is: /dev/stdout (`| ssh ... import`)
     * or a named pipe is written to, never renamed over; a file 0600. */
    if ((err = write_out(out_path, der, der_len, 0600, &written)) != GS_OK) {
        rc = cli_record_failure(rec, action, group, err, shipment_json(m));
        goto out;
    }
    extra = shipment_json(m);
    if (left != NULL && json_array_size(left->keys) > 0)
        json_object_set(extra, "left_out", left->keys);
    if ((err = cli_record_write(rec, action, group, "ok", extra)) != GS_OK) {
        util_out_take_back(out_path, &written); /* the file written, never a stream or another's */
        rc = fail(err);
        goto out;
    }
    fprintf(info, "%s%s exported to %s (ceremony %s), signed by the local CA\n", group != NULL ? "group " : "the local CA",
            group != NULL ? group : "", out_path, m->ceremony);
    print_shipment(info, m);
    for (size_t i = 0; left != NULL && i < json_array_size(left->lines); i++)
        fprintf(info, "left out: %s\n", json_string_value(json_array_get(left->lines, i)));
    if (left != NULL && json_array_size(left->lines) > 0) {
        fprintf(info, "not complete: a server sharing this database takes it; a new clone with its own database needs "
                      "every key from one token\n");
        retire_hint(info, group, left);
    }
    rc = 0;
out:
    free(der);
    return rc;
}

int gs_cmd_group_export(struct env *e, int argc, char **argv)
{
    static const struct opt_def defs[] = {
        {"--version", true}, {"--all", false}, {"--secret-version", true}, {"--to", true}, {"--out", true}};
    struct args a;
    struct export_sel sel;
    struct cli_record rec;
    gs_store_group *g = NULL;
    gsk_manifest *m = NULL;
    hsm_key **refs = NULL;
    unsigned char *spki = NULL;
    size_t spki_len = 0, nrefs = 0;
    unsigned unwraps = 0;
    char fp[65];
    struct left_out left = {NULL, NULL, {0, 0}, {false, false}};
    gs_err err;
    int rc = parse_args(argc, argv, defs, GS_ARRAY_LEN(defs), &a);

    if (rc)
        return rc;
    memset(&sel, 0, sizeof(sel));
    if (a.npos != 2)
        return usage_error("group export: expected one group NAME%s", "");
    if (opt(&a, "--to") == NULL || opt(&a, "--out") == NULL)
        return usage_error("group export: --to TRANSPORT.pem and --out FILE.gsk are required%s", "");
    sel.all = opt(&a, "--all") != NULL;
    if ((rc = parse_version(opt(&a, "--version"), "--version", &sel.version)) != 0 ||
        (rc = parse_version(opt(&a, "--secret-version"), "--secret-version", &sel.secret_version)) != 0)
        return rc;
    if (sel.all && (sel.version != 0 || sel.secret_version != 0))
        return usage_error("group export: --all takes every key; no --version or --secret-version with it%s", "");
    /* Recorded from here on, refusals included. */
    if ((err = cli_record_open(e->cfg, &rec, "the ceremony")) != GS_OK)
        return fail(err);
    if ((err = read_transport(opt(&a, "--to"), &spki, &spki_len, fp, &unwraps)) != GS_OK ||
        (err = env_open(e, NEED_DB | NEED_CA)) != GS_OK || (err = gs_store_group_get(e->st, a.pos[1], &g)) != GS_OK)
        goto refused;
    if (!g->replicable) {
        err = gs_err_set(GS_ERR_POLICY, "group %s is not replicable: its keys were made never extractable and "
                                        "cannot be copied (replicable groups are created with --replicable)",
                         g->name);
        goto refused;
    }
    if ((left.lines = json_array()) == NULL || (left.keys = json_array()) == NULL) {
        err = gs_err_set(GS_ERR_NOMEM, "out of memory");
        goto refused;
    }
    if ((err = select_keys(e, g, &sel, &m, &refs, &left)) != GS_OK)
        goto refused;
    nrefs = m->n_entries;
    util_strlcpy(m->group.name, g->name, sizeof(m->group.name));
    util_strlcpy(m->group.address, g->address, sizeof(m->group.address));
    gs_methods_format(g->methods, m->group.methods, sizeof(m->group.methods));
    util_strlcpy(m->group.keyspec, g->algorithm, sizeof(m->group.keyspec));
    m->group.allow_pkcs1v15 = g->allow_pkcs1v15;
    m->group.replicable = true;
    util_strlcpy(m->group.member_wrap, gs_wrap_name(g->member_wrap == GS_WRAP_OAEP ? GS_WRAP_OAEP : GS_WRAP_PKCS1V15),
                 sizeof(m->group.member_wrap));
    if (g->policy != NULL && util_strlcpy(m->group.policy, g->policy, sizeof(m->group.policy)) != UTIL_OK) {
        err = gs_err_set(GS_ERR_STATE, "group %s: its key policy is too long to ship", g->name);
        goto refused;
    }
    rc = ship(e, &rec, m, refs, "group-export", g->name, spki, spki_len, unwraps, fp, opt(&a, "--out"), &left);
    goto out;
refused:
    rc = cli_record_failure(&rec, "group-export", a.pos[1], err,
                            json_pack("{s:o}", "transport_key", cli_json_text(opt(&a, "--to"))));
out:
    cli_record_close(&rec);
    free_refs(refs, nrefs);
    free(spki);
    json_decref(left.lines);
    json_decref(left.keys);
    gsk_manifest_free(m);
    gs_store_group_free(g);
    return rc;
}

int gs_cmd_ca_export(struct env *e, int argc, char **argv)
{
    static const struct opt_def defs[] = {{"--to", true}, {"--out", true}};
    struct args a;
    struct cli_record rec;
    gs_store_ca *row = NULL;
    gsk_manifest *m = NULL;
    hsm_key *ref = NULL;
    unsigned char *spki = NULL;
    size_t spki_len = 0;
    unsigned unwraps = 0;
    char fp[65];
    gs_err err;
    int rc = parse_args(argc, argv, defs, GS_ARRAY_LEN(defs), &a);

    if (rc)
        return rc;
    if (a.npos != 1 || opt(&a, "--to") == NULL || opt(&a, "--out") == NULL)
        return usage_error("ca export: expected `ca export --to TRANSPORT.pem --out FILE.gsk`%s", "");
    if ((err = cli_record_open(e->cfg, &rec, "the ceremony")) != GS_OK)
        return fail(err);
    if ((err = read_transport(opt(&a, "--to"), &spki, &spki_len, fp, &unwraps)) != GS_OK ||
        (err = env_open(e, NEED_DB | NEED_CA)) != GS_OK || (err = gs_store_ca_get(e->st, &row)) != GS_OK)
        goto refused;
    if (!row->replicable) {
        err = gs_err_set(GS_ERR_POLICY, "the local CA is not replicable: its key was made never extractable "
                                        "(a replicable CA is made with `ca init --replicable`)");
        goto refused;
    }
    if (gsk_manifest_new(1, &m) != GSK_OK) {
        err = gs_err_set(GS_ERR_NOMEM, "out of memory for the shipment");
        goto refused;
    }
    if ((err = add_key(e->hsm, &m->entries[0], &ref, GSK_KIND_CA, 0, false, row->label, row->cert_pem, NULL, NULL)) !=
        GS_OK)
        goto refused;
    rc = ship(e, &rec, m, &ref, "ca-export", NULL, spki, spki_len, unwraps, fp, opt(&a, "--out"), NULL);
    goto out;
refused:
    rc = cli_record_failure(&rec, "ca-export", NULL, err,
                            json_pack("{s:o}", "transport_key", cli_json_text(opt(&a, "--to"))));
out:
    cli_record_close(&rec);
    hsm_key_free(ref);
    free(spki);
    gsk_manifest_free(m);
    gs_store_ca_free(row);
    return rc;
}

/* ---- group import ---------------------------------------------------------------------- */

/* The group as the file describes it, checked like `group create` would,
 * but for its address: the group exists already where the file was made,
 * perhaps under an older version's looser address rule. */
static gs_err file_group(const gsk_manifest *m, gs_store_group *row, unsigned *methods)
{
    hsm_key_type type;
    unsigned bits;
    gs_policy policy;

    memset(row, 0, sizeof(*row));
    if (!gs_valid_group_name(m->group.name) || !mailaddr_names_record(m->group.address))
        return gs_err_set(GS_ERR_ARGS, "the file's group name or address is invalid");
    if (gs_methods_parse(m->group.methods, methods) != GS_OK)
        return gs_err_set(GS_ERR_ARGS, "the file's group methods: %s", gs_err_detail());
    if (gs_keyspec_parse(m->group.keyspec, &type, &bits) != GS_OK || type != HSM_KEYTYPE_RSA)
        return gs_err_set(GS_ERR_ARGS, "the file's group key spec %s is not an RSA key", m->group.keyspec);
    if (!m->group.replicable)
        return gs_err_set(GS_ERR_ARGS, "the file says group %s is not replicable", m->group.name);
    row->name = (char *)m->group.name;
    row->address = (char *)m->group.address;
    row->methods = *methods;
    row->algorithm = (char *)m->group.keyspec;
    row->allow_pkcs1v15 = m->group.allow_pkcs1v15;
    row->replicable = true;
    /* The group as it was decided at its creation, not this server's defaults. */
    if (m->group.member_wrap[0] != '\0' && gs_wrap_parse(m->group.member_wrap, &row->member_wrap) != GS_OK)
        return gs_err_set(GS_ERR_ARGS, "the file's member_wrap %s is not oaep or pkcs1v15", m->group.member_wrap);
    if (gs_policy_parse(m->group.policy, &policy) != GS_OK)
        return gs_err_set(GS_ERR_ARGS, "the file's key policy \"%s\" is not one this server knows", m->group.policy);
    row->policy = (char *)m->group.policy;
    return GS_OK;
}

/* Does this server record the key already (a shared database), and the same one? */
static gs_err recorded(const gsk_key *k, const gs_store_group *g, const gs_store_group_key *keys, size_t nk,
                       const gs_store_secret *secrets, size_t ns, bool *yes)
{
    *yes = false;
    if (k->kind == GSK_KIND_REJECT) {
        *yes = g != NULL && g->reject_label != NULL;
        if (*yes && strcmp(g->reject_label, k->label) != 0)
            return gs_err_set(GS_ERR_STATE, "the rejection key here is %s, the file's %s", g->reject_label, k->label);
        return GS_OK;
    }
    for (size_t i = 0; k->kind == GSK_KIND_GROUP && i < nk; i++) {
        if (keys[i].version != k->version)
            continue;
        if (strcmp(keys[i].token_label, k->label) != 0 || strcmp(keys[i].cert_pem, k->cert_pem) != 0)
            return gs_err_set(GS_ERR_STATE, "key version %u recorded here differs from the file's", k->version);
        if (keys[i].state == GS_KEY_RETIRED)
            return gs_err_set(GS_ERR_STATE, "key version %u is retired here", k->version);
        *yes = true;
    }
    for (size_t i = 0; k->kind == GSK_KIND_SECRET && i < ns; i++) {
        if (secrets[i].version != k->version)
            continue;
        if (strcmp(secrets[i].token_label, k->label) != 0 ||
            memcmp(secrets[i].kek_id, k->kek_id, GS_KEK_ID_LEN) != 0)
            return gs_err_set(GS_ERR_STATE, "secret key version %u recorded here differs from the file's",
                              k->version);
        if (secrets[i].state == GS_KEY_RETIRED)
            return gs_err_set(GS_ERR_STATE, "secret key version %u is retired here", k->version);
        *yes = true;
    }
    /* Not recorded, and older than every version recorded here (retired
     * ones stay recorded): the group came here by a file made with --all,
     * which holds every version the origin had not retired, so the origin
     * had retired this one by then. A file that has it was made before: a
     * replay would give members back a version the origin took away. */
    unsigned oldest = 0;
    for (size_t i = 0; k->kind == GSK_KIND_GROUP && i < nk; i++)
        if (oldest == 0 || keys[i].version < oldest)
            oldest = keys[i].version;
    for (size_t i = 0; k->kind == GSK_KIND_SECRET && i < ns; i++)
        if (oldest == 0 || secrets[i].version < oldest)
            oldest = secrets[i].version;
    if (!*yes && oldest != 0 && k->version < oldest)
        return gs_err_set(
            GS_ERR_STATE,
            "%skey version %u is older than every one recorded here (the oldest is %u): the origin had "
            "retired it when it exported the group to this server, and this file was made before that",
            k->kind == GSK_KIND_SECRET ? "secret " : "", k->version, oldest);
    return GS_OK;
}

static unsigned max_version(const gs_store_group_key *keys, size_t nk, const gs_store_secret *secrets, size_t ns,
                            gsk_kind kind)
{
    unsigned v = 0;

    for (size_t i = 0; kind == GSK_KIND_GROUP && i < nk; i++)
        if (keys[i].version > v)
            v = keys[i].version;
    for (size_t i = 0; kind == GSK_KIND_SECRET && i < ns; i++)
        if (secrets[i].version > v)
            v = secrets[i].version;
    return v;
}

/* Does this database's own CA certify a recorded version of the group,
 * while another CA signed the file? Then this server makes the group's
 * versions (it created the group, or took it over with `group rotate
 * --take-over`), and the server that signed the file is not its origin
 * (or no longer: an origin that was taken over). Servers sharing this
 * database share its CA and so sign as it does: *own_ca says the file is
 * signed by this database's CA. */
static gs_err origin_here_other_signer(struct env *e, X509 *signer, const gs_store_group_key *keys, size_t nk,
                                       bool *yes, bool *own_ca)
{
    gs_store_ca *ca_row = NULL;
    X509 *ca = NULL, *x;
    BIO *bio = NULL;
    gs_err err;

    *yes = false;
    *own_ca = false;
    err = gs_store_ca_get(e->st, &ca_row);
    if (err == GS_ERR_NOT_FOUND) {
        err = GS_OK; /* no CA here: it certified nothing */
        goto out;
    }
    if (err || (err = gs_cert_parse((const unsigned char *)ca_row->cert_pem, strlen(ca_row->cert_pem),
                                    &ca)) != GS_OK)
        goto out;
    /* The key, not the certificate: one renewed (ca renew-cert) is the same CA. */
    if (signer == NULL)
        goto out;
    if (EVP_PKEY_eq(X509_get0_pubkey(ca), X509_get0_pubkey(signer)) == 1) {
        *own_ca = true;
        goto out; /* signed by this database's CA: a server of this cluster */
    }
    for (size_t i = 0; i < nk && !*yes; i++) {
        if ((bio = BIO_new_mem_buf(keys[i].cert_pem, -1)) == NULL) {
            err = gs_err_set(GS_ERR_NOMEM, "out of memory reading a key version's certificate");
            goto out;
        }
        /* every certificate recorded, those import-cert replaced included */
        while (!*yes && (x = PEM_read_bio_X509(bio, NULL, util_pem_no_passphrase, NULL)) != NULL) {
            *yes = X509_verify(x, X509_get0_pubkey(ca)) == 1;
            X509_free(x);
        }
        BIO_free(bio);
        bio = NULL;
    }
out:
    ERR_clear_error();
    X509_free(ca);
    gs_store_ca_free(ca_row);
    return err;
}

/* Records what the token now holds: the group (if new) and every key
 * version not recorded yet, in ascending order, so the newest current one
 * ends current. Inside the caller's transaction. */
static gs_err record_rows(struct env *e, const gsk_manifest *m, gs_store_group *row, int64_t gid, bool new_group,
                          const bool *was_recorded, const gs_store_group_key *keys, size_t nk,
                          const gs_store_secret *secrets, size_t ns)
{
    unsigned top[2] = {max_version(keys, nk, secrets, ns, GSK_KIND_GROUP),
                       max_version(keys, nk, secrets, ns, GSK_KIND_SECRET)};
    gs_err err = GS_OK;

    if (new_group) {
        long r = gsk_manifest_find(m, GSK_KIND_REJECT, 0);
        row->reject_label = r >= 0 ? (char *)m->entries[r].label : NULL;
        if ((err = gs_store_group_add(e->st, row, &gid)) != GS_OK)
            return err;
    }
    for (unsigned v = 1; v <= 1000000 && err == GS_OK; v++) {
        bool any = false;
        for (size_t i = 0; i < m->n_entries && err == GS_OK; i++) {
            const gsk_key *k = &m->entries[i];
            if (k->kind == GSK_KIND_REJECT || k->version < v)
                continue;
            any = true;
            if (k->version != v || was_recorded[i])
                continue;
            size_t t = k->kind == GSK_KIND_GROUP ? 0 : 1;
            gs_key_state st = k->current && v > top[t] ? GS_KEY_CURRENT : GS_KEY_OLD;
            if (k->kind == GSK_KIND_GROUP)
                err = gs_store_group_key_add_as(e->st, gid, v, k->label, k->cert_pem, st, NULL);
            else
                err = gs_store_secret_add_as(e->st, gid, v, k->label, k->kek_id, st, NULL);
        }
        if (!any)
            break;
    }
    return err;
}

/* What every import has: the file read and verified, against which CA,
 * for which transport key on this token. */
struct import {
    struct env *e;
    struct cli_record rec;
    bool recording;
    char action[16];     /* "group-import", "ca-import" */
    const char *path;    /* --in */
    X509 *trusted;
    gsk_manifest *m;
    hsm_key *transport;
    bool keep_transport; /* --keep-transport-key: more files made for it to import */
    char desc[96];
};

static void import_clear(struct import *im)
{
    if (im->recording)
        cli_record_close(&im->rec);
    gsk_manifest_free(im->m);
    hsm_key_free(im->transport);
    X509_free(im->trusted);
    memset(im, 0, sizeof(*im));
}

/* A refusal, recorded with what is known of the file; the exit status. */
static int import_refused(struct import *im, const char *group, gs_err err)
{
    json_t *extra = im->m != NULL ? shipment_json(im->m) : json_object();

    json_object_set_new(extra, "file", cli_json_text(im->path));
    return cli_record_failure(&im->rec, im->action, group, err, extra);
}

/* Whether every key of the shipment is on this token by its label: a
 * file imported before, whose import deleted the transport key it came
 * through. Run again (a dropped ssh, an operator unsure it worked), it
 * was told only to make a new transport key and export again: a second
 * ceremony with the SO, for keys already here. False on any doubt. */
static bool all_keys_here(hsm_ctx *hsm, const gsk_manifest *m)
{
    for (size_t i = 0; i < m->n_entries; i++) {
        bool present = false;
        if (gs_token_label_present(hsm, m->entries[i].label, &present) != GS_OK || !present)
            return false;
    }
    return m->n_entries > 0;
}

/* --in FILE [--ca FILE]: reads and verifies the shipment. The token is
 * opened before the database is created (a wrong PIN leaves none). The
 * trusted CA is --ca, else the local CA in the database. */
static int import_begin(struct env *e, int argc, char **argv, const char *what, struct import *im)
{
    static const struct opt_def defs[] = {{"--in", true}, {"--ca", true}, {"--keep-transport-key", false}};
    struct args a;
    gs_store_ca *ca_row = NULL;
    unsigned char *file = NULL;
    size_t flen = 0;
    gs_err err;
    gsk_err ge;
    int rc = parse_args(argc, argv, defs, GS_ARRAY_LEN(defs), &a);

    memset(im, 0, sizeof(*im));
    im->e = e;
    if (rc)
        return rc;
    if (a.npos != 1 || opt(&a, "--in") == NULL)
        return usage_error("%s import: expected `%s import --in FILE.gsk [--ca CA.pem] [--keep-transport-key]`", what,
                           what);
    (void)snprintf(im->action, sizeof(im->action), "%s-import", what);
    im->path = opt(&a, "--in");
    im->keep_transport = opt(&a, "--keep-transport-key") != NULL;
    /* Recorded from here on, refusals included. */
    if ((err = cli_record_open(e->cfg, &im->rec, "the ceremony")) != GS_OK)
        return fail(err);
    im->recording = true;
    if ((err = read_file_max(opt(&a, "--in"), GSK_FILE_MAX, &file, &flen)) != GS_OK ||
        (opt(&a, "--ca") != NULL && (err = read_cert_file(opt(&a, "--ca"), &im->trusted)) != GS_OK) ||
        (err = env_open(e, NEED_TOKEN)) != GS_OK ||
        (err = env_open(e, im->trusted != NULL ? NEED_DB_CREATE | NEED_TOKEN : NEED_DB)) != GS_OK)
        goto out;
    if (im->trusted == NULL) {
        err = gs_store_ca_get(e->st, &ca_row);
        if (err == GS_ERR_NOT_FOUND)
            err = gs_err_set(GS_ERR_NOT_FOUND, "no local CA to check the file against: give --ca FILE (the sending "
                                               "server's `groupsrv ca show`)");
        if (!err)
            err = gs_cert_parse((const unsigned char *)ca_row->cert_pem, strlen(ca_row->cert_pem), &im->trusted);
        if (err)
            goto out;
    }
    if ((ge = gsk_shipment_read(file, flen, im->trusted, &im->m)) != GSK_OK) {
        err = from_gsk(ge, "refused: ");
        goto out;
    }
    /* First the plainest reason a file cannot be used here. */
    if ((ge = gsk_transport_find(e->hsm, im->m->transport_sha256, &im->transport)) != GSK_OK) {
        err = from_gsk(ge, "refused: ");
        if (ge == GSK_ERR_TRANSPORT && all_keys_here(e->hsm, im->m))
            err = gs_err_set(err, "%s; every key in the file is on this token already: if the file was imported "
                                  "here (`groupsrv check` shows its keys), nothing is left to do",
                             gs_err_detail());
        goto out;
    }
    token_desc(e->hsm, im->desc, sizeof(im->desc));
out:
    free(file);
    gs_store_ca_free(ca_row);
    return err ? import_refused(im, im->m != NULL && im->m->group.name[0] ? im->m->group.name : NULL, err) : 0;
}

/* A copy's attributes against its policy: NULL when fine (import_keys). */
typedef const char *(*copy_check_fn)(void *arg, const gsk_key *k, const hsm_key_info *ki);
/* The database rows the import adds, inside its transaction. */
typedef gs_err (*copy_rows_fn)(void *arg);

/* A key of the file already on this token: EXISTS, saying what to do.
 * One the database does not record is what an import killed outright
 * (kill -9, power lost) left: nothing else makes objects with these
 * labels, and the origin still holds the key, so deleting it loses
 * nothing. recorded[i] says whether items[i] is recorded here (NULL:
 * none is). */
static gs_err labels_free(struct import *im, const gsk_import_item *items, size_t n, const bool *recorded)
{
    for (size_t i = 0; i < n; i++) {
        const char *label = im->m->entries[items[i].index].label;
        bool present;
        gs_err err = gs_token_label_present(im->e->hsm, label, &present);
        if (err != GS_OK)
            return err;
        if (!present)
            continue;
        if (recorded != NULL && recorded[i])
            return gs_err_set(GS_ERR_EXISTS, "refused: this token already has %s (imported before: `groupsrv check` "
                                             "shows it; if it shows a problem, delete it: pkcs11-tool --login "
                                             "--delete-object --label %s --type privkey, and pubkey or secrkey, "
                                             "and import again)",
                              label, label);
        return gs_err_set(GS_ERR_EXISTS, "refused: this token already has an object labelled %s, which the "
                                         "database does not record (left by an interrupted import? delete it: "
                                         "pkcs11-tool --login --delete-object --label %s --type privkey, and pubkey "
                                         "or secrkey, and import again)",
                          label, label);
    }
    return GS_OK;
}

/* Puts the items on the token (gsk_import: unwrap, decryption or
 * signature test), checks every copy, records the rows and the audit line
 * (durable before the rows commit: no copy in the database without its
 * record), or else takes every copy off the token again. */
static int import_keys(struct import *im, const char *group, const gsk_import_item *items, size_t n,
                       const bool *recorded, copy_check_fn check, copy_rows_fn rows, void *arg)
{
    struct env *e = im->e;
    struct cli_record *rec = &im->rec;
    const char *action = im->action;
    hsm_key **refs = calloc(n, sizeof(*refs));
    bool imported = false, in_tx = false;
    char spoken[80];
    gs_err err;
    gsk_err ge;
    json_t *extra;
    int rc;

    if (refs == NULL)
        return fail(gs_err_set(GS_ERR_NOMEM, "out of memory"));
    if ((err = labels_free(im, items, n, recorded)) != GS_OK) {
        rc = cli_record_failure(rec, action, group, err, shipment_json(im->m));
        goto out;
    }
    /* Recorded as started first: the keys go on the token before their
     * rows and "ok" record, and a command killed in between (kill -9,
     * power lost) must not leave them with no record. */
    extra = shipment_json(im->m);
    json_object_set_new(extra, "file", cli_json_text(im->path));
    if ((err = cli_record_started(rec, action, group, extra)) != GS_OK) {
        rc = cli_record_failure(rec, action, group, err, shipment_json(im->m));
        goto out;
    }
    if ((ge = gsk_import(e->hsm, im->m, items, n, refs)) != GSK_OK) {
        rc = cli_record_failure(rec, action, group, from_gsk(ge, "refused: "), shipment_json(im->m));
        goto out;
    }
    imported = true;
    /* The copies must pass the same audit `check` and `serve` run. */
    for (size_t i = 0; i < n; i++) {
        const gsk_key *k = &im->m->entries[items[i].index];
        hsm_key_info ki;
        const char *problem = NULL;
        hsm_err he = hsm_key_get_info(e->hsm, refs[i], &ki);
        if (he == HSM_OK)
            problem = check(arg, k, &ki);
        if (he != HSM_OK || problem != NULL) {
            rc = cli_record_failure(rec, action, group,
                                gs_err_set(GS_ERR_POLICY, "imported key %s: %s", k->label,
                                           problem ? problem : hsm_strerror(he)),
                                shipment_json(im->m));
            goto out;
        }
    }
    if ((err = gs_store_begin(e->st)) != GS_OK) {
        rc = cli_record_failure(rec, action, group, err, shipment_json(im->m));
        goto out;
    }
    in_tx = true;
    if ((err = rows(arg)) != GS_OK) {
        rc = cli_record_failure(rec, action, group, err, shipment_json(im->m));
        goto out;
    }
    extra = shipment_json(im->m);
    json_object_set_new(extra, "token", json_string(im->desc));
    json_object_set_new(extra, "exported_by", json_string(im->m->exported_by));
    json_object_set_new(extra, "keep_transport_key", json_boolean(im->keep_transport));
    if ((err = cli_record_write(rec, action, group, "ok", extra)) != GS_OK) {
        rc = fail(err);
        goto out;
    }
    if ((err = gs_store_commit(e->st)) != GS_OK) {
        in_tx = false;
        /* A COMMIT whose answer was lost and whose outcome the database
         * was not there to tell (PostgreSQL restarting, crashed: its
         * recovery may keep it): the rows may name these keys once it is
         * back, so they stay on the token, as group create's do. */
        if (gs_store_commit_unknown(e->st)) {
            char labels[512] = "", what[GS_NAME_MAX + 48];
            for (size_t i = 0; i < n; i++) {
                size_t used = strlen(labels);
                if (used < sizeof(labels))
                    (void)snprintf(labels + used, sizeof(labels) - used, "%s%s", used > 0 ? ", " : "",
                                   im->m->entries[items[i].index].label);
            }
            (void)snprintf(what, sizeof(what), "the import of %s%s was recorded", group != NULL ? "group " : "the CA",
                           group != NULL ? group : "");
            imported = false; /* kept */
            err = gs_keys_kept_after_unknown_commit(err, what, group, labels);
        }
        /* The "ok" line is durable already: the next one says it failed. */
        rc = cli_record_failure(rec, action, group, err, shipment_json(im->m));
        goto out;
    }
    in_tx = false;
    imported = false; /* kept */
    gsk_fingerprint_spoken(im->m->transport_sha256, spoken);
    printf("%s%s imported into token %s (ceremony %s, exported by %s from %s)\n", group != NULL ? "group " : "the CA",
           group != NULL ? group : "", im->desc, im->m->ceremony, im->m->exported_by, im->m->source_token);
    print_shipment(stdout, im->m);
    printf("each key passed its %s test; transport key sha256 %s\n", group != NULL ? "decryption" : "signature",
           spoken);
    rc = 0;
out:
    if (in_tx)
        gs_store_rollback(e->st);
    if (imported) /* all or nothing: what this run put on the token goes again */
        for (size_t i = 0; i < n; i++)
            gs_token_destroy_label(e->hsm, im->m->entries[items[i].index].label);
    free_refs(refs, n);
    return rc;
}

/* The ceremony's last step, once the import is made and recorded: the
 * transport key it came through is deleted, both halves (SECURITY.md,
 * "The receiving token's user PIN and the file": while it and a file made
 * for it both exist, this token's user PIN gives the file's keys in the
 * clear to any PKCS#11 program, without groupsrv). --keep-transport-key
 * keeps it for more files made for it (a new cluster server's `ca import`
 * and its groups' imports). Recorded as `transport-key-destroy`. Returns
 * 0; EXIT_TRANSPORT_LEFT after the line that says what is left and how to
 * delete it (the import stays made); 1 when it went but its record could
 * not be written. */
static int transport_done(struct import *im, const char *group)
{
    char label[128], cmd[320];
    bool public_only = false;
    json_t *extra;
    gs_err err;
    gsk_err ge;

    /* Token labels are at most 127 bytes (hsm): a longer one is a bug. */
    if (util_strlcpy(label, hsm_key_label(im->transport), sizeof(label)) != UTIL_OK ||
        gsk_transport_delete_cmd(label, false, cmd, sizeof(cmd)) != GSK_OK) {
        (void)fail(gs_err_set(GS_ERR_HSM, "the transport key's label is too long"));
        return 1;
    }
    if (im->keep_transport) {
        printf("transport key %s kept (--keep-transport-key): delete both halves once the last file made for it "
               "is imported (import it without --keep-transport-key; or %s)\n",
               label, cmd);
        return 0;
    }
    ge = gsk_transport_destroy(im->e->hsm, im->transport, &public_only);
    extra = json_pack("{s:s,s:s,s:s,s:s}", "ceremony", im->m->ceremony, "transport_key_sha256",
                      im->m->transport_sha256, "label", label, "token", im->desc);
    if (ge != GSK_OK) {
        char outcome[600];
        (void)snprintf(outcome, sizeof(outcome), "failed: %s", gsk_err_detail());
        (void)cli_record_write(&im->rec, "transport-key-destroy", group, outcome, extra);
        /* The instruction before the token's reason, which may be long:
         * a cut line must still say what to do. Only the public half
         * left (it unwraps nothing): say so, not to delete a private key
         * already gone. */
        if (public_only && gsk_transport_delete_cmd(label, true, cmd, sizeof(cmd)) == GSK_OK)
            err = gs_err_set(GS_ERR_HSM, "the import is made and transport key %s's private half deleted, but its "
                                         "public half could not be deleted; delete it now (%s: it unwraps nothing, "
                                         "but is left over): %s",
                             label, cmd, gsk_err_detail());
        else
            err = gs_err_set(GS_ERR_HSM, "the import is made, but transport key %s could not be deleted; delete it "
                                         "now (%s: with this token's user PIN, a file made for it gives its keys in "
                                         "the clear): %s",
                             label, cmd, gsk_err_detail());
        (void)fail(err);
        return EXIT_TRANSPORT_LEFT;
    }
    if ((err = cli_record_write(&im->rec, "transport-key-destroy", group, "ok", extra)) != GS_OK) {
        (void)fail(gs_err_set(err, "transport key %s was deleted, but its audit record was not written: %s", label,
                              gs_err_detail()));
        return 1;
    }
    printf("transport key %s deleted (both halves): the ceremony is done; for a later file make a new one "
           "(token transport-key)\n",
           label);
    return 0;
}

/* ---- group import ---------------------------------------------------------------------- */

struct group_import {
    struct import *im;
    gs_store_group *g; /* the group recorded here, or NULL (new) */
    gs_store_group row; /* the file's group */
    bool *was_recorded;
    gs_store_group_key *keys;
    size_t nk;
    gs_store_secret *secrets;
    size_t ns;
};

static const char *group_copy_check(void *arg, const gsk_key *k, const hsm_key_info *ki)
{
    struct group_import *gi = arg;

    return gs_key_policy_problem(gi->g != NULL ? gi->g : &gi->row, gsk_kind_name(k->kind), 0, ki, NULL);
}

static gs_err group_copy_rows(void *arg)
{
    struct group_import *gi = arg;

    return record_rows(gi->im->e, gi->im->m, &gi->row, gi->g != NULL ? gi->g->id : 0, gi->g == NULL,
                       gi->was_recorded, gi->keys, gi->nk, gi->secrets, gi->ns);
}

/* One key of the group the database records and this token lacks, after
 * an import: named with where to get it, as `group export --all` names
 * what it left out. Returns 1 when missing, 0 when on the token. */
static unsigned still_missing(struct env *e, const char *group, const char *kind, const char *opt, unsigned version,
                              const char *label, hsm_key_class cls)
{
    char line[GIVE_LINE];
    hsm_key *k = NULL;
    hsm_err he = hsm_key_find(e->hsm, label, cls, &k);

    hsm_key_free(k);
    if (he != HSM_ERR_KEY_NOT_FOUND)
        return 0;
    give_from_maker(line, group, kind, opt, version, label, "not on this token", true);
    printf("missing: %s\n", line);
    return 1;
}

/* After a group import: a file that is not complete (--version, or an
 * --all from a token that lacked some of the group's keys, which that
 * export named on its side only) may leave this token without keys the
 * shared database records, and the operator here, who may not have seen
 * the export's output, would take "imported" for done. Names each key
 * still missing (every non-retired version, the rejection key), as check
 * does; nothing when the token has them all. Best effort: the import is
 * made, and check says the same. */
static void print_still_missing(struct env *e, const char *name)
{
    gs_store_group *g = NULL;
    gs_store_group_key *keys = NULL;
    gs_store_secret *secrets = NULL;
    size_t nk = 0, ns = 0;
    unsigned missing = 0;

    if (gs_store_group_get(e->st, name, &g) != GS_OK || gs_store_group_keys(e->st, g->id, &keys, &nk) != GS_OK ||
        gs_store_secrets(e->st, g->id, &secrets, &ns) != GS_OK)
        goto out;
    for (size_t i = nk; i-- > 0;)
        if (keys[i].state != GS_KEY_RETIRED)
            missing += still_missing(e, g->name, "key version ", "--version", keys[i].version, keys[i].token_label,
                                     HSM_CLASS_PRIVATE);
    for (size_t i = ns; i-- > 0;) /* a sealed secret key is a blob in the database, on no token */
        if (secrets[i].state != GS_KEY_RETIRED && secrets[i].sealed == NULL)
            missing += still_missing(e, g->name, "secret key version ", "--secret-version", secrets[i].version,
                                     secrets[i].token_label, HSM_CLASS_SECRET);
    if (g->reject_label != NULL && g->reject_sealed == NULL)
        missing += still_missing(e, g->name, "", NULL, 0, g->reject_label, HSM_CLASS_SECRET);
    if (missing > 0)
        printf("not complete: this token lacks %u of group %s's keys (`groupsrv check` lists them; requests that "
               "need one get 503 key_unavailable here)\n",
               missing, g->name);
out:
    gs_store_secrets_free(secrets, ns);
    gs_store_group_keys_free(keys, nk);
    gs_store_group_free(g);
}

/* A group already recorded here keeps its own member wrap: the origin's
 * later `group set --wrap` travels in each file's manifest but is not
 * applied (a file made before it and imported after would undo it). A
 * clone with its own database would otherwise go on wrapping member-certs
 * copies the way its origin stopped, unsaid: says so when they differ,
 * with the file's date and the command that follows it. Nothing here
 * tells whether the file is older than the origin's last change (files
 * of one version after another travel in any order, and the clone's
 * setting has no date), so the command is given for the origin's setting
 * now: told plainly, an older file imported after the operator followed
 * a newer one sent them back to the wrap the origin had left. */
static void note_member_wrap(const gs_store_group *g, const gsk_manifest *m)
{
    gs_wrap here = g->member_wrap == GS_WRAP_OAEP ? GS_WRAP_OAEP : GS_WRAP_PKCS1V15, file;

    if (m->group.member_wrap[0] == '\0' || gs_wrap_parse(m->group.member_wrap, &file) != GS_OK || file == here)
        return;
    printf("note: group %s here wraps member-certs copies with %s; the file (made %s on %s) says %s: if that is the "
           "origin's setting now (a file made before a change there says the old one), `groupsrv group set %s "
           "--wrap %s` here follows it\n",
           g->name, gs_wrap_name(here), m->created, m->source_token, gs_wrap_name(file), g->name, gs_wrap_name(file));
}

int gs_cmd_group_import(struct env *e, int argc, char **argv)
{
    struct import im;
    struct group_import gi;
    gsk_manifest *m;
    gsk_import_item *items = NULL;
    size_t n = 0;
    unsigned methods = 0;
    bool locked = false;
    gs_err err;
    int rc = import_begin(e, argc, argv, "group", &im);

    memset(&gi, 0, sizeof(gi));
    gi.im = &im;
    if (rc)
        goto out;
    m = im.m;
    if (gsk_manifest_find(m, GSK_KIND_CA, 0) >= 0) {
        rc = import_refused(&im, NULL, gs_err_set(GS_ERR_ARGS, "this file holds the CA key: use `groupsrv ca import`"));
        goto out;
    }
    if ((err = file_group(m, &gi.row, &methods)) != GS_OK) {
        rc = import_refused(&im, m->group.name, err);
        goto out;
    }
    /* The keys lock (store.h) from the check to the commit: a `group
     * create` or another import of this group waits, then finds it. */
    if ((err = gs_store_keys_lock(e->st)) != GS_OK) {
        rc = import_refused(&im, m->group.name, err);
        goto out;
    }
    locked = true;
    err = gs_store_group_get(e->st, m->group.name, &gi.g);
    if (err == GS_OK) {
        const gs_store_group *g = gi.g;
        if (strcasecmp(g->address, gi.row.address) != 0 || g->methods != gi.row.methods ||
            strcmp(g->algorithm, gi.row.algorithm) != 0 || g->allow_pkcs1v15 != gi.row.allow_pkcs1v15 ||
            !g->replicable)
            err = gs_err_set(GS_ERR_STATE, "group %s on this server differs from the file's (address, methods, key "
                                           "or replicable)",
                             g->name);
        if (!err)
            err = gs_store_group_keys(e->st, g->id, &gi.keys, &gi.nk);
        if (!err)
            err = gs_store_secrets(e->st, g->id, &gi.secrets, &gi.ns);
    } else if (err == GS_ERR_NOT_FOUND) {
        /* An --all from a token that lacked some of the group's keys
         * (a cluster's server) is not complete either: "made with --all"
         * alone would send the operator back for the same file. */
        err = m->complete ? GS_OK
                          : gs_err_set(GS_ERR_STATE, "group %s is not on this server yet, and this file is not "
                                                     "complete (made with --version, or with --all on a token "
                                                     "that lacked some of the group's keys): import first a file "
                                                     "of `group export %s --all` that names no key left out (a key "
                                                     "the origin lost, which no server can give, it retires first: "
                                                     "its export's `if lost:` line gives the command)",
                                       m->group.name, m->group.name);
        if (!err && gi.row.allow_pkcs1v15 && gsk_manifest_find(m, GSK_KIND_REJECT, 0) < 0)
            err = gs_err_set(GS_ERR_ARGS, "the file lacks the group's rejection key");
        /* One group per list address, as group create holds to, before
         * any key is put on the token: a second group of an address made
         * here by import gave the exploder and senders two certificates
         * for it, mail to the one refused by the other's list. */
        if (!err)
            err = gs_group_address_free(e->st, gi.row.address);
    }
    if (err) {
        rc = import_refused(&im, m->group.name, err);
        goto out;
    }
    n = m->n_entries;
    items = calloc(n, sizeof(*items));
    gi.was_recorded = calloc(n, sizeof(*gi.was_recorded));
    if (items == NULL || gi.was_recorded == NULL) {
        rc = import_refused(&im, m->group.name, gs_err_set(GS_ERR_NOMEM, "out of memory"));
        goto out;
    }
    bool origin_here = false, own_ca = false;
    if (gi.g != NULL &&
        (err = origin_here_other_signer(e, im.trusted, gi.keys, gi.nk, &origin_here, &own_ca)) != GS_OK) {
        rc = import_refused(&im, m->group.name, err);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const gsk_key *k = &m->entries[i];
        if ((err = recorded(k, gi.g, gi.keys, gi.nk, gi.secrets, gi.ns, &gi.was_recorded[i])) != GS_OK) {
            rc = import_refused(&im, m->group.name, err);
            goto out;
        }
        /* A version newer than this origin's from another server would
         * become current here and take a number this server gives. */
        if (origin_here && !gi.was_recorded[i] && k->kind != GSK_KIND_REJECT &&
            k->version > max_version(gi.keys, gi.nk, gi.secrets, gi.ns, k->kind)) {
            rc = import_refused(
                &im, m->group.name,
                gs_err_set(GS_ERR_STATE,
                           "%skey version %u is newer than this server's: group %s's versions are "
                           "made here (this server's CA certifies them; it created the group or "
                           "took it over), not by the server that signed this file",
                           k->kind == GSK_KIND_SECRET ? "secret " : "", k->version, m->group.name));
            goto out;
        }
        items[i].index = i;
        items[i].usage = k->kind == GSK_KIND_GROUP
                             ? gs_group_key_usage(HSM_KEYTYPE_RSA, methods, gi.row.allow_pkcs1v15)
                         : k->kind == GSK_KIND_SECRET ? HSM_USE_WRAP
                                                      : HSM_USE_SIGN;
        items[i].extractable = k->kind == GSK_KIND_SECRET;
    }
    rc = import_keys(&im, m->group.name, items, n, gi.was_recorded, group_copy_check, group_copy_rows, &gi);
    /* Only on a clone of another server's group: in a cluster (this
     * database's CA signed the file) the database's setting is the
     * group's own, newer than any file; where the group's versions are
     * made here, so is its setting. */
    if (rc == 0 && gi.g != NULL && !own_ca && !origin_here)
        note_member_wrap(gi.g, m);
    if (rc == 0)
        print_still_missing(e, m->group.name);
    if (rc == 0)
        rc = transport_done(&im, m->group.name);
out:
    if (locked)
        gs_store_keys_unlock(e->st);
    free(items);
    free(gi.was_recorded);
    gs_store_group_keys_free(gi.keys, gi.nk);
    gs_store_secrets_free(gi.secrets, gi.ns);
    gs_store_group_free(gi.g);
    import_clear(&im);
    return rc;
}

/* ---- ca import ------------------------------------------------------------------------- */

struct ca_import {
    struct import *im;
    const gsk_key *k;
    bool recorded; /* a shared database records this CA already */
};

static const char *ca_copy_check(void *arg, const gsk_key *k, const hsm_key_info *ki)
{
    (void)arg, (void)k;
    return gs_ca_key_problem(ki, true, NULL);
}

static gs_err ca_copy_rows(void *arg)
{
    struct ca_import *ci = arg;

    return ci->recorded ? GS_OK : gs_store_ca_put_as(ci->im->e->st, ci->k->label, ci->k->cert_pem, true, NULL);
}

int gs_cmd_ca_import(struct env *e, int argc, char **argv)
{
    struct import im;
    struct ca_import ci;
    gs_store_ca *row = NULL;
    X509 *cert = NULL;
    gsk_import_item item;
    long at;
    gs_err err;
    int rc = import_begin(e, argc, argv, "ca", &im);

    memset(&ci, 0, sizeof(ci));
    ci.im = &im;
    if (rc)
        goto out;
    if ((at = gsk_manifest_find(im.m, GSK_KIND_CA, 0)) < 0) {
        rc = import_refused(&im, NULL, gs_err_set(GS_ERR_ARGS, "this file holds no CA key: use `groupsrv group import`"));
        goto out;
    }
    ci.k = &im.m->entries[at];
    /* A CA ships its own key: the key inside must be the trusted one. */
    err = gs_cert_parse((const unsigned char *)ci.k->cert_pem, strlen(ci.k->cert_pem), &cert);
    if (!err && X509_cmp(cert, im.trusted) != 0)
        err = gs_err_set(GS_ERR_ARGS, "the CA key in the file is not the trusted CA's");
    if (!err) {
        err = gs_store_ca_get(e->st, &row);
        if (err == GS_OK && (strcmp(row->cert_pem, ci.k->cert_pem) != 0 || strcmp(row->label, ci.k->label) != 0))
            err = gs_err_set(GS_ERR_STATE, "this database has another CA");
        else if (err == GS_OK)
            ci.recorded = true;
        else if (err == GS_ERR_NOT_FOUND)
            err = GS_OK;
    }
    if (err) {
        rc = import_refused(&im, NULL, err);
        goto out;
    }
    memset(&item, 0, sizeof(item));
    item.index = (size_t)at;
    item.usage = HSM_USE_SIGN;
    rc = import_keys(&im, NULL, &item, 1, &ci.recorded, ca_copy_check, ca_copy_rows, &ci);
    if (rc == 0)
        rc = transport_done(&im, NULL);
out:
    X509_free(cert);
    gs_store_ca_free(row);
    import_clear(&im);
    return rc;
}
