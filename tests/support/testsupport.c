/* testsupport.c: see testsupport.h. Test code: reports problems on stderr. */
#define _XOPEN_SOURCE 700
#include "testsupport.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/ec.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <p11-kit/pkcs11.h>

#ifndef GS_SOURCE_DIR
#error "GS_SOURCE_DIR must be defined by the build"
#endif
#ifndef GS_TEST_WORK_DIR
#error "GS_TEST_WORK_DIR must be defined by the build"
#endif
#ifndef GS_SOFTHSM2_MODULE
#define GS_SOFTHSM2_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#endif
#ifndef GS_P11FAULT_MODULE
#define GS_P11FAULT_MODULE ""
#endif

const char *testtoken_softhsm_module(void)
{
    return GS_SOFTHSM2_MODULE;
}

const char *testtoken_p11fault_module(void)
{
    return GS_P11FAULT_MODULE;
}

static int run_provision(const char *dir, const char *label)
{
    char script[1024];
    pid_t pid;
    int status = 0;

    snprintf(script, sizeof(script), "%s/scripts/provision-softhsm", GS_SOURCE_DIR);
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            close(fd);
        }
        setenv("SOFTHSM2_MODULE", GS_SOFTHSM2_MODULE, 1);
        execl(script, script, dir, label, (char *)NULL);
        _exit(127);
    }
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "testtoken_make: %s failed (status %d)\n", script, status);
        return -1;
    }
    return 0;
}

int testtoken_make(const char *label, char *dir_out, size_t cap)
{
    char tmpl[1024], conf[1100], safe[33];
    size_t i, n = 0;
    struct stat st;

    if (dir_out != NULL && cap > 0)
        dir_out[0] = '\0';
    if (label == NULL || *label == '\0' || strlen(label) > 32 || dir_out == NULL)
        return -1;
    if (stat(GS_SOFTHSM2_MODULE, &st) != 0) {
        fprintf(stderr, "testtoken_make: SoftHSM module %s missing (run scripts/setup)\n",
                GS_SOFTHSM2_MODULE);
        return -1;
    }
    for (i = 0; label[i] != '\0' && n < sizeof(safe) - 1; i++)
        safe[n++] = (label[i] >= 'a' && label[i] <= 'z') || (label[i] >= 'A' && label[i] <= 'Z') ||
                            (label[i] >= '0' && label[i] <= '9')
                        ? label[i]
                        : '_';
    safe[n] = '\0';
    if (mkdir(GS_TEST_WORK_DIR, 0700) != 0 && errno != EEXIST)
        return -1;
    if ((size_t)snprintf(tmpl, sizeof(tmpl), "%s/tok-%s-XXXXXX", GS_TEST_WORK_DIR, safe) >= sizeof(tmpl))
        return -1;
    if (mkdtemp(tmpl) == NULL) {
        fprintf(stderr, "testtoken_make: mkdtemp %s: %s\n", tmpl, strerror(errno));
        return -1;
    }
    if (run_provision(tmpl, label) != 0)
        return -1;
    snprintf(conf, sizeof(conf), "%s/softhsm2.conf", tmpl);
    if (stat(conf, &st) != 0 || setenv("SOFTHSM2_CONF", conf, 1) != 0)
        return -1;
    if (strlen(tmpl) >= cap)
        return -1;
    memcpy(dir_out, tmpl, strlen(tmpl) + 1);
    return 0;
}

int testtoken_pin_source(const char *dir, char *buf, size_t cap)
{
    if (dir == NULL || buf == NULL)
        return -1;
    return (size_t)snprintf(buf, cap, "%s/user-pin", dir) < cap ? 0 : -1;
}

int testtoken_read_pin(const char *dir, char *buf, size_t cap)
{
    char path[1100];
    FILE *f;
    size_t n;

    if (testtoken_pin_source(dir, path, sizeof(path)) != 0 || cap == 0)
        return -1;
    if ((f = fopen(path, "r")) == NULL)
        return -1;
    n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = '\0';
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    return n > 0 ? 0 : -1;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

int testtoken_remove(const char *dir)
{
    if (dir == NULL || *dir == '\0' || strstr(dir, "/tok-") == NULL)
        return -1; /* only directories we made */
    return nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- fault module control ---------------------------------------------- */

static void *fault_sym(const char *name)
{
    static void *dl;

    if (dl == NULL && GS_P11FAULT_MODULE[0] != '\0') {
        /* Normally p11-kit has loaded it already (same path: same handle);
         * otherwise load it now, which also keeps its counters alive
         * across hsm_close(). */
        dl = dlopen(GS_P11FAULT_MODULE, RTLD_NOW | RTLD_NOLOAD);
        if (dl == NULL)
            dl = dlopen(GS_P11FAULT_MODULE, RTLD_NOW | RTLD_LOCAL);
    }
    return dl != NULL ? dlsym(dl, name) : NULL;
}

int testfault_inject(const char *func, unsigned long rv, int count)
{
    void (*fn)(const char *, unsigned long, int);

    *(void **)(&fn) = fault_sym("p11fault_inject");
    if (fn == NULL)
        return -1;
    fn(func, rv, count);
    return 0;
}

int testfault_clear(void)
{
    void (*fn)(void);

    *(void **)(&fn) = fault_sym("p11fault_clear");
    if (fn == NULL)
        return -1;
    fn();
    return 0;
}

unsigned long testfault_calls(const char *func)
{
    unsigned long (*fn)(const char *);

    *(void **)(&fn) = fault_sym("p11fault_calls");
    return fn != NULL ? fn(func) : 0;
}

int testfault_override_bool(unsigned long type, int value)
{
    void (*fn)(unsigned long, int);

    *(void **)(&fn) = fault_sym("p11fault_override_bool");
    if (fn == NULL)
        return -1;
    fn(type, value);
    return 0;
}

int testfault_private_sensitive(unsigned long type)
{
    void (*fn)(unsigned long);

    *(void **)(&fn) = fault_sym("p11fault_private_sensitive");
    if (fn == NULL)
        return -1;
    fn(type);
    return 0;
}

int testfault_token_flags(unsigned long flags)
{
    void (*fn)(unsigned long);

    *(void **)(&fn) = fault_sym("p11fault_token_flags");
    if (fn == NULL)
        return -1;
    fn(flags);
    return 0;
}

long testfault_close_all_sessions(void)
{
    unsigned long (*fn)(void);

    *(void **)(&fn) = fault_sym("p11fault_close_all_sessions");
    return fn != NULL ? (long)fn() : -1;
}

/* ---- software keys --------------------------------------------------------- */

EVP_PKEY *testkey_rsa(unsigned bits)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits);
}

EVP_PKEY *testkey_ec(const char *curve)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", curve);
}

int testkey_spki(EVP_PKEY *pkey, unsigned char **der, size_t *len)
{
    unsigned char *tmp = NULL;
    int n;

    *der = NULL;
    *len = 0;
    if ((n = i2d_PUBKEY(pkey, &tmp)) <= 0)
        return -1;
    if ((*der = malloc((size_t)n)) == NULL) {
        OPENSSL_free(tmp);
        return -1;
    }
    memcpy(*der, tmp, (size_t)n);
    *len = (size_t)n;
    OPENSSL_free(tmp);
    return 0;
}

EVP_PKEY *testkey_from_spki(const unsigned char *der, size_t len)
{
    const unsigned char *p = der;
    EVP_PKEY *k = d2i_PUBKEY(NULL, &p, (long)len);

    if (k != NULL && p != der + len) {
        EVP_PKEY_free(k);
        return NULL;
    }
    return k;
}

int testfault_disconnect(void)
{
    void (*fn)(void);

    *(void **)(&fn) = fault_sym("p11fault_disconnect");
    if (fn == NULL)
        return -1;
    fn();
    return 0;
}

int testfault_break_on_attribute(unsigned long type)
{
    void (*fn)(unsigned long);

    *(void **)(&fn) = fault_sym("p11fault_break_on_attribute");
    if (fn == NULL)
        return -1;
    fn(type);
    return 0;
}

int testfault_find_batch(unsigned long n)
{
    void (*fn)(unsigned long);

    *(void **)(&fn) = fault_sym("p11fault_find_batch");
    if (fn == NULL)
        return -1;
    fn(n);
    return 0;
}

int testfault_mech_pad(unsigned long n, unsigned long grow, int grow_calls)
{
    void (*fn)(unsigned long, unsigned long, int);

    *(void **)(&fn) = fault_sym("p11fault_mech_pad");
    if (fn == NULL)
        return -1;
    fn(n, grow, grow_calls);
    return 0;
}

int testfault_slot_pad(unsigned long n, unsigned long grow, int grow_calls)
{
    void (*fn)(unsigned long, unsigned long, int);

    *(void **)(&fn) = fault_sym("p11fault_slot_pad");
    if (fn == NULL)
        return -1;
    fn(n, grow, grow_calls);
    return 0;
}

struct testtoken_copy {
    CK_FUNCTION_LIST *fl;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE copy;
};

struct testtoken_copy *testtoken_copy_secret(const char *token_label, const char *label)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR);
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16, got = 0;
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    struct testtoken_copy *c = calloc(1, sizeof(*c));
    size_t tl = strlen(token_label);
    bool ok = false;
    void *dl = dlopen(testtoken_softhsm_module(), RTLD_NOW | RTLD_NOLOAD);

    if (c == NULL || dl == NULL || tl > 32)
        goto out;
    *(void **)(&get_list) = dlsym(dl, "C_GetFunctionList");
    if (get_list == NULL || get_list(&c->fl) != CKR_OK || c->fl->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        goto out;
    for (CK_ULONG i = 0; i < n && c->s == 0; i++) {
        CK_TOKEN_INFO ti;
        if (c->fl->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, token_label, tl) == 0 &&
            (tl == 32 || ti.label[tl] == ' ') &&
            c->fl->C_OpenSession(slots[i], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &c->s) != CKR_OK)
            goto out;
    }
    if (c->s == 0 || c->fl->C_FindObjectsInit(c->s, t, 2) != CKR_OK)
        goto out;
    ok = c->fl->C_FindObjects(c->s, &h, 1, &got) == CKR_OK && got == 1;
    ok = c->fl->C_FindObjectsFinal(c->s) == CKR_OK && ok;
    /* SoftHSM refuses C_CopyObject without a template: the label again. */
    ok = ok && c->fl->C_CopyObject(c->s, h, &t[1], 1, &c->copy) == CKR_OK;
out:
    if (!ok && c != NULL) {
        if (c->s != 0)
            (void)c->fl->C_CloseSession(c->s);
        free(c);
        c = NULL;
    }
    if (dl != NULL)
        (void)dlclose(dl);
    return c;
}

int testtoken_slot_id(const char *token_label, unsigned long *slot)
{
    CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR);
    CK_FUNCTION_LIST *fl = NULL;
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16;
    size_t tl = strlen(token_label);
    int rc = -1;
    void *dl = dlopen(testtoken_softhsm_module(), RTLD_NOW | RTLD_NOLOAD);

    if (dl == NULL || tl > 32)
        goto out;
    *(void **)(&get_list) = dlsym(dl, "C_GetFunctionList");
    if (get_list == NULL || get_list(&fl) != CKR_OK || fl->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        goto out;
    for (CK_ULONG i = 0; i < n && rc != 0; i++) {
        CK_TOKEN_INFO ti;
        if (fl->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, token_label, tl) == 0 &&
            (tl == 32 || ti.label[tl] == ' ')) {
            *slot = slots[i];
            rc = 0;
        }
    }
out:
    if (dl != NULL)
        (void)dlclose(dl);
    return rc;
}

/* A read-write session on the token of token_label through the SoftHSM
 * module hsm_open loaded: 0 (*dl to dlclose, *s to close), or -1. */
static int open_rw(const char *token_label, void **dl, CK_FUNCTION_LIST **fl, CK_SESSION_HANDLE *s)
{
    CK_RV (*get_list)(CK_FUNCTION_LIST_PTR_PTR);
    CK_SLOT_ID slots[16];
    CK_ULONG ns = 16;
    size_t tl = strlen(token_label);

    *s = 0;
    *dl = dlopen(testtoken_softhsm_module(), RTLD_NOW | RTLD_NOLOAD);
    if (*dl == NULL || tl > 32)
        return -1;
    *(void **)(&get_list) = dlsym(*dl, "C_GetFunctionList");
    if (get_list == NULL || get_list(fl) != CKR_OK || (*fl)->C_GetSlotList(CK_TRUE, slots, &ns) != CKR_OK)
        return -1;
    for (CK_ULONG i = 0; i < ns && *s == 0; i++) {
        CK_TOKEN_INFO ti;
        if ((*fl)->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, token_label, tl) == 0 &&
            (tl == 32 || ti.label[tl] == ' ') &&
            (*fl)->C_OpenSession(slots[i], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, s) != CKR_OK)
            return -1;
    }
    return *s != 0 ? 0 : -1;
}

int testtoken_data_objects(const char *token_label, const char *label, int n)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE t[4] = {{CKA_CLASS, &cls, sizeof(cls)},
                         {CKA_LABEL, (void *)label, strlen(label)},
                         {CKA_TOKEN, &yes, sizeof(yes)},
                         {CKA_PRIVATE, &no, sizeof(no)}};
    CK_FUNCTION_LIST *fl = NULL;
    CK_SESSION_HANDLE s = 0;
    void *dl = NULL;
    int rc = open_rw(token_label, &dl, &fl, &s);

    for (int i = 0; i < n && rc == 0; i++) {
        CK_OBJECT_HANDLE h;
        if (fl->C_CreateObject(s, t, 4, &h) != CKR_OK)
            rc = -1;
    }
    while (n == 0 && rc == 0) {
        CK_OBJECT_HANDLE h;
        CK_ULONG got = 0;
        if (fl->C_FindObjectsInit(s, t, 2) != CKR_OK)
            rc = -1;
        else if (fl->C_FindObjects(s, &h, 1, &got) != CKR_OK)
            rc = -1;
        if (fl->C_FindObjectsFinal(s) != CKR_OK)
            rc = -1;
        if (rc != 0 || got == 0)
            break;
        if (fl->C_DestroyObject(s, h) != CKR_OK)
            rc = -1;
    }
    if (s != 0 && fl->C_CloseSession(s) != CKR_OK)
        rc = -1;
    if (dl != NULL)
        (void)dlclose(dl);
    return rc;
}

int testtoken_ec_point_as(const char *token_label, const char *label, const unsigned char *point, size_t n)
{
    CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
    CK_KEY_TYPE kt = CKK_EC;
    CK_BBOOL yes = CK_TRUE;
    unsigned char id[64], params[128];
    CK_ATTRIBUTE find[2] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_ATTRIBUTE rd[2] = {{CKA_ID, id, sizeof(id)}, {CKA_EC_PARAMS, params, sizeof(params)}};
    CK_ATTRIBUTE t[7] = {{CKA_CLASS, &cls, sizeof(cls)},
                         {CKA_KEY_TYPE, &kt, sizeof(kt)},
                         {CKA_TOKEN, &yes, sizeof(yes)},
                         {CKA_LABEL, (void *)label, strlen(label)},
                         {CKA_ID, id, 0},
                         {CKA_EC_PARAMS, params, 0},
                         {CKA_EC_POINT, (void *)point, n}};
    CK_FUNCTION_LIST *fl = NULL;
    CK_SESSION_HANDLE s = 0;
    CK_OBJECT_HANDLE h = 0;
    CK_ULONG got = 0;
    void *dl = NULL;
    int rc = open_rw(token_label, &dl, &fl, &s);

    if (rc == 0 &&
        (fl->C_FindObjectsInit(s, find, 2) != CKR_OK || fl->C_FindObjects(s, &h, 1, &got) != CKR_OK))
        rc = -1;
    if (rc == 0 && fl->C_FindObjectsFinal(s) != CKR_OK)
        rc = -1;
    if (rc == 0 && (got != 1 || fl->C_GetAttributeValue(s, h, rd, 2) != CKR_OK))
        rc = -1;
    if (rc == 0) {
        t[4].ulValueLen = rd[0].ulValueLen;
        t[5].ulValueLen = rd[1].ulValueLen;
        if (fl->C_DestroyObject(s, h) != CKR_OK || fl->C_CreateObject(s, t, 7, &h) != CKR_OK)
            rc = -1;
    }
    if (s != 0 && fl->C_CloseSession(s) != CKR_OK)
        rc = -1;
    if (dl != NULL)
        (void)dlclose(dl);
    return rc;
}

int testtoken_copy_destroy(struct testtoken_copy *c)
{
    int rc = 0;

    if (c == NULL)
        return -1;
    if (c->fl->C_DestroyObject(c->s, c->copy) != CKR_OK)
        rc = -1;
    if (c->fl->C_CloseSession(c->s) != CKR_OK)
        rc = -1;
    free(c);
    return rc;
}

const char *testtoken_nss_module(void)
{
    static const char *const paths[] = {"/usr/lib/x86_64-linux-gnu/libsoftokn3.so",
                                        "/usr/lib/aarch64-linux-gnu/libsoftokn3.so", "/usr/lib/libsoftokn3.so",
                                        "/usr/lib64/libsoftokn3.so"};
    struct stat st;
    size_t i;

    for (i = 0; i < sizeof(paths) / sizeof(paths[0]); i++)
        if (stat(paths[i], &st) == 0)
            return paths[i];
    return NULL;
}

int testtoken_make_nss(char *dir_out, size_t cap)
{
    char tmpl[1024], db[1100], pin[1100];
    unsigned char rnd[8];
    char hex[17];
    FILE *f;
    pid_t pid;
    int status = 0, fd;
    size_t i;

    if (dir_out == NULL || cap == 0)
        return -1;
    dir_out[0] = '\0';
    if (testtoken_nss_module() == NULL) {
        fprintf(stderr, "testtoken_make_nss: libsoftokn3.so missing (libnss3; run scripts/setup)\n");
        return -1;
    }
    if (mkdir(GS_TEST_WORK_DIR, 0700) != 0 && errno != EEXIST)
        return -1;
    if ((size_t)snprintf(tmpl, sizeof(tmpl), "%s/tok-nss-XXXXXX", GS_TEST_WORK_DIR) >= sizeof(tmpl) ||
        mkdtemp(tmpl) == NULL)
        return -1;
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        return -1;
    for (i = 0; i < sizeof(rnd); i++)
        snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
    snprintf(pin, sizeof(pin), "%s/pin", tmpl);
    if ((fd = open(pin, O_WRONLY | O_CREAT | O_EXCL, 0600)) < 0 || (f = fdopen(fd, "w")) == NULL)
        return -1;
    fprintf(f, "%s\n", hex);
    fclose(f);
    snprintf(db, sizeof(db), "sql:%s", tmpl);
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int nul = open("/dev/null", O_WRONLY);
        if (nul >= 0) {
            dup2(nul, STDOUT_FILENO);
            close(nul);
        }
        /* certutil -f reads the new database password from the file. */
        execlp("certutil", "certutil", "-N", "-d", db, "-f", pin, (char *)NULL);
        _exit(127);
    }
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -1;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "testtoken_make_nss: certutil -N failed (status %d; libnss3-tools)\n", status);
        return -1;
    }
    if (strlen(tmpl) >= cap)
        return -1;
    memcpy(dir_out, tmpl, strlen(tmpl) + 1);
    return 0;
}
