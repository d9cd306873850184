"""Int8 decoders that are smaller and faster: several quantizations of a decoder, measured, one kept.

    int8, method, choice = choose(fp32, folder / "vae_decoder.int8.onnx", z_cal, z_check)

Every candidate in ``CANDIDATES`` is built from the fp32 decoder, calibrated (where it needs
data) on ``z_cal`` (one half of the validation digits' latents, and prior draws), and measured
on ``z_check`` (the other half, and other prior draws): its file size, its pixel drift
|int8 - fp32| (mean and max, ``pipeline.conversion.measure_drift``) and its one-thread latency
decoding one latent (``export.timing.p50_us``: medians over rounds that time the fp32 file and
every candidate in turn). The rule, fixed before any run:

1. *accurate*: size <= 0.30 of the fp32 file, drift mean <= 0.005 and max <= 0.05
   (``TARGETS``);
2. *fast*: p50 <= 0.6 of the fp32 decoder's p50, measured in the same rounds;
3. kept: the least max drift among the accurate and fast candidates; if none is fast, the
   least max drift among the accurate ones; if none is accurate, the least max drift among
   those within the size target (then among all). The record says which step chose and
   whether the file meets every target.

The candidates:

- ``dynamic``: onnxruntime ``quantize_dynamic``: uint8 weights per output channel,
  activations quantized per batch at run time (``DynamicQuantizeMatMul``).
- ``static_qdq``: onnxruntime ``quantize_static`` in QDQ format, int8 weights per output
  channel, uint8 activations with MinMax ranges calibrated on ``z_cal``; ONNX Runtime fuses
  them into integer kernels (``QLinearMatMul``).
- ``nbits_b128``, ``nbits_b32``, ``nbits_mixed`` and ``nbits_mixed_smooth``: every dense
  layer becomes ``com.microsoft.MatMulNBits`` with 8-bit weights (one float32 scale per block
  of ``block`` inputs of each output, GPTQ rounding, the bias inside the node) and
  ``accuracy_level`` 4, with which ONNX Runtime quantizes the activations to int8 per block at
  run time and multiplies on its int8 kernels (AVX512-VNNI, AVX-VNNI or AVX2 on x86, dot
  products on ARM64). Nothing is folded back at load: the session, and any ``.ort`` made from
  the file, hold 8-bit weights. Blocks are ``fitted_block``'s: at most 128 (or 32) inputs.
  ``mixed`` keeps the first two layers in float32 (a few per cent of the weights, where
  rounding the activations costs the most accuracy) and uses blocks of 32 inputs where a
  layer has at most ``SMALL_LAYER`` inputs, 128 elsewhere; ``mixed_smooth`` also applies
  SmoothQuant's equalization (``pipeline.rounding.smooth_factors``, alpha 0.5), folded
  exactly into the previous layer through the ReLU between them.

In every candidate the first layer (latent -> hidden) stays float32: its input is the raw
latent (an AE latent spans hundreds) and its weights are a few hundred numbers. Weight-only
int8 (8-bit weights dequantized by ``Cast`` and ``Mul``) is no candidate: ONNX Runtime folds
it back into float32 weights when it loads the file, so it computes at float32's speed and
holds float32's memory.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export import timing
from export.timing import p50_us
from pipeline.conversion import OnnxModel, measure_drift
from pipeline.rounding import (
    block_scales,
    block_steps,
    gptq_codes,
    smooth_factors,
)

# what a chosen int8 decoder should meet: pixel drift vs fp32 (pixels in [0, 1]), file size,
# and one-thread latency of one latent against the fp32 decoder's
TARGETS = {"mean_abs": 0.005, "max_abs": 0.05, "size_ratio": 0.30, "latency_ratio": 0.60}
NBITS_ZERO_POINT = 128  # MatMulNBits' implicit zero point for 8 bits when none is given
SMALL_LAYER = 256  # nbits_mixed: layers with at most this many inputs get blocks of 32


@dataclass(frozen=True)
class Candidate:
    name: str
    description: str
    build: Callable[[OnnxModel, Path, np.ndarray, list[str]], None]  # fp32, out, z_cal, keep


@dataclass
class Dense:
    """One dense layer of a graph: MatMul(x, W) with constant weights, then Add(., b) if any."""

    matmul: Any  # NodeProto
    add: Any  # NodeProto or None
    weights: np.ndarray  # (K, N)
    bias_name: str | None
    index: int  # position among the dense layers, from the input


def dense_layers(proto: Any) -> list[Dense]:
    """The MatMul layers of ``proto`` with constant (K, N) weights, in graph order, each with
    the Add of a constant bias that follows it (if any)."""
    from onnx import numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers: list[Dense] = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        weights = numpy_helper.to_array(inits[node.input[1]])
        if weights.ndim != 2:
            continue
        add, bias_name = None, None
        after = consumers.get(node.output[0], [])
        if len(after) == 1 and after[0].op_type == "Add":
            other = [i for i in after[0].input if i != node.output[0]]
            bias = (
                numpy_helper.to_array(inits[other[0]])
                if len(other) == 1 and other[0] in inits
                else None
            )
            if bias is not None and bias.size == weights.shape[1]:
                add, bias_name = after[0], other[0]
        layers.append(Dense(node, add, weights.astype(np.float32), bias_name, len(layers)))
    return layers


def first_layers(fp32: OnnxModel) -> list[str]:
    """The nodes that read the graph input (the latent): kept in float32 by every candidate."""
    graph = fp32.proto.graph
    return [n.name for n in graph.node if graph.input[0].name in n.input]


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs advice (pre-processing, opsets) on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def layer_inputs(proto: Any, tensor: str, z: np.ndarray) -> np.ndarray:
    """The values of ``tensor`` (a layer's input) when ``proto`` (a ModelProto) runs on z."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    probe = type(proto)()
    probe.CopyFrom(proto)
    probe.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([tensor], {session.get_inputs()[0].name: z})[0]


# -- onnxruntime's quantizers ------------------------------------------------------------------


def _dynamic(fp32: OnnxModel, out: Path, z_cal: np.ndarray, keep: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_quantizer():
        quantize_dynamic(
            fp32.path, out, weight_type=QuantType.QUInt8, per_channel=True, nodes_to_exclude=keep,
            extra_options={"MatMulConstBOnly": True},
        )  # fmt: skip


def _static_qdq(fp32: OnnxModel, out: Path, z_cal: np.ndarray, keep: list[str]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    name = fp32.session.get_inputs()[0].name

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{name: z_cal[i : i + 256]} for i in range(0, len(z_cal), 256)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with _quiet_quantizer():
        quantize_static(
            fp32.path, out, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=keep, calibrate_method=CalibrationMethod.MinMax,
        )  # fmt: skip


# -- MatMulNBits: 8-bit weights, int8 arithmetic ---------------------------------------------


def _equalized(proto: Any, z_cal: np.ndarray, alpha: float, quantized: set[int]) -> Any:
    """A copy of ``proto`` computing the same function whose quantized dense layers' inputs
    are equalized (``smooth_factors``): layer i's input channel j is divided by s_j inside the
    previous layer (its weight column and bias; ReLU(a / s) = ReLU(a) / s for s > 0) and row j
    of layer i's weights is multiplied by s_j."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    inits = {i.name: i for i in out.graph.initializer}
    producers = {o: n for n in out.graph.node for o in n.output}
    layers = dense_layers(out)
    weights = {layer.index: layer.weights.copy() for layer in layers}
    biases = {
        layer.index: numpy_helper.to_array(inits[layer.bias_name]).astype(np.float32).copy()
        for layer in layers
        if layer.bias_name is not None
    }
    for layer in layers[1:]:
        prev = layers[layer.index - 1]
        relu = producers.get(layer.matmul.input[0])
        if (
            layer.index not in quantized or relu is None or relu.op_type != "Relu"
            or prev.add is None or relu.input[0] != prev.add.output[0]
        ):  # fmt: skip
            continue  # not prev -> bias -> ReLU -> this layer: nothing to fold into
        x = layer_inputs(proto, layer.matmul.input[0], z_cal)
        s = smooth_factors(x, layer.weights, alpha)
        weights[layer.index] *= s[:, None]
        weights[prev.index] /= s[None, :]
        biases[prev.index] = biases[prev.index] / s.reshape(biases[prev.index].shape)
    for layer in layers:
        name = layer.matmul.input[1]
        inits[name].CopyFrom(numpy_helper.from_array(weights[layer.index], name))
        if layer.bias_name is not None:
            inits[layer.bias_name].CopyFrom(
                numpy_helper.from_array(biases[layer.index], layer.bias_name)
            )
    return out


def _matmul_nbits(
    kept_layers: int, block_of: Callable[[int], int], smooth: float | None = None
) -> Callable[[OnnxModel, Path, np.ndarray, list[str]], None]:
    """A builder of the MatMulNBits candidate: the first ``kept_layers`` dense layers float32,
    the others 8-bit with blocks of ``block_of(K)`` inputs, GPTQ-rounded on z_cal."""

    def build(fp32: OnnxModel, out: Path, z_cal: np.ndarray, keep: list[str]) -> None:
        import onnx
        from onnx import helper, numpy_helper

        layers = dense_layers(fp32.proto)
        quantized = {layer.index for layer in layers if layer.index >= kept_layers}
        source = fp32.proto if smooth is None else _equalized(fp32.proto, z_cal, smooth, quantized)
        model = onnx.ModelProto()
        model.CopyFrom(source)
        graph = model.graph
        rounded = onnx.ModelProto()  # dequantized weights, layer by layer, for GPTQ's inputs
        rounded.CopyFrom(source)
        rounded_inits = {i.name: i for i in rounded.graph.initializer}
        replaced: dict[str, Any] = {}  # MatMul output -> the MatMulNBits node that replaces it
        removed_adds: set[str] = set()
        removed_inits: set[str] = set()
        new_inits = []
        for layer in dense_layers(source):
            if layer.index not in quantized:
                continue
            k, n = layer.weights.shape
            block = block_of(k)
            scales = block_scales(layer.weights, block)
            x = layer_inputs(rounded, layer.matmul.input[0], z_cal).reshape(-1, k)
            codes = gptq_codes(layer.weights, x, block_steps(scales, block, k))
            name = layer.matmul.input[1]
            dequantized = codes.astype(np.float32) * block_steps(scales, block, k)
            rounded_inits[name].CopyFrom(numpy_helper.from_array(dequantized, name))
            blocks = scales.shape[0]
            packed = np.zeros((blocks * block, n), np.int16)
            packed[:k] = codes
            # MatMulNBits' layout: B (N, n_blocks, block) uint8 around the zero point 128,
            # scales (N * n_blocks,) output by output
            b = (packed.T.reshape(n, blocks, block) + NBITS_ZERO_POINT).astype(np.uint8)
            new_inits += [
                numpy_helper.from_array(b, f"{name}_q8"),
                numpy_helper.from_array(scales.T.reshape(-1).copy(), f"{name}_scales"),
            ]
            inputs = [layer.matmul.input[0], f"{name}_q8", f"{name}_scales"]
            output = layer.matmul.output[0]
            if layer.add is not None:
                inputs += ["", "", layer.bias_name]  # zero points, g_idx, bias
                output = layer.add.output[0]
                removed_adds.add(layer.add.output[0])
            replaced[layer.matmul.output[0]] = helper.make_node(
                "MatMulNBits", inputs, [output], name=f"{layer.matmul.name}_q8",
                domain="com.microsoft", K=k, N=n, bits=8, block_size=block, accuracy_level=4,
            )  # fmt: skip
            removed_inits.add(name)
        nodes = [
            replaced.get(node.output[0], node)
            for node in graph.node
            if node.output[0] not in removed_adds
        ]
        del graph.node[:]
        graph.node.extend(nodes)
        used = {i for node in graph.node for i in node.input}
        kept = [i for i in graph.initializer if i.name not in removed_inits and i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept + new_inits)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        onnx.checker.check_model(model)
        onnx.save(model, out)

    return build


def fitted_block(k: int, cap: int) -> int:
    """The block of a layer of ``k`` inputs: the largest power of two that divides ``k``, at
    most ``cap`` and at least 16 (MatMulNBits' smallest), so that no block is padded unless k
    is no multiple of 16: a padded block stores zeros and an extra scale per output."""
    block = cap
    while block > 16 and k % block:
        block //= 2
    return block


def _mixed_blocks(k: int) -> int:
    return fitted_block(k, 32 if k <= SMALL_LAYER else 128)


KEPT = "the first layer (the one that reads the latent) stays float32"
NBITS = (
    "com.microsoft.MatMulNBits, 8-bit weights with one float32 scale per block of {block} "
    "inputs of each output, rounded by GPTQ on validation latents and prior draws, bias in "
    "the node; accuracy_level 4: activations quantized to int8 per block at run time, int8 "
    "arithmetic"
)
CANDIDATES = (
    Candidate(
        "dynamic",
        "onnxruntime quantize_dynamic: uint8 weights with per-channel scales, activations "
        f"quantized per batch at run time (DynamicQuantizeMatMul); {KEPT}",
        _dynamic,
    ),
    Candidate(
        "static_qdq",
        "onnxruntime quantize_static, QDQ: int8 weights with per-channel scales, uint8 "
        "activations with MinMax ranges calibrated on validation latents and prior draws "
        f"(integer kernels); {KEPT}",
        _static_qdq,
    ),
    Candidate(
        "nbits_b128",
        f"{NBITS.format(block='128 (fewer where a layer has fewer inputs)')}; {KEPT}",
        _matmul_nbits(1, lambda k: fitted_block(k, 128)),
    ),
    Candidate(
        "nbits_b32",
        f"{NBITS.format(block='32 (fewer where a layer has fewer inputs)')}; {KEPT}",
        _matmul_nbits(1, lambda k: fitted_block(k, 32)),
    ),
    Candidate(
        "nbits_mixed",
        f"{NBITS.format(block=f'32 (layers of at most {SMALL_LAYER} inputs) or 128')}; the "
        "first two layers stay float32",
        _matmul_nbits(2, _mixed_blocks),
    ),
    Candidate(
        "nbits_mixed_smooth",
        f"{NBITS.format(block=f'32 (layers of at most {SMALL_LAYER} inputs) or 128')}, after "
        "SmoothQuant equalization (alpha 0.5) folded into the previous layers; the first two "
        "layers stay float32",
        _matmul_nbits(2, _mixed_blocks, smooth=0.5),
    ),
)


# -- measuring and choosing --------------------------------------------------------------------


def worst(drift: dict[str, float]) -> float:
    """The larger of a drift record's two maxima (one batch, one latent at a time)."""
    return max(drift["max_abs"], drift["max_abs_one_at_a_time"])


def accurate(measured: dict[str, float]) -> bool:
    return (
        measured["mean_abs"] <= TARGETS["mean_abs"]
        and worst(measured) <= TARGETS["max_abs"]
        and measured["size_ratio"] <= TARGETS["size_ratio"]
    )


def fast(measured: dict[str, float]) -> bool:
    return measured["latency_ratio"] <= TARGETS["latency_ratio"]


def pick(measured: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The candidate the rule keeps (the module's docstring) and the step that chose it."""
    steps = (
        ("accurate and fast", lambda r: accurate(r) and fast(r)),
        ("accurate (none was fast)", accurate),
        ("within the size target (none was accurate)", lambda r: r["size_ratio"] <= 0.30),
        ("least drift (none was within the size target)", lambda r: True),
    )
    for step, eligible in steps:
        rows = [r for r in measured if eligible(r)]
        if rows:
            return min(rows, key=lambda r: (worst(r), r["mean_abs"])), step
    raise ValueError("no candidate was measured")


def choose(
    fp32: OnnxModel,
    int8: Path,
    z_cal: np.ndarray,
    z_check: np.ndarray,
    candidates: tuple[Candidate, ...] = CANDIDATES,
) -> tuple[OnnxModel, str, dict[str, Any]]:
    """Build every candidate, measure it on ``z_check``, keep the one the rule picks at ``int8``.

    Returns the opened int8 file, its description for the manifest and a record of the
    choice: the method, the step of the rule that chose it, whether it meets ``TARGETS``, and
    every candidate's drift, size and latency.
    """
    keep = first_layers(fp32)
    fp32_bytes = fp32.path.stat().st_size
    z_cal = np.ascontiguousarray(z_cal, dtype=np.float32)
    z_check = np.ascontiguousarray(z_check, dtype=np.float32)
    measured = []
    # beside the target (the same file system), removed with everything left in it
    with tempfile.TemporaryDirectory(prefix=f".{int8.name}.", dir=int8.parent) as tmp:
        paths = []
        for candidate in candidates:
            path = Path(tmp) / f"{candidate.name}.onnx"
            candidate.build(fp32, path, z_cal, keep)
            drift = measure_drift(fp32, OnnxModel.open(path), z_check)
            size = path.stat().st_size
            measured.append(
                {"method": candidate.name, **drift, "bytes": size, "size_ratio": size / fp32_bytes}
            )
            paths.append(path)
        fp32_us, *candidate_us = p50_us([fp32.path, *paths], [z_check] * (len(paths) + 1))
        for row, p50 in zip(measured, candidate_us, strict=True):
            row.update(p50_us=round(p50, 2), latency_ratio=p50 / fp32_us)
            row.update(accurate=accurate(row), fast=fast(row))
            print(
                f"export:   {fp32.path.stem} {row['method']:<20} drift mean "
                f"{row['mean_abs']:.5f} max {worst(row):.4f}, {row['size_ratio']:.0%} of fp32, "
                f"p50 {p50:.1f} us ({row['latency_ratio']:.2f} of fp32)"
                + ("" if row["accurate"] and row["fast"] else " (outside the targets)")
            )
        best, step = pick(measured)
        (Path(tmp) / f"{best['method']}.onnx").replace(int8)
    chosen = next(c for c in candidates if c.name == best["method"])
    record = {
        "method": chosen.name,
        "chosen_by": step,
        "meets_targets": best["accurate"] and best["fast"],
        "targets": dict(TARGETS),
        "rule": "the least max drift (one batch or one latent at a time) among the candidates "
        "within the size and drift targets that decode one latent on one thread in at most "
        "0.6 of the fp32 decoder's p50; failing that, among those within the size and drift "
        "targets; then within the size target; then all",
        "fp32_p50_us": round(fp32_us, 2),
        "latency": {"calls": timing.CALLS, "rounds": timing.ROUNDS, "threads": 1, "batch": 1},
        "calibration": {"latents": len(z_cal)},
        "candidates": measured,
    }
    return OnnxModel.open(int8), chosen.description, record
