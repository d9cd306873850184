"""The Node.js client (export/node/client.mjs, on onnxruntime-node) against the Python runtime on
the smoke bundle: decoded pixels equal to ``Bundle.generate`` within 1e-5, scores equal to
``Bundle.score`` within 1e-4 relative, for both models and both precisions, from .npy, PGM and
text inputs; PNG and PGM digits equal to the runtime's 8-bit rounding; the latency bench; bad
input. With the edge extra, the same on the edge folder's ORT-format files.

Needs `node` and `npm ci` (onnxruntime-node, installed without install scripts: its CPU
binaries ship in the package); `make test` installs both.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import run_export_cli as cli  # tests/ is on sys.path (rootdir conftest)
from PIL import Image

from export.bundle import Bundle
from export.files import sha256_file
from export.images import to_uint8

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "export" / "node" / "client.mjs"
ORT_NODE = REPO / "node_modules" / "onnxruntime-node"
PIXEL_ATOL = 1e-5
SCORE_RTOL = 1e-4


def node(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    if shutil.which("node") is None or not (ORT_NODE / "package.json").is_file():
        pytest.fail(f"node or onnxruntime-node missing: install Node.js and run `npm ci` in {REPO}")
    proc = subprocess.run(
        ["node", str(CLIENT), *args], cwd=cwd, capture_output=True, text=True, timeout=180
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"client.mjs {args} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def latent_text(z: np.ndarray) -> str:
    return ";".join(",".join(repr(float(v)) for v in row) for row in z)


def check_decode(folder: Path, tmp_path: Path) -> None:
    bundle = {p: Bundle.load(folder, p) for p in ("fp32", "int8")}
    z = np.concatenate(
        [bundle["fp32"].prior_latents(12, seed=2), bundle["fp32"].grid_latents(3, "ae")]
    )
    for precision, b in bundle.items():
        for model, decoder in (("vae", "full"), ("ae", "full"), ("vae", "compact")):
            out = tmp_path / f"{model}-{decoder}-{precision}.npy"
            node(
                ["decode", "--bundle", str(folder), "--z", latent_text(z), "--model", model,
                 "--decoder", decoder, "--precision", precision, "--out", str(out)],
                tmp_path,
            )  # fmt: skip
            pixels = np.load(out)
            expected = b.generate(z, model, decoder)
            assert pixels.shape == expected.shape and pixels.dtype == np.float32
            np.testing.assert_allclose(pixels, expected, rtol=0, atol=PIXEL_ATOL)
    # the compact decoder is another model: its digits are close to the VAE decoder's, not equal
    full, compact = (bundle["fp32"].generate(z, "vae", d) for d in ("full", "compact"))
    assert float(np.abs(full - compact).max()) > 0


def check_scores(folder: Path, digits: np.ndarray, tmp_path: Path) -> None:
    np.save(tmp_path / "digits.npy", digits)
    np.save(tmp_path / "floats.npy", digits[:5].astype(np.float32) / np.float32(255.0))
    (tmp_path / "one.pgm").write_bytes(b"P5\n28 28\n255\n" + digits[0].tobytes())
    (tmp_path / "rows.txt").write_text(
        "\n".join(" ".join(str(int(v)) for v in d.ravel()) for d in digits[:3]) + "\n"
    )
    pixels_arg = ",".join(str(int(v)) for v in digits[1].ravel())
    inputs = {"digits.npy": digits, "floats.npy": digits[:5], "one.pgm": digits[:1],
              "rows.txt": digits[:3], "--pixels": digits[1:2]}  # fmt: skip
    for precision in ("fp32", "int8"):
        bundle = Bundle.load(folder, precision)
        for model in ("detector", "vae", "ae"):
            proc = node(
                ["score", "--bundle", str(folder), "--model", model, "--precision", precision,
                 "--json", "--pixels", pixels_arg,
                 *(str(tmp_path / n) for n in inputs if n != "--pixels")],
                tmp_path,
            )  # fmt: skip
            result = json.loads(proc.stdout)
            assert result["threshold"] == bundle.threshold(model)
            for name, images in inputs.items():
                rows = [r for r in result["results"] if Path(r["source"]).name == name]
                expected = bundle.score(images, model)
                got = np.array([r["score"] for r in rows])
                assert [r["index"] for r in rows] == list(range(len(images))), name
                np.testing.assert_allclose(got, expected, rtol=SCORE_RTOL, err_msg=name)
                flags = np.array([r["anomaly"] for r in rows])
                clear = np.abs(expected - bundle.threshold(model)) > SCORE_RTOL * np.abs(expected)
                np.testing.assert_array_equal(
                    flags[clear], (expected > bundle.threshold(model))[clear]
                )


def test_decoded_pixels_equal_the_runtime(bundle_dir: Path, tmp_path: Path):
    check_decode(bundle_dir, tmp_path)


def test_scores_equal_the_runtime(bundle_dir: Path, test_digits: np.ndarray, tmp_path: Path):
    digits = test_digits[:48]
    check_scores(bundle_dir, digits, tmp_path)


def test_png_and_pgm_hold_the_runtime_grey_levels(bundle_dir: Path, tmp_path: Path):
    bundle = Bundle.load(bundle_dir)
    z = bundle.prior_latents(4, seed=9)
    expected = np.concatenate(list(to_uint8(bundle.generate(z))), axis=1)  # side by side
    for suffix in (".png", ".pgm"):
        out = tmp_path / f"digits{suffix}"
        node(
            ["decode", "--bundle", str(bundle_dir), "--z", latent_text(z), "--out", str(out)],
            tmp_path,
        )
        grey = np.asarray(Image.open(out))
        assert grey.shape == (28, 4 * 28) and grey.dtype == np.uint8
        # the same float32 rounding, unless a pixel sits on a rounding boundary
        assert np.abs(grey.astype(int) - expected).max() <= 1
        assert np.mean(grey == expected) > 0.99


def test_bench_reports_percentiles(bundle_dir: Path, tmp_path: Path):
    proc = node(
        ["bench", "--bundle", str(bundle_dir), "--calls", "200", "--warmup", "10"], tmp_path
    )
    result = json.loads(proc.stdout)
    assert result["role"] == "vae_decoder" and result["calls"] == 200 and result["threads"] == 1
    assert 0 < result["p50_us"] <= result["p99_us"]


def test_compact_decoder_needs_the_vae_and_a_bundle_that_has_it(bundle_dir: Path, tmp_path: Path):
    proc = node(
        ["decode", "--bundle", str(bundle_dir), "--z", "0,0", "--model", "ae", "--decoder",
         "compact", "--json"],
        tmp_path,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "decodes the VAE's latents" in proc.stderr
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    for role in ("compact_decoder", "compact_decoder_int8"):
        del manifest["models"][role]
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    proc = node(
        ["decode", "--bundle", str(folder), "--z", "0,0", "--decoder", "compact", "--json"],
        tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "has no compact_decoder" in proc.stderr


def test_bad_inputs_give_one_error_line(bundle_dir: Path, tmp_path: Path):
    (tmp_path / "bad.txt").write_text("1 2 3\n")
    np.save(tmp_path / "ints.npy", np.zeros((2, 28, 28), np.int32))
    cases = [
        (
            ["decode", "--bundle", str(bundle_dir), "--z", "0.1", "--out", "x.npy"],
            "expected 2 numbers",
        ),
        (["score", "--bundle", str(bundle_dir), str(tmp_path / "bad.txt")], "784 numbers"),
        (["score", "--bundle", str(bundle_dir), str(tmp_path / "ints.npy")], "dtype <i4"),
        (["score", "--bundle", str(tmp_path)], "manifest.json"),
        (["decode", "--bundle", str(bundle_dir), "--z", "0,0", "--model", "cnn"], "--model cnn"),
    ]
    for args, message in cases:
        proc = node(args, tmp_path, check=False)
        assert proc.returncode == 2, args
        assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1


def test_a_tampered_model_is_refused(bundle_dir: Path, tmp_path: Path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    path = copy / "vae_decoder.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    proc = node(
        ["decode", "--bundle", str(copy), "--z", "0,0", "--out", "x.npy"], tmp_path, check=False
    )
    assert proc.returncode == 2 and "sha256 does not match" in proc.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None, reason="the edge extra (onnx) is not installed"
)
def test_the_edge_folder_gives_the_same_numbers(
    bundle_dir: Path, test_digits: np.ndarray, tmp_path: Path
):
    digits = test_digits[:48]
    edge = tmp_path / "edge"
    cli(["edge", "--bundle", str(bundle_dir), "--out", str(edge)], tmp_path)
    check_decode(edge, tmp_path)
    check_scores(edge, digits[:8], tmp_path)


@pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None, reason="onnx is needed to build a scorer graph"
)
def test_a_scorer_graph_is_run_when_the_bundle_has_one(
    bundle_dir: Path, test_digits: np.ndarray, tmp_path: Path
):
    """A stand-in scorer (images -> score = sum of pixels, anomaly = score > 100) added to a copy
    of the bundle: at fp32 the client prints the graph's numbers, at int8 its own."""
    digits = test_digits[:48]
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["images", "axes"], ["score"], keepdims=0),
            helper.make_node("Greater", ["score", "limit"], ["anomaly"]),
        ],
        "stand_in_scorer",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 28, 28])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("anomaly", TensorProto.BOOL, ["batch"]),
        ],
        [
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
            numpy_helper.from_array(np.array(100.0, np.float32), "limit"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, copy / "vae_scorer.onnx")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["models"]["vae_scorer"] = {"file": "vae_scorer.onnx", "precision": "fp32"}
    manifest["files"]["vae_scorer.onnx"] = {
        "sha256": sha256_file(copy / "vae_scorer.onnx"),
        "bytes": (copy / "vae_scorer.onnx").stat().st_size,
    }
    (copy / "manifest.json").write_text(json.dumps(manifest))
    np.save(tmp_path / "digits.npy", digits)
    images = digits.astype(np.float32) / np.float32(255.0)
    for precision, expected, via in (
        ("fp32", images.sum(axis=(1, 2), dtype=np.float32), "vae_scorer"),
        (
            "int8",
            Bundle.load(bundle_dir, "int8").score(digits, "vae"),
            "vae_encoder + vae_decoder_int8",
        ),
    ):
        proc = node(
            ["score", "--bundle", str(copy), "--model", "vae", "--precision", precision,
             "--json", str(tmp_path / "digits.npy")],
            tmp_path,
        )  # fmt: skip
        rows = json.loads(proc.stdout)["results"]
        assert {r["via"] for r in rows} == {via}
        np.testing.assert_allclose([r["score"] for r in rows], expected, rtol=SCORE_RTOL)
