"""What the subcommands share: the bundle and session arguments, reading inputs chunk by chunk
with a progress bar, and writing an array atomically.

    bundle = open_bundle(args)            # --bundle, --precision, --threads
    for chunk in chunks(args, "encode"):  # args.inputs, args.batch_size
        ...
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.bundle import PRECISIONS, Bundle
from export.files import atomic_path
from export.inputs import Chunk, iter_chunks
from export.progress import Progress
from export.streaming import DEFAULT_BATCH

DEFAULT_BUNDLE = "artifacts/export"
INPUT_HELP = ".npy .npz IDX .png folder .csv"


@dataclass(frozen=True)
class Parents:
    """Parent parsers: ``bundle`` (--bundle alone) and ``sessions`` (--bundle, --precision,
    --threads: for the commands that run the bundle's models)."""

    bundle: argparse.ArgumentParser
    sessions: argparse.ArgumentParser


def parents() -> Parents:
    bundle = argparse.ArgumentParser(add_help=False)
    bundle.add_argument(
        "--bundle",
        type=Path,
        default=Path(os.environ.get("MNIST_VAE_BUNDLE", DEFAULT_BUNDLE)),
        help="export bundle folder (default: $MNIST_VAE_BUNDLE or artifacts/export)",
    )
    sessions = argparse.ArgumentParser(add_help=False, parents=[bundle])
    sessions.add_argument(
        "--precision", choices=PRECISIONS, default="fp32", help="decoder precision"
    )
    sessions.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads (default 0: every core this process may use)",
    )
    return Parents(bundle, sessions)


def add_inputs(parser: argparse.ArgumentParser, what: str = "read and run") -> None:
    """INPUT... and --batch-size (alias --chunk-size)."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help=INPUT_HELP)
    parser.add_argument(
        "--batch-size",
        "--chunk-size",
        dest="batch_size",
        type=int,
        default=DEFAULT_BATCH,
        help=f"images {what} per batch; bounds memory (default {DEFAULT_BATCH})",
    )


def open_bundle(args: argparse.Namespace) -> Bundle:
    """The bundle of ``--bundle`` with the sessions ``--precision`` and ``--threads`` ask for."""
    return Bundle.load(args.bundle, precision=args.precision, threads=args.threads)


def chunks(args: argparse.Namespace, label: str) -> Iterator[Chunk]:
    """The images of ``args.inputs``, ``args.batch_size`` at a time, counted on a progress bar."""
    progress = Progress(label)
    try:
        for chunk in iter_chunks(args.inputs, args.batch_size):
            yield chunk
            progress.add(len(chunk.images))
    finally:
        progress.close()


def save_npy(array: np.ndarray, out: Path) -> None:
    """``array`` to ``out`` (.npy), renamed into place only when complete."""
    with atomic_path(out) as tmp, tmp.open("wb") as fh:
        np.save(fh, array)
