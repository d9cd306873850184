"""`python -m export edge` on the smoke bundle: ORT-format files that give the ONNX files' outputs,
the operator list of a reduced build, README.md, and the folder read as a bundle; without the
`onnx` package (the `edge` extra), one clear error line.

The conversion tests need the edge extra (in .venv it comes with the train extra); the runtime-only
environment has no onnx, so there only the missing-extra test runs, for real.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import run_export_cli as cli  # tests/ is on sys.path (rootdir conftest)

from export.bundle import Bundle
from export.files import sha256_file

HAS_ONNX = importlib.util.find_spec("onnx") is not None
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="the edge extra (onnx) is not installed")


@pytest.fixture(scope="module")
def edge_dir(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAS_ONNX:
        pytest.skip("the edge extra (onnx) is not installed")
    out = tmp_path_factory.mktemp("edge") / "edge"
    proc = cli(["edge", "--bundle", str(bundle_dir), "--out", str(out)], out.parent)
    assert proc.stdout.startswith(f"wrote {out}:")
    return out


def inputs_for(role: str, bundle: Bundle, digits: np.ndarray) -> np.ndarray:
    """Test digits for an image model; their latents and prior draws for a decoder."""
    if "_decoder" in role:
        model = role.split("_")[0]
        return np.concatenate([bundle.encode(digits, model), bundle.prior_latents(64, seed=5)])
    return digits


@needs_onnx
def test_every_model_has_an_ort_file_with_the_onnx_outputs(
    edge_dir: Path, bundle_dir: Path, export_run: Path
):
    bundle = Bundle.load(bundle_dir)
    edge = json.loads((edge_dir / "manifest.json").read_text())
    assert set(edge["models"]) == set(bundle.manifest["models"])
    with np.load(export_run / "data" / "mnist.npz", allow_pickle=False) as npz:
        digits = npz["test_images"][:128].astype(np.float32) / np.float32(255.0)
    for role, entry in edge["models"].items():
        source = bundle.manifest["models"][role]
        assert entry["file"] == source["file"].removesuffix(".onnx") + ".ort"
        assert entry["source"]["sha256"] == sha256_file(bundle_dir / source["file"])
        assert entry["inputs"] == source["inputs"] and entry["outputs"] == source["outputs"]
        a = ort.InferenceSession(
            str(bundle_dir / source["file"]), providers=["CPUExecutionProvider"]
        )
        b = ort.InferenceSession(str(edge_dir / entry["file"]), providers=["CPUExecutionProvider"])
        assert [o.name for o in b.get_outputs()] == [o.name for o in a.get_outputs()]
        x = inputs_for(role, bundle, digits)
        feed = {a.get_inputs()[0].name: x}
        for u, v in zip(a.run(None, feed), b.run(None, feed), strict=True):
            assert u.shape == v.shape and u.dtype == v.dtype, role
            if entry["ort"]["optimization"] == "all":  # the same optimized graph, the same kernels
                np.testing.assert_array_equal(v, u, err_msg=role)
            else:  # the unoptimized graph: the same weights, unfused kernels
                np.testing.assert_allclose(v, u, rtol=0, atol=1e-6, err_msg=role)
        assert edge["edge"]["check"]["max_abs_diff"][role] <= 1e-5


@needs_onnx
def test_int8_ort_files_keep_their_8_bit_weights(edge_dir: Path, bundle_dir: Path):
    edge = json.loads((edge_dir / "manifest.json").read_text())
    for kind in ("ae", "vae"):
        int8, fp32 = edge["models"][f"{kind}_decoder_int8"], edge["models"][f"{kind}_decoder"]
        sizes = {e["file"]: edge["files"][e["file"]]["bytes"] for e in (int8, fp32)}
        assert sizes[int8["file"]] < 0.5 * sizes[fp32["file"]]
        # the weights as stored in the .onnx, plus the ORT format's own few kilobytes
        assert sizes[int8["file"]] - int8["source"]["bytes"] < 16_384


@needs_onnx
def test_required_operators_config_names_the_operators(edge_dir: Path, bundle_dir: Path):
    import onnx

    edge = json.loads((edge_dir / "manifest.json").read_text())
    text = (edge_dir / "required_operators.config").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == edge["edge"]["operators"]
    ops: dict[str, set[str]] = {}
    for line in lines:
        domain, opset, names = line.split(";")
        assert re.fullmatch(r"ai\.onnx|com\.microsoft", domain) and opset.isdigit(), line
        ops.setdefault(domain, set()).update(names.split(","))
    assert {"Sigmoid", "Reshape"} <= ops["ai.onnx"]
    # the models converted without optimizations contribute their own operators unchanged
    for entry in edge["models"].values():
        assert f"# - {entry['file']}" in text.splitlines()
        if entry["ort"]["optimization"] == "disable":
            graph = onnx.load(bundle_dir / entry["source"]["file"]).graph
            assert {n.op_type for n in graph.node} <= ops["ai.onnx"]


@needs_onnx
def test_edge_folder_reads_as_a_bundle_and_describes_itself(
    edge_dir: Path, bundle_dir: Path, export_run: Path
):
    with np.load(export_run / "data" / "mnist.npz", allow_pickle=False) as npz:
        digits = npz["test_images"][:64]
    for precision in ("fp32", "int8"):
        onnx_bundle = Bundle.load(bundle_dir, precision)
        ort_bundle = Bundle.load(edge_dir, precision)  # verifies every sha256 of the folder
        z = onnx_bundle.prior_latents(32, seed=1)
        for model in ("ae", "vae"):
            np.testing.assert_allclose(
                ort_bundle.generate(z, model), onnx_bundle.generate(z, model), atol=1e-6
            )
            np.testing.assert_allclose(
                ort_bundle.score(digits, model), onnx_bundle.score(digits, model), rtol=1e-6
            )
    edge = json.loads((edge_dir / "manifest.json").read_text())
    assert set(edge["files"]) == {p.name for p in edge_dir.iterdir()} - {"manifest.json"}
    assert edge["edge"]["bundle_manifest_sha256"] == sha256_file(bundle_dir / "manifest.json")
    readme = (edge_dir / "README.md").read_text()
    for role, entry in edge["models"].items():
        row = next(line for line in readme.splitlines() if line.startswith(f"| {role} |"))
        assert f"`{entry['file']}`" in row and f"{edge['files'][entry['file']]['bytes']:,}" in row
    for name in ("images", "z", "pixels", "required_operators.config", "--include_ops_by_config"):
        assert name in readme


@needs_onnx
def test_existing_folder_is_kept_unless_forced(edge_dir: Path, bundle_dir: Path):
    before = sha256_file(edge_dir / "manifest.json")
    proc = cli(["edge", "--bundle", str(bundle_dir), "--out", str(edge_dir)], edge_dir, check=False)
    assert proc.returncode == 2 and "exists and is not an empty folder" in proc.stderr
    assert sha256_file(edge_dir / "manifest.json") == before
    cli(["edge", "--bundle", str(bundle_dir), "--out", str(edge_dir), "--force"], edge_dir)
    Bundle.load(edge_dir)
    assert not list(edge_dir.parent.glob(".*"))  # no temporaries left beside it


def test_without_onnx_the_command_names_the_extra(bundle_dir: Path, tmp_path: Path):
    """One line naming the extra, exit status 2, nothing written."""
    out = tmp_path / "edge"
    args = ["edge", "--bundle", str(bundle_dir), "--out", str(out)]
    if HAS_ONNX:  # hide it, as an environment without the extra would
        code = (
            "import sys; sys.modules['onnx'] = None; from export.__main__ import main; "
            f"sys.exit(main({args!r}))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
    else:
        proc = cli(args, tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "onnx" in proc.stderr and "pip install 'mnist-vae[edge]'" in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
