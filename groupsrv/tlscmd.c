/*
 * tlscmd.c: `groupsrv tls init`: the TLS server key made on the token and
 * its certificate issued by the local CA, so that `[tls] key` can be a
 * pkcs11: URI (groupsrv/server/tls_tokenkey.c). OpenSSL's own tools cannot
 * make a CSR for a token key without an engine or provider, hence this.
 *
 * Only EC keys: an RSA key on the token would need raw RSA for TLS 1.3's
 * RSA-PSS through OpenSSL 3.0, which groupsrv never offers.
 */
#include "tlscmd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>

#include "ca.h"
#include "cli.h"
#include "config.h"
#include "groups.h"
#include "gs_error.h"
#include "hsm.h"
#include "store.h"
#include "util.h"

#define TLS_LABEL_MAX 64
#define TLS_DNS_MAX 253

struct tls_init_args {
    const char *dns, *out, *key, *subject, *label, *days;
    bool renew; /* a new certificate for the key already under label */
};

/* A usage error (exit 2): why, then what (from the command line), one line. */
static int tls_usage(const char *why, const char *what)
{
    return usage_error("%s%s", why, what != NULL ? what : "");
}

/* Letters, digits and those of extra: labels and DNS names we put in
 * URIs and certificates unescaped. */
static int plain_name(const char *s, size_t max, const char *extra)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr(extra, c)))
            return 0;
    }
    return s[0] != '.' && s[0] != '-';
}

static int parse_tls_init(int argc, char **argv, struct tls_init_args *a)
{
    static const struct opt_def defs[] = {{"--dns", true},   {"--out", true},   {"--key", true},
                                          {"--subject", true}, {"--label", true}, {"--days", true},
                                          {"--renew", false}};
    struct args args;
    int rc;

    memset(a, 0, sizeof(*a));
    /* main.c's parser, as every other command: --opt VALUE or --opt=VALUE */
    if ((rc = parse_args(argc, argv, defs, sizeof(defs) / sizeof(defs[0]), &args)) != 0)
        return rc;
    if (args.npos > 0)
        return tls_usage("tls init: unexpected argument ", args.pos[0]);
    a->dns = opt(&args, "--dns");
    a->out = opt(&args, "--out");
    a->key = opt(&args, "--key");
    a->subject = opt(&args, "--subject");
    a->label = opt(&args, "--label");
    a->days = opt(&args, "--days");
    a->renew = opt(&args, "--renew") != NULL;
    if (a->renew && a->key != NULL)
        return tls_usage("tls init: --renew keeps the key on the token; --key does not go with it", NULL);
    if (a->dns == NULL || a->out == NULL)
        return tls_usage("tls init: --dns NAME and --out FILE are required", NULL);
    if (!plain_name(a->dns, TLS_DNS_MAX, ".-"))
        return tls_usage("--dns: expected a host name (letters, digits, '.', '-'), got ", a->dns);
    if (a->label == NULL)
        a->label = "tls";
    if (!plain_name(a->label, TLS_LABEL_MAX, "._-"))
        return tls_usage("--label: expected 1-64 of A-Z a-z 0-9 . _ -, got ", a->label);
    if (a->key == NULL)
        a->key = "ec:p256";
    if (a->subject == NULL)
        a->subject = a->dns;
    return 0;
}

/* Makes (or, --renew, finds) the key and writes its certificate; err
 * set and the half-made key destroyed on failure. uo: --out, opened
 * (out_open), committed or dropped here. Under the keys lock
 * (store.h): two at once with one label would both find the label free
 * and make two keys under it, and serve's pkcs11: URI would name both. */
static gs_err tls_make(const struct tls_init_args *a, gs_store *st, hsm_ctx *hsm, util_out *uo,
                       hsm_key_type type, unsigned bits, uint64_t days, char fp[65], unsigned *bits_out)
{
    hsm_keygen_spec ks;
    hsm_key *pub = NULL, *priv = NULL;
    hsm_key_info ki;
    gs_ca *ca = NULL;
    gs_cert_spec cs;
    unsigned char *spki = NULL;
    const unsigned char *p;
    size_t spki_len = 0;
    EVP_PKEY *pk = NULL;
    X509 *cert = NULL;
    char *pem = NULL;
    bool made = false;
    gs_err err;
    hsm_err he;

    if ((err = gs_ca_load(st, hsm, &ca)) != GS_OK)
        goto out;
    memset(&ks, 0, sizeof(ks));
    ks.label = a->label;
    ks.type = type;
    ks.bits = bits;
    ks.usage = HSM_USE_SIGN;
    if (a->renew) {
        /* Renewal: the key stays, only its certificate is new (then SIGHUP). */
        if ((he = hsm_key_find(hsm, a->label, HSM_CLASS_PRIVATE, &priv)) != HSM_OK) {
            err = he == HSM_ERR_KEY_NOT_FOUND
                      ? gs_err_set(GS_ERR_NOT_FOUND, "no key labelled %s on the token to renew", a->label)
                      : gs_err_set(GS_ERR_HSM, "finding the TLS key: %s (%s)", hsm_strerror(he),
                                   hsm_last_error_detail());
            goto out;
        }
    } else if ((he = hsm_generate_keypair(hsm, &ks, &pub, &priv)) != HSM_OK) {
        if (he == HSM_ERR_KEY_EXISTS)
            err = gs_err_set(GS_ERR_EXISTS, "a key labelled %s is already on the token", a->label);
        else
            err = gs_err_set(GS_ERR_HSM, "generating the TLS key: %s (%s)", hsm_strerror(he),
                             hsm_last_error_detail());
        goto out;
    }
    made = !a->renew;
    /* What `groupsrv serve` will insist on, checked now rather than there. */
    if ((he = hsm_key_get_info(hsm, priv, &ki)) != HSM_OK || !ki.sign || !ki.sensitive || ki.extractable ||
        !ki.never_extractable || ki.value_readable || ki.type != HSM_KEYTYPE_EC) {
        err = gs_err_set(GS_ERR_POLICY, "the %s TLS key is not a sensitive, non-extractable EC signing key",
                         a->renew ? "token's" : "new");
        goto out;
    }
    *bits_out = ki.bits;
    if ((he = hsm_key_export_public(hsm, priv, &spki, &spki_len)) != HSM_OK) {
        err = gs_err_set(GS_ERR_HSM, "reading the TLS public key: %s", hsm_strerror(he));
        goto out;
    }
    p = spki;
    if ((pk = d2i_PUBKEY(NULL, &p, (long)spki_len)) == NULL) {
        err = gs_err_set(GS_ERR_CRYPTO, "the token's public key does not parse");
        goto out;
    }
    memset(&cs, 0, sizeof(cs));
    cs.pubkey = pk;
    cs.subject_cn = a->subject;
    cs.san_dns = a->dns;
    cs.key_usage = GS_KU_DIGITAL_SIGNATURE;
    cs.ext_key_usage = GS_EKU_SERVER_AUTH;
    cs.lifetime = (long)days * 86400L;
    cs.backdate = 300;
    if ((err = gs_ca_issue(ca, hsm, &cs, &cert)) != GS_OK || (err = gs_cert_to_pem(cert, &pem)) != GS_OK)
        goto out;
    /* Written as groupmail's --out is: /dev/stdout or a named pipe is
     * written to, never renamed over (as root, a regular file in place of
     * /dev/stdout); a regular file is replaced atomically. */
    err = out_commit(uo, a->out, pem, strlen(pem), NULL);
    uo = NULL;
    if (err != GS_OK)
        goto out;
    made = false; /* done: the key stays */
    gs_cert_fingerprint(cert, fp);
out:
    util_out_abort(uo); /* not reached: nothing written */
    if (made) { /* no half-made TLS key left behind */
        if (priv != NULL)
            (void)hsm_key_destroy(hsm, priv);
        if (pub != NULL)
            (void)hsm_key_destroy(hsm, pub);
    }
    free(pem);
    X509_free(cert);
    EVP_PKEY_free(pk);
    free(spki);
    hsm_key_free(priv);
    hsm_key_free(pub);
    gs_ca_free(ca);
    return err;
}

static int tls_init(const struct gs_config *cfg, const struct tls_init_args *a)
{
    hsm_key_type type;
    hsm_token_info ti;
    hsm_ctx *hsm = NULL;
    gs_store *st = NULL;
    util_out *uo = NULL;
    struct cli_record rec;
    json_t *extra;
    unsigned bits;
    uint64_t days = 365;
    char fp[65] = "", tok[3 * sizeof(ti.label) + 1];
    FILE *info;
    gs_err err;
    int rc;

    if (a->days != NULL && util_parse_u64(a->days, 1, 3650, &days) != UTIL_OK)
        return tls_usage("--days: expected 1..3650, got ", a->days);
    if (gs_keyspec_parse(a->key, &type, &bits) != GS_OK)
        return tls_usage("--key: expected ec:p256 or ec:p384, got ", a->key);
    if (type != HSM_KEYTYPE_EC)
        return tls_usage("--key: the TLS key on the token must be EC (ec:p256 or ec:p384): an RSA key would "
                         "need raw RSA for TLS 1.3's RSA-PSS signatures, which groupsrv never offers; got ",
                         a->key);
    if ((err = gs_store_open(gs_config_db_location(cfg), GS_STORE_READONLY, &st)) != GS_OK ||
        (err = gs_hsm_open(cfg, &hsm)) != GS_OK || (err = cli_record_open(cfg, &rec, "tls init")) != GS_OK) {
        rc = fail(err);
        goto out;
    }
    /* --out opened before the lock: a named pipe's open waits until
     * someone reads it, and under the keys lock that held every member
     * change (REST ones too, on every server sharing a PostgreSQL
     * database) and key ceremony for as long. Nothing is made yet if it
     * cannot be opened. */
    if ((err = out_open(a->out, 0644, &uo)) == GS_OK) {
        /* Recorded as started first, under the lock: a key made on the
         * token and a certificate written cannot be taken back, and a
         * command killed before its outcome record must not leave them
         * without a record. */
        if ((err = gs_store_keys_lock(st)) == GS_OK) {
            err = cli_record_started(&rec, "tls-init", NULL,
                                     json_pack("{s:s,s:s,s:o,s:b}", "label", a->label, "dns", a->dns, "out",
                                               cli_json_text(a->out), "renew", a->renew));
            if (err == GS_OK) {
                err = tls_make(a, st, hsm, uo, type, bits, days, fp, &bits);
                uo = NULL; /* tls_make's */
            }
            gs_store_keys_unlock(st);
        }
        util_out_abort(uo);
        uo = NULL;
    }
    extra = json_pack("{s:s,s:s,s:o,s:b}", "label", a->label, "dns", a->dns, "out", cli_json_text(a->out), "renew",
                      a->renew);
    if (err == GS_OK)
        (void)json_object_set_new(extra, "certificate_sha256", json_string(fp));
    rc = cli_record_done(&rec, "tls-init", NULL, -1, err, extra);
    if (rc != 0)
        goto out;
    if (hsm_token_info_get(hsm, &ti) == HSM_OK)
        util_uri_escape_value(ti.label, tok, sizeof(tok));
    else
        util_strlcpy(tok, "groupsrv", sizeof(tok));
    info = info_stream(a->out); /* standard output holds only the certificate */
    if (a->renew)
        fprintf(info, "TLS key kept on the token: label %s, EC P-%u; send serve SIGHUP to take up the new certificate\n",
               a->label, bits);
    else
        fprintf(info, "TLS key made on the token: label %s, EC P-%u, sensitive, never extractable, sign only\n",
                a->label, bits);
    fprintf(info,
            "certificate for %s written to %s (sha256 %s), issued by the local CA\n"
            "use in groupsrv.conf:\n[tls]\ncert = %s\nkey = pkcs11:token=%s;object=%s;type=private\n",
            a->dns, a->out, fp, a->out, tok, a->label);
out:
    hsm_close(hsm);
    gs_store_close(st);
    return rc;
}

int gs_cmd_tls(const struct gs_config *cfg, int argc, char **argv)
{
    struct tls_init_args a;
    int rc;

    if (argc < 2)
        return tls_usage("tls: expected init", NULL);
    if (strcmp(argv[1], "init") != 0)
        return usage_error("tls: unknown subcommand %s (expected init)", argv[1]);
    if ((rc = parse_tls_init(argc - 2, argv + 2, &a)) != 0)
        return rc;
    return tls_init(cfg, &a);
}
