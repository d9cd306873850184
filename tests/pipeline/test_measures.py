"""pipeline.measures: Frechet distance against closed forms, k-NN, PSNR, noise, grids and gaps."""

from __future__ import annotations

import numpy as np
import pytest

from export.lattice import lattice
from pipeline.measures import (
    add_noise,
    confident_fraction,
    coverage_radius,
    dead_units,
    empty_cells,
    empty_fraction,
    frechet_distance,
    frechet_distance_moments,
    knn_accuracy,
    knn_predict,
    nearest_distances,
    percentile_box,
    psnr,
    sample_fitted_gaussian,
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


def test_unclipped_noise_is_the_same_draw_with_mean_zero():
    images = np.zeros((20, 28, 28), np.float32)
    clipped = add_noise(images, 0.3, seed=5)
    unclipped = add_noise(images, 0.3, seed=5, clip=False)
    assert unclipped.dtype == np.float32 and unclipped.min() < 0.0
    np.testing.assert_array_equal(np.clip(unclipped, 0.0, 1.0), clipped)
    # on a black image clipping keeps the upward half: mean sigma / sqrt(2 pi) ~ 0.12
    assert clipped.mean() == pytest.approx(0.3 / np.sqrt(2 * np.pi), rel=0.05)
    assert abs(unclipped.mean()) < 0.005


def test_lattice_layout():
    points = lattice([-1.0, -2.0, 0.0], [1.0, 2.0, 4.0], 3)
    assert points.shape == (9, 3) and points.dtype == np.float32
    np.testing.assert_allclose(points[0], [-1.0, 2.0, 2.0])  # top-left: small z0, large z1
    np.testing.assert_allclose(points[2], [1.0, 2.0, 2.0])
    np.testing.assert_allclose(points[8], [1.0, -2.0, 2.0])
    np.testing.assert_allclose(points[4], [0.0, 0.0, 2.0])
    np.testing.assert_allclose(lattice([0.0], [1.0], 3)[:, 0], [0.0, 0.5, 1.0] * 3)  # d == 1
    with pytest.raises(ValueError, match="both be"):
        lattice([0.0, 1.0], [1.0], 3)
    with pytest.raises(ValueError, match="side must be positive"):
        lattice([0.0], [1.0], 0)


def test_confident_fraction():
    probs = np.array([[0.95, 0.05], [0.5, 0.5], [0.1, 0.9], [0.2, 0.8]])
    assert confident_fraction(probs, 0.9) == 0.5
    assert confident_fraction(probs, 0.99) == 0.0


def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(2_000, 16)) @ rng.normal(size=(16, 16))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6 * np.trace(np.cov(a.T)))
    # a second sample of the same distribution: small, far below a shifted one
    b = rng.normal(size=(2_000, 16)) @ rng.normal(size=(16, 16))
    same = frechet_distance(a, a[rng.permutation(len(a))][:1_000])
    assert 0.0 <= same < 0.05 * frechet_distance(a, a + 1.0) < frechet_distance(a, b)


def test_dead_units_counts_columns_silent_on_every_row():
    features = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, -0.0], [0.0, 3.0, 0.0, 0.0]])
    assert dead_units(features) == 2  # columns 0 and 3; column 2 fires once
    assert dead_units(np.maximum(np.random.default_rng(0).normal(size=(50, 8)), 0)) == 0
    with pytest.raises(ValueError, match=r"\(n, f\)"):
        dead_units(np.zeros(5))


def test_sample_fitted_gaussian_matches_the_moments_and_is_seeded():
    rng = np.random.default_rng(6)
    cov = np.array([[4.0, 3.0], [3.0, 9.0]])
    z = rng.multivariate_normal([10.0, -5.0], cov, size=20_000)
    samples = sample_fitted_gaussian(z, 50_000, seed=1)
    assert samples.shape == (50_000, 2) and samples.dtype == np.float32
    np.testing.assert_allclose(samples.mean(axis=0), z.mean(axis=0), atol=0.05)
    np.testing.assert_allclose(np.cov(samples.T), np.cov(z.T), rtol=0.03, atol=0.1)
    np.testing.assert_array_equal(samples, sample_fitted_gaussian(z, 50_000, seed=1))
    # a collapsed axis (singular covariance) still samples, on the line
    line = np.stack([z[:, 0], 2.0 * z[:, 0]], axis=1)
    on_line = sample_fitted_gaussian(line, 100, seed=2)
    np.testing.assert_allclose(on_line[:, 1], 2.0 * on_line[:, 0], atol=1e-3)


def brute_nearest(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    q, r = np.asarray(queries, np.float64), np.asarray(reference, np.float64)
    return np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(axis=-1)).min(axis=1)


def test_nearest_distances_are_exact_far_from_the_origin_and_chunk_free():
    rng = np.random.default_rng(7)
    # float32 latents around (50, 80), as an AE's reach: |q|^2 - 2qr + |r|^2 in float32 would
    # lose these small distances to cancellation
    reference = (rng.normal(size=(3_000, 2)) * 0.5 + [50.0, 80.0]).astype(np.float32)
    queries = (rng.normal(size=(500, 2)) * 0.5 + [50.0, 80.0]).astype(np.float32)
    expected = brute_nearest(queries, reference)
    assert expected.min() < 1e-3
    np.testing.assert_allclose(nearest_distances(queries, reference), expected, rtol=1e-6)
    np.testing.assert_array_equal(
        nearest_distances(queries, reference, chunk=7), nearest_distances(queries, reference)
    )
    assert nearest_distances(reference[:5], reference).max() == 0.0  # a point is its own NN
    three_d = rng.normal(size=(200, 3))
    np.testing.assert_allclose(
        nearest_distances(three_d[:50], three_d[50:]),
        brute_nearest(three_d[:50], three_d[50:]),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="nearest_distances"):
        nearest_distances(queries, reference[:, :1])


def two_clusters(n: int, seed: int) -> np.ndarray:
    """n points (n, 2): half around (-10, 0), half around (10, 0), spread 1."""
    rng = np.random.default_rng(seed)
    centres = np.where(np.arange(n)[:, None] % 2 == 0, [-10.0, 0.0], [10.0, 0.0])
    return centres + rng.normal(size=(n, 2))


def test_two_separated_clusters_leave_the_middle_of_the_box_empty():
    train, test = two_clusters(20_000, seed=8), two_clusters(4_000, seed=9)
    low, high = percentile_box(train, (1.0, 99.0))
    radius = coverage_radius(test, train)
    empty = empty_cells(train, radius, low, high, size=30).reshape(30, 30)
    x = lattice(low, high, 30)[:, 0].reshape(30, 30)
    assert empty[np.abs(x) < 6.0].all()  # the 20-unit gap between the clusters is empty
    # and the cells at the cluster centres are filled
    centre_rows = np.argmin(np.abs(lattice(low, high, 30)[:, 1].reshape(30, 30)[:, 0]))
    for cx in (-10.0, 10.0):
        assert not empty[centre_rows, np.argmin(np.abs(x[0] - cx))]
    frac = empty_fraction(train, test, low, high, size=30)
    assert frac == pytest.approx(empty.mean()) and 0.4 < frac < 0.9


def test_a_uniformly_filled_box_has_almost_no_gaps():
    rng = np.random.default_rng(10)
    train, test = rng.uniform(size=(20_000, 2)), rng.uniform(size=(5_000, 2))
    low, high = percentile_box(train, (1.0, 99.0))
    # grid points are queries like the test digits: ~1% of them lie beyond the 99th percentile
    assert empty_fraction(train, test, low, high, size=30) < 0.03


def test_gap_fraction_is_invariant_to_scale_and_shift():
    train, test = two_clusters(6_000, seed=11), two_clusters(1_500, seed=12)
    low, high = percentile_box(train, (1.0, 99.0))
    base = empty_fraction(train, test, low, high, size=30)
    for scale, shift in ((10.0, 0.0), (0.1, 0.0), (1.0, 40.0)):
        moved = empty_fraction(
            train * scale + shift,
            test * scale + shift,
            np.asarray(low) * scale + shift,
            np.asarray(high) * scale + shift,
            size=30,
        )
        assert moved == pytest.approx(base, abs=1.5 / 900), (scale, shift)  # one cell at most


def test_gaps_in_more_than_two_dimensions_slice_through_the_box_centre():
    train2, test2 = two_clusters(4_000, seed=13), two_clusters(1_000, seed=14)
    # a third axis that every latent shares at 0: the slice through it is the 2-D picture
    train3 = np.concatenate([train2, np.zeros((len(train2), 1))], axis=1)
    test3 = np.concatenate([test2, np.zeros((len(test2), 1))], axis=1)
    low, high = percentile_box(train3, (1.0, 99.0))
    np.testing.assert_array_equal(
        empty_cells(train3, coverage_radius(test3, train3), low, high, 12),
        empty_cells(train2, coverage_radius(test2, train2), low[:2], high[:2], 12),
    )
