/*
 * ceremony.h: the key ceremony's admin commands (ceremony.c): copying a
 * replicable group's keys to another server's token without them ever
 * leaving token protection. docs/groupsrv.1.md describes the commands,
 * docs/operations.md the ceremony step by step, gsk/gsk.h the files.
 *
 * Each takes the argv after the command word ("transport-key ...",
 * "export NAME ...", "import ..."), prints its one error line itself and
 * returns the exit status of main.c's table (0 ok, 1 failed or refused,
 * 2 usage, 3 not found or already present, 4 token or PIN, 5 config).
 * Every run that gets as far as the token is recorded in the audit log
 * ([audit] path): who, which key versions, which transport key.
 */
#ifndef GS_CEREMONY_H
#define GS_CEREMONY_H

struct env;

/* groupsrv token transport-key --out FILE */
int gs_cmd_token(struct env *e, int argc, char **argv);
/* groupsrv group export NAME [--version N | --all] [--secret-version N] --to FILE --out FILE */
int gs_cmd_group_export(struct env *e, int argc, char **argv);
/* groupsrv group import --in FILE [--ca FILE] */
int gs_cmd_group_import(struct env *e, int argc, char **argv);
/* groupsrv ca export --to FILE --out FILE (argv[0] = "export") */
int gs_cmd_ca_export(struct env *e, int argc, char **argv);
/* groupsrv ca import --in FILE [--ca FILE] (argv[0] = "import") */
int gs_cmd_ca_import(struct env *e, int argc, char **argv);

#endif
