#!/usr/bin/python3
"""smtpd.py: a real SMTP server on loopback for groupsrv's tests.

Built on Debian's python3-aiosmtpd; run it with /usr/bin/python3 (the pyenv
python3 on PATH does not have aiosmtpd). It speaks real SMTP (EHLO, optional
STARTTLS, MAIL, RCPT, DATA with dot-unstuffing) so the code under test talks
to it exactly as it would to Postfix.

Serving:
  smtpd.py --dir DIR [--port N] [--port-file F] [--pid-file F] [options]

Storage (maildir-like, in DIR):
  DIR/tmp/            messages being written
  DIR/new/<id>        each accepted message, one file, written to tmp/ then
                      renamed (never half-visible). Bytes as received, with
                      CRLF turned into LF the way a local MDA stores mail.
  DIR/envelope.log    after a message is stored: one line per accepted
                      recipient: "<id> <mail-from> <rcpt>" (mail-from "<>" if null)
  DIR/rcpt.log        every RCPT TO as answered: "<session> <code> <rcpt>"
  DIR/options.log     after a message is stored: "<id> <MAIL FROM parameters>" ("-" if none)

Options:
  --dir DIR           storage directory (created if missing)                 [required]
  --host ADDR         listen address                                          [127.0.0.1]
  --port N            listen port; 0 picks a free one                         [0]
  --port-file F       write the listening port here (atomically) once ready
  --pid-file F        write our pid here once ready
  --refuse-rcpt RE    answer 550 to RCPT addresses matching the regex (permanent failure)
  --defer-rcpt RE     answer 450 to RCPT addresses matching the regex (temporary failure)
  --no-smtputf8       do not offer SMTPUTF8 (RFC 6531) in the reply to EHLO
  --down-file F       while file F exists, answer 421 to MAIL FROM (the relay is "down"
                      without closing the port); remove F to bring it "up"
  --refuse-data       answer 554 at the end of DATA (message refused as a whole)
  --data-delay SECS   sleep before answering the end of DATA (to slow a fan-out so a
                      test can kill the sender in the middle)
  --tls-cert F --tls-key F
                      offer STARTTLS with this certificate and key
  --require-starttls  refuse MAIL before STARTTLS (530)
  --implicit-tls      TLS from the first byte (smtps://, port 465 style) with
                      --tls-cert/--tls-key, instead of offering STARTTLS
  --auth-file F       offer AUTH (PLAIN, LOGIN) and accept the one login in F, a line
                      "USER PASSWORD"; only over TLS (aiosmtpd's auth_require_tls).
                      DIR/auth.log gets "<session> ok|refused <user>" per attempt
                      (never the password)
  --require-auth      refuse MAIL before a successful AUTH (530)
  --auth-in-clear     offer AUTH without TLS too (as a Postfix with smtpd_tls_auth_only
                      = no does): for tests that a client never sends it so
  --max-size BYTES    DATA size limit                                          [33554432]
  --data-reply ADDR=TEXT
                      mail for ADDR is refused at the end of DATA with the reply TEXT
                      (a 5xx line; {recipient} and {local} in it are replaced by the
                      address and its local part), as a relay's content filter or a
                      full mailbox may word it. Repeatable.
  --pipe ADDR=COMMAND mail for ADDR is not stored but handed to COMMAND on stdin, the
                      way Postfix's pipe(8) transport feeds a list manager. COMMAND is
                      split like a shell line (no shell runs); {sender} and {recipient}
                      in it are replaced. Exit 0 accepts, 75 (EX_TEMPFAIL) answers 451,
                      any other code 554, as Postfix does. Repeatable.

Reading results (no server started):
  smtpd.py --dir DIR --list-accepted   print every accepted recipient, one per line
                                        (duplicates kept: a re-sent copy shows twice)
  smtpd.py --dir DIR --list-messages   print the path of every stored message

Stop the server with SIGTERM or SIGINT. It binds only to the given address
(loopback by default) and never relays anything.
"""

import argparse
import asyncio
import itertools
import os
import re
import shlex
import signal
import ssl
import sys
import time

try:
    from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
except ImportError:  # pragma: no cover
    sys.stderr.write("smtpd.py: python3-aiosmtpd missing; run it with /usr/bin/python3\n")
    sys.exit(2)


def write_atomic(path, text):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def append_line(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()


class Handler:
    def __init__(self, args):
        self.args = args
        self.dir = args.dir
        self.refuse = re.compile(args.refuse_rcpt) if args.refuse_rcpt else None
        self.defer = re.compile(args.defer_rcpt) if args.defer_rcpt else None
        self.seq = itertools.count(1)
        self.pipes = {}
        for spec in args.pipe or []:
            addr, sep, cmd = spec.partition("=")
            if not sep or not addr or not cmd:
                raise SystemExit("smtpd.py: --pipe wants ADDR=COMMAND")
            self.pipes[addr.lower()] = cmd
        self.data_replies = {}
        for spec in args.data_reply or []:
            addr, sep, text = spec.partition("=")
            if not sep or not addr or not re.match(r"5[0-9][0-9] ", text):
                raise SystemExit("smtpd.py: --data-reply wants ADDR=5xx TEXT")
            self.data_replies[addr.lower()] = text

    async def run_pipe(self, cmd, sender, rcpt, data):
        argv = [a.replace("{sender}", sender).replace("{recipient}", rcpt) for a in shlex.split(cmd)]
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate(data)
        append_line(os.path.join(self.dir, "pipe.log"), "%d %s %s" % (proc.returncode, rcpt,
                    err.decode("utf-8", "replace").strip().replace("\n", " | ")[:300]))
        return proc.returncode

    def session_id(self, session):
        sid = getattr(session, "_gs_id", None)
        if sid is None:
            sid = "%d.%d.%d" % (int(time.time()), os.getpid(), next(self.seq))
            session._gs_id = sid
        return sid

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.args.down_file and os.path.exists(self.args.down_file):
            return "421 4.3.2 service not available (down-file present)"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        sid = self.session_id(session)
        if self.refuse and self.refuse.search(address):
            code, reply = 550, "550 5.1.1 recipient refused"
        elif self.defer and self.defer.search(address):
            code, reply = 450, "450 4.2.1 recipient deferred, try later"
        else:
            code, reply = 250, "250 OK"
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        append_line(os.path.join(self.dir, "rcpt.log"), "%s %d %s" % (sid, code, address))
        return reply

    async def handle_DATA(self, server, session, envelope):
        if self.args.data_delay > 0:
            await asyncio.sleep(self.args.data_delay)
        if self.args.refuse_data:
            return "554 5.6.0 message refused"
        mid = "%s.%d" % (self.session_id(session), next(self.seq))
        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        data = data.replace(b"\r\n", b"\n")
        tmp = os.path.join(self.dir, "tmp", mid)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(self.dir, "new", mid))
        sender = envelope.mail_from or "<>"
        stored = []
        for r in envelope.rcpt_tos:
            said = self.data_replies.get(r.lower())
            if said is not None:
                os.unlink(os.path.join(self.dir, "new", mid))
                return said.replace("{recipient}", r).replace("{local}", r.rsplit("@", 1)[0])
            cmd = self.pipes.get(r.lower())
            if cmd is None:
                stored.append(r)
                continue
            rc = await self.run_pipe(cmd, envelope.mail_from or "", r, data)
            if rc == 75:
                os.unlink(os.path.join(self.dir, "new", mid))
                return "451 4.3.0 pipe to %s: temporary failure, try later" % r
            if rc != 0:
                os.unlink(os.path.join(self.dir, "new", mid))
                return "554 5.3.0 pipe to %s: refused (exit %d)" % (r, rc)
        if not stored:
            os.unlink(os.path.join(self.dir, "new", mid))
            return "250 2.0.0 delivered to pipe"
        with open(os.path.join(self.dir, "options.log"), "a") as f:
            f.write("%s %s\n" % (mid, " ".join(envelope.mail_options) or "-"))
        with open(os.path.join(self.dir, "envelope.log"), "a") as f:
            for r in stored:
                f.write("%s %s %s\n" % (mid, sender, r))
            f.flush()
        # Only now, with the copy stored, is the message accepted.
        return "250 2.0.0 stored as %s" % mid


def list_accepted(d):
    try:
        with open(os.path.join(d, "envelope.log")) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    print(parts[2])
    except FileNotFoundError:
        pass


def list_messages(d):
    nd = os.path.join(d, "new")
    if os.path.isdir(nd):
        for name in sorted(os.listdir(nd)):
            print(os.path.join(nd, name))


def make_authenticator(args, handler):
    with open(args.auth_file) as f:
        user, _, password = f.readline().rstrip("\n").partition(" ")

    def authenticator(server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        who = auth_data.login.decode("utf-8", "replace")
        ok = auth_data.login == user.encode() and auth_data.password == password.encode()
        append_line(os.path.join(args.dir, "auth.log"), "%s %s %s" % (handler.session_id(session),
                    "ok" if ok else "refused", who.replace(" ", "_")[:64]))
        return AuthResult(success=ok, handled=False)  # False: aiosmtpd sends the 535
    return authenticator


async def serve(args):
    loop = asyncio.get_running_loop()
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    handler = Handler(args)

    implicit = tls if args.implicit_tls else None
    # Without --auth-file no AUTH is offered at all (aiosmtpd would offer
    # LOGIN and PLAIN and refuse every login): a relay that takes mail from
    # anyone on loopback.
    auth = dict(auth_exclude_mechanism=["LOGIN", "PLAIN"])
    if args.auth_file:
        # aiosmtpd knows only STARTTLS as TLS: over --implicit-tls it would
        # not offer AUTH at all with auth_require_tls
        auth = dict(authenticator=make_authenticator(args, handler), auth_required=args.require_auth,
                    auth_require_tls=not (args.implicit_tls or args.auth_in_clear))

    def factory():
        return SMTP(handler, hostname="smtpd.test", data_size_limit=args.max_size,
                    tls_context=None if implicit else tls, require_starttls=args.require_starttls,
                    enable_SMTPUTF8=not args.no_smtputf8, timeout=60, **auth)

    server = await loop.create_server(factory, host=args.host, port=args.port, ssl=implicit)
    port = server.sockets[0].getsockname()[1]
    if args.pid_file:
        write_atomic(args.pid_file, "%d\n" % os.getpid())
    if args.port_file:
        write_atomic(args.port_file, "%d\n" % port)
    stop = loop.create_future()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, lambda: stop.done() or stop.set_result(None))
    await stop
    server.close()
    await server.wait_closed()


def main():
    p = argparse.ArgumentParser(description="SMTP server on loopback for tests (see header)")
    p.add_argument("--dir", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file")
    p.add_argument("--pid-file")
    p.add_argument("--refuse-rcpt")
    p.add_argument("--defer-rcpt")
    p.add_argument("--down-file")
    p.add_argument("--no-smtputf8", action="store_true")
    p.add_argument("--refuse-data", action="store_true")
    p.add_argument("--data-delay", type=float, default=0.0)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--require-starttls", action="store_true")
    p.add_argument("--implicit-tls", action="store_true")
    p.add_argument("--auth-file")
    p.add_argument("--require-auth", action="store_true")
    p.add_argument("--auth-in-clear", action="store_true")
    p.add_argument("--max-size", type=int, default=33554432)
    p.add_argument("--pipe", action="append")
    p.add_argument("--data-reply", action="append")
    p.add_argument("--list-accepted", action="store_true")
    p.add_argument("--list-messages", action="store_true")
    args = p.parse_args()
    if args.list_accepted:
        list_accepted(args.dir)
        return 0
    if args.list_messages:
        list_messages(args.dir)
        return 0
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if (args.require_auth or args.auth_in_clear) and not args.auth_file:
        p.error("--require-auth and --auth-in-clear need --auth-file")
    if args.implicit_tls and not args.tls_cert:
        p.error("--implicit-tls needs --tls-cert and --tls-key")
    for sub in ("tmp", "new"):
        os.makedirs(os.path.join(args.dir, sub), exist_ok=True)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
