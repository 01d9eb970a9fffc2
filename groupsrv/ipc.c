/*
 * ipc.c: the frame format of ipc.h: one table of field kinds and caps, one
 * schema per message type, a decoder that checks everything against them,
 * an encoder, and the blocking I/O used by the control channels.
 */
#include "ipc.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/crypto.h>

#include "log.h"
#include "util.h"

/* K_ID: a string of ASCII letters, digits, '-', '_' and '.' only (a
 * request id: it goes into audit records and log lines as it is, so a
 * byte that is not UTF-8 would make the record impossible to write after
 * the token did the work, and a quote or space would forge log fields). */
enum kind { K_NONE = 0, K_U32, K_U64, K_STR, K_BYTES, K_NEST, K_ID };

struct field_def {
    enum kind kind;
    uint32_t max; /* strings: bytes including the NUL */
};

#define KIB 1024u
#define MIB (1024u * 1024u)
static const struct field_def fields[IPC_T_COUNT] = {
    [IPC_T_REQUEST_ID] = {K_ID, 33},      [IPC_T_CALLER] = {K_U32, 4},
    [IPC_T_IDENTITY] = {K_STR, 256},       [IPC_T_SPKI] = {K_BYTES, 4 * KIB},
    [IPC_T_GROUP] = {K_STR, 65},           [IPC_T_GEN] = {K_U64, 8},
    [IPC_T_ITEM] = {K_NEST, 8 * KIB},      [IPC_T_DELIVER] = {K_U32, 4},
    [IPC_T_KEY_VERSION] = {K_U32, 4},      [IPC_T_ALG] = {K_U32, 4},
    [IPC_T_ENC_KEY] = {K_BYTES, 1024},     [IPC_T_CEK_LEN] = {K_U32, 4},
    [IPC_T_PEER_POINT] = {K_BYTES, 160},   [IPC_T_KDF_SHA256] = {K_U32, 4},
    [IPC_T_SHARED_INFO] = {K_BYTES, 4 * KIB}, [IPC_T_KEK_LEN] = {K_U32, 4},
    [IPC_T_WRAPPED] = {K_BYTES, 2 * KIB},  [IPC_T_TO] = {K_U32, 4},
    [IPC_T_DIGEST] = {K_BYTES, 64},        [IPC_T_FLAGS] = {K_U32, 4},
    [IPC_T_EMAIL] = {K_STR, 255},          [IPC_T_ROLE] = {K_U32, 4},
    [IPC_T_CERT] = {K_BYTES, 64 * KIB},    [IPC_T_NAME] = {K_STR, 65},
    [IPC_T_ADDRESS] = {K_STR, 255},        [IPC_T_KEYSPEC] = {K_STR, 32},
    [IPC_T_METHODS] = {K_U32, 4},          [IPC_T_STATUS] = {K_U32, 4},
    [IPC_T_CODE] = {K_STR, 48},            [IPC_T_MESSAGE] = {K_STR, 512},
    [IPC_T_RETRY] = {K_U32, 4},            [IPC_T_RESULT] = {K_NEST, 8 * KIB},
    [IPC_T_KEY] = {K_BYTES, 64},           [IPC_T_KEK_ID] = {K_BYTES, 16},
    [IPC_T_SECRET_VERSION] = {K_U32, 4},   [IPC_T_DER] = {K_BYTES, 64 * KIB},
    [IPC_T_KEYREF] = {K_NEST, 70 * KIB},   [IPC_T_SECRET] = {K_NEST, 4 * KIB},
    [IPC_T_MEMBER] = {K_NEST, 70 * KIB},   [IPC_T_ADDED] = {K_U64, 8},
    [IPC_T_CA_CERT] = {K_BYTES, 64 * KIB}, [IPC_T_SIG] = {K_BYTES, 256},
    [IPC_T_TOKEN_STATE] = {K_STR, 256},    [IPC_T_AUDIT_STATE] = {K_STR, 256},
    [IPC_T_DB_STATE] = {K_STR, 256},       [IPC_T_COUNTERS] = {K_BYTES, 1024},
    [IPC_T_TEXT] = {K_BYTES, MIB},         [IPC_T_CERT_PEM] = {K_BYTES, MIB},
    [IPC_T_KEY_PEM] = {K_BYTES, MIB},      [IPC_T_CA_PEM] = {K_BYTES, 16 * MIB},
    [IPC_T_INDEX] = {K_U32, 4},            [IPC_T_CSR_SPKI] = {K_BYTES, 4 * KIB},
    [IPC_T_ACTION] = {K_U32, 4},           [IPC_T_KEY_POLICY] = {K_STR, 512},
    [IPC_T_WRAP] = {K_U32, 4},             [IPC_T_KEY_TRANSPORTS] = {K_U32, 4},
    [IPC_T_FORMER_CERT] = {K_BYTES, 64 * KIB}, [IPC_T_DEADLINE] = {K_U64, 8},
};
_Static_assert(IPC_T_COUNT <= 64, "field tags are bits of a uint64_t");

struct schema {
    uint64_t allowed, required, repeated;
};

#define B(t) (1ull << (t))
/* Every request may carry its HTTP request id; callers are who the
 * network process says is asking (the key holder checks them). */
#define RID (B(IPC_T_REQUEST_ID) | B(IPC_T_DEADLINE))
#define CALLER (B(IPC_T_CALLER) | B(IPC_T_IDENTITY) | B(IPC_T_SPKI))
#define CALLER_REQ (B(IPC_T_CALLER) | B(IPC_T_IDENTITY))
#define ANSWER (B(IPC_T_STATUS) | B(IPC_T_CODE) | B(IPC_T_MESSAGE) | B(IPC_T_RETRY) | B(IPC_T_GEN))

static const struct schema requests[IPC_REQ_END] = {
    [IPC_VIEW] = {RID | CALLER | B(IPC_T_GROUP) | B(IPC_T_GEN) | B(IPC_T_FLAGS), B(IPC_T_GROUP), 0},
    [IPC_UNWRAP] = {RID | CALLER | B(IPC_T_GROUP) | B(IPC_T_ITEM), CALLER_REQ | B(IPC_T_GROUP), B(IPC_T_ITEM)},
    [IPC_REWRAP] = {RID | CALLER | B(IPC_T_GROUP) | B(IPC_T_TO) | B(IPC_T_ITEM),
                    CALLER_REQ | B(IPC_T_GROUP) | B(IPC_T_TO) | B(IPC_T_ITEM), 0},
    [IPC_SECRET_KEYS] = {RID | CALLER | B(IPC_T_GROUP), CALLER_REQ | B(IPC_T_GROUP), 0},
    [IPC_CERTIFY] = {RID | CALLER | B(IPC_T_GROUP) | B(IPC_T_CSR_SPKI), CALLER_REQ | B(IPC_T_GROUP), 0},
    [IPC_SIGN] = {B(IPC_T_DIGEST) | B(IPC_T_DEADLINE), B(IPC_T_DIGEST), 0},
    [IPC_INFO] = {B(IPC_T_FLAGS) | B(IPC_T_DEADLINE), 0, 0},
    [IPC_HEALTH] = {RID | CALLER, 0, 0},
    [IPC_STATS] = {RID | CALLER, 0, 0},
    [IPC_MEMBERS] = {RID | CALLER | B(IPC_T_GROUP), CALLER_REQ | B(IPC_T_GROUP), 0},
    [IPC_MEMBER_GET] = {RID | CALLER | B(IPC_T_GROUP) | B(IPC_T_EMAIL), CALLER_REQ | B(IPC_T_GROUP) | B(IPC_T_EMAIL),
                        0},
    [IPC_MEMBER_PUT] = {RID | CALLER | B(IPC_T_GROUP) | B(IPC_T_EMAIL) | B(IPC_T_ROLE) | B(IPC_T_CERT) | B(IPC_T_WRAP),
                        CALLER_REQ | B(IPC_T_GROUP) | B(IPC_T_EMAIL), 0},
    [IPC_MEMBER_DELETE] = {RID | CALLER | B(IPC_T_GROUP) | B(IPC_T_EMAIL),
                           CALLER_REQ | B(IPC_T_GROUP) | B(IPC_T_EMAIL), 0},
    [IPC_GROUP_CREATE] = {RID | CALLER | B(IPC_T_NAME) | B(IPC_T_ADDRESS) | B(IPC_T_KEYSPEC) | B(IPC_T_METHODS) |
                              B(IPC_T_FLAGS) | B(IPC_T_WRAP),
                          CALLER_REQ | B(IPC_T_NAME) | B(IPC_T_ADDRESS), 0},
    [IPC_AUTHZ] = {RID | CALLER | B(IPC_T_GROUP) | B(IPC_T_ACTION), CALLER_REQ | B(IPC_T_ACTION), 0},
};

static const struct schema replies[IPC_REQ_END] = {
    [0] = {ANSWER, B(IPC_T_STATUS), 0}, /* IPC_REPLY alone: a request not understood */
    [IPC_VIEW] = {ANSWER | B(IPC_T_FLAGS) | B(IPC_T_NAME) | B(IPC_T_ADDRESS) | B(IPC_T_METHODS) | B(IPC_T_KEYREF) |
                      B(IPC_T_SECRET_VERSION) | B(IPC_T_KEK_ID) | B(IPC_T_CA_CERT) | B(IPC_T_KEY_POLICY) |
                      B(IPC_T_WRAP) | B(IPC_T_KEY_TRANSPORTS),
                  B(IPC_T_STATUS), B(IPC_T_KEYREF)},
    [IPC_UNWRAP] = {ANSWER | B(IPC_T_RESULT), B(IPC_T_STATUS), B(IPC_T_RESULT)},
    /* members: one DER and one EMAIL per member, in the same order */
    [IPC_REWRAP] = {ANSWER | B(IPC_T_RESULT) | B(IPC_T_DER) | B(IPC_T_EMAIL) | B(IPC_T_KEY_VERSION), B(IPC_T_STATUS),
                    B(IPC_T_DER) | B(IPC_T_EMAIL)},
    [IPC_SECRET_KEYS] = {ANSWER | B(IPC_T_SECRET), B(IPC_T_STATUS), B(IPC_T_SECRET)},
    [IPC_CERTIFY] = {ANSWER | B(IPC_T_CERT), B(IPC_T_STATUS), 0},
    [IPC_SIGN] = {ANSWER | B(IPC_T_SIG), B(IPC_T_STATUS), 0},
    [IPC_INFO] = {ANSWER | B(IPC_T_CA_CERT) | B(IPC_T_SPKI), B(IPC_T_STATUS), 0},
    [IPC_HEALTH] = {ANSWER | B(IPC_T_TOKEN_STATE) | B(IPC_T_AUDIT_STATE) | B(IPC_T_DB_STATE), B(IPC_T_STATUS), 0},
    [IPC_STATS] = {ANSWER | B(IPC_T_COUNTERS), B(IPC_T_STATUS), 0},
    [IPC_MEMBERS] = {ANSWER | B(IPC_T_MEMBER), B(IPC_T_STATUS), B(IPC_T_MEMBER)},
    [IPC_MEMBER_GET] = {ANSWER | B(IPC_T_MEMBER), B(IPC_T_STATUS), 0},
    [IPC_MEMBER_PUT] = {ANSWER | B(IPC_T_MEMBER) | B(IPC_T_FLAGS), B(IPC_T_STATUS), 0},
    [IPC_MEMBER_DELETE] = {ANSWER | B(IPC_T_EMAIL) | B(IPC_T_SECRET_VERSION) | B(IPC_T_KEY_VERSION) |
                               B(IPC_T_FLAGS),
                           B(IPC_T_STATUS), 0},
    [IPC_GROUP_CREATE] = {ANSWER | B(IPC_T_KEY_VERSION), B(IPC_T_STATUS), 0},
    [IPC_AUTHZ] = {ANSWER, B(IPC_T_STATUS), 0},
};

static const struct schema controls[IPC_CTL_END - IPC_CTL_CONFIG] = {
    [IPC_CTL_CONFIG - IPC_CTL_CONFIG] = {B(IPC_T_TEXT), B(IPC_T_TEXT), 0},
    [IPC_CTL_TLS - IPC_CTL_CONFIG] = {B(IPC_T_CERT_PEM) | B(IPC_T_KEY_PEM) | B(IPC_T_CA_PEM), B(IPC_T_CERT_PEM), 0},
    [IPC_CTL_LISTEN - IPC_CTL_CONFIG] = {B(IPC_T_INDEX), B(IPC_T_INDEX), 0},
    [IPC_CTL_LINK - IPC_CTL_CONFIG] = {B(IPC_T_INDEX), B(IPC_T_INDEX), 0},
    [IPC_CTL_GO - IPC_CTL_CONFIG] = {0, 0, 0},
    [IPC_CTL_READY - IPC_CTL_CONFIG] = {B(IPC_T_MESSAGE), 0, 0},
};

/* What may appear inside a nested field (nothing nests twice). */
static const struct schema nested[IPC_T_COUNT] = {
    [IPC_T_ITEM] = {B(IPC_T_DELIVER) | B(IPC_T_KEY_VERSION) | B(IPC_T_ALG) | B(IPC_T_ENC_KEY) | B(IPC_T_CEK_LEN) |
                        B(IPC_T_PEER_POINT) | B(IPC_T_KDF_SHA256) | B(IPC_T_SHARED_INFO) | B(IPC_T_KEK_LEN) |
                        B(IPC_T_WRAPPED) | B(IPC_T_FLAGS),
                    B(IPC_T_DELIVER) | B(IPC_T_ALG), 0},
    [IPC_T_RESULT] = {B(IPC_T_STATUS) | B(IPC_T_CODE) | B(IPC_T_MESSAGE) | B(IPC_T_RETRY) | B(IPC_T_KEY) |
                          B(IPC_T_WRAPPED) | B(IPC_T_KEK_ID) | B(IPC_T_SECRET_VERSION) | B(IPC_T_KEY_VERSION),
                      B(IPC_T_STATUS), 0},
    [IPC_T_KEYREF] = {B(IPC_T_KEY_VERSION) | B(IPC_T_FLAGS) | B(IPC_T_CERT) | B(IPC_T_FORMER_CERT),
                      B(IPC_T_KEY_VERSION) | B(IPC_T_CERT), B(IPC_T_FORMER_CERT)},
    [IPC_T_SECRET] = {B(IPC_T_SECRET_VERSION) | B(IPC_T_KEK_ID) | B(IPC_T_WRAPPED),
                      B(IPC_T_SECRET_VERSION) | B(IPC_T_KEK_ID) | B(IPC_T_WRAPPED), 0},
    [IPC_T_MEMBER] = {B(IPC_T_EMAIL) | B(IPC_T_ROLE) | B(IPC_T_FLAGS) | B(IPC_T_ADDED) | B(IPC_T_CERT) | B(IPC_T_WRAP),
                      B(IPC_T_EMAIL) | B(IPC_T_ROLE), 0},
};

const char *ipc_strerror(int err)
{
    switch (err) {
    case IPC_OK: return "ok";
    case IPC_E_NOMEM: return "out of memory";
    case IPC_E_FRAME: return "malformed frame header";
    case IPC_E_TYPE: return "unknown message type";
    case IPC_E_FIELD: return "malformed field";
    case IPC_E_MISSING: return "required field missing";
    case IPC_E_IO: return "I/O error";
    case IPC_E_CLOSED: return "channel closed";
    case IPC_E_TIMEOUT: return "timed out";
    }
    return "unknown error";
}

static const struct schema *schema_for(uint32_t type)
{
    uint32_t base = type & ~(uint32_t)IPC_REPLY;

    if (type & IPC_REPLY)
        return base < IPC_REQ_END ? &replies[base] : NULL;
    if (type >= IPC_VIEW && type < IPC_REQ_END)
        return &requests[type];
    if (type >= IPC_CTL_CONFIG && type < IPC_CTL_END)
        return &controls[type - IPC_CTL_CONFIG];
    return NULL;
}

/* ---- decoding ------------------------------------------------------------ */

static uint16_t get16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

int ipc_header(const unsigned char *hdr, uint32_t *type, uint32_t *payload_len, uint64_t *cookie)
{
    *type = get32(hdr);
    *payload_len = get32(hdr + 4);
    *cookie = get64(hdr + 8);
    return *payload_len > IPC_MAX_PAYLOAD ? IPC_E_FRAME : IPC_OK;
}

/* A string: at least the NUL, the NUL last and only there, no control bytes. */
static bool valid_str(const unsigned char *p, uint32_t len)
{
    if (len == 0 || p[len - 1] != '\0')
        return false;
    for (uint32_t i = 0; i + 1 < len; i++)
        if (p[i] < 0x20 || p[i] == 0x7f)
            return false;
    return true;
}

/* An id: a string (valid_str) of [A-Za-z0-9._-], not empty. */
static bool valid_id(const unsigned char *p, uint32_t len)
{
    if (len < 2 || !valid_str(p, len))
        return false;
    for (uint32_t i = 0; i + 1 < len; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= 'a' && p[i] <= 'z') ||
              p[i] == '-' || p[i] == '_' || p[i] == '.'))
            return false;
    return true;
}

static int decode_fields(const struct schema *sc, const unsigned char *p, size_t len, ipc_msg *out, int depth);

static int check_value(enum ipc_tag tag, const unsigned char *v, uint32_t vlen, int depth)
{
    const struct field_def *fd = &fields[tag];
    ipc_msg sub;

    switch (fd->kind) {
    case K_U32:
        return vlen == 4 ? IPC_OK : IPC_E_FIELD;
    case K_U64:
        return vlen == 8 ? IPC_OK : IPC_E_FIELD;
    case K_STR:
        return vlen <= fd->max && valid_str(v, vlen) ? IPC_OK : IPC_E_FIELD;
    case K_ID:
        return vlen <= fd->max && valid_id(v, vlen) ? IPC_OK : IPC_E_FIELD;
    case K_BYTES:
        return vlen <= fd->max ? IPC_OK : IPC_E_FIELD;
    case K_NEST:
        if (depth > 0 || vlen > fd->max)
            return IPC_E_FIELD;
        return decode_fields(&nested[tag], v, vlen, &sub, depth + 1);
    case K_NONE:
        break;
    }
    return IPC_E_FIELD;
}

static int decode_fields(const struct schema *sc, const unsigned char *p, size_t len, ipc_msg *out, int depth)
{
    size_t off = 0;
    int rc;

    memset(out, 0, sizeof(*out));
    out->payload = p;
    out->len = len;
    while (off < len) {
        if (len - off < 6)
            return IPC_E_FIELD;
        uint16_t tag = get16(p + off);
        uint32_t vlen = get32(p + off + 2);
        off += 6;
        if (tag == IPC_T_NONE || tag >= IPC_T_COUNT || !(sc->allowed & B(tag)) || vlen > len - off)
            return IPC_E_FIELD;
        if ((out->present & B(tag)) && !(sc->repeated & B(tag)))
            return IPC_E_FIELD;
        if ((rc = check_value((enum ipc_tag)tag, p + off, vlen, depth)) != IPC_OK)
            return rc;
        if (!(out->present & B(tag))) {
            out->f[tag].p = p + off;
            out->f[tag].len = vlen;
            out->present |= B(tag);
        }
        out->count[tag]++;
        off += vlen;
    }
    return (out->present & sc->required) == sc->required ? IPC_OK : IPC_E_MISSING;
}

int ipc_decode(uint32_t type, uint64_t cookie, const unsigned char *payload, size_t len, ipc_msg *out)
{
    const struct schema *sc = schema_for(type);
    int rc;

    memset(out, 0, sizeof(*out));
    if (sc == NULL)
        return IPC_E_TYPE;
    if (len > IPC_MAX_PAYLOAD)
        return IPC_E_FRAME;
    rc = decode_fields(sc, payload, len, out, 0);
    if (rc != IPC_OK) {
        memset(out, 0, sizeof(*out));
        return rc;
    }
    out->type = type;
    out->cookie = cookie;
    return IPC_OK;
}

bool ipc_has(const ipc_msg *m, enum ipc_tag tag)
{
    return tag < IPC_T_COUNT && (m->present & B(tag)) != 0;
}

uint32_t ipc_u32(const ipc_msg *m, enum ipc_tag tag, uint32_t dflt)
{
    return ipc_has(m, tag) && fields[tag].kind == K_U32 ? get32(m->f[tag].p) : dflt;
}

uint64_t ipc_u64(const ipc_msg *m, enum ipc_tag tag, uint64_t dflt)
{
    return ipc_has(m, tag) && fields[tag].kind == K_U64 ? get64(m->f[tag].p) : dflt;
}

uint64_t ipc_deadline_ms(double monotonic_s)
{
    return monotonic_s > 0 ? (uint64_t)(monotonic_s * 1000.0) : 0;
}

bool ipc_deadline_passed(const ipc_msg *m)
{
    uint64_t d = ipc_u64(m, IPC_T_DEADLINE, 0);

    /* 0: none (a frame from an older network process, or an untimed call). */
    return d != 0 && ipc_deadline_ms(util_monotonic_s()) > d;
}

const char *ipc_str(const ipc_msg *m, enum ipc_tag tag)
{
    return ipc_has(m, tag) && (fields[tag].kind == K_STR || fields[tag].kind == K_ID) ? (const char *)m->f[tag].p
                                                                                       : NULL;
}

int ipc_bytes(const ipc_msg *m, enum ipc_tag tag, const unsigned char **p, size_t *len)
{
    *p = NULL;
    *len = 0;
    if (!ipc_has(m, tag))
        return -1;
    *p = m->f[tag].p;
    *len = m->f[tag].len;
    return 0;
}

void ipc_iter_init(ipc_iter *it, const ipc_msg *m, enum ipc_tag tag)
{
    it->m = m;
    it->tag = tag;
    it->off = 0;
}

int ipc_iter_next(ipc_iter *it, ipc_val *val, ipc_msg *sub)
{
    const ipc_msg *m = it->m;

    /* The payload was validated by ipc_decode: lengths are in range. */
    while (it->off + 6 <= m->len) {
        uint16_t tag = get16(m->payload + it->off);
        uint32_t vlen = get32(m->payload + it->off + 2);
        const unsigned char *v = m->payload + it->off + 6;
        it->off += 6 + (size_t)vlen;
        if (tag != it->tag)
            continue;
        if (val != NULL) {
            val->p = v;
            val->len = vlen;
        }
        if (sub != NULL && fields[tag].kind == K_NEST && decode_fields(&nested[tag], v, vlen, sub, 1) != IPC_OK)
            return 0;
        return 1;
    }
    return 0;
}

/* ---- encoding ------------------------------------------------------------ */

void ipc_buf_init(ipc_buf *b) { memset(b, 0, sizeof(*b)); }

void ipc_buf_free(ipc_buf *b)
{
    if (b->p != NULL)
        OPENSSL_cleanse(b->p, b->cap);
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* Room for n more bytes; growth wipes what it leaves behind. */
static int reserve(ipc_buf *b, size_t n)
{
    size_t need, cap;
    unsigned char *np;

    if (b->bad)
        return -1;
    if (n > IPC_MAX_PAYLOAD + IPC_HDR_LEN - b->len) {
        b->bad = IPC_E_FIELD;
        return -1;
    }
    need = b->len + n;
    if (need <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 512;
    while (cap < need)
        cap *= 2;
    if ((np = util_secret_grow(b->p, b->len, b->cap, cap)) == NULL) {
        b->bad = IPC_E_NOMEM;
        return -1;
    }
    b->p = np;
    b->cap = cap;
    return 0;
}

static void put_raw(ipc_buf *b, const void *p, size_t n)
{
    if (reserve(b, n) == 0) {
        if (n > 0)
            memcpy(b->p + b->len, p, n);
        b->len += n;
    }
}

static void put_field(ipc_buf *b, enum ipc_tag tag, const void *p, size_t n)
{
    uint16_t t = (uint16_t)tag;
    uint32_t l = (uint32_t)n;

    if (n > UINT32_MAX || (fields[tag].max != 0 && n > fields[tag].max)) {
        b->bad = IPC_E_FIELD;
        return;
    }
    put_raw(b, &t, 2);
    put_raw(b, &l, 4);
    put_raw(b, p, n);
}

void ipc_begin(ipc_buf *b, uint32_t type, uint64_t cookie)
{
    unsigned char hdr[IPC_HDR_LEN] = {0};

    memcpy(hdr, &type, 4);
    memcpy(hdr + 8, &cookie, 8);
    if (b->p != NULL)
        OPENSSL_cleanse(b->p, b->len);
    b->len = 0;
    b->nest_at = 0;
    b->bad = 0;
    put_raw(b, hdr, sizeof(hdr));
}

void ipc_put_u32(ipc_buf *b, enum ipc_tag tag, uint32_t v) { put_field(b, tag, &v, 4); }
void ipc_put_u64(ipc_buf *b, enum ipc_tag tag, uint64_t v) { put_field(b, tag, &v, 8); }

void ipc_put_str(ipc_buf *b, enum ipc_tag tag, const char *s)
{
    if (s != NULL)
        put_field(b, tag, s, strlen(s) + 1);
}

void ipc_put_bytes(ipc_buf *b, enum ipc_tag tag, const void *p, size_t len)
{
    put_field(b, tag, p, len);
}

void ipc_nest_begin(ipc_buf *b, enum ipc_tag tag)
{
    uint16_t t = (uint16_t)tag;
    uint32_t zero = 0;

    if (b->nest_at != 0) {
        b->bad = IPC_E_FIELD;
        return;
    }
    put_raw(b, &t, 2);
    b->nest_at = b->len;
    put_raw(b, &zero, 4);
}

void ipc_nest_end(ipc_buf *b)
{
    uint32_t n;

    if (b->nest_at == 0 || b->bad) {
        b->bad = b->bad ? b->bad : IPC_E_FIELD;
        return;
    }
    n = (uint32_t)(b->len - b->nest_at - 4);
    memcpy(b->p + b->nest_at, &n, 4);
    b->nest_at = 0;
}

int ipc_end(ipc_buf *b)
{
    uint32_t n;

    if (b->bad)
        return b->bad;
    if (b->nest_at != 0 || b->len < IPC_HDR_LEN || b->len - IPC_HDR_LEN > IPC_MAX_PAYLOAD)
        return IPC_E_FIELD;
    n = (uint32_t)(b->len - IPC_HDR_LEN);
    memcpy(b->p + 4, &n, 4);
    return IPC_OK;
}

void ipc_set_cookie(ipc_buf *b, uint64_t cookie)
{
    if (b->len >= IPC_HDR_LEN)
        memcpy(b->p + 8, &cookie, 8);
}

/* ---- blocking I/O ---------------------------------------------------------- */

static int wait_fd(int fd, short events, int timeout_ms)
{
    struct pollfd pfd = {.fd = fd, .events = events};
    int n;

    do
        n = poll(&pfd, 1, timeout_ms);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return IPC_E_IO;
    return n == 0 ? IPC_E_TIMEOUT : IPC_OK;
}

int ipc_write_frame(int sock, const ipc_buf *b, int fd, int timeout_ms)
{
    size_t off = 0;
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;

    if (b->bad || b->len < IPC_HDR_LEN)
        return IPC_E_FIELD;
    /* timeout_ms bounds the whole frame, not each wait: a peer that takes
     * a little just before each wait would end (a compromised network
     * process reading its control channel slowly) would otherwise hold
     * the caller for up to a wait per socket buffer's worth of a 16 MiB
     * frame, minutes instead of timeout_ms. */
    const double deadline = timeout_ms >= 0 ? util_monotonic_s() + timeout_ms / 1000.0 : 0;
    while (off < b->len) {
        struct iovec iov = {.iov_base = b->p + off, .iov_len = b->len - off};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        if (off == 0 && fd >= 0) {
            memset(&ctl, 0, sizeof(ctl));
            mh.msg_control = ctl.buf;
            mh.msg_controllen = sizeof(ctl.buf);
            struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &fd, sizeof(int));
        }
        /* MSG_DONTWAIT: on a blocking socket (a control channel) a peer
         * that reads nothing would otherwise hold sendmsg, and this
         * caller, for ever instead of timeout_ms. */
        ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                int left = -1;
                if (timeout_ms >= 0) {
                    double ms = (deadline - util_monotonic_s()) * 1000.0;
                    if (ms <= 0)
                        return IPC_E_TIMEOUT;
                    left = ms > timeout_ms ? timeout_ms : (int)ms + 1;
                }
                int rc = wait_fd(sock, POLLOUT, left);
                if (rc != IPC_OK)
                    return rc;
                continue;
            }
            return errno == EPIPE || errno == ECONNRESET ? IPC_E_CLOSED : IPC_E_IO;
        }
        off += (size_t)n;
    }
    return IPC_OK;
}

void ipc_reader_init(ipc_reader *r) { memset(r, 0, sizeof(*r)); }

void ipc_reader_free(ipc_reader *r)
{
    for (unsigned i = 0; i < r->nfds; i++)
        close(r->fds[i]);
    if (r->buf != NULL)
        OPENSSL_cleanse(r->buf, r->cap);
    free(r->buf);
    memset(r, 0, sizeof(*r));
}

static void keep_fds(ipc_reader *r, struct msghdr *mh)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c != NULL; c = CMSG_NXTHDR(mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (r->nfds < sizeof(r->fds) / sizeof(r->fds[0]))
                r->fds[r->nfds++] = fd;
            else
                close(fd); /* more than a control channel ever carries */
        }
    }
}

int ipc_reader_fill(ipc_reader *r, int sock)
{
    union {
        char buf[CMSG_SPACE(4 * sizeof(int))];
        struct cmsghdr align;
    } ctl;

    if (r->cap - r->len < 65536) {
        /* Room for the largest frame plus one read's worth, no more. */
        const size_t limit = IPC_MAX_PAYLOAD + IPC_HDR_LEN + 65536;
        size_t cap = r->cap ? r->cap * 2 : 131072;
        if (cap > limit)
            cap = limit;
        if (cap <= r->cap)
            return IPC_E_FRAME;
        unsigned char *np = util_secret_grow(r->buf, r->len, r->cap, cap);
        if (np == NULL)
            return IPC_E_NOMEM;
        r->buf = np;
        r->cap = cap;
    }
    for (;;) {
        struct iovec iov = {.iov_base = r->buf + r->len, .iov_len = r->cap - r->len};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                            .msg_controllen = sizeof(ctl.buf)};
        ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? IPC_OK : IPC_E_IO;
        keep_fds(r, &mh);
        if (n == 0)
            return IPC_E_CLOSED;
        r->len += (size_t)n;
        return IPC_OK;
    }
}

int ipc_reader_peek(ipc_reader *r, const unsigned char **frame, size_t *frame_len)
{
    uint32_t type, plen;
    uint64_t cookie;

    *frame = NULL;
    *frame_len = 0;
    if (r->len < IPC_HDR_LEN)
        return 0;
    if (ipc_header(r->buf, &type, &plen, &cookie) != IPC_OK)
        return IPC_E_FRAME;
    if (r->len - IPC_HDR_LEN < plen)
        return 0;
    *frame = r->buf;
    *frame_len = IPC_HDR_LEN + (size_t)plen;
    return 1;
}

void ipc_reader_consume(ipc_reader *r, size_t n)
{
    if (n > r->len)
        n = r->len;
    OPENSSL_cleanse(r->buf, n);
    memmove(r->buf, r->buf + n, r->len - n);
    r->len -= n;
}

int ipc_reader_take_fd(ipc_reader *r)
{
    int fd;

    if (r->nfds == 0)
        return -1;
    fd = r->fds[0];
    memmove(r->fds, r->fds + 1, (r->nfds - 1) * sizeof(int));
    r->nfds--;
    return fd;
}

int ipc_reader_each(ipc_reader *r, int sock, ipc_ctl_fn on_frame, void *arg)
{
    const unsigned char *frame;
    size_t flen;
    int rc = ipc_reader_fill(r, sock);

    if (rc != IPC_OK && rc != IPC_E_NOMEM)
        return rc;
    while ((rc = ipc_reader_peek(r, &frame, &flen)) == 1) {
        uint32_t type, plen;
        uint64_t cookie;
        ipc_msg m;
        ipc_header(frame, &type, &plen, &cookie);
        int ok = ipc_decode(type, cookie, frame + IPC_HDR_LEN, plen, &m) == IPC_OK;
        on_frame(arg, type, ok ? &m : NULL);
        ipc_reader_consume(r, flen);
    }
    return rc < 0 ? rc : IPC_OK;
}

/* ---- libevent channels ------------------------------------------------------ */

int ipc_ev_next(struct evbuffer *in, uint32_t *type, uint64_t *cookie, unsigned char **payload, size_t *len)
{
    unsigned char hdr[IPC_HDR_LEN];
    uint32_t plen;
    unsigned char *p;

    *payload = NULL;
    *len = 0;
    if (evbuffer_get_length(in) < IPC_HDR_LEN)
        return 0;
    if (evbuffer_copyout(in, hdr, sizeof(hdr)) != (ev_ssize_t)sizeof(hdr))
        return IPC_E_FRAME;
    if (ipc_header(hdr, type, &plen, cookie) != IPC_OK)
        return IPC_E_FRAME;
    if (evbuffer_get_length(in) - IPC_HDR_LEN < plen)
        return 0;
    if ((p = malloc(plen > 0 ? plen : 1)) == NULL)
        return IPC_E_NOMEM;
    evbuffer_drain(in, IPC_HDR_LEN);
    if (plen > 0 && evbuffer_remove(in, p, plen) != (int)plen) {
        free(p);
        return IPC_E_FRAME;
    }
    *payload = p;
    *len = plen;
    return 1;
}

void ipc_payload_free(unsigned char *payload, size_t len)
{
    if (payload != NULL)
        OPENSSL_cleanse(payload, len);
    free(payload);
}

static void wipe_sent(const void *data, size_t len, void *cap)
{
    OPENSSL_cleanse((void *)data, (size_t)(uintptr_t)cap > len ? (size_t)(uintptr_t)cap : len);
    free((void *)data);
}

int ipc_ev_fill(int fd, struct evbuffer *in)
{
    unsigned char buf[65536];
    ssize_t n = read(fd, buf, sizeof(buf));
    int rc = IPC_OK;

    if (n == 0)
        rc = IPC_E_CLOSED;
    else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        rc = IPC_E_IO;
    else if (n > 0 && evbuffer_add(in, buf, (size_t)n) != 0)
        rc = IPC_E_NOMEM;
    /* Answers carry content keys. */
    if (n > 0)
        OPENSSL_cleanse(buf, (size_t)n);
    return rc;
}

int ipc_ev_read_frames(int fd, struct evbuffer *in, ipc_frame_fn on_frame, void *arg)
{
    int rc = ipc_ev_fill(fd, in);

    while (rc == IPC_OK) {
        uint32_t type = 0;
        uint64_t cookie = 0;
        unsigned char *payload = NULL;
        size_t len = 0;
        int got = ipc_ev_next(in, &type, &cookie, &payload, &len);
        if (got <= 0)
            return got; /* 0 (IPC_OK): the rest of a frame is still to come */
        if (on_frame(arg, type, cookie, payload, len) != 0)
            return IPC_OK; /* the link is gone or new: its buffer is not ours to read */
    }
    return rc;
}

int ipc_ev_queue(struct evbuffer *out, ipc_buf *b)
{
    int rc = IPC_OK;

    if (b->len > 0) {
        /* The buffer itself moves to out (no copy), wiped once written. */
        if (evbuffer_add_reference(out, b->p, b->len, wipe_sent, (void *)(uintptr_t)b->cap) != 0)
            rc = IPC_E_NOMEM;
        else
            ipc_buf_init(b);
    }
    ipc_buf_free(b);
    return rc;
}

int ipc_ev_write(int fd, struct evbuffer *out, ipc_buf *b)
{
    size_t off = 0;
    int rc = 0;

    while (evbuffer_get_length(out) == 0 && off < b->len) {
        ssize_t n = write(fd, b->p + off, b->len - off);
        if (n > 0)
            off += (size_t)n;
        else if (n < 0 && errno == EINTR)
            continue;
        else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        else {
            rc = IPC_E_IO;
            goto out;
        }
    }
    if (off < b->len) {
        /* The rest waits in a copy of its own that is wiped once written
         * (or when out is freed): answers carry content keys. */
        size_t rest = b->len - off;
        unsigned char *copy = malloc(rest);
        rc = IPC_E_NOMEM;
        if (copy != NULL) {
            memcpy(copy, b->p + off, rest);
            if (evbuffer_add_reference(out, copy, rest, wipe_sent, (void *)(uintptr_t)rest) == 0)
                rc = 1;
            else
                wipe_sent(copy, rest, (void *)(uintptr_t)rest);
        }
    }
out:
    ipc_buf_free(b);
    return rc;
}

static void libevent_line(int severity, const char *msg)
{
    enum log_level level = severity >= EVENT_LOG_ERR    ? LOG_LVL_ERROR
                           : severity == EVENT_LOG_WARN ? LOG_LVL_WARN
                           : severity == EVENT_LOG_MSG  ? LOG_LVL_INFO
                                                        : LOG_LVL_DEBUG;
    log_emit(level, "libevent", "libevent detail=\"%s\"", log_qs(msg));
}

void ipc_libevent_log_to_ours(void)
{
    event_set_log_callback(libevent_line);
}
