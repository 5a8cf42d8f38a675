"""The exceptions the ``websockets`` drop-in raises.

When ``websockets`` is installed, each class derives from both weft's exception and the
``websockets`` exception of the same name (and, for ``InvalidStatus``, from the legacy
``InvalidStatusCode``), so ``except websockets.exceptions.ConnectionClosed`` and
``except weft.exceptions.ConnectionClosed`` both catch it, whichever was imported first.
Without ``websockets`` they are weft's own classes.
"""

from __future__ import annotations

import warnings
from typing import Any

from .. import exceptions as _weft

try:
    import websockets.exceptions as _ws
    import websockets.frames as _ws_frames
    import websockets.http11 as _ws_http
    from websockets.datastructures import Headers as _Headers
except ImportError:  # websockets not installed: weft's classes stand in for it
    _ws = None

if _ws is not None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from websockets.legacy.exceptions import InvalidStatusCode as _LegacyInvalidStatusCode
        except ImportError:  # a websockets without the legacy package
            _LegacyInvalidStatusCode = None

    class WebSocketException(_weft.WebSocketException, _ws.WebSocketException):
        pass

    class ConnectionClosed(_weft.ConnectionClosed, _ws.ConnectionClosed):
        # Plain attributes: websockets declares these as deprecated read-only properties.
        code: int = 1006
        reason: str = ""

        def __init__(self, code: int = 1006, reason: str = "") -> None:
            _weft.ConnectionClosed.__init__(self, code, reason)
            if self.rcvd is not None:
                self.rcvd = self.sent = _ws_frames.Close(code, reason)

    class ConnectionClosedOK(ConnectionClosed, _weft.ConnectionClosedOK, _ws.ConnectionClosedOK):
        pass

    class ConnectionClosedError(ConnectionClosed, _weft.ConnectionClosedError, _ws.ConnectionClosedError):
        pass

    class InvalidHandshake(_weft.InvalidHandshake, _ws.InvalidHandshake):
        pass

    class InvalidMessage(InvalidHandshake, _weft.InvalidMessage, _ws.InvalidMessage):
        pass

    _status_bases: tuple[type, ...] = (InvalidHandshake, _weft.InvalidStatus, _ws.InvalidStatus)
    if _LegacyInvalidStatusCode is not None:
        _status_bases += (_LegacyInvalidStatusCode,)

    class InvalidStatus(*_status_bases):  # type: ignore[misc]
        def __init__(self, status_code: int, headers: Any = None, body: bytes = b"") -> None:
            _weft.InvalidStatus.__init__(self, status_code, headers, body)
            h = _Headers(self.headers)
            self.headers = h  # the legacy InvalidStatusCode's attribute
            try:
                from http import HTTPStatus

                phrase = HTTPStatus(status_code).phrase
            except ValueError:
                phrase = ""
            self.response = _ws_http.Response(status_code, phrase, h, body)

        def __str__(self) -> str:
            return _weft.InvalidStatus.__str__(self)

    class InvalidURI(_weft.InvalidURI, _ws.InvalidURI):
        def __init__(self, uri: str = "", msg: str = "") -> None:
            _weft.InvalidURI.__init__(self, uri, msg)

        def __str__(self) -> str:
            return _weft.InvalidURI.__str__(self)

    class ConcurrencyError(_weft.ConcurrencyError, _ws.ConcurrencyError):
        pass

    class InvalidHeader(InvalidHandshake, _ws.InvalidHeader):
        def __init__(self, name: str, value: str | None = None) -> None:
            _ws.InvalidHeader.__init__(self, name, value)

        def __str__(self) -> str:
            return _ws.InvalidHeader.__str__(self)

    class _ProxyStandIn(_ws.WebSocketException):
        """The proxy exceptions' base before websockets 15 added them."""

        def __init__(self, proxy: str = "", msg: str = "") -> None:
            super().__init__(proxy, msg)
            self.proxy, self.msg = proxy, msg

        def __str__(self) -> str:
            return f"{self.proxy} isn't a valid proxy: {self.msg}"

    class InvalidProxy(getattr(_ws, "InvalidProxy", _ProxyStandIn), _weft.WebSocketException):  # type: ignore[misc]
        pass

    class SecurityError(InvalidHandshake, _ws.SecurityError):
        pass

    class ProxyError(InvalidHandshake, getattr(_ws, "ProxyError", _ws.InvalidHandshake)):  # type: ignore[misc]
        pass

    class InvalidProxyMessage(ProxyError, getattr(_ws, "InvalidProxyMessage", _ws.InvalidHandshake)):  # type: ignore[misc]
        pass

    class InvalidProxyStatus(ProxyError, getattr(_ws, "InvalidProxyStatus", _ws.InvalidHandshake)):  # type: ignore[misc]
        """The proxy answered CONNECT with a status other than 2xx; ``response`` is websockets'
        ``Response``."""

        def __init__(self, response: Any) -> None:
            Exception.__init__(self, response)
            self.response = response

        def __str__(self) -> str:
            return f"proxy rejected connection: HTTP {self.response.status_code:d}"

    def proxy_response(status_code: int, reason: str, headers: list[tuple[str, str]]) -> Any:
        return _ws_http.Response(status_code, reason, _Headers(headers), b"")

    InvalidStatusCode = InvalidStatus
else:
    WebSocketException = _weft.WebSocketException  # type: ignore[misc]
    ConnectionClosed = _weft.ConnectionClosed  # type: ignore[misc]
    ConnectionClosedOK = _weft.ConnectionClosedOK  # type: ignore[misc]
    ConnectionClosedError = _weft.ConnectionClosedError  # type: ignore[misc]
    InvalidHandshake = _weft.InvalidHandshake  # type: ignore[misc]
    InvalidMessage = _weft.InvalidMessage  # type: ignore[misc]
    InvalidStatus = _weft.InvalidStatus  # type: ignore[misc]
    InvalidStatusCode = _weft.InvalidStatus  # type: ignore[misc]
    InvalidURI = _weft.InvalidURI  # type: ignore[misc]
    ConcurrencyError = _weft.ConcurrencyError  # type: ignore[misc]

    class InvalidHeader(_weft.InvalidHandshake):  # type: ignore[no-redef]
        """A missing or invalid header in the handshake response."""

        def __init__(self, name: str, value: str | None = None) -> None:
            super().__init__(f"missing {name} header" if value is None else f"invalid {name} header: {value}")
            self.name, self.value = name, value

    class InvalidProxy(_weft.WebSocketException):  # type: ignore[no-redef]
        """An unusable proxy URL (websockets' ``InvalidProxy``)."""

        def __init__(self, proxy: str = "", msg: str = "") -> None:
            super().__init__(proxy, msg)
            self.proxy, self.msg = proxy, msg

        def __str__(self) -> str:
            return f"{self.proxy} isn't a valid proxy: {self.msg}"

    class SecurityError(_weft.InvalidHandshake):  # type: ignore[no-redef]
        """A redirect or limit that would weaken the connection's security."""

    class ProxyError(_weft.InvalidHandshake):  # type: ignore[no-redef]
        """The proxy refused or failed the tunnel."""

    class InvalidProxyMessage(ProxyError):  # type: ignore[no-redef]
        """The proxy did not answer with valid HTTP."""

    class InvalidProxyStatus(ProxyError):  # type: ignore[no-redef]
        """The proxy answered CONNECT with a status other than 2xx."""

        def __init__(self, response: Any) -> None:
            super().__init__(response)
            self.response = response

        def __str__(self) -> str:
            return f"proxy rejected connection: HTTP {self.response.status_code:d}"

    class _ProxyResponse:
        """The proxy's answer (websockets' ``Response`` fields)."""

        def __init__(self, status_code: int, reason: str, headers: list[tuple[str, str]]) -> None:
            self.status_code, self.reason_phrase, self.headers, self.body = status_code, reason, dict(headers), b""

    def proxy_response(status_code: int, reason: str, headers: list[tuple[str, str]]) -> Any:  # type: ignore[misc]
        return _ProxyResponse(status_code, reason, headers)


def translate(e: BaseException) -> BaseException:
    """The drop-in's exception for one of weft's (anything else is returned unchanged)."""
    if _ws is None or not isinstance(e, _weft.WebSocketException) or isinstance(e, _ws.WebSocketException):
        return e
    new: BaseException
    if isinstance(e, _weft.ConnectionClosed):
        cls = ConnectionClosedOK if isinstance(e, _weft.ConnectionClosedOK) else ConnectionClosedError
        new = cls(e.code, e.reason)
    elif isinstance(e, _weft.InvalidStatus):
        new = InvalidStatus(e.status_code, list(e.headers), e.body)
    elif isinstance(e, _weft.InvalidURI):
        new = InvalidURI(e.uri, e.msg)
    elif isinstance(e, _weft.InvalidMessage):
        # websockets' wording, with what went wrong as the cause (process_exception retries
        # when the cause is an EOFError, as websockets does).
        new = InvalidMessage("did not receive a valid HTTP response")
        msg = str(e)
        first_line = getattr(e, "first_line", None)
        if msg == "connection closed during the opening handshake":
            new.__cause__ = EOFError("connection closed while reading HTTP status line")
        elif msg == "invalid HTTP version" and first_line is not None:
            new.__cause__ = ValueError(f"unsupported protocol; expected HTTP/1.1: {first_line}")
        else:
            new.__cause__ = ValueError(msg)
        return new
    elif isinstance(e, _weft.InvalidHandshake):
        msg = str(e)
        if msg.startswith("missing ") and msg.endswith(" header"):
            new = InvalidHeader(msg[len("missing ") : -len(" header")])
        else:
            new = InvalidHandshake(*e.args)
    elif isinstance(e, _weft.ConcurrencyError):
        new = ConcurrencyError(*e.args)
    else:
        new = WebSocketException(*e.args)
    new.__cause__ = e.__cause__
    return new


__all__ = [
    "WebSocketException",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "InvalidHandshake",
    "InvalidMessage",
    "InvalidStatus",
    "InvalidStatusCode",
    "InvalidURI",
    "ConcurrencyError",
    "InvalidHeader",
    "InvalidProxy",
    "InvalidProxyMessage",
    "InvalidProxyStatus",
    "ProxyError",
    "SecurityError",
    "translate",
    "raise_translated",
]


def raise_translated(e: BaseException) -> None:
    """Raise the drop-in's exception for ``e`` (call it in an ``except`` block), with its cause
    as websockets sets it (``InvalidMessage`` from ``EOFError`` or ``ValueError``) and no
    chained context otherwise."""
    new = translate(e)
    raise new from new.__cause__
