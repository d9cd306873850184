"""bench/corruptions.py: every corruption of the MNIST-C-style suite turns real digits into valid,
different images; the candidate scores and the choice rule on small synthetic scores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import corruptions

REPO = Path(__file__).resolve().parents[2]


def test_the_suite_is_mnist_c_s_fifteen():
    assert len(corruptions.CORRUPTIONS) == 15
    assert set(corruptions.SEVERITY) == set(corruptions.CORRUPTIONS)
    for name in corruptions.CORRUPTIONS:
        assert corruptions.describe(name)  # documented, with its parameters


@pytest.mark.parametrize("name", list(corruptions.CORRUPTIONS))
def test_each_corruption_returns_valid_images_that_differ(name: str, mirror_digits: np.ndarray):
    digits = mirror_digits[:24]
    x = digits.astype(np.float32) / np.float32(255.0)
    out = corruptions.CORRUPTIONS[name](x, np.random.default_rng(0))
    assert out.shape == x.shape and np.issubdtype(out.dtype, np.floating)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0

    stored = corruptions.corrupt(digits, name, seed=3)
    assert stored.shape == digits.shape and stored.dtype == np.uint8
    changed = np.abs(stored.astype(np.int64) - digits).reshape(len(digits), -1).max(axis=1)
    assert (changed > 2).all(), f"{name} left {int((changed <= 2).sum())} digits unchanged"
    np.testing.assert_array_equal(stored, corruptions.corrupt(digits, name, seed=3))  # seeded


def test_random_corruptions_depend_on_the_seed(mirror_digits: np.ndarray):
    digits = mirror_digits[:24]
    fixed = {"scale", "brightness", "stripe", "canny_edges"}  # no random parameter
    for name in set(corruptions.CORRUPTIONS) - fixed:
        a, b = corruptions.corrupt(digits, name, seed=0), corruptions.corrupt(digits, name, seed=1)
        assert not np.array_equal(a, b), name


def test_geometric_helpers_by_hand():
    image = np.zeros((1, 28, 28))
    image[0, 10, 12] = 1.0
    moved = corruptions.shift(image, np.array([2]), np.array([-3]))  # out[r, c] = in[r+2, c-3]
    assert moved[0, 8, 15] == 1.0 and moved.sum() == 1.0
    same = corruptions.warp(image, np.eye(2)[None], np.zeros((1, 2)))
    np.testing.assert_allclose(same, image)
    # a half-turn about the centre (13.5, 13.5) sends (row 10, col 12) to (17, 15)
    turned = corruptions.warp(image, *corruptions.centred(-np.eye(2)[None]))
    assert turned[0, 17, 15] == pytest.approx(1.0) and turned.sum() == pytest.approx(1.0)
    blurred = corruptions.gaussian_blur(np.ones((1, 28, 28)), 1.5)
    np.testing.assert_allclose(blurred, 1.0)  # the kernel sums to one, edges repeat


def test_candidates_fit_on_clean_scores_and_combine_both():
    rng = np.random.default_rng(0)
    clean = {"ae": rng.lognormal(-3, 0.4, 4000), "vae": rng.lognormal(5, 0.2, 4000)}
    for candidate in corruptions.candidates():
        candidate.fit(clean, fpr=0.01)
        values = candidate(clean)
        assert np.mean(values > candidate.threshold) <= 0.01
    rank_max = next(c for c in corruptions.candidates() if c.name == "rank_max").fit(clean, 0.01)
    probe = {"ae": np.array([np.median(clean["ae"]), 1e9]), "vae": np.array([0.0, 1.0])}
    # the larger of the two empirical CDF values: 1/2 for the median, n/(n+1) beyond every score
    np.testing.assert_allclose(rank_max(probe), [2000 / 4001, 4000 / 4001], atol=1e-3)


def test_the_choice_rule():
    def result(flagged: float, fpr: float) -> dict[str, float]:
        return {"mean_flagged": flagged, "clean_fpr": fpr}

    on_b = {"vae": result(0.5, 0.01), "ae": result(0.4, 0.009), "z_max": result(0.6, 0.02)}
    chosen, bound = corruptions.choose(on_b, fpr=0.01, n_clean=2500)
    assert (
        bound == pytest.approx(0.01 + 2 * (0.01 * 0.99 / 2500) ** 0.5) and chosen == "vae"
    )  # z_max flags too many clean ones
    on_b["z_max"]["clean_fpr"] = 0.012
    assert corruptions.choose(on_b, fpr=0.01, n_clean=2500)[0] == "z_max"


def test_the_suite_imports_no_tensorflow():
    code = (
        "import sys; import bench.corruptions\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
