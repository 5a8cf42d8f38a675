export type SecureMode = "encrypt" | "sign";
/** What `WeftClient`'s `secure` option takes: made by {@link secure}. */
export interface SecureOption {
    readonly mode: SecureMode;
    /** A fresh handshake for one connection: the key to send, and how to finish it. */
    start(): Promise<{
        key: string;
        finish(reply: Record<string, unknown>, session: string): Promise<SealingChannel>;
    }>;
}
/** An established channel, as the client uses it. */
export interface SealingChannel {
    readonly mode: SecureMode;
    seal(message: Uint8Array): Promise<Uint8Array>;
    open(frame: Uint8Array): Promise<Uint8Array>;
}
/**
 * The secure channel for `WeftClient`'s `secure` option. `serverKey`: the server's identity
 * public key (base64, as `weft serve --secure-key` logs it); the handshake must then be signed
 * with it, or the connection is dropped with a `secure` error.
 */
export declare function secure(mode?: SecureMode, options?: {
    serverKey?: string;
}): SecureOption;
export declare function toBase64(b: Uint8Array): string;
export declare function fromBase64(s: string): Uint8Array;
/** One established channel: `seal` what is sent, `open` what is received, each in order. */
export declare class SecureChannel implements SealingChannel {
    readonly mode: SecureMode;
    private readonly sendKey;
    private readonly recvKey;
    private sent;
    private received;
    private constructor();
    /** @internal */
    static create(mode: SecureMode, send: ArrayBuffer, recv: ArrayBuffer): Promise<SecureChannel>;
    /** The frame for `message`. Calls must be made in send order (the number is taken at once). */
    seal(message: Uint8Array): Promise<Uint8Array>;
    /** The message `frame` carries; throws when it is out of sequence or fails authentication. */
    open(frame: Uint8Array): Promise<Uint8Array>;
}
/** The client's half of a handshake: its ephemeral key, sent in `secure`, and `finish`. */
export interface Handshake {
    publicKey: Uint8Array;
    finish(serverKey: Uint8Array, session: string, signature?: Uint8Array, pinned?: Uint8Array): Promise<SecureChannel>;
}
export declare function handshake(mode: SecureMode): Promise<Handshake>;
