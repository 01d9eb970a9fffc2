/*
 * fuzz_ipc: libFuzzer target for the frame parser between the server's
 * processes (groupsrv/ipc.c), the key holder's first line of defence
 * against a compromised network process. The input is a byte stream as
 * it arrives on a link: it is cut into frames by both readers (the
 * libevent one the processes use, and the control channels' one), every
 * frame is decoded against its type's schema, then against every other
 * type's too, and everything decoded is read back through the accessors
 * (nested items included), checking that what was accepted is what the
 * schema allows.
 *
 * Registered in tests/fuzz.cmake (tests/fuzz/README.md); seeds in
 * tests/fuzz/corpus/ipc/.
 */
#include <stdint.h>
#include <string.h>

#include <event2/buffer.h>

#include "fuzz.h"
#include "ipc.h"

static const enum ipc_tag nested_tags[] = {IPC_T_ITEM, IPC_T_RESULT, IPC_T_KEYREF, IPC_T_SECRET, IPC_T_MEMBER};

/* Reads every field back; a string is terminated where it says. */
static void poke(const ipc_msg *m)
{
    for (int t = 1; t < IPC_T_COUNT; t++) {
        const unsigned char *p;
        size_t len;
        const char *s = ipc_str(m, (enum ipc_tag)t);
        if (s != NULL)
            FUZZ_CHECK(strlen(s) + 1 == m->f[t].len);
        (void)ipc_u32(m, (enum ipc_tag)t, 0);
        (void)ipc_u64(m, (enum ipc_tag)t, 0);
        if (ipc_bytes(m, (enum ipc_tag)t, &p, &len) == 0)
            FUZZ_CHECK(p >= m->payload && p + len <= m->payload + m->len);
    }
    for (size_t i = 0; i < sizeof(nested_tags) / sizeof(nested_tags[0]); i++) {
        ipc_iter it;
        ipc_val v;
        ipc_msg sub;
        uint32_t n = 0;
        ipc_iter_init(&it, m, nested_tags[i]);
        while (ipc_iter_next(&it, &v, &sub)) {
            n++;
            for (int t = 1; t < IPC_T_COUNT; t++)
                (void)ipc_str(&sub, (enum ipc_tag)t);
        }
        FUZZ_CHECK(n == m->count[nested_tags[i]]);
    }
    /* A request's deadline: only ever past when one was sent. */
    if (ipc_deadline_passed(m))
        FUZZ_CHECK(ipc_has(m, IPC_T_DEADLINE) && ipc_u64(m, IPC_T_DEADLINE, 0) != 0);
    ipc_iter it;
    ipc_val v;
    uint32_t n = 0;
    ipc_iter_init(&it, m, IPC_T_DER);
    while (ipc_iter_next(&it, &v, NULL))
        n++;
    FUZZ_CHECK(n == m->count[IPC_T_DER]);
}

static void decode_all(uint32_t type, uint64_t cookie, const unsigned char *p, size_t len)
{
    static const uint32_t types[] = {IPC_VIEW,       IPC_UNWRAP,     IPC_REWRAP,       IPC_SECRET_KEYS, IPC_CERTIFY,
                                     IPC_SIGN,       IPC_INFO,       IPC_HEALTH,       IPC_STATS,       IPC_MEMBERS,
                                     IPC_MEMBER_GET, IPC_MEMBER_PUT, IPC_MEMBER_DELETE, IPC_GROUP_CREATE, IPC_AUTHZ,
                                     IPC_CTL_CONFIG, IPC_CTL_TLS,    IPC_CTL_LINK,      IPC_CTL_READY};
    ipc_msg m;

    if (ipc_decode(type, cookie, p, len, &m) == IPC_OK)
        poke(&m);
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (ipc_decode(types[i], cookie, p, len, &m) == IPC_OK)
            poke(&m);
        if (ipc_decode(types[i] | IPC_REPLY, cookie, p, len, &m) == IPC_OK)
            poke(&m);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct evbuffer *in = evbuffer_new();
    ipc_reader rd;

    if (in == NULL)
        return 0;
    /* The links' reader. */
    evbuffer_add(in, data, size);
    for (;;) {
        uint32_t type;
        uint64_t cookie;
        unsigned char *payload;
        size_t len;
        int rc = ipc_ev_next(in, &type, &cookie, &payload, &len);
        if (rc != 1)
            break;
        decode_all(type, cookie, payload, len);
        ipc_payload_free(payload, len);
    }
    evbuffer_free(in);
    /* The control channels' reader must cut the same frames. */
    ipc_reader_init(&rd);
    if ((rd.buf = malloc(size + 1)) != NULL) {
        memcpy(rd.buf, data, size);
        rd.len = size;
        rd.cap = size + 1;
        const unsigned char *frame;
        size_t flen;
        while (ipc_reader_peek(&rd, &frame, &flen) == 1) {
            FUZZ_CHECK(flen >= IPC_HDR_LEN && flen <= rd.len);
            ipc_reader_consume(&rd, flen);
        }
    }
    ipc_reader_free(&rd);
    return 0;
}
