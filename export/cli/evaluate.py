"""``python -m export evaluate``: a score file against binary labels -> AUROC, AUPR, F1-max, TPR
at the calibrated threshold (``export.labelled``)."""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

from export import labelled
from export.bundle import DETECTOR, MODELS
from export.cli.common import Parents
from export.files import write_json_atomic

NAME = "evaluate"


def add_parser(sub: Any, parents: Parents) -> None:
    p = sub.add_parser(
        NAME,
        help="labelled scores -> AUROC, AUPR, F1-max, TPR at the calibrated threshold",
        description="Evaluate a score file of `score` (CSV or Parquet; columns source, index, "
        "score, read by name) against binary labels: a labels file (--labels, columns source, "
        "index and --label-column, default label), a column of the score file (--label-column "
        "alone), or the folder each source lies in (--label-from-folder: DIR/normal/*.png, "
        "DIR/anomaly/*.png). Labels are 0/1, true/false, or --positive NAME and one other "
        "value. Reports AUROC, average precision, F1-max and its threshold, the TPR at the "
        "threshold of --bundle (its manifest, --model's score) or --threshold (else the one the "
        "anomaly column implies) and the TPR at --fpr on these normal images. A bad file stops "
        "it with one error line (file, row, what was expected) and exit status 2.",
    )
    # the destinations are labelled.evaluate_file's parameter names: run passes them through
    p.add_argument("scores", metavar="SCORES", help="score file written by score (.csv, .parquet)")
    p.add_argument(
        "--labels",
        dest="labels_path",
        metavar="FILE",
        help="labels file: columns source, index, label",
    )
    p.add_argument(
        "--label-column",
        metavar="NAME",
        help="the label column: of --labels (default label), else of the score file itself",
    )
    p.add_argument(
        "--label-from-folder",
        dest="from_folders",
        action="store_true",
        help="each source's label is the name of the folder it lies in",
    )
    p.add_argument(
        "--positive",
        default=labelled.DEFAULT_POSITIVE,
        metavar="NAME",
        help=f"the label of an anomaly, for named labels (default {labelled.DEFAULT_POSITIVE})",
    )
    p.add_argument(
        "--bundle",
        type=Path,
        metavar="DIR",
        help="read the calibrated threshold from this bundle's manifest",
    )
    p.add_argument(
        "--model",
        choices=(DETECTOR, *MODELS),
        help="whose threshold (--bundle; default: the bundle's default score)",
    )
    p.add_argument("--threshold", type=float, help="flag score > THRESHOLD instead")
    p.add_argument(
        "--fpr",
        type=float,
        help="target FPR of the TPR-at-FPR line (default: the bundle's, else "
        f"{labelled.DEFAULT_FPR})",
    )
    p.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")


def run(args: argparse.Namespace) -> int:
    options = inspect.signature(labelled.evaluate_file).parameters
    result = labelled.evaluate_file(
        args.scores, **{name: getattr(args, name) for name in options if name != "scores_path"}
    )
    print(labelled.render(result))
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        write_json_atomic(args.json, result.to_json())
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
