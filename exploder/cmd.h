/*
 * cmd.h: the exploder's subcommands. Each returns a process exit code
 * (sysexits.h values for deliver; 0/1/75 elsewhere, see docs/exploder.1.md).
 */
#ifndef GS_XP_CMD_H
#define GS_XP_CMD_H

#include "xp.h"

int cmd_deliver(const xp_conf *c, int argc, char **argv);
int cmd_run(const xp_conf *c, int argc, char **argv);
int cmd_list(const xp_conf *c, int argc, char **argv);

/* Backoff after the attempts-th failure (1-based): retry_min * 2^(attempts-1),
 * capped at retry_max. */
uint64_t xp_backoff(const xp_conf *c, int64_t attempts);

#endif
