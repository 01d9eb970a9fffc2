"""pgpooler.py LISTEN_DIR PORT SERVER_DIR SERVER_PORT: a stand-in for a
connection pooler in session mode (PgBouncer pool_mode = session,
pgpool-II) in front of PostgreSQL, on unix sockets: each client connection
gets one server connection of its own for its life, and the bytes pass
through unchanged, except the server's BackendKeyData: like PgBouncer, the
pooler answers cancel requests itself, so the client is told a process id
and key of the pooler's making, never the backend's (libpq's PQbackendPID
is then no PostgreSQL process). SSL and GSS encryption requests are
refused ('N'), as a pooler without TLS configured does; the client goes on
in the clear. Listens on LISTEN_DIR/.s.PGSQL.PORT until killed.

What it does not model, and why that is enough here: no pool (a server
connection is never handed to a later client, so no server_reset_query;
the server reads its backend at each connect anyway); no cancel requests
(one is passed on as a startup packet with the made-up pid and cancels
nothing; groupsrv sends none); no authentication of its own, no TLS, no
transaction or statement pooling (docs/scale-out.md: unsupported). The
process id is replaced whatever the key's length (protocol 3.2 keys are
longer than 4 bytes), so the test cannot pass by a newer libpq's
BackendKeyData slipping through unchanged."""
import os
import random
import socket
import struct
import sys
import threading


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def client_to_server(client, server):
    try:
        while True:
            data = client.recv(65536)
            if not data:
                break
            server.sendall(data)
    except OSError:
        pass
    for s in (server, client):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def server_to_client(server, client):
    """Message by message: type byte, length (itself included), body."""
    try:
        while True:
            head = recv_exact(server, 5)
            kind, length = head[:1], struct.unpack("!I", head[1:])[0]
            body = recv_exact(server, length - 4)
            if kind == b"K" and length >= 12:
                # a process id no backend has (Linux's are at most 2^22)
                # and a key of the same length
                body = struct.pack("!I", random.randrange(1 << 24, 1 << 30)) + os.urandom(len(body) - 4)
            client.sendall(head + body)
    except (OSError, EOFError):
        pass
    for s in (server, client):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def handle(client, server_path):
    try:
        while True:
            length = struct.unpack("!I", recv_exact(client, 4))[0]
            packet = recv_exact(client, length - 4)
            code = struct.unpack("!I", packet[:4])[0]
            if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest
                client.sendall(b"N")
                continue
            break
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.connect(server_path)
        server.sendall(struct.pack("!I", length) + packet)
    except (OSError, EOFError):
        client.close()
        return
    threading.Thread(target=client_to_server, args=(client, server), daemon=True).start()
    server_to_client(server, client)
    client.close()
    server.close()


def main():
    listen_dir, port, server_dir, server_port = sys.argv[1:5]
    path = os.path.join(listen_dir, ".s.PGSQL." + port)
    server_path = os.path.join(server_dir, ".s.PGSQL." + server_port)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path + ".tmp")
    os.chmod(path + ".tmp", 0o777)
    srv.listen(64)
    os.rename(path + ".tmp", path)  # there once it is listening
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn, server_path), daemon=True).start()


if __name__ == "__main__":
    main()
