"""Numpy-only metrics shared by the runtime, the evaluate stage and the benchmarks.

auroc = roc_auc(scores, is_anomaly)  # 1.0: every anomaly scores above every normal image
"""

from __future__ import annotations

import numpy as np


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count half.

    scores: (n,) float, higher means more anomalous; positives: (n,) bool or {0, 1}.
    Computed from average ranks (Mann-Whitney U), so it is exact with ties and O(n log n).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives).ravel()
    if scores.shape != positives.shape:
        raise ValueError(
            f"roc_auc: scores has {scores.shape[0]} values, positives {positives.shape[0]}"
        )
    if not np.all(np.isfinite(scores)):
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise ValueError(
            f"roc_auc: score at index {bad} is {scores[bad]}, expected a finite number"
        )
    if positives.dtype != bool:
        if not np.isin(positives, (0, 1)).all():
            raise ValueError("roc_auc: positives must be bool or 0/1")
        positives = positives.astype(bool)
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"roc_auc: needs both classes, got {n_pos} positives and {n_neg} negatives"
        )
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
