"""Peak resident memory and speed of ``python -m export score`` on 1,000,000 images from a .npy
file, and on 10,000,000 (the same memory-mapped file given ten times): memory must stay flat,
and the stream must keep up with ``Bundle.score`` on in-memory batches (measured in the run).

    python -m bench.stream_memory --run artifacts            # the default score; ~0.8 GB of scratch disk
    python -m bench.stream_memory --run /tmp/full --repeats 1 --model ae

Builds the .npy (uint8, the 10,000 test digits tiled) in a temporary folder (``--dir``),
scores it (once per ``--repeats`` count) in a child process with the default batch size, reads
the child's peak RSS from the kernel (through GNU ``/usr/bin/time``, else ``getrusage(RUSAGE_CHILDREN)``), checks the row count of the output, and
deletes everything it wrote. Writes ``bench/results/stream_memory.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
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
    load_uint8,
    machine,
    render_load,
    result_path,
    table,
    write_result,
)


def score_once(
    run: Path, sources: list[Path], model: str, batch_size: int, out: Path
) -> dict[str, Any]:
    """``python -m export score SOURCES`` in a child process: wall time and peak RSS."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "export", "score", *map(str, sources)]
    command += ["--bundle", str(run / "export"), "--model", model]
    command += ["--batch-size", str(batch_size), "--out", str(out)]
    timer = Path("/usr/bin/time")
    if timer.exists():  # GNU time: the peak RSS of exactly the scorer's process
        command = [str(timer), "-f", "peak_rss_kib=%M", *command]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"score failed ({proc.returncode}):\n{proc.stderr}")
    lines = proc.stderr.strip().splitlines()
    if lines and lines[-1].startswith("peak_rss_kib="):
        peak_kib, method = int(lines.pop().split("=")[1]), "GNU time %M"
    else:  # the largest child so far: valid when each run peaks above the previous ones
        peak_kib = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
        method = "getrusage(RUSAGE_CHILDREN)"
    with out.open() as fh:
        rows = sum(1 for _ in fh) - 1
    out.unlink()
    summary = next(line for line in lines if line.startswith("scored "))
    # the scorer's own rate, from reading the first input to the last row (no process start)
    rate = float(summary.split(" images/s")[0].rsplit("(", 1)[1].replace(",", ""))
    return {"seconds": seconds, "peak_rss_kib": peak_kib, "method": method, "rows": rows,
            "summary": summary, "scoring_images_per_s": rate}  # fmt: skip


IN_MEMORY = """
import statistics, sys, time
import numpy as np
from export.bundle import Bundle
bundle = Bundle.load(sys.argv[1])
images = np.load(sys.argv[2], mmap_mode="r")[: int(sys.argv[3])].astype(np.float32) / 255
batch, model = int(sys.argv[4]), sys.argv[5]
bundle.score(images[:batch], model)  # warm-up
times = []
for _ in range(int(sys.argv[6])):
    started = time.perf_counter()
    for i in range(0, len(images), batch):
        bundle.score(images[i : i + batch], model)
    times.append(time.perf_counter() - started)
print(len(images) / statistics.median(times))
"""


def in_memory_rate(
    run: Path, npy: Path, images: int, batch: int, model: str, repeats: int = 3
) -> float:
    """Images/s of ``Bundle.score`` on in-memory float32 batches, in a child process (the
    baseline the streaming rate is compared with: the same model and batch size)."""
    command = [sys.executable, "-c", IN_MEMORY, str(run / "export"), str(npy), str(images)]
    command += [str(batch), model, str(repeats)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    return float(proc.stdout.strip())


def default_model(run: Path) -> str:
    """The bundle's default score ("detector" where it has one), from its manifest."""
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    return manifest["anomaly"].get("default", "vae")


def render(report: dict[str, Any]) -> str:
    """The run's description and table, from its result file."""
    results, baseline = report["results"], report["in_memory_images_per_s"]
    base = results[0]["peak_rss_kib"]
    lines = [
        f"machine: {report['machine']}",
        f"python -m export score images.npy (x repeats) --model {report['model']} "
        f"--batch-size {report['batch_size']}",
        *(f"  {r['summary']}" for r in results),
        f"peak RSS measured with {results[0]['method']}; .npy on disk "
        f"{report['npy_bytes'] / 1e6:,.0f} MB",
        f"baseline: Bundle.score on {report['in_memory_images']:,} in-memory float32 images, "
        f"batches of {report['batch_size']}: {baseline:,.0f} images/s (median of 3)",
        "",
    ]
    rows = [
        [
            f"{r['images']:,}",
            r["repeats"],
            f"{r['seconds']:.1f}",
            f"{r['scoring_images_per_s']:,.0f}",
            f"{r['peak_rss_kib'] / 1024:,.0f} MiB",
            f"{r['scoring_images_per_s'] / baseline:.2f}",
            f"{r['peak_rss_kib'] / base:.3f}",
        ]
        for r in results
    ]
    header = ["images", "file given", "wall s", "scoring images/s", "peak RSS", "vs in-memory"]
    text = "\n".join(lines) + "\n" + table([*header, "RSS ratio"], rows)
    if "load" in report:  # runs before the load was recorded have none
        text += "\n\n" + render_load(report["load"])
    return text


def index_line(r: dict[str, Any]) -> str:
    """The line of the benchmarks' index: this result's headline figure."""
    last = r["results"][-1]
    return (
        f"{last['images']:,} images at {last['scoring_images_per_s']:,.0f} images/s, peak RSS "
        f"{last['peak_rss_kib'] / 1024:,.0f} MiB"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder with export/")
    parser.add_argument("--images", type=int, default=1_000_000, help="images in the .npy")
    parser.add_argument(
        "--repeats",
        default="1,10",
        help="score the .npy given this many times on one command line, for each count "
        "(1,10: 1,000,000 then 10,000,000 images)",
    )
    parser.add_argument(
        "--model",
        choices=("detector", "ae", "vae"),
        help="whose score (default: the bundle's default score)",
    )
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: /tmp)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--json", type=Path, default=result_path("stream_memory"))
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    repeats = [int(r) for r in args.repeats.split(",")]
    run = args.run.resolve()
    model = args.model or default_model(run)
    digits = load_uint8(run, "test")
    scratch = Path(tempfile.mkdtemp(prefix="stream-memory-", dir=args.dir))
    results = []
    try:
        big = scratch / "images.npy"
        # written through a file handle, not a memory map: pages this process mapped would be
        # counted again in the child's peak RSS (a forked child starts with its parent's)
        with big.open("wb") as fh:
            header = {"descr": "|u1", "fortran_order": False, "shape": (args.images, 28, 28)}
            np.lib.format.write_array_header_1_0(fh, header)
            for start in range(0, args.images, len(digits)):
                fh.write(digits[: min(len(digits), args.images - start)].tobytes())
        size = big.stat().st_size
        baseline_images = min(args.images, 100_000)
        baseline = in_memory_rate(run, big, baseline_images, args.batch_size, model)
        for count in repeats:
            result = score_once(run, [big] * count, model, args.batch_size, scratch / "s.csv")
            if result["rows"] != count * args.images:
                raise SystemExit(f"scored {result['rows']} rows, expected {count * args.images}")
            results.append({"repeats": count, "images": count * args.images, **result})
    finally:
        shutil.rmtree(scratch)
    base = results[0]["peak_rss_kib"]
    report = {
        "machine": machine(),
        "command": command_line(),
        "model": model,
        "batch_size": args.batch_size,
        "npy_images": args.images,
        "npy_bytes": size,
        "in_memory_images_per_s": baseline,
        "in_memory_images": baseline_images,
        "results": results,
        "rss_ratio_vs_first": [r["peak_rss_kib"] / base for r in results],
        "load": load_report(load_start),
    }
    write_result(args.json, report)
    print(render(report))


if __name__ == "__main__":
    main()
