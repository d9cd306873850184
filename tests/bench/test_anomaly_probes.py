"""bench/anomaly_probes.py: the stroke figures are seeded and framed as MNIST frames a digit, the
probes' scores are the terms they name, and the measurement runs on terms computed once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import anomaly, anomaly_probes, foreign
from export.scoring import Calibration, combine_terms


def test_stroke_figures_are_seeded_and_framed_like_mnist():
    figures = anomaly_probes.stroke_figures(24, seed=5)
    assert figures.shape == (24, 28, 28) and figures.dtype == np.float32
    np.testing.assert_array_equal(np.round(figures * 255) / 255, figures)  # the 256 grey levels
    np.testing.assert_array_equal(figures, anomaly_probes.stroke_figures(24, seed=5))
    assert not np.array_equal(figures, anomaly_probes.stroke_figures(24, seed=6))
    for image in figures:
        side, r, c = foreign.framing(image)
        assert side in range(18, 23)
        assert abs(r - 14) <= 1.0 and abs(c - 14) <= 1.0


def test_other_log_odds_is_the_eleventh_class_against_the_ten_digits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 11)) * 4
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = np.log(p[:, 10]) - np.log(p[:, :10].sum(axis=1))
    np.testing.assert_allclose(anomaly_probes.other_log_odds(logits), expected, rtol=1e-9)
    huge = np.array([[900.0] * 10 + [0.0], [0.0] * 10 + [900.0]])  # no overflow
    np.testing.assert_allclose(
        anomaly_probes.other_log_odds(huge), [-900 - np.log(10), 900 - np.log(10)]
    )


def terms(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    names = ("nelbo", "coarse", "ratio", "strokes_ratio", "outlier_exposure")
    return {name: rng.normal(loc=i, size=n) for i, name in enumerate(names)}


def test_scores_read_the_terms_they_name():
    clean = terms(200, 0)
    detector = Calibration.fit({k: clean[k] for k in ("nelbo", "coarse", "ratio")})
    both = Calibration.fit({k: clean[k] for k in ("nelbo", "coarse", "ratio", "strokes_ratio")})
    score = anomaly_probes.scorers(detector, both)
    assert tuple(score) == anomaly_probes.SCORES
    other = terms(30, 1)
    np.testing.assert_array_equal(
        score["detector"](other),
        combine_terms({k: other[k] for k in detector.terms}, detector),
    )
    np.testing.assert_array_equal(score["strokes_ratio"](other), other["strokes_ratio"])
    np.testing.assert_array_equal(score["outlier_exposure"](other), other["outlier_exposure"])
    # the fourth term can only raise the detector's standardised maximum
    standard = (score["detector_and_strokes"](other) - both.centres[0]) / both.scales[0]
    alone = (score["detector"](other) - detector.centres[0]) / detector.scales[0]
    assert np.all(standard >= alone - 1e-5)


def test_measure_runs_on_terms_computed_once():
    clean = terms(40, 2)
    sets = {0: {f"foreign/{f}": terms(10, 3) for f in anomaly.FAMILIES}}
    sets[0].update({f"corrupt/{c}": terms(10, 5) for c in anomaly.CORRUPTIONS})
    result = anomaly.measure(lambda t: t["strokes_ratio"], clean, sets, fpr=0.05)
    reference = clean["strokes_ratio"]
    assert result["threshold"] == pytest.approx(anomaly.calibrate_threshold(reference, 0.05))
    first = anomaly.calibrate_threshold(reference[:20], 0.05)
    assert result["clean_fpr_held_out"][0] == pytest.approx(np.mean(reference[20:] > first))


def test_neighbours_picture(tmp_path: Path):
    rng = np.random.default_rng(1)
    clean, letters = rng.random((40, 28, 28)), rng.random((50, 28, 28))
    out = tmp_path / "neighbours.png"
    anomaly_probes.draw_neighbours(clean, rng.random(40), letters, rng.random(50), 0.5, out)
    from PIL import Image

    with Image.open(out) as picture:
        assert picture.size == (10 * 58, 7 * 58)
    assert [p.name for p in tmp_path.iterdir()] == ["neighbours.png"]
