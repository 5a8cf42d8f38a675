"""What mounting the engine in an ASGI application costs per message (issue 17).

One server process runs ``weft.Server`` and a FastAPI app that mounts ``weft.asgi.engine_app``
under uvicorn (the engine on its own threads, uvicorn and the relay on the main one). A client
process sends engine ``ping`` requests over N connections, ``--in-flight`` at a time each, for
``--duration`` seconds, first to the engine's own port, then through the mount, alternating
for ``--rounds``; the figure is the server process's CPU (user + system, from /proc) per
request-reply pair, and the pairs per second.

    python bench/asgi.py --rounds 3            # prints a table and JSON lines

Needs ``pip install ./bindings/python fastapi uvicorn``. Pin the processes with ``taskset``
from outside (e.g. ``taskset -c 1 python bench/asgi.py --server-cpu 0``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from serverproc import cpu_seconds, free_port, pinned, wait_listening

SERVER = r"""
import sys, weft, uvicorn, fastapi
from weft.asgi import engine_app
server = weft.Server("127.0.0.1", 0, rate_limit=1e9, rate_burst=1 << 30)
server.start()
app = fastapi.FastAPI()
app.mount("/realtime", engine_app(server))
port = int(sys.argv[1])
print(server.port, flush=True)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
"""


async def load(url: str, conns: int, in_flight: int, duration: float) -> int:
    from weft.async_client import connect

    done = 0
    stop = time.monotonic() + duration

    async def one() -> None:
        nonlocal done
        ws = await connect(url, 30.0, 30.0)
        await ws.recv()  # welcome
        n = 0
        while time.monotonic() < stop:
            for _ in range(in_flight):
                n += 1
                await ws.send(json.dumps({"type": "ping", "id": n}))
            for _ in range(in_flight):
                await ws.recv()
            done += in_flight
        await ws.close()

    await asyncio.gather(*(one() for _ in range(conns)))
    return done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--conns", type=int, default=20)
    ap.add_argument("--in-flight", type=int, default=8)
    ap.add_argument("--server-cpu", type=int, default=None, help="pin the server process to this CPU")
    a = ap.parse_args()
    web = free_port()
    cmd = [sys.executable, "-c", SERVER, str(web)]
    cmd = pinned(cmd, a.server_cpu)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        engine_port = int(proc.stdout.readline())
        wait_listening(web)
        pid = proc.pid  # taskset execs the server: same process
        urls = {"native": f"ws://127.0.0.1:{engine_port}/ws", "asgi": f"ws://127.0.0.1:{web}/realtime/ws"}
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in urls}
        asyncio.run(load(urls["native"], 2, 2, 0.5))  # warm up
        asyncio.run(load(urls["asgi"], 2, 2, 0.5))
        for r in range(a.rounds):
            for name, url in urls.items():
                c0, t0 = cpu_seconds(pid), time.monotonic()
                n = asyncio.run(load(url, a.conns, a.in_flight, a.duration))
                c1, t1 = cpu_seconds(pid), time.monotonic()
                us = (c1 - c0) / n * 1e6
                results[name].append((n / (t1 - t0), us))
                print(json.dumps({"round": r + 1, "path": name, "pairs": n, "pairs_per_sec": round(n / (t1 - t0)),
                                  "server_cpu_us_per_pair": round(us, 2), "conns": a.conns, "in_flight": a.in_flight}))
        print(f"\n{platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}; medians of {a.rounds} rounds")
        print("| path | pairs/s | server CPU µs per request-reply |")
        print("|---|---:|---:|")
        for name in urls:
            rate = statistics.median(x for x, _ in results[name])
            cpu = statistics.median(y for _, y in results[name])
            print(f"| {name} | {rate:,.0f} | {cpu:.1f} |")
        ratio = statistics.median(y for _, y in results["asgi"]) / statistics.median(y for _, y in results["native"])
        print(f"\nasgi ÷ native (CPU per pair): {ratio:.1f}x")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
