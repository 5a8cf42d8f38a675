# max_size defaults to 1 MiB: a bigger message closes the connection with 1009.
import asyncio
import os

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError


async def main():
    async with connect(os.environ["WS_URL"]) as ws:
        await ws.send("x" * (2**20 + 1))
        try:
            await ws.recv()
        except ConnectionClosedError as exc:
            print("closed", exc.sent.code)


asyncio.run(main())
