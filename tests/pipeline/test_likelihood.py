"""pipeline.likelihood against cases where log p(x) is known: exactly, or by 2-D quadrature."""

from __future__ import annotations

import numpy as np
import pytest

from export.scoring import bernoulli_nll, gaussian_kl
from pipeline.likelihood import bernoulli_entropy, log_importance_ratio, logsumexp, vae_likelihood


def linear_decoder(kernel: np.ndarray, bias: np.ndarray):
    """A Keras decoder z (m, 2) -> sigmoid(z @ kernel + bias) as (m, 28, 28)."""
    import keras

    z = keras.Input((2,))
    dense = keras.layers.Dense(784, activation="sigmoid")
    pixels = keras.layers.Reshape((28, 28))(dense(z))
    model = keras.Model(z, pixels)
    dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model


def bernoulli_log_lik(x: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """log p(x | logits) summed over the last axis, computed stably from logits."""
    return np.sum(x * logits - np.logaddexp(0.0, logits), axis=-1)


def test_log_importance_ratio_equals_the_gaussian_densities():
    rng = np.random.default_rng(0)
    mu, log_var = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    eps = rng.normal(size=(3, 5, 2))
    z = mu[:, None] + np.exp(0.5 * log_var)[:, None] * eps
    var = np.exp(log_var)[:, None]
    log_q = np.sum(-0.5 * (z - mu[:, None]) ** 2 / var - 0.5 * np.log(2 * np.pi * var), axis=-1)
    log_p = np.sum(-0.5 * z**2 - 0.5 * np.log(2 * np.pi), axis=-1)
    np.testing.assert_allclose(log_importance_ratio(eps, z, log_var), log_p - log_q, rtol=1e-10)


def test_logsumexp_is_stable():
    np.testing.assert_allclose(logsumexp(np.array([[1000.0, 1000.0]])), [1000.0 + np.log(2.0)])
    np.testing.assert_allclose(logsumexp(np.array([[-1e4, 0.0]])), [0.0])


def test_decoder_that_ignores_z_gives_log_p_x_exactly():
    """p(x|z) = p(x) for every z: ELBO = log p(x) - KL exactly; with q = prior, NLL = -log p(x)."""
    rng = np.random.default_rng(1)
    bias = rng.normal(size=784)
    decoder = linear_decoder(np.zeros((2, 784)), bias)
    x = (rng.random((3, 784)) < 1 / (1 + np.exp(-bias))).astype(np.float32)
    log_px = bernoulli_log_lik(x, bias[None, :])
    mu = np.array([[0.0, 0.0], [0.0, 0.0], [0.5, -1.0]], np.float32)
    log_var = np.array([[0.0, 0.0], [0.0, 0.0], [-1.0, 0.3]], np.float32)
    out = vae_likelihood(decoder, x.reshape(3, 28, 28), mu, log_var, k=64, seed=0)
    kl = gaussian_kl(mu, log_var)
    assert kl[:2] == pytest.approx([0.0, 0.0])
    np.testing.assert_allclose(out["kl"], kl)
    np.testing.assert_allclose(out["elbo"], log_px - kl, rtol=1e-5)
    # q equals the prior: every importance weight is p(x), so the estimate is exact for any K
    np.testing.assert_allclose(out["nll_is"][:2], -log_px[:2], rtol=1e-5)
    # q differs from the prior: the weights p(z)/q(z) average to 1 only as K grows
    assert out["nll_is"][2] == pytest.approx(-log_px[2], abs=0.5)


def test_elbo_and_nll_match_quadrature_for_a_linear_bernoulli_decoder():
    """A 2-D latent: log p(x) = log of the integral of p(x|z) N(z; 0, I), summed on a fine grid."""
    rng = np.random.default_rng(2)
    kernel = rng.normal(scale=0.1, size=(2, 784))
    bias = rng.normal(scale=0.5, size=784)
    decoder = linear_decoder(kernel, bias)
    z_true = np.array([0.8, -0.4])
    x = (rng.random(784) < 1 / (1 + np.exp(-(z_true @ kernel + bias)))).astype(np.float64)

    axis = np.linspace(-6.0, 6.0, 161)  # the posterior's sd is ~0.8: a smooth integrand
    zz = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)
    cell = (axis[1] - axis[0]) ** 2
    log_lik = bernoulli_log_lik(x[None, :], zz @ kernel + bias)  # (grid,)
    log_prior = -0.5 * np.sum(zz**2, axis=1) - np.log(2 * np.pi)
    log_joint = log_lik + log_prior
    log_px = logsumexp(log_joint[None, :])[0] + np.log(cell)
    posterior = np.exp(log_joint - log_px) * cell
    assert posterior.sum() == pytest.approx(1.0, abs=1e-6)  # the grid holds the posterior
    post_mean = posterior @ zz
    post_var = posterior @ (zz - post_mean) ** 2

    # q: a diagonal Gaussian near the posterior, as a trained encoder would give
    mu = post_mean[None, :].astype(np.float32)
    log_var = np.log(1.2 * post_var)[None, :].astype(np.float32)
    q = np.exp(
        np.sum(-0.5 * (zz - mu) ** 2 / np.exp(log_var) - 0.5 * np.log(2 * np.pi) - 0.5 * log_var, 1)
    )
    expected_elbo = np.sum(q * cell * log_lik) - gaussian_kl(mu, log_var)[0]
    assert expected_elbo < log_px  # the ELBO is a lower bound

    images = np.repeat(x.reshape(1, 28, 28), 4, axis=0).astype(np.float32)
    out = vae_likelihood(
        decoder, images, np.repeat(mu, 4, 0), np.repeat(log_var, 4, 0), k=4000, seed=3
    )
    np.testing.assert_allclose(out["elbo"], expected_elbo, atol=0.05)
    np.testing.assert_allclose(out["nll_is"], -log_px, atol=0.02)
    assert np.all(out["nll_is"] < -out["elbo"])  # the importance-weighted bound is tighter
    # a different seed draws different samples: estimates differ, agreement stays
    again = vae_likelihood(decoder, images[:1], mu, log_var, k=4000, seed=4)
    assert again["elbo"][0] != out["elbo"][0]


def test_batches_do_not_change_the_result():
    rng = np.random.default_rng(5)
    decoder = linear_decoder(rng.normal(scale=0.2, size=(2, 784)), rng.normal(size=784))
    images = (rng.random((7, 28, 28)) < 0.3).astype(np.float32)
    mu = rng.normal(size=(7, 2)).astype(np.float32)
    log_var = rng.normal(scale=0.3, size=(7, 2)).astype(np.float32) - 1.0
    one_call = vae_likelihood(decoder, images, mu, log_var, k=10, seed=0, max_decodes=1000)
    many_calls = vae_likelihood(decoder, images, mu, log_var, k=10, seed=0, max_decodes=30)
    for key in ("elbo", "kl", "nll_is", "recon_nll"):
        np.testing.assert_allclose(one_call[key], many_calls[key], rtol=1e-6)


def test_bad_shapes_are_rejected():
    decoder = linear_decoder(np.zeros((2, 784)), np.zeros(784))
    with pytest.raises(ValueError, match="k must be"):
        vae_likelihood(decoder, np.zeros((1, 28, 28)), np.zeros((1, 2)), np.zeros((1, 2)), 0, 0)
    with pytest.raises(ValueError, match="agree on n"):
        vae_likelihood(decoder, np.zeros((2, 28, 28)), np.zeros((1, 2)), np.zeros((1, 2)), 1, 0)


def test_bernoulli_entropy_is_the_floor_no_decoder_gets_below():
    rng = np.random.default_rng(6)
    grey = rng.random((4, 28, 28))
    floor = bernoulli_entropy(grey)
    # binary pixels carry no entropy; a 0.5 pixel carries log 2
    assert bernoulli_entropy((grey > 0.5).astype(np.float32)).tolist() == [0.0] * 4
    assert bernoulli_entropy(np.full((1, 28, 28), 0.5))[0] == pytest.approx(784 * np.log(2.0))
    # the decoder p = x reaches it (up to the probability clip); any other decoder scores more
    np.testing.assert_allclose(bernoulli_nll(grey, grey), floor, rtol=1e-5)
    for _ in range(5):
        assert np.all(bernoulli_nll(grey, rng.random((4, 28, 28))) > floor)
    # a linear decoder's ELBO stays below -floor - KL, whatever its weights
    decoder = linear_decoder(rng.normal(scale=0.5, size=(2, 784)), rng.normal(size=784))
    mu, log_var = rng.normal(size=(4, 2)), rng.normal(scale=0.3, size=(4, 2))
    out = vae_likelihood(decoder, grey.astype(np.float32), mu, log_var, k=20, seed=0)
    assert np.all(out["elbo"] < -floor - out["kl"])
