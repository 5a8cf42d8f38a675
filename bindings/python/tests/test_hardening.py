"""Regression tests of the hardening issue, one section per defect, over real sockets: `weft echo`,
`websockets` servers (plain and TLS), `weft.Server`, raw TCP servers and a loopback TCP proxy
that cuts the network."""

from __future__ import annotations

import asyncio
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import weft
from adapters import AsyncAdapter, SyncAdapter
from conftest import accept_response, free_port, frame, read_client_frame
from weft import async_client, engine_client
from weft.exceptions import ConnectionClosed, InvalidStatus, InvalidURI


@pytest.fixture(params=["sync", "asyncio", "uvloop"])
def client(request):
    a = SyncAdapter() if request.param == "sync" else AsyncAdapter(use_uvloop=request.param == "uvloop")
    yield a
    a.close()


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request):
    if request.param == "uvloop":
        import uvloop

        lp = uvloop.new_event_loop()
    else:
        lp = asyncio.new_event_loop()
    yield lp
    lp.close()


# ---- 1. wss:// with messages over rustls's 64 KiB plaintext buffer ----------------------------


def test_wss_large_message_and_corked_burst(client, tls_server):
    url, ca = tls_server
    with client.connect(url, ca_file=ca, max_size=None) as ws:
        big = bytes(range(256)) * 4096  # 1 MiB
        ws.send(big)
        assert ws.recv() == big
        text = "ü" * 300_000  # 600 KB of UTF-8
        ws.send(text)
        assert ws.recv() == text
        # A corked burst: 400 sends of 1 KiB back to back (coalesced into one flush).
        burst = [f"{i:04d}".encode() * 256 for i in range(400)]
        for m in burst:
            ws.send(m)
        assert [ws.recv() for _ in burst] == burst
        ws.send("still open")
        assert ws.recv() == "still open"


# ---- 2. Server.stop() while another thread waits in drain_inbound -------------------------------


def test_stop_while_a_thread_loops_on_drain_inbound():
    for _ in range(20):
        server = weft.Server("127.0.0.1", 0)
        server.start()
        errors: list[BaseException] = []
        after: list = []

        def handle_inbound() -> None:  # the README's pattern
            while server.running:
                try:
                    server.drain_inbound(256, 50)
                except BaseException as e:  # a Rust panic is a BaseException (PanicException)
                    errors.append(e)
                    return
            try:
                after.append(server.drain_inbound(256, 5))  # stopped: waits 5 ms, returns []
            except BaseException as e:
                after.append(e)

        t = threading.Thread(target=handle_inbound)
        t.start()
        time.sleep(0.03)  # stop() while the thread waits inside drain_inbound
        server.stop()
        t.join(5)
        assert not t.is_alive()
        assert [e for e in errors if "not running" not in str(e)] == [], "drain_inbound panicked during stop()"
        assert errors == [] and after == [[]]
        assert not server.running


# ---- 3. engine_client: transient failures are retried, fatal ones end the iteration -----------


async def _expect_payload(it, payload, timeout: float = 8.0):
    deadline = time.monotonic() + timeout
    while True:
        ev = await asyncio.wait_for(it.__anext__(), max(0.01, deadline - time.monotonic()))
        if ev.type == "event" and ev.payload == payload:
            return ev


def test_engine_client_retries_a_cut_handshake(tcp_proxy):
    with weft.Server("127.0.0.1", 0, history_size=100) as server:
        proxy = tcp_proxy(server.port)

        async def main() -> None:
            url = f"ws://127.0.0.1:{proxy.port}/ws"
            async with engine_client.connect(url, min_delay=0.02, max_delay=0.1) as c:
                await c.subscribe(["feed.x"])
                it = c.__aiter__()
                server.publish("feed.x", 1)
                await _expect_payload(it, 1)
                # The proxy accepts and closes at once: every handshake is cut (InvalidMessage).
                proxy.mode = "cut"
                proxy.cut_all()
                before = proxy.accepted
                deadline = time.monotonic() + 5
                while proxy.accepted < before + 3:
                    assert time.monotonic() < deadline, "the client stopped retrying"
                    await asyncio.sleep(0.02)
                server.publish("feed.x", 2)
                proxy.mode = "forward"
                await _expect_payload(it, 2)  # resumed after the cut handshakes
                assert c.reconnects >= 1 and c.connected

        asyncio.run(main())


def test_engine_client_fatal_401_ends_iteration(tcp_proxy):
    with weft.Server("127.0.0.1", 0) as server:
        proxy = tcp_proxy(server.port)

        async def main() -> None:
            url = f"ws://127.0.0.1:{proxy.port}/ws"
            async with engine_client.connect(url, min_delay=0.02, max_delay=0.1) as c:
                await c.subscribe(["feed.y"])
                proxy.mode = "401"
                proxy.cut_all()

                async def consume() -> None:
                    async for _ in c:
                        pass

                with pytest.raises(InvalidStatus) as e:
                    await asyncio.wait_for(consume(), 8)
                assert e.value.status_code == 401

        asyncio.run(main())


def test_engine_client_dead_reader_never_leaves_async_for_hanging():
    with weft.Server("127.0.0.1", 0) as server:

        async def main() -> None:
            async with engine_client.connect(f"ws://127.0.0.1:{server.port}/ws") as c:
                await c.subscribe(["feed.z"])

                def broken(msg):
                    raise KeyError("a bug in the reader")

                c._dispatch = broken  # the reader task dies on the next message
                server.publish("feed.z", 1)

                async def consume() -> None:
                    async for _ in c:
                        pass

                with pytest.raises(KeyError):
                    await asyncio.wait_for(consume(), 5)
                with pytest.raises(KeyError):
                    await asyncio.wait_for(c.recv(), 5)

        asyncio.run(main())


# ---- 4. engine_client: pattern subscriptions are resumed across a network cut -------------------


@pytest.mark.parametrize("presence", [False, True])
def test_engine_client_pattern_resume_across_network_cut(tcp_proxy, presence):
    topics = ["news.a", "news.b", "news.c"]
    with weft.Server("127.0.0.1", 0, history_size=1000) as server:
        proxy = tcp_proxy(server.port)

        async def main() -> None:
            url = f"ws://127.0.0.1:{proxy.port}/ws"
            async with engine_client.connect(url, min_delay=0.05, max_delay=0.2) as c:
                await c.subscribe(["news.>"], presence=presence)  # presence: resubscribed apart
                await c.subscribe(["other.exact"])
                for t in topics:
                    server.publish(t, f"{t}/first")
                it = c.__aiter__()
                got: dict[str, list[int]] = {t: [] for t in topics}
                notices = []
                while sum(map(len, got.values())) < len(topics):
                    ev = await asyncio.wait_for(it.__anext__(), 5)
                    got[ev.topic].append(ev.offset)
                # The network goes away for ~1 s while events are published.
                proxy.down()
                for i in range(20):
                    for t in topics:
                        server.publish(t, f"{t}/{i}")
                    server.publish("news.unseen", i)  # a topic the client never saw
                    await asyncio.sleep(0.05)
                proxy.up()
                for i in range(5):
                    for t in topics:
                        server.publish(t, f"{t}/live{i}")
                want = 1 + 20 + 5
                deadline = time.monotonic() + 10
                while any(len(v) < want for v in got.values()):
                    try:
                        ev = await asyncio.wait_for(it.__anext__(), max(0.01, deadline - time.monotonic()))
                    except (asyncio.TimeoutError, TimeoutError):
                        break  # the asserts below say what is missing
                    if ev.type == "may_have_missed":
                        notices.append(ev)
                    elif ev.type == "event" and ev.topic in got:
                        got[ev.topic].append(ev.offset)
                for t in topics:
                    assert got[t] == list(range(1, want + 1)), f"{t}: {got[t]}"
                assert c.reconnects >= 1
                assert [n.topic for n in notices] == ["news.>"]
                assert sorted(notices[0].payload["resumed"]) == topics
                assert notices[0].payload["not_recovered"] == []
                # Still subscribed through the pattern (the resumed topics were unsubscribed).
                deadline = time.monotonic() + 5
                while not c.last_resume:  # the resubscription is complete
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
                server.publish("news.later", "x")
                ev = await asyncio.wait_for(it.__anext__(), 5)
                while ev.topic != "news.later":
                    ev = await asyncio.wait_for(it.__anext__(), 5)
                assert ev.payload == "x"

        asyncio.run(main())


# ---- 5. ping right after recv: the pong is not held for the strict-order grace ----------------


def test_async_ping_right_after_recv_is_prompt(loop, weft_echo):
    async def main() -> list[float]:
        async with async_client.connect(weft_echo) as ws:
            times = []
            for i in range(7):
                await ws.send(f"m{i}")
                assert await ws.recv() == f"m{i}"
                t = time.perf_counter()
                rtt = await ws.ping()
                times.append(time.perf_counter() - t)
                assert rtt <= times[-1] + 0.001 and ws.latency == rtt
            return times

    times = loop.run_until_complete(main())
    assert statistics.median(times) < 0.010, times


def test_dropin_ping_right_after_recv_is_prompt(weft_echo):
    code = f"""
import asyncio, statistics, time, weft
weft.enable_monkeypatch()
from websockets.asyncio.client import connect

async def main():
    async with connect({weft_echo + "/"!r}) as ws:
        times = []
        for i in range(7):
            await ws.send("m")
            await ws.recv()
            t = time.perf_counter()
            await (await ws.ping())
            times.append(time.perf_counter() - t)
        print(statistics.median(times), ws.latency)

asyncio.run(main())
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    median, latency = map(float, p.stdout.split())
    assert median < 0.010 and latency < 0.010, p.stdout


# ---- 6. iteration honours receive_timeout ------------------------------------------------------


def test_iteration_honours_receive_timeout(client, raw_server):
    def script(conn):
        conn.sendall(frame(0x1, b"first"))
        time.sleep(3)  # then the connection drops: iteration must have timed out before

    srv = raw_server(script)
    ws = client.connect(srv.url, receive_timeout=0.3)
    it = iter(ws)
    assert next(it) == "first"
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        next(it)
    assert 0.2 < time.monotonic() - t < 2


# ---- 7. the README's Python examples run -------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def undefined_names(code: str) -> set[str]:
    """Names a block reads but never binds (imports, assignments, defs, arguments, loop and
    with/except targets) and that are not builtins: catches a missing import even on a path
    the run does not take (an ``except`` clause)."""
    import ast
    import builtins

    tree = ast.parse(code)
    bound: set[str] = set()
    loaded: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound - set(dir(builtins))


def test_readme_examples_run():
    """Every ```python block of the README runs as written against local servers:
    ``127.0.0.1:9001`` is an echo server (closing 1000 after 0.5 s without a message), port
    ``8080`` an engine (``weft.Server``; a block that starts its own gets a free port), and
    ``0.0.0.0`` binds loopback."""
    from websockets.asyncio.server import serve

    blocks = readme_blocks()
    assert len(blocks) >= 5
    ready = threading.Event()
    echo_port = free_port()
    stop: list = []

    async def handler(ws) -> None:
        while True:
            try:
                m = await asyncio.wait_for(ws.recv(), 0.5)
            except (asyncio.TimeoutError, TimeoutError):
                await ws.close(1000, "idle")
                return
            except ConnectionClosed:
                return
            except Exception:
                return
            await ws.send(m)

    def run_echo() -> None:
        async def main() -> None:
            fut = asyncio.get_running_loop().create_future()
            stop.append((asyncio.get_running_loop(), fut))
            async with serve(handler, "127.0.0.1", echo_port):
                ready.set()
                await fut

        asyncio.run(main())

    t = threading.Thread(target=run_echo, daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        with weft.Server("127.0.0.1", 0) as engine:

            def drain() -> None:
                while engine.running:
                    engine.drain_inbound(64, 20)

            threading.Thread(target=drain, daemon=True).start()
            for block in blocks:
                assert not undefined_names(block), f"README block uses undefined {undefined_names(block)}:\n{block}"
                port = free_port() if "weft.Server(" in block else engine.port
                code = (
                    block.replace("127.0.0.1:9001", f"127.0.0.1:{echo_port}")
                    .replace("8080", str(port))
                    .replace("0.0.0.0", "127.0.0.1")
                )
                p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
                assert p.returncode == 0 and "Traceback" not in p.stderr, f"README block failed:\n{block}\n{p.stderr}"
    finally:
        lp, fut = stop[0]
        lp.call_soon_threadsafe(fut.set_result, None)
        t.join(10)


# ---- 8. only ws:// and wss:// URLs --------------------------------------------------------------


def test_http_urls_are_refused(client, weft_echo):
    port = weft_echo.rsplit(":", 1)[1]
    for url in (f"http://127.0.0.1:{port}/", f"https://127.0.0.1:{port}/", f"HTTP://127.0.0.1:{port}/"):
        with pytest.raises(InvalidURI):
            client.connect(url)
    ws = client.connect(f"ws://127.0.0.1:{port}/")
    ws.close()


def test_http_urls_are_refused_by_the_dropin(weft_echo):
    port = weft_echo.rsplit(":", 1)[1]
    code = f"""
import asyncio, weft
weft.enable_monkeypatch()
import websockets
from websockets.asyncio.client import connect
from websockets.sync.client import connect as sync_connect
for url in ("http://127.0.0.1:{port}/", "https://127.0.0.1:{port}/"):
    try:
        sync_connect(url)
    except websockets.exceptions.InvalidURI:
        pass
    else:
        raise SystemExit("sync accepted " + url)
    async def main():
        try:
            await connect(url)
        except websockets.exceptions.InvalidURI:
            return
        raise SystemExit("asyncio accepted " + url)
    asyncio.run(main())
print("ok")
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stdout + p.stderr


# ---- 9. asyncio: no unbounded pong queue when the peer does not read ---------------------------


def test_ping_flood_without_reading_keeps_the_write_buffer_bounded(loop):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by accepted sockets
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    sent = [0]

    def flood() -> None:
        conn, _ = listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            conn.sendall(accept_response(head))
            conn.settimeout(0.05)
            ping = frame(0x9, b"p" * 125)
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:  # one send per ping, never reading
                try:
                    conn.send(ping)
                    sent[0] += 1
                except (TimeoutError, socket.timeout):
                    pass
                except OSError:
                    return

    t = threading.Thread(target=flood, daemon=True)
    t.start()

    async def main() -> int:
        ws = await async_client.connect(f"ws://127.0.0.1:{port}/")
        transport = ws._p.transport
        s = transport.get_extra_info("socket")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        peak = 0
        for _ in range(100):  # 2 s
            await asyncio.sleep(0.02)
            peak = max(peak, transport.get_write_buffer_size())
        reading = transport.is_reading()  # pushed back: not read while a pong is held
        ws._p.abort()
        return peak, reading

    try:
        peak, reading = loop.run_until_complete(main())
    finally:
        listener.close()
        t.join(5)
    assert sent[0] > 100  # the flood did run
    assert peak < 512 * 1024, f"write buffer grew to {peak} bytes"
    assert not reading


def test_pings_read_at_once_are_each_answered_while_writes_flow(client, raw_server):
    """The codec keeps one pending pong (the latest ping's, RFC 6455 §5.5.3: what bounds a
    flood while writes are paused); while writes flow every ping is still answered, in order,
    as the Autobahn suite's strict case 2.10 expects."""
    got: list[tuple[int, bytes]] = []
    done = threading.Event()

    def script(conn):
        conn.sendall(b"".join(frame(0x9, b"p%d" % i) for i in range(10)) + frame(0x1, b"after"))
        conn.settimeout(3)
        try:
            while True:
                op, payload = read_client_frame(conn)
                got.append((op, payload))
                if op == 0x8:
                    conn.sendall(frame(0x8, payload[:2]))
                    return
        except (EOFError, OSError):
            return
        finally:
            done.set()

    srv = raw_server(script)
    ws = client.connect(srv.url)
    assert ws.recv() == "after"
    ws.close()
    assert done.wait(5)
    pongs = [p for op, p in got if op == 0xA]
    assert pongs == [b"p%d" % i for i in range(10)], pongs


def test_pipelined_large_sends_to_an_echo_do_not_deadlock(loop, weft_echo):
    """Write backpressure must not stop reading while only the application's own data fills
    the buffer: weft echo stops reading while its echoes cannot be written, so a client that
    also stopped reading would wait forever (64 x 1 MiB sent before reading any echo)."""

    async def main() -> None:
        async with async_client.connect(weft_echo, max_size=None, receive_timeout=10) as ws:
            big = bytes(range(256)) * 4096
            for _ in range(64):
                await asyncio.wait_for(ws.send(big), 10)
            for _ in range(64):
                assert await ws.recv() == big

    loop.run_until_complete(main())
