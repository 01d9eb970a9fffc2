/* names.c: see names.h (moved out of store.c so that programs without a
 * database can validate names). */
#include "names.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "mailaddr.h"
#include "util.h"

const char *gs_wrap_name(gs_wrap w)
{
    switch (w) {
    case GS_WRAP_OAEP: return "oaep";
    case GS_WRAP_PKCS1V15: return "pkcs1v15";
    default: return "default";
    }
}

gs_err gs_wrap_parse(const char *name, gs_wrap *out)
{
    *out = GS_WRAP_DEFAULT;
    if (name != NULL && strcmp(name, "oaep") == 0)
        *out = GS_WRAP_OAEP;
    else if (name != NULL && strcmp(name, "pkcs1v15") == 0)
        *out = GS_WRAP_PKCS1V15;
    else
        return gs_err_set(GS_ERR_ARGS, "wrap must be oaep or pkcs1v15");
    return GS_OK;
}

static const char *const method_names[] = {"tls", "recipient-key", "group-secret", "membership-cert", "local-key"};

gs_err gs_methods_parse(const char *list, unsigned *out)
{
    unsigned m = 0;
    const char *p = list;
    *out = 0;
    if (list == NULL || *list == '\0')
        return gs_err_set(GS_ERR_ARGS, "empty method list");
    while (*p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        bool found = false;
        for (size_t i = 0; i < GS_ARRAY_LEN(method_names); i++) {
            if (strlen(method_names[i]) == n && strncmp(method_names[i], p, n) == 0) {
                m |= 1u << i;
                found = true;
            }
        }
        if (!found) {
            char word[64], q[80];
            (void)snprintf(word, sizeof(word), "%.*s", (int)(n < 60 ? n : 60), p);
            return gs_err_set(GS_ERR_ARGS, "unknown method '%s' (expected tls, recipient-key, group-secret, "
                              "membership-cert, local-key)", log_quote(q, sizeof(q), word));
        }
        p = end ? end + 1 : p + n;
        if (end && *p == '\0')
            return gs_err_set(GS_ERR_ARGS, "empty method name in list");
    }
    *out = m;
    return GS_OK;
}

void gs_methods_format(unsigned methods, char *buf, size_t bufsize)
{
    size_t used = 0;
    if (bufsize == 0)
        return;
    buf[0] = '\0';
    for (size_t i = 0; i < GS_ARRAY_LEN(method_names); i++) {
        if (!(methods & (1u << i)))
            continue;
        int n = snprintf(buf + used, bufsize - used, "%s%s", used ? "," : "", method_names[i]);
        if (n < 0 || (size_t)n >= bufsize - used)
            return;
        used += (size_t)n;
    }
}

const char *gs_role_name(gs_role role)
{
    switch (role) {
    case GS_ROLE_MEMBER: return "member";
    case GS_ROLE_EXPLODER: return "exploder";
    case GS_ROLE_ADMIN: return "admin";
    }
    return "?";
}

gs_err gs_role_parse(const char *name, gs_role *out)
{
    static const gs_role roles[] = {GS_ROLE_MEMBER, GS_ROLE_EXPLODER, GS_ROLE_ADMIN};
    for (size_t i = 0; i < GS_ARRAY_LEN(roles); i++) {
        if (name && strcmp(name, gs_role_name(roles[i])) == 0) {
            *out = roles[i];
            return GS_OK;
        }
    }
    return gs_err_set(GS_ERR_ARGS, "unknown role (expected member, exploder or admin)");
}

bool gs_valid_group_name(const char *name)
{
    size_t n;
    if (name == NULL || (n = strlen(name)) == 0 || n > GS_NAME_MAX)
        return false;
    if (!islower((unsigned char)name[0]) && !isdigit((unsigned char)name[0]))
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!(islower(c) || isdigit(c) || c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

bool gs_valid_email(const char *email) { return mailaddr_problem(email) == NULL; }
