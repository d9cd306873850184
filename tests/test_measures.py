"""pipeline.measures: Frechet distance against closed forms, k-NN, PSNR, noise and latent grids."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.measures import (
    add_noise,
    confident_fraction,
    frechet_distance,
    frechet_distance_moments,
    knn_accuracy,
    knn_predict,
    latent_grid,
    psnr,
)


def random_rotation(dim: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q


def test_frechet_distance_of_diagonal_gaussians_in_closed_form():
    # diagonal covariances commute: d = |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
    expected = 1.0 + 4.0 + (1.0 - 2.0) ** 2 + (2.0 - 1.0) ** 2
    assert frechet_distance_moments(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected)


def test_frechet_distance_is_rotation_invariant_and_zero_for_equal_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    cov = a @ a.T + 0.1 * np.eye(4)
    mu = rng.normal(size=4)
    assert frechet_distance_moments(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    # equal covariances: only the means differ
    assert frechet_distance_moments(mu, cov, mu + 2.0, cov) == pytest.approx(16.0, abs=1e-9)
    # rotating both Gaussians leaves the distance unchanged, also when covariances do not commute
    b = rng.normal(size=(4, 4))
    cov2 = b @ b.T + 0.1 * np.eye(4)
    r = random_rotation(4, 1)
    base = frechet_distance_moments(mu, cov, -mu, cov2)
    rotated = frechet_distance_moments(r @ mu, r @ cov @ r.T, -r @ mu, r @ cov2 @ r.T)
    assert rotated == pytest.approx(base, rel=1e-9)
    # 1-D: (m1 - m2)^2 + (sigma1 - sigma2)^2
    assert frechet_distance_moments(
        np.array([1.0]), np.array([[9.0]]), np.array([-1.0]), np.array([[1.0]])
    ) == pytest.approx(4.0 + 4.0)


def test_frechet_distance_from_samples_of_two_known_gaussians():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(200_000, 2)) * [1.0, 2.0]  # N(0, diag(1, 4))
    b = rng.normal(size=(200_000, 2)) * [3.0, 2.0] + [1.0, 0.0]  # N((1, 0), diag(9, 4))
    expected = 1.0 + (1.0 - 3.0) ** 2 + 0.0
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02)
    with pytest.raises(ValueError, match="expected"):
        frechet_distance(a, b[:, :1])


def test_knn_on_separated_clusters_and_ties():
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    ref_labels = np.repeat([0, 1, 2], 50)
    ref = centres[ref_labels] + rng.normal(scale=0.5, size=(150, 2))
    query_labels = np.array([0, 1, 2, 2])
    queries = centres[query_labels] + 0.1
    assert knn_accuracy(ref, ref_labels, queries, query_labels, k=5) == 1.0
    assert knn_accuracy(ref, ref_labels, queries, np.array([0, 1, 2, 0]), k=5) == 0.75
    # a 1-1 tie among k=2 goes to the nearer neighbour
    two = np.array([[0.0, 0.0], [1.0, 0.0]])
    assert knn_predict(two, np.array([3, 7]), np.array([[0.9, 0.0], [0.2, 0.0]]), k=2).tolist() == [
        7,
        3,
    ]
    # chunking does not change the answer
    many = rng.normal(scale=5.0, size=(300, 2))
    np.testing.assert_array_equal(
        knn_predict(ref, ref_labels, many, 5, chunk=7), knn_predict(ref, ref_labels, many, 5)
    )
    with pytest.raises(ValueError, match="exceeds"):
        knn_accuracy(two, np.array([0, 1]), two, np.array([0, 1]), k=3)


def test_psnr_by_hand():
    ref = np.zeros((2, 28, 28))
    img = np.zeros((2, 28, 28))
    img[0] = 0.1  # MSE 0.01 -> 20 dB
    img[1, :, :14] = 1.0  # MSE 0.5 -> 3.01 dB
    np.testing.assert_allclose(psnr(ref, img), [20.0, 10 * np.log10(2.0)])
    assert psnr(ref, ref)[0] == pytest.approx(100.0)


def test_add_noise_is_seeded_clipped_and_has_the_right_scale():
    images = np.full((50, 28, 28), 0.5, np.float32)
    noisy = add_noise(images, 0.1, seed=7)
    np.testing.assert_array_equal(noisy, add_noise(images, 0.1, seed=7))
    assert not np.array_equal(noisy, add_noise(images, 0.1, seed=8))
    assert noisy.dtype == np.float32 and noisy.min() >= 0.0 and noisy.max() <= 1.0
    assert np.std(noisy - images) == pytest.approx(0.1, rel=0.02)
    clipped = add_noise(np.zeros((10, 28, 28), np.float32), 0.3, seed=0)
    assert clipped.min() == 0.0 and np.mean(clipped == 0.0) == pytest.approx(0.5, abs=0.03)


def test_latent_grid_layout():
    points = latent_grid([-1.0, -2.0, 0.0], [1.0, 2.0, 4.0], size=3)
    assert points.shape == (9, 3) and points.dtype == np.float32
    np.testing.assert_allclose(points[0], [-1.0, 2.0, 2.0])  # top-left: small z0, large z1
    np.testing.assert_allclose(points[2], [1.0, 2.0, 2.0])
    np.testing.assert_allclose(points[8], [1.0, -2.0, 2.0])
    np.testing.assert_allclose(points[4], [0.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="d >= 2"):
        latent_grid([0.0], [1.0], 3)


def test_confident_fraction():
    probs = np.array([[0.95, 0.05], [0.5, 0.5], [0.1, 0.9], [0.2, 0.8]])
    assert confident_fraction(probs, 0.9) == 0.5
    assert confident_fraction(probs, 0.99) == 0.0
