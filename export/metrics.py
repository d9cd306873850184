"""Numpy-only metrics of labelled scores, shared by the runtime, the evaluate stage and the
benchmarks. Scores: (n,) floats, higher means more anomalous; positives: (n,) bool or {0, 1},
True for an anomaly. A threshold flags ``score > threshold``, the rule the calibrated thresholds
of ``export.scoring`` follow.

    auroc = roc_auc(scores, is_anomaly)             # 1.0: every anomaly above every normal image
    ap = average_precision(scores, is_anomaly)      # area under the precision-recall steps
    best = f1_max(scores, is_anomaly)               # best.f1 at best.threshold
    tpr = tpr_at_threshold(scores, is_anomaly, bundle.threshold("vae"))
    tpr = tpr_at_fpr(scores, is_anomaly, 0.01)      # threshold calibrated on these negatives
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export.scoring import calibrate_threshold, false_positive_rate


def _labelled(
    scores: np.ndarray, positives: np.ndarray, name: str, both: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(scores float64 (n,), positives bool (n,)), checked: same length, finite scores, 0/1
    labels and, with ``both``, at least one positive and one negative."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives).ravel()
    if scores.shape != positives.shape:
        raise ValueError(
            f"{name}: scores has {scores.shape[0]} values, positives {positives.shape[0]}"
        )
    if not np.all(np.isfinite(scores)):
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise ValueError(f"{name}: score at index {bad} is {scores[bad]}, expected a finite number")
    if positives.dtype != bool:
        if not np.isin(positives, (0, 1)).all():
            raise ValueError(f"{name}: positives must be bool or 0/1")
        positives = positives.astype(bool)
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if both and (n_pos == 0 or n_neg == 0):
        raise ValueError(f"{name}: needs both classes, got {n_pos} positives and {n_neg} negatives")
    return scores, positives


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count half.

    Computed from average ranks (Mann-Whitney U), so it is exact with ties and O(n log n).
    """
    scores, positives = _labelled(scores, positives, "roc_auc")
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # average rank (1-based) over each run of tied scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.size]))
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _cuts(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every way to flag the highest scores, tied scores together: for cut k (one per distinct
    score, highest first), the true and false positives flagged by ``score >= distinct[k]``.

    Returns (distinct scores descending (m,), true positives (m,), false positives (m,)).
    """
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], positives[order]
    last = np.append(np.flatnonzero(np.diff(ranked)), ranked.size - 1)  # end of each tie run
    tp = np.cumsum(hits)[last]
    return ranked[last], tp, (last + 1) - tp


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Average precision (the area under the precision-recall curve, as a step sum):
    sum over the cuts of ``_cuts`` of (recall_k - recall_{k-1}) * precision_k, recall_0 = 0.

    Tied scores are flagged together, so a tie never counts its positives first. Chance level is
    the share of positives; 1.0 means every positive scores above every negative.
    """
    scores, positives = _labelled(scores, positives, "average_precision")
    _, tp, fp = _cuts(scores, positives)
    precision = tp / (tp + fp)
    recall_gain = np.diff(np.concatenate(([0], tp))) / tp[-1]
    return float(np.sum(recall_gain * precision))


@dataclass(frozen=True)
class F1Max:
    """The best F1 over every threshold, and where it is reached (``score > threshold``)."""

    f1: float
    threshold: float  # the highest score left unflagged (just below the lowest if none is)
    precision: float
    recall: float


def f1_max(scores: np.ndarray, positives: np.ndarray) -> F1Max:
    """The highest F1 = 2 TP / (2 TP + FP + FN) over every threshold, with its threshold.

    Candidates are the cuts of ``_cuts`` (tied scores flagged together); among equal F1 the
    highest threshold (fewest flags) wins. The threshold is expressed for ``score > threshold``:
    the highest score the cut leaves unflagged, or, when the best cut flags everything, the
    float just below the lowest score.
    """
    scores, positives = _labelled(scores, positives, "f1_max")
    distinct, tp, fp = _cuts(scores, positives)
    n_pos = int(positives.sum())
    f1 = 2.0 * tp / (tp + fp + n_pos)
    best = int(np.argmax(f1))  # the first maximum: the highest threshold
    if best + 1 < distinct.size:
        threshold = float(distinct[best + 1])
    else:
        threshold = float(np.nextafter(distinct[-1], -np.inf))
    return F1Max(
        f1=float(f1[best]),
        threshold=threshold,
        precision=float(tp[best] / (tp[best] + fp[best])),
        recall=float(tp[best] / n_pos),
    )


def tpr_at_threshold(scores: np.ndarray, positives: np.ndarray, threshold: float) -> float:
    """Share of the positives flagged, ``score > threshold`` (the true-positive rate)."""
    scores, positives = _labelled(scores, positives, "tpr_at_threshold", both=False)
    if not positives.any():
        raise ValueError("tpr_at_threshold: no positives")
    return false_positive_rate(scores[positives], threshold)  # the share above, same rule


def fpr_at_threshold(scores: np.ndarray, positives: np.ndarray, threshold: float) -> float:
    """Share of the negatives flagged, ``score > threshold`` (the false-positive rate)."""
    scores, positives = _labelled(scores, positives, "fpr_at_threshold", both=False)
    if positives.all():
        raise ValueError("fpr_at_threshold: no negatives")
    return false_positive_rate(scores[~positives], threshold)


def tpr_at_fpr(scores: np.ndarray, positives: np.ndarray, fpr: float) -> float:
    """The true-positive rate at the threshold ``export.scoring.calibrate_threshold`` puts on
    these negatives at ``fpr`` (at most ``fpr`` of them flagged): an oracle operating point,
    calibrated on the very negatives it is measured on."""
    scores, positives = _labelled(scores, positives, "tpr_at_fpr")
    threshold = calibrate_threshold(scores[~positives], fpr)
    return false_positive_rate(scores[positives], threshold)


@dataclass(frozen=True)
class OperatingPoint:
    """What one threshold does to labelled scores (``score > threshold`` is flagged)."""

    threshold: float
    tpr: float  # share of the positives flagged (recall)
    fpr: float  # share of the negatives flagged
    precision: float  # share of the flagged that are positives (0.0 when nothing is flagged)
    f1: float
    flagged: int


def operating_point(scores: np.ndarray, positives: np.ndarray, threshold: float) -> OperatingPoint:
    """TPR, FPR, precision and F1 of ``score > threshold`` on labelled scores."""
    scores, positives = _labelled(scores, positives, "operating_point")
    threshold = float(threshold)
    flags = scores > threshold
    tp = int(np.sum(flags & positives))
    flagged = int(flags.sum())
    return OperatingPoint(
        threshold=threshold,
        tpr=false_positive_rate(scores[positives], threshold),
        fpr=false_positive_rate(scores[~positives], threshold),
        precision=tp / flagged if flagged else 0.0,
        f1=2.0 * tp / (flagged + int(positives.sum())),
        flagged=flagged,
    )
