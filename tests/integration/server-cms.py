#!/usr/bin/python3
"""Minimal DER surgery on CMS EnvelopedData for the server tests (stdlib only).

  server-cms.py ri MSG.der OUT.der           first RecipientInfo of the message
  server-cms.py swap MSG.der RI.der OUT.der  message with its RecipientInfos replaced by RI
  server-cms.py ek RI.der OUT.bin            encryptedKey of a KeyTransRecipientInfo
  server-cms.py content MSG.der CT.bin       print the content IV (hex), write the ciphertext
"""
import sys


def tlv(buf, off):
    tag = buf[off]
    off += 1
    ln = buf[off]
    off += 1
    if ln & 0x80:
        n = ln & 0x7F
        ln = int.from_bytes(buf[off:off + n], "big")
        off += n
    return tag, off, ln  # tag, content offset, content length


def children(buf, off, ln):
    out, p = [], off
    while p < off + ln:
        tag, c, n = tlv(buf, p)
        out.append((tag, p, c, n))
        p = c + n
    return out


def enc(tag, content):
    n = len(content)
    if n < 0x80:
        hdr = bytes([tag, n])
    else:
        b = n.to_bytes((n.bit_length() + 7) // 8, "big")
        hdr = bytes([tag, 0x80 | len(b)]) + b
    return hdr + content


def env_parts(msg):
    """-> (ContentInfo OID TLV, EnvelopedData field list (tag, raw TLV bytes))."""
    _, c, n = tlv(msg, 0)
    ci = children(msg, c, n)
    oid = msg[ci[0][1]:ci[0][2] + ci[0][3]]
    _, ec, en = ci[1][0], ci[1][2], ci[1][3]  # [0] EXPLICIT
    _, sc, sn = tlv(msg, ec)                  # EnvelopedData SEQUENCE
    fields = [(t, msg[p:cc + nn]) for t, p, cc, nn in children(msg, sc, sn)]
    return oid, fields


def ri_set_index(fields):
    # version INTEGER, [0] originatorInfo OPTIONAL, SET recipientInfos
    for i, (t, _) in enumerate(fields):
        if t == 0x31:
            return i
    raise SystemExit("no recipientInfos")


def main():
    cmd = sys.argv[1]
    if cmd == "ri":
        msg = open(sys.argv[2], "rb").read()
        _, fields = env_parts(msg)
        s = fields[ri_set_index(fields)][1]
        _, c, n = tlv(s, 0)
        first = children(s, c, n)[0]
        open(sys.argv[3], "wb").write(s[first[1]:first[2] + first[3]])
    elif cmd == "swap":
        msg = open(sys.argv[2], "rb").read()
        ri = open(sys.argv[3], "rb").read()
        oid, fields = env_parts(msg)
        i = ri_set_index(fields)
        fields[i] = (0x31, enc(0x31, ri))
        # CMS: version 2 when any RI is not version 0 (KEKRI/PWRI: 4; safe for openssl)
        body = b"".join(f for _, f in fields)
        out = enc(0x30, oid + enc(0xA0, enc(0x30, body)))
        open(sys.argv[4], "wb").write(out)
    elif cmd == "ek":
        ri = open(sys.argv[2], "rb").read()
        tag, c, n = tlv(ri, 0)
        kids = children(ri, c, n)
        # KTRI: version, rid, keyEncryptionAlgorithm, encryptedKey OCTET STRING
        t, p, cc, nn = kids[3]
        assert t == 0x04
        open(sys.argv[3], "wb").write(ri[cc:cc + nn])
    elif cmd == "content":
        msg = open(sys.argv[2], "rb").read()
        _, fields = env_parts(msg)
        eci = fields[ri_set_index(fields) + 1][1]
        _, c, n = tlv(eci, 0)
        kids = children(eci, c, n)
        alg = kids[1]
        ak = children(eci, alg[2], alg[3])
        iv_t, _, ivc, ivn = ak[1]
        iv = eci[ivc:ivc + ivn]
        t, p, cc, nn = kids[2]
        if t == 0x80:
            ct = eci[cc:cc + nn]
        else:  # constructed [0] of OCTET STRINGs
            ct = b"".join(eci[x[2]:x[2] + x[3]] for x in children(eci, cc, nn))
        open(sys.argv[3], "wb").write(ct)
        print(iv.hex())
    else:
        raise SystemExit("unknown command")


main()
