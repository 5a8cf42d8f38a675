"""What the ``drop-lowest`` slow-consumer policy costs under contention (issue 17).

Starts ``weft serve`` (``$WEFT_BIN``) with a small per-connection queue and one policy, then:
``--stalled`` subscribers that subscribe and never read again (their queues stay full, so
every event meets the policy), ``--readers`` subscribers that keep up, and one publisher that
keeps ``--in-flight`` publishes outstanding with priorities drawn at random from
``background``, ``low`` and ``normal`` (with ``--with-high``, also ``high`` and ``critical``, one
in ten each: a stalled queue then fills with events ``drop-lowest`` never drops and the
subscriber is closed as a slow consumer, which makes the runs unlike). Runs ``drop-oldest`` and ``drop-lowest``
alternately for ``--rounds``; the figure is the server's CPU per publish (user + system from
/proc), which includes the fan-out to every subscriber and the policy's work at the full
queues. The readers count what they got by priority, to show what each policy kept.

    WEFT_BIN=target/release/weft python bench/priorities.py --server-cpu 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import time

from serverproc import cpu_seconds, free_port, pinned, wait_listening

LEVELS = ["background", "low", "normal", "high", "critical"]
WEIGHTS = [3, 2, 3, 1, 1]


async def run(port: int, pid: int, stalled: int, readers: int, in_flight: int, duration: float) -> dict:
    from weft.async_client import connect

    url = f"ws://127.0.0.1:{port}/ws"
    stop = asyncio.Event()
    sinks = []
    for _ in range(stalled):
        # Subscribed, then never read: a tiny receive buffer fills at once, then the queue.
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        msg = json.dumps({"type": "subscribe", "topics": ["feed"]}).encode()
        mask = b"\x00\x00\x00\x00"
        s.sendall(bytes([0x81, 0x80 | len(msg)]) + mask + msg)
        sinks.append(s)
    counts = {lvl: 0 for lvl in LEVELS}

    async def reader() -> None:
        ws = await connect(url, 30.0, None)
        await ws.recv()
        await ws.send(json.dumps({"type": "subscribe", "id": 1, "topics": ["feed"]}))
        while not stop.is_set():
            try:
                m = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
            except (asyncio.TimeoutError, TimeoutError):
                continue
            if m.get("type") == "event":
                counts[m.get("priority", "normal")] += 1
        await ws.close()

    rtasks = [asyncio.ensure_future(reader()) for _ in range(readers)]
    await asyncio.sleep(0.5)
    pub = await connect(url, 30.0, 30.0)
    await pub.recv()
    rng = random.Random(7)
    published = 0
    c0 = cpu_seconds(pid)
    end = time.monotonic() + duration
    n = 0
    while time.monotonic() < end:
        for _ in range(in_flight):
            n += 1
            p = rng.choices(LEVELS, WEIGHTS)[0]
            await pub.send(json.dumps({"type": "publish", "id": n, "topic": "feed", "payload": {"n": n}, "priority": p}))
        for _ in range(in_flight):
            await pub.recv()
        published += in_flight
    c1 = cpu_seconds(pid)
    stop.set()
    await asyncio.gather(*rtasks)
    await pub.close()
    # Stalled subscribers still connected (a slow-consumer close ends one).
    alive = 0
    for s in sinks:
        s.setblocking(False)
        try:
            alive += s.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    for s in sinks:
        s.close()
    return {"publishes": published, "server_cpu_us_per_publish": round((c1 - c0) / published * 1e6, 2),
            "stalled_still_connected": alive, "readers_got": counts}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--stalled", type=int, default=50)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--in-flight", type=int, default=32)
    ap.add_argument("--queue-size", type=int, default=128)
    ap.add_argument("--server-cpu", type=int, default=None)
    ap.add_argument("--with-high", action="store_true")
    a = ap.parse_args()
    if not a.with_high:
        WEIGHTS[3] = WEIGHTS[4] = 0
    weft = os.environ.get("WEFT_BIN", "target/release/weft")
    res: dict[str, list[float]] = {"drop-oldest": [], "drop-lowest": []}
    for r in range(a.rounds):
        for policy in res:
            port = free_port()
            cmd = [weft, "serve", "--addr", f"127.0.0.1:{port}", "--slow-consumer", policy, "--queue-size",
                   str(a.queue_size), "--history-size", str(min(100, a.queue_size)), "--rate-limit", "1000000",
                   "--rate-burst", "1000000"]
            cmd = pinned(cmd, a.server_cpu)
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_listening(port)
                out = asyncio.run(run(port, proc.pid, a.stalled, a.readers, a.in_flight, a.duration))
            finally:
                proc.terminate()
                proc.wait(10)
            res[policy].append(out["server_cpu_us_per_publish"])
            print(json.dumps({"round": r + 1, "policy": policy, "stalled": a.stalled, "queue_size": a.queue_size, **out}))
    for policy, v in res.items():
        print(f"{policy}: median {statistics.median(v):.1f} µs of server CPU per publish ({a.stalled} stalled subscribers)")


if __name__ == "__main__":
    main()
