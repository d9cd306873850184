"""Stages `train_ae` and `train_vae`: fit on the train split, early-stop on the validation split.

    python run_pipeline.py --stages train_ae,train_vae --set train.epochs=10

Each writes, under ``ae/`` or ``vae/``: ``model.keras``, ``encoder.keras``, ``decoder.keras``,
``history.csv`` (one row per epoch) and ``summary.json``. Both losses are in nats per image:
the Bernoulli negative log-likelihood summed over the 784 pixels (plus beta * KL for the VAE,
which makes the VAE's loss the negative ELBO). The fit itself is ``pipeline.fitting.fit_model``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from export.files import sha256_file, write_json_atomic, write_text_atomic
from pipeline.checkpoint import CheckpointStore
from pipeline.common import Paths, Stage
from pipeline.config import Config
from pipeline.data import load_split
from pipeline.fitting import (
    CHECKPOINT_DIR,
    checkpoint_key,
    fit_model,
    fit_summary,
    history_csv,
    save_keras_atomic,
)


def train_model(kind: str, cfg: Config, paths: Paths) -> dict[str, Any]:
    """Fit one model and write its artifacts; returns the summary written to ``summary.json``.

    Resumes from ``<kind>/checkpoint/`` when a run of the same config and data was interrupted;
    the checkpoint is removed once every artifact is written.
    """
    from models import submodel

    train_images, _ = load_split(paths.dataset, "train", cfg.data)
    val_images, _ = load_split(paths.dataset, "validation", cfg.data)
    out = paths.model_dir(kind)
    checkpoint_dir = out / CHECKPOINT_DIR
    model, history, seconds = fit_model(
        kind,
        cfg,
        train_images,
        val_images,
        checkpoint_dir=checkpoint_dir,
        checkpoint_key=checkpoint_key(kind, cfg, sha256_file(paths.dataset)),
    )

    save_keras_atomic(model, paths.keras_file(kind, "model"))
    for part in ("encoder", "decoder"):
        save_keras_atomic(submodel(model, f"{kind}_{part}"), paths.keras_file(kind, part))
    beta = cfg.model.beta if kind == "vae" else None
    write_text_atomic(paths.history_file(kind), history_csv(history, beta))

    best = int(np.argmin(history["val_loss"]))
    epochs_run = len(history["loss"])
    summary = {
        **fit_summary(kind, model, history, seconds, cfg.train.jit_compile),
        "epoch_budget": cfg.train.epochs,
        # how training ended: early stopping, or the budget (the whole schedule) was used
        "ended_by": "early_stopping" if epochs_run < cfg.train.epochs else "epoch_budget",
        "lr_schedule": cfg.train.lr_schedule,
        "loss": "summed Bernoulli NLL over 784 pixels"
        + (" + beta * KL (negative ELBO), nats/image" if kind == "vae" else ", nats/image"),
    }
    if kind == "vae":
        summary["val_kl_at_best"] = float(history["val_kl"][best])
    write_json_atomic(paths.summary_file(kind), summary)
    print(
        f"train_{kind}: best val_loss {summary['best_val_loss']:.2f} nats at epoch "
        f"{summary['best_epoch']}/{summary['epochs_run']} in {seconds:.0f} s -> {out}"
    )
    CheckpointStore(checkpoint_dir, "").clear()
    return summary


def run_ae(cfg: Config, paths: Paths) -> dict[str, Any]:
    return train_model("ae", cfg, paths)


def run_vae(cfg: Config, paths: Paths) -> dict[str, Any]:
    return train_model("vae", cfg, paths)


def train_inputs(paths: Paths) -> list[Path]:
    """The files the train stages read: the dataset."""
    return [paths.dataset]


def _training_stage(kind: str, run: Callable[[Config, Paths], Any]) -> Stage:
    """Stage ``train_<kind>``: its config sections, the dataset in, ``Paths.model_files`` out."""
    return Stage(
        name=f"train_{kind}",
        run=run,
        sections=("data", "model", "train"),
        inputs=train_inputs,
        outputs=functools.partial(Paths.model_files, kind=kind),
    )


AE_STAGE = _training_stage("ae", run_ae)
VAE_STAGE = _training_stage("vae", run_vae)
