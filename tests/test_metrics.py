"""export.metrics.roc_auc against cases worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from export.metrics import roc_auc


def test_hand_computed_case():
    # positives score 0.8, 0.4; negatives 0.1, 0.4, 0.6.
    # pairs (pos > neg): 0.8 beats all 3; 0.4 beats 0.1, ties 0.4 (half), loses to 0.6
    # -> (3 + 1 + 0.5) / (2 * 3) = 0.75
    scores = np.array([0.1, 0.8, 0.4, 0.4, 0.6])
    positives = np.array([0, 1, 1, 0, 0])
    assert roc_auc(scores, positives) == pytest.approx(0.75)


def test_perfect_inverted_and_constant():
    labels = np.array([False, False, True, True])
    assert roc_auc(np.array([0.0, 1.0, 2.0, 3.0]), labels) == 1.0
    assert roc_auc(np.array([3.0, 2.0, 1.0, 0.0]), labels) == 0.0
    assert roc_auc(np.ones(4), labels) == 0.5


def test_matches_pairwise_definition_on_random_data():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=300), 1)  # rounding makes many ties
    labels = rng.random(300) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert roc_auc(scores, labels) == pytest.approx(pairwise, abs=1e-12)


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 0.2], [1, 1], "needs both classes"),
        ([0.1, np.nan], [0, 1], "index 1 is nan"),
        ([0.1, 0.2, 0.3], [0, 1], "scores has 3 values, positives 2"),
        ([0.1, 0.2], [0, 2], "bool or 0/1"),
    ],
)
def test_bad_input(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        roc_auc(np.array(scores), np.array(labels))
