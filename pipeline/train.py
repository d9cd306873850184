"""Stages `train_ae` and `train_vae`: fit on the train split, early-stop on the validation split.

    python run_pipeline.py --stages train_ae,train_vae --set train.epochs=10

Each writes, under ``ae/`` or ``vae/``: ``model.keras``, ``encoder.keras``, ``decoder.keras``,
``history.csv`` (one row per epoch) and ``summary.json``. Both losses are in nats per image:
the Bernoulli negative log-likelihood summed over the 784 pixels (plus beta * KL for the VAE,
which makes the VAE's loss the negative ELBO).
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common import Paths, atomic_path, write_json_atomic, write_text_atomic
from pipeline.config import Config
from pipeline.data import load_split

KINDS = ("ae", "vae")
MODEL_FILES = ("model.keras", "encoder.keras", "decoder.keras")


def model_spec(cfg: Config) -> Any:
    """The builders' ``ModelSpec`` from the ``[model]`` section."""
    from models import ModelSpec

    m = cfg.model
    return ModelSpec(
        architecture=m.architecture,
        latent_dim=m.latent_dim,
        hidden_units=m.hidden_units,
        conv_filters=m.conv_filters,
        beta=m.beta,
    )


def keras_verbosity(setting: str) -> int:
    """Keras ``verbose``: a progress bar on a terminal, one line per epoch in logs and CI."""
    if setting == "auto":
        return 1 if sys.stdout.isatty() else 2
    return {"bar": 1, "epoch": 2, "quiet": 0}[setting]


def make_dataset(images: np.ndarray, batch_size: int, shuffle_seed: int | None) -> Any:
    """tf.data of (images, images) batches; shuffled each epoch when ``shuffle_seed`` is given."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, images))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(images), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def build_and_compile(kind: str, cfg: Config) -> Any:
    """A fresh, compiled autoencoder (``kind="ae"``) or VAE (``kind="vae"``)."""
    import keras

    from models import SummedBinaryCrossentropy, build_autoencoder, build_vae

    spec = model_spec(cfg)
    model = build_autoencoder(spec) if kind == "ae" else build_vae(spec, seed=cfg.train.seed)
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.train.learning_rate),
        loss=SummedBinaryCrossentropy(),
        metrics=[keras.metrics.MeanSquaredError(name="mse")],
        jit_compile=cfg.train.jit_compile,
    )
    return model


def history_csv(history: dict[str, list[float]], beta: float | None) -> str:
    """Per-epoch history as CSV; for the VAE also ``recon`` = loss - beta * kl."""
    rows = dict(history)
    if beta is not None and "kl" in rows:
        rows["recon"] = [lo - beta * kl for lo, kl in zip(rows["loss"], rows["kl"], strict=True)]
        rows["val_recon"] = [
            lo - beta * kl for lo, kl in zip(rows["val_loss"], rows["val_kl"], strict=True)
        ]
    columns = ["epoch", *sorted(rows)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for i in range(len(rows["loss"])):
        writer.writerow([i + 1, *(f"{rows[c][i]:.6f}" for c in columns[1:])])
    return buf.getvalue()


def save_keras_atomic(model: Any, target: Path) -> None:
    with atomic_path(target) as tmp:
        model.save(tmp)


def fit_model(
    kind: str,
    cfg: Config,
    train_images: np.ndarray,
    val_images: np.ndarray,
    callbacks: list[Any] | None = None,
) -> tuple[Any, dict[str, list[float]], float]:
    """Build, compile and fit one model; no file I/O.

    train_images, val_images: (n, 28, 28) float32 in [0, 1].
    Returns (model with the best validation weights, per-epoch history, seconds).
    """
    import keras

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    keras.utils.set_random_seed(cfg.train.seed)
    model = build_and_compile(kind, cfg)
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=cfg.train.patience, restore_best_weights=True, verbose=1
    )
    print(
        f"train_{kind}: {model.count_params():,} parameters, {len(train_images):,} train / "
        f"{len(val_images):,} validation images, up to {cfg.train.epochs} epochs"
    )
    started = time.perf_counter()
    history = model.fit(
        make_dataset(train_images, cfg.train.batch_size, shuffle_seed=cfg.train.seed),
        validation_data=make_dataset(val_images, cfg.train.batch_size, shuffle_seed=None),
        epochs=cfg.train.epochs,
        callbacks=[stopper, *(callbacks or [])],
        shuffle=False,  # the tf.data pipeline already reshuffles every epoch
        verbose=keras_verbosity(cfg.train.verbose),
    ).history
    return model, history, time.perf_counter() - started


def train_model(kind: str, cfg: Config, paths: Paths) -> dict[str, Any]:
    """Fit one model and write its artifacts; returns the summary written to ``summary.json``."""
    from models import submodel

    train_images, _ = load_split(paths.dataset, "train", cfg.data)
    val_images, _ = load_split(paths.dataset, "validation", cfg.data)
    model, history, seconds = fit_model(kind, cfg, train_images, val_images)

    out = paths.model_dir(kind)
    save_keras_atomic(model, out / "model.keras")
    save_keras_atomic(submodel(model, f"{kind}_encoder"), out / "encoder.keras")
    save_keras_atomic(submodel(model, f"{kind}_decoder"), out / "decoder.keras")
    beta = cfg.model.beta if kind == "vae" else None
    write_text_atomic(out / "history.csv", history_csv(history, beta))

    best = int(np.argmin(history["val_loss"]))
    summary = {
        "model": kind,
        "parameters": int(model.count_params()),
        "epochs_run": len(history["loss"]),
        "best_epoch": best + 1,
        "best_val_loss": float(history["val_loss"][best]),
        "train_loss_at_best": float(history["loss"][best]),
        "loss": "summed Bernoulli NLL over 784 pixels"
        + (" + beta * KL (negative ELBO), nats/image" if kind == "vae" else ", nats/image"),
        "seconds": round(seconds, 2),
        "seconds_per_epoch": round(seconds / max(1, len(history["loss"])), 3),
        "jit_compile": cfg.train.jit_compile,
    }
    if kind == "vae":
        summary["val_kl_at_best"] = float(history["val_kl"][best])
    write_json_atomic(out / "summary.json", summary)
    print(
        f"train_{kind}: best val_loss {summary['best_val_loss']:.2f} nats at epoch "
        f"{summary['best_epoch']}/{summary['epochs_run']} in {seconds:.0f} s -> {out}"
    )
    return summary


def run_ae(cfg: Config, paths: Paths) -> dict[str, Any]:
    return train_model("ae", cfg, paths)


def run_vae(cfg: Config, paths: Paths) -> dict[str, Any]:
    return train_model("vae", cfg, paths)
