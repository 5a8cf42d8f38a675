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
    if extensions:
        raise NotImplementedError("weft negotiates permessage-deflate itself; custom extensions are not supported")
    if create_connection is not None:
        raise NotImplementedError("create_connection is not supported by weft's websockets drop-in")
    if compression not in ("deflate", None):
        raise ValueError(f"unsupported compression: {compression}")
    proxy_url = _proxy.resolve(uri, proxy, target[1], target[2])
    headers = headers_list(additional_headers) + headers_list(extra_headers)
    if origin is not None:
        headers.append(("Origin", str(origin)))
    if user_agent_header is not None:
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
