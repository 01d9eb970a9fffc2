#!/usr/bin/env python3
# inservice-input.py PORT CA CERT KEY BODYFILE MODE: over one TLS
# connection, sends an unwrap and, while the server is still answering it
# (the token model makes that take a while), MODE "more": a second unwrap
# with "Connection: close", then reads both answers to the end (exit 0 if
# both are 200 and whole); MODE "close": shuts the connection's sending
# side, then reads the one answer (exit 0 if it is a 200, or if the server
# dropped the answer to a client that said it sends no more).
import socket
import ssl
import sys
import time

port, ca, cert, key, bodyf, mode = sys.argv[1:7]
body = open(bodyf, "rb").read()
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
ctx.load_cert_chain(cert, key)
raw = socket.create_connection(("127.0.0.1", int(port)), timeout=30)
s = ctx.wrap_socket(raw, server_hostname="localhost")


def req(close):
    return (b"POST /v1/groups/eng/unwrap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + (b"Connection: close\r\n" if close else b"")
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


s.sendall(req(False))
time.sleep(0.3)  # the first request is at the token now
if mode == "more":
    s.sendall(req(True))
else:
    # On a duplicate: SSLSocket.shutdown would drop the TLS state too.
    dup = socket.fromfd(s.fileno(), socket.AF_INET, socket.SOCK_STREAM)
    dup.shutdown(socket.SHUT_WR)
    dup.close()
data = b""
while True:
    try:
        chunk = s.recv(65536)
    except (ssl.SSLError, OSError):
        break
    if not chunk:
        break
    data += chunk
want = 2 if mode == "more" else 1
got = data.count(b"HTTP/1.1 200 OK\r\n")
if mode == "close" and got == 0 and data == b"":
    sys.exit(0)
if got != want or data.count(b"HTTP/1.1 ") != want:
    print(f"inservice-input: {mode}: {got} answers of 200, want {want}: {data[:300]!r}", file=sys.stderr)
    sys.exit(1)
sys.exit(0)
