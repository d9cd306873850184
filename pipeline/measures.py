"""Numpy measures the evaluate stage reports: Frechet distance, k-NN accuracy, PSNR, grids.

fid = frechet_distance(features_a, features_b)           # (n, f), (m, f) -> float
acc = knn_accuracy(train_z, train_y, test_z, test_y, k=5)
points = latent_grid(low=[-1.6, -1.6], high=[1.6, 1.6], size=10)   # (100, 2), row-major
"""

from __future__ import annotations

import numpy as np


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues >= 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_moments(
    mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray
) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2).

    |mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1^1/2 cov2 cov1^1/2)^1/2); mu (f,), cov (f, f).
    The symmetric form keeps every square root that of a PSD matrix (no complex parts).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    root1 = _sqrtm_psd(cov1)
    cross = _sqrtm_psd(root1 @ cov2 @ root1)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(cross))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID-style distance between two feature sets (n, f) and (m, f), via their Gaussian moments."""
    a = np.asarray(features_a, np.float64)
    b = np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: expected (n, f) and (m, f), got {a.shape}, {b.shape}")
    return frechet_distance_moments(
        a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False)
    )


def knn_predict(
    ref_z: np.ndarray, ref_labels: np.ndarray, query_z: np.ndarray, k: int, chunk: int = 512
) -> np.ndarray:
    """Majority label of each query's k nearest reference points (Euclidean); (m,) int64.

    ref_z (n, d), ref_labels (n,) ints in 0..9, query_z (m, d). Ties go to the label whose
    nearest member is closest. Queries are processed ``chunk`` at a time to bound memory.
    """
    ref = np.asarray(ref_z, np.float32)  # float32 halves the (chunk, n) distance matrix
    labels = np.asarray(ref_labels, np.int64)
    n_classes = int(labels.max()) + 1
    ref_sq = np.sum(ref**2, axis=1)
    out = np.empty(len(query_z), np.int64)
    # a tiny bonus for nearer neighbours breaks vote ties toward the nearest one
    bonus = 1.0 + (k - np.arange(k)) * 1e-6
    for start in range(0, len(query_z), chunk):
        q = np.asarray(query_z[start : start + chunk], np.float32)
        # |q - r|^2 minus |q|^2, which is the same for every r and so leaves the ranking alone
        d2 = (-2.0 * q) @ ref.T
        d2 += ref_sq[None, :]
        nearest = np.argpartition(d2, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(d2, nearest, axis=1), axis=1)
        nearest = np.take_along_axis(nearest, order, axis=1)
        votes = np.zeros((len(q), n_classes))
        np.add.at(votes, (np.arange(len(q))[:, None], labels[nearest]), bonus[None, :])
        out[start : start + chunk] = votes.argmax(axis=1)
    return out


def knn_accuracy(
    ref_z: np.ndarray,
    ref_labels: np.ndarray,
    query_z: np.ndarray,
    query_labels: np.ndarray,
    k: int,
) -> float:
    """Fraction of queries whose k-NN majority label (see ``knn_predict``) is their own label."""
    if k > len(ref_z):
        raise ValueError(f"knn_accuracy: k={k} exceeds the {len(ref_z)} reference points")
    predicted = knn_predict(ref_z, ref_labels, query_z, k)
    return float(np.mean(predicted == np.asarray(query_labels)))


def add_noise(images: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """images (n, 28, 28) + N(0, sigma^2) per pixel, clipped to [0, 1]; float32, seeded."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(images.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(images + noise, 0.0, 1.0).astype(np.float32)


def psnr(reference: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Per-image peak signal-to-noise ratio in dB (peak 1.0): (n, 28, 28) x2 -> (n,) float64.

    A perfect match would be infinite; the MSE is floored at 1e-10 (100 dB).
    """
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    img = np.asarray(images, np.float64).reshape(len(images), -1)
    mse = np.maximum(np.mean((ref - img) ** 2, axis=1), 1e-10)
    return -10.0 * np.log10(mse)


def latent_grid(
    low: list[float] | np.ndarray, high: list[float] | np.ndarray, size: int
) -> np.ndarray:
    """``size x size`` evenly spaced points spanning [low, high] in the first two latent axes.

    low, high: (d,) box corners; the other axes sit at the box centre. Returns (size*size, d)
    float32 in row-major figure order: row 0 is the top (largest z[1]), column 0 the left
    (smallest z[0]), so a grid of decoded digits reads like the latent scatter plot.
    """
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    if low.shape != high.shape or low.ndim != 1 or len(low) < 2:
        raise ValueError(f"latent_grid: low, high must be (d,) with d >= 2, got {low.shape}")
    xs = np.linspace(low[0], high[0], size)
    ys = np.linspace(high[1], low[1], size)
    points = np.tile((low + high) / 2.0, (size * size, 1))
    points[:, 0] = np.tile(xs, size)
    points[:, 1] = np.repeat(ys, size)
    return points.astype(np.float32)


def confident_fraction(probabilities: np.ndarray, threshold: float) -> float:
    """Fraction of rows of ``probabilities`` (n, classes) whose top class has p >= threshold."""
    return float(np.mean(np.max(probabilities, axis=1) >= threshold))
