/*
 * holder.h: the network process's link to the key holder, one per
 * event-loop thread (and one for the main thread). Owned by
 * groupsrv/server/.
 *
 * A call sends one request frame (groupsrv/ipc.h) and later runs its
 * callback exactly once: with the decoded answer, or with NULL when the
 * key holder cannot answer (the link is down or was replaced because the
 * key holder restarted, or no answer came within the timeout). Answers
 * come back in any order: the fair queue in the key holder reorders them;
 * the cookie pairs them, and an answer is taken for a call only when its
 * type is the call's with IPC_REPLY, or IPC_REPLY alone (the key holder's
 * refusal of a request type it does not know); a frame of another type
 * under the call's cookie is dropped, and the call waits on. A late
 * answer to a call that already timed out is dropped.
 *
 * Threads: a link belongs to the thread whose event base it was made
 * with; every function is called on that thread.
 */
#ifndef GS_SRV_HOLDER_H
#define GS_SRV_HOLDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ipc.h"

struct event_base;
typedef struct khlink khlink;

/* The answer is borrowed for the callback only (it may hold a content key:
 * it is wiped after the callback returns). */
typedef void (*khlink_cb)(void *arg, const ipc_msg *reply);

/* A link without a socket yet; calls wait at most timeout_s seconds
 * (but those made with khlink_call_untimed). */
khlink *khlink_new(struct event_base *base, unsigned timeout_s);
/* What a link holds for its key holder, in frames not yet taken by the
 * socket: at most this many bytes by default ([server]
 * keyholder_queue_max), and at most 4096 frames. A call beyond that is
 * refused at once (khlink_call returns -1: the request is answered 503
 * token_unavailable with Retry-After), allocating nothing. A call whose
 * frame has not left when it times out is never sent; a timed call's
 * frame carries its deadline (IPC_T_DEADLINE), past which the key holder
 * drops it unrun. When a call timed out with nothing read from the key
 * holder since it was made, the link is stalled: new calls are refused
 * at once, but a probe (one at a time: the first at once, then at most
 * one per timeout), until the key holder answers anything again;
 * synchronous calls are refused while stalled. */
#define KHLINK_QUEUE_MAX_DEFAULT (1024u * 1024)
void khlink_set_queue_max(khlink *l, size_t bytes);

/* What links hold, and refuse, is counted for /metrics (metrics.h). */

/* Fails the pending calls (callbacks with NULL), closes the socket. NULL fine. */
void khlink_free(khlink *l);
/* Takes fd over as the link's socket. A previous socket is closed and its
 * pending calls fail (the key holder that had them is gone). 0 or -1. */
int khlink_attach(khlink *l, int fd);
bool khlink_up(const khlink *l);
/* The key holder's data generation, as its latest answer said (0: none
 * yet since the link was attached). */
uint64_t khlink_gen(const khlink *l);
/* When an answer, a late one too, was last read on the link (monotonic
 * seconds; 0: none yet): the key holder took work again since then. */
double khlink_last_read(const khlink *l);

/* Sends the request in b (begun with ipc_begin(type, 0); the link sets the
 * cookie and ends it) at the end of the loop's turn, in one write with the
 * other calls made in that turn. 0: cb will run later (with NULL if the
 * link fails first); -1: not sent (link down or the frame is bad); cb will
 * not run. b is left empty either way. */
int khlink_call(khlink *l, ipc_buf *b, khlink_cb cb, void *arg);
/* As khlink_call, without the link's timeout: cb runs with the key
 * holder's answer however long it takes, or with NULL when the link fails
 * first. For requests that change state: once sent they may be under way,
 * and only the key holder can say how they ended. */
int khlink_call_untimed(khlink *l, ipc_buf *b, khlink_cb cb, void *arg);

/* Blocks this thread for the answer (at most timeout_ms): for a TLS
 * handshake signature, which OpenSSL asks for in the middle of a
 * callback, and for start-up. Answers to other calls that arrive
 * meanwhile are kept for the loop, also those read while it waits to
 * write (the key holder reads no more of a link whose answers are not
 * read). The frame is never cut: what the timeout leaves unwritten the
 * loop writes later. 0 with *reply decoded (valid until the
 * next call on this link), or -1. */
int khlink_call_sync(khlink *l, ipc_buf *b, int timeout_ms, ipc_msg *reply);

/* fn(arg, why) runs (on the thread of the link) when the key holder
 * breaks the protocol on any link: an answer that does not decode, a
 * frame header it cannot have sent. The link is down by then; only the
 * supervisor makes new ones (when a process is started), so the network
 * process ends and is started again with new links. NULL: nothing. */
void khlink_on_broken(void (*fn)(void *arg, const char *why), void *arg);

/* The link of the calling thread (set by the thread that owns it), for
 * code that runs inside OpenSSL callbacks. */
void khlink_set_current(khlink *l);
khlink *khlink_current(void);

#endif
