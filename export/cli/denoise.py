"""``python -m export denoise``: noisy images -> the denoiser's clean digits (.npy, .png grid or a
folder of PNGs)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from export.bundle import Bundle
from export.cli.common import Parents, add_inputs, chunks, open_bundle, save_npy
from export.files import atomic_folder
from export.images import save_grid
from export.inputs import Chunk, InputError

NAME = "denoise"


def add_parser(sub: Any, parents: Parents) -> None:
    p = sub.add_parser(
        NAME,
        parents=[parents.sessions],
        help="noisy images -> the denoiser's clean digits",
        description="Run the bundle's denoiser on every image of the inputs, in order. --out "
        "FILE.npy: one float32 array (n, 28, 28) in [0, 1]; FILE.png: one grid of all of them; "
        "a folder (no suffix, new or empty): one 28x28 PNG per image, 000000.png, 000001.png, "
        "... Nothing is left under the name unless every image was denoised; a bad input "
        "stops it with one error line and exit status 2.",
    )
    add_inputs(p)
    p.add_argument(
        "--out", required=True, help=".npy array (n, 28, 28), .png grid, or a folder of PNGs"
    )
    p.add_argument("--columns", type=int, help=".png grid: digits per row (default: square)")
    p.add_argument("--scale", type=int, default=1, help=".png grid: enlarge this many times")


def write_png_folder(chunks_: Iterator[Chunk], bundle: Bundle, out: Path) -> int:
    """One 28x28 PNG per denoised image, ``000000.png`` on in input order, into a new folder.

    The folder is filled under a temporary name beside ``out`` and renamed into place, so it
    appears complete or not at all; an existing non-empty ``out`` is refused, never replaced.
    """
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise InputError(f"--out {out}: exists and is not an empty folder; choose a new one")
    n = 0
    with atomic_folder(out) as tmp:
        for chunk in chunks_:
            for image in bundle.denoise(chunk.images):
                save_grid(image[np.newaxis], tmp / f"{n:06d}.png")
                n += 1
    return n


def run(args: argparse.Namespace) -> int:
    bundle = open_bundle(args)
    sigma = bundle.denoiser_sigma()  # fails before any input is read if there is no denoiser
    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix in (".npy", ".png"):
        images = np.concatenate([bundle.denoise(c.images) for c in chunks(args, NAME)])
        if suffix == ".npy":
            save_npy(images, out)
        else:
            save_grid(images, out, columns=args.columns, scale=args.scale)
        n = len(images)
    elif suffix and not out.is_dir():
        raise InputError(f"--out {out}: expected a .npy file, a .png file or a folder")
    else:
        n = write_png_folder(chunks(args, NAME), bundle, out)
    print(f"wrote {n} denoised digits to {out} (denoiser trained at noise sigma {sigma:g})")
    return 0
