// Headless Chromium against `weft serve` over TLS (a throwaway test CA; Chromium is told to
// trust the server's key by flag): the chat page works over wss:// — two users see each
// other's messages — once with Chromium's defaults and once with HTTP/2 switched off, and the
// test records which transport Chromium used for the WebSocket: an HTTP/2 extended CONNECT
// (RFC 8441; `connections_http2_total` in /api/stats grows) or an HTTP/1.1 upgrade.
//
// usage: node tls.mjs            (WEFT=/path/to/weft, else target/ci/weft)
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const WEFT = process.env.WEFT || path.join(ROOT, "target/ci/weft");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
setTimeout(() => {
  console.error("tls.mjs: timed out");
  process.exit(1);
}, 120_000).unref();

const dir = mkdtempSync(path.join(os.tmpdir(), "weft-tls-browser-"));
const sh = (cmd) => execFileSync("sh", ["-c", cmd], { cwd: dir, stdio: ["ignore", "pipe", "ignore"] }).toString().trim();
sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=weft test CA'");
sh("openssl req -newkey rsa:2048 -nodes -keyout key.pem -out srv.csr -subj /CN=localhost");
sh("printf 'subjectAltName=DNS:localhost\\n' > ext.cnf");
sh("openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 2 -extfile ext.cnf");
const spki = sh("openssl x509 -pubkey -noout -in cert.pem | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64");

const port = await new Promise((res) => {
  const s = net.createServer().listen(0, "127.0.0.1", () => {
    const p = s.address().port;
    s.close(() => res(p));
  });
});
const serve = spawn(WEFT, ["serve", "--addr", `127.0.0.1:${port}`, "--tls-cert", path.join(dir, "cert.pem"), "--tls-key", path.join(dir, "key.pem")], {
  stdio: ["ignore", "ignore", "ignore"],
});
for (let i = 0; i < 200; i++) {
  const up = await new Promise((res) => {
    const c = net.connect(port, "127.0.0.1", () => {
      c.destroy();
      res(true);
    });
    c.on("error", () => res(false));
  });
  if (up) break;
  await sleep(50);
}
const base = `https://localhost:${port}`;

async function stats(page) {
  return page.evaluate(async () => (await fetch("/api/stats")).json());
}

let failed = false;
for (const [name, extra] of [["defaults", []], ["HTTP/2 off", ["--disable-http2"]]]) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [`--ignore-certificate-errors-spki-list=${spki}`, "--host-resolver-rules=MAP localhost 127.0.0.1", ...extra],
  });
  try {
    const ctx = await browser.newContext();
    const [alice, bob] = [await ctx.newPage(), await ctx.newPage()];
    await alice.goto(base + "/");
    const before = await stats(alice);
    const room = "tls-" + name.replace(/\W/g, "");
    for (const [page, user] of [[alice, "alice"], [bob, "bob"]]) {
      await page.goto(base + "/chat");
      await page.fill("#user", user);
      await page.fill("#room", room);
      await page.click("#join button");
    }
    await alice.waitForSelector("#log >> text=bob joined", { timeout: 10000 });
    await alice.fill("#text", `hello over ${name}`);
    await alice.press("#text", "Enter");
    await bob.waitForSelector(`#log >> text=hello over ${name}`, { timeout: 10000 });
    const after = await stats(alice);
    const ws = after.connections_total - before.connections_total;
    const h2 = after.connections_http2_total - before.connections_http2_total;
    const pageProto = await alice.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
    assert.ok(ws >= 2, `two WebSockets opened (${ws})`);
    if (extra.includes("--disable-http2")) {
      assert.equal(h2, 0, "with HTTP/2 off the WebSockets are HTTP/1.1 upgrades");
      assert.equal(pageProto, "http/1.1");
    }
    const transport = h2 === ws ? "HTTP/2 extended CONNECT (RFC 8441)" : h2 === 0 ? "HTTP/1.1 upgrade" : `mixed (${h2} of ${ws} over HTTP/2)`;
    console.log(`ok   chat over wss:// with Chromium ${name}: pages over ${pageProto}, WebSockets by ${transport}`);
  } catch (e) {
    failed = true;
    console.log(`FAIL chat over wss:// with Chromium ${name}: ${String(e.message || e).split("\n")[0]}`);
  } finally {
    await browser.close();
  }
}
serve.kill("SIGTERM");
rmSync(dir, { recursive: true, force: true });
process.exit(failed ? 1 : 0);
