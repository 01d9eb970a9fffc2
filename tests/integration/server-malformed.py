#!/usr/bin/python3
"""Sends N malformed requests to the group server (each on its own TLS
connection, with a member's client certificate) and checks every answer is
a 4xx (or, for input that is not HTTP at all, that the server closes the
connection). Exit 0 when all behaved.

  server-malformed.py HOST PORT CACERT CERT KEY GROUP N
"""
import base64
import json
import random
import socket
import ssl
import sys

host, port, cacert, cert, key, group, n = sys.argv[1:8]
port, n = int(port), int(n)
ctx = ssl.create_default_context(cafile=cacert)
ctx.load_cert_chain(cert, key)
rnd = random.Random(1234)
path = "/v1/groups/%s/unwrap" % group


def body_cases():
    junk = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300)))
    b64junk = base64.b64encode(junk).decode()
    return [
        b"{",                                         # truncated JSON
        b"[]",                                        # not an object
        b"null",
        b'{"recipient_info": 5}',                     # wrong type
        b'{"recipient_info": ["a"]}',
        b'{"recipient_info": "%%%%"}',                # bad base64
        b'{"recipient_info": "QUJD"}',                # base64 of non-DER
        ('{"recipient_info": "%s"}' % b64junk).encode(),
        b'{"encrypted_key": "QUJD"}',                 # no algorithm
        ('{"encrypted_key": "%s", "algorithm": "RSA-RAW"}' % b64junk).encode(),
        ('{"encrypted_key": "%s", "algorithm": "RSA-OAEP", "deliver": 7}' % b64junk).encode(),
        ('{"encrypted_key": "%s", "algorithm": "RSA-OAEP", "deliver": "carrier-pigeon"}' % b64junk).encode(),
        b'{"recipient_info": "QUJD", "recipient_info": "QUJD"}',  # duplicate keys
        b'{"a": "\\u0000"}',
        ('{"recipient_info": "%s"}' % ("A" * 70000)).encode(),    # oversize
        junk,                                                       # binary garbage
        b'{"encrypted_key": "", "algorithm": "RSA-OAEP"}',
        b'{"recipient_info": "QUJD", "encrypted_key": "QUJD", "algorithm": "RSA-OAEP"}',
        b'{"items": 5}',
    ]


def raw_cases(body):
    return [
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nContent-Type: application/json\r\n\r\n%s"
        % (path.encode(), len(body), body),
    ]


bad = 0
special = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 20000 + b"\r\n\r\n",   # header too large
    b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n" % path.encode(),
    b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n" % path.encode(),
    b"GET /v1/groups/%%00/unwrap HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/groups/" + b"x" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n",
]
for i in range(n):
    cases = body_cases()
    if i % 10 == 9:
        req, must_answer = special[(i // 10) % len(special)], False
    else:
        req, must_answer = raw_cases(cases[i % len(cases)])[0], True
    try:
        with socket.create_connection((host, port), timeout=20) as s:
            with ctx.wrap_socket(s, server_hostname=host) as t:
                t.sendall(req)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = t.recv(65536)
                    if not chunk:
                        break
                    data += chunk
    except (ConnectionError, ssl.SSLError, socket.timeout) as e:
        data = b""
        if must_answer:
            print("request %d: %s" % (i, e))
            bad += 1
            continue
    status = data.split(b" ", 2)[1] if data.startswith(b"HTTP/1.1 ") else b""
    # 4xx for bad requests; 501 is libevent's answer to an unknown method.
    if data and not (status.startswith(b"4") or (not must_answer and status == b"501")):
        print("request %d: status %r" % (i, data[:400] if bad < 3 else data[:80]))
        bad += 1
    elif must_answer and not status:
        print("request %d: no answer" % i)
        bad += 1
    elif must_answer and b"application/json" not in data.lower():
        print("request %d: not a JSON error: %r" % (i, data[:200]))
        bad += 1
print("malformed: %d requests, %d misbehaved" % (n, bad))
sys.exit(1 if bad else 0)
