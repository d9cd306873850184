"""`python -m export edge` on the smoke bundle: ORT-format files that give the ONNX files' outputs,
each at the optimization level its measured latency chose, the operator list of a reduced build,
README.md, and the folder read as a bundle; the bundle's int8 decoders multiply in int8, in
their .onnx and .ort files; without the `onnx` package (the `edge` extra), one clear error line.

The edge extra is installed in every test environment; the missing-extra test hides it.
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
# the operators that multiply integers: what an int8 decoder must run on, in its file or once
# ONNX Runtime has fused its QDQ pairs (not DequantizeLinear + a float MatMul)
INTEGER_MATMULS = {
    "MatMulNBits", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul", "QGemm",
    "MatMulIntegerToFloat", "ConvInteger", "QLinearConv",
}  # fmt: skip


@pytest.fixture(scope="module")
def edge_dir(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAS_ONNX:
        pytest.fail("the edge extra (onnx) is missing: pip install '.[edge]'")
    out = tmp_path_factory.mktemp("edge") / "edge"
    proc = cli(["edge", "--bundle", str(bundle_dir), "--out", str(out)], out.parent)
    assert proc.stdout.startswith(f"wrote {out}:")
    return out


def inputs_for(
    role: str, session: ort.InferenceSession, bundle: Bundle, digits: np.ndarray
) -> np.ndarray:
    """Test digits for an image model; their latents and prior draws for a decoder of the
    bundle's latent; seeded draws for the detector's decoders (``export.edge.sample_inputs``)."""
    from export.edge import sample_inputs

    if role in (
        "ae_decoder",
        "ae_decoder_int8",
        "vae_decoder",
        "vae_decoder_int8",
    ) or role.startswith("compact"):
        model = "ae" if role.startswith("ae_") else "vae"  # the compact decoder reads the VAE's
        return np.concatenate([bundle.encode(digits, model), bundle.prior_latents(64, seed=5)])
    if session.get_inputs()[0].name != "images":
        return sample_inputs(session, bundle.latent_dim, 64)
    return digits


def test_every_model_has_an_ort_file_with_the_onnx_outputs(
    edge_dir: Path, bundle_dir: Path, test_digits: np.ndarray
):
    bundle = Bundle.load(bundle_dir)
    edge = json.loads((edge_dir / "manifest.json").read_text())
    assert set(edge["models"]) == set(bundle.manifest["models"])
    digits = test_digits[:128].astype(np.float32) / np.float32(255.0)
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
        x = inputs_for(role, a, bundle, digits)
        feed = {a.get_inputs()[0].name: x}
        for u, v in zip(a.run(None, feed), b.run(None, feed), strict=True):
            assert u.shape == v.shape and u.dtype == v.dtype, role
            # another optimization level may fuse kernels differently: float32 rounding apart
            np.testing.assert_allclose(v, u, rtol=0, atol=1e-6, err_msg=role)
        assert edge["edge"]["check"]["max_abs_diff"][role] <= 1e-5


def test_every_ort_file_is_at_the_level_its_timing_chose(edge_dir: Path):
    from export.edge import LEVELS, SLOWER_THAN_ONNX, choose_level

    edge = json.loads((edge_dir / "manifest.json").read_text())
    assert str(int(round(100 * (SLOWER_THAN_ONNX - 1)))) + "%" in edge["edge"]["optimization_rule"]
    for role, entry in edge["models"].items():
        record = entry["ort"]
        assert set(record["levels"]) == set(LEVELS)
        assert all(m["p50_us"] > 0 and m["bytes"] > 0 for m in record["levels"].values())
        assert record["optimization"] == choose_level(record["onnx_p50_us"], record["levels"])
        chosen = record["levels"][record["optimization"]]
        assert edge["files"][entry["file"]]["bytes"] == chosen["bytes"], role
        assert record["ratio_to_onnx"] == pytest.approx(
            chosen["p50_us"] / record["onnx_p50_us"], abs=1e-3
        )
    readme = (edge_dir / "README.md").read_text()
    assert "| model | level | .ort p50 us | .onnx p50 us |" in readme


def test_the_rule_keeps_the_smallest_file_that_is_not_slower():
    from export.edge import choose_level

    levels = {
        "disable": {"p50_us": 40.0, "bytes": 80},
        "basic": {"p50_us": 10.5, "bytes": 300},
        "extended": {"p50_us": 10.0, "bytes": 290},
    }
    assert choose_level(10.0, levels) == "extended"  # disable is 4x slower: out
    assert choose_level(38.0, levels) == "disable"  # within 10% and the smallest
    levels["extended"]["bytes"] = 300
    assert choose_level(10.0, levels) == "extended"  # equal sizes: the faster
    assert choose_level(5.0, levels) == "extended"  # none within 10%: the fastest


def test_int8_decoders_multiply_in_int8(bundle_dir: Path, edge_dir: Path, tmp_path: Path):
    import onnx

    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    edge = json.loads((edge_dir / "manifest.json").read_text())
    int8 = [role for role in manifest["models"] if role.endswith("_int8")]
    assert sorted(int8) == ["ae_decoder_int8", "compact_decoder_int8", "vae_decoder_int8"]
    for role in int8:
        path = bundle_dir / manifest["models"][role]["file"]
        # what ONNX Runtime runs: the graph after its optimizations (QDQ pairs fused)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(tmp_path / f"{role}.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        nodes = [n.op_type for n in onnx.load(tmp_path / f"{role}.onnx").graph.node]
        integer = [op for op in nodes if op in INTEGER_MATMULS]
        floats = [op for op in nodes if op in ("MatMul", "Gemm", "FusedGemm", "FusedMatMul")]
        # every layer multiplies integers but the first one or two (kept float32 by design)
        assert len(integer) >= 2 and len(floats) <= 2, (role, nodes)
        method = manifest["models"][role]["quantization_choice"]["method"]
        assert not method.startswith("weight_only"), role
    ort_ops = ";".join(edge["edge"]["operators"])
    assert INTEGER_MATMULS & set(re.split(r"[;,]", ort_ops))


def test_int8_ort_files_keep_their_8_bit_weights(edge_dir: Path, bundle_dir: Path):
    edge = json.loads((edge_dir / "manifest.json").read_text())
    for kind in ("ae", "vae", "compact"):
        int8, fp32 = edge["models"][f"{kind}_decoder_int8"], edge["models"][f"{kind}_decoder"]
        sizes = {e["file"]: edge["files"][e["file"]]["bytes"] for e in (int8, fp32)}
        assert sizes[int8["file"]] < 0.5 * sizes[fp32["file"]]
        # the weights as stored in the .onnx, plus the ORT format's own few kilobytes
        assert sizes[int8["file"]] - int8["source"]["bytes"] < 16_384


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


def test_edge_folder_reads_as_a_bundle_and_describes_itself(
    edge_dir: Path, bundle_dir: Path, test_digits: np.ndarray
):
    digits = test_digits[:64]
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
