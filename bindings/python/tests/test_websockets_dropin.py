"""``weft.enable_monkeypatch()``: unmodified code written for ``websockets`` runs on weft.

Each script in ``websockets_snippets/`` is plain websockets client code (its documented quick
starts and realistic snippets). It runs twice in a fresh interpreter: once on the real
websockets, once after ``weft.enable_monkeypatch()``; both runs must print the same lines, and
the weft run must really have connected through weft. Servers: a Python ``websockets`` server
and ``weft echo``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import frame, read_client_frame

SNIPPETS = Path(__file__).parent / "websockets_snippets"

RUNNER = textwrap.dedent(
    """
    import runpy, sys
    if sys.argv[1] == "weft":
        if sys.argv[3] == "no-websockets":
            sys.modules["websockets"] = None  # as if websockets were not installed
        import weft
        weft.enable_monkeypatch()
    runpy.run_path(sys.argv[2], run_name="__main__")
    if sys.argv[1] == "weft":
        import weft.compat
        print("[weft attempts: %d]" % weft.compat.stats["attempts"], file=sys.stderr)
    """
)


def run(snippet: str, impl: str, env: dict[str, str], mode: str = "-") -> tuple[str, str]:
    e = dict(os.environ, PYTHONWARNINGS="ignore::DeprecationWarning", **env)
    e.setdefault("WEBSOCKETS_BACKOFF_INITIAL_DELAY", "0.1")
    e.setdefault("WEBSOCKETS_BACKOFF_MIN_DELAY", "0.2")
    p = subprocess.run(
        [sys.executable, "-c", RUNNER, impl, str(SNIPPETS / snippet), mode],
        env=e,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, f"{snippet} on {impl} failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout, p.stderr


def same_on_both(snippet: str, env: dict[str, str], expected: list[str]) -> None:
    ref, _ = run(snippet, "websockets", env)
    out, err = run(snippet, "weft", env)
    assert ref.splitlines() == expected, f"the snippet itself misbehaves on websockets: {ref}"
    assert out.splitlines() == expected, err
    n = int(err.rsplit("[weft attempts: ", 1)[1].split("]")[0])
    assert n >= 1, "the snippet did not connect through weft"


@pytest.fixture(params=["websockets", "weft"])
def echo_url(request, py_server, weft_echo):
    return py_server + "/echo" if request.param == "websockets" else weft_echo + "/"


def test_asyncio_quickstart(echo_url):
    same_on_both("asyncio_quickstart.py", {"WS_URL": echo_url}, ["Hello world!"])


def test_sync_quickstart(echo_url):
    same_on_both("sync_quickstart.py", {"WS_URL": echo_url}, ["Received: Hello world!"])


def test_await_connect_messages_ping_close(echo_url):
    same_on_both(
        "await_connect.py",
        {"WS_URL": echo_url},
        [
            "OPEN",
            "bytes b'\\x00\\x01binary'",
            "str text ✓",
            "b'as bytes'",
            "latency True True",
            "fragmented",
            "CLOSED 1000 ''",
            "ConnectionClosedOK 1000",
        ],
    )


def test_oversized_message_closes_1009(echo_url):
    same_on_both("oversized.py", {"WS_URL": echo_url}, ["closed 1009"])


def test_sync_max_size(echo_url):
    same_on_both("sync_oversized.py", {"WS_URL": echo_url}, [str(2**20 + 1), "closed 1009"])


def test_sync_iterate_ping_timeout(echo_url):
    same_on_both(
        "sync_iterate.py",
        {"WS_URL": echo_url},
        ["one two", "True", "three", "pong True", "timeout", "closed 1000 ConnectionClosedOK"],
    )


def test_handshake_errors(py_server):
    same_on_both(
        "errors.py",
        {"WS_URL": py_server + "/echo", "WS_REJECT_URL": py_server + "/reject"},
        ["InvalidURI", "OSError ConnectionRefusedError", "InvalidStatus 403", "TypeError"],
    )


def test_reconnect_loop(py_server):
    same_on_both("reconnect.py", {"WS_FLAKY_URL": py_server + "/close/1011/again"}, ["closed 1011"] * 3)


def test_reconnect_loop_raises_fatal_errors(py_server):
    same_on_both("reconnect_fatal.py", {"WS_REJECT_URL": py_server + "/reject"}, ["fatal 403"])


def test_keepalive_closes_1011(raw_server):
    def never_pong(conn: socket.socket) -> None:
        # Ignore pings; answer the client's close frame, as a live but unresponsive server would.
        while True:
            op, payload = read_client_frame(conn)
            if op == 8:
                conn.sendall(frame(8, payload))
                return

    server = raw_server(never_pong)
    same_on_both("keepalive.py", {"WS_SILENT_URL": server.url}, ["closed 1011 keepalive ping timeout"])


def test_sync_client_keeps_the_connection_alive_outside_recv(raw_server):
    """websockets' sync client reads in a background thread: pings are answered, keep-alive
    pings sent and their pongs read while the application does not call ``recv``; weft's
    keep-alive thread does the same (before it, the server's ping went unanswered here)."""

    def pinging(conn: socket.socket) -> None:
        for i in range(3):
            conn.sendall(frame(1, f"early {i}".encode()))
        conn.sendall(frame(9, b"are you there"))
        conn.settimeout(0.3)  # the client is busy for 0.6 s: only a background reader answers
        answered = "no pong"
        try:
            while True:
                op, payload = read_client_frame(conn)
                if op == 9:
                    conn.sendall(frame(10, payload))  # the client's keep-alive pings
                elif op == 10 and payload == b"are you there":
                    answered = "pong in time"
                    break
        except (socket.timeout, EOFError):
            pass
        conn.settimeout(5)
        conn.sendall(frame(1, answered.encode()))
        while True:
            op, payload = read_client_frame(conn)
            if op == 9:
                conn.sendall(frame(10, payload))
            elif op == 8:
                conn.sendall(frame(8, payload))
                return

    server = raw_server(pinging)
    same_on_both(
        "sync_keepalive.py",
        {"WS_PINGING_URL": server.url},
        ["latency measured: True", "received: early 0", "received: early 1", "received: early 2",
         "received: pong in time"],
    )


def test_reconnect_retries_until_the_server_is_up(tmp_path):
    """``async for ws in connect(...)`` keeps retrying a refused connection with backoff."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "retry.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, time
            import websockets

            async def main():
                t0 = time.monotonic()
                async for ws in websockets.connect("ws://127.0.0.1:{port}/echo"):
                    await ws.send("up")
                    print(await ws.recv(), time.monotonic() - t0 > 0.5)
                    break

            asyncio.run(main())
            """
        )
    )
    from conftest import _ServerThread

    def start_later() -> None:
        time.sleep(1.0)
        srv = _ServerThread()
        srv.port = port
        srv.__enter__()

    threading.Thread(target=start_later, daemon=True).start()
    out, err = run(str(script), "weft", {})
    assert out.split() == ["up", "True"], err


def test_without_websockets_installed(weft_echo):
    """With no websockets package, enable_monkeypatch() provides one made of weft."""
    for snippet in ("asyncio_quickstart.py", "sync_quickstart.py"):
        out, err = run(snippet, "weft", {"WS_URL": weft_echo + "/"}, mode="no-websockets")
        assert out.strip() in ("Hello world!", "Received: Hello world!"), err


def test_patch_is_reversible_and_exceptions_are_shared():
    import websockets
    import websockets.exceptions as wsx
    import websockets.sync.client

    import weft
    from weft.compat import _exceptions as x

    original = websockets.sync.client.connect
    weft.enable_monkeypatch()
    try:
        assert websockets.connect.__module__ == "weft.compat.asyncio_client"
        assert websockets.asyncio.client.connect is websockets.connect
        assert websockets.sync.client.connect.__module__ == "weft.compat.sync_client"
        e = x.ConnectionClosedError(1011, "keepalive ping timeout")
        assert isinstance(e, wsx.ConnectionClosed) and isinstance(e, weft.exceptions.ConnectionClosedError)
        assert e.rcvd.code == 1011 and e.code == 1011 and e.reason == "keepalive ping timeout"
        s = x.InvalidStatus(503, [("Retry-After", "1")], b"busy")
        assert isinstance(s, wsx.InvalidStatus) and isinstance(s, weft.exceptions.InvalidStatus)
        # Code written for websockets < 14 catches the old name; weft's error is both.
        assert isinstance(s, wsx.InvalidStatusCode) and s.status_code == 503
        assert s.response.status_code == 503 and s.response.headers["retry-after"] == "1"
        with pytest.raises(TypeError):
            websockets.sync.client.connect("ws://127.0.0.1:1/", bogus=True)
    finally:
        weft.disable_monkeypatch()
    assert websockets.sync.client.connect is original
    assert websockets.connect.__module__ == "websockets.asyncio.client"


def test_ssl_context_and_sock(tls_server, weft_echo):
    """websockets' ``ssl=`` (an SSLContext) and ``sock=`` keywords, sync and asyncio."""
    import asyncio
    import ssl
    import urllib.parse

    from weft.compat import asyncio_client, sync_client

    url, ca = tls_server
    ctx = ssl.create_default_context(cafile=ca)
    with sync_client.connect(url + "/echo", ssl=ctx) as ws:
        ws.send("over tls")
        assert ws.recv() == "over tls"
    # An untrusted certificate: ssl.SSLCertVerificationError, as websockets raises it.
    with pytest.raises(ssl.SSLCertVerificationError):
        sync_client.connect(url + "/echo", ssl=ssl.create_default_context())
    with pytest.raises(ValueError):
        sync_client.connect(weft_echo + "/", ssl=ctx)
    port = urllib.parse.urlsplit(weft_echo).port
    with sync_client.connect(weft_echo + "/", sock=socket.create_connection(("127.0.0.1", port))) as ws:
        ws.send(b"via sock")
        assert ws.recv() == b"via sock"

    async def main() -> None:
        async with asyncio_client.connect(url + "/echo", ssl=ctx) as ws:
            await ws.send("async tls")
            assert await ws.recv() == "async tls"
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        async with asyncio_client.connect(weft_echo + "/", sock=s) as ws:
            await ws.send("async sock")
            assert await ws.recv() == "async sock"

    asyncio.run(main())


class ConnectProxy:
    """A minimal HTTP CONNECT proxy (threads); records each request head; answers 407 to
    requests whose ``Proxy-Authorization`` is not ``require_auth`` when that is set."""

    def __init__(self, require_auth: str | None = None) -> None:
        self.require_auth = require_auth
        self.heads: list[str] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                conn.close()
                return
            head += chunk
        text = head.decode("latin-1")
        self.heads.append(text)
        if self.require_auth and f"Proxy-Authorization: {self.require_auth}" not in text:
            conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            conn.close()
            return
        host, port = text.split(" ", 2)[1].rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pipe(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pipe, args=(conn, upstream), daemon=True).start()
        threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()


def test_http_proxy_tunnel_sync_and_asyncio(weft_echo, tls_server, monkeypatch):
    import asyncio
    import ssl
    import urllib.parse

    from weft.compat import _exceptions as x
    from weft.compat import asyncio_client, sync_client

    port = urllib.parse.urlsplit(weft_echo).port
    proxy = ConnectProxy()
    with sync_client.connect(weft_echo + "/", proxy=proxy.url) as ws:
        ws.send("via proxy")
        assert ws.recv() == "via proxy"
    assert proxy.heads[-1].startswith(f"CONNECT 127.0.0.1:{port} HTTP/1.1")

    async def through(url: str, **kw) -> str:
        async with asyncio_client.connect(url, **kw) as ws:
            await ws.send("async via proxy")
            return await ws.recv()

    assert asyncio.run(through(weft_echo + "/", proxy=proxy.url)) == "async via proxy"
    assert len(proxy.heads) == 2
    # wss:// through the tunnel: TLS end to end with the server.
    url, ca = tls_server
    ctx = ssl.create_default_context(cafile=ca)
    assert asyncio.run(through(url + "/echo", proxy=proxy.url, ssl=ctx)) == "async via proxy"
    with sync_client.connect(url + "/echo", proxy=proxy.url, ssl=ctx) as ws:
        ws.send("tls via proxy")
        assert ws.recv() == "tls via proxy"
    assert proxy.heads[-1].startswith("CONNECT localhost:")

    # proxy=True (the default) takes the environment's proxy, and honours no_proxy.
    monkeypatch.setenv("http_proxy", proxy.url)
    n = len(proxy.heads)
    with sync_client.connect(weft_echo + "/") as ws:
        ws.send("env")
        assert ws.recv() == "env"
    assert len(proxy.heads) == n + 1
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with sync_client.connect(weft_echo + "/") as ws:
        ws.send("direct")
        assert ws.recv() == "direct"
    assert len(proxy.heads) == n + 1
    monkeypatch.delenv("http_proxy")
    monkeypatch.delenv("no_proxy")

    # Credentials from the URL; a refusal is a handshake error.
    guarded = ConnectProxy(require_auth="Basic " + __import__("base64").b64encode(b"ann:s3cret").decode())
    with pytest.raises(x.InvalidHandshake, match="407"):
        sync_client.connect(weft_echo + "/", proxy=guarded.url)
    with pytest.raises(x.InvalidHandshake, match="407"):
        asyncio.run(through(weft_echo + "/", proxy=guarded.url))
    authed = guarded.url.replace("http://", "http://ann:s3cret@")
    assert asyncio.run(through(weft_echo + "/", proxy=authed)) == "async via proxy"


def test_unsupported_proxies_are_refused_not_ignored(weft_echo):
    from weft.compat import asyncio_client, sync_client

    with pytest.raises(NotImplementedError, match="socks5"):
        sync_client.connect(weft_echo + "/", proxy="socks5://127.0.0.1:1080")
    with pytest.raises(NotImplementedError, match="https"):
        asyncio_client.connect(weft_echo + "/", proxy="https://127.0.0.1:3128")


class EndRecorder:
    """A websockets sync server whose handler records when each connection ends."""

    def __init__(self) -> None:
        from websockets.sync.server import serve

        self.ended = threading.Event()

        def handler(ws) -> None:
            try:
                for _ in ws:
                    pass
            except Exception:  # ConnectionClosedError: an abort ends it too
                pass
            finally:
                self.ended.set()

        self.server = serve(handler, "127.0.0.1", 0)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}/"

    def close(self) -> None:
        self.server.shutdown()


def test_create_connection_factory_that_raises_does_not_leak_the_connection():
    """A create_connection factory that raises: the exception reaches the caller and the
    connection weft opened for it is closed (it stayed open before, on both clients)."""
    import asyncio

    from weft.compat import asyncio_client, sync_client

    def boom(*args, **kwargs):
        raise RuntimeError("factory failed")

    srv = EndRecorder()
    try:
        with pytest.raises(RuntimeError, match="factory failed") as info:
            sync_client.connect(srv.url, create_connection=boom, close_timeout=1)
        # The exception (and through its traceback the frames) is still alive here.
        assert srv.ended.wait(5), "sync: the connection stayed open"
        del info
        srv.ended.clear()

        async def main() -> None:
            with pytest.raises(RuntimeError, match="factory failed"):
                await asyncio_client.connect(srv.url, create_connection=boom)
            # The event loop holds an open transport whatever the frames hold.
            for _ in range(100):
                if srv.ended.is_set():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("asyncio: the connection stayed open")

        asyncio.run(main())
    finally:
        srv.close()


def test_sync_open_timeout_is_one_deadline_across_tcp_tls_and_handshake(tmp_path):
    """open_timeout bounds TCP, TLS and the opening handshake together (websockets' Deadline):
    a TLS handshake that takes 0.4 s leaves 0.3 s of 0.7 s to a server that never answers the
    upgrade. Before, each phase got the whole 0.7 s (1.1 s here)."""
    import time

    sys.path.insert(0, str(SNIPPETS))
    import _parity_servers as S

    from weft.compat import sync_client

    server_ctx, client_ctx = S.contexts(str(tmp_path))

    def slow_tls(conn: socket.socket) -> None:
        time.sleep(0.4)
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(4096)
            time.sleep(2)

    with S.raw_server(slow_tls) as raw:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="timed out while waiting for handshake response"):
            sync_client.connect(raw.replace("ws://", "wss://"), ssl=client_ctx, open_timeout=0.7)
        elapsed = time.monotonic() - t0
    assert 0.6 < elapsed < 0.95, elapsed
