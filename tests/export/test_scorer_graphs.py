"""The bundle's anomaly scorer graphs and the metadata of its ONNX files, read with onnxruntime
alone (no TensorFlow, no onnx package): a bare session on ``ae_scorer.onnx`` or
``vae_scorer.onnx`` gives ``Bundle.score``'s number and ``Bundle.is_anomaly``'s flag."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import REPO, run_export_cli  # tests/ is on sys.path (rootdir conftest)

from export.bundle import Bundle
from export.inputs import as_images

KINDS = ("ae", "vae")
SCORED = ("detector", *KINDS)  # the detector's graph is the default score's
RTOL = 1e-4  # the scorer's score against Bundle.score, relative


@pytest.fixture(scope="module")
def corrupted(test_digits: np.ndarray) -> np.ndarray:
    """Damaged copies of the test digits: clipped noise, inverted, pixels shuffled, blanked."""
    digits = as_images(test_digits)
    rng = np.random.default_rng(7)
    x = digits[:64]
    noisy = np.clip(x + rng.normal(0.0, 0.4, x.shape), 0.0, 1.0)
    shuffled = rng.permuted(x.reshape(len(x), -1), axis=1).reshape(x.shape)
    half = x.copy()
    half[:, 14:] = 0.0
    parts = [noisy, 1.0 - x, shuffled, half, np.zeros_like(x[:4]), np.ones_like(x[:4])]
    return np.concatenate(parts).astype(np.float32)


def _session(bundle: Bundle, kind: str) -> ort.InferenceSession:
    path = bundle.directory / bundle.manifest["models"][f"{kind}_scorer"]["file"]
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _metadata(path: Path) -> dict[str, str]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.get_modelmeta().custom_metadata_map


@pytest.mark.parametrize("kind", SCORED)
def test_scorer_gives_bundle_score_and_flags(
    bundle: Bundle, test_digits: np.ndarray, corrupted: np.ndarray, kind: str
):
    digits = as_images(test_digits)
    session = _session(bundle, kind)
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [(o.name, o.type) for o in session.get_outputs()] == [
        ("score", "tensor(float)"),
        ("anomaly", "tensor(bool)"),
    ]
    flags = []
    for images in (digits, corrupted):
        score, anomaly = session.run(None, {"images": images})
        expected = bundle.score(images, kind)
        assert score.shape == expected.shape and score.dtype == np.float32
        assert anomaly.dtype == np.bool_
        np.testing.assert_allclose(score, expected, rtol=RTOL, atol=0)
        np.testing.assert_array_equal(anomaly, bundle.is_anomaly(images, kind))
        flags.append(anomaly)
    clean, damaged = flags
    assert clean.mean() < 0.1  # the threshold lets about anomaly.fpr of clean digits through
    assert damaged.any() and not damaged.all()  # both values of the flag occur
    assert damaged.mean() > clean.mean()


@pytest.mark.parametrize("kind", SCORED)
def test_scorer_batch_axis_is_dynamic(bundle: Bundle, test_digits: np.ndarray, kind: str):
    digits = as_images(test_digits)
    session = _session(bundle, kind)
    together = session.run(["score"], {"images": digits[:33]})[0]
    apart = np.concatenate([session.run(["score"], {"images": d[None]})[0] for d in digits[:33]])
    np.testing.assert_allclose(together, apart, rtol=1e-5)
    assert session.run(["score"], {"images": digits[:0]})[0].shape == (0,)


def test_every_onnx_file_describes_itself(bundle: Bundle, export_run: Path):
    manifest = bundle.manifest
    roles = {entry["file"]: role for role, entry in manifest["models"].items()}
    files = sorted(p.name for p in bundle.directory.glob("*.onnx"))
    assert files == sorted(roles)  # every ONNX file of the bundle is a listed model
    assert {"ae_scorer", "vae_scorer"} <= set(manifest["models"])
    dims = {
        "denoiser": json.loads((export_run / "denoiser" / "summary.json").read_text())[
            "latent_dim"
        ],
        # the detector's latent: its decoder reads [z, the one-hot of 10 classes]
        "detector": manifest["models"]["detector_decoder"]["inputs"][0]["shape"][-1] - 10,
        "background": manifest["models"]["background_decoder"]["inputs"][0]["shape"][-1],
    }
    for name in files:
        role, entry = roles[name], manifest["models"][roles[name]]
        meta = _metadata(bundle.directory / name)
        assert meta["role"] == role and meta["precision"] == entry["precision"], name
        expected_dim = dims.get(role.split("_")[0], manifest["latent_dim"])
        assert int(meta["latent_dim"]) == expected_dim, name
        assert int(meta["bundle_format_version"]) == manifest["format_version"]
        shape = ",".join("n" if d == "batch" else str(d) for d in entry["inputs"][0]["shape"])
        assert meta["input"] == entry["inputs"][0]["name"] and meta["input_shape"] == shape
        if meta["input"] == "images":
            assert meta["input_shape"] == "n,28,28"
            assert meta["input_scaling"] == "float32 in [0, 1]; uint8 / 255"
        elif meta["input"] == "z_class":
            assert meta["input_shape"] == f"n,{dims['detector'] + 10}"
        else:
            assert (
                meta["input_shape"] == f"n,{dims.get(role.split('_')[0], manifest['latent_dim'])}"
            )
        assert meta["input_scaling"]
    for kind in KINDS:
        meta = _metadata(bundle.directory / manifest["models"][f"{kind}_scorer"]["file"])
        anomaly = manifest["anomaly"]
        assert float(meta["threshold"]) == anomaly[kind]["threshold"] == bundle.threshold(kind)
        assert float(meta["fpr"]) == anomaly["fpr"]
        assert meta["score"].startswith(f"{anomaly[kind]['score']}:")
        assert meta["outputs"] == "score (n) float32; anomaly (n) bool"


def test_manifest_lists_the_scorers(bundle: Bundle):
    manifest = bundle.manifest
    for kind in KINDS:
        entry = manifest["models"][f"{kind}_scorer"]
        assert entry["file"] == f"{kind}_scorer.onnx" and entry["file"] in manifest["files"]
        assert entry["precision"] == "fp32" and entry["opset"] == 17
        assert entry["inputs"] == [
            {"name": "images", "shape": ["batch", 28, 28], "dtype": "float32"}
        ]
        assert entry["outputs"] == [
            {"name": "score", "shape": ["batch"], "dtype": "float32"},
            {"name": "anomaly", "shape": ["batch"], "dtype": "bool"},
        ]
        assert entry["threshold"] == manifest["anomaly"][kind]["threshold"]
        assert entry["score"] == manifest["anomaly"][kind]["score"]
        assert entry["check"]["max_rel_diff"] <= entry["check"]["rtol"]
        assert entry["check"]["anomaly_mismatches"] == 0


def test_bundle_without_scorers_still_loads(
    bundle: Bundle, test_digits: np.ndarray, tmp_path: Path
):
    """A bundle exported before the scorers and the detector existed loads and scores as before,
    its default score the VAE's."""
    digits = as_images(test_digits)
    folder = Path(shutil.copytree(bundle.directory, tmp_path / "bundle"))
    manifest = json.loads((folder / "manifest.json").read_text())
    detector = ["detector_scorer", "detector_encoder", "detector_decoder", "background_encoder",
                "background_decoder"]  # fmt: skip
    for role in [f"{kind}_scorer" for kind in KINDS] + detector:
        name = manifest["models"].pop(role)["file"]
        del manifest["files"][name]
        (folder / name).unlink()
    del manifest["anomaly"]["detector"], manifest["anomaly"]["default"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    older = Bundle.load(folder)
    assert older.default_model == "vae" and older.scoring_models == ("ae", "vae")
    np.testing.assert_array_equal(older.score(digits), bundle.score(digits, "vae"))
    with pytest.raises(ValueError, match="model must be one of"):
        older.score(digits, "detector")
    for kind in KINDS:
        np.testing.assert_array_equal(older.score(digits, kind), bundle.score(digits, kind))
    info = run_export_cli(["info", "--bundle", str(folder)], tmp_path).stdout
    listed = [line.split()[0] for line in info.splitlines() if line.startswith("  ")]
    assert "vae_encoder" in listed and not [role for role in listed if "scorer" in role]


def test_info_lists_the_scorers(bundle: Bundle, tmp_path: Path):
    out = run_export_cli(["info", "--bundle", str(bundle.directory)], tmp_path).stdout
    for kind in KINDS:
        size = bundle.manifest["files"][f"{kind}_scorer.onnx"]["bytes"]
        line = next(x for x in out.splitlines() if x.strip().startswith(f"{kind}_scorer "))
        assert f"{size:,} B" in line
        assert "images('batch', 28, 28) -> score('batch',), anomaly('batch',)" in line


def test_docs_scorer_example_runs_as_written(
    export_run: Path, test_digits: np.ndarray, tmp_path: Path
):
    """The Python example of "Anomaly scores in one ONNX graph" (docs/bundle-and-export.md),
    on the smoke bundle."""
    page = (REPO / "docs" / "bundle-and-export.md").read_text()
    section = page.split("## Anomaly scores in one ONNX graph", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "import export" not in code and "from export" not in code  # onnxruntime alone
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "export").symlink_to(export_run / "export")
    np.save(tmp_path / "digits.npy", test_digits)
    (tmp_path / "example.py").write_text(code)
    proc = subprocess.run(
        [sys.executable, "-P", "example.py"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    flagged = float(np.mean(Bundle.load(export_run / "export").is_anomaly(test_digits, "vae")))
    assert proc.stdout.startswith("negative_elbo: ")
    assert proc.stdout.rstrip().endswith(f": {flagged:.2%} flagged")
