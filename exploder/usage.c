/* usage.c: the exploder's usage errors, one line each (cmd.h). */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cmd.h"

/* Arguments are shown with control characters as '?': the line stays one. */
static void put_printable(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        fputc(*p < 0x20 || *p == 0x7f ? '?' : *p, stderr);
}

int xp_usage_error(const char *status, const char *fmt, ...)
{
    char msg[256];
    va_list ap;

    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fputs(status, stderr);
    fputs("exploder: ", stderr);
    put_printable(msg);
    fputs(" (see exploder --help)\n", stderr);
    return XP_EX_USAGE;
}

int xp_getopt_error(const char *status, const char *cmd, int ch, char **argv)
{
    const char *arg = optind > 0 ? argv[optind - 1] : "";
    int n = (int)strcspn(arg, "=");

    if (strncmp(arg, "--", 2) != 0)
        return xp_usage_error(status, "%s: unknown option -%c", cmd, optopt > 0x20 && optopt < 0x7f ? optopt : '?');
    if (n > 48)
        n = 48;
    if (ch == ':')
        return xp_usage_error(status, "%s: option %.*s needs a value", cmd, n, arg);
    if (optopt != 0 && arg[n] == '=')
        return xp_usage_error(status, "%s: option %.*s takes no value", cmd, n, arg);
    return xp_usage_error(status, "%s: unknown option %.*s", cmd, n, arg);
}
