"""Custom layers and builders: closed-form KL, sampling statistics, shapes, `.keras` round trips."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest

from models import (
    KLDivergence,
    ModelSpec,
    Sampling,
    SummedBinaryCrossentropy,
    build_autoencoder,
    build_decoder,
    build_encoder,
    build_vae,
    kl_divergence,
    submodel,
)


def closed_form_kl(mu: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    """KL(N(mu, sigma^2) || N(0, 1)) = sum(0.5 * (sigma^2 + mu^2 - 1) - log sigma), per row."""
    sigma2 = np.exp(log_var)
    return np.sum(0.5 * (sigma2 + mu**2 - 1.0) - 0.5 * log_var, axis=-1)


def test_kl_matches_closed_form():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(16, 3)).astype(np.float32)
    log_var = rng.normal(scale=0.5, size=(16, 3)).astype(np.float32)
    got = keras.ops.convert_to_numpy(kl_divergence(mu, log_var))
    np.testing.assert_allclose(got, closed_form_kl(mu, log_var), rtol=1e-5)
    # a point case worked by hand: mu = 1, sigma = 1 in one dimension -> KL = 0.5
    one = keras.ops.convert_to_numpy(kl_divergence(np.ones((1, 1)), np.zeros((1, 1))))
    np.testing.assert_allclose(one, [0.5], rtol=1e-6)
    # the prior itself has zero divergence
    zero = keras.ops.convert_to_numpy(kl_divergence(np.zeros((2, 4)), np.zeros((2, 4))))
    np.testing.assert_allclose(zero, 0.0, atol=1e-7)


def test_kl_layer_adds_beta_times_mean_kl_and_passes_inputs_through():
    mu = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    log_var = np.array([[0.0, np.log(4.0)], [0.0, 0.0]], np.float32)
    layer = KLDivergence(beta=0.5)
    out_mu, out_lv = layer([mu, log_var])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out_mu), mu)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out_lv), log_var)
    expected = 0.5 * closed_form_kl(mu, log_var).mean()
    assert len(layer.losses) == 1
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.losses[0]), expected, rtol=1e-6)


def test_kl_layer_rejects_negative_beta():
    with pytest.raises(ValueError, match="Received: beta=-1.0"):
        KLDivergence(beta=-1.0)


def test_sampling_has_requested_mean_and_spread():
    mu = np.full((20_000, 2), [3.0, -1.0], np.float32)
    log_var = np.full((20_000, 2), [np.log(0.25), 0.0], np.float32)
    z = keras.ops.convert_to_numpy(Sampling(seed=3)([mu, log_var]))
    np.testing.assert_allclose(z.mean(axis=0), [3.0, -1.0], atol=0.03)
    np.testing.assert_allclose(z.std(axis=0), [0.5, 1.0], atol=0.03)


def test_summed_bce_sums_over_pixels():
    y = np.zeros((2, 28, 28), np.float32)
    p = np.full((2, 28, 28), 0.5, np.float32)
    loss = keras.ops.convert_to_numpy(SummedBinaryCrossentropy()(y, p))
    np.testing.assert_allclose(loss, 784 * np.log(2.0), rtol=1e-5)


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_builders_shapes_and_names(architecture):
    spec = ModelSpec(architecture=architecture, latent_dim=3, hidden_units=(32, 16))
    x = np.random.default_rng(0).random((5, 28, 28)).astype(np.float32)
    enc = build_encoder(spec)
    assert enc.name == "ae_encoder" and enc(x).shape == (5, 3)
    venc = build_encoder(spec, variational=True)
    z_mean, z_log_var = venc(x)
    assert venc.name == "vae_encoder" and z_mean.shape == (5, 3) and z_log_var.shape == (5, 3)
    assert venc.output_names == ["z_mean", "z_log_var"]
    dec = build_decoder(spec)
    pixels = keras.ops.convert_to_numpy(dec(np.zeros((5, 3), np.float32)))
    assert pixels.shape == (5, 28, 28) and pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert build_autoencoder(spec)(x).shape == (5, 28, 28)
    denoiser = build_autoencoder(spec, name="denoiser", prefix="denoiser")
    assert denoiser.name == "denoiser" and denoiser(x).shape == (5, 28, 28)
    assert [m.name for m in denoiser.layers[1:]] == ["denoiser_encoder", "denoiser_decoder"]
    vae = build_vae(spec, seed=1)
    assert vae(x).shape == (5, 28, 28)
    assert submodel(vae, "vae_decoder").name == "vae_decoder"
    with pytest.raises(KeyError, match="no sub-model named 'nope'"):
        submodel(vae, "nope")


def test_model_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="Received: architecture='rnn'"):
        ModelSpec(architecture="rnn")
    with pytest.raises(ValueError, match="Received: latent_dim=0"):
        ModelSpec(latent_dim=0)


def _layer_classes(path) -> set[str]:
    with zipfile.ZipFile(path) as zf:
        text = zf.read("config.json").decode()
    return {part.split('"')[0] for part in text.split('"class_name": "')[1:]}


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_compiled_vae_round_trips_in_safe_mode(tmp_path, architecture):
    spec = ModelSpec(architecture=architecture, latent_dim=2, hidden_units=(32, 16), beta=0.7)
    vae = build_vae(spec, seed=5)
    vae.compile(optimizer="adam", loss=SummedBinaryCrossentropy())
    x = np.random.default_rng(1).random((8, 28, 28)).astype(np.float32)
    vae.fit(x, x, epochs=1, verbose=0)
    path = tmp_path / "vae.keras"
    vae.save(path)
    assert "Lambda" not in _layer_classes(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    kl_layer = loaded.get_layer("kl_divergence")
    assert isinstance(kl_layer, KLDivergence) and kl_layer.beta == 0.7
    assert isinstance(loaded.get_layer("sampling"), Sampling)
    assert isinstance(loaded.loss, SummedBinaryCrossentropy)
    for name in ("vae_encoder", "vae_decoder"):
        a, b = submodel(vae, name), submodel(loaded, name)
        inp = x if name == "vae_encoder" else np.ones((4, 2), np.float32)
        for got, want in zip(
            np.atleast_1d(b.predict(inp, verbose=0)),
            np.atleast_1d(a.predict(inp, verbose=0)),
            strict=True,
        ):
            np.testing.assert_allclose(got, want, atol=1e-6)
    # the reloaded model still trains with the KL in its loss
    loss = loaded.evaluate(x, x, verbose=0, return_dict=True)
    assert np.isfinite(loss["loss"]) and loss["kl"] >= 0
    json.loads(json.dumps(kl_layer.get_config()))  # config is plain JSON
