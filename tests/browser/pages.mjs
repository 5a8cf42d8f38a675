// Headless Chromium (Debian's package) against a running `weft serve`:
// the dashboard shows live numbers and its chart, and two chat users see each other.
//
// usage: node pages.mjs http://127.0.0.1:PORT
import { chromium } from "playwright-core";
import assert from "node:assert/strict";

const base = process.argv[2];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--headless=new"],
});
try {
  const ctx = await browser.newContext();
  const errors = [];

  // Chat: alice and bob join the same room.
  const alice = await ctx.newPage();
  const bob = await ctx.newPage();
  for (const p of [alice, bob]) p.on("pageerror", (e) => errors.push(String(e)));
  for (const [page, name] of [[alice, "alice"], [bob, "bob"]]) {
    await page.goto(base + "/chat");
    await page.fill("#user", name);
    await page.fill("#room", "browser-test");
    await page.click("#join button");
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

  // Dashboard: live numbers update and include the open chat connection.
  const dash = await ctx.newPage();
  dash.on("pageerror", (e) => errors.push(String(e)));
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
  console.log(`dashboard: ${connections} connections, ${topics} topics, chart drawn (${drawn} px)`);
  assert.deepEqual(errors, []);
} finally {
  await browser.close();
}
