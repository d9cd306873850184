"""Robustness of the anomaly scores to MNIST-C-style corruptions (Mu and Gilmer 2019, "MNIST-C:
A Robustness Benchmark for Computer Vision"), and whether another score, or a combination of
the AE's and the VAE's, makes a better default.

    python -m bench.corruptions --run artifacts          # needs the export stage's bundle
    python -m bench.corruptions --run artifacts --json /tmp/c.json --limit 2000
    python -m bench.corruptions --render bench/results/corruptions.json

The suite: the fifteen corruptions of MNIST-C, each at one fixed severity (``CORRUPTIONS``, the
default severity of each corruption in the MNIST-C reference code, listed in ``SEVERITY``),
written here in numpy: no new dependency, each image drawn with its own random parameters from a
seeded generator. Images come back as uint8, as MNIST-C stores them.

Part 1 (the table per corruption): the run's test digits, clean and corrupted, are scored by
the bundle (``Bundle.score``, AE and VAE); per corruption, the AUROC of the corrupted digits
(positives) against the clean test digits (negatives), and the share flagged at the bundle's
calibrated threshold; the share of clean test digits flagged is the clean-test FPR.

Part 2 (a better default?): candidate scores, every one a fixed function of the two scores,
fitted on clean validation digits only: ``vae`` (the runtime's default), ``ae``, and four
combinations that put both scores on the scale of their clean validation distribution first:
``rank_mean`` / ``rank_max`` (the mean / the larger of the two empirical CDF values, i.e. the
rank-average and the smaller of the two p-values) and ``z_mean`` / ``z_max`` (the mean / the
larger of the two standardised log scores). Each candidate's threshold is calibrated like the
bundle's, at the bundle's FPR on clean validation digits (``export.scoring.calibrate_threshold``).

The choice uses validation data only. The validation split is cut in two halves at random
(seeded): half A fits each candidate (its normalisation and its threshold); half B, clean and
corrupted with the same suite, measures it. **The rule, fixed before the first run:** among the
candidates whose clean FPR on half B is within two binomial standard errors of the target
(0.01 + 2 * sqrt(0.01 * 0.99 / 2500) = 1.4%), the one flagging the largest share of corrupted
half-B digits, averaged over the fifteen corruptions, is chosen; it replaces ``vae`` as the
recommended default only if it is not ``vae``. Then every candidate is refitted on the whole
validation split and the test numbers are reported, after the choice, for all of them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_RUN,
    command_line,
    load_report,
    load_uint8,
    machine,
    render_load,
    result_path,
    table,
    write_result,
)
from export.metrics import roc_auc
from export.scoring import calibrate_threshold, false_positive_rate

SIDE = 28
CENTRE = (SIDE - 1) / 2.0  # 13.5: transforms keep the image centre fixed, as MNIST-C does
DEFAULT_JSON = result_path("corruptions")
MODELS = ("ae", "vae")
CHUNK = 1000  # images corrupted at a time

Corruption = Callable[[np.ndarray, np.random.Generator], np.ndarray]


# -- numpy helpers ------------------------------------------------------------------------------


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = int(4.0 * sigma + 0.5)  # truncated at 4 sigma, as scikit-image's gaussian
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(images: np.ndarray, sigma: float, mode: str = "edge") -> np.ndarray:
    """Separable Gaussian blur of (n, 28, 28) images; ``mode``: numpy.pad's, at the borders."""
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    out = np.asarray(images, np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode=mode)
        out = sum(
            w * np.take(padded, np.arange(k, k + SIDE), axis=axis) for k, w in enumerate(kernel)
        )
    return out


def warp(images: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Bilinear resampling with per-image affine maps from output to input coordinates:
    input (col, row) = matrix[k] @ output (col, row) + offset[k]; zero outside the image.

    images (n, 28, 28), matrix (n, 2, 2), offset (n, 2).
    """
    n = len(images)
    rows, cols = np.mgrid[0:SIDE, 0:SIDE]
    grid = np.stack([cols.ravel(), rows.ravel()]).astype(np.float64)  # (2, 784)
    source = matrix @ grid + offset[:, :, None]  # (n, 2, 784)
    col, row = source[:, 0], source[:, 1]
    c0, r0 = np.floor(col), np.floor(row)
    fc, fr = col - c0, row - r0
    flat = np.asarray(images, np.float64).reshape(n, -1)
    out = np.zeros_like(col)
    for dr, dc, weight in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                           (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):  # fmt: skip
        r, c = (r0 + dr).astype(np.int64), (c0 + dc).astype(np.int64)
        inside = (r >= 0) & (r < SIDE) & (c >= 0) & (c < SIDE)
        at = np.where(inside, r * SIDE + c, 0)
        out += np.where(inside, np.take_along_axis(flat, at, axis=1), 0.0) * weight
    return out.reshape(n, SIDE, SIDE)


def centred(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) of ``warp`` for per-image 2x2 maps that keep the image centre fixed."""
    centre = np.full(2, CENTRE)
    return matrix, centre - matrix @ centre


def random_signs(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(np.array([-1.0, 1.0]), size=n)


def stroke(
    c0: np.ndarray, r0: np.ndarray, c1: np.ndarray, r1: np.ndarray, width: float = 2.3
) -> np.ndarray:
    """Anti-aliased segments from (c0, r0) to (c1, r1), one per image: intensity
    1 + log(1 - d / width) at distance d from the segment, clipped to [0, 1] (about 3 pixels
    wide, the line profile of MNIST-C's line corruptions). Arguments (n,) -> (n, 28, 28)."""
    rows, cols = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    p = np.stack([c0, r0], axis=-1)[:, None, None, :]
    q = np.stack([c1, r1], axis=-1)[:, None, None, :]
    x = np.stack([cols, rows], axis=-1)[None]
    along = q - p
    length2 = np.maximum(np.sum(along**2, axis=-1, keepdims=True), 1e-12)
    t = np.clip(np.sum((x - p) * along, axis=-1, keepdims=True) / length2, 0.0, 1.0)
    d = np.linalg.norm(x - (p + t * along), axis=-1)
    with np.errstate(divide="ignore"):
        value = 1.0 + np.log(np.clip(1.0 - d / width, 0.0, None))
    return np.clip(value, 0.0, 1.0)


def plasma(n: int, rng: np.random.Generator, size: int = 32, decay: float = 1.4) -> np.ndarray:
    """Diamond-square fractal noise, (n, size, size) in [0, 1], ``size`` a power of two; the
    random displacement shrinks by ``decay`` squared at each halving of the step, wrapping
    around the edges (MNIST-C's fog draws a 256-wide map and crops 28 x 28 of it; 32 wide
    keeps it cheap for 10,000 images)."""
    maps = np.zeros((n, size, size))
    step, amplitude = size, 1.0
    while step >= 2:
        half = step // 2
        corners = maps[:, ::step, ::step]
        square = corners + np.roll(corners, -1, axis=1)
        square = square + np.roll(square, -1, axis=2)
        maps[:, half::step, half::step] = square / 4 + amplitude * rng.uniform(-1, 1, square.shape)
        centres = maps[:, half::step, half::step]
        corners = maps[:, ::step, ::step]
        edges = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        maps[:, ::step, half::step] = edges / 4 + amplitude * rng.uniform(-1, 1, edges.shape)
        edges = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        maps[:, half::step, ::step] = edges / 4 + amplitude * rng.uniform(-1, 1, edges.shape)
        step //= 2
        amplitude /= decay**2
    low = maps.min(axis=(1, 2), keepdims=True)
    high = maps.max(axis=(1, 2), keepdims=True)
    return (maps - low) / np.maximum(high - low, 1e-12)


def _convolve3(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """3 x 3 correlation of (n, 28, 28) images with zero padding."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    return sum(
        kernel[i, j] * padded[:, i : i + SIDE, j : j + SIDE] for i in range(3) for j in range(3)
    )


def _dilate(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    out = np.zeros_like(mask)
    for i in range(3):
        for j in range(3):
            out |= padded[:, i : i + SIDE, j : j + SIDE]
    return out


# -- the corruptions: (n, 28, 28) float32 in [0, 1] and a generator -> the same --------------------


def shot_noise(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson photon noise: counts of mean 3 x intensity, divided by 3."""
    return np.clip(rng.poisson(images * 3.0) / 3.0, 0.0, 1.0)


def impulse_noise(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper: 17% of the pixels set to 0 or 1, half each."""
    hit = rng.random(images.shape) < 0.17
    salt = rng.random(images.shape) < 0.5
    return np.where(hit, salt.astype(np.float64), images)


def glass_blur(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur (sigma 0.7), pixels swapped with a neighbour (offsets in {-1, 0} on each
    axis, each pixel with probability 1/2, two sweeps), blurred again."""
    sigma, delta, sweeps = 0.7, 1, 2
    x = np.floor(gaussian_blur(images, sigma) * 255.0) / 255.0  # MNIST-C rounds to uint8 here
    n = len(x)
    every = np.arange(n)
    for _ in range(sweeps):
        for h in range(SIDE - delta, delta, -1):
            for w in range(SIDE - delta, delta, -1):
                swap = rng.random(n) < 0.5
                dy, dx = rng.integers(-delta, delta, size=(2, n))
                h2, w2 = h + dy, w + dx
                here, there = x[every, h, w].copy(), x[every, h2, w2].copy()
                x[every, h, w] = np.where(swap, there, here)
                x[every, h2, w2] = np.where(swap, here, there)
    return np.clip(gaussian_blur(x, sigma), 0.0, 1.0)


def shift(images: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Whole-pixel shifts, one per image: out[k, r, c] = images[k, r + rows[k], c + cols[k]]
    (0 outside). images (n, 28, 28), rows and cols (n,) integers."""
    n = len(images)
    pad = int(max(np.abs(rows).max(initial=0), np.abs(cols).max(initial=0)))
    wide = SIDE + 2 * pad
    padded = np.pad(np.asarray(images, np.float64), ((0, 0), (pad, pad), (pad, pad)))
    r, c = np.mgrid[0:SIDE, 0:SIDE]
    at = ((r.ravel() + pad)[None] + rows[:, None]) * wide + (c.ravel() + pad)[None] + cols[:, None]
    return np.take_along_axis(padded.reshape(n, -1), at, axis=1).reshape(n, SIDE, SIDE)


def motion_blur(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A one-sided motion blur along a random angle in [-45, 45] degrees: 21 taps one pixel
    apart (rounded to whole pixels) weighted exp(-t^2 / (2 * 3^2)), as ImageMagick's motion
    blur (radius 10, sigma 3)."""
    angle = np.deg2rad(rng.uniform(-45.0, 45.0, len(images)))
    taps = np.arange(21, dtype=np.float64)
    weights = np.exp(-(taps**2) / (2.0 * 3.0**2))
    weights /= weights.sum()
    out = np.zeros(images.shape)
    for t, weight in zip(taps, weights, strict=True):
        rows = np.round(t * np.sin(angle)).astype(np.int64)
        cols = np.round(t * np.cos(angle)).astype(np.int64)
        out += weight * shift(images, rows, cols)
    return np.clip(out, 0.0, 1.0)


def shear(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal shear by an angle of 0.4 rad, either way, about the centre."""
    s = 0.4 * random_signs(len(images), rng)
    matrix = np.zeros((len(images), 2, 2))
    matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 1, 1] = 1.0, -np.sin(s), np.cos(s)
    return np.clip(warp(images, *centred(matrix)), 0.0, 1.0)


def scale(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The digit shrunk to 70% about the centre."""
    matrix = np.broadcast_to(np.eye(2) / 0.7, (len(images), 2, 2))
    return np.clip(warp(images, *centred(matrix)), 0.0, 1.0)


def rotate(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotation by 0.4 rad (23 degrees), either way, about the centre."""
    r = 0.4 * random_signs(len(images), rng)
    cos, sin = np.cos(r), np.sin(r)
    matrix = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], axis=1)
    return np.clip(warp(images, *centred(matrix)), 0.0, 1.0)


def brightness(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """+0.5 on every pixel, clipped (the HSV value channel of a grey image is its intensity)."""
    return np.clip(images + 0.5, 0.0, 1.0)


def translate(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A shift by 3 pixels on each axis, each either way."""
    n = len(images)
    cols, rows = (
        (3 * random_signs(n, rng)).astype(np.int64),
        (3 * random_signs(n, rng)).astype(np.int64),
    )
    return shift(images, rows, cols)


def stripe(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The left and right quarters (columns 0-6 and 21-27) inverted."""
    out = np.array(images, np.float64)
    out[:, :, :7] = 1.0 - out[:, :, :7]
    out[:, :, 21:] = 1.0 - out[:, :, 21:]
    return out


def fog(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x + 3 * fractal noise (decay 1.4), rescaled by max(x) / (max(x) + 3)."""
    strength = 3.0
    noise = plasma(len(images), rng, decay=1.4)[:, :SIDE, :SIDE]
    top = images.max(axis=(1, 2), keepdims=True)
    return np.clip((images + strength * noise) * top / (top + strength), 0.0, 1.0)


def spatter(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mud: Gaussian noise (0.65, 0.3) blurred (sigma 1) and thresholded at 0.65 into blobs,
    their mask blurred (sigma 1.5) and kept where >= 0.8, painted grey 63/255 over the digit."""
    liquid = gaussian_blur(rng.normal(0.65, 0.3, images.shape), 1.0, mode="reflect")
    mask = gaussian_blur((liquid > 0.65).astype(np.float64), 1.5, mode="reflect")
    mask[mask < 0.8] = 0.0
    return np.clip(images * (1.0 - mask) + (63.0 / 255.0) * mask, 0.0, 1.0)


def dotted_line(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A line across the image (rows drawn at random at both edges), drawn in 2-pixel dashes."""
    n = len(images)
    r0, r1 = rng.integers(0, SIDE - 1, size=(2, n)).astype(np.float64)
    line = stroke(np.zeros(n), r0, np.full(n, SIDE - 1.0), r1)
    dashes = (np.arange(SIDE) // 2) % 2 == 1  # columns 2-3, 6-7, ... drawn; 0-1, 4-5 ... not
    return np.clip(images + line * dashes, 0.0, 1.0)


def zigzag(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A zigzag from column 2 to 25 (teeth 2 pixels off its axis, every 4 pixels along it, at
    45 degrees), starting on a random row and ending within 5 rows of it."""
    n = len(images)
    c0, c1 = 2.0, 25.0
    r0 = rng.integers(0, SIDE - 1, n).astype(np.float64)
    r1 = r0 + rng.integers(-5, 5, n)
    start = np.stack([np.full(n, c0), r0], axis=1)
    direction = np.stack([np.full(n, c1 - c0), r1 - r0], axis=1)
    length = np.linalg.norm(direction, axis=1)
    unit = direction / length[:, None]
    normal = np.stack([-unit[:, 1], unit[:, 0]], axis=1)
    out = np.array(images, np.float64)
    previous = start
    for k in range(1, int((length.max() + 2.0) // 4.0) + 2):
        tooth = 4.0 * k - 2.0 < length  # else: the last point, on the axis at its end
        along = np.where(tooth, 4.0 * k - 2.0, length)
        side = np.where(tooth, 2.0 * (-1.0) ** (k + 1), 0.0)
        point = start + along[:, None] * unit + side[:, None] * normal
        out = np.maximum(out, stroke(previous[:, 0], previous[:, 1], point[:, 0], point[:, 1]))
        previous = point
    return np.clip(out, 0.0, 1.0)


SOBEL_COLS = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def canny_edges(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Canny's edge detector as scikit-image's defaults run it: Gaussian smoothing (sigma 1),
    Sobel gradients, non-maximum suppression in four directions, hysteresis between 0.1 and 0.2
    of the gradient magnitude (8-connected), no edge on the border; edges 1, the rest 0."""
    smooth = gaussian_blur(images, 1.0, mode="constant")
    gc = _convolve3(smooth, SOBEL_COLS)
    gr = _convolve3(smooth, SOBEL_COLS.T)
    magnitude = np.hypot(gc, gr)
    angle = np.mod(np.rad2deg(np.arctan2(gr, gc)), 180.0)
    direction = (np.round(angle / 45.0).astype(np.int64)) % 4  # 0, 45, 90, 135 degrees
    padded = np.pad(magnitude, ((0, 0), (1, 1), (1, 1)))
    keep = np.zeros(magnitude.shape, bool)
    for d, (dr, dc) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        ahead = padded[:, 1 + dr : 1 + dr + SIDE, 1 + dc : 1 + dc + SIDE]
        behind = padded[:, 1 - dr : 1 - dr + SIDE, 1 - dc : 1 - dc + SIDE]
        keep |= (direction == d) & (magnitude >= ahead) & (magnitude >= behind)
    keep[:, [0, -1], :] = False
    keep[:, :, [0, -1]] = False
    weak = keep & (magnitude >= 0.1)
    edges = keep & (magnitude >= 0.2)
    while True:
        grown = _dilate(edges) & weak
        if np.array_equal(grown, edges):
            return edges.astype(np.float64)
        edges = grown


CORRUPTIONS: dict[str, Corruption] = {
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "shear": shear,
    "scale": scale,
    "rotate": rotate,
    "brightness": brightness,
    "translate": translate,
    "stripe": stripe,
    "fog": fog,
    "spatter": spatter,
    "dotted_line": dotted_line,
    "zigzag": zigzag,
    "canny_edges": canny_edges,
}
# the MNIST-C severity (of 5) each one reproduces: its reference code's default; the last five
# have a single level
SEVERITY = {
    "shot_noise": "5",
    "impulse_noise": "4",
    "glass_blur": "1",
    "motion_blur": "1",
    "shear": "2",
    "scale": "3",
    "rotate": "2",
    "brightness": "5",
    "translate": "3",
    "stripe": "-",
    "fog": "5",
    "spatter": "4",
    "dotted_line": "-",
    "zigzag": "-",
    "canny_edges": "-",
}


def describe(name: str) -> str:
    """The first sentence of a corruption's docstring: what it does, with its parameters."""
    return " ".join(CORRUPTIONS[name].__doc__.split()).split(". ")[0].rstrip(".")


def corrupt(images: np.ndarray, name: str, seed: int) -> np.ndarray:
    """uint8 (n, 28, 28) digits -> the same digits under corruption ``name``, uint8 (rounded,
    as MNIST-C stores them); every image draws its own parameters from ``seed``."""
    rng = np.random.default_rng([seed, list(CORRUPTIONS).index(name)])
    x = np.asarray(images, np.float32) / np.float32(255.0)
    out = np.empty(x.shape, np.uint8)
    for start in range(0, len(x), CHUNK):  # bounds the (chunk, 784) float64 temporaries
        part = CORRUPTIONS[name](x[start : start + CHUNK], rng)
        out[start : start + CHUNK] = np.round(np.clip(part, 0.0, 1.0) * 255.0)
    return out


# -- candidate scores ---------------------------------------------------------------------------


class Candidate:
    """A score computed from the AE's and the VAE's, fitted on clean reference scores."""

    def __init__(self, name: str, combine: str | None, scale: str | None) -> None:
        self.name, self.combine, self.scale = name, combine, scale
        self.reference: dict[str, np.ndarray] = {}
        self.log_moments: dict[str, tuple[float, float]] = {}
        self.threshold = math.nan

    def fit(self, clean: dict[str, np.ndarray], fpr: float) -> Candidate:
        """Learn the scales from clean scores {model: (n,)}; calibrate the threshold on them."""
        self.reference = {m: np.sort(np.asarray(clean[m], np.float64)) for m in MODELS}
        for m in MODELS:
            logs = np.log(self.reference[m])
            self.log_moments[m] = (float(logs.mean()), float(logs.std()))
        self.threshold = calibrate_threshold(self(clean), fpr)
        return self

    def _scaled(self, model: str, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, np.float64)
        if self.scale == "rank":  # the empirical CDF of the clean reference scores
            ref = self.reference[model]
            return np.searchsorted(ref, scores, side="right") / (len(ref) + 1.0)
        mean, std = self.log_moments[model]
        return (np.log(scores) - mean) / std

    def __call__(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        if self.combine is None:
            return np.asarray(scores[self.name], np.float64)
        both = np.stack([self._scaled(m, scores[m]) for m in MODELS])
        return both.mean(axis=0) if self.combine == "mean" else both.max(axis=0)


def candidates() -> list[Candidate]:
    return [
        Candidate("vae", None, None),
        Candidate("ae", None, None),
        Candidate("rank_mean", "mean", "rank"),
        Candidate("rank_max", "max", "rank"),
        Candidate("z_mean", "mean", "z"),
        Candidate("z_max", "max", "z"),
    ]


def separation(clean: np.ndarray, corrupted: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC of corrupted (positives) against clean (negatives) scores, and the share flagged."""
    labels = np.repeat([False, True], [len(clean), len(corrupted)])
    return {
        "auroc": roc_auc(np.concatenate([clean, corrupted]), labels),
        "flagged": false_positive_rate(corrupted, threshold),  # the share above the threshold
    }


def measure(
    candidate: Candidate, clean: dict[str, np.ndarray], corrupted: dict[str, dict[str, np.ndarray]]
) -> dict[str, Any]:
    """A fitted candidate on clean scores {model: (n,)} and corrupted ones {name: {model: ...}}."""
    clean_values = candidate(clean)
    per = {
        name: separation(clean_values, candidate(scores), candidate.threshold)
        for name, scores in corrupted.items()
    }
    return {
        "threshold": candidate.threshold,
        "clean_fpr": false_positive_rate(clean_values, candidate.threshold),
        "mean_auroc": float(np.mean([v["auroc"] for v in per.values()])),
        "mean_flagged": float(np.mean([v["flagged"] for v in per.values()])),
        "corruptions": per,
    }


def choose(on_b: dict[str, dict[str, Any]], fpr: float, n_clean: int) -> tuple[str, float]:
    """The rule of the module docstring: (the chosen candidate, the FPR bound it had to meet)."""
    bound = fpr + 2.0 * math.sqrt(fpr * (1.0 - fpr) / n_clean)
    eligible = [name for name, r in on_b.items() if r["clean_fpr"] <= bound]
    if not eligible:
        return "vae", bound
    return max(eligible, key=lambda name: on_b[name]["mean_flagged"]), bound


# -- the run ------------------------------------------------------------------------------------


def score_all(bundle: Any, images: np.ndarray) -> dict[str, np.ndarray]:
    return {m: bundle.score(images, m).astype(np.float64) for m in MODELS}


def pct(x: float) -> str:
    return f"{100.0 * x:.1f}%"


def render(report: dict[str, Any]) -> str:
    """The run's tables, from its result file."""
    part1, choice, on_test = report["bundle_scores"], report["choice"], report["test"]
    models = list(part1)
    names = list(report["corruptions"])
    chosen, bound, on_b = choice["chosen"], choice["fpr_bound"], choice["validation_b"]
    half_a, half_b = report["validation_halves"]
    rows = [
        [name, report["corruptions"][name]["severity"]]
        + [
            cell
            for m in models
            for cell in (
                f"{part1[m]['corruptions'][name]['auroc']:.3f}",
                pct(part1[m]["corruptions"][name]["flagged"]),
            )
        ]
        for name in names
    ]
    rows.append(
        ["mean of the 15", ""]
        + [
            cell
            for m in models
            for cell in (
                f"{np.mean([v['auroc'] for v in part1[m]['corruptions'].values()]):.3f}",
                pct(np.mean([v["flagged"] for v in part1[m]["corruptions"].values()])),
            )
        ]
    )
    rows.append(
        ["clean test digits (FPR)", ""]
        + [c for m in models for c in ("", pct(part1[m]["clean_fpr"]))]
    )
    header = ["corruption", "MNIST-C severity"] + [
        f"{m.upper()} {what}" for m in models for what in ("AUROC", "flagged")
    ]

    def candidate_row(name: str, r: dict[str, Any], *more: str) -> list[str]:
        summary = [f"{r['mean_auroc']:.3f}", pct(r["mean_flagged"]), pct(r["clean_fpr"])]
        return [name, *summary, *more, "**chosen**" if name == chosen else ""]

    thresholds = ", ".join(f"{m.upper()} {part1[m]['threshold']:.6g}" for m in models)
    per_rows = [
        [name]
        + [
            f"{on_test[c]['corruptions'][name]['auroc']:.3f} / "
            f"{pct(on_test[c]['corruptions'][name]['flagged'])}"
            for c in on_test
        ]
        for name in names
    ]
    seconds = report["seconds"]
    lines = [
        f"machine: {report['machine']}",
        f"bundle {report['bundle']}: thresholds calibrated at FPR {report['fpr']:g} on validation "
        f"({thresholds}); {report['test_digits']:,} test digits, each corruption applied to all "
        "of them",
        "",
        table(
            ["corruption", "MNIST-C severity", "as drawn here"],
            [
                [n, report["corruptions"][n]["severity"], report["corruptions"][n]["definition"]]
                for n in names
            ],
        ),  # fmt: skip
        "",
        table(header, rows),
        "",
        f"choice on validation: half A ({half_a:,} clean digits) fits each candidate, half B "
        f"({half_b:,} digits, clean and under each corruption) measures it; FPR bound {pct(bound)}",
        "",
        table(
            ["candidate", "mean AUROC", "mean flagged", "clean FPR", "within bound", ""],
            [
                candidate_row(n, r, "yes" if r["clean_fpr"] <= bound else "no")
                for n, r in on_b.items()
            ],
        ),  # fmt: skip
        "",
        "test, after the choice (every candidate refitted on the whole validation split):",
        "",
        table(
            ["candidate", "mean AUROC", "mean flagged", "clean test FPR", ""],
            [candidate_row(n, r) for n, r in on_test.items()],
        ),
        "",
        "test, per corruption: AUROC / flagged",
        "",
        table(["corruption", *on_test], per_rows),
        "",
        f"chosen: {chosen}; wall time {seconds['total']:.0f} s (corrupting "
        f"{seconds['corrupt']:.0f} s, scoring {seconds['score']:.0f} s)",
    ]
    if "load" in report:  # runs before the load was recorded have none
        lines.append(render_load(report["load"]))
    return "\n".join(lines)


def index_line(r: dict[str, Any]) -> str:
    """The line of the benchmarks' index: this result's headline figure."""
    vae = r["bundle_scores"]["vae"]["corruptions"].values()
    return (
        f"VAE mean AUROC {statistics.mean(v['auroc'] for v in vae):.3f}; default kept: "
        f"`{r['choice']['chosen']}`"
    )


def findings(report: dict[str, Any]) -> str:
    """The corruption table read in words: means, the corruptions each score misses, the choice."""
    scores, test = report["bundle_scores"], report["test"]
    means = {
        m: (
            statistics.mean(v["auroc"] for v in s["corruptions"].values()),
            statistics.mean(v["flagged"] for v in s["corruptions"].values()),
        )
        for m, s in scores.items()
    }
    chosen = report["choice"]["chosen"]
    best_auroc = max(test, key=lambda c: test[c]["mean_auroc"])
    lines = [
        "- **Mean over the fifteen corruptions**: "
        + "; ".join(
            f"{m.upper()} AUROC {auroc:.3f}, {flagged:.1%} flagged"
            for m, (auroc, flagged) in means.items()
        )
        + ".",
    ]
    for m, s in scores.items():
        missed = [n for n, v in s["corruptions"].items() if v["flagged"] <= 2 * s["clean_fpr"]]
        lines.append(
            f"- **Flagged at most twice the clean rate by the {m.upper()}** "
            f"({s['clean_fpr']:.1%} of clean test digits): " + (", ".join(missed) or "none") + "."
        )
    lines.append(
        f"- **Choice on validation**: `{chosen}` "
        f"({report['choice']['validation_b'][chosen]['mean_flagged']:.1%} flagged on half B); on "
        f"test, after the choice, `{chosen}` flags {test[chosen]['mean_flagged']:.1%} at a clean "
        f"FPR of {test[chosen]['clean_fpr']:.1%}; the highest mean AUROC on test is "
        f"`{best_auroc}`'s ({test[best_auroc]['mean_auroc']:.3f}, against "
        f"{test[chosen]['mean_auroc']:.3f})."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder with export/")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--seed", type=int, default=0, help="seed of the corruptions and halves")
    parser.add_argument("--limit", type=int, help="use only the first N test digits (a quick look)")
    parser.add_argument("--threads", type=int, default=0, help="ORT threads (0: all cores)")
    parser.add_argument("--render", type=Path, metavar="JSON", help="print a stored result")
    args = parser.parse_args(argv)
    if args.render is not None:
        print(render(json.loads(args.render.read_text())))
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    load_start = os.getloadavg()

    from export.bundle import Bundle

    started = time.perf_counter()
    bundle = Bundle.load(args.run / "export", threads=args.threads)
    fpr = float(bundle.manifest["anomaly"]["fpr"])
    test = load_uint8(args.run, "test")[: args.limit]
    validation = load_uint8(args.run, "validation")
    halves = np.random.default_rng([args.seed, 1]).permutation(len(validation))
    half_a, half_b = np.sort(halves[: len(halves) // 2]), np.sort(halves[len(halves) // 2 :])

    seconds = {"corrupt": 0.0, "score": 0.0}

    def timed(what: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = fn()
        seconds[what] += time.perf_counter() - t
        return out

    scores = {"test": {}, "val_b": {}}
    clean = {
        "test": timed("score", lambda: score_all(bundle, test)),
        "val": timed("score", lambda: score_all(bundle, validation)),
    }
    for name in CORRUPTIONS:
        for split, images, seed in (("test", test, 0), ("val_b", validation[half_b], 1)):
            bad = timed("corrupt", lambda x=images, name=name, seed=seed: corrupt(x, name, seed))
            scores[split][name] = timed("score", lambda bad=bad: score_all(bundle, bad))
        print(f"  {name:<14} corrupted and scored ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr)  # fmt: skip

    # part 1: the bundle's scores and thresholds on the test digits
    part1 = {}
    for m in MODELS:
        threshold = bundle.threshold(m)
        part1[m] = {
            "threshold": threshold,
            "clean_fpr": false_positive_rate(clean["test"][m], threshold),
            "corruptions": {
                name: separation(clean["test"][m], s[m], threshold)
                for name, s in scores["test"].items()
            },
        }
    # part 2: fit on validation half A, choose on half B, then refit on all of validation, test
    clean_a = {m: clean["val"][m][half_a] for m in MODELS}
    clean_b = {m: clean["val"][m][half_b] for m in MODELS}
    on_b = {c.name: measure(c.fit(clean_a, fpr), clean_b, scores["val_b"]) for c in candidates()}
    chosen, bound = choose(on_b, fpr, len(half_b))
    on_test = {
        c.name: measure(c.fit(clean["val"], fpr), clean["test"], scores["test"])
        for c in candidates()
    }

    total = time.perf_counter() - started
    report = {
        "machine": machine(),
        "command": command_line(),
        "bundle": str(args.run / "export"),
        "fpr": fpr,
        "seed": args.seed,
        "test_digits": len(test),
        "validation_halves": [len(half_a), len(half_b)],
        "corruptions": {
            name: {"severity": SEVERITY[name], "definition": describe(name)} for name in CORRUPTIONS
        },
        "bundle_scores": part1,
        "choice": {
            "rule": "largest mean flagged share over the corruptions on validation half B, "
            "among candidates with clean half-B FPR <= fpr + 2 binomial standard errors",
            "fpr_bound": bound,
            "validation_b": on_b,
            "chosen": chosen,
        },
        "test": on_test,
        "seconds": {**seconds, "total": total},
        "load": load_report(load_start),
    }
    write_result(args.json, report)
    print(render(report))


if __name__ == "__main__":
    main()
