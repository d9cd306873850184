// A Node.js client of an export bundle (or of an edge folder written by `python -m export edge`),
// on onnxruntime-node: no Python. It reads the folder's manifest.json, checks the sha256 of each
// model file it opens, and runs the ONNX (or ORT-format) models on the CPU.
//
//   node export/node/client.mjs decode --bundle DIR --z "0.4,0.4;-1,2" --out digits.png
//   node export/node/client.mjs score  --bundle DIR digit.pgm more.npy
//   node export/node/client.mjs bench  --bundle DIR --calls 2000
//
// decode: the latents of --z (";" between them) through the decoder of --model (vae | ae) at
//   --precision (fp32 | int8), or with --decoder compact through the compact decoder distilled
//   from the VAE's (an 84 k-weight model for small devices); --out FILE.npy (float32 (n, 28, 28), the decoder's values),
//   FILE.pgm or FILE.png (8-bit grey, the digits side by side, rounded as the Python runtime
//   rounds); --json prints the pixels as well.
// score: anomaly scores of images read from .npy (uint8 0-255 or float32/float64 in [0, 1],
//   shaped (28, 28), (784,), (n, 28, 28) or (n, 784)), .pgm (28 x 28, P5 or P2) or text files of
//   784 numbers per line (all integers: 0-255 grey levels, else floats in [0, 1]), or --pixels
//   "784 numbers". --model: the bundle's default score (the detector, where the bundle has one)
//   unless --model ae or vae. The detector is scored by its scorer graph (detector_scorer);
//   the AE and VAE by theirs (<model>_scorer) at fp32, otherwise their encoder and decoder run
//   and the score is computed here in double precision, as export/scoring.py does: AE, the mean
//   squared reconstruction error; VAE, the negative ELBO at z_mean (Bernoulli NLL, pixels
//   clipped to [1e-7, 1 - 1e-7], plus the KL), in nats. Prints "source[index] score anomaly"
//   per image, or JSON with --json.
// bench: p50/p99 microseconds of decoding one latent (--calls, after --warmup) with the decoder
//   that decode would use, as JSON.
//
// Options: --threads N (ONNX Runtime intra-op threads, default 1). Exit status 2 on bad input.
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { basename, extname, join } from "node:path";
import { deflateSync } from "node:zlib";
import ort from "onnxruntime-node";

const SIDE = 28;
const PIXELS = SIDE * SIDE;
const EPSILON = 1e-7;

class UsageError extends Error {}

function parseArgs(argv) {
  const [command, ...rest] = argv;
  const options = {
    inputs: [], model: null, decoder: "full", precision: "fp32", threads: 1, calls: 2000, warmup: 100,
  };
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i];
    if (arg === "--json") options.json = true;
    else if (arg.startsWith("--")) {
      const value = rest[++i];
      if (value === undefined) throw new UsageError(`${arg} needs a value`);
      options[arg.slice(2)] = value;
    } else options.inputs.push(arg);
  }
  if (!["decode", "score", "bench"].includes(command)) {
    throw new UsageError("usage: client.mjs decode|score|bench --bundle DIR [options]");
  }
  if (!options.bundle) throw new UsageError("--bundle DIR is required");
  const models = command === "score" ? ["detector", "vae", "ae"] : ["vae", "ae"];
  if (options.model !== null && !models.includes(options.model)) {
    throw new UsageError(`--model ${options.model}: ${models.join(" or ")}`);
  }
  if (!["full", "compact"].includes(options.decoder)) {
    throw new UsageError(`--decoder ${options.decoder}: full or compact`);
  }
  if (options.decoder === "compact" && (options.model ?? "vae") !== "vae") {
    throw new UsageError("--decoder compact decodes the VAE's latents: use --model vae");
  }
  if (!["fp32", "int8"].includes(options.precision)) {
    throw new UsageError(`--precision ${options.precision}: fp32 or int8`);
  }
  for (const key of ["threads", "calls", "warmup"]) {
    options[key] = Number(options[key]);
    if (!Number.isInteger(options[key]) || options[key] < 0) throw new UsageError(`--${key}: an integer`);
  }
  return { command, options };
}

// -- the bundle -------------------------------------------------------------------------------

class Bundle {
  constructor(dir, threads) {
    this.dir = dir;
    this.threads = threads;
    try {
      this.manifest = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));
    } catch (err) {
      throw new UsageError(`${join(dir, "manifest.json")}: ${err.message}`);
    }
    if (this.manifest.format_version !== 1) {
      throw new UsageError(`${dir}: format_version ${this.manifest.format_version}, this client reads 1`);
    }
    this.latentDim = this.manifest.latent_dim;
    this.sessions = {};
  }

  has(role) {
    return role in this.manifest.models;
  }

  // one session per model, opened on first use after its file's sha256 is checked
  async session(role) {
    if (!this.sessions[role]) {
      const entry = this.manifest.models[role];
      if (!entry) throw new UsageError(`${this.dir}: the manifest lists no ${role} model`);
      const path = join(this.dir, entry.file);
      const bytes = readFileSync(path);
      const expected = this.manifest.files[entry.file]?.sha256;
      if (createHash("sha256").update(bytes).digest("hex") !== expected) {
        throw new UsageError(`${path}: sha256 does not match manifest.json`);
      }
      this.sessions[role] = await ort.InferenceSession.create(bytes, {
        executionProviders: ["cpu"],
        graphOptimizationLevel: "all",
        executionMode: "sequential",
        intraOpNumThreads: this.threads,
        interOpNumThreads: 1,
      });
    }
    return this.sessions[role];
  }

  async run(role, data, dims) {
    const session = await this.session(role);
    return session.run({ [session.inputNames[0]]: new ort.Tensor("float32", data, dims) });
  }

  decoderRole(model, precision, decoder = "full") {
    const role = decoder === "compact" ? "compact_decoder" : `${model}_decoder`;
    if (!this.has(role)) {
      throw new UsageError(`${this.dir}: the bundle has no ${role} (export it again from a run with train_compact)`);
    }
    return precision === "int8" ? `${role}_int8` : role;
  }

  async decode(z, n, model, precision, decoder = "full") {
    const out = await this.run(this.decoderRole(model, precision, decoder), z, [n, this.latentDim]);
    return out.pixels.data;
  }

  threshold(model) {
    return this.manifest.anomaly[model].threshold;
  }

  // the score used when --model is not given: the bundle's default (the detector)
  defaultModel() {
    return this.manifest.anomaly.default ?? "vae";
  }

  // scores (Float64Array of float32 values) of n images (Float32Array n * 784)
  async score(images, n, model, precision) {
    const scorer = `${model}_scorer`;
    if (model === "detector" && !this.has(scorer)) {
      throw new UsageError(`${this.dir}: the bundle has no ${scorer}`);
    }
    if ((precision === "fp32" || model === "detector") && this.has(scorer)) {
      const out = await this.run(scorer, images, [n, SIDE, SIDE]);
      return { via: scorer, scores: Float64Array.from(out.score.data) };
    }
    const encoded = await this.run(`${model}_encoder`, images, [n, SIDE, SIDE]);
    const z = model === "vae" ? encoded.z_mean.data : encoded.z.data;
    const pixels = await this.decode(z, n, model, precision);
    const scores = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const x = images.subarray(i * PIXELS, (i + 1) * PIXELS);
      const p = pixels.subarray(i * PIXELS, (i + 1) * PIXELS);
      let s = 0;
      if (model === "ae") {
        for (let j = 0; j < PIXELS; j++) s += (x[j] - p[j]) ** 2;
        s /= PIXELS;
      } else {
        for (let j = 0; j < PIXELS; j++) {
          const q = Math.min(Math.max(p[j], EPSILON), 1 - EPSILON);
          s -= x[j] * Math.log(q) + (1 - x[j]) * Math.log1p(-q);
        }
        const d = this.latentDim;
        const m = encoded.z_mean.data.subarray(i * d, (i + 1) * d);
        const lv = encoded.z_log_var.data.subarray(i * d, (i + 1) * d);
        let kl = 0;
        for (let k = 0; k < d; k++) kl += 1 + lv[k] - m[k] * m[k] - Math.exp(lv[k]);
        s += -0.5 * kl;
      }
      scores[i] = Math.fround(s);
    }
    return { via: `${model}_encoder + ${this.decoderRole(model, precision)}`, scores };
  }
}

// -- files ------------------------------------------------------------------------------------

function parseLatents(text, dim) {
  const rows = text.split(";").filter((r) => r.trim()).map((r) => r.split(",").map(Number));
  if (!rows.length || rows.some((r) => r.length !== dim || r.some((v) => !Number.isFinite(v)))) {
    throw new UsageError(`--z ${JSON.stringify(text)}: expected ${dim} numbers per latent, ';' between`);
  }
  return { z: Float32Array.from(rows.flat()), n: rows.length };
}

function readNpy(path) {
  const buf = readFileSync(path);
  if (buf.subarray(0, 6).toString("latin1") !== "\x93NUMPY") throw new UsageError(`${path}: not a .npy file`);
  const major = buf[6];
  const headerLength = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buf.subarray(start, start + headerLength).toString("latin1");
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shape = (/'shape':\s*\(([^)]*)\)/.exec(header)?.[1] ?? "")
    .split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  if (fortran !== "False") throw new UsageError(`${path}: Fortran-ordered arrays are not read`);
  const body = buf.subarray(start + headerLength);
  const count = shape.reduce((a, b) => a * b, 1);
  let values;
  if (descr === "|u1") values = new Uint8Array(body.buffer, body.byteOffset, count);
  else if (descr === "<f4") values = new Float32Array(body.buffer.slice(body.byteOffset, body.byteOffset + 4 * count));
  else if (descr === "<f8") values = new Float64Array(body.buffer.slice(body.byteOffset, body.byteOffset + 8 * count));
  else throw new UsageError(`${path}: dtype ${descr}, expected uint8, float32 or float64`);
  return { values, shape, integers: descr === "|u1" };
}

function readPgm(path) {
  const buf = readFileSync(path);
  const magic = buf.subarray(0, 2).toString("latin1");
  if (magic !== "P5" && magic !== "P2") throw new UsageError(`${path}: not a PGM (P5 or P2) file`);
  // header tokens: magic, width, height, maxval (comments start with #)
  const tokens = [];
  let i = 2;
  while (tokens.length < 3) {
    while (i < buf.length && /\s/.test(String.fromCharCode(buf[i]))) i++;
    if (buf[i] === 0x23) {
      while (i < buf.length && buf[i] !== 0x0a) i++;
      continue;
    }
    let token = "";
    while (i < buf.length && !/\s/.test(String.fromCharCode(buf[i]))) token += String.fromCharCode(buf[i++]);
    tokens.push(Number(token));
  }
  const [width, height, maxval] = tokens;
  if (width !== SIDE || height !== SIDE || maxval !== 255) {
    throw new UsageError(`${path}: ${width}x${height} maxval ${maxval}, expected 28x28 maxval 255`);
  }
  const values = magic === "P5"
    ? buf.subarray(i + 1, i + 1 + PIXELS)
    : buf.subarray(i).toString("latin1").trim().split(/\s+/).map(Number);
  return { values: Uint8Array.from(values), shape: [SIDE, SIDE], integers: true };
}

function readText(text, source) {
  const rows = text.split(/\r?\n/).filter((r) => r.trim());
  const values = rows.flatMap((r) => r.trim().split(/[\s,]+/).map(Number));
  if (values.length % PIXELS || values.some((v) => !Number.isFinite(v))) {
    throw new UsageError(`${source}: expected 784 numbers per image, got ${values.length} numbers`);
  }
  return { values, shape: [values.length / PIXELS, PIXELS], integers: values.every(Number.isInteger) };
}

// float32 images in [0, 1], as export.inputs.as_images makes them: 0-255 integers / 255
function asImages({ values, shape, integers }, source) {
  const perImage = shape.length <= 2 && shape.reduce((a, b) => a * b, 1) === PIXELS ? shape : shape.slice(1);
  const size = perImage.reduce((a, b) => a * b, 1);
  if (size !== PIXELS) throw new UsageError(`${source}: image shape (${perImage}), expected (28, 28) or (784,)`);
  const out = new Float32Array(values.length);
  for (let j = 0; j < values.length; j++) {
    const v = values[j];
    if (integers) {
      if (v < 0 || v > 255) throw new UsageError(`${source}: grey level ${v} outside 0-255`);
      out[j] = Math.fround(v / 255);
    } else {
      if (!(v >= 0 && v <= 1)) throw new UsageError(`${source}: pixel value ${v}, expected floats in [0, 1]`);
      out[j] = v;
    }
  }
  return { images: out, n: values.length / PIXELS };
}

function readImages(path) {
  const ext = extname(path).toLowerCase();
  if (ext === ".npy") return asImages(readNpy(path), path);
  if (ext === ".pgm") return asImages(readPgm(path), path);
  return asImages(readText(readFileSync(path, "utf8"), path), path);
}

function npyBytes(data, shape) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(", ")}${shape.length === 1 ? "," : ""}), }`;
  header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n";
  const head = Buffer.alloc(10);
  head.write("\x93NUMPY", 0, "latin1");
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  return Buffer.concat([head, Buffer.from(header, "latin1"), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]);
}

// one pixel as 8-bit grey: clip(rint(p * 255)) in float32, as export.images.to_uint8 (numpy's
// rint rounds halves to even, Math.round rounds them up)
function toGrey(p) {
  const x = Math.fround(p * 255);
  let r = Math.round(x);
  if (r - x === 0.5 && r % 2 !== 0) r -= 1;
  return Math.min(255, Math.max(0, r));
}

// the digits side by side, 8-bit grey
function strip(pixels, n) {
  const width = SIDE * n;
  const grey = new Uint8Array(width * SIDE);
  for (let d = 0; d < n; d++) {
    for (let r = 0; r < SIDE; r++) {
      for (let c = 0; c < SIDE; c++) grey[r * width + d * SIDE + c] = toGrey(pixels[d * PIXELS + r * SIDE + c]);
    }
  }
  return { grey, width, height: SIDE };
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function pngBytes({ grey, width, height }) {
  const chunk = (type, data) => {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, "latin1"), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([length, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 0; // greyscale
  const rows = Buffer.alloc((width + 1) * height);
  for (let r = 0; r < height; r++) rows.set(grey.subarray(r * width, (r + 1) * width), r * (width + 1) + 1);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(rows)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

function pgmBytes({ grey, width, height }) {
  return Buffer.concat([Buffer.from(`P5\n${width} ${height}\n255\n`, "latin1"), Buffer.from(grey)]);
}

// -- commands ---------------------------------------------------------------------------------

async function decode(bundle, o) {
  if (!o.z) throw new UsageError("decode needs --z");
  if (!o.out && !o.json) throw new UsageError("decode needs --out FILE (.npy, .pgm or .png) or --json");
  const { z, n } = parseLatents(o.z, bundle.latentDim);
  o.model = o.model ?? "vae";
  const pixels = await bundle.decode(z, n, o.model, o.precision, o.decoder);
  if (o.out) {
    const ext = extname(o.out).toLowerCase();
    if (ext === ".npy") writeFileSync(o.out, npyBytes(pixels, [n, SIDE, SIDE]));
    else if (ext === ".pgm") writeFileSync(o.out, pgmBytes(strip(pixels, n)));
    else if (ext === ".png") writeFileSync(o.out, pngBytes(strip(pixels, n)));
    else throw new UsageError(`--out ${o.out}: expected .npy, .pgm or .png`);
  }
  if (o.json) {
    console.log(JSON.stringify({
      model: o.model, decoder: o.decoder, precision: o.precision, n, pixels: Array.from(pixels),
    }));
  } else {
    const which = o.decoder === "compact" ? "compact decoder" : `${o.model} decoder`;
    console.log(`wrote ${n} digits to ${o.out} (${which} ${o.precision})`);
  }
}

async function score(bundle, o) {
  const sources = [];
  if (o.pixels) sources.push({ name: "--pixels", ...asImages(readText(o.pixels, "--pixels"), "--pixels") });
  for (const path of o.inputs) sources.push({ name: path, ...readImages(path) });
  if (!sources.length) throw new UsageError("score needs images: files or --pixels");
  o.model = o.model ?? bundle.defaultModel();
  const threshold = bundle.threshold(o.model);
  const results = [];
  for (const source of sources) {
    const { via, scores } = await bundle.score(source.images, source.n, o.model, o.precision);
    scores.forEach((s, index) => results.push({ source: source.name, index, score: s, anomaly: s > threshold, via }));
  }
  if (o.json) {
    console.log(JSON.stringify({ model: o.model, precision: o.precision, threshold, results }));
  } else {
    for (const r of results) console.log(`${basename(r.source)}[${r.index}] ${r.score.toPrecision(7)} ${r.anomaly ? 1 : 0}`);
    console.error(`${results.length} images scored with ${results[0].via} (${o.model}); anomaly: score > ${threshold}`);
  }
}

async function bench(bundle, o) {
  const role = bundle.decoderRole(o.model ?? "vae", o.precision, o.decoder);
  const session = await bundle.session(role);
  const name = session.inputNames[0];
  let seed = 1;
  const random = () => ((seed = (seed * 48271) % 2147483647) / 2147483647) * 2 - 1;
  const feeds = Array.from({ length: o.calls + o.warmup }, () => ({
    [name]: new ort.Tensor("float32", Float32Array.from({ length: bundle.latentDim }, random), [1, bundle.latentDim]),
  }));
  const times = [];
  for (let i = 0; i < feeds.length; i++) {
    const started = process.hrtime.bigint();
    await session.run(feeds[i]);
    if (i >= o.warmup) times.push(Number(process.hrtime.bigint() - started) / 1e3);
  }
  times.sort((a, b) => a - b);
  const pct = (p) => times[Math.min(times.length - 1, Math.floor((p / 100) * times.length))];
  console.log(JSON.stringify({ role, file: bundle.manifest.models[role].file, threads: o.threads, calls: o.calls, p50_us: pct(50), p99_us: pct(99) }));
}

const COMMANDS = { decode, score, bench };

try {
  const { command, options } = parseArgs(process.argv.slice(2));
  const bundle = new Bundle(options.bundle, options.threads);
  await COMMANDS[command](bundle, options);
} catch (err) {
  if (!(err instanceof UsageError)) throw err;
  console.error(`error: ${err.message}`);
  process.exit(2);
}
