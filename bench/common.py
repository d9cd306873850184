"""Helpers shared by the benchmark scripts: timing, tables and the machine's description.

seconds = median_time(lambda: work(), repeats=5)
print(table(["method", "images/s"], [["ORT", "12,345"]]))
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RUN = REPO / "artifacts"


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_flops(seconds: float = 1.0, n: int = 1024) -> float:
    """Float32 FLOP/s of numpy's matmul on n x n matrices: the best of ~``seconds`` of runs."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    a @ b
    rates = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates) < 5:
        started = time.perf_counter()
        a @ b
        rates.append(2.0 * n**3 / (time.perf_counter() - started))
    return float(np.max(rates))


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, columns padded to their widest cell."""
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def machine() -> str:
    """CPU model, cores this process may use, memory, OS and numpy's BLAS."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    blas = ""
    try:
        config = np.show_config(mode="dicts")
        blas = ", numpy BLAS " + config["Build Dependencies"]["blas"]["name"]
    except (TypeError, KeyError):
        pass
    return (
        f"{cpu}, {cores} cores{memory}; {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}{blas}{load}"
    )


def load_test_images(run: Path) -> np.ndarray:
    """The run's 10,000 test digits as float32 (n, 28, 28) in [0, 1]."""
    with np.load(run / "data" / "mnist.npz", allow_pickle=False) as npz:
        return npz["test_images"].astype(np.float32) / np.float32(255.0)
