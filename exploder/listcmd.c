/* listcmd.c: `exploder list create|add|remove|show`. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "cmd.h"
#include "groupinfo.h"
#include "log.h"
#include "mail.h"
#include "mailaddr.h"
#include "prepare.h"
#include "spool.h"
#include "util.h"

#define MAX_MEMBERS_PER_CALL 100000u
#define MAX_CERT_FILE (256u * 1024u)

static int list_create(const xp_conf *c, spool *s, int argc, char **argv)
{
    static const struct option opts[] = {{"group-server", required_argument, NULL, 's'},
                                         {"group", required_argument, NULL, 'g'},
                                         {"mode", required_argument, NULL, 'm'},
                                         {"cert", required_argument, NULL, 'c'},
                                         {"key", required_argument, NULL, 'k'},
                                         {"cacert", required_argument, NULL, 'a'},
                                         {"group-cert", required_argument, NULL, 'G'},
                                         {"members-only", no_argument, NULL, 'M'},
                                         {"allow-unencrypted", no_argument, NULL, 'U'},
                                         {NULL, 0, NULL, 0}};
    xp_list l, *made = NULL;
    const char *group_cert_file = NULL;
    char *subject = NULL, why[512] = "", names[256];
    unsigned char *pem = NULL;
    size_t pemlen = 0;
    int opt, ex = 1;
    xp_err rc;

    memset(&l, 0, sizeof(l));
    l.require_encrypted = true;
    optind = 2; /* argv[0] = "create", argv[1] = ADDR */
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        switch (opt) {
        case 's': l.server = optarg; break;
        case 'g': l.group = optarg; break;
        case 'm':
            if ((l.mode = xp_mode_parse(optarg)) == 0)
                return xp_usage_error("", "list create: unknown --mode %.40s (forward, group-secret, member-certs)",
                                      optarg);
            break;
        case 'c': l.cert = optarg; break;
        case 'k': l.priv_path = optarg; break;
        case 'a': l.cacert = optarg; break;
        case 'G': group_cert_file = optarg; break;
        case 'M': l.members_only = true; break;
        case 'U': l.require_encrypted = false; break;
        default: return xp_getopt_error("", "list create", opt, argv);
        }
    }
    l.address = argv[1];
    if (optind != argc)
        return xp_usage_error("", "list create: unexpected argument %.40s", argv[optind]);
    if (l.server == NULL || l.group == NULL || l.mode == 0)
        return xp_usage_error("", "list create: --group-server URL, --group G and --mode are required");
    if (!mail_addr_valid(l.address)) {
        char q[96];
        fprintf(stderr, "exploder: not a list address: %s: %s\n", log_quote(q, sizeof(q), l.address),
                mailaddr_problem(l.address));
        return XP_EX_USAGE;
    }
    /* The list speaks as LOCAL-owner@ (MAIL FROM) and LOCAL-request@
     * (List-Unsubscribe): the longer must be an address too. */
    char request[MAIL_MAX_ADDR + 16];
    const char *at = strrchr(l.address, '@');
    (void)snprintf(request, sizeof(request), "%.*s-request%s", (int)(at - l.address), l.address, at);
    if (mailaddr_problem(request) != NULL) {
        fprintf(stderr, "exploder: not a list address: %s: its %s (List-Unsubscribe) would not be an address: %s\n",
                l.address, request, mailaddr_problem(request));
        return XP_EX_USAGE;
    }
    if (strncmp(l.server, "https://", 8) != 0) {
        fprintf(stderr, "exploder: --group-server must be an https:// URL\n");
        return XP_EX_USAGE;
    }
    if (!l.require_encrypted && l.mode != XP_MODE_FORWARD) {
        fprintf(stderr, "exploder: --allow-unencrypted only makes sense for --mode forward\n");
        return XP_EX_USAGE;
    }
    if (group_cert_file != NULL) {
        if (util_read_file(group_cert_file, MAX_CERT_FILE, &pem, &pemlen) != UTIL_OK) {
            fprintf(stderr, "exploder: cannot read %s\n", group_cert_file);
            goto out;
        }
        l.group_cert = (char *)pem;
    } else {
        rc = xp_fetch_group_cert(c, &l, &l.group_cert, why, sizeof(why));
        if (rc != XP_OK) {
            if (!l.require_encrypted && l.mode == XP_MODE_FORWARD) {
                fprintf(stderr, "exploder: warning: no group certificate (%s); the list forwards anything\n", why);
            } else {
                fprintf(stderr, "exploder: cannot fetch the group certificate: %s (or pass --group-cert FILE)\n",
                        why);
                goto out;
            }
        }
        pem = (unsigned char *)l.group_cert;
    }
    if (l.group_cert != NULL && xp_cert_check(l.group_cert, &subject) != XP_OK) {
        fprintf(stderr, "exploder: the group certificate is not a PEM certificate\n");
        goto out;
    }
    rc = spool_list_create(s, &l);
    if (rc == XP_ERR_EXISTS) {
        fprintf(stderr, "exploder: list %s already exists\n", l.address);
        goto out;
    }
    if (rc != XP_OK) {
        fprintf(stderr, "exploder: cannot create list: %s\n", xp_strerror(rc));
        goto out;
    }
    printf("created %s mode=%s group=%s group_cert=%s\n", l.address, xp_mode_name(l.mode), l.group,
           subject != NULL ? subject : "(none)");
    ex = 0;
    /* Thunderbird, Outlook, Apple Mail and gpgsm encrypt to the
     * certificate that names the address being sent to: a group
     * certificate for another address (the group made with --address
     * eng@example.org, the list eng@lists.example.org) leaves their users
     * unable to encrypt to the list, and only openssl-style senders, given
     * the file, reach it. Said, not refused: the list works for those. */
    if (l.group_cert != NULL && !xp_cert_names_address(l.group_cert, l.address, names, sizeof(names)))
        fprintf(stderr,
                "exploder: warning: the group certificate names %s%s, not the list's address %s: S/MIME "
                "clients (Thunderbird, Outlook, gpgsm) look a recipient's certificate up by the address they "
                "send to, and will not encrypt to this list (make the group's address the list's: groupsrv "
                "group create --address %s)\n",
                names[0] != '\0' ? "" : "no address", names, l.address, l.address);
    /* what the group accepts, for deliver's checks (refreshed later anyway) */
    if ((rc = spool_list_get(s, l.address, &made)) == XP_OK &&
        xp_group_info_refresh(c, s, made, true, why, sizeof(why)) != XP_OK)
        fprintf(stderr, "exploder: warning: %s; deliver asks again later\n", why);
out:
    xp_list_free(made);
    OPENSSL_free(subject);
    free(pem);
    return ex;
}

/* Collects member addresses from argv[2..] ("-" = stdin lines). */
static int collect_members(int argc, char **argv, bool add, char ***out, size_t *n)
{
    char **v = NULL, line[MAIL_MAX_ADDR + 8];
    size_t cnt = 0, cap = 0;
    int rc = -1;

    *out = NULL;
    *n = 0;
    for (int i = 2; i < argc; i++) {
        bool from_stdin = strcmp(argv[i], "-") == 0;
        for (;;) {
            const char *a;
            if (from_stdin) {
                if (fgets(line, sizeof(line), stdin) == NULL)
                    break;
                line[strcspn(line, "\r\n")] = '\0';
                if (line[0] == '\0' || line[0] == '#')
                    continue;
                a = line;
            } else
                a = argv[i];
            /* a member stored by an older build under a looser rule
             * stays removable */
            const char *why = mailaddr_refusal(a, add);
            if (why != NULL) {
                char q[96], key[MAIL_MAX_ADDR + 1];
                const char *kw = NULL;
                /* an IDN domain: the A-label form the list takes, spelt
                 * out, from what the operator typed mapped as a browser
                 * maps it (an upper-case U-label too); the address itself
                 * is still refused, only the hint is given */
                if (add && mail_addr_intl_typed(a, key, sizeof(key), &kw) == XP_OK && strcmp(key, a) != 0 &&
                    mailaddr_problem(key) == NULL)
                    fprintf(stderr, "exploder: not an address: %s: %s; write it %s\n", log_quote(q, sizeof(q), a),
                            why, key);
                else
                    fprintf(stderr, "exploder: not an address: %s: %s\n", log_quote(q, sizeof(q), a), why);
                goto out;
            }
            if (cnt == cap) {
                size_t ncap = cap ? cap * 2 : 64;
                char **nv;
                if (ncap > MAX_MEMBERS_PER_CALL || (nv = realloc(v, ncap * sizeof(*v))) == NULL) {
                    fprintf(stderr, "exploder: too many addresses in one call\n");
                    goto out;
                }
                v = nv;
                cap = ncap;
            }
            if ((v[cnt] = strdup(a)) == NULL)
                goto out;
            mail_addr_normalize(v[cnt]);
            cnt++;
            if (!from_stdin)
                break;
        }
    }
    *out = v;
    *n = cnt;
    v = NULL;
    rc = 0;
out:
    xp_strv_free(v, cnt);
    return rc;
}

static int list_members(spool *s, int argc, char **argv, bool add)
{
    xp_list *l = NULL;
    char **addrs = NULL;
    size_t n = 0, changed = 0;
    int ex = 1;
    xp_err rc;

    if (argc < 3)
        return xp_usage_error("", "list %s: expected ADDR MEMBER-ADDR...", add ? "add" : "remove");
    if ((rc = spool_list_get(s, argv[1], &l)) != XP_OK) {
        char q[96];
        fprintf(stderr, "exploder: list %s: %s\n", log_quote(q, sizeof(q), argv[1]), xp_strerror(rc));
        return 1;
    }
    if (collect_members(argc, argv, add, &addrs, &n) != 0)
        goto out;
    if (add) {
        if ((rc = spool_members_add(s, l->id, addrs, n, &changed)) != XP_OK) {
            fprintf(stderr, "exploder: cannot add members: %s\n", xp_strerror(rc));
            goto out;
        }
        if (n == 1 && changed == 0) {
            fprintf(stderr, "exploder: %s is already a member of %s\n", addrs[0], l->address);
            goto out;
        }
        printf("added %zu member(s) to %s\n", changed, l->address);
    } else {
        for (size_t i = 0; i < n; i++) {
            rc = spool_member_remove(s, l->id, addrs[i]);
            if (rc == XP_ERR_NOTFOUND) {
                fprintf(stderr, "exploder: %s is not a member of %s\n", addrs[i], l->address);
                goto out;
            }
            if (rc != XP_OK) {
                fprintf(stderr, "exploder: cannot remove member: %s\n", xp_strerror(rc));
                goto out;
            }
            changed++;
        }
        printf("removed %zu member(s) from %s\n", changed, l->address);
    }
    ex = 0;
out:
    xp_strv_free(addrs, n);
    xp_list_free(l);
    return ex;
}

/* `list set`: change mode or sender policy of an existing list. */
static int list_set(spool *s, int argc, char **argv)
{
    static const struct option opts[] = {{"mode", required_argument, NULL, 'm'},
                                         {"members-only", no_argument, NULL, 'M'},
                                         {"open", no_argument, NULL, 'O'},
                                         {"require-encrypted", no_argument, NULL, 'R'},
                                         {"allow-unencrypted", no_argument, NULL, 'U'},
                                         {NULL, 0, NULL, 0}};
    xp_list *l = NULL;
    int opt, ex = 1;
    bool allow_given = false;
    xp_err rc;

    if (argc < 3)
        return xp_usage_error("", "list set: expected ADDR and what to change");
    if ((rc = spool_list_get(s, argv[1], &l)) != XP_OK) {
        char q[96];
        fprintf(stderr, "exploder: list %s: %s\n", log_quote(q, sizeof(q), argv[1]), xp_strerror(rc));
        return 1;
    }
    optind = 2; /* argv[0] = "set", argv[1] = ADDR */
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        switch (opt) {
        case 'm':
            if ((l->mode = xp_mode_parse(optarg)) == 0) {
                ex = xp_usage_error("", "list set: unknown --mode %.40s (forward, group-secret, member-certs)", optarg);
                goto out;
            }
            break;
        case 'M': l->members_only = true; break;
        case 'O': l->members_only = false; break;
        case 'R': l->require_encrypted = true; break;
        case 'U':
            l->require_encrypted = false;
            allow_given = true;
            break;
        default: ex = xp_getopt_error("", "list set", opt, argv); goto out;
        }
    }
    if (optind != argc) {
        ex = xp_usage_error("", "list set: unexpected argument %.40s", argv[optind]);
        goto out;
    }
    if (!l->require_encrypted && l->mode != XP_MODE_FORWARD) {
        /* a list that lets plain mail through, moved to a rewrap mode:
         * say which setting is in the way, not one that was not given */
        if (allow_given)
            fprintf(stderr, "exploder: --allow-unencrypted only makes sense for --mode forward\n");
        else
            fprintf(stderr, "exploder: list set: %s lets unencrypted mail through (--allow-unencrypted), which "
                            "only --mode forward can: add --require-encrypted\n", l->address);
        ex = XP_EX_USAGE;
        goto out;
    }
    if ((rc = spool_list_set_policy(s, l)) != XP_OK) {
        fprintf(stderr, "exploder: cannot change list %s: %s\n", l->address, xp_strerror(rc));
        goto out;
    }
    printf("%s mode=%s members-only=%s require-encrypted=%s\n", l->address, xp_mode_name(l->mode),
           l->members_only ? "yes" : "no", l->require_encrypted ? "yes" : "no");
    ex = 0;
out:
    xp_list_free(l);
    return ex;
}

static int list_show(spool *s, int argc, char **argv)
{
    xp_list *l = NULL;
    char **m = NULL, *subject = NULL;
    size_t n = 0;
    int64_t msgs = 0, pending = 0;
    xp_err rc;
    int ex = 1;

    if (argc != 2)
        return xp_usage_error("", "list show: expected one list ADDR");
    if ((rc = spool_list_get(s, argv[1], &l)) != XP_OK) {
        char q[96];
        fprintf(stderr, "exploder: list %s: %s\n", log_quote(q, sizeof(q), argv[1]), xp_strerror(rc));
        return 1;
    }
    if ((rc = spool_members(s, l->id, &m, &n)) != XP_OK || (rc = spool_list_stats(s, l->id, &msgs, &pending)) != XP_OK) {
        fprintf(stderr, "exploder: %s\n", xp_strerror(rc));
        goto out;
    }
    if (l->group_cert != NULL)
        (void)xp_cert_check(l->group_cert, &subject);
    printf("list: %s\n", l->address);
    printf("mode: %s\n", xp_mode_name(l->mode));
    printf("group-server: %s\n", l->server);
    printf("group: %s\n", l->group);
    printf("cert: %s\n", l->cert != NULL ? l->cert : "(from [tls])");
    printf("key: %s\n", l->priv_path != NULL ? l->priv_path : "(from [tls])");
    printf("cacert: %s\n", l->cacert != NULL ? l->cacert : "(from [tls])");
    printf("group-cert: %s\n", subject != NULL ? subject : "(none)");
    printf("require-encrypted: %s\n", l->require_encrypted ? "yes" : "no");
    printf("members-only: %s\n", l->members_only ? "yes" : "no");
    if (l->group_info_at > 0) {
        char when[32];
        time_t at = (time_t)l->group_info_at;
        struct tm tm;
        gmtime_r(&at, &tm);
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
        printf("key-transports: %s (group server, %s)\n",
               l->kt_algs != NULL ? l->kt_algs : "(not said)", when);
    } else {
        printf("key-transports: (not fetched yet)\n");
    }
    printf("queued-messages: %lld\n", (long long)msgs);
    printf("pending-recipients: %lld\n", (long long)pending);
    printf("members: %zu\n", n);
    for (size_t i = 0; i < n; i++)
        printf("  %s\n", m[i]);
    ex = 0;
out:
    OPENSSL_free(subject);
    xp_strv_free(m, n);
    xp_list_free(l);
    return ex;
}

int cmd_list_args(int argc, char **argv)
{
    /* argv[0] is the verb */
    if (argc < 1 || (strcmp(argv[0], "create") != 0 && strcmp(argv[0], "add") != 0 &&
                     strcmp(argv[0], "remove") != 0 && strcmp(argv[0], "show") != 0 && strcmp(argv[0], "set") != 0))
        return xp_usage_error("", "list: expected create, add, remove, set or show%s%.40s",
                              argc < 1 ? "" : ", not ", argc < 1 ? "" : argv[0]);
    if (argc < 2)
        return xp_usage_error("", "list %s: expected a list ADDR", argv[0]);
    /* An option where an address goes (`list show --bogus`, `list add ADDR
     * --bogus`; --help was taken before: main.c) is a usage error, exit 64, not a list or member that is
     * not found. Only words without an @: "-x@example.org" is an address.
     * create and set parse their options after ADDR themselves. */
    bool options_after_addr = strcmp(argv[0], "create") == 0 || strcmp(argv[0], "set") == 0;
    for (int i = 1; i < (options_after_addr ? 2 : argc); i++) {
        if (argv[i][0] != '-' || argv[i][1] == '\0' || strchr(argv[i], '@') != NULL)
            continue;
        if (i == 1)
            return xp_usage_error("", "list %s: expected the list ADDR first, not %.40s", argv[0], argv[i]);
        return xp_usage_error("", "list %s: unknown option %.40s", argv[0], argv[i]);
    }
    return 0;
}

int cmd_list(const xp_conf *c, int argc, char **argv)
{
    spool *s = NULL;
    xp_err rc;
    int ex;

    if ((ex = cmd_list_args(argc, argv)) != 0)
        return ex;
    if ((rc = spool_open(c->spool_path, &s)) != XP_OK) {
        fprintf(stderr, "exploder: cannot open spool: %s\n", xp_strerror(rc));
        return 1;
    }
    if (strcmp(argv[0], "create") == 0)
        ex = list_create(c, s, argc, argv);
    else if (strcmp(argv[0], "add") == 0)
        ex = list_members(s, argc, argv, true);
    else if (strcmp(argv[0], "remove") == 0)
        ex = list_members(s, argc, argv, false);
    else if (strcmp(argv[0], "show") == 0)
        ex = list_show(s, argc, argv);
    else if (strcmp(argv[0], "set") == 0)
        ex = list_set(s, argc, argv);
    else
        ex = XP_EX_USAGE; /* not reached: the verb was checked above */
    spool_close(s);
    return ex;
}
