"""Helpers shared by the benchmark scripts: timing, tables, the machine and what else ran on it,
and the one place results are written.

    seconds = median_time(lambda: work(), repeats=5)
    print(table(["method", "images/s"], [["ORT", "12,345"]]))
    write_result("latency", {"machine": machine(), "load": load_report(), ...})

Every script runs as a module from the repository root (``python -m bench.latency``) and writes
its result as JSON under ``bench/results/`` (``RESULTS``); ``bench/docs.py`` renders the pages
from those files only.
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.files import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RUN = REPO / "artifacts"
RESULTS = REPO / "bench" / "results"  # committed: the only source of the pages' figures


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


def busiest_processes(n: int = 6, min_cpu: float = 5.0) -> list[str]:
    """The processes using the most CPU right now, other than this one and its children: on a
    shared machine they say what else ran during a measurement."""
    out = subprocess.run(
        ["ps", "-eo", "pid,ppid,ni,pcpu,etime,args", "--sort=-pcpu"],
        capture_output=True, text=True, check=False,
    ).stdout.splitlines()[1:]  # fmt: skip
    me = os.getpid()
    rows = []
    for line in out:
        pid, ppid, ni, pcpu, etime, args = line.split(None, 5)
        if me in (int(pid), int(ppid)) or float(pcpu) < min_cpu:
            continue
        rows.append(f"nice {ni:>3}  {pcpu:>5}% cpu  up {etime:>11}  {args[:110]}")
    return rows[:n]


def load_report(start: Sequence[float] | None = None) -> dict[str, Any]:
    """The load averages (1, 5, 15 min) at the start (given) and now, the busiest other
    processes now, and this process's nice value: what a reader needs to judge a timing."""
    return {
        "start": [round(x, 2) for x in start] if start is not None else None,
        "end": [round(x, 2) for x in os.getloadavg()],
        "nice": os.nice(0),
        "busiest_other_processes": busiest_processes(),
    }


def render_load(load: dict[str, Any]) -> str:
    """The lines of ``load_report`` as the pages show them."""
    lines = []
    end = " ".join(f"{x:.2f}" for x in load["end"])
    if load.get("start"):
        start = " ".join(f"{x:.2f}" for x in load["start"])
        lines.append(f"load average (1, 5, 15 min) at the start {start}, at the end {end}")
    else:
        lines.append(f"load average (1, 5, 15 min) at the end {end}")
    if load.get("nice"):
        lines.append(f"the benchmark ran at nice {load['nice']}")
    others = load.get("busiest_other_processes") or []
    lines.append(
        "busiest other processes at the end:" if others else "no other process above 5% cpu"
    )
    lines += [f"  {line}" for line in others]
    return "\n".join(lines)


def command_line() -> str:
    """How this process was started, as ``python -m bench.NAME ARGS`` (for the result file)."""
    module = Path(sys.argv[0]).stem
    return shlex.join(["python", "-m", f"bench.{module}", *sys.argv[1:]])


def result_path(name: str) -> Path:
    return RESULTS / f"{name}.json"


def write_result(path: Path, report: dict[str, Any]) -> Path:
    """Write a benchmark's result atomically (a killed run leaves the previous file whole)."""
    write_json_atomic(path, report)
    print(f"wrote {path}", file=sys.stderr)
    return path


def load_images(run: Path, split: str = "test") -> np.ndarray:
    """A split of the run's ingested digits as float32 (n, 28, 28) in [0, 1]."""
    from pipeline.data import load_split

    images, _ = load_split(run / "data" / "mnist.npz", split)
    return images


def load_uint8(run: Path, split: str = "test") -> np.ndarray:
    """A split of the run's digits as uint8 (n, 28, 28), as the ingest stage stored them."""
    return np.round(load_images(run, split) * np.float32(255.0)).astype(np.uint8)
