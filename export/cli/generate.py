"""``python -m export generate``: decode latents (prior draws, a grid, or given) into digits."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from export import provenance
from export.bundle import DECODERS, MODELS
from export.cli.common import Parents, open_bundle, save_npy
from export.images import save_grid
from export.inputs import InputError

NAME = "generate"


def parse_z(text: str) -> np.ndarray:
    """``"0.4,0.4;-1,2"`` -> [[0.4, 0.4], [-1, 2]] float32."""
    try:
        rows = [[float(v) for v in row.split(",")] for row in text.split(";") if row.strip()]
        return np.array(rows, dtype=np.float32)
    except ValueError:
        raise InputError(
            f"--z {text!r}: expected numbers like 0.4,0.4 (';' between latents)"
        ) from None


def add_parser(sub: Any, parents: Parents) -> None:
    p = sub.add_parser(NAME, parents=[parents.sessions], help="decode latents into digits")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--n", type=int, default=100, help="digits drawn from the VAE prior")
    what.add_argument("--grid", type=int, metavar="SIDE", help="SIDE x SIDE latent-plane grid")
    what.add_argument("--z", help='latents to decode: "0.4,0.4" or "0,0;1,-1"')
    p.add_argument("--model", choices=MODELS, default="vae")
    p.add_argument(
        "--decoder",
        choices=DECODERS,
        default="full",
        help="the model's own decoder, or the compact one distilled from the VAE's (--model vae)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the prior draws")
    p.add_argument("--columns", type=int, help="digits per row of the PNG (default: square)")
    p.add_argument("--scale", type=int, default=1, help="enlarge the PNG this many times")
    p.add_argument("--out", required=True, help=".png grid or .npy array (n, 28, 28)")


def run(args: argparse.Namespace) -> int:
    bundle = open_bundle(args)
    if args.z is not None:
        mode, z = "z", parse_z(args.z)
    elif args.grid is not None:
        mode, z = "grid", bundle.grid_latents(args.grid, args.model)
    else:
        if args.model != "vae":
            raise InputError("--n samples the VAE prior; use --grid or --z with --model ae")
        mode, z = "sample", bundle.prior_latents(args.n, args.seed)
    images = bundle.generate(z, args.model, args.decoder)
    out = Path(args.out)
    if out.suffix.lower() == ".npy":
        save_npy(images, out)
    elif out.suffix.lower() == ".png":
        columns = args.grid if args.grid is not None else args.columns
        text = provenance.record(
            bundle, z, args.model, mode=mode, seed=args.seed, side=args.grid,
            columns=columns, scale=args.scale, decoder_kind=args.decoder,
        )  # fmt: skip
        save_grid(images, out, columns=columns, scale=args.scale, text=text)
    else:
        raise InputError(f"--out {out}: expected a .png or .npy file")
    print(f"wrote {len(images)} digits to {out}")
    return 0
