"""``python -m export score``: stream images through a model into a score file.

Exit status: 0 all scored; 1 some records failed (reported, the rest scored); 2 a fatal error
(``--strict`` makes the first bad record one), with no output file left behind.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from export.bundle import DETECTOR, MODELS
from export.cli.common import Parents, add_inputs, open_bundle
from export.inputs import InputError
from export.scorefile import FORMATS
from export.streaming import score_files

NAME = "score"
MAX_ERROR_LINES = 20  # record errors echoed on stderr; all of them go to the errors file


def add_parser(sub: Any, parents: Parents) -> None:
    p = sub.add_parser(NAME, parents=[parents.sessions], help="images -> anomaly scores")
    add_inputs(p)
    p.add_argument(
        "--model",
        choices=(DETECTOR, *MODELS),
        help="whose score: the detector (the default where the bundle has one), or the 2-D "
        "models' (ae: reconstruction error, vae: negative ELBO)",
    )
    p.add_argument("--out", help="scores .csv or .parquet (default: CSV on stdout)")
    p.add_argument("--format", choices=FORMATS, help="csv or parquet (default: by suffix)")
    p.add_argument(
        "--errors", help="errors file (default: OUT's stem + .errors.csv, written if any)"
    )
    p.add_argument("--strict", action="store_true", help="stop at the first bad record (exit 2)")
    cut = p.add_mutually_exclusive_group()
    cut.add_argument(
        "--fpr",
        type=float,
        help="flag above the threshold that flags this share of the bundle's validation "
        "digits (instead of the calibrated threshold)",
    )
    cut.add_argument("--threshold", type=float, help="flag scores above this value")
    p.add_argument(
        "--maps",
        metavar="DIR",
        help="write per-pixel score maps (NAME.maps.npy per input) and a mosaic of the "
        "most anomalous images to DIR",
    )


def run(args: argparse.Namespace) -> int:
    """Stream the inputs through the model ``args.batch_size`` rows at a time
    (``export.streaming.score_files``) and say on stderr what was scored and flagged."""
    if args.batch_size <= 0:
        raise InputError(f"--batch-size must be positive, got {args.batch_size}")
    bundle = open_bundle(args)
    done = score_files(
        bundle,
        args.inputs,
        args.out,
        model=args.model,
        batch_size=args.batch_size,
        fmt=args.format,
        errors=args.errors,
        strict=args.strict,
        threshold=args.threshold,
        fpr=args.fpr,
        maps=args.maps,
        echo_errors=MAX_ERROR_LINES,
    )
    model = bundle.default_model if args.model is None else args.model
    if args.threshold is not None:
        origin = "given by --threshold"
    elif args.fpr is not None:
        origin = f"flagging {args.fpr} of the validation digits, --fpr"
    else:
        origin = f"calibrated at fpr {bundle.manifest['anomaly']['fpr']}"
    n, share = done.scored, f" ({100 * done.flagged / done.scored:.2f}%)" if done.scored else ""
    print(
        f"scored {n} images with the {model} score in {done.seconds:.1f} s "
        f"({n / max(done.seconds, 1e-9):,.0f} images/s): {done.flagged} anomalies{share} above "
        f"the threshold {done.threshold:.6g} ({origin})"
        + ("" if args.out in (None, "-") else f"; wrote {args.out} ({done.fmt})")
        + ("" if args.maps is None else f"; pixel maps in {args.maps}"),
        file=sys.stderr,
    )
    if not done.p_values:
        print(
            f"note: {bundle.directory} stores no validation scores, so the p_value column is "
            "empty; export the bundle again to fill it",
            file=sys.stderr,
        )
    if done.failed:
        more = done.failed - MAX_ERROR_LINES
        print(
            f"{done.failed} records failed and were skipped"
            + (f" ({more} not shown above)" if more > 0 else "")
            + f"; see {done.errors_path}",
            file=sys.stderr,
        )
        return 1
    return 0
