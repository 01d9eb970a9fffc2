/*
 * api.c: the REST endpoints of the group server listener (DESIGN.md "REST
 * API", docs/api.md), on the network side: each handler checks the client
 * certificate (verified now), parses and bounds the body, the base64 and
 * the CMS, and asks the key holder for everything that needs a key, the
 * token or the database (membership is checked there, on every request);
 * it answers when the key holder has. Input errors are answered only after
 * the key holder has authorised the caller (srv_authz_then), so a refusal
 * always comes first, as it did when one process did both.
 */
#include "server.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "envelope.h"
#include "jsonw.h"
#include "log.h"
#include "mailaddr.h"
#include "util.h"

#define MAX_RI_DER 16384       /* one RecipientInfo */
#define MAX_ENC_KEY 1024       /* an RSA-8192 ciphertext is 1024 bytes */
#define MAX_CERT_PEM 65536
/* A RecipientInfo whose algorithm is not unwrapped here, KTRI or KARI. */
#define KT_UNSUPPORTED                                                                                       \
    "the RecipientInfo's key algorithm is not one this server unwraps (it takes " ENV_KT_SUPPORTED ")"

/* ---- small helpers ------------------------------------------------------- */

static const char *method_names[] = {"tls", "recipient-key", "group-secret", "membership-cert", "local-key"};

static json_t *methods_json(unsigned m)
{
    json_t *a = json_array();
    for (unsigned i = 0; a != NULL && i < GS_ARRAY_LEN(method_names); i++)
        if (m & (1u << i))
            json_array_append_new(a, json_string(method_names[i]));
    return a;
}

/* Base64 as a JSON string; the text is wiped (it may be a content key). */
static json_t *b64_json(const unsigned char *p, size_t len)
{
    char *s = NULL;
    json_t *j;

    if (util_b64_encode(p, len, &s) != UTIL_OK)
        return NULL;
    j = json_string(s);
    OPENSSL_cleanse(s, strlen(s));
    free(s);
    return j;
}

static int peer_is_rsa(const peer_info *p)
{
    return p->cert != NULL && EVP_PKEY_get_base_id(X509_get0_pubkey(p->cert)) == EVP_PKEY_RSA;
}

/* ---- unwrap ------------------------------------------------------------------ */

enum deliver { DELIVER_TLS = IPC_DELIVER_TLS, DELIVER_RECIPIENT_KEY, DELIVER_GROUP_SECRET };
static const char *const deliver_names[] = {"", "tls", "recipient-key", "group-secret"};
static const unsigned deliver_bits[] = {0, GS_METHOD_TLS, GS_METHOD_RECIPIENT_KEY, GS_METHOD_GROUP_SECRET};

/* The item's optional "key_version": *k is NULL when absent, else the
 * group's key of that version. -1 with e set when it is not an integer or
 * names no key version of the group. */
static int item_key_version(json_t *item, const gview *v, const gview_key **k, srv_err *e)
{
    json_t *jv = json_object_get(item, "key_version");

    *k = NULL;
    if (jv == NULL)
        return 0;
    if (!json_is_integer(jv)) {
        srv_err_set(e, 400, "bad_request", "\"key_version\" must be an integer");
        return -1;
    }
    for (size_t i = 0; i < v->nversions && *k == NULL; i++)
        if ((json_int_t)v->versions[i].version == json_integer_value(jv))
            *k = &v->versions[i];
    if (*k == NULL) {
        srv_err_set(e, 400, "unknown_key_version", "no such key version");
        return -1;
    }
    return 0;
}

/* An item's base64 member `name` (v), decoded into *out (the caller frees
 * it) of 1..max bytes: 0, or -1 with e set (400 bad_request: not a
 * string; 413 too_large; 400 bad_base64: not base64, or empty). */
static int item_b64(json_t *v, const char *name, size_t max, unsigned char **out, size_t *len, srv_err *e)
{
    int urc;

    if (!json_is_string(v)) {
        srv_err_set(e, 400, "bad_request", "\"%s\" must be a base64 string", name);
        return -1;
    }
    urc = util_b64_decode(json_string_value(v), json_string_length(v), (max + 2) / 3 * 4, out, len);
    /* The text's bound lets through up to two bytes more than max (base64
     * rounds up to whole quanta): the bytes are held to max too, or one
     * over the key holder's field cap fails as "token unavailable". */
    if (urc == UTIL_E_TOOBIG || (urc == UTIL_OK && *len > max)) {
        srv_err_set(e, 413, "too_large", "\"%s\" exceeds %zu bytes", name, max);
        return -1;
    }
    if (urc != UTIL_OK || *len == 0) {
        srv_err_set(e, 400, "bad_base64", "\"%s\" is not valid standard base64", name);
        return -1;
    }
    return 0;
}

/* The recipient_info or encrypted_key of one item, as a key holder item
 * (bounded, decoded, matched to a key version of the group's view);
 * -1 with e set. */
static int item_input(json_t *item, const gview *v, uint32_t deliver, ipc_buf *b, srv_err *e)
{
    json_t *jri = json_object_get(item, "recipient_info"), *jek = json_object_get(item, "encrypted_key");
    unsigned char *der = NULL, *raw = NULL;
    size_t der_len = 0, raw_len = 0;
    env_recipient *ri = NULL;
    env_kari_params kp;
    uint32_t cek_len = 0;
    int rc = -1;

    memset(&kp, 0, sizeof(kp));
    if ((jri == NULL) == (jek == NULL)) {
        srv_err_set(e, 400, "bad_request", "give exactly one of \"recipient_info\" and \"encrypted_key\"");
        goto out;
    }
    json_t *jlen = json_object_get(item, "key_length");
    if (jlen != NULL) {
        json_int_t n = json_is_integer(jlen) ? json_integer_value(jlen) : -1;
        if (n != 16 && n != 24 && n != 32) {
            srv_err_set(e, 400, "bad_request", "\"key_length\" must be 16, 24 or 32");
            goto out;
        }
        cek_len = (uint32_t)n;
    }
    json_t *jcalg = json_object_get(item, "content_algorithm");
    if (jcalg != NULL) {
        /* The message's content-encryption algorithm says how long its key
         * is: what a RecipientInfo alone cannot tell. */
        size_t kl = 0;
        char q[80];
        env_err ce = json_is_string(jcalg) ? env_content_alg_key_length(json_string_value(jcalg), &kl, NULL)
                                           : ENV_ERR_ARGS;
        if (ce == ENV_ERR_UNSUPPORTED) {
            srv_err_set(e, 400, "unsupported_algorithm",
                        "\"content_algorithm\" %s is not supported (AES-128/192/256 CBC or GCM, des-ede3-cbc, "
                        "chacha20-poly1305, by name or OID)",
                        log_quote(q, sizeof(q), json_string_value(jcalg)));
            goto out;
        }
        if (ce != ENV_OK) {
            srv_err_set(e, 400, "bad_request",
                        "\"content_algorithm\" must be an OID or a name such as \"aes-128-cbc\" (at most 64 characters)");
            goto out;
        }
        if (cek_len != 0 && cek_len != kl) {
            srv_err_set(e, 400, "bad_request", "\"key_length\" %u contradicts \"content_algorithm\" (a %zu-byte key)",
                        (unsigned)cek_len, kl);
            goto out;
        }
        cek_len = (uint32_t)kl;
    }
    ipc_nest_begin(b, IPC_T_ITEM);
    ipc_put_u32(b, IPC_T_DELIVER, deliver);
    if (cek_len)
        ipc_put_u32(b, IPC_T_CEK_LEN, cek_len);
    if (jri != NULL) {
        if (item_b64(jri, "recipient_info", MAX_RI_DER, &der, &der_len, e) != 0)
            goto out;
        /* The RecipientInfo names the group's issuer as its certificates
         * do: the newest few key versions' issuers spare decoding it. */
        X509 *known[8];
        size_t nknown = 0;
        for (size_t i = 0; i < v->nversions && nknown < GS_ARRAY_LEN(known); i++)
            known[nknown++] = v->versions[i].cert;
        if (env_recipient_parse_known(der, der_len, known, nknown, &ri) != ENV_OK) {
            srv_err_set(e, 400, "bad_recipient_info", "\"recipient_info\" is not a DER RecipientInfo");
            goto out;
        }
        env_ri_type t = env_recipient_type(ri);
        if (t != ENV_RI_KTRI && t != ENV_RI_KARI) {
            srv_err_set(e, 400, "unsupported", "only KeyTransRecipientInfo and KeyAgreeRecipientInfo can be unwrapped");
            goto out;
        }
        if (!env_recipient_version_valid(ri)) {
            srv_err_set(e, 400, "bad_recipient_info", "the RecipientInfo version is not the one RFC 5652 requires");
            goto out;
        }
        /* The identifier names the group key version. */
        const gview_key *k = NULL;
        for (size_t i = 0; i < v->nversions && k == NULL; i++)
            if (gview_key_named(&v->versions[i], ri))
                k = &v->versions[i];
        if (k == NULL) {
            srv_err_set(e, 400, "unknown_recipient", "the RecipientInfo names no key version of this group");
            goto out;
        }
        /* An optional "key_version" is checked as with "encrypted_key",
         * and must name the version the RecipientInfo names. */
        const gview_key *named = NULL;
        if (item_key_version(item, v, &named, e) != 0)
            goto out;
        if (named != NULL && named != k) {
            srv_err_set(e, 400, "unknown_key_version", "\"key_version\" is not the version the RecipientInfo names");
            goto out;
        }
        ipc_put_u32(b, IPC_T_KEY_VERSION, k->version);
        ipc_put_u32(b, IPC_T_FLAGS, IPC_FLAG_FROM_RI);
        env_kt_alg ka;
        env_err ke = env_recipient_kt_alg(ri, &ka);
        if (ke == ENV_ERR_UNSUPPORTED) {
            /* A well-formed RecipientInfo whose algorithm is not unwrapped
             * here is one answer, KTRI or KARI, whatever part of it is
             * unknown (docs/api.md, "Errors"). */
            srv_err_set(e, 400, "unsupported_algorithm", "%s", KT_UNSUPPORTED);
            goto out;
        }
        if (ke != ENV_OK) {
            srv_err_set(e, 400, "bad_recipient_info", "malformed %s",
                        t == ENV_RI_KARI ? "KeyAgreeRecipientInfo" : "KeyTransRecipientInfo");
            goto out;
        }
        switch (ka) {
        case ENV_KT_RSA_OAEP_SHA1: ipc_put_u32(b, IPC_T_ALG, IPC_ALG_OAEP_SHA1); break;
        case ENV_KT_RSA_OAEP_SHA256: ipc_put_u32(b, IPC_T_ALG, IPC_ALG_OAEP_SHA256); break;
        case ENV_KT_RSA_PKCS1V15: ipc_put_u32(b, IPC_T_ALG, IPC_ALG_PKCS1V15); break;
        case ENV_KT_ECDH: ipc_put_u32(b, IPC_T_ALG, IPC_ALG_ECDH); break;
        }
        if (ka == ENV_KT_ECDH) {
            /* Only method F can use it; the key holder refuses the others. */
            if (deliver == DELIVER_TLS) {
                env_err pe = env_recipient_kari_params(ri, k->cert, &kp);
                if (pe == ENV_ERR_UNSUPPORTED) {
                    srv_err_set(e, 400, "unsupported_algorithm", "%s", KT_UNSUPPORTED);
                    goto out;
                }
                if (pe != ENV_OK) {
                    srv_err_set(e, 400, "bad_recipient_info", "malformed KeyAgreeRecipientInfo");
                    goto out;
                }
                ipc_put_bytes(b, IPC_T_PEER_POINT, kp.peer_point, kp.peer_point_len);
                ipc_put_u32(b, IPC_T_KDF_SHA256, kp.kdf_sha256 ? 1 : 0);
                ipc_put_bytes(b, IPC_T_SHARED_INFO, kp.shared_info, kp.shared_info_len);
                ipc_put_u32(b, IPC_T_KEK_LEN, (uint32_t)kp.kek_len);
                ipc_put_bytes(b, IPC_T_WRAPPED, kp.wrapped_key, kp.wrapped_key_len);
            }
        } else {
            const unsigned char *enc;
            size_t enc_len;
            if (env_recipient_encrypted_key(ri, NULL, &enc, &enc_len) != ENV_OK) {
                srv_err_set(e, 400, "bad_recipient_info", "the RecipientInfo carries no encrypted key");
                goto out;
            }
            if (enc_len > MAX_ENC_KEY) {
                srv_err_set(e, 413, "too_large", "the encrypted key exceeds %d bytes", MAX_ENC_KEY);
                goto out;
            }
            ipc_put_bytes(b, IPC_T_ENC_KEY, enc, enc_len);
        }
    } else {
        json_t *jalg = json_object_get(item, "algorithm");
        const char *alg = json_string_value(jalg);
        uint32_t a;
        /* given, but not a string (a number, null): said so, not "required" */
        if (jalg != NULL && alg == NULL) {
            srv_err_set(e, 400, "bad_request", "\"algorithm\" must be a string");
            goto out;
        }
        if (alg == NULL) {
            srv_err_set(e, 400, "bad_request",
                        "\"algorithm\" (RSA-OAEP, RSA-OAEP-256 or RSA-PKCS1-v1_5) is required with "
                        "\"encrypted_key\"");
            goto out;
        }
        if (strcmp(alg, "RSA-OAEP") == 0)
            a = IPC_ALG_OAEP_SHA1;
        else if (strcmp(alg, "RSA-OAEP-256") == 0)
            a = IPC_ALG_OAEP_SHA256;
        else if (strcmp(alg, "RSA-PKCS1-v1_5") == 0)
            a = IPC_ALG_PKCS1V15;
        else {
            srv_err_set(e, 400, "unsupported_algorithm",
                        "\"algorithm\" must be RSA-OAEP, RSA-OAEP-256 or RSA-PKCS1-v1_5");
            goto out;
        }
        if (item_b64(jek, "encrypted_key", MAX_ENC_KEY, &raw, &raw_len, e) != 0)
            goto out;
        const gview_key *k = NULL;
        if (item_key_version(item, v, &k, e) != 0)
            goto out;
        /* Without "key_version" the current version is the key holder's
         * to choose (version 0), from the group as it reads it for this
         * job: this thread's view may predate a `group rotate` or `group
         * retire` made while serving (it is refreshed only once the key
         * holder answers this thread after the change), and the previous
         * version it names would answer unwrap_failed, counted towards a
         * suspension, or unknown_key_version once retired. An EC group's
         * unsupported comes from the key holder as it would from here; a
         * group without a current version is refused here, as before, so
         * that it stays one item's answer in a batch (the key holder
         * fails a whole batch on a 503). */
        if (k == NULL && gview_current(v) == NULL) {
            srv_err_set(e, 503, "no_group_key", "the group has no current key");
            goto out;
        }
        if (k != NULL && k->ec) {
            srv_err_set(e, 400, "unsupported", "a bare encrypted_key needs an RSA group key");
            goto out;
        }
        if (k != NULL)
            ipc_put_u32(b, IPC_T_KEY_VERSION, k->version);
        ipc_put_u32(b, IPC_T_ALG, a);
        ipc_put_bytes(b, IPC_T_ENC_KEY, raw, raw_len);
    }
    ipc_nest_end(b);
    rc = 0;
out:
    env_kari_params_clear(&kp);
    env_recipient_free(ri);
    free(der);
    free(raw);
    return rc;
}

/* The deliver method of one item, checked against the group and the
 * caller (a membership certificate allows only recipient-key). */
static int item_deliver(json_t *item, const char *deflt, const gview *v, const peer_info *p, uint32_t *d,
                        srv_err *e)
{
    json_t *jd = json_object_get(item, "deliver");
    const char *dn = jd ? json_string_value(jd) : deflt;
    int anonymous = p->status == PEER_MEMBERSHIP;

    if (dn == NULL) {
        srv_err_set(e, 400, "bad_request", "\"deliver\" must be a string");
        return -1;
    }
    for (*d = DELIVER_TLS; *d <= DELIVER_GROUP_SECRET; (*d)++)
        if (strcmp(dn, deliver_names[*d]) == 0)
            break;
    if (*d > DELIVER_GROUP_SECRET) {
        srv_err_set(e, 400, "bad_request", "\"deliver\" must be tls, recipient-key or group-secret");
        return -1;
    }
    if (!(v->methods & deliver_bits[*d]) && !(anonymous && *d == DELIVER_RECIPIENT_KEY)) {
        srv_err_set(e, 403, "method_not_allowed", "the group does not allow deliver=%s", dn);
        return -1;
    }
    if (anonymous && *d != DELIVER_RECIPIENT_KEY) {
        srv_err_set(e, 403, "not_a_member", "a membership certificate allows only deliver=recipient-key");
        return -1;
    }
    return 0;
}

/* A request's items between the call and the answer: which went to the
 * key holder (in order) and which were refused here. */
struct unwrap_state {
    int batch;
    size_t n;
    uint32_t *deliver; /* per item; 0: refused here, see err */
    srv_err *err;
};

static void unwrap_state_free(void *p)
{
    struct unwrap_state *st = p;
    if (st != NULL) {
        free(st->deliver);
        free(st->err);
        free(st);
    }
}

/* What one answer's JSON may grow to. It is made from one key-holder
 * frame (at most IPC_MAX_PAYLOAD): base64 adds a third, the keys and
 * punctuation of each item less than that, so twice the frame always
 * fits. A fixed 8 MiB refused unwrap-batch answers that [server]
 * unwrap_batch_max (up to 10000 items of about 1 KiB with RSA-4096)
 * allows. */
#define MAX_ANSWER_JSON (2u * IPC_MAX_PAYLOAD)

/* One item's answer, written into w as an object: 0, or -1 with e set.
 * Nothing is written for an item the key holder refused; an answer that
 * cannot be built (e->status 500) may leave w half written, and the
 * caller then abandons w. The answer is written straight from the key
 * holder's frame: no copy of a plain key is left in freed memory, and w
 * wipes its text when freed. */
static int item_write(struct srv_req *r, uint32_t d, const ipc_msg *res, jsonw *w, srv_err *e)
{
    const unsigned char *p, *kek;
    size_t len, kek_len;
    unsigned char *der = NULL;
    size_t der_len = 0;
    int rc = -1;
    uint32_t status = ipc_u32(res, IPC_T_STATUS, 500);

    if (status != 200) {
        const char *code = ipc_str(res, IPC_T_CODE), *msg = ipc_str(res, IPC_T_MESSAGE);
        srv_err_set(e, (int)status, code ? code : "internal", "%s", msg ? msg : "internal error");
        if (ipc_has(res, IPC_T_RETRY))
            e->retry = ipc_u32(res, IPC_T_RETRY, 5);
        return -1;
    }
    uint32_t version = ipc_u32(res, IPC_T_KEY_VERSION, 0);
    switch (d) {
    case DELIVER_TLS:
        if (ipc_bytes(res, IPC_T_KEY, &p, &len) != 0)
            break;
        jsonw_obj_begin(w);
        jsonw_key(w, "key");
        jsonw_b64(w, p, len);
        rc = 0;
        break;
    case DELIVER_RECIPIENT_KEY:
        /* The key holder wrapped to this certificate's key; the KTRI names it. */
        if (ipc_bytes(res, IPC_T_WRAPPED, &p, &len) != 0 ||
            env_ktri_build(r->peer.cert, ENV_KT_RSA_OAEP_SHA1, p, len, &der, &der_len) != ENV_OK)
            break;
        jsonw_obj_begin(w);
        jsonw_key(w, "recipient_info");
        jsonw_b64(w, der, der_len);
        rc = 0;
        break;
    case DELIVER_GROUP_SECRET: {
        if (ipc_bytes(res, IPC_T_WRAPPED, &p, &len) != 0 || ipc_bytes(res, IPC_T_KEK_ID, &kek, &kek_len) != 0)
            break;
        /* Content keys of 16/24/32 bytes: RFC 3394 (wrapped = key + 8). */
        bool pad = len < 24 || (len - 8) % 8 != 0;
        if (env_kekri_build(kek, kek_len, 256, pad, p, len, &der, &der_len) != ENV_OK)
            break;
        jsonw_obj_begin(w);
        jsonw_key(w, "recipient_info");
        jsonw_b64(w, der, der_len);
        jsonw_key(w, "kek_id");
        jsonw_b64(w, kek, kek_len);
        jsonw_key(w, "secret_version");
        jsonw_int(w, (long long)ipc_u32(res, IPC_T_SECRET_VERSION, 0));
        rc = 0;
        break;
    }
    }
    free(der);
    if (rc != 0) {
        srv_err_set(e, 500, "internal", "could not build the answer");
        return -1;
    }
    jsonw_key(w, "key_version");
    jsonw_int(w, (long long)version);
    jsonw_obj_end(w);
    return 0;
}

/* Sends w's text, or a 500 when it could not be written (out of memory,
 * or a string from the key holder that is not UTF-8, which jansson
 * refused the same way). Frees w. */
static void reply_jsonw(struct srv_req *r, jsonw *w)
{
    const char *text = NULL;
    size_t n = 0;

    jsonw_newline(w);
    jsonw_err we = jsonw_text(w, &text, &n);
    if (we != JSONW_OK)
        srv_reply_error(r, 500, "internal", "the answer could not be written: %s", jsonw_strerror(we));
    else
        srv_reply_bytes(r, 200, "application/json", text, n);
    jsonw_free(w);
}

static void unwrap_answer(struct srv_req *r, const ipc_msg *a)
{
    struct unwrap_state *st = r->ctx;
    jsonw *w = NULL;
    ipc_iter it;
    ipc_msg res;
    srv_err e;

    if (ipc_u32(a, IPC_T_STATUS, 500) != 200) {
        srv_reply_holder_error(r, a);
        return;
    }
    if ((w = jsonw_new(MAX_ANSWER_JSON)) == NULL) {
        srv_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    if (st->batch) {
        jsonw_obj_begin(w);
        jsonw_key(w, "results");
        jsonw_arr_begin(w);
    }
    ipc_iter_init(&it, a, IPC_T_RESULT);
    for (size_t i = 0; i < st->n; i++) {
        int rc = -1;
        if (st->deliver[i] == 0)
            e = st->err[i];
        else if (!ipc_iter_next(&it, NULL, &res))
            srv_err_set(&e, 500, "internal", "the key holder's answer is incomplete");
        else
            rc = item_write(r, st->deliver[i], &res, w, &e);
        if (rc != 0 && (!st->batch || e.status == 500 || e.status == 503)) {
            /* One item fails the request: a single unwrap, or a token or
             * audit failure in a batch (fail closed). */
            jsonw_free(w);
            srv_reply_err(r, &e);
            return;
        }
        if (rc != 0) {
            jsonw_obj_begin(w);
            jsonw_key(w, "status");
            jsonw_int(w, e.status);
            jsonw_key(w, "error");
            jsonw_obj_begin(w);
            jsonw_key(w, "code");
            jsonw_str(w, e.code);
            jsonw_key(w, "message");
            jsonw_str(w, e.msg);
            jsonw_obj_end(w);
            jsonw_obj_end(w);
        }
    }
    if (st->batch) {
        jsonw_arr_end(w);
        jsonw_obj_end(w);
    }
    reply_jsonw(r, w);
}

/* Whether a RecipientInfo named no key version of a view the key holder
 * has not confirmed during this request: this thread may not have heard
 * yet of a change (a `group rotate` while serving) that the key holder
 * already knows, so the view is fetched again before the answer. */
static int stale_miss(const struct srv_req *r, const srv_err *e)
{
    return !r->view_confirmed && e->status == 400 && e->code != NULL &&
           (strcmp(e->code, "unknown_recipient") == 0 || strcmp(e->code, "unknown_key_version") == 0);
}

static void unwrap_one(struct srv_req *r);
static void unwrap_many(struct srv_req *r);

/* Wipes every key-bearing string of a parsed body before it is freed. */
static void unwrap_parsed(struct srv_req *r, json_t *body, int batch)
{
    const peer_info *p = srv_peer(r);
    struct unwrap_state *st = NULL;
    json_t *items = NULL, *single = NULL;
    const char *deflt = "tls";
    srv_err e;
    ipc_buf b;

    ipc_buf_init(&b);
    if (batch) {
        memset(&e, 0, sizeof(e));
        const char *d = srv_json_str(body, "deliver", &e);
        if (e.status != 0)
            goto refuse;
        if (d != NULL)
            deflt = d;
        items = json_object_get(body, "items");
        if (!json_is_array(items) || json_array_size(items) == 0) {
            srv_err_set(&e, 400, "bad_request", "\"items\" must be a non-empty array");
            goto refuse;
        }
        if (json_array_size(items) > r->srv->cfg->server.unwrap_batch_max) {
            srv_err_set(&e, 413, "too_many_items", "at most %u items per batch", r->srv->cfg->server.unwrap_batch_max);
            goto refuse;
        }
    } else {
        if ((items = single = json_array()) == NULL || json_array_append(single, body) != 0) {
            srv_err_set(&e, 500, "internal", "out of memory");
            goto refuse;
        }
    }
    size_t n = json_array_size(items);
    if ((st = calloc(1, sizeof(*st))) == NULL || (st->deliver = calloc(n, sizeof(*st->deliver))) == NULL ||
        (st->err = calloc(n, sizeof(*st->err))) == NULL) {
        srv_err_set(&e, 500, "internal", "out of memory");
        goto refuse;
    }
    st->batch = batch;
    st->n = n;
    srv_ipc_begin(r, &b, IPC_UNWRAP);
    ipc_put_str(&b, IPC_T_GROUP, r->view->name);
    for (size_t i = 0; i < n; i++) {
        json_t *item = json_array_get(items, i);
        uint32_t d = 0;
        if (!json_is_object(item)) {
            srv_err_set(&st->err[i], 400, "bad_request", "each item must be a JSON object");
        } else if (item_deliver(item, deflt, r->view, p, &d, &st->err[i]) == 0) {
            /* A refused item leaves nothing in b: roll back to before it. */
            size_t mark = b.len;
            if (item_input(item, r->view, d, &b, &st->err[i]) == 0)
                st->deliver[i] = d;
            else {
                OPENSSL_cleanse(b.p + mark, b.len - mark);
                b.len = mark;
                b.nest_at = 0;
            }
        }
        if (stale_miss(r, &st->err[i])) {
            ipc_buf_free(&b);
            json_decref(single);
            unwrap_state_free(st);
            srv_with_view(r, true, batch ? unwrap_many : unwrap_one);
            return;
        }
        if (!batch && st->deliver[i] == 0) {
            e = st->err[i];
            goto refuse;
        }
    }
    json_decref(single);
    if (r->ctx_free != NULL)
        r->ctx_free(r->ctx);
    r->ctx = st;
    r->ctx_free = unwrap_state_free;
    (void)srv_call(r, &b, unwrap_answer, 0);
    return;
refuse:
    ipc_buf_free(&b);
    json_decref(single);
    unwrap_state_free(st);
    srv_authz_then(r, IPC_ACT_UNWRAP, &e);
}

static void unwrap_have_view(struct srv_req *r, int batch)
{
    json_t *body;
    srv_err e;

    if (srv_require_cert(r) != 0)
        return;
    memset(&e, 0, sizeof(e));
    if ((body = srv_json_body(r, &e)) == NULL) {
        srv_authz_then(r, IPC_ACT_UNWRAP, &e);
        return;
    }
    unwrap_parsed(r, body, batch);
    json_decref(body);
}

static void unwrap_one(struct srv_req *r) { unwrap_have_view(r, 0); }
static void unwrap_many(struct srv_req *r) { unwrap_have_view(r, 1); }
static void h_unwrap(struct srv_req *r) { srv_with_view(r, false, unwrap_one); }
static void h_unwrap_batch(struct srv_req *r) { srv_with_view(r, false, unwrap_many); }

/* ---- rewrap (the exploder) ------------------------------------------------- */

static void rewrap_answer(struct srv_req *r, const ipc_msg *a)
{
    uint32_t *to = r->ctx;
    ipc_iter it;
    ipc_val v;
    ipc_msg res;
    srv_err e;
    json_t *o = NULL;

    if (ipc_u32(a, IPC_T_STATUS, 500) != 200) {
        srv_reply_holder_error(r, a);
        return;
    }
    if (*to == IPC_TO_GROUP_SECRET) {
        ipc_iter_init(&it, a, IPC_T_RESULT);
        if (!ipc_iter_next(&it, NULL, &res)) {
            srv_reply_error(r, 500, "internal", "the key holder's answer is incomplete");
            return;
        }
        jsonw *w = jsonw_new(MAX_ANSWER_JSON);
        if (w == NULL) {
            srv_reply_error(r, 500, "internal", "out of memory");
            return;
        }
        if (item_write(r, DELIVER_GROUP_SECRET, &res, w, &e) != 0) {
            jsonw_free(w);
            srv_reply_err(r, &e);
            return;
        }
        reply_jsonw(r, w);
        return;
    }
    /* One RecipientInfo per member, and who it is for, in the same order. */
    json_t *arr = json_array(), *who = json_array();
    ipc_iter_init(&it, a, IPC_T_DER);
    while (arr != NULL && ipc_iter_next(&it, &v, NULL))
        if (json_array_append_new(arr, b64_json(v.p, v.len)) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    ipc_iter_init(&it, a, IPC_T_EMAIL);
    while (who != NULL && ipc_iter_next(&it, &v, NULL))
        if (json_array_append_new(who, json_string((const char *)v.p)) != 0) {
            json_decref(who);
            who = NULL;
        }
    if (arr != NULL && who != NULL && json_array_size(arr) != json_array_size(who)) {
        json_decref(arr);
        json_decref(who);
        srv_reply_error(r, 500, "internal", "the key holder's answer is incomplete");
        return;
    }
    o = json_pack("{s:o?,s:o?,s:I}", "recipient_infos", arr, "members", who, "key_version",
                  (json_int_t)ipc_u32(a, IPC_T_KEY_VERSION, 0));
    if (arr == NULL || who == NULL || o == NULL) {
        json_decref(o);
        srv_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    srv_reply_json(r, 200, o);
}

static void rewrap_have_view(struct srv_req *r)
{
    json_t *body = NULL, *item = NULL;
    uint32_t *to = NULL;
    srv_err e;
    ipc_buf b;

    ipc_buf_init(&b);
    memset(&e, 0, sizeof(e));
    if (srv_require_cert(r) != 0)
        return;
    if ((body = srv_json_body(r, &e)) == NULL)
        goto refuse;
    const char *tos = srv_json_str(body, "to", &e);
    if (e.status != 0)
        goto refuse;
    if (tos == NULL || (strcmp(tos, "group-secret") != 0 && strcmp(tos, "members") != 0)) {
        srv_err_set(&e, 400, "bad_request", "\"to\" must be group-secret or members");
        goto refuse;
    }
    if (json_object_get(body, "recipient_info") == NULL) {
        srv_err_set(&e, 400, "bad_request", "\"recipient_info\" is required");
        goto refuse;
    }
    if ((to = malloc(sizeof(*to))) == NULL) {
        srv_err_set(&e, 500, "internal", "out of memory");
        goto refuse;
    }
    *to = strcmp(tos, "members") == 0 ? IPC_TO_MEMBERS : IPC_TO_GROUP_SECRET;
    if (*to == IPC_TO_GROUP_SECRET && !(r->view->methods & GS_METHOD_GROUP_SECRET)) {
        srv_err_set(&e, 403, "method_not_allowed", "the group does not use a group secret key");
        goto refuse;
    }
    /* Only the RecipientInfo and what says the content key's length: the
     * exploder never chooses how keys go out. */
    if ((item = json_pack("{s:O}", "recipient_info", json_object_get(body, "recipient_info"))) == NULL ||
        (json_object_get(body, "content_algorithm") != NULL &&
         json_object_set(item, "content_algorithm", json_object_get(body, "content_algorithm")) != 0) ||
        (json_object_get(body, "key_length") != NULL &&
         json_object_set(item, "key_length", json_object_get(body, "key_length")) != 0)) {
        srv_err_set(&e, 500, "internal", "out of memory");
        goto refuse;
    }
    srv_ipc_begin(r, &b, IPC_REWRAP);
    ipc_put_str(&b, IPC_T_GROUP, r->view->name);
    ipc_put_u32(&b, IPC_T_TO, *to);
    if (item_input(item, r->view, *to == IPC_TO_GROUP_SECRET ? DELIVER_GROUP_SECRET : DELIVER_TLS, &b, &e) != 0) {
        if (stale_miss(r, &e)) {
            ipc_buf_free(&b);
            free(to);
            json_decref(item);
            json_decref(body);
            srv_with_view(r, true, rewrap_have_view);
            return;
        }
        goto refuse;
    }
    json_decref(item);
    json_decref(body);
    r->ctx = to;
    r->ctx_free = free;
    (void)srv_call(r, &b, rewrap_answer, 0);
    return;
refuse:
    ipc_buf_free(&b);
    free(to);
    json_decref(item);
    json_decref(body);
    srv_authz_then(r, IPC_ACT_REWRAP, &e);
}

static void h_rewrap(struct srv_req *r) { srv_with_view(r, false, rewrap_have_view); }

/* ---- secret keys ------------------------------------------------------------ */

static void secret_keys_answer(struct srv_req *r, const ipc_msg *a)
{
    json_t *keys = json_array();
    ipc_iter it;
    ipc_msg s;

    if (ipc_u32(a, IPC_T_STATUS, 500) != 200) {
        json_decref(keys);
        srv_reply_holder_error(r, a);
        return;
    }
    ipc_iter_init(&it, a, IPC_T_SECRET);
    while (keys != NULL && ipc_iter_next(&it, NULL, &s)) {
        const unsigned char *kek, *wk;
        size_t kl, wl;
        ipc_bytes(&s, IPC_T_KEK_ID, &kek, &kl);
        ipc_bytes(&s, IPC_T_WRAPPED, &wk, &wl);
        json_t *k = json_pack("{s:I,s:o?,s:o?,s:s}", "version", (json_int_t)ipc_u32(&s, IPC_T_SECRET_VERSION, 0),
                              "kek_id", b64_json(kek, kl), "wrapped_key", b64_json(wk, wl), "algorithm", "RSA-OAEP");
        if (k == NULL || json_array_append_new(keys, k) != 0) {
            json_decref(keys);
            keys = NULL;
        }
    }
    if (keys == NULL) {
        srv_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    srv_reply_json(r, 200, json_pack("{s:o}", "keys", keys));
}

static void secret_keys_have_view(struct srv_req *r)
{
    srv_err e;
    ipc_buf b;

    if (srv_require_cert(r) != 0)
        return;
    if (!peer_is_rsa(srv_peer(r))) {
        if (!(r->view->methods & GS_METHOD_GROUP_SECRET))
            srv_err_set(&e, 403, "method_not_allowed", "the group does not use a group secret key");
        else
            srv_err_set(&e, 400, "unsupported_certificate_key", "secret keys are wrapped to RSA certificate keys only");
        srv_authz_then(r, IPC_ACT_SECRET_KEYS, &e);
        return;
    }
    ipc_buf_init(&b);
    srv_ipc_begin(r, &b, IPC_SECRET_KEYS);
    ipc_put_str(&b, IPC_T_GROUP, r->view->name);
    (void)srv_call(r, &b, secret_keys_answer, 0);
}

static void h_secret_keys(struct srv_req *r) { srv_with_view(r, false, secret_keys_have_view); }

/* ---- discovery ------------------------------------------------------------- */

static void group_info_have_view(struct srv_req *r)
{
    const gview *v = r->view;
    const struct gs_config *cfg = r->srv->cfg;
    json_t *versions = json_array();

    const gview_key *cur = gview_current(v);
    /* A group whose current key is EC does deliver=tls only, whatever a
     * group created before that was checked recorded: what it cannot do
     * is not offered (clients pick their method from this list). */
    unsigned methods = cur != NULL && cur->ec ? v->methods & (unsigned)GS_METHODS_EC : v->methods;
    /* Likewise group-secret where the module cannot wrap with the group's
     * secret key (made to wrap with CKM_AES_KEY_WRAP, served through a
     * module without it): every such request would be refused. */
    if (v->secret_no_wrap)
        methods &= ~(unsigned)GS_METHOD_GROUP_SECRET;

    for (size_t i = 0; versions != NULL && i < v->nversions; i++)
        json_array_append_new(versions, json_integer(v->versions[i].version));
    json_t *o = json_pack("{s:s,s:s,s:o?,s:o?}", "name", v->name, "address", v->address, "methods",
                          methods_json(methods), "key_versions", versions);
    if (o != NULL && cur != NULL)
        json_object_set_new(o, "current_key_version", json_integer(cur->version));
    if (o != NULL && v->key_policy[0] != '\0')
        json_object_set_new(o, "key_policy", json_loads(v->key_policy, 0, NULL));
    /* What a message may use to be unwrapped at all (the exploder refuses
     * anything else at once, senders can check before sending); left out
     * when the token could not say (clients treat it as not said). */
    static const struct {
        unsigned bit;
        const char *name;
    } kt_names[] = {{IPC_KT_OAEP, "RSA-OAEP"},
                    {IPC_KT_OAEP256, "RSA-OAEP-256"},
                    {IPC_KT_PKCS1V15, "RSA-PKCS1-v1_5"},
                    {IPC_KT_ECDH, "ECDH"}};
    if (o != NULL && v->key_transports != 0) {
        json_t *ktj = json_array();
        for (size_t i = 0; ktj != NULL && i < GS_ARRAY_LEN(kt_names); i++)
            if (v->key_transports & kt_names[i].bit)
                json_array_append_new(ktj, json_string(kt_names[i].name));
        json_object_set_new(o, "key_transports", ktj);
    }
    if (o != NULL)
        json_object_set_new(o, "member_wrap", json_string(gs_wrap_name(v->member_wrap)));
    if (o != NULL && v->has_secret)
        json_object_set_new(o, "secret_version", json_integer(v->secret_version));
    if (o != NULL && cfg->certsrv.url != NULL)
        json_object_set_new(o, "certificate_server", json_string(cfg->certsrv.url));
    if (o == NULL) {
        srv_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    srv_reply_json(r, 200, o);
}

static int append_pem(BIO *b, X509 *x)
{
    return x == NULL || PEM_write_bio_X509(b, x) == 1 ? 0 : -1;
}

static void group_cert_have_view(struct srv_req *r)
{
    const gview_key *cur = gview_current(r->view);
    BIO *b = BIO_new(BIO_s_mem());
    char *pem = NULL;
    long n;

    /* The current group certificate, then the local CA when it issued it. */
    if (cur == NULL || b == NULL || append_pem(b, cur->cert) != 0 || append_pem(b, r->view->chain_ca) != 0 ||
        (n = BIO_get_mem_data(b, &pem)) <= 0)
        srv_reply_error(r, 500, "internal", "internal error");
    else
        srv_reply_bytes(r, 200, "application/pem-certificate-chain", pem, (size_t)n);
    BIO_free(b);
}

static void h_group_info(struct srv_req *r) { srv_with_view(r, true, group_info_have_view); }
static void h_group_cert(struct srv_req *r) { srv_with_view(r, true, group_cert_have_view); }

/* ---- admin ------------------------------------------------------------------ */

static json_t *member_json(const ipc_msg *m, int with_cert)
{
    const unsigned char *p;
    size_t len;
    json_t *o = json_pack("{s:s,s:s,s:b,s:I,s:s}", "email", ipc_str(m, IPC_T_EMAIL), "role",
                          gs_role_name((gs_role)ipc_u32(m, IPC_T_ROLE, 0)), "has_certificate",
                          (ipc_u32(m, IPC_T_FLAGS, 0) & IPC_FLAG_HAS_CERT) != 0, "added",
                          (json_int_t)ipc_u64(m, IPC_T_ADDED, 0), "wrap",
                          gs_wrap_name((gs_wrap)ipc_u32(m, IPC_T_WRAP, GS_WRAP_DEFAULT)));
    if (o == NULL || !with_cert)
        return o;
    json_t *cert = json_null();
    if (ipc_bytes(m, IPC_T_CERT, &p, &len) == 0) {
        size_t pem_len;
        char *pem = srv_cert_der_to_pem(p, len, &pem_len);
        if (pem != NULL)
            cert = json_stringn(pem, pem_len);
        free(pem);
    }
    json_object_set_new(o, "certificate", cert);
    return o;
}

static void members_answer(struct srv_req *r, const ipc_msg *a)
{
    json_t *arr = json_array();
    ipc_iter it;
    ipc_msg m;

    if (ipc_u32(a, IPC_T_STATUS, 500) != 200) {
        json_decref(arr);
        srv_reply_holder_error(r, a);
        return;
    }
    ipc_iter_init(&it, a, IPC_T_MEMBER);
    while (arr != NULL && ipc_iter_next(&it, NULL, &m))
        json_array_append_new(arr, member_json(&m, 0));
    srv_reply_json(r, 200, json_pack("{s:o?}", "members", arr));
}

static void members_have_view(struct srv_req *r)
{
    ipc_buf b;

    if (srv_require_cert(r) != 0)
        return;
    ipc_buf_init(&b);
    srv_ipc_begin(r, &b, IPC_MEMBERS);
    ipc_put_str(&b, IPC_T_GROUP, r->view->name);
    (void)srv_call(r, &b, members_answer, 0);
}

static void h_members_list(struct srv_req *r) { srv_with_view(r, false, members_have_view); }

static void member_answer(struct srv_req *r, const ipc_msg *a)
{
    enum evhttp_cmd_type cmd = srv_command(r);
    uint32_t status = ipc_u32(a, IPC_T_STATUS, 500);
    ipc_iter it;
    ipc_msg m;

    if (status != 200 && status != 201) {
        srv_reply_holder_error(r, a);
        return;
    }
    if (cmd == EVHTTP_REQ_DELETE) {
        /* the member as stored, not as the request spelt it */
        const char *stored = ipc_str(a, IPC_T_EMAIL);
        json_t *o = json_pack("{s:s}", "removed", stored != NULL ? stored : r->param[1]);
        if (o != NULL && ipc_has(a, IPC_T_SECRET_VERSION))
            json_object_set_new(o, "secret_version", json_integer(ipc_u32(a, IPC_T_SECRET_VERSION, 0)));
        if (o != NULL && ipc_has(a, IPC_T_KEY_VERSION))
            json_object_set_new(o, "key_version", json_integer(ipc_u32(a, IPC_T_KEY_VERSION, 0)));
        /* a clone's removal: as the CLI's second line, so a script can tell */
        if (o != NULL && (ipc_u32(a, IPC_T_FLAGS, 0) & IPC_FLAG_ROTATE_ELSEWHERE))
            json_object_set_new(o, "rotate_elsewhere", json_true());
        srv_reply_json(r, 200, o);
        return;
    }
    ipc_iter_init(&it, a, IPC_T_MEMBER);
    if (!ipc_iter_next(&it, NULL, &m)) {
        srv_reply_error(r, 500, "internal", "the key holder's answer is incomplete");
        return;
    }
    srv_reply_json(r, (int)status, member_json(&m, cmd == EVHTTP_REQ_GET));
}

/* A PEM certificate from a JSON body, as DER for the key holder. A block
 * marked encrypted is refused as any unreadable one, never asked a pass
 * phrase for (util_pem_no_passphrase: the asking ended this process). */
static int cert_pem_der(const char *pem, unsigned char **der, size_t *len)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, util_pem_no_passphrase, NULL) : NULL;
    int n = x ? i2d_X509(x, der) : -1;

    X509_free(x);
    BIO_free(b);
    if (n <= 0)
        return -1;
    *len = (size_t)n;
    return 0;
}

static void member_have_view(struct srv_req *r)
{
    enum evhttp_cmd_type cmd = srv_command(r);
    enum ipc_action act = cmd == EVHTTP_REQ_GET ? IPC_ACT_MEMBER_GET
                          : cmd == EVHTTP_REQ_PUT ? IPC_ACT_MEMBER_ADD : IPC_ACT_MEMBER_REMOVE;
    json_t *body = NULL;
    unsigned char *der = NULL;
    size_t der_len = 0;
    gs_role role = GS_ROLE_MEMBER;
    gs_wrap wrap = GS_WRAP_DEFAULT;
    srv_err e;
    ipc_buf b;

    ipc_buf_init(&b);
    memset(&e, 0, sizeof(e));
    if (srv_require_cert(r) != 0)
        return;
    /* a PUT makes a record: the address rule; GET and DELETE name one
     * that may be older than that rule, and must reach it */
    const char *why = mailaddr_refusal(r->param[1], cmd == EVHTTP_REQ_PUT);
    if (why != NULL) {
        srv_err_set(&e, 400, "bad_request", "the member id must be an email address: %s", why);
        goto refuse;
    }
    if (cmd == EVHTTP_REQ_PUT) {
        if ((body = srv_json_body(r, &e)) == NULL)
            goto refuse;
        const char *role_s = srv_json_str(body, "role", &e);
        /* null is no certificate, as a GET of the member says it: a
         * script that reads a member, changes its role and PUTs it back
         * was refused "must be a string" for a member without one */
        const char *pem = e.status || json_is_null(json_object_get(body, "certificate"))
                              ? NULL
                              : srv_json_str(body, "certificate", &e);
        const char *wrap_s = e.status ? NULL : srv_json_str(body, "wrap", &e);
        if (e.status != 0)
            goto refuse;
        if (wrap_s != NULL && strcmp(wrap_s, "default") != 0 && gs_wrap_parse(wrap_s, &wrap) != GS_OK) {
            srv_err_set(&e, 400, "bad_request", "\"wrap\" must be pkcs1v15, oaep or default");
            goto refuse;
        }
        if (role_s != NULL && gs_role_parse(role_s, &role) != GS_OK) {
            srv_err_set(&e, 400, "bad_request", "\"role\" must be member, exploder or admin");
            goto refuse;
        }
        if (pem != NULL && (strlen(pem) > MAX_CERT_PEM || cert_pem_der(pem, &der, &der_len) != 0)) {
            srv_err_set(&e, 400, "bad_certificate", "\"certificate\" is not a PEM certificate");
            goto refuse;
        }
    }
    srv_ipc_begin(r, &b, cmd == EVHTTP_REQ_GET ? IPC_MEMBER_GET : cmd == EVHTTP_REQ_PUT ? IPC_MEMBER_PUT
                                                                                      : IPC_MEMBER_DELETE);
    ipc_put_str(&b, IPC_T_GROUP, r->view->name);
    ipc_put_str(&b, IPC_T_EMAIL, r->param[1]);
    if (cmd == EVHTTP_REQ_PUT) {
        ipc_put_u32(&b, IPC_T_ROLE, (uint32_t)role);
        ipc_put_u32(&b, IPC_T_WRAP, (uint32_t)wrap);
        if (der != NULL)
            ipc_put_bytes(&b, IPC_T_CERT, der, der_len);
    }
    OPENSSL_free(der);
    json_decref(body);
    (void)srv_call(r, &b, member_answer, cmd == EVHTTP_REQ_GET ? 0 : SRV_CALL_CHANGES);
    return;
refuse:
    OPENSSL_free(der);
    json_decref(body);
    srv_authz_then(r, act, &e);
}

static void h_member(struct srv_req *r) { srv_with_view(r, false, member_have_view); }

static void group_create_answer(struct srv_req *r, const ipc_msg *a)
{
    json_t *body = r->ctx;

    if (ipc_u32(a, IPC_T_STATUS, 500) != 201) {
        srv_reply_holder_error(r, a);
        return;
    }
    srv_reply_json(r, 201, json_pack("{s:s,s:s,s:I}", "name", json_string_value(json_object_get(body, "name")),
                                     "address", json_string_value(json_object_get(body, "address")), "key_version",
                                     (json_int_t)ipc_u32(a, IPC_T_KEY_VERSION, 0)));
}

static void json_free(void *p) { json_decref(p); }

static void h_group_create(struct srv_req *r)
{
    json_t *body = NULL;
    unsigned methods = 0;
    srv_err e;
    ipc_buf b;

    ipc_buf_init(&b);
    memset(&e, 0, sizeof(e));
    if (srv_require_cert(r) != 0)
        return;
    if (srv_peer(r)->status != PEER_MEMBER_CERT) {
        srv_reply_error(r, 403, "forbidden", "administrators authenticate with an identity certificate");
        return;
    }
    if ((body = srv_json_body(r, &e)) == NULL)
        goto refuse;
    const char *name = srv_json_str(body, "name", &e);
    const char *address = e.status ? NULL : srv_json_str(body, "address", &e);
    const char *keyspec = e.status ? NULL : srv_json_str(body, "keyspec", &e);
    if (e.status != 0)
        goto refuse;
    if (name == NULL || address == NULL) {
        srv_err_set(&e, 400, "bad_request", "\"name\" (a group name) and \"address\" (an email) are required");
        goto refuse;
    }
    if (!gs_valid_group_name(name)) {
        srv_err_set(&e, 400, "bad_request",
                    "\"name\" must be 1 to %d of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
                    GS_NAME_MAX);
        goto refuse;
    }
    if (!gs_valid_email(address)) {
        srv_err_set(&e, 400, "bad_request", "\"address\" must be an email address: %s", mailaddr_problem(address));
        goto refuse;
    }
    json_t *jm = json_object_get(body, "methods");
    if (jm != NULL) {
        if (json_is_string(jm)) {
            if (gs_methods_parse(json_string_value(jm), &methods) != GS_OK) {
                srv_err_set(&e, 400, "bad_request", "\"methods\": %s", gs_err_detail());
                goto refuse;
            }
        } else if (json_is_array(jm) && json_array_size(jm) > 0 && json_array_size(jm) <= 8) {
            for (size_t i = 0; i < json_array_size(jm); i++) {
                unsigned bit = 0;
                const char *s = json_string_value(json_array_get(jm, i));
                if (s == NULL || gs_methods_parse(s, &bit) != GS_OK) {
                    srv_err_set(&e, 400, "bad_request", "\"methods\" has an unknown method");
                    goto refuse;
                }
                methods |= bit;
            }
        } else {
            srv_err_set(&e, 400, "bad_request", "\"methods\" must be an array of method names");
            goto refuse;
        }
    }
    json_t *jp = json_object_get(body, "allow_pkcs1v15");
    if (jp != NULL && !json_is_boolean(jp)) {
        srv_err_set(&e, 400, "bad_request", "\"allow_pkcs1v15\" must be true or false");
        goto refuse;
    }
    json_t *jr = json_object_get(body, "replicable");
    if (jr != NULL && !json_is_boolean(jr)) {
        srv_err_set(&e, 400, "bad_request", "\"replicable\" must be true or false");
        goto refuse;
    }
    const char *mw = srv_json_str(body, "member_wrap", &e);
    if (e.status != 0)
        goto refuse;
    gs_wrap member_wrap = GS_WRAP_DEFAULT;
    if (mw != NULL && gs_wrap_parse(mw, &member_wrap) != GS_OK) {
        srv_err_set(&e, 400, "bad_request", "\"member_wrap\" must be pkcs1v15 or oaep");
        goto refuse;
    }
    if (keyspec != NULL && strlen(keyspec) >= 32) {
        srv_err_set(&e, 400, "bad_request", "\"keyspec\" is not a key specification");
        goto refuse;
    }
    srv_ipc_begin(r, &b, IPC_GROUP_CREATE);
    ipc_put_str(&b, IPC_T_NAME, name);
    ipc_put_str(&b, IPC_T_ADDRESS, address);
    ipc_put_str(&b, IPC_T_KEYSPEC, keyspec);
    ipc_put_u32(&b, IPC_T_METHODS, methods);
    /* Absent: RSA groups accept v1.5 (the default); false: RSA-OAEP only. */
    ipc_put_u32(&b, IPC_T_FLAGS,
                (jp != NULL && json_is_true(jp) ? IPC_FLAG_PKCS1V15 : 0) |
                    (jp != NULL && json_is_false(jp) ? IPC_FLAG_OAEP_ONLY : 0) |
                    (jr != NULL && json_is_true(jr) ? IPC_FLAG_REPLICABLE : 0));
    ipc_put_u32(&b, IPC_T_WRAP, (uint32_t)member_wrap);
    r->ctx = body;
    r->ctx_free = json_free;
    (void)srv_call(r, &b, group_create_answer, SRV_CALL_CHANGES);
    return;
refuse:
    json_decref(body);
    srv_authz_then(r, IPC_ACT_GROUP_CREATE, &e);
}

/* ---- health and metrics ------------------------------------------------------ */

static void healthz_answer(struct srv_req *r, const ipc_msg *a)
{
    const char *token = a ? ipc_str(a, IPC_T_TOKEN_STATE) : "key holder unavailable";
    const char *audit = a ? ipc_str(a, IPC_T_AUDIT_STATE) : "unknown";
    const char *db = a ? ipc_str(a, IPC_T_DB_STATE) : "unknown";

    token = token ? token : "unknown";
    audit = audit ? audit : "unknown";
    db = db ? db : "unknown";
    if (a != NULL && ipc_u32(a, IPC_T_STATUS, 503) == 200) {
        srv_reply_json(r, 200, json_pack("{s:s,s:s,s:s,s:s}", "status", "ok", "token", "ok", "audit", "ok",
                                         "database", "ok"));
        return;
    }
    /* The key holder names what is wrong (db_unavailable for a database it
     * cannot reach); without its answer the token is what is missing. */
    const char *code = a != NULL && ipc_str(a, IPC_T_CODE) != NULL ? ipc_str(a, IPC_T_CODE)
                       : strcmp(token, "ok") != 0                   ? "token_unavailable"
                       : strcmp(audit, "ok") != 0                   ? "audit_unavailable"
                                                                    : "store_unavailable";
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:{s:s,s:s}}", "status", "unavailable", "token", token, "audit", audit,
                          "database", db, "error", "code", code, "message", "the server cannot serve key requests now");
    evhttp_add_header(evhttp_request_get_output_headers(r->req), "Retry-After", "5");
    srv_reply_json(r, 503, o);
}

static void h_healthz(struct srv_req *r)
{
    ipc_buf b;

    ipc_buf_init(&b);
    srv_ipc_begin(r, &b, IPC_HEALTH);
    (void)srv_call(r, &b, healthz_answer, SRV_CALL_DOWN_TOO);
}

static void metrics_answer(struct srv_req *r, const ipc_msg *a)
{
    const unsigned char *p;
    size_t len;
    metrics_token t;
    char *text;

    if (a != NULL && ipc_u32(a, IPC_T_STATUS, 500) != 200) {
        srv_reply_holder_error(r, a);
        return;
    }
    if (a != NULL && (ipc_bytes(a, IPC_T_COUNTERS, &p, &len) != 0 || metrics_token_unpack(p, len, &t) != 0))
        a = NULL;
    if ((text = metrics_render(a != NULL ? &t : NULL)) == NULL) {
        srv_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    srv_reply_bytes(r, 200, "text/plain; version=0.0.4", text, strlen(text));
    free(text);
}

static void h_metrics(struct srv_req *r)
{
    const char *policy = r->srv->cfg->server.metrics ? r->srv->cfg->server.metrics : "admin";
    ipc_buf b;

    if (strcmp(policy, "off") == 0) {
        srv_reply_error(r, 404, "not_found", "metrics are disabled");
        return;
    }
    if (strcmp(policy, "any") != 0) {
        if (srv_require_cert(r) != 0)
            return;
        if (srv_peer(r)->status != PEER_MEMBER_CERT) {
            srv_reply_error(r, 403, "forbidden", "administrators authenticate with an identity certificate");
            return;
        }
    }
    ipc_buf_init(&b);
    srv_ipc_begin(r, &b, IPC_STATS);
    /* Without the key holder (policy any) the request counters still show. */
    (void)srv_call(r, &b, metrics_answer, strcmp(policy, "any") == 0 ? SRV_CALL_DOWN_TOO : 0);
}

static void h_not_here(struct srv_req *r)
{
    srv_reply_error(r, 404, "not_found", "membership certificates are issued by the certificate server listener");
}

const struct srv_route api_routes[] = {
    /* the certificate server's too: the same checks, the same answer */
    {SRV_API | SRV_CERTSRV, SRV_GET, "/healthz", EP_HEALTHZ, h_healthz},
    {SRV_API, SRV_GET, "/metrics", EP_METRICS, h_metrics},
    {SRV_API, SRV_POST, "/v1/groups", EP_GROUPS, h_group_create},
    {SRV_API, SRV_GET, "/v1/groups/*", EP_DISCOVERY, h_group_info},
    {SRV_API, SRV_GET, "/v1/groups/*/certificate", EP_CERTIFICATE, h_group_cert},
    {SRV_API, SRV_POST, "/v1/groups/*/unwrap", EP_UNWRAP, h_unwrap},
    {SRV_API, SRV_POST, "/v1/groups/*/unwrap-batch", EP_UNWRAP_BATCH, h_unwrap_batch},
    {SRV_API, SRV_POST, "/v1/groups/*/rewrap", EP_REWRAP, h_rewrap},
    {SRV_API, SRV_GET, "/v1/groups/*/secret-keys", EP_SECRET_KEYS, h_secret_keys},
    {SRV_API, SRV_GET, "/v1/groups/*/members", EP_MEMBERS, h_members_list},
    {SRV_API, SRV_GET | SRV_PUT | SRV_DELETE, "/v1/groups/*/members/*", EP_MEMBERS, h_member},
    {SRV_API, SRV_ANY, "/v1/groups/*/membership-certificates", EP_MEMBERSHIP_CERT, h_not_here},
};
const size_t api_nroutes = GS_ARRAY_LEN(api_routes);
