/*
 * keyholder.h: the key holder, the one process of `groupsrv serve` that
 * loads the PKCS#11 module, reads the PIN, logs in, holds the token
 * sessions, writes the audit log and the database (SECURITY.md,
 * "Processes"). Owned by groupsrv/keyholder/.
 *
 * It answers the network process's requests (groupsrv/ipc.h) over one
 * link per network thread: it validates every field, re-checks membership
 * and role for the identity it is told, applies the per-identity rate
 * limit and the failed-unwrap suspension, runs the token work from a fair
 * queue on a pool of token workers (tokenq.h), and sends an answer only
 * once its audit record is durable. It never opens a network socket.
 */
#ifndef GS_KEYHOLDER_H
#define GS_KEYHOLDER_H

#include <stdbool.h>

struct gs_config;
struct ratelimit;

/* Runs the key holder in this freshly forked process (nothing in it may
 * have touched PKCS#11) until SIGTERM, then finishes the queued work,
 * syncs the audit log and returns 0. Returns 1 without serving when it
 * cannot start (token, PIN, database, audit log, key policy, [tls] key);
 * the reason is printed on stderr. cfg is borrowed. ctl_fd is the control
 * channel from the supervisor: it sends CTL_LINK frames with new link
 * descriptors when the network process was restarted, and gets CTL_READY
 * once the key holder serves. link_fds[0..nlinks) are this side's ends of
 * the links (taken over: closed on return). rl: the rate limiter and
 * failed-unwrap counters to use, made by the forking process with
 * keyholder_ratelimit_new(cfg, true) so that they outlive this key holder
 * (`serve`'s supervisor keeps them for the next one); NULL: its own. */
int keyholder_main(const struct gs_config *cfg, int ctl_fd, const int *link_fds, unsigned nlinks,
                   struct ratelimit *rl);

/* The limiter [server] rate_limit, rate_burst, max_failed_unwraps and
 * suspend_seconds ask for, private or shared with the processes forked
 * after it (ratelimit.h). NULL when out of memory. */
struct ratelimit *keyholder_ratelimit_new(const struct gs_config *cfg, bool shared);

#endif
