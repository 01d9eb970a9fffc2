/*
 * khops.c: what a token worker does for each request of the network
 * process (kh.h). Everything the network process says is a claim: the
 * group is loaded here, membership and role are read from the database
 * now for the identity it names (never cached), a recorded certificate
 * must carry the public key it sends, the rate limit and suspension are
 * applied, every field is checked again, and every use of a group key is
 * audited before the answer can leave (keyholder.c holds it until the
 * record is durable).
 */
#include "kh.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "envelope.h"
#include "jsonw.h"
#include "log.h"
#include "mailaddr.h"
#include "metrics.h"
#include "searchq.h"
#include "util.h"

#define ROLES_READERS ((1u << GS_ROLE_MEMBER) | (1u << GS_ROLE_ADMIN))
#define ROLES_EXPLODER (1u << GS_ROLE_EXPLODER)
#define ROLES_ADMIN (1u << GS_ROLE_ADMIN)
#define MAX_CEK 64

/* ---- the token's health ---------------------------------------------------------- */

/* The token answers and still holds its objects. */
static hsm_err token_check(struct kh *kh)
{
    hsm_key_info ki;
    hsm_err he = hsm_ping(kh->hsm);

    if (he != HSM_OK || kh->ca == NULL)
        return he;
    return hsm_key_get_info(kh->hsm, gs_ca_key(kh->ca), &ki);
}

#define OBJECTS_REINIT_MAX 30.0 /* seconds between re-initialisations while objects stay missing */
static pthread_mutex_t objects_mu = PTHREAD_MUTEX_INITIALIZER;
static double objects_reinit_at, objects_reinit_gap; /* next allowed; the gap after it */

/* A token whose objects vanished (a SoftHSM token directory moved away)
 * answers a ping but fails every key request; the local CA's private key
 * stands for the objects (group keys are made beside it). Without a CA
 * only the ping. SoftHSM finds objects that come back only when the module
 * is initialised again, so while the CA key is missing the module is
 * initialised again and the check repeated: at once, then after 1, 2, 4
 * ... at most 30 seconds while they stay missing (each one makes every
 * operation wait a moment, and the logins start over). */
static hsm_err token_health(struct kh *kh)
{
    hsm_err he = token_check(kh);
    double now = util_monotonic_s();
    int reinit;

    pthread_mutex_lock(&objects_mu);
    if (he == HSM_OK)
        objects_reinit_at = objects_reinit_gap = 0;
    reinit = he == HSM_ERR_KEY_NOT_FOUND && now >= objects_reinit_at;
    if (reinit) {
        objects_reinit_at = now + objects_reinit_gap;
        objects_reinit_gap = objects_reinit_gap < 1 ? 1 : objects_reinit_gap * 2;
        if (objects_reinit_gap > OBJECTS_REINIT_MAX)
            objects_reinit_gap = OBJECTS_REINIT_MAX;
    }
    pthread_mutex_unlock(&objects_mu);
    if (reinit && hsm_module_reinit(kh->hsm) == HSM_OK)
        he = token_check(kh);
    return he;
}

/* /healthz needs no certificate and load balancers probe it often, while a
 * check costs about 26 token calls (the CA key's lookup) and an audit room
 * check under the audit log's lock. One check serves every probe for
 * HEALTH_TTL seconds, so probes cannot load the token or the audit disk;
 * while one runs, the others answer the last result instead of queueing on
 * the token, unless it is older than HEALTH_STALE (a check that hangs must
 * not hide a hung token behind an old "ok"). */
#define HEALTH_TTL 1.0
#define HEALTH_STALE 5.0
static pthread_mutex_t health_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    int valid, running;
    double at; /* util_monotonic_s() when the last check ended */
    hsm_err token;
    audit_err audit;
} health;

/* Returns 1 when this call ran the check, 0 when it answered the last
 * result. */
static int kh_health(struct kh *kh, hsm_err *token, audit_err *audit)
{
    double now = util_monotonic_s();
    int check;

    pthread_mutex_lock(&health_mu);
    check = !health.valid || (now - health.at >= HEALTH_TTL && (!health.running || now - health.at >= HEALTH_STALE));
    if (check)
        health.running = 1;
    *token = health.token;
    *audit = health.audit;
    pthread_mutex_unlock(&health_mu);
    if (!check)
        return 0;
    *token = token_health(kh);
    *audit = audit_check(kh->audit);
    pthread_mutex_lock(&health_mu);
    health.valid = 1;
    health.running = 0;
    health.at = util_monotonic_s();
    health.token = *token;
    health.audit = *audit;
    pthread_mutex_unlock(&health_mu);
    return 1;
}

/* A key request found the token unreachable or its objects missing: the
 * health check (at most once a second), whose recovery re-initialises the
 * module while the objects stay missing, so service comes back also when
 * nobody probes /healthz. Returns the token's state. */
static hsm_err token_unavailable(struct kh *kh)
{
    hsm_err he;
    audit_err ae;

    (void)kh_health(kh, &he, &ae);
    return he;
}

/* ---- answers ----------------------------------------------------------------- */

static void answer_begin(struct kh_job *j, uint32_t status)
{
    ipc_begin(&j->reply, j->msg.type | IPC_REPLY, j->msg.cookie);
    ipc_put_u32(&j->reply, IPC_T_STATUS, status);
}

static void error_fields(ipc_buf *b, uint32_t status, unsigned retry, const char *code, const char *msg)
{
    ipc_put_u32(b, IPC_T_STATUS, status);
    ipc_put_str(b, IPC_T_CODE, code);
    ipc_put_str(b, IPC_T_MESSAGE, msg);
    if (retry > 0)
        ipc_put_u32(b, IPC_T_RETRY, retry);
}

void kh_reply_error(ipc_buf *b, uint32_t type, uint64_t cookie, uint64_t gen, uint32_t status, unsigned retry,
                    const char *code, const char *msg)
{
    ipc_begin(b, type, cookie);
    error_fields(b, status, retry, code, msg);
    ipc_put_u64(b, IPC_T_GEN, gen);
}

/* The worker's error answers; kh_job_run adds the generation. */
static void answer_fail(struct kh_job *j, uint32_t status, unsigned retry, const char *code, const char *msg)
{
    ipc_begin(&j->reply, j->msg.type | IPC_REPLY, j->msg.cookie);
    error_fields(&j->reply, status, retry, code, msg);
}

static void answer_error(struct kh_job *j, uint32_t status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void answer_error(struct kh_job *j, uint32_t status, const char *code, const char *fmt, ...)
{
    char msg[300];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* Every 429 and 503 tells the client when to come back. */
    answer_fail(j, status, status == 429 || status == 503 ? 5 : 0, code, msg);
}

static void answer_retry(struct kh_job *j, uint32_t status, unsigned retry, const char *code, const char *msg)
{
    answer_fail(j, status, retry ? retry : 1, code, msg);
}

static void answer_token_unavailable(struct kh_job *j)
{
    answer_retry(j, 503, 5, "token_unavailable", "the key token is not reachable; try again later");
}

/* The SQLite file found malformed (truncated or written over in place
 * under the server): no retry mends it, and /healthz said ok while the
 * requests that read a lost page failed, so a load balancer kept sending
 * them here. Once seen, by a request or by /healthz's own read, /healthz
 * answers 503 until the server is restarted on a repaired file: which
 * pages are lost is not known, and a page the check read may come back
 * from the -wal's frames while others stay lost. */
static atomic_int db_damaged;

static void note_db_damaged(const char *what)
{
    char q[320];

    if (atomic_exchange(&db_damaged, 1) == 0)
        log_error("the database file is damaged: stop the server, check it (PRAGMA integrity_check) and restore "
                  "it from a backup (docs/operations.md), then start the server op=%s detail=\"%s\"",
                  what, log_quote(q, sizeof(q), gs_err_detail()));
}

/* The requests that write the membership database (their refusal of a
 * damaged file is the store's, answer_gs_error says it). */
static bool is_change(uint32_t type)
{
    return type == IPC_MEMBER_PUT || type == IPC_MEMBER_DELETE || type == IPC_GROUP_CREATE;
}

static void answer_gs_error(struct kh_job *j, gs_err err, const char *what)
{
    switch (err) {
    case GS_ERR_NOT_FOUND:
        answer_error(j, 404, "not_found", "%s not found", what);
        return;
    case GS_ERR_EXISTS:
        answer_error(j, 400, "exists", "%s already exists", what);
        return;
    case GS_ERR_ARGS:
    case GS_ERR_CERT:
        answer_error(j, 400, "bad_request", "%s: %s", what, gs_err_detail());
        return;
    case GS_ERR_HSM:
    case GS_ERR_TOKEN:
        metrics_token_error();
        log_error("token failure op=%s detail=\"%s\"", what, log_qs(gs_err_detail()));
        (void)token_unavailable(j->kh);
        answer_token_unavailable(j);
        return;
    case GS_ERR_DB_UNAVAILABLE: {
        j->db_failed = true;
        /* PostgreSQL down, failing over, hung or holding a lock: no
         * answer without the membership check; the store reconnects on a
         * later request. Each cause in its own words. One log line a
         * second: an outage under load is thousands of these. */
        static atomic_long last_logged;
        char msg[160];
        static const char *const why[] = {
            [GS_DB_CAUSE_OTHER] = "the database is not reachable",
            [GS_DB_CAUSE_LOCKED] = "the database is locked by another session",
            [GS_DB_CAUSE_NO_ANSWER] = "the database did not answer in time",
            [GS_DB_CAUSE_READ_ONLY] = "the database is read-only (a standby)",
        };
        gs_db_cause cause = gs_err_db_cause();
        const char *text = (size_t)cause < GS_ARRAY_LEN(why) ? why[cause] : why[GS_DB_CAUSE_OTHER];
        long now = (long)util_monotonic_s(), prev = atomic_load(&last_logged);
        if (now != prev && atomic_compare_exchange_strong(&last_logged, &prev, now))
            log_warn("database unavailable op=%s cause=\"%s\" detail=\"%s\"", what, text, log_qs(gs_err_detail()));
        snprintf(msg, sizeof(msg), "%s; try again later", text);
        answer_retry(j, 503, 5, "db_unavailable", msg);
        return;
    }
    case GS_ERR_DB:
    case GS_ERR_IO:
        j->db_failed = true;
        if (err == GS_ERR_DB && gs_err_db_cause() == GS_DB_CAUSE_KEYS_LOCK) {
            /* Another command, server (PostgreSQL: another session) or
             * request of this one making token keys: not "another
             * process", which sent operators looking for a stray sqlite3. */
            log_warn("store busy op=%s cause=\"another command or request is making token keys (the keys lock)\" "
                     "detail=\"%s\"",
                     what, log_qs(gs_err_detail()));
            answer_retry(j, 503, 5, "store_unavailable",
                         "another command or request is making token keys (the keys lock); try again later");
            return;
        }
        if (err == GS_ERR_DB && gs_err_db_cause() == GS_DB_CAUSE_LOCKED) {
            /* SQLite's write lock held by another process past the busy timeout */
            log_warn("store busy op=%s cause=\"the database is locked by another process\" detail=\"%s\"", what,
                     log_qs(gs_err_detail()));
            answer_retry(j, 503, 5, "store_unavailable",
                         "the membership database is locked by another process; try again later");
            return;
        }
        if (err == GS_ERR_DB && gs_err_db_cause() == GS_DB_CAUSE_DAMAGED) {
            note_db_damaged(what);
            /* The store refuses every write into a file found damaged
             * (store_sqlite.c's sq_write_check), a commit that was
             * answered 201 and lost at the restore from a backup. */
            if (is_change(j->msg.type)) {
                log_error("change refused: the database file is damaged; restore it and restart the server "
                          "op=%s type=%u detail=\"%s\"",
                          what, (unsigned)j->msg.type, log_qs(gs_err_detail()));
                answer_retry(j, 503, 5, "store_unavailable",
                             "the membership database is damaged; changes are refused until it is restored");
                return;
            }
        }
        log_error("store failure op=%s detail=\"%s\"", what, log_qs(gs_err_detail()));
        answer_retry(j, 503, 5, "store_unavailable", "the membership database is not available");
        return;
    default:
        log_error("failure op=%s err=\"%s\" detail=\"%s\"", what, gs_strerror(err), log_qs(gs_err_detail()));
        answer_error(j, 500, "internal", "internal error");
        return;
    }
}

static int hsm_err_unavailable(hsm_err err)
{
    switch (err) {
    case HSM_ERR_TOKEN_ABSENT:
    case HSM_ERR_TOKEN_NOT_FOUND:
    case HSM_ERR_NOT_LOGGED_IN:
    case HSM_ERR_SESSION:
    case HSM_ERR_DEVICE:
    case HSM_ERR_MODULE:
    case HSM_ERR_PIN_INCORRECT:
    case HSM_ERR_PIN_LOCKED:
    case HSM_ERR_PIN_SOURCE:
    case HSM_ERR_PKCS11:
    case HSM_ERR_NOMEM:
    case HSM_ERR_KEY_NOT_FOUND:
        return 1;
    default:
        return 0;
    }
}

/* ---- audit ------------------------------------------------------------------- */

/* Writes one record of this job (its request id filled in); the job's
 * answer then waits until every one of its records is durable. */
static audit_err job_audit(struct kh_job *j, const audit_record *rec)
{
    audit_record copy = *rec;
    unsigned long long seq = 0;

    copy.request_id = ipc_str(&j->msg, IPC_T_REQUEST_ID);
    audit_err ae = audit_write(j->kh->audit, &copy, &seq);
    if (ae == AUDIT_OK) {
        if (j->audit_first == 0)
            j->audit_first = seq;
        j->audit_last = seq;
    }
    return ae;
}

/* Audits and, if that failed, answers 503 (fail closed): -1. */
static int job_audit_or_fail(struct kh_job *j, const audit_record *rec)
{
    if (job_audit(j, rec) != AUDIT_OK) {
        answer_retry(j, 503, 5, "audit_unavailable", "the audit log cannot be written; refusing to answer");
        return -1;
    }
    return 0;
}

static void audit_refusal(struct kh_job *j, const char *action, const char *identity, const char *group,
                          const char *outcome)
{
    audit_record rec = {.action = action, .identity = identity, .group = group, .key_version = -1,
                        .outcome = outcome};
    (void)job_audit_or_fail(j, &rec);
}

/* ---- who is asking ------------------------------------------------------------- */

/* Who the network process says is calling, checked against the store. */
struct caller {
    const char *identity;      /* email/CN, or "anonymous member" */
    const gs_store_member *member; /* NULL for membership certificates; the worker's gcache owns it */
    int anonymous;             /* a membership certificate (method G) */
    const char *cert_group;    /* a membership certificate's group */
    const unsigned char *spki; /* the certificate's public key, as the network process read it */
    size_t spki_len;
    rl_key rl;                 /* its rate-limit key (rate_limit), made once per request */
    int rl_set;
};

static void caller_clear(struct caller *c) { memset(c, 0, sizeof(*c)); }

/* The caller's rate-limit and suspension key: "id:" and the identity, or
 * "membership:" and the group of an anonymous membership certificate. In
 * ASCII lower case: membership compares e-mail addresses without case
 * (SQLite NOCASE; on PostgreSQL too: gcache_same_address), so ALICE@ and
 * alice@ are one member, one bucket. */
static void rate_key(const struct caller *c, const char *group, char *key, size_t cap)
{
    if (c->anonymous)
        snprintf(key, cap, "membership:%s", group); /* anonymous: one bucket per group */
    else
        snprintf(key, cap, "id:%s", c->identity);
    for (char *p = key; *p != '\0'; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
}

/* c's rate-limit key for group, made at its first use in the request. */
static const rl_key *caller_rl_key(struct kh_job *j, struct caller *c, const char *group)
{
    char key[300];

    if (!c->rl_set) {
        rate_key(c, group, key, sizeof(key));
        ratelimit_key(j->kh->rl, key, &c->rl);
        c->rl_set = 1;
    }
    return &c->rl;
}

static int rate_limit(struct kh_job *j, struct caller *c, const char *group)
{
    unsigned retry = 0;

    /* A job the I/O loop gave back was charged by the loop's pass (kh.h):
     * the worker's run takes nothing again. */
    rl_verdict v = ratelimit_take_once(j->kh->rl, caller_rl_key(j, c, group), &j->rl_taken, &retry);
    if (v == RL_LIMITED) {
        answer_retry(j, 429, retry, "rate_limited", "too many requests; slow down");
        return -1;
    }
    if (v == RL_SUSPENDED) {
        answer_retry(j, 429, retry, "suspended", "suspended after too many failed unwraps");
        return -1;
    }
    return 0;
}

/* id with each byte that is not part of well-formed UTF-8, and each
 * backslash, written \xHH (out: 4 bytes per byte of id, and a NUL). */
static const char *escape_not_utf8(const char *id, char *out, size_t cap)
{
    size_t n = strlen(id), o = 0;

    for (size_t i = 0; i < n && o + 5 <= cap;) {
        size_t k = jsonw_utf8_seq(id + i, n - i);
        if (k == 0 || id[i] == '\\') {
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", (unsigned char)id[i]);
            i++;
        } else if (o + k < cap) {
            memcpy(out + o, id + i, k);
            o += k;
            i += k;
        } else {
            break;
        }
    }
    out[o] = '\0';
    return out;
}

/* Reads the caller fields; -1 (answered 400) when they do not hold together.
 * An identity that is not UTF-8 is no member's (the network process takes
 * it from a certificate, as UTF-8; only a compromised one sends another):
 * -1, answered 403 not_a_member and audited under action and group (NULL,
 * or a name that cannot be a group's: none), the identity escaped, for the
 * audit log holds UTF-8 only. It went on to the store (PostgreSQL refuses
 * such a string) and the audit record (jansson does): 503, no record. */
static int caller_read(struct kh_job *j, struct caller *c, const char *action, const char *group)
{
    uint32_t kind = ipc_u32(&j->msg, IPC_T_CALLER, 0);
    const char *id = ipc_str(&j->msg, IPC_T_IDENTITY);

    memset(c, 0, sizeof(*c));
    ipc_bytes(&j->msg, IPC_T_SPKI, &c->spki, &c->spki_len);
    if (kind == IPC_CALLER_IDENTITY && id != NULL && !jsonw_utf8_valid(id, strlen(id))) {
        char shown[4 * 256 + 1]; /* IPC_T_IDENTITY is at most 256 bytes */
        audit_refusal(j, action, escape_not_utf8(id, shown, sizeof(shown)),
                      group != NULL && gs_valid_group_name(group) ? group : NULL, "not_a_member");
        if (j->reply.len == 0)
            answer_error(j, 403, "not_a_member", "not a member of this group");
        return -1;
    }
    if (kind == IPC_CALLER_MEMBERSHIP && id != NULL && gs_valid_group_name(id)) {
        c->anonymous = 1;
        c->identity = "anonymous member";
        c->cert_group = id;
        return 0;
    }
    if (kind == IPC_CALLER_IDENTITY && id != NULL && id[0] != '\0') {
        c->identity = id;
        return 0;
    }
    answer_error(j, 400, "bad_request", "malformed caller");
    return -1;
}

/* The caller's record in group gname (m; NULL: not a member) against
 * roles, with the key they called with: 0, or -1 with the refusal audited
 * under action and answered. authorise's check, and a member change's
 * again under the keys lock (admin_still). */
static int member_check(struct kh_worker *w, struct kh_job *j, const char *gname, unsigned roles,
                        const char *action, const struct caller *c, const gs_store_member *m)
{
    if (m == NULL) {
        audit_refusal(j, action, c->identity, gname, "not_a_member");
        if (j->reply.len == 0)
            answer_error(j, 403, "not_a_member", "not a member of this group");
        return -1;
    }
    if (m->cert_pem != NULL && !gcache_spki_matches_pem(w->gc, c->spki, c->spki_len, m->cert_pem)) {
        audit_refusal(j, action, c->identity, gname, "certificate_mismatch");
        if (j->reply.len == 0)
            answer_error(j, 403, "certificate_mismatch", "this certificate is not the one recorded for the member");
        return -1;
    }
    if (!(roles & (1u << m->role))) {
        audit_refusal(j, action, c->identity, gname, "forbidden_role");
        if (j->reply.len == 0)
            answer_error(j, 403, "forbidden", "the role '%s' may not do this", gs_role_name(m->role));
        return -1;
    }
    return 0;
}

/* The caller for group g with one of `roles` (bit set of 1 << gs_role);
 * allow_anonymous: a membership certificate of this group is accepted.
 * Answers 400/403/429/503 (refusals audited) and returns -1 otherwise. */
static int authorise(struct kh_worker *w, struct kh_job *j, gs_group *g, unsigned roles, int allow_anonymous,
                     const char *action, struct caller *c)
{
    const gs_store_group *gi = gs_group_info(g);
    gs_err e;

    if (caller_read(j, c, action, gi->name) != 0)
        return -1;
    if (c->anonymous) {
        if (!allow_anonymous || strcmp(c->cert_group, gi->name) != 0 ||
            !(gi->methods & GS_METHOD_MEMBERSHIP_CERT)) {
            audit_refusal(j, action, c->identity, gi->name, "not_a_member");
            if (j->reply.len == 0)
                answer_error(j, 403, "not_a_member",
                             "a membership certificate is accepted only for recipient-key unwraps of its group");
            return -1;
        }
        return rate_limit(j, c, gi->name);
    }
    e = gcache_member(w->gc, w->store, gs_group_id(g), c->identity, &c->member);
    if (e != GS_OK && e != GS_ERR_NOT_FOUND) {
        answer_gs_error(j, e, "member");
        return -1;
    }
    if (member_check(w, j, gi->name, roles, action, c, e == GS_OK ? c->member : NULL) != 0)
        return -1;
    return rate_limit(j, c, gi->name);
}

/* An admin of any group (group creation, and /metrics by default).
 * A refusal is audited as authorise's are (SECURITY.md: every refusal of
 * an admin endpoint), under action, with group (NULL: none) the one the
 * request names: not_a_member when the identity is no member anywhere,
 * certificate_mismatch when its only admin records name another key,
 * forbidden_role otherwise. bound_pem (may be NULL): set to a copy of the
 * certificate of an admin record that binds the caller's key, if one
 * does (the caller frees it), else NULL. */
static int any_admin_check(struct kh_worker *w, struct kh_job *j, const struct caller *c, const char *action,
                           const char *group, char **bound_pem);

static int authorise_any_admin(struct kh_worker *w, struct kh_job *j, struct caller *c, const char *action,
                               const char *group, char **bound_pem)
{
    if (bound_pem != NULL)
        *bound_pem = NULL;

    if (caller_read(j, c, action, group) != 0)
        return -1;
    if (group != NULL && !gs_valid_group_name(group))
        group = NULL; /* a name that cannot be a group's is not written into the record */
    if (c->anonymous) {
        audit_refusal(j, action, c->identity, group, "forbidden_role");
        if (j->reply.len == 0)
            answer_error(j, 403, "forbidden", "administrators authenticate with an identity certificate");
        return -1;
    }
    if (any_admin_check(w, j, c, action, group, bound_pem) != 0)
        return -1;
    return rate_limit(j, c, "");
}

/* authorise_any_admin's check of an identified caller's admin records,
 * read from the database (group: the record's, already judged), with
 * no rate-limit token taken: also group creation's check again once
 * the keys lock is held. 0, or -1 with the refusal audited and answered;
 * bound_pem as authorise_any_admin's. */
static int any_admin_check(struct kh_worker *w, struct kh_job *j, const struct caller *c, const char *action,
                           const char *group, char **bound_pem)
{
    gs_store_group **groups = NULL;
    size_t n = 0;
    int ok = 0, member = 0, mismatch = 0;

    if (bound_pem != NULL)
        *bound_pem = NULL;
    gs_err e = gs_store_group_list(w->store, &groups, &n);
    if (e != GS_OK) {
        answer_gs_error(j, e, "groups");
        return -1;
    }
    /* With bound_pem, every group is read: a record binding the key is
     * preferred to one that binds none. */
    for (size_t i = 0; i < n && !(ok && (bound_pem == NULL || *bound_pem != NULL)); i++) {
        gs_store_member *m = NULL;
        gs_err me = gs_store_member_get(w->store, groups[i]->id, c->identity, &m);
        if (me != GS_OK && me != GS_ERR_NOT_FOUND) {
            /* A record not read is not a record absent: a brief database
             * error answered an admin 403 forbidden, which a script takes
             * as final, where 503 store_unavailable with Retry-After says
             * try again (authorise's answer for the same failure). At
             * once, while the error's cause and detail are this read's. */
            answer_gs_error(j, me, "member");
            gs_store_group_list_free(groups, n);
            if (bound_pem != NULL) {
                free(*bound_pem);
                *bound_pem = NULL;
            }
            return -1;
        }
        if (me == GS_OK && gcache_same_address(c->identity, m->email)) {
            member = 1;
            if (m->role == GS_ROLE_ADMIN) {
                if (m->cert_pem == NULL) {
                    ok = 1;
                } else if (gcache_spki_matches_pem(w->gc, c->spki, c->spki_len, m->cert_pem)) {
                    ok = 1;
                    if (bound_pem != NULL && (*bound_pem = strdup(m->cert_pem)) == NULL) {
                        gs_store_member_free(m);
                        gs_store_group_list_free(groups, n);
                        answer_error(j, 500, "internal", "out of memory");
                        return -1;
                    }
                } else {
                    mismatch = 1;
                }
            }
        }
        gs_store_member_free(m);
    }
    gs_store_group_list_free(groups, n);
    if (!ok) {
        audit_refusal(j, action, c->identity, group,
                      mismatch ? "certificate_mismatch" : member ? "forbidden_role" : "not_a_member");
        /* The code the record gives: a script told `forbidden` for an
         * admin's address with another key than its record's would look
         * for a missing role, not at the certificate it sent. */
        if (j->reply.len == 0 && mismatch)
            answer_error(j, 403, "certificate_mismatch",
                         "this certificate is not the one recorded for the administrator");
        else if (j->reply.len == 0)
            answer_error(j, 403, "forbidden", "only administrators may do this");
        return -1;
    }
    return 0;
}

/* The group from the worker's cache; answers 404/503 on failure. */
static gs_group *load_group(struct kh_worker *w, struct kh_job *j, const char *name)
{
    gs_group *g = NULL;
    gs_err e;

    if (name == NULL || !gs_valid_group_name(name)) {
        answer_error(j, 404, "not_found", "no such group");
        return NULL;
    }
    if ((e = gcache_group(w->gc, w->store, w->kh->hsm, name, &g)) != GS_OK) {
        if (e != GS_ERR_NOT_FOUND)
            gcache_mark_stale(w->gc);
        /* A token failure met by the I/O loop's load is given back as a
         * failed unwrap is (hsm_item_fail): the health check that
         * answer_gs_error runs (some 26 token calls on a token that just
         * failed, perhaps a module re-initialisation) must not hold the
         * loop, and an idle worker may load the group where the loop
         * could not. Nothing is audited or charged before the load. */
        if (w->io_loop && (e == GS_ERR_HSM || e == GS_ERR_TOKEN)) {
            w->gave_back = true;
            answer_error(j, 503, "token_unavailable", "given back to a token worker");
            return NULL;
        }
        /* the words of a name that cannot be a group's (above, and the
         * network process's): one condition, one message */
        if (e == GS_ERR_NOT_FOUND)
            answer_error(j, 404, "not_found", "no such group");
        else
            answer_gs_error(j, e, "group");
        return NULL;
    }
    return g;
}

/* ---- unwrap ---------------------------------------------------------------------- */

/* One item's answer, or why not. */
struct item_res {
    uint32_t status;
    const char *code;
    char msg[200];
    unsigned retry;
    unsigned char key[MAX_CEK];   /* method F */
    size_t key_len;
    unsigned char *wrapped;       /* methods E and group-secret (owned) */
    size_t wrapped_len;
    const gs_group_secret_ref *secret;
    unsigned key_version;
};

static int item_fail(struct item_res *r, uint32_t status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int item_fail(struct item_res *r, uint32_t status, const char *code, const char *fmt, ...)
{
    va_list ap;

    r->status = status;
    r->code = code;
    r->retry = status == 503 ? 5 : 0;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof(r->msg), fmt, ap);
    va_end(ap);
    return -1;
}

static void item_res_clear(struct item_res *r)
{
    OPENSSL_cleanse(r->key, sizeof(r->key));
    free(r->wrapped);
    memset(r, 0, sizeof(*r));
}

static int hsm_failure_is_decrypt(hsm_err err)
{
    /* Everything that depends on the ciphertext's content becomes one
     * answer; the caller cannot tell padding, length or key apart. */
    return err == HSM_ERR_DECRYPT || err == HSM_ERR_BUFFER || err == HSM_ERR_ARGS;
}

static int hsm_item_fail(struct kh_worker *w, struct item_res *r, hsm_err err, const char *op)
{
    /* A cached key that failed for another reason than the ciphertext may
     * be gone or changed on the token: load the group afresh next time. */
    if (hsm_failure_is_decrypt(err)) {
        log_info("unwrap failed op=%s err=\"%s\" detail=\"%s\"", op, hsm_strerror(err),
                 log_qs(hsm_last_error_detail()));
        return item_fail(r, 400, "unwrap_failed", "the key could not be unwrapped");
    }
    /* The caller's choice, not a failing token: a key transport this token
     * does not do (RSA-OAEP-256 on SoftHSM), a certificate key that cannot
     * be wrapped to (an EC membership certificate). Nothing to reload, and
     * no token error counted, which any member could inflate at will. */
    if (err == HSM_ERR_MECHANISM) {
        log_warn("token cannot do what was asked op=%s detail=\"%s\"", op, log_qs(hsm_last_error_detail()));
        return item_fail(r, 400, "unsupported_algorithm", "the token does not support this algorithm");
    }
    if (err == HSM_ERR_PUBLIC_KEY) {
        log_info("caller's key refused op=%s detail=\"%s\"", op, log_qs(hsm_last_error_detail()));
        return item_fail(r, 400, "unsupported_certificate_key", "the certificate key cannot be wrapped to (RSA needed)");
    }
    gcache_mark_stale(w->gc);
    /* The I/O loop does not run the health check below (some 26 token
     * calls on a token that just failed, the audit log's room, perhaps a
     * module re-initialisation): nothing of the job is audited or answered
     * yet, it is given back (kh.h) and a token worker runs it again, which
     * answers, or fails it and checks the token. */
    if (w->io_loop && hsm_err_unavailable(err)) {
        w->gave_back = true;
        return item_fail(r, 503, "token_unavailable", "given back to a token worker");
    }
    metrics_token_error();
    log_error("token operation failed op=%s err=\"%s\" detail=\"%s\"", op, hsm_strerror(err),
              log_qs(hsm_last_error_detail()));
    if (hsm_err_unavailable(err)) {
        (void)token_unavailable(w->kh);
        return item_fail(r, 503, "token_unavailable", "the key token is not reachable; try again later");
    }
    return item_fail(r, 500, "internal", "token operation failed");
}

/* A key version recorded in the shared database but missing from this
 * instance's token (a token not yet given a newer key by the ceremony):
 * 503 key_unavailable for this version only, the group keeps working with
 * the versions it has; the group is reloaded next time, so a key imported
 * meanwhile is found. A token that lost its objects lacks every version:
 * that is the token's failure (token_unavailable), not a copy still due. */
static int key_unavailable(struct kh_worker *w, struct item_res *r, unsigned version, const char *what)
{
    if (w->gave_back) /* not answered: a worker runs the job again (search_again) */
        return item_fail(r, 503, "key_unavailable", "given back to a token worker");
    gcache_mark_stale(w->gc);
    if (token_unavailable(w->kh) != HSM_OK) {
        metrics_token_error();
        log_error("token lost its objects op=\"%s\" detail=\"%s\"", what, log_qs(hsm_last_error_detail()));
        return item_fail(r, 503, "token_unavailable", "the key token is not reachable; try again later");
    }
    log_warn("key version not on this token (groupsrv check lists them) kind=\"%s\" version=%u", what, version);
    return item_fail(r, 503, "key_unavailable", "%s version %u is not on this server's token; try another server",
                     what, version);
}

/* A key version the database names but the token's search did not show
 * may be one another process has only just made: SoftHSM 2.6 writes a new
 * object's file after releasing its lock, so a search at that moment in
 * another process reads the file empty and misses the object, and a
 * network HSM cluster shows an object made through one member on another
 * only once it has synchronised. The request itself searches again, after
 * a short pause, before it answers 503 key_unavailable (a fresh session
 * would not help: SoftHSM indexes the token directory at every search).
 * A version truly absent (a replica the ceremony has not reached) must
 * still be answered at once and must not hold the token workers: after
 * a search again that found nothing, the requests for that version (group,
 * key kind and version, searchq.h) answer at once for SEARCH_AGAIN_GAP
 * seconds (a key imported meanwhile is still found: the group is loaded
 * afresh at every request while it lacks one). Per version, not per group:
 * an old version never given to this replica must not stop the search
 * again for the group's version made a moment ago. */
#define SEARCH_AGAIN_GAP 2.0
static const long search_again_pause_ms[] = {20, 100};

/* Searches the token again for the keys group g lacks, until *key (one
 * of g's, version of kind) is found: at most one search after each pause,
 * and never a pause past the request's deadline (its client is answered
 * 503 token_unavailable by the network process then: the request answers
 * key_unavailable at once instead, while its client still waits). While
 * another request searches again for the same version, waits for that
 * search's outcome instead (searchq.h). True when *key is now set (every
 * ref into g stays valid, its key filled in). */
static bool search_again(struct kh_worker *w, gs_group *g, hsm_key *const *key, enum searchq_kind kind,
                         const char *what, unsigned version)
{
    int64_t id = gs_group_id(g);
    /* a group has one rejection key (gs:reject:NAME) whatever the group
     * key's version: one mark for it, not one per version asked */
    unsigned qv = kind == SEARCHQ_REJECT_KEY ? 0 : version;
    bool found = false, cut = false;
    if (w->io_loop) {
        /* The I/O loop never pauses nor waits for another's search: the
         * job goes back to the queue for a worker (kh.h, gave_back), with
         * nothing of it audited or answered yet. */
        w->gave_back = true;
        return false;
    }
    size_t tries = 0, npause = sizeof(search_again_pause_ms) / sizeof(search_again_pause_ms[0]);
    double now = util_monotonic_s(), whole = 0;
    /* A waiter waits no longer than a whole search again takes (with room
     * for its searches), nor past its deadline. */
    for (size_t i = 0; i < npause; i++)
        whole += search_again_pause_ms[i] / 1e3;
    double wait_until = now + 2 * whole + 0.5;
    if (w->deadline_s > 0 && w->deadline_s < wait_until)
        wait_until = w->deadline_s;
    /* A version not searched in vain yet may be one just made (a group-
     * secret load wants the new secret at once): every other worker may
     * wait for the search (searchq.h). */
    unsigned max_waiters = w->kh->workers;

    bool waited = false;
    enum searchq_turn turn = searchq_begin(id, kind, qv, now, wait_until, max_waiters, &waited);

    /* a wait for another's search is no service time either */
    if (waited)
        w->paused = true;
    switch (turn) {
    case SEARCHQ_ANSWER:
        return false;
    case SEARCHQ_FOUND:
        /* another request's search found it: this worker's group needs a
         * search of its own for its handle (no pause) */
        if (gs_group_find_missing(g, w->kh->hsm, &found) == GS_OK && *key != NULL)
            log_info("key version found by another request's search again kind=\"%s\" version=%u", what, version);
        return *key != NULL;
    case SEARCHQ_SEARCH:
        break;
    }
    while (*key == NULL && tries < npause) {
        long ms = search_again_pause_ms[tries];
        struct timespec pause = {0, ms * 1000000L};
        if (w->deadline_s > 0 && util_monotonic_s() + ms / 1e3 >= w->deadline_s) {
            cut = true;
            break;
        }
        tries++;
        /* this job is no sample of the token queue's service time
         * (kh_job_run): its 120 ms, weighed 1/16 into an average of well
         * under a millisecond a turn (or taken whole as the first sample),
         * made the queue expect tens of times the wait and shed a backlog
         * as overloaded */
        w->paused = true;
        (void)nanosleep(&pause, NULL);
        /* a failing token is told by key_unavailable's health check */
        if (gs_group_find_missing(g, w->kh->hsm, &found) != GS_OK)
            break;
    }
    /* A search cut short by its deadline proved nothing: the next request
     * searches again (no quiet gap), and so does a waiter with time left
     * (searchq_begin). */
    searchq_done(id, kind, qv, *key != NULL, util_monotonic_s(), cut && *key == NULL ? 0 : SEARCH_AGAIN_GAP);
    if (*key != NULL)
        log_info("key version found at a search again kind=\"%s\" version=%u searches=%zu", what, version, tries);
    else if (cut)
        log_info("search again cut short by the request's deadline kind=\"%s\" version=%u searches=%zu", what,
                 version, tries);
    else
        log_info("key version not found at a search again kind=\"%s\" version=%u searches=%zu quiet_s=%.0f", what,
                 version, tries, SEARCH_AGAIN_GAP);
    return *key != NULL;
}

static const unsigned deliver_bits[] = {0, GS_METHOD_TLS, GS_METHOD_RECIPIENT_KEY, GS_METHOD_GROUP_SECRET};
static const char *const deliver_names[] = {"", "tls", "recipient-key", "group-secret"};

/* One item's input, as sent and then checked here against the group. */
struct item_in {
    uint32_t deliver, alg, flags, cek_len;
    bool version_implied; /* a bare encrypted key sent without key_version */
    const gs_group_key_ref *ref;
    hsm_unwrap_input in;
    hsm_ecdh_input ecdh;
};

/* May caller c have this item delivered so? (unwrap only: the exploder's
 * rewrap never delivers a key to its caller). */
static int deliver_check(gs_group *g, const struct caller *c, uint32_t deliver, struct item_res *r)
{
    const gs_store_group *gi = gs_group_info(g);

    if (deliver < IPC_DELIVER_TLS || deliver > IPC_DELIVER_GROUP_SECRET)
        return item_fail(r, 400, "bad_request", "\"deliver\" must be tls, recipient-key or group-secret");
    if (!(gi->methods & deliver_bits[deliver]) && !(c->anonymous && deliver == IPC_DELIVER_RECIPIENT_KEY))
        return item_fail(r, 403, "method_not_allowed", "the group does not allow deliver=%s", deliver_names[deliver]);
    if (c->anonymous && deliver != IPC_DELIVER_RECIPIENT_KEY)
        return item_fail(r, 403, "not_a_member", "a membership certificate allows only deliver=recipient-key");
    return 0;
}

/* Reads and checks one item's key input against group g (the order of
 * the checks is the order of the answers the API documents). */
static int item_read(gs_group *g, const ipc_msg *it, uint32_t deliver, struct item_in *u, struct item_res *r)
{
    const unsigned char *p;
    size_t n;
    uint32_t version = ipc_u32(it, IPC_T_KEY_VERSION, 0), cek_len = ipc_u32(it, IPC_T_CEK_LEN, 0);

    memset(u, 0, sizeof(*u));
    u->deliver = deliver;
    u->alg = ipc_u32(it, IPC_T_ALG, 0);
    u->flags = ipc_u32(it, IPC_T_FLAGS, 0);
    u->cek_len = cek_len;
    if (u->alg < IPC_ALG_OAEP_SHA1 || u->alg > IPC_ALG_ECDH)
        return item_fail(r, 400, "unsupported_algorithm", "unsupported key transport algorithm");
    if (cek_len != 0 && cek_len != 16 && cek_len != 24 && cek_len != 32)
        return item_fail(r, 400, "bad_request", "\"key_length\" must be 16, 24 or 32");
    u->version_implied = version == 0 && !(u->flags & IPC_FLAG_FROM_RI);
    if (version == 0)
        u->ref = gs_group_current_key(g);
    else
        for (size_t i = 0; i < gs_group_key_count(g) && u->ref == NULL; i++)
            if (gs_group_key_at(g, i)->version == version)
                u->ref = gs_group_key_at(g, i);
    if (u->ref == NULL && version == 0)
        return item_fail(r, 503, "no_group_key", "the group has no current key");
    if (u->ref == NULL && (u->flags & IPC_FLAG_FROM_RI))
        return item_fail(r, 400, "unknown_recipient", "the RecipientInfo names no key version of this group");
    if (u->ref == NULL)
        return item_fail(r, 400, "unknown_key_version", "no such key version");
    r->key_version = u->ref->version;
    if (u->alg == IPC_ALG_ECDH) {
        if (u->ref->type != HSM_KEYTYPE_EC)
            return item_fail(r, 400, "bad_recipient_info", "a KeyAgreeRecipientInfo needs an EC group key");
        /* Only method F can use it: the network process sends the KARI's
         * parameters for deliver=tls alone, so this comes before their check. */
        if (deliver != IPC_DELIVER_TLS)
            return item_fail(r, 400, "unsupported", "EC group keys can only be unwrapped with deliver=tls");
        u->ecdh.group_key = u->ref->key;
        ipc_bytes(it, IPC_T_PEER_POINT, &u->ecdh.peer_point, &u->ecdh.peer_point_len);
        ipc_bytes(it, IPC_T_SHARED_INFO, &u->ecdh.shared_info, &u->ecdh.shared_info_len);
        ipc_bytes(it, IPC_T_WRAPPED, &u->ecdh.wrapped_key, &u->ecdh.wrapped_key_len);
        u->ecdh.kdf_hash = ipc_u32(it, IPC_T_KDF_SHA256, 0) ? HSM_OAEP_SHA256 : HSM_OAEP_SHA1;
        u->ecdh.kek_len = ipc_u32(it, IPC_T_KEK_LEN, 0);
        if (u->ecdh.peer_point_len == 0 || u->ecdh.wrapped_key_len == 0 ||
            (u->ecdh.kek_len != 16 && u->ecdh.kek_len != 24 && u->ecdh.kek_len != 32))
            return item_fail(r, 400, "bad_recipient_info", "malformed KeyAgreeRecipientInfo");
        /* Whatever the token checks: the network process parsed the point. */
        if (!env_ec_point_on_cert_curve(u->ref->cert, u->ecdh.peer_point, u->ecdh.peer_point_len))
            return item_fail(r, 400, "bad_recipient_info",
                             "the originator's public key is not a point of the group key's curve");
    } else {
        if (u->ref->type != HSM_KEYTYPE_RSA)
            return item_fail(r, 400, "unsupported", "a bare encrypted_key needs an RSA group key");
        if (ipc_bytes(it, IPC_T_ENC_KEY, &p, &n) != 0 || n == 0)
            return item_fail(r, 400, "bad_request", "the encrypted key is missing");
        u->in = (hsm_unwrap_input){.group_key = u->ref->key, .encrypted_key = p, .encrypted_key_len = n,
                                   .expected_len = cek_len, .rewrap = gs_group_rewrap_path(g)};
        u->in.alg = u->alg == IPC_ALG_OAEP_SHA1 ? HSM_KT_RSA_OAEP_SHA1
                    : u->alg == IPC_ALG_OAEP_SHA256 ? HSM_KT_RSA_OAEP_SHA256 : HSM_KT_RSA_PKCS1V15;
    }
    return 0;
}

#define MSG_V15_REFUSED "PKCS#1 v1.5 key transport is not allowed for this group"
#define MSG_LEN_REQUIRED                                                                                     \
    "PKCS#1 v1.5 key transport needs \"content_algorithm\" (or \"key_length\"): the content key's length is " \
    "never guessed"

/* The key and the policy of an RSA item: a version this token lacks is
 * 503 key_unavailable. A RecipientInfo does not say how long the content
 * key is: the client's "content_algorithm" (or "key_length") does. For
 * OAEP without it the token takes the key at its own length; PKCS#1 v1.5
 * needs it for the implicit-rejection substitute and is refused without
 * it, never guessed, and refused altogether where the group does not
 * allow it (503 where it does but this token lacks the rejection key yet:
 * another server can answer, a 400 would make exploders bounce the mail
 * for good). 0, or -1 with r filled. */
static int rsa_input(struct kh_worker *w, gs_group *g, struct item_in *u, struct item_res *r)
{
    if (u->ref->key == NULL &&
        !search_again(w, g, &u->ref->key, SEARCHQ_GROUP_KEY, "group key", u->ref->version))
        return key_unavailable(w, r, u->ref->version, "group key");
    u->in.group_key = u->ref->key; /* item_read's copy, NULL if found again */
    if (u->alg != IPC_ALG_PKCS1V15)
        return 0;
    const gs_store_group *gi = gs_group_info(g);
    if (gi->allow_pkcs1v15 && gs_group_reject_key(g) == NULL && gi->reject_label != NULL && gi->reject_sealed == NULL &&
        !search_again(w, g, gs_group_reject_key_slot(g), SEARCHQ_REJECT_KEY, "rejection key for group key",
                      u->ref->version))
        return key_unavailable(w, r, u->ref->version, "rejection key for group key");
    if (!gi->allow_pkcs1v15 || gs_group_reject_key(g) == NULL)
        return item_fail(r, 400, "algorithm_not_allowed", MSG_V15_REFUSED);
    if (u->cek_len == 0)
        return item_fail(r, 400, "content_algorithm_required", MSG_LEN_REQUIRED);
    u->in.reject_key = gs_group_reject_key(g);
    return 0;
}

/* An RSA ciphertext is exactly as long as the modulus (RFC 8017 7.1.2,
 * 7.2.2): any other length is refused before any token call, with the
 * same answer as a ciphertext the token refuses (the caller must not tell
 * length from padding), audited and counted alike. True when the length
 * fits or the key size is unknown. */
static bool rsa_ciphertext_len_ok(const gs_group_key_ref *ref, size_t len)
{
    EVP_PKEY *pub = ref->cert != NULL ? X509_get0_pubkey(ref->cert) : NULL;

    if (pub == NULL || EVP_PKEY_get_base_id(pub) != EVP_PKEY_RSA)
        return true;
    return len == (size_t)EVP_PKEY_get_size(pub);
}

/* The token work of one checked item; 0, or -1 with r filled. */
static int item_exec(struct kh_worker *w, gs_group *g, const struct caller *c, struct item_in *u, struct item_res *r)
{
    hsm_ctx *hsm = w->kh->hsm;
    hsm_err he = HSM_OK;
    double t0;

    if (u->alg == IPC_ALG_ECDH && u->ref->key == NULL &&
        !search_again(w, g, &u->ref->key, SEARCHQ_GROUP_KEY, "group key", u->ref->version))
        return key_unavailable(w, r, u->ref->version, "group key");
    if (u->alg == IPC_ALG_ECDH)
        u->ecdh.group_key = u->ref->key; /* item_read's copy, NULL if found again */
    if (u->alg != IPC_ALG_ECDH && rsa_input(w, g, u, r) != 0)
        return -1;
    if (u->alg == IPC_ALG_ECDH && u->deliver != IPC_DELIVER_TLS)
        return item_fail(r, 400, "unsupported", "EC group keys can only be unwrapped with deliver=tls");
    if (u->alg != IPC_ALG_ECDH && !rsa_ciphertext_len_ok(u->ref, u->in.encrypted_key_len))
        return item_fail(r, 400, "unwrap_failed", "the key could not be unwrapped");
    /* The token's time only (docs/api.md: groupsrv_unwrap_duration_seconds):
     * a search again for a key not shown yet (up to 120 ms of pauses) is
     * before this, and the secret key's below is before its own call. */
    t0 = util_monotonic_s();
    switch (u->deliver) {
    case IPC_DELIVER_TLS:
        if (u->alg == IPC_ALG_ECDH) {
            w->token_used = true;
            he = hsm_ecdh_decrypt_content_key(hsm, &u->ecdh, r->key, sizeof(r->key), &r->key_len);
            /* a key of another length than the content algorithm's is no key */
            if (he == HSM_OK && u->cek_len != 0 && r->key_len != u->cek_len) {
                OPENSSL_cleanse(r->key, sizeof(r->key));
                r->key_len = 0;
                he = HSM_ERR_DECRYPT;
            }
        } else {
            w->token_used = true;
            he = hsm_decrypt_content_key(hsm, &u->in, r->key, sizeof(r->key), &r->key_len);
        }
        metrics_unwrap_latency(util_monotonic_s() - t0);
        return he == HSM_OK ? 0 : hsm_item_fail(w, r, he, "decrypt");
    case IPC_DELIVER_RECIPIENT_KEY: {
        const unsigned char *sp[1] = {c->spki};
        size_t sl[1] = {c->spki_len};
        if (c->spki == NULL || c->spki_len == 0)
            return item_fail(r, 400, "unsupported_certificate_key", "the client certificate key is unusable");
        w->token_used = true;
        he = hsm_rewrap_to_public_keys(hsm, &u->in, HSM_OAEP_SHA1, sp, sl, 1, &r->wrapped, &r->wrapped_len);
        metrics_unwrap_latency(util_monotonic_s() - t0);
        return he == HSM_OK ? 0 : hsm_item_fail(w, r, he, "rewrap");
    }
    case IPC_DELIVER_GROUP_SECRET:
        if ((r->secret = gs_group_current_secret(g)) == NULL)
            return item_fail(r, 403, "method_not_allowed", "the group has no secret key");
        if (r->secret->key == NULL &&
            !search_again(w, g, &r->secret->key, SEARCHQ_SECRET_KEY, "secret key", r->secret->version))
            return key_unavailable(w, r, r->secret->version, "secret key");
        t0 = util_monotonic_s();
        w->token_used = true;
        he = hsm_rewrap_to_secret_key(hsm, &u->in, r->secret->key, &r->wrapped, &r->wrapped_len);
        metrics_unwrap_latency(util_monotonic_s() - t0);
        return he == HSM_OK ? 0 : hsm_item_fail(w, r, he, "rewrap-secret");
    }
    return item_fail(r, 400, "bad_request", "bad deliver method");
}

static void put_result(ipc_buf *b, const struct item_res *r)
{
    ipc_nest_begin(b, IPC_T_RESULT);
    ipc_put_u32(b, IPC_T_STATUS, r->status);
    if (r->status != 200) {
        ipc_put_str(b, IPC_T_CODE, r->code);
        ipc_put_str(b, IPC_T_MESSAGE, r->msg);
        if (r->retry)
            ipc_put_u32(b, IPC_T_RETRY, r->retry);
    } else {
        if (r->key_len > 0)
            ipc_put_bytes(b, IPC_T_KEY, r->key, r->key_len);
        if (r->wrapped != NULL)
            ipc_put_bytes(b, IPC_T_WRAPPED, r->wrapped, r->wrapped_len);
        if (r->secret != NULL) {
            ipc_put_bytes(b, IPC_T_KEK_ID, r->secret->kek_id, GS_KEK_ID_LEN);
            ipc_put_u32(b, IPC_T_SECRET_VERSION, r->secret->version);
        }
        ipc_put_u32(b, IPC_T_KEY_VERSION, r->key_version);
    }
    ipc_nest_end(b);
}

/* Counts a failed unwrap; suspends the identity (audited, ALERT) at the cap. */
static void count_failure(struct kh_job *j, struct caller *c, const char *gname)
{
    if (!ratelimit_failure(j->kh->rl, caller_rl_key(j, c, gname)))
        return;
    /* quoted: "anonymous member", or a certificate's CN, has spaces */
    log_error("ALERT identity suspended after repeated failed unwraps identity=\"%s\" group=%s",
              log_qs(c->identity), gname);
    audit_record al = {.action = "suspend", .identity = c->identity, .group = gname, .key_version = -1,
                       .outcome = "too_many_failed_unwraps"};
    if (job_audit(j, &al) != AUDIT_OK)
        log_error("audit of a suspension failed identity=\"%s\"", log_qs(c->identity));
}

/* IPC_UNWRAP: the items of one request (0 items: authorisation only).
 * The first item that fails with 500/503 fails the whole request closed,
 * wiping what earlier items recovered. */
static void op_unwrap(struct kh_worker *w, struct kh_job *j)
{
    struct caller c;
    gs_group *g;
    ipc_iter it;
    ipc_msg item;

    memset(&c, 0, sizeof(c));
    if ((g = load_group(w, j, ipc_str(&j->msg, IPC_T_GROUP))) == NULL)
        return;
    if (authorise(w, j, g, ROLES_READERS, 1, "unwrap", &c) != 0)
        goto out;
    /* (more than [server] unwrap_batch_max items: refused unqueued, handle_frame) */
    const char *gname = gs_group_info(g)->name;
    answer_begin(j, 200);
    ipc_iter_init(&it, &j->msg, IPC_T_ITEM);
    while (ipc_iter_next(&it, NULL, &item)) {
        struct item_in u;
        struct item_res r;
        unsigned retry = 0;
        memset(&r, 0, sizeof(r));
        /* An item's failure may suspend the caller: the items after it
         * get no token operation. */
        if (ratelimit_suspended(j->kh->rl, caller_rl_key(j, &c, gname), &retry)) {
            item_fail(&r, 429, "suspended", "suspended after too many failed unwraps; retry in %u s", retry);
            put_result(&j->reply, &r);
            continue;
        }
        uint32_t d = ipc_u32(&item, IPC_T_DELIVER, 0);
        if (deliver_check(g, &c, d, &r) != 0 || item_read(g, &item, d, &u, &r) != 0) {
            /* Refused before any key was used: not audited, as before. */
            if (r.status == 500 || r.status == 503) {
                answer_retry(j, r.status, r.retry, r.code, r.msg);
                goto out;
            }
            put_result(&j->reply, &r);
            continue;
        }
        int rc = item_exec(w, g, &c, &u, &r);
        if (w->gave_back) { /* nothing audited or answered: a worker runs it again */
            item_res_clear(&r);
            goto out;
        }
        if (rc == 0)
            r.status = 200;
        /* A bare key encrypted to the version before a rotate is tried
         * against the new one: say which was tried and that key_version
         * names another. The same words for every failure of such a
         * request, whatever the ciphertext: still no padding oracle. */
        if (rc != 0 && u.version_implied && strcmp(r.code, "unwrap_failed") == 0)
            (void)snprintf(r.msg, sizeof(r.msg),
                           "the key could not be unwrapped with key version %u, the current one: send "
                           "\"key_version\" for a key encrypted to another",
                           u.ref->version);
        /* Every use of a group key is audited, successful or not. */
        json_t *extra = r.secret != NULL ? json_pack("{s:I}", "secret_version", (json_int_t)r.secret->version) : NULL;
        audit_record rec = {.action = "unwrap", .identity = c.identity, .group = gname,
                            .key_version = (long)u.ref->version, .method = deliver_names[d],
                            .outcome = rc == 0 ? "ok" : r.code, .extra = extra};
        audit_err ae = job_audit(j, &rec);
        json_decref(extra);
        if (ae != AUDIT_OK) {
            item_res_clear(&r);
            answer_retry(j, 503, 5, "audit_unavailable", "the audit log cannot be written; refusing to answer");
            goto out;
        }
        if (rc != 0 && strcmp(r.code, "unwrap_failed") == 0)
            count_failure(j, &c, gname);
        if (rc != 0 && (r.status == 500 || r.status == 503)) {
            /* Token down: the whole request fails closed. */
            answer_retry(j, r.status, r.retry, r.code, r.msg);
            item_res_clear(&r);
            goto out;
        }
        put_result(&j->reply, &r);
        item_res_clear(&r);
    }
out:
    caller_clear(&c);
}

/* ---- rewrap (the exploder) ----------------------------------------------------------- */

static int cert_spki(X509 *cert, unsigned char **der, size_t *len)
{
    int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), der);
    if (n <= 0) {
        *der = NULL;
        return -1;
    }
    *len = (size_t)n;
    return 0;
}

/* Every current member or admin with an RSA certificate on record gets a
 * KeyTransRecipientInfo, named by their address in the answer: the content
 * key is unwrapped once inside the token and wrapped to each of them
 * there, with what their client decrypts (their own wrap, else the
 * group's: PKCS#1 v1.5 unless set to OAEP). */
static int rewrap_members(struct kh_worker *w, struct kh_job *j, gs_group *g, struct item_in *u, struct item_res *r,
                          size_t *recipients)
{
    gs_store_member *members = NULL;
    size_t nmembers = 0, n = 0;
    X509 **certs = NULL;
    unsigned char **spki = NULL, **outs = NULL;
    size_t *spki_len = NULL, *out_lens = NULL;
    hsm_kt_alg *wraps = NULL;
    const char **emails = NULL;
    int rc = -1;

    *recipients = 0;
    gs_err ge = gs_store_member_list(w->store, gs_group_id(g), &members, &nmembers);
    if (ge != GS_OK) {
        answer_gs_error(j, ge, "members");
        return -2;
    }
    if ((certs = calloc(nmembers + 1, sizeof(*certs))) == NULL || (spki = calloc(nmembers + 1, sizeof(*spki))) == NULL ||
        (spki_len = calloc(nmembers + 1, sizeof(*spki_len))) == NULL ||
        (outs = calloc(nmembers + 1, sizeof(*outs))) == NULL ||
        (out_lens = calloc(nmembers + 1, sizeof(*out_lens))) == NULL ||
        (wraps = calloc(nmembers + 1, sizeof(*wraps))) == NULL || (emails = calloc(nmembers + 1, sizeof(*emails))) == NULL) {
        item_fail(r, 500, "internal", "out of memory");
        goto out;
    }
    gs_wrap group_wrap = gs_group_info(g)->member_wrap;
    /* Readers with an RSA certificate on record; exploders never get keys. */
    for (size_t i = 0; i < nmembers; i++) {
        X509 *x = NULL;
        if (members[i].role == GS_ROLE_EXPLODER || members[i].cert_pem == NULL)
            continue;
        if (gs_cert_parse((const unsigned char *)members[i].cert_pem, strlen(members[i].cert_pem), &x) != GS_OK)
            continue;
        /* An expired certificate no longer vouches for the key, and S/MIME
         * senders do not encrypt to one: no copy, as without a certificate. */
        if (gs_cert_check_valid_now(x, "certificate") != GS_OK) {
            log_info(
                "member-certs: no copy for a member whose certificate is not valid now group=%s member=%s "
                "reason=\"%s\"",
                gs_group_info(g)->name, members[i].email, log_qs(gs_err_detail()));
            X509_free(x);
            continue;
        }
        if (EVP_PKEY_get_base_id(X509_get0_pubkey(x)) != EVP_PKEY_RSA || cert_spki(x, &spki[n], &spki_len[n]) != 0) {
            X509_free(x);
            continue;
        }
        gs_wrap wr = members[i].wrap != GS_WRAP_DEFAULT ? members[i].wrap : group_wrap;
        wraps[n] = wr == GS_WRAP_OAEP ? HSM_KT_RSA_OAEP_SHA1 : HSM_KT_RSA_PKCS1V15;
        emails[n] = members[i].email;
        certs[n++] = x;
    }
    /* The same order as an unwrap: a key not here first, then the input. */
    if (rsa_input(w, g, u, r) != 0)
        goto out;
    answer_begin(j, 200);
    ipc_put_u32(&j->reply, IPC_T_KEY_VERSION, u->ref->version);
    if (n > 0) {
        double t0 = util_monotonic_s();
        w->token_used = true;
        hsm_err he = hsm_rewrap_to_recipients(w->kh->hsm, &u->in, wraps, (const unsigned char *const *)spki, spki_len,
                                              n, outs, out_lens);
        metrics_unwrap_latency(util_monotonic_s() - t0);
        if (he != HSM_OK) {
            hsm_item_fail(w, r, he, "rewrap-members");
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            unsigned char *der = NULL;
            size_t dl = 0;
            env_kt_alg ka = wraps[i] == HSM_KT_RSA_PKCS1V15 ? ENV_KT_RSA_PKCS1V15 : ENV_KT_RSA_OAEP_SHA1;
            if (env_ktri_build(certs[i], ka, outs[i], out_lens[i], &der, &dl) != ENV_OK) {
                item_fail(r, 500, "internal", "could not build a RecipientInfo");
                goto out;
            }
            ipc_put_bytes(&j->reply, IPC_T_DER, der, dl);
            ipc_put_str(&j->reply, IPC_T_EMAIL, emails[i]);
            free(der);
        }
    }
    *recipients = n;
    rc = 0;
out:
    for (size_t i = 0; i < n; i++) {
        X509_free(certs[i]);
        free(spki[i]);
        free(outs ? outs[i] : NULL);
    }
    free(certs);
    free(spki);
    free(spki_len);
    free(outs);
    free(out_lens);
    free(wraps);
    free(emails);
    gs_store_member_list_free(members, nmembers);
    return rc;
}

/* IPC_REWRAP: to the group secret key (a KEKRecipientInfo's pieces), or
 * to every member (their KeyTransRecipientInfos, DER). */
static void op_rewrap(struct kh_worker *w, struct kh_job *j)
{
    struct caller c;
    gs_group *g;
    ipc_iter it;
    ipc_msg item;
    struct item_in u;
    struct item_res r;
    uint32_t to = ipc_u32(&j->msg, IPC_T_TO, 0);
    size_t recipients = 1;
    int rc;

    memset(&c, 0, sizeof(c));
    memset(&u, 0, sizeof(u));
    memset(&r, 0, sizeof(r));
    if ((g = load_group(w, j, ipc_str(&j->msg, IPC_T_GROUP))) == NULL)
        return;
    if (authorise(w, j, g, ROLES_EXPLODER, 0, "rewrap", &c) != 0)
        goto out;
    if (to != IPC_TO_GROUP_SECRET && to != IPC_TO_MEMBERS) {
        answer_error(j, 400, "bad_request", "\"to\" must be group-secret or members");
        goto out;
    }
    if (to == IPC_TO_GROUP_SECRET && !(gs_group_info(g)->methods & GS_METHOD_GROUP_SECRET)) {
        answer_error(j, 403, "method_not_allowed", "the group does not use a group secret key");
        goto out;
    }
    ipc_iter_init(&it, &j->msg, IPC_T_ITEM);
    if (!ipc_iter_next(&it, NULL, &item)) {
        answer_error(j, 400, "bad_request", "\"recipient_info\" is required");
        goto out;
    }
    /* A KeyAgreeRecipientInfo is refused before item_read, which would
     * refuse it for the deliver with another reason. */
    if (ipc_u32(&item, IPC_T_ALG, 0) == IPC_ALG_ECDH) {
        answer_error(j, 400, "unsupported", "EC group keys cannot be re-wrapped");
        goto out;
    }
    /* The exploder never gets a key: its deliver rights do not matter. */
    uint32_t d = to == IPC_TO_GROUP_SECRET ? IPC_DELIVER_GROUP_SECRET : IPC_DELIVER_TLS;
    if (item_read(g, &item, d, &u, &r) != 0) {
        answer_retry(j, r.status, r.retry, r.code, r.msg);
        goto out;
    }
    memset(&r, 0, sizeof(r));
    /* item_read's version, which the answer names (put_result): wiped
     * with the rest, the group-secret answer said key_version 0. */
    r.key_version = u.ref->version;
    if (to == IPC_TO_GROUP_SECRET) {
        rc = item_exec(w, g, &c, &u, &r);
        if (rc == 0) {
            r.status = 200;
            answer_begin(j, 200);
            put_result(&j->reply, &r);
        }
    } else if (u.alg != IPC_ALG_ECDH && !rsa_ciphertext_len_ok(u.ref, u.in.encrypted_key_len)) {
        rc = item_fail(&r, 400, "unwrap_failed", "the key could not be unwrapped");
    } else {
        rc = rewrap_members(w, j, g, &u, &r, &recipients);
        if (rc == -2)
            goto out; /* answered, nothing used */
    }
    json_t *extra = json_pack("{s:I}", "recipients", (json_int_t)recipients);
    audit_record rec = {.action = "rewrap", .identity = c.identity, .group = gs_group_info(g)->name,
                        .key_version = (long)u.ref->version, .method = to == IPC_TO_MEMBERS ? "members" : "group-secret",
                        .outcome = rc == 0 ? "ok" : r.code, .extra = extra};
    int arc = job_audit_or_fail(j, &rec);
    json_decref(extra);
    if (arc == 0 && rc != 0)
        answer_retry(j, r.status, r.retry, r.code, r.msg);
out:
    item_res_clear(&r);
    caller_clear(&c);
}

/* ---- secret keys ------------------------------------------------------------------------ */

static void op_secret_keys(struct kh_worker *w, struct kh_job *j)
{
    struct caller c;
    gs_group *g;
    const char *outcome = "ok";
    hsm_err he = HSM_OK;
    uint32_t status = 200;

    memset(&c, 0, sizeof(c));
    if ((g = load_group(w, j, ipc_str(&j->msg, IPC_T_GROUP))) == NULL)
        return;
    if (authorise(w, j, g, ROLES_READERS, 0, "secret-keys", &c) != 0)
        goto out;
    if (!(gs_group_info(g)->methods & GS_METHOD_GROUP_SECRET)) {
        answer_error(j, 403, "method_not_allowed", "the group does not use a group secret key");
        goto out;
    }
    if (c.spki == NULL || c.spki_len == 0) {
        answer_error(j, 400, "unsupported_certificate_key", "secret keys are wrapped to RSA certificate keys only");
        goto out;
    }
    answer_begin(j, 200);
    double token_s = 0; /* the token's time only, not a search again's pauses */
    for (size_t i = 0; i < gs_group_secret_count(g); i++) {
        const gs_group_secret_ref *s = gs_group_secret_at(g, i);
        unsigned char *wk = NULL;
        size_t wl = 0;
        if (s->key == NULL && !search_again(w, g, &s->key, SEARCHQ_SECRET_KEY, "secret key", s->version)) {
            /* a version this instance's token lacks (the cache reloads the
             * group next time); a token without its objects is down */
            gcache_mark_stale(w->gc);
            he = HSM_ERR_KEY_NOT_FOUND;
            outcome = token_unavailable(w->kh) == HSM_OK ? "key_unavailable" : "token_error";
            break;
        }
        double t0 = util_monotonic_s();
        w->token_used = true;
        he = hsm_wrap_secret_key_to_public(w->kh->hsm, s->key, HSM_OAEP_SHA1, c.spki, c.spki_len, &wk, &wl);
        token_s += util_monotonic_s() - t0;
        if (he != HSM_OK) {
            outcome = "token_error";
            break;
        }
        ipc_nest_begin(&j->reply, IPC_T_SECRET);
        ipc_put_u32(&j->reply, IPC_T_SECRET_VERSION, s->version);
        ipc_put_bytes(&j->reply, IPC_T_KEK_ID, s->kek_id, GS_KEK_ID_LEN);
        ipc_put_bytes(&j->reply, IPC_T_WRAPPED, wk, wl);
        ipc_nest_end(&j->reply);
        free(wk);
        if (j->reply.bad) {
            status = 500;
            outcome = "internal";
            break;
        }
    }
    metrics_unwrap_latency(token_s);
    audit_record rec = {.action = "secret-keys", .identity = c.identity, .group = gs_group_info(g)->name,
                        .key_version = -1, .method = "recipient-key", .outcome = outcome};
    if (job_audit_or_fail(j, &rec) != 0)
        goto out;
    if (he != HSM_OK && strcmp(outcome, "key_unavailable") == 0) {
        answer_retry(j, 503, 5, "key_unavailable", "a secret key version is not on this server's token");
    } else if (he != HSM_OK) {
        metrics_token_error();
        gcache_mark_stale(w->gc);
        log_error("token operation failed op=wrap-secret err=\"%s\" detail=\"%s\"", hsm_strerror(he),
                  log_qs(hsm_last_error_detail()));
        if (he == HSM_ERR_PUBLIC_KEY)
            answer_error(j, 400, "unsupported_certificate_key", "secret keys are wrapped to RSA certificate keys only");
        else if (hsm_err_unavailable(he)) {
            (void)token_unavailable(w->kh);
            answer_token_unavailable(j);
        }
        else
            answer_error(j, 500, "internal", "token operation failed");
    } else if (status != 200) {
        answer_error(j, 500, "internal", "out of memory");
    }
out:
    caller_clear(&c);
}

/* ---- membership certificates (the certificate server) ------------------------------------ */

/* IPC_CERTIFY. Without a public key it only authorises (the network
 * process then answers the CSR's own error). Audits who and when, never
 * which certificate. */
static void op_certify(struct kh_worker *w, struct kh_job *j)
{
    struct caller c;
    const char *group = ipc_str(&j->msg, IPC_T_GROUP);
    gs_group *g;
    const unsigned char *p;
    size_t n;
    EVP_PKEY *pk = NULL;
    X509 *cert = NULL;
    unsigned char *der = NULL;
    gs_err e;

    memset(&c, 0, sizeof(c));
    if (caller_read(j, &c, "certify", group) != 0)
        return;
    if (c.anonymous) {
        answer_error(j, 403, "forbidden", "membership certificates are issued to identified members only");
        return;
    }
    if ((g = load_group(w, j, group)) == NULL)
        return;
    e = gcache_member(w->gc, w->store, gs_group_id(g), c.identity, &c.member);
    if (e == GS_ERR_NOT_FOUND) {
        audit_record rec = {.action = "certify", .identity = c.identity, .group = group, .key_version = -1,
                            .outcome = "not_a_member"};
        if (job_audit_or_fail(j, &rec) == 0)
            answer_error(j, 403, "not_a_member", "not a member of this group");
        goto out;
    }
    if (e != GS_OK) {
        answer_gs_error(j, e, "member");
        goto out;
    }
    /* A member recorded with a certificate must present that key, not
     * another certificate with the same address. */
    if (c.member->cert_pem != NULL && !gcache_spki_matches_pem(w->gc, c.spki, c.spki_len, c.member->cert_pem)) {
        audit_record rec = {.action = "certify", .identity = c.identity, .group = group, .key_version = -1,
                            .outcome = "certificate_mismatch"};
        if (job_audit_or_fail(j, &rec) == 0)
            answer_error(j, 403, "certificate_mismatch", "this certificate is not the one recorded for the member");
        goto out;
    }
    /* The list's exploder is a member record, refused by its role as on
     * every other endpoint (authorise): it was answered and audited as
     * no member at all, which an audit reader takes for a stranger. */
    if (!(ROLES_READERS & (1u << c.member->role))) {
        audit_record rec = {.action = "certify", .identity = c.identity, .group = group, .key_version = -1,
                            .outcome = "forbidden_role"};
        if (job_audit_or_fail(j, &rec) == 0)
            answer_error(j, 403, "forbidden", "the role '%s' may not do this", gs_role_name(c.member->role));
        goto out;
    }
    if (!(gs_group_info(g)->methods & GS_METHOD_MEMBERSHIP_CERT)) {
        answer_error(j, 403, "method_not_allowed", "the group does not use membership certificates");
        goto out;
    }
    if (w->kh->ca == NULL) {
        answer_retry(j, 503, 60, "no_ca", "the local CA is not initialised");
        goto out;
    }
    if (rate_limit(j, &c, group) != 0)
        goto out;
    if (ipc_bytes(&j->msg, IPC_T_CSR_SPKI, &p, &n) != 0) {
        answer_begin(j, 204); /* authorised; nothing issued */
        goto out;
    }
    /* The only untrusted structure this process parses besides frames: a
     * public key of at most 4 KiB. */
    const unsigned char *q = p;
    if ((pk = d2i_PUBKEY(NULL, &q, (long)n)) == NULL || q != p + n) {
        ERR_clear_error();
        answer_error(j, 400, "bad_csr", "the CSR's public key does not parse");
        goto out;
    }
    unsigned lifetime = w->kh->cfg->certsrv.lifetime ? w->kh->cfg->certsrv.lifetime : 3600;
    e = gs_ca_issue_membership_key(w->kh->ca, w->kh->hsm, pk, group, (long)lifetime, &cert);
    audit_record rec = {.action = "certify", .identity = c.identity, .group = group, .key_version = -1,
                        .method = "membership-cert", .outcome = e == GS_OK ? "ok" : gs_strerror(e)};
    if (job_audit_or_fail(j, &rec) != 0)
        goto out;
    if (e == GS_ERR_CERT) {
        answer_error(j, 400, "bad_csr", "%s", gs_err_detail());
        goto out;
    }
    if (e != GS_OK) {
        answer_gs_error(j, e, "certificate");
        goto out;
    }
    int dl = i2d_X509(cert, &der);
    if (dl <= 0) {
        answer_error(j, 500, "internal", "could not encode the certificate");
        goto out;
    }
    answer_begin(j, 200);
    ipc_put_bytes(&j->reply, IPC_T_CERT, der, (size_t)dl);
out:
    OPENSSL_free(der);
    X509_free(cert);
    EVP_PKEY_free(pk);
    caller_clear(&c);
}

/* ---- the TLS key on the token ------------------------------------------------------------- */

/* Is the token key fit to be the TLS key? NULL if so, else why not. */
static const char *tls_key_problem(const hsm_key_info *ki)
{
    if (ki->type == HSM_KEYTYPE_RSA)
        return "is an RSA key: TLS 1.3 needs RSA-PSS signatures, which OpenSSL 3.0 can only delegate "
               "as raw RSA private operations, and groupsrv never offers raw RSA on the token; "
               "make an EC key (P-256 or P-384) for TLS instead (groupsrv tls init --key ec:p256)";
    if (ki->type != HSM_KEYTYPE_EC)
        return "is not an EC key (the TLS key on the token must be EC P-256 or P-384)";
    if (ki->bits != 256 && ki->bits != 384)
        return "is on an unsupported curve (the TLS key on the token must be EC P-256 or P-384)";
    if (!ki->sign)
        return "lacks CKA_SIGN";
    if (!ki->sensitive || ki->extractable || ki->value_readable)
        return "is not sensitive and non-extractable (CKA_SENSITIVE true, CKA_EXTRACTABLE false required)";
    return NULL;
}

/* Is key the local CA's key (the same public key)? The network process
 * gets any 20 to 64 bytes signed with the TLS key (the key holder cannot
 * tell a handshake's digest from another), which with the CA's key would
 * issue certificates. 1 if it is, 0 if not, -1 when a public key
 * cannot be read. */
static int tls_key_is_ca(struct kh *kh, hsm_key *key)
{
    unsigned char *tls_spki = NULL;
    size_t tls_len = 0;
    int same = -1;

    if (kh->ca == NULL)
        return 0;
    if (hsm_key_export_public(kh->hsm, key, &tls_spki, &tls_len) != HSM_OK)
        goto out;
    /* As keys (EVP_PKEY_eq), not as bytes: a CA certificate made elsewhere
     * may encode the same key otherwise (a compressed EC point). */
    same = gs_cert_matches_spki(gs_ca_cert(kh->ca), tls_spki, tls_len) ? 1 : 0;
out:
    free(tls_spki);
    return same;
}

int kh_tls_key_load(struct kh *kh, char *errbuf, size_t errlen)
{
    const char *uri = kh->cfg->tls.key;
    hsm_key *key = NULL;
    hsm_key_info ki;
    const char *why;
    hsm_err he;

    errbuf[0] = '\0';
    if (uri == NULL || strncmp(uri, "pkcs11:", 7) != 0)
        return 0;
    if ((he = hsm_key_find(kh->hsm, uri, HSM_CLASS_PRIVATE, &key)) != HSM_OK) {
        snprintf(errbuf, errlen, "[tls] key %s: %s%s%s", uri, hsm_strerror(he), hsm_last_error_detail()[0] ? ": " : "",
                 hsm_last_error_detail());
        return -1;
    }
    if ((he = hsm_key_get_info(kh->hsm, key, &ki)) != HSM_OK) {
        snprintf(errbuf, errlen, "[tls] key %s: reading its attributes: %s", uri, hsm_strerror(he));
        hsm_key_free(key);
        return -1;
    }
    if ((why = tls_key_problem(&ki)) != NULL) {
        snprintf(errbuf, errlen, "[tls] key %s %s", uri, why);
        hsm_key_free(key);
        return -2;
    }
    int is_ca = tls_key_is_ca(kh, key);
    if (is_ca != 0) {
        if (is_ca < 0)
            snprintf(errbuf, errlen, "[tls] key %s: cannot compare its public key with the local CA's", uri);
        else
            snprintf(errbuf, errlen,
                     "[tls] key %s is the local CA's key: the network process may have any digest signed with "
                     "the TLS key, so it must be a key of its own (groupsrv tls init makes one)",
                     uri);
        hsm_key_free(key);
        return is_ca < 0 ? -1 : -2;
    }
    if (!ki.always_sensitive || !ki.never_extractable)
        log_warn("the TLS key on the token was once readable or extractable (imported?) uri=\"%s\"", log_qs(uri));
    log_info("TLS key on the token uri=\"%s\" bits=%u", log_qs(uri), ki.bits);
    /* Swapped under the write lock: no signature is using the old one. */
    pthread_rwlock_wrlock(&kh->tls_lock);
    hsm_key *old = kh->tls_key;
    kh->tls_key = key;
    pthread_rwlock_unlock(&kh->tls_lock);
    hsm_key_free(old);
    return 0;
}

/* IPC_SIGN: one TLS handshake signature over a digest the network
 * process made; only with the [tls] key, only ECDSA over a digest. */
static void op_sign(struct kh_worker *w, struct kh_job *j)
{
    const unsigned char *d;
    size_t dl;
    unsigned char *sig = NULL;
    size_t sl = 0;

    ipc_bytes(&j->msg, IPC_T_DIGEST, &d, &dl);
    if (dl < 20 || dl > 64) {
        answer_error(j, 400, "bad_request", "a digest is 20 to 64 bytes");
        return;
    }
    pthread_rwlock_rdlock(&w->kh->tls_lock);
    hsm_key *key = w->kh->tls_key;
    w->token_used = key != NULL;
    hsm_err he = key != NULL ? hsm_sign(w->kh->hsm, key, HSM_SIG_ECDSA_DIGEST, d, dl, &sig, &sl) : HSM_OK;
    pthread_rwlock_unlock(&w->kh->tls_lock);
    if (key == NULL) {
        answer_error(j, 404, "not_found", "no TLS key on the token");
        return;
    }
    if (he != HSM_OK) {
        metrics_token_error();
        log_error("signature on the token failed error=\"%s\" detail=\"%s\"", hsm_strerror(he),
                  log_qs(hsm_last_error_detail()));
        answer_token_unavailable(j);
        return;
    }
    answer_begin(j, 200);
    ipc_put_bytes(&j->reply, IPC_T_SIG, sig, sl);
    free(sig);
}

/* At a reload (SIGHUP): the local CA as the database has it now, when its
 * certificate changed since start (`ca renew-cert`) or it was made since
 * (`ca init`). The one it replaces stays allocated (kh.h). A CA that does
 * not load keeps the current one, with a warning. */
static void ca_reload(struct kh *kh, gs_store *st)
{
    gs_ca *fresh = NULL, *cur;

    if (gs_ca_load(st, kh->hsm, &fresh) != GS_OK) {
        if (atomic_load(&kh->ca) != NULL)
            log_warn("the local CA is not taken up again reason=\"%s\"", gs_err_detail());
        return;
    }
    pthread_rwlock_wrlock(&kh->tls_lock);
    cur = atomic_load(&kh->ca);
    if (cur != NULL && (X509_cmp(gs_ca_cert(cur), gs_ca_cert(fresh)) == 0 || kh->n_ca_kept == KH_CA_KEPT)) {
        pthread_rwlock_unlock(&kh->tls_lock);
        if (X509_cmp(gs_ca_cert(cur), gs_ca_cert(fresh)) != 0)
            log_warn("the renewed local CA certificate is taken up at the next restart (renewed %u times since)",
                     KH_CA_KEPT);
        gs_ca_free(fresh);
        return;
    }
    if (cur != NULL)
        kh->ca_kept[kh->n_ca_kept++] = cur;
    atomic_store(&kh->ca, fresh);
    pthread_rwlock_unlock(&kh->tls_lock);
    char until[64];
    util_cert_not_after_text(gs_ca_cert(fresh), until, sizeof(until));
    log_info("local CA certificate taken up not_after=\"%s\"", until);
}

/* IPC_INFO: what the network process needs for its TLS set-up. */
static void op_info(struct kh_worker *w, struct kh_job *j)
{
    unsigned char *der = NULL, *spki = NULL;
    size_t spki_len = 0;
    char err[512];

    if (ipc_u32(&j->msg, IPC_T_FLAGS, 0) & IPC_FLAG_RELOAD) {
        int rc = kh_tls_key_load(w->kh, err, sizeof(err));
        if (rc == -2) {
            /* Refused: the same key is refused at every try, so not 503
             * (the network process tries a reload answered 503 again;
             * this answer never reaches a client). */
            atomic_store(&w->kh->tls_reload_failing, false);
            log_error("TLS key reload refused reason=\"%s\"", err);
            answer_error(j, 500, "internal", "%s", err);
            return;
        }
        if (rc != 0) {
            /* The token may show it later (away, logged out, a network
             * HSM's member not synchronised yet): 503 with Retry-After,
             * and the network process tries again after it; said once. */
            if (!atomic_exchange(&w->kh->tls_reload_failing, true))
                log_error("TLS key reload failed reason=\"%s\"", err);
            answer_error(j, 503, "token_unavailable", "%s", err);
            return;
        }
        if (atomic_exchange(&w->kh->tls_reload_failing, false))
            log_info("TLS key found again for the reload");
        ca_reload(w->kh, w->store);
    }
    answer_begin(j, 200);
    gs_ca *ca = atomic_load(&w->kh->ca);
    if (ca != NULL) {
        int n = i2d_X509(gs_ca_cert(ca), &der);
        if (n > 0)
            ipc_put_bytes(&j->reply, IPC_T_CA_CERT, der, (size_t)n);
    }
    pthread_rwlock_rdlock(&w->kh->tls_lock);
    hsm_err he = w->kh->tls_key != NULL ? hsm_key_export_public(w->kh->hsm, w->kh->tls_key, &spki, &spki_len) : HSM_OK;
    pthread_rwlock_unlock(&w->kh->tls_lock);
    if (spki != NULL || he != HSM_OK) {
        if (he != HSM_OK) {
            answer_error(j, 503, "token_unavailable", "reading the TLS key's public key: %s", hsm_strerror(he));
            goto out;
        }
        ipc_put_bytes(&j->reply, IPC_T_SPKI, spki, spki_len);
    }
out:
    OPENSSL_free(der);
    free(spki);
}

/* ---- discovery, health, metrics ------------------------------------------------------------ */

/* IPC_VIEW: a group's public data, or "not modified" for the caller's
 * generation. */
/* Which path the group's keys take, and what it gave up to its token
 * (groupsrv/policy.h), as discovery's "key_policy": {"rewrap": "token"|
 * "software", "secret_keys": "token"|"token-aes-ecb"|"sealed"|"none",
 * "rejection_key": "token"|"sealed"|"none", "weakenings": [names]}.
 * Compact JSON text in *out (caller frees), or NULL. */
static char *key_policy_text(const gs_group *g)
{
    const gs_store_group *gi = gs_group_info(g);
    const gs_policy *p = gs_group_policy(g);
    const gs_group_key_ref *cur = gs_group_current_key(g);
    const char *names[8];
    size_t n = gs_policy_weakenings(p, gi->methods, gi->allow_pkcs1v15, names, GS_ARRAY_LEN(names));
    json_t *w = json_array(), *o;
    char *text;

    /* The current key version's own weakenings follow the group's. */
    if (cur != NULL && (cur->missing & HSM_PROT_ALLOWED_MECHANISMS) && n < GS_ARRAY_LEN(names))
        names[n++] = "no-allowed-mechanisms";
    if (cur != NULL && (cur->missing & HSM_PROT_UNWRAP_TEMPLATE) && n < GS_ARRAY_LEN(names))
        names[n++] = "no-unwrap-template";
    for (size_t i = 0; w != NULL && i < n; i++)
        json_array_append_new(w, json_string(names[i]));
    o = json_pack("{s:s,s:s,s:s,s:o?}", "rewrap", gs_rewrap_name(p->rewrap), "secret_keys",
                  gs_policy_secrets_shown(p, gi->methods), "rejection_key",
                  gs_policy_reject_shown(p, gi->allow_pkcs1v15), "weakenings", w);
    text = o != NULL ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    return text;
}

static void op_view(struct kh_worker *w, struct kh_job *j, uint64_t gen)
{
    gs_group *g;

    if (ipc_has(&j->msg, IPC_T_GEN) && ipc_u64(&j->msg, IPC_T_GEN, 0) == gen) {
        /* Still loadable now (a group deleted meanwhile would be 404). */
        if (load_group(w, j, ipc_str(&j->msg, IPC_T_GROUP)) == NULL)
            return;
        answer_begin(j, 200);
        ipc_put_u32(&j->reply, IPC_T_FLAGS, IPC_FLAG_NOT_MODIFIED);
        return;
    }
    if ((g = load_group(w, j, ipc_str(&j->msg, IPC_T_GROUP))) == NULL)
        return;
    const gs_store_group *gi = gs_group_info(g);
    const gs_group_key_ref *cur = gs_group_current_key(g);
    X509 *cacert = w->kh->ca ? gs_ca_cert(w->kh->ca) : NULL;
    answer_begin(j, 200);
    /* Discovery leaves group-secret out where this module cannot do it
     * (clients and exploders pick their method from that list); the group
     * keeps it, and a request for it is still answered 400
     * unsupported_algorithm, saying why. */
    bool no_wrap = (gi->methods & GS_METHOD_GROUP_SECRET) && !gcache_secret_wraps(w->kh->hsm, g);
    ipc_put_u32(&j->reply, IPC_T_FLAGS,
                (gi->allow_pkcs1v15 ? IPC_FLAG_PKCS1V15 : 0) | (no_wrap ? IPC_FLAG_SECRET_NO_WRAP : 0));
    ipc_put_str(&j->reply, IPC_T_NAME, gi->name);
    ipc_put_str(&j->reply, IPC_T_ADDRESS, gi->address ? gi->address : "");
    ipc_put_u32(&j->reply, IPC_T_METHODS, gi->methods);
    for (size_t i = 0; i < gs_group_key_count(g); i++) {
        const gs_group_key_ref *k = gs_group_key_at(g, i);
        unsigned char *der = NULL;
        int n = i2d_X509(k->cert, &der);
        if (n <= 0) {
            answer_error(j, 500, "internal", "could not encode a group certificate");
            return;
        }
        ipc_nest_begin(&j->reply, IPC_T_KEYREF);
        ipc_put_u32(&j->reply, IPC_T_KEY_VERSION, k->version);
        ipc_put_u32(&j->reply, IPC_T_FLAGS,
                    (k->current ? IPC_FLAG_CURRENT : 0) | (k->type == HSM_KEYTYPE_EC ? IPC_FLAG_EC : 0));
        ipc_put_bytes(&j->reply, IPC_T_CERT, der, (size_t)n);
        OPENSSL_free(der);
        for (int f = 0; f < (k->former ? sk_X509_num(k->former) : 0); f++) {
            der = NULL;
            if ((n = i2d_X509(sk_X509_value(k->former, f), &der)) <= 0) {
                answer_error(j, 500, "internal", "could not encode a group certificate");
                return;
            }
            ipc_put_bytes(&j->reply, IPC_T_FORMER_CERT, der, (size_t)n);
            OPENSSL_free(der);
        }
        ipc_nest_end(&j->reply);
    }
    char *policy = key_policy_text(g);
    if (policy == NULL || strlen(policy) >= 512) {
        free(policy);
        answer_error(j, 500, "internal", "could not encode the group's key policy");
        return;
    }
    ipc_put_str(&j->reply, IPC_T_KEY_POLICY, policy);
    free(policy);
    ipc_put_u32(&j->reply, IPC_T_WRAP, (uint32_t)gi->member_wrap);
    /* For discovery only (a probe is a private-key operation): probed on
     * the token once per cached load; left out when the token cannot say
     * now (clients then treat it as not said). */
    unsigned kts = ipc_u32(&j->msg, IPC_T_FLAGS, 0) & IPC_FLAG_KEY_TRANSPORTS
                       ? gcache_key_transports(w->gc, w->kh->hsm, g)
                       : 0;
    if (kts != 0)
        ipc_put_u32(&j->reply, IPC_T_KEY_TRANSPORTS, kts);
    const gs_group_secret_ref *sec = gs_group_current_secret(g);
    if (sec != NULL) {
        ipc_put_u32(&j->reply, IPC_T_SECRET_VERSION, sec->version);
        ipc_put_bytes(&j->reply, IPC_T_KEK_ID, sec->kek_id, GS_KEK_ID_LEN);
    }
    /* The chain GET /certificate serves: the CA when it issued the current one. */
    if (cur != NULL && cacert != NULL && X509_check_issued(cacert, cur->cert) == X509_V_OK) {
        unsigned char *der = NULL;
        int n = i2d_X509(cacert, &der);
        if (n > 0)
            ipc_put_bytes(&j->reply, IPC_T_CA_CERT, der, (size_t)n);
        OPENSSL_free(der);
    }
}

/* The token answers and still holds its objects. A token whose objects
 * vanished (a SoftHSM token directory moved away) answers a ping but fails
 * every key request; the local CA's private key stands for the objects
 * (group keys are made beside it). Without a CA only the ping. */
static void op_health(struct kh_worker *w, struct kh_job *j)
{
    hsm_err he;
    audit_err ae;
    uint64_t stamp = 0;
    static atomic_int moved_logged;  /* the database's move was logged */
    static atomic_int unread_logged; /* a failed read check was logged */
    char q[320];

    /* One token failure per check that ran, not per probe answered from
     * it: anyone may probe, and a load balancer's probes during an outage
     * must not count as many token errors as there were probes. */
    int checked = kh_health(w->kh, &he, &ae);
    /* A real query: with PostgreSQL the database is another machine, and a
     * load balancer must take this server out while it cannot reach it. */
    gs_err de = gs_store_change_stamp(w->store, &stamp);
    /* A SQLite file moved or replaced under the server (a restore without
     * stopping it) still answers here, but is no longer what the admin
     * commands change: a member they remove would still be served. */
    int checked_files = de == GS_OK && (de = gs_store_check_location(w->store)) != GS_OK;
    gs_db_cause cause = checked_files ? gs_err_db_cause() : GS_DB_CAUSE_OTHER;
    /* Only the files' check says moved: the page read's other failures
     * (a lock held past the busy timeout, EIO, out of memory) were called
     * "moved or replaced" with a log line to restart, which sent an
     * operator to restart a server whose file had not moved. */
    int moved = checked_files && cause == GS_DB_CAUSE_MOVED;
    int unread = checked_files && !moved;
    if (de == GS_ERR_DB && cause == GS_DB_CAUSE_DAMAGED) {
        note_db_damaged("health");
        unread = 0;
    }
    int damaged = atomic_load(&db_damaged);
    int db_ok = de == GS_OK && !damaged;

    if (moved && atomic_exchange(&moved_logged, 1) == 0)
        log_error("the database is not at its path any more: restart the server to open the one there "
                  "detail=\"%s\"",
                  log_quote(q, sizeof(q), gs_err_detail()));
    else if (unread && atomic_exchange(&unread_logged, 1) == 0)
        log_error("the database could not be read for the health check (it is answered 503 until it can) "
                  "detail=\"%s\"",
                  log_quote(q, sizeof(q), gs_err_detail()));
    if (db_ok) {
        atomic_store(&moved_logged, 0);
        atomic_store(&unread_logged, 0);
    }

    if (he != HSM_OK && checked)
        metrics_token_error();
    answer_begin(j, he == HSM_OK && ae == AUDIT_OK && db_ok ? 200 : 503);
    ipc_put_str(&j->reply, IPC_T_TOKEN_STATE, he == HSM_OK ? "ok" : hsm_strerror(he));
    ipc_put_str(&j->reply, IPC_T_AUDIT_STATE, ae == AUDIT_OK ? "ok" : audit_strerror(ae));
    ipc_put_str(&j->reply, IPC_T_DB_STATE,
                db_ok     ? "ok"
                : damaged ? "damaged (malformed): restore it and restart the server"
                : moved   ? "not the file at its path (moved or replaced)"
                : unread && cause == GS_DB_CAUSE_LOCKED ? "locked by another process"
                : unread  ? "not readable (see the log)"
                          : "unavailable");
    if (he != HSM_OK || ae != AUDIT_OK || !db_ok)
        ipc_put_str(&j->reply, IPC_T_CODE,
                    he != HSM_OK                   ? "token_unavailable"
                    : ae != AUDIT_OK               ? "audit_unavailable"
                    : de == GS_ERR_DB_UNAVAILABLE && !damaged ? "db_unavailable"
                                                              : "store_unavailable");
}

static void op_stats(struct kh_worker *w, struct kh_job *j)
{
    const char *policy = w->kh->cfg->server.metrics ? w->kh->cfg->server.metrics : "admin";
    struct caller c;
    metrics_token t;
    hsm_token_info ti;
    unsigned char packed[METRICS_TOKEN_WORDS * 8];

    memset(&c, 0, sizeof(c));
    if (strcmp(policy, "off") == 0) {
        answer_error(j, 404, "not_found", "metrics are disabled");
        return;
    }
    if (strcmp(policy, "any") != 0 && authorise_any_admin(w, j, &c, "metrics", NULL, NULL) != 0) {
        caller_clear(&c);
        return;
    }
    caller_clear(&c);
    metrics_token_snapshot(&t);
    t.token_up = hsm_token_info_get(w->kh->hsm, &ti) == HSM_OK;
    t.sessions_in_use = t.token_up ? (long)ti.sessions_in_use : -1;
    t.sessions_idle = t.token_up ? (long)ti.sessions_idle : 0;
    t.audit_up = audit_check(w->kh->audit) == AUDIT_OK;
    metrics_token_pack(&t, packed);
    answer_begin(j, 200);
    ipc_put_bytes(&j->reply, IPC_T_COUNTERS, packed, sizeof(packed));
}

/* ---- administration -------------------------------------------------------------------------- */

static void put_member(ipc_buf *b, const gs_store_member *m, int with_cert)
{
    ipc_nest_begin(b, IPC_T_MEMBER);
    ipc_put_str(b, IPC_T_EMAIL, m->email);
    ipc_put_u32(b, IPC_T_ROLE, (uint32_t)m->role);
    ipc_put_u32(b, IPC_T_FLAGS, m->cert_pem != NULL ? IPC_FLAG_HAS_CERT : 0);
    ipc_put_u64(b, IPC_T_ADDED, (uint64_t)m->added);
    ipc_put_u32(b, IPC_T_WRAP, (uint32_t)m->wrap);
    if (with_cert && m->cert_pem != NULL) {
        X509 *x = NULL;
        unsigned char *der = NULL;
        int n;
        if (gs_cert_parse((const unsigned char *)m->cert_pem, strlen(m->cert_pem), &x) == GS_OK &&
            (n = i2d_X509(x, &der)) > 0)
            ipc_put_bytes(b, IPC_T_CERT, der, (size_t)n);
        OPENSSL_free(der);
        X509_free(x);
    }
    ipc_nest_end(b);
}

static void op_members(struct kh_worker *w, struct kh_job *j)
{
    struct caller c;
    gs_group *g;
    gs_store_member *list = NULL;
    size_t n = 0;
    gs_err e;

    memset(&c, 0, sizeof(c));
    if ((g = load_group(w, j, ipc_str(&j->msg, IPC_T_GROUP))) == NULL)
        return;
    if (authorise(w, j, g, ROLES_ADMIN, 0, "member-list", &c) != 0)
        goto out;
    if ((e = gs_store_member_list(w->store, gs_group_id(g), &list, &n)) != GS_OK) {
        answer_gs_error(j, e, "members");
        goto out;
    }
    answer_begin(j, 200);
    for (size_t i = 0; i < n; i++)
        put_member(&j->reply, &list[i], 0);
out:
    gs_store_member_list_free(list, n);
    caller_clear(&c);
}

static const char *member_email(struct kh_job *j)
{
    const char *email = ipc_str(&j->msg, IPC_T_EMAIL);
    /* GET and DELETE may name a record older than the rule */
    const char *why = mailaddr_refusal(email, j->msg.type == IPC_MEMBER_PUT);
    if (why != NULL) {
        answer_error(j, 400, "bad_request", "the member id must be an email address: %s", why);
        return NULL;
    }
    return email;
}

/* Audits a member change with its outcome (extra is consumed): 0 when the
 * record is written and the change was made; otherwise the answer is set
 * (the audit failure, or the change's error). */
static int member_change_audited(struct kh_job *j, const char *action, const char *identity, const char *gname,
                                 gs_err e, long key_version, json_t *extra)
{
    audit_record rec = {.action = action, .identity = identity, .group = gname, .key_version = key_version,
                        .outcome = e == GS_OK ? "ok" : gs_strerror(e), .extra = extra};
    int arc = job_audit_or_fail(j, &rec);

    json_decref(extra);
    if (arc != 0)
        return -1;
    if (e != GS_OK) {
        answer_gs_error(j, e, "member");
        return -1;
    }
    return 0;
}

/* Before a member change: the keys lock (every member change, in the
 * server, the admin commands and on other servers sharing the database,
 * runs under it from reading the record as it was until its audit record
 * is durable or the change undone), room for the audit record (reserved
 * past the end of the log, as POST /v1/groups does: a change refused here
 * is never made), then the record as it was (*prev; NULL: not a member).
 * 0, or -1 with the answer set; *locked says whether to unlock. */
static int member_change_begin(struct kh_worker *w, struct kh_job *j, const gs_group *g, const char *email,
                               bool *locked, gs_store_member **prev)
{
    gs_err e;

    *prev = NULL;
    if ((e = gs_store_keys_lock(w->store)) != GS_OK) {
        if (e == GS_ERR_DB && gs_err_db_cause() == GS_DB_CAUSE_KEYS_LOCK)
            answer_retry(j, 503, 5, "store_unavailable",
                         "the membership database is locked by another process or request (the keys lock): the "
                         "change was not made; try again later");
        else
            answer_gs_error(j, e, "member");
        return -1;
    }
    *locked = true;
    if (audit_check(w->kh->audit) != AUDIT_OK) {
        answer_retry(j, 503, 5, "audit_unavailable", "the audit log cannot be written: the change was not made");
        return -1;
    }
    e = gs_store_member_get(w->store, gs_group_id(g), email, prev);
    if (e != GS_OK && e != GS_ERR_NOT_FOUND) {
        answer_gs_error(j, e, "member");
        return -1;
    }
    return 0;
}

/* A member change's caller checked again once the keys lock is held
 * (after member_change_begin), from the database: authorise read their
 * record before the lock, from the worker's cache, and the change may
 * then wait behind another for as long as that one's key generation
 * takes. An admin removed or demoted by the change ahead (a colleague
 * removing an admin whose key was stolen) still made theirs after it,
 * an outcome no order of the two gives: a removed admin naming a new
 * admin. 0, or -1 with the refusal audited and answered. */
static int admin_still(struct kh_worker *w, struct kh_job *j, const gs_group *g, const char *action,
                       const struct caller *c)
{
    gs_store_member *me = NULL;
    gs_err e = gs_store_member_get(w->store, gs_group_id(g), c->identity, &me);
    int rc;

    if (e != GS_OK && e != GS_ERR_NOT_FOUND) {
        answer_gs_error(j, e, "member");
        return -1;
    }
    rc = member_check(w, j, gs_group_info(g)->name, ROLES_ADMIN, action, c, e == GS_OK ? me : NULL);
    gs_store_member_free(me);
    return rc;
}

/* Before a change is made (a member change: keys lock held,
 * member_change_begin; POST /v1/groups): a record of it with outcome
 * "started", durable before anything is changed (audit_started, as the
 * admin commands write theirs). The change is committed before its
 * outcome record can be written; a key holder killed in between (kill
 * -9, a crash, the machine losing power) would leave a change with no
 * record at all. With this one, every change made has a record: a
 * "started" not followed by the outcome of the same action, identity,
 * group and member means the change may have been made (the member's
 * record says). extra is consumed. 0, or -1 with 503 audit_unavailable
 * answered with refusal (nothing changed). */
static int change_started(struct kh_job *j, const char *action, const char *identity, const char *gname,
                          json_t *extra, const char *refusal)
{
    audit_record rec = {.request_id = ipc_str(&j->msg, IPC_T_REQUEST_ID), .action = action, .identity = identity,
                        .group = gname, .extra = extra};
    audit_err ae = audit_started(j->kh->audit, &rec);

    json_decref(extra);
    if (ae == AUDIT_OK)
        return 0;
    answer_retry(j, 503, 5, "audit_unavailable", refusal);
    return -1;
}

/* A member change is committed before its audit record is durable (the
 * record is queued, and the answer held for it). Should the record then
 * fail (the audit disk filled by other records since the room was
 * reserved, the audit table's insert failing even after its retry), the
 * change would stand without a record. So the worker waits for this one
 * record here (admin changes are rare; key requests never wait so) and,
 * when it failed, puts the member back as it was (prev; NULL: not a
 * member): the 503 audit_unavailable then means that nothing changed.
 * The caller holds the keys lock from before prev was read until after
 * this (member_change_begin): no other member change, here, in an admin
 * command or on another server sharing the database, can come between,
 * so the undo never puts back a record over a later change. Safe for a
 * removal too: while the audit log cannot be written no key request is
 * answered, to the member or anyone. Where the undo fails as well (the
 * database gone with the audit table), the 503 says the change was made
 * without its record. 0 when the record is durable; -1 with the 503
 * answered. */
static int member_change_durable(struct kh_worker *w, struct kh_job *j, const gs_group *g, const char *email,
                                 const gs_store_member *prev, const gs_store_member *made)
{
    gs_err e;

    if (audit_wait_durable(j->kh->audit, j->audit_first, j->audit_last) == AUDIT_OK)
        return 0;
    /* Known failed: nothing left to hold the answer for. */
    j->audit_first = j->audit_last = 0;
    e = gs_member_restore(w->store, gs_group_id(g), email, prev, made);
    if (e == GS_ERR_DB_UNAVAILABLE)
        e = gs_member_restore(w->store, gs_group_id(g), email, prev, made);
    if (e == GS_ERR_STATE) {
        /* Changed again since by a writer without the keys lock (a server
         * of an older version sharing the database): its change stands. */
        log_error("member change made without its audit record, not undone: the record was changed again since "
                  "group=%s member=%s",
                  gs_group_info(g)->name, email);
        answer_retry(j, 503, 5, "audit_unavailable",
                     "the audit log cannot be written: the change was made but not recorded, and the member was "
                     "changed again since (GET the member)");
        return -1;
    }
    if (e != GS_OK) {
        log_error("member change made without its audit record: the undo failed too group=%s member=%s error=\"%s\"",
                  gs_group_info(g)->name, email, gs_err_detail());
        answer_retry(j, 503, 5, "audit_unavailable",
                     "the audit log cannot be written: the change was made but not recorded (GET the member)");
        return -1;
    }
    log_error("member change undone: its audit record could not be written group=%s member=%s",
              gs_group_info(g)->name, email);
    answer_retry(j, 503, 5, "audit_unavailable", "the audit log cannot be written: the change was undone");
    return -1;
}

/* A REST removal or demotion of the group's last admin (prev, read
 * under the keys lock by member_change_begin, so two admins demoting each
 * other at once cannot both pass): refused 409 last_admin, audited with
 * that outcome, nothing changed. Made, it left a group no certificate
 * could manage again (only `groupsrv member add` on the server host),
 * often by a script PUTting a member read back without its role, which
 * is member by default. The admin commands, the operator's own tools,
 * are not held to it. 0 when the change may go on; -1 with the answer
 * set. */
static int keep_last_admin(struct kh_worker *w, struct kh_job *j, const gs_group *g, const char *identity,
                           const gs_store_member *prev, bool removal, gs_role role)
{
    size_t admins = 0;
    gs_err e;

    if (prev == NULL || prev->role != GS_ROLE_ADMIN || (!removal && role == GS_ROLE_ADMIN))
        return 0;
    if ((e = gs_member_admins(w->store, gs_group_id(g), &admins)) != GS_OK) {
        answer_gs_error(j, e, "member");
        return -1;
    }
    if (admins > 1)
        return 0;
    const char *gname = gs_group_info(g)->name;
    audit_record rec = {.action = removal ? "member-remove" : "member-add", .identity = identity, .group = gname,
                        .key_version = -1, .outcome = "last_admin",
                        .extra = removal ? json_pack("{s:s}", "member", prev->email)
                                         : json_pack("{s:s,s:s}", "member", prev->email, "role", gs_role_name(role))};
    int arc = job_audit_or_fail(j, &rec);
    json_decref(rec.extra);
    if (arc == 0)
        answer_error(j, 409, "last_admin",
                     "%s is the last admin of group %s: make another member admin first; the change was not made",
                     prev->email, gname);
    return -1;
}

static void op_member(struct kh_worker *w, struct kh_job *j)
{
    struct caller c;
    gs_group *g;
    gs_store_member *m = NULL, *prev = NULL;
    X509 *cert = NULL;
    const char *email;
    bool locked = false; /* the keys lock, from the record as it was to the change's audit record */
    gs_err e;
    uint32_t type = j->msg.type;
    const char *action = type == IPC_MEMBER_GET ? "member-get" : type == IPC_MEMBER_PUT ? "member-add" : "member-remove";

    memset(&c, 0, sizeof(c));
    if ((g = load_group(w, j, ipc_str(&j->msg, IPC_T_GROUP))) == NULL)
        return;
    if (authorise(w, j, g, ROLES_ADMIN, 0, action, &c) != 0 || (email = member_email(j)) == NULL)
        goto out;
    const char *gname = gs_group_info(g)->name;
    if (type == IPC_MEMBER_GET) {
        if ((e = gs_store_member_get(w->store, gs_group_id(g), email, &m)) != GS_OK) {
            answer_gs_error(j, e, "member");
            goto out;
        }
        answer_begin(j, 200);
        put_member(&j->reply, m, 1);
        goto out;
    }
    if (type == IPC_MEMBER_DELETE) {
        gs_member_removal rm;
        memset(&rm, 0, sizeof(rm));
        if (member_change_begin(w, j, g, email, &locked, &prev) != 0 || admin_still(w, j, g, action, &c) != 0 ||
            keep_last_admin(w, j, g, c.identity, prev, true, GS_ROLE_MEMBER) != 0 ||
            change_started(j, action, c.identity, gname,
                           json_pack("{s:s}", "member", prev != NULL ? prev->email : email),
                           "the audit log cannot be written: the change was not made") != 0)
            goto out;
        e = gs_member_remove_ex(w->store, w->kh->hsm, w->kh->ca, w->kh->cfg, gname, email, &rm);
        if (rm.email[0] != '\0')
            email = rm.email; /* the member as stored, for the record and the answer */
        json_t *detail = audit_removal_detail(email, rm.secret_version, rm.key_version, rm.rotate_elsewhere);
        if (member_change_audited(j, action, c.identity, gname, e, rm.key_version ? (long)rm.key_version : -1,
                                  detail) != 0 ||
            member_change_durable(w, j, g, email, prev, NULL) != 0)
            goto out;
        answer_begin(j, 200);
        ipc_put_str(&j->reply, IPC_T_EMAIL, email);
        if (rm.secret_version)
            ipc_put_u32(&j->reply, IPC_T_SECRET_VERSION, rm.secret_version);
        if (rm.key_version)
            ipc_put_u32(&j->reply, IPC_T_KEY_VERSION, rm.key_version);
        if (rm.rotate_elsewhere)
            ipc_put_u32(&j->reply, IPC_T_FLAGS, IPC_FLAG_ROTATE_ELSEWHERE);
        goto out;
    }
    /* PUT: create or replace. */
    gs_role role = (gs_role)ipc_u32(&j->msg, IPC_T_ROLE, GS_ROLE_MEMBER);
    gs_wrap wrap = (gs_wrap)ipc_u32(&j->msg, IPC_T_WRAP, GS_WRAP_DEFAULT);
    const unsigned char *p;
    size_t n;
    if (wrap != GS_WRAP_DEFAULT && wrap != GS_WRAP_OAEP && wrap != GS_WRAP_PKCS1V15) {
        answer_error(j, 400, "bad_request", "\"wrap\" must be pkcs1v15, oaep or default");
        goto out;
    }
    if (role != GS_ROLE_MEMBER && role != GS_ROLE_EXPLODER && role != GS_ROLE_ADMIN) {
        answer_error(j, 400, "bad_request", "\"role\" must be member, exploder or admin");
        goto out;
    }
    if (ipc_bytes(&j->msg, IPC_T_CERT, &p, &n) == 0 && gs_cert_parse(p, n, &cert) != GS_OK) {
        answer_error(j, 400, "bad_certificate", "\"certificate\" is not a PEM certificate");
        goto out;
    }
    if (cert != NULL && (gs_key_check_strength(X509_get0_pubkey(cert), "certificate") != GS_OK ||
                         gs_cert_check_valid_now(cert, "certificate") != GS_OK)) {
        /* Audited as the refusal of another address's certificate is. */
        char why[256];
        (void)snprintf(why, sizeof(why), "%s", gs_err_detail());
        audit_record rec = {.action = action, .identity = c.identity, .group = gname, .key_version = -1,
                            .outcome = gs_strerror(GS_ERR_CERT),
                            .extra = json_pack("{s:s,s:s}", "member", email, "role", gs_role_name(role))};
        int arc = job_audit_or_fail(j, &rec);
        json_decref(rec.extra);
        if (arc == 0)
            answer_error(j, 400, "bad_certificate", "%s", why);
        goto out;
    }
    bool existed = false;
    if (member_change_begin(w, j, g, email, &locked, &prev) != 0 || admin_still(w, j, g, action, &c) != 0 ||
        keep_last_admin(w, j, g, c.identity, prev, false, role) != 0 ||
        change_started(j, action, c.identity, gname,
                       json_pack("{s:s,s:s}", "member", email, "role", gs_role_name(role)),
                       "the audit log cannot be written: the change was not made") != 0)
        goto out;
    e = gs_member_put(w->store, gname, email, role, cert, wrap, &existed);
    /* The record as the change left it: what an undo may replace, and
     * the answer. Unread (the connection lost), no undo replaces it. */
    if (e == GS_OK && gs_store_member_get(w->store, gs_group_id(g), email, &m) != GS_OK)
        m = NULL;
    if (member_change_audited(j, action, c.identity, gname, e, -1,
                              json_pack("{s:s,s:s}", "member", email, "role", gs_role_name(role))) != 0 ||
        member_change_durable(w, j, g, email, prev, m) != 0)
        goto out;
    /* Recorded: the read below may go out again on a new connection,
     * which a statement under a lost lock could not. */
    gs_store_keys_unlock(w->store);
    locked = false;
    /* The change is committed and audited: a connection lost just now must
     * not turn its answer into a 503 (the admin would think it undone).
     * The read goes out once more, on a new connection. */
    e = m != NULL ? GS_OK : gs_store_member_get(w->store, gs_group_id(g), email, &m);
    if (e == GS_ERR_DB_UNAVAILABLE)
        e = gs_store_member_get(w->store, gs_group_id(g), email, &m);
    if (e != GS_OK) {
        answer_gs_error(j, e, "member");
        goto out;
    }
    answer_begin(j, existed ? 200 : 201);
    ipc_put_u32(&j->reply, IPC_T_FLAGS, existed ? 0 : IPC_FLAG_CREATED);
    put_member(&j->reply, m, 0);
out:
    if (locked)
        gs_store_keys_unlock(w->store);
    X509_free(cert);
    gs_store_member_free(prev);
    gs_store_member_free(m);
    caller_clear(&c);
}

static void op_group_create(struct kh_worker *w, struct kh_job *j)
{
    struct caller c;
    const char *name = ipc_str(&j->msg, IPC_T_NAME), *address = ipc_str(&j->msg, IPC_T_ADDRESS);
    unsigned version = 0;
    char *creator_pem = NULL;
    bool locked = false; /* the keys lock, from the caller's second check until the group is made */
    gs_err e;
    audit_err ae;

    memset(&c, 0, sizeof(c));
    if (authorise_any_admin(w, j, &c, "group-create", name, &creator_pem) != 0)
        goto out;
    if (w->kh->ca == NULL) {
        answer_error(j, 503, "no_ca", "the local CA is not initialised (groupsrv ca init)");
        goto out;
    }
    if (!gs_valid_group_name(name) || !gs_valid_email(address)) {
        answer_error(j, 400, "bad_request", "\"name\" (a group name) and \"address\" (an email) are required");
        goto out;
    }
    uint32_t flags = ipc_u32(&j->msg, IPC_T_FLAGS, 0);
    gs_wrap member_wrap = (gs_wrap)ipc_u32(&j->msg, IPC_T_WRAP, GS_WRAP_DEFAULT);
    if (member_wrap != GS_WRAP_DEFAULT && member_wrap != GS_WRAP_OAEP && member_wrap != GS_WRAP_PKCS1V15) {
        answer_error(j, 400, "bad_request", "\"member_wrap\" must be pkcs1v15 or oaep");
        goto out;
    }
    /* Neither flag: RSA groups accept v1.5 (the default). */
    gs_group_spec spec = {.name = name, .address = address, .keyspec = ipc_str(&j->msg, IPC_T_KEYSPEC),
                          .methods = ipc_u32(&j->msg, IPC_T_METHODS, 0),
                          .allow_pkcs1v15 = (flags & IPC_FLAG_PKCS1V15) != 0,
                          .oaep_only = (flags & IPC_FLAG_OAEP_ONLY) != 0, .member_wrap = member_wrap,
                          .replicable = (flags & IPC_FLAG_REPLICABLE) != 0,
                          .admin_email = c.identity, .admin_cert_pem = creator_pem};
    if (spec.methods & ~(unsigned)(GS_METHODS_DEFAULT | GS_METHOD_LOCAL_KEY)) {
        answer_error(j, 400, "bad_request", "\"methods\" has an unknown method");
        goto out;
    }
    /* The caller checked again once the keys lock is held, as a member
     * change's is (admin_still): authorise_any_admin read their records
     * before it, and the creation may then wait behind a change that
     * removes or demotes them (a key generation takes seconds); such an
     * admin still made a group and became its admin. Held until the group
     * is made (gs_group_create's own lock nests), the records read here
     * are the ones the creation is made under, the certificate it binds
     * the new admin record to too. */
    if ((e = gs_store_keys_lock(w->store)) != GS_OK) {
        /* As gs_group_create's own wait answered it: the cause in the log
         * and the answer names the keys lock, whichever store holds it
         * (on PostgreSQL another server's session, not a process here). */
        answer_gs_error(j, e, "group");
        goto out;
    }
    locked = true;
    free(creator_pem);
    if (any_admin_check(w, j, &c, "group-create", name, &creator_pem) != 0)
        goto out;
    spec.admin_cert_pem = creator_pem;
    /* No group without its record: there is no undoing a creation (its
     * keys are on the token), so the log must have room for the record
     * first (reserved, as for /healthz); should the record still fail,
     * the 503 says the group was made. */
    if (audit_check(w->kh->audit) != AUDIT_OK) {
        answer_retry(j, 503, 5, "audit_unavailable", "the audit log cannot be written: the group was not created");
        goto out;
    }
    /* As a member change: a record before the group is made, so that a
     * key holder killed before its outcome record does not leave a group
     * (and keys on the token) unrecorded. */
    if (change_started(j, "group-create", c.identity, name, NULL,
                       "the audit log cannot be written: the group was not created") != 0)
        goto out;
    /* The creator is the new group's admin (spec.admin_email), recorded
     * in the group's own transaction, bound to the key their own admin
     * record binds: recorded without a certificate, anyone with another
     * certificate for that address from a trusted client CA managed the
     * new group, though refused (certificate_mismatch) in the group whose
     * admin made it. */
    e = gs_group_create(w->store, w->kh->hsm, w->kh->ca, w->kh->cfg, &spec, &version);
    gs_store_keys_unlock(w->store);
    locked = false;
    audit_record rec = {.action = "group-create", .identity = c.identity, .group = name, .key_version = version,
                        .outcome = e == GS_OK ? "ok" : gs_strerror(e)};
    if (job_audit_or_fail(j, &rec) != 0)
        goto out;
    if (e == GS_OK && (ae = audit_wait_durable(j->kh->audit, j->audit_first, j->audit_last)) != AUDIT_OK) {
        j->audit_first = j->audit_last = 0; /* known failed: nothing to hold the answer for */
        /* [db] unreplicated_writes = refuse: the record is in the audit
         * table, on the primary alone (a failover may lose it), not
         * missing; the group was made all the same. */
        if (ae == AUDIT_ERR_UNREPLICATED) {
            log_error("group created, its audit record made on the database's primary alone group=%s "
                      "identity=\"%s\"",
                      name, log_qs(c.identity));
            answer_retry(j, 503, 5, "audit_unavailable",
                         "the audit log cannot be written: the group was created, but its record was made on "
                         "the database's primary alone, which [db] unreplicated_writes = refuse refuses");
            goto out;
        }
        log_error("group created without its audit record group=%s identity=\"%s\"", name,
                  log_qs(c.identity));
        answer_retry(j, 503, 5, "audit_unavailable",
                     "the audit log cannot be written: the group was created, but its record is missing");
        goto out;
    }
    /* A group this token cannot hold (no CKM_RSA_PKCS decryption for one
     * taking PKCS#1 v1.5, an EC key without ECDH, --replicable without
     * trusted wrap): the token's lasting answer, the caller's to change.
     * As GS_ERR_HSM it was 503 token_unavailable "try again later", a
     * retry for ever and a token error counted, the token being fine. */
    if (e == GS_ERR_POLICY) {
        answer_error(j, 400, "bad_request", "group: %s", gs_err_detail());
        goto out;
    }
    /* which it is: the name, or the list address another group has */
    if (e == GS_ERR_EXISTS) {
        answer_error(j, 400, "exists", "group: %s", gs_err_detail());
        goto out;
    }
    if (e != GS_OK) {
        answer_gs_error(j, e, "group");
        goto out;
    }
    answer_begin(j, 201);
    ipc_put_u32(&j->reply, IPC_T_KEY_VERSION, version);
out:
    if (locked)
        gs_store_keys_unlock(w->store);
    free(creator_pem);
    caller_clear(&c);
}

/* IPC_AUTHZ: the authorisation of an endpoint alone, as its full request
 * would do it first (refusals audited, a rate-limit token taken), so that
 * a request with bad input is refused for who sent it before its input
 * is judged. 204 when allowed. */
static void op_authz(struct kh_worker *w, struct kh_job *j)
{
    static const struct {
        const char *action;
        unsigned roles;
        int anonymous;
    } acts[] = {
        [IPC_ACT_UNWRAP] = {"unwrap", ROLES_READERS, 1},
        [IPC_ACT_REWRAP] = {"rewrap", ROLES_EXPLODER, 0},
        [IPC_ACT_SECRET_KEYS] = {"secret-keys", ROLES_READERS, 0},
        [IPC_ACT_MEMBER_LIST] = {"member-list", ROLES_ADMIN, 0},
        [IPC_ACT_MEMBER_GET] = {"member-get", ROLES_ADMIN, 0},
        [IPC_ACT_MEMBER_ADD] = {"member-add", ROLES_ADMIN, 0},
        [IPC_ACT_MEMBER_REMOVE] = {"member-remove", ROLES_ADMIN, 0},
    };
    uint32_t a = ipc_u32(&j->msg, IPC_T_ACTION, 0);
    struct caller c;
    gs_group *g;

    memset(&c, 0, sizeof(c));
    if (a == IPC_ACT_GROUP_CREATE) {
        if (authorise_any_admin(w, j, &c, "group-create", ipc_str(&j->msg, IPC_T_GROUP), NULL) == 0) {
            if (w->kh->ca == NULL)
                answer_error(j, 503, "no_ca", "the local CA is not initialised (groupsrv ca init)");
            else
                answer_begin(j, 204);
        }
        caller_clear(&c);
        return;
    }
    if (a == 0 || a >= GS_ARRAY_LEN(acts) || acts[a].action == NULL) {
        answer_error(j, 400, "bad_request", "unknown action");
        return;
    }
    if ((g = load_group(w, j, ipc_str(&j->msg, IPC_T_GROUP))) == NULL)
        return;
    if (authorise(w, j, g, acts[a].roles, acts[a].anonymous, acts[a].action, &c) == 0)
        answer_begin(j, 204);
    caller_clear(&c);
}

/* ---- the worker ------------------------------------------------------------------------------ */

void *kh_worker_init(void *arg, unsigned index)
{
    struct kh *kh = arg;
    struct kh_worker *w = calloc(1, sizeof(*w));
    gs_err ge;

    if (w == NULL)
        return NULL;
    w->kh = kh;
    w->index = index;
    if ((w->gc = gcache_new()) == NULL) {
        free(w);
        return NULL;
    }
    if ((ge = gs_store_open(gs_config_db_location(kh->cfg), 0, &w->store)) != GS_OK) {
        log_error("cannot open the database backend=%s err=\"%s\" detail=\"%s\"",
                  kh->cfg->db.url ? "postgresql" : "sqlite", gs_strerror(ge), log_qs(gs_err_detail()));
        gcache_free(w->gc);
        free(w);
        return NULL;
    }
    /* A REST change waits for the keys lock on this worker: held there up
     * to 120 s by a long command (a group create or rotate, a ceremony), a
     * few such changes would take every worker from the key requests. So
     * no longer than token work may wait in the queue. */
    if (kh->cfg->server.max_queue_ms > 0 && kh->cfg->server.max_queue_ms < GS_STORE_KEYS_LOCK_WAIT_S * 1000u)
        gs_store_keys_lock_wait(w->store, kh->cfg->server.max_queue_ms);
    return w;
}

void kh_worker_fini(void *worker)
{
    struct kh_worker *w = worker;

    if (w == NULL)
        return;
    gcache_free(w->gc); /* before the store and the hsm it borrowed from */
    gs_store_close(w->store);
    free(w);
}

/* The change stamp for job j: read afresh (gcache_refresh), or the one
 * this worker read last when that read came after j was queued. A commit
 * that j must see (a removal made before the request was sent) finished
 * before the I/O loop counted j, so it also finished before any stamp read
 * once the count was that far: that stamp shows it. Kept only from one
 * unwrap to the next (an unwrap writes nothing through this connection,
 * whose own writes move the stamp too) and never past gcache_mark_stale.
 * A worker running a batch of unwraps queued together (tokenq_wake) reads
 * the stamp, a read transaction or a database round trip, once for all. */
static gs_err stamp_current(struct kh_worker *w, const struct kh_job *j, int *changed)
{
    *changed = 0;
    if (j->msg.type == IPC_UNWRAP && w->stamp_ok && j->arrival <= w->stamp_arrivals && !gcache_is_stale(w->gc))
        return GS_OK;
    w->stamp_ok = 0;
    w->stamp_arrivals = atomic_load(&w->kh->arrivals);
    gs_err e = gcache_refresh(w->gc, w->store, changed);
    w->stamp_ok = e == GS_OK && j->msg.type == IPC_UNWRAP;
    return e;
}

bool kh_job_run(void *worker, tq_job *tq)
{
    struct kh_worker *w = worker;
    struct kh_job *j = (struct kh_job *)tq;
    int changed = 0;

    log_set_request_id(ipc_str(&j->msg, IPC_T_REQUEST_ID));
    ipc_buf_init(&j->reply);
    w->paused = false;
    w->gave_back = false;
    w->token_used = false;
    j->db_failed = false;
    w->deadline_s = ipc_u64(&j->msg, IPC_T_DEADLINE, 0) / 1e3;
    /* Past its deadline the network process has answered its client 503
     * already (or will within its tick): nothing is done for it, neither
     * token nor database touched, so no audit record is owed (the audit
     * covers what was done and every 200; this is neither). A key holder
     * stopped for a while so drops the backlog its link queued instead of
     * unwrapping for clients long gone. */
    if (ipc_deadline_passed(&j->msg)) {
        log_debug("request dropped: past its deadline type=%u", (unsigned)j->msg.type);
        kh_reply_error(&j->reply, j->msg.type | IPC_REPLY, j->msg.cookie, atomic_load(&w->kh->gen), 503, 5,
                       "token_unavailable", "the request waited past its deadline; try again later");
        (void)ipc_end(&j->reply);
        log_set_request_id(NULL);
        return false;
    }
    /* A database change seen by any worker moves the generation, so the
     * network process drops the group views it keeps. */
    uint64_t gen = atomic_load(&w->kh->gen);
    /* The change stamp is one statement in its own read transaction: with
     * the group and the member kept by the gcache, an unwrap reads nothing
     * else (no BEGIN and COMMIT around it). What a miss reads afterwards
     * is at least as new as the stamp, and is dropped when it moves. */
    gs_err re = stamp_current(w, j, &changed);
    if (re != GS_OK && j->msg.type != IPC_HEALTH) {
        answer_gs_error(j, re, "database");
    } else {
        /* The generation this answer was made at: a later change moves it
         * past this value, so a view kept from this answer is refetched. */
        if (changed)
            gen = atomic_fetch_add(&w->kh->gen, 1) + 1;
        switch (j->msg.type) {
        case IPC_VIEW: op_view(w, j, gen); break;
        case IPC_UNWRAP: op_unwrap(w, j); break;
        case IPC_REWRAP: op_rewrap(w, j); break;
        case IPC_SECRET_KEYS: op_secret_keys(w, j); break;
        case IPC_CERTIFY: op_certify(w, j); break;
        case IPC_SIGN: op_sign(w, j); break;
        case IPC_INFO: op_info(w, j); break;
        case IPC_HEALTH: op_health(w, j); break;
        case IPC_STATS: op_stats(w, j); break;
        case IPC_MEMBERS: op_members(w, j); break;
        case IPC_MEMBER_GET:
        case IPC_MEMBER_PUT:
        case IPC_MEMBER_DELETE: op_member(w, j); break;
        case IPC_GROUP_CREATE: op_group_create(w, j); break;
        case IPC_AUTHZ: op_authz(w, j); break;
        default: answer_error(j, 400, "bad_request", "unknown request"); break;
        }
    }
    gs_store_read_end(w->store);
    if (j->reply.len == 0)
        answer_error(j, 500, "internal", "internal error");
    ipc_put_u64(&j->reply, IPC_T_GEN, gen);
    if (ipc_end(&j->reply) != IPC_OK) {
        log_error("answer too large or out of memory type=%u", (unsigned)j->msg.type);
        kh_reply_error(&j->reply, j->msg.type | IPC_REPLY, j->msg.cookie, gen, 500, 0,
                       "internal", "the answer could not be encoded");
        (void)ipc_end(&j->reply);
    }
    log_set_request_id(NULL);
    /* A database failure's time is the database's: a PostgreSQL outage
     * (each request waiting up to [db] timeout) or a lock held past the
     * busy timeout, taken as samples, made the token look seconds slow a
     * turn, and healthy token work was shed 503 overloaded behind it.
     * Nor is a job of the token's class that made no token call
     * (token_used, kh.h): an unwrap, rewrap, secret-key fetch or TLS
     * signature refused before the token, an authorisation check or a
     * member change (the database alone). */
    bool token_use_only = j->msg.type == IPC_UNWRAP || j->msg.type == IPC_REWRAP || j->msg.type == IPC_SECRET_KEYS ||
                          j->msg.type == IPC_SIGN || j->msg.type == IPC_AUTHZ || j->msg.type == IPC_MEMBER_PUT ||
                          j->msg.type == IPC_MEMBER_DELETE;
    return !w->paused && !j->db_failed && (!token_use_only || w->token_used);
}

void kh_job_classify(const ipc_msg *m, char *flow, size_t flowcap, unsigned *cost, unsigned *cls, bool *batchable)
{
    uint32_t kind = ipc_u32(m, IPC_T_CALLER, 0);
    const char *id = ipc_str(m, IPC_T_IDENTITY);

    *cost = m->type == IPC_UNWRAP && m->count[IPC_T_ITEM] > 1 ? m->count[IPC_T_ITEM] : 1;
    /* batchable: the kinds whose time per unit is what their class's
     * average says, an unwrap (per item) and the small reads. Not a rewrap
     * (one per member of the group), a TLS signature, a key generation, a
     * member change or a member list: those get a token worker of their
     * own (tokenq.h). */
    *batchable = false;
    switch (m->type) {
    case IPC_UNWRAP:
        *cls = TQ_TOKEN;
        *batchable = true;
        break;
    case IPC_VIEW:
    case IPC_HEALTH:
    case IPC_STATS:
    case IPC_MEMBER_GET:
        *cls = TQ_LIGHT;
        *batchable = true;
        break;
    case IPC_MEMBERS:
        *cls = TQ_LIGHT;
        break;
    case IPC_INFO:
        *cls = ipc_u32(m, IPC_T_FLAGS, 0) & IPC_FLAG_RELOAD ? TQ_TOKEN : TQ_LIGHT;
        break;
    default:
        *cls = TQ_TOKEN;
        break;
    }
    /* Fair between the identities the requests are made for; what has
     * no caller shares a flow per kind. */
    if (kind == IPC_CALLER_IDENTITY && id != NULL)
        snprintf(flow, flowcap, "id:%s", id);
    else if (kind == IPC_CALLER_MEMBERSHIP && id != NULL)
        snprintf(flow, flowcap, "membership:%s", id);
    else if (m->type == IPC_SIGN)
        snprintf(flow, flowcap, "tls-handshake");
    else if (m->type == IPC_INFO)
        snprintf(flow, flowcap, "server");
    else
        snprintf(flow, flowcap, "anonymous");
    for (char *p = flow; *p != '\0'; p++) /* one member whatever the case (as rate_key) */
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
}
