// The engine's secure channel on WebCrypto (docs/PROTOCOL.md, "Secure channel"): ephemeral ECDH
// P-256, HKDF-SHA256 keys per direction, then every message sealed — AES-256-GCM (`encrypt`) or
// HMAC-SHA256 (`sign`) — behind an 8-byte sequence number. The same construction as the
// server's Rust (crates/weft-server/src/secure.rs), byte for byte.
//
// Its own entry point (`weft-client/secure`), so applications that do not use it do not ship
// it: `new WeftClient(url, { secure: secure("encrypt", { serverKey }) })`.
/**
 * The secure channel for `WeftClient`'s `secure` option. `serverKey`: the server's identity
 * public key (base64, as `weft serve --secure-key` logs it); the handshake must then be signed
 * with it, or the connection is dropped with a `secure` error.
 */
export function secure(mode = "encrypt", options = {}) {
    const pinned = options.serverKey === undefined ? undefined : fromBase64(options.serverKey);
    if (pinned && pinned.length !== 65)
        throw new TypeError("serverKey must be a P-256 public key: 65 bytes in base64");
    return {
        mode,
        async start() {
            const hs = await handshake(mode);
            return {
                key: toBase64(hs.publicKey),
                finish: (reply, session) => hs.finish(fromBase64(String(reply.key)), session, typeof reply.signature === "string" ? fromBase64(reply.signature) : undefined, pinned),
            };
        },
    };
}
const SEQ = 8;
/** WebCrypto's view of our bytes (never a SharedArrayBuffer here). */
const bs = (b) => b;
const utf8 = new TextEncoder();
function subtle() {
    const s = globalThis.crypto?.subtle;
    // Browsers give WebCrypto to secure contexts only (https:, or localhost).
    if (!s)
        throw new Error("the secure channel needs WebCrypto (crypto.subtle): a secure context in browsers, Node 20+");
    return s;
}
function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
        out.set(p, at);
        at += p.length;
    }
    return out;
}
function seqBytes(seq) {
    const b = new Uint8Array(SEQ);
    const v = new DataView(b.buffer);
    v.setUint32(0, Math.floor(seq / 2 ** 32));
    v.setUint32(4, seq >>> 0);
    return b;
}
function nonce(seq) {
    const n = new Uint8Array(12);
    n.set(seqBytes(seq), 4);
    return n;
}
/** What both ends sign and derive keys from: label, mode, session, both public keys. */
function transcript(mode, session, client, server) {
    return concat(utf8.encode(`weft.v1.secure\0${mode}\0${session}\0`), client, server);
}
export function toBase64(b) {
    let s = "";
    for (const c of b)
        s += String.fromCharCode(c);
    return btoa(s);
}
export function fromBase64(s) {
    const bin = atob(s);
    const b = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++)
        b[i] = bin.charCodeAt(i);
    return b;
}
/** One established channel: `seal` what is sent, `open` what is received, each in order. */
export class SecureChannel {
    mode;
    sendKey;
    recvKey;
    sent = 0;
    received = 0;
    constructor(mode, sendKey, recvKey) {
        this.mode = mode;
        this.sendKey = sendKey;
        this.recvKey = recvKey;
    }
    /** @internal */
    static async create(mode, send, recv) {
        const alg = mode === "encrypt" ? { name: "AES-GCM" } : { name: "HMAC", hash: "SHA-256" };
        const uses = mode === "encrypt" ? ["encrypt", "decrypt"] : ["sign", "verify"];
        const [s, r] = await Promise.all([
            subtle().importKey("raw", send, alg, false, uses),
            subtle().importKey("raw", recv, alg, false, uses),
        ]);
        return new SecureChannel(mode, s, r);
    }
    /** The frame for `message`. Calls must be made in send order (the number is taken at once). */
    async seal(message) {
        const seq = this.sent++;
        const head = seqBytes(seq);
        if (this.mode === "encrypt") {
            const ct = await subtle().encrypt({ name: "AES-GCM", iv: bs(nonce(seq)) }, this.sendKey, bs(message));
            return concat(head, new Uint8Array(ct));
        }
        const signed = concat(head, message);
        return concat(signed, new Uint8Array(await subtle().sign("HMAC", this.sendKey, bs(signed))));
    }
    /** The message `frame` carries; throws when it is out of sequence or fails authentication. */
    async open(frame) {
        const tag = this.mode === "encrypt" ? 16 : 32;
        if (frame.length < SEQ + tag)
            throw new Error("sealed frame too short");
        const v = new DataView(frame.buffer, frame.byteOffset, SEQ);
        const seq = v.getUint32(0) * 2 ** 32 + v.getUint32(4);
        if (seq !== this.received)
            throw new Error(`sealed frame out of sequence: ${seq}, expected ${this.received}`);
        this.received++;
        if (this.mode === "encrypt") {
            try {
                const pt = await subtle().decrypt({ name: "AES-GCM", iv: bs(nonce(seq)) }, this.recvKey, bs(frame.subarray(SEQ)));
                return new Uint8Array(pt);
            }
            catch {
                throw new Error("sealed frame failed authentication");
            }
        }
        const signed = frame.subarray(0, frame.length - tag);
        if (!(await subtle().verify("HMAC", this.recvKey, bs(frame.subarray(frame.length - tag)), bs(signed)))) {
            throw new Error("sealed frame failed authentication");
        }
        return signed.slice(SEQ);
    }
}
export async function handshake(mode) {
    const s = subtle();
    const pair = (await s.generateKey({ name: "ECDH", namedCurve: "P-256" }, false, ["deriveBits"]));
    const publicKey = new Uint8Array(await s.exportKey("raw", pair.publicKey));
    return {
        publicKey,
        async finish(serverKey, session, signature, pinned) {
            const t = transcript(mode, session, publicKey, serverKey);
            if (pinned) {
                if (!signature)
                    throw new Error("the server did not sign the handshake (identity key pinned)");
                const id = await s
                    .importKey("raw", bs(pinned), { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"])
                    .catch(() => Promise.reject(new Error("the pinned server key is not a P-256 public key")));
                if (!(await s.verify({ name: "ECDSA", hash: "SHA-256" }, id, bs(signature), bs(t)))) {
                    throw new Error("the handshake's signature does not match the pinned server key");
                }
            }
            const peer = await s.importKey("raw", bs(serverKey), { name: "ECDH", namedCurve: "P-256" }, false, []);
            const shared = await s.deriveBits({ name: "ECDH", public: peer }, pair.privateKey, 256);
            const ikm = await s.importKey("raw", shared, "HKDF", false, ["deriveBits"]);
            const key = (dir) => s.deriveBits({ name: "HKDF", hash: "SHA-256", salt: bs(t), info: bs(utf8.encode(`weft.v1 ${mode} ${dir}`)) }, ikm, 256);
            const [c2s, s2c] = await Promise.all([key("c2s"), key("s2c")]);
            return SecureChannel.create(mode, c2s, s2c);
        },
    };
}
