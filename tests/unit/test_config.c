/* Unit tests for groupsrv/config.c: defaults, every section, and the
 * one-line errors naming key and line. */
#define _GNU_SOURCE /* memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "inifile.h"

#define MIN_HSM "[hsm]\nmodule = /usr/lib/softhsm/libsofthsm2.so\npin_source = env:PIN\n"

/* free() of this program (linked with --wrap=free): counts the blocks
 * freed that still hold free_watch, a secret that should have been wiped
 * first. */
void __real_free(void *p);
void __wrap_free(void *p);
static const char *free_watch;
static unsigned free_saw;
void __wrap_free(void *p)
{
    if (p != NULL && free_watch != NULL && memmem(p, malloc_usable_size(p), free_watch, strlen(free_watch)) != NULL)
        free_saw++;
    __real_free(p);
}

static struct gs_config *load_ok(const char *text)
{
    struct gs_config *c = NULL;
    gs_err err = gs_config_load_string(text, "t.conf", &c);
    if (err != GS_OK)
        fail_msg("config rejected: %s", gs_err_detail());
    return c;
}

static void expect_error(const char *text, const char *detail)
{
    struct gs_config *c = (struct gs_config *)0x1;
    assert_int_equal(gs_config_load_string(text, "t.conf", &c), GS_ERR_CONFIG);
    assert_null(c);
    if (strstr(gs_err_detail(), detail) == NULL)
        fail_msg("detail '%s' lacks '%s'", gs_err_detail(), detail);
}

static void test_defaults(void **state)
{
    (void)state;
    struct gs_config *c = load_ok(MIN_HSM);
    assert_string_equal(c->server.listen, "127.0.0.1:8443");
    assert_int_equal(c->server.threads, 4);
    assert_int_equal(c->server.max_body, 65536);
    assert_int_equal(c->server.unwrap_batch_max, 100);
    assert_true(c->server.auto_rotate_secret_on_remove);
    assert_int_equal(c->server.rate_limit, 0);
    assert_string_equal(c->hsm.token, "pkcs11:token=groupsrv");
    assert_string_equal(c->db.path, "/var/lib/groupsrv/groupsrv.db");
    assert_string_equal(c->db.unreplicated_writes, "answer");
    assert_string_equal(c->audit.path, "/var/log/groupsrv/audit.jsonl");
    assert_null(c->certsrv.listen);
    assert_null(c->certsrv.url);
    assert_int_equal(c->certsrv.lifetime, 3600);
    assert_string_equal(c->ca.key_label, "gs:ca");
    assert_null(c->tls.cert);
    assert_string_equal(c->path, "t.conf");
    gs_config_free(c);
}

static void test_full(void **state)
{
    (void)state;
    struct gs_config *c = load_ok("; comment\n"
                                  "[server]\nlisten = 0.0.0.0:9443 ; inline comment\nthreads = 8\nmax_body = 2048\n"
                                  "unwrap_batch_max = 50\nrate_limit = 10\ntimeout = 5\nmax_connections = 10\n"
                                  "auto_rotate_secret_on_remove = no\nmetrics = any\nlog_level = debug\n"
                                  "[tls]\ncert = /c.pem\nkey = pkcs11:object=tls\nclient_ca = /ca.pem\n"
                                  "[hsm]\nmodule = softhsm2\ntoken = pkcs11:token=x\npin_source = /pin\n"
                                  "max_sessions = 16\n"
                                  "[db]\npath = /tmp/x.db\n[audit]\npath = /tmp/a.jsonl\n"
                                  "[certsrv]\nlisten = [::1]:8444\nlifetime = 600\n"
                                  "[ca]\nkey_label = my:ca\ngroup_cert_days = 10\nmember_cert_days = 5\nca_days = 20\n");
    assert_string_equal(c->server.listen, "0.0.0.0:9443");
    assert_int_equal(c->server.threads, 8);
    assert_int_equal(c->server.max_body, 2048);
    assert_int_equal(c->server.rate_limit, 10);
    assert_int_equal(c->server.rate_burst, 20); /* default 2 * rate_limit */
    assert_false(c->server.auto_rotate_secret_on_remove);
    assert_string_equal(c->server.metrics, "any");
    assert_string_equal(c->tls.key, "pkcs11:object=tls");
    assert_string_equal(c->hsm.module, "softhsm2");
    assert_int_equal(c->hsm.max_sessions, 16);
    assert_string_equal(c->certsrv.listen, "[::1]:8444");
    assert_string_equal(c->certsrv.url, "https://[::1]:8444");
    assert_int_equal(c->certsrv.lifetime, 600);
    assert_string_equal(c->ca.key_label, "my:ca");
    assert_int_equal(c->ca.ca_days, 20);
    gs_config_free(c);
}

static void test_errors(void **state)
{
    (void)state;
    expect_error(MIN_HSM "[server]\nlisten = 1.2.3.4:1\nlisen = x\n", "t.conf:6: unknown key 'lisen' in [server]");
    expect_error(MIN_HSM "[servr]\nlisten = x\n", "t.conf:5: unknown section [servr]");
    /* with no key under it (inifile.h): named at its own line, before or at the end */
    expect_error(MIN_HSM "[Server]\n# nothing\n[server]\nthreads = 2\n", "t.conf:4: unknown section [Server]");
    expect_error(MIN_HSM "[server]\nthreads = 2\n[Server]\n", "t.conf:6: unknown section [Server]");
    /* an indented [x] after a key continues the key's value (inih's rule), not a section */
    expect_error(MIN_HSM "[server]\nlisten = 1.2.3.4:1\n  [x]\n", "t.conf:6: duplicate key 'listen' in [server]");
    expect_error(MIN_HSM "[server]\nthreads = 2\nthreads = 3\n", "t.conf:6: duplicate key 'threads'");
    expect_error(MIN_HSM "[server]\nthreads = 0\n", "t.conf:5: bad value for 'threads'");
    expect_error(MIN_HSM "[server]\nthreads = 4x\n", "bad value for 'threads'");
    expect_error(MIN_HSM "[server]\nthreads = -1\n", "bad value for 'threads'");
    expect_error(MIN_HSM "[server]\nauto_rotate_secret_on_remove = maybe\n", "expected yes or no");
    expect_error(MIN_HSM "[server]\nlisten = nohost\n", "'listen' in [server] must be host:port");
    expect_error(MIN_HSM "[server]\nlisten = h:70000\n", "must be host:port");
    expect_error(MIN_HSM "[server]\nmetrics = everyone\n",
                 "t.conf:5: bad value for 'metrics' in [server] (expected off, any or admin)");
    expect_error(MIN_HSM "[server]\nlog_level = loud\n",
                 "t.conf:5: bad value for 'log_level' in [server] (expected error, warn, info or debug)");
    expect_error(MIN_HSM "[certsrv]\nlifetime = 10\n", "bad value for 'lifetime'");
    expect_error(MIN_HSM "[db]\nunreplicated_writes = no\n",
                 "t.conf:5: bad value for 'unreplicated_writes' in [db] (expected answer or refuse)");
    expect_error("[hsm]\nmodule = m\n", "missing required key 'pin_source' in [hsm]");
    expect_error("[hsm]\npin_source = p\n", "missing required key 'module' in [hsm]");
    expect_error(MIN_HSM "token = groupsrv\n", "must be a pkcs11: URI");
    expect_error(MIN_HSM "this is not ini\n", "t.conf:4: syntax error");
    expect_error(MIN_HSM "[db]\npath =\n", "empty value for 'path'");
    /* untrusted names are quoted, not echoed raw */
    expect_error(MIN_HSM "[server]\nx\"y = 1\n", "unknown key 'x\\\"y'");
    /* init_args only with a module by path: a name takes x-init-reserved */
    expect_error("[hsm]\nmodule = nss-softokn\npin_source = env:P\ninit_args = configdir='sql:/x'\n",
                 "'init_args' in [hsm] needs a module given by path");
}

/* libinih reads a line into a 200-byte buffer and parses the rest of a
 * longer one as a line of its own: the value cut short, silently (or an
 * error on a line the file does not have). A long line is refused,
 * naming it; a line of INIFILE_LINE_MAX characters is still whole. */
static void test_long_lines(void **state)
{
    (void)state;
    char text[1024], value[256];
    struct gs_config *c = NULL;
    size_t prefix = strlen("path = ");

    memset(value, 'a', sizeof(value));
    value[0] = '/';
    /* exactly INIFILE_LINE_MAX characters: accepted whole */
    value[INIFILE_LINE_MAX - prefix] = '\0';
    (void)snprintf(text, sizeof(text), MIN_HSM "[db]\npath = %s\n", value);
    c = load_ok(text);
    assert_string_equal(c->db.path, value);
    gs_config_free(c);
    /* one more: refused, with its own line number */
    value[INIFILE_LINE_MAX - prefix] = 'a';
    value[INIFILE_LINE_MAX - prefix + 1] = '\0';
    (void)snprintf(text, sizeof(text), MIN_HSM "[db]\npath = %s\n[server]\nthreads = 2\n", value);
    expect_error(text, "t.conf:5: line longer than 199 characters");
    /* a long last line without a newline, and one whose tail looks like a key */
    (void)snprintf(text, sizeof(text), MIN_HSM "[db]\npath = %s", value);
    expect_error(text, "t.conf:5: line longer than 199 characters");
    memset(value, 'a', sizeof(value));
    memcpy(value + 220, "=x", 3);
    (void)snprintf(text, sizeof(text), MIN_HSM "[db]\npath = /%s\n", value);
    expect_error(text, "t.conf:5: line longer than 199 characters");
    /* an error on an earlier line is the one reported */
    (void)snprintf(text, sizeof(text), MIN_HSM "[server]\nthreads = 0\n[db]\npath = /%s\n", value);
    expect_error(text, "t.conf:5: bad value for 'threads'");
}

static void test_init_args(void **state)
{
    (void)state;
    struct gs_config *c = load_ok("[hsm]\nmodule = /usr/lib/x86_64-linux-gnu/libsoftokn3.so\npin_source = env:P\n"
                                  "init_args = configdir='sql:/var/lib/groupsrv/nssdb' certPrefix='' keyPrefix='' "
                                  "secmod='secmod.db' flags=\n");
    assert_string_equal(c->hsm.init_args,
                        "configdir='sql:/var/lib/groupsrv/nssdb' certPrefix='' keyPrefix='' secmod='secmod.db' flags=");
    gs_config_free(c);
    c = load_ok(MIN_HSM);
    assert_null(c->hsm.init_args);
    gs_config_free(c);
}

static void test_file_and_path(void **state)
{
    (void)state;
    char dir[] = "/tmp/gs_test_config.XXXXXX", path[64];
    struct gs_config *c = NULL;
    FILE *f;
    assert_non_null(mkdtemp(dir));
    (void)snprintf(path, sizeof(path), "%s/g.conf", dir);
    assert_int_equal(gs_config_load(path, &c), GS_ERR_CONFIG);
    assert_non_null(strstr(gs_err_detail(), "cannot open"));
    /* a directory opens, but does not read: said so, not "missing module" */
    assert_int_equal(gs_config_load(dir, &c), GS_ERR_CONFIG);
    assert_non_null(strstr(gs_err_detail(), "cannot open config file: Is a directory"));
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(MIN_HSM, f);
    fclose(f);
    assert_int_equal(gs_config_load(path, &c), GS_OK);
    assert_string_equal(c->path, path);
    gs_config_free(c);
    /* a NUL byte would end its line early in inih's eyes: refused */
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(MIN_HSM "[db]\npath = /var/lib/a", f);
    fputc('\0', f);
    fputs("b\n", f);
    fclose(f);
    assert_int_equal(gs_config_load(path, &c), GS_ERR_CONFIG);
    assert_non_null(strstr(gs_err_detail(), "g.conf:5: NUL byte in line"));
    gs_config_free(NULL);

    unsetenv("GROUPSRV_CONF");
    assert_string_equal(gs_config_choose_path(NULL), GS_CONFIG_DEFAULT_PATH);
    setenv("GROUPSRV_CONF", path, 1);
    assert_string_equal(gs_config_choose_path(NULL), path);
    assert_string_equal(gs_config_choose_path("/x.conf"), "/x.conf");
    unsetenv("GROUPSRV_CONF");
    unlink(path);
    rmdir(dir);
}

/* [db] path (SQLite, default) or [db] url (PostgreSQL), exactly one;
 * [audit] store = db needs the URL; [server] instance defaults to the host
 * name. */
static void test_store_choice(void **state)
{
    (void)state;
    char host[256] = "";
    struct gs_config *c = load_ok(MIN_HSM);
    assert_string_equal(gs_config_db_location(c), "/var/lib/groupsrv/groupsrv.db");
    assert_null(c->db.url);
    assert_string_equal(c->audit.store, "file");
    assert_int_equal(gethostname(host, sizeof(host) - 1), 0);
    assert_true(strncmp(c->server.instance, host, 64) == 0);
    gs_config_free(c);

    c = load_ok(MIN_HSM "[db]\nurl = postgresql:///groupsrv?host=/run/postgresql\n"
                        "[audit]\nstore = db\n[server]\ninstance = gs-a\n");
    assert_null(c->db.path);
    assert_string_equal(gs_config_db_location(c), "postgresql:///groupsrv?host=/run/postgresql");
    assert_string_equal(c->audit.store, "db");
    assert_string_equal(c->server.instance, "gs-a");
    gs_config_free(c);

    c = load_ok(MIN_HSM "[db]\nurl = postgresql:///groupsrv\nunreplicated_writes = refuse\n[audit]\nstore = db\n");
    assert_string_equal(c->db.unreplicated_writes, "refuse");
    gs_config_free(c);

    expect_error(MIN_HSM "[db]\npath = /tmp/x.db\nurl = postgresql:///g\n", "both 'path' and 'url'");
    /* refuse is told by the audit table's inserts: set where they are
     * not, it refused nothing while the operator counted on it */
    expect_error(MIN_HSM "[db]\nunreplicated_writes = refuse\n",
                 "t.conf: [db] unreplicated_writes = refuse needs [audit] store = db");
    expect_error(MIN_HSM "[db]\nurl = postgresql:///groupsrv\nunreplicated_writes = refuse\n",
                 "t.conf: [db] unreplicated_writes = refuse needs [audit] store = db");
    expect_error(MIN_HSM "[db]\nurl = /tmp/x.db\n", "must be a postgresql:// URI");
    expect_error(MIN_HSM "[db]\npath = postgres://h/db\n", "use 'url'");
    expect_error(MIN_HSM "[audit]\nstore = db\n", "needs the PostgreSQL store");
    expect_error(MIN_HSM "[audit]\nstore = syslog\n",
                 "t.conf:5: bad value for 'store' in [audit] (expected file or db)");
    expect_error(MIN_HSM "[server]\ninstance = "
                         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n", "'instance'");
    /* the instance names the server's audit chain, and INSTANCE/admin is
     * the admin commands': gs-a/admin would write into gs-a's */
    expect_error(MIN_HSM "[server]\ninstance = gs-a/admin\n",
                 "t.conf: 'instance' in [server] (\"gs-a/admin\") may hold only letters, digits and . - _ :");
    expect_error(MIN_HSM "[server]\ninstance = gs a\n", "'instance' in [server] (\"gs a\")");
    expect_error(MIN_HSM "[server]\ninstance = gs\"a\n", "'instance' in [server]");
    expect_error(MIN_HSM "[server]\ninstance = gs-\xc3\xa4\n", "'instance' in [server]");
    c = load_ok(MIN_HSM "[server]\ninstance = GS-a.example.org_2:1\n");
    assert_string_equal(c->server.instance, "GS-a.example.org_2:1");
    gs_config_free(c);
}

/* A [db] url may carry the role's password: the copies a load makes are
 * wiped when freed, whether the file loaded (serve's configuration) or
 * failed on a later line (the edited file that SIGHUP loads to say a
 * restart would not start). */
static void test_url_password_wiped(void **state)
{
    (void)state;
    struct gs_config *c = NULL;
    free_watch = "Pw0rdSecret";
    free_saw = 0;
    c = load_ok(MIN_HSM "[db]\nurl = postgresql://gs:Pw0rdSecret@db.example.org/groupsrv\n");
    gs_config_free(c);
    assert_int_equal(free_saw, 0);
    expect_error(MIN_HSM "[db]\nurl = postgresql://gs:Pw0rdSecret@db.example.org/groupsrv\n[server\n",
                 "syntax error");
    assert_int_equal(free_saw, 0);
    free_watch = NULL;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_long_lines),
        cmocka_unit_test(test_init_args),
        cmocka_unit_test(test_file_and_path),
        cmocka_unit_test(test_store_choice),
        cmocka_unit_test(test_url_password_wiped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
