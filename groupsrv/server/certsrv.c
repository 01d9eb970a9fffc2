/*
 * certsrv.c: the certificate server (method G), a second listener of the
 * same process. A member (authenticated by its identity certificate, as a
 * current member, per request) posts a CSR and gets a short-lived
 * membership certificate that names the group and nobody. The audit
 * records who got a certificate and when, never its serial, key or
 * fingerprint, so unwraps made with it cannot be linked to the person.
 */
#include "server.h"

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

static X509_REQ *parse_csr(const char *text, size_t len)
{
    BIO *b = BIO_new_mem_buf(text, (int)len);
    X509_REQ *req = NULL;

    if (b == NULL)
        return NULL;
    req = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL);
    if (req == NULL) {
        const unsigned char *p = (const unsigned char *)text;
        req = d2i_X509_REQ(NULL, &p, (long)len);
    }
    BIO_free(b);
    ERR_clear_error();
    return req;
}

/* Same public key as the member's recorded certificate? */
static int cert_matches_member(X509 *cert, const char *pem)
{
    X509 *rec = NULL;
    int ok = 0;

    if (gs_cert_parse((const unsigned char *)pem, strlen(pem), &rec) == GS_OK)
        ok = EVP_PKEY_eq(X509_get0_pubkey(rec), X509_get0_pubkey(cert)) == 1;
    X509_free(rec);
    return ok;
}

static void h_membership_cert(struct srv_req *r, const char *group)
{
    gs_group *g = NULL;
    gs_store_member *m = NULL;
    char *body = NULL, *pem = NULL;
    size_t len = 0;
    json_t *j = NULL;
    X509_REQ *csr = NULL;
    X509 *cert = NULL;
    gs_err e;

    if (srv_require_cert(r) != 0)
        goto out;
    const peer_info *p = srv_peer(r);
    if (p->status != PEER_MEMBER_CERT) {
        srv_reply_error(r, 403, "forbidden", "membership certificates are issued to identified members only");
        goto out;
    }
    if (!gs_valid_group_name(group) || (e = gs_group_load(r->t->store, r->srv->hsm, group, &g)) == GS_ERR_NOT_FOUND) {
        srv_reply_error(r, 404, "not_found", "no such group");
        goto out;
    }
    if (e != GS_OK) {
        srv_reply_gs_error(r, e, "group");
        goto out;
    }
    e = gs_store_member_get(r->t->store, gs_group_id(g), p->identity, &m);
    if (e == GS_ERR_NOT_FOUND || (e == GS_OK && m->role == GS_ROLE_EXPLODER)) {
        audit_record rec = {.action = "certify", .identity = p->identity, .group = group, .key_version = -1,
                            .outcome = "not_a_member"};
        if (srv_audit(r, &rec) == 0)
            srv_reply_error(r, 403, "not_a_member", "not a member of this group");
        goto out;
    }
    if (e != GS_OK) {
        srv_reply_gs_error(r, e, "member");
        goto out;
    }
    /* As on the API listener: a member recorded with a certificate must
     * present that key, not another certificate with the same address. */
    if (m->cert_pem != NULL && !cert_matches_member(p->cert, m->cert_pem)) {
        audit_record rec = {.action = "certify", .identity = p->identity, .group = group, .key_version = -1,
                            .outcome = "certificate_mismatch"};
        if (srv_audit(r, &rec) == 0)
            srv_reply_error(r, 403, "certificate_mismatch", "this certificate is not the one recorded for the member");
        goto out;
    }
    if (!(gs_group_info(g)->methods & GS_METHOD_MEMBERSHIP_CERT)) {
        srv_reply_error(r, 403, "method_not_allowed", "the group does not use membership certificates");
        goto out;
    }
    if (r->srv->ca == NULL) {
        srv_reply_retry(r, 503, 60, "no_ca", "the local CA is not initialised");
        goto out;
    }
    if (srv_rate_limit(r) != 0)
        goto out;
    if (srv_body(r, &body, &len) != 0)
        goto out;
    if (len > MAX_CSR) {
        srv_reply_error(r, 413, "too_large", "a CSR is at most %d bytes", MAX_CSR);
        goto out;
    }
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(r->req), "Content-Type");
    const char *csr_text = body;
    size_t csr_len = len;
    if (ct != NULL && strncasecmp(ct, "application/json", 16) == 0) {
        json_error_t je;
        j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
        const char *s = j ? json_string_value(json_object_get(j, "csr")) : NULL;
        if (s == NULL) {
            srv_reply_error(r, 400, "bad_request", "JSON body must be {\"csr\": PEM}");
            goto out;
        }
        csr_text = s;
        csr_len = json_string_length(json_object_get(j, "csr"));
    }
    if (csr_len == 0 || (csr = parse_csr(csr_text, csr_len)) == NULL) {
        srv_reply_error(r, 400, "bad_csr", "the body is not a PEM or DER certificate request");
        goto out;
    }
    unsigned lifetime = r->srv->cfg->certsrv.lifetime ? r->srv->cfg->certsrv.lifetime : 3600;
    e = gs_ca_issue_membership(r->srv->ca, r->srv->hsm, csr, group, (long)lifetime, &cert);
    /* Who and when, never which certificate. */
    audit_record rec = {.action = "certify", .identity = p->identity, .group = group, .key_version = -1,
                        .method = "membership-cert", .outcome = e == GS_OK ? "ok" : gs_strerror(e)};
    if (srv_audit(r, &rec) != 0)
        goto out;
    if (e == GS_ERR_CERT) {
        srv_reply_error(r, 400, "bad_csr", "%s", gs_err_detail());
        goto out;
    }
    if (e != GS_OK) {
        srv_reply_gs_error(r, e, "certificate");
        goto out;
    }
    if ((e = gs_cert_to_pem(cert, &pem)) != GS_OK) {
        srv_reply_gs_error(r, e, "certificate");
        goto out;
    }
    srv_reply_bytes(r, 200, "application/pem-certificate-chain", pem, strlen(pem));
out:
    free(pem);
    X509_free(cert);
    X509_REQ_free(csr);
    json_decref(j);
    free(body);
    gs_store_member_free(m);
    gs_group_free(g);
}

void certsrv_route(struct srv_req *r)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(r->req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(r->req);
    static const char prefix[] = "/v1/groups/", suffix[] = "/membership-certificates";
    char group[GS_NAME_MAX + 1];

    if (path != NULL && strcmp(path, "/healthz") == 0) {
        r->ep = EP_HEALTHZ;
        hsm_err he;
        audit_err ae;
        srv_health(r->srv, &he, &ae);
        if (he == HSM_OK && ae == AUDIT_OK)
            srv_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
        else
            srv_reply_retry(r, 503, 5, "unavailable", "token or audit log unavailable");
        return;
    }
    size_t pl = sizeof(prefix) - 1, sl = sizeof(suffix) - 1;
    size_t len = path ? strlen(path) : 0;
    if (path == NULL || len <= pl + sl || strncmp(path, prefix, pl) != 0 || strcmp(path + len - sl, suffix) != 0 ||
        len - pl - sl > GS_NAME_MAX) {
        srv_reply_error(r, 404, "not_found", "no such resource");
        return;
    }
    memcpy(group, path + pl, len - pl - sl);
    group[len - pl - sl] = '\0';
    r->ep = EP_MEMBERSHIP_CERT;
    if (cmd != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(r->req), "Allow", "POST");
        srv_reply_error(r, 405, "method_not_allowed", "use POST");
        return;
    }
    h_membership_cert(r, group);
}
