// An in-process stand-in for `weft serve` behind a fake WebSocket: enough of the engine
// (welcome, subscribe with resume and history, publish with offsets, presence, ping, refresh)
// for the client's unit tests to run under fake timers. Each test can take over any reply.
import { decode, encode } from "../src/msgpack.js";
import { matches, type WebSocketLike } from "../src/client.js";

export type Msg = Record<string, any> & { type: string };

export class FakeSocket {
  readyState = 0;
  binaryType = "blob";
  onopen: ((ev: unknown) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  /** What the client sent, decoded. */
  readonly received: Msg[] = [];
  readonly subs = new Set<string>();

  constructor(
    readonly server: FakeServer,
    readonly url: string,
    readonly protocols: string[],
  ) {}

  get binary(): boolean {
    return this.protocols.includes("weft.v1.msgpack");
  }

  get query(): URLSearchParams {
    return new URL(this.url).searchParams;
  }

  send(data: string | Uint8Array): void {
    if (this.readyState !== 1) throw new Error("not open");
    const m = (typeof data === "string" ? JSON.parse(data) : decode(data)) as Msg;
    this.received.push(m);
    this.server.handle(this, m);
  }

  close(code = 1005, reason = ""): void {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }

  // ---- the server's side ----

  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  push(m: Msg): void {
    if (this.readyState !== 1) return;
    const data = this.binary ? encode(m).slice().buffer : JSON.stringify(m);
    this.onmessage?.({ data });
  }

  /** The connection ends without a close handshake (a cut cable: 1006). */
  drop(code = 1006, reason = ""): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

interface Topic {
  epoch: string;
  events: Msg[];
}

export class FakeServer {
  readonly sockets: FakeSocket[] = [];
  readonly topics = new Map<string, Topic>();
  /** Refuse connections: they close (1006) without opening. */
  refuse = false;
  /** Refuse connections to these hosts only (one fake server standing for a cluster's nodes). */
  readonly refuseHosts = new Set<string>();
  /** Answer pings (off: the connection seems dead). */
  pong = true;
  /** Replace the answer to a client message; return true when handled. */
  intercept?: (s: FakeSocket, m: Msg) => boolean;
  /** When connections were attempted (Date.now()). */
  readonly attempts: number[] = [];
  epochs = 0;

  readonly WebSocket: WebSocketLike;

  constructor() {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const server = this;
    this.WebSocket = class {
      constructor(url: string, protocols?: string | string[]) {
        const s = new FakeSocket(server, url, typeof protocols === "string" ? [protocols] : (protocols ?? []));
        server.sockets.push(s);
        server.attempts.push(Date.now());
        queueMicrotask(() => server.accept(s));
        return s;
      }
    } as unknown as WebSocketLike;
  }

  get last(): FakeSocket {
    return this.sockets[this.sockets.length - 1]!;
  }

  get open(): FakeSocket[] {
    return this.sockets.filter((s) => s.readyState === 1);
  }

  accept(s: FakeSocket): void {
    if (s.readyState !== 0) return;
    if (this.refuse || this.refuseHosts.has(new URL(s.url).host)) return s.drop(1006);
    s.open();
    s.push({ type: "welcome", version: 1, session: `s${this.sockets.length}`, user: s.query.get("user") ?? "anon", time: Date.now(), heartbeat: 25000 });
  }

  topic(name: string): Topic {
    let t = this.topics.get(name);
    if (!t) this.topics.set(name, (t = { epoch: `e${++this.epochs}`, events: [] }));
    return t;
  }

  /** Publishes as the engine does; returns the event (delivered to subscribers unless `deliver` is false). */
  publish(topic: string, payload: unknown, deliver = true): Msg {
    const t = this.topic(topic);
    const offset = t.events.length + 1;
    const ev = { type: "event", topic, offset, epoch: t.epoch, id: `${t.epoch}-${offset}`, time: Date.now(), payload };
    t.events.push(ev);
    if (deliver) for (const s of this.open) if ([...s.subs].some((p) => matches(p, topic))) s.push(ev);
    return ev;
  }

  /** History lost, as after a restart: a new epoch from offset 0. */
  forget(topic: string): void {
    this.topics.delete(topic);
  }

  handle(s: FakeSocket, m: Msg): void {
    if (this.intercept?.(s, m)) return;
    const reply = (r: Msg) => s.push({ ...r, id: m.id });
    switch (m.type) {
      case "ping":
        if (this.pong) reply({ type: "pong", time: Date.now() });
        return;
      case "publish": {
        const ev = this.publish(m.topic, m.payload);
        return reply({ type: "published", topic: m.topic, offset: ev.offset, epoch: ev.epoch });
      }
      case "subscribe": {
        const results: Msg[] = [];
        const replays: Msg[] = [];
        for (const topic of m.topics as string[]) {
          s.subs.add(topic);
          if (topic.includes("*") || topic.includes(">")) {
            results.push({ topic, ok: true } as unknown as Msg);
            continue;
          }
          const t = this.topic(topic);
          const top = t.events.length;
          const r = { topic, ok: true, offset: top, epoch: t.epoch } as unknown as Msg;
          const from = m.resume?.[topic];
          if (from) {
            r.recovered = from.epoch === t.epoch && from.offset <= top;
            if (r.recovered) {
              const missed = t.events.slice(from.offset);
              r.replayed = missed.length;
              replays.push(...missed);
            }
          } else if (m.history) {
            const recent = t.events.slice(Math.max(0, top - m.history));
            r.replayed = recent.length;
            replays.push(...recent);
          }
          results.push(r);
        }
        reply({ type: "subscribed", results } as Msg);
        for (const ev of replays) s.push(ev);
        return;
      }
      case "unsubscribe":
        for (const t of m.topics) s.subs.delete(t);
        return reply({ type: "unsubscribed", topics: m.topics });
      case "presence":
        return reply({ type: "presence", topic: m.topic, count: 1, members: [{ user: "alice", session: "s1" }] });
      case "refresh":
        return reply({ type: "refreshed", exp: 0 });
      case "send":
        return reply({ type: "sent" });
    }
  }
}

/** A JWT-shaped token (unsigned: the fake server does not check it) with these claims. */
export function token(claims: Record<string, unknown>): string {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}.sig`;
}
