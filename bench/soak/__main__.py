"""Reliability soak: SIGKILL the pipeline at random moments of every stage, resume it each time;
the killed-and-resumed result must be bit for bit the one of a run that was never interrupted.

    MNIST_MIRROR=../shared/data/mnist nice -n 10 python -m bench.soak --kills 100
    nice -n 10 python -m bench.soak --kills 6 --out /tmp/soak --seed 1 --keep
    python -m bench.soak --render bench/results/soak.json     # the tables of an earlier run

The protocol (the kill plan, what is compared and what may differ) is docs/benchmarks/soak.md.
Exit status: 0 when every pass equals the reference and no restart failed; 1 when a comparison
differs, a restart exited with an error of its own (not our SIGKILL) or a stage line never came;
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, result_path, write_result
from bench.soak.report import render
from bench.soak.runner import soak

DEFAULT_CONFIG = REPO / "configs" / "smoke.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=100, help="SIGKILLs to land (default 100)")
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="pipeline config (default: smoke)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for the runs (default: a new one in /tmp)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument(
        "--json",
        type=Path,
        default=result_path("soak"),
        help="summary file (default: bench/results/soak.json)",
    )
    parser.add_argument(
        "--mirror", type=Path, default=None, help="offline MNIST mirror (default: $MNIST_MIRROR)"
    )
    parser.add_argument(
        "--per-pass",
        type=int,
        default=3,
        help="most kills aimed at one stage in one pass from an empty folder (default 3)",
    )
    parser.add_argument("--keep", action="store_true", help="keep run folders that are equal")
    parser.add_argument(
        "--render", type=Path, default=None, help="print the tables of a summary file and exit"
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        summary = json.loads(args.render.read_text())
        print(render(summary))
        return 0 if summary["equal"] else 1
    if args.mirror is None:
        env = os.environ.get("MNIST_MIRROR")
        args.mirror = Path(env) if env else None
    if args.mirror is None or not (args.mirror / "train-images-idx3-ubyte.gz").is_file():
        print("error: give the offline MNIST mirror (--mirror or MNIST_MIRROR)", file=sys.stderr)
        return 2
    if args.kills < 1 or args.per_pass < 1:
        print("error: --kills and --per-pass must be at least 1", file=sys.stderr)
        return 2
    args.out = (args.out or Path(tempfile.mkdtemp(prefix="mnist-vae-soak."))).resolve()
    summary = soak(args)
    summary["out"] = str(args.out)
    write_result(args.json, summary)
    print()
    print(render(summary))
    return 0 if summary["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
