/*
 * groupmail: the member's and sender's tool (docs/groupmail.1.md).
 *   fetch-cert | encrypt | send | decrypt | unwrap | certify | keys sync|list
 * Exit codes: 0 ok, 1 local error, 2 usage, 3 not a member / refused,
 * 4 server unreachable or unusable, 5 bad message.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <fcntl.h>
#include <sys/stat.h>

#include <curl/curl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "gm.h"
#include "gm_store.h"
#include "gs_version.h"
#include "log.h"
#include "mailaddr.h"
#include "mailfold.h"
#include "outfile.h"
#include "util.h"


#define MAX_CEK 64
#define MC_MIN_VALIDITY 60 /* seconds a cached membership certificate must still live */

static void usage(FILE *f)
{
    fputs("usage: groupmail COMMAND [options]\n"
          "  fetch-cert --server URL --group G [--cacert FILE] [--group-ca FILE] [--repin] [--out FILE]\n"
          "  encrypt    (--group-cert FILE | --server URL --group G) [--cbc] [--mime] [--oaep sha1|sha256]\n"
          "             [--format smime|pem|der] [--in FILE] [--out FILE]\n"
          "  send       --smtp smtp[s]://HOST:PORT [--smtp-cacert FILE] --to LIST@DOMAIN [--from ADDR] [--encrypt ...]\n"
          "             [--smtp-starttls] [--smtp-user USER --smtp-password-file FILE|env:VAR] [--in FILE]\n"
          "  decrypt    --server URL --group G --via tls|recipient-key|membership-cert|group-secret|local-key|own-key\n"
          "             --cert FILE --key FILE|pkcs11:URI [--cacert FILE] [--in FILE] [--out FILE]\n"
          "  unwrap     --via tls|recipient-key|membership-cert|group-secret [--recipient-info FILE\n"
          "             [--content-algorithm ALG]] [--in FILE] [--out FILE]\n"
          "  certify    --server URL --group G --cert FILE --key FILE|pkcs11:URI\n"
          "  keys sync  --server URL --group G --cert FILE --key FILE|pkcs11:URI\n"
          "  keys list  --server URL --group G [--cert FILE]\n"
          "  keys transport-key --token pkcs11:URI --out TRANSPORT.pem\n"
          "  keys import-group-key --in GROUP.gsk --token pkcs11:URI [--group-ca FILE] [--keep-transport-key]\n"
          "  csr        --key pkcs11:URI --from ADDR [--out FILE]   (a CSR signed on the token)\n"
          "common: -c/--config FILE --store DIR --tls-cert FILE --tls-key FILE --pin sha256//B64|FILE\n"
          "        --certsrv URL --group-key pkcs11:URI|FILE --hsm-module PATH --hsm-token URI --pin-source SRC\n"
          "        --timeout SECONDS -v/--verbose -q/--quiet\n"
          "exit: 0 ok, 1 error, 2 usage, 3 not a member/refused, 4 server unreachable, 5 bad message,\n"
          "      6 keys imported but the transport key not deleted (keys import-group-key)\n",
          f);
}

/* ---- options -------------------------------------------------------------- */

enum {
    O_SERVER = 256, O_GROUP, O_CERT, O_KEY, O_CACERT, O_TLS_CERT, O_TLS_KEY, O_PIN, O_CERTSRV, O_GROUP_CA,
    O_GROUP_CERT, O_GROUP_KEY, O_HSM_MODULE, O_HSM_TOKEN, O_PIN_SOURCE, O_STORE, O_SMTP, O_FROM, O_TO, O_VIA,
    O_IN, O_OUT, O_RI, O_OAEP, O_FORMAT, O_TIMEOUT, O_CBC, O_MIME, O_REPIN, O_ENCRYPT, O_CALG, O_SMTP_CACERT,
    O_SMTP_USER, O_SMTP_PASSWORD_FILE, O_SMTP_STARTTLS, O_KEEP_TRANSPORT_KEY,
};

static const struct option long_opts[] = {
    {"server", required_argument, NULL, O_SERVER},       {"group", required_argument, NULL, O_GROUP},
    {"cert", required_argument, NULL, O_CERT},           {"key", required_argument, NULL, O_KEY},
    {"cacert", required_argument, NULL, O_CACERT},       {"tls-cert", required_argument, NULL, O_TLS_CERT},
    {"tls-key", required_argument, NULL, O_TLS_KEY},     {"pin", required_argument, NULL, O_PIN},
    {"certsrv", required_argument, NULL, O_CERTSRV},     {"group-ca", required_argument, NULL, O_GROUP_CA},
    {"group-cert", required_argument, NULL, O_GROUP_CERT}, {"group-key", required_argument, NULL, O_GROUP_KEY},
    {"hsm-module", required_argument, NULL, O_HSM_MODULE}, {"hsm-token", required_argument, NULL, O_HSM_TOKEN},
    {"pin-source", required_argument, NULL, O_PIN_SOURCE}, {"store", required_argument, NULL, O_STORE},
    {"token", required_argument, NULL, O_HSM_TOKEN},
    {"smtp", required_argument, NULL, O_SMTP},           {"from", required_argument, NULL, O_FROM},
    {"to", required_argument, NULL, O_TO},               {"via", required_argument, NULL, O_VIA},
    {"in", required_argument, NULL, O_IN},               {"out", required_argument, NULL, O_OUT},
    {"recipient-info", required_argument, NULL, O_RI},   {"oaep", required_argument, NULL, O_OAEP},
    {"format", required_argument, NULL, O_FORMAT},       {"timeout", required_argument, NULL, O_TIMEOUT},
    {"cbc", no_argument, NULL, O_CBC},                   {"mime", no_argument, NULL, O_MIME},
    {"repin", no_argument, NULL, O_REPIN},               {"encrypt", no_argument, NULL, O_ENCRYPT},
    {"content-algorithm", required_argument, NULL, O_CALG}, {"smtp-cacert", required_argument, NULL, O_SMTP_CACERT},
    {"smtp-user", required_argument, NULL, O_SMTP_USER},
    {"smtp-password-file", required_argument, NULL, O_SMTP_PASSWORD_FILE},
    {"smtp-starttls", no_argument, NULL, O_SMTP_STARTTLS},
    {"keep-transport-key", no_argument, NULL, O_KEEP_TRANSPORT_KEY},
    {"config", required_argument, NULL, 'c'},            {"verbose", no_argument, NULL, 'v'},
    {"quiet", no_argument, NULL, 'q'},                   {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* The commands, as bits, for the options that belong to some of them. */
enum {
    C_FETCH_CERT = 1u << 0, C_ENCRYPT = 1u << 1, C_SEND = 1u << 2, C_DECRYPT = 1u << 3, C_UNWRAP = 1u << 4,
    C_CERTIFY = 1u << 5, C_KEYS_SYNC = 1u << 6, C_KEYS_LIST = 1u << 7, C_KEYS_TRANSPORT = 1u << 8,
    C_KEYS_IMPORT = 1u << 9, C_CSR = 1u << 10, C_ALL = (1u << 11) - 1,
};

static const struct {
    const char *name; /* as on the command line; "keys sync" */
    unsigned bit;
} commands[] = {
    {"fetch-cert", C_FETCH_CERT},  {"encrypt", C_ENCRYPT},
    {"send", C_SEND},              {"decrypt", C_DECRYPT},
    {"unwrap", C_UNWRAP},          {"certify", C_CERTIFY},
    {"keys sync", C_KEYS_SYNC},    {"keys list", C_KEYS_LIST},
    {"keys transport-key", C_KEYS_TRANSPORT}, {"keys import-group-key", C_KEYS_IMPORT},
    {"csr", C_CSR},
};

/* The commands an option applies to (docs/groupmail.1.md, Synopsis);
 * those of its Options table (and -c, -v, -q) apply to every command.
 * send takes encrypt's options only with --encrypt (checked apart). */
static unsigned option_commands(int opt)
{
    const unsigned to_server = C_FETCH_CERT | C_ENCRYPT | C_SEND | C_DECRYPT | C_UNWRAP | C_CERTIFY | C_KEYS_SYNC |
                               C_KEYS_LIST;
    switch (opt) {
    case O_SERVER:
    case O_GROUP:
    case O_CERT: return to_server; /* --cert, --key: also the TLS identity of every request */
    case O_KEY: return to_server | C_CSR;
    case O_REPIN: return C_FETCH_CERT | C_ENCRYPT | C_SEND | C_DECRYPT | C_UNWRAP;
    case O_MIME:
    case O_CBC:
    case O_OAEP:
    case O_FORMAT: return C_ENCRYPT | C_SEND;
    case O_SMTP:
    case O_SMTP_CACERT:
    case O_SMTP_USER:
    case O_SMTP_PASSWORD_FILE:
    case O_SMTP_STARTTLS:
    case O_TO:
    case O_ENCRYPT: return C_SEND;
    case O_FROM: return C_SEND | C_CSR;
    case O_VIA: return C_DECRYPT | C_UNWRAP;
    case O_RI:
    case O_CALG: return C_UNWRAP;
    case O_KEEP_TRANSPORT_KEY: return C_KEYS_IMPORT;
    case O_IN: return C_ENCRYPT | C_SEND | C_DECRYPT | C_UNWRAP | C_KEYS_IMPORT;
    case O_OUT: return C_FETCH_CERT | C_ENCRYPT | C_DECRYPT | C_UNWRAP | C_KEYS_TRANSPORT | C_CSR;
    default: return C_ALL;
    }
}

/* The command bit of argv[0] (and argv[1] for keys); C_ALL for a keys
 * subcommand that does not exist (cmd_keys says so). */
static unsigned command_bit(const char *cmd, const char *sub, const char **name)
{
    char full[64];

    (void)snprintf(full, sizeof(full), "%s%s%s", cmd, sub != NULL ? " " : "", sub != NULL ? sub : "");
    for (size_t i = 0; i < GS_ARRAY_LEN(commands); i++)
        if (strcmp(full, commands[i].name) == 0) {
            *name = commands[i].name;
            return commands[i].bit;
        }
    *name = cmd;
    return C_ALL;
}

static const char *option_name(int opt)
{
    for (size_t i = 0; long_opts[i].name != NULL; i++)
        if (long_opts[i].val == opt)
            return long_opts[i].name;
    return "?";
}

static int set_str(char **dst, const char *v)
{
    free(*dst);
    return (*dst = strdup(v)) == NULL ? -1 : 0;
}

/* The one usage line for what getopt_long refused (opterr 0, ":" first in
 * its option string). A long option is named without any "=value": an
 * unknown --pin-value=... must not put a PIN on the terminal. */
static int option_error(int ch, char **argv)
{
    const char *arg = optind > 0 ? argv[optind - 1] : "";
    char given[64];

    if (strncmp(arg, "--", 2) == 0)
        (void)snprintf(given, sizeof(given), "%.*s", (int)strcspn(arg, "="), arg);
    else
        (void)snprintf(given, sizeof(given), "-%c", optopt > 0x20 && optopt < 0x7f ? optopt : '?');
    for (char *p = given; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    if (ch == ':')
        gm_err("option %s needs a value (see groupmail --help)", given);
    else if (optopt != 0 && strchr(arg, '=') != NULL)
        gm_err("option %s takes no value (see groupmail --help)", given);
    else
        gm_err("unknown option %s (see groupmail --help)", given);
    return GM_EXIT_USAGE;
}

/* Flags into c; then environment, then the config file fill what is unset.
 * A flag the command (cmd, named cmd_name) does not take is a usage error,
 * as an unknown one is: silently ignoring it hides a mistake (an SMTP
 * option given to decrypt, --cbc to send without --encrypt). */
static int parse_options(int argc, char **argv, unsigned cmd, const char *cmd_name, gm_config *c)
{
    int ch, encrypt_only = 0;
    long t;
    char **dst;

    optind = 1;
    opterr = 0; /* one line of ours, not getopt's and the whole usage */
    while ((ch = getopt_long(argc, argv, ":c:vqh", long_opts, NULL)) != -1) {
        dst = NULL;
        if (ch >= O_SERVER && (option_commands(ch) & cmd) == 0) {
            gm_err("--%s does not apply to %s (see groupmail --help)", option_name(ch), cmd_name);
            return GM_EXIT_USAGE;
        }
        /* --group-cert is for every command (decrypt reads it too), but
         * send uses it only to encrypt */
        if (cmd == C_SEND && encrypt_only == 0 && ch >= O_SERVER && ch != O_IN &&
            ((option_commands(ch) != C_ALL && (option_commands(ch) & C_ENCRYPT) != 0) || ch == O_GROUP_CERT))
            encrypt_only = ch;
        switch (ch) {
        case O_SERVER: dst = &c->server; break;
        case O_GROUP: dst = &c->group; break;
        case O_CERT: dst = &c->cert; break;
        case O_KEY: dst = &c->key; break;
        case O_CACERT: dst = &c->cacert; break;
        case O_TLS_CERT: dst = &c->tls_cert; break;
        case O_TLS_KEY: dst = &c->tls_key; break;
        case O_PIN: dst = &c->pin; break;
        case O_CERTSRV: dst = &c->certsrv; break;
        case O_GROUP_CA: dst = &c->group_ca; break;
        case O_GROUP_CERT: dst = &c->group_cert; break;
        case O_GROUP_KEY: dst = &c->group_key; break;
        case O_HSM_MODULE: dst = &c->hsm_module; break;
        case O_HSM_TOKEN: dst = &c->hsm_token; break;
        case O_PIN_SOURCE: dst = &c->hsm_pin_source; break;
        case O_STORE: dst = &c->store; break;
        case O_SMTP: dst = &c->smtp; break;
        case O_SMTP_CACERT: dst = &c->smtp_cacert; break;
        case O_SMTP_USER: dst = &c->smtp_user; break;
        case O_SMTP_PASSWORD_FILE: dst = &c->smtp_password_file; break;
        case O_SMTP_STARTTLS: c->smtp_starttls = GM_STARTTLS_REQUIRED; break;
        case O_FROM: dst = &c->from; break;
        case O_TO: dst = &c->to; break;
        case O_VIA: dst = &c->via; break;
        case O_IN: dst = &c->in; break;
        case O_OUT: dst = &c->out; break;
        case O_RI: dst = &c->recipient_info; break;
        case O_OAEP: dst = &c->oaep; break;
        case O_FORMAT: dst = &c->format; break;
        case O_CALG: dst = &c->content_algorithm; break;
        case 'c': dst = &c->config_file; break;
        case O_TIMEOUT:
            if (util_parse_int(optarg, 1, 3600, &t) != UTIL_OK) {
                gm_err("--timeout must be 1..3600 seconds");
                return GM_EXIT_USAGE;
            }
            c->timeout = t;
            break;
        case O_CBC: c->cbc = true; break;
        case O_MIME: c->mime = true; break;
        case O_REPIN: c->repin = true; break;
        case O_KEEP_TRANSPORT_KEY: c->keep_transport_key = true; break;
        case O_ENCRYPT: c->encrypt_first = true; break;
        case 'v': c->verbose = true; break;
        case 'q': c->quiet = true; break;
        case 'h': usage(stdout); exit(0);
        default: return option_error(ch, argv);
        }
        /* "-" is the standard stream, as curl's -o - and openssl's -in -
         * take it: a file of that name in the working directory got
         * decrypt's plaintext. The names the stream itself goes by
         * (util_out_open, gm_in_is_stdin), never opened anew. */
        const char *val = optarg;
        if ((ch == O_IN || ch == O_OUT) && strcmp(val, "-") == 0)
            val = ch == O_IN ? "/dev/stdin" : "/dev/stdout";
        if (dst != NULL && set_str(dst, val) != 0)
            return GM_EXIT_ERROR;
    }
    if (optind != argc) {
        gm_err("unexpected argument '%s'", argv[optind]);
        return GM_EXIT_USAGE;
    }
    c->smtp_starttls_flag = c->smtp_starttls == GM_STARTTLS_REQUIRED; /* flags come first */
    c->smtp_cacert_flag = c->smtp_cacert != NULL;
    if (encrypt_only != 0 && !c->encrypt_first) {
        gm_err("--%s applies to send only with --encrypt (see groupmail --help)", option_name(encrypt_only));
        return GM_EXIT_USAGE;
    }
    if (gm_config_load_env(c) != 0)
        return GM_EXIT_ERROR;
    if (c->config_file == NULL) {
        const char *e = getenv("GROUPMAIL_CONFIG");
        char *def = NULL;
        if (e != NULL && *e != '\0') {
            if (gm_config_load_file(c, e, true) != 0)
                return GM_EXIT_ERROR;
        } else if ((def = gm_default_config_path()) != NULL) {
            int rc = gm_config_load_file(c, def, false);
            free(def);
            if (rc != 0)
                return GM_EXIT_ERROR;
        }
    } else if (gm_config_load_file(c, c->config_file, true) != 0) {
        return GM_EXIT_ERROR; /* groupmail(1): configuration is a local error */
    }
    /* a PIN in a key URI would be shown in error lines: refused unseen */
    const struct {
        const char *what, *uri;
    } uris[] = {{"--key", c->key}, {"--tls-key", c->tls_key}, {"--group-key", c->group_key}, {"--token", c->hsm_token}};
    for (size_t i = 0; i < GS_ARRAY_LEN(uris); i++)
        if (util_uri_has_pin_value(uris[i].uri)) {
            gm_err("%s: the pkcs11: URI carries a PIN (pin-value; not shown): give pin-source= or [hsm] pin_source",
                   uris[i].what);
            return GM_EXIT_USAGE;
        }
    /* p11-kit drops whitespace from a URI: "object=My Key" would name "MyKey" */
    for (size_t i = 0; i < GS_ARRAY_LEN(uris); i++)
        if (uris[i].uri != NULL && strncmp(uris[i].uri, "pkcs11:", 7) == 0 && util_uri_needs_escape(uris[i].uri, 0)) {
            char enc[1024];
            gm_err("%s: the pkcs11: URI has a space or control byte, which a PKCS#11 URI must percent-encode: %s",
                   uris[i].what, util_uri_escape_loose(uris[i].uri, enc, sizeof(enc)));
            return GM_EXIT_USAGE;
        }
    /* The group server's URL before anything else, for every command that
     * may talk to it: one answered from a cache (certify's membership
     * certificate, encrypt's pinned or given group certificate) exited 0
     * with an http:// URL never looked at, which the next command, or
     * the next day's run past the cache, refuses (exit 2, gm_rest_open).
     * Not decrypt by a key of one's own (local-key, own-key): it asks no
     * server, even one configured (groupmail(1)), so a [server] url it
     * never uses refused mail it can read. */
    bool own_key = cmd == C_DECRYPT && c->via != NULL &&
                   (strcmp(c->via, "local-key") == 0 || strcmp(c->via, "own-key") == 0);
    const char *why = c->server != NULL && (option_commands(O_SERVER) & cmd) != 0 &&
                              (cmd != C_SEND || c->encrypt_first) && !own_key
                          ? gs_rest_url_why(c->server)
                          : NULL;
    if (why != NULL) {
        gm_err("cannot use server URL %s: %s", c->server, why);
        return GM_EXIT_USAGE;
    }
    if (c->store == NULL && (c->store = gm_default_store_path()) == NULL) {
        gm_err("no store directory: set HOME, --store or [store] dir");
        return GM_EXIT_USAGE;
    }
    if (c->timeout == 0)
        c->timeout = 30;
    return GM_EXIT_OK;
}

static int need(const char *v, const char *what)
{
    if (v == NULL) {
        gm_err("missing %s", what);
        return -1;
    }
    return 0;
}

/* ---- group certificate: fetch, verify, pin ---------------------------------- */

static int verify_chain(const char *cafile, STACK_OF(X509) *chain)
{
    X509_STORE *st = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    STACK_OF(X509) *untrusted = NULL;
    int rc = -1;

    if (st == NULL || ctx == NULL || (untrusted = sk_X509_dup(chain)) == NULL)
        goto out;
    if (X509_STORE_load_file(st, cafile) != 1) {
        gm_err("cannot load CA file %s", cafile);
        goto out;
    }
    (void)sk_X509_shift(untrusted); /* the leaf */
    if (X509_STORE_CTX_init(ctx, st, sk_X509_value(chain, 0), untrusted) != 1)
        goto out;
    if (X509_verify_cert(ctx) != 1) {
        gm_err("group certificate does not verify against %s: %s", cafile,
               X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
        goto out;
    }
    rc = 0;
out:
    ERR_clear_error();
    sk_X509_free(untrusted);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(st);
    return rc;
}

static int rest_lazy(const gm_config *c, gs_rest **r)
{
    if (*r != NULL)
        return GM_EXIT_OK;
    return gm_rest_open(c, NULL, r);
}

/* Fetches the group certificate, verifies it against the group CA, checks
 * it names the list address and matches any earlier pin, and pins it. */
/* Is cert i of a pinned chain a group key version? The first is the
 * current one; after its chain come the versions pinned before a re-key;
 * CA certificates are their issuers. */
static bool older_version(STACK_OF(X509) *pinned, int i)
{
    return i == 0 || X509_check_ca(sk_X509_value(pinned, i)) == 0;
}

static bool in_stack(STACK_OF(X509) *st, X509 *x)
{
    for (int i = 0; i < sk_X509_num(st); i++)
        if (X509_cmp(sk_X509_value(st, i), x) == 0)
            return true;
    return false;
}

static int fetch_and_pin(const gm_config *c, gs_rest **r, X509 **leaf_out)
{
    gs_group_info gi = {0};
    char *pem = NULL;
    size_t pemlen = 0;
    STACK_OF(X509) *chain = NULL, *old = NULL;
    const char *ca = c->group_ca ? c->group_ca : c->cacert;
    gs_rest_err e;
    int rc, pr;

    if (leaf_out != NULL)
        *leaf_out = NULL;
    if (need(c->server, "--server URL") || need(c->group, "--group G"))
        return GM_EXIT_USAGE;
    if (ca == NULL) {
        gm_err("no CA to verify the group certificate: give --group-ca or --cacert");
        return GM_EXIT_USAGE;
    }
    if ((rc = rest_lazy(c, r)) != GM_EXIT_OK)
        return rc;
    gm_progress(c, "fetching the certificate of group %s", c->group);
    if ((e = gs_rest_group_info(*r, c->group, &gi)) != GS_REST_OK)
        return gm_rest_fail(*r, e, "group info");
    if ((e = gs_rest_group_certificate(*r, c->group, &pem, &pemlen)) != GS_REST_OK) {
        rc = gm_rest_fail(*r, e, "group certificate");
        goto out;
    }
    rc = GM_EXIT_UNREACHABLE;
    if (gm_pem_certs((unsigned char *)pem, pemlen, &chain) != 0) {
        gm_err("the server's group certificate is not PEM");
        goto out;
    }
    if (verify_chain(ca, chain) != 0)
        goto out;
    if (gi.address[0] != '\0' && X509_check_email(sk_X509_value(chain, 0), gi.address, 0, 0) != 1) {
        gm_err("group certificate does not name the list address %s", gi.address);
        goto out;
    }
    pr = gm_pin_load(c, &old);
    if (pr == -3 && !c->repin) /* two pins of this server differ: said; --repin replaces both */
        goto out;
    if (pr == 0 && X509_cmp(sk_X509_value(old, 0), sk_X509_value(chain, 0)) != 0 && !c->repin) {
        char *p = gm_pin_path(c);
        gm_err("group certificate differs from the one pinned in %s (re-key?): check, then fetch-cert --repin",
               p ? p : "the store");
        free(p);
        goto out;
    }
    rc = GM_EXIT_ERROR;
    /* A re-key keeps the versions pinned before after the new chain: the
     * group still decrypts mail to them (until it retires them). */
    for (int i = 0; old != NULL && i < sk_X509_num(old) && sk_X509_num(chain) < GM_PEM_CERTS_MAX; i++) {
        X509 *x = sk_X509_value(old, i);
        if (older_version(old, i) && !in_stack(chain, x)) {
            if (!sk_X509_push(chain, x))
                goto out;
            (void)sk_X509_set(old, i, NULL); /* now the chain's */
        }
    }
    if (gm_pin_save(c, chain) != 0)
        goto out;
    if (leaf_out != NULL) {
        *leaf_out = sk_X509_value(chain, 0);
        X509_up_ref(*leaf_out);
    }
    rc = GM_EXIT_OK;
out:
    sk_X509_pop_free(chain, X509_free);
    sk_X509_pop_free(old, X509_free);
    gs_group_info_clear(&gi);
    free(pem);
    return rc;
}

/* The group certificate: --group-cert, else the pin, else fetch and pin. */
static int group_cert_get(const gm_config *c, gs_rest **r, bool may_fetch, X509 **out)
{
    STACK_OF(X509) *chain = NULL;
    int pr;

    *out = NULL;
    if (c->group_cert != NULL)
        return (*out = gm_read_cert_file(c->group_cert)) != NULL ? GM_EXIT_OK : GM_EXIT_ERROR;
    if (c->server == NULL || c->group == NULL) {
        if (!may_fetch)
            return GM_EXIT_OK; /* optional */
        gm_err("give --group-cert FILE, or --server URL and --group G");
        return GM_EXIT_USAGE;
    }
    pr = gm_pin_load(c, &chain);
    if (pr == 0) {
        *out = sk_X509_shift(chain);
        sk_X509_pop_free(chain, X509_free);
        return GM_EXIT_OK;
    }
    if (pr == -2)
        return GM_EXIT_ERROR;
    if (pr == -3) /* two pins of the server differ (said): as a pin mismatch */
        return GM_EXIT_UNREACHABLE;
    if (!may_fetch)
        return GM_EXIT_OK;
    return fetch_and_pin(c, r, out);
}

/* What a command writes to standard output is staged until the whole
 * operation succeeded (a decryption fails only at its end, on the GCM tag
 * or the CBC padding), so a failure writes nothing. --out is committed by
 * rename; standard output (and an --out FIFO or device) gets a copy of the
 * staged bytes. Plaintext
 * (decrypt, and send's input until it is known to be encrypted) is staged
 * in an anonymous memory file (memfd: no name, never in a file system) of
 * at most GM_MEMORY_STAGE_MAX bytes; other output (ciphertext, a CSR) in
 * an unlinked temp file. */
#define GM_MEMORY_STAGE_MAX ((size_t)256 * 1024 * 1024) /* docs/groupmail.1.md */

typedef struct gm_out {
    util_out *uo;
    BIO *bio;
    const char *name; /* --out as given, for the error line; NULL: a standard stream */
} gm_out;

/* How --out is written (common/outfile.h): a regular file replaced by
 * rename; standard output or error, also when --out names it
 * (/dev/stdout, /dev/fd/1, a link to one, the file it is open on) and
 * when the caller closed it (exit 1); an existing named pipe or device
 * opened and written, never renamed over (as root, a regular file
 * holding the plaintext in place of /dev/null). */
static util_out_kind out_kind_of(const gm_config *c) { return util_out_kind_of(c->out); }

static int out_open(const gm_config *c, gm_out *o, mode_t mode, bool plaintext)
{
    const char *name = c->out != NULL ? c->out : "standard output";
    int ur;

    memset(o, 0, sizeof(*o));
    switch ((ur = util_out_open(c->out, mode, plaintext ? UTIL_OUT_MEMORY : 0, &o->uo))) {
    case UTIL_OUT_OK: break;
    case UTIL_OUT_E_CLOSED: gm_err("cannot write the output: %s %s", name, util_out_strerror(ur)); return GM_EXIT_ERROR;
    case UTIL_OUT_E_CREATE: gm_err("cannot create %s", name); return GM_EXIT_ERROR;
    case UTIL_OUT_E_OPEN: gm_err("cannot open %s", name); return GM_EXIT_ERROR;
    case UTIL_OUT_E_STAGE:
        gm_err(plaintext ? "cannot create a memory file to stage the output" : "cannot create a temporary file");
        return GM_EXIT_ERROR;
    default: gm_err("cannot open %s: %s", name, util_out_strerror(ur)); return GM_EXIT_ERROR;
    }
    if ((o->bio = BIO_new_fp(util_out_fp(o->uo), BIO_NOCLOSE)) == NULL) {
        util_out_abort(o->uo);
        o->uo = NULL;
        gm_err("out of memory");
        return GM_EXIT_ERROR;
    }
    util_out_kind k = util_out_get_kind(o->uo);
    o->name = k == UTIL_OUT_FILE || k == UTIL_OUT_STREAM ? c->out : NULL;
    return GM_EXIT_OK;
}

static void out_abort(gm_out *o)
{
    BIO_free(o->bio);
    util_out_abort(o->uo); /* a temp file, tmpfile() or memfd: nothing left behind */
    memset(o, 0, sizeof(*o));
}

/* Puts the output in place. A failure's line names the output and says
 * what the system said (a full disk: a script must not take a truncated
 * file for the message), errno taken at the call that failed
 * (util_out_commit keeps it). */
static int out_commit_written(gm_out *o, util_out_written *w)
{
    int rc = GM_EXIT_OK, why = 0;

    errno = 0;
    if (BIO_flush(o->bio) != 1) {
        rc = GM_EXIT_ERROR;
        why = errno;
    }
    BIO_free(o->bio);
    o->bio = NULL;
    if (rc != GM_EXIT_OK) {
        util_out_abort(o->uo);
    } else {
        errno = 0;
        if (util_out_commit(o->uo, w) != UTIL_OUT_OK) {
            rc = GM_EXIT_ERROR;
            why = errno;
        }
    }
    o->uo = NULL;
    if (rc != GM_EXIT_OK && why != 0)
        gm_err("cannot write %s: %s", o->name != NULL ? o->name : "the output", strerror(why));
    else if (rc != GM_EXIT_OK)
        gm_err("cannot write %s", o->name != NULL ? o->name : "the output");
    return rc;
}

static int out_commit(gm_out *o) { return out_commit_written(o, NULL); }

int gm_out_open(const gm_config *c, mode_t mode, util_out **uo)
{
    gm_out o;
    int rc;

    *uo = NULL;
    if ((rc = out_open(c, &o, mode, true)) != GM_EXIT_OK) /* small: staged in memory */
        return rc;
    BIO_free(o.bio);
    *uo = o.uo;
    return GM_EXIT_OK;
}

int gm_out_put(const gm_config *c, util_out *uo, const void *buf, size_t len, util_out_written *w)
{
    memset(w, 0, sizeof(*w));
    if (len > 0 && fwrite(buf, 1, len, util_out_fp(uo)) != len) {
        util_out_abort(uo);
        gm_err("cannot write %s", c->out);
        return GM_EXIT_ERROR;
    }
    if (util_out_commit(uo, w) != UTIL_OUT_OK) {
        gm_err("cannot write the output");
        return GM_EXIT_ERROR;
    }
    return GM_EXIT_OK;
}

static int cmd_fetch_cert(gm_config *c)
{
    gs_rest *r = NULL;
    X509 *leaf = NULL;
    unsigned char md[32];
    unsigned int mdlen = 0;
    char hex[65], *p = NULL;
    util_out_written written = {.kind = UTIL_OUT_FILE};
    int rc = fetch_and_pin(c, &r, &leaf);

    if (rc != GM_EXIT_OK)
        goto out;
    if (c->out != NULL) {
        gm_out o;
        if ((rc = out_open(c, &o, 0644, false)) != GM_EXIT_OK)
            goto out;
        if (!PEM_write_bio_X509(o.bio, leaf)) {
            out_abort(&o);
            gm_err("cannot write %s", c->out);
            rc = GM_EXIT_ERROR;
            goto out;
        }
        if ((rc = out_commit_written(&o, &written)) != GM_EXIT_OK)
            goto out;
    }
    if (!X509_digest(leaf, EVP_sha256(), md, &mdlen) || mdlen != 32) {
        gm_err("cannot compute the certificate's SHA-256 fingerprint");
        rc = GM_EXIT_ERROR;
        goto out;
    }
    util_hex(md, 32, hex);
    p = gm_pin_path(c);
    /* With --out /dev/stdout, standard output holds the certificate alone
     * (`--out /dev/stdout | openssl x509 ...`): the line goes to standard
     * error, as keys transport-key's do. */
    fprintf(util_out_info_stream(written.kind), "pinned %s sha256=%s\n", p ? p : "", hex);
out:
    free(p);
    X509_free(leaf);
    gs_rest_free(r);
    return rc;
}

/* ---- encrypt ----------------------------------------------------------------- */

static int open_in(const gm_config *c, BIO **in)
{
    *in = c->in != NULL && !gm_in_is_stdin(c->in) ? BIO_new_file(c->in, "rb") : BIO_new_fp(stdin, BIO_NOCLOSE);
    if (*in == NULL) {
        gm_err("cannot open %s", c->in ? c->in : "stdin");
        return GM_EXIT_ERROR;
    }
    return GM_EXIT_OK;
}

/* Whether a write to the output's file failed (the one renamed into place,
 * or the stage for standard output): a full disk or a file-size limit. */
static bool out_write_failed(const gm_out *o)
{
    FILE *f = o == NULL || o->uo == NULL ? NULL : util_out_fp(o->uo);

    return f != NULL && ferror(f);
}

/* The error line of an envelope failure that was the output's write (see
 * out_write_failed), with what the system said; 0 if it was not. The
 * envelope layer reports such a write as a bare I/O error, or as a
 * library failure when it was OpenSSL's own last write of the S/MIME (an
 * output just over a file-size limit); either reads like a broken message
 * or key. A message found altered is said as such. errno may have been
 * overwritten since the write failed: what is still buffered is written
 * again, and the system says why as it says it now. */
static int out_write_error(const gm_out *o, env_err e, int saved_errno)
{
    int why = saved_errno;

    if (e == ENV_ERR_AUTH || !out_write_failed(o))
        return 0;
    errno = 0;
    if (fflush(util_out_fp(o->uo)) != 0 && errno != 0)
        why = errno;
    if (why != 0)
        gm_err("cannot write %s: %s", o->name != NULL ? o->name : "the output", strerror(why));
    else
        gm_err("cannot write %s", o->name != NULL ? o->name : "the output");
    return 1;
}

/* encrypt and send --encrypt to the pinned group certificate (gc): is
 * it for the key the group server's current certificate is for? After a
 * re-key (`group rotate`; a member's removal from a group that allows
 * local-key rotates, as the removed member may hold a copy of the old
 * key) mail to the pinned key went on silently: readable to whoever holds
 * that key, and once the version is retired to no one (the list bounces
 * it). A renewed certificate for the same key (`group renew-cert`) is the
 * same key: encrypt goes on with the pin, as it does when the server
 * cannot be asked (encrypt needs no server once pinned; a warning says
 * so); a server that has no such group (404) is refused. GM_EXIT_OK, or
 * GM_EXIT_UNREACHABLE (4, as fetch-cert refuses the new certificate), or
 * the exit of a TLS setting that cannot be used, with the line said. */
static int pinned_key_current(const gm_config *c, gs_rest **r, X509 *gc)
{
    STACK_OF(X509) *now = NULL;
    char *pem = NULL, *where = NULL;
    size_t pemlen = 0;
    gs_rest_err e;
    int rc = GM_EXIT_OK;

    if ((rc = rest_lazy(c, r)) != GM_EXIT_OK) /* a TLS setting that cannot be used: said */
        return rc;
    e = gs_rest_group_certificate(*r, c->group, &pem, &pemlen);
    if (e == GS_REST_ERR_NOT_FOUND) {
        /* the server was reached and has no such group (deleted): its key
         * is gone or held by whoever kept a copy; the list takes no mail */
        gm_err("the group server has no group %s (deleted?): not encrypting to its pinned certificate", c->group);
        rc = GM_EXIT_UNREACHABLE;
        goto out;
    }
    if (e != GS_REST_OK || gm_pem_certs((unsigned char *)pem, pemlen, &now) != 0 || sk_X509_num(now) < 1) {
        /* offline, or a server (or what answers in its name) that cannot
         * say: the pin, as encrypt needs no server once pinned, but said,
         * as whether the group was re-keyed was not learnt. Refusing
         * would guard nothing: who can answer for the server can as well
         * drop the connection. */
        const char *d = e != GS_REST_OK ? gs_rest_last_detail(*r) : "";
        gm_err("warning: could not ask the group server whether group %s has a new key (%s%s%s): encrypting to "
               "the pinned certificate",
               c->group, e != GS_REST_OK ? gs_rest_strerror(e) : "its certificate is not PEM", d[0] ? ": " : "", d);
        goto out;
    }
    if (EVP_PKEY_eq(X509_get0_pubkey(sk_X509_value(now, 0)), X509_get0_pubkey(gc)) != 1) {
        where = gm_pin_path(c);
        gm_err("the group has a new key: its current certificate differs from the one pinned in %s (re-key?): "
               "check, then fetch-cert --repin",
               where != NULL ? where : "the store");
        rc = GM_EXIT_UNREACHABLE;
    }
out:
    ERR_clear_error();
    free(where);
    free(pem);
    sk_X509_pop_free(now, X509_free);
    return rc;
}

/* o: the output written (its write failures named), or NULL. */
static int encrypt_to(const gm_config *c, gs_rest **r, BIO *in, BIO *out, const gm_out *o)
{
    X509 *gc = NULL;
    env_encrypt_opts eo = {0};
    env_err e;
    int rc;

    if ((rc = group_cert_get(c, r, true, &gc)) != GM_EXIT_OK)
        return rc;
    /* As fetch-cert refuses an expired group certificate, encrypt does
     * not use one it pinned or was given: the list may have moved on. */
    char why[96];
    if (util_cert_valid_now(gc, why, sizeof(why)) != 0) {
        if (c->group_cert != NULL)
            gm_err("the group certificate in %s %s: get the renewed one", c->group_cert, why);
        else
            gm_err("the group certificate pinned for %s %s: get the renewed one with fetch-cert --repin", c->group,
                   why);
        rc = GM_EXIT_UNREACHABLE;
        goto out;
    }
    if (c->group_cert == NULL && (rc = pinned_key_current(c, r, gc)) != GM_EXIT_OK)
        goto out;
    eo.cipher = c->cbc ? ENV_CIPHER_AES256_CBC : ENV_CIPHER_AES256_GCM;
    /* OAEP with SHA-1 (the CMS default parameters) unless asked: tokens
     * such as SoftHSM 2.6 decrypt OAEP with SHA-1 only. */
    eo.kt = (c->oaep != NULL && strcmp(c->oaep, "sha256") == 0) ? ENV_KT_RSA_OAEP_SHA256 : ENV_KT_RSA_OAEP_SHA1;
    if (c->oaep != NULL && strcmp(c->oaep, "sha256") != 0 && strcmp(c->oaep, "sha1") != 0) {
        gm_err("--oaep must be sha1 or sha256");
        rc = GM_EXIT_USAGE;
        goto out;
    }
    eo.out_format = ENV_FORMAT_SMIME;
    if (c->format != NULL) {
        if (strcmp(c->format, "pem") == 0)
            eo.out_format = ENV_FORMAT_PEM;
        else if (strcmp(c->format, "der") == 0)
            eo.out_format = ENV_FORMAT_DER;
        else if (strcmp(c->format, "smime") != 0) {
            gm_err("--format must be smime, pem or der");
            rc = GM_EXIT_USAGE;
            goto out;
        }
    }
    eo.input_is_mime = c->mime;
    if ((e = env_encrypt(&eo, &gc, 1, in, out)) != ENV_OK) {
        if (out_write_error(o, e, errno)) {
            rc = GM_EXIT_ERROR;
            goto out;
        }
        gm_err("encryption failed: %s", env_strerror(e));
        rc = e == ENV_ERR_CERT ? GM_EXIT_ERROR : gm_env_exit(e);
        if (rc == GM_EXIT_BAD_MESSAGE && c->mime)
            gm_err("(with --mime the input must be an RFC 5322 message)");
        goto out;
    }
    rc = GM_EXIT_OK;
out:
    X509_free(gc);
    return rc;
}

static int cmd_encrypt(gm_config *c)
{
    gs_rest *r = NULL;
    BIO *in = NULL;
    gm_out o = {0};
    int rc;

    if ((rc = open_in(c, &in)) != GM_EXIT_OK)
        goto out;
    if ((rc = out_open(c, &o, 0644, false)) != GM_EXIT_OK)
        goto out;
    if ((rc = encrypt_to(c, &r, in, o.bio, &o)) != GM_EXIT_OK)
        goto out;
    rc = out_commit(&o);
out:
    out_abort(&o);
    BIO_free(in);
    gs_rest_free(r);
    return rc;
}

/* ---- send (SMTP via libcurl) --------------------------------------------------- */

/* Copies src to dst with CRLF line ends, adding To/From if the header
 * block lacks them. */
static int smtp_prepare(FILE *src, FILE *dst, const char *to, const char *from)
{
    char line[8192];
    bool in_headers = true, have_to = false, have_from = false, first = true;
    FILE *hdr = tmpfile();

    if (hdr == NULL)
        return -1;
    /* headers go to hdr first so To/From can be added before them */
    while (fgets(line, sizeof(line), src) != NULL) {
        size_t n = strlen(line);
        bool eol = n > 0 && line[n - 1] == '\n';
        if (eol) {
            line[--n] = '\0';
            if (n > 0 && line[n - 1] == '\r')
                line[--n] = '\0';
        }
        if (in_headers && first && n == 0)
            in_headers = false;
        if (in_headers) {
            if (n == 0) {
                if (!have_to)
                    fprintf(dst, "To: %s\r\n", to);
                if (!have_from && from != NULL)
                    fprintf(dst, "From: %s\r\n", from);
                rewind(hdr);
                int ch;
                while ((ch = fgetc(hdr)) != EOF)
                    fputc(ch, dst);
                in_headers = false;
                fputs("\r\n", dst);
                first = false;
                continue;
            }
            /* "To :" too (obsolete syntax, which readers take): else a
             * second To would be added */
            if (mail_field_is(line, n, "To"))
                have_to = true;
            if (mail_field_is(line, n, "From"))
                have_from = true;
            fprintf(hdr, "%s%s", line, eol ? "\r\n" : "");
        } else {
            fprintf(dst, "%s%s", line, eol ? "\r\n" : "");
        }
        first = false;
    }
    fclose(hdr);
    return ferror(src) || ferror(dst) || in_headers ? -1 : 0;
}

/* The SMTP server's last reply line, and its last 4xx/5xx one (the QUIT
 * that follows a failure answers 221), each cut and reduced to printable
 * ASCII: they go into our one-line error, whatever the server sent. */
typedef struct smtp_reply {
    char line[200];
    char failed[200];
} smtp_reply;

static size_t smtp_read(char *buf, size_t size, size_t nitems, void *userdata)
{
    return fread(buf, size, nitems, (FILE *)userdata);
}

static int smtp_debug(CURL *cu, curl_infotype type, char *data, size_t size, void *userp)
{
    smtp_reply *r = userp;
    size_t o = 0;

    (void)cu;
    if (type != CURLINFO_HEADER_IN) /* only the server's replies, never the message */
        return 0;
    for (size_t i = 0; i < size && o + 1 < sizeof(r->line); i++) {
        unsigned char ch = (unsigned char)data[i];
        if (ch == '\r' || ch == '\n')
            break;
        r->line[o++] = ch >= 32 && ch < 127 ? (char)ch : '?';
    }
    r->line[o] = '\0';
    if (r->line[0] == '4' || r->line[0] == '5')
        memcpy(r->failed, r->line, sizeof(r->failed));
    return 0;
}

/* The exit code and one line for a failed SMTP transaction: a local file
 * that cannot be read is a local error (1); a 5xx reply is a refusal (3); a
 * 4xx, a lost or refused connection, a timeout or a reply that is not SMTP
 * is temporary (4: send again later). */
static int smtp_fail(CURL *cu, CURLcode cc, const char *errbuf, const smtp_reply *reply)
{
    long code = 0;
    const char *why = errbuf[0] != '\0' ? errbuf : curl_easy_strerror(cc);

    if (curl_easy_getinfo(cu, CURLINFO_RESPONSE_CODE, &code) != CURLE_OK)
        code = 0;
    /* A local file (--smtp-cacert, [smtp] cacert, the message) that cannot
     * be read is a local error: sending again would fail the same way. */
    if (cc == CURLE_SSL_CACERT_BADFILE || cc == CURLE_SSL_CRL_BADFILE || cc == CURLE_READ_ERROR) {
        gm_err("SMTP: %s", why);
        return GM_EXIT_ERROR;
    }
    /* libcurl logs in only where the server offers AUTH with a mechanism
     * it knows; else it stops here too (no reply to quote), before MAIL. */
    if (cc == CURLE_LOGIN_DENIED) {
        if (reply->failed[0] != '\0')
            gm_err("SMTP: the server refused the login (--smtp-user, --smtp-password-file): %s", reply->failed);
        else
            gm_err("SMTP: the server offers no AUTH login that groupmail can use; nothing was sent");
        return GM_EXIT_REFUSED;
    }
    if (cc == CURLE_USE_SSL_FAILED) {
        gm_err("SMTP: the server does not offer STARTTLS, which --smtp-starttls ([smtp] starttls = required) "
               "requires; nothing was sent");
        return GM_EXIT_UNREACHABLE;
    }
    if (code >= 500 && code <= 599) {
        gm_err("SMTP: the server refused the message: %s", reply->failed);
        return GM_EXIT_REFUSED;
    }
    if (code >= 400 && code <= 499) {
        gm_err("SMTP: the server deferred the message (temporary, send it again later): %s", reply->failed);
        return GM_EXIT_UNREACHABLE;
    }
    gm_err("SMTP delivery failed (connection refused, lost or timed out, or not an SMTP reply; send it again "
           "later): %s%s%s",
           why, reply->line[0] != '\0' ? "; last reply: " : "", reply->line);
    return GM_EXIT_UNREACHABLE;
}

/* Checks the SMTP options and reads the AUTH password, if any, into *pw
 * (the caller wipes it with util_secret_free). A password goes only over
 * TLS nobody can strip: smtps://, or STARTTLS required (with `yes`, a relay
 * or anyone on the path that hides STARTTLS would be sent it in clear).
 * Returns GM_EXIT_OK, GM_EXIT_USAGE or GM_EXIT_ERROR, after one line. */
static int smtp_password(const gm_config *c, char **pw, size_t *pwlen)
{
    *pw = NULL;
    *pwlen = 0;
    if ((c->smtp_user == NULL) != (c->smtp_password_file == NULL)) {
        gm_err("SMTP AUTH needs both --smtp-user and --smtp-password-file ([smtp] user and password_file)");
        return GM_EXIT_USAGE;
    }
    if (c->smtp_user == NULL)
        return GM_EXIT_OK;
    /* Over a connection that may stay clear, only where [smtp]
     * auth_in_clear says: never by default, a server on this host, or
     * anywhere (the user's explicit choice). */
    util_auth_clear rule = UTIL_AUTH_CLEAR_NO; /* unset: never (a value was checked as the file was read) */
    (void)util_auth_clear_parse(c->smtp_auth_in_clear, &rule);
    if (strncasecmp(c->smtp, "smtps://", 8) != 0 && c->smtp_starttls != GM_STARTTLS_REQUIRED &&
        !util_auth_clear_allows(rule, c->smtp)) {
        gm_err("refusing to send the SMTP password in clear: use smtps:// or --smtp-starttls ([smtp] starttls = "
               "required)%s",
               rule == UTIL_AUTH_CLEAR_LOOPBACK ? "; [smtp] auth_in_clear = loopback allows only a server on this host"
                                                : "");
        return GM_EXIT_USAGE;
    }
    errno = 0;
    int rc = util_read_pin_source(c->smtp_password_file, pw, pwlen);
    int e = errno; /* the system's reason for UTIL_E_IO */
    switch (rc) {
    case UTIL_OK:
        util_forget_env_source(c->smtp_password_file); /* an env: password leaves /proc/PID/environ */
        return GM_EXIT_OK;
    case UTIL_E_NOTFOUND: gm_err("SMTP password: %s not found", c->smtp_password_file); break;
    case UTIL_E_PERM:
        gm_err("SMTP password: %s is readable by group or others (chmod 600 it)", c->smtp_password_file);
        break;
    case UTIL_E_TOOBIG: gm_err("SMTP password: %s holds more than a password", c->smtp_password_file); break;
    /* Anything else with its reason (a file another user owns:
     * "Permission denied"; a link that loops; an empty file), as the
     * token's PIN sources say it. */
    default:
        gm_err("SMTP password: cannot read %s: %s", c->smtp_password_file, util_pin_source_why(rc, e));
        break;
    }
    return GM_EXIT_ERROR;
}

/* An address groupsrv and the exploder take (common/mailaddr.h), else a
 * usage error naming it and why, before anything is read or sent.
 * new_record: it becomes a record (csr's certificate identity), by the
 * strict rule; else it names one that may exist (a list, a member's own
 * address as a sender), by the rule the exploder reads those with, so an
 * address an older rule stored (a '_' in the domain) still sends. */
static int check_address(const char *what, const char *addr, int new_record)
{
    const char *why = mailaddr_refusal(addr, new_record);
    char q[96];

    if (why == NULL)
        return GM_EXIT_OK;
    if (!new_record && mailaddr_problem(addr) != NULL)
        why = mailaddr_problem(addr); /* the more precise reason, when the strict rule has one */
    if (*addr == '\0')
        gm_err("%s: an empty address (a comma too many?)", what);
    else
        gm_err("%s: not an email address: %s: %s", what, log_quote(q, sizeof(q), addr), why);
    return GM_EXIT_USAGE;
}

/* The address of a comma-separated list (spaces around) at p, into addr
 * (MAILADDR_MAX + 1 octets of it at most: too long, whatever follows);
 * returns where the next one starts. The one splitter of --to, for its
 * check and for the RCPT TOs sent: they are the same addresses. */
static const char *next_address(const char *p, char addr[MAILADDR_MAX + 2])
{
    const char *e;
    size_t n;

    while (*p == ' ')
        p++;
    e = p + strcspn(p, ",");
    n = (size_t)(e - p);
    while (n > 0 && p[n - 1] == ' ')
        n--;
    if (n > MAILADDR_MAX)
        n = MAILADDR_MAX + 1;
    memcpy(addr, p, n);
    addr[n] = '\0';
    return *e == ',' ? e + 1 : e;
}

/* Whether list goes on at p (next_address's answer): a comma always has
 * an address after it, if an empty one ("a," ends in one). */
static bool more_addresses(const char *list, const char *p)
{
    return *p != '\0' || (p != list && p[-1] == ',');
}

/* check_address for each address of a comma-separated list. */
static int check_addresses(const char *what, const char *list)
{
    char addr[MAILADDR_MAX + 2];
    const char *p = list;

    do {
        p = next_address(p, addr);
        if (check_address(what, addr, 0) != GM_EXIT_OK)
            return GM_EXIT_USAGE;
    } while (more_addresses(list, p));
    return GM_EXIT_OK;
}

static int cmd_send(gm_config *c)
{
    gs_rest *r = NULL;
    BIO *in = NULL, *tb = NULL;
    FILE *enc = NULL, *wire = NULL;
    env_message *msg = NULL;
    CURL *cu = NULL;
    struct curl_slist *rcpts = NULL, *t;
    char addr[MAILADDR_MAX + 2], errbuf[CURL_ERROR_SIZE] = "", *pw = NULL;
    size_t pwlen = 0;
    int rc = GM_EXIT_ERROR;
    env_err e;
    smtp_reply reply = {"", ""};

    if (need(c->smtp, "--smtp smtp://HOST:PORT") || need(c->to, "--to LIST@DOMAIN"))
        return GM_EXIT_USAGE;
    if (strncasecmp(c->smtp, "smtp://", 7) != 0 && strncasecmp(c->smtp, "smtps://", 8) != 0) {
        gm_err("--smtp must be smtp:// or smtps://");
        return GM_EXIT_USAGE;
    }
    /* A login in the URL (user:password@, ;AUTH=): libcurl would use it
     * past every check of --smtp-user below, and a password on a command
     * line is anyone's to read in ps. Not echoed: it may be a password. */
    if (util_url_has_userinfo(c->smtp)) {
        gm_err("--smtp: a user or password in the URL is not taken: use --smtp-user and --smtp-password-file "
               "([smtp] user and password_file)");
        return GM_EXIT_USAGE;
    }
    /* TLS asked for by a flag where there is none, or where it is not
     * STARTTLS: the user believes in a check that would never be made */
    bool smtps = strncasecmp(c->smtp, "smtps://", 8) == 0;
    if (smtps && c->smtp_starttls_flag) {
        gm_err("--smtp-starttls does not apply to smtps:// (TLS from the first byte) (see groupmail --help)");
        return GM_EXIT_USAGE;
    }
    if (!smtps && c->smtp_cacert_flag && c->smtp_starttls != GM_STARTTLS_YES &&
        c->smtp_starttls != GM_STARTTLS_REQUIRED) {
        gm_err("--smtp-cacert applies only to TLS: smtps://, or smtp:// with --smtp-starttls ([smtp] starttls = "
               "yes or required) (see groupmail --help)");
        return GM_EXIT_USAGE;
    }
    if ((rc = check_addresses("--to", c->to)) != GM_EXIT_OK ||
        (c->from != NULL && (rc = check_address("--from ([smtp] from)", c->from, 0)) != GM_EXIT_OK))
        return rc;
    if ((rc = smtp_password(c, &pw, &pwlen)) != GM_EXIT_OK)
        goto out;
    if ((rc = open_in(c, &in)) != GM_EXIT_OK)
        goto out;
    rc = GM_EXIT_ERROR;
    /* Until it is known to be encrypted, the input may be plaintext sent
     * by mistake: it is staged in memory, never in a disk file. */
    enc = c->encrypt_first ? tmpfile() : util_memory_file("groupmail-send");
    if (enc == NULL || (wire = tmpfile()) == NULL || (tb = BIO_new_fp(enc, BIO_NOCLOSE)) == NULL) {
        gm_err("cannot create a temporary file");
        goto out;
    }
    if (c->encrypt_first) {
        if ((rc = encrypt_to(c, &r, in, tb, NULL)) != GM_EXIT_OK)
            goto out;
    } else {
        char buf[65536];
        size_t total = 0;
        int n;
        while ((n = BIO_read(in, buf, sizeof(buf))) > 0) {
            if ((total += (size_t)n) > GM_MEMORY_STAGE_MAX) {
                gm_err("the message is over %zu MiB, more than send takes", GM_MEMORY_STAGE_MAX / (1024 * 1024));
                break;
            }
            if (BIO_write(tb, buf, n) != n)
                break;
        }
        OPENSSL_cleanse(buf, sizeof(buf));
        if (n > 0)
            goto out;
    }
    if (BIO_flush(tb) != 1 || fseek(enc, 0, SEEK_SET) != 0)
        goto out;
    /* Never send plaintext by mistake: the message must be S/MIME enveloped. */
    BIO_free(tb);
    if ((tb = BIO_new_fp(enc, BIO_NOCLOSE)) == NULL)
        goto out;
    if ((e = env_message_read(tb, ENV_FORMAT_SMIME, 0, &msg)) != ENV_OK) {
        gm_err("refusing to send: the input is not an S/MIME encrypted message (%s); use --encrypt",
               env_strerror(e));
        rc = GM_EXIT_BAD_MESSAGE;
        goto out;
    }
    if (fseek(enc, 0, SEEK_SET) != 0 || smtp_prepare(enc, wire, c->to, c->from) != 0 || fflush(wire) != 0 ||
        fseek(wire, 0, SEEK_SET) != 0) {
        gm_err("cannot prepare the message for SMTP");
        goto out;
    }
    /* the addresses check_addresses took, as it split them */
    for (const char *p = c->to; more_addresses(c->to, p);) {
        p = next_address(p, addr);
        if ((t = curl_slist_append(rcpts, addr)) == NULL)
            goto out;
        rcpts = t;
    }
    if ((cu = curl_easy_init()) == NULL)
        goto out;
    curl_easy_setopt(cu, CURLOPT_URL, c->smtp);
    /* a server on this host directly, never through a proxy the environment
     * names (all_proxy): auth_in_clear = loopback would otherwise send the
     * password in clear to the proxy's host, and on to a server there */
    if (util_url_host_is_loopback(c->smtp))
        curl_easy_setopt(cu, CURLOPT_PROXY, "");
    curl_easy_setopt(cu, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
    curl_easy_setopt(cu, CURLOPT_MAIL_FROM, c->from != NULL ? c->from : "");
    curl_easy_setopt(cu, CURLOPT_MAIL_RCPT, rcpts);
    curl_easy_setopt(cu, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(cu, CURLOPT_READFUNCTION, smtp_read);
    curl_easy_setopt(cu, CURLOPT_READDATA, wire);
    curl_easy_setopt(cu, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(cu, CURLOPT_DEBUGFUNCTION, smtp_debug);
    curl_easy_setopt(cu, CURLOPT_DEBUGDATA, &reply);
    curl_easy_setopt(cu, CURLOPT_VERBOSE, 1L); /* feeds smtp_debug; it prints nothing */
    curl_easy_setopt(cu, CURLOPT_CONNECTTIMEOUT, c->timeout);
    curl_easy_setopt(cu, CURLOPT_TIMEOUT, c->timeout * 4);
    /* An smtps:// server is verified against the system's CAs or [smtp]
     * cacert, never [server] cacert: that CA vouches for the group
     * servers, not for whoever runs the mail server. */
    if (c->smtp_cacert != NULL)
        curl_easy_setopt(cu, CURLOPT_CAINFO, c->smtp_cacert);
    if (c->smtp_starttls == GM_STARTTLS_YES)
        curl_easy_setopt(cu, CURLOPT_USE_SSL, (long)CURLUSESSL_TRY);
    else if (c->smtp_starttls == GM_STARTTLS_REQUIRED)
        curl_easy_setopt(cu, CURLOPT_USE_SSL, (long)CURLUSESSL_ALL);
    if (pw != NULL) {
        /* libcurl keeps its own copies until curl_easy_cleanup (and frees
         * them without wiping): ours is wiped below either way. */
        curl_easy_setopt(cu, CURLOPT_USERNAME, c->smtp_user);
        curl_easy_setopt(cu, CURLOPT_PASSWORD, pw);
    }
    gm_progress(c, "sending to %s via %s", c->to, c->smtp);
    CURLcode cc = curl_easy_perform(cu);
    if (cc != CURLE_OK) {
        rc = smtp_fail(cu, cc, errbuf, &reply);
        goto out;
    }
    rc = GM_EXIT_OK;
out:
    if (cu != NULL)
        curl_easy_cleanup(cu);
    util_secret_free(pw, pwlen);
    curl_slist_free_all(rcpts);
    env_message_free(msg);
    BIO_free(tb);
    BIO_free(in);
    if (enc != NULL)
        fclose(enc);
    if (wire != NULL)
        fclose(wire);
    gs_rest_free(r);
    return rc;
}

/* ---- decrypt and unwrap --------------------------------------------------------- */

enum via { VIA_TLS, VIA_RECIPIENT_KEY, VIA_MEMBERSHIP_CERT, VIA_GROUP_SECRET, VIA_LOCAL_KEY, VIA_OWN_KEY };

static int parse_via(const char *s, enum via *v)
{
    static const char *names[] = {"tls", "recipient-key", "membership-cert", "group-secret", "local-key", "own-key"};
    for (size_t i = 0; s != NULL && i < GS_ARRAY_LEN(names); i++)
        if (strcmp(s, names[i]) == 0) {
            *v = (enum via)i;
            return 0;
        }
    gm_err("--via must be tls, recipient-key, membership-cert, group-secret, local-key or own-key");
    return -1;
}

/* The most RecipientInfos older_unpinned_ri has the server decide between. */
#define GM_GUESS_MAX 4

/* The state of one decrypt/unwrap run. */
typedef struct job {
    gm_config *c;
    gs_rest *r;
    env_message *msg;
    X509 *group_cert;
    unsigned char *ri;  /* the group's RecipientInfo, DER */
    size_t ri_len;
    bool offline;       /* local-key: the server is not asked (older_unpinned_ri) */
    bool guessed;       /* ri is older_unpinned_ri's: the server says whether it is the group's */
    size_t guess[GM_GUESS_MAX]; /* older_unpinned_ri's RecipientInfos (indexes), in the order asked */
    size_t nguess, guess_at;    /* how many; which one ri is */
} job;

static void job_clear(job *j)
{
    gs_rest_free(j->r);
    env_message_free(j->msg);
    X509_free(j->group_cert);
    free(j->ri);
}

/* The message's own KEKRI, if any. */
static env_recipient *message_kekri(env_message *msg)
{
    for (size_t i = 0; msg != NULL && i < env_message_recipient_count(msg); i++) {
        unsigned char *der = NULL;
        size_t len = 0;
        env_recipient *ri = NULL;
        if (env_message_recipient_der(msg, i, &der, &len) == ENV_OK && env_recipient_parse(der, len, &ri) == ENV_OK &&
            env_recipient_type(ri) == ENV_RI_KEKRI) {
            free(der);
            return ri;
        }
        env_recipient_free(ri);
        free(der);
    }
    return NULL;
}

/* The index of the message's RecipientInfo for the group: its current
 * certificate (j->group_cert), else, when that is the pinned one, a key
 * version pinned before a re-key. env_message_find_recipient's errors. */
static env_err group_ri_index(const job *j, size_t *idx)
{
    STACK_OF(X509) *pinned = NULL;
    env_err e = env_message_find_recipient(j->msg, j->group_cert, idx);

    if (e != ENV_ERR_NO_RECIPIENT || j->c->group_cert != NULL || gm_pin_load(j->c, &pinned) != 0)
        return e;
    for (int i = 1; i < sk_X509_num(pinned) && e == ENV_ERR_NO_RECIPIENT; i++)
        if (older_version(pinned, i))
            e = env_message_find_recipient(j->msg, sk_X509_value(pinned, i), idx);
    sk_X509_pop_free(pinned, X509_free);
    return e;
}

/* Is ri for one of our own certificates (--cert, --tls-cert)? */
static bool ri_is_own(const gm_config *c, const env_recipient *ri)
{
    const char *paths[] = {c->cert, c->tls_cert};
    bool own = false;

    for (size_t i = 0; i < GS_ARRAY_LEN(paths) && !own; i++) {
        X509 *x = paths[i] != NULL ? gm_read_cert_file_quiet(paths[i]) : NULL;
        own = x != NULL && env_recipient_matches_cert(ri, x);
        X509_free(x);
    }
    return own;
}

/* Mail to a key version the pin never held. A pin made after a re-key (a
 * new member, a new store) holds the current version alone, so mail sent
 * to an older one (before the re-key, or by a sender who still has its
 * certificate) named no pinned certificate and was exit 5, although the
 * server still unwraps it. When the pin is still the server's current
 * certificate, the message cannot be to a newer version (that stays exit 5
 * until fetch-cert --repin): its RecipientInfos that name the group's CA
 * as issuer, or a certificate by subjectKeyIdentifier alone (`openssl cms
 * -keyid`: no issuer is named, so it may be a version's), other than one
 * for our own certificate, are taken, and the
 * server says whether one is a version of the group (unknown_recipient,
 * exit 5, if none is). There may be several: the sender's own certificate
 * when the group's CA issued it (`member add --issue-cert`; Thunderbird
 * and Outlook add the sender to every message), which the server refuses
 * as unknown_recipient before any key is used, and the next one is asked
 * (job_next_guess); more than GM_GUESS_MAX are not tried. *idx is set (the
 * first) and *found true when taken; an exit code otherwise only when the
 * server could not be asked. */
static int older_unpinned_ri(job *j, size_t *idx, bool *found)
{
    gm_config *c = j->c;
    size_t n = 0;
    char *pem = NULL;
    size_t pemlen = 0;
    STACK_OF(X509) *chain = NULL;
    gs_rest_err e;
    int rc = GM_EXIT_OK;

    *found = false;
    if (c->group_cert != NULL || j->offline || j->group_cert == NULL || c->server == NULL || c->group == NULL)
        return GM_EXIT_OK;
    j->nguess = j->guess_at = 0;
    for (size_t i = 0; i < env_message_recipient_count(j->msg) && n <= GM_GUESS_MAX; i++) {
        unsigned char *der = NULL;
        size_t len = 0;
        env_recipient *ri = NULL;
        if (env_message_recipient_der(j->msg, i, &der, &len) == ENV_OK && env_recipient_parse(der, len, &ri) == ENV_OK &&
            (env_recipient_names_issuer_of(ri, j->group_cert) || env_recipient_names_key_id(ri)) &&
            !ri_is_own(c, ri)) {
            if (n < GM_GUESS_MAX)
                j->guess[n] = i;
            n++;
        }
        env_recipient_free(ri);
        free(der);
    }
    if (n == 0 || n > GM_GUESS_MAX)
        return GM_EXIT_OK;
    if ((rc = rest_lazy(c, &j->r)) != GM_EXIT_OK)
        return rc;
    gm_progress(c, "checking that the pinned certificate of group %s is its current one", c->group);
    if ((e = gs_rest_group_certificate(j->r, c->group, &pem, &pemlen)) != GS_REST_OK)
        return gm_rest_fail(j->r, e, "group certificate");
    if (gm_pem_certs((unsigned char *)pem, pemlen, &chain) != 0) {
        gm_err("the server's group certificate is not PEM");
        rc = GM_EXIT_UNREACHABLE;
        goto out;
    }
    if (X509_cmp(sk_X509_value(chain, 0), j->group_cert) == 0) {
        j->nguess = n;
        *idx = j->guess[0];
        *found = true;
    }
out:
    sk_X509_pop_free(chain, X509_free);
    free(pem);
    return rc;
}

static void not_for_group(const job *j)
{
    gm_err("the message is not encrypted to group %s (a copy the list re-encrypted to members is "
           "decrypted with your own key: --via own-key --cert FILE --key FILE; mail to a group key "
           "newer than the pinned one needs fetch-cert --repin)",
           j->c->group ? j->c->group : "(--group-cert)");
}

/* An unwrap refused as unknown_recipient for a RecipientInfo
 * older_unpinned_ri took, with another one left: that one becomes j->ri
 * and true is said (ask again). */
static bool job_next_guess(job *j, gs_rest *r, gs_rest_err e)
{
    unsigned char *der = NULL;
    size_t len = 0;

    if (!j->guessed || e != GS_REST_ERR_REJECTED || strcmp(gs_rest_last_code(r), "unknown_recipient") != 0 ||
        j->guess_at + 1 >= j->nguess ||
        env_message_recipient_der(j->msg, j->guess[j->guess_at + 1], &der, &len) != ENV_OK)
        return false;
    j->guess_at++;
    free(j->ri);
    j->ri = der;
    j->ri_len = len;
    gm_progress(j->c, "not a version of the group; asking with the next RecipientInfo that names its CA");
    return true;
}

/* An unwrap refused: for a RecipientInfo older_unpinned_ri took, the
 * server's unknown_recipient means the message is not for the group, and
 * is said as when no RecipientInfo named it. */
static int job_unwrap_fail(const job *j, gs_rest *r, gs_rest_err e)
{
    if (j->guessed && e == GS_REST_ERR_REJECTED && strcmp(gs_rest_last_code(r), "unknown_recipient") == 0) {
        not_for_group(j);
        return GM_EXIT_BAD_MESSAGE;
    }
    return gm_rest_fail(r, e, "unwrap");
}

/* Finds the group's RecipientInfo in the message (or reads --recipient-info). */
static int job_group_ri(job *j)
{
    size_t idx = 0;
    env_err e;
    int rc;

    if (j->ri != NULL)
        return GM_EXIT_OK;
    if (j->msg == NULL) {
        gm_err("no message");
        return GM_EXIT_USAGE;
    }
    /* local-key may have loaded it already: loading again would leak it */
    if (j->group_cert == NULL && (rc = group_cert_get(j->c, &j->r, true, &j->group_cert)) != GM_EXIT_OK)
        return rc;
    if ((e = group_ri_index(j, &idx)) == ENV_ERR_NO_RECIPIENT) {
        bool found = false;
        if ((rc = older_unpinned_ri(j, &idx, &found)) != GM_EXIT_OK)
            return rc;
        if (found) {
            e = ENV_OK;
            j->guessed = true;
        }
    }
    if (e != ENV_OK) {
        env_recipient *kri = e == ENV_ERR_NO_RECIPIENT ? message_kekri(j->msg) : NULL;
        if (kri != NULL) /* the exploder's group-secret copy: its only RecipientInfo is a KEKRI */
            gm_err("the message is not encrypted to group %s but to a group secret key (a copy the list "
                   "re-encrypted in group-secret mode): --via group-secret",
                   j->c->group ? j->c->group : "(--group-cert)");
        else if (e == ENV_ERR_NO_RECIPIENT)
            not_for_group(j);
        else
            gm_err("bad message: %s", env_strerror(e));
        env_recipient_free(kri);
        return gm_env_exit(e);
    }
    if ((e = env_message_recipient_der(j->msg, idx, &j->ri, &j->ri_len)) != ENV_OK) {
        gm_err("bad message: %s", env_strerror(e));
        return gm_env_exit(e);
    }
    return GM_EXIT_OK;
}

/* What the server needs to know the content key's length: the message's
 * content algorithm, or --content-algorithm with a bare --recipient-info. */
static const char *job_content_alg(const job *j)
{
    return j->msg != NULL ? env_message_content_alg(j->msg) : j->c->content_algorithm;
}

static int job_unwrap(job *j, gs_deliver d, gs_unwrap_result *res)
{
    gs_unwrap_req req = {0};
    gs_rest_err e;
    int rc;

    if ((rc = job_group_ri(j)) != GM_EXIT_OK)
        return rc;
    if (need(j->c->group, "--group G"))
        return GM_EXIT_USAGE;
    if ((rc = rest_lazy(j->c, &j->r)) != GM_EXIT_OK)
        return rc;
    req.recipient_info = j->ri;
    req.recipient_info_len = j->ri_len;
    req.deliver = d;
    req.content_algorithm = job_content_alg(j);
    gm_progress(j->c, "asking %s to unwrap (deliver=%s)", j->c->server, gs_deliver_name(d));
    while ((e = gs_rest_unwrap(j->r, j->c->group, &req, res)) != GS_REST_OK) {
        if (!job_next_guess(j, j->r, e))
            return job_unwrap_fail(j, j->r, e);
        gs_unwrap_result_clear(res);
        req.recipient_info = j->ri;
        req.recipient_info_len = j->ri_len;
    }
    return GM_EXIT_OK;
}

/* Membership certificate (method G): cached (unless fresh; *cached says
 * whether it was), else a fresh key pair and a certificate from the
 * certificate server. */
static int membership_cert(job *j, gm_mcert *mc, bool fresh, bool *cached)
{
    gm_config *c = j->c;
    gs_group_info gi = {0};
    char *csr = NULL, *cert = NULL;
    size_t csrlen = 0, certlen = 0;
    const char *url = c->certsrv;
    gs_rest_err e;
    int rc;

    *cached = false;
    if (need(c->server, "--server URL") || need(c->group, "--group G"))
        return GM_EXIT_USAGE;
    /* A usage error as --server's (gm_rest_open), before anything is
     * made or sent: it was found only after a key pair was made, exit 1. */
    if (url != NULL && !gs_rest_url_ok(url)) {
        gm_err("cannot use certificate server URL %s: %s", url, gs_rest_url_why(url));
        return GM_EXIT_USAGE;
    }
    if (!fresh && gm_mcert_load(c, MC_MIN_VALIDITY, mc) == 0) {
        *cached = true;
        return GM_EXIT_OK;
    }
    /* the certificate server wants the member's own TLS identity */
    if ((rc = gm_tls_token_prepare(c)) != GM_EXIT_OK)
        return rc;
    if ((rc = rest_lazy(c, &j->r)) != GM_EXIT_OK)
        return rc;
    if (url == NULL) {
        if ((e = gs_rest_group_info(j->r, c->group, &gi)) != GS_REST_OK)
            return gm_rest_fail(j->r, e, "group info");
        if (gi.certificate_server[0] == '\0') {
            gm_err("group %s has no certificate server (give --certsrv URL)", c->group);
            rc = GM_EXIT_REFUSED;
            goto out;
        }
        url = gi.certificate_server;
        /* the server's answer, not the user's: unusable, as a malformed one */
        if (!gs_rest_url_ok(url)) {
            gm_err("group info: the server names a certificate server that is not https:// (give --certsrv URL)");
            rc = GM_EXIT_UNREACHABLE;
            goto out;
        }
    }
    rc = GM_EXIT_ERROR;
    if (gm_mcert_new_key(mc, &csr, &csrlen) != 0)
        goto out;
    gm_progress(c, "requesting a membership certificate from %s", url);
    if ((e = gs_rest_membership_certificate(j->r, url, c->group, csr, csrlen, &cert, &certlen)) != GS_REST_OK) {
        rc = gm_rest_fail(j->r, e, "membership certificate");
        goto out;
    }
    if ((rc = gm_mcert_accept(c, mc, cert, certlen)) != GM_EXIT_OK)
        goto out;
    rc = GM_EXIT_OK;
out:
    if (rc != GM_EXIT_OK)
        gm_mcert_clear(mc);
    gs_group_info_clear(&gi);
    free(csr);
    free(cert);
    return rc;
}

static int cmd_certify(gm_config *c)
{
    job j = {.c = c};
    gm_mcert mc = {0};
    char *p = NULL;
    bool cached;
    int rc = membership_cert(&j, &mc, false, &cached);
    if (rc == GM_EXIT_OK) {
        BIO *b = BIO_new_fp(stdout, BIO_NOCLOSE);
        p = gm_mcert_path(c);
        printf("%s expires ", p ? p : "");
        fflush(stdout);
        if (b != NULL) {
            ASN1_TIME_print(b, X509_get0_notAfter(mc.cert));
            BIO_free(b);
        }
        printf("\n");
    }
    free(p);
    gm_mcert_clear(&mc);
    job_clear(&j);
    return rc;
}

static int keys_sync(gm_config *c, gs_rest **r, X509 *member_cert)
{
    gs_secret_keys keys = {0};
    gs_rest_err e;
    int rc;

    if (need(c->server, "--server URL") || need(c->group, "--group G"))
        return GM_EXIT_USAGE;
    if ((rc = rest_lazy(c, r)) != GM_EXIT_OK)
        return rc;
    gm_progress(c, "fetching the secret keys of group %s", c->group);
    if ((e = gs_rest_secret_keys(*r, c->group, &keys)) != GS_REST_OK)
        return gm_rest_fail(*r, e, "secret keys");
    rc = gm_secret_store_save(c, member_cert, &keys) == 0 ? GM_EXIT_OK : GM_EXIT_ERROR;
    if (rc == GM_EXIT_OK)
        gm_progress(c, "%zu secret key version(s) stored", keys.n);
    gs_secret_keys_clear(&keys);
    return rc;
}

static int cmd_keys(gm_config *c, const char *sub)
{
    gs_rest *r = NULL;
    X509 *mcert = NULL;
    int rc;

    if (strcmp(sub, "sync") == 0) {
        if (need(c->cert, "--cert FILE (the keys are wrapped to it)") || (mcert = gm_read_cert_file(c->cert)) == NULL)
            return c->cert == NULL ? GM_EXIT_USAGE : GM_EXIT_ERROR;
        if ((rc = gm_need_rsa_tls_cert(c, "keys sync")) != GM_EXIT_OK || (rc = gm_tls_token_prepare(c)) != GM_EXIT_OK) {
            X509_free(mcert);
            return rc;
        }
        rc = keys_sync(c, &r, mcert);
        if (rc == GM_EXIT_OK)
            printf("synced secret keys of %s\n", c->group);
    } else if (strcmp(sub, "list") == 0) {
        long n;
        if (need(c->server, "--server URL") || need(c->group, "--group G"))
            return GM_EXIT_USAGE;
        /* --cert narrows the list to the keys wrapped to that certificate. */
        if (c->cert != NULL && (mcert = gm_read_cert_file(c->cert)) == NULL)
            return GM_EXIT_ERROR;
        n = gm_secret_store_list(c, mcert, stdout);
        rc = n < 0 ? GM_EXIT_ERROR : GM_EXIT_OK;
        if (n == 0)
            gm_progress(c, "no secret keys stored for group %s (run groupmail keys sync)", c->group);
    } else if (strcmp(sub, "transport-key") == 0) {
        rc = gm_cmd_keys_transport(c);
    } else if (strcmp(sub, "import-group-key") == 0) {
        rc = gm_cmd_keys_import(c);
    } else {
        rc = GM_EXIT_USAGE; /* main() refused any other subcommand before */
    }
    X509_free(mcert);
    gs_rest_free(r);
    return rc;
}

/* Content key from a KEKRI with the locally stored group secret key. */
static int cek_from_kekri(job *j, gm_member *m, const env_recipient *kri, bool may_sync, unsigned char *cek,
                          size_t *ceklen)
{
    const unsigned char *kid;
    size_t kidlen, keklen = 0;
    unsigned char kek[MAX_CEK];
    gm_stored_secret ss = {0};
    env_err e;
    int rc;

    if ((e = env_recipient_kek_id(kri, &kid, &kidlen)) != ENV_OK) {
        gm_err("bad KEKRecipientInfo: %s", env_strerror(e));
        return GM_EXIT_BAD_MESSAGE;
    }
    if (gm_secret_store_find(j->c, m->cert, kid, kidlen, &ss) != 0) {
        if (!may_sync) {
            gm_err("no stored group secret key for this message (run groupmail keys sync)");
            return GM_EXIT_BAD_MESSAGE;
        }
        if ((rc = keys_sync(j->c, &j->r, m->cert)) != GM_EXIT_OK)
            return rc;
        if (gm_secret_store_find(j->c, m->cert, kid, kidlen, &ss) != 0) {
            gm_err("the message needs a group secret key this member does not have, and the server does not hand "
                   "it out (a version retired with groupsrv secret retire, or another group's)");
            return GM_EXIT_BAD_MESSAGE;
        }
    }
    rc = GM_EXIT_ERROR;
    if (gm_member_oaep_decrypt(m, ss.sha256, ss.wrapped_key, ss.wrapped_key_len, kek, sizeof(kek), &keklen) != 0)
        goto out;
    if ((e = env_recipient_decrypt_kekri(kri, kek, keklen, cek, MAX_CEK, ceklen)) != ENV_OK) {
        gm_err("cannot unwrap the content key with secret key version %llu: %s", (unsigned long long)ss.version,
               env_strerror(e));
        rc = gm_env_exit(e);
        goto out;
    }
    rc = GM_EXIT_OK;
out:
    OPENSSL_cleanse(kek, sizeof(kek));
    gm_stored_secret_clear(&ss);
    return rc;
}

/* Option C: the group private key on our own token (or in a file). */
static int cek_local_key(job *j, unsigned char *cek, size_t *ceklen)
{
    gm_config *c = j->c;
    hsm_ctx *hc = NULL;
    hsm_key *hk = NULL;
    env_recipient *ri = NULL;
    env_kt_alg alg;
    env_kari_params kp;
    hsm_err he = HSM_OK;
    env_err e;
    int rc;

    memset(&kp, 0, sizeof(kp));
    if (need(c->group_key, "--group-key pkcs11:URI (or [hsm] group_key)"))
        return GM_EXIT_USAGE;
    if (strncmp(c->group_key, "pkcs11:", 7) != 0) {
        gm_err("--group-key must be a pkcs11: URI for local-key (files: use openssl cms -decrypt)");
        return GM_EXIT_USAGE;
    }
    /* The group's RI: by the group certificate if we have one, else the
     * only key-transport/agreement RI of the message. */
    if ((rc = group_cert_get(c, &j->r, false, &j->group_cert)) != GM_EXIT_OK)
        return rc;
    if (j->group_cert != NULL) {
        j->offline = true;
        if ((rc = job_group_ri(j)) != GM_EXIT_OK)
            return rc;
    } else if (env_message_recipient_count(j->msg) == 1) {
        if ((e = env_message_recipient_der(j->msg, 0, &j->ri, &j->ri_len)) != ENV_OK)
            return gm_env_exit(e);
    } else {
        gm_err("several recipients: give --group-cert (or --server/--group with a pinned certificate)");
        return GM_EXIT_USAGE;
    }
    if ((e = env_recipient_parse(j->ri, j->ri_len, &ri)) != ENV_OK) {
        gm_err("bad RecipientInfo: %s", env_strerror(e));
        return gm_env_exit(e);
    }
    if (gm_hsm_open_for(c, c->group_key, &hc, &hk) != 0) {
        rc = GM_EXIT_ERROR;
        goto out;
    }
    rc = GM_EXIT_BAD_MESSAGE;
    if (env_recipient_type(ri) == ENV_RI_KTRI) {
        const unsigned char *ek;
        size_t eklen;
        if ((e = env_recipient_kt_alg(ri, &alg)) != ENV_OK ||
            (e = env_recipient_encrypted_key(ri, NULL, &ek, &eklen)) != ENV_OK) {
            gm_err("the group's RecipientInfo: %s", env_strerror(e));
            goto out;
        }
        if (alg != ENV_KT_RSA_OAEP_SHA1 && alg != ENV_KT_RSA_OAEP_SHA256) {
            gm_err("local-key decrypts RSA-OAEP key transport only");
            goto out;
        }
        hsm_unwrap_input hi = {.group_key = hk,
                               .alg = alg == ENV_KT_RSA_OAEP_SHA256 ? HSM_KT_RSA_OAEP_SHA256 : HSM_KT_RSA_OAEP_SHA1,
                               .encrypted_key = ek,
                               .encrypted_key_len = eklen};
        he = hsm_decrypt_content_key(hc, &hi, cek, MAX_CEK, ceklen);
    } else if (env_recipient_type(ri) == ENV_RI_KARI) {
        if ((e = env_recipient_kari_params(ri, j->group_cert, &kp)) != ENV_OK) {
            gm_err("the group's RecipientInfo: %s", env_strerror(e));
            goto out;
        }
        hsm_ecdh_input ei = {.group_key = hk,
                             .peer_point = kp.peer_point,
                             .peer_point_len = kp.peer_point_len,
                             .kdf_hash = kp.kdf_sha256 ? HSM_OAEP_SHA256 : HSM_OAEP_SHA1,
                             .shared_info = kp.shared_info,
                             .shared_info_len = kp.shared_info_len,
                             .kek_len = kp.kek_len,
                             .wrapped_key = kp.wrapped_key,
                             .wrapped_key_len = kp.wrapped_key_len};
        he = hsm_ecdh_decrypt_content_key(hc, &ei, cek, MAX_CEK, ceklen);
    } else {
        gm_err("the group's RecipientInfo is neither key transport nor key agreement");
        goto out;
    }
    if (he != HSM_OK) {
        gm_err("token could not decrypt the content key: %s %s", hsm_strerror(he), hsm_last_error_detail());
        rc = he == HSM_ERR_DECRYPT ? GM_EXIT_BAD_MESSAGE : GM_EXIT_ERROR;
        goto out;
    }
    rc = GM_EXIT_OK;
out:
    env_kari_params_clear(&kp);
    env_recipient_free(ri);
    hsm_key_free(hk);
    hsm_close(hc);
    return rc;
}

/* A copy the list re-encrypted to the member (exploder member-certs mode),
 * or a message a sender also encrypted to them: their own RecipientInfo,
 * decrypted with their own key (file, or OAEP on a token); no server. */
static int cek_own_key(job *j, gm_member *m, unsigned char *cek, size_t *ceklen)
{
    env_recipient *ri = NULL;
    unsigned char *der = NULL;
    size_t idx = 0, len = 0;
    env_err e;
    int rc;

    if (need(j->c->cert, "--cert FILE (your certificate)") || need(j->c->key, "--key FILE|pkcs11:URI (your key)"))
        return GM_EXIT_USAGE;
    if (gm_member_load(j->c, m) != 0)
        return GM_EXIT_ERROR;
    if ((e = env_message_find_recipient(j->msg, m->cert, &idx)) != ENV_OK) {
        gm_err(e == ENV_ERR_NO_RECIPIENT ? "the message has no RecipientInfo for your certificate (--cert)"
                                         : "bad message: %s",
               env_strerror(e));
        return gm_env_exit(e);
    }
    if ((e = env_message_recipient_der(j->msg, idx, &der, &len)) != ENV_OK ||
        (e = env_recipient_parse(der, len, &ri)) != ENV_OK) {
        gm_err("bad RecipientInfo: %s", env_strerror(e));
        rc = gm_env_exit(e);
        goto out;
    }
    gm_progress(j->c, "decrypting with your own key");
    rc = gm_member_decrypt_ri(m, ri, cek, MAX_CEK, ceklen) == 0 ? GM_EXIT_OK : GM_EXIT_BAD_MESSAGE;
out:
    env_recipient_free(ri);
    free(der);
    return rc;
}

/* Is this message a copy for the member's own key and not (also) one for
 * the group (as far as a pinned or given group certificate tells)? Then
 * every method would fail at the server: their own key is the way. */
static bool own_copy(job *j)
{
    X509 *mine;
    size_t idx;
    bool yes = false;

    if (j->c->cert == NULL || j->msg == NULL || (mine = gm_read_cert_file_quiet(j->c->cert)) == NULL)
        return false;
    if (env_message_find_recipient(j->msg, mine, &idx) == ENV_OK) {
        yes = true;
        if (j->group_cert == NULL)
            (void)group_cert_get(j->c, &j->r, false, &j->group_cert); /* pinned or --group-cert only */
        if (j->group_cert != NULL && group_ri_index(j, &idx) == ENV_OK)
            yes = false;
    }
    X509_free(mine);
    return yes;
}

/* Method G's unwrap (deliver=recipient-key) on a new connection that shows
 * only the membership certificate. *mr is that connection (NULL, and the
 * error our own, when it could not be made). */
static gs_rest_err mcert_unwrap(job *j, const gm_mcert *mc, gs_rest **mr, gs_unwrap_result *res)
{
    const gm_config *c = j->c;
    gs_rest_opts o = {0};
    gs_unwrap_req req = {0};
    gs_rest_err re;

    o.base_url = c->server;
    o.ca_file = c->cacert;
    o.pinned_pubkey = c->pin;
    o.timeout_ms = c->timeout * 1000;
    o.cert_pem = mc->cert_pem;
    o.cert_pem_len = mc->cert_pem_len;
    o.key_pem = mc->key_pem;
    o.key_pem_len = mc->key_pem_len;
    if ((re = gs_rest_new(&o, mr)) != GS_REST_OK) {
        *mr = NULL;
        return re;
    }
    req.recipient_info = j->ri;
    req.recipient_info_len = j->ri_len;
    req.deliver = GS_DELIVER_RECIPIENT_KEY;
    req.content_algorithm = job_content_alg(j);
    gm_progress(c, "unwrapping with the membership certificate");
    return gs_rest_unwrap(*mr, c->group, &req, res);
}

/* Gets the content key by the chosen method. For unwrap_only (the unwrap
 * command) the server's answer is printed instead, and cek stays empty. */
static int get_cek(job *j, enum via v, bool unwrap_only, unsigned char *cek, size_t *ceklen)
{
    gm_config *c = j->c;
    gm_member m = {0};
    gm_mcert mc = {0};
    gs_unwrap_result res = {0};
    env_recipient *ri = NULL;
    gs_rest *mr = NULL;
    env_err e;
    int rc = GM_EXIT_ERROR;

    *ceklen = 0;
    /* Where the server re-wraps to our certificate key, that key must be
     * RSA; and the TLS identity on a token is made before any connection. */
    if (v == VIA_RECIPIENT_KEY && (rc = gm_need_rsa_tls_cert(c, "--via recipient-key")) != GM_EXIT_OK)
        goto out;
    if (v == VIA_GROUP_SECRET && (rc = gm_need_rsa_tls_cert(c, "--via group-secret")) != GM_EXIT_OK)
        goto out;
    if (v != VIA_LOCAL_KEY && v != VIA_OWN_KEY && (rc = gm_tls_token_prepare(c)) != GM_EXIT_OK)
        goto out;
    switch (v) {
    case VIA_TLS:
        if ((rc = job_unwrap(j, GS_DELIVER_TLS, &res)) != GM_EXIT_OK)
            goto out;
        if (res.key_len > MAX_CEK) {
            rc = GM_EXIT_UNREACHABLE;
            goto out;
        }
        memcpy(cek, res.key, res.key_len);
        *ceklen = res.key_len;
        break;
    case VIA_RECIPIENT_KEY:
        if (!unwrap_only && gm_member_load(c, &m) != 0) {
            rc = GM_EXIT_ERROR;
            goto out;
        }
        if ((rc = job_unwrap(j, GS_DELIVER_RECIPIENT_KEY, &res)) != GM_EXIT_OK)
            goto out;
        if (unwrap_only)
            break;
        if ((e = env_recipient_parse(res.recipient_info, res.recipient_info_len, &ri)) != ENV_OK) {
            gm_err("the server answered a malformed RecipientInfo");
            rc = GM_EXIT_UNREACHABLE;
            goto out;
        }
        rc = gm_member_decrypt_ri(&m, ri, cek, MAX_CEK, ceklen) == 0 ? GM_EXIT_OK : GM_EXIT_ERROR;
        break;
    case VIA_MEMBERSHIP_CERT: {
        gs_rest_err re;
        bool cached;
        if ((rc = membership_cert(j, &mc, false, &cached)) != GM_EXIT_OK || (rc = job_group_ri(j)) != GM_EXIT_OK)
            goto out;
        re = mcert_unwrap(j, &mc, &mr, &res);
        if (re == GS_REST_ERR_UNAUTHORIZED && cached) {
            /* A cached certificate the server no longer takes (its CA made
             * anew, a server restored from backup): a fresh one, once,
             * rather than refusals until the cached one expires. */
            gm_progress(c, "the cached membership certificate was refused; asking for a new one");
            gs_rest_free(mr);
            mr = NULL;
            gs_unwrap_result_clear(&res);
            gm_mcert_clear(&mc);
            if ((rc = membership_cert(j, &mc, true, &cached)) != GM_EXIT_OK)
                goto out;
            re = mcert_unwrap(j, &mc, &mr, &res);
        }
        while (re != GS_REST_OK && mr != NULL && job_next_guess(j, mr, re)) {
            gs_rest_free(mr);
            mr = NULL;
            gs_unwrap_result_clear(&res);
            re = mcert_unwrap(j, &mc, &mr, &res);
        }
        if (re != GS_REST_OK) {
            rc = mr != NULL ? job_unwrap_fail(j, mr, re) : GM_EXIT_ERROR;
            goto out;
        }
        if (unwrap_only)
            break;
        if ((e = env_recipient_parse(res.recipient_info, res.recipient_info_len, &ri)) != ENV_OK ||
            (e = env_recipient_decrypt_with_pkey(ri, mc.cert, mc.pkey, cek, MAX_CEK, ceklen)) != ENV_OK) {
            gm_err("cannot decrypt the re-wrapped key: %s", env_strerror(e));
            rc = GM_EXIT_UNREACHABLE;
            goto out;
        }
        break;
    }
    case VIA_GROUP_SECRET: {
        env_recipient *kri = unwrap_only ? NULL : message_kekri(j->msg);
        size_t gidx;
        /* A KEKRI beside the group's own RecipientInfo is someone else's
         * (a sender's secret key, `openssl cms -secretkey`): the group's is
         * re-wrapped as for any message, as --via tls reads it. A KEKRI is
         * read only in a message for no group certificate (the exploder's
         * group-secret copy). The certificate is the one given or pinned:
         * none is fetched for it. */
        if (kri != NULL && env_message_recipient_count(j->msg) > 1 && j->group_cert == NULL &&
            group_cert_get(c, &j->r, false, &j->group_cert) != GM_EXIT_OK)
            ERR_clear_error(); /* an unreadable pin: the KEKRI is tried, as before */
        if (kri != NULL && env_message_recipient_count(j->msg) > 1 && j->group_cert != NULL &&
            group_ri_index(j, &gidx) == ENV_OK) {
            env_recipient_free(kri);
            kri = NULL;
        }
        if (!unwrap_only && gm_member_load(c, &m) != 0) {
            env_recipient_free(kri);
            rc = GM_EXIT_ERROR;
            goto out;
        }
        if (kri == NULL) {
            /* Only the group KTRI: have the server re-wrap it under the secret key. */
            if ((rc = job_unwrap(j, GS_DELIVER_GROUP_SECRET, &res)) != GM_EXIT_OK)
                goto out;
            if (unwrap_only)
                break;
            if (env_recipient_parse(res.recipient_info, res.recipient_info_len, &kri) != ENV_OK ||
                env_recipient_type(kri) != ENV_RI_KEKRI) {
                env_recipient_free(kri);
                gm_err("the server answered a malformed KEKRecipientInfo");
                rc = GM_EXIT_UNREACHABLE;
                goto out;
            }
        }
        rc = cek_from_kekri(j, &m, kri, c->server != NULL && c->group != NULL, cek, ceklen);
        env_recipient_free(kri);
        break;
    }
    case VIA_LOCAL_KEY:
        rc = cek_local_key(j, cek, ceklen);
        break;
    case VIA_OWN_KEY:
        rc = cek_own_key(j, &m, cek, ceklen);
        break;
    }
    if (rc == GM_EXIT_OK && unwrap_only) {
        /* the unwrap command: print what the server delivered, to --out
         * (0600, renamed into place only when whole) or standard output */
        char *b64 = NULL, hex[2 * MAX_CEK + 1];
        gm_out o;
        if (v == VIA_TLS)
            util_hex(res.key, res.key_len, hex);
        else if (util_b64_encode(res.recipient_info, res.recipient_info_len, &b64) != UTIL_OK)
            rc = GM_EXIT_ERROR;
        if (rc == GM_EXIT_OK && (rc = out_open(c, &o, 0600, true)) == GM_EXIT_OK) {
            if (BIO_printf(o.bio, "%s\n", v == VIA_TLS ? hex : b64) <= 0) {
                out_abort(&o);
                gm_err("cannot write the output");
                rc = GM_EXIT_ERROR;
            } else {
                rc = out_commit(&o);
            }
        }
        OPENSSL_cleanse(hex, sizeof(hex));
        free(b64);
    }
out:
    env_recipient_free(ri);
    gs_unwrap_result_clear(&res);
    gs_rest_free(mr);
    gm_mcert_clear(&mc);
    gm_member_clear(&m);
    return rc;
}

static int read_message(job *j)
{
    BIO *in = NULL;
    env_err e;
    int rc = open_in(j->c, &in);
    if (rc != GM_EXIT_OK)
        return rc;
    /* A reader takes the S/MIME part of a multipart/mixed (a footer added
     * outside the encryption by a list or a gateway) or of a
     * multipart/signed (encrypted, then signed), as mail clients do. */
    if ((e = env_message_read_flags(in, ENV_FORMAT_AUTO, ENV_READ_IN_MULTIPART, 0, &j->msg)) != ENV_OK) {
        if (e == ENV_ERR_UNSUPPORTED) /* a CMS message, of a kind we do not read (3DES, say) */
            gm_err("cannot read this message: %s (groupmail reads AES-CBC or 3DES-CBC EnvelopedData and "
                   "AES-GCM AuthEnvelopedData)",
                   env_strerror(e));
        else if (e == ENV_ERR_CONTENT_TYPE) /* SignedData, or multipart/signed around no S/MIME part */
            gm_err("not an encrypted S/MIME or CMS message: it is signed (CMS SignedData), with no encrypted "
                   "part groupmail reads (it reads signed mail inside its encryption, and encrypted mail as "
                   "the first part of a multipart/signed)");
        else
            gm_err("not an encrypted S/MIME or CMS message: %s", env_strerror(e));
        rc = gm_env_exit(e) == GM_EXIT_ERROR && e != ENV_ERR_IO ? GM_EXIT_BAD_MESSAGE : gm_env_exit(e);
    }
    BIO_free(in);
    return rc;
}

static int cmd_decrypt(gm_config *c)
{
    job j = {.c = c};
    enum via v;
    unsigned char cek[MAX_CEK];
    size_t ceklen = 0;
    gm_out o = {0};
    env_err e;
    int rc;

    if (parse_via(c->via != NULL ? c->via : "tls", &v) != 0)
        return GM_EXIT_USAGE;
    if ((rc = read_message(&j)) != GM_EXIT_OK)
        goto out;
    if (v != VIA_OWN_KEY && v != VIA_LOCAL_KEY && own_copy(&j)) {
        gm_progress(c, "this copy was encrypted to your certificate: using your own key (--via own-key)");
        v = VIA_OWN_KEY;
    }
    /* Known before the server is asked: standard output is staged in
     * memory, and the plaintext is never longer than its ciphertext. */
    if (out_kind_of(c) != UTIL_OUT_FILE && env_message_content_max(j.msg) > GM_MEMORY_STAGE_MAX) {
        gm_err("the message is over %zu MiB, more than decrypt stages in memory for standard output: use --out FILE",
               GM_MEMORY_STAGE_MAX / (1024 * 1024));
        rc = GM_EXIT_ERROR;
        goto out;
    }
    if ((rc = get_cek(&j, v, false, cek, &ceklen)) != GM_EXIT_OK)
        goto out;
    if ((rc = out_open(c, &o, 0600, true)) != GM_EXIT_OK)
        goto out;
    if ((e = env_message_decrypt(j.msg, cek, ceklen, o.bio)) != ENV_OK) {
        if (out_write_error(&o, e, errno)) {
            rc = GM_EXIT_ERROR;
            goto out;
        }
        gm_err(e == ENV_ERR_AUTH ? "decryption failed: the message was altered (or the key is wrong)"
                                 : "decryption failed: %s",
               env_strerror(e));
        rc = gm_env_exit(e);
        goto out;
    }
    rc = out_commit(&o);
out:
    out_abort(&o);
    OPENSSL_cleanse(cek, sizeof(cek));
    job_clear(&j);
    return rc;
}

static int cmd_unwrap(gm_config *c)
{
    job j = {.c = c};
    enum via v;
    unsigned char cek[MAX_CEK];
    size_t ceklen = 0;
    int rc;

    if (parse_via(c->via != NULL ? c->via : "tls", &v) != 0)
        return GM_EXIT_USAGE;
    if (v == VIA_LOCAL_KEY || v == VIA_OWN_KEY) {
        gm_err("unwrap asks the server: --via %s is for decrypt", c->via);
        return GM_EXIT_USAGE;
    }
    if (c->content_algorithm != NULL && c->recipient_info == NULL) {
        gm_err("--content-algorithm goes with --recipient-info (a message names its own)");
        return GM_EXIT_USAGE;
    }
    /* A name this client (and so the server, which reads it with the same
     * table) does not know is the caller's typo, said before anything is
     * read or sent: the server's 400 unsupported_algorithm for it was exit
     * 5, "bad message", with no message in play. */
    size_t calg_len = 0;
    if (c->content_algorithm != NULL &&
        env_content_alg_key_length(c->content_algorithm, &calg_len, NULL) != ENV_OK) {
        gm_err("--content-algorithm %s: not a content algorithm (aes-128-cbc, aes-192-cbc, aes-256-cbc, the -gcm "
               "ones, des-ede3-cbc, chacha20-poly1305, or the OID from the message)",
               c->content_algorithm);
        return GM_EXIT_USAGE;
    }
    if (c->recipient_info != NULL) {
        /* a RecipientInfo given directly: DER, or base64 text */
        unsigned char *buf = NULL;
        size_t len = 0;
        if (util_read_file(c->recipient_info, 256 * 1024, &buf, &len) != UTIL_OK) {
            gm_err("cannot read %s", c->recipient_info);
            return GM_EXIT_ERROR;
        }
        if (len > 0 && buf[0] == 0x30) {
            j.ri = buf;
            j.ri_len = len;
        } else {
            /* base64 as `base64` writes it: lines of 76, or one line */
            size_t n = 0;
            for (size_t i = 0; i < len; i++)
                if (buf[i] != '\n' && buf[i] != '\r' && buf[i] != ' ' && buf[i] != '\t')
                    buf[n++] = buf[i];
            rc = n == 0 ? UTIL_E_FORMAT : util_b64_decode((char *)buf, n, 256 * 1024, &j.ri, &j.ri_len);
            free(buf);
            if (rc != UTIL_OK) {
                gm_err("%s: neither DER nor base64", c->recipient_info);
                return GM_EXIT_BAD_MESSAGE;
            }
        }
    } else if ((rc = read_message(&j)) != GM_EXIT_OK) {
        goto out;
    }
    rc = get_cek(&j, v, true, cek, &ceklen);
out:
    OPENSSL_cleanse(cek, sizeof(cek));
    job_clear(&j);
    return rc;
}

/* A PKCS#10 request for the member key on a token, signed there (for a
 * key file, openssl req does this): subject CN and rfc822Name = --from. */
static int cmd_csr(gm_config *c)
{
    hsm_ctx *hc = NULL;
    hsm_key *hk = NULL;
    EVP_PKEY *pk = NULL;
    X509_REQ *req = NULL;
    X509_NAME *name = NULL;
    STACK_OF(X509_EXTENSION) *exts = NULL;
    X509_EXTENSION *ext = NULL;
    gm_out o = {0};
    char san[320];
    hsm_err he;
    int rc = GM_EXIT_USAGE;

    if (need(c->key, "--key pkcs11:URI (the key on your token)") || need(c->from, "--from ADDR (your address)"))
        return GM_EXIT_USAGE;
    if (strncmp(c->key, "pkcs11:", 7) != 0) {
        gm_err("csr is for a key on a token (--key pkcs11:URI); for a key file use openssl req");
        return GM_EXIT_USAGE;
    }
    if ((rc = check_address("--from", c->from, 1)) != GM_EXIT_OK)
        return rc; /* what the group server takes as the certificate's identity */
    rc = GM_EXIT_ERROR;
    if (gm_hsm_open_for(c, c->key, &hc, &hk) != 0)
        goto out;
    if ((he = hsm_key_evp_pkey(hc, hk, &pk)) != HSM_OK) {
        gm_err("key %s: %s %s", c->key, hsm_strerror(he), hsm_last_error_detail());
        goto out;
    }
    snprintf(san, sizeof(san), "email:%s", c->from);
    if ((req = X509_REQ_new()) == NULL || X509_REQ_set_version(req, 0) != 1 || (name = X509_NAME_new()) == NULL ||
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)c->from, -1, -1, 0) != 1 ||
        X509_REQ_set_subject_name(req, name) != 1 || X509_REQ_set_pubkey(req, pk) != 1 ||
        (exts = sk_X509_EXTENSION_new_null()) == NULL ||
        (ext = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san)) == NULL ||
        sk_X509_EXTENSION_push(exts, ext) <= 0) {
        gm_err("cannot build the certificate request");
        goto out;
    }
    ext = NULL; /* in exts */
    if (X509_REQ_add_extensions(req, exts) != 1 || X509_REQ_sign(req, pk, EVP_sha256()) <= 0) {
        gm_err("cannot sign the certificate request with the key on the token");
        goto out;
    }
    if ((rc = out_open(c, &o, 0644, false)) != GM_EXIT_OK)
        goto out;
    if (PEM_write_bio_X509_REQ(o.bio, req) != 1) {
        rc = GM_EXIT_ERROR;
        goto out;
    }
    rc = out_commit(&o);
out:
    out_abort(&o);
    ERR_clear_error();
    X509_EXTENSION_free(ext);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_NAME_free(name);
    X509_REQ_free(req);
    EVP_PKEY_free(pk); /* before the context it borrows */
    hsm_key_free(hk);
    hsm_close(hc);
    return rc;
}

/* "groupmail -c FILE -v COMMAND ...", the way groupsrv takes its global
 * options: a leading run of -c FILE (--config FILE, --config=FILE), -v,
 * -q (--verbose, --quiet) is moved after the command (and the keys
 * subcommand), where the options are parsed. */
static void lead_options_after_command(int argc, char **argv)
{
    int lead = 0; /* argv[1 .. lead] are global options */

    while (1 + lead < argc) {
        const char *a = argv[1 + lead];
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            if (2 + lead >= argc)
                break;
            lead += 2;
        } else if (strncmp(a, "--config=", 9) == 0 || strcmp(a, "-v") == 0 || strcmp(a, "-q") == 0 ||
                   strcmp(a, "--verbose") == 0 || strcmp(a, "--quiet") == 0) {
            lead++;
        } else {
            break;
        }
    }
    if (lead == 0 || 1 + lead >= argc)
        return;
    int words = argc > lead + 2 && strcmp(argv[1 + lead], "keys") == 0 ? 2 : 1; /* the command's words */
    /* rotate argv[1 .. lead + words] left by lead: the command first */
    for (int r = 0; r < lead; r++) {
        char *first = argv[1];
        for (int i = 1; i < lead + words; i++)
            argv[i] = argv[i + 1];
        argv[lead + words] = first;
    }
}

/* The commands main dispatches: an unknown one is a usage error before
 * any option or configuration file is read. */
static bool known_command(const char *cmd)
{
    static const char *const cmds[] = {"fetch-cert", "encrypt", "send", "decrypt", "unwrap", "certify", "keys", "csr"};
    for (size_t i = 0; i < GS_ARRAY_LEN(cmds); i++)
        if (strcmp(cmd, cmds[i]) == 0)
            return true;
    return false;
}

int main(int argc, char **argv)
{
    gm_config c;
    const char *cmd;
    int rc, shift = 1;
    FILE *devnull = NULL;

    memset(&c, 0, sizeof(c));
    /* A closed standard descriptor is /dev/null, not the next file
     * opened (the message's spool file, a server's socket, --out's file):
     * output to a closed standard output fails, exit 1. */
    if (util_sanitise_stdfd() != UTIL_OK)
        return GM_EXIT_ERROR;
    util_fsize_limit_fails_writes();
    lead_options_after_command(argc, argv);
    /* `groupmail help [COMMAND]` as `--help`: the synopsis, 0 (groupsrv
     * and exploder take it too) */
    if (argc >= 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0)) {
        usage(stdout);
        return GM_EXIT_OK;
    }
    if (argc >= 2 && strcmp(argv[1], "--version") == 0) {
        puts("groupmail " GS_VERSION);
        return GM_EXIT_OK;
    }
    if (argc < 2) {
        gm_err("no command given (see groupmail --help)");
        return GM_EXIT_USAGE;
    }
    cmd = argv[1];
    if (!known_command(cmd)) {
        char q[64];
        gm_err("unknown command '%s' (see groupmail --help)", log_quote(q, sizeof(q), cmd));
        return GM_EXIT_USAGE;
    }
    if (strcmp(cmd, "keys") == 0) {
        if (argc < 3) {
            gm_err("keys: expected sync, list, transport-key or import-group-key (see groupmail --help)");
            return GM_EXIT_USAGE;
        }
        shift = 2;
    }
    const char *cmd_name;
    unsigned cmd_bit = command_bit(cmd, shift == 2 ? argv[2] : NULL, &cmd_name);
    if (shift == 2 && cmd_bit == C_ALL) {
        /* As for every other command: --help after it is the synopsis, and
         * a typo is a usage error before the configuration is read, named
         * quoted (it is what was typed: control characters escaped). */
        if (strcmp(argv[2], "-h") == 0 || strcmp(argv[2], "--help") == 0) {
            usage(stdout);
            return GM_EXIT_OK;
        }
        char q[64];
        gm_err("keys: unknown subcommand '%s' (expected sync, list, transport-key or import-group-key) "
               "(see groupmail --help)",
               log_quote(q, sizeof(q), argv[2]));
        return GM_EXIT_USAGE;
    }
    if ((rc = parse_options(argc - shift, argv + shift, cmd_bit, cmd_name, &c)) != GM_EXIT_OK)
        goto out;
    /* Library diagnostics only with -v: the user gets one line from us. */
    if (c.verbose)
        log_init("groupmail", LOG_LVL_DEBUG, stderr);
    else if ((devnull = fopen("/dev/null", "w")) != NULL)
        log_init("groupmail", LOG_LVL_ERROR, devnull);
    if (strcmp(cmd, "fetch-cert") == 0)
        rc = cmd_fetch_cert(&c);
    else if (strcmp(cmd, "encrypt") == 0)
        rc = cmd_encrypt(&c);
    else if (strcmp(cmd, "send") == 0)
        rc = cmd_send(&c);
    else if (strcmp(cmd, "decrypt") == 0)
        rc = cmd_decrypt(&c);
    else if (strcmp(cmd, "unwrap") == 0)
        rc = cmd_unwrap(&c);
    else if (strcmp(cmd, "certify") == 0)
        rc = cmd_certify(&c);
    else if (strcmp(cmd, "keys") == 0)
        rc = cmd_keys(&c, argv[2]);
    else if (strcmp(cmd, "csr") == 0)
        rc = cmd_csr(&c);
    else
        rc = GM_EXIT_USAGE; /* known_command() said no before */
out:
    gm_tls_token_close(); /* every gs_rest handle is gone by now */
    gm_config_clear(&c);
    if (devnull != NULL)
        fclose(devnull);
    return rc;
}
