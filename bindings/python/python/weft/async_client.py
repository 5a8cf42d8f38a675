"""asyncio WebSocket client (the API of ``websocket_rs.async_client``).

>>> from weft.async_client import connect
>>> async def main():                               # doctest: +SKIP
...     async with connect("ws://127.0.0.1:9001/") as ws:
...         await ws.send("hello")
...         print(await ws.recv())

The event loop owns the socket; framing happens in Rust inside ``data_received``, and a
waiting ``recv()`` is resolved from there. No thread and no second runtime is involved, so it
runs on any asyncio event loop, uvloop included.

``connect(url, connect_timeout=30.0, receive_timeout=30.0, **options)`` is both awaitable
(``ws = await connect(...)``) and an async context manager. Options (keyword-only):
``headers``, ``subprotocols``, ``compression`` (permessage-deflate, default off),
``max_size`` (default 64 MiB, ``None``: no limit), ``max_queue`` (messages buffered
before reading pauses, default 1024), ``ping_interval``/``ping_timeout``
(keep-alive; a missing pong closes with 1011), ``close_timeout`` (default 10 s), ``ssl`` (an ``ssl.SSLContext``, or
``True``), ``ca_file``, ``server_hostname``, ``sock`` (an already connected socket).

The event-driven API, for the last microsecond: ``on_message`` (a callable taking one
``str``/``bytes``) receives every message straight from ``data_received``, in order, with no
future and no queue per message (``recv`` is then not available). It runs on the event loop:
it may answer with ``send_nowait`` (it cannot await) and should not block.
An exception it raises goes to the loop's exception handler and the connection goes on.

>>> async def main():                               # doctest: +SKIP
...     done = asyncio.get_running_loop().create_future()
...     got = []
...     def on_message(m):
...         got.append(m)
...         if len(got) == 1000:
...             done.set_result(None)
...     ws = await connect("ws://127.0.0.1:9001/", on_message=on_message)
...     for i in range(1000):
...         await ws.send(b"x" * 512)
...     await done
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from typing import Any, AsyncIterator, Generator, Iterable, Mapping

from ._weft import AsyncProtocol, parse_url
from .exceptions import ConnectionClosedOK, InvalidHandshake

__all__ = ["connect", "AsyncWebSocket", "Connect"]


class AsyncWebSocket:
    """An open client connection. Made by :func:`connect`."""

    __slots__ = (
        "_p",
        "_loop",
        "_receive_timeout",
        "_close_timeout",
        "_keepalive",
        "_timer",
        "_deadline",
        "_waiting",
        "url",
        "__weakref__",
    )

    def __init__(
        self,
        protocol: AsyncProtocol,
        loop: asyncio.AbstractEventLoop,
        url: str,
        receive_timeout: float | None,
        close_timeout: float | None,
    ) -> None:
        self._p = protocol
        self._loop = loop
        self._receive_timeout = receive_timeout
        self._close_timeout = close_timeout
        self._keepalive: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._waiting: asyncio.Future | None = None
        self.url = url

    async def recv(self, timeout: float | None = ...) -> str | bytes:  # type: ignore[assignment]
        """The next message: ``str`` for text, ``bytes`` for binary.

        Waits at most ``timeout`` seconds (default: the connection's ``receive_timeout``;
        ``None`` waits forever), then raises ``TimeoutError``; the connection stays usable.
        Raises ``ConnectionClosedOK``/``ConnectionClosedError`` once the connection has ended.
        """
        msg = self._p.recv_nowait()
        if msg is not None:
            return msg
        if self._p.callback_mode:
            raise RuntimeError("this connection hands its messages to on_message: there is nothing to recv")
        loop = self._loop
        fut = loop.create_future()
        self._p.set_waiter(fut)
        if timeout is ...:
            timeout = self._receive_timeout
        if timeout is None:
            return await fut
        # One timer per connection, re-armed lazily, instead of one per waiting recv: arming
        # and cancelling a timer costs more than the rest of a round trip.
        deadline = loop.time() + timeout
        self._deadline = deadline
        self._waiting = fut
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._check_timeout)
        return await fut

    def _check_timeout(self) -> None:
        self._timer = None
        fut = self._waiting
        if fut is None or fut.done():
            return
        if self._loop.time() >= self._deadline:
            fut.set_exception(TimeoutError("no message received within the receive timeout"))
        else:
            self._timer = self._loop.call_at(self._deadline, self._check_timeout)

    async def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send ``message``: ``str`` as text, bytes-like as binary. Waits only when the
        transport's write buffer is over its high-water mark."""
        if self._p.send(message):
            await self._p.drain_future()

    def send_nowait(self, message: str | bytes | bytearray | memoryview) -> bool:
        """Send ``message`` without waiting (an extra of weft, for ``on_message`` callbacks,
        which cannot await): framed and handed to the transport at once. Returns whether the
        transport's write buffer is over its high-water mark; a producer that keeps sending
        should then ``await ws.send(...)`` (which waits for it to drain) from a coroutine."""
        return self._p.send(message)

    async def send_many(self, messages: Iterable[str | bytes]) -> None:
        """Send several messages (an extra of weft: one call, one drain check)."""
        p = self._p
        paused = False
        for m in messages:
            paused = p.send(m)
        if paused:
            await p.drain_future()

    async def ping(self, data: bytes | None = None) -> float:
        """Send a ping and wait for its pong; returns the round-trip time in seconds."""
        return await self._p.ping(data)

    async def pong(self, data: bytes | None = None) -> None:
        """Send an unsolicited pong."""
        self._p.pong(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code`` and ``reason``; wait up to ``close_timeout`` for the server."""
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._p.close(code, reason)
        try:
            await asyncio.wait_for(asyncio.shield(self._p.closed_future), self._close_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            self._p.abort()

    async def wait_closed(self) -> None:
        """Wait until the connection is gone."""
        await asyncio.shield(self._p.closed_future)

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str | bytes]:
        # Each step waits at most receive_timeout, then raises TimeoutError (as recv() does).
        try:
            while True:
                yield await AsyncWebSocket.recv(self)
        except ConnectionClosedOK:
            return

    async def __aenter__(self) -> AsyncWebSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _keep_alive(self, interval: float, timeout: float | None) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                if self._p.closing:
                    return
                try:
                    await asyncio.wait_for(self._p.ping(None), timeout)
                except (asyncio.TimeoutError, TimeoutError):
                    if not self._p.closing:
                        self._p.fail(1011, "keepalive ping timeout")
                        self._loop.call_later(self._close_timeout or 0, self._p.abort)
                    return
        except Exception:
            return

    # ---- state -------------------------------------------------------------------------------

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server selected."""
        return self._p.subprotocol

    @property
    def response_headers(self) -> list[tuple[str, str]]:
        """Headers of the server's handshake response."""
        return self._p.response_headers

    @property
    def closed(self) -> bool:
        """Whether the connection has ended."""
        return self._p.closed

    @property
    def open(self) -> bool:
        """Whether the connection is open (data can still be sent)."""
        return not self._p.closing

    @property
    def local_address(self) -> tuple[str, int] | None:
        t = self._p.transport
        return None if t is None else t.get_extra_info("sockname")

    @property
    def remote_address(self) -> tuple[str, int] | None:
        t = self._p.transport
        return None if t is None else t.get_extra_info("peername")

    @property
    def close_code(self) -> int | None:
        return self._p.close_code

    @property
    def close_reason(self) -> str | None:
        return self._p.close_reason

    @property
    def latency(self) -> float:
        """Round-trip time of the last answered ping, in seconds (0.0 before any)."""
        return self._p.latency

    def __repr__(self) -> str:
        return f"<weft.async_client.AsyncWebSocket {self.url} {'closed' if self.closed else 'open'}>"


def _ssl_context(ssl: Any, ca_file: str | None) -> _ssl.SSLContext:
    if isinstance(ssl, _ssl.SSLContext):
        return ssl
    ctx = _ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def _open(
    url: str,
    connect_timeout: float | None,
    receive_timeout: float | None,
    *,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    subprotocols: list[str] | None = None,
    compression: bool = False,
    max_size: int | None = 64 << 20,
    max_queue: int = 1024,
    ping_interval: float | None = None,
    ping_timeout: float | None = 20.0,
    close_timeout: float | None = 10.0,
    ssl: Any = None,
    ca_file: str | None = None,
    server_hostname: str | None = None,
    sock: Any = None,
    proxy: str | None = None,
    tcp_nodelay: bool = True,
    on_message: Any = None,
    _cls: type[AsyncWebSocket] | None = None,
) -> AsyncWebSocket:
    if proxy is not None:
        raise NotImplementedError("weft's async client does not support proxies yet (proxy=%r)" % (proxy,))
    loop = asyncio.get_running_loop()
    secure, host, port, _ = parse_url(url)
    protocol = AsyncProtocol(
        loop,
        url,
        headers=headers,
        subprotocols=subprotocols,
        compression=compression,
        max_size=max_size,
        max_queue=max_queue,
        close_timeout=close_timeout,
        on_message=on_message,
    )
    if secure or ssl:
        ctx = _ssl_context(ssl, ca_file)
        hostname = server_hostname or host
    else:
        ctx, hostname = None, None

    async def establish() -> None:
        if sock is not None:
            await loop.create_connection(lambda: protocol, sock=sock, ssl=ctx, server_hostname=hostname)
        else:
            await loop.create_connection(lambda: protocol, host, port, ssl=ctx, server_hostname=hostname)
        _small_reads(protocol.transport)
        if not tcp_nodelay and protocol.transport is not None:
            s = protocol.transport.get_extra_info("socket")
            if s is not None:
                import socket

                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        await protocol.handshake

    try:
        await asyncio.wait_for(establish(), connect_timeout)
    except (asyncio.TimeoutError, TimeoutError):
        protocol.abort()
        raise TimeoutError(f"connecting to {url} timed out") from None
    except _ssl.SSLError as e:
        protocol.abort()
        raise InvalidHandshake(f"TLS handshake with {url} failed: {e}") from e
    except BaseException:
        protocol.abort()
        raise
    ws = (_cls or AsyncWebSocket)(protocol, loop, url, receive_timeout, close_timeout)
    if ping_interval:
        ws._keepalive = loop.create_task(ws._keep_alive(ping_interval, ping_timeout))
    return ws


def _small_reads(transport: Any) -> None:
    """Make the default event loop read with 64 KiB buffers instead of 256 KiB.

    CPython's selector transport calls ``sock.recv(256 * 1024)`` for every read: each call
    allocates a 256 KiB ``bytes`` above glibc's mmap threshold and shrinks it, ~20 µs on this
    project's benchmark machine — more than a whole round trip with uvloop. 64 KiB stays below
    the threshold (measured: 512 B send+recv 22 µs -> 3 µs). uvloop transports have no
    ``max_size`` and are left alone.
    """
    if transport is not None and getattr(transport, "max_size", None) == 256 * 1024:
        try:
            transport.max_size = 64 * 1024
        except (AttributeError, TypeError):
            pass


class Connect:
    """What :func:`connect` returns: ``await`` it for the connection, or use it as an async
    context manager (the connection is closed on exit)."""

    __slots__ = ("_args", "_kwargs", "_ws")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._kwargs = kwargs
        self._ws: AsyncWebSocket | None = None

    def __await__(self) -> Generator[Any, None, AsyncWebSocket]:
        return _open(*self._args, **self._kwargs).__await__()

    async def __aenter__(self) -> AsyncWebSocket:
        self._ws = await self
        return self._ws

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()


def connect(
    url: str,
    connect_timeout: float | None = 30.0,
    receive_timeout: float | None = 30.0,
    **options: Any,
) -> Connect:
    """Open a connection: ``ws = await connect(url)`` or ``async with connect(url) as ws``."""
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TypeError(f"connect() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    return Connect(url, connect_timeout, receive_timeout, **options)


_OPTIONS = frozenset(
    {
        "headers",
        "subprotocols",
        "compression",
        "max_size",
        "max_queue",
        "on_message",
        "ping_interval",
        "ping_timeout",
        "close_timeout",
        "ssl",
        "ca_file",
        "server_hostname",
        "sock",
        "proxy",
        "tcp_nodelay",
    }
)
