"""Peak resident memory of ``python -m export score`` on 1,000,000 images from a .npy file.

    .venv/bin/python bench/stream_memory.py --run artifacts            # ~0.8 GB of scratch disk
    .venv/bin/python bench/stream_memory.py --run /tmp/full --images 1000000 --model ae

Builds the .npy (uint8, the 10,000 test digits tiled) in a temporary folder (``--dir``),
scores it in a child process with the default batch size, reads the child's peak RSS from the
kernel (through GNU ``/usr/bin/time``, else ``getrusage(RUSAGE_CHILDREN)``), checks the row count of the output, and
deletes everything it wrote.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_RUN, REPO, machine, table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder with export/")
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--model", choices=("ae", "vae"), default="vae")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: /tmp)")
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args()
    run = args.run.resolve()
    with np.load(run / "data" / "mnist.npz", allow_pickle=False) as npz:
        digits = npz["test_images"]
    scratch = Path(tempfile.mkdtemp(prefix="stream-memory-", dir=args.dir))
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
        out = scratch / "scores.csv"
        started = time.perf_counter()
        command = [sys.executable, "-m", "export", "score", str(big)]
        command += ["--bundle", str(run / "export"), "--model", args.model]
        command += ["--batch-size", str(args.batch_size), "--out", str(out)]
        timer = Path("/usr/bin/time")
        if timer.exists():  # GNU time: the peak RSS of exactly the scorer's process
            command = [str(timer), "-f", "peak_rss_kib=%M", *command]
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"score failed ({proc.returncode}):\n{proc.stderr}")
        lines = proc.stderr.strip().splitlines()
        if lines and lines[-1].startswith("peak_rss_kib="):
            peak_kib, method = int(lines.pop().split("=")[1]), "GNU time %M"
        else:
            peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
            method = "getrusage(RUSAGE_CHILDREN)"
        with out.open() as fh:
            rows = sum(1 for _ in fh) - 1
        if rows != args.images:
            raise SystemExit(f"{out} holds {rows} rows, expected {args.images}")
        summary = lines[-1]
    finally:
        shutil.rmtree(scratch)
    print(f"machine: {machine()}")
    print(f"python -m export score images.npy --model {args.model} --batch-size {args.batch_size}")
    print(f"  {summary}")
    print(f"peak RSS measured with {method}")
    print()
    print(
        table(
            ["images", ".npy on disk", "batch size", "wall s", "images/s", "peak RSS"],
            [
                [
                    f"{args.images:,}",
                    f"{size / 1e6:,.0f} MB",
                    args.batch_size,
                    f"{seconds:.1f}",
                    f"{args.images / seconds:,.0f}",
                    f"{peak_kib / 1024:,.0f} MiB",
                ]
            ],
        )
    )


if __name__ == "__main__":
    main()
