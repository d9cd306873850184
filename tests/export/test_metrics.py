"""export.metrics against cases worked by hand and brute-force definitions on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from export.metrics import (
    average_precision,
    f1_max,
    fpr_at_threshold,
    operating_point,
    roc_auc,
    tpr_at_fpr,
    tpr_at_threshold,
)

# positives score 0.8, 0.4; negatives 0.1, 0.4, 0.6
HAND_SCORES = np.array([0.1, 0.8, 0.4, 0.4, 0.6])
HAND_LABELS = np.array([0, 1, 1, 0, 0])


def random_case(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Scores rounded to one decimal (many ties) and labels holding both classes."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < rng.uniform(0.1, 0.6)
    labels[:2] = (True, False)
    scores = np.round(rng.normal(size=n) + labels * rng.uniform(0, 2), 1)
    return scores, labels


def brute_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Sum over distinct thresholds t, highest first, of (R(t) - R(previous)) * P(t), where
    score >= t is flagged."""
    total, last_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        flagged = scores >= t
        tp = np.sum(flagged & labels)
        recall = tp / labels.sum()
        total += (recall - last_recall) * tp / flagged.sum()
        last_recall = recall
    return total


def brute_f1(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    flagged = scores > threshold
    tp = np.sum(flagged & labels)
    precision = tp / flagged.sum() if flagged.any() else 0.0
    recall = tp / labels.sum()
    return 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)


def test_roc_auc_hand_computed_case():
    # pairs (pos > neg): 0.8 beats all 3; 0.4 beats 0.1, ties 0.4 (half), loses to 0.6
    # -> (3 + 1 + 0.5) / (2 * 3) = 0.75
    assert roc_auc(HAND_SCORES, HAND_LABELS) == pytest.approx(0.75)


def test_roc_auc_perfect_inverted_and_constant():
    labels = np.array([False, False, True, True])
    assert roc_auc(np.array([0.0, 1.0, 2.0, 3.0]), labels) == 1.0
    assert roc_auc(np.array([3.0, 2.0, 1.0, 0.0]), labels) == 0.0
    assert roc_auc(np.ones(4), labels) == 0.5


def test_roc_auc_matches_pairwise_definition_on_random_data():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=300), 1)  # rounding makes many ties
    labels = rng.random(300) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert roc_auc(scores, labels) == pytest.approx(pairwise, abs=1e-12)


def test_average_precision_by_hand():
    # cuts from the top: 0.8 (1 TP, 0 FP), 0.6 (1, 1), 0.4 (2, 2), 0.1 (2, 3): recall rises
    # by 1/2 at 0.8 (precision 1) and by 1/2 at 0.4 (precision 2/4): 0.5 + 0.25
    assert average_precision(HAND_SCORES, HAND_LABELS) == pytest.approx(0.75)
    labels = np.array([False, False, True, True])
    assert average_precision(np.array([0.0, 1.0, 2.0, 3.0]), labels) == 1.0
    assert average_precision(np.ones(4), labels) == 0.5  # one cut: the share of positives


@pytest.mark.parametrize("seed", range(20))
def test_average_precision_matches_brute_force(seed: int):
    scores, labels = random_case(seed)
    assert average_precision(scores, labels) == pytest.approx(
        brute_average_precision(scores, labels), abs=1e-12
    )


def test_average_precision_without_ties_is_the_mean_precision_at_each_positive():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=200)
    labels = rng.random(200) < 0.25
    ranked = labels[np.argsort(-scores)]
    precision_at_each = np.cumsum(ranked)[ranked] / (np.flatnonzero(ranked) + 1)
    assert average_precision(scores, labels) == pytest.approx(precision_at_each.mean())


def test_f1_max_by_hand():
    # cuts: 0.8 -> F1 2/3, 0.6 -> 1/2, 0.4 -> 2/3, 0.1 -> 4/7; the first 2/3 (fewest flags)
    # leaves 0.6 as the highest unflagged score
    best = f1_max(HAND_SCORES, HAND_LABELS)
    assert best.f1 == pytest.approx(2 / 3)
    assert (best.threshold, best.precision, best.recall) == (0.6, 1.0, 0.5)


@pytest.mark.parametrize("seed", range(20))
def test_f1_max_matches_brute_force(seed: int):
    scores, labels = random_case(seed)
    candidates = [-np.inf, *sorted(set(scores.tolist()))]
    brute = max(brute_f1(scores, labels, t) for t in candidates)
    best = f1_max(scores, labels)
    assert best.f1 == pytest.approx(brute, abs=1e-12)
    assert brute_f1(scores, labels, best.threshold) == pytest.approx(best.f1, abs=1e-12)
    flagged = scores > best.threshold
    assert best.precision == pytest.approx(np.mean(labels[flagged]))
    assert best.recall == pytest.approx(np.mean(flagged[labels]))


def test_f1_max_flagging_everything_keeps_a_finite_threshold():
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    labels = np.array([True, True, False, True])  # the lowest scores are positives
    best = f1_max(scores, labels)
    assert best.f1 == pytest.approx(6 / 7) and best.recall == 1.0
    assert np.isfinite(best.threshold) and best.threshold < 1.0
    assert (scores > best.threshold).all()


@pytest.mark.parametrize("seed", range(10))
def test_rates_at_a_threshold_match_their_definitions(seed: int):
    scores, labels = random_case(seed)
    for threshold in (-np.inf, *np.quantile(scores, [0.2, 0.5, 0.9]), scores.max()):
        assert tpr_at_threshold(scores, labels, threshold) == np.mean(scores[labels] > threshold)
        assert fpr_at_threshold(scores, labels, threshold) == np.mean(scores[~labels] > threshold)
        point = operating_point(scores, labels, threshold)
        flagged = scores > threshold
        assert point.flagged == flagged.sum()
        assert point.tpr == np.mean(flagged[labels]) and point.fpr == np.mean(flagged[~labels])
        assert point.precision == (np.mean(labels[flagged]) if flagged.any() else 0.0)
        assert point.f1 == pytest.approx(brute_f1(scores, labels, threshold), abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_tpr_at_fpr_matches_brute_force(seed: int):
    scores, labels = random_case(seed, n=200)
    negatives = scores[~labels]
    for fpr in (0.01, 0.05, 0.2, 0.5):
        # the smallest observed negative score with at most fpr of the negatives above it
        threshold = min(t for t in negatives if np.mean(negatives > t) <= fpr)
        assert tpr_at_fpr(scores, labels, fpr) == np.mean(scores[labels] > threshold)


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 0.2], [1, 1], "needs both classes"),
        ([0.1, np.nan], [0, 1], "index 1 is nan"),
        ([0.1, 0.2, 0.3], [0, 1], "scores has 3 values, positives 2"),
        ([0.1, 0.2], [0, 2], "bool or 0/1"),
    ],
)
@pytest.mark.parametrize("metric", [roc_auc, average_precision, f1_max])
def test_bad_input(metric, scores, labels, message):
    with pytest.raises(ValueError, match=message):
        metric(np.array(scores), np.array(labels))


def test_rates_need_their_class():
    with pytest.raises(ValueError, match="no positives"):
        tpr_at_threshold(np.array([0.1, 0.2]), np.array([0, 0]), 0.15)
    with pytest.raises(ValueError, match="no negatives"):
        fpr_at_threshold(np.array([0.1, 0.2]), np.array([1, 1]), 0.15)
    with pytest.raises(ValueError, match="needs both classes"):
        tpr_at_fpr(np.array([0.1, 0.2]), np.array([1, 1]), 0.01)
