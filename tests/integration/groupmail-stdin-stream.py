#!/usr/bin/python3
"""groupmail-stdin-stream.py BIN: `--in -` reads the standard input stream.

`--in -` names standard input (docs/groupmail.1.md), as omitting --in
does: the stream groupmail was given, read where it stands. It was opened
anew by the name /dev/stdin, so a socket on standard input (socket
activation, inetd, a program that hands groupmail one end of a
socketpair) was "cannot open /dev/stdin", and a file whose first bytes the
caller had already read (`{ read -r line; groupmail encrypt --in -; } <
FILE`) was read again from its start. encrypt --group-cert needs no
server; openssl cms reads what it wrote.
"""
import os
import socket
import subprocess
import sys
import tempfile

BIN = sys.argv[1]
GM = os.path.join(BIN, "groupmail")
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg, flush=True)


work = tempfile.mkdtemp(prefix="gm-stdin.", dir=os.environ.get("GS_TEST_WORK", "/tmp"))
env = dict(os.environ, HOME=work, XDG_CONFIG_HOME=os.path.join(work, "config"))
p = lambda n: os.path.join(work, n)
subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p("k.pem"), "-out",
                p("c.pem"), "-subj", "/CN=list@example.org", "-addext", "subjectAltName=email:list@example.org",
                "-days", "2"], check=True, capture_output=True)
FIRST = b"X-Read-By-The-Caller: yes\n"
MSG = b"Subject: over a socket\n\nhello through standard input\n"


def encrypt(stdin, out):
    r = subprocess.run([GM, "encrypt", "--group-cert", p("c.pem"), "--in", "-", "--out", p(out)], stdin=stdin,
                       capture_output=True, env=env, cwd=work)
    if r.returncode != 0:
        return "exit %d, %r" % (r.returncode, r.stderr)
    d = subprocess.run(["openssl", "cms", "-decrypt", "-inkey", p("k.pem"), "-recip", p("c.pem"), "-in", p(out)],
                       capture_output=True)
    return d.stdout.replace(b"\r\n", b"\n") if d.returncode == 0 else "openssl cms: %r" % d.stderr


# a socket on standard input
a, b = socket.socketpair()
a.sendall(MSG)
a.shutdown(socket.SHUT_WR)
got = encrypt(b, "sock.p7m")
a.close()
b.close()
if got != MSG:
    fail("encrypt --in - with a socket on standard input: %r" % (got,))

# a file on standard input, its first line already read by the caller
with open(p("m.eml"), "wb") as f:
    f.write(FIRST + MSG)
with open(p("m.eml"), "rb") as f:
    os.lseek(f.fileno(), len(FIRST), os.SEEK_SET)
    got = encrypt(f, "file.p7m")
if got != MSG:
    fail("encrypt --in - read the file on standard input from its start, not where the stream stood: %r" % (got,))

if failures:
    sys.exit(1)
print("ok: --in - reads the standard input stream (a socket; a file where it stands)")
subprocess.run(["rm", "-rf", work])
