"""Anomaly scores and their calibration, in numpy: the one definition the pipeline and the
runtime share, so a threshold calibrated in the evaluate stage means the same thing at the edge.

    scores = negative_elbo(images, pixels, z_mean, z_log_var)   # VAE, nats per image
    threshold = calibrate_threshold(validation_scores, fpr=0.01)
    anomalies = scores > threshold
    out = reconstruct_and_score("vae", images, encoder, decoder)  # any runner of the two halves

AE score: per-image mean squared reconstruction error. VAE score: the negative ELBO evaluated at
the posterior mean, i.e. the Bernoulli NLL of the image under the decoder's pixels at z = z_mean,
plus KL(q(z|x) || N(0, I)); deterministic, in nats, higher is more anomalous.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

EPSILON = 1e-7  # pixel probabilities are clipped to [EPSILON, 1 - EPSILON], as Keras does
SCORES = {"ae": "reconstruction_mse", "vae": "negative_elbo"}  # each model's anomaly score
ENCODER_OUTPUTS = {"ae": ("z",), "vae": ("z_mean", "z_log_var")}  # by name, in order


ROW_BLOCK = 512  # rows per numpy pass: bounds the float64 temporaries (512 x 784 x 8 B each)


def _flat(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(a.shape[0], -1)


def _by_rows(fn: Callable[..., np.ndarray], *arrays: np.ndarray) -> np.ndarray:
    """``fn(*arrays)`` for a per-row ``fn``, ROW_BLOCK rows at a time: the same values (each
    row is reduced alone), with temporaries the size of a block instead of the batch."""
    n = len(arrays[0])
    if n <= ROW_BLOCK:
        return fn(*arrays)
    return np.concatenate(
        [fn(*(a[i : i + ROW_BLOCK] for a in arrays)) for i in range(0, n, ROW_BLOCK)]
    )


def _mse(images: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    return np.mean((_flat(images) - _flat(pixels)) ** 2, axis=1).astype(np.float32)


def reconstruction_mse(images: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """images, pixels: (n, 28, 28) in [0, 1] -> (n,) float32 mean squared error per image."""
    return _by_rows(_mse, np.asarray(images), np.asarray(pixels))


def _nll(images: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    x, p = _flat(images), np.clip(_flat(pixels), EPSILON, 1.0 - EPSILON)
    return -np.sum(x * np.log(p) + (1.0 - x) * np.log1p(-p), axis=1)


def bernoulli_nll(images: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """-log p(x | pixels) summed over pixels: images, pixels (n, 28, 28) -> (n,) float64 nats."""
    return _by_rows(_nll, np.asarray(images), np.asarray(pixels))


def gaussian_kl(z_mean: np.ndarray, z_log_var: np.ndarray) -> np.ndarray:
    """KL(N(z_mean, exp(z_log_var)) || N(0, I)): (n, d), (n, d) -> (n,) float64 nats."""
    m, lv = np.asarray(z_mean, np.float64), np.asarray(z_log_var, np.float64)
    return -0.5 * np.sum(1.0 + lv - m**2 - np.exp(lv), axis=1)


def negative_elbo(
    images: np.ndarray, pixels: np.ndarray, z_mean: np.ndarray, z_log_var: np.ndarray
) -> np.ndarray:
    """VAE anomaly score (n,) float32: Bernoulli NLL at z = z_mean plus the KL, in nats."""
    return (bernoulli_nll(images, pixels) + gaussian_kl(z_mean, z_log_var)).astype(np.float32)


def calibrate_threshold(scores: np.ndarray, fpr: float) -> float:
    """The smallest observed score with at most ``fpr`` of ``scores`` strictly above it.

    scores: (n,) scores of normal images (the validation split); anomaly = score > threshold.
    """
    scores = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if scores.size == 0:
        raise ValueError("calibrate_threshold: no scores given")
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"calibrate_threshold: fpr must be in (0, 1), got {fpr}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("calibrate_threshold: scores must be finite")
    allowed_above = int(np.floor(fpr * scores.size))
    return float(scores[scores.size - 1 - allowed_above])


def false_positive_rate(scores: np.ndarray, threshold: float) -> float:
    """Fraction of ``scores`` (normal images) flagged as anomalies (score > threshold)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    return float(np.mean(scores > threshold))


def squared_error_map(images: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """The AE score per pixel: (x - x_hat)^2, (n, 28, 28) float32; its mean per image is
    ``reconstruction_mse``."""
    diff = np.asarray(images, np.float32) - np.asarray(pixels, np.float32)
    return (diff * diff).astype(np.float32, copy=False)


def bernoulli_nll_map(images: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """The VAE score's reconstruction term per pixel: -log p(x_ij | pixels_ij), (n, 28, 28)
    float32 nats; its sum per image is ``bernoulli_nll`` (the score adds the image's KL)."""
    x = np.asarray(images, np.float64)
    p = np.clip(np.asarray(pixels, np.float64), EPSILON, 1.0 - EPSILON)
    return (-(x * np.log(p) + (1.0 - x) * np.log1p(-p))).astype(np.float32)


def top_fraction_mean(maps: np.ndarray, fraction: float) -> np.ndarray:
    """The mean of the largest ``fraction`` of each image's pixel scores: (n, 28, 28) -> (n,)
    float32. A localized defect (a stroke that does not belong) moves it more than the mean of
    all 784 pixels, which the background dilutes."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"top_fraction_mean: fraction must be in (0, 1], got {fraction}")
    flat = np.asarray(maps, np.float32).reshape(len(maps), -1)
    k = max(1, int(round(fraction * flat.shape[1])))
    top = np.partition(flat, flat.shape[1] - k, axis=1)[:, flat.shape[1] - k :]
    return top.mean(axis=1, dtype=np.float64).astype(np.float32)


def p_values(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Empirical p-values of ``scores`` (n,) against reference scores of normal images (m,):
    (1 + #{reference >= s}) / (m + 1), float64 in (0, 1]. Under the null (s drawn like the
    reference) they are uniform; small means anomalous."""
    ref = np.sort(np.asarray(reference, np.float64).ravel())
    if ref.size == 0:
        raise ValueError("p_values: no reference scores")
    s = np.asarray(scores, np.float64).ravel()
    at_least = ref.size - np.searchsorted(ref, s, side="left")
    return (1.0 + at_least) / (ref.size + 1.0)


@dataclass(frozen=True)
class Reconstruction:
    """One pass of an autoencoder over images (n, 28, 28): its code, its output, its score."""

    z: np.ndarray  # (n, d) the code the decoder read (the VAE's posterior mean z_mean)
    z_log_var: np.ndarray | None  # (n, d) the VAE's posterior log-variance; None for the AE
    pixels: np.ndarray  # (n, 28, 28) float32 decoded from z
    scores: np.ndarray  # (n,) float32: the model's anomaly score, ``SCORES[kind]``


def reconstruct_and_score(
    kind: str,
    images: np.ndarray,
    encode: Callable[[np.ndarray], np.ndarray | Sequence[np.ndarray]],
    decode: Callable[[np.ndarray], np.ndarray],
) -> Reconstruction:
    """Encode ``images`` (n, 28, 28), decode the code (the VAE: z_mean), score: the one wiring
    of the two halves of an autoencoder, whatever runs them (ONNX Runtime, Keras).

    encode: images -> the encoder's outputs in order (AE: z, or [z]; VAE: [z_mean, z_log_var]);
    decode: z (n, d) -> pixels (n, 28, 28).
    """
    if kind not in SCORES:
        raise ValueError(f"kind must be one of {tuple(SCORES)}, got {kind!r}")
    outputs = encode(images)
    outputs = [outputs] if isinstance(outputs, np.ndarray) else list(outputs)
    z = outputs[0]
    pixels = decode(z)
    if kind == "ae":
        return Reconstruction(z, None, pixels, reconstruction_mse(images, pixels))
    z_log_var = outputs[1]
    return Reconstruction(z, z_log_var, pixels, negative_elbo(images, pixels, z, z_log_var))


# -- the detector: the bundle's default score -----------------------------------------------

DETECTOR = "detector"  # the scoring model of pipeline.detector, the bundle's default score
CLASSES = 10
CALIBRATION_QUANTILE = 0.99  # a term's scale: its 99th percentile minus its median, on clean digits


def coarse_deviance(images: np.ndarray, pixels: np.ndarray, block: int) -> np.ndarray:
    """The Bernoulli divergence of the picture at a coarse scale: images, pixels (n, 28, 28) ->
    (n,) float64 nats. Both are averaged over ``block`` x ``block`` blocks (probabilities
    clipped like ``EPSILON``), and the KL(Bern(x_block) || Bern(p_block)) of every block,
    times its block^2 pixels, is summed: where the pixel-level NLL is dominated by the edges of
    strokes, this term sees where ink is and is not (a missing half, a second digit)."""
    k = 28 // block

    def pooled(a: np.ndarray) -> np.ndarray:
        # the block sums by strided adds: ~9x faster than a 5-D mean over axes (2, 4), the
        # same values
        n = len(a)
        cols = np.asarray(a, np.float64).reshape(n * 28, k, block)
        rows = sum_along(cols, 2).reshape(n, k, block, k)
        means = sum_along(rows, 2) / block**2
        return np.clip(means, EPSILON, 1.0 - EPSILON).reshape(n, -1)

    def deviance(x: np.ndarray, p: np.ndarray) -> np.ndarray:
        a, b = pooled(x), pooled(p)
        kl = a * (np.log(a) - np.log(b)) + (1.0 - a) * (np.log1p(-a) - np.log1p(-b))
        return block**2 * kl.sum(axis=1)

    return _by_rows(deviance, np.asarray(images), np.asarray(pixels))


def sum_along(a: np.ndarray, axis: int) -> np.ndarray:
    """``a.sum(axis)`` for a short axis, as a sequence of whole-array adds (fast where the axis
    is the innermost and strided)."""
    parts = np.moveaxis(a, axis, 0)
    total = parts[0].copy()
    for part in parts[1:]:
        total += part
    return total


def class_inputs(z_mean: np.ndarray, class_logits: np.ndarray) -> np.ndarray:
    """The detector decoder's input: [z_mean, one-hot of the encoder's class] (n, d + 10)
    float32; the class is the first of the largest logits (ONNX ArgMax's choice too)."""
    onehot = np.eye(class_logits.shape[1], dtype=np.float32)[np.argmax(class_logits, axis=1)]
    return np.concatenate([np.asarray(z_mean, np.float32), onehot], axis=1)


@dataclass(frozen=True)
class Calibration:
    """How the detector's terms are put on one scale: ``centres`` (their medians) and
    ``scales`` (99th percentile minus median) on clean digits, in ``terms`` order."""

    terms: tuple[str, ...]
    centres: tuple[float, ...]
    scales: tuple[float, ...]

    @classmethod
    def fit(cls, terms: dict[str, np.ndarray]) -> Calibration:
        """From each term's values (n,) on clean calibration digits."""
        centres, scales = [], []
        for values in terms.values():
            values = np.asarray(values, np.float64)
            median = float(np.median(values))
            spread = float(np.quantile(values, CALIBRATION_QUANTILE)) - median
            centres.append(median)
            scales.append(max(spread, 1e-6))
        return cls(tuple(terms), tuple(centres), tuple(scales))

    @classmethod
    def from_json(cls, record: dict[str, list]) -> Calibration:
        return cls(tuple(record["terms"]), tuple(record["centres"]), tuple(record["scales"]))

    def to_json(self) -> dict[str, list]:
        return {
            "terms": list(self.terms),
            "centres": list(self.centres),
            "scales": list(self.scales),
        }


def detector_terms(
    images: np.ndarray,
    foreground: Reconstruction,
    background: Reconstruction | None,
    coarse_block: int,
) -> dict[str, np.ndarray]:
    """The detector's terms (n,) float64 nats: ``nelbo``, the class-conditional VAE's negative
    ELBO at z_mean and its encoder's class (``foreground.scores``); ``coarse``, its
    ``coarse_deviance`` (when ``coarse_block``); ``ratio``, its negative ELBO minus the
    background VAE's (the log likelihood ratio against a model of shapeless strokes, Ren et
    al. 2019), when there is a background."""
    terms = {"nelbo": foreground.scores.astype(np.float64)}
    if coarse_block:
        terms["coarse"] = coarse_deviance(images, foreground.pixels, coarse_block)
    if background is not None:
        terms["ratio"] = terms["nelbo"] - background.scores.astype(np.float64)
    return terms


def combine_terms(terms: dict[str, np.ndarray], calibration: Calibration) -> np.ndarray:
    """The detector's score (n,) float32: the largest of the terms, each standardised by the
    calibration, on the scale of the first (``nelbo``): centre_0 + scale_0 * max_t (t - c_t) / s_t.
    Equal to the negative ELBO where that term is the largest."""
    if tuple(terms) != calibration.terms:
        raise ValueError(f"terms {tuple(terms)} do not match the calibration's {calibration.terms}")
    standard = np.max(
        [
            (np.asarray(v, np.float64) - c) / s
            for v, c, s in zip(terms.values(), calibration.centres, calibration.scales, strict=True)
        ],
        axis=0,
    )
    return (calibration.centres[0] + calibration.scales[0] * standard).astype(np.float32)


def detector_reconstruct(
    images: np.ndarray,
    encode: Callable[[np.ndarray], Sequence[np.ndarray]],
    decode: Callable[[np.ndarray], np.ndarray],
) -> Reconstruction:
    """The class-conditional VAE over images (n, 28, 28): encode -> [z_mean, z_log_var,
    class_logits], decode [z_mean, the encoder's class] -> pixels; scores: the negative ELBO."""
    z_mean, z_log_var, logits = encode(images)
    pixels = decode(class_inputs(z_mean, logits))
    return Reconstruction(
        z_mean, z_log_var, pixels, negative_elbo(images, pixels, z_mean, z_log_var)
    )


def detector_score(
    images: np.ndarray,
    foreground: tuple[Callable, Callable],
    background: tuple[Callable, Callable] | None,
    calibration: Calibration,
    coarse_block: int,
) -> tuple[np.ndarray, Reconstruction]:
    """The detector's score (n,) float32 of images (n, 28, 28), and its class-conditional VAE's
    reconstruction (for pixel maps). foreground: (encode, decode) of the class-conditional VAE
    (``detector_reconstruct``); background: (encode, decode) of the background VAE, or None."""
    fg = detector_reconstruct(images, *foreground)
    bg = None if background is None else reconstruct_and_score("vae", images, *background)
    return combine_terms(detector_terms(images, fg, bg, coarse_block), calibration), fg
