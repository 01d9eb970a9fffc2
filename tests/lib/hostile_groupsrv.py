#!/usr/bin/python3
"""hostile_groupsrv.py: a group server that misbehaves, for the tests of
groupmail and the exploder against a hostile or broken server
(tests/integration/hostile-*.sh).

It models what the REST API of docs/api.md looks like on the wire from a
server (or a proxy in front of one) that is broken or hostile: wrong
statuses, content types and JSON, bad base64, huge, truncated, slow and
never-ending answers, TLS that stalls or is not TLS. The real `groupsrv
serve` cannot be made to do any of that, so this stands in for it; its
well-formed answers ("ok") have the documented shapes but no real keys
behind them (a rewrap echoes the RecipientInfo it was sent).

Usage: hostile_groupsrv.py --cert F --key F --client-ca F --port-file F
                           --mode-file F --log F [--group-cert F]
                           [--key-transports F]

--key-transports: a file holding a JSON list, given as the discovery
answer's key_transports while the file exists (read at every request).

The behaviour is the word in --mode-file, read at every connection (so a
test switches it between runs); "by-group" takes it from the group name of
each request instead (/v1/groups/MODE/...), so one server misbehaves in
every way at once, a different way for each list. Every request is
appended to --log as "METHOD PATH MODE". Modes:

  ok                well-formed answers for every endpoint
  certsrv-http      as ok, but the group names a certificate server that
                    is not https:// (http://127.0.0.1:1)
  status-NNN        status NNN with a JSON error body (3xx: Location too)
  html-NNN          status NNN with an HTML page (a proxy's error page)
  wrong-method      405 method_not_allowed with Allow: GET, HEAD (as groupsrv
                    answers a method an endpoint does not take)
  method-refused    403 method_not_allowed (a deliver method the group does
                    not offer)
  json-as-text      a well-formed answer labelled text/plain
  garbage           200, application/json, not JSON
  wrong-types       200, JSON whose fields have the wrong types
  bad-base64        200, JSON whose base64 fields are not base64
  bad-ri            200, well-formed JSON and base64, but the RecipientInfos
                    are not DER (rewrap)
  wrong-key         200, unwrap deliver=tls answers a random 32-byte key
  empty             200 with an empty body
  deep-json         200, 100,000 nested arrays
  control-chars     403 whose error code and message hold escapes, newlines
                    and quotes
  huge-length       200 announcing 1 GiB, streaming until the client hangs up
  huge-chunked      200 chunked, a JSON string that never ends
  slow-body         200, then one byte every 0.5 s, forever
  slow-headers      a status line, then one header line every 0.5 s, forever
  truncated         Content-Length 1000, 20 bytes, then close
  close             reads the request, closes without answering
  reset             reads the request, resets the connection
  huge-header       200 with a 1 MiB header line
  bad-status        "HTTP/1.1 abc" as the status line
  tls-stall         accepts TCP, never starts TLS (until the client leaves)
  not-tls           answers in clear text on the TLS port

Binds 127.0.0.1 on a free port and writes it to --port-file once ready.
"""
import argparse
import base64
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time

import loopback

ARGS = None
LOG_LOCK = threading.Lock()


def mode():
    return loopback.read_mode(ARGS.mode_file)


def log(line):
    with LOG_LOCK:
        with open(ARGS.log, "a") as f:
            f.write(line + "\n")


def b64(data):
    return base64.b64encode(data).decode()


def read_request(conn):
    """(method, path, body) of one HTTP/1.1 request, or None."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
        if len(data) > 1 << 20:
            return None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path = lines[0].split(" ")[:2]
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return method, path, body


def answer(status, body, ctype="application/json", extra=()):
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    reason = {200: "OK"}.get(status, "Whatever")
    head = ["HTTP/1.1 %d %s" % (status, reason), "Content-Type: " + ctype,
            "Content-Length: %d" % len(body), "Connection: close"]
    head.extend(extra)
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def ok_body(method, path, body, certsrv="https://127.0.0.1:1"):
    """The documented answer of each endpoint (docs/api.md)."""
    parts = path.split("?")[0].split("/")
    endpoint = parts[4] if len(parts) > 4 else ""
    req = {}
    if body and endpoint != "membership-certificates":
        try:
            req = json.loads(body)
        except ValueError:
            req = {}
    if endpoint == "":
        info = {"name": parts[3] if len(parts) > 3 else "", "address": "eng@lists.example.org",
                "methods": ["tls", "recipient-key", "membership-cert", "group-secret"],
                "key_versions": [1], "certificate_server": certsrv}
        if ARGS.key_transports and os.path.exists(ARGS.key_transports):
            with open(ARGS.key_transports) as f:
                info["key_transports"] = json.load(f)
        return info, "application/json"
    if endpoint in ("certificate", "membership-certificates"):
        pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
        if ARGS.group_cert and endpoint == "certificate":
            with open(ARGS.group_cert) as f:
                pem = f.read()
        return pem, "application/pem-certificate-chain"
    if endpoint == "unwrap":
        ri = req.get("recipient_info", b64(b"ri"))
        if req.get("deliver", "tls") == "tls":
            return {"key": b64(bytes(range(32))), "key_version": 1}, "application/json"
        return {"recipient_info": ri, "key_version": 1}, "application/json"
    if endpoint == "rewrap":
        ri = req.get("recipient_info", b64(b"ri"))
        if req.get("to") == "members":
            return {"recipient_infos": [ri, ri], "key_version": 1}, "application/json"
        return {"recipient_info": ri, "kek_id": b64(b"kek"), "secret_version": 1,
                "key_version": 1}, "application/json"
    if endpoint == "secret-keys":
        return {"keys": [{"version": 1, "kek_id": b64(b"kek-v1"), "wrapped_key": b64(b"\x01" * 256),
                          "algorithm": "RSA-OAEP"}]}, "application/json"
    return {"error": {"code": "not_found", "message": "no such endpoint"}}, "application/json"


def endless(conn, first, piece, pause=0.0):
    conn.sendall(first)
    while True:
        conn.sendall(piece)
        if pause:
            time.sleep(pause)


def serve_request(conn, m, method, path, body):
    if m == "ok":
        b, ct = ok_body(method, path, body)
        return conn.sendall(answer(200, b, ct))
    if m == "certsrv-http":
        b, ct = ok_body(method, path, body, "http://127.0.0.1:1")
        return conn.sendall(answer(200, b, ct))
    if m.startswith("status-") or m.startswith("html-"):
        code = int(m.split("-")[1])
        extra = ["Location: https://evil.example.org/"] if 300 <= code < 400 else []
        if code in (429, 503):
            extra.append("Retry-After: 1")
        if m.startswith("html-"):
            page = "<html><body><h1>%d</h1>proxy says no</body></html>" % code
            return conn.sendall(answer(code, page, "text/html", extra))
        err = {"error": {"code": "hostile_%d" % code, "message": "the hostile server says %d" % code}}
        return conn.sendall(answer(code, err, "application/json", extra))
    if m == "wrong-method":
        err = {"error": {"code": "method_not_allowed", "message": "use GET, HEAD"}}
        return conn.sendall(answer(405, err, "application/json", ["Allow: GET, HEAD"]))
    if m == "method-refused":
        err = {"error": {"code": "method_not_allowed", "message": "the group does not offer this method"}}
        return conn.sendall(answer(403, err, "application/json"))
    if m == "json-as-text":
        b, _ = ok_body(method, path, body)
        return conn.sendall(answer(200, b, "text/plain"))
    if m == "garbage":
        return conn.sendall(answer(200, "{this is not json", "application/json"))
    if m == "wrong-types":
        return conn.sendall(answer(200, {"name": 5, "methods": "tls", "key_versions": {"a": 1}, "key": [1],
                                         "recipient_info": {"x": 1}, "recipient_infos": "AAAA", "keys": 7}))
    if m == "bad-base64":
        return conn.sendall(answer(200, {"name": "eng", "key": "***", "recipient_info": "%%%%",
                                         "recipient_infos": ["@@@@"], "keys": [{"version": 1, "kek_id": "!",
                                                                                "wrapped_key": "?"}]}))
    if m == "bad-ri":
        junk = b64(b"\x30\x03\x02\x01" + os.urandom(8))
        return conn.sendall(answer(200, {"recipient_info": junk, "recipient_infos": [junk, junk],
                                         "key_version": 1}))
    if m == "wrong-key":
        return conn.sendall(answer(200, {"key": b64(os.urandom(32)), "key_version": 1}))
    if m == "empty":
        return conn.sendall(answer(200, b""))
    if m == "deep-json":
        return conn.sendall(answer(200, "[" * 100000 + "]" * 100000))
    if m == "control-chars":
        msg = "line one\r\nline two\x1b[31m red \x07\u202e " + "x" * 5000
        code = "evil\ncode\x1b[0m\" forged=\"yes" + "y" * 300  # a quote must not end a log field
        return conn.sendall(answer(403, {"error": {"code": code, "message": msg}}))
    if m == "huge-length":
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n"
        return endless(conn, head + b'{"x":"', b"A" * 65536)
    if m == "huge-chunked":
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        piece = b"A" * 65536
        return endless(conn, head + b"6\r\n{\"x\":\"\r\n", b"%x\r\n" % len(piece) + piece + b"\r\n")
    if m == "slow-body":
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        return endless(conn, head, b" ", 0.5)
    if m == "slow-headers":
        return endless(conn, b"HTTP/1.1 200 OK\r\n", b"X-Slow: yes\r\n", 0.5)
    if m == "truncated":
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        return conn.sendall(head + b'{"key":"AAAAAAAAAAA')
    if m == "close":
        return None
    if m == "reset":
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return None
    if m == "huge-header":
        return conn.sendall(b"HTTP/1.1 200 OK\r\nX-Big: " + b"h" * (1 << 20) + b"\r\nContent-Length: 2\r\n\r\n{}")
    if m == "bad-status":
        return conn.sendall(b"HTTP/1.1 abc\r\nContent-Length: 2\r\n\r\n{}")
    return conn.sendall(answer(500, {"error": {"code": "unknown_mode", "message": m}}))


def handle(raw, ctx):
    m = mode()
    conn = raw
    try:
        if m == "tls-stall":
            log("CONNECT - tls-stall")
            raw.settimeout(300)
            while raw.recv(65536):  # never answer; return once the client gives up
                pass
            return
        if m == "not-tls":
            log("CONNECT - not-tls")
            raw.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            return
        conn = ctx.wrap_socket(raw, server_side=True)
        conn.settimeout(300)
        req = read_request(conn)
        if req is None:
            return
        method, path, body = req
        if m == "by-group":
            parts = path.split("/")
            m = parts[3] if len(parts) > 3 else "ok"
        log("%s %s %s" % (method, path, m))
        serve_request(conn, m, method, path, body)
    except (OSError, ValueError, ssl.SSLError):
        pass  # clients that give up are the point of most modes
    finally:
        try:
            conn.close()
        except OSError:
            pass


def main():
    global ARGS
    p = argparse.ArgumentParser()
    for a in ("--cert", "--key", "--client-ca", "--port-file", "--mode-file", "--log"):
        p.add_argument(a, required=True)
    p.add_argument("--group-cert")
    p.add_argument("--key-transports")
    ARGS = p.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(ARGS.cert, ARGS.key)
    ctx.load_verify_locations(ARGS.client_ca)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    loopback.serve_forever(ARGS.port_file, lambda raw: handle(raw, ctx))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
