"""The int8 candidates of ``pipeline.quantization`` on a small decoder built here: GPTQ's rounding
against rounding to nearest, the weight-only file (int8 weights, float32 arithmetic), and the
choice among the candidates by measured drift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pipeline import quantization  # noqa: E402
from pipeline.conversion import OnnxModel, measure_drift  # noqa: E402

WIDTHS = (2, 32, 128, 784)


def toy_decoder(path: Path, seed: int = 0) -> OnnxModel:
    """z (batch, 2) -> dense ReLU layers -> sigmoid pixels (batch, 28, 28), like the MLP decoder."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "z"
    for i, (k, n) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:], strict=True)):
        w = (rng.standard_normal((k, n)) * (2.0 / k) ** 0.5).astype(np.float32)
        b = (0.1 * rng.standard_normal(n)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"dense_{i}/MatMul"),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"dense_{i}/Add"),
        ]
        act = "Sigmoid" if i == len(WIDTHS) - 2 else "Relu"
        nodes.append(helper.make_node(act, [f"a{i}"], [f"h{i}"], name=f"dense_{i}/{act}"))
        x = f"h{i}"
    inits.append(numpy_helper.from_array(np.array([-1, 28, 28], np.int64), "shape"))
    nodes.append(helper.make_node("Reshape", [x, "shape"], ["pixels"], name="pixels"))
    graph = helper.make_graph(
        nodes,
        "toy_decoder",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 28, 28])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return OnnxModel.open(path)


def latents(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 2)).astype(np.float32)


def test_gptq_codes_fit_the_layer_outputs_better_than_rounding():
    rng = np.random.default_rng(1)
    weights = rng.standard_normal((64, 48)).astype(np.float32)
    # correlated inputs with very different scales: where compensation pays
    inputs = rng.standard_normal((2000, 64)) @ rng.standard_normal((64, 64)) * rng.random(64) * 3
    scales = quantization.channel_scales(weights, axis=1)
    rtn = quantization.round_to_nearest(weights, scales, axis=1)
    gptq = quantization.gptq_codes(weights, inputs, scales)
    assert gptq.dtype == np.int8 and np.abs(gptq).max() <= quantization.INT8_MAX

    def error(codes: np.ndarray) -> float:
        return float(np.mean((inputs @ (weights - codes * scales)) ** 2))

    assert error(gptq) < 0.5 * error(rtn)
    # inputs that are always zero carry no information: those rows are simply rounded
    inputs[:, 5] = 0.0
    gptq = quantization.gptq_codes(weights, inputs, scales)
    np.testing.assert_array_equal(gptq[5], rtn[5])


def test_weight_only_file_stores_int8_weights_and_computes_in_float(tmp_path: Path):
    fp32 = toy_decoder(tmp_path / "decoder.onnx")
    keep = quantization._first_layers(fp32)
    assert keep == ["dense_0/MatMul"]
    out = tmp_path / "rtn.onnx"
    quantization.CANDIDATES[3].build(fp32, out, latents(512, 2), keep)
    model = onnx.load(out)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert inits["w0"].dtype == np.float32  # the first layer stays float32
    for i in (1, 2):
        assert f"w{i}" not in inits and inits[f"w{i}_int8"].dtype == np.int8
        assert inits[f"w{i}_scale"].shape == (1, WIDTHS[i + 1])
    assert {n.op_type for n in model.graph.node} == {
        "Cast", "Mul", "MatMul", "Add", "Relu", "Sigmoid", "Reshape",
    }  # fmt: skip
    assert out.stat().st_size < 0.3 * fp32.path.stat().st_size
    # what the file computes: the float32 decoder with each weight replaced by its int8 step
    proto = onnx.load(fp32.path)
    for init in proto.graph.initializer:
        if init.name in ("w1", "w2"):
            w = numpy_helper.to_array(init)
            s = quantization.channel_scales(w, 1)
            init.CopyFrom(numpy_helper.from_array(np.round(w / s) * s, init.name))
    onnx.save(proto, tmp_path / "rounded.onnx")
    z = latents(300, 3)
    np.testing.assert_allclose(
        OnnxModel.open(out).run(z)[0], OnnxModel.open(tmp_path / "rounded.onnx").run(z)[0],
        atol=2e-6,
    )  # fmt: skip
    # batch-independent: one latent at a time gives the batch's pixels
    drift = measure_drift(fp32, OnnxModel.open(out), z)
    assert drift["max_abs_one_at_a_time"] == pytest.approx(drift["max_abs"], abs=1e-6)


def test_choose_keeps_the_candidate_with_the_least_drift_and_records_all(tmp_path: Path):
    fp32 = toy_decoder(tmp_path / "decoder.onnx")
    int8, description, record = quantization.choose(
        fp32, tmp_path / "decoder.int8.onnx", latents(2000, 4), latents(500, 5)
    )
    names = [c.name for c in quantization.CANDIDATES]
    assert [r["method"] for r in record["candidates"]] == names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.int8.onnx", "decoder.onnx"]
    small = [
        r for r in record["candidates"] if r["size_ratio"] <= quantization.TARGETS["size_ratio"]
    ]
    best = min(small, key=lambda r: (quantization.worst(r), r["mean_abs"]))
    assert record["method"] == best["method"]
    assert description == next(
        c.description for c in quantization.CANDIDATES if c.name == best["method"]
    )
    assert record["meets_targets"] == quantization.within_targets(best)
    # the file kept is the one measured
    drift = measure_drift(fp32, int8, latents(500, 5))
    assert drift["max_abs"] == pytest.approx(best["max_abs"], abs=1e-6)
    assert int8.path.stat().st_size == best["bytes"]
    rows = {r["method"]: r for r in record["candidates"]}
    # on this decoder GPTQ beats rounding to nearest, and weight-only beats activation rounding
    assert quantization.worst(rows["weight_only_gptq"]) < quantization.worst(
        rows["weight_only_rtn"]
    )
    assert rows["weight_only_rtn"]["mean_abs"] < rows["static_qdq"]["mean_abs"]
