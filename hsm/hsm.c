/*
 * hsm.c: module loading, token lookup by URI, login, the session pool and
 * recovery (hsm_run). See hsm.h for the contract.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "log.h"
#include "util.h"
#include "hsm_internal.h"

/* ---- PINs the token rejected: never sent again (no lock-outs) -------- */

/* Process-wide, so that a second hsm_open() with the same bad PIN does not
 * burn another try on the token. Stored as SHA-256(token identity || PIN),
 * never the PIN itself. */
#define REJECTED_MAX 32
static pthread_mutex_t rejected_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned char rejected[REJECTED_MAX][32];
static unsigned n_rejected, next_rejected;

static int pin_digest(const CK_TOKEN_INFO *ti, const char *pin, size_t pin_len, unsigned char md[32])
{
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    unsigned int mdlen = 0;
    int ok = mctx != NULL && EVP_DigestInit_ex(mctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(mctx, ti->label, sizeof(ti->label)) == 1 &&
             EVP_DigestUpdate(mctx, ti->manufacturerID, sizeof(ti->manufacturerID)) == 1 &&
             EVP_DigestUpdate(mctx, ti->model, sizeof(ti->model)) == 1 &&
             EVP_DigestUpdate(mctx, ti->serialNumber, sizeof(ti->serialNumber)) == 1 &&
             EVP_DigestUpdate(mctx, pin, pin_len) == 1 && EVP_DigestFinal_ex(mctx, md, &mdlen) == 1;
    EVP_MD_CTX_free(mctx);
    return ok && mdlen == 32 ? 0 : -1;
}

static bool pin_is_rejected(const CK_TOKEN_INFO *ti, const char *pin, size_t pin_len)
{
    unsigned char md[32];
    bool found = false;
    unsigned i;

    if (pin_digest(ti, pin, pin_len, md) != 0)
        return false;
    pthread_mutex_lock(&rejected_mu);
    for (i = 0; i < n_rejected; i++)
        if (CRYPTO_memcmp(rejected[i], md, 32) == 0)
            found = true;
    pthread_mutex_unlock(&rejected_mu);
    OPENSSL_cleanse(md, sizeof(md));
    return found;
}

static void pin_remember_rejected(const CK_TOKEN_INFO *ti, const char *pin, size_t pin_len)
{
    unsigned char md[32];

    if (pin_digest(ti, pin, pin_len, md) != 0)
        return;
    pthread_mutex_lock(&rejected_mu);
    memcpy(rejected[next_rejected], md, 32);
    next_rejected = (next_rejected + 1) % REJECTED_MAX;
    if (n_rejected < REJECTED_MAX)
        n_rejected++;
    pthread_mutex_unlock(&rejected_mu);
    OPENSSL_cleanse(md, sizeof(md));
}

bool hsm_pin_source_named(const char *src)
{
    return src != NULL && (strncmp(src, "env:", 4) == 0 || strncmp(src, "file:", 5) == 0 || strchr(src, '/') != NULL);
}

/* A PIN source as a message may show it (hsm_pin_source_named). */
static const char *source_shown(const char *src) { return hsm_pin_source_named(src) ? src : "the PIN source"; }

/* Whether the refusal recorded at ctx->refusal_path (refusal.c) names
 * this token and this PIN source (src, pin: what was read from it); if so
 * the detail says what to fix and how to clear it. */
static bool refused_before(hsm_ctx *ctx, const CK_TOKEN_INFO *ti, const hsm_pin_src *src, const char *pin,
                           size_t pin_len)
{
    char when[40], rv[48];

    if (ctx->refusal_path == NULL || ctx->pinpad || pin == NULL ||
        !hsm_refusal_matches(ctx->refusal_path, ti, src, pin, pin_len, when, sizeof(when), rv, sizeof(rv)))
        return false;
    /* Kept within the detail's 384 bytes: what to fix, how to clear it. */
    if (rv[0] != '\0' && strcmp(rv, "CKR_PIN_INCORRECT") != 0)
        hsm_set_detail("C_Login: not attempted: the login with the PIN from %.120s failed at %s with %.40s, which "
                       "may have cost a try; not sent again until that %s changes or %.120s is removed (check the "
                       "PIN by hand first: pkcs11-tool --login)",
                       source_shown(ctx->source_name), when[0] ? when : "a time unknown", rv,
                       src->is_pipe ? "pipe's PIN" : src->is_file ? "file" : "variable", ctx->refusal_path);
    else
        hsm_set_detail("C_Login: not attempted: the token refused the PIN from %.120s at %s; not sent again until "
                       "that %s changes (correct the PIN there) or %.120s is removed (the token's PIN set to it since)",
                       source_shown(ctx->source_name), when[0] ? when : "a time unknown",
                       src->is_pipe ? "pipe's PIN" : src->is_file ? "file" : "variable", ctx->refusal_path);
    return true;
}

/* What about a PIN the token refused looks stray, for the message, or
 * NULL: a space typed after it, a second line, an editor's byte-order
 * mark are sent byte for byte (only line ends at its end are dropped), so
 * the right PIN with one of them is "incorrect" with no hint why. Names
 * the kind of byte only, never the PIN's value or length. */
static const char *pin_stray(const char *pin, size_t len)
{
    if (pin == NULL || len == 0)
        return NULL;
    if (len >= 3 && memcmp(pin, "\xef\xbb\xbf", 3) == 0)
        return "begins with a byte-order mark (U+FEFF, as some editors write)";
    if (memchr(pin, '\n', len) != NULL || memchr(pin, '\r', len) != NULL)
        return "holds more than one line";
    if (memchr(pin, '\0', len) != NULL)
        return "holds a NUL byte";
    if (pin[len - 1] == ' ' || pin[len - 1] == '\t')
        return "ends with white space";
    if (pin[0] == ' ' || pin[0] == '\t')
        return "begins with white space";
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)pin[i] < 0x20 || pin[i] == 0x7f)
            return "holds a control byte";
    return NULL;
}

/* A CKR_PIN_INCORRECT: remembered in this process and, for the processes
 * after it (a service manager's restarts, the key holder the supervisor
 * starts again, a cron job), at ctx->refusal_path; the PIN is wiped. */
static void pin_refused(hsm_ctx *ctx, const CK_TOKEN_INFO *ti)
{
    ctx->pin_rejected = true;
    pin_remember_rejected(ti, ctx->pin, ctx->pin_len);
    hsm_refusal_record(ctx->refusal_path, ti, &ctx->pin_src, ctx->pin, ctx->pin_len, ctx->source_name,
                       "CKR_PIN_INCORRECT");
    /* The PIN is useless now: do not keep it in memory. */
    OPENSSL_cleanse(ctx->pin, ctx->pin_len);
}

/* ---- token lookup ------------------------------------------------------- */

/* A token that allows fewer sessions than the pool would open (smartcards:
 * one or two) gets no more than that: C_OpenSession beyond its limit
 * fails with CKR_SESSION_COUNT, so callers wait for a pooled one instead.
 * Called with pool_mu held or before the ctx is shared. */
static void clamp_sessions(hsm_ctx *ctx)
{
    CK_ULONG lim = ctx->tinfo.ulMaxSessionCount;

    /* 0 means no limit; ~0 unknown, and opencryptoki reports ~1. */
    if (lim == CK_EFFECTIVELY_INFINITE || lim > 65536 || lim >= ctx->sessions_ceiling)
        return;
    log_info("token allows %lu sessions; session pool lowered from %u", (unsigned long)lim, ctx->sessions_ceiling);
    ctx->sessions_ceiling = (unsigned)lim;
    if (ctx->max_sessions > ctx->sessions_ceiling)
        ctx->max_sessions = ctx->sessions_ceiling;
}

/* Copies a blank-padded PKCS#11 string field without the padding. */
static void copy_padded(char *dst, size_t cap, const unsigned char *src, size_t n)
{
    while (n > 0 && (src[n - 1] == ' ' || src[n - 1] == '\0'))
        n--;
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* A token's serial for a message: padding cut, anything but what a URI
 * carries unescaped shown as '?'. */
static void serial_text(char *dst, size_t cap, const CK_TOKEN_INFO *ti)
{
    copy_padded(dst, cap, ti->serialNumber, sizeof(ti->serialNumber));
    for (char *p = dst; *p != '\0'; p++)
        if (!isalnum((unsigned char)*p) && strchr("-._~", *p) == NULL)
            *p = '?';
}

static void module_stem(const char *file, char *out, size_t cap);

/* SoftHSM's token directory: directories.tokendir of SOFTHSM2_CONF, else
 * of its default configuration. 0 and the path in out; -1 when there is
 * none to read (the configuration missing or without the line). */
int hsm_softhsm_tokendir(char *out, size_t cap)
{
    const char *conf = getenv("SOFTHSM2_CONF");
    char line[PATH_MAX + 64];
    FILE *f = fopen(conf != NULL && conf[0] != '\0' ? conf : "/etc/softhsm/softhsm2.conf", "re");

    if (cap == 0)
        return -1;
    out[0] = '\0';
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        char *k = line, *v;
        while (isspace((unsigned char)*k))
            k++;
        if (strncmp(k, "directories.tokendir", 20) != 0 || (v = strchr(k + 20, '=')) == NULL)
            continue;
        for (v++; isspace((unsigned char)*v); v++)
            ;
        size_t n = strlen(v);
        while (n > 0 && isspace((unsigned char)v[n - 1]))
            v[--n] = '\0';
        if (util_strlcpy(out, v, cap) != UTIL_OK)
            out[0] = '\0';
    }
    if (f != NULL)
        fclose(f);
    return out[0] != '\0' ? 0 : -1;
}

bool hsm_module_is_softhsm(const char *module)
{
    char stem[256], real[PATH_MAX], *file = NULL;
    const char *judged = module;
    CK_FUNCTION_LIST **mods = NULL, *m;

    if (module == NULL)
        return false;
    /* A path is the file it leads to: a link with a name of its own
     * (module = /usr/local/lib/token.so -> libsofthsm2.so) loads SoftHSM,
     * and its store is the token's; one named libsofthsm2.so that leads
     * to another module's file is not. A name without '/' is a p11-kit
     * module name (load_module): the file p11-kit's module file of that
     * name gives, as it is loaded (a token.module whose module: is
     * libsofthsm2.so is SoftHSM); a name p11-kit does not configure, its
     * stem. */
    if (strchr(module, '/') != NULL) {
        if (realpath(module, real) != NULL)
            judged = real;
    } else if ((mods = p11_kit_modules_load(NULL, 0)) != NULL && (m = p11_kit_module_for_name(mods, module)) != NULL &&
               (file = p11_kit_module_get_filename(m)) != NULL) {
        /* a relative module: is relative to p11-kit's module directory,
         * not to ours: its own name then */
        judged = file[0] == '/' && realpath(file, real) != NULL ? real : file;
    }
    module_stem(judged, stem, sizeof(stem));
    free(file);
    if (mods != NULL)
        p11_kit_modules_release(mods);
    return strcmp(stem, "softhsm2") == 0;
}

/* A token's directory in SoftHSM's token directory that this user cannot
 * open: SoftHSM leaves such a token out of its slot list without a
 * word (only syslog hears), so a store restored as root with `cp -r` reads
 * as "no token matches". The first such directory goes in out; 0 if none
 * (or the configuration cannot be read: C_Initialize would have said). */
static int softhsm_hidden_token(char *out, size_t cap)
{
    char dir[PATH_MAX], path[PATH_MAX];
    DIR *d = NULL;
    struct dirent *e;
    struct stat st;
    int found = 0;

    if (hsm_softhsm_tokendir(dir, sizeof(dir)) != 0 || (d = opendir(dir)) == NULL)
        return 0;
    while (!found && (e = readdir(d)) != NULL) {
        int w = snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (e->d_name[0] == '.' || w < 0 || (size_t)w >= sizeof(path) || lstat(path, &st) != 0 ||
            !S_ISDIR(st.st_mode))
            continue;
        if (access(path, R_OK | W_OK | X_OK) != 0) {
            (void)snprintf(out, cap, "%s (uid %lu's, mode %04o)", path, (unsigned long)st.st_uid,
                           (unsigned)(st.st_mode & 07777));
            found = 1;
        }
    }
    closedir(d);
    return found;
}

/* Appends to out (cap bytes, used of them taken) what fits whole; the
 * new length. A part that does not fit is left out, never cut. */
static size_t append_whole(char *out, size_t cap, size_t used, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static size_t append_whole(char *out, size_t cap, size_t used, const char *fmt, ...)
{
    va_list ap;
    int w;

    if (used >= cap)
        return used;
    va_start(ap, fmt);
    w = vsnprintf(out + used, cap - used, fmt, ap);
    va_end(ap);
    if (w < 0 || (size_t)w >= cap - used) {
        out[used] = '\0';
        return used;
    }
    return used + (size_t)w;
}

/* What "no token matches the URI" adds: the labels of the initialised
 * tokens present (a typo in token= then shows beside the right name),
 * and for SoftHSM a token directory this user cannot open. */
static void no_match_hint(hsm_ctx *ctx, const CK_SLOT_ID *slots, CK_ULONG n, char *out, size_t cap)
{
    CK_TOKEN_INFO ti;
    char label[sizeof(ti.label) + 1], shown_label[3 * sizeof(ti.label) + 1], hidden[PATH_MAX + 48], stem[64],
        real[PATH_MAX];
    char *file = p11_kit_module_get_filename(ctx->fl);
    const char *name = file == NULL ? "" : realpath(file, real) != NULL ? real : file;
    unsigned shown = 0;
    size_t used = 0;

    out[0] = '\0';
    for (CK_ULONG i = 0; i < n && shown <= 3; i++) {
        memset(&ti, 0, sizeof(ti));
        if (P11(ctx, C_GetTokenInfo, slots[i], &ti) != HSM_OK || !(ti.flags & CKF_TOKEN_INITIALIZED))
            continue;
        /* Percent-encoded as in a URI's token= (RFC 7512): a label is any
         * 32 bytes a token's owner chose, and this line goes to a terminal
         * and a log (an escape sequence, a C1 control as UTF-8 or as a raw
         * byte, a quote of ours); so written it is what [hsm] token takes. */
        copy_padded(label, sizeof(label), ti.label, sizeof(ti.label));
        (void)util_uri_escape_value(label, shown_label, sizeof(shown_label));
        used = shown < 3 ? append_whole(out, cap, used, "%s\"%s\"",
                                        shown == 0 ? "; tokens present: token=" : ", ", shown_label)
                         : append_whole(out, cap, used, ", ...");
        shown++;
    }
    if (shown == 0)
        used = append_whole(out, cap, used, "; no initialised token is present");
    module_stem(name, stem, sizeof(stem));
    free(file);
    if (strcmp(stem, "softhsm2") == 0 && softhsm_hidden_token(hidden, sizeof(hidden)))
        (void)append_whole(out, cap, used, "; SoftHSM leaves out a token directory this user cannot open: %s",
                           hidden);
}

/* Slot lists longer than this are no real module's. */
#define SLOT_LIST_MAX 4096
/* Reads of a slot list that grows between its two calls (readers being
 * plugged in) before the open gives up. */
#define SLOT_LIST_TRIES 3

static hsm_err get_slot_list(hsm_ctx *ctx, void *arg, CK_ULONG *list, CK_ULONG *n)
{
    (void)arg;
    return P11(ctx, C_GetSlotList, CK_TRUE, list, n);
}

/* Finds the one initialised token the URI matches (an uninitialised one
 * only when no initialised token matches). A URI that matches two
 * initialised tokens (two cards with one label, or a URI without token=)
 * names none of them: keys would be made on, or looked for on, whichever
 * the module lists first. Returns HSM_ERR_TOKEN_ABSENT when none matches
 * (the caller decides whether that means "not found" at open or "gone"
 * later), HSM_ERR_TOKEN_NOT_FOUND when more than one does. */
static hsm_err find_token(hsm_ctx *ctx)
{
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n = 0, i;
    CK_TOKEN_INFO ti, init[2], uninit;
    CK_SLOT_ID init_slot = 0, uninit_slot = 0;
    unsigned n_init = 0, n_uninit = 0;
    char s1[sizeof(ti.serialNumber) + 1], s2[sizeof(ti.serialNumber) + 1];
    hsm_err err;
    hsm_list_read how = {
        .get = get_slot_list,
        .fn = "C_GetSlotList",
        .what = "slots",
        .whose = "the module's slot list",
        .max = SLOT_LIST_MAX,
        .spare = 0,
        .tries = SLOT_LIST_TRIES,
    };

    /* A reader plugged in (or a token put in one) between the call
     * asking the list's length and the call reading it is
     * CKR_BUFFER_TOO_SMALL with n the new length: asked for again (by
     * hsm_read_list, as the mechanism list is), not an open that fails. */
    if ((err = hsm_read_list(ctx, &how, &slots, &n)) != HSM_OK)
        goto out;
    if (slots == NULL) {
        hsm_set_detail(n == 0 ? "no token present in any slot" : "the module lists %lu slots", (unsigned long)n);
        err = HSM_ERR_TOKEN_ABSENT;
        goto out;
    }
    memset(init, 0, sizeof(init));
    memset(&uninit, 0, sizeof(uninit));
    for (i = 0; i < n; i++) {
        memset(&ti, 0, sizeof(ti));
        /* A slot whose token vanished between the calls is skipped. */
        if (P11(ctx, C_GetTokenInfo, slots[i], &ti) != HSM_OK)
            continue;
        if (p11_kit_uri_match_token_info(ctx->token_uri, &ti) != 1)
            continue;
        if (!(ti.flags & CKF_TOKEN_INITIALIZED)) {
            if (n_uninit++ == 0) {
                uninit = ti;
                uninit_slot = slots[i];
            }
            continue;
        }
        if (n_init < 2)
            init[n_init] = ti;
        if (n_init++ == 0)
            init_slot = slots[i];
    }
    if (n_init > 1) {
        serial_text(s1, sizeof(s1), &init[0]);
        serial_text(s2, sizeof(s2), &init[1]);
        if (strcmp(s1, s2) != 0) {
            hsm_set_detail("it matches %u tokens, serial=%s and serial=%s%s; add serial= to name one", n_init, s1,
                           s2, n_init > 2 ? " and more" : "");
        } else {
            /* Serials are no name on every module: NSS softokn's two
             * tokens are both 0000000000000000, so "add serial=" named
             * the same two again. Their labels, percent-encoded as
             * token= takes them (see no_match_hint), tell them apart. */
            char l1[sizeof(ti.label) + 1], l2[sizeof(ti.label) + 1], e1[3 * sizeof(ti.label) + 1],
                e2[3 * sizeof(ti.label) + 1];
            copy_padded(l1, sizeof(l1), init[0].label, sizeof(init[0].label));
            copy_padded(l2, sizeof(l2), init[1].label, sizeof(init[1].label));
            (void)util_uri_escape_value(l1, e1, sizeof(e1));
            (void)util_uri_escape_value(l2, e2, sizeof(e2));
            hsm_set_detail("it matches %u tokens, token=\"%s\" and token=\"%s\"%s, of one serial (%s); %s", n_init,
                           e1, e2, n_init > 2 ? " and more" : "", s1,
                           strcmp(l1, l2) != 0 ? "add token= to name one"
                                               : "the same label too: give one of them another label");
        }
        err = HSM_ERR_TOKEN_NOT_FOUND;
        goto out;
    }
    if (n_init == 0 && n_uninit == 0) {
        char hint[340];
        no_match_hint(ctx, slots, n, hint, sizeof(hint));
        hsm_set_detail("no token present matches the token URI%s", hint);
        err = HSM_ERR_TOKEN_ABSENT;
        goto out;
    }
    ctx->slot = n_init == 1 ? init_slot : uninit_slot;
    ctx->tinfo = n_init == 1 ? init[0] : uninit;
    clamp_sessions(ctx);
    err = HSM_OK;
out:
    free(slots);
    return err;
}

/* ---- login -------------------------------------------------------------- */

static void bump_key_gen(hsm_ctx *ctx)
{
    pthread_mutex_lock(&ctx->key_mu);
    ctx->key_gen++;
    pthread_mutex_unlock(&ctx->key_mu);
}

void hsm_token_info_copy(hsm_ctx *ctx, CK_TOKEN_INFO *out)
{
    pthread_mutex_lock(&ctx->pool_mu);
    *out = ctx->tinfo;
    pthread_mutex_unlock(&ctx->pool_mu);
}

CK_SLOT_ID hsm_slot_now(hsm_ctx *ctx)
{
    CK_SLOT_ID slot;

    pthread_mutex_lock(&ctx->pool_mu);
    slot = ctx->slot;
    pthread_mutex_unlock(&ctx->pool_mu);
    return slot;
}

/* Each process (an admin command, a key holder the supervisor restarts,
 * a service manager's restarts) sends a wrong PIN only once, but a loop of
 * them would still lock the token: so the last try the token reports
 * (CKF_USER_PIN_FINAL_TRY, CKF_SO_PIN_FINAL_TRY) is left to a person, and
 * a locked PIN is not sent at all. Tokens without a counter never set
 * these flags. See hsm_internal.h. */
#define USER_PIN_FLAGS (CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED)

/* hsm_pin_tries_left, and the user PIN's retry flags it read in
 * *user_flags (0 if the token did not answer): do_login compares them
 * with those after a login whose failure does not say whether it counted.
 * *ti: the token's answer (zeroed if none), for pin_len_fits. */
static hsm_err pin_tries_left(hsm_ctx *ctx, CK_USER_TYPE who, CK_FLAGS *user_flags, CK_TOKEN_INFO *out)
{
    CK_TOKEN_INFO ti;
    hsm_errsave sv;
    hsm_err err;
    bool so = who == CKU_SO;

    *user_flags = 0;
    memset(&ti, 0, sizeof(ti));
    hsm_err_save(&sv);
    err = P11(ctx, C_GetTokenInfo, hsm_slot_now(ctx), &ti);
    hsm_err_restore(&sv);
    if (err != HSM_OK)
        return HSM_OK; /* C_Login says what is wrong */
    if (out != NULL)
        *out = ti;
    *user_flags = ti.flags & USER_PIN_FLAGS;
    if (ti.flags & (so ? CKF_SO_PIN_LOCKED : CKF_USER_PIN_LOCKED)) {
        if (so)
            hsm_set_detail("the token reports the SO PIN locked (CKF_SO_PIN_LOCKED); not tried");
        else
            hsm_set_detail("the token reports the user PIN locked (CKF_USER_PIN_LOCKED); not tried: "
                           "the security officer must set a new user PIN");
        return HSM_ERR_PIN_LOCKED;
    }
    if (ti.flags & (so ? CKF_SO_PIN_FINAL_TRY : CKF_USER_PIN_FINAL_TRY)) {
        if (so)
            hsm_set_detail("the token allows one more SO PIN try (CKF_SO_PIN_FINAL_TRY); not spent automatically: "
                           "log in once as SO by hand (pkcs11-tool --login --login-type so), which resets the count");
        else
            hsm_set_detail("the token allows one more user PIN try (CKF_USER_PIN_FINAL_TRY); not spent "
                           "automatically: check the PIN source, then log in once by hand (pkcs11-tool --login), "
                           "which resets the count");
        return HSM_ERR_PIN_LOCKED;
    }
    return HSM_OK;
}

hsm_err hsm_pin_tries_left(hsm_ctx *ctx, CK_USER_TYPE who)
{
    CK_FLAGS unused;

    return pin_tries_left(ctx, who, &unused, NULL);
}

/* Whether a PIN of pin_len bytes lies within the lengths the token says
 * its PINs have (ulMinPinLen..ulMaxPinLen): one outside them cannot be
 * right, and some tokens count it as a wrong try all the same
 * (opencryptoki's soft token: a 9-byte PIN to its 4..8 is one of the
 * three tries before the lock, and groupsrv would spend one per change of
 * the PIN file). Outside: false, nothing sent, the detail says which end
 * (never the PIN's length itself) and what looks stray in it. A token
 * that did not answer (ti zeroed) or reports no usable range (a maximum
 * of 0, or below the minimum, or CK_UNAVAILABLE_INFORMATION) is not
 * judged: C_Login says. A PIN pad's login (pin NULL) is not judged. */
static bool pin_len_fits(const CK_TOKEN_INFO *ti, CK_USER_TYPE who, const char *pin, size_t pin_len)
{
    CK_ULONG lo = ti->ulMinPinLen, hi = ti->ulMaxPinLen;
    const char *stray;
    bool short_pin;

    if (pin == NULL || hi == 0 || hi == CK_UNAVAILABLE_INFORMATION || lo == CK_UNAVAILABLE_INFORMATION || lo > hi)
        return true;
    if (pin_len >= lo && pin_len <= hi)
        return true;
    short_pin = pin_len < lo;
    stray = pin_stray(pin, pin_len);
    hsm_set_detail("C_Login: not attempted: the %s PIN is %s than the token's %s (%s %lu, C_GetTokenInfo), so it "
                   "cannot be right, and a token may count it as a wrong try%s%s",
                   who == CKU_SO ? "SO" : "user", short_pin ? "shorter" : "longer",
                   short_pin ? "shortest" : "longest", short_pin ? "ulMinPinLen" : "ulMaxPinLen",
                   (unsigned long)(short_pin ? lo : hi), stray != NULL ? "; the PIN read " : "",
                   stray != NULL ? stray : "");
    return false;
}

/* hsm_login_counted, with the user PIN flags read before the C_Login;
 * *sent: whether C_Login was called (a locked counter or a PIN of a length
 * the token never takes is refused without it). */
static hsm_err login_counted(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_USER_TYPE who, const char *pin, size_t pin_len,
                             CK_FLAGS *user_flags, bool *sent)
{
    CK_TOKEN_INFO ti;
    hsm_err err;

    *sent = false;
    memset(&ti, 0, sizeof(ti));
    /* A context-specific login spends the user PIN's tries. */
    err = pin_tries_left(ctx, who == CKU_SO ? CKU_SO : CKU_USER, user_flags, &ti);
    if (err != HSM_OK)
        return err;
    if (!pin_len_fits(&ti, who, pin, pin_len))
        return HSM_ERR_PIN_INCORRECT;
    *sent = true;
    return P11(ctx, C_Login, s, who, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)pin_len);
}

hsm_err hsm_login_counted(hsm_ctx *ctx, CK_SESSION_HANDLE s, CK_USER_TYPE who, const char *pin, size_t pin_len,
                          bool *sent)
{
    CK_FLAGS unused;
    bool was_sent;

    return login_counted(ctx, s, who, pin, pin_len, &unused, sent != NULL ? sent : &was_sent);
}

/* The user PIN's retry flags the token reports now in *flags (0 if it
 * does not answer); whether it answered. */
static bool user_pin_flags(hsm_ctx *ctx, CK_FLAGS *flags)
{
    CK_TOKEN_INFO ti;
    hsm_errsave sv;
    hsm_err err;

    memset(&ti, 0, sizeof(ti));
    hsm_err_save(&sv);
    err = P11(ctx, C_GetTokenInfo, hsm_slot_now(ctx), &ti);
    hsm_err_restore(&sv);
    *flags = err == HSM_OK ? ti.flags & USER_PIN_FLAGS : 0;
    return err == HSM_OK;
}

static const char *user_pin_flag_name(CK_FLAGS f)
{
    return (f & CKF_USER_PIN_LOCKED)       ? "CKF_USER_PIN_LOCKED"
           : (f & CKF_USER_PIN_FINAL_TRY)  ? "CKF_USER_PIN_FINAL_TRY"
           : (f & CKF_USER_PIN_COUNT_LOW) ? "CKF_USER_PIN_COUNT_LOW"
                                           : "no PIN flag";
}

/* C_Login failed with an answer that does not say whether the token
 * checked the PIN (CKR_GENERAL_ERROR, CKR_DEVICE_ERROR,
 * CKR_FUNCTION_FAILED): some smartcard drivers report a wrong PIN so, and
 * every such try counts towards the card's lock-out (often 3 tries, for
 * good). It is sent again (hsm_open's retries, a recovery) only where that
 * cannot cost a try: a software token (its slot neither CKF_HW_SLOT nor
 * CKF_REMOVABLE_DEVICE; SoftHSM fails so while another process writes its
 * files) whose PIN flags stay clear, or a token that no longer answers at
 * all (a network HSM or p11-kit's RPC that lost its connection: the
 * recovery logs in again once it is back). Else ctx->login_unsure: no
 * C_Login with this PIN again. Returns err, or HSM_ERR_PIN_INCORRECT when
 * the token's PIN flags show that the try was counted. */
static hsm_err login_unsure(hsm_ctx *ctx, CK_FLAGS before, hsm_err err)
{
    CK_RV rv = hsm_last_rv();
    CK_FLAGS after = 0;
    CK_SLOT_INFO si;
    hsm_errsave sv;
    bool hw;

    if (!user_pin_flags(ctx, &after))
        return err;
    memset(&si, 0, sizeof(si));
    hsm_err_save(&sv);
    hw = P11(ctx, C_GetSlotInfo, hsm_slot_now(ctx), &si) != HSM_OK || (si.flags & (CKF_HW_SLOT | CKF_REMOVABLE_DEVICE)) != 0;
    hsm_err_restore(&sv);
    if (after == 0 && !hw)
        return err;
    ctx->login_unsure = true;
    if ((after & ~before) != 0) {
        hsm_set_detail("C_Login: %s, and the token now reports %s: it counted a wrong PIN; not tried again "
                       "(check the PIN source, then log in once by hand: pkcs11-tool --login)",
                       hsm_ckr_name(rv), user_pin_flag_name(after));
        log_warn("token answered the login with %s and now reports %s: the PIN is wrong; it will not be tried again",
                 hsm_ckr_name(rv), user_pin_flag_name(after));
        return HSM_ERR_PIN_INCORRECT;
    }
    /* A restart alone does not send it again (refusal.c records it): say
     * what does, within the detail's 384 bytes. */
    hsm_set_detail("C_Login: %s from a %s: the token may have counted a wrong try, so the PIN is not sent "
                   "again (a card whose driver reports a wrong PIN so would lock); check it by hand "
                   "(pkcs11-tool --login), then correct the PIN source%s%.96s",
                   hsm_ckr_name(rv), after != 0 ? user_pin_flag_name(after) : "hardware slot",
                   ctx->refusal_path != NULL ? ", or if it was right remove " : " and restart",
                   ctx->refusal_path != NULL ? ctx->refusal_path : "");
    log_warn("token login failed with %s; the PIN is not sent again by this process (%s)", hsm_ckr_name(rv),
             after != 0 ? user_pin_flag_name(after) : "hardware slot");
    return err;
}

static bool login_rv_unsure(CK_RV rv)
{
    return rv == CKR_GENERAL_ERROR || rv == CKR_DEVICE_ERROR || rv == CKR_FUNCTION_FAILED;
}

static hsm_err do_login(hsm_ctx *ctx, CK_SESSION_HANDLE s)
{
    CK_FLAGS before = 0;
    hsm_err err = HSM_OK;
    bool sent;

    CK_TOKEN_INFO ti;

    hsm_token_info_copy(ctx, &ti);
    pthread_mutex_lock(&ctx->login_mu);
    if (!ctx->want_login)
        goto out;
    if (!ctx->pinpad && (ctx->pin_rejected || pin_is_rejected(&ti, ctx->pin, ctx->pin_len))) {
        /* Never resend a PIN the token said was wrong: each try counts
         * towards the token's lock-out. */
        ctx->pin_rejected = true;
        hsm_set_detail("C_Login: not attempted, this PIN was rejected before (CKR_PIN_INCORRECT)");
        err = HSM_ERR_PIN_INCORRECT;
        goto out;
    }
    if (!ctx->pinpad && ctx->login_unsure) {
        hsm_set_detail("C_Login: not attempted again: an earlier login failed in a way that may have cost a "
                       "PIN try (see the log); check the PIN and the token, then restart");
        err = HSM_ERR_DEVICE;
        goto out;
    }
    /* A new login (after all sessions were lost) renumbers private objects
     * on some tokens (SoftHSM): cached handles are stale. Bumped before the
     * call too, so that a thread which sees the session logged in already
     * also sees the new generation. */
    bump_key_gen(ctx);
    /* the PIN flags before it: one C_GetTokenInfo, for the check of the
     * tries left and for login_unsure */
    err = login_counted(ctx, s, CKU_USER, ctx->pin, ctx->pin_len, &before, &sent);
    if (!sent)
        goto out; /* not tried: a locked counter, a PIN of a length the token never takes */
    if (err == HSM_OK) {
        bump_key_gen(ctx);
        /* This PIN works: a refusal recorded before is out of date. */
        if (!ctx->pinpad)
            hsm_refusal_clear(ctx->refusal_path, &ti);
        goto out;
    }
    if (hsm_last_rv() == CKR_USER_ALREADY_LOGGED_IN) {
        err = HSM_OK;
        goto out;
    }
    if (hsm_last_rv() == CKR_PIN_EXPIRED) {
        /* A token whose PIN policy ages PINs (many HSMs, cards): the right
         * PIN, so no refusal; what to do is change it. Said here, at the
         * open and at a login again in a running serve (all sessions
         * lost), which else logged the bare code. */
        hsm_set_detail(
            "C_Login: CKR_PIN_EXPIRED: the token wants the user PIN changed before it is used: change "
            "it (pkcs11-tool --login --change-pin) and put the new one in the pin source");
        goto out;
    }
    if (!ctx->pinpad && login_rv_unsure(hsm_last_rv())) {
        CK_RV rv = hsm_last_rv();
        err = login_unsure(ctx, before, err);
        /* Not sent again by this process: nor by the next one (a card
         * that counts the try without saying so would be locked by a
         * service manager's restarts). The PIN stays in memory: a
         * SIGHUP with it unchanged is still refused (login_unsure). */
        if (ctx->login_unsure) {
            hsm_errsave sv;
            hsm_err_save(&sv);
            hsm_refusal_record(ctx->refusal_path, &ti, &ctx->pin_src, ctx->pin, ctx->pin_len, ctx->source_name,
                               hsm_ckr_name(rv));
            hsm_err_restore(&sv);
        }
        goto out;
    }
    if (err == HSM_ERR_PIN_INCORRECT && ctx->pinpad) {
        /* Typed wrong on the pad: the next login asks the pad again. */
        log_warn("token rejected the PIN entered on its PIN pad");
    } else if (err == HSM_ERR_PIN_INCORRECT) {
        /* A token that wants no login may have no PIN at all (an empty
         * one, which a pin source cannot hold): "PIN incorrect" alone
         * sends the operator looking for a PIN that does not exist. */
        /* The token's own answer is named: a stray byte past a card's
         * longest PIN (a space, a byte-order mark) is CKR_PIN_LEN_RANGE. */
        const char *stray = pin_stray(ctx->pin, ctx->pin_len), *rvname = hsm_ckr_name(hsm_last_rv());
        if (!(ti.flags & CKF_LOGIN_REQUIRED))
            hsm_set_detail("C_Login: %s; this token requires no login (CKF_LOGIN_REQUIRED clear) "
                           "and its user PIN is not this one: if it has none (an empty PIN, which no pin source "
                           "holds), set a user PIN on the token and put it in the pin source",
                           rvname);
        else if (stray != NULL)
            hsm_set_detail("C_Login: %s; the PIN read %s: the pin source is sent byte for byte "
                           "(only line ends at its end are dropped)",
                           rvname, stray);
        pin_refused(ctx, &ti);
        log_warn("token rejected the PIN; it will not be tried again");
    }
out:
    pthread_mutex_unlock(&ctx->login_mu);
    return err;
}

/* A fresh session is logged in if any session of the application is; if
 * not (first session, or all sessions were closed), log in now. */
static hsm_err ensure_login(hsm_ctx *ctx, CK_SESSION_HANDLE s, bool force)
{
    CK_SESSION_INFO si;
    hsm_err err;

    if (!ctx->want_login)
        return HSM_OK;
    if (!force) {
        memset(&si, 0, sizeof(si));
        err = P11(ctx, C_GetSessionInfo, s, &si);
        if (err != HSM_OK)
            return err;
        if (si.state == CKS_RW_USER_FUNCTIONS || si.state == CKS_RO_USER_FUNCTIONS)
            return HSM_OK;
    }
    return do_login(ctx, s);
}

/* ---- the session pool --------------------------------------------------- */

static void close_session(hsm_ctx *ctx, CK_SESSION_HANDLE h)
{
    hsm_errsave sv;

    hsm_err_save(&sv);
    (void)P11(ctx, C_CloseSession, h);
    hsm_err_restore(&sv);
}

/* Starts a new session epoch: idle sessions are closed now, borrowed ones
 * when they come back (their epoch is old). Token gone (token_gone): every
 * session and object handle is dead, and the token is looked up again
 * before the next use. A session that died otherwise: its siblings in the
 * pool probably died with it (token reset, failover, logout), and a retry
 * must not pick another dead one, so they go too. */
static void drop_sessions(hsm_ctx *ctx, bool token_gone)
{
    /* The handles are copied out so that they are closed outside pool_mu.
     * No allocation: a failed malloc here used to leave the idle sessions
     * open until C_Finalize. The pool never holds more than
     * max_sessions <= HSM_MAX_SESSIONS (hsm_open checks; 8 KiB of handles
     * on the stack). */
    CK_SESSION_HANDLE dead[HSM_MAX_SESSIONS];
    unsigned n = 0, i;

    pthread_mutex_lock(&ctx->pool_mu);
    if (!ctx->token_lost) {
        ctx->token_lost = token_gone;
        ctx->sess_epoch++;
        for (i = 0; i < ctx->n_idle && n < HSM_MAX_SESSIONS; i++)
            dead[n++] = ctx->idle[i].h;
        ctx->n_open -= ctx->n_idle;
        ctx->n_idle = 0;
        pthread_cond_broadcast(&ctx->pool_cv);
        if (token_gone)
            log_warn("token lost; sessions dropped, will re-find the token on next use");
    }
    pthread_mutex_unlock(&ctx->pool_mu);
    bump_key_gen(ctx);
    for (i = 0; i < n; i++)
        close_session(ctx, dead[i]);
}

static bool token_is_lost(hsm_ctx *ctx)
{
    bool lost;

    pthread_mutex_lock(&ctx->pool_mu);
    lost = ctx->token_lost;
    pthread_mutex_unlock(&ctx->pool_mu);
    return lost;
}

static bool pin_was_rejected(hsm_ctx *ctx)
{
    bool r;

    pthread_mutex_lock(&ctx->login_mu);
    r = ctx->pin_rejected;
    pthread_mutex_unlock(&ctx->login_mu);
    return r;
}

/* C_OpenSession answered CKR_SESSION_COUNT while `ours` sessions of this
 * process are open: a token that does not report its limit (ulMaxSessionCount
 * 0 or unavailable: a network HSM's per-client quota, a card whose other
 * sessions belong to other applications) has told it now. The pool is
 * held to what it has, so that callers wait for a pooled session instead
 * of failing. Called with pool_mu held. True when the pool was lowered
 * (or is at that size already) and waiting helps; false when none of ours
 * is open, so no session will come back. */
static bool learn_session_limit(hsm_ctx *ctx, unsigned ours)
{
    if (ours == 0)
        return false;
    if (ours < ctx->max_sessions) {
        if (ctx->regrown) /* the limit still holds: said when it was learnt */
            log_debug("token still refuses another session; session pool back to %u", ours);
        else
            log_warn("token refused another session (CKR_SESSION_COUNT) though it reports no such limit; session "
                     "pool lowered from %u to %u", ctx->max_sessions, ours);
        ctx->max_sessions = ours;
    }
    ctx->borrows_at_limit = 0;
    return true;
}

/* A session opened: if it was one more than a learnt limit, say so;
 * back at the ceiling, the learnt limit is forgotten. */
static void sessions_regrown(hsm_ctx *ctx)
{
    pthread_mutex_lock(&ctx->pool_mu);
    if (ctx->regrown && ctx->n_open == ctx->max_sessions) {
        log_info("token gave another session; session pool back to %u of %u", ctx->max_sessions,
                 ctx->sessions_ceiling);
        ctx->regrown = ctx->max_sessions < ctx->sessions_ceiling;
    }
    pthread_mutex_unlock(&ctx->pool_mu);
}

/* Borrows between two tries of one more session than a learnt limit. */
#define SESSION_REGROW_BORROWS 256

/* A limit learnt from CKR_SESSION_COUNT may be another application's
 * sessions, closed since: every SESSION_REGROW_BORROWS borrows the pool
 * may open one session more, up to sessions_ceiling. Growing costs
 * nothing until a session is wanted; then one C_OpenSession tells, and a
 * refusal lowers the pool again (learn_session_limit), without failing the
 * borrow. Called with pool_mu held. */
static void regrow_sessions(hsm_ctx *ctx)
{
    if (ctx->max_sessions >= ctx->sessions_ceiling || ++ctx->borrows_at_limit < SESSION_REGROW_BORROWS)
        return;
    ctx->borrows_at_limit = 0;
    ctx->max_sessions++;
    if (!ctx->regrown)
        log_info("session pool may open %u token sessions again (of %u); a limit learnt from CKR_SESSION_COUNT is "
                 "tried again", ctx->max_sessions, ctx->sessions_ceiling);
    ctx->regrown = true;
    pthread_cond_signal(&ctx->pool_cv); /* a waiting borrow may open it */
}

/* Borrows a session for one operation; opens one (up to max_sessions) or
 * waits for one (no_wait: fails with HSM_ERR_SESSION instead). After token
 * loss the token is looked up again first: if it is still absent, fails
 * at once with HSM_ERR_TOKEN_ABSENT. */
static hsm_err borrow(hsm_ctx *ctx, hsm_session *out, bool force_login, bool no_wait)
{
    hsm_err err = HSM_OK;
    bool need_open = false;

    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&ctx->pool_mu);
again:
    if (ctx->token_lost) {
        /* Under pool_mu so that one thread re-finds the token for all. */
        err = find_token(ctx);
        if (err != HSM_OK) {
            pthread_mutex_unlock(&ctx->pool_mu);
            return err == HSM_ERR_TOKEN_ABSENT ? err : HSM_ERR_TOKEN_ABSENT;
        }
        ctx->token_lost = false;
        log_info("token is back slot=%lu", (unsigned long)ctx->slot);
    }
    regrow_sessions(ctx);
    while (ctx->n_idle == 0 && ctx->n_open >= ctx->max_sessions) {
        if (no_wait) {
            pthread_mutex_unlock(&ctx->pool_mu);
            hsm_set_detail("every session the pool may open is in use");
            return HSM_ERR_SESSION;
        }
        pthread_cond_wait(&ctx->pool_cv, &ctx->pool_mu);
    }
    if (ctx->n_idle > 0) {
        *out = ctx->idle[--ctx->n_idle];
    } else {
        ctx->n_open++;
        need_open = true;
        out->epoch = ctx->sess_epoch;
    }
    CK_SLOT_ID slot = ctx->slot;
    /* A write-protected token (a card locked against changes, a read-only
     * HSM partition) opens no read/write session at all
     * (CKR_TOKEN_WRITE_PROTECTED), yet serves: session objects work. */
    CK_FLAGS sflags = CKF_SERIAL_SESSION | (ctx->tinfo.flags & CKF_WRITE_PROTECTED ? 0 : CKF_RW_SESSION);
    pthread_mutex_unlock(&ctx->pool_mu);

    if (need_open) {
        err = P11(ctx, C_OpenSession, slot, sflags, NULL, NULL, &out->h);
        if (err == HSM_OK)
            sessions_regrown(ctx);
        if (err != HSM_OK) {
            bool wait_for_one;

            pthread_mutex_lock(&ctx->pool_mu);
            ctx->n_open--;
            wait_for_one = hsm_last_rv() == CKR_SESSION_COUNT && learn_session_limit(ctx, ctx->n_open);
            pthread_cond_signal(&ctx->pool_cv);
            if (wait_for_one) {
                need_open = false;
                goto again;
            }
            pthread_mutex_unlock(&ctx->pool_mu);
            if (hsm_last_rv() == CKR_SESSION_COUNT)
                hsm_set_detail("C_OpenSession: CKR_SESSION_COUNT: the token has no session free for groupsrv "
                               "(other applications hold them all)");
            return err;
        }
    }
    /* Pooled sessions were logged in when opened; a lost login shows up
     * as CKR_USER_NOT_LOGGED_IN and comes back here with force_login. */
    if (!need_open && !force_login)
        return HSM_OK;
    err = ensure_login(ctx, out->h, force_login);
    if (err != HSM_OK)
        out->broken = err == HSM_ERR_SESSION || err == HSM_ERR_TOKEN_ABSENT;
    return err;
}

static void release(hsm_ctx *ctx, hsm_session *s, hsm_err err)
{
    bool drop;

    pthread_mutex_lock(&ctx->pool_mu);
    /* After a device or unexpected error the session may still hold an
     * unfinished operation (CKR_OPERATION_ACTIVE next time): do not reuse it. */
    drop = s->broken || err == HSM_ERR_SESSION || err == HSM_ERR_TOKEN_ABSENT || err == HSM_ERR_DEVICE ||
           err == HSM_ERR_PKCS11 || s->epoch != ctx->sess_epoch;
    /* Borrowed sessions stay counted in n_open until they come back here,
     * whatever their epoch (drop_sessions uncounts only idle ones). */
    if (!drop)
        ctx->idle[ctx->n_idle++] = *s;
    else
        ctx->n_open--;
    pthread_cond_signal(&ctx->pool_cv);
    pthread_mutex_unlock(&ctx->pool_mu);
    if (drop)
        close_session(ctx, s->h);
}

static _Thread_local bool tls_taint;

void hsm_taint_session(void)
{
    tls_taint = true;
}

static bool stale_handle_rv(CK_RV rv)
{
    /* C_UnwrapKey names a stale group key handle UNWRAPPING_KEY_HANDLE_INVALID. */
    return rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID ||
           rv == CKR_WRAPPING_KEY_HANDLE_INVALID || rv == CKR_UNWRAPPING_KEY_HANDLE_INVALID;
}

/* A session that lost its login (the token or another application logged
 * out, a token-side timeout) does not fail C_FindObjects: private objects
 * are just invisible, and the op says "key not found". Pooled sessions
 * are not re-checked before use, so ask the session when a key seems
 * missing; true also when the question itself fails (keep that answer). */
static bool session_logged_in(hsm_ctx *ctx, CK_SESSION_HANDLE h)
{
    CK_SESSION_INFO si;
    hsm_errsave sv;
    bool in = true;

    hsm_err_save(&sv);
    memset(&si, 0, sizeof(si));
    if (P11(ctx, C_GetSessionInfo, h, &si) == HSM_OK)
        in = si.state == CKS_RW_USER_FUNCTIONS || si.state == CKS_RO_USER_FUNCTIONS;
    hsm_err_restore(&sv);
    return in;
}

/* Milliseconds of CLOCK_MONOTONIC. */
static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Codes after which the module itself may be broken (a network HSM's
 * client lost its server, p11-kit's RPC lost its remote end): the
 * slot-level health check decides. */
static bool module_suspect_rv(CK_RV rv)
{
    return rv == CKR_DEVICE_ERROR || rv == CKR_CRYPTOKI_NOT_INITIALIZED || rv == CKR_GENERAL_ERROR ||
           rv == CKR_FUNCTION_FAILED || rv == CKR_DEVICE_MEMORY;
}

static hsm_err init_module(hsm_ctx *ctx)
{
    CK_C_INITIALIZE_ARGS init;
    hsm_err err;

    if (ctx->modlist != NULL) {
        /* By name: NULL, so that p11-kit hands the module its module
         * file's x-init-reserved (it does so only for NULL arguments). */
        err = P11(ctx, C_Initialize, NULL);
    } else {
        memset(&init, 0, sizeof(init));
        init.flags = CKF_OS_LOCKING_OK;
        init.pReserved = ctx->init_args;
        err = P11(ctx, C_Initialize, &init);
    }
    if (err == HSM_OK) {
        ctx->initialized = true;
    } else if (hsm_last_rv() == CKR_ARGUMENTS_BAD) {
        hsm_set_detail("C_Initialize: CKR_ARGUMENTS_BAD: the module needs initialisation arguments "
                       "(NSS softokn: configdir=...): set [hsm] init_args with the module's path, "
                       "or x-init-reserved in its p11-kit module file");
        err = HSM_ERR_MODULE;
    } else if (hsm_last_rv() == CKR_TOKEN_WRITE_PROTECTED) {
        /* Not a token that "can only serve" (the generic hint): the
         * module opened nothing, so nothing is served. NSS softokn says
         * this when its database files are not writable by this user. */
        hsm_set_detail("C_Initialize: CKR_TOKEN_WRITE_PROTECTED: the module cannot open its token store for "
                       "writing (NSS softokn: its database files are not writable by this user: give them to "
                       "the user groupsrv runs as, or add flags=readOnly to the init arguments to serve only, "
                       "with no key made or deleted)");
        err = HSM_ERR_MODULE;
    } else if (hsm_last_rv() == CKR_FUNCTION_FAILED || hsm_last_rv() == CKR_GENERAL_ERROR ||
               hsm_last_rv() == CKR_DEVICE_ERROR) {
        /* No token was asked anything yet: the module itself could not
         * start, most often because a service beside it is down; SoftHSM,
         * which needs none, says CKR_GENERAL_ERROR when it cannot read
         * its configuration or open its token directory (the service
         * user without SOFTHSM2_CONF, or without access to the store),
         * and logs which only to syslog. */
        char rv[64], *file = p11_kit_module_get_filename(ctx->fl), real[PATH_MAX], stem[64], shown[160];
        const char *conf = getenv("SOFTHSM2_CONF");
        util_strlcpy(rv, hsm_rv_name(hsm_last_rv()), sizeof(rv));
        module_stem(file != NULL && realpath(file, real) != NULL ? real : file != NULL ? file : "", stem,
                    sizeof(stem));
        if (strcmp(stem, "softhsm2") == 0)
            hsm_set_detail("C_Initialize: %s: SoftHSM could not read its configuration or open its token "
                           "directory: SOFTHSM2_CONF (%s) must name a softhsm2.conf this user can read, whose "
                           "directories.tokendir this user can read and write (SoftHSM logs which to syslog)",
                           rv, conf != NULL ? util_uri_escape_loose(conf, shown, sizeof(shown))
                                            : "not set: /etc/softhsm/softhsm2.conf");
        else
            hsm_set_detail("C_Initialize: %s: the module could not start; a service it needs may be down "
                           "(opencryptoki: its slot daemon pkcsslotd; a network HSM: its client service or "
                           "connection): start it and try again",
                           rv);
        free(file);
    }
    return err;
}

/* Finalizes and initialises the module again, under life_mu for writing
 * (no operation holds a session meanwhile). Sessions and object handles of
 * the old instance are forgotten, not closed: C_Finalize ended them, and
 * their numbers may be reused by the new instance. */
static hsm_err reinit_locked(hsm_ctx *ctx)
{
    hsm_errsave sv;
    hsm_err err;
    bool was_lost;

    ctx->last_init_ms = now_ms();
    pthread_mutex_lock(&ctx->pool_mu);
    ctx->n_open -= ctx->n_idle;
    ctx->n_idle = 0;
    ctx->sess_epoch++;
    pthread_cond_broadcast(&ctx->pool_cv);
    pthread_mutex_unlock(&ctx->pool_mu);
    bump_key_gen(ctx);
    if (ctx->initialized) {
        hsm_err_save(&sv);
        (void)P11(ctx, C_Finalize, NULL);
        hsm_err_restore(&sv);
        ctx->initialized = false;
    }
    err = init_module(ctx);
    if (err != HSM_OK) {
        char prev[192];
        util_strlcpy(prev, hsm_last_error_detail(), sizeof(prev));
        hsm_set_detail("module down, re-initialising it failed (%s); retrying", prev);
        ctx->module_down = true;
        return HSM_ERR_DEVICE;
    }
    ctx->module_down = false;
    ctx->life_gen++;
    pthread_mutex_lock(&ctx->pool_mu);
    was_lost = ctx->token_lost;
    err = find_token(ctx);
    /* Not there (yet): the usual lost-token path looks again on use. */
    ctx->token_lost = err != HSM_OK;
    pthread_mutex_unlock(&ctx->pool_mu);
    if (err == HSM_OK && was_lost)
        log_info("token is back (module re-initialised) slot=%lu", (unsigned long)ctx->slot);
    else if (!was_lost)
        log_warn("PKCS#11 module re-initialised generation=%u token=\"%s\"", ctx->life_gen,
                 err == HSM_OK ? "found" : "not present yet");
    return HSM_OK;
}

/* Health check: a slot-level call, no session needed. A transient device
 * error of one operation leaves it answering; a module that lost its
 * connection fails it too. Returns that call's CK_RV. */
static CK_RV module_health(hsm_ctx *ctx)
{
    CK_TOKEN_INFO ti;
    hsm_errsave sv;
    CK_RV rv;

    hsm_err_save(&sv);
    memset(&ti, 0, sizeof(ti));
    (void)P11(ctx, C_GetTokenInfo, ctx->slot, &ti);
    rv = hsm_last_rv();
    hsm_err_restore(&sv);
    return rv;
}

hsm_err hsm_module_recover(hsm_ctx *ctx, unsigned seen_gen, bool *reinitialised)
{
    hsm_err err = HSM_OK;
    CK_RV rv = CKR_OK;

    *reinitialised = false;
    /* The check under the read lock, so that other operations go on. */
    pthread_rwlock_rdlock(&ctx->life_mu);
    if (ctx->life_gen == seen_gen && !ctx->module_down && ctx->initialized)
        rv = module_health(ctx);
    bool healthy = ctx->life_gen != seen_gen || (!ctx->module_down && !module_suspect_rv(rv));
    pthread_rwlock_unlock(&ctx->life_mu);
    if (healthy)
        return HSM_OK;

    pthread_rwlock_wrlock(&ctx->life_mu);
    if (ctx->life_gen != seen_gen && !ctx->module_down)
        goto out; /* another thread re-initialised it meanwhile */
    if (ctx->module_down && now_ms() - ctx->last_init_ms < HSM_REINIT_INTERVAL_MS) {
        hsm_set_detail("module down; the last attempt to initialise it failed moments ago");
        err = HSM_ERR_DEVICE;
        goto out;
    }
    if (!ctx->module_down)
        log_warn("PKCS#11 module broken (C_GetTokenInfo: %s); finalizing and initialising it again",
                 hsm_ckr_name(rv));
    err = reinit_locked(ctx);
    *reinitialised = err == HSM_OK;
out:
    pthread_rwlock_unlock(&ctx->life_mu);
    return err;
}

hsm_err hsm_module_reinit(hsm_ctx *ctx)
{
    hsm_err err;

    if (ctx == NULL)
        return HSM_ERR_ARGS;
    pthread_rwlock_wrlock(&ctx->life_mu);
    log_warn("token objects missing; finalizing and initialising the module again");
    err = reinit_locked(ctx);
    pthread_rwlock_unlock(&ctx->life_mu);
    return err;
}

/* A token that stays away may sit behind a client library that connects
 * only in C_Initialize (p11-kit's RPC client, network HSMs): it lists no
 * slot until initialised again, however long its server has been back.
 * So while the token is missing the module is re-initialised now and
 * then. True when the token is there (again). */
static bool reinit_for_lost_token(hsm_ctx *ctx)
{
    bool found;

    pthread_rwlock_wrlock(&ctx->life_mu);
    if (ctx->token_lost && now_ms() - ctx->last_init_ms >= HSM_REFIND_REINIT_MS)
        (void)reinit_locked(ctx);
    pthread_mutex_lock(&ctx->pool_mu);
    found = !ctx->token_lost && !ctx->module_down;
    pthread_mutex_unlock(&ctx->pool_mu);
    pthread_rwlock_unlock(&ctx->life_mu);
    return found;
}

/* hsm_run and hsm_run_once. */
static hsm_err run(hsm_ctx *ctx, hsm_op_fn op, void *arg, bool once)
{
    hsm_session s;
    hsm_err err = HSM_ERR_ARGS;
    bool force_login = false, stale_retry = false, reinit_retry = false;
    int attempt, max_attempts = once ? 1 : 2;

    if (ctx == NULL || op == NULL)
        return HSM_ERR_ARGS;
    hsm_clear_detail();
    /* One retry after a recovery; one more if only an object handle went
     * stale (re-finding is cheap, and a concurrent re-login can make the
     * handle found by the first retry stale again), and one more after the
     * module was re-initialised. */
    for (attempt = 0; attempt < max_attempts; attempt++) {
        bool from_borrow, again = false;
        unsigned gen;
        CK_RV rv;

        pthread_rwlock_rdlock(&ctx->life_mu);
        gen = ctx->life_gen;
        if (ctx->module_down) {
            pthread_rwlock_unlock(&ctx->life_mu);
            err = hsm_module_recover(ctx, gen, &again);
            if (err != HSM_OK)
                return err;
            pthread_rwlock_rdlock(&ctx->life_mu);
            gen = ctx->life_gen;
        }
        err = borrow(ctx, &s, force_login, false);
        from_borrow = err != HSM_OK;
        if (!from_borrow) {
            tls_taint = false;
            err = op(ctx, s.h, arg);
            if (tls_taint)
                s.broken = true;
            tls_taint = false;
            if (err == HSM_ERR_KEY_NOT_FOUND && ctx->want_login && !stale_handle_rv(hsm_last_rv()) &&
                !session_logged_in(ctx, s.h)) {
                hsm_set_detail("key lookup on a session that lost its login (private keys are invisible)");
                err = HSM_ERR_NOT_LOGGED_IN;
            }
        }
        rv = hsm_last_rv();
        if (!from_borrow || s.h != 0)
            release(ctx, &s, err);
        pthread_rwlock_unlock(&ctx->life_mu);
        if (err == HSM_OK)
            break;
        if (module_suspect_rv(rv) && (err == HSM_ERR_DEVICE || err == HSM_ERR_MODULE)) {
            hsm_errsave sv;
            bool reinit = false;
            hsm_err_save(&sv);
            hsm_err rerr = hsm_module_recover(ctx, gen, &reinit);
            if (rerr != HSM_OK)
                return rerr;
            hsm_err_restore(&sv);
            /* A transient device error fails only this call; a broken
             * module, now working again, gets the call once more. */
            if (!reinit && rv != CKR_CRYPTOKI_NOT_INITIALIZED)
                return err;
            if (once || reinit_retry)
                return err;
            reinit_retry = true;
            max_attempts++;
            continue;
        }
        if (err == HSM_ERR_KEY_NOT_FOUND && stale_handle_rv(rv) && !stale_retry && !once) {
            stale_retry = true;
            max_attempts++;
        }
        if (attempt + 1 >= max_attempts)
            break;
        switch (err) {
        case HSM_ERR_TOKEN_ABSENT:
            /* Re-finding already failed: answer quickly, no waiting
             * (unless a fresh initialisation of the module finds it). */
            if (from_borrow && token_is_lost(ctx)) {
                if (once || reinit_retry || !reinit_for_lost_token(ctx))
                    return err;
                /* Found by the fresh initialisation, with a new pool. */
                reinit_retry = true;
                max_attempts++;
                break;
            }
            drop_sessions(ctx, true);
            break;
        case HSM_ERR_PKCS11:
            /* A session left busy by an earlier failure: it was dropped. */
            if (rv != CKR_OPERATION_ACTIVE)
                return err;
            /* fall through */
        case HSM_ERR_SESSION:
            log_info("session lost, retrying with a new one detail=\"%s\"", log_qs(hsm_last_error_detail()));
            drop_sessions(ctx, false);
            break;
        case HSM_ERR_NOT_LOGGED_IN:
            if (!ctx->want_login)
                return err;
            if (pin_was_rejected(ctx)) {
                hsm_set_detail("C_Login: not attempted, this PIN was rejected before (CKR_PIN_INCORRECT)");
                return HSM_ERR_PIN_INCORRECT;
            }
            log_info("login lost, logging in again");
            force_login = true;
            break;
        case HSM_ERR_KEY_NOT_FOUND:
            if (!stale_handle_rv(rv))
                return err;
            bump_key_gen(ctx);
            break;
        default:
            return err;
        }
    }
    return err;
}

hsm_err hsm_run(hsm_ctx *ctx, hsm_op_fn op, void *arg)
{
    return run(ctx, op, arg, false);
}

hsm_err hsm_run_once(hsm_ctx *ctx, hsm_op_fn op, void *arg)
{
    return run(ctx, op, arg, true);
}

hsm_err hsm_reload_pin(hsm_ctx *ctx, const char *pin_source)
{
    hsm_err err = HSM_ERR_ARGS;
    char *pin = NULL;
    size_t pin_len = 0;
    CK_TOKEN_INFO ti;
    int rc;

    if (ctx == NULL || pin_source == NULL || !ctx->want_login)
        return HSM_ERR_ARGS;
    if (strncmp(pin_source, "env:", 4) == 0 || ctx->pinpad)
        return HSM_OK;
    hsm_pin_src src;
    hsm_refusal_src_stat(pin_source, &src);
    errno = 0;
    if ((rc = util_read_pin_source(pin_source, &pin, &pin_len)) != UTIL_OK) {
        hsm_set_detail("pin source %.200s: %s", pin_source, util_pin_source_why(rc, errno));
        return HSM_ERR_PIN_SOURCE;
    }
    hsm_token_info_copy(ctx, &ti);
    pthread_mutex_lock(&ctx->login_mu);
    if (pin_is_rejected(&ti, pin, pin_len)) {
        hsm_set_detail("C_Login: not attempted, the PIN in the pin source was rejected before (CKR_PIN_INCORRECT)");
        err = HSM_ERR_PIN_INCORRECT;
    } else if (refused_before(ctx, &ti, &src, pin, pin_len)) {
        err = HSM_ERR_PIN_INCORRECT; /* by an earlier process */
    } else {
        /* Swapped under login_mu, which every login holds while it reads
         * ctx->pin. */
        util_secret_free(ctx->pin, ctx->pin_len + 1);
        ctx->pin = pin;
        ctx->pin_len = pin_len;
        ctx->pin_src = src;
        pin = NULL;
        ctx->pin_rejected = false;
        ctx->login_unsure = false;
        err = HSM_OK;
    }
    pthread_mutex_unlock(&ctx->login_mu);
    if (pin != NULL)
        util_secret_free(pin, pin_len + 1);
    return err;
}

/* ---- per-operation login (CKA_ALWAYS_AUTHENTICATE) --------------------- */

hsm_err hsm_context_login(hsm_ctx *ctx, CK_SESSION_HANDLE s, const hsm_key *key)
{
    CK_FLAGS unused;
    hsm_err err;
    bool sent;

    if (key == NULL || !key->always_auth)
        return HSM_OK;
    pthread_mutex_lock(&ctx->login_mu);
    if (!ctx->want_login || ctx->pin_rejected) {
        pthread_mutex_unlock(&ctx->login_mu);
        hsm_set_detail("key %.60s needs a login per use (CKA_ALWAYS_AUTHENTICATE) and no usable PIN is set",
                       key->label);
        return HSM_ERR_NOT_LOGGED_IN;
    }
    /* The PIN again, for this one operation (the card checks it). */
    err = login_counted(ctx, s, CKU_CONTEXT_SPECIFIC, ctx->pin, ctx->pin_len, &unused, &sent);
    if (err == HSM_ERR_PIN_INCORRECT && sent && !ctx->pinpad) {
        pin_refused(ctx, &ctx->tinfo);
        log_warn("token rejected the PIN at a context-specific login; it will not be tried again");
    }
    pthread_mutex_unlock(&ctx->login_mu);
    if (err != HSM_OK) {
        char prev[192];
        util_strlcpy(prev, hsm_last_error_detail(), sizeof(prev));
        hsm_set_detail("context-specific login for key %.60s (CKA_ALWAYS_AUTHENTICATE): %s", key->label, prev);
        /* The operation started by Init is left pending: do not reuse the session. */
        hsm_taint_session();
    }
    return err;
}

/* ---- open / close --------------------------------------------------------- */

static hsm_err load_module(hsm_ctx *ctx, const char *module)
{
    if (strchr(module, '/') != NULL) {
        /* Managed (flags 0): p11-kit gives us our own instance of the module,
         * so two contexts in one process do not finalize each other. */
        ctx->fl = p11_kit_module_load(module, 0);
        if (ctx->fl == NULL) {
            hsm_set_detail("p11_kit_module_load: %s", p11_kit_message() ? p11_kit_message() : "failed");
            return HSM_ERR_MODULE;
        }
        return HSM_OK;
    }
    ctx->modlist = p11_kit_modules_load(NULL, 0);
    if (ctx->modlist == NULL) {
        hsm_set_detail("p11_kit_modules_load: %s", p11_kit_message() ? p11_kit_message() : "failed");
        return HSM_ERR_MODULE;
    }
    ctx->fl = p11_kit_module_for_name(ctx->modlist, module);
    if (ctx->fl == NULL) {
        hsm_set_detail("no p11-kit module named %.64s is configured (or enabled for this program)", module);
        return HSM_ERR_MODULE;
    }
    return HSM_OK;
}

/* The stem RFC 7512 gives a module's name (module-name=softhsm2 for
 * libsofthsm2.so): the base name without "lib" and from ".so" on. The
 * URI's name is reduced the same way, so libsofthsm2, libsofthsm2.so
 * and softhsm2.so name it too, as consumers that look the name up
 * (go-pkcs11uri, which ocicrypt and skopeo use) find them. */
static void module_stem(const char *file, char *out, size_t cap)
{
    const char *base = strrchr(file, '/') != NULL ? strrchr(file, '/') + 1 : file;
    char *so;
    size_t n = 0;

    if (strncasecmp(base, "lib", 3) == 0 && base[3] != '\0')
        base += 3;
    /* In lower case: a name is compared without regard to case. One
     * too long to hold is no name (empty), never a cut one that could
     * equal another's. */
    for (; base[n] != '\0' && n + 1 < cap; n++)
        out[n] = (char)tolower((unsigned char)base[n]);
    out[base[n] == '\0' ? n : 0] = '\0';
    if ((so = strstr(out, ".so")) != NULL && (so[3] == '\0' || so[3] == '.'))
        *so = '\0';
}

/* Whether a module-name names the module in file: the same stem, in
 * any case (go-pkcs11uri looks names up without regard to case; no two
 * modules' names differ by case alone). */
static bool module_name_is(const char *name, const char *file)
{
    char a[256], b[256];

    module_stem(name, a, sizeof(a));
    module_stem(file, b, sizeof(b));
    return a[0] != '\0' && strcmp(a, b) == 0;
}

static bool same_file(const char *a, const char *b)
{
    struct stat sa, sb;

    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* Whether path names the file the module was loaded from (file, real
 * its target): the same inode, so a symbolic link
 * (/usr/lib/softhsm/libsofthsm2.so) names its target; a directory that
 * holds it under either name (RFC 7512: module-path may be the
 * directory the module is in), e.g. /usr/lib/softhsm for the link
 * there, .../pkcs11 for opensc-pkcs11.so's link; or, without a '/', its
 * file name (a p11-kit module file's "module: opensc-pkcs11.so",
 * relative to p11-kit's directory). */
static bool module_path_is(const char *path, const char *file, const char *real)
{
    const char *names[2] = {file, real};
    struct stat sp;
    char in[PATH_MAX];

    for (size_t i = 0; i < 2 && strchr(path, '/') == NULL; i++)
        if (names[i] != NULL && strcmp(path, strrchr(names[i], '/') != NULL ? strrchr(names[i], '/') + 1
                                                                             : names[i]) == 0)
            return true;
    if (strchr(path, '/') == NULL || stat(path, &sp) != 0)
        return false;
    if (!S_ISDIR(sp.st_mode))
        return same_file(path, file);
    for (size_t i = 0; i < 2; i++) {
        const char *base;
        int n;
        if (names[i] == NULL)
            continue;
        base = strrchr(names[i], '/') != NULL ? strrchr(names[i], '/') + 1 : names[i];
        n = snprintf(in, sizeof(in), "%s/%s", path, base);
        if (n > 0 && (size_t)n < sizeof(in) && same_file(in, file))
            return true;
    }
    return false;
}

/* Whether a module-name names the module (file, real its target, reg
 * its p11-kit name): the stem of either file, or the p11-kit name; a
 * "name" with a '/' is a path and must be the file itself. */
static bool module_named(const char *name, const char *file, const char *real, const char *reg)
{
    if (strchr(name, '/') != NULL)
        return same_file(name, file);
    return module_name_is(name, file) || (real != NULL && module_name_is(name, real)) ||
           (reg != NULL && strcasecmp(name, reg) == 0);
}

/* Whether p11-kit's module config of m lets p11-kit-proxy.so load it
 * (enable-in, disable-in: lists of program names). */
static bool proxy_loads(CK_FUNCTION_LIST *m)
{
    char *en = p11_kit_config_option(m, "enable-in"), *dis = p11_kit_config_option(m, "disable-in");
    const char *list = en != NULL ? en : dis;
    bool listed = false;

    for (const char *p = list; p != NULL && *p != '\0' && !listed;) {
        size_t n;
        p += strspn(p, ", \t");
        n = strcspn(p, ", \t");
        listed = n == strlen("p11-kit-proxy") && strncmp(p, "p11-kit-proxy", n) == 0;
        p += n;
    }
    free(en);
    free(dis);
    return list == NULL || (en != NULL) == listed;
}

/* Whether p11-kit-proxy.so, which loads every module p11-kit has
 * configured, reaches the loaded one (file): a URI written for the
 * proxy (tools that default to it) names the same token. */
static bool module_in_proxy(hsm_ctx *ctx, const char *file)
{
    CK_FUNCTION_LIST **mods = ctx->modlist, **own = NULL;
    bool in = false;
    int known = atomic_load(&ctx->proxy_reach);

    if (known != 0)
        return known == 1;
    if (mods == NULL && (mods = own = p11_kit_modules_load(NULL, 0)) == NULL)
        return false;
    for (size_t i = 0; mods[i] != NULL && !in; i++) {
        char *f = p11_kit_module_get_filename(mods[i]);
        in = f != NULL && same_file(f, file) && proxy_loads(mods[i]);
        free(f);
    }
    if (own != NULL)
        p11_kit_modules_release(own);
    atomic_store(&ctx->proxy_reach, in ? 1 : 2);
    return in;
}

static bool names_proxy(const char *v)
{
    char stem[64];

    module_stem(v, stem, sizeof(stem));
    return strcmp(stem, "p11-kit-proxy") == 0;
}

hsm_err hsm_uri_module_check(hsm_ctx *ctx, P11KitUri *u, const char *what)
{
    const char *path = p11_kit_uri_get_module_path(u), *name = p11_kit_uri_get_module_name(u);
    char *file = NULL, *reg = NULL, real[PATH_MAX], stem[256], shown[160];
    const char *rp;
    hsm_err err = HSM_OK;

    /* An empty value names no module (RFC 7512 allows it). */
    if (path != NULL && path[0] == '\0')
        path = NULL;
    if (name != NULL && name[0] == '\0')
        name = NULL;
    if (path == NULL && name == NULL)
        return HSM_OK;
    if (ctx->fl == NULL || (file = p11_kit_module_get_filename(ctx->fl)) == NULL) {
        hsm_set_detail("%s's module-path/module-name cannot be compared with the loaded module", what);
        err = HSM_ERR_URI;
        goto out;
    }
    reg = p11_kit_module_get_name(ctx->fl);
    rp = realpath(file, real);
    module_stem(rp != NULL ? rp : file, stem, sizeof(stem));
    /* p11-kit-client.so forwards the module of a p11-kit server (on
     * another host, or behind a socket): a URI written for that token
     * names the server's module, which cannot be seen from here. */
    if (strcmp(stem, "p11-kit-client") == 0) {
        log_debug("URI module-path/module-name not compared: p11-kit-client.so forwards a module not seen here");
        goto out;
    }
    /* p11-kit-proxy.so reaches every module p11-kit configures: a URI
     * naming it names the loaded module's token when the proxy loads
     * that module too. */
    if (((path != NULL && names_proxy(path)) || (name != NULL && names_proxy(name))) &&
        !module_in_proxy(ctx, file)) {
        hsm_set_detail("%s's %s=%s names p11-kit-proxy.so, which does not reach the configured module (%.200s: "
                       "not configured in p11-kit, or disabled in the proxy): drop it from the URI, or configure "
                       "the module in p11-kit",
                       what, path != NULL && names_proxy(path) ? "module-path" : "module-name",
                       util_uri_escape_loose(path != NULL && names_proxy(path) ? path : name, shown, sizeof(shown)),
                       file);
        err = HSM_ERR_URI;
        goto out;
    }
    if (path != NULL && names_proxy(path))
        path = NULL;
    if (name != NULL && names_proxy(name))
        name = NULL;
    if (path != NULL && !module_path_is(path, file, rp)) {
        struct stat st;
        hsm_set_detail("%s's module-path=%s names another module than the one loaded (%.200s, the configured "
                       "module): drop module-path from the URI, or configure that module%s",
                       what, util_uri_escape_loose(path, shown, sizeof(shown)), file,
                       strchr(path, '/') != NULL && stat(path, &st) != 0
                           ? " (no such file; a space in the path is written %20)"
                           : "");
        hsm_detail_uri_elsewhere();
        err = HSM_ERR_URI;
    } else if (name != NULL && !module_named(name, file, rp, reg)) {
        hsm_set_detail("%s's module-name=%s names another module than the one loaded (%.200s, named %s%s, the "
                       "configured module): drop module-name from the URI, or configure that module",
                       what, util_uri_escape_loose(name, shown, sizeof(shown)), file, reg != NULL ? reg : stem,
                       reg != NULL ? " in p11-kit" : "");
        hsm_detail_uri_elsewhere();
        err = HSM_ERR_URI;
    }
out:
    free(file);
    free(reg);
    return err;
}

/* The path attributes of PKCS#11 URI uri that name no token, by name
 * ("slot-id, object"), for a message; cut to fit. */
static const char *not_token_attrs(const char *uri, char *out, size_t cap)
{
    static const char *const ok[] = {"token", "manufacturer", "model", "serial"};
    const char *p = uri + strlen("pkcs11:"), *end = p + strcspn(p, "?");
    size_t o = 0;

    out[0] = '\0';
    while (p < end) {
        size_t len = strcspn(p, ";?"), nlen = strcspn(p, "=;?");
        bool known = false;

        if (nlen > len)
            nlen = len;
        for (size_t i = 0; i < GS_ARRAY_LEN(ok); i++)
            known = known || (strlen(ok[i]) == nlen && strncmp(p, ok[i], nlen) == 0);
        if (!known && nlen > 0 && o + nlen + 3 < cap) {
            o += (size_t)snprintf(out + o, cap - o, "%s%.*s", o > 0 ? ", " : "", (int)nlen, p);
        }
        p += len;
        if (p < end)
            p++;
    }
    return out[0] != '\0' ? out : "?";
}

hsm_err hsm_token_uri_check(const char *uri)
{
    P11KitUri *u = NULL;
    hsm_err err = HSM_ERR_URI;
    int rc;

    hsm_clear_detail();
    if (uri == NULL || (u = p11_kit_uri_new()) == NULL)
        return uri == NULL ? HSM_ERR_ARGS : HSM_ERR_NOMEM;
    rc = p11_kit_uri_parse(uri, P11_KIT_URI_FOR_TOKEN, u);
    if (rc != P11_KIT_URI_OK) {
        hsm_set_detail("%s", p11_kit_uri_message(rc));
    } else if (p11_kit_uri_get_pin_value(u) != NULL || util_uri_has_pin_value(uri) ||
               p11_kit_uri_get_pin_source(u) != NULL) {
        /* Before anything that shows the URI: it would show the PIN. A
         * pin-value after a mistyped separator ("token=x:pin-value=1",
         * which p11-kit reads as the label) too, as for --use-key: every
         * error opening the token, and check, show the URI. */
        bool value = p11_kit_uri_get_pin_value(u) != NULL || util_uri_has_pin_value(uri);
        hsm_set_detail("it carries a PIN (%s): the PIN comes from [hsm] pin_source only",
                       value ? "pin-value" : "pin-source");
    } else if (util_uri_needs_escape(uri, 0)) {
        char enc[512];
        hsm_set_detail("it has a space or control byte, which a PKCS#11 URI must percent-encode (p11-kit would "
                       "drop it and look for another token): %s",
                       util_uri_escape_loose(uri, enc, sizeof(enc)));
    } else if (p11_kit_uri_any_unrecognized(u)) {
        char names[160];
        hsm_set_detail(
            "it has attributes that do not name a token: %s (only token, manufacturer, model, serial; "
            "an object's or a slot's match no token, and a slot's id can change: `pkcs11-tool -L` "
            "lists each token's label and serial)",
            not_token_attrs(uri, names, sizeof(names)));
    } else
        err = HSM_OK;
    p11_kit_uri_free(u);
    return err;
}

#define OPEN_TRIES 4
#define OPEN_PAUSE_MS 300

/* hsm_open's token steps on an initialised module: find the token, refuse
 * a PIN pad the token lacks and a PIN rejected before, log in (the session
 * stays pooled: the login lives as long as any session of ours is open). */
static hsm_err open_token(hsm_ctx *ctx, hsm_session *s)
{
    hsm_err err = find_token(ctx);

    if (err != HSM_OK)
        return err;
    if (ctx->pinpad && !(ctx->tinfo.flags & CKF_PROTECTED_AUTHENTICATION_PATH)) {
        hsm_set_detail("pin source pinpad: this token has no PIN pad (no CKF_PROTECTED_AUTHENTICATION_PATH); "
                       "give the PIN in a file or env:NAME");
        return HSM_ERR_PIN_SOURCE;
    }
    /* A PIN this process already saw rejected by this token is refused
     * up front, even if the token happens to be logged in already. */
    if (ctx->want_login && !ctx->pinpad && pin_is_rejected(&ctx->tinfo, ctx->pin, ctx->pin_len)) {
        hsm_set_detail("C_Login: not attempted, this PIN was rejected before (CKR_PIN_INCORRECT)");
        return HSM_ERR_PIN_INCORRECT;
    }
    /* And one an earlier process saw rejected (refusal.c). */
    if (ctx->want_login && refused_before(ctx, &ctx->tinfo, &ctx->pin_src, ctx->pin, ctx->pin_len)) {
        ctx->pin_rejected = true;
        OPENSSL_cleanse(ctx->pin, ctx->pin_len);
        return HSM_ERR_PIN_INCORRECT;
    }
    err = borrow(ctx, s, false, false);
    if (err != HSM_OK) {
        if (s->h != 0)
            release(ctx, s, HSM_ERR_SESSION);
        return err;
    }
    release(ctx, s, HSM_OK);
    return HSM_OK;
}

hsm_err hsm_open(const hsm_config *cfg, hsm_ctx **out)
{
    hsm_ctx *ctx = NULL;
    hsm_err err;
    hsm_session s;
    int rc;

    if (out != NULL)
        *out = NULL;
    hsm_clear_detail();
    if (cfg == NULL || out == NULL || cfg->module == NULL || *cfg->module == '\0')
        return HSM_ERR_ARGS;
    if ((ctx = calloc(1, sizeof(*ctx))) == NULL)
        return HSM_ERR_NOMEM;
    pthread_mutex_init(&ctx->pool_mu, NULL);
    pthread_cond_init(&ctx->pool_cv, NULL);
    pthread_mutex_init(&ctx->login_mu, NULL);
    pthread_mutex_init(&ctx->key_mu, NULL);
    pthread_mutex_init(&ctx->caps_mu, NULL);
    pthread_rwlock_init(&ctx->life_mu, NULL);
    ctx->key_gen = 1;
    ctx->max_sessions = cfg->max_sessions == 0 ? HSM_DEFAULT_SESSIONS : cfg->max_sessions;
    ctx->sessions_ceiling = ctx->max_sessions;
    if (ctx->max_sessions > HSM_MAX_SESSIONS) {
        err = HSM_ERR_ARGS;
        goto out;
    }
    if ((ctx->idle = calloc(ctx->max_sessions, sizeof(*ctx->idle))) == NULL) {
        err = HSM_ERR_NOMEM;
        goto out;
    }
    if (cfg->init_args != NULL) {
        if (strchr(cfg->module, '/') == NULL) {
            hsm_set_detail("init arguments apply to a module given by path; a p11-kit module by name "
                           "takes them from x-init-reserved in its module file");
            err = HSM_ERR_ARGS;
            goto out;
        }
        if (strlen(cfg->init_args) > 1024 || (ctx->init_args = strdup(cfg->init_args)) == NULL) {
            err = strlen(cfg->init_args) > 1024 ? HSM_ERR_ARGS : HSM_ERR_NOMEM;
            goto out;
        }
    }

    if ((ctx->token_uri = p11_kit_uri_new()) == NULL) {
        err = HSM_ERR_NOMEM;
        goto out;
    }
    rc = p11_kit_uri_parse(cfg->token_uri != NULL ? cfg->token_uri : "pkcs11:", P11_KIT_URI_FOR_TOKEN,
                           ctx->token_uri);
    if (rc != P11_KIT_URI_OK) {
        hsm_set_detail("token URI: %s", p11_kit_uri_message(rc));
        err = HSM_ERR_URI;
        goto out;
    }

    /* The PIN first: a bad pin-source should fail before the token is touched. */
    if (cfg->pin_source != NULL && strcmp(cfg->pin_source, HSM_PIN_SOURCE_PINPAD) == 0) {
        ctx->pinpad = true;
        ctx->want_login = true;
    } else if (cfg->pin_source != NULL) {
        if ((ctx->source_name = strdup(cfg->pin_source)) == NULL ||
            (cfg->refusal_path != NULL && (ctx->refusal_path = strdup(cfg->refusal_path)) == NULL)) {
            err = HSM_ERR_NOMEM;
            goto out;
        }
        /* The file's identity before it is read: one replaced meanwhile
         * is then taken as changed (tried), never the reverse. */
        hsm_refusal_src_stat(cfg->pin_source, &ctx->pin_src);
        errno = 0;
        rc = util_read_pin_source(cfg->pin_source, &ctx->pin, &ctx->pin_len);
        if (rc != UTIL_OK) {
            /* Which source: a path or a variable's name, never the PIN.
             * A value that is neither may be the PIN itself, written where
             * its source belongs: it is not shown. */
            const char *src = cfg->pin_source, *why = util_pin_source_why(rc, errno);
            if (hsm_pin_source_named(src))
                hsm_set_detail("pin source %.200s: %s", src, why);
            else
                hsm_set_detail("pin source (not shown: neither a path with a '/' nor env:NAME nor file:PATH): %s",
                               why);
            err = HSM_ERR_PIN_SOURCE;
            goto out;
        }
        util_forget_env_source(cfg->pin_source);
        ctx->want_login = true;
    }

    if ((err = load_module(ctx, cfg->module)) != HSM_OK)
        goto out;
    if ((err = hsm_uri_module_check(ctx, ctx->token_uri, "the token URI")) != HSM_OK)
        goto out;
    /* SoftHSM reads its token's files at C_Initialize and C_Login without a
     * consistent view of them: a process that starts while another writes
     * the token (a key generation of a `group create` beside it) may find
     * no token, or fail C_Login with CKR_GENERAL_ERROR (4 of 24 commands
     * started two at a time) or CKR_USER_PIN_NOT_INITIALIZED (the user
     * PIN not yet in the file it read: seen beside two `group create`).
     * So a token not found, a device error or that login answer (no PIN
     * was checked, so no try is counted) is tried again from C_Initialize
     * on, OPEN_TRIES times over about a second; a PIN or module error is
     * final at once. */
    for (unsigned attempt = 1;; attempt++) {
        if ((err = init_module(ctx)) != HSM_OK)
            goto out;
        err = open_token(ctx, &s);
        bool pin_unseen = err == HSM_ERR_NOT_LOGGED_IN && hsm_last_rv() == CKR_USER_PIN_NOT_INITIALIZED;
        if (err == HSM_OK || attempt >= OPEN_TRIES || ctx->login_unsure ||
            (err != HSM_ERR_TOKEN_ABSENT && err != HSM_ERR_DEVICE && !pin_unseen))
            break;
        hsm_errsave sv;
        hsm_err_save(&sv);
        (void)P11(ctx, C_Finalize, NULL);
        hsm_err_restore(&sv);
        ctx->initialized = false;
        (void)nanosleep(&(struct timespec){0, OPEN_PAUSE_MS * 1000000L}, NULL);
    }
    if (err == HSM_ERR_TOKEN_ABSENT)
        err = HSM_ERR_TOKEN_NOT_FOUND;
    /* Still so after the tries: a token initialised with its SO PIN only
     * (pkcs11-tool --init-token), whose user PIN nobody set yet. */
    if (err == HSM_ERR_NOT_LOGGED_IN && hsm_last_rv() == CKR_USER_PIN_NOT_INITIALIZED)
        hsm_set_detail(
            "C_Login: CKR_USER_PIN_NOT_INITIALIZED: the token has no user PIN yet (initialised with its "
            "SO PIN only): the security officer sets it (pkcs11-tool --login --login-type so --init-pin "
            "--new-pin env:NAME, or the token's own tool), and the pin source holds it");
    if (err != HSM_OK)
        goto out;
    log_debug("token opened slot=%lu sessions=%u", (unsigned long)ctx->slot, ctx->max_sessions);
    *out = ctx;
    ctx = NULL;
    err = HSM_OK;
out:
    if (ctx != NULL) {
        hsm_errsave sv;
        hsm_err_save(&sv);
        hsm_close(ctx);
        hsm_err_restore(&sv);
    }
    return err;
}

void hsm_close(hsm_ctx *ctx)
{
    unsigned i;

    if (ctx == NULL)
        return;
    if (ctx->fl != NULL && ctx->initialized) {
        for (i = 0; i < ctx->n_idle; i++)
            close_session(ctx, ctx->idle[i].h);
        ctx->n_idle = 0;
        /* C_Finalize of our managed instance closes whatever is left. */
        (void)P11(ctx, C_Finalize, NULL);
    }
    if (ctx->modlist != NULL)
        p11_kit_modules_release(ctx->modlist);
    else if (ctx->fl != NULL)
        p11_kit_module_release(ctx->fl);
    if (ctx->token_uri != NULL)
        p11_kit_uri_free(ctx->token_uri);
    if (ctx->pin != NULL)
        util_secret_free(ctx->pin, ctx->pin_len + 1);
    free(ctx->idle);
    free(ctx->init_args);
    free(ctx->refusal_path);
    free(ctx->source_name);
    pthread_mutex_destroy(&ctx->pool_mu);
    pthread_cond_destroy(&ctx->pool_cv);
    pthread_mutex_destroy(&ctx->login_mu);
    pthread_mutex_destroy(&ctx->key_mu);
    pthread_mutex_destroy(&ctx->caps_mu);
    pthread_rwlock_destroy(&ctx->life_mu);
    OPENSSL_cleanse(ctx, sizeof(*ctx));
    free(ctx);
}

/* ---- sessions at start --------------------------------------------------------- */

hsm_err hsm_sessions_fill(hsm_ctx *ctx, unsigned want, unsigned *got)
{
    hsm_session held[HSM_MAX_SESSIONS];
    unsigned n = 0, i;
    hsm_err err = HSM_OK;

    if (got != NULL)
        *got = 0;
    if (ctx == NULL || got == NULL || want == 0)
        return HSM_ERR_ARGS;
    if (want > HSM_MAX_SESSIONS)
        want = HSM_MAX_SESSIONS;
    hsm_clear_detail();
    pthread_rwlock_rdlock(&ctx->life_mu);
    /* Held, not released one by one, so that each borrow opens a new one;
     * no_wait: at the pool's (possibly just lowered) size it stops. */
    while (n < want) {
        err = borrow(ctx, &held[n], false, true);
        if (err != HSM_OK) {
            if (held[n].h != 0)
                release(ctx, &held[n], err);
            break;
        }
        n++;
    }
    for (i = 0; i < n; i++)
        release(ctx, &held[i], HSM_OK);
    pthread_mutex_lock(&ctx->pool_mu);
    *got = ctx->max_sessions < want ? ctx->max_sessions : want;
    pthread_mutex_unlock(&ctx->pool_mu);
    pthread_rwlock_unlock(&ctx->life_mu);
    if (n == 0)
        return err;
    if (err != HSM_OK && hsm_last_rv() != CKR_SESSION_COUNT && n < *got)
        log_warn("opening the token's sessions at start stopped at %u of %u detail=\"%s\"", n, want,
                 log_qs(hsm_last_error_detail()));
    hsm_clear_detail();
    return HSM_OK;
}

/* ---- ping / info ------------------------------------------------------------ */

static hsm_err op_ping(hsm_ctx *ctx, CK_SESSION_HANDLE s, void *arg)
{
    CK_SESSION_INFO si;
    hsm_err err;

    memset(&si, 0, sizeof(si));
    err = P11(ctx, C_GetSessionInfo, s, &si);
    if (err != HSM_OK)
        return err;
    if (ctx->want_login && si.state != CKS_RW_USER_FUNCTIONS && si.state != CKS_RO_USER_FUNCTIONS) {
        hsm_set_detail("session is not logged in (state %lu)", (unsigned long)si.state);
        return HSM_ERR_NOT_LOGGED_IN;
    }
    return HSM_OK;
}

hsm_err hsm_ping(hsm_ctx *ctx)
{
    return hsm_run(ctx, op_ping, NULL);
}

hsm_err hsm_token_info_get(hsm_ctx *ctx, hsm_token_info *out)
{
    if (out != NULL)
        memset(out, 0, sizeof(*out));
    if (ctx == NULL || out == NULL)
        return HSM_ERR_ARGS;
    pthread_mutex_lock(&ctx->pool_mu);
    copy_padded(out->label, sizeof(out->label), ctx->tinfo.label, sizeof(ctx->tinfo.label));
    copy_padded(out->manufacturer, sizeof(out->manufacturer), ctx->tinfo.manufacturerID,
                sizeof(ctx->tinfo.manufacturerID));
    copy_padded(out->model, sizeof(out->model), ctx->tinfo.model, sizeof(ctx->tinfo.model));
    copy_padded(out->serial, sizeof(out->serial), ctx->tinfo.serialNumber, sizeof(ctx->tinfo.serialNumber));
    out->sessions_idle = ctx->n_idle;
    out->sessions_in_use = ctx->n_open - ctx->n_idle;
    out->write_protected = (ctx->tinfo.flags & CKF_WRITE_PROTECTED) != 0;
    pthread_mutex_unlock(&ctx->pool_mu);
    return HSM_OK;
}
