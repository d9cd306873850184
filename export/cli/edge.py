"""``python -m export edge``: the bundle's models in ORT format for devices (``export.edge``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from export.bundle import BundleError
from export.cli.common import Parents
from export.edge import OPERATORS, EdgeError, build_edge

NAME = "edge"


def add_parser(sub: Any, parents: Parents) -> None:
    p = sub.add_parser(
        NAME,
        parents=[parents.bundle],
        help="the bundle's models in ORT format, with the operator list of a reduced build",
        description="Convert every model of the bundle to ONNX Runtime's ORT format into a new "
        "folder, with required_operators.config (the operators of a reduced build), README.md "
        "(each model's inputs, outputs and size) and manifest.json (the bundle's format, "
        "pointing at the .ort files). Needs the onnx package: pip install 'mnist-vae[edge]'.",
    )
    p.add_argument("--out", required=True, type=Path, help="folder to write (new or empty)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")


def run(args: argparse.Namespace) -> int:
    try:
        manifest = build_edge(args.bundle, args.out, replace=args.force)
    except (EdgeError, BundleError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sizes = ", ".join(
        f"{e['file']} {manifest['files'][e['file']]['bytes']:,} B"
        for e in manifest["models"].values()
    )
    print(f"wrote {args.out}: {sizes}; {OPERATORS}: {len(manifest['edge']['operators'])} lines")
    return 0
