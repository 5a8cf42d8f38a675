// MessagePack for the JSON data model, which is all the weft protocol carries (docs/PROTOCOL.md):
// nil, booleans, numbers, strings, arrays and maps with string keys. A `bin` value decodes to an
// array of byte values, as the server treats it. Small on purpose: a general library would cost
// more than the whole client.

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

/** Encodes a JSON-compatible value. `undefined` in an object is skipped, as JSON does. */
export function encode(value: unknown): Uint8Array {
  const w = new Writer();
  w.value(value, 0);
  return w.bytes();
}

class Writer {
  private buf = new Uint8Array(256);
  private view = new DataView(this.buf.buffer);
  private n = 0;

  bytes(): Uint8Array {
    return this.buf.subarray(0, this.n);
  }

  private room(k: number): void {
    if (this.n + k <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.n + k));
    next.set(this.buf.subarray(0, this.n));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  private u8(b: number): void {
    this.room(1);
    this.buf[this.n++] = b;
  }

  private head(b: number, len: number, bits: 8 | 16 | 32): void {
    this.room(5);
    this.buf[this.n++] = b;
    if (bits === 8) this.buf[this.n++] = len;
    else if (bits === 16) (this.view.setUint16(this.n, len), (this.n += 2));
    else (this.view.setUint32(this.n, len), (this.n += 4));
  }

  value(v: unknown, depth: number): void {
    if (depth > 512) throw new RangeError("msgpack: nested too deeply");
    if (v === null || v === undefined) return this.u8(0xc0);
    switch (typeof v) {
      case "boolean":
        return this.u8(v ? 0xc3 : 0xc2);
      case "number":
        return this.number(v);
      case "string":
        return this.string(v);
      case "bigint":
        return this.number(Number(v));
      case "object":
        if (Array.isArray(v)) {
          const len = v.length;
          if (len < 16) this.u8(0x90 | len);
          else if (len < 0x10000) this.head(0xdc, len, 16);
          else this.head(0xdd, len, 32);
          for (const x of v) this.value(x, depth + 1);
          return;
        }
        if (typeof (v as { toJSON?: unknown }).toJSON === "function") {
          return this.value((v as { toJSON(): unknown }).toJSON(), depth + 1);
        }
        {
          const entries = Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined);
          const len = entries.length;
          if (len < 16) this.u8(0x80 | len);
          else if (len < 0x10000) this.head(0xde, len, 16);
          else this.head(0xdf, len, 32);
          for (const [k, x] of entries) {
            this.string(k);
            this.value(x, depth + 1);
          }
        }
        return;
      default:
        throw new TypeError(`msgpack: cannot encode a ${typeof v}`);
    }
  }

  private number(v: number): void {
    if (Number.isInteger(v) && Number.isSafeInteger(v)) {
      if (v >= 0) {
        if (v < 0x80) return this.u8(v);
        if (v < 0x100) return this.head(0xcc, v, 8);
        if (v < 0x10000) return this.head(0xcd, v, 16);
        if (v < 0x100000000) return this.head(0xce, v, 32);
        this.room(9);
        this.buf[this.n++] = 0xcf;
        this.view.setBigUint64(this.n, BigInt(v));
        this.n += 8;
        return;
      }
      if (v >= -32) return this.u8(v & 0xff);
      if (v >= -0x80) return (this.u8(0xd0), this.u8(v & 0xff));
      this.room(9);
      if (v >= -0x8000) return ((this.buf[this.n++] = 0xd1), this.view.setInt16(this.n, v), void (this.n += 2));
      if (v >= -0x80000000) return ((this.buf[this.n++] = 0xd2), this.view.setInt32(this.n, v), void (this.n += 4));
      this.buf[this.n++] = 0xd3;
      this.view.setBigInt64(this.n, BigInt(v));
      this.n += 8;
      return;
    }
    if (!Number.isFinite(v)) return this.u8(0xc0); // as JSON.stringify: NaN and Infinity become null
    this.room(9);
    this.buf[this.n++] = 0xcb;
    this.view.setFloat64(this.n, v);
    this.n += 8;
  }

  private string(s: string): void {
    const b = enc.encode(s);
    const len = b.length;
    if (len < 32) this.u8(0xa0 | len);
    else if (len < 0x100) this.head(0xd9, len, 8);
    else if (len < 0x10000) this.head(0xda, len, 16);
    else this.head(0xdb, len, 32);
    this.room(len);
    this.buf.set(b, this.n);
    this.n += len;
  }
}

/** Decodes one MessagePack value that fills `bytes` exactly; throws on anything else. */
export function decode(bytes: Uint8Array): unknown {
  const r = new Reader(bytes);
  const v = r.value(0);
  if (r.pos !== bytes.length) throw new RangeError("msgpack: trailing bytes");
  return v;
}

class Reader {
  pos = 0;
  private readonly view: DataView;

  constructor(private readonly b: Uint8Array) {
    this.view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  }

  private need(k: number): number {
    const at = this.pos;
    if (at + k > this.b.length) throw new RangeError("msgpack: truncated");
    this.pos += k;
    return at;
  }

  value(depth: number): unknown {
    if (depth > 512) throw new RangeError("msgpack: nested too deeply");
    const t = this.b[this.need(1)]!;
    if (t < 0x80) return t;
    if (t < 0x90) return this.map(t & 0x0f, depth);
    if (t < 0xa0) return this.array(t & 0x0f, depth);
    if (t < 0xc0) return this.str(t & 0x1f);
    if (t >= 0xe0) return t - 0x100;
    const v = this.view;
    switch (t) {
      case 0xc0:
        return null;
      case 0xc2:
        return false;
      case 0xc3:
        return true;
      case 0xc4:
        return this.bin(this.b[this.need(1)]!);
      case 0xc5:
        return this.bin(v.getUint16(this.need(2)));
      case 0xc6:
        return this.bin(v.getUint32(this.need(4)));
      case 0xca:
        return v.getFloat32(this.need(4));
      case 0xcb:
        return v.getFloat64(this.need(8));
      case 0xcc:
        return this.b[this.need(1)]!;
      case 0xcd:
        return v.getUint16(this.need(2));
      case 0xce:
        return v.getUint32(this.need(4));
      case 0xcf:
        return Number(v.getBigUint64(this.need(8)));
      case 0xd0:
        return v.getInt8(this.need(1));
      case 0xd1:
        return v.getInt16(this.need(2));
      case 0xd2:
        return v.getInt32(this.need(4));
      case 0xd3:
        return Number(v.getBigInt64(this.need(8)));
      case 0xd9:
        return this.str(this.b[this.need(1)]!);
      case 0xda:
        return this.str(v.getUint16(this.need(2)));
      case 0xdb:
        return this.str(v.getUint32(this.need(4)));
      case 0xdc:
        return this.array(v.getUint16(this.need(2)), depth);
      case 0xdd:
        return this.array(v.getUint32(this.need(4)), depth);
      case 0xde:
        return this.map(v.getUint16(this.need(2)), depth);
      case 0xdf:
        return this.map(v.getUint32(this.need(4)), depth);
      default:
        throw new RangeError(`msgpack: type 0x${t.toString(16)} is outside the JSON data model`);
    }
  }

  private str(len: number): string {
    const at = this.need(len);
    return dec.decode(this.b.subarray(at, at + len));
  }

  private bin(len: number): number[] {
    const at = this.need(len);
    return Array.from(this.b.subarray(at, at + len));
  }

  private array(len: number, depth: number): unknown[] {
    // Each element takes at least one byte: a length beyond what is left is a lie, refused
    // before anything is allocated for it.
    if (len > this.b.length - this.pos) throw new RangeError("msgpack: truncated");
    const out = new Array<unknown>(len);
    for (let i = 0; i < len; i++) out[i] = this.value(depth + 1);
    return out;
  }

  private map(len: number, depth: number): Record<string, unknown> {
    if (len * 2 > this.b.length - this.pos) throw new RangeError("msgpack: truncated");
    const out: Record<string, unknown> = {};
    for (let i = 0; i < len; i++) {
      const k = this.value(depth + 1);
      if (typeof k !== "string") throw new TypeError("msgpack: a map key that is not a string");
      const x = this.value(depth + 1);
      if (k === "__proto__") Object.defineProperty(out, k, { value: x, enumerable: true, writable: true, configurable: true });
      else out[k] = x;
    }
    return out;
  }
}
