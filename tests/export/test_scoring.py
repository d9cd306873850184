"""export.scoring: scores against hand-computed values, calibration against its definition."""

from __future__ import annotations

import numpy as np
import pytest

from export.scoring import (
    EPSILON,
    Calibration,
    Reconstruction,
    bernoulli_nll,
    calibrate_threshold,
    coarse_deviance,
    combine_terms,
    detector_terms,
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


# -- the detector's terms ---------------------------------------------------------------------


@pytest.mark.parametrize("block", [2, 4, 7])
def test_coarse_deviance_is_the_block_kl_by_definition(block: int):
    rng = np.random.default_rng(block)
    images, pixels = rng.random((3, 28, 28)), rng.random((3, 28, 28))
    k = 28 // block
    expected = []
    for x, p in zip(images, pixels, strict=True):
        total = 0.0
        for i in range(k):
            for j in range(k):
                cell = (slice(i * block, (i + 1) * block), slice(j * block, (j + 1) * block))
                a = np.clip(x[cell].mean(), EPSILON, 1 - EPSILON)
                b = np.clip(p[cell].mean(), EPSILON, 1 - EPSILON)
                total += a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))
        expected.append(block**2 * total)
    np.testing.assert_allclose(coarse_deviance(images, pixels, block), expected, rtol=1e-10)
    # pixels moved within their blocks keep the block means: the term does not see them
    moved = images.reshape(3, k, block, k, block)[:, :, ::-1, :, ::-1].reshape(3, 28, 28)
    assert np.abs(moved - images).max() > 0.1
    np.testing.assert_allclose(coarse_deviance(images, moved, block), 0.0, atol=1e-9)


def test_detector_terms_and_their_combination():
    rng = np.random.default_rng(0)
    images = rng.random((5, 28, 28)).astype(np.float32)
    fg = Reconstruction(np.zeros((5, 2)), np.zeros((5, 2)), rng.random((5, 28, 28)), np.arange(5.0))
    bg = Reconstruction(
        np.zeros((5, 2)), np.zeros((5, 2)), rng.random((5, 28, 28)), np.full(5, 2.0)
    )
    terms = detector_terms(images, fg, bg, coarse_block=2)
    assert list(terms) == ["nelbo", "coarse", "ratio"]
    np.testing.assert_allclose(terms["ratio"], np.arange(5.0) - 2.0)
    assert list(detector_terms(images, fg, None, coarse_block=0)) == ["nelbo"]

    clean = {"nelbo": np.arange(101.0), "coarse": 10 * np.arange(101.0), "ratio": np.zeros(101)}
    calibration = Calibration.fit(clean)
    assert calibration.centres[:2] == (50.0, 500.0)  # the medians
    assert calibration.scales[:2] == pytest.approx((49.0, 490.0))  # 99th percentile - median
    assert calibration.scales[2] == pytest.approx(1e-6)  # a constant term gets the floor
    # on the negative ELBO's scale: where it is the largest standardised term, the score is it
    score = combine_terms({"nelbo": np.array([80.0]), "coarse": np.array([500.0]),
                           "ratio": np.array([0.0])}, calibration)  # fmt: skip
    np.testing.assert_allclose(score, [80.0])
    # a coarse term 2 scales above its median lifts the score to 2 scales above nelbo's median
    score = combine_terms({"nelbo": np.array([50.0]), "coarse": np.array([500.0 + 2 * 490.0]),
                           "ratio": np.array([0.0])}, calibration)  # fmt: skip
    np.testing.assert_allclose(score, [50.0 + 2 * 49.0], rtol=1e-6)
    assert Calibration.from_json(calibration.to_json()) == calibration
    with pytest.raises(ValueError, match="do not match"):
        combine_terms({"nelbo": np.zeros(1)}, calibration)
