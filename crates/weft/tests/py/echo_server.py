"""websockets echo server for interop tests: prints the port, echoes until killed."""
import argparse
import asyncio

from websockets.asyncio.server import serve


async def echo(ws):
    async for msg in ws:
        await ws.send(msg)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--deflate", action="store_true")
    a = ap.parse_args()
    async with serve(echo, "127.0.0.1", 0, compression="deflate" if a.deflate else None,
                     max_size=2**24) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.get_running_loop().create_future()


asyncio.run(main())
