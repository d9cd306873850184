"""The export stage on the smoke run: ONNX files and names, the manifest, parity of the runtime
with the Keras models on real test digits, and a failed parity check that writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SMOKE_CONFIG, run_cli

from export.bundle import Bundle
from export.files import sha256_file, sha256_json
from pipeline.config import load_config
from pipeline.data import load_split

pytestmark = pytest.mark.slow

NAMES = {
    "ae_encoder": (["images"], ["z"]),
    "ae_decoder": (["z"], ["pixels"]),
    "vae_encoder": (["images"], ["z_mean", "z_log_var"]),
    "vae_decoder": (["z"], ["pixels"]),
    "compact_decoder": (["z"], ["pixels"]),
    "denoiser": (["images"], ["pixels"]),
    "detector_encoder": (["images"], ["z_mean", "z_log_var", "class_logits"]),
    "detector_decoder": (["z_class"], ["pixels"]),
    "background_encoder": (["images"], ["z_mean", "z_log_var"]),
    "background_decoder": (["z"], ["pixels"]),
}
SCORERS = {
    f"{kind}_scorer": (["images"], ["score", "anomaly"]) for kind in ("ae", "vae", "detector")
}


def test_onnx_models_have_readable_names_dynamic_batch_and_opset(smoke_run: Path):
    import onnx

    for role, (inputs, outputs) in {**NAMES, **SCORERS}.items():
        int8 = role in ("ae_decoder", "vae_decoder", "compact_decoder")  # the digits' decoders
        for suffix in (".onnx", ".int8.onnx") if int8 else (".onnx",):
            model = onnx.load(smoke_run / "export" / f"{role}{suffix}")
            onnx.checker.check_model(model)
            assert [i.name for i in model.graph.input] == inputs, role
            assert [o.name for o in model.graph.output] == outputs, role
            for value in (*model.graph.input, *model.graph.output):
                assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
            opsets = {op.domain: op.version for op in model.opset_import}
            assert opsets.get("", opsets.get("ai.onnx")) == 17


def test_manifest_records_files_thresholds_boxes_and_config(smoke_run: Path):
    export_dir = smoke_run / "export"
    manifest = json.loads((export_dir / "manifest.json").read_text())
    metrics = json.loads((smoke_run / "eval" / "metrics.json").read_text())
    boxes = json.loads((smoke_run / "eval" / "latent_boxes.json").read_text())
    cfg = load_config(SMOKE_CONFIG)
    assert manifest["format_version"] == 1 and manifest["latent_dim"] == cfg.model.latent_dim
    assert manifest["anomaly"]["fpr"] == cfg.evaluate.anomaly_fpr
    for kind in ("ae", "vae"):
        assert manifest["anomaly"][kind]["threshold"] == metrics[f"{kind}.anomaly_threshold"]
    assert manifest["latent_boxes"] == boxes
    assert manifest["config_fingerprint"] == sha256_json(cfg.to_dict())
    assert {"tensorflow", "tf2onnx", "onnxruntime", "numpy"} <= set(manifest["versions"])
    assert manifest["parity"]["samples"] == cfg.export.parity_samples
    assert set(manifest["parity"]["models"]) == set(NAMES)
    for result in manifest["parity"]["models"].values():
        assert result["worst_ratio_to_tolerance"] <= 1.0, result
    on_disk = {
        p.relative_to(export_dir).as_posix()
        for p in export_dir.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    assert set(manifest["files"]) == on_disk
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(export_dir / name)
        assert entry["bytes"] == (export_dir / name).stat().st_size
    for kind in ("ae", "vae"):
        for name in ("model", "encoder", "decoder"):
            copy = export_dir / "keras" / f"{kind}_{name}.keras"
            assert sha256_file(copy) == sha256_file(smoke_run / kind / f"{name}.keras")
    copy = export_dir / "keras" / "denoiser_model.keras"
    assert sha256_file(copy) == sha256_file(smoke_run / "denoiser" / "model.keras")
    assert manifest["models"]["denoiser"]["trained_on"]["sigma"] == cfg.denoiser.noise_sigma
    assert manifest["models"]["denoiser"]["outputs"][0]["shape"] == ["batch", 28, 28]
    for role, (inputs, outputs) in {**NAMES, **SCORERS}.items():
        entry = manifest["models"][role]
        assert [i["name"] for i in entry["inputs"]] == inputs
        assert [o["name"] for o in entry["outputs"]] == outputs
        assert entry["inputs"][0]["shape"][0] == "batch" and entry["opset"] == 17
    assert manifest["models"]["vae_encoder"]["inputs"][0]["shape"] == ["batch", 28, 28]
    record = json.loads((smoke_run / "stages" / "export.json").read_text())
    assert "export/manifest.json" in record["outputs"]
    assert "export/vae_decoder.int8.onnx" in record["outputs"]
    assert "export/vae_scorer.onnx" in record["outputs"]
    for kind in ("ae", "vae"):
        entry = manifest["models"][f"{kind}_scorer"]
        assert entry["threshold"] == metrics[f"{kind}.anomaly_threshold"]
        assert entry["fpr"] == cfg.evaluate.anomaly_fpr
        check = entry["check"]
        assert check["inputs"] == check["clean"] + check["noisy"] == 2 * cfg.export.parity_samples
        assert check["max_rel_diff"] <= check["rtol"] and check["anomaly_mismatches"] == 0
        assert 0 < check["flagged"] < check["inputs"]  # both values of the flag were checked


def test_scorers_join_the_exported_encoder_and_decoder(smoke_run: Path):
    """A scorer holds its encoder's and decoder's weights unchanged and computes in double."""
    import onnx
    from onnx import TensorProto, numpy_helper

    export_dir = smoke_run / "export"
    for kind in ("ae", "vae"):
        scorer = onnx.load(export_dir / f"{kind}_scorer.onnx")
        weights = {t.name: numpy_helper.to_array(t) for t in scorer.graph.initializer}
        for part in ("encoder", "decoder"):
            model = onnx.load(export_dir / f"{kind}_{part}.onnx")
            for tensor in model.graph.initializer:
                np.testing.assert_array_equal(
                    weights[f"{part}/{tensor.name}"], numpy_helper.to_array(tensor)
                )
        casts = [a.i for n in scorer.graph.node if n.op_type == "Cast" for a in n.attribute]
        assert TensorProto.DOUBLE in casts and casts[-1] == TensorProto.FLOAT
        assert [n.op_type for n in scorer.graph.node][-2:] == ["Cast", "Greater"]
        meta = {p.key: p.value for p in scorer.metadata_props}
        assert meta["role"] == f"{kind}_scorer" and meta["input_shape"] == "n,28,28"


def test_scorer_check_fails_when_the_scorer_disagrees(smoke_run: Path):
    """The stage's check refuses a scorer whose flags or scores differ from export.scoring."""
    from pipeline.conversion import ExportError, OnnxModel
    from pipeline.scorers import check_scorer

    export_dir = smoke_run / "export"
    images, _ = load_split(smoke_run / "data" / "mnist.npz", "test")
    manifest = json.loads((export_dir / "manifest.json").read_text())
    opened = {
        role: OnnxModel.open(export_dir / f"{role}.onnx")
        for role in ("vae_encoder", "vae_decoder", "ae_decoder", "vae_scorer")
    }
    threshold = manifest["anomaly"]["vae"]["threshold"]
    args = (opened["vae_scorer"], opened["vae_encoder"])
    record = check_scorer("vae", *args, opened["vae_decoder"], images, threshold)
    assert record["anomaly_mismatches"] == 0 and record["max_rel_diff"] <= record["rtol"]
    scores = np.sort(opened["vae_scorer"].run(images)[0])
    lower = float(scores[len(scores) // 2])  # the scorer flags fewer than half of these
    with pytest.raises(ExportError, match=r"vae_scorer: the scorer differs from export\.scoring"):
        check_scorer("vae", *args, opened["vae_decoder"], images, lower)
    with pytest.raises(ExportError, match=r"max relative score difference .* anomaly flags"):
        check_scorer("vae", *args, opened["ae_decoder"], images, threshold)


def test_runtime_matches_keras_on_test_digits(smoke_run: Path):
    from pipeline.common import Paths, load_denoiser, load_models
    from pipeline.evaluate import reconstruct
    from pipeline.measures import add_noise

    models = load_models(Paths(smoke_run))
    images, _ = load_split(smoke_run / "data" / "mnist.npz", "test")
    bundle = Bundle.load(smoke_run / "export")
    for kind in ("ae", "vae"):
        keras_out = reconstruct(models, kind, images)
        np.testing.assert_allclose(bundle.encode(images, kind), keras_out.z, atol=1e-5, rtol=1e-6)
        np.testing.assert_allclose(
            bundle.reconstruct(images, kind),
            keras_out.pixels,
            atol=1e-5,
            rtol=1e-6,
            err_msg=kind,
        )
        np.testing.assert_allclose(bundle.score(images, kind), keras_out.scores, rtol=1e-4)
        z = np.random.default_rng(0).standard_normal((64, bundle.latent_dim)).astype(np.float32)
        expected = models[f"{kind}_decoder"].predict(z, verbose=0)
        np.testing.assert_allclose(bundle.generate(z, kind), expected, atol=1e-5, rtol=1e-6)
    # the compact decoder (distilled from the VAE's) matches its own Keras model, and is close
    # to the VAE decoder it learned from
    z = np.random.default_rng(1).standard_normal((64, bundle.latent_dim)).astype(np.float32)
    expected = models["compact_decoder"].predict(z, verbose=0)
    compact = bundle.generate(z, "vae", decoder="compact")
    np.testing.assert_allclose(compact, expected, atol=1e-5, rtol=1e-6)
    assert bundle.manifest["parity"]["models"]["compact_decoder"]["max_abs_diff"] <= 1e-5
    with pytest.raises(ValueError, match="decodes the VAE's latents"):
        bundle.generate(z, "ae", decoder="compact")
    z_mean, z_log_var = bundle.posterior(images)
    keras_mean, keras_log_var = models["vae_encoder"].predict(images, verbose=0)
    np.testing.assert_allclose(z_log_var, keras_log_var, atol=1e-5, rtol=1e-6)
    noisy = add_noise(images, 0.3, seed=0)
    expected = load_denoiser(Paths(smoke_run)).predict(noisy, verbose=0)
    np.testing.assert_allclose(bundle.denoise(noisy), expected, atol=1e-5, rtol=1e-6)


def test_rerun_skips_and_failed_parity_writes_nothing(smoke_run: Path, tmp_path: Path):
    out = Path(shutil.copytree(smoke_run, tmp_path / "run"))
    base = ["--config", str(SMOKE_CONFIG), "--out", str(out), "--stages", "export"]
    assert "[export] up to date" in run_cli(base).stdout
    before = {p: sha256_file(p) for p in (out / "export").rglob("*") if p.is_file()}
    strict = ["--set", "export.parity_atol=1e-12", "--set", "export.parity_rtol=0"]
    proc = run_cli([*base, *strict], check=False)
    assert proc.returncode == 1
    assert "ONNX Runtime differs from Keras by" in proc.stderr
    assert "beyond export.parity_atol = 1e-12 + parity_rtol = 0 x max|Keras|; nothing written" in (
        proc.stderr
    )
    after = {p: sha256_file(p) for p in (out / "export").rglob("*") if p.is_file()}
    assert after == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".export.")]
    info = json.loads((out / "run.json").read_text())
    assert info["stages"]["export"]["status"] == "failed"
