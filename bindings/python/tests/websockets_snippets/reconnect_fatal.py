# The reconnect loop gives up on a fatal error (HTTP 403) and raises it.
import asyncio
import os

import websockets


async def main():
    try:
        async for websocket in websockets.connect(os.environ["WS_REJECT_URL"]):
            print("connected?")
    except websockets.exceptions.InvalidStatus as exc:
        print("fatal", exc.response.status_code)


asyncio.run(main())
