# websockets' threading quick start client.
import os

from websockets.sync.client import connect


def hello():
    with connect(os.environ["WS_URL"]) as websocket:
        websocket.send("Hello world!")
        message = websocket.recv()
        print(f"Received: {message}")


if __name__ == "__main__":
    hello()
