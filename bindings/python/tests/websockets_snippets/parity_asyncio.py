"""websockets.asyncio.client behaviours real code relies on (parity test: same output on
websockets and on weft's drop-in). Prints one line per check."""

import asyncio
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _parity_servers as S  # noqa: E402
from websockets.asyncio import client as client_module  # noqa: E402
from websockets.asyncio.client import connect, unix_connect  # noqa: E402


async def show(label, coro_fn):
    try:
        print(label, await coro_fn())
    except Exception as e:
        cause = e.__cause__
        print(label, type(e).__name__, str(e), type(cause).__name__ if cause else None, str(cause) if cause else "")


async def opened(uri, **kwargs):
    async with connect(uri, **kwargs) as ws:
        return ws.protocol.state.name


async def opened_path(uri, **kwargs):
    async with connect(uri, **kwargs) as ws:
        return ws.protocol.uri.path


async def main():
    # Attributes: protocol.state / extensions / uri, transport, request headers.
    with S.server() as uri:
        async with connect(uri) as ws:
            print("state", ws.protocol.state.name, [type(e).__name__ for e in ws.protocol.extensions])
            print("transport", ws.transport.get_extra_info("peername")[0], ws.transport.get_extra_info("ssl_object"))
        print("closed", ws.protocol.state.name)
        print("transport after close", ws.transport is not None and ws.transport.is_closing())
        async with connect(uri, compression=None) as ws:
            print("no compression", ws.protocol.extensions)
        S.SEEN.clear()
        async with connect(uri, additional_headers={"User-Agent": "Smith"}) as ws:
            print("user agent", ws.request.headers.get_all("User-Agent"), S.SEEN[-1].get_all("User-Agent"))
        # host= / port= override the URI's address; the Host header stays the URI's.
        host, port = uri.split("//")[1].split(":")
        S.SEEN.clear()
        async with connect("ws://overridden/", host=host, port=int(port)) as ws:
            print("host/port", ws.protocol.state.name, S.SEEN[-1]["Host"])
        def factory(*args, **kwargs):
            made = client_module.ClientConnection(*args, **kwargs)
            made.by_factory = True
            return made

        async with connect(uri, create_connection=factory) as ws:
            print("create_connection", ws.by_factory, ws.protocol.state.name)
        c = connect(uri)
        async with c:
            await show("reentrant", lambda: c.__aenter__())

    # Error messages and exception chaining.
    for name, answer in [("eof", S.close_at_once), ("junk", S.junk), ("no accept", S.no_accept)]:
        with S.raw_server(answer) as uri:
            await show(name, lambda: opened(uri, open_timeout=5))
    with S.raw_server(S.silent) as uri:
        await show("timeout", lambda: opened(uri, open_timeout=0.2))

    # Unix sockets: unix=True with path=, unix_connect.
    with S.temp_dir() as d:
        path = os.path.join(d, "ws.sock")
        with S.server(unix_path=path):
            async with unix_connect(path, uri="ws://overridden/") as ws:
                print("unix host", ws.protocol.state.name, ws.request.headers["Host"])
            await show("unix=True", lambda: opened("ws://localhost/", unix=True, path=path))
    await show("unix no path", lambda: unix_connect())

    # TLS: custom SSLContext, server_hostname explicit and implicit (host=), downgrade refused.
    with S.temp_dir() as d:
        server_ctx, client_ctx = S.contexts(d)
        with S.server(ssl_context=server_ctx) as uri:
            async with connect(uri, ssl=client_ctx) as ws:
                print("tls", ws.transport.get_extra_info("ssl_object").version()[:3])
            async with connect(uri, ssl=client_ctx, server_hostname="overridden") as ws:
                print("server_hostname", ws.transport.get_extra_info("ssl_object").server_hostname)
            host, port = uri.split("//")[1].split(":")
            async with connect("wss://overridden/", host=host, port=int(port), ssl=client_ctx) as ws:
                print("implicit server_hostname", ws.transport.get_extra_info("ssl_object").server_hostname)
            await show("hostname mismatch", lambda: opened(uri, ssl=client_ctx, server_hostname="invalid"))
            await show("ssl=None with wss", lambda: opened(uri, ssl=None))
            with S.server() as plain:
                with S.server(S.redirecting(lambda p: plain), ssl_context=server_ctx) as redirecting:
                    await show("downgrade", lambda: opened(redirecting, ssl=client_ctx))
            # ws:// redirected to wss://: that hop is TLS with the default roots (which do not
            # trust this throwaway certificate), not plain TCP to the TLS port.
            with S.server(S.redirecting(lambda p: uri)) as upgrading:
                await show("upgrade to wss", lambda: opened(upgrading))

    # Redirects: same origin keeps credentials, another origin drops them; limits.
    creds = {"Authorization": "Bearer secret", "Cookie": "c=1", "X-Custom": "keep"}
    with S.server() as other:
        def route(p):
            return "/" if p == "/redirect" else (other + "/" if p == "/away" else None)

        with S.server(S.redirecting(route)) as uri:
            S.SEEN.clear()
            async with connect(uri + "/redirect", additional_headers=creds) as ws:
                print("same origin", ws.protocol.uri.path, "Authorization" in ws.request.headers,
                      [("Authorization" in h, "Cookie" in h) for h in S.SEEN])
            S.SEEN.clear()
            async with connect(uri + "/away", additional_headers=creds) as ws:
                print("cross origin", ws.protocol.uri.port == int(other.rsplit(":", 1)[1]),
                      "Authorization" in ws.request.headers, "X-Custom" in ws.request.headers,
                      [("Authorization" in h, "Cookie" in h) for h in S.SEEN])
            host, port = uri.split("//")[1].split(":")
            await show("cross origin with host/port",
                       lambda: opened("ws://overridden/away", host=host, port=int(port)))
            async with connect("ws://overridden/redirect", host=host, port=int(port)) as ws:
                print("same origin with host/port", ws.protocol.uri.path)
            with socket.create_connection((host, int(port))) as sock:
                await show("redirect with sock", lambda: opened("ws://invalid/redirect", sock=sock))
    with S.server(S.redirecting(lambda p: p)) as uri:
        saved, client_module.MAX_REDIRECTS = client_module.MAX_REDIRECTS, 2
        try:
            await show("redirect limit", lambda: opened(uri))
        finally:
            client_module.MAX_REDIRECTS = saved

    # Only 300-303, 307 and 308 are followed: not 304 Not Modified or 305 Use Proxy.
    for status in (304, 305, 307, 308):
        with S.server(S.redirecting(lambda p: "/" if p == "/moved" else None, status=status)) as uri:
            await show(f"status {status}", lambda: opened_path(uri + "/moved"))

    # A connect() reconnecting (async with again, async for) goes where a redirect led, without
    # the credentials a cross-origin hop dropped.
    with S.server() as other:
        def route2(p):
            return "/new" if p == "/old" else (other + "/" if p == "/away" else None)

        with S.server(S.redirecting(route2)) as uri:
            connecter = connect(uri + "/old")
            async with connecter:
                pass
            S.PATHS.clear()
            async with connecter:
                print("reconnect after redirect", connecter.uri == uri + "/new", S.PATHS)
            connecter = connect(uri + "/away", additional_headers=creds)
            async with connecter:
                pass
            S.SEEN.clear()
            async with connecter:
                print("reconnect after cross-origin redirect", connecter.uri == other + "/",
                      ["Authorization" in h for h in S.SEEN])

    # HTTP proxies: websockets' ProxyError family (InvalidProxyStatus, InvalidProxyMessage).
    for name, data in S.PROXY_ANSWERS:
        with S.raw_server(S.proxy_answering(data)) as p:
            await show(name, lambda: opened("ws://example.invalid/", proxy=p.replace("ws://", "http://")))
    # The proxy is chosen for each redirect hop: no_proxy covers the first host, not the second.
    with S.raw_server(S.proxy_answering(b"HTTP/1.1 403 Forbidden\r\n\r\n")) as p:
        with S.server() as target:
            with S.server(S.redirecting(lambda path: target + "/")) as first:
                with S.environ(http_proxy=p.replace("ws://", "http://"), no_proxy="localhost"):
                    await show("proxy per hop", lambda: opened_path(first.replace("127.0.0.1", "localhost")))

    # Usage errors.
    await show("unsupported proxy", lambda: opened("ws://example.com/", proxy="other://localhost:51080"))
    await show("proxy_ssl with http proxy",
               lambda: opened("ws://localhost/", proxy="http://localhost:8080", proxy_ssl=True))
    await show("subprotocols str", lambda: opened("ws://localhost/", subprotocols="chat"))


asyncio.run(main())
