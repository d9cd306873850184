"""Training throughput of the default AE and VAE: seconds per epoch, achieved GFLOP/s against
numpy's float32 matmul rate sampled in the same run, XLA on and off, and what the per-epoch
checkpoint costs (the same fit with and without it, same run).

    .venv/bin/python bench/training.py --run artifacts --epochs 5

A few epochs of each (not the full training): the default config with ``train.epochs`` set to
``--epochs`` on the ingest stage's ``data/mnist.npz`` (55,000 train / 5,000 validation
images), through ``pipeline.train.fit_model`` exactly as the train stages call it. An epoch
includes its validation pass. The first epoch also traces (and with XLA compiles) the step, so
it is left out: the per-epoch figure is the median of the others.

FLOPs: a training step costs about 3x the forward pass (forward, then gradients with respect to
activations and weights), and the forward pass costs 2 FLOPs per multiply-add of every Dense and
convolution layer; the validation pass adds one forward pass per validation image. The matmul
rate is the best of ~1 s of 1024^3 float32 products, sampled between the fits (the median of the
samples is the reference).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_RUN, REPO, machine, matmul_flops, table  # noqa: E402


def forward_macs(model: Any) -> int:
    """Multiply-adds of one image's forward pass through every Dense and conv layer of ``model``
    (nested sub-models included)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_macs(layer)
        elif isinstance(layer, keras.layers.Dense):
            total += int(layer.kernel.shape[0] * layer.kernel.shape[1])
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            _, height, width, _ = layer.input.shape  # each input pixel meets the whole kernel
            total += int(height * width * int(keras.ops.size(layer.kernel)))
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            total += int(height * width * int(keras.ops.size(layer.kernel)))
    return total


def epoch_flops(model: Any, n_train: int, n_val: int) -> float:
    """FLOPs of one epoch: 3 passes per train image, 1 per validation image, 2 FLOPs per MAC."""
    return 2.0 * forward_macs(model) * (3 * n_train + n_val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder with data/")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.toml")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import keras

    from pipeline.config import load_config
    from pipeline.data import load_split
    from pipeline.train import fit_model

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
             "train.verbose=quiet", f"train.patience={args.epochs + 1}", *batch],
        )  # fmt: skip

    base = config(True)
    train, _ = load_split(args.run / "data" / "mnist.npz", "train", base.data)
    val, _ = load_split(args.run / "data" / "mnist.npz", "validation", base.data)
    peaks = [matmul_flops()]
    per_epoch: dict[tuple[str, bool, bool, int], float] = {}
    rows = []
    # each model: XLA with and without the checkpoint (the stage's setting first), then no XLA;
    # the VAE also at half the batch size (smaller matrices, more steps)
    half = base.train.batch_size // 2
    settings = [(kind, jit, checkpointed, base.train.batch_size) for kind in ("ae", "vae")
                for jit, checkpointed in ((True, True), (True, False), (False, False))]  # fmt: skip
    settings.append(("vae", True, False, half))
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
        seconds = statistics.median(timer.seconds[1:])
        per_epoch[kind, jit, checkpointed, batch] = seconds
        flops = epoch_flops(model, len(train), len(val))
        rows.append(
            [kind, batch, "on" if jit else "off", "yes" if checkpointed else "no",
             f"{seconds:.2f}", f"{flops / seconds / 1e9:.0f}", f"{flops / 1e9:.0f}",
             " ".join(f"{s:.2f}" for s in timer.seconds)]
        )  # fmt: skip
        print(f"  {rows[-1]}", file=sys.stderr)
    peak = statistics.median(peaks)
    for row in rows:
        row.insert(6, f"{float(row[5]) * 1e9 / peak:.0%}")
    print(f"machine: {machine()}")
    print(
        f"default config ({len(train):,} train / {len(val):,} validation images, "
        f"{base.model.architecture} {list(base.model.hidden_units)}), "
        f"{args.epochs} epochs per row; numpy float32 matmul {peak / 1e9:.0f} GFLOP/s "
        f"(median of {len(peaks)} samples, {min(peaks) / 1e9:.0f}-{max(peaks) / 1e9:.0f})"
    )
    print()
    print(table(["model", "batch", "XLA", "checkpoint", "s/epoch (median)", "GFLOP/s",
                 "of matmul", "GFLOP/epoch", "every epoch s"], rows))  # fmt: skip
    print()
    batch = base.train.batch_size
    for kind in ("ae", "vae"):
        with_ck, without = per_epoch[kind, True, True, batch], per_epoch[kind, True, False, batch]
        print(
            f"{kind}: checkpoint overhead {(with_ck - without) / without:+.1%} of an epoch "
            f"({with_ck:.2f} vs {without:.2f} s); XLA speed-up "
            f"{per_epoch[kind, False, False, batch] / without:.2f}x"
        )
    print(
        f"vae: batch {half} takes {per_epoch['vae', True, False, half] / per_epoch['vae', True, False, batch]:.2f}x "
        f"the seconds per epoch of batch {batch}"
    )


if __name__ == "__main__":
    main()
