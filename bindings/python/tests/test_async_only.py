"""What only the asyncio client has: awaitable/async-context connect, async iteration, many
connections on one loop, concurrency errors."""

import asyncio

import pytest

from weft import async_client
from weft.exceptions import ConcurrencyError, ConnectionClosedOK


def test_connect_styles_and_async_for(weft_echo, py_server):
    async def main():
        ws = await async_client.connect(weft_echo)
        await ws.send("awaited")
        assert await ws.recv() == "awaited"
        await ws.close()
        async with async_client.connect(weft_echo) as ws2:
            await ws2.send_many(["a", "b", b"c"])
            assert [await ws2.recv() for _ in range(3)] == ["a", "b", b"c"]
        got = []
        async with async_client.connect(py_server + "/send/4") as ws3:
            async for m in ws3:
                got.append(m)
        assert got == [f"message {i}" for i in range(4)]
        with pytest.raises(ConnectionClosedOK):
            await ws3.recv()

    asyncio.run(main())


def test_many_connections_on_one_loop(weft_echo):
    async def one(i):
        async with async_client.connect(weft_echo) as ws:
            for j in range(20):
                await ws.send(f"{i}:{j}")
                assert await ws.recv() == f"{i}:{j}"

    async def main():
        await asyncio.gather(*(one(i) for i in range(50)))

    asyncio.run(main())


def test_two_concurrent_recv_is_an_error(weft_echo):
    async def main():
        async with async_client.connect(weft_echo) as ws:
            first = asyncio.ensure_future(ws.recv())
            await asyncio.sleep(0.01)
            with pytest.raises(ConcurrencyError):
                await ws.recv()
            await ws.send("for the first")
            assert await first == "for the first"

    asyncio.run(main())


def test_cancelled_recv_loses_nothing(weft_echo):
    async def main():
        async with async_client.connect(weft_echo) as ws:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.05)
            await ws.send("after cancel")
            assert await ws.recv() == "after cancel"

    asyncio.run(main())


def test_unknown_keyword_is_a_type_error(weft_echo):
    with pytest.raises(TypeError):
        async_client.connect(weft_echo, not_an_option=1)


def test_connect_timeout_keyword_positionally(weft_echo):
    async def main():
        ws = await async_client.connect(weft_echo, 5.0, 5.0)
        await ws.send("positional")
        assert await ws.recv() == "positional"
        await ws.close()

    asyncio.run(main())


def test_members_and_unsupported_proxy(weft_echo):
    async def main():
        async with async_client.connect(weft_echo) as ws:
            assert ws.open and not ws.closed
            assert ws.local_address[0] == "127.0.0.1"
            await ws.pong(b"p")
            await ws.send("y")
            assert await ws.recv() == "y"
        assert not ws.open and ws.closed
        with pytest.raises(NotImplementedError):
            await async_client.connect(weft_echo, proxy="socks5://127.0.0.1:1")

    asyncio.run(main())


def test_a_burst_of_sends_is_written_in_one_go_and_answers_at_once(weft_echo):
    """Write coalescing: sends in a burst (no input in between) are framed and written together
    when the application yields; a send answering received data is written immediately."""

    async def main():
        ws = await async_client.connect(weft_echo)
        t = ws._p.transport
        writes = []
        real = t.write

        def counting(data):
            writes.append(len(data))
            real(data)

        t.write = counting
        for i in range(300):
            await ws.send(f"m{i}")
        # The first sends go out at once; once they come within the burst window (50 µs) of
        # each other, the rest wait. How many go out first depends on how busy the machine is
        # (a loaded VM has taken a dozen), not on the logic: far fewer writes than sends.
        corked = len(writes)
        assert 1 <= corked <= 30, writes
        got = [await ws.recv() for _ in range(300)]  # yielding flushes the burst
        assert got == [f"m{i}" for i in range(300)]
        assert len(writes) <= corked + 1, writes
        writes.clear()
        await ws.send("answer")  # after input: written before send returns
        assert len(writes) == 1
        assert await ws.recv() == "answer"
        # A burst larger than the cork limit is written without waiting for the loop.
        writes.clear()
        for _ in range(8):
            await ws.send(b"x" * 65536)
        assert len(writes) >= 2
        for _ in range(8):
            assert len(await ws.recv()) == 65536
        # A corked message is flushed by the loop even if the application only sleeps.
        await ws.send("one")
        await ws.send("two")
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(ws.recv(), 2) == "one"
        assert await asyncio.wait_for(ws.recv(), 2) == "two"
        await ws.close()

    asyncio.run(main())


def test_on_message_gets_every_message_in_order_and_may_send_from_inside(weft_echo, py_server):
    """The event-driven API: messages go to the callable from data_received, in order, more
    than max_queue of them in a burst; it may send from inside (a ping-pong driven by the
    callback alone); an exception it raises reaches the loop's exception handler and the
    connection goes on; messages before the server's close come before the end; recv refuses."""

    async def main():
        loop = asyncio.get_running_loop()
        errors = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        got = []
        done = loop.create_future()

        def on_message(m):
            got.append(m)
            if len(got) == 3001 and not done.done():
                done.set_result(None)
            if m == b"boom":
                raise ValueError("the application's bug")

        ws = await async_client.connect(weft_echo, max_queue=16, on_message=on_message)
        await ws.send_many([i.to_bytes(4, "big") for i in range(3000)])
        await ws.send(b"boom")
        await asyncio.wait_for(done, 10)
        assert got[:3000] == [i.to_bytes(4, "big") for i in range(3000)]
        assert len(errors) == 1 and isinstance(errors[0]["exception"], ValueError)
        with pytest.raises(RuntimeError):
            await ws.recv()
        # Driven by the callback alone: each answer sends the next.
        rally = loop.create_future()
        count = [0]
        box = []

        def bounce(m):
            count[0] += 1
            if count[0] < 500:
                box[0].send_nowait(m)
            else:
                rally.set_result(m)

        ws2 = await async_client.connect(weft_echo, on_message=bounce)
        box.append(ws2)
        await ws2.send("ball")
        assert await asyncio.wait_for(rally, 10) == "ball" and count[0] == 500
        await ws.close()
        await ws2.close()
        # Messages before the server's close are delivered before the end.
        seen = []
        ws3 = await async_client.connect(py_server + "/send/4", on_message=seen.append)
        await asyncio.wait_for(ws3.wait_closed(), 5)
        assert seen == [f"message {i}" for i in range(4)]

    asyncio.run(main())
