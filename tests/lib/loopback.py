"""loopback.py: what the test servers in tests/lib that speak raw sockets
(hostile_groupsrv.py, hostile_smtpd.py) share: the listening half, and the
mode file a test writes to change their behaviour between runs."""
import os
import socket
import threading


def serve_forever(port_file, handle, backlog=64):
    """Listens on a free port of 127.0.0.1 only, writes the port number to
    port_file (atomically, once ready) and runs handle(conn) in a thread of
    its own for every connection, forever."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(backlog)
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.getsockname()[1]))
    os.rename(tmp, port_file)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def read_mode(mode_file):
    """The word in mode_file ("ok" when it is missing or empty)."""
    try:
        with open(mode_file) as f:
            return f.read().strip() or "ok"
    except OSError:
        return "ok"
