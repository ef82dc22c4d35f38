// The page of `aekit serve`: plain JavaScript, no build step, nothing loaded from elsewhere.
// It reads /api/info and /api/latent, sends dropped files to /api/analyze (a CSV as /score reads it; images as
// a v2 inference request of UINT8 pixels), and draws scores, the threshold, explanations and the latent space.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, latent: null, result: null, grid: [], threshold: null, chosen: null, decoded: null,
                samples: null, busy: false };
window.aekit = state;  // for tests and the curious

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function api(path, options = {}) {
  const res = await fetch(path, options);
  const body = await res.text();
  let data = null;
  try { data = JSON.parse(body); } catch (e) { data = null; }
  if (!res.ok) throw new Error((data && data.error) || `${res.status} ${res.statusText}`);
  return data;
}

const fmt = (v) => (v === null || v === undefined) ? "" : (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0))
  ? v.toExponential(3) : Number(v.toPrecision(5)).toString();

// --- the threshold and the false-positive rate the score table predicts for it --------------------------
function upperCount(sorted, t) {  // #{s > t} in an ascending array
  let lo = 0, hi = sorted.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (sorted[mid] <= t) lo = mid + 1; else hi = mid; }
  return sorted.length - lo;
}

function predictedFpr(t) {
  const ref = state.info.scores;
  if (!ref || !ref.length) return null;
  const above = upperCount(ref, t);
  // calibration scores: the split-conformal bound P(normal score > t) <= (1 + #{s > t}) / (n + 1);
  // training scores: the share of the training rows above t
  return state.info.source === "calibration" ? (1 + above) / (ref.length + 1) : above / ref.length;
}

function buildGrid() {
  const values = new Set(state.info.scores || []);
  if (state.result) state.result.scores.forEach((s) => values.add(s));
  if (state.info.threshold !== null) values.add(state.info.threshold);
  state.grid = Array.from(values).sort((a, b) => a - b);
  const slider = $("slider");
  slider.max = Math.max(0, state.grid.length - 1);
  const t = state.threshold !== null ? state.threshold : state.info.threshold;
  let i = t === null ? state.grid.length - 1 : state.grid.findIndex((v) => v >= t);
  slider.value = Math.max(0, i);
  setThreshold(state.grid.length ? state.grid[Math.max(0, i)] : null);
}

function setThreshold(t) {
  state.threshold = t;
  if (t === null) { $("thr").textContent = "no scores yet"; return; }
  const mark = t === state.info.threshold ? ` (the run's threshold, from ${state.info.threshold_from})` : "";
  $("thr").textContent = `threshold ${fmt(t)}${mark}`;
  const fpr = predictedFpr(t);
  const ref = state.info.scores;
  $("fpr").textContent = fpr === null ? "no calibration or training score table: no false-positive rate to predict"
    : state.info.source === "calibration"
      ? `predicted false-positive rate ≤ ${(100 * fpr).toFixed(2)}% (conformal bound from ${ref.length} calibration scores)`
      : `predicted false-positive rate ${(100 * fpr).toFixed(2)}% (share of the ${ref.length} training scores above it)`;
  $("fpr").dataset.fpr = fpr === null ? "" : String(fpr);
  if (state.result) {
    const n = state.result.scores.length;
    const k = state.result.scores.filter((s) => s > t).length;
    $("flagged").textContent = `${k} of ${n} new rows flagged`;
    $("flagged").dataset.count = String(k);
    document.querySelectorAll("#rows tbody tr").forEach((tr) => {
      tr.classList.toggle("flagged", state.result.scores[+tr.dataset.i] > t);
      tr.lastChild.textContent = state.result.scores[+tr.dataset.i] > t ? "yes" : "";
    });
  }
  drawLatent();
}

// --- files in -----------------------------------------------------------------------------------
async function handleFiles(files) {
  files = Array.from(files);
  if (!files.length) return;
  status(`scoring ${files.length === 1 ? files[0].name : files.length + " files"}…`);
  state.busy = true;
  try {
    let result, names;
    const table = files.length === 1 && /\.(csv|tsv|txt)$/i.test(files[0].name);
    if (table) {
      const type = /\.tsv$/i.test(files[0].name) ? "text/tab-separated-values" : "text/csv";
      result = await api("/api/analyze", { method: "POST", headers: { "Content-Type": type }, body: files[0] });
      names = result.ids;
    } else {
      if (state.info.kind !== "image") throw new Error(`this model scores tables: drop one CSV file with the columns ${state.info.feature_names.slice(0, 6).join(", ")}…`);
      const pixels = await Promise.all(files.map(imagePixels));
      const [c, h, w] = state.info.input_shape;
      const data = new Array(files.length * c * h * w);
      pixels.forEach((p, k) => { for (let j = 0; j < p.length; j++) data[k * p.length + j] = p[j]; });
      const req = { inputs: [{ name: state.info.input_name, shape: [files.length, c, h, w], datatype: "UINT8", data }] };
      result = await api("/api/analyze", { method: "POST", headers: { "Content-Type": "application/json" },
                                           body: JSON.stringify(req) });
      names = files.map((f) => f.name);
    }
    result.names = names;
    state.result = result;
    state.chosen = null;
    showResults();
    status(`scored ${result.scores.length} rows`);
  } catch (e) {
    status(`could not score: ${e.message}`, true);
  } finally {
    state.busy = false;
  }
}

async function imagePixels(file) {  // (C, H, W) uint8 values of one image, at the model's size
  const [c, h, w] = state.info.input_shape;
  let bitmap;
  try { bitmap = await createImageBitmap(file); } catch (e) { throw new Error(`${file.name} is not an image the browser can read`); }
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingEnabled = bitmap.width !== w || bitmap.height !== h;
  ctx.drawImage(bitmap, 0, 0, w, h);
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const out = new Array(c * h * w);
  for (let i = 0; i < h * w; i++) {
    const r = rgba[4 * i], g = rgba[4 * i + 1], b = rgba[4 * i + 2];
    if (c === 1) out[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;  // Pillow's convert("L")
    else { out[i] = r; out[h * w + i] = g; out[2 * h * w + i] = b; }
  }
  return out;
}

// --- results --------------------------------------------------------------------------------------
function showResults() {
  const r = state.result;
  const cols = ["id", "score"].concat(r.p_values ? ["p-value"] : []).concat(["flagged"]);
  $("rows").tHead.innerHTML = "<tr>" + cols.map((c) => `<th>${c}</th>`).join("") + "</tr>";
  const body = $("rows").tBodies[0];
  body.innerHTML = "";
  const shown = Math.min(r.scores.length, 1000);
  for (let i = 0; i < shown; i++) {
    const tr = document.createElement("tr");
    tr.dataset.i = i;
    const cells = [r.names[i], fmt(r.scores[i])].concat(r.p_values ? [fmt(r.p_values[i])] : []).concat([""]);
    cells.forEach((v) => { const td = document.createElement("td"); td.textContent = v; tr.appendChild(td); });
    tr.addEventListener("click", () => choose(i));
    body.appendChild(tr);
  }
  $("count").textContent = shown < r.scores.length ? `(first ${shown} of ${r.scores.length})` : `(${r.scores.length})`;
  buildGrid();
  if (r.scores.length) choose(r.scores.reduce((best, s, i) => (s > r.scores[best] ? i : best), 0));  // the top row
}

function choose(i) {
  state.chosen = i;
  document.querySelectorAll("#rows tbody tr").forEach((tr) => tr.classList.toggle("chosen", +tr.dataset.i === i));
  const r = state.result;
  $("which").textContent = `of ${r.names[i]} (score ${fmt(r.scores[i])})`;
  const box = $("explain");
  box.innerHTML = "";
  box.className = "";
  if (state.info.kind === "image") {
    const [c, h, w] = state.info.input_shape;
    const row = box.appendChild(document.createElement("div"));
    row.className = "grid";
    row.appendChild(figure(imageCanvas(r.inputs[i], c, h, w, 1), "input"));
    row.appendChild(figure(imageCanvas(r.reconstructions[i], c, h, w, 1), "reconstruction"));
    row.appendChild(figure(heatCanvas(r.maps[i], h, w), "per-pixel part of the score"));
  } else {
    box.appendChild(bars(state.info.feature_names, r.contributions[i], r.inputs[i], r.reconstructions[i]));
  }
  if (r.code_distance) {
    const p = box.appendChild(document.createElement("div"));
    p.className = "muted";
    p.textContent = `code distance (Mahalanobis term of the score): ${fmt(r.code_distance[i])}`;
  }
  drawLatent();
}

function flat(a) { return Array.isArray(a) ? a.flat(Infinity) : [a]; }

function figure(canvas, caption) {
  const div = document.createElement("div");
  div.appendChild(canvas);
  const cap = div.appendChild(document.createElement("div"));
  cap.className = "cap";
  cap.textContent = caption;
  return div;
}

function pixelCanvas(h, w, paint) {  // an h x w canvas shown enlarged; paint(rgba data) fills its pixels
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = h; canvas.className = "px";
  const size = Math.max(96, Math.min(224, 8 * w));
  canvas.style.width = size + "px"; canvas.style.height = Math.round(size * h / w) + "px";
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  paint(img.data);
  ctx.putImageData(img, 0, 0);
  return canvas;
}

function imageCanvas(values, c, h, w, scale) {  // values (C, H, W) nested or flat, in [0, scale]
  const v = flat(values);
  return pixelCanvas(h, w, (data) => {
    for (let i = 0; i < h * w; i++) {
      for (let k = 0; k < 3; k++) {
        const x = v[(c === 1 ? 0 : k) * h * w + i] / scale;
        data[4 * i + k] = Math.round(255 * Math.min(1, Math.max(0, x)));
      }
      data[4 * i + 3] = 255;
    }
  });
}

function heatCanvas(values, h, w) {  // white (0) to dark red (the row's largest part)
  const v = flat(values);
  const peak = v.reduce((m, x) => Math.max(m, x), 0) || 1;
  return pixelCanvas(h, w, (data) => {
    for (let i = 0; i < h * w; i++) {
      const a = Math.min(1, v[i] / peak);
      data[4 * i] = Math.round(255 - 75 * a); data[4 * i + 1] = Math.round(255 * (1 - a));
      data[4 * i + 2] = Math.round(255 * (1 - a)); data[4 * i + 3] = 255;
    }
  });
}

function bars(names, parts, inputs, recon) {  // an SVG bar per feature, largest part first (at most 25)
  const order = parts.map((p, i) => i).sort((a, b) => parts[b] - parts[a]).slice(0, 25);
  const peak = parts.reduce((m, x) => Math.max(m, x), 0) || 1;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const rowH = 18, width = 620;
  svg.setAttribute("width", width); svg.setAttribute("height", rowH * (order.length + 1));
  const text = (x, y, s, anchor = "start") => {
    const t = svg.appendChild(document.createElementNS(ns, "text"));
    t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("font-size", "12");
    t.setAttribute("text-anchor", anchor); t.textContent = s; return t;
  };
  text(0, 12, "feature"); text(130, 12, "part of the score"); text(width, 12, "value → reconstruction", "end");
  order.forEach((i, k) => {
    const y = rowH * (k + 1);
    text(0, y + 12, String(names[i]).slice(0, 18));
    const rect = svg.appendChild(document.createElementNS(ns, "rect"));
    rect.setAttribute("x", 130); rect.setAttribute("y", y + 3); rect.setAttribute("height", rowH - 6);
    rect.setAttribute("width", Math.max(1, 200 * parts[i] / peak)); rect.setAttribute("fill", "#c33");
    text(335, y + 12, fmt(parts[i]));
    text(width, y + 12, `${fmt(inputs[i])} → ${fmt(recon[i])}`, "end");
  });
  return svg;
}

// --- the latent space ------------------------------------------------------------------------------
function latentBox() {
  const pts = state.latent.points.concat(state.result ? state.result.latent : []);
  if (!pts.length) return { x0: -1, x1: 1, y0: -1, y1: 1 };
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  pts.forEach(([x, y]) => { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); });
  const mx = 0.08 * ((x1 - x0) || 1), my = 0.08 * ((y1 - y0) || 1);
  return { x0: x0 - mx, x1: x1 + mx, y0: y0 - my, y1: y1 + my };
}

function toCanvas(p, b, cv) { return [(p[0] - b.x0) / (b.x1 - b.x0) * cv.width, cv.height - (p[1] - b.y0) / (b.y1 - b.y0) * cv.height]; }
function fromCanvas(x, y, b, cv) { return [b.x0 + x / cv.width * (b.x1 - b.x0), b.y0 + (cv.height - y) / cv.height * (b.y1 - b.y0)]; }

function drawLatent() {
  if (!state.latent) return;
  const cv = $("latent"), ctx = cv.getContext("2d"), b = latentBox();
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, cv.width, cv.height);
  ctx.fillStyle = "rgba(120,120,120,0.45)";
  state.latent.points.forEach((p) => { const [x, y] = toCanvas(p, b, cv); ctx.fillRect(x - 1.5, y - 1.5, 3, 3); });
  if (state.result) {
    state.result.latent.forEach((p, i) => {
      const [x, y] = toCanvas(p, b, cv);
      const flagged = state.threshold !== null && state.result.scores[i] > state.threshold;
      ctx.beginPath(); ctx.arc(x, y, i === state.chosen ? 6 : 4, 0, 2 * Math.PI);
      ctx.fillStyle = flagged ? "#d22" : "#26c"; ctx.fill();
      if (i === state.chosen) { ctx.strokeStyle = "#000"; ctx.lineWidth = 2; ctx.stroke(); }
    });
  }
  if (state.decoded) {
    const [x, y] = toCanvas(state.decoded.point, b, cv);
    ctx.strokeStyle = "#0a0"; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.moveTo(x - 7, y); ctx.lineTo(x + 7, y); ctx.moveTo(x, y - 7); ctx.lineTo(x, y + 7); ctx.stroke();
  }
  ctx.fillStyle = "#333"; ctx.font = "12px sans-serif";
  ctx.fillText(state.latent.axes[0] + " →", cv.width - 60, cv.height - 6);
  ctx.save(); ctx.translate(12, 60); ctx.rotate(-Math.PI / 2); ctx.fillText("← " + state.latent.axes[1], 0, 0); ctx.restore();
}

async function latentClick(ev) {
  const cv = $("latent"), rect = cv.getBoundingClientRect(), b = latentBox();
  const x = (ev.clientX - rect.left) * cv.width / rect.width, y = (ev.clientY - rect.top) * cv.height / rect.height;
  let req = null, label = null, point = fromCanvas(x, y, b, cv);
  if (state.result) {  // a new row's own code when the click is on it
    let best = 49, bi = -1;
    state.result.latent.forEach((p, i) => { const [px, py] = toCanvas(p, b, cv); const d = (px - x) ** 2 + (py - y) ** 2; if (d < best) { best = d; bi = i; } });
    if (bi >= 0) { req = { code: state.result.codes[bi] }; label = `the code of ${state.result.names[bi]}`; point = state.result.latent[bi]; choose(bi); }
  }
  if (!req) { req = { point }; label = `the point (${fmt(point[0])}, ${fmt(point[1])})`; }
  try {
    const res = await api("/api/decode", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(req) });
    state.decoded = { point, label, ...res };
    showDecoded();
    drawLatent();
  } catch (e) { status(`could not decode: ${e.message}`, true); }
}

function showDecoded() {
  const d = state.decoded, box = $("decoded");
  box.innerHTML = "";
  const title = box.appendChild(document.createElement("div"));
  title.textContent = `decoded: ${d.label}`;
  if (state.info.kind === "image") {
    const [c, h, w] = state.info.input_shape;
    const cv = imageCanvas(d.data, c, h, w, 1);
    cv.id = "decodedimage";
    box.appendChild(cv);
  } else {
    box.appendChild(valueTable(state.info.feature_names, [d.data]));
  }
}

function valueTable(names, rows) {
  const t = document.createElement("table");
  t.innerHTML = "<thead><tr>" + names.map((n) => `<th>${escape(n)}</th>`).join("") + "</tr></thead>";
  const body = t.appendChild(document.createElement("tbody"));
  rows.forEach((r) => { const tr = body.insertRow(); r.forEach((v) => { tr.insertCell().textContent = fmt(v); }); });
  return t;
}

function escape(s) { const d = document.createElement("div"); d.textContent = String(s); return d.innerHTML; }

// --- samples (generative families) -------------------------------------------------------------------
let sampleSeed = 0;
async function drawSamples() {
  try {
    const res = await api(`/api/sample?n=16&seed=${sampleSeed++}`);
    state.samples = res;
    const box = $("samples");
    box.innerHTML = "";
    if (state.info.kind === "image") {
      const [c, h, w] = state.info.input_shape;
      res.data.forEach((x) => box.appendChild(imageCanvas(x, c, h, w, 1)));
    } else {
      box.appendChild(valueTable(state.info.feature_names, res.data));
    }
  } catch (e) { status(`could not sample: ${e.message}`, true); }
}

// --- start ----------------------------------------------------------------------------------------
async function start() {
  try {
    state.info = await api("/api/info");
    const i = state.info;
    $("title").textContent = i.name;
    document.title = `aekit serve: ${i.name}`;
    $("about").textContent = `${i.family} on ${i.kind === "image" ? "images" : "a table"} of shape [${i.input_shape.join(", ")}], ` +
      `code size ${i.latent_dim}, score ${i.score}` + (i.threshold === null ? ", no threshold yet" : `, threshold ${fmt(i.threshold)} (${i.threshold_from})`);
    $("what").textContent = i.kind === "image" ? `images (${i.input_shape[2]}×${i.input_shape[1]})` : "a CSV file with the training columns";
    $("file").accept = i.kind === "image" ? "image/*" : ".csv,.tsv,.txt";
    $("samplebox").hidden = !i.generative;
    buildGrid();
    state.latent = await api("/api/latent");
    $("latentnote").textContent = state.latent.note;
    drawLatent();
    state.ready = true;
  } catch (e) {
    status(`could not load the model: ${e.message}`, true);
  }
}

$("slider").addEventListener("input", () => setThreshold(state.grid[+$("slider").value]));
$("file").addEventListener("change", () => handleFiles($("file").files));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); handleFiles(e.dataTransfer.files); });
$("latent").addEventListener("click", latentClick);
$("sample").addEventListener("click", drawSamples);
start();
