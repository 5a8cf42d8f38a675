"""weft: fast WebSocket clients for Python on weft's Rust protocol core.

- :mod:`weft.sync_client`: blocking client (no event loop, the GIL is released while waiting).
- :mod:`weft.async_client`: asyncio client (a protocol implemented in Rust; works with uvloop).
- :class:`Server`: the weft engine on its own Rust threads; :mod:`weft.engine_client`: its client.
- :func:`enable_monkeypatch`: run code written for ``websockets`` on weft (:mod:`weft.compat`).

Both have the names, signatures and defaults of the ``websocket-rs`` package.
"""

from . import exceptions
from ._weft import Server, __version__
from .compat import disable_monkeypatch, enable_monkeypatch
from .exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

__all__ = [
    "__version__",
    "exceptions",
    "Server",
    "enable_monkeypatch",
    "disable_monkeypatch",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "InvalidHandshake",
    "InvalidStatus",
    "InvalidURI",
]
