"""``websockets.sync.client`` on weft: ``connect`` and ``ClientConnection``.

The connection is weft's blocking client (no threads: reads happen inside ``recv``), so
pongs, and with them ``ping()``'s event and the keepalive, are processed while a ``recv`` is
waiting — the way most synchronous code spends its time. ``recv()`` blocks until a message or
the end of the connection unless given a ``timeout``.
"""

from __future__ import annotations

import socket as _socket
import ssl as _ssl
import time
from typing import Any, Callable, Generator, Iterator

from .. import exceptions as _weft_exc
from .._weft import WebSocket
from .._weft import connect as _connect
from . import _common as c
from . import _proxy
from . import _exceptions as exc
from . import stats as _stats

__all__ = ["connect", "reconnect", "ClientConnection", "process_exception", "backoff"]

process_exception = c.process_exception
backoff = c.backoff


class _PongEvent:
    """What ``ping()`` returns: a ``threading.Event``-like object set once the pong is read."""

    __slots__ = ("_ws", "_seq")

    def __init__(self, ws: WebSocket, seq: int) -> None:
        self._ws = ws
        self._seq = seq

    def is_set(self) -> bool:
        return self._ws.ping_counts[1] >= self._seq

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the pong; another thread's ``recv`` reads it. Returns whether it came."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while not self.is_set():
            if self._ws.closed or (deadline is not None and time.monotonic() >= deadline):
                return self.is_set()
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True


class ClientConnection:
    """An open connection, with the methods and attributes of websockets' sync
    ``ClientConnection``."""

    def __init__(self, ws: WebSocket, uri: str, request: c.Request, logger: Any) -> None:
        self._ws = ws
        self.id = c.new_id()
        self.logger = logger
        self.request = request
        self.response = c.Response(ws.response_headers)
        self.uri = uri

    def recv(self, timeout: float | None = None, decode: bool | None = None) -> str | bytes:
        """The next message (``str`` for text, ``bytes`` for binary). Blocks until one arrives
        or the connection ends; with ``timeout``, raises ``TimeoutError`` after that long."""
        try:
            msg = self._ws.recv(timeout) if timeout is not None else self._ws.recv()
        except _weft_exc.WebSocketException as e:
            raise exc.translate(e) from None
        return msg if decode is None else c.decoded(msg, decode)

    def recv_streaming(self, decode: bool | None = None) -> Iterator[str | bytes]:
        """The next message as an iterator of fragments (weft yields it whole)."""
        yield self.recv(decode=decode)

    def send(self, message: Any, text: bool | None = None) -> None:
        """Send ``str`` as text, bytes-like as binary, an iterable of fragments as one message."""
        try:
            self._ws.send(c.text_payload(message, text))
        except _weft_exc.WebSocketException as e:
            raise exc.translate(e) from None

    def close(self, code: int = 1000, reason: str = "") -> None:
        self._ws.close(code, reason)

    def ping(self, data: str | bytes | None = None, ack_on_close: bool = False) -> _PongEvent:
        """Send a ping; the returned event is set when its pong has been read."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        try:
            self._ws.ping(data)
        except _weft_exc.WebSocketException as e:
            raise exc.translate(e) from None
        return _PongEvent(self._ws, self._ws.ping_counts[0])

    def pong(self, data: str | bytes = b"") -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        try:
            self._ws.pong(bytes(data))
        except _weft_exc.WebSocketException as e:
            raise exc.translate(e) from None

    def __iter__(self) -> Iterator[str | bytes]:
        try:
            while True:
                yield self.recv()
        except exc.ConnectionClosedOK:
            return

    def __enter__(self) -> ClientConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def state(self) -> c.State:
        if self._ws.closed:
            return c.State.CLOSED
        if not self._ws.open:
            return c.State.CLOSING
        return c.State.OPEN

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    @property
    def close_reason(self) -> str | None:
        return self._ws.close_reason

    @property
    def latency(self) -> float:
        return self._ws.latency

    @property
    def subprotocol(self) -> str | None:
        return self._ws.subprotocol

    @property
    def local_address(self) -> Any:
        return self._ws.local_address

    @property
    def remote_address(self) -> Any:
        return self._ws.remote_address

    def __repr__(self) -> str:
        return f"<weft.compat.sync_client.ClientConnection {self.uri} {self.state.name}>"


def _ca_certs(ctx: Any) -> list[bytes] | None:
    """The CA certificates of an ``ssl.SSLContext``, for weft's rustls-based client."""
    if not isinstance(ctx, _ssl.SSLContext):
        raise TypeError(f"ssl must be an ssl.SSLContext, not {type(ctx).__name__}")
    if ctx.verify_mode == _ssl.CERT_NONE or not ctx.check_hostname:
        raise NotImplementedError("weft's sync client always verifies the server's certificate and name")
    certs = ctx.get_ca_certs(binary_form=True)
    return list(certs) or None  # none loaded explicitly: the system's roots


def connect(
    uri: str,
    *,
    sock: _socket.socket | None = None,
    ssl: Any = None,
    server_hostname: str | None = None,
    origin: str | None = None,
    extensions: Any = None,
    subprotocols: Any = None,
    compression: str | None = "deflate",
    additional_headers: Any = None,
    extra_headers: Any = None,
    user_agent_header: str | None = c.USER_AGENT,
    proxy: Any = True,
    open_timeout: float | None = 10,
    ping_interval: float | None = 20,
    ping_timeout: float | None = 20,
    close_timeout: float | None = 10,
    max_size: Any = 2**20,
    max_queue: Any = 16,
    logger: Any = None,
    create_connection: Any = None,
    **kwargs: Any,
) -> ClientConnection:
    """Connect to ``uri`` (blocking); use the result directly or as a context manager.

    ``max_queue`` is accepted for compatibility: weft's sync client reads only inside ``recv``,
    so nothing is buffered beyond the message being read.
    """
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
    c.queue_size(max_queue)
    _stats["attempts"] += 1
    fd = None
    if sock is None and proxy_url is not None:
        sock = _proxy.tunnel(proxy_url, host, port, open_timeout, user_agent_header)
    if sock is not None:
        if sock.type != _socket.SOCK_STREAM or sock.family not in (_socket.AF_INET, _socket.AF_INET6):
            raise NotImplementedError("weft's sync client takes a connected TCP socket as sock")
        sock.setblocking(True)
        fd = sock.detach()
    try:
        ws = _connect(
            uri,
            open_timeout,
            None,
            headers=opts["headers"],
            subprotocols=opts["subprotocols"],
            compression=opts["compression"],
            max_size=opts["max_size"],
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
            server_hostname=server_hostname,
            sock=fd,
            ca_certs=_ca_certs(ssl) if ssl is not None else None,
        )
    except _weft_exc.WebSocketException as e:
        raise exc.translate(e) from None
    _stats["connections"] += 1
    return ClientConnection(ws, uri, c.Request(c.request_path(uri), opts["headers"]), c.get_logger(logger))


class reconnect:
    """``for ws in reconnect(uri, **kwargs)``: connect again, with backoff, after retryable
    failures (websockets' threading ``reconnect``)."""

    def __init__(
        self,
        uri: str,
        *,
        process_exception: Callable[[Exception], Exception | None] = c.process_exception,
        reconnect_delays: Callable[[], Generator[float, None, None]] = c.backoff,
        **kwargs: Any,
    ) -> None:
        self.uri = uri
        self.kwargs = kwargs
        self.process_exception = process_exception
        self.reconnect_delays = reconnect_delays
        self.logger = c.get_logger(kwargs.get("logger"))

    def __iter__(self) -> Iterator[ClientConnection]:
        delays: Generator[float, None, None] | None = None
        while True:
            try:
                with connect(self.uri, **self.kwargs) as connection:
                    yield connection
            except Exception as e:
                delay, delays = c.retry_delay(e, self.process_exception, delays, self.reconnect_delays, self.logger)
                time.sleep(delay)
            else:
                delays = None

