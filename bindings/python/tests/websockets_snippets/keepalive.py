# A server that never answers pings: keepalive closes with 1011.
import asyncio
import os

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError


async def main():
    async with connect(os.environ["WS_SILENT_URL"], ping_interval=0.2, ping_timeout=0.2) as ws:
        try:
            await ws.recv()
        except ConnectionClosedError as exc:
            print("closed", exc.sent.code, exc.sent.reason)


asyncio.run(main())
