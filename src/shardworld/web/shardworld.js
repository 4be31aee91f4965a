// shardworld browser client SDK: player protocol v1 (docs/protocol.md, docs/snapshot-format.md).
//
// One ES module, no build step, no dependencies. The codec part (msgpack, message
// encode/decode, snapshot payloads, the mirror, field blobs) does no I/O, so it runs
// unchanged in Node for tests; `connect` and `Player` add the browser WebSocket on top.
//
// 64-bit integers (entity ids, player ids, ping nonces) are always BigInt, whatever their
// value, so one id has one type everywhere (`player.entityId === entity.id`, Map keys).
// Codec objects use the field names of docs/protocol.md verbatim (`entity_id`, `base_qx`);
// the Player API is camelCase.

// --- constants ------------------------------------------------------------------------

export const PROTOCOL_VERSION = 1;
export const MAX_CUSTOM_BODY = 16 * 1024;
export const MAX_KIND_LEN = 64;
export const MAX_HELLO_STR = 1024;
export const MAX_BODY_DEPTH = 32;
export const MAX_CLIENT_MESSAGE = 4096;
export const MAX_SERVER_MESSAGE = 16 * 1024 * 1024;

export const MsgType = Object.freeze({
  HELLO: 1,
  WELCOME: 2,
  INPUT: 3,
  SNAPSHOT: 4,
  MESSAGE: 5,
  PING: 6,
  PONG: 7,
  ERROR: 8,
  KICK: 9,
});
const TYPE_NAME = Object.freeze(Object.fromEntries(Object.entries(MsgType).map(([k, v]) => [v, k])));

export const ErrorCode = Object.freeze({
  MALFORMED: 1,
  UNKNOWN_TYPE: 2,
  BAD_FIELD: 3,
  TOO_LARGE: 4,
  RATE_LIMITED: 5,
  UNSUPPORTED_VERSION: 6,
  AUTH_FAILED: 7,
  NOT_JOINED: 8,
  ALREADY_JOINED: 9,
  OUT_OF_ORDER: 10,
  FROM_THE_FUTURE: 11,
  TEXT_FRAME: 12,
  SLOW_READER: 13,
  RESUME_FAILED: 14,
  SERVER_FULL: 15,
  SHUTTING_DOWN: 16,
  INTERNAL: 17,
  ABUSE: 18,
});

export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  UNSUPPORTED_DATA: 1003,
  POLICY: 1008,
  TOO_BIG: 1009,
  INTERNAL: 1011,
  AUTH_FAILED: 4001,
  UNSUPPORTED_VERSION: 4002,
  ABUSE: 4003,
  SLOW_READER: 4004,
  HANDSHAKE_TIMEOUT: 4005,
  KICKED: 4006,
});

/** The name of an error code, or `UNKNOWN(<code>)` for codes this SDK does not know. */
export function errorName(code) {
  for (const [k, v] of Object.entries(ErrorCode)) if (v === code) return k;
  return `UNKNOWN(${code})`;
}

/** Bytes that are not a valid message; `code` is the ERROR code a server would answer. */
export class ProtocolError extends Error {
  constructor(code, text) {
    super(`${errorName(code)}: ${text}`);
    this.name = "ProtocolError";
    this.code = code;
    this.text = text;
  }
}

// --- msgpack ----------------------------------------------------------------------------

/**
 * A float that must travel as a msgpack float (JavaScript numbers do not tell 1.0 from 1).
 * The decoder returns floats wrapped in it internally so that integer fields can refuse
 * them; `unpack` unwraps them. Pass one in a MESSAGE body to force float 64.
 */
export class Float {
  constructor(value) {
    this.value = Number(value);
  }
}

/** A msgpack extension value (never valid in protocol v1; decoded so it can be refused). */
export class Ext {
  constructor(type, data) {
    this.type = type;
    this.data = data;
  }
}

const U32 = 0xffffffff;
const U64 = 0xffffffffffffffffn;
const I64_MIN = -(2n ** 63n);
const F32_MAX = 3.4028234663852886e38;
const MAX_NESTING = 512;
const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function malformed(text) {
  return new ProtocolError(ErrorCode.MALFORMED, text);
}

class Reader {
  constructor(bytes) {
    this.b = bytes;
    this.v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.at = 0;
  }
  need(n) {
    if (this.at + n > this.b.length) throw malformed("truncated msgpack");
    const at = this.at;
    this.at += n;
    return at;
  }
  u8() {
    return this.b[this.need(1)];
  }
  u16() {
    return this.v.getUint16(this.need(2));
  }
  u32() {
    return this.v.getUint32(this.need(4));
  }
  bytes(n) {
    const at = this.need(n);
    return this.b.slice(at, at + n);
  }
  str(n) {
    const at = this.need(n);
    try {
      return utf8Decoder.decode(this.b.subarray(at, at + n));
    } catch {
      throw malformed("invalid UTF-8 in a string");
    }
  }
  // Every element takes at least one byte: a count beyond what is left is a lie.
  count(n) {
    if (n > this.b.length - this.at) throw malformed("truncated msgpack");
    return n;
  }
}

function intOut(big) {
  return big >= -9007199254740991n && big <= 9007199254740991n ? Number(big) : big;
}

function readValue(r, depth) {
  if (depth > MAX_NESTING) throw malformed("nested too deeply");
  const t = r.u8();
  if (t <= 0x7f) return t;
  if (t >= 0xe0) return t - 0x100;
  if (t >= 0xa0 && t <= 0xbf) return r.str(t & 0x1f);
  if (t >= 0x90 && t <= 0x9f) return readArray(r, t & 0x0f, depth);
  if (t >= 0x80 && t <= 0x8f) return readMap(r, t & 0x0f, depth);
  switch (t) {
    case 0xc0:
      return null;
    case 0xc2:
      return false;
    case 0xc3:
      return true;
    case 0xc4:
      return r.bytes(r.u8());
    case 0xc5:
      return r.bytes(r.u16());
    case 0xc6:
      return r.bytes(r.u32());
    case 0xc7:
      return readExt(r, r.u8());
    case 0xc8:
      return readExt(r, r.u16());
    case 0xc9:
      return readExt(r, r.u32());
    case 0xca:
      return new Float(r.v.getFloat32(r.need(4)));
    case 0xcb:
      return new Float(r.v.getFloat64(r.need(8)));
    case 0xcc:
      return r.u8();
    case 0xcd:
      return r.u16();
    case 0xce:
      return r.u32();
    case 0xcf:
      return intOut(r.v.getBigUint64(r.need(8)));
    case 0xd0:
      return r.v.getInt8(r.need(1));
    case 0xd1:
      return r.v.getInt16(r.need(2));
    case 0xd2:
      return r.v.getInt32(r.need(4));
    case 0xd3:
      return intOut(r.v.getBigInt64(r.need(8)));
    case 0xd4:
      return readExt(r, 1);
    case 0xd5:
      return readExt(r, 2);
    case 0xd6:
      return readExt(r, 4);
    case 0xd7:
      return readExt(r, 8);
    case 0xd8:
      return readExt(r, 16);
    case 0xd9:
      return r.str(r.u8());
    case 0xda:
      return r.str(r.u16());
    case 0xdb:
      return r.str(r.u32());
    case 0xdc:
      return readArray(r, r.u16(), depth);
    case 0xdd:
      return readArray(r, r.u32(), depth);
    case 0xde:
      return readMap(r, r.u16(), depth);
    case 0xdf:
      return readMap(r, r.u32(), depth);
    default:
      throw malformed(`reserved msgpack byte 0x${t.toString(16)}`);
  }
}

function readExt(r, n) {
  const type = r.v.getInt8(r.need(1));
  return new Ext(type, r.bytes(n));
}

function readArray(r, n, depth) {
  r.count(n);
  const out = new Array(n);
  for (let i = 0; i < n; i++) out[i] = readValue(r, depth + 1);
  return out;
}

function readMap(r, n, depth) {
  r.count(n);
  const out = {};
  for (let i = 0; i < n; i++) {
    const k = readValue(r, depth + 1);
    if (typeof k !== "string") throw malformed("map keys must be strings");
    // defineProperty: a "__proto__" key must stay a plain key, not replace the prototype.
    Object.defineProperty(out, k, {
      value: readValue(r, depth + 1),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return out;
}

function unwrap(v) {
  if (v instanceof Float) return v.value;
  if (Array.isArray(v)) return v.map(unwrap);
  if (v !== null && typeof v === "object" && !(v instanceof Uint8Array) && !(v instanceof Ext)) {
    const out = {};
    for (const k of Object.keys(v)) {
      Object.defineProperty(out, k, {
        value: unwrap(v[k]),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
    return out;
  }
  return v;
}

function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError("expected bytes (Uint8Array, ArrayBuffer or a typed array)");
}

function unpackRaw(data) {
  const r = new Reader(toBytes(data));
  if (!r.b.length) throw malformed("empty message");
  const v = readValue(r, 0);
  if (r.at !== r.b.length) throw malformed("trailing bytes after the message");
  return v;
}

/**
 * Decode one msgpack value. Integers within ±(2^53 − 1) are numbers, larger ones BigInt;
 * floats are numbers; bin is Uint8Array; maps are plain objects (string keys only).
 * Throws ProtocolError(MALFORMED) on bad input.
 */
export function unpack(data) {
  return unwrap(unpackRaw(data));
}

class Writer {
  constructor() {
    this.buf = new Uint8Array(64);
    this.view = new DataView(this.buf.buffer);
    this.len = 0;
  }
  room(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const b = new Uint8Array(size);
    b.set(this.buf.subarray(0, this.len));
    this.buf = b;
    this.view = new DataView(b.buffer);
  }
  u8(x) {
    this.room(1);
    this.buf[this.len++] = x;
  }
  head(tag, n, bytes) {
    this.room(1 + bytes);
    this.buf[this.len++] = tag;
    if (bytes === 1) this.view.setUint8(this.len, n);
    else if (bytes === 2) this.view.setUint16(this.len, n);
    else if (bytes === 4) this.view.setUint32(this.len, n);
    this.len += bytes;
  }
  raw(bytes) {
    this.room(bytes.length);
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }
  done() {
    return this.buf.slice(0, this.len);
  }
}

function writeInt(w, x) {
  // x: a safe-integer number or a BigInt; shortest form, unsigned types for x >= 0.
  if (typeof x === "bigint") {
    if (x < I64_MIN || x > U64) throw new RangeError(`integer ${x} does not fit msgpack`);
    if (x > 0xffffffffn || x < -0x80000000n) {
      w.room(9);
      w.buf[w.len++] = x >= 0n ? 0xcf : 0xd3;
      if (x >= 0n) w.view.setBigUint64(w.len, x);
      else w.view.setBigInt64(w.len, x);
      w.len += 8;
      return;
    }
    x = Number(x);
  }
  if (x > U32 || x < -0x80000000) return writeInt(w, BigInt(x));
  if (x >= 0) {
    if (x <= 0x7f) w.u8(x);
    else if (x <= 0xff) w.head(0xcc, x, 1);
    else if (x <= 0xffff) w.head(0xcd, x, 2);
    else w.head(0xce, x, 4);
  } else if (x >= -32) {
    w.u8(x + 0x100);
  } else {
    w.room(5);
    if (x >= -0x80) {
      w.buf[w.len++] = 0xd0;
      w.view.setInt8(w.len, x);
      w.len += 1;
    } else if (x >= -0x8000) {
      w.buf[w.len++] = 0xd1;
      w.view.setInt16(w.len, x);
      w.len += 2;
    } else {
      w.buf[w.len++] = 0xd2;
      w.view.setInt32(w.len, x);
      w.len += 4;
    }
  }
}

function writeFloat(w, x) {
  w.room(9);
  w.buf[w.len++] = 0xcb;
  w.view.setFloat64(w.len, x);
  w.len += 8;
}

function writeValue(w, v, depth) {
  if (depth > MAX_NESTING) throw new RangeError("nested too deeply");
  if (v === null || v === undefined) return w.u8(0xc0);
  if (v === true) return w.u8(0xc3);
  if (v === false) return w.u8(0xc2);
  if (typeof v === "bigint") return writeInt(w, v);
  if (typeof v === "number") {
    if (Number.isSafeInteger(v)) return writeInt(w, v);
    return writeFloat(w, v);
  }
  if (v instanceof Float) return writeFloat(w, v.value);
  if (typeof v === "string") {
    const b = utf8Encoder.encode(v);
    const n = b.length;
    if (n < 32) w.u8(0xa0 | n);
    else if (n <= 0xff) w.head(0xd9, n, 1);
    else if (n <= 0xffff) w.head(0xda, n, 2);
    else w.head(0xdb, n, 4);
    return w.raw(b);
  }
  if (v instanceof ArrayBuffer || ArrayBuffer.isView(v)) {
    const b = toBytes(v);
    const n = b.length;
    if (n <= 0xff) w.head(0xc4, n, 1);
    else if (n <= 0xffff) w.head(0xc5, n, 2);
    else w.head(0xc6, n, 4);
    return w.raw(b);
  }
  if (Array.isArray(v)) {
    const n = v.length;
    if (n < 16) w.u8(0x90 | n);
    else if (n <= 0xffff) w.head(0xdc, n, 2);
    else w.head(0xdd, n, 4);
    for (const x of v) writeValue(w, x, depth + 1);
    return;
  }
  if (v instanceof Ext) throw new TypeError("extension types are not part of protocol v1");
  if (typeof v === "object") {
    const entries = v instanceof Map ? [...v.entries()] : Object.entries(v);
    const n = entries.length;
    if (n < 16) w.u8(0x80 | n);
    else if (n <= 0xffff) w.head(0xde, n, 2);
    else w.head(0xdf, n, 4);
    for (const [k, x] of entries) {
      if (typeof k !== "string") throw new TypeError("map keys must be strings");
      writeValue(w, k, depth + 1);
      writeValue(w, x, depth + 1);
    }
    return;
  }
  throw new TypeError(`cannot encode a ${typeof v} in msgpack`);
}

/**
 * Encode one value as msgpack, shortest forms: integer-valued numbers (and BigInt) as ints,
 * other numbers and `Float` as float 64, strings as str, Uint8Array/ArrayBuffer as bin,
 * arrays, plain objects and Maps with string keys as maps, null/undefined as nil.
 */
export function pack(value) {
  const w = new Writer();
  writeValue(w, value, 0);
  return w.done();
}

// --- field rules --------------------------------------------------------------------------

function bad(text) {
  throw new ProtocolError(ErrorCode.BAD_FIELD, text);
}

function kindOf(v) {
  if (v === null) return "nil";
  if (v instanceof Float) return "float";
  if (v instanceof Uint8Array) return "bin";
  if (v instanceof Ext) return "ext";
  if (Array.isArray(v)) return "array";
  return typeof v;
}

function isInt(v) {
  return typeof v === "bigint" || (typeof v === "number" && Number.isInteger(v));
}

function fieldInt(v, what, lo, hi) {
  if (!isInt(v)) bad(`${what}: expected an integer, got ${kindOf(v)}`);
  const b = BigInt(v);
  if (b < BigInt(lo) || b > BigInt(hi)) bad(`${what}: ${v} is outside ${lo}..${hi}`);
  return b;
}

const num = (b) => Number(b);

function fieldFloat(v, what, limit = Infinity) {
  let x;
  if (v instanceof Float) x = v.value;
  else if (isInt(v)) x = Number(v);
  else bad(`${what}: expected a number, got ${kindOf(v)}`);
  if (!Number.isFinite(x) || Math.abs(x) > limit) {
    bad(`${what}: ${x} is not a finite number of magnitude <= ${limit}`);
  }
  return x;
}

function utf8Length(s) {
  return utf8Encoder.encode(s).length;
}

function fieldStr(v, what, maxBytes = null, minBytes = 0) {
  if (typeof v !== "string") bad(`${what}: expected a string, got ${kindOf(v)}`);
  if (maxBytes !== null || minBytes) {
    const n = utf8Length(v);
    if (n < minBytes || (maxBytes !== null && n > maxBytes)) {
      bad(`${what}: ${n} UTF-8 bytes, allowed ${minBytes}..${maxBytes}`);
    }
  }
  return v;
}

function fieldBool(v, what) {
  if (typeof v !== "boolean") bad(`${what}: expected a boolean, got ${kindOf(v)}`);
  return v;
}

function fieldBin(v, what) {
  if (!(v instanceof Uint8Array)) bad(`${what}: expected bin, got ${kindOf(v)}`);
  return v;
}

function fieldBody(v, what) {
  const stack = [[v, 0]];
  while (stack.length) {
    const [x, depth] = stack.pop();
    if (x === null || typeof x === "boolean" || typeof x === "string") continue;
    if (x instanceof Float || x instanceof Uint8Array) continue;
    if (typeof x === "number") {
      if (!Number.isInteger(x)) continue;
      if (!Number.isSafeInteger(x)) bad(`${what}: integer ${x} is not exact; use a BigInt`);
      continue;
    }
    if (typeof x === "bigint") {
      if (x < I64_MIN || x > U64) bad(`${what}: integer ${x} does not fit msgpack`);
      continue;
    }
    if (Array.isArray(x) || (typeof x === "object" && !(x instanceof Ext))) {
      if (depth >= MAX_BODY_DEPTH) bad(`${what}: nested deeper than ${MAX_BODY_DEPTH}`);
      const values = Array.isArray(x) ? x : x instanceof Map ? [...x.values()] : Object.values(x);
      if (x instanceof Map) {
        for (const k of x.keys()) if (typeof k !== "string") bad(`${what}: map keys must be strings`);
      }
      for (const item of values) stack.push([item, depth + 1]);
      continue;
    }
    bad(`${what}: ${kindOf(x)} is not allowed in a body`);
  }
  return v;
}

const DTYPE_SIZE = Object.freeze({
  "|b1": 1,
  "|u1": 1,
  "|i1": 1,
  "<u2": 2,
  "<i2": 2,
  "<f2": 2,
  "<u4": 4,
  "<i4": 4,
  "<f4": 4,
  "<u8": 8,
  "<i8": 8,
  "<f8": 8,
});
/** The dtype strings a v1 field description may carry. */
export const FIELD_DTYPES = Object.freeze(Object.keys(DTYPE_SIZE));

function fieldDescription(v, what) {
  if (v === null || typeof v !== "object" || Array.isArray(v) || v instanceof Uint8Array) {
    bad(`${what}: a field description is a map, got ${kindOf(v)}`);
  }
  fieldStr(v.name, `${what}.name`, null, 1);
  const dtype = fieldStr(v.dtype, `${what}.dtype`);
  if (!Object.hasOwn(DTYPE_SIZE, dtype)) bad(`${what}.dtype: ${dtype} is not a v1 dtype`);
  const shape = v.shape;
  if (!Array.isArray(shape) || shape.length > 8) {
    bad(`${what}.shape: expected an array of at most 8 sizes`);
  }
  for (const s of shape) fieldInt(s, `${what}.shape`, 1, 0xffff);
  fieldStr(v.scope, `${what}.scope`);
  return unwrap(v);
}

function fieldsArray(v, what) {
  if (!Array.isArray(v)) bad(`${what}: expected an array, got ${kindOf(v)}`);
  return v.map((f, i) => fieldDescription(f, `${what}[${i}]`));
}

function arity(name, items, low, high) {
  if (items.length < low || items.length > high) {
    const want = low === high ? `${low}` : `${low}..${high}`;
    bad(`${name} takes ${want} fields, got ${items.length}`);
  }
}

// --- message parsers (fields after the type, as the decoder returned them) -------------

const I64_MIN_N = I64_MIN;

function parseHello(f) {
  if (!f.length) bad("Hello takes 1..4 fields, got 0");
  const version = fieldInt(f[0], "Hello.version", I64_MIN_N, U64);
  if (version !== BigInt(PROTOCOL_VERSION)) {
    // Only the version is common to every protocol version: the rest is not ours to read.
    return { type: "HELLO", version: intOut(version), token: "", resume: "", client: "" };
  }
  arity("Hello", f, 1, 4);
  const names = ["token", "resume", "client"];
  const out = { type: "HELLO", version: 1, token: "", resume: "", client: "" };
  f.slice(1).forEach((v, i) => {
    out[names[i]] = fieldStr(v, `Hello.${names[i]}`, MAX_HELLO_STR);
  });
  return out;
}

function parseInput(f) {
  arity("Input", f, 3, 4);
  return {
    type: "INPUT",
    seq: num(fieldInt(f[0], "Input.seq", 0, U32)),
    ix: fieldFloat(f[1], "Input.ix", F32_MAX),
    iy: fieldFloat(f[2], "Input.iy", F32_MAX),
    actions: f.length > 3 ? num(fieldInt(f[3], "Input.actions", 0, U32)) : 0,
  };
}

function parseClientMessage(f) {
  arity("Message", f, 1, 2);
  const kind = fieldStr(f[0], "Message.kind", MAX_KIND_LEN, 1);
  const body = f.length > 1 ? unwrap(fieldBody(f[1], "Message.body")) : null;
  return { type: "MESSAGE", kind, body };
}

function parseServerMessage(f) {
  arity("Message", f, 2, 2);
  const kind = fieldStr(f[0], "Message.kind", MAX_KIND_LEN, 1);
  return { type: "MESSAGE", kind, body: unwrap(fieldBody(f[1], "Message.body")) };
}

function parsePing(f) {
  arity("Ping", f, 1, 2);
  return {
    type: "PING",
    nonce: fieldInt(f[0], "Ping.nonce", 0, U64),
    client_time: f.length > 1 ? fieldFloat(f[1], "Ping.client_time") : 0.0,
  };
}

function parseWelcome(f) {
  arity("Welcome", f, 13, 13);
  const world = f[3];
  if (!Array.isArray(world) || world.length !== 4) bad("Welcome.world: expected an array of 4 numbers");
  const tick_hz = fieldFloat(f[4], "Welcome.tick_hz");
  const snapshot_hz = fieldFloat(f[5], "Welcome.snapshot_hz");
  const pos_quantum = fieldFloat(f[6], "Welcome.pos_quantum");
  if (!(tick_hz > 0 && snapshot_hz > 0 && pos_quantum > 0)) {
    bad("Welcome: tick_hz, snapshot_hz and pos_quantum must be > 0");
  }
  return {
    type: "WELCOME",
    version: num(fieldInt(f[0], "Welcome.version", 0, U32)),
    entity_id: fieldInt(f[1], "Welcome.entity_id", 0, U64),
    player_id: fieldInt(f[2], "Welcome.player_id", 0, U64),
    world: world.map((v) => fieldFloat(v, "Welcome.world")),
    tick_hz,
    snapshot_hz,
    pos_quantum,
    server_time: fieldFloat(f[7], "Welcome.server_time"),
    resume_token: fieldStr(f[8], "Welcome.resume_token", MAX_HELLO_STR),
    resumed: fieldBool(f[9], "Welcome.resumed"),
    pub_fields: fieldsArray(f[10], "Welcome.pub_fields"),
    own_fields: fieldsArray(f[11], "Welcome.own_fields"),
    world_name: fieldStr(f[12], "Welcome.world_name"),
  };
}

function parseSnapshot(f) {
  arity("Snapshot", f, 3, 3);
  return {
    type: "SNAPSHOT",
    tick: num(fieldInt(f[0], "Snapshot.tick", 0, U32)),
    ack: num(fieldInt(f[1], "Snapshot.ack", 0, U32)),
    payload: fieldBin(f[2], "Snapshot.payload"),
  };
}

function parsePong(f) {
  arity("Pong", f, 3, 3);
  return {
    type: "PONG",
    nonce: fieldInt(f[0], "Pong.nonce", 0, U64),
    client_time: fieldFloat(f[1], "Pong.client_time"),
    server_time: fieldFloat(f[2], "Pong.server_time"),
  };
}

function parseError(f) {
  arity("Error", f, 2, 2);
  return { type: "ERROR", code: num(fieldInt(f[0], "Error.code", 0, U32)), text: fieldStr(f[1], "Error.text") };
}

function parseKick(f) {
  arity("Kick", f, 2, 2);
  return { type: "KICK", code: num(fieldInt(f[0], "Kick.code", 0, U32)), reason: fieldStr(f[1], "Kick.reason") };
}

const CLIENT_PARSERS = new Map([
  [MsgType.HELLO, parseHello],
  [MsgType.INPUT, parseInput],
  [MsgType.MESSAGE, parseClientMessage],
  [MsgType.PING, parsePing],
]);
const SERVER_PARSERS = new Map([
  [MsgType.WELCOME, parseWelcome],
  [MsgType.SNAPSHOT, parseSnapshot],
  [MsgType.MESSAGE, parseServerMessage],
  [MsgType.PONG, parsePong],
  [MsgType.ERROR, parseError],
  [MsgType.KICK, parseKick],
]);

function unpackMessage(data, maxSize) {
  if (typeof data === "string") throw new ProtocolError(ErrorCode.TEXT_FRAME, "text frames are not part of the protocol");
  const bytes = toBytes(data);
  if (bytes.length > maxSize) throw new ProtocolError(ErrorCode.TOO_LARGE, `${bytes.length} bytes > ${maxSize}`);
  const obj = unpackRaw(bytes);
  if (!Array.isArray(obj) || !obj.length) throw malformed("a message is a non-empty msgpack array");
  if (!isInt(obj[0])) throw malformed("the first element is the integer type");
  return obj;
}

function decodeWith(parsers, side, data, maxSize) {
  const obj = unpackMessage(data, maxSize);
  const parse = typeof obj[0] === "number" ? parsers.get(obj[0]) : undefined;
  if (!parse) throw new ProtocolError(ErrorCode.UNKNOWN_TYPE, `type ${obj[0]} is not a ${side} message`);
  return parse(obj.slice(1));
}

/**
 * Decode one frame a server sent: `{type: "WELCOME", entity_id, ...}` with the field names
 * of docs/protocol.md; uint64 fields are BigInt, bin is Uint8Array, floats are numbers.
 * Throws ProtocolError (with the code a server would use) for an invalid frame.
 */
export function decodeServer(data, maxSize = MAX_SERVER_MESSAGE) {
  return decodeWith(SERVER_PARSERS, "server", data, maxSize);
}

/** Decode one frame a client sent (what a gateway does; useful for tests and mock servers). */
export function decodeClient(data, maxSize = MAX_CLIENT_MESSAGE) {
  return decodeWith(CLIENT_PARSERS, "client", data, maxSize);
}

const F = (v) => (v instanceof Float ? v : typeof v === "number" || typeof v === "bigint" ? new Float(Number(v)) : v);
const I = (v) => (typeof v === "string" && /^-?[0-9]+$/.test(v) ? BigInt(v) : v);

function fieldsOf(msg) {
  switch (msg.type) {
    case "HELLO":
      return [I(msg.version ?? PROTOCOL_VERSION), msg.token ?? "", msg.resume ?? "", msg.client ?? ""];
    case "INPUT":
      return [I(msg.seq), F(msg.ix), F(msg.iy), I(msg.actions ?? 0)];
    case "PING":
      return [I(msg.nonce), F(msg.client_time ?? 0)];
    case "PONG":
      return [I(msg.nonce), F(msg.client_time), F(msg.server_time)];
    case "ERROR":
      return [I(msg.code), msg.text];
    case "KICK":
      return [I(msg.code), msg.reason];
    case "WELCOME":
      return [
        I(msg.version ?? PROTOCOL_VERSION),
        I(msg.entity_id),
        I(msg.player_id),
        Array.isArray(msg.world) ? msg.world.map(F) : msg.world,
        F(msg.tick_hz),
        F(msg.snapshot_hz),
        F(msg.pos_quantum),
        F(msg.server_time),
        msg.resume_token,
        msg.resumed,
        msg.pub_fields,
        msg.own_fields,
        msg.world_name,
      ];
    default:
      throw new TypeError(`not a protocol message: ${msg && msg.type}`);
  }
}

function checked(parse, fields) {
  try {
    parse(fields);
  } catch (e) {
    if (e instanceof ProtocolError) throw new RangeError(e.text);
    throw e;
  }
}

/**
 * The SNAPSHOT frame for a payload: `94 04 ce <tick> ce <ack>` and a bin 8/16/32 header,
 * exactly as the reference server writes it (tick and ack as their low 32 bits).
 */
export function encodeSnapshot(tick, ack, payload) {
  const p = toBytes(payload);
  const n = p.length;
  const headLen = 12 + (n < 0x100 ? 2 : n < 0x10000 ? 3 : 5);
  const out = new Uint8Array(headLen + n);
  const v = new DataView(out.buffer);
  out[0] = 0x94;
  out[1] = MsgType.SNAPSHOT;
  out[2] = 0xce;
  v.setUint32(3, Number(BigInt(tick) & 0xffffffffn));
  out[7] = 0xce;
  v.setUint32(8, Number(BigInt(ack) & 0xffffffffn));
  if (n < 0x100) {
    out[12] = 0xc4;
    out[13] = n;
  } else if (n < 0x10000) {
    out[12] = 0xc5;
    v.setUint16(13, n);
  } else {
    out[12] = 0xc6;
    v.setUint32(13, n);
  }
  out.set(p, headLen);
  return out;
}

/**
 * The bytes of one WebSocket binary message carrying `msg` (`{type: "INPUT", seq, ix, iy,
 * actions}` and so on, field names as in docs/protocol.md). Float fields are written as
 * float 64, integers in their shortest form, 64-bit fields accept BigInt, safe-integer
 * numbers or decimal strings. Throws RangeError if a field breaks a rule the receiving
 * decoder enforces, TypeError if `msg` is not a message.
 */
export function encode(msg) {
  if (msg === null || typeof msg !== "object") throw new TypeError("not a protocol message");
  if (msg.type === "SNAPSHOT") {
    const tick = I(msg.tick);
    const ack = I(msg.ack);
    const payload = msg.payload instanceof ArrayBuffer || ArrayBuffer.isView(msg.payload) ? toBytes(msg.payload) : msg.payload;
    checked(parseSnapshot, [tick, ack, payload]);
    return encodeSnapshot(tick, ack, payload);
  }
  if (msg.type === "MESSAGE") {
    const body = msg.body === undefined ? null : msg.body;
    checked(parseServerMessage, [msg.kind, body]);
    const bodyBytes = pack(body);
    if (bodyBytes.length > MAX_CUSTOM_BODY) {
      throw new RangeError(`Message.body packs to ${bodyBytes.length} bytes > ${MAX_CUSTOM_BODY}`);
    }
    const kind = pack(msg.kind);
    const out = new Uint8Array(2 + kind.length + bodyBytes.length);
    out[0] = 0x93;
    out[1] = MsgType.MESSAGE;
    out.set(kind, 2);
    out.set(bodyBytes, 2 + kind.length);
    return out;
  }
  const t = MsgType[msg.type];
  const fields = fieldsOf(msg);
  checked(CLIENT_PARSERS.get(t) ?? SERVER_PARSERS.get(t), fields);
  return pack([t, ...fields]);
}

/** The message type's name for a type number (`"WELCOME"`), or undefined. */
export function typeName(t) {
  return TYPE_NAME[t];
}

// --- field blobs ----------------------------------------------------------------------------

/**
 * Offsets of WELCOME field descriptions inside a blob: packed in order, no padding.
 * Returns `[{name, dtype, shape, offset, size}]`; throws RangeError for a bad description.
 */
export function blobLayout(fields) {
  const out = [];
  let at = 0;
  fields.forEach((f, i) => {
    let desc;
    try {
      desc = fieldDescription(f, `field ${i}`);
    } catch (e) {
      if (e instanceof ProtocolError) throw new RangeError(e.text);
      throw e;
    }
    const shape = desc.shape.map(Number);
    const count = shape.reduce((a, b) => a * b, 1);
    const size = DTYPE_SIZE[desc.dtype] * count;
    out.push({ name: desc.name, dtype: desc.dtype, shape, offset: at, size });
    at += size;
  });
  return out;
}

/** The blob's byte width (W or W2) for these field descriptions. */
export function blobWidth(fields) {
  return blobLayout(fields).reduce((a, f) => a + f.size, 0);
}

function halfToNumber(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

const READ_ELEMENT = {
  "|b1": (v, o) => v.getUint8(o) !== 0,
  "|u1": (v, o) => v.getUint8(o),
  "|i1": (v, o) => v.getInt8(o),
  "<u2": (v, o) => v.getUint16(o, true),
  "<i2": (v, o) => v.getInt16(o, true),
  "<f2": (v, o) => halfToNumber(v.getUint16(o, true)),
  "<u4": (v, o) => v.getUint32(o, true),
  "<i4": (v, o) => v.getInt32(o, true),
  "<f4": (v, o) => v.getFloat32(o, true),
  "<u8": (v, o) => v.getBigUint64(o, true),
  "<i8": (v, o) => v.getBigInt64(o, true),
  "<f8": (v, o) => v.getFloat64(o, true),
};

/**
 * Read a blob with a layout from `blobLayout`: `{name: value}`. Scalars are numbers
 * (booleans for `|b1`, BigInt for `<u8`/`<i8`); shaped fields are nested arrays in row-major
 * order. Throws RangeError if the blob is shorter than the layout.
 */
export function decodeBlob(layout, blob) {
  const b = toBytes(blob);
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out = {};
  for (const f of layout) {
    if (f.offset + f.size > b.length) throw new RangeError(`blob of ${b.length} bytes is too short for ${f.name}`);
    const read = READ_ELEMENT[f.dtype];
    const step = DTYPE_SIZE[f.dtype];
    let at = f.offset;
    const build = (dims) => {
      if (!dims.length) {
        const x = read(view, at);
        at += step;
        return x;
      }
      const [n, ...rest] = dims;
      const arr = new Array(n);
      for (let i = 0; i < n; i++) arr[i] = build(rest);
      return arr;
    };
    Object.defineProperty(out, f.name, { value: build(f.shape), enumerable: true, writable: true, configurable: true });
  }
  return out;
}

// --- snapshot payloads ----------------------------------------------------------------------

export const FLAG_RESET = 0x01;
export const FLAG_WIDE = 0x02;
export const HEADER_SIZE = 21;

/** A payload that is not a well-formed snapshot for the given blob widths. */
export class SnapshotDecodeError extends Error {
  constructor(text) {
    super(text);
    this.name = "SnapshotDecodeError";
  }
}

/** A well-formed payload that does not apply to the mirror's current state. */
export class SnapshotMirrorError extends SnapshotDecodeError {
  constructor(text) {
    super(text);
    this.name = "SnapshotMirrorError";
  }
}

/**
 * Parse one snapshot payload (docs/snapshot-format.md). `pubWidth`/`ownWidth` are W and W2.
 * Returns `{flags, reset, wide, tick, base_qx, base_qy, despawns: [handle],
 * spawns: [{handle, id (BigInt), kind, rx, ry, owned, pub, own}], moves: [{handle, rx, ry}],
 * updates: [{handle, owned, pub, own}]}`; `own` is a Uint8Array only when `owned`, else
 * null. Throws SnapshotDecodeError on any malformed payload.
 */
export function decodeSnapshot(payload, pubWidth, ownWidth) {
  if (pubWidth < 0 || ownWidth < 0) throw new RangeError("blob widths must be >= 0");
  const d = toBytes(payload);
  const v = new DataView(d.buffer, d.byteOffset, d.byteLength);
  const need = (at, size, what) => {
    if (at + size > d.length) {
      throw new SnapshotDecodeError(`payload truncated in ${what}: need ${size} bytes at offset ${at}, have ${d.length}`);
    }
  };
  need(0, HEADER_SIZE, "the header");
  const flags = d[0];
  if (flags & ~(FLAG_RESET | FLAG_WIDE)) {
    throw new SnapshotDecodeError(`reserved flag bits set: 0x${flags.toString(16).padStart(2, "0")}`);
  }
  const wide = (flags & FLAG_WIDE) !== 0;
  const hsz = wide ? 2 : 1;
  const handle = (at) => (wide ? v.getUint16(at, true) : d[at]);
  const nDespawn = v.getUint16(13, true);
  const nSpawn = v.getUint16(15, true);
  const nMove = v.getUint16(17, true);
  const nUpdate = v.getUint16(19, true);
  const snap = {
    flags,
    reset: (flags & FLAG_RESET) !== 0,
    wide,
    tick: v.getUint32(1, true),
    base_qx: v.getInt32(5, true),
    base_qy: v.getInt32(9, true),
    despawns: [],
    spawns: [],
    moves: [],
    updates: [],
  };
  let at = HEADER_SIZE;
  need(at, nDespawn * hsz, "despawns");
  for (let i = 0; i < nDespawn; i++, at += hsz) snap.despawns.push(handle(at));
  for (let i = 0; i < nSpawn; i++) {
    need(at, hsz + 15 + pubWidth, "a spawn");
    const h = handle(at);
    at += hsz;
    const id = v.getBigUint64(at, true);
    const kind = v.getUint16(at + 8, true);
    const rx = v.getInt16(at + 10, true);
    const ry = v.getInt16(at + 12, true);
    const owned = d[at + 14];
    at += 15;
    if (owned > 1) throw new SnapshotDecodeError(`spawn owned byte must be 0 or 1, got ${owned}`);
    const pub = d.slice(at, at + pubWidth);
    at += pubWidth;
    let own = null;
    if (owned) {
      need(at, ownWidth, "a spawn's owner fields");
      own = d.slice(at, at + ownWidth);
      at += ownWidth;
    }
    snap.spawns.push({ handle: h, id, kind, rx, ry, owned: owned === 1, pub, own });
  }
  need(at, nMove * (hsz + 4), "moves");
  for (let i = 0; i < nMove; i++, at += hsz + 4) {
    snap.moves.push({ handle: handle(at), rx: v.getInt16(at + hsz, true), ry: v.getInt16(at + hsz + 2, true) });
  }
  for (let i = 0; i < nUpdate; i++) {
    need(at, hsz + 1 + pubWidth, "an update");
    const h = handle(at);
    const owned = d[at + hsz];
    at += hsz + 1;
    if (owned > 1) throw new SnapshotDecodeError(`update owned byte must be 0 or 1, got ${owned}`);
    const pub = d.slice(at, at + pubWidth);
    at += pubWidth;
    let own = null;
    if (owned) {
      need(at, ownWidth, "an update's owner fields");
      own = d.slice(at, at + ownWidth);
      at += ownWidth;
    }
    snap.updates.push({ handle: h, owned: owned === 1, pub, own });
  }
  if (at !== d.length) throw new SnapshotDecodeError(`${d.length - at} trailing bytes after the last section`);
  return snap;
}

/**
 * The client's copy of one observer's visible set, fed only the payloads.
 * `entities` maps handle → `{id (BigInt), kind, qx, qy, pub, own}` with absolute quantised
 * positions (metres = q × pos_quantum); `own` is null unless this player owns the entity.
 * `apply` is all-or-nothing: on any error the mirror keeps its previous state.
 */
export class SnapshotMirror {
  constructor(pubWidth = 0, ownWidth = 0) {
    if (pubWidth < 0 || ownWidth < 0) throw new RangeError("blob widths must be >= 0");
    this.pubWidth = pubWidth;
    this.ownWidth = ownWidth;
    this.entities = new Map();
    this._byId = new Map();
    this.tick = null;
    this.base_qx = 0;
    this.base_qy = 0;
  }

  /** Decode `payload` and apply it; returns the decoded snapshot. */
  apply(payload) {
    const snap = decodeSnapshot(payload, this.pubWidth, this.ownWidth);
    this.applyDecoded(snap);
    return snap;
  }

  /** Apply an already decoded snapshot: reset, despawns, spawns, moves, updates. */
  applyDecoded(snap) {
    const byHandle = snap.reset ? new Map() : new Map(this.entities);
    const byId = snap.reset ? new Map() : new Map(this._byId);
    for (const h of snap.despawns) {
      const gone = byHandle.get(h);
      if (gone === undefined) throw new SnapshotMirrorError(`despawn of unknown handle ${h}`);
      byHandle.delete(h);
      byId.delete(gone.id);
    }
    for (const s of snap.spawns) {
      if (byHandle.has(s.handle)) throw new SnapshotMirrorError(`spawn onto handle ${s.handle}, which is in use`);
      if (byId.has(s.id)) throw new SnapshotMirrorError(`spawn of id ${s.id}, already at handle ${byId.get(s.id)}`);
      byHandle.set(s.handle, {
        id: s.id,
        kind: s.kind,
        qx: snap.base_qx + s.rx,
        qy: snap.base_qy + s.ry,
        pub: s.pub,
        own: s.own,
      });
      byId.set(s.id, s.handle);
    }
    for (const m of snap.moves) {
      const old = byHandle.get(m.handle);
      if (old === undefined) throw new SnapshotMirrorError(`move of unknown handle ${m.handle}`);
      byHandle.set(m.handle, { ...old, qx: snap.base_qx + m.rx, qy: snap.base_qy + m.ry });
    }
    for (const u of snap.updates) {
      const old = byHandle.get(u.handle);
      if (old === undefined) throw new SnapshotMirrorError(`update of unknown handle ${u.handle}`);
      byHandle.set(u.handle, { ...old, pub: u.pub, own: u.own });
    }
    this.entities = byHandle;
    this._byId = byId;
    this.tick = snap.tick;
    this.base_qx = snap.base_qx;
    this.base_qy = snap.base_qy;
  }

  get size() {
    return this.entities.size;
  }

  /** Forget everything (after a reconnect, before the RESET arrives). */
  clear() {
    this.entities = new Map();
    this._byId = new Map();
    this.tick = null;
  }

  /** The handle naming `entityId` (BigInt) for this observer, or null if not visible. */
  handleOf(entityId) {
    return this._byId.get(BigInt(entityId)) ?? null;
  }

  /** The entity with this id, or null if not visible. */
  byId(entityId) {
    const h = this._byId.get(BigInt(entityId));
    return h === undefined ? null : this.entities.get(h);
  }

  /** The ids of every visible entity. */
  ids() {
    return new Set(this._byId.keys());
  }
}

// --- the player (browser WebSocket I/O) -----------------------------------------------------

/** Failure to join: `code` is the ERROR/KICK code if the server sent one, `closeCode` the close. */
export class HandshakeError extends Error {
  constructor(text, { code = null, closeCode = null } = {}) {
    super(text);
    this.name = "HandshakeError";
    this.code = code;
    this.closeCode = closeCode;
  }
}

/** The player's connection is closed. */
export class PlayerClosed extends Error {
  constructor(text) {
    super(text);
    this.name = "PlayerClosed";
  }
}

const nowSeconds = () => (globalThis.performance ? performance.now() : Date.now()) / 1000;

// Bounded queue feeding one async iterator; the oldest entries go when it overflows, so a
// consumer that falls behind never makes the socket reader a slow reader.
class DropOldest {
  constructor(max) {
    this.max = max;
    this.items = [];
    this.waiters = [];
    this.closed = false;
    this.dropped = 0;
  }
  put(x) {
    if (this.closed) return;
    const w = this.waiters.shift();
    if (w) return w({ value: x, done: false });
    if (this.items.length >= this.max) {
      this.items.shift();
      this.dropped++;
    }
    this.items.push(x);
  }
  close() {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w({ value: undefined, done: true });
  }
  next() {
    if (this.items.length) return Promise.resolve({ value: this.items.shift(), done: false });
    if (this.closed) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => this.waiters.push(resolve));
  }
  iterator() {
    return {
      next: () => this.next(),
      return: () => Promise.resolve({ value: undefined, done: true }),
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }
}

/**
 * One player's connection. Create it with `connect(url, options)`, which resolves after
 * WELCOME. Snapshots are applied to `player.mirror` as they arrive (whether or not anyone
 * consumes them); read them with `onSnapshot(cb)` or `for await (const s of player)`.
 */
export class Player {
  constructor(url, options = {}) {
    this.url = url;
    this.token = options.token ?? "";
    this.client = options.client ?? "sdk-js/1.0";
    this.pingInterval = options.pingInterval ?? 5;
    this.openTimeout = options.openTimeout ?? 10;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.snapshotQueue = options.snapshotQueue ?? 64;
    this.messageQueue = options.messageQueue ?? 256;
    this.welcome = null;
    this.mirror = new SnapshotMirror(0, 0);
    this.pubLayout = [];
    this.ownLayout = [];
    this.lastSeq = 0;
    this.lastAck = 0;
    this.lastSnapshot = null;
    /** Latest round-trip time in seconds (null before the first PONG). */
    this.rtt = null;
    /** Smallest round-trip time seen, and the server-clock offset measured with it. */
    this.rttMin = null;
    this.clockOffset = null;
    this.kick = null;
    this.closeCode = null;
    this.closeReason = "";
    this.errors = [];
    this._ws = null;
    this._nonce = 0n;
    this._pending = new Map();
    this._snapshotCbs = new Set();
    this._messageCbs = new Set();
    this._closeCbs = new Set();
    this._snapshots = new DropOldest(this.snapshotQueue);
    this._messages = new DropOldest(this.messageQueue);
    this._pinger = null;
    this._closedByUs = false;
  }

  // -- joining --

  _open(resume) {
    const WS = this.WebSocket;
    if (typeof WS !== "function") {
      return Promise.reject(new HandshakeError("no WebSocket implementation (pass options.WebSocket)"));
    }
    this.kick = null;
    this.closeCode = null;
    this.closeReason = "";
    return new Promise((resolve, reject) => {
      let joined = false;
      let lastError = null;
      const ws = new WS(this.url);
      ws.binaryType = "arraybuffer";
      const fail = (err) => {
        if (joined) return;
        joined = true;
        clearTimeout(timer);
        try {
          ws.close();
        } catch {
          // already closing
        }
        reject(err);
      };
      const timer = setTimeout(() => fail(new HandshakeError("no WELCOME in time")), this.openTimeout * 1000);
      ws.onopen = () => {
        ws.send(encode({ type: "HELLO", version: PROTOCOL_VERSION, token: this.token, resume, client: this.client }));
      };
      ws.onerror = () => {
        // The close event that follows says more; before it, nothing to do.
      };
      ws.onclose = (ev) => {
        if (!joined) {
          const code = lastError ? lastError.code : this.kick ? this.kick.code : null;
          const text = lastError ? lastError.text : this.kick ? this.kick.reason : ev.reason || "connection closed";
          fail(new HandshakeError(`join failed: ${text} (close ${ev.code})`, { code, closeCode: ev.code }));
          return;
        }
        this._onClosed(ws, ev.code, ev.reason);
      };
      ws.onmessage = (ev) => {
        const now = nowSeconds();
        if (joined) {
          this._handle(ws, ev.data, now);
          return;
        }
        let msg;
        try {
          msg = decodeServer(ev.data);
        } catch (e) {
          fail(new HandshakeError(`bad frame during the handshake: ${e.message}`));
          return;
        }
        if (msg.type === "WELCOME") {
          joined = true;
          clearTimeout(timer);
          this._adopt(ws, msg, now);
          resolve(this);
        } else if (msg.type === "ERROR") {
          this._recordError(msg);
          // RESUME_FAILED is followed by a WELCOME for a new entity.
          if (msg.code !== ErrorCode.RESUME_FAILED) lastError = msg;
        } else if (msg.type === "KICK") {
          this.kick = msg;
        }
      };
    });
  }

  _adopt(ws, welcome, now) {
    this._ws = ws;
    this.welcome = welcome;
    this.pubLayout = blobLayout(welcome.pub_fields);
    this.ownLayout = blobLayout(welcome.own_fields);
    const w = this.pubLayout.reduce((a, f) => a + f.size, 0);
    const w2 = this.ownLayout.reduce((a, f) => a + f.size, 0);
    // Every WELCOME is followed by a RESET: start from an empty mirror.
    this.mirror = new SnapshotMirror(w, w2);
    this._serverTimeAtWelcome = [welcome.server_time, now];
    this._closedByUs = false;
    if (this.pingInterval > 0) {
      this._pinger = setInterval(() => this.ping().catch(() => {}), this.pingInterval * 1000);
    }
  }

  /** Reconnect with the latest resume token; resolves to `resumed` (same entity?). */
  async resume() {
    if (!this.closed) throw new Error("resume() needs a closed connection");
    if (!this.welcome) throw new Error("resume() needs an earlier WELCOME");
    this._snapshots = new DropOldest(this.snapshotQueue);
    this._messages = new DropOldest(this.messageQueue);
    await this._open(this.welcome.resume_token);
    return this.welcome.resumed;
  }

  // -- identity (from WELCOME) --

  get entityId() {
    return this.welcome.entity_id;
  }
  get playerId() {
    return this.welcome.player_id;
  }
  get world() {
    return this.welcome.world;
  }
  get worldName() {
    return this.welcome.world_name;
  }
  get tickHz() {
    return this.welcome.tick_hz;
  }
  get snapshotHz() {
    return this.welcome.snapshot_hz;
  }
  get posQuantum() {
    return this.welcome.pos_quantum;
  }
  get resumeToken() {
    return this.welcome.resume_token;
  }
  get resumed() {
    return this.welcome.resumed;
  }
  get closed() {
    return this._ws === null;
  }

  // -- sending --

  _send(bytes) {
    if (this._ws === null) throw new PlayerClosed(`the connection is closed (${this.closeCode})`);
    this._ws.send(bytes);
  }

  /** Send a movement intent (length ≤ 1) and action bits; returns the INPUT's seq. */
  sendInput(ix, iy, actions = 0) {
    const seq = this.lastSeq + 1;
    const frame = encode({ type: "INPUT", seq, ix, iy, actions });
    this._send(frame);
    this.lastSeq = seq;
    return seq;
  }

  /** Send one of the world's custom messages. */
  sendMessage(kind, body = null) {
    this._send(encode({ type: "MESSAGE", kind, body }));
  }

  /** Send a PING; resolves to the round-trip time in seconds. */
  ping(timeout = 5) {
    this._nonce += 1n;
    const nonce = this._nonce;
    const sent = nowSeconds();
    this._send(encode({ type: "PING", nonce, client_time: sent }));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(nonce);
        reject(new Error("no PONG in time"));
      }, timeout * 1000);
      this._pending.set(nonce, { resolve, reject, timer });
    });
  }

  /** Close with 1000 (a normal logout). */
  close(code = CloseCode.NORMAL, reason = "") {
    if (this._ws === null) return;
    this._closedByUs = true;
    const ws = this._ws;
    ws.close(code, reason);
    this._onClosed(ws, code, reason);
  }

  // -- reading --

  /** Call `cb(snapshot)` for every SNAPSHOT after it is applied; returns an unsubscribe. */
  onSnapshot(cb) {
    this._snapshotCbs.add(cb);
    return () => this._snapshotCbs.delete(cb);
  }
  /** Call `cb({kind, body})` for every MESSAGE from the world; returns an unsubscribe. */
  onMessage(cb) {
    this._messageCbs.add(cb);
    return () => this._messageCbs.delete(cb);
  }
  /** Call `cb({code, reason, kick})` once the connection closes; returns an unsubscribe. */
  onClose(cb) {
    this._closeCbs.add(cb);
    return () => this._closeCbs.delete(cb);
  }
  /** Async iterator over received snapshots (bounded; the oldest are dropped). */
  snapshots() {
    return this._snapshots.iterator();
  }
  [Symbol.asyncIterator]() {
    return this.snapshots();
  }
  /** Async iterator over the world's MESSAGEs (`{kind, body}`). */
  messages() {
    return this._messages.iterator();
  }

  /** Entity id (BigInt) → `{kind, x, y, owned}` (metres) for everything in view. */
  visible() {
    const q = this.posQuantum;
    const out = new Map();
    for (const e of this.mirror.entities.values()) {
      out.set(e.id, { kind: e.kind, x: e.qx * q, y: e.qy * q, owned: e.own !== null });
    }
    return out;
  }

  /** This player's position `[x, y]` in metres, or null before it is in view. */
  position() {
    const me = this.mirror.byId(this.entityId);
    if (me) return [me.qx * this.posQuantum, me.qy * this.posQuantum];
    return null;
  }

  /** Public fields of a visible entity, plus its owner fields when owned; null if not in view. */
  fields(entityId) {
    const e = this.mirror.byId(entityId);
    if (!e) return null;
    const out = decodeBlob(this.pubLayout, e.pub);
    if (e.own !== null) Object.assign(out, decodeBlob(this.ownLayout, e.own));
    return out;
  }

  /** Every visible entity: `{handle, id, kind, x, y, pub: {...}, own: {...}|null}`. */
  entities() {
    const q = this.posQuantum;
    const out = [];
    for (const [handle, e] of this.mirror.entities) {
      out.push({
        handle,
        id: e.id,
        kind: e.kind,
        x: e.qx * q,
        y: e.qy * q,
        pub: decodeBlob(this.pubLayout, e.pub),
        own: e.own === null ? null : decodeBlob(this.ownLayout, e.own),
      });
    }
    return out;
  }

  /** The server clock (seconds) now, estimated from the best PONG; null before one. */
  serverTime(local = nowSeconds()) {
    return this.clockOffset === null ? null : local + this.clockOffset;
  }

  _recordError(msg) {
    this.errors.push(msg);
    if (this.errors.length > 32) this.errors.shift();
  }

  _handle(ws, data, now) {
    if (ws !== this._ws) return;
    let msg;
    try {
      msg = decodeServer(data);
    } catch (e) {
      this._recordError({ type: "ERROR", code: e.code ?? ErrorCode.MALFORMED, text: `from server: ${e.message}` });
      return;
    }
    switch (msg.type) {
      case "SNAPSHOT":
        return this._onSnapshot(msg, now, toBytes(data).length);
      case "MESSAGE": {
        const m = { kind: msg.kind, body: msg.body };
        this._messages.put(m);
        for (const cb of this._messageCbs) cb(m);
        return;
      }
      case "PONG":
        return this._onPong(msg, now);
      case "ERROR":
        return this._recordError(msg);
      case "KICK":
        this.kick = msg;
        return;
      default:
        return; // a second WELCOME is not part of v1; ignore it
    }
  }

  _onSnapshot(msg, now, size) {
    let data;
    try {
      data = this.mirror.apply(msg.payload);
    } catch (e) {
      // The mirror no longer matches the server: rejoining gets a RESET.
      this._recordError({ type: "ERROR", code: ErrorCode.MALFORMED, text: `snapshot: ${e.message}` });
      this.close(CloseCode.NORMAL, "snapshot out of sync");
      return;
    }
    this.lastAck = msg.ack;
    const snap = { tick: msg.tick, ack: msg.ack, reset: data.reset, data, receivedAt: now, size };
    this.lastSnapshot = snap;
    this._snapshots.put(snap);
    for (const cb of this._snapshotCbs) cb(snap);
  }

  _onPong(msg, now) {
    const rtt = Math.max(0, now - msg.client_time);
    this.rtt = rtt;
    if (this.rttMin === null || rtt <= this.rttMin) {
      this.rttMin = rtt;
      this.clockOffset = msg.server_time + rtt / 2 - now;
    }
    const p = this._pending.get(msg.nonce);
    if (p) {
      this._pending.delete(msg.nonce);
      clearTimeout(p.timer);
      p.resolve(rtt);
    }
  }

  _onClosed(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    this.closeCode = code;
    this.closeReason = reason;
    if (this._pinger !== null) clearInterval(this._pinger);
    this._pinger = null;
    for (const p of this._pending.values()) {
      clearTimeout(p.timer);
      p.reject(new PlayerClosed("closed before the PONG"));
    }
    this._pending.clear();
    this._snapshots.close();
    this._messages.close();
    const info = { code, reason, kick: this.kick, byClient: this._closedByUs };
    for (const cb of this._closeCbs) cb(info);
  }
}

/**
 * Connect, send HELLO and wait for WELCOME; resolves to the joined Player.
 * Options: `token` (from your auth service; "" on a dev gateway), `resume` (a resume token
 * from an earlier WELCOME), `client` (name for the server's logs), `pingInterval` seconds
 * (0: none), `openTimeout` seconds, `WebSocket` (a constructor other than the global one),
 * `snapshotQueue` / `messageQueue` (iterator buffer sizes). Rejects with HandshakeError.
 */
export async function connect(url, options = {}) {
  const player = new Player(url, options);
  await player._open(options.resume ?? "");
  return player;
}
