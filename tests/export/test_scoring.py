"""export.scoring: scores against hand-computed values, calibration against its definition."""

from __future__ import annotations

import numpy as np
import pytest

from export.scoring import (
    bernoulli_nll,
    calibrate_threshold,
    false_positive_rate,
    gaussian_kl,
    negative_elbo,
    reconstruction_mse,
)


def test_reconstruction_mse():
    images = np.zeros((2, 28, 28), np.float32)
    pixels = np.zeros((2, 28, 28), np.float32)
    pixels[1, :14] = 1.0  # half the pixels off by 1
    np.testing.assert_allclose(reconstruction_mse(images, pixels), [0.0, 0.5])


def test_bernoulli_nll_and_kl_by_hand():
    images = np.ones((1, 28, 28))
    pixels = np.full((1, 28, 28), 0.5)
    np.testing.assert_allclose(bernoulli_nll(images, pixels), [784 * np.log(2.0)])
    # KL of N(1, 1) to N(0, 1) in one dimension is 0.5; N(0, e^2) is (e^2 - 1 - 2) / 2
    np.testing.assert_allclose(gaussian_kl(np.array([[1.0]]), np.array([[0.0]])), [0.5])
    np.testing.assert_allclose(
        gaussian_kl(np.array([[0.0]]), np.array([[2.0]])), [0.5 * (np.exp(2.0) - 3.0)]
    )
    total = negative_elbo(images, pixels, np.array([[1.0, 0.0]]), np.zeros((1, 2)))
    np.testing.assert_allclose(total, [784 * np.log(2.0) + 0.5], rtol=1e-6)


def test_calibrate_threshold_meets_the_rate():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=5000)
    for fpr in (0.001, 0.01, 0.05, 0.2):
        threshold = calibrate_threshold(scores, fpr)
        rate = false_positive_rate(scores, threshold)
        assert rate <= fpr
        assert rate >= fpr - 1.0 / scores.size  # the smallest such threshold
    assert calibrate_threshold(np.arange(100.0), 0.01) == 98.0  # only 99.0 lies above


@pytest.mark.parametrize(
    ("scores", "fpr", "message"),
    [([], 0.01, "no scores"), ([1.0], 0.0, "fpr must be in"), ([np.inf], 0.1, "finite")],
)
def test_calibrate_threshold_errors(scores, fpr, message):
    with pytest.raises(ValueError, match=message):
        calibrate_threshold(np.array(scores), fpr)
