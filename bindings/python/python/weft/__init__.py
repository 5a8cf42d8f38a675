"""weft: fast WebSocket clients for Python on weft's Rust protocol core.

- :mod:`weft.sync_client`: blocking client (no event loop, the GIL is released while waiting).
- :mod:`weft.async_client`: asyncio client (a protocol implemented in Rust; works with uvloop).

Both have the names, signatures and defaults of the ``websocket-rs`` package.
"""

from . import exceptions
from ._weft import __version__
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
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "InvalidHandshake",
    "InvalidStatus",
    "InvalidURI",
]
