"""``python -m export encode``: images -> latents, as CSV (source, index, z_...) or .npy."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import numpy as np

from export.bundle import MODELS
from export.cli.common import Parents, add_inputs, chunks, open_bundle, save_npy
from export.files import atomic_path
from export.inputs import InputError

NAME = "encode"


def add_parser(sub: Any, parents: Parents) -> None:
    p = sub.add_parser(NAME, parents=[parents.sessions], help="images -> latents")
    add_inputs(p)
    p.add_argument("--model", choices=MODELS, default="vae")
    p.add_argument("--out", required=True, help=".csv (source, index, z_...) or .npy")


def run(args: argparse.Namespace) -> int:
    bundle = open_bundle(args)
    out = Path(args.out)
    d = bundle.latent_dim
    if out.suffix.lower() == ".npy":
        z = np.concatenate([bundle.encode(c.images, args.model) for c in chunks(args, NAME)])
        save_npy(z, out)
        print(f"wrote {len(z)} latents {z.shape} to {out}")
        return 0
    if out.suffix.lower() != ".csv":
        raise InputError(f"--out {out}: expected a .csv or .npy file")
    header = ["source", "index", *(f"z_{i}" for i in range(d))]
    if args.model == "vae":
        header += [f"z_log_var_{i}" for i in range(d)]
    n = 0
    with atomic_path(out) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for chunk in chunks(args, NAME):
            if args.model == "vae":
                z_mean, z_log_var = bundle.posterior(chunk.images)
                values = np.concatenate([z_mean, z_log_var], axis=1)
            else:
                values = bundle.encode(chunk.images, "ae")
            for i, row in enumerate(values):
                writer.writerow([chunk.source, chunk.start + i, *(f"{v:.7g}" for v in row)])
            n += len(values)
    print(f"wrote {n} latents to {out}")
    return 0
