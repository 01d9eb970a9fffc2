/*
 * fuzz_restclient: the REST client's parsing of what a group server
 * answers (client/restparse.c), as groupmail and the exploder receive it
 * from a server that may be hostile. The first byte picks the endpoint
 * (and, for unwrap-batch, how many items were asked); the rest is the body.
 * Every input also goes through the refusal parser and the Content-Type
 * check, and the status mapping takes its number from the body's bytes.
 *
 * Invariants checked: on success the outputs hold what the caller relies
 * on (group info as printable text, a content key of 16, 24 or 32 bytes, RecipientInfos of 1 to 64 KiB,
 * exactly the items asked); on failure they are empty and the reason is
 * one printable line; refusal codes and messages are printable.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "restparse.h"

#define BATCH_MAX 8

static bool printable(const char *s)
{
    for (; *s; s++)
        if (*s < 0x20 || *s > 0x7e)
            return false;
    return true;
}

static void check_failed(gs_rest_err err, const char *why)
{
    FUZZ_CHECK(err == GS_REST_ERR_BAD_ANSWER || err == GS_REST_ERR_NOMEM);
    FUZZ_CHECK(printable(why));
    FUZZ_CHECK(err != GS_REST_ERR_BAD_ANSWER || why[0] != '\0');
}

static void check_unwrap(const gs_unwrap_result *u, gs_deliver d)
{
    if (d == GS_DELIVER_TLS) {
        FUZZ_CHECK(u->key != NULL && (u->key_len == 16 || u->key_len == 24 || u->key_len == 32));
        FUZZ_CHECK(u->recipient_info == NULL);
    } else {
        FUZZ_CHECK(u->key == NULL && u->recipient_info != NULL);
        FUZZ_CHECK(u->recipient_info_len > 0 && u->recipient_info_len <= 64 * 1024);
    }
    FUZZ_CHECK(u->key_version >= -1 && u->secret_version >= -1);
}

static bool unwrap_empty(const gs_unwrap_result *u)
{
    return u->key == NULL && u->recipient_info == NULL && u->key_len == 0 && u->recipient_info_len == 0;
}

static void batch(const unsigned char *body, size_t len, unsigned sel, char *why, size_t whysz)
{
    gs_unwrap_result outs[BATCH_MAX];
    gs_rest_err errs[BATCH_MAX], err;
    gs_deliver d[BATCH_MAX];
    size_t n = 1 + sel % BATCH_MAX;

    for (size_t i = 0; i < n; i++)
        d[i] = (gs_deliver)((sel / BATCH_MAX + i) % 3);
    err = gs_rest_parse_unwrap_batch(body, len, d, n, outs, errs, why, whysz);
    for (size_t i = 0; i < n; i++) {
        if (err == GS_REST_OK && errs[i] == GS_REST_OK)
            check_unwrap(&outs[i], d[i]);
        else
            FUZZ_CHECK(unwrap_empty(&outs[i]));
        gs_unwrap_result_clear(&outs[i]);
    }
    if (err != GS_REST_OK)
        check_failed(err, why);
}

static void endpoint(unsigned sel, const unsigned char *body, size_t len)
{
    char why[256] = "";
    gs_rest_err err = GS_REST_OK;

    switch (sel % 9) {
    case 0: {
        gs_group_info gi;
        err = gs_rest_parse_group_info(body, len, &gi, why, sizeof(why));
        if (err == GS_REST_OK) {
            FUZZ_CHECK(gi.name != NULL && gi.address != NULL && gi.certificate_server != NULL);
            /* groupmail prints them: printable, whatever the server sent */
            FUZZ_CHECK(strlen(gi.name) <= 4096 && printable(gi.name) && printable(gi.address) &&
                       printable(gi.certificate_server));
            for (size_t i = 0; i < gi.n_methods; i++)
                FUZZ_CHECK(gi.methods[i] != NULL && strlen(gi.methods[i]) <= 64 && printable(gi.methods[i]));
        } else {
            FUZZ_CHECK(gi.name == NULL && gi.methods == NULL && gi.n_methods == 0 && gi.key_versions == NULL);
        }
        gs_group_info_clear(&gi);
        break;
    }
    case 1: {
        char *pem = NULL;
        size_t plen = 0;
        err = gs_rest_parse_pem(body, len, &pem, &plen, why, sizeof(why));
        if (err == GS_REST_OK)
            FUZZ_CHECK(plen == len && strlen(pem) == len && strstr(pem, "-----BEGIN CERTIFICATE-----") != NULL);
        else
            FUZZ_CHECK(pem == NULL && plen == 0);
        free(pem);
        break;
    }
    case 2:
    case 3:
    case 4: {
        gs_unwrap_result u;
        gs_deliver d = (gs_deliver)(sel % 9 - 2);
        err = gs_rest_parse_unwrap(body, len, d, &u, why, sizeof(why));
        if (err == GS_REST_OK)
            check_unwrap(&u, d);
        else
            FUZZ_CHECK(unwrap_empty(&u));
        gs_unwrap_result_clear(&u);
        break;
    }
    case 5:
        batch(body, len, sel / 9, why, sizeof(why));
        return;
    case 6:
    case 7: {
        gs_ri_list l;
        gs_rewrap_to to = sel % 9 == 6 ? GS_REWRAP_GROUP_SECRET : GS_REWRAP_MEMBERS;
        err = gs_rest_parse_rewrap(body, len, to, &l, why, sizeof(why));
        if (err == GS_REST_OK) {
            FUZZ_CHECK(to == GS_REWRAP_MEMBERS || l.n > 0);
            for (size_t i = 0; i < l.n; i++)
                FUZZ_CHECK(l.der[i] != NULL && l.len[i] > 0 && l.len[i] <= 64 * 1024);
        } else {
            FUZZ_CHECK(l.n == 0 && l.der == NULL);
        }
        gs_ri_list_clear(&l);
        break;
    }
    default: {
        gs_secret_keys s;
        err = gs_rest_parse_secret_keys(body, len, &s, why, sizeof(why));
        if (err == GS_REST_OK) {
            for (size_t i = 0; i < s.n; i++)
                FUZZ_CHECK(s.keys[i].kek_id_len > 0 && s.keys[i].wrapped_key_len > 0 &&
                           memchr(s.keys[i].algorithm, '\0', sizeof(s.keys[i].algorithm)) != NULL);
        } else {
            FUZZ_CHECK(s.n == 0 && s.keys == NULL);
        }
        gs_secret_keys_clear(&s);
        break;
    }
    }
    if (err != GS_REST_OK)
        check_failed(err, why);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char code[64], msg[256], ctype[128];
    long status = 0;

    if (size < 1)
        return 0;
    endpoint(data[0], data + 1, size - 1);

    /* what every answer that is not a success goes through */
    gs_rest_parse_error(data, size, code, sizeof(code), msg, sizeof(msg));
    FUZZ_CHECK(printable(code) && printable(msg));
    for (size_t i = 0; i < size && i < 4; i++)
        status = status * 256 + data[i];
    FUZZ_CHECK((gs_rest_parse_status(status) == GS_REST_OK) == (status >= 200 && status < 300));
    memcpy(ctype, data, size < sizeof(ctype) ? size : sizeof(ctype));
    ctype[size < sizeof(ctype) ? size : sizeof(ctype) - 1] = '\0';
    (void)gs_rest_parse_is_json(ctype);
    return 0;
}
