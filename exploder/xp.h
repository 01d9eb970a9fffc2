/*
 * xp.h: shared types of the list exploder: its error table and its
 * configuration (docs/exploder.1.md documents every key).
 *
 * The exploder never holds a private key or a content key: it stores and
 * forwards ciphertext, and for group-secret / member-certs lists asks the
 * group server to re-wrap the one group RecipientInfo.
 */
#ifndef GS_XP_H
#define GS_XP_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef enum xp_err {
    XP_OK = 0,
    XP_ERR_NOMEM,
    XP_ERR_ARGS,
    XP_ERR_IO,          /* file system */
    XP_ERR_DB,          /* SQLite */
    XP_ERR_CONFIG,
    XP_ERR_NOTFOUND,    /* no such list / member */
    XP_ERR_EXISTS,      /* list or member already there */
    XP_ERR_FORMAT,      /* malformed message or answer */
    XP_ERR_TOO_LARGE,
    XP_ERR_NOT_ENCRYPTED,   /* not CMS EnvelopedData / AuthEnvelopedData */
    XP_ERR_WRONG_RECIPIENT, /* CMS, but not encrypted to the list's group certificate */
    XP_ERR_REFUSED,     /* policy: sender not allowed, mail loop */
    XP_ERR_TEMP,        /* remote side failed, try again later */
    XP_ERR_PERM,        /* remote side refused for good */
    XP_ERR_CRYPTO,
    XP_ERR_BUSY,        /* another queue runner holds the spool lock */
    XP_ERR_CIPHER,      /* CMS encrypted with what no member can decrypt (3DES content, say) */
    XP_ERR_DAMAGED,     /* a spool file is not what was written (cut short, changed, missing) */
    XP_ERR_SCHEMA,      /* the spool database has a newer schema than this program (a downgrade) */
} xp_err;

const char *xp_strerror(xp_err err);

typedef enum xp_starttls { XP_STARTTLS_NO = 0, XP_STARTTLS_YES, XP_STARTTLS_REQUIRED } xp_starttls;

/* The largest [spool] max_message_size (1 KiB..1 GiB). deliver checks a
 * message against max_message_size as it comes in, the one way in; once
 * accepted it goes out whatever the limit is by then (lowered meanwhile),
 * so the runner reads spooled files up to these bounds, never the limit
 * of the moment. A prepared copy is the message with its List-* headers
 * and the group server's RecipientInfos (an older server's member-certs
 * answer: all members' in one copy). */
#define XP_MESSAGE_SIZE_CEILING ((uint64_t)1 << 30)
#define XP_PREPARED_SIZE_CEILING (XP_MESSAGE_SIZE_CEILING * 2 + ((uint64_t)1 << 20))

typedef struct xp_conf {
    /* [spool] */
    char *spool_path;          /* directory: exploder.db and msg/ */
    uint64_t max_message_size; /* bytes accepted by deliver */
    /* [delivery] */
    char *relay;               /* smtp://host:port[/helo], smtps://..., or maildir:DIR */
    unsigned batch_size;       /* RCPT TO per SMTP transaction */
    uint64_t max_age;          /* seconds before giving up and bouncing */
    uint64_t retry_min, retry_max; /* exponential backoff bounds, seconds */
    uint64_t poll_interval;    /* queue runner idle sleep, seconds */
    uint64_t relay_timeout;    /* seconds for one SMTP transaction */
    char *envelope_from;       /* MAIL FROM for list mail; NULL = LOCAL-owner@DOMAIN of the list */
    char *bounce_from;         /* From: of bounces; NULL = MAILER-DAEMON@DOMAIN of the list */
    xp_starttls starttls;
    char *relay_cacert;        /* CA file for the relay's STARTTLS certificate */
    int relay_verify;          /* verify the relay's certificate (default 1) */
    char *relay_user;          /* optional SMTP AUTH */
    util_auth_clear relay_auth_in_clear; /* where relay_user's password may go with starttls = no (util.h) */
    char *relay_password_file; /* file (0600) holding the SMTP AUTH password */
    uint64_t group_info_ttl;   /* seconds the group server's discovery answer is cached (0: every time) */
    /* [tls]: default client certificate for the group server */
    char *tls_cert, *tls_priv_path, *tls_ca; /* paths; tls_priv_path: the private key FILE (never the key) */
    uint64_t tls_timeout;      /* seconds for one group server request, connection included */
    /* [log] */
    int log_level;
    char *log_file;            /* diagnostic log appended to (NULL: standard error; deliver: syslog, mail) */
} xp_conf;

/* Reads an INI file (NULL path: defaults only, spool path required later).
 * On failure *err_line is the offending line (0 = file not readable). */
xp_err xp_conf_load(const char *path, xp_conf **out, int *err_line);
/* The same from INI text (tests and tests/fuzz/fuzz_config.c). */
xp_err xp_conf_load_string(const char *text, xp_conf **out, int *err_line);
void xp_conf_free(xp_conf *c);
/* Why the last xp_conf_load* on this thread refused its line ("unknown key
 * 'x' in [s]", "bad value for ...", "empty value for ...", "syntax error ..."),
 * "" if it did not refuse one. */
const char *xp_conf_error(void);

/* sysexits.h codes used by `exploder deliver` (spelled out so the mapping is
 * visible in one place). */
enum {
    XP_EX_OK = 0,
    XP_EX_USAGE = 64,
    XP_EX_DATAERR = 65,
    XP_EX_NOUSER = 67,
    XP_EX_SOFTWARE = 70,
    XP_EX_TEMPFAIL = 75,
    XP_EX_NOPERM = 77,
    XP_EX_CONFIG = 78,
};

#endif
