// The chat demo `weft serve` ships at /chat, on the weft-client SDK:
// - joining subscribes to `chat.<room>` with presence and the room's recent history (HISTORY
//   events); the SDK reconnects with backoff, resubscribes resuming from the last event seen
//   (nothing missed, nothing twice, in order) and says when that was not possible;
// - the name shown is the identity the server reports in `welcome` (the JWT's `sub`, or the
//   untrusted `user` parameter in anonymous mode);
// - before connecting without a token it asks /api/stats whether the server runs anonymously,
//   and after a refused upgrade (a browser only sees close 1006) whether a token is the reason;
// - typing publishes `{typing: true, user, session}` on `chat.<room>.typing` at most every
//   TYPING_EVERY ms; others show "<name> is typing…" for TYPING_SHOWN ms.
import { WeftClient, type Member, type Position, type StateChange, type WeftError, type WeftEvent } from "../src/index.js";

const HISTORY = 50;
const TYPING_EVERY = 2000;
const TYPING_SHOWN = 3000;

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => document.getElementById(id) as T;
const userBox = $<HTMLInputElement>("user");
const roomBox = $<HTMLInputElement>("room");
const tokenBox = $<HTMLInputElement>("token");
const textBox = $<HTMLInputElement>("text");
const sendBtn = $<HTMLButtonElement>("sendbtn");
const log = $("log");
const statusEl = $("status");
const typingEl = $("typing");

interface Typing {
  typing?: boolean;
  user?: unknown;
  session?: unknown;
}

let client: WeftClient | null = null; // the connection of the current join; null when none
let topic: string | null = null; // chat.<room>
let me = ""; // the name the server gave this connection
let everConnected = false; // the current join got a welcome at least once
let lastPos: Position | undefined; // the last event shown in this room: a rejoin resumes there
let skew = 0; // this clock minus the server's, in ms
let joins = 0; // the number of join presses, to drop answers to an older one
let membersAsked = 0;
let lastTyping = 0;
const seen = new Set<string>(); // "epoch:offset" of the events shown in this room
const typers = new Map<string, number>(); // name -> until when "is typing" shows (local ms)
let typingTimer: ReturnType<typeof setTimeout> | undefined;

// ---- the page

const text = (s: string) => document.createTextNode(s);
function el(tag: string, s: string): HTMLElement {
  const e = document.createElement(tag);
  e.textContent = s;
  return e;
}
function line(nodes: Node[], cls = ""): HTMLDivElement {
  const d = document.createElement("div");
  if (cls) d.className = cls;
  d.append(...nodes);
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.append(d);
  if (atBottom || cls.includes("message")) log.scrollTop = log.scrollHeight;
  return d;
}
const notice = (s: string, cls = "notice") => line([text(s)], cls);
function setStatus(s: string, cls = ""): void {
  statusEl.textContent = s;
  statusEl.className = cls;
}
function setSendable(on: boolean): void {
  textBox.disabled = sendBtn.disabled = !on;
}

/** Any payload: a chat message {user, text}, a string, or anything else as JSON text. */
function renderPayload(p: unknown): { cls: string; nodes: Node[] } {
  if (p && typeof p === "object" && !Array.isArray(p) && typeof (p as { text?: unknown }).text === "string") {
    const m = p as { user?: unknown; text: string };
    const who = typeof m.user === "string" && m.user ? m.user : "anonymous";
    return { cls: "message", nodes: [el("b", who + ":"), text(m.text)] };
  }
  if (typeof p === "string") return { cls: "message raw", nodes: [text(p)] };
  let json: string | undefined;
  try {
    json = JSON.stringify(p);
  } catch {
    json = String(p);
  }
  return { cls: "message data", nodes: [el("code", json === undefined ? "null" : json)] };
}

function showEvent(ev: WeftEvent): void {
  lastPos = { offset: ev.offset, epoch: ev.epoch };
  const key = ev.epoch + ":" + ev.offset;
  if (seen.has(key)) return; // a rejoin's history overlaps what is shown
  seen.add(key);
  const { cls, nodes } = renderPayload(ev.payload);
  line(nodes, cls).title = new Date(ev.time).toLocaleString();
  const who = (ev.payload as { user?: unknown } | null)?.user;
  if (typeof who === "string" && typers.delete(who)) renderTyping();
}

function renderMembers(c: WeftClient, members: Member[], n: number): void {
  $("count").textContent = String(n);
  $("members").replaceChildren(
    ...members.map((x) => {
      const info = x.info as { name?: unknown } | null | undefined;
      const name = info && typeof info.name === "string" ? `${info.name} (${x.user})` : x.user;
      return el("div", name + (x.session === c.session?.session ? " (you)" : ""));
    }),
  );
}
function refreshMembers(c: WeftClient): void {
  if (c !== client || !topic) return;
  const asked = ++membersAsked;
  c.presence(topic).then(
    (p) => {
      if (c === client && asked === membersAsked) renderMembers(c, p.members, p.count);
    },
    () => {},
  );
}

// ---- typing

function renderTyping(): void {
  clearTimeout(typingTimer);
  const now = Date.now();
  for (const [who, until] of typers) if (until <= now) typers.delete(who);
  const names = [...typers.keys()];
  typingEl.textContent =
    names.length === 0
      ? ""
      : names.length === 1
        ? `${names[0]} is typing…`
        : names.length === 2
          ? `${names[0]} and ${names[1]} are typing…`
          : `${names.length} people are typing…`;
  if (names.length) typingTimer = setTimeout(renderTyping, Math.min(...typers.values()) - now + 20);
}
function onTyping(c: WeftClient, ev: WeftEvent): void {
  if (c !== client) return;
  const p = ev.payload as Typing | null;
  if (!p || typeof p !== "object" || typeof p.user !== "string" || !p.user) return;
  if (typeof p.session === "string" ? p.session === c.session?.session : p.user === me) return; // never oneself
  const age = Math.max(0, Date.now() - skew - ev.time);
  if (age >= TYPING_SHOWN) return; // replayed after a reconnect: long over
  if (p.typing === false) typers.delete(p.user);
  else typers.set(p.user, Date.now() + TYPING_SHOWN - age);
  renderTyping();
}
textBox.addEventListener("input", () => {
  const c = client;
  if (!c || !topic || !textBox.value || c.state.state !== "connected") return;
  const now = Date.now();
  if (now - lastTyping < TYPING_EVERY) return;
  lastTyping = now;
  c.publish(topic + ".typing", { typing: true, user: me, session: c.session?.session }).catch(() => {});
});

// ---- connecting

async function serverInfo(): Promise<{ anonymous?: boolean } | null> {
  try {
    const r = await fetch("/api/stats", { cache: "no-store" });
    return r.ok ? ((await r.json()) as { anonymous?: boolean }) : null;
  } catch {
    return null;
  }
}
const NO_TOKEN = "This server requires a token (JWT): paste one into the token field and press join.";
const BAD_TOKEN = "The server refused the token (invalid, expired, or not allowed here): paste a valid one and press join.";

function stop(): void {
  const c = client;
  client = null;
  c?.close();
  setSendable(false);
  document.body.classList.remove("away");
  typers.clear();
  renderTyping();
}
function needToken(msg: string): void {
  stop();
  setStatus(msg, "bad");
  notice(msg, "error");
  tokenBox.classList.add("needed");
  tokenBox.focus();
}

function onState(c: WeftClient, s: StateChange, prev: StateChange["state"], token: string): void {
  if (c !== client) return;
  document.body.classList.toggle("away", s.state !== "connected");
  if (s.state === "connecting") return setStatus("connecting…");
  if (s.state === "connected") {
    me = c.session?.user ?? me;
    setStatus(`connected to ${topic} as ${me}`, "ok");
    setSendable(true);
    return;
  }
  if (s.state === "closed") {
    setSendable(false);
    return setStatus("disconnected" + (s.reason ? ` (${s.reason})` : ""), "bad");
  }
  // reconnecting: the SDK retries with backoff; publishes wait in its queue meanwhile.
  if (s.code === 4401) return needToken("Your token expired (close 4401): paste a new one into the token field and press join.");
  if (prev === "connected") notice(`connection lost (${s.reason ?? "?"})`);
  setSendable(everConnected);
  const next = s.delay !== undefined && s.delay >= 1000 ? `, next try in ${Math.round(s.delay / 1000)} s` : "";
  setStatus(`reconnecting… (${s.reason ?? "connection lost"}${next})`, "warn");
  if (!s.refused) return;
  // The upgrade failed, and a browser does not say why: ask the server whether it wants a token.
  void serverInfo().then((info) => {
    if (c !== client || c.state.state !== "reconnecting") return;
    if (info && !info.anonymous) {
      if (!token) return needToken(NO_TOKEN);
      if (!everConnected) return needToken(BAD_TOKEN);
      return setStatus("reconnecting… (could not connect: the server may refuse the token now, expired?)", "warn");
    }
    setStatus(`reconnecting… (${info ? "could not connect" : "server unreachable"})`, "warn");
  });
}

function connect(room: string, name: string, token: string): void {
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  const c = new WeftClient(url, {
    token: token || undefined,
    params: name ? { user: name } : {},
    reconnect: { minDelay: 300, maxDelay: 8000 },
    offlineQueue: { maxAge: 60000 },
  });
  client = c;
  let prev: StateChange["state"] = "closed";
  c.on("state", (s) => {
    const was = prev;
    prev = s.state;
    onState(c, s, was, token);
  });
  c.on("welcome", (w) => {
    if (c !== client) return;
    me = w.user;
    skew = Date.now() - w.time;
    everConnected = true;
    tokenBox.classList.remove("needed");
    if (token) userBox.value = me;
  });
  c.on("error", (e: WeftError) => {
    if (c !== client) return;
    if (e.code === "lagged") notice(e.message);
    else notice(`error ${e.code}: ${e.message}`, "error");
  });

  let joined = false;
  c.subscribe(room, showEvent, {
    presence: true,
    ...(lastPos ? { resume: lastPos } : { history: HISTORY }),
    onSubscribed: (info) => {
      if (c !== client) return;
      if (!joined) notice(`joined ${room} as ${me}`);
      else if (info.recovered)
        notice(`reconnected${info.replayed ? `: ${info.replayed} missed message${info.replayed === 1 ? "" : "s"} recovered` : ""}`);
      else if (info.recovered === undefined) notice("reconnected");
      joined = true;
      refreshMembers(c);
    },
    onUnrecovered: (u) => {
      if (c !== client) return;
      notice(
        "some messages could not be recovered: " +
          (u.from && u.from.epoch !== u.position.epoch
            ? "the server's history of this room was reset (a restart?), earlier messages are gone"
            : "they are older than the history the server keeps"),
        "error",
      );
    },
    onJoin: (m) => {
      if (c !== client) return;
      notice(m.user + " joined");
      refreshMembers(c);
    },
    onLeave: (m) => {
      if (c !== client) return;
      notice(m.user + " left");
      if (typers.delete(m.user)) renderTyping();
      refreshMembers(c);
    },
    onError: (e) => {
      if (c === client) notice(`could not join ${room}: ${e.message}`, "error");
    },
  });
  c.subscribe(room + ".typing", (ev) => onTyping(c, ev));
  void c.connect();
}

$("join").addEventListener("submit", async (e) => {
  e.preventDefault();
  stop();
  const join = ++joins;
  const room = roomBox.value.trim().replace(/[^A-Za-z0-9_-]/g, "-") || "lobby";
  const next = "chat." + room;
  if (next !== topic) {
    topic = next;
    lastPos = undefined;
    seen.clear();
    log.replaceChildren();
    $("members").replaceChildren();
    $("count").textContent = "0";
  }
  everConnected = false;
  const token = tokenBox.value.trim();
  const name = userBox.value.trim();
  setStatus("connecting…");
  if (!token) {
    const info = await serverInfo();
    if (join !== joins) return;
    if (info && !info.anonymous) return needToken(NO_TOKEN);
  }
  connect(next, name, token);
});

$("send").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = textBox.value;
  const c = client;
  if (!t || !c || !topic) return;
  // While reconnecting the SDK keeps the publish and sends it once connected again.
  const queued = c.state.state === "connected" ? null : notice(`waiting to send: ${t}`, "queued");
  c.publish(topic, { user: me, text: t }).then(
    () => queued?.remove(),
    (err: WeftError) => {
      queued?.remove();
      if (c === client) notice(`not sent: ${t} (${err.message})`, "error");
    },
  );
  textBox.value = "";
  lastTyping = 0;
});
