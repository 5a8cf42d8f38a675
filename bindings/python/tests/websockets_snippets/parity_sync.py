"""websockets.sync.client behaviours real code relies on (parity test: same output on
websockets and on weft's drop-in). Prints one line per check."""

import os
import socket
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _parity_servers as S  # noqa: E402
from websockets.sync.client import connect, reconnect, unix_connect, unix_reconnect  # noqa: E402
from websockets.sync import client as sync_module  # noqa: E402


def show(label, f):
    try:
        print(label, f())
    except Exception as e:
        cause = e.__cause__
        print(label, type(e).__name__, str(e), type(cause).__name__ if cause else None, str(cause) if cause else "")


def user_agents():
    S.SEEN.clear()
    with S.server() as uri:
        with connect(uri, additional_headers={"User-Agent": "Smith"}) as ws:
            return ws.request.headers.get_all("User-Agent"), S.SEEN[-1].get_all("User-Agent")


# Attributes: protocol.state, protocol.extensions (compression negotiated?), request.headers.
with S.server() as uri:
    with connect(uri) as ws:
        print("state", ws.protocol.state.name, [type(e).__name__ for e in ws.protocol.extensions])
        print("uri path", ws.protocol.uri.path, ws.request.headers["Host"] == uri.split("//")[1])
    with connect(uri, compression=None) as ws:
        print("no compression", ws.protocol.extensions)
    print("closed", ws.protocol.state.name)
show("user agent", user_agents)


def factory(*args, **kwargs):
    from websockets.sync import client as client_module

    made = client_module.ClientConnection(*args, **kwargs)
    made.by_factory = True
    return made


with S.server() as uri:
    with connect(uri, create_connection=factory) as ws:
        print("create_connection", ws.by_factory, ws.protocol.state.name)
    # websockets 17: connect(..., legacy=False) is a reconnect: with, for, .connect().
    connecter = connect(uri, legacy=False)
    ws = connecter.connect()
    ws.send("via connect()")
    print("legacy=False", type(connecter).__name__, ws.recv())
    ws.close()
    with connect(uri, legacy=False) as ws:
        print("legacy=False with", ws.protocol.state.name)
        show("reentrant", lambda: connecter.__enter__() and connecter.__enter__())
    for n, ws in enumerate(reconnect(uri)):
        print("reconnect", n, ws.protocol.state.name)
        if n == 1:
            break
    with S.temp_dir() as d:
        path = os.path.join(d, "r.sock")
        with S.server(unix_path=path):
            for ws in unix_reconnect(path):
                print("unix_reconnect", ws.request.headers["Host"])
                break

# Error messages and exception chaining.
for name, answer in [("eof", S.close_at_once), ("junk", S.junk), ("no accept", S.no_accept)]:
    with S.raw_server(answer) as uri:
        show(name, lambda: connect(uri, open_timeout=5))
with S.raw_server(S.silent) as uri:
    show("timeout", lambda: connect(uri, open_timeout=0.2))

# Other keywords go to socket.create_connection: address= (Host header stays the URI's),
# source_address=; a cross-origin redirect cannot be followed with an explicit address.
with S.server() as uri:
    host, port = uri.split("//")[1].split(":")
    S.SEEN.clear()
    with connect("ws://overridden/", address=(host, int(port))) as ws:
        print("address", ws.protocol.state.name, S.SEEN[-1]["Host"])
    with connect(uri, source_address=("127.0.0.2", 0)) as ws:
        print("source_address", ws.local_address[0])
    with S.server(S.redirecting(lambda p: uri + "/")) as redirecting:
        rhost, rport = redirecting.split("//")[1].split(":")
        show("cross origin with address", lambda: connect("ws://overridden/", address=(rhost, int(rport))))
show("unknown keyword", lambda: connect("ws://localhost/", bogus=1))

# host=/port= are asyncio-only in websockets; unix=True and path=, unix_connect.
with S.temp_dir() as d:
    path = os.path.join(d, "ws.sock")
    with S.server(unix_path=path):
        with unix_connect(path) as ws:
            print("unix", ws.protocol.state.name, ws.request.headers["Host"])
        with unix_connect(path, uri="ws://overridden/") as ws:
            print("unix host", ws.request.headers["Host"])
        with connect("ws://localhost/", unix=True, path=path) as ws:
            ws.send("over unix")
            print("unix=True", ws.recv())
show("unix no path", lambda: unix_connect())

# TLS with a custom SSLContext (a self-signed certificate, not a CA), server_hostname,
# ssl_context= (deprecated alias).
with S.temp_dir() as d:
    server_ctx, client_ctx = S.contexts(d)
    with S.server(ssl_context=server_ctx) as uri:
        with connect(uri, ssl=client_ctx) as ws:
            ws.send("secret")
            print("tls", ws.recv(), ws.socket.version()[:3])
            print("tls addresses", ws.remote_address == ws.socket.getpeername(),
                  ws.local_address == ws.socket.getsockname())
        with connect(uri, ssl=client_ctx, server_hostname="overridden") as ws:
            print("server_hostname", ws.socket.server_hostname)
        show("hostname mismatch", lambda: type(connect(uri, ssl=client_ctx, server_hostname="invalid")))

        # A message over max_size while the server keeps sending: the server gets the close
        # frame (1009) through the TLS relay, every time (weft's relay lost it about 2 runs in 5).
        codes = []

        def flood(ws):
            try:
                ws.send("x" * 5000)
                while True:
                    ws.send("y" * 10000)
            except Exception:
                pass
            t0 = time.monotonic()
            while ws.close_code is None and time.monotonic() - t0 < 3:
                time.sleep(0.01)
            codes.append(int(ws.close_code))

        with S.server(ssl_context=server_ctx, handler=flood) as flooding:
            for _ in range(5):
                with connect(flooding, ssl=client_ctx, max_size=1000) as ws:
                    try:
                        ws.recv()
                    except Exception as e:  # the message differs: weft's own wording
                        print("too big over tls", type(e).__name__)
                t0 = time.monotonic()
                while len(codes) <= _ and time.monotonic() - t0 < 5:
                    time.sleep(0.01)
        print("server saw", codes)

        # A TLS handshake slower than open_timeout: the ssl module's TimeoutError, as websockets.
        def slow_tls(conn):
            time.sleep(1)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(4096)

        with S.raw_server(slow_tls) as raw:
            show("tls timeout", lambda: connect(raw.replace("ws://", "wss://"), ssl=client_ctx, open_timeout=0.3))
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            with connect(uri, ssl_context=client_ctx) as ws:
                print("ssl_context", ws.protocol.state.name, [str(x.message) for x in w if x.category is DeprecationWarning])
        # Redirect from wss to ws: refused.
        with S.server() as plain:
            with S.server(S.redirecting(lambda p: plain), ssl_context=server_ctx) as redirecting:
                show("downgrade", lambda: connect(redirecting, ssl=client_ctx))
    with S.temp_dir() as d2:
        path = os.path.join(d2, "wss.sock")
        with S.server(unix_path=path, ssl_context=server_ctx):
            with unix_connect(path, ssl=client_ctx, uri="wss://overridden/") as ws:
                print("unix tls", ws.socket.server_hostname, ws.socket.version()[:3])

# Redirects: same origin keeps credentials, another origin drops them.
creds = {"Authorization": "Bearer secret", "Cookie": "c=1", "X-Custom": "keep"}
with S.server() as other:
    with S.server(S.redirecting(lambda p: "/" if p == "/redirect" else (other + "/" if p == "/away" else None))) as uri:
        S.SEEN.clear()
        with connect(uri + "/redirect", additional_headers=creds) as ws:
            print("same origin", ws.protocol.uri.path, "Authorization" in ws.request.headers,
                  [("Authorization" in h, "Cookie" in h) for h in S.SEEN])
        S.SEEN.clear()
        with connect(uri + "/away", additional_headers=creds) as ws:
            print("cross origin", ws.protocol.uri.port == int(other.rsplit(":", 1)[1]),
                  "Authorization" in ws.request.headers, "X-Custom" in ws.request.headers,
                  [("Authorization" in h, "Cookie" in h) for h in S.SEEN])
        host, port = uri.split("//")[1].split(":")
        with socket.create_connection((host, int(port))) as sock:
            show("redirect with sock", lambda: connect("ws://invalid/redirect", sock=sock))
with S.server(S.redirecting(lambda p: p)) as uri:
    show("redirect loop", lambda: connect(uri))
    # The sync client's own limit (websockets.sync.client.MAX_REDIRECTS), not asyncio's.
    saved, sync_module.MAX_REDIRECTS = sync_module.MAX_REDIRECTS, 2
    try:
        show("sync redirect limit", lambda: connect(uri))
    finally:
        sync_module.MAX_REDIRECTS = saved


def opened_path(uri):
    with connect(uri) as ws:
        return ws.protocol.uri.path


# Only 300-303, 307 and 308 are followed: not 304 Not Modified or 305 Use Proxy.
for status in (304, 305, 307, 308):
    with S.server(S.redirecting(lambda p: "/" if p == "/moved" else None, status=status)) as uri:
        show(f"status {status}", lambda: opened_path(uri + "/moved"))

# reconnect remembers where a redirect led (and the credentials a cross-origin hop dropped).
with S.server() as other:
    def route(p):
        return "/new" if p == "/old" else (other + "/" if p == "/away" else None)

    with S.server(S.redirecting(route)) as uri:
        connecter = reconnect(uri + "/old")
        connecter.connect().close()
        S.PATHS.clear()
        with connecter as ws:
            print("reconnect after redirect", connecter.uri == uri + "/new", S.PATHS)
        connecter = reconnect(uri + "/away", additional_headers=creds)
        connecter.connect().close()
        S.SEEN.clear()
        with connecter as ws:
            print("reconnect after cross-origin redirect", connecter.uri == other + "/",
                  ["Authorization" in h for h in S.SEEN])

# HTTP proxies: websockets' ProxyError family (InvalidProxyStatus, InvalidProxyMessage).
for name, data in S.PROXY_ANSWERS:
    with S.raw_server(S.proxy_answering(data)) as p:
        show(name, lambda: connect("ws://example.invalid/", proxy=p.replace("ws://", "http://")))
# The proxy is chosen for each redirect hop: no_proxy covers the first host, not the second.
with S.raw_server(S.proxy_answering(b"HTTP/1.1 403 Forbidden\r\n\r\n")) as p:
    with S.server() as target:
        with S.server(S.redirecting(lambda path: target + "/")) as first:
            with S.environ(http_proxy=p.replace("ws://", "http://"), no_proxy="localhost"):
                show("proxy per hop", lambda: opened_path(first.replace("127.0.0.1", "localhost")))

# Usage errors.
show("unsupported proxy", lambda: connect("ws://example.com/", proxy="other://localhost:58080"))
show("subprotocols str", lambda: connect("ws://localhost/", subprotocols="chat"))
