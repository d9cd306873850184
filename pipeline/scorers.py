"""The anomaly scorers: each score of ``export.scoring`` as one ONNX graph, images -> score, flag.

    proto = build_scorer("vae", encoder.proto, decoder.proto, threshold, fpr)
    scorer, entry = export_scorer("vae", encoder, decoder, images, threshold, fpr, folder)

A scorer is the exported fp32 encoder and decoder joined by ``onnx.compose.merge_models``,
followed by the score's arithmetic built from ``onnx.helper`` nodes: input ``images``
(n, 28, 28) float32 in [0, 1], outputs ``score`` (n,) float32 and ``anomaly`` (n,) bool, true
where the score exceeds the calibrated threshold (as ``export.bundle.Bundle.is_anomaly``). The
arithmetic runs in double, as numpy runs ``export.scoring``, and is cast to float32 at the end,
so any ONNX Runtime binding gets ``Bundle.score``'s number without the runtime package:

- AE, ``reconstruction_mse``: mean over the 784 pixels of ``(x - decoder(encoder(x)))^2``.
- VAE, ``negative_elbo``: ``-sum(x log p + (1 - x) log(1 - p))`` with ``p`` the pixels decoded
  from ``z_mean`` clipped to [1e-7, 1 - 1e-7], plus ``-0.5 sum(1 + lv - m^2 - exp(lv))``, the
  KL of ``q(z|x) = N(m, exp(lv))`` from N(0, I); in nats.

The flag compares the float32 score with the float32 threshold, as numpy compares a float32
array with a Python float. The export stage (``pipeline.bundler``) checks every scorer against
``export.scoring`` run on the encoder's and decoder's own sessions, on the parity digits and on
noisy copies of them (so that both values of ``anomaly`` are checked), before anything is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export import scoring
from pipeline.conversion import BATCH_DIM, ExportError, OnnxModel, rename_tensors
from pipeline.measures import add_noise

PIXELS = 28 * 28
# |scorer - export.scoring| <= SCORE_RTOL * |export.scoring| on every checked image: both
# compute in double from the same float32 pixels, so they differ by float32 rounding at most
SCORE_RTOL = 1e-5
CHECK_NOISE_SIGMA = 0.5  # the noisy copies of the parity digits: clipped Gaussian noise
SCORE_DEFINITIONS = {
    "ae": "reconstruction_mse: mean over the 784 pixels of (x - decoder(encoder(x)))^2",
    "vae": (
        "negative_elbo: Bernoulli NLL at z_mean (pixels clipped to [1e-7, 1 - 1e-7]) "
        "+ KL(q(z|x) || N(0, I)), nats"
    ),
}


def scorer_metadata(kind: str, threshold: float, fpr: float) -> dict[str, str]:
    """The scorer's own ``metadata_props``: its score's definition, threshold and rate."""
    return {
        "score": SCORE_DEFINITIONS[kind],
        "threshold": repr(float(threshold)),
        "fpr": repr(float(fpr)),
        "anomaly": "score > threshold (float32), the threshold calibrated on the validation split",
    }


def default_opset(proto: Any) -> int:
    return next(int(op.version) for op in proto.opset_import if op.domain in ("", "ai.onnx"))


def model_like(graph: Any, like: Any) -> Any:
    """A ModelProto around ``graph`` with the IR version and default opset of ``like``."""
    from onnx import helper

    return helper.make_model(
        graph,
        ir_version=like.ir_version,
        opset_imports=[helper.make_opsetid("", default_opset(like))],
        producer_name="mnist-vae",
    )


def _images_fork(like: Any) -> Any:
    """images (n, 28, 28) -> two copies: one for the encoder, one for the score's arithmetic."""
    from onnx import TensorProto, helper

    def value(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH_DIM, 28, 28])

    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["images"], ["encoder_images"], name="fork_encoder"),
            helper.make_node("Identity", ["images"], ["score_images"], name="fork_score"),
        ],
        "images_fork",
        [value("images")],
        [value("encoder_images"), value("score_images")],
    )
    return model_like(graph, like)


class Nodes:
    """Collects the nodes and constants of a graph: ``nodes.op("Sub", a, b)`` -> output name."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[Any] = []
        self.constants: list[Any] = []

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = out or f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, name: str, value: Any, dtype: Any) -> str:
        """A constant (an initializer), added the first time its name is used."""
        from onnx import numpy_helper

        if name not in {c.name for c in self.constants}:
            array = np.asarray(value, dtype=dtype)
            self.constants.append(numpy_helper.from_array(array, name))
        return name

    def one(self) -> str:
        return self.const("one", 1.0, np.float64)

    def double(self, x: str, flat: bool = False) -> str:
        """``x`` cast to float64, reshaped to (n, 784) first when ``flat``."""
        from onnx import TensorProto

        if flat:
            x = self.op("Reshape", x, self.const("flat_shape", [-1, PIXELS], np.int64))
        return self.op("Cast", x, to=TensorProto.DOUBLE)

    def reduce(self, op_type: str, x: str) -> str:
        """``op_type`` (ReduceSum or ReduceMean) over axis 1, the axis dropped."""
        # ReduceSum takes its axes as an input from opset 13, ReduceMean from opset 18
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, x, self.const("axis_1", [1], np.int64), keepdims=0)
        return self.op(op_type, x, axes=[1], keepdims=0)


def _score_head(kind: str, threshold: float, like: Any) -> Any:
    """The score's arithmetic as a model: images, pixels (and z_mean, z_log_var) -> score,
    anomaly; float64 from the casts to the final score, as ``export.scoring`` computes."""
    from onnx import TensorProto, helper

    g = Nodes(default_opset(like))
    x = g.double("images", flat=True)
    p = g.double("pixels", flat=True)
    if kind == "ae":
        diff = g.op("Sub", x, p)
        total = g.reduce("ReduceMean", g.op("Mul", diff, diff))
    else:
        p = g.op(
            "Clip",
            p,
            g.const("eps_low", scoring.EPSILON, np.float64),
            g.const("eps_high", 1.0 - scoring.EPSILON, np.float64),
        )
        log_p = g.op("Log", p)
        log_1mp = g.op("Log", g.op("Sub", g.one(), p))
        ll = g.op("Add", g.op("Mul", x, log_p), g.op("Mul", g.op("Sub", g.one(), x), log_1mp))
        nll = g.op("Neg", g.reduce("ReduceSum", ll))
        m, lv = g.double("z_mean"), g.double("z_log_var")
        # 1 + lv - m^2 - exp(lv), left to right as numpy evaluates it
        inner = g.op("Sub", g.op("Add", g.one(), lv), g.op("Mul", m, m))
        inner = g.op("Sub", inner, g.op("Exp", lv))
        kl = g.op("Mul", g.reduce("ReduceSum", inner), g.const("minus_half", -0.5, np.float64))
        total = g.op("Add", nll, kl)
    score = g.op("Cast", total, out="score", to=TensorProto.FLOAT)
    g.op("Greater", score, g.const("threshold", threshold, np.float32), out="anomaly")

    def value(name: str, dtype: int, shape: list[Any]) -> Any:
        return helper.make_tensor_value_info(name, dtype, shape)

    latent = [
        value(name, TensorProto.FLOAT, [BATCH_DIM, None]) for name in scoring.ENCODER_OUTPUTS[kind]
    ]
    inputs = [value("images", TensorProto.FLOAT, [BATCH_DIM, 28, 28])]
    inputs.append(value("pixels", TensorProto.FLOAT, [BATCH_DIM, 28, 28]))
    if kind == "vae":
        inputs += latent
    outputs = [
        value("score", TensorProto.FLOAT, [BATCH_DIM]),
        value("anomaly", TensorProto.BOOL, [BATCH_DIM]),
    ]
    graph = helper.make_graph(g.nodes, f"{kind}_score", inputs, outputs, initializer=g.constants)
    return model_like(graph, like)


def build_scorer(kind: str, encoder: Any, decoder: Any, threshold: float, fpr: float) -> Any:
    """The scorer of ``kind`` ("ae" or "vae") as an onnx.ModelProto, checked by onnx.checker.

    encoder, decoder: the exported fp32 ModelProtos (``images -> z`` or ``images -> z_mean,
    z_log_var``; ``z -> pixels``); threshold: the calibrated one (anomaly = score > threshold);
    fpr: the rate it was calibrated at (recorded in the metadata).
    """
    import onnx
    from onnx import compose, helper

    latents = scoring.ENCODER_OUTPUTS[kind]  # every encoder output the arithmetic reads
    decoded = latents[0]  # the one the decoder reads
    enc = [f"encoder/{name}" for name in latents]
    # images -> (images for the encoder, images for the score) -> encoder -> decoder -> score
    model = compose.merge_models(
        _images_fork(encoder), encoder, io_map=[("encoder_images", "images")], prefix2="encoder/"
    )
    model = compose.merge_models(
        model,
        decoder,
        io_map=[(f"encoder/{decoded}", "z")],
        prefix2="decoder/",
        outputs=["score_images", *enc, "decoder/pixels"],
    )
    head_io = [("score_images", "images"), ("decoder/pixels", "pixels")]
    if kind == "vae":
        head_io += list(zip(enc, latents, strict=True))
    model = compose.merge_models(
        model,
        _score_head(kind, threshold, encoder),
        io_map=head_io,
        prefix2="score/",
        outputs=["score/score", "score/anomaly"],
        producer_name="mnist-vae",
    )
    rename_tensors(model, {"score/score": "score", "score/anomaly": "anomaly"})
    model.graph.name = f"{kind}_scorer"
    model.graph.doc_string = f"{kind} encoder, decoder and anomaly score"
    model.doc_string = f"mnist-vae {kind}_scorer"
    helper.set_model_props(model, scorer_metadata(kind, threshold, fpr))
    onnx.checker.check_model(model, full_check=True)
    return model


def reference_scores(kind: str, encoder: OnnxModel, decoder: OnnxModel, images: np.ndarray):
    """``export.scoring``'s score of ``images`` (n, 28, 28) float32, on the encoder's and the
    decoder's own sessions, as ``Bundle.score`` computes it: (n,) float32."""
    latents = encoder.run(images)
    pixels = decoder.run(latents[0])[0]
    if kind == "ae":
        return scoring.reconstruction_mse(images, pixels)
    return scoring.negative_elbo(images, pixels, latents[0], latents[1])


def check_scorer(
    kind: str,
    scorer: OnnxModel,
    encoder: OnnxModel,
    decoder: OnnxModel,
    images: np.ndarray,
    threshold: float,
) -> dict[str, Any]:
    """Compare the scorer with ``reference_scores`` on ``images`` (``compare_scorer``)."""
    expected = reference_scores(kind, encoder, decoder, images)
    return compare_scorer(
        f"{kind}_scorer", scorer, expected, images, threshold,
        "export.scoring on the fp32 encoder and decoder sessions",
    )  # fmt: skip


def compare_scorer(
    role: str,
    scorer: OnnxModel,
    expected: np.ndarray,
    images: np.ndarray,
    threshold: float,
    against: str,
) -> dict[str, Any]:
    """The scorer graph's scores and flags on ``images`` against ``expected`` (n,) float32;
    raise ``ExportError`` unless every score is within ``SCORE_RTOL`` (relative) and every flag
    equals ``expected > threshold`` (a flag may differ only where the expected score lies within
    that tolerance of the threshold). Returns the check's record for the manifest."""
    flags = expected > np.float32(threshold)
    score, anomaly = scorer.run(images)
    if score.shape != expected.shape or score.dtype != np.float32 or anomaly.dtype != np.bool_:
        raise ExportError(
            f"{role}: outputs {score.dtype}{score.shape}, {anomaly.dtype}{anomaly.shape}; "
            f"expected float32 and bool, both {expected.shape}"
        )
    ref = expected.astype(np.float64)
    diff = np.abs(score.astype(np.float64) - ref)
    rel = diff / np.maximum(np.abs(ref), np.finfo(np.float32).tiny)
    worst = float(rel.max(initial=0.0))
    mismatched = anomaly != flags
    near = np.abs(ref - np.float32(threshold)) <= SCORE_RTOL * abs(threshold)
    if not worst <= SCORE_RTOL or np.any(mismatched & ~near):
        raise ExportError(
            f"{role}: the scorer differs from export.scoring on {len(images)} digits: max "
            f"relative score difference {worst:.3g} (allowed {SCORE_RTOL:g}), "
            f"{int(mismatched.sum())} anomaly flags differ; nothing written"
        )
    return {
        "against": against,
        "inputs": len(images),
        "max_rel_diff": worst,
        "rtol": SCORE_RTOL,
        "anomaly_mismatches": int(mismatched.sum()),
        "flagged": int(flags.sum()),
    }


def export_scorer(
    kind: str,
    encoder: OnnxModel,
    decoder: OnnxModel,
    images: np.ndarray,
    threshold: float,
    fpr: float,
    folder: Path,
    seed: int = 0,
) -> tuple[OnnxModel, dict[str, Any]]:
    """Build ``folder/<kind>_scorer.onnx`` and check it on the parity digits ``images`` (n, 28,
    28) and as many noisy copies (sigma ``CHECK_NOISE_SIGMA``, ``seed``). Returns the opened
    file and its manifest entry (without the input/output spec and opset)."""
    import onnx

    role = f"{kind}_scorer"
    proto = build_scorer(kind, encoder.proto, decoder.proto, threshold, fpr)
    path = folder / f"{role}.onnx"
    onnx.save(proto, path)
    scorer = OnnxModel.open(path, proto)
    noisy = add_noise(images, CHECK_NOISE_SIGMA, seed=seed)
    check = check_scorer(kind, scorer, encoder, decoder, np.concatenate([images, noisy]), threshold)
    check.update(clean=len(images), noisy=len(noisy), noise_sigma=CHECK_NOISE_SIGMA, seed=seed)
    print(
        f"export: {role:<12} max relative |scorer - export.scoring| = {check['max_rel_diff']:.1e}"
        f" on {check['inputs']} digits ({check['flagged']} flagged, "
        f"{check['anomaly_mismatches']} flags differ), {path.stat().st_size:,} bytes"
    )
    entry = {
        "file": path.name,
        "precision": "fp32",
        "score": scoring.SCORES[kind],
        "threshold": float(threshold),
        "fpr": float(fpr),
        "built_from": [f"{kind}_encoder", f"{kind}_decoder"],
        "check": check,
    }
    return scorer, entry
