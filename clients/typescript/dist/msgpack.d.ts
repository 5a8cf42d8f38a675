/** Encodes a JSON-compatible value. `undefined` in an object is skipped, as JSON does. */
export declare function encode(value: unknown): Uint8Array;
/** Decodes one MessagePack value that fills `bytes` exactly; throws on anything else. */
export declare function decode(bytes: Uint8Array): unknown;
