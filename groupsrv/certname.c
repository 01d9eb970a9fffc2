/* certname.c: see certname.h (moved out of the TLS layer so that `member
 * add` applies the rule the server authenticates by). */
#include "certname.h"

#include <string.h>

#include <openssl/x509v3.h>

#include "jsonw.h"
#include "names.h"

/* The text of the subject's first entry nid into buf, if it fits whole,
 * holds no NUL and is UTF-8: 1, else 0. The bytes are taken as they are
 * encoded: a T61String's Latin-1 "\xe4" (a string type OpenSSL reads
 * without complaint) is no UTF-8, and an identity that is not became an
 * audit record nobody can write (jansson refuses it): a 503
 * audit_unavailable and no record of the refused request. */
static int subject_text(X509 *cert, int nid, char *buf, size_t len)
{
    X509_NAME *subj = X509_get_subject_name(cert);
    int idx = subj != NULL ? X509_NAME_get_index_by_NID(subj, nid, -1) : -1;
    const unsigned char *p;
    int n;

    if (idx < 0)
        return 0;
    ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx));
    p = ASN1_STRING_get0_data(s);
    n = ASN1_STRING_length(s);
    if (p == NULL || n <= 0 || (size_t)n >= len || memchr(p, '\0', (size_t)n) != NULL ||
        !jsonw_utf8_valid((const char *)p, (size_t)n))
        return 0;
    memcpy(buf, p, (size_t)n);
    buf[n] = '\0';
    return 1;
}

int gs_cert_identity(X509 *cert, char *buf, size_t len)
{
    GENERAL_NAMES *gens;
    int found = 0, has_email = 0;

    if (buf == NULL || len == 0)
        return 0;
    buf[0] = '\0';
    if (cert == NULL)
        return 0;
    gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens) && !has_email; i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type != GEN_EMAIL)
            continue;
        has_email = 1;
        const unsigned char *p = ASN1_STRING_get0_data(g->d.rfc822Name);
        int n = ASN1_STRING_length(g->d.rfc822Name);
        if (p != NULL && n > 0 && (size_t)n < len && memchr(p, '\0', (size_t)n) == NULL &&
            jsonw_utf8_valid((const char *)p, (size_t)n)) {
            memcpy(buf, p, (size_t)n);
            buf[n] = '\0';
            found = 1;
        }
    }
    GENERAL_NAMES_free(gens);
    /* An unusable SAN e-mail is no identity: a subject field would let the
     * certificate claim another name. */
    if (!found && !has_email) {
        int cn = subject_text(cert, NID_commonName, buf, len);
        /* A CN that is a person's name names no member: the emailAddress
         * beside it is the address its CA vouched for. */
        if (cn && gs_valid_email(buf))
            found = 1;
        else if (subject_text(cert, NID_pkcs9_emailAddress, buf, len) && gs_valid_email(buf))
            found = 1;
        else
            found = cn && subject_text(cert, NID_commonName, buf, len);
    }
    if (!found)
        buf[0] = '\0';
    return found;
}
