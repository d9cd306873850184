"""Decode time per frame of the latent explorer: onnxruntime-web (WebAssembly, one thread) in
headless Chromium against the Python runtime (onnxruntime, CPU) on the same machine.

    python -m bench.explorer_decode --run artifacts [--frames 200]

Needs what the browser test needs (``make browser-deps``). One frame = one latent point decoded
by one decoder (batch of 1), as the page does under the pointer; the page times
``session.run``. The site is written to a temporary folder. Writes
``bench/results/explorer_decode.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_RUN,
    REPO,
    command_line,
    load_report,
    machine,
    render_load,
    result_path,
    table,
    write_result,
)
from export import explorer
from export.bundle import MODELS, PRECISIONS, Bundle


def browser_frames(bundle: Bundle, frames: int, out: Path, dist: Path) -> dict[str, list[float]]:
    site = explorer.build_site(bundle, out / "site", dist)
    server, url = explorer.start_server(site)
    try:
        chromium = os.environ.get("CHROMIUM") or shutil.which("chromium")
        subprocess.run(
            ["node", str(REPO / "tests/export/browser/explorer_check.mjs"), url, str(out),
             chromium],
            env={**os.environ, "EXPLORER_FRAMES": str(frames)},
            check=True,
            timeout=600,
        )  # fmt: skip
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


def render(report: dict[str, Any]) -> str:
    """The run's table, from its result file."""
    rows = []
    for key, native in report["python_ms"].items():
        w, p = np.asarray(report["browser_ms"][key]), np.asarray(native)
        rows.append(
            [key, f"{np.median(w):.3f} [{np.percentile(w, 90):.3f}]",
             f"{np.median(p):.3f} [{np.percentile(p, 90):.3f}]",
             f"{np.median(w) / np.median(p):.1f}"]
        )  # fmt: skip
    return "\n".join(
        [
            f"machine: {report['machine']}",
            f"decode time per frame (batch of 1), {report['frames']} frames each, "
            "median [p90] in ms",
            "",
            table(["decoder", "browser (wasm)", "python (ort)", "ratio"], rows),
            "",
            "browser times have the page's clock resolution (performance.now, ~0.1 ms headless)",
            render_load(report["load"]),
        ]
    )


def index_line(r: dict[str, Any]) -> str:
    """The line of the benchmarks' index: this result's headline figure."""
    key = "vae_fp32"
    return (
        f"VAE fp32 per frame: browser {statistics.median(r['browser_ms'][key]):.3f} ms, "
        f"Python {statistics.median(r['python_ms'][key]):.3f} ms"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder with export/")
    parser.add_argument("--frames", type=int, default=200, help="frames per model and precision")
    parser.add_argument(
        "--ort-dist",
        type=Path,
        default=Path(os.environ.get("ORT_WEB_DIST", REPO / "node_modules/onnxruntime-web/dist")),
        help="onnxruntime-web's dist folder (default $ORT_WEB_DIST, else node_modules')",
    )
    parser.add_argument(
        "--json", type=Path, default=result_path("explorer_decode"), help="result file"
    )
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    bundle_dir = args.run / "export"
    bundle = Bundle.load(bundle_dir)
    with tempfile.TemporaryDirectory() as tmp:
        web = browser_frames(bundle, args.frames, Path(tmp), args.ort_dist)
    native = python_frames(bundle_dir, args.frames)
    report = {
        "machine": machine(),
        "command": command_line(),
        "run": str(args.run),
        "frames": args.frames,
        "browser_ms": web,
        "python_ms": native,
        "load": load_report(load_start),
    }
    write_result(args.json, report)
    print(render(report))


if __name__ == "__main__":
    main()
