/*
 * prepare.h: what the exploder does to a message, without ever decrypting
 * it.
 *
 *  - xp_check_message (deliver time): is this mail acceptable for the list?
 *    A well-formed RFC 5322 message, encrypted (CMS EnvelopedData or
 *    AuthEnvelopedData in S/MIME) with a RecipientInfo for the list's group
 *    certificate, unless the list allows unencrypted mail.
 *  - xp_prepare (queue runner): the message to send. forward: the headers
 *    with List-* added (and a Message-ID when the post has none) and the
 *    body byte for byte (an S/MIME body of base64 text with a line over
 *    998 octets in lines of 76). group-secret and
 *    member-certs: the group RecipientInfo goes to the group server's
 *    rewrap endpoint (one call per message), and the message is written
 *    again with only the returned RecipientInfo(s); the encrypted content
 *    is copied unchanged.
 */
#ifndef GS_XP_PREPARE_H
#define GS_XP_PREPARE_H

#include <stdbool.h>
#include <stdio.h>

#include <openssl/x509.h>

#include "spool.h"
#include "xp.h"

/* XP_OK, XP_ERR_FORMAT (malformed: 65), XP_ERR_NOT_ENCRYPTED or
 * XP_ERR_WRONG_RECIPIENT (77), XP_ERR_CIPHER (a content cipher members
 * cannot decrypt: 77), XP_ERR_TOO_LARGE, XP_ERR_CONFIG (the list
 * has no usable group certificate: 75, the admin must fix it). *kt (may
 * be NULL) gets the key transport of the group's RecipientInfo
 * ("RSA-OAEP", "RSA-OAEP-256", "RSA-PKCS1-v1_5", "ECDH"; static), or NULL
 * when the message is not encrypted to the group (an open forward list).
 * *why (may be NULL) gets what is wrong with a refused message in plain
 * words (static; the envelope's reason for unreadable CMS), else NULL.
 * *unmet (may be NULL): the message is for one of the list's versions, and
 * also for another certificate of the group's CA (issuer and serial
 * number) that the list has not met, perhaps a newer version: deliver
 * asks the group server for its current one. older_ok: a message for
 * none of the list's versions that names, by issuer and serial number, one
 * to four other certificates of the group's CA is XP_OK (*kt NULL): it may
 * be for a version the list never met, and the group server decides at
 * preparation (deliver allows it once the list knows the group's current
 * certificate). Never in forward mode, where no group server decides
 * before the members have it as it came: refused, *why saying so. */
xp_err xp_check_message(const xp_conf *c, const xp_list *l, const void *data, size_t len, const char **kt,
                        const char **why, bool *unmet, bool older_ok);
/* Is cert one of the certificates in pem (the list's group certificates)? */
bool xp_group_cert_known(const char *pem, X509 *cert);

/* What preparing a message left besides the file. */
typedef struct xp_prepared {
    /* member-certs with one copy per member: each member's address and
     * own RecipientInfo (DER); the file is the template (n = 0 otherwise,
     * or when the group server did not name the members: then the file
     * is one copy for all). */
    char **member;
    unsigned char **ri;
    size_t *ri_len;
    size_t n;
    /* a permanent failure: one plain line for the sender's bounce */
    char reason[300];
} xp_prepared;
void xp_prepared_clear(xp_prepared *p);

/* Writes the outgoing form of the message at in_path to out, once the
 * message passes the check deliver runs (xp_check_message and the
 * group's key transports) for the list as it is now (`list set` may have
 * changed it since): refused otherwise (XP_ERR_FORMAT, _NOT_ENCRYPTED,
 * _WRONG_RECIPIENT, _CIPHER, _TOO_LARGE) with deliver's reason in
 * prep->reason.
 * XP_ERR_TEMP: the group server could not be used now (429, 5xx, transport
 * or TLS failure, malformed answer: retry later); XP_ERR_PERM: it refused
 * the message with another 4xx (bounce at once, do not retry); other errors
 * are permanent for this message too. why gets one line for the log,
 * prep->reason one for the sender. */
xp_err xp_prepare(const xp_conf *c, const xp_list *l, const char *in_path, FILE *out, xp_prepared *prep, char *why,
                  size_t whysz);

/* REST client settings for the list's group server: the list's client
 * certificate, else [tls]; [tls] timeout; a response cap that grows with
 * the list's size in member-certs mode (l->n_members). */
struct gs_rest_opts;
void xp_rest_opts(const xp_conf *c, const xp_list *l, struct gs_rest_opts *o);

/* Fetches GET {server}/v1/groups/{group}/certificate (PEM chain, checked to
 * parse) using the list's (or [tls]) client settings. *pem: caller frees. */
xp_err xp_fetch_group_cert(const xp_conf *c, const xp_list *l, char **pem, char *why, size_t whysz);

/* Does the first certificate of pem name addr (an rfc822Name, or an
 * emailAddress in its subject), but for ASCII case? S/MIME clients look a
 * recipient's certificate up by the address they send to. names gets the
 * addresses it does name, comma-separated ("" for none; cut at namesz). */
bool xp_cert_names_address(const char *pem, const char *addr, char *names, size_t namesz);

/* Checks a PEM text holds a certificate; *subject (caller frees) its subject. */
xp_err xp_cert_check(const char *pem, char **subject);

#endif
