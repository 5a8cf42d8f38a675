"""The engine from Python: how fast Python can publish into `weft.Server` and drain what
clients send it.

usage: engine_bench.py [--messages 200000] [--clients 4]

- publish: one Python thread calls `server.publish(topic, {"n": i})` in a loop while one
  subscriber (weft's asyncio client, in a child process) receives; reports publish calls/s
  (the call returns once the event is queued) and events/s delivered end to end.
- inbound: `--clients` child processes send `{"type": "send", "payload": {...}}` as fast as
  they can (pipelined, 256 in flight); one Python thread drains with `drain_inbound(256, 50)`;
  reports messages/s and the mean batch size (GIL acquisitions per message = 1 / batch).

Prints one JSON object per measurement.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import threading
import time


def subscriber(url: str, topic: str, count: int, ready, out) -> None:
    import asyncio

    from weft import async_client

    async def main() -> None:
        async with async_client.connect(url, subprotocols=["weft.v1.json"], max_size=None) as ws:
            await ws.recv()  # welcome
            await ws.send(json.dumps({"type": "subscribe", "id": 1, "topics": [topic]}))
            await ws.recv()  # subscribed
            ready.set()
            n, t0 = 0, None
            while n < count:
                m = json.loads(await ws.recv(None))
                if m.get("type") == "event":
                    t0 = t0 or time.perf_counter()
                    n += 1
            out.put((n, time.perf_counter() - t0))

    asyncio.run(main())


def sender(url: str, count: int, ready, go) -> None:
    import asyncio

    from weft import async_client

    async def main() -> None:
        async with async_client.connect(url, subprotocols=["weft.v1.json"], max_size=None) as ws:
            await ws.recv()  # welcome
            ready.set()
            go.wait()
            msg = json.dumps({"type": "send", "payload": {"k": "v" * 32}})
            inflight, sent, acked = 256, 0, 0
            while acked < count:
                while sent < count and sent - acked < inflight:
                    await ws.send(msg)
                    sent += 1
                if json.loads(await ws.recv(None)).get("type") == "sent":
                    acked += 1

    asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--clients", type=int, default=4)
    a = ap.parse_args()
    import weft

    # The rate limit is per connection and protects real servers; a benchmark lifts it.
    server = weft.Server("127.0.0.1", 0, rate_limit=1e9, rate_burst=1_000_000_000, queue_size=1 << 20)
    server.start()
    url = f"ws://127.0.0.1:{server.port}/ws"
    ctx = mp.get_context("spawn")

    # publish
    ready, out = ctx.Event(), ctx.Queue()
    p = ctx.Process(target=subscriber, args=(url, "bench.pub", a.messages, ready, out))
    p.start()
    ready.wait(30)
    t0 = time.perf_counter()
    i = 0
    while i < a.messages:
        try:
            server.publish("bench.pub", {"n": i})
            i += 1
        except BufferError:  # the engine is behind: yield to it briefly
            time.sleep(0.0001)
    calls = time.perf_counter() - t0
    n, recv_s = out.get(timeout=120)
    p.join(30)
    print(json.dumps({"bench": "publish", "messages": a.messages, "publish_calls_per_sec": a.messages / calls,
                      "delivered_per_sec": n / recv_s, "python": sys.version.split()[0]}))

    # inbound
    per = a.messages // a.clients
    readies = [ctx.Event() for _ in range(a.clients)]
    go = ctx.Event()
    procs = [ctx.Process(target=sender, args=(url, per, r, go)) for r in readies]
    for q in procs:
        q.start()
    for r in readies:
        r.wait(30)
    while server.drain_inbound(1024, 10):  # the connect events
        pass
    got, batches = 0, 0
    total = per * a.clients
    done = threading.Event()
    go.set()
    t0 = time.perf_counter()
    while got < total:
        b = server.drain_inbound(256, 50)
        m = sum(1 for e in b if e["type"] == "message")
        if m:
            got += m
            batches += 1
    secs = time.perf_counter() - t0
    done.set()
    for q in procs:
        q.join(30)
    print(json.dumps({"bench": "inbound", "clients": a.clients, "messages": total, "messages_per_sec": total / secs,
                      "mean_batch": total / batches, "python": sys.version.split()[0]}))
    server.stop()


if __name__ == "__main__":
    main()
