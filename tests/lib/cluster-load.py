#!/usr/bin/env python3
"""cluster-load.py: the cluster test's and benchmark's client of groupsrv
(through HAProxy or one instance), standard library only.

  load --url URL --cert PEM --key PEM --cacert PEM --body FILE
       [--path /v1/groups/eng/unwrap] [--threads N] [--duration S]
       [--stop-file F] [--out SUMMARY.json]
      N threads, each on one kept-alive HTTPS connection (a new one after
      any failure), POST the body until the duration passed or the stop
      file exists. Prints (and writes) a JSON summary: requests, answers
      per status and per error code, connection failures (a request sent
      and never answered: the in-flight ones of a killed server), and the
      status of each thread's last request.

  removal --admin-url URL --admin-cert PEM --admin-key PEM --cacert PEM
          --member EMAIL --member-cert PEM --member-key PEM --body FILE
          --group G --at URL [--at URL ...]
      Unwraps once as the member at every --at URL (each on a kept-alive
      connection), DELETEs the member through the admin URL, then unwraps
      again at each URL in turn until refused; prints JSON with, per URL,
      the time from the removal's answer to the refusal (ms, including the
      refused request itself and those of the URLs before it) and the
      statuses seen.
Exit status 0 unless the arguments or the removal itself failed.
"""
import argparse
import http.client
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse


def context(cert, key, cacert):
    ctx = ssl.create_default_context(cafile=cacert)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def connect(url, ctx, timeout=10):
    u = urllib.parse.urlsplit(url)
    return http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=timeout)


def error_code(data):
    try:
        return json.loads(data)["error"]["code"]
    except Exception:
        return ""


def load(a):
    ctx = context(a.cert, a.key, a.cacert)
    body = open(a.body, "rb").read()
    lock = threading.Lock()
    summary = {"requests": 0, "status": {}, "codes": {}, "conn_errors": 0, "retry_after_missing": 0,
               "last": [None] * a.threads, "started": time.time()}
    deadline = time.time() + a.duration

    def done():
        return time.time() >= deadline or (a.stop_file and os.path.exists(a.stop_file))

    def worker(idx):
        conn = None
        while not done():
            try:
                if conn is None:
                    conn = connect(a.url, ctx)
                conn.request("POST", a.path, body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                status = r.status
                code = "" if status == 200 else error_code(data)
                missing = status == 503 and r.getheader("Retry-After") is None
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                status, code, missing = "conn_error", "", False
            with lock:
                summary["requests"] += 1
                if status == "conn_error":
                    summary["conn_errors"] += 1
                else:
                    summary["status"][str(status)] = summary["status"].get(str(status), 0) + 1
                    if code:
                        summary["codes"][code] = summary["codes"].get(code, 0) + 1
                    if missing:
                        summary["retry_after_missing"] += 1
                summary["last"][idx] = status
            if status != 200:
                time.sleep(0.02)  # no busy loop while a server or the database is down
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summary["seconds"] = round(time.time() - summary["started"], 3)
    del summary["started"]
    out = json.dumps(summary, sort_keys=True)
    if a.out:
        with open(a.out, "w") as f:
            f.write(out + "\n")
    print(out)
    return 0


def unwrap_once(conn, group, body):
    conn.request("POST", "/v1/groups/%s/unwrap" % group, body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.read()


def removal(a):
    body = open(a.body, "rb").read()
    ctx = context(a.member_cert, a.member_key, a.cacert)
    # One kept-alive connection per server, used once before the removal:
    # the time measured is the removal's, not a TLS handshake's.
    conns = {}
    for url in a.at:
        conns[url] = connect(url, ctx)
        status, _ = unwrap_once(conns[url], a.group, body)
        if status != 200:
            print("before the removal %s answered %d" % (url, status), file=sys.stderr)
            return 1
    admin = connect(a.admin_url, context(a.admin_cert, a.admin_key, a.cacert))
    path = "/v1/groups/%s/members/%s" % (a.group, urllib.parse.quote(a.member))
    admin.request("DELETE", path)
    r = admin.getresponse()
    r.read()
    removed_at = time.monotonic()
    if r.status != 200:
        print("removal failed: HTTP %d" % r.status, file=sys.stderr)
        return 1
    result = {}
    for url in a.at:
        seen = []
        conn = conns[url]
        for _ in range(200):
            try:
                status, data = unwrap_once(conn, a.group, body)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = connect(url, ctx)
                seen.append("conn_error")
                continue
            seen.append(status)
            if status == 403:
                result[url] = {"ms_after_removal": round((time.monotonic() - removed_at) * 1000, 2),
                               "code": error_code(data), "statuses": seen}
                break
            time.sleep(0.005)
        else:
            result[url] = {"ms_after_removal": None, "statuses": seen[-5:]}
        conn.close()
    print(json.dumps(result, sort_keys=True))
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    l = sub.add_parser("load")
    l.add_argument("--url", required=True)
    l.add_argument("--cert", required=True)
    l.add_argument("--key", required=True)
    l.add_argument("--cacert", required=True)
    l.add_argument("--body", required=True)
    l.add_argument("--path", default="/v1/groups/eng/unwrap")
    l.add_argument("--threads", type=int, default=4)
    l.add_argument("--duration", type=float, default=10.0)
    l.add_argument("--stop-file")
    l.add_argument("--out")
    r = sub.add_parser("removal")
    for k in ("admin-url", "admin-cert", "admin-key", "cacert", "member", "member-cert", "member-key", "body",
              "group"):
        r.add_argument("--" + k, required=True)
    r.add_argument("--at", action="append", required=True)
    a = p.parse_args()
    if a.cmd == "load":
        if not 1 <= a.threads <= 256 or not 0 < a.duration <= 3600:
            p.error("--threads 1..256, --duration 0..3600")
        return load(a)
    return removal(a)


if __name__ == "__main__":
    sys.exit(main())
