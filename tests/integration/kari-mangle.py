#!/usr/bin/env python3
"""kari-mangle.py MODE IN OUT: rewrites the KeyAgreeRecipientInfo of an
S/MIME message (openssl cms -encrypt to a P-256 certificate, DER with
definite lengths) the way a broken or unusual client would, re-encoding
every length around the change:
  compressed  the originator's ephemeral point in compressed form (02/03 || X)
  offcurve    the point's last byte changed: no longer on the curve
  badwrap     the wrapped content key cut by 4 bytes (no AES key wrap makes it)
  cutek       (a KeyTransRecipientInfo) the RSA-encrypted key cut by its first
              byte: shorter than the modulus, as no RSA encryption makes it
  bigukm      a user keying material [1] of 2000 bytes put in (RFC 5753 allows
              one; the X9.63 shared info it makes is longer than a token takes)
The headers are kept; the base64 is written again in 64-column lines. IN
and OUT named *.der are a DER RecipientInfo or message, no MIME."""
import base64
import sys


def parse(b, i, end):
    nodes = []
    while i < end:
        t0 = i
        tag = b[i]
        i += 1
        if tag & 0x1F == 0x1F:
            while b[i] & 0x80:
                i += 1
            i += 1
        tagb = b[t0:i]
        n = b[i]
        i += 1
        if n == 0x80:
            sys.exit("indefinite length: not handled")
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(b[i:i + k], "big")
            i += k
        nodes.append([tagb, parse(b, i, i + n) if tag & 0x20 else b[i:i + n]])
        i += n
    return nodes


def encode(nodes):
    out = b""
    for tagb, v in nodes:
        c = encode(v) if isinstance(v, list) else v
        n = len(c)
        if n < 128:
            lb = bytes([n])
        else:
            nb = n.to_bytes((n.bit_length() + 7) // 8, "big")
            lb = bytes([0x80 | len(nb)]) + nb
        out += tagb + lb + c
    return out


def walk(nodes, fn):
    hits = 0
    for node in nodes:
        if isinstance(node[1], list):
            hits += walk(node[1], fn)
        else:
            hits += fn(node)
    return hits


def add_ukm(nodes):
    """Puts a ukm [1] after the originator [0] of every KARI (a SEQUENCE
    or [1] whose children are INTEGER 3, then [0])."""
    hits = 0
    for node in nodes:
        v = node[1]
        if not isinstance(v, list):
            continue
        if len(v) >= 2 and v[0][0] == b"\x02" and v[0][1] == b"\x03" and v[1][0] == b"\xa0":
            v.insert(2, [b"\xa1", [[b"\x04", b"\x5a" * 2000]]])
            hits += 1
        else:
            hits += add_ukm(v)
    return hits


def mangle(mode, node):
    tag, v = node[0], node[1]
    if tag == b"\x03" and len(v) == 66 and v[:2] == b"\x00\x04":
        if mode == "compressed":
            y_odd = v[-1] & 1
            node[1] = b"\x00" + bytes([0x02 | y_odd]) + v[2:34]
            return 1
        if mode == "offcurve":
            node[1] = v[:-1] + bytes([v[-1] ^ 0x01])
            return 1
    if mode == "cutek" and tag == b"\x04" and len(v) in (256, 384, 512):
        node[1] = v[1:]
        return 1
    if mode == "badwrap" and tag == b"\x04" and len(v) in (24, 32, 40):
        node[1] = v[:-4]
        return 1
    return 0


def main():
    mode, src, dst = sys.argv[1:4]
    raw = open(src, "rb").read()
    if src.endswith(".der"):
        der = raw
    else:
        raw = raw.replace(b"\r\n", b"\n")
        head, _, body = raw.partition(b"\n\n")
        der = base64.b64decode(b"".join(body.split()))
    tree = parse(der, 0, len(der))
    hits = add_ukm(tree) if mode == "bigukm" else walk(tree, lambda n: mangle(mode, n))
    if hits != 1:
        sys.exit("kari-mangle: not exactly one place to change for " + mode)
    if dst.endswith(".der"):
        open(dst, "wb").write(encode(tree))
        return
    b64 = base64.b64encode(encode(tree))
    lines = b"\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
    open(dst, "wb").write(head + b"\n\n" + lines + b"\n")


main()
