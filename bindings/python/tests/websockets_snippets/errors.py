# Handshake errors: invalid URI, refused connection, and (with a websockets server) a 403.
import asyncio
import os
import socket

import websockets
from websockets.exceptions import InvalidStatus, InvalidURI


async def main():
    try:
        await websockets.connect("http://example.com/")
    except InvalidURI as exc:
        print("InvalidURI")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        await websockets.connect(f"ws://127.0.0.1:{port}/")
    except OSError as exc:
        print("OSError", type(exc).__name__)
    reject = os.environ.get("WS_REJECT_URL")
    if reject:
        try:
            async with websockets.connect(reject):
                pass
        except InvalidStatus as exc:
            print("InvalidStatus", exc.response.status_code)
    try:
        await websockets.connect(os.environ["WS_URL"], no_such_option=1)
    except TypeError:
        print("TypeError")


asyncio.run(main())
