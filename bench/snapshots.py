"""What a snapshot on subscribe costs the server (issue 17).

Starts ``weft serve --snapshots last`` (or the binary at $WEFT_BIN), publishes one event on each
of ``--topics`` topics, then has ``--conns`` connections subscribe and unsubscribe in a loop
for ``--duration`` seconds, with ``snapshot: true`` and without, alternating for
``--rounds``. The figure is the server's CPU (user + system, from /proc) per subscribe (the
subscribe, its reply, the snapshot when asked for, and the unsubscribe).

    WEFT_BIN=target/release/weft python bench/snapshots.py --server-cpu 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import time

from serverproc import cpu_seconds, free_port, pinned, wait_listening


async def churn(url: str, conns: int, topics: int, snapshot: bool, duration: float) -> int:
    from weft.async_client import connect

    done = 0
    stop = time.monotonic() + duration

    async def one(k: int) -> None:
        nonlocal done
        ws = await connect(url, 30.0, 30.0, subprotocols=["weft.v1.json"])
        await ws.recv()
        i = k
        while time.monotonic() < stop:
            t = f"t{i % topics}"
            i += conns
            await ws.send(json.dumps({"type": "subscribe", "id": 1, "topics": [t], "snapshot": snapshot}))
            m = json.loads(await ws.recv())
            assert m["type"] == "subscribed", m
            if snapshot:
                s = json.loads(await ws.recv())
                assert s["type"] == "snapshot" and "data" in s, s
            await ws.send(json.dumps({"type": "unsubscribe", "id": 2, "topics": [t]}))
            assert json.loads(await ws.recv())["type"] == "unsubscribed"
            done += 1
        await ws.close()

    await asyncio.gather(*(one(k) for k in range(conns)))
    return done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--conns", type=int, default=20)
    ap.add_argument("--topics", type=int, default=1000)
    ap.add_argument("--server-cpu", type=int, default=None)
    a = ap.parse_args()
    weft = os.environ.get("WEFT_BIN", "target/release/weft")
    port = free_port()
    cmd = [weft, "serve", "--addr", f"127.0.0.1:{port}", "--snapshots", "last", "--rate-limit", "1000000",
           "--rate-burst", "1000000", "--topic-churn-limit", "100000000"]
    cmd = pinned(cmd, a.server_cpu)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        import urllib.request

        for t in range(a.topics):
            body = json.dumps({"topic": f"t{t}", "payload": {"price": t, "note": "x" * 100}}).encode()
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/api/publish", data=body), timeout=5).read()
        url = f"ws://127.0.0.1:{port}/ws"
        res: dict[bool, list[float]] = {False: [], True: []}
        for r in range(a.rounds):
            for snap in (False, True):
                c0 = cpu_seconds(proc.pid)
                n = asyncio.run(churn(url, a.conns, a.topics, snap, a.duration))
                us = (cpu_seconds(proc.pid) - c0) / n * 1e6
                res[snap].append(us)
                print(json.dumps({"round": r + 1, "snapshot": snap, "subscribes": n, "server_cpu_us_per_subscribe": round(us, 2)}))
        plain, snap = statistics.median(res[False]), statistics.median(res[True])
        print(f"\nmedians of {a.rounds}: without {plain:.1f} µs, with a snapshot (last event) {snap:.1f} µs per subscribe: +{snap - plain:.1f} µs")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
