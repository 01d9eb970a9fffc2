#!/usr/bin/python3
"""hostile-groupmail.py BIN SRC: groupmail against a hostile group server
(tests/lib/hostile_groupsrv.py): wrong statuses and content types, bad JSON
and base64, huge, truncated, slow and never-ending answers, TLS that stalls.

For every misbehaviour and every command that talks to the server
(unwrap, decrypt, fetch-cert, keys sync, certify) it asserts the documented
exit code (docs/groupmail.1.md), one printable line on stderr and nothing
on stdout, nothing written (no --out file, no temp file beside it, no pin,
no stored key), that the run ends (a hang is a failure; --timeout 2), and
that memory stays bounded: the peak RSS is compared with the same
command's run against a well-behaved answer, in the same test.

HOSTILE_SHOW=1 prints every error line groupmail gave (for the docs),
HOSTILE_TIMES=1 the wall time of each misbehaviour.
"""
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

BIN, SRC = sys.argv[1], sys.argv[2]
PY = "/usr/bin/python3"
HANG = 60          # seconds: far beyond --timeout 2; only a hang gets there
RSS_SLACK = 48 << 10  # KiB over the well-behaved run (the answer cap is 4 MiB)
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg, flush=True)


work = tempfile.mkdtemp(prefix="hostile-groupmail.", dir=os.environ.get("GS_TEST_WORK", "/tmp"))
certs = os.path.join(work, "pki")
subprocess.run(["bash", os.path.join(SRC, "tests/integration/groupmail-mkcerts.sh"), certs], check=True)


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# a group certificate the test CA signed, naming the list address: fetch-cert
# accepts it from a well-behaved server
p = lambda n: os.path.join(certs, n)
openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", p("group.key"), "-out", p("group.csr"),
        "-subj", "/CN=eng@lists.example.org")
with open(p("group.ext"), "w") as f:
    f.write("subjectAltName=email:eng@lists.example.org\nkeyUsage=critical,keyEncipherment\n")
openssl("x509", "-req", "-in", p("group.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"), "-CAcreateserial",
        "-out", p("group.pem"), "-days", "2", "-extfile", p("group.ext"))
with open(os.path.join(work, "m.txt"), "w") as f:
    f.write("Subject: hostile\n\nbody\n")
openssl("cms", "-encrypt", "-binary", "-aes-256-gcm", "-recip", p("group.pem"), "-keyopt", "rsa_padding_mode:oaep",
        "-in", os.path.join(work, "m.txt"), "-out", os.path.join(work, "m.smime"))

mode_file = os.path.join(work, "mode")
log_file = os.path.join(work, "requests.log")
port_file = os.path.join(work, "port")
with open(mode_file, "w") as f:
    f.write("ok")
srv = subprocess.Popen([PY, os.path.join(SRC, "tests/lib/hostile_groupsrv.py"), "--cert", p("server.pem"),
                        "--key", p("server.key"), "--client-ca", p("ca.pem"), "--port-file", port_file,
                        "--mode-file", mode_file, "--log", log_file, "--group-cert", p("group.pem")],
                       stderr=open(os.path.join(work, "server.err"), "w"))
for _ in range(100):
    if os.path.exists(port_file):
        break
    time.sleep(0.1)
base = "https://127.0.0.1:%s" % open(port_file).read().strip()

# The memory bound compares what groupmail allocates; in the sanitizer build
# ASan's quarantine of freed blocks (256 MiB by default) would count too.
asan = os.environ.get("ASAN_OPTIONS", "")
env = dict(os.environ, HOME=os.path.join(work, "home"), XDG_CONFIG_HOME="", XDG_DATA_HOME="",
           ASAN_OPTIONS=(asan + ":" if asan else "") + "quarantine_size_mb=16")
for k in list(env):
    if k.startswith("GROUPMAIL_"):
        del env[k]
COMMON = ["--server", base, "--group", "eng", "--cacert", p("ca.pem"), "--cert", p("alice.pem"),
          "--key", p("alice.key"), "--timeout", "2"]


def run(args, store):
    """(exit code, stdout, stderr, seconds, peak RSS KiB) of one groupmail run."""
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    t0 = time.monotonic()
    proc = subprocess.Popen([os.path.join(BIN, "groupmail"), *args, *COMMON, "--store", store],
                            stdout=out, stderr=err, env=env)
    deadline = t0 + HANG
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, ru = os.wait4(proc.pid, 0)
            status = -1
            break
        time.sleep(0.05)
    secs = time.monotonic() - t0
    out.seek(0)
    err.seek(0)
    rc = os.waitstatus_to_exitcode(status) if status != -1 else "hang"
    return rc, out.read(), err.read(), secs, ru.ru_maxrss


def set_mode(m):
    with open(mode_file, "w") as f:
        f.write(m)


# Each command: its arguments, and what it must not leave behind.
def cmd_unwrap(d):
    return ["unwrap", "--via", "tls", "--in", os.path.join(work, "m.smime"), "--group-cert", p("group.pem")], []


def cmd_unwrap_rk(d):
    return ["unwrap", "--via", "recipient-key", "--in", os.path.join(work, "m.smime"),
            "--group-cert", p("group.pem")], []


def cmd_decrypt(d):
    out = os.path.join(d, "out", "plain.txt")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    return ["decrypt", "--via", "tls", "--in", os.path.join(work, "m.smime"), "--group-cert", p("group.pem"),
            "--out", out], [os.path.dirname(out)]


def cmd_fetch_cert(d):
    return ["fetch-cert"], [os.path.join(d, "store", "pins")]


def cmd_keys_sync(d):
    return ["keys", "sync"], [os.path.join(d, "store", "secret-keys")]


def cmd_certify(d):
    return ["certify", "--certsrv", base], [os.path.join(d, "store", "membership")]


COMMANDS = {"unwrap": cmd_unwrap, "unwrap-rk": cmd_unwrap_rk, "decrypt": cmd_decrypt,
            "fetch-cert": cmd_fetch_cert, "keys-sync": cmd_keys_sync, "certify": cmd_certify}

# mode -> exit code every command must give (docs/groupmail.1.md "Exit status")
EXPECT = {
    "status-302": 4, "status-400": 1, "status-401": 3, "status-403": 3, "status-404": 1,
    "status-405": 1, "status-408": 4, "status-413": 1, "status-429": 4, "status-500": 4, "status-503": 4,
    "html-200": 4, "html-403": 3, "html-502": 4, "json-as-text": 4, "garbage": 4,
    "wrong-types": 4, "bad-base64": 4, "empty": 4, "deep-json": 4, "control-chars": 3, "huge-length": 4,
    "huge-chunked": 4, "slow-body": 4, "slow-headers": 4, "truncated": 4, "close": 4, "reset": 4,
    "huge-header": 4, "bad-status": 4, "tls-stall": 4, "not-tls": 4,
    # method_not_allowed: refused (3) as a 403, a deliver method the group
    # does not offer; an invalid request (1) as a 405, as any other 4xx
    "wrong-method": 1, "method-refused": 3,
}
# misbehaviours of the answer's body: each command's own parser meets them
BODY_MODES = ("json-as-text", "garbage", "wrong-types", "bad-base64", "empty", "deep-json", "html-200")
# what the one line must say, where it is specific
SAYS = {
    "status-302": "redirects are not followed", "json-as-text": "not JSON: Content-Type text/plain",
    "html-200": "Content-Type text/html", "huge-length": "over the 4194304-byte limit",
    "huge-chunked": "over the 4194304-byte limit", "huge-header": "headers too large",
    "slow-body": "timed out", "slow-headers": "timed out", "tls-stall": "timed out",
    "control-chars": "evil?code?[0m", "html-502": "HTTP 502", "truncated": "connection lost",
    "status-429": "rate limited", "status-408": "timed out", "status-503": "unavailable", "status-403": "hostile_403",
}
# well-behaved answers: exit code per command (the "ok" server has no real
# keys: its content key is wrong, so decrypt must fail on the GCM tag and
# write nothing)
EXPECT_OK = {"unwrap": 0, "unwrap-rk": 0, "decrypt": 5, "fetch-cert": 0, "keys-sync": 0, "certify": 4}

baseline = {}
for name, mk in COMMANDS.items():
    d = tempfile.mkdtemp(dir=work)
    args, _ = mk(d)
    set_mode("ok")
    rc, out, err, secs, rss = run(args, os.path.join(d, "store"))
    baseline[name] = rss
    if rc != EXPECT_OK[name]:
        fail("%s against a well-behaved server: exit %s, want %s: %r" % (name, rc, EXPECT_OK[name], err[:300]))
    if name == "unwrap" and not re.fullmatch(rb"[0-9a-f]{64}\n", out):
        fail("unwrap: want the key in hex, got %r" % out[:100])
    if name == "decrypt" and os.listdir(os.path.join(d, "out")):
        fail("decrypt with a wrong key left %s" % os.listdir(os.path.join(d, "out")))

def check(m, want, name, mk):
    d = tempfile.mkdtemp(dir=work)
    args, clean = mk(d)
    rc, out, err, secs, rss = run(args, os.path.join(d, "store"))
    what = "%s vs %s" % (name, m)
    if os.environ.get("HOSTILE_SHOW") and name in ("unwrap", "certify"):
        print("%-22s %s %s" % (what, rc, err.decode(errors="replace").strip()))
    if rc != want:
        fail("%s: exit %s, want %s: %r" % (what, rc, want, err[:300]))
    lines = err.split(b"\n")
    if len(lines) != 2 or lines[1] != b"" or not lines[0].startswith(b"groupmail: "):
        fail("%s: stderr is not one line: %r" % (what, err[:300]))
    if re.search(rb"[^\x20-\x7e\n]", err) or len(err) > 1100:
        fail("%s: stderr not printable or too long: %r" % (what, err[:300]))
    if out:
        fail("%s: wrote to stdout: %r" % (what, out[:100]))
    if m in SAYS and name != "certify" and SAYS[m].encode() not in err:
        fail("%s: the error should say %r: %r" % (what, SAYS[m], err[:300]))
    for c in clean:
        if os.path.isdir(c) and os.listdir(c):
            fail("%s: left %s in %s" % (what, os.listdir(c), c))
    if rss > baseline[name] + RSS_SLACK:
        fail("%s: peak RSS %d KiB, %d KiB over the well-behaved run" % (what, rss, rss - baseline[name]))
    shutil.rmtree(d, ignore_errors=True)


# One mode at a time (the server reads it per connection), its commands
# side by side: the slow modes mostly wait for the timeout.
checked = 0
with concurrent.futures.ThreadPoolExecutor(max_workers=len(COMMANDS)) as pool:
    for m, want in EXPECT.items():
        set_mode(m)
        t_mode = time.monotonic()
        jobs = []
        for name, mk in COMMANDS.items():
            if m not in BODY_MODES and name not in ("unwrap", "fetch-cert"):
                continue  # one transport path for all: two commands (JSON and PEM) show it
            jobs.append(pool.submit(check, m, want, name, mk))
        for j in jobs:
            j.result()
        checked += len(jobs)
        if os.environ.get("HOSTILE_TIMES"):
            print("%-14s %.1fs" % (m, time.monotonic() - t_mode))

# The certificate server the group server names (no --certsrv) is part of
# its answer: one that is not https:// is an unusable answer, exit 4, said
# before a key pair is made (ec7cea0; it was exit 1 "invalid arguments"
# after the key pair), nothing stored.
set_mode("certsrv-http")
d = tempfile.mkdtemp(dir=work)
rc, out, err, secs, rss = run(["certify"], os.path.join(d, "store"))
if rc != 4 or b"names a certificate server that is not https://" not in err:
    fail("certify, the group naming an http:// certificate server: exit %s: %r" % (rc, err[:300]))
mstore = os.path.join(d, "store", "membership")
if os.path.isdir(mstore) and os.listdir(mstore):
    fail("certify, the group naming an http:// certificate server: left %s" % os.listdir(mstore))
checked += 1

srv.terminate()
srv.wait()
if failures:
    print("%d of %d checks failed" % (len(failures), checked))
    print("work dir kept: " + work)
    sys.exit(1)
shutil.rmtree(work, ignore_errors=True)
print("groupmail against a hostile server: %d command/misbehaviour pairs, every one a clean failure" % checked)
