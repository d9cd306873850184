"""Seconds per epoch training the AE and the VAE at the default config, with and without XLA
(``train.jit_compile``).

    .venv/bin/python bench/training.py --run artifacts --epochs 3

A few epochs of each (not the full training): the default config with ``train.epochs`` set to
``--epochs``, on the ingest stage's ``data/mnist.npz`` (55,000 train / 5,000 validation
images). An epoch includes its validation pass. The first epoch also traces (and with XLA
compiles) the step, so it is reported apart; the per-epoch figure is the median of the rest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_RUN, REPO, machine, table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run folder with data/")
    parser.add_argument("--epochs", type=int, default=3)
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

    rows = []
    results: dict[tuple[str, bool], float] = {}
    for jit in (True, False):
        cfg = load_config(
            args.config,
            [f"train.epochs={args.epochs}", f"train.jit_compile={str(jit).lower()}",
             "train.verbose=quiet", f"train.patience={args.epochs + 1}"],
        )  # fmt: skip
        train, _ = load_split(args.run / "data" / "mnist.npz", "train", cfg.data)
        val, _ = load_split(args.run / "data" / "mnist.npz", "validation", cfg.data)
        for kind in ("ae", "vae"):
            timer = EpochTimer()
            fit_model(kind, cfg, train, val, callbacks=[timer])
            rest = statistics.median(timer.seconds[1:]) if len(timer.seconds) > 1 else float("nan")
            results[kind, jit] = rest
            rows.append(
                [kind, "on" if jit else "off", f"{timer.seconds[0]:.1f}", f"{rest:.1f}",
                 " ".join(f"{s:.1f}" for s in timer.seconds)]
            )  # fmt: skip
            print(f"  {rows[-1]}", file=sys.stderr)
    print(f"machine: {machine()}")
    print(
        f"default config ({len(train):,} train / {len(val):,} validation images, batch "
        f"{cfg.train.batch_size}), {args.epochs} epochs per row"
    )
    print()
    print(table(["model", "jit_compile", "first epoch s", "s/epoch (median of the rest)",
                 "all epochs s"], rows))  # fmt: skip
    for kind in ("ae", "vae"):
        print(f"{kind}: XLA speed-up {results[kind, False] / results[kind, True]:.2f}x per epoch")


if __name__ == "__main__":
    main()
