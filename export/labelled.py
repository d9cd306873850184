"""Labelled evaluation of a score file: how well its scores separate anomalies from normal images.

    scores = read_scores("scores.csv")                         # written by python -m export score
    labels = labels_from_folders(scores, positive="anomaly")   # DIR/normal/*.png, DIR/anomaly/*.png
    labels = labels_from_file(scores, "labels.csv")            # columns source, index, label
    labels = labels_from_column(scores, "label")               # a column of the score file
    result = evaluate(scores, labels, threshold=Threshold(255.8, "bundle artifacts/export, vae"))
    print(render(result)); write_json_atomic("eval.json", result.to_json())

``export.scorefile`` reads the score file; this module matches labels to its rows and measures.
Labels are binary: ``0``/``1``, ``true``/``false``, or a positive name (``--positive``, default
``anomaly``) and one other value. Every metric comes from ``export.metrics``. Bad input raises
``EvaluationError`` (a ``ScoreFileError``) with one line naming the file, the row (data rows
count from 1, the header excluded) and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export import metrics
from export.inputs import split_source
from export.scorefile import (
    FALSE_WORDS,
    TRUE_WORDS,
    ScoreFileError,
    Scores,
    index_cell,
    read_columns,
    read_scores,
)

DEFAULT_POSITIVE = "anomaly"
DEFAULT_FPR = 0.01


class EvaluationError(ScoreFileError):
    """Labels or options that cannot be evaluated: names the file, the row, the problem."""


@dataclasses.dataclass(frozen=True)
class Labels:
    """Binary labels of every row of a ``Scores``, and where they came from."""

    positives: np.ndarray  # (n,) bool, True for an anomaly
    origin: str  # "labels.csv column 'label'", "the folders of scores.csv", ...
    positive: str  # the value that means anomaly
    negative: str  # the value that means normal
    unscored: int = 0  # labelled images with no row in the score file (e.g. failed records)


@dataclasses.dataclass(frozen=True)
class Threshold:
    """The threshold an operating point is read at, and what it is (for the report)."""

    value: float
    origin: str  # "bundle artifacts/export (vae, calibrated at FPR 0.01)", "--threshold", ...


@dataclasses.dataclass(frozen=True)
class Evaluation:
    scores: str
    labels: str
    rows: int
    positives: int
    negatives: int
    positive_label: str
    negative_label: str
    unscored_labels: int
    auroc: float
    average_precision: float
    f1_max: metrics.F1Max
    at_threshold: metrics.OperatingPoint | None
    threshold_origin: str | None
    target_fpr: float
    tpr_at_fpr: float
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["notes"] = list(self.notes)
        return out


# -- labels -------------------------------------------------------------------------------------


def binary_labels(
    values: Sequence[Any], where: Callable[[int], str], positive: str, origin: str
) -> Labels:
    """Label cells -> bool (True: anomaly); ``where(k)`` names row k in errors, ``origin`` the
    labels as a whole.

    ``0``/``1`` and ``true``/``false`` (any case) are read as such when every label is one of
    them; otherwise ``positive`` marks an anomaly and exactly one other value means normal.
    """
    texts = [str(v).strip() for v in values]
    lowered = [t.lower() for t in texts]
    if all(t in TRUE_WORDS or t in FALSE_WORDS for t in lowered):
        result = np.array([t in TRUE_WORDS for t in lowered])
        pos_text = next((t for t in lowered if t in TRUE_WORDS), "1")
        neg_text = next((t for t in lowered if t in FALSE_WORDS), "0")
    else:
        other = None
        for k, text in enumerate(texts):
            if not text:
                raise EvaluationError(f"{where(k)}: empty label, expected a binary label")
            if text in (positive, other):
                continue
            if other is not None:
                if positive in texts[:k]:
                    problem = f"a third value after {positive!r} and {other!r}"
                else:
                    problem = f"after {other!r}, and neither is the positive label {positive!r}"
                raise EvaluationError(
                    f"{where(k)}: label {text!r}, {problem}; expected binary labels: 0/1, "
                    "true/false, or the positive label (--positive NAME) and one other value"
                )
            other = text
        result = np.array([t == positive for t in texts])
        pos_text, neg_text = positive, other or ""
    n_pos = int(result.sum())
    if n_pos in (0, len(result)):
        only, kind = (pos_text, "anomalous") if n_pos else (neg_text, "normal")
        hint = "" if n_pos else f" (the positive label is {positive!r}: --positive NAME)"
        raise EvaluationError(
            f"{origin}: all {len(result)} labels are {only!r} ({kind}){hint}; the metrics need "
            "both normal and anomalous images"
        )
    return Labels(result, origin, pos_text, neg_text)


def labels_from_column(scores: Scores, column: str, positive: str = DEFAULT_POSITIVE) -> Labels:
    """Labels from a column of the score file itself (read with ``read_scores(extra=...)``)."""
    if column not in scores.extra:
        raise EvaluationError(f"{scores.path}: column {column!r} was not read")
    return binary_labels(
        scores.extra[column], scores.where, positive, f"{scores.path} column {column!r}"
    )


def labels_from_folders(scores: Scores, positive: str = DEFAULT_POSITIVE) -> Labels:
    """Labels from the folder each source lies in: ``DIR/anomaly/x.png`` -> ``anomaly``."""
    folders = []
    for row, source in enumerate(scores.source):
        folder = split_source(source)[0].parent.name
        if not folder:
            raise EvaluationError(
                f"{scores.where(row)}: source {source!r} lies in no folder to take its label "
                "from (expected DIR/normal/..., DIR/anomaly/...)"
            )
        folders.append(folder)
    return binary_labels(folders, scores.where, positive, f"the folders of {scores.path}")


def labels_from_file(
    scores: Scores, path: str | Path, column: str = "label", positive: str = DEFAULT_POSITIVE
) -> Labels:
    """Labels from a CSV (or Parquet) file with the columns ``source``, ``index`` and
    ``column``, matched to the score rows by (source, index) exactly as the scorer wrote them.

    Every score row needs a label; labelled images the score file lacks (records the scorer
    skipped) are counted in ``unscored``.
    """
    path = Path(path)
    cells, n = read_columns(path, ("source", "index", column))
    if column not in cells:
        raise EvaluationError(f"{path}: no column {column!r}")
    if n == 0:
        raise EvaluationError(f"{path}: no rows (only a header); expected a label per image")
    by_key: dict[tuple[str, int], int] = {}
    for row in range(n):
        where = f"{path} row {row + 1}"
        key = (str(cells["source"][row]), index_cell(cells["index"][row], where, "index"))
        if key in by_key:
            raise EvaluationError(
                f"{where}: {key[0]}[{key[1]}] is labelled twice (first at row {by_key[key] + 1})"
            )
        by_key[key] = row
    rows = []
    for row, key in enumerate(zip(scores.source, scores.index.tolist(), strict=True)):
        if key not in by_key:
            raise EvaluationError(
                f"{path}: no label for {scores.where(row)}; expected a row with source "
                f"{key[0]!r} and index {key[1]}"
            )
        rows.append(by_key[key])
    values = [cells[column][r] for r in rows]
    labels = binary_labels(
        values, lambda k: f"{path} row {rows[k] + 1}", positive, f"{path} column {column!r}"
    )
    return dataclasses.replace(labels, unscored=n - len(rows))


# -- the threshold ------------------------------------------------------------------------------


def threshold_from_flags(scores: Scores) -> Threshold:
    """The threshold the scorer used, read back from the file's anomaly column: the highest
    unflagged score (flags are ``score > threshold``). Raises when the column is missing or no
    single threshold explains it (files scored with different thresholds or models)."""
    if scores.flags is None:
        raise EvaluationError(
            f"{scores.path}: no anomaly column to read the threshold from; give --threshold "
            "or --bundle"
        )
    flagged, kept = scores.score[scores.flags], scores.score[~scores.flags]
    if flagged.size and kept.size and kept.max() >= flagged.min():
        high = int(np.flatnonzero(~scores.flags)[np.argmax(kept)])
        low = int(np.flatnonzero(scores.flags)[np.argmin(flagged)])
        raise EvaluationError(
            f"{scores.path}: the anomaly column is not score > one threshold ({scores.where(low)} "
            f"is flagged at {scores.score[low]:.7g}, {scores.where(high)} is not at "
            f"{scores.score[high]:.7g}); give --threshold or --bundle"
        )
    value = float(kept.max()) if kept.size else float(np.nextafter(flagged.min(), -np.inf))
    return Threshold(value, f"the anomaly column of {scores.path} (highest unflagged score)")


# -- the evaluation -----------------------------------------------------------------------------


def evaluate(
    scores: Scores,
    labels: Labels,
    threshold: Threshold | None = None,
    target_fpr: float = DEFAULT_FPR,
) -> Evaluation:
    """Every metric of ``scores`` against ``labels``: AUROC, average precision, F1-max, the
    operating point at ``threshold`` and the TPR at ``target_fpr`` on these negatives."""
    s, y = scores.score, labels.positives
    notes = []
    at = None
    if threshold is not None:
        at = metrics.operating_point(s, y, threshold.value)
        if scores.flags is not None:
            file_flags = int(scores.flags.sum())
            if file_flags != at.flagged or not np.array_equal(scores.flags, s > threshold.value):
                notes.append(
                    f"the anomaly column of {scores.path} flags {file_flags} rows, score > "
                    f"{threshold.value:.7g} flags {at.flagged}: were they scored with another "
                    "model or threshold?"
                )
    if labels.unscored:
        notes.append(
            f"{labels.unscored} labelled images have no row in {scores.path} (skipped by the "
            "scorer?); they are left out"
        )
    n_pos = int(y.sum())
    return Evaluation(
        scores=str(scores.path),
        labels=labels.origin,
        rows=len(s),
        positives=n_pos,
        negatives=len(s) - n_pos,
        positive_label=labels.positive,
        negative_label=labels.negative,
        unscored_labels=labels.unscored,
        auroc=metrics.roc_auc(s, y),
        average_precision=metrics.average_precision(s, y),
        f1_max=metrics.f1_max(s, y),
        at_threshold=at,
        threshold_origin=None if threshold is None else threshold.origin,
        target_fpr=target_fpr,
        tpr_at_fpr=metrics.tpr_at_fpr(s, y, target_fpr),
        notes=tuple(notes),
    )


def _table(rows: Sequence[Sequence[str]]) -> Iterator[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        yield "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        if k == 0:
            yield "| " + " | ".join("-" * w for w in widths) + " |"


def render(result: Evaluation) -> str:
    """The evaluation as a few lines and a Markdown table."""
    f1 = result.f1_max
    rows = [
        ["metric", "value", "detail"],
        ["AUROC", f"{result.auroc:.4f}", "P(anomaly scores above normal), ties half"],
        [
            "AUPR (average precision)",
            f"{result.average_precision:.4f}",
            f"chance level {result.positives / result.rows:.4f} (the share of anomalies)",
        ],
        [
            "F1-max",
            f"{f1.f1:.4f}",
            f"at score > {f1.threshold:.7g}: precision {f1.precision:.4f}, recall {f1.recall:.4f}",
        ],
    ]
    if result.at_threshold is not None:
        at = result.at_threshold
        rows.append(
            [
                "TPR at the threshold",
                f"{at.tpr:.4f}",
                f"score > {at.threshold:.7g} ({result.threshold_origin}): FPR {at.fpr:.4f}, "
                f"precision {at.precision:.4f}, F1 {at.f1:.4f}, {at.flagged} flagged",
            ]
        )
    rows.append(
        [
            f"TPR at FPR {result.target_fpr:g}",
            f"{result.tpr_at_fpr:.4f}",
            f"threshold calibrated on these {result.negatives} normal images",
        ]
    )
    head = (
        f"{result.scores}: {result.rows} rows, {result.positives} anomalous "
        f"({result.positive_label!r}) and {result.negatives} normal ({result.negative_label!r}); "
        f"labels from {result.labels}"
    )
    return "\n".join([head, "", *_table(rows)])


def bundle_threshold(directory: str | Path, model: str | None) -> tuple[Threshold, float]:
    """The calibrated threshold of ``model`` (None: the bundle's default score) in a bundle's
    manifest, and the FPR it was calibrated at (the bundle is loaded, so its checksums are
    verified)."""
    from export.bundle import Bundle

    bundle = Bundle.load(directory)
    model = bundle.default_model if model is None else model
    fpr = float(bundle.manifest["anomaly"]["fpr"])
    origin = f"bundle {directory}, {model}, calibrated at FPR {fpr:g} on validation"
    return Threshold(bundle.threshold(model), origin), fpr


def evaluate_file(
    scores_path: str | Path,
    labels_path: str | Path | None = None,
    label_column: str | None = None,
    from_folders: bool = False,
    positive: str = DEFAULT_POSITIVE,
    bundle: str | Path | None = None,
    model: str | None = None,
    threshold: float | None = None,
    fpr: float | None = None,
) -> Evaluation:
    """``python -m export evaluate``: read the score file, its labels (a labels file, a column
    of the score file, or the folders of the sources: exactly one), and evaluate it at the
    bundle's threshold, the given one, or else the one its anomaly column implies.

    fpr: the target of the TPR at FPR (default: the bundle's calibration FPR, else 0.01).
    """
    if from_folders and (labels_path is not None or label_column is not None):
        raise EvaluationError(
            "--label-from-folder takes the labels from the folders: drop --labels"
        )
    if not from_folders and labels_path is None and label_column is None:
        raise EvaluationError(
            "no labels: give --labels FILE, --label-column NAME or --label-from-folder"
        )
    if bundle is not None and threshold is not None:
        raise EvaluationError("give --bundle or --threshold, not both")
    in_scores = label_column if labels_path is None and label_column is not None else None
    scores = read_scores(scores_path, extra=() if in_scores is None else (in_scores,))
    if from_folders:
        labels = labels_from_folders(scores, positive)
    elif in_scores is not None:
        labels = labels_from_column(scores, in_scores, positive)
    else:
        labels = labels_from_file(scores, labels_path, label_column or "label", positive)
    if bundle is not None:
        at, bundle_fpr = bundle_threshold(bundle, model)
        fpr = bundle_fpr if fpr is None else fpr
    elif threshold is not None:
        if not math.isfinite(threshold):
            raise EvaluationError(f"--threshold {threshold}: expected a finite number")
        at = Threshold(float(threshold), "--threshold")
    else:
        at = threshold_from_flags(scores) if scores.flags is not None else None
    fpr = DEFAULT_FPR if fpr is None else fpr
    if not 0.0 < fpr < 1.0:
        raise EvaluationError(f"--fpr {fpr}: expected a rate in (0, 1)")
    return evaluate(scores, labels, at, fpr)
