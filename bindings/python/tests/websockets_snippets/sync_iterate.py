# Iterate until the server closes normally; handshake headers; explicit errors.
import os

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

url = os.environ["WS_URL"]
with connect(url) as websocket:
    websocket.send("one")
    websocket.send("two")
    print(websocket.recv(), websocket.recv())
    print("deflate" in websocket.response.headers.get("Sec-WebSocket-Extensions", ""))
    pong = websocket.ping()
    websocket.send("three")
    print(websocket.recv(timeout=5))
    print("pong", pong.wait(5))
    try:
        websocket.recv(timeout=0.2)
    except TimeoutError:
        print("timeout")
websocket.close()
try:
    websocket.recv()
except ConnectionClosed as exc:
    print("closed", websocket.close_code, type(exc).__name__)
