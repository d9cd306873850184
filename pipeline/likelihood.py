"""The VAE's test likelihood: ELBO, KL and the importance-sampled negative log-likelihood.

    out = vae_likelihood(decoder, images, z_mean, z_log_var, k=200, seed=1234)
    out["elbo"], out["kl"], out["nll_is"]          # each (n,) float64, nats per image

With ``z_k = z_mean + exp(z_log_var / 2) * eps_k`` (k = 1..K, eps_k ~ N(0, I)) and the Bernoulli
decoder ``p(x | z)`` (pixel probabilities clipped as in ``export.scoring``):

    ELBO(x)   = mean_k log p(x | z_k) - KL(q(z | x) || N(0, I))          (KL in closed form)
    NLL_K(x)  = -(logsumexp_k [log p(x | z_k) + log p(z_k) - log q(z_k | x)] - log K)

NLL_K is the importance-weighted bound of Burda et al. (2016): it never underestimates
-log p(x) in expectation and tightens as K grows. On grey-level pixels the Bernoulli "NLL" has a
floor above zero, ``bernoulli_entropy(images)``: what a perfect decoder (p = x) would score.
The decoder runs on up to ``max_decodes`` latent points per call, so K = 200 over 10,000 test
digits is 2 million decodes in ~100 calls.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from export.scoring import EPSILON, gaussian_kl

LOG_2PI = math.log(2.0 * math.pi)


def log_importance_ratio(eps: np.ndarray, z: np.ndarray, z_log_var: np.ndarray) -> np.ndarray:
    """log p(z) - log q(z | x) for z = mu + sigma * eps: eps, z (b, k, d), z_log_var (b, d) -> (b, k).

    The Gaussian normalising constants cancel; what is left is -z^2/2 + eps^2/2 + log_var/2.
    """
    return 0.5 * np.sum(eps**2 - z**2, axis=-1) + 0.5 * np.sum(z_log_var, axis=-1)[:, None]


def logsumexp(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """Stable log(sum(exp(a))) along ``axis`` (float64)."""
    a = np.asarray(a, dtype=np.float64)
    top = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(top, axis=axis) + np.log(np.sum(np.exp(a - top), axis=axis))


def bernoulli_entropy(images: np.ndarray) -> np.ndarray:
    """Per-image sum of the binary entropy H(x) = -x log x - (1 - x) log(1 - x) of each pixel.

    images (n, 28, 28) in [0, 1] -> (n,) float64 nats: the smallest Bernoulli negative
    log-likelihood any decoder can reach on a grey-level image (at p = x); 0 on binary images.
    """
    x = np.asarray(images, np.float64).reshape(len(images), -1)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 log 0 = 0, filled in below
        h = -(x * np.log(x) + (1.0 - x) * np.log1p(-x))
    return np.sum(np.where((x > 0.0) & (x < 1.0), h, 0.0), axis=1)


def _log_likelihood_fn(decoder: Any) -> Any:
    """A compiled (x (b, 784), z (b, k, d)) -> log p(x | z) (b, k) for the Keras ``decoder``."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def log_likelihood(x: Any, z: Any) -> Any:
        b, k, d = tf.shape(z)[0], tf.shape(z)[1], tf.shape(z)[2]
        pixels = decoder(tf.reshape(z, (b * k, d)), training=False)
        p = tf.clip_by_value(tf.reshape(pixels, (b, k, -1)), EPSILON, 1.0 - EPSILON)
        x = x[:, None, :]
        return tf.reduce_sum(x * tf.math.log(p) + (1.0 - x) * tf.math.log1p(-p), axis=-1)

    return log_likelihood


def vae_likelihood(
    decoder: Any,
    images: np.ndarray,
    z_mean: np.ndarray,
    z_log_var: np.ndarray,
    k: int,
    seed: int,
    max_decodes: int = 40_000,
    progress: bool | None = None,
) -> dict[str, np.ndarray]:
    """ELBO, KL and importance-sampled NLL of each image, in nats (see the module docstring).

    decoder: Keras model z (m, d) -> pixels (m, 28, 28); images (n, 28, 28) in [0, 1];
    z_mean, z_log_var (n, d) from the encoder. Returns {"elbo", "kl", "nll_is",
    "recon_nll"} as (n,) float64 arrays (recon_nll = -mean_k log p(x | z_k)). Deterministic
    for a given ``seed``.
    """
    if k < 1:
        raise ValueError(f"vae_likelihood: k must be >= 1, got {k}")
    n = len(images)
    if z_mean.shape != z_log_var.shape or len(z_mean) != n:
        raise ValueError(
            f"vae_likelihood: images {images.shape}, z_mean {z_mean.shape} and "
            f"z_log_var {z_log_var.shape} must agree on n"
        )
    x_flat = np.asarray(images, np.float32).reshape(n, -1)
    mu = np.asarray(z_mean, np.float32)
    log_var = np.asarray(z_log_var, np.float32)
    sigma = np.exp(0.5 * log_var)
    log_likelihood = _log_likelihood_fn(decoder)
    rng = np.random.default_rng(seed)
    batch = max(1, max_decodes // k)
    recon = np.empty(n, np.float64)
    log_mean_w = np.empty(n, np.float64)
    bar = _progress_bar(n, progress)
    for start in range(0, n, batch):
        sl = slice(start, min(start + batch, n))
        eps = rng.standard_normal((sl.stop - sl.start, k, mu.shape[1]), dtype=np.float32)
        z = mu[sl, None, :] + sigma[sl, None, :] * eps
        log_px = np.asarray(log_likelihood(x_flat[sl], z), np.float64)  # (b, k)
        log_w = log_px + log_importance_ratio(eps, z, log_var[sl]).astype(np.float64)
        recon[sl] = -log_px.mean(axis=1)
        log_mean_w[sl] = logsumexp(log_w, axis=1) - math.log(k)
        if bar is not None:
            bar.update(sl.stop)
    kl = gaussian_kl(mu, log_var)
    return {"elbo": -recon - kl, "kl": kl, "nll_is": -log_mean_w, "recon_nll": recon}


def _progress_bar(total: int, progress: bool | None) -> Any:
    """A Keras progress bar on a terminal (or when asked), else None."""
    if progress is None:
        progress = sys.stdout.isatty()
    if not progress:
        return None
    import keras

    return keras.utils.Progbar(total, unit_name="image")
