"""Loopback servers for the parity snippets: real ``websockets`` servers (the monkeypatch
replaces client entry points only) and raw TCP servers that misbehave in the handshake."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import tempfile
import threading
import time

from websockets.sync.server import serve as sync_serve, unix_serve as sync_unix_serve

SEEN: list = []  # request headers of every handshake the servers saw, in order
PATHS: list = []  # and their paths


def echo(ws):
    for msg in ws:
        ws.send(msg)


def record(connection, request):
    SEEN.append(request.headers)
    PATHS.append(request.path)


def redirecting(to_for_path, status=302):
    """``process_request`` answering ``status`` with ``Location: to_for_path(path)`` when not
    None."""

    def process_request(connection, request):
        SEEN.append(request.headers)
        PATHS.append(request.path)
        location = to_for_path(request.path)
        if location is not None:
            response = connection.respond(status, "")
            response.headers["Location"] = location
            return response
        return None

    return process_request


@contextlib.contextmanager
def server(process_request=record, ssl_context=None, unix_path=None, handler=echo, **kwargs):
    """A websockets sync server in a thread; yields its ``ws://``/``wss://`` URI (or the path)."""
    if unix_path is not None:
        srv = sync_unix_serve(handler, unix_path, process_request=process_request, ssl=ssl_context, **kwargs)
    else:
        srv = sync_serve(handler, "127.0.0.1", 0, process_request=process_request, ssl=ssl_context, **kwargs)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        if unix_path is not None:
            yield unix_path
        else:
            port = srv.socket.getsockname()[1]
            yield f"{'wss' if ssl_context else 'ws'}://127.0.0.1:{port}"
    finally:
        srv.shutdown()
        t.join(5)


@contextlib.contextmanager
def raw_server(answer):
    """A TCP server whose one connection is handled by ``answer(conn)``; yields the ws:// URI."""
    s = socket.create_server(("127.0.0.1", 0))

    def run():
        try:
            conn, _ = s.accept()
        except OSError:
            return
        with conn:
            try:
                answer(conn)
            except OSError:
                pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield f"ws://127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


def proxy_answering(data):
    """A raw server answer for a proxy: read the CONNECT request, send ``data`` (if any), close."""

    def answer(conn):
        conn.recv(4096)
        if data:
            conn.sendall(data)

    return answer


@contextlib.contextmanager
def environ(**values):
    """The process environment with every ``*_proxy`` variable removed and ``values`` set."""
    saved = dict(os.environ)
    for k in list(os.environ):
        if k.lower().endswith("_proxy"):
            del os.environ[k]
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


PROXY_ANSWERS = [
    ("proxy 407", b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"),
    ("proxy junk", b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
    ("proxy eof", b""),
]


def close_at_once(conn):
    conn.recv(4096)


def junk(conn):
    conn.recv(4096)
    conn.sendall(b"220 smtp.invalid ESMTP Postfix\r\n")
    conn.recv(4096)


def no_accept(conn):
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    conn.recv(4096)


def silent(conn):
    conn.recv(4096)
    time.sleep(1)


def certificate(directory: str) -> str:
    """A self-signed certificate (not a CA) for localhost, 127.0.0.1 and "overridden"."""
    pem = os.path.join(directory, "cert.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,DNS:overridden,IP:127.0.0.1",
         "-addext", "basicConstraints=critical,CA:FALSE",
         "-keyout", pem, "-out", pem],
        check=True, capture_output=True,
    )
    return pem


def contexts(directory: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    pem = certificate(directory)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pem)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(pem)
    return server_ctx, client_ctx


def temp_dir():
    return tempfile.TemporaryDirectory()
