"""One Python WebSocket client against an echo server, in this (fresh) interpreter.

usage: client_bench.py --client NAME --url URL --size BYTES --mode rr|pipe [--count 1000]

- rr: request-response; `--warmup` round trips, then `--count` timed ones. Reports the median
  and p99 RTT in microseconds (warm), and the median of the warm-up round trips (cold: the
  first ones a fresh interpreter makes).
- pipe: pipelined; a first batch (cold: what a user's first batch costs, imports and caches
  fresh), then `--batches` timed batches of `--count` messages (warm: their median). With
  `--in-flight 0` all are sent, then all received (send and receive times reported apart);
  with `--in-flight N` at most N are outstanding. Reports the batch times in ms.

An asyncio client name ending in `-uvloop` runs on uvloop, otherwise on asyncio's default
loop. Peers: weft's clients (`weft-async-callback`: its event-driven `on_message` API, used as
the picows listener is) and its `websockets` drop-in (`weft-websockets-*`), websocket-rs,
picows (its listener API, and `picows.websockets`, its `websockets`-compatible layer),
websockets, aiohttp, websocket-client, and a raw socket (the floor, not a peer).

Prints one JSON object. Binary messages, no compression.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

ns = time.perf_counter_ns


def pct(values: list[int], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))] / 1000


# ---- blocking clients: connect() -> object with send(bytes) and recv() ------------------------


def sync_client(name: str, url: str):
    if name == "weft-sync":
        from weft.sync_client import connect

        return connect(url, max_size=None)
    if name == "websocket-rs-sync":
        from websocket_rs.sync.client import connect

        return connect(url)
    if name == "websockets-sync":
        from websockets.sync.client import connect

        return connect(url, compression=None, max_size=None)
    if name == "weft-websockets-sync":
        from weft.compat.sync_client import connect

        return connect(url, compression=None, max_size=None)
    if name == "raw-socket":
        return RawSocket(url)
    if name == "websocket-client":
        import websocket

        ws = websocket.create_connection(url, skip_utf8_validation=True)

        class W:
            send = ws.send_binary
            recv = ws.recv
            close = ws.close

        return W()
    raise SystemExit(f"unknown client {name}")


class RawSocket:
    """The floor for a blocking client: a plain socket, a handshake by hand, each frame masked
    with a zero key (valid, and no masking work), the reply read by its header. No library."""

    def __init__(self, url: str) -> None:
        import base64
        import os
        import socket
        import urllib.parse

        u = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {u.path or '/'} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buf = bytearray(head.split(b"\r\n\r\n", 1)[1])
        self.frames: dict[int, bytes] = {}
        self.chunk = bytearray(256 * 1024)
        self.view = memoryview(self.chunk)

    def send(self, payload: bytes) -> None:
        frame = self.frames.get(len(payload))
        if frame is None:
            n = len(payload)
            if n < 126:
                h = bytes([0x82, 0x80 | n])
            elif n < 65536:
                h = bytes([0x82, 0x80 | 126]) + n.to_bytes(2, "big")
            else:
                h = bytes([0x82, 0x80 | 127]) + n.to_bytes(8, "big")
            frame = self.frames[n] = h + b"\0\0\0\0" + payload
        self.sock.sendall(frame)

    def recv(self) -> bytes:
        buf, sock = self.buf, self.sock
        while True:
            if len(buf) >= 2:
                n, off = buf[1] & 0x7F, 2
                if n == 126:
                    n, off = int.from_bytes(buf[2:4], "big"), 4
                elif n == 127:
                    n, off = int.from_bytes(buf[2:10], "big"), 10
                if len(buf) >= off + n:
                    msg = bytes(buf[off : off + n])
                    del buf[: off + n]
                    return msg
            n = sock.recv_into(self.chunk)
            if not n:
                raise ConnectionError("closed")
            buf += self.view[:n]

    def close(self) -> None:
        self.sock.close()


def run_sync(a, payload: bytes) -> dict:
    ws = sync_client(a.client, a.url)
    send, recv = ws.send, ws.recv
    if a.mode == "rr":
        cold = []
        for _ in range(a.warmup):
            t = ns()
            send(payload)
            recv()
            cold.append(ns() - t)
        rtts = []
        for _ in range(a.count):
            t = ns()
            send(payload)
            recv()
            rtts.append(ns() - t)
        ws.close()
        return {"rtt_median_us": pct(rtts, 0.5), "rtt_p99_us": pct(rtts, 0.99), "cold_rtt_median_us": pct(cold, 0.5)}
    batches = []
    for b in range(a.batches + 1):
        t0 = ns()
        if a.in_flight == 0:
            for _ in range(a.count):
                send(payload)
            t1 = ns()
            for _ in range(a.count):
                recv()
        else:
            for _ in range(a.in_flight):
                send(payload)
            for i in range(a.count):
                recv()
                if i + a.in_flight < a.count:
                    send(payload)
            t1 = t0
        t2 = ns()
        batches.append((t2 - t0, t1 - t0, t2 - t1))
    ws.close()
    return pipe_result(a, batches)


def pipe_result(a, batches: list[tuple[int, int, int]]) -> dict:
    cold, batches = batches[0], batches[1:]
    total = statistics.median(b[0] for b in batches) / 1e6
    out = {"batch_ms": total, "msgs_per_sec": a.count / (total / 1e3), "cold_batch_ms": cold[0] / 1e6}
    if a.in_flight == 0:
        out["send_ms"] = statistics.median(b[1] for b in batches) / 1e6
        out["recv_ms"] = statistics.median(b[2] for b in batches) / 1e6
    return out


# ---- asyncio clients -----------------------------------------------------------------------------


async def async_client(name: str, url: str):
    """Returns (send, recv): send may be sync or async (wrapped), recv is a coroutine function."""
    name = name.removesuffix("-uvloop")
    if name == "weft-async-callback":
        return await weft_callback_client(url)
    if name == "weft-async":
        from weft.async_client import connect

        ws = await connect(url, max_size=None)
        return ws, ws.send, ws.recv, ws.close
    if name == "websocket-rs-async":
        import websocket_rs

        ws = await websocket_rs.connect(url)

        async def send(m, _s=ws.send):
            _s(m)

        async def recv(_r=ws.recv):
            return bytes(await _r())

        async def close():
            ws.close()

        return ws, send, recv, close
    if name == "websockets-async":
        from websockets.asyncio.client import connect

        ws = await connect(url, compression=None, max_size=None)
        return ws, ws.send, ws.recv, ws.close
    if name == "weft-websockets-async":
        from weft.compat.asyncio_client import connect

        ws = await connect(url, compression=None, max_size=None)
        return ws, ws.send, ws.recv, ws.close
    if name == "picows-websockets":
        from picows.websockets import connect

        ws = await connect(url, compression=None, max_size=None)
        return ws, ws.send, ws.recv, ws.close
    if name == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession()
        ws = await session.ws_connect(url, max_msg_size=0, compress=0, autoping=True)

        async def recv(_r=ws.receive_bytes):
            return await _r()

        async def close():
            await ws.close()
            await session.close()

        return ws, ws.send_bytes, recv, close
    if name == "picows":
        return await picows_client(url)
    raise SystemExit(f"unknown client {name}")


async def weft_callback_client(url: str):
    """weft's event-driven API (`on_message`), used exactly as picows' listener below: a queue
    and one waiter, filled from the callback."""
    from collections import deque

    from weft.async_client import connect

    loop = asyncio.get_running_loop()
    queue: deque = deque()
    waiter: list = [None]

    def on_message(m) -> None:
        w = waiter[0]
        if w is not None and not w.done():
            waiter[0] = None
            w.set_result(m)
        else:
            queue.append(m)

    ws = await connect(url, max_size=None, on_message=on_message)
    send_nowait = ws.send_nowait

    async def send(m):
        send_nowait(m)

    async def recv():
        if queue:
            return queue.popleft()
        waiter[0] = loop.create_future()
        return await waiter[0]

    return ws, send, recv, ws.close


async def picows_client(url: str):
    from collections import deque

    from picows import WSListener, WSMsgType, ws_connect

    loop = asyncio.get_running_loop()

    class Listener(WSListener):
        def __init__(self) -> None:
            self.queue: deque = deque()
            self.waiter: asyncio.Future | None = None

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type != WSMsgType.BINARY:
                return
            data = frame.get_payload_as_bytes()
            w = self.waiter
            if w is not None and not w.done():
                self.waiter = None
                w.set_result(data)
            else:
                self.queue.append(data)

    transport, listener = await ws_connect(Listener, url, max_frame_size=1 << 30)

    async def send(m):
        transport.send(WSMsgType.BINARY, m)

    async def recv():
        if listener.queue:
            return listener.queue.popleft()
        listener.waiter = loop.create_future()
        return await listener.waiter

    async def close():
        transport.send_close()
        transport.disconnect()

    return transport, send, recv, close


async def run_async(a, payload: bytes) -> dict:
    _, send, recv, close = await async_client(a.client, a.url)
    if a.mode == "rr":
        cold = []
        for _ in range(a.warmup):
            t = ns()
            await send(payload)
            await recv()
            cold.append(ns() - t)
        rtts = []
        for _ in range(a.count):
            t = ns()
            await send(payload)
            await recv()
            rtts.append(ns() - t)
        await close()
        return {"rtt_median_us": pct(rtts, 0.5), "rtt_p99_us": pct(rtts, 0.99), "cold_rtt_median_us": pct(cold, 0.5)}
    batches = []
    for b in range(a.batches + 1):
        t0 = ns()
        if a.in_flight == 0:
            for _ in range(a.count):
                await send(payload)
            t1 = ns()
            for _ in range(a.count):
                await recv()
        else:
            for _ in range(a.in_flight):
                await send(payload)
            for i in range(a.count):
                await recv()
                if i + a.in_flight < a.count:
                    await send(payload)
            t1 = t0
        t2 = ns()
        batches.append((t2 - t0, t1 - t0, t2 - t1))
    await close()
    return pipe_result(a, batches)


ASYNC = {"weft-async", "weft-async-callback", "websocket-rs-async", "websockets-async", "picows", "weft-websockets-async", "picows-websockets", "aiohttp"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--mode", choices=["rr", "pipe"], default="rr")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--in-flight", type=int, default=0)
    a = ap.parse_args()
    payload = bytes(i % 251 for i in range(a.size))
    if a.client.removesuffix("-uvloop") in ASYNC:
        if a.client.endswith("uvloop"):
            import uvloop

            uvloop.install()
        result = asyncio.run(run_async(a, payload))
    else:
        result = run_sync(a, payload)
    result.update(
        client=a.client, size=a.size, mode=a.mode, count=a.count, in_flight=a.in_flight, python=sys.version.split()[0]
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
