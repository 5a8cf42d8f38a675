"""Exceptions raised by weft's clients.

They derive from ``RuntimeError`` so code written for ``websocket-rs`` (which raises
``RuntimeError``) keeps working, while new code can catch exactly what it handles. Timeouts
raise the built-in ``TimeoutError``.
"""

from __future__ import annotations

__all__ = [
    "WebSocketException",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "InvalidHandshake",
    "InvalidStatus",
    "InvalidStatusCode",
    "InvalidURI",
    "InvalidMessage",
    "ConcurrencyError",
    "Close",
]


class Close:
    """A close frame: ``code`` and ``reason`` (the shape of ``websockets.frames.Close``)."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"Close(code={self.code}, reason={self.reason!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Close) and (self.code, self.reason) == (other.code, other.reason)


class WebSocketException(RuntimeError):
    """Base class of weft's WebSocket errors."""


class ConnectionClosed(WebSocketException):
    """The connection is closed: raised by ``recv``/``send`` after the end.

    ``code`` and ``reason`` describe the end: the close code exchanged, 1006 when the
    connection was lost without a close handshake, 1005 when the close frame had no code.
    """

    def __init__(self, code: int = 1006, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        self.rcvd: Close | None = None if code in (1005, 1006) else Close(code, reason)
        self.sent: Close | None = self.rcvd
        self.rcvd_then_sent: bool | None = None if self.rcvd is None else True
        super().__init__(code, reason)

    def __str__(self) -> str:
        if self.code == 1006:
            return "no close frame received or sent (1006, connection lost)"
        if self.code == 1005:
            return "received close frame without a status code (1005)"
        return f"connection closed: {self.code} {self.reason}".rstrip()


class ConnectionClosedOK(ConnectionClosed):
    """Closed normally: close frames went both ways with code 1000, 1001 or no code."""


class ConnectionClosedError(ConnectionClosed):
    """Closed abnormally: another code, a protocol error, a timeout, or a lost connection."""


class ConcurrencyError(WebSocketException):
    """Two coroutines called ``recv`` on the same connection at the same time."""


class InvalidHandshake(WebSocketException):
    """The opening handshake failed (bad response, TLS failure, connection closed)."""


class InvalidMessage(InvalidHandshake):
    """The server's handshake response could not be parsed."""


class InvalidStatus(InvalidHandshake):
    """The server answered the upgrade with an HTTP status other than 101.

    ``status_code``, ``headers`` (list of (name, value)) and ``body`` (bytes) describe the
    response; ``response`` is the same data with websockets' attribute names.
    """

    def __init__(self, status_code: int, headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> None:
        self.status_code = status_code
        self.headers = list(headers or [])
        self.body = body
        self.response = _Response(status_code, self.headers, body)
        super().__init__(status_code)

    def __str__(self) -> str:
        return f"server rejected WebSocket connection: HTTP {self.status_code}"


# websockets < 14 called it InvalidStatusCode.
InvalidStatusCode = InvalidStatus


class InvalidURI(WebSocketException, ValueError):
    """The URL is not a valid ``ws://`` or ``wss://`` URL."""

    def __init__(self, uri: str = "", msg: str = "") -> None:
        self.uri = uri
        self.msg = msg or uri
        super().__init__(self.msg)

    def __str__(self) -> str:
        return self.msg


class _Response:
    __slots__ = ("status_code", "headers", "body")

    def __init__(self, status_code: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status_code = status_code
        self.headers = dict(headers)
        self.body = body
