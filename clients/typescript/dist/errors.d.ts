/**
 * Every error the client produces is a `WeftError`; `code` says which. Server errors carry the
 * server's numeric code (docs/PROTOCOL.md, "Error codes"); errors made by the client itself
 * carry a string code.
 */
export declare class WeftError extends Error {
    /** The server's code (4000-5003), or the client's own: "timeout", "disconnected", ... */
    readonly code: number | string;
    constructor(
    /** The server's code (4000-5003), or the client's own: "timeout", "disconnected", ... */
    code: number | string, message: string);
}
/** The server refused a request; `code` is its error code, e.g. 4003 (forbidden). */
export declare class ServerError extends WeftError {
    constructor(code: number, message: string);
}
/** No answer within `requestTimeout` (or no pong within `pongTimeout`). */
export declare class TimeoutError extends WeftError {
    constructor(message: string);
}
/**
 * The connection ended before the answer came, or there is no connection for a request that
 * cannot wait for one. For a publish in flight, the outcome is unknown.
 */
export declare class ConnectionError extends WeftError {
    /** The WebSocket close code, when there was one. */
    readonly closeCode?: number | undefined;
    constructor(message: string, 
    /** The WebSocket close code, when there was one. */
    closeCode?: number | undefined);
}
/** The client was closed with `close()`. */
export declare class ClosedError extends WeftError {
    constructor();
}
/** The offline queue refused or gave up a publish: full ("queue_full") or too old ("expired"). */
export declare class QueueError extends WeftError {
    constructor(code: "queue_full" | "expired", message: string);
}
/** The server sent something this client cannot read (a bug on one side). */
export declare class ProtocolError extends WeftError {
    constructor(message: string);
}
