/* prepare.c: message checks and rewriting, CMS via envelope/, the group
 * server via client/restclient. See prepare.h. */
#include "prepare.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "envelope.h"
#include "groupinfo.h"
#include "gs_version.h"
#include "log.h"
#include "mail.h"
#include "mailaddr.h"
#include "restclient.h"
#include "util.h"

/* Every PEM read here gives no pass phrase (util_pem_no_passphrase): a
 * block marked encrypted, in a member's certificate or a group server's
 * answer, made OpenSSL's default ask on the terminal or, with none (a
 * Postfix pipe, a timer), read a line of standard input. */
static X509 *first_cert(const char *pem)
{
    BIO *b;
    X509 *x;
    if (pem == NULL)
        return NULL;
    if ((b = BIO_new_mem_buf(pem, -1)) == NULL)
        return NULL;
    x = PEM_read_bio_X509(b, NULL, util_pem_no_passphrase, NULL);
    BIO_free(b);
    return x;
}

/* Does pem start with a certificate? (The list's versions are read where
 * they are used: find_group_ri.) */
static bool has_cert(const char *pem)
{
    X509 *x = first_cert(pem);
    bool found = x != NULL;
    X509_free(x);
    return found;
}

static const char *kt_name(env_kt_alg alg)
{
    switch (alg) {
    case ENV_KT_RSA_OAEP_SHA1: return "RSA-OAEP";
    case ENV_KT_RSA_OAEP_SHA256: return "RSA-OAEP-256";
    case ENV_KT_RSA_PKCS1V15: return "RSA-PKCS1-v1_5";
    case ENV_KT_ECDH: return "ECDH";
    }
    return NULL;
}

/* Would the group server unwrap msg's RecipientInfo idx for the version
 * cert, as far as the exploder can tell: well-formed, a key transport it
 * does (env_recipient_check_unwrap) and one the list's group accepts (its
 * cached discovery answer, xp_group_accepts)? */
static bool ri_usable(const xp_list *l, const env_message *msg, size_t idx, X509 *cert)
{
    unsigned char *der = NULL;
    size_t derlen = 0;
    env_recipient *ri = NULL;
    env_kt_alg alg;
    char why[256];
    bool ok = false;

    if (env_message_recipient_der(msg, idx, &der, &derlen) != ENV_OK ||
        env_recipient_parse(der, derlen, &ri) != ENV_OK || env_recipient_check_unwrap(ri, cert) != ENV_OK ||
        env_recipient_kt_alg(ri, &alg) != ENV_OK)
        goto out;
    ok = xp_group_accepts(l, kt_name(alg), why, sizeof(why)) == XP_OK;
out:
    env_recipient_free(ri);
    free(der);
    return ok;
}

/* msg's RecipientInfos for a certificate that the issuer of one of
 * versions (the group's CA) issued, named by issuer and serial number,
 * but that is none of them: how many, and the first max of their indexes
 * in at (may be NULL with max 0). key_ids: also those that name a
 * certificate other than the versions by subjectKeyIdentifier alone
 * (`openssl cms -keyid`), which may be any version's, since no issuer is
 * named to tell. */
static size_t unmet_ris(const env_message *msg, STACK_OF(X509) *versions, bool key_ids, size_t *at, size_t max)
{
    size_t n = 0;

    for (size_t i = 0; i < env_message_recipient_count(msg); i++) {
        unsigned char *der = NULL;
        size_t derlen = 0;
        env_recipient *ri = NULL;
        bool known = false, ours = false;

        if (env_message_recipient_der(msg, i, &der, &derlen) == ENV_OK &&
            env_recipient_parse(der, derlen, &ri) == ENV_OK) {
            for (int v = 0; v < sk_X509_num(versions); v++) {
                known = known || env_recipient_matches_cert(ri, sk_X509_value(versions, v));
                ours = ours || env_recipient_names_issuer_of(ri, sk_X509_value(versions, v));
            }
            if (!known && (ours || (key_ids && env_recipient_names_key_id(ri)))) {
                if (n < max)
                    at[n] = i;
                n++;
            }
        }
        env_recipient_free(ri);
        free(der);
    }
    return n;
}

/* The list's key versions, newest last: the chain list create stored,
 * then each newer version's certificate (xp_group_cert_refresh); a CA
 * certificate after the first is the chain's issuer, not a version. */
static STACK_OF(X509) *list_versions(const xp_list *l)
{
    BIO *b = BIO_new_mem_buf(l->group_cert, -1);
    STACK_OF(X509) *versions = sk_X509_new_null();
    X509 *x;
    bool first = true;

    if (b == NULL || versions == NULL) {
        sk_X509_free(versions);
        BIO_free(b);
        return NULL;
    }
    while ((x = PEM_read_bio_X509(b, NULL, util_pem_no_passphrase, NULL)) != NULL) {
        if ((first || X509_check_ca(x) == 0) && sk_X509_push(versions, x) > 0)
            x = NULL;
        X509_free(x);
        first = false;
    }
    ERR_clear_error(); /* the end of the PEM reads as an error */
    BIO_free(b);
    return versions;
}

/* A message for none of the list's versions may be for one the list has
 * never met: one before the list's oldest (a list made after `groupsrv
 * group rotate` knows the current version alone, while senders still
 * encrypt to the one before), or between its newest and the current one.
 * Its RecipientInfos that name a certificate of the group's CA (issuer
 * and serial number) other than the list's versions are such candidates,
 * among them the sender's own certificate when the group's CA issued it
 * (`member add --issue-cert`; Thunderbird and Outlook add the sender to
 * every message), and so are those that name a certificate by its
 * subjectKeyIdentifier alone (`openssl cms -keyid`, Outlook set to key
 * identifiers), whose issuer no one can tell. The exploder cannot tell which, if any, is the group's:
 * the group server does, each sent to it in turn (prepare_rewrap), at
 * most XP_OLDER_MAX of them; it refuses one for no version of the group
 * (unknown_recipient) before any key is used. n: how many the message
 * has, the first XP_OLDER_MAX of them in idx. */
#define XP_OLDER_MAX 4
#define XP_OLDER_MAX_TEXT "4"
typedef struct xp_older {
    size_t idx[XP_OLDER_MAX];
    size_t n;
} xp_older;

/* The index of msg's RecipientInfo for one of the list's group
 * certificates, env_message_find_recipient's answer otherwise. The list's
 * group_cert holds every key version the list has met: the chain list
 * create stored, then each newer version's certificate
 * (xp_group_cert_refresh); a CA certificate after the first is the
 * chain's issuer, not a version. The newest version is tried first: a
 * sender who encrypted to an older version and the current one (both in
 * their address book) is read with the current one, which `groupsrv group
 * retire` has not taken away. A version whose RecipientInfo the group
 * server would not unwrap (malformed, or a key transport the group does
 * not take) is passed over for an older one it would; with none such, the
 * newest one's, whose fault deliver then names. Deliver and the runner
 * choose alike. *unmet (may be NULL): the message also names, by issuer
 * and serial number, a certificate of a version's issuer (the group's CA)
 * that is none of the versions: perhaps one newer than the list has met.
 * *older (may be NULL): the message's RecipientInfos that are
 * candidates for a version the list never met (xp_older), whether or not
 * it is also for one of the list's: for one of them, the runner asks
 * about these when the group server no longer reads the version the list
 * chose (prepare_rewrap). */
static env_err find_group_ri(const xp_list *l, const env_message *msg, size_t *idx, X509 **cert, bool *unmet,
                             xp_older *older)
{
    STACK_OF(X509) *versions = list_versions(l);
    env_err e = ENV_ERR_NO_RECIPIENT;
    int pick = -1;
    size_t j;

    if (cert != NULL)
        *cert = NULL;
    if (unmet != NULL)
        *unmet = false;
    if (older != NULL)
        older->n = 0;
    if (versions == NULL) {
        e = ENV_ERR_NOMEM;
        goto out;
    }
    for (int i = sk_X509_num(versions) - 1; i >= 0; i--) {
        e = env_message_find_recipient(msg, sk_X509_value(versions, i), &j);
        if (e == ENV_ERR_NO_RECIPIENT)
            continue;
        if (e != ENV_OK)
            goto out;
        if (pick < 0) { /* the newest the message is for */
            pick = i;
            *idx = j;
        }
        if (ri_usable(l, msg, j, sk_X509_value(versions, i))) {
            pick = i;
            *idx = j;
            break;
        }
    }
    e = pick >= 0 ? ENV_OK : ENV_ERR_NO_RECIPIENT;
    if (pick >= 0 && unmet != NULL)
        *unmet = unmet_ris(msg, versions, false, NULL, 0) > 0;
    if (older != NULL)
        older->n = unmet_ris(msg, versions, true, older->idx, XP_OLDER_MAX);
    if (pick >= 0 && cert != NULL)
        *cert = sk_X509_delete(versions, pick); /* the version it is encrypted to, the caller's */
out:
    sk_X509_pop_free(versions, X509_free);
    return e;
}

bool xp_group_cert_known(const char *pem, X509 *cert)
{
    BIO *b = pem != NULL ? BIO_new_mem_buf(pem, -1) : NULL;
    X509 *x;
    bool known = false;

    while (b != NULL && !known && (x = PEM_read_bio_X509(b, NULL, util_pem_no_passphrase, NULL)) != NULL) {
        known = X509_cmp(x, cert) == 0;
        X509_free(x);
    }
    ERR_clear_error();
    BIO_free(b);
    return known;
}

bool xp_cert_names_address(const char *pem, const char *addr, char *names, size_t namesz)
{
    X509 *x = first_cert(pem);
    STACK_OF(OPENSSL_STRING) *emails = x != NULL ? X509_get1_email(x) : NULL;
    size_t o = 0;
    bool named = false;

    if (namesz > 0)
        names[0] = '\0';
    for (int i = 0; i < sk_OPENSSL_STRING_num(emails); i++) {
        const char *e = sk_OPENSSL_STRING_value(emails, i);
        int w;
        if (strcasecmp(e, addr) == 0)
            named = true;
        /* the names for the warning, each printable ASCII or not at all */
        if (!mailaddr_names_record(e) || o >= namesz)
            continue;
        w = snprintf(names + o, namesz - o, "%s%s", o > 0 ? ", " : "", e);
        if (w < 0 || (size_t)w >= namesz - o) {
            names[o] = '\0';
            o = namesz;
        } else {
            o += (size_t)w;
        }
    }
    X509_email_free(emails);
    X509_free(x);
    ERR_clear_error();
    return named;
}

xp_err xp_cert_check(const char *pem, char **subject)
{
    X509 *x = first_cert(pem);
    *subject = NULL;
    if (x == NULL)
        return XP_ERR_FORMAT;
    *subject = X509_NAME_oneline(X509_get_subject_name(x), NULL, 0);
    X509_free(x);
    return *subject != NULL ? XP_OK : XP_ERR_NOMEM;
}

/* Where the base64 of an S/MIME body ends for the S/MIME reader (top:
 * how envelope read the message): at its first '-', where the decoder
 * stops wherever on a line it is: the start of its line when only white
 * space is before it (a signature's "-- ", say), else the '-' itself
 * (text put on the base64's last line, which the reader ignores as it
 * does a line of its own); or at the end. An offset into the body. */
static size_t base64_text_end(const env_mime_top *top, const char *body, size_t blen)
{
    size_t dash = top->b64_stop - top->body, i;

    if (dash >= blen)
        return blen;
    for (i = dash; i > 0 && (body[i - 1] == ' ' || body[i - 1] == '\t'); i--)
        ;
    return i == 0 || body[i - 1] == '\n' ? i : dash;
}

/* Is the top-level entity S/MIME whose body is base64 text (what a
 * forward copy may send in shorter lines: the same bytes decoded), by
 * the fields the S/MIME reader reads (top)? Text the reader stops at may
 * follow it (*b64len: where it starts), in lines a relay takes: it goes
 * as it came. */
static bool is_smime_base64(const env_mime_top *top, const char *body, size_t blen, size_t *b64len)
{
    *b64len = base64_text_end(top, body, blen);
    return top->smime && top->base64 && mail_is_base64_text(body, *b64len) &&
           mail_longest_line(body + *b64len, blen - *b64len) <= MAIL_MAX_LINE;
}

/* A header block holding a CR that ends no line (RFC 5322 2.2 has CR
 * only before LF), as members' mail programs read it: they
 * take a lone CR for a line end (Python's email package, which DMARC
 * and mail tools build on), so "X-A: b<CR>Content-Type: text/plain<CR><CR><LF>" is
 * one field to the list and the S/MIME reader but, to a member, a
 * Content-Type that counts (the first) and the end of the header block:
 * the fields after it, attacker text, shown as a plain body. The copy
 * of every mode carries the post's other fields as they came. */
static const char *lone_cr_why(const char *hdrs, size_t len)
{
    const char *cr = memchr(hdrs, '\r', len);

    for (; cr != NULL; cr = memchr(cr + 1, '\r', len - (size_t)(cr + 1 - hdrs)))
        if ((size_t)(cr + 1 - hdrs) >= len || cr[1] != '\n')
            return "its header block holds a CR that ends no line (RFC 5322 2.2): mail programs take it "
                   "for a line end, and would read header fields, or the start of the body, where the list "
                   "reads none";
    return NULL;
}

/* Does p[0, n) hold a CR that ends no line (RFC 5321 2.3.8: on the wire
 * CR comes only before LF)? */
static bool has_lone_cr(const char *p, size_t n)
{
    const char *cr = memchr(p, '\r', n);

    for (; cr != NULL; cr = memchr(cr + 1, '\r', n - (size_t)(cr + 1 - p)))
        if ((size_t)(cr + 1 - p) >= n || cr[1] != '\n')
            return true;
    return false;
}

/* A forward copy's body goes as it came, but for an S/MIME body of base64
 * text, which goes in lines of 76 when it has a line over 998 octets or a
 * CR that ends no line (prepare_forward), and text after that base64,
 * which a list that takes only encrypted mail leaves out. A CR that ends
 * no line in what goes as it came would reach the relay as it is: RFC
 * 5321 2.3.8 has CR only before LF, relays may refuse it (sendmail 8.18
 * does by default) and every member's copy bounce, and mail programs take
 * it for a line end; a NUL byte too. */
static const char *forward_body_cr_why(const env_mime_top *top, const char *body, size_t blen,
                                       bool require_encrypted)
{
    size_t b64len, at = 0, n = blen;

    /* what goes as it came: the whole body, or the text after the base64
     * on a list that sends it (the base64 holds no NUL, and one with a CR
     * alone goes re-lined) */
    if (is_smime_base64(top, body, blen, &b64len)) {
        at = b64len;
        n = require_encrypted ? 0 : blen - b64len;
    }
    if (has_lone_cr(body + at, n))
        return "its body holds a CR that ends no line (RFC 5321 2.3.8 has CR only before LF), which mail "
               "relays may refuse, and the list sends the body as it came: send it with CR LF line ends, or "
               "in base64";
    /* NUL likewise: RFC 5322 2.3 and RFC 2045 2.7/2.8 leave it out of
     * mail text (7bit and 8bit alike; only BINARYMIME, RFC 3030, carries
     * it), so relays may refuse it and every member's copy bounce, and
     * mail programs written in C end a line's text at it */
    if (n > 0 && memchr(body + at, '\0', n) != NULL)
        return "its body holds a NUL byte (RFC 5322 and RFC 2045 leave it out of mail text), which mail "
               "relays may refuse, and the list sends the body as it came: send it in base64";
    return NULL;
}

/* A forward copy carries the post's MIME fields as they came: with one
 * given twice, mail programs that take the first (Python's email
 * package; Mozilla's libmime, MimeHeaders_get) could show members a Content-Type of text/plain
 * or text/html, the base64 decoded as text (CMS bytes the sender chose,
 * none of them checked without the group's key), where the S/MIME
 * reader, taking the last, sees an encrypted message. */
static const char *mime_field_twice_why(const char *hdrs, size_t len)
{
    static const char *const fields[] = {"Content-Type", "Content-Transfer-Encoding", "Content-Disposition"};

    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        if (mail_header_count(hdrs, len, fields[i]) > 1)
            return "its header block gives Content-Type, Content-Transfer-Encoding or Content-Disposition "
                   "more than once: the list sends it as it came, and mail programs that take the first of "
                   "such a field (S/MIME readers take the last) could show it to members unencrypted";
    return NULL;
}

/* Why a message that is not S/MIME at the top is refused (77): plain
 * mail, or an encrypted message inside a multipart, which the list does
 * not take (rewrapping it would break the signature or drop the other
 * parts) but whose sender should be told what to change. */
static const char *not_encrypted_why(const void *data, size_t len, const env_mime_top *top, size_t max_size)
{
    BIO *in = BIO_new_mem_buf(data, (int)len);
    env_message *msg = NULL;
    const char *why = NULL;

    if (in == NULL || env_message_read_flags(in, ENV_FORMAT_SMIME, ENV_READ_IN_MULTIPART, max_size, &msg) != ENV_OK)
        goto out;
    if (strcmp(top->media_type, "multipart/signed") == 0)
        why = "message is signed after it was encrypted (multipart/signed around its S/MIME part): the list "
              "takes mail that is S/MIME encrypted as a whole; sign before encrypting";
    else
        why = "message has parts outside its encryption (multipart/mixed around its S/MIME part): the list "
              "takes mail that is S/MIME encrypted as a whole";
out:
    env_message_free(msg);
    BIO_free(in);
    return why;
}

static xp_err env_to_xp(env_err e)
{
    switch (e) {
    case ENV_OK: return XP_OK;
    case ENV_ERR_NOMEM: return XP_ERR_NOMEM;
    case ENV_ERR_IO: return XP_ERR_IO;
    case ENV_ERR_CONTENT_TYPE: return XP_ERR_NOT_ENCRYPTED;
    case ENV_ERR_UNSUPPORTED: return XP_ERR_CIPHER;
    case ENV_ERR_NO_RECIPIENT: return XP_ERR_WRONG_RECIPIENT;
    case ENV_ERR_TOO_LARGE: return XP_ERR_TOO_LARGE;
    case ENV_ERR_TRUNCATED:
    case ENV_ERR_NOT_CMS:
    case ENV_ERR_MIME:
    case ENV_ERR_ENCODING:
    case ENV_ERR_BASE64: return XP_ERR_FORMAT;
    default: return XP_ERR_CRYPTO;
    }
}

/* Why the pkcs7-mime part of a refused message is unreadable, for the
 * sender's bounce. */
static const char *unreadable_why(env_err e)
{
    switch (e) {
    case ENV_ERR_TRUNCATED: return "its S/MIME part is cut short (truncated CMS or base64)";
    case ENV_ERR_NOT_CMS: return "its application/pkcs7-mime part is not CMS";
    case ENV_ERR_MIME: return "bad S/MIME framing (its MIME header fields)";
    case ENV_ERR_ENCODING: return "bad S/MIME framing (the pkcs7-mime part must be base64)";
    case ENV_ERR_BASE64:
        return "its S/MIME part holds text that is not base64 (a footer or disclaimer added inside the "
               "encrypted part, by a mail gateway say: add it outside the encryption, or not at all)";
    case ENV_ERR_CONTENT_TYPE:
        return "message is not encrypted: its S/MIME part is CMS, but not EnvelopedData or AuthEnvelopedData "
               "(signed-data, say): the list takes mail that is S/MIME encrypted as a whole; sign before "
               "encrypting";
    case ENV_ERR_UNSUPPORTED:
        return "its members cannot decrypt it: its content cipher is not AES-CBC, AES-GCM or 3DES-CBC (RC2, "
               "Camellia or ChaCha20-Poly1305, say), or its content is not in the message";
    case ENV_ERR_TOO_LARGE: return "its S/MIME part is too large";
    default: return env_strerror(e);
    }
}

xp_err xp_check_message(const xp_conf *c, const xp_list *l, const void *data, size_t len, const char **kt,
                        const char **why, bool *unmet, bool older_ok)
{
    xp_older older;
    env_mime_top top;
    size_t hdr_end, body_start, idx, b64len;
    const char *body, *w, *crw;
    bool crlf, plain;
    xp_err rc;
    BIO *in = NULL;
    env_message *msg = NULL;
    env_err e;
    unsigned char *der = NULL;
    size_t derlen = 0;
    env_recipient *ri = NULL;
    env_kt_alg alg = ENV_KT_RSA_PKCS1V15;
    X509 *cert = NULL;

    if (kt != NULL)
        *kt = NULL;
    if (why != NULL)
        *why = NULL;
    if (unmet != NULL)
        *unmet = false;
    if ((rc = mail_split(data, len, &hdr_end, &body_start, &crlf)) != XP_OK) {
        if (why != NULL)
            *why = mail_split_strerror(rc);
        return rc == XP_ERR_TOO_LARGE ? XP_ERR_FORMAT : rc;
    }
    /* read as a member's mail program reads it: every mode passes the
     * post's other fields on as they came; a forward list that takes
     * anything too, as relays may refuse it (RFC 5321 2.3.8: CR only
     * before LF on the wire; sendmail 8.18 by default) */
    if ((w = lone_cr_why(data, hdr_end)) != NULL) {
        if (why != NULL)
            *why = w;
        return XP_ERR_FORMAT;
    }
    /* The message's MIME shape as the S/MIME reader takes it (envelope),
     * never by a reading of our own: what is S/MIME, in base64, and where
     * its base64 stops must be what the reader and the members' copies
     * see. A header block it cannot read is plain mail to a forward list
     * that takes anything, which sends it as it came. */
    if ((e = env_mime_read_top(data, len, &top)) == ENV_ERR_NOMEM)
        return XP_ERR_NOMEM;
    if (e != ENV_OK && !(l->mode == XP_MODE_FORWARD && !l->require_encrypted)) {
        if (why != NULL)
            *why = unreadable_why(e);
        return env_to_xp(e) == XP_ERR_TOO_LARGE ? XP_ERR_FORMAT : env_to_xp(e);
    }
    /* plain mail: only a forward list that explicitly allows it (told
     * first: a sender sent to re-encode a long line would be refused
     * again for what the list does not take at all) */
    plain = !top.smime;
    if (plain && !(l->mode == XP_MODE_FORWARD && !l->require_encrypted)) {
        if (why != NULL)
            *why = not_encrypted_why(data, len, &top, c->max_message_size);
        return XP_ERR_NOT_ENCRYPTED;
    }
    if (l->mode == XP_MODE_FORWARD && l->require_encrypted &&
        (w = mime_field_twice_why(data, hdr_end)) != NULL) {
        if (why != NULL)
            *why = w;
        return XP_ERR_FORMAT;
    }
    /* Forward mode sends the body as it came: a line over RFC 5322's 998
     * octets would make a relay that holds SMTP to them refuse every
     * member's copy, and the sender learn of it in a bounce for the whole
     * list. Refused now, while their MTA still has them, saying what to
     * change; but an S/MIME body of base64 text goes out in lines of 76
     * (prepare_forward), the same CMS. The re-encrypting modes write the
     * body anew in short lines. */
    body = (const char *)data + body_start;
    if (l->mode == XP_MODE_FORWARD && mail_longest_line(body, len - body_start) > MAIL_MAX_LINE &&
        !is_smime_base64(&top, body, len - body_start, &b64len)) {
        if (why != NULL)
            *why = "its body has a line longer than 998 octets (RFC 5322 2.1.1), which mail relays refuse: "
                   "send it with a Content-Transfer-Encoding that keeps lines short (quoted-printable or "
                   "base64)";
        /* S/MIME that is in base64 already, with text in it the reader
         * cannot take (a footer added inside the part): the reader's
         * reason, as groupmail gives it, not "send it in base64" */
        if (!plain && top.base64 && (in = BIO_new_mem_buf(data, (int)len)) != NULL) {
            e = env_message_read(in, ENV_FORMAT_SMIME, c->max_message_size, &msg);
            if (e != ENV_OK && env_to_xp(e) == XP_ERR_FORMAT && why != NULL)
                *why = unreadable_why(e);
        }
        rc = XP_ERR_FORMAT;
        goto out;
    }
    /* told after what the S/MIME reader finds wrong with an encrypted
     * post (binary CMS holds CRs too) */
    crw = l->mode == XP_MODE_FORWARD ? forward_body_cr_why(&top, body, len - body_start, l->require_encrypted)
                                     : NULL;
    if (plain || (l->mode == XP_MODE_FORWARD && !l->require_encrypted && l->group_cert == NULL)) {
        if (crw != NULL && why != NULL)
            *why = crw;
        return crw != NULL ? XP_ERR_FORMAT : XP_OK;
    }
    if (!has_cert(l->group_cert)) {
        log_error("list has no usable group certificate list=%s", l->address);
        return XP_ERR_CONFIG;
    }
    if ((in = BIO_new_mem_buf(data, (int)len)) == NULL) {
        rc = XP_ERR_NOMEM;
        goto out;
    }
    e = env_message_read(in, ENV_FORMAT_SMIME, c->max_message_size, &msg);
    /* CMS that is not encrypted, opaque signed-data (openssl smime -sign
     * -nodetach, cmsutil -S, Outlook without clear-text signing) or a
     * certs-only message: signed mail, which a forward list that takes
     * anything sends as it came, as it does multipart/signed */
    if (e == ENV_ERR_CONTENT_TYPE && l->mode == XP_MODE_FORWARD && !l->require_encrypted) {
        rc = crw != NULL ? XP_ERR_FORMAT : XP_OK;
        if (crw != NULL && why != NULL)
            *why = crw;
        goto out;
    }
    if (e != ENV_OK) {
        log_info("message is not a readable CMS message err=\"%s\"", env_strerror(e));
        rc = env_to_xp(e);
        if (why != NULL)
            *why = unreadable_why(e);
        goto out;
    }
    if (crw != NULL) {
        rc = XP_ERR_FORMAT;
        if (why != NULL)
            *why = crw;
        goto out;
    }
    /* A forward list that takes only encrypted mail sends the body as it
     * came: words after the base64 that decode as base64 too (a footer
     * whose letters happen to end a quantum) would reach every member
     * unencrypted, though the reader, stopping at the CMS's end, takes it.
     * Refused as such a footer is when it does not decode. */
    if (l->mode == XP_MODE_FORWARD && l->require_encrypted && env_message_trailing(msg)) {
        log_info("text after the CMS in the S/MIME body's base64 list=%s", l->address);
        rc = XP_ERR_FORMAT;
        if (why != NULL)
            *why = unreadable_why(ENV_ERR_BASE64);
        goto out;
    }
    /* ... and the copy is cut where the reader stops only in a body
     * prepare_forward knows for S/MIME base64; both ask envelope
     * (env_mime_read_top), so a body the reader takes always is: kept as
     * the guard that nothing after the base64 goes on uncut. */
    if (l->mode == XP_MODE_FORWARD && l->require_encrypted &&
        !is_smime_base64(&top, body, len - body_start, &b64len)) {
        log_info("S/MIME body the reader takes but not by the fields the copy is cut by list=%s", l->address);
        rc = XP_ERR_FORMAT;
        if (why != NULL)
            *why = unreadable_why(ENV_ERR_MIME);
        goto out;
    }
    e = find_group_ri(l, msg, &idx, &cert, unmet, &older);
    if (e != ENV_OK) {
        rc = env_to_xp(e);
        if (!l->require_encrypted && l->mode == XP_MODE_FORWARD)
            rc = XP_OK; /* forward list that accepts anything */
        else if (e == ENV_ERR_NO_RECIPIENT && older_ok && older.n > 0 && l->mode == XP_MODE_FORWARD) {
            /* Not taken: a forward list sends the message as it came, and
             * no group server looks at it before every member has a copy.
             * One encrypted to a member's own certificate alone (the
             * group's CA issued it) would reach them all unreadable, and
             * its sender would never hear; the sender can still encrypt
             * to the group's current certificate. */
            if (why != NULL)
                *why = "message is not encrypted to a group certificate the list knows: the certificate it "
                       "names (one of the group's CA, or one named by key identifier alone) may be an earlier key "
                       "version or someone's own certificate, which a list that forwards mail as it came cannot "
                       "tell apart (encrypt to the group's current certificate)";
        } else if (e == ENV_ERR_NO_RECIPIENT && older_ok && older.n > 0 && older.n <= XP_OLDER_MAX)
            rc = XP_OK; /* perhaps a version the list never met: the group server decides (xp_older) */
        else if (e == ENV_ERR_NO_RECIPIENT && older_ok && older.n > XP_OLDER_MAX && why != NULL)
            *why = "message is not encrypted to the list's group certificate, and names too many other "
                   "certificates of the group's CA or by key identifier alone (over " XP_OLDER_MAX_TEXT
                   ") to ask the group server about each";
        goto out;
    }
    /* the group's key transport, for the check against what it accepts;
     * one the group server never unwraps (a KARI with the SHA-384 KDF or
     * a compressed originator point, say) or would find malformed (an
     * originator key off the group key's curve, a cut key wrap) is
     * refused now, as the server would refuse every unwrap of it: the
     * sender hears at once from their MTA, not from a bounce hours later */
    if (env_message_recipient_der(msg, idx, &der, &derlen) == ENV_OK &&
        env_recipient_parse(der, derlen, &ri) == ENV_OK) {
        env_err ke = env_recipient_kt_alg(ri, &alg);
        e = env_recipient_check_unwrap(ri, cert);
        if (e == ENV_ERR_UNSUPPORTED) {
            log_info("the group's key algorithm is not one the group server unwraps list=%s", l->address);
            rc = XP_ERR_CIPHER;
            if (why != NULL)
                *why = ke == ENV_OK && alg == ENV_KT_ECDH
                           ? "the group server will not decrypt this message: the ECDH originator key of its "
                             "RecipientInfo for the group is a compressed point (the group server takes "
                             "uncompressed points)"
                           : "the group server will not decrypt this message: its key algorithm is not one the "
                             "group server unwraps (it takes " ENV_KT_SUPPORTED ")";
            goto out;
        }
        if (e != ENV_OK && e != ENV_ERR_NOMEM) {
            log_info("the group's RecipientInfo is malformed list=%s err=\"%s\"", l->address, env_strerror(e));
            rc = XP_ERR_FORMAT;
            if (why != NULL)
                *why = "its RecipientInfo for the group is malformed (a version RFC 5652 does not give, "
                       "garbled algorithm parameters, an ECDH originator key that is not a point of the "
                       "group key's curve, a key wrap of the wrong length, or user keying material too "
                       "long): the group server would refuse to decrypt it";
            goto out;
        }
        if (e == ENV_OK && kt != NULL)
            *kt = kt_name(alg);
    }
    rc = XP_OK;
out:
    X509_free(cert);
    env_recipient_free(ri);
    free(der);
    env_message_free(msg);
    BIO_free(in);
    return rc;
}

void xp_rest_opts(const xp_conf *c, const xp_list *l, gs_rest_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->base_url = l->server;
    o->cert_file = l->cert != NULL ? l->cert : c->tls_cert;
    o->key_file = l->priv_path != NULL ? l->priv_path : c->tls_priv_path;
    o->ca_file = l->cacert != NULL ? l->cacert : c->tls_ca;
    o->user_agent = "groupsrv-exploder/" GS_VERSION;
    o->timeout_ms = (long)c->tls_timeout * 1000;
    /* A member-certs rewrap answers one RecipientInfo per member (a
     * 10,000-member list gets about 6-10 MB, over the 4 MiB default). The
     * cap follows the list's size (gs_rest_members_answer_cap), so a
     * hostile server cannot make a small list's exploder hold more than it
     * ever needs. */
    if (l->mode == XP_MODE_MEMBER_CERTS && l->n_members > 0)
        o->max_response = gs_rest_members_answer_cap((size_t)l->n_members);
}

void xp_prepared_clear(xp_prepared *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free(p->member[i]);
        free(p->ri[i]);
    }
    free(p->member);
    free(p->ri);
    free(p->ri_len);
    memset(p, 0, sizeof(*p));
}

/* Whether to ask again (docs/exploder.1.md, "Group server answers"): a 4xx
 * other than 408 and 429 says the request itself is refused (not the
 * list's exploder, no such group, a RecipientInfo the group cannot
 * unwrap), and asking again gets the same answer: the message fails now
 * and bounces once. 408 (GS_REST_ERR_TIMEOUT), 429, 5xx, connection,
 * timeout and TLS trouble, and malformed answers are the server's or the
 * network's: retried with backoff until max_age. */
static xp_err rest_class(gs_rest_err e)
{
    switch (e) {
    case GS_REST_ERR_UNAUTHORIZED:
    case GS_REST_ERR_FORBIDDEN:
    case GS_REST_ERR_NOT_FOUND:
    case GS_REST_ERR_REJECTED: return XP_ERR_PERM;
    default: return XP_ERR_TEMP;
    }
}

static void rest_why(gs_rest *r, gs_rest_err e, char *why, size_t whysz)
{
    const char *code = gs_rest_last_code(r), *detail = gs_rest_last_detail(r);
    char status[32] = "";

    if (gs_rest_last_status(r) > 0)
        snprintf(status, sizeof(status), "HTTP %ld", gs_rest_last_status(r));
    snprintf(why, whysz, "group server: %s (%s%s%s%s%s)", gs_rest_strerror(e), status,
             status[0] && code[0] ? ", " : "", code, (status[0] || code[0]) && detail[0] ? ", " : "", detail);
}

xp_err xp_fetch_group_cert(const xp_conf *c, const xp_list *l, char **pem, char *why, size_t whysz)
{
    gs_rest_opts o;
    gs_rest *r = NULL;
    gs_rest_err e;
    size_t len = 0;
    char *subject = NULL;
    xp_err rc;

    *pem = NULL;
    why[0] = '\0';
    xp_rest_opts(c, l, &o);
    if ((e = gs_rest_new(&o, &r)) != GS_REST_OK) {
        snprintf(why, whysz, "group server client: %s", gs_rest_strerror(e));
        return XP_ERR_CONFIG;
    }
    if ((e = gs_rest_group_certificate(r, l->group, pem, &len)) != GS_REST_OK) {
        rest_why(r, e, why, whysz);
        rc = XP_ERR_TEMP;
        goto out;
    }
    if ((rc = xp_cert_check(*pem, &subject)) != XP_OK) {
        snprintf(why, whysz, "group server answered no parsable certificate");
        free(*pem);
        *pem = NULL;
        goto out;
    }
    rc = XP_OK;
out:
    OPENSSL_free(subject);
    gs_rest_free(r);
    return rc;
}

/* A post that came without a Message-ID (a script's openssl cms piped
 * to sendmail) gets one here, once: every copy, in every batch and every
 * retry, is made from this one prepared file, so members can thread it
 * and see a copy sent twice for what it is. Left to the relay, each SMTP
 * transaction got its own (Postfix adds one to mail from its inet
 * interfaces). RFC 5322 3.6.4: "<" 32 random hex digits "@" the list's
 * domain ">", unpredictable (it names nothing of the post or its sender).
 * A post's own Message-ID is kept as it came; an empty one (nothing but
 * white space) names nothing: it goes, and the list's takes its place
 * (a relay adds none when the field is there, empty or not). */
static xp_err add_message_id(const char *orig, size_t olen, const char *list_addr, bool crlf, char **hdrs,
                             size_t *hlen)
{
    char id[33], line[64 + MAIL_MAX_ADDR];
    const char *at = strrchr(list_addr, '@');
    size_t n, total;
    char *t;
    int w;

    if (mail_header_has_value(orig, olen, "Message-ID"))
        return XP_OK;
    if (at == NULL || at[1] == '\0')
        return XP_ERR_FORMAT;
    if (util_random_id(id, 16) != UTIL_OK)
        return XP_ERR_TEMP; /* no random bytes now: tried again, not failed */
    if (mail_header_present(*hdrs, *hlen, "Message-ID")) {
        *hlen = mail_header_remove(*hdrs, *hlen, "Message-ID");
        (*hdrs)[*hlen] = '\0';
    }
    w = snprintf(line, sizeof(line), "Message-ID: <%s@%s>%s", id, at + 1, crlf ? "\r\n" : "\n");
    if (w < 0 || (size_t)w >= sizeof(line))
        return XP_ERR_TOO_LARGE;
    n = (size_t)w;
    /* the domain as List-Id writes it: lower case */
    for (size_t i = strlen("Message-ID: <") + 33; i < n; i++)
        line[i] = (char)tolower((unsigned char)line[i]);
    if (util_size_add(*hlen, n + 1, &total))
        return XP_ERR_TOO_LARGE;
    if ((t = realloc(*hdrs, total)) == NULL)
        return XP_ERR_NOMEM;
    memcpy(t + *hlen, line, n + 1);
    *hdrs = t;
    *hlen += n;
    log_info("the post has no Message-ID, the copies carry the list's list=%s message_id=\"<%s@%s>\"",
             list_addr, id, at + 1);
    return XP_OK;
}

/* Forward mode: a body of base64 text (an S/MIME message, checked at
 * deliver) written in lines of 76 (RFC 2045 6.8), the same bytes once
 * decoded: a sender's base64 without line breaks would otherwise reach a
 * relay that holds SMTP to 1000-octet lines (RFC 5321 4.5.3.1.6), and it
 * would refuse every member's copy. */
static bool write_base64_lines(FILE *out, const unsigned char *p, size_t n, const char *eol)
{
    char line[76];
    size_t o = 0, el = strlen(eol);

    for (size_t i = 0; i < n; i++) {
        if (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n')
            continue;
        line[o++] = (char)p[i];
        if (o == sizeof(line)) {
            if (fwrite(line, 1, o, out) != o || fwrite(eol, 1, el, out) != el)
                return false;
            o = 0;
        }
    }
    if (o > 0 && (fwrite(line, 1, o, out) != o || fwrite(eol, 1, el, out) != el))
        return false;
    return true;
}

/* data[0, len): the post, which xp_prepare_check took for the list. */
static xp_err prepare_forward(const xp_list *l, const unsigned char *data, size_t len, FILE *out, char *why,
                              size_t whysz)
{
    char *hdrs = NULL;
    const char *body;
    size_t hdr_end, body_start, hlen = 0, b64len = 0, blen, keep, tail;
    bool crlf, rewrap, smime;
    const char *eol;
    env_mime_top top;
    env_err e;
    xp_err rc;

    if ((rc = mail_split((const char *)data, len, &hdr_end, &body_start, &crlf)) != XP_OK ||
        (rc = mail_list_headers((const char *)data, hdr_end, l->address, crlf, &hdrs, &hlen)) != XP_OK) {
        snprintf(why, whysz, "cannot parse spooled message: %s", xp_strerror(rc));
        goto out;
    }
    if ((rc = add_message_id((const char *)data, hdr_end, l->address, crlf, &hdrs, &hlen)) != XP_OK) {
        snprintf(why, whysz, "cannot give the post a Message-ID: %s", xp_strerror(rc));
        goto out;
    }
    /* headers, the blank line as it was, the body byte for byte; but an
     * S/MIME body of base64 with a line over 998 octets in lines of 76 */
    body = (const char *)data + body_start;
    blen = len - body_start;
    /* by the reader's fields (envelope), as deliver judged it; a header
     * block it cannot read reached here only on a list that takes
     * anything (xp_check_message): the body as it came */
    if ((e = env_mime_read_top(data, len, &top)) == ENV_ERR_NOMEM) {
        snprintf(why, whysz, "out of memory reading the message's MIME header fields");
        rc = XP_ERR_NOMEM;
        goto out;
    }
    smime = e == ENV_OK && is_smime_base64(&top, body, blen, &b64len);
    /* re-lined too for a CR that ends no line in it (the same CMS, decoded):
     * never sent to a relay as it is (forward_body_cr_why) */
    rewrap = smime && (mail_longest_line(body, blen) > MAIL_MAX_LINE || has_lone_cr(body, b64len));
    /* A list that takes only encrypted mail sends nothing outside the
     * encryption: text after the base64, where the S/MIME reader stops (a
     * '-' line), would reach every member unencrypted, and their mail
     * programs show only the S/MIME part, so it is left out. */
    keep = smime ? b64len : blen;
    tail = smime && !l->require_encrypted ? blen - b64len : 0;
    /* text left out from the middle of the base64's last line: the line
     * still ends (write_base64_lines ends its own) */
    eol = keep + tail < blen && !rewrap && keep > 0 && body[keep - 1] != '\n' ? (crlf ? "\r\n" : "\n") : "";
    if (fwrite(hdrs, 1, hlen, out) != hlen ||
        fwrite(data + hdr_end, 1, body_start - hdr_end, out) != body_start - hdr_end ||
        (rewrap ? !write_base64_lines(out, data + body_start, keep, crlf ? "\r\n" : "\n")
                : fwrite(body, 1, keep, out) != keep) ||
        fwrite(eol, 1, strlen(eol), out) != strlen(eol) || fwrite(body + keep, 1, tail, out) != tail) {
        snprintf(why, whysz, "cannot write prepared message");
        rc = XP_ERR_IO;
        goto out;
    }
    if (rewrap)
        log_info("the S/MIME body has lines over 998 octets or a CR that ends no line, sent in lines of 76 "
                 "list=%s",
                 l->address);
    if (keep + tail < blen)
        log_info("text after the S/MIME body's base64 left out (the list takes only encrypted mail) list=%s "
                 "octets=%zu",
                 l->address, blen - keep - tail);
    rc = XP_OK;
out:
    free(hdrs);
    return rc;
}

/* A group server refusal in one plain line for the sender: its own
 * (sanitised) words, never our log line. */
static void refusal_reason(gs_rest *r, char *reason, size_t rsz)
{
    const char *msg = gs_rest_last_message(r), *code = gs_rest_last_code(r);
    if (msg[0] != '\0')
        snprintf(reason, rsz, "the group server refused to re-encrypt it for the members: %s%s%s%s", msg,
                 code[0] ? " (" : "", code, code[0] ? ")" : "");
    else
        snprintf(reason, rsz, "the group server refused to re-encrypt it for the members (HTTP %ld)",
                 gs_rest_last_status(r));
}

/* Moves the member-certs answer into prep (one copy per member). */
static xp_err take_member_ris(gs_ri_list *ris, xp_prepared *prep)
{
    if ((prep->member = calloc(ris->n, sizeof(*prep->member))) == NULL ||
        (prep->ri = calloc(ris->n, sizeof(*prep->ri))) == NULL ||
        (prep->ri_len = calloc(ris->n, sizeof(*prep->ri_len))) == NULL)
        return XP_ERR_NOMEM;
    for (size_t i = 0; i < ris->n; i++) {
        prep->member[i] = ris->member[i];
        prep->ri[i] = ris->der[i];
        prep->ri_len[i] = ris->len[i];
        ris->member[i] = NULL;
        ris->der[i] = NULL;
        prep->n = i + 1;
    }
    return XP_OK;
}

static xp_err prepare_rewrap(const xp_conf *c, const xp_list *l, const char *in_path, FILE *out, xp_prepared *prep,
                             char *why, size_t whysz)
{
    BIO *in = NULL, *bout = NULL;
    env_message *msg = NULL;
    unsigned char *der = NULL;
    size_t derlen = 0, idx = 0, hlen = 0, nset, next = 0;
    gs_rest_opts o;
    gs_rest *r = NULL;
    gs_ri_list ris;
    gs_rest_err ge;
    env_err e;
    xp_older older;
    char *hdrs = NULL;
    const char *outer;
    xp_err rc = XP_ERR_CRYPTO;
    bool per_member, crlf, took_older = false;

    memset(&ris, 0, sizeof(ris));
    memset(&older, 0, sizeof(older));
    if (!has_cert(l->group_cert)) {
        snprintf(why, whysz, "list has no group certificate");
        rc = XP_ERR_TEMP; /* the admin can still add it */
        goto out;
    }
    if ((in = BIO_new_file(in_path, "rb")) == NULL) {
        snprintf(why, whysz, "cannot open spooled message");
        rc = XP_ERR_IO;
        goto out;
    }
    if ((e = env_message_read(in, ENV_FORMAT_SMIME, XP_MESSAGE_SIZE_CEILING, &msg)) == ENV_OK &&
        (e = find_group_ri(l, msg, &idx, NULL, NULL, &older)) == ENV_ERR_NO_RECIPIENT && older.n > 0 &&
        older.n <= XP_OLDER_MAX) {
        /* deliver took it for a version the list never met: the group
         * server says which RecipientInfo, if any, is the group's */
        idx = older.idx[0];
        next = 1;
        e = ENV_OK;
    } else if (e != ENV_OK || older.n > XP_OLDER_MAX) {
        older.n = 0;
    }
    /* For a version the list knows (next 0), older holds the message's
     * other candidates: a sender with the certificate of a version the
     * group server has since retired and the current one, which the list
     * has not met (deliver learns it only when it asks the group server,
     * at most once a minute, and never for a key identifier, which names
     * no issuer), is read with the current one, not bounced for the
     * retired one (unknown_recipient). */
    took_older = next > 0;
    if (e != ENV_OK || (e = env_message_recipient_der(msg, idx, &der, &derlen)) != ENV_OK) {
        snprintf(why, whysz, "spooled message: %s", env_strerror(e));
        snprintf(prep->reason, sizeof(prep->reason), "the list could not read the encrypted message (%s)",
                 env_strerror(e));
        rc = env_to_xp(e);
        goto out;
    }
    /* one call per message, whatever the number of recipients; the content
     * algorithm tells the server the key's length */
    xp_rest_opts(c, l, &o);
    if ((ge = gs_rest_new(&o, &r)) != GS_REST_OK) {
        snprintf(why, whysz, "group server client: %s", gs_rest_strerror(ge));
        rc = XP_ERR_TEMP;
        goto out;
    }
    for (;;) {
        ge = gs_rest_rewrap_alg(r, l->group, der, derlen,
                                l->mode == XP_MODE_GROUP_SECRET ? GS_REWRAP_GROUP_SECRET : GS_REWRAP_MEMBERS,
                                env_message_content_alg(msg), &ris);
        /* A candidate for no version of the group (the sender's own
         * certificate, say), or a version retired since: the next one.
         * Any other answer is the group server's word on the message. */
        if (next >= older.n || ge != GS_REST_ERR_REJECTED || strcmp(gs_rest_last_code(r), "unknown_recipient") != 0)
            break;
        gs_ri_list_clear(&ris);
        free(der);
        der = NULL;
        took_older = true;
        idx = older.idx[next++];
        if ((e = env_message_recipient_der(msg, idx, &der, &derlen)) != ENV_OK) {
            snprintf(why, whysz, "spooled message: %s", env_strerror(e));
            rc = env_to_xp(e);
            goto out;
        }
    }
    if (took_older && ge == GS_REST_OK)
        log_info("the group server took a RecipientInfo for a key version the list has not met list=%s "
                 "recipient_info=%zu",
                 l->address, idx + 1);
    if (ge != GS_REST_OK) {
        rest_why(r, ge, why, whysz);
        rc = rest_class(ge);
        if (rc == XP_ERR_PERM)
            refusal_reason(r, prep->reason, sizeof(prep->reason));
        goto out;
    }
    if (ris.n == 0) {
        snprintf(why, whysz, "group server returned no RecipientInfo");
        rc = XP_ERR_TEMP;
        goto out;
    }
    /* Member-certs: one copy per member, each carrying only its member's
     * RecipientInfo (O(1) size, no member learns who else is on the list).
     * The file written here is the template, with the first member's. An
     * older server that does not name the members: one copy with all. */
    per_member = l->mode == XP_MODE_MEMBER_CERTS && ris.member != NULL;
    nset = per_member ? 1 : ris.n;
    /* only the returned RecipientInfos: the group's KTRI and any other
     * recipient of the original do not travel on to the members */
    if ((e = env_message_set_recipients(msg, (const unsigned char *const *)ris.der, ris.len, nset)) != ENV_OK) {
        /* a malformed answer, like a 5xx: the server's fault, not the message's */
        snprintf(why, whysz, "group server answered an unusable RecipientInfo: %s", env_strerror(e));
        rc = e == ENV_ERR_NOMEM ? XP_ERR_NOMEM : XP_ERR_TEMP;
        goto out;
    }
    /* nor the sender's originatorInfo (certificates and CRLs for the key
     * agreement of the RecipientInfos just dropped): gpgsm 2.2 (libksba)
     * reads no EnvelopedData that has one, and a member who reads with it
     * could read no copy of such a sender's post */
    env_message_drop_originator(msg);
    outer = env_message_outer_headers(msg);
    crlf = strstr(outer, "\r\n") != NULL;
    if ((rc = mail_list_headers(outer, strlen(outer), l->address, crlf, &hdrs, &hlen)) != XP_OK ||
        (rc = add_message_id(outer, strlen(outer), l->address, crlf, &hdrs, &hlen)) != XP_OK) {
        snprintf(why, whysz, "headers: %s", xp_strerror(rc));
        goto out;
    }
    if ((bout = BIO_new_fp(out, BIO_NOCLOSE)) == NULL) {
        rc = XP_ERR_NOMEM;
        goto out;
    }
    if ((e = env_message_write(msg, ENV_FORMAT_SMIME, hdrs, bout)) != ENV_OK || BIO_flush(bout) != 1) {
        snprintf(why, whysz, "writing message: %s", env_strerror(e));
        rc = XP_ERR_IO;
        goto out;
    }
    if (per_member && (rc = take_member_ris(&ris, prep)) != XP_OK) {
        snprintf(why, whysz, "out of memory for %zu member RecipientInfos", ris.n);
        goto out;
    }
    log_info("rewrapped list=%s mode=%s recipient_infos=%zu per_member=%s content_algorithm=%s", l->address,
             xp_mode_name(l->mode), ris.n, per_member ? "yes" : "no", env_message_content_alg(msg));
    rc = XP_OK;
out:
    if (rc != XP_OK && prep->member != NULL) /* a partial member list is of no use */
        xp_prepared_clear(prep);
    gs_ri_list_clear(&ris);
    gs_rest_free(r);
    free(hdrs);
    free(der);
    env_message_free(msg);
    BIO_free(bout);
    BIO_free(in);
    return rc;
}

/* The check deliver runs (xp_check_message, then the group's key
 * transports), for the list as it is now: `list set` may have changed
 * its mode or --require-encrypted since deliver took the post, and a
 * post is sent only as deliver would take it now, with deliver's reason
 * for the sender when it would not. One check, not each mode's prepare
 * re-checking some of it in its own place: the re-encrypting modes
 * looked for a CR that ends no line in the fields the copy carries on
 * alone, not in the Content-* fields deliver reads too, and a forward
 * list made to take only encrypted mail sent plain mail, or mail for
 * someone else, as it came. older_ok: what the group server decides at
 * prepare_rewrap (a forward list still refuses it). The size is the
 * spool's ceiling, not [spool] max_message_size: a limit lowered since
 * does not bounce what was taken. */
static xp_err prepare_check(const xp_conf *c, const xp_list *l, const unsigned char *data, size_t len,
                            xp_prepared *prep, char *why, size_t whysz)
{
    xp_conf now = *c;
    const char *kt = NULL, *w = NULL;
    char acc[200];
    xp_err rc;

    now.max_message_size = XP_MESSAGE_SIZE_CEILING;
    rc = xp_check_message(&now, l, data, len, &kt, &w, NULL, true);
    if (rc == XP_OK && kt != NULL && xp_group_accepts(l, kt, acc, sizeof(acc)) == XP_ERR_REFUSED) {
        rc = XP_ERR_CIPHER;
        snprintf(prep->reason, sizeof(prep->reason), "the group server will not decrypt this message: %s", acc);
    } else if (rc == XP_ERR_FORMAT || rc == XP_ERR_TOO_LARGE || rc == XP_ERR_NOT_ENCRYPTED ||
               rc == XP_ERR_WRONG_RECIPIENT || rc == XP_ERR_CIPHER) {
        snprintf(prep->reason, sizeof(prep->reason), "%s", w != NULL ? w : xp_strerror(rc));
    } else if (rc == XP_ERR_CONFIG) {
        snprintf(why, whysz, "list has no group certificate");
        return XP_ERR_TEMP; /* the admin can still add it */
    } else if (rc != XP_OK) {
        snprintf(why, whysz, "cannot check the spooled message: %s", xp_strerror(rc));
        return rc == XP_ERR_NOMEM || rc == XP_ERR_IO ? rc : XP_ERR_TEMP;
    }
    if (rc != XP_OK)
        snprintf(why, whysz, "refused for the list as it is now (mode %s%s): %s", xp_mode_name(l->mode),
                 l->mode == XP_MODE_FORWARD && !l->require_encrypted ? ", takes anything" : "", prep->reason);
    return rc;
}

xp_err xp_prepare(const xp_conf *c, const xp_list *l, const char *in_path, FILE *out, xp_prepared *prep, char *why,
                  size_t whysz)
{
    unsigned char *data = NULL;
    size_t len = 0;
    xp_err rc;

    why[0] = '\0';
    memset(prep, 0, sizeof(*prep));
    if (util_read_file(in_path, XP_MESSAGE_SIZE_CEILING, &data, &len) != UTIL_OK) {
        snprintf(why, whysz, "cannot read spooled message");
        return XP_ERR_IO;
    }
    if ((rc = prepare_check(c, l, data, len, prep, why, whysz)) != XP_OK)
        goto out;
    if (l->mode == XP_MODE_FORWARD) {
        rc = prepare_forward(l, data, len, out, why, whysz);
        goto out;
    }
    free(data); /* the re-encrypting modes read the file as a stream */
    data = NULL;
    rc = prepare_rewrap(c, l, in_path, out, prep, why, whysz);
out:
    free(data);
    return rc;
}
