"""One interface over the sync client, the asyncio client and the asyncio client on uvloop,
so behaviour tests are written once and run against all three."""

from __future__ import annotations

import asyncio
from typing import Any

from weft import async_client, sync_client


class SyncAdapter:
    name = "sync"

    def connect(self, url: str, **kw: Any):
        return sync_client.connect(url, **kw)

    def close(self) -> None:
        pass


class _AsyncWs:
    def __init__(self, adapter: "AsyncAdapter", ws: async_client.AsyncWebSocket) -> None:
        self._a = adapter
        self._ws = ws

    def send(self, m):
        return self._a.run(self._ws.send(m))

    def recv(self, timeout=...):
        return self._a.run(self._ws.recv() if timeout is ... else self._ws.recv(timeout))

    def ping(self, data=None):
        return self._a.run(self._ws.ping(data))

    def close(self, code: int = 1000, reason: str = ""):
        return self._a.run(self._ws.close(code, reason))

    def __iter__(self):
        it = self._ws.__aiter__()
        while True:
            try:
                yield self._a.run(it.__anext__())
            except StopAsyncIteration:
                return

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getattr__(self, name: str):
        return getattr(self._ws, name)


class AsyncAdapter:
    def __init__(self, use_uvloop: bool = False) -> None:
        if use_uvloop:
            import uvloop

            self.loop = uvloop.new_event_loop()
            self.name = "uvloop"
        else:
            self.loop = asyncio.new_event_loop()
            self.name = "asyncio"

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def connect(self, url: str, **kw: Any):
        return _AsyncWs(self, self.run(async_client.connect(url, **kw)))

    def close(self) -> None:
        self.loop.close()
