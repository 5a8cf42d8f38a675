"""TLS with the caller's ``ssl.SSLContext`` for the sync drop-in.

weft's blocking client does TLS with rustls, which cannot take an OpenSSL context: the
certificates a context trusts are not all readable from it (``get_ca_certs`` lists only CA
certificates, not a self-signed server certificate loaded with ``load_verify_locations``),
and its client certificate, verify mode and hostname check are not readable at all. So when
``ssl=`` is a context, the TLS connection is Python's (``context.wrap_socket``: every setting
of the context applies, and verification errors are OpenSSL's ``SSLCertVerificationError``)
and one thread relays the plaintext to weft through a socket pair. Without ``ssl=`` (or with
``ssl=True``) weft's rustls with the system's roots is used and no thread is started.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import threading
import time
from typing import Any

CHUNK = 64 * 1024


def wrap(
    raw: socket.socket, ctx: ssl.SSLContext, server_hostname: str, timeout: float | None
) -> tuple[socket.socket, ssl.SSLSocket, tuple[Any, Any]]:
    """TLS handshake on ``raw`` (a connected socket); returns weft's end of the plaintext pair,
    the ``SSLSocket`` (the connection's ``socket`` attribute) and its local and remote
    addresses (read before the relay starts: it closes the socket when the connection ends)."""
    raw.settimeout(timeout)
    try:
        tls = ctx.wrap_socket(raw, server_hostname=server_hostname)
        addresses = (tls.getsockname(), tls.getpeername())
    except BaseException:
        raw.close()
        raise
    ours, theirs = socket.socketpair()
    threading.Thread(target=_relay, args=(tls, ours), name="weft-tls-relay", daemon=True).start()
    return theirs, tls, addresses


#: Seconds the relay waits, once weft has closed its end, for its last bytes to go out and
#: for the server to close.
DRAIN = 5.0

#: Bytes held in each direction before the relay stops reading that side.
LIMIT = 4 * CHUNK


def _relay(tls: ssl.SSLSocket, ours: socket.socket) -> None:
    """Relay both ways in one thread, non-blocking: an OpenSSL connection must not be read
    in one thread while another writes it (two blocking relay threads lost a handshake
    answer under load). The server's end of stream ends weft's input; weft closing ends
    the TLS connection."""
    tls.setblocking(False)
    ours.setblocking(False)
    sel = selectors.DefaultSelector()
    to_server = bytearray()
    to_weft = bytearray()
    server_open = weft_open = True
    # False once weft has closed its end (a send there fails with EPIPE): what the server still
    # sends is read and dropped, and what weft wrote before closing (its close frame, say after
    # a message over max_size) still goes out.
    weft_reading = True
    try:
        while weft_open:
            # Server -> weft (decrypted records may be buffered in the SSL object: read until
            # it wants more bytes).
            while server_open and len(to_weft) < LIMIT:
                try:
                    data = tls.recv(CHUNK)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                except OSError:
                    data = b""
                if not data:
                    server_open = False
                    break
                to_weft += data
            if to_weft and not weft_reading:
                to_weft.clear()
            if to_weft:
                try:
                    del to_weft[: ours.send(to_weft)]
                except BlockingIOError:
                    pass
                except OSError:
                    weft_reading = False
                    to_weft.clear()
            if not server_open and not to_weft:
                try:
                    ours.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            # weft -> server.
            while len(to_server) < LIMIT:
                try:
                    data = ours.recv(CHUNK)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    weft_open = False
                    break
                to_server += data
            if to_server and server_open:
                try:
                    del to_server[: tls.send(to_server)]
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except OSError:
                    server_open = False
            if not server_open:
                to_server.clear()
            if not weft_open:
                break
            events = []
            if server_open and len(to_weft) < LIMIT:
                events.append((tls, selectors.EVENT_READ))
            if to_server:
                events.append((tls, selectors.EVENT_WRITE))
            if len(to_server) < LIMIT:
                events.append((ours, selectors.EVENT_READ))
            if to_weft:
                events.append((ours, selectors.EVENT_WRITE))
            masks: dict[socket.socket, int] = {}
            for sock, ev in events:
                masks[sock] = masks.get(sock, 0) | ev
            for sock, mask in masks.items():
                sel.register(sock, mask)
            # Level-triggered, with a timeout as a backstop for a want-write that wants a read.
            sel.select(timeout=0.5)
            for sock in masks:
                sel.unregister(sock)
        # weft closed: what it sent last goes out, then the TLS connection ends once the server
        # has closed its side (or after DRAIN seconds). Closing with the server's data unread
        # would send a TCP reset, and the server could lose weft's close frame with it.
        if server_open:
            tls.setblocking(True)
            tls.settimeout(DRAIN)
            if to_server:
                tls.sendall(to_server)
            deadline = time.monotonic() + DRAIN
            while time.monotonic() < deadline and tls.recv(CHUNK):
                tls.settimeout(max(0.001, deadline - time.monotonic()))
    except OSError:
        pass
    finally:
        sel.close()
        for close in (lambda: tls.shutdown(socket.SHUT_RDWR), tls.close, ours.close):
            try:
                close()
            except OSError:
                pass
