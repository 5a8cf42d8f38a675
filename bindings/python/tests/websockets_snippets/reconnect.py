# The reconnect loop: every connection is closed by the server with 1011 after one message;
# the body handles ConnectionClosed and continues, and `connect` connects again.
import asyncio
import os

import websockets


async def main():
    count = 0
    async for websocket in websockets.connect(os.environ["WS_FLAKY_URL"]):
        try:
            count += 1
            async for message in websocket:
                pass
        except websockets.exceptions.ConnectionClosed as exc:
            print("closed", exc.rcvd.code if exc.rcvd else None)
            if count == 3:
                break
            continue


asyncio.run(main())
