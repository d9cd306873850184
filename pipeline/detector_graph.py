"""The detector's score as one ONNX graph: images -> score, anomaly (``detector_scorer.onnx``).

    proto = build_detector_scorer(protos, calibration, coarse_block, threshold, fpr)

The four exported fp32 models (``detector_encoder``, ``detector_decoder``, ``background_encoder``,
``background_decoder``) are inlined under their names, joined by the class choice (ArgMax of the
encoder's class logits, its one-hot beside z_mean: ``export.scoring.class_inputs``) and followed
by ``export.scoring.detector_score``'s arithmetic in double (``pipeline.scorers.Nodes``):

- the negative ELBO of each model: -sum(x log p + (1 - x) log(1 - p)), p clipped to
  [1e-7, 1 - 1e-7], plus -0.5 sum(1 + lv - m^2 - exp(lv));
- the coarse deviance of the foreground's pixels: x and p averaged over blocks (a reshape to
  (n, k, b, k, b) and a mean over the block axes), clipped, the Bernoulli KL of the block
  means summed, times b^2;
- the ratio (foreground minus background), each term standardised by the calibration, the
  elementwise Max of them, mapped onto the negative ELBO's scale, cast to float32; anomaly:
  score > threshold in float32, as ``export.bundle.Bundle.is_anomaly`` compares.

The export stage checks the graph against ``export.scoring.detector_score`` on the four models'
own sessions, on the parity digits and noisy copies, before anything is kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from export import scoring
from pipeline.conversion import BATCH_DIM
from pipeline.scorers import Nodes, default_opset, model_like

PARTS = ("detector_encoder", "detector_decoder", "background_encoder", "background_decoder")
DEFINITION = (
    "detector: the largest of the class-conditional VAE's negative ELBO at z_mean and the "
    "encoder's class, its coarse deviance, and its log likelihood ratio against the background "
    "VAE, each standardised by its median and 99th percentile on clean validation digits, on the "
    "negative ELBO's scale (nats)"
)


def _inline(proto: Any, prefix: str, inputs: dict[str, str]) -> tuple[list[Any], list[Any]]:
    """The nodes and initializers of ``proto`` with every name under ``prefix/``, its graph
    inputs read from the tensors ``inputs`` names (graph input name -> tensor)."""
    from onnx import compose

    prefixed = compose.add_prefix(proto, f"{prefix}/")
    renames = {f"{prefix}/{name}": tensor for name, tensor in inputs.items()}
    nodes = []
    for node in prefixed.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        nodes.append(node)
    return nodes, list(prefixed.graph.initializer)


def _nelbo(g: Nodes, x: str, pixels: str, z_mean: str, z_log_var: str) -> str:
    """-sum(x log p + (1 - x) log(1 - p)) + KL, in double, as export.scoring.negative_elbo."""
    p = g.double(pixels, flat=True)
    p = g.op(
        "Clip",
        p,
        g.const("eps_low", scoring.EPSILON, np.float64),
        g.const("eps_high", 1.0 - scoring.EPSILON, np.float64),
    )
    ll = g.op(
        "Add",
        g.op("Mul", x, g.op("Log", p)),
        g.op("Mul", g.op("Sub", g.one(), x), g.op("Log", g.op("Sub", g.one(), p))),
    )
    nll = g.op("Neg", g.reduce("ReduceSum", ll))
    m, lv = g.double(z_mean), g.double(z_log_var)
    inner = g.op("Sub", g.op("Add", g.one(), lv), g.op("Mul", m, m))
    inner = g.op("Sub", inner, g.op("Exp", lv))
    kl = g.op("Mul", g.reduce("ReduceSum", inner), g.const("minus_half", -0.5, np.float64))
    return g.op("Add", nll, kl)


def _block_means(g: Nodes, x: str, block: int) -> str:
    """(n, 28, 28) float32 -> (n, k * k) double block means, clipped like EPSILON."""
    k = 28 // block
    shaped = g.op(
        "Reshape", g.double(x), g.const(f"blocks_{block}", [-1, k, block, k, block], np.int64)
    )
    if g.opset >= 18:
        mean = g.op("ReduceMean", shaped, g.const("block_axes", [2, 4], np.int64), keepdims=0)
    else:
        mean = g.op("ReduceMean", shaped, axes=[2, 4], keepdims=0)
    flat = g.op("Reshape", mean, g.const(f"block_flat_{block}", [-1, k * k], np.int64))
    return g.op(
        "Clip",
        flat,
        g.const("eps_low", scoring.EPSILON, np.float64),
        g.const("eps_high", 1.0 - scoring.EPSILON, np.float64),
    )


def _coarse(g: Nodes, images: str, pixels: str, block: int) -> str:
    a, b = _block_means(g, images, block), _block_means(g, pixels, block)
    one_a, one_b = g.op("Sub", g.one(), a), g.op("Sub", g.one(), b)
    kl = g.op(
        "Add",
        g.op("Mul", a, g.op("Sub", g.op("Log", a), g.op("Log", b))),
        g.op("Mul", one_a, g.op("Sub", g.op("Log", one_a), g.op("Log", one_b))),
    )
    return g.op(
        "Mul", g.reduce("ReduceSum", kl), g.const(f"block_area_{block}", block**2, np.float64)
    )


def build_detector_scorer(
    protos: dict[str, Any],
    calibration: scoring.Calibration,
    coarse_block: int,
    threshold: float,
    fpr: float,
) -> Any:
    """``detector_scorer.onnx`` as an onnx.ModelProto, checked by onnx.checker.

    protos: the exported fp32 ModelProtos of ``PARTS``, by role; calibration and coarse_block:
    the detector's (``calibration.json``); threshold: the calibrated one; fpr: its rate.
    """
    import onnx
    from onnx import TensorProto, helper

    from pipeline.scorers import scorer_metadata

    like = protos["detector_encoder"]
    g = Nodes(default_opset(like))
    nodes, inits = [], []
    for role, inputs in (
        ("detector_encoder", {"images": "images"}),
        ("background_encoder", {"images": "images"}),
        ("background_decoder", {"z": "background_encoder/z_mean"}),
    ):
        n, i = _inline(protos[role], role, inputs)
        nodes += n
        inits += i
    # the class the decoder reads: the first of the largest logits, one-hot beside z_mean
    index = g.op("ArgMax", "detector_encoder/class_logits", axis=1, keepdims=0)
    onehot = g.op(
        "OneHot",
        index,
        g.const("classes", scoring.CLASSES, np.int64),
        g.const("onehot_values", [0.0, 1.0], np.float32),
        axis=-1,
    )
    z_class = g.op("Concat", "detector_encoder/z_mean", onehot, axis=1)
    n, i = _inline(protos["detector_decoder"], "detector_decoder", {"z_class": z_class})
    nodes_after_class = n
    inits += i
    x = g.double("images", flat=True)
    terms = {
        "nelbo": _nelbo(
            g, x, "detector_decoder/pixels", "detector_encoder/z_mean", "detector_encoder/z_log_var"
        )
    }
    if coarse_block:
        terms["coarse"] = _coarse(g, "images", "detector_decoder/pixels", coarse_block)
    background = _nelbo(
        g,
        x,
        "background_decoder/pixels",
        "background_encoder/z_mean",
        "background_encoder/z_log_var",
    )
    terms["ratio"] = g.op("Sub", terms["nelbo"], background)
    if tuple(terms) != calibration.terms:
        raise ValueError(f"terms {tuple(terms)} do not match the calibration's {calibration.terms}")
    standard = [
        g.op(
            "Div",
            g.op("Sub", value, g.const(f"centre_{name}", c, np.float64)),
            g.const(f"scale_{name}", s, np.float64),
        )
        for (name, value), c, s in zip(
            terms.items(), calibration.centres, calibration.scales, strict=True
        )
    ]
    top = g.op("Max", *standard) if len(standard) > 1 else standard[0]
    on_scale = g.op(
        "Add",
        g.const("centre_0", calibration.centres[0], np.float64),
        g.op("Mul", g.const("scale_0", calibration.scales[0], np.float64), top),
    )
    score = g.op("Cast", on_scale, out="score", to=TensorProto.FLOAT)
    g.op("Greater", score, g.const("threshold", threshold, np.float32), out="anomaly")
    # the class choice needs the encoder's outputs, the decoder the class: node order matters
    head = g.nodes
    first = head[:3]  # ArgMax, OneHot, Concat
    graph = helper.make_graph(
        [*nodes, *first, *nodes_after_class, *head[3:]],
        "detector_scorer",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [BATCH_DIM, 28, 28])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, [BATCH_DIM]),
            helper.make_tensor_value_info("anomaly", TensorProto.BOOL, [BATCH_DIM]),
        ],
        initializer=[*inits, *g.constants],
    )
    model = model_like(graph, like)
    model.graph.doc_string = "detector: both VAEs and the anomaly score"
    model.doc_string = "mnist-vae detector_scorer"
    metadata = scorer_metadata("vae", threshold, fpr)
    metadata["score"] = DEFINITION
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model
