/* Unit tests of exploder/: header parsing and list headers (mail.c), the
 * spool's state machine (spool.c) and the backoff schedule. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/cms.h>
#include <openssl/rsa.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <sqlite3.h>

#include "cmd.h"
#include "envelope.h"
#include "groupinfo.h"
#include "log.h"
#include "mail.h"
#include "prepare.h"
#include "restclient.h"
#include "spool.h"
#include "util.h"
#include "xp.h"

static void test_split_ok(void **state)
{
    (void)state;
    const char *m = "From: a@b.org\nSubject: x\n  folded\n\nbody\n";
    size_t he, bs;
    bool crlf;
    assert_int_equal(mail_split(m, strlen(m), &he, &bs, &crlf), XP_OK);
    assert_false(crlf);
    assert_int_equal(he, strlen("From: a@b.org\nSubject: x\n  folded\n"));
    assert_string_equal(m + bs, "body\n");

    const char *c = "From: a@b.org\r\n\r\nbody";
    assert_int_equal(mail_split(c, strlen(c), &he, &bs, &crlf), XP_OK);
    assert_true(crlf);
    assert_string_equal(c + bs, "body");
}

static void test_split_rejects(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",                            /* empty */
        "\nbody\n",                    /* no headers */
        "From: a@b.org\nno body sep",  /* no blank line */
        " folded: first\n\nx\n",       /* continuation first */
        "Bad Header: x\n\nx\n",        /* space in field name */
        "NoColon\n\nx\n",
        ": empty name\n\nx\n",
    };
    size_t he, bs;
    bool crlf;
    for (size_t i = 0; i < GS_ARRAY_LEN(bad); i++)
        assert_int_not_equal(mail_split(bad[i], strlen(bad[i]), &he, &bs, &crlf), XP_OK);
    const char nul[] = "From: a\0b\n\nx\n";
    assert_int_equal(mail_split(nul, sizeof(nul) - 1, &he, &bs, &crlf), XP_ERR_FORMAT);
}

static void test_header_get(void **state)
{
    (void)state;
    const char *h = "From: Alice <alice@Example.ORG>\nsubject:  hello\n world \nX: 1\n";
    char *v = mail_header_get(h, strlen(h), "Subject");
    assert_non_null(v);
    assert_string_equal(v, "hello world");
    free(v);
    assert_null(mail_header_get(h, strlen(h), "To"));
    v = mail_header_get(h, strlen(h), "from");
    char addr[MAIL_MAX_ADDR + 1];
    assert_int_equal(mail_addr_spec(v, addr, sizeof(addr)), XP_OK);
    assert_string_equal(addr, "alice@Example.ORG");
    mail_addr_normalize(addr);
    assert_string_equal(addr, "alice@example.org");
    free(v);
    /* a bare CR is a line end to some readers (mallory's From, then a
     * broken line): kept by unfolding and refused as an address */
    const char *cr = "From: mallory@evil.example\r<alice@example.com>\r\nSubject: a\r\n b\r\n";
    v = mail_header_get(cr, strlen(cr), "From");
    assert_non_null(v);
    assert_string_equal(v, "mallory@evil.example\r<alice@example.com>");
    assert_int_not_equal(mail_addr_spec(v, addr, sizeof(addr)), XP_OK);
    free(v);
    assert_int_not_equal(mail_addr_spec("mallory@evil.example\f<alice@example.com>", addr, sizeof(addr)), XP_OK);
    assert_int_not_equal(mail_addr_spec("mallory@evil.example\v<alice@example.com>", addr, sizeof(addr)), XP_OK);
    assert_int_not_equal(mail_addr_spec("mallory@evil.example\x1c<alice@example.com>", addr, sizeof(addr)), XP_OK);
    assert_int_equal(mail_addr_spec("Alice\t<alice@example.com>\t(c)", addr, sizeof(addr)), XP_OK);
    assert_string_equal(addr, "alice@example.com");
    v = mail_header_get(cr, strlen(cr), "Subject");
    assert_non_null(v);
    assert_string_equal(v, "a b");
    free(v);
}

static void test_addr(void **state)
{
    (void)state;
    char a[MAIL_MAX_ADDR + 1];
    assert_int_equal(mail_addr_spec("bob@x.org", a, sizeof(a)), XP_OK);
    assert_int_equal(mail_addr_spec("  <bob@x.org> ", a, sizeof(a)), XP_OK);
    assert_string_equal(a, "bob@x.org");
    assert_int_not_equal(mail_addr_spec("bob", a, sizeof(a)), XP_OK);
    assert_int_not_equal(mail_addr_spec("<>", a, sizeof(a)), XP_OK);
    assert_int_not_equal(mail_addr_spec("a@b@c", a, sizeof(a)), XP_OK);
    assert_int_not_equal(mail_addr_spec("<a b@c>", a, sizeof(a)), XP_OK);
    assert_int_not_equal(mail_addr_spec("<a@b", a, sizeof(a)), XP_OK);
    assert_false(mail_addr_valid("@x.org"));
    assert_false(mail_addr_valid("x@"));
    assert_true(mail_addr_valid("first.last+tag@sub.example.org"));
}

/* RFC 5322 3.4 as a DMARC checker and a mail reader read a From: a
 * comment or a quoted display name never holds the address; a shape that
 * may be read two ways is refused, not guessed at. NULL: refused. */
static void test_addr_rfc5322(void **state)
{
    (void)state;
    static const struct {
        const char *value, *want;
    } cases[] = {
        {"mallory@evil.example (<alice@example.com>)", "mallory@evil.example"},
        {"mallory@evil.example ((nested (<alice@example.com>)))", "mallory@evil.example"},
        {"mallory@evil.example (\\) <alice@example.com>)", "mallory@evil.example"}, /* quoted-pair ) */
        {"mallory@evil.example (\\( <alice@example.com>)", "mallory@evil.example"}, /* quoted-pair ( */
        {"\"<alice@example.com>\" <mallory@evil.example>", "mallory@evil.example"},
        {"\"a \\\" <alice@example.com>\" <mallory@evil.example>", "mallory@evil.example"}, /* \" in quotes */
        {"(<alice@example.com>) mallory@evil.example", "mallory@evil.example"},
        {"Alice (work) <alice@example.com> (sent by me)", "alice@example.com"},
        {"\"Smith, Alice\" <alice@example.com>", "alice@example.com"},
        {"alice@example.com <alice@example.com>", "alice@example.com"},
        {"< alice@example.com >", "alice@example.com"},
        {"(c) alice@example.com (c)", "alice@example.com"},
        {"=?utf-8?q?J=C3=BCrgen?= <j@example.org>", "j@example.org"},
        /* ambiguous or broken: refused */
        {"mallory@evil.example (<alice@example.com>", NULL},     /* unterminated comment */
        {"mallory@evil.example ((<alice@example.com>)", NULL},   /* unbalanced nesting */
        {"\"<mallory@evil.example> <alice@example.com>", NULL}, /* unterminated quote */
        {"x <mallory@evil.example> <alice@example.com>", NULL},  /* two angle-addrs */
        {"<alice@example.com> <mallory@evil.example>", NULL},
        {"<alice@example.com> mallory@evil.example", NULL},      /* text after '>' */
        {"<alice@example.com> \"x\"", NULL},
        {"mallory@evil.example, Alice <alice@example.com>", NULL}, /* a mailbox-list */
        {"Smith, Alice <alice@example.com>", NULL},
        {"friends: <alice@example.com>;", NULL},                  /* a group */
        {"mallory@evil.example) <alice@example.com>", NULL},      /* ')' with nothing open */
        {"mallory@evil.example > alice@example.com", NULL},       /* '>' with nothing open */
        {"\\\" <alice@example.com>", NULL},                     /* '\\' outside quotes */
        {"<<alice@example.com>>", NULL},
        {"\"<alice@example.com>\"", NULL},                      /* a quoted string alone */
        {"mallory(x)@evil.example", NULL},                        /* a comment inside: not guessed */
        {"<alice@example.com", NULL},
        {"", NULL},
        {"()", NULL},
    };
    char a[MAIL_MAX_ADDR + 1];
    const char *why;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        xp_err rc = mail_addr_spec_why(cases[i].value, a, sizeof(a), &why);
        if (cases[i].want == NULL) {
            if (rc == XP_OK)
                fail_msg("case %zu (%s): want refused, got %s", i, cases[i].value, a);
            assert_non_null(why);
            assert_string_equal(a, "");
        } else if (rc != XP_OK || strcmp(a, cases[i].want) != 0) {
            fail_msg("case %zu (%s): want %s, got %s (%s)", i, cases[i].value, cases[i].want,
                     rc == XP_OK ? a : "refused", why != NULL ? why : "-");
        }
    }
    /* RFC 5322 3.6: a From occurs once; deliver takes none of two */
    {
        const char *h = "From: a@x.example\nfrom: b@x.example\nFrom-X: c\nX: 1\n";
        assert_int_equal(mail_header_count(h, strlen(h), "From"), 2);
        assert_int_equal(mail_header_count(h, strlen(h), "To"), 0);
    }
    /* the envelope sender as Postfix's ${sender} and Return-Path give it */
    assert_int_equal(mail_addr_spec("bounce+x=y@example.net", a, sizeof(a)), XP_OK);
    assert_string_equal(a, "bounce+x=y@example.net");
    assert_int_equal(mail_addr_spec("<bounce@example.net>", a, sizeof(a)), XP_OK);
    assert_string_equal(a, "bounce@example.net");
    assert_int_not_equal(mail_addr_spec("<>", a, sizeof(a)), XP_OK);
    assert_int_not_equal(mail_addr_spec("MAILER-DAEMON", a, sizeof(a)), XP_OK);
}

/* The hint list add gives for a typed address: the UTS #46 mapping is
 * taken there (an upper-case U-label), never for a sender. */
static void test_addr_intl_typed(void **state)
{
    (void)state;
    char key[MAIL_MAX_ADDR + 1];
    const char *why;

    assert_int_not_equal(mail_addr_intl("bob@B\xc3\x9c" "CHER.example", key, sizeof(key), &why), XP_OK);
    assert_int_equal(mail_addr_intl_typed("bob@B\xc3\x9c" "CHER.example", key, sizeof(key), &why), XP_OK);
    assert_string_equal(key, "bob@xn--bcher-kva.example");
    assert_int_equal(mail_addr_intl_typed("bob@b\xc3\xbc" "cher.example", key, sizeof(key), &why), XP_OK);
    assert_string_equal(key, "bob@xn--bcher-kva.example");
    assert_int_not_equal(mail_addr_intl_typed("bob@b\xe2\x98\x83" "cher.example", key, sizeof(key), &why), XP_OK);
    /* C1 controls, overlong forms and surrogates, by jsonw's decoder */
    assert_int_not_equal(mail_addr_intl("a@b\xc2\x9f" "x.example", key, sizeof(key), &why), XP_OK);
    assert_int_not_equal(mail_addr_intl("a@b\xe0\x80\xaf" "x.example", key, sizeof(key), &why), XP_OK);
    assert_int_not_equal(mail_addr_intl("a@b\xf4\x90\x80\x80" "x.example", key, sizeof(key), &why), XP_OK);
    assert_int_equal(mail_addr_intl("\xc2\xa0@example.org", key, sizeof(key), &why), XP_OK); /* U+00A0 itself */
    assert_true(mail_addr_ascii("a@b"));
    assert_false(mail_addr_ascii("a@\xc3\xbc"));
}

/* RFC 5322 4.5's obsolete field syntax, white space between a field's
 * name and its colon ("Subject :"), which section 4 has readers take and
 * Postfix passes (it was refused, 65): read as the field it names (a
 * forged "List-Id :" still dropped, a "List-Id :" of this list still a
 * loop, a "Content-Type :" the S/MIME part's type, by the exploder and
 * the S/MIME reader alike), and never written: the copies carry
 * "Name:", which readers that do not take the obsolete form (Python's
 * email package ends the header block at such a line) read the same. A
 * name with white space inside is still no field. */
static void test_obs_field_names(void **state)
{
    (void)state;
    const char *m = "From : a@b.org\nSubject\t: hi\nList-Id \t: <forged.example>\nX-Long :\n folded\n"
                    "MIME-Version : 1.0\nContent-Type  : text/plain\n\nbody\n";
    const char *bad = "Bad Name : x\n\nx\n", *sp = "Subject \n : x\n\nx\n";
    size_t he, bs, len = 0;
    bool crlf;
    char *v, *out = NULL;
    env_mime_top top;

    assert_int_not_equal(mail_split(bad, strlen(bad), &he, &bs, &crlf), XP_OK);
    assert_int_not_equal(mail_split(sp, strlen(sp), &he, &bs, &crlf), XP_OK);
    assert_int_equal(mail_split(m, strlen(m), &he, &bs, &crlf), XP_OK);
    assert_string_equal(m + bs, "body\n");
    v = mail_header_get(m, he, "Subject");
    assert_non_null(v);
    assert_string_equal(v, "hi");
    free(v);
    v = mail_header_get(m, he, "From");
    assert_non_null(v);
    assert_string_equal(v, "a@b.org");
    free(v);
    assert_int_equal(mail_header_count(m, he, "List-Id"), 1);
    assert_true(mail_header_has_value(m, he, "X-Long"));
    assert_true(mail_been_there("X-BeenThere : eng@lists.example.org\n", 37, "eng@lists.example.org"));
    /* every List-Id field, "List-Id :" too: another list's put before ours */
    static const char ids[] = "List-Id: <other.example>\nList-Id : Eng <ENG.lists.example.org>\n";
    assert_true(mail_has_list_id(ids, sizeof(ids) - 1, "eng.lists.example.org"));
    assert_false(mail_has_list_id(ids, sizeof(ids) - 1, "ops.lists.example.org"));
    assert_int_equal(mail_list_headers(m, he, "eng@lists.example.org", false, &out, &len), XP_OK);
    assert_string_equal(out, "List-Id: <eng.lists.example.org>\n"
                             "List-Post: <mailto:eng@lists.example.org>\n"
                             "List-Unsubscribe: <mailto:eng-request@lists.example.org?subject=unsubscribe>\n"
                             "Precedence: list\n"
                             "X-BeenThere: eng@lists.example.org\n"
                             "From: a@b.org\nSubject: hi\nX-Long:\n folded\nMIME-Version: 1.0\n"
                             "Content-Type: text/plain\n");
    assert_int_equal(len, strlen(out));
    free(out);
    /* the S/MIME reader reads the same type */
    const char *smime = "From: a@b.org\nContent-Type : application/pkcs7-mime; name=smime.p7m\n"
                        "Content-Transfer-Encoding\t: base64\n\nAAAA\n";
    assert_int_equal(env_mime_read_top(smime, strlen(smime), &top), ENV_OK);
    assert_true(top.smime);
    assert_true(top.base64);
}

static void test_list_headers(void **state)
{
    (void)state;
    /* forged list headers and the original envelope's Return-Path are dropped */
    const char *h = "Return-Path: <a@b.org>\nFrom: a@b.org\nList-Id: <forged.example>\nList-Unsubscribe:\n"
                    " <mailto:x>\nPrecedence: bulk\nreturn-path:\n <other@b.org>\nSubject: s\n";
    char *out = NULL, id[64];
    size_t len = 0;
    assert_int_equal(mail_list_id("Eng@Lists.Example.org", id, sizeof(id)), XP_OK);
    assert_string_equal(id, "eng.lists.example.org");
    assert_int_equal(mail_list_headers(h, strlen(h), "eng@lists.example.org", false, &out, &len), XP_OK);
    assert_string_equal(out, "List-Id: <eng.lists.example.org>\n"
                             "List-Post: <mailto:eng@lists.example.org>\n"
                             "List-Unsubscribe: <mailto:eng-request@lists.example.org?subject=unsubscribe>\n"
                             "Precedence: list\n"
                             "X-BeenThere: eng@lists.example.org\n"
                             "From: a@b.org\nSubject: s\n");
    assert_int_equal(len, strlen(out));
    free(out);
    /* CRLF in, CRLF out; a block without its last newline gets one */
    assert_int_equal(mail_list_headers("To: x@y.org", 11, "l@d.org", true, &out, &len), XP_OK);
    assert_non_null(strstr(out, "X-BeenThere: l@d.org\r\nTo: x@y.org\r\n"));
    free(out);
    /* another list's X-BeenThere is kept (the loop trail), List-Id is not */
    h = "X-BeenThere: other@lists.example.org\nList-Id: <other.lists.example.org>\nSubject: s\n";
    assert_int_equal(mail_list_headers(h, strlen(h), "eng@lists.example.org", false, &out, &len), XP_OK);
    assert_non_null(strstr(out, "X-BeenThere: other@lists.example.org\n"));
    assert_null(strstr(out, "<other.lists.example.org>"));
    assert_true(mail_been_there(out, len, "eng@lists.example.org"));
    assert_true(mail_been_there(out, len, "OTHER@lists.example.org"));
    free(out);
}

static size_t unfold(const char *p, size_t n, char *un)
{
    size_t u = 0;
    for (size_t i = 0; i < n; i++) {
        if (i + 2 < n && p[i] == '\r' && p[i + 1] == '\n' && (p[i + 2] == ' ' || p[i + 2] == '\t')) {
            i++;
            continue;
        }
        un[u++] = p[i];
    }
    return u;
}

/* Header lines over RFC 5322's 998 octets are folded before white space
 * (a relay holding SMTP to 1000-octet lines refuses them with 500); each
 * piece at most 998, unfolding gives the field back; CRLF kept; a line
 * with nowhere to fold stays; short lines are untouched. */
static void test_list_headers_fold(void **state)
{
    char h[12288], *out = NULL, *p, *un, *hun;
    size_t len = 0, o = 0, u = 0;
    (void)state;

    o = (size_t)snprintf(h, sizeof(h), "Subject: s\r\nTo: ");
    for (int i = 0; i < 300; i++)
        o += (size_t)snprintf(h + o, sizeof(h) - o, "user%03d@example.net, ", i);
    o += (size_t)snprintf(h + o, sizeof(h) - o, "z@example.net\r\nX-Token:\r\n ");
    memset(h + o, 'a', 1500);
    o += 1500;
    o += (size_t)snprintf(h + o, sizeof(h) - o, "\r\n");
    assert_int_equal(mail_list_headers(h, o, "eng@lists.example.org", true, &out, &len), XP_OK);
    assert_int_equal(len, strlen(out));
    /* every line but X-Token's 1501-octet one within 998 octets, CRLF only */
    for (p = out; *p != '\0';) {
        char *e = strstr(p, "\r\n");
        assert_non_null(e);
        if (strncmp(p, " aaa", 4) != 0)
            assert_true(e - p <= 998);
        assert_null(memchr(p, '\n', (size_t)(e - p)));
        p = e + 2;
    }
    /* unfolded (CRLF before white space taken out), the fields as they came */
    p = strstr(out, "Subject: s\r\n");
    assert_non_null(p);
    un = malloc(strlen(p) + 1);
    hun = malloc(o + 1);
    u = unfold(p, strlen(p), un);
    assert_int_equal(u, unfold(h, o, hun));
    assert_memory_equal(un, hun, u);
    free(hun);
    free(un);
    free(out);
    /* a long run of white space is never folded into a line of white space alone */
    o = (size_t)snprintf(h, sizeof(h), "X-Sp: a");
    memset(h + o, ' ', 2500);
    o += 2500;
    o += (size_t)snprintf(h + o, sizeof(h) - o, "b\n");
    assert_int_equal(mail_list_headers(h, o, "eng@lists.example.org", false, &out, &len), XP_OK);
    for (p = out; *p != '\0';) {
        char *e = strchr(p, '\n');
        assert_non_null(e);
        assert_true(strspn(p, " \t") < (size_t)(e - p));
        p = e + 1;
    }
    /* and as its lines cannot all be brought within 998 octets, it goes
     * as it came, not folded in part for nothing */
    h[o] = '\0';
    assert_non_null(strstr(out, h));
    free(out);
    /* nor is a line's trailing white space (a To: a client ended with a
     * space or two, past the 998th octet): the fold goes before the last
     * address, and each line within 998 octets */
    for (size_t tail = 1; tail <= 40; tail += 39) {
        o = (size_t)snprintf(h, sizeof(h), "To: ");
        for (int i = 0; o < 998 - 13; i++)
            o += (size_t)snprintf(h + o, sizeof(h) - o, "u%d@example.net, ", i);
        memset(h + o, 'x', 998 - o); /* the last address ends at the 998th octet */
        o = 998;
        memset(h + o, tail == 1 ? ' ' : '\t', tail);
        o += tail;
        o += (size_t)snprintf(h + o, sizeof(h) - o, "\r\nSubject: s\r\n");
        assert_int_equal(mail_list_headers(h, o, "eng@lists.example.org", true, &out, &len), XP_OK);
        for (p = out; *p != '\0';) {
            char *e = strstr(p, "\r\n");
            assert_non_null(e);
            assert_true(e - p <= 998);
            assert_true(strspn(p, " \t") < (size_t)(e - p));
            p = e + 2;
        }
        p = strstr(out, "To: ");
        assert_non_null(p);
        un = malloc(strlen(p) + 1);
        u = unfold(p, strlen(p), un);
        assert_int_equal(u, o);
        assert_memory_equal(un, h, o);
        free(un);
        free(out);
    }
}

/* An empty Message-ID (white space, folded or not) has no value; every
 * field of the name goes with its folded lines, the others stay. */
static void test_header_value_remove(void **state)
{
    char h[] = "From: a@b.org\r\nMessage-Id: \r\n \t\r\nSubject: x\r\nMESSAGE-ID:\r\nX-Message-ID: <k@l>\r\n";
    size_t n;
    (void)state;

    assert_false(mail_header_has_value(h, strlen(h), "Message-ID"));
    assert_true(mail_header_has_value(h, strlen(h), "X-Message-ID"));
    assert_true(mail_header_has_value("Message-ID:\n <a@b>\n", 19, "Message-ID"));
    n = mail_header_remove(h, strlen(h), "Message-ID");
    assert_int_equal(n, strlen("From: a@b.org\r\nSubject: x\r\nX-Message-ID: <k@l>\r\n"));
    assert_memory_equal(h, "From: a@b.org\r\nSubject: x\r\nX-Message-ID: <k@l>\r\n", n);
}

static void test_been_there(void **state)
{
    (void)state;
    /* any occurrence counts, not only the first; folded values too */
    const char *h = "From: a@b.org\nX-BeenThere: x@lists.example.org\nX-BeenThere:\n eng@lists.example.org\n";
    assert_true(mail_been_there(h, strlen(h), "eng@lists.example.org"));
    assert_true(mail_been_there(h, strlen(h), "x@lists.example.org"));
    assert_false(mail_been_there(h, strlen(h), "eng2@lists.example.org"));
    assert_false(mail_been_there(h, strlen(h), "ng@lists.example.org"));
    h = "X-BeenThereNot: eng@lists.example.org\nSubject: eng@lists.example.org\n";
    assert_false(mail_been_there(h, strlen(h), "eng@lists.example.org"));
    assert_false(mail_been_there("", 0, "eng@lists.example.org"));
}

static void test_backoff(void **state)
{
    (void)state;
    xp_conf c;
    memset(&c, 0, sizeof(c));
    c.retry_min = 60;
    c.retry_max = 3600;
    assert_int_equal(xp_backoff(&c, 1), 60);
    assert_int_equal(xp_backoff(&c, 2), 120);
    assert_int_equal(xp_backoff(&c, 4), 480);
    assert_int_equal(xp_backoff(&c, 7), 3600);
    assert_int_equal(xp_backoff(&c, 1000000), 3600);
}

static char *tmpdir(void)
{
    char tmpl[] = "/tmp/test_exploder.XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return strdup(d);
}

static int count_files(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "test $(ls -A %s | wc -l) -eq 0", dir);
    return system(cmd) == 0 ? 0 : 1;
}

/* A list of mode `mode` at address, group eng, to hand to spool_list_create. */
static void list_init(xp_list *l, char *address, xp_mode mode)
{
    memset(l, 0, sizeof(*l));
    l->address = address;
    l->server = "https://gs.example:8443";
    l->group = "eng";
    l->mode = mode;
    l->require_encrypted = true;
}

/* An SMTPUTF8 poster (RFC 6531) is compared with the members, stored
 * US-ASCII with an IDN domain in its xn-- form, by the domain's A-label
 * form (IDNA 2008 with the UTS #46 mapping, as Postfix and libcurl look
 * it up) and the local part byte for byte beyond ASCII case. Confusables
 * never match: another U-label, another script's look-alike letter, a
 * fullwidth or Cyrillic letter in the local part, a fullwidth letter that
 * maps to another letter, ß (nontransitional: not "ss"). What IDNA 2008
 * refuses, and what is not well-formed UTF-8, names no one; nor does a
 * domain the UTS #46 mapping changes (upper-case or fullwidth letters, a
 * soft hyphen, NFD): the sender checks in front of the exploder (SPF,
 * DMARC) saw another domain than the member's. */
static void test_addr_intl_members(void **state)
{
    (void)state;
    static const struct {
        const char *addr;
        int want; /* 1: a member, 0: a valid address and no member, -1: refused */
    } cases[] = {
        {"alice@b\xc3\xbc" "cher.example", 1},                 /* the U-label of the stored A-label */
        {"Alice@B\xc3\xbc" "CHER.EXAMPLE", 1},                 /* ASCII case */
        {"alice@B\xc3\x9c" "CHER.EXAMPLE", -1},                /* U+00DC: only UTS #46 maps it to U+00FC */
        {"alice@bu\xcc\x88" "cher.example", -1},               /* u + combining diaeresis: not NFC */
        {"ALICE@XN--BCHER-KVA.EXAMPLE", 1},                    /* the A-label as written */
        {"alice@\xef\xbd\x82\xc3\xbc" "cher.example", -1},     /* fullwidth b: mapped to b, not written so */
        {"s@stra\xc2\xad" "sse.example", -1},                  /* soft hyphen, mapped to nothing: strasse */
        {"s@\xef\xbd\x93trasse.example", -1},                  /* fullwidth s: an ASCII domain once mapped */
        {"s@strasse\xe3\x80\x82" "example", -1},               /* ideographic full stop for '.' */
        {"alice@bucher.example", 0},                           /* another domain */
        {"alice@b\xc3\xbc" "chers.example", 0},                /* another U-label */
        {"alice@b\xc3\xbd" "cher.example", 0},                 /* y-acute for u-umlaut */
        {"alice@b\xc3\xbc\xd1\x81" "her.example", 0},          /* Cyrillic es for c: mixed scripts */
        {"alice@\xef\xbd\x82\xef\xbd\x95" "cher.example", -1}, /* fullwidth b and u: mapped, not written so */
        {"\xd0\xb0lice@b\xc3\xbc" "cher.example", 0},          /* Cyrillic a in the local part */
        {"\xef\xbd\x81lice@b\xc3\xbc" "cher.example", 0},      /* fullwidth a in the local part: never mapped */
        {"alic\xc3\xa9@b\xc3\xbc" "cher.example", 0},          /* a UTF-8 local part: an address, no member */
        {"s@stra\xc3\x9f" "e.example", 0},                     /* xn--strae-oqa, not strasse */
        {"alice@b\xc3\xbc\xe2\x80\x8d" "cher.example", -1},    /* ZWJ outside its context (CONTEXTJ) */
        {"alice@b\xe2\x98\x83" "cher.example", -1},            /* a snowman: disallowed */
        {"alice@-b\xc3\xbc" "cher.example", -1},               /* a leading hyphen */
        {"alice@b\xc3\xbc" "cher..example", -1},               /* an empty label */
        {"alice@b\xc3" "cher.example", -1},                    /* a cut UTF-8 sequence */
        {"alice@\xc0\xaf" "x.example", -1},                    /* an overlong form */
        {"alice@b\xc2\x85" "x.example", -1},                   /* a C1 control */
        {"alice@b\xed\xa0\x80" "x.example", -1},               /* a surrogate */
        {"al ice@b\xc3\xbc" "cher.example", -1},               /* a space */
        {"alice@b\xc3\xbc" "cher@example", -1},                /* two @ */
    };
    char *dir = tmpdir(), key[MAIL_MAX_ADDR + 1], a[MAIL_MAX_ADDR + 1], big[400];
    char *members[] = {"alice@xn--bcher-kva.example", "s@strasse.example"};
    spool *s = NULL;
    xp_list l, *got = NULL;
    size_t added = 0;
    const char *why;

    assert_int_equal(spool_open(dir, &s), XP_OK);
    list_init(&l, "eng@lists.example.org", XP_MODE_FORWARD);
    assert_int_equal(spool_list_create(s, &l), XP_OK);
    assert_int_equal(spool_list_get(s, "eng@lists.example.org", &got), XP_OK);
    assert_int_equal(spool_members_add(s, got->id, members, 2, &added), XP_OK);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        xp_err rc = mail_addr_intl(cases[i].addr, key, sizeof(key), &why);
        int got_v = rc != XP_OK ? -1 : spool_member_is(s, got->id, key) ? 1 : 0;
        if (got_v != cases[i].want)
            fail_msg("case %zu (%s): want %d, got %d (key %s, why %s)", i, cases[i].addr, cases[i].want, got_v, key,
                     why != NULL ? why : "-");
        if (rc != XP_OK) {
            assert_non_null(why);
            /* the header and envelope reader refuses it too, saying why */
            assert_int_not_equal(mail_addr_spec_why(cases[i].addr, a, sizeof(a), &why), XP_OK);
            assert_non_null(why);
        }
    }
    /* an address as the envelope or From gives it: kept as written */
    assert_int_equal(mail_addr_spec("J\xc3\xbcrgen <alice@b\xc3\xbc" "cher.example>", a, sizeof(a)), XP_OK);
    assert_string_equal(a, "alice@b\xc3\xbc" "cher.example");
    assert_true(mail_addr_local_ascii(a));
    assert_false(mail_addr_local_ascii("j\xc3\xbcrgen@example.org"));
    /* bounded: a UTF-8 local part over 64 octets, an address over 320 */
    memset(big, 0, sizeof(big));
    for (size_t i = 0; i < 33; i++)
        memcpy(big + 2 * i, "\xc3\xbc", 2);
    memcpy(big + 66, "@x.example", sizeof("@x.example"));
    assert_int_not_equal(mail_addr_intl(big, key, sizeof(key), &why), XP_OK);
    assert_non_null(strstr(why, "64"));
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    memcpy(big + 10, "@\xc3\xbc", 3);
    assert_int_not_equal(mail_addr_intl(big, key, sizeof(key), &why), XP_OK);
    /* an ASCII member under an older, looser rule still compares as written */
    assert_int_equal(mail_addr_intl("a_b@x_y.example", key, sizeof(key), &why), XP_OK);
    assert_string_equal(key, "a_b@x_y.example");
    xp_list_free(got);
    spool_close(s);
    snprintf(big, sizeof(big), "rm -rf %s", dir);
    assert_int_equal(system(big), 0);
    free(dir);
}

static void test_spool_flow(void **state)
{
    (void)state;
    char *dir = tmpdir(), msgdir[512];
    spool *s = NULL;
    xp_list l, *got = NULL;
    int64_t id = 0, n = 0, when = 0;
    xp_batch *b = NULL;
    xp_msg *m = NULL;
    xp_finished f;
    size_t added = 0;
    char *addrs[] = {"a@x.org", "b@x.org", "c@x.org"};

    assert_int_equal(spool_open(dir, &s), XP_OK);
    list_init(&l, "eng@lists.example.org", XP_MODE_FORWARD);
    assert_int_equal(spool_list_create(s, &l), XP_OK);
    assert_int_equal(spool_list_create(s, &l), XP_ERR_EXISTS);
    assert_int_equal(spool_list_get(s, "ENG@lists.example.org", &got), XP_OK);
    assert_int_equal(got->mode, XP_MODE_FORWARD);
    assert_true(got->require_encrypted);
    assert_int_equal(spool_members_add(s, got->id, addrs, 3, &added), XP_OK);
    assert_int_equal(added, 3);
    assert_int_equal(spool_member_add(s, got->id, "a@x.org"), XP_ERR_EXISTS);
    assert_true(spool_member_is(s, got->id, "B@x.org"));
    assert_int_equal(spool_member_remove(s, got->id, "nobody@x.org"), XP_ERR_NOTFOUND);

    assert_int_equal(spool_accept(s, got, "a@x.org", "<1@x>", "From: a\n\nx\n", 11, &id), XP_OK);
    assert_true(id > 0);
    /* not ready yet: nothing to send, one to prepare */
    assert_int_equal(spool_next_batch(s, INT64_MAX / 2, 10, &b), XP_ERR_NOTFOUND);
    assert_int_equal(spool_next_to_prepare(s, INT64_MAX / 2, &m), XP_OK);
    assert_int_equal(m->id, id);
    assert_int_equal(spool_mark_ready(s, m->id, m->file), XP_OK);
    xp_msg_free(m);

    /* batch of 2, first delivered, second deferred */
    assert_int_equal(spool_next_batch(s, INT64_MAX / 2, 2, &b), XP_OK);
    assert_int_equal(b->n, 2);
    xp_rcpt_outcome oc[2] = {XP_RCPT_DELIVERED, XP_RCPT_DEFERRED};
    int64_t next[2] = {0, 5000000000LL};
    assert_int_equal(spool_batch_done(s, b, oc, next, NULL), XP_OK);
    xp_batch_free(b);
    /* the third, then nothing due before 5e9 */
    assert_int_equal(spool_next_batch(s, 4000000000LL, 10, &b), XP_OK);
    assert_int_equal(b->n, 1);
    assert_string_equal(b->rcpts[0], "c@x.org");
    xp_rcpt_outcome oc1[1] = {XP_RCPT_FAILED};
    char *why[1] = {"RCPT 550"};
    assert_int_equal(spool_batch_done(s, b, oc1, next, why), XP_OK);
    xp_batch_free(b);
    assert_int_equal(spool_next_batch(s, 4000000000LL, 10, &b), XP_ERR_NOTFOUND);
    assert_int_equal(spool_next_due(s, &when), XP_OK);
    assert_int_equal(when, 5000000000LL);
    assert_int_equal(spool_next_finished(s, &f), XP_ERR_NOTFOUND);

    /* expiry gives up on the deferred one; the message is then finished */
    assert_int_equal(spool_expire(s, INT64_MAX / 2, &n), XP_OK);
    assert_int_equal(n, 1);
    assert_int_equal(spool_next_finished(s, &f), XP_OK);
    assert_int_equal(f.delivered, 1);
    assert_int_equal(f.failed, 2);
    assert_int_equal(spool_finish(s, f.msg, "a@x.org", "bounce\n", 7), XP_OK);
    xp_finished_clear(&f);
    /* the bounce is queued, ready, to the sender */
    assert_int_equal(spool_next_batch(s, INT64_MAX / 2, 10, &b), XP_OK);
    assert_int_equal(b->msg->kind, XP_KIND_BOUNCE);
    assert_string_equal(b->rcpts[0], "a@x.org");
    xp_rcpt_outcome oc2[1] = {XP_RCPT_DELIVERED};
    assert_int_equal(spool_batch_done(s, b, oc2, next, NULL), XP_OK);
    xp_batch_free(b);
    assert_int_equal(spool_next_finished(s, &f), XP_OK);
    assert_int_equal(spool_finish(s, f.msg, NULL, NULL, 0), XP_OK);
    xp_finished_clear(&f);
    assert_int_equal(spool_pending_count(s, &n), XP_OK);
    assert_int_equal(n, 0);
    snprintf(msgdir, sizeof(msgdir), "%s/msg", dir);
    assert_int_equal(count_files(msgdir), 0); /* every file removed with its rows */

    xp_list_free(got);
    spool_close(s);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    free(dir);
}

static void test_spool_sweep(void **state)
{
    (void)state;
    char *dir = tmpdir(), path[600], cmd[600];
    spool *s = NULL;
    assert_int_equal(spool_open(dir, &s), XP_OK);
    /* an orphan from a crash between file write and commit */
    snprintf(path, sizeof(path), "%s/msg/orphan.in", dir);
    assert_int_equal(util_write_file_atomic(path, "x", 1, 0600), UTIL_OK);
    assert_int_equal(spool_sweep(s, (int64_t)time(NULL), 3600), XP_OK);
    assert_int_equal(access(path, F_OK), 0); /* too young: could be a deliver in progress */
    assert_int_equal(spool_sweep(s, (int64_t)time(NULL) + 7200, 3600), XP_OK);
    assert_int_not_equal(access(path, F_OK), 0);
    spool_close(s);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    free(dir);
}

static void test_conf(void **state)
{
    (void)state;
    char *dir = tmpdir(), path[600], cmd[600];
    xp_conf *c = NULL;
    int line = 0;
    snprintf(path, sizeof(path), "%s/x.conf", dir);
    const char *good = "[spool]\npath = /var/spool/x\n[delivery]\nrelay = smtp://127.0.0.1:25\nbatch_size = 7\n"
                       "starttls = required\nmax_age = 60\ngroup_info_ttl = 0\n[log]\nfile = /var/log/x.log\n";
    assert_int_equal(util_write_file_atomic(path, good, strlen(good), 0600), UTIL_OK);
    assert_int_equal(xp_conf_load(path, &c, &line), XP_OK);
    assert_string_equal(c->spool_path, "/var/spool/x");
    assert_int_equal(c->batch_size, 7);
    assert_int_equal(c->starttls, XP_STARTTLS_REQUIRED);
    assert_int_equal(c->max_age, 60);
    assert_int_equal(c->retry_min, 60);
    assert_int_equal(c->group_info_ttl, 0);
    assert_string_equal(c->log_file, "/var/log/x.log");
    xp_conf_free(c);
    const char *bad = "[spool]\npath = /x\n[delivery]\nbatch_sise = 7\n";
    assert_int_equal(util_write_file_atomic(path, bad, strlen(bad), 0600), UTIL_OK);
    assert_int_equal(xp_conf_load(path, &c, &line), XP_ERR_CONFIG);
    assert_int_equal(line, 4);
    const char *badrelay = "[delivery]\nrelay = http://x\n";
    assert_int_equal(util_write_file_atomic(path, badrelay, strlen(badrelay), 0600), UTIL_OK);
    assert_int_equal(xp_conf_load(path, &c, &line), XP_ERR_CONFIG);
    /* A line longer than inih's buffer is refused by its own number, not
     * cut short into a shorter spool path (common/inifile.h). */
    char longconf[400];
    snprintf(longconf, sizeof(longconf), "[spool]\npath = /var/spool/%0220d\n[delivery]\nbatch_size = 7\n", 0);
    assert_int_equal(util_write_file_atomic(path, longconf, strlen(longconf), 0600), UTIL_OK);
    c = NULL;
    assert_int_equal(xp_conf_load(path, &c, &line), XP_ERR_CONFIG);
    assert_null(c);
    assert_int_equal(line, 2);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    free(dir);
}

static void rm_rf(char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    free(dir);
}

/* Member-certs, one copy per member: each pending recipient gets its own
 * RecipientInfo (addresses matched case-insensitively), one without a
 * certificate at the group server fails with XP_NO_CERT_REASON, and the
 * finished message counts it for the bounce. */
static void test_member_copies(void **state)
{
    (void)state;
    char *dir = tmpdir();
    spool *s = NULL;
    xp_list l, *got = NULL;
    int64_t id = 0, without = -1;
    xp_batch *b = NULL;
    xp_msg *m = NULL;
    xp_finished f;
    size_t added = 0;
    char *addrs[] = {"a@x.org", "b@x.org", "c@x.org"};
    char *member[] = {"B@X.ORG", "a@x.org", "z@x.org"}; /* z: not on the list */
    unsigned char ra[] = {1, 2, 3}, rb[] = {4, 5}, rz[] = {9};
    unsigned char *ri[] = {rb, ra, rz};
    size_t ri_len[] = {sizeof(rb), sizeof(ra), sizeof(rz)};

    assert_int_equal(spool_open(dir, &s), XP_OK);
    list_init(&l, "mc@lists.example.org", XP_MODE_MEMBER_CERTS);
    assert_int_equal(spool_list_create(s, &l), XP_OK);
    assert_int_equal(spool_list_get(s, l.address, &got), XP_OK);
    assert_int_equal(got->group_info_at, 0);
    assert_null(got->kt_algs);
    assert_int_equal(spool_members_add(s, got->id, addrs, 3, &added), XP_OK);
    assert_int_equal(spool_accept(s, got, "a@x.org", "<1@x>", "From: a\n\nx\n", 11, &id), XP_OK);
    assert_int_equal(spool_next_to_prepare(s, INT64_MAX / 2, &m), XP_OK);
    assert_int_equal(spool_mark_ready_members(s, m->id, m->file, member, ri, ri_len, 3, &without), XP_OK);
    assert_int_equal(without, 1);
    xp_msg_free(m);
    assert_int_equal(spool_next_batch(s, INT64_MAX / 2, 10, &b), XP_OK);
    assert_int_equal(b->n, 2); /* c@x.org failed already: no certificate */
    assert_string_equal(b->rcpts[0], "a@x.org");
    assert_int_equal(b->ri_len[0], sizeof(ra));
    assert_memory_equal(b->ri[0], ra, sizeof(ra));
    assert_string_equal(b->rcpts[1], "b@x.org");
    assert_int_equal(b->ri_len[1], sizeof(rb));
    assert_memory_equal(b->ri[1], rb, sizeof(rb));
    xp_rcpt_outcome oc[2] = {XP_RCPT_DELIVERED, XP_RCPT_DELIVERED};
    int64_t next[2] = {0, 0};
    assert_int_equal(spool_batch_done(s, b, oc, next, NULL), XP_OK);
    xp_batch_free(b);
    assert_int_equal(spool_next_finished(s, &f), XP_OK);
    assert_int_equal(f.delivered, 2);
    assert_int_equal(f.failed, 1);
    assert_int_equal(f.no_cert, 1);
    assert_null(f.reason);
    assert_int_equal(spool_finish(s, f.msg, NULL, NULL, 0), XP_OK);
    xp_finished_clear(&f);

    /* a message refused as a whole keeps its plain reason for the bounce */
    assert_int_equal(spool_accept(s, got, "a@x.org", "<2@x>", "From: a\n\nx\n", 11, &id), XP_OK);
    assert_int_equal(spool_fail_pending(s, id, "group server: HTTP 400 ...", "the group server refused it"), XP_OK);
    assert_int_equal(spool_next_finished(s, &f), XP_OK);
    assert_int_equal(f.failed, 3);
    assert_int_equal(f.no_cert, 0);
    assert_string_equal(f.reason, "the group server refused it");
    assert_int_equal(spool_finish(s, f.msg, NULL, NULL, 0), XP_OK);
    xp_finished_clear(&f);

    /* the discovery answer cached on the list */
    assert_int_equal(spool_list_set_group_info(s, got->id, "RSA-OAEP", "tls,group-secret", 1234), XP_OK);
    assert_int_equal(spool_list_set_group_info(s, 999, NULL, NULL, 1), XP_ERR_NOTFOUND);
    xp_list_free(got);
    assert_int_equal(spool_list_get(s, l.address, &got), XP_OK);
    assert_string_equal(got->kt_algs, "RSA-OAEP");
    assert_string_equal(got->group_methods, "tls,group-secret");
    assert_int_equal(got->group_info_at, 1234);
    /* a server that cannot be reached is noted and not asked again at once;
     * what was cached stays */
    {
        xp_conf c;
        char why[256];
        memset(&c, 0, sizeof(c));
        c.group_info_ttl = 300;
        c.tls_timeout = 2;
        free(got->server); /* nothing listens there: refused at once */
        assert_non_null(got->server = strdup("https://127.0.0.1:1"));
        assert_int_equal(xp_group_info_refresh(&c, s, got, false, why, sizeof(why)), XP_ERR_TEMP);
        assert_non_null(strstr(why, "group server discovery: "));
        assert_true(got->group_info_tried > 0);
        assert_int_equal(xp_group_info_refresh(&c, s, got, false, why, sizeof(why)), XP_ERR_TEMP);
        assert_non_null(strstr(why, "failed"));
        xp_list_free(got);
        assert_int_equal(spool_list_get(s, l.address, &got), XP_OK);
        assert_true(got->group_info_tried > 0);
        assert_string_equal(got->kt_algs, "RSA-OAEP");
        assert_int_equal(xp_group_accepts(got, "RSA-PKCS1-v1_5", why, sizeof(why)), XP_ERR_REFUSED);
    }
    xp_list_free(got);
    spool_close(s);
    rm_rf(dir);
}

/* What deliver refuses from the cached discovery answer, in plain words. */
static void test_group_accepts(void **state)
{
    (void)state;
    xp_list l;
    char why[300];

    memset(&l, 0, sizeof(l));
    l.mode = XP_MODE_MEMBER_CERTS;
    /* nothing cached (or an older server): accepted, the runner finds out */
    assert_int_equal(xp_group_accepts(&l, "RSA-PKCS1-v1_5", why, sizeof(why)), XP_OK);
    l.kt_algs = "RSA-OAEP";
    l.group_methods = "tls,recipient-key";
    assert_int_equal(xp_group_accepts(&l, "RSA-OAEP", why, sizeof(why)), XP_OK);
    assert_int_equal(xp_group_accepts(&l, "RSA-PKCS1-v1_5", why, sizeof(why)), XP_ERR_REFUSED);
    assert_non_null(strstr(why, "PKCS#1 v1.5 key transport is not allowed for this group"));
    assert_int_equal(xp_group_accepts(&l, "RSA-OAEP-256", why, sizeof(why)), XP_ERR_REFUSED);
    assert_non_null(strstr(why, "RSA-OAEP-256 is not accepted"));
    assert_int_equal(xp_group_accepts(&l, "ECDH", why, sizeof(why)), XP_ERR_REFUSED);
    l.mode = XP_MODE_GROUP_SECRET;
    assert_int_equal(xp_group_accepts(&l, "RSA-OAEP", why, sizeof(why)), XP_ERR_REFUSED);
    assert_non_null(strstr(why, "group secret key"));
    l.group_methods = "tls,group-secret";
    assert_int_equal(xp_group_accepts(&l, "RSA-OAEP", why, sizeof(why)), XP_OK);
    l.mode = XP_MODE_FORWARD;
    l.kt_algs = "RSA-OAEP,RSA-PKCS1-v1_5,ECDH";
    assert_int_equal(xp_group_accepts(&l, "RSA-PKCS1-v1_5", why, sizeof(why)), XP_OK);
    assert_int_equal(xp_group_accepts(&l, "ECDH", why, sizeof(why)), XP_OK);
    assert_int_equal(xp_group_accepts(&l, NULL, why, sizeof(why)), XP_OK);
}

/* Forward mode re-lines an S/MIME body of base64 whose line is over 998
 * octets, and refuses any other body with such a line: it must read the
 * Content-Transfer-Encoding as the S/MIME reader (envelope) does, which
 * takes "base64" alone or before ';' or white space (an RFC 2045
 * comment), in any case, folded or not. Each value both ways: the
 * exploder takes it (deliver's check passes) exactly when the reader
 * does (anything but ENV_ERR_ENCODING). A comment glued to the word, or
 * before it, is taken by neither (stricter than RFC 2045, the same). */
static void test_cte_agrees_with_reader(void **state)
{
    static const struct {
        const char *field; /* after "Content-Transfer-Encoding:" */
        bool base64;
    } cases[] = {
        {" base64", true},
        {" BASE64", true},
        {" Base64", true},
        {"base64", true},
        {" base64   ", true},
        {" base64 (no line breaks)", true},
        {" BASE64 (no line breaks)", true},
        {" base64\t(comment)", true},
        {" base64;", true},
        {" base64 ;x", true},
        {" base64 (nested (comment))", true},
        {" base64 (unterminated", true},
        {" base64 (a quoted \\) pair)", true},
        {" base64 \"quoted\"", true},
        {"\n base64", true},
        {"\n\tbase64\n (folded comment)", true},
        {" base64\n (folded comment)", true},
        {" base64(comment)", false},
        {" (comment) base64", false},
        {" \"base64\"", false},
        {" base64x", false},
        {" base6", false},
        {" base-64", false},
        {" binary", false},
        {" 7bit", false},
        {" quoted-printable", false},
        {"", false},
    };
    unsigned char raw[1200];
    char b64[1700], mail[2048];
    xp_conf c;
    xp_list l;
    (void)state;

    memset(&c, 0, sizeof(c));
    c.max_message_size = 1 << 20;
    list_init(&l, "eng@lists.example.org", XP_MODE_FORWARD);
    l.require_encrypted = false; /* no group certificate: deliver's check ends at the long line */
    for (size_t i = 0; i < sizeof(raw); i++)
        raw[i] = (unsigned char)(i * 31 + 7);
    assert_int_equal(EVP_EncodeBlock((unsigned char *)b64, raw, (int)sizeof(raw)), 1600); /* one line */
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *why = NULL;
        env_message *msg = NULL;
        int n = snprintf(mail, sizeof(mail),
                         "From: alice@example.org\nSubject: cte\nMIME-Version: 1.0\n"
                         "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\n"
                         "Content-Transfer-Encoding:%s\n\n%s\n",
                         cases[i].field, b64);
        assert_true(n > 0 && (size_t)n < sizeof(mail));
        xp_err xe = xp_check_message(&c, &l, mail, (size_t)n, NULL, &why, NULL, false);
        BIO *b = BIO_new_mem_buf(mail, n);
        env_err ee = env_message_read(b, ENV_FORMAT_SMIME, 0, &msg);
        BIO_free(b);
        env_message_free(msg);
        if ((xe == XP_OK) != cases[i].base64 || (ee != ENV_ERR_ENCODING) != cases[i].base64)
            fprintf(stderr, "\"Content-Transfer-Encoding:%s\": exploder %s (%s), reader %s, want %s\n",
                    cases[i].field, xe == XP_OK ? "takes it" : "refuses", why != NULL ? why : "-",
                    env_strerror(ee), cases[i].base64 ? "base64" : "not base64");
        assert_int_equal(xe == XP_OK, cases[i].base64);
        assert_int_equal(ee != ENV_ERR_ENCODING, cases[i].base64);
        if (!cases[i].base64)
            assert_non_null(strstr(why, "longer than 998 octets"));
    }
}

/* A self-signed certificate (PEM, caller frees) with subject emailAddress
 * subj_email (or none) and subjectAltName san (an openssl.cnf value, or
 * none). */
static char *cert_with_names(const char *subj_email, const char *san)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *nm = X509_get_subject_name(x);
    BIO *b = BIO_new(BIO_s_mem());
    char *p = NULL, *pem;
    long n;

    assert_non_null(k);
    assert_non_null(x);
    assert_int_equal(X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)"group", -1, -1, 0), 1);
    if (subj_email != NULL)
        assert_int_equal(X509_NAME_add_entry_by_NID(nm, NID_pkcs9_emailAddress, MBSTRING_ASC,
                                                    (const unsigned char *)subj_email, -1, -1, 0),
                         1);
    assert_int_equal(X509_set_issuer_name(x, nm), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), 0));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 3600));
    assert_int_equal(X509_set_pubkey(x, k), 1);
    if (san != NULL) {
        X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san);
        assert_non_null(e);
        assert_int_equal(X509_add_ext(x, e, -1), 1);
        X509_EXTENSION_free(e);
    }
    assert_true(X509_sign(x, k, EVP_sha256()) > 0);
    assert_int_equal(PEM_write_bio_X509(b, x), 1);
    n = BIO_get_mem_data(b, &p);
    pem = strndup(p, (size_t)n);
    BIO_free(b);
    X509_free(x);
    EVP_PKEY_free(k);
    return pem;
}

/* list create's warning: does the group certificate name the list's
 * address, as stock clients (gpgsm -r, Thunderbird) look it up? Any of
 * several rfc822Names, or the subject's emailAddress, in any ASCII case,
 * an IDN in its xn-- form as the list takes it; never a near miss (a
 * longer local part or domain). The names listed are whole, never cut
 * inside one. */
static void test_cert_names_address(void **state)
{
    static const struct {
        const char *subj, *san, *list, *names;
        bool named;
    } cases[] = {
        {NULL, "email:eng@example.org, email:ENG@Lists.Example.ORG", "eng@lists.example.org",
         "eng@example.org, ENG@Lists.Example.ORG", true},
        {"eng@lists.example.org", NULL, "Eng@Lists.example.org", "eng@lists.example.org", true},
        {"owner@example.org", "email:eng@lists.example.org", "eng@lists.example.org", NULL, true},
        {NULL, "email:eng@xn--bcher-kva.example", "ENG@XN--BCHER-KVA.EXAMPLE", "eng@xn--bcher-kva.example", true},
        {NULL, "email:eng@lists.example.org.evil", "eng@lists.example.org", "eng@lists.example.org.evil", false},
        {NULL, "email:xeng@lists.example.org", "eng@lists.example.org", "xeng@lists.example.org", false},
        {NULL, "email:eng@example.org", "eng@lists.example.org", "eng@example.org", false},
        {NULL, "DNS:lists.example.org", "eng@lists.example.org", "", false},
        {NULL, NULL, "eng@lists.example.org", "", false},
    };
    char names[256];
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *pem = cert_with_names(cases[i].subj, cases[i].san);
        bool named = xp_cert_names_address(pem, cases[i].list, names, sizeof(names));
        if (named != cases[i].named || (cases[i].names != NULL && strcmp(names, cases[i].names) != 0))
            fprintf(stderr, "case %zu: named %d, names \"%s\"\n", i, named, names);
        assert_int_equal(named, cases[i].named);
        if (cases[i].names != NULL)
            assert_string_equal(names, cases[i].names);
        free(pem);
    }
    { /* cut at a name, never inside one */
        char *pem = cert_with_names(NULL, "email:first@example.org, email:second-is-longer@example.org");
        char small[30];
        assert_false(xp_cert_names_address(pem, "eng@lists.example.org", small, sizeof(small)));
        assert_string_equal(small, "first@example.org");
        assert_false(xp_cert_names_address("not a certificate", "eng@lists.example.org", small, sizeof(small)));
        assert_string_equal(small, "");
        free(pem);
    }
}

/* A version-1 spool (before issue 14) with a queued message gets the new
 * columns; its queue keeps working. */
/* Two delivers that each add a group certificate to a list (after a
 * rotation) must not overwrite each other: the store is a compare and
 * swap, and one made on stale certificates fails (XP_ERR_EXISTS), leaving
 * the other's. The time of the fetch is kept with it. */
static void test_group_cert_swap(void **state)
{
    (void)state;
    char *dir = tmpdir();
    spool *s = NULL;
    xp_list l, *got = NULL;

    assert_int_equal(spool_open(dir, &s), XP_OK);
    list_init(&l, "eng@lists.example.org", XP_MODE_FORWARD);
    l.group_cert = "V1";
    assert_int_equal(spool_list_create(s, &l), XP_OK);
    assert_int_equal(spool_list_get(s, l.address, &got), XP_OK);
    assert_int_equal(got->group_cert_at, 0);
    /* both read V1; the first adds V2, the second (V3) finds V1 gone */
    assert_int_equal(spool_list_set_group_cert(s, got->id, "V1", "V1V2", 100), XP_OK);
    assert_int_equal(spool_list_set_group_cert(s, got->id, "V1", "V1V3", 101), XP_ERR_EXISTS);
    assert_int_equal(spool_list_set_group_cert(s, got->id, NULL, "V3", 101), XP_ERR_EXISTS);
    assert_int_equal(spool_list_set_group_cert(s, got->id, "V1V2", "V1V2V3", 102), XP_OK);
    int64_t id = got->id;
    xp_list_free(got);
    assert_int_equal(spool_list_get_by_id(s, id, &got), XP_OK);
    assert_string_equal(got->group_cert, "V1V2V3");
    assert_int_equal(got->group_cert_at, 102);
    assert_int_equal(spool_list_group_cert_checked(s, id, 200), XP_OK);
    xp_list_free(got);
    assert_int_equal(spool_list_get_by_id(s, id, &got), XP_OK);
    assert_int_equal(got->group_cert_at, 200);
    xp_list_free(got);
    spool_close(s);
    rm_rf(dir);
}

static void test_spool_migrate_v1(void **state)
{
    (void)state;
    char *dir = tmpdir(), path[600];
    sqlite3 *db = NULL;
    spool *s = NULL;
    xp_list *got = NULL;
    xp_batch *b = NULL;
    static const char v1[] =
        "CREATE TABLE lists(id INTEGER PRIMARY KEY, address TEXT NOT NULL UNIQUE COLLATE NOCASE,"
        " server TEXT NOT NULL, grp TEXT NOT NULL,"
        " mode TEXT NOT NULL CHECK(mode IN ('forward','group-secret','member-certs')),"
        " cert TEXT, key TEXT, cacert TEXT, group_cert TEXT, require_encrypted INTEGER NOT NULL DEFAULT 1,"
        " members_only INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL);"
        "CREATE TABLE members(list_id INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,"
        " address TEXT NOT NULL COLLATE NOCASE, added INTEGER NOT NULL, PRIMARY KEY(list_id, address));"
        "CREATE TABLE messages(id INTEGER PRIMARY KEY, list_id INTEGER REFERENCES lists(id),"
        " kind INTEGER NOT NULL, sender TEXT NOT NULL, message_id TEXT NOT NULL DEFAULT '', file TEXT NOT NULL,"
        " out_file TEXT, state INTEGER NOT NULL, received INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
        " next_attempt INTEGER NOT NULL, last_error TEXT);"
        "CREATE TABLE recipients(id INTEGER PRIMARY KEY,"
        " message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE, address TEXT NOT NULL,"
        " state INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, next_attempt INTEGER NOT NULL,"
        " last_error TEXT);"
        "INSERT INTO lists VALUES(1,'old@lists.example.org','https://gs','eng','forward',NULL,NULL,NULL,NULL,1,0,1);"
        "INSERT INTO messages VALUES(1,1,0,'a@x.org','','f.in','f.in',1,1,0,1,NULL);"
        "INSERT INTO recipients VALUES(1,1,'a@x.org',0,0,1,NULL);"
        "PRAGMA user_version=1;";

    snprintf(path, sizeof(path), "%s/exploder.db", dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, v1, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(spool_open(dir, &s), XP_OK);
    assert_int_equal(spool_list_get(s, "old@lists.example.org", &got), XP_OK);
    assert_int_equal(got->group_info_at, 0);
    assert_int_equal(spool_next_batch(s, INT64_MAX / 2, 10, &b), XP_OK);
    assert_int_equal(b->n, 1);
    assert_null(b->ri[0]);
    xp_batch_free(b);
    xp_list_free(got);
    spool_close(s);
    /* opening again: nothing left to migrate */
    assert_int_equal(spool_open(dir, &s), XP_OK);
    spool_close(s);
    /* a newer schema (an older exploder after a downgrade): refused as
     * such, left as it was */
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version=99", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(spool_open(dir, &s), XP_ERR_SCHEMA);
    assert_null(s);
    assert_non_null(strstr(xp_strerror(XP_ERR_SCHEMA), "newer exploder"));
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "SELECT 1 FROM lists", NULL, NULL, NULL), SQLITE_OK);
    {
        sqlite3_stmt *q = NULL;
        assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &q, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(q), SQLITE_ROW);
        assert_int_equal(sqlite3_column_int(q, 0), 99);
        sqlite3_finalize(q);
    }
    sqlite3_close(db);
    rm_rf(dir);
}

/* A member-certs list's rewrap answer may be as big as its member count
 * needs (test_restclient: 10,000 members' answer fits), other modes keep
 * the client's default. */
static void test_rest_answer_cap(void **state)
{
    xp_conf c;
    xp_list l;
    gs_rest_opts o;
    (void)state;
    memset(&c, 0, sizeof(c));
    memset(&l, 0, sizeof(l));
    l.server = "https://127.0.0.1:1";
    l.mode = XP_MODE_MEMBER_CERTS;
    l.n_members = 10000;
    xp_rest_opts(&c, &l, &o);
    assert_int_equal(o.max_response, gs_rest_members_answer_cap(10000));
    assert_true(o.max_response > (size_t)10 << 20);
    l.mode = XP_MODE_GROUP_SECRET;
    xp_rest_opts(&c, &l, &o);
    assert_int_equal(o.max_response, 0); /* the 4 MiB default */
    l.mode = XP_MODE_MEMBER_CERTS;
    l.n_members = 0;
    xp_rest_opts(&c, &l, &o);
    assert_int_equal(o.max_response, 0);
}

/* Copies the whole of what p (n octets) holds into a new file under dir. */
static void write_file(const char *path, const char *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* The plaintext of mail as the S/MIME reader takes it (NULL: unreadable),
 * decrypted with pkey; *len its length. */
static char *reader_plaintext(const char *mail, size_t n, X509 *cert, EVP_PKEY *pkey, size_t *len)
{
    BIO *in = BIO_new_mem_buf(mail, (int)n), *out = BIO_new(BIO_s_mem());
    env_message *msg = NULL;
    char *p = NULL, *copy = NULL;
    long got;

    assert_non_null(in);
    assert_non_null(out);
    if (env_message_read(in, ENV_FORMAT_SMIME, 0, &msg) == ENV_OK &&
        env_message_decrypt_with_pkey(msg, cert, pkey, out) == ENV_OK) {
        got = BIO_get_mem_data(out, &p);
        copy = malloc((size_t)got + 1);
        assert_non_null(copy);
        memcpy(copy, p, (size_t)got);
        *len = (size_t)got;
    }
    env_message_free(msg);
    BIO_free(in);
    BIO_free(out);
    return copy;
}

/* A self-signed certificate "CN=group" for k, as the group certificate
 * the tests encrypt to, and its PEM in *pem (malloc'd) unless pem is
 * NULL. */
static X509 *group_cert(EVP_PKEY *k, char **pem)
{
    X509 *x = X509_new();
    BIO *mb = pem != NULL ? BIO_new(BIO_s_mem()) : NULL;
    char *p;
    long pemlen;

    assert_non_null(x);
    assert_int_equal(X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                                (const unsigned char *)"group", -1, -1, 0),
                     1);
    assert_int_equal(X509_set_issuer_name(x, X509_get_subject_name(x)), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), 1), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), 0));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 3600));
    assert_int_equal(X509_set_pubkey(x, k), 1);
    assert_true(X509_sign(x, k, EVP_sha256()) > 0);
    if (pem == NULL)
        return x;
    assert_non_null(mb);
    assert_int_equal(PEM_write_bio_X509(mb, x), 1);
    pemlen = BIO_get_mem_data(mb, &p);
    *pem = strndup(p, (size_t)pemlen);
    assert_non_null(*pem);
    BIO_free(mb);
    return x;
}

/* DER as one line of base64 (no breaks), the caller's to free. */
static char *der_b64(const unsigned char *der, int derlen)
{
    char *b64 = malloc((size_t)derlen / 3 * 4 + 8);

    assert_non_null(b64);
    EVP_EncodeBlock((unsigned char *)b64, der, derlen);
    return b64;
}

/* TEXT encrypted to CERT alone (CMS, AES-128-CBC, binary) as one line of
 * base64, the caller's to free: what a sender's S/MIME body holds. */
static char *encrypted_b64(X509 *cert, const char *text)
{
    STACK_OF(X509) *to = sk_X509_new_null();
    BIO *pb = BIO_new_mem_buf(text, -1);
    CMS_ContentInfo *cms;
    unsigned char *der = NULL;
    int derlen;
    char *b64;

    assert_non_null(to);
    assert_non_null(pb);
    assert_true(sk_X509_push(to, cert) > 0);
    cms = CMS_encrypt(to, pb, EVP_aes_128_cbc(), CMS_BINARY);
    assert_non_null(cms);
    derlen = i2d_CMS_ContentInfo(cms, &der);
    assert_true(derlen > 0);
    b64 = der_b64(der, derlen);
    OPENSSL_free(der);
    CMS_ContentInfo_free(cms);
    BIO_free(pb);
    sk_X509_free(to);
    return b64;
}

/* A forward list's post in base64 without line breaks with text after
 * the base64 that the S/MIME reader stops at (a signature's "-- ", as a
 * script appending one writes it): the reader takes the same CMS, so
 * deliver takes it too (it said "a line longer than 998 octets ... send it
 * in base64"), and the copy has the base64 in lines of 76, that text as it
 * came, and reads as the post. Text the reader stops at with a line over
 * 998 octets in it is still refused for that; a footer inside the base64
 * that the reader cannot take is refused in the reader's words. */
static void test_forward_base64_then_signature(void **state)
{
    static const struct {
        const char *tail; /* after the base64's line; '\n' is the mail's line end */
        bool takes, reads;
        const char *why; /* in deliver's refusal */
    } cases[] = {
        {"", true, true, NULL},
        {"-- \nJohn\n", true, true, NULL},
        {"\n-- \nJohn Doe, ACME Inc.\n", true, true, NULL},
        {"--\n", true, true, NULL},
        {" \n\t\n-- \nx\n", true, true, NULL},
        {"-- \n", true, true, NULL},
        {"-- \nL", false, true, "longer than 998 octets"}, /* L: a line of 1500 octets */
        /* a footer inside the base64: the reader's words (as groupmail's), not "send it in base64" */
        {"\nThis email was scanned.\n", false, false, "holds text that is not base64"},
        {"\n______________\nList footer\n", false, false, "holds text that is not base64"},
    };
    EVP_PKEY *k = EVP_RSA_gen(2048); /* what env_message_decrypt_with_pkey decrypts */
    X509 *x;
    STACK_OF(X509) *to = sk_X509_new_null();
    unsigned char plain[1100], *der = NULL;
    char *b64, *dir = tmpdir(), path[600], outpath[600];
    BIO *pb;
    CMS_ContentInfo *cms;
    int derlen;
    xp_conf c;
    xp_list l;
    (void)state;

    assert_non_null(k);
    assert_non_null(to);
    x = group_cert(k, NULL);
    assert_true(sk_X509_push(to, x) > 0);
    for (size_t i = 0; i < sizeof(plain); i++)
        plain[i] = (unsigned char)('a' + i % 26);
    pb = BIO_new_mem_buf(plain, (int)sizeof(plain));
    assert_non_null(pb);
    cms = CMS_encrypt(to, pb, EVP_aes_128_cbc(), CMS_BINARY);
    assert_non_null(cms);
    derlen = i2d_CMS_ContentInfo(cms, &der);
    assert_true(derlen > 800); /* its base64 in one line is over 998 octets */
    b64 = der_b64(der, derlen);

    memset(&c, 0, sizeof(c));
    c.max_message_size = 1 << 20;
    list_init(&l, "eng@lists.example.org", XP_MODE_FORWARD);
    l.require_encrypted = false; /* no group certificate: deliver's check ends at the long line */
    snprintf(path, sizeof(path), "%s/post", dir);
    snprintf(outpath, sizeof(outpath), "%s/copy", dir);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        for (int crlf = 0; crlf < 2; crlf++) {
            const char *eol = crlf ? "\r\n" : "\n";
            char *mail = malloc(16384), *tail = malloc(4096), *copy, *pt, *cpt, *sig;
            size_t n = 0, tn = 0, clen = 0, ptlen = 0, cptlen = 0, sn;
            const char *why = NULL;
            char pwhy[300];
            xp_prepared prep;
            FILE *out;
            xp_err xe;

            assert_non_null(mail);
            assert_non_null(tail);
            for (const char *t = cases[i].tail; *t; t++) {
                if (*t == '\n') {
                    memcpy(tail + tn, eol, strlen(eol));
                    tn += strlen(eol);
                } else if (*t == 'L') {
                    memset(tail + tn, 'x', 1500);
                    tn += 1500;
                    memcpy(tail + tn, eol, strlen(eol));
                    tn += strlen(eol);
                } else {
                    tail[tn++] = *t;
                }
            }
            n = (size_t)snprintf(
                mail, 16384,
                "From: alice@example.org%sSubject: sig%sMIME-Version: 1.0%s"
                "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m%s"
                "Content-Transfer-Encoding: base64%s%s%s%s",
                eol, eol, eol, eol, eol, eol, b64, eol);
            assert_true(n + tn < 16384);
            memcpy(mail + n, tail, tn);
            n += tn;
            /* the reader takes every one of them */
            pt = reader_plaintext(mail, n, x, k, &ptlen);
            assert_int_equal(pt != NULL, cases[i].reads);
            assert_true(pt == NULL || ptlen == sizeof(plain));
            xe = xp_check_message(&c, &l, mail, n, NULL, &why, NULL, false);
            if ((xe == XP_OK) != cases[i].takes)
                fprintf(stderr, "case %zu (%s): deliver %s (%s), want %s\n", i, crlf ? "CRLF" : "LF",
                        xe == XP_OK ? "takes it" : "refuses", why != NULL ? why : "-",
                        cases[i].takes ? "taken" : "refused");
            assert_int_equal(xe == XP_OK, cases[i].takes);
            if (!cases[i].takes) {
                if (strstr(why, cases[i].why) == NULL)
                    fprintf(stderr, "case %zu (%s): deliver says \"%s\", want \"%s\"\n", i,
                            crlf ? "CRLF" : "LF", why, cases[i].why);
                assert_non_null(strstr(why, cases[i].why));
                free(pt);
                free(mail);
                free(tail);
                continue;
            }
            write_file(path, mail, n);
            out = fopen(outpath, "wb");
            assert_non_null(out);
            assert_int_equal(xp_prepare(&c, &l, path, out, &prep, pwhy, sizeof(pwhy)), XP_OK);
            xp_prepared_clear(&prep);
            assert_int_equal(fclose(out), 0);
            assert_int_equal(util_read_file(outpath, 1 << 20, (unsigned char **)&copy, &clen), UTIL_OK);
            assert_true(mail_longest_line(copy, clen) <= MAIL_MAX_LINE);
            /* from the line of the '-' on, the text after the base64 as it came */
            sig = memchr(tail, '-', tn);
            sn = sig != NULL ? tn - (size_t)(sig - tail) : 0;
            assert_true(clen >= sn && (sn == 0 || memcmp(copy + clen - sn, sig, sn) == 0));
            assert_true(sn == 0 || memcmp(copy + clen - sn - strlen(eol), eol, strlen(eol)) == 0);
            cpt = reader_plaintext(copy, clen, x, k, &cptlen);
            assert_non_null(cpt);
            assert_int_equal(cptlen, ptlen);
            assert_memory_equal(cpt, pt, ptlen);
            free(cpt);
            free(copy);
            free(pt);
            free(mail);
            free(tail);
        }
    }
    free(b64);
    OPENSSL_free(der);
    CMS_ContentInfo_free(cms);
    BIO_free(pb);
    sk_X509_free(to);
    X509_free(x);
    EVP_PKEY_free(k);
    rm_rf(dir);
}

/* A certificate PEM block marked encrypted (Proc-Type: 4,ENCRYPTED), as a
 * member's certificate file or a hostile group server's answer may hold:
 * read with OpenSSL's default pass phrase callback it asked on the
 * terminal or, without one (Postfix, a timer), printed "Enter PEM pass
 * phrase:" and read a line of standard input. Now refused as unreadable,
 * asking nothing and reading nothing. */
static void test_pem_encrypted_asks_nothing(void **state)
{
    (void)state;
    static const char pem[] = "-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\n"
                              "DEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\n"
                              "AAAAAAAAAAAAAAAAAAAAAA==\n-----END CERTIFICATE-----\n";
    char errpath[] = "/tmp/gs-xp-pem-XXXXXX", buf[64];
    int in[2], errfd = mkstemp(errpath), saved_in = dup(0), saved_err = dup(2);
    char *subject = NULL;

    assert_true(errfd >= 0 && saved_in >= 0 && saved_err >= 0);
    assert_int_equal(pipe(in), 0);
    assert_int_equal(write(in[1], "typed\n", 6), 6);
    assert_int_equal(close(in[1]), 0);
    assert_true(dup2(in[0], 0) == 0 && dup2(errfd, 2) == 2);
    xp_err e = xp_cert_check(pem, &subject);
    bool known = xp_group_cert_known(pem, NULL);
    char names[128];
    bool names_it = xp_cert_names_address(pem, "a@example.org", names, sizeof(names));
    assert_true(dup2(saved_in, 0) == 0 && dup2(saved_err, 2) == 2);
    assert_int_not_equal(e, XP_OK);
    assert_false(known);
    assert_false(names_it);
    free(subject);
    /* standard input untouched, nothing asked */
    assert_int_equal(read(in[0], buf, sizeof(buf)), 6);
    ssize_t n = pread(errfd, buf, sizeof(buf) - 1, 0);
    assert_true(n >= 0);
    buf[n] = '\0';
    assert_null(strstr(buf, "pass phrase"));
    (void)close(in[0]);
    (void)close(errfd);
    (void)close(saved_in);
    (void)close(saved_err);
    unlink(errpath);
}


/* A forward list that takes only encrypted mail sends nothing outside the
 * encryption. Text after the S/MIME body's base64 that the reader stops at
 * (a '-' line: HTML, a fake "decrypted" body, MIME delimiters) is left out
 * of the copy, in short lines or in one; words after it that decode as
 * base64 too (the CMS's end reached, the reader ignoring the rest) are
 * refused as a footer. The copy reads as the post. */
static void test_forward_encrypted_tail(void **state)
{
    static const struct {
        const char *tail;
        bool takes;
        bool sameline; /* the tail goes on the base64's last line: the decoder stops at any '-' */
        const char *cte;  /* the header block's Content-Transfer-Encoding field(s) */
        const char *refusal;
    } cases[] = {
        {"-- \n<html><body><h1>SECRET plaintext: wire to acct 1234</h1></body></html>\n", true, false, NULL, NULL},
        {"\n--b\nContent-Type: text/plain\n\nSECRET part\n--b--\n", true, false, NULL, NULL},
        {"- SECRET\n", true, false, NULL, NULL},
        {"\nSECRET wire money to account number 123456\n", false, false, NULL, "not base64"}, /* whole quanta */
        {"-<p>SECRET wire to acct 1234</p>\nmore SECRET\n", true, true, NULL, NULL},
        {" \t-SECRET\n", true, true, NULL, NULL},
        /* a field given twice: the reader takes the last, a member's mail
         * program perhaps the first, and the copy carries both; a CR that
         * ends no line, which mail programs take for a line end */
        {"-- \nSECRET\n", false, false, "Content-Transfer-Encoding: 7bit\nContent-Transfer-Encoding: base64\n",
         "more than once"},
        {"-- \nSECRET\n", false, false, "Content-Transfer-Encoding: base64\r\r\n", "ends no line"},
    };
    EVP_PKEY *k = EVP_RSA_gen(2048);
    X509 *x;
    STACK_OF(X509) *to = sk_X509_new_null();
    unsigned char plain[300], *der = NULL;
    char *b64, *pem, *dir = tmpdir(), path[600], outpath[600];
    BIO *pb;
    CMS_ContentInfo *cms = NULL;
    int derlen = 0;
    size_t sz, ptlen = 0;
    xp_conf c;
    xp_list l;
    (void)state;

    assert_non_null(k);
    assert_non_null(to);
    x = group_cert(k, &pem);
    assert_true(sk_X509_push(to, x) > 0);
    /* a CMS whose length is whole base64 quanta: no '=' ends the base64,
     * so words after it decode */
    for (sz = 200; sz < sizeof(plain); sz++) {
        for (size_t i = 0; i < sz; i++)
            plain[i] = (unsigned char)('a' + i % 26);
        pb = BIO_new_mem_buf(plain, (int)sz);
        assert_non_null(pb);
        cms = CMS_encrypt(to, pb, EVP_aes_128_cbc(), CMS_BINARY);
        assert_non_null(cms);
        BIO_free(pb);
        OPENSSL_free(der);
        der = NULL;
        derlen = i2d_CMS_ContentInfo(cms, &der);
        CMS_ContentInfo_free(cms);
        assert_true(derlen > 0);
        if (derlen % 3 == 0)
            break;
    }
    assert_true(sz < sizeof(plain));
    ptlen = sz;
    b64 = der_b64(der, derlen);

    memset(&c, 0, sizeof(c));
    c.max_message_size = 1 << 20;
    list_init(&l, "eng@lists.example.org", XP_MODE_FORWARD);
    l.group_cert = pem;
    snprintf(path, sizeof(path), "%s/post", dir);
    snprintf(outpath, sizeof(outpath), "%s/copy", dir);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        for (int oneline = 0; oneline < 2; oneline++) {
            size_t bl = strlen(b64), w = oneline ? bl : 76, n, clen = 0, cptlen = 0;
            char *mail = malloc(16384), *copy = NULL, *cpt, pwhy[300];
            const char *why = NULL;
            xp_prepared prep;
            FILE *out;
            xp_err xe;

            assert_non_null(mail);
            n = (size_t)snprintf(mail, 16384,
                                 "From: alice@example.org\nSubject: tail\nMIME-Version: 1.0\n"
                                 "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\n"
                                 "%s\n",
                                 cases[i].cte != NULL ? cases[i].cte : "Content-Transfer-Encoding: base64\n");
            for (size_t o = 0; o < bl; o += w) {
                size_t m = bl - o < w ? bl - o : w;
                memcpy(mail + n, b64 + o, m);
                n += m;
                mail[n++] = '\n';
            }
            if (cases[i].sameline)
                n--;
            assert_true(n + strlen(cases[i].tail) < 16384);
            memcpy(mail + n, cases[i].tail, strlen(cases[i].tail));
            n += strlen(cases[i].tail);
            xe = xp_check_message(&c, &l, mail, n, NULL, &why, NULL, false);
            if ((xe == XP_OK) != cases[i].takes)
                fprintf(stderr, "case %zu (%s): deliver %s (%s)\n", i, oneline ? "one line" : "76",
                        xe == XP_OK ? "takes it" : "refuses", why != NULL ? why : "-");
            assert_int_equal(xe == XP_OK, cases[i].takes);
            if (!cases[i].takes) {
                assert_non_null(strstr(why, cases[i].refusal));
                free(mail);
                continue;
            }
            write_file(path, mail, n);
            out = fopen(outpath, "wb");
            assert_non_null(out);
            assert_int_equal(xp_prepare(&c, &l, path, out, &prep, pwhy, sizeof(pwhy)), XP_OK);
            xp_prepared_clear(&prep);
            assert_int_equal(fclose(out), 0);
            assert_int_equal(util_read_file(outpath, 1 << 20, (unsigned char **)&copy, &clen), UTIL_OK);
            for (size_t o = 0; o + 6 <= clen; o++)
                assert_false(memcmp(copy + o, "SECRET", 6) == 0);
            assert_true(mail_longest_line(copy, clen) <= MAIL_MAX_LINE);
            cpt = reader_plaintext(copy, clen, x, k, &cptlen);
            assert_non_null(cpt);
            assert_int_equal(cptlen, ptlen);
            assert_memory_equal(cpt, plain, ptlen);
            free(cpt);
            free(copy);
            free(mail);
        }
    }
    free(b64);
    free(pem);
    OPENSSL_free(der);
    sk_X509_free(to);
    X509_free(x);
    EVP_PKEY_free(k);
    rm_rf(dir);
}

/* Each list mode reads a message's MIME shape as the S/MIME reader does
 * (envelope's env_mime_read_top), never by a reading of its own: every
 * list refused a message the reader takes as encrypted as a whole,
 * telling its sender it had "parts outside its encryption
 * (multipart/mixed)". But a forward copy carries the post's fields as
 * they came, and members' mail programs read them themselves: one that
 * takes the first of a field given twice (Python's email package,
 * Mozilla's libmime) saw "Content-Type: text/html" first, the CMS decoded as
 * HTML, where the reader saw S/MIME, so a forward list that takes only
 * encrypted mail refuses a MIME field given twice; and one that takes a
 * CR ending no line for a line end saw a Content-Type hidden in another
 * field and the end of the header block, the fields after it shown as
 * the body, so every list that takes only encrypted mail refuses it.
 * Otherwise a forward list takes a message exactly when the reader and
 * the group-secret list do, and its copy holds nothing after the
 * base64. */
static void test_modes_read_fields_as_reader(void **state)
{
    static const struct {
        const char *shape;
        const char *fwd_refusal;  /* the forward list's alone (the reader's fields taken otherwise) */
        const char *both_refusal; /* the forward and the group-secret list's, where the reader takes it */
    } shapes[] = {
        /* two Content-Type fields, the reader's (the last) S/MIME */
        {"Content-Type: text/plain\nContent-Type: application/pkcs7-mime; name=smime.p7m\n"
         "Content-Transfer-Encoding: base64\n",
         "more than once", NULL},
        {"Content-Type: text/html\nContent-Type: application/pkcs7-mime; name=smime.p7m\n"
         "Content-Transfer-Encoding: base64\n",
         "more than once", NULL},
        /* the reverse: the reader's is text/plain */
        {"Content-Type: application/pkcs7-mime; name=smime.p7m\nContent-Type: text/plain\n"
         "Content-Transfer-Encoding: base64\n",
         NULL, NULL},
        /* a CR before the CRLF */
        {"Content-Type: application/pkcs7-mime; name=smime.p7m\nContent-Transfer-Encoding: base64\r\r\n", NULL,
         "ends no line"},
        {"Content-Type: application/pkcs7-mime\r\r\nContent-Transfer-Encoding: base64\n", NULL, "ends no line"},
        /* a Content-Type hidden from the list in another field by a CR,
         * and the header block ended there for a member's mail program:
         * the field after it their plain body */
        {"X-Note: x\rContent-Type: text/plain\r\r\nX-Wire: SECRET wire 50000 EUR today\n"
         "Content-Type: application/pkcs7-mime; name=smime.p7m\nContent-Transfer-Encoding: base64\n",
         NULL, "ends no line"},
        /* two encodings, the reader's base64 */
        {"Content-Type: application/pkcs7-mime; name=smime.p7m\nContent-Transfer-Encoding: 7bit\n"
         "Content-Transfer-Encoding: base64\n",
         "more than once", NULL},
        /* ... and the reverse */
        {"Content-Type: application/pkcs7-mime; name=smime.p7m\nContent-Transfer-Encoding: base64\n"
         "Content-Transfer-Encoding: 7bit\n",
         "more than once", NULL},
        /* two dispositions, the reader's naming the octet-stream *.p7m */
        {"Content-Type: application/octet-stream\nContent-Disposition: inline\n"
         "Content-Disposition: attachment; filename=smime.p7m\nContent-Transfer-Encoding: base64\n",
         "more than once", NULL},
        /* Thunderbird's, folded, and Outlook's legacy type in capitals */
        {"Content-Type: application/pkcs7-mime; name=\"smime.p7m\";\n smime-type=\"enveloped-data\"\n"
         "Content-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=\"smime.p7m\"\n",
         NULL, NULL},
        {"Content-Type: Application/X-PKCS7-MIME; Name=\"SMIME.P7M\"\nContent-Transfer-Encoding: BASE64\n", NULL,
         NULL},
        /* RFC 5322's obsolete "Name :", read as the field it names by
         * the list and the reader alike: taken, and a field given twice
         * so still refused by a forward list */
        {"Content-Type : application/pkcs7-mime; name=smime.p7m\nContent-Transfer-Encoding\t: base64\n", NULL,
         NULL},
        {"Content-Type : text/html\nContent-Type: application/pkcs7-mime; name=smime.p7m\n"
         "Content-Transfer-Encoding: base64\n",
         "more than once", NULL},
        /* an octet-stream named in RFC 2231 pieces, folded */
        {"Content-Type: application/octet-stream;\n name*0=smime.;\n name*1=p7m\n"
         "Content-Transfer-Encoding: base64\n",
         NULL, NULL},
    };
    EVP_PKEY *k = EVP_RSA_gen(2048);
    X509 *x;
    char *b64, *pem, *dir = tmpdir(), path[600], outpath[600];
    xp_conf c;
    xp_list fwd, gs, mc, any;
    (void)state;

    assert_non_null(k);
    x = group_cert(k, &pem);
    b64 = encrypted_b64(x, "Subject: inner\r\n\r\nhello\r\n"); /* one line, well under 998 octets */

    memset(&c, 0, sizeof(c));
    c.max_message_size = 1 << 20;
    list_init(&fwd, "eng@lists.example.org", XP_MODE_FORWARD);
    list_init(&gs, "eng@lists.example.org", XP_MODE_GROUP_SECRET);
    list_init(&mc, "eng@lists.example.org", XP_MODE_MEMBER_CERTS);
    list_init(&any, "eng@lists.example.org", XP_MODE_FORWARD);
    fwd.group_cert = gs.group_cert = mc.group_cert = any.group_cert = pem;
    fwd.require_encrypted = true;
    any.require_encrypted = false;
    snprintf(path, sizeof(path), "%s/post", dir);
    snprintf(outpath, sizeof(outpath), "%s/copy", dir);
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        char mail[4096], *copy = NULL, pwhy[300];
        const char *fwhy = NULL, *gwhy = NULL;
        env_message *msg = NULL;
        xp_prepared prep;
        size_t clen = 0;
        FILE *out;
        int n = snprintf(mail, sizeof(mail),
                         "From: alice@example.org\nSubject: shape\nMIME-Version: 1.0\n%s\n%s\n-- \nSECRET\n",
                         shapes[i].shape, b64);
        assert_true(n > 0 && (size_t)n < sizeof(mail));
        BIO *b = BIO_new_mem_buf(mail, n);
        env_err ee = env_message_read(b, ENV_FORMAT_SMIME, 0, &msg);
        BIO_free(b);
        env_message_free(msg);
        xp_err fe = xp_check_message(&c, &fwd, mail, (size_t)n, NULL, &fwhy, NULL, false);
        xp_err ge = xp_check_message(&c, &gs, mail, (size_t)n, NULL, &gwhy, NULL, false);
        xp_err me = xp_check_message(&c, &mc, mail, (size_t)n, NULL, NULL, NULL, false);
        xp_err ae = xp_check_message(&c, &any, mail, (size_t)n, NULL, NULL, NULL, false);
        bool blamed = gwhy != NULL && strstr(gwhy, "multipart") != NULL;
        const char *refusal = shapes[i].fwd_refusal != NULL ? shapes[i].fwd_refusal : shapes[i].both_refusal;
        xp_err want_fe = shapes[i].fwd_refusal != NULL ? XP_ERR_FORMAT : ge;
        if (fe != want_fe || (ge == XP_OK) != (ee == ENV_OK && shapes[i].both_refusal == NULL) || blamed ||
            (refusal != NULL && (fwhy == NULL || strstr(fwhy, refusal) == NULL)))
            fprintf(stderr, "shape %zu: reader %s, forward %s (%s), group-secret %s (%s)\n", i,
                    env_strerror(ee), xp_strerror(fe), fwhy != NULL ? fwhy : "-", xp_strerror(ge),
                    gwhy != NULL ? gwhy : "-");
        assert_int_equal(fe, want_fe);
        assert_int_equal(ge == XP_OK, ee == ENV_OK && shapes[i].both_refusal == NULL);
        /* the re-encrypting modes alike; a list that takes anything sends
         * a field given twice as it came, but not a CR that ends no line,
         * which relays may refuse (test_forward_bare_cr) */
        assert_int_equal(me, ge);
        if (refusal != NULL && ee == ENV_OK)
            assert_int_equal(ae, shapes[i].both_refusal != NULL ? XP_ERR_FORMAT : XP_OK);
        if (refusal != NULL)
            assert_non_null(strstr(fwhy, refusal));
        if (shapes[i].both_refusal != NULL) {
            assert_int_equal(ee, ENV_OK);
            assert_int_equal(ge, XP_ERR_FORMAT);
            assert_non_null(strstr(gwhy, shapes[i].both_refusal));
        }
        /* no multipart here: never the reason */
        assert_false(blamed);
        write_file(path, mail, (size_t)n);
        out = fopen(outpath, "wb");
        assert_non_null(out);
        /* a post a forward list that takes anything took before `list
         * set` made the list re-encrypt: the copy would carry the post's
         * other fields, the one with the CR among them; refused before
         * the group server is asked (none listens here) */
        if (shapes[i].both_refusal != NULL && strncmp(shapes[i].shape, "X-Note", 6) == 0) {
            xp_list re[2];
            re[0] = gs;
            re[1] = mc;
            for (size_t m = 0; m < 2; m++) {
                re[m].server = "https://127.0.0.1:1";
                assert_int_equal(xp_prepare(&c, &re[m], path, out, &prep, pwhy, sizeof(pwhy)), XP_ERR_FORMAT);
                assert_non_null(strstr(pwhy, "ends no line"));
                assert_non_null(strstr(prep.reason, "ends no line"));
                xp_prepared_clear(&prep);
            }
        }
        if (fe != XP_OK) {
            /* a post a re-encrypting mode took before `list set` made the
             * list forward: not sent as it came either */
            if (refusal != NULL) {
                assert_int_equal(xp_prepare(&c, &fwd, path, out, &prep, pwhy, sizeof(pwhy)), XP_ERR_FORMAT);
                /* the sender's bounce says why, as deliver's refusal
                 * would have, not that the list "could not process" it */
                assert_non_null(strstr(prep.reason, refusal));
            }
            xp_prepared_clear(&prep);
            assert_int_equal(fclose(out), 0);
            continue;
        }
        assert_int_equal(xp_prepare(&c, &fwd, path, out, &prep, pwhy, sizeof(pwhy)), XP_OK);
        xp_prepared_clear(&prep);
        assert_int_equal(fclose(out), 0);
        assert_int_equal(util_read_file(outpath, 1 << 20, (unsigned char **)&copy, &clen), UTIL_OK);
        for (size_t o = 0; o + 6 <= clen; o++)
            assert_false(memcmp(copy + o, "SECRET", 6) == 0);
        free(copy);
    }
    free(b64);
    free(pem);
    X509_free(x);
    EVP_PKEY_free(k);
    rm_rf(dir);
}

/* Prepare runs deliver's check (xp_check_message) for the list as it is
 * now: `list set` may change the mode or --require-encrypted between a
 * post's deliver and its prepare, and each mode's prepare re-checked only
 * some of what deliver checks, in its own place (the re-encrypting modes
 * a CR ending no line in the fields the copy carries on, not in the
 * Content-* fields deliver reads too). Each post below is taken by the
 * list as it was and refused by deliver for the list as it is: prepare
 * must refuse it too, with deliver's reason, never send it or ask the
 * group server (none listens here). */
static void test_prepare_runs_deliver_check(void **state)
{
    EVP_PKEY *k = EVP_RSA_gen(2048), *other = EVP_RSA_gen(2048);
    X509 *x, *ox;
    char *b64[2], *pem, *dir = tmpdir(), path[600], outpath[600];
    xp_conf c;
    (void)state;

    assert_non_null(k);
    assert_non_null(other);
    x = group_cert(k, &pem);
    /* someone else's certificate, of another issuer: no RecipientInfo
     * for the group, and none for a version the list has not met */
    ox = group_cert(other, NULL);
    X509_NAME *on = X509_NAME_new();
    assert_non_null(on);
    assert_int_equal(X509_NAME_add_entry_by_txt(on, "CN", MBSTRING_ASC, (const unsigned char *)"bob", -1, -1, 0), 1);
    assert_int_equal(X509_set_subject_name(ox, on), 1);
    assert_int_equal(X509_set_issuer_name(ox, on), 1);
    X509_NAME_free(on);
    assert_true(X509_sign(ox, other, EVP_sha256()) > 0);
    /* [0] for the group, [1] for someone else */
    for (int w = 0; w < 2; w++) {
        b64[w] = encrypted_b64(w == 0 ? x : ox, "Subject: inner\r\n\r\nhello\r\n");
    }
    memset(&c, 0, sizeof(c));
    c.max_message_size = 1 << 20;
    snprintf(path, sizeof(path), "%s/post", dir);
    snprintf(outpath, sizeof(outpath), "%s/copy", dir);
    const struct {
        const char *fields; /* the header block after From and Subject */
        const char *body;   /* NULL: a CMS's base64 */
        bool to_group;      /* ... for the group, else for someone else */
        xp_mode then_mode;
        bool then_any; /* a forward list that took anything */
        xp_mode now_mode;
        xp_err want;
        const char *reason;
    } cases[] = {
        /* plain mail, taken by a forward list that takes anything, after
         * `list set --require-encrypted`: it went out in the clear */
        {"Content-Type: text/plain\n", "SECRET plain text\n", false, XP_MODE_FORWARD, true, XP_MODE_FORWARD,
         XP_ERR_NOT_ENCRYPTED, "not encrypted"},
        /* S/MIME for someone else, not the group: the same */
        {"MIME-Version: 1.0\nContent-Type: application/pkcs7-mime; name=smime.p7m\n"
         "Content-Transfer-Encoding: base64\n",
         NULL, false, XP_MODE_FORWARD, true, XP_MODE_FORWARD, XP_ERR_WRONG_RECIPIENT, NULL},
        /* plain mail after `list set --mode group-secret`: the reader's
         * "not CMS", not deliver's refusal */
        {"Content-Type: text/plain\n", "SECRET plain text\n", false, XP_MODE_FORWARD, true, XP_MODE_GROUP_SECRET,
         XP_ERR_NOT_ENCRYPTED, NULL},
        {"Content-Type: text/plain\n", "SECRET plain text\n", false, XP_MODE_FORWARD, true, XP_MODE_MEMBER_CERTS,
         XP_ERR_NOT_ENCRYPTED, NULL},
        /* a Content-Type given twice, the S/MIME reader's (the last) for
         * the group, taken by a re-encrypting list, after `list set --mode
         * forward`: refused by a forward list (members' mail programs
         * may read the first) */
        {"MIME-Version: 1.0\nContent-Type: text/html\nContent-Type: application/pkcs7-mime; name=smime.p7m\n"
         "Content-Transfer-Encoding: base64\n",
         NULL, true, XP_MODE_GROUP_SECRET, false, XP_MODE_FORWARD, XP_ERR_FORMAT, "more than once"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char mail[8192], pwhy[300];
        const char *dwhy = NULL;
        xp_list then, now;
        xp_prepared prep;
        xp_err de, pe;
        FILE *out;
        int n = snprintf(mail, sizeof(mail), "From: alice@example.org\nSubject: set\n%s\n%s\n", cases[i].fields,
                         cases[i].body != NULL ? cases[i].body : b64[cases[i].to_group ? 0 : 1]);
        assert_true(n > 0 && (size_t)n < sizeof(mail));
        list_init(&then, "eng@lists.example.org", cases[i].then_mode);
        then.require_encrypted = !cases[i].then_any;
        then.group_cert = pem;
        list_init(&now, "eng@lists.example.org", cases[i].now_mode);
        now.group_cert = pem;
        now.server = "https://127.0.0.1:1";
        assert_int_equal(xp_check_message(&c, &then, mail, (size_t)n, NULL, NULL, NULL, false), XP_OK);
        de = xp_check_message(&c, &now, mail, (size_t)n, NULL, &dwhy, NULL, true);
        assert_int_equal(de, cases[i].want);
        write_file(path, mail, (size_t)n);
        out = fopen(outpath, "wb");
        assert_non_null(out);
        pe = xp_prepare(&c, &now, path, out, &prep, pwhy, sizeof(pwhy));
        if (pe != de)
            fprintf(stderr, "case %zu: deliver %s (%s), prepare %s (%s)\n", i, xp_strerror(de),
                    dwhy != NULL ? dwhy : "-", xp_strerror(pe), pwhy);
        assert_int_equal(pe, de);
        /* the sender is told deliver's reason */
        if (dwhy != NULL)
            assert_string_equal(prep.reason, dwhy);
        else
            assert_true(prep.reason[0] != '\0');
        if (cases[i].reason != NULL)
            assert_non_null(strstr(prep.reason, cases[i].reason));
        xp_prepared_clear(&prep);
        assert_int_equal(fclose(out), 0);
    }
    free(b64[0]);
    free(b64[1]);
    free(pem);
    X509_free(x);
    X509_free(ox);
    EVP_PKEY_free(k);
    EVP_PKEY_free(other);
    rm_rf(dir);
}

/* A CR that ends no line (RFC 5321 2.3.8 has CR only before LF on the
 * wire; sendmail 8.18 refuses it by default, and mail programs take it for
 * a line end) never goes out in a copy: a forward list sends the post as
 * it came, and a relay refusing it would bounce every member's copy. An
 * S/MIME body of base64 text with such line ends (an old Mac client's, a
 * script's) goes out in lines of 76, the same CMS decoded; anything else
 * that would go as it came with one, on a forward list that takes
 * anything (a plain body, its header block, text after the base64), is
 * refused at deliver, while the sender's MTA still has it. */
static bool has_lone_cr(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] == '\r' && (i + 1 == n || p[i + 1] != '\n'))
            return true;
    return false;
}

static void test_forward_bare_cr(void **state)
{
    EVP_PKEY *k = EVP_RSA_gen(2048);
    X509 *x;
    char *b64, *pem, *dir = tmpdir(), path[600], outpath[600], *mail;
    size_t bl, ptlen = strlen("Subject: inner\r\n\r\nhello\r\n");
    xp_conf c;
    xp_list fwd, any;
    (void)state;

    assert_non_null(k);
    x = group_cert(k, &pem);
    b64 = encrypted_b64(x, "Subject: inner\r\n\r\nhello\r\n");
    bl = strlen(b64);
    mail = malloc(8192);
    assert_non_null(mail);

    memset(&c, 0, sizeof(c));
    c.max_message_size = 1 << 20;
    list_init(&fwd, "eng@lists.example.org", XP_MODE_FORWARD);
    list_init(&any, "eng@lists.example.org", XP_MODE_FORWARD);
    fwd.group_cert = any.group_cert = pem;
    any.require_encrypted = false;
    snprintf(path, sizeof(path), "%s/post", dir);
    snprintf(outpath, sizeof(outpath), "%s/copy", dir);

    /* S/MIME in base64 lines of 64 ended by a CR alone, then by CR CR LF */
    for (int shape = 0; shape < 2; shape++) {
        const char *eol = shape == 0 ? "\r" : "\r\r\n";
        int n = snprintf(mail, 8192,
                         "From: alice@example.org\r\nSubject: cr\r\nMIME-Version: 1.0\r\n"
                         "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n"
                         "Content-Transfer-Encoding: base64\r\n\r\n");
        size_t m = (size_t)n;
        for (size_t o = 0; o < bl; o += 64) {
            size_t w = bl - o < 64 ? bl - o : 64;
            assert_true(m + w + 3 < 8192);
            memcpy(mail + m, b64 + o, w);
            m += w;
            memcpy(mail + m, eol, strlen(eol));
            m += strlen(eol);
        }
        for (int li = 0; li < 2; li++) {
            xp_list *l = li == 0 ? &fwd : &any;
            char pwhy[300], *copy = NULL, *cpt;
            size_t clen = 0, cptlen = 0;
            xp_prepared prep;
            FILE *out;

            assert_int_equal(xp_check_message(&c, l, mail, m, NULL, NULL, NULL, false), XP_OK);
            write_file(path, mail, m);
            out = fopen(outpath, "wb");
            assert_non_null(out);
            assert_int_equal(xp_prepare(&c, l, path, out, &prep, pwhy, sizeof(pwhy)), XP_OK);
            xp_prepared_clear(&prep);
            assert_int_equal(fclose(out), 0);
            assert_int_equal(util_read_file(outpath, 1 << 20, (unsigned char **)&copy, &clen), UTIL_OK);
            if (has_lone_cr(copy, clen))
                fprintf(stderr, "shape %d list %d: the copy holds a CR that ends no line\n", shape, li);
            assert_false(has_lone_cr(copy, clen));
            size_t he, bs;
            bool crlf;
            assert_int_equal(mail_split(copy, clen, &he, &bs, &crlf), XP_OK);
            assert_true(mail_longest_line(copy + bs, clen - bs) <= 76); /* re-lined */
            cpt = reader_plaintext(copy, clen, x, k, &cptlen);
            assert_non_null(cpt);
            assert_int_equal(cptlen, ptlen);
            free(cpt);
            free(copy);
        }
    }

    /* what would go as it came on a list that takes anything: refused */
    static const char *const refused[] = {
        "From: alice@example.org\nSubject: plain\n\nline one\rline two\n",
        "From: alice@example.org\nX-A: b\rContent-Type: text/html\r\r\nSubject: plain\n\nhello\n",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        const char *why = NULL;
        xp_err e = xp_check_message(&c, &any, refused[i], strlen(refused[i]), NULL, &why, NULL, false);
        if (e != XP_ERR_FORMAT)
            fprintf(stderr, "case %zu: %s (%s)\n", i, xp_strerror(e), why != NULL ? why : "-");
        assert_int_equal(e, XP_ERR_FORMAT);
        assert_non_null(strstr(why, "ends no line"));
    }
    /* ... and text after the base64 with one, which goes as it came there
     * (a list that takes only encrypted mail leaves it out) */
    int n = snprintf(mail, 8192,
                     "From: alice@example.org\nSubject: tail\nMIME-Version: 1.0\n"
                     "Content-Type: application/pkcs7-mime; name=smime.p7m\nContent-Transfer-Encoding: base64\n\n"
                     "%s\n-- \nsig one\rsig two\n",
                     b64);
    assert_true(n > 0 && n < 8192);
    assert_int_equal(xp_check_message(&c, &any, mail, (size_t)n, NULL, NULL, NULL, false), XP_ERR_FORMAT);
    assert_int_equal(xp_check_message(&c, &fwd, mail, (size_t)n, NULL, NULL, NULL, false), XP_OK);

    /* a NUL byte alike (RFC 5322 2.3, RFC 2045 2.7/2.8: never in mail
     * text; relays may refuse it): refused where the copy would carry it
     * as it came, in a plain body or after the base64, on a list with or
     * without a group certificate; a list that takes only encrypted mail
     * leaves the text after the base64 out */
    static const char plain_nul[] = "From: alice@example.org\nSubject: plain\n\nline one\0line two\n";
    xp_list bare;
    list_init(&bare, "eng@lists.example.org", XP_MODE_FORWARD);
    bare.require_encrypted = false;
    for (int li = 0; li < 2; li++) {
        const char *why = NULL;
        xp_err e = xp_check_message(&c, li == 0 ? &any : &bare, plain_nul, sizeof(plain_nul) - 1, NULL, &why,
                                    NULL, false);
        assert_int_equal(e, XP_ERR_FORMAT);
        assert_non_null(why);
        assert_non_null(strstr(why, "NUL byte"));
    }
    n = snprintf(mail, 8192,
                 "From: alice@example.org\nSubject: tail\nMIME-Version: 1.0\n"
                 "Content-Type: application/pkcs7-mime; name=smime.p7m\nContent-Transfer-Encoding: base64\n\n"
                 "%s\n-- \nsig one",
                 b64);
    assert_true(n > 0 && n + 12 < 8192);
    memcpy(mail + n, "\0sig two\n", 10);
    n += 10;
    {
        const char *why = NULL;
        assert_int_equal(xp_check_message(&c, &any, mail, (size_t)n, NULL, &why, NULL, false), XP_ERR_FORMAT);
        assert_non_null(why);
        assert_non_null(strstr(why, "NUL byte"));
    }
    assert_int_equal(xp_check_message(&c, &fwd, mail, (size_t)n, NULL, NULL, NULL, false), XP_OK);

    free(mail);
    free(b64);
    free(pem);
    X509_free(x);
    EVP_PKEY_free(k);
    rm_rf(dir);
}

/* Opaque signed mail (application/pkcs7-mime; smime-type=signed-data: openssl
 * smime -sign -nodetach, cmsutil -S, Outlook without clear-text signing) is
 * signed, not encrypted: a forward list that takes anything sends it as it
 * came, as it does multipart/signed, where it was refused as "not
 * encrypted ... sign before encrypting"; a list that takes only encrypted
 * mail still refuses it. */
static void test_forward_any_opaque_signed(void **state)
{
    EVP_PKEY *k = EVP_RSA_gen(2048);
    X509 *x;
    BIO *pb;
    CMS_ContentInfo *cms;
    unsigned char *der = NULL;
    char *b64, *pem, *dir = tmpdir(), path[600], outpath[600], mail[8192], pwhy[300], *copy = NULL;
    const char *why = NULL;
    int derlen, n;
    size_t clen = 0, he, bs, body;
    bool crlf;
    xp_conf c;
    xp_list fwd, any;
    xp_prepared prep;
    FILE *out;
    (void)state;

    assert_non_null(k);
    x = group_cert(k, &pem);
    pb = BIO_new_mem_buf("Content-Type: text/plain\r\n\r\nsigned, not encrypted\r\n", -1);
    assert_non_null(pb);
    cms = CMS_sign(x, k, NULL, pb, CMS_BINARY);
    assert_non_null(cms);
    derlen = i2d_CMS_ContentInfo(cms, &der);
    assert_true(derlen > 0);
    b64 = der_b64(der, derlen);
    n = snprintf(mail, sizeof(mail),
                 "From: alice@example.org\nSubject: opaque\nMIME-Version: 1.0\n"
                 "Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m\n"
                 "Content-Transfer-Encoding: base64\n\n");
    assert_true(n > 0);
    body = (size_t)n;
    for (size_t o = 0; o < strlen(b64); o += 64) { /* in lines of 64, as openssl writes them */
        int w = snprintf(mail + n, sizeof(mail) - (size_t)n, "%.64s\n", b64 + o);
        assert_true(w > 0 && (size_t)w < sizeof(mail) - (size_t)n);
        n += w;
    }

    memset(&c, 0, sizeof(c));
    c.max_message_size = 1 << 20;
    list_init(&fwd, "eng@lists.example.org", XP_MODE_FORWARD);
    list_init(&any, "eng@lists.example.org", XP_MODE_FORWARD);
    fwd.group_cert = any.group_cert = pem;
    any.require_encrypted = false;
    assert_int_equal(xp_check_message(&c, &fwd, mail, (size_t)n, NULL, NULL, NULL, false), XP_ERR_NOT_ENCRYPTED);
    if (xp_check_message(&c, &any, mail, (size_t)n, NULL, &why, NULL, false) != XP_OK)
        fprintf(stderr, "refused: %s\n", why != NULL ? why : "-");
    assert_int_equal(xp_check_message(&c, &any, mail, (size_t)n, NULL, NULL, NULL, false), XP_OK);
    /* ... and its copy carries the body as it came */
    snprintf(path, sizeof(path), "%s/post", dir);
    snprintf(outpath, sizeof(outpath), "%s/copy", dir);
    write_file(path, mail, (size_t)n);
    out = fopen(outpath, "wb");
    assert_non_null(out);
    assert_int_equal(xp_prepare(&c, &any, path, out, &prep, pwhy, sizeof(pwhy)), XP_OK);
    xp_prepared_clear(&prep);
    assert_int_equal(fclose(out), 0);
    assert_int_equal(util_read_file(outpath, 1 << 20, (unsigned char **)&copy, &clen), UTIL_OK);
    assert_int_equal(mail_split(copy, clen, &he, &bs, &crlf), XP_OK);
    assert_int_equal(clen - bs, (size_t)n - body);
    assert_memory_equal(copy + bs, mail + body, (size_t)n - body);
    /* taken, then `list set --require-encrypted`: prepare refuses it */
    out = fopen(outpath, "wb");
    assert_non_null(out);
    assert_int_equal(xp_prepare(&c, &fwd, path, out, &prep, pwhy, sizeof(pwhy)), XP_ERR_NOT_ENCRYPTED);
    xp_prepared_clear(&prep);
    assert_int_equal(fclose(out), 0);

    free(copy);
    free(b64);
    free(pem);
    OPENSSL_free(der);
    CMS_ContentInfo_free(cms);
    BIO_free(pb);
    X509_free(x);
    EVP_PKEY_free(k);
    rm_rf(dir);
}

int main(void)
{
    log_init("test_exploder", LOG_LVL_ERROR, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_ok),   cmocka_unit_test(test_split_rejects), cmocka_unit_test(test_header_get),
        cmocka_unit_test(test_obs_field_names),
        cmocka_unit_test(test_addr), cmocka_unit_test(test_addr_rfc5322), cmocka_unit_test(test_addr_intl_typed),       cmocka_unit_test(test_addr_intl_members), cmocka_unit_test(test_list_headers),
        cmocka_unit_test(test_list_headers_fold), cmocka_unit_test(test_been_there), cmocka_unit_test(test_header_value_remove), cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_spool_flow), cmocka_unit_test(test_spool_sweep),   cmocka_unit_test(test_conf),
        cmocka_unit_test(test_member_copies), cmocka_unit_test(test_group_accepts),
        cmocka_unit_test(test_group_cert_swap), cmocka_unit_test(test_cte_agrees_with_reader),
        cmocka_unit_test(test_forward_base64_then_signature),
        cmocka_unit_test(test_forward_encrypted_tail), cmocka_unit_test(test_cert_names_address),
        cmocka_unit_test(test_spool_migrate_v1),   cmocka_unit_test(test_rest_answer_cap),
        cmocka_unit_test(test_pem_encrypted_asks_nothing), cmocka_unit_test(test_modes_read_fields_as_reader),
        cmocka_unit_test(test_prepare_runs_deliver_check), cmocka_unit_test(test_forward_bare_cr),
        cmocka_unit_test(test_forward_any_opaque_signed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
