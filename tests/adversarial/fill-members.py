#!/usr/bin/env python3
"""fill-members.py: a listener full of members gets its documented answer.

  fill-members.py PORT CERT KEY CA N

One kept-alive member connection first asks every second for 9 s, longer
than the handshake and request deadlines together: all answered. Then it
opens N TLS connections with a member's certificate (from 127.0.0.3) and
keeps them open (members' connections are never closed to make room); each
asks GET /healthz when opened, again whenever its last answer is a second
and a half old, and once more right before the test, so the server has
finished every handshake (TLS 1.3: the client is done first) and no request
deadline runs out meanwhile, however long opening them takes. Then it opens one more
and asks GET /healthz on it: the answer must be 503 too_many_connections
with Retry-After and Connection: close, not a hang. Exits 1 otherwise.
Bounded: every socket has a 10 s timeout.
"""
import socket
import ssl
import sys
import time

port, cert, key, cafile, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
ctx = ssl.create_default_context(cafile=cafile)
ctx.check_hostname = False
ctx.load_cert_chain(cert, key)


def connect():
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.3", 0))
    return ctx.wrap_socket(raw, server_hostname="localhost")


def ask(s):
    """GET /healthz on s; the answer (head and the short JSON body)."""
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not (b"\r\n\r\n" in data and data.rstrip().endswith(b"}")):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


# First, deadlines are per request, not per connection: one kept-alive
# connection asks every second for longer than handshake_timeout and
# request_timeout together (3 + 4 s in the test), and keeps being answered.
k = connect()
for i in range(9):
    first = ask(k).split(b"\r\n", 1)[0]
    if not first.startswith(b"HTTP/1.1 200"):
        print("fill-members: kept-alive request %d answered %r" % (i, first))
        sys.exit(1)
    time.sleep(1)
k.close()

# Opening N connections may take longer than request_timeout on a loaded
# machine (sanitizer build): every held connection asks again whenever its
# last answer is over a second and a half old, so none reaches its deadline.
held, answered = [], []


def keep_alive(older_than):
    for i, h in enumerate(held):
        if time.monotonic() - answered[i] >= older_than:
            first = ask(h).split(b"\r\n", 1)[0]
            if not first.startswith(b"HTTP/1.1 200"):
                print("fill-members: held connection %d of %d answered %r" % (i, len(held), first))
                sys.exit(1)
            answered[i] = time.monotonic()


for _ in range(n):
    held.append(connect())
    answered.append(0.0)
    keep_alive(1.5)
keep_alive(0)
s = connect()
data = ask(s)
head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").lower()
print("fill-members: %d held, the next answered: %s" % (n, head.splitlines()[0] if head else "(closed)"))
good = (head.startswith("http/1.1 503") and "retry-after:" in head and "connection: close" in head
        and b"too_many_connections" in data)
for h in held:
    h.close()
sys.exit(0 if good else 1)
