// What the end-to-end tests need: a real `weft serve` on a free port, a TCP proxy in front of
// it that can cut every connection and refuse new ones (the way a network cut looks to a
// client; a browser's offline mode does not touch WebSockets), and HS256 tokens.
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync } from "node:fs";
import net from "node:net";
import { Transform } from "node:stream";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../../..", import.meta.url));

/** The `weft` binary: $WEFT_BIN, else the workspace's ci or debug build. */
export function weftBin(): string {
  const candidates = [process.env.WEFT_BIN, `${root}target/ci/weft`, `${root}target/release/weft`, `${root}target/debug/weft`];
  const found = candidates.find((c) => c && existsSync(c));
  if (!found) throw new Error("no weft binary: build it (cargo build -p weft-cli) or set WEFT_BIN");
  return found;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Whether something listens on 127.0.0.1:`port` within `ms`. */
export async function listening(port: number, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect(port, "127.0.0.1", () => (c.destroy(), resolve(true)));
      c.on("error", () => resolve(false));
    });
    if (ok) return true;
    await new Promise((r) => setTimeout(r, 25));
  }
  return false;
}

export interface Serve {
  port: number;
  url: string;
  child: ChildProcess;
  log: () => string;
  stop(): Promise<void>;
}

/** Starts `weft serve` (anonymous unless `args` say otherwise) and waits until it listens. */
export async function startServe(args: string[] = [], port?: number, env: Record<string, string> = {}): Promise<Serve> {
  for (let attempt = 0; attempt < 3; attempt++) {
    const p = port ?? (await freePort());
    const base = { ...process.env };
    delete base.WEFT_JWT_SECRET;
    const child = spawn(weftBin(), ["serve", "--addr", `127.0.0.1:${p}`, ...args], {
      env: { ...base, RUST_LOG: "warn", ...env },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let log = "";
    child.stderr!.on("data", (d) => (log += d));
    let exited = false;
    child.on("exit", () => (exited = true));
    const up = await Promise.race([listening(p, 30000), new Promise<false>((r) => child.once("exit", () => r(false)))]);
    if (up && !exited) {
      return {
        port: p,
        url: `http://127.0.0.1:${p}`,
        child,
        log: () => log,
        stop: () =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) return resolve();
            child.once("exit", () => resolve());
            child.kill("SIGKILL");
          }),
      };
    }
    child.kill("SIGKILL");
    if (!/address already in use/i.test(log) || port !== undefined) throw new Error(`weft serve did not start:\n${log}`);
  }
  throw new Error("weft serve: its port was taken three times");
}

/** A TCP proxy to `target` on 127.0.0.1 that can cut all its connections and refuse new ones. */
export class CutProxy {
  port = 0;
  private readonly server: net.Server;
  private readonly open = new Set<net.Socket>();
  private cutOff = false;
  /** Connections accepted (not refused) so far. */
  accepted = 0;
  /** When set, each chunk from the server passes through it on its way to the client. */
  down?: (chunk: Buffer) => Buffer;

  constructor(public target: number) {
    this.server = net.createServer((client) => {
      if (this.cutOff) return client.destroy();
      this.accepted++;
      const upstream = net.connect(this.target, "127.0.0.1");
      this.open.add(client).add(upstream);
      const done = () => {
        client.destroy();
        upstream.destroy();
        this.open.delete(client);
        this.open.delete(upstream);
      };
      client.on("error", done).on("close", done);
      upstream.on("error", done).on("close", done);
      client.pipe(upstream);
      const down = new Transform({ transform: (chunk: Buffer, _enc, cb) => cb(null, this.down ? this.down(chunk) : chunk) });
      upstream.pipe(down).pipe(client);
    });
  }

  async listen(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }

  /** Drops every connection (RST, mid-stream) and refuses new ones until `restore()`. */
  cut(): void {
    this.cutOff = true;
    for (const s of this.open) s.resetAndDestroy();
    this.open.clear();
  }

  restore(): void {
    this.cutOff = false;
  }

  close(): Promise<void> {
    this.cut();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** An HS256 JWT signed with `secret`. */
export function jwt(secret: string, claims: Record<string, unknown>): string {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
}

/** Publishes through the HTTP API (the way a backend publishes). */
export async function httpPublish(base: string, topic: string, payload: unknown): Promise<{ offset: number; epoch: string }> {
  const r = await fetch(`${base}/api/publish`, { method: "POST", body: JSON.stringify({ topic, payload }) });
  if (!r.ok) throw new Error(`publish: ${r.status} ${await r.text()}`);
  return (await r.json()) as { offset: number; epoch: string };
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits until `f()` is true, or fails after `ms` with `what`. */
export async function until(f: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await sleep(20);
  }
}
