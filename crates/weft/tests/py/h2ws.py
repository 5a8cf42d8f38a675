"""WebSockets over HTTP/2 (RFC 8441) with independent Python implementations: `h2` for
HTTP/2 and `wsproto` for WebSocket frames. Used by crates/weft/tests/interop.rs.

  h2ws.py server [--deflate]   echo server; prints its port, then serves until killed
  h2ws.py client URL [--deflate] [--streams N]
                               N WebSockets on one HTTP/2 connection, each echoing a set of
                               payloads (up to 1 MiB, so flow control is exercised both ways);
                               exits 0 when every echo matched and every close was clean
"""

import socket
import sys
import threading
from urllib.parse import urlparse

import h2.config
import h2.connection
import h2.events
import h2.settings
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason

ENABLE_CONNECT = h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL


class H2:
    """One HTTP/2 connection on a blocking socket, with flow-controlled sends."""

    def __init__(self, sock, client):
        self.sock = sock
        cfg = h2.config.H2Configuration(client_side=client, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        if not client:
            self.conn.update_settings({ENABLE_CONNECT: 1})
        self.pending = {}  # stream id -> bytes waiting for window
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send(self, sid, data, end=False):
        self.pending[sid] = self.pending.get(sid, b"") + data
        self.pump(sid, end)

    def pump(self, sid, end=False):
        buf = self.pending.get(sid, b"")
        while buf:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                break
            chunk, buf = buf[:window], buf[window:]
            self.conn.send_data(sid, chunk)
        self.pending[sid] = buf
        if end and not buf:
            self.conn.end_stream(sid)
        self.flush()

    def pump_all(self):
        for sid in list(self.pending):
            if self.pending[sid]:
                self.pump(sid)

    def read(self):
        data = self.sock.recv(65536)
        if not data:
            return None
        events = self.conn.receive_data(data)
        self.flush()
        return events


def deflate_ext():
    return PerMessageDeflate(client_max_window_bits=15, server_max_window_bits=15)


def serve(deflate):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    print(lsock.getsockname()[1], flush=True)
    while True:
        sock, _ = lsock.accept()
        threading.Thread(target=serve_conn, args=(sock, deflate), daemon=True).start()


def serve_conn(sock, deflate):
    h = H2(sock, client=False)
    ws = {}  # stream id -> wsproto Connection
    parts = {}  # stream id -> the message arriving (wsproto hands out pieces)
    while True:
        events = h.read()
        if events is None:
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                headers = dict(ev.headers)
                ok = (headers.get(":method") == "CONNECT" and headers.get(":protocol") == "websocket"
                      and headers.get("sec-websocket-version") == "13")
                if not ok:
                    h.conn.send_headers(ev.stream_id, [(":status", "400")], end_stream=True)
                    continue
                resp = [(":status", "200")]
                exts = []
                offer = headers.get("sec-websocket-extensions")
                if deflate and offer and "permessage-deflate" in offer:
                    ext = deflate_ext()
                    accepted = ext.accept(offer.split(",")[0].strip())
                    if accepted is not None:
                        exts.append(ext)
                        value = "permessage-deflate" + (("; " + accepted) if isinstance(accepted, str) and accepted else "")
                        resp.append(("sec-websocket-extensions", value))
                h.conn.send_headers(ev.stream_id, resp)
                ws[ev.stream_id] = Connection(ConnectionType.SERVER, extensions=exts)
            elif isinstance(ev, h2.events.DataReceived):
                h.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                c = ws.get(ev.stream_id)
                # An empty DATA frame carries END_STREAM after the close; nothing to parse.
                if c is None or not ev.data or c.state is ConnectionState.CLOSED:
                    continue
                c.receive_data(ev.data)
                for e in c.events():
                    if isinstance(e, (TextMessage, BytesMessage)):
                        parts[ev.stream_id] = parts.get(ev.stream_id, e.data[:0]) + e.data
                        if e.message_finished:
                            h.send(ev.stream_id, c.send(type(e)(data=parts.pop(ev.stream_id))))
                    elif isinstance(e, Ping):
                        h.send(ev.stream_id, c.send(e.response()))
                    elif isinstance(e, CloseConnection):
                        h.send(ev.stream_id, c.send(e.response()), end=True)
            elif isinstance(ev, h2.events.StreamEnded):
                c = ws.pop(ev.stream_id, None)
            elif isinstance(ev, h2.events.WindowUpdated):
                h.pump_all()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                return
        h.flush()


def payloads():
    out = []
    for size in (0, 1, 125, 126, 65535, 65536, 1 << 20):
        out.append(("ü" * (size // 2)))
        out.append(bytes((i * 31) & 0xFF for i in range(size)))
    return out


def client(url, deflate, streams):
    u = urlparse(url)
    sock = socket.create_connection((u.hostname, u.port))
    h = H2(sock, client=True)
    while not h.conn.remote_settings.enable_connect_protocol:
        if h.read() is None:
            sys.exit("server closed before its SETTINGS")
    sids = []
    for i in range(streams):
        sid = h.conn.get_next_available_stream_id()
        headers = [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                   (":path", f"{u.path or '/'}?stream={i}"), (":authority", u.netloc),
                   ("sec-websocket-version", "13")]
        if deflate:
            headers.append(("sec-websocket-extensions", "permessage-deflate; " + deflate_ext().offer()))
        h.conn.send_headers(sid, headers)
        sids.append(sid)
    h.flush()
    ws, expect, closed, parts = {}, {}, set(), {}
    todo = payloads()
    while len(closed) < len(sids):
        events = h.read()
        if events is None:
            sys.exit("connection closed early")
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived):
                headers = dict(ev.headers)
                if headers[":status"] != "200":
                    sys.exit(f"stream {ev.stream_id}: status {headers[':status']}")
                exts = []
                value = headers.get("sec-websocket-extensions")
                if deflate:
                    if not value:
                        sys.exit("deflate offered but not accepted")
                    ext = deflate_ext()
                    ext.finalize(value)
                    exts.append(ext)
                c = Connection(ConnectionType.CLIENT, extensions=exts)
                ws[ev.stream_id] = c
                expect[ev.stream_id] = list(todo)
                first = expect[ev.stream_id][0]
                h.send(ev.stream_id, c.send(TextMessage(data=first) if isinstance(first, str) else BytesMessage(data=first)))
            elif isinstance(ev, h2.events.DataReceived):
                h.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if ev.stream_id in closed or not ev.data:
                    continue
                c = ws[ev.stream_id]
                c.receive_data(ev.data)
                for e in c.events():
                    if isinstance(e, (TextMessage, BytesMessage)):
                        parts[ev.stream_id] = parts.get(ev.stream_id, e.data[:0]) + e.data
                        if not e.message_finished:
                            continue
                        want = expect[ev.stream_id].pop(0)
                        got = parts.pop(ev.stream_id)
                        if got != want:
                            sys.exit(f"stream {ev.stream_id}: echo mismatch ({len(got)} vs {len(want)} bytes)")
                        if expect[ev.stream_id]:
                            nxt = expect[ev.stream_id][0]
                            msg = TextMessage(data=nxt) if isinstance(nxt, str) else BytesMessage(data=nxt)
                        else:
                            msg = CloseConnection(code=CloseReason.NORMAL_CLOSURE, reason="done")
                        h.send(ev.stream_id, c.send(msg))
                    elif isinstance(e, Ping):
                        h.send(ev.stream_id, c.send(e.response()))
                    elif isinstance(e, CloseConnection):
                        if e.code != CloseReason.NORMAL_CLOSURE:
                            sys.exit(f"stream {ev.stream_id}: closed with {e.code}")
                        closed.add(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                sys.exit(f"stream {ev.stream_id} reset: {ev.error_code}")
            elif isinstance(ev, h2.events.WindowUpdated):
                h.pump_all()
        h.flush()
    print(f"ok: {len(sids)} streams, {len(todo)} messages each", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    deflate = "--deflate" in args
    if args[0] == "server":
        serve(deflate)
    else:
        n = int(args[args.index("--streams") + 1]) if "--streams" in args else 1
        client(args[1], deflate, n)
