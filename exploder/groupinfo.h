/*
 * groupinfo.h: what a list's group will unwrap, from the group server's
 * discovery answer (GET /v1/groups/{g}: key_transports, methods), cached
 * per list in the spool database.
 *
 * `exploder deliver` refuses at once (77, one plain line) a message the
 * group server will never unwrap: a PKCS#1 v1.5 message for a group made
 * with --oaep-only, RSA-OAEP-256 where the token has only SHA-1, an EC
 * group's key agreement in a re-wrapping mode. Without this the message
 * would be accepted, refused by the group server at preparation and
 * bounced later.
 */
#ifndef GS_XP_GROUPINFO_H
#define GS_XP_GROUPINFO_H

#include <stdbool.h>
#include <stddef.h>

#include "spool.h"
#include "xp.h"

/* Fetches the discovery answer when the list's cached one is older than
 * [delivery] group_info_ttl (always with force), with short timeouts, and
 * stores it (l->kt_algs, l->group_methods, l->group_info_at are
 * updated too). On failure what was cached stays: XP_ERR_TEMP with why
 * (one line, for the log), and without force it is not asked again for a
 * minute (at most the ttl). XP_OK when nothing had to be fetched. */
xp_err xp_group_info_refresh(const xp_conf *c, spool *s, xp_list *l, bool force, char *why, size_t whysz);

/* After `groupsrv group rotate` senders encrypt to a certificate the list
 * has not met: fetches the group's current certificate (GET
 * .../certificate, the same short timeouts; not within a minute of a
 * failed fetch, nor of a fetch that found it known: XP_ERR_TEMP then) and,
 * when it is new, adds it to the list's (stored, and in l->group_cert),
 * keeping the older versions, whose mail the group still decrypts; a
 * deliver adding one at the same time is not overwritten. XP_OK when one
 * was added (or found added by another deliver); XP_ERR_NOTFOUND when the
 * current one is known already; XP_ERR_TEMP (or another error) with why. */
xp_err xp_group_cert_refresh(const xp_conf *c, spool *s, xp_list *l, char *why, size_t whysz);
/* Did the group server say within the last minute (at most [delivery]
 * group_info_ttl) that its current certificate is one the list knows
 * (the answer xp_group_cert_refresh does not ask again within)? */
bool xp_group_cert_known_lately(const xp_conf *c, const xp_list *l);
/* The same for a message for a version the list knows that also names
 * another certificate of the group's CA (perhaps a newer version, perhaps
 * the sender's own): not within a minute (at most [delivery]
 * group_info_ttl) of the last discovery fetch, which it refreshes too, and
 * an answer that the current certificate is known is not recorded as
 * xp_group_cert_refresh records it, so that mail to a certificate that is
 * not the group's is still refused at once. XP_ERR_NOTFOUND also when the
 * server was asked within that minute (nothing new to learn, nothing to
 * log). */
xp_err xp_group_cert_refresh_unmet(const xp_conf *c, spool *s, xp_list *l, char *why, size_t whysz);

/* Will the group unwrap a message whose group RecipientInfo uses key
 * transport kt ("RSA-OAEP", "RSA-OAEP-256", "RSA-PKCS1-v1_5", "ECDH") in
 * this list's mode? XP_OK, also when the cached answer does not say;
 * XP_ERR_REFUSED with why: one plain line for the sender, the group
 * server's own words where it has them. */
xp_err xp_group_accepts(const xp_list *l, const char *kt, char *why, size_t whysz);

#endif
