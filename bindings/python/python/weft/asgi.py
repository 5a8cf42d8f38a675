"""The weft engine inside an ASGI application (FastAPI, Starlette, ...), on the same port.

``engine_app(server)`` is an ASGI application for WebSocket connections: mount it at a path,
and every WebSocket that reaches it joins ``server``'s engine exactly as one on the engine's own
port — the same upgrade, token checks (the ``Authorization`` header, the ``token`` query
parameter, the token cookie), topics, positions and recovery::

    import weft
    from fastapi import FastAPI
    from weft.asgi import engine_app

    server = weft.Server("127.0.0.1", 0)   # the engine; its own port may stay private
    server.start()
    app = FastAPI()
    app.mount("/realtime", engine_app(server))

    @app.post("/orders")
    def order(n: int):
        server.publish("orders", {"n": n})  # from any request handler
        return {"ok": True}

Clients connect to a path under the mount (``ws://host/realtime/ws``: Starlette's ``Mount``
matches the paths below it, not the bare prefix); the path below is not looked at.

How: each WebSocket gets a Unix socket pair; the engine serves one end (``Server.serve_socket``)
and weft's asyncio client speaks WebSocket over the other, relaying messages to and from the
ASGI server. A refused upgrade (a bad token, the connection limit) is answered with the
engine's status when the ASGI server supports the ``websocket.http.response`` extension, and
with a close before accepting (HTTP 403) otherwise. Back-pressure holds both ways: the relay
awaits the ASGI ``send`` and the client's ``send``, and each side's queue is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Awaitable, Callable
from urllib.parse import quote

from ._weft import Server
from .async_client import connect
from .exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

__all__ = ["engine_app"]

log = logging.getLogger("weft.asgi")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Request headers the engine reads during the upgrade; the rest are the ASGI server's business.
_FORWARDED = (b"authorization", b"cookie", b"x-api-key", b"user-agent", b"origin")


def engine_app(server: Server, *, max_size: int | None = None) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI application that joins each WebSocket connection to ``server``'s engine.
    ``max_size``: the largest message relayed from the engine (default: the engine's own
    ``max_message_size`` applies to what clients send; events are as large as publishers made
    them). HTTP requests to it get 404: the engine's HTTP API stays on its own port."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                m = await receive()
                if m["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif m["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"WebSocket only\n"})
            return
        if scope["type"] != "websocket":
            return
        await _bridge(server, scope, receive, send, max_size)

    return app


async def _bridge(server: Server, scope: Scope, receive: Receive, send: Send, max_size: int | None) -> None:
    first = await receive()
    if first["type"] != "websocket.connect":
        return
    query = scope.get("query_string", b"").decode("latin-1")
    url = "ws://weft.asgi/ws" + ("?" + quote(query, safe="=&%+") if query else "")
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", []) if k.lower() in _FORWARDED]
    ours, theirs = socket.socketpair()
    try:
        server.serve_socket(theirs.detach())
    except BaseException:
        ours.close()
        theirs.close()
        raise
    try:
        ws = await connect(
            url,
            30.0,
            None,  # no receive timeout: a quiet subscription is not an error
            sock=ours,
            headers=headers,
            subprotocols=list(scope.get("subprotocols") or []) or None,
            max_size=max_size if max_size is not None else 64 << 20,
        )
    except InvalidStatus as e:
        await _deny(scope, send, e.response.status_code, e.response.body or b"")
        return
    except (OSError, InvalidHandshake, TimeoutError) as e:
        log.warning("could not join a WebSocket to the engine: %s", e)
        ours.close()
        await send({"type": "websocket.close", "code": 1011})
        return
    await send({"type": "websocket.accept", "subprotocol": ws.subprotocol})

    async def from_client() -> None:
        while True:
            m = await receive()
            if m["type"] == "websocket.receive":
                data = m.get("text")
                await ws.send(data if data is not None else m.get("bytes") or b"")
            elif m["type"] == "websocket.disconnect":
                await ws.close(m.get("code", 1000) if m.get("code") in (1000, 1001) else 1000)
                return

    async def to_client() -> None:
        try:
            async for msg in ws:
                if isinstance(msg, str):
                    await send({"type": "websocket.send", "text": msg})
                else:
                    await send({"type": "websocket.send", "bytes": bytes(msg)})
        except ConnectionClosed:
            pass
        code = ws.close_code or 1000
        reason = ws.close_reason or ""
        try:
            await send({"type": "websocket.close", "code": code, "reason": reason})
        except Exception:
            pass  # the client went first

    tasks = [asyncio.ensure_future(from_client()), asyncio.ensure_future(to_client())]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t.exception() is not None and not isinstance(t.exception(), (ConnectionClosed, OSError)):
                raise t.exception()  # type: ignore[misc]
        # The client left: the engine's side ends with the close just sent; wait a little for
        # the engine's answer so the session ends cleanly, then cut.
        if pending:
            await asyncio.wait(pending, timeout=2)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not ws.closed:
            ws._p.abort()


async def _deny(scope: Scope, send: Send, status: int, body: bytes) -> None:
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})
