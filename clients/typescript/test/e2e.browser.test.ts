// End to end in a real browser (Debian's Chromium, driven by playwright-core): two pages of a
// React app on weft-client/react (test/browser/app.ts) against a real `weft serve` behind a
// proxy that cuts every connection mid-stream. Every page receives every event exactly once,
// in order; publishes made while cut off arrive after the connection returns, even across a
// reload (IndexedDB); a server restart is reported as not recovered. Screenshots go to
// target/test-reports/browser/.
import { build } from "esbuild";
import { existsSync, mkdirSync } from "node:fs";
import http from "node:http";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CutProxy, httpPublish, sleep, startServe, type Serve } from "./harness.js";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const required = process.env.WEFT_REQUIRE_BROWSER === "1";
const have = existsSync(CHROMIUM);
const shots = fileURLToPath(new URL("../../../target/test-reports/browser/", import.meta.url));

describe.skipIf(!have && !required)("in Chromium", () => {
  let serve: Serve;
  let proxy: CutProxy;
  let site: http.Server;
  let base = "";
  let browser: Browser;

  beforeAll(async () => {
    if (!have) throw new Error(`no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`);
    const bundle = await build({
      entryPoints: [fileURLToPath(new URL("./browser/app.ts", import.meta.url))],
      bundle: true,
      write: false,
      format: "esm",
      external: ["ws"],
      define: { "process.env.NODE_ENV": '"production"' },
    });
    const js = bundle.outputFiles[0]!.text;
    const html = '<!doctype html><meta charset="utf-8"><title>weft-client e2e</title><div id="root"></div><script type="module" src="/app.js"></script>';
    site = http.createServer((req, res) => {
      const isJs = req.url?.startsWith("/app.js");
      res.writeHead(200, { "content-type": isJs ? "text/javascript" : "text/html" });
      res.end(isJs ? js : html);
    });
    await new Promise<void>((r) => site.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${(site.address() as { port: number }).port}`;
    serve = await startServe();
    proxy = await new CutProxy(serve.port).listen();
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
    mkdirSync(shots, { recursive: true });
  });

  afterAll(async () => {
    await browser?.close();
    await proxy?.close();
    await serve?.stop();
    site?.close();
  });

  async function open(user: string, topic: string, extra = ""): Promise<Page> {
    const page = await browser.newPage();
    page.on("pageerror", (e) => console.error(`[${user}] page error:`, e));
    const ws = encodeURIComponent(`ws://127.0.0.1:${proxy.port}/ws`);
    await page.goto(`${base}/?ws=${ws}&user=${user}&topic=${topic}${extra}`);
    await page.waitForSelector("#state >> text=connected");
    await page.waitForSelector("#subscribed >> text=subscribed");
    return page;
  }
  const seen = (p: Page) => p.evaluate(() => (window as any).weftTest.seen as number[]);
  const state = (p: Page) => p.textContent("#state");

  it("a cut mid-stream: every event once and in order on every page; queued publishes follow", async () => {
    const [a, b] = [await open("alice", "feed"), await open("bob", "feed")];
    await a.waitForSelector("#members >> text=bob");
    let n = 0;
    const publishing = (async () => {
      for (; n < 60; n++) {
        await httpPublish(serve.url, "feed", n);
        await sleep(25);
      }
    })();
    for (const p of [a, b]) await p.waitForFunction(() => (window as any).weftTest.seen.length >= 10);
    proxy.cut();
    for (const p of [a, b]) await p.waitForSelector("#state >> text=reconnecting");
    await a.screenshot({ path: shots + "sdk-reconnecting.png" });
    // Made while cut off: kept and sent in order once the connection returns.
    const queued = a.evaluate(() => Promise.all([(window as any).weftTest.publish(1000), (window as any).weftTest.publish(1001)]));
    await sleep(1500);
    proxy.restore();
    await publishing;
    await queued;
    const all = [...Array(60).keys(), 1000, 1001];
    for (const p of [a, b]) {
      await p.waitForFunction((k) => (window as any).weftTest.seen.length >= k, all.length, { timeout: 15000 });
      const s = await seen(p);
      expect(s.filter((x) => x < 1000)).toEqual([...Array(60).keys()]);
      expect([...s].sort((x, y) => x - y)).toEqual(all);
      expect(s.indexOf(1001)).toBe(s.indexOf(1000) + 1);
      expect(await p.evaluate(() => (window as any).weftTest.unrecovered.length)).toBe(0);
      expect(await state(p)).toBe("connected");
    }
    await b.screenshot({ path: shots + "sdk-after-cut.png" });
    await a.close();
    await b.close();
  });

  it("a publish queued while cut off survives a reload (IndexedDB) and is sent after", async () => {
    const b = await open("bob", "outbox");
    let a = await open("ann", "outbox");
    // One event first: a topic with no history and no subscriber is forgotten by the server
    // (a new epoch), which the cut below would otherwise cause.
    await httpPublish(serve.url, "outbox", "first");
    await b.waitForFunction(() => (window as any).weftTest.seen.length === 1);
    proxy.cut();
    await a.waitForSelector("#state >> text=reconnecting");
    void a.evaluate(() => (window as any).weftTest.publish("kept across a reload")).catch(() => {});
    // Stored before the page goes away.
    await a.waitForFunction(
      () =>
        indexedDB.databases().then(
          (dbs) =>
            dbs.some((d) => d.name === "weft-client:e2e-ann") &&
            new Promise((done) => {
              const r = indexedDB.open("weft-client:e2e-ann");
              r.onsuccess = () => {
                try {
                  const all = r.result.transaction("outbox").objectStore("outbox").count();
                  all.onsuccess = () => done(all.result === 1);
                } catch {
                  done(false);
                }
                r.result.close();
              };
              r.onerror = () => done(false);
            }),
        ),
    );
    await a.reload();
    await sleep(300);
    await sleep(300);
    proxy.restore();
    await a.waitForSelector("#state >> text=connected");
    try {
      await b.waitForFunction(() => (window as any).weftTest.seen.includes("kept across a reload"), undefined, { timeout: 15000 });
    } catch (e) {
      const dump = async (p: Page) => ({
        state: await p.textContent("#state"),
        test: await p.evaluate(() => JSON.stringify((window as any).weftTest)),
        dbs: await p.evaluate(() => indexedDB.databases().then((d) => JSON.stringify(d))),
        locks: await p.evaluate(() => navigator.locks.query().then((q) => JSON.stringify(q))),
      });
      console.log("a:", await dump(a), "b:", await dump(b));
      throw e;
    }
    // The reloaded page learns what became of it.
    await a.waitForFunction(() => (window as any).weftTest.outbox.length === 1);
    expect(await a.evaluate(() => (window as any).weftTest.outbox[0])).toBe(2);
    await a.close();
    // A second reload finds nothing left to send.
    a = await open("ann", "outbox");
    await sleep(500);
    expect(await a.evaluate(() => (window as any).weftTest.outbox.length)).toBe(0);
    expect((await seen(b)).filter((x) => x === ("kept across a reload" as never)).length).toBe(1);
    await a.close();
    await b.close();
  });

  it("the secure channel on the browser's WebCrypto: sealed events in order, across a cut", async () => {
    const page = await open("sam", "sealed", "&secure=encrypt");
    expect(await page.evaluate(() => (window as any).weftTest.secured())).toBe("encrypt");
    for (let n = 0; n < 5; n++) await httpPublish(serve.url, "sealed", n);
    await page.waitForFunction(() => (window as any).weftTest.seen.length >= 5, undefined, { timeout: 5000 });
    proxy.cut();
    await page.waitForSelector("#state >> text=reconnecting");
    for (let n = 5; n < 10; n++) await httpPublish(serve.url, "sealed", n);
    proxy.restore();
    await page.waitForFunction(() => (window as any).weftTest.seen.length >= 10, undefined, { timeout: 15000 });
    expect(await seen(page)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(await page.evaluate(() => (window as any).weftTest.secured())).toBe("encrypt");
    await page.close();
  });

  it("a server restart (history lost) is reported to the application as not recovered", async () => {
    const p = await open("rita", "restart");
    await httpPublish(serve.url, "restart", "before");
    await p.waitForFunction(() => (window as any).weftTest.seen.length === 1);
    const port = serve.port;
    await serve.stop();
    serve = await startServe([], port);
    await p.waitForFunction(() => (window as any).weftTest.unrecovered.length === 1, undefined, { timeout: 15000 });
    await p.waitForSelector("#state >> text=connected");
    await httpPublish(serve.url, "restart", "after");
    await p.waitForFunction(() => (window as any).weftTest.seen.length === 2);
    expect(await seen(p)).toEqual(["before", "after"]);
    await p.screenshot({ path: shots + "sdk-after-restart.png" });
    await p.close();
  });
});
