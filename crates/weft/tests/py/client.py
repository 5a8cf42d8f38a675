"""websockets client for interop tests: sends text and binary of several sizes to an echo
server, checks every echo, checks the negotiated extension, closes cleanly. Exit 0 on success."""
import argparse
import asyncio
import os
import sys

from websockets.asyncio.client import connect


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--deflate", action="store_true")
    ap.add_argument("--subprotocol")
    a = ap.parse_args()
    kw = {"compression": "deflate" if a.deflate else None, "max_size": 2**24}
    if a.subprotocol:
        kw["subprotocols"] = [a.subprotocol]
    async with connect(a.url, **kw) as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions")
        if a.deflate != bool(ext and "permessage-deflate" in ext):
            sys.exit(f"extension mismatch: {ext!r}")
        if a.subprotocol and ws.subprotocol != a.subprotocol:
            sys.exit(f"subprotocol mismatch: {ws.subprotocol!r}")
        for size in [0, 1, 125, 126, 65535, 65536, 1 << 20]:
            text = ("κόσμε-" * (size // 11 + 1))[: max(size // 2, 0)]
            await ws.send(text)
            got = await ws.recv()
            if got != text:
                sys.exit(f"text echo mismatch at {size}")
            data = os.urandom(size)
            await ws.send(data)
            got = await ws.recv()
            if got != data:
                sys.exit(f"binary echo mismatch at {size}")
        # A fragmented message.
        await ws.send(["part1-", "part2-", "part3"])
        if await ws.recv() != "part1-part2-part3":
            sys.exit("fragmented echo mismatch")
        latency = await (await ws.ping())
        assert latency >= 0
    if ws.close_code != 1000:
        sys.exit(f"close code {ws.close_code}")
    print("ok")


asyncio.run(main())
