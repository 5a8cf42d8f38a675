"""asyncio client for the weft engine's protocol (docs/PROTOCOL.md), with reconnection.

>>> from weft.engine_client import connect
>>> async def main():                                        # doctest: +SKIP
...     async with connect("ws://127.0.0.1:8080/ws", token="eyJ...") as c:
...         await c.subscribe(["chat.lobby"])
...         await c.publish("chat.lobby", {"text": "hi"})
...         async for event in c:
...             print(event.topic, event.offset, event.payload)

When the connection drops (anything but :meth:`EngineClient.close`), the client reconnects with
exponential backoff and full jitter (every failure is retried, a cut handshake included, except a
refused token: 401/403 ends the iteration with :class:`InvalidStatus`), subscribes again to
everything it had, and asks the server to resume each exact topic from the last offset it
delivered, so events missed while away are replayed in order before live ones (``recovered`` in
:attr:`EngineClient.last_resume` says whether the server still had them). For a pattern
subscription it resumes every concrete topic it has delivered events of under the pattern, and
then delivers a ``may_have_missed`` :class:`Event` for the pattern: topics under it that it had
never seen may have had events while the client was away (a pattern cannot be resumed). Requests
wait for their reply; errors raise :class:`EngineError` with the protocol's code.

With ``secure="encrypt"`` (or ``"sign"``) the client starts the engine's secure channel on each
connection, right after the ``welcome``: every message after it, both ways, is encrypted with
AES-256-GCM (or signed with HMAC-SHA256) under keys agreed by ephemeral ECDH P-256. Give
``server_key`` (the base64 public key ``weft serve --secure-key`` logs) to refuse a server, or a
middlebox, that cannot sign the handshake with it. A server that requires the channel gets it
even when not asked. See docs/PROTOCOL.md, "Secure channel", for what it protects and what not.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterable, Iterator

from . import _weft, async_client
from .exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus

__all__ = ["connect", "connect_sync", "EngineClient", "SyncEngineClient", "Event", "EngineError", "Quality", "Endpoint"]



def _filter_key(flt: dict[str, Any] | None) -> str:
    """A filter as a grouping key ("" for none)."""
    return "" if flt is None else json.dumps(flt, sort_keys=True, separators=(",", ":"))

class _SecureFailure(ValueError):
    """A frame on a secured connection that is not sealed, or fails to open."""


class EngineError(Exception):
    """An ``error`` reply: ``code`` (see the protocol's error codes) and ``message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Event:
    """Something the server pushed: ``type`` is ``event``, ``snapshot``, ``join``, ``leave``,
    ``lagged`` or ``reset``; or a notice of the client itself after a reconnect:
    ``may_have_missed``.

    For ``snapshot`` (a subscribe with ``snapshot=True``; docs/PROTOCOL.md, "Snapshots"):
    ``topic``, ``offset``, ``epoch`` and ``payload``, the topic's state including every event up
    to ``offset`` (``None`` with ``raw`` lacking ``data``: the topic has none); or ``error``
    (``{"code": 4011, "message"}``) when it could not be had. Events at or below ``offset``
    are already in the state: the client skips them.

    For ``event``: ``topic``, ``offset``, ``epoch``, ``id``, ``time`` and ``payload``. For
    ``join``/``leave``: ``topic`` and ``member``. For ``lagged``: ``dropped``. For ``reset``
    (cluster mode: the topic's stream continues from ``offset``/``epoch`` and events before it
    may be missing, ``recovered: false``): ``topic``, ``offset``, ``epoch``; the client resumes
    from there on its next reconnect.

    ``may_have_missed`` (after every reconnect, before the replayed events): ``topic`` is a
    subscription whose events of the time away may not all follow — a pattern (events of topics
    under it that the client had never delivered cannot be resumed), or an exact topic whose
    resume the server could not serve. ``payload`` is ``{"resumed": [...], "not_recovered":
    [...]}``: the concrete topics whose missed events do follow (in order, before live ones),
    and those whose could not be recovered.
    """

    type: str
    topic: str | None = None
    payload: Any = None
    offset: int | None = None
    epoch: str | None = None
    id: str | None = None
    time: int | None = None
    member: dict | None = None
    dropped: int | None = None
    error: dict | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)


_END = object()


@dataclass
class Endpoint:
    """One URL of the client's endpoints and how it has fared: ``failures`` in a row (0 once a
    connection succeeds) and ``latency``, a moving average of how long connecting took (ms),
    ``None`` until it has been reached. The client reconnects to the healthiest: fewest
    failures, then lowest latency, then the order given."""

    url: str
    failures: int = 0
    latency: float | None = None

    def _score(self, index: int) -> tuple[int, float, int]:
        return (self.failures, self.latency if self.latency is not None else 1e9, index)


class _TokenBucket:
    """Outbound requests at most ``rate`` per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.at = time.monotonic()

    async def take(self) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


@dataclass(frozen=True)
class Quality:
    """The connection's quality, measured with application-level pings every
    ``quality_interval`` seconds over the last five: ``rtt`` (mean round trip, ms), ``jitter``
    (mean difference between consecutive round trips, ms), ``missed`` (pings without an answer
    within ``pong_timeout``) and ``level``: ``poor`` (2+ missed, or rtt ≥ 1 s), ``fair`` (1
    missed, or rtt ≥ 300 ms), ``good`` (rtt ≥ 100 ms or jitter ≥ 50 ms), else ``excellent`` —
    the same rules as the TypeScript client."""

    rtt: float
    jitter: float
    missed: int
    level: str


def _quality(rtts: list[float], misses: list[bool]) -> Quality:
    n = len(rtts)
    mean = sum(rtts) / n if n else 0.0
    jitter = sum(abs(rtts[i] - rtts[i - 1]) for i in range(1, n)) / (n - 1) if n > 1 else 0.0
    missed = sum(misses)
    if missed >= 2 or mean >= 1000:
        level = "poor"
    elif missed == 1 or mean >= 300:
        level = "fair"
    elif mean >= 100 or jitter >= 50:
        level = "good"
    else:
        level = "excellent"
    return Quality(round(mean, 1), round(jitter, 1), missed, level)


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether ``pattern`` (NATS convention: ``*`` one segment, a final ``>`` one or more)
    matches the concrete ``topic``."""
    parts = topic.split(".")
    segs = pattern.split(".")
    for i, seg in enumerate(segs):
        if seg == ">" and i == len(segs) - 1:
            return len(parts) > i
        if i >= len(parts) or (seg != "*" and seg != parts[i]):
            return False
    return len(parts) == len(segs)


def is_pattern(topic: str) -> bool:
    return any(seg in ("*", ">") for seg in topic.split("."))


class EngineClient:
    """A connection to the engine that survives reconnects. Made by :func:`connect`."""

    def __init__(
        self,
        url: str | Iterable[str],
        token: str | None,
        *,
        reconnect: bool,
        min_delay: float,
        max_delay: float,
        max_queue: int,
        connect_timeout: float | None,
        options: dict[str, Any],
        quality_interval: float | None = 10.0,
        pong_timeout: float = 5.0,
        on_quality: Callable[[Quality], None] | None = None,
        rate_limit: float | None = None,
        rate_burst: int = 10,
        breaker_threshold: int | None = None,
        breaker_cooldown: float = 30.0,
        secure: str | None = None,
        server_key: str | bytes | None = None,
    ) -> None:
        if secure not in (None, "encrypt", "sign"):
            raise ValueError('secure must be None, "encrypt" or "sign"')
        if isinstance(server_key, str):
            server_key = base64.b64decode(server_key, validate=True)
        if server_key is not None and len(server_key) != 65:
            raise ValueError("server_key must be a P-256 public key: 65 bytes, or their base64")
        #: ``"encrypt"`` or ``"sign"``: the secure channel asked for on every connection (a
        #: pinned ``server_key`` alone asks for ``"encrypt"``).
        self.secure = secure or ("encrypt" if server_key is not None else None)
        self._server_key = server_key
        self._channel: Any = None  # the current connection's _weft.SecureChannel, once secured
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("connect() needs at least one URL")
        #: The endpoints, in the order given, with their health.
        self.endpoints = [Endpoint(u) for u in urls]
        #: The URL of the current (or last) connection.
        self.url = urls[0]
        #: ``closed`` (connecting normally), ``open`` (``breaker_threshold`` failed attempts
        #: in a row: no attempt for ``breaker_cooldown`` seconds) or ``half-open`` (one round
        #: after the pause). Off (always ``closed``) without ``breaker_threshold``.
        self.breaker = "closed"
        #: How often the breaker opened.
        self.breaker_trips = 0
        self.breaker_threshold = max(1, breaker_threshold) if breaker_threshold else None
        self.breaker_cooldown = breaker_cooldown
        self._failed_in_a_row = 0
        self._bucket = _TokenBucket(rate_limit, rate_burst) if rate_limit else None
        self.token = token
        self.reconnect = reconnect
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.connect_timeout = connect_timeout
        self._options = options
        self._ws: async_client.AsyncWebSocket | None = None
        self._events: asyncio.Queue = asyncio.Queue(max_queue)
        self._pending: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self._topics: dict[str, bool] = {}  # subscribed topic or pattern -> presence flag
        self._filters: dict[str, dict[str, Any]] = {}  # topic or pattern -> its filter, if any
        self._snapshots: set[str] = set()  # exact topics subscribed with snapshot=True
        self._positions: dict[str, dict[str, Any]] = {}  # exact topic -> {"offset", "epoch"}
        self._reader: asyncio.Task | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._ended = False
        self._error: BaseException | None = None
        #: The ``welcome`` message of the current connection.
        self.welcome: dict[str, Any] = {}
        #: Reconnections so far.
        self.reconnects = 0
        #: The ``subscribed`` results of the last resubscription after a reconnect.
        self.last_resume: list[dict[str, Any]] = []
        #: The latest :class:`Quality`, after the first measurement (``None`` before).
        self.quality: Quality | None = None
        self.quality_interval = quality_interval
        self.pong_timeout = pong_timeout
        self._on_quality = on_quality
        self._rtts: list[float] = []
        self._misses: list[bool] = []
        self._missed_in_a_row = 0
        self._measurer: asyncio.Task | None = None

    # ---- connection --------------------------------------------------------------------------

    def _ranked(self) -> list[Endpoint]:
        return [e for _, e in sorted((e._score(i), e) for i, e in enumerate(self.endpoints))]

    async def _open_best(self) -> None:
        """Connect to the healthiest endpoint that answers, trying each once in order of
        health; raises the last failure when none does (a refused token at once)."""
        last: BaseException | None = None
        for ep in self._ranked():
            t0 = time.monotonic()
            try:
                await self._open(ep.url)
            except InvalidStatus as e:
                ep.failures += 1
                if e.status_code in (401, 403):
                    raise
                last = e
                continue
            except Exception as e:
                ep.failures += 1
                last = e
                continue
            ms = (time.monotonic() - t0) * 1000
            ep.latency = ms if ep.latency is None else 0.7 * ep.latency + 0.3 * ms
            ep.failures = 0
            self.url = ep.url
            return
        assert last is not None
        raise last

    async def _open(self, url: str | None = None) -> None:
        headers = dict(self._options.pop("headers", None) or {})
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        self._options["headers"] = headers
        ws = await async_client.connect(
            url or self.url,
            self.connect_timeout,
            None,
            subprotocols=["weft.v1.json"],
            **self._options,
        )
        try:
            welcome = json.loads(await ws.recv(self.connect_timeout))
        except BaseException:
            ws._p.abort()
            raise
        if welcome.get("type") != "welcome":
            await ws.close(1002, "expected welcome")
            raise EngineError(4000, f"expected welcome, got {welcome!r}")
        mode = self.secure or ("encrypt" if welcome.get("secure") == "require" else None)
        channel = None
        if mode is not None:
            try:
                channel = await self._secure(ws, mode, welcome)
            except BaseException:
                ws._p.abort()
                raise
        self._channel = channel
        self._ws = ws
        self.welcome = welcome
        self._missed_in_a_row = 0
        self._connected.set()

    async def _secure(self, ws: async_client.AsyncWebSocket, mode: str, welcome: dict[str, Any]) -> Any:
        """The secure handshake on a new connection, before anything else is sent: the
        established channel, or :class:`EngineError` (4012 when refused or not signed by the
        pinned key)."""
        hs = _weft.SecureHandshake(mode)
        key = base64.b64encode(hs.public_key).decode()
        await ws.send(json.dumps({"type": "secure", "id": "secure", "mode": mode, "key": key}, separators=(",", ":")))
        reply = json.loads(await ws.recv(self.connect_timeout))
        if reply.get("type") == "error":
            raise EngineError(reply.get("code", 5000), reply.get("message", ""))
        if reply.get("type") != "secured":
            raise EngineError(4000, f"expected secured, got {reply.get('type')!r}")
        sig = reply.get("signature")
        try:
            return hs.finish(
                base64.b64decode(reply["key"]),
                welcome.get("session", ""),
                None if sig is None else base64.b64decode(sig),
                self._server_key,
            )
        except (ValueError, KeyError, TypeError) as e:
            raise EngineError(4012, f"secure channel: {e}") from None

    def _encode(self, msg: dict[str, Any]) -> str | bytes:
        text = json.dumps(msg, separators=(",", ":"))
        ch = self._channel
        return text if ch is None else ch.seal(text.encode())

    def _decode(self, raw: str | bytes) -> Any:
        ch = self._channel
        if ch is not None:
            if isinstance(raw, str):
                raise _SecureFailure("secure channel: a message in clear")
            try:
                raw = ch.open(raw)
            except ValueError as e:  # altered, replayed, out of sequence, other keys
                raise _SecureFailure(f"secure channel: {e}") from None
        return json.loads(raw)

    async def _start(self) -> EngineClient:
        await self._open_best()
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read_loop())
        if self.quality_interval:
            self._measurer = loop.create_task(self._measure_loop())
        return self

    async def _measure_loop(self) -> None:
        """Ping every ``quality_interval`` while connected and keep :attr:`quality` current;
        two pings in a row without an answer mean the connection is dead even if the socket has
        not noticed: it is dropped, and the client reconnects."""
        interval = self.quality_interval or 10.0
        while not self._closing and not self._ended:
            await asyncio.sleep(interval)
            ws = self._ws
            if not self._connected.is_set() or ws is None or self._events.full():
                # (A full queue stops the reader: the answer could not be read, which says
                # nothing about the connection.)
                continue
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(self._request_now({"type": "ping"}), self.pong_timeout)
                rtt: float | None = (time.monotonic() - t0) * 1000
                self._missed_in_a_row = 0
            except (asyncio.TimeoutError, TimeoutError):
                rtt = None
                self._missed_in_a_row += 1
            except Exception:
                continue  # the connection went meanwhile: the reconnect starts over
            if rtt is not None:
                self._rtts = (self._rtts + [rtt])[-5:]
            self._misses = (self._misses + [rtt is None])[-5:]
            self.quality = _quality(self._rtts, self._misses)
            if self._on_quality is not None:
                try:
                    self._on_quality(self.quality)
                except Exception:
                    pass  # the application's callback must not stop the measurements
            if self._missed_in_a_row >= 2 and ws is self._ws:
                self._missed_in_a_row = 0
                ws._p.abort()

    async def _read_loop(self) -> None:
        try:
            while True:
                ws = self._ws
                assert ws is not None
                try:
                    async for raw in ws:
                        ev = self._dispatch(self._decode(raw))
                        if ev is not None:
                            # A full queue stops this loop, so the connection stops being read
                            # (TCP backpressure; the server's slow-consumer policy decides).
                            await self._events.put(ev)
                    if self._closing or not self.reconnect:
                        break
                except ConnectionClosed as e:
                    if self._closing or not self.reconnect:
                        self._error = None if isinstance(e, ConnectionClosedOK) else e
                        break
                except (OSError, TimeoutError, ValueError) as e:
                    # Not a clean end (a broken message, a transport error): drop this
                    # connection and reconnect like after any other loss.
                    if isinstance(e, _SecureFailure):
                        # Say why (4412), briefly: whatever altered the frame may not pass it on.
                        try:
                            await asyncio.wait_for(ws.close(4412, "secure channel"), 1.0)
                        except Exception:
                            pass
                    ws._p.abort()
                    if self._closing or not self.reconnect:
                        self._error = e
                        break
                self._connected.clear()
                self._fail_pending(ConnectionError("connection lost; the request may not have been processed"))
                # The endpoint just lost counts as failed once: another healthy one goes first.
                for ep in self.endpoints:
                    if ep.url == self.url:
                        ep.failures += 1
                if not await self._reconnect():
                    break
        except BaseException as e:
            # Whatever ends this task (a bug, a cancellation) ends the iteration with it rather
            # than leaving `async for` waiting forever.
            if self._error is None and not self._closing:
                self._error = e if isinstance(e, Exception) else ConnectionError("the client's reader was cancelled")
            raise
        finally:
            if not self._closing and self._ws is not None:
                self._ws._p.abort()  # ended for good: do not leave the connection open
            self._connected.clear()
            self._fail_pending(self._error or ConnectionError("connection closed"))
            self._ended = True
            try:
                self._events.put_nowait(_END)
            except asyncio.QueueFull:
                pass  # the consumer finds the end through `_ended` once the queue is drained

    async def _reconnect(self) -> bool:
        attempt = 0
        while not self._closing:
            # Full jitter: a random delay up to the exponential bound, so a server restart
            # is not met by every client at the same instant.
            bound = min(self.max_delay, self.min_delay * (2**attempt))
            await asyncio.sleep(random.uniform(0, bound))
            attempt += 1
            if self.breaker_threshold is not None and self._failed_in_a_row >= self.breaker_threshold:
                # Every endpoint keeps failing: stop the reconnection storm for a while, then
                # let one attempt through (half-open).
                self.breaker = "open"
                self.breaker_trips += 1
                await asyncio.sleep(self.breaker_cooldown)
                if self._closing:
                    return False
                self.breaker = "half-open"
                self._failed_in_a_row = self.breaker_threshold - 1
            try:
                await self._open_best()
            except InvalidStatus as e:
                self._failed_in_a_row += len(self.endpoints)
                if e.status_code in (401, 403):  # the token is refused: retrying cannot help
                    self._error = e
                    return False
                continue
            except Exception:
                # Everything else is retried: refused or reset connections, timeouts, a
                # handshake cut short (InvalidMessage), TLS errors, 5xx, a bad welcome.
                self._failed_in_a_row += len(self.endpoints)
                continue
            self._failed_in_a_row = 0
            self.breaker = "closed"
            self.reconnects += 1
            if self._topics:
                try:
                    self.last_resume = await self._resubscribe()
                except Exception:
                    if self._ws is not None:
                        self._ws._p.abort()
                    continue
            return True
        return False

    async def _resubscribe(self) -> list[dict[str, Any]]:
        """Subscribe again, resuming every exact topic and every concrete topic delivered under
        a pattern; queue a ``may_have_missed`` notice right after each reply (so before the
        events it replays) for what cannot be fully resumed. Returns the results."""
        patterns = [t for t in self._topics if is_pattern(t)]
        # Concrete topics seen only through a pattern: subscribed exactly (with resume) in the
        # same request as the pattern, before it, then unsubscribed once resumed; the engine
        # delivers an event once per connection even when both match.
        implicit = [t for t in self._positions if t not in self._topics and any(topic_matches(p, t) for p in patterns)]
        results: list[dict[str, Any]] = []
        # One request per presence flag and filter; a concrete topic seen through a pattern
        # takes the first covering pattern's filter, and its request comes first.
        # (A topic subscribed with snapshot=True asks for one again: the engine sends it only
        # when the resume cannot be served.)
        groups: dict[tuple[bool, str, bool], list[str]] = {}
        for t in implicit:
            groups.setdefault((False, _filter_key(self._covering_filter(t, patterns)), False), []).append(t)
        for t, p in self._topics.items():
            groups.setdefault((p, _filter_key(self._filters.get(t)), t in self._snapshots), []).append(t)
        patterns_reported = False
        for (presence, fkey, snapshot), topics in groups.items():
            if not topics:
                continue
            had = {t: self._positions.get(t, {}).get("offset", 0) for t in topics}
            req: dict[str, Any] = {"type": "subscribe", "topics": topics, "presence": presence, "resume": self._resume_for(topics)}
            if fkey:
                req["filter"] = json.loads(fkey)
            if snapshot:
                req["snapshot"] = True
            reply = await self._request_inline(req)
            results.extend(self._record(reply))
            by_topic = {r.get("topic"): r for r in results}
            notices: list[tuple[str, list[str], list[str]]] = []
            if not patterns_reported:
                # The first request (the implicit topics are in it): report every pattern now,
                # before the events it replays (whichever request the pattern itself is in).
                patterns_reported = True
                for pat in patterns:
                    under = [u for u in implicit if topic_matches(pat, u)]
                    resumed = [u for u in under if by_topic.get(u, {}).get("recovered") is True]
                    notices.append((pat, resumed, [u for u in under if u not in resumed]))
            for t in topics:
                if t not in self._topics or t in patterns:
                    continue
                r = by_topic.get(t, {})
                if not r.get("ok", False) or (
                    # Not resumable; unless the topic was empty and still is (the engine
                    # forgets an empty topic with its last subscriber: a new epoch, nothing
                    # missed).
                    r.get("recovered") is False and (had.get(t, 0) > 0 or r.get("offset", 0) > 0)
                ):
                    notices.append((t, [], [t]))
            for t, resumed, lost in notices:
                payload = {"resumed": resumed, "not_recovered": lost}
                raw = {"type": "may_have_missed", "topic": t, **payload}
                await self._events.put(Event("may_have_missed", topic=t, payload=payload, raw=raw))
        if implicit:
            # Back to receiving them through the pattern only (no presence membership kept).
            await self._request_inline({"type": "unsubscribe", "topics": implicit})
        return results

    async def _request_inline(self, msg: dict[str, Any]) -> dict[str, Any]:
        """A request made from the read loop itself: read until its reply, dispatching the rest."""
        ws = self._ws
        assert ws is not None
        self._next_id += 1
        rid = msg["id"] = self._next_id
        await ws.send(self._encode(msg))
        while True:
            reply = self._decode(await ws.recv(self.connect_timeout))
            if reply.get("id") == rid:
                if reply.get("type") == "error":
                    raise EngineError(reply.get("code", 5000), reply.get("message", ""))
                return reply
            ev = self._dispatch(reply)
            if ev is not None:
                await self._events.put(ev)

    def _covering_filter(self, topic: str, patterns: list[str]) -> dict[str, Any] | None:
        """What the connection's patterns covering ``topic`` let through: none when one of them
        has no filter, else the ``$or`` of their filters (one alone as it is)."""
        filters = [self._filters.get(p) for p in patterns if topic_matches(p, topic)]
        if not filters or any(f is None for f in filters):
            return None
        unique = list({_filter_key(f): f for f in filters}.values())
        return unique[0] if len(unique) == 1 else {"$or": unique}

    def _resume_for(self, topics: Iterable[str]) -> dict[str, dict[str, Any]]:
        return {t: self._positions[t] for t in topics if t in self._positions}

    def _dispatch(self, msg: dict[str, Any]) -> Event | None:
        """Resolve a reply's request, or turn a pushed message into an :class:`Event`."""
        kind = msg.get("type")
        rid = msg.get("id")
        if kind in ("subscribed", "unsubscribed", "published", "presence", "pong", "sent", "error") and isinstance(
            rid, int
        ):
            fut = self._pending.pop(rid, None)
            if fut is not None and not fut.done():
                if kind == "subscribed":
                    # Positions now, before the messages behind the reply are dispatched (a
                    # snapshot moves its topic's position, and must not be overtaken).
                    self._record(msg)
                if kind == "error":
                    fut.set_exception(EngineError(msg.get("code", 5000), msg.get("message", "")))
                else:
                    fut.set_result(msg)
            return None
        if kind == "event":
            topic = msg["topic"]
            known = self._positions.get(topic)
            if known is not None and known["epoch"] == msg["epoch"] and msg["offset"] <= known["offset"]:
                return None  # already delivered (a resume overlapping live delivery)
            self._positions[topic] = {"offset": msg["offset"], "epoch": msg["epoch"]}
            ev = Event(
                "event",
                topic=topic,
                payload=msg.get("payload"),
                offset=msg["offset"],
                epoch=msg["epoch"],
                id=msg.get("id"),
                time=msg.get("time"),
                raw=msg,
            )
        elif kind == "snapshot":
            topic = msg["topic"]
            if "error" not in msg:
                # The state includes every event up to its offset: later deliveries start
                # after it (a state older than the subscription is followed by the events in
                # between, which pass this check).
                self._positions[topic] = {"offset": msg["offset"], "epoch": msg["epoch"]}
            ev = Event(
                "snapshot",
                topic=topic,
                payload=msg.get("data"),
                offset=msg.get("offset"),
                epoch=msg.get("epoch"),
                error=msg.get("error"),
                raw=msg,
            )
        elif kind in ("join", "leave"):
            ev = Event(kind, topic=msg.get("topic"), member=msg.get("member"), raw=msg)
        elif kind == "lagged":
            ev = Event("lagged", dropped=msg.get("dropped"), raw=msg)
        elif kind == "reset":
            topic = msg["topic"]
            self._positions[topic] = {"offset": msg["offset"], "epoch": msg["epoch"]}
            ev = Event("reset", topic=topic, offset=msg["offset"], epoch=msg["epoch"], raw=msg)
        else:
            return None  # a reply nobody waits for, or something newer than this client
        return ev

    def _fail_pending(self, e: BaseException) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(e)
        self._pending.clear()

    async def _request_now(self, msg: dict[str, Any]) -> dict[str, Any]:
        ws = self._ws
        if ws is None:
            raise ConnectionError("not connected")
        self._next_id += 1
        rid = msg["id"] = self._next_id
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        await ws.send(self._encode(msg))
        return await fut

    async def _request(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self._closing:
            raise ConnectionError("the client is closed")
        if self._reader is not None and self._reader.done():
            raise self._error or ConnectionError("connection closed")
        if self._bucket is not None:
            await self._bucket.take()
        if not self._connected.is_set():
            # Wait for the connection, or for the client to end (close, or a reader that gave
            # up), whichever comes first.
            waiter = asyncio.ensure_future(self._connected.wait())
            others = [t for t in (self._reader,) if t is not None]
            try:
                await asyncio.wait([waiter, *others], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if not self._connected.is_set():
                raise self._error or ConnectionError("the client is closed")
        return await self._request_now(msg)

    def _record(self, reply: dict[str, Any]) -> list[dict[str, Any]]:
        for r in reply.get("results", []):
            if r.get("ok") and "offset" in r:
                known = self._positions.get(r["topic"])
                if known is None and r.get("replayed"):
                    # Events replayed right behind this reply (a resume from a position this
                    # client did not record, or recent history): they set the position.
                    continue
                # Keep the delivered position when resuming worked (the missed events follow);
                # when it failed, continue from the server's current position; without a
                # resume, from the later of the two (events may already have been delivered).
                if (
                    known is None
                    or r.get("recovered") is False
                    or (
                        "recovered" not in r
                        and (known["epoch"] != r["epoch"] or known["offset"] < r["offset"])
                    )
                ):
                    self._positions[r["topic"]] = {"offset": r["offset"], "epoch": r["epoch"]}
        return reply.get("results", [])

    # ---- API -----------------------------------------------------------------------------------

    async def subscribe(
        self,
        topics: Iterable[str],
        *,
        presence: bool = False,
        filter: dict[str, Any] | None = None,
        snapshot: bool = False,
    ) -> list[dict[str, Any]]:
        """Subscribe to topics or patterns; returns the per-topic results. Raises
        :class:`EngineError` if any topic was refused (the others stay subscribed), or 4010
        for a bad ``filter``. With ``filter`` (docs/PROTOCOL.md, "Filters": MongoDB-style
        operators over ``payload.…`` paths) only matching events arrive, also when resuming;
        subscribing again replaces it. With ``snapshot``, each exact topic's state arrives
        first, as an :class:`Event` of type ``snapshot``, then the events after it (also after
        a reconnect whose resume the server cannot serve)."""
        topics = list(topics)
        req: dict[str, Any] = {"type": "subscribe", "topics": topics, "presence": presence, "resume": self._resume_for(topics)}
        if filter is not None:
            req["filter"] = filter
        if snapshot:
            req["snapshot"] = True
        reply = await self._request(req)
        results = reply.get("results", [])  # positions recorded as the reply was read
        for r in results:
            if r.get("ok"):
                self._topics[r["topic"]] = presence
                if filter is None:
                    self._filters.pop(r["topic"], None)
                else:
                    self._filters[r["topic"]] = filter
                if snapshot:
                    self._snapshots.add(r["topic"])
                else:
                    self._snapshots.discard(r["topic"])
        failed = [r for r in results if not r.get("ok")]
        if failed:
            e = failed[0]["error"]
            raise EngineError(e["code"], e["message"])
        return results

    async def unsubscribe(self, topics: Iterable[str]) -> None:
        topics = list(topics)
        await self._request({"type": "unsubscribe", "topics": topics})
        for t in topics:
            self._topics.pop(t, None)
            self._filters.pop(t, None)
            self._snapshots.discard(t)
            self._positions.pop(t, None)

    async def publish(self, topic: str, payload: Any, *, priority: str | int | None = None) -> dict[str, Any]:
        """Publish; returns ``{"topic", "offset", "epoch"}`` of the stored event. ``priority``:
        ``background``, ``low``, ``normal``, ``high`` or ``critical`` (or 1, 3, 5, 8, 10), what
        a subscriber's ``drop-lowest`` policy drops first."""
        msg: dict[str, Any] = {"type": "publish", "topic": topic, "payload": payload}
        if priority is not None:
            msg["priority"] = priority
        r = await self._request(msg)
        return {"topic": r["topic"], "offset": r["offset"], "epoch": r["epoch"]}

    async def send(self, payload: Any) -> None:
        """Send a message to the server's application (``weft.Server.drain_inbound``)."""
        await self._request({"type": "send", "payload": payload})

    async def presence(self, topic: str) -> dict[str, Any]:
        r = await self._request({"type": "presence", "topic": topic})
        return {"count": r["count"], "members": r["members"]}

    async def ping(self) -> int:
        """Application-level ping; returns the server's clock (ms since the epoch)."""
        return (await self._request({"type": "ping"}))["time"]

    async def _next(self) -> Any:
        """The next queued item, or ``_END`` once the reader task has ended and everything it
        queued was taken: waits on the queue and on the task, so a reader that died can never
        leave the application waiting."""
        events = self._events
        while True:
            if not events.empty():
                ev = events.get_nowait()
                if ev is _END:
                    events.put_nowait(_END)
                return ev
            reader = self._reader
            if self._ended or reader is None or reader.done():
                return _END
            getter = asyncio.ensure_future(events.get())
            try:
                await asyncio.wait((getter, reader), return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                ev = getter.result()
                if ev is _END:
                    events.put_nowait(_END)
                return ev

    async def recv(self) -> Event:
        """The next pushed event; raises the connection's error (or ``ConnectionError``) at
        the end."""
        ev = await self._next()
        if ev is _END:
            raise self._error or ConnectionError("connection closed")
        return ev

    @property
    def secured(self) -> str | None:
        """The current connection's secure channel mode (``"encrypt"``/``"sign"``), or ``None``
        when it is in clear."""
        ch = self._channel
        return None if ch is None else ch.mode

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            ev = await self._next()
            if ev is _END:
                if self._error is not None:
                    raise self._error
                return
            yield ev

    async def close(self) -> None:
        """Close for good (no reconnect)."""
        self._closing = True
        if self._measurer is not None:
            self._measurer.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5)
            except (asyncio.TimeoutError, TimeoutError):
                self._reader.cancel()
            except Exception:
                pass  # the reader's error was already reported to the application (recv/async for)

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def positions(self) -> dict[str, dict[str, Any]]:
        """Last delivered ``{"offset", "epoch"}`` per exact topic (what a reconnect resumes)."""
        return dict(self._positions)


class _Connect:
    def __init__(self, client: EngineClient) -> None:
        self._client = client

    def __await__(self):
        return self._client._start().__await__()

    async def __aenter__(self) -> EngineClient:
        return await self._client._start()

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()


def connect(
    url: str | Iterable[str],
    token: str | None = None,
    *,
    reconnect: bool = True,
    min_delay: float = 0.1,
    max_delay: float = 30.0,
    max_queue: int = 10_000,
    connect_timeout: float | None = 10.0,
    quality_interval: float | None = 10.0,
    pong_timeout: float = 5.0,
    on_quality: Callable[[Quality], None] | None = None,
    rate_limit: float | None = None,
    rate_burst: int = 10,
    breaker_threshold: int | None = None,
    breaker_cooldown: float = 30.0,
    secure: str | None = None,
    server_key: str | bytes | None = None,
    **options: Any,
) -> _Connect:
    """Connect to the engine at ``url`` (``ws://host:port/ws``), with an optional JWT ``token``
    (sent as ``Authorization: Bearer``). ``await connect(...)`` or ``async with connect(...)``.

    ``reconnect``: reconnect after connection loss (backoff from ``min_delay`` doubling up to
    ``max_delay`` seconds, full jitter); a refused token (401/403) ends the client instead.
    ``max_queue``: events buffered for the application before reading pauses (replies are read
    on the same connection, so an application that never consumes events should not wait for
    requests once this many are buffered). ``quality_interval``: seconds between the
    application-level pings that measure :attr:`EngineClient.quality` (``None``: no
    measurement), each answered within ``pong_timeout`` or counted missed; two missed in a row
    drop the connection and reconnect. ``on_quality`` is called with each new :class:`Quality`.

    ``url`` may be a list of endpoints (the nodes of a cluster): the client connects to the
    healthiest that answers (:class:`Endpoint`: fewest failures in a row, then lowest connect
    latency) and, when a connection is lost, reconnects to the best other one and resumes
    there. With ``breaker_threshold``, a circuit breaker opens after that many failed attempts
    in a row (every endpoint counted; :attr:`EngineClient.breaker`): no attempt for
    ``breaker_cooldown`` seconds, then one round — against reconnection storms when a whole
    cluster is down, beyond what the backoff does. ``rate_limit``: at most that many requests per second (``rate_burst`` at once)
    leave the client, so it stays under the server's rate limit instead of being cut off.
    ``secure``: ``"encrypt"`` or ``"sign"`` to start the secure channel on every connection;
    ``server_key``: the server's identity public key (base64 or 65 bytes) the handshake must be
    signed with (implies ``secure="encrypt"``). Other keywords go to :func:`weft.async_client.connect` (``headers``, ``ssl``,
    ``ping_interval``, ...).
    """
    client = EngineClient(
        url,
        token,
        reconnect=reconnect,
        min_delay=min_delay,
        max_delay=max_delay,
        max_queue=max_queue,
        connect_timeout=connect_timeout,
        options=options,
        quality_interval=quality_interval,
        pong_timeout=pong_timeout,
        on_quality=on_quality,
        rate_limit=rate_limit,
        rate_burst=rate_burst,
        breaker_threshold=breaker_threshold,
        breaker_cooldown=breaker_cooldown,
        secure=secure,
        server_key=server_key,
    )
    return _Connect(client)


class SyncEngineClient:
    """The engine client for threaded code: the same client (reconnects, resumes, filters,
    :attr:`quality`) driven by an event loop on a thread of its own, with blocking methods.
    Made by :func:`connect_sync`. Methods may be called from any thread; ``on_quality`` runs on
    the client's thread.

    >>> from weft.engine_client import connect_sync
    >>> with connect_sync("ws://127.0.0.1:8080/ws") as c:          # doctest: +SKIP
    ...     c.subscribe(["chat.lobby"])
    ...     c.publish("chat.lobby", {"text": "hi"})
    ...     for event in c:
    ...         print(event.topic, event.offset, event.payload)
    """

    def __init__(self, client: EngineClient, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self._client = client
        self._loop = loop
        self._thread = thread
        self._closed = False
        self._lock = threading.Lock()
        self._calls: set[Any] = set()

    def _run(self, coro: Any) -> Any:
        with self._lock:
            if self._closed:
                coro.close()
                raise ConnectionError("the client is closed")
            fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
            self._calls.add(fut)
        try:
            return fut.result()
        except concurrent.futures.CancelledError:
            raise ConnectionError("the client is closed") from None
        finally:
            with self._lock:
                self._calls.discard(fut)

    def subscribe(
        self,
        topics: Iterable[str],
        *,
        presence: bool = False,
        filter: dict[str, Any] | None = None,
        snapshot: bool = False,
    ) -> list[dict[str, Any]]:
        """As :meth:`EngineClient.subscribe`."""
        return self._run(self._client.subscribe(list(topics), presence=presence, filter=filter, snapshot=snapshot))

    def unsubscribe(self, topics: Iterable[str]) -> None:
        """As :meth:`EngineClient.unsubscribe`."""
        self._run(self._client.unsubscribe(list(topics)))

    def publish(self, topic: str, payload: Any, *, priority: str | int | None = None) -> dict[str, Any]:
        """As :meth:`EngineClient.publish`."""
        return self._run(self._client.publish(topic, payload, priority=priority))

    def send(self, payload: Any) -> None:
        """As :meth:`EngineClient.send`."""
        self._run(self._client.send(payload))

    def presence(self, topic: str) -> dict[str, Any]:
        """As :meth:`EngineClient.presence`."""
        return self._run(self._client.presence(topic))

    def ping(self) -> int:
        """As :meth:`EngineClient.ping`."""
        return self._run(self._client.ping())

    def recv(self, timeout: float | None = None) -> Event:
        """The next pushed event, waiting at most ``timeout`` seconds (``TimeoutError``; no
        event is lost by it); raises the connection's error (or ``ConnectionError``) at the
        end."""
        return self._run(asyncio.wait_for(self._client.recv(), timeout))

    def __iter__(self) -> Iterator[Event]:
        while True:
            ev = self._run(self._client._next())
            if ev is _END:
                if self._client._error is not None:
                    raise self._client._error
                return
            yield ev

    def close(self) -> None:
        """Close for good (no reconnect) and stop the client's thread; calls still waiting in
        other threads raise ``ConnectionError``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(asyncio.wait_for(self._client.close(), 10), self._loop).result()
        except Exception:
            pass  # closing anyway
        finally:
            with self._lock:
                calls = list(self._calls)
            for fut in calls:
                fut.cancel()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._loop.is_running():
                self._loop.close()

    def __enter__(self) -> SyncEngineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._client.connected

    @property
    def positions(self) -> dict[str, dict[str, Any]]:
        return self._client.positions

    @property
    def quality(self) -> Quality | None:
        return self._client.quality

    @property
    def reconnects(self) -> int:
        return self._client.reconnects

    @property
    def last_resume(self) -> list[dict[str, Any]]:
        return list(self._client.last_resume)

    @property
    def welcome(self) -> dict[str, Any]:
        return dict(self._client.welcome)

    @property
    def secured(self) -> str | None:
        return self._client.secured

    @property
    def url(self) -> str:
        return self._client.url

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._client.endpoints)

    @property
    def breaker(self) -> str:
        return self._client.breaker


def connect_sync(url: str | Iterable[str], token: str | None = None, **kwargs: Any) -> SyncEngineClient:
    """Connect like :func:`connect` (same arguments), for threaded code: returns a
    :class:`SyncEngineClient` once the server's ``welcome`` arrived; raises what the first
    connection attempt raised."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="weft-engine-client", daemon=True)
    thread.start()

    async def start() -> EngineClient:
        return await connect(url, token, **kwargs)

    try:
        client = asyncio.run_coroutine_threadsafe(start(), loop).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        raise
    return SyncEngineClient(client, loop, thread)
