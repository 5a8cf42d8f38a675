# The client of websockets' quick start ("Send and receive messages"), URL from the environment.
import asyncio
import os

from websockets.asyncio.client import connect


async def hello():
    async with connect(os.environ["WS_URL"]) as websocket:
        await websocket.send("Hello world!")
        message = await websocket.recv()
        print(message)


if __name__ == "__main__":
    asyncio.run(hello())
