"""Argument handling shared by the asyncio and sync halves of the ``websockets`` drop-in."""

from __future__ import annotations

import enum
import logging
import os
import random
import sys
import traceback
import urllib.parse
import uuid
from collections.abc import Mapping
from typing import Any, Generator, Iterable

from .._weft import __version__
from . import _exceptions as exc
from . import _proxy

try:
    from websockets.protocol import State
except ImportError:

    class State(enum.IntEnum):  # type: ignore[no-redef]
        """Connection state (the values of ``websockets.protocol.State``)."""

        CONNECTING = 0
        OPEN = 1
        CLOSING = 2
        CLOSED = 3


USER_AGENT = f"Python/{sys.version_info.major}.{sys.version_info.minor} weft/{__version__}"


def headers_list(headers: Any) -> list[tuple[str, str]]:
    """``additional_headers`` in any form websockets takes: a mapping, ``Headers``, or pairs."""
    if headers is None:
        return []
    raw = getattr(headers, "raw_items", None)
    if callable(raw):
        return [(str(k), str(v)) for k, v in raw()]
    if isinstance(headers, Mapping):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for k, v in headers]


def check_uri(uri: str) -> tuple[bool, str, int]:
    """websockets' rules: ``ws``/``wss`` scheme, a host, no fragment; raises ``InvalidURI``."""
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError as e:
        raise exc.InvalidURI(uri, str(e)) from None
    if parts.scheme not in ("ws", "wss"):
        raise exc.InvalidURI(uri, f"{uri} isn't a valid URI: scheme isn't ws or wss")
    if not parts.hostname:
        raise exc.InvalidURI(uri, f"{uri} isn't a valid URI: hostname isn't provided")
    if parts.fragment:
        raise exc.InvalidURI(uri, f"{uri} isn't a valid URI: fragment isn't allowed")
    secure = parts.scheme == "wss"
    return secure, parts.hostname, port or (443 if secure else 80)


def options(
    uri: str,
    *,
    origin: str | None,
    extensions: Any,
    subprotocols: Iterable[str] | None,
    compression: str | None,
    additional_headers: Any,
    extra_headers: Any,
    user_agent_header: str | None,
    proxy: Any,
    max_size: Any,
    create_connection: Any,
) -> tuple[dict[str, Any], tuple[bool, str, int], str | None]:
    """Translate websockets' connection keywords into weft's; refuse what weft cannot honour.
    Returns the options, (secure, host, port) and the proxy URL to tunnel through, if any."""
    target = check_uri(uri)
    if subprotocols is not None:
        if isinstance(subprotocols, str):
            raise TypeError("subprotocols must be a list, not a str")
        if not isinstance(subprotocols, Iterable):
            raise TypeError("subprotocols must be a list")
    if extensions:
        raise NotImplementedError("weft negotiates permessage-deflate itself; custom extensions are not supported")
    if create_connection is not None and not callable(create_connection):
        raise TypeError("create_connection must be a ClientConnection subclass or a factory")
    if compression not in ("deflate", None):
        raise ValueError(f"unsupported compression: {compression}")
    proxy_url = _proxy.resolve(uri, proxy, target[1], target[2])
    headers = headers_list(additional_headers) + headers_list(extra_headers)
    if origin is not None:
        headers.append(("Origin", str(origin)))
    # A User-Agent among the additional headers wins over user_agent_header (sent once).
    if user_agent_header is not None and not any(k.lower() == "user-agent" for k, _ in headers):
        headers.append(("User-Agent", user_agent_header))
    if isinstance(max_size, tuple):  # (message, fragment) limits in websockets >= 15
        max_size = max_size[0]
    return (
        {
            "headers": headers,
            "subprotocols": list(subprotocols) if subprotocols else None,
            "compression": compression == "deflate",
            "max_size": max_size,
        },
        target,
        proxy_url,
    )


#: The statuses followed as redirects (websockets': not 304 Not Modified, 305 Use Proxy or
#: the unused 306).
REDIRECT_STATUSES = (300, 301, 302, 303, 307, 308)

#: Headers dropped when following a redirect to another origin (as websockets does).
CREDENTIALS = ("authorization", "cookie", "proxy-authorization")


def unix_uri(path: Any, uri: str | None, kwargs: dict[str, Any], missing: str, both: str) -> str:
    """The URI of a ``unix_connect``: ``uri``, or ``ws://localhost/`` (``wss://`` with TLS);
    ``path`` or ``sock=`` is needed, not both (websockets' asyncio and sync clients word the
    errors differently: ``missing`` and ``both``)."""
    if path is None and kwargs.get("sock") is None:
        raise ValueError(missing)
    if path is not None and kwargs.get("sock") is not None:
        raise ValueError(both)
    if uri is not None:
        return uri
    has_ssl = kwargs.get("ssl") is not None or kwargs.get("ssl_context") is not None
    return "wss://localhost/" if has_ssl else "ws://localhost/"


#: Redirects followed at most, as websockets sets its modules' ``MAX_REDIRECTS``.
MAX_REDIRECTS = int(os.environ.get("WEBSOCKETS_MAX_REDIRECTS", "10"))


def max_redirects(module: str, default: int) -> int:
    """``MAX_REDIRECTS`` of ``module`` (``websockets.asyncio.client`` or
    ``websockets.sync.client``: each client has its own, as in websockets) when it has been
    imported, so code and tests that lower it there are honoured; else ``default`` (the
    drop-in module's own)."""
    value = getattr(sys.modules.get(module), "MAX_REDIRECTS", None)
    return default if value is None else int(value)


def next_hop(
    uri: str,
    e: BaseException,
    headers: list[tuple[str, str]],
    *,
    sock: bool,
    unix: bool,
    explicit_address: bool,
    address_words: str = "an explicit host or port",
) -> tuple[str, list[tuple[str, str]]]:
    """The redirect step of both clients' connect loops, called in the ``except`` block of a
    failed attempt with weft's exception ``e``: the URI and headers of the next attempt when
    ``e`` is a redirect that can be followed; else raises the drop-in's exception for ``e``
    (or the refusal ``redirect_target`` raises)."""
    translated = exc.translate(e)
    target = redirect_target(
        uri,
        translated,  # type: ignore[arg-type]
        headers,
        sock=sock,
        unix=unix,
        explicit_address=explicit_address,
        address_words=address_words,
    )
    if target is None:
        raise translated from translated.__cause__
    return target


def redirect_target(
    uri: str,
    e: Exception,
    headers: list[tuple[str, str]],
    *,
    sock: bool,
    unix: bool,
    explicit_address: bool,
    address_words: str = "an explicit host or port",
) -> tuple[str, list[tuple[str, str]]] | None:
    """Where a failed attempt redirects to, as websockets decides it: ``None`` when ``e`` is no
    redirect (3xx with ``Location``); else the new URI and the headers to send there (without
    credentials on another origin). Raises ``SecurityError`` on a wss -> ws downgrade and
    ``ValueError`` where the connection cannot follow (a given socket; another origin over a
    Unix socket or with an explicit address, which websockets' asyncio and sync clients word
    differently: ``address_words``)."""
    status = getattr(e, "status_code", None)
    if not isinstance(e, exc.InvalidStatus) or status not in REDIRECT_STATUSES:
        return None
    h = getattr(e, "headers", None) or []
    pairs = h.raw_items() if hasattr(h, "raw_items") else h.items() if isinstance(h, Mapping) else h
    location = next((v for k, v in pairs if k.lower() == "location"), None)
    if location is None:
        return None
    new_uri = urllib.parse.urljoin(uri, location)
    old_secure, old_host, old_port = check_uri(uri)
    new_secure, new_host, new_port = check_uri(new_uri)
    if old_secure and not new_secure:
        raise exc.SecurityError(f"cannot follow redirect to non-secure URI {new_uri}") from e
    if sock:
        raise ValueError(f"cannot follow redirect to {new_uri} with a preexisting socket") from e
    if (old_secure, old_host, old_port) != (new_secure, new_host, new_port):
        if unix:
            raise ValueError(f"cannot follow cross-origin redirect to {new_uri} with a Unix socket") from e
        if explicit_address:
            raise ValueError(f"cannot follow cross-origin redirect to {new_uri} with {address_words}") from e
        headers = [(k, v) for k, v in headers if k.lower() not in CREDENTIALS]
    return new_uri, headers


def request_headers(uri: str, headers: list[tuple[str, str]], subprotocols: Any, compression: bool) -> list[tuple[str, str]]:
    """The opening request's headers as websockets shows them in ``request.headers`` (the key
    is weft's and not exposed)."""
    p = urllib.parse.urlsplit(uri)
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = 443 if p.scheme == "wss" else 80
    if p.port is not None and p.port != default:
        host = f"{host}:{p.port}"
    out = [("Host", host), ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13")]
    if compression:
        out.append(("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"))
    if subprotocols:
        out.append(("Sec-WebSocket-Protocol", ", ".join(subprotocols)))
    return out + list(headers)


class _URI:
    """``websockets.uri.WebSocketURI``'s fields, when websockets is not installed."""

    def __init__(self, uri: str) -> None:
        p = urllib.parse.urlsplit(uri)
        self.secure = p.scheme == "wss"
        self.host = p.hostname or ""
        self.port = p.port or (443 if self.secure else 80)
        self.path = p.path or "/"
        self.query = p.query
        self.resource_name = request_path(uri)
        self.user_info = (p.username, p.password) if p.username is not None else None


def parse_uri(uri: str) -> Any:
    try:
        from websockets.uri import parse_uri as ws_parse_uri
    except ImportError:
        return _URI(uri)
    return ws_parse_uri(uri)


def extensions_of(response_headers: list[tuple[str, str]]) -> list[Any]:
    """The negotiated extensions, as websockets' objects (``PerMessageDeflate``) when installed."""
    values = [v for k, v in response_headers if k.lower() == "sec-websocket-extensions"]
    found = []
    for value in values:
        for item in value.split(","):
            parts = [x.strip() for x in item.split(";")]
            if parts[0].lower() != "permessage-deflate":
                continue
            params = dict((kv.split("=", 1) + [""])[:2] for kv in parts[1:] if kv)
            params = {k.strip().lower(): v.strip().strip('"') for k, v in params.items()}
            found.append(_deflate(params))
    return found


def _deflate(params: dict[str, str]) -> Any:
    remote_bits = int(params.get("server_max_window_bits") or 15)
    local_bits = int(params.get("client_max_window_bits") or 15)
    remote_nct = "server_no_context_takeover" in params
    local_nct = "client_no_context_takeover" in params
    try:
        from websockets.extensions.permessage_deflate import PerMessageDeflate
    except ImportError:
        return _PerMessageDeflate(remote_nct, local_nct, remote_bits, local_bits)
    return PerMessageDeflate(remote_nct, local_nct, remote_bits, local_bits)


class _PerMessageDeflate:
    """The negotiated permessage-deflate parameters (websockets' ``PerMessageDeflate`` fields)."""

    name = "permessage-deflate"

    def __init__(self, remote_nct: bool, local_nct: bool, remote_bits: int, local_bits: int) -> None:
        self.remote_no_context_takeover = remote_nct
        self.local_no_context_takeover = local_nct
        self.remote_max_window_bits = remote_bits
        self.local_max_window_bits = local_bits

    def __repr__(self) -> str:
        return f"PerMessageDeflate({self.remote_no_context_takeover}, {self.local_no_context_takeover}, {self.remote_max_window_bits}, {self.local_max_window_bits})"


class Protocol:
    """The connection's ``protocol`` attribute: the fields of websockets' sans-IO
    ``ClientProtocol`` that applications read (``state``, ``extensions``, ``uri``,
    ``subprotocol``, ``request``, ``response``, ``close_code``, ``close_reason``). weft's
    protocol state machine is in Rust; this is a read-only view of it."""

    side = "client"

    def __init__(self, connection: Any, uri: str, response_headers: list[tuple[str, str]]) -> None:
        self._connection = connection
        self.uri = parse_uri(uri)
        self.wsuri = self.uri
        self.extensions = extensions_of(response_headers)
        self.id = connection.id
        self.logger = connection.logger
        self.request = connection.request
        self.response = connection.response

    @property
    def state(self) -> State:
        return self._connection.state

    @property
    def subprotocol(self) -> str | None:
        return self._connection.subprotocol

    @property
    def close_code(self) -> int | None:
        return self._connection.close_code

    @property
    def close_reason(self) -> str | None:
        return self._connection.close_reason

    def __repr__(self) -> str:
        return f"<weft.compat Protocol {self.state.name} extensions={self.extensions!r}>"


def queue_size(max_queue: Any) -> int:
    if isinstance(max_queue, tuple):
        max_queue = max_queue[0]
    return 1 << 30 if max_queue is None else int(max_queue)


def get_logger(logger: Any) -> logging.Logger | logging.LoggerAdapter:
    if logger is None:
        return logging.getLogger("websockets.client")
    if isinstance(logger, str):
        return logging.getLogger(logger)
    return logger


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def backoff(
    initial_delay: float | None = None,
    min_delay: float | None = None,
    max_delay: float | None = None,
    factor: float | None = None,
) -> Generator[float, None, None]:
    """Reconnect delays: a random first delay (RFC 6455 7.2.3), then growing geometrically.

    Same defaults and environment variables as websockets (``WEBSOCKETS_BACKOFF_*``).
    """
    env = os.environ.get
    initial = initial_delay if initial_delay is not None else float(env("WEBSOCKETS_BACKOFF_INITIAL_DELAY", "5"))
    low = min_delay if min_delay is not None else float(env("WEBSOCKETS_BACKOFF_MIN_DELAY", "3.1"))
    high = max_delay if max_delay is not None else float(env("WEBSOCKETS_BACKOFF_MAX_DELAY", "90.0"))
    mult = factor if factor is not None else float(env("WEBSOCKETS_BACKOFF_FACTOR", "1.618"))
    yield random.random() * initial
    delay = low
    while delay < high:
        yield delay
        delay *= mult
    while True:
        yield high


def process_exception(e: Exception) -> Exception | None:
    """Whether a failed connection attempt is worth retrying (``None``) or fatal (returned).

    Retried, as in websockets: network errors (``OSError``, ``TimeoutError``) and HTTP
    500, 502, 503 and 504 from the server or a proxy.
    """
    if isinstance(e, (OSError, TimeoutError)):
        return None
    if isinstance(e, exc.InvalidMessage) and isinstance(e.__cause__, EOFError):
        return None
    if isinstance(e, exc.InvalidStatus) and e.status_code in (500, 502, 503, 504):
        return None
    return e


def retry_delay(
    e: Exception,
    process: Any,
    delays: Generator[float, None, None] | None,
    make_delays: Any,
    logger: Any,
) -> tuple[float, Generator[float, None, None]]:
    """The reconnect loop's decision after a failed attempt (call it from the ``except``
    block): re-raise a fatal error (as ``process_exception`` says), else the delay before
    the next attempt and the delay generator to keep."""
    try:
        new = process(e)
    except Exception as raised:  # raising instead of returning is a common mistake; accept it
        new = raised
    if new is e:
        raise  # noqa: PLE0704 - re-raises the exception being handled by the caller
    if new is not None:
        raise new from e
    if delays is None:
        delays = make_delays()
    delay = next(delays)
    logger.info(
        "connect failed; reconnecting in %.1f seconds: %s",
        delay,
        traceback.format_exception_only(type(e), e)[0].strip(),
    )
    return delay, delays


def text_payload(message: Any, text: bool | None) -> Any:
    """Apply websockets' ``text=`` override and join fragments given as an iterable."""
    if isinstance(message, (str, bytes, bytearray, memoryview)):
        pass
    elif isinstance(message, Mapping):
        raise TypeError("data must be str, bytes, iterable, or async iterable")
    elif isinstance(message, Iterable):
        message = join_fragments(list(message))
    else:
        raise TypeError("data must be str, bytes, iterable, or async iterable")
    if text is True and not isinstance(message, str):
        return bytes(message).decode("utf-8")
    if text is False and isinstance(message, str):
        return message.encode("utf-8")
    return message


def join_fragments(parts: list[Any]) -> Any:
    """A fragmented message given as a list of chunks, sent as one message of the same type."""
    if not parts:
        raise TypeError("data iterable must not be empty")
    if all(isinstance(p, str) for p in parts):
        return "".join(parts)
    if all(isinstance(p, (bytes, bytearray, memoryview)) for p in parts):
        return b"".join(parts)
    raise TypeError("data iterable must contain only str or only bytes-like objects")


def decoded(message: Any, decode: bool | None) -> Any:
    if decode is None:
        return message
    if decode and isinstance(message, bytes):
        return message.decode("utf-8")
    if not decode and isinstance(message, str):
        return message.encode("utf-8")
    return message


class Request:
    """The opening request as sent: ``path`` and ``headers`` (websockets' ``Request`` shape)."""

    __slots__ = ("path", "headers")

    def __init__(self, path: str, headers: list[tuple[str, str]]) -> None:
        self.path = path
        self.headers = _headers(headers)


class Response:
    """The server's handshake response: ``status_code``, ``reason_phrase``, ``headers``."""

    __slots__ = ("status_code", "reason_phrase", "headers", "body")

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.status_code = 101
        self.reason_phrase = "Switching Protocols"
        self.headers = _headers(headers)
        self.body = b""


def _headers(pairs: list[tuple[str, str]]) -> Any:
    try:
        from websockets.datastructures import Headers
    except ImportError:
        return dict(pairs)
    return Headers(pairs)


def request_path(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
