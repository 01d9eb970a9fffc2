#!/usr/bin/env python3
"""net-broken-holder.py BIN SRC: the network process (groupsrv-net) against a
key holder that answers with a frame no key holder sends.

This test plays the supervisor and the key holder itself (the real ones
never send such a frame; this is what a key holder with a bug would do,
SECURITY.md "Supervision"): it starts BIN/groupsrv-net with a control
socket, hands it the config, a TLS certificate, a listening socket and its
two links as `groupsrv serve` does (groupsrv/ipc.h), answers its start-up
INFO call, and answers the first /healthz request's HEALTH call with a
reply whose payload does not decode. The client must get a 503 (not a
hang), and the network process must end with exit status 1 (its link is
gone and only the supervisor makes links; `serve` starts it again with new
ones) instead of serving on with a link that is down for good.
"""
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

BIN, SRC = sys.argv[1], sys.argv[2]


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def ok(msg):
    print("ok: " + msg)


def enum_values(text, name):
    """The values of a C enum in groupsrv/ipc.h (plain and = N members)."""
    body = re.search(r"enum %s \{(.*?)\};" % name, text, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    values, nxt = {}, 0
    for item in body.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            key, val = (x.strip() for x in item.split("=", 1))
            nxt = int(val, 0)
        else:
            key = item
        values[key] = nxt
        nxt += 1
    return values


ipc_h = open(os.path.join(SRC, "groupsrv/ipc.h")).read()
T = enum_values(ipc_h, "ipc_type")
TAG = enum_values(ipc_h, "ipc_tag")
REPLY = T["IPC_REPLY"]


def field(tag, value):
    return struct.pack("=HI", TAG[tag], len(value)) + value


def frame(mtype, cookie, payload=b""):
    return struct.pack("=IIQ", mtype, len(payload), cookie) + payload


def u32(tag, v):
    return field(tag, struct.pack("=I", v))


def read_frame(sock):
    """(type, cookie, payload), or None at end of stream."""
    hdr = b""
    while len(hdr) < 16:
        chunk = sock.recv(16 - len(hdr))
        if not chunk:
            return None
        hdr += chunk
    mtype, plen, cookie = struct.unpack("=IIQ", hdr)
    payload = b""
    while len(payload) < plen:
        chunk = sock.recv(plen - len(payload))
        if not chunk:
            return None
        payload += chunk
    return mtype, cookie, payload


work = tempfile.mkdtemp(prefix="net-broken-", dir=os.environ.get("GS_TEST_WORK", "/tmp"))
key, cert = os.path.join(work, "key.pem"), os.path.join(work, "cert.pem")
subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert],
               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
lsock = socket.socket()
lsock.bind(("127.0.0.1", 0))
lsock.listen(16)
lsock.setblocking(False)  # as the supervisor's: the event loop accepts until EAGAIN
port = lsock.getsockname()[1]
config = f"""[server]
listen = 127.0.0.1:{port}
threads = 1
timeout = 5
[tls]
cert = {cert}
key = {key}
[hsm]
module = /nonexistent/module.so
token = pkcs11:token=none
pin_source = {work}/pin
[db]
path = {work}/groupsrv.db
[audit]
path = {work}/audit.jsonl
""".encode()

ctl, ctl_child = socket.socketpair()
links = [socket.socketpair() for _ in range(2)]  # link 0: the thread's; link 1 (= threads): the main one
log = open(os.path.join(work, "net.log"), "wb")
net = subprocess.Popen([os.path.join(BIN, "groupsrv-net"), "--ctl", str(ctl_child.fileno())],
                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, pass_fds=(ctl_child.fileno(),))
ctl_child.close()

broke = threading.Event()


def holder(sock, index):
    """The fake key holder on one link: INFO and anything else answered
    200; the thread link's first HEALTH gets a payload that cannot decode
    (a tag no schema has)."""
    while True:
        got = read_frame(sock)
        if got is None:
            return
        mtype, cookie, _ = got
        if mtype == T["IPC_HEALTH"] and index == 0 and not broke.is_set():
            broke.set()
            sock.sendall(frame(mtype | REPLY, cookie, struct.pack("=HI", 63, 4) + b"junk"))
        else:
            sock.sendall(frame(mtype | REPLY, cookie, u32("IPC_T_STATUS", 200)))


for i, (mine, _) in enumerate(links):
    threading.Thread(target=holder, args=(mine, i), daemon=True).start()
try:
    ctl.sendall(frame(T["IPC_CTL_CONFIG"], 0, field("IPC_T_TEXT", config)))
    ctl.sendall(frame(T["IPC_CTL_TLS"], 0, field("IPC_T_CERT_PEM", open(cert, "rb").read()) +
                      field("IPC_T_KEY_PEM", open(key, "rb").read())))
    socket.send_fds(ctl, [frame(T["IPC_CTL_LISTEN"], 0, u32("IPC_T_INDEX", 0))], [lsock.fileno()])
    for i, (_, theirs) in enumerate(links):
        socket.send_fds(ctl, [frame(T["IPC_CTL_LINK"], 0, u32("IPC_T_INDEX", i))], [theirs.fileno()])
        theirs.close()
    ctl.sendall(frame(T["IPC_CTL_GO"], 0))
    ctl.settimeout(30)
    ready = read_frame(ctl)
    if ready is None or ready[0] != T["IPC_CTL_READY"]:
        fail("the network process did not start: " + open(os.path.join(work, "net.log")).read()[-500:])
    ok("the network process started against the fake key holder")

    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with tls.wrap_socket(raw) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = b""
            try:
                while True:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
            except (ssl.SSLError, ConnectionError, socket.timeout):
                pass
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    if not broke.is_set():
        fail("the network process never asked the fake key holder for health")
    if " 503 " not in status + " ":
        fail("the request answered with a malformed frame: %r, wanted 503" % status)
    ok("the request whose answer was malformed got: " + status)
    try:
        rc = net.wait(timeout=30)
    except subprocess.TimeoutExpired:
        fail("the network process serves on with a link the key holder broke (it should end, to get new links)")
    if rc != 1:
        fail("exit status %d, wanted 1: %s" % (rc, open(os.path.join(work, "net.log")).read()[-500:]))
    if b"broke the protocol" not in open(os.path.join(work, "net.log"), "rb").read():
        fail("the log does not say why the network process stopped")
    ok("the network process ends with exit status 1, saying why, for the supervisor to start it with new links")
finally:
    if net.poll() is None:
        net.kill()
        net.wait()
    if os.environ.get("KEEP_WORK") != "1":
        subprocess.run(["rm", "-rf", work])
