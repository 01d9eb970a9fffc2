/*
 * cli.h: the admin command line's shared pieces, defined in main.c and
 * used by the command files beside it (ceremony.c). Program code: these
 * print the one error line and return exit codes (docs/groupsrv.1.md).
 */
#ifndef GS_CLI_H
#define GS_CLI_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>
#include <openssl/x509.h>

#include "ca.h"
#include "config.h"
#include "gs_error.h"
#include "hsm.h"
#include "outfile.h"
#include "store.h"

#define EXIT_USAGE 2
/* An import made and recorded whose transport key could not be deleted
 * (docs/groupsrv.1.md, EXIT STATUS): not 1, which says the import failed
 * and would send a script to run it again (refused then, 3). */
#define EXIT_TRANSPORT_LEFT 7
#define MAX_ARGS 32

struct opt_def {
    const char *name; /* "--key" */
    bool has_arg;
};

struct args {
    const char *pos[MAX_ARGS];
    size_t npos;
    const char *opt_name[MAX_ARGS];
    const char *opt_val[MAX_ARGS];
    size_t nopt;
};

/* "groupsrv: MSG SUFFIX" on stderr, control characters shown as '?';
 * after error_lines_to_log() (serve) a log record instead,
 * msg="not started" err="MSG SUFFIX", as every line of serve's log is
 * (usage errors stay plain lines: they are for whoever typed the command). */
void error_line(const char *msg, const char *suffix);
void error_lines_to_log(void);
/* A usage error line ("... (see groupsrv --help)"); returns EXIT_USAGE. */
int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Splits argv into positionals and the options in defs; unknown options,
 * missing values and repeated options are usage errors (returns 2). */
int parse_args(int argc, char **argv, const struct opt_def *defs, size_t ndefs, struct args *a);
/* The value of option name ("" for a flag), NULL if absent. */
const char *opt(const struct args *a, const char *name);
/* The error line for err (its detail) and its exit code. */
int fail(gs_err err);
/* One certificate (PEM or DER) from a file. */
gs_err read_cert_file(const char *path, X509 **out);
/* buf written to an --out as groupmail's --out is (common/outfile.h): a
 * regular file replaced atomically with mode, standard output, a named
 * pipe or a device written to, never renamed over. GS_OK, or GS_ERR_IO
 * with "cannot write PATH: why" as its detail. *w says what was written
 * (util_out_take_back(path, w) when the command then fails). */
gs_err write_out(const char *path, const void *buf, size_t len, mode_t mode, util_out_written *w);
/* write_out in two steps, for a command that holds a lock while it makes
 * what it writes: out_open opens path first (a named pipe's open waits
 * for its reader, which must not be under the lock), out_commit writes
 * buf to *o and puts it in place (o freed either way; out_abort(o) drops
 * it unwritten). Errors as write_out's. */
gs_err out_open(const char *path, mode_t mode, util_out **o);
gs_err out_commit(util_out *o, const char *path, const void *buf, size_t len, util_out_written *w);
/* Where a command writing --out path puts its own lines: standard error
 * when path is standard output (the file stays only the file), else
 * standard output. */
FILE *info_stream(const char *path);

/* What a command has open; env_open opens what `need` asks for (once). */
struct env {
    const struct gs_config *cfg;
    gs_store *st;
    hsm_ctx *hsm;
    gs_ca *ca;
};

enum need { NEED_DB = 1u << 0, NEED_DB_CREATE = 1u << 1, NEED_TOKEN = 1u << 2, NEED_CA = 1u << 3, NEED_DB_RO = 1u << 4 };
gs_err env_open(struct env *e, unsigned need);

/* ---- audit records of admin commands (cliaudit.c) ---- */

/* The audit log an admin command appends to, and who runs it. */
struct cli_record {
    struct audit_log *log;
    char who[96]; /* the operator's login name: the records' identity */
};

/* Opens [audit] path (its directory made if missing), or with [audit]
 * store = db the chain INSTANCE/admin. `what` names the command in the
 * error ("the ceremony"): nothing is changed without its record. GS_OK,
 * or GS_ERR_IO / GS_ERR_CONFIG with the detail set. */
gs_err cli_record_open(const struct gs_config *cfg, struct cli_record *r, const char *what);
void cli_record_close(struct cli_record *r);
/* Appends and syncs one record: action, the operator, group (may be NULL),
 * outcome ("ok" or the error) and extra (a JSON object or NULL; stolen). */
gs_err cli_record_write(struct cli_record *r, const char *action, const char *group, const char *outcome,
                        json_t *extra);
/* Before a change that is made before its outcome can be recorded
 * (ca init|renew-cert, member add|set|remove, group create|set|rotate|
 * retire|import-cert|renew-cert, secret rotate|retire|record, tls init):
 * its record with outcome
 * "started" (audit_started, as the server writes one before the same
 * change over REST), the operator's uid added to extra (stolen), durable
 * when this returns GS_OK, so that a command killed between the change
 * and cli_record_done leaves the change with a record. GS_ERR_IO with the
 * detail set ("ACTION GROUP is not done without its record"): change
 * nothing, and pass the error to cli_record_done as the change's. */
gs_err cli_record_started(struct cli_record *r, const char *action, const char *group, json_t *extra);
/* A refusal or failure, recorded with err's detail as its outcome (extra
 * stolen); prints err's line and returns its exit code, as fail(). */
int cli_record_failure(struct cli_record *r, const char *action, const char *group, gs_err err, json_t *extra);
/* A JSON string for a record's extra field from an argument that may be
 * any bytes (a path): s if it is UTF-8, else with every byte outside
 * printable ASCII as '?' (json_pack's "s" refuses such a string, and the
 * whole extra object with it). New reference; NULL for NULL. */
json_t *cli_json_text(const char *s);
/* The record of a change the command made (change GS_OK: outcome "ok") or
 * refused (change's detail as the outcome, as cli_record_failure), with
 * key_version (< 0: none) and extra (stolen); r is closed. Every record
 * also names the operator's "uid". 0 when the change was made and
 * recorded; else the exit code after the one error line: the change's
 * error, or, for a change made whose record could not be written, that
 * (exit 1, "ACTION GROUP was done, but its audit record was not written"). */
int cli_record_done(struct cli_record *r, const char *action, const char *group, long key_version, gs_err change,
                    json_t *extra);
/* cli_record_done for a change that can be taken back: when its record
 * cannot be written, undo(arg) puts things back as they were (called
 * before the error line; the caller holds whatever lock keeps the state
 * it restores current), and the line says "ACTION GROUP was undone: its
 * audit record could not be written" (exit 1); only when the undo fails
 * too does it say the change was done without its record. */
int cli_record_done_or_undo(struct cli_record *r, const char *action, const char *group, long key_version,
                            gs_err change, json_t *extra, gs_err (*undo)(void *arg), void *arg);

#endif
