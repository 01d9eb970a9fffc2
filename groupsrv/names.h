/*
 * names.h: the names, roles and delivery methods that every part of groupsrv
 * agrees on, and their validation: the admin commands and the key holder
 * (through store.h) and the network process, which has no database and no
 * token. Pure functions, no I/O; thread-safe.
 */
#ifndef GS_NAMES_H
#define GS_NAMES_H

#include <stdbool.h>
#include <stddef.h>

#include "gs_error.h"

/* Caps on names (also checked by gs_valid_* below). */
#define GS_NAME_MAX 64      /* group name */
#define GS_EMAIL_MAX 254    /* member email / list address */
#define GS_LABEL_MAX 127    /* token label */
#define GS_KEK_ID_LEN 16    /* group secret key identifier (KEKRecipientInfo kekid) */
#define GS_FORMER_CERTS_MAX 8 /* certificates a key version keeps that `group import-cert` replaced */
/* Delivery methods a group allows (bit set). */
enum gs_method {
    GS_METHOD_TLS = 1u << 0,             /* F: plain content key over mTLS (needs CKA_DECRYPT) */
    GS_METHOD_RECIPIENT_KEY = 1u << 1,   /* E: re-wrapped to the caller's certificate key */
    GS_METHOD_GROUP_SECRET = 1u << 2,    /* KEKRecipientInfo under the group secret key */
    GS_METHOD_MEMBERSHIP_CERT = 1u << 3, /* G: membership certificates from the certificate server */
    GS_METHOD_LOCAL_KEY = 1u << 4,       /* C: members hold a copy of the group key on their own token
                                            (replicable groups only; member removal rotates the key) */
};
#define GS_METHODS_DEFAULT \
    (GS_METHOD_TLS | GS_METHOD_RECIPIENT_KEY | GS_METHOD_GROUP_SECRET | GS_METHOD_MEMBERSHIP_CERT)
/* All an EC group key can do: ECDH into a plain content key, deliver=tls
 * (nothing re-wraps a KeyAgreeRecipientInfo; docs/api.md). Its default
 * and its limit. */
#define GS_METHODS_EC GS_METHOD_TLS
/* "tls,recipient-key,group-secret,membership-cert,local-key" <-> bits. Parse rejects
 * unknown or empty names (GS_ERR_ARGS, detail names the word). */
gs_err gs_methods_parse(const char *list, unsigned *out);
/* Writes the canonical comma list into buf (always NUL-terminated). */
void gs_methods_format(unsigned methods, char *buf, size_t bufsize);

/* How the server wraps a content key to a member's certificate for
 * member-certs copies (rewrap "to":"members"): RSA-OAEP, or PKCS#1 v1.5,
 * the only one NSS 3.87 (Thunderbird) and gpgsm 2.2 readers decrypt.
 * DEFAULT (members only): the group's member_wrap. */
typedef enum gs_wrap { GS_WRAP_DEFAULT = 0, GS_WRAP_OAEP, GS_WRAP_PKCS1V15 } gs_wrap;
const char *gs_wrap_name(gs_wrap w);               /* "oaep", "pkcs1v15", "default" */
gs_err gs_wrap_parse(const char *name, gs_wrap *out); /* "oaep" | "pkcs1v15"; ARGS otherwise */

typedef enum gs_role { GS_ROLE_MEMBER = 1, GS_ROLE_EXPLODER, GS_ROLE_ADMIN } gs_role;
const char *gs_role_name(gs_role role);          /* "member", "exploder", "admin" */
gs_err gs_role_parse(const char *name, gs_role *out);

/* Validation of names we put in labels, URLs and certificates:
 * group names: 1..64 of [a-z0-9._-], starting with a letter or digit;
 * emails/addresses: common/mailaddr.h's rule (mailaddr_problem says why
 * one is refused), the exploder's and groupmail's too. */
bool gs_valid_group_name(const char *name);
/* What gs_valid_group_name accepts, in the words of every refusal. */
#define GS_GROUP_NAME_RULE "1-64 of a-z 0-9 . _ -, starting with a letter or digit"
bool gs_valid_email(const char *email);

/* Membership certificates (method G): the subject O and the SAN URI prefix
 * that names their group (ca.c issues them, the TLS layer recognises them). */
#define GS_MEMBERSHIP_O "groupsrv membership"
#define GS_MEMBERSHIP_URI_PREFIX "urn:groupsrv:group:"

#endif
