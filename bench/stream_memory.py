"""Peak resident memory of ``python -m export score`` on 1,000,000 images from a .npy file, and on
10,000,000 (the same memory-mapped file given ten times): memory must stay flat.

    .venv/bin/python bench/stream_memory.py --run artifacts            # ~0.8 GB of scratch disk
    .venv/bin/python bench/stream_memory.py --run /tmp/full --repeats 1 --model ae

Builds the .npy (uint8, the 10,000 test digits tiled) in a temporary folder (``--dir``),
scores it (once per ``--repeats`` count) in a child process with the default batch size, reads
the child's peak RSS from the kernel (through GNU ``/usr/bin/time``, else ``getrusage(RUSAGE_CHILDREN)``), checks the row count of the output, and
deletes everything it wrote.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_RUN, REPO, machine, table  # noqa: E402


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
    return {"seconds": seconds, "peak_rss_kib": peak_kib, "method": method, "rows": rows,
            "summary": lines[-1]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder with export/")
    parser.add_argument("--images", type=int, default=1_000_000, help="images in the .npy")
    parser.add_argument(
        "--repeats",
        default="1,10",
        help="score the .npy given this many times on one command line, for each count "
        "(1,10: 1,000,000 then 10,000,000 images)",
    )
    parser.add_argument("--model", choices=("ae", "vae"), default="vae")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: /tmp)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "stream_memory.json")
    args = parser.parse_args()
    repeats = [int(r) for r in args.repeats.split(",")]
    run = args.run.resolve()
    with np.load(run / "data" / "mnist.npz", allow_pickle=False) as npz:
        digits = npz["test_images"]
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
        for count in repeats:
            result = score_once(run, [big] * count, args.model, args.batch_size, scratch / "s.csv")
            if result["rows"] != count * args.images:
                raise SystemExit(f"scored {result['rows']} rows, expected {count * args.images}")
            results.append({"repeats": count, "images": count * args.images, **result})
    finally:
        shutil.rmtree(scratch)
    base = results[0]["peak_rss_kib"]
    print(f"machine: {machine()}")
    print(f"python -m export score images.npy (x repeats) --model {args.model} "
          f"--batch-size {args.batch_size}")  # fmt: skip
    for r in results:
        print(f"  {r['summary']}")
    print(f"peak RSS measured with {results[0]['method']}; .npy on disk {size / 1e6:,.0f} MB")
    print()
    rows = [
        [
            f"{r['images']:,}",
            r["repeats"],
            f"{r['seconds']:.1f}",
            f"{r['images'] / r['seconds']:,.0f}",
            f"{r['peak_rss_kib'] / 1024:,.0f} MiB",
            f"{r['peak_rss_kib'] / base:.3f}",
        ]
        for r in results
    ]
    print(table(["images", "file given", "wall s", "images/s", "peak RSS", "RSS ratio"], rows))
    report = {
        "machine": machine(),
        "model": args.model,
        "batch_size": args.batch_size,
        "npy_images": args.images,
        "npy_bytes": size,
        "results": results,
        "rss_ratio_vs_first": [r["peak_rss_kib"] / base for r in results],
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
