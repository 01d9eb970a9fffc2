#!/usr/bin/env python3
"""slow-reader.py: a client that sends requests and never reads the answers,
over loopback only.

  slow-reader.py PORT CA SERVER_PID MEGABYTES

Without a client certificate, from a socket with a small receive buffer, it
pipelines "GET /nosuch" requests (each answered 404) and never reads. Once
the answers fill the socket buffers the server's write waits, and libevent
keeps reading what the client sends meanwhile. The server may hold one whole
request of the largest size beyond the one it answers, no more: it must close
the connection (or stop reading) before MEGABYTES were sent, and its resident
memory must not grow by half of that. Prints one summary line; exits 1
otherwise. Every send has a 10 s limit.
"""
import socket
import ssl
import sys
import time

port, cafile, pid, megabytes = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


def rss_kb():
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


ctx = ssl.create_default_context(cafile=cafile)
ctx.check_hostname = False
raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
raw.settimeout(10)
raw.connect(("127.0.0.1", port))
s = ctx.wrap_socket(raw, server_hostname="localhost")
rss0 = rss_kb()
request = b"GET /nosuch HTTP/1.1\r\nHost: x\r\n\r\n"
chunk = request * (1048576 // len(request))
sent, outcome = 0, "sent everything"
try:
    while sent < megabytes * 1048576:
        s.sendall(chunk)
        sent += len(chunk)
except socket.timeout:
    outcome = "the server stopped reading"
except (OSError, ssl.SSLError) as e:
    outcome = "closed by the server (%s)" % type(e).__name__
time.sleep(0.5)  # let the server free what it held
grown = rss_kb() - rss0
print("slow-reader: %d of %d MB sent, %s; server RSS %+d kB" % (sent >> 20, megabytes, outcome, grown))
try:
    s.close()
except OSError:
    pass
sys.exit(1 if outcome == "sent everything" or grown * 2 > megabytes * 1024 else 0)
