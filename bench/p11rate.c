/*
 * p11rate: the limit. T threads, each on its own pooled token session,
 * decrypt the same wrapped content key with the same group key through
 * hsm_decrypt_content_key (RSA-OAEP) or hsm_ecdh_decrypt_content_key
 * (ECDH), the exact calls the group server makes for deliver=tls. Prints
 * one CSV row (see benchutil.h).
 *
 * The module may be SoftHSM itself or p11-kit-client.so (with
 * P11_KIT_SERVER_ADDRESS set) to measure `p11-kit server`.
 *
 *   p11rate --module SO --token URI --pin-source SRC --key REF
 *           [--ri FILE [--cert FILE]] [--alg oaep-sha1|oaep-sha256]
 *           --threads T (--count N | --duration S)
 *           [--name rsa2048] [--variant softhsm] [--header] [--lat-out FILE]
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "benchutil.h"
#include "envelope.h"
#include "hsm.h"
#include "util.h"

#define PROG "p11rate"
#define MAX_THREADS 256
#define LAT_CAP_PER_THREAD 2000000

typedef struct job {
    hsm_ctx *ctx;
    bool ecdh;
    hsm_unwrap_input in;  /* RSA */
    hsm_ecdh_input ein;   /* EC */
    uint64_t count;       /* 0 = until deadline */
    uint64_t deadline_ns; /* 0 = until count */
    atomic_uint_fast64_t issued;
    atomic_bool stop;
    pthread_barrier_t start;
} job;

typedef struct worker {
    job *j;
    pthread_t tid;
    uint64_t ops, errors;
    bench_lat *lat;
    char first_error[160];
} worker;

static hsm_err one_op(job *j)
{
    unsigned char cek[64];
    size_t ceklen = 0;
    hsm_err e;

    if (j->ecdh)
        e = hsm_ecdh_decrypt_content_key(j->ctx, &j->ein, cek, sizeof(cek), &ceklen);
    else
        e = hsm_decrypt_content_key(j->ctx, &j->in, cek, sizeof(cek), &ceklen);
    OPENSSL_cleanse(cek, sizeof(cek));
    return e;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    job *j = w->j;
    uint64_t t0, t1;
    hsm_err e;

    /* Warm-up outside the clock: the first call opens this thread's session. */
    (void)one_op(j);
    pthread_barrier_wait(&j->start);
    for (;;) {
        if (atomic_load(&j->stop))
            break;
        if (j->count && atomic_fetch_add(&j->issued, 1) >= j->count)
            break;
        t0 = bench_now_ns();
        e = one_op(j);
        t1 = bench_now_ns();
        if (j->deadline_ns && t1 >= j->deadline_ns)
            atomic_store(&j->stop, true);
        if (e != HSM_OK) {
            if (w->errors++ == 0)
                snprintf(w->first_error, sizeof(w->first_error), "%s (%s)", hsm_strerror(e),
                         hsm_last_error_detail());
            continue;
        }
        w->ops++;
        bench_lat_add(w->lat, (t1 - t0) / 1000);
    }
    return NULL;
}

static void usage(void)
{
    fprintf(stderr, "usage: " PROG " --module SO --token URI --pin-source SRC --key REF\n"
                    "       [--ri FILE [--cert FILE]] [--alg oaep-sha1|oaep-sha256]\n"
                    "       --threads T (--count N | --duration SECONDS)\n"
                    "       [--name KEYNAME] [--variant NAME] [--header] [--lat-out FILE]\n");
}

/* Self-made input when no --ri is given: OAEP-encrypt 32 random bytes to
 * the public half of the group key, read from the token. */
static int make_oaep_ciphertext(hsm_ctx *ctx, hsm_key *key, hsm_kt_alg alg, unsigned char **ct, size_t *ctlen)
{
    unsigned char *spki = NULL, cek[32];
    const unsigned char *p;
    size_t spki_len = 0;
    EVP_PKEY *pk = NULL;
    EVP_PKEY_CTX *pctx = NULL;
    const EVP_MD *md = alg == HSM_KT_RSA_OAEP_SHA256 ? EVP_sha256() : EVP_sha1();
    int rc = -1;
    hsm_err e;

    *ct = NULL;
    *ctlen = 0;
    if ((e = hsm_key_export_public(ctx, key, &spki, &spki_len)) != HSM_OK) {
        fprintf(stderr, PROG ": cannot read the public key: %s\n", hsm_strerror(e));
        goto out;
    }
    p = spki;
    if ((pk = d2i_PUBKEY(NULL, &p, (long)spki_len)) == NULL || RAND_bytes(cek, sizeof(cek)) != 1)
        goto out;
    if ((pctx = EVP_PKEY_CTX_new(pk, NULL)) == NULL || EVP_PKEY_encrypt_init(pctx) <= 0 ||
        EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(pctx, md) <= 0 || EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) <= 0 ||
        EVP_PKEY_encrypt(pctx, NULL, ctlen, cek, sizeof(cek)) <= 0 || (*ct = malloc(*ctlen)) == NULL ||
        EVP_PKEY_encrypt(pctx, *ct, ctlen, cek, sizeof(cek)) <= 0)
        goto out;
    rc = 0;
out:
    if (rc != 0) {
        fprintf(stderr, PROG ": cannot make an RSA-OAEP test ciphertext (is the key RSA?)\n");
        free(*ct);
        *ct = NULL;
        *ctlen = 0;
    }
    OPENSSL_cleanse(cek, sizeof(cek));
    EVP_PKEY_CTX_free(pctx);
    EVP_PKEY_free(pk);
    free(spki);
    return rc;
}

static X509 *read_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    X509 *x;

    if (f == NULL)
        return NULL;
    x = PEM_read_X509(f, NULL, util_pem_no_passphrase, NULL);
    fclose(f);
    return x;
}

int main(int argc, char **argv)
{
    const char *module = NULL, *token = NULL, *pin = NULL, *keyref = NULL, *ri_path = NULL;
    const char *cert_path = NULL, *name = "key", *variant = "softhsm", *lat_out = NULL;
    uint64_t threads = 1, count = 0;
    double duration = 0.0;
    bool header = false;
    hsm_kt_alg alg = HSM_KT_RSA_OAEP_SHA256;
    hsm_config cfg;
    hsm_ctx *ctx = NULL;
    hsm_key *key = NULL;
    unsigned char *ri_der = NULL, *own_ct = NULL;
    size_t ri_len = 0, own_len = 0, i;
    env_recipient *ri = NULL;
    env_kari_params kp;
    X509 *cert = NULL;
    job j;
    worker *w = NULL;
    bench_lat *all = NULL;
    bench_result res;
    uint64_t t0, t1;
    double cpu0;
    hsm_err e;
    int rc = 1, a;

    memset(&j, 0, sizeof(j));
    memset(&kp, 0, sizeof(kp));
    for (a = 1; a < argc; a++) {
        const char *o = argv[a], *v = a + 1 < argc ? argv[a + 1] : NULL;
        if (strcmp(o, "--header") == 0) {
            header = true;
            continue;
        }
        if (v == NULL) {
            usage();
            goto out;
        }
        a++;
        if (strcmp(o, "--module") == 0)
            module = v;
        else if (strcmp(o, "--token") == 0)
            token = v;
        else if (strcmp(o, "--pin-source") == 0)
            pin = v;
        else if (strcmp(o, "--key") == 0)
            keyref = v;
        else if (strcmp(o, "--ri") == 0)
            ri_path = v;
        else if (strcmp(o, "--cert") == 0)
            cert_path = v;
        else if (strcmp(o, "--name") == 0)
            name = v;
        else if (strcmp(o, "--variant") == 0)
            variant = v;
        else if (strcmp(o, "--lat-out") == 0)
            lat_out = v;
        else if (strcmp(o, "--alg") == 0) {
            if (strcmp(v, "oaep-sha1") == 0)
                alg = HSM_KT_RSA_OAEP_SHA1;
            else if (strcmp(v, "oaep-sha256") == 0)
                alg = HSM_KT_RSA_OAEP_SHA256;
            else {
                usage();
                goto out;
            }
        } else if (strcmp(o, "--threads") == 0) {
            if (bench_arg_u64(PROG, o, v, 1, MAX_THREADS, &threads) != 0)
                goto out;
        } else if (strcmp(o, "--count") == 0) {
            if (bench_arg_u64(PROG, o, v, 1, 100000000, &count) != 0)
                goto out;
        } else if (strcmp(o, "--duration") == 0) {
            if (bench_arg_double(PROG, o, v, 0.1, 3600, &duration) != 0)
                goto out;
        } else {
            usage();
            goto out;
        }
    }
    if (module == NULL || token == NULL || keyref == NULL || (count == 0) == (duration == 0.0)) {
        usage();
        goto out;
    }

    memset(&cfg, 0, sizeof(cfg));
    cfg.module = module;
    cfg.token_uri = token;
    cfg.pin_source = pin;
    cfg.max_sessions = (unsigned)threads; /* one session per thread: no waiting on the pool */
    if ((e = hsm_open(&cfg, &ctx)) != HSM_OK) {
        fprintf(stderr, PROG ": hsm_open: %s (%s)\n", hsm_strerror(e), hsm_last_error_detail());
        goto out;
    }
    if ((e = hsm_key_find(ctx, keyref, HSM_CLASS_PRIVATE, &key)) != HSM_OK) {
        fprintf(stderr, PROG ": key %s: %s (%s)\n", keyref, hsm_strerror(e), hsm_last_error_detail());
        goto out;
    }
    j.ctx = ctx;
    if (ri_path != NULL) {
        /* The same RecipientInfo the load generator sends to the server. */
        env_ri_type type;
        env_kt_alg kt;
        const unsigned char *ek;
        size_t eklen;
        env_err ee;

        if (util_read_file(ri_path, 65536, &ri_der, &ri_len) != 0 ||
            (ee = env_recipient_parse(ri_der, ri_len, &ri)) != ENV_OK) {
            fprintf(stderr, PROG ": %s: not a readable DER RecipientInfo\n", ri_path);
            goto out;
        }
        if (cert_path != NULL && (cert = read_cert(cert_path)) == NULL) {
            fprintf(stderr, PROG ": %s: not a PEM certificate\n", cert_path);
            goto out;
        }
        type = env_recipient_type(ri);
        if (type == ENV_RI_KTRI) {
            if (env_recipient_kt_alg(ri, &kt) != ENV_OK ||
                env_recipient_encrypted_key(ri, cert, &ek, &eklen) != ENV_OK ||
                (kt != ENV_KT_RSA_OAEP_SHA1 && kt != ENV_KT_RSA_OAEP_SHA256)) {
                fprintf(stderr, PROG ": %s: KTRI is not RSA-OAEP\n", ri_path);
                goto out;
            }
            j.in.alg = kt == ENV_KT_RSA_OAEP_SHA1 ? HSM_KT_RSA_OAEP_SHA1 : HSM_KT_RSA_OAEP_SHA256;
            j.in.encrypted_key = ek;
            j.in.encrypted_key_len = eklen;
        } else if (type == ENV_RI_KARI) {
            if ((ee = env_recipient_kari_params(ri, cert, &kp)) != ENV_OK) {
                fprintf(stderr, PROG ": %s: KARI: %s\n", ri_path, env_strerror(ee));
                goto out;
            }
            j.ecdh = true;
            j.ein.group_key = key;
            j.ein.peer_point = kp.peer_point;
            j.ein.peer_point_len = kp.peer_point_len;
            j.ein.kdf_hash = kp.kdf_sha256 ? HSM_OAEP_SHA256 : HSM_OAEP_SHA1;
            j.ein.shared_info = kp.shared_info;
            j.ein.shared_info_len = kp.shared_info_len;
            j.ein.kek_len = kp.kek_len;
            j.ein.wrapped_key = kp.wrapped_key;
            j.ein.wrapped_key_len = kp.wrapped_key_len;
        } else {
            fprintf(stderr, PROG ": %s: neither KTRI nor KARI\n", ri_path);
            goto out;
        }
    } else {
        if (make_oaep_ciphertext(ctx, key, alg, &own_ct, &own_len) != 0)
            goto out;
        j.in.alg = alg;
        j.in.encrypted_key = own_ct;
        j.in.encrypted_key_len = own_len;
    }
    j.in.group_key = key;
    j.in.expected_len = 32;

    /* One checked call before timing: a wrong key or PIN is an error, not a rate. */
    if ((e = one_op(&j)) != HSM_OK) {
        fprintf(stderr, PROG ": decrypt failed: %s (%s)\n", hsm_strerror(e), hsm_last_error_detail());
        goto out;
    }

    if ((w = calloc(threads, sizeof(*w))) == NULL || (all = bench_lat_new(LAT_CAP_PER_THREAD)) == NULL)
        goto out;
    j.count = count;
    atomic_init(&j.issued, 0);
    atomic_init(&j.stop, false);
    if (pthread_barrier_init(&j.start, NULL, (unsigned)threads + 1) != 0)
        goto out;
    for (i = 0; i < threads; i++) {
        w[i].j = &j;
        if ((w[i].lat = bench_lat_new(count ? count : LAT_CAP_PER_THREAD / threads + 1)) == NULL ||
            pthread_create(&w[i].tid, NULL, worker_main, &w[i]) != 0) {
            fprintf(stderr, PROG ": cannot start thread %zu\n", i);
            exit(1); /* threads already waiting on the barrier: no clean unwind */
        }
    }
    /* Set before the barrier releases the workers (the barrier orders it). */
    cpu0 = bench_cpu_seconds();
    t0 = bench_now_ns();
    j.deadline_ns = duration > 0 ? t0 + (uint64_t)(duration * 1e9) : 0;
    pthread_barrier_wait(&j.start);
    memset(&res, 0, sizeof(res));
    for (i = 0; i < threads; i++) {
        if (pthread_join(w[i].tid, NULL) != 0)
            exit(1); /* cannot happen for a joinable thread we started */
        res.ops += w[i].ops;
        res.errors += w[i].errors;
        bench_lat_merge(all, w[i].lat);
        if (w[i].errors)
            fprintf(stderr, PROG ": thread %zu: %llu errors, first: %s\n", i,
                    (unsigned long long)w[i].errors, w[i].first_error);
    }
    t1 = bench_now_ns();
    pthread_barrier_destroy(&j.start);
    res.tool = PROG;
    res.variant = variant;
    res.key = name;
    res.conc = (unsigned)threads;
    res.seconds = (double)(t1 - t0) / 1e9;
    res.cpu_s = bench_cpu_seconds() - cpu0;
    bench_result_print(stdout, header, &res, all);
    if (lat_out != NULL && bench_lat_write_dist(all, lat_out) != 0)
        fprintf(stderr, PROG ": cannot write %s\n", lat_out);
    rc = res.errors ? 3 : 0;
out:
    if (w != NULL)
        for (i = 0; i < threads; i++)
            bench_lat_free(w[i].lat);
    free(w);
    bench_lat_free(all);
    env_kari_params_clear(&kp);
    env_recipient_free(ri);
    free(ri_der);
    free(own_ct);
    X509_free(cert);
    hsm_key_free(key);
    hsm_close(ctx);
    return rc;
}
