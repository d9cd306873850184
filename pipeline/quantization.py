"""Int8 decoders with bounded drift: several quantizations of a decoder, measured, one chosen.

    int8, method, choice = choose(fp32, folder / "vae_decoder.int8.onnx", z_cal, z_check)

Every candidate in ``CANDIDATES`` is built from the fp32 decoder, calibrated (where it needs
data) on ``z_cal`` (the validation digits' latents and prior draws), and measured on
``z_check`` (test latents and other prior draws) by ``pipeline.conversion.measure_drift``: the
mean and max |int8 - fp32| per pixel. The one kept is the candidate with the smallest max drift
among those whose file is at most ``TARGETS["size_ratio"]`` of the fp32 file; the record says
whether it meets every target and lists what each candidate measured. The candidates:

- ``dynamic``: onnxruntime ``quantize_dynamic`` (uint8 weights per channel, activations
  quantized per batch at run time), the method before this module existed.
- ``static_qdq`` and ``static_qdq_per_tensor``: onnxruntime ``quantize_static`` in QDQ format,
  int8 weights (per output channel, or one scale per tensor) and uint8 activations with ranges
  calibrated on ``z_cal`` (MinMax); ONNX Runtime fuses them into integer kernels.
- ``weight_only_rtn`` and ``weight_only_gptq``: int8 weights with one scale per output channel
  and float32 activations. The weights are stored as int8 with a ``Cast`` and a ``Mul`` by their
  scales in front of the layer, which ONNX Runtime folds into float32 weights when it loads the
  model (constant folding): the file is a quarter of the size, the arithmetic is float32's.
  ``rtn`` rounds each weight to the nearest step; ``gptq`` (Frantar et al. 2023, "GPTQ") rounds
  them one input row at a time, most important inputs first, and moves each row's rounding
  error onto the rows not yet rounded through the inverse of the calibration inputs' Gram
  matrix, layer by layer on the outputs of the layers already rounded: the layer's outputs on
  the calibration data stay closest to fp32's.

In every candidate the first layer (latent -> hidden) stays float32: its input is the raw
latent (an AE latent spans hundreds) and its weights are a few hundred numbers.
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

from pipeline.conversion import OnnxModel, measure_drift

# what a chosen int8 decoder should meet: pixel drift vs fp32 (pixels in [0, 1]) and file size
TARGETS = {"mean_abs": 0.005, "max_abs": 0.05, "size_ratio": 0.30}
QUANTIZABLE = {"MatMul": 1, "Conv": 0, "ConvTranspose": 1}  # op -> its weight's channel axis
GPTQ_DAMPING = 0.01  # of the Gram matrix's mean diagonal, added to its diagonal
INT8_MAX = 127  # symmetric codes in [-127, 127]


@dataclass(frozen=True)
class Candidate:
    name: str
    description: str
    build: Callable[[OnnxModel, Path, np.ndarray, list[str]], None]  # fp32, out, z_cal, keep


def _first_layers(fp32: OnnxModel) -> list[str]:
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


def _dynamic(fp32: OnnxModel, out: Path, z_cal: np.ndarray, keep: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_quantizer():
        quantize_dynamic(
            fp32.path, out, weight_type=QuantType.QUInt8, per_channel=True, nodes_to_exclude=keep
        )


def _static(per_channel: bool) -> Callable[[OnnxModel, Path, np.ndarray, list[str]], None]:
    def build(fp32: OnnxModel, out: Path, z_cal: np.ndarray, keep: list[str]) -> None:
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
                fp32.path, out, Batches(), quant_format=QuantFormat.QDQ,
                per_channel=per_channel, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, nodes_to_exclude=keep,
                calibrate_method=CalibrationMethod.MinMax,
            )  # fmt: skip

    return build


def channel_scales(weights: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric int8 scales, one per index of ``axis``: max |w| over the rest / 127."""
    others = tuple(a for a in range(weights.ndim) if a != axis)
    amax = np.abs(weights).max(axis=others)
    return np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)


def _broadcast(scales: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return scales.reshape(shape)


def round_to_nearest(weights: np.ndarray, scales: np.ndarray, axis: int) -> np.ndarray:
    """int8 codes of ``weights``: each weight / its channel's scale, rounded."""
    codes = np.round(weights / _broadcast(scales, weights.ndim, axis))
    return np.clip(codes, -INT8_MAX, INT8_MAX).astype(np.int8)


def gptq_codes(
    weights: np.ndarray, inputs: np.ndarray, scales: np.ndarray, damping: float = GPTQ_DAMPING
) -> np.ndarray:
    """int8 codes for a linear map ``y = inputs @ weights`` that keep ``y`` close on ``inputs``.

    weights (k, n), inputs (m, k) calibration rows, scales (n,) per output column. Rows of
    ``weights`` are rounded in order of decreasing input energy; after each row its rounding
    error is spread over the rows not yet rounded, weighted by the inverse Gram matrix of the
    inputs (GPTQ), which minimises the increase of ||inputs @ (weights - codes * scales)||^2
    row by row. Inputs that are zero on every calibration row are simply rounded.
    """
    w = weights.astype(np.float64)
    x = inputs.astype(np.float64)
    gram = x.T @ x
    dead = np.diag(gram) == 0
    gram[dead, dead] = 1.0
    order = np.argsort(-np.diag(gram), kind="stable")
    w, gram = w[order].copy(), gram[np.ix_(order, order)]
    gram[np.diag_indices_from(gram)] += damping * float(np.mean(np.diag(gram)))
    # upper Cholesky factor of the inverse Gram matrix: inv(gram) = u.T @ u
    u = np.linalg.cholesky(np.linalg.inv(gram)).T
    codes = np.empty(w.shape, dtype=np.int8)
    step = scales.astype(np.float64)
    for k in range(len(w)):
        q = np.clip(np.round(w[k] / step), -INT8_MAX, INT8_MAX)
        codes[k] = q
        error = (w[k] - q * step) / u[k, k]
        w[k + 1 :] -= np.outer(u[k, k + 1 :], error)
    out = np.empty_like(codes)
    out[order] = codes
    return out


def _layer_inputs(model: Any, tensor: str, z_cal: np.ndarray) -> np.ndarray:
    """The values of ``tensor`` (a layer's input) when ``model`` (a ModelProto) runs on z_cal."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    probe = type(model)()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([tensor], {session.get_inputs()[0].name: z_cal})[0]


def _gptq_layer(node: Any, weights: np.ndarray, x: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """GPTQ codes of one layer's weights from its calibration input ``x``.

    MatMul: weights (k, n), x (..., k). ConvTranspose: weights (c_in, c_out, kh, kw) act on
    each input pixel's c_in channels before the overlapping outputs are summed, so the map
    fitted is x's pixels (c_in,) -> (c_out * kh * kw,). Conv: rounded to nearest.
    """
    if node.op_type == "MatMul":
        return gptq_codes(weights, x.reshape(-1, weights.shape[0]), scales)
    if node.op_type == "ConvTranspose" and weights.ndim == 4:
        c_in, c_out, kh, kw = weights.shape
        rows = np.moveaxis(x, 1, -1).reshape(-1, c_in)
        codes = gptq_codes(weights.reshape(c_in, -1), rows, np.repeat(scales, kh * kw))
        return codes.reshape(weights.shape)
    return round_to_nearest(weights, scales, QUANTIZABLE[node.op_type])


def _weight_only(gptq: bool) -> Callable[[OnnxModel, Path, np.ndarray, list[str]], None]:
    def build(fp32: OnnxModel, out: Path, z_cal: np.ndarray, keep: list[str]) -> None:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        model = onnx.ModelProto()
        model.CopyFrom(fp32.proto)
        graph = model.graph
        initializers = {init.name: init for init in graph.initializer}
        # a float copy whose weights become their dequantized values layer by layer: GPTQ
        # calibrates each layer on the outputs of the layers already rounded
        rounded = onnx.ModelProto()
        rounded.CopyFrom(fp32.proto)
        rounded_inits = {init.name: init for init in rounded.graph.initializer}
        dequantize = []
        done: set[str] = set()
        for node in list(graph.node):
            if node.op_type not in QUANTIZABLE or node.name in keep:
                continue
            name = node.input[1] if len(node.input) > 1 else ""
            if name not in initializers or name in done:
                continue
            done.add(name)
            axis = QUANTIZABLE[node.op_type]
            weights = numpy_helper.to_array(initializers[name])
            scales = channel_scales(weights, axis)
            if gptq:
                x = _layer_inputs(rounded, node.input[0], z_cal)
                codes = _gptq_layer(node, weights, x, scales)
            else:
                codes = round_to_nearest(weights, scales, axis)
            values = codes.astype(np.float32) * _broadcast(scales, weights.ndim, axis)
            rounded_inits[name].CopyFrom(numpy_helper.from_array(values, name))
            graph.initializer.remove(initializers[name])
            graph.initializer.extend(
                [
                    numpy_helper.from_array(codes, f"{name}_int8"),
                    numpy_helper.from_array(
                        _broadcast(scales, weights.ndim, axis).astype(np.float32), f"{name}_scale"
                    ),
                ]
            )
            dequantize += [
                helper.make_node(
                    "Cast", [f"{name}_int8"], [f"{name}_float"], to=TensorProto.FLOAT,
                    name=f"{name}_cast",
                ),
                helper.make_node(
                    "Mul", [f"{name}_float", f"{name}_scale"], [name], name=f"{name}_dequantize"
                ),
            ]  # fmt: skip
        nodes = [*dequantize, *graph.node]
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.checker.check_model(model)
        onnx.save(model, out)

    return build


KEPT = "kept in float32: the first layer"
CANDIDATES = (
    Candidate(
        "dynamic",
        "onnxruntime quantize_dynamic: uint8 weights with per-channel scales, activations "
        f"quantized per batch at run time; {KEPT}",
        _dynamic,
    ),
    Candidate(
        "static_qdq",
        "onnxruntime quantize_static, QDQ: int8 weights with per-channel scales, uint8 "
        f"activations with MinMax ranges calibrated on validation latents and prior draws; {KEPT}",
        _static(per_channel=True),
    ),
    Candidate(
        "static_qdq_per_tensor",
        "onnxruntime quantize_static, QDQ: int8 weights with one scale per tensor, uint8 "
        f"activations with MinMax ranges calibrated on validation latents and prior draws; {KEPT}",
        _static(per_channel=False),
    ),
    Candidate(
        "weight_only_rtn",
        "weight-only int8: weights rounded to the nearest of 255 steps per output channel, "
        "stored as int8 and dequantized by Cast and Mul (folded into float32 weights when ONNX "
        f"Runtime loads the model); activations float32; {KEPT}",
        _weight_only(gptq=False),
    ),
    Candidate(
        "weight_only_gptq",
        "weight-only int8: per-output-channel scales, weights rounded by GPTQ (row by row, "
        "rounding errors compensated through the inverse Gram matrix of each layer's inputs on "
        "validation latents and prior draws), stored as int8 and dequantized by Cast and Mul "
        f"(folded into float32 weights when ONNX Runtime loads the model); activations float32; {KEPT}",
        _weight_only(gptq=True),
    ),
)


def worst(drift: dict[str, float]) -> float:
    """The larger of a drift record's two maxima (one batch, one latent at a time)."""
    return max(drift["max_abs"], drift["max_abs_one_at_a_time"])


def within_targets(measured: dict[str, float]) -> bool:
    return (
        measured["mean_abs"] <= TARGETS["mean_abs"]
        and worst(measured) <= TARGETS["max_abs"]
        and measured["size_ratio"] <= TARGETS["size_ratio"]
    )


def choose(
    fp32: OnnxModel,
    int8: Path,
    z_cal: np.ndarray,
    z_check: np.ndarray,
    candidates: tuple[Candidate, ...] = CANDIDATES,
) -> tuple[OnnxModel, str, dict[str, Any]]:
    """Build every candidate, measure it on ``z_check`` and keep the best at ``int8``.

    The best: the smallest max drift (``worst``) among candidates within the size target (all
    of them if none is). Returns the opened int8 file, its description for the manifest and a
    record of the choice: the method, whether it meets ``TARGETS``, and every candidate's
    drift and size.
    """
    keep = _first_layers(fp32)
    fp32_bytes = fp32.path.stat().st_size
    z_cal = np.ascontiguousarray(z_cal, dtype=np.float32)
    z_check = np.ascontiguousarray(z_check, dtype=np.float32)
    measured = []
    # beside the target (the same file system), removed with everything left in it
    with tempfile.TemporaryDirectory(prefix=f".{int8.name}.", dir=int8.parent) as tmp:
        for candidate in candidates:
            path = Path(tmp) / f"{candidate.name}.onnx"
            candidate.build(fp32, path, z_cal, keep)
            drift = measure_drift(fp32, OnnxModel.open(path), z_check)
            size = path.stat().st_size
            row = {
                "method": candidate.name,
                **drift,
                "bytes": size,
                "size_ratio": size / fp32_bytes,
            }
            row["within_targets"] = within_targets(row)
            measured.append(row)
            print(
                f"export:   {fp32.path.stem} {candidate.name:<22} drift mean {drift['mean_abs']:.5f} "
                f"max {worst(drift):.4f}, {row['size_ratio']:.0%} of fp32"
                + ("" if row["within_targets"] else " (outside the targets)")
            )
        small = [r for r in measured if r["size_ratio"] <= TARGETS["size_ratio"]] or measured
        best = min(small, key=lambda r: (worst(r), r["mean_abs"]))
        (Path(tmp) / f"{best['method']}.onnx").replace(int8)
    chosen = next(c for c in candidates if c.name == best["method"])
    record = {
        "method": chosen.name,
        "meets_targets": best["within_targets"],
        "targets": dict(TARGETS),
        "rule": "smallest max drift (one batch or one latent at a time) among the candidates "
        "within the size target",
        "calibration": {"latents": len(z_cal)},
        "candidates": measured,
    }
    return OnnxModel.open(int8), chosen.description, record
