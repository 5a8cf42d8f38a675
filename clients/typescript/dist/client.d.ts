import type { SecureMode, SecureOption } from "./secure.js";
import { WeftError } from "./errors.js";
/** Where a topic's stream stands: the offset of an event and the epoch its offsets belong to. */
export interface Position {
    offset: number;
    epoch: string;
}
/** An event published on a topic. */
export interface WeftEvent<T = unknown> extends Position {
    topic: string;
    /** Unique per event: `epoch-offset`, or the publisher's own id given through the HTTP API. */
    id: string;
    /** Server time of the publish, milliseconds since the Unix epoch. */
    time: number;
    /** The publish's priority, when other than `normal`. */
    priority?: Priority;
    payload: T;
}
/** A connection present on a topic. */
export interface Member {
    user: string;
    session: string;
    info?: unknown;
}
export type State = "connecting" | "connected" | "reconnecting" | "closed";
export interface StateChange {
    state: State;
    /** Why the state changed, in words (for `reconnecting` and `closed`). */
    reason?: string;
    /** The WebSocket close code that caused it, when there was one. */
    code?: number;
    /** `reconnecting`: milliseconds until the next attempt. */
    delay?: number;
    /** The attempt failed before the WebSocket opened: server unreachable, or the upgrade refused (a browser cannot tell which; e.g. 401 for a bad token). */
    refused?: boolean;
}
export interface Quality {
    /** Mean round trip of the last pings, in milliseconds. */
    rtt: number;
    /** Mean difference between consecutive round trips, in milliseconds. */
    jitter: number;
    /** Pings without a pong within `pongTimeout` among the last ones. */
    missed: number;
    level: "excellent" | "good" | "fair" | "poor";
}
/** What the server said about a subscription (also after each reconnect). */
export interface SubscribedInfo {
    topic: string;
    /** The stream's position when the subscription was made (exact topics). */
    position?: Position;
    /** With a resume position: whether every missed event follows. */
    recovered?: boolean;
    /** How many missed or recent events follow. */
    replayed?: number;
}
/**
 * Events may have been missed and cannot be replayed: the epoch changed (history was lost),
 * they fell out of history, or the server reset the topic. The subscription continues from
 * `position`; fetch the state elsewhere if it matters.
 */
/**
 * A topic's state, asked for with `snapshot: true` (docs/PROTOCOL.md, "Snapshots"): `data` is
 * what the events up to and including `position` add up to (absent: the topic has none), or
 * `error` says why it could not be had. Events at or below `position` are in the state, so
 * they are not delivered; the events after it follow in order.
 */
export interface Snapshot {
    topic: string;
    position: Position;
    data?: unknown;
    error?: {
        code: number;
        message: string;
    };
}
export interface Unrecovered {
    topic: string;
    /** The last position this client had seen. */
    from?: Position;
    /** Where the subscription continues. */
    position: Position;
}
/**
 * The WebSocket constructor the client uses: the platform's, `ws` in Node, or a test's. Loosely
 * typed on purpose, so that the browser's class and `ws`'s both fit as they are.
 */
export type WebSocketLike = new (url: string, protocols?: string | string[]) => object;
export interface ClientOptions {
    /** A JWT sent in the `token` query parameter at each connect. */
    token?: string;
    /**
     * Called for a token before connecting when there is none or it is about to expire, after the
     * server ended the session for an expired token (close 4401) or refused the upgrade, and
     * before expiry on an open connection, whose session is then extended in-band (`refresh`).
     */
    getToken?: () => string | Promise<string>;
    /** Wire encoding: `json` (text frames, the default) or `msgpack` (binary frames). */
    protocol?: "json" | "msgpack";
    /** Full-jitter exponential backoff between attempts, in ms (default 250 to 15,000); `false`: never reconnect. */
    reconnect?: {
        minDelay?: number;
        maxDelay?: number;
    } | false;
    /** Extra query parameters, e.g. `{ user: "alice" }` for an anonymous demo server. */
    params?: Record<string, string>;
    /** Milliseconds between pings that measure the connection (default 10,000). */
    pingInterval?: number;
    /** A ping without a pong this long counts as missed (default 5,000); two in a row: reconnect. */
    pongTimeout?: number;
    /** How long a request waits for its answer (default 10,000 ms). */
    requestTimeout?: number;
    /**
     * Publishes made while disconnected, kept and sent in order after reconnect. `maxSize`
     * (default 1,000) and `maxAge` (ms, default 60,000) bound it; `persist` names an IndexedDB
     * store (browsers) so a reload does not lose them; `false` rejects such publishes at once.
     */
    offlineQueue?: {
        maxSize?: number;
        maxAge?: number;
        persist?: string | false;
    } | false;
    /** The WebSocket implementation; default: the global one, else the `ws` package. */
    WebSocket?: WebSocketLike;
    /**
     * A circuit breaker: after `threshold` failed attempts in a row (default 10; every endpoint
     * counted) the circuit opens — no attempt for `cooldown` ms (default 30,000), then one
     * (half-open) — so clients facing a cluster that is entirely down do not hammer it. Off when
     * not given (the backoff alone spreads attempts).
     */
    breaker?: {
        threshold?: number;
        cooldown?: number;
    };
    /** At most `rate` publishes and sends per second leave the client (`burst` at once, default 10), in order. */
    rateLimit?: {
        rate: number;
        burst?: number;
    };
    /**
     * The secure channel (docs/PROTOCOL.md, "Secure channel"): `secure("encrypt" | "sign", {
     * serverKey })` from `weft-client/secure`, started on every connection right after the
     * `welcome`. Every message after it, both ways, is encrypted with AES-256-GCM (or signed with
     * HMAC-SHA256) under keys agreed by ephemeral ECDH P-256, on WebCrypto (browsers: secure
     * contexts only). Without it, a server that requires the channel is refused with a `secure`
     * error.
     */
    secure?: SecureOption;
}
/** One of the client's endpoints and how it has fared. */
export interface Endpoint {
    url: string;
    /** Failed or lost connections in a row (0 once one succeeds). */
    failures: number;
    /** Moving average of how long connecting took, in ms (after the first success). */
    latency?: number;
}
/** The answer to a publish. */
export interface Published extends Position {
    topic: string;
}
/** An entry of the offline queue restored from a previous page, and what became of it. */
export interface OutboxResult {
    topic: string;
    payload: unknown;
    result?: Published;
    error?: WeftError;
}
export interface PresenceInfo {
    topic: string;
    count: number;
    members: Member[];
}
interface ClientEvents {
    state: StateChange;
    error: WeftError;
    quality: Quality;
    welcome: {
        session: string;
        user: string;
        time: number;
        heartbeat: number;
    };
    outbox: OutboxResult;
}
type Listener<T> = (value: T) => void;
/** A minimal typed event emitter; `on` returns the function that removes the listener. */
declare class Emitter<E> {
    private readonly l;
    on<K extends keyof E>(name: K, fn: Listener<E[K]>): () => void;
    protected emit<K extends keyof E>(name: K, value: E[K]): void;
}
export interface SubscribeOptions<T> {
    /** Also receive join and leave on this topic. */
    presence?: boolean;
    /** The last position seen (e.g. saved before a reload): missed events are replayed first. */
    resume?: Position;
    /** Without `resume`: start with up to this many recent events from the topic's history. */
    history?: number;
    /**
     * Only events that pass this filter arrive, live and when resuming (MongoDB-style operators
     * over `payload.…` paths, e.g. `{ "payload.price": { $gt: 100 } }`; see docs/PROTOCOL.md,
     * "Filters"). Applies when this call starts the client's subscription to the topic. Offsets
     * of a filtered topic skip the events filtered out; the server's resume still proves that
     * none that passes was missed.
     */
    filter?: Record<string, unknown>;
    /**
     * Receive the topic's state first (a `snapshot` event, `onSnapshot`), then the events after
     * it; asked again after a reconnect, when the server sends it only if the missed events
     * cannot be replayed. Applies when this call starts the client's subscription to the topic.
     */
    snapshot?: boolean;
    onSnapshot?: (snapshot: Snapshot) => void;
    onJoin?: (member: Member, topic: string) => void;
    onLeave?: (member: Member, topic: string) => void;
    onSubscribed?: (info: SubscribedInfo) => void;
    onUnrecovered?: (info: Unrecovered) => void;
    onError?: (error: WeftError) => void;
    /** For TypeScript: the payload type the events carry. */
    _payload?: T;
}
interface SubscriptionEvents<T> {
    event: WeftEvent<T>;
    snapshot: Snapshot;
    subscribed: SubscribedInfo;
    unrecovered: Unrecovered;
    join: Member;
    leave: Member;
    error: WeftError;
}
/** One `subscribe` call. Several may share a topic; the server sees one subscription. */
export declare class Subscription<T = unknown> extends Emitter<SubscriptionEvents<T>> {
    readonly topic: string;
    private readonly channel;
    private readonly client;
    readonly options: SubscribeOptions<T>;
    /** @internal */
    constructor(topic: string, channel: Channel, client: WeftClient, options: SubscribeOptions<T>);
    /** The position of the last event delivered on this topic (exact topics). */
    get position(): Position | undefined;
    /** Whether the server currently has this subscription. */
    get active(): boolean;
    set onJoin(fn: ((member: Member, topic: string) => void) | undefined);
    set onLeave(fn: ((member: Member, topic: string) => void) | undefined);
    /** Stops this subscription; the server's ends when no other shares its topic. */
    unsubscribe(): Promise<void>;
    /** @internal */
    _emit<K extends keyof SubscriptionEvents<T>>(name: K, value: SubscriptionEvents<T>[K]): void;
}
/** The client's state for one topic or pattern, shared by its subscriptions. */
interface Channel {
    topic: string;
    exact: boolean;
    subs: Set<Subscription<never>>;
    position?: Position;
    state: "idle" | "subscribing" | "subscribed" | "recovering";
    /** The history depth asked for on the first subscribe (not again on resubscribes). */
    history: number;
    /** The filter of the first subscribe, sent again on every resubscribe. */
    filter?: Record<string, unknown>;
    /** Whether the first subscribe asked for the topic's state (asked again on resubscribes). */
    snapshot?: boolean;
    /** A subscribe request is on its way. */
    inFlight: boolean;
    /** Another subscribe is due once the one in flight is answered (one at a time per channel). */
    again: boolean;
    /** Failed attempts in a row (a server error that may pass): the retry backs off. */
    failures: number;
}
/** What a subscriber's `drop-lowest` slow-consumer policy drops first (default `normal`). */
export type Priority = "background" | "low" | "normal" | "high" | "critical";
/** Does the NATS-style `pattern` (`*` one segment, a final `>` one or more) match `topic`? */
export declare function matches(pattern: string, topic: string): boolean;
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
export declare class WeftClient extends Emitter<ClientEvents> {
    private readonly options;
    private _state;
    private ws?;
    private wsCtor?;
    private token?;
    private attempt;
    private seq;
    private readonly pending;
    private readonly channels;
    private readonly queue;
    private readonly store?;
    private readonly owner;
    private readonly timers;
    private pingTimer?;
    private refreshTimer?;
    private rtts;
    private misses;
    private missedInARow;
    private connectWaiters;
    private opened;
    private everConnecting;
    /** Incremented by close(): an open() that was waiting (for a token) gives up. */
    private generation;
    private expiryTimer?;
    private adopting?;
    /** The session's details from the server's `welcome`. */
    session?: {
        session: string;
        user: string;
        heartbeat: number;
    };
    /** The latest connection quality, after the first ping. */
    quality?: Quality;
    /** The endpoints, in the order given, with their health; the client connects to the best. */
    readonly endpoints: Endpoint[];
    /** `closed`, `open` (every endpoint kept failing: pausing) or `half-open` (one attempt). */
    breaker: "closed" | "open" | "half-open";
    private current;
    private openedAt;
    private failedInARow;
    private tokens;
    private tokensAt;
    private paced;
    /** The current connection's secure channel, once its handshake finished. */
    private channel?;
    /** The channel being made: set when `secured` arrives, as every frame after it is sealed. */
    private channelReady?;
    /** The handshake waiting for `secured`: `finish` starts the keys' derivation at once. */
    private securing?;
    /** Set when reconnecting cannot help (the server requires what this client lacks). */
    private fatal?;
    /** Sealed frames are opened, and sealed messages sent, one after the other. */
    private inChain;
    private outChain;
    constructor(url: string | string[], options?: ClientOptions);
    /** The URL of the current (or last) connection. */
    get url(): string;
    /** The healthiest endpoint: fewest failures in a row, then lowest latency, then the order given. */
    private best;
    /** Waits for the rate limiter's next token (in call order). */
    private pace;
    /**
     * Takes over publishes that pages no longer running left in the store (at start, and at each
     * connect: a page that was closing when this one started has let go by then).
     */
    private adopt;
    private queueOptions;
    /** The connection's state now. */
    get state(): StateChange;
    /**
     * Opens the connection (and keeps it open until `close()`). Resolves when the server has
     * welcomed it; rejects only when `close()` is called first or reconnecting is off and the
     * attempt failed.
     */
    connect(): Promise<void>;
    /** Closes the connection for good: pending requests and queued publishes are rejected. */
    close(): void;
    /**
     * Receives the events of a topic, or of every topic a pattern (`chat.*`, `prices.>`)
     * matches. Made now if connected, else at connect; remade after every reconnect, resuming
     * from the last event seen so that nothing is missed or seen twice — or, when that is not
     * possible, `onUnrecovered` says so. `resume` and `history` apply when this call starts the
     * client's subscription to the topic; another `subscribe` on a topic the client already has
     * shares that subscription and starts from its current position.
     */
    subscribe<T = unknown>(topic: string, onEvent?: (event: WeftEvent<T>) => void, options?: SubscribeOptions<T>): Subscription<T>;
    /**
     * Publishes on a topic; resolves with the event's position. While disconnected the publish
     * waits in the offline queue and is sent, in order, after reconnect. Rejects with a
     * `ServerError` (e.g. 4003 forbidden, 5003 unavailable), a `QueueError`, or a
     * `ConnectionError` when the connection ended while the publish was in flight (its outcome
     * is then unknown). `priority` is what subscribers' `drop-lowest` policy drops first (kept
     * in the offline queue in memory; not in the persisted store).
     */
    publish(topic: string, payload: unknown, options?: {
        priority?: Priority;
    }): Promise<Published>;
    /** Sends a message to the application hosting the engine; resolves when it has taken it. */
    send(payload: unknown): Promise<void>;
    /** Who is present on a topic now. */
    presence(topic: string): Promise<PresenceInfo>;
    /** A round trip to the server; resolves with its time in milliseconds. */
    ping(): Promise<number>;
    private setState;
    private open;
    /** The secure channel's mode on the current connection, or `undefined` in clear. */
    get secured(): SecureMode | undefined;
    /** A frame as received: opened first on a secured connection (in order), then read. */
    private onFrame;
    /** Agree on the secure channel, then go on as after any welcome. */
    private secure;
    /** `getToken()`, given at most `requestTimeout` to answer. */
    private fetchToken;
    private needsToken;
    private detach;
    private onClose;
    private retry;
    private later;
    private stopTimers;
    private failPending;
    private failQueue;
    private forget;
    private onWelcome;
    private measure;
    private scheduleRefresh;
    private write;
    private request;
    /**
     * Sends a request; `ok` runs as soon as its answer is read, before the next message (a
     * subscribe's replayed events follow its answer at once, and must find it handled).
     */
    private call;
    private sendPublish;
    private expire;
    /** While publishes wait, expire each when its time is up (not only when the connection returns). */
    private armExpiry;
    /** Sends the offline queue in order (each publish is answered on its own). */
    private flush;
    private subscribeChannels;
    private subscribeBatch;
    /** A subscribe that may work later: the subscriptions hear why; it is retried with backoff. */
    private failed;
    private onSubscribed;
    /** The server ended or refused a subscription for good. */
    private ended;
    /** @internal */
    _drop(sub: Subscription<never> | Subscription<unknown>): Promise<void>;
    private onData;
    private onEvent;
    private onPresence;
    private onSnapshot;
    private onReset;
}
export {};
