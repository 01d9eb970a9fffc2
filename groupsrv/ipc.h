/*
 * ipc.h: the messages between the processes of `groupsrv serve` (the
 * supervisor, the key holder and the network process; SECURITY.md,
 * "Processes"). Both sides of every channel include this header and
 * nothing else of each other.
 *
 * Framing (imsg-style, host byte order: both ends run on one machine):
 *
 *   u32 type | u32 payload length | u64 cookie | payload
 *
 * The cookie pairs a reply with its request (a reply has type
 * request | IPC_REPLY). The payload is a list of fields, each
 *
 *   u16 tag | u32 length | value
 *
 * Every tag has one kind (u32, u64, string, bytes or a nested list of
 * fields) and a cap on its length; every message type says which tags it
 * may carry, which it must, and which may repeat. ipc_decode checks all
 * of it before anyone looks at a value: unknown tags, duplicates, wrong
 * lengths, strings with a NUL inside or non-printable bytes, missing
 * required fields and trailing bytes are refused. Strings travel with
 * their terminating NUL, so a decoded string is usable in place.
 *
 * Ownership: an ipc_msg points into the caller's payload buffer (borrowed;
 * it must outlive the msg). An ipc_buf owns its bytes and wipes them when
 * freed: frames may carry content keys.
 *
 * Functions return 0 / IPC_OK, or a negative IPC_E* code (ipc_strerror).
 */
#ifndef GS_IPC_H
#define GS_IPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IPC_HDR_LEN 16
/* Largest payload either side accepts: an unwrap-batch of 10,000 items, a
 * re-wrap to 10,000 members with RSA-4096 certificates (about 10 MB with
 * their addresses), or a client CA file full of CRLs. */
#define IPC_MAX_PAYLOAD (32u * 1024 * 1024)

enum ipc_err {
    IPC_OK = 0,
    IPC_E_NOMEM = -1,
    IPC_E_FRAME = -2,   /* header unusable: the stream cannot be trusted any more */
    IPC_E_TYPE = -3,    /* unknown message type (the frame itself is sound) */
    IPC_E_FIELD = -4,   /* a field is unknown, repeated, too long or malformed */
    IPC_E_MISSING = -5, /* a required field is absent */
    IPC_E_IO = -6,      /* read/write/sendmsg failed (errno kept) */
    IPC_E_CLOSED = -7,  /* the peer closed the channel */
    IPC_E_TIMEOUT = -8,
};
const char *ipc_strerror(int err);

enum ipc_type {
    /* network process -> key holder (the reply: type | IPC_REPLY) */
    IPC_VIEW = 1,      /* a group's public data (certificates, methods, versions) */
    IPC_UNWRAP,        /* 0..N unwrap items for one caller (0 items: authorisation only) */
    IPC_REWRAP,        /* the exploder's rewrap: to the group secret key, or to every member */
    IPC_SECRET_KEYS,   /* the group secret keys wrapped to the caller's key */
    IPC_CERTIFY,       /* a membership certificate for a public key (none: authorisation only) */
    IPC_SIGN,          /* a TLS handshake signature with the [tls] key on the token */
    IPC_INFO,          /* the local CA certificate and the token TLS key's public key */
    IPC_HEALTH,        /* token, audit log and database state */
    IPC_STATS,         /* token counters for /metrics */
    IPC_MEMBERS,       /* admin: list members */
    IPC_MEMBER_GET,
    IPC_MEMBER_PUT,
    IPC_MEMBER_DELETE,
    IPC_GROUP_CREATE,
    IPC_AUTHZ,         /* may this caller do T_ACTION (on T_GROUP)? before answering an input error */
    IPC_REQ_END,
    /* the supervisor's control channels to its children */
    IPC_CTL_CONFIG = 0x100, /* -> network: the config file's text */
    IPC_CTL_TLS,            /* -> network: the TLS files' contents (start and SIGHUP) */
    IPC_CTL_LISTEN,         /* -> network: a listening socket (SCM_RIGHTS) */
    IPC_CTL_LINK,           /* -> both: one end of a network<->key holder link (SCM_RIGHTS) */
    IPC_CTL_GO,             /* -> network: everything sent, start serving */
    IPC_CTL_READY,          /* <- both: started; the supervisor may go on */
    IPC_CTL_END,
    /* A reply has the request's type with this bit; IPC_REPLY alone answers
     * a request whose type was not understood. */
    IPC_REPLY = 0x8000,
};

/* Field tags. Kinds and caps are in ipc.c's table; keep below 64. */
enum ipc_tag {
    IPC_T_NONE = 0,
    IPC_T_REQUEST_ID,   /* str: the HTTP request id (audited) */
    IPC_T_CALLER,       /* u32 ipc_caller */
    IPC_T_IDENTITY,     /* str: identity certificate's identity, or a membership certificate's group */
    IPC_T_SPKI,         /* bytes: the caller's (or the TLS key's) public key, DER SubjectPublicKeyInfo */
    IPC_T_GROUP,        /* str */
    IPC_T_GEN,          /* u64: the key holder's data generation */
    IPC_T_ITEM,         /* nested, repeated: one unwrap item */
    IPC_T_DELIVER,      /* u32 ipc_deliver */
    IPC_T_KEY_VERSION,  /* u32: 0 = the current version */
    IPC_T_ALG,          /* u32 ipc_alg */
    IPC_T_ENC_KEY,      /* bytes: the encrypted content key (RSA) */
    IPC_T_CEK_LEN,      /* u32: 0, 16, 24 or 32 */
    IPC_T_PEER_POINT,   /* bytes: ECDH originator point */
    IPC_T_KDF_SHA256,   /* u32: 1 = X9.63 KDF with SHA-256, 0 = SHA-1 */
    IPC_T_SHARED_INFO,  /* bytes: DER ECC-CMS-SharedInfo */
    IPC_T_KEK_LEN,      /* u32: 16, 24 or 32 */
    IPC_T_WRAPPED,      /* bytes: an AES-wrapped key (ECDH input) or a key wrapped by the token (answer) */
    IPC_T_TO,           /* u32 ipc_rewrap_to */
    IPC_T_DIGEST,       /* bytes: 20..64, to be signed */
    IPC_T_FLAGS,        /* u32 ipc_flag bits */
    IPC_T_EMAIL,        /* str */
    IPC_T_ROLE,         /* u32 gs_role */
    IPC_T_CERT,         /* bytes: a certificate, DER */
    IPC_T_NAME,         /* str: group name (create) */
    IPC_T_ADDRESS,      /* str */
    IPC_T_KEYSPEC,      /* str */
    IPC_T_METHODS,      /* u32 gs_method bits */
    IPC_T_STATUS,       /* u32: HTTP status the answer stands for */
    IPC_T_CODE,         /* str: the API error code */
    IPC_T_MESSAGE,      /* str */
    IPC_T_RETRY,        /* u32: Retry-After seconds */
    IPC_T_RESULT,       /* nested, repeated: one item's answer */
    IPC_T_KEY,          /* bytes: a plain content key (method F) */
    IPC_T_KEK_ID,       /* bytes: 16 */
    IPC_T_SECRET_VERSION, /* u32 */
    IPC_T_DER,          /* bytes, repeated: one KeyTransRecipientInfo per member */
    IPC_T_KEYREF,       /* nested, repeated: a key version of a group (view) */
    IPC_T_SECRET,       /* nested, repeated: a wrapped secret key version */
    IPC_T_MEMBER,       /* nested, repeated: a member record */
    IPC_T_ADDED,        /* u64: unix time */
    IPC_T_CA_CERT,      /* bytes: DER */
    IPC_T_SIG,          /* bytes: DER ECDSA-Sig-Value */
    IPC_T_TOKEN_STATE,  /* str: "ok" or what is wrong */
    IPC_T_AUDIT_STATE,  /* str */
    IPC_T_DB_STATE,     /* str */
    IPC_T_COUNTERS,     /* bytes: packed u64 counters (metrics_token_snapshot) */
    IPC_T_TEXT,         /* bytes: the config file */
    IPC_T_CERT_PEM,     /* bytes */
    IPC_T_KEY_PEM,      /* bytes (a secret: wiped) */
    IPC_T_CA_PEM,       /* bytes */
    IPC_T_INDEX,        /* u32 */
    IPC_T_CSR_SPKI,     /* bytes: the public key a membership certificate is for */
    IPC_T_ACTION,       /* u32 ipc_action */
    IPC_T_KEY_POLICY,   /* str: a group's key policy as discovery shows it, compact JSON */
    IPC_T_WRAP,         /* u32 gs_wrap: a member's wrap (member, put), a group's member wrap (view, create) */
    IPC_T_KEY_TRANSPORTS, /* u32 ipc_kt bits the current key accepts (view); absent: the token cannot say now */
    IPC_T_FORMER_CERT,  /* bytes, repeated in a keyref: a certificate the version's replaced, DER */
    IPC_T_DEADLINE,     /* u64: CLOCK_MONOTONIC ms after which the request's client has its 503 (ipc_deadline_ms) */
    IPC_T_COUNT
};

enum ipc_caller { IPC_CALLER_IDENTITY = 1, IPC_CALLER_MEMBERSHIP = 2 };
enum ipc_deliver { IPC_DELIVER_TLS = 1, IPC_DELIVER_RECIPIENT_KEY, IPC_DELIVER_GROUP_SECRET };
enum ipc_alg { IPC_ALG_OAEP_SHA1 = 1, IPC_ALG_OAEP_SHA256, IPC_ALG_PKCS1V15, IPC_ALG_ECDH };
enum ipc_rewrap_to { IPC_TO_GROUP_SECRET = 1, IPC_TO_MEMBERS };
enum ipc_action {
    IPC_ACT_UNWRAP = 1, IPC_ACT_REWRAP, IPC_ACT_SECRET_KEYS, IPC_ACT_MEMBER_LIST, IPC_ACT_MEMBER_GET,
    IPC_ACT_MEMBER_ADD, IPC_ACT_MEMBER_REMOVE, IPC_ACT_GROUP_CREATE,
};
enum ipc_flag {
    IPC_FLAG_CURRENT = 1u << 0,      /* keyref/secret: the current version */
    IPC_FLAG_EC = 1u << 1,           /* keyref: an EC key (else RSA) */
    IPC_FLAG_PKCS1V15 = 1u << 2,     /* view/create: the group allows PKCS#1 v1.5 */
    IPC_FLAG_HAS_CERT = 1u << 3,     /* member: a certificate is recorded */
    IPC_FLAG_NOT_MODIFIED = 1u << 4, /* view: the caller's generation is current */
    IPC_FLAG_RELOAD = 1u << 5,       /* info: find and check the TLS key again (SIGHUP) */
    IPC_FLAG_CREATED = 1u << 6,      /* member put: a new member (201) */
    IPC_FLAG_FROM_RI = 1u << 7,      /* item: the key version was read from a RecipientInfo */
    IPC_FLAG_OAEP_ONLY = 1u << 8,    /* create: "allow_pkcs1v15": false (RSA-OAEP only) */
    IPC_FLAG_REPLICABLE = 1u << 9,   /* create: "replicable": true */
    IPC_FLAG_KEY_TRANSPORTS = 1u << 10, /* view request: say the key transports (discovery; probes the token) */
    IPC_FLAG_ROTATE_ELSEWHERE = 1u << 11, /* member delete: nothing rotated (a clone: the origin rotates) */
    IPC_FLAG_SECRET_NO_WRAP = 1u << 12,   /* view: the current secret key cannot wrap through this module */
};
/* Key transports a group's current key accepts (discovery's "key_transports"). */
enum ipc_kt { IPC_KT_OAEP = 1u << 0, IPC_KT_OAEP256 = 1u << 1, IPC_KT_PKCS1V15 = 1u << 2, IPC_KT_ECDH = 1u << 3 };

/* A request's deadline (IPC_T_DEADLINE): CLOCK_MONOTONIC in milliseconds,
 * one clock for every process of the host (the network process and the
 * key holder run on one). The network process answers 503 once it is
 * past; the key holder then drops the request unrun (no token call, no
 * audit record: nothing was done and nothing answered 200):
 * ipc_deadline_ms and ipc_deadline_passed below. */
/* ---- decoding ------------------------------------------------------------ */

typedef struct ipc_val {
    const unsigned char *p;
    uint32_t len;
} ipc_val;

typedef struct ipc_msg {
    uint32_t type;
    uint64_t cookie;
    const unsigned char *payload;
    size_t len;
    uint64_t present;                 /* bit per tag */
    ipc_val f[IPC_T_COUNT];           /* first occurrence of each tag */
    uint32_t count[IPC_T_COUNT];      /* occurrences (repeated tags) */
} ipc_msg;

/* Parses a frame header: IPC_OK with *type, *payload_len and *cookie set,
 * or IPC_E_FRAME when the length exceeds IPC_MAX_PAYLOAD. hdr holds
 * IPC_HDR_LEN bytes. The type is not checked here (ipc_decode does). */
int ipc_header(const unsigned char *hdr, uint32_t *type, uint32_t *payload_len, uint64_t *cookie);

/* Validates payload against type's schema and fills out (borrowing
 * payload). IPC_E_TYPE, IPC_E_FIELD, IPC_E_MISSING; on failure out is
 * cleared. */
int ipc_decode(uint32_t type, uint64_t cookie, const unsigned char *payload, size_t len, ipc_msg *out);

bool ipc_has(const ipc_msg *m, enum ipc_tag tag);
uint32_t ipc_u32(const ipc_msg *m, enum ipc_tag tag, uint32_t dflt);
uint64_t ipc_u64(const ipc_msg *m, enum ipc_tag tag, uint64_t dflt);
/* NUL-terminated, in the payload; NULL when absent. */
const char *ipc_str(const ipc_msg *m, enum ipc_tag tag);
/* 0 and the bytes, or -1 when absent (then *p NULL, *len 0). */
int ipc_bytes(const ipc_msg *m, enum ipc_tag tag, const unsigned char **p, size_t *len);

/* Iterates over every occurrence of a repeated tag; a nested field is
 * decoded into *sub (validated already by ipc_decode). Returns 1 while
 * there is a next one, 0 at the end. */
typedef struct ipc_iter {
    const ipc_msg *m;
    enum ipc_tag tag;
    size_t off;
} ipc_iter;
void ipc_iter_init(ipc_iter *it, const ipc_msg *m, enum ipc_tag tag);
int ipc_iter_next(ipc_iter *it, ipc_val *val, ipc_msg *sub);

/* A request's deadline (IPC_T_DEADLINE), see above ipc_deadline_passed. */
uint64_t ipc_deadline_ms(double monotonic_s);
/* True when a message carries a deadline and it is past now. */
bool ipc_deadline_passed(const ipc_msg *m);

/* ---- encoding ------------------------------------------------------------ */

typedef struct ipc_buf {
    unsigned char *p;
    size_t len, cap;
    size_t nest_at;   /* offset of the open nested field's length, 0 if none */
    int bad;          /* latched: out of memory or over IPC_MAX_PAYLOAD */
} ipc_buf;

void ipc_buf_init(ipc_buf *b);
void ipc_buf_free(ipc_buf *b);          /* wipes; the buffer can be used again */
/* Starts a frame (resets b). */
void ipc_begin(ipc_buf *b, uint32_t type, uint64_t cookie);
void ipc_put_u32(ipc_buf *b, enum ipc_tag tag, uint32_t v);
void ipc_put_u64(ipc_buf *b, enum ipc_tag tag, uint64_t v);
void ipc_put_str(ipc_buf *b, enum ipc_tag tag, const char *s);   /* NULL: nothing */
void ipc_put_bytes(ipc_buf *b, enum ipc_tag tag, const void *p, size_t len);
void ipc_nest_begin(ipc_buf *b, enum ipc_tag tag);
void ipc_nest_end(ipc_buf *b);
/* Completes the header. IPC_OK, or IPC_E_NOMEM / IPC_E_FIELD (too large,
 * unclosed nesting). */
int ipc_end(ipc_buf *b);
/* Rewrites the cookie of a finished frame (the link assigns cookies). */
void ipc_set_cookie(ipc_buf *b, uint64_t cookie);

/* ---- blocking I/O (control channels, synchronous calls) ------------------ */

/* Writes the whole frame, with fd (or -1) attached by SCM_RIGHTS to its
 * first byte. Retries on EINTR/EAGAIN (polling) until timeout_ms (-1: no
 * limit) after the call: the whole frame within it, not each part. */
int ipc_write_frame(int sock, const ipc_buf *b, int fd, int timeout_ms);

/* A reader for stream sockets that also collects passed descriptors. */
typedef struct ipc_reader {
    unsigned char *buf;
    size_t len, cap;
    int fds[16];
    unsigned nfds;
} ipc_reader;
void ipc_reader_init(ipc_reader *r);
void ipc_reader_free(ipc_reader *r);    /* wipes; closes descriptors not taken */
/* Reads what the socket has (once; non-blocking sockets give IPC_OK with
 * nothing new). IPC_E_CLOSED at end of stream. */
int ipc_reader_fill(ipc_reader *r, int sock);
/* The next complete frame in the buffer: 1 with *frame (header included)
 * and *frame_len, 0 if incomplete, IPC_E_FRAME if the header is bad. The
 * frame stays valid until ipc_reader_consume. */
int ipc_reader_peek(ipc_reader *r, const unsigned char **frame, size_t *frame_len);
void ipc_reader_consume(ipc_reader *r, size_t n);
/* The oldest received descriptor not yet taken, or -1. */
int ipc_reader_take_fd(ipc_reader *r);
/* A readable control channel: one ipc_reader_fill, then every whole frame
 * to on_frame in order, decoded (m is NULL when the frame is malformed;
 * it borrows the reader's buffer until on_frame returns; descriptors
 * passed with it are taken with ipc_reader_take_fd). IPC_OK (also when
 * out of memory for now), or what ends the channel: IPC_E_CLOSED,
 * IPC_E_IO, IPC_E_FRAME. */
typedef void (*ipc_ctl_fn)(void *arg, uint32_t type, const struct ipc_msg *m);
int ipc_reader_each(ipc_reader *r, int sock, ipc_ctl_fn on_frame, void *arg);

/* ---- libevent channels (the links between the network process and the
 * key holder) ------------------------------------------------------------ */
struct evbuffer;

/* libevent's own messages ("[warn] ..." on stderr by default) as records of
 * log.h, msg="libevent" with its text in detail=, so that serve's log stays
 * one key=value record per line. For each process of serve, before its
 * first event base; a forked child keeps it. */
void ipc_libevent_log_to_ours(void);

/* The next frame of a libevent input buffer: 1 with its payload moved into
 * a fresh buffer (*payload, never NULL; free with ipc_payload_free), 0
 * when the frame is incomplete, IPC_E_FRAME when the header is unusable
 * (the channel must be closed), IPC_E_NOMEM. */
int ipc_ev_next(struct evbuffer *in, uint32_t *type, uint64_t *cookie, unsigned char **payload, size_t *len);
void ipc_payload_free(unsigned char *payload, size_t len); /* wipes */
/* One read(2) of a non-blocking socket appended to in: IPC_OK (also when
 * there was nothing to read), IPC_E_CLOSED at end of stream, IPC_E_IO,
 * IPC_E_NOMEM. One read per wakeup, so that a busy channel cannot keep an
 * event loop from its others. */
int ipc_ev_fill(int fd, struct evbuffer *in);
/* A readable link: one ipc_ev_fill, then every whole frame in `in`, in
 * order, to on_frame, which owns the payload (free it with
 * ipc_payload_free) and returns 0 to go on or nonzero when it closed or
 * replaced the link (nothing more is read then). IPC_OK, or what ends the
 * link: IPC_E_CLOSED, IPC_E_IO, IPC_E_NOMEM, or IPC_E_FRAME (a header
 * that cannot be trusted); the caller closes it. */
typedef int (*ipc_frame_fn)(void *arg, uint32_t type, uint64_t cookie, unsigned char *payload, size_t len);
int ipc_ev_read_frames(int fd, struct evbuffer *in, ipc_frame_fn on_frame, void *arg);
/* Sends a finished frame on a non-blocking socket whose unsent bytes wait
 * in out: written at once as far as the socket takes it when out is empty,
 * the rest appended to out (wiped once written). 1 when out holds bytes
 * (the caller waits for EV_WRITE and flushes with evbuffer_write), 0 when
 * all went, IPC_E_IO when the socket is broken (nothing kept), IPC_E_NOMEM.
 * b is wiped and emptied in every case. */
int ipc_ev_write(int fd, struct evbuffer *out, ipc_buf *b);
/* Appends a finished frame to out without writing it (the caller writes
 * out later, several frames in one go): b's buffer moves there and is
 * wiped and freed once written or when out is freed. IPC_OK, or
 * IPC_E_NOMEM (nothing appended). b is wiped and emptied in every case. */
int ipc_ev_queue(struct evbuffer *out, ipc_buf *b);

#endif
