"""The int8 candidates of ``pipeline.quantization`` on a small decoder built here: GPTQ's rounding
(per channel and per block), SmoothQuant's equalization, the MatMulNBits file (8-bit weights,
int8 arithmetic), and the choice among the candidates by measured drift, size and latency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pipeline import quantization, rounding  # noqa: E402
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
    scales = rounding.channel_scales(weights, axis=1)
    rtn = rounding.round_to_nearest(weights, scales, axis=1)
    gptq = rounding.gptq_codes(weights, inputs, scales)
    assert gptq.dtype == np.int8 and np.abs(gptq).max() <= rounding.INT8_MAX

    def error(codes: np.ndarray) -> float:
        return float(np.mean((inputs @ (weights - codes * scales)) ** 2))

    assert error(gptq) < 0.5 * error(rtn)
    # inputs that are always zero carry no information: those rows are simply rounded
    inputs[:, 5] = 0.0
    gptq = rounding.gptq_codes(weights, inputs, scales)
    np.testing.assert_array_equal(gptq[5], rtn[5])


def test_block_gptq_with_one_block_is_the_per_channel_gptq():
    rng = np.random.default_rng(2)
    weights = rng.standard_normal((64, 40)).astype(np.float32)
    inputs = rng.standard_normal((500, 64)) * rng.random(64)
    per_channel = rounding.channel_scales(weights, axis=1)
    one_block = rounding.block_scales(weights, 64)
    np.testing.assert_allclose(one_block[0], per_channel, rtol=1e-6)
    np.testing.assert_array_equal(
        rounding.gptq_codes(weights, inputs, rounding.block_steps(one_block, 64, 64)),
        rounding.gptq_codes(weights, inputs, per_channel),
    )
    # smaller blocks follow the weights more closely: a smaller rounding error
    blocks = rounding.block_scales(weights, 16)
    assert blocks.shape == (4, 40)
    err16 = weights - rounding.block_steps(blocks, 16, 64) * np.round(
        weights / rounding.block_steps(blocks, 16, 64)
    )
    err64 = weights - per_channel * np.round(weights / per_channel)
    assert np.abs(err16).mean() < np.abs(err64).mean()


def test_fitted_blocks_divide_the_layers_inputs():
    assert [quantization.fitted_block(k, 128) for k in (1024, 512, 256, 128, 64, 48, 2)] == [
        128, 128, 128, 128, 64, 16, 16,
    ]  # fmt: skip
    assert quantization.fitted_block(1024, 32) == 32


def test_smoothing_leaves_the_float_function_unchanged(tmp_path: Path):
    fp32 = toy_decoder(tmp_path / "decoder.onnx")
    z = latents(400, 6)
    smoothed = quantization._equalized(fp32.proto, z, 0.5, {1, 2})
    onnx.save(smoothed, tmp_path / "smoothed.onnx")
    np.testing.assert_allclose(
        OnnxModel.open(tmp_path / "smoothed.onnx").run(z)[0], fp32.run(z)[0], atol=2e-6
    )
    changed = {i.name for i in smoothed.graph.initializer} & {"w1", "w2", "b0", "b1"}
    before = {i.name: numpy_helper.to_array(i) for i in fp32.proto.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in smoothed.graph.initializer}
    assert all(not np.array_equal(before[n], after[n]) for n in changed)


def test_matmul_nbits_file_holds_8_bit_weights_and_runs_int8_kernels(tmp_path: Path):
    fp32 = toy_decoder(tmp_path / "decoder.onnx")
    keep = quantization.first_layers(fp32)
    assert keep == ["dense_0/MatMul"]
    nbits = {c.name: c for c in quantization.CANDIDATES}["nbits_b32"]
    out = tmp_path / "nbits.onnx"
    nbits.build(fp32, out, latents(512, 2), keep)
    model = onnx.load(out)
    ops = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(ops) == len(WIDTHS) - 2  # every layer but the first
    for node in ops:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["bits"] == 8 and attrs["accuracy_level"] == 4 and attrs["block_size"] == 32
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert inits["w0"].dtype == np.float32 and "w1" not in inits and "w2" not in inits
    assert inits["w1_q8"].dtype == np.uint8 and inits["w1_q8"].shape == (128, 1, 32)
    assert out.stat().st_size < 0.3 * fp32.path.stat().st_size
    # ONNX Runtime keeps them: the optimized graph still multiplies 8-bit weights
    optimized = tmp_path / "optimized.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    assert sum(n.op_type == "MatMulNBits" for n in onnx.load(optimized).graph.node) == 2
    # what it computes: close to the float decoder, and the same one latent at a time
    z = latents(300, 3)
    drift = measure_drift(fp32, OnnxModel.open(out), z)
    assert drift["max_abs"] < 0.05 and drift["mean_abs"] < 0.005
    assert drift["max_abs_one_at_a_time"] == pytest.approx(drift["max_abs"], abs=1e-6)


def test_choose_keeps_the_candidate_the_rule_picks_and_records_all(tmp_path: Path):
    fp32 = toy_decoder(tmp_path / "decoder.onnx")
    int8, description, record = quantization.choose(
        fp32, tmp_path / "decoder.int8.onnx", latents(2000, 4), latents(500, 5)
    )
    names = [c.name for c in quantization.CANDIDATES]
    assert [r["method"] for r in record["candidates"]] == names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.int8.onnx", "decoder.onnx"]
    rows = record["candidates"]
    for row in rows:
        assert row["p50_us"] > 0 and row["latency_ratio"] == pytest.approx(
            row["p50_us"] / record["fp32_p50_us"], rel=0.01
        )
        assert row["accurate"] == quantization.accurate(row)
        assert row["fast"] == (row["latency_ratio"] <= quantization.TARGETS["latency_ratio"])
    best, step = quantization.pick(rows)
    assert (record["method"], record["chosen_by"]) == (best["method"], step)
    assert description == next(
        c.description for c in quantization.CANDIDATES if c.name == best["method"]
    )
    assert record["meets_targets"] == (best["accurate"] and best["fast"])
    # the file kept is the one measured
    drift = measure_drift(fp32, int8, latents(500, 5))
    assert drift["max_abs"] == pytest.approx(best["max_abs"], abs=1e-6)
    assert int8.path.stat().st_size == best["bytes"]


def test_the_rule_prefers_accurate_and_fast_then_accurate_then_small():
    def row(name, mean, worst, size, ratio):
        r = {"method": name, "mean_abs": mean, "max_abs": worst, "max_abs_one_at_a_time": worst}
        return {**r, "size_ratio": size, "latency_ratio": ratio}

    slow_exact = row("slow_exact", 0.0001, 0.001, 0.25, 1.0)
    fast_rough = row("fast_rough", 0.001, 0.04, 0.28, 0.2)
    fast_finer = row("fast_finer", 0.001, 0.02, 0.29, 0.3)
    too_rough = row("too_rough", 0.01, 0.5, 0.2, 0.1)
    too_big = row("too_big", 0.0001, 0.001, 0.5, 0.1)
    pick = quantization.pick
    assert pick([slow_exact, fast_rough, fast_finer, too_rough])[0]["method"] == "fast_finer"
    assert pick([slow_exact, too_rough, too_big]) == (slow_exact, "accurate (none was fast)")
    assert pick([too_rough, too_big])[0]["method"] == "too_rough"  # within the size target
    assert pick([too_big])[0]["method"] == "too_big"
