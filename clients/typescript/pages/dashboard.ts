// The live dashboard `weft serve` ships at /: it polls /api/stats once a second (one request at
// a time, 3 s limit each) and, when the server does not answer, says so plainly, greys out the
// last numbers (they are stale) and keeps trying. Everything it shows comes from the server's
// own counters (rates, delivery latency, memory, the busiest topics, the cluster); where it may
// connect (anonymous mode, or a token given as #token=JWT in the address) it also opens a
// WebSocket with the weft-client SDK to show its own round trip.
import { WeftClient } from "../src/index.js";

interface Stats {
  uptime_seconds: number;
  connections: number;
  connections_total: number;
  topics: number;
  subscriptions: number;
  messages_in_total: number;
  publishes_total: number;
  deliveries_total: number;
  messages_in_per_sec: number;
  publishes_per_sec: number;
  deliveries_per_sec: number;
  slow_consumer_disconnects_total: number;
  dropped_events_total: number;
  rate_limited_total: number;
  history_bytes: number;
  history_evicted_total: number;
  topics_refused_total: number;
  publishes_refused_total: number;
  cluster_reconnects_total?: number;
  cluster_gaps_total?: number;
  cluster_refilled_total?: number;
  cluster_unrecovered_total?: number;
  cluster_duplicates_total?: number;
  cluster_pubsub_dropped_total?: number;
  anonymous: boolean;
  delivery_latency?: { count: number; p50_ms: number | null; p99_ms: number | null; window_seconds: number };
  memory_rss_bytes?: number;
  busiest_topics?: { topic: string; events_per_sec: number; subscribers: number }[];
  cluster?: { broker: string; node: string; state: string; nodes: number };
}

const N = 60; // chart points

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => document.getElementById(id) as T;
const set = (id: string, v: string | number) => {
  $(id).textContent = String(v);
};
/** A count or rate: 1.25M, 12.5k, 873, 4.5 (one decimal below 10, none when it is .0). */
const fmt = (x: number) =>
  x >= 1e6
    ? (x / 1e6).toFixed(2) + "M"
    : x >= 1e4
      ? (x / 1e3).toFixed(1) + "k"
      : x < 10
        ? String(Math.round(x * 10) / 10)
        : String(Math.round(x));
const axis = (x: number) => (x >= 1e4 ? fmt(x) : String(Math.round(x)));
const bytes = (n: number) =>
  n >= 1 << 30 ? (n / (1 << 30)).toFixed(2) + " GiB" : n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MiB" : n >= 1024 ? (n / 1024).toFixed(1) + " KiB" : n + " B";
function duration(s: number): string {
  if (s < 120) return s + " s";
  if (s < 7200) return Math.floor(s / 60) + " min";
  if (s < 172800) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

// ---- the chart

const inHist: number[] = [];
const outHist: number[] = [];
function draw(): void {
  const c = $<HTMLCanvasElement>("chart");
  const g = c.getContext("2d");
  if (!g) return;
  // Draw at the size it is shown, in device pixels: sharp labels on a phone as on a desktop.
  const box = c.getBoundingClientRect();
  const w = box.width || c.width;
  const h = box.height || c.height;
  const dpr = window.devicePixelRatio || 1;
  const [pw, ph] = [Math.round(w * dpr), Math.round(h * dpr)];
  if (c.width !== pw || c.height !== ph) [c.width, c.height] = [pw, ph];
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  const pad = 30;
  g.clearRect(0, 0, w, h);
  const max = Math.max(10, ...inHist, ...outHist) * 1.1;
  g.strokeStyle = "#e3e6ec";
  g.fillStyle = "#6b7385";
  g.font = "12px system-ui";
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = pad / 2 + ((h - pad) * i) / 4;
    g.beginPath();
    g.moveTo(40, y);
    g.lineTo(w, y);
    g.stroke();
    g.fillText(axis(max * (1 - i / 4)), 2, y + 4);
  }
  const plot = (data: number[], color: string) => {
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    data.forEach((v, i) => {
      const x = 40 + ((w - 40) * (i + N - data.length)) / (N - 1);
      const y = pad / 2 + (h - pad) * (1 - v / max);
      if (i) g.lineTo(x, y);
      else g.moveTo(x, y);
    });
    g.stroke();
  };
  const css = getComputedStyle(document.documentElement);
  plot(inHist, css.getPropertyValue("--accent").trim());
  plot(outHist, css.getPropertyValue("--accent2").trim());
}

// ---- polling /api/stats

let lastOk: Date | null = null;
let httpRtt: number | undefined;
async function fetchStats(): Promise<Stats> {
  const ctl = new AbortController();
  const t = setTimeout(() => ctl.abort(), 3000);
  try {
    const t0 = performance.now();
    const r = await fetch("/api/stats", { cache: "no-store", signal: ctl.signal });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const s = (await r.json()) as Stats;
    httpRtt = performance.now() - t0;
    return s;
  } finally {
    clearTimeout(t);
  }
}

function show(s: Stats): void {
  set("connections", s.connections);
  set("connections-total", `${fmt(s.connections_total)} since start`);
  set("topics", s.topics);
  set("topics-refused", s.topics_refused_total ? `${fmt(s.topics_refused_total)} refused (limit)` : "");
  set("subscriptions", s.subscriptions);
  set("in-rate", fmt(s.messages_in_per_sec));
  set("in-total", `${fmt(s.messages_in_total)} total`);
  set("publish-rate", fmt(s.publishes_per_sec));
  set("publish-refused", s.publishes_refused_total ? `${fmt(s.publishes_refused_total)} refused` : `${fmt(s.publishes_total)} total`);
  set("out-rate", fmt(s.deliveries_per_sec));
  set("out-total", `${fmt(s.deliveries_total)} total`);
  set("slow", s.slow_consumer_disconnects_total);
  set("rate-limited", s.rate_limited_total ? `${fmt(s.rate_limited_total)} rate-limited` : "");
  set("dropped", s.dropped_events_total);
  set("memory", s.memory_rss_bytes !== undefined ? bytes(s.memory_rss_bytes) : bytes(s.history_bytes));
  set(
    "evicted",
    (s.memory_rss_bytes !== undefined ? `history ${bytes(s.history_bytes)} · ` : "history · ") +
      `${fmt(s.history_evicted_total)} evicted`,
  );
  const lat = s.delivery_latency;
  // Bucket bounds: "≤ 1 ms" rather than a false precision; 10000 means more than 5 s.
  const ms = (x: number | null) => (x === null ? "–" : x >= 10000 ? "> 5 s" : x <= 1 ? "≤ 1 ms" : `≤ ${x} ms`);
  set("latency", lat && lat.count ? `${ms(lat.p50_ms)} / ${ms(lat.p99_ms)}` : "–");
  set("latency-sub", lat ? `publish → socket · ${fmt(lat.count)} events in ${lat.window_seconds} s` : "");
  showBusiest(s);
  const st = $("status");
  st.textContent = "up " + duration(s.uptime_seconds) + (s.anonymous ? " · anonymous mode" : "");
  st.className = "status" + (s.anonymous ? " warn" : "");
  showCluster(s);
  showRtt();
  inHist.push(s.messages_in_per_sec);
  outHist.push(s.deliveries_per_sec);
  if (inHist.length > N) {
    inHist.shift();
    outHist.shift();
  }
  draw();
}

function row(cells: [string, string][]): HTMLTableRowElement[] {
  return cells.map(([k, v]) => {
    const tr = document.createElement("tr");
    const a = document.createElement("td");
    const b = document.createElement("td");
    a.textContent = k;
    b.textContent = v;
    b.className = "n";
    tr.append(a, b);
    return tr;
  });
}
function showCluster(s: Stats): void {
  const c = s.cluster;
  $("cluster-panel").hidden = !c;
  if (!c) return;
  const st = $("cluster-state");
  st.textContent = c.state === "ok" ? "ok" : "degraded: " + c.state;
  st.className = c.state === "ok" ? "ok" : "warn";
  const n = (x: number | undefined) => fmt(x ?? 0);
  $("cluster").replaceChildren(
    ...row([
      ["broker", c.broker],
      ["this node", c.node],
      ["nodes alive", String(c.nodes)],
      ["broker reconnects", n(s.cluster_reconnects_total)],
      ["gaps seen / refilled", `${n(s.cluster_gaps_total)} / ${n(s.cluster_refilled_total)}`],
      ["not recovered", n(s.cluster_unrecovered_total)],
      ["duplicates dropped", n(s.cluster_duplicates_total)],
      ["pub/sub messages lost", n(s.cluster_pubsub_dropped_total)],
    ]),
  );
}

async function tick(): Promise<void> {
  let s: Stats | null = null;
  try {
    s = await fetchStats();
  } catch {
    s = null;
  }
  const body = document.body;
  if (s) {
    lastOk = new Date();
    body.classList.remove("down");
    body.dataset.state = "up";
    show(s);
    live(s);
    body.dataset.updates = String(Number(body.dataset.updates) + 1);
  } else {
    body.classList.add("down");
    body.dataset.state = "down";
    const st = $("status");
    st.textContent =
      "server unreachable" + (lastOk ? " since " + lastOk.toLocaleTimeString() + " · numbers are stale" : "") + " · retrying…";
    st.className = "status warn";
  }
  setTimeout(() => void tick(), s ? 1000 : 2000);
}

// ---- the busiest topics, as the server counts them

function showBusiest(s: Stats): void {
  const top = s.busiest_topics ?? [];
  const max = top.length ? top[0]!.events_per_sec : 1;
  set("busiest-window", "events / s, last 5–10 s");
  $("busiest").replaceChildren(
    ...top.map((t) => {
      const tr = document.createElement("tr");
      const name = document.createElement("td");
      name.textContent = t.topic;
      const rate = document.createElement("td");
      rate.className = "n";
      rate.textContent = fmt(t.events_per_sec) + " / s";
      const subs = document.createElement("td");
      subs.className = "n";
      subs.textContent = `${fmt(t.subscribers)} sub${t.subscribers === 1 ? "" : "s"}`;
      const bar = document.createElement("td");
      bar.className = "bar";
      const i = document.createElement("i");
      i.style.width = ((100 * t.events_per_sec) / max).toFixed(1) + "%";
      bar.append(i);
      tr.append(name, rate, subs, bar);
      return tr;
    }),
  );
  set("busiest-note", top.length ? "" : "No events in the last few seconds.");
}

// ---- the page's own connection: its round trip

const token = new URLSearchParams(location.hash.slice(1)).get("token") ?? "";
let client: WeftClient | null = null;

function showRtt(): void {
  const q = client?.quality;
  if (client && client.state.state === "connected" && q) {
    set("rtt", `${q.rtt < 10 ? q.rtt.toFixed(1) : Math.round(q.rtt)} ms`);
    set("rtt-sub", `WebSocket · jitter ${q.jitter} ms · ${q.level}`);
  } else if (httpRtt !== undefined) {
    set("rtt", `${httpRtt < 10 ? httpRtt.toFixed(1) : Math.round(httpRtt)} ms`);
    set("rtt-sub", client ? `HTTP · WebSocket ${client.state.state}` : "HTTP /api/stats");
  }
}

function live(s: Stats): void {
  if (client || !(s.anonymous || token)) return;
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  client = new WeftClient(url, {
    ...(token ? { token } : { params: { user: "dashboard" } }),
    pingInterval: 2000,
    reconnect: { minDelay: 500, maxDelay: 5000 },
    offlineQueue: false,
  });
  client.on("quality", showRtt);
  client.on("state", showRtt);
  void client.connect();
}

addEventListener("resize", draw);
void tick();
