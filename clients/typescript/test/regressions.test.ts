// Defects a review found (each test failed before its fix): events silently missed or doubled
// around subscribes in flight, errors that stopped a topic, refresh loops, two sockets after
// close() + connect(), the offline queue's age and its IndexedDB copy.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { WeftClient, type WeftError } from "../src/index.js";
import { FakeServer, token, type FakeSocket, type Msg } from "./fake.js";

let server: FakeServer;
const tick = (ms = 0) => vi.advanceTimersByTimeAsync(ms);
const client = (opts: ConstructorParameters<typeof WeftClient>[1] = {}) =>
  new WeftClient("ws://fake/ws", { WebSocket: server.WebSocket, ...opts });

/** Holds what the client sends until `release()`: answers arrive after several calls, as over a network. */
function hold() {
  const inbox: [FakeSocket, Msg][] = [];
  server.intercept = (s, m) => (inbox.push([s, m]), true);
  return () => {
    server.intercept = undefined;
    for (const [s, m] of inbox.splice(0)) server.handle(s, m);
  };
}

beforeEach(() => {
  vi.useFakeTimers();
  server = new FakeServer();
});
afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
  vi.restoreAllMocks();
});

describe("subscriptions", () => {
  it("a refused resubscribe (4005) is reported and retried; no event is lost", async () => {
    const c = client();
    const seen: number[] = [];
    const errors: WeftError[] = [];
    const sub = c.subscribe<number>("t", (ev) => seen.push(ev.offset), { onError: (e) => errors.push(e) });
    await Promise.all([c.connect(), tick()]);
    server.publish("t", 1);
    let n = 0;
    server.intercept = (s, m) => {
      if (m.type !== "subscribe" || n++ > 0) return false;
      s.push({ type: "error", id: m.id, code: 4005, message: "rate limited" });
      return true;
    };
    server.publish("t", 2, false); // lost on the way: a gap
    for (let i = 3; i <= 10; i++) server.publish("t", i);
    await tick(60000);
    expect(seen).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(errors.map((e) => e.code)).toEqual([4005]);
    expect(sub.active).toBe(true);
    c.close();
  });

  it("unsubscribe and subscribe again with history (React StrictMode): the history once", async () => {
    for (let i = 1; i <= 3; i++) server.publish("h", i);
    const c = client();
    await Promise.all([c.connect(), tick()]);
    const release = hold();
    const first = c.subscribe("h", () => {}, { history: 3 });
    void first.unsubscribe();
    const seen: number[] = [];
    c.subscribe<number>("h", (ev) => seen.push(ev.offset), { history: 3 });
    release();
    await tick();
    expect(seen).toEqual([1, 2, 3]);
    c.close();
  });

  it("presence joining a topic whose history subscribe is in flight: one history, presence asked after", async () => {
    for (let i = 1; i <= 3; i++) server.publish("room", i);
    const c = client();
    await Promise.all([c.connect(), tick()]);
    const release = hold();
    const seen: number[] = [];
    c.subscribe<number>("room", (ev) => seen.push(ev.offset), { history: 3 });
    c.subscribe("room", undefined, { presence: true });
    release();
    await tick();
    server.publish("room", 4);
    expect(seen).toEqual([1, 2, 3, 4]);
    const subs = server.last.received.filter((m) => m.type === "subscribe");
    expect(subs.map((m) => [m.presence, m.history, m.resume])).toEqual([
      [false, 3, undefined],
      [true, undefined, { room: { offset: 0, epoch: "e1" } }],
    ]);
    c.close();
  });

  it("an exact topic with history that a pattern also covers: in order, once", async () => {
    for (let i = 1; i <= 3; i++) server.publish("chat.a", i);
    const c = client();
    c.subscribe("chat.*", () => {});
    await Promise.all([c.connect(), tick()]);
    const release = hold();
    const seen: number[] = [];
    c.subscribe<number>("chat.a", (ev) => seen.push(ev.offset), { history: 2 });
    server.publish("chat.a", 4); // live, through the pattern, before the answer
    release();
    await tick();
    expect(seen).toEqual([3, 4]);
    c.close();
  });

  it("a passing per-topic failure (5003) keeps the subscription and retries it", async () => {
    const c = client();
    const seen: number[] = [];
    const errors: WeftError[] = [];
    const sub = c.subscribe<number>("t", (ev) => seen.push(ev.offset), { onError: (e) => errors.push(e) });
    await Promise.all([c.connect(), tick()]);
    server.publish("t", 1);
    let n = 0;
    server.intercept = (s, m) => {
      if (m.type !== "subscribe" || n++ > 1) return false;
      s.push({ type: "subscribed", id: m.id, results: [{ topic: "t", ok: false, error: { code: 5003, message: "broker unavailable" } }] });
      return true;
    };
    server.last.drop();
    await tick(60000);
    server.publish("t", 2);
    expect(seen).toEqual([1, 2]);
    expect(errors.map((e) => e.code)).toEqual([5003, 5003]);
    expect(sub.active).toBe(true);
    c.close();
  });

  it("a forbidden topic ends its subscription, and the server's revocation after a refresh too", async () => {
    const c = client();
    const errors: WeftError[] = [];
    const sub = c.subscribe("mine", () => {}, { onError: (e) => errors.push(e) });
    await Promise.all([c.connect(), tick()]);
    expect(sub.active).toBe(true);
    server.last.push({ type: "error", code: 4003, message: "the new token does not allow these subscriptions, which ended: other, mine" });
    expect(sub.active).toBe(false);
    expect(errors.map((e) => e.code)).toEqual([4003]);
    server.last.drop();
    await tick(20000);
    expect(server.last.received.some((m) => m.type === "subscribe")).toBe(false);
    c.close();
  });

  it("an application callback that throws does not stop the other topics", async () => {
    const c = client();
    const lostB: unknown[] = [];
    const seenB: number[] = [];
    c.subscribe("a", () => {}, {
      onSubscribed: (i) => {
        if (i.recovered !== undefined) throw new Error("a bug in the application");
      },
    });
    c.subscribe<number>("b", (ev) => seenB.push(ev.offset), { onUnrecovered: (u) => lostB.push(u) });
    await Promise.all([c.connect(), tick()]);
    server.publish("a", 1);
    server.publish("b", 1);
    server.last.drop();
    server.forget("b");
    server.publish("b", 1);
    // The application's exception is thrown again on its own (a timer), outside the client.
    const thrown: unknown[] = [];
    for (let i = 0; i < 200; i++) await tick(100).catch((e: unknown) => thrown.push(e));
    server.publish("b", 2);
    expect(thrown.map(String)).toEqual(["Error: a bug in the application"]);
    expect(lostB).toHaveLength(1);
    expect(seenB).toEqual([1, 2]);
    c.close();
  });
});

describe("tokens and the connection", () => {
  it("a token valid for months is refreshed near its end, not in a loop now", async () => {
    const now = () => Math.floor(Date.now() / 1000);
    let calls = 0;
    const c = client({ getToken: () => (calls++, token({ sub: "u", iat: now(), exp: now() + 90 * 86400 })) });
    await Promise.all([c.connect(), tick()]);
    await tick(60000);
    expect(calls).toBe(1);
    expect(server.last.received.filter((m) => m.type === "refresh")).toHaveLength(0);
    c.close();
  });

  it("getToken answering with the same cached token does not loop refresh requests", async () => {
    const now = Math.floor(Date.now() / 1000);
    const cached = token({ sub: "u", iat: now, exp: now + 100 });
    const c = client({ getToken: () => cached });
    await Promise.all([c.connect(), tick()]);
    await tick(95000);
    expect(server.last.received.filter((m) => m.type === "refresh")).toHaveLength(0);
    c.close();
  });

  it("close() then connect() while getToken is pending: one socket, no timer left after close()", async () => {
    const pending: ((t: string) => void)[] = [];
    const c = client({ getToken: () => new Promise<string>((r) => pending.push(r)), pingInterval: 1000 });
    void c.connect();
    await tick();
    c.close();
    void c.connect();
    await tick();
    const exp = Math.floor(Date.now() / 1000) + 3600;
    for (const r of pending) r(token({ sub: "u", exp }));
    await tick();
    expect(server.sockets).toHaveLength(1);
    c.close();
    await tick();
    expect(server.open).toHaveLength(0);
    expect(vi.getTimerCount()).toBe(0);
  });

  it("a getToken that never answers is given up on, and tried again", async () => {
    let calls = 0;
    const c = client({ getToken: () => (calls++, new Promise<string>(() => {})), requestTimeout: 1000, reconnect: { minDelay: 100, maxDelay: 100 } });
    const errors: WeftError[] = [];
    c.on("error", (e) => errors.push(e));
    void c.connect();
    await tick(2500);
    expect(calls).toBeGreaterThanOrEqual(2);
    expect(errors[0]!.code).toBe("timeout");
    c.close();
  });
});

describe("the offline queue", () => {
  it("maxAge holds while offline, not only when the connection returns", async () => {
    server.refuse = true;
    const c = client({ offlineQueue: { maxAge: 1000 } });
    void c.connect();
    await tick();
    let outcome = "pending";
    c.publish("q", 1).catch((e: WeftError) => (outcome = String(e.code)));
    await tick(1500);
    expect(outcome).toBe("expired");
    c.close();
  });
});

// A small IndexedDB and lock manager: transactions run one at a time, in order, 1 ms each.
function fakeStorage(openDelay: number) {
  const rows = new Map<number, Record<string, unknown>>();
  let next = 1;
  let chain = Promise.resolve();
  const db = {
    createObjectStore() {},
    transaction() {
      const t: Record<string, any> = {};
      const ops: (() => void)[] = [];
      const req = (f: () => unknown) => {
        const r: Record<string, any> = {};
        ops.push(() => {
          r.result = f();
          r.onsuccess?.();
        });
        return r;
      };
      t.objectStore = () => ({
        add: (e: Record<string, unknown>) => req(() => (rows.set(next, { ...e, key: next }), next++)),
        getAll: () => req(() => [...rows.values()].map((x) => ({ ...x }))),
        put: (e: Record<string, unknown>) => {
          // Inside a running transaction: applied at once.
          rows.set(e.key as number, { ...e });
        },
        delete: (k: number) => req(() => rows.delete(k)),
      });
      chain = chain.then(
        () =>
          new Promise<void>((done) =>
            setTimeout(() => {
              for (let i = 0; i < ops.length; i++) ops[i]!();
              t.oncomplete?.();
              done();
            }, 1),
          ),
      );
      return t;
    },
  };
  const indexedDB = {
    open() {
      const r: Record<string, any> = {};
      setTimeout(() => {
        r.result = db;
        r.onupgradeneeded?.();
        r.onsuccess?.();
      }, openDelay);
      return r;
    },
  };
  const held = new Set<string>();
  const locks = {
    request: (name: string, f: () => Promise<void>) => (held.add(name), f().then(() => held.delete(name))),
    query: async () => ({ held: [...held].map((name) => ({ name })), pending: [] }),
  };
  vi.stubGlobal("indexedDB", indexedDB);
  vi.stubGlobal("navigator", { locks });
  return { rows, held, leave: (e: Record<string, unknown>) => rows.set(next, { ...e, key: next++ }) };
}

describe("the offline queue in IndexedDB", () => {
  it("what a reloaded page left is sent once, even when the store opens after the welcome", async () => {
    const f = fakeStorage(50);
    f.leave({ owner: "a-page-gone", topic: "q", payload: "left behind", time: Date.now() });
    const c = client({ offlineQueue: { persist: "app" } });
    const outbox: unknown[] = [];
    c.on("outbox", (o) => outbox.push(o));
    await Promise.all([c.connect(), tick()]);
    await tick(500);
    expect(server.topic("q").events.map((e) => e.payload)).toEqual(["left behind"]);
    expect(outbox).toHaveLength(1);
    expect(f.rows.size).toBe(0);
    c.close();
  });

  it("two pages starting together: each entry is taken by one", async () => {
    const f = fakeStorage(5);
    for (let i = 0; i < 3; i++) f.leave({ owner: "gone", topic: "q", payload: i, time: Date.now() });
    const a = client({ offlineQueue: { persist: "app" } });
    const b = client({ offlineQueue: { persist: "app" } });
    await Promise.all([a.connect(), b.connect(), tick()]);
    await tick(500);
    expect(server.topic("q").events.map((e) => e.payload)).toEqual([0, 1, 2]);
    a.close();
    b.close();
  });

  it("close() rejects queued publishes and removes them: a later page does not send them", async () => {
    const f = fakeStorage(1);
    server.refuse = true;
    const c = client({ offlineQueue: { persist: "app" } });
    void c.connect();
    await tick(10);
    let outcome = "";
    c.publish("q", "cancelled").catch((e: WeftError) => (outcome = e.name));
    await tick(10);
    c.close();
    await tick(10);
    expect(outcome).toBe("ClosedError");
    expect(f.rows.size).toBe(0);
    expect(f.held.size).toBe(0);
    c.close();
  });
});
