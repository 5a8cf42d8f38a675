import { ClosedError, ConnectionError, ProtocolError, QueueError, ServerError, TimeoutError, WeftError } from "./errors.js";
import { decode, encode } from "./msgpack.js";
import { openStore } from "./outbox.js";
/** A minimal typed event emitter; `on` returns the function that removes the listener. */
class Emitter {
    l = new Map();
    on(name, fn) {
        let s = this.l.get(name);
        if (!s)
            this.l.set(name, (s = new Set()));
        s.add(fn);
        return () => void s.delete(fn);
    }
    emit(name, value) {
        for (const fn of [...(this.l.get(name) ?? [])])
            safely(fn, value);
    }
}
/** Calls an application's callback; its exception is rethrown later, outside the client's state machine. */
function safely(fn, value) {
    if (!fn)
        return;
    try {
        fn(value);
    }
    catch (e) {
        setTimeout(() => {
            throw e;
        });
    }
}
/** One `subscribe` call. Several may share a topic; the server sees one subscription. */
export class Subscription extends Emitter {
    topic;
    channel;
    client;
    options;
    /** @internal */
    constructor(topic, channel, client, options) {
        super();
        this.topic = topic;
        this.channel = channel;
        this.client = client;
        this.options = options;
    }
    /** The position of the last event delivered on this topic (exact topics). */
    get position() {
        return this.channel.position && { ...this.channel.position };
    }
    /** Whether the server currently has this subscription. */
    get active() {
        return this.channel.state === "subscribed";
    }
    set onJoin(fn) {
        this.options.onJoin = fn;
    }
    set onLeave(fn) {
        this.options.onLeave = fn;
    }
    /** Stops this subscription; the server's ends when no other shares its topic. */
    unsubscribe() {
        return this.client._drop(this);
    }
    /** @internal */
    _emit(name, value) {
        const o = this.options;
        const t = this.topic;
        if (name === "join")
            safely((m) => o.onJoin?.(m, t), value);
        else if (name === "leave")
            safely((m) => o.onLeave?.(m, t), value);
        else if (name === "subscribed")
            safely(o.onSubscribed, value);
        else if (name === "unrecovered")
            safely(o.onUnrecovered, value);
        else if (name === "snapshot")
            safely(o.onSnapshot, value);
        else if (name === "error")
            safely(o.onError, value);
        this.emit(name, value);
    }
}
const SUBPROTOCOL = { json: "weft.v1.json", msgpack: "weft.v1.msgpack" };
const OPEN = 1;
/** Does the NATS-style `pattern` (`*` one segment, a final `>` one or more) match `topic`? */
export function matches(pattern, topic) {
    const p = pattern.split(".");
    const t = topic.split(".");
    for (let i = 0; i < p.length; i++) {
        if (p[i] === ">")
            return i === p.length - 1 && t.length > i;
        if (i >= t.length || (p[i] !== "*" && p[i] !== t[i]))
            return false;
    }
    return p.length === t.length;
}
const isPattern = (t) => t.split(".").some((s) => s === "*" || s === ">");
/** Seconds since the Unix epoch at which a JWT expires, and when it was issued, if it says. */
function claims(token) {
    try {
        const part = token.split(".")[1] ?? "";
        const b64 = part.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((part.length + 3) % 4);
        const json = decodeURIComponent(Array.from(atob(b64), (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""));
        const v = JSON.parse(json);
        return { exp: typeof v.exp === "number" ? v.exp : undefined, iat: typeof v.iat === "number" ? v.iat : undefined };
    }
    catch {
        return {};
    }
}
/**
 * A connection to a weft engine (`weft serve`) that survives: it reconnects with backoff,
 * resubscribes with resume positions, detects gaps by offset, queues publishes while offline,
 * refreshes its token in-band and measures the connection.
 *
 * ```ts
 * const client = new WeftClient("ws://localhost:8080/ws");
 * client.subscribe("chat.lobby", (ev) => console.log(ev.offset, ev.payload));
 * await client.connect();
 * await client.publish("chat.lobby", { text: "hi" });
 * ```
 */
export class WeftClient extends Emitter {
    options;
    _state = { state: "closed", reason: "not connected" };
    ws;
    wsCtor;
    token;
    attempt = 0;
    seq = 0;
    pending = new Map();
    channels = new Map();
    queue = [];
    store;
    owner = Math.random().toString(36).slice(2) + Date.now().toString(36);
    timers = new Set();
    pingTimer;
    refreshTimer;
    rtts = [];
    misses = [];
    missedInARow = 0;
    connectWaiters = [];
    opened = false;
    everConnecting = false;
    /** Incremented by close(): an open() that was waiting (for a token) gives up. */
    generation = 0;
    expiryTimer;
    adopting;
    /** The session's details from the server's `welcome`. */
    session;
    /** The latest connection quality, after the first ping. */
    quality;
    /** The endpoints, in the order given, with their health; the client connects to the best. */
    endpoints;
    /** `closed`, `open` (every endpoint kept failing: pausing) or `half-open` (one attempt). */
    breaker = "closed";
    current;
    openedAt = 0;
    failedInARow = 0;
    tokens = 0;
    tokensAt = 0;
    paced = Promise.resolve();
    /** The current connection's secure channel, once its handshake finished. */
    channel;
    /** The channel being made: set when `secured` arrives, as every frame after it is sealed. */
    channelReady;
    /** The handshake waiting for `secured`: `finish` starts the keys' derivation at once. */
    securing;
    /** Set when reconnecting cannot help (the server requires what this client lacks). */
    fatal;
    /** Sealed frames are opened, and sealed messages sent, one after the other. */
    inChain = Promise.resolve();
    outChain = Promise.resolve();
    constructor(url, options = {}) {
        super();
        this.options = options;
        const urls = typeof url === "string" ? [url] : [...url];
        if (urls.length === 0)
            throw new TypeError("WeftClient needs at least one URL");
        this.endpoints = urls.map((u) => ({ url: u, failures: 0 }));
        this.current = this.endpoints[0];
        this.tokens = options.rateLimit?.burst ?? 10;
        this.tokensAt = Date.now();
        this.token = options.token;
        const q = options.offlineQueue;
        if (q !== false && q?.persist) {
            this.store = openStore(q.persist, this.owner);
            this.adopt();
        }
    }
    /** The URL of the current (or last) connection. */
    get url() {
        return this.current.url;
    }
    /** The healthiest endpoint: fewest failures in a row, then lowest latency, then the order given. */
    best() {
        const score = (e, i) => [e.failures, e.latency ?? Infinity, i];
        const ranked = this.endpoints.map((e, i) => [score(e, i), e]);
        ranked.sort(([a], [b]) => a[0] - b[0] || a[1] - b[1] || a[2] - b[2]);
        return ranked[0][1];
    }
    /** Waits for the rate limiter's next token (in call order). */
    pace() {
        const limit = this.options.rateLimit;
        if (!limit)
            return Promise.resolve();
        const burst = limit.burst ?? 10;
        const take = async () => {
            for (;;) {
                const t = Date.now();
                this.tokens = Math.min(burst, this.tokens + ((t - this.tokensAt) / 1000) * limit.rate);
                this.tokensAt = t;
                if (this.tokens >= 1) {
                    this.tokens -= 1;
                    return;
                }
                await new Promise((r) => setTimeout(r, ((1 - this.tokens) / limit.rate) * 1000));
            }
        };
        this.paced = this.paced.then(take, take);
        return this.paced;
    }
    /**
     * Takes over publishes that pages no longer running left in the store (at start, and at each
     * connect: a page that was closing when this one started has let go by then).
     */
    adopt() {
        if (!this.store || this.adopting)
            return;
        this.adopting = this.store.adopt(this.owner).then((left) => {
            this.adopting = undefined;
            // Older than anything published since this page started: in front, in their order.
            const restored = left.map((e) => ({
                topic: e.topic,
                payload: e.payload,
                time: e.time,
                key: e.key,
                resolve: (result) => this.emit("outbox", { topic: e.topic, payload: e.payload, result }),
                reject: (error) => this.emit("outbox", { topic: e.topic, payload: e.payload, error }),
            }));
            if (restored.length === 0)
                return;
            if (this._state.state === "closed" && this.everConnecting) {
                for (const q of restored)
                    this.store?.remove(q.key);
                return;
            }
            this.queue.unshift(...restored);
            // The bound holds for what was left behind too: the oldest go first.
            const max = this.queueOptions().maxSize ?? 1000;
            for (const q of this.queue.splice(0, Math.max(0, this.queue.length - max))) {
                this.forget(q);
                q.reject(new QueueError("queue_full", `the offline queue holds ${max} publishes`));
            }
            if (this._state.state === "connected")
                this.flush();
            else
                this.armExpiry();
        }, () => {
            this.adopting = undefined;
        });
    }
    queueOptions() {
        return this.options.offlineQueue || {};
    }
    /** The connection's state now. */
    get state() {
        return this._state;
    }
    /**
     * Opens the connection (and keeps it open until `close()`). Resolves when the server has
     * welcomed it; rejects only when `close()` is called first or reconnecting is off and the
     * attempt failed.
     */
    connect() {
        if (this._state.state === "connected")
            return Promise.resolve();
        const p = new Promise((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
        p.catch(() => { }); // only a caller that awaits it hears of a close() before connecting
        if (this._state.state === "closed") {
            this.attempt = 0;
            this.fatal = undefined;
            this.setState({ state: "connecting" });
            void this.open();
        }
        return p;
    }
    /** Closes the connection for good: pending requests and queued publishes are rejected. */
    close() {
        if (this._state.state === "closed" && !this.ws)
            return;
        this.generation++;
        this.stopTimers();
        const ws = this.ws;
        this.ws = undefined;
        if (ws) {
            this.detach(ws);
            try {
                ws.close(1000, "client closed");
            }
            catch {
                /* already closed */
            }
        }
        this.failPending(new ClosedError());
        // Told they failed, so they must not be sent by a later page either.
        this.failQueue(new ClosedError());
        this.store?.release();
        for (const ch of this.channels.values())
            Object.assign(ch, { state: "idle", inFlight: false, again: false });
        this.setState({ state: "closed", reason: "closed by the client", code: 1000 });
        for (const w of this.connectWaiters.splice(0))
            w.reject(new ClosedError());
    }
    /**
     * Receives the events of a topic, or of every topic a pattern (`chat.*`, `prices.>`)
     * matches. Made now if connected, else at connect; remade after every reconnect, resuming
     * from the last event seen so that nothing is missed or seen twice — or, when that is not
     * possible, `onUnrecovered` says so. `resume` and `history` apply when this call starts the
     * client's subscription to the topic; another `subscribe` on a topic the client already has
     * shares that subscription and starts from its current position.
     */
    subscribe(topic, onEvent, options = {}) {
        let ch = this.channels.get(topic);
        const fresh = !ch;
        if (!ch) {
            ch = { topic, exact: !isPattern(topic), subs: new Set(), state: "idle", history: options.history ?? 0, inFlight: false, again: false, failures: 0 };
            if (options.filter)
                ch.filter = options.filter;
            if (options.snapshot && ch.exact)
                ch.snapshot = true;
            if (options.resume && ch.exact)
                ch.position = { ...options.resume };
            this.channels.set(topic, ch);
        }
        const sub = new Subscription(topic, ch, this, options);
        if (onEvent)
            sub.on("event", onEvent);
        const wantsPresence = options.presence && ![...ch.subs].some((s) => s.options.presence);
        ch.subs.add(sub);
        if (this._state.state === "connected") {
            if (fresh || wantsPresence || ch.state === "idle")
                this.subscribeChannels([ch]);
            else if (ch.state === "subscribed") {
                const info = { topic, ...(ch.position ? { position: { ...ch.position } } : {}) };
                queueMicrotask(() => sub._emit("subscribed", info));
            }
        }
        return sub;
    }
    /**
     * Publishes on a topic; resolves with the event's position. While disconnected the publish
     * waits in the offline queue and is sent, in order, after reconnect. Rejects with a
     * `ServerError` (e.g. 4003 forbidden, 5003 unavailable), a `QueueError`, or a
     * `ConnectionError` when the connection ended while the publish was in flight (its outcome
     * is then unknown). `priority` is what subscribers' `drop-lowest` policy drops first (kept
     * in the offline queue in memory; not in the persisted store).
     */
    publish(topic, payload, options = {}) {
        const priority = options.priority;
        if (this._state.state === "connected") {
            return this.sendPublish(topic, payload, priority).catch((e) => {
                if (e instanceof NotSent)
                    return this.publish(topic, payload, options);
                throw e;
            });
        }
        const q = this.options.offlineQueue;
        if (q === false)
            return Promise.reject(new ConnectionError("not connected"));
        if (this._state.state === "closed") {
            return Promise.reject(this.everConnecting ? new ClosedError() : new ConnectionError("not connected: call connect() first"));
        }
        this.expire();
        if (this.queue.length >= (q?.maxSize ?? 1000)) {
            return Promise.reject(new QueueError("queue_full", `the offline queue holds ${this.queue.length} publishes`));
        }
        return new Promise((resolve, reject) => {
            const e = { topic, payload, time: Date.now(), resolve, reject, ...(priority ? { priority } : {}) };
            if (this.store)
                e.key = this.store.add({ owner: this.owner, topic, payload, time: e.time });
            this.queue.push(e);
            this.armExpiry();
        });
    }
    /** Sends a message to the application hosting the engine; resolves when it has taken it. */
    async send(payload) {
        if (this.options.rateLimit)
            await this.pace();
        await this.request({ type: "send", payload });
    }
    /** Who is present on a topic now. */
    async presence(topic) {
        const m = await this.request({ type: "presence", topic });
        return { topic, count: m.count, members: m.members ?? [] };
    }
    /** A round trip to the server; resolves with its time in milliseconds. */
    async ping() {
        const t0 = now();
        await this.request({ type: "ping" }, this.options.pongTimeout ?? 5000);
        return now() - t0;
    }
    // ---- connection ----
    setState(s) {
        const prev = this._state;
        if (prev.state === s.state && prev.reason === s.reason && prev.code === s.code && s.state !== "reconnecting")
            return;
        this._state = s;
        this.emit("state", s);
    }
    async open() {
        this.everConnecting = true;
        const generation = this.generation;
        try {
            if (this.options.getToken && this.needsToken())
                this.token = await this.fetchToken();
            this.wsCtor ??= this.options.WebSocket ?? (await defaultWebSocket());
        }
        catch (e) {
            if (generation !== this.generation)
                return;
            const err = e instanceof WeftError ? e : new WeftError("token", `getToken failed: ${String(e)}`);
            this.emit("error", err);
            return this.retry(err.message);
        }
        // close() (and perhaps connect() again) while waiting: that newer attempt owns the client.
        if (generation !== this.generation || this._state.state === "closed")
            return;
        this.current = this.best();
        this.openedAt = now();
        const params = new URLSearchParams(this.options.params ?? {});
        if (this.token)
            params.set("token", this.token);
        const qs = params.toString();
        const url = qs ? this.url + (this.url.includes("?") ? "&" : "?") + qs : this.url;
        let ws;
        try {
            ws = new this.wsCtor(url, [SUBPROTOCOL[this.options.protocol ?? "json"]]);
        }
        catch (e) {
            this.current.failures++;
            this.failedInARow++;
            this.emit("error", new ConnectionError(`cannot open ${this.url}: ${String(e)}`));
            return this.retry("cannot open the connection");
        }
        this.ws = ws;
        this.opened = false;
        this.channel = this.channelReady = undefined;
        this.securing = undefined;
        this.inChain = this.outChain = Promise.resolve();
        ws.binaryType = "arraybuffer";
        ws.onopen = () => {
            this.opened = true;
        };
        ws.onerror = () => { };
        ws.onclose = (ev) => this.onClose(ws, ev.code, ev.reason);
        ws.onmessage = (ev) => this.onFrame(ws, ev.data);
    }
    /** The secure channel's mode on the current connection, or `undefined` in clear. */
    get secured() {
        return this.channel?.mode;
    }
    /** A frame as received: opened first on a secured connection (in order), then read. */
    onFrame(ws, data) {
        const ready = this.channelReady;
        if (!ready)
            return this.onData(data);
        const frame = typeof data === "string" ? undefined : new Uint8Array(data);
        this.inChain = this.inChain
            .then(async () => {
            let ch;
            try {
                ch = await ready;
            }
            catch {
                return; // the handshake reports its own failure
            }
            if (!frame)
                throw new Error("a message in clear");
            const plain = await ch.open(frame);
            if (ws === this.ws)
                this.onData(this.options.protocol === "msgpack" ? plain : new TextDecoder().decode(plain));
        })
            .catch((e) => {
            if (ws !== this.ws)
                return;
            // Altered, replayed or out of order: this connection cannot be trusted any more.
            this.emit("error", new WeftError("secure", `secure channel: ${e instanceof Error ? e.message : String(e)}`));
            ws.close(4412, "secure channel");
        });
    }
    /** Agree on the secure channel, then go on as after any welcome. */
    async secure(ws, welcome, option) {
        try {
            if (!option) {
                this.fatal = "the server requires the secure channel: give the `secure` option (weft-client/secure)";
                throw new Error(this.fatal);
            }
            const mode = option.mode;
            const hs = await option.start();
            if (ws !== this.ws)
                return;
            const ms = this.options.requestTimeout ?? 10000;
            await new Promise((resolve, reject) => {
                const t = setTimeout(() => reject(new TimeoutError(`no answer to secure within ${ms} ms`)), ms);
                this.securing = {
                    finish: (m) => hs.finish(m, String(welcome.session)),
                    resolve: (m) => (clearTimeout(t), resolve(m)),
                    reject: (e) => (clearTimeout(t), reject(e)),
                };
                this.write({ type: "secure", id: "secure", mode, key: hs.key });
            });
            // Set by onData as it read `secured`, before any frame behind it.
            const ready = this.channelReady;
            if (ws !== this.ws || !ready)
                return;
            const ch = await ready;
            if (ws !== this.ws)
                return;
            this.channel = ch;
            this.onWelcome(welcome);
        }
        catch (e) {
            if (ws !== this.ws)
                return;
            const err = e instanceof WeftError ? e : new WeftError("secure", `secure channel: ${e instanceof Error ? e.message : String(e)}`);
            this.emit("error", err);
            ws.close(4412, "secure handshake failed");
        }
    }
    /** `getToken()`, given at most `requestTimeout` to answer. */
    fetchToken() {
        const get = this.options.getToken;
        const ms = this.options.requestTimeout ?? 10000;
        return new Promise((resolve, reject) => {
            const t = setTimeout(() => reject(new TimeoutError(`getToken did not answer within ${ms} ms`)), ms);
            Promise.resolve()
                .then(get)
                .then((v) => (clearTimeout(t), resolve(v)), (e) => (clearTimeout(t), reject(e)));
        });
    }
    needsToken() {
        if (!this.token)
            return true;
        const { exp } = claims(this.token);
        return exp !== undefined && exp * 1000 - Date.now() < 5000;
    }
    detach(ws) {
        ws.onopen = ws.onclose = ws.onerror = ws.onmessage = null;
    }
    onClose(ws, code, reason) {
        if (ws !== this.ws)
            return;
        this.detach(ws);
        this.ws = undefined;
        this.stopTimers();
        const wasOpen = this.opened;
        // This endpoint failed (or was lost): another healthy one goes first next time.
        this.current.failures++;
        if (!wasOpen)
            this.failedInARow++;
        this.failPending(new ConnectionError(`the connection closed (${code}${reason ? " " + reason : ""})`, code));
        for (const ch of this.channels.values())
            Object.assign(ch, { state: "idle", inFlight: false, again: false });
        // An expired session, or an upgrade refused (a browser shows only 1006): ask for a token.
        if (code === 4401 || (!wasOpen && this.options.getToken))
            this.token = undefined;
        const why = !wasOpen
            ? "could not connect" + (code === 1006 ? "" : ` (${code})`)
            : code === 4401
                ? "token expired"
                : reason || `connection lost (${code})`;
        this.retry(why, code, !wasOpen);
    }
    retry(reason, code, refused = false) {
        if (this._state.state === "closed")
            return;
        const r = this.fatal ? false : this.options.reconnect;
        reason = this.fatal ?? reason;
        if (r === false) {
            this.failQueue(new ConnectionError(reason, code));
            this.setState({ state: "closed", reason, code, ...(refused ? { refused } : {}) });
            for (const w of this.connectWaiters.splice(0))
                w.reject(new ConnectionError(reason, code));
            return;
        }
        const b = this.options.breaker;
        const threshold = b ? (b.threshold ?? 10) : Infinity;
        if (this.failedInARow >= threshold) {
            // Every endpoint keeps failing: pause, then let one attempt through.
            const cooldown = b?.cooldown ?? 30000;
            this.breaker = "open";
            this.setState({ state: "reconnecting", reason: `circuit open after ${this.failedInARow} failed attempts: ${reason}`, delay: cooldown, ...(code !== undefined ? { code } : {}), ...(refused ? { refused } : {}) });
            this.armExpiry();
            this.later(cooldown, () => {
                this.breaker = "half-open";
                this.failedInARow = threshold - 1;
                void this.open();
            });
            return;
        }
        const min = r?.minDelay ?? 250;
        const max = r?.maxDelay ?? 15000;
        // Full jitter: anywhere between 0 and the exponential ceiling, so clients cut off together
        // do not come back together.
        const delay = Math.random() * Math.min(max, min * 2 ** Math.min(this.attempt, 30));
        this.attempt++;
        this.setState({ state: "reconnecting", reason, delay: Math.round(delay), ...(code !== undefined ? { code } : {}), ...(refused ? { refused } : {}) });
        this.armExpiry();
        this.later(delay, () => void this.open());
    }
    later(ms, f) {
        const t = setTimeout(() => {
            this.timers.delete(t);
            f();
        }, ms);
        this.timers.add(t);
    }
    stopTimers() {
        for (const t of this.timers)
            clearTimeout(t);
        this.timers.clear();
        clearInterval(this.pingTimer);
        clearTimeout(this.refreshTimer);
        clearTimeout(this.expiryTimer);
        this.pingTimer = this.refreshTimer = this.expiryTimer = undefined;
    }
    failPending(e) {
        for (const p of this.pending.values()) {
            clearTimeout(p.timer);
            p.reject(e);
        }
        this.pending.clear();
    }
    failQueue(e) {
        for (const q of this.queue.splice(0)) {
            this.forget(q);
            q.reject(e);
        }
    }
    forget(q) {
        if (this.store && q.key !== undefined)
            void Promise.resolve(q.key).then((k) => this.store?.remove(k));
    }
    onWelcome(m) {
        this.session = { session: String(m.session), user: String(m.user), heartbeat: Number(m.heartbeat) };
        this.attempt = 0;
        const ms = now() - this.openedAt;
        this.current.latency = this.current.latency === undefined ? ms : 0.7 * this.current.latency + 0.3 * ms;
        this.current.failures = 0;
        this.failedInARow = 0;
        this.breaker = "closed";
        this.missedInARow = 0;
        this.setState({ state: "connected" });
        this.emit("welcome", { ...this.session, time: Number(m.time) });
        for (const w of this.connectWaiters.splice(0))
            w.resolve();
        this.subscribeChannels([...this.channels.values()]);
        this.flush();
        this.adopt();
        const every = this.options.pingInterval ?? 10000;
        clearInterval(this.pingTimer);
        this.pingTimer = setInterval(() => void this.measure(), every);
        this.scheduleRefresh();
    }
    async measure() {
        let rtt;
        try {
            rtt = await this.ping();
            this.missedInARow = 0;
        }
        catch (e) {
            if (!(e instanceof TimeoutError))
                return;
            this.missedInARow++;
        }
        this.rtts = rtt === undefined ? this.rtts : [...this.rtts, rtt].slice(-5);
        this.misses = [...this.misses, rtt === undefined].slice(-5);
        const n = this.rtts.length;
        const mean = n ? this.rtts.reduce((a, b) => a + b, 0) / n : 0;
        let jitter = 0;
        for (let i = 1; i < n; i++)
            jitter += Math.abs(this.rtts[i] - this.rtts[i - 1]);
        jitter = n > 1 ? jitter / (n - 1) : 0;
        const missed = this.misses.filter(Boolean).length;
        const level = missed >= 2 || mean >= 1000
            ? "poor"
            : missed === 1 || mean >= 300
                ? "fair"
                : mean >= 100 || jitter >= 50
                    ? "good"
                    : "excellent";
        this.quality = { rtt: Math.round(mean * 10) / 10, jitter: Math.round(jitter * 10) / 10, missed, level };
        this.emit("quality", this.quality);
        if (this.missedInARow >= 2 && this.ws) {
            // Two pongs missed in a row: the connection is dead even if the socket has not noticed.
            const ws = this.ws;
            try {
                ws.close(4000, "no pong");
            }
            catch {
                /* closing anyway */
            }
            this.onClose(ws, 4000, "no pong");
        }
    }
    scheduleRefresh() {
        clearTimeout(this.refreshTimer);
        const get = this.options.getToken;
        if (!get || !this.token)
            return;
        const { exp, iat } = claims(this.token);
        if (exp === undefined)
            return;
        const left = exp * 1000 - Date.now();
        const life = iat !== undefined ? (exp - iat) * 1000 : left;
        const margin = Math.max(500, Math.min(60000, life / 10));
        // setTimeout fires at once past 2^31-1 ms (24.8 days): wake then and look again.
        const delay = Math.min(Math.max(0, left - margin), 2 ** 31 - 1);
        this.refreshTimer = setTimeout(async () => {
            if (left - margin > 2 ** 31 - 1)
                return this.scheduleRefresh();
            try {
                const token = await this.fetchToken();
                if ((claims(token).exp ?? 0) <= exp) {
                    // The token source gave the same (cached) token: ask again a little later, not in a loop.
                    this.refreshTimer = setTimeout(() => this.scheduleRefresh(), Math.max(1000, Math.min(margin / 4, 15000)));
                    return;
                }
                const m = await this.request({ type: "refresh", token });
                this.token = token;
                if (m.type === "refreshed")
                    this.scheduleRefresh();
            }
            catch (e) {
                // The session ends at exp (close 4401); the reconnect then asks for a token again.
                this.emit("error", e instanceof WeftError ? e : new WeftError("token", `getToken failed: ${String(e)}`));
            }
        }, delay);
    }
    // ---- requests ----
    write(m) {
        const ws = this.ws;
        if (!ws || ws.readyState !== OPEN)
            throw new ConnectionError("not connected");
        let data;
        try {
            data = this.options.protocol === "msgpack" ? encode(m) : JSON.stringify(m);
        }
        catch (e) {
            throw new ProtocolError(`cannot encode the ${String(m.type)} message: ${String(e)}`);
        }
        const ch = this.channel;
        if (!ch)
            return ws.send(data);
        // Sealed now (the sequence number is taken at once), sent in the order written.
        const sealed = ch.seal(typeof data === "string" ? new TextEncoder().encode(data) : data);
        this.outChain = this.outChain
            .then(() => sealed)
            .then((f) => void (ws === this.ws && ws.readyState === OPEN && ws.send(f)))
            .catch((e) => {
            // Nothing after a message that could not be sealed or sent may go out (its number is
            // taken): this connection is done.
            if (ws !== this.ws)
                return;
            this.emit("error", new WeftError("secure", `secure channel: ${e instanceof Error ? e.message : String(e)}`));
            ws.close(4412, "secure channel");
        });
    }
    request(m, timeout = this.options.requestTimeout ?? 10000) {
        return new Promise((resolve, reject) => this.call(m, timeout, resolve, reject));
    }
    /**
     * Sends a request; `ok` runs as soon as its answer is read, before the next message (a
     * subscribe's replayed events follow its answer at once, and must find it handled).
     */
    call(m, timeout, ok, fail) {
        if (this._state.state !== "connected")
            return fail(new ConnectionError("not connected"));
        const id = ++this.seq;
        const timer = setTimeout(() => {
            this.pending.delete(id);
            fail(new TimeoutError(`no answer to ${String(m.type)} within ${timeout} ms`));
        }, timeout);
        this.pending.set(id, { resolve: ok, reject: fail, timer });
        try {
            this.write({ ...m, id });
        }
        catch (e) {
            clearTimeout(timer);
            this.pending.delete(id);
            fail(e);
        }
    }
    async sendPublish(topic, payload, priority) {
        if (this.options.rateLimit) {
            await this.pace();
            // The connection went while the rate limiter held it: not sent, so it may wait offline.
            if (this._state.state !== "connected")
                throw new NotSent();
        }
        const m = await this.request({ type: "publish", topic, payload, ...(priority ? { priority } : {}) });
        return { topic, offset: m.offset, epoch: m.epoch };
    }
    expire() {
        const age = this.queueOptions().maxAge ?? 60000;
        const cutoff = Date.now() - age;
        while (this.queue.length > 0 && this.queue[0].time <= cutoff) {
            const q = this.queue.shift();
            this.forget(q);
            q.reject(new QueueError("expired", `not sent within ${age} ms`));
        }
    }
    /** While publishes wait, expire each when its time is up (not only when the connection returns). */
    armExpiry() {
        clearTimeout(this.expiryTimer);
        this.expiryTimer = undefined;
        if (this.queue.length === 0 || this._state.state === "connected")
            return;
        const age = this.queueOptions().maxAge ?? 60000;
        const due = Math.max(0, this.queue[0].time + age - Date.now());
        this.expiryTimer = setTimeout(() => {
            this.expire();
            this.armExpiry();
        }, due + 1);
    }
    /** Sends the offline queue in order (each publish is answered on its own). */
    flush() {
        clearTimeout(this.expiryTimer);
        this.expire();
        let back = 0;
        for (const q of this.queue.splice(0)) {
            this.sendPublish(q.topic, q.payload, q.priority).then((r) => {
                this.forget(q);
                q.resolve(r);
            }, (e) => {
                if (e instanceof NotSent) {
                    // Never sent (the rate limiter held it and the connection went): back in the
                    // queue, in order, for the next connection.
                    this.queue.splice(back++, 0, q);
                    this.armExpiry();
                    return;
                }
                // The connection fell again before the answer: the outcome is unknown, so it is not
                // sent twice; an answer from the server is final either way.
                this.forget(q);
                q.reject(e);
            });
        }
    }
    subscribeChannels(chs) {
        // One request per kind (presence or not, history depth), in chunks that keep each request
        // well under the server's message size limit; one request at a time per channel.
        const groups = new Map();
        for (const c of chs) {
            if (c.subs.size === 0 || this.channels.get(c.topic) !== c)
                continue;
            if (c.inFlight) {
                c.again = true;
                continue;
            }
            const presence = [...c.subs].some((s) => s.options.presence);
            const history = c.exact && !c.position ? c.history : 0;
            const key = `${presence}/${history}/${c.snapshot === true}/${c.filter ? JSON.stringify(c.filter) : ""}`;
            groups.set(key, [...(groups.get(key) ?? []), c]);
        }
        for (const [key, group] of groups) {
            const [presence, history] = [key.startsWith("true"), Number(key.split("/")[1])];
            const { filter, snapshot } = group[0];
            for (let i = 0; i < group.length; i += 100) {
                this.subscribeBatch(group.slice(i, i + 100), presence, history, filter, snapshot === true);
            }
        }
    }
    subscribeBatch(batch, presence, history, filter, snapshot = false) {
        const resume = {};
        for (const c of batch) {
            if (c.state === "idle")
                c.state = "subscribing";
            else if (c.state === "subscribed")
                c.state = "recovering";
            c.inFlight = true;
            c.again = false;
            if (c.exact && c.position)
                resume[c.topic] = c.position;
        }
        const m = { type: "subscribe", topics: batch.map((c) => c.topic), presence };
        if (Object.keys(resume).length)
            m.resume = resume;
        if (history)
            m.history = history;
        if (filter)
            m.filter = filter;
        if (snapshot)
            m.snapshot = true;
        this.call(m, this.options.requestTimeout ?? 10000, (reply) => {
            const results = reply.results ?? [];
            for (const c of batch) {
                c.inFlight = false;
                this.onSubscribed(c, results.find((r) => r.topic === c.topic), resume[c.topic]);
            }
            this.subscribeChannels(batch.filter((c) => c.again));
        }, (e) => {
            for (const c of batch)
                c.inFlight = false;
            // Disconnected: every channel is remade at the next welcome. Anything else (a timeout,
            // 4005 rate limited, 5003 unavailable): tell, and ask again after a while.
            if (e instanceof ConnectionError || e instanceof ClosedError)
                return;
            for (const c of batch)
                this.failed(c, e);
        });
    }
    /** A subscribe that may work later: the subscriptions hear why; it is retried with backoff. */
    failed(c, e) {
        if (this.channels.get(c.topic) !== c)
            return;
        for (const s of c.subs)
            s._emit("error", e);
        const ceiling = Math.min(30000, 500 * 2 ** Math.min(c.failures++, 16));
        this.later(ceiling / 2 + (Math.random() * ceiling) / 2, () => this.subscribeChannels([c]));
    }
    onSubscribed(c, r, asked) {
        if (this.channels.get(c.topic) !== c)
            return;
        if (!r || r.ok !== true) {
            const err = r?.error;
            const e = new ServerError(err?.code ?? 5000, err?.message ?? `no result for ${c.topic}`);
            // Refused for good (a bad name, not allowed, too many): the subscription ends.
            if (e.code === 4002 || e.code === 4003 || e.code === 4004)
                return this.ended(c, e);
            return this.failed(c, e);
        }
        c.state = "subscribed";
        c.failures = 0;
        const info = { topic: c.topic };
        if (typeof r.offset === "number") {
            const server = { offset: r.offset, epoch: String(r.epoch) };
            info.position = server;
            const replayed = typeof r.replayed === "number" ? r.replayed : 0;
            if (replayed)
                info.replayed = replayed;
            if (asked) {
                info.recovered = r.recovered === true;
                if (!info.recovered) {
                    c.position = server;
                    for (const s of c.subs)
                        s._emit("unrecovered", { topic: c.topic, from: asked, position: server });
                }
            }
            else {
                // Recent history follows the reply; the events before it were never seen (and a
                // position already reached is never moved back).
                const start = { offset: server.offset - replayed, epoch: server.epoch };
                const p = c.position;
                if (!p || p.epoch !== start.epoch || p.offset < start.offset)
                    c.position = start;
            }
        }
        for (const s of c.subs)
            s._emit("subscribed", info);
    }
    /** The server ended or refused a subscription for good. */
    ended(c, e) {
        this.channels.delete(c.topic);
        c.state = "idle";
        for (const s of c.subs)
            s._emit("error", e);
    }
    /** @internal */
    async _drop(sub) {
        const c = this.channels.get(sub.topic);
        if (!c || !c.subs.delete(sub))
            return;
        if (c.subs.size > 0)
            return;
        this.channels.delete(sub.topic);
        if (this._state.state === "connected" && c.state !== "idle") {
            await this.request({ type: "unsubscribe", topics: [sub.topic] }).catch(() => { });
        }
    }
    // ---- incoming ----
    onData(data) {
        let m;
        try {
            const v = typeof data === "string"
                ? JSON.parse(data)
                : decode(data instanceof Uint8Array ? data : new Uint8Array(data));
            if (typeof v !== "object" || v === null || typeof v.type !== "string")
                throw new Error("no type");
            m = v;
        }
        catch (e) {
            this.emit("error", new ProtocolError(`unreadable message: ${String(e)}`));
            return;
        }
        if (m.id === "secure" && this.securing && (m.type === "secured" || m.type === "error")) {
            const s = this.securing;
            this.securing = undefined;
            if (m.type !== "secured")
                return s.reject(new ServerError(Number(m.code), String(m.message)));
            // Every frame after this one is sealed: the keys are on their way before it is read
            // (a WebSocket may hand over several frames without yielding in between).
            this.channelReady = s.finish(m);
            return s.resolve(m);
        }
        switch (m.type) {
            case "welcome": {
                const option = this.options.secure;
                if ((option || m.secure === "require") && this.ws)
                    return void this.secure(this.ws, m, option);
                return this.onWelcome(m);
            }
            case "event":
                return this.onEvent(m);
            case "join":
            case "leave":
                return this.onPresence(m);
            case "reset":
                return this.onReset(m);
            case "snapshot":
                return this.onSnapshot(m);
            case "lagged": {
                this.emit("error", new WeftError("lagged", `the server dropped ${String(m.dropped)} events for this slow connection`));
                // A filtered topic's offsets skip, so a drop shows no gap: ask for what was missed.
                const filtered = [...this.channels.values()].filter((c) => c.exact && c.filter !== undefined && c.state === "subscribed");
                if (filtered.length > 0)
                    this.subscribeChannels(filtered);
                return;
            }
        }
        const id = m.id;
        const p = typeof id === "number" ? this.pending.get(id) : undefined;
        if (p) {
            this.pending.delete(id);
            clearTimeout(p.timer);
            if (m.type === "error")
                p.reject(new ServerError(Number(m.code), String(m.message)));
            else
                p.resolve(m);
        }
        else if (m.type === "error") {
            const e = new ServerError(Number(m.code), String(m.message));
            // A refreshed token that no longer allows some subscriptions: the server ended them.
            const ended = e.code === 4003 ? /which ended: (.*)$/.exec(e.message) : null;
            for (const t of ended ? ended[1].split(", ") : []) {
                const c = this.channels.get(t);
                if (c)
                    this.ended(c, e);
            }
            this.emit("error", e);
        }
    }
    onEvent(ev) {
        const c = this.channels.get(ev.topic);
        if (c && c.exact) {
            const p = c.position;
            if (p && p.epoch === ev.epoch && ev.offset <= p.offset)
                return; // seen already
            if (!p && c.state !== "subscribed") {
                // Before the subscribe's answer (left over from an earlier subscription of the topic,
                // or through a pattern): the answer and its replay say where the stream starts.
            }
            else if (!p || (p.epoch === ev.epoch && (ev.offset === p.offset + 1 || (c.filter !== undefined && ev.offset > p.offset)))) {
                // (A filtered topic's offsets skip what the filter refused; the server's resume checks
                // that nothing passing was lost.)
                c.position = { offset: ev.offset, epoch: ev.epoch };
                for (const s of c.subs)
                    s._emit("event", ev);
            }
            else if (c.state === "subscribed") {
                // A gap or another epoch: ask for what is missing (or to be told it is gone). Later
                // events are in that replay, so the ones arriving meanwhile are dropped.
                this.subscribeChannels([c]);
            }
        }
        for (const pc of this.channels.values()) {
            if (!pc.exact && matches(pc.topic, ev.topic))
                for (const s of pc.subs)
                    s._emit("event", ev);
        }
    }
    onPresence(m) {
        const topic = String(m.topic);
        const member = m.member;
        for (const c of this.channels.values()) {
            if (c.topic === topic || (!c.exact && matches(c.topic, topic))) {
                for (const s of c.subs)
                    if (s.options.presence)
                        s._emit(m.type, member);
            }
        }
    }
    onSnapshot(m) {
        const c = this.channels.get(String(m.topic));
        if (!c || !c.exact)
            return;
        const snap = { topic: c.topic, position: { offset: Number(m.offset), epoch: String(m.epoch) } };
        if ("data" in m)
            snap.data = m.data;
        if (m.error !== undefined) {
            snap.error = m.error;
        }
        else {
            // The state includes every event up to its position: delivery goes on after it (a state
            // older than the subscription is followed by the events in between).
            c.position = { ...snap.position };
        }
        for (const s of c.subs)
            s._emit("snapshot", snap);
    }
    onReset(m) {
        const topic = String(m.topic);
        const position = { offset: Number(m.offset), epoch: String(m.epoch) };
        const c = this.channels.get(topic);
        if (c) {
            const from = c.position;
            c.position = position;
            for (const s of c.subs)
                s._emit("unrecovered", { topic: c.topic, ...(from ? { from } : {}), position });
        }
        // Pattern subscriptions that cover the topic hear it too (cluster mode follows topics seen
        // through a pattern by position, and says so when a hole cannot be refilled).
        for (const pc of this.channels.values()) {
            if (!pc.exact && matches(pc.topic, topic))
                for (const s of pc.subs)
                    s._emit("unrecovered", { topic, position });
        }
    }
}
const now = () => (typeof performance !== "undefined" ? performance.now() : Date.now());
/** A publish the rate limiter held until the connection was gone: it was never sent. */
class NotSent extends Error {
}
async function defaultWebSocket() {
    const g = globalThis.WebSocket;
    if (g)
        return g;
    try {
        const ws = "ws"; // a variable: bundlers for browsers leave it alone
        return (await import(/* @vite-ignore */ ws)).default;
    }
    catch {
        throw new WeftError("no_websocket", "no WebSocket here: install the `ws` package (Node < 22) or pass options.WebSocket");
    }
}
