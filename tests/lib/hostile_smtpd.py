#!/usr/bin/python3
"""hostile_smtpd.py: an SMTP relay that misbehaves, for the exploder's
tests (tests/integration/exploder-hostile-relay.sh). A raw-socket server,
because aiosmtpd (tests/lib/smtpd.py) cannot drop a connection in the
middle of DATA, take a message and never say so, stall before a reply or
answer garbage.

Usage: hostile_smtpd.py --dir DIR --port-file F --mode-file F

The behaviour is the word in --mode-file, read at each new connection.
Storage is smtpd.py's, so `smtpd.py --dir DIR --list-accepted` reads it:
an accepted message is DIR/new/<id> and one line "<id> <mail-from> <rcpt>"
per recipient in DIR/envelope.log, written before the reply that accepts
it (or instead of it, in the modes that take a message and then fail to
say so). DIR/transcript.log has every line both ways, for debugging.

Modes:
  ok                 a well-behaved relay
  per-rcpt           RCPT answers by local part: containing "t4" 450, "p5" 550,
                     else 250
(The 5xx and 4xx texts of per-rcpt, mail-4xx and end-5xx carry terminal
escape sequences and quotes: they must not reach a log or the spool.)
  mail-4xx           451 to MAIL FROM            mail-5xx   550 to MAIL FROM
  data-4xx           451 to the DATA command     data-5xx   554 to the DATA command
  end-4xx            451 after the end of DATA   end-5xx    554 after the end of DATA
  drop-mid-data      closes the connection halfway through the DATA bytes
  drop-before-reply  reads the whole DATA, stores nothing, closes without a reply
  drop-after-accept  stores the message, then closes without a reply (the
                     SMTP duplicate window: the sender cannot know it was taken)
  slow-greeting      waits 120 s before the 220 greeting
  slow-rcpt          waits 120 s before answering RCPT
  slow-end-reply     stores the message, answers 250 only after 120 s (the
                     duplicate window again, by timeout)
  late-once          the first end of DATA since the mode was set is stored
                     and answered 1.5 s late (past a 1 s relay_timeout, so the
                     late 250 arrives while the sender is on its next
                     command); every later one at once
  garbage-greeting   "hello there" instead of a 220
  garbage-rcpt       "2x0 what?" to RCPT
  garbage-end        "ok thanks" after the end of DATA (stores nothing)
  endless-ehlo       "250-..." continuation lines to EHLO, forever
  long-line          one reply line of 2 MiB with no end, to EHLO
  binary             a 250 to RCPT full of NUL and control bytes
"""
import argparse
import itertools
import os
import sys
import threading
import time

import loopback

ARGS = None
SEQ = itertools.count(1)
LOCK = threading.Lock()
SLOW = 120


def mode():
    return loopback.read_mode(ARGS.mode_file)


def transcript(cid, direction, line):
    with LOCK:
        with open(os.path.join(ARGS.dir, "transcript.log"), "ab") as f:
            f.write(b"%d %s %s\n" % (cid, direction.encode(), line[:200]))


def store(sender, rcpts, data):
    mid = "%d.%d.%d" % (int(time.time()), os.getpid(), next(SEQ))
    tmp = os.path.join(ARGS.dir, "tmp", mid)
    with open(tmp, "wb") as f:
        f.write(data.replace(b"\r\n", b"\n"))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(ARGS.dir, "new", mid))
    with LOCK:
        with open(os.path.join(ARGS.dir, "envelope.log"), "a") as f:
            for r in rcpts:
                f.write("%s %s %s\n" % (mid, sender or "<>", r))
    return mid


def first_late():
    """True once per setting of late-once (a marker beside the mode file)."""
    marker = ARGS.mode_file + ".late-once"
    with LOCK:
        if os.path.exists(marker) and os.path.getmtime(marker) >= os.path.getmtime(ARGS.mode_file):
            return False
        with open(marker, "w"):
            pass
        return True


class Session:
    def __init__(self, conn, m):
        self.conn = conn
        self.m = m
        self.cid = next(SEQ)
        self.buf = b""

    def send(self, line):
        transcript(self.cid, ">", line)
        self.conn.sendall(line + b"\r\n")

    def readline(self):
        while b"\r\n" not in self.buf:
            chunk = self.conn.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        transcript(self.cid, "<", line)
        return line

    def read_data(self, drop_half=False):
        """The DATA bytes up to CRLF.CRLF, dot-unstuffed; None if dropped."""
        seen = 0
        while b"\r\n.\r\n" not in self.buf and not self.buf.startswith(b".\r\n"):
            chunk = self.conn.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
            seen += len(chunk)
            if drop_half and seen > 200:
                return None
        if self.buf.startswith(b".\r\n"):
            data, self.buf = b"", self.buf[3:]
        else:
            data, _, self.buf = self.buf.partition(b"\r\n.\r\n")
            data += b"\r\n"
        transcript(self.cid, "<", b"(%d bytes of DATA)" % len(data))
        return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in data.split(b"\r\n"))

    def run(self):
        m = self.m
        if m == "slow-greeting":
            time.sleep(SLOW)
        if m == "garbage-greeting":
            return self.send(b"hello there")
        self.send(b"220 hostile.example.org ESMTP")
        sender, rcpts = None, []
        while True:
            line = self.readline()
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                if m == "endless-ehlo":
                    while True:
                        self.send(b"250-hostile.example.org says more")
                if m == "long-line":
                    self.conn.sendall(b"250-" + b"x" * (2 << 20))
                    time.sleep(SLOW)
                    return
                self.send(b"250-hostile.example.org")
                self.send(b"250 8BITMIME")
            elif verb == b"MAIL":
                if m == "mail-4xx":
                    self.send(b"451 4.3.0 try MAIL \x1b[31magain\x1b[0m later")
                elif m == "mail-5xx":
                    self.send(b"550 5.7.1 sender refused for good")
                else:
                    sender = line[10:].strip(b"<> ").decode("latin-1")
                    rcpts = []
                    self.send(b"250 2.1.0 ok")
            elif verb == b"RCPT":
                addr = line[8:].strip(b"<> ").decode("latin-1")
                local = addr.split("@")[0]
                if m == "slow-rcpt":
                    time.sleep(SLOW)
                if m == "garbage-rcpt":
                    self.send(b"2x0 what?")
                elif m == "binary":
                    self.send(b"250 \x00\x01\x1b[31m\x7f\xff ok")
                    rcpts.append(addr)
                elif m == "per-rcpt" and "t4" in local:
                    self.send(b"450 4.2.1 mailbox busy, try later")
                elif m == "per-rcpt" and "p5" in local:
                    self.send(b"550 5.1.1 no such user \x1b[31mgone\x1b[0m")
                else:
                    rcpts.append(addr)
                    self.send(b"250 2.1.5 ok")
            elif verb == b"DATA":
                if m == "data-4xx":
                    self.send(b"451 4.3.0 not now")
                    continue
                if m == "data-5xx":
                    self.send(b"554 5.3.0 no DATA for you")
                    continue
                self.send(b"354 go ahead")
                data = self.read_data(drop_half=(m == "drop-mid-data"))
                if data is None or m == "drop-before-reply":
                    return
                if m == "end-4xx":
                    self.send(b"451 4.3.0 could not store, try later")
                elif m == "end-5xx":
                    self.send(b"554 5.6.0 message \x1b[31mrefused\x1b[0m \"quoted\"")
                elif m == "garbage-end":
                    self.send(b"ok thanks")
                else:
                    mid = store(sender, rcpts, data)
                    if m == "drop-after-accept":
                        return
                    if m == "slow-end-reply":
                        time.sleep(SLOW)
                    if m == "late-once" and first_late():
                        time.sleep(1.5)
                    self.send(b"250 2.0.0 stored as " + mid.encode())
                rcpts = []
            elif verb == b"RSET":
                rcpts = []
                self.send(b"250 2.0.0 ok")
            elif verb == b"NOOP":
                self.send(b"250 2.0.0 ok")
            elif verb == b"QUIT":
                self.send(b"221 2.0.0 bye")
                return
            else:
                self.send(b"502 5.5.2 what?")


def handle(conn):
    s = Session(conn, mode())
    try:
        s.run()
    except (OSError, EOFError):
        pass
    finally:
        conn.close()


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--port-file", required=True)
    p.add_argument("--mode-file", required=True)
    ARGS = p.parse_args()
    for sub in ("tmp", "new"):
        os.makedirs(os.path.join(ARGS.dir, sub), exist_ok=True)
    loopback.serve_forever(ARGS.port_file, handle)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
