/*
 * fuzz_config: the readers of the programs' configuration files and of
 * groupmail's local store. They are not read from the network, but an
 * admin's typo, a half-copied file or another user's tampering must give
 * a one-line error, never a crash. The first input byte picks the reader,
 * the rest is the file:
 *
 *   0  groupsrv.conf             gs_config_load_string (groupsrv/config.c)
 *   1  exploder.conf             xp_conf_load_string (exploder/conf.c)
 *   2  groupmail config          gm_config_load_stream (client/gm_common.c)
 *   3  a stored secret key       gm_secret_entry_parse (client/gm_store.c)
 *   4  a pinned certificate chain gm_pem_certs (client/gm_common.c)
 *   5  groupsrv's [db] url        gs_store_url_passwords, _query,
 *                                 _location_display, _url_mask_passwords
 *                                 (groupsrv/store.c: which parts are secret)
 *
 * Invariants checked: a loaded configuration holds values inside the
 * documented ranges; an error names a line (exploder) or says what is wrong
 * in one line (groupsrv); the [db] url's password spans lie inside it, in
 * order and apart, its query starts at a '?', its display fits the buffer,
 * and a message quoting the whole URI shows none of its passwords.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include "config.h"
#include "fuzz.h"
#include "gm.h"
#include "gm_store.h"
#include "gs_error.h"
#include "log.h"
#include "store.h"
#include "xp.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_init("fuzz_config", LOG_LVL_ERROR, NULL);
    /* groupmail expands ~/ with $HOME: keep it fixed */
    return setenv("HOME", "/nonexistent", 1);
}

static void groupsrv_conf(const char *text)
{
    struct gs_config *cfg = NULL;
    gs_err e = gs_config_load_string(text, "fuzz.conf", &cfg);

    if (e == GS_OK) {
        FUZZ_CHECK(cfg != NULL && cfg->server.listen != NULL && cfg->hsm.module != NULL);
        FUZZ_CHECK(cfg->server.threads >= 1 && cfg->server.threads <= 256);
        FUZZ_CHECK(cfg->server.max_body >= 1024 && cfg->server.max_body <= 16u * 1024 * 1024);
        FUZZ_CHECK(cfg->certsrv.lifetime >= 60 && cfg->certsrv.lifetime <= 604800);
        FUZZ_CHECK(cfg->certsrv.listen == NULL || cfg->certsrv.url != NULL);
    } else {
        FUZZ_CHECK(cfg == NULL && strchr(gs_err_detail(), '\n') == NULL);
    }
    gs_config_free(cfg);
}

static void exploder_conf(const char *text)
{
    xp_conf *c = NULL;
    int line = -1;
    xp_err e = xp_conf_load_string(text, &c, &line);

    if (e == XP_OK) {
        FUZZ_CHECK(c != NULL && line == 0);
        FUZZ_CHECK(c->batch_size >= 1 && c->batch_size <= 1000);
        FUZZ_CHECK(c->retry_min >= 1 && c->retry_max >= c->retry_min);
        FUZZ_CHECK(c->relay == NULL || strncmp(c->relay, "smtp://", 7) == 0 || strncmp(c->relay, "smtps://", 8) == 0 ||
                   strncmp(c->relay, "maildir:", 8) == 0);
    } else {
        FUZZ_CHECK(c == NULL && (e == XP_ERR_NOMEM || line > 0));
    }
    xp_conf_free(c);
}

static void groupmail_conf(const uint8_t *data, size_t size)
{
    gm_config c;
    FILE *f;

    if (size == 0)
        return; /* fmemopen refuses an empty buffer */
    memset(&c, 0, sizeof(c));
    FUZZ_CHECK((f = fmemopen((void *)data, size, "r")) != NULL);
    if (gm_config_load_stream(&c, f, "fuzz.conf") == 0)
        FUZZ_CHECK(c.timeout >= 0 && c.timeout <= 3600);
    fclose(f);
    gm_config_clear(&c);
}

static void secret_entry(const uint8_t *data, size_t size)
{
    gm_secret_entry e;

    if (gm_secret_entry_parse(data, size, &e) == 0) {
        FUZZ_CHECK(e.kek_id != NULL && e.wrapped_key != NULL);
        FUZZ_CHECK(e.kek_id_len <= 768 && e.wrapped_key_len <= 3072);
        FUZZ_CHECK(memchr(e.algorithm, '\0', sizeof(e.algorithm)) != NULL && e.algorithm[0] != '\0');
        for (const char *a = e.algorithm; *a; a++) /* one token on a line of keys list */
            FUZZ_CHECK(*a > 0x20 && *a < 0x7f);
    } else {
        FUZZ_CHECK(e.kek_id == NULL && e.wrapped_key == NULL);
    }
    gm_secret_entry_clear(&e);
}

static void pin_chain(const uint8_t *data, size_t size)
{
    STACK_OF(X509) *chain = NULL;

    if (gm_pem_certs(data, size, &chain) == 0)
        FUZZ_CHECK(sk_X509_num(chain) >= 1 && sk_X509_num(chain) <= 16);
    else
        FUZZ_CHECK(chain == NULL);
    sk_X509_pop_free(chain, X509_free);
    ERR_clear_error();
}

static void db_url(const char *url)
{
    gs_store_span spans[GS_STORE_URL_PASSWORDS_MAX];
    size_t len = strlen(url), n = gs_store_url_passwords(url, spans, GS_STORE_URL_PASSWORDS_MAX), end = 0;
    const char *q = gs_store_url_query(url);
    char display[64], *msg;
    /* each masked piece, at least one byte, becomes three */
    size_t cap = 3 * len + 1;

    FUZZ_CHECK(n <= GS_STORE_URL_PASSWORDS_MAX);
    for (size_t i = 0; i < n; i++) {
        FUZZ_CHECK(spans[i].off >= end && spans[i].off + spans[i].len <= len);
        end = spans[i].off + spans[i].len;
    }
    FUZZ_CHECK(q == NULL || (q >= url && q < url + len && *q == '?'));
    gs_store_location_display(url, display, sizeof(display));
    FUZZ_CHECK(strlen(display) < sizeof(display));
    FUZZ_CHECK((msg = malloc(cap)) != NULL);
    memcpy(msg, url, len + 1);
    gs_store_url_mask_passwords(url, msg, cap);
    FUZZ_CHECK(strlen(msg) < cap);
    /* A password is gone from the message, unless it holds a '*' (which
     * the "***" put in the place of a piece may spell again) */
    for (size_t i = 0; i < n; i++) {
        char *pw;
        if (spans[i].len == 0 || memchr(url + spans[i].off, '*', spans[i].len) != NULL)
            continue;
        FUZZ_CHECK((pw = strndup(url + spans[i].off, spans[i].len)) != NULL);
        FUZZ_CHECK(strstr(msg, pw) == NULL);
        free(pw);
    }
    free(msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text;

    if (size < 1 || size > 64 * 1024)
        return 0;
    switch (data[0] % 6) {
    case 0:
    case 1:
    case 5:
        /* the INI readers take NUL-terminated text */
        FUZZ_CHECK((text = malloc(size)) != NULL);
        memcpy(text, data + 1, size - 1);
        text[size - 1] = '\0';
        if (data[0] % 6 == 0)
            groupsrv_conf(text);
        else if (data[0] % 6 == 1)
            exploder_conf(text);
        else
            db_url(text);
        free(text);
        break;
    case 2: groupmail_conf(data + 1, size - 1); break;
    case 3: secret_entry(data + 1, size - 1); break;
    default: pin_chain(data + 1, size - 1); break;
    }
    return 0;
}
