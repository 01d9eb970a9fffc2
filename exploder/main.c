/* main.c: `exploder [-c FILE] [-v] deliver|run|list ...` (docs/exploder.1.md). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <curl/curl.h>

#include "cmd.h"
#include "gs_version.h"
#include "log.h"
#include "util.h"
#include "xp.h"

#define DEFAULT_CONF "/etc/groupsrv/exploder.conf"

static void usage(void)
{
    fputs("usage: exploder [-c exploder.conf] [-v] COMMAND ...\n"
          "  deliver --list ADDR [--sender ADDR] < message   (MTA pipe; sysexits.h exit codes)\n"
          "  run [--once]                                    (queue runner)\n"
          "  list create ADDR --group-server URL --group G --mode forward|group-secret|member-certs\n"
          "              [--cert F --key F --cacert F] [--group-cert FILE] [--members-only] [--allow-unencrypted]\n"
          "  list add ADDR MEMBER-ADDR...                    (\"-\": addresses on stdin, one a line)\n"
          "  list remove ADDR MEMBER-ADDR...\n"
          "  list set ADDR [--mode forward|group-secret|member-certs] [--members-only|--open]\n"
          "              [--require-encrypted|--allow-unencrypted]\n"
          "  list show ADDR\n"
          "config: -c FILE, else $EXPLODER_CONF, else " DEFAULT_CONF "\n",
          stdout);
}

/* Does the command line after the command ask for the synopsis: a word
 * --help or -h where an option goes (as groupsrv and groupmail take it,
 * and mature tools do: a user asking is no usage error)? Not the value of
 * an option that takes one (`deliver --sender -h`: what an MTA passes is
 * the envelope sender, never a request), nor after "--". */
static bool help_asked(int argc, char **argv)
{
    /* as getopt_long reads them: deliver's -l and -s, and a long option
     * by any prefix of its name (`--sen -h` is --sender -h) */
    static const char *const valued[] = {"--list",  "--sender", "--group-server", "--group", "--mode",
                                         "--cert",  "--key",    "--cacert",       "--group-cert"};

    for (int i = 0; i < argc; i++) {
        size_t n = strlen(argv[i]);
        if (strcmp(argv[i], "--") == 0)
            return false;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return true;
        if (strcmp(argv[i], "-l") == 0 || strcmp(argv[i], "-s") == 0) {
            i++; /* its value */
            continue;
        }
        for (size_t v = 0; n > 2 && v < sizeof(valued) / sizeof(valued[0]); v++)
            if (strncmp(argv[i], valued[v], n) == 0) {
                i++; /* its value */
                break;
            }
    }
    return false;
}

/* The diagnostic log file, appended to (0600 when created), never through
 * a symbolic link: an admin who runs a list command as root must not
 * append to a file the exploder's user linked into its log directory.
 * NULL on failure. */
static FILE *open_log(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    FILE *fp;

    if (fd < 0)
        return NULL;
    if ((fp = fdopen(fd, "a")) == NULL)
        close(fd);
    return fp;
}

int main(int argc, char **argv)
{
    const char *conf_path = NULL, *cmd;
    xp_conf *c = NULL;
    FILE *log_fp = NULL;
    int i = 1, verbose = 0, ex, line = 0;
    bool deliver;
    xp_err rc;

    /* Before anything is opened: a standard descriptor closed by whoever
     * started us (cron's flush with `2>&-`, a supervisor) would be the
     * next file's number, the log file, the spool's lock, a message file
     * or the relay's connection, and the one-line reason or the log would
     * go into it. 75: the MTA keeps the mail, the runner tries again. */
    if (util_sanitise_stdfd() != UTIL_OK)
        return XP_EX_TEMPFAIL;
    util_fsize_limit_fails_writes();
    umask(077); /* spool files hold other people's mail */
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
            conf_path = argv[++i];
        else if (strcmp(argv[i], "-v") == 0)
            verbose = 1;
        else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage();
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            puts("exploder " GS_VERSION);
            return 0;
        } else if (strcmp(argv[i], "-c") == 0) {
            return xp_usage_error("", "-c needs a FILE");
        } else {
            return xp_usage_error("", "unknown option %.*s", (int)strcspn(argv[i], "="), argv[i]);
        }
    }
    if (i >= argc)
        return xp_usage_error("", "no command given");
    cmd = argv[i];
    /* `exploder help`, and --help after any command: the synopsis, 0,
     * before the configuration is read */
    if (strcmp(cmd, "help") == 0 || help_asked(argc - i - 1, argv + i + 1)) {
        usage();
        return 0;
    }
    /* before the configuration: a typo is a usage error, whatever the file */
    if (strcmp(cmd, "deliver") != 0 && strcmp(cmd, "run") != 0 && strcmp(cmd, "list") != 0)
        return xp_usage_error("", "unknown command %.40s", cmd);
    /* run's and list's arguments too (as groupmail keys does): `list show
     * --bogus` with no readable configuration is 64, not 78 */
    bool run_once;
    if (strcmp(cmd, "run") == 0 && (ex = cmd_run_args(argc - i, argv + i, &run_once)) != 0)
        return ex;
    if (strcmp(cmd, "list") == 0 && (ex = cmd_list_args(argc - i - 1, argv + i + 1)) != 0)
        return ex;
    if (conf_path == NULL)
        conf_path = getenv("EXPLODER_CONF");
    if (conf_path == NULL)
        conf_path = DEFAULT_CONF;
    log_init("exploder", LOG_LVL_INFO, NULL);
    deliver = strcmp(cmd, "deliver") == 0;
    /* deliver's standard error goes into the MTA's bounces: one line with
     * an RFC 3463 status there (4.3.5: the MTA keeps the mail while the
     * admin fixes the configuration), and the log elsewhere */
    rc = xp_conf_load(conf_path, &c, &line);
    if (rc != XP_OK) {
        if (line > 0)
            fprintf(stderr, "%sexploder: %s:%d: %s\n", deliver ? "4.3.5 " : "", conf_path, line,
                    xp_conf_error()[0] != '\0' ? xp_conf_error() : "bad or unknown setting");
        else
            fprintf(stderr, "%sexploder: cannot read %s: %s\n", deliver ? "4.3.5 " : "", conf_path, xp_strerror(rc));
        return deliver ? XP_EX_TEMPFAIL : XP_EX_CONFIG;
    }
    /* Under an MTA's pipe transport, stderr becomes the bounce text: the
     * diagnostic log goes to [log] file, or for deliver without one (or
     * when it cannot be opened) to syslog (mail); stderr keeps the one-line
     * reason with its RFC 3463 status. */
    if (c->log_file != NULL && (log_fp = open_log(c->log_file)) != NULL)
        log_init("exploder", LOG_LVL_INFO, log_fp);
    else if (deliver)
        log_use_syslog(LOG_MAIL);
    log_set_level(verbose ? LOG_LVL_DEBUG : (enum log_level)c->log_level);
    if (c->log_file != NULL && log_fp == NULL)
        log_warn("cannot open the log file, logging to %s path=\"%s\"", deliver ? "syslog" : "stderr",
                 log_qs(c->log_file));
    if (c->spool_path == NULL) {
        fprintf(stderr, "%sexploder: %s: [spool] path is required\n", deliver ? "4.3.5 " : "", conf_path);
        ex = deliver ? XP_EX_TEMPFAIL : XP_EX_CONFIG;
        goto out;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        ex = deliver ? XP_EX_TEMPFAIL : 1;
        goto out;
    }
    if (strcmp(cmd, "deliver") == 0)
        ex = cmd_deliver(c, argc - i, argv + i);
    else if (strcmp(cmd, "run") == 0)
        ex = cmd_run(c, argc - i, argv + i);
    else if (strcmp(cmd, "list") == 0)
        ex = cmd_list(c, argc - i - 1, argv + i + 1);
    else
        ex = XP_EX_USAGE; /* not reached: the command was checked above */
    /* list show's lines must have reached their file: on a full disk or
     * a closed standard output they did not, and exit 0 would leave a
     * script a short file. (deliver and run: the MTA and cron read exit
     * codes that mean the mail, not a report.) */
    if (ex == 0 && strcmp(cmd, "list") == 0) {
        errno = 0;
        if (fflush(stdout) != 0 || ferror(stdout)) {
            fprintf(stderr, "exploder: %s: cannot write standard output: %s\n", cmd,
                    errno != 0 ? strerror(errno) : "write error");
            ex = 1;
        }
    }
    curl_global_cleanup();
out:
    xp_conf_free(c);
    if (log_fp != NULL) {
        log_init("exploder", LOG_LVL_ERROR, NULL);
        fclose(log_fp);
    }
    return ex;
}
