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

struct gs_config;

/* Runs the key holder in this freshly forked process (nothing in it may
 * have touched PKCS#11) until SIGTERM, then finishes the queued work,
 * syncs the audit log and returns 0. Returns 1 without serving when it
 * cannot start (token, PIN, database, audit log, key policy, [tls] key);
 * the reason is printed on stderr. cfg is borrowed. ctl_fd is the control
 * channel from the supervisor: it sends CTL_LINK frames with new link
 * descriptors when the network process was restarted, and gets CTL_READY
 * once the key holder serves. link_fds[0..nlinks) are this side's ends of
 * the links (taken over: closed on return). */
int keyholder_main(const struct gs_config *cfg, int ctl_fd, const int *link_fds, unsigned nlinks);

#endif
