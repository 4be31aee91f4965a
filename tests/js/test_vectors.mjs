// The JS SDK against the shared protocol v1 vectors (tests/vectors/protocol_v1.json).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import * as sw from "../../src/shardworld/web/shardworld.js";

const here = fileURLToPath(new URL(".", import.meta.url));
const V = JSON.parse(readFileSync(`${here}../vectors/protocol_v1.json`, "utf8"));

const fromHex = (h) => new Uint8Array((h.match(/../g) ?? []).map((b) => parseInt(b, 16)));
const toHex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const U64 = new Set(["entity_id", "player_id", "nonce"]);

// The vectors' JSON form: 64-bit fields as decimal strings, bin as hex.
function toJson(msg) {
  const out = {};
  for (const [k, v] of Object.entries(msg)) {
    if (U64.has(k)) out[k] = v.toString();
    else if (v instanceof Uint8Array) out[k] = toHex(v);
    else out[k] = v;
  }
  return out;
}

const decode = (dir, bytes) => (dir === "client" ? sw.decodeClient(bytes) : sw.decodeServer(bytes));

test("every vector message decodes to its JSON form", () => {
  assert.ok(V.messages.length >= 20);
  for (const m of V.messages) {
    const got = decode(m.direction, fromHex(m.hex));
    assert.deepEqual(toJson(got), m.message, m.name);
    for (const k of U64) if (k in got) assert.equal(typeof got[k], "bigint", `${m.name}.${k}`);
  }
});

test("every canonical message encodes to its exact bytes", () => {
  let n = 0;
  for (const m of V.messages.filter((x) => x.canonical)) {
    const decoded = decode(m.direction, fromHex(m.hex));
    assert.equal(toHex(sw.encode(decoded)), m.hex, `${m.name} (decoded)`);
    // And straight from the JSON form: decimal strings for ids, hex for bin.
    const j = { ...m.message };
    if (j.type === "SNAPSHOT") j.payload = fromHex(j.payload);
    assert.equal(toHex(sw.encode(j)), m.hex, `${m.name} (json)`);
    n++;
  }
  assert.ok(n >= 15);
});

test("non-canonical frames re-encode canonically and decode the same", () => {
  for (const m of V.messages.filter((x) => !x.canonical)) {
    const decoded = decode(m.direction, fromHex(m.hex));
    if (decoded.type === "HELLO" && decoded.version !== 1) continue;
    assert.deepEqual(toJson(decode(m.direction, sw.encode(decoded))), m.message, m.name);
  }
});

test("every invalid frame is refused with the vector's code", () => {
  for (const m of V.invalid) {
    assert.throws(
      () => decode(m.direction, fromHex(m.hex)),
      (e) => e instanceof sw.ProtocolError && e.code === m.error_code && sw.ErrorCode[m.error] === e.code,
      m.name,
    );
  }
});

test("text frames, oversize frames and extension types are refused", () => {
  assert.throws(() => sw.decodeServer("hi"), (e) => e.code === sw.ErrorCode.TEXT_FRAME);
  assert.throws(() => sw.decodeClient(new Uint8Array(4097)), (e) => e.code === sw.ErrorCode.TOO_LARGE);
  // MESSAGE "x" with a fixext 1 body: BAD_FIELD, as the Python decoder answers.
  assert.throws(() => sw.decodeServer(fromHex("9305a178d40101")), (e) => e.code === sw.ErrorCode.BAD_FIELD);
  // An integer field never accepts a float: INPUT seq 1.0.
  assert.throws(
    () => sw.decodeClient(fromHex("9403cb3ff0000000000000cb0000000000000000cb0000000000000000")),
    (e) => e.code === sw.ErrorCode.BAD_FIELD,
  );
  // Invalid UTF-8 is MALFORMED.
  assert.throws(() => sw.decodeServer(fromHex("9308 01 a1 ff".replaceAll(" ", ""))), (e) => e.code === sw.ErrorCode.MALFORMED);
});

test("encode refuses what the receiving decoder would refuse", () => {
  assert.throws(() => sw.encode({ type: "INPUT", seq: 1, ix: NaN, iy: 0 }), RangeError);
  assert.throws(() => sw.encode({ type: "INPUT", seq: -1, ix: 0, iy: 0 }), RangeError);
  assert.throws(() => sw.encode({ type: "INPUT", seq: 1.5, ix: 0, iy: 0 }), RangeError);
  assert.throws(() => sw.encode({ type: "MESSAGE", kind: "", body: null }), RangeError);
  assert.throws(() => sw.encode({ type: "MESSAGE", kind: "k".repeat(65), body: null }), RangeError);
  let deep = 1;
  for (let i = 0; i < 33; i++) deep = [deep];
  assert.throws(() => sw.encode({ type: "MESSAGE", kind: "d", body: deep }), RangeError);
  assert.throws(() => sw.encode({ type: "MESSAGE", kind: "big", body: "x".repeat(17000) }), RangeError);
  assert.throws(() => sw.encode({ type: "NOPE" }), TypeError);
});

test("msgpack round trips every value kind, BigInt beyond 2^53 included", () => {
  const values = [
    null, true, false, 0, 127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296,
    -1, -32, -33, -128, -129, -32768, -32769, -2147483648, -2147483649,
    2n ** 64n - 1n, -(2n ** 63n), 1.5, -0.25, "", "a".repeat(31), "b".repeat(32), "é€",
    "c".repeat(300), "d".repeat(70000), new Uint8Array([1, 2, 3]), new Uint8Array(300),
    [], [1, [2, [3]]], Array.from({ length: 20 }, (_, i) => i), { a: 1, b: { c: [true] } },
  ];
  for (const v of values) assert.deepEqual(sw.unpack(sw.pack(v)), v);
  assert.equal(toHex(sw.pack(new sw.Float(1))), "cb3ff0000000000000");
  assert.equal(toHex(sw.pack(7)), "07");
  assert.equal(toHex(sw.pack(2n ** 64n - 1n)), "cfffffffffffffffff");
  const proto = sw.unpack(fromHex("81a95f5f70726f746f5f5f01"));
  assert.equal(Object.getPrototypeOf(proto), Object.prototype);
  assert.equal(proto.__proto__, 1);
});

function snapshotToJson(s) {
  const blob = (b) => (b === null ? null : toHex(b));
  return {
    flags: s.flags, reset: s.reset, wide: s.wide, tick: s.tick, base_qx: s.base_qx, base_qy: s.base_qy,
    despawns: s.despawns,
    spawns: s.spawns.map((x) => ({ ...x, id: x.id.toString(), pub: blob(x.pub), own: blob(x.own) })),
    moves: s.moves,
    updates: s.updates.map((x) => ({ ...x, pub: blob(x.pub), own: blob(x.own) })),
  };
}

test("snapshot streams: decoded payloads and the mirror after each", () => {
  assert.equal(V.snapshot_streams.length, 2);
  for (const st of V.snapshot_streams) {
    const pub = sw.blobLayout(st.pub_fields);
    const own = sw.blobLayout(st.own_fields);
    assert.equal(sw.blobWidth(st.pub_fields), st.pub_width);
    assert.equal(sw.blobWidth(st.own_fields), st.own_width);
    const mirror = new sw.SnapshotMirror(st.pub_width, st.own_width);
    for (const [i, p] of st.payloads.entries()) {
      const snap = mirror.apply(fromHex(p.hex));
      assert.deepEqual(snapshotToJson(snap), p.decoded, `${st.name}[${i}] decoded`);
      const got = [...mirror.entities.entries()]
        .sort((a, b) => a[0] - b[0])
        .map(([handle, e]) => ({
          handle, id: e.id.toString(), kind: e.kind, qx: e.qx, qy: e.qy,
          pub: toHex(e.pub), own: e.own === null ? null : toHex(e.own),
          pub_values: sw.decodeBlob(pub, e.pub),
          own_values: e.own === null ? null : sw.decodeBlob(own, e.own),
        }));
      assert.deepEqual(got, p.mirror_after, `${st.name}[${i}] mirror`);
      for (const e of mirror.entities.values()) assert.equal(mirror.byId(e.id), e);
    }
  }
});

test("the worked example of snapshot-format.md through a SNAPSHOT frame", () => {
  const m = V.messages.find((x) => x.name === "snapshot");
  const msg = sw.decodeServer(fromHex(m.hex));
  const st = V.snapshot_streams[0];
  const mirror = new sw.SnapshotMirror(2, 1);
  mirror.apply(fromHex(st.payloads[0].hex));
  mirror.apply(msg.payload);
  const e = mirror.byId(0x0001000000000013n);
  assert.deepEqual([e.kind, e.qx, e.qy], [3, 995, -505]);
  assert.equal(mirror.handleOf(0x0001000000000011n), null);
  assert.deepEqual(sw.decodeBlob(sw.blobLayout(st.own_fields), mirror.byId(0x0001000000000012n).own), { ammo: 7 });
});

test("the mirror is all-or-nothing and refuses payloads that do not fit", () => {
  const st = V.snapshot_streams[0];
  const mirror = new sw.SnapshotMirror(2, 1);
  mirror.apply(fromHex(st.payloads[0].hex));
  const before = new Map(mirror.entities);
  // Despawn handle 1 then an unknown handle 9: nothing may change.
  const bad = fromHex("0045230100e80300000cfeffff" + "0200000000000000" + "01" + "09");
  assert.throws(() => mirror.apply(bad), sw.SnapshotMirrorError);
  assert.deepEqual(mirror.entities, before);
  // Spawning onto a handle in use.
  const second = fromHex(st.payloads[1].hex);
  second[21] = 0; // despawn handle 0 instead of 1, so spawning handle 1 collides
  assert.throws(() => mirror.apply(second), sw.SnapshotMirrorError);
  assert.deepEqual(mirror.entities, before);
});

test("malformed payloads are refused", () => {
  const good = fromHex(V.snapshot_streams[0].payloads[1].hex);
  assert.throws(() => sw.decodeSnapshot(good.slice(0, 20), 2, 1), sw.SnapshotDecodeError);
  assert.throws(() => sw.decodeSnapshot(good.slice(0, -1), 2, 1), sw.SnapshotDecodeError);
  assert.throws(() => sw.decodeSnapshot(new Uint8Array([...good, 0]), 2, 1), sw.SnapshotDecodeError);
  const flags = good.slice();
  flags[0] = 0x04;
  assert.throws(() => sw.decodeSnapshot(flags, 2, 1), /reserved flag/);
  const owned = good.slice();
  owned[owned.length - 4] = 2; // the update's owned byte
  assert.throws(() => sw.decodeSnapshot(owned, 2, 1), /owned byte/);
});

test("blobs: every v1 dtype, shapes in row-major order", () => {
  const fields = [
    ["b", "|b1", []], ["u1", "|u1", []], ["i1", "|i1", []], ["u2", "<u2", []], ["i2", "<i2", []],
    ["h", "<f2", [2]], ["u4", "<u4", []], ["i4", "<i4", []], ["f4", "<f4", []], ["u8", "<u8", []],
    ["i8", "<i8", []], ["f8", "<f8", []], ["m", "|u1", [2, 3]],
  ].map(([name, dtype, shape]) => ({ name, dtype, shape, scope: "public" }));
  const layout = sw.blobLayout(fields);
  const blob = new Uint8Array(sw.blobWidth(fields));
  const v = new DataView(blob.buffer);
  const at = Object.fromEntries(layout.map((f) => [f.name, f.offset]));
  v.setUint8(at.b, 1); v.setUint8(at.u1, 200); v.setInt8(at.i1, -5); v.setUint16(at.u2, 60000, true);
  v.setInt16(at.i2, -300, true); v.setUint16(at.h, 0x3c00, true); v.setUint16(at.h + 2, 0xc100, true);
  v.setUint32(at.u4, 4000000000, true); v.setInt32(at.i4, -7, true); v.setFloat32(at.f4, 0.5, true);
  v.setBigUint64(at.u8, 2n ** 64n - 2n, true); v.setBigInt64(at.i8, -3n, true); v.setFloat64(at.f8, 0.1, true);
  for (let i = 0; i < 6; i++) v.setUint8(at.m + i, i);
  assert.deepEqual(sw.decodeBlob(layout, blob), {
    b: true, u1: 200, i1: -5, u2: 60000, i2: -300, h: [1, -2.5], u4: 4000000000, i4: -7, f4: 0.5,
    u8: 2n ** 64n - 2n, i8: -3n, f8: 0.1, m: [[0, 1, 2], [3, 4, 5]],
  });
  assert.throws(() => sw.blobLayout([{ name: "x", dtype: "<f16", shape: [], scope: "public" }]), RangeError);
});

test("constants match docs/protocol.md", () => {
  assert.equal(sw.PROTOCOL_VERSION, V.protocol_version);
  assert.equal(sw.ErrorCode.ABUSE, 18);
  assert.equal(sw.ErrorCode.RESUME_FAILED, 14);
  assert.equal(sw.CloseCode.KICKED, 4006);
  assert.equal(sw.CloseCode.HANDSHAKE_TIMEOUT, 4005);
  assert.equal(sw.MsgType.KICK, 9);
  assert.equal(sw.errorName(999), "UNKNOWN(999)");
});
