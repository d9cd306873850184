"""Numpy measures the evaluate stage reports: Frechet distance, k-NN accuracy, PSNR, grids, gaps.

fid = frechet_distance(features_a, features_b)           # (n, f), (m, f) -> float
acc = knn_accuracy(train_z, train_y, test_z, test_y, k=5)
radius = coverage_radius(test_z, train_z)                 # 99th pct of test-to-train NN distances
empty = empty_cells(train_z, radius, low, high, size=30)  # (900,) bool, export.lattice order
"""

from __future__ import annotations

import numpy as np

from export.lattice import lattice


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


def add_noise(images: np.ndarray, sigma: float, seed: int, clip: bool = True) -> np.ndarray:
    """images (n, 28, 28) + N(0, sigma^2) per pixel, clipped to [0, 1] unless ``clip`` is False.

    float32, seeded: the same seed gives the same noise with and without clipping. Clipping
    keeps only the positive half of the noise on the ~80% of pixels that are 0, so clipped
    noise also brightens a digit; unclipped noise has mean zero.
    """
    rng = np.random.default_rng(seed)
    noisy = images + rng.standard_normal(images.shape, dtype=np.float32) * np.float32(sigma)
    return (np.clip(noisy, 0.0, 1.0) if clip else noisy).astype(np.float32)


def psnr(reference: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Per-image peak signal-to-noise ratio in dB (peak 1.0): (n, 28, 28) x2 -> (n,) float64.

    A perfect match would be infinite; the MSE is floored at 1e-10 (100 dB).
    """
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    img = np.asarray(images, np.float64).reshape(len(images), -1)
    mse = np.maximum(np.mean((ref - img) ** 2, axis=1), 1e-10)
    return -10.0 * np.log10(mse)


def denoise_metrics(
    clean: np.ndarray,
    noisy: np.ndarray,
    denoised: np.ndarray,
    clean_probs: np.ndarray,
    noisy_probs: np.ndarray,
    denoised_probs: np.ndarray,
) -> dict[str, float]:
    """The ``denoise.*`` metrics: PSNR gain and how often the classifier still sees the digit.

    clean, noisy, denoised: (n, 28, 28) float32 in [0, 1]; *_probs: (n, 10) the classifier's
    probabilities on each. A digit is kept when the classifier's label of the denoised image
    equals its label of the clean one (not the dataset label: a clean digit the classifier gets
    wrong should not count against the denoiser).
    """
    clean_label = np.asarray(clean_probs).argmax(axis=1)

    def kept(probs: np.ndarray) -> float:
        return float(np.mean(np.asarray(probs).argmax(axis=1) == clean_label))

    gain = psnr(clean, denoised) - psnr(clean, noisy)
    return {
        "denoise.psnr_gain_db": float(gain.mean()),
        "denoise.class_kept": kept(denoised_probs),
        "denoise.noisy_class_kept": kept(noisy_probs),
    }


def confident_fraction(probabilities: np.ndarray, threshold: float) -> float:
    """Fraction of rows of ``probabilities`` (n, classes) whose top class has p >= threshold."""
    return float(np.mean(np.max(probabilities, axis=1) >= threshold))


def dead_units(features: np.ndarray) -> int:
    """Number of columns of ReLU ``features`` (n, f) that are zero (<= 0) on every row."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"dead_units: expected features (n, f), got shape {features.shape}")
    return int(np.sum(np.all(features <= 0, axis=0)))


def sample_fitted_gaussian(z: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` samples (n, d) float32 of N(mean, covariance) fitted to the rows of ``z`` (m, d).

    The symmetric square root of the covariance stands in for a Cholesky factor, so a
    singular covariance (a collapsed latent axis) still samples.
    """
    z = np.asarray(z, np.float64)
    if z.ndim != 2 or len(z) < 2:
        raise ValueError(f"sample_fitted_gaussian: expected z (m >= 2, d), got shape {z.shape}")
    root = _sqrtm_psd(np.atleast_2d(np.cov(z, rowvar=False)))
    eps = np.random.default_rng(seed).standard_normal((n, z.shape[1]))
    return (z.mean(axis=0) + eps @ root).astype(np.float32)


def percentile_box(
    z: np.ndarray, percentiles: tuple[float, float]
) -> tuple[list[float], list[float]]:
    """(low, high): the per-axis ``percentiles`` (e.g. (1, 99)) of latents z (n, d)."""
    low, high = np.percentile(np.asarray(z), percentiles, axis=0)
    return low.tolist(), high.tolist()


def nearest_distances(queries: np.ndarray, reference: np.ndarray, chunk: int = 32) -> np.ndarray:
    """Euclidean distance (m,) float64 from each query (m, d) to its nearest reference row (n, d).

    Exact brute force. The coordinate differences are squared directly rather than expanded as
    |q|^2 - 2 q.r + |r|^2, whose cancellation in float32 loses the small distances when the
    latents sit far from the origin (AE latents reach ~50). ``chunk`` queries at a time go
    through two preallocated (chunk, n) float32 buffers: 7 MB each for n = 55,000, small enough
    for the cache, and reused because a fresh buffer per chunk page-faults ~10x slower.
    10,000 x 55,000 in 2-D takes ~0.3 s on one core.
    """
    q = np.asarray(queries, np.float32)
    ref_t = np.ascontiguousarray(np.asarray(reference, np.float32).T)  # (d, n): rows per axis
    if q.ndim != 2 or ref_t.ndim != 2 or q.shape[1] != ref_t.shape[0] or ref_t.shape[1] == 0:
        raise ValueError(
            f"nearest_distances: expected queries (m, d) and reference (n >= 1, d), got "
            f"{np.shape(queries)} and {np.shape(reference)}"
        )
    chunk = max(1, min(chunk, len(q)))
    d2 = np.empty((chunk, ref_t.shape[1]), np.float32)
    term = np.empty_like(d2)
    out = np.empty(len(q), np.float64)
    for start in range(0, len(q), chunk):
        block = q[start : start + chunk]
        m = len(block)
        acc, tmp = d2[:m], term[:m]
        np.subtract(block[:, :1], ref_t[0], out=acc)
        np.multiply(acc, acc, out=acc)
        for axis in range(1, ref_t.shape[0]):
            np.subtract(block[:, axis : axis + 1], ref_t[axis], out=tmp)
            np.multiply(tmp, tmp, out=tmp)
            acc += tmp
        out[start : start + m] = np.sqrt(acc.min(axis=1))
    return out


def coverage_radius(test_z: np.ndarray, train_z: np.ndarray, percentile: float = 99.0) -> float:
    """The ``percentile`` of nearest-neighbour distances from test_z (m, d) to train_z (n, d).

    How far from the train latents a held-out digit may land: a point farther than this from
    every train latent lies where (almost) no real digit is encoded.
    """
    return float(np.percentile(nearest_distances(test_z, train_z), percentile))


def empty_cells(
    train_z: np.ndarray,
    radius: float,
    low: list[float] | np.ndarray,
    high: list[float] | np.ndarray,
    size: int,
) -> np.ndarray:
    """(size*size,) bool: which points of ``export.lattice.lattice(low, high, size)`` are farther than
    ``radius`` from every train latent (n, d): the gaps of the latent inside the box.

    Meant for a 2-D latent: with d > 2 the grid spans only the first two axes (the others at the
    box centre, as ``lattice`` puts them), so it measures one slice of the latent, not its volume.
    Multiplying every latent, the radius and the box by the same factor leaves it unchanged.
    """
    return nearest_distances(lattice(low, high, size), train_z) > radius


def empty_fraction(
    train_z: np.ndarray,
    test_z: np.ndarray,
    low: list[float] | np.ndarray,
    high: list[float] | np.ndarray,
    size: int,
    percentile: float = 99.0,
) -> float:
    """Fraction of the ``size x size`` grid over [low, high] that ``empty_cells`` finds empty,
    with the radius ``coverage_radius(test_z, train_z, percentile)``."""
    radius = coverage_radius(test_z, train_z, percentile)
    return float(np.mean(empty_cells(train_z, radius, low, high, size)))
