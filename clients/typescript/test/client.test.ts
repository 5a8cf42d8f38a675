import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ConnectionError, QueueError, ServerError, TimeoutError, WeftClient, matches, type StateChange, type WeftEvent } from "../src/index.js";
import { FakeServer, token, type Msg } from "./fake.js";

let server: FakeServer;
const tick = (ms = 0) => vi.advanceTimersByTimeAsync(ms);

function client(opts: ConstructorParameters<typeof WeftClient>[1] = {}) {
  return new WeftClient("ws://fake/ws", { WebSocket: server.WebSocket, ...opts });
}

beforeEach(() => {
  vi.useFakeTimers();
  server = new FakeServer();
});

afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
});

describe("several endpoints, circuit breaker, rate limit", () => {
  it("a lost node: reconnects to the healthiest other endpoint and resumes there", async () => {
    const c = new WeftClient(["ws://a/ws", "ws://b/ws"], { WebSocket: server.WebSocket, reconnect: { minDelay: 10, maxDelay: 10 } });
    const seen: number[] = [];
    c.subscribe<number>("t", (ev) => seen.push(ev.payload));
    await Promise.all([c.connect(), tick()]);
    expect(c.url).toBe("ws://a/ws");
    server.publish("t", 1);
    server.refuseHosts.add("a");
    server.last.drop();
    server.publish("t", 2, false); // missed while away: comes back through the resume
    await tick(50);
    expect(c.state.state).toBe("connected");
    expect(c.url).toBe("ws://b/ws");
    server.publish("t", 3);
    expect(seen).toEqual([1, 2, 3]);
    expect(c.endpoints.map((e) => e.failures)).toEqual([1, 0]);
    expect(c.endpoints[1]!.latency).toBeDefined();
    c.close();
  });

  it("every endpoint down: the breaker opens after the threshold, pauses, then tries once", async () => {
    vi.spyOn(Math, "random").mockReturnValue(0);
    const c = new WeftClient(["ws://a/ws", "ws://b/ws"], {
      WebSocket: server.WebSocket,
      reconnect: { minDelay: 10, maxDelay: 10 },
      breaker: { threshold: 4, cooldown: 5000 },
    });
    await Promise.all([c.connect(), tick()]);
    server.refuse = true;
    server.last.drop();
    await tick(100);
    expect(c.breaker).toBe("open");
    const tried = server.attempts.length;
    expect(tried).toBe(1 + 4); // the first connection, then four failed attempts
    expect(c.state).toMatchObject({ state: "reconnecting", delay: 5000 });
    expect(c.state.reason).toContain("circuit open");
    await tick(4800);
    expect(server.attempts.length).toBe(tried);
    await tick(300);
    expect(server.attempts.length).toBe(tried + 1);
    expect(c.breaker).toBe("open"); // the half-open attempt failed too
    server.refuse = false;
    await tick(5100);
    expect(c.state.state).toBe("connected");
    expect(c.breaker).toBe("closed");
    c.close();
  });

  it("a publish carries its priority, also from the offline queue", async () => {
    const c = client();
    const connecting = c.connect();
    const early = c.publish("p", 0, { priority: "critical" }); // queued while connecting
    await Promise.all([connecting, tick()]);
    await c.publish("p", 1, { priority: "high" });
    await c.publish("p", 2);
    await early;
    const sent = server.last.received.filter((m) => m.type === "publish").map((m) => [m.payload, m.priority]);
    expect(sent).toEqual([
      [0, "critical"],
      [1, "high"],
      [2, undefined],
    ]);
    c.close();
  });

  it("publishes the rate limiter held when the connection went wait offline and go after", async () => {
    const c = client({ rateLimit: { rate: 10, burst: 1 }, reconnect: { minDelay: 10, maxDelay: 10 } });
    await Promise.all([c.connect(), tick()]);
    const done = [1, 2, 3].map((n) => c.publish("h", n));
    await tick(0);
    server.last.drop(); // 2 and 3 are still held by the limiter
    await tick(500);
    expect(c.state.state).toBe("connected");
    // 1 went out on the first connection; 2 and 3, held when it went, on the second.
    expect((await Promise.all(done)).map((p) => p.offset)).toEqual([1, 2, 3]);
    const sent = (i: number) => server.sockets[i]!.received.filter((m) => m.type === "publish").map((m) => m.payload);
    expect([sent(0), sent(server.sockets.length - 1)]).toEqual([[1], [2, 3]]);
    c.close();
  });

  it("a lagged notice makes filtered topics ask for what was dropped", async () => {
    const c = client();
    c.subscribe("f", () => {}, { filter: { "payload.n": { $gt: 1 } } });
    c.on("error", () => {});
    await Promise.all([c.connect(), tick()]);
    const subscribes = () => server.last.received.filter((m) => m.type === "subscribe");
    expect(subscribes()).toHaveLength(1);
    server.publish("f", { n: 5 });
    server.last.push({ type: "lagged", dropped: 3 });
    await tick();
    expect(subscribes()).toHaveLength(2);
    expect(subscribes()[1]!.resume).toEqual({ f: { offset: 1, epoch: "e1" } });
    expect(subscribes()[1]!.filter).toEqual({ "payload.n": { $gt: 1 } });
    c.close();
  });

  it("the rate limiter paces publishes in order", async () => {
    const c = client({ rateLimit: { rate: 10, burst: 2 } });
    await Promise.all([c.connect(), tick()]);
    const done = [1, 2, 3, 4, 5, 6].map((n) => c.publish("r", n));
    await tick(0);
    const published = () => server.last.received.filter((m) => m.type === "publish").map((m) => m.payload);
    expect(published()).toEqual([1, 2]);
    await tick(250);
    expect(published()).toEqual([1, 2, 3, 4]);
    await tick(250);
    expect(published()).toEqual([1, 2, 3, 4, 5, 6]);
    expect((await Promise.all(done)).map((p) => p.offset)).toEqual([1, 2, 3, 4, 5, 6]);
    c.close();
  });
});

describe("connecting", () => {
  it("goes connecting → connected and speaks the subprotocol", async () => {
    const c = client({ params: { user: "ann" } });
    const states: string[] = [];
    c.on("state", (s) => states.push(s.state));
    const done = c.connect();
    await tick();
    await done;
    expect(states).toEqual(["connecting", "connected"]);
    expect(server.last.protocols).toEqual(["weft.v1.json"]);
    expect(server.last.query.get("user")).toBe("ann");
    expect(c.session?.user).toBe("ann");
    c.close();
    expect(c.state).toMatchObject({ state: "closed", code: 1000 });
  });

  it("reconnects with full-jitter exponential backoff, capped, and reports why", async () => {
    vi.spyOn(Math, "random").mockReturnValue(0.999999);
    server.refuse = true;
    const c = client({ reconnect: { minDelay: 100, maxDelay: 1000 } });
    const states: StateChange[] = [];
    c.on("state", (s) => states.push(s));
    void c.connect();
    await tick();
    for (let i = 0; i < 6; i++) await tick(1000);
    const gaps = server.attempts.slice(1).map((t, i) => t - server.attempts[i]!);
    // 100, 200, 400, 800, then the cap (each delay is random() × the ceiling).
    expect(gaps.slice(0, 5).map((g) => Math.round(g / 100) * 100)).toEqual([100, 200, 400, 800, 1000]);
    expect(states.at(-1)).toMatchObject({ state: "reconnecting", reason: "could not connect", refused: true, delay: 1000 });
    server.refuse = false;
    await tick(1000);
    expect(c.state.state).toBe("connected");
    // Connected again: the backoff starts over.
    server.last.drop();
    await tick(0);
    const before = server.attempts.length;
    await tick(100);
    expect(server.attempts.length).toBe(before + 1);
    c.close();
  });

  it("full jitter spreads attempts anywhere below the ceiling", async () => {
    vi.spyOn(Math, "random").mockReturnValue(0.25);
    server.refuse = true;
    const c = client({ reconnect: { minDelay: 400, maxDelay: 10000 } });
    void c.connect();
    await tick();
    await tick(100);
    expect(server.attempts.length).toBe(2);
    c.close();
  });

  it("does not reconnect after close(), and rejects what waits", async () => {
    const c = client();
    await Promise.all([c.connect(), tick()]);
    c.close();
    await tick(60000);
    expect(server.sockets.length).toBe(1);
    await expect(c.publish("a", 1)).rejects.toMatchObject({ code: "closed" });
  });
});

describe("subscriptions", () => {
  it("resubscribes after a cut with the last position and gets exactly the missed events", async () => {
    const c = client();
    const seen: number[] = [];
    c.subscribe("news", (ev) => seen.push(ev.offset));
    await Promise.all([c.connect(), tick()]);
    server.publish("news", "a");
    server.publish("news", "b");
    server.last.drop();
    server.publish("news", "c"); // missed while away
    server.publish("news", "d");
    await tick(20000);
    expect(c.state.state).toBe("connected");
    const sub = server.last.received.find((m) => m.type === "subscribe")!;
    expect(sub.resume).toEqual({ news: { offset: 2, epoch: "e1" } });
    server.publish("news", "e");
    expect(seen).toEqual([1, 2, 3, 4, 5]);
    c.close();
  });

  it("a gap in offsets triggers recovery: the missing events are fetched, later ones not doubled", async () => {
    const c = client();
    const seen: string[] = [];
    const sub = c.subscribe<string>("t", (ev) => seen.push(ev.payload));
    await Promise.all([c.connect(), tick()]);
    server.publish("t", "1");
    server.publish("t", "2", false); // lost on the way
    server.publish("t", "3");
    server.publish("t", "4");
    await tick();
    expect(seen).toEqual(["1", "2", "3", "4"]);
    const resubscribe = server.last.received.filter((m) => m.type === "subscribe").at(-1)!;
    expect(resubscribe.resume).toEqual({ t: { offset: 1, epoch: "e1" } });
    // A duplicate (same epoch, old offset) is dropped.
    server.last.push(server.topic("t").events[1]!);
    expect(seen.length).toBe(4);
    expect(sub.position).toEqual({ offset: 4, epoch: "e1" });
    c.close();
  });

  it("history lost: the application is told it did not recover, never silence", async () => {
    const c = client();
    const lost: unknown[] = [];
    const seen: string[] = [];
    c.subscribe<string>("room", (ev) => seen.push(ev.payload), { onUnrecovered: (u) => lost.push(u) });
    await Promise.all([c.connect(), tick()]);
    server.publish("room", "old");
    server.last.drop();
    server.forget("room"); // a server restart
    server.publish("room", "new");
    await tick(20000);
    expect(lost).toEqual([{ topic: "room", from: { offset: 1, epoch: "e1" }, position: { offset: 1, epoch: "e2" } }]);
    server.publish("room", "next");
    expect(seen).toEqual(["old", "next"]);
    c.close();
  });

  it("an event of a new epoch on a live subscription is checked, not trusted", async () => {
    const c = client();
    const lost: unknown[] = [];
    c.subscribe("x", () => {}, { onUnrecovered: (u) => lost.push(u) });
    await Promise.all([c.connect(), tick()]);
    server.publish("x", 1);
    server.forget("x");
    server.publish("x", 2);
    await tick();
    expect(lost).toHaveLength(1);
    c.close();
  });

  it("a server `reset` reaches the application as not recovered", async () => {
    const c = client();
    const lost: unknown[] = [];
    c.subscribe("r", () => {}, { onUnrecovered: (u) => lost.push(u) });
    await Promise.all([c.connect(), tick()]);
    server.last.push({ type: "reset", topic: "r", offset: 9, epoch: "zz", recovered: false });
    expect(lost).toEqual([{ topic: "r", from: { offset: 0, epoch: "e1" }, position: { offset: 9, epoch: "zz" } }]);
    c.close();
  });

  it("a server `reset` of a topic under a pattern reaches the pattern's subscribers", async () => {
    const c = client();
    const lost: unknown[] = [];
    c.subscribe("feed.*", () => {}, { onUnrecovered: (u) => lost.push(u) });
    c.subscribe("other.*", () => {}, { onUnrecovered: (u) => lost.push(u) });
    await Promise.all([c.connect(), tick()]);
    server.last.push({ type: "reset", topic: "feed.x", offset: 9, epoch: "zz", recovered: false });
    expect(lost).toEqual([{ topic: "feed.x", position: { offset: 9, epoch: "zz" } }]);
    c.close();
  });

  it("history: recent events first, then live ones, no gap and no duplicate", async () => {
    server.publish("h", 1);
    server.publish("h", 2);
    server.publish("h", 3);
    const c = client();
    const seen: number[] = [];
    c.subscribe<number>("h", (ev) => seen.push(ev.payload), { history: 2 });
    await Promise.all([c.connect(), tick()]);
    server.publish("h", 4);
    expect(seen).toEqual([2, 3, 4]);
    c.close();
  });

  it("resume from a saved position", async () => {
    for (let i = 1; i <= 5; i++) server.publish("s", i);
    const c = client();
    const seen: number[] = [];
    c.subscribe<number>("s", (ev) => seen.push(ev.payload), { resume: { offset: 3, epoch: "e1" } });
    await Promise.all([c.connect(), tick()]);
    expect(seen).toEqual([4, 5]);
    c.close();
  });

  it("patterns receive every matching topic; shared topics are one server subscription", async () => {
    const c = client();
    const a: string[] = [];
    const b: string[] = [];
    c.subscribe<string>("chat.*", (ev) => a.push(ev.topic));
    const s1 = c.subscribe("chat.x", (ev) => b.push("1:" + ev.offset));
    const s2 = c.subscribe("chat.x", (ev) => b.push("2:" + ev.offset));
    await Promise.all([c.connect(), tick()]);
    server.publish("chat.x", 0);
    server.publish("chat.y", 0);
    expect(a).toEqual(["chat.x", "chat.y"]);
    expect(b).toEqual(["1:1", "2:1"]);
    await s1.unsubscribe();
    expect(server.last.received.some((m) => m.type === "unsubscribe")).toBe(false);
    await Promise.all([s2.unsubscribe(), tick()]);
    expect(server.last.received.filter((m) => m.type === "unsubscribe")[0]!.topics).toEqual(["chat.x"]);
    c.close();
  });

  it("a refused subscription is an error with the server's code", async () => {
    server.intercept = (s, m) => {
      if (m.type !== "subscribe") return false;
      s.push({ type: "subscribed", id: m.id, results: [{ topic: "admin", ok: false, error: { code: 4003, message: "no" } }] });
      return true;
    };
    const c = client();
    const errors: unknown[] = [];
    c.subscribe("admin", () => {}, { onError: (e) => errors.push(e) });
    await Promise.all([c.connect(), tick()]);
    expect(errors[0]).toBeInstanceOf(ServerError);
    expect(errors[0]).toMatchObject({ code: 4003 });
    c.close();
  });

  it("presence: join and leave reach the subscriptions that asked", async () => {
    const c = client();
    const joins: string[] = [];
    const sub = c.subscribe("p", undefined, { presence: true });
    sub.onJoin = (m) => joins.push(m.user);
    c.subscribe("p"); // without presence: still one server subscription with presence
    await Promise.all([c.connect(), tick()]);
    expect(server.last.received.find((m) => m.type === "subscribe")!.presence).toBe(true);
    server.last.push({ type: "join", topic: "p", member: { user: "bob", session: "b" } });
    expect(joins).toEqual(["bob"]);
    expect(await c.presence("p")).toMatchObject({ count: 1, members: [{ user: "alice" }] });
    c.close();
  });
});

describe("publishing", () => {
  it("publishes made while disconnected are queued and sent in order, each answered", async () => {
    const c = client();
    void c.connect();
    const p = [c.publish("q", 1), c.publish("q", 2), c.publish("q", 3)];
    await tick();
    const answers = await Promise.all(p);
    expect(answers.map((a) => a.offset)).toEqual([1, 2, 3]);
    expect(server.topic("q").events.map((e) => e.payload)).toEqual([1, 2, 3]);
    server.last.drop();
    server.refuse = true;
    await tick(0);
    const later = c.publish("q", 4);
    server.refuse = false;
    await tick(20000);
    expect((await later).offset).toBe(4);
    c.close();
  });

  it("the offline queue is bounded by count and by age", async () => {
    server.refuse = true;
    const c = client({ offlineQueue: { maxSize: 2, maxAge: 1000 } });
    void c.connect();
    await tick();
    const a = c.publish("q", "a");
    const b = c.publish("q", "b");
    await expect(c.publish("q", "c")).rejects.toBeInstanceOf(QueueError);
    a.catch(() => {});
    b.catch(() => {});
    await tick(1500);
    server.refuse = false;
    await tick(20000);
    await expect(a).rejects.toMatchObject({ code: "expired" });
    await expect(b).rejects.toMatchObject({ code: "expired" });
    expect(server.topics.has("q")).toBe(false);
    c.close();
  });

  it("a publish in flight when the connection drops is rejected as unknown, not sent twice", async () => {
    server.intercept = (_s, m) => m.type === "publish"; // never answered
    const c = client();
    await Promise.all([c.connect(), tick()]);
    const p = c.publish("q", 1);
    p.catch(() => {});
    server.last.drop();
    await expect(p).rejects.toBeInstanceOf(ConnectionError);
    c.close();
  });

  it("server errors and timeouts are typed", async () => {
    server.intercept = (s, m) => {
      if (m.type === "publish") s.push({ type: "error", id: m.id, code: 4003, message: "not allowed" });
      return m.type === "publish" || m.type === "send";
    };
    const c = client({ requestTimeout: 500 });
    await Promise.all([c.connect(), tick()]);
    await expect(c.publish("t", 1)).rejects.toMatchObject({ name: "ServerError", code: 4003 });
    const sent = c.send({ x: 1 });
    sent.catch(() => {});
    await tick(600);
    await expect(sent).rejects.toBeInstanceOf(TimeoutError);
    c.close();
  });

  it("with the queue off, publishing while disconnected fails at once", async () => {
    server.refuse = true;
    const c = client({ offlineQueue: false });
    void c.connect();
    await tick();
    await expect(c.publish("t", 1)).rejects.toBeInstanceOf(ConnectionError);
    c.close();
  });
});

describe("tokens", () => {
  it("getToken before connecting, in-band refresh before expiry, new token after 4401", async () => {
    let n = 0;
    const getToken = vi.fn(() => {
      n++;
      const now = Math.floor(Date.now() / 1000);
      return token({ sub: "u", iat: now, exp: now + 100 });
    });
    const c = client({ getToken });
    await Promise.all([c.connect(), tick()]);
    expect(getToken).toHaveBeenCalledTimes(1);
    expect(server.last.query.get("token")).toContain(".");
    // A tenth of the lifetime before expiry (100 s → 10 s): refreshed on the open connection.
    await tick(89000);
    expect(server.last.received.some((m) => m.type === "refresh")).toBe(false);
    await tick(2000);
    const refresh = server.last.received.find((m) => m.type === "refresh")!;
    expect(refresh.token).toBeTruthy();
    expect(n).toBe(2);
    expect(server.sockets.length).toBe(1);
    // The server ends the session for an expired token: a fresh token for the next connection.
    server.last.drop(4401, "token expired");
    await tick(20000);
    expect(n).toBe(3);
    expect(server.sockets.length).toBe(2);
    expect(c.state.state).toBe("connected");
    c.close();
  });

  it("an upgrade refused before opening asks for a new token", async () => {
    const getToken = vi.fn(() => token({ sub: "u", exp: Math.floor(Date.now() / 1000) + 3600 }));
    server.refuse = true;
    const c = client({ getToken, reconnect: { minDelay: 10, maxDelay: 10 } });
    void c.connect();
    await tick(5);
    server.refuse = false;
    await tick(50);
    expect(getToken.mock.calls.length).toBeGreaterThanOrEqual(2);
    c.close();
  });
});

describe("quality and liveness", () => {
  it("reports quality from pings; two missed pongs end a dead connection", async () => {
    const c = client({ pingInterval: 1000, pongTimeout: 300 });
    const levels: string[] = [];
    c.on("quality", (q) => levels.push(q.level));
    await Promise.all([c.connect(), tick()]);
    await tick(1000);
    expect(levels).toEqual(["excellent"]);
    server.pong = false;
    await tick(1300);
    expect(c.quality).toMatchObject({ missed: 1, level: "fair" });
    expect(server.sockets.length).toBe(1);
    await tick(1000);
    expect(c.quality).toMatchObject({ missed: 2, level: "poor" });
    expect(c.state).toMatchObject({ state: "reconnecting", reason: "no pong" });
    server.pong = true;
    await tick(20000);
    expect(c.state.state).toBe("connected");
    c.close();
  });
});

describe("encodings", () => {
  it("msgpack: binary frames both ways", async () => {
    const c = client({ protocol: "msgpack" });
    const seen: WeftEvent[] = [];
    c.subscribe("m", (ev) => seen.push(ev));
    await Promise.all([c.connect(), tick()]);
    expect(server.last.protocols).toEqual(["weft.v1.msgpack"]);
    const payload = { s: "héllo", n: -5, big: 2 ** 40, f: 1.5, a: [true, null, "x".repeat(40)], o: {} };
    await c.publish("m", payload);
    expect(seen[0]!.payload).toEqual(payload);
    c.close();
  });

  it("a message it cannot read is reported, and the connection goes on", async () => {
    const c = client();
    const errors: unknown[] = [];
    c.on("error", (e) => errors.push(e));
    await Promise.all([c.connect(), tick()]);
    server.last.onmessage?.({ data: "{not json" });
    expect(errors).toHaveLength(1);
    expect(await c.presence("p")).toMatchObject({ count: 1 });
    c.close();
  });
});

describe("patterns", () => {
  it("match NATS-style", () => {
    expect(matches("a.*", "a.b")).toBe(true);
    expect(matches("a.*", "a.b.c")).toBe(false);
    expect(matches("a.>", "a.b.c")).toBe(true);
    expect(matches("a.>", "a")).toBe(false);
    expect(matches(">", "x")).toBe(true);
    expect(matches("a.b", "a.b")).toBe(true);
    expect(matches("a.b", "a.c")).toBe(false);
  });
});

// Keep the fake's message type used (the tests above read `received` as Msg).
export type { Msg };
