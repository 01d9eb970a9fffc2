/*
 * refusal.c: a PIN the token refused, remembered across processes.
 *
 * A wrong PIN in the PIN source made every start send it once more: a
 * service manager that restarts `groupsrv serve` every few seconds, the
 * supervisor restarting its key holder, a cron job. A token that counts
 * failed logins without reporting CKF_USER_PIN_FINAL_TRY (several
 * smartcards and network HSMs) is then locked for good after a few
 * restarts. So a CKR_PIN_INCORRECT is written down (hsm_config's
 * refusal_path) and the same PIN source on the same token is not sent
 * again until the source changes.
 *
 * What is written is never the PIN nor a plain hash of it (a PIN of a few
 * digits is found from its hash at once): for a file, the file's identity
 * (device, inode, size, modification and change times: any write, rename
 * or touch changes it); for env:NAME, an HMAC-SHA256 of the PIN under a
 * random key kept in a separate 0600 file beside the record, so that the
 * record alone tells nothing about the PIN. Both files are written
 * atomically with mode 0600. A successful login removes the record.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "log.h"
#include "util.h"
#include "hsm_internal.h"

#define RECORD_MAX 4096
#define MAC_KEY_LEN 32

void hsm_refusal_src_stat(const char *pin_source, hsm_pin_src *src)
{
    struct stat st;
    const char *path;

    memset(src, 0, sizeof(*src));
    if (pin_source == NULL || strncmp(pin_source, "env:", 4) == 0)
        return;
    path = strncmp(pin_source, "file:", 5) == 0 ? pin_source + 5 : pin_source;
    if (stat(path, &st) != 0)
        return;
    src->is_file = true;
    src->dev = (unsigned long long)st.st_dev;
    src->ino = (unsigned long long)st.st_ino;
    src->size = (long long)st.st_size;
    src->mtime_s = (long long)st.st_mtim.tv_sec;
    src->mtime_ns = (long)st.st_mtim.tv_nsec;
    src->ctime_s = (long long)st.st_ctim.tv_sec;
    src->ctime_ns = (long)st.st_ctim.tv_nsec;
}

/* The token's identity (label, manufacturer, model, serial: none secret)
 * as hex SHA-256, so that a record made for another token never matches. */
static int token_id(const CK_TOKEN_INFO *ti, char hex[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    int ok = mctx != NULL && EVP_DigestInit_ex(mctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(mctx, ti->label, sizeof(ti->label)) == 1 &&
             EVP_DigestUpdate(mctx, ti->manufacturerID, sizeof(ti->manufacturerID)) == 1 &&
             EVP_DigestUpdate(mctx, ti->model, sizeof(ti->model)) == 1 &&
             EVP_DigestUpdate(mctx, ti->serialNumber, sizeof(ti->serialNumber)) == 1 &&
             EVP_DigestFinal_ex(mctx, md, &mdlen) == 1 && mdlen == 32;

    EVP_MD_CTX_free(mctx);
    if (!ok)
        return -1;
    for (unsigned i = 0; i < 32; i++)
        (void)snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return 0;
}

/* The MAC key's file: the record's path with ".key". */
static int key_path(const char *record, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s.key", record);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

/* Reads the MAC key (32 bytes, a regular file not open to others); with
 * create, makes one if there is none. 0, or -1 (no key: nothing recorded
 * for an env: source can match). */
static int mac_key(const char *record, bool create, unsigned char key[MAC_KEY_LEN])
{
    char path[4200];
    unsigned char *buf = NULL;
    size_t n = 0;
    struct stat st;
    int rc = -1;

    if (key_path(record, path, sizeof(path)) != 0)
        return -1;
    if (lstat(path, &st) == 0) {
        if (!S_ISREG(st.st_mode) || (st.st_mode & 077) != 0 ||
            util_read_file(path, MAC_KEY_LEN + 1, &buf, &n) != UTIL_OK || n != MAC_KEY_LEN) {
            log_warn("the PIN refusal record's key is not usable; ignored path=\"%s\"", log_qs(path));
            goto out;
        }
        memcpy(key, buf, MAC_KEY_LEN);
        rc = 0;
        goto out;
    }
    if (!create || errno != ENOENT)
        goto out;
    if (RAND_bytes(key, MAC_KEY_LEN) != 1 || util_write_file_atomic(path, key, MAC_KEY_LEN, 0600) != UTIL_OK) {
        log_warn("the PIN refusal record's key cannot be written path=\"%s\" err=\"%s\"", log_qs(path),
                 strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (buf != NULL)
        util_secret_free(buf, n + 1);
    if (rc != 0)
        OPENSSL_cleanse(key, MAC_KEY_LEN);
    return rc;
}

/* The record's first line for this token and source: what a later
 * process compares. -1 when it cannot be made (no usable key for env:). */
static int record_line(const char *record, const CK_TOKEN_INFO *ti, const hsm_pin_src *src, const char *pin,
                       size_t pin_len, bool create_key, char *out, size_t cap)
{
    char tok[65];
    int n;

    if (token_id(ti, tok) != 0)
        return -1;
    if (src->is_file) {
        n = snprintf(out, cap, "groupsrv-pin-refused 1 token=%s source=file dev=%llu ino=%llu size=%lld "
                     "mtime=%lld.%09ld ctime=%lld.%09ld",
                     tok, src->dev, src->ino, src->size, src->mtime_s, src->mtime_ns, src->ctime_s, src->ctime_ns);
        return n < 0 || (size_t)n >= cap ? -1 : 0;
    }
    unsigned char key[MAC_KEY_LEN], mac[32];
    unsigned int maclen = 0;
    char hex[65];
    int rc = -1;

    if (pin == NULL || pin_len == 0 || pin_len > INT32_MAX || mac_key(record, create_key, key) != 0)
        return -1;
    if (HMAC(EVP_sha256(), key, MAC_KEY_LEN, (const unsigned char *)pin, pin_len, mac, &maclen) == NULL ||
        maclen != 32)
        goto out;
    for (unsigned i = 0; i < 32; i++)
        (void)snprintf(hex + 2 * i, 3, "%02x", mac[i]);
    n = snprintf(out, cap, "groupsrv-pin-refused 1 token=%s source=env mac=%s", tok, hex);
    rc = n < 0 || (size_t)n >= cap ? -1 : 0;
out:
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(mac, sizeof(mac));
    return rc;
}

/* Copies the value of "name=" on line p (up to a space or newline) to out. */
static void field(const char *p, const char *name, char *out, size_t cap)
{
    const char *t = strstr(p, name);
    size_t k;

    if (cap == 0)
        return;
    out[0] = '\0';
    if (t == NULL)
        return;
    t += strlen(name);
    k = strcspn(t, " \n");
    if (k >= cap)
        k = cap - 1;
    memcpy(out, t, k);
    out[k] = '\0';
}

bool hsm_refusal_matches(const char *record, const CK_TOKEN_INFO *ti, const hsm_pin_src *src, const char *pin,
                         size_t pin_len, char *when, size_t whensz, char *rv, size_t rvsz)
{
    char want[512];
    unsigned char *buf = NULL;
    size_t n = 0, linelen;
    struct stat st;
    bool match = false;

    if (whensz > 0)
        when[0] = '\0';
    if (rvsz > 0)
        rv[0] = '\0';
    if (record == NULL || lstat(record, &st) != 0)
        return false;
    /* Not one this program wrote (a link, a directory, a file others may
     * write): not taken as a refusal, said in the log. */
    if (!S_ISREG(st.st_mode) || (st.st_mode & 022) != 0) {
        log_warn("the PIN refusal record is not a regular file closed to others; ignored path=\"%s\"",
                 log_qs(record));
        return false;
    }
    if (record_line(record, ti, src, pin, pin_len, false, want, sizeof(want)) != 0)
        return false;
    if (util_read_file(record, RECORD_MAX, &buf, &n) != UTIL_OK) {
        log_warn("the PIN refusal record cannot be read; ignored path=\"%s\" err=\"%s\"", log_qs(record),
                 strerror(errno));
        return false;
    }
    linelen = strlen(want);
    if (n > linelen && memcmp(buf, want, linelen) == 0 && buf[linelen] == '\n') {
        match = true;
        /* the second line: "refused=TIME rv=CKR_... ..." for the message */
        const char *p = (const char *)buf + linelen + 1;
        field(p, "refused=", when, whensz);
        field(p, " rv=", rv, rvsz);
    }
    free(buf);
    return match;
}

void hsm_refusal_record(const char *record, const CK_TOKEN_INFO *ti, const hsm_pin_src *src, const char *pin,
                        size_t pin_len, const char *pin_source, const char *rv)
{
    char line[512], text[1024], stamp[32], serial[65];
    time_t now = time(NULL);
    struct tm tm;
    size_t k;
    int n;

    if (record == NULL)
        return;
    if (record_line(record, ti, src, pin, pin_len, true, line, sizeof(line)) != 0) {
        log_warn("the refused PIN cannot be recorded; a restart would send it again path=\"%s\"", log_qs(record));
        return;
    }
    if (gmtime_r(&now, &tm) == NULL || strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        (void)snprintf(stamp, sizeof(stamp), "unknown");
    k = sizeof(ti->serialNumber);
    while (k > 0 && (ti->serialNumber[k - 1] == ' ' || ti->serialNumber[k - 1] == '\0'))
        k--;
    for (size_t i = 0; i < k; i++)
        serial[i] = (ti->serialNumber[i] > 0x20 && ti->serialNumber[i] < 0x7f) ? (char)ti->serialNumber[i] : '?';
    serial[k] = '\0';
    /* The second line is for a person reading the file. */
    /* Shown only when it names a file or variable, never a value that
     * may be the PIN itself written where its source belongs; control
     * bytes as '?'. */
    char shown[201];
    const char *ps = pin_source != NULL ? pin_source : "";
    bool named = strncmp(ps, "env:", 4) == 0 || strncmp(ps, "file:", 5) == 0 || strchr(ps, '/') != NULL;
    (void)snprintf(shown, sizeof(shown), "%s", named ? ps : "(not shown)");
    for (char *c = shown; *c != '\0'; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
    n = snprintf(text, sizeof(text),
                 "%s\nrefused=%s rv=%s token_serial=%s pin_source=%.200s\n"
                 "# The token refused the PIN of this PIN source (or failed the login in a way that may have\n"
                 "# counted a try): groupsrv does not send it again until the source changes. Correct the PIN\n"
                 "# in it; if the token's PIN was set to it instead, remove this file.\n",
                 line, stamp, rv, serial, shown);
    if (n < 0 || (size_t)n >= sizeof(text) || util_write_file_atomic(record, text, (size_t)n, 0600) != UTIL_OK) {
        log_warn("the refused PIN cannot be recorded; a restart would send it again path=\"%s\" err=\"%s\"",
                 log_qs(record), strerror(errno));
        return;
    }
    log_info("refused PIN source recorded path=\"%s\"", log_qs(record));
}

void hsm_refusal_clear(const char *record)
{
    if (record == NULL)
        return;
    if (unlink(record) == 0)
        log_info("the PIN refusal record is removed: the token took the PIN path=\"%s\"", log_qs(record));
    else if (errno != ENOENT)
        log_warn("the PIN refusal record cannot be removed path=\"%s\" err=\"%s\"", log_qs(record), strerror(errno));
}
