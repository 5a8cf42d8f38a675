"""picows echo server for weft's benchmark suite.
usage: python picows_echo.py [--port N]"""
import argparse
import asyncio

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame):
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=9206)
    a = ap.parse_args()
    server = await ws_create_server(lambda _req: Echo(), "127.0.0.1", a.port, max_frame_size=2**28)
    await server.serve_forever()


asyncio.run(main())
