"""Images per second scoring the 10,000 test digits with the AE (reconstruction MSE), by method
and batch size, with the ratio to Keras ``model.predict`` and the fraction of the machine's
limit reached (a roofline: FLOPs per image against a numpy float32 matmul measured here).

    .venv/bin/python bench/scoring.py --run artifacts            # needs the export stage's bundle
    .venv/bin/python bench/scoring.py --run /tmp/full --repeats 5 --batch1-images 300

Every method is called once per batch, as a scorer receiving batches would: ORT fp32 and int8
(``Bundle.score``), Keras ``model.predict(batch)``, and a ``tf.function`` around the model's
call (traced once for any batch size). All compute the same AE score (the MSE in numpy).
Batch 1 runs on the first ``--batch1-images`` digits only (Keras pays milliseconds per call).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_RUN, load_test_images, machine, matmul_flops, median_time, table  # noqa: E402

from export import scoring  # noqa: E402
from export.bundle import Bundle  # noqa: E402
from pipeline.common import Paths  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder with export/")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch1-images", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="ORT threads (0: all cores)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import keras
    import tensorflow as tf

    import models  # noqa: F401  (registers the custom layers for loading)

    images = load_test_images(args.run)
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
    rates: dict[tuple[str, int], float] = {}
    for batch in BATCHES:
        subset = images[: args.batch1_images] if batch == 1 else images
        for name, fn in methods.items():
            peaks.append(matmul_flops())
            seconds = median_time(
                lambda fn=fn, subset=subset, batch=batch: batched(fn, subset, batch), args.repeats
            )
            rates[name, batch] = len(subset) / seconds
            print(
                f"  {name:<20} batch {batch:>6}: {rates[name, batch]:>12,.0f} images/s",
                file=sys.stderr,
            )
    peaks.append(matmul_flops())
    peak = max(peaks)  # the best rate seen is the ceiling; lower ones are other work's share
    limit = peak / flops

    rows = []
    for batch in BATCHES:
        base = rates["Keras model.predict", batch]
        for name in methods:
            r = rates[name, batch]
            rows.append([batch, name, f"{r:,.0f}", f"{r / base:.1f}x", f"{100 * r / limit:.1f}%"])
    print(f"machine: {machine()}")
    print(f"ORT intra-op threads: {args.threads or 'all cores'}; repeats: {args.repeats} (median)")
    print(f"AE scoring: {flops / 1e6:.2f} MFLOP per image (encoder + decoder MatMuls)")
    print(
        "relative score difference to ORT fp32 on 500 digits (median / max): "
        + ", ".join(
            f"{n} {np.median(d):.1e} / {d.max():.1e}" for n, d in drifts.items() if n != "ORT fp32"
        )
    )
    print(
        f"numpy float32 matmul (1024^3), {len(peaks)} samples between the methods: max "
        f"{peak / 1e9:.1f} GFLOP/s, median {np.median(peaks) / 1e9:.1f}, min "
        f"{min(peaks) / 1e9:.1f} -> limit {limit:,.0f} images/s (from the max)"
    )
    print()
    print(table(["batch", "method", "images/s", "vs model.predict", "of the limit"], rows))
    ratio = rates["ORT fp32", 256] / rates["Keras model.predict", 256]
    print(f"\nORT fp32 / model.predict at batch 256: {ratio:.1f}x")


if __name__ == "__main__":
    main()
