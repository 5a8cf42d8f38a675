"""What the secure channel costs the server (issue 17).

Starts ``weft serve`` (the binary at $WEFT_BIN), connects ``--subs`` subscribers to one topic —
in clear, with the secure channel in ``encrypt`` mode, or in ``sign`` mode, one set per mode —
and has a plain publisher send ``--events`` events of ``--size`` bytes, pipelined, until every
subscriber has read every event. The figure is the server's CPU (user + system, from /proc)
per delivery; modes alternate for ``--rounds`` and the medians are compared. Then the cost of
a handshake: ``--handshakes`` connections that each connect, secure and close, against the
same without ``secure``.

    WEFT_BIN=target/release/weft python bench/secure.py --server-cpu 0 --client-cpu 1
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import time

from serverproc import cpu_seconds, free_port, pinned, wait_listening


async def subscriber(url: str, mode: str | None, topic: str):
    from weft import _weft
    from weft.async_client import connect

    ws = await connect(url, 30.0, 30.0, subprotocols=["weft.v1.json"], max_queue=1 << 20)
    welcome = json.loads(await ws.recv())
    ch = None
    if mode is not None:
        hs = _weft.SecureHandshake(mode)
        await ws.send(json.dumps({"type": "secure", "id": 0, "mode": mode, "key": base64.b64encode(hs.public_key).decode()}))
        r = json.loads(await ws.recv())
        assert r["type"] == "secured", r
        ch = hs.finish(base64.b64decode(r["key"]), welcome["session"])
    msg = json.dumps({"type": "subscribe", "id": 1, "topics": [topic]})
    await ws.send(msg if ch is None else ch.seal(msg.encode()))
    raw = await ws.recv()
    r = json.loads(raw if ch is None else ch.open(raw))
    assert r["type"] == "subscribed", r
    return ws, ch


async def deliveries(url: str, mode: str | None, subs: int, events: int, size: int, topic: str, pid: int) -> float:
    """Server CPU µs per delivery for one round."""
    from weft.async_client import connect

    conns = await asyncio.gather(*(subscriber(url, mode, topic) for _ in range(subs)))
    pub = await connect(url, 30.0, 30.0, subprotocols=["weft.v1.json"])
    await pub.recv()
    payload = {"v": "x" * size}

    async def drain(ws, ch) -> None:
        n = 0
        while n < events:
            raw = await ws.recv()
            m = json.loads(raw if ch is None else ch.open(raw))
            if m.get("type") == "event":
                n += 1

    c0 = cpu_seconds(pid)
    readers = [asyncio.ensure_future(drain(ws, ch)) for ws, ch in conns]

    async def publish() -> None:
        for i in range(events):
            await pub.send(json.dumps({"type": "publish", "topic": topic, "payload": payload}))
            if i % 32 == 31:
                await asyncio.sleep(0)  # let the readers keep up (no slow-consumer drops)

    await asyncio.gather(publish(), *readers)
    us = (cpu_seconds(pid) - c0) / (events * subs) * 1e6
    for ws, _ in conns:
        await ws.close()
    await pub.close()
    return us


async def handshakes(url: str, n: int, mode: str | None, pid: int) -> float:
    """Server CPU µs per connection that opens (and secures) and closes."""
    c0 = cpu_seconds(pid)
    for _ in range(n):
        ws, _ = await subscriber(url, mode, "hs")
        await ws.close()
    return (cpu_seconds(pid) - c0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--subs", type=int, default=100)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--handshakes", type=int, default=1000)
    ap.add_argument("--server-cpu", type=int, default=None)
    ap.add_argument("--client-cpu", type=int, default=None)
    ap.add_argument("--identity-key", default="bindings/python/tests/keys/secure-p256.pem")
    a = ap.parse_args()
    if a.client_cpu is not None:
        os.sched_setaffinity(0, {a.client_cpu})
    weft = os.environ.get("WEFT_BIN", "target/release/weft")
    port = free_port()
    cmd = [weft, "serve", "--addr", f"127.0.0.1:{port}", "--rate-limit", "1000000", "--rate-burst", "1000000",
           "--queue-size", "100000", "--secure-key", a.identity_key]
    proc = subprocess.Popen(pinned(cmd, a.server_cpu), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        url = f"ws://127.0.0.1:{port}/ws"
        modes = [None, "encrypt", "sign"]
        res: dict[str | None, list[float]] = {m: [] for m in modes}
        hs: dict[str | None, list[float]] = {None: [], "encrypt": []}
        for r in range(a.rounds):
            for m in modes:
                us = asyncio.run(deliveries(url, m, a.subs, a.events, a.size, f"t{r}{m}", proc.pid))
                res[m].append(us)
                print(json.dumps({"round": r + 1, "mode": m or "clear", "subscribers": a.subs, "events": a.events,
                                  "server_cpu_us_per_delivery": round(us, 3)}))
            for m in (None, "encrypt"):
                us = asyncio.run(handshakes(url, a.handshakes, m, proc.pid))
                hs[m].append(us)
                print(json.dumps({"round": r + 1, "connect": m or "clear", "server_cpu_us_per_connection": round(us, 1)}))
        med = {m: statistics.median(v) for m, v in res.items()}
        print(f"\nmedians of {a.rounds}, {a.subs} subscribers, {a.size} B payloads, server CPU per delivery:")
        for m in modes:
            extra = "" if m is None else f"  (+{med[m] - med[None]:.3f} µs, {med[m] / med[None]:.2f}x)"
            print(f"  {m or 'clear':8} {med[m]:.3f} µs{extra}")
        h0, h1 = statistics.median(hs[None]), statistics.median(hs["encrypt"])
        print(f"per connection (open, subscribe, close): clear {h0:.0f} µs, with the secure handshake (signed) {h1:.0f} µs: +{h1 - h0:.0f} µs")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
