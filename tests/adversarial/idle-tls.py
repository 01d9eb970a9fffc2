#!/usr/bin/env python3
"""idle-tls.py: TLS connections without a client certificate that finish
their handshake and never send a request, over loopback only.

  idle-tls.py PORT CA COUNT

Opens up to COUNT of them, 30 from each of the addresses 127.0.0.2,
127.0.0.3, ... (under the per-address limit), one after another, each with
a 1 s limit; stops at the second in a row that fails (the server out of
descriptors and not making room). Prints "held N" once done, then keeps
them open until its standard input closes. Exits 0.
"""
import socket
import ssl
import sys

port, cafile, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(cafile=cafile)
ctx.check_hostname = False
held, failed_in_a_row = [], 0
for i in range(count):
    src = "127.0.0.%d" % (2 + i // 30)
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=1, source_address=(src, 0))
        held.append(ctx.wrap_socket(raw, server_hostname="localhost"))
        failed_in_a_row = 0
    except OSError:
        failed_in_a_row += 1
        if failed_in_a_row >= 2:
            break
print("held %d" % len(held), flush=True)
sys.stdin.read()
