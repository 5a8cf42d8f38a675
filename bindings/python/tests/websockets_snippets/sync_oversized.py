# The same with the threading client and a raised limit first.
import os

from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

with connect(os.environ["WS_URL"], max_size=4 * 2**20) as ws:
    ws.send(b"y" * (2**20 + 1))
    print(len(ws.recv()))

with connect(os.environ["WS_URL"]) as ws:
    ws.send(b"y" * (2**20 + 1))
    try:
        ws.recv()
    except ConnectionClosedError as exc:
        print("closed", exc.sent.code)
