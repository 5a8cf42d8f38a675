"""Run code written for ``websockets`` on weft: :func:`enable_monkeypatch`.

>>> import weft
>>> weft.enable_monkeypatch()
>>> import websockets
>>> websockets.connect.__module__
'weft.compat.asyncio_client'
>>> weft.disable_monkeypatch()

After ``enable_monkeypatch()`` these names are weft's:

- ``websockets.connect``, ``websockets.asyncio.client.connect`` (also ``websockets.client.connect``)
  and ``unix_connect``: :mod:`weft.compat.asyncio_client`;
- ``websockets.sync.client.connect``, ``unix_connect``, ``reconnect`` and ``unix_reconnect``:
  :mod:`weft.compat.sync_client`.

The exceptions weft raises through them derive from both weft's and websockets' classes, so
``except websockets.exceptions.ConnectionClosed`` (or ``InvalidStatus``, ``InvalidStatusCode``,
``InvalidHandshake``, ``InvalidURI``) works whether it was imported before or after the patch.
When ``websockets`` is not installed, ``enable_monkeypatch()`` installs a ``websockets``
package made of weft's modules, so such code runs with weft alone.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["enable_monkeypatch", "disable_monkeypatch", "stats"]

#: Connection attempts and connections opened through the drop-in: lets tests (and users)
#: check that code written for websockets really ran on weft.
stats = {"attempts": 0, "connections": 0}

_saved: list[tuple[Any, str, Any]] = []
_installed: list[str] = []

_MISSING = object()


def _patch(obj: Any, name: str, value: Any) -> None:
    _saved.append((obj, name, obj.__dict__.get(name, _MISSING)))
    setattr(obj, name, value)


def enable_monkeypatch() -> None:
    """Make ``websockets``' client entry points weft's. Calling it again does nothing."""
    if _saved or _installed:
        return
    from . import _exceptions, asyncio_client, sync_client

    try:
        import websockets
        import websockets.asyncio.client
        import websockets.client
        import websockets.sync.client
    except ImportError:
        _install_shim(asyncio_client, sync_client, _exceptions)
        return
    _patch(websockets, "connect", asyncio_client.connect)
    _patch(websockets.asyncio.client, "connect", asyncio_client.connect)
    _patch(websockets.asyncio.client, "unix_connect", asyncio_client.unix_connect)
    _patch(websockets.asyncio.client, "ClientConnection", asyncio_client.ClientConnection)
    _patch(websockets.sync.client, "ClientConnection", sync_client.ClientConnection)
    _patch(websockets.client, "connect", asyncio_client.connect)
    _patch(websockets.sync.client, "connect", sync_client.connect)
    _patch(websockets.sync.client, "unix_connect", sync_client.unix_connect)
    _patch(websockets.sync.client, "reconnect", sync_client.reconnect)
    if hasattr(websockets.sync.client, "unix_reconnect"):
        _patch(websockets.sync.client, "unix_reconnect", sync_client.unix_reconnect)
    if "unix_connect" in websockets.__dict__ or hasattr(websockets, "unix_connect"):
        _patch(websockets, "unix_connect", asyncio_client.unix_connect)


def disable_monkeypatch() -> None:
    """Undo :func:`enable_monkeypatch`."""
    while _saved:
        obj, name, old = _saved.pop()
        if old is _MISSING:
            delattr(obj, name)
        else:
            setattr(obj, name, old)
    while _installed:
        sys.modules.pop(_installed.pop(), None)


def _install_shim(asyncio_client: Any, sync_client: Any, excs: Any) -> None:
    from . import _common

    def module(name: str, **attrs: Any) -> types.ModuleType:
        m = types.ModuleType(name, f"weft's stand-in for {name} (weft.enable_monkeypatch)")
        m.__dict__.update(attrs)
        sys.modules[name] = m
        _installed.append(name)
        return m

    names = {n: getattr(excs, n) for n in excs.__all__ if n != "translate"}
    exceptions = module("websockets.exceptions", **names)
    protocol = module("websockets.protocol", State=_common.State)
    a_client = module(
        "websockets.asyncio.client",
        connect=asyncio_client.connect,
        unix_connect=asyncio_client.unix_connect,
        ClientConnection=asyncio_client.ClientConnection,
        process_exception=_common.process_exception,
        MAX_REDIRECTS=asyncio_client.MAX_REDIRECTS,
    )
    s_client = module(
        "websockets.sync.client",
        connect=sync_client.connect,
        unix_connect=sync_client.unix_connect,
        reconnect=sync_client.reconnect,
        unix_reconnect=sync_client.unix_reconnect,
        ClientConnection=sync_client.ClientConnection,
        process_exception=_common.process_exception,
        MAX_REDIRECTS=sync_client.MAX_REDIRECTS,
    )
    a_pkg = module("websockets.asyncio", client=a_client)
    s_pkg = module("websockets.sync", client=s_client)
    client = module("websockets.client", connect=asyncio_client.connect)
    for m in (a_pkg, s_pkg):
        m.__path__ = []  # type: ignore[attr-defined]
    root = module(
        "websockets",
        connect=asyncio_client.connect,
        ClientConnection=asyncio_client.ClientConnection,
        State=_common.State,
        exceptions=exceptions,
        protocol=protocol,
        asyncio=a_pkg,
        sync=s_pkg,
        client=client,
        **names,
    )
    root.__path__ = []  # type: ignore[attr-defined]
