/*
 * cmd.h: the exploder's subcommands. Each returns a process exit code
 * (sysexits.h values for deliver; 0/1/75 elsewhere, see docs/exploder.1.md).
 */
#ifndef GS_XP_CMD_H
#define GS_XP_CMD_H

#include <stdbool.h>

#include "spool.h"
#include "xp.h"

int cmd_deliver(const xp_conf *c, int argc, char **argv);
int cmd_run(const xp_conf *c, int argc, char **argv);
int cmd_list(const xp_conf *c, int argc, char **argv);
/* Their command lines checked alone, before the configuration is read
 * (main), so a usage error is 64 whatever the file: 0, or 64 with its
 * one line said. cmd_run and cmd_list check again (the same words pass).
 * deliver's is not checked first: under the MTA a configuration that
 * cannot be read keeps the mail (75), not bounce it. */
int cmd_run_args(int argc, char **argv, bool *once);
int cmd_list_args(int argc, char **argv);

/* A usage error: one line on standard error, "STATUS exploder: WHAT (see
 * exploder --help)" (status "5.3.0 " for deliver, whose line the MTA puts
 * into its bounce; "" elsewhere). Returns XP_EX_USAGE (64). */
int xp_usage_error(const char *status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The same for what getopt_long refused (ch its '?' or ':', after opterr 0
 * and an option string starting with ':'); cmd names the command. A long
 * option is named without its "=value". */
int xp_getopt_error(const char *status, const char *cmd, int ch, char **argv);

/* deliver's --members-only rule, which the runner applies again when it
 * prepares a post (`list set --members-only` or `list remove` since
 * deliver took it): the address of the post's one From (hdrs[0, hdr_end),
 * its header block) in from, "" with none, two, or none that reads as an
 * address; and whether that From or the envelope sender (sender, "" for
 * the null sender) is a member of l. */
void xp_post_from(const xp_list *l, const char *hdrs, size_t hdr_end, char *from, size_t fromsz);
bool xp_poster_is_member(spool *s, const xp_list *l, const char *from, const char *sender);

/* Backoff after the attempts-th failure (1-based): retry_min * 2^(attempts-1),
 * capped at retry_max. */
uint64_t xp_backoff(const xp_conf *c, int64_t attempts);

#endif
