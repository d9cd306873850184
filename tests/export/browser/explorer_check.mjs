// Drive the latent explorer in headless Chromium (Debian's, via playwright-core; no browser
// download) and report what the page decoded, as JSON, for tests/export/test_explorer.py.
//
//   node tests/export/browser/explorer_check.mjs URL OUT_DIR [CHROMIUM]
//
// Writes OUT_DIR/result.json ({requests, blocked, console, samples: [{model, precision, u, v,
// z, pixels}]}) and OUT_DIR/explorer.png. Every request outside URL's origin is blocked and
// reported. With EXPLORER_FRAMES=N it first sweeps the pointer N times round each plane per
// precision and reports the page's decode times as frames["vae_fp32"] etc. (bench/). Exits by
// itself within DEADLINE_MS.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const FRAMES = Number(process.env.EXPLORER_FRAMES || 0);
const DEADLINE_MS = 150_000 + 200 * FRAMES;
const [url, outDir, executablePath = "/usr/bin/chromium"] = process.argv.slice(2);
if (!url || !outDir) {
  console.error("usage: node explorer_check.mjs URL OUT_DIR [CHROMIUM]");
  process.exit(2);
}
setTimeout(() => {
  console.error(`explorer_check: no result within ${DEADLINE_MS} ms`);
  process.exit(3);
}, DEADLINE_MS).unref();

mkdirSync(outDir, { recursive: true });
const origin = new URL(url).origin;
const profile = mkdtempSync(join(tmpdir(), "explorer-chromium-"));
const requests = [];
const blocked = [];
const consoleLines = [];
const samples = [];
const frames = {};
let failure = null;
let state = null;

const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  timeout: 60_000,
  viewport: { width: 1000, height: 760 },
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  await context.route("**/*", (route) => {
    const u = route.request().url();
    if (u.startsWith(origin + "/")) return route.continue();
    blocked.push(u);
    return route.abort();
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("request", (r) => requests.push(r.url()));
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => window.explorer && (window.explorer.ready || window.explorer.error),
                             null, { timeout: 90_000 });
  const error = await page.evaluate(() => window.explorer.error);
  if (error) throw new Error(`the page failed: ${error}`);

  // move the pointer to (u, v) of a plane and read back what the page decoded there
  async function probe(model, u, v) {
    const plane = page.locator(`#plane-${model}`);
    await plane.scrollIntoViewIfNeeded();
    const box = await plane.boundingBox();
    const before = await page.evaluate(() => window.explorer.decodes);
    const x = box.x + u * box.width;
    const y = box.y + v * box.height;
    await page.mouse.move(x, y);
    await page.waitForFunction(
      (n) => (window.explorer.decodes > n && window.explorer.idle) || window.explorer.error,
      before, { timeout: 30_000 });
    const error = await page.evaluate(() => window.explorer.error);
    if (error) throw new Error(`the page failed: ${error}`);
    const last = await page.evaluate((m) => window.explorer.last[m], model);
    // the page maps client pixels to (u, v); report those it used
    return { model, u: (x - box.x) / box.width, v: (y - box.y) / box.height, ...last };
  }
  for (const precision of FRAMES > 0 ? ["fp32", "int8"] : []) {
    await page.evaluate((p) => window.explorer.setPrecision(p), precision);
    for (const model of ["vae", "ae"]) {
      frames[`${model}_${precision}`] = [];
      for (let i = 0; i < FRAMES; i++) {
        const t = (2 * Math.PI * i) / FRAMES;
        const s = await probe(model, 0.5 + 0.4 * Math.cos(t), 0.5 + 0.4 * Math.sin(t));
        frames[`${model}_${precision}`].push(s.ms);
      }
    }
  }
  if (FRAMES > 0) await page.evaluate(() => window.explorer.setPrecision("fp32"));
  samples.push(await probe("vae", 0.3, 0.7));
  samples.push(await probe("ae", 0.62, 0.35));
  await page.click("#int8");
  await page.waitForFunction(() => window.explorer.idle && window.explorer.last.vae.precision === "int8"
                             && window.explorer.last.ae.precision === "int8", null, { timeout: 60_000 });
  samples.push(await probe("vae", 0.55, 0.25));
  samples.push(await probe("ae", 0.4, 0.6));
  await page.click("#int8");
  await page.waitForFunction(() => window.explorer.idle && window.explorer.last.vae.precision === "fp32",
                             null, { timeout: 60_000 });
  samples.push(await probe("ae", 0.45, 0.45));
  samples.push(await probe("vae", 0.42, 0.38));
  await page.click("#compact");
  await page.waitForFunction(() => window.explorer.idle && window.explorer.last.vae.decoder === "compact",
                             null, { timeout: 60_000 });
  samples.push(await probe("vae", 0.42, 0.38));
  await page.click("#compact");
  await page.waitForFunction(() => window.explorer.idle && window.explorer.last.vae.decoder === "full",
                             null, { timeout: 60_000 });
  await page.screenshot({ path: join(outDir, "explorer.png"), fullPage: true });
} catch (err) {
  failure = String(err.stack ?? err);
  try {
    const page = context.pages()[0];
    state = await page.evaluate(() => ({ ...window.explorer, last: undefined }));
    await page.screenshot({ path: join(outDir, "explorer.png"), fullPage: true });
  } catch {}
} finally {
  writeFileSync(join(outDir, "result.json"), JSON.stringify(
    { origin, failure, state, requests, blocked, console: consoleLines, samples, frames }));
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failure ? 1 : 0);
