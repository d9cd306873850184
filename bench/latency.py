"""p50 / p99 latency of generating one digit (batch 1) with the ORT decoder.

    python -m bench.latency --run artifacts --calls 2000 --repeats 3

Each call is ``Bundle.generate(z)`` for one latent z (1, latent_dim) drawn beforehand: the
public API, input checks included. Rows: the VAE decoder in fp32 and int8, with one ORT
intra-op thread and with all cores (for one digit, waking a thread pool can cost more than it
saves). Every row is repeated ``--repeats`` times after 100 warm-up calls; the table shows the
medians of the per-repeat p50 and p99. Writes ``bench/results/latency.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
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
from export.bundle import Bundle, available_cores

WARMUP = 100


def latencies(bundle: Bundle, z: np.ndarray) -> np.ndarray:
    """Seconds per ``generate`` call, one per row of ``z``."""
    out = np.empty(len(z))
    for i in range(len(z)):
        started = time.perf_counter()
        bundle.generate(z[i : i + 1], "vae")
        out[i] = time.perf_counter() - started
    return out


def render(report: dict[str, Any]) -> str:
    """The run's table, from its result file."""
    rows = [
        [f"vae decoder {r['precision']}", r["threads"], f"{r['p50_us']:,.0f}",
         f"{r['p99_us']:,.0f}", f"{1e6 / r['p50_us']:,.0f}"]
        for r in report["rows"]
    ]  # fmt: skip
    return "\n".join(
        [
            f"machine: {report['machine']}",
            f"{report['calls']} calls x {report['repeats']} repeats after {report['warmup']} "
            "warm-up calls (medians of the per-repeat percentiles)",
            "",
            table(["model", "ORT threads", "p50 µs", "p99 µs", "digits/s at p50"], rows),
            "",
            render_load(report["load"]),
        ]
    )


def index_line(r: dict[str, Any]) -> str:
    """The line of the benchmarks' index: this result's headline figure."""
    row = next(x for x in r["rows"] if x["precision"] == "fp32" and x["threads"] == 1)
    return f"VAE decoder fp32, 1 thread: p50 {row['p50_us']:,.0f} µs, p99 {row['p99_us']:,.0f} µs"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder with export/")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=result_path("latency"), help="result file")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    rows = []
    for precision in ("fp32", "int8"):
        for threads in (1, available_cores()):
            bundle = Bundle.load(args.run / "export", precision, threads=threads)
            z = np.random.default_rng(0).standard_normal((args.calls, bundle.latent_dim))
            z = z.astype(np.float32)
            latencies(bundle, z[:WARMUP])
            p50s, p99s = [], []
            for _ in range(args.repeats):
                t = latencies(bundle, z)
                p50s.append(np.percentile(t, 50))
                p99s.append(np.percentile(t, 99))
            rows.append(
                {"precision": precision, "threads": threads,
                 "p50_us": statistics.median(p50s) * 1e6, "p99_us": statistics.median(p99s) * 1e6}
            )  # fmt: skip
            print(f"  {rows[-1]}", file=sys.stderr)
    report = {
        "machine": machine(),
        "command": command_line(),
        "run": str(args.run),
        "calls": args.calls,
        "repeats": args.repeats,
        "warmup": WARMUP,
        "rows": rows,
        "load": load_report(load_start),
    }
    write_result(args.json, report)
    print(render(report))


if __name__ == "__main__":
    main()
