"""Behaviour of the sync client, the asyncio client and the asyncio client on uvloop, over real
sockets: against `weft echo`, a Python `websockets` server and scripted raw TCP servers."""

from __future__ import annotations

import socket
import time

import pytest

import weft
from adapters import AsyncAdapter, SyncAdapter
from conftest import accept_response, frame, read_client_frame
from weft.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
)


@pytest.fixture(params=["sync", "asyncio", "uvloop"])
def client(request):
    a = SyncAdapter() if request.param == "sync" else AsyncAdapter(use_uvloop=request.param == "uvloop")
    yield a
    a.close()


MESSAGES = ["hello", "", "ünïcödé ✓ 🚀", b"", b"\x00\x01\xff" * 100, "x" * 70_000, bytes(range(256)) * 4096]


@pytest.mark.parametrize("server", ["weft_echo", "py_server"])
def test_echo_roundtrip(client, server, request):
    url = request.getfixturevalue(server)
    with client.connect(url + "/echo") as ws:
        for m in MESSAGES:
            ws.send(m)
            got = ws.recv()
            assert type(got) is type(m) and got == m


@pytest.mark.parametrize("server", ["weft_echo", "py_server"])
def test_pipelined_then_drained_in_order(client, server, request):
    url = request.getfixturevalue(server)
    with client.connect(url + "/echo") as ws:
        for i in range(500):
            ws.send(f"m{i}")
        assert [ws.recv() for _ in range(500)] == [f"m{i}" for i in range(500)]


@pytest.mark.parametrize("server", ["weft_echo", "py_server"])
def test_permessage_deflate(client, server, request):
    url = request.getfixturevalue(server)
    with client.connect(url + "/echo", compression=True, max_size=None) as ws:
        headers = dict(ws.response_headers)
        assert "permessage-deflate" in headers.get("sec-websocket-extensions", "")
        big = "compress me " * 200_000
        for m in ("small", big, big.encode(), "again"):
            ws.send(m)
            assert ws.recv() == m


def test_headers_and_subprotocol(client, py_server):
    with client.connect(py_server + "/headers", headers={"X-Test": "abc 123"}, subprotocols=["other", "chat.v2"]) as ws:
        assert ws.recv() == "abc 123"
        assert ws.subprotocol == "chat.v2"
    with client.connect(py_server + "/headers", headers=[("X-Test", "pairs")]) as ws:
        assert ws.recv() == "pairs"
        assert ws.subprotocol is None


def test_normal_close_ends_iteration(client, py_server):
    ws = client.connect(py_server + "/send/3")
    assert list(ws) == ["message 0", "message 1", "message 2"]
    with pytest.raises(ConnectionClosedOK) as e:
        ws.recv()
    assert (e.value.code, e.value.reason) == (1000, "done")
    assert ws.close_code == 1000 and ws.close_reason == "done" and ws.closed
    with pytest.raises(ConnectionClosedOK):
        ws.send("too late")


def test_close_code_and_reason_from_server(client, py_server):
    ws = client.connect(py_server + "/close/4001/go%20away")
    with pytest.raises(ConnectionClosedError) as e:
        ws.recv()
    assert (e.value.code, e.value.reason) == (4001, "go away")
    assert isinstance(e.value, ConnectionClosed) and isinstance(e.value, RuntimeError)
    with pytest.raises(ConnectionClosedError):
        list(ws)


def test_client_close_is_clean_and_idempotent(client, weft_echo):
    ws = client.connect(weft_echo)
    ws.close(1000, "bye")
    ws.close()
    assert ws.closed and ws.close_code == 1000
    with pytest.raises(ConnectionClosedOK):
        ws.recv()


def test_receive_timeout_keeps_connection_usable(client, weft_echo):
    ws = client.connect(weft_echo, receive_timeout=0.2)
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        ws.recv()
    assert 0.15 < time.monotonic() - t < 5
    ws.send("still there")
    assert ws.recv() == "still there"
    ws.close()


def test_handshake_refused_surfaces_status(client, py_server):
    with pytest.raises(InvalidStatus) as e:
        client.connect(py_server + "/reject")
    assert e.value.status_code == 403
    assert e.value.response.status_code == 403
    assert e.value.body == b"go away\n"
    assert isinstance(e.value, InvalidHandshake)


def test_invalid_uri(client):
    for url in ("http//nope", "ftp://127.0.0.1/", "ws://"):
        with pytest.raises(InvalidURI):
            client.connect(url)
    with pytest.raises(ValueError):
        client.connect("mailto:x@y")


def test_connection_refused_is_oserror(client):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ConnectionRefusedError):
        client.connect(f"ws://127.0.0.1:{port}/")


def test_connect_timeout_when_handshake_never_answered(client, raw_server):
    srv = raw_server(lambda conn: time.sleep(3), handshake=False)
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        client.connect(srv.url, connect_timeout=0.3)
    assert time.monotonic() - t < 2.5


def test_connect_timeout_is_one_deadline_for_an_answer_dripped_a_byte_at_a_time(client, raw_server):
    # Each byte comes well within the timeout, the whole answer never does: the sync client
    # gave every read the time left when TCP connected, so the drip stretched it to seconds.
    def script(conn):
        conn.recv(4096)
        try:
            for b in b"HTTP/1.1 101 Switching Protocols\r\nX-Drip: " + b"x" * 100:
                conn.sendall(bytes([b]))
                time.sleep(0.05)
        except OSError:
            pass

    srv = raw_server(script, handshake=False)
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        client.connect(srv.url, connect_timeout=0.5)
    assert time.monotonic() - t < 1.5


def test_server_closing_during_handshake(client, raw_server):
    def script(conn):
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 101 Switching")

    with pytest.raises(InvalidMessage):
        client.connect(raw_server(script, handshake=False).url)


def test_server_closes_mid_message(client, raw_server):
    def script(conn):
        conn.sendall(frame(0x1, b"complete"))
        conn.sendall(frame(0x2, b"x" * 1000)[:300])
        conn.shutdown(socket.SHUT_RDWR)

    ws = client.connect(raw_server(script).url)
    assert ws.recv() == "complete"
    with pytest.raises(ConnectionClosedError) as e:
        ws.recv()
    assert e.value.code == 1006


def test_invalid_utf8_from_server(client, raw_server):
    def script(conn):
        conn.sendall(frame(0x1, b"ok"))
        conn.sendall(frame(0x1, b"bad \xff\xfe utf8"))
        time.sleep(1)

    ws = client.connect(raw_server(script).url)
    assert ws.recv() == "ok"
    with pytest.raises(ConnectionClosedError) as e:
        ws.recv()
    assert e.value.code == 1007


def test_oversized_message_closes_1009(client, raw_server):
    def script(conn):
        conn.sendall(frame(0x2, b"y" * 100))
        conn.sendall(frame(0x2, b"z" * 5000))
        time.sleep(1)

    ws = client.connect(raw_server(script).url, max_size=1000)
    assert ws.recv() == b"y" * 100
    with pytest.raises(ConnectionClosedError) as e:
        ws.recv()
    assert e.value.code == 1009


def test_protocol_violation_closes_1002(client, raw_server):
    def script(conn):
        conn.sendall(bytes([0x83, 0x00]))  # reserved opcode 3
        time.sleep(1)

    ws = client.connect(raw_server(script).url)
    with pytest.raises(ConnectionClosedError) as e:
        ws.recv()
    assert e.value.code == 1002


def test_keepalive_closes_1011_without_pong(client, raw_server):
    def script(conn):
        time.sleep(3)  # never reads: no pong ever comes

    ws = client.connect(raw_server(script).url, ping_interval=0.1, ping_timeout=0.3, close_timeout=0.3)
    t = time.monotonic()
    with pytest.raises(ConnectionClosedError) as e:
        ws.recv(timeout=5)
    assert e.value.code == 1011
    assert time.monotonic() - t < 3


def test_ping_measures_latency(client, weft_echo):
    with client.connect(weft_echo) as ws:
        r = ws.ping()
        if client.name == "sync":
            ws.send("after ping")
            assert ws.recv() == "after ping"  # the pong is read on the way
        else:
            assert 0 < r < 1
        assert 0 < ws.latency < 1


def test_wss_with_ca_file(client, tls_server):
    url, ca = tls_server
    with client.connect(url, ca_file=ca) as ws:
        ws.send("secure")
        assert ws.recv() == "secure"


def test_wss_to_weft_echo_over_tls(client, weft_tls_echo):
    # weft's own server over TLS (--tls-cert/--tls-key), trusted through a custom CA.
    url, ca = weft_tls_echo
    with client.connect(url, ca_file=ca) as ws:
        ws.send("secure " * 20_000)
        assert ws.recv() == "secure " * 20_000


def test_wss_untrusted_certificate_is_refused(client, tls_server):
    url, _ = tls_server
    with pytest.raises((InvalidHandshake, OSError)):
        client.connect(url)


def test_wss_garbage_record_during_handshake_is_a_handshake_error(client, tls_server):
    """A TLS record that fails to decrypt while the upgrade response is awaited: the sync client
    reported it as InvalidURI before."""
    import os
    import ssl
    import threading
    from pathlib import Path

    _, ca = tls_server
    d = Path(ca).parent
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "srv.pem", d / "srv.key")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(65536)  # the upgrade request
            # Bypass TLS: an application-data record that cannot decrypt.
            with socket.socket(fileno=os.dup(tls.fileno())) as raw:
                raw.sendall(b"\x17\x03\x03\x00\x20" + bytes(32))
                time.sleep(1)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with pytest.raises(InvalidHandshake) as e:
            client.connect(f"wss://localhost:{port}/", ca_file=ca)
        assert not isinstance(e.value, InvalidURI)
    finally:
        t.join(5)
        listener.close()


def test_send_rejects_other_types(client, weft_echo):
    with client.connect(weft_echo) as ws:
        with pytest.raises(TypeError):
            ws.send(12345)
        ws.send(bytearray(b"ba"))
        assert ws.recv() == b"ba"
        ws.send(memoryview(b"mv"))
        assert ws.recv() == b"mv"


def test_version():
    assert weft.__version__


@pytest.mark.parametrize("with_handshake", [False, True], ids=["after-handshake", "in-handshake-segment"])
def test_message_answered_before_a_following_violation_closes(client, raw_server, with_handshake):
    """A valid message followed (in the same TCP segment) by a bad frame: the application's
    answer to the message goes out before the 1002 close (Autobahn's "strict" behaviour)."""
    seen = []

    def script(conn):
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        bad = bytes([0xC1, 0x00])  # RSV1 set, no extension negotiated
        burst = frame(0x1, b"hello") + bad
        if with_handshake:
            conn.sendall(accept_response(head) + burst)
        else:
            conn.sendall(accept_response(head))
            time.sleep(0.2)
            conn.sendall(burst)
        for _ in range(2):
            seen.append(read_client_frame(conn))

    srv = raw_server(script, handshake=False)
    ws = client.connect(srv.url)
    ws.send(ws.recv())
    with pytest.raises(ConnectionClosedError) as e:
        ws.recv()
    assert e.value.code == 1002
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen[0] == (0x1, b"hello")
    assert seen[1][0] == 0x8 and seen[1][1][:2] == (1002).to_bytes(2, "big")
