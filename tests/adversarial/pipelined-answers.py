#!/usr/bin/env python3
# pipelined-answers.py PORT CA CERT KEY BODYFILE N PAUSE: over one TLS
# connection with a small receive buffer, sends N requests back to back
# (two unwraps, then a 404, repeating) and a last one with
# "Connection: close", without reading; waits PAUSE seconds so the
# server's TLS writes block part-way (its one-write answers then go
# through libevent's retry of the same SSL_write); then reads everything
# and checks every answer is whole: status line, Content-Length, a JSON
# body, nothing left over. Exit 0 if so, 1 otherwise.
import json
import socket
import ssl
import sys
import time

port, ca, cert, key, bodyf = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
n, pause = int(sys.argv[6]), float(sys.argv[7])
body = open(bodyf, "rb").read()
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
ctx.load_cert_chain(cert, key)
raw = socket.socket()
raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
raw.settimeout(30)
raw.connect(("127.0.0.1", int(port)))
s = ctx.wrap_socket(raw, server_hostname="localhost")
reqs = []
for i in range(n):
    if i % 3 == 2:
        reqs.append((404, b"GET /nosuch HTTP/1.1\r\nHost: x\r\n\r\n"))
    else:
        reqs.append((200, b"POST /v1/groups/eng/unwrap HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body))
reqs.append((404, b"GET /nosuch HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
for _, r in reqs:
    s.sendall(r)
time.sleep(pause)
data = b""
while True:
    try:
        d = s.recv(65536)
    except (ssl.SSLError, ConnectionError) as e:
        print("recv error:", e)
        break
    if not d:
        break
    data += d
got = bad = 0
for want, _ in reqs:
    i = data.find(b"\r\n\r\n")
    if i < 0:
        print(f"truncated after {got} answers; {len(data)} bytes left")
        sys.exit(1)
    lines = data[:i].decode().split("\r\n")
    data = data[i + 4:]
    status = int(lines[0].split()[1])
    cl = [int(l.split(":", 1)[1]) for l in lines if l.lower().startswith("content-length:")]
    if len(cl) != 1 or len(data) < cl[0]:
        print(f"answer {got}: bad or short Content-Length {cl}")
        sys.exit(1)
    b, data = data[:cl[0]], data[cl[0]:]
    try:
        json.loads(b)
    except ValueError:
        print(f"answer {got}: body is not JSON: {b[:80]!r}")
        sys.exit(1)
    if status != want:
        print(f"answer {got}: status {status}, expected {want}: {b[:200]!r}")
        bad += 1
    got += 1
print(f"answers {got} of {len(reqs)}, wrong status {bad}, left-over bytes {len(data)}")
sys.exit(1 if bad or data or got != len(reqs) else 0)
