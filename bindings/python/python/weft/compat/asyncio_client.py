"""``websockets.asyncio.client`` on weft: ``connect`` and ``ClientConnection``.

Same keywords, defaults and behaviour as websockets 14+ (``ws = await connect(...)``,
``async with connect(...) as ws``, ``async for ws in connect(...)`` reconnecting with backoff);
the connection is weft's asyncio protocol implemented in Rust.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
import warnings
from typing import Any, AsyncIterator, Callable, Generator

from .. import exceptions as _weft_exc
from .._weft import AsyncProtocol
from ..async_client import AsyncWebSocket, _small_reads
from . import _common as c
from . import _proxy
from . import _exceptions as exc
from . import stats as _stats

__all__ = ["connect", "unix_connect", "ClientConnection", "process_exception", "backoff"]

#: Redirects followed at most (websockets' value and ``WEBSOCKETS_MAX_REDIRECTS``; the value
#: in ``websockets.asyncio.client``, when imported, wins).
MAX_REDIRECTS = c.MAX_REDIRECTS

_UNSET: Any = object()

#: ``connect()`` keywords passed on to ``loop.create_connection`` (websockets passes any).
_LOOP_KWARGS = ("family", "proto", "flags", "local_addr", "happy_eyeballs_delay", "interleave", "ssl_handshake_timeout", "ssl_shutdown_timeout", "all_errors")

process_exception = c.process_exception
backoff = c.backoff


class ClientConnection(AsyncWebSocket):
    """An open connection, with the methods and attributes of websockets' ``ClientConnection``."""

    # __dict__: subclasses and create_connection= factories add attributes, as with websockets.
    __slots__ = ("id", "logger", "request", "response", "protocol", "__dict__")

    @property
    def transport(self) -> Any:
        """The asyncio transport (``get_extra_info("ssl_object")``, ``"peername"``...); kept
        after the connection ends, as websockets keeps it (weft's protocol drops its own)."""
        live = self._p.transport
        return live if live is not None else self.__dict__.get("_transport")

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
    ``async for ws in connect(uri)`` (reconnects with backoff after retryable errors).

    As websockets: follows redirects (up to ``MAX_REDIRECTS``; credentials only to the same
    origin; never from wss to ws), ``host=``/``port=`` override the URI's address,
    ``unix=True`` with ``path=`` connects over a Unix socket, ``ssl=`` takes an
    ``ssl.SSLContext`` (TLS is asyncio's), ``server_hostname=`` overrides the name checked."""

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
        ssl: Any = _UNSET,
        ssl_context: Any = _UNSET,
        server_hostname: str | None = None,
        sock: Any = None,
        host: str | None = None,
        port: int | None = None,
        unix: bool = False,
        path: str | None = None,
        proxy_ssl: Any = _UNSET,
        proxy_server_hostname: str | None = None,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(k for k in kwargs if k not in _LOOP_KWARGS)
        if unknown:
            raise TypeError(f"connect() got unexpected keyword argument(s): {', '.join(unknown)}")
        if ssl_context is not _UNSET:
            warnings.warn("ssl_context was renamed to ssl", DeprecationWarning, stacklevel=2)
            ssl = ssl_context
        opts, (secure, uri_host, uri_port), proxy_url = c.options(
            uri,
            origin=origin,
            extensions=extensions,
            subprotocols=subprotocols,
            compression=compression,
            additional_headers=additional_headers,
            extra_headers=extra_headers,
            user_agent_header=user_agent_header,
            proxy=proxy if sock is None and not unix else None,
            max_size=max_size,
            create_connection=create_connection,
        )
        if secure:
            if ssl is None:
                raise ValueError("ssl=None is incompatible with a wss:// URI")
            if ssl is _UNSET or ssl is True:
                ssl = _ssl.create_default_context()
            elif not isinstance(ssl, _ssl.SSLContext):
                raise TypeError(f"ssl must be an ssl.SSLContext or True, not {type(ssl).__name__}")
        elif ssl is not _UNSET and ssl is not None:
            raise ValueError("ssl argument is incompatible with a ws:// URI")
        else:
            ssl = None
        _proxy.check(proxy_url, proxy_ssl, _UNSET)
        self.uri = uri
        self._opts = opts
        self._headers = opts.pop("headers")
        # The proxy is chosen for each hop (proxy=True: from the environment for that URI).
        self._proxy_setting = proxy if sock is None and not unix else None
        self._proxy_ssl = proxy_ssl
        self._ssl = ssl
        self._server_hostname = server_hostname
        self._sock = sock
        self._host, self._port = host, port
        self._unix, self._path = unix, path
        self._loop_kwargs = kwargs
        self._max_queue = c.queue_size(max_queue)
        self._ping = (ping_interval, ping_timeout)
        self._close_timeout = close_timeout
        self._create_connection = create_connection or ClientConnection
        self._user_agent = user_agent_header
        self._open_timeout = open_timeout
        self._write_limit = write_limit[0] if isinstance(write_limit, tuple) else write_limit
        self._entered = False
        self.process_exception = process_exception
        self.reconnect_delays = reconnect_delays
        self.logger = c.get_logger(logger)
        self.connection: ClientConnection | None = None

    async def _attempt(self, uri: str, headers: list[tuple[str, str]]) -> ClientConnection:
        """One connection and opening handshake to ``uri``."""
        loop = asyncio.get_running_loop()
        secure, uri_host, uri_port = c.check_uri(uri)
        protocol = AsyncProtocol(
            loop,
            uri,
            headers=headers,
            subprotocols=self._opts["subprotocols"],
            compression=self._opts["compression"],
            max_size=self._opts["max_size"],
            max_queue=self._max_queue,
            close_timeout=self._close_timeout,
        )
        ctx = self._ssl if secure else None
        if secure and ctx is None:
            # A ws:// URI redirected to wss://: that hop is TLS, with the default context (as
            # websockets does), never plain TCP to the secure port.
            ctx = _ssl.create_default_context()
        hostname = (self._server_hostname or uri_host) if ctx is not None else None
        sock = self._sock
        try:
            if self._unix:
                await loop.create_unix_connection(
                    lambda: protocol, self._path, sock=sock, ssl=ctx, server_hostname=hostname
                )
            else:
                proxy_url = None if sock is not None else _proxy.resolve(uri, self._proxy_setting, uri_host, uri_port)
                _proxy.check(proxy_url, self._proxy_ssl, _UNSET)
                if proxy_url is not None:
                    sock = await _proxy.tunnel_async(proxy_url, uri_host, uri_port, self._user_agent)
                if sock is not None:
                    await loop.create_connection(lambda: protocol, sock=sock, ssl=ctx, server_hostname=hostname)
                else:
                    await loop.create_connection(
                        lambda: protocol,
                        self._host if self._host is not None else uri_host,
                        self._port if self._port is not None else uri_port,
                        ssl=ctx,
                        server_hostname=hostname,
                        **self._loop_kwargs,
                    )
            _small_reads(protocol.transport)
            await protocol.handshake
        except BaseException:
            protocol.abort()
            raise
        ping_interval, ping_timeout = self._ping
        # create_connection=: a ClientConnection subclass, or a factory that passes its
        # arguments on to one (weft's arguments, not websockets' sans-IO protocol).
        try:
            ws = self._create_connection(protocol, loop, uri, None, self._close_timeout)
        except BaseException:
            protocol.abort()  # the factory failed: nothing owns the connection
            raise
        if not isinstance(ws, ClientConnection):
            protocol.abort()
            raise TypeError("create_connection must return a weft.compat ClientConnection (subclass)")
        ws._transport = protocol.transport
        if ping_interval:
            ws._keepalive = loop.create_task(ws._keep_alive(ping_interval, ping_timeout))
        return ws

    async def _open(self) -> ClientConnection:
        limit = c.max_redirects("websockets.asyncio.client", MAX_REDIRECTS)
        for _ in range(limit):
            try:
                ws = await self._attempt(self.uri, self._headers)
            except _weft_exc.WebSocketException as e:
                # Where a redirect leads is kept, as websockets keeps it: a reconnect (async
                # for) goes there directly, without the credentials a cross-origin hop dropped.
                self.uri, self._headers = c.next_hop(
                    self.uri,
                    e,
                    self._headers,
                    sock=self._sock is not None,
                    unix=self._unix,
                    explicit_address=self._host is not None or self._port is not None,
                )
                continue
            break
        else:
            raise exc.SecurityError(f"more than {limit} redirects")
        uri, headers = self.uri, self._headers
        ws.id = c.new_id()
        ws.logger = self.logger
        ws.request = c.Request(
            c.request_path(uri),
            c.request_headers(uri, headers, self._opts["subprotocols"], self._opts["compression"]),
        )
        ws.response = c.Response(ws.response_headers)
        ws.protocol = c.Protocol(ws, uri, ws.response_headers)
        return ws

    async def _connect(self) -> ClientConnection:
        _stats["attempts"] += 1
        try:
            ws = await asyncio.wait_for(self._open(), self._open_timeout)
        except (asyncio.TimeoutError, TimeoutError) as e:
            raise TimeoutError("timed out during opening handshake") from e
        t = ws._p.transport
        if t is not None and self._write_limit is not None:
            t.set_write_buffer_limits(high=self._write_limit)
        self.connection = ws
        _stats["connections"] += 1
        return ws

    def __await__(self) -> Generator[Any, None, ClientConnection]:
        return self._connect().__await__()

    async def __aenter__(self) -> ClientConnection:
        if self._entered:
            raise RuntimeError("connect() isn't reentrant")
        self._entered = True
        try:
            return await self
        except BaseException:
            self._entered = False
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self.connection is not None:
                await self.connection.close()
        finally:
            self._entered = False

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


def unix_connect(path: str | None = None, uri: str | None = None, **kwargs: Any) -> connect:
    """Connect over the Unix socket at ``path`` (websockets' ``unix_connect``); ``uri`` gives
    the Host header and, for ``wss://``, the name the certificate is checked against."""
    uri = c.unix_uri(path, uri, kwargs, "no path and sock were specified", "path and sock can not be specified at the same time")
    return connect(uri, unix=True, path=path, **kwargs)
