/*
 * prepare.h: what the exploder does to a message, without ever decrypting
 * it.
 *
 *  - xp_check_message (deliver time): is this mail acceptable for the list?
 *    A well-formed RFC 5322 message, encrypted (CMS EnvelopedData or
 *    AuthEnvelopedData in S/MIME) with a RecipientInfo for the list's group
 *    certificate, unless the list allows unencrypted mail.
 *  - xp_prepare (queue runner): the message to send. forward: the headers
 *    with List-* added and the body byte for byte. group-secret and
 *    member-certs: the group RecipientInfo goes to the group server's
 *    rewrap endpoint (one call per message), and the message is written
 *    again with only the returned RecipientInfo(s); the encrypted content
 *    is copied unchanged.
 */
#ifndef GS_XP_PREPARE_H
#define GS_XP_PREPARE_H

#include <stdio.h>

#include "spool.h"
#include "xp.h"

/* XP_OK, XP_ERR_FORMAT (malformed: 65), XP_ERR_NOT_ENCRYPTED or
 * XP_ERR_WRONG_RECIPIENT (77), XP_ERR_TOO_LARGE, XP_ERR_CONFIG (the list
 * has no usable group certificate: 75, the admin must fix it). */
xp_err xp_check_message(const xp_conf *c, const xp_list *l, const void *data, size_t len);

/* Writes the outgoing form of the message at in_path to out.
 * XP_ERR_TEMP: the group server could not be used now (429, 5xx, transport
 * or TLS failure, malformed answer: retry later); XP_ERR_PERM: it refused
 * the rewrap with another 4xx (bounce, do not retry); other errors are
 * permanent for this message too. why gets one line. */
xp_err xp_prepare(const xp_conf *c, const xp_list *l, const char *in_path, FILE *out, char *why, size_t whysz);

/* Fetches GET {server}/v1/groups/{group}/certificate (PEM chain, checked to
 * parse) using the list's (or [tls]) client settings. *pem: caller frees. */
xp_err xp_fetch_group_cert(const xp_conf *c, const xp_list *l, char **pem, char *why, size_t whysz);

/* Checks a PEM text holds a certificate; *subject (caller frees) its subject. */
xp_err xp_cert_check(const char *pem, char **subject);

#endif
