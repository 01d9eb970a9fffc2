/*
 * fuzz_mail: the exploder's parsing of mail from the Internet. One input is
 * one message as an MTA pipes it to `exploder deliver`, taken through what
 * the exploder does with it:
 *
 *  - exploder/mail.c: the header/body split, every header deliver.c reads
 *    (List-Id, Return-Path, From, Message-ID, Content-Type, X-BeenThere)
 *    and their addr-specs, the loop check, the rewritten header block of
 *    the outgoing copy (List-* added, forged ones dropped);
 *  - exploder/prepare.c: xp_check_message for a forward list that takes
 *    anything, a forward list that wants mail encrypted to the group, and
 *    a group-secret list (S/MIME and CMS through envelope/);
 *  - the offline half of prepare_rewrap: the group's RecipientInfo found,
 *    the RecipientInfos replaced (by two copies of it, as a rewrap answer
 *    would), the S/MIME message written with the new header block.
 *
 * Invariants checked: the split is inside the input, and the S/MIME
 * reader's body starts where it does; a rewritten header
 * block parses again and carries exactly our List-Id; what the exploder
 * writes for a message it accepted is a message it would accept itself,
 * with the RecipientInfos it was given.
 *
 * The list's group certificate is fixed (below; its key is not kept);
 * the S/MIME seeds in corpus/mail/ are encrypted to it.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "envelope.h"
#include "fuzz.h"
#include "log.h"
#include "mail.h"
#include "mailaddr.h"
#include "prepare.h"
#include "spool.h"

#define LIST "eng@lists.example.org"

/* CN=eng@lists.example.org, RSA-2048, self-signed, valid until 2126. */
static const char group_pem[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIDRTCCAi2gAwIBAgIUJhTZ0X51L1N6CJmwDB74ZxaBYXEwDQYJKoZIhvcNAQEL\n"
    "BQAwIDEeMBwGA1UEAwwVZW5nQGxpc3RzLmV4YW1wbGUub3JnMCAXDTI2MTIwNDIw\n"
    "MzIxNVoYDzIxMjYxMTEwMjAzMjE1WjAgMR4wHAYDVQQDDBVlbmdAbGlzdHMuZXhh\n"
    "bXBsZS5vcmcwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQDZqhL+pq16\n"
    "j3G4aGUjgdJ9u+WrWnHjaU3BR77Y4YJ1dPT4H1u39v23u3lViOp2E3u7b5AGYNPb\n"
    "6CgzrVsn/wlcXd3NqMPpUh6UxROfil6Yc0tEYMy/A+U0Vthz7GZxUAwoMUm9qS2x\n"
    "yQW+MGw31MVW82ZgP+z8OCuD37Uh2JdcS5u+8KHYzV+2PklttCVIRfWduMSCl/x4\n"
    "h5wGNaGyN6B9WMF0ZkDp6hPUZ0rUFZlol7tIzv6aC92axMBro7G1SRgEXo4te9EJ\n"
    "Rm/L27ETxxYjDtp7V7wFN7Wco6JyXUruKaFvcKCIU2VxH0R8uw9dB6ADPKxYeJVe\n"
    "4OQ5D7ClmjEZAgMBAAGjdTBzMB0GA1UdDgQWBBRMJ1IRBsOEWDz2FEC77apcAx2q\n"
    "6jAfBgNVHSMEGDAWgBRMJ1IRBsOEWDz2FEC77apcAx2q6jAPBgNVHRMBAf8EBTAD\n"
    "AQH/MCAGA1UdEQQZMBeBFWVuZ0BsaXN0cy5leGFtcGxlLm9yZzANBgkqhkiG9w0B\n"
    "AQsFAAOCAQEAf91iG1em2gRx1q9n+7VLKiwIZexU8T5hKXrY2rq7Iliz0MNy+3b+\n"
    "6frkgCABZJ1phCQQ21FhQfPvK6ymbiftGRt6ovazdpBOds7c9uh6HGegxs2cpilZ\n"
    "DQ7uXoLJXqXWiIW6syU4Wz7OQQPonIKDgQBFbM982TwP3WaPzc8ifSLyojaThwo1\n"
    "TqAD/g0URnHV6CmX9TCPul2o8MJPSIrG/SWyZs/BXZNFMqNfpy/RHDJsAbdK1DlT\n"
    "vgEu8pxjz/CJfcvU2ZCnHH1ArYe4riMk1Qtx6VIeAtdDNTYbEXiLtZoQ6Y28QfIA\n"
    "rlbe2xHy9ElKLwETfCZ+yKO3qPJWTM6nXA==\n"
    "-----END CERTIFICATE-----\n";

static X509 *group_cert;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    BIO *b = BIO_new_mem_buf(group_pem, -1);
    (void)argc;
    (void)argv;
    log_init("fuzz_mail", LOG_LVL_ERROR, NULL);
    if (b == NULL || (group_cert = PEM_read_bio_X509(b, NULL, NULL, NULL)) == NULL) {
        fprintf(stderr, "fuzz_mail: cannot read the group certificate\n");
        return 1;
    }
    BIO_free(b);
    return 0;
}

/* Count of header fields called name at the start of a line. */
static size_t count_fields(const char *h, size_t len, const char *name)
{
    size_t n = 0, want = strlen(name);
    for (size_t i = 0; i + want < len; i++)
        if ((i == 0 || h[i - 1] == '\n') && strncasecmp(h + i, name, want) == 0 && h[i + want] == ':')
            n++;
    return n;
}

/* The new header block must parse as one, followed by the old body. */
static void check_rewritten(const char *hdrs, size_t hlen, bool crlf)
{
    const char *eol = crlf ? "\r\n" : "\n";
    size_t elen = strlen(eol), he, bs;
    char *m = malloc(hlen + elen + 2);
    bool c2;

    FUZZ_CHECK(m != NULL);
    FUZZ_CHECK(hlen > 0 && hdrs[hlen - 1] == '\n' && strlen(hdrs) == hlen);
    memcpy(m, hdrs, hlen);
    memcpy(m + hlen, eol, elen);
    m[hlen + elen] = 'x';
    FUZZ_CHECK(mail_split(m, hlen + elen + 1, &he, &bs, &c2) == XP_OK);
    FUZZ_CHECK(he == hlen && bs == hlen + elen);
    FUZZ_CHECK(count_fields(m, he, "List-Id") == 1 && count_fields(m, he, "Precedence") == 1);
    FUZZ_CHECK(mail_been_there(m, he, LIST));
    free(m);
}

static void headers(const char *buf, size_t hdr_end, bool crlf)
{
    static const char *const names[] = {"List-Id", "Return-Path", "From", "Message-ID", "Content-Type", "X-BeenThere"};
    char addr[MAIL_MAX_ADDR + 1], id[MAIL_MAX_ADDR + 1], *out = NULL;
    size_t outlen = 0;

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char *v = mail_header_get(buf, hdr_end, names[i]);
        if (v == NULL)
            continue;
        FUZZ_CHECK(strlen(v) <= hdr_end);
        if (mail_addr_spec(v, addr, sizeof(addr)) == XP_OK) {
            /* never a comment, a quoted string or a second address */
            FUZZ_CHECK(strpbrk(addr, " \t<>(),;\"\\") == NULL);
            if (!mail_addr_ascii(addr)) {
                /* an SMTPUTF8 poster's: its domain has an A-label form */
                const char *why = NULL;
                FUZZ_CHECK(mail_addr_intl(addr, id, sizeof(id), &why) == XP_OK);
                free(v);
                continue;
            }
            /* a sender or list as written: it may name a record of the
             * older rule, so the record rule, not mail_addr_valid's */
            FUZZ_CHECK(mailaddr_names_record(addr));
            mail_addr_normalize(addr);
            FUZZ_CHECK(mailaddr_names_record(addr));
            FUZZ_CHECK(mail_list_id(addr, id, sizeof(id)) == XP_OK && strchr(id, '@') == NULL);
        } else {
            FUZZ_CHECK(addr[0] == '\0');
        }
        free(v);
    }
    (void)mail_been_there(buf, hdr_end, LIST);
    if (mail_list_headers(buf, hdr_end, LIST, crlf, &out, &outlen) == XP_OK)
        check_rewritten(out, outlen, crlf);
    free(out);
}

/* prepare_rewrap without the group server: two copies of the group's
 * RecipientInfo stand in for the answer. */
static void rewrite(const xp_conf *c, const xp_list *l, const uint8_t *data, size_t size)
{
    BIO *in = BIO_new_mem_buf(data, (int)size), *out = BIO_new(BIO_s_mem());
    env_message *msg = NULL, *again = NULL;
    unsigned char *der = NULL;
    const unsigned char *ders[2];
    size_t derlen = 0, lens[2], idx, hlen = 0;
    char *hdrs = NULL, *text = NULL;
    const char *outer;
    long n;

    FUZZ_CHECK(in != NULL && out != NULL);
    if (env_message_read(in, ENV_FORMAT_SMIME, c->max_message_size, &msg) != ENV_OK ||
        env_message_find_recipient(msg, group_cert, &idx) != ENV_OK ||
        env_message_recipient_der(msg, idx, &der, &derlen) != ENV_OK)
        goto out;
    ders[0] = ders[1] = der;
    lens[0] = lens[1] = derlen;
    FUZZ_CHECK(env_message_set_recipients(msg, ders, lens, 2) == ENV_OK);
    outer = env_message_outer_headers(msg);
    if (mail_list_headers(outer, strlen(outer), LIST, strstr(outer, "\r\n") != NULL, &hdrs, &hlen) != XP_OK)
        goto out;
    FUZZ_CHECK(env_message_write(msg, ENV_FORMAT_SMIME, hdrs, out) == ENV_OK);
    n = BIO_get_mem_data(out, &text);
    FUZZ_CHECK(n > 0);
    /* what goes out is something the exploder itself would take */
    FUZZ_CHECK(xp_check_message(c, l, text, (size_t)n, NULL, NULL, NULL, false) == XP_OK);
    BIO_free(in);
    FUZZ_CHECK((in = BIO_new_mem_buf(text, (int)n)) != NULL);
    FUZZ_CHECK(env_message_read(in, ENV_FORMAT_SMIME, 0, &again) == ENV_OK);
    FUZZ_CHECK(env_message_recipient_count(again) == 2);
out:
    env_message_free(again);
    env_message_free(msg);
    free(der);
    free(hdrs);
    BIO_free(out);
    BIO_free(in);
}

/* A line over 998 octets from the line where the S/MIME reader's base64
 * decoder stops (its first '-') on? */
static bool long_line_from_stop(const char *body, size_t n)
{
    const char *dash = memchr(body, '-', n);
    size_t ls;

    if (dash == NULL)
        return false;
    for (ls = (size_t)(dash - body); ls > 0 && body[ls - 1] != '\n'; ls--)
        ;
    return mail_longest_line(body + ls, n - ls) > MAIL_MAX_LINE;
}

/* Does the S/MIME reader find decoded bytes after the ContentInfo? */
static bool bytes_after_cms(const xp_conf *c, const uint8_t *data, size_t size)
{
    BIO *in = BIO_new_mem_buf(data, (int)size);
    env_message *msg = NULL;
    bool yes;

    FUZZ_CHECK(in != NULL);
    yes = env_message_read(in, ENV_FORMAT_SMIME, c->max_message_size, &msg) == ENV_OK && env_message_trailing(msg);
    env_message_free(msg);
    BIO_free(in);
    return yes;
}

/* Does the header block give Content-Type, Content-Transfer-Encoding or
 * Content-Disposition more than once? */
static bool mime_field_twice(const char *buf, size_t size)
{
    size_t hdr_end, body_start;
    bool crlf;

    if (mail_split(buf, size, &hdr_end, &body_start, &crlf) != XP_OK)
        return false;
    return mail_header_count(buf, hdr_end, "Content-Type") > 1 ||
           mail_header_count(buf, hdr_end, "Content-Transfer-Encoding") > 1 ||
           mail_header_count(buf, hdr_end, "Content-Disposition") > 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    xp_conf c = {.max_message_size = 1u << 20};
    xp_list l = {.address = LIST, .group = "eng", .server = "https://127.0.0.1:1", .group_cert = (char *)group_pem};
    const char *buf = (const char *)data;
    size_t hdr_end, body_start;
    bool crlf;
    const char *kt = NULL, *why = NULL;
    env_mime_top top;
    xp_err rc, gs;

    if (size > c.max_message_size)
        return 0;
    rc = mail_split(buf, size, &hdr_end, &body_start, &crlf);
    if (rc == XP_OK) {
        FUZZ_CHECK(hdr_end > 0 && hdr_end < body_start && body_start <= size);
        FUZZ_CHECK(buf[hdr_end] == '\n' || (buf[hdr_end] == '\r' && buf[hdr_end + 1] == '\n'));
        headers(buf, hdr_end, crlf);
        /* where the S/MIME reader's body starts is where the split's does:
         * a forward copy is cut at the reader's offsets into the split's body */
        if (env_mime_read_top(data, size, &top) == ENV_OK)
            FUZZ_CHECK(top.body == body_start && top.b64_stop >= top.body && top.b64_stop <= size);
    } else {
        FUZZ_CHECK(rc == XP_ERR_FORMAT || rc == XP_ERR_TOO_LARGE);
    }

    /* the three list policies deliver.c meets */
    l.mode = XP_MODE_FORWARD;
    l.require_encrypted = false;
    rc = xp_check_message(&c, &l, data, size, NULL, NULL, NULL, false);
    FUZZ_CHECK(rc != XP_OK || size > 0);
    l.require_encrypted = true;
    rc = xp_check_message(&c, &l, data, size, &kt, &why, NULL, false);
    /* a key transport is named only for a message the list takes */
    FUZZ_CHECK(kt == NULL || (rc == XP_OK && kt[0] != '\0'));
    /* ... but never for a forward list, which no group server reads for */
    FUZZ_CHECK(xp_check_message(&c, &l, data, size, NULL, NULL, NULL, true) == rc);
    /* a forward list that takes only encrypted mail sends nothing outside
     * the encryption: no words that decode after the CMS */
    FUZZ_CHECK(rc != XP_OK || !bytes_after_cms(&c, data, size));
    l.mode = XP_MODE_GROUP_SECRET;
    gs = xp_check_message(&c, &l, data, size, NULL, NULL, NULL, false);
    /* the same, but for what forward mode would send as it came (a
     * re-encrypting mode writes the body anew): a body line over 998
     * octets, which when the reader takes the CMS is only one in the text
     * where its decoder stops (a signature after the base64) */
    if (rc != XP_OK && why != NULL && strstr(why, "longer than 998 octets") != NULL) {
        FUZZ_CHECK(gs != XP_OK || long_line_from_stop(buf + body_start, size - body_start));
        rc = gs;
    }
    /* ... and words after the base64 that decode past the CMS's end (a
     * refusal forward mode makes first, whether the group-secret list
     * takes the message or refuses it for another reason) */
    if (rc != XP_OK && gs != rc && why != NULL && strstr(why, "not base64") != NULL) {
        FUZZ_CHECK(bytes_after_cms(&c, data, size));
        rc = gs;
    }
    /* ... and a MIME field given twice, which a forward copy would carry
     * as it came to mail programs that take the first (a re-encrypting
     * mode writes its own) */
    if (rc != XP_OK && gs != rc && why != NULL && strstr(why, "more than once") != NULL) {
        FUZZ_CHECK(rc == XP_ERR_FORMAT && mime_field_twice(buf, size));
        rc = gs;
    }
    FUZZ_CHECK(gs == rc);
    /* a message perhaps for a version the list never met (deliver, once
     * the list knows the current one) only widens what a re-wrapping
     * list takes (forward: above) */
    FUZZ_CHECK(rc != XP_OK || xp_check_message(&c, &l, data, size, NULL, NULL, NULL, true) == XP_OK);
    if (rc == XP_OK)
        rewrite(&c, &l, data, size);
    ERR_clear_error();
    return 0;
}
