"""Keras models to ONNX: conversion with readable names, parity against Keras, int8 drift.

    onnx_model, parity = export_checked(model, "vae_decoder", z, folder, cfg)
    drift = measure_drift(onnx_model, int8, z)

Every saved file is opened once, as an ``OnnxModel``: one ONNX Runtime session and the proto
it was saved from, reused for the parity check, the manifest's input/output spec and opset,
the drift of its int8 copy and the test latents. Used by the export stage (``pipeline.bundler``)
and by ``pipeline.quantization``, which builds the int8 copies (this module imports neither).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common import PREDICT_BATCH
from pipeline.config import Config

# graph input and output names of each converted model, in the Keras model's output order
IO_NAMES = {
    "ae_encoder": ("images", ("z",)),
    "ae_decoder": ("z", ("pixels",)),
    "vae_encoder": ("images", ("z_mean", "z_log_var")),
    "vae_decoder": ("z", ("pixels",)),
    "compact_decoder": ("z", ("pixels",)),
    "detector_encoder": ("images", ("z_mean", "z_log_var", "class_logits")),
    "detector_decoder": ("z_class", ("pixels",)),
    "background_encoder": ("images", ("z_mean", "z_log_var")),
    "background_decoder": ("z", ("pixels",)),
    "denoiser": ("images", ("pixels",)),
}
BATCH_DIM = "batch"
ORT_DTYPES = {"tensor(float)": "float32", "tensor(bool)": "bool"}
# what each graph input expects, by its name (the metadata's ``input_scaling``)
INPUT_SCALING = {
    "images": "float32 in [0, 1]; uint8 / 255",
    "z": "float32 latent vectors as the encoder outputs them, unscaled (VAE prior: N(0, I))",
    "z_class": "float32 [z_mean, one-hot class] as the detector's encoder gives them",
}


class ExportError(RuntimeError):
    """The exported models disagree with Keras, or an input the stage needs is unusable."""


@dataclass(frozen=True)
class OnnxModel:
    """One saved ONNX file, opened once: its ONNX Runtime session and its proto."""

    path: Path
    proto: Any  # onnx.ModelProto, as saved at ``path``
    session: Any  # onnxruntime.InferenceSession on the CPU

    @classmethod
    def open(cls, path: Path, proto: Any = None) -> OnnxModel:
        """Open ``path``; ``proto``: the ModelProto just saved there (else read from the file)."""
        import onnx
        import onnxruntime as ort

        if proto is None:
            proto = onnx.load(path, load_external_data=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return cls(Path(path), proto, session)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output of the model for the batch ``x`` (cast to float32)."""
        return self.session.run(None, {self.session.get_inputs()[0].name: x.astype(np.float32)})

    def io_spec(self) -> dict[str, list[dict[str, Any]]]:
        """Names, shapes (batch axis as "batch") and dtypes as ONNX Runtime reports them."""

        def spec(args: list[Any]) -> list[dict[str, Any]]:
            return [
                {"name": a.name, "shape": list(a.shape), "dtype": ORT_DTYPES.get(a.type, a.type)}
                for a in args
            ]

        return {
            "inputs": spec(self.session.get_inputs()),
            "outputs": spec(self.session.get_outputs()),
        }

    @property
    def opset(self) -> int:
        """The default-domain opset the file declares (quantization may add other domains)."""
        imports = self.proto.opset_import
        return next(int(op.version) for op in imports if op.domain in ("", "ai.onnx"))


def describe(role: str, entry: dict[str, Any], latent_dim: int, format_version: int) -> dict:
    """The metadata every exported ONNX file carries, as strings: its role and precision, its
    input and outputs (shapes with the batch axis as ``n``), what the input expects, the
    latent size and the bundle's format version.

    entry: the model's manifest entry (``precision`` and ``OnnxModel.io_spec()``'s inputs and
    outputs); latent_dim: the model's bottleneck.
    """

    def shape(arg: dict[str, Any]) -> str:
        return ",".join("n" if d == BATCH_DIM else str(d) for d in arg["shape"])

    first = entry["inputs"][0]
    return {
        "role": role,
        "precision": entry["precision"],
        "latent_dim": str(latent_dim),
        "input": first["name"],
        "input_shape": shape(first),
        "input_scaling": INPUT_SCALING.get(first["name"], first["dtype"]),
        "outputs": "; ".join(f"{o['name']} ({shape(o)}) {o['dtype']}" for o in entry["outputs"]),
        "bundle_format_version": str(format_version),
    }


def set_metadata(onnx_model: OnnxModel, props: dict[str, str]) -> None:
    """Add ``props`` to the file's ``metadata_props`` (keeping its other keys) and save it
    again; onnxruntime reads them with ``get_modelmeta().custom_metadata_map``."""
    import onnx
    from onnx import helper

    proto = onnx_model.proto
    merged = {p.key: p.value for p in proto.metadata_props}
    merged.update(props)
    helper.set_model_props(proto, merged)
    onnx.save(proto, onnx_model.path)


def rename_tensors(proto: Any, renames: dict[str, str]) -> None:
    """Rename graph tensors everywhere they occur (node inputs/outputs, graph inputs/outputs)."""
    graph = proto.graph
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in (*graph.input, *graph.output):
        value.name = renames.get(value.name, value.name)
        dims = value.type.tensor_type.shape.dim
        if dims:  # the first axis is the batch: one readable symbol for all of them
            dims[0].dim_param = BATCH_DIM


def convert(model: Any, role: str, opset: int) -> Any:
    """A Keras functional model -> onnx.ModelProto with the readable names of ``IO_NAMES``."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    input_name, output_names = IO_NAMES[role]
    shape = (None, *model.inputs[0].shape[1:])
    signature = [tf.TensorSpec(shape, tf.float32, name=input_name)]

    @tf.function(input_signature=signature)
    def forward(x: Any) -> Any:
        out = model(x, training=False)
        return tuple(out) if isinstance(out, list | tuple) else (out,)

    proto, _ = tf2onnx.convert.from_function(forward, input_signature=signature, opset=opset)
    graph_outputs = [o.name for o in proto.graph.output]
    if len(graph_outputs) != len(output_names):
        raise ExportError(f"{role}: expected {len(output_names)} outputs, got {graph_outputs}")
    renames = {proto.graph.input[0].name: input_name}
    renames.update(dict(zip(graph_outputs, output_names, strict=True)))
    rename_tensors(proto, renames)
    proto.doc_string = f"mnist-vae {role}"
    # tf2onnx names the graph after a per-process function counter: clear it, so that the same
    # weights give the same bytes in any process (a resumed run's bundle equals an unbroken one's)
    proto.graph.doc_string = ""
    onnx.checker.check_model(proto, full_check=True)
    return proto


def keras_outputs(model: Any, x: np.ndarray) -> list[np.ndarray]:
    """Every output of the Keras ``model`` for ``x``, as a list."""
    out = model.predict(x, batch_size=PREDICT_BATCH, verbose=0)
    return list(out) if isinstance(out, list | tuple) else [out]


def check_parity(
    role: str,
    onnx_model: OnnxModel,
    keras_out: list[np.ndarray],
    x: np.ndarray,
    atol: float,
    rtol: float,
) -> dict[str, float]:
    """Compare ORT with Keras on every output; raise ``ExportError`` unless, element-wise,
    |ORT - Keras| <= atol + rtol * max|Keras| (the largest magnitude of that output).

    The relative part scales with the output's range, not with each element: float32 rounding
    in a dot product is relative to its summands, so a latent near 0 that is the difference of
    large terms carries their rounding (the default AE's latents reach a few hundred).
    Returns the max abs difference and the worst ratio of difference to allowed (<= 1).
    """
    ort_out = onnx_model.run(x)
    worst, ratio = 0.0, 0.0
    for name, a, b in zip(IO_NAMES[role][1], ort_out, keras_out, strict=True):
        if a.shape != b.shape:
            raise ExportError(f"{role}: ONNX {name} has shape {a.shape}, Keras {b.shape}")
        diff = np.abs(a.astype(np.float64) - b)
        worst = max(worst, float(diff.max()))
        scale = float(np.max(np.abs(b.astype(np.float64)))) if b.size else 0.0
        ratio = max(ratio, float(diff.max(initial=0.0)) / (atol + rtol * scale))
    if not ratio <= 1.0:
        raise ExportError(
            f"{role}: ONNX Runtime differs from Keras by {worst:.3g} (max abs) on {len(x)} "
            f"inputs, beyond export.parity_atol = {atol:g} + parity_rtol = {rtol:g} x max|Keras|; "
            "nothing written"
        )
    return {"max_abs_diff": worst, "worst_ratio_to_tolerance": ratio}


def export_checked(
    model: Any, role: str, x: np.ndarray, folder: Path, cfg: Config
) -> tuple[OnnxModel, dict[str, float]]:
    """Convert ``model`` to ``folder/<role>.onnx`` and check it against Keras on inputs ``x``.

    Returns the opened file and its parity record (see ``check_parity``, which raises when out
    of tolerance).
    """
    import onnx

    e = cfg.export
    path = folder / f"{role}.onnx"
    proto = convert(model, role, e.opset)
    onnx.save(proto, path)
    onnx_model = OnnxModel.open(path, proto)
    parity = check_parity(
        role, onnx_model, keras_outputs(model, x), x, e.parity_atol, e.parity_rtol
    )
    print(
        f"export: {role:<12} max |ORT - Keras| = {parity['max_abs_diff']:.2e} "
        f"on {len(x)} inputs ({parity['worst_ratio_to_tolerance']:.0%} of the tolerance)"
    )
    return onnx_model, parity


def measure_drift(fp32: OnnxModel, int8: OnnxModel, z: np.ndarray) -> dict[str, float]:
    """Pixel drift |int8 - fp32| of a decoder on latents z (n, d), in one batch and one by one.

    Dynamic quantization scales the activations by each batch's own range, so the int8 pixels
    of a latent depend slightly on the batch it is decoded in; both ways are recorded.
    """
    batch = np.abs(int8.run(z)[0] - fp32.run(z)[0])
    single = max(
        float(np.abs(int8.run(z[i : i + 1])[0] - fp32.run(z[i : i + 1])[0]).max())
        for i in range(len(z))
    )
    return {
        "max_abs": float(batch.max()),
        "mean_abs": float(batch.mean()),
        "max_abs_one_at_a_time": single,
    }
