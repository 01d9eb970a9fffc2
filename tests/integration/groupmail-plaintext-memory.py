#!/usr/bin/python3
"""groupmail-plaintext-memory.py BIN: plaintext never lands in a disk file.

groupmail stages what it writes to standard output until the whole
operation succeeded (docs/groupmail.1.md, decrypt). For plaintext that
stage must be memory: an anonymous memfd, never a temp file in /tmp, named
or not (an unlinked or O_TMPFILE file is still written to the disk).

The test catches groupmail while the stage is open and looks at every file
it holds: `decrypt` with its standard output a pipe nobody reads yet (it
blocks copying the plaintext out), and `send` without --encrypt fed
plaintext by mistake on a standard input that stays open (it blocks
reading). Every regular file open in the process but a memfd must not hold
the plaintext. Then the runs complete: decrypt's output is the plaintext,
send refuses the plaintext (exit 5) and sends nothing.
"""
import os
import stat
import subprocess
import sys
import tempfile
import time

BIN = sys.argv[1]
GM = os.path.join(BIN, "groupmail")
MARKER = b"PLAINTEXT-MUST-NOT-REACH-THE-DISK"
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg, flush=True)


work = tempfile.mkdtemp(prefix="gm-plaintext.", dir=os.environ.get("GS_TEST_WORK", "/tmp"))
env = dict(os.environ, HOME=work, XDG_CONFIG_HOME=os.path.join(work, "config"))
p = lambda n: os.path.join(work, n)


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# A copy encrypted to the member's own certificate: decrypt --via own-key
# reads it with the key file, without a server.
openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p("me.key"), "-out", p("me.pem"),
        "-subj", "/CN=alice@example.org", "-days", "2")
plaintext = b"Subject: staged\n\n" + (MARKER + b" " + b"x" * 90 + b"\n") * 12000  # ~1.5 MB: fills any pipe
with open(p("plain.txt"), "wb") as f:
    f.write(plaintext)
openssl("cms", "-encrypt", "-binary", "-aes-256-gcm", "-recip", p("me.pem"), "-in", p("plain.txt"),
        "-out", p("m.smime"))


def held_files(pid):
    """(fd, link) of every regular file the process holds open."""
    out = []
    fddir = "/proc/%d/fd" % pid
    for fd in os.listdir(fddir):
        path = os.path.join(fddir, fd)
        try:
            link = os.readlink(path)
            if stat.S_ISREG(os.stat(path).st_mode):
                out.append((fd, link))
        except OSError:
            pass
    return out


def check_no_plaintext_on_disk(pid, what):
    """Asserts that the plaintext is staged in a memfd and in no other file."""
    files = held_files(pid)
    memfds = [link for _, link in files if link.startswith("/memfd:")]
    if not memfds:
        fail("%s: no memfd open while the plaintext is staged (files: %s)" % (what, files))
    for fd, link in files:
        if link.startswith("/memfd:"):
            continue
        try:
            with open("/proc/%d/fd/%s" % (pid, fd), "rb") as f:
                data = f.read()
        except OSError as e:
            fail("%s: cannot read %s: %s" % (what, link, e))
            continue
        if MARKER in data:
            fail("%s: the plaintext is in a disk file: %s" % (what, link))


def wait_blocked(proc, what, fd_readable=None):
    """Waits until the process sleeps in a pipe read or write."""
    for _ in range(600):
        if proc.poll() is not None:
            fail("%s: ended (exit %s) before it could be looked at" % (what, proc.returncode))
            return False
        try:
            with open("/proc/%d/wchan" % proc.pid) as f:
                wchan = f.read()
            with open("/proc/%d/stat" % proc.pid) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            wchan, state = "", "?"
        if state == "S" and "pipe" in wchan:
            return True
        time.sleep(0.05)
    fail("%s: never blocked on its pipe" % what)
    return False


# decrypt: stdout a pipe nobody reads yet; the plaintext is staged, and
# groupmail blocks copying it out once the pipe is full.
r, w = os.pipe()
dec = subprocess.Popen([GM, "decrypt", "--via", "own-key", "--cert", p("me.pem"), "--key", p("me.key"),
                        "--in", p("m.smime")], stdout=w, stderr=subprocess.PIPE, env=env)
os.close(w)
# the first bytes on the pipe: the whole message was decrypted and staged
os.read(r, 1)
got = b"x"
if wait_blocked(dec, "decrypt"):
    check_no_plaintext_on_disk(dec.pid, "decrypt")
with os.fdopen(r, "rb") as f:
    got += f.read()
err = dec.stderr.read()
if dec.wait() != 0:
    fail("decrypt exit %d: %s" % (dec.returncode, err))
if MARKER not in got or not got.endswith(plaintext[-200:]):
    fail("decrypt: standard output is not the plaintext (%d bytes)" % len(got))

# send without --encrypt, fed plaintext by mistake: groupmail reads it all
# before it can refuse it; the open stdin keeps it reading.
sent = subprocess.Popen([GM, "send", "--smtp", "smtp://127.0.0.1:9", "--to", "eng@lists.example.org"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
sent.stdin.write(plaintext)
sent.stdin.flush()
if wait_blocked(sent, "send"):
    check_no_plaintext_on_disk(sent.pid, "send")
sent.stdin.close()
out, err = sent.stdout.read(), sent.stderr.read()
sent.wait(timeout=60)
if sent.returncode != 5 or b"not an S/MIME encrypted message" not in err or out:
    fail("send of plaintext: exit %d, stderr %r (want 5, a refusal)" % (sent.returncode, err))

# "-" for --in and --out is the standard stream (as curl's -o - takes it),
# not a file of that name in the working directory holding the plaintext
os.mkdir(p("cwd"))
with open(p("m.smime"), "rb") as f:
    dash = subprocess.run([GM, "decrypt", "--via", "own-key", "--cert", p("me.pem"), "--key", p("me.key"),
                           "--in", "-", "--out", "-"], stdin=f, capture_output=True, cwd=p("cwd"), env=env)
if os.listdir(p("cwd")):
    fail("decrypt --in - --out - left %s in its working directory" % os.listdir(p("cwd")))
if dash.returncode != 0 or dash.stdout != plaintext:
    fail("decrypt --in - --out -: exit %d, %d bytes on standard output, stderr %r"
         % (dash.returncode, len(dash.stdout), dash.stderr))

if failures:
    print("%d failure(s)" % len(failures))
    sys.exit(1)
subprocess.run(["rm", "-rf", work])
print("ok: plaintext staged only in memory (decrypt to standard output, send's input)")
