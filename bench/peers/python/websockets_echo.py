"""websockets (asyncio) echo server for weft's benchmark suite.
usage: python websockets_echo.py [--port N] [--deflate]"""
import argparse
import asyncio

from websockets.asyncio.server import serve


async def echo(ws):
    async for msg in ws:
        await ws.send(msg)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=9205)
    ap.add_argument("--deflate", action="store_true")
    a = ap.parse_args()
    async with serve(echo, "127.0.0.1", a.port, compression="deflate" if a.deflate else None,
                     max_size=2**28, ping_interval=None):
        await asyncio.get_running_loop().create_future()


asyncio.run(main())
