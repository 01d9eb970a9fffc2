#!/usr/bin/python3
"""A tiny HTTPS stand-in for the group server, for restclient/groupmail
negative tests (garbage answers, timeouts, errors, pins). Behaviour is
chosen by the group name in the URL:

  ok        well-formed answers for every endpoint (checks request bodies)
  whoami    GET info: name = client certificate CN, or "anonymous"
  conn      GET info: name = "conn-<n>", n counting TLS connections accepted
  garbage   200 with a body that is not JSON / not PEM
  badb64    200 JSON whose base64 fields are not base64
  slow      sleeps 5 s before answering
  big       a 2 MiB JSON body
  forbidden 403 {"error":{"code":"not_a_member",...}}
  gone      404
  busy      429 with Retry-After: 7
  down      503
  boom      500

Usage: groupmail-stub.py CERT KEY CLIENT_CA PORTFILE
Binds 127.0.0.1 on a free port and writes it to PORTFILE.
"""
import base64
import http.server
import json
import os
import ssl
import sys
import threading
import time

conn_count = 0
conn_lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def setup(self):
        global conn_count
        super().setup()
        with conn_lock:
            conn_count += 1
            self.conn_id = conn_count

    def send(self, status, body, ctype="application/json", extra=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def err(self, status, code, msg):
        self.send(status, {"error": {"code": code, "message": msg}})

    def parts(self):
        p = self.path.split("?")[0].split("/")
        # ['', 'v1', 'groups', g, endpoint?]
        if len(p) < 4 or p[1] != "v1" or p[2] != "groups":
            return None, None
        return p[3], (p[4] if len(p) > 4 else "")

    def body(self):
        n = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(n) if n else b""

    def common(self, g):
        if g == "garbage":
            self.send(200, "this is { not json", "text/plain")
            return True
        if g == "slow":
            time.sleep(5)
            self.send(200, {})
            return True
        if g == "big":
            self.send(200, '{"x":"' + "A" * (2 * 1024 * 1024) + '"}')
            return True
        if g == "forbidden":
            self.err(403, "not_a_member", "you are not a member of forbidden\x07")
            return True
        if g == "gone":
            self.err(404, "no_such_group", "no such group")
            return True
        if g == "busy":
            self.send(429, {"error": {"code": "rate_limited", "message": "slow down"}}, extra={"Retry-After": "7"})
            return True
        if g == "down":
            self.err(503, "token_unavailable", "token away")
            return True
        if g == "boom":
            self.send(500, "oops", "text/plain")
            return True
        return False

    def do_GET(self):
        g, ep = self.parts()
        if g is None:
            return self.err(404, "not_found", "no")
        if self.common(g):
            return
        if ep == "":
            name = g
            if g == "whoami":
                cert = self.connection.getpeercert()
                name = "anonymous"
                if cert:
                    for rdn in cert.get("subject", ()):
                        for k, v in rdn:
                            if k == "commonName":
                                name = v
            elif g == "conn":
                name = "conn-%d" % self.conn_id
            elif g == "badb64":
                return self.send(200, {"name": 5})
            info = {"name": name, "address": name + "@example.org",
                    "methods": ["tls", "recipient-key", "group-secret"],
                    "key_versions": [1, 2],
                    "certificate_server": "https://127.0.0.1:1"}
            if g == "kts":
                info["key_transports"] = ["RSA-OAEP", "RSA-PKCS1-v1_5"]
            return self.send(200, info)
        if ep == "certificate":
            return self.send(200, open(os.environ["STUB_GROUP_CERT"]).read()
                             if "STUB_GROUP_CERT" in os.environ else
                             "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                             "application/pem-certificate-chain")
        if ep == "secret-keys":
            if g == "badb64":
                return self.send(200, {"keys": [{"version": 1, "kek_id": "!!", "wrapped_key": "AA=="}]})
            return self.send(200, {"keys": [
                {"version": 1, "kek_id": base64.b64encode(b"kek-v1").decode(),
                 "wrapped_key": base64.b64encode(b"\x01" * 256).decode(), "algorithm": "RSA-OAEP"},
                {"version": 2, "kek_id": base64.b64encode(b"kek-v2").decode(),
                 "wrapped_key": base64.b64encode(b"\x02" * 256).decode(), "algorithm": "RSA-OAEP-256"}]})
        return self.err(404, "not_found", "no endpoint")

    def do_POST(self):
        g, ep = self.parts()
        data = self.body()
        if g is None:
            return self.err(404, "not_found", "no")
        if self.common(g):
            return
        if ep == "membership-certificates":
            if self.headers.get("Content-Type") != "application/pkcs10" or b"CERTIFICATE REQUEST" not in data:
                return self.err(400, "bad_request", "want a PEM CSR")
            return self.send(200, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                             "application/pem-certificate-chain")
        try:
            req = json.loads(data)
        except ValueError:
            return self.err(400, "bad_request", "not json")
        if g == "badb64":
            return self.send(200, {"key": "***", "recipient_info": "%%%", "recipient_infos": ["@@"]})
        if ep == "unwrap":
            return self.unwrap_one(req, single=True)
        if ep == "unwrap-batch":
            out = []
            for it in req.get("items", []):
                out.append(self.unwrap_one(it, single=False))
            return self.send(200, {"results": out})
        if ep == "rewrap":
            ri = base64.b64decode(req["recipient_info"], validate=True)
            if req.get("to") == "group-secret":
                return self.send(200, {"recipient_info": base64.b64encode(b"KEK:" + ri).decode()})
            if req.get("to") == "members" and g.startswith("members-"):
                # a big list: N RecipientInfos of an RSA-4096 member key's
                # size (about 700 bytes of DER each), each named
                n = int(g[len("members-"):])
                one = base64.b64encode(b"K" * 700).decode()
                return self.send(200, {"recipient_infos": [one] * n,
                                       "members": ["member%d@members.example.org" % i for i in range(n)],
                                       "key_version": 1})
            if req.get("to") == "members":
                ans = {"recipient_infos": [base64.b64encode(b"M1:" + ri).decode(),
                                           base64.b64encode(b"M2:" + ri).decode()]}
                # "named": the members each RecipientInfo belongs to, given the
                # content algorithm; "misnamed": a list that does not match
                if g == "named":
                    if req.get("content_algorithm") != "aes-192-cbc":
                        return self.err(400, "content_algorithm_required", "no content algorithm")
                    ans["members"] = ["a@example.org", "b@example.org"]
                elif g == "misnamed":
                    ans["members"] = ["a@example.org"]
                return self.send(200, ans)
            return self.err(400, "bad_request", "to")
        return self.err(404, "not_found", "no endpoint")

    def unwrap_one(self, req, single):
        deliver = req.get("deliver", "tls")
        if "recipient_info" in req:
            raw = base64.b64decode(req["recipient_info"], validate=True)
        elif "encrypted_key" in req and req.get("algorithm") in ("RSA-OAEP", "RSA-OAEP-256"):
            raw = base64.b64decode(req["encrypted_key"], validate=True)
        else:
            res = {"error": {"code": "bad_request", "message": "no key"}}
            return self.send(400, res) if single else res
        if raw == b"refuse":
            res = {"error": {"code": "unwrap_failed", "message": "unwrap failed"}}
            return self.send(400, res) if single else res
        if deliver == "tls":
            # the key length the content algorithm names (the real server's rule)
            n = {"aes-128-cbc": 16, "aes-192-cbc": 24}.get(req.get("content_algorithm"), 32)
            res = {"key": base64.b64encode(bytes(range(n))).decode(), "key_version": 1}
        elif deliver in ("recipient-key", "group-secret"):
            res = {"recipient_info": base64.b64encode(b"RI:" + raw).decode(), "key_version": 1}
            if deliver == "group-secret":
                res["secret_version"] = 3
        else:
            res = {"error": {"code": "bad_request", "message": "deliver"}}
            return self.send(400, res) if single else res
        return self.send(200, res) if single else res


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients that hang up (timeouts, oversize tests) are expected


def main():
    cert, key, client_ca, portfile = sys.argv[1:5]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(client_ca)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    srv = Server(("127.0.0.1", 0), Handler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    tmp = portfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(tmp, portfile)
    srv.serve_forever()


if __name__ == "__main__":
    main()
