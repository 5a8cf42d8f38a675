# `ws = await websockets.connect(...)`, both message types, ping latency, state and close code.
import asyncio
import os

import websockets


async def main():
    ws = await websockets.connect(os.environ["WS_URL"], additional_headers={"X-Test": "1"})
    print(ws.state.name)
    await ws.send(b"\x00\x01binary")
    reply = await ws.recv()
    print(type(reply).__name__, reply)
    await ws.send("text ✓")
    reply = await ws.recv()
    print(type(reply).__name__, reply)
    await ws.send("as bytes")
    print(await ws.recv(decode=False))
    pong_waiter = await ws.ping()
    latency = await pong_waiter
    print("latency", latency > 0, ws.latency > 0)
    await ws.send(["frag", "mented"])
    print(await ws.recv())
    async with asyncio.timeout(5):
        await ws.close()
    print(ws.state.name, ws.close_code, repr(ws.close_reason))
    try:
        await ws.send("after close")
    except websockets.exceptions.ConnectionClosedOK as exc:
        print("ConnectionClosedOK", exc.rcvd.code if exc.rcvd else None)


asyncio.run(main())
