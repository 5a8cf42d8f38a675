// WebSockets over HTTP/2 (RFC 8441) between weft and Node's own `http2` module, both ways.
// Frames on the Node side are `ws`'s Sender and Receiver (the codec of the `ws` package), so
// neither the HTTP/2 layer nor the WebSocket codec on the far side is weft's.
//
//   node tests/http2/node-h2.mjs /path/to/weft
//
// 1. Node's HTTP/2 server (enableConnectProtocol) echoing; `weft client --http2` sends lines
//    (one of 300 KB, past every default window) and `weft bench echo --http2` runs 10 streams.
// 2. `weft echo` serving; Node's HTTP/2 client opens 5 WebSockets on one connection and
//    checks the echo of every payload size up to 1 MiB, then a clean close.
// Exits 0 when all of it matched; bounded by a 90 s watchdog.
import http2 from "node:http2";
import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "../../clients/typescript/package.json"));
const { Sender, Receiver } = require("ws");
const weft = process.argv[2];
if (!weft) {
  console.error("usage: node-h2.mjs /path/to/weft");
  process.exit(2);
}
setTimeout(() => {
  console.error("node-h2: timed out");
  process.exit(1);
}, 90_000).unref();

const fail = (msg) => {
  console.error(`node-h2: FAILED: ${msg}`);
  process.exit(1);
};

/** A WebSocket on an HTTP/2 stream: `ws`'s codec, masking as the role says. */
function frames(stream, isServer, onMessage, onClose) {
  const sender = new Sender(stream);
  const receiver = new Receiver({ isServer, maxPayload: 64 << 20 });
  stream.on("data", (d) => receiver.write(d));
  receiver.on("message", (data, isBinary) => onMessage(data, isBinary));
  receiver.on("ping", (d) => sender.pong(d, !isServer));
  receiver.on("conclude", (code, reason) => onClose(code, reason.toString()));
  receiver.on("error", (e) => fail(`frame error: ${e.message}`));
  return sender;
}

// 1. Node serves, weft connects.
async function nodeServer() {
  let websockets = 0;
  const server = http2.createServer({ settings: { enableConnectProtocol: true } });
  server.on("stream", (stream, headers) => {
    const ok =
      headers[":method"] === "CONNECT" &&
      headers[":protocol"] === "websocket" &&
      headers["sec-websocket-version"] === "13";
    if (!ok) {
      stream.respond({ ":status": 400 });
      stream.end();
      return;
    }
    websockets++;
    stream.respond({ ":status": 200 });
    const sender = frames(
      stream,
      true,
      (data, binary) => sender.send(data, { binary, fin: true, mask: false }),
      (code, reason) => sender.close(code === 1005 ? undefined : code, reason, false, () => stream.end()),
    );
  });
  server.on("sessionError", () => {});
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const url = `ws://127.0.0.1:${server.address().port}/`;

  const lines = ["hello over h2", "κόσμε", "x".repeat(300_000)];
  const out = await run(weft, ["client", url, "--http2"], lines.join("\n") + "\n");
  if (out.code !== 0) fail(`weft client exited ${out.code}: ${out.stderr}`);
  if (!out.stderr.includes("over HTTP/2")) fail(`weft client did not use HTTP/2: ${out.stderr}`);
  if (out.stdout !== lines.join("\n") + "\n") fail(`weft client got ${out.stdout.length} bytes back, not the lines`);

  const bench = await run(weft, ["bench", "echo", "--url", url, "--http2", "-c", "10", "-d", "0.5", "--warmup", "0.1", "--json"], "");
  if (bench.code !== 0) fail(`weft bench exited ${bench.code}: ${bench.stderr}`);
  const r = JSON.parse(bench.stdout);
  if (r.connected !== 10 || r.errors !== 0 || !(r.messages > 0)) fail(`weft bench against Node: ${bench.stdout}`);
  if (websockets !== 11) fail(`Node saw ${websockets} WebSockets, expected 11`);
  server.close();
  console.log(`node http2 server <- weft client and bench: ok (${r.messages} echoes over 10 streams)`);
}

// 2. weft serves, Node connects.
async function nodeClient() {
  const echo = spawn(weft, ["echo", "--addr", "127.0.0.1:0", "--deflate"], { env: { ...process.env, NO_COLOR: "1" } });
  const port = await new Promise((resolve, reject) => {
    let log = "";
    echo.stderr.on("data", (d) => {
      log += d;
      const m = log.match(/listening addr=127\.0\.0\.1:(\d+)/);
      if (m) resolve(Number(m[1]));
    });
    echo.on("exit", () => reject(new Error(`weft echo exited: ${log}`)));
  });
  const session = http2.connect(`http://127.0.0.1:${port}`);
  session.on("error", (e) => fail(`session: ${e.message}`));
  const settings = await new Promise((r) => session.once("remoteSettings", r));
  if (!settings.enableConnectProtocol) fail("weft echo did not announce SETTINGS_ENABLE_CONNECT_PROTOCOL");

  const payloads = [];
  for (const size of [0, 1, 125, 126, 65535, 65536, 1 << 20]) {
    payloads.push(["text", "ü".repeat(size >> 1)]);
    payloads.push(["binary", Buffer.from(Array.from({ length: size }, (_, i) => (i * 31) & 0xff))]);
  }
  const one = (i) =>
    new Promise((resolve) => {
      const stream = session.request(
        { ":method": "CONNECT", ":protocol": "websocket", ":path": `/n${i}`, ":scheme": "http", "sec-websocket-version": "13" },
        { endStream: false },
      );
      stream.on("response", (headers) => {
        if (headers[":status"] !== 200) fail(`stream ${i}: status ${headers[":status"]}`);
        let next = 0;
        const sendNext = () => {
          if (next === payloads.length) {
            sender.close(1000, "done", true);
            return;
          }
          const [kind, data] = payloads[next];
          sender.send(data, { binary: kind === "binary", fin: true, mask: true });
        };
        const sender = frames(
          stream,
          false,
          (data, binary) => {
            const [kind, want] = payloads[next];
            const got = binary ? data : data.toString();
            const same = binary ? Buffer.compare(got, want) === 0 : got === want;
            if ((kind === "binary") !== binary || !same) fail(`stream ${i}: payload ${next} came back different`);
            next++;
            sendNext();
          },
          (code) => {
            if (code !== 1000) fail(`stream ${i}: closed with ${code}`);
            if (next !== payloads.length) fail(`stream ${i}: closed after ${next} echoes`);
            stream.on("end", resolve);
            stream.end();
            stream.resume();
          },
        );
        sendNext();
      });
    });
  await Promise.all([0, 1, 2, 3, 4].map(one));
  session.close();
  echo.kill("SIGTERM");
  console.log(`node http2 client -> weft echo: ok (5 streams on one connection, ${payloads.length} payloads each)`);
}

function run(cmd, args, input) {
  return new Promise((resolve) => {
    const p = spawn(cmd, args);
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d) => (stdout += d));
    p.stderr.on("data", (d) => (stderr += d));
    p.on("exit", (code) => resolve({ code, stdout, stderr }));
    p.stdin.end(input);
  });
}

await nodeServer();
await nodeClient();
process.exit(0);
