// The latent explorer: decodes the point under the pointer with onnxruntime-web (WebAssembly).
// State for tests and the console lives in window.explorer: ready, error, decodes (a counter),
// idle, and last[model] = {z, pixels (784 floats), precision, decoder, ms} of the latest decode.
// The VAE plane decodes with the VAE decoder, or with the compact decoder distilled from it.
import * as ort from "./ort/ort.wasm.bundle.min.mjs";

ort.env.wasm.numThreads = 1; // no SharedArrayBuffer, so any static host will do
ort.env.wasm.proxy = false;

const MODELS = ["vae", "ae"];
const SIZE = 360; // CSS pixels of a plane
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const TIMES_KEPT = 30;

const state = {
  config: null, points: null, precision: "fp32", compact: false, sessions: {}, busy: {}, pending: {},
  times: { vae: [], ae: [] }, base: {}, cursor: {},
};
const explorer = (window.explorer = {
  ready: false, error: null, decodes: 0, idle: true, last: {}, setPrecision, setCompact, planePoint,
});

const $ = (id) => document.getElementById(id);

function fail(err) {
  explorer.error = String(err && err.stack ? err.stack : err);
  const status = $("status");
  status.textContent = `error: ${err}`;
  status.classList.add("error");
  console.error(err);
}

// the decoder the plane of `model` runs: the compact one decodes the VAE's latents
function decoderOf(model) {
  return model === "vae" && state.compact ? "compact" : "full";
}

function session(model, precision) {
  const base = decoderOf(model) === "compact" ? "compact_decoder" : `${model}_decoder`;
  const role = precision === "int8" ? `${base}_int8` : base;
  if (!state.sessions[role]) {
    state.sessions[role] = ort.InferenceSession.create(state.config.decoders[role].file, {
      executionProviders: ["wasm"],
    });
  }
  return state.sessions[role];
}

// (u, v) in [0, 1]^2 from the top-left corner -> z (Float32Array, latent_dim); top = high z[1]
function planePoint(model, u, v) {
  const m = state.config.models[model];
  const z = Float32Array.from(m.centre);
  z[0] = m.extent.low[0] + u * (m.extent.high[0] - m.extent.low[0]);
  z[1] = m.extent.high[1] - v * (m.extent.high[1] - m.extent.low[1]);
  return z;
}

function toPlane(model, x, y) {
  const { low, high } = state.config.models[model].extent;
  return [((x - low[0]) / (high[0] - low[0])) * SIZE, ((high[1] - y) / (high[1] - low[1])) * SIZE];
}

function drawBase(model) {
  const ratio = window.devicePixelRatio || 1;
  const base = document.createElement("canvas");
  base.width = base.height = SIZE * ratio;
  const g = base.getContext("2d");
  g.scale(ratio, ratio);
  g.fillStyle = "#fff";
  g.fillRect(0, 0, SIZE, SIZE);
  const { low, high } = state.config.models[model].extent;
  g.strokeStyle = "#e3e6ec";
  g.lineWidth = 1;
  const [x0, y0] = toPlane(model, 0, 0);
  if (low[0] < 0 && high[0] > 0) { g.beginPath(); g.moveTo(x0, 0); g.lineTo(x0, SIZE); g.stroke(); }
  if (low[1] < 0 && high[1] > 0) { g.beginPath(); g.moveTo(0, y0); g.lineTo(SIZE, y0); g.stroke(); }
  const xy = state.points[model];
  const labels = state.points.labels;
  g.globalAlpha = 0.5;
  for (let i = 0; i < state.points.count; i++) {
    const [px, py] = toPlane(model, xy[2 * i], xy[2 * i + 1]);
    g.fillStyle = labels ? COLORS[labels[i] % 10] : "#555";
    g.fillRect(px - 1, py - 1, 2.2, 2.2);
  }
  g.globalAlpha = 1;
  g.fillStyle = "#5d6675";
  g.font = "11px system-ui, sans-serif";
  g.fillText(`z0 ${low[0].toFixed(1)} .. ${high[0].toFixed(1)}`, 6, SIZE - 6);
  g.save();
  g.translate(14, SIZE - 22);
  g.rotate(-Math.PI / 2);
  g.fillText(`z1 ${low[1].toFixed(1)} .. ${high[1].toFixed(1)}`, 0, 0);
  g.restore();
  state.base[model] = base;
}

function drawPlane(model) {
  const canvas = $(`plane-${model}`);
  const ratio = window.devicePixelRatio || 1;
  canvas.width = canvas.height = SIZE * ratio;
  const g = canvas.getContext("2d");
  g.drawImage(state.base[model], 0, 0);
  const c = state.cursor[model];
  if (!c) return;
  g.scale(ratio, ratio);
  g.strokeStyle = "rgba(29, 36, 48, 0.7)";
  g.lineWidth = 1;
  g.setLineDash([4, 4]);
  g.beginPath();
  g.moveTo(c[0], 0); g.lineTo(c[0], SIZE); g.moveTo(0, c[1]); g.lineTo(SIZE, c[1]);
  g.stroke();
  g.setLineDash([]);
  g.strokeStyle = "#000";
  g.lineWidth = 2;
  g.beginPath();
  g.arc(c[0], c[1], 6, 0, 2 * Math.PI);
  g.stroke();
}

function drawDigit(model, pixels) {
  const g = $(`digit-${model}`).getContext("2d");
  const img = g.createImageData(28, 28);
  for (let i = 0; i < 784; i++) {
    const v = Math.max(0, Math.min(255, Math.round(pixels[i] * 255)));
    img.data.set([v, v, v, 255], 4 * i);
  }
  g.putImageData(img, 0, 0);
}

function median(values) {
  const s = [...values].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
}

function showTimes() {
  const parts = MODELS.filter((m) => state.times[m].length).map(
    (m) => `${m.toUpperCase()} ${median(state.times[m]).toFixed(2)} ms`);
  $("status").textContent =
    `decode per frame (median of the last ${TIMES_KEPT}): ${parts.join(", ")}` +
    ` · ${state.precision}${state.compact ? ", compact VAE" : ""} decoders · onnxruntime-web ${ort.env.versions.web} (wasm, 1 thread)`;
}

async function decode(model, z) {
  const precision = state.precision;
  const decoder = decoderOf(model);
  const s = await session(model, precision);
  const t0 = performance.now();
  const out = await s.run({ [s.inputNames[0]]: new ort.Tensor("float32", z, [1, z.length]) });
  const ms = performance.now() - t0;
  const pixels = out[s.outputNames[0]].data;
  const times = state.times[model];
  times.push(ms);
  if (times.length > TIMES_KEPT) times.shift();
  drawDigit(model, pixels);
  $(`z-${model}`).textContent = `(${Array.from(z, (v) => v.toFixed(3)).join(", ")})`;
  $(`precision-${model}`).textContent = decoder === "compact" ? `compact, ${precision}` : precision;
  $(`ms-${model}`).textContent = `${ms.toFixed(2)} ms (median ${median(times).toFixed(2)} ms)`;
  explorer.last[model] = { z: Array.from(z), pixels: Array.from(pixels), precision, decoder, ms };
  explorer.decodes += 1;
  showTimes();
}

function updateIdle() {
  explorer.idle = MODELS.every((m) => !state.busy[m] && !state.pending[m]);
}

// the latest point wins: while a decode runs, newer pointer positions replace each other
async function request(model, z) {
  state.pending[model] = z;
  updateIdle();
  if (state.busy[model]) return;
  state.busy[model] = true;
  try {
    while (state.pending[model]) {
      const next = state.pending[model];
      state.pending[model] = null;
      await decode(model, next);
    }
  } catch (err) {
    fail(err);
  } finally {
    state.busy[model] = false;
    updateIdle();
  }
}

function pointAt(model, u, v) {
  state.cursor[model] = [u * SIZE, v * SIZE];
  drawPlane(model);
  request(model, planePoint(model, u, v));
}

function watch(model) {
  const canvas = $(`plane-${model}`);
  const move = (event) => {
    const r = canvas.getBoundingClientRect();
    const u = Math.min(1, Math.max(0, (event.clientX - r.left) / r.width));
    const v = Math.min(1, Math.max(0, (event.clientY - r.top) / r.height));
    pointAt(model, u, v);
  };
  canvas.addEventListener("pointermove", move);
  canvas.addEventListener("pointerdown", move);
}

async function setPrecision(precision) {
  state.precision = precision;
  $("int8").checked = precision === "int8";
  await Promise.all(MODELS.map((m) => session(m, precision)));
  for (const m of MODELS) {
    const last = explorer.last[m];
    if (last) await request(m, Float32Array.from(last.z));
  }
}

async function setCompact(on) {
  state.compact = Boolean(on);
  $("compact").checked = state.compact;
  await session("vae", state.precision);
  const last = explorer.last.vae;
  if (last) await request("vae", Float32Array.from(last.z));
}

async function main() {
  const [config, points] = await Promise.all(
    ["explorer.json", "points.json"].map((url) =>
      fetch(url).then((r) => {
        if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
        return r.json();
      })));
  state.config = config;
  state.points = points;
  $("legend").innerHTML = points.labels
    ? COLORS.map((c, i) => `<span style="--c:${c}">${i}</span>`).join("")
    : "";
  $("about").textContent =
    `${points.count.toLocaleString()} test digits · bundle manifest sha256 ` +
    `${config.bundle.manifest_sha256.slice(0, 12)}… (created ${config.bundle.created}) · ` +
    `latent_dim ${config.latent_dim}` +
    (config.latent_dim > 2 ? " (axes beyond the first two at the latent box centre)" : "");
  const int8 = $("int8");
  const roles = Object.keys(config.decoders).filter((r) => !r.endsWith("_int8"));
  if (roles.every((r) => config.decoders[`${r}_int8`])) {
    int8.disabled = false;
    int8.addEventListener("change", () => setPrecision(int8.checked ? "int8" : "fp32").catch(fail));
  } else {
    int8.title = "this bundle has no int8 decoders";
  }
  const compact = $("compact");
  if (config.decoders.compact_decoder) {
    compact.disabled = false;
    compact.addEventListener("change", () => setCompact(compact.checked).catch(fail));
  } else {
    compact.title = "this bundle has no compact decoder";
  }
  await Promise.all(MODELS.map((m) => session(m, "fp32")));
  for (const m of MODELS) {
    drawBase(m);
    watch(m);
    pointAt(m, 0.5, 0.5);
  }
  while (!explorer.idle) await new Promise((resolve) => setTimeout(resolve, 10));
  explorer.ready = true;
}

main().catch(fail);
