// End to end in Node against a real `weft serve`, through a proxy that cuts connections: every
// event exactly once and in order across cuts, queued publishes delivered after the cut, a
// server restart reported as not recovered, msgpack, in-band token refresh.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { WeftClient, type Snapshot, type Subscription, type Unrecovered, type WebSocketLike } from "../src/index.js";
import { secure } from "../src/secure.js";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { CutProxy, freePort, httpPublish, jwt, listening, sleep, startServe, until, type Serve } from "./harness.js";

const WS: WebSocketLike = WebSocket; // ws's class fits the option as it is
const fast = { minDelay: 100, maxDelay: 500 };
/** Resolves when the server has made the subscription. */
const made = (sub: Subscription<never> | Subscription<any>) => new Promise((resolve) => sub.on("subscribed", resolve));

describe("against weft serve", () => {
  let serve: Serve;
  let proxy: CutProxy;

  beforeAll(async () => {
    serve = await startServe();
    proxy = await new CutProxy(serve.port).listen();
  });

  afterAll(async () => {
    await proxy?.close();
    await serve?.stop();
  });

  const client = (user: string, opts: ConstructorParameters<typeof WeftClient>[1] = {}) =>
    new WeftClient(`ws://127.0.0.1:${proxy.port}/ws`, { WebSocket: WS, params: { user }, reconnect: fast, ...opts });

  it("a filtered subscription: only matching events, across a cut, with no false gap", async () => {
    const c = client("f");
    const got: number[] = [];
    const lost: Unrecovered[] = [];
    const sub = c.subscribe<{ n: number }>("filtered", (ev) => got.push(ev.payload.n), {
      filter: { "payload.n": { $gte: 10 } },
      onUnrecovered: (u) => lost.push(u),
    });
    await Promise.all([c.connect(), made(sub)]);
    for (const n of [1, 10, 2, 11]) await httpPublish(serve.url, "filtered", { n });
    await until(() => got.length >= 2, 5000, "first matching events");
    proxy.cut();
    await until(() => c.state.state === "reconnecting", 5000, "the cut is noticed");
    for (const n of [3, 12, 4, 13]) await httpPublish(serve.url, "filtered", { n });
    proxy.restore();
    await until(() => got.length >= 4, 10000, "events missed during the cut");
    await httpPublish(serve.url, "filtered", { n: 5 });
    await httpPublish(serve.url, "filtered", { n: 14 });
    await until(() => got.length >= 5, 5000, "live again");
    expect(got).toEqual([10, 11, 12, 13, 14]);
    expect(lost).toEqual([]);
    c.close();
  });

  it("a cut mid-stream: every event exactly once, in order; publishes made while cut off arrive after", async () => {
    const a = client("a");
    const b = client("b");
    const seen: Record<string, number[]> = { a: [], b: [] };
    const lost: Unrecovered[] = [];
    const subs = [];
    for (const [name, c] of [["a", a], ["b", b]] as const) {
      subs.push(made(c.subscribe<number>("feed", (ev) => seen[name]!.push(ev.payload), { onUnrecovered: (u) => lost.push(u) })));
    }
    const states: string[] = [];
    a.on("state", (s) => states.push(s.state));
    await Promise.all([a.connect(), b.connect(), ...subs]);

    // A backend publishes steadily, straight to the server, while the clients are cut off.
    let n = 0;
    const publishing = (async () => {
      for (; n < 60; n++) {
        await httpPublish(serve.url, "feed", n);
        await sleep(25);
      }
    })();
    await until(() => seen.a.length >= 10 && seen.b.length >= 10, 10000, "first events");
    proxy.cut();
    await until(() => a.state.state === "reconnecting" && b.state.state === "reconnecting", 5000, "both notice the cut");
    // Made while disconnected: queued, sent in order after the connection returns.
    const queued = [a.publish("feed", 1000), a.publish("feed", 1001)];
    await sleep(1500);
    proxy.restore();
    await publishing;
    const answers = await Promise.all(queued);
    expect(answers[1]!.offset).toBe(answers[0]!.offset + 1);
    const all = [...Array(60).keys(), 1000, 1001].sort((x, y) => x - y);
    await until(() => seen.a.length >= 62 && seen.b.length >= 62, 10000, "every event");
    await sleep(200);
    for (const name of ["a", "b"]) expect([...seen[name]!].sort((x, y) => x - y), name).toEqual(all);
    // In publish order: the HTTP events in order, the queued two adjacent and in order.
    for (const name of ["a", "b"]) {
      const s = seen[name]!;
      expect(s.filter((x) => x < 1000)).toEqual([...Array(60).keys()]);
      expect(s.indexOf(1001)).toBe(s.indexOf(1000) + 1);
    }
    expect(lost).toEqual([]);
    expect(states).toContain("reconnecting");
    expect(a.state.state).toBe("connected");
    a.close();
    b.close();
  });

  it("a server restart loses history: the application hears not-recovered, then live events", async () => {
    const c = client("r");
    const lost: Unrecovered[] = [];
    const seen: string[] = [];
    let subscribed = 0;
    c.subscribe<string>("restart", (ev) => seen.push(ev.payload), {
      onUnrecovered: (u) => lost.push(u),
      onSubscribed: () => subscribed++,
    });
    await c.connect();
    await until(() => subscribed === 1, 5000, "subscribed");
    await httpPublish(serve.url, "restart", "before");
    await until(() => seen.length === 1, 5000, "the first event");
    const port = serve.port;
    await serve.stop();
    serve = await startServe([], port);
    await until(() => c.state.state === "connected" && lost.length === 1, 15000, "reconnected and told");
    expect(lost[0]!.from).toMatchObject({ offset: 1 });
    expect(lost[0]!.position.epoch).not.toBe(lost[0]!.from!.epoch);
    await httpPublish(serve.url, "restart", "after");
    await until(() => seen.length === 2, 5000, "the live event");
    expect(seen).toEqual(["before", "after"]);
    c.close();
  });

  it("msgpack and json clients see the same events", async () => {
    const m = client("m", { protocol: "msgpack" });
    const j = client("j");
    const got: unknown[][] = [[], []];
    const subs = [made(m.subscribe("mixed", (ev) => got[0]!.push(ev.payload))), made(j.subscribe("mixed", (ev) => got[1]!.push(ev.payload)))];
    await Promise.all([m.connect(), j.connect(), ...subs]);
    const payload = { text: "héllo ✓", n: 2 ** 40, f: -1.25, list: [1, null, true], nested: { a: "b".repeat(300) } };
    await m.publish("mixed", payload);
    await j.publish("mixed", "plain");
    await until(() => got[0]!.length === 2 && got[1]!.length === 2, 5000, "both events on both");
    expect(got[0]).toEqual([payload, "plain"]);
    expect(got[1]).toEqual(got[0]);
    expect(await m.ping()).toBeGreaterThanOrEqual(0);
    const p = await j.presence("mixed");
    expect(p.members.map((x) => x.user).sort()).toEqual(["j", "m"]);
    m.close();
    j.close();
  });
});

describe("with snapshots (weft serve --snapshots last)", () => {
  let serve: Serve;
  let proxy: CutProxy;

  beforeAll(async () => {
    serve = await startServe(["--snapshots", "last"]);
    proxy = await new CutProxy(serve.port).listen();
  });

  afterAll(async () => {
    await proxy?.close();
    await serve?.stop();
  });

  it("the state first, then only the events after it; a cut resumes without another snapshot", async () => {
    for (const n of [1, 2, 3]) await httpPublish(serve.url, "snap", { n });
    const c = new WeftClient(`ws://127.0.0.1:${proxy.port}/ws`, { WebSocket: WS, params: { user: "s" }, reconnect: fast });
    const got: number[] = [];
    const snaps: Snapshot[] = [];
    const sub = c.subscribe<{ n: number }>("snap", (ev) => got.push(ev.payload.n), {
      snapshot: true,
      onSnapshot: (s) => snaps.push(s),
    });
    await Promise.all([c.connect(), made(sub)]);
    await until(() => snaps.length === 1, 5000, "the snapshot");
    expect(snaps[0]!.data).toEqual({ n: 3 });
    expect(snaps[0]!.position.offset).toBe(3);
    await httpPublish(serve.url, "snap", { n: 4 });
    await until(() => got.length >= 1, 5000, "a live event");
    proxy.cut();
    await until(() => c.state.state === "reconnecting", 5000, "the cut is noticed");
    await httpPublish(serve.url, "snap", { n: 5 });
    proxy.restore();
    await until(() => got.length >= 2, 10000, "the event missed during the cut");
    expect(got).toEqual([4, 5]);
    expect(snaps.length).toBe(1);
    c.close();
  });
});

describe("with the secure channel (weft serve --secure-key)", () => {
  const keys = new URL("../../../bindings/python/tests/keys/", import.meta.url);
  const pinned = readFileSync(new URL("secure-p256.pub.b64", keys), "utf8").trim();
  let serve: Serve;
  let proxy: CutProxy;

  beforeAll(async () => {
    serve = await startServe(["--secure-key", fileURLToPath(new URL("secure-p256.pem", keys))]);
    proxy = await new CutProxy(serve.port).listen();
  });

  afterAll(async () => {
    await proxy?.close();
    await serve?.stop();
  });

  for (const [mode, protocol] of [
    ["encrypt", "json"],
    ["sign", "msgpack"],
  ] as const) {
    it(`${mode} over ${protocol}, pinned: sealed both ways; plain clients read the same events`, async () => {
      const c = new WeftClient(`ws://127.0.0.1:${serve.port}/ws`, { WebSocket: WS, params: { user: "sec" }, secure: secure(mode, { serverKey: pinned }), protocol });
      const plain = new WeftClient(`ws://127.0.0.1:${serve.port}/ws`, { WebSocket: WS, params: { user: "p" } });
      const got: unknown[] = [];
      const seen: unknown[] = [];
      const sub = c.subscribe("sec.room", (ev) => got.push(ev.payload));
      const sub2 = plain.subscribe("sec.room", (ev) => seen.push(ev.payload));
      await Promise.all([c.connect(), plain.connect(), made(sub), made(sub2)]);
      expect(c.secured).toBe(mode);
      expect(plain.secured).toBeUndefined();
      await c.publish("sec.room", { text: "sealed" });
      await httpPublish(serve.url, "sec.room", { text: "from the backend" });
      await until(() => got.length === 2 && seen.length === 2, 5000, "both events on both clients");
      expect(got).toEqual([{ text: "sealed" }, { text: "from the backend" }]);
      expect(seen).toEqual(got);
      expect(await c.ping()).toBeGreaterThanOrEqual(0);
      c.close();
      plain.close();
    });
  }

  it("a server key that does not match: the handshake is refused, with an error", async () => {
    const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
    const other = Buffer.from(await crypto.subtle.exportKey("raw", pair.publicKey)).toString("base64");
    const c = new WeftClient(`ws://127.0.0.1:${serve.port}/ws`, { WebSocket: WS, params: { user: "x" }, secure: secure("encrypt", { serverKey: other }), reconnect: false });
    const errors: string[] = [];
    c.on("error", (e) => errors.push(`${e.code}: ${e.message}`));
    await expect(c.connect()).rejects.toThrow();
    expect(errors.join("\n")).toMatch(/secure: .*(pinned|signature)/);
  });

  it("a server that requires the channel and a client without it: a clear error, no reconnection storm", async () => {
    const strict = await startServe(["--secure", "require"]);
    try {
      const c = new WeftClient(`ws://127.0.0.1:${strict.port}/ws`, { WebSocket: WS, params: { user: "r" }, reconnect: fast });
      const errors: string[] = [];
      c.on("error", (e) => errors.push(e.message));
      await expect(c.connect()).rejects.toThrow(/requires the secure channel/);
      expect(c.state.state).toBe("closed");
      await sleep(300);
      expect(errors.length).toBe(1);
      const s = new WeftClient(`ws://127.0.0.1:${strict.port}/ws`, { WebSocket: WS, params: { user: "r2" }, secure: secure() });
      await s.connect();
      expect(s.secured).toBe("encrypt");
      s.close();
    } finally {
      await strict.stop();
    }
  });

  it("a frame altered on the way: dropped with 4412, then a new connection and new keys resume the topic", async () => {
    const c = new WeftClient(`ws://127.0.0.1:${proxy.port}/ws`, { WebSocket: WS, params: { user: "t" }, secure: secure(), reconnect: fast });
    const got: number[] = [];
    const errors: string[] = [];
    c.on("error", (e) => errors.push(String(e.code)));
    const sub = c.subscribe<{ n: number }>("sec.tamper", (ev) => got.push(ev.payload.n));
    await Promise.all([c.connect(), made(sub)]);
    await httpPublish(serve.url, "sec.tamper", { n: 1 });
    await until(() => got.length === 1, 5000, "the first event");
    let flipped = false;
    proxy.down = (chunk) => {
      if (flipped) return chunk;
      flipped = true;
      const b = Buffer.from(chunk);
      b[b.length - 1]! ^= 1; // the last byte of a sealed frame: its tag
      return b;
    };
    await httpPublish(serve.url, "sec.tamper", { n: 2 });
    await until(() => got.length === 2, 10000, "the altered event, resumed after reconnecting");
    proxy.down = undefined;
    expect(got).toEqual([1, 2]);
    expect(errors).toContain("secure");
    expect(c.secured).toBe("encrypt");
    c.close();
  });
});

describe("with tokens", () => {
  const secret = "a-test-secret-that-is-at-least-32-bytes-long";
  let serve: Serve;
  beforeAll(async () => {
    serve = await startServe([], undefined, { WEFT_JWT_SECRET: secret });
  });
  afterAll(async () => serve?.stop());

  it("refreshes in-band before expiry: the session outlives its first token", async () => {
    let issued = 0;
    const getToken = () => {
      issued++;
      const now = Math.floor(Date.now() / 1000);
      return jwt(secret, { sub: "tess", iat: now, exp: now + 3, publish: ["t.>"] });
    };
    const c = new WeftClient(`ws://127.0.0.1:${serve.port}/ws`, { WebSocket: WS, getToken, reconnect: fast });
    const states: string[] = [];
    c.on("state", (s) => states.push(s.state));
    await c.connect();
    expect(c.session?.user).toBe("tess");
    await sleep(5000);
    expect(issued).toBeGreaterThanOrEqual(3);
    expect(states).toEqual(["connecting", "connected"]); // never dropped
    await expect(c.publish("t.x", 1)).resolves.toMatchObject({ offset: 1 });
    await expect(c.publish("other", 1)).rejects.toMatchObject({ name: "ServerError", code: 4003 });
    c.close();
  });

  it("a refused token: it keeps asking for a new one and connects when it gets a good one", async () => {
    let calls = 0;
    const getToken = () => {
      calls++;
      const now = Math.floor(Date.now() / 1000);
      return calls < 3 ? "not-a-token" : jwt(secret, { sub: "late", exp: now + 60 });
    };
    const c = new WeftClient(`ws://127.0.0.1:${serve.port}/ws`, { WebSocket: WS, getToken, reconnect: { minDelay: 50, maxDelay: 100 } });
    await c.connect();
    expect(calls).toBe(3);
    expect(c.session?.user).toBe("late");
    c.close();
  });
});

describe("a cluster of two nodes over Redis", () => {
  it("a client given both nodes rides through a node killed with -9: every event once, in order", async () => {
    const rport = await freePort();
    const redis = spawn("redis-server", ["--port", String(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
    try {
      expect(await listening(rport, 10000)).toBe(true);
      const args = (name: string) => ["--broker", `redis://127.0.0.1:${rport}`, "--node-name", name, "--node-ttl", "3"];
      const a = await startServe(args("ts-a"));
      const b = await startServe(args("ts-b"));
      try {
        const c = new WeftClient([`ws://127.0.0.1:${a.port}/ws`, `ws://127.0.0.1:${b.port}/ws`], {
          WebSocket: WS,
          params: { user: "fo" },
          reconnect: fast,
        });
        const seen: number[] = [];
        const lost: Unrecovered[] = [];
        const sub = c.subscribe<number>("failover", (ev) => seen.push(ev.payload), { onUnrecovered: (u) => lost.push(u) });
        await Promise.all([c.connect(), made(sub)]);
        expect(c.url).toContain(`:${a.port}/`);
        for (let n = 0; n < 5; n++) await httpPublish(b.url, "failover", n);
        await until(() => seen.length >= 5, 5000, "first events");
        await a.stop(); // kill -9
        for (let n = 5; n < 10; n++) await httpPublish(b.url, "failover", n);
        await until(() => seen.length >= 10, 10000, "events after the node was lost");
        expect(seen).toEqual([...Array(10).keys()]);
        expect(lost).toEqual([]);
        expect(c.url).toContain(`:${b.port}/`);
        c.close();
      } finally {
        await a.stop();
        await b.stop();
      }
    } finally {
      redis.kill("SIGKILL");
    }
  });
});

