/*
 * test_replicate.c: hsm/replicate.c, the token side of the key ceremony,
 * on one throw-away SoftHSM token (a process sees one SoftHSM token store:
 * the copies are imported beside the originals under other labels, which
 * exercises the same PKCS#11 calls as a second token would; the
 * integration test tests/integration/ceremony-servers.sh uses two).
 *
 * Shown here: replicable keys read back CKA_WRAP_WITH_TRUSTED; a wrong SO
 * PIN and a key that is not replicable are refused and leave the user
 * logged in; an SO PIN of a length the token never takes is not sent,
 * nor logged as rejected by the token; a copy is
 * sensitive, not extractable, decrypts what the original's public key
 * encrypted, and cannot be wrapped out again; import is all or nothing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "hsm.h"
#include "log.h"
#include "testsupport.h"

#define TOKEN_LABEL "reptest"
#define TOKEN_URI "pkcs11:token=" TOKEN_LABEL

static char tokdir[512];
static char pinsrc[600];
static char so_pin[300];
static FILE *log_sink; /* the log's lines, at warn */

/* Where the log ends now, for log_has. */
static long log_mark(void)
{
    assert_int_equal(fflush(log_sink), 0);
    return ftell(log_sink);
}

/* Whether the log's lines since mark hold text. */
static bool log_has(long mark, const char *text)
{
    char buf[8192];
    long end = log_mark();
    size_t len = end - mark < (long)sizeof(buf) - 1 ? (size_t)(end - mark) : sizeof(buf) - 1;
    ssize_t got = pread(fileno(log_sink), buf, len, mark);

    assert_true(got >= 0);
    buf[got] = '\0';
    return strstr(buf, text) != NULL;
}

static hsm_ctx *open_ctx(void)
{
    hsm_config cfg = {testtoken_softhsm_module(), TOKEN_URI, pinsrc, 0, NULL, NULL};
    hsm_ctx *ctx = NULL;
    hsm_err err = hsm_open(&cfg, &ctx);
    if (err != HSM_OK)
        fail_msg("hsm_open: %s %s", hsm_strerror(err), hsm_last_error_detail());
    return ctx;
}

static int read_so_pin(void)
{
    char path[700];
    FILE *f;

    snprintf(path, sizeof(path), "%s/so-pin", tokdir);
    if ((f = fopen(path, "r")) == NULL || fgets(so_pin, sizeof(so_pin), f) == NULL) {
        if (f != NULL)
            fclose(f);
        return -1;
    }
    fclose(f);
    so_pin[strcspn(so_pin, "\n")] = '\0';
    return 0;
}

static int group_setup(void **state)
{
    (void)state;
    if (testtoken_make(TOKEN_LABEL, tokdir, sizeof(tokdir)) != 0 ||
        testtoken_pin_source(tokdir, pinsrc, sizeof(pinsrc)) != 0 || read_so_pin() != 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (getenv("HSM_TEST_KEEP") == NULL && tokdir[0] != '\0')
        testtoken_remove(tokdir);
    return 0;
}

static int count_cb(void *arg, hsm_ctx *ctx, hsm_key *key)
{
    (void)ctx, (void)key;
    (*(size_t *)arg)++;
    return 0;
}

static size_t count_keys(hsm_ctx *ctx)
{
    size_t n = 0;
    assert_int_equal(hsm_key_list(ctx, "", count_cb, &n), HSM_OK);
    return n;
}

static hsm_key *make_pair(hsm_ctx *ctx, const char *label, unsigned usage, bool replicable, unsigned char **spki,
                          size_t *spki_len)
{
    hsm_keygen_spec ks = {.label = label, .type = HSM_KEYTYPE_RSA, .bits = 2048, .usage = usage,
                          .replicable = replicable};
    hsm_key *priv = NULL;
    hsm_err err = hsm_generate_keypair(ctx, &ks, NULL, &priv);
    if (err != HSM_OK)
        fail_msg("keypair %s: %s %s", label, hsm_strerror(err), hsm_last_error_detail());
    if (spki != NULL)
        assert_int_equal(hsm_key_export_public(ctx, priv, spki, spki_len), HSM_OK);
    return priv;
}

/* RSA-OAEP SHA-1 in software, to the key's public half. */
static size_t sw_encrypt(const unsigned char *spki, size_t spki_len, const unsigned char *pt, size_t ptlen,
                         unsigned char *ct, size_t cap)
{
    EVP_PKEY *pk = testkey_from_spki(spki, spki_len);
    EVP_PKEY_CTX *c = pk != NULL ? EVP_PKEY_CTX_new(pk, NULL) : NULL;
    size_t outlen = cap;

    assert_non_null(c);
    assert_int_equal(EVP_PKEY_encrypt_init(c), 1);
    assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING), 1);
    assert_int_equal(EVP_PKEY_encrypt(c, ct, &outlen, pt, ptlen), 1);
    EVP_PKEY_CTX_free(c);
    EVP_PKEY_free(pk);
    return outlen;
}

static void export_items(hsm_replica_export *x, hsm_replica_item *items, size_t n, const char *pin,
                         const unsigned char *tspki, size_t tlen)
{
    memset(x, 0, sizeof(*x));
    x->so_pin = pin;
    x->so_pin_len = strlen(pin);
    x->transport_spki = tspki;
    x->transport_spki_len = tlen;
    x->items = items;
    x->n_items = n;
}

static void free_items(hsm_replica_export *x)
{
    for (size_t i = 0; i < x->n_items; i++)
        free(x->items[i].wrapped);
    free(x->wrapped_kek);
}

static void test_replicable_keygen(void **state)
{
    hsm_ctx *ctx = open_ctx();
    hsm_key *k, *h = NULL;
    hsm_key_info ki;
    hsm_keygen_spec hs = {.label = "kg-hmac", .type = HSM_KEYTYPE_GENERIC_SECRET, .bits = 256,
                          .usage = HSM_USE_SIGN, .replicable = true};

    (void)state;
    k = make_pair(ctx, "kg-rep", HSM_USE_UNWRAP, true, NULL, NULL);
    assert_int_equal(hsm_key_get_info(ctx, k, &ki), HSM_OK);
    assert_true(ki.sensitive && ki.always_sensitive && ki.extractable && ki.wrap_with_trusted);
    assert_false(ki.never_extractable || ki.value_readable || ki.trusted);
    hsm_key_free(k);
    k = make_pair(ctx, "kg-plain", HSM_USE_UNWRAP, false, NULL, NULL);
    assert_int_equal(hsm_key_get_info(ctx, k, &ki), HSM_OK);
    assert_true(ki.never_extractable);
    assert_false(ki.extractable || ki.wrap_with_trusted);
    hsm_key_free(k);
    assert_int_equal(hsm_generate_secret_key(ctx, &hs, &h), HSM_OK);
    assert_int_equal(hsm_key_get_info(ctx, h, &ki), HSM_OK);
    assert_true(ki.extractable && ki.wrap_with_trusted && ki.sensitive && !ki.value_readable);
    hsm_key_free(h);
    hsm_close(ctx);
}

/* The whole path, plus what must be refused on the way. */
static void test_export_import(void **state)
{
    hsm_ctx *ctx = open_ctx();
    unsigned char *gspki = NULL, *tspki = NULL, *ospki = NULL;
    size_t gspki_len = 0, tspki_len = 0, ospki_len = 0, before;
    hsm_key *grp = make_pair(ctx, "gs:group:t:v1", HSM_USE_UNWRAP | HSM_USE_DECRYPT, true, &gspki, &gspki_len);
    hsm_key *plain = make_pair(ctx, "gs:group:p:v1", HSM_USE_UNWRAP, false, NULL, NULL);
    hsm_key *tk = make_pair(ctx, "gs:transport:test", HSM_USE_UNWRAP, false, &tspki, &tspki_len);
    hsm_key *other = make_pair(ctx, "gs:transport:other", HSM_USE_UNWRAP, false, &ospki, &ospki_len);
    hsm_key *sec = NULL, *outs[2] = {NULL, NULL};
    hsm_keygen_spec ss = {.label = "gs:secret:t:v1", .type = HSM_KEYTYPE_AES, .bits = 256, .usage = HSM_USE_WRAP,
                          .extractable = true};
    hsm_replica_item items[2];
    hsm_replica_export x;
    hsm_key_info ki;
    unsigned char id1[16] = {1}, id2[16] = {2}, pt[32], ct[512], out[64];
    size_t ctlen, outlen = 0;
    hsm_err err;

    (void)state;
    assert_int_equal(hsm_generate_secret_key(ctx, &ss, &sec), HSM_OK);

    /* A wrong SO PIN: refused, and the user is still logged in. */
    memset(items, 0, sizeof(items));
    items[0].key = grp;
    export_items(&x, items, 1, "not-the-so-pin", tspki, tspki_len);
    long mark = log_mark();
    assert_int_equal(hsm_replica_export_run(ctx, &x), HSM_ERR_PIN_INCORRECT);
    assert_non_null(strstr(hsm_last_error_detail(), "security officer"));
    assert_true(log_has(mark, "token rejected the SO PIN"));
    /* One shorter than the token's ulMinPinLen (SoftHSM: 4) is not sent,
     * and the log does not say the token rejected it. */
    export_items(&x, items, 1, "abc", tspki, tspki_len);
    mark = log_mark();
    assert_int_equal(hsm_replica_export_run(ctx, &x), HSM_ERR_PIN_INCORRECT);
    assert_non_null(strstr(hsm_last_error_detail(), "not attempted"));
    assert_false(log_has(mark, "token rejected the SO PIN"));
    assert_true(log_has(mark, "the SO PIN was not sent"));
    assert_null(x.wrapped_kek);
    assert_null(x.wrapped_kek);
    assert_int_equal(hsm_key_get_info(ctx, grp, &ki), HSM_OK);
    assert_int_equal(hsm_ping(ctx), HSM_OK);

    /* A key that was not made replicable cannot be wrapped, even now. */
    items[0].key = plain;
    export_items(&x, items, 1, so_pin, tspki, tspki_len);
    assert_int_equal(hsm_replica_export_run(ctx, &x), HSM_ERR_KEY_POLICY);
    assert_non_null(strstr(hsm_last_error_detail(), "gs:group:p:v1"));
    assert_null(x.wrapped_kek);
    assert_null(items[0].wrapped);
    assert_int_equal(hsm_ping(ctx), HSM_OK);

    /* The real thing: the group key and a secret key. */
    items[0].key = grp;
    items[1].key = sec;
    export_items(&x, items, 2, so_pin, tspki, tspki_len);
    err = hsm_replica_export_run(ctx, &x);
    if (err != HSM_OK)
        fail_msg("export: %s %s", hsm_strerror(err), hsm_last_error_detail());
    assert_int_equal(x.kek_hash, HSM_OAEP_SHA1); /* SoftHSM 2.6 wraps with SHA-1 only */
    assert_true(x.wrapped_kek_len == 256 && items[0].wrapped_len > 1000 && items[1].wrapped_len == 40);
    /* No trusted object is left behind: the one-time key was a session object. */
    before = count_keys(ctx);

    hsm_replica_in in[2];
    memset(in, 0, sizeof(in));
    in[0].spec = (hsm_keygen_spec){.label = "copy:group", .id = id1, .id_len = sizeof(id1), .type = HSM_KEYTYPE_RSA,
                                   .usage = HSM_USE_UNWRAP | HSM_USE_DECRYPT};
    in[0].wrapped = items[0].wrapped;
    in[0].wrapped_len = items[0].wrapped_len;
    in[0].public_spki = gspki;
    in[0].public_spki_len = gspki_len;
    in[1].spec = (hsm_keygen_spec){.label = "copy:secret", .id = id2, .id_len = sizeof(id2), .type = HSM_KEYTYPE_AES,
                                   .usage = HSM_USE_WRAP, .extractable = true};
    in[1].wrapped = items[1].wrapped;
    in[1].wrapped_len = items[1].wrapped_len;

    /* Another transport key cannot open it; nothing is left on the token. */
    assert_int_equal(hsm_replica_import(ctx, other, x.kek_hash, x.wrapped_kek, x.wrapped_kek_len, in, 2, outs),
                     HSM_ERR_DECRYPT);
    assert_int_equal(count_keys(ctx), before);
    /* A damaged key: the first copy was made and is destroyed again. */
    {
        unsigned char *bad = malloc(items[1].wrapped_len);
        assert_non_null(bad);
        memcpy(bad, items[1].wrapped, items[1].wrapped_len);
        bad[5] ^= 1;
        in[1].wrapped = bad;
        assert_int_equal(hsm_replica_import(ctx, tk, x.kek_hash, x.wrapped_kek, x.wrapped_kek_len, in, 2, outs),
                         HSM_ERR_DECRYPT);
        assert_int_equal(count_keys(ctx), before);
        assert_null(outs[0]);
        in[1].wrapped = items[1].wrapped;
        free(bad);
    }
    err = hsm_replica_import(ctx, tk, x.kek_hash, x.wrapped_kek, x.wrapped_kek_len, in, 2, outs);
    if (err != HSM_OK)
        fail_msg("import: %s %s", hsm_strerror(err), hsm_last_error_detail());
    assert_int_equal(count_keys(ctx), before + 3); /* private + public + secret */

    /* The copy: sensitive, not extractable, usage as asked. */
    assert_int_equal(hsm_key_get_info(ctx, outs[0], &ki), HSM_OK);
    assert_true(ki.token && ki.private_ && ki.sensitive && ki.decrypt && ki.unwrap);
    assert_false(ki.extractable || ki.value_readable || ki.sign || ki.wrap_with_trusted);
    assert_true(ki.has_unwrap_template && ki.unwrap_template_sensitive && ki.n_allowed_mechanisms == 1);
    assert_int_equal(hsm_key_get_info(ctx, outs[1], &ki), HSM_OK);
    assert_true(ki.sensitive && ki.extractable && ki.wrap && !ki.value_readable);

    /* It is the same key: it decrypts what the original's public key encrypted. */
    assert_int_equal(RAND_bytes(pt, sizeof(pt)), 1);
    ctlen = sw_encrypt(gspki, gspki_len, pt, sizeof(pt), ct, sizeof(ct));
    hsm_unwrap_input ui = {.group_key = outs[0], .alg = HSM_KT_RSA_OAEP_SHA1, .encrypted_key = ct,
                           .encrypted_key_len = ctlen, .expected_len = 32};
    assert_int_equal(hsm_decrypt_content_key(ctx, &ui, out, sizeof(out), &outlen), HSM_OK);
    assert_memory_equal(out, pt, sizeof(pt));

    /* A copy never leaves again. */
    hsm_replica_item again = {.key = outs[0]};
    hsm_replica_export x2;
    export_items(&x2, &again, 1, so_pin, tspki, tspki_len);
    assert_int_equal(hsm_replica_export_run(ctx, &x2), HSM_ERR_KEY_POLICY);

    /* The same shipment twice: refused, nothing added. */
    hsm_key *outs2[2] = {NULL, NULL};
    assert_int_equal(hsm_replica_import(ctx, tk, x.kek_hash, x.wrapped_kek, x.wrapped_kek_len, in, 2, outs2),
                     HSM_ERR_KEY_EXISTS);
    assert_non_null(strstr(hsm_last_error_detail(), "copy:group"));
    assert_int_equal(count_keys(ctx), before + 3);

    /* Bad arguments. */
    assert_int_equal(hsm_replica_export_run(ctx, NULL), HSM_ERR_ARGS);
    in[0].spec.replicable = true;
    assert_int_equal(hsm_replica_import(ctx, tk, x.kek_hash, x.wrapped_kek, x.wrapped_kek_len, in, 1, outs2),
                     HSM_ERR_ARGS);

    free_items(&x);
    hsm_key_free(outs[0]);
    hsm_key_free(outs[1]);
    hsm_key_free(grp);
    hsm_key_free(plain);
    hsm_key_free(tk);
    hsm_key_free(other);
    hsm_key_free(sec);
    free(gspki);
    free(tspki);
    free(ospki);
    hsm_close(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replicable_keygen),
        cmocka_unit_test(test_export_import),
    };
    if ((log_sink = tmpfile()) == NULL)
        return 1;
    log_init("test_replicate", LOG_LVL_WARN, log_sink);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
