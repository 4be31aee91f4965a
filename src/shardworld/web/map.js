// The live world map: draws the coordinator's state (GET map/state, live over map/events).
// Plain ES module, no build step. docs/map.md describes the state it reads.

// Zone colours by colour index: hue and saturation; lightness follows the load per cell.
export const PALETTE = [
  [212, 72], [28, 88], [135, 55], [352, 72], [272, 55], [48, 85],
  [178, 60], [318, 60], [92, 55], [236, 60], [12, 75], [196, 70],
];
const FLASH_MS = 2600;
const STALE_MS = 4000;
const MAX_LOG = 300;
const L_EMPTY = 17; // lightness (%) of a cell with no load
const L_FULL = 70; // ... of the busiest cell

const $ = (id) => document.getElementById(id);
const canvas = $("map");
const ctx = canvas.getContext("2d");

let state = null; // the last state received
let owners = null; // Int16Array, row-major, row 0 at y0
let density = null; // Float64Array per map cell (block sums spread over their cells)
let densityMax = 0;
let flashes = new Map(); // cell -> time its owner changed (performance.now())
let lastSeq = 0;
let lastStateAt = 0;
let geometry = null; // where the grid lies on the canvas (CSS pixels)
let animating = false;

function hsl(colour, light, satScale = 1) {
  const [h, s] = PALETTE[((colour % PALETTE.length) + PALETTE.length) % PALETTE.length];
  return `hsl(${h} ${Math.round(s * satScale)}% ${light.toFixed(1)}%)`;
}

function zoneColour(index, light = 55) {
  const z = state && state.zones[index];
  return hsl(z ? z.colour : index, light);
}

// --- decoding ------------------------------------------------------------------------------

function decodeOwners(st) {
  const out = new Int16Array(st.rows * st.cols);
  const runs = st.owner.runs;
  let at = 0;
  for (let i = 0; i + 1 < runs.length; i += 2) {
    out.fill(runs[i], at, at + runs[i + 1]);
    at += runs[i + 1];
  }
  return out;
}

function decodeDensity(st) {
  const d = st.density;
  const bin = atob(d.data);
  const n = d.rows * d.cols;
  const blocks = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    blocks[i] = (bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8)) * d.scale;
  }
  const out = new Float64Array(st.rows * st.cols);
  const b = d.block;
  let max = 0;
  for (let r = 0; r < st.rows; r++) {
    for (let c = 0; c < st.cols; c++) {
      const v = blocks[Math.floor(r / b) * d.cols + Math.floor(c / b)] / (b * b);
      out[r * st.cols + c] = v;
      if (v > max) max = v;
    }
  }
  densityMax = max;
  return out;
}

// --- drawing -------------------------------------------------------------------------------

function layout() {
  const box = canvas.parentElement.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.floor(box.width));
  const h = Math.max(1, Math.floor(box.height));
  if (canvas.width !== Math.floor(w * dpr) || canvas.height !== Math.floor(h * dpr)) {
    canvas.width = Math.floor(w * dpr);
    canvas.height = Math.floor(h * dpr);
  }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  if (!state) return null;
  const pad = 26;
  const cell = Math.max(1, Math.min((w - 2 * pad) / state.cols, (h - 2 * pad) / state.rows));
  const gw = cell * state.cols;
  const gh = cell * state.rows;
  return { w, h, cell, x: (w - gw) / 2, y: (h - gh) / 2, gw, gh };
}

// The canvas rectangle of cell (row, col): row 0 is the world's low y, drawn at the bottom.
function cellRect(g, row, col) {
  return [g.x + col * g.cell, g.y + (state.rows - 1 - row) * g.cell, g.cell, g.cell];
}

// What changes only with a new state or a new canvas size is drawn once into ``base`` (cells,
// grid) and ``borders``; a frame blits it and adds the flashes, borders and labels.
let base = null;
let baseKey = "";
let borders = null;
let centroids = [];

function buildBase(g) {
  const { rows, cols } = state;
  const zones = state.zones;
  base = base || document.createElement("canvas");
  base.width = canvas.width;
  base.height = canvas.height;
  const b = base.getContext("2d");
  const dpr = window.devicePixelRatio || 1;
  b.setTransform(dpr, 0, 0, dpr, 0, 0);
  // Cells: the owner's hue, brighter with more load; silent or failed zones greyed.
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const i = r * cols + c;
      const z = owners[i];
      const zone = zones[z];
      const share = densityMax > 0 ? Math.sqrt(density[i] / densityMax) : 0;
      const light = L_EMPTY + (L_FULL - L_EMPTY) * share;
      const sat = zone && zone.alive ? 1 : 0.25;
      b.fillStyle = hsl(zone ? zone.colour : z, light, sat);
      const [x, y, w, h] = cellRect(g, r, c);
      b.fillRect(x, y, w + 0.5, h + 0.5);
    }
  }
  // Faint cell grid where cells are big enough to read.
  if (g.cell >= 7) {
    b.strokeStyle = "rgba(0,0,0,0.28)";
    b.lineWidth = 1;
    b.beginPath();
    for (let c = 1; c < cols; c++) {
      const x = Math.round(g.x + c * g.cell) + 0.5;
      b.moveTo(x, g.y);
      b.lineTo(x, g.y + g.gh);
    }
    for (let r = 1; r < rows; r++) {
      const y = Math.round(g.y + r * g.cell) + 0.5;
      b.moveTo(g.x, y);
      b.lineTo(g.x + g.gw, y);
    }
    b.stroke();
  }
  // Zone borders: every edge between cells of different owners.
  borders = new Path2D();
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const z = owners[r * cols + c];
      const [x, y, w, h] = cellRect(g, r, c);
      if (c + 1 < cols && owners[r * cols + c + 1] !== z) {
        borders.moveTo(x + w, y);
        borders.lineTo(x + w, y + h);
      }
      if (r + 1 < rows && owners[(r + 1) * cols + c] !== z) {
        borders.moveTo(x, y);
        borders.lineTo(x + w, y);
      }
    }
  }
  // Labels sit at the mean of each zone's cells.
  const n = zones.length;
  const sumR = new Float64Array(n);
  const sumC = new Float64Array(n);
  const count = new Float64Array(n);
  for (let i = 0; i < owners.length; i++) {
    const z = owners[i];
    sumR[z] += Math.floor(i / cols) + 0.5;
    sumC[z] += (i % cols) + 0.5;
    count[z] += 1;
  }
  centroids = [];
  for (let z = 0; z < n; z++) {
    if (count[z]) centroids.push([z, sumR[z] / count[z], sumC[z] / count[z]]);
  }
}

function draw() {
  const g = layout();
  geometry = g;
  ctx.fillStyle = "#0c1016";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!g) return false;
  const key = `${state.version}:${canvas.width}x${canvas.height}`;
  if (key !== baseKey) {
    buildBase(g);
    baseKey = key;
  }
  ctx.save();
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.drawImage(base, 0, 0);
  ctx.restore();
  // Cells that just changed owner: a white flash fading out.
  const now = performance.now();
  const cols = state.cols;
  let flashing = false;
  for (const [i, t0] of flashes) {
    const age = now - t0;
    if (age >= FLASH_MS) {
      flashes.delete(i);
      continue;
    }
    flashing = true;
    const a = 1 - age / FLASH_MS;
    const [x, y, w, h] = cellRect(g, Math.floor(i / cols), i % cols);
    ctx.fillStyle = `rgba(255,255,255,${(0.7 * a * a).toFixed(3)})`;
    ctx.fillRect(x, y, w, h);
  }
  ctx.strokeStyle = "rgba(240,246,252,0.92)";
  ctx.lineWidth = Math.max(1.5, Math.min(3, g.cell / 6));
  ctx.lineCap = "round";
  ctx.stroke(borders);
  ctx.strokeStyle = "rgba(240,246,252,0.55)";
  ctx.lineWidth = 1;
  ctx.strokeRect(g.x - 0.5, g.y - 0.5, g.gw + 1, g.gh + 1);
  drawLabels(g);
  drawAxes(g);
  return flashing;
}

function drawLabels(g) {
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  for (const [z, row, col] of centroids) {
    const zone = state.zones[z];
    const cx = g.x + col * g.cell;
    const cy = g.y + (state.rows - row) * g.cell;
    const title = zone.name;
    const sub = zone.alive
      ? `${fmt(zone.entities)} entities · p99 ${zone.p99_ms.toFixed(1)} ms`
      : zone.status;
    ctx.font = "700 14px Inter, 'Segoe UI', system-ui, sans-serif";
    const w1 = ctx.measureText(title).width;
    ctx.font = "500 11px Inter, 'Segoe UI', system-ui, sans-serif";
    const w2 = ctx.measureText(sub).width;
    const bw = Math.max(w1, w2) + 16;
    const bh = 38;
    ctx.fillStyle = "rgba(10,13,18,0.78)";
    roundRect(cx - bw / 2, cy - bh / 2, bw, bh, 6);
    ctx.fill();
    ctx.fillStyle = zoneColour(z, 66);
    ctx.fillRect(cx - bw / 2, cy - bh / 2 + 6, 3, bh - 12);
    ctx.font = "700 14px Inter, 'Segoe UI', system-ui, sans-serif";
    ctx.fillStyle = "#f0f6fc";
    ctx.fillText(title, cx + 1, cy - 8);
    ctx.font = "500 11px Inter, 'Segoe UI', system-ui, sans-serif";
    ctx.fillStyle = "#aab6c6";
    ctx.fillText(sub, cx + 1, cy + 9);
  }
}

function drawAxes(g) {
  const [x0, y0, x1, y1] = state.bounds;
  ctx.font = "11px Inter, 'Segoe UI', system-ui, sans-serif";
  ctx.fillStyle = "#6e7b8f";
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  ctx.fillText(`${num(x0)}`, g.x, g.y + g.gh + 5);
  ctx.textAlign = "right";
  ctx.fillText(`x ${num(x1)} m`, g.x + g.gw, g.y + g.gh + 5);
  ctx.textBaseline = "bottom";
  ctx.textAlign = "left";
  ctx.fillText(`y ${num(y1)} m`, g.x, g.y - 5);
  ctx.textAlign = "right";
  ctx.fillText(`${state.cols} × ${state.rows} cells of ${num(state.cell_size)} m`,
    g.x + g.gw, g.y - 5);
}

function roundRect(x, y, w, h, r) {
  ctx.beginPath();
  ctx.moveTo(x + r, y);
  ctx.arcTo(x + w, y, x + w, y + h, r);
  ctx.arcTo(x + w, y + h, x, y + h, r);
  ctx.arcTo(x, y + h, x, y, r);
  ctx.arcTo(x, y, x + w, y, r);
  ctx.closePath();
}

function redraw() {
  const again = draw();
  if (again && !animating) {
    animating = true;
    requestAnimationFrame(tick);
  }
}

function tick() {
  animating = draw();
  if (animating) requestAnimationFrame(tick);
}

// --- the side panel ------------------------------------------------------------------------

function fmt(n) {
  return Math.round(n).toLocaleString("en-US");
}

function num(v) {
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function renderTotals() {
  const t = state.totals;
  const box = $("totals");
  box.replaceChildren();
  for (const [k, v] of [
    ["zones", `${t.zones_alive}/${t.zones}`],
    ["entities", fmt(t.entities)],
    ["players", fmt(t.observers)],
    ["handoffs/s", fmt(t.handoffs_per_s)],
  ]) {
    const d = el("div");
    d.append(el("div", "k", k), el("div", "v num", v));
    box.append(d);
  }
  $("grid").textContent = `${state.cols}×${state.rows} cells · ${fmt(t.ghosts)} ghosts`;
}

function renderZones() {
  const box = $("zones");
  box.replaceChildren();
  const budget = state.tick_budget_ms;
  const maxEnt = Math.max(1, ...state.zones.map((z) => z.entities));
  for (const z of state.zones) {
    if (z.status === "retired" && !z.cells) continue;
    const card = el("div", "zone");
    card.dataset.zone = z.name;
    const sw = el("div", "sw");
    sw.style.background = zoneColour(z.index, 55);
    const body = el("div");
    const top = el("div", "top");
    top.append(el("span", "name", z.name), el("span", `pill ${z.status}`, z.status));
    const facts = el("span", "facts");
    facts.append("cells ", el("b", "num", fmt(z.cells)), " · players ", el("b", "num", fmt(z.observers)));
    top.append(facts);
    const bars = el("div", "bars");
    const frac = budget > 0 ? z.p99_ms / budget : 0;
    const p99 = el("div", `bar p99${frac > 0.8 ? " bad" : frac > 0.5 ? " warn" : ""}`);
    const fill = el("i");
    fill.style.width = `${Math.min(100, frac * 100).toFixed(1)}%`;
    p99.append(fill);
    const p99v = el("span", "val num");
    p99v.append(`${z.p99_ms.toFixed(1)} `, el("small", "", `/ ${num(budget)} ms`));
    const ent = el("div", "bar");
    const efill = el("i");
    efill.style.width = `${((100 * z.entities) / maxEnt).toFixed(1)}%`;
    efill.style.background = zoneColour(z.index, 58);
    ent.append(efill);
    bars.append(el("span", "", "tick p99"), p99, p99v);
    bars.append(el("span", "", "entities"), ent, el("span", "val num", fmt(z.entities)));
    const sub = el("div", "sub");
    const bit = (label, value) => {
      const s = el("span");
      s.append(`${label} `, el("b", "num", value));
      return s;
    };
    sub.append(
      bit("p50", `${z.p50_ms.toFixed(1)} ms`),
      bit("ghosts", fmt(z.ghosts)),
      bit("handoffs/s in", fmt(z.handoffs_in_per_s)),
      bit("out", fmt(z.handoffs_out_per_s)),
    );
    body.append(top, bars, sub);
    card.append(sw, body);
    box.append(card);
  }
}

function chip(name) {
  const i = state.zones.findIndex((z) => z.name === name);
  const c = el("span", "chip", name ?? "?");
  c.style.background = i >= 0 ? zoneColour(i, 62) : "#8592a6";
  return c;
}

const KINDS = {
  cell_move: ["move", "move"],
  failover: ["failover", "failover"],
  split: ["split", "split"],
  merge: ["merge", "merge"],
  zone_added: ["added", "added"],
  zone_started: ["started", "started"],
  zone_start_failed: ["failover", "start failed"],
  zone_stopped: ["leader", "stopped"],
  zone_up: ["up", "zone up"],
  zone_silent: ["silent", "silent"],
  leader: ["leader", "leader"],
  leader_lost: ["lost", "lease lost"],
};

function describe(ev) {
  const span = el("span");
  const cells = (n) => `${fmt(n)} cell${n === 1 ? "" : "s"}`;
  switch (ev.type) {
    case "cell_move":
      span.append(`${cells(ev.cells ?? 0)} `);
      if (ev.from) span.append(chip(ev.from), " → ", chip(ev.to));
      break;
    case "failover":
      span.append(chip(ev.dead), ` died; `, chip(ev.adopter), ` adopts ${cells(ev.cells ?? 0)}`);
      break;
    case "split":
      span.append(chip(ev.zone), " split: ", cells(ev.cells ?? 0), " → ", chip(ev.new_zone));
      break;
    case "merge":
      span.append(chip(ev.remove), " merged into ", chip(ev.keep), ` (${cells(ev.cells ?? 0)})`);
      break;
    case "zone_added":
      span.append("new zone ", chip(ev.zone), ev.for_zone ? " for " : "");
      if (ev.for_zone) span.append(chip(ev.for_zone));
      break;
    case "zone_started":
      span.append(chip(ev.zone), ` up in ${(ev.startup_s ?? 0).toFixed(1)} s`);
      break;
    case "zone_start_failed":
    case "zone_stopped":
      span.append(chip(ev.zone), ev.reason ? ` (${ev.reason})` : "");
      break;
    case "zone_up":
      span.append(chip(ev.zone), " heartbeats arriving");
      break;
    case "zone_silent":
      span.append(chip(ev.zone), " no heartbeat");
      break;
    case "leader":
      span.append(`${ev.node ?? state.node ?? "coordinator"} leads (token ${ev.token ?? "?"})`);
      break;
    case "leader_lost":
      span.append(`lease lost (token ${ev.token ?? "?"})`);
      break;
    default:
      span.append(JSON.stringify(ev));
  }
  if (ev.epoch !== undefined && ev.type !== "leader") span.append(el("span", "why", ` · epoch ${ev.epoch}`));
  // The planner's reasons are long: they show on hover.
  if (ev.reason) span.title = ev.reason;
  return span;
}

function renderEvents(events, initial) {
  const log = $("log");
  const fresh = events.filter((e) => e.seq > lastSeq);
  if (!fresh.length) return;
  const empty = log.querySelector(".empty");
  if (empty) empty.remove();
  // The cell moves of one map epoch make one line.
  const groups = [];
  for (const ev of fresh) {
    const last = groups[groups.length - 1];
    if (ev.type === "cell_move" && last && last[0].type === "cell_move" && last[0].epoch === ev.epoch) {
      last.push(ev);
    } else {
      groups.push([ev]);
    }
  }
  for (const group of groups) {
    const ev = group[0];
    const [cls, label] = KINDS[ev.type] ?? ["leader", ev.type];
    const row = el("div", initial ? "ev" : "ev fresh");
    row.dataset.type = ev.type;
    row.dataset.seq = String(group[group.length - 1].seq);
    const t = new Date(ev.time * 1000);
    let text;
    if (group.length > 1) {
      text = el("span");
      group.forEach((m, k) => {
        const line = el("div");
        line.append(describe({ ...m, epoch: undefined }));
        if (k === group.length - 1) line.append(el("span", "why", ` · epoch ${ev.epoch}`));
        text.append(line);
      });
    } else {
      text = describe(ev);
    }
    row.append(
      el("span", "t num", t.toLocaleTimeString("en-GB", { hour12: false })),
      el("span", `kind ${cls}`, label),
      text,
    );
    log.prepend(row);
  }
  while (log.children.length > MAX_LOG) log.lastChild.remove();
  lastSeq = Math.max(lastSeq, ...fresh.map((e) => e.seq));
  $("ev-count").textContent = `${log.children.length} shown`;
}

function renderHeader() {
  $("world").textContent = state.world || "—";
  $("epoch").textContent = String(state.epoch);
  $("node").textContent = `${state.node}${state.leader ? " (leader)" : " (standby)"}`;
  $("maps").textContent = fmt(state.maps_published);
  $("scale-max").textContent = densityMax > 0 ? fmt(densityMax) : "0";
  $("scale-note").textContent =
    state.density.block > 1 ? `(summed over ${state.density.block}×${state.density.block} cells)` : "";
  const b = document.body.dataset;
  b.ready = "1";
  b.version = String(state.version);
  b.epoch = String(state.epoch);
  b.zones = String(state.zones.filter((z) => z.cells > 0).length);
  b.entities = String(state.totals.entities);
}

// --- state in ------------------------------------------------------------------------------

function accept(st) {
  if (!st || !st.ready) return;
  const restarted = state && (st.version < state.version || st.last_event_seq < lastSeq);
  if (restarted) {
    lastSeq = 0;
    $("log").replaceChildren();
  }
  const initial = !state;
  const next = decodeOwners(st);
  if (owners && owners.length === next.length && state.epoch !== st.epoch) {
    const t = performance.now();
    for (let i = 0; i < next.length; i++) if (owners[i] !== next[i]) flashes.set(i, t);
  } else if (owners && owners.length !== next.length) {
    flashes = new Map();
  }
  state = st;
  owners = next;
  density = decodeDensity(st);
  lastStateAt = performance.now();
  renderHeader();
  renderTotals();
  renderZones();
  renderEvents(st.events, initial);
  setLive("live");
  redraw();
}

function setLive(kind) {
  const live = $("live");
  if (live.dataset.state === kind) return;
  live.dataset.state = kind;
  $("live-text").textContent = { live: "live", stale: "stale", offline: "reconnecting" }[kind];
}

function connect() {
  if (typeof EventSource === "undefined") {
    poll();
    return;
  }
  const es = new EventSource("map/events");
  es.addEventListener("state", (e) => {
    try {
      accept(JSON.parse(e.data));
    } catch (err) {
      console.error("map: bad state", err);
    }
  });
  es.onerror = () => setLive("offline");
}

async function poll() {
  for (;;) {
    try {
      const r = await fetch("map/state", { cache: "no-store" });
      if (r.ok) accept(await r.json());
    } catch {
      setLive("offline");
    }
    await new Promise((ok) => setTimeout(ok, 500));
  }
}

setInterval(() => {
  $("clock").textContent = new Date().toLocaleTimeString("en-GB", { hour12: false });
  if (state && performance.now() - lastStateAt > STALE_MS && $("live").dataset.state === "live") {
    setLive("stale");
  }
}, 500);

// --- hover: what is in a cell --------------------------------------------------------------

canvas.addEventListener("mousemove", (e) => {
  const tip = $("tip");
  const g = geometry;
  if (!g || !state) return;
  const rect = canvas.getBoundingClientRect();
  const px = e.clientX - rect.left;
  const py = e.clientY - rect.top;
  const col = Math.floor((px - g.x) / g.cell);
  const row = state.rows - 1 - Math.floor((py - g.y) / g.cell);
  if (col < 0 || col >= state.cols || row < 0 || row >= state.rows) {
    tip.style.display = "none";
    return;
  }
  const i = row * state.cols + col;
  const zone = state.zones[owners[i]];
  const [x0, y0] = state.bounds;
  const cs = state.cell_size;
  tip.replaceChildren(
    el("div", "", `cell ${i} (row ${row}, col ${col})`),
    el("div", "", `x ${num(x0 + col * cs)}–${num(x0 + (col + 1) * cs)}, y ${num(y0 + row * cs)}–${num(y0 + (row + 1) * cs)}`),
    el("div", "", `owner ${zone ? zone.name : owners[i]} · load ${density[i].toFixed(0)}`),
  );
  tip.style.display = "block";
  tip.style.left = `${Math.min(px + 14, rect.width - 230)}px`;
  tip.style.top = `${py + 14}px`;
});
canvas.addEventListener("mouseleave", () => {
  $("tip").style.display = "none";
});

new ResizeObserver(() => redraw()).observe(canvas.parentElement);

// Read-only hooks for tests and for operators poking at the console.
window.shardworldMap = Object.freeze({
  palette: PALETTE.map(([h, s]) => [h, s]),
  state: () => (state ? JSON.parse(JSON.stringify(state)) : null),
  owners: () => (owners ? Array.from(owners) : null),
  // Centre of cell (row, col) in canvas device pixels (for reading the drawing back).
  cellCenter: (row, col) => {
    if (!geometry || !state) return null;
    const [x, y, w, h] = cellRect(geometry, row, col);
    const dpr = window.devicePixelRatio || 1;
    return [Math.floor((x + w / 2) * dpr), Math.floor((y + h / 2) * dpr)];
  },
});

connect();
