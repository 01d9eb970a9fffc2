/*
 * certsrv.c: the certificate server (method G), a second listener of the
 * network process. A member (authenticated by its identity certificate, as
 * a current member, per request, in the key holder) posts a CSR and gets a
 * short-lived membership certificate that names the group and nobody.
 *
 * Here: the CSR is parsed and its self-signature verified (proof that the
 * caller holds the key). The key holder builds the certificate itself
 * from nothing but the group and that public key, signs it with the CA
 * key on the token and audits who got one and when, never its serial, key
 * or fingerprint, so unwraps made with it cannot be linked to the person.
 */
#define _GNU_SOURCE /* memmem */
#include "server.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "log.h"
#include "util.h"

#define MAX_CSR 16384

/* Nothing but white space in p[0..len). */
static bool only_space(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n')
            return false;
    return true;
}

/* Only text in p[0..len): printable US-ASCII and white space, as the
 * explanatory text RFC 7468 lets come before a PEM block (`openssl req
 * -text` writes the request decoded there); a DER request never is. */
static bool only_text(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if ((c < 0x20 || c > 0x7e) && c != '\t' && c != '\r' && c != '\n')
            return false;
    }
    return true;
}

/* The CSR in text: exactly one PEM block labelled CERTIFICATE REQUEST
 * (or NEW CERTIFICATE REQUEST), after it only white space, before it
 * only explanatory text (no other block: this is the first), else
 * exactly one DER CertificationRequest with nothing after it. A body with
 * a second request (or any other block, or bytes after the structure,
 * which its signature does not cover) is malformed, not tolerated: the
 * server would otherwise certify one of several keys the caller may not
 * know it sent. NULL with *why set when it is not exactly one request. */
static X509_REQ *parse_csr(const char *text, size_t len, const char **why)
{
    BIO *b = BIO_new_mem_buf(text, (int)len);
    X509_REQ *req = NULL;
    char *name = NULL, *header = NULL;
    unsigned char *der = NULL;
    long der_len = 0;
    const unsigned char *p;
    const char *begin = memmem(text, len, "-----BEGIN ", 11);

    *why = "the body is not a PEM or DER certificate request";
    if (b == NULL)
        return NULL;
    if (begin != NULL && only_text(text, (size_t)(begin - text))) {
        char rest[256];
        int n;
        if (PEM_read_bio(b, &name, &header, &der, &der_len) != 1) {
            /* its BEGIN and END on one line: `curl --data @file` (not
             * --data-binary) strips a file's line breaks */
            size_t left = len - (size_t)(begin - text);
            const char *nl = memchr(begin, '\n', left);
            size_t line = nl != NULL ? (size_t)(nl - begin) : left;
            if (memmem(begin + 11, line - 11, "-----END ", 9) != NULL)
                *why = "a PEM block without line breaks: curl --data strips them, send the file with --data-binary";
            goto out;
        }
        if (strcmp(name, PEM_STRING_X509_REQ) != 0 && strcmp(name, PEM_STRING_X509_REQ_OLD) != 0) {
            *why = "the PEM block is not a CERTIFICATE REQUEST";
            goto out;
        }
        while ((n = BIO_read(b, rest, sizeof(rest))) > 0)
            if (!only_space(rest, (size_t)n)) {
                *why = memmem(begin + 11, len - (size_t)(begin + 11 - text), "-----BEGIN ", 11) != NULL
                           ? "more than one PEM block: send exactly one certificate request"
                           : "text after the PEM certificate request";
                goto out;
            }
        p = der;
        req = d2i_X509_REQ(NULL, &p, der_len);
        if (req != NULL && p != der + der_len) {
            X509_REQ_free(req);
            req = NULL;
            *why = "bytes after the DER certificate request";
        }
        goto out;
    }
    p = (const unsigned char *)text;
    req = d2i_X509_REQ(NULL, &p, (long)len);
    if (req != NULL && p != (const unsigned char *)text + len) {
        X509_REQ_free(req);
        req = NULL;
        *why = "bytes after the DER certificate request";
    }
out:
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(der);
    BIO_free(b);
    ERR_clear_error();
    return req;
}

/* Authorisation alone (no key sent), then the input error. */
static void certify_refuse_answer(struct srv_req *r, const ipc_msg *a)
{
    if (ipc_u32(a, IPC_T_STATUS, 500) == 204)
        srv_reply_err(r, r->ctx);
    else
        srv_reply_holder_error(r, a);
}

char *srv_cert_der_to_pem(const unsigned char *der, size_t len, size_t *pem_len)
{
    const unsigned char *q = der;
    X509 *cert = len <= LONG_MAX ? d2i_X509(NULL, &q, (long)len) : NULL;
    BIO *b = cert != NULL ? BIO_new(BIO_s_mem()) : NULL;
    char *text = NULL, *pem = NULL;
    long n;

    *pem_len = 0;
    if (b != NULL && PEM_write_bio_X509(b, cert) == 1 && (n = BIO_get_mem_data(b, &text)) > 0 &&
        (pem = malloc((size_t)n + 1)) != NULL) {
        memcpy(pem, text, (size_t)n);
        pem[n] = '\0';
        *pem_len = (size_t)n;
    }
    BIO_free(b);
    X509_free(cert);
    return pem;
}

static void certify_answer(struct srv_req *r, const ipc_msg *a)
{
    const unsigned char *p;
    size_t len, pem_len = 0;
    char *pem = NULL;

    if (ipc_u32(a, IPC_T_STATUS, 500) != 200) {
        srv_reply_holder_error(r, a);
        return;
    }
    if (ipc_bytes(a, IPC_T_CERT, &p, &len) != 0 || (pem = srv_cert_der_to_pem(p, len, &pem_len)) == NULL)
        srv_reply_error(r, 500, "internal", "could not encode the certificate");
    else
        srv_reply_bytes(r, 200, "application/pem-certificate-chain", pem, pem_len);
    free(pem);
}

static void certify_call(struct srv_req *r, const unsigned char *spki, size_t spki_len, const srv_err *e)
{
    ipc_buf b;

    ipc_buf_init(&b);
    srv_ipc_begin(r, &b, IPC_CERTIFY);
    ipc_put_str(&b, IPC_T_GROUP, r->view->name);
    if (e != NULL) {
        srv_err *copy = malloc(sizeof(*copy));
        if (copy == NULL) {
            ipc_buf_free(&b);
            srv_reply_err(r, e);
            return;
        }
        *copy = *e;
        r->ctx = copy;
        r->ctx_free = free;
        (void)srv_call(r, &b, certify_refuse_answer, 0);
        return;
    }
    ipc_put_bytes(&b, IPC_T_CSR_SPKI, spki, spki_len);
    (void)srv_call(r, &b, certify_answer, 0);
}

static void membership_cert_have_view(struct srv_req *r)
{
    char *body = NULL;
    size_t len = 0;
    json_t *j = NULL;
    X509_REQ *csr = NULL;
    EVP_PKEY *pk;
    unsigned char *spki = NULL;
    int n;
    srv_err e;

    memset(&e, 0, sizeof(e));
    if (srv_body(r, &body, &len, &e) != 0)
        goto refuse;
    if (len > MAX_CSR) {
        srv_err_set(&e, 413, "too_large", "a CSR is at most %d bytes", MAX_CSR);
        goto refuse;
    }
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(r->req), "Content-Type");
    const char *csr_text = body;
    size_t csr_len = len;
    /* JSON by its Content-Type, or by its first byte: plain `curl --data`
     * sends {"csr": ...} as a form, and the API reads any body as JSON
     * whatever its Content-Type (docs/api.md). A DER CSR starts with a
     * SEQUENCE tag, a PEM one with its BEGIN line or openssl's text. */
    size_t lead = strspn(body, " \t\r\n");
    if ((ct != NULL && strncasecmp(ct, "application/json", 16) == 0) || (lead < len && body[lead] == '{')) {
        json_error_t je;
        j = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
        if (j == NULL) {
            /* said as the API listener says it (docs/api.md), not as a
             * well-formed body of the wrong shape (a scalar is one too,
             * JSON_DECODE_ANY: JSON without a string csr, below) */
            srv_err_json(&e, &je);
            goto refuse;
        }
        const char *s = json_string_value(json_object_get(j, "csr"));
        if (s == NULL) {
            srv_err_set(&e, 400, "bad_request", "JSON body must be {\"csr\": PEM}");
            goto refuse;
        }
        csr_text = s;
        csr_len = json_string_length(json_object_get(j, "csr"));
    }
    const char *why = "the body is empty";
    if (csr_len == 0 || (csr = parse_csr(csr_text, csr_len, &why)) == NULL) {
        srv_err_set(&e, 400, "bad_csr", "%s", why);
        goto refuse;
    }
    /* Proof of possession: the key holder signs for this key only. */
    pk = X509_REQ_get0_pubkey(csr);
    if (pk == NULL || X509_REQ_verify(csr, pk) != 1) {
        ERR_clear_error();
        srv_err_set(&e, 400, "bad_csr", "CSR signature does not verify");
        goto refuse;
    }
    if ((n = i2d_PUBKEY(pk, &spki)) <= 0) {
        srv_err_set(&e, 400, "bad_csr", "the CSR's public key cannot be encoded");
        goto refuse;
    }
    certify_call(r, spki, (size_t)n, NULL);
    goto out;
refuse:
    certify_call(r, NULL, 0, &e);
out:
    OPENSSL_free(spki);
    X509_REQ_free(csr);
    json_decref(j);
    free(body);
}

static void h_membership_cert(struct srv_req *r)
{
    if (srv_require_cert(r) != 0)
        return;
    if (srv_peer(r)->status != PEER_MEMBER_CERT) {
        srv_reply_error(r, 403, "forbidden", "membership certificates are issued to identified members only");
        return;
    }
    srv_with_view(r, false, membership_cert_have_view);
}

const struct srv_route certsrv_routes[] = {
    {SRV_CERTSRV, SRV_POST, "/v1/groups/*/membership-certificates", EP_MEMBERSHIP_CERT, h_membership_cert},
};
const size_t certsrv_nroutes = GS_ARRAY_LEN(certsrv_routes);
