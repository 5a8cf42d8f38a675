"""TLS with the caller's ``ssl.SSLContext`` for the sync drop-in.

weft's blocking client does TLS with rustls, which cannot take an OpenSSL context: the
certificates a context trusts are not all readable from it (``get_ca_certs`` lists only CA
certificates, not a self-signed server certificate loaded with ``load_verify_locations``),
and its client certificate, verify mode and hostname check are not readable at all. So when
``ssl=`` is a context, the TLS connection is Python's (``context.wrap_socket``: every setting
of the context applies, and verification errors are OpenSSL's ``SSLCertVerificationError``)
and two threads relay the plaintext to weft through a socket pair. Without ``ssl=`` (or with
``ssl=True``) weft's rustls with the system's roots is used and no thread is started.
"""

from __future__ import annotations

import socket
import ssl
import threading

CHUNK = 64 * 1024


def wrap(
    raw: socket.socket, ctx: ssl.SSLContext, server_hostname: str, timeout: float | None
) -> tuple[socket.socket, ssl.SSLSocket]:
    """TLS handshake on ``raw`` (a connected socket); returns weft's end of the plaintext pair
    and the ``SSLSocket`` (the connection's ``socket`` attribute)."""
    raw.settimeout(timeout)
    try:
        tls = ctx.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise
    tls.settimeout(None)
    ours, theirs = socket.socketpair()
    threading.Thread(target=_down, args=(tls, ours), name="weft-tls-down", daemon=True).start()
    threading.Thread(target=_up, args=(tls, ours), name="weft-tls-up", daemon=True).start()
    return theirs, tls


def _down(tls: ssl.SSLSocket, ours: socket.socket) -> None:
    """Server -> weft: decrypted bytes into the pair; EOF (or an error) ends weft's input."""
    try:
        while True:
            data = tls.recv(CHUNK)
            if not data:
                break
            ours.sendall(data)
    except OSError:
        pass
    finally:
        try:
            ours.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _up(tls: ssl.SSLSocket, ours: socket.socket) -> None:
    """weft -> server: plaintext from the pair, encrypted; weft closing ends the connection."""
    try:
        while True:
            data = ours.recv(CHUNK)
            if not data:
                break
            tls.sendall(data)
    except OSError:
        pass
    finally:
        for close in (lambda: tls.shutdown(socket.SHUT_RDWR), tls.close, ours.close):
            try:
                close()
            except OSError:
                pass
