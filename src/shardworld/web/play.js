// shardworld in a browser: a canvas view that follows your entity, keyboard movement, chat.
//
// Every gateway serves this page at / and /play (docs/play.md). It uses nothing but the
// client SDK the same gateway serves at /shardworld.js, and connects back to that gateway.
// Query parameters: ?token=… (players need one unless the gateway runs with --dev),
// ?zoom=… (initial zoom, 1 = about 40 m from the centre to the nearest edge).

import { connect, decodeBlob, ErrorCode } from "/shardworld.js";

const params = new URLSearchParams(location.search);
const TOKEN = params.get("token") ?? "";
const WS_URL = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/`;

const COLOR = {
  outside: "#060912",
  hatch: "rgba(120, 140, 200, 0.07)",
  ground: "#0d1426",
  gridMinor: "rgba(130, 160, 235, 0.07)",
  gridMajor: "rgba(130, 160, 235, 0.17)",
  gridLabel: "rgba(150, 175, 240, 0.45)",
  edge: "#5ad1ff",
  self: "#7dffb0",
  selfDark: "#1f7a4d",
  player: "#59c3ff",
  playerDark: "#1b4f7a",
  npc: "#ffb454",
  npcDark: "#7a4d14",
  label: "#e3e9ff",
  labelDim: "rgba(227, 233, 255, 0.55)",
  wave: "#ffd166",
};
const SELF_RGB = [0x7d, 0xff, 0xb0]; // COLOR.self, for the debug hook

const VIEW_METRES = 40; // centre to the nearest screen edge at zoom 1
const INPUT_MIN_INTERVAL = 0.05; // s between INPUTs at most: one per snapshot at 20 Hz
const FADE = 0.25; // s for entities to fade in and out of view
const TELEPORT = 12; // m between two snapshots: jump there, do not glide
const CHAT_LINES = 8;
const BUBBLE_S = 6;
const ACTION_WAVE = 1; // the arena's emote bit (zones/arena/handler.py)

const MOVE_KEYS = {
  KeyW: [0, 1],
  ArrowUp: [0, 1],
  KeyS: [0, -1],
  ArrowDown: [0, -1],
  KeyA: [-1, 0],
  ArrowLeft: [-1, 0],
  KeyD: [1, 0],
  ArrowRight: [1, 0],
};

const CLOSE_TEXT = {
  1000: "the connection was closed",
  1001: "the server is going away",
  1006: "the connection was lost",
  1008: "the server refused the connection",
  1009: "a message was too big",
  1011: "the server had an internal error",
  4001: "the token was refused",
  4002: "this page speaks a protocol version the server does not",
  4003: "kicked for sending too much or too many bad messages",
  4004: "kicked for reading too slowly",
  4005: "the handshake took too long",
  4006: "kicked by the server",
};

const $ = (id) => document.getElementById(id);
const ui = {
  view: $("view"),
  minimap: $("minimap"),
  dot: $("dot"),
  status: $("status"),
  worldName: $("world-name"),
  entity: $("hud-entity"),
  pos: $("hud-pos"),
  visible: $("hud-visible"),
  rtt: $("hud-rtt"),
  age: $("hud-age"),
  chatLog: $("chat-log"),
  chatInput: $("chat-input"),
  chatHint: $("chat-hint"),
  overlay: $("overlay"),
  overlayTitle: $("overlay-title"),
  overlayText: $("overlay-text"),
  btnResume: $("btn-resume"),
  btnNew: $("btn-new"),
};
const ctx = ui.view.getContext("2d", { alpha: false });
const mctx = ui.minimap.getContext("2d");

// --- state ------------------------------------------------------------------------------

const app = {
  player: null, // the SDK Player
  status: "connecting", // connecting | connected | reconnecting | disconnected
  closeInfo: null,
  busy: false,
  snapshots: 0,
  tracks: new Map(), // entity id (BigInt) -> Track
  chat: [], // {from, text, mine} (from: decimal id string)
  bubbles: new Map(), // entity id (BigInt) -> {text, until}
  held: new Set(), // movement key codes held down
  wave: false,
  intent: [0, 0],
  sentKey: null,
  sentAt: -Infinity,
  inputTimer: null,
  zoom: clamp(Number(params.get("zoom")) || 1, 0.25, 4),
  camera: null, // [x, y] metres
  counts: { players: 0, npcs: 0 },
};

// Snapshot times come from the server's tick numbers, not from when frames arrived, so
// network and scheduling jitter does not show as jerky motion. The smallest recent
// (arrival - tick time) is the offset between the two clocks.
const clock = { base: null, offsets: [], offset: 0 };

class Track {
  constructor(id) {
    this.id = id;
    this.kind = 0;
    this.samples = []; // {t, x, y}, t in tick seconds
    this.born = null; // tick time it came into view (null: it was there at the RESET)
    this.gone = null; // tick time it left the view
    this.seen = 0; // the snapshot count it was last in
    this.wave = false;
    this.health = null;
    // where it is drawn this frame
    this.x = 0;
    this.y = 0;
    this.vx = 0;
    this.vy = 0;
    this.alpha = 1;
  }
}

function clamp(x, lo, hi) {
  return Math.min(hi, Math.max(lo, x));
}

function nowS() {
  return performance.now() / 1000;
}

function shortId(id) {
  // zone tag (16 bits) | generation (20) | slot (28): the tag and slot tell entities apart.
  return `${id >> 48n}·${id & 0xfffffffn}`;
}

function isPlayerKind(kind) {
  // Entities of your own kind are players; anything else is part of the world.
  const me = app.player && app.tracks.get(app.player.entityId);
  return kind === (me ? me.kind : 1);
}

// --- connection -------------------------------------------------------------------------

function attach(player) {
  player.onSnapshot((snap) => {
    if (player === app.player) onSnapshot(player, snap);
  });
  player.onMessage((msg) => {
    if (player === app.player) onMessage(player, msg);
  });
  player.onClose((info) => {
    if (player === app.player) onClose(info);
  });
}

function joined(player, how) {
  app.player = player;
  app.status = "connected";
  app.closeInfo = null;
  app.tracks.clear();
  app.bubbles.clear();
  clock.base = null;
  clock.offsets = [];
  app.sentKey = null; // the server may not have our current intent: send it again
  pushInput();
  player.ping().catch(() => {});
  ui.overlay.hidden = true;
  ui.worldName.textContent = player.worldName;
  updateHud(nowS(), true);
  systemLine(`${how} as ${shortId(player.entityId)}`);
}

function onClose(info) {
  app.status = "disconnected";
  app.closeInfo = info;
  updateHud(nowS(), true);
  clearTimeout(app.inputTimer);
  app.inputTimer = null;
  // The page never logs out by itself: a close from this side is the SDK's own (its mirror
  // went out of sync), and its reason says so.
  const why = (info.kick && info.kick.reason) || info.reason || CLOSE_TEXT[info.code] || "closed";
  const resumable = ![4001, 4002, 4003, 4006].includes(info.code);
  showOverlay(
    "Disconnected",
    `${why} (${info.code}). ${resumable ? "Resume to take your entity back while it lingers." : ""}`,
    resumable,
  );
  systemLine(`disconnected: ${why}`);
}

function showOverlay(title, text, canResume) {
  ui.overlayTitle.textContent = title;
  ui.overlayText.textContent = text;
  // Before a first WELCOME there is nothing to resume: one button that tries again.
  ui.btnResume.hidden = !app.player;
  ui.btnNew.textContent = app.player ? "New player" : "Try again";
  ui.btnResume.disabled = !canResume;
  ui.btnNew.disabled = false;
  ui.overlay.hidden = false;
  (canResume ? ui.btnResume : ui.btnNew).focus();
}

function describeJoinError(err) {
  if (err && err.code === ErrorCode.AUTH_FAILED) {
    return "This world needs a token: open the page as /?token=… (shardworld token issues one).";
  }
  return err && err.message ? err.message : String(err);
}

async function join(resume) {
  if (app.busy) return;
  app.busy = true;
  app.status = app.player ? "reconnecting" : "connecting";
  updateHud(nowS(), true);
  ui.btnResume.disabled = true;
  ui.btnNew.disabled = true;
  ui.overlayTitle.textContent = resume ? "Resuming…" : "Joining…";
  try {
    const old = app.player;
    if (resume && old && old.welcome && old.closed) {
      const same = await old.resume();
      joined(old, same ? "resumed" : "your entity was gone; joined");
    } else {
      const player = await connect(WS_URL, { token: TOKEN, client: "play.html/1.0", pingInterval: 2 });
      attach(player);
      joined(player, "joined");
    }
  } catch (err) {
    app.status = "disconnected";
    updateHud(nowS(), true);
    showOverlay(app.player ? "Could not reconnect" : "Could not join", describeJoinError(err), !!app.player);
  } finally {
    app.busy = false;
  }
}

ui.btnResume.addEventListener("click", () => join(true));
ui.btnNew.addEventListener("click", () => join(false));

// --- snapshots and messages -------------------------------------------------------------

function tickTime(player, tick, receivedAt) {
  if (clock.base === null) clock.base = tick;
  let d = (tick - clock.base) >>> 0; // ticks are the low 32 bits: compare them modulo 2**32
  if (d >= 2 ** 31) d -= 2 ** 32;
  const t = d / player.tickHz;
  const offset = receivedAt - t;
  if (clock.offsets.length && Math.abs(offset - clock.offset) > 1) {
    // The tick clock jumped (another server): start the timeline again.
    clock.base = null;
    clock.offsets = [];
    for (const tr of app.tracks.values()) tr.samples.length = 0;
    return tickTime(player, tick, receivedAt);
  }
  clock.offsets.push(offset);
  if (clock.offsets.length > 60) clock.offsets.shift();
  clock.offset = Math.min(...clock.offsets);
  return t;
}

function onSnapshot(player, snap) {
  const t = tickTime(player, snap.tick, snap.receivedAt);
  const seen = ++app.snapshots;
  const q = player.posQuantum;
  const layout = player.pubLayout;
  const waveField = layout.some((f) => f.name === "emote");
  const healthField = layout.some((f) => f.name === "health");
  for (const e of player.mirror.entities.values()) {
    let tr = app.tracks.get(e.id);
    if (!tr || tr.gone !== null) {
      tr = new Track(e.id);
      tr.born = snap.reset ? null : t;
      app.tracks.set(e.id, tr);
    }
    tr.kind = e.kind;
    tr.seen = seen;
    const s = tr.samples;
    if (s.length && s[s.length - 1].t >= t) s.pop(); // a repeated tick replaces its sample
    s.push({ t, x: e.qx * q, y: e.qy * q });
    if (s.length > 8) s.shift();
    if (waveField || healthField) {
      const f = decodeBlob(layout, e.pub);
      tr.wave = waveField && f.emote !== 0;
      tr.health = healthField ? f.health : null;
    }
  }
  for (const tr of app.tracks.values()) {
    if (tr.seen !== seen && tr.gone === null) tr.gone = t;
  }
}

function onMessage(player, { kind, body }) {
  if (kind !== "chat" || body === null || typeof body !== "object" || typeof body.text !== "string") return;
  let from = null;
  try {
    from = BigInt(body.from);
  } catch {
    return;
  }
  const mine = from === player.entityId;
  app.chat.push({ from: from.toString(), text: body.text, mine });
  if (app.chat.length > 100) app.chat.shift();
  app.bubbles.set(from, { text: body.text, until: nowS() + BUBBLE_S });
  const li = document.createElement("li");
  if (mine) li.className = "mine";
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = mine ? "you" : shortId(from);
  li.append(who, document.createTextNode(body.text)); // text nodes: chat is never markup
  addChatLine(li);
}

function systemLine(text) {
  const li = document.createElement("li");
  li.className = "system";
  li.textContent = text;
  addChatLine(li);
}

function addChatLine(li) {
  ui.chatLog.append(li);
  while (ui.chatLog.children.length > CHAT_LINES) ui.chatLog.firstElementChild.remove();
  setTimeout(() => li.classList.add("old"), 15000);
}

// --- input --------------------------------------------------------------------------------

function steer() {
  let ix = 0;
  let iy = 0;
  for (const code of app.held) {
    ix += MOVE_KEYS[code][0];
    iy += MOVE_KEYS[code][1];
  }
  ix = clamp(ix, -1, 1);
  iy = clamp(iy, -1, 1);
  const len = Math.hypot(ix, iy);
  if (len > 0) {
    ix /= len; // diagonals at the same speed as straight lines
    iy /= len;
  }
  app.intent = [ix, iy];
  pushInput();
}

// Intents are sent when they change, at most one per INPUT_MIN_INTERVAL; the latest wins.
function pushInput() {
  const p = app.player;
  if (!p || p.closed) return;
  const [ix, iy] = app.intent;
  const actions = app.wave ? ACTION_WAVE : 0;
  const key = `${ix},${iy},${actions}`;
  if (key === app.sentKey) return;
  const wait = app.sentAt + INPUT_MIN_INTERVAL - nowS();
  if (wait > 0) {
    if (app.inputTimer === null) {
      app.inputTimer = setTimeout(() => {
        app.inputTimer = null;
        pushInput();
      }, wait * 1000);
    }
    return;
  }
  try {
    p.sendInput(ix, iy, actions);
    app.sentKey = key;
    app.sentAt = nowS();
  } catch {
    // closed under us: onClose says so
  }
}

function stopAll() {
  app.held.clear();
  app.wave = false;
  steer();
}

function chatOpen() {
  return !ui.chatInput.hidden;
}

function openChat() {
  stopAll(); // typing must not walk
  ui.chatInput.hidden = false;
  ui.chatHint.hidden = true;
  ui.chatInput.focus();
}

function closeChat() {
  ui.chatInput.value = "";
  ui.chatInput.hidden = true;
  ui.chatHint.hidden = false;
  ui.view.focus();
}

ui.chatInput.addEventListener("keydown", (e) => {
  e.stopPropagation(); // keys typed here are text, not movement
  if (e.key === "Enter") {
    e.preventDefault();
    const text = ui.chatInput.value.trim();
    const p = app.player;
    if (text && p && !p.closed) {
      try {
        p.sendMessage("chat", { text });
      } catch {
        // closed under us
      }
    }
    closeChat();
  } else if (e.key === "Escape") {
    e.preventDefault();
    closeChat();
  }
});
ui.chatInput.addEventListener("keyup", (e) => e.stopPropagation());
ui.chatInput.addEventListener("blur", () => {
  if (!ui.chatInput.value) closeChat();
});

addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || chatOpen()) return;
  if (e.target instanceof HTMLButtonElement && (e.key === "Enter" || e.key === " ")) return;
  if (Object.hasOwn(MOVE_KEYS, e.code)) {
    e.preventDefault();
    if (!e.repeat) {
      app.held.add(e.code);
      steer();
    }
  } else if (e.code === "KeyE") {
    if (!app.wave) {
      app.wave = true;
      pushInput();
    }
  } else if (e.key === "Enter") {
    e.preventDefault();
    if (app.status === "connected") openChat();
  } else if (e.key === "+" || e.key === "=" || e.code === "NumpadAdd") {
    app.zoom = clamp(app.zoom * 1.25, 0.25, 4);
  } else if (e.key === "-" || e.code === "NumpadSubtract") {
    app.zoom = clamp(app.zoom / 1.25, 0.25, 4);
  } else if (e.code === "KeyR" && app.status === "disconnected") {
    join(true);
  }
});

addEventListener("keyup", (e) => {
  if (Object.hasOwn(MOVE_KEYS, e.code)) {
    app.held.delete(e.code);
    steer();
  } else if (e.code === "KeyE") {
    app.wave = false;
    pushInput();
  }
});

// A key released while the page had no focus never sends keyup: stop rather than walk on.
addEventListener("blur", stopAll);
document.addEventListener("visibilitychange", () => {
  if (document.hidden) stopAll();
});

addEventListener(
  "wheel",
  (e) => {
    if (e.target !== ui.view) return;
    e.preventDefault();
    app.zoom = clamp(app.zoom * Math.exp(-e.deltaY * 0.0015), 0.25, 4);
  },
  { passive: false },
);

// --- drawing ------------------------------------------------------------------------------

const screen = { w: 0, h: 0, dpr: 1, vignette: null };
let hatch = null;

function resize() {
  const dpr = window.devicePixelRatio || 1;
  const w = innerWidth;
  const h = innerHeight;
  if (w === screen.w && h === screen.h && dpr === screen.dpr) return;
  Object.assign(screen, { w, h, dpr });
  ui.view.width = Math.round(w * dpr);
  ui.view.height = Math.round(h * dpr);
  // The vignette is drawn once per size: a gradient over the whole screen every frame costs
  // more than copying it, where canvases are drawn without a GPU.
  const v = document.createElement("canvas");
  v.width = ui.view.width;
  v.height = ui.view.height;
  const vg = v.getContext("2d");
  const r = Math.hypot(v.width, v.height) / 2;
  const g = vg.createRadialGradient(v.width / 2, v.height / 2, r * 0.45, v.width / 2, v.height / 2, r);
  g.addColorStop(0, "rgba(3, 5, 12, 0)");
  g.addColorStop(1, "rgba(3, 5, 12, 0.62)");
  vg.fillStyle = g;
  vg.fillRect(0, 0, v.width, v.height);
  screen.vignette = v;
  const m = 180;
  ui.minimap.width = Math.round(m * dpr);
  ui.minimap.height = Math.round(m * dpr);
}

function makeHatch() {
  const c = document.createElement("canvas");
  c.width = c.height = 14;
  const g = c.getContext("2d");
  g.strokeStyle = COLOR.hatch;
  g.lineWidth = 2;
  g.beginPath();
  g.moveTo(-2, 16);
  g.lineTo(16, -2);
  g.stroke();
  return ctx.createPattern(c, "repeat");
}

function sampleAt(tr, rt) {
  const s = tr.samples;
  const n = s.length;
  if (n === 0) return false;
  if (n === 1 || rt <= s[0].t) {
    tr.x = s[0].x;
    tr.y = s[0].y;
    tr.vx = tr.vy = 0;
    return true;
  }
  let j = n - 1;
  while (j > 0 && s[j].t > rt) j--;
  const a = s[Math.min(j, n - 2)];
  const b = s[Math.min(j, n - 2) + 1];
  const dt = b.t - a.t;
  if (Math.hypot(b.x - a.x, b.y - a.y) > TELEPORT || dt <= 0) {
    const at = rt >= b.t ? b : a;
    tr.x = at.x;
    tr.y = at.y;
    tr.vx = tr.vy = 0;
    return true;
  }
  // Past the newest sample (a late snapshot): carry on for one interval (0.1 s at most).
  const u = clamp((rt - a.t) / dt, 0, 1 + Math.min(1, 0.1 / dt));
  tr.x = a.x + (b.x - a.x) * u;
  tr.y = a.y + (b.y - a.y) * u;
  tr.vx = (b.x - a.x) / dt;
  tr.vy = (b.y - a.y) / dt;
  return true;
}

function chooseStep(pxPerM, minPx = 22) {
  for (const step of [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000]) {
    if (step * pxPerM >= minPx) return step;
  }
  return 2000;
}

function frame() {
  requestAnimationFrame(frame);
  resize();
  const { w, h, dpr } = screen;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  const p = app.player;
  const now = nowS();

  // Where every entity is at the render time, a little behind the newest snapshot.
  const delay = p ? clamp(1.6 / p.snapshotHz, 0.05, 0.3) : 0.1;
  const rt = now - clock.offset - delay;
  let players = 0;
  let npcs = 0;
  const drawn = [];
  for (const [id, tr] of app.tracks) {
    if (!sampleAt(tr, rt)) {
      if (tr.gone !== null) app.tracks.delete(id); // left while the timeline restarted
      continue;
    }
    let alpha = 1;
    if (tr.born !== null) alpha = clamp((rt - tr.born) / FADE, 0, 1);
    if (tr.gone !== null) {
      alpha = Math.min(alpha, 1 - (rt - tr.gone) / FADE);
      if (alpha <= 0 && rt > tr.gone) {
        app.tracks.delete(id);
        continue;
      }
    }
    tr.alpha = clamp(alpha, 0, 1);
    if (tr.gone === null && !(p && id === p.entityId)) {
      if (isPlayerKind(tr.kind)) players++;
      else npcs++;
    }
    drawn.push(tr);
  }
  app.counts = { players, npcs };
  const me = p ? app.tracks.get(p.entityId) : undefined;
  if (me && me.samples.length) app.camera = [me.x, me.y];
  else if (!app.camera && p) app.camera = [(p.world[0] + p.world[2]) / 2, (p.world[1] + p.world[3]) / 2];
  const cam = app.camera || [0, 0];
  const scale = (Math.min(w, h) / 2 / VIEW_METRES) * app.zoom;
  const sx = (x) => w / 2 + (x - cam[0]) * scale;
  const sy = (y) => h / 2 - (y - cam[1]) * scale;

  // The void outside the world, then the world's ground, grid and edge.
  const [x0, y0, x1, y1] = p ? p.world : [0, 0, 0, 0];
  const L = sx(x0);
  const R = sx(x1);
  const T = sy(y1);
  const B = sy(y0);
  const edgeInView = !(L <= 0 && T <= 0 && R >= w && B >= h);
  if (!p || edgeInView) {
    ctx.fillStyle = COLOR.outside;
    ctx.fillRect(0, 0, w, h);
    if (!hatch) hatch = makeHatch();
    hatch.setTransform(new DOMMatrix().translate(sx(0) % 14, sy(0) % 14));
    ctx.fillStyle = hatch;
    ctx.fillRect(0, 0, w, h);
  }
  if (p) {
    const cl = Math.max(L, 0);
    const ct = Math.max(T, 0);
    const cw = Math.min(R, w) - cl;
    const ch = Math.min(B, h) - ct;
    if (cw > 0 && ch > 0) {
      ctx.fillStyle = COLOR.ground;
      ctx.fillRect(cl, ct, cw, ch);
      ctx.save();
      ctx.beginPath();
      ctx.rect(cl, ct, cw, ch);
      ctx.clip();
      drawGrid(cam, scale, w, h, sx, sy);
      ctx.restore();
    }
    if (edgeInView) {
      // a glow from wide faint strokes (shadowBlur would blur the whole screen each frame)
      for (const [width, alpha] of [
        [14, 0.06],
        [7, 0.14],
        [2, 1],
      ]) {
        ctx.strokeStyle = alpha === 1 ? COLOR.edge : `rgba(90, 209, 255, ${alpha})`;
        ctx.lineWidth = width;
        ctx.strokeRect(L, T, R - L, B - T);
      }
    }
  }

  // NPCs under players, everyone's labels over them, you over all that; chat on top.
  const rank = (tr) => (p && tr.id === p.entityId ? 2 : isPlayerKind(tr.kind) ? 1 : 0);
  drawn.sort((a, b) => rank(a) - rank(b));
  const others = me ? drawn.filter((tr) => tr !== me) : drawn;
  for (const tr of others) drawEntity(tr, sx(tr.x), sy(tr.y), scale, rank(tr), now);
  for (const tr of others) drawLabel(tr, sx(tr.x), sy(tr.y), scale, rank(tr));
  if (me) {
    drawEntity(me, sx(me.x), sy(me.y), scale, 2, now);
    drawLabel(me, sx(me.x), sy(me.y), scale, 2);
  }
  for (const tr of drawn) drawBubble(tr, sx(tr.x), sy(tr.y), scale, now);
  for (const [id, b] of app.bubbles) if (now > b.until) app.bubbles.delete(id); // out of view too

  ctx.drawImage(screen.vignette, 0, 0, w, h);
  if (p && !me) {
    ctx.fillStyle = COLOR.labelDim;
    ctx.font = "600 14px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.fillText(app.status === "connected" ? "waiting for the first snapshot…" : "", w / 2, h / 2);
  }
  drawMinimap(p, cam, scale, w, h, drawn);
  updateHud(now);
}

function drawGrid(cam, scale, w, h, sx, sy) {
  const step = chooseStep(scale);
  const major = step * 5;
  const left = cam[0] - w / 2 / scale;
  const right = cam[0] + w / 2 / scale;
  const bottom = cam[1] - h / 2 / scale;
  const top = cam[1] + h / 2 / scale;
  for (const [every, color] of [
    [step, COLOR.gridMinor],
    [major, COLOR.gridMajor],
  ]) {
    ctx.beginPath();
    for (let x = Math.ceil(left / every) * every; x <= right; x += every) {
      const X = Math.round(sx(x)) + 0.5;
      ctx.moveTo(X, 0);
      ctx.lineTo(X, h);
    }
    for (let y = Math.ceil(bottom / every) * every; y <= top; y += every) {
      const Y = Math.round(sy(y)) + 0.5;
      ctx.moveTo(0, Y);
      ctx.lineTo(w, Y);
    }
    ctx.strokeStyle = color;
    ctx.lineWidth = 1;
    ctx.stroke();
  }
  // Coordinates of the major lines along the top and right edges, like a map's frame.
  ctx.fillStyle = COLOR.gridLabel;
  ctx.font = "10px ui-monospace, 'DejaVu Sans Mono', monospace";
  ctx.textAlign = "left";
  for (let x = Math.ceil(left / major) * major; x <= right; x += major) {
    ctx.fillText(`x ${x}`, Math.round(sx(x)) + 4, 12);
  }
  ctx.textAlign = "right";
  for (let y = Math.ceil(bottom / major) * major; y <= top; y += major) {
    ctx.fillText(`y ${y}`, w - 6, Math.round(sy(y)) - 4);
  }
}

function drawEntity(tr, x, y, scale, rank, now) {
  const r = Math.max([4.5, 6, 7][rank], [0.7, 0.9, 1.0][rank] * scale);
  const [fill, dark] = [
    [COLOR.npc, COLOR.npcDark],
    [COLOR.player, COLOR.playerDark],
    [COLOR.self, COLOR.selfDark],
  ][rank];
  ctx.globalAlpha = tr.alpha;
  // soft shadow
  ctx.fillStyle = "rgba(0, 0, 0, 0.38)";
  ctx.beginPath();
  ctx.ellipse(x + r * 0.25, y + r * 0.45, r * 1.05, r * 0.7, 0, 0, Math.PI * 2);
  ctx.fill();
  if (rank === 2) {
    // you: a slow pulse around your entity
    const k = (now * 0.8) % 1;
    ctx.strokeStyle = `rgba(125, 255, 176, ${0.5 * (1 - k)})`;
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(x, y, r * (1.3 + 1.4 * k), 0, Math.PI * 2);
    ctx.stroke();
    ctx.fillStyle = "rgba(125, 255, 176, 0.14)";
    ctx.beginPath();
    ctx.arc(x, y, r * 1.9, 0, Math.PI * 2);
    ctx.fill();
  }
  // heading: a nose in the direction of travel
  const speed = Math.hypot(tr.vx, tr.vy);
  if (speed > 0.3) {
    const ax = tr.vx / speed;
    const ay = -tr.vy / speed;
    ctx.fillStyle = dark;
    ctx.beginPath();
    ctx.moveTo(x + ax * r * 1.75, y + ay * r * 1.75);
    ctx.lineTo(x - ay * r * 0.75, y + ax * r * 0.75);
    ctx.lineTo(x + ay * r * 0.75, y - ax * r * 0.75);
    ctx.closePath();
    ctx.fill();
  }
  ctx.fillStyle = fill;
  ctx.strokeStyle = rank === 0 ? dark : "rgba(255, 255, 255, 0.9)";
  ctx.lineWidth = rank === 0 ? 1.5 : 2;
  ctx.beginPath();
  if (rank === 0) {
    // NPCs are diamonds, players round: told apart without colour too
    ctx.moveTo(x, y - r * 1.15);
    ctx.lineTo(x + r * 1.15, y);
    ctx.lineTo(x, y + r * 1.15);
    ctx.lineTo(x - r * 1.15, y);
    ctx.closePath();
  } else {
    ctx.arc(x, y, r, 0, Math.PI * 2);
  }
  ctx.fill();
  ctx.stroke();
  if (tr.health !== null && tr.health > 0 && tr.health < 100) {
    const bw = r * 2.4;
    ctx.fillStyle = "rgba(0, 0, 0, 0.6)";
    ctx.fillRect(x - bw / 2, y + r + 4, bw, 3);
    ctx.fillStyle = tr.health > 40 ? COLOR.self : "#ff6b7a";
    ctx.fillRect(x - bw / 2, y + r + 4, (bw * tr.health) / 100, 3);
  }
  if (tr.wave) {
    // a waving star above the head
    const bob = Math.sin(now * 9) * 2;
    drawStar(x + r * 0.9, y - r - 9 + bob, 6, COLOR.wave);
  }
  ctx.globalAlpha = 1;
}

function drawStar(x, y, r, color) {
  ctx.fillStyle = color;
  ctx.beginPath();
  for (let i = 0; i < 10; i++) {
    const a = (i * Math.PI) / 5 - Math.PI / 2;
    const rr = i % 2 ? r * 0.45 : r;
    ctx.lineTo(x + Math.cos(a) * rr, y + Math.sin(a) * rr);
  }
  ctx.closePath();
  ctx.fill();
}

function drawLabel(tr, x, y, scale, rank) {
  if (rank === 0 && scale < 5) return; // zoomed far out, NPC labels are only noise
  const r = Math.max([4.5, 6, 7][rank], [0.7, 0.9, 1.0][rank] * scale);
  const text = rank === 2 ? "you" : rank === 1 ? `player ${shortId(tr.id)}` : shortId(tr.id);
  ctx.globalAlpha = tr.alpha;
  ctx.font = rank === 0 ? "10px system-ui, sans-serif" : "600 12px system-ui, sans-serif";
  ctx.textAlign = "center";
  ctx.lineJoin = "round";
  ctx.lineWidth = 3;
  ctx.strokeStyle = "rgba(4, 6, 14, 0.85)";
  const ty = y + r + (rank === 0 ? 12 : 16);
  ctx.strokeText(text, x, ty);
  ctx.fillStyle = rank === 0 ? COLOR.labelDim : rank === 2 ? COLOR.self : COLOR.label;
  ctx.fillText(text, x, ty);
  ctx.globalAlpha = 1;
}

function drawBubble(tr, x, y, scale, now) {
  const b = app.bubbles.get(tr.id);
  if (!b) return;
  if (now > b.until) {
    app.bubbles.delete(tr.id);
    return;
  }
  const text = b.text.length > 48 ? `${b.text.slice(0, 47)}…` : b.text;
  ctx.font = "13px system-ui, sans-serif";
  const tw = ctx.measureText(text).width;
  const r = Math.max(7, scale);
  const bw = tw + 18;
  const bh = 24;
  const bx = x - bw / 2;
  const by = y - r - 14 - bh;
  ctx.globalAlpha = clamp((b.until - now) / 0.6, 0, 1) * tr.alpha;
  ctx.fillStyle = "rgba(240, 245, 255, 0.95)";
  ctx.beginPath();
  ctx.roundRect(bx, by, bw, bh, 9);
  ctx.moveTo(x - 6, by + bh);
  ctx.lineTo(x, by + bh + 7);
  ctx.lineTo(x + 6, by + bh);
  ctx.fill();
  ctx.fillStyle = "#10162a";
  ctx.textAlign = "center";
  ctx.fillText(text, x, by + 16.5);
  ctx.globalAlpha = 1;
}

function drawMinimap(p, cam, scale, w, h, drawn) {
  const { dpr } = screen;
  const size = 180;
  mctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  mctx.clearRect(0, 0, size, size);
  if (!p) return;
  const [x0, y0, x1, y1] = p.world;
  const pad = 14;
  const k = (size - 2 * pad) / Math.max(x1 - x0, y1 - y0);
  const ox = pad + ((size - 2 * pad) - (x1 - x0) * k) / 2;
  const oy = pad + ((size - 2 * pad) - (y1 - y0) * k) / 2;
  const mx = (x) => ox + (x - x0) * k;
  const my = (y) => oy + (y1 - y) * k;
  mctx.fillStyle = "rgba(13, 20, 38, 0.9)";
  mctx.fillRect(mx(x0), my(y1), (x1 - x0) * k, (y1 - y0) * k);
  const step = chooseStep(k, 16);
  mctx.strokeStyle = "rgba(130, 160, 235, 0.12)";
  mctx.beginPath();
  for (let x = Math.ceil(x0 / step) * step; x < x1; x += step) {
    mctx.moveTo(Math.round(mx(x)) + 0.5, my(y1));
    mctx.lineTo(Math.round(mx(x)) + 0.5, my(y0));
  }
  for (let y = Math.ceil(y0 / step) * step; y < y1; y += step) {
    mctx.moveTo(mx(x0), Math.round(my(y)) + 0.5);
    mctx.lineTo(mx(x1), Math.round(my(y)) + 0.5);
  }
  mctx.stroke();
  mctx.strokeStyle = "rgba(90, 209, 255, 0.7)";
  mctx.lineWidth = 1;
  mctx.strokeRect(mx(x0) + 0.5, my(y1) + 0.5, (x1 - x0) * k - 1, (y1 - y0) * k - 1);
  // what the main view shows, within the world
  const vw = (w / scale) * k;
  const vh = (h / scale) * k;
  mctx.save();
  mctx.beginPath();
  mctx.rect(mx(x0), my(y1), (x1 - x0) * k, (y1 - y0) * k);
  mctx.clip();
  mctx.strokeStyle = "rgba(227, 233, 255, 0.45)";
  mctx.strokeRect(mx(cam[0]) - vw / 2, my(cam[1]) - vh / 2, vw, vh);
  mctx.restore();
  for (const tr of drawn) {
    if (p && tr.id === p.entityId) continue;
    mctx.fillStyle = isPlayerKind(tr.kind) ? COLOR.player : COLOR.npc;
    mctx.fillRect(mx(tr.x) - 1, my(tr.y) - 1, 2, 2);
  }
  mctx.fillStyle = "rgba(125, 255, 176, 0.25)";
  mctx.beginPath();
  mctx.arc(mx(cam[0]), my(cam[1]), 6, 0, Math.PI * 2);
  mctx.fill();
  mctx.fillStyle = COLOR.self;
  mctx.beginPath();
  mctx.arc(mx(cam[0]), my(cam[1]), 3, 0, Math.PI * 2);
  mctx.fill();
  mctx.fillStyle = "rgba(227, 233, 255, 0.6)";
  mctx.font = "10px system-ui, sans-serif";
  mctx.textAlign = "left";
  mctx.fillText(`${p.worldName} · ${Math.round(x1 - x0)} × ${Math.round(y1 - y0)} m`, pad, size - 3);
}

let hudAt = 0;
function updateHud(now, force = false) {
  if (now - hudAt < 0.125 && !force) return;
  hudAt = now;
  const p = app.player;
  const ok = app.status === "connected";
  ui.dot.className = `dot ${ok ? "ok" : app.status === "disconnected" ? "bad" : ""}`;
  ui.status.textContent = app.status;
  if (!p) return;
  ui.entity.textContent = shortId(p.entityId);
  ui.entity.title = p.entityId.toString();
  const pos = p.position();
  ui.pos.textContent = pos ? `${pos[0].toFixed(1)}, ${pos[1].toFixed(1)}` : "–";
  const { players, npcs } = app.counts;
  ui.visible.textContent = `${players} player${players === 1 ? "" : "s"} · ${npcs} NPC${npcs === 1 ? "" : "s"}`;
  ui.rtt.textContent = p.rtt === null ? "–" : `${(p.rtt * 1000).toFixed(1)} ms`;
  const last = p.lastSnapshot;
  ui.age.textContent = ok && last ? `${Math.round((now - last.receivedAt) * 1000)} ms` : "–";
}

// --- read-only hook for tests and the console ---------------------------------------------

window.shardworld = Object.freeze({
  /** A plain copy of what the page knows now (ids as decimal strings, metres). */
  state() {
    const p = app.player;
    const visible = [];
    if (p) {
      for (const [id, e] of p.visible()) {
        const role = id === p.entityId ? "self" : isPlayerKind(e.kind) ? "player" : "npc";
        visible.push({ id: id.toString(), kind: e.kind, role, npc: role === "npc", x: e.x, y: e.y });
      }
    }
    const last = p ? p.lastSnapshot : null;
    return {
      status: app.status,
      connected: app.status === "connected",
      entityId: p ? p.entityId.toString() : null,
      position: p ? p.position() : null,
      visible,
      chat: app.chat.map((c) => ({ ...c })),
      intent: [...app.intent],
      actions: app.wave ? ACTION_WAVE : 0,
      rtt: p ? p.rtt : null,
      snapshotAge: last ? nowS() - last.receivedAt : null,
      snapshots: app.snapshots,
      tick: last ? last.tick : null,
      world: p ? [...p.world] : null,
      worldName: p ? p.worldName : null,
      closeCode: app.closeInfo ? app.closeInfo.code : null,
      overlay: !ui.overlay.hidden,
      camera: app.camera ? [...app.camera] : null,
      zoom: app.zoom,
      selfColor: [...SELF_RGB],
    };
  },
});

resize();
requestAnimationFrame(frame);
join(false);
