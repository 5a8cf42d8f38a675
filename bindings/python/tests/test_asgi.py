"""The engine mounted in a FastAPI application under uvicorn (``weft.asgi.engine_app``): its
WebSockets join the same engine as the native port's — the same token checks, topics and
recovery — and request handlers publish."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request

import pytest

import weft
from conftest import free_port, wait_port
from test_engine import jwt
from weft import engine_client
from weft.exceptions import InvalidStatus

fastapi = pytest.importorskip("fastapi", reason="scripts/test.sh installs fastapi and uvicorn")
uvicorn = pytest.importorskip("uvicorn")

SECRET = b"s3cret-of-at-least-32-bytes-for-hs256"


class Uvicorn:
    """uvicorn serving ``app`` on a free port, on a thread of its own."""

    def __init__(self, app) -> None:
        self.port = free_port()
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Uvicorn:
        self.thread.start()
        wait_port(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def test_fastapi_mount_joins_the_same_engine_with_auth_and_recovery():
    from weft.asgi import engine_app

    with weft.Server("127.0.0.1", 0, jwt_secret=SECRET, history_size=100) as server:
        app = fastapi.FastAPI()
        app.mount("/realtime", engine_app(server))

        @app.post("/orders/{n}")
        def order(n: int) -> dict:
            server.publish("orders", {"n": n})
            return {"ok": True}

        @app.get("/hello")
        def hello() -> dict:
            return {"hi": 1}

        token = jwt({"sub": "ann", "exp": int(time.time()) + 60, "subscribe": [">"], "publish": [">"]}, SECRET)
        with Uvicorn(app) as web:
            mounted = f"ws://127.0.0.1:{web.port}/realtime/ws"  # (a mount matches the paths under it)
            native = f"ws://127.0.0.1:{server.port}/ws"

            def post(path: str) -> bytes:
                req = urllib.request.Request(f"http://127.0.0.1:{web.port}{path}", method="POST", data=b"")
                return urllib.request.urlopen(req, timeout=5).read()

            async def main() -> None:
                # The engine's token check applies through the mount.
                with pytest.raises(InvalidStatus) as e:
                    await engine_client.connect(mounted)
                assert e.value.status_code in (401, 403)
                async with (
                    engine_client.connect(mounted, token=token, min_delay=0.05, max_delay=0.2) as a,
                    engine_client.connect(native, token=token) as b,
                ):
                    assert a.welcome["user"] == "ann" and b.welcome["user"] == "ann"
                    await a.subscribe(["orders"])
                    await b.subscribe(["orders"])
                    # A request handler publishes; both sides get it, at the same position.
                    await asyncio.to_thread(post, "/orders/1")
                    ea, eb = await asyncio.wait_for(a.recv(), 5), await asyncio.wait_for(b.recv(), 5)
                    assert (ea.offset, ea.payload) == (eb.offset, eb.payload) == (1, {"n": 1})
                    # A publish through the mount reaches the native client.
                    await a.publish("orders", {"n": 2})
                    assert (await asyncio.wait_for(b.recv(), 5)).payload == {"n": 2}
                    assert (await asyncio.wait_for(a.recv(), 5)).payload == {"n": 2}
                    # Cut the mounted connection: what is published meanwhile is recovered.
                    a._ws._p.abort()
                    await asyncio.to_thread(post, "/orders/3")
                    await asyncio.to_thread(post, "/orders/4")
                    got = [(await asyncio.wait_for(a.recv(), 10)) for _ in range(2)]
                    assert [(e.offset, e.payload["n"]) for e in got] == [(3, 3), (4, 4)]
                    assert a.reconnects == 1
                    assert [(r["topic"], r.get("recovered")) for r in a.last_resume] == [("orders", True)]
                    assert server.stats()["connections"] == 2
                # The application's own routes are untouched.
                assert await asyncio.to_thread(
                    lambda: urllib.request.urlopen(f"http://127.0.0.1:{web.port}/hello", timeout=5).read()
                ) == b'{"hi":1}'

            asyncio.run(main())
            deadline = time.monotonic() + 5
            while server.connection_count() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.connection_count() == 0, "the mounted session outlived its WebSocket"
