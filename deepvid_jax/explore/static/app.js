// deepvid explore: the page. Plain ES module, no dependencies; Canvas for the dataset and the
// images, SVG for the parallel coordinates and the morph chart. All URLs are relative.

const $ = (id) => document.getElementById(id);
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf"];
const SVGNS = "http://www.w3.org/2000/svg";
const PAGE = 48;
const PC = { top: 14, height: 260, lo: -5, hi: 5, left: 34, step: 64 };

const S = {
  meta: null, points: null, index: 0, b: 1, key: 0, band: null, code: null, mean: null,
  order: null, selection: null, filter: null, colour: "label", sort: "index", desc: false,
  page: 0, edited: null, lastExplain: null, lastMorph: null, lastStability: null,
  lastMethods: null, lastEdit: null, student: "lasso", errors: [], ready: false,
  sent: {}, timings: [], paintedAt: null,
};
window.__explore = S;
S.scatterXY = () => scatter.xy;

// ---- messages --------------------------------------------------------------------------------
function message(text, isError = false) {
  const m = $("msg");
  m.textContent = text;
  m.className = isError ? "error" : "";
  if (isError) S.errors.push(text);
}

// ---- the WebSocket: a sequence number per request kind; only the newest answer is used -----
const seq = {};
let ws = null;
let wsReady = null;
const handlers = {};

function connect() {
  const url = new URL("ws", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(url);
  wsReady = new Promise((resolve) => ws.addEventListener("open", resolve, { once: true }));
  ws.addEventListener("message", (ev) => {
    const reply = JSON.parse(ev.data);
    if (reply.op && reply.seq !== seq[reply.op]) return; // an older answer: a newer one comes
    $("status").textContent = "";
    if (reply.error) { message(reply.error, true); return; }
    if (reply.op && handlers[reply.op]) {
      handlers[reply.op](reply.result);
      const t0 = S.sent[`${reply.op}:${reply.seq}`];
      // answer drawn: request -> result on screen, in ms (what a person waits)
      if (t0 !== undefined) S.timings.push({ op: reply.op, full: !!reply.result.full, ms: performance.now() - t0 });
    }
  });
  ws.addEventListener("close", () => message("the server closed the connection; reload.", true));
}

async function request(op, payload) {
  seq[op] = (seq[op] || 0) + 1;
  await wsReady;
  $("status").textContent = "computing…";
  S.sent[`${op}:${seq[op]}`] = performance.now();
  ws.send(JSON.stringify({ op, seq: seq[op], ...payload }));
}

async function getJSON(path) {
  const r = await fetch(path);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

// ---- drawing helpers ---------------------------------------------------------------------
function decodeB64(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

function drawImage(canvas, bytes, offset, shape) {
  const [h, w, c] = shape;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let p = 0; p < h * w; p++) {
    for (let k = 0; k < 3; k++) img.data[4 * p + k] = bytes[offset + p * c + (c === 1 ? 0 : k)];
    img.data[4 * p + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function diverging(v) { // v in [-1, 1] -> RdBu-like rgb
  const t = Math.max(-1, Math.min(1, v));
  if (t >= 0) return [255, Math.round(255 * (1 - t)), Math.round(255 * (1 - t))];
  return [Math.round(255 * (1 + t)), Math.round(255 * (1 + t)), 255];
}

function drawMap(canvas, map, lim) { // map [H][W] floats
  const h = map.length, w = map[0].length;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const [r, g, b] = diverging(map[y][x] / (lim || 1));
    const p = 4 * (y * w + x);
    img.data[p] = r; img.data[p + 1] = g; img.data[p + 2] = b; img.data[p + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function absMax(a) { let m = 0; for (const v of a.flat(3)) m = Math.max(m, Math.abs(v)); return m; }

function cell(canvasClass, caption, onClick) {
  const d = document.createElement("div");
  d.className = "cell";
  const c = document.createElement("canvas");
  c.className = canvasClass;
  const s = document.createElement("span");
  s.textContent = caption;
  d.append(c, s);
  if (onClick) d.addEventListener("click", onClick);
  return [d, c];
}

function bars(el, rows) { // rows: [[label, [values...], classes]]
  el.replaceChildren();
  for (const [label, values] of rows) {
    const d = document.createElement("div");
    d.className = "bar";
    const l = document.createElement("span");
    l.textContent = label;
    l.style.width = "28px";
    d.append(l);
    values.forEach((v, j) => {
      const f = document.createElement("span");
      f.className = j ? "fill student" : "fill";
      f.style.width = `${Math.round(100 * v)}px`;
      f.title = v.toFixed(3);
      d.append(f);
    });
    const t = document.createElement("span");
    t.textContent = values.map((v) => v.toFixed(2)).join(" | ");
    d.append(t);
    el.append(d);
  }
}

// ---- URL state -------------------------------------------------------------------------------
function saveURL() {
  const p = new URLSearchParams({ i: S.index, b: S.b, key: S.key, colour: S.colour,
    student: S.student });
  if (S.band) p.set("band", S.band.map(([l, h]) => `${+l.toFixed(3)}:${+h.toFixed(3)}`).join(","));
  history.replaceState(null, "", `#${p}`);
}

function loadURL() {
  const p = new URLSearchParams(location.hash.slice(1));
  const n = S.meta.dataset.count;
  const int = (v, d) => (v !== null && /^\d+$/.test(v) && +v < n ? +v : d);
  S.index = int(p.get("i"), 0);
  S.b = int(p.get("b"), Math.min(1, n - 1));
  if (p.get("key") && /^\d+$/.test(p.get("key"))) S.key = +p.get("key");
  if (p.get("colour")) S.colour = p.get("colour");
  if (["lasso", "ridge", "kd"].includes(p.get("student"))) S.student = p.get("student");
  const band = p.get("band");
  if (band && S.meta.latent_dim) {
    const pairs = band.split(",").map((s) => s.split(":").map(Number));
    if (pairs.length === S.meta.latent_dim && pairs.every((p) => p.length === 2)) S.band = pairs.map((p) => p.map(Math.fround));
  }
}

// ---- dataset view ------------------------------------------------------------------------------
const scatter = { sx: null, sy: null, xy: null, lasso: null };

function colourOf(i) {
  const P = S.points;
  if (S.colour === "label") return PALETTE[P.labels[i] % 10];
  if (S.colour === "prediction") return PALETTE[P.preds[i] % 10];
  if (S.colour === "correct") return P.labels[i] === P.preds[i] ? "#9ab" : "#d62728";
  const q = P.quantities[S.colour];
  const t = (q[i] - scatter.qmin) / (scatter.qmax - scatter.qmin || 1);
  return `rgb(${Math.round(40 + 200 * t)},${Math.round(60 + 60 * (1 - t))},${Math.round(200 * (1 - t))})`;
}

function layoutScatter() {
  const xy = S.points.xy;
  const c = $("scatter");
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (const [x, y] of xy) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
  const pad = 10;
  scatter.sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (c.width - 2 * pad);
  scatter.sy = (y) => pad + ((y1 - y) / (y1 - y0 || 1)) * (c.height - 2 * pad);
  scatter.xy = xy.map(([x, y]) => [scatter.sx(x), scatter.sy(y)]);
  const q = S.points.quantities[S.colour];
  if (q) { scatter.qmin = Math.min(...q); scatter.qmax = Math.max(...q); }
}

function drawScatter() {
  const c = $("scatter");
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  const sel = S.selection;
  const n = scatter.xy.length;
  const r = n > 3000 ? 1.5 : 2.5;
  for (let i = 0; i < n; i++) {
    const [x, y] = scatter.xy[i];
    ctx.globalAlpha = sel && !sel.has(i) ? 0.12 : 0.85;
    ctx.fillStyle = colourOf(i);
    ctx.fillRect(x - r, y - r, 2 * r, 2 * r);
  }
  ctx.globalAlpha = 1;
  const [cx, cy] = scatter.xy[S.index];
  ctx.strokeStyle = "#000"; ctx.lineWidth = 2;
  ctx.beginPath(); ctx.arc(cx, cy, 6, 0, 2 * Math.PI); ctx.stroke();
  if (S.edited && S.edited.projection === S.points.projection) {
    const ex = scatter.sx(S.edited.xy[0]), ey = scatter.sy(S.edited.xy[1]);
    ctx.fillStyle = "#000";
    ctx.beginPath(); ctx.moveTo(ex, ey - 7); ctx.lineTo(ex + 6, ey + 5); ctx.lineTo(ex - 6, ey + 5); ctx.fill();
    ctx.beginPath(); ctx.setLineDash([3, 3]); ctx.moveTo(cx, cy); ctx.lineTo(ex, ey); ctx.stroke(); ctx.setLineDash([]);
  }
  if (scatter.lasso) {
    ctx.strokeStyle = "#333"; ctx.lineWidth = 1;
    ctx.beginPath();
    scatter.lasso.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.stroke();
  }
  $("projection-kind").textContent = `${S.points.projection.toUpperCase()} of ${S.meta.projection_source}`
    + (S.points.tsne_error ? ` (t-SNE failed: ${S.points.tsne_error})` : "");
}

function inside(poly, x, y) {
  let hit = false;
  for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
    const [xi, yi] = poly[i], [xj, yj] = poly[j];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) hit = !hit;
  }
  return hit;
}

function setupScatter() {
  const c = $("scatter");
  const pos = (ev) => { const r = c.getBoundingClientRect(); return [ev.clientX - r.left, ev.clientY - r.top]; };
  c.addEventListener("pointerdown", (ev) => { c.setPointerCapture(ev.pointerId); scatter.lasso = [pos(ev)]; });
  c.addEventListener("pointermove", (ev) => { if (scatter.lasso) { scatter.lasso.push(pos(ev)); drawScatter(); } });
  c.addEventListener("pointerup", (ev) => {
    const path = scatter.lasso || [pos(ev)];
    scatter.lasso = null;
    const xs = path.map((p) => p[0]), ys = path.map((p) => p[1]);
    const extent = Math.max(...xs) - Math.min(...xs) + Math.max(...ys) - Math.min(...ys);
    if (path.length < 4 || extent < 8) { // a click: choose the nearest point
      const [x, y] = path[path.length - 1];
      let best = -1, bd = 100;
      scatter.xy.forEach(([px, py], i) => { const d = (px - x) ** 2 + (py - y) ** 2; if (d < bd) { bd = d; best = i; } });
      if (best < 0) { drawScatter(); return; }
      if (ev.shiftKey || ev.ctrlKey || ev.metaKey) {
        S.selection = new Set(S.selection || []);
        if (S.selection.has(best)) S.selection.delete(best); else S.selection.add(best);
        S.filter = null; S.page = 0; refreshSelection();
      } else choose(best);
      return;
    }
    const sel = new Set();
    scatter.xy.forEach(([x, y], i) => { if (inside(path, x, y)) sel.add(i); });
    if (ev.shiftKey && S.selection) for (const i of S.selection) sel.add(i);
    S.selection = sel; S.filter = null; S.page = 0;
    refreshSelection();
  });
}

function refreshSelection() {
  $("selection-info").textContent = S.selection ? `${S.selection.size} selected` : "";
  for (const td of $("confusion").querySelectorAll("td")) {
    td.classList.toggle("active", !!S.filter && +td.dataset.r === S.filter[0] && +td.dataset.c === S.filter[1]);
  }
  drawScatter();
  drawGrid();
}

function drawConfusion() {
  const t = $("confusion");
  const K = S.meta.num_classes, conf = S.points.confusion;
  t.replaceChildren();
  const head = t.insertRow();
  head.append(document.createElement("th"));
  for (let c = 0; c < K; c++) { const th = document.createElement("th"); th.textContent = c; head.append(th); }
  const mx = Math.max(...conf.flat());
  for (let r = 0; r < K; r++) {
    const row = t.insertRow();
    const th = document.createElement("th"); th.textContent = r; row.append(th);
    for (let c = 0; c < K; c++) {
      const td = row.insertCell();
      td.textContent = conf[r][c] || "";
      td.dataset.r = r; td.dataset.c = c;
      const a = conf[r][c] / (mx || 1);
      td.style.background = r === c ? `rgba(76,120,168,${a})` : `rgba(214,39,40,${Math.min(1, 4 * a)})`;
      td.addEventListener("click", () => {
        const P = S.points;
        S.selection = new Set(P.labels.map((l, i) => (l === r && P.preds[i] === c ? i : -1)).filter((i) => i >= 0));
        S.filter = [r, c]; S.page = 0;
        refreshSelection();
      });
    }
  }
}

function gridIndices() {
  const n = S.points.labels.length;
  let idx = S.selection ? [...S.selection] : [...Array(n).keys()];
  if (S.sort !== "index") {
    const q = S.points.quantities[S.sort];
    idx.sort((a, b) => (S.desc ? q[b] - q[a] : q[a] - q[b]) || a - b);
  } else if (S.desc) idx.reverse();
  return idx;
}

let gridToken = 0;
async function drawGrid() {
  const idx = gridIndices();
  const pages = Math.max(1, Math.ceil(idx.length / PAGE));
  S.page = Math.min(S.page, pages - 1);
  const shown = idx.slice(S.page * PAGE, (S.page + 1) * PAGE);
  $("page-info").textContent = ` ${S.page + 1}/${pages} (${idx.length}) `;
  const token = ++gridToken;
  const grid = $("grid");
  if (!shown.length) { grid.replaceChildren(); grid.dataset.indices = ""; return; }
  const batch = await getJSON(`api/images?idx=${shown.join(",")}`);
  if (token !== gridToken) return;
  const bytes = decodeB64(batch.data);
  const size = batch.shape.reduce((a, b) => a * b, 1);
  grid.replaceChildren();
  shown.forEach((i, k) => {
    const P = S.points;
    const [d, c] = cell("img", `${i}: ${P.labels[i]}→${P.preds[i]}`, () => choose(i));
    d.dataset.index = i;
    if (i === S.index) d.classList.add("chosen");
    drawImage(c, bytes, k * size, batch.shape);
    grid.append(d);
  });
  grid.dataset.indices = shown.join(",");
}

function setupDatasetControls() {
  const colour = $("colour"), sort = $("sort");
  const qs = Object.keys(S.points.quantities);
  for (const v of ["label", "prediction", "correct", ...qs]) colour.add(new Option(v, v));
  for (const v of ["index", ...qs]) sort.add(new Option(v, v));
  if (![...colour.options].some((o) => o.value === S.colour)) S.colour = "label";
  colour.value = S.colour;
  colour.addEventListener("change", () => { S.colour = colour.value; layoutScatter(); drawScatter(); saveURL(); });
  sort.addEventListener("change", () => { S.sort = sort.value; S.page = 0; drawGrid(); });
  $("sort-desc").checked = S.desc;
  $("sort-desc").addEventListener("change", () => { S.desc = $("sort-desc").checked; drawGrid(); });
  $("prev-page").addEventListener("click", () => { S.page = Math.max(0, S.page - 1); drawGrid(); });
  $("next-page").addEventListener("click", () => { S.page += 1; drawGrid(); });
  $("clear-selection").addEventListener("click", () => { S.selection = null; S.filter = null; refreshSelection(); });
}

async function pollProjection() {
  if (S.points.projection === "tsne" || S.points.tsne_error) return;
  await new Promise((r) => setTimeout(r, 1500));
  try {
    const p = await getJSON("api/points");
    if (p.projection !== S.points.projection || p.tsne_error) {
      S.points = p; layoutScatter(); drawScatter();
    }
  } catch (e) { message(`projection: ${e.message}`, true); return; }
  pollProjection();
}

// ---- choosing an instance --------------------------------------------------------------
function choose(i) {
  S.index = i;
  S.edited = null;
  $("chosen").textContent = `#${i} (label ${S.points.labels[i]}, predicted ${S.points.preds[i]})`;
  $("morph-a").textContent = i;
  drawScatter();
  for (const d of $("grid").children) d.classList.toggle("chosen", +d.dataset.index === i);
  request("probs", { index: i });
  if (S.meta.live) request("traverse", { index: i });
  saveURL();
}

handlers.probs = (r) => {
  bars($("probs"), r.probs.map((p, k) => [S.meta.class_names[k], [p]]));
};

// ---- latent view -----------------------------------------------------------------------------
const yOf = (v) => PC.top + ((PC.hi - v) / (PC.hi - PC.lo)) * PC.height;
const vOf = (y) => PC.hi - ((y - PC.top) / PC.height) * (PC.hi - PC.lo);
const clampV = (v) => Math.max(PC.lo, Math.min(PC.hi, v));
// bands are kept as the float32 numbers the server samples with, so what is drawn is sampled
const q = (v) => Math.fround(Math.round(v * 1000) / 1000);
const quantise = () => { S.band = S.band.map(([l, h]) => [q(l), q(h)]); };

function studentSpec() {
  const m = $("student").value;
  return m === "kd" ? { method: m, temperature: +$("kd-temp").value, steps: +$("kd-steps").value } : { method: m };
}

function explain(full) {
  if (!S.meta.live || !S.band) return;
  saveURL();
  request("explain", { index: S.index, band: S.band, key: S.key, full, student: studentSpec() });
  if (full && $("stability").checked) stability();
}

function edit() {
  request("edit", { index: S.index, code: S.code });
}

handlers.traverse = (r) => {
  S.mean = r.code; S.order = r.order;
  S.code = r.code.slice();
  const Z = S.meta.latent_dim;
  if (!S.band || S.band.length !== Z) S.band = Array.from({ length: Z }, () => [-1, 1]);
  drawParcoords();
  drawAxisTable();
  drawTraversals(r);
  explain(true);
  edit();
};

function drawParcoords() {
  const svg = $("parcoords");
  svg.replaceChildren();
  const Z = S.meta.latent_dim;
  const step = PC.step;
  svg.setAttribute("width", PC.left + Z * step);
  const mk = (tag, attrs) => { const e = document.createElementNS(SVGNS, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); svg.append(e); return e; };
  for (const v of [PC.lo, 0, PC.hi]) {
    mk("text", { x: 2, y: yOf(v) + 4, "font-size": 9 }).textContent = v;
  }
  // the edited code as a polyline across the ordered axes
  const pts = S.order.map((d, k) => `${PC.left + k * step},${yOf(clampV(S.code[d]))}`).join(" ");
  mk("polyline", { points: pts, fill: "none", stroke: "#d62728", "stroke-width": 1 });
  const meanPts = S.order.map((d, k) => `${PC.left + k * step},${yOf(clampV(S.mean[d]))}`).join(" ");
  mk("polyline", { points: meanPts, fill: "none", stroke: "#999", "stroke-dasharray": "3 3" });
  S.order.forEach((d, k) => {
    const x = PC.left + k * step;
    mk("line", { class: "axis", x1: x, x2: x, y1: PC.top, y2: PC.top + PC.height });
    mk("text", { x: x - 8, y: PC.top + PC.height + 14, "font-size": 10 }).textContent = `z${d}`;
    const [lo, hi] = S.band[d];
    const yHi = yOf(S.mean[d] + hi), yLo = yOf(S.mean[d] + lo);
    const body = mk("rect", { class: "band", x: x - 7, y: yHi, width: 14, height: Math.max(0, yLo - yHi),
      "data-dim": d, "data-low": lo, "data-high": hi, "data-mean": S.mean[d] });
    const hHi = mk("rect", { class: "handle handle-high", x: x - 9, y: yHi - 3, width: 18, height: 6, "data-dim": d });
    const hLo = mk("rect", { class: "handle handle-low", x: x - 9, y: yLo - 3, width: 18, height: 6, "data-dim": d });
    const val = mk("circle", { class: "value", cx: x, cy: yOf(clampV(S.code[d])), r: 5, "data-dim": d });
    drag(hHi, (y) => { S.band[d][1] = Math.max(S.band[d][0], clampV(vOf(y)) - S.mean[d]); });
    drag(hLo, (y) => { S.band[d][0] = Math.min(S.band[d][1], clampV(vOf(y)) - S.mean[d]); });
    drag(body, (y, y0, start) => {
      const dv = vOf(y) - vOf(y0);
      S.band[d] = [start[0] + dv, start[1] + dv];
    }, () => S.band[d].slice());
    drag(val, (y) => { S.code[d] = clampV(vOf(y)); }, null, true);
  });
}

function drag(el, move, snapshot = null, isValue = false) {
  el.addEventListener("pointerdown", (ev) => {
    ev.preventDefault();
    const svg = $("parcoords");
    const box = () => svg.getBoundingClientRect();
    const y0 = ev.clientY - box().top;
    const start = snapshot ? snapshot() : null;
    const onMove = (e) => {
      move(e.clientY - box().top, y0, start);
      quantise();
      drawParcoords(); drawAxisTable();
      if (isValue) edit(); else explain(false);
    };
    const onUp = () => {
      window.removeEventListener("pointermove", onMove);
      window.removeEventListener("pointerup", onUp);
      if (isValue) edit(); else explain(true);
    };
    window.addEventListener("pointermove", onMove);
    window.addEventListener("pointerup", onUp);
  });
}

function drawAxisTable() {
  const t = $("axis-table");
  if (t.rows.length !== 4 || t.dataset.order !== S.order.join(",")) {
    t.replaceChildren();
    t.dataset.order = S.order.join(",");
    const rows = ["axis", "value", "low", "high"].map((name) => { const r = t.insertRow(); const th = document.createElement("th"); th.textContent = name; r.append(th); return r; });
    for (const d of S.order) {
      rows[0].insertCell().textContent = `z${d}`;
      for (const [r, kind] of [[1, "value"], [2, "low"], [3, "high"]]) {
        const inp = document.createElement("input");
        inp.type = "number"; inp.step = "0.1"; inp.id = `${kind}-${d}`;
        inp.addEventListener("change", () => typed(d, kind, inp.value));
        rows[r].insertCell().append(inp);
      }
    }
  }
  for (const d of S.order) {
    $(`value-${d}`).value = S.code[d].toFixed(2);
    $(`low-${d}`).value = S.band[d][0].toFixed(2);
    $(`high-${d}`).value = S.band[d][1].toFixed(2);
  }
}

function typed(d, kind, text) {
  const v = Number(text);
  if (text.trim() === "" || !Number.isFinite(v)) { message(`${kind} of z${d} must be a number, got "${text}".`, true); return; }
  if (kind === "value") { S.code[d] = v; drawParcoords(); edit(); return; }
  const band = S.band[d].slice();
  band[kind === "low" ? 0 : 1] = v;
  if (band[0] > band[1]) {
    // sent as typed: the server refuses it with a message, the band drawn stays the one sampled
    request("explain", { index: S.index, band: S.band.map((b, k) => (k === d ? band : b)), key: S.key, full: true, student: studentSpec() });
    return;
  }
  S.band[d] = band;
  quantise();
  drawParcoords();
  explain(true);
}

function drawTraversals(r) {
  const el = $("traversals");
  el.replaceChildren();
  const bytes = decodeB64(r.images);
  const shape = S.meta.dataset.image_shape;
  const size = shape.reduce((a, b) => a * b, 1);
  const V = r.values.length;
  for (const d of r.order) {
    const strip = document.createElement("div");
    strip.className = "strip";
    const b = document.createElement("b"); b.textContent = `z${d}`;
    strip.append(b);
    r.values.forEach((v, j) => {
      const [c, cv] = cell("img", `${v > 0 ? "+" : ""}${v}: ${r.labels[d][j]}`);
      drawImage(cv, bytes, (d * V + j) * size, shape);
      strip.append(c);
    });
    el.append(strip);
  }
}

// The student's smoothness and penalty: which map the per-image choice kept, and why.
function smoothText(r) {
  const pen = r.penalty === null ? "" : `penalty ${r.penalty.toPrecision(3)}`;
  if (r.smooth === null) return pen;
  const grid = r.smooth_grid;
  if (grid.length < 2) return `smoothness ${r.smooth} (fixed)${pen ? ", " + pen : ""}`;
  const kept = r.smooth === Math.min(...grid) ? "per-pixel map: smoothing cost this fit too much"
    : r.smooth === Math.max(...grid) ? "smooth map: smoothing cost this fit little" : "";
  return `smoothness ${r.smooth} of {${grid.join(", ")}}${kept ? " · " + kept : ""}${pen ? " · " + pen : ""}`;
}

handlers.explain = (r) => {
  S.lastExplain = r;
  $("neighbor-count").textContent = `${r.num_neighbors}${r.full ? "" : " (dragging)"}`;
  $("flip").textContent = r.flip_fraction.toFixed(3);
  const shape = S.meta.dataset.image_shape;
  const size = shape.reduce((a, b) => a * b, 1);
  const bytes = decodeB64(r.neighbors);
  const nb = $("neighbors");
  nb.replaceChildren();
  r.neighbor_labels.forEach((l, k) => {
    const [d, c] = cell("img", `${l}`);
    if (l !== r.class) d.classList.add("flip");
    drawImage(c, bytes, k * size, shape);
    nb.append(d);
  });
  // student view
  const f = r.fidelity;
  $("fidelity").textContent = `held-out fidelity: top-1 ${f.top1.toFixed(3)}, KL ${f.kl.toFixed(4)}, R² ${f.r2.toFixed(3)}  ·  ${r.student} student, ${r.num_neighbors} neighbours, key ${r.key}, ${r.ms.toFixed(0)} ms`;
  $("smooth").textContent = smoothText(r);
  const lim = absMax(r.weights);
  const w = $("weights");
  w.replaceChildren();
  r.weights.forEach((m, k) => {
    const [d, c] = cell("img big", `${S.meta.class_names[k]}${k === r.class ? " ★" : ""}`);
    d.dataset.cls = k;
    drawMap(c, m, lim);
    w.append(d);
  });
  drawMap($("evidence"), r.evidence, absMax(r.evidence));
  bars($("class-probs"), r.teacher_probs.map((p, k) => [S.meta.class_names[k], [p, r.student_probs[k]]]));
};

handlers.edit = (r) => {
  S.edited = r; S.lastEdit = r;
  drawImage($("edited-image"), decodeB64(r.image), 0, S.meta.dataset.image_shape);
  $("edited-label").textContent = `${r.label} (${Math.max(...r.probs).toFixed(2)})`;
  drawScatter();
};

function setupLatent() {
  $("reset-band").addEventListener("click", () => {
    S.band = Array.from({ length: S.meta.latent_dim }, () => [-1, 1]);
    S.code = S.mean.slice();
    drawParcoords(); drawAxisTable(); explain(true); edit();
  });
  $("morph-b").max = S.meta.dataset.count - 1;
  $("morph-b").value = S.b;
  $("morph-run").addEventListener("click", () => {
    const b = Number($("morph-b").value);
    S.b = b; saveURL();
    request("morph", { a: S.index, b, steps: 16 });
  });
  $("morph-slider").addEventListener("input", drawMorphStep);
}

handlers.morph = (r) => {
  S.lastMorph = r;
  r.bytes = decodeB64(r.images);
  const svg = $("morph-chart");
  svg.replaceChildren();
  const W = 540, H = 120, S0 = r.probs.length;
  const x = (j) => 10 + (j / (S0 - 1)) * W, y = (p) => 10 + (1 - p) * H;
  const mk = (tag, attrs) => { const e = document.createElementNS(SVGNS, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); svg.append(e); return e; };
  for (const j of r.changes) mk("line", { class: "change", x1: x(j - 0.5), x2: x(j - 0.5), y1: 5, y2: H + 15, stroke: "#000", "stroke-dasharray": "2 2" });
  for (let k = 0; k < S.meta.num_classes; k++) {
    const pts = r.probs.map((p, j) => `${x(j)},${y(p[k])}`).join(" ");
    if (Math.max(...r.probs.map((p) => p[k])) > 0.05) mk("polyline", { points: pts, fill: "none", stroke: PALETTE[k % 10], "stroke-width": 1.5 });
  }
  mk("line", { id: "morph-pos", x1: x(0), x2: x(0), y1: 5, y2: H + 15, stroke: "#d62728" });
  $("morph-slider").max = S0 - 1;
  $("morph-slider").value = 0;
  drawMorphStep();
};

function drawMorphStep() {
  const r = S.lastMorph;
  if (!r) return;
  const j = +$("morph-slider").value;
  const shape = S.meta.dataset.image_shape;
  drawImage($("morph-image"), r.bytes, j * shape.reduce((a, b) => a * b, 1), shape);
  const p = r.probs[j];
  $("morph-label").textContent = `step ${j}: label ${r.labels[j]} (${Math.max(...p).toFixed(2)})`;
  const pos = document.getElementById("morph-pos");
  const xj = 10 + (j / (r.probs.length - 1)) * 540;
  if (pos) { pos.setAttribute("x1", xj); pos.setAttribute("x2", xj); }
}

// ---- student view ---------------------------------------------------------------------------
function setupStudent() {
  $("student").value = S.student;
  $("student").addEventListener("change", () => { S.student = $("student").value; explain(true); });
  for (const id of ["kd-temp", "kd-steps"]) $(id).addEventListener("change", () => { if (S.student === "kd") explain(true); });
  const choice = $("method-choice");
  const names = [...S.meta.methods, ...(S.meta.store ? S.meta.store.methods.map((m) => `store:${m}`) : [])];
  for (const m of names) {
    const l = document.createElement("label");
    const c = document.createElement("input");
    c.type = "checkbox"; c.value = m; c.checked = ["deepvid", "gradient", "store:deepvid"].includes(m);
    l.append(c, ` ${m}`);
    choice.append(l);
  }
  $("run-methods").addEventListener("click", () => {
    const names = [...choice.querySelectorAll("input:checked")].map((c) => c.value);
    request("methods", { index: S.index, key: S.key, names });
  });
  $("stability").addEventListener("change", () => { if ($("stability").checked) stability(); else { $("agreement").textContent = ""; $("stability-maps").replaceChildren(); } });
}

handlers.methods = (r) => {
  S.lastMethods = r;
  const el = $("method-maps");
  el.replaceChildren();
  for (const [name, map] of Object.entries(r.maps)) {
    const [d, c] = cell("img big", name);
    d.dataset.method = name;
    drawMap(c, map, absMax(map));
    el.append(d);
  }
};

function stability() {
  request("stability", { index: S.index, band: S.band, key: S.key, runs: +$("stability-runs").value, student: studentSpec() });
}

handlers.stability = (r) => {
  S.lastStability = r;
  $("agreement").textContent = `agreement (mean pairwise Pearson) ${r.agreement.toFixed(3)} over keys ${r.keys.join(", ")}`;
  const el = $("stability-maps");
  el.replaceChildren();
  r.maps.forEach((m, k) => {
    const [d, c] = cell("img big", `key ${r.keys[k]}`);
    drawMap(c, m, absMax(m));
    el.append(d);
  });
};

handlers.export = (r) => message(`exported: ${r.files.join(", ")}`);

// ---- start -----------------------------------------------------------------------------------
async function main() {
  connect();
  try {
    S.meta = await getJSON("api/meta");
    S.points = await getJSON("api/points");
  } catch (e) { message(`cannot load the dataset: ${e.message}`, true); return; }
  loadURL();
  $("dataset-name").textContent = `${S.meta.dataset.name} ${S.meta.dataset.split} (${S.meta.dataset.count})`;
  $("key").value = S.key;
  $("key").addEventListener("change", () => {
    const v = Number($("key").value);
    if (!Number.isInteger(v) || v < 0) { message(`key must be a whole number >= 0, got "${$("key").value}".`, true); return; }
    S.key = v; explain(true);
  });
  $("export").addEventListener("click", () => {
    if (!S.meta.live) { message("export needs models with a VAE.", true); return; }
    request("export", { index: S.index, band: S.band, key: S.key, student: studentSpec() });
  });
  setupDatasetControls();
  layoutScatter();
  drawScatter();
  requestAnimationFrame(() => { S.paintedAt = performance.now(); });
  drawConfusion();
  setupScatter();
  if (S.meta.live) { setupLatent(); } else {
    $("latent-view").querySelector("h2").textContent = "Latent (needs models with a VAE)";
  }
  setupStudent();
  await drawGrid();
  choose(S.index);
  S.ready = true;
  pollProjection();
}

main();
