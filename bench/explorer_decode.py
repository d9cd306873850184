"""Decode time per frame of the latent explorer: onnxruntime-web (WebAssembly, one thread) in
headless Chromium against the Python runtime (onnxruntime, CPU) on the same machine.

    python bench/explorer_decode.py --bundle artifacts/export [--frames 200]

Needs what the browser test needs (`make browser-deps`). One frame = one latent point decoded
by one decoder (batch of 1), as the page does under the pointer; the page times session.run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from export import explorer
from export.bundle import MODELS, PRECISIONS, Bundle

REPO = Path(__file__).resolve().parents[1]


def browser_frames(bundle: Bundle, frames: int, out: Path) -> dict[str, list[float]]:
    site = explorer.build_site(bundle, out / "site", REPO / "node_modules/onnxruntime-web/dist")
    server, url = explorer.start_server(site)
    try:
        chromium = os.environ.get("CHROMIUM") or shutil.which("chromium")
        subprocess.run(
            [
                "node",
                str(REPO / "tests/export/browser/explorer_check.mjs"),
                url,
                str(out),
                chromium,
            ],
            env={**os.environ, "EXPLORER_FRAMES": str(frames)},
            check=True,
            timeout=600,
        )
    finally:
        server.shutdown()
    return json.loads((out / "result.json").read_text())["frames"]


def python_frames(bundle_dir: Path, frames: int) -> dict[str, list[float]]:
    times = {}
    rng = np.random.default_rng(0)
    for precision in PRECISIONS:
        bundle = Bundle.load(bundle_dir, precision=precision)
        for model in MODELS:
            z = rng.standard_normal((frames, bundle.latent_dim)).astype(np.float32)
            bundle.generate(z[:1], model)  # warm-up
            ms = []
            for row in z:
                t0 = time.perf_counter()
                bundle.generate(row[None], model)
                ms.append((time.perf_counter() - t0) * 1e3)
            times[f"{model}_{precision}"] = ms
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("artifacts/export"))
    parser.add_argument("--frames", type=int, default=200, help="frames per model and precision")
    args = parser.parse_args()
    bundle = Bundle.load(args.bundle)
    with tempfile.TemporaryDirectory() as tmp:
        web = browser_frames(bundle, args.frames, Path(tmp))
    native = python_frames(args.bundle, args.frames)
    print(f"decode time per frame (batch of 1), {args.frames} frames each, median [p90] in ms")
    print(f"{'decoder':<16} {'browser (wasm)':>16} {'python (ort)':>16} {'ratio':>7}")
    for key in native:
        w, p = np.asarray(web[key]), np.asarray(native[key])
        print(
            f"{key:<16} {np.median(w):>7.3f} [{np.percentile(w, 90):>6.3f}] "
            f"{np.median(p):>7.3f} [{np.percentile(p, 90):>6.3f}] {np.median(w) / np.median(p):>7.1f}"
        )
    print("browser times have the page's clock resolution (performance.now, ~0.1 ms headless)")


if __name__ == "__main__":
    main()
