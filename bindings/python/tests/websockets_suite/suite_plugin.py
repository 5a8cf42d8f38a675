"""pytest plugin for run.sh: puts a client implementation in the place of ``websockets``' own
before the test modules import it. ``WEFT_SUITE_IMPL`` chooses it:

- ``real``: nothing is patched (websockets itself; the reference);
- ``weft``: ``weft.enable_monkeypatch()``;
- ``picows``: ``picows.websockets``' asyncio ``connect`` (picows has no sync client and no
  ``unix_connect``: those names raise ``NotImplementedError`` instead of silently running
  websockets' own client and counting as passes).
"""

from __future__ import annotations

import os
from typing import Any


def _missing(name: str) -> Any:
    def stub(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{name} has no equivalent in the implementation under test")

    return stub


def pytest_configure(config: Any) -> None:
    impl = os.environ.get("WEFT_SUITE_IMPL", "real")
    if impl == "real":
        return
    if impl == "weft":
        import weft

        weft.enable_monkeypatch()
        return
    if impl == "picows":
        import websockets
        import websockets.asyncio.client
        import websockets.client
        import websockets.sync.client
        from picows.websockets.asyncio import client as picows_client

        websockets.connect = picows_client.connect
        websockets.asyncio.client.connect = picows_client.connect
        websockets.client.connect = picows_client.connect
        websockets.asyncio.client.ClientConnection = picows_client.ClientConnection
        websockets.asyncio.client.unix_connect = _missing("websockets.asyncio.client.unix_connect")
        websockets.sync.client.connect = _missing("websockets.sync.client.connect")
        websockets.sync.client.unix_connect = _missing("websockets.sync.client.unix_connect")
        return
    raise SystemExit(f"unknown WEFT_SUITE_IMPL={impl!r} (real, weft or picows)")
