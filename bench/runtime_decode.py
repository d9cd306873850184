"""Time the runtime's decoders, fp32 against int8, and scoring, on one export bundle.

    python -m bench.runtime_decode --run artifacts [--repeats 20]

Median milliseconds per call of ``Bundle.generate`` (batches of 1, 64 and 1,024 latents over the
manifest's latent box) and ``Bundle.score`` (1,024 images: encoder and decoder), and the int8 /
fp32 ratio measured in the same run. Needs only the core dependencies (numpy, onnxruntime,
Pillow). Writes ``bench/results/runtime_decode.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_RUN,
    command_line,
    load_report,
    machine,
    render_load,
    result_path,
    table,
    write_result,
)
from export.bundle import Bundle


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: the first run allocates
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def render(report: dict[str, Any]) -> str:
    """The run's table, from its result file."""
    rows = [
        [r["call"], f"{r['batch']:,}", f"{r['fp32_ms']:.3f}", f"{r['int8_ms']:.3f}",
         f"{r['int8_ms'] / r['fp32_ms']:.2f}"]
        for r in report["rows"]
    ]  # fmt: skip
    return "\n".join(
        [
            f"machine: {report['machine']}",
            f"median of {report['repeats']} calls after one warm-up; ORT threads: all cores",
            "",
            table(["call", "batch", "fp32 ms", "int8 ms", "int8/fp32"], rows),
            "",
            render_load(report["load"]),
        ]
    )


def index_line(r: dict[str, Any]) -> str:
    """The line of the benchmarks' index: this result's headline figure."""
    row = next(x for x in r["rows"] if x["call"].startswith("score (vae"))
    return (
        f"VAE score of 1,024 images: fp32 {row['fp32_ms']:.1f} ms, int8/fp32 "
        f"{row['int8_ms'] / row['fp32_ms']:.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder with export/")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--json", type=Path, default=result_path("runtime_decode"), help="result file"
    )
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    fp32 = Bundle.load(args.run / "export")
    int8 = Bundle.load(args.run / "export", precision="int8")
    rng = np.random.default_rng(0)
    rows = []
    for model in ("vae", "ae"):
        for batch in (1, 64, 1024):
            z = fp32.grid_latents(32, model)[:batch]  # 1,024 latents over the manifest box
            a = median_ms(lambda z=z, m=model: fp32.generate(z, m), args.repeats)
            b = median_ms(lambda z=z, m=model: int8.generate(z, m), args.repeats)
            rows.append({"call": f"generate ({model})", "batch": batch, "fp32_ms": a, "int8_ms": b})
    images = rng.random((1024, 28, 28), dtype=np.float32)  # the cost does not depend on pixels
    for model in ("vae", "ae"):
        a = median_ms(lambda m=model: fp32.score(images, m), args.repeats)
        b = median_ms(lambda m=model: int8.score(images, m), args.repeats)
        rows.append(
            {"call": f"score ({model}, encode + decode)", "batch": 1024, "fp32_ms": a, "int8_ms": b}
        )
    report = {
        "machine": machine(),
        "command": command_line(),
        "run": str(args.run),
        "repeats": args.repeats,
        "rows": rows,
        "load": load_report(load_start),
    }
    write_result(args.json, report)
    print(render(report))


if __name__ == "__main__":
    main()
