/* store.c: see store.h and store_impl.h. The names, enums and validation
 * every backend shares; the one place that chooses a backend; and the
 * entry points, which check arguments the same way for both backends and
 * forward to the backend's ops. */
#include "store_impl.h"

#include <openssl/crypto.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "mailaddr.h"
#include "util.h"

/* ---- names and enums -------------------------------------------------- */

gs_wrap gs_store_group_wrap(gs_wrap w) { return w == GS_WRAP_OAEP ? GS_WRAP_OAEP : GS_WRAP_PKCS1V15; }

gs_wrap gs_store_wrap_from_text(const char *text)
{
    gs_wrap w = GS_WRAP_DEFAULT;
    if (text != NULL)
        (void)gs_wrap_parse(text, &w);
    return w;
}

const char *gs_key_state_name(gs_key_state s)
{
    switch (s) {
    case GS_KEY_CURRENT: return "current";
    case GS_KEY_OLD: return "old";
    case GS_KEY_RETIRED: return "retired";
    }
    return "?";
}

/* ---- choosing a backend ------------------------------------------------- */

/* The last '@' from at (one) up to the first '/' or '?' after it: a host
 * holds none, so an '@' after the first is the password's (or the user
 * name's), not written %40: libpq ends the password at the first '@' and
 * reads the rest as the host name, which it quotes in its errors. */
static const char *userinfo_end(const char *at)
{
    const char *stop = at + strcspn(at, "/?"), *next;

    while ((next = memchr(at + 1, '@', (size_t)(stop - at - 1))) != NULL)
        at = next;
    return at;
}

/* Are the n bytes at k, percent-decoded as libpq decodes a URI's query
 * keywords (`%70assword`), a keyword whose value is a secret: "password",
 * or "sslpassword" (the passphrase of the sslkey file)? */
static bool keyword_is_password(const char *k, size_t n)
{
    static const char *const secret[] = {"password", "sslpassword"};
    char word[sizeof("sslpassword")];
    size_t w = 0;

    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)k[i];
        if (c == '%') {
            int hi = i + 2 < n ? util_hex_digit((unsigned char)k[i + 1]) : -1;
            int lo = i + 2 < n ? util_hex_digit((unsigned char)k[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return false;
            c = hi << 4 | lo;
            i += 2;
        }
        if (w + 1 >= sizeof(word))
            return false;
        word[w++] = (char)c;
    }
    word[w] = '\0';
    for (size_t i = 0; i < GS_ARRAY_LEN(secret); i++)
        if (w == strlen(secret[i]) && memcmp(word, secret[i], w) == 0)
            return true;
    return false;
}

/* The end of a URI's user:password@ (auth: just after "://"), by libpq's
 * rule (conninfo_uri_parse_options): up to the first '@' before any '/',
 * so a '?', '&' or '#' in between is the password's; and past a '/' in
 * the password, not written %2F, with an '@' after it before any '?'
 * (libpq reads user:PASS as host:port and the rest as the database name,
 * and quotes those pieces in its errors: what was meant is a password up
 * to that '@'); and on to the last '@' (userinfo_end). The '@' that ends
 * it, or auth when there is none; *colon the ':' before the password, or
 * NULL. */
static const char *url_userinfo(const char *auth, const char **colon)
{
    const char *end = auth + strcspn(auth, "@/");
    const char *at = *end == '/' ? end + strcspn(end, "@?") : end;

    *colon = NULL;
    if (*at != '@')
        return auth;
    at = userinfo_end(at);
    *colon = memchr(auth, ':', (size_t)(at - auth));
    return at;
}

const char *gs_store_url_query(const char *location)
{
    const char *auth = gs_store_location_is_url(location) ? strstr(location, "://") : NULL, *colon;

    return auth != NULL ? strchr(url_userinfo(auth + 3, &colon), '?') : NULL;
}

size_t gs_store_url_passwords(const char *location, gs_store_span *spans, size_t max)
{
    const char *p = location ? location : "";
    const char *auth = gs_store_location_is_url(p) ? strstr(p, "://") : NULL;
    const char *rest = p; /* where the query's parameters are looked for */
    size_t n = 0;

    if (auth != NULL) {
        const char *colon;
        rest = url_userinfo(auth + 3, &colon);
        /* One span, the whole password as written, however many pieces
         * libpq makes of it (store_pg.c masks those too). */
        if (colon != NULL && n < max)
            spans[n++] = (gs_store_span){(size_t)(colon + 1 - p), (size_t)(rest - colon - 1)};
    }
    /* in order and apart: each search goes on after the span it found */
    for (const char *q = strpbrk(rest, "?&"); q != NULL && n < max;) {
        size_t klen = strcspn(q + 1, "=&");
        if (q[1 + klen] != '=' || !keyword_is_password(q + 1, klen)) {
            q = strpbrk(q + 1, "?&");
            continue;
        }
        spans[n] = (gs_store_span){(size_t)(q + 2 + klen - p), strcspn(q + 2 + klen, "&")};
        q = strpbrk(p + spans[n].off + spans[n].len, "?&");
        n++;
    }
    return n;
}

void gs_store_location_display(const char *location, char *buf, size_t cap)
{
    gs_store_span spans[GS_STORE_URL_PASSWORDS_MAX];
    const char *p = location ? location : "";
    size_t n = gs_store_url_passwords(p, spans, GS_STORE_URL_PASSWORDS_MAX), used = 0, at = 0;

    if (cap == 0)
        return;
    for (size_t i = 0; i <= n; i++) {
        /* the text up to the next password (or the end), then "***" for it */
        size_t end = i < n ? spans[i].off : strlen(p);
        for (; at < end && used + 1 < cap; at++)
            buf[used++] = p[at];
        if (i == n)
            break;
        for (const char *m = "***"; *m && used + 1 < cap; m++)
            buf[used++] = *m;
        at = spans[i].off + spans[i].len;
    }
    buf[used] = '\0';
}

/* Copies of the n bytes at secret in buf become "***" (buf NUL-terminated,
 * cap bytes). */
static void mask_secret(char *buf, size_t cap, const char *secret, size_t n)
{
    char *src;
    size_t used = 0;

    if (n == 0 || cap == 0)
        return;
    if ((src = strdup(buf)) == NULL) {
        (void)snprintf(buf, cap, "(detail withheld: out of memory)");
        return;
    }
    for (const char *p = src; *p != '\0' && used + 1 < cap;) {
        if (strncmp(p, secret, n) == 0) {
            for (const char *m = "***"; *m != '\0' && used + 1 < cap; m++)
                buf[used++] = *m;
            p += n;
        } else {
            buf[used++] = *p++;
        }
    }
    buf[used] = '\0';
    OPENSSL_cleanse(src, strlen(src));
    free(src);
}

/* mask_secret for the n bytes at secret as written and, when they hold a
 * %XX, as libpq decodes them too: it quotes a piece of a password it
 * reads as a port, host or database name decoded ("s3cr%65t" shown as
 * "s3cret"). An invalid %-sequence is left as it is (libpq quotes the
 * undecoded text then). */
static void mask_piece(char *msg, size_t cap, const char *secret, size_t n)
{
    char *decoded;
    size_t len = 0;

    mask_secret(msg, cap, secret, n);
    if (memchr(secret, '%', n) == NULL || (decoded = malloc(n + 1)) == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        int hi = secret[i] == '%' && i + 2 < n ? util_hex_digit((unsigned char)secret[i + 1]) : -1;
        int lo = hi >= 0 ? util_hex_digit((unsigned char)secret[i + 2]) : -1;
        if (lo >= 0) {
            decoded[len++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            decoded[len++] = secret[i];
        }
    }
    decoded[len] = '\0';
    /* a %00 ends what libpq can quote: mask up to it */
    mask_secret(msg, cap, decoded, strlen(decoded));
    OPENSSL_cleanse(decoded, n + 1);
    free(decoded);
}

void gs_store_url_mask_passwords(const char *url, char *msg, size_t cap)
{
    gs_store_span spans[GS_STORE_URL_PASSWORDS_MAX];
    size_t n = gs_store_url_passwords(url, spans, GS_STORE_URL_PASSWORDS_MAX);

    for (size_t i = 0; i < n; i++) {
        const char *pw = url + spans[i].off;
        mask_piece(msg, cap, pw, spans[i].len);
        for (size_t at = 0, len; at < spans[i].len; at += len + 1) {
            len = strcspn(pw + at, "/@:,?");
            if (len > spans[i].len - at)
                len = spans[i].len - at;
            if (len < spans[i].len)
                mask_piece(msg, cap, pw + at, len);
        }
    }
}

static _Atomic unsigned store_timeout_s = 10;

void gs_store_set_timeout(unsigned seconds) { store_timeout_s = seconds > 0 ? seconds : 10; }
unsigned gs_store_timeout(void) { return store_timeout_s; }

/* Set once by main before any store is opened (and inherited by the key
 * holder's fork); read by store_pg.c's connect. */
static char store_app_name[64];

void gs_store_set_app_name(const char *name)
{
    size_t n = 0;

    for (const char *p = name; p != NULL && *p != '\0' && n < sizeof(store_app_name) - 1; p++)
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr(" .-_:/", *p) != NULL)
            store_app_name[n++] = *p;
    store_app_name[n] = '\0';
}

const char *gs_store_app_name(void) { return store_app_name; }

static _Atomic unsigned store_idle_check_ms = GS_STORE_IDLE_CHECK_MS;

void gs_store_set_idle_check(unsigned ms) { store_idle_check_ms = ms; }
unsigned gs_store_idle_check(void) { return store_idle_check_ms; }

gs_err gs_store_open(const char *location, unsigned flags, gs_store **out)
{
    if (out == NULL)
        return gs_err_set(GS_ERR_ARGS, "no output");
    *out = NULL;
    if (location == NULL || *location == '\0')
        return gs_err_set(GS_ERR_ARGS, "no database path or URL");
    if (gs_store_location_is_url(location))
        return gs_store_pg_open(location, flags, out);
    return gs_store_sqlite_open(location, flags, out);
}

void gs_store_close(gs_store *st)
{
    if (st == NULL)
        return;
    gs_store_read_end(st);
    gs_store_rollback(st);
    if (st->keys_locked > 0) {
        st->keys_locked = 1;
        gs_store_keys_unlock(st);
    }
    st->ops->close(st);
}

int gs_store_schema_version(gs_store *st) { return st ? st->schema : 0; }
int gs_store_migrated_from(const gs_store *st)
{
    return st ? st->migrated_from : 0;
}

const char *gs_store_backend(const gs_store *st) { return st ? st->ops->name : "none"; }

gs_err gs_store_check_location(gs_store *st)
{
    if (st == NULL)
        return GS_ERR_ARGS;
    return st->ops->check_location != NULL ? st->ops->check_location(st) : GS_OK;
}

gs_err gs_store_check_integrity(gs_store *st)
{
    if (st == NULL)
        return GS_ERR_ARGS;
    return st->ops->check_integrity != NULL ? st->ops->check_integrity(st) : GS_OK;
}

gs_err gs_store_change_stamp(gs_store *st, uint64_t *stamp)
{
    *stamp = 0;
    if (st == NULL)
        return GS_ERR_ARGS;
    return st->ops->change_stamp(st, stamp);
}

/* ---- transactions ------------------------------------------------------- */

/* Every write passes here before it starts: gs_store_begin, each write
 * call outside a transaction (a transaction's were checked at its begin)
 * and the keys lock of a read-write handle (taken before token keys are
 * made for a write). The backend says whether the database may be
 * written: SQLite refuses a file found damaged (malformed), which a write
 * could damage further and whose changes would be lost at its restore
 * from a backup; by every caller alike, the server's requests and the
 * admin commands. */
static gs_err write_gate(gs_store *st)
{
    /* A write outside a transaction starts a step of its own: what an
     * earlier commit left unknown is not this one's outcome. */
    if (!st->in_tx)
        st->commit_unknown = false;
    if (st->in_tx || st->ops->write_check == NULL)
        return GS_OK;
    return st->ops->write_check(st);
}

gs_err gs_store_read_begin(gs_store *st)
{
    gs_err err;
    if (st == NULL)
        return GS_ERR_ARGS;
    if (st->in_tx || st->in_read || st->ops->read_begin == NULL)
        return GS_OK;
    err = st->ops->read_begin(st);
    if (err == GS_OK)
        st->in_read = true;
    return err;
}

void gs_store_read_end(gs_store *st)
{
    if (st == NULL || !st->in_read)
        return;
    st->ops->read_end(st);
    st->in_read = false;
}

gs_err gs_store_begin(gs_store *st)
{
    gs_err err;
    /* A write never runs in a read snapshot (SQLite could not upgrade it
     * once another connection committed). */
    gs_store_read_end(st);
    if (st->in_tx)
        return gs_err_set(GS_ERR_ARGS, "transaction already open");
    /* A new transaction: an earlier commit's unknown outcome is not its
     * own, and a begin or write that fails must not read as one (the
     * caller would keep token keys it should destroy). */
    st->commit_unknown = false;
    if ((err = write_gate(st)) != GS_OK)
        return err;
    err = st->ops->begin(st);
    if (err == GS_OK)
        st->in_tx = true;
    return err;
}

gs_err gs_store_commit(gs_store *st)
{
    gs_err err;
    if (!st->in_tx)
        return gs_err_set(GS_ERR_ARGS, "no transaction open");
    st->commit_unknown = false;
    err = st->ops->commit(st);
    if (err == GS_OK)
        st->commit_unknown = false;
    if (err)
        st->ops->rollback(st);
    st->in_tx = false;
    return err;
}

bool gs_store_commit_unknown(const gs_store *st)
{
    return st != NULL && st->commit_unknown;
}

void gs_store_rollback(gs_store *st)
{
    if (st == NULL || !st->in_tx)
        return;
    st->ops->rollback(st);
    st->in_tx = false;
}

gs_err gs_store_tx_begin_if_needed(gs_store *st, bool *mine)
{
    *mine = false;
    if (st->in_tx)
        return GS_OK;
    gs_err err = gs_store_begin(st);
    if (err == GS_OK)
        *mine = true;
    return err;
}

gs_err gs_store_tx_end_if_mine(gs_store *st, bool mine, gs_err err)
{
    if (!mine)
        return err;
    if (err) {
        gs_store_rollback(st);
        return err;
    }
    return gs_store_commit(st);
}

/* ---- the keys lock -------------------------------------------------------- */

void gs_store_keys_lock_wait(gs_store *st, unsigned wait_ms)
{
    if (st != NULL)
        st->keys_lock_wait_ms = wait_ms;
}

gs_err gs_store_keys_lock(gs_store *st)
{
    const unsigned pause_ms = 50;
    const struct timespec pause = {0, pause_ms * 1000 * 1000};
    bool got = false;

    if (st == NULL)
        return gs_err_set(GS_ERR_ARGS, "no store");
    unsigned wait_ms = st->keys_lock_wait_ms ? st->keys_lock_wait_ms : GS_STORE_KEYS_LOCK_WAIT_S * 1000u;
    if (st->keys_locked > 0) {
        st->keys_locked++;
        return GS_OK;
    }
    /* No key made for a write the database would refuse. */
    if (!st->readonly) {
        gs_err err = write_gate(st);
        if (err)
            return err;
    }
    for (unsigned tries = 0;; tries++) {
        gs_err err = st->ops->keys_lock_try(st, &got);
        if (err)
            return err;
        if (got)
            break;
        if (tries == 0)
            log_info("waiting for another command that is making token keys (the keys lock)");
        if (tries >= wait_ms / pause_ms)
            return gs_err_set_db(GS_ERR_DB, GS_DB_CAUSE_KEYS_LOCK,
                                 "another command has been making token keys for %g s (the keys lock); "
                                 "try again later",
                                 wait_ms / 1000.0);
        (void)nanosleep(&pause, NULL);
    }
    st->keys_locked = 1;
    return GS_OK;
}

void gs_store_keys_unlock(gs_store *st)
{
    if (st == NULL || st->keys_locked == 0 || --st->keys_locked > 0)
        return;
    st->ops->keys_unlock(st);
}

/* ---- shared helpers ------------------------------------------------------- */

/* A downgrade: what was found, and the two ways out. */
static gs_err schema_newer(const char *where, int v)
{
    return gs_err_set(
        GS_ERR_SCHEMA,
        "database %s was written by a newer groupsrv (schema version %d, this program knows up to %d): "
        "run that newer version, or restore the backup taken before the upgrade (docs/operations.md, "
        "\"Upgrading\")",
        where, v, GS_STORE_SCHEMA_VERSION);
}

gs_err gs_store_settle_schema(gs_store *st, int v, gs_store_migrate_fn migrate, const char *where)
{
    gs_err err;
    int found = v;

    if (v != GS_STORE_SCHEMA_VERSION) {
        if (v > GS_STORE_SCHEMA_VERSION)
            return schema_newer(where, v);
        /* A database without our tables (a PostgreSQL database made for
         * groupsrv, ca init not run yet) is one not created yet, as a
         * missing SQLite file is. */
        if (st->readonly && v == 0)
            return gs_err_set(GS_ERR_NOT_FOUND, "database %s has no groupsrv tables (run `groupsrv ca init` first)",
                              where);
        /* An older schema after an upgrade: a read-only open (group list,
         * a standby) cannot migrate it, so say what does. */
        if (st->readonly)
            return gs_err_set(GS_ERR_SCHEMA,
                              "database %s has schema version %d, this program needs %d (from an older version: "
                              "`groupsrv check`, `serve` or a command that writes migrates it)",
                              where, v, GS_STORE_SCHEMA_VERSION);
        /* A migration writes: not into a file found damaged (a server
         * upgraded after a disk error rewrote the schema of the file the
         * operator then restores). */
        if ((err = write_gate(st)) != GS_OK)
            return err;
        err = migrate(st, &found);
        /* a newer program wrote it after v was read */
        if (err != GS_OK && found > GS_STORE_SCHEMA_VERSION)
            return schema_newer(where, found);
        /* v 0 is a database being made (ca init): its own error says it */
        if (err != GS_OK && v > 0)
            return gs_err_set(err, "database %s has schema version %d, older than this program's %d, and migrating it "
                              "failed (nothing was changed): %s", where, v, GS_STORE_SCHEMA_VERSION, gs_err_detail());
        if (err != GS_OK)
            return err;
        /* this open migrated it; found current under the lock, another
         * process (a second check, a starting serve) did */
        if (found > 0 && found < GS_STORE_SCHEMA_VERSION)
            st->migrated_from = found;
    }
    st->schema = GS_STORE_SCHEMA_VERSION;
    return GS_OK;
}

void *gs_store_grow_array(void *list, size_t *cap, size_t elem, size_t first)
{
    size_t ncap = *cap ? *cap * 2 : first, bytes;
    void *nl;

    if (ncap < *cap || util_size_mul(ncap, elem, &bytes) != 0 || (nl = realloc(list, bytes)) == NULL)
        return NULL;
    *cap = ncap;
    return nl;
}

int64_t gs_store_now(void) { return (int64_t)time(NULL); }

/* ---- CA, groups, keys, members: checked here, done by the backend -------- */

gs_err gs_store_ca_get(gs_store *st, gs_store_ca **out)
{
    *out = NULL;
    return st->ops->ca_get(st, out);
}

gs_err gs_store_ca_put(gs_store *st, const char *key_label, const char *cert_pem)
{
    return gs_store_ca_put2(st, key_label, cert_pem, NULL);
}

const char *gs_store_rec_weak(const gs_store_keyrec *rec)
{
    return rec != NULL && rec->weakenings != NULL ? rec->weakenings : "";
}

gs_err gs_store_ca_put2(gs_store *st, const char *key_label, const char *cert_pem, const gs_store_keyrec *rec)
{
    return gs_store_ca_put_as(st, key_label, cert_pem, false, rec);
}

gs_err gs_store_ca_put_as(gs_store *st, const char *key_label, const char *cert_pem, bool replicable,
                          const gs_store_keyrec *rec)
{
    if (key_label == NULL || cert_pem == NULL)
        return gs_err_set(GS_ERR_ARGS, "missing CA label or certificate");
    gs_err err = write_gate(st);
    return err ? err : st->ops->ca_put(st, key_label, cert_pem, replicable, rec);
}

gs_err gs_store_ca_set_cert(gs_store *st, const char *cert_pem)
{
    if (cert_pem == NULL)
        return gs_err_set(GS_ERR_ARGS, "no CA certificate");
    gs_err err = write_gate(st);
    return err ? err : st->ops->ca_set_cert(st, cert_pem);
}

gs_err gs_store_group_add(gs_store *st, const gs_store_group *g, int64_t *id)
{
    if (id)
        *id = 0;
    /* the address rule is group create's; a group imported from a .gsk may
     * have been made under an older version's looser one */
    if (g == NULL || !gs_valid_group_name(g->name) || !mailaddr_names_record(g->address) || g->algorithm == NULL)
        return gs_err_set(GS_ERR_ARGS, "invalid group record");
    gs_err err = write_gate(st);
    return err ? err : st->ops->group_add(st, g, id);
}

gs_err gs_store_group_get(gs_store *st, const char *name, gs_store_group **out)
{
    *out = NULL;
    if (name == NULL)
        return gs_err_set(GS_ERR_ARGS, "no group name");
    return st->ops->group_get(st, name, out);
}

gs_err gs_store_group_list(gs_store *st, gs_store_group ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    return st->ops->group_list(st, out, n);
}

gs_err gs_store_group_set_member_wrap(gs_store *st, int64_t group_id, gs_wrap wrap)
{
    if (wrap != GS_WRAP_OAEP && wrap != GS_WRAP_PKCS1V15)
        return gs_err_set(GS_ERR_ARGS, "a group's member wrap is oaep or pkcs1v15");
    gs_err err = write_gate(st);
    return err ? err : st->ops->group_set_member_wrap(st, group_id, wrap);
}

gs_err gs_store_group_key_add(gs_store *st, int64_t group_id, unsigned version, const char *token_label,
                              const char *cert_pem)
{
    return gs_store_group_key_add_as(st, group_id, version, token_label, cert_pem, GS_KEY_CURRENT, NULL);
}

gs_err gs_store_group_key_add2(gs_store *st, int64_t group_id, unsigned version, const char *token_label,
                               const char *cert_pem, const gs_store_keyrec *rec)
{
    return gs_store_group_key_add_as(st, group_id, version, token_label, cert_pem, GS_KEY_CURRENT, rec);
}

gs_err gs_store_group_key_add_as(gs_store *st, int64_t group_id, unsigned version, const char *token_label,
                                 const char *cert_pem, gs_key_state state, const gs_store_keyrec *rec)
{
    if (version == 0 || token_label == NULL || cert_pem == NULL || (state != GS_KEY_CURRENT && state != GS_KEY_OLD))
        return gs_err_set(GS_ERR_ARGS, "invalid key version record");
    gs_err err = write_gate(st);
    return err ? err : st->ops->group_key_add(st, group_id, version, token_label, cert_pem, state, rec);
}

gs_err gs_store_group_key_set_cert(gs_store *st, int64_t group_id, unsigned version, const char *cert_pem)
{
    if (cert_pem == NULL)
        return gs_err_set(GS_ERR_ARGS, "no certificate");
    gs_err err = write_gate(st);
    return err ? err : st->ops->group_key_set_cert(st, group_id, version, cert_pem);
}

gs_err gs_store_group_key_retire(gs_store *st, int64_t group_id, unsigned version)
{
    gs_err err = write_gate(st);
    return err ? err : st->ops->group_key_retire(st, group_id, version);
}

gs_err gs_store_secret_retire(gs_store *st, int64_t group_id, unsigned version)
{
    gs_err err = write_gate(st);
    return err ? err : st->ops->secret_retire(st, group_id, version);
}

gs_err gs_store_group_keys(gs_store *st, int64_t group_id, gs_store_group_key **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    return st->ops->group_keys(st, group_id, out, n);
}

gs_err gs_store_secret_add(gs_store *st, int64_t group_id, unsigned version, const char *token_label,
                           const unsigned char kek_id[GS_KEK_ID_LEN])
{
    return gs_store_secret_add_as(st, group_id, version, token_label, kek_id, GS_KEY_CURRENT, NULL);
}

gs_err gs_store_secret_add2(gs_store *st, int64_t group_id, unsigned version, const char *token_label,
                            const unsigned char kek_id[GS_KEK_ID_LEN], const gs_store_keyrec *rec)
{
    return gs_store_secret_add_as(st, group_id, version, token_label, kek_id, GS_KEY_CURRENT, rec);
}

gs_err gs_store_secret_add_as(gs_store *st, int64_t group_id, unsigned version, const char *token_label,
                              const unsigned char kek_id[GS_KEK_ID_LEN], gs_key_state state,
                              const gs_store_keyrec *rec)
{
    if (version == 0 || token_label == NULL || kek_id == NULL || (state != GS_KEY_CURRENT && state != GS_KEY_OLD))
        return gs_err_set(GS_ERR_ARGS, "invalid secret key record");
    gs_err err = write_gate(st);
    return err ? err : st->ops->secret_add(st, group_id, version, token_label, kek_id, state, rec);
}

gs_err gs_store_secrets(gs_store *st, int64_t group_id, gs_store_secret **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    return st->ops->secrets(st, group_id, out, n);
}

gs_err gs_store_secret_by_kek_id(gs_store *st, const unsigned char *kek_id, size_t len, int64_t *group_id,
                                 unsigned *version)
{
    *group_id = 0;
    *version = 0;
    if (kek_id == NULL || len != GS_KEK_ID_LEN)
        return gs_err_set(GS_ERR_NOT_FOUND, "no secret key with this identifier");
    return st->ops->secret_by_kek_id(st, kek_id, group_id, version);
}

gs_err gs_store_seal_key_put(gs_store *st, const char *label, const char *weakenings)
{
    if (label == NULL)
        return gs_err_set(GS_ERR_ARGS, "no seal key label");
    gs_err err = write_gate(st);
    return err ? err : st->ops->seal_key_put(st, label, weakenings ? weakenings : "");
}

gs_err gs_store_seal_keys(gs_store *st, gs_store_seal_key **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    return st->ops->seal_keys(st, out, n);
}

gs_err gs_store_member_add(gs_store *st, int64_t group_id, const char *email, gs_role role, const char *cert_pem)
{
    if (!gs_valid_email(email) || role < GS_ROLE_MEMBER || role > GS_ROLE_ADMIN)
        return gs_err_set(GS_ERR_ARGS, "invalid member email or role");
    gs_err err = write_gate(st);
    return err ? err : st->ops->member_add(st, group_id, email, role, cert_pem);
}

/* Every member's address, however old, is one mailaddr_names_record
 * takes (US-ASCII, no spaces, no <>): another string names no member,
 * and is not given to the backend. There it could still match: PostgreSQL
 * compares with lower() under the database's collation, which under a
 * UTF-8 one folds U+0130 to i and U+212A KELVIN SIGN to k, so
 * "k\u0130m@example.org" found, changed or removed kim. Within US-ASCII
 * both backends fold the ASCII letters alone (SQLite's NOCASE;
 * store_pg.c's check_ascii_case), so a member is its address but for
 * ASCII case on either. */
static gs_err member_named(const char *email)
{
    char q[GS_EMAIL_MAX + 16];

    if (email == NULL)
        return gs_err_set(GS_ERR_ARGS, "no email");
    if (!mailaddr_names_record(email))
        return gs_err_set(GS_ERR_NOT_FOUND, "%s is not a member", log_quote(q, sizeof(q), email));
    return GS_OK;
}

gs_err gs_store_member_remove(gs_store *st, int64_t group_id, const char *email)
{
    gs_err err = member_named(email);
    if (err == GS_OK)
        err = write_gate(st);
    return err ? err : st->ops->member_remove(st, group_id, email);
}

gs_err gs_store_member_get(gs_store *st, int64_t group_id, const char *email, gs_store_member **out)
{
    *out = NULL;
    gs_err err = member_named(email);
    return err ? err : st->ops->member_get(st, group_id, email, out);
}

gs_err gs_store_member_list(gs_store *st, int64_t group_id, gs_store_member **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    return st->ops->member_list(st, group_id, out, n);
}

gs_err gs_store_member_set_wrap(gs_store *st, int64_t group_id, const char *email, gs_wrap wrap)
{
    if (email == NULL || wrap < GS_WRAP_DEFAULT || wrap > GS_WRAP_PKCS1V15)
        return gs_err_set(GS_ERR_ARGS, "invalid member or wrap");
    gs_err err = member_named(email);
    if (err == GS_OK)
        err = write_gate(st);
    return err ? err : st->ops->member_set_wrap(st, group_id, email, wrap);
}

/* ---- audit chains ----------------------------------------------------------- */

static bool valid_instance(const char *instance)
{
    return instance != NULL && *instance != '\0' && strlen(instance) <= GS_AUDIT_CHAIN_MAX;
}

gs_err gs_store_clock_offset(gs_store *st, int64_t *offset_ms)
{
    *offset_ms = 0;
    if (st == NULL)
        return gs_err_set(GS_ERR_ARGS, "no store");
    if (st->ops->clock_offset == NULL)
        return gs_err_set(GS_ERR_NOT_FOUND, "the database has no clock of its own");
    return st->ops->clock_offset(st, offset_ms);
}

gs_err gs_store_check_grants(gs_store *st, bool audit)
{
    if (st == NULL)
        return gs_err_set(GS_ERR_ARGS, "no store");
    if (st->ops->check_grants == NULL)
        return GS_OK;
    return st->ops->check_grants(st, audit);
}

static gs_err no_audit_table(gs_store *st)
{
    return gs_err_set(GS_ERR_ARGS, "the %s store has no audit table ([audit] store = db needs [db] url)",
                      st->ops->name);
}

bool gs_store_write_unsettled(gs_store *st)
{
    return st != NULL && st->ops->write_unsettled != NULL && st->ops->write_unsettled(st);
}

bool gs_store_take_unreplicated(gs_store *st)
{
    return st != NULL && st->ops->take_unreplicated != NULL && st->ops->take_unreplicated(st);
}

static _Atomic bool store_refuse_unreplicated = false;

void gs_store_set_refuse_unreplicated(bool refuse) { store_refuse_unreplicated = refuse; }
bool gs_store_refuse_unreplicated(void) { return store_refuse_unreplicated; }

gs_err gs_store_audit_head(gs_store *st, const char *instance, int64_t *seq, char **line)
{
    *seq = 0;
    *line = NULL;
    if (!valid_instance(instance))
        return gs_err_set(GS_ERR_ARGS, "invalid instance name");
    if (st->ops->audit_head == NULL)
        return no_audit_table(st);
    return st->ops->audit_head(st, instance, seq, line);
}

gs_err gs_store_audit_append(gs_store *st, const char *instance, int64_t first_seq, char *const *lines, size_t n)
{
    if (!valid_instance(instance) || first_seq < 1 || (n > 0 && lines == NULL))
        return gs_err_set(GS_ERR_ARGS, "invalid audit rows");
    if (st->ops->audit_append == NULL)
        return no_audit_table(st);
    if (n == 0)
        return GS_OK;
    gs_err err = write_gate(st);
    return err ? err : st->ops->audit_append(st, instance, first_seq, lines, n);
}

gs_err gs_store_audit_chain_lock(gs_store *st, const char *instance)
{
    if (!valid_instance(instance))
        return gs_err_set(GS_ERR_ARGS, "invalid instance name");
    if (st->ops->audit_chain_lock == NULL)
        return no_audit_table(st);
    return st->ops->audit_chain_lock(st, instance);
}

void gs_store_audit_chain_unlock(gs_store *st, const char *instance)
{
    if (st != NULL && valid_instance(instance) && st->ops->audit_chain_unlock != NULL)
        st->ops->audit_chain_unlock(st, instance);
}

gs_err gs_store_audit_instances(gs_store *st, char ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (st->ops->audit_instances == NULL)
        return no_audit_table(st);
    return st->ops->audit_instances(st, out, n);
}

gs_err gs_store_audit_read(gs_store *st, const char *instance, int64_t after_seq, size_t limit,
                           gs_store_audit_row **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!valid_instance(instance) || limit == 0)
        return gs_err_set(GS_ERR_ARGS, "invalid audit query");
    if (st->ops->audit_read == NULL)
        return no_audit_table(st);
    return st->ops->audit_read(st, instance, after_seq, limit, out, n);
}

/* ---- freeing records ---------------------------------------------------------- */

void gs_store_ca_free(gs_store_ca *ca)
{
    if (ca == NULL)
        return;
    free(ca->label);
    free(ca->cert_pem);
    free(ca->weakenings);
    free(ca);
}

void gs_store_group_free(gs_store_group *g)
{
    if (g == NULL)
        return;
    free(g->name);
    free(g->address);
    free(g->algorithm);
    free(g->reject_label);
    free(g->policy);
    free(g->reject_seal_label);
    free(g->reject_weakenings);
    free(g->reject_sealed);
    free(g);
}

void gs_store_group_list_free(gs_store_group **list, size_t n)
{
    if (list == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        gs_store_group_free(list[i]);
    free(list);
}

void gs_store_group_keys_free(gs_store_group_key *list, size_t n)
{
    if (list == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        free(list[i].token_label);
        free(list[i].cert_pem);
        free(list[i].weakenings);
    }
    free(list);
}

void gs_store_secrets_free(gs_store_secret *s, size_t n)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        free(s[i].token_label);
        free(s[i].weakenings);
        free(s[i].seal_label);
        free(s[i].sealed);
    }
    free(s);
}

void gs_store_seal_keys_free(gs_store_seal_key *list, size_t n)
{
    if (list == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        free(list[i].label);
        free(list[i].weakenings);
    }
    free(list);
}

void gs_store_member_free(gs_store_member *m)
{
    if (m == NULL)
        return;
    free(m->email);
    free(m->cert_pem);
    free(m);
}

void gs_store_member_list_free(gs_store_member *list, size_t n)
{
    if (list == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        free(list[i].email);
        free(list[i].cert_pem);
    }
    free(list);
}

void gs_store_audit_rows_free(gs_store_audit_row *rows, size_t n)
{
    if (rows == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        free(rows[i].line);
    free(rows);
}

void gs_store_strings_free(char **list, size_t n)
{
    if (list == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}
