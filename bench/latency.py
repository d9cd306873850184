"""p50 / p99 latency of generating one digit (batch 1) with the ORT decoder.

    .venv/bin/python bench/latency.py --run artifacts --calls 2000

Each call is ``Bundle.generate(z)`` for one latent z (1, latent_dim) drawn beforehand: the
public API, input checks included. Rows: the VAE decoder in fp32 and int8, with one ORT
intra-op thread and with all cores (for one digit, waking a thread pool can cost more than it
saves). Every row is repeated ``--repeats`` times; the table shows the medians of p50 and p99.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_RUN, machine, table  # noqa: E402

from export.bundle import Bundle, available_cores  # noqa: E402


def latencies(bundle: Bundle, z: np.ndarray) -> np.ndarray:
    """Seconds per ``generate`` call, one per row of ``z``."""
    out = np.empty(len(z))
    for i in range(len(z)):
        started = time.perf_counter()
        bundle.generate(z[i : i + 1], "vae")
        out[i] = time.perf_counter() - started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder with export/")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rows = []
    for precision in ("fp32", "int8"):
        for threads in (1, available_cores()):
            bundle = Bundle.load(args.run / "export", precision, threads=threads)
            z = np.random.default_rng(0).standard_normal((args.calls, bundle.latent_dim))
            latencies(bundle, z[:100])  # warm-up
            p50s, p99s = [], []
            for _ in range(args.repeats):
                t = latencies(bundle, z.astype(np.float32))
                p50s.append(np.percentile(t, 50))
                p99s.append(np.percentile(t, 99))
            p50, p99 = statistics.median(p50s), statistics.median(p99s)
            rows.append(
                [f"vae decoder {precision}", threads, f"{p50 * 1e6:,.0f}", f"{p99 * 1e6:,.0f}",
                 f"{1 / p50:,.0f}"]
            )  # fmt: skip
            print(f"  {rows[-1]}", file=sys.stderr)
    print(f"machine: {machine()}")
    print(f"{args.calls} calls x {args.repeats} repeats (medians of the per-repeat percentiles)")
    print()
    print(table(["model", "ORT threads", "p50 µs", "p99 µs", "digits/s at p50"], rows))


if __name__ == "__main__":
    main()
