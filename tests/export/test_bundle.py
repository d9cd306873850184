"""export.Bundle on a smoke bundle and real test digits, without TensorFlow: checksums, shapes,
scores against the evaluate stage's numbers, int8 drift within the recorded bound."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export import scoring
from export.bundle import Bundle, BundleError


@pytest.fixture(scope="module")
def metrics(export_run: Path) -> dict[str, float]:
    return json.loads((export_run / "eval" / "metrics.json").read_text())


def _copy_bundle(export_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(export_run / "export", tmp_path / "bundle"))


def test_runtime_imports_no_training_library():
    code = (
        "import sys, export, export.bundle, export.inputs, export.images, export.scoring, "
        "export.metrics, export.__main__\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tf2onnx', 'onnx')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_shapes_and_ranges(bundle: Bundle, test_digits: np.ndarray):
    d = bundle.latent_dim
    z = np.random.default_rng(1).standard_normal((5, d))
    for model in ("ae", "vae"):
        pixels = bundle.generate(z, model)
        assert pixels.shape == (5, 28, 28) and pixels.dtype == np.float32
        assert pixels.min() >= 0.0 and pixels.max() <= 1.0
        assert bundle.encode(test_digits[:7], model).shape == (7, d)
        assert bundle.reconstruct(test_digits[:7], model).shape == (7, 28, 28)
        assert bundle.score(test_digits[:7], model).shape == (7,)
    assert bundle.generate(z[0]).shape == (1, 28, 28)  # one latent vector
    with pytest.raises(ValueError, match=rf"z has shape \(5, {d + 1}\), expected \(n, {d}\)"):
        bundle.generate(np.zeros((5, d + 1)))
    with pytest.raises(ValueError, match="model must be one of"):
        bundle.encode(test_digits[:2], "gan")


def test_batch_axis_is_dynamic(bundle: Bundle, test_digits: np.ndarray):
    together = bundle.encode(test_digits[:33], "vae")
    apart = np.concatenate([bundle.encode(test_digits[i : i + 1], "vae") for i in range(33)])
    np.testing.assert_allclose(together, apart, atol=1e-5)


def test_sample_is_seeded_and_grid_spans_the_manifest_box(bundle: Bundle):
    np.testing.assert_array_equal(bundle.sample(6, seed=3), bundle.sample(6, seed=3))
    assert not np.array_equal(bundle.sample(6, seed=3), bundle.sample(6, seed=4))
    for model in ("ae", "vae"):
        box = bundle.manifest["latent_boxes"][model]
        z = bundle.grid_latents(4, model)
        assert z.shape == (16, bundle.latent_dim)
        np.testing.assert_allclose(z[0, :2], [box["low"][0], box["high"][1]], rtol=1e-6)
        np.testing.assert_allclose(z[-1, :2], [box["high"][0], box["low"][1]], rtol=1e-6)
        np.testing.assert_allclose(bundle.grid(4, model), bundle.generate(z, model))


def test_uint8_input_is_scaled(bundle: Bundle, test_digits: np.ndarray):
    as_float = test_digits[:20].astype(np.float32) / 255.0
    np.testing.assert_array_equal(bundle.score(test_digits[:20]), bundle.score(as_float))
    np.testing.assert_array_equal(
        bundle.encode(test_digits[:20].reshape(20, 784), "ae"), bundle.encode(as_float, "ae")
    )


def test_scores_follow_export_scoring(bundle: Bundle, test_digits: np.ndarray):
    images = test_digits[:50].astype(np.float32) / 255.0
    z_mean, z_log_var = bundle.posterior(images)
    expected = scoring.negative_elbo(images, bundle.generate(z_mean), z_mean, z_log_var)
    np.testing.assert_allclose(bundle.score(images, "vae"), expected, rtol=1e-6)
    mse = scoring.reconstruction_mse(images, bundle.reconstruct(images, "ae"))
    np.testing.assert_allclose(bundle.score(images, "ae"), mse, rtol=1e-6)
    for model in ("ae", "vae"):
        flags = bundle.is_anomaly(images, model)
        np.testing.assert_array_equal(flags, bundle.score(images, model) > bundle.threshold(model))


def test_scores_reproduce_the_evaluate_stage(
    bundle: Bundle, test_digits: np.ndarray, metrics: dict[str, float]
):
    """The evaluate stage scored the same test digits with Keras: same mean error, same FPR."""
    for model in ("ae", "vae"):
        assert bundle.threshold(model) == metrics[f"{model}.anomaly_threshold"]
        fpr = float(np.mean(bundle.is_anomaly(test_digits, model)))
        assert fpr == pytest.approx(metrics[f"{model}.test_fpr"], abs=1.0 / len(test_digits))
    recon = scoring.reconstruction_mse(test_digits / 255.0, bundle.reconstruct(test_digits, "ae"))
    assert float(recon.mean()) == pytest.approx(metrics["ae.recon_mse"], rel=1e-4)


def test_int8_decoders_drift_within_the_recorded_bound(
    export_run: Path, bundle: Bundle, test_digits: np.ndarray
):
    int8 = Bundle.load(export_run / "export", precision="int8")
    models = bundle.manifest["models"]
    files = bundle.manifest["files"]
    for model in ("ae", "vae"):
        entry = models[f"{model}_decoder_int8"]
        assert entry["precision"] == "int8"
        assert files[entry["file"]]["bytes"] < files[models[f"{model}_decoder"]["file"]]["bytes"]
        # the latents the stage measured on: the encoded test digits and seeded prior draws
        bound = entry["drift_vs_fp32"]
        prior = np.random.default_rng(bound["seed"]).standard_normal(
            (bound["prior_draws"], bundle.latent_dim)
        )
        z = np.concatenate([bundle.encode(test_digits[: bound["test_digits"]], model), prior])
        drift = np.abs(int8.generate(z, model) - bundle.generate(z, model))
        assert 0.0 < drift.max() <= bound["max_abs"] + 1e-6
        assert drift.mean() <= bound["mean_abs"] + 1e-6
        assert bound["mean_abs"] < 0.02  # about 5 of 255 grey levels on average, at most
        one_by_one = max(
            float(np.abs(int8.generate(z[i], model) - bundle.generate(z[i], model)).max())
            for i in range(0, len(z), 7)
        )
        assert one_by_one <= bound["max_abs_one_at_a_time"] + 1e-6
        # encoders stay fp32: the same latents either way
        np.testing.assert_array_equal(
            int8.encode(test_digits[:10], model), bundle.encode(test_digits[:10], model)
        )


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """The file names of the ONNX Runtime sessions created while the test runs, in order."""
    names: list[str] = []
    real = ort.InferenceSession

    def counting(path, *args, **kwargs):
        names.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", counting)
    return names


def test_sessions_open_on_first_use_and_once(
    export_run: Path, test_digits: np.ndarray, opened: list[str]
):
    """Loading opens no ONNX Runtime session; each model's opens when first used (the default
    score: the detector's four only), and never again."""
    loaded = Bundle.load(export_run / "export")
    assert opened == []
    files = loaded.manifest["models"]

    def names(*roles: str) -> list[str]:
        return sorted(files[role]["file"] for role in roles)

    loaded.score(test_digits[:5])
    assert sorted(opened) == names(
        "detector_encoder", "detector_decoder", "background_encoder", "background_decoder"
    )
    loaded.score(test_digits[:5], "vae")
    loaded.score(test_digits[:5], "ae")
    loaded.sample(3)
    loaded.sample(3, decoder="compact")
    loaded.denoise(test_digits[:5])
    loaded.score(test_digits[:5])
    loaded.sample(3)
    assert sorted(opened) == names(
        "ae_encoder", "ae_decoder", "vae_encoder", "vae_decoder", "compact_decoder",
        "denoiser", "detector_encoder", "detector_decoder", "background_encoder",
        "background_decoder",
    )  # fmt: skip


def test_int8_bundle_opens_int8_decoders(export_run: Path, opened: list[str]):
    int8 = Bundle.load(export_run / "export", precision="int8")
    int8.sample(2)
    int8.sample(2, decoder="compact")
    files = int8.manifest["models"]
    assert opened == [files["vae_decoder_int8"]["file"], files["compact_decoder_int8"]["file"]]


def test_tampered_model_is_refused_naming_the_file(export_run: Path, tmp_path: Path):
    folder = _copy_bundle(export_run, tmp_path)
    target = folder / "vae_decoder.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the weights: still a loadable model
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"vae_decoder\.onnx: sha256 does not match"):
        Bundle.load(folder)


def test_missing_file_manifest_and_format_are_reported(export_run: Path, tmp_path: Path):
    folder = _copy_bundle(export_run, tmp_path)
    shutil.rmtree(folder / "keras")  # a device copy without the Keras models still loads
    np.testing.assert_array_equal(
        Bundle.load(folder).sample(2, 0), Bundle.load(export_run / "export").sample(2, 0)
    )
    (folder / "ae_encoder.onnx").unlink()
    with pytest.raises(BundleError, match=r"ae_encoder\.onnx: missing"):
        Bundle.load(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 99
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format_version 99, this runtime reads 1"):
        Bundle.load(folder)
    with pytest.raises(BundleError, match=r"manifest\.json: missing"):
        Bundle.load(tmp_path)
    with pytest.raises(BundleError, match="precision must be one of"):
        Bundle.load(export_run / "export", precision="fp16")
