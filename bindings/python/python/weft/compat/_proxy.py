"""HTTP proxies for the websockets drop-in: ``CONNECT host:port``, then the WebSocket (and TLS
for ``wss://``) runs through the tunnel on the returned socket.

Only ``http://`` proxies are supported (optionally with ``user:password@``, sent as Basic
``Proxy-Authorization``); ``https://`` (``proxy_ssl=``) and SOCKS proxies raise
``NotImplementedError``; other schemes ``InvalidProxy``, as in websockets.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import time
import urllib.parse
import urllib.request
from typing import Any

from . import _exceptions as exc

MAX_HEAD = 64 * 1024


def resolve(uri: str, proxy: Any, host: str, port: int) -> str | None:
    """The proxy URL to use for ``uri``, as websockets chooses it (``proxy=True``: from the
    environment, honouring ``no_proxy``; ``wss``, ``socks`` then ``https`` for ``wss://``,
    also ``http`` for ``ws://``), or ``None`` to connect directly. Called for each redirect
    hop: where a redirect leads may need another proxy, or none."""
    if proxy is None or proxy is False:
        return None
    if proxy is True:
        if urllib.request.proxy_bypass(f"{host}:{port}"):
            return None
        proxies = urllib.request.getproxies()
        schemes = ("wss", "socks", "https") if uri.startswith("wss:") else ("ws", "socks", "https", "http")
        found = next(((k, proxies[k]) for k in schemes if proxies.get(k)), None)
        if found is None:
            return None
        scheme, proxy = found
        if scheme == "socks" and proxy.startswith("http://"):
            proxy = "socks5h://" + proxy[len("http://") :]
    if not isinstance(proxy, str):
        raise TypeError(f"proxy must be a URL, True or None, not {type(proxy).__name__}")
    scheme = urllib.parse.urlsplit(proxy).scheme
    if scheme not in KNOWN_SCHEMES:
        raise exc.InvalidProxy(proxy, f"scheme {scheme} isn't supported")
    return proxy


#: The proxy schemes websockets knows; weft tunnels through ``http://`` ones only.
KNOWN_SCHEMES = ("http", "https", "socks5h", "socks5", "socks4a", "socks4")


def check(proxy: str | None, proxy_ssl: Any, unset: Any) -> None:
    """websockets' usage errors for ``proxy_ssl=``, then a ``NotImplementedError`` naming what
    weft cannot do (rather than connecting some other way than asked)."""
    scheme = None if proxy is None else urllib.parse.urlsplit(proxy).scheme
    if scheme == "http" and proxy_ssl is not unset and proxy_ssl is not None:
        raise ValueError("proxy_ssl argument is incompatible with an http:// proxy")
    if scheme == "https":
        if proxy_ssl is None:
            raise ValueError("proxy_ssl=None is incompatible with an https:// proxy")
        raise NotImplementedError(
            f"weft's websockets drop-in does not support https:// proxies (proxy={proxy}, proxy_ssl=)"
        )
    if scheme is not None and scheme.startswith("socks"):
        raise NotImplementedError(f"weft's websockets drop-in does not support SOCKS proxies (proxy={proxy})")


def _request(proxy: str, host: str, port: int, user_agent: str | None) -> tuple[tuple[str, int], bytes]:
    p = urllib.parse.urlsplit(proxy)
    if not p.hostname:
        raise exc.InvalidHandshake(f"invalid proxy URL {proxy!r}")
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if user_agent:
        lines.append(f"User-Agent: {user_agent}")
    if p.username is not None:
        cred = f"{urllib.parse.unquote(p.username)}:{urllib.parse.unquote(p.password or '')}"
        lines.append("Proxy-Authorization: Basic " + base64.b64encode(cred.encode()).decode())
    return (p.hostname, p.port or 80), ("\r\n".join(lines) + "\r\n\r\n").encode()


def _parse(head: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    """The proxy's answer (status, reason, headers), with the errors websockets' parser gives
    (``EOFError`` for an answer cut short, ``ValueError`` for a malformed one)."""
    if b"\r\n" not in head:
        raise EOFError("connection closed while reading HTTP status line")
    if b"\r\n\r\n" not in head:
        raise EOFError("connection closed while reading HTTP headers")
    status_line, _, rest = head.partition(b"\r\n")
    line = status_line.decode("utf-8", "backslashreplace")
    parts = status_line.split(b" ", 2)
    if len(parts) != 3:
        raise ValueError(f"invalid HTTP status line: {line}")
    protocol, code, reason = parts
    if protocol not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise ValueError(f"unsupported protocol; expected HTTP/1.1 or HTTP/1.0: {line}")
    if not code.isdigit() or len(code) != 3:
        raise ValueError(f"invalid status code; expected integer; got {code.decode('utf-8', 'backslashreplace')}")
    headers = []
    for raw in rest.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if not raw:
            continue
        name, sep, value = raw.partition(b":")
        if not sep:
            raise ValueError(f"invalid HTTP header line: {raw.decode('utf-8', 'backslashreplace')}")
        headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return int(code), reason.decode("iso-8859-1"), headers


def _check(head: bytes) -> None:
    """Raise websockets' errors for the proxy's answer to CONNECT: ``InvalidProxyMessage``
    (with the parser's error as its cause) or ``InvalidProxyStatus`` for a status not 2xx."""
    try:
        status, reason, headers = _parse(head)
    except (EOFError, ValueError) as e:
        raise exc.InvalidProxyMessage("did not receive a valid HTTP response from proxy") from e
    if not 200 <= status < 300:
        raise exc.InvalidProxyStatus(exc.proxy_response(status, reason, headers))


def _oversized() -> BaseException:
    e = exc.InvalidProxyMessage("did not receive a valid HTTP response from proxy")
    e.__cause__ = ValueError("the proxy's response head is over 64 KiB")
    return e


def tunnel(
    proxy: str, host: str, port: int, timeout: float | None, user_agent: str | None, **socket_kwargs: Any
) -> socket.socket:
    """Open a tunnel through ``proxy`` (blocking); returns the connected socket.
    ``socket_kwargs`` (``source_address``...) go to ``socket.create_connection``, as in
    websockets."""
    addr, req = _request(proxy, host, port, user_agent)
    deadline = None if timeout is None else time.monotonic() + timeout
    socket_kwargs.setdefault("timeout", timeout)
    sock = socket.create_connection(addr, **socket_kwargs)
    try:
        sock.sendall(req)

        head = b""
        while b"\r\n\r\n" not in head:
            if deadline is not None:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                chunk = sock.recv(4096)
            except socket.timeout:
                raise TimeoutError("timed out while connecting to HTTP proxy") from None
            if not chunk:
                break
            head += chunk
            if len(head) > MAX_HEAD:
                raise _oversized()
        _check(head)
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


async def tunnel_async(proxy: str, host: str, port: int, user_agent: str | None) -> socket.socket:
    """Open a tunnel through ``proxy`` on the running loop; returns the connected socket."""
    loop = asyncio.get_running_loop()
    addr, req = _request(proxy, host, port, user_agent)
    infos = await loop.getaddrinfo(addr[0], addr[1], type=socket.SOCK_STREAM)
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, sockaddr)
        await loop.sock_sendall(sock, req)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk:
                break
            head += chunk
            if len(head) > MAX_HEAD:
                raise _oversized()
        _check(head)
        return sock
    except BaseException:
        sock.close()
        raise
