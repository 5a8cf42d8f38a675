"""Fixtures: real servers on loopback for weft's Python clients.

- ``weft_echo``: the ``weft echo`` binary (``WEFT_BIN``, else target/ci or target/debug of the
  repository, built on demand), with permessage-deflate.
- ``py_server``: a Python ``websockets`` server in a thread with a few paths: ``/echo``,
  ``/headers`` (answers with the request's ``X-Test`` header), ``/close/CODE/REASON``,
  ``/send/N`` (sends N text messages then closes 1000), ``/reject`` (HTTP 403), ``/silent``
  (never sends, never answers pings: keepalive tests).
- ``raw_server``: a TCP server driven by a script function, for protocol violations no real
  WebSocket server would commit.
- ``tls_server``: ``websockets`` over TLS with a throwaway CA made with ``openssl``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Callable

import pytest
from websockets.asyncio.server import serve
from websockets.http11 import Response
from websockets.datastructures import Headers

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def weft_binary() -> str:
    env = os.environ.get("WEFT_BIN")
    if env:
        return env
    for profile in ("ci", "release", "debug"):
        p = ROOT / "target" / profile / "weft"
        if p.exists():
            return str(p)
    subprocess.run(["cargo", "build", "-q", "-p", "weft-cli"], cwd=ROOT, check=True)
    return str(ROOT / "target" / "debug" / "weft")


@pytest.fixture(scope="session")
def weft_echo():
    port = free_port()
    proc = subprocess.Popen(
        [weft_binary(), "echo", "--addr", f"127.0.0.1:{port}", "--deflate"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"ws://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def _handler(ws) -> None:
    path = ws.request.path
    if path.startswith("/headers"):
        await ws.send(ws.request.headers.get("X-Test", ""))
        await ws.wait_closed()
    elif path.startswith("/close/"):
        _, _, code, reason = path.split("/", 3)
        await ws.close(int(code), urllib.parse.unquote(reason))
    elif path.startswith("/send/"):
        for i in range(int(path.rsplit("/", 1)[1])):
            await ws.send(f"message {i}")
        await ws.close(1000, "done")
    elif path.startswith("/silent"):
        await asyncio.sleep(3600)
    else:
        async for m in ws:
            await ws.send(m)


def _process_request(connection, request):
    if request.path.startswith("/reject"):
        return Response(403, "Forbidden", Headers([("Content-Type", "text/plain")]), b"go away\n")
    return None


def _select_subprotocol(connection, subprotocols):
    return "chat.v2" if "chat.v2" in subprotocols else None


class _ServerThread:
    def __init__(self, ssl_context: ssl.SSLContext | None = None, **kwargs) -> None:
        self.port = free_port()
        self.ssl_context = ssl_context
        self.kwargs = kwargs
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Future | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop = self.loop.create_future()
            async with serve(
                _handler,
                "127.0.0.1",
                self.port,
                ssl=self.ssl_context,
                process_request=_process_request,
                select_subprotocol=_select_subprotocol,
                max_size=None,
                **self.kwargs,
            ):
                self.ready.set()
                await self.stop

        asyncio.run(main())

    def __enter__(self) -> "_ServerThread":
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        assert self.loop is not None and self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set_result, None)
        self.thread.join(10)


@pytest.fixture(scope="session")
def py_server():
    # Keepalive disabled on the server: the client's own pings are under test.
    with _ServerThread(compression="deflate", ping_interval=None) as s:
        yield f"ws://127.0.0.1:{s.port}"


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A throwaway CA (``ca.pem``) and a server certificate for localhost and 127.0.0.1
    (``srv.pem``, ``srv.key``), made with ``openssl``; the directory."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("tls")
    run = lambda *a: subprocess.run(a, cwd=d, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=weft test CA")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
        "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf")
    return d


@pytest.fixture(scope="session")
def tls_server(tls_files):
    d = tls_files
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "srv.pem", d / "srv.key")
    with _ServerThread(ssl_context=ctx) as s:
        yield f"wss://localhost:{s.port}", str(d / "ca.pem")


@pytest.fixture()
def weft_tls_echo(tls_files):
    """``weft echo`` over TLS with the ``tls_files`` certificate: (wss URL, CA file)."""
    port = free_port()
    d = tls_files
    proc = subprocess.Popen(
        [weft_binary(), "echo", "--addr", f"127.0.0.1:{port}", "--tls-cert", str(d / "srv.pem"),
         "--tls-key", str(d / "srv.key")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"wss://localhost:{port}/", str(d / "ca.pem")
    finally:
        proc.terminate()
        proc.wait(10)


class RawServer:
    """Accepts one connection at a time, completes the WebSocket handshake (unless the
    script does it), then runs ``script(conn)`` in a thread."""

    def __init__(self, script: Callable[[socket.socket], None], handshake: bool = True) -> None:
        self.script = script
        self.handshake = handshake
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            if self.handshake:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key:")][0]
                accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            try:
                self.script(conn)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """An unmasked server frame."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([b0, n])
    elif n < 65536:
        head = bytes([b0, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, 127]) + n.to_bytes(8, "big")
    return head + payload


@pytest.fixture
def raw_server():
    servers: list[RawServer] = []

    def make(script: Callable[[socket.socket], None], handshake: bool = True) -> RawServer:
        s = RawServer(script, handshake)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def read_client_frame(conn: socket.socket) -> tuple[int, bytes]:
    """Read one masked client frame: (opcode, unmasked payload)."""

    def exact(n: int) -> bytes:
        b = b""
        while len(b) < n:
            chunk = conn.recv(n - len(b))
            if not chunk:
                raise EOFError
            b += chunk
        return b

    b0, b1 = exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(exact(2), "big")
    elif n == 127:
        n = int.from_bytes(exact(8), "big")
    mask = exact(4)
    data = exact(n)
    return b0 & 0x0F, bytes(c ^ mask[i % 4] for i, c in enumerate(data))


def accept_response(head: bytes) -> bytes:
    key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key:")][0]
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")


class TcpProxy:
    """A loopback TCP proxy under the test's control, to cut the network between a client and a
    server. ``mode``: ``"forward"`` relays to ``127.0.0.1:upstream``; ``"cut"`` accepts and
    closes at once (a handshake cut short); ``"401"`` answers the upgrade with HTTP 401.
    ``cut_all()`` drops every relayed connection; ``down()`` stops listening (connections are
    refused) until ``up()``."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.mode = "forward"
        self.accepted = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self.port = 0
        self.up()

    def up(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, args=(self.sock,), daemon=True).start()

    def down(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone would not)
        except OSError:
            pass
        self.sock.close()
        self.cut_all()

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.mode == "cut":
                conn.close()
                continue
            if self.mode == "401":
                threading.Thread(target=self._refuse, args=(conn,), daemon=True).start()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._open += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _refuse(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut_all(self) -> None:
        with self._lock:
            socks, self._open = self._open, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.down()


@pytest.fixture
def tcp_proxy():
    proxies: list[TcpProxy] = []

    def make(upstream: int) -> TcpProxy:
        p = TcpProxy(upstream)
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        p.close()
