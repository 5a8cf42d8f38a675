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
    environment, honouring ``no_proxy``), or ``None`` to connect directly."""
    if proxy is None or proxy is False:
        return None
    if proxy is True:
        if urllib.request.proxy_bypass(f"{host}:{port}"):
            return None
        proxies = urllib.request.getproxies()
        secure = uri.startswith("wss:")
        found = proxies.get("wss" if secure else "ws") or proxies.get("https" if secure else "http")
        found = found or proxies.get("socks")
        if not found:
            return None
        proxy = found
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


def _check(head: bytes, proxy: str) -> None:
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise exc.InvalidHandshake(f"invalid response from proxy {proxy}: {status_line!r}")
    if not 200 <= int(parts[1]) < 300:
        raise exc.InvalidHandshake(f"proxy {proxy} refused the tunnel: {status_line}")


def tunnel(proxy: str, host: str, port: int, timeout: float | None, user_agent: str | None) -> socket.socket:
    """Open a tunnel through ``proxy`` (blocking); returns the connected socket."""
    addr, req = _request(proxy, host, port, user_agent)
    deadline = None if timeout is None else time.monotonic() + timeout
    sock = socket.create_connection(addr, timeout=timeout)
    try:
        sock.sendall(req)
        head = b""
        while b"\r\n\r\n" not in head:
            if deadline is not None:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = sock.recv(4096)
            if not chunk:
                raise exc.InvalidHandshake(f"proxy {proxy} closed the connection")
            head += chunk
            if len(head) > MAX_HEAD:
                raise exc.InvalidHandshake(f"proxy {proxy} sent an oversized response")
        _check(head, proxy)
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
                raise exc.InvalidHandshake(f"proxy {proxy} closed the connection")
            head += chunk
            if len(head) > MAX_HEAD:
                raise exc.InvalidHandshake(f"proxy {proxy} sent an oversized response")
        _check(head, proxy)
        return sock
    except BaseException:
        sock.close()
        raise
