"""Training throughput of the default AE and VAE: seconds per epoch, achieved GFLOP/s against
numpy's float32 matmul rate sampled in the same run, XLA on and off, and what the per-epoch
checkpoint costs (the same fit with and without one after every epoch, same run, and what that
makes at the default ``train.checkpoint_seconds``).

    python -m bench.training --run artifacts --epochs 4

A few epochs of each (not the full training): the default config with ``train.epochs`` set to
``--epochs`` on the ingest stage's ``data/mnist.npz`` (55,000 train / 5,000 validation
images), through ``pipeline.fitting.fit_model`` exactly as the train stages call it. An epoch
includes its validation pass. The first epoch also traces (and with XLA compiles) the step, so
it is left out: the per-epoch figure is the median of the others.

FLOPs (``epoch_flops``): 2 per multiply-add of every Dense and convolution layer; a train image
costs the forward pass, the gradient with respect to the weights and, for every layer but the
first, the gradient with respect to the layer's input; a validation image costs the forward
pass. The matmul rate is the best of ~1 s of 1024^3 float32 products, sampled between the fits
(the median of the samples is the reference). The checkpoint's cost is measured twice: the
median epoch with and without it (two fits of each, alternating), and the time the training
thread spends inside ``CheckpointStore.save``. Writes ``bench/results/training.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_RUN,
    REPO,
    command_line,
    load_report,
    machine,
    matmul_flops,
    render_load,
    result_path,
    table,
    write_result,
)


def layer_macs(model: Any) -> list[int]:
    """Multiply-adds of one image's forward pass through each Dense and conv layer of ``model``,
    in order (nested sub-models included)."""
    import keras

    macs: list[int] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            macs += layer_macs(layer)
        elif isinstance(layer, keras.layers.Dense):
            macs.append(int(layer.kernel.shape[0] * layer.kernel.shape[1]))
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            _, height, width, _ = layer.input.shape  # each input pixel meets the whole kernel
            macs.append(int(height * width * int(keras.ops.size(layer.kernel))))
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            macs.append(int(height * width * int(keras.ops.size(layer.kernel))))
    return macs


def epoch_flops(model: Any, n_train: int, n_val: int) -> float:
    """FLOPs of one epoch, 2 per multiply-add: a train image costs the forward pass, the gradient
    with respect to the weights and, for every layer but the first (whose input is the image),
    the gradient with respect to its input; a validation image costs the forward pass."""
    macs = layer_macs(model)
    train = 3 * sum(macs) - macs[0]
    return 2.0 * (train * n_train + sum(macs) * n_val)


def render(report: dict[str, Any]) -> str:
    """The run's table and the lines under it, from its result file."""
    peak = statistics.median(report["matmul_gflops"])
    rows = [
        [r["model"], r["batch"], "on" if r["xla"] else "off", "yes" if r["checkpoint"] else "no",
         f"{r['seconds_per_epoch']:.2f}", f"{r['gflops']:.0f}", f"{r['gflops'] / peak:.0%}",
         f"{r['gflop_per_epoch']:.0f}", " ".join(f"{s:.2f}" for s in r["epoch_seconds"])]
        for r in report["rows"]
    ]  # fmt: skip
    per_epoch = {
        (e["model"], e["xla"], e["checkpoint"], e["batch"]): e["seconds"]
        for e in report["per_setting"]
    }
    batch, half, interval = report["batch_size"], report["half_batch"], report["checkpoint_seconds"]
    lines = [
        f"machine: {report['machine']}",
        f"default config ({report['train_images']:,} train / {report['val_images']:,} validation "
        f"images, {report['architecture']} {report['hidden_units']}), {report['epochs']} epochs "
        f"per row; numpy float32 matmul {peak:.0f} GFLOP/s (median of "
        f"{len(report['matmul_gflops'])} samples, {min(report['matmul_gflops']):.0f}-"
        f"{max(report['matmul_gflops']):.0f})",
        "",
        table(
            [
                "model",
                "batch",
                "XLA",
                "checkpoint",
                "s/epoch (median)",
                "GFLOP/s",
                "of matmul",
                "GFLOP/epoch",
                "every epoch s",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]
    for kind in ("ae", "vae"):
        with_ck, without = per_epoch[kind, True, True, batch], per_epoch[kind, True, False, batch]
        lines.append(
            f"{kind}: checkpoint overhead {(with_ck - without) / without:+.1%} of an epoch "
            f"(median epoch {with_ck:.2f} vs {without:.2f} s over both rows of each); XLA "
            f"speed-up {per_epoch[kind, False, False, batch] / without:.2f}x"
        )
    for kind in ("ae", "vae"):
        with_ck, without = per_epoch[kind, True, True, batch], per_epoch[kind, True, False, batch]
        every = max(1, math.ceil(interval / without))  # epochs between checkpoints
        lines.append(
            f"{kind}: at the default train.checkpoint_seconds={interval:g}, a checkpoint every "
            f"{every} epochs: {(with_ck - without) / without / every:+.1%} of an epoch"
        )
    lines.append(
        f"the training thread spent {report['checkpoint_save_ms']:.0f} ms per checkpoint inside "
        f"CheckpointStore.save (median epoch with a checkpoint: "
        f"{per_epoch['vae', True, True, batch]:.2f} s)"
    )
    ratio = per_epoch["vae", True, False, half] / per_epoch["vae", True, False, batch]
    lines.append(f"vae: batch {half} takes {ratio:.2f}x the seconds per epoch of batch {batch}")
    lines.append(render_load(report["load"]))
    return "\n".join(lines)


def index_line(r: dict[str, Any]) -> str:
    """The line of the benchmarks' index: this result's headline figure."""
    rows = [x for x in r["per_setting"] if x["model"] == "vae" and x["xla"]]
    batch = r["batch_size"]
    on = next(x["seconds"] for x in rows if x["checkpoint"] and x["batch"] == batch)
    off = next(x["seconds"] for x in rows if not x["checkpoint"] and x["batch"] == batch)
    return f"VAE {off:.2f} s/epoch; a checkpoint after every epoch {(on - off) / off:+.1%}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder with data/")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.toml")
    parser.add_argument("--json", type=Path, default=result_path("training"), help="result file")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import keras

    from pipeline.checkpoint import CheckpointStore
    from pipeline.config import load_config
    from pipeline.data import load_split
    from pipeline.fitting import fit_model

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.seconds.append(time.perf_counter() - self.started)

    def config(jit: bool, batch_size: int | None = None) -> Any:
        batch = [] if batch_size is None else [f"train.batch_size={batch_size}"]
        return load_config(
            args.config,
            [f"train.epochs={args.epochs}", f"train.jit_compile={str(jit).lower()}",
             "train.verbose=quiet", f"train.patience={args.epochs + 1}",
             "train.checkpoint_seconds=0", *batch],  # a checkpoint after every epoch
        )  # fmt: skip

    base = config(True)
    train, _ = load_split(args.run / "data" / "mnist.npz", "train", base.data)
    val, _ = load_split(args.run / "data" / "mnist.npz", "validation", base.data)
    peaks = [matmul_flops()]
    per_epoch: dict[tuple[str, bool, bool, int], float] = {}
    rows = []
    # each model: XLA with and without the checkpoint (the stage's setting first), then no XLA;
    # the VAE also at half the batch size (smaller matrices, more steps)
    # with and without the checkpoint twice each, alternating, so that a drift of the machine's
    # speed during the run does not pass for the checkpoint's cost
    half = base.train.batch_size // 2
    pairs = ((True, True), (True, False), (True, True), (True, False), (False, False))
    settings = [(kind, jit, checkpointed, base.train.batch_size) for kind in ("ae", "vae")
                for jit, checkpointed in pairs]  # fmt: skip
    settings.append(("vae", True, False, half))
    epochs: dict[tuple[str, bool, bool, int], list[float]] = {}
    blocked = {"seconds": 0.0, "calls": 0}  # the training thread's time inside store.save
    save = CheckpointStore.save

    def timed_save(self: CheckpointStore, *args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        save(self, *args, **kwargs)
        blocked["seconds"] += time.perf_counter() - started
        blocked["calls"] += 1

    CheckpointStore.save = timed_save  # type: ignore[method-assign]
    for kind, jit, checkpointed, batch in settings:
        timer = EpochTimer()
        with tempfile.TemporaryDirectory() as folder:
            model, _, _ = fit_model(
                kind,
                config(jit, batch),
                train,
                val,
                callbacks=[timer],
                checkpoint_dir=Path(folder) / "checkpoint" if checkpointed else None,
                checkpoint_key="bench",
            )
        peaks.append(matmul_flops())
        key = (kind, jit, checkpointed, batch)
        epochs.setdefault(key, []).extend(timer.seconds[1:])
        seconds = statistics.median(timer.seconds[1:])
        per_epoch[key] = statistics.median(epochs[key])  # over every row of this setting
        flops = epoch_flops(model, len(train), len(val))
        rows.append(
            {"model": kind, "batch": batch, "xla": jit, "checkpoint": checkpointed,
             "seconds_per_epoch": seconds, "gflops": flops / seconds / 1e9,
             "gflop_per_epoch": flops / 1e9, "epoch_seconds": timer.seconds}
        )  # fmt: skip
        print(f"  {rows[-1]}", file=sys.stderr)
    report = {
        "machine": machine(),
        "command": command_line(),
        "run": str(args.run),
        "epochs": args.epochs,
        "train_images": len(train),
        "val_images": len(val),
        "architecture": base.model.architecture,
        "hidden_units": list(base.model.hidden_units),
        "batch_size": base.train.batch_size,
        "half_batch": half,
        "checkpoint_seconds": load_config(args.config).train.checkpoint_seconds,  # the stages'
        "matmul_gflops": [p / 1e9 for p in peaks],
        "rows": rows,
        "per_setting": [
            {"model": m, "xla": x, "checkpoint": c, "batch": b, "seconds": s}
            for (m, x, c, b), s in per_epoch.items()
        ],
        "checkpoint_save_ms": blocked["seconds"] / blocked["calls"] * 1e3,
        "load": load_report(load_start),
    }
    write_result(args.json, report)
    print(render(report))


if __name__ == "__main__":
    main()
