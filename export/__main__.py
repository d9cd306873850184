"""Command line of the runtime: inspect a bundle, generate digits, encode, score and denoise images.

    python -m export info --bundle artifacts/export
    python -m export generate --n 100 --out digits.png          # 10 x 10 draws from the prior
    python -m export generate --grid 10 --out grid.png          # the latent plane, 10 x 10
    python -m export generate --z "0.4,0.4" --out one.png       # decode given latents (";" between)
    python -m export encode t10k-images-idx3-ubyte.gz --out latents.csv
    python -m export score pngs/ more.npy --model vae --out scores.csv
    python -m export score big.npy --fpr 0.05 --maps maps/ --out scores.csv   # p-values, maps
    python -m export denoise noisy.npy --out clean.npy          # or clean.png (one grid), clean/
    python -m export verify digits.png                        # was it made by this bundle?
    python -m export explorer --out site/ --serve             # the latent plane in a browser
    python -m export edge --out edge/                         # ORT-format models for devices
    python -m export score big.npy --batch-size 4096 --out scores.parquet --threads 8
    python -m export evaluate scores.csv --label-from-folder --bundle artifacts/export

The bundle is ``--bundle DIR``, else ``$MNIST_VAE_BUNDLE``, else ``artifacts/export``. Inputs
are read chunk by chunk (``export.inputs``), so scoring a large file needs little memory.
``score`` streams (``export.streaming``): ``--batch-size`` rows at a time, a progress bar on a
terminal, the output renamed into place only when complete. A bad record is reported on
stderr and in the errors file and skipped (exit status 1); ``--strict`` stops at the first one
(exit status 2, no output). Every PNG that ``generate`` writes records its provenance
(``export.provenance``); ``verify`` exits 0 only for a picture pixel-exactly regenerated from
its record by the given bundle.

Each subcommand is one module of ``export.cli``; this module builds the parser from them and
turns the runtime's errors into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from export.bundle import BundleError
from export.cli import COMMANDS
from export.cli.common import parents
from export.explorer import ExplorerError
from export.inputs import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    shared = parents()
    for command in COMMANDS:
        command.add_parser(sub, shared)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = {command.NAME: command.run for command in COMMANDS}[args.command]
    try:
        return run(args)
    except (InputError, BundleError, ValueError, ExplorerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
