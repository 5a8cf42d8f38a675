"""The engine from Python: ``weft.Server`` (weft-server on its own threads) and
``weft.engine_client`` (reconnecting protocol client), over real sockets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import pytest

import weft
from conftest import free_port
from weft import engine_client
from weft.exceptions import InvalidStatus


def jwt(claims: dict, secret: bytes) -> str:
    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def drain_until(server: weft.Server, pred, timeout: float = 5.0) -> list[dict]:
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got += server.drain_inbound(256, 50)
        if pred(got):
            return got
    raise AssertionError(f"inbound never matched; got {got}")


async def next_event(c: engine_client.EngineClient, timeout: float = 5.0) -> engine_client.Event:
    return await asyncio.wait_for(c.recv(), timeout)


def test_publish_subscribe_and_inbound_batches():
    with weft.Server("127.0.0.1", 0) as server:
        assert server.running and server.port > 0 and server.connection_count() == 0
        url = f"ws://127.0.0.1:{server.port}/ws?user=ann"

        async def main() -> None:
            async with engine_client.connect(url) as c:
                assert c.welcome["user"] == "ann"
                assert server.connection_count() == 1
                await c.subscribe(["news.world", "prices.>"])
                server.publish("news.world", {"title": "hello", "n": [1, 2.5, None, True]})
                server.publish("prices.eur", 1.25)
                e1, e2 = await next_event(c), await next_event(c)
                assert (e1.topic, e1.offset, e1.payload) == ("news.world", 1, {"title": "hello", "n": [1, 2.5, None, True]})
                assert (e2.topic, e2.payload) == ("prices.eur", 1.25)
                for i in range(5):
                    await c.send({"order": i})
                pos = await c.publish("news.world", "from a client")
                assert pos["offset"] == 2
                assert (await next_event(c)).payload == "from a client"
                stats = server.stats()
                assert stats["connections"] == 1 and stats["publishes_total"] == 3 and stats["topics"] >= 1

        asyncio.run(main())
        got = drain_until(server, lambda g: any(e["type"] == "disconnect" for e in g))
        kinds = [e["type"] for e in got]
        assert kinds == ["connect"] + ["message"] * 5 + ["disconnect"], kinds
        assert [e["payload"] for e in got if e["type"] == "message"] == [{"order": i} for i in range(5)]
        assert len({e["session"] for e in got}) == 1 and {e["user"] for e in got} == {"ann"}
        assert all(isinstance(e["id"], int) for e in got if e["type"] == "message")
        # Batches: at most max_batch per call; an empty list after the timeout.
        t0 = time.monotonic()
        assert server.drain_inbound(10, 100) == []
        assert time.monotonic() - t0 >= 0.09
    assert not server.running and server.port is None and server.connection_count() == 0


def test_bad_input_from_python_is_refused_clearly():
    with pytest.raises(TypeError, match="unexpected keyword"):
        weft.Server("127.0.0.1", 0, no_such_setting=1)
    with pytest.raises(ValueError):
        weft.Server("127.0.0.1", 0, slow_consumer="explode")
    server = weft.Server("127.0.0.1", 0)
    with pytest.raises(RuntimeError, match="not running"):
        server.publish("a.b", 1)
    with server:
        with pytest.raises(ValueError):
            server.publish("bad..topic", 1)
        with pytest.raises(TypeError):
            server.publish("a.b", object())
        with pytest.raises(TypeError):
            server.publish("a.b", b"bytes")
        with pytest.raises(ValueError):
            server.publish("a.b", float("nan"))
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
        taken = weft.Server("127.0.0.1", server.port)
        with pytest.raises(OSError):
            taken.start()


def test_jwt_token_and_refusal():
    secret = b"s3cret-of-at-least-32-bytes-for-hs256"
    with weft.Server("127.0.0.1", 0, jwt_secret=secret) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"
        good = jwt({"sub": "bob", "exp": int(time.time()) + 60, "subscribe": ["room.>"]}, secret)
        bad = jwt({"sub": "eve", "exp": int(time.time()) + 60}, b"wrong")

        async def main() -> None:
            async with engine_client.connect(url, token=good) as c:
                assert c.welcome["user"] == "bob"
                await c.subscribe(["room.1"])
                with pytest.raises(engine_client.EngineError) as e:
                    await c.subscribe(["admin.x"])
                assert e.value.code == 4003
            with pytest.raises(InvalidStatus) as e:
                await engine_client.connect(url, token=bad)
            assert e.value.status_code == 401

        asyncio.run(main())


def test_reconnect_resubscribes_and_recovers_missed_events():
    with weft.Server("127.0.0.1", 0, history_size=100) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"

        async def main() -> None:
            async with engine_client.connect(url, min_delay=0.05, max_delay=0.2) as c:
                await c.subscribe(["feed.a"])
                for i in range(1, 4):
                    server.publish("feed.a", i)
                seen = [(await next_event(c)).payload for _ in range(3)]
                # The network drops the connection; events are published while the client is away.
                c._ws._p.abort()
                for i in range(4, 7):
                    server.publish("feed.a", i)
                for _ in range(3):
                    seen.append((await next_event(c)).payload)
                server.publish("feed.a", 7)
                seen.append((await next_event(c)).payload)
                assert seen == [1, 2, 3, 4, 5, 6, 7]
                assert c.reconnects == 1
                assert c.last_resume[0]["recovered"] is True and c.last_resume[0]["replayed"] == 3
                assert c.positions["feed.a"]["offset"] == 7

        asyncio.run(main())


def test_filtered_subscription_survives_a_reconnect_with_only_matching_events():
    with weft.Server("127.0.0.1", 0, history_size=100) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"

        async def main() -> None:
            async with engine_client.connect(url, min_delay=0.05, max_delay=0.2) as c:
                with pytest.raises(engine_client.EngineError) as e:
                    await c.subscribe(["orders"], filter={"payload.qty": {"$between": [1, 2]}})
                assert e.value.code == 4010 and "unknown operator $between" in str(e.value)
                await c.subscribe(["orders"], filter={"payload.qty": {"$gte": 10}})
                for q in (5, 10, 1, 20):
                    server.publish("orders", {"qty": q})
                seen = [(await next_event(c)).payload["qty"] for _ in range(2)]
                c._ws._p.abort()
                for q in (30, 2, 40):
                    server.publish("orders", {"qty": q})
                for _ in range(2):
                    seen.append((await next_event(c)).payload["qty"])
                assert seen == [10, 20, 30, 40]
                # The resume replayed the matching events only, and the position is the topic's.
                assert c.last_resume[0]["recovered"] is True and c.last_resume[0]["replayed"] == 2
                server.publish("orders", {"qty": 3})
                server.publish("orders", {"qty": 50})
                assert (await next_event(c)).payload["qty"] == 50

        asyncio.run(main())


def test_connection_quality_is_measured_and_a_silent_server_is_left():
    """Application-level pings measure rtt, jitter and missed answers (the TypeScript client's
    levels); a server that stops answering them is dropped after two, and the client
    reconnects."""
    from websockets.asyncio.server import serve

    with weft.Server("127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"

        async def measured() -> None:
            seen: list[engine_client.Quality] = []
            async with engine_client.connect(url, quality_interval=0.05, on_quality=seen.append) as c:
                while len(seen) < 3:
                    await asyncio.sleep(0.05)
                q = c.quality
                # (A loaded machine may make it "good"; never worse with no ping missed.)
                assert q is not None and q.level in ("excellent", "good") and q.missed == 0, q
                assert 0 < q.rtt < 1000 and q.jitter >= 0, q

        asyncio.run(measured())

    async def silent() -> None:
        connections = 0

        async def handler(ws) -> None:
            nonlocal connections
            connections += 1
            await ws.send(json.dumps({"type": "welcome", "version": 1, "session": "s", "user": "u", "time": 0, "heartbeat": 25000}))
            async for _ in ws:
                pass  # never answers anything

        async with serve(handler, "127.0.0.1", 0) as srv:
            port = srv.sockets[0].getsockname()[1]
            levels: list[str] = []
            c = await engine_client.connect(
                f"ws://127.0.0.1:{port}/ws", quality_interval=0.05, pong_timeout=0.05,
                min_delay=0.01, max_delay=0.05, on_quality=lambda q: levels.append(q.level),
            )
            deadline = time.monotonic() + 5
            while c.reconnects < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert c.reconnects >= 1 and connections >= 2, (c.reconnects, connections)
            assert levels[:2] == ["fair", "poor"], levels
            await c.close()

    asyncio.run(silent())


def test_circuit_breaker_stops_a_reconnection_storm_and_the_rate_limiter_paces_requests():
    import socket
    import threading

    # An endpoint that accepts and closes at once (counted), beside a real engine.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    attempts: list[float] = []

    def accept_and_close() -> None:
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            attempts.append(time.monotonic())
            conn.close()

    threading.Thread(target=accept_and_close, daemon=True).start()
    bad = f"ws://127.0.0.1:{lsock.getsockname()[1]}/ws"
    server = weft.Server("127.0.0.1", 0)
    server.start()
    good = f"ws://127.0.0.1:{server.port}/ws"

    async def main() -> None:
        c = await engine_client.connect(
            [good, bad], min_delay=0.01, max_delay=0.02, breaker_threshold=4, breaker_cooldown=0.6,
            quality_interval=None, rate_limit=20, rate_burst=5,
        )
        # 25 requests at 20/s with a burst of 5: at least a second.
        t0 = time.monotonic()
        for i in range(25):
            await c.publish("paced", i)
        assert time.monotonic() - t0 >= 0.9
        # Every endpoint down: a few attempts, then the breaker opens and nothing is tried
        # until the cool-down ends, then one round (half-open).
        await asyncio.to_thread(server.stop)
        deadline = time.monotonic() + 5
        while c.breaker != "open" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert c.breaker == "open" and c.breaker_trips == 1
        tried = len(attempts)
        assert 1 <= tried <= 4, tried
        await asyncio.sleep(0.4)
        assert len(attempts) == tried, "attempts while the breaker was open"
        while len(attempts) == tried and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(attempts) == tried + 1
        await c.close()

    try:
        asyncio.run(main())
    finally:
        lsock.close()


def test_sync_engine_client_for_threaded_code():
    with weft.Server("127.0.0.1", 0, history_size=100) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"
        with engine_client.connect_sync(url, min_delay=0.05, max_delay=0.2, quality_interval=0.05) as c:
            assert c.welcome["type"] == "welcome"
            c.subscribe(["sync.t"], filter={"payload.n": {"$gt": 1}})
            with pytest.raises(engine_client.EngineError) as e:
                c.subscribe(["sync.u"], filter={"payload.n": {"$gt": [1]}})
            assert e.value.code == 4010
            with pytest.raises(TimeoutError):
                c.recv(timeout=0.1)
            for n in (1, 2, 3):
                server.publish("sync.t", {"n": n})
            assert [c.recv(timeout=5).payload["n"] for _ in range(2)] == [2, 3]
            # Cut from the client's own thread; events published meanwhile are resumed.
            c._loop.call_soon_threadsafe(c._client._ws._p.abort)
            time.sleep(0.05)
            server.publish("sync.t", {"n": 4})
            server.publish("sync.t", {"n": 0})
            server.publish("sync.t", {"n": 5})
            got = []
            for ev in c:
                got.append(ev.payload["n"])
                if len(got) == 2:
                    break
            assert got == [4, 5]
            assert c.reconnects == 1 and c.positions["sync.t"]["offset"] == 6
            assert c.publish("sync.t", {"n": 9}, priority="high")["offset"] == 7
            ev = c.recv(timeout=5)
            assert ev.payload["n"] == 9 and ev.raw["priority"] == "high"
            deadline = time.monotonic() + 5
            while c.quality is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert c.quality is not None and c.quality.level in ("excellent", "good"), c.quality
        with pytest.raises(ConnectionError):
            c.publish("sync.t", 1)
        assert not c._thread.is_alive()


def test_sync_client_calls_waiting_for_a_connection_end_with_close():
    """A thread waiting in publish() while the client reconnects is not left hanging when the
    client closes: it gets ConnectionError."""
    import threading

    server = weft.Server("127.0.0.1", 0)
    server.start()
    c = engine_client.connect_sync(f"ws://127.0.0.1:{server.port}/ws", min_delay=0.05, max_delay=0.1)
    server.stop()
    deadline = time.monotonic() + 5
    while c.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not c.connected
    outcome: list[BaseException] = []

    def publish() -> None:
        try:
            c.publish("t", 1)
        except BaseException as e:  # noqa: BLE001 - the outcome is the test
            outcome.append(e)

    t = threading.Thread(target=publish)
    t.start()
    time.sleep(0.2)
    assert t.is_alive(), "publish should wait for the connection"
    c.close()
    t.join(5)
    assert not t.is_alive() and isinstance(outcome[0], ConnectionError), outcome


def test_reconnect_after_server_restart_continues_live():
    port = free_port()
    server = weft.Server("127.0.0.1", port)
    server.start()
    url = f"ws://127.0.0.1:{port}/ws"

    async def main() -> None:
        nonlocal server
        async with engine_client.connect(url, min_delay=0.05, max_delay=0.3) as c:
            await c.subscribe(["feed.b"])
            server.publish("feed.b", "before")
            assert (await next_event(c)).payload == "before"
            await asyncio.get_running_loop().run_in_executor(None, server.stop)
            await asyncio.sleep(0.3)  # the client retries against a closed port meanwhile
            server = weft.Server("127.0.0.1", port)
            server.start()
            deadline = time.monotonic() + 10
            while c.reconnects == 0 or not c.connected or not c.last_resume:
                assert time.monotonic() < deadline, "no reconnect"
                await asyncio.sleep(0.02)
            server.publish("feed.b", "after")
            # The old position could not be resumed: the application is told before live events.
            notice = await next_event(c)
            assert (notice.type, notice.topic) == ("may_have_missed", "feed.b")
            assert notice.payload == {"resumed": [], "not_recovered": ["feed.b"]}
            ev = await next_event(c)
            assert ev.payload == "after"
            # A new engine has a new epoch: the old position could not be resumed.
            assert c.last_resume[0]["ok"] and c.last_resume[0].get("recovered") is False

    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_slow_application_loses_nothing():
    """The client's event queue is bounded: when the application lags, the connection is not
    read (TCP backpressure) and every event still arrives, in order."""
    with weft.Server("127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"

        async def main() -> None:
            async with engine_client.connect(url, max_queue=5) as c:
                await c.subscribe(["burst"])
                for i in range(500):
                    server.publish("burst", {"i": i, "pad": "x" * 200})
                await asyncio.sleep(0.3)  # the application is busy; at most 5 events are queued
                assert c._events.qsize() <= 5
                got = [(await next_event(c)).payload["i"] for _ in range(500)]
                assert got == list(range(500))

        asyncio.run(main())


def test_engine_limits_are_settings_of_server():
    # The engine's memory limits reach it from Python: one topic allowed, a second one refused
    # (publish() does not wait for the engine, so the refusal shows in the counters); and a bad
    # combination is refused at construction.
    with pytest.raises(ValueError, match="history_topic_bytes"):
        weft.Server("127.0.0.1", 0, history_memory=1024, history_topic_bytes=4096)
    with weft.Server("127.0.0.1", 0, max_topics=1, deflate=False, http_body_timeout=2.5) as server:
        server.publish("only.one", {"n": 1})
        server.publish("another.one", {"n": 2})
        deadline = time.monotonic() + 5
        while server.stats()["topics_refused_total"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = server.stats()
        assert (stats["topics"], stats["topics_refused_total"]) == (1, 1), stats


def test_snapshots_from_a_python_callback_and_the_last_event():
    calls: list[tuple] = []

    def state(topic: str, position: dict, user: str, session: str):
        calls.append((topic, position["offset"], user))
        if topic == "broken":
            raise RuntimeError("no database")
        if topic == "empty":
            return None
        if topic == "behind":
            return ({"rows": ["a"]}, 1)  # as of offset 1: the events after it follow
        if topic == "ahead":
            return ({"v": "ahead"}, position["offset"] + 1)  # includes the next event already
        return {"price": 101}

    with pytest.raises(TypeError):
        weft.Server("127.0.0.1", 0, snapshots=42)
    with pytest.raises(ValueError):
        weft.Server("127.0.0.1", 0, snapshots="ftp://x/")
    with weft.Server("127.0.0.1", 0, snapshots=state) as server:
        server.publish("behind", "b1")
        server.publish("behind", "b2")
        server.publish("behind", "b3")
        url = f"ws://127.0.0.1:{server.port}/ws?user=ann"

        async def main() -> None:
            async with engine_client.connect(url) as c:
                await c.subscribe(["prices", "empty", "broken", "behind"], snapshot=True)
                got = [await next_event(c) for _ in range(4 + 2)]
                by = {}
                for e in got:
                    by.setdefault(e.topic, []).append(e)
                s = by["prices"][0]
                assert (s.type, s.payload, s.offset, s.error) == ("snapshot", {"price": 101}, 0, None)
                s = by["empty"][0]
                assert (s.type, s.payload, "data" in s.raw) == ("snapshot", None, False)
                s = by["broken"][0]
                assert s.type == "snapshot" and s.error["code"] == 4011 and "no database" in s.error["message"]
                # The state as of offset 1, then events 2 and 3 from history, in order.
                assert [(e.type, e.offset) for e in by["behind"]] == [("snapshot", 1), ("event", 2), ("event", 3)]
                assert by["behind"][0].payload == {"rows": ["a"]}
                server.publish("prices", {"price": 102})
                e = await next_event(c)
                assert (e.type, e.topic, e.payload) == ("event", "prices", {"price": 102})
                # A state newer than its subscription: the event it already includes is skipped.
                await c.subscribe(["ahead"], snapshot=True)
                s = await next_event(c)
                assert (s.type, s.offset, s.payload) == ("snapshot", 1, {"v": "ahead"})
                server.publish("ahead", "in the state")
                server.publish("ahead", "after it")
                e = await next_event(c)
                assert (e.offset, e.payload) == (2, "after it")

        asyncio.run(main())
        assert sorted(calls) == sorted(
            [("prices", 0, "ann"), ("empty", 0, "ann"), ("broken", 0, "ann"), ("behind", 3, "ann"), ("ahead", 0, "ann")]
        )

    # The built-in source, from the threaded client.
    with weft.Server("127.0.0.1", 0, snapshots="last") as server:
        server.publish("room", {"n": 1})
        server.publish("room", {"n": 2})
        url = f"ws://127.0.0.1:{server.port}/ws"
        with engine_client.connect_sync(url) as c:
            c.subscribe(["room"], snapshot=True)
            s = c.recv(timeout=5)
            assert (s.type, s.offset, s.payload) == ("snapshot", 2, {"n": 2})
            server.publish("room", {"n": 3})
            e = c.recv(timeout=5)
            assert (e.type, e.offset, e.payload) == ("event", 3, {"n": 3})


KEYS = __import__("pathlib").Path(__file__).parent / "keys"
SECURE_KEY = KEYS / "secure-p256.pem"
SECURE_PUB = (KEYS / "secure-p256.pub.b64").read_text().strip()


def test_secure_channel_from_the_python_clients():
    """Both modes through the asyncio and the threaded client, the pinned identity key (a
    wrong one is refused), a server that requires the channel (the client secures without
    being asked), one that has it off, and a reconnect that agrees new keys."""
    with weft.Server("127.0.0.1", 0, secure_key=str(SECURE_KEY)) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"

        async def main() -> None:
            async with engine_client.connect(url) as plain, engine_client.connect(
                url, secure="encrypt", server_key=SECURE_PUB
            ) as c:
                assert plain.welcome["secure"] == "allow" and plain.secured is None
                assert c.secured == "encrypt"
                await plain.subscribe(["room"])
                await c.subscribe(["room"])
                await c.publish("room", {"text": "sealed"})
                assert (await next_event(plain)).payload == {"text": "sealed"}
                assert (await next_event(c)).payload == {"text": "sealed"}
                # A lost connection: the client reconnects, agrees new keys and resumes.
                c._ws._p.abort()
                await asyncio.sleep(0.3)
                server.publish("room", {"text": "after"})
                assert (await next_event(c)).payload == {"text": "after"}
                assert c.reconnects == 1 and c.secured == "encrypt"
                assert await c.ping() >= 0
            # A valid P-256 public key, but not the server's.
            wrong = base64.b64encode(weft._weft.SecureHandshake("encrypt").public_key).decode()
            with pytest.raises(engine_client.EngineError) as e:
                await engine_client.connect(url, server_key=wrong, reconnect=False)
            assert e.value.code == 4012
            with pytest.raises(ValueError):
                engine_client.connect(url, secure="rot13")

        asyncio.run(main())
        with engine_client.connect_sync(url, secure="sign", server_key=SECURE_PUB) as s:
            assert s.secured == "sign"
            s.subscribe(["t"])
            s.publish("t", [1, 2, 3])
            assert s.recv(timeout=5).payload == [1, 2, 3]

    with weft.Server("127.0.0.1", 0, secure="require") as server:
        url = f"ws://127.0.0.1:{server.port}/ws"

        async def required() -> None:
            async with engine_client.connect(url) as c:
                assert c.welcome["secure"] == "require" and c.secured == "encrypt"
                await c.subscribe(["x"])
                server.publish("x", "y")
                assert (await next_event(c)).payload == "y"

        asyncio.run(required())

    with pytest.raises(ValueError):
        weft.Server("127.0.0.1", 0, secure="off", secure_key=str(SECURE_KEY))
    with pytest.raises(ValueError):
        weft.Server("127.0.0.1", 0, secure_key=b"not a key")
    with weft.Server("127.0.0.1", 0, secure="off") as server:

        async def off() -> None:
            with pytest.raises(engine_client.EngineError) as e:
                await engine_client.connect(f"ws://127.0.0.1:{server.port}/ws", secure="sign", reconnect=False)
            assert e.value.code == 4012 and "off" in str(e.value)

        asyncio.run(off())


def test_a_frame_altered_on_the_way_drops_the_connection_and_the_client_resumes_with_new_keys():
    """A proxy between client and engine flips one bit of one sealed frame: the client closes
    with 4412 and reconnects (new keys), and the event resumes from the server's history."""
    with weft.Server("127.0.0.1", 0) as server:

        async def main() -> None:
            flip = {"armed": False}

            async def pipe(reader, writer, tamper: bool) -> None:
                try:
                    while data := await reader.read(65536):
                        if tamper and flip["armed"]:
                            flip["armed"] = False
                            data = data[:-1] + bytes([data[-1] ^ 1])  # the last byte: a tag
                        writer.write(data)
                        await writer.drain()
                except (ConnectionError, OSError):
                    pass
                finally:
                    writer.close()

            async def relay(cr, cw) -> None:
                sr, sw = await asyncio.open_connection("127.0.0.1", server.port)
                await asyncio.gather(pipe(cr, sw, False), pipe(sr, cw, True))

            proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
            port = proxy.sockets[0].getsockname()[1]
            async with engine_client.connect(f"ws://127.0.0.1:{port}/ws", secure="encrypt", min_delay=0.05) as c:
                await c.subscribe(["t"])
                server.publish("t", 1)
                assert (await next_event(c)).payload == 1
                flip["armed"] = True
                server.publish("t", 2)
                assert (await next_event(c, 10)).payload == 2
                assert c.reconnects == 1 and c.secured == "encrypt"
                assert c.last_resume[0]["recovered"] is True
            proxy.close()

        asyncio.run(main())
