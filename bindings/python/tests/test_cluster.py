"""Cluster mode from Python: two ``weft.Server`` nodes joined by a ``redis-server`` or a
``nats-server -js`` the test starts on a free port. Publish from Python on one node, receive on the other; resume on the
other node; an unreachable broker raises ``ConnectionError`` at start."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest

import weft
from conftest import free_port, wait_port
from weft import engine_client


@pytest.fixture(params=["redis", "nats"])
def broker_url(request, tmp_path):
    exe = shutil.which(f"{request.param}-server")
    if exe is None:
        pytest.fail(f"{request.param}-server not found (scripts/test.sh installs it)")
    port = free_port()
    if request.param == "redis":
        args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    else:
        args = [exe, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"{request.param}://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def test_two_nodes_share_topics_and_positions(broker_url):
    with (
        weft.Server(broker=broker_url, node_name="py-a") as a,
        weft.Server(broker=broker_url, node_name="py-b") as b,
    ):
        assert a.stats()["cluster"]["node"] == "py-a"
        assert a.stats()["cluster"]["broker"] == broker_url.split(":")[0]

        async def main() -> None:
            async with engine_client.connect(f"ws://127.0.0.1:{b.port}/ws?user=bea") as c:
                await c.subscribe(["orders"])
                for i in range(3):
                    a.publish("orders", {"n": i})
                got = [await asyncio.wait_for(c.recv(), 5) for _ in range(3)]
                assert [(e.offset, e.payload) for e in got] == [(1, {"n": 0}), (2, {"n": 1}), (3, {"n": 2})]
                pos = c.positions["orders"]
            # Resume on the other node: exactly what was missed.
            a.publish("orders", {"n": 3})
            async with engine_client.connect(f"ws://127.0.0.1:{a.port}/ws?user=bea") as c2:
                r = await c2._request({"type": "subscribe", "topics": ["orders"], "resume": {"orders": pos}})
                assert r["results"][0]["recovered"] is True, r
                e = await asyncio.wait_for(c2.recv(), 5)
                assert (e.offset, e.payload) == (4, {"n": 3})

        asyncio.run(main())


def test_an_unreachable_broker_raises_connection_error():
    server = weft.Server(broker=f"redis://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectionError, match="cannot reach Redis"):
        server.start()
    server = weft.Server(broker=f"nats://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectionError, match="cannot reach NATS"):
        server.start()
    with pytest.raises(ValueError, match="unsupported broker"):
        weft.Server(broker="kafka://127.0.0.1:9092").start()


def test_a_reset_moves_the_resume_position():
    c = engine_client.EngineClient(
        "ws://127.0.0.1:1/ws",
        None,
        reconnect=False,
        min_delay=0.1,
        max_delay=1.0,
        max_queue=16,
        connect_timeout=1.0,
        options={},
    )
    ev = c._dispatch({"type": "reset", "topic": "t", "offset": 9, "epoch": "e2", "recovered": False})
    assert (ev.type, ev.topic, ev.offset, ev.epoch) == ("reset", "t", 9, "e2")
    assert c.positions["t"] == {"offset": 9, "epoch": "e2"}
    # The next event continues from there; one at or before it is a duplicate.
    assert c._dispatch({"type": "event", "topic": "t", "offset": 9, "epoch": "e2", "payload": 1}) is None
    assert c._dispatch({"type": "event", "topic": "t", "offset": 10, "epoch": "e2", "payload": 1}).offset == 10


def test_a_client_with_several_endpoints_rides_through_the_loss_of_a_node(broker_url):
    """The client is given both nodes; the one it is on stops: it reconnects to the other
    and resumes there, so it gets every event once, in order."""
    a = weft.Server(broker=broker_url, node_name="fo-a")
    a.start()
    with weft.Server(broker=broker_url, node_name="fo-b") as b:
        urls = [f"ws://127.0.0.1:{a.port}/ws?user=f", f"ws://127.0.0.1:{b.port}/ws?user=f"]

        async def main() -> None:
            async with engine_client.connect(urls, min_delay=0.05, max_delay=0.2) as c:
                assert c.url == urls[0]
                await c.subscribe(["fo"])
                for i in range(3):
                    b.publish("fo", i)
                got = [(await asyncio.wait_for(c.recv(), 5)).payload for _ in range(3)]
                await asyncio.to_thread(a.stop)
                for i in range(3, 6):
                    b.publish("fo", i)
                got += [(await asyncio.wait_for(c.recv(), 10)).payload for _ in range(3)]
                assert got == [0, 1, 2, 3, 4, 5]
                assert c.url == urls[1] and c.reconnects == 1
                assert c.last_resume[0]["recovered"] is True, c.last_resume
                first, second = c.endpoints
                assert first.failures >= 1 and second.failures == 0 and second.latency is not None

        asyncio.run(main())


def test_python_publishes_the_broker_refused_are_dead_letters_replayed_after_the_outage():
    """``Server.publish`` has no caller to tell of a failure: what the broker refused is a
    dead letter, listed from Python and replayed once the broker is back."""
    import signal
    import time

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server not found (scripts/test.sh installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        with weft.Server(broker=f"redis://127.0.0.1:{port}", node_name="py-dl") as a:

            def until(pred, what: str, timeout: float = 20) -> None:
                deadline = time.monotonic() + timeout
                while not pred():
                    assert time.monotonic() < deadline, what
                    time.sleep(0.05)

            async def main() -> None:
                async with engine_client.connect(f"ws://127.0.0.1:{a.port}/ws") as c:
                    await c.subscribe(["orders"])
                    a.publish("orders", "before")
                    assert (await asyncio.wait_for(c.recv(), 5)).payload == "before"
                    proc.send_signal(signal.SIGSTOP)
                    await asyncio.to_thread(until, lambda: a.stats()["cluster"]["state"] != "ok", "the outage was not noticed")
                    for i in range(3):
                        a.publish("orders", {"n": i})
                    await asyncio.to_thread(until, lambda: a.dead_letters()["count"] == 3, "no dead letters")
                    page = a.dead_letters()
                    assert [(d["kind"], d["payload"]) for d in page["items"]] == [("publish", {"n": i}) for i in range(3)]
                    assert page["items"][0]["error"]["code"] == 5003
                    proc.send_signal(signal.SIGCONT)
                    await asyncio.to_thread(until, lambda: a.stats()["cluster"]["state"] == "ok", "the broker did not come back")
                    done = a.replay_dead_letters()
                    assert (done["replayed"], done["remaining"]) == (3, 0), done
                    got = [(await asyncio.wait_for(c.recv(), 5)).payload for _ in range(3)]
                    assert got == [{"n": i} for i in range(3)]
                    assert a.purge_dead_letters() == 0

            asyncio.run(main())
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()
