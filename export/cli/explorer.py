"""``python -m export explorer``: write (and serve) the latent explorer web page."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from export import explorer
from export.bundle import Bundle
from export.cli.common import Parents
from export.inputs import InputError

NAME = "explorer"


def add_parser(sub: Any, parents: Parents) -> None:
    p = sub.add_parser(
        NAME, parents=[parents.bundle], help="write (and serve) the latent explorer web page"
    )
    p.add_argument("--out", help="folder to write the site to (default with --serve: a temp one)")
    p.add_argument("--serve", action="store_true", help="serve the site on 127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="port of --serve (0: any free one)")
    p.add_argument(
        "--ort-dist",
        type=Path,
        help="onnxruntime-web's dist/ folder (default: $ORT_WEB_DIST, else "
        "node_modules/onnxruntime-web/dist in the current folder or a parent)",
    )
    p.add_argument(
        "--points-from",
        metavar="INPUT",
        help="images to place on the plane when the bundle has no test_latents.npz "
        "(e.g. t10k-images-idx3-ubyte.gz)",
    )


def run(args: argparse.Namespace) -> int:
    bundle = Bundle.load(args.bundle)
    out = Path(args.out) if args.out else None
    if out is None and not args.serve:
        raise InputError("explorer: give --out SITE_DIR, --serve, or both")
    with explorer.site_folder(out) as folder:
        explorer.build_site(bundle, folder, ort_dist=args.ort_dist, points_from=args.points_from)
        print(f"wrote the explorer to {folder} (open index.html through any static web server)")
        if args.serve:
            explorer.serve_forever(folder, args.port)
    return 0
