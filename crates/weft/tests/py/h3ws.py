"""WebSockets over HTTP/3 (RFC 9220) with independent Python implementations: `aioquic` for
QUIC + HTTP/3 and `wsproto` for WebSocket frames. Used by crates/weft/tests/interop.rs.

  h3ws.py server CERT KEY [--deflate]
                               echo server on UDP; prints its port, then serves until killed
  h3ws.py client URL CA [--deflate] [--streams N]
                               N WebSockets on one QUIC connection, each echoing a set of
                               payloads (up to 1 MiB, so flow control is exercised both ways);
                               exits 0 when every echo matched and every close was clean
"""

import asyncio
import sys
from urllib.parse import urlparse

from aioquic.asyncio import connect, serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamReset
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.frame_protocol import CloseReason

# The same payloads and deflate parameters as the HTTP/2 peer (this script's directory is on
# sys.path).
from h2ws import deflate_ext, payloads


def message(data):
    return TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)


class Endpoint(QuicConnectionProtocol):
    """One QUIC connection with HTTP/3 on it; WebSocket frames by wsproto on each stream."""

    deflate = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.ws = {}  # stream id -> wsproto Connection
        self.parts = {}  # stream id -> the message arriving (wsproto hands out pieces)

    def quic_event_received(self, event):
        if isinstance(event, StreamReset):
            self.on_reset(event.stream_id, event.error_code)
        for ev in self.h3.handle_event(event):
            if isinstance(ev, HeadersReceived):
                self.on_headers(ev.stream_id, dict(ev.headers))
            elif isinstance(ev, DataReceived):
                c = self.ws.get(ev.stream_id)
                # The stream's end (FIN) after the close: nothing to parse.
                if c is not None and ev.data and c.state is not ConnectionState.CLOSED:
                    c.receive_data(ev.data)
                    for e in c.events():
                        self.on_ws_event(ev.stream_id, c, e)
        self.transmit()

    def send(self, sid, data, end=False):
        self.h3.send_data(sid, data, end_stream=end)
        self.transmit()

    def collect(self, sid, e):
        """The whole message once its last piece arrived, else None."""
        self.parts[sid] = self.parts.get(sid, e.data[:0]) + e.data
        return self.parts.pop(sid) if e.message_finished else None

    def on_reset(self, sid, code):
        pass


class Server(Endpoint):
    def on_headers(self, sid, headers):
        ok = (headers.get(b":method") == b"CONNECT" and headers.get(b":protocol") == b"websocket"
              and headers.get(b"sec-websocket-version") == b"13")
        if not ok:
            self.h3.send_headers(sid, [(b":status", b"400")], end_stream=True)
            return
        resp = [(b":status", b"200")]
        exts = []
        offer = headers.get(b"sec-websocket-extensions", b"").decode()
        if self.deflate and "permessage-deflate" in offer:
            ext = deflate_ext()
            accepted = ext.accept(offer.split(",")[0].strip())
            if accepted is not None:
                exts.append(ext)
                value = "permessage-deflate" + (("; " + accepted) if isinstance(accepted, str) and accepted else "")
                resp.append((b"sec-websocket-extensions", value.encode()))
        self.h3.send_headers(sid, resp)
        self.ws[sid] = Connection(ConnectionType.SERVER, extensions=exts)

    def on_ws_event(self, sid, c, e):
        if isinstance(e, (TextMessage, BytesMessage)):
            whole = self.collect(sid, e)
            if whole is not None:
                self.send(sid, c.send(message(whole)))
        elif isinstance(e, Ping):
            self.send(sid, c.send(e.response()))
        elif isinstance(e, CloseConnection):
            self.send(sid, c.send(e.response()), end=True)


class Client(Endpoint):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.expect = {}
        self.closed = set()
        self.failed = None
        self.done = asyncio.get_event_loop().create_future()
        self.streams = 0

    def fail(self, why):
        if not self.done.done():
            self.done.set_exception(SystemExit(why))

    def on_headers(self, sid, headers):
        status = headers.get(b":status")
        if status != b"200":
            return self.fail(f"stream {sid}: status {status}")
        exts = []
        value = headers.get(b"sec-websocket-extensions")
        if self.deflate:
            if not value:
                return self.fail("deflate offered but not accepted")
            ext = deflate_ext()
            ext.finalize(value.decode())
            exts.append(ext)
        c = Connection(ConnectionType.CLIENT, extensions=exts)
        self.ws[sid] = c
        self.expect[sid] = payloads()
        self.send(sid, c.send(message(self.expect[sid][0])))

    def on_ws_event(self, sid, c, e):
        if isinstance(e, (TextMessage, BytesMessage)):
            got = self.collect(sid, e)
            if got is None:
                return
            want = self.expect[sid].pop(0)
            if got != want:
                return self.fail(f"stream {sid}: echo mismatch ({len(got)} vs {len(want)} bytes)")
            if self.expect[sid]:
                self.send(sid, c.send(message(self.expect[sid][0])))
            else:
                self.send(sid, c.send(CloseConnection(code=CloseReason.NORMAL_CLOSURE, reason="done")))
        elif isinstance(e, Ping):
            self.send(sid, c.send(e.response()))
        elif isinstance(e, CloseConnection):
            if e.code != CloseReason.NORMAL_CLOSURE:
                return self.fail(f"stream {sid}: closed with {e.code}")
            self.closed.add(sid)
            if len(self.closed) == self.streams and not self.done.done():
                self.done.set_result(None)

    def on_reset(self, sid, code):
        if sid not in self.closed:
            self.fail(f"stream {sid} reset: {code:#x}")


async def run_server(cert, key, deflate):
    cfg = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN, max_datagram_frame_size=None)
    cfg.load_cert_chain(cert, key)
    Server.deflate = deflate
    server = await serve("127.0.0.1", 0, configuration=cfg, create_protocol=Server)
    print(server._transport.get_extra_info("sockname")[1], flush=True)
    await asyncio.Future()


async def run_client(url, ca, deflate, streams):
    u = urlparse(url)
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=u.hostname)
    cfg.load_verify_locations(ca)
    Client.deflate = deflate
    async with connect(u.hostname, u.port, configuration=cfg, create_protocol=Client) as client:
        client.streams = streams
        # Extended CONNECT only once the server's SETTINGS said it may be used.
        for _ in range(200):
            if client.h3.received_settings is not None:
                break
            await asyncio.sleep(0.01)
        settings = client.h3.received_settings or {}
        if settings.get(0x8) != 1:
            sys.exit(f"server did not enable extended CONNECT: {settings}")
        for i in range(streams):
            sid = client._quic.get_next_available_stream_id()
            headers = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
                       (b":path", f"{u.path or '/'}?stream={i}".encode()), (b":authority", u.netloc.encode()),
                       (b"sec-websocket-version", b"13")]
            if deflate:
                headers.append((b"sec-websocket-extensions", ("permessage-deflate; " + deflate_ext().offer()).encode()))
            client.h3.send_headers(sid, headers)
        client.transmit()
        await asyncio.wait_for(client.done, 60)
    print(f"ok: {streams} streams, {len(payloads())} messages each", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    deflate = "--deflate" in args
    if args[0] == "server":
        asyncio.run(run_server(args[1], args[2], deflate))
    else:
        n = int(args[args.index("--streams") + 1]) if "--streams" in args else 1
        asyncio.run(run_client(args[1], args[2], deflate, n))
