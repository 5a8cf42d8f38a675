/**
 * Every error the client produces is a `WeftError`; `code` says which. Server errors carry the
 * server's numeric code (docs/PROTOCOL.md, "Error codes"); errors made by the client itself
 * carry a string code.
 */
export class WeftError extends Error {
    code;
    constructor(
    /** The server's code (4000-5003), or the client's own: "timeout", "disconnected", ... */
    code, message) {
        super(message);
        this.code = code;
        this.name = new.target.name;
    }
}
/** The server refused a request; `code` is its error code, e.g. 4003 (forbidden). */
export class ServerError extends WeftError {
    constructor(code, message) {
        super(code, message);
    }
}
/** No answer within `requestTimeout` (or no pong within `pongTimeout`). */
export class TimeoutError extends WeftError {
    constructor(message) {
        super("timeout", message);
    }
}
/**
 * The connection ended before the answer came, or there is no connection for a request that
 * cannot wait for one. For a publish in flight, the outcome is unknown.
 */
export class ConnectionError extends WeftError {
    closeCode;
    constructor(message, 
    /** The WebSocket close code, when there was one. */
    closeCode) {
        super("disconnected", message);
        this.closeCode = closeCode;
    }
}
/** The client was closed with `close()`. */
export class ClosedError extends WeftError {
    constructor() {
        super("closed", "the client is closed");
    }
}
/** The offline queue refused or gave up a publish: full ("queue_full") or too old ("expired"). */
export class QueueError extends WeftError {
    constructor(code, message) {
        super(code, message);
    }
}
/** The server sent something this client cannot read (a bug on one side). */
export class ProtocolError extends WeftError {
    constructor(message) {
        super("protocol", message);
    }
}
