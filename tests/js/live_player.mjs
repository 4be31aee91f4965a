// Run by tests/test_js_sdk.py against a live dev gateway: `node --experimental-websocket
// tests/js/live_player.mjs <ws url>`. Exits 0 when every step worked.
import assert from "node:assert/strict";
import { connect, ErrorCode } from "../../src/shardworld/web/shardworld.js";

const url = process.argv[2];
const until = async (cond, what, ms = 5000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

const p = await connect(url, { client: "sdk-js-test", pingInterval: 0 });
assert.equal(typeof p.entityId, "bigint");
assert.equal(p.resumed, false);
let seen = 0;
p.onSnapshot(() => seen++);
await until(() => p.visible().has(p.entityId), "own entity in the mirror");
const me = p.visible().get(p.entityId);
assert.equal(me.owned, true);
assert.ok(p.fields(p.entityId) !== null);
const [x0] = p.position();
let seq = 0;
for (let i = 0; i < 5; i++) {
  seq = p.sendInput(1, 0);
  await new Promise((r) => setTimeout(r, 20));
}
await until(() => p.lastAck >= seq, "the inputs' ack");
await until(() => p.position()[0] > x0 + 0.2, "moving east");
const rtt = await p.ping();
assert.ok(rtt >= 0 && p.rtt === rtt && p.serverTime() !== null);
const it = p.messages();
p.sendMessage("chat", { text: "hello from js" });
const got = await Promise.race([it.next(), new Promise((_, rej) => setTimeout(() => rej(new Error("no chat")), 5000))]);
assert.equal(got.value.kind, "chat");
assert.equal(BigInt(got.value.body.from), p.entityId);
assert.equal(got.value.body.text, "hello from js");
assert.ok(!p.errors.some((e) => e.code !== ErrorCode.RESUME_FAILED), JSON.stringify(p.errors));
let closed = null;
p.onClose((info) => (closed = info));
p.close();
assert.ok(p.closed && closed.code === 1000);
console.log(`live ok: ${seen} snapshots, rtt ${(rtt * 1000).toFixed(1)} ms, entity ${p.entityId}`);
