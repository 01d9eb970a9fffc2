/* gm_store.c: groupmail's local stores: pinned group certificates, the
 * group secret keys (kept wrapped to the member key, as the server sent
 * them) and cached membership certificates. Every file 0600, written
 * atomically; directories 0700. */
#include "gm_store.h"

#include <dirent.h>
#include <stdbool.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "log.h"
#include "util.h"

#define MAX_PIN_FILE (256u * 1024)
#define MAX_SECRET_FILE (16u * 1024)

/* An entry of the store (sub/<id>ext: a pin, a group's secret-key
 * directory, a membership certificate or key) named by the server as it
 * was typed, from before gm_store_id read one server however it is
 * typed: moved to its name now, when that has none, so that an upgrade
 * keeps what a store holds. Nothing when the names are the same, the old
 * one is absent, or the new one exists (it is the one used). */
static void store_move_typed(const gm_config *c, const char *sub, const char *ext)
{
    char id[600], typed[600], from[4096], to[4096];
    struct stat st;
    int a, b;

    if (c->store == NULL || gm_store_id(c->server, c->group, id, sizeof(id)) != 0 ||
        gm_store_id_as_typed(c->server, c->group, typed, sizeof(typed)) != 0 || strcmp(id, typed) == 0)
        return;
    a = snprintf(from, sizeof(from), "%s/%s/%s%s", c->store, sub, typed, ext);
    b = snprintf(to, sizeof(to), "%s/%s/%s%s", c->store, sub, id, ext);
    if (a < 0 || (size_t)a >= sizeof(from) || b < 0 || (size_t)b >= sizeof(to))
        return;
    if (lstat(from, &st) != 0 || lstat(to, &st) == 0 || errno != ENOENT)
        return;
    if (rename(from, to) != 0)
        log_debug("store entry not moved to its name from=\"%s\" err=\"%s\"", log_qs(from), strerror(errno));
}

/* ---- pinned group certificates ------------------------------------------ */

char *gm_pin_path(const gm_config *c)
{
    char id[600];
    size_t n;
    if (gm_store_id(c->server, c->group, id, sizeof(id) - 8) != 0)
        return NULL;
    store_move_typed(c, "pins", ".pem");
    n = strlen(id);
    snprintf(id + n, sizeof(id) - n, ".pem");
    return gm_store_path(c, "pins", id);
}

/* The pin named by the server as typed (an older groupmail's name for
 * it) into out: 1 when that name is not the pin's own, 0 when it is (or
 * cannot be had: nothing to compare). */
static int typed_pin_path(const gm_config *c, char *out, size_t cap)
{
    char id[600], typed[600];
    int n;

    if (c->store == NULL || gm_store_id(c->server, c->group, id, sizeof(id)) != 0 ||
        gm_store_id_as_typed(c->server, c->group, typed, sizeof(typed)) != 0 || strcmp(id, typed) == 0)
        return 0;
    n = snprintf(out, cap, "%s/pins/%s.pem", c->store, typed);
    return n > 0 && (size_t)n < cap;
}

/* Two pins of one server, its own (p: buf, len) and one an older
 * groupmail named by the server as typed, left there because the own one
 * existed (store_move_typed moves only onto no pin): when they differ,
 * which certificate the server's is cannot be told here (one of them was
 * taken on a first use under a spelling, as a re-keyed or an
 * impostor's certificate was), so neither is used. 0, or -3 said. */
static int pin_twins(const gm_config *c, const char *p, const unsigned char *buf, size_t len)
{
    char typed[4096];
    unsigned char *other = NULL;
    size_t olen = 0;
    int rc = 0;

    if (typed_pin_path(c, typed, sizeof(typed)) != 1 || access(typed, F_OK) != 0)
        return 0;
    if (util_read_file(typed, MAX_PIN_FILE, &other, &olen) != UTIL_OK || olen != len ||
        memcmp(other, buf, len) != 0) {
        gm_err("two pins for this server differ: %s and %s (one was taken under another spelling of its URL): "
               "check which is the group's certificate and remove the other, or fetch-cert --repin",
               p, typed);
        rc = -3;
    }
    free(other);
    return rc;
}

int gm_pin_load(const gm_config *c, STACK_OF(X509) **chain)
{
    char *p = gm_pin_path(c);
    unsigned char *buf = NULL;
    size_t len = 0;
    int rc = -1;

    *chain = NULL;
    if (p == NULL)
        return -1;
    if (util_read_file(p, MAX_PIN_FILE, &buf, &len) != UTIL_OK)
        goto out;
    if ((rc = pin_twins(c, p, buf, len)) != 0)
        goto out;
    rc = -1;
    if (gm_pem_certs(buf, len, chain) != 0) {
        gm_err("pinned certificate %s is corrupt", p);
        rc = -2;
        goto out;
    }
    rc = 0;
out:
    free(buf);
    free(p);
    return rc;
}

int gm_pin_save(const gm_config *c, STACK_OF(X509) *chain)
{
    char *p = gm_pin_path(c), typed[4096];
    BIO *b = BIO_new(BIO_s_mem());
    char *data;
    long n;
    int rc = -1;

    if (p == NULL || b == NULL)
        goto out;
    for (int i = 0; i < sk_X509_num(chain); i++)
        if (!PEM_write_bio_X509(b, sk_X509_value(chain, i)))
            goto out;
    n = BIO_get_mem_data(b, &data);
    if (n <= 0 || util_write_file_atomic(p, data, (size_t)n, 0600) != UTIL_OK) {
        gm_err("cannot write %s", p);
        goto out;
    }
    /* the pin is now this one under every spelling: an older one named as
     * the server was typed (pin_twins) goes */
    if (typed_pin_path(c, typed, sizeof(typed)) == 1 && unlink(typed) != 0 && errno != ENOENT) {
        gm_err("cannot remove %s: %s", typed, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    BIO_free(b);
    free(p);
    return rc;
}

/* ---- secret keys ------------------------------------------------------------ */

static int cert_sha256_hex(X509 *cert, char out[65]);

/* One directory per group and member certificate: keys wrapped to
 * another member's key are never mixed in. */
static char *secret_dir(const gm_config *c, X509 *member_cert)
{
    char id[600], sub[800], fp[65];
    if (member_cert == NULL || cert_sha256_hex(member_cert, fp) != 0 ||
        gm_store_id(c->server, c->group, id, sizeof(id)) != 0)
        return NULL;
    store_move_typed(c, "secret-keys", "");
    fp[16] = '\0';
    snprintf(sub, sizeof(sub), "secret-keys/%s/%s", id, fp);
    return gm_store_path(c, sub, NULL);
}

static int cert_sha256_hex(X509 *cert, char out[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (!X509_digest(cert, EVP_sha256(), md, &mdlen) || mdlen != 32)
        return -1;
    util_hex(md, 32, out);
    return 0;
}

int gm_secret_store_save(const gm_config *c, X509 *member_cert, const gs_secret_keys *keys)
{
    char *dir = secret_dir(c, member_cert), path[4200], fp[65] = "";
    int rc = -1;

    if (dir == NULL)
        return -1;
    if (cert_sha256_hex(member_cert, fp) != 0)
        goto out;
    for (size_t i = 0; i < keys->n; i++) {
        const gs_secret_key *k = &keys->keys[i];
        char *kid = NULL, *wk = NULL, *text = NULL;
        json_t *o = NULL;
        int bad = 1;
        if (util_b64_encode(k->kek_id, k->kek_id_len, &kid) == UTIL_OK &&
            util_b64_encode(k->wrapped_key, k->wrapped_key_len, &wk) == UTIL_OK &&
            (o = json_pack("{s:s,s:s,s:I,s:s,s:s,s:s,s:s}", "group", c->group, "server", c->server, "version",
                           (json_int_t)k->version, "kek_id", kid, "wrapped_key", wk, "algorithm", k->algorithm,
                           "member_cert_sha256", fp)) != NULL &&
            (text = json_dumps(o, JSON_INDENT(1))) != NULL) {
            snprintf(path, sizeof(path), "%s/v%llu.json", dir, (unsigned long long)k->version);
            if (util_write_file_atomic(path, text, strlen(text), 0600) == UTIL_OK)
                bad = 0;
            else
                gm_err("cannot write %s", path);
        }
        free(kid);
        free(wk);
        free(text);
        json_decref(o);
        if (bad)
            goto out;
    }
    rc = 0;
out:
    free(dir);
    return rc;
}

void gm_secret_entry_clear(gm_secret_entry *e)
{
    OPENSSL_clear_free(e->kek_id, e->kek_id_len);
    OPENSSL_clear_free(e->wrapped_key, e->wrapped_key_len);
    memset(e, 0, sizeof(*e));
}

/* Non-empty, printable ASCII without spaces. */
static bool is_token(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++)
        if (*s <= 0x20 || *s >= 0x7f)
            return false;
    return true;
}

int gm_secret_entry_parse(const unsigned char *buf, size_t len, gm_secret_entry *out)
{
    json_t *o, *jk, *jw, *ja, *jv;
    int rc = -1;

    memset(out, 0, sizeof(*out));
    if ((o = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, NULL)) == NULL)
        return -1;
    jk = json_object_get(o, "kek_id");
    jw = json_object_get(o, "wrapped_key");
    ja = json_object_get(o, "algorithm");
    jv = json_object_get(o, "version");
    if (!json_is_string(jk) || !json_is_string(jw) || !json_is_integer(jv) || json_integer_value(jv) < 0 ||
        util_b64_decode(json_string_value(jk), json_string_length(jk), 1024, &out->kek_id, &out->kek_id_len) !=
            UTIL_OK ||
        util_b64_decode(json_string_value(jw), json_string_length(jw), 4096, &out->wrapped_key,
                        &out->wrapped_key_len) != UTIL_OK)
        goto out;
    out->version = (uint64_t)json_integer_value(jv);
    /* shown by keys list, one line per version: a name, or "?" (an empty
     * or odd one must not break or forge lines); only "RSA-OAEP-256"
     * changes what we do */
    if (!json_is_string(ja) || !is_token(json_string_value(ja)) ||
        util_strlcpy(out->algorithm, json_string_value(ja), sizeof(out->algorithm)) != UTIL_OK)
        util_strlcpy(out->algorithm, "?", sizeof(out->algorithm));
    rc = 0;
out:
    if (rc != 0)
        gm_secret_entry_clear(out);
    json_decref(o);
    return rc;
}

/* One stored version, dir/name, when name is "vN.json" and the file reads
 * (bounded) and parses: 0, else -1. */
static int secret_entry_load(const char *dir, const char *name, gm_secret_entry *e)
{
    char path[4200];
    unsigned char *buf = NULL;
    size_t len = 0, l = strlen(name);
    int rc;

    memset(e, 0, sizeof(*e));
    if (l < 6 || strcmp(name + l - 5, ".json") != 0 || name[0] != 'v')
        return -1;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (util_read_file(path, MAX_SECRET_FILE, &buf, &len) != UTIL_OK)
        return -1;
    rc = gm_secret_entry_parse(buf, len, e);
    free(buf);
    return rc;
}

int gm_secret_store_find(const gm_config *c, X509 *member_cert, const unsigned char *kek_id, size_t kek_id_len,
                         gm_stored_secret *out)
{
    char *dir = secret_dir(c, member_cert);
    DIR *d = NULL;
    struct dirent *de;
    int rc = -1;

    memset(out, 0, sizeof(*out));
    if (dir == NULL || (d = opendir(dir)) == NULL)
        goto out;
    while (rc != 0 && (de = readdir(d)) != NULL) {
        gm_secret_entry e;
        if (secret_entry_load(dir, de->d_name, &e) != 0)
            continue;
        if (e.kek_id_len == kek_id_len && memcmp(e.kek_id, kek_id, kek_id_len) == 0) {
            out->version = e.version;
            out->sha256 = strcmp(e.algorithm, "RSA-OAEP-256") == 0;
            out->wrapped_key = e.wrapped_key;
            out->wrapped_key_len = e.wrapped_key_len;
            e.wrapped_key = NULL;
            e.wrapped_key_len = 0;
            rc = 0;
        }
        gm_secret_entry_clear(&e);
    }
out:
    if (d != NULL)
        closedir(d);
    free(dir);
    return rc;
}

void gm_stored_secret_clear(gm_stored_secret *s)
{
    OPENSSL_clear_free(s->wrapped_key, s->wrapped_key_len);
    memset(s, 0, sizeof(*s));
}

/* One listed version (gm_secret_store_list). */
typedef struct listed_secret {
    uint64_t version;
    char line[2400];
} listed_secret;

static int listed_cmp(const void *a, const void *b)
{
    const listed_secret *x = a, *y = b;
    return x->version < y->version ? -1 : x->version > y->version;
}

#define MAX_LISTED 4096u

/* Reads every vN.json of one member directory into *v (grown, capped). */
static int list_member_dir(const char *dir, const char *fp16, listed_secret **v, size_t *n, size_t *cap)
{
    DIR *d = opendir(dir);
    struct dirent *de;

    if (d == NULL)
        return errno == ENOENT ? 0 : -1;
    while ((de = readdir(d)) != NULL) {
        gm_secret_entry e;
        char hex[2 * 768 + 1];
        if (secret_entry_load(dir, de->d_name, &e) != 0)
            continue;
        if (*n == *cap) {
            listed_secret *nv;
            size_t ncap = *cap ? *cap * 2 : 8;
            if (ncap > MAX_LISTED || (nv = realloc(*v, ncap * sizeof(**v))) == NULL) {
                gm_secret_entry_clear(&e);
                closedir(d);
                return -1;
            }
            *v = nv;
            *cap = ncap;
        }
        util_hex(e.kek_id, e.kek_id_len, hex);
        (*v)[*n].version = e.version;
        snprintf((*v)[*n].line, sizeof((*v)[*n].line), "v%llu kek_id=%s algorithm=%s member_cert=%s",
                 (unsigned long long)e.version, hex, e.algorithm, fp16);
        (*n)++;
        gm_secret_entry_clear(&e);
    }
    closedir(d);
    return 0;
}

long gm_secret_store_list(const gm_config *c, X509 *member_cert, FILE *out)
{
    char id[600], gdir[4096], mdir[4200], fp[65];
    listed_secret *v = NULL;
    size_t n = 0, cap = 0;
    long rc = -1;
    DIR *d = NULL;
    struct dirent *de;

    if (c->store == NULL || gm_store_id(c->server, c->group, id, sizeof(id)) != 0) {
        gm_err("keys list: no store directory or group");
        return -1;
    }
    store_move_typed(c, "secret-keys", "");
    /* Built by hand: listing must not create the store. */
    snprintf(gdir, sizeof(gdir), "%s/secret-keys/%s", c->store, id);
    if (member_cert != NULL) {
        if (cert_sha256_hex(member_cert, fp) != 0)
            goto out;
        fp[16] = '\0';
        snprintf(mdir, sizeof(mdir), "%s/%s", gdir, fp);
        if (list_member_dir(mdir, fp, &v, &n, &cap) != 0) {
            gm_err("cannot read %s", mdir);
            goto out;
        }
    } else if ((d = opendir(gdir)) != NULL) {
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] == '.' || strlen(de->d_name) != 16)
                continue;
            int w = snprintf(mdir, sizeof(mdir), "%s/%s", gdir, de->d_name);
            if (w < 0 || (size_t)w >= sizeof(mdir)) {
                gm_err("store path too long: %s", gdir);
                goto out;
            }
            if (list_member_dir(mdir, de->d_name, &v, &n, &cap) != 0) {
                gm_err("cannot read %s", mdir);
                goto out;
            }
        }
    } else if (errno != ENOENT) {
        gm_err("cannot read %s: %s", gdir, strerror(errno));
        goto out;
    }
    if (n > 1)
        qsort(v, n, sizeof(*v), listed_cmp);
    for (size_t i = 0; i < n; i++)
        if (fprintf(out, "%s\n", v[i].line) < 0)
            goto out;
    if (fflush(out) != 0) {
        gm_err("cannot write the output");
        goto out;
    }
    rc = (long)n;
out:
    if (d != NULL)
        closedir(d);
    free(v);
    return rc;
}

/* ---- membership certificates -------------------------------------------------- */

static char *mc_path(const gm_config *c, const char *ext)
{
    char id[600];
    size_t n;
    if (gm_store_id(c->server, c->group, id, sizeof(id) - 8) != 0)
        return NULL;
    store_move_typed(c, "membership", ext);
    n = strlen(id);
    snprintf(id + n, sizeof(id) - n, "%s", ext);
    return gm_store_path(c, "membership", id);
}

void gm_mcert_clear(gm_mcert *m)
{
    X509_free(m->cert);
    EVP_PKEY_free(m->pkey);
    free(m->cert_pem);
    if (m->key_pem != NULL)
        OPENSSL_clear_free(m->key_pem, m->key_pem_len);
    memset(m, 0, sizeof(*m));
}

/* Fills the PEM buffers from cert/pkey. */
static int mcert_pems(gm_mcert *m)
{
    BIO *b = NULL;
    char *data;
    long n;
    int rc = -1;

    if ((b = BIO_new(BIO_s_mem())) == NULL || !PEM_write_bio_X509(b, m->cert) ||
        (n = BIO_get_mem_data(b, &data)) <= 0 || (m->cert_pem = malloc((size_t)n)) == NULL)
        goto out;
    memcpy(m->cert_pem, data, (size_t)n);
    m->cert_pem_len = (size_t)n;
    BIO_free(b);
    /* BIO_s_secmem: the key PEM is wiped when the BIO is freed */
    if ((b = BIO_new(BIO_s_secmem())) == NULL || !PEM_write_bio_PrivateKey(b, m->pkey, NULL, NULL, 0, NULL, NULL) ||
        (n = BIO_get_mem_data(b, &data)) <= 0 || (m->key_pem = malloc((size_t)n)) == NULL)
        goto out;
    memcpy(m->key_pem, data, (size_t)n);
    m->key_pem_len = (size_t)n;
    rc = 0;
out:
    BIO_free(b);
    return rc;
}

int gm_mcert_load(const gm_config *c, long min_validity, gm_mcert *m)
{
    char *cp = mc_path(c, ".pem"), *kp = mc_path(c, ".key");
    unsigned char *kbuf = NULL;
    size_t klen = 0;
    BIO *b = NULL;
    time_t limit = time(NULL) + min_validity;
    int rc = -1;

    memset(m, 0, sizeof(*m));
    if (cp == NULL || kp == NULL)
        goto out;
    if ((m->cert = gm_read_cert_file_quiet(cp)) == NULL)
        goto out;
    if (X509_cmp_time(X509_get0_notAfter(m->cert), &limit) <= 0)
        goto out; /* expired, or about to */
    if (util_read_file(kp, 64 * 1024, &kbuf, &klen) != UTIL_OK || (b = BIO_new_mem_buf(kbuf, (int)klen)) == NULL ||
        (m->pkey = PEM_read_bio_PrivateKey(b, NULL, gm_no_passphrase, NULL)) == NULL || X509_check_private_key(m->cert, m->pkey) != 1)
        goto out;
    if (mcert_pems(m) != 0)
        goto out;
    rc = 0;
out:
    ERR_clear_error();
    if (rc != 0)
        gm_mcert_clear(m);
    BIO_free(b);
    util_secret_free(kbuf, klen);
    free(cp);
    free(kp);
    return rc;
}

int gm_mcert_new_key(gm_mcert *m, char **csr_pem, size_t *csr_len)
{
    X509_REQ *req = NULL;
    X509_NAME *nm = NULL;
    BIO *b = NULL;
    char *data;
    long n;
    int rc = -1;

    *csr_pem = NULL;
    *csr_len = 0;
    /* RSA-2048: the group server re-wraps with RSA-OAEP only. */
    if ((m->pkey = EVP_RSA_gen(2048)) == NULL)
        goto out;
    if ((req = X509_REQ_new()) == NULL || !X509_REQ_set_version(req, 0) || (nm = X509_NAME_new()) == NULL ||
        !X509_REQ_set_subject_name(req, nm) || !X509_REQ_set_pubkey(req, m->pkey) ||
        X509_REQ_sign(req, m->pkey, EVP_sha256()) <= 0)
        goto out;
    if ((b = BIO_new(BIO_s_mem())) == NULL || !PEM_write_bio_X509_REQ(b, req) ||
        (n = BIO_get_mem_data(b, &data)) <= 0 || (*csr_pem = malloc((size_t)n + 1)) == NULL)
        goto out;
    memcpy(*csr_pem, data, (size_t)n);
    (*csr_pem)[n] = '\0';
    *csr_len = (size_t)n;
    rc = 0;
out:
    if (rc != 0)
        gm_err("cannot make a key pair and CSR for a membership certificate");
    ERR_clear_error();
    BIO_free(b);
    X509_NAME_free(nm);
    X509_REQ_free(req);
    return rc;
}

int gm_mcert_accept(const gm_config *c, gm_mcert *m, const char *cert_pem, size_t cert_len)
{
    STACK_OF(X509) *sk = NULL;
    char *cp = NULL, *kp = NULL;
    util_atomic_file *certf = NULL;
    FILE *fp;
    int rc = GM_EXIT_UNREACHABLE;

    if (gm_pem_certs((const unsigned char *)cert_pem, cert_len, &sk) != 0) {
        gm_err("the certificate server answered no certificate");
        goto out;
    }
    m->cert = sk_X509_shift(sk);
    if (X509_check_private_key(m->cert, m->pkey) != 1) {
        gm_err("the certificate server answered a certificate for another key");
        goto out;
    }
    rc = GM_EXIT_ERROR;
    if (mcert_pems(m) != 0 || (cp = mc_path(c, ".pem")) == NULL || (kp = mc_path(c, ".key")) == NULL) {
        gm_err("cannot store the membership certificate");
        goto out;
    }
    /* The certificate's bytes on disk first (a full disk fails here,
     * changing nothing), then the key, then the certificate renamed into
     * place: a cached certificate without its key is never used, and no
     * failure leaves a new key beside the old certificate. */
    if (util_atomic_open(cp, 0600, &certf) != UTIL_OK || (fp = util_atomic_fp(certf)) == NULL ||
        fwrite(m->cert_pem, 1, m->cert_pem_len, fp) != m->cert_pem_len || fflush(fp) != 0 ||
        fsync(fileno(fp)) != 0 || util_write_file_atomic(kp, m->key_pem, m->key_pem_len, 0600) != UTIL_OK) {
        gm_err("cannot store the membership certificate in %s: %s", cp, strerror(errno));
        goto out;
    }
    if (util_atomic_commit(certf) != UTIL_OK) {
        int err = errno;
        certf = NULL; /* freed by the commit */
        (void)unlink(kp);
        gm_err("cannot store the membership certificate in %s: %s", cp, strerror(err));
        goto out;
    }
    certf = NULL;
    rc = GM_EXIT_OK;
out:
    if (certf != NULL)
        util_atomic_abort(certf);
    ERR_clear_error();
    sk_X509_pop_free(sk, X509_free);
    free(cp);
    free(kp);
    return rc;
}

char *gm_mcert_path(const gm_config *c) { return mc_path(c, ".pem"); }
