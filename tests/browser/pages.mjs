// Headless Chromium (Debian's package) against `weft serve`: the dashboard shows live numbers
// and its chart, and chat users see each other, the room's history, HTTP-published payloads,
// survive a dropped connection and a server restart without missing or repeated messages, and
// see what a JWT server wants, and see who is typing. Both pages load without a 404 and fit a
// 390 px wide phone (screenshots in target/test-reports).
//
// usage: node pages.mjs http://127.0.0.1:PORT
//
// PORT is a running anonymous `weft serve`. For the JWT, reconnect and server-down checks the
// test starts servers of its own with the same binary: $WEFT, else target/ci/weft.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdirSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const base = process.argv[2];
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const WEFT = process.env.WEFT || path.join(ROOT, "target/ci/weft");
const REPORTS = path.join(ROOT, "target/test-reports");
mkdirSync(REPORTS, { recursive: true });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- helpers: own servers, a TCP proxy that can drop connections, JWTs

const children = new Set();
async function portFree() {
  return new Promise((res) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => res(p)); });
  });
}
async function waitPort(port, up = true) {
  for (let i = 0; i < 200; i++) {
    const open = await new Promise((res) => {
      const c = net.connect(port, "127.0.0.1", () => { c.destroy(); res(true); });
      c.on("error", () => res(false));
    });
    if (open === up) return;
    await sleep(50);
  }
  throw new Error(`port ${port} did not become ${up ? "open" : "closed"}`);
}
async function startServe(port, args = []) {
  const child = spawn(WEFT, ["serve", "--addr", `127.0.0.1:${port}`, ...args], { stdio: ["ignore", "ignore", "ignore"] });
  children.add(child);
  child.on("exit", () => children.delete(child));
  await waitPort(port);
  return child;
}
async function stopServe(child) {
  const done = new Promise((res) => child.once("exit", (code) => res(code)));
  child.kill("SIGTERM");
  const code = await done;
  assert.equal(code, 0, "weft serve exits 0 on SIGTERM");
}
function proxy(target) {
  const socks = new Set();
  let up = true;
  const srv = net.createServer((c) => {
    if (!up) { c.destroy(); return; }
    const s = net.connect(target, "127.0.0.1");
    for (const x of [c, s]) { socks.add(x); x.on("error", () => {}); x.on("close", () => { socks.delete(x); c.destroy(); s.destroy(); }); }
    c.pipe(s); s.pipe(c);
  });
  return new Promise((res) => srv.listen(0, "127.0.0.1", () => res({
    port: srv.address().port,
    cut() { up = false; for (const x of socks) x.destroy(); },
    restore() { up = true; },
    close() { up = false; for (const x of socks) x.destroy(); srv.close(); },
  })));
}
function jwt(claims, secret) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const data = b64({ alg: "HS256", typ: "JWT" }) + "." + b64(claims);
  return data + "." + createHmac("sha256", secret).update(data).digest("base64url");
}
async function join(page, url, name, room, token) {
  await page.goto(url + "/chat");
  await page.fill("#user", name);
  await page.fill("#room", room);
  if (token !== undefined) await page.fill("#token", token);
  await page.click("#join button");
}
// Each numbered check runs on even when an earlier one failed, so one run shows every failure.
const failures = [];
async function step(name, fn) {
  try {
    await fn();
    console.log("ok   " + name);
  } catch (e) {
    failures.push(name);
    console.log("FAIL " + name + ": " + String(e.message || e).split("\n")[0]);
  }
}
const texts = (page) => page.$$eval("#log .message", (els) => els.map((e) => e.textContent));
const count = (arr, s) => arr.filter((t) => t.includes(s)).length;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--headless=new"],
});
try {
  const ctx = await browser.newContext();
  ctx.setDefaultTimeout(8000);
  const errors = [];          // uncaught page errors, anywhere
  const failed = [];          // HTTP responses >= 400 and console errors on the main server's pages
  const watch = (p, strict = true) => {
    p.on("pageerror", (e) => errors.push(String(e)));
    if (!strict) return;
    p.on("response", (r) => { if (r.status() >= 400) failed.push(`${r.status()} ${r.url()}`); });
    p.on("console", (m) => { if (m.type() === "error") failed.push(`console: ${m.text()}`); });
  };

  // ---- Chat: alice and bob join the same room.
  const alice = await ctx.newPage();
  const bob = await ctx.newPage();
  for (const p of [alice, bob]) watch(p);
  await alice.goto(base + "/chat");
  const disabledStyle = await alice.$eval("#sendbtn", (b) => ({ disabled: b.disabled, bg: getComputedStyle(b).backgroundColor, cursor: getComputedStyle(b).cursor }));
  for (const [page, name] of [[alice, "alice"], [bob, "bob"]]) {
    await join(page, base, name, "browser-test");
    await page.waitForSelector("text=connected to chat.browser-test");
  }
  await alice.waitForSelector("#log >> text=bob joined");
  await alice.fill("#text", "hello from alice");
  await alice.press("#text", "Enter");
  await bob.waitForSelector("#log >> text=hello from alice");
  await alice.waitForSelector("#log >> text=hello from alice");
  await bob.waitForFunction(() => document.getElementById("count").textContent === "2");
  await bob.close();
  await alice.waitForSelector("#log >> text=bob left");
  console.log("chat page: join, message, presence, leave ok");

  await step("6 disabled send button looks disabled", async () => {
    assert.ok(disabledStyle.disabled);
    assert.equal(disabledStyle.cursor, "not-allowed", "cursor of the disabled send button");
    const enabledBg = await alice.$eval("#sendbtn", (b) => getComputedStyle(b).backgroundColor);
    assert.notEqual(disabledStyle.bg, enabledBg, "disabled and enabled send buttons have the same colour");
  });

  await step("1 a late joiner sees the room's history, once", async () => {
    const dave = await ctx.newPage();
    watch(dave);
    await join(dave, base, "dave", "browser-test");
    await dave.waitForSelector("text=connected to chat.browser-test");
    await dave.waitForSelector("#log >> text=hello from alice", { timeout: 5000 });
    await sleep(300);
    assert.equal(count(await texts(dave), "hello from alice"), 1, "history shown once");
  });

  await step("3 HTTP-published payloads (string, object) render sensibly", async () => {
    for (const payload of ["plain text over http", { price: 3, sym: "EUR" }]) {
      const r = await fetch(base + "/api/publish", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ topic: "chat.browser-test", payload }) });
      assert.equal(r.status, 200, await r.text());
    }
    await sleep(500);
    assert.ok(!(await alice.textContent("#log")).includes("undefined"), "undefined in the log");
    await alice.waitForSelector("#log >> text=plain text over http", { timeout: 3000 });
    await alice.waitForSelector('#log >> text={"price":3,"sym":"EUR"}', { timeout: 3000 });
  });

  await step("10 typing indicator: the other page sees who is typing, never oneself, and it goes away", async () => {
    const erin = await ctx.newPage();
    const frank = await ctx.newPage();
    try {
      for (const p of [erin, frank]) watch(p);
      for (const [p, n] of [[erin, "erin"], [frank, "frank"]]) {
        await join(p, base, n, "typing-test");
        await p.waitForSelector("text=connected to chat.typing-test");
      }
      await frank.waitForSelector("#log >> text=erin joined").catch(() => {});
      await erin.locator("#text").pressSequentially("hel", { delay: 50 });
      await frank.waitForFunction(() => /erin is typing/.test(document.getElementById("typing").textContent), null, { timeout: 3000 });
      assert.equal((await erin.textContent("#typing")).trim(), "", "one's own typing is not shown");
      await frank.waitForFunction(() => document.getElementById("typing").textContent === "", null, { timeout: 5000 });
      await erin.locator("#text").pressSequentially("lo", { delay: 50 });
      await frank.waitForFunction(() => /erin is typing/.test(document.getElementById("typing").textContent), null, { timeout: 3000 });
      await erin.press("#text", "Enter");
      await frank.waitForSelector("#log >> text=hello");
      await frank.waitForFunction(() => document.getElementById("typing").textContent === "", null, { timeout: 1000 });
    } finally {
      await erin.close();
      await frank.close();
    }
  });

  await step("7 chat and dashboard fit a 390 px wide screen", async () => {
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 } });
    phone.setDefaultTimeout(8000);
    try {
      const ph = await phone.newPage();
      watch(ph);
      await join(ph, base, "phone", "browser-test");
      await ph.waitForSelector("text=connected to chat.browser-test");
      await ph.fill("#text", "a-very-long-word-" + "x".repeat(120));
      await ph.press("#text", "Enter");
      await ph.waitForSelector("#log >> text=a-very-long-word");
      await ph.waitForFunction(() => document.getElementById("count").textContent !== "0");
      await ph.screenshot({ path: path.join(REPORTS, "chat-390.png"), fullPage: true }).catch(() => {});
      const fit = await ph.evaluate(() => ({
        scroll: document.documentElement.scrollWidth,
        inner: innerWidth,
        aside: document.querySelector("aside").getBoundingClientRect().right,
      }));
      assert.ok(fit.scroll <= fit.inner && fit.aside <= fit.inner, `chat at 390 px: scrollWidth ${fit.scroll}, member list right edge ${fit.aside}, width ${fit.inner}`);
      const dph = await phone.newPage();
      watch(dph);
      await dph.goto(base + "/");
      await dph.waitForFunction(() => Number(document.body.dataset.updates) >= 1);
      const dfit = await dph.evaluate(() => [document.documentElement.scrollWidth, innerWidth]);
      assert.ok(dfit[0] <= dfit[1], `dashboard at 390 px: scrollWidth ${dfit[0]} > ${dfit[1]}`);
      await dph.screenshot({ path: path.join(REPORTS, "dashboard-390.png"), fullPage: true }).catch(() => {});
    } finally {
      await phone.close();
    }
  });

  // ---- Dashboard: live numbers update and include the open chat connection.
  const dash = await ctx.newPage();
  watch(dash);
  await dash.goto(base + "/");
  await dash.waitForFunction(() => Number(document.body.dataset.updates) >= 3, null, { timeout: 10000 });
  const connections = Number(await dash.textContent("#connections"));
  assert.ok(connections >= 1, `dashboard shows ${connections} connections`);
  const topics = Number(await dash.textContent("#topics"));
  assert.ok(topics >= 1, `dashboard shows ${topics} topics`);
  // Traffic moves the chart: publish a burst through the chat page, then wait for the rate.
  for (let i = 0; i < 20; i++) {
    await alice.fill("#text", "burst " + i);
    await alice.press("#text", "Enter");
  }
  await dash.waitForFunction(() => document.getElementById("in-rate").textContent !== "0", null, { timeout: 10000 });
  const drawn = await dash.evaluate(() => {
    const c = document.getElementById("chart");
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let colored = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && (d[i] !== d[i + 1] || d[i + 1] !== d[i + 2])) colored++;
    return colored;
  });
  assert.ok(drawn > 50, `chart has ${drawn} coloured pixels`);
  // The server's own view: the chat room is among the busiest topics, the delivery latency and
  // the process's memory are shown.
  await dash.waitForSelector("#busiest >> text=chat.browser-test", { timeout: 10000 });
  await dash.waitForFunction(() => /ms/.test(document.getElementById("latency").textContent), null, { timeout: 10000 });
  const memory = await dash.textContent("#memory");
  assert.ok(/MiB|GiB/.test(memory), `memory shows ${memory}`);
  console.log(`dashboard: ${connections} connections, ${topics} topics, chart drawn (${drawn} px), latency ${await dash.textContent("#latency")}, memory ${memory}`);

  await step("9 no 404s or console errors on either page", async () => {
    assert.deepEqual(failed, [], failed.join("; "));
  });

  // ---- A JWT server: the page says a token is needed, and names come from the token.
  const SECRET = "browser-test-secret-of-at-least-32-bytes";
  const jport = await portFree();
  const jserve = await startServe(jport, ["--jwt-secret", SECRET]);
  try {
    const jp = await ctx.newPage();
    jp.on("pageerror", (e) => errors.push(String(e)));
    await step("5 a JWT server without a token: the page says a token is required", async () => {
      await join(jp, `http://127.0.0.1:${jport}`, "mallory", "jwt-room");
      await jp.waitForSelector("text=requires a token", { timeout: 5000 });
      assert.ok(!(await jp.textContent("#status")).includes("1006"), "says why, not just 1006");
      await jp.fill("#token", "not-a-token");
      await jp.click("#join button");
      await jp.waitForSelector("text=refused the token", { timeout: 5000 });
    });
    await step("4 on a JWT server the name comes from the token, not the name box", async () => {
      const token = jwt({ sub: "carol", publish: ["chat.>"], exp: Math.floor(Date.now() / 1000) + 600 }, SECRET);
      await join(jp, `http://127.0.0.1:${jport}`, "mallory", "jwt-room", token);
      await jp.waitForSelector("text=connected to chat.jwt-room");
      await jp.fill("#text", "signed message");
      await jp.press("#text", "Enter");
      await jp.waitForSelector("#log >> text=signed message");
      const mine = (await texts(jp)).find((t) => t.includes("signed message"));
      assert.ok(mine.startsWith("carol:"), `own message shown as ${JSON.stringify(mine)}`);
      assert.ok((await jp.textContent("#status")).includes("as carol"), "status names the token's user");
      await jp.waitForSelector("#members >> text=carol");
    });
    await jp.close();
  } finally {
    await stopServe(jserve);
  }

  // ---- Reconnect: bob's connection (through a proxy) drops; alice publishes meanwhile; bob
  // comes back, resumes from his last offset, sees everything once and in order. Then the
  // server restarts: both reconnect, and the dashboard shows the outage and recovers.
  const rport = await portFree();
  let rserve = await startServe(rport);
  const px = await proxy(rport);
  const direct = `http://127.0.0.1:${rport}`;
  try {
    const a = await ctx.newPage();
    const b = await ctx.newPage();
    const d = await ctx.newPage();
    for (const p of [a, b, d]) p.on("pageerror", (e) => errors.push(String(e)));
    await join(a, direct, "alice", "rc");
    await a.waitForSelector("text=connected to chat.rc");
    await join(b, `http://127.0.0.1:${px.port}`, "bob", "rc");
    await b.waitForSelector("text=connected to chat.rc");
    await a.fill("#text", "before drop");
    await a.press("#text", "Enter");
    await b.waitForSelector("#log >> text=before drop");
    await step("2 reconnect after a dropped connection, resume without gaps or duplicates", async () => {
      px.cut();
      await b.waitForFunction(() => /reconnecting/.test(document.getElementById("status").textContent), null, { timeout: 5000 });
      for (let i = 1; i <= 3; i++) {
        await a.fill("#text", "while away " + i);
        await a.press("#text", "Enter");
        await a.waitForSelector("#log >> text=while away " + i);
      }
      await sleep(1200);   // at least one refused retry
      px.restore();
      await b.waitForSelector("#log >> text=while away 3", { timeout: 15000 });
      await a.fill("#text", "after return");
      await a.press("#text", "Enter");
      await b.waitForSelector("#log >> text=after return");
      await sleep(300);
      const got = (await texts(b)).filter((t) => /before drop|while away|after return/.test(t)).map((t) => t.replace(/^alice:\s*/, ""));
      assert.deepEqual(got, ["before drop", "while away 1", "while away 2", "while away 3", "after return"], "nothing missed, nothing repeated, in order");
    });

    await d.goto(direct + "/");
    await d.waitForFunction(() => Number(document.body.dataset.updates) >= 1);
    await stopServe(rserve);
    await step("8 dashboard: server unreachable state, stale numbers greyed out", async () => {
      await d.waitForFunction(() => document.body.dataset.state === "down", null, { timeout: 5000 });
      const st = await d.textContent("#status");
      assert.ok(/unreachable/i.test(st) && !/TypeError/.test(st), `dashboard status while down: ${st}`);
      const stale = await d.$eval("#connections", (e) => Number(getComputedStyle(e).opacity));
      assert.ok(stale < 1, "stale numbers are greyed out");
      await d.screenshot({ path: path.join(REPORTS, "dashboard-down.png") }).catch(() => {});
    });
    await step("2 chat pages say they are reconnecting while the server is down", async () => {
      for (const p of [a, b]) await p.waitForFunction(() => /reconnecting/.test(document.getElementById("status").textContent), null, { timeout: 5000 });
    });
    rserve = await startServe(rport);
    await step("8 dashboard recovers when the server is back", async () => {
      await d.waitForFunction(() => document.body.dataset.state === "up" && /^up /.test(document.getElementById("status").textContent), null, { timeout: 5000 });
      assert.equal(await d.$eval("#connections", (e) => getComputedStyle(e).opacity), "1");
    });
    await step("2 chat pages reconnect after a server restart and talk again", async () => {
      for (const p of [a, b]) await p.waitForFunction(() => document.getElementById("status").textContent.startsWith("connected to chat.rc"), null, { timeout: 15000 });
      await b.waitForFunction(() => document.getElementById("count").textContent === "2", null, { timeout: 5000 });
      assert.ok(/could not be recovered/.test(await b.textContent("#log")), "the lost history after a restart is said in the log");
      await a.fill("#text", "after restart");
      await a.press("#text", "Enter");
      await b.waitForSelector("#log >> text=after restart");
      await sleep(300);
      assert.equal(count(await texts(b), "after restart"), 1);
    });
  } finally {
    px.close();
    await stopServe(rserve);
  }
  assert.deepEqual(errors, [], "uncaught errors in the pages");
  assert.deepEqual(failures, [], "failed checks");
  console.log("all browser checks passed");
} finally {
  await browser.close();
  for (const c of children) c.kill("SIGKILL");
}
