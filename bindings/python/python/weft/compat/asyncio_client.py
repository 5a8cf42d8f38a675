"""``websockets.asyncio.client`` on weft: ``connect`` and ``ClientConnection``.

Same keywords, defaults and behaviour as websockets 14+ (``ws = await connect(...)``,
``async with connect(...) as ws``, ``async for ws in connect(...)`` reconnecting with backoff);
the connection is weft's asyncio protocol implemented in Rust.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, Generator

from .. import exceptions as _weft_exc
from ..async_client import AsyncWebSocket, _open
from . import _common as c
from . import _proxy
from . import _exceptions as exc
from . import stats as _stats

__all__ = ["connect", "ClientConnection", "process_exception", "backoff"]

process_exception = c.process_exception
backoff = c.backoff


class ClientConnection(AsyncWebSocket):
    """An open connection, with the methods and attributes of websockets' ``ClientConnection``."""

    __slots__ = ("id", "logger", "request", "response")

    async def recv(self, decode: bool | None = None) -> str | bytes:  # type: ignore[override]
        """The next message: ``str`` for text, ``bytes`` for binary (``decode`` converts)."""
        try:
            msg = await AsyncWebSocket.recv(self, None)
        except _weft_exc.WebSocketException as e:
            raise exc.translate(e) from None
        return msg if decode is None else c.decoded(msg, decode)

    async def recv_streaming(self, decode: bool | None = None) -> AsyncIterator[str | bytes]:
        """The next message, as an async iterator of fragments (weft yields it whole)."""
        yield await self.recv(decode)

    async def send(self, message: Any, text: bool | None = None) -> None:  # type: ignore[override]
        """Send a message: ``str`` as text, bytes-like as binary, an (async) iterable of
        fragments as one message; ``text`` forces the frame type."""
        if hasattr(message, "__aiter__"):
            message = c.join_fragments([part async for part in message])
        message = c.text_payload(message, text)
        try:
            if self._p.send(message):
                await self._p.drain_future()
        except _weft_exc.WebSocketException as e:
            raise exc.translate(e) from None

    async def ping(self, data: str | bytes | None = None) -> asyncio.Future:  # type: ignore[override]
        """Send a ping. Returns a future that resolves to the latency (in seconds) once the
        pong arrives: ``latency = await (await ws.ping())``."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        try:
            return self._p.ping(data)
        except _weft_exc.WebSocketException as e:
            raise exc.translate(e) from None

    async def pong(self, data: str | bytes = b"") -> None:  # type: ignore[override]
        if isinstance(data, str):
            data = data.encode("utf-8")
        try:
            self._p.pong(bytes(data))
        except _weft_exc.WebSocketException as e:
            raise exc.translate(e) from None

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._iterate_compat()

    async def _iterate_compat(self) -> AsyncIterator[str | bytes]:
        try:
            while True:
                yield await self.recv()
        except exc.ConnectionClosedOK:
            return

    @property
    def state(self) -> c.State:
        if self._p.closed:
            return c.State.CLOSED
        if self._p.closing:
            return c.State.CLOSING
        return c.State.OPEN


class connect:
    """Connect to ``uri``: ``await connect(uri)``, ``async with connect(uri) as ws``, or
    ``async for ws in connect(uri)`` (reconnects with backoff after retryable errors)."""

    def __init__(
        self,
        uri: str,
        *,
        origin: str | None = None,
        extensions: Any = None,
        subprotocols: Any = None,
        compression: str | None = "deflate",
        additional_headers: Any = None,
        extra_headers: Any = None,
        user_agent_header: str | None = c.USER_AGENT,
        proxy: Any = True,
        process_exception: Callable[[Exception], Exception | None] = c.process_exception,
        open_timeout: float | None = 10,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 20,
        close_timeout: float | None = 10,
        reconnect_delays: Callable[[], Generator[float, None, None]] = c.backoff,
        max_size: Any = 2**20,
        max_queue: Any = 16,
        write_limit: Any = 2**15,
        logger: Any = None,
        create_connection: Any = None,
        ssl: Any = None,
        server_hostname: str | None = None,
        sock: Any = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise TypeError(f"connect() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
        opts, (secure, host, port), proxy_url = c.options(
            uri,
            origin=origin,
            extensions=extensions,
            subprotocols=subprotocols,
            compression=compression,
            additional_headers=additional_headers,
            extra_headers=extra_headers,
            user_agent_header=user_agent_header,
            proxy=proxy,
            max_size=max_size,
            create_connection=create_connection,
        )
        if not secure and ssl is not None:
            raise ValueError("ssl argument is incompatible with a ws:// URI")
        opts.update(
            max_queue=c.queue_size(max_queue),
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
            ssl=ssl,
            server_hostname=server_hostname,
            sock=sock,
        )
        self.uri = uri
        self._opts = opts
        self._proxy = proxy_url if sock is None else None
        self._target = (host, port)
        self._user_agent = user_agent_header
        self._open_timeout = open_timeout
        self._write_limit = write_limit[0] if isinstance(write_limit, tuple) else write_limit
        self.process_exception = process_exception
        self.reconnect_delays = reconnect_delays
        self.logger = c.get_logger(logger)
        self.connection: ClientConnection | None = None

    async def _connect(self) -> ClientConnection:
        _stats["attempts"] += 1
        opts = self._opts
        try:
            if self._proxy is not None:
                sock = await asyncio.wait_for(
                    _proxy.tunnel_async(self._proxy, *self._target, self._user_agent), self._open_timeout
                )
                opts = dict(opts, sock=sock)
            ws = await _open(self.uri, self._open_timeout, None, _cls=ClientConnection, **opts)
        except _weft_exc.WebSocketException as e:
            raise exc.translate(e) from None
        assert isinstance(ws, ClientConnection)
        ws.id = c.new_id()
        ws.logger = self.logger
        ws.request = c.Request(c.request_path(self.uri), self._opts["headers"])
        ws.response = c.Response(ws.response_headers)
        t = ws._p.transport
        if t is not None and self._write_limit is not None:
            t.set_write_buffer_limits(high=self._write_limit)
        self.connection = ws
        _stats["connections"] += 1
        return ws

    def __await__(self) -> Generator[Any, None, ClientConnection]:
        return self._connect().__await__()

    async def __aenter__(self) -> ClientConnection:
        return await self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.connection is not None:
            await self.connection.close()

    async def __aiter__(self) -> AsyncIterator[ClientConnection]:
        delays: Generator[float, None, None] | None = None
        while True:
            try:
                async with self as connection:
                    yield connection
            except Exception as e:
                delay, delays = c.retry_delay(e, self.process_exception, delays, self.reconnect_delays, self.logger)
                await asyncio.sleep(delay)
            else:
                delays = None
