/*
 * serve.h: the group server daemon (`groupsrv serve`) and the audit log
 * checker (`groupsrv audit verify`). Owned by groupsrv/server/.
 *
 * Both are subcommands: they take the already-loaded configuration (borrowed,
 * not freed) and the arguments after the subcommand name (argv[0] is the
 * subcommand itself, e.g. "serve" or "audit"). They print user-facing
 * errors to stderr and return a process exit status:
 *   0 success, 1 runtime failure (token, TLS, audit), 2 usage error,
 *   for audit verify 3 when the chain is broken (a line deleted or edited),
 *   1 when an earlier file of a rotated log is missing; for audit rotate 3
 *   when the last line is torn.
 */
#ifndef GS_SERVE_H
#define GS_SERVE_H

struct gs_config;

/* groupsrv serve: runs until SIGTERM/SIGINT (finishing in-flight requests);
 * SIGHUP reloads the TLS certificate, key, client CAs and CRLs. */
int gs_cmd_serve(const struct gs_config *cfg, int argc, char **argv);

/* groupsrv audit verify [--file PATH] [--no-follow]: checks the hash chain
 * of the audit log ([audit] path unless --file is given) and of the files
 * it was rotated from; groupsrv audit rotate [--file PATH]: seals the log
 * and continues its chain in a new file (safe while the server runs). */
int gs_cmd_audit(const struct gs_config *cfg, int argc, char **argv);

#endif
