"""What only the blocking client has: the GIL released while it waits, one thread sending
while another receives."""

import threading
import time

import pytest

from weft.sync_client import WebSocket, connect


def test_gil_is_released_while_recv_waits(weft_echo):
    ws = connect(weft_echo, receive_timeout=0.5)
    counter = 0
    stop = threading.Event()

    def spin():
        nonlocal counter
        while not stop.is_set():
            counter += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        with pytest.raises(TimeoutError):
            ws.recv()
    finally:
        stop.set()
        t.join()
    # With the GIL held for 0.5 s the spinning thread would have been starved.
    assert counter > 10_000
    ws.close()


def test_send_from_another_thread_while_receiving(weft_echo):
    with connect(weft_echo, receive_timeout=5) as ws:
        got = []
        reader = threading.Thread(target=lambda: got.extend(ws.recv() for _ in range(100)))
        reader.start()
        time.sleep(0.05)  # the reader is now blocked in recv
        for i in range(100):
            ws.send(f"from writer {i}")
        reader.join(10)
        assert got == [f"from writer {i}" for i in range(100)]


def test_unknown_keyword_is_a_type_error(weft_echo):
    with pytest.raises(TypeError):
        connect(weft_echo, not_an_option=1)


def test_websocket_rs_signature(weft_echo):
    # connect(url, connect_timeout=30.0, receive_timeout=30.0) positionally, as websocket-rs.
    ws = connect(weft_echo, 5.0, 5.0)
    assert isinstance(ws, WebSocket)
    ws.send("positional")
    assert ws.recv() == "positional"
    ws.close()


def test_websocket_rs_07_path_and_members(weft_echo):
    from weft.sync.client import ClientConnection
    from weft.sync.client import connect as connect07

    with connect07(weft_echo, connect_timeout=5, receive_timeout=5, close_timeout=2, tcp_nodelay=True) as ws:
        assert isinstance(ws, ClientConnection)
        assert ws.open and not ws.closed
        assert ws.local_address[0] == "127.0.0.1" and ws.remote_address[1] == int(weft_echo.rsplit(":", 1)[1])
        ws.pong(b"unsolicited")
        ws.send("x")
        assert ws.recv() == "x"
    assert not ws.open and ws.closed


def recording_server(raw_server, n: int):
    """A raw server that records the payloads of the first `n` client frames."""
    from conftest import read_client_frame

    got: list[bytes] = []
    done = threading.Event()

    def record(conn):
        while len(got) < n:
            got.append(read_client_frame(conn)[1])
        done.set()
        time.sleep(1)

    return raw_server(record), got, done


def test_burst_of_sends_arrives_in_order_and_is_flushed_without_recv(weft_echo, raw_server):
    """Write coalescing: a burst is written at the next recv, or by the flusher thread when the
    application neither sends nor receives."""
    with connect(weft_echo) as ws:
        for i in range(500):
            ws.send(f"m{i}")
        assert [ws.recv() for _ in range(500)] == [f"m{i}" for i in range(500)]
        for _ in range(6):  # over the cork limit: written while sending
            ws.send(b"y" * 65536)
        assert [len(ws.recv()) for _ in range(6)] == [65536] * 6

    server, got, done = recording_server(raw_server, 3)
    ws = connect(server.url)
    ws.send("first")
    ws.send("second")  # within the burst window: corked
    ws.send("third")
    # No recv, no further send: the flusher writes them within its delay.
    assert done.wait(2), got
    assert got == [b"first", b"second", b"third"]


def test_flusher_works_in_a_forked_child(weft_echo, raw_server):
    """A child made by fork has no flusher thread of its own until it needs one."""
    import os

    with connect(weft_echo) as ws:  # the parent's flusher thread exists after this burst
        for i in range(3):
            ws.send(f"p{i}")
        time.sleep(0.01)
        assert [ws.recv() for _ in range(3)] == ["p0", "p1", "p2"]

    server, got, done = recording_server(raw_server, 3)
    pid = os.fork()
    if pid == 0:  # the child: a burst, then neither send nor recv
        try:
            ws = connect(server.url)
            ws.send("a")
            ws.send("b")
            ws.send("c")
            time.sleep(1)
        finally:
            os._exit(0)
    try:
        assert done.wait(2), got
        assert got == [b"a", b"b", b"c"]
    finally:
        os.waitpid(pid, 0)


def test_keepalive_thread_answers_pings_and_closes_on_a_missing_pong(raw_server):
    """With ``keepalive_thread=True`` the connection is kept while the application is busy
    elsewhere: the server's ping is answered, and a keep-alive pong that does not come closes
    the connection with 1011 without a ``recv`` running. Without it, neither happens."""
    from conftest import frame, read_client_frame

    answered = []

    def ping_then_go_silent(conn):
        conn.sendall(frame(9, b"there?"))
        conn.settimeout(0.5)
        try:
            while True:
                op, payload = read_client_frame(conn)
                if op == 10:
                    answered.append(payload)
                elif op == 8:
                    conn.sendall(frame(8, payload))
                    return
                # The client's keep-alive pings go unanswered.
        except (OSError, EOFError):
            pass

    for thread in (True, False):
        answered.clear()
        server = raw_server(ping_then_go_silent)
        ws = connect(server.url, ping_interval=0.2, ping_timeout=0.2, close_timeout=0.5, keepalive_thread=thread)
        time.sleep(1.0)  # busy: no recv
        if thread:
            assert answered == [b"there?"]
            assert ws.closed and ws.close_code == 1011, (ws.closed, ws.close_code)
        else:
            assert answered == [] and not ws.closed
        ws.close()


def test_keepalive_thread_reads_ahead_at_most_max_queue_messages(raw_server):
    """Messages read ahead are bounded: with the application busy, the thread holds at most
    ``max_queue`` of them and then stops reading, so the server's sends block (TCP pushes
    back); every message then arrives, in order."""
    from conftest import frame, read_client_frame

    n, size = 300, 256 << 10
    sent = []
    done = threading.Event()

    def flood(conn):
        for i in range(n):
            conn.sendall(frame(2, i.to_bytes(4, "big") + bytes(size - 4)))
            sent.append(i)
        done.set()
        while True:
            op, payload = read_client_frame(conn)
            if op == 8:
                conn.sendall(frame(8, payload))
                return

    server = raw_server(flood)
    ws = connect(server.url, keepalive_thread=True, max_queue=4, receive_timeout=10)
    time.sleep(1.0)  # busy: no recv
    # 75 MiB do not fit in the socket buffers: the server is still sending.
    assert not done.is_set() and len(sent) < n, len(sent)
    for i in range(n):
        m = ws.recv()
        assert len(m) == size and int.from_bytes(m[:4], "big") == i
    assert done.wait(5)
    ws.close()


def test_an_unsolicited_pong_is_not_taken_for_the_keepalive_one(raw_server):
    """``latency`` comes from the pong that answers the keep-alive ping (same payload), not
    from a pong the server sends unasked (RFC 6455 allows one, as a heartbeat)."""
    from conftest import frame, read_client_frame

    def unsolicited(conn):
        while read_client_frame(conn)[0] != 9:  # the client's keep-alive ping: not answered
            pass
        conn.sendall(frame(10, b"heartbeat") + frame(1, b"hi"))
        while True:
            op, payload = read_client_frame(conn)
            if op == 8:
                conn.sendall(frame(8, payload))
                return

    for thread in (True, False):
        ws = connect(raw_server(unsolicited).url, ping_interval=0.05, ping_timeout=5, keepalive_thread=thread)
        assert ws.recv(timeout=5) == "hi"
        assert ws.latency == 0.0
        ws.close()
