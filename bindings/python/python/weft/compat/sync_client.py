"""``websockets.sync.client`` on weft: ``connect`` and ``ClientConnection``.

The connection is weft's blocking client (no threads: reads happen inside ``recv``; only with
``ssl=`` an ``SSLContext`` does TLS run in Python's ``ssl`` with one relay thread, see
:mod:`weft.compat._tls`), so
pongs, and with them ``ping()``'s event and the keepalive, are processed while a ``recv`` is
waiting — the way most synchronous code spends its time. ``recv()`` blocks until a message or
the end of the connection unless given a ``timeout``.
"""

from __future__ import annotations

import socket as _socket
import ssl as _ssl
import time
import urllib.parse
import warnings
from typing import Any, Callable, Generator, Iterator

from .. import exceptions as _weft_exc
from .._weft import WebSocket
from .._weft import connect as _connect
from . import _common as c
from . import _proxy, _tls
from . import _exceptions as exc
from . import stats as _stats

__all__ = ["connect", "unix_connect", "reconnect", "unix_reconnect", "ClientConnection", "process_exception", "backoff"]

_UNSET: Any = object()

#: ``connect()`` keywords passed on to ``socket.create_connection`` (websockets passes any):
#: ``address`` overrides the URI's (Host header and certificate name stay the URI's).
_SOCKET_KWARGS = ("address", "timeout", "source_address", "all_errors")

#: Redirects followed at most: the sync client's own limit, as in websockets (the value in
#: ``websockets.sync.client``, when imported, wins; the asyncio client's does not apply).
MAX_REDIRECTS = c.MAX_REDIRECTS

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
        """Wait for the pong (read by ``recv`` or the keep-alive thread). Returns whether it
        came."""
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
        #: The ``ssl.SSLSocket`` when ``ssl=`` was an ``SSLContext`` (TLS in Python), else
        #: ``None``: weft owns the socket (plain, or TLS with rustls).
        self.socket: Any = None
        self.protocol = c.Protocol(self, uri, ws.response_headers)

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
        # With ssl= a context weft's socket is the relay's socket pair: the TLS socket's
        # addresses (taken when it connected: the relay closes it at the end) are the real ones.
        tls_addresses = self.__dict__.get("_tls_addresses")
        return tls_addresses[0] if tls_addresses else self._ws.local_address

    @property
    def remote_address(self) -> Any:
        tls_addresses = self.__dict__.get("_tls_addresses")
        return tls_addresses[1] if tls_addresses else self._ws.remote_address

    def __repr__(self) -> str:
        return f"<weft.compat.sync_client.ClientConnection {self.uri} {self.state.name}>"


def _plain_uri(uri: str) -> str:
    """``uri`` as ``ws://`` for weft when TLS runs in Python (same Host header and path)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != "wss":
        return uri
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port in (None, 443) else f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(("ws", netloc, parts.path, parts.query, ""))


def _tls_error(e: BaseException, hostname: str) -> BaseException | None:
    """rustls' verification failures as the ``ssl.SSLCertVerificationError`` websockets raises."""
    msg = str(e)
    if "invalid peer certificate" not in msg:
        return None
    if "NotValidForName" in msg:
        reason = f"Hostname mismatch, certificate is not valid for '{hostname}'."
    elif "UnknownIssuer" in msg:
        reason = "self-signed certificate or unknown issuer (rustls: UnknownIssuer)"
    elif "Expired" in msg:
        reason = "certificate has expired"
    else:
        reason = msg
    err = _ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {reason}")
    err.reason = "CERTIFICATE_VERIFY_FAILED"
    err.verify_message = reason
    return err


def connect(uri: str, *, legacy: bool | None = None, **kwargs: Any) -> Any:
    """Connect to ``uri`` (blocking); use the result directly or as a context manager.
    ``legacy=False`` returns a :class:`reconnect` instead (websockets 17's future default:
    ``with``, ``for`` to reconnect, ``.connect()``). Takes the keywords of :class:`reconnect`
    but ``process_exception`` and ``reconnect_delays``.

    As websockets: follows redirects, ``unix=True`` with ``path=`` connects over a Unix
    socket, ``ssl=`` takes an ``ssl.SSLContext`` whose trusted certificates are used
    (``ssl_context=`` is the deprecated alias), ``server_hostname=`` overrides the name
    checked. As websockets' background thread, a keep-alive thread answers pings, sends
    ``ping_interval`` pings and reads their pongs while the application is not in ``recv``,
    reading messages ahead, at most ``max_queue`` of them (then it stops reading until
    ``recv`` takes them).
    """
    unknown = sorted(k for k in ("process_exception", "reconnect_delays") if k in kwargs)
    if unknown:
        raise TypeError(f"connect() got unexpected keyword argument(s): {', '.join(unknown)}")
    connecter = reconnect(uri, **kwargs)
    if legacy is False:
        return connecter
    return connecter.connect()


def unix_connect(path: str | None = None, uri: str | None = None, **kwargs: Any) -> Any:
    """Connect over the Unix socket at ``path`` (websockets' ``unix_connect``); ``uri`` gives
    the Host header and, for ``wss://``, the name the certificate is checked against."""
    uri = c.unix_uri(path, uri, kwargs, "missing path argument", "path is incompatible with sock")
    return connect(uri, unix=True, path=path, **kwargs)


class reconnect:
    """``for ws in reconnect(uri, **kwargs)``: connect again, with backoff, after retryable
    failures (websockets' threading ``reconnect``, also what ``connect(..., legacy=False)``
    returns): ``with reconnect(...) as ws`` connects once, ``.connect()`` returns an open
    connection. As in websockets, :func:`connect` is ``reconnect(...).connect()``, and a
    followed redirect is remembered: the next connection goes to where it led (with the
    credentials dropped if it led to another origin)."""

    def __init__(
        self,
        uri: str,
        *,
        process_exception: Callable[[Exception], Exception | None] = c.process_exception,
        reconnect_delays: Callable[[], Generator[float, None, None]] = c.backoff,
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
        ssl_context: Any = _UNSET,
        unix: bool = False,
        path: str | None = None,
        host: str | None = None,
        port: int | None = None,
        proxy_ssl: Any = _UNSET,
        proxy_server_hostname: str | None = None,
        **kwargs: Any,
    ) -> None:
        unknown = [k for k in kwargs if k not in _SOCKET_KWARGS]
        if unknown:  # what socket.create_connection would say, where websockets sends them
            raise TypeError(f"create_connection() got an unexpected keyword argument '{unknown[0]}'")
        if ssl_context is not _UNSET:
            warnings.warn("ssl_context was renamed to ssl", DeprecationWarning, stacklevel=3)
            ssl = ssl_context
        opts, (secure, _, _), proxy_url = c.options(
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
        if not secure and ssl is not None:
            raise ValueError("ssl argument is incompatible with a ws:// URI")
        _proxy.check(proxy_url, proxy_ssl, _UNSET)
        if unix and sock is None and path is None:
            raise ValueError("missing path argument")
        self._max_queue = c.queue_size(max_queue)
        if ssl is not None and ssl is not True and not isinstance(ssl, _ssl.SSLContext):
            raise TypeError(f"ssl must be an ssl.SSLContext or True, not {type(ssl).__name__}")
        self.uri = uri
        self.process_exception = process_exception
        self.reconnect_delays = reconnect_delays
        self.logger = c.get_logger(logger)
        self.connection: ClientConnection | None = None
        self._headers: list[tuple[str, str]] = opts.pop("headers")
        self._opts = opts
        # The proxy is chosen for each hop (proxy=True: from the environment for that URI).
        self._proxy_setting = proxy if sock is None and not unix else None
        self._proxy_ssl = proxy_ssl
        self._context = ssl if isinstance(ssl, _ssl.SSLContext) else None
        self._sock = sock
        self._server_hostname = server_hostname
        self._unix, self._path = unix, path
        self._host, self._port = host, port
        self._socket_kwargs = kwargs
        self._user_agent = user_agent_header
        self._open_timeout = open_timeout
        self._keepalive = (ping_interval, ping_timeout, close_timeout)
        self._create_connection = create_connection or ClientConnection

    def connect(self) -> ClientConnection:
        """Connect (following redirects) and return the open connection."""
        _stats["attempts"] += 1
        deadline = None if self._open_timeout is None else time.monotonic() + self._open_timeout
        limit = c.max_redirects("websockets.sync.client", MAX_REDIRECTS)
        for _ in range(limit):
            try:
                ws, tls_sock, tls_addresses = self._attempt(deadline)
            except _weft_exc.WebSocketException as e:
                # Where a redirect leads is kept, as websockets keeps it: a reconnect goes
                # there directly, and without the credentials a cross-origin hop dropped.
                self.uri, self._headers = c.next_hop(
                    self.uri,
                    e,
                    self._headers,
                    sock=self._sock is not None,
                    unix=self._unix,
                    explicit_address=(
                        self._host is not None
                        or self._port is not None
                        or self._socket_kwargs.get("address") is not None
                    ),
                    address_words="an explicit host and port",
                )
                continue
            break
        else:
            raise exc.SecurityError(f"more than {limit} redirects")
        _stats["connections"] += 1
        uri, opts = self.uri, self._opts
        request = c.Request(
            c.request_path(uri), c.request_headers(uri, self._headers, opts["subprotocols"], opts["compression"])
        )
        # create_connection=: a ClientConnection subclass, or a factory that passes its
        # arguments on to one (weft's arguments, not websockets' socket and sans-IO protocol).
        try:
            conn = self._create_connection(ws, uri, request, self.logger)
        except BaseException:
            ws.close()  # the factory failed: nothing owns the connection
            raise
        if not isinstance(conn, ClientConnection):
            ws.close()
            raise TypeError("create_connection must return a weft.compat ClientConnection (subclass)")
        conn.socket = tls_sock
        if tls_sock is not None:
            conn._tls_addresses = tls_addresses
        return conn

    def _hop_proxy(self, uri: str, host: str, port: int) -> str | None:
        proxy_url = _proxy.resolve(uri, self._proxy_setting, host, port)
        _proxy.check(proxy_url, self._proxy_ssl, _UNSET)
        return proxy_url

    def _attempt(self, deadline: float | None) -> tuple[WebSocket, Any, Any]:
        """One connection and opening handshake to ``self.uri``: weft's connection, and with
        ``ssl=`` a context the ``SSLSocket`` and its addresses."""
        uri = self.uri

        def remaining() -> float | None:
            # One deadline for every phase (TCP, proxy, TLS, handshake) and every redirect
            # hop, as websockets' Deadline: each phase gets what the earlier ones left.
            if deadline is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            return left

        this_secure, this_host, this_port = c.check_uri(uri)
        context = self._context
        s = self._sock
        tls_sock = tls_addresses = None
        try:
            if s is None and self._unix:
                s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
                s.settimeout(remaining())
                s.connect(self._path)
            elif s is None and (proxy_url := self._hop_proxy(uri, this_host, this_port)) is not None:
                s = _proxy.tunnel(
                    proxy_url, this_host, this_port, remaining(), self._user_agent, **self._socket_kwargs
                )
            elif s is None and (
                self._host is not None or self._port is not None or context is not None or self._socket_kwargs
            ):
                # websockets passes the keywords it does not know to socket.create_connection
                # (address=, source_address=...): so does weft, and connects in Python.
                kw = dict(self._socket_kwargs)
                kw.setdefault(
                    "address",
                    (
                        self._host if self._host is not None else this_host,
                        self._port if self._port is not None else this_port,
                    ),
                )
                kw.setdefault("timeout", remaining())
                s = _socket.create_connection(**kw)
            if s is not None and context is not None and this_secure:
                s, tls_sock, tls_addresses = _tls.wrap(s, context, self._server_hostname or this_host, remaining())
            handshake_time = remaining()
        except BaseException:
            # TCP and TLS timeouts are the socket's and ssl's TimeoutError, as in websockets.
            if s is not None and s is not self._sock:
                s.close()
            raise
        fd = None
        if s is not None:
            if s.type != _socket.SOCK_STREAM or s.family not in (_socket.AF_INET, _socket.AF_INET6, _socket.AF_UNIX):
                raise NotImplementedError("weft's sync client takes a connected TCP or Unix stream socket as sock")
            s.setblocking(True)
            fd = s.detach()
        ping_interval, ping_timeout, close_timeout = self._keepalive
        try:
            ws = _connect(
                uri if tls_sock is None else _plain_uri(uri),
                handshake_time,
                None,
                headers=self._headers,
                subprotocols=self._opts["subprotocols"],
                compression=self._opts["compression"],
                max_size=self._opts["max_size"],
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                close_timeout=close_timeout,
                server_hostname=self._server_hostname,
                sock=fd,
                keepalive_thread=True,
                max_queue=self._max_queue,
            )
        except TimeoutError:
            raise TimeoutError("timed out while waiting for handshake response") from None
        except _weft_exc.WebSocketException as e:
            tls = _tls_error(e, self._server_hostname or this_host)
            if tls is not None:
                raise tls from None
            raise
        return ws, tls_sock, tls_addresses

    def __enter__(self) -> ClientConnection:
        if self.connection is not None:
            raise RuntimeError("connect() isn't reentrant")
        self.connection = self.connect()
        return self.connection

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.connection is not None:
                self.connection.close()
        finally:
            self.connection = None

    def __iter__(self) -> Iterator[ClientConnection]:
        delays: Generator[float, None, None] | None = None
        while True:
            try:
                with self as connection:
                    yield connection
            except Exception as e:
                delay, delays = c.retry_delay(e, self.process_exception, delays, self.reconnect_delays, self.logger)
                time.sleep(delay)
            else:
                delays = None


def unix_reconnect(path: str | None = None, uri: str | None = None, **kwargs: Any) -> reconnect:
    """:class:`reconnect` over the Unix socket at ``path`` (websockets' ``unix_reconnect``)."""
    if path is None and kwargs.get("sock") is None:
        raise ValueError("missing path argument")
    if path is not None and kwargs.get("sock") is not None:
        raise ValueError("path is incompatible with sock")
    if uri is None:
        has_ssl = kwargs.get("ssl") is not None or kwargs.get("ssl_context") is not None
        uri = "wss://localhost/" if has_ssl else "ws://localhost/"
    return reconnect(uri, unix=True, path=path, **kwargs)
