"""Images per second scoring the 10,000 test digits with the AE (reconstruction MSE), by method
and batch size, with the ratio to Keras ``model.predict`` and the fraction of the machine's
limit reached (a roofline: FLOPs per image against a numpy float32 matmul measured here).

    python -m bench.scoring --run artifacts            # needs the export stage's bundle
    python -m bench.scoring --run /tmp/full --repeats 5 --batch1-images 300

Every method is called once per batch, as a scorer receiving batches would: ORT fp32 and int8
(``Bundle.score``), Keras ``model.predict(batch)``, and a ``tf.function`` around the model's
call (traced once for any batch size). All compute the same AE score (the MSE in numpy).
Batch 1 runs on the first ``--batch1-images`` digits only (Keras pays milliseconds per call).
Writes ``bench/results/scoring.json`` (``--json``); ``render`` is the page's table.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_RUN,
    command_line,
    load_images,
    load_report,
    machine,
    matmul_flops,
    median_time,
    render_load,
    result_path,
    table,
    write_result,
)
from export import scoring
from export.bundle import Bundle
from pipeline.common import Paths

BATCHES = (1, 256, 10_000)


def flops_per_image(bundle: Bundle, model: str = "ae") -> float:
    """Multiply-adds x 2 of the encoder and decoder's MatMul/Gemm nodes, for one image."""
    import onnx
    from onnx import numpy_helper

    total = 0.0
    for part in ("encoder", "decoder"):
        graph = onnx.load(
            str(bundle.directory / bundle.manifest["models"][f"{model}_{part}"]["file"])
        ).graph
        weights = {i.name: numpy_helper.to_array(i).shape for i in graph.initializer}
        for node in graph.node:
            if node.op_type in ("MatMul", "Gemm"):
                shape = next(
                    (weights[n] for n in node.input if n in weights and len(weights[n]) == 2), None
                )
                if shape is not None:
                    total += 2.0 * shape[0] * shape[1]
    return total


def batched(fn, images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([fn(images[i : i + batch]) for i in range(0, len(images), batch)])


def render(report: dict[str, Any]) -> str:
    """The run's description and table, from its result file."""
    rates = {(r["method"], r["batch"]): r["images_per_s"] for r in report["rates"]}
    limit, matmul = report["limit_images_per_s"], report["matmul_gflops"]
    rows = []
    for batch in report["batches"]:
        base = rates["Keras model.predict", batch]
        for name in report["methods"]:
            r = rates[name, batch]
            rows.append([batch, name, f"{r:,.0f}", f"{r / base:.1f}x", f"{100 * r / limit:.1f}%"])
    drift = ", ".join(
        f"{name} {d['median']:.1e} / {d['max']:.1e}" for name, d in report["score_drift"].items()
    )
    lines = [
        f"machine: {report['machine']}",
        f"ORT intra-op threads: {report['threads'] or 'all cores'}; repeats: "
        f"{report['repeats']} (median); batch 1 on the first {report['batch1_images']} digits",
        f"AE scoring: {report['mflop_per_image']:.2f} MFLOP per image (encoder + decoder MatMuls)",
        f"relative score difference to ORT fp32 on 500 digits (median / max): {drift}",
        f"numpy float32 matmul (1024^3), {len(matmul)} samples between the methods: max "
        f"{max(matmul):.1f} GFLOP/s, median {np.median(matmul):.1f}, min {min(matmul):.1f} -> "
        f"limit {limit:,.0f} images/s (from the max)",
        "",
        table(["batch", "method", "images/s", "vs model.predict", "of the limit"], rows),
        "",
        f"ORT fp32 / model.predict at batch 256: "
        f"{rates['ORT fp32', 256] / rates['Keras model.predict', 256]:.1f}x",
        render_load(report["load"]),
    ]
    return "\n".join(lines)


def index_line(r: dict[str, Any]) -> str:
    """The line of the benchmarks' index: this result's headline figure."""
    rates = {(x["method"], x["batch"]): x["images_per_s"] for x in r["rates"]}
    ort, keras = rates["ORT fp32", 256], rates["Keras model.predict", 256]
    return f"ORT fp32 at batch 256: {ort:,.0f} images/s, {ort / keras:.1f}x Keras `predict`"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder with export/")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch1-images", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="ORT threads (0: all cores)")
    parser.add_argument("--json", type=Path, default=result_path("scoring"), help="result file")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    load_start = os.getloadavg()

    import keras
    import tensorflow as tf

    import models  # noqa: F401  (registers the custom layers for loading)

    images = load_images(args.run)
    fp32 = Bundle.load(args.run / "export", "fp32", threads=args.threads)
    int8 = Bundle.load(args.run / "export", "int8", threads=args.threads)
    ae = keras.saving.load_model(Paths(args.run).keras_file("ae"), safe_mode=True)
    call = tf.function(
        lambda x: ae(x, training=False),
        input_signature=[tf.TensorSpec([None, 28, 28], tf.float32)],
    )
    methods = {
        "ORT fp32": lambda x: fp32.score(x, "ae"),
        "ORT int8": lambda x: int8.score(x, "ae"),
        "Keras model.predict": lambda x: scoring.reconstruction_mse(
            x, ae.predict(x, batch_size=len(x), verbose=0)
        ),
        "tf.function": lambda x: scoring.reconstruction_mse(x, call(x).numpy()),
    }
    reference = fp32.score(images[:500], "ae")
    drifts = {}  # the same scores, or the comparison means nothing (int8: its recorded drift)
    for name, fn in methods.items():
        drifts[name] = np.abs(fn(images[:500]) - reference) / np.maximum(reference, 1e-6)
        if "int8" not in name and drifts[name].max() > 1e-3:
            raise SystemExit(f"{name} scores differ from ORT fp32 by {drifts[name].max():.2g}")

    flops = flops_per_image(fp32)
    peaks = []  # the matmul rate, sampled between the methods: the cores are shared
    rates = []
    for batch in BATCHES:
        subset = images[: args.batch1_images] if batch == 1 else images
        for name, fn in methods.items():
            peaks.append(matmul_flops())
            seconds = median_time(
                lambda fn=fn, subset=subset, batch=batch: batched(fn, subset, batch), args.repeats
            )
            rates.append({"batch": batch, "method": name, "images_per_s": len(subset) / seconds})
            print(f"  {name:<20} batch {batch:>6}: {len(subset) / seconds:>12,.0f} images/s",
                  file=sys.stderr)  # fmt: skip
    peaks.append(matmul_flops())
    peak = max(peaks)  # the best rate seen is the ceiling; lower ones are other work's share
    report = {
        "machine": machine(),
        "command": command_line(),
        "run": str(args.run),
        "threads": args.threads,
        "repeats": args.repeats,
        "batch1_images": args.batch1_images,
        "batches": list(BATCHES),
        "methods": list(methods),
        "mflop_per_image": flops / 1e6,
        "score_drift": {
            name: {"median": float(np.median(d)), "max": float(d.max())}
            for name, d in drifts.items()
            if name != "ORT fp32"
        },
        "matmul_gflops": [p / 1e9 for p in peaks],
        "limit_images_per_s": peak / flops,
        "rates": rates,
        "load": load_report(load_start),
    }
    write_result(args.json, report)
    print(render(report))


if __name__ == "__main__":
    main()
