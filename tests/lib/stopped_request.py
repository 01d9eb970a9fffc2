#!/usr/bin/env python3
"""stopped_request.py PORT CACERT CERT KEY BODYFILE PID STOP_MS: one
POST /v1/groups/eng/unwrap over a TLS connection made (handshake done)
before PID (the key holder) is stopped with SIGSTOP; the request is sent
while it is stopped and PID let go (SIGCONT) STOP_MS ms later, so that
the request's deadline, stamped when the network process passes it on,
is a known time before the key holder takes it (a client's own start-up
and handshake are outside the stop). Prints the status line's code and
the body."""
import os, signal, socket, ssl, sys, time

port, cacert, cert, key, bodyfile, pid, stop_ms = sys.argv[1:8]
body = open(bodyfile, "rb").read()
ctx = ssl.create_default_context(cafile=cacert)
ctx.load_cert_chain(cert, key)
ctx.check_hostname = False
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port))), server_hostname="localhost")
s.do_handshake()
req = (b"POST /v1/groups/eng/unwrap HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
       b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
os.kill(int(pid), signal.SIGSTOP)
try:
    s.sendall(req)
    time.sleep(int(stop_ms) / 1000.0)
finally:
    os.kill(int(pid), signal.SIGCONT)
resp = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    resp += chunk
head, _, rest = resp.partition(b"\r\n\r\n")
print(head.split(b" ")[1].decode())
print(rest.decode(errors="replace"))
